/* test_loss_torch.c: the CPU losses and optimizer steps against PyTorch
 * (tests/fixtures/loss_ref.safetensors, written by tools/loss_ref.py, whose header gives
 * the formulas). The inputs are regenerated here by the same closed-form rules (and checked
 * bit for bit against the copies in the fixture), converted from PyTorch's NCHW to NHWC,
 * run through the backend ops, and compared with PyTorch's float64 results rounded to
 * float32: relative error <= 1e-4, with a floor of 1e-3 of the largest value for gradients
 * and 1e-2 for optimizer states (their float32 errors are absolute, from O(1) operands
 * that cancel over the steps). */
#include "backend/backend.h"
#include "core/common.h"
#include "core/safetensors.h"

#include "test_util.h"

#define FIXTURE "tests/fixtures/loss_ref.safetensors"
#define TOL 1e-4

/* must match tools/loss_ref.py */
enum { BN = 2, BH = 37, BW = 45, CN = 2, CC = 4, CH = 13, CW = 17, IGNORE = 255 };
enum { NOPT = 257, STEPS = 5 };

static camo_backend *be;
static camo_st_file *fx;

static int setup(void **state) {
    (void)state;
    fx = camo_st_open(FIXTURE);
    if (!fx) fprintf(stderr, "%s\n", camo_last_error());
    be = camo_backend_cpu_create(2);
    return fx && be ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    camo_st_close(fx);
    be->destroy(be);
    return 0;
}

/* The fixture tensor `name` as floats (n of them, else the test fails); caller frees. */
static float *fixture(const char *name, size_t n) {
    const camo_st_tensor *t = camo_st_find(fx, name);
    if (!t) fprintf(stderr, "  fixture has no tensor %s\n", name);
    assert_non_null(t);
    assert_int_equal(t->numel, (int64_t)n);
    float *out = malloc(n * sizeof(float));
    assert_int_equal(camo_st_read_f32(t, out), 0);
    return out;
}

/* Largest |value| of x (n): the comparison floor is a fraction of it. */
static double max_abs(const float *x, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) m = fmax(m, fabs(x[i]));
    return m;
}

static void check_scalar(float got, const char *name) {
    float *want = fixture(name, 1);
    assert_true(tu_max_rel_err(&got, want, 1, 1e-6, TOL, name) <= TOL);
    free(want);
}

static void check_tensor(const float *got, size_t n, double floor_frac, const char *name) {
    float *want = fixture(name, n);
    TU_ASSERT_CLOSE(got, want, n, floor_frac * max_abs(want, n), TOL, name);
    free(want);
}

/* ---- inputs, as tools/loss_ref.py makes them ---- */

static void make_logits(float *x, size_t n) { /* NCHW flat order */
    for (size_t i = 0; i < n; i++) x[i] = (float)(3 * sin(0.37 * (double)i + 0.1));
}

static void make_target(float *t) { /* (N,1,H,W) = (N,H,W,1) */
    for (int n = 0; n < BN; n++)
        for (int h = 0; h < BH; h++)
            for (int w = 0; w < BW; w++)
                t[(n * BH + h) * BW + w] =
                    sin(0.21 * h + 0.5 * n) * cos(0.17 * w + 0.3) > 0.2 ? 1.0f : 0.0f;
}

static void make_labels(int *lab) { /* (N,H,W) */
    for (int n = 0; n < CN; n++)
        for (int h = 0; h < CH; h++)
            for (int w = 0; w < CW; w++) {
                int v = (3 * h + 5 * w + 7 * n) % 5;
                lab[(n * CH + h) * CW + w] = v == 4 ? IGNORE : v;
            }
}

/* (N,C,HW) <-> (N,HW,C) */
static void nchw_to_nhwc(const float *src, float *dst, int N, int C, int HW) {
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++)
            for (int p = 0; p < HW; p++)
                dst[((size_t)n * HW + p) * C + c] = src[((size_t)n * C + c) * HW + p];
}

static void nhwc_to_nchw(const float *src, float *dst, int N, int C, int HW) {
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++)
            for (int p = 0; p < HW; p++)
                dst[((size_t)n * C + c) * HW + p] = src[((size_t)n * HW + p) * C + c];
}

/* The regenerated inputs are the fixture's bit for bit (else every comparison below would
 * fail for the wrong reason). */
static void test_inputs(void **state) {
    (void)state;
    size_t nb = (size_t)BN * BH * BW, nc = (size_t)CN * CC * CH * CW, nl = (size_t)CN * CH * CW;
    float *x = malloc(CAMO_MAX(nb, nc) * sizeof(float)), *t = malloc(nb * sizeof(float));
    int *lab = malloc(nl * sizeof(int));
    float *fx_x = fixture("bin.logits", nb), *fx_t = fixture("bin.target", nb);
    make_logits(x, nb);
    make_target(t);
    assert_memory_equal(x, fx_x, nb * sizeof(float));
    assert_memory_equal(t, fx_t, nb * sizeof(float));
    free(fx_x);
    fx_x = fixture("ce.logits", nc);
    make_logits(x, nc);
    assert_memory_equal(x, fx_x, nc * sizeof(float));
    float *fx_l = fixture("ce.labels", nl);
    make_labels(lab);
    for (size_t i = 0; i < nl; i++) assert_int_equal(lab[i], (int)fx_l[i]);
    free(x); free(t); free(lab); free(fx_x); free(fx_t); free(fx_l);
}

/* ---- losses ---- */

static void test_binary_losses(void **state) {
    (void)state;
    size_t n = (size_t)BN * BH * BW;
    float *x = malloc(n * sizeof(float)), *t = malloc(n * sizeof(float));
    float *dx = malloc(n * sizeof(float));
    make_logits(x, n); /* one channel: NCHW and NHWC orders coincide */
    make_target(t);
    const char *names[] = {"bce", "structure", "dice"};
    for (int k = 0; k < 3; k++) {
        float loss = 0;
        char key[64];
        memset(dx, 0, n * sizeof(float));
        if (k == 0) be->loss_bce_logits(be, BN, BH, BW, &loss, dx, x, t, (float)n);
        if (k == 1) be->loss_structure(be, BN, BH, BW, &loss, dx, x, t, BN);
        if (k == 2) be->loss_dice(be, BN, BH, BW, &loss, dx, x, t, BN);
        snprintf(key, sizeof key, "%s.loss", names[k]);
        check_scalar(loss, key);
        snprintf(key, sizeof key, "%s.dlogits", names[k]);
        check_tensor(dx, n, 1e-3, key);
    }
    free(x); free(t); free(dx);
}

static void test_cross_entropy(void **state) {
    (void)state;
    int HW = CH * CW;
    size_t n = (size_t)CN * CC * HW, nl = (size_t)CN * HW;
    float *x_nchw = malloc(n * sizeof(float)), *x = malloc(n * sizeof(float));
    float *dx = calloc(n, sizeof(float)), *dx_nchw = malloc(n * sizeof(float));
    int *lab = malloc(nl * sizeof(int)), valid = 0;
    make_logits(x_nchw, n);
    nchw_to_nhwc(x_nchw, x, CN, CC, HW);
    make_labels(lab);
    for (size_t i = 0; i < nl; i++) valid += lab[i] != IGNORE;
    float loss = 0;
    be->loss_cross_entropy(be, CN, CH, CW, CC, &loss, dx, x, lab, IGNORE, (float)valid);
    check_scalar(loss, "ce.loss");
    nhwc_to_nchw(dx, dx_nchw, CN, CC, HW);
    check_tensor(dx_nchw, n, 1e-3, "ce.dlogits");
    free(x_nchw); free(x); free(dx); free(dx_nchw); free(lab);
}

/* ---- optimizers ---- */

static void test_optimizers(void **state) {
    (void)state;
    float *w0 = fixture("opt.w0", NOPT), *g = fixture("opt.grads", (size_t)STEPS * NOPT);
    float *w = malloc(NOPT * sizeof(float)), *m = calloc(NOPT, sizeof(float));
    float *v = calloc(NOPT, sizeof(float));
    /* SGD, and SGD with Nesterov momentum; the buffer starts as garbage (7), which
     * first_step must overwrite */
    for (int nesterov = 0; nesterov <= 1; nesterov++) {
        float lr = nesterov ? 0.05f : 0.1f, wd = nesterov ? 5e-4f : 1e-4f;
        float gs = nesterov ? 1.0f : 0.5f;
        memcpy(w, w0, NOPT * sizeof(float));
        for (int i = 0; i < NOPT; i++) m[i] = 7.0f;
        for (int s = 0; s < STEPS; s++)
            be->sgd_step(be, NOPT, w, g + (size_t)s * NOPT, m, lr, 0.9f, nesterov, wd, gs,
                         s == 0);
        check_tensor(w, NOPT, 1e-2, nesterov ? "sgd_nesterov.w" : "sgd.w");
        check_tensor(m, NOPT, 1e-2, nesterov ? "sgd_nesterov.buf" : "sgd.buf");
    }
    memcpy(w, w0, NOPT * sizeof(float));
    memset(m, 0, NOPT * sizeof(float));
    for (int s = 1; s <= STEPS; s++)
        be->adamw_step(be, NOPT, w, g + (size_t)(s - 1) * NOPT, m, v, 1e-2f, 0.9f, 0.999f,
                       1e-8f, 0.05f, 0.5f, s);
    check_tensor(w, NOPT, 1e-2, "adamw.w");
    check_tensor(m, NOPT, 1e-2, "adamw.m");
    check_tensor(v, NOPT, 1e-2, "adamw.v");
    free(w0); free(g); free(w); free(m); free(v);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_inputs),
        cmocka_unit_test(test_binary_losses),
        cmocka_unit_test(test_cross_entropy),
        cmocka_unit_test(test_optimizers),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
