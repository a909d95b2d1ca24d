/* cpu_norm.c: CPU batch norm (split into stats / finalize / apply and reduce / data so that
 * sync-BN can all-reduce the per-channel sums in between) and layer norm over channels.
 * PyTorch semantics: biased variance normalises, the unbiased one feeds running_var.
 * Per-channel sums over rows are taken in double, over a fixed number of row chunks added in
 * chunk order, so results are accurate and do not depend on thread timing.
 * Functions whose only use of `be` is an OpenMP pragma start with (void)be: builds without
 * OpenMP (TSan) ignore the pragmas. */
#include "cpu_internal.h"

#include <math.h>
#include <string.h>

#include "core/common.h"

/* ---- batch norm ---- */

/* Pass 1 (mean NULL): stats[0:C] = sum_c x. Pass 2: stats[C:2C] = sum_c (x - mean_c)^2, the
 * two-pass variance: E[x^2] - mean^2 in float cancels to noise when mean^2 >> var (a few
 * rows after global pooling). x - mean of two floats is exact in double. */
static void cpu_bn_stats(camo_backend *be, int M, int C, float *stats, const float *x,
                         const float *mean) {
    int T = cpu_threads(be);
    double *part = camo_calloc((size_t)T * C, sizeof(double));
#pragma omp parallel for num_threads(T)
    for (int t = 0; t < T; t++) {
        double *s = part + (size_t)t * C;
        for (size_t m = (size_t)M * t / T; m < (size_t)M * (t + 1) / T; m++) {
            const float *xr = x + m * C;
            if (!mean) {
                for (int c = 0; c < C; c++) s[c] += xr[c];
            } else {
                for (int c = 0; c < C; c++) {
                    double d = (double)xr[c] - mean[c];
                    s[c] += d * d;
                }
            }
        }
    }
    float *out = mean ? stats + C : stats;
    for (int c = 0; c < C; c++) {
        double s = 0;
        for (int t = 0; t < T; t++) s += part[(size_t)t * C + c];
        out[c] = (float)s;
    }
    free(part);
}

static void cpu_bn_mean(camo_backend *be, int C, const float *stats, double count,
                        float *mean) {
    (void)be;
    for (int c = 0; c < C; c++) mean[c] = (float)(stats[c] / count);
}

static void cpu_bn_finalize(camo_backend *be, int C, const float *stats, double count,
                            float eps, float momentum, const float *mean, float *invstd,
                            float *running_mean, float *running_var) {
    (void)be;
    for (int c = 0; c < C; c++) {
        double var = stats[C + c] / count;
        invstd[c] = (float)(1.0 / sqrt(var + eps));
        if (running_mean) {
            /* PyTorch refuses count == 1 in training; keep the biased value there */
            double unbiased = count > 1 ? var * count / (count - 1) : var;
            running_mean[c] = (float)((1.0 - momentum) * running_mean[c] + momentum * mean[c]);
            running_var[c] = (float)((1.0 - momentum) * running_var[c] + momentum * unbiased);
        }
    }
}

static void cpu_bn_eval_params(camo_backend *be, int C, const float *running_mean,
                               const float *running_var, float eps, float *mean,
                               float *invstd) {
    (void)be;
    for (int c = 0; c < C; c++) {
        mean[c] = running_mean[c];
        invstd[c] = (float)(1.0 / sqrt((double)running_var[c] + eps));
    }
}

/* y (M, C) = (x - mean) * invstd * gamma + beta; gamma/beta NULL mean 1/0 */
static void cpu_bn_apply(camo_backend *be, int M, int C, float *y, const float *x,
                         const float *mean, const float *invstd, const float *gamma,
                         const float *beta) {
    (void)be;
    float *scale = camo_malloc(2 * (size_t)C * sizeof(float)), *shift = scale + C;
    for (int c = 0; c < C; c++) {
        scale[c] = invstd[c] * (gamma ? gamma[c] : 1.0f);
        shift[c] = beta ? beta[c] : 0.0f;
    }
#pragma omp parallel for num_threads(cpu_threads(be))
    for (int m = 0; m < M; m++) {
        const float *xr = x + (size_t)m * C;
        float *yr = y + (size_t)m * C;
        for (int c = 0; c < C; c++) yr[c] = (xr[c] - mean[c]) * scale[c] + shift[c];
    }
    free(scale);
}

/* sums (2C) = [sum dy, sum dy * xhat] with xhat = (x - mean) * invstd */
static void cpu_bn_backward_reduce(camo_backend *be, int M, int C, float *sums,
                                   const float *dy, const float *x, const float *mean,
                                   const float *invstd) {
    int T = cpu_threads(be);
    double *part = camo_calloc((size_t)T * 2 * C, sizeof(double));
#pragma omp parallel for num_threads(T)
    for (int t = 0; t < T; t++) {
        /* sum dy*(x - mean) first, times invstd at the end: one multiply less per element */
        double *sdy = part + (size_t)t * 2 * C, *sdyx = sdy + C;
        for (size_t m = (size_t)M * t / T; m < (size_t)M * (t + 1) / T; m++) {
            const float *xr = x + m * C, *g = dy + m * C;
            for (int c = 0; c < C; c++) {
                sdy[c] += g[c];
                sdyx[c] += (double)g[c] * (xr[c] - mean[c]);
            }
        }
    }
    for (int i = 0; i < 2 * C; i++) {
        double s = 0;
        for (int t = 0; t < T; t++) s += part[(size_t)t * 2 * C + i];
        sums[i] = (float)(i < C ? s : s * invstd[i - C]);
    }
    free(part);
}

/* dx (M, C) += gamma*invstd*(dy - sum_dy/count - xhat*sum_dyxhat/count) */
static void cpu_bn_backward_data(camo_backend *be, int M, int C, float *dx, const float *dy,
                                 const float *x, const float *mean, const float *invstd,
                                 const float *gamma, const float *sums, double count) {
    (void)be;
    float *a = camo_malloc(3 * (size_t)C * sizeof(float)), *mdy = a + C, *k = a + 2 * C;
    for (int c = 0; c < C; c++) {
        a[c] = (gamma ? gamma[c] : 1.0f) * invstd[c];
        mdy[c] = (float)(sums[c] / count);
        /* xhat * sum_dyxhat/count = (x - mean) * (invstd * sum_dyxhat / count) */
        k[c] = (float)(invstd[c] * (sums[C + c] / count));
    }
#pragma omp parallel for num_threads(cpu_threads(be))
    for (int m = 0; m < M; m++) {
        const float *xr = x + (size_t)m * C, *g = dy + (size_t)m * C;
        float *d = dx + (size_t)m * C;
        for (int c = 0; c < C; c++) d[c] += a[c] * (g[c] - mdy[c] - (xr[c] - mean[c]) * k[c]);
    }
    free(a);
}

/* dx (M, C) += dy * gamma * invstd: frozen statistics make BN a per-channel affine map */
static void cpu_bn_backward_data_frozen(camo_backend *be, int M, int C, float *dx,
                                        const float *dy, const float *invstd,
                                        const float *gamma) {
    (void)be;
    float *a = camo_malloc((size_t)C * sizeof(float));
    for (int c = 0; c < C; c++) a[c] = (gamma ? gamma[c] : 1.0f) * invstd[c];
#pragma omp parallel for num_threads(cpu_threads(be))
    for (int m = 0; m < M; m++) {
        const float *g = dy + (size_t)m * C;
        float *d = dx + (size_t)m * C;
        for (int c = 0; c < C; c++) d[c] += g[c] * a[c];
    }
    free(a);
}

/* ---- layer norm over the C channels of each row ---- */

/* y (M, C), mean (M), rstd (M) from x (M, C); gamma, beta (C) */
static void cpu_layernorm_forward(camo_backend *be, int M, int C, float *y, float *mean,
                                  float *rstd, const float *x, const float *gamma,
                                  const float *beta, float eps) {
    (void)be;
#pragma omp parallel for num_threads(cpu_threads(be))
    for (int m = 0; m < M; m++) {
        const float *xr = x + (size_t)m * C;
        float *yr = y + (size_t)m * C;
        double s = 0, v = 0;
        for (int c = 0; c < C; c++) s += xr[c];
        float mu = (float)(s / C);
        for (int c = 0; c < C; c++) v += (double)(xr[c] - mu) * (xr[c] - mu);
        float rs = (float)(1.0 / sqrt(v / C + eps)); /* biased variance, as PyTorch */
        for (int c = 0; c < C; c++) {
            float n = (xr[c] - mu) * rs;
            yr[c] = n * (gamma ? gamma[c] : 1.0f) + (beta ? beta[c] : 0.0f);
        }
        if (mean) mean[m] = mu;
        if (rstd) rstd[m] = rs;
    }
}

/* dx (M, C) += rstd * (dnorm - mean(dnorm) - xhat * mean(dnorm * xhat)), dnorm = dy * gamma;
 * dgamma (C) += sum dy * xhat, dbeta (C) += sum dy over rows (chunked, deterministic) */
static void cpu_layernorm_backward(camo_backend *be, int M, int C, float *dx, float *dgamma,
                                   float *dbeta, const float *dy, const float *x,
                                   const float *mean, const float *rstd, const float *gamma) {
    int T = cpu_threads(be);
    double *part = camo_calloc((size_t)T * 2 * C, sizeof(double));
#pragma omp parallel for num_threads(T)
    for (int t = 0; t < T; t++) {
        double *sg = part + (size_t)t * 2 * C, *sb = sg + C;
        for (size_t m = (size_t)M * t / T; m < (size_t)M * (t + 1) / T; m++) {
            const float *xr = x + m * C, *g = dy + m * C;
            float mu = mean[m], rs = rstd[m];
            double a = 0, b = 0; /* sums of dnorm and dnorm * xhat */
            for (int c = 0; c < C; c++) {
                float xh = (xr[c] - mu) * rs, dn = g[c] * (gamma ? gamma[c] : 1.0f);
                a += dn;
                b += dn * xh;
                sg[c] += g[c] * xh;
                sb[c] += g[c];
            }
            float ma = (float)(a / C), mb = (float)(b / C);
            float *d = dx + m * C;
            for (int c = 0; c < C; c++) {
                float xh = (xr[c] - mu) * rs, dn = g[c] * (gamma ? gamma[c] : 1.0f);
                d[c] += rs * (dn - ma - xh * mb);
            }
        }
    }
    for (int c = 0; c < C; c++) {
        double sg = 0, sb = 0;
        for (int t = 0; t < T; t++) {
            sg += part[(size_t)t * 2 * C + c];
            sb += part[(size_t)t * 2 * C + C + c];
        }
        if (dgamma) dgamma[c] += (float)sg;
        if (dbeta) dbeta[c] += (float)sb;
    }
    free(part);
}

void cpu_register_norm(camo_backend *be) {
    be->bn_stats = cpu_bn_stats;
    be->bn_mean = cpu_bn_mean;
    be->bn_finalize = cpu_bn_finalize;
    be->bn_eval_params = cpu_bn_eval_params;
    be->bn_apply = cpu_bn_apply;
    be->bn_backward_reduce = cpu_bn_backward_reduce;
    be->bn_backward_data = cpu_bn_backward_data;
    be->bn_backward_data_frozen = cpu_bn_backward_data_frozen;
    be->layernorm_forward = cpu_layernorm_forward;
    be->layernorm_backward = cpu_layernorm_backward;
}
