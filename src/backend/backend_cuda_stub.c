/* backend_cuda_stub.c: the CUDA entry points of backend.h, comm.h and cuda.h for builds
 * without CUDA, so callers never #ifdef (the CUDA build's versions live in cuda/), plus the
 * parts of cuda.h that need no GPU in any build. */
#include "backend/backend.h"
#include "backend/comm.h"
#include "core/common.h"
#include "core/mpi.h"
#include "backend/cuda.h"

#include <string.h>

int camo_cuda_amp_parse(const char *s, camo_cuda_amp *out) {
    if (!strcmp(s, "off")) *out = CAMO_AMP_OFF;
    else if (!strcmp(s, "bf16")) *out = CAMO_AMP_BF16;
    else if (!strcmp(s, "fp16")) *out = CAMO_AMP_FP16;
    else return -1;
    return 0;
}

void *camo_cuda_loader_alloc(size_t bytes, void *ctx) {
    (void)ctx;
    return camo_cuda_host_alloc(bytes);
}

void camo_cuda_loader_free(void *p, void *ctx) {
    (void)ctx;
    camo_cuda_host_free(p);
}

#ifndef CAMO_HAVE_CUDA

camo_backend *camo_backend_cuda_create(int device) {
    CAMO_ERR("GPU %d requested, but camotrain was built without CUDA (nvcc not found or "
             "make CUDA=0); use --devices cpu", device);
    return NULL;
}

int camo_cuda_device_count(void) { return 0; }

int camo_cuda_check_versions(void) { return 0; }

int camo_cuda_mem_info(int device, size_t *free_b, size_t *total_b) {
    *free_b = *total_b = 0;
    CAMO_ERR("GPU %d: camotrain was built without CUDA", device);
    return -1;
}

void *camo_backend_stream(camo_backend *be) {
    (void)be;
    return NULL;
}

static int no_cuda_comm(int n, const int *devices, camo_comm **comms) {
    (void)comms;
    CAMO_ERR("%d GPU replicas requested (first GPU %d), but camotrain was built without "
             "CUDA; use --devices cpu:N", n, n > 0 ? devices[0] : -1);
    return -1;
}

int camo_comm_nccl_create(int n, const int *devices, void *const *streams, double timeout_s,
                          camo_comm **comms) {
    (void)streams, (void)timeout_s;
    return no_cuda_comm(n, devices, comms);
}

int camo_comm_local_create(int n, const int *devices, void *const *streams, double timeout_s,
                           camo_comm **comms) {
    (void)streams, (void)timeout_s;
    return no_cuda_comm(n, devices, comms);
}

int camo_comm_nccl_unique_id(void *nccl_id) {
    (void)nccl_id;
    CAMO_ERR("an NCCL id was requested, but camotrain was built without CUDA");
    return -1;
}

int camo_comm_nccl_create_span(int n, const int *devices, void *const *streams,
                               double timeout_s, const camo_comm_span *span,
                               const void *nccl_id, camo_comm **comms) {
    (void)streams, (void)timeout_s, (void)nccl_id;
    if (span) camo_mpi_group_free(span->xp); /* taken over, as the CUDA build does */
    return no_cuda_comm(n, devices, comms);
}

camo_cuda_amp camo_cuda_set_amp(camo_backend *be, camo_cuda_amp mode) {
    (void)be, (void)mode;
    return CAMO_AMP_OFF;
}

void camo_cuda_set_deterministic(camo_backend *be, int on) { (void)be, (void)on; }

int camo_cuda_backend_status(camo_backend *be) {
    (void)be;
    return 0;
}

int camo_cuda_direct_conv_count(camo_backend *be) {
    (void)be;
    return 0;
}

int camo_cuda_amp_fp32_conv_count(camo_backend *be) {
    (void)be;
    return 0;
}

void *camo_cuda_host_alloc(size_t bytes) { return camo_malloc(bytes ? bytes : 1); }

void camo_cuda_host_free(void *p) { free(p); }

void camo_cuda_mem_stats(camo_backend *be, size_t *reserved, size_t *peak, size_t *mallocs) {
    (void)be;
    if (reserved) *reserved = 0;
    if (peak) *peak = 0;
    if (mallocs) *mallocs = 0;
}

#endif /* !CAMO_HAVE_CUDA */
