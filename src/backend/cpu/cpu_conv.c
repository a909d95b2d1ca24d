/* cpu_conv.c: CPU gemm and 2-D convolution (NHWC activations, OHWI weights [K][R][S][C/g]).
 * General convolutions go through im2col + sgemm; 1x1 stride-1 convolutions use the input
 * as the column matrix directly; depthwise convolutions (one input channel per group) use
 * direct loops, since per-group gemms of width 1 would be all overhead. Backward ops
 * accumulate.
 * Threads: OpenBLAS runs single-threaded (backend_cpu.c) and the OpenMP team splits the work
 * into units of (image, band of output rows), each thread with its own column buffer. One
 * team instead of OpenMP loops interleaved with OpenBLAS's own pool: on 2 cores the two pools
 * wake and spin against each other, which cost 2-3x here. Weight gradients are summed in a
 * fixed number of partial buffers added in order, so every result is the same bits for any
 * thread count (replicas with different thread shares agree).
 * Functions whose only use of `be` is an OpenMP pragma start with (void)be: builds without
 * OpenMP (TSan) ignore the pragmas. */
#include "cpu_internal.h"

#include <cblas.h>
#include <stddef.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "core/common.h"

#define CONV_COLS_CAP ((size_t)1 << 18) /* 1 MB: im2col output still in L2 for sgemm */
#define CONV_UNITS 16  /* work units / partial sums: fixed, so results ignore thread count */

int camo_conv_desc_finish(camo_conv_desc *d) {
    if (d->H < 1 || d->W < 1 || d->C < 1 || d->K < 1 || d->R < 1 || d->S < 1 ||
        d->stride_h < 1 || d->stride_w < 1 || d->pad_h < 0 || d->pad_w < 0 || d->dil_h < 1 ||
        d->dil_w < 1 || d->groups < 1) {
        CAMO_ERR("conv: invalid geometry (input %dx%dx%d, %d outputs, kernel %dx%d, stride "
                 "%dx%d, pad %dx%d, dilation %dx%d, groups %d)", d->H, d->W, d->C, d->K, d->R,
                 d->S, d->stride_h, d->stride_w, d->pad_h, d->pad_w, d->dil_h, d->dil_w,
                 d->groups);
        return -1;
    }
    if (d->C % d->groups || d->K % d->groups) {
        CAMO_ERR("conv: %d input and %d output channels must both be divisible by groups=%d",
                 d->C, d->K, d->groups);
        return -1;
    }
    /* checked before dividing: C's division truncates toward zero, PyTorch floors */
    int nh = d->H + 2 * d->pad_h - d->dil_h * (d->R - 1) - 1;
    int nw = d->W + 2 * d->pad_w - d->dil_w * (d->S - 1) - 1;
    if (nh < 0 || nw < 0) {
        CAMO_ERR("conv: dilated kernel %dx%d is larger than the padded input %dx%d",
                 d->dil_h * (d->R - 1) + 1, d->dil_w * (d->S - 1) + 1, d->H + 2 * d->pad_h,
                 d->W + 2 * d->pad_w);
        return -1;
    }
    d->P = nh / d->stride_h + 1;
    d->Q = nw / d->stride_w + 1;
    return 0;
}

/* ---- gemm ---- */

static inline int thread_id(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

static void sgemm1(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A,
                   int lda, const float *B, int ldb, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                trans_b ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda, B, ldb, beta, C,
                ldc);
}

/* row-major C (M,N) = alpha * op(A) (M,K) op(B) (K,N) + beta * C, rows of C split across
 * the team (each block is an independent single-threaded sgemm) */
static void cpu_gemm(camo_backend *be, int trans_a, int trans_b, int M, int N, int K,
                     float alpha, const float *A, int lda, const float *B, int ldb, float beta,
                     float *C, int ldc) {
    int T = cpu_threads(be);
    if ((double)M * N * K < 1e6 || M < 2 * T) T = 1; /* too small to share */
#pragma omp parallel for num_threads(T) schedule(static)
    for (int t = 0; t < T; t++) {
        int m0 = (int)((long)M * t / T), m1 = (int)((long)M * (t + 1) / T);
        const float *a = trans_a ? A + m0 : A + (size_t)m0 * lda;
        sgemm1(trans_a, trans_b, m1 - m0, N, K, alpha, a, lda, B, ldb, beta,
               C + (size_t)m0 * ldc, ldc);
    }
}

/* ---- helpers ---- */

static int conv_is_depthwise(const camo_conv_desc *d) { return d->groups > 1 && d->C == d->groups; }

/* 1x1, stride 1, no padding: the NHWC input (N*H*W, C) already is the column matrix */
static int conv_is_pointwise(const camo_conv_desc *d) {
    return d->R == 1 && d->S == 1 && d->stride_h == 1 && d->stride_w == 1 && d->pad_h == 0 &&
           d->pad_w == 0;
}

/* output row p (or column q) and kernel tap r that reach input row h, or -1 if none:
 * h = p*stride - pad + r*dil */
static int conv_out_index(int h, int r, int stride, int pad, int dil, int P) {
    int t = h + pad - r * dil;
    if (t < 0 || t % stride) return -1;
    t /= stride;
    return t < P ? t : -1;
}

/* Offset in an image (H, W, C) of the input pixel that kernel tap (r, s) of output pixel
 * (p, q) reads, or -1 where the tap falls in the padding: h = p*stride - pad + r*dil. The
 * one mapping from outputs to inputs that im2col, col2im and the depthwise loops share. */
static inline ptrdiff_t conv_tap(const camo_conv_desc *d, int p, int q, int r, int s) {
    int h = p * d->stride_h - d->pad_h + r * d->dil_h;
    int w = q * d->stride_w - d->pad_w + s * d->dil_w;
    if (h < 0 || h >= d->H || w < 0 || w >= d->W) return -1;
    return ((ptrdiff_t)h * d->W + w) * d->C;
}

/* out (M, K) += bias (K) on every row */
static void add_bias(camo_backend *be, size_t M, int K, float *out, const float *bias) {
    (void)be;
#pragma omp parallel for num_threads(cpu_threads(be))
    for (size_t m = 0; m < M; m++) {
        float *o = out + m * K;
        for (int k = 0; k < K; k++) o[k] += bias[k];
    }
}

/* sum (K) += column sums of x (M, K). Rows are split into a fixed number of blocks summed in
 * double and then added in block order: the same bits for any thread count. */
static void col_sums_acc(camo_backend *be, size_t M, int K, float *sum, const float *x) {
    (void)be;
    int B = M >= 4096 ? CONV_UNITS : 1;
    double *part = camo_calloc((size_t)B * K, sizeof(double));
#pragma omp parallel for num_threads(CAMO_MIN(cpu_threads(be), B))
    for (int b = 0; b < B; b++) {
        double *acc = part + (size_t)b * K;
        for (size_t m = M * b / B; m < M * (b + 1) / B; m++)
            for (int k = 0; k < K; k++) acc[k] += x[m * K + k];
    }
    for (int k = 0; k < K; k++) {
        double s = 0;
        for (int b = 0; b < B; b++) s += part[(size_t)b * K + k];
        sum[k] += (float)s;
    }
    free(part);
}

/* cols (rows p0..p1-1 times Q, R*S*Cg): row (p,q) is the receptive field of output pixel
 * (p,q) in group g of one image in (H, W, C), ordered (r, s, c) like a weight row; zeros in
 * the padding */
static void im2col_band(const camo_conv_desc *d, float *cols, const float *in, int g, int p0,
                        int p1) {
    int Cg = d->C / d->groups, RSC = d->R * d->S * Cg;
    for (int p = p0; p < p1; p++) {
        for (int q = 0; q < d->Q; q++) {
            float *row = cols + ((size_t)(p - p0) * d->Q + q) * RSC;
            for (int r = 0; r < d->R; r++) {
                for (int s = 0; s < d->S; s++) {
                    ptrdiff_t at = conv_tap(d, p, q, r, s);
                    float *dst = row + (r * d->S + s) * Cg;
                    if (at < 0) memset(dst, 0, Cg * sizeof(float));
                    else memcpy(dst, in + at + g * Cg, Cg * sizeof(float));
                }
            }
        }
    }
}

/* din (H, W, C) of one image, channels of group g, += the band's columns scattered back */
static void col2im_band_acc(const camo_conv_desc *d, float *din, const float *cols, int g,
                            int p0, int p1) {
    int Cg = d->C / d->groups, RSC = d->R * d->S * Cg;
    for (int p = p0; p < p1; p++) {
        for (int q = 0; q < d->Q; q++) {
            const float *row = cols + ((size_t)(p - p0) * d->Q + q) * RSC;
            for (int r = 0; r < d->R; r++) {
                for (int s = 0; s < d->S; s++) {
                    ptrdiff_t at = conv_tap(d, p, q, r, s);
                    if (at < 0) continue;
                    float *dst = din + at + g * Cg;
                    const float *src = row + (r * d->S + s) * Cg;
                    for (int c = 0; c < Cg; c++) dst[c] += src[c];
                }
            }
        }
    }
}

/* How an im2col convolution is split: each image into `bands` bands of `rows` output rows;
 * a unit (image, band) is one thread's im2col + sgemm. The split depends on the geometry
 * only, never on the thread count: at least CONV_UNITS units (so small batches still fill
 * the team, also in backward data, which runs even and odd bands in two passes), and one
 * unit's columns under CONV_COLS_CAP floats. A band is at least as tall as the kernel's
 * reach, so bands two apart never touch the same input rows. */

typedef struct { int T, bands, rows, units; size_t cols; } conv_plan;

static conv_plan conv_plan_make(camo_backend *be, const camo_conv_desc *d) {
    conv_plan pl;
    if (d->N < 1) return (conv_plan){1, 1, 1, 0, 0}; /* an empty replica (sync-BN) */
    size_t RSC = (size_t)d->R * d->S * (d->C / d->groups);
    size_t by_mem = ((size_t)d->P * d->Q * RSC + CONV_COLS_CAP - 1) / CONV_COLS_CAP;
    int bands = (CONV_UNITS + d->N - 1) / d->N;
    if ((size_t)bands < by_mem) bands = (int)by_mem;
    int reach = ((d->R - 1) * d->dil_h + d->stride_h) / d->stride_h; /* ceil((R-1)dil+1)/s */
    pl.rows = (d->P + bands - 1) / bands;
    if (pl.rows < reach) pl.rows = reach;
    if (pl.rows > d->P) pl.rows = d->P;
    pl.bands = (d->P + pl.rows - 1) / pl.rows;
    pl.units = d->N * pl.bands;
    pl.T = CAMO_MIN(cpu_threads(be), pl.units);
    pl.cols = (size_t)pl.rows * d->Q * RSC;
    return pl;
}

/* dst (n) += the T partial sums src (T, n), added in order */
static void reduce_partials(camo_backend *be, float *dst, const float *src, int T, size_t n) {
    (void)be;
#pragma omp parallel for if (n >= 16384) num_threads(cpu_threads(be))
    for (size_t i = 0; i < n; i++) {
        float acc = dst[i];
        for (int t = 0; t < T; t++) acc += src[(size_t)t * n + i];
        dst[i] = acc;
    }
}

/* ---- depthwise: C == groups, K = C * mult; output k reads input channel k / mult ---- */

/* wt (R*S, K) = w (K, R*S) transposed, so that the channel loops below are contiguous */
static float *depthwise_weights_t(camo_backend *be, const camo_conv_desc *d, const float *w) {
    int RS = d->R * d->S;
    float *wt = cpu_workspace(be, (size_t)RS * d->K);
    for (int k = 0; k < d->K; k++)
        for (int i = 0; i < RS; i++) wt[(size_t)i * d->K + k] = w[(size_t)k * RS + i];
    return wt;
}

/* o (K) += x (C) * wk (K) with output k reading channel k / mult */
static inline void dw_madd(float *o, const float *x, const float *wk, int C, int mult) {
    if (mult == 1) {
        for (int c = 0; c < C; c++) o[c] += x[c] * wk[c];
        return;
    }
    for (int c = 0; c < C; c++)
        for (int j = 0; j < mult; j++) o[c * mult + j] += x[c] * wk[c * mult + j];
}

static void depthwise_forward(camo_backend *be, const camo_conv_desc *d, float *out,
                              const float *in, const float *w) {
    const float *wt = depthwise_weights_t(be, d, w);
    int C = d->C, K = d->K, mult = K / C;
#pragma omp parallel for collapse(2) num_threads(cpu_threads(be))
    for (int n = 0; n < d->N; n++) {
        for (int p = 0; p < d->P; p++) {
            for (int q = 0; q < d->Q; q++) {
                float *o = out + (((size_t)n * d->P + p) * d->Q + q) * K;
                const float *in_n = in + (size_t)n * d->H * d->W * C;
                memset(o, 0, K * sizeof(float));
                for (int r = 0; r < d->R; r++) {
                    for (int s = 0; s < d->S; s++) {
                        ptrdiff_t at = conv_tap(d, p, q, r, s);
                        if (at >= 0)
                            dw_madd(o, in_n + at, wt + (size_t)(r * d->S + s) * K, C, mult);
                    }
                }
            }
        }
    }
}

/* din += gathered over the outputs each input pixel feeds; threads own rows of din */
static void depthwise_backward_data(camo_backend *be, const camo_conv_desc *d, float *din,
                                    const float *dout, const float *w) {
    const float *wt = depthwise_weights_t(be, d, w);
    int C = d->C, K = d->K, mult = K / C;
#pragma omp parallel for collapse(2) num_threads(cpu_threads(be))
    for (int n = 0; n < d->N; n++) {
        for (int h = 0; h < d->H; h++) {
            for (int x = 0; x < d->W; x++) {
                float *dx = din + (((size_t)n * d->H + h) * d->W + x) * C;
                for (int r = 0; r < d->R; r++) {
                    int p = conv_out_index(h, r, d->stride_h, d->pad_h, d->dil_h, d->P);
                    if (p < 0) continue;
                    for (int s = 0; s < d->S; s++) {
                        int q = conv_out_index(x, s, d->stride_w, d->pad_w, d->dil_w, d->Q);
                        if (q < 0) continue;
                        const float *dy = dout + (((size_t)n * d->P + p) * d->Q + q) * K;
                        const float *wk = wt + (size_t)(r * d->S + s) * K;
                        for (int c = 0; c < C; c++) {
                            float acc = 0;
                            for (int j = 0; j < mult; j++)
                                acc += dy[c * mult + j] * wk[c * mult + j];
                            dx[c] += acc;
                        }
                    }
                }
            }
        }
    }
}

/* dw (K, R, S) += sum over pixels of dout * in: output rows are split into CONV_UNITS
 * chunks with their own double sums, added in chunk order (any thread count: same bits). */
static void depthwise_backward_filter(camo_backend *be, const camo_conv_desc *d, float *dw,
                                      const float *dout, const float *in) {
    (void)be;
    int C = d->C, K = d->K, mult = K / C, RS = d->R * d->S, T = CONV_UNITS;
    size_t rows = (size_t)d->N * d->P; /* one (image, output row) per unit of work */
    double *part = camo_calloc((size_t)T * RS * K, sizeof(double));
#pragma omp parallel for num_threads(cpu_threads(be))
    for (int t = 0; t < T; t++) {
        double *acc = part + (size_t)t * RS * K; /* (R*S, K) */
        for (size_t np = rows * t / T; np < rows * (t + 1) / T; np++) {
            int n = (int)(np / d->P), p = (int)(np % d->P);
            const float *in_n = in + (size_t)n * d->H * d->W * C;
            for (int q = 0; q < d->Q; q++) {
                const float *dy = dout + (np * d->Q + q) * K;
                for (int r = 0; r < d->R; r++) {
                    for (int s = 0; s < d->S; s++) {
                        ptrdiff_t at = conv_tap(d, p, q, r, s);
                        if (at < 0) continue;
                        const float *xin = in_n + at;
                        double *a = acc + (size_t)(r * d->S + s) * K;
                        if (mult == 1)
                            for (int k = 0; k < K; k++) a[k] += dy[k] * xin[k];
                        else
                            for (int k = 0; k < K; k++) a[k] += dy[k] * xin[k / mult];
                    }
                }
            }
        }
    }
    for (int k = 0; k < K; k++) {
        for (int i = 0; i < RS; i++) {
            double s = 0;
            for (int t = 0; t < T; t++) s += part[((size_t)t * RS + i) * K + k];
            dw[(size_t)k * RS + i] += (float)s;
        }
    }
    free(part);
}

/* ---- the three convolution ops ---- */

/* out (N,P,Q,K) = conv(in (N,H,W,C), w (K,R,S,C/g)) + bias (K) */
static void cpu_conv2d_forward(camo_backend *be, const camo_conv_desc *d, float *out,
                               const float *in, const float *w, const float *bias) {
    int Cg = d->C / d->groups, Kg = d->K / d->groups, RSC = d->R * d->S * Cg;
    size_t PQ = (size_t)d->P * d->Q;
    if (conv_is_depthwise(d)) {
        depthwise_forward(be, d, out, in, w);
    } else if (conv_is_pointwise(d)) { /* out[:, g] (M, Kg) = in[:, g] (M, Cg) x w_g^T */
        for (int g = 0; g < d->groups; g++)
            cpu_gemm(be, 0, 1, (int)(d->N * PQ), Kg, Cg, 1.0f, in + g * Cg, d->C,
                     w + (size_t)g * Kg * Cg, Cg, 0.0f, out + g * Kg, d->K);
    } else {
        conv_plan pl = conv_plan_make(be, d);
        float *ws = cpu_workspace(be, (size_t)pl.T * pl.cols);
#pragma omp parallel for num_threads(pl.T) schedule(static)
        for (int u = 0; u < pl.units; u++) {
            int n = u / pl.bands, p0 = u % pl.bands * pl.rows;
            int p1 = CAMO_MIN(d->P, p0 + pl.rows);
            float *cols = ws + (size_t)thread_id() * pl.cols;
            const float *in_n = in + (size_t)n * d->H * d->W * d->C;
            float *out_b = out + ((size_t)n * PQ + (size_t)p0 * d->Q) * d->K;
            for (int g = 0; g < d->groups; g++) {
                im2col_band(d, cols, in_n, g, p0, p1);
                /* out_b[:, g] (rows*Q, Kg) = cols (rows*Q, RSC) x w_g^T (RSC, Kg) */
                sgemm1(0, 1, (p1 - p0) * d->Q, Kg, RSC, 1.0f, cols, RSC,
                       w + (size_t)g * Kg * RSC, RSC, 0.0f, out_b + g * Kg, d->K);
            }
        }
    }
    if (bias) add_bias(be, d->N * PQ, d->K, out, bias);
}

/* din (N,H,W,C) += conv_transpose(dout (N,P,Q,K), w) */
static void cpu_conv2d_backward_data(camo_backend *be, const camo_conv_desc *d, float *din,
                                     const float *dout, const float *w) {
    int Cg = d->C / d->groups, Kg = d->K / d->groups, RSC = d->R * d->S * Cg;
    size_t PQ = (size_t)d->P * d->Q;
    if (conv_is_depthwise(d)) {
        depthwise_backward_data(be, d, din, dout, w);
        return;
    }
    if (conv_is_pointwise(d)) { /* din[:, g] (M, Cg) += dout[:, g] (M, Kg) x w_g */
        for (int g = 0; g < d->groups; g++)
            cpu_gemm(be, 0, 0, (int)(d->N * PQ), Cg, Kg, 1.0f, dout + g * Kg, d->K,
                     w + (size_t)g * Kg * Cg, Cg, 1.0f, din + g * Cg, d->C);
        return;
    }
    conv_plan pl = conv_plan_make(be, d);
    float *ws = cpu_workspace(be, (size_t)pl.T * pl.cols);
    for (int parity = 0; parity < 2; parity++) { /* bands of one parity never overlap */
        int nb = (pl.bands + 1 - parity) / 2, units = d->N * nb;
#pragma omp parallel for num_threads(pl.T) schedule(static)
        for (int u = 0; u < units; u++) {
            int n = u / nb, p0 = (2 * (u % nb) + parity) * pl.rows;
            int p1 = CAMO_MIN(d->P, p0 + pl.rows);
            float *cols = ws + (size_t)thread_id() * pl.cols;
            const float *dout_b = dout + ((size_t)n * PQ + (size_t)p0 * d->Q) * d->K;
            for (int g = 0; g < d->groups; g++) {
                /* cols (rows*Q, RSC) = dout_b[:, g] (rows*Q, Kg) x w_g (Kg, RSC) */
                sgemm1(0, 0, (p1 - p0) * d->Q, RSC, Kg, 1.0f, dout_b + g * Kg, d->K,
                       w + (size_t)g * Kg * RSC, RSC, 0.0f, cols, RSC);
                col2im_band_acc(d, din + (size_t)n * d->H * d->W * d->C, cols, g, p0, p1);
            }
        }
    }
}

/* dw_g (Kg, Cg) += dout[:, g]^T (Kg, M) x in[:, g]: rows in G fixed blocks, each summed
 * into its own partial, the partials added to dw in block order (any thread count gives
 * the same bits). Blocks run T at a time: reduce_partials adds each partial to dw in
 * order, so T partials at a time make the same additions as G of them at once, in far
 * less memory (a weight-sized partial per block). */
static void pointwise_backward_filter(camo_backend *be, const camo_conv_desc *d, float *dw,
                                      const float *dout, const float *in) {
    int Cg = d->C / d->groups, Kg = d->K / d->groups;
    size_t nw = (size_t)d->K * Cg;
    int M = (int)((size_t)d->N * d->P * d->Q), G = M >= 4096 ? CONV_UNITS : 1;
    int T = CAMO_MIN(cpu_threads(be), G);
    float *part = cpu_workspace(be, (size_t)T * nw);
    for (int b0 = 0; b0 < G; b0 += T) {
        int nb = CAMO_MIN(T, G - b0);
        memset(part, 0, (size_t)nb * nw * sizeof(float));
#pragma omp parallel for num_threads(nb) schedule(static)
        for (int j = 0; j < nb; j++) {
            int b = b0 + j;
            int m0 = (int)((long)M * b / G), m1 = (int)((long)M * (b + 1) / G);
            for (int g = 0; g < d->groups; g++)
                sgemm1(1, 0, Kg, Cg, m1 - m0, 1.0f, dout + (size_t)m0 * d->K + g * Kg, d->K,
                       in + (size_t)m0 * d->C + g * Cg, d->C, 1.0f,
                       part + (size_t)j * nw + (size_t)g * Kg * Cg, Cg);
        }
        reduce_partials(be, dw, part, nb, nw);
    }
}

/* dw (K,R,S,C/g) += dout^T x cols, dbias (K) += column sums of dout */
static void cpu_conv2d_backward_filter(camo_backend *be, const camo_conv_desc *d, float *dw,
                                       float *dbias, const float *dout, const float *in) {
    int Cg = d->C / d->groups, Kg = d->K / d->groups, RSC = d->R * d->S * Cg;
    size_t PQ = (size_t)d->P * d->Q, nw = (size_t)d->K * RSC;
    if (dbias) col_sums_acc(be, d->N * PQ, d->K, dbias, dout);
    if (conv_is_depthwise(d)) {
        depthwise_backward_filter(be, d, dw, dout, in);
        return;
    }
    if (conv_is_pointwise(d)) {
        pointwise_backward_filter(be, d, dw, dout, in);
        return;
    }
    /* Units go in G fixed groups, each summed in unit order into its own partial, and the
     * partials are added to dw in group order: the same bits for any thread count. Only T
     * groups are held at once (partials_add_in_order). */
    conv_plan pl = conv_plan_make(be, d);
    int G = CAMO_MAX(1, CAMO_MIN(pl.units, CONV_UNITS)), T = CAMO_MIN(pl.T, G);
    float *ws = cpu_workspace(be, (size_t)T * pl.cols + (size_t)T * nw);
    float *part = ws + (size_t)T * pl.cols; /* (T, K*RSC) partial weight gradients */
    for (int g0 = 0; g0 < G; g0 += T) {
        int ng = CAMO_MIN(T, G - g0);
        memset(part, 0, (size_t)ng * nw * sizeof(float));
#pragma omp parallel for num_threads(ng) schedule(static)
        for (int j = 0; j < ng; j++) {
            int grp = g0 + j;
            float *cols = ws + (size_t)thread_id() * pl.cols, *acc = part + (size_t)j * nw;
            for (int u = pl.units * grp / G; u < pl.units * (grp + 1) / G; u++) {
                int n = u / pl.bands, p0 = u % pl.bands * pl.rows;
                int p1 = CAMO_MIN(d->P, p0 + pl.rows);
                const float *in_n = in + (size_t)n * d->H * d->W * d->C;
                const float *dout_b = dout + ((size_t)n * PQ + (size_t)p0 * d->Q) * d->K;
                for (int g = 0; g < d->groups; g++) {
                    im2col_band(d, cols, in_n, g, p0, p1);
                    /* dw_g (Kg, RSC) += dout_b[:, g]^T (Kg, rows*Q) x cols (rows*Q, RSC) */
                    sgemm1(1, 0, Kg, RSC, (p1 - p0) * d->Q, 1.0f, dout_b + g * Kg, d->K, cols,
                           RSC, 1.0f, acc + (size_t)g * Kg * RSC, RSC);
                }
            }
        }
        reduce_partials(be, dw, part, ng, nw);
    }
}

void cpu_register_conv(camo_backend *be) {
    be->gemm = cpu_gemm;
    be->conv2d_forward = cpu_conv2d_forward;
    be->conv2d_backward_data = cpu_conv2d_backward_data;
    be->conv2d_backward_filter = cpu_conv2d_backward_filter;
}
