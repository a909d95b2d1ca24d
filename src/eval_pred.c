/* eval_pred.c: scores a folder of saved prediction maps against ground-truth masks, the way
 * the field's evaluation scripts do (predictions resized to the GT, PySODMetrics-compatible
 * metrics from metrics.c). predict names a prediction after its image's stem; the ground
 * truth is a folder of masks (each paired by its own stem, else by its image's stem in the
 * layouts of data.c: CARLA's NAME_label.png is image NAME's) or a data-set root, whose split
 * is paired image -> mask exactly as training reads it (CAMO keeps every split's masks in
 * one GT/ folder, so only the split's image list says which masks were predicted). */
#include "camo/metrics.h"

#include "camo/common.h"
#include "camo/data.h"
#include "data_internal.h"

#include <dirent.h>
#include <math.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

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

static char *path_join(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = camo_malloc(n);
    snprintf(p, n, "%s/%s", dir, name);
    return p;
}

static char *file_stem(const char *name) {
    char *s = camo_strdup(name);
    char *dot = strrchr(s, '.');
    if (dot && dot != s) *dot = 0;
    return s;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int cmp_pred(const void *a, const void *b) {
    return strcmp(((const pred_file *)a)->stem, ((const pred_file *)b)->stem);
}

static void free_names(char **names, int n) {
    for (int i = 0; i < n; i++) free(names[i]);
    free(names);
}

/* The extensions data.c and predict read: other files (notes, overlays/) are not maps. */
static int is_image(const char *dir, const char *name) {
    static const char *const exts[] = {".png", ".jpg", ".jpeg", ".bmp"};
    const char *dot = strrchr(name, '.');
    int ok = 0;
    for (size_t i = 0; dot && dot != name && i < sizeof exts / sizeof *exts; i++)
        ok |= !strcasecmp(dot, exts[i]);
    if (!ok || name[0] == '.') return 0;
    char *path = path_join(dir, name);
    struct stat st;
    int regular = stat(path, &st) == 0 && S_ISREG(st.st_mode);
    free(path);
    return regular;
}

/* Image files of dir, sorted by name (a deterministic order); none is not an error here. */
static int list_images(const char *dir, const char *what, char ***names_out, int *n_out) {
    DIR *d = opendir(dir);
    if (!d) {
        CAMO_ERR("cannot open %s folder %s", what, dir);
        return CAMO_ERR_INPUT;
    }
    char **names = camo_malloc(sizeof *names);
    int n = 0, cap = 1;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!is_image(dir, e->d_name)) continue;
        if (n == cap) names = camo_realloc(names, (size_t)(cap *= 2) * sizeof *names);
        names[n++] = camo_strdup(e->d_name);
    }
    closedir(d);
    qsort(names, (size_t)n, sizeof *names, cmp_str);
    *names_out = names;
    *n_out = n;
    return 0;
}

/* Predictions sorted by stem; two files with one stem would make the pairing ambiguous. */
static int load_preds(const char *pred_dir, pred_file **out, int *n_out) {
    char **names;
    int n;
    if (list_images(pred_dir, "prediction", &names, &n)) return CAMO_ERR_INPUT;
    if (n == 0) {
        free(names);
        CAMO_ERR("prediction folder %s has no images", pred_dir);
        return CAMO_ERR_INPUT;
    }
    pred_file *p = camo_calloc((size_t)n, sizeof *p);
    for (int i = 0; i < n; i++)
        p[i] = (pred_file){.name = names[i], .path = path_join(pred_dir, names[i]),
                           .stem = file_stem(names[i])};
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
        g->path = path_join(dir, names[i]);
        g->key[0] = file_stem(names[i]);
        size_t li = data_image_stem_len(names[i]);
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
        const char *img = camo_dataset_image_path(ds, i), *base = strrchr(img, '/');
        G->g[i].path = camo_strdup(camo_dataset_mask_path(ds, i));
        G->g[i].key[0] = file_stem(base ? base + 1 : img);
    }
    G->ade = !strcmp(camo_dataset_format(ds), "ade20k");
    camo_dataset_free(ds);
    return 0;
}

/* A folder holding mask images is a folder of masks; one without is a data-set root. */
static int load_gts(gt_set *G, const char *gt, const camo_pred_eval *o) {
    char **names;
    int n;
    if (list_images(gt, "ground-truth", &names, &n)) return CAMO_ERR_INPUT;
    G->ade = o->format && !strcmp(o->format, "ade20k");
    if (n) {
        if (o->split) camo_warn("--split %s ignored: %s is a folder of masks", o->split, gt);
        gts_from_folder(G, gt, names, n);
        free_names(names, n);
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

/* Bilinear resize with half-pixel centres and edge clamping (cv2.resize INTER_LINEAR;
 * cv2 rounds through 11-bit fixed point, this in float: values may differ by 1). */
static void resize_bilinear(const uint8_t *src, int sw, int sh, uint8_t *dst, int dw, int dh) {
    double sx = (double)sw / dw, sy = (double)sh / dh;
    for (int y = 0; y < dh; y++) {
        double fy = (y + 0.5) * sy - 0.5;
        int y0 = (int)floor(fy);
        double ay = fy - y0;
        if (y0 < 0) { y0 = 0; ay = 0; }
        if (y0 >= sh - 1) { y0 = sh - 1; ay = 0; }
        int y1 = CAMO_MIN(y0 + 1, sh - 1);
        for (int x = 0; x < dw; x++) {
            double fx = (x + 0.5) * sx - 0.5;
            int x0 = (int)floor(fx);
            double ax = fx - x0;
            if (x0 < 0) { x0 = 0; ax = 0; }
            if (x0 >= sw - 1) { x0 = sw - 1; ax = 0; }
            int x1 = CAMO_MIN(x0 + 1, sw - 1);
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

/* Scores one pair into acc; 2 with an error naming the file if either does not decode. */
static int score_pair(camo_sod_acc *acc, const char *pred_path, const char *gt_path) {
    int gw, gh, pw, ph;
    uint8_t *gt = read_gray(gt_path, "ground truth", &gw, &gh);
    if (!gt) return CAMO_ERR_INPUT;
    uint8_t *pred = read_gray(pred_path, "prediction", &pw, &ph);
    if (!pred) {
        stbi_image_free(gt);
        return CAMO_ERR_INPUT;
    }
    uint8_t *use = pred, *resized = NULL;
    if (pw != gw || ph != gh) {
        resized = camo_malloc((size_t)gw * gh);
        resize_bilinear(pred, pw, ph, resized, gw, gh);
        use = resized;
    }
    int rc = camo_sod_acc_add(acc, use, gt, gw, gh);
    free(resized);
    stbi_image_free(pred);
    stbi_image_free(gt);
    return rc;
}

/* Class-index maps: nearest resize (interpolating would invent classes). */
static void resize_nearest(const uint8_t *src, int sw, int sh, uint8_t *dst, int dw, int dh) {
    for (int y = 0; y < dh; y++) {
        const uint8_t *row = src + (size_t)((2 * y + 1) * (int64_t)sh / (2 * dh)) * sw;
        for (int x = 0; x < dw; x++)
            dst[(size_t)y * dw + x] = row[(2 * x + 1) * (int64_t)sw / (2 * dw)];
    }
}

/* What a multi-class scoring needs: the accumulator and the GT value -> class map. */
typedef struct {
    camo_cls_acc *acc;
    int K, ignore, ade; /* ade: GT 0 = ignore, v = class v - 1 (ADE20K annotations) */
    int32_t *p, *g;
    size_t cap;
} cls_job;

static int score_pair_cls(cls_job *J, const char *pred_path, const char *gt_path) {
    int gw, gh, pw, ph;
    uint8_t *gt = read_gray(gt_path, "ground truth", &gw, &gh);
    if (!gt) return CAMO_ERR_INPUT;
    uint8_t *pred = read_gray(pred_path, "prediction", &pw, &ph);
    if (!pred) { stbi_image_free(gt); return CAMO_ERR_INPUT; }
    size_t n = (size_t)gw * gh;
    uint8_t *use = pred, *resized = NULL;
    if (pw != gw || ph != gh) {
        resized = camo_malloc(n);
        resize_nearest(pred, pw, ph, resized, gw, gh);
        use = resized;
    }
    if (n > J->cap) {
        J->p = camo_realloc(J->p, n * sizeof *J->p);
        J->g = camo_realloc(J->g, n * sizeof *J->g);
        J->cap = n;
    }
    for (size_t i = 0; i < n; i++) {
        J->p[i] = use[i];
        J->g[i] = J->ade ? (gt[i] == 0 ? J->ignore : gt[i] - 1) : gt[i];
    }
    int rc = camo_cls_acc_add(J->acc, J->p, J->g, n);
    if (rc) CAMO_ERR("%s vs %s: %s", pred_path, gt_path, camo_last_error());
    free(resized);
    stbi_image_free(pred);
    stbi_image_free(gt);
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
