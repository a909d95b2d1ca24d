/* backend_cuda_stub.c: the CUDA entry points of backend.h for builds without CUDA, so
 * callers never #ifdef. (The CUDA build's versions live in cuda/.) */
#include "camo/backend.h"
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
