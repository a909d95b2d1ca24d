/* cuda_conv.cu: the CUDA twin of src/backend/cpu/cpu_conv.c: gemm on cuBLAS and the three
 * convolution ops on cuDNN (NHWC activations, NHWC "KRSC" filters = our OHWI weights). One
 * plan per (op, geometry, precision, train.deterministic) holds the descriptors and the
 * algorithm picked once by cuDNN's heuristics; plans and workspaces are cached, so a
 * steady-state step creates nothing. fp32 mode forbids TF32 (CUDNN_FMA_MATH) so results match
 * the CPU backend to 1e-4; AMP mode converts operands to bf16/fp16 scratch and runs
 * tensor-core algorithms with fp32 accumulation (docs/cuda.md). A set-up cuDNN reports
 * unsupported (shape, layout, data type) runs on a direct fp32 kernel, counted per backend
 * (camo_cuda_direct_conv_count); any other cuDNN failure is fatal with cuDNN's own message.
 * Batches over cuDNN's 2^31-element tensor limit are split into pieces, as PyTorch does. */
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
    int direct;     /* cuDNN does not support this set-up: direct fp32 kernel (fp32 plans),
                       or the fp32 plan (AMP plans) */
};

#define CONV_WS_LIMIT ((size_t)1 << 30) /* ignore algorithms wanting more than 1 GiB */

/* ---- cuDNN failures: fall back, or stop ---- */

/* The statuses that mean "cuDNN has no kernel for this set-up" (its shape, layout, data
 * type, padding, shared memory): only those may move a convolution to the direct kernel
 * (or an AMP one to fp32). Everything else means cuDNN itself is broken or misused: a
 * sub-library that does not load, a version, driver, runtime or architecture mismatch, a
 * bad or misaligned parameter, an internal or execution error. Falling back then would
 * hide it behind a kernel 10-100x slower, so those are fatal (dnn_fatal). */
static int dnn_unsupported(cudnnStatus_t st) {
    switch (st) {
    case CUDNN_STATUS_NOT_SUPPORTED:
    case CUDNN_STATUS_NOT_SUPPORTED_GRAPH_PATTERN:
    case CUDNN_STATUS_NOT_SUPPORTED_SHAPE:
    case CUDNN_STATUS_NOT_SUPPORTED_DATA_TYPE:
    case CUDNN_STATUS_NOT_SUPPORTED_LAYOUT:
    case CUDNN_STATUS_NOT_SUPPORTED_SHARED_MEMORY_INSUFFICIENT:
    case CUDNN_STATUS_NOT_SUPPORTED_PADDING:
    case CUDNN_STATUS_NOT_SUPPORTED_BAD_LAUNCH_PARAM:
        return 1;
    default:
        return 0;
    }
}

/* "forward 2x9x7x6 -> 5, kernel 3x3, stride 1/1, pad 1/1, dilation 1/1, groups 1, fp32" */
static void plan_text(const conv_plan *p, char *buf, size_t n) {
    static const char *const kinds[] = {"forward", "backward data", "backward filter"};
    static const char *const types[] = {"fp32", "bf16", "fp16"};
    const camo_conv_desc *d = &p->key.d;
    snprintf(buf, n, "%s %dx%dx%dx%d -> %d, kernel %dx%d, stride %d/%d, pad %d/%d, dilation "
             "%d/%d, groups %d, %s", kinds[p->key.kind], d->N, d->H, d->W, d->C, d->K, d->R,
             d->S, d->stride_h, d->stride_w, d->pad_h, d->pad_w, d->dil_h, d->dil_w, d->groups,
             types[p->key.amp]);
}

/* Records a fatal cuDNN failure: our file:line, the function called (the text of `call` up
 * to its argument list), the convolution, cuDNN's status string and cuDNN's own last message
 * (it often names the missing sub-library or the mismatched version); the backend turns
 * failed. Returns -1. */
static int dnn_fatal(camo_backend *be, const conv_plan *p, cudnnStatus_t st, const char *file,
                     int line, const char *call) {
    char conv[192], detail[512] = "";
    plan_text(p, conv, sizeof conv);
    cudnnGetLastErrorString(detail, sizeof detail);
    camo_set_error_at(file, line, "%.*s failed for %s: %s (cudnn error %d)%s%s",
                      (int)strcspn(call, "("), call, conv, cudnnGetErrorString(st), (int)st,
                      detail[0] ? "; cuDNN says: " : "", detail);
    cu_note_failure(be);
    return -1;
}

/* Moves plan p to its fallback (the direct kernel; for an AMP plan, the fp32 plan), with a
 * warning naming the convolution and why: once per plan, as plans are cached. Returns 1. */
static int plan_fallback(conv_plan *p, const char *why) {
    char conv[192];
    plan_text(p, conv, sizeof conv);
    camo_warn("cuDNN cannot run the convolution %s (%s): it runs %s", conv, why,
              p->key.amp ? "in fp32 instead" : "on the slow direct kernel");
    p->direct = 1;
    return 1;
}

/* Outcome of one cuDNN call on plan p: 0 success; 1 unsupported set-up (with `fall` the plan
 * moves to its fallback); -1 fatal. */
static int dnn_outcome(camo_backend *be, conv_plan *p, cudnnStatus_t st, int fall,
                       const char *file, int line, const char *call) {
    if (st == CUDNN_STATUS_SUCCESS) return 0;
    if (!dnn_unsupported(st)) return dnn_fatal(be, p, st, file, line, call);
    if (!fall) return 1;
    char why[160];
    snprintf(why, sizeof why, "%.*s: %s", (int)strcspn(call, "("), call,
             cudnnGetErrorString(st));
    return plan_fallback(p, why);
}
/* a call whose "unsupported" moves the plan to its fallback */
#define DNN_PLAN(be, p, x) dnn_outcome((be), (p), (x), 1, __FILE__, __LINE__, #x)
/* a call about one heuristic entry: "unsupported" only skips that entry */
#define DNN_ENTRY(be, p, x) dnn_outcome((be), (p), (x), 0, __FILE__, __LINE__, #x)

/* ---- picking the algorithm ---- */

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

/* One heuristic entry, whatever the op (the three perf structs share these fields). */
typedef struct algo_choice {
    int algo;
    cudnnStatus_t status;
    size_t memory;
    cudnnDeterminism_t determinism;
    cudnnMathType_t math;
} algo_choice;

/* cuDNN may list an algorithm once per math type: room for every pair */
#define MAX_CHOICES \
    (2 * CUDNN_CONVOLUTION_FWD_ALGO_COUNT + 2 * CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT)

#define COPY_CHOICES(perf, n, out)                                                            \
    for (int i_ = 0; i_ < (n); i_++)                                                          \
        (out)[i_] = (algo_choice){(int)(perf)[i_].algo, (perf)[i_].status, (perf)[i_].memory, \
                                  (perf)[i_].determinism, (perf)[i_].mathType};

/* cuDNN's ranked entries for the plan's op: *n of them; DNN_PLAN's outcome of the query */
static int plan_heuristics(camo_backend *be, conv_plan *p, algo_choice *c, int *n) {
    cudnnHandle_t h = cu_ctx(be)->dnn;
    int rc;
    *n = 0;
    if (p->key.kind == CONV_FWD) {
        cudnnConvolutionFwdAlgoPerf_t perf[MAX_CHOICES];
        rc = DNN_PLAN(be, p, cudnnGetConvolutionForwardAlgorithm_v7(
                                 h, p->x, p->w, p->conv, p->y, MAX_CHOICES, n, perf));
        if (!rc) COPY_CHOICES(perf, *n, c);
    } else if (p->key.kind == CONV_BWD_DATA) {
        cudnnConvolutionBwdDataAlgoPerf_t perf[MAX_CHOICES];
        rc = DNN_PLAN(be, p, cudnnGetConvolutionBackwardDataAlgorithm_v7(
                                 h, p->w, p->y, p->conv, p->x, MAX_CHOICES, n, perf));
        if (!rc) COPY_CHOICES(perf, *n, c);
    } else {
        cudnnConvolutionBwdFilterAlgoPerf_t perf[MAX_CHOICES];
        rc = DNN_PLAN(be, p, cudnnGetConvolutionBackwardFilterAlgorithm_v7(
                                 h, p->x, p->y, p->conv, p->w, MAX_CHOICES, n, perf));
        if (!rc) COPY_CHOICES(perf, *n, c);
    }
    if (rc) *n = 0;
    return rc;
}

/* workspace of `algo` with the descriptor's current math type: DNN_ENTRY's outcome */
static int plan_workspace(camo_backend *be, conv_plan *p, int algo, size_t *ws) {
    cudnnHandle_t h = cu_ctx(be)->dnn;
    if (p->key.kind == CONV_FWD)
        return DNN_ENTRY(be, p, cudnnGetConvolutionForwardWorkspaceSize(
                                    h, p->x, p->w, p->conv, p->y,
                                    (cudnnConvolutionFwdAlgo_t)algo, ws));
    if (p->key.kind == CONV_BWD_DATA)
        return DNN_ENTRY(be, p, cudnnGetConvolutionBackwardDataWorkspaceSize(
                                    h, p->w, p->y, p->conv, p->x,
                                    (cudnnConvolutionBwdDataAlgo_t)algo, ws));
    return DNN_ENTRY(be, p, cudnnGetConvolutionBackwardFilterWorkspaceSize(
                                h, p->x, p->y, p->conv, p->w,
                                (cudnnConvolutionBwdFilterAlgo_t)algo, ws));
}

/* Whether entry c may serve plan p (before asking for its workspace). */
static int entry_wanted(const conv_plan *p, const algo_choice *c, int fp32, int pass) {
    return c->status == CUDNN_STATUS_SUCCESS && c->memory <= CONV_WS_LIMIT &&
           math_ok(fp32, pass, c->math) &&
           !(p->key.det && c->determinism != CUDNN_DETERMINISTIC);
}

/* Tries entry c: 0 taken, 1 skipped (cuDNN cannot run it with the plan's math type), -1
 * fatal. In fp32 the math type is FMA, which may differ from the entry's. */
static int entry_try(camo_backend *be, conv_plan *p, const algo_choice *c, int fp32) {
    size_t ws = 0;
    cudnnMathType_t math = fp32 ? CUDNN_FMA_MATH : c->math;
    int rc = DNN_ENTRY(be, p, cudnnSetConvolutionMathType(p->conv, math));
    if (!rc) rc = plan_workspace(be, p, c->algo, &ws);
    if (rc) return rc;
    if (ws > CONV_WS_LIMIT) return 1;
    p->algo = c->algo;
    p->math = math;
    p->ws = ws;
    p->direct = 0;
    return 0;
}

/* The first heuristic entry, in cuDNN's ranking and math_ok's passes, that works, fits the
 * limit, is CUDNN_DETERMINISTIC when the plan's key.det (train.deterministic) asks for it
 * (backward ALGO_0 / ALGO_3 of the filter and ALGO_0 of the data accumulate with atomics),
 * and whose workspace query succeeds with the math type the plan runs with. None left: the
 * direct kernel, which is deterministic too (fixed-order sums, no atomics), with a warning;
 * unless an entry carried a fatal status (e.g. a sub-library that failed to load: every
 * entry then says so), which is fatal. 0 picked, 1 direct, -1 fatal. */
static int plan_pick(camo_backend *be, conv_plan *p) {
    int fp32 = p->key.amp == CAMO_AMP_OFF, n = 0;
    algo_choice c[MAX_CHOICES];
    p->direct = 1;
    int rc = plan_heuristics(be, p, c, &n);
    if (rc) return rc;
    cudnnStatus_t bad = CUDNN_STATUS_SUCCESS; /* first fatal-class entry status */
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < n; i++) {
            if (pass == 0 && bad == CUDNN_STATUS_SUCCESS && c[i].status != CUDNN_STATUS_SUCCESS &&
                !dnn_unsupported(c[i].status))
                bad = c[i].status;
            if (!entry_wanted(p, &c[i], fp32, pass)) continue;
            if ((rc = entry_try(be, p, &c[i], fp32)) <= 0) return rc;
        }
    }
    if (bad != CUDNN_STATUS_SUCCESS)
        return dnn_fatal(be, p, bad, __FILE__, __LINE__, "the heuristics' entries");
    return plan_fallback(p, "no usable entry in cuDNN's heuristics");
}

static cudnnDataType_t amp_dtype(int amp) {
    return amp == CAMO_AMP_BF16 ? CUDNN_DATA_BFLOAT16
                                : amp == CAMO_AMP_FP16 ? CUDNN_DATA_HALF : CUDNN_DATA_FLOAT;
}

/* ---- cuDNN's tensor size limit: batches are split into pieces ---- */

/* The legacy API indexes a tensor with 32-bit ints: at most 2^31 - 1 elements (a batch of
 * 32 x 512 x 512 x 256 channels is 2^31). CAMO_TEST_CUDNN_MAX_ELEMS lowers the cap, so the
 * tests exercise the split on small tensors. Read on every call: tests change it. */
static size_t dnn_elem_cap(void) {
    const char *e = getenv("CAMO_TEST_CUDNN_MAX_ELEMS");
    long long v = e && *e ? atoll(e) : 0;
    return v > 0 && v < INT32_MAX ? (size_t)v : (size_t)INT32_MAX;
}

/* Images per cuDNN call: x and y of a piece stay under the cap, as PyTorch splits the batch.
 * At least 1: a single image over the cap makes a plan that runs on the direct kernel. */
static int piece_images(const camo_conv_desc *d) {
    size_t per = CAMO_MAX((size_t)d->H * d->W * d->C, (size_t)d->P * d->Q * d->K);
    size_t nb = per ? dnn_elem_cap() / per : (size_t)d->N;
    return nb < 1 ? 1 : nb < (size_t)d->N ? (int)nb : d->N;
}

/* 1 (plan moved to its fallback) when a tensor of the plan is over the cap: cuDNN would
 * refuse it (only a single image that large gets here: piece_images splits batches). */
static int plan_too_large(conv_plan *p) {
    const camo_conv_desc *d = &p->key.d;
    size_t cap = dnn_elem_cap();
    size_t nx = (size_t)d->N * d->H * d->W * d->C, ny = (size_t)d->N * d->P * d->Q * d->K;
    size_t nw = (size_t)d->K * d->R * d->S * (d->C / d->groups);
    if (nx <= cap && ny <= cap && nw <= cap) return 0;
    char why[96];
    snprintf(why, sizeof why, "a tensor over its limit of %zu elements", cap);
    return plan_fallback(p, why);
}

/* Descriptors, then the algorithm: 0 cuDNN runs it, 1 the plan is direct, -1 fatal. */
static int plan_describe(camo_backend *be, conv_plan *p) {
    const camo_conv_desc *d = &p->key.d;
    cudnnDataType_t t = amp_dtype(p->key.amp);
    int rc;
    if (plan_too_large(p)) return 1;
    if (CUDNN_CHECK(cudnnCreateTensorDescriptor(&p->x)) ||
        CUDNN_CHECK(cudnnCreateTensorDescriptor(&p->y)) ||
        CUDNN_CHECK(cudnnCreateFilterDescriptor(&p->w)) ||
        CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&p->conv))) {
        cu_note_failure(be);
        return -1;
    }
    if ((rc = DNN_PLAN(be, p, cudnnSetTensor4dDescriptor(p->x, CUDNN_TENSOR_NHWC, t, d->N, d->C,
                                                         d->H, d->W))) ||
        (rc = DNN_PLAN(be, p, cudnnSetTensor4dDescriptor(p->y, CUDNN_TENSOR_NHWC, t, d->N, d->K,
                                                         d->P, d->Q))) ||
        (rc = DNN_PLAN(be, p, cudnnSetFilter4dDescriptor(p->w, t, CUDNN_TENSOR_NHWC, d->K,
                                                         d->C / d->groups, d->R, d->S))) ||
        (rc = DNN_PLAN(be, p, cudnnSetConvolution2dDescriptor(
                                  p->conv, d->pad_h, d->pad_w, d->stride_h, d->stride_w,
                                  d->dil_h, d->dil_w, CUDNN_CROSS_CORRELATION,
                                  CUDNN_DATA_FLOAT))) ||
        (rc = DNN_PLAN(be, p, cudnnSetConvolutionGroupCount(p->conv, d->groups))) ||
        (rc = DNN_PLAN(be, p, cudnnSetConvolutionMathType(
                                  p->conv, p->key.amp ? CUDNN_TENSOR_OP_MATH : CUDNN_FMA_MATH))))
        return rc;
    return plan_pick(be, p);
}

static void plan_release(conv_plan *p) {
    if (p->x) cudnnDestroyTensorDescriptor(p->x);
    if (p->y) cudnnDestroyTensorDescriptor(p->y);
    if (p->w) cudnnDestroyFilterDescriptor(p->w);
    if (p->conv) cudnnDestroyConvolutionDescriptor(p->conv);
    p->x = p->y = NULL;
    p->w = NULL;
    p->conv = NULL;
}

extern "C" void cuda_conv_free_plans(camo_backend *be) {
    cuda_ctx *ctx = cu_ctx(be);
    for (int i = 0; i < ctx->n_plans; i++) plan_release(&ctx->plans[i]);
    free(ctx->plans);
    ctx->plans = NULL;
    ctx->n_plans = ctx->cap_plans = 0;
}

/* Plans marked direct, of fp32 (amp == 0: the convolution runs on the direct kernel) or of
 * AMP plans (amp != 0: it runs in fp32 instead). One plan per (op, geometry, deterministic
 * flag), so each distinct convolution counts once. */
static int count_direct(camo_backend *be, int amp) {
    if (!camo_backend_on_gpu(be)) return 0;
    cuda_ctx *ctx = cu_ctx(be);
    int n = 0;
    for (int i = 0; i < ctx->n_plans; i++)
        n += ctx->plans[i].direct && (ctx->plans[i].key.amp != CAMO_AMP_OFF) == (amp != 0);
    return n;
}

extern "C" int camo_cuda_direct_conv_count(camo_backend *be) { return count_direct(be, 0); }

extern "C" int camo_cuda_amp_fp32_conv_count(camo_backend *be) { return count_direct(be, 1); }

/* The cached plan for (kind, d, amp, deterministic), made on first use; NULL after a fatal
 * failure. A plan cuDNN does not support is cached as direct (plan_for then takes the fp32
 * plan of an AMP one). The backend's deterministic flag is part of the key, so turning it
 * on or off later never reuses a plan picked under the other setting. */
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
    int rc = plan_describe(be, p);
    if (rc < 0) {
        plan_release(p);
        return NULL;
    }
    if (rc == 1) plan_release(p); /* direct: the descriptors are never used */
    ctx->n_plans++;
    return p;
}

/* ---- direct fp32 kernels (for set-ups cuDNN does not support) ---- */

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
        auto [n, p, q, k] = cu_nhwc(i, d.P, d.Q, d.K);
        int g = k / Kg;
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
        auto [n, h, x, c] = cu_nhwc(i, d.H, d.W, d.C);
        int g = c / Cg, cc = c % Cg;
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

/* Backward filter: dw[k][r][s][c] += sum over the M = N*P*Q output pixels m of
 * dout[m][k] * in[pixel of m under tap (r, s)][group(k) * Cg + c]. A parallel reduction in
 * two passes, deterministic (fixed order everywhere, no atomics: train.deterministic may run
 * on it):
 *   1. block (tap, tile of DBF_TJ weights, chunk of pixels): a warp row holds DBF_TJ
 *      consecutive (k, c) pairs of one tap (coalesced reads of `in` and `dout`), DBF_TM rows
 *      split the chunk's pixels, each summing in float; a fixed tree in shared memory adds
 *      the rows; the block writes one partial sum per weight.
 *   2. one thread per weight adds the chunks' partial sums in chunk order, in double. */
#define DBF_TJ 32
#define DBF_TM 8

__global__ static void direct_bwd_filter_part(camo_conv_desc d, size_t chunk, float *part,
                                              const float *dout, const float *in) {
    __shared__ float sh[DBF_TM][DBF_TJ];
    int Cg = d.C / d.groups, Kg = d.K / d.groups, KC = d.K * Cg;
    int tiles = (KC + DBF_TJ - 1) / DBF_TJ, tap = (int)(blockIdx.x / tiles);
    int r = tap / d.S, s = tap % d.S, j = (int)(blockIdx.x % tiles) * DBF_TJ + threadIdx.x;
    int k = j / Cg, c = j % Cg;
    size_t M = (size_t)d.N * d.P * d.Q, m0 = blockIdx.y * chunk;
    size_t m1 = m0 + chunk < M ? m0 + chunk : M;
    float acc = 0;
    if (j < KC) {
        const float *inc = in + (size_t)(k / Kg) * Cg + c;
        for (size_t m = m0 + threadIdx.y; m < m1; m += DBF_TM) {
            int q = (int)(m % d.Q), p = (int)(m / d.Q % d.P), n = (int)(m / ((size_t)d.P * d.Q));
            int h = p * d.stride_h - d.pad_h + r * d.dil_h;
            int x = q * d.stride_w - d.pad_w + s * d.dil_w;
            if (h < 0 || h >= d.H || x < 0 || x >= d.W) continue;
            acc += dout[m * d.K + k] * inc[(((size_t)n * d.H + h) * d.W + x) * d.C];
        }
    }
    sh[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    for (int half = DBF_TM / 2; half > 0; half /= 2) {
        if ((int)threadIdx.y < half)
            sh[threadIdx.y][threadIdx.x] += sh[threadIdx.y + half][threadIdx.x];
        __syncthreads();
    }
    if (threadIdx.y == 0 && j < KC) {
        size_t n_w = (size_t)d.K * d.R * d.S * Cg;
        part[blockIdx.y * n_w + (((size_t)k * d.R + r) * d.S + s) * Cg + c] = sh[0][threadIdx.x];
    }
}

__global__ static void direct_bwd_filter_sum(size_t n_w, int chunks, const float *part,
                                             float *dw) {
    CU_GRID_LOOP(i, n_w) {
        double acc = 0;
        for (int g = 0; g < chunks; g++) acc += part[(size_t)g * n_w + i];
        dw[i] += (float)acc;
    }
}

/* Chunks of at least 256 pixels (32 per thread row), at most 1024 of them (grid.y), and
 * partial sums of at most 2^24 floats (64 MiB of workspace). */
static void direct_backward_filter(camo_backend *be, const camo_conv_desc *d, float *dw,
                                   const float *dout, const float *in) {
    int Cg = d->C / d->groups;
    size_t M = (size_t)d->N * d->P * d->Q, n_w = (size_t)d->K * d->R * d->S * Cg;
    size_t chunks = CAMO_MIN((M + 255) / 256, (size_t)1024);
    chunks = CAMO_MAX((size_t)1, CAMO_MIN(chunks, ((size_t)1 << 24) / n_w));
    size_t chunk = (M + chunks - 1) / chunks;
    chunks = (M + chunk - 1) / chunk;
    float *part = (float *)cu_workspace(be, chunks * n_w * sizeof(float));
    if (!part) return;
    unsigned tiles = (unsigned)((d->K * Cg + DBF_TJ - 1) / DBF_TJ);
    dim3 grid(tiles * d->R * d->S, (unsigned)chunks), block(DBF_TJ, DBF_TM);
    direct_bwd_filter_part<<<grid, block, 0, cu_stream(be)>>>(*d, chunk, part, dout, in);
    CU_LAUNCHED(be);
    direct_bwd_filter_sum CU_LAUNCH(be, n_w)(n_w, (int)chunks, part, dw);
    CU_LAUNCHED(be);
}

/* The direct kernel of `kind` on one piece: out, a, b as in conv_piece. */
static int direct_run(camo_backend *be, const camo_conv_desc *d, conv_kind kind, float *out,
                      const float *a, const float *b) {
    if (kind == CONV_FWD) {
        size_t n = (size_t)d->N * d->P * d->Q * d->K;
        direct_fwd CU_LAUNCH(be, n)(*d, out, a, b);
    } else if (kind == CONV_BWD_DATA) {
        size_t n = (size_t)d->N * d->H * d->W * d->C;
        direct_bwd_data CU_LAUNCH(be, n)(*d, out, a, b);
    } else {
        direct_backward_filter(be, d, out, a, b);
        return 0;
    }
    CU_LAUNCHED(be);
    return 0;
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
        f32_to_half CU_LAUNCH(be, n)(n, (__nv_bfloat16 *)y, x);
    else
        f32_to_half CU_LAUNCH(be, n)(n, (__half *)y, x);
    CU_LAUNCHED(be);
}

static void from_h(camo_backend *be, int amp, size_t n, float *y, const void *x, int acc) {
    if (amp == CAMO_AMP_BF16)
        half_to_f32 CU_LAUNCH(be, n)(n, y, (const __nv_bfloat16 *)x, acc);
    else
        half_to_f32 CU_LAUNCH(be, n)(n, y, (const __half *)x, acc);
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

/* The cuDNN call of plan p's kind: out = op(a, b) + beta * out, operands as in conv_piece,
 * fp32 or half as the plan's precision. DNN_PLAN's outcome. */
static int dnn_call(camo_backend *be, conv_plan *p, void *ws, float beta, void *out,
                    const void *a, const void *b) {
    const float one = 1;
    cudnnHandle_t h = cu_ctx(be)->dnn;
    if (p->key.kind == CONV_FWD)
        return DNN_PLAN(be, p, cudnnConvolutionForward(
                                   h, &one, p->x, a, p->w, b, p->conv,
                                   (cudnnConvolutionFwdAlgo_t)p->algo, ws, p->ws, &beta, p->y,
                                   out));
    if (p->key.kind == CONV_BWD_DATA)
        return DNN_PLAN(be, p, cudnnConvolutionBackwardData(
                                   h, &one, p->w, b, p->y, a, p->conv,
                                   (cudnnConvolutionBwdDataAlgo_t)p->algo, ws, p->ws, &beta,
                                   p->x, out));
    return DNN_PLAN(be, p, cudnnConvolutionBackwardFilter(
                               h, &one, p->x, b, p->y, a, p->conv,
                               (cudnnConvolutionBwdFilterAlgo_t)p->algo, ws, p->ws, &beta,
                               p->w, out));
}

/* Which tensor (0 x, 1 w, 2 y) each of conv_piece's out, a, b is, per conv_kind. */
static const int conv_roles[3][3] = {{2, 0, 1}, {0, 2, 1}, {1, 2, 0}};

/* The cuDNN calls of one piece: 0 ran; 1 cuDNN refused the set-up at run time (the plan
 * moved to its fallback: plan again); -1 failed (recorded, backend failed). Backward
 * outputs accumulate: beta = 1 in fp32, and AMP adds its half result in fp32; so the
 * filter gradient sums over the pieces of a split batch. AMP converts a and b to half
 * scratch, runs the call there and converts the result back. */
static int dnn_run(camo_backend *be, conv_plan *p, float *out, const float *a,
                   const float *b) {
    int acc = p->key.kind != CONV_FWD, amp = p->key.amp;
    void *ws = dnn_ws(be, p->ws), *h[3];
    if (p->ws && !ws) return -1;
    if (!amp) return dnn_call(be, p, ws, acc ? 1.0f : 0.0f, out, a, b);
    conv_sizes s = sizes_of(&p->key.d);
    size_t n[3] = {s.x, s.w, s.y};
    const int *role = conv_roles[p->key.kind];
    if (!half_ws(be, s, &h[0], &h[1], &h[2])) return -1;
    to_h(be, amp, n[role[1]], h[role[1]], a);
    to_h(be, amp, n[role[2]], h[role[2]], b);
    int rc = dnn_call(be, p, ws, 0.0f, h[role[0]], h[role[1]], h[role[2]]);
    if (rc == 0) from_h(be, amp, n[role[0]], out, h[role[0]], acc);
    return rc;
}

/* One piece of a convolution: its plan's cuDNN call, or the direct kernel when the plan has
 * none. A plan cuDNN refuses at run time moves to its fallback and planning starts over
 * (an AMP plan hands over to fp32, an fp32 plan to the direct kernel), so this ends.
 * Operands: forward (y, x, w), backward data (dx, dy, w), backward filter (dw, dy, x). */
static int conv_piece(camo_backend *be, const camo_conv_desc *d, conv_kind kind, float *out,
                      const float *a, const float *b) {
    for (;;) {
        conv_plan *p = plan_for(be, d, kind);
        if (!p) return -1;
        if (p->direct) return direct_run(be, d, kind, out, a, b);
        int rc = dnn_run(be, p, out, a, b);
        if (rc != 1) return rc;
    }
}

/* Runs `kind` over the batch in pieces of piece_images() images, each a cuDNN call of its
 * own geometry (plan); the pieces' activations are consecutive slices of the tensors. */
static void conv_run(camo_backend *be, const camo_conv_desc *d, conv_kind kind, float *out,
                     const float *a, const float *b) {
    size_t sx = (size_t)d->H * d->W * d->C, sy = (size_t)d->P * d->Q * d->K;
    camo_conv_desc c = *d;
    int nb = piece_images(d);
    for (int n0 = 0; n0 < d->N; n0 += nb) {
        size_t ox = (size_t)n0 * sx, oy = (size_t)n0 * sy;
        int rc;
        c.N = CAMO_MIN(nb, d->N - n0);
        if (kind == CONV_FWD) rc = conv_piece(be, &c, kind, out + oy, a + ox, b);
        else if (kind == CONV_BWD_DATA) rc = conv_piece(be, &c, kind, out + ox, a + oy, b);
        else rc = conv_piece(be, &c, kind, out, a + oy, b + ox);
        if (rc < 0) return;
    }
}

static void cu_conv2d_forward(camo_backend *be, const camo_conv_desc *d, float *out,
                              const float *in, const float *w, const float *bias) {
    cu_bind(be);
    if (d->N <= 0) return; /* a replica with an empty slice: nothing to do */
    conv_run(be, d, CONV_FWD, out, in, w);
    if (bias && !cu_ctx(be)->failed) {
        size_t M = (size_t)d->N * d->P * d->Q;
        add_bias_k CU_LAUNCH(be, M * d->K)(M, d->K, out, bias);
        CU_LAUNCHED(be);
    }
}

/* din += ... */
static void cu_conv2d_backward_data(camo_backend *be, const camo_conv_desc *d, float *din,
                                    const float *dout, const float *w) {
    cu_bind(be);
    if (d->N <= 0) return; /* a replica with an empty slice: nothing to do */
    conv_run(be, d, CONV_BWD_DATA, din, dout, w);
}

/* dw += ..., dbias += column sums of dout */
static void cu_conv2d_backward_filter(camo_backend *be, const camo_conv_desc *d, float *dw,
                                      float *dbias, const float *dout, const float *in) {
    cu_bind(be);
    if (d->N <= 0) return; /* a replica with an empty slice: nothing to do */
    if (dbias) {
        int K = d->K;
        cu_colsum<1>(
            be, d->N * d->P * d->Q, K,
            [=] __device__(int m, int c, double *acc) { acc[0] += dout[(size_t)m * K + c]; },
            [=] __device__(int c, const double *v) { dbias[c] += (float)v[0]; });
    }
    conv_run(be, d, CONV_BWD_FILTER, dw, dout, in);
}

extern "C" void cuda_register_conv(camo_backend *be) {
    be->gemm = cu_gemm;
    be->conv2d_forward = cu_conv2d_forward;
    be->conv2d_backward_data = cu_conv2d_backward_data;
    be->conv2d_backward_filter = cu_conv2d_backward_filter;
}
