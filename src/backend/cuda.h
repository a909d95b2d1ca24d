/* cuda.h: CUDA-only extras beyond the op table (backend.h): mixed precision, determinism,
 * the sticky error state, pinned host memory and allocator statistics. Declared in every
 * build; without CUDA they are harmless no-ops or fail clearly (src/backend/backend_cuda_stub.c), so
 * callers never #ifdef. docs/cuda.md describes the design. */
#ifndef CAMO_CUDA_H
#define CAMO_CUDA_H

#include <stddef.h>

#include "backend/backend.h"

typedef enum { CAMO_AMP_OFF, CAMO_AMP_BF16, CAMO_AMP_FP16 } camo_cuda_amp;

/* Parses "off" | "bf16" | "fp16" (train.amp); -1 if unknown. */
int camo_cuda_amp_parse(const char *s, camo_cuda_amp *out);

/* Convolutions of a CUDA backend run in bf16/fp16 on tensor cores with fp32 accumulation
 * (operands are converted in scratch; the op table stays fp32, so master weights, optimizer
 * state and every other op stay fp32). bf16 on a GPU without bf16 (sm_75) falls back to fp16
 * with a notice. The CPU backend ignores it (returns 0). Returns the mode in effect.
 * A new CUDA backend starts in the mode of the environment variable CAMO_AMP (default off). */
camo_cuda_amp camo_cuda_set_amp(camo_backend *be, camo_cuda_amp mode);

/* train.deterministic: with on != 0, a CUDA backend gives bitwise-identical results from run
 * to run on the same GPU and software: its convolutions take only cuDNN algorithms reported
 * CUDNN_DETERMINISTIC (else the direct kernel, one thread per output), and the bilinear
 * resize backward gathers in a fixed order instead of scattering with atomicAdd. A little
 * slower. Off by default. The CPU backend is deterministic always and ignores it. Set it
 * right after creating the backend (it may be changed later: conv plans are keyed by it). */
void camo_cuda_set_deterministic(camo_backend *be, int on);

/* 0 while every CUDA call of this backend succeeded; -1 with camo_last_error() set to the
 * first failure otherwise (ops return void; a failed backend also makes download() write
 * NaN so a loss check catches it). 0 for the CPU backend. */
int camo_cuda_backend_status(camo_backend *be);

/* Convolutions of this backend planned on the direct kernel (own, slow fp32 kernels) because
 * cuDNN reported the set-up unsupported: one per distinct (op, geometry, deterministic flag).
 * 0 for the CPU backend and builds without CUDA. A healthy GPU run keeps this at 0; any
 * other cuDNN failure is fatal instead (camo_cuda_backend_status). docs/cuda.md. */
int camo_cuda_direct_conv_count(camo_backend *be);
/* AMP convolutions of this backend (one per distinct op and geometry) that run in fp32
 * because cuDNN reported their half-precision set-up unsupported. 0 without AMP. */
int camo_cuda_amp_fp32_conv_count(camo_backend *be);

/* Pinned (page-locked) host memory for loader batches: uploads from it are asynchronous and
 * never take the driver's pageable-copy path. Falls back to malloc when there is no GPU.
 * Free with camo_cuda_host_free. An upload from pinned memory may still be in flight when
 * upload() returns: reuse the buffer only after a download() or sync() on that backend. */
void *camo_cuda_host_alloc(size_t bytes);
void camo_cuda_host_free(void *p);
/* The same with the loader's hook signature (camo_loader_opts.alloc / .free; ctx unused). */
void *camo_cuda_loader_alloc(size_t bytes, void *ctx);
void camo_cuda_loader_free(void *p, void *ctx);

/* Caching allocator: bytes reserved from the driver and cudaMalloc calls so far
 * (tests check that a second training step makes none). 0 for the CPU backend. */
void camo_cuda_mem_stats(camo_backend *be, size_t *reserved, size_t *peak, size_t *mallocs);

/* Free and total memory of GPU device (cudaMemGetInfo after cudaSetDevice: this starts a
 * CUDA context in the calling process). 0, or -1 with an error (no CUDA, no device). */
int camo_cuda_mem_info(int device, size_t *free_b, size_t *total_b);

/* Logs the CUDA runtime/driver, cuDNN and NCCL versions found at run time and those built
 * against; -1 with an error when the cuDNN found cannot serve this build (another major
 * version, or older than its headers). 0 without CUDA. */
int camo_cuda_check_versions(void);

#endif
