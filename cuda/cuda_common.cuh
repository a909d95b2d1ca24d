/* cuda_common.cuh: what every file of the CUDA backend shares: the checked-call macros (one
 * generator for the CUDA runtime, cuBLAS, cuDNN and NCCL), the backend's private state, the
 * caching allocator, launch helpers, the device helpers several op files use and each op
 * file's registration. Included by the cuda/ sources only (compiled as C++ by nvcc;
 * everything visible to C goes through extern "C"). */
#ifndef CAMO_CUDA_COMMON_CUH
#define CAMO_CUDA_COMMON_CUH

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cudnn.h>
#include <nccl.h>
#include <pthread.h>

extern "C" {
#include "backend/backend.h"
#include "core/common.h"
#include "backend/cuda.h"
}

/* ---- checked calls ----
 * CAMO_CHECK_GEN(lib, type, ok, to_string) defines cu_check_<lib>(status, file, line, expr):
 * 0 on success, else -1 with camo_last_error() =
 * "cuda/file.cu:line: expr failed: <library message> (<lib> error <code>)", the message
 * that reaches the user (wrappers such as "cannot set up GPU 0: ..." keep it whole).
 * `clear` runs after a failure: the CUDA runtime also keeps a failed call's error as the
 * thread's last error, which the next launch check (cudaGetLastError) would report against
 * another operation; reading it once resets it. */
#define CAMO_CHECK_GEN(lib, type, ok, to_string, clear)                                       \
    static inline int cu_check_##lib(type st, const char *file, int line, const char *expr) { \
        if (st == (ok)) return 0;                                                             \
        camo_set_error_at(file, line, "%s failed: %s (%s error %d)", expr, to_string(st),     \
                          #lib, (int)st);                                                     \
        clear;                                                                                \
        return -1;                                                                            \
    }
CAMO_CHECK_GEN(cuda, cudaError_t, cudaSuccess, cudaGetErrorString, (void)cudaGetLastError())
CAMO_CHECK_GEN(cublas, cublasStatus_t, CUBLAS_STATUS_SUCCESS, cublasGetStatusString, (void)0)
CAMO_CHECK_GEN(cudnn, cudnnStatus_t, CUDNN_STATUS_SUCCESS, cudnnGetErrorString, (void)0)
CAMO_CHECK_GEN(nccl, ncclResult_t, ncclSuccess, ncclGetErrorString, (void)0)

/* Return-style checks: evaluate to 0 or -1 (error recorded). */
#define CUDA_CHECK(x) cu_check_cuda((x), __FILE__, __LINE__, #x)
#define CUBLAS_CHECK(x) cu_check_cublas((x), __FILE__, __LINE__, #x)
#define CUDNN_CHECK(x) cu_check_cudnn((x), __FILE__, __LINE__, #x)
#define NCCL_CHECK(x) cu_check_nccl((x), __FILE__, __LINE__, #x)

/* ---- caching allocator: blocks are never given back to the driver while the backend
 * lives, so a steady-state step does no cudaMalloc/cudaFree (DESIGN.md hazards). ---- */
typedef struct cuda_block {
    void *ptr;
    size_t size;   /* rounded size the block was allocated with */
    int in_use;
} cuda_block;

typedef struct cuda_pool {
    cuda_block *blocks;
    int n, cap;
    size_t reserved, peak_reserved; /* bytes taken from the driver */
    size_t n_mallocs;               /* cudaMalloc calls so far (tests: no growth after warm-up) */
    pthread_mutex_t mu;             /* alloc/free may come from more than one thread */
} cuda_pool;

/* One cached cuDNN convolution set-up (cuda/cuda_conv.cu). */
typedef struct conv_plan conv_plan;

typedef struct cuda_ctx {
    int device, sm;               /* ordinal; compute capability * 10 (75, 80, 90) */
    cudaStream_t stream;
    cublasHandle_t blas;
    cudnnHandle_t dnn;
    cuda_pool pool;
    void *work;                   /* kernel scratch (loss sums, structure weights) */
    size_t work_cap;
    void *dnn_ws;                 /* cuDNN workspace */
    size_t dnn_ws_cap;
    void *half_ws;                /* AMP: half-precision copies of conv operands */
    size_t half_ws_cap;
    void *bounce;                 /* pinned host buffer for small downloads (the loss) */
    cudaEvent_t fences[CAMO_FENCES]; /* backend.fence; created with the stream */
    conv_plan *plans;             /* algorithm cache, one entry per (op, shape, precision) */
    int n_plans, cap_plans;
    camo_cuda_amp amp;
    int deterministic;            /* train.deterministic: no atomics, deterministic cuDNN */
    int failed;                   /* sticky: a call failed; later results are unreliable */
    char first_error[512];
} cuda_ctx;

static inline cuda_ctx *cu_ctx(camo_backend *be) { return (cuda_ctx *)be->ctx; }
/* Makes the backend's GPU current in the calling thread: a backend may be created in one
 * thread and used by its replica thread and a DDP comm thread; streams, cuBLAS and cuDNN
 * handles only work with their own device current. Cheap when it already is. */
static inline void cu_bind(camo_backend *be) { cudaSetDevice(cu_ctx(be)->device); }
/* The stream of every launch and copy; binds the device on the way. */
static inline cudaStream_t cu_stream(camo_backend *be) {
    cu_bind(be);
    return cu_ctx(be)->stream;
}

/* Records a failed call inside a void op: the first message is kept and printed once; the
 * backend stays "failed" (camo_cuda_backend_status, and download fills NaN), so the trainer
 * sees a NaN loss and stops through its NaN policy instead of the process exiting. */
extern "C" void cu_note_failure(camo_backend *be);
#define CU_OP(be, check_expr) \
    do { if ((check_expr) != 0) cu_note_failure(be); } while (0)
/* After a kernel launch: launch-configuration errors show up here. */
#define CU_LAUNCHED(be) CU_OP(be, CUDA_CHECK(cudaGetLastError()))

/* Scratch valid until the next op on this backend (stream order keeps reuse safe). */
extern "C" void *cu_workspace(camo_backend *be, size_t bytes);
extern "C" void *cu_pool_alloc(camo_backend *be, size_t bytes);
extern "C" void cu_pool_free(camo_backend *be, void *p);
/* Grows *buf (from the pool) to at least `bytes`; NULL on failure. */
extern "C" void *cu_grow(camo_backend *be, void **buf, size_t *cap, size_t bytes);

/* ---- launch helpers ---- */
#define CU_THREADS 256
static inline unsigned cu_blocks(size_t n, unsigned threads = CU_THREADS) {
    size_t b = (n + threads - 1) / threads;
    if (b > 65535u * 16u) b = 65535u * 16u; /* kernels use grid-stride loops */
    return (unsigned)(b ? b : 1);
}
#define CU_GRID_LOOP(i, n) \
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (n); \
         i += (size_t)gridDim.x * blockDim.x)
/* `kernel CU_LAUNCH(be, n)(args)`: n threads' worth of blocks on the backend's stream */
#define CU_LAUNCH(be, n) <<<cu_blocks(n), CU_THREADS, 0, cu_stream(be)>>>
/* one warp per row for M rows; the kernel walks its rows with CU_WARP_ROW_LOOP */
#define CU_LAUNCH_ROWS(be, M) <<<cu_blocks((size_t)(M) * 32), CU_THREADS, 0, cu_stream(be)>>>
#define CU_WARP_ROW_LOOP(m, M)                                                       \
    for (int m = (int)((blockIdx.x * (size_t)blockDim.x + threadIdx.x) / 32); m < (M); \
         m += (int)((size_t)gridDim.x * blockDim.x / 32))

/* ---- device helpers shared by the op files ---- */
/* Coordinates of element i of an NHWC tensor (., H, W, C), for kernels with one thread per
 * element: auto [n, h, w, c] = cu_nhwc(i, H, W, C). */
struct cu_nhwc_at { int n, h, w, c; };
__device__ static inline cu_nhwc_at cu_nhwc(size_t i, int H, int W, int C) {
    return {(int)(i / ((size_t)C * W * H)), (int)(i / C / W % H), (int)(i / C % W),
            (int)(i % C)};
}
/* sum over the 32 lanes of a warp, the same bits on every lane (a fixed butterfly) */
__device__ static inline double cu_warp_sum(double v) {
    for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
/* the CPU's sigmoid_f, formula for formula (inf-safe) */
__device__ static inline float cu_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

/* Registration of each op file's functions into the table: the twins of cpu_register_*
 * (src/backend/cpu/cpu_internal.h), one cuda_<ops>.cu per cpu_<ops>.c:
 * conv (gemm, conv2d_*), norm (bn_*, layernorm_*), pool (pool, adaptive avg, resize),
 * elementwise (act, add, axpy, scale, mul, channel_slice, softmax), loss (loss_*,
 * pixel_correct), optim (sumsq, sgd, adamw, ema), attention (attention_*, xca_*). */
extern "C" void cuda_register_conv(camo_backend *be);
extern "C" void cuda_register_norm(camo_backend *be);
extern "C" void cuda_register_pool(camo_backend *be);
extern "C" void cuda_register_elementwise(camo_backend *be);
extern "C" void cuda_register_loss(camo_backend *be);
extern "C" void cuda_register_optim(camo_backend *be);
extern "C" void cuda_register_attention(camo_backend *be);
extern "C" void cuda_register_rows(camo_backend *be); /* cuda_rows.cu: copy_rows */
extern "C" void cuda_register_moe(camo_backend *be);  /* cuda_moe.cu: moe_* */
extern "C" void cuda_conv_free_plans(camo_backend *be);

/* ---- deterministic per-column sums: out[v][c] = sum over rows m of f(m, c)[v] ----
 * Rows are cut into a fixed number of chunks, each summed in double by one block, then the
 * chunks are added in chunk order: the result never depends on scheduling. */
#define CU_COL_TX 32
#define CU_COL_TY 8

template <int NV, class F>
__global__ void cu_colsum_partial(int M, int C, int chunk, double *part, F f) {
    __shared__ double sh[NV][CU_COL_TY][CU_COL_TX];
    int c = blockIdx.x * CU_COL_TX + threadIdx.x, g = blockIdx.y;
    double acc[NV];
    for (int v = 0; v < NV; v++) acc[v] = 0;
    if (c < C) {
        int m1 = min(M, (g + 1) * chunk);
        for (int m = g * chunk + threadIdx.y; m < m1; m += CU_COL_TY) f(m, c, acc);
    }
    for (int v = 0; v < NV; v++) sh[v][threadIdx.y][threadIdx.x] = acc[v];
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
        for (int v = 0; v < NV; v++) {
            double s = 0;
            for (int y = 0; y < CU_COL_TY; y++) s += sh[v][y][threadIdx.x];
            part[((size_t)g * NV + v) * C + c] = s;
        }
    }
}

template <int NV, class S>
__global__ void cu_colsum_finish(int G, int C, const double *part, S store) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    double s[NV];
    for (int v = 0; v < NV; v++) {
        s[v] = 0;
        for (int g = 0; g < G; g++) s[v] += part[((size_t)g * NV + v) * C + c];
    }
    store(c, s);
}

/* Runs the two kernels on the backend's stream; scratch from cu_workspace. */
template <int NV, class F, class S>
static void cu_colsum(camo_backend *be, int M, int C, F f, S store) {
    if (C <= 0) return;
    int chunk = 256, G = (M + chunk - 1) / chunk;
    if (G > 256) { G = 256; chunk = (M + G - 1) / G; }
    if (G < 1) G = 1;
    double *part = (double *)cu_workspace(be, (size_t)G * NV * C * sizeof(double));
    if (!part) return;
    dim3 grid((C + CU_COL_TX - 1) / CU_COL_TX, G), block(CU_COL_TX, CU_COL_TY);
    cu_colsum_partial<NV><<<grid, block, 0, cu_stream(be)>>>(M, C, chunk, part, f);
    cu_colsum_finish<NV><<<(C + 127) / 128, 128, 0, cu_stream(be)>>>(G, C, part, store);
    CU_LAUNCHED(be);
}

#endif
