/* cpu_pool.c: CPU max/avg pooling, adaptive average pooling and bilinear resize, all NHWC
 * with PyTorch's index rules. Forward loops run in parallel over (image, output row);
 * backward loops scatter, so they run in parallel over (image, block of channels): no two
 * threads ever add into the same input element. Backward ops accumulate.
 * Functions whose only use of `be` is an OpenMP pragma start with (void)be: builds without
 * OpenMP (TSan) ignore the pragmas. */
#include "cpu_internal.h"

#include <math.h>
#include <string.h>

#include "core/common.h"

enum { CH_BLOCK = 16 }; /* channels per backward work item */

int camo_pool_desc_finish(camo_pool_desc *d) {
    if (d->H < 1 || d->W < 1 || d->C < 1 || d->R < 1 || d->S < 1 || d->stride_h < 1 ||
        d->stride_w < 1 || d->pad_h < 0 || d->pad_w < 0) {
        CAMO_ERR("pool: invalid geometry (input %dx%dx%d, kernel %dx%d, stride %dx%d, pad "
                 "%dx%d)", d->H, d->W, d->C, d->R, d->S, d->stride_h, d->stride_w, d->pad_h,
                 d->pad_w);
        return -1;
    }
    /* PyTorch's rule; it also guarantees every window holds at least one real pixel */
    if (d->pad_h > d->R / 2 || d->pad_w > d->S / 2) {
        CAMO_ERR("pool: padding %dx%d must be at most half the kernel %dx%d", d->pad_h,
                 d->pad_w, d->R, d->S);
        return -1;
    }
    int nh = d->H + 2 * d->pad_h - d->R, nw = d->W + 2 * d->pad_w - d->S;
    if (nh < 0 || nw < 0) { /* floor division of a negative would give an output < 1 */
        CAMO_ERR("pool: kernel %dx%d is larger than the padded input %dx%d", d->R, d->S,
                 d->H + 2 * d->pad_h, d->W + 2 * d->pad_w);
        return -1;
    }
    d->P = nh / d->stride_h + 1;
    d->Q = nw / d->stride_w + 1;
    return 0;
}

/* ---- max / average pooling ---- */

/* window of output index p along one axis, clipped to the input [0, H): [*lo, *hi); the
 * return value is the divisor count_include_pad uses (window clipped to the padded input) */
static int pool_window(int p, int stride, int pad, int k, int H, int *lo, int *hi) {
    int s = p * stride - pad, e = CAMO_MIN(s + k, H + pad);
    int padded = e - s;
    *lo = CAMO_MAX(s, 0);
    *hi = CAMO_MIN(e, H);
    return padded;
}

/* y (P,Q,C) of one output pixel row; argmax is the first maximum in scan order */
static void max_pool_pixel(const camo_pool_desc *d, float *y, int *am, const float *x,
                           int h0, int h1, int w0, int w1) {
    int C = d->C;
    for (int c = 0; c < C; c++) {
        y[c] = -INFINITY;
        am[c] = h0 * d->W + w0; /* PyTorch's start index: a window of -inf still points in */
    }
    for (int h = h0; h < h1; h++) {
        for (int w = w0; w < w1; w++) {
            const float *xr = x + ((size_t)h * d->W + w) * C;
            for (int c = 0; c < C; c++) {
                if (xr[c] > y[c] || isnan(xr[c])) { /* NaN propagates, as in PyTorch */
                    y[c] = xr[c];
                    am[c] = h * d->W + w;
                }
            }
        }
    }
}

static void avg_pool_pixel(const camo_pool_desc *d, float *y, const float *x, int h0, int h1,
                           int w0, int w1, int padded) {
    int C = d->C;
    int count = d->count_include_pad ? padded : (h1 - h0) * (w1 - w0);
    memset(y, 0, C * sizeof(float));
    for (int h = h0; h < h1; h++)
        for (int w = w0; w < w1; w++) {
            const float *xr = x + ((size_t)h * d->W + w) * C;
            for (int c = 0; c < C; c++) y[c] += xr[c];
        }
    for (int c = 0; c < C; c++) y[c] /= (float)count;
}

/* y (N,P,Q,C) = pool(x (N,H,W,C)); argmax (N,P,Q,C) for max pooling */
static void cpu_pool_forward(camo_backend *be, const camo_pool_desc *d, float *y, int *argmax,
                             const float *x) {
    (void)be;
#pragma omp parallel for collapse(2) num_threads(cpu_threads(be))
    for (int n = 0; n < d->N; n++) {
        for (int p = 0; p < d->P; p++) {
            int h0, h1, w0, w1;
            int ph = pool_window(p, d->stride_h, d->pad_h, d->R, d->H, &h0, &h1);
            const float *xn = x + (size_t)n * d->H * d->W * d->C;
            for (int q = 0; q < d->Q; q++) {
                int pw = pool_window(q, d->stride_w, d->pad_w, d->S, d->W, &w0, &w1);
                size_t o = (((size_t)n * d->P + p) * d->Q + q) * d->C;
                if (d->type == CAMO_POOL_MAX)
                    max_pool_pixel(d, y + o, argmax + o, xn, h0, h1, w0, w1);
                else
                    avg_pool_pixel(d, y + o, xn, h0, h1, w0, w1, ph * pw);
            }
        }
    }
}

/* dx (N,H,W,C) += pool^T(dy (N,P,Q,C)); max routes each gradient to its argmax */
static void cpu_pool_backward(camo_backend *be, const camo_pool_desc *d, float *dx,
                              const float *dy, const int *argmax) {
    (void)be;
    int C = d->C, nb = (C + CH_BLOCK - 1) / CH_BLOCK;
#pragma omp parallel for collapse(2) num_threads(cpu_threads(be))
    for (int n = 0; n < d->N; n++) {
        for (int b = 0; b < nb; b++) {
            int c0 = b * CH_BLOCK, c1 = CAMO_MIN(c0 + CH_BLOCK, C);
            float *dxn = dx + (size_t)n * d->H * d->W * C;
            for (int p = 0; p < d->P; p++) {
                int h0, h1, w0, w1;
                int ph = pool_window(p, d->stride_h, d->pad_h, d->R, d->H, &h0, &h1);
                for (int q = 0; q < d->Q; q++) {
                    int pw = pool_window(q, d->stride_w, d->pad_w, d->S, d->W, &w0, &w1);
                    size_t o = (((size_t)n * d->P + p) * d->Q + q) * C;
                    if (d->type == CAMO_POOL_MAX) {
                        for (int c = c0; c < c1; c++)
                            dxn[(size_t)argmax[o + c] * C + c] += dy[o + c];
                        continue;
                    }
                    int count = d->count_include_pad ? ph * pw : (h1 - h0) * (w1 - w0);
                    for (int h = h0; h < h1; h++)
                        for (int w = w0; w < w1; w++) {
                            float *g = dxn + ((size_t)h * d->W + w) * C;
                            for (int c = c0; c < c1; c++) g[c] += dy[o + c] / (float)count;
                        }
                }
            }
        }
    }
}

/* ---- adaptive average pooling: bin i of P over H is [floor(i*H/P), ceil((i+1)*H/P)) ---- */

static int bin_start(int i, int H, int P) { return (int)((long)i * H / P); }
static int bin_end(int i, int H, int P) { return (int)(((long)(i + 1) * H + P - 1) / P); }

/* y (N,P,Q,C) = adaptive_avg_pool(x (N,H,W,C)) */
static void cpu_adaptive_avg_forward(camo_backend *be, int N, int H, int W, int C, int P,
                                     int Q, float *y, const float *x) {
    (void)be;
#pragma omp parallel for collapse(2) num_threads(cpu_threads(be))
    for (int n = 0; n < N; n++) {
        for (int p = 0; p < P; p++) {
            int h0 = bin_start(p, H, P), h1 = bin_end(p, H, P);
            for (int q = 0; q < Q; q++) {
                int w0 = bin_start(q, W, Q), w1 = bin_end(q, W, Q);
                float *yr = y + (((size_t)n * P + p) * Q + q) * C;
                memset(yr, 0, C * sizeof(float));
                for (int h = h0; h < h1; h++)
                    for (int w = w0; w < w1; w++) {
                        const float *xr = x + (((size_t)n * H + h) * W + w) * C;
                        for (int c = 0; c < C; c++) yr[c] += xr[c];
                    }
                float inv = 1.0f / (float)((h1 - h0) * (w1 - w0));
                for (int c = 0; c < C; c++) yr[c] *= inv;
            }
        }
    }
}

/* dx (N,H,W,C) += each output gradient spread evenly over its bin */
static void cpu_adaptive_avg_backward(camo_backend *be, int N, int H, int W, int C, int P,
                                      int Q, float *dx, const float *dy) {
    (void)be;
    int nb = (C + CH_BLOCK - 1) / CH_BLOCK;
#pragma omp parallel for collapse(2) num_threads(cpu_threads(be))
    for (int n = 0; n < N; n++) {
        for (int b = 0; b < nb; b++) {
            int c0 = b * CH_BLOCK, c1 = CAMO_MIN(c0 + CH_BLOCK, C);
            for (int p = 0; p < P; p++) {
                int h0 = bin_start(p, H, P), h1 = bin_end(p, H, P);
                for (int q = 0; q < Q; q++) {
                    int w0 = bin_start(q, W, Q), w1 = bin_end(q, W, Q);
                    const float *g = dy + (((size_t)n * P + p) * Q + q) * C;
                    float inv = 1.0f / (float)((h1 - h0) * (w1 - w0));
                    for (int h = h0; h < h1; h++)
                        for (int w = w0; w < w1; w++) {
                            float *d = dx + (((size_t)n * H + h) * W + w) * C;
                            for (int c = c0; c < c1; c++) d[c] += g[c] * inv;
                        }
                }
            }
        }
    }
}

/* ---- bilinear resize (F.interpolate, mode="bilinear") ---- */

/* Source taps of each output index along one axis: i0, i1 = i0 + (i0 < H-1), weight l1 on
 * i1 and 1 - l1 on i0. Float arithmetic as in PyTorch's CPU kernel, so indices match. */
typedef struct { int i0, i1; float l0, l1; } lin_tap;

static lin_tap *linear_taps(int H, int P, int align_corners, float scale_factor) {
    lin_tap *t = camo_malloc((size_t)P * sizeof *t);
    float scale;
    if (align_corners) scale = P > 1 ? (float)(H - 1) / (float)(P - 1) : 0.0f;
    else scale = scale_factor > 0 ? (float)(1.0 / scale_factor) : (float)H / (float)P;
    for (int p = 0; p < P; p++) {
        float src = align_corners ? scale * p : scale * (p + 0.5f) - 0.5f;
        if (src < 0) src = 0; /* only align_corners=False can go negative */
        int i0 = CAMO_MIN((int)floorf(src), H - 1);
        float l1 = CAMO_MIN(CAMO_MAX(src - (float)i0, 0.0f), 1.0f);
        t[p] = (lin_tap){i0, i0 + (i0 < H - 1), 1.0f - l1, l1};
    }
    return t;
}

/* y (N,P,Q,C) = bilinear(x (N,H,W,C)) */
static void cpu_resize_forward(camo_backend *be, int N, int H, int W, int C, int P, int Q,
                               int align_corners, float scale_h, float scale_w, float *y,
                               const float *x) {
    (void)be;
    lin_tap *th = linear_taps(H, P, align_corners, scale_h);
    lin_tap *tw = linear_taps(W, Q, align_corners, scale_w);
#pragma omp parallel for collapse(2) num_threads(cpu_threads(be))
    for (int n = 0; n < N; n++) {
        for (int p = 0; p < P; p++) {
            lin_tap a = th[p];
            const float *x0 = x + ((size_t)n * H + a.i0) * W * C;
            const float *x1 = x + ((size_t)n * H + a.i1) * W * C;
            for (int q = 0; q < Q; q++) {
                lin_tap b = tw[q];
                const float *x00 = x0 + (size_t)b.i0 * C, *x01 = x0 + (size_t)b.i1 * C;
                const float *x10 = x1 + (size_t)b.i0 * C, *x11 = x1 + (size_t)b.i1 * C;
                float *yr = y + (((size_t)n * P + p) * Q + q) * C;
                for (int c = 0; c < C; c++)
                    yr[c] = a.l0 * (b.l0 * x00[c] + b.l1 * x01[c]) +
                            a.l1 * (b.l0 * x10[c] + b.l1 * x11[c]);
            }
        }
    }
    free(th);
    free(tw);
}

/* dx (N,H,W,C) += each output gradient spread over its four taps with the same weights */
static void cpu_resize_backward(camo_backend *be, int N, int H, int W, int C, int P, int Q,
                                int align_corners, float scale_h, float scale_w, float *dx,
                                const float *dy) {
    (void)be;
    lin_tap *th = linear_taps(H, P, align_corners, scale_h);
    lin_tap *tw = linear_taps(W, Q, align_corners, scale_w);
    int nb = (C + CH_BLOCK - 1) / CH_BLOCK;
#pragma omp parallel for collapse(2) num_threads(cpu_threads(be))
    for (int n = 0; n < N; n++) {
        for (int b = 0; b < nb; b++) {
            int c0 = b * CH_BLOCK, c1 = CAMO_MIN(c0 + CH_BLOCK, C);
            for (int p = 0; p < P; p++) {
                lin_tap a = th[p];
                float *d0 = dx + ((size_t)n * H + a.i0) * W * C;
                float *d1 = dx + ((size_t)n * H + a.i1) * W * C;
                for (int q = 0; q < Q; q++) {
                    lin_tap e = tw[q];
                    const float *g = dy + (((size_t)n * P + p) * Q + q) * C;
                    float *d00 = d0 + (size_t)e.i0 * C, *d01 = d0 + (size_t)e.i1 * C;
                    float *d10 = d1 + (size_t)e.i0 * C, *d11 = d1 + (size_t)e.i1 * C;
                    for (int c = c0; c < c1; c++) {
                        d00[c] += a.l0 * e.l0 * g[c];
                        d01[c] += a.l0 * e.l1 * g[c];
                        d10[c] += a.l1 * e.l0 * g[c];
                        d11[c] += a.l1 * e.l1 * g[c];
                    }
                }
            }
        }
    }
    free(th);
    free(tw);
}

void cpu_register_pool(camo_backend *be) {
    be->pool_forward = cpu_pool_forward;
    be->pool_backward = cpu_pool_backward;
    be->adaptive_avg_forward = cpu_adaptive_avg_forward;
    be->adaptive_avg_backward = cpu_adaptive_avg_backward;
    be->resize_forward = cpu_resize_forward;
    be->resize_backward = cpu_resize_backward;
}
