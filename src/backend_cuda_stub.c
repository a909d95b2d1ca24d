/* backend_cuda_stub.c: the CUDA entry points of backend.h for builds without CUDA, so
 * callers never #ifdef. (The CUDA build's versions live in cuda/.) */
#include "camo/backend.h"
#include "camo/comm.h"
#include "camo/common.h"

camo_backend *camo_backend_cuda_create(int device) {
    CAMO_ERR("GPU %d requested, but camotrain was built without CUDA (nvcc not found or "
             "make CUDA=0); use --devices cpu", device);
    return NULL;
}

int camo_cuda_device_count(void) { return 0; }

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
