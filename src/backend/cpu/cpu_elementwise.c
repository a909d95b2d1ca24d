/* cpu_elementwise.c: CPU activations, add / axpy / scale, broadcast multiply, channel
 * slices (concat) and channel softmax. Backward ops accumulate (+=) as backend.h requires.
 * Reductions (the multiply's db) go through fixed blocks of rows added in block order, so
 * results do not depend on the thread count or timing.
 * Loops shorter than CPU_EW_PAR_MIN run on the calling thread: waking the OpenMP team costs
 * more than a few thousand multiply-adds. Functions whose only use of `be` is an OpenMP
 * pragma start with (void)be: builds without OpenMP (TSan) ignore the pragmas. */
#include "cpu_internal.h"

#include <math.h>
#include <string.h>

#include "core/common.h"

#define CPU_EW_PAR_MIN 32768
#define CPU_EW_BLOCK_ROWS 256 /* rows per partial sum of a deterministic reduction */

/* ---- activations ---- */

static inline float sigmoid_f(float x) { return 1.0f / (1.0f + expf(-x)); } /* inf-safe */

/* Phi(x), the standard normal CDF. 0.5*erfc(-x/sqrt 2) rather than 0.5*(1 + erf(x/sqrt 2)):
 * equal, but the second loses all digits to cancellation for x below about -4 */
static inline float normal_cdf_f(float x) { return 0.5f * erfcf(-x * (float)M_SQRT1_2); }

/* GELU, exact erf form (PyTorch's default approximate="none"): x * Phi(x) */
static inline float gelu_f(float x) { return x * normal_cdf_f(x); }

static inline float act_f(camo_act act, float alpha, float x) {
    switch (act) {
    case CAMO_ACT_IDENTITY: return x;
    case CAMO_ACT_RELU: return x > 0 ? x : 0.0f;
    case CAMO_ACT_LEAKY_RELU: return x > 0 ? x : alpha * x;
    case CAMO_ACT_SILU: return x * sigmoid_f(x);
    case CAMO_ACT_GELU: return gelu_f(x);
    case CAMO_ACT_SIGMOID: return sigmoid_f(x);
    case CAMO_ACT_TANH: return tanhf(x);
    }
    return x;
}

/* act'(x); y = act(x) when the caller has it (NULL otherwise: recompute from x) */
static inline float act_df(camo_act act, float alpha, float x, const float *y) {
    switch (act) {
    case CAMO_ACT_IDENTITY: return 1.0f;
    /* at x == 0 PyTorch's threshold_backward gives 0 (it tests result > 0) */
    case CAMO_ACT_RELU: return x > 0 ? 1.0f : 0.0f;
    case CAMO_ACT_LEAKY_RELU: return x > 0 ? 1.0f : alpha;
    case CAMO_ACT_SILU: {
        float s = sigmoid_f(x);
        return s * (1.0f + x * (1.0f - s));
    }
    case CAMO_ACT_GELU: {
        /* Phi(x) + x * phi(x) */
        float phi = expf(-0.5f * x * x) * 0.39894228040143267794f; /* 1/sqrt(2 pi) */
        return normal_cdf_f(x) + x * phi;
    }
    case CAMO_ACT_SIGMOID: {
        float s = y ? *y : sigmoid_f(x);
        return s * (1.0f - s);
    }
    case CAMO_ACT_TANH: {
        float t = y ? *y : tanhf(x);
        return 1.0f - t * t;
    }
    }
    return 1.0f;
}

/* The loops are written once per activation (the switch is outside): with the switch inside,
 * gcc -O2 neither hoists it nor vectorises, and ReLU ran at ~10 ns a value. */
#define ACT_EACH(X) X(CAMO_ACT_RELU) X(CAMO_ACT_LEAKY_RELU) X(CAMO_ACT_SILU) \
    X(CAMO_ACT_GELU) X(CAMO_ACT_SIGMOID) X(CAMO_ACT_TANH)

/* y (n) = act(x); y may equal x (in place) */
static void cpu_act_forward(camo_backend *be, camo_act act, float alpha, size_t n, float *y,
                            const float *x) {
    int T = n >= CPU_EW_PAR_MIN ? cpu_threads(be) : 1;
    (void)T; /* only read by the OpenMP pragmas */
    switch (act) {
    case CAMO_ACT_IDENTITY:
        if (y != x) memcpy(y, x, n * sizeof(float));
        break;
#define FWD(A)                                                    \
    case A:                                                       \
        _Pragma("omp parallel for num_threads(T)")                \
        for (size_t i = 0; i < n; i++) y[i] = act_f(A, alpha, x[i]); \
        break;
    ACT_EACH(FWD)
#undef FWD
    }
}

/* dx (n) += dy * act'(x); y (n) = act(x) may be NULL */
static void cpu_act_backward(camo_backend *be, camo_act act, float alpha, size_t n, float *dx,
                             const float *dy, const float *x, const float *y) {
    int T = n >= CPU_EW_PAR_MIN ? cpu_threads(be) : 1;
    (void)T; /* only read by the OpenMP pragmas */
    switch (act) {
#define BWD(A)                                                             \
    case A:                                                                \
        _Pragma("omp parallel for num_threads(T)")                         \
        for (size_t i = 0; i < n; i++)                                     \
            dx[i] += dy[i] * act_df(A, alpha, x[i], y ? y + i : NULL);     \
        break;
    ACT_EACH(BWD) BWD(CAMO_ACT_IDENTITY)
#undef BWD
    }
}

/* ---- add, axpy, scale ---- */

static void cpu_add(camo_backend *be, size_t n, float *y, const float *a, const float *b) {
    (void)be;
#pragma omp parallel for if (n >= CPU_EW_PAR_MIN) num_threads(cpu_threads(be))
    for (size_t i = 0; i < n; i++) y[i] = a[i] + b[i];
}

static void cpu_axpy(camo_backend *be, size_t n, float alpha, const float *x, float *y) {
    (void)be;
#pragma omp parallel for if (n >= CPU_EW_PAR_MIN) num_threads(cpu_threads(be))
    for (size_t i = 0; i < n; i++) y[i] += alpha * x[i];
}

static void cpu_scale(camo_backend *be, size_t n, float alpha, float *x) {
    (void)be;
#pragma omp parallel for if (n >= CPU_EW_PAR_MIN) num_threads(cpu_threads(be))
    for (size_t i = 0; i < n; i++) x[i] *= alpha;
}

/* ---- broadcast multiply ---- */

/* y (N,HW,C) = a (N,HW,C) * b, b (N,HW,C), (N,HW,1) or (N,1,C) as `mode` says */
static void cpu_mul_forward(camo_backend *be, camo_bcast mode, int N, int HW, int C, float *y,
                            const float *a, const float *b) {
    (void)be;
    size_t M = (size_t)N * HW, n = M * C;
    if (mode == CAMO_BCAST_NONE) {
#pragma omp parallel for if (n >= CPU_EW_PAR_MIN) num_threads(cpu_threads(be))
        for (size_t i = 0; i < n; i++) y[i] = a[i] * b[i];
        return;
    }
#pragma omp parallel for if (n >= CPU_EW_PAR_MIN) num_threads(cpu_threads(be))
    for (size_t m = 0; m < M; m++) {
        /* CHANNEL: one scalar per row; SPATIAL: the row's image's C-vector */
        const float *bm = mode == CAMO_BCAST_CHANNEL ? b + m : b + (m / HW) * C;
        size_t stride = mode == CAMO_BCAST_CHANNEL ? 0 : 1;
        for (int c = 0; c < C; c++) y[m * C + c] = a[m * C + c] * bm[c * stride];
    }
}

/* db (N,1,C) += sum over HW of dy * a, in fixed row blocks added in order */
static void mul_backward_spatial_db(camo_backend *be, int N, int HW, int C, float *db,
                                    const float *dy, const float *a) {
    int nb = (HW + CPU_EW_BLOCK_ROWS - 1) / CPU_EW_BLOCK_ROWS;
    double *part = camo_calloc((size_t)N * nb * C, sizeof(double)); /* (N, nb, C) */
    (void)be;
#pragma omp parallel for if ((size_t)N * HW * C >= CPU_EW_PAR_MIN) num_threads(cpu_threads(be))
    for (int job = 0; job < N * nb; job++) {
        int n = job / nb, blk = job % nb;
        double *p = part + (size_t)job * C;
        int r1 = CAMO_MIN(HW, (blk + 1) * CPU_EW_BLOCK_ROWS);
        for (int r = blk * CPU_EW_BLOCK_ROWS; r < r1; r++) {
            size_t base = ((size_t)n * HW + r) * C;
            for (int c = 0; c < C; c++) p[c] += (double)dy[base + c] * a[base + c];
        }
    }
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++) {
            double s = 0;
            for (int blk = 0; blk < nb; blk++) s += part[((size_t)n * nb + blk) * C + c];
            db[(size_t)n * C + c] += (float)s;
        }
    free(part);
}

/* da (N,HW,C) += dy * b; db (shape of b) += dy * a summed over the broadcast dims.
 * Either gradient may be NULL (input that needs none). */
static void cpu_mul_backward(camo_backend *be, camo_bcast mode, int N, int HW, int C,
                             float *da, float *db, const float *dy, const float *a,
                             const float *b) {
    size_t M = (size_t)N * HW, n = M * C;
    if (da) {
        if (mode == CAMO_BCAST_NONE) {
#pragma omp parallel for if (n >= CPU_EW_PAR_MIN) num_threads(cpu_threads(be))
            for (size_t i = 0; i < n; i++) da[i] += dy[i] * b[i];
        } else {
#pragma omp parallel for if (n >= CPU_EW_PAR_MIN) num_threads(cpu_threads(be))
            for (size_t m = 0; m < M; m++) {
                const float *bm = mode == CAMO_BCAST_CHANNEL ? b + m : b + (m / HW) * C;
                size_t stride = mode == CAMO_BCAST_CHANNEL ? 0 : 1;
                for (int c = 0; c < C; c++) da[m * C + c] += dy[m * C + c] * bm[c * stride];
            }
        }
    }
    if (!db) return;
    if (mode == CAMO_BCAST_NONE) {
#pragma omp parallel for if (n >= CPU_EW_PAR_MIN) num_threads(cpu_threads(be))
        for (size_t i = 0; i < n; i++) db[i] += dy[i] * a[i];
    } else if (mode == CAMO_BCAST_CHANNEL) {
#pragma omp parallel for if (n >= CPU_EW_PAR_MIN) num_threads(cpu_threads(be))
        for (size_t m = 0; m < M; m++) {
            double s = 0; /* C can be a few hundred: keep the row sum exact-ish */
            for (int c = 0; c < C; c++) s += (double)dy[m * C + c] * a[m * C + c];
            db[m] += (float)s;
        }
    } else {
        mul_backward_spatial_db(be, N, HW, C, db, dy, a);
    }
}

/* ---- concat slices ---- */

/* forward: dst (M, Cd)[:, off:off+Cs] = src (M, Cs); backward: src += that slice of dst */
static void cpu_channel_slice(camo_backend *be, int backward, int M, int Cd, int off, int Cs,
                              float *dst, float *src) {
    (void)be;
    CAMO_ASSERT(off >= 0 && Cs >= 0 && off + Cs <= Cd);
#pragma omp parallel for if ((size_t)M * Cs >= CPU_EW_PAR_MIN) num_threads(cpu_threads(be))
    for (int m = 0; m < M; m++) {
        float *d = dst + (size_t)m * Cd + off, *s = src + (size_t)m * Cs;
        if (backward)
            for (int c = 0; c < Cs; c++) s[c] += d[c];
        else
            memcpy(d, s, (size_t)Cs * sizeof(float));
    }
}

/* ---- softmax over channels ---- */

/* y (M, C) = softmax of each row of x (M, C); the row max is subtracted so exp never
 * overflows */
static void cpu_softmax_forward(camo_backend *be, int M, int C, float *y, const float *x) {
    (void)be;
#pragma omp parallel for if ((size_t)M * C >= CPU_EW_PAR_MIN) num_threads(cpu_threads(be))
    for (int m = 0; m < M; m++) {
        const float *xr = x + (size_t)m * C;
        float *yr = y + (size_t)m * C;
        float mx = -INFINITY;
        for (int c = 0; c < C; c++) mx = fmaxf(mx, xr[c]);
        double sum = 0;
        for (int c = 0; c < C; c++) {
            yr[c] = expf(xr[c] - mx);
            sum += yr[c];
        }
        float inv = (float)(1.0 / sum);
        for (int c = 0; c < C; c++) yr[c] *= inv;
    }
}

/* dx (M, C) += y * (dy - sum_c dy * y), the softmax Jacobian-vector product */
static void cpu_softmax_backward(camo_backend *be, int M, int C, float *dx, const float *dy,
                                 const float *y) {
    (void)be;
#pragma omp parallel for if ((size_t)M * C >= CPU_EW_PAR_MIN) num_threads(cpu_threads(be))
    for (int m = 0; m < M; m++) {
        const float *dyr = dy + (size_t)m * C, *yr = y + (size_t)m * C;
        float *dxr = dx + (size_t)m * C;
        double dot = 0;
        for (int c = 0; c < C; c++) dot += (double)dyr[c] * yr[c];
        for (int c = 0; c < C; c++) dxr[c] += yr[c] * (dyr[c] - (float)dot);
    }
}

void cpu_register_elementwise(camo_backend *be) {
    be->act_forward = cpu_act_forward;
    be->act_backward = cpu_act_backward;
    be->add = cpu_add;
    be->axpy = cpu_axpy;
    be->scale = cpu_scale;
    be->mul_forward = cpu_mul_forward;
    be->mul_backward = cpu_mul_backward;
    be->channel_slice = cpu_channel_slice;
    be->softmax_forward = cpu_softmax_forward;
    be->softmax_backward = cpu_softmax_backward;
}
