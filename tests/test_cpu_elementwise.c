/* test_cpu_elementwise.c: CPU activations, add / axpy / scale, broadcast multiply, channel
 * slices and channel softmax against naive double-precision references, and every backward
 * op against central differences of f = sum(y * dy). Backward ops must accumulate.
 * fp32 tolerances: forward 1e-5 relative (floor 1e-3); gradients 1e-2 relative (floor 0.1). */
#include "backend/backend.h"
#include "core/common.h"

#include "test_util.h"

TU_CPU_BACKEND_FIXTURE(2)

/* ---- activations ---- */

static double ref_act(camo_act act, double alpha, double x) {
    switch (act) {
    case CAMO_ACT_IDENTITY: return x;
    case CAMO_ACT_RELU: return x > 0 ? x : 0;
    case CAMO_ACT_LEAKY_RELU: return x > 0 ? x : alpha * x;
    case CAMO_ACT_SILU: return x / (1 + exp(-x));
    case CAMO_ACT_GELU: return 0.5 * x * (1 + erf(x / sqrt(2.0)));
    case CAMO_ACT_SIGMOID: return 1 / (1 + exp(-x));
    case CAMO_ACT_TANH: return tanh(x);
    }
    return NAN;
}

static const char *act_name[] = {"identity", "relu", "leaky_relu", "silu", "gelu", "sigmoid",
                                 "tanh"};

typedef struct { camo_act act; float alpha; size_t n; float *y; const float *x; } act_ctx;

static void act_fwd(void *p) {
    act_ctx *c = p;
    be->act_forward(be, c->act, c->alpha, c->n, c->y, c->x);
}

/* x (n) in [-4, 4), kept 0.05 away from 0 so relu's kink is never straddled */
static void fill_away_from_zero(float *x, size_t n, uint32_t seed) {
    tu_fill(x, n, seed, -4, 4);
    for (size_t i = 0; i < n; i++)
        if (fabsf(x[i]) < 0.05f) x[i] = x[i] < 0 ? -0.05f - x[i] : 0.05f + x[i];
}

static void test_act(void **state) {
    (void)state;
    const size_t n = 97;
    float *x = tu_falloc(n), *y = tu_falloc(n), *want = tu_falloc(n);
    float *dy = tu_falloc(n), *dx = tu_falloc(n);
    fill_away_from_zero(x, n, 1);
    tu_fill(dy, n, 2, -1, 1);
    for (int a = CAMO_ACT_IDENTITY; a <= CAMO_ACT_TANH; a++) {
        float alpha = a == CAMO_ACT_LEAKY_RELU ? 0.1f : 0.0f;
        act_ctx c = {(camo_act)a, alpha, n, y, x};
        act_fwd(&c);
        for (size_t i = 0; i < n; i++) want[i] = (float)ref_act(a, alpha, x[i]);
        TU_ASSERT_CLOSE(y, want, n, 1e-3, 1e-5, act_name[a]);
        /* backward from a non-zero start: accumulation, not assignment */
        for (size_t i = 0; i < n; i++) dx[i] = 0.5f;
        be->act_backward(be, (camo_act)a, alpha, n, dx, dy, x, y);
        for (size_t i = 0; i < n; i++) dx[i] -= 0.5f;
        tu_fd_check(act_fwd, &c, x, n, y, dy, n, dx, 1e-3f, 0.1, 1e-2, act_name[a]);
        /* y == NULL: the op recomputes what it needs from x */
        float *dx2 = tu_falloc(n);
        for (size_t i = 0; i < n; i++) dx2[i] = 0.5f;
        be->act_backward(be, (camo_act)a, alpha, n, dx2, dy, x, NULL);
        for (size_t i = 0; i < n; i++) dx2[i] -= 0.5f;
        TU_ASSERT_CLOSE(dx2, dx, n, 1e-3, 1e-6, act_name[a]);
        free(dx2);
    }
    free(x); free(y); free(want); free(dy); free(dx);
}

/* Large enough for the OpenMP path; extreme inputs must give finite values; in place. */
static void test_act_large(void **state) {
    (void)state;
    const size_t n = 100003;
    float *x = tu_falloc(n), *y = tu_falloc(n), *want = tu_falloc(n);
    tu_fill(x, n, 3, -30, 30);
    x[0] = -1e30f; x[1] = 1e30f; x[2] = -100; x[3] = 100;
    for (int a = CAMO_ACT_IDENTITY; a <= CAMO_ACT_TANH; a++) {
        memcpy(y, x, n * sizeof(float));
        be->act_forward(be, (camo_act)a, 0.2f, n, y, y);
        for (size_t i = 0; i < n; i++) want[i] = (float)ref_act(a, 0.2, x[i]);
        TU_ASSERT_CLOSE(y, want, n, 1e-3, 1e-5, act_name[a]);
    }
    free(x); free(y); free(want);
}

/* ---- add, axpy, scale ---- */

static void test_add_axpy_scale(void **state) {
    (void)state;
    const size_t n = 40000; /* over the OpenMP threshold */
    float *a = tu_falloc(n), *b = tu_falloc(n), *y = tu_falloc(n), *want = tu_falloc(n);
    tu_fill(a, n, 4, -2, 2);
    tu_fill(b, n, 5, -2, 2);
    be->add(be, n, y, a, b);
    for (size_t i = 0; i < n; i++) want[i] = (float)((double)a[i] + b[i]);
    TU_ASSERT_CLOSE(y, want, n, 1, 1e-6, "add"); /* floor 1: operands are O(1) */
    be->axpy(be, n, -0.75f, a, y);
    for (size_t i = 0; i < n; i++) want[i] = (float)((double)want[i] - 0.75 * a[i]);
    TU_ASSERT_CLOSE(y, want, n, 1, 1e-6, "axpy");
    be->scale(be, n, 3.0f, y);
    for (size_t i = 0; i < n; i++) want[i] *= 3.0f;
    TU_ASSERT_CLOSE(y, want, n, 1, 1e-6, "scale");
    free(a); free(b); free(y); free(want);
}

/* ---- broadcast multiply ---- */

typedef struct { camo_bcast mode; int N, HW, C; float *y, *a, *b; } mul_ctx;

static void mul_fwd(void *p) {
    mul_ctx *c = p;
    be->mul_forward(be, c->mode, c->N, c->HW, c->C, c->y, c->a, c->b);
}

static size_t b_numel(camo_bcast mode, int N, int HW, int C) {
    return mode == CAMO_BCAST_NONE ? (size_t)N * HW * C
         : mode == CAMO_BCAST_CHANNEL ? (size_t)N * HW : (size_t)N * C;
}

static double ref_b(camo_bcast mode, const float *b, int HW, int C, int n, int m, int c) {
    if (mode == CAMO_BCAST_NONE) return b[((size_t)n * HW + m) * C + c];
    if (mode == CAMO_BCAST_CHANNEL) return b[(size_t)n * HW + m];
    return b[(size_t)n * C + c];
}

static void check_mul(camo_bcast mode, int N, int HW, int C, int grad_check) {
    const char *names[] = {"mul none", "mul channel", "mul spatial"};
    size_t na = (size_t)N * HW * C, nb = b_numel(mode, N, HW, C);
    float *a = tu_falloc(na), *b = tu_falloc(nb), *y = tu_falloc(na), *want = tu_falloc(na);
    float *dy = tu_falloc(na), *da = tu_falloc(na), *db = tu_falloc(nb), *da2 = tu_falloc(na);
    float *db2 = tu_falloc(nb);
    tu_fill(a, na, 6, -2, 2);
    tu_fill(b, nb, 7, -2, 2);
    tu_fill(dy, na, 8, -1, 1);
    mul_ctx c = {mode, N, HW, C, y, a, b};
    mul_fwd(&c);
    for (int n = 0; n < N; n++)
        for (int m = 0; m < HW; m++)
            for (int k = 0; k < C; k++) {
                size_t i = ((size_t)n * HW + m) * C + k;
                want[i] = (float)(a[i] * ref_b(mode, b, HW, C, n, m, k));
            }
    TU_ASSERT_CLOSE(y, want, na, 1e-3, 1e-6, names[mode]);
    be->mul_backward(be, mode, N, HW, C, da, db, dy, a, b);
    if (grad_check) {
        tu_fd_check(mul_fwd, &c, a, na, y, dy, na, da, 1e-2f, 0.1, 1e-2, names[mode]);
        tu_fd_check(mul_fwd, &c, b, nb, y, dy, na, db, 1e-2f, 0.1, 1e-2, names[mode]);
    } else { /* large case: db against a double reference of the reduction */
        double *ref = calloc(nb, sizeof(double));
        for (int n = 0; n < N; n++)
            for (int m = 0; m < HW; m++)
                for (int k = 0; k < C; k++) {
                    size_t i = ((size_t)n * HW + m) * C + k;
                    size_t j = mode == CAMO_BCAST_NONE ? i
                             : mode == CAMO_BCAST_CHANNEL ? (size_t)n * HW + m
                                                          : (size_t)n * C + k;
                    ref[j] += (double)dy[i] * a[i];
                }
        for (size_t j = 0; j < nb; j++) db2[j] = (float)ref[j];
        TU_ASSERT_CLOSE(db, db2, nb, 1e-2, 1e-5, names[mode]);
        free(ref);
    }
    /* a second backward doubles both gradients; a NULL gradient is skipped */
    memcpy(da2, da, na * sizeof(float));
    memcpy(db2, db, nb * sizeof(float));
    be->mul_backward(be, mode, N, HW, C, da2, NULL, dy, a, b);
    be->mul_backward(be, mode, N, HW, C, NULL, db2, dy, a, b);
    for (size_t i = 0; i < na; i++) da[i] *= 2;
    for (size_t i = 0; i < nb; i++) db[i] *= 2;
    TU_ASSERT_CLOSE(da2, da, na, 1e-3, 1e-6, names[mode]);
    TU_ASSERT_CLOSE(db2, db, nb, 1e-3, 1e-6, names[mode]);
    free(a); free(b); free(y); free(want); free(dy); free(da); free(db); free(da2); free(db2);
}

static void test_mul(void **state) {
    (void)state;
    for (int mode = CAMO_BCAST_NONE; mode <= CAMO_BCAST_SPATIAL; mode++) {
        check_mul((camo_bcast)mode, 2, 7, 5, 1);
        check_mul((camo_bcast)mode, 3, 601, 67, 0); /* OpenMP path, several row blocks */
    }
}

/* ---- channel slice (concat) ---- */

typedef struct { int M, Cd, off, Cs; float *dst, *src; } slice_ctx;

static void slice_fwd(void *p) {
    slice_ctx *c = p;
    be->channel_slice(be, 0, c->M, c->Cd, c->off, c->Cs, c->dst, c->src);
}

static void test_channel_slice(void **state) {
    (void)state;
    const int M = 13, Cd = 9, off = 3, Cs = 4;
    float *dst = tu_falloc((size_t)M * Cd), *src = tu_falloc((size_t)M * Cs);
    float *ddst = tu_falloc((size_t)M * Cd), *dsrc = tu_falloc((size_t)M * Cs);
    tu_fill(dst, (size_t)M * Cd, 9, -1, 1);
    tu_fill(src, (size_t)M * Cs, 10, -1, 1);
    tu_fill(ddst, (size_t)M * Cd, 11, -1, 1);
    float *before = tu_falloc((size_t)M * Cd);
    memcpy(before, dst, (size_t)M * Cd * sizeof(float));
    slice_ctx c = {M, Cd, off, Cs, dst, src};
    slice_fwd(&c);
    for (int m = 0; m < M; m++)
        for (int k = 0; k < Cd; k++) {
            float want = k >= off && k < off + Cs ? src[m * Cs + k - off] : before[m * Cd + k];
            assert_true(dst[m * Cd + k] == want); /* a copy is exact; other channels kept */
        }
    /* backward twice = twice the slice */
    be->channel_slice(be, 1, M, Cd, off, Cs, ddst, dsrc);
    tu_fd_check(slice_fwd, &c, src, (size_t)M * Cs, dst, ddst, (size_t)M * Cd, dsrc, 1e-2f, 0.1,
                1e-2, "channel_slice");
    be->channel_slice(be, 1, M, Cd, off, Cs, ddst, dsrc);
    for (int m = 0; m < M; m++)
        for (int k = 0; k < Cs; k++) assert_true(dsrc[m * Cs + k] == 2 * ddst[m * Cd + off + k]);
    free(dst); free(src); free(ddst); free(dsrc); free(before);
}

/* ---- softmax over channels ---- */

typedef struct { int M, C; float *y, *x; } sm_ctx;

static void sm_fwd(void *p) {
    sm_ctx *c = p;
    be->softmax_forward(be, c->M, c->C, c->y, c->x);
}

static void ref_softmax(int M, int C, const float *x, float *y) {
    for (int m = 0; m < M; m++) {
        double mx = -INFINITY, s = 0;
        for (int c = 0; c < C; c++) mx = fmax(mx, x[m * C + c]);
        for (int c = 0; c < C; c++) s += exp(x[m * C + c] - mx);
        for (int c = 0; c < C; c++) y[m * C + c] = (float)(exp(x[m * C + c] - mx) / s);
    }
}

static void test_softmax(void **state) {
    (void)state;
    const int M = 11, C = 6;
    size_t n = (size_t)M * C;
    float *x = tu_falloc(n), *y = tu_falloc(n), *want = tu_falloc(n);
    float *dy = tu_falloc(n), *dx = tu_falloc(n);
    tu_fill(x, n, 12, -3, 3);
    tu_fill(dy, n, 13, -1, 1);
    sm_ctx c = {M, C, y, x};
    sm_fwd(&c);
    ref_softmax(M, C, x, want);
    TU_ASSERT_CLOSE(y, want, n, 1e-3, 1e-5, "softmax");
    be->softmax_backward(be, M, C, dx, dy, y);
    tu_fd_check(sm_fwd, &c, x, n, y, dy, n, dx, 1e-2f, 0.1, 1e-2, "softmax backward");
    /* accumulation: a second call doubles dx */
    float *dx1 = tu_falloc(n);
    memcpy(dx1, dx, n * sizeof(float));
    be->softmax_backward(be, M, C, dx, dy, y);
    for (size_t i = 0; i < n; i++) dx1[i] *= 2;
    TU_ASSERT_CLOSE(dx, dx1, n, 1e-3, 1e-6, "softmax accumulate");
    /* stability: logits near 1000 would overflow a naive exp */
    for (size_t i = 0; i < n; i++) x[i] += 1000.0f;
    sm_fwd(&c);
    ref_softmax(M, C, x, want);
    TU_ASSERT_CLOSE(y, want, n, 1e-3, 1e-5, "softmax of large logits");
    free(x); free(y); free(want); free(dy); free(dx); free(dx1);
}

int main(int argc, char **argv) {
    (void)argc;
    camo_cpu_env_reexec(argv); /* passive OpenMP waits: tests share 2 busy cores */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_act),
        cmocka_unit_test(test_act_large),
        cmocka_unit_test(test_add_axpy_scale),
        cmocka_unit_test(test_mul),
        cmocka_unit_test(test_channel_slice),
        cmocka_unit_test(test_softmax),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
