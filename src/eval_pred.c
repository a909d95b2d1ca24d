/* eval_pred.c: scores a folder of saved prediction maps against a folder of ground-truth
 * masks, the way the field's evaluation scripts do (pairs by file stem, predictions resized
 * to the GT, PySODMetrics-compatible metrics from metrics.c). */
#include "camo/metrics.h"

#include "camo/common.h"

#include <dirent.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>

#include <stb_image.h>

typedef struct {
    char *name;  /* file name inside its folder */
    char *stem;  /* name without its last extension */
    int used;
} pred_file;

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

/* Regular, non-hidden files of dir, sorted by name (a deterministic order). */
static int list_files(const char *dir, const char *what, char ***names_out, int *n_out) {
    DIR *d = opendir(dir);
    if (!d) {
        CAMO_ERR("cannot open %s folder %s", what, dir);
        return CAMO_ERR_INPUT;
    }
    char **names = NULL;
    int n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char *path = path_join(dir, e->d_name);
        struct stat st;
        int regular = stat(path, &st) == 0 && S_ISREG(st.st_mode);
        free(path);
        if (!regular) continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 64;
            names = camo_realloc(names, (size_t)cap * sizeof(char *));
        }
        names[n++] = camo_strdup(e->d_name);
    }
    closedir(d);
    if (n == 0) {
        free(names);
        CAMO_ERR("%s folder %s has no files", what, dir);
        return CAMO_ERR_INPUT;
    }
    qsort(names, (size_t)n, sizeof(char *), cmp_str);
    *names_out = names;
    *n_out = n;
    return 0;
}

/* Predictions sorted by stem; two files with one stem would make the pairing ambiguous. */
static int index_preds(const char *pred_dir, char **names, int n, pred_file **out) {
    pred_file *p = camo_calloc((size_t)n, sizeof *p);
    for (int i = 0; i < n; i++) {
        p[i].name = names[i];
        p[i].stem = file_stem(names[i]);
    }
    qsort(p, (size_t)n, sizeof *p, cmp_pred);
    for (int i = 1; i < n; i++)
        if (strcmp(p[i - 1].stem, p[i].stem) == 0) {
            CAMO_ERR("two predictions for one image in %s: %s and %s", pred_dir, p[i - 1].name,
                     p[i].name);
            for (int j = 0; j < n; j++) free(p[j].stem);
            free(p);
            return CAMO_ERR_INPUT;
        }
    *out = p;
    return 0;
}

static pred_file *find_pred(pred_file *p, int n, const char *gt_name) {
    char *stem = file_stem(gt_name);
    pred_file key = {.stem = stem};
    pred_file *hit = bsearch(&key, p, (size_t)n, sizeof *p, cmp_pred);
    free(stem);
    return hit;
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

static uint8_t *read_gray(const char *dir, const char *name, const char *what, int *w, int *h) {
    char *path = path_join(dir, name);
    int c;
    uint8_t *px = stbi_load(path, w, h, &c, 1);
    if (!px) CAMO_ERR("cannot read %s %s: %s", what, path, stbi_failure_reason());
    free(path);
    return px;
}

/* Scores one pair into acc; 2 with an error naming the file if either does not decode. */
static int score_pair(camo_sod_acc *acc, const char *pred_dir, const char *pred_name,
                      const char *gt_dir, const char *gt_name) {
    int gw, gh, pw, ph;
    uint8_t *gt = read_gray(gt_dir, gt_name, "ground truth", &gw, &gh);
    if (!gt) return CAMO_ERR_INPUT;
    uint8_t *pred = read_gray(pred_dir, pred_name, "prediction", &pw, &ph);
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

static int score_pair_cls(cls_job *J, const char *pred_dir, const char *pred_name,
                          const char *gt_dir, const char *gt_name) {
    int gw, gh, pw, ph;
    uint8_t *gt = read_gray(gt_dir, gt_name, "ground truth", &gw, &gh);
    if (!gt) return CAMO_ERR_INPUT;
    uint8_t *pred = read_gray(pred_dir, pred_name, "prediction", &pw, &ph);
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
    if (rc) CAMO_ERR("%s/%s vs %s/%s: %s", pred_dir, pred_name, gt_dir, gt_name, camo_last_error());
    free(resized);
    stbi_image_free(pred);
    stbi_image_free(gt);
    return rc;
}

/* Every GT needs a prediction: checked before decoding anything, so a missing one fails
 * fast; the error names the first and counts the rest. */
static int check_all_paired(pred_file *p, int np, char **gts, int ng, const char *pred_dir,
                            const char *gt_dir) {
    int missing = 0;
    const char *first = NULL;
    for (int i = 0; i < ng; i++) {
        pred_file *hit = find_pred(p, np, gts[i]);
        if (hit) hit->used = 1;
        else if (!missing++) first = gts[i];
    }
    if (!missing) return 0;
    char *stem = file_stem(first);
    if (missing == 1)
        CAMO_ERR("no prediction for ground truth %s/%s (expected %s/%s.*)", gt_dir, first,
                 pred_dir, stem);
    else
        CAMO_ERR("no prediction for ground truth %s/%s (expected %s/%s.*) and %d more", gt_dir,
                 first, pred_dir, stem, missing - 1);
    free(stem);
    return CAMO_ERR_INPUT;
}

static void warn_unpaired(const pred_file *p, int n, const char *pred_dir) {
    int extra = 0;
    for (int i = 0; i < n; i++)
        if (!p[i].used && extra++ < 5)
            camo_warn("prediction %s/%s has no ground truth: ignored", pred_dir, p[i].name);
    if (extra > 5) camo_warn("... %d predictions without ground truth in all", extra);
}

/* Scores every pair, binary (J == NULL) or multi-class, and prints the result. */
static int score_all(pred_file *p, int np, char **gts, int ng, const char *pred_dir,
                     const char *gt_dir, cls_job *J, int json, FILE *out) {
    int rc = 0;
    camo_sod_acc *acc = J ? NULL : camo_sod_acc_new();
    for (int i = 0; i < ng && !rc; i++) {
        const char *pn = find_pred(p, np, gts[i])->name;
        rc = J ? score_pair_cls(J, pred_dir, pn, gt_dir, gts[i])
               : score_pair(acc, pred_dir, pn, gt_dir, gts[i]);
    }
    if (!rc && J) {
        camo_cls_metrics m;
        double *iou = camo_calloc((size_t)J->K, sizeof(double));
        camo_cls_acc_result(J->acc, &m, iou);
        if (json) {
            fprintf(out, "{\"images\": %d, ", ng);
            camo_cls_print_fields(&m, out);
            fputs("}\n", out);
        } else {
            fprintf(out, "images            %d\n", ng);
            camo_cls_print(&m, out, 0);
        }
        free(iou);
    } else if (!rc) {
        camo_sod_metrics m;
        camo_sod_acc_result(acc, &m);
        camo_sod_print(&m, out, json);
    }
    camo_sod_acc_free(acc);
    return rc;
}

static int eval_dirs(const char *pred_dir, const char *gt_dir, cls_job *J, int json, FILE *out) {
    char **gts = NULL, **preds = NULL;
    int ng = 0, np = 0, rc;
    pred_file *p = NULL;
    if ((rc = list_files(gt_dir, "ground-truth", &gts, &ng))) return rc;
    if ((rc = list_files(pred_dir, "prediction", &preds, &np))) goto done;
    if ((rc = index_preds(pred_dir, preds, np, &p))) goto done;
    if ((rc = check_all_paired(p, np, gts, ng, pred_dir, gt_dir))) goto done;
    warn_unpaired(p, np, pred_dir);
    rc = score_all(p, np, gts, ng, pred_dir, gt_dir, J, json, out);
done:
    if (p)
        for (int i = 0; i < np; i++) free(p[i].stem);
    free(p);
    free_names(preds, np);
    free_names(gts, ng);
    return rc;
}

int camo_eval_pred_dirs(const char *pred_dir, const char *gt_dir, int json, FILE *out) {
    return eval_dirs(pred_dir, gt_dir, NULL, json, out);
}

int camo_eval_pred_dirs_cls(const char *pred_dir, const char *gt_dir, int classes,
                            int ignore_index, int ade20k, int json, FILE *out) {
    if (classes < 2) {
        CAMO_ERR("--classes must be >= 2 for class-index predictions (got %d)", classes);
        return CAMO_ERR_INPUT;
    }
    cls_job J = {.acc = camo_cls_acc_new(classes, ignore_index), .K = classes,
                 .ignore = ignore_index,
                 .ade = ade20k};
    int rc = eval_dirs(pred_dir, gt_dir, &J, json, out);
    camo_cls_acc_free(J.acc);
    free(J.p);
    free(J.g);
    return rc;
}
