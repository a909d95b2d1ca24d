/* cuda_pool.cu: the CUDA twins of src/backend/cpu/cpu_pool.c: max / average pooling with
 * PyTorch's windows, adaptive average pooling and bilinear resize. Backward passes gather
 * (one thread per input gradient) where the inverse map is cheap; resize scatters with
 * atomics unless train.deterministic asks for its gather. */
#include "cuda_common.cuh"

#include <math.h>

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
        auto [n, p, q, c] = cu_nhwc(i, d.P, d.Q, d.C);
        int h0, h1, w0, w1;
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
        auto [n, h, w, c] = cu_nhwc(i, d.H, d.W, d.C);
        int plo, phi, qlo, qhi;
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
    pool_fwd_k CU_LAUNCH(be, n)(*d, y, argmax, x);
    CU_LAUNCHED(be);
}

static void cu_pool_backward(camo_backend *be, const camo_pool_desc *d, float *dx,
                             const float *dy, const int *argmax) {
    size_t n = (size_t)d->N * d->H * d->W * d->C;
    if (!n) return;
    pool_bwd_k CU_LAUNCH(be, n)(*d, dx, dy, argmax);
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
        auto [n, p, q, c] = cu_nhwc(i, P, Q, C);
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
        auto [n, h, w, c] = cu_nhwc(i, H, W, C);
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
    adaptive_fwd_k CU_LAUNCH(be, n)(N, H, W, C, P, Q, y, x);
    CU_LAUNCHED(be);
}

static void cu_adaptive_avg_backward(camo_backend *be, int N, int H, int W, int C, int P,
                                     int Q, float *dx, const float *dy) {
    size_t n = (size_t)N * H * W * C;
    if (!n) return;
    adaptive_bwd_k CU_LAUNCH(be, n)(N, H, W, C, P, Q, dx, dy);
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
        auto [n, p, q, c] = cu_nhwc(i, P, Q, C);
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
        auto [n, p, q, c] = cu_nhwc(i, P, Q, C);
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
        auto [n, h, w, c] = cu_nhwc(i, H, W, C);
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
    resize_fwd_k CU_LAUNCH(be, n)(N, H, W, C, P, Q, align_corners, scale_h, scale_w, y, x);
    CU_LAUNCHED(be);
}

static void cu_resize_backward(camo_backend *be, int N, int H, int W, int C, int P, int Q,
                               int align_corners, float scale_h, float scale_w, float *dx,
                               const float *dy) {
    size_t n = (size_t)N * P * Q * C, n_in = (size_t)N * H * W * C;
    if (!n || !n_in) return;
    if (cu_ctx(be)->deterministic)
        resize_bwd_gather_k CU_LAUNCH(be, n_in)(N, H, W, C, P, Q, align_corners, scale_h, scale_w,
                                             dx, dy);
    else
        resize_bwd_k CU_LAUNCH(be, n)(N, H, W, C, P, Q, align_corners, scale_h, scale_w, dx, dy);
    CU_LAUNCHED(be);
}

extern "C" void cuda_register_pool(camo_backend *be) {
    be->pool_forward = cu_pool_forward;
    be->pool_backward = cu_pool_backward;
    be->adaptive_avg_forward = cu_adaptive_avg_forward;
    be->adaptive_avg_backward = cu_adaptive_avg_backward;
    be->resize_forward = cu_resize_forward;
    be->resize_backward = cu_resize_backward;
}
