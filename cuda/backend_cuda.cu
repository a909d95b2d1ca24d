/* backend_cuda.cu: the CUDA backend's construction, caching allocator, memory ops and the
 * CUDA entry points of backend.h / cuda.h (the twin of src/backend/cpu/backend_cpu.c).
 * Compute ops live in cuda_<ops>.cu, twins of src/backend/cpu/cpu_<ops>.c. One backend = one
 * device, one stream, one cuBLAS and one cuDNN handle bound to that stream; it is used by
 * one replica thread at a time. */
#include "cuda_common.cuh"

#include <math.h>
#include <string.h>

/* ---- sticky failure ---- */

extern "C" void cu_note_failure(camo_backend *be) {
    cuda_ctx *ctx = cu_ctx(be);
    if (!ctx->failed) {
        ctx->failed = 1;
        snprintf(ctx->first_error, sizeof ctx->first_error, "%s", camo_last_error());
        camo_warn("cuda backend (GPU %d): %s", ctx->device, ctx->first_error);
    }
}

/* ---- caching allocator ---- */

/* Sizes are rounded so that blocks are reused across slightly different requests: 512 B
 * granularity below 1 MiB, 2 MiB above. */
static size_t pool_round(size_t bytes) {
    if (bytes == 0) bytes = 1;
    size_t g = bytes < ((size_t)1 << 20) ? 512 : ((size_t)2 << 20);
    return (bytes + g - 1) / g * g;
}

/* Best fitting free block that wastes at most half of itself; -1 if none. */
static int pool_find(cuda_pool *pool, size_t size) {
    int best = -1;
    for (int i = 0; i < pool->n; i++) {
        cuda_block *b = &pool->blocks[i];
        if (b->in_use || b->size < size || b->size > 2 * size) continue;
        if (best < 0 || b->size < pool->blocks[best].size) best = i;
    }
    return best;
}

/* Frees every unused block (used when cudaMalloc runs out, never in steady state). */
static void pool_trim(camo_backend *be) {
    cuda_pool *pool = &cu_ctx(be)->pool;
    cudaStreamSynchronize(cu_stream(be));
    int j = 0;
    for (int i = 0; i < pool->n; i++) {
        if (pool->blocks[i].in_use) { pool->blocks[j++] = pool->blocks[i]; continue; }
        cudaFree(pool->blocks[i].ptr);
        pool->reserved -= pool->blocks[i].size;
    }
    pool->n = j;
}

static void *pool_alloc_locked(camo_backend *be, size_t bytes) {
    cuda_pool *pool = &cu_ctx(be)->pool;
    cu_bind(be);
    size_t size = pool_round(bytes);
    int i = pool_find(pool, size);
    if (i >= 0) {
        pool->blocks[i].in_use = 1;
        return pool->blocks[i].ptr;
    }
    void *p = NULL;
    if (cudaMalloc(&p, size) != cudaSuccess) {
        cudaGetLastError(); /* clear, then retry once with the cache emptied */
        pool_trim(be);
        if (CUDA_CHECK(cudaMalloc(&p, size))) { /* keep the call's file:line and reason */
            char why[512];
            snprintf(why, sizeof why, "%s", camo_last_error());
            CAMO_ERR("out of GPU memory on GPU %d: %zu bytes requested, %zu reserved (%s)",
                     cu_ctx(be)->device, size, pool->reserved, why);
            return NULL;
        }
    }
    if (pool->n == pool->cap) {
        pool->cap = pool->cap ? 2 * pool->cap : 256;
        pool->blocks = (cuda_block *)camo_realloc(pool->blocks, pool->cap * sizeof(cuda_block));
    }
    pool->blocks[pool->n++] = (cuda_block){p, size, 1};
    pool->reserved += size;
    pool->n_mallocs++;
    if (pool->reserved > pool->peak_reserved) pool->peak_reserved = pool->reserved;
    return p;
}

extern "C" void *cu_pool_alloc(camo_backend *be, size_t bytes) {
    cuda_pool *pool = &cu_ctx(be)->pool;
    pthread_mutex_lock(&pool->mu);
    void *p = pool_alloc_locked(be, bytes);
    pthread_mutex_unlock(&pool->mu);
    return p;
}

/* Back to the cache. Safe without a sync as long as the next user of the block works on the
 * same stream (every op of this backend does); a buffer another stream still reads (a
 * collective in flight on the nccl comm stream) must not be freed before comm->wait(). */
extern "C" void cu_pool_free(camo_backend *be, void *p) {
    if (!p) return;
    cuda_pool *pool = &cu_ctx(be)->pool;
    pthread_mutex_lock(&pool->mu);
    for (int i = pool->n - 1; i >= 0; i--) {
        if (pool->blocks[i].ptr == p) {
            pool->blocks[i].in_use = 0;
            pthread_mutex_unlock(&pool->mu);
            return;
        }
    }
    pthread_mutex_unlock(&pool->mu);
    camo_warn("cuda backend: free of a pointer it did not allocate (%p) ignored", p);
}

extern "C" void *cu_grow(camo_backend *be, void **buf, size_t *cap, size_t bytes) {
    if (*buf && *cap >= bytes) return *buf;
    cu_pool_free(be, *buf);
    *buf = cu_pool_alloc(be, bytes);
    *cap = *buf ? pool_round(bytes) : 0;
    if (!*buf) cu_note_failure(be);
    return *buf;
}

extern "C" void *cu_workspace(camo_backend *be, size_t bytes) {
    cuda_ctx *ctx = cu_ctx(be);
    return cu_grow(be, &ctx->work, &ctx->work_cap, bytes);
}

/* ---- memory ops ---- */

static void *cu_alloc(camo_backend *be, size_t bytes) {
    void *p = cu_pool_alloc(be, bytes);
    if (p && CUDA_CHECK(cudaMemsetAsync(p, 0, bytes ? bytes : 1, cu_stream(be)))) {
        cu_pool_free(be, p);
        return NULL;
    }
    return p;
}

static void cu_free(camo_backend *be, void *p) { cu_pool_free(be, p); }

/* Pinned sources are copied asynchronously; for pageable ones the runtime copies the data
 * into its own staging buffer before returning, so the caller may reuse it either way. */
static void cu_upload(camo_backend *be, void *dst, const void *src, size_t bytes) {
    if (!bytes) return;
    CU_OP(be, CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice,
                                         cu_stream(be))));
}

#define CU_BOUNCE (1u << 20)

/* Synchronous: the host has the data when this returns. NaN-filled on a failed backend.
 * Every read goes through the backend's pinned buffer, in 1 MiB pieces: a copy into pageable
 * memory may take the driver's locks while peers' NCCL kernels wait (DESIGN.md hazards). */
static void cu_download(camo_backend *be, void *dst, const void *src, size_t bytes) {
    cuda_ctx *ctx = cu_ctx(be);
    if (!bytes) return;
    cudaStream_t st = cu_stream(be);
    for (size_t off = 0; off < bytes && !ctx->failed; off += CU_BOUNCE) {
        size_t m = bytes - off < CU_BOUNCE ? bytes - off : CU_BOUNCE;
        CU_OP(be, CUDA_CHECK(cudaMemcpyAsync(ctx->bounce, (const char *)src + off, m,
                                             cudaMemcpyDeviceToHost, st)));
        CU_OP(be, CUDA_CHECK(cudaStreamSynchronize(st)));
        if (!ctx->failed) memcpy((char *)dst + off, ctx->bounce, m);
    }
    if (ctx->failed) memset(dst, 0xff, bytes); /* 0xffffffff is a float NaN */
}

static void cu_copy(camo_backend *be, void *dst, const void *src, size_t bytes) {
    if (!bytes || dst == src) return;
    CU_OP(be, CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice,
                                         cu_stream(be))));
}

static void cu_zero(camo_backend *be, void *dst, size_t bytes) {
    if (!bytes) return;
    CU_OP(be, CUDA_CHECK(cudaMemsetAsync(dst, 0, bytes, cu_stream(be))));
}

static void cu_sync(camo_backend *be) {
    CU_OP(be, CUDA_CHECK(cudaStreamSynchronize(cu_stream(be))));
}

static void cu_fence(camo_backend *be, int k) {
    CU_OP(be, CUDA_CHECK(cudaEventRecord(cu_ctx(be)->fences[k], cu_stream(be))));
}

static void cu_fence_wait(camo_backend *be, int k) {
    cu_bind(be);
    CU_OP(be, CUDA_CHECK(cudaEventSynchronize(cu_ctx(be)->fences[k])));
}

/* NaN-filled on a failed backend, as download() */
static void cu_download_async(camo_backend *be, void *dst, const void *src, size_t bytes) {
    if (!bytes) return;
    if (!cu_ctx(be)->failed)
        CU_OP(be, CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost,
                                             cu_stream(be))));
    if (cu_ctx(be)->failed) memset(dst, 0xff, bytes);
}

static void cu_destroy(camo_backend *be) {
    if (!be) return;
    cuda_ctx *ctx = cu_ctx(be);
    if (ctx) {
        cudaSetDevice(ctx->device);
        if (ctx->stream) cudaStreamSynchronize(ctx->stream);
        cuda_conv_free_plans(be);
        if (ctx->dnn) cudnnDestroy(ctx->dnn);
        if (ctx->blas) cublasDestroy(ctx->blas);
        for (int i = 0; i < ctx->pool.n; i++) cudaFree(ctx->pool.blocks[i].ptr);
        if (ctx->bounce) cudaFreeHost(ctx->bounce);
        for (int k = 0; k < CAMO_FENCES; k++)
            if (ctx->fences[k]) cudaEventDestroy(ctx->fences[k]);
        free(ctx->pool.blocks);
        pthread_mutex_destroy(&ctx->pool.mu);
        if (ctx->stream) cudaStreamDestroy(ctx->stream);
        free(ctx);
    }
    free(be);
}

/* ---- construction ---- */

/* cuBLAS gets a fixed workspace from the pool, so it never allocates on its own. */
#define CU_BLAS_WS (32u << 20)

static int cu_init_handles(camo_backend *be) {
    cuda_ctx *ctx = cu_ctx(be);
    if (CUDA_CHECK(cudaStreamCreateWithFlags(&ctx->stream, cudaStreamNonBlocking))) return -1;
    if (CUBLAS_CHECK(cublasCreate(&ctx->blas))) return -1;
    if (CUBLAS_CHECK(cublasSetStream(ctx->blas, ctx->stream))) return -1;
    /* fp32 parity: DEFAULT math never uses TF32 for sgemm (only CUBLAS_TF32_TENSOR_OP_MATH
     * would) */
    if (CUBLAS_CHECK(cublasSetMathMode(ctx->blas, CUBLAS_DEFAULT_MATH))) return -1;
    void *ws = cu_pool_alloc(be, CU_BLAS_WS);
    if (!ws || CUBLAS_CHECK(cublasSetWorkspace(ctx->blas, ws, CU_BLAS_WS))) return -1;
    if (CUDNN_CHECK(cudnnCreate(&ctx->dnn))) return -1;
    if (CUDNN_CHECK(cudnnSetStream(ctx->dnn, ctx->stream))) return -1;
    if (CUDA_CHECK(cudaHostAlloc(&ctx->bounce, CU_BOUNCE, cudaHostAllocPortable))) return -1;
    for (int k = 0; k < CAMO_FENCES; k++)
        if (CUDA_CHECK(cudaEventCreateWithFlags(&ctx->fences[k], cudaEventDisableTiming)))
            return -1;
    return 0;
}

extern "C" camo_backend *camo_backend_cuda_create(int device) {
    int n = camo_cuda_device_count();
    if (device < 0 || device >= n) {
        const char *vis = getenv("CUDA_VISIBLE_DEVICES");
        CAMO_ERR("GPU %d requested, but %d usable GPU%s found (CUDA_VISIBLE_DEVICES=%s)", device,
                 n, n == 1 ? "" : "s", vis ? vis : "unset");
        return NULL;
    }
    if (CUDA_CHECK(cudaSetDevice(device))) return NULL;
    cudaDeviceProp prop;
    if (CUDA_CHECK(cudaGetDeviceProperties(&prop, device))) return NULL;
    camo_backend *be = (camo_backend *)camo_calloc(1, sizeof *be);
    cuda_ctx *ctx = (cuda_ctx *)camo_calloc(1, sizeof *ctx);
    ctx->device = device;
    ctx->sm = prop.major * 10 + prop.minor;
    pthread_mutex_init(&ctx->pool.mu, NULL);
    be->name = "cuda";
    be->device = device;
    be->threads = 1;
    be->ctx = ctx;
    if (cu_init_handles(be)) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", camo_last_error());
        cu_destroy(be);
        CAMO_ERR("cannot set up GPU %d (%s): %s", device, prop.name, msg);
        return NULL;
    }
    be->alloc = cu_alloc;
    be->free = cu_free;
    be->upload = cu_upload;
    be->download = cu_download;
    be->copy = cu_copy;
    be->zero = cu_zero;
    be->sync = cu_sync;
    be->fence = cu_fence;
    be->fence_wait = cu_fence_wait;
    be->download_async = cu_download_async;
    be->destroy = cu_destroy;
    cuda_register_conv(be);
    cuda_register_norm(be);
    cuda_register_pool(be);
    cuda_register_elementwise(be);
    cuda_register_loss(be);
    cuda_register_optim(be);
    cuda_register_attention(be);
    cuda_register_rows(be);
    cuda_register_moe(be);
    /* CAMO_AMP=bf16|fp16 sets the default precision of the convolutions (benchmarks, and
     * runs before the trainer passes train.amp through camo_cuda_set_amp) */
    camo_cuda_amp amp;
    const char *env = getenv("CAMO_AMP");
    if (env && *env && camo_cuda_amp_parse(env, &amp) == 0) camo_cuda_set_amp(be, amp);
    else if (env && *env) camo_warn("CAMO_AMP=%s ignored: off | bf16 | fp16", env);
    return be;
}

/* Logs the CUDA, cuDNN and NCCL versions found at run time beside those compiled against:
 * a GPU machine may carry its own (a PyTorch environment's wheels). cuDNN of another major
 * version, or older than its headers, misses symbols and fails in odd ways later: refused. */
extern "C" int camo_cuda_check_versions(void) {
    int rt = 0, drv = 0, nccl = 0;
    cudaRuntimeGetVersion(&rt);
    cudaDriverGetVersion(&drv);
    ncclGetVersion(&nccl);
    size_t dnn = cudnnGetVersion();
    camo_info("cuda: runtime %d.%d, driver %d.%d; cuDNN %zu.%zu.%zu (built with %d.%d.%d); "
              "NCCL %d.%d.%d (built with %d.%d.%d)", rt / 1000, rt % 1000 / 10, drv / 1000,
              drv % 1000 / 10, dnn / 10000, dnn / 100 % 100, dnn % 100, CUDNN_MAJOR, CUDNN_MINOR,
              CUDNN_PATCHLEVEL, nccl / 10000, nccl / 100 % 100, nccl % 100, NCCL_MAJOR,
              NCCL_MINOR, NCCL_PATCH);
    if (dnn / 10000 != CUDNN_MAJOR || dnn < (size_t)CUDNN_VERSION) {
        CAMO_ERR("cuDNN %zu.%zu.%zu found at run time, but camotrain was built with cuDNN "
                 "%d.%d.%d headers: put a cuDNN %d of at least that version first (CUDNN_HOME at "
                 "build time; the binary's rpath or LD_LIBRARY_PATH at run time)", dnn / 10000,
                 dnn / 100 % 100, dnn % 100, CUDNN_MAJOR, CUDNN_MINOR, CUDNN_PATCHLEVEL,
                 CUDNN_MAJOR);
        return -1;
    }
    if (nccl / 10000 != NCCL_MAJOR)
        camo_warn("NCCL %d.x found at run time, built with %d.%d: collectives may fail",
                  nccl / 10000, NCCL_MAJOR, NCCL_MINOR);
    return 0;
}

extern "C" int camo_cuda_mem_info(int device, size_t *free_b, size_t *total_b) {
    *free_b = *total_b = 0;
    cudaError_t e = cudaSetDevice(device);
    if (e == cudaSuccess) e = cudaMemGetInfo(free_b, total_b);
    if (e != cudaSuccess) {
        cudaGetLastError(); /* not sticky: later calls should not see it */
        CAMO_ERR("GPU %d: cannot read its memory: %s", device, cudaGetErrorString(e));
        return -1;
    }
    return 0;
}

/* cudaGetDeviceCount leaves its argument untouched without a driver (BUILD-NOTES 5). */
extern "C" int camo_cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return n > 0 ? n : 0;
}

extern "C" void *camo_backend_stream(camo_backend *be) {
    if (!camo_backend_on_gpu(be)) return NULL;
    return (void *)cu_stream(be);
}

/* ---- cuda.h extras ---- */

extern "C" camo_cuda_amp camo_cuda_set_amp(camo_backend *be, camo_cuda_amp mode) {
    if (!camo_backend_on_gpu(be)) return CAMO_AMP_OFF;
    cuda_ctx *ctx = cu_ctx(be);
    if (mode == CAMO_AMP_BF16 && ctx->sm < 80) {
        camo_warn("GPU %d (sm_%d) has no bf16 tensor cores: train.amp = bf16 falls back to "
                  "fp16 (use dynamic loss scaling, docs/cuda.md)", ctx->device, ctx->sm);
        mode = CAMO_AMP_FP16;
    }
    ctx->amp = mode;
    return mode;
}

extern "C" void camo_cuda_set_deterministic(camo_backend *be, int on) {
    if (!camo_backend_on_gpu(be)) return;
    cu_ctx(be)->deterministic = on != 0;
}

extern "C" int camo_cuda_backend_status(camo_backend *be) {
    if (!camo_backend_on_gpu(be)) return 0;
    cuda_ctx *ctx = cu_ctx(be);
    if (!ctx->failed) return 0;
    CAMO_ERR("GPU %d: %s", ctx->device, ctx->first_error);
    return -1;
}

extern "C" void *camo_cuda_host_alloc(size_t bytes) {
    void *p = NULL;
    if (camo_cuda_device_count() > 0 && cudaHostAlloc(&p, bytes ? bytes : 1,
                                                      cudaHostAllocPortable) == cudaSuccess)
        return p;
    cudaGetLastError();
    return camo_malloc(bytes ? bytes : 1);
}

extern "C" void camo_cuda_host_free(void *p) {
    if (!p) return;
    cudaPointerAttributes a;
    if (cudaPointerGetAttributes(&a, p) == cudaSuccess && a.type == cudaMemoryTypeHost) {
        cudaFreeHost(p);
        return;
    }
    cudaGetLastError();
    free(p);
}

extern "C" void camo_cuda_mem_stats(camo_backend *be, size_t *reserved, size_t *peak,
                                    size_t *mallocs) {
    cuda_pool *pool = camo_backend_on_gpu(be) ? &cu_ctx(be)->pool : NULL;
    if (reserved) *reserved = pool ? pool->reserved : 0;
    if (peak) *peak = pool ? pool->peak_reserved : 0;
    if (mallocs) *mallocs = pool ? pool->n_mallocs : 0;
}
