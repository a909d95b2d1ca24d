/* cuda_rows.cu: the CUDA twin of src/backend/cpu/cpu_rows.c: copy_rows, a block of C
 * channels moved between tensors of different row strides (the slice layer). */
#include "cuda_common.cuh"

__global__ static void copy_rows_k(int accumulate, size_t n, int C, float *dst, int ldd,
                                   const float *src, int lds) {
    CU_GRID_LOOP(i, n) {
        size_t m = i / C;
        int c = (int)(i % C);
        float v = src[m * lds + c];
        if (accumulate) dst[m * ldd + c] += v;
        else dst[m * ldd + c] = v;
    }
}

static void cu_copy_rows(camo_backend *be, int accumulate, int M, int C, float *dst, int ldd,
                         const float *src, int lds) {
    size_t n = (size_t)M * C;
    if (!n) return;
    copy_rows_k CU_LAUNCH(be, n)(accumulate, n, C, dst, ldd, src, lds);
    CU_LAUNCHED(be);
}

extern "C" void cuda_register_rows(camo_backend *be) { be->copy_rows = cu_copy_rows; }
