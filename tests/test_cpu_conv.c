/* test_cpu_conv.c: CPU gemm and conv2d ops against naive references (a plain 7-loop
 * convolution), and the backward ops against central differences of f = sum(y * dy).
 * fp32 tolerances: forward 1e-5 relative (floor 1); gradients 5e-3 relative (floor 1), the
 * convolution being linear so the differences carry only rounding error. */
#include <float.h>

#include "backend/backend.h"
#include "core/common.h"

#include "test_util.h"

TU_CPU_BACKEND_FIXTURE(2)

/* ---- gemm ---- */

static void test_gemm(void **state) {
    (void)state;
    enum { M = 5, N = 7, K = 3, LD = 11 }; /* LD > every width: leading dimensions matter */
    float A[LD * LD], B[LD * LD], C[M * LD], ref[M * LD];
    tu_fill(A, LD * LD, 1, -1, 1);
    tu_fill(B, LD * LD, 2, -1, 1);
    for (int ta = 0; ta < 2; ta++) {
        for (int tb = 0; tb < 2; tb++) {
            tu_fill(C, M * LD, 3, -1, 1);
            memcpy(ref, C, sizeof C);
            for (int i = 0; i < M; i++)
                for (int j = 0; j < N; j++) {
                    double s = 0;
                    for (int k = 0; k < K; k++)
                        s += (double)(ta ? A[k * LD + i] : A[i * LD + k]) *
                             (tb ? B[j * LD + k] : B[k * LD + j]);
                    ref[i * LD + j] = (float)(0.5 * s + 2.0 * ref[i * LD + j]);
                }
            be->gemm(be, ta, tb, M, N, K, 0.5f, A, LD, B, LD, 2.0f, C, LD);
            TU_ASSERT_CLOSE(C, ref, M * LD, 1.0, 1e-5, "gemm");
        }
    }
}

/* ---- descriptor ---- */

static camo_conv_desc mkdesc(int N, int H, int W, int C, int K, int R, int S, int sh, int sw,
                             int ph, int pw, int dh, int dw, int g) {
    camo_conv_desc d = {N, H, W, C, K, R, S, sh, sw, ph, pw, dh, dw, g, 0, 0};
    return d;
}

static void test_conv_desc_finish(void **state) {
    (void)state;
    camo_conv_desc d = mkdesc(1, 7, 5, 4, 6, 3, 3, 2, 2, 1, 1, 1, 1, 2);
    assert_int_equal(camo_conv_desc_finish(&d), 0);
    assert_int_equal(d.P, 4); /* (7 + 2 - 2 - 1) / 2 + 1 */
    assert_int_equal(d.Q, 3);
    d = mkdesc(1, 9, 7, 3, 2, 3, 2, 1, 3, 0, 1, 2, 3, 1);
    assert_int_equal(camo_conv_desc_finish(&d), 0);
    assert_int_equal(d.P, 5); /* 9 - 4 */
    assert_int_equal(d.Q, 2); /* (7 + 2 - 3 - 1) / 3 + 1 */
    camo_clear_error();
    d = mkdesc(1, 7, 5, 4, 6, 3, 3, 1, 1, 0, 0, 1, 1, 4); /* K % groups */
    assert_int_equal(camo_conv_desc_finish(&d), -1);
    assert_true(strlen(camo_last_error()) > 0);
    d = mkdesc(1, 7, 5, 3, 6, 3, 3, 1, 1, 0, 0, 1, 1, 2); /* C % groups */
    assert_int_equal(camo_conv_desc_finish(&d), -1);
    d = mkdesc(1, 4, 5, 3, 6, 3, 3, 1, 1, 0, 0, 2, 1, 1); /* dilated kernel 5 > 4 */
    assert_int_equal(camo_conv_desc_finish(&d), -1);
    d = mkdesc(1, 2, 2, 3, 6, 4, 4, 2, 2, 0, 0, 1, 1, 1); /* (2-4)/2 truncates to 0 in C */
    assert_int_equal(camo_conv_desc_finish(&d), -1);
    d = mkdesc(1, 2, 2, 3, 6, 4, 4, 2, 2, 1, 1, 1, 1, 1); /* padded 4x4 fits exactly */
    assert_int_equal(camo_conv_desc_finish(&d), 0);
    assert_int_equal(d.P, 1);
}

/* ---- convolution ---- */

/* out (N,P,Q,K) from in (N,H,W,C), w (K,R,S,C/g), bias (K) or NULL: the definition */
static void ref_conv(const camo_conv_desc *d, float *out, const float *in, const float *w,
                     const float *bias) {
    int Cg = d->C / d->groups, Kg = d->K / d->groups;
    for (int n = 0; n < d->N; n++)
        for (int p = 0; p < d->P; p++)
            for (int q = 0; q < d->Q; q++)
                for (int k = 0; k < d->K; k++) {
                    double acc = bias ? bias[k] : 0;
                    for (int r = 0; r < d->R; r++)
                        for (int s = 0; s < d->S; s++) {
                            int h = p * d->stride_h - d->pad_h + r * d->dil_h;
                            int x = q * d->stride_w - d->pad_w + s * d->dil_w;
                            if (h < 0 || h >= d->H || x < 0 || x >= d->W) continue;
                            for (int c = 0; c < Cg; c++)
                                acc += (double)in[((n * d->H + h) * d->W + x) * d->C +
                                                  k / Kg * Cg + c] *
                                       w[((k * d->R + r) * d->S + s) * Cg + c];
                        }
                    out[((n * d->P + p) * d->Q + q) * d->K + k] = (float)acc;
                }
}

typedef struct {
    camo_conv_desc d;
    float *in, *w, *bias, *out, *dy, *din, *dw, *dbias;
    size_t nin, nw, nout;
} conv_ctx;

static void conv_fwd(void *p) {
    conv_ctx *c = p;
    be->conv2d_forward(be, &c->d, c->out, c->in, c->w, c->bias);
}

static void conv_backward(conv_ctx *c) {
    be->conv2d_backward_data(be, &c->d, c->din, c->dy, c->w);
    be->conv2d_backward_filter(be, &c->d, c->dw, c->dbias, c->dy, c->in);
}

/* forward vs ref_conv, backward vs finite differences; `twice` also checks accumulation */
static void check_conv(camo_conv_desc d, int with_bias, int twice, size_t max_checks) {
    assert_int_equal(camo_conv_desc_finish(&d), 0);
    conv_ctx c = {.d = d};
    c.nin = (size_t)d.N * d.H * d.W * d.C;
    c.nw = (size_t)d.K * d.R * d.S * (d.C / d.groups);
    c.nout = (size_t)d.N * d.P * d.Q * d.K;
    c.in = calloc(c.nin, 4), c.din = calloc(c.nin, 4);
    c.w = calloc(c.nw, 4), c.dw = calloc(c.nw, 4);
    c.out = calloc(c.nout, 4), c.dy = calloc(c.nout, 4);
    c.bias = with_bias ? calloc(d.K, 4) : NULL;
    c.dbias = with_bias ? calloc(d.K, 4) : NULL;
    tu_fill(c.in, c.nin, 10, -1, 1);
    tu_fill(c.w, c.nw, 11, -1, 1);
    tu_fill(c.dy, c.nout, 12, -1, 1);
    if (with_bias) tu_fill(c.bias, d.K, 13, -1, 1);

    float *ref = calloc(c.nout, 4);
    ref_conv(&c.d, ref, c.in, c.w, c.bias);
    for (size_t i = 0; i < c.nout; i++) c.out[i] = NAN; /* every output must be written */
    conv_fwd(&c);
    TU_ASSERT_CLOSE(c.out, ref, c.nout, 1.0, 1e-5, "conv forward");

    conv_backward(&c);
    tu_fd_check_some(conv_fwd, &c, c.in, c.nin, c.out, c.dy, c.nout, c.din, 1e-2f, 1.0,
                     max_checks, 5e-3, "conv dx");
    tu_fd_check_some(conv_fwd, &c, c.w, c.nw, c.out, c.dy, c.nout, c.dw, 1e-2f, 1.0, max_checks,
                     5e-3, "conv dw");
    if (with_bias)
        tu_fd_check_some(conv_fwd, &c, c.bias, d.K, c.out, c.dy, c.nout, c.dbias, 1e-2f, 1.0,
                         max_checks, 5e-3, "conv dbias");
    if (twice) { /* backward accumulates: a second call doubles the gradients */
        float *g1 = malloc(c.nin * 4), *w1 = malloc(c.nw * 4), *b1 = malloc(d.K * 4);
        for (size_t i = 0; i < c.nin; i++) g1[i] = 2 * c.din[i];
        for (size_t i = 0; i < c.nw; i++) w1[i] = 2 * c.dw[i];
        for (int k = 0; k < d.K; k++) b1[k] = with_bias ? 2 * c.dbias[k] : 0;
        conv_backward(&c);
        /* Not bitwise: the second call adds its partial sums one by one onto the first
         * result, so the rounding differs from 2 * (first result). fp32 bounds, with
         * values in [-1, 1]: dx adds R*S partials of K/g products (each up to ~sqrt(K/g)):
         * (R*S + 1) * FLT_EPSILON * sqrt(K/g), 7e-6 for 3x3, K/g = 32; dw and dbias add
         * up to 16 partial sums (cpu_conv.c) of N*P*Q products: 17 * FLT_EPSILON *
         * sqrt(N*P*Q). An accumulation bug (overwrite, double count) is an O(1) error. */
        double tol_x = (d.R * d.S + 1) * FLT_EPSILON * fmax(1.0, sqrt((double)d.K / d.groups));
        double tol_w = 17 * FLT_EPSILON * sqrt((double)d.N * d.P * d.Q);
        TU_ASSERT_CLOSE(c.din, g1, c.nin, 1.0, tol_x, "conv dx accumulates");
        TU_ASSERT_CLOSE(c.dw, w1, c.nw, 1.0, tol_w, "conv dw accumulates");
        if (with_bias) TU_ASSERT_CLOSE(c.dbias, b1, d.K, 1.0, tol_w, "conv dbias accumulates");
        free(g1);
        free(w1);
        free(b1);
    }
    free(ref);
    free(c.in), free(c.din), free(c.w), free(c.dw), free(c.out), free(c.dy), free(c.bias),
        free(c.dbias);
}

/* N, H, W, C, K, R, S, stride h/w, pad h/w, dilation h/w, groups */
static void test_conv_3x3(void **state) {
    (void)state;
    check_conv(mkdesc(2, 7, 5, 3, 4, 3, 3, 1, 1, 1, 1, 1, 1, 1), 1, 1, 1000);
    check_conv(mkdesc(1, 7, 5, 3, 4, 3, 3, 1, 1, 0, 0, 1, 1, 1), 0, 0, 1000); /* no pad/bias */
}

static void test_conv_stride2(void **state) {
    (void)state;
    check_conv(mkdesc(2, 7, 5, 4, 6, 3, 3, 2, 2, 1, 1, 1, 1, 1), 1, 0, 1000);
    check_conv(mkdesc(1, 8, 6, 3, 5, 4, 4, 2, 2, 1, 1, 1, 1, 1), 1, 0, 1000); /* even kernel */
}

static void test_conv_dilation2(void **state) {
    (void)state;
    check_conv(mkdesc(2, 9, 7, 3, 2, 3, 3, 1, 1, 2, 2, 2, 2, 1), 1, 0, 1000);
    check_conv(mkdesc(1, 9, 8, 2, 3, 3, 3, 2, 1, 1, 2, 2, 1, 1), 0, 0, 1000); /* mixed */
}

static void test_conv_groups2(void **state) {
    (void)state;
    check_conv(mkdesc(2, 7, 5, 4, 6, 3, 3, 1, 1, 1, 1, 1, 1, 2), 1, 1, 1000);
    check_conv(mkdesc(1, 7, 5, 6, 4, 3, 3, 2, 1, 1, 1, 1, 2, 2), 1, 0, 1000);
}

static void test_conv_depthwise(void **state) {
    (void)state;
    check_conv(mkdesc(2, 7, 5, 4, 4, 3, 3, 1, 1, 1, 1, 1, 1, 4), 1, 1, 1000);
    /* channel multiplier 2, stride 2, dilation 2 */
    check_conv(mkdesc(2, 9, 7, 3, 6, 3, 3, 2, 2, 2, 2, 2, 2, 3), 1, 0, 1000);
    check_conv(mkdesc(1, 7, 5, 5, 5, 5, 3, 1, 2, 2, 0, 1, 1, 5), 0, 0, 1000); /* 5x3 */
}

static void test_conv_1x1(void **state) {
    (void)state;
    check_conv(mkdesc(2, 7, 5, 5, 3, 1, 1, 1, 1, 0, 0, 1, 1, 1), 1, 1, 1000); /* pointwise */
    check_conv(mkdesc(2, 7, 5, 4, 6, 1, 1, 1, 1, 0, 0, 1, 1, 2), 1, 0, 1000); /* grouped */
    check_conv(mkdesc(2, 7, 5, 5, 3, 1, 1, 2, 2, 0, 0, 1, 1, 1), 1, 0, 1000); /* strided */
    check_conv(mkdesc(1, 7, 5, 3, 2, 1, 1, 1, 1, 1, 0, 1, 1, 1), 0, 0, 1000); /* padded */
    check_conv(mkdesc(1, 7, 5, 3, 2, 1, 1, 1, 1, 0, 1, 1, 1, 1), 0, 0, 1000);
    check_conv(mkdesc(1, 7, 5, 3, 2, 1, 1, 1, 2, 0, 0, 1, 1, 1), 0, 0, 1000); /* stride w */
}

static void test_conv_rectangular(void **state) {
    (void)state;
    check_conv(mkdesc(2, 7, 5, 3, 4, 1, 3, 1, 1, 0, 1, 1, 1, 1), 1, 0, 1000);
    check_conv(mkdesc(2, 7, 5, 3, 4, 3, 1, 1, 1, 1, 0, 1, 1, 1), 1, 0, 1000);
    check_conv(mkdesc(1, 8, 7, 4, 2, 2, 3, 2, 1, 1, 0, 1, 1, 2), 1, 0, 1000);
    check_conv(mkdesc(1, 1, 1, 3, 2, 3, 3, 1, 1, 1, 1, 1, 1, 1), 1, 0, 1000); /* 1x1 image */
}

/* bigger shapes take OpenBLAS's threaded paths; gradients are sampled */
static void test_conv_larger(void **state) {
    (void)state;
    check_conv(mkdesc(2, 17, 13, 16, 32, 3, 3, 1, 1, 1, 1, 1, 1, 1), 1, 1, 150);
    check_conv(mkdesc(2, 17, 13, 32, 48, 1, 1, 1, 1, 0, 0, 1, 1, 1), 1, 0, 150);
    check_conv(mkdesc(2, 17, 13, 24, 24, 3, 3, 2, 2, 1, 1, 1, 1, 24), 1, 0, 150);
}

/* Images are split into bands of output rows: to keep one band's columns under 256K floats,
 * and into 16 units a batch at least; stride 2 and dilation 2 change how far a band's
 * receptive field reaches */
static void test_conv_banded(void **state) {
    (void)state;
    check_conv(mkdesc(2, 70, 66, 16, 8, 3, 3, 1, 1, 1, 1, 1, 1, 1), 1, 1, 20); /* 2 by memory */
    check_conv(mkdesc(1, 45, 38, 12, 6, 3, 3, 2, 2, 2, 2, 2, 2, 1), 0, 0, 20); /* 16 bands */
}

/* Every gradient is the same bits for any thread count: partial sums go in fixed blocks
 * added in order (replicas with different thread shares must agree, DESIGN.md item 1) */
static void check_thread_independent(camo_conv_desc d) {
    assert_int_equal(camo_conv_desc_finish(&d), 0);
    size_t nin = (size_t)d.N * d.H * d.W * d.C, nw = (size_t)d.K * d.R * d.S * (d.C / d.groups);
    size_t nout = (size_t)d.N * d.P * d.Q * d.K;
    float *in = malloc(nin * 4), *dy = malloc(nout * 4), *w = malloc(nw * 4);
    float *dw[3], *dx[3], *db[3], *y[3];
    tu_fill(in, nin, 1, -1, 1);
    tu_fill(dy, nout, 2, -1, 1);
    tu_fill(w, nw, 3, -1, 1);
    camo_backend *b1 = camo_backend_cpu_create(1), *b3 = camo_backend_cpu_create(3);
    camo_backend *bs[3] = {b1, be, b3};
    for (int i = 0; i < 3; i++) {
        dw[i] = calloc(nw, 4), dx[i] = calloc(nin, 4), db[i] = calloc(d.K, 4);
        y[i] = calloc(nout, 4);
        bs[i]->conv2d_forward(bs[i], &d, y[i], in, w, NULL);
        bs[i]->conv2d_backward_filter(bs[i], &d, dw[i], db[i], dy, in);
        bs[i]->conv2d_backward_data(bs[i], &d, dx[i], dy, w);
    }
    for (int i = 1; i < 3; i++) {
        assert_memory_equal(y[0], y[i], nout * 4);
        assert_memory_equal(dw[0], dw[i], nw * 4);
        assert_memory_equal(db[0], db[i], d.K * 4);
        assert_memory_equal(dx[0], dx[i], nin * 4);
    }
    b1->destroy(b1);
    b3->destroy(b3);
    for (int i = 0; i < 3; i++) free(dw[i]), free(dx[i]), free(db[i]), free(y[i]);
    free(in), free(dy), free(w);
}

/* A replica with an empty slice of the batch still runs every layer (sync-BN): N = 0 */
static void test_conv_empty_batch(void **state) {
    (void)state;
    camo_conv_desc ds[3] = {mkdesc(0, 7, 5, 4, 6, 3, 3, 1, 1, 1, 1, 1, 1, 1),
                            mkdesc(0, 7, 5, 4, 6, 1, 1, 1, 1, 0, 0, 1, 1, 1),
                            mkdesc(0, 7, 5, 4, 4, 3, 3, 1, 1, 1, 1, 1, 1, 4)};
    for (int i = 0; i < 3; i++) {
        camo_conv_desc d = ds[i];
        d.N = 1;
        assert_int_equal(camo_conv_desc_finish(&d), 0);
        d.N = 0;
        float w[6 * 9 * 4], dw[6 * 9 * 4] = {0}, db[6] = {0}, bias[6] = {0}, x[1], y[1];
        tu_fill(w, 6 * 9 * 4, 1, -1, 1);
        be->conv2d_forward(be, &d, y, x, w, bias);
        be->conv2d_backward_data(be, &d, x, y, w);
        be->conv2d_backward_filter(be, &d, dw, db, y, x);
        for (int k = 0; k < 6 * 9 * 4; k++) assert_true(dw[k] == 0);
        for (int k = 0; k < 6; k++) assert_true(db[k] == 0);
    }
}

static void test_conv_thread_independent(void **state) {
    (void)state;
    check_thread_independent(mkdesc(3, 21, 17, 8, 12, 3, 3, 1, 1, 1, 1, 1, 1, 1));
    check_thread_independent(mkdesc(1, 40, 33, 6, 9, 3, 3, 2, 1, 1, 1, 2, 1, 3));
    check_thread_independent(mkdesc(3, 40, 41, 8, 5, 1, 1, 1, 1, 0, 0, 1, 1, 1)); /* 1x1 */
    check_thread_independent(mkdesc(2, 30, 31, 6, 12, 3, 3, 1, 1, 1, 1, 1, 1, 6)); /* dw */
}

int main(int argc, char **argv) {
    (void)argc;
    camo_cpu_env_reexec(argv); /* passive OpenMP waits: tests share 2 busy cores */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gemm),
        cmocka_unit_test(test_conv_desc_finish),
        cmocka_unit_test(test_conv_3x3),
        cmocka_unit_test(test_conv_stride2),
        cmocka_unit_test(test_conv_dilation2),
        cmocka_unit_test(test_conv_groups2),
        cmocka_unit_test(test_conv_depthwise),
        cmocka_unit_test(test_conv_1x1),
        cmocka_unit_test(test_conv_rectangular),
        cmocka_unit_test(test_conv_larger),
        cmocka_unit_test(test_conv_banded),
        cmocka_unit_test(test_conv_thread_independent),
        cmocka_unit_test(test_conv_empty_batch),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
