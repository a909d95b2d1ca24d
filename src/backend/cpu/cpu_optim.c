/* cpu_optim.c: CPU optimizer steps (SGD, AdamW, weight EMA) and the sum of squares used
 * for the global gradient norm. The update formulas follow PyTorch's single-tensor
 * torch.optim.SGD / AdamW code operation by operation, so float32 results agree with
 * PyTorch's to rounding. The sum of squares is taken in double over fixed blocks added in
 * block order: the same value for any thread count. Functions whose only use of `be` is an
 * OpenMP pragma start with (void)be: builds without OpenMP (TSan) ignore the pragmas. */
#include "cpu_internal.h"

#include <math.h>

#include "core/common.h"

#define CPU_OPT_PAR_MIN 32768
#define CPU_OPT_BLOCK 16384 /* elements per partial sum of sumsq */

/* out[0] = sum of x (n)^2 */
static void cpu_sumsq(camo_backend *be, size_t n, float *out, const float *x) {
    size_t nb = (n + CPU_OPT_BLOCK - 1) / CPU_OPT_BLOCK;
    double *part = camo_calloc(nb + 1, sizeof(double));
    (void)be;
#pragma omp parallel for if (n >= CPU_OPT_PAR_MIN) num_threads(cpu_threads(be))
    for (size_t b = 0; b < nb; b++) {
        double s = 0;
        size_t i1 = CAMO_MIN(n, (b + 1) * CPU_OPT_BLOCK);
        for (size_t i = b * CPU_OPT_BLOCK; i < i1; i++) s += (double)x[i] * x[i];
        part[b] = s;
    }
    double s = 0;
    for (size_t b = 0; b < nb; b++) s += part[b];
    out[0] = (float)s;
    free(part);
}

/* w, g, buf (n). PyTorch SGD with dampening 0:
 *   g' = grad_scale*g + wd*w; buf = first_step ? g' : momentum*buf + g';
 *   step = nesterov ? g' + momentum*buf : buf; w -= lr*step.
 * With momentum 0 PyTorch keeps no buffer and steps by g' (buf is left untouched). */
static void cpu_sgd_step(camo_backend *be, size_t n, float *w, const float *g, float *buf,
                         float lr, float momentum, int nesterov, float wd, float grad_scale,
                         int first_step) {
    (void)be;
#pragma omp parallel for if (n >= CPU_OPT_PAR_MIN) num_threads(cpu_threads(be))
    for (size_t i = 0; i < n; i++) {
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

/* w, g, m, v (n); step t >= 1. PyTorch AdamW: w *= 1 - lr*wd (decoupled decay, before the
 * moments); m = lerp(m, g, 1-beta1); v = beta2*v + (1-beta2)*g^2;
 * w -= lr/(1-beta1^t) * m / (sqrt(v)/sqrt(1-beta2^t) + eps).
 * The scalar factors are formed in double, as PyTorch forms them in Python. */
static void cpu_adamw_step(camo_backend *be, size_t n, float *w, const float *g, float *m,
                           float *v, float lr, float beta1, float beta2, float eps, float wd,
                           float grad_scale, int t) {
    CAMO_ASSERT(t >= 1);
    float decay = (float)(1.0 - (double)lr * wd);
    float one_m_b1 = (float)(1.0 - beta1), one_m_b2 = (float)(1.0 - beta2);
    float step_size = (float)(lr / (1.0 - pow(beta1, t)));
    float bc2_sqrt = (float)sqrt(1.0 - pow(beta2, t));
    (void)be;
#pragma omp parallel for if (n >= CPU_OPT_PAR_MIN) num_threads(cpu_threads(be))
    for (size_t i = 0; i < n; i++) {
        float gi = g[i] * grad_scale;
        float wi = w[i] * decay;
        /* torch.lerp(m, g, 1-beta1), whose formula depends on the side of 0.5 */
        float mi = one_m_b1 < 0.5f ? m[i] + one_m_b1 * (gi - m[i])
                                   : gi - (gi - m[i]) * beta1;
        float vi = v[i] * beta2 + one_m_b2 * gi * gi;
        float denom = sqrtf(vi) / bc2_sqrt + eps;
        m[i] = mi;
        v[i] = vi;
        w[i] = wi + -step_size * (mi / denom);
    }
}

static void cpu_clip_factor(camo_backend *be, int n, const float *sumsq, double clip,
                            double loss_scale, float *factor, double *norm_out) {
    double total = 0;
    (void)be;
    for (int i = 0; i < n; i++) total += sumsq[i];
    double norm = sqrt(total) / loss_scale, scale = 1.0;
    if (clip > 0 && norm > clip) scale = clip / (norm + 1e-6);
    *factor = (float)(scale / loss_scale);
    *norm_out = norm;
}

static void cpu_scale_by(camo_backend *be, size_t n, const float *alpha, float *x) {
    float a = alpha[0];
    (void)be;
#pragma omp parallel for if (n >= CPU_OPT_PAR_MIN) num_threads(cpu_threads(be))
    for (size_t i = 0; i < n; i++) x[i] *= a;
}

/* ema (n) = decay*ema + (1-decay)*w */
static void cpu_ema_update(camo_backend *be, size_t n, float *ema, const float *w,
                           float decay) {
    float one_m_decay = (float)(1.0 - decay);
    (void)be;
#pragma omp parallel for if (n >= CPU_OPT_PAR_MIN) num_threads(cpu_threads(be))
    for (size_t i = 0; i < n; i++) ema[i] = decay * ema[i] + one_m_decay * w[i];
}

void cpu_register_optim(camo_backend *be) {
    be->sumsq = cpu_sumsq;
    be->clip_factor = cpu_clip_factor;
    be->scale_by = cpu_scale_by;
    be->sgd_step = cpu_sgd_step;
    be->adamw_step = cpu_adamw_step;
    be->ema_update = cpu_ema_update;
}
