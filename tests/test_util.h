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

/* Scratch directory for a test (created by tests/run.sh; /tmp when run alone). */
static inline const char *tu_tmpdir(void) {
    const char *d = getenv("CAMO_TEST_TMP");
    return d ? d : "/tmp";
}

#endif
