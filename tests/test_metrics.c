/* test_metrics.c: binary metrics against PySODMetrics (tests/fixtures/metrics_ref.safetensors,
 * made by tools/metrics_ref.py), hand-checkable cases, the multi-class confusion matrix, and
 * scoring prediction folders. Tolerance: 1e-4 absolute (fixture values are stored as F32;
 * the C code itself matches the reference to ~1e-12). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <stb_image_write.h>

#include "test_util.h"

#include "core/common.h"
#include "train/evaluate.h"
#include "train/metrics.h"
#include "core/safetensors.h"

#define FIXTURE "tests/fixtures/metrics_ref.safetensors"
#define TOL 1e-4

static const char *const NAMES[] = {"sm",      "em_mean", "em_max", "em_adp", "wfm", "fm_mean",
                                    "fm_max",  "fm_adp",  "mae",    "iou",    "dice"};
#define N_NAMES ((int)(sizeof NAMES / sizeof NAMES[0]))

static double metric_by_index(const camo_sod_metrics *m, int k) {
    const double v[] = {m->sm,     m->em_mean, m->em_max, m->em_adp, m->wfm, m->fm_mean,
                        m->fm_max, m->fm_adp,  m->mae,    m->iou,    m->dice};
    return v[k];
}

static const camo_st_tensor *need(const camo_st_file *f, const char *name) {
    const camo_st_tensor *t = camo_st_find(f, name);
    if (!t) fprintf(stderr, "fixture lacks tensor %s\n", name);
    assert_non_null(t);
    return t;
}

static float scalar_f32(const camo_st_file *f, const char *name) {
    float v;
    assert_int_equal(camo_st_read_f32(need(f, name), &v), 0);
    return v;
}

static int32_t scalar_i32(const camo_st_file *f, const char *name) {
    const camo_st_tensor *t = need(f, name);
    assert_int_equal(t->dtype, CAMO_ST_I32);
    int32_t v;
    memcpy(&v, t->data, sizeof v);
    return v;
}

/* Image i of the fixture: pred and gt copied out (the file buffer may be unaligned). */
static void fixture_image(const camo_st_file *f, int i, uint8_t **pred, uint8_t **gt, int *w,
                          int *h) {
    char name[64];
    snprintf(name, sizeof name, "img%d_pred", i);
    const camo_st_tensor *p = need(f, name);
    snprintf(name, sizeof name, "img%d_gt", i);
    const camo_st_tensor *g = need(f, name);
    assert_int_equal(p->dtype, CAMO_ST_U8);
    assert_int_equal(p->ndim, 2);
    assert_true(p->shape[0] == g->shape[0] && p->shape[1] == g->shape[1]);
    *h = (int)p->shape[0];
    *w = (int)p->shape[1];
    *pred = malloc(p->nbytes);
    *gt = malloc(g->nbytes);
    memcpy(*pred, p->data, p->nbytes);
    memcpy(*gt, g->data, g->nbytes);
}

/* Every metric of m against the reference value want[k]; prints each miss. */
static int check_metrics(const camo_sod_metrics *m, const float *want, const char *what) {
    int bad = 0;
    for (int k = 0; k < N_NAMES; k++) {
        double got = metric_by_index(m, k);
        if (!(fabs(got - want[k]) <= TOL)) {
            fprintf(stderr, "  %s %s: got %.8f want %.8f\n", what, NAMES[k], got, want[k]);
            bad++;
        }
    }
    return bad;
}

static void test_fixture_per_image(void **state) {
    (void)state;
    camo_st_file *f = camo_st_open(FIXTURE);
    if (!f) fprintf(stderr, "%s\n", camo_last_error());
    assert_non_null(f);
    int n = scalar_i32(f, "n_images"), bad = 0;
    float *per = malloc(sizeof(float) * N_NAMES * n);
    for (int k = 0; k < N_NAMES; k++) {
        const camo_st_tensor *t = need(f, NAMES[k]);
        assert_int_equal(t->numel, n);
        assert_int_equal(camo_st_read_f32(t, per + (size_t)k * n), 0);
    }
    for (int i = 0; i < n; i++) {
        uint8_t *pred, *gt;
        int w, h;
        fixture_image(f, i, &pred, &gt, &w, &h);
        camo_sod_acc *a = camo_sod_acc_new();
        assert_int_equal(camo_sod_acc_add(a, pred, gt, w, h), 0);
        camo_sod_metrics m;
        camo_sod_acc_result(a, &m);
        assert_int_equal(m.n_images, 1);
        float want[N_NAMES];
        for (int k = 0; k < N_NAMES; k++) want[k] = per[(size_t)k * n + i];
        char what[32];
        snprintf(what, sizeof what, "image %d (%dx%d)", i, w, h);
        bad += check_metrics(&m, want, what);
        camo_sod_acc_free(a);
        free(pred);
        free(gt);
    }
    free(per);
    camo_st_close(f);
    assert_int_equal(bad, 0);
}

/* The whole set, in one accumulator and as two merged halves. */
static void test_fixture_all_and_merge(void **state) {
    (void)state;
    camo_st_file *f = camo_st_open(FIXTURE);
    assert_non_null(f);
    int n = scalar_i32(f, "n_images");
    float want[N_NAMES];
    for (int k = 0; k < N_NAMES; k++) {
        char name[32];
        snprintf(name, sizeof name, "all_%s", NAMES[k]);
        want[k] = scalar_f32(f, name);
    }
    camo_sod_acc *all = camo_sod_acc_new(), *half[2] = {camo_sod_acc_new(), camo_sod_acc_new()};
    for (int i = 0; i < n; i++) {
        uint8_t *pred, *gt;
        int w, h;
        fixture_image(f, i, &pred, &gt, &w, &h);
        assert_int_equal(camo_sod_acc_add(all, pred, gt, w, h), 0);
        assert_int_equal(camo_sod_acc_add(half[i % 2], pred, gt, w, h), 0);
        free(pred);
        free(gt);
    }
    camo_sod_acc_merge(half[0], half[1]);
    camo_sod_metrics m, mm;
    camo_sod_acc_result(all, &m);
    camo_sod_acc_result(half[0], &mm);
    assert_int_equal(m.n_images, n);
    assert_int_equal(check_metrics(&m, want, "all"), 0);
    assert_int_equal(check_metrics(&mm, want, "merged"), 0);
    camo_sod_acc_free(all);
    camo_sod_acc_free(half[0]);
    camo_sod_acc_free(half[1]);
    camo_st_close(f);
}

/* A 32x24 ellipse mask (the same one the expectations below were computed on). */
static void ellipse_mask(uint8_t *gt, int w, int h) {
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            double dy = (y - 10) / 6.0, dx = (x - 14) / 9.0;
            gt[y * w + x] = dy * dy + dx * dx <= 1 ? 255 : 0;
        }
}

static void test_perfect_and_inverted(void **state) {
    (void)state;
    enum { W = 32, H = 24 };
    uint8_t gt[W * H], inv[W * H];
    ellipse_mask(gt, W, H);
    for (int i = 0; i < W * H; i++) inv[i] = 255 - gt[i];
    camo_sod_acc *a = camo_sod_acc_new();
    camo_sod_metrics m;
    assert_int_equal(camo_sod_acc_add(a, gt, gt, W, H), 0);
    camo_sod_acc_result(a, &m);
    assert_true(fabs(m.sm - 1) < 1e-9 && m.mae == 0 && m.iou == 1 && m.dice == 1);
    assert_true(fabs(m.wfm - 1) < 1e-9 && fabs(m.fm_max - 1) < 1e-12 && m.fm_adp == 1);
    /* E-measure divides by N - 1: a perfect map scores N / (N - 1) */
    assert_true(fabs(m.em_max - (double)(W * H) / (W * H - 1)) < 1e-9);
    camo_sod_acc_reset(a);
    assert_int_equal(camo_sod_acc_add(a, inv, gt, W, H), 0);
    camo_sod_acc_result(a, &m);
    assert_int_equal(m.n_images, 1);
    assert_true(m.sm == 0 && m.mae == 1 && m.iou == 0 && m.dice == 0 && m.wfm == 0);
    assert_true(m.fm_adp == 0 && fabs(m.em_max - 0.2503259452411995) < 1e-9);
    camo_sod_acc_free(a);
}

/* The float entry point equals scoring the rounded uint8 map. */
static void test_add_f32(void **state) {
    (void)state;
    enum { W = 32, H = 24 };
    uint8_t gt[W * H], q[W * H];
    float prob[W * H];
    ellipse_mask(gt, W, H);
    tu_fill(prob, W * H, 7, -0.1f, 1.1f);
    for (int i = 0; i < W * H; i++) {
        if (gt[i]) prob[i] = 0.2f + 0.8f * prob[i]; /* correlate with the mask */
        float p = prob[i] < 0 ? 0 : prob[i] > 1 ? 1 : prob[i];
        q[i] = (uint8_t)floorf(p * 255.0f + 0.5f);
    }
    camo_sod_acc *a = camo_sod_acc_new(), *b = camo_sod_acc_new();
    assert_int_equal(camo_sod_acc_add_f32(a, prob, gt, W, H), 0);
    assert_int_equal(camo_sod_acc_add(b, q, gt, W, H), 0);
    camo_sod_metrics ma, mb;
    camo_sod_acc_result(a, &ma);
    camo_sod_acc_result(b, &mb);
    for (int k = 0; k < N_NAMES; k++)
        assert_true(fabs(metric_by_index(&ma, k) - metric_by_index(&mb, k)) < 1e-12);
    assert_int_not_equal(camo_sod_acc_add(a, q, gt, 0, H), 0);
    camo_sod_acc_free(a);
    camo_sod_acc_free(b);
}

static void test_cls_hand(void **state) {
    (void)state;
    /* K = 4, class 3 absent everywhere, 255 ignored:
     * rows (gt) 0: [1 1 0 0], 1: [0 2 1 0], 2: [1 0 0 0] */
    const int32_t gt[] = {0, 0, 1, 1, 2, 255, 1, 1};
    const int32_t pred[] = {0, 1, 1, 1, 0, 2, 2, 7}; /* the 7 is out of range */
    camo_cls_acc *a = camo_cls_acc_new(4, 255);
    assert_int_not_equal(camo_cls_acc_add(a, pred, gt, 8), 0);
    assert_non_null(strstr(camo_last_error(), "7"));
    const int64_t *cm = camo_cls_acc_confusion(a);
    for (int i = 0; i < 16; i++) assert_int_equal(cm[i], 0); /* nothing counted */
    assert_int_equal(camo_cls_acc_add(a, pred, gt, 7), 0);
    const int64_t want[16] = {1, 1, 0, 0, 0, 2, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0};
    for (int i = 0; i < 16; i++) assert_int_equal(cm[i], want[i]);
    double iou[4];
    camo_cls_metrics m;
    camo_cls_acc_result(a, &m, iou);
    assert_int_equal(m.n_pixels, 6);
    assert_true(fabs(iou[0] - 1.0 / 3) < 1e-12 && fabs(iou[1] - 0.5) < 1e-12 && iou[2] == 0);
    assert_true(isnan(iou[3]));
    assert_true(fabs(m.miou - (1.0 / 3 + 0.5) / 3) < 1e-12);
    assert_true(fabs(m.pixel_acc - 0.5) < 1e-12);
    assert_true(fabs(m.mean_acc - (0.5 + 2.0 / 3) / 3) < 1e-12);
    camo_cls_print(&m, stderr, 1);
    camo_cls_acc_free(a);
}

static void test_cls_fixture(void **state) {
    (void)state;
    camo_st_file *f = camo_st_open(FIXTURE);
    assert_non_null(f);
    int K = scalar_i32(f, "cls_k"), ignore = scalar_i32(f, "cls_ignore");
    const camo_st_tensor *tp = need(f, "cls_pred"), *tg = need(f, "cls_gt");
    size_t n = (size_t)tp->numel;
    int32_t *pred = malloc(n * sizeof(int32_t)), *gt = malloc(n * sizeof(int32_t));
    memcpy(pred, tp->data, n * sizeof(int32_t));
    memcpy(gt, tg->data, n * sizeof(int32_t));
    camo_cls_acc *a = camo_cls_acc_new(K, ignore), *b = camo_cls_acc_new(K, ignore);
    /* in two uneven calls and a merge: the counts must not depend on batching */
    assert_int_equal(camo_cls_acc_add(a, pred, gt, n / 3), 0);
    assert_int_equal(camo_cls_acc_add(b, pred + n / 3, gt + n / 3, n - n / 3), 0);
    camo_cls_acc_merge(a, b);
    double *iou = malloc((size_t)K * sizeof(double));
    float *want = malloc((size_t)K * sizeof(float));
    camo_cls_metrics m;
    camo_cls_acc_result(a, &m, iou);
    assert_int_equal(camo_st_read_f32(need(f, "cls_iou"), want), 0);
    for (int k = 0; k < K; k++) {
        if (isnan(want[k])) assert_true(isnan(iou[k]));
        else assert_true(fabs(iou[k] - want[k]) < TOL);
    }
    assert_true(fabs(m.miou - scalar_f32(f, "cls_miou")) < TOL);
    assert_true(fabs(m.pixel_acc - scalar_f32(f, "cls_pixel_acc")) < TOL);
    assert_true(fabs(m.mean_acc - scalar_f32(f, "cls_mean_acc")) < TOL);
    camo_cls_print(&m, stderr, 0);
    free(iou); free(want); free(pred); free(gt);
    camo_cls_acc_free(a);
    camo_cls_acc_free(b);
    camo_st_close(f);
}

/* ---- camo_eval_pred_dirs on a small tree ---- */

static void mkdir_p(const char *path) {
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir -p '%s'", path, path);
    assert_int_equal(system(cmd), 0);
}

static void write_png(const char *dir, const char *name, const uint8_t *px, int w, int h) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    assert_int_not_equal(stbi_write_png(path, w, h, 1, px, w), 0);
}

/* A mask of 2x2 blocks (so a half-size copy upsampled 2x thresholds back to it exactly). */
static void block_mask(uint8_t *gt, int w, int h, int seed) {
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            int by = y / 2, bx = x / 2;
            gt[y * w + x] = (by - 5 - seed) * (by - 5 - seed) + (bx - 7) * (bx - 7) < 16 ? 255 : 0;
        }
}

/* Expected 2x bilinear upsampling (half-pixel centres: weights 1/4, 3/4, edges clamped). */
static uint8_t up2(const uint8_t *s, int sw, int sh, int x, int y) {
    int x0 = x / 2 - (x % 2 == 0), y0 = y / 2 - (y % 2 == 0);
    double ax = x % 2 == 0 ? 0.75 : 0.25, ay = y % 2 == 0 ? 0.75 : 0.25;
    int xa = x0 < 0 ? 0 : x0, xb = x0 + 1 >= sw ? sw - 1 : x0 + 1;
    int ya = y0 < 0 ? 0 : y0, yb = y0 + 1 >= sh ? sh - 1 : y0 + 1;
    double v = (s[ya * sw + xa] * (1 - ax) + s[ya * sw + xb] * ax) * (1 - ay) +
               (s[yb * sw + xa] * (1 - ax) + s[yb * sw + xb] * ax) * ay;
    return (uint8_t)floor(v + 0.5);
}

static char *run_eval(const char *pred_dir, const char *gt_dir, int *rc) {
    char *buf = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&buf, &len);
    *rc = camo_eval_pred_dirs(pred_dir, gt_dir, 1, out);
    fclose(out);
    return buf;
}

static void test_eval_pred_dirs(void **state) {
    (void)state;
    enum { W = 32, H = 24, SW = W / 2, SH = H / 2 };
    char root[512], gdir[600], pdir[600], edir[600];
    snprintf(root, sizeof root, "%s/camo_test_metrics_%d", tu_tmpdir(), (int)getpid());
    snprintf(gdir, sizeof gdir, "%s/gt", root);
    snprintf(pdir, sizeof pdir, "%s/pred", root);
    snprintf(edir, sizeof edir, "%s/empty", root);
    mkdir_p(gdir); mkdir_p(pdir); mkdir_p(edir);
    uint8_t ga[W * H], gb[W * H], pa[W * H], small[SW * SH], big[W * H];
    block_mask(ga, W, H, 0);
    block_mask(gb, W, H, 2);
    for (int i = 0; i < W * H; i++) pa[i] = ga[i] ? 200 : (uint8_t)(i % 50);
    for (int y = 0; y < SH; y++)
        for (int x = 0; x < SW; x++) small[y * SW + x] = gb[(2 * y) * W + 2 * x];
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) big[y * W + x] = up2(small, SW, SH, x, y);
    write_png(gdir, "a.png", ga, W, H);
    write_png(gdir, "b.png", gb, W, H);
    write_png(pdir, "a.png", pa, W, H);
    write_png(pdir, "b.jpeg.png", pa, W, H); /* stem "b.jpeg": no GT, warned and ignored */
    write_png(pdir, "b.png", small, SW, SH);  /* half size: resized to the GT's */

    camo_sod_acc *acc = camo_sod_acc_new();
    camo_sod_acc_add(acc, pa, ga, W, H);
    camo_sod_acc_add(acc, big, gb, W, H);
    camo_sod_metrics m;
    camo_sod_acc_result(acc, &m);
    camo_sod_acc_free(acc);
    char *want = NULL;
    size_t wlen = 0;
    FILE *wf = open_memstream(&want, &wlen);
    camo_sod_print(&m, wf, 1);
    fclose(wf);

    int rc;
    char *got = run_eval(pdir, gdir, &rc);
    if (rc) fprintf(stderr, "eval: %s\n", camo_last_error());
    assert_int_equal(rc, 0);
    fprintf(stderr, "%s", got);
    assert_string_equal(got, want);
    assert_non_null(strstr(got, "\"n_images\": 2"));
    free(got);
    free(want);

    /* the upsampled prediction thresholds back to its mask exactly */
    acc = camo_sod_acc_new();
    camo_sod_acc_add(acc, big, gb, W, H);
    camo_sod_acc_result(acc, &m);
    assert_true(m.iou == 1 && m.mae > 0);
    camo_sod_acc_free(acc);

    /* a GT without prediction: exit-code-2 error naming it */
    write_png(gdir, "c.png", ga, W, H);
    got = run_eval(pdir, gdir, &rc);
    assert_int_equal(rc, 2);
    assert_non_null(strstr(camo_last_error(), "c.png"));
    free(got);

    /* empty and missing folders */
    got = run_eval(edir, gdir, &rc);
    assert_int_equal(rc, 2);
    assert_non_null(strstr(camo_last_error(), "empty"));
    free(got);
    char missing[700];
    snprintf(missing, sizeof missing, "%s/nope", root);
    got = run_eval(missing, gdir, &rc);
    assert_int_equal(rc, 2);
    assert_non_null(strstr(camo_last_error(), "nope"));
    free(got);

    /* an unreadable prediction is named */
    write_png(pdir, "c.png", ga, W, H);
    char path[700];
    snprintf(path, sizeof path, "%s/a.png", pdir);
    FILE *bad = fopen(path, "wb");
    assert_non_null(bad);
    fputs("not a png", bad);
    fclose(bad);
    got = run_eval(pdir, gdir, &rc);
    assert_int_equal(rc, 2);
    assert_non_null(strstr(camo_last_error(), "a.png"));
    free(got);

    char cmd[1024];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    assert_int_equal(system(cmd), 0);
}

/* Masks named otherwise than their images (CARLA's NAME_label.png) pair with predict's
 * NAME.png; a prediction named like the mask itself still wins; two masks for one
 * prediction are an error naming both. */
static void test_eval_pred_mask_names(void **state) {
    (void)state;
    enum { W = 20, H = 16 };
    char root[512], gdir[600], pdir[600];
    snprintf(root, sizeof root, "%s/camo_test_masknames_%d", tu_tmpdir(), (int)getpid());
    snprintf(gdir, sizeof gdir, "%s/val_label", root);
    snprintf(pdir, sizeof pdir, "%s/pred", root);
    mkdir_p(gdir);
    mkdir_p(pdir);
    uint8_t g[3][W * H], p[3][W * H];
    for (int k = 0; k < 3; k++) {
        block_mask(g[k], W, H, k - 3);
        for (int i = 0; i < W * H; i++) p[k][i] = (uint8_t)(g[k][i] ? 180 + k : 20 * k + i % 7);
    }
    write_png(gdir, "x_label.png", g[0], W, H);
    write_png(gdir, "y.png", g[1], W, H);
    write_png(gdir, "z_label.png", g[2], W, H);
    write_png(pdir, "x.png", p[0], W, H);
    write_png(pdir, "y.png", p[1], W, H);
    write_png(pdir, "z_label.png", p[2], W, H); /* exact stem first */
    write_png(pdir, "z.png", p[0], W, H);       /* so this one is left over */

    camo_sod_acc *acc = camo_sod_acc_new();
    for (int k = 0; k < 3; k++) camo_sod_acc_add(acc, p[k], g[k], W, H);
    camo_sod_metrics m;
    camo_sod_acc_result(acc, &m);
    camo_sod_acc_free(acc);
    char *want = NULL;
    size_t wlen = 0;
    FILE *wf = open_memstream(&want, &wlen);
    camo_sod_print(&m, wf, 1);
    fclose(wf);
    int rc;
    char *got = run_eval(pdir, gdir, &rc);
    if (rc) fprintf(stderr, "eval: %s\n", camo_last_error());
    assert_int_equal(rc, 0);
    assert_string_equal(got, want);
    free(got);
    free(want);

    write_png(gdir, "x.png", g[0], W, H);
    got = run_eval(pdir, gdir, &rc);
    assert_int_equal(rc, 2);
    assert_non_null(strstr(camo_last_error(), "val_label/x.png and"));
    assert_non_null(strstr(camo_last_error(), "val_label/x_label.png both pair"));
    free(got);

    char cmd[1024];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    assert_int_equal(system(cmd), 0);
}

/* ---- JSON records hold only the metrics computed ---- */

/* What `write` printed, parsed as one JSON object (fails the test when it does not parse). */
static cJSON *parse_printed(char *buf) {
    cJSON *j = cJSON_Parse(buf);
    if (!j) fprintf(stderr, "not JSON: %s\n", buf);
    assert_non_null(j);
    assert_true(cJSON_IsObject(j));
    free(buf);
    return j;
}

/* Every key of `must` is a number (or, for class_iou, an array); none of `mustnt` is there. */
static void check_keys(const cJSON *j, const char *const *must, const char *const *mustnt) {
    for (; *must; must++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, *must);
        if (!v) fprintf(stderr, "missing key %s\n", *must);
        assert_true(cJSON_IsNumber(v) || (!strcmp(*must, "class_iou") && cJSON_IsArray(v)));
    }
    for (; *mustnt; mustnt++) {
        if (cJSON_GetObjectItemCaseSensitive(j, *mustnt)) fprintf(stderr, "key %s\n", *mustnt);
        assert_null(cJSON_GetObjectItemCaseSensitive(j, *mustnt));
    }
}

static const char *const BIN_KEYS[] = {"iou", "dice", "mae", NULL};
static const char *const CLS_KEYS[] = {"miou", "pixel_acc", NULL};

static void test_eval_jsonl_keys(void **state) {
    (void)state;
    camo_eval_result r = {.n_images = 3, .loss = 0.5, .iou = 0.25, .dice = 0.4, .mae = 0.1,
                          .seconds = 1};
    for (int classes = 1; classes <= 3; classes += 2) {
        char *buf = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&buf, &len);
        camo_eval_jsonl(f, &r, classes, 2, 7);
        fclose(f);
        assert_int_equal(buf[len - 1], '\n');
        cJSON *j = parse_printed(buf);
        check_keys(j, classes > 1 ? CLS_KEYS : BIN_KEYS, classes > 1 ? BIN_KEYS : CLS_KEYS);
        assert_string_equal(cJSON_GetObjectItemCaseSensitive(j, "type")->valuestring, "eval");
        assert_true(cJSON_GetObjectItemCaseSensitive(j, "step")->valuedouble == 7);
        assert_true(cJSON_GetObjectItemCaseSensitive(j, "images")->valuedouble == 3);
        if (classes == 1)
            assert_true(cJSON_GetObjectItemCaseSensitive(j, "dice")->valuedouble == 0.4);
        else /* a diverged loss is null, not nan (which would not parse) */
            assert_true(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(j, "loss")));
        cJSON_Delete(j);
        r.loss = NAN;
    }
}

/* eval --json of class-index maps: per-class IoU as "class_iou", never as "iou". */
static void test_cls_json_keys(void **state) {
    (void)state;
    const int32_t gt[] = {0, 1, 2, 2}, pred[] = {0, 1, 1, 2};
    camo_cls_acc *a = camo_cls_acc_new(3, 255);
    assert_int_equal(camo_cls_acc_add(a, pred, gt, 4), 0);
    double iou[3];
    camo_cls_metrics m;
    camo_cls_acc_result(a, &m, iou);
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    camo_cls_print(&m, f, 1);
    fclose(f);
    cJSON *j = parse_printed(buf);
    const char *const must[] = {"miou", "pixel_acc", "mean_acc", "class_iou", NULL};
    const char *const mustnt[] = {"iou", "dice", "mae", "sm", "em_mean", "wfm", NULL};
    check_keys(j, must, mustnt);
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(j, "class_iou")), 3);
    cJSON_Delete(j);
    camo_cls_acc_free(a);
}

int main(void) {
    camo_log_set_quiet(1);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fixture_per_image),
        cmocka_unit_test(test_fixture_all_and_merge),
        cmocka_unit_test(test_perfect_and_inverted),
        cmocka_unit_test(test_add_f32),
        cmocka_unit_test(test_cls_hand),
        cmocka_unit_test(test_cls_fixture),
        cmocka_unit_test(test_eval_pred_dirs),
        cmocka_unit_test(test_eval_pred_mask_names),
        cmocka_unit_test(test_eval_jsonl_keys),
        cmocka_unit_test(test_cls_json_keys),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
