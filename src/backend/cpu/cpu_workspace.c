/* cpu_workspace.c: the CPU backend's scratch (im2col columns, partial sums, loss weights),
 * one buffer per backend that grows on demand. Its own file so that the op files
 * (cpu_conv.c, cpu_loss.c) depend on it and not on backend_cpu.c, which registers them. */
#include "cpu_internal.h"

#include <stdlib.h>

#include "core/common.h"

float *cpu_workspace(camo_backend *be, size_t floats) {
    cpu_ctx *ctx = be->ctx;
    if (floats > ctx->work_cap) {
        cpu_mem_count(be, (ptrdiff_t)(floats - ctx->work_cap) * (ptrdiff_t)sizeof(float));
        free(ctx->work);
        ctx->work = NULL;
        if (posix_memalign((void **)&ctx->work, 64, floats * sizeof(float)) != 0)
            CAMO_DIE("out of memory: CPU workspace of %zu floats", floats);
        ctx->work_cap = floats;
    }
    return ctx->work;
}

void cpu_workspace_free(camo_backend *be) {
    cpu_ctx *ctx = be->ctx;
    cpu_mem_count(be, -(ptrdiff_t)(ctx->work_cap * sizeof(float)));
    free(ctx->work);
    ctx->work = NULL;
    ctx->work_cap = 0;
}
