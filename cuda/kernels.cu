/* kernels.cu: the CUDA backend's own kernels for normalisation (batch norm split for sync-BN,
 * layer norm), elementwise ops (activations, add/axpy/scale, broadcast multiply, concat
 * slices, channel softmax), pooling, adaptive average pooling and bilinear resize. Each
 * mirrors its CPU twin in src/cpu_*.c formula for formula (same float expressions, sums in
 * double), so parity holds to 1e-4. Per-channel sums use the deterministic cu_colsum; row
 * ops use one warp per row; gathers replace scatters where the inverse map is cheap. */
#include "cuda_common.cuh"

#include <math.h>

#define LAUNCH(be, n) <<<cu_blocks(n), CU_THREADS, 0, cu_stream(be)>>>
#define WARPS_PER_BLOCK (CU_THREADS / 32)
#define LAUNCH_ROWS(be, M) <<<cu_blocks((size_t)(M) * 32), CU_THREADS, 0, cu_stream(be)>>>
/* Rows handled by this warp: m = global warp index, grid-stride. */
#define WARP_ROW_LOOP(m, M)                                                          \
    for (int m = (int)((blockIdx.x * (size_t)blockDim.x + threadIdx.x) / 32); m < (M); \
         m += (int)((size_t)gridDim.x * blockDim.x / 32))

__device__ static double warp_sum(double v) {
    for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ static float warp_max(float v) {
    for (int o = 16; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* ---- batch norm ---- */

static void cu_bn_stats(camo_backend *be, int M, int C, float *stats, const float *x) {
    cu_colsum<2>(
        be, M, C,
        [=] __device__(int m, int c, double *acc) {
            float v = x[(size_t)m * C + c];
            acc[0] += v;
            acc[1] += (double)v * v;
        },
        [=] __device__(int c, const double *s) {
            stats[c] = (float)s[0];
            stats[C + c] = (float)s[1];
        });
}

__global__ static void bn_finalize_k(int C, const float *stats, double count, float eps,
                                     float momentum, float *mean, float *invstd, float *rm,
                                     float *rv) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    double mu = stats[c] / count, var = stats[C + c] / count - mu * mu;
    if (var < 0) var = 0;
    mean[c] = (float)mu;
    invstd[c] = (float)(1.0 / sqrt(var + eps));
    if (rm) {
        double unbiased = count > 1 ? var * count / (count - 1) : var;
        rm[c] = (float)((1.0 - momentum) * rm[c] + momentum * mu);
        rv[c] = (float)((1.0 - momentum) * rv[c] + momentum * unbiased);
    }
}

static void cu_bn_finalize(camo_backend *be, int C, const float *stats, double count,
                           float eps, float momentum, float *mean, float *invstd,
                           float *running_mean, float *running_var) {
    bn_finalize_k LAUNCH(be, C)(C, stats, count, eps, momentum, mean, invstd, running_mean,
                                running_var);
    CU_LAUNCHED(be);
}

__global__ static void bn_eval_k(int C, const float *rm, const float *rv, float eps,
                                 float *mean, float *invstd) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    mean[c] = rm[c];
    invstd[c] = (float)(1.0 / sqrt((double)rv[c] + eps));
}

static void cu_bn_eval_params(camo_backend *be, int C, const float *running_mean,
                              const float *running_var, float eps, float *mean,
                              float *invstd) {
    bn_eval_k LAUNCH(be, C)(C, running_mean, running_var, eps, mean, invstd);
    CU_LAUNCHED(be);
}

__global__ static void bn_apply_k(size_t n, int C, float *y, const float *x, const float *mean,
                                  const float *invstd, const float *gamma, const float *beta) {
    CU_GRID_LOOP(i, n) {
        int c = (int)(i % C);
        float scale = invstd[c] * (gamma ? gamma[c] : 1.0f), shift = beta ? beta[c] : 0.0f;
        y[i] = (x[i] - mean[c]) * scale + shift;
    }
}

static void cu_bn_apply(camo_backend *be, int M, int C, float *y, const float *x,
                        const float *mean, const float *invstd, const float *gamma,
                        const float *beta) {
    size_t n = (size_t)M * C;
    bn_apply_k LAUNCH(be, n)(n, C, y, x, mean, invstd, gamma, beta);
    CU_LAUNCHED(be);
}

static void cu_bn_backward_reduce(camo_backend *be, int M, int C, float *sums, const float *dy,
                                  const float *x, const float *mean, const float *invstd) {
    cu_colsum<2>(
        be, M, C,
        [=] __device__(int m, int c, double *acc) {
            size_t i = (size_t)m * C + c;
            acc[0] += dy[i];
            acc[1] += (double)dy[i] * (x[i] - mean[c]);
        },
        [=] __device__(int c, const double *s) {
            sums[c] = (float)s[0];
            sums[C + c] = (float)(s[1] * invstd[c]);
        });
}

/* coef (3C) = [gamma*invstd, sum_dy/count, invstd*sum_dyxhat/count] as the CPU forms them */
__global__ static void bn_bwd_coef_k(int C, float *coef, const float *invstd,
                                     const float *gamma, const float *sums, double count) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    coef[c] = (gamma ? gamma[c] : 1.0f) * invstd[c];
    coef[C + c] = (float)(sums[c] / count);
    coef[2 * C + c] = (float)(invstd[c] * (sums[C + c] / count));
}

__global__ static void bn_bwd_data_k(size_t n, int C, float *dx, const float *dy,
                                     const float *x, const float *mean, const float *coef) {
    CU_GRID_LOOP(i, n) {
        int c = (int)(i % C);
        dx[i] += coef[c] * (dy[i] - coef[C + c] - (x[i] - mean[c]) * coef[2 * C + c]);
    }
}

static void cu_bn_backward_data(camo_backend *be, int M, int C, float *dx, const float *dy,
                                const float *x, const float *mean, const float *invstd,
                                const float *gamma, const float *sums, double count) {
    float *coef = (float *)cu_workspace(be, 3 * (size_t)C * sizeof(float));
    if (!coef) return;
    size_t n = (size_t)M * C;
    bn_bwd_coef_k LAUNCH(be, C)(C, coef, invstd, gamma, sums, count);
    bn_bwd_data_k LAUNCH(be, n)(n, C, dx, dy, x, mean, coef);
    CU_LAUNCHED(be);
}

__global__ static void bn_bwd_frozen_k(size_t n, int C, float *dx, const float *dy,
                                       const float *invstd, const float *gamma) {
    CU_GRID_LOOP(i, n) {
        int c = (int)(i % C);
        dx[i] += dy[i] * ((gamma ? gamma[c] : 1.0f) * invstd[c]);
    }
}

static void cu_bn_backward_data_frozen(camo_backend *be, int M, int C, float *dx,
                                       const float *dy, const float *invstd,
                                       const float *gamma) {
    size_t n = (size_t)M * C;
    bn_bwd_frozen_k LAUNCH(be, n)(n, C, dx, dy, invstd, gamma);
    CU_LAUNCHED(be);
}

/* ---- layer norm: one warp per row ---- */

__global__ static void ln_fwd_k(int M, int C, float *y, float *mean, float *rstd,
                                const float *x, const float *gamma, const float *beta,
                                float eps) {
    int lane = threadIdx.x % 32;
    WARP_ROW_LOOP(m, M) {
        const float *xr = x + (size_t)m * C;
        float *yr = y + (size_t)m * C;
        double s = 0, v = 0;
        for (int c = lane; c < C; c += 32) s += xr[c];
        float mu = (float)(warp_sum(s) / C);
        for (int c = lane; c < C; c += 32) v += (double)(xr[c] - mu) * (xr[c] - mu);
        float rs = (float)(1.0 / sqrt(warp_sum(v) / C + eps));
        for (int c = lane; c < C; c += 32)
            yr[c] = (xr[c] - mu) * rs * (gamma ? gamma[c] : 1.0f) + (beta ? beta[c] : 0.0f);
        if (lane == 0 && mean) mean[m] = mu;
        if (lane == 0 && rstd) rstd[m] = rs;
    }
}

static void cu_layernorm_forward(camo_backend *be, int M, int C, float *y, float *mean,
                                 float *rstd, const float *x, const float *gamma,
                                 const float *beta, float eps) {
    ln_fwd_k LAUNCH_ROWS(be, M)(M, C, y, mean, rstd, x, gamma, beta, eps);
    CU_LAUNCHED(be);
}

__global__ static void ln_bwd_k(int M, int C, float *dx, const float *dy, const float *x,
                                const float *mean, const float *rstd, const float *gamma) {
    int lane = threadIdx.x % 32;
    WARP_ROW_LOOP(m, M) {
        const float *xr = x + (size_t)m * C, *g = dy + (size_t)m * C;
        float mu = mean[m], rs = rstd[m];
        double a = 0, b = 0;
        for (int c = lane; c < C; c += 32) {
            float xh = (xr[c] - mu) * rs, dn = g[c] * (gamma ? gamma[c] : 1.0f);
            a += dn;
            b += dn * xh;
        }
        float ma = (float)(warp_sum(a) / C), mb = (float)(warp_sum(b) / C);
        float *d = dx + (size_t)m * C;
        for (int c = lane; c < C; c += 32) {
            float xh = (xr[c] - mu) * rs, dn = g[c] * (gamma ? gamma[c] : 1.0f);
            d[c] += rs * (dn - ma - xh * mb);
        }
    }
}

static void cu_layernorm_backward(camo_backend *be, int M, int C, float *dx, float *dgamma,
                                  float *dbeta, const float *dy, const float *x,
                                  const float *mean, const float *rstd, const float *gamma) {
    if (dx) {
        ln_bwd_k LAUNCH_ROWS(be, M)(M, C, dx, dy, x, mean, rstd, gamma);
        CU_LAUNCHED(be);
    }
    if (!dgamma && !dbeta) return;
    cu_colsum<2>(
        be, M, C,
        [=] __device__(int m, int c, double *acc) {
            size_t i = (size_t)m * C + c;
            float xh = (x[i] - mean[m]) * rstd[m];
            acc[0] += dy[i] * xh;
            acc[1] += dy[i];
        },
        [=] __device__(int c, const double *s) {
            if (dgamma) dgamma[c] += (float)s[0];
            if (dbeta) dbeta[c] += (float)s[1];
        });
}

/* ---- activations ---- */

__device__ static float sigmoid_d(float x) { return 1.0f / (1.0f + expf(-x)); }
__device__ static float normal_cdf_d(float x) { return 0.5f * erfcf(-x * (float)M_SQRT1_2); }

__device__ static float act_d(camo_act act, float alpha, float x) {
    switch (act) {
    case CAMO_ACT_IDENTITY: return x;
    case CAMO_ACT_RELU: return x > 0 ? x : 0.0f;
    case CAMO_ACT_LEAKY_RELU: return x > 0 ? x : alpha * x;
    case CAMO_ACT_SILU: return x * sigmoid_d(x);
    case CAMO_ACT_GELU: return x * normal_cdf_d(x);
    case CAMO_ACT_SIGMOID: return sigmoid_d(x);
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
        float s = sigmoid_d(x);
        return s * (1.0f + x * (1.0f - s));
    }
    case CAMO_ACT_GELU: {
        float phi = expf(-0.5f * x * x) * 0.39894228040143267794f;
        return normal_cdf_d(x) + x * phi;
    }
    case CAMO_ACT_SIGMOID: {
        float s = y ? *y : sigmoid_d(x);
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
    act_fwd_k LAUNCH(be, n)(act, alpha, n, y, x);
    CU_LAUNCHED(be);
}

static void cu_act_backward(camo_backend *be, camo_act act, float alpha, size_t n, float *dx,
                            const float *dy, const float *x, const float *y) {
    if (!n) return;
    act_bwd_k LAUNCH(be, n)(act, alpha, n, dx, dy, x, y);
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
    add_k LAUNCH(be, n)(n, y, a, b);
    CU_LAUNCHED(be);
}
static void cu_axpy(camo_backend *be, size_t n, float alpha, const float *x, float *y) {
    if (!n) return;
    axpy_k LAUNCH(be, n)(n, alpha, x, y);
    CU_LAUNCHED(be);
}
static void cu_scale(camo_backend *be, size_t n, float alpha, float *x) {
    if (!n) return;
    scale_k LAUNCH(be, n)(n, alpha, x);
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
    WARP_ROW_LOOP(m, M) {
        double s = 0;
        const float *dyr = dy + (size_t)m * C, *ar = a + (size_t)m * C;
        for (int c = lane; c < C; c += 32) s += (double)dyr[c] * ar[c];
        s = warp_sum(s);
        if (lane == 0) db[m] += (float)s;
    }
}

static void cu_mul_forward(camo_backend *be, camo_bcast mode, int N, int HW, int C, float *y,
                           const float *a, const float *b) {
    size_t n = (size_t)N * HW * C;
    if (!n) return;
    mul_fwd_k LAUNCH(be, n)(mode, n, HW, C, y, a, b);
    CU_LAUNCHED(be);
}

static void cu_mul_backward(camo_backend *be, camo_bcast mode, int N, int HW, int C,
                            float *da, float *db, const float *dy, const float *a,
                            const float *b) {
    size_t n = (size_t)N * HW * C;
    if (!n) return;
    if (da) {
        mul_bwd_da_k LAUNCH(be, n)(mode, n, HW, C, da, dy, b);
        CU_LAUNCHED(be);
    }
    if (!db) return;
    if (mode == CAMO_BCAST_NONE) {
        mul_bwd_da_k LAUNCH(be, n)(mode, n, HW, C, db, dy, a); /* same formula, a for b */
        CU_LAUNCHED(be);
    } else if (mode == CAMO_BCAST_CHANNEL) {
        mul_bwd_db_row_k LAUNCH_ROWS(be, N * HW)(N * HW, C, db, dy, a);
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
    slice_k LAUNCH(be, n)(backward, n, Cd, off, Cs, dst, src);
    CU_LAUNCHED(be);
}

/* ---- softmax over channels: one warp per row ---- */

__global__ static void softmax_fwd_k(int M, int C, float *y, const float *x) {
    int lane = threadIdx.x % 32;
    WARP_ROW_LOOP(m, M) {
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
        float inv = (float)(1.0 / warp_sum(s));
        for (int c = lane; c < C; c += 32) yr[c] *= inv;
    }
}

__global__ static void softmax_bwd_k(int M, int C, float *dx, const float *dy, const float *y) {
    int lane = threadIdx.x % 32;
    WARP_ROW_LOOP(m, M) {
        const float *dyr = dy + (size_t)m * C, *yr = y + (size_t)m * C;
        double dot = 0;
        for (int c = lane; c < C; c += 32) dot += (double)dyr[c] * yr[c];
        float d = (float)warp_sum(dot);
        for (int c = lane; c < C; c += 32) dx[(size_t)m * C + c] += yr[c] * (dyr[c] - d);
    }
}

static void cu_softmax_forward(camo_backend *be, int M, int C, float *y, const float *x) {
    if (M <= 0) return;
    softmax_fwd_k LAUNCH_ROWS(be, M)(M, C, y, x);
    CU_LAUNCHED(be);
}

static void cu_softmax_backward(camo_backend *be, int M, int C, float *dx, const float *dy,
                                const float *y) {
    if (M <= 0) return;
    softmax_bwd_k LAUNCH_ROWS(be, M)(M, C, dx, dy, y);
    CU_LAUNCHED(be);
}

/* ---- max / average pooling (PyTorch windows, as cpu_pool.c) ---- */

/* window of output p clipped to [0, H): [*lo, *hi); returns the padded-window size */
__device__ static int pool_win(int p, int stride, int pad, int k, int H, int *lo, int *hi) {
    int s = p * stride - pad, e = min(s + k, H + pad);
    *lo = max(s, 0);
    *hi = min(e, H);
    return e - s;
}

__global__ static void pool_fwd_k(camo_pool_desc d, float *y, int *argmax, const float *x) {
    size_t n_out = (size_t)d.N * d.P * d.Q * d.C;
    CU_GRID_LOOP(i, n_out) {
        int c = (int)(i % d.C), q = (int)(i / d.C % d.Q), p = (int)(i / d.C / d.Q % d.P);
        int n = (int)(i / ((size_t)d.C * d.Q * d.P)), h0, h1, w0, w1;
        int ph = pool_win(p, d.stride_h, d.pad_h, d.R, d.H, &h0, &h1);
        int pw = pool_win(q, d.stride_w, d.pad_w, d.S, d.W, &w0, &w1);
        const float *xn = x + (size_t)n * d.H * d.W * d.C + c;
        if (d.type == CAMO_POOL_MAX) {
            float m = -INFINITY;
            int am = h0 * d.W + w0;
            for (int h = h0; h < h1; h++)
                for (int w = w0; w < w1; w++) {
                    float v = xn[((size_t)h * d.W + w) * d.C];
                    if (v > m || isnan(v)) { m = v; am = h * d.W + w; }
                }
            y[i] = m;
            argmax[i] = am;
        } else {
            int count = d.count_include_pad ? ph * pw : (h1 - h0) * (w1 - w0);
            float s = 0;
            for (int h = h0; h < h1; h++)
                for (int w = w0; w < w1; w++) s += xn[((size_t)h * d.W + w) * d.C];
            y[i] = s / (float)count;
        }
    }
}

/* outputs along one axis whose window may contain input index h: [*lo, *hi] */
__device__ static void pool_range(int h, int stride, int pad, int k, int P, int *lo, int *hi) {
    int t = h + pad - k + 1;
    *lo = t <= 0 ? 0 : (t + stride - 1) / stride;
    *hi = min(P - 1, (h + pad) / stride);
}

/* gather: each input element sums the gradients of the windows that used it */
__global__ static void pool_bwd_k(camo_pool_desc d, float *dx, const float *dy,
                                  const int *argmax) {
    size_t n_in = (size_t)d.N * d.H * d.W * d.C;
    CU_GRID_LOOP(i, n_in) {
        int c = (int)(i % d.C), w = (int)(i / d.C % d.W), h = (int)(i / d.C / d.W % d.H);
        int n = (int)(i / ((size_t)d.C * d.W * d.H)), plo, phi, qlo, qhi;
        pool_range(h, d.stride_h, d.pad_h, d.R, d.P, &plo, &phi);
        pool_range(w, d.stride_w, d.pad_w, d.S, d.Q, &qlo, &qhi);
        float acc = 0;
        for (int p = plo; p <= phi; p++) {
            int h0, h1, w0, w1;
            int ph = pool_win(p, d.stride_h, d.pad_h, d.R, d.H, &h0, &h1);
            if (h < h0 || h >= h1) continue;
            for (int q = qlo; q <= qhi; q++) {
                int pw = pool_win(q, d.stride_w, d.pad_w, d.S, d.W, &w0, &w1);
                if (w < w0 || w >= w1) continue;
                size_t o = (((size_t)n * d.P + p) * d.Q + q) * d.C + c;
                if (d.type == CAMO_POOL_MAX) {
                    if (argmax[o] == h * d.W + w) acc += dy[o];
                } else {
                    int count = d.count_include_pad ? ph * pw : (h1 - h0) * (w1 - w0);
                    acc += dy[o] / (float)count;
                }
            }
        }
        dx[i] += acc;
    }
}

static void cu_pool_forward(camo_backend *be, const camo_pool_desc *d, float *y, int *argmax,
                            const float *x) {
    size_t n = (size_t)d->N * d->P * d->Q * d->C;
    if (!n) return;
    pool_fwd_k LAUNCH(be, n)(*d, y, argmax, x);
    CU_LAUNCHED(be);
}

static void cu_pool_backward(camo_backend *be, const camo_pool_desc *d, float *dx,
                             const float *dy, const int *argmax) {
    size_t n = (size_t)d->N * d->H * d->W * d->C;
    if (!n) return;
    pool_bwd_k LAUNCH(be, n)(*d, dx, dy, argmax);
    CU_LAUNCHED(be);
}

/* ---- adaptive average pooling: bin i of P over H is [floor(iH/P), ceil((i+1)H/P)) ---- */

__device__ static int bin_start(int i, int H, int P) { return (int)((long long)i * H / P); }
__device__ static int bin_end(int i, int H, int P) {
    return (int)(((long long)(i + 1) * H + P - 1) / P);
}

__global__ static void adaptive_fwd_k(int N, int H, int W, int C, int P, int Q, float *y,
                                      const float *x) {
    size_t n_out = (size_t)N * P * Q * C;
    CU_GRID_LOOP(i, n_out) {
        int c = (int)(i % C), q = (int)(i / C % Q), p = (int)(i / C / Q % P);
        int n = (int)(i / ((size_t)C * Q * P));
        int h0 = bin_start(p, H, P), h1 = bin_end(p, H, P);
        int w0 = bin_start(q, W, Q), w1 = bin_end(q, W, Q);
        float s = 0;
        for (int h = h0; h < h1; h++)
            for (int w = w0; w < w1; w++) s += x[(((size_t)n * H + h) * W + w) * C + c];
        y[i] = s * (1.0f / (float)((h1 - h0) * (w1 - w0)));
    }
}

__global__ static void adaptive_bwd_k(int N, int H, int W, int C, int P, int Q, float *dx,
                                      const float *dy) {
    size_t n_in = (size_t)N * H * W * C;
    CU_GRID_LOOP(i, n_in) {
        int c = (int)(i % C), w = (int)(i / C % W), h = (int)(i / C / W % H);
        int n = (int)(i / ((size_t)C * W * H));
        int plo = max(0, (int)((long long)h * P / H) - 1);
        int phi = min(P - 1, (int)((long long)(h + 1) * P / H));
        int qlo = max(0, (int)((long long)w * Q / W) - 1);
        int qhi = min(Q - 1, (int)((long long)(w + 1) * Q / W));
        float acc = 0;
        for (int p = plo; p <= phi; p++) {
            int h0 = bin_start(p, H, P), h1 = bin_end(p, H, P);
            if (h < h0 || h >= h1) continue;
            for (int q = qlo; q <= qhi; q++) {
                int w0 = bin_start(q, W, Q), w1 = bin_end(q, W, Q);
                if (w < w0 || w >= w1) continue;
                acc += dy[(((size_t)n * P + p) * Q + q) * C + c] *
                       (1.0f / (float)((h1 - h0) * (w1 - w0)));
            }
        }
        dx[i] += acc;
    }
}

static void cu_adaptive_avg_forward(camo_backend *be, int N, int H, int W, int C, int P, int Q,
                                    float *y, const float *x) {
    size_t n = (size_t)N * P * Q * C;
    if (!n) return;
    adaptive_fwd_k LAUNCH(be, n)(N, H, W, C, P, Q, y, x);
    CU_LAUNCHED(be);
}

static void cu_adaptive_avg_backward(camo_backend *be, int N, int H, int W, int C, int P,
                                     int Q, float *dx, const float *dy) {
    size_t n = (size_t)N * H * W * C;
    if (!n) return;
    adaptive_bwd_k LAUNCH(be, n)(N, H, W, C, P, Q, dx, dy);
    CU_LAUNCHED(be);
}

/* ---- bilinear resize: source taps with the CPU's exact float arithmetic (no FMA
 * contraction, hence the _rn intrinsics), so both pick the same pixels ---- */

typedef struct { int i0, i1; float l0, l1; } lin_tap;

__device__ static lin_tap linear_tap(int p, int H, int P, int ac, float scale_factor) {
    float scale;
    if (ac) scale = P > 1 ? __fdiv_rn((float)(H - 1), (float)(P - 1)) : 0.0f;
    else scale = scale_factor > 0 ? (float)(1.0 / (double)scale_factor)
                                  : __fdiv_rn((float)H, (float)P);
    float src = ac ? __fmul_rn(scale, (float)p)
                   : __fsub_rn(__fmul_rn(scale, __fadd_rn((float)p, 0.5f)), 0.5f);
    if (src < 0) src = 0;
    int i0 = min((int)floorf(src), H - 1);
    float l1 = fminf(fmaxf(__fsub_rn(src, (float)i0), 0.0f), 1.0f);
    lin_tap t = {i0, i0 + (i0 < H - 1), 1.0f - l1, l1};
    return t;
}

__global__ static void resize_fwd_k(int N, int H, int W, int C, int P, int Q, int ac, float sh,
                                    float sw, float *y, const float *x) {
    size_t n_out = (size_t)N * P * Q * C;
    CU_GRID_LOOP(i, n_out) {
        int c = (int)(i % C), q = (int)(i / C % Q), p = (int)(i / C / Q % P);
        int n = (int)(i / ((size_t)C * Q * P));
        lin_tap a = linear_tap(p, H, P, ac, sh), b = linear_tap(q, W, Q, ac, sw);
        const float *x0 = x + ((size_t)n * H + a.i0) * W * C + c;
        const float *x1 = x + ((size_t)n * H + a.i1) * W * C + c;
        y[i] = a.l0 * (b.l0 * x0[(size_t)b.i0 * C] + b.l1 * x0[(size_t)b.i1 * C]) +
               a.l1 * (b.l0 * x1[(size_t)b.i0 * C] + b.l1 * x1[(size_t)b.i1 * C]);
    }
}

/* scatter with atomics: the inverse of the tap map is irregular (order of the four adds
 * per element may vary between runs, within fp32 rounding). The default: one thread per
 * output gradient, read once. train.deterministic uses resize_bwd_gather_k instead. */
__global__ static void resize_bwd_k(int N, int H, int W, int C, int P, int Q, int ac, float sh,
                                    float sw, float *dx, const float *dy) {
    size_t n_out = (size_t)N * P * Q * C;
    CU_GRID_LOOP(i, n_out) {
        int c = (int)(i % C), q = (int)(i / C % Q), p = (int)(i / C / Q % P);
        int n = (int)(i / ((size_t)C * Q * P));
        lin_tap a = linear_tap(p, H, P, ac, sh), e = linear_tap(q, W, Q, ac, sw);
        float g = dy[i];
        float *d0 = dx + ((size_t)n * H + a.i0) * W * C + c;
        float *d1 = dx + ((size_t)n * H + a.i1) * W * C + c;
        atomicAdd(d0 + (size_t)e.i0 * C, a.l0 * e.l0 * g);
        atomicAdd(d0 + (size_t)e.i1 * C, a.l0 * e.l1 * g);
        atomicAdd(d1 + (size_t)e.i0 * C, a.l1 * e.l0 * g);
        atomicAdd(d1 + (size_t)e.i1 * C, a.l1 * e.l1 * g);
    }
}

/* The first p in [0, P) whose tap i0 is >= v (P if none). i0 never decreases as p grows:
 * every step of linear_tap is monotone (a product by scale >= 0, then -0.5, in round-to-
 * nearest; the clamp at 0; floor; the min with H-1), so the binary search is exact. */
__device__ static int first_tap_from(int v, int H, int P, int ac, float scale_factor) {
    int lo = 0, hi = P;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        if (linear_tap(mid, H, P, ac, scale_factor).i0 >= v) hi = mid;
        else lo = mid + 1;
    }
    return lo;
}

/* acc + (la * lb) * g, rounded step by step (no FMA), as the CPU computes it */
__device__ static float tap_add(float acc, float la, float lb, float g) {
    return __fadd_rn(acc, __fmul_rn(__fmul_rn(la, lb), g));
}

/* Deterministic backward (train.deterministic): a gather. One thread owns one input
 * gradient dx[n][h][w][c] and adds to it every contribution of the output gradients whose
 * taps touch (h, w), one at a time, in a fixed order, so no atomics and the same bits every
 * run. The taps are recomputed with linear_tap, the forward's own formula. Candidate output
 * rows: a tap pair (i0, i1 = i0 or i0 + 1) touches row h only when i0 is h - 1 or h, and i0
 * is monotone in p, so the candidates are exactly p in [first_tap_from(h - 1),
 * first_tap_from(h + 1)); likewise the columns. Membership is then tested tap by tap
 * (at the last row or column both taps are the same pixel and both count, as in the
 * scatter). The order, p then q then taps (i0,i0), (i0,i1), (i1,i0), (i1,i1), and the
 * unfused products (a.l * e.l) * g are those of the CPU's cpu_resize_backward, whose adds
 * reach each element in that same order.
 * Not the default: each output gradient is read by up to four threads and every thread
 * runs four binary searches, against one read and four mostly uncontended atomics in the
 * scatter; without a GPU to measure, the faster-looking scatter stays the default. */
__global__ static void resize_bwd_gather_k(int N, int H, int W, int C, int P, int Q, int ac,
                                           float sh, float sw, float *dx, const float *dy) {
    size_t n_in = (size_t)N * H * W * C;
    CU_GRID_LOOP(i, n_in) {
        int c = (int)(i % C), w = (int)(i / C % W), h = (int)(i / C / W % H);
        int n = (int)(i / ((size_t)C * W * H));
        int p0 = first_tap_from(h - 1, H, P, ac, sh), p1 = first_tap_from(h + 1, H, P, ac, sh);
        int q0 = first_tap_from(w - 1, W, Q, ac, sw), q1 = first_tap_from(w + 1, W, Q, ac, sw);
        float acc = dx[i];
        for (int p = p0; p < p1; p++) {
            lin_tap a = linear_tap(p, H, P, ac, sh);
            const float *g = dy + ((size_t)n * P + p) * Q * C + c;
            for (int q = q0; q < q1; q++) {
                lin_tap e = linear_tap(q, W, Q, ac, sw);
                float gv = g[(size_t)q * C];
                if (a.i0 == h && e.i0 == w) acc = tap_add(acc, a.l0, e.l0, gv);
                if (a.i0 == h && e.i1 == w) acc = tap_add(acc, a.l0, e.l1, gv);
                if (a.i1 == h && e.i0 == w) acc = tap_add(acc, a.l1, e.l0, gv);
                if (a.i1 == h && e.i1 == w) acc = tap_add(acc, a.l1, e.l1, gv);
            }
        }
        dx[i] = acc;
    }
}

static void cu_resize_forward(camo_backend *be, int N, int H, int W, int C, int P, int Q,
                              int align_corners, float scale_h, float scale_w, float *y,
                              const float *x) {
    size_t n = (size_t)N * P * Q * C;
    if (!n) return;
    resize_fwd_k LAUNCH(be, n)(N, H, W, C, P, Q, align_corners, scale_h, scale_w, y, x);
    CU_LAUNCHED(be);
}

static void cu_resize_backward(camo_backend *be, int N, int H, int W, int C, int P, int Q,
                               int align_corners, float scale_h, float scale_w, float *dx,
                               const float *dy) {
    size_t n = (size_t)N * P * Q * C, n_in = (size_t)N * H * W * C;
    if (!n || !n_in) return;
    if (cu_ctx(be)->deterministic)
        resize_bwd_gather_k LAUNCH(be, n_in)(N, H, W, C, P, Q, align_corners, scale_h, scale_w,
                                             dx, dy);
    else
        resize_bwd_k LAUNCH(be, n)(N, H, W, C, P, Q, align_corners, scale_h, scale_w, dx, dy);
    CU_LAUNCHED(be);
}

extern "C" void cuda_register_kernels(camo_backend *be) {
    be->bn_stats = cu_bn_stats;
    be->bn_finalize = cu_bn_finalize;
    be->bn_eval_params = cu_bn_eval_params;
    be->bn_apply = cu_bn_apply;
    be->bn_backward_reduce = cu_bn_backward_reduce;
    be->bn_backward_data = cu_bn_backward_data;
    be->bn_backward_data_frozen = cu_bn_backward_data_frozen;
    be->layernorm_forward = cu_layernorm_forward;
    be->layernorm_backward = cu_layernorm_backward;
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
    be->pool_forward = cu_pool_forward;
    be->pool_backward = cu_pool_backward;
    be->adaptive_avg_forward = cu_adaptive_avg_forward;
    be->adaptive_avg_backward = cu_adaptive_avg_backward;
    be->resize_forward = cu_resize_forward;
    be->resize_backward = cu_resize_backward;
}
