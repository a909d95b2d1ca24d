/* backend_cpu.c: the CPU backend's memory ops and table assembly. Compute ops live in
 * cpu_conv.c, cpu_norm.c, cpu_pool.c, cpu_elementwise.c, cpu_loss.c, cpu_optim.c and
 * cpu_attention.c, their shared scratch in cpu_workspace.c. */
#include "cpu_internal.h"

#include "core/common.h"

#include <cblas.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

/* Each block starts with a header of CPU_ALLOC_HEAD bytes holding its size, so the backend
 * knows how much is allocated (camo_cpu_mem_stats: metrics.jsonl, the end summary). */
#define CPU_ALLOC_HEAD 256

void cpu_mem_count(camo_backend *be, ptrdiff_t bytes) {
    cpu_ctx *ctx = be->ctx;
    ctx->live += bytes;
    if (ctx->live > ctx->peak) ctx->peak = ctx->live;
}

static void *cpu_alloc(camo_backend *be, size_t bytes) {
    void *p = NULL;
    /* 256 bytes: the alignment net.c gives every parameter inside its blocks
     * (CAMO_PARAM_ALIGN, as the CUDA backend's cudaMalloc blocks have); more than SIMD loops
     * and OpenBLAS need for their fast paths */
    if (posix_memalign(&p, 256, CPU_ALLOC_HEAD + (bytes ? bytes : 256)) != 0) {
        CAMO_ERR("out of memory: cannot allocate %zu bytes on the CPU", bytes);
        return NULL;
    }
    *(size_t *)p = bytes;
    cpu_mem_count(be, (ptrdiff_t)bytes);
    p = (char *)p + CPU_ALLOC_HEAD;
    memset(p, 0, bytes);
    return p;
}

static void cpu_free(camo_backend *be, void *p) {
    if (!p) return;
    void *block = (char *)p - CPU_ALLOC_HEAD;
    cpu_mem_count(be, -(ptrdiff_t)*(size_t *)block);
    free(block);
}

void camo_cpu_mem_stats(camo_backend *be, size_t *live, size_t *peak) {
    cpu_ctx *ctx = be->ctx;
    if (live) *live = ctx->live;
    if (peak) *peak = ctx->peak;
}

static void cpu_memcpy(camo_backend *be, void *dst, const void *src, size_t bytes) {
    (void)be;
    if (bytes && dst != src) memmove(dst, src, bytes);
}

static void cpu_zero(camo_backend *be, void *dst, size_t bytes) {
    (void)be;
    if (bytes) memset(dst, 0, bytes);
}

static void cpu_sync(camo_backend *be) { (void)be; }

static void cpu_fence(camo_backend *be, int k) { (void)be; (void)k; }

static void cpu_destroy(camo_backend *be) {
    if (!be) return;
    if (be->ctx) cpu_workspace_free(be);
    free(be->ctx);
    free(be);
}

camo_backend *camo_backend_cpu_create(int threads) {
    camo_backend *be = camo_calloc(1, sizeof *be);
    cpu_ctx *ctx = camo_calloc(1, sizeof *ctx);
    if (threads <= 0) threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (threads <= 0) threads = 1;
    ctx->threads = threads;
    /* every sgemm runs inside the backend's own OpenMP team (cpu_conv.c): OpenBLAS's pool
     * would only compete with it for the same cores */
    openblas_set_num_threads(1);
    be->name = "cpu";
    be->device = -1;
    be->threads = threads;
    be->ctx = ctx;
    be->alloc = cpu_alloc;
    be->free = cpu_free;
    be->upload = cpu_memcpy;
    be->download = cpu_memcpy;
    be->copy = cpu_memcpy;
    be->zero = cpu_zero;
    be->sync = cpu_sync;
    be->fence = cpu_fence;
    be->fence_wait = cpu_fence;
    be->download_async = cpu_memcpy;
    be->destroy = cpu_destroy;
    cpu_register_conv(be);
    cpu_register_norm(be);
    cpu_register_pool(be);
    cpu_register_elementwise(be);
    cpu_register_loss(be);
    cpu_register_optim(be);
    cpu_register_attention(be);
    cpu_register_rows(be);
    cpu_register_moe(be);
    return be;
}

void camo_cpu_env_reexec(char **argv) {
    if (getenv("CAMO_NO_REEXEC")) return;
    int change = 0;
    if (!getenv("OMP_WAIT_POLICY")) {
        setenv("OMP_WAIT_POLICY", "passive", 1);
        change = 1;
    }
    const char *core = openblas_get_corename();
    if (!getenv("OPENBLAS_CORETYPE") && core && !strcasecmp(core, "prescott")) {
        __builtin_cpu_init();
        const char *better = __builtin_cpu_supports("avx512f") ? "SkylakeX" :
                             __builtin_cpu_supports("avx2") ? "Haswell" : NULL;
        if (better) {
            setenv("OPENBLAS_CORETYPE", better, 1);
            change = 1;
        }
    }
    if (!change) return;
    setenv("CAMO_NO_REEXEC", "1", 1); /* once: the new image must not loop */
    execv("/proc/self/exe", argv);
    unsetenv("CAMO_NO_REEXEC");       /* exec failed: go on with the defaults */
}
