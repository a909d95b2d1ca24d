/* cli_eval.c: `camotrain eval` (a checkpoint on a data set, or saved predictions against
 * ground truth) and `camotrain predict` (probability or class-index PNGs per image). */
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "camo/checkpoint.h"
#include "camo/cli.h"
#include "camo/common.h"
#include "camo/config.h"
#include "camo/data.h"
#include "camo/metrics.h"
#include "camo/train.h"

typedef struct {
    const char *ckpt, *data, *split, *pred, *gt, *input, *output;
    int json, overlay, no_ema;
    char *sets[64];
    int n_sets;
} eval_args;

static int parse(int argc, char **argv, eval_args *a, const char *cmd) {
    for (int i = 0; i < argc; i++) {
        const char *f = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        const char **dst = !strcmp(f, "--ckpt") ? &a->ckpt : !strcmp(f, "--data") ? &a->data :
                           !strcmp(f, "--split") ? &a->split : !strcmp(f, "--pred") ? &a->pred :
                           !strcmp(f, "--gt") ? &a->gt : !strcmp(f, "--input") ? &a->input :
                           !strcmp(f, "--output") ? &a->output : NULL;
        if (dst || !strcmp(f, "--set")) {
            if (!v) { fprintf(stderr, "camotrain %s: %s needs a value\n", cmd, f); return -1; }
            if (dst) *dst = v;
            else if (a->n_sets < 64) a->sets[a->n_sets++] = argv[i + 1];
            i++;
        } else if (!strcmp(f, "--json")) a->json = 1;
        else if (!strcmp(f, "--overlay")) a->overlay = 1;
        else if (!strcmp(f, "--no-ema")) a->no_ema = 1;
        else { fprintf(stderr, "camotrain %s: unknown option '%s'\n", cmd, f); return -1; }
    }
    return 0;
}

/* A checkpoint's network with its (EMA) weights, and its config with overrides. */
static camo_net *load_model(const eval_args *a, camo_config *c, camo_backend *be, int *loaded) {
    camo_ckpt *ck = camo_ckpt_open(a->ckpt);
    if (!ck) return NULL;
    *loaded = 1; /* camo_config_load below always needs camo_config_free */
    camo_net *net = NULL;
    char data_set[CAMO_PATH_MAX + 16];
    char *sets[66];
    int n = 0;
    for (int i = 0; i < a->n_sets; i++) sets[n++] = a->sets[i];
    if (a->data) { snprintf(data_set, sizeof data_set, "data.root=%s", a->data); sets[n++] = data_set; }
    if (camo_config_load(c, a->ckpt, ck->config_text, sets, n) == 0) {
        net = camo_build_net_from_text(ck->network_text, a->ckpt, be);
        if (net && camo_ckpt_load_weights(ck, net, !a->no_ema)) { camo_net_free(net); net = NULL; }
    }
    camo_ckpt_close(ck);
    return net;
}

static void print_result(const camo_eval_result *r, int classes, int json) {
    if (json) {
        printf("{\"images\":%d,\"loss\":%.6g,\"iou\":%.6g,\"dice\":%.6g,\"mae\":%.6g", r->n_images,
               r->loss, r->iou, r->dice, r->mae);
        if (classes > 1) printf(",\"miou\":%.6g,\"pixel_acc\":%.6g", r->miou, r->pixel_acc);
        printf(",\"seconds\":%.3f}\n", r->seconds);
        return;
    }
    printf("images  %d\nloss    %.4f\n", r->n_images, r->loss);
    if (classes > 1) printf("mIoU    %.4f\npixacc  %.4f\n", r->miou, r->pixel_acc);
    else printf("IoU     %.4f\nDice    %.4f\nMAE     %.4f\n", r->iou, r->dice, r->mae);
}

static int eval_checkpoint(const eval_args *a) {
    camo_backend *be = camo_backend_cpu_create(0);
    camo_config c;
    int rc = CAMO_ERR_INPUT, loaded = 0;
    camo_net *net = load_model(a, &c, be, &loaded);
    camo_dataset *ds = NULL;
    if (net) {
        const char *split = a->split ? a->split : c.data.val_split;
        ds = camo_dataset_open(c.data.root, c.data.format, split, c.data.classes, c.data.skip_bad);
    }
    camo_eval_result r;
    if (ds && camo_evaluate(net, &c, ds, c.data.workers, &r) == 0) {
        print_result(&r, net->classes, a->json);
        rc = CAMO_OK;
    }
    if (rc) fprintf(stderr, "camotrain: error: %s\n", camo_last_error());
    if (ds) camo_dataset_free(ds);
    camo_net_free(net);
    if (loaded) camo_config_free(&c);
    be->destroy(be);
    return rc;
}

int cli_eval(int argc, char **argv) {
    eval_args a;
    memset(&a, 0, sizeof a);
    if (parse(argc, argv, &a, "eval")) return CAMO_ERR_INPUT;
    if (a.pred || a.gt) {
        if (!a.pred || !a.gt) {
            fprintf(stderr, "camotrain eval: --pred and --gt go together\n");
            return CAMO_ERR_INPUT;
        }
        return camo_eval_pred_dirs(a.pred, a.gt, a.json, stdout);
    }
    if (!a.ckpt) {
        fprintf(stderr, "usage: camotrain eval --ckpt C [--data DIR] [--split S] [--json] [--no-ema]\n"
                        "       camotrain eval --pred DIR --gt DIR [--json]\n");
        return CAMO_ERR_INPUT;
    }
    return eval_checkpoint(&a);
}

/* ---- predict ---- */

/* Bilinear resize of an (h, w, C) float image, PyTorch align_corners=False sampling. */
static void resize_bilinear(const float *src, int h, int w, int C, float *dst, int H, int W) {
    for (int y = 0; y < H; y++) {
        float sy = fmaxf(0.0f, (y + 0.5f) * h / (float)H - 0.5f);
        int y0 = (int)sy, y1 = y0 + (y0 < h - 1);
        float fy = sy - y0;
        for (int x = 0; x < W; x++) {
            float sx = fmaxf(0.0f, (x + 0.5f) * w / (float)W - 0.5f);
            int x0 = (int)sx, x1 = x0 + (x0 < w - 1);
            float fx = sx - x0;
            for (int c = 0; c < C; c++) {
                float a = src[((size_t)y0 * w + x0) * C + c], b = src[((size_t)y0 * w + x1) * C + c];
                float d = src[((size_t)y1 * w + x0) * C + c], e = src[((size_t)y1 * w + x1) * C + c];
                dst[((size_t)y * W + x) * C + c] = (1 - fy) * ((1 - fx) * a + fx * b) + fy * ((1 - fx) * d + fx * e);
            }
        }
    }
}

static int is_image(const char *name) {
    const char *dot = strrchr(name, '.');
    if (!dot) return 0;
    return !strcasecmp(dot, ".jpg") || !strcasecmp(dot, ".jpeg") || !strcasecmp(dot, ".png") ||
           !strcasecmp(dot, ".bmp");
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Sorted image file names of a folder; NULL + error when it cannot be read or is empty. */
static char **list_images(const char *dir, int *n) {
    DIR *d = opendir(dir);
    if (!d) { CAMO_ERR("%s: cannot open folder: %s", dir, strerror(errno)); return NULL; }
    char **names = NULL;
    int cap = 0;
    *n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!is_image(e->d_name)) continue;
        if (*n == cap) names = camo_realloc(names, (size_t)(cap = cap ? 2 * cap : 64) * sizeof *names);
        names[(*n)++] = camo_strdup(e->d_name);
    }
    closedir(d);
    if (!*n) { CAMO_ERR("%s: no .jpg/.png/.bmp images", dir); free(names); return NULL; }
    qsort(names, (size_t)*n, sizeof *names, cmp_str);
    return names;
}

/* One image: preprocess like validation, forward, map back to the original size. */
static int predict_one(camo_net *net, const camo_config *c, const char *in_path, const char *out_path) {
    int w, h, S = net->H, K = net->classes;
    uint8_t *px = camo_image_read(in_path, 3, &w, &h);
    if (!px) return -1;
    static const float mean[3] = {0.485f, 0.456f, 0.406f}, std[3] = {0.229f, 0.224f, 0.225f};
    float *img = camo_malloc((size_t)w * h * 3 * sizeof(float));
    for (size_t i = 0; i < (size_t)w * h * 3; i++) img[i] = (px[i] / 255.0f - mean[i % 3]) / std[i % 3];
    float *in = camo_malloc((size_t)S * S * 3 * sizeof(float));
    resize_bilinear(img, h, w, 3, in, S, S);
    net->be->upload(net->be, net->input, in, (size_t)S * S * 3 * sizeof(float));
    camo_net_forward(net, 1, 0);
    float *logits = camo_malloc((size_t)S * S * K * sizeof(float));
    net->be->download(net->be, logits, camo_net_output(net, 0, NULL, NULL, NULL), (size_t)S * S * K * sizeof(float));
    float *big = camo_malloc((size_t)w * h * K * sizeof(float));
    resize_bilinear(logits, S, S, K, big, h, w); /* logits, then sigmoid/argmax at full size */
    for (size_t i = 0; i < (size_t)w * h; i++) {
        if (K == 1) { px[i] = (uint8_t)lrintf(255.0f / (1.0f + expf(-big[i]))); continue; }
        int best = 0;
        for (int k = 1; k < K; k++) if (big[i * K + k] > big[i * K + best]) best = k;
        px[i] = (uint8_t)best;
    }
    (void)c;
    int rc = camo_png_write_gray(out_path, px, w, h);
    free(px); free(img); free(in); free(logits); free(big);
    return rc;
}

int cli_predict(int argc, char **argv) {
    eval_args a;
    memset(&a, 0, sizeof a);
    if (parse(argc, argv, &a, "predict")) return CAMO_ERR_INPUT;
    if (!a.ckpt || !a.input || !a.output) {
        fprintf(stderr, "usage: camotrain predict --ckpt C --input DIR --output DIR [--no-ema]\n");
        return CAMO_ERR_INPUT;
    }
    camo_backend *be = camo_backend_cpu_create(0);
    camo_config c;
    int loaded = 0, n = 0, rc = CAMO_ERR_INPUT;
    camo_net *net = load_model(&a, &c, be, &loaded);
    char **names = net ? list_images(a.input, &n) : NULL;
    if (names && mkdir(a.output, 0755) != 0 && errno != EEXIST)
        CAMO_ERR("%s: cannot create: %s", a.output, strerror(errno));
    else if (names && camo_net_set_input_size(net, 1, c.data.aug.size, c.data.aug.size) == 0) {
        rc = CAMO_OK;
        for (int i = 0; i < n && rc == CAMO_OK; i++) {
            char in_path[CAMO_PATH_MAX * 2], out_path[CAMO_PATH_MAX * 2];
            snprintf(in_path, sizeof in_path, "%s/%s", a.input, names[i]);
            snprintf(out_path, sizeof out_path, "%s/%.*s.png", a.output,
                     (int)(strrchr(names[i], '.') - names[i]), names[i]);
            if (predict_one(net, &c, in_path, out_path)) rc = CAMO_ERR_INPUT;
        }
        if (rc == CAMO_OK) printf("predict: %d images -> %s\n", n, a.output);
    }
    if (rc) fprintf(stderr, "camotrain: error: %s\n", camo_last_error());
    for (int i = 0; i < n; i++) free(names[i]);
    free(names);
    camo_net_free(net);
    if (loaded) camo_config_free(&c);
    be->destroy(be);
    return rc;
}
