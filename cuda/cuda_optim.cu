/* cuda_optim.cu: the CUDA twins of src/backend/cpu/cpu_optim.c: the sum of squares behind
 * the global gradient norm (fixed blocks in double, added in block order) and the SGD,
 * AdamW and EMA steps, with the CPU's formulas and its host-side scalar factors. */
#include "cuda_common.cuh"

#include <math.h>

#define OPT_BLOCK 16384   /* elements per partial sum of sumsq */

/* ---- sum of squares ---- */

__global__ static void sumsq_partial_k(size_t n, double *part, const float *x) {
    __shared__ double sh[CU_THREADS];
    size_t i0 = (size_t)blockIdx.x * OPT_BLOCK, i1 = min(n, i0 + OPT_BLOCK);
    double s = 0;
    for (size_t i = i0 + threadIdx.x; i < i1; i += blockDim.x) s += (double)x[i] * x[i];
    sh[threadIdx.x] = s;
    __syncthreads();
    for (int k = blockDim.x / 2; k > 0; k /= 2) {
        if ((int)threadIdx.x < k) sh[threadIdx.x] += sh[threadIdx.x + k];
        __syncthreads();
    }
    if (threadIdx.x == 0) part[blockIdx.x] = sh[0];
}

__global__ static void sumsq_finish_k(size_t nb, const double *part, float *out) {
    if (blockIdx.x || threadIdx.x) return;
    double s = 0;
    for (size_t b = 0; b < nb; b++) s += part[b];
    out[0] = (float)s;
}

static void cu_sumsq(camo_backend *be, size_t n, float *out, const float *x) {
    size_t nb = (n + OPT_BLOCK - 1) / OPT_BLOCK;
    double *part = (double *)cu_workspace(be, (nb + 1) * sizeof(double));
    if (!part) return;
    if (nb) sumsq_partial_k<<<(unsigned)nb, CU_THREADS, 0, cu_stream(be)>>>(n, part, x);
    sumsq_finish_k<<<1, 1, 0, cu_stream(be)>>>(nb, part, out);
    CU_LAUNCHED(be);
}

/* ---- clipping on the device (formulas of cpu_optim.c) ---- */

__global__ static void clip_factor_k(int n, const float *sumsq, double clip, double loss_scale,
                                     float *factor, double *norm_out) {
    if (blockIdx.x || threadIdx.x) return;
    double total = 0;
    for (int i = 0; i < n; i++) total += sumsq[i];
    double norm = sqrt(total) / loss_scale, scale = 1.0;
    if (clip > 0 && norm > clip) scale = clip / (norm + 1e-6);
    *factor = (float)(scale / loss_scale);
    *norm_out = norm;
}

static void cu_clip_factor(camo_backend *be, int n, const float *sumsq, double clip,
                           double loss_scale, float *factor, double *norm_out) {
    clip_factor_k<<<1, 1, 0, cu_stream(be)>>>(n, sumsq, clip, loss_scale, factor, norm_out);
    CU_LAUNCHED(be);
}

__global__ static void scale_by_k(size_t n, const float *alpha, float *x) {
    float a = alpha[0];
    CU_GRID_LOOP(i, n) x[i] *= a;
}

static void cu_scale_by(camo_backend *be, size_t n, const float *alpha, float *x) {
    if (!n) return;
    scale_by_k CU_LAUNCH(be, n)(n, alpha, x);
    CU_LAUNCHED(be);
}

/* ---- optimizer steps (formulas of cpu_optim.c) ---- */

__global__ static void sgd_k(size_t n, float *w, const float *g, float *buf, float lr,
                             float momentum, int nesterov, float wd, float grad_scale,
                             int first_step) {
    CU_GRID_LOOP(i, n) {
        float d = g[i] * grad_scale;
        if (wd != 0) d += wd * w[i];
        if (momentum != 0) {
            float b = first_step ? d : buf[i] * momentum + d;
            buf[i] = b;
            d = nesterov ? d + momentum * b : b;
        }
        w[i] += -lr * d;
    }
}

static void cu_sgd_step(camo_backend *be, size_t n, float *w, const float *g, float *buf,
                        float lr, float momentum, int nesterov, float wd, float grad_scale,
                        int first_step) {
    if (!n) return;
    sgd_k CU_LAUNCH(be, n)(n, w, g, buf, lr, momentum, nesterov, wd, grad_scale, first_step);
    CU_LAUNCHED(be);
}

typedef struct adamw_coef {
    float decay, one_m_b1, one_m_b2, beta1, beta2, step_size, bc2_sqrt, eps, grad_scale;
} adamw_coef;

__global__ static void adamw_k(size_t n, float *w, const float *g, float *m, float *v,
                               adamw_coef k) {
    CU_GRID_LOOP(i, n) {
        float gi = g[i] * k.grad_scale, wi = w[i] * k.decay;
        float mi = k.one_m_b1 < 0.5f ? m[i] + k.one_m_b1 * (gi - m[i])
                                     : gi - (gi - m[i]) * k.beta1;
        float vi = v[i] * k.beta2 + k.one_m_b2 * gi * gi;
        float denom = sqrtf(vi) / k.bc2_sqrt + k.eps;
        m[i] = mi;
        v[i] = vi;
        w[i] = wi + -k.step_size * (mi / denom);
    }
}

/* scalar factors formed in double on the host, as cpu_optim.c (and PyTorch) do */
static void cu_adamw_step(camo_backend *be, size_t n, float *w, const float *g, float *m,
                          float *v, float lr, float beta1, float beta2, float eps, float wd,
                          float grad_scale, int t) {
    if (!n) return;
    if (t < 1) t = 1;
    adamw_coef k;
    k.decay = (float)(1.0 - (double)lr * wd);
    k.one_m_b1 = (float)(1.0 - beta1);
    k.one_m_b2 = (float)(1.0 - beta2);
    k.beta1 = beta1;
    k.beta2 = beta2;
    k.step_size = (float)(lr / (1.0 - pow(beta1, t)));
    k.bc2_sqrt = (float)sqrt(1.0 - pow(beta2, t));
    k.eps = eps;
    k.grad_scale = grad_scale;
    adamw_k CU_LAUNCH(be, n)(n, w, g, m, v, k);
    CU_LAUNCHED(be);
}

__global__ static void ema_k(size_t n, float *ema, const float *w, float decay, float omd) {
    CU_GRID_LOOP(i, n) ema[i] = decay * ema[i] + omd * w[i];
}

static void cu_ema_update(camo_backend *be, size_t n, float *ema, const float *w, float decay) {
    if (!n) return;
    ema_k CU_LAUNCH(be, n)(n, ema, w, decay, (float)(1.0 - decay));
    CU_LAUNCHED(be);
}

extern "C" void cuda_register_optim(camo_backend *be) {
    be->sumsq = cu_sumsq;
    be->clip_factor = cu_clip_factor;
    be->scale_by = cu_scale_by;
    be->sgd_step = cu_sgd_step;
    be->adamw_step = cu_adamw_step;
    be->ema_update = cu_ema_update;
}
