/* cpu_moe.c: the mixture-of-experts row moves (backend.h "mixture of experts"): gather an
 * expert's images to the front, scatter their gradients back, weight expert outputs into
 * place and back. Each image row is handled by one thread, and idx has no repeats, so no
 * two threads write the same row and every result is independent of the thread count. */
#include "cpu_internal.h"

#include <string.h>

/* rows worth an OpenMP team: below this many floats one thread is faster */
#define CPU_MOE_PAR_MIN 32768

static void cpu_moe_gather(camo_backend *be, int n, size_t D, float *dst, const float *src,
                           const int *idx) {
    (void)be;
#pragma omp parallel for num_threads(cpu_threads(be)) if ((size_t)n * D >= CPU_MOE_PAR_MIN)
    for (int j = 0; j < n; j++)
        memcpy(dst + (size_t)j * D, src + (size_t)idx[j] * D, D * sizeof(float));
}

static void cpu_moe_scatter_add(camo_backend *be, int n, size_t D, float *dst,
                                const float *src, const int *idx) {
    (void)be;
#pragma omp parallel for num_threads(cpu_threads(be)) if ((size_t)n * D >= CPU_MOE_PAR_MIN)
    for (int j = 0; j < n; j++) {
        float *d = dst + (size_t)idx[j] * D;
        const float *s = src + (size_t)j * D;
        for (size_t k = 0; k < D; k++) d[k] += s[k];
    }
}

static void cpu_moe_combine_forward(camo_backend *be, int n, size_t D, int K, int e,
                                    float *out, const float *y, const float *gate,
                                    const int *idx) {
    (void)be;
#pragma omp parallel for num_threads(cpu_threads(be)) if ((size_t)n * D >= CPU_MOE_PAR_MIN)
    for (int j = 0; j < n; j++) {
        float g = gate[(size_t)idx[j] * K + e], *o = out + (size_t)idx[j] * D;
        const float *s = y + (size_t)j * D;
        for (size_t k = 0; k < D; k++) o[k] += g * s[k];
    }
}

/* the gate's gradient is a dot product over the image: summed in double, in index order */
static void cpu_moe_combine_backward(camo_backend *be, int n, size_t D, int K, int e,
                                     float *dy, float *dgate, const float *dout,
                                     const float *y, const float *gate, const int *idx) {
    (void)be;
#pragma omp parallel for num_threads(cpu_threads(be)) if ((size_t)n * D >= CPU_MOE_PAR_MIN)
    for (int j = 0; j < n; j++) {
        size_t gi = (size_t)idx[j] * K + e;
        const float *g = dout + (size_t)idx[j] * D, *s = y + (size_t)j * D;
        if (dy) {
            float w = gate[gi], *d = dy + (size_t)j * D;
            for (size_t k = 0; k < D; k++) d[k] += w * g[k];
        }
        if (dgate) {
            double acc = 0;
            for (size_t k = 0; k < D; k++) acc += (double)g[k] * s[k];
            dgate[gi] += (float)acc;
        }
    }
}

void cpu_register_moe(camo_backend *be) {
    be->moe_gather = cpu_moe_gather;
    be->moe_scatter_add = cpu_moe_scatter_add;
    be->moe_combine_forward = cpu_moe_combine_forward;
    be->moe_combine_backward = cpu_moe_combine_backward;
}
