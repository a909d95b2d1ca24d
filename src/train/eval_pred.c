/* eval_pred.c: scores a folder of saved prediction maps against ground-truth masks, the way
 * the field's evaluation scripts do (predictions resized to the GT, PySODMetrics-compatible
 * metrics from metrics.c). predict names a prediction after its image's stem; the ground
 * truth is a folder of masks (each paired by its own stem, else by its image's stem in the
 * layouts of data.c: CARLA's NAME_label.png is image NAME's) or a data-set root, whose split
 * is paired image -> mask exactly as training reads it (CAMO keeps every split's masks in
 * one GT/ folder, so only the split's image list says which masks were predicted). */
#include "train/metrics.h"

#include "core/common.h"
#include "core/fs.h"
#include "data/data.h"

#include <math.h>
#include <string.h>

#include <stb_image.h>

typedef struct {
    char *name, *path;   /* file name inside the prediction folder, full path */
    char *stem;          /* name without its last extension */
    const char *claimed; /* the ground truth paired with it, NULL when none */
} pred_file;

typedef struct {
    char *path;
    char *key[2];        /* prediction stems to try in order; key[1] may be NULL */
    pred_file *pred;     /* its prediction, once paired */
} gt_file;

typedef struct {
    int n;
    gt_file *g;
    int folder;          /* a folder of masks (not a data-set root) */
    int ade;             /* ADE20K ground truth: value 0 = ignore, v = class v - 1 */
} gt_set;

static int cmp_pred(const void *a, const void *b) {
    return strcmp(((const pred_file *)a)->stem, ((const pred_file *)b)->stem);
}

/* Predictions sorted by stem; two files with one stem would make the pairing ambiguous. */
static int load_preds(const char *pred_dir, pred_file **out, int *n_out) {
    int n;
    char **names = camo_list_images(pred_dir, "prediction", CAMO_LIST_FILES, &n);
    if (!names) return CAMO_ERR_INPUT;
    if (n == 0) {
        free(names);
        CAMO_ERR("prediction folder %s has no images", pred_dir);
        return CAMO_ERR_INPUT;
    }
    pred_file *p = camo_calloc((size_t)n, sizeof *p);
    for (int i = 0; i < n; i++)
        p[i] = (pred_file){.name = names[i], .path = camo_path_join(pred_dir, names[i]),
                           .stem = camo_stem(names[i])};
    free(names);
    *out = p;
    *n_out = n;
    qsort(p, (size_t)n, sizeof *p, cmp_pred);
    for (int i = 1; i < n; i++)
        if (strcmp(p[i - 1].stem, p[i].stem) == 0) {
            CAMO_ERR("two predictions for one image in %s: %s and %s", pred_dir, p[i - 1].name,
                     p[i].name);
            return CAMO_ERR_INPUT;
        }
    return 0;
}

static void free_preds(pred_file *p, int n) {
    for (int i = 0; p && i < n; i++) {
        free(p[i].name);
        free(p[i].path);
        free(p[i].stem);
    }
    free(p);
}

/* ---- the ground truth: a folder of masks or a data set's split ---- */

/* Each mask pairs with the prediction of its own stem, else of its image's stem. */
static void gts_from_folder(gt_set *G, const char *dir, char **names, int n) {
    G->n = n;
    G->folder = 1;
    G->g = camo_calloc((size_t)n, sizeof *G->g);
    for (int i = 0; i < n; i++) {
        gt_file *g = &G->g[i];
        g->path = camo_path_join(dir, names[i]);
        g->key[0] = camo_stem(names[i]);
        size_t li = camo_mask_image_stem_len(names[i]);
        if (li < strlen(g->key[0])) {
            g->key[1] = camo_strdup(g->key[0]);
            g->key[1][li] = 0;
        }
    }
}

/* The split's (image, mask) pairs as training reads them (data.format's layouts and split
 * aliases); each mask pairs with the prediction named by its image's stem. */
static int gts_from_dataset(gt_set *G, const char *root, const camo_pred_eval *o) {
    camo_dataset *ds = camo_dataset_open(root, o->format ? o->format : "auto",
                                         o->split ? o->split : "Test",
                                         o->classes > 1 ? o->classes : 1, 0);
    if (!ds) return CAMO_ERR_INPUT;
    G->n = camo_dataset_size(ds);
    G->g = camo_calloc((size_t)G->n, sizeof *G->g);
    for (int i = 0; i < G->n; i++) {
        G->g[i].path = camo_strdup(camo_dataset_mask_path(ds, i));
        G->g[i].key[0] = camo_stem(camo_path_name(camo_dataset_image_path(ds, i)));
    }
    G->ade = !strcmp(camo_dataset_format(ds), "ade20k");
    camo_dataset_free(ds);
    return 0;
}

/* A folder holding mask images is a folder of masks; one without is a data-set root. */
static int load_gts(gt_set *G, const char *gt, const camo_pred_eval *o) {
    int n;
    char **names = camo_list_images(gt, "ground-truth", CAMO_LIST_FILES, &n);
    if (!names) return CAMO_ERR_INPUT;
    G->ade = o->format && !strcmp(o->format, "ade20k");
    if (n) {
        if (o->split) camo_warn("--split %s ignored: %s is a folder of masks", o->split, gt);
        gts_from_folder(G, gt, names, n);
        camo_free_names(names, n);
        return 0;
    }
    free(names);
    if (!gts_from_dataset(G, gt, o)) return 0;
    char why[1024];
    snprintf(why, sizeof why, "%s", camo_last_error());
    CAMO_ERR("ground-truth folder %s holds no mask images, and as a data-set root: %s", gt, why);
    return CAMO_ERR_INPUT;
}

static void free_gts(gt_set *G) {
    for (int i = 0; i < G->n; i++) {
        free(G->g[i].path);
        free(G->g[i].key[0]);
        free(G->g[i].key[1]);
    }
    free(G->g);
}

static pred_file *find_pred(pred_file *p, int n, const gt_file *g) {
    for (int k = 0; k < 2 && g->key[k]; k++) {
        pred_file key = {.stem = g->key[k]};
        pred_file *hit = bsearch(&key, p, (size_t)n, sizeof *p, cmp_pred);
        if (hit) return hit;
    }
    return NULL;
}

/* Every GT needs a prediction of its own: checked before decoding anything, so a missing one
 * fails fast (the error names the first and counts the rest), and a prediction two masks
 * claim (NAME.png and NAME_label.png) would be scored twice. */
static int pair_all(gt_set *G, pred_file *p, int np, const char *pred_dir) {
    int missing = 0;
    const gt_file *first = NULL;
    for (int i = 0; i < G->n; i++) {
        gt_file *g = &G->g[i];
        g->pred = find_pred(p, np, g);
        if (g->pred && g->pred->claimed) {
            CAMO_ERR("ground truths %s and %s both pair with prediction %s", g->pred->claimed,
                     g->path, g->pred->path);
            return CAMO_ERR_INPUT;
        }
        if (g->pred) g->pred->claimed = g->path;
        else if (!missing++) first = g;
    }
    if (!missing) return 0;
    const char *hint = G->folder && missing < G->n
                           ? "; if the folder holds several splits' masks (CAMO's GT/), give "
                             "the data-set root as --gt, with --split"
                           : "";
    const char *stem = first->key[1] ? first->key[1] : first->key[0];
    if (missing == 1)
        CAMO_ERR("no prediction for ground truth %s (expected %s/%s.*)%s", first->path,
                 pred_dir, stem, hint);
    else
        CAMO_ERR("no prediction for ground truth %s (expected %s/%s.*) and %d more%s",
                 first->path, pred_dir, stem, missing - 1, hint);
    return CAMO_ERR_INPUT;
}

static void warn_unpaired(const pred_file *p, int n, const char *pred_dir) {
    int extra = 0;
    for (int i = 0; i < n; i++)
        if (!p[i].claimed && extra++ < 5)
            camo_warn("prediction %s/%s has no ground truth: ignored", pred_dir, p[i].name);
    if (extra > 5) camo_warn("... %d predictions without ground truth in all", extra);
}

/* The two source pixels i0, i1 and the weight a of i1 for output pixel o along an axis of
 * n source pixels scaled by s: half-pixel centres, edges clamped. */
static void lin_taps(int o, double s, int n, int *i0, int *i1, double *a) {
    double f = (o + 0.5) * s - 0.5;
    int k = (int)floor(f);
    double w = f - k;
    if (k < 0) { k = 0; w = 0; }
    if (k >= n - 1) { k = n - 1; w = 0; }
    *i0 = k;
    *i1 = CAMO_MIN(k + 1, n - 1);
    *a = w;
}

/* Bilinear resize with half-pixel centres and edge clamping (cv2.resize INTER_LINEAR;
 * cv2 rounds through 11-bit fixed point, this in float: values may differ by 1). */
static void resize_bilinear(const uint8_t *src, int sw, int sh, uint8_t *dst, int dw, int dh) {
    double sx = (double)sw / dw, sy = (double)sh / dh;
    for (int y = 0; y < dh; y++) {
        int y0, y1, x0, x1;
        double ay, ax;
        lin_taps(y, sy, sh, &y0, &y1, &ay);
        for (int x = 0; x < dw; x++) {
            lin_taps(x, sx, sw, &x0, &x1, &ax);
            double top = src[y0 * sw + x0] * (1 - ax) + src[y0 * sw + x1] * ax;
            double bot = src[y1 * sw + x0] * (1 - ax) + src[y1 * sw + x1] * ax;
            double v = top * (1 - ay) + bot * ay;
            dst[(size_t)y * dw + x] = (uint8_t)CAMO_MIN(255.0, floor(v + 0.5));
        }
    }
}

static uint8_t *read_gray(const char *path, const char *what, int *w, int *h) {
    int c;
    uint8_t *px = stbi_load(path, w, h, &c, 1);
    if (!px) CAMO_ERR("cannot read %s %s: %s", what, path, stbi_failure_reason());
    return px;
}

/* A prediction and its ground truth as 8-bit maps of the GT's size (w, h). */
typedef struct {
    uint8_t *gt, *pred; /* pred: the decoded prediction, or `resized` */
    uint8_t *decoded, *resized;
    int w, h;
} map_pair;

/* Decodes both, resizing the prediction to the GT when the sizes differ: bilinear for
 * probabilities, nearest for class indices (interpolating would invent classes). 2 with an
 * error naming the file if either does not decode. */
static int read_pair(map_pair *P, const char *pred_path, const char *gt_path, int nearest) {
    int pw, ph;
    *P = (map_pair){0};
    P->gt = read_gray(gt_path, "ground truth", &P->w, &P->h);
    if (!P->gt) return CAMO_ERR_INPUT;
    P->pred = P->decoded = read_gray(pred_path, "prediction", &pw, &ph);
    if (!P->pred) {
        stbi_image_free(P->gt);
        return CAMO_ERR_INPUT;
    }
    if (pw != P->w || ph != P->h) {
        P->pred = P->resized = camo_malloc((size_t)P->w * P->h);
        if (nearest) camo_resize_nearest(P->decoded, pw, ph, P->resized, P->w, P->h);
        else resize_bilinear(P->decoded, pw, ph, P->resized, P->w, P->h);
    }
    return 0;
}

static void free_pair(map_pair *P) {
    free(P->resized);
    stbi_image_free(P->decoded);
    stbi_image_free(P->gt);
}

/* Scores one pair into acc; 2 with an error naming the file if either does not decode. */
static int score_pair(camo_sod_acc *acc, const char *pred_path, const char *gt_path) {
    map_pair P;
    if (read_pair(&P, pred_path, gt_path, 0)) return CAMO_ERR_INPUT;
    int rc = camo_sod_acc_add(acc, P.pred, P.gt, P.w, P.h);
    free_pair(&P);
    return rc;
}

/* What a multi-class scoring needs: the accumulator and the GT value -> class map. */
typedef struct {
    camo_cls_acc *acc;
    int K, ignore, ade; /* ade: GT 0 = ignore, v = class v - 1 (ADE20K annotations) */
    int32_t *p, *g;
    size_t cap;
} cls_job;

static int score_pair_cls(cls_job *J, const char *pred_path, const char *gt_path) {
    map_pair P;
    if (read_pair(&P, pred_path, gt_path, 1)) return CAMO_ERR_INPUT;
    size_t n = (size_t)P.w * P.h;
    if (n > J->cap) {
        J->p = camo_realloc(J->p, n * sizeof *J->p);
        J->g = camo_realloc(J->g, n * sizeof *J->g);
        J->cap = n;
    }
    for (size_t i = 0; i < n; i++) {
        J->p[i] = P.pred[i];
        J->g[i] = J->ade ? (P.gt[i] == 0 ? J->ignore : P.gt[i] - 1) : P.gt[i];
    }
    int rc = camo_cls_acc_add(J->acc, J->p, J->g, n);
    if (rc) { /* the reason is copied first: CAMO_ERR writes the buffer it is read from */
        char why[768];
        snprintf(why, sizeof why, "%s", camo_last_error());
        CAMO_ERR("%s vs %s: %s", pred_path, gt_path, why);
    }
    free_pair(&P);
    return rc;
}

static int score_binary_all(const gt_set *G, int json, FILE *out) {
    camo_sod_acc *acc = camo_sod_acc_new();
    int rc = 0;
    for (int i = 0; i < G->n && !rc; i++) rc = score_pair(acc, G->g[i].pred->path, G->g[i].path);
    if (!rc) {
        camo_sod_metrics m;
        camo_sod_acc_result(acc, &m);
        camo_sod_print(&m, out, json);
    }
    camo_sod_acc_free(acc);
    return rc;
}

static int score_classes_all(const gt_set *G, const camo_pred_eval *o, int json, FILE *out) {
    cls_job J = {.acc = camo_cls_acc_new(o->classes, o->ignore_index), .K = o->classes,
                 .ignore = o->ignore_index, .ade = G->ade};
    int rc = 0;
    for (int i = 0; i < G->n && !rc; i++) rc = score_pair_cls(&J, G->g[i].pred->path, G->g[i].path);
    if (!rc) {
        camo_cls_metrics m;
        double *iou = camo_calloc((size_t)J.K, sizeof(double));
        camo_cls_acc_result(J.acc, &m, iou);
        if (json) {
            fprintf(out, "{\"images\": %d, ", G->n);
            camo_cls_print_fields(&m, out);
            fputs("}\n", out);
        } else {
            fprintf(out, "images            %d\n", G->n);
            camo_cls_print(&m, out, 0);
        }
        free(iou);
    }
    camo_cls_acc_free(J.acc);
    free(J.p);
    free(J.g);
    return rc;
}

int camo_eval_pred(const char *pred_dir, const char *gt, const camo_pred_eval *o, int json,
                   FILE *out) {
    if (o->classes != 1 && (o->classes < 2 || o->classes > 256)) {
        CAMO_ERR("classes must be 1 (probability maps) or 2..256 (class-index maps), got %d",
                 o->classes);
        return CAMO_ERR_INPUT;
    }
    gt_set G = {0};
    pred_file *p = NULL;
    int np = 0;
    int rc = load_gts(&G, gt, o);
    if (!rc) rc = load_preds(pred_dir, &p, &np);
    if (!rc) rc = pair_all(&G, p, np, pred_dir);
    if (!rc) {
        warn_unpaired(p, np, pred_dir);
        rc = o->classes > 1 ? score_classes_all(&G, o, json, out)
                            : score_binary_all(&G, json, out);
    }
    free_preds(p, np);
    free_gts(&G);
    return rc;
}

int camo_eval_pred_dirs(const char *pred_dir, const char *gt_dir, int json, FILE *out) {
    return camo_eval_pred(pred_dir, gt_dir, &(camo_pred_eval){.classes = 1}, json, out);
}

int camo_eval_pred_dirs_cls(const char *pred_dir, const char *gt_dir, int classes,
                            int ignore_index, int ade20k, int json, FILE *out) {
    if (classes < 2) {
        CAMO_ERR("--classes must be >= 2 for class-index predictions (got %d)", classes);
        return CAMO_ERR_INPUT;
    }
    camo_pred_eval o = {.classes = classes, .ignore_index = ignore_index,
                        .format = ade20k ? "ade20k" : NULL};
    return camo_eval_pred(pred_dir, gt_dir, &o, json, out);
}
