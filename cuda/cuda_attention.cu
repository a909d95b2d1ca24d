/* cuda_attention.cu: the CUDA twin of src/backend/cpu/cpu_attention.c: scaled dot-product
 * attention and cross-covariance attention (XCA), forward and backward (camo_attn_desc in
 * backend.h). Products are cuBLAS strided-batched sgemms: a head's slice of a token row is
 * D floats after the previous head's, and an image's rows L * ld after the previous image's,
 * so either the heads of one image or the images of one head are one batch. Softmax and its
 * backward are fused kernels with one warp per row; every sum is in double in a fixed order
 * (no atomics), formula for formula the CPU's, so results repeat bit for bit. */
#include "cuda_common.cuh"

#include <math.h>

#define XCA_EPS 1e-12   /* F.normalize's eps */
#define XCA_RMAX 1e12f  /* 1 / XCA_EPS: the inverse norm of a clamped channel */

/* Row-major C_i = alpha op(A_i) op(B_i) + beta C_i for i < batch, operands sA, sB, sC floats
 * apart: cu_gemm's operand swap (cuda_conv.cu) on cublasSgemmStridedBatched. */
static void gemm_batched(camo_backend *be, int ta, int tb, int M, int N, int K, float alpha,
                         const float *A, int lda, long long sA, const float *B, int ldb,
                         long long sB, float beta, float *C, int ldc, long long sC, int batch) {
    if (M <= 0 || N <= 0 || batch <= 0) return;
    cu_bind(be);
    CU_OP(be, CUBLAS_CHECK(cublasSgemmStridedBatched(
                  cu_ctx(be)->blas, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N,
                  N, M, K, &alpha, B, ldb, sB, A, lda, sA, &beta, C, ldc, sC, batch)));
}

/* Strides of an operand between images (n) and between heads (h), in floats. */
typedef struct { long long n, h; } nh_stride;

/* The gemm of every (image, head) pair of nimg images and nh heads: one batched call per
 * image over its heads, or per head over the images when there are more images (SegFormer's
 * first stage has one head). */
static void gemm_nh(camo_backend *be, int nimg, int nh, int ta, int tb, int M, int N, int K,
                    float alpha, const float *A, int lda, nh_stride a, const float *B, int ldb,
                    nh_stride b, float beta, float *C, int ldc, nh_stride c) {
    if (nimg > nh) {
        for (int h = 0; h < nh; h++)
            gemm_batched(be, ta, tb, M, N, K, alpha, A + h * a.h, lda, a.n, B + h * b.h, ldb, b.n,
                         beta, C + h * c.h, ldc, c.n, nimg);
    } else {
        for (int n = 0; n < nimg; n++)
            gemm_batched(be, ta, tb, M, N, K, alpha, A + n * a.n, lda, a.h, B + n * b.n, ldb, b.h,
                         beta, C + n * c.n, ldc, c.h, nh);
    }
}

__device__ static float att_warp_max(float v) {
    for (int o = 16; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* ---- scaled dot-product attention ---- */

/* each row of P (M, S) = its softmax, in place (cpu_attention.c softmax_row) */
__global__ static void att_softmax_k(int M, int S, float *P) {
    int lane = threadIdx.x % 32;
    CU_WARP_ROW_LOOP(m, M) {
        float *x = P + (size_t)m * S;
        float mx = -INFINITY;
        for (int c = lane; c < S; c += 32) mx = fmaxf(mx, x[c]);
        mx = att_warp_max(mx);
        double s = 0;
        for (int c = lane; c < S; c += 32) {
            float e = expf(x[c] - mx);
            x[c] = e;
            s += e;
        }
        float inv = (float)(1.0 / cu_warp_sum(s));
        for (int c = lane; c < S; c += 32) x[c] *= inv;
    }
}

/* each row of W (M, S) = scale * P (W - sum(W P)) (softmax_backward_row) */
__global__ static void att_softmax_bwd_k(int M, int S, float scale, float *W, const float *P) {
    int lane = threadIdx.x % 32;
    CU_WARP_ROW_LOOP(m, M) {
        float *w = W + (size_t)m * S;
        const float *p = P + (size_t)m * S;
        double dot = 0;
        for (int c = lane; c < S; c += 32) dot += (double)w[c] * p[c];
        float dd = (float)cu_warp_sum(dot);
        for (int c = lane; c < S; c += 32) w[c] = scale * (p[c] * (w[c] - dd));
    }
}

static void cu_attention_forward(camo_backend *be, const camo_attn_desc *d, float scale,
                                 float *out, float *P, const float *q, const float *k,
                                 const float *v) {
    int L = d->L, S = d->S, C = d->C, H = d->heads, D = C / H;
    if (d->N <= 0) return;
    long long LS = (long long)L * S;
    nh_stride sq = {(long long)L * d->ldq, D}, sk = {(long long)S * d->ldk, D};
    nh_stride sv = {(long long)S * d->ldv, D}, sp = {H * LS, LS}, so = {(long long)L * C, D};
    gemm_nh(be, d->N, H, 0, 1, L, S, D, scale, q, d->ldq, sq, k, d->ldk, sk, 0.0f, P, S, sp);
    att_softmax_k CU_LAUNCH_ROWS(be, (size_t)d->N * H * L)(d->N * H * L, S, P);
    CU_LAUNCHED(be);
    gemm_nh(be, d->N, H, 0, 0, L, D, S, 1.0f, P, S, sp, v, d->ldv, sv, 0.0f, out, C, so);
}

/* One image at a time, its heads batched (work holds one image's dP / dS): the order of the
 * CPU's updates (dq, then dv, then dk), so aliased gradients add up alike. */
static void cu_attention_backward(camo_backend *be, const camo_attn_desc *d, float scale,
                                  float *dq, float *dk, float *dv, float *work,
                                  const float *dout, const float *q, const float *k,
                                  const float *v, const float *P) {
    int L = d->L, S = d->S, C = d->C, H = d->heads, D = C / H;
    long long LS = (long long)L * S;
    for (int n = 0; n < d->N; n++) {
        size_t oq = (size_t)n * L * d->ldq, ok = (size_t)n * S * d->ldk;
        size_t ov = (size_t)n * S * d->ldv, oo = (size_t)n * L * C;
        const float *Pn = P + (size_t)n * H * LS;
        gemm_batched(be, 0, 1, L, S, D, 1.0f, dout + oo, C, D, v + ov, d->ldv, D, 0.0f, work, S,
                     LS, H);
        att_softmax_bwd_k CU_LAUNCH_ROWS(be, (size_t)H * L)(H * L, S, scale, work, Pn);
        CU_LAUNCHED(be);
        gemm_batched(be, 0, 0, L, D, S, 1.0f, work, S, LS, k + ok, d->ldk, D, 1.0f, dq + oq,
                     d->ldq, D, H);
        gemm_batched(be, 1, 0, S, D, L, 1.0f, Pn, S, LS, dout + oo, C, D, 1.0f, dv + ov, d->ldv,
                     D, H);
        gemm_batched(be, 1, 0, S, D, L, 1.0f, work, S, LS, q + oq, d->ldq, D, 1.0f, dk + ok,
                     d->ldk, D, H);
    }
}

/* ---- cross-covariance attention ---- */

/* r (N, C) = 1 / max(||x[:, c]||, eps) over each image's L rows; blockIdx.z 0: q -> rq,
 * 1: k -> rk. Block (32 channels, 8 row phases): each thread sums every 8th row in double,
 * the 8 partial sums are added in order. */
__global__ static void xca_norms_k(int L, int C, const float *q, int ldq, const float *k,
                                   int ldk, float *rq, float *rk) {
    __shared__ double sh[8][32];
    int c = blockIdx.x * 32 + threadIdx.x, n = blockIdx.y;
    const float *x = blockIdx.z ? k : q;
    int ld = blockIdx.z ? ldk : ldq;
    double s = 0;
    if (c < C)
        for (int t = threadIdx.y; t < L; t += 8) {
            float v = x[((size_t)n * L + t) * ld + c];
            s += (double)v * v;
        }
    sh[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y != 0 || c >= C) return;
    double a = 0;
    for (int y = 0; y < 8; y++) a += sh[y][threadIdx.x];
    (blockIdx.z ? rk : rq)[(size_t)n * C + c] = (float)(1.0 / fmax(sqrt(a), XCA_EPS));
}

/* Row m = (image n, head h, channel c) of G and P (N, heads, D, D): G = q^T k (from the
 * gemm) times rq[c] rk[c'], the cosines; P = softmax(temp[h] * G) */
__global__ static void xca_softmax_k(int M, int C, int D, float *G, float *P, const float *rq,
                                     const float *rk, const float *temp) {
    int lane = threadIdx.x % 32;
    CU_WARP_ROW_LOOP(m, M) {
        int n = m / C, h = m % C / D;
        float *g = G + (size_t)m * D, *p = P + (size_t)m * D;
        const float *rkh = rk + (size_t)n * C + h * D;
        float rqc = rq[m], t = temp[h], mx = -INFINITY;
        for (int c = lane; c < D; c += 32) {
            g[c] = g[c] * rqc * rkh[c];
            p[c] = t * g[c];
            mx = fmaxf(mx, p[c]);
        }
        mx = att_warp_max(mx);
        double s = 0;
        for (int c = lane; c < D; c += 32) {
            float e = expf(p[c] - mx);
            p[c] = e;
            s += e;
        }
        float inv = (float)(1.0 / cu_warp_sum(s));
        for (int c = lane; c < D; c += 32) p[c] *= inv;
    }
}

/* Row m of W = dP -> dG = temp * dZ; tp[m] = sum dZ * G (dtemp's share); aq[m] = -rq^2
 * sum(dG G), 0 for a clamped norm (cpu_attention.c xca_row_backward) */
__global__ static void xca_bwd_rows_k(int M, int C, int D, float *W, const float *P,
                                      const float *G, const float *rq, const float *temp,
                                      float *tp, float *aq) {
    int lane = threadIdx.x % 32;
    CU_WARP_ROW_LOOP(m, M) {
        float *w = W + (size_t)m * D;
        const float *p = P + (size_t)m * D, *g = G + (size_t)m * D;
        float t = temp[m % C / D];
        double dot = 0, st = 0, sg = 0;
        for (int c = lane; c < D; c += 32) dot += (double)w[c] * p[c];
        float dd = (float)cu_warp_sum(dot);
        for (int c = lane; c < D; c += 32) {
            float dz = p[c] * (w[c] - dd);
            st += (double)dz * g[c];
            float dg = t * dz;
            w[c] = dg;
            sg += (double)dg * g[c];
        }
        st = cu_warp_sum(st);
        sg = cu_warp_sum(sg);
        if (lane == 0) {
            float r = rq[m];
            tp[m] = (float)st;
            aq[m] = r < XCA_RMAX ? -r * r * (float)sg : 0.0f;
        }
    }
}

/* Column j = (image n, head h, channel c2) of dG: ak[j] as aq for k, then the column times
 * rq[c] rk[c2] (xca_col_backward) */
__global__ static void xca_bwd_cols_k(int NC, int C, int D, float *W, const float *G,
                                      const float *rq, const float *rk, float *ak) {
    CU_GRID_LOOP(j, (size_t)NC) {
        size_t n = j / C;
        int h = (int)(j % C) / D, c2 = (int)(j % C) % D;
        size_t base = ((size_t)n * C + (size_t)h * D) * D + c2; /* element (0, c2) */
        const float *rqh = rq + n * C + (size_t)h * D;
        float *w = W + base, r = rk[j];
        const float *g = G + base;
        double s = 0;
        for (int c = 0; c < D; c++) s += (double)w[(size_t)c * D] * g[(size_t)c * D];
        ak[j] = r < XCA_RMAX ? -r * r * (float)s : 0.0f;
        for (int c = 0; c < D; c++) w[(size_t)c * D] = w[(size_t)c * D] * rqh[c] * r;
    }
}

/* dq += q * aq[image, channel], then dk += k * ak (per element in this order: the CPU's) */
__global__ static void xca_diag_k(int L, int C, size_t n_el, float *dq, int ldq, float *dk,
                                  int ldk, const float *q, const float *k, const float *aq,
                                  const float *ak) {
    CU_GRID_LOOP(i, n_el) {
        size_t row = i / C, a = row / L * C + i % C;
        int c = (int)(i % C);
        dq[row * ldq + c] += q[row * ldq + c] * aq[a];
        dk[row * ldk + c] += k[row * ldk + c] * ak[a];
    }
}

/* dtemp[h] += the rows' shares, images then channels in order */
__global__ static void xca_dtemp_k(int N, int C, int D, int heads, const float *tp,
                                   float *dtemp) {
    int h = blockIdx.x * blockDim.x + threadIdx.x;
    if (h >= heads) return;
    double s = 0;
    for (int n = 0; n < N; n++)
        for (int c = 0; c < D; c++) s += tp[(size_t)n * C + h * D + c];
    dtemp[h] += (float)s;
}

static void cu_xca_forward(camo_backend *be, const camo_attn_desc *d, float *out, float *P,
                           float *G, float *rq, float *rk, const float *q, const float *k,
                           const float *v, const float *temp) {
    int N = d->N, L = d->L, C = d->C, H = d->heads, D = C / H;
    if (N <= 0) return;
    dim3 grid((C + 31) / 32, N, 2), block(32, 8);
    xca_norms_k<<<grid, block, 0, cu_stream(be)>>>(L, C, q, d->ldq, k, d->ldk, rq, rk);
    CU_LAUNCHED(be);
    long long DD = (long long)D * D;
    nh_stride sq = {(long long)L * d->ldq, D}, sk = {(long long)L * d->ldk, D};
    nh_stride sv = {(long long)L * d->ldv, D}, sg = {(long long)C * D, DD};
    nh_stride so = {(long long)L * C, D};
    gemm_nh(be, N, H, 1, 0, D, D, L, 1.0f, q, d->ldq, sq, k, d->ldk, sk, 0.0f, G, D, sg);
    xca_softmax_k CU_LAUNCH_ROWS(be, (size_t)N * C)(N * C, C, D, G, P, rq, rk, temp);
    CU_LAUNCHED(be);
    gemm_nh(be, N, H, 0, 1, L, D, D, 1.0f, v, d->ldv, sv, P, D, sg, 0.0f, out, C, so);
}

/* work: W (N, heads, D, D) | aq (N, C) | ak (N, C) | tp (N, C), as on the CPU. Update order
 * per element: dv; dq, dk (products); dq, dk (diagonal terms): the CPU's. */
static void cu_xca_backward(camo_backend *be, const camo_attn_desc *d, float *dq, float *dk,
                            float *dv, float *dtemp, float *work, const float *dout,
                            const float *q, const float *k, const float *v, const float *temp,
                            const float *P, const float *G, const float *rq, const float *rk) {
    int N = d->N, L = d->L, C = d->C, H = d->heads, D = C / H;
    if (N <= 0) return;
    float *W = work, *aq = work + (size_t)N * C * D, *ak = aq + (size_t)N * C;
    float *tp = ak + (size_t)N * C;
    long long DD = (long long)D * D;
    nh_stride sq = {(long long)L * d->ldq, D}, sk = {(long long)L * d->ldk, D};
    nh_stride sv = {(long long)L * d->ldv, D}, sg = {(long long)C * D, DD};
    nh_stride so = {(long long)L * C, D};
    gemm_nh(be, N, H, 1, 0, D, D, L, 1.0f, dout, C, so, v, d->ldv, sv, 0.0f, W, D, sg);
    gemm_nh(be, N, H, 0, 0, L, D, D, 1.0f, dout, C, so, P, D, sg, 1.0f, dv, d->ldv, sv);
    xca_bwd_rows_k CU_LAUNCH_ROWS(be, (size_t)N * C)(N * C, C, D, W, P, G, rq, temp, tp, aq);
    CU_LAUNCHED(be);
    xca_bwd_cols_k CU_LAUNCH(be, (size_t)N * C)(N * C, C, D, W, G, rq, rk, ak);
    CU_LAUNCHED(be);
    gemm_nh(be, N, H, 0, 1, L, D, D, 1.0f, k, d->ldk, sk, W, D, sg, 1.0f, dq, d->ldq, sq);
    gemm_nh(be, N, H, 0, 0, L, D, D, 1.0f, q, d->ldq, sq, W, D, sg, 1.0f, dk, d->ldk, sk);
    size_t n_el = (size_t)N * L * C;
    xca_diag_k CU_LAUNCH(be, n_el)(L, C, n_el, dq, d->ldq, dk, d->ldk, q, k, aq, ak);
    CU_LAUNCHED(be);
    xca_dtemp_k<<<(H + 31) / 32, 32, 0, cu_stream(be)>>>(N, C, D, H, tp, dtemp);
    CU_LAUNCHED(be);
}

extern "C" void cuda_register_attention(camo_backend *be) {
    be->attention_forward = cu_attention_forward;
    be->attention_backward = cu_attention_backward;
    be->xca_forward = cu_xca_forward;
    be->xca_backward = cu_xca_backward;
}
