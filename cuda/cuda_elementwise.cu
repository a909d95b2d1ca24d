/* cuda_elementwise.cu: the CUDA twins of src/backend/cpu/cpu_elementwise.c: activations,
 * add / axpy / scale, broadcast multiply, concat slices and the channel softmax. Formulas are
 * the CPU's, float for float with sums in double (parity to 1e-4); row ops use one warp per
 * row, per-channel sums the deterministic cu_colsum. */
#include "cuda_common.cuh"

#include <math.h>

__device__ static float warp_max(float v) {
    for (int o = 16; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* ---- activations ---- */

__device__ static float normal_cdf_d(float x) { return 0.5f * erfcf(-x * (float)M_SQRT1_2); }

__device__ static float act_d(camo_act act, float alpha, float x) {
    switch (act) {
    case CAMO_ACT_IDENTITY: return x;
    case CAMO_ACT_RELU: return x > 0 ? x : 0.0f;
    case CAMO_ACT_LEAKY_RELU: return x > 0 ? x : alpha * x;
    case CAMO_ACT_SILU: return x * cu_sigmoid(x);
    case CAMO_ACT_GELU: return x * normal_cdf_d(x);
    case CAMO_ACT_SIGMOID: return cu_sigmoid(x);
    case CAMO_ACT_TANH: return tanhf(x);
    }
    return x;
}

__device__ static float act_grad_d(camo_act act, float alpha, float x, const float *y) {
    switch (act) {
    case CAMO_ACT_IDENTITY: return 1.0f;
    case CAMO_ACT_RELU: return x > 0 ? 1.0f : 0.0f;
    case CAMO_ACT_LEAKY_RELU: return x > 0 ? 1.0f : alpha;
    case CAMO_ACT_SILU: {
        float s = cu_sigmoid(x);
        return s * (1.0f + x * (1.0f - s));
    }
    case CAMO_ACT_GELU: {
        float phi = expf(-0.5f * x * x) * 0.39894228040143267794f;
        return normal_cdf_d(x) + x * phi;
    }
    case CAMO_ACT_SIGMOID: {
        float s = y ? *y : cu_sigmoid(x);
        return s * (1.0f - s);
    }
    case CAMO_ACT_TANH: {
        float t = y ? *y : tanhf(x);
        return 1.0f - t * t;
    }
    }
    return 1.0f;
}

__global__ static void act_fwd_k(camo_act act, float alpha, size_t n, float *y, const float *x) {
    CU_GRID_LOOP(i, n) y[i] = act_d(act, alpha, x[i]);
}

__global__ static void act_bwd_k(camo_act act, float alpha, size_t n, float *dx,
                                 const float *dy, const float *x, const float *y) {
    CU_GRID_LOOP(i, n) dx[i] += dy[i] * act_grad_d(act, alpha, x[i], y ? y + i : NULL);
}

static void cu_act_forward(camo_backend *be, camo_act act, float alpha, size_t n, float *y,
                           const float *x) {
    if (!n) return;
    if (act == CAMO_ACT_IDENTITY) {
        be->copy(be, y, x, n * sizeof(float));
        return;
    }
    act_fwd_k CU_LAUNCH(be, n)(act, alpha, n, y, x);
    CU_LAUNCHED(be);
}

static void cu_act_backward(camo_backend *be, camo_act act, float alpha, size_t n, float *dx,
                            const float *dy, const float *x, const float *y) {
    if (!n) return;
    act_bwd_k CU_LAUNCH(be, n)(act, alpha, n, dx, dy, x, y);
    CU_LAUNCHED(be);
}

/* ---- add, axpy, scale ---- */

__global__ static void add_k(size_t n, float *y, const float *a, const float *b) {
    CU_GRID_LOOP(i, n) y[i] = a[i] + b[i];
}
__global__ static void axpy_k(size_t n, float alpha, const float *x, float *y) {
    CU_GRID_LOOP(i, n) y[i] += alpha * x[i];
}
__global__ static void scale_k(size_t n, float alpha, float *x) {
    CU_GRID_LOOP(i, n) x[i] *= alpha;
}

static void cu_add(camo_backend *be, size_t n, float *y, const float *a, const float *b) {
    if (!n) return;
    add_k CU_LAUNCH(be, n)(n, y, a, b);
    CU_LAUNCHED(be);
}
static void cu_axpy(camo_backend *be, size_t n, float alpha, const float *x, float *y) {
    if (!n) return;
    axpy_k CU_LAUNCH(be, n)(n, alpha, x, y);
    CU_LAUNCHED(be);
}
static void cu_scale(camo_backend *be, size_t n, float alpha, float *x) {
    if (!n) return;
    scale_k CU_LAUNCH(be, n)(n, alpha, x);
    CU_LAUNCHED(be);
}

/* ---- broadcast multiply ---- */

/* the element of b that multiplies element i of a (N,HW,C) */
__device__ static size_t bcast_index(camo_bcast mode, size_t i, int HW, int C) {
    if (mode == CAMO_BCAST_NONE) return i;
    size_t m = i / C;
    return mode == CAMO_BCAST_CHANNEL ? m : (m / HW) * C + i % C;
}

__global__ static void mul_fwd_k(camo_bcast mode, size_t n, int HW, int C, float *y,
                                 const float *a, const float *b) {
    CU_GRID_LOOP(i, n) y[i] = a[i] * b[bcast_index(mode, i, HW, C)];
}

__global__ static void mul_bwd_da_k(camo_bcast mode, size_t n, int HW, int C, float *da,
                                    const float *dy, const float *b) {
    CU_GRID_LOOP(i, n) da[i] += dy[i] * b[bcast_index(mode, i, HW, C)];
}

/* CHANNEL mode: db (M) += sum over the row's C channels of dy * a */
__global__ static void mul_bwd_db_row_k(int M, int C, float *db, const float *dy,
                                        const float *a) {
    int lane = threadIdx.x % 32;
    CU_WARP_ROW_LOOP(m, M) {
        double s = 0;
        const float *dyr = dy + (size_t)m * C, *ar = a + (size_t)m * C;
        for (int c = lane; c < C; c += 32) s += (double)dyr[c] * ar[c];
        s = cu_warp_sum(s);
        if (lane == 0) db[m] += (float)s;
    }
}

static void cu_mul_forward(camo_backend *be, camo_bcast mode, int N, int HW, int C, float *y,
                           const float *a, const float *b) {
    size_t n = (size_t)N * HW * C;
    if (!n) return;
    mul_fwd_k CU_LAUNCH(be, n)(mode, n, HW, C, y, a, b);
    CU_LAUNCHED(be);
}

static void cu_mul_backward(camo_backend *be, camo_bcast mode, int N, int HW, int C,
                            float *da, float *db, const float *dy, const float *a,
                            const float *b) {
    size_t n = (size_t)N * HW * C;
    if (!n) return;
    if (da) {
        mul_bwd_da_k CU_LAUNCH(be, n)(mode, n, HW, C, da, dy, b);
        CU_LAUNCHED(be);
    }
    if (!db) return;
    if (mode == CAMO_BCAST_NONE) {
        mul_bwd_da_k CU_LAUNCH(be, n)(mode, n, HW, C, db, dy, a); /* same formula, a for b */
        CU_LAUNCHED(be);
    } else if (mode == CAMO_BCAST_CHANNEL) {
        mul_bwd_db_row_k CU_LAUNCH_ROWS(be, N * HW)(N * HW, C, db, dy, a);
        CU_LAUNCHED(be);
    } else { /* SPATIAL: db (N,1,C) += column sums of each image's (HW, C) */
        for (int img = 0; img < N; img++) {
            const float *dyn = dy + (size_t)img * HW * C, *an = a + (size_t)img * HW * C;
            float *dbn = db + (size_t)img * C;
            cu_colsum<1>(
                be, HW, C,
                [=] __device__(int m, int c, double *acc) {
                    acc[0] += (double)dyn[(size_t)m * C + c] * an[(size_t)m * C + c];
                },
                [=] __device__(int c, const double *s) { dbn[c] += (float)s[0]; });
        }
    }
}

/* ---- concat slices ---- */

__global__ static void slice_k(int backward, size_t n, int Cd, int off, int Cs, float *dst,
                               float *src) {
    CU_GRID_LOOP(i, n) {
        size_t m = i / Cs;
        int c = (int)(i % Cs);
        float *d = dst + m * Cd + off + c;
        if (backward) src[i] += *d;
        else *d = src[i];
    }
}

static void cu_channel_slice(camo_backend *be, int backward, int M, int Cd, int off, int Cs,
                             float *dst, float *src) {
    size_t n = (size_t)M * Cs;
    if (!n) return;
    slice_k CU_LAUNCH(be, n)(backward, n, Cd, off, Cs, dst, src);
    CU_LAUNCHED(be);
}

/* ---- softmax over channels: one warp per row ---- */

__global__ static void softmax_fwd_k(int M, int C, float *y, const float *x) {
    int lane = threadIdx.x % 32;
    CU_WARP_ROW_LOOP(m, M) {
        const float *xr = x + (size_t)m * C;
        float *yr = y + (size_t)m * C;
        float mx = -INFINITY;
        for (int c = lane; c < C; c += 32) mx = fmaxf(mx, xr[c]);
        mx = warp_max(mx);
        double s = 0;
        for (int c = lane; c < C; c += 32) {
            float e = expf(xr[c] - mx);
            yr[c] = e;
            s += e;
        }
        float inv = (float)(1.0 / cu_warp_sum(s));
        for (int c = lane; c < C; c += 32) yr[c] *= inv;
    }
}

__global__ static void softmax_bwd_k(int M, int C, float *dx, const float *dy, const float *y) {
    int lane = threadIdx.x % 32;
    CU_WARP_ROW_LOOP(m, M) {
        const float *dyr = dy + (size_t)m * C, *yr = y + (size_t)m * C;
        double dot = 0;
        for (int c = lane; c < C; c += 32) dot += (double)dyr[c] * yr[c];
        float d = (float)cu_warp_sum(dot);
        for (int c = lane; c < C; c += 32) dx[(size_t)m * C + c] += yr[c] * (dyr[c] - d);
    }
}

static void cu_softmax_forward(camo_backend *be, int M, int C, float *y, const float *x) {
    if (M <= 0) return;
    softmax_fwd_k CU_LAUNCH_ROWS(be, M)(M, C, y, x);
    CU_LAUNCHED(be);
}

static void cu_softmax_backward(camo_backend *be, int M, int C, float *dx, const float *dy,
                                const float *y) {
    if (M <= 0) return;
    softmax_bwd_k CU_LAUNCH_ROWS(be, M)(M, C, dx, dy, y);
    CU_LAUNCHED(be);
}

extern "C" void cuda_register_elementwise(camo_backend *be) {
    be->act_forward = cu_act_forward;
    be->act_backward = cu_act_backward;
    be->add = cu_add;
    be->axpy = cu_axpy;
    be->scale = cu_scale;
    be->mul_forward = cu_mul_forward;
    be->mul_backward = cu_mul_backward;
    be->channel_slice = cu_channel_slice;
    be->softmax_forward = cu_softmax_forward;
    be->softmax_backward = cu_softmax_backward;
}
