/* cuda_moe.cu: the CUDA twin of src/backend/cpu/cpu_moe.c: the mixture-of-experts row moves
 * (backend.h). idx has no repeats, so the scatters have one writer per element and need no
 * atomics; the gate gradient is one block per row with a fixed-order tree sum
 * (deterministic). */
#include "cuda_common.cuh"

__global__ static void moe_gather_k(size_t total, size_t D, float *dst, const float *src,
                                    const int *idx) {
    CU_GRID_LOOP(i, total) dst[i] = src[(size_t)idx[i / D] * D + i % D];
}

__global__ static void moe_scatter_add_k(size_t total, size_t D, float *dst, const float *src,
                                         const int *idx) {
    CU_GRID_LOOP(i, total) dst[(size_t)idx[i / D] * D + i % D] += src[i];
}

__global__ static void moe_combine_fwd_k(size_t total, size_t D, int K, int e, float *out,
                                         const float *y, const float *gate, const int *idx) {
    CU_GRID_LOOP(i, total) {
        size_t r = (size_t)idx[i / D];
        out[r * D + i % D] += gate[r * K + e] * y[i];
    }
}

__global__ static void moe_combine_dy_k(size_t total, size_t D, int K, int e, float *dy,
                                        const float *dout, const float *gate, const int *idx) {
    CU_GRID_LOOP(i, total) {
        size_t r = (size_t)idx[i / D];
        dy[i] += gate[r * K + e] * dout[r * D + i % D];
    }
}

/* block j: dgate[idx[j]*K + e] += dout[idx[j]] . y[j] */
__global__ static void moe_combine_dgate_k(size_t D, int K, int e, float *dgate,
                                           const float *dout, const float *y, const int *idx) {
    __shared__ double sh[CU_THREADS];
    size_t r = (size_t)idx[blockIdx.x];
    const float *g = dout + r * D, *s = y + (size_t)blockIdx.x * D;
    double acc = 0;
    for (size_t k = threadIdx.x; k < D; k += blockDim.x) acc += (double)g[k] * s[k];
    sh[threadIdx.x] = acc;
    __syncthreads();
    for (unsigned w = blockDim.x / 2; w > 0; w /= 2) {
        if (threadIdx.x < w) sh[threadIdx.x] += sh[threadIdx.x + w];
        __syncthreads();
    }
    if (threadIdx.x == 0) dgate[r * K + e] += (float)sh[0];
}

static void cu_moe_gather(camo_backend *be, int n, size_t D, float *dst, const float *src,
                          const int *idx) {
    size_t total = (size_t)n * D;
    if (!total) return;
    moe_gather_k CU_LAUNCH(be, total)(total, D, dst, src, idx);
    CU_LAUNCHED(be);
}

static void cu_moe_scatter_add(camo_backend *be, int n, size_t D, float *dst, const float *src,
                               const int *idx) {
    size_t total = (size_t)n * D;
    if (!total) return;
    moe_scatter_add_k CU_LAUNCH(be, total)(total, D, dst, src, idx);
    CU_LAUNCHED(be);
}

static void cu_moe_combine_forward(camo_backend *be, int n, size_t D, int K, int e, float *out,
                                   const float *y, const float *gate, const int *idx) {
    size_t total = (size_t)n * D;
    if (!total) return;
    moe_combine_fwd_k CU_LAUNCH(be, total)(total, D, K, e, out, y, gate, idx);
    CU_LAUNCHED(be);
}

static void cu_moe_combine_backward(camo_backend *be, int n, size_t D, int K, int e, float *dy,
                                    float *dgate, const float *dout, const float *y,
                                    const float *gate, const int *idx) {
    size_t total = (size_t)n * D;
    if (!total) return;
    if (dy) {
        moe_combine_dy_k CU_LAUNCH(be, total)(total, D, K, e, dy, dout, gate, idx);
        CU_LAUNCHED(be);
    }
    if (dgate) {
        moe_combine_dgate_k<<<n, CU_THREADS, 0, cu_stream(be)>>>(D, K, e, dgate, dout, y, idx);
        CU_LAUNCHED(be);
    }
}

extern "C" void cuda_register_moe(camo_backend *be) {
    be->moe_gather = cu_moe_gather;
    be->moe_scatter_add = cu_moe_scatter_add;
    be->moe_combine_forward = cu_moe_combine_forward;
    be->moe_combine_backward = cu_moe_combine_backward;
}
