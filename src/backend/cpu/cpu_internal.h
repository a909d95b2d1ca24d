/* cpu_internal.h: shared state of the CPU backend's op files (cpu_*.c). Each op file
 * registers its functions into the table with a cpu_register_* call. */
#ifndef CAMO_CPU_INTERNAL_H
#define CAMO_CPU_INTERNAL_H

#include "backend/backend.h"

typedef struct cpu_ctx {
    int threads;      /* intra-op threads for OpenMP loops and OpenBLAS */
    float *work;      /* scratch of cpu_workspace.c, grown on demand, owned by this backend */
    size_t work_cap;  /* in floats */
    size_t live, peak; /* bytes of alloc'ed blocks now and at most (workspace included) */
} cpu_ctx;

static inline int cpu_threads(camo_backend *be) { return ((cpu_ctx *)be->ctx)->threads; }

/* cpu_workspace.c. Scratch of at least `floats` floats; valid until the next call on this
 * backend. _free releases it (cpu_destroy). */
float *cpu_workspace(camo_backend *be, size_t floats);
/* backend_cpu.c: bytes allocated (+) or freed (-), for camo_cpu_mem_stats */
void cpu_mem_count(camo_backend *be, ptrdiff_t bytes);
void cpu_workspace_free(camo_backend *be);

void cpu_register_conv(camo_backend *be);        /* cpu_conv.c: gemm, conv2d_* */
void cpu_register_norm(camo_backend *be);        /* cpu_norm.c: bn_*, layernorm_* */
void cpu_register_pool(camo_backend *be);        /* cpu_pool.c: pool, adaptive avg, resize */
void cpu_register_elementwise(camo_backend *be); /* cpu_elementwise.c: act, add, axpy, scale,
                                                    mul, channel_slice, softmax */
void cpu_register_loss(camo_backend *be);        /* cpu_loss.c: loss_* */
void cpu_register_optim(camo_backend *be);       /* cpu_optim.c: sumsq, sgd, adamw, ema */
void cpu_register_attention(camo_backend *be);   /* cpu_attention.c: attention_*, xca_* */
void cpu_register_rows(camo_backend *be);        /* cpu_rows.c: copy_rows */
void cpu_register_moe(camo_backend *be);         /* cpu_moe.c: moe_* */

#endif
