/* conv_cudnn.cu: gemm on cuBLAS and the three convolution ops on cuDNN (NHWC activations,
 * NHWC "KRSC" filters = our OHWI weights). One plan per (op, geometry, precision,
 * train.deterministic) holds the descriptors and the algorithm picked once by cuDNN's
 * heuristics; plans and workspaces are cached, so a steady-state step creates nothing.
 * fp32 mode forbids TF32 (CUDNN_FMA_MATH) so results match the CPU backend to 1e-4; AMP
 * mode converts operands to bf16/fp16 scratch and runs tensor-core algorithms with fp32
 * accumulation (docs/cuda.md). A geometry cuDNN has no algorithm for runs on a direct fp32
 * kernel instead of failing. */
#include "cuda_common.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <string.h>

/* ---- gemm ---- */

/* Row-major C (M,N) = alpha op(A) op(B) + beta C is column-major C^T = op(B)^T op(A)^T:
 * cuBLAS gets the operands swapped, with the same transpose flags. */
static void cu_gemm(camo_backend *be, int trans_a, int trans_b, int M, int N, int K,
                    float alpha, const float *A, int lda, const float *B, int ldb, float beta,
                    float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    cu_bind(be);
    CU_OP(be, CUBLAS_CHECK(cublasSgemm(cu_ctx(be)->blas, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                                       trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K, &alpha, B,
                                       ldb, A, lda, &beta, C, ldc)));
}

/* ---- plans ---- */

typedef enum { CONV_FWD, CONV_BWD_DATA, CONV_BWD_FILTER } conv_kind;

typedef struct conv_key {
    camo_conv_desc d;
    int kind, amp;
    int det; /* train.deterministic: only CUDNN_DETERMINISTIC algorithms (else direct) */
} conv_key;

struct conv_plan {
    conv_key key;
    cudnnTensorDescriptor_t x, y;
    cudnnFilterDescriptor_t w;
    cudnnConvolutionDescriptor_t conv;
    int algo;       /* cudnnConvolution{Fwd,BwdData,BwdFilter}Algo_t of key.kind */
    cudnnMathType_t math; /* math type the descriptor runs with */
    size_t ws;      /* workspace bytes of that algorithm */
    int direct;     /* cuDNN had no algorithm: direct fp32 kernel */
};

#define CONV_WS_LIMIT ((size_t)1 << 30) /* ignore algorithms wanting more than 1 GiB */

/* Which heuristic results a plan may use. fp32: entries reported with FMA math first, then
 * those reported with DEFAULT math; both then run with the descriptor in CUDNN_FMA_MATH,
 * which restricts cuDNN to FMA kernels: no TF32 (it would break 1e-4 parity with the CPU)
 * whatever the GPU. (Some cuDNN versions report DEFAULT for plain FMA algorithms; taking only
 * FMA entries could leave every convolution on the slow direct kernel.) Tensor-op entries are
 * never taken in fp32. AMP: anything, in cuDNN's ranking, with the reported math type. */
static int math_ok(int fp32, int pass, cudnnMathType_t m) {
    if (!fp32) return pass == 0;
    return pass == 0 ? m == CUDNN_FMA_MATH : m == CUDNN_DEFAULT_MATH;
}

/* A failed heuristic query, or no usable entry, is not fatal: the plan runs on the direct
 * kernel (with a warning). */
static int pick_failed(conv_plan *p, cudnnStatus_t st, const char *what) {
    const camo_conv_desc *d = &p->key.d;
    camo_warn("cuDNN %s failed for %dx%dx%d -> %d, kernel %dx%d, groups %d, %s (%s): using "
              "the direct kernel for this shape", what, d->H, d->W, d->C, d->K, d->R, d->S,
              d->groups, p->key.amp ? "half" : "fp32", cudnnGetErrorString(st));
    p->direct = 1;
    return 0;
}

/* One heuristic entry, whatever the op (the three perf structs share these fields). */
typedef struct algo_choice {
    int algo;
    cudnnStatus_t status;
    size_t memory;
    cudnnDeterminism_t determinism;
    cudnnMathType_t math;
} algo_choice;

/* cuDNN may list an algorithm once per math type: room for every pair */
#define MAX_CHOICES (2 * CUDNN_CONVOLUTION_FWD_ALGO_COUNT + 2 * CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT)

#define COPY_CHOICES(perf, n, out)                                                            \
    for (int i_ = 0; i_ < (n); i_++)                                                          \
        (out)[i_] = (algo_choice){(int)(perf)[i_].algo, (perf)[i_].status, (perf)[i_].memory, \
                                  (perf)[i_].determinism, (perf)[i_].mathType};

/* cuDNN's ranked entries for the plan's op; *n = how many (0 on failure) */
static cudnnStatus_t plan_heuristics(cudnnHandle_t h, conv_plan *p, algo_choice *c, int *n) {
    cudnnStatus_t st;
    *n = 0;
    if (p->key.kind == CONV_FWD) {
        cudnnConvolutionFwdAlgoPerf_t perf[MAX_CHOICES];
        st = cudnnGetConvolutionForwardAlgorithm_v7(h, p->x, p->w, p->conv, p->y, MAX_CHOICES,
                                                    n, perf);
        COPY_CHOICES(perf, *n, c);
    } else if (p->key.kind == CONV_BWD_DATA) {
        cudnnConvolutionBwdDataAlgoPerf_t perf[MAX_CHOICES];
        st = cudnnGetConvolutionBackwardDataAlgorithm_v7(h, p->w, p->y, p->conv, p->x,
                                                         MAX_CHOICES, n, perf);
        COPY_CHOICES(perf, *n, c);
    } else {
        cudnnConvolutionBwdFilterAlgoPerf_t perf[MAX_CHOICES];
        st = cudnnGetConvolutionBackwardFilterAlgorithm_v7(h, p->x, p->y, p->conv, p->w,
                                                           MAX_CHOICES, n, perf);
        COPY_CHOICES(perf, *n, c);
    }
    if (st != CUDNN_STATUS_SUCCESS) *n = 0;
    return st;
}

/* workspace of `algo` with the descriptor's current math type */
static cudnnStatus_t plan_workspace(cudnnHandle_t h, conv_plan *p, int algo, size_t *ws) {
    if (p->key.kind == CONV_FWD)
        return cudnnGetConvolutionForwardWorkspaceSize(h, p->x, p->w, p->conv, p->y,
                                                       (cudnnConvolutionFwdAlgo_t)algo, ws);
    if (p->key.kind == CONV_BWD_DATA)
        return cudnnGetConvolutionBackwardDataWorkspaceSize(
            h, p->w, p->y, p->conv, p->x, (cudnnConvolutionBwdDataAlgo_t)algo, ws);
    return cudnnGetConvolutionBackwardFilterWorkspaceSize(
        h, p->x, p->y, p->conv, p->w, (cudnnConvolutionBwdFilterAlgo_t)algo, ws);
}

/* The first heuristic entry, in cuDNN's ranking and math_ok's passes, that works, fits the
 * limit, is CUDNN_DETERMINISTIC when the plan's key.det (train.deterministic) asks for it
 * (backward ALGO_0 / ALGO_3 of the filter and ALGO_0 of the data accumulate with atomics),
 * and whose workspace query succeeds with the math type the plan runs with (in fp32 that is
 * FMA, which may differ from the entry's: an entry cuDNN cannot run that way is skipped, not
 * fatal). None left: the direct kernel, which is deterministic (one thread per output
 * element, fixed loop order, no atomics), with a warning. */
static int plan_pick(cudnnHandle_t h, conv_plan *p) {
    int fp32 = p->key.amp == CAMO_AMP_OFF, n = 0;
    algo_choice c[MAX_CHOICES];
    p->direct = 1;
    cudnnStatus_t st = plan_heuristics(h, p, c, &n);
    if (st != CUDNN_STATUS_SUCCESS) return pick_failed(p, st, "heuristics query");
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < n; i++) {
            size_t ws = 0;
            cudnnMathType_t math = fp32 ? CUDNN_FMA_MATH : c[i].math;
            if (c[i].status != CUDNN_STATUS_SUCCESS || c[i].memory > CONV_WS_LIMIT ||
                !math_ok(fp32, pass, c[i].math) ||
                (p->key.det && c[i].determinism != CUDNN_DETERMINISTIC))
                continue;
            if (cudnnSetConvolutionMathType(p->conv, math) != CUDNN_STATUS_SUCCESS ||
                plan_workspace(h, p, c[i].algo, &ws) != CUDNN_STATUS_SUCCESS ||
                ws > CONV_WS_LIMIT)
                continue;
            p->algo = c[i].algo;
            p->math = math;
            p->ws = ws;
            p->direct = 0;
            return 0;
        }
    }
    return pick_failed(p, CUDNN_STATUS_NOT_SUPPORTED, "algorithm choice (no usable entry)");
}

static cudnnDataType_t amp_dtype(int amp) {
    return amp == CAMO_AMP_BF16 ? CUDNN_DATA_BFLOAT16
                                : amp == CAMO_AMP_FP16 ? CUDNN_DATA_HALF : CUDNN_DATA_FLOAT;
}

static int plan_describe(cudnnHandle_t h, conv_plan *p) {
    const camo_conv_desc *d = &p->key.d;
    cudnnDataType_t t = amp_dtype(p->key.amp);
    if (CUDNN_CHECK(cudnnCreateTensorDescriptor(&p->x)) ||
        CUDNN_CHECK(cudnnCreateTensorDescriptor(&p->y)) ||
        CUDNN_CHECK(cudnnCreateFilterDescriptor(&p->w)) ||
        CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&p->conv)))
        return -1;
    if (CUDNN_CHECK(cudnnSetTensor4dDescriptor(p->x, CUDNN_TENSOR_NHWC, t, d->N, d->C, d->H,
                                               d->W)) ||
        CUDNN_CHECK(cudnnSetTensor4dDescriptor(p->y, CUDNN_TENSOR_NHWC, t, d->N, d->K, d->P,
                                               d->Q)) ||
        CUDNN_CHECK(cudnnSetFilter4dDescriptor(p->w, t, CUDNN_TENSOR_NHWC, d->K,
                                               d->C / d->groups, d->R, d->S)) ||
        CUDNN_CHECK(cudnnSetConvolution2dDescriptor(p->conv, d->pad_h, d->pad_w, d->stride_h,
                                                    d->stride_w, d->dil_h, d->dil_w,
                                                    CUDNN_CROSS_CORRELATION,
                                                    CUDNN_DATA_FLOAT)) ||
        CUDNN_CHECK(cudnnSetConvolutionGroupCount(p->conv, d->groups)) ||
        CUDNN_CHECK(cudnnSetConvolutionMathType(
            p->conv, p->key.amp ? CUDNN_TENSOR_OP_MATH : CUDNN_FMA_MATH)))
        return -1;
    return plan_pick(h, p);
}

static void plan_release(conv_plan *p) {
    if (p->x) cudnnDestroyTensorDescriptor(p->x);
    if (p->y) cudnnDestroyTensorDescriptor(p->y);
    if (p->w) cudnnDestroyFilterDescriptor(p->w);
    if (p->conv) cudnnDestroyConvolutionDescriptor(p->conv);
}

extern "C" void cuda_conv_free_plans(camo_backend *be) {
    cuda_ctx *ctx = cu_ctx(be);
    for (int i = 0; i < ctx->n_plans; i++) plan_release(&ctx->plans[i]);
    free(ctx->plans);
    ctx->plans = NULL;
    ctx->n_plans = ctx->cap_plans = 0;
}

/* The cached plan for (kind, d, amp, deterministic), made on first use; NULL on failure. A
 * plan whose half-precision set-up has no algorithm is tried again in fp32 by the caller.
 * The backend's deterministic flag is part of the key, so turning it on or off later never
 * reuses a plan picked under the other setting. */
static conv_plan *plan_get(camo_backend *be, const camo_conv_desc *d, conv_kind kind, int amp) {
    cuda_ctx *ctx = cu_ctx(be);
    conv_key key;
    memset(&key, 0, sizeof key);
    key.d = *d;
    key.kind = kind;
    key.amp = amp;
    key.det = ctx->deterministic;
    for (int i = 0; i < ctx->n_plans; i++)
        if (!memcmp(&ctx->plans[i].key, &key, sizeof key)) return &ctx->plans[i];
    if (ctx->n_plans == ctx->cap_plans) {
        ctx->cap_plans = ctx->cap_plans ? 2 * ctx->cap_plans : 64;
        ctx->plans = (conv_plan *)camo_realloc(ctx->plans, ctx->cap_plans * sizeof(conv_plan));
    }
    conv_plan *p = &ctx->plans[ctx->n_plans];
    memset(p, 0, sizeof *p);
    p->key = key;
    if (plan_describe(ctx->dnn, p)) {
        if (amp == CAMO_AMP_OFF) {
            plan_release(p);
            cu_note_failure(be);
            return NULL;
        }
        /* a half-precision set-up cuDNN rejects outright: cache it as "no algorithm", so
         * this shape runs in fp32 (plan_for) instead of failing the backend */
        camo_warn("cuDNN: no half-precision set-up for this convolution (%s); it runs in fp32",
                  camo_last_error());
        p->direct = 1;
    }
    ctx->n_plans++;
    return p;
}

/* ---- direct fp32 kernels (fallback when cuDNN has no algorithm) ---- */

__device__ static int out_index(int h, int r, int stride, int pad, int dil, int P) {
    int t = h + pad - r * dil;
    if (t < 0 || t % stride) return -1;
    t /= stride;
    return t < P ? t : -1;
}

__global__ static void direct_fwd(camo_conv_desc d, float *out, const float *in,
                                  const float *w) {
    int Cg = d.C / d.groups, Kg = d.K / d.groups;
    size_t n_out = (size_t)d.N * d.P * d.Q * d.K;
    CU_GRID_LOOP(i, n_out) {
        int k = (int)(i % d.K), q = (int)(i / d.K % d.Q), p = (int)(i / d.K / d.Q % d.P);
        int n = (int)(i / ((size_t)d.K * d.Q * d.P)), g = k / Kg;
        float acc = 0;
        for (int r = 0; r < d.R; r++) {
            int h = p * d.stride_h - d.pad_h + r * d.dil_h;
            if (h < 0 || h >= d.H) continue;
            for (int s = 0; s < d.S; s++) {
                int x = q * d.stride_w - d.pad_w + s * d.dil_w;
                if (x < 0 || x >= d.W) continue;
                const float *ip = in + (((size_t)n * d.H + h) * d.W + x) * d.C + g * Cg;
                const float *wp = w + (((size_t)k * d.R + r) * d.S + s) * Cg;
                for (int c = 0; c < Cg; c++) acc += ip[c] * wp[c];
            }
        }
        out[i] = acc;
    }
}

__global__ static void direct_bwd_data(camo_conv_desc d, float *din, const float *dout,
                                       const float *w) {
    int Cg = d.C / d.groups, Kg = d.K / d.groups;
    size_t n_in = (size_t)d.N * d.H * d.W * d.C;
    CU_GRID_LOOP(i, n_in) {
        int c = (int)(i % d.C), x = (int)(i / d.C % d.W), h = (int)(i / d.C / d.W % d.H);
        int n = (int)(i / ((size_t)d.C * d.W * d.H)), g = c / Cg, cc = c % Cg;
        float acc = 0;
        for (int r = 0; r < d.R; r++) {
            int p = out_index(h, r, d.stride_h, d.pad_h, d.dil_h, d.P);
            if (p < 0) continue;
            for (int s = 0; s < d.S; s++) {
                int q = out_index(x, s, d.stride_w, d.pad_w, d.dil_w, d.Q);
                if (q < 0) continue;
                const float *dy = dout + (((size_t)n * d.P + p) * d.Q + q) * d.K;
                for (int k = g * Kg; k < (g + 1) * Kg; k++)
                    acc += dy[k] * w[(((size_t)k * d.R + r) * d.S + s) * Cg + cc];
            }
        }
        din[i] += acc;
    }
}

__global__ static void direct_bwd_filter(camo_conv_desc d, float *dw, const float *dout,
                                         const float *in) {
    int Cg = d.C / d.groups, Kg = d.K / d.groups;
    size_t n_w = (size_t)d.K * d.R * d.S * Cg;
    CU_GRID_LOOP(i, n_w) {
        int c = (int)(i % Cg), s = (int)(i / Cg % d.S), r = (int)(i / Cg / d.S % d.R);
        int k = (int)(i / ((size_t)Cg * d.S * d.R)), g = k / Kg;
        double acc = 0;
        for (int n = 0; n < d.N; n++)
            for (int p = 0; p < d.P; p++) {
                int h = p * d.stride_h - d.pad_h + r * d.dil_h;
                if (h < 0 || h >= d.H) continue;
                for (int q = 0; q < d.Q; q++) {
                    int x = q * d.stride_w - d.pad_w + s * d.dil_w;
                    if (x < 0 || x >= d.W) continue;
                    acc += (double)dout[(((size_t)n * d.P + p) * d.Q + q) * d.K + k] *
                           in[(((size_t)n * d.H + h) * d.W + x) * d.C + g * Cg + c];
                }
            }
        dw[i] += (float)acc;
    }
}

/* ---- precision conversion for AMP ---- */

template <class T> __device__ T to_half(float x);
template <> __device__ __nv_bfloat16 to_half<__nv_bfloat16>(float x) { return __float2bfloat16(x); }
template <> __device__ __half to_half<__half>(float x) { return __float2half(x); }
__device__ static float from_half(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ static float from_half(__half x) { return __half2float(x); }

template <class T> __global__ static void f32_to_half(size_t n, T *y, const float *x) {
    CU_GRID_LOOP(i, n) y[i] = to_half<T>(x[i]);
}
/* y = acc ? y + x : x */
template <class T> __global__ static void half_to_f32(size_t n, float *y, const T *x, int acc) {
    CU_GRID_LOOP(i, n) y[i] = acc ? y[i] + from_half(x[i]) : from_half(x[i]);
}

static void to_h(camo_backend *be, int amp, size_t n, void *y, const float *x) {
    if (amp == CAMO_AMP_BF16)
        f32_to_half<<<cu_blocks(n), CU_THREADS, 0, cu_stream(be)>>>(n, (__nv_bfloat16 *)y, x);
    else
        f32_to_half<<<cu_blocks(n), CU_THREADS, 0, cu_stream(be)>>>(n, (__half *)y, x);
    CU_LAUNCHED(be);
}

static void from_h(camo_backend *be, int amp, size_t n, float *y, const void *x, int acc) {
    if (amp == CAMO_AMP_BF16)
        half_to_f32<<<cu_blocks(n), CU_THREADS, 0, cu_stream(be)>>>(
            n, y, (const __nv_bfloat16 *)x, acc);
    else
        half_to_f32<<<cu_blocks(n), CU_THREADS, 0, cu_stream(be)>>>(n, y, (const __half *)x,
                                                                    acc);
    CU_LAUNCHED(be);
}

/* ---- bias ---- */

__global__ static void add_bias_k(size_t M, int K, float *out, const float *bias) {
    CU_GRID_LOOP(i, M * K) out[i] += bias[i % K];
}

/* ---- the three ops ---- */

typedef struct conv_sizes { size_t x, w, y; } conv_sizes; /* element counts */

static conv_sizes sizes_of(const camo_conv_desc *d) {
    conv_sizes s = {(size_t)d->N * d->H * d->W * d->C,
                    (size_t)d->K * d->R * d->S * (d->C / d->groups),
                    (size_t)d->N * d->P * d->Q * d->K};
    return s;
}

/* The plan to run: the AMP one when it has an algorithm, else fp32 (cuDNN or direct). */
static conv_plan *plan_for(camo_backend *be, const camo_conv_desc *d, conv_kind kind) {
    int amp = cu_ctx(be)->amp;
    if (amp != CAMO_AMP_OFF) {
        conv_plan *p = plan_get(be, d, kind, amp);
        if (!p || !p->direct) return p;
    }
    return plan_get(be, d, kind, CAMO_AMP_OFF);
}

static void *dnn_ws(camo_backend *be, size_t bytes) {
    cuda_ctx *ctx = cu_ctx(be);
    if (!bytes) return NULL;
    return cu_grow(be, &ctx->dnn_ws, &ctx->dnn_ws_cap, bytes);
}

/* Half scratch for the three operands (2 bytes an element, 256-byte aligned pieces). */
static char *half_ws(camo_backend *be, conv_sizes s, void **x, void **w, void **y) {
    cuda_ctx *ctx = cu_ctx(be);
    size_t bx = (s.x * 2 + 255) / 256 * 256, bw = (s.w * 2 + 255) / 256 * 256;
    char *base = (char *)cu_grow(be, &ctx->half_ws, &ctx->half_ws_cap, bx + bw + s.y * 2 + 256);
    if (!base) return NULL;
    *x = base;
    *w = base + bx;
    *y = base + bx + bw;
    return base;
}

/* After a cuDNN convolution call: 0 = it ran; 1 = cuDNN cannot run this set-up (a
 * NOT_SUPPORTED status): the plan switches to the direct kernel, which the caller runs now;
 * -1 = a real failure (recorded, backend failed). */
static int conv_ran(camo_backend *be, conv_plan *p, cudnnStatus_t st, const char *what) {
    if (st == CUDNN_STATUS_SUCCESS) return 0;
    if ((int)st >= CUDNN_STATUS_NOT_SUPPORTED && (int)st < CUDNN_STATUS_INTERNAL_ERROR) {
        const camo_conv_desc *d = &p->key.d;
        camo_warn("cuDNN cannot run %s for %dx%dx%d -> %d, kernel %dx%d, groups %d (%s): "
                  "using the direct kernel for this shape", what, d->H, d->W, d->C, d->K, d->R,
                  d->S, d->groups, cudnnGetErrorString(st));
        p->direct = 1;
        return 1;
    }
    cu_check_cudnn(st, __FILE__, __LINE__, what);
    cu_note_failure(be);
    return -1;
}

static void direct_forward(camo_backend *be, const camo_conv_desc *d, float *out,
                           const float *in, const float *w) {
    size_t n = (size_t)d->N * d->P * d->Q * d->K;
    direct_fwd<<<cu_blocks(n), CU_THREADS, 0, cu_stream(be)>>>(*d, out, in, w);
    CU_LAUNCHED(be);
}

/* cuDNN: 0 ran, 1 the caller must run the direct kernel, -1 failed */
static int dnn_forward(camo_backend *be, conv_plan *p, float *out, const float *in,
                       const float *w) {
    const float one = 1, zero = 0;
    conv_sizes s = sizes_of(&p->key.d);
    void *ws = dnn_ws(be, p->ws), *xh = NULL, *wh = NULL, *yh = NULL;
    cudnnConvolutionFwdAlgo_t algo = (cudnnConvolutionFwdAlgo_t)p->algo;
    if (p->ws && !ws) return -1;
    if (!p->key.amp)
        return conv_ran(be, p, cudnnConvolutionForward(cu_ctx(be)->dnn, &one, p->x, in, p->w, w,
                                                       p->conv, algo, ws, p->ws, &zero, p->y,
                                                       out), "cudnnConvolutionForward");
    if (!half_ws(be, s, &xh, &wh, &yh)) return -1;
    to_h(be, p->key.amp, s.x, xh, in);
    to_h(be, p->key.amp, s.w, wh, w);
    int rc = conv_ran(be, p, cudnnConvolutionForward(cu_ctx(be)->dnn, &one, p->x, xh, p->w, wh,
                                                     p->conv, algo, ws, p->ws, &zero, p->y, yh),
                      "cudnnConvolutionForward (half)");
    if (rc == 0) from_h(be, p->key.amp, s.y, out, yh, 0);
    return rc;
}

static void cu_conv2d_forward(camo_backend *be, const camo_conv_desc *d, float *out,
                              const float *in, const float *w, const float *bias) {
    cu_bind(be);
    if (d->N <= 0) return; /* a replica with an empty slice: nothing to do */
    conv_plan *p = plan_for(be, d, CONV_FWD);
    if (!p) return;
    int rc = p->direct ? 1 : dnn_forward(be, p, out, in, w);
    if (rc < 0) return;
    if (rc == 1) direct_forward(be, d, out, in, w);
    if (bias) {
        size_t M = (size_t)d->N * d->P * d->Q;
        add_bias_k<<<cu_blocks(M * d->K), CU_THREADS, 0, cu_stream(be)>>>(M, d->K, out, bias);
        CU_LAUNCHED(be);
    }
}

/* din += ...: cuDNN blends with beta = 1 in fp32; AMP adds the half result in fp32 */
static int dnn_backward_data(camo_backend *be, conv_plan *p, float *din, const float *dout,
                             const float *w) {
    const float one = 1, zero = 0;
    conv_sizes s = sizes_of(&p->key.d);
    void *ws = dnn_ws(be, p->ws), *xh = NULL, *wh = NULL, *yh = NULL;
    cudnnConvolutionBwdDataAlgo_t algo = (cudnnConvolutionBwdDataAlgo_t)p->algo;
    if (p->ws && !ws) return -1;
    if (!p->key.amp)
        return conv_ran(be, p, cudnnConvolutionBackwardData(cu_ctx(be)->dnn, &one, p->w, w, p->y,
                                                            dout, p->conv, algo, ws, p->ws, &one,
                                                            p->x, din),
                        "cudnnConvolutionBackwardData");
    if (!half_ws(be, s, &xh, &wh, &yh)) return -1;
    to_h(be, p->key.amp, s.y, yh, dout);
    to_h(be, p->key.amp, s.w, wh, w);
    int rc = conv_ran(be, p, cudnnConvolutionBackwardData(cu_ctx(be)->dnn, &one, p->w, wh, p->y,
                                                          yh, p->conv, algo, ws, p->ws, &zero,
                                                          p->x, xh),
                      "cudnnConvolutionBackwardData (half)");
    if (rc == 0) from_h(be, p->key.amp, s.x, din, xh, 1);
    return rc;
}

static void cu_conv2d_backward_data(camo_backend *be, const camo_conv_desc *d, float *din,
                                    const float *dout, const float *w) {
    cu_bind(be);
    if (d->N <= 0) return; /* a replica with an empty slice: nothing to do */
    conv_plan *p = plan_for(be, d, CONV_BWD_DATA);
    if (!p) return;
    if ((p->direct ? 1 : dnn_backward_data(be, p, din, dout, w)) == 1) {
        size_t n = sizes_of(d).x;
        direct_bwd_data<<<cu_blocks(n), CU_THREADS, 0, cu_stream(be)>>>(*d, din, dout, w);
        CU_LAUNCHED(be);
    }
}

static int dnn_backward_filter(camo_backend *be, conv_plan *p, float *dw, const float *dout,
                               const float *in) {
    const float one = 1, zero = 0;
    conv_sizes s = sizes_of(&p->key.d);
    void *ws = dnn_ws(be, p->ws), *xh = NULL, *wh = NULL, *yh = NULL;
    cudnnConvolutionBwdFilterAlgo_t algo = (cudnnConvolutionBwdFilterAlgo_t)p->algo;
    if (p->ws && !ws) return -1;
    if (!p->key.amp)
        return conv_ran(be, p, cudnnConvolutionBackwardFilter(cu_ctx(be)->dnn, &one, p->x, in,
                                                              p->y, dout, p->conv, algo, ws,
                                                              p->ws, &one, p->w, dw),
                        "cudnnConvolutionBackwardFilter");
    if (!half_ws(be, s, &xh, &wh, &yh)) return -1;
    to_h(be, p->key.amp, s.x, xh, in);
    to_h(be, p->key.amp, s.y, yh, dout);
    int rc = conv_ran(be, p, cudnnConvolutionBackwardFilter(cu_ctx(be)->dnn, &one, p->x, xh,
                                                            p->y, yh, p->conv, algo, ws, p->ws,
                                                            &zero, p->w, wh),
                      "cudnnConvolutionBackwardFilter (half)");
    if (rc == 0) from_h(be, p->key.amp, s.w, dw, wh, 1);
    return rc;
}

/* dw += ..., dbias += column sums of dout */
static void cu_conv2d_backward_filter(camo_backend *be, const camo_conv_desc *d, float *dw,
                                      float *dbias, const float *dout, const float *in) {
    cu_bind(be);
    if (d->N <= 0) return; /* a replica with an empty slice: nothing to do */
    conv_plan *p = plan_for(be, d, CONV_BWD_FILTER);
    if (!p) return;
    if (dbias) {
        int K = d->K;
        cu_colsum<1>(
            be, d->N * d->P * d->Q, K,
            [=] __device__(int m, int c, double *acc) { acc[0] += dout[(size_t)m * K + c]; },
            [=] __device__(int c, const double *v) { dbias[c] += (float)v[0]; });
    }
    if ((p->direct ? 1 : dnn_backward_filter(be, p, dw, dout, in)) == 1) {
        size_t n = sizes_of(d).w;
        direct_bwd_filter<<<cu_blocks(n), CU_THREADS, 0, cu_stream(be)>>>(*d, dw, dout, in);
        CU_LAUNCHED(be);
    }
}

extern "C" void cuda_register_conv(camo_backend *be) {
    be->gemm = cu_gemm;
    be->conv2d_forward = cu_conv2d_forward;
    be->conv2d_backward_data = cu_conv2d_backward_data;
    be->conv2d_backward_filter = cu_conv2d_backward_filter;
}
