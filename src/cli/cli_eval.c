/* cli_eval.c: `camotrain eval` (a checkpoint on a data set, or saved predictions against
 * ground truth) and `camotrain predict` (probability or class-index PNGs per image). */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "nn/checkpoint.h"
#include "cli/cli.h"
#include "core/common.h"
#include "core/fs.h"
#include "train/config.h"
#include "data/data.h"
#include "train/evaluate.h"
#include "train/metrics.h"
#include "train/train.h"

typedef struct {
    const char *ckpt, *data, *split, *pred, *gt, *input, *output, *classes, *ignore, *format;
    const char *dump; /* predict --dump-logits DIR (hidden: tools/onnx_check.py) */
    int json, overlay, no_ema;
    char *sets[64];
    int n_sets;
} eval_args;

static void eval_usage(FILE *f) {
    fputs("usage: camotrain eval --ckpt C [--data DIR] [--split S] [--set k=v] [--json] "
          "[--no-ema]\n"
          "       camotrain eval --pred DIR --gt MASKS|ROOT [--split S] [--format F] "
          "[--json]\n"
          "       camotrain eval --pred DIR --gt MASKS|ROOT --classes K [--ignore-index I] "
          "[--split S] [--format F] [--json]\n"
          "  scores a checkpoint on a data set split (default: its validation split) or\n"
          "  saved prediction PNGs (predict's, named by image stem) against a folder of masks\n"
          "  (NAME.png or NAME_label.png) or a data set ROOT's split (default Test: test, val,\n"
          "  valid, ...), paired as training pairs them; F: a data.format (ade20k: GT 0 is\n"
          "  ignored, v is class v - 1)\n", f);
}

static void predict_usage(FILE *f) {
    fputs("usage: camotrain predict --ckpt C --input DIR --output DIR [--overlay] [--no-ema]\n"
          "  writes OUTPUT/NAME.png: foreground probability 0..255 (binary) or class\n"
          "  index (multi-class); --overlay also OUTPUT/overlay/NAME.png\n", f);
}

static int parse(int argc, char **argv, eval_args *a, const char *cmd) {
    for (int i = 0; i < argc; i++) {
        const char *f = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        const char **dst = !strcmp(f, "--ckpt") ? &a->ckpt : !strcmp(f, "--data") ? &a->data :
                           !strcmp(f, "--split") ? &a->split : !strcmp(f, "--pred") ? &a->pred :
                           !strcmp(f, "--gt") ? &a->gt : !strcmp(f, "--input") ? &a->input :
                           !strcmp(f, "--output") ? &a->output :
                           !strcmp(f, "--classes") ? &a->classes :
                           !strcmp(f, "--ignore-index") ? &a->ignore :
                           !strcmp(f, "--format") ? &a->format :
                           !strcmp(f, "--dump-logits") ? &a->dump : NULL;
        if (dst || !strcmp(f, "--set")) {
            if (!v) { fprintf(stderr, "camotrain %s: %s needs a value\n", cmd, f); return -1; }
            if (dst) *dst = v;
            else if (a->n_sets < 64) a->sets[a->n_sets++] = argv[i + 1];
            i++;
        } else if (!strcmp(f, "--help") || !strcmp(f, "-h")) {
            (!strcmp(cmd, "eval") ? eval_usage : predict_usage)(stdout);
            return 1;
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
        net = camo_net_build_from_text(ck->network_text, a->ckpt, be);
        if (net && camo_ckpt_load_weights(ck, net, !a->no_ema)) { camo_net_free(net); net = NULL; }
    }
    camo_ckpt_close(ck);
    return net;
}

/* What eval --ckpt and predict run: the checkpoint's model on the CPU backend. */
typedef struct {
    camo_backend *be;
    camo_config c;
    int loaded;    /* c needs camo_config_free */
    camo_net *net; /* NULL + error when the checkpoint did not load */
} model;

static void model_open(model *m, const eval_args *a) {
    m->be = camo_backend_cpu_create(0);
    m->loaded = 0;
    m->net = load_model(a, &m->c, m->be, &m->loaded);
}

static void model_close(model *m) {
    camo_net_free(m->net);
    if (m->loaded) camo_config_free(&m->c);
    m->be->destroy(m->be);
}

static int eval_checkpoint(const eval_args *a) {
    model m;
    model_open(&m, a);
    const camo_config *c = &m.c;
    int rc = CAMO_ERR_INPUT;
    camo_dataset *ds = NULL;
    if (m.net) {
        const char *split = a->split ? a->split : c->data.val_split;
        ds = camo_dataset_open(c->data.root, c->data.format, split, c->data.classes,
                               c->data.skip_bad);
        if (ds) camo_dataset_set_ignore_index(ds, c->data.ignore_index);
    }
    camo_eval_full e;
    if (ds && camo_evaluate_full(m.net, c, ds, c->data.workers, &e) == 0) {
        camo_eval_full_print(&e, stdout, a->json);
        camo_eval_full_free(&e);
        rc = CAMO_OK;
    }
    if (rc) fprintf(stderr, "camotrain: error: %s\n", camo_last_error());
    if (ds) camo_dataset_free(ds);
    model_close(&m);
    return rc;
}

/* data.format's values: --format names the layout of a --gt data-set root. */
static int known_format(const char *f) {
    static const char *const names[] = {"auto", "cod10k", "camo", "carla", "ade20k", "folders"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        if (!strcmp(f, names[i])) return 1;
    return 0;
}

/* eval --pred DIR --gt MASKS|ROOT: saved probability maps, or class-index maps with --classes. */
static int eval_pred(const eval_args *a) {
    if (!a->pred || !a->gt) {
        fprintf(stderr, "camotrain eval: --pred and --gt go together\n");
        return CAMO_ERR_INPUT;
    }
    char *end;
    long K = 1, ig = 255; /* binary maps; the usual ignore value */
    int bad = 0;
    if (a->classes) {
        K = strtol(a->classes, &end, 10);
        bad |= *end || K < 2 || K > 256;
    }
    if (a->ignore) {
        ig = strtol(a->ignore, &end, 10);
        bad |= *end != 0;
    }
    if (bad) {
        fprintf(stderr, "camotrain eval: --classes needs an integer in [2, 256], "
                        "--ignore-index an integer\n");
        return CAMO_ERR_INPUT;
    }
    if (a->format && !known_format(a->format)) {
        fprintf(stderr, "camotrain eval: --format '%s': expected auto, cod10k, camo, carla, "
                        "ade20k or folders\n", a->format);
        return CAMO_ERR_INPUT;
    }
    camo_pred_eval o = {.classes = (int)K, .ignore_index = (int)ig, .format = a->format,
                        .split = a->split};
    int rc = camo_eval_pred(a->pred, a->gt, &o, a->json, stdout);
    if (rc) fprintf(stderr, "camotrain: error: %s\n", camo_last_error());
    return rc;
}

int cli_eval(int argc, char **argv) {
    eval_args a;
    memset(&a, 0, sizeof a);
    int prc = parse(argc, argv, &a, "eval"); /* 1: --help printed */
    if (prc) return prc > 0 ? CAMO_OK : CAMO_ERR_INPUT;
    if (a.pred || a.gt) return eval_pred(&a);
    if (!a.ckpt) {
        eval_usage(stderr);
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

/* predict's input images, sorted by name (dot-files included, as predict has always read
 * them); NULL + error when the folder cannot be read or holds none. */
static char **input_images(const char *dir, int *n) {
    char **names = camo_list_images(dir, NULL, CAMO_LIST_HIDDEN, n);
    if (names && !*n) {
        CAMO_ERR("%s: no .jpg/.png/.bmp images", dir);
        free(names);
        names = NULL;
    }
    return names;
}

/* Colour of class k in overlays: the PASCAL VOC palette (bits of k spread over r, g, b). */
static void class_colour(int k, uint8_t rgb[3]) {
    rgb[0] = rgb[1] = rgb[2] = 0;
    for (int bit = 7; k; bit--, k >>= 3)
        for (int c = 0; c < 3; c++) rgb[c] |= (uint8_t)(((k >> c) & 1) << bit);
}

/* Blends the prediction over the image in place: classes (K > 1, class 0 left as is) in
 * their palette colour at half strength; binary: red, as strong as the probability / 2. */
static void overlay(uint8_t *rgb, const uint8_t *pred, size_t n, int K) {
    for (size_t i = 0; i < n; i++) {
        uint8_t col[3] = {255, 0, 0};
        float a = K > 1 ? (pred[i] ? 0.5f : 0) : pred[i] / 510.0f;
        if (K > 1) class_colour(pred[i], col);
        for (int c = 0; c < 3; c++)
            rgb[3 * i + c] = (uint8_t)lrintf(rgb[3 * i + c] * (1 - a) + col[c] * a);
    }
}

/* One image: preprocess like validation, forward, logits resized to the original size, then
 * sigmoid (binary: probability PNG) or argmax (class-index PNG); the overlay when asked. */
static int predict_one(camo_net *net, const char *in_path, const char *out_path,
                       const char *overlay_path, const char *dump) {
    int w, h, S = net->H, K = net->classes;
    uint8_t *px = camo_image_read(in_path, 3, &w, &h);
    if (!px) return -1;
    float *in = camo_malloc((size_t)S * S * 3 * sizeof(float));
    camo_image_preprocess(px, w, h, S, in);
    net->be->upload(net->be, net->input, in, (size_t)S * S * 3 * sizeof(float));
    camo_net_forward(net, 1, 0);
    float *logits = camo_malloc((size_t)S * S * K * sizeof(float));
    net->be->download(net->be, logits, camo_net_output(net, 0, NULL, NULL, NULL),
                      (size_t)S * S * K * sizeof(float));
    int rc = 0;
    if (dump) { /* --dump-logits: the network's input and logits as NCHW .npy files */
        char dp[CAMO_PATH_MAX * 3];
        snprintf(dp, sizeof dp, "%s.input.npy", dump);
        rc = cli_write_npy_nchw(dp, in, 1, S, S, 3);
        snprintf(dp, sizeof dp, "%s.logits.npy", dump);
        rc = rc || cli_write_npy_nchw(dp, logits, 1, S, S, K);
    }
    float *big = camo_malloc((size_t)w * h * K * sizeof(float));
    resize_bilinear(logits, S, S, K, big, h, w); /* logits, then sigmoid/argmax at full size */
    uint8_t *pred = camo_malloc((size_t)w * h);
    for (size_t i = 0; i < (size_t)w * h; i++) {
        if (K == 1) { pred[i] = (uint8_t)lrintf(255.0f / (1.0f + expf(-big[i]))); continue; }
        int best = 0;
        for (int k = 1; k < K; k++) if (big[i * K + k] > big[i * K + best]) best = k;
        pred[i] = (uint8_t)best;
    }
    rc = rc ? rc : camo_png_write_gray(out_path, pred, w, h);
    if (!rc && overlay_path) {
        overlay(px, pred, (size_t)w * h, K);
        rc = camo_png_write_rgb(overlay_path, px, w, h);
    }
    free(px); free(in); free(logits); free(big); free(pred);
    return rc;
}

/* OUTPUT/STEM.png and, with --overlay, OUTPUT/overlay/STEM.png for each input image. */
static int predict_all(camo_net *net, const eval_args *a, char **names, int n) {
    char ov_dir[CAMO_PATH_MAX + 16];
    snprintf(ov_dir, sizeof ov_dir, "%s/overlay", a->output);
    if (a->overlay && mkdir(ov_dir, 0755) != 0 && errno != EEXIST) {
        CAMO_ERR("%s: cannot create: %s", ov_dir, strerror(errno));
        return CAMO_ERR_INPUT;
    }
    for (int i = 0; i < n; i++) {
        char in_path[CAMO_PATH_MAX * 2], out_path[CAMO_PATH_MAX * 2], ov_path[CAMO_PATH_MAX * 3];
        int stem = (int)camo_stem_len(names[i]);
        snprintf(in_path, sizeof in_path, "%s/%s", a->input, names[i]);
        snprintf(out_path, sizeof out_path, "%s/%.*s.png", a->output, stem, names[i]);
        snprintf(ov_path, sizeof ov_path, "%s/%.*s.png", ov_dir, stem, names[i]);
        char dump[CAMO_PATH_MAX * 2];
        snprintf(dump, sizeof dump, "%s/%.*s", a->dump ? a->dump : "", stem, names[i]);
        if (predict_one(net, in_path, out_path, a->overlay ? ov_path : NULL,
                        a->dump ? dump : NULL))
            return CAMO_ERR_INPUT;
    }
    printf("predict: %d images -> %s%s\n", n, a->output,
           a->overlay ? " (overlays in overlay/)" : "");
    return CAMO_OK;
}

int cli_predict(int argc, char **argv) {
    eval_args a;
    memset(&a, 0, sizeof a);
    int prc = parse(argc, argv, &a, "predict"); /* 1: --help printed */
    if (prc) return prc > 0 ? CAMO_OK : CAMO_ERR_INPUT;
    if (!a.ckpt || !a.input || !a.output) {
        predict_usage(stderr);
        return CAMO_ERR_INPUT;
    }
    model m;
    model_open(&m, &a);
    int n = 0, rc = CAMO_ERR_INPUT;
    char **names = m.net ? input_images(a.input, &n) : NULL;
    if (names && mkdir(a.output, 0755) != 0 && errno != EEXIST)
        CAMO_ERR("%s: cannot create: %s", a.output, strerror(errno));
    else if (names && (!a.dump || camo_mkdirs(a.dump) == 0) &&
             camo_net_set_input_size(m.net, 1, m.c.data.aug.size, m.c.data.aug.size) == 0)
        rc = predict_all(m.net, &a, names, n);
    if (rc) fprintf(stderr, "camotrain: error: %s\n", camo_last_error());
    camo_free_names(names, n);
    model_close(&m);
    return rc;
}
