/* cuda_norm.cu: the CUDA twins of src/backend/cpu/cpu_norm.c: batch norm (statistics,
 * finalize and apply split for sync-BN, backward reduce and data) and layer norm. Formulas
 * are the CPU's, float for float with sums in double, so parity holds to 1e-4; per-channel
 * sums use the deterministic cu_colsum, layer norm one warp per row. */
#include "cuda_common.cuh"

#include <math.h>

/* ---- batch norm ---- */

/* the two passes of cpu_bn_stats: sum x, then sum (x - mean)^2 (exact difference in double) */
static void cu_bn_stats(camo_backend *be, int M, int C, float *stats, const float *x,
                        const float *mean) {
    if (!mean) {
        cu_colsum<1>(
            be, M, C, [=] __device__(int m, int c, double *acc) { acc[0] += x[(size_t)m * C + c]; },
            [=] __device__(int c, const double *s) { stats[c] = (float)s[0]; });
        return;
    }
    cu_colsum<1>(
        be, M, C,
        [=] __device__(int m, int c, double *acc) {
            double d = (double)x[(size_t)m * C + c] - mean[c];
            acc[0] += d * d;
        },
        [=] __device__(int c, const double *s) { stats[C + c] = (float)s[0]; });
}

__global__ static void bn_mean_k(int C, const float *stats, double count, float *mean) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c < C) mean[c] = (float)(stats[c] / count);
}

static void cu_bn_mean(camo_backend *be, int C, const float *stats, double count,
                       float *mean) {
    bn_mean_k CU_LAUNCH(be, C)(C, stats, count, mean);
    CU_LAUNCHED(be);
}

__global__ static void bn_finalize_k(int C, const float *stats, double count, float eps,
                                     float momentum, const float *mean, float *invstd,
                                     float *rm, float *rv) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    double var = stats[C + c] / count;
    invstd[c] = (float)(1.0 / sqrt(var + eps));
    if (rm) {
        double unbiased = count > 1 ? var * count / (count - 1) : var;
        rm[c] = (float)((1.0 - momentum) * rm[c] + momentum * mean[c]);
        rv[c] = (float)((1.0 - momentum) * rv[c] + momentum * unbiased);
    }
}

static void cu_bn_finalize(camo_backend *be, int C, const float *stats, double count,
                           float eps, float momentum, const float *mean, float *invstd,
                           float *running_mean, float *running_var) {
    bn_finalize_k CU_LAUNCH(be, C)(C, stats, count, eps, momentum, mean, invstd, running_mean,
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
    bn_eval_k CU_LAUNCH(be, C)(C, running_mean, running_var, eps, mean, invstd);
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
    bn_apply_k CU_LAUNCH(be, n)(n, C, y, x, mean, invstd, gamma, beta);
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
    bn_bwd_coef_k CU_LAUNCH(be, C)(C, coef, invstd, gamma, sums, count);
    bn_bwd_data_k CU_LAUNCH(be, n)(n, C, dx, dy, x, mean, coef);
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
    bn_bwd_frozen_k CU_LAUNCH(be, n)(n, C, dx, dy, invstd, gamma);
    CU_LAUNCHED(be);
}

/* ---- layer norm: one warp per row ---- */

__global__ static void ln_fwd_k(int M, int C, float *y, float *mean, float *rstd,
                                const float *x, const float *gamma, const float *beta,
                                float eps) {
    int lane = threadIdx.x % 32;
    CU_WARP_ROW_LOOP(m, M) {
        const float *xr = x + (size_t)m * C;
        float *yr = y + (size_t)m * C;
        double s = 0, v = 0;
        for (int c = lane; c < C; c += 32) s += xr[c];
        float mu = (float)(cu_warp_sum(s) / C);
        for (int c = lane; c < C; c += 32) v += (double)(xr[c] - mu) * (xr[c] - mu);
        float rs = (float)(1.0 / sqrt(cu_warp_sum(v) / C + eps));
        for (int c = lane; c < C; c += 32)
            yr[c] = (xr[c] - mu) * rs * (gamma ? gamma[c] : 1.0f) + (beta ? beta[c] : 0.0f);
        if (lane == 0 && mean) mean[m] = mu;
        if (lane == 0 && rstd) rstd[m] = rs;
    }
}

static void cu_layernorm_forward(camo_backend *be, int M, int C, float *y, float *mean,
                                 float *rstd, const float *x, const float *gamma,
                                 const float *beta, float eps) {
    ln_fwd_k CU_LAUNCH_ROWS(be, M)(M, C, y, mean, rstd, x, gamma, beta, eps);
    CU_LAUNCHED(be);
}

__global__ static void ln_bwd_k(int M, int C, float *dx, const float *dy, const float *x,
                                const float *mean, const float *rstd, const float *gamma) {
    int lane = threadIdx.x % 32;
    CU_WARP_ROW_LOOP(m, M) {
        const float *xr = x + (size_t)m * C, *g = dy + (size_t)m * C;
        float mu = mean[m], rs = rstd[m];
        double a = 0, b = 0;
        for (int c = lane; c < C; c += 32) {
            float xh = (xr[c] - mu) * rs, dn = g[c] * (gamma ? gamma[c] : 1.0f);
            a += dn;
            b += dn * xh;
        }
        float ma = (float)(cu_warp_sum(a) / C), mb = (float)(cu_warp_sum(b) / C);
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
        ln_bwd_k CU_LAUNCH_ROWS(be, M)(M, C, dx, dy, x, mean, rstd, gamma);
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

extern "C" void cuda_register_norm(camo_backend *be) {
    be->bn_stats = cu_bn_stats;
    be->bn_mean = cu_bn_mean;
    be->bn_finalize = cu_bn_finalize;
    be->bn_eval_params = cu_bn_eval_params;
    be->bn_apply = cu_bn_apply;
    be->bn_backward_reduce = cu_bn_backward_reduce;
    be->bn_backward_data = cu_bn_backward_data;
    be->bn_backward_data_frozen = cu_bn_backward_data_frozen;
    be->layernorm_forward = cu_layernorm_forward;
    be->layernorm_backward = cu_layernorm_backward;
}
