/* test_util.h: helpers shared by the C tests (cmocka). Include after the system headers. */
#ifndef CAMO_TEST_UTIL_H
#define CAMO_TEST_UTIL_H

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

/* Largest |a-b| / max(|b|, floor) over n values; floor keeps near-zero values from
 * dominating. Prints the worst index when it exceeds tol, so a failure says where. */
static inline double tu_max_rel_err(const float *a, const float *b, size_t n, double floor_,
                                    double tol, const char *what) {
    double worst = 0;
    size_t wi = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        double s = fabs((double)b[i]);
        double r = d / (s > floor_ ? s : floor_);
        if (!(r <= worst)) { worst = r; wi = i; } /* NaN-safe: NaN becomes worst */
    }
    if (!(worst <= tol) && n > 0)
        fprintf(stderr, "  %s: max rel err %.3g at [%zu]: got %.8g want %.8g (n=%zu)\n", what,
                worst, wi, (double)a[wi], (double)b[wi], n);
    return worst;
}

#define TU_ASSERT_CLOSE(a, b, n, floor_, tol, what) \
    assert_true(tu_max_rel_err((a), (b), (n), (floor_), (tol), (what)) <= (tol))

/* Deterministic pseudo-random fill in [lo, hi). */
static inline void tu_fill(float *x, size_t n, uint32_t seed, float lo, float hi) {
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
    for (size_t i = 0; i < n; i++) {
        s ^= s << 13; s ^= s >> 7; s ^= s << 17;
        x[i] = lo + (hi - lo) * (float)((s >> 40) * (1.0 / 16777216.0));
    }
}

/* calloc'ed floats, never a NULL for n == 0. */
static inline float *tu_falloc(size_t n) { return calloc(n ? n : 1, sizeof(float)); }

/* ---- backward ops against central differences ---- */

typedef void (*tu_fwd_fn)(void *ctx); /* recomputes ctx's output y from its inputs */

static inline double tu_dot(const float *y, const float *dy, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)y[i] * dy[i];
    return s;
}

/* Compares grad (nx) with central differences of f(x) = sum(y * dy) at up to max_checks
 * evenly spread elements of x (relative error, floor_ as in tu_max_rel_err); restores x
 * and y. */
static inline void tu_fd_check_some(tu_fwd_fn fwd, void *ctx, float *x, size_t nx,
                                    const float *y, const float *dy, size_t ny,
                                    const float *grad, float eps, double floor_,
                                    size_t max_checks, double tol, const char *what) {
    size_t step = nx > max_checks ? (nx + max_checks - 1) / max_checks : 1, k = 0;
    float *num = malloc(nx * sizeof(float)), *ana = malloc(nx * sizeof(float));
    for (size_t i = 0; i < nx; i += step, k++) {
        float save = x[i], xp = save + eps, xm = save - eps;
        x[i] = xp;
        fwd(ctx);
        double fp = tu_dot(y, dy, ny);
        x[i] = xm;
        fwd(ctx);
        double fm = tu_dot(y, dy, ny);
        x[i] = save;
        num[k] = (float)((fp - fm) / ((double)xp - (double)xm));
        ana[k] = grad[i];
    }
    fwd(ctx);
    TU_ASSERT_CLOSE(ana, num, k, floor_, tol, what);
    free(num);
    free(ana);
}

/* tu_fd_check_some over every element of x. */
static inline void tu_fd_check(tu_fwd_fn fwd, void *ctx, float *x, size_t nx, const float *y,
                               const float *dy, size_t ny, const float *grad, float eps,
                               double floor_, double tol, const char *what) {
    tu_fd_check_some(fwd, ctx, x, nx, y, dy, ny, grad, eps, floor_, nx, tol, what);
}

/* The cmocka fixture of the CPU op tests: a file-wide backend `be` with `threads` threads,
 * created by setup and destroyed by teardown (pass both to cmocka_run_group_tests). Needs
 * camo/backend.h. */
#define TU_CPU_BACKEND_FIXTURE(threads)                \
    static camo_backend *be;                           \
    static int setup(void **state) {                   \
        (void)state;                                   \
        be = camo_backend_cpu_create(threads);         \
        return be ? 0 : -1;                            \
    }                                                  \
    static int teardown(void **state) {                \
        (void)state;                                   \
        be->destroy(be);                               \
        return 0;                                      \
    }

/* Scratch directory for a test (created by tests/run.sh; /tmp when run alone). */
static inline const char *tu_tmpdir(void) {
    const char *d = getenv("CAMO_TEST_TMP");
    return d ? d : "/tmp";
}

/* Writes a copy of network file `src` made smooth to `dst`: max pooling becomes average
 * pooling and every ReLU (layers, conv `act`, resblocks, bottlenecks) SiLU. Equivalence and parity
 * tests of whole networks run on these copies. At a kink (a max-pool near-tie, a ReLU
 * input within rounding of zero, which BN makes common since it centres its outputs on 0)
 * a last-bit difference of the forward (sums in another order: another replica count,
 * OpenBLAS kernel or GPU library) routes a gradient another way, a change of percents
 * that no tolerance can tell from a bug; without kinks runs differ by rounding alone.
 * The kinked ops keep their own per-op tests. 0, or -1 when a file cannot be used. */
static inline int tu_write_smooth_net(const char *src, const char *dst) {
    FILE *f = fopen(src, "r");
    if (!f) return -1;
    static char text[131072];
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    if (n == sizeof text - 1) return -1;
    text[n] = 0;
    for (char *p = strstr(text, "\"maxpool\""); p; p = strstr(p, "\"maxpool\""))
        memcpy(p + 1, "avg", 3);
    for (char *p = strstr(text, "\"relu\""); p; p = strstr(p, "\"relu\""))
        memcpy(p + 1, "silu", 4);
    if (!(f = fopen(dst, "w"))) return -1;
    /* residual blocks take `act` (default relu): after each block's type */
    const char *blocks[2] = {"\"resblock\";", "\"bottleneck\";"};
    char *p = text;
    for (;;) {
        char *q = NULL;
        const char *b = NULL;
        for (int i = 0; i < 2; i++) {
            char *h = strstr(p, blocks[i]);
            if (h && (!q || h < q)) q = h, b = blocks[i];
        }
        if (!q) break;
        fprintf(f, "%.*s%s act = \"silu\";", (int)(q - p), p, b);
        p = q + strlen(b);
    }
    fputs(p, f);
    return fclose(f);
}

#endif
