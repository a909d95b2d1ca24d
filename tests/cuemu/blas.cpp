/* blas.cpp: the cuBLAS stand-in of cuemu (include/cublas_v2.h): handles, stream, math mode,
 * workspace, cublasSgemm and cublasSgemmStridedBatched, validated as cuBLAS validates them
 * and queued on the handle's stream (cuemu::enqueue). Where the real library would fault or
 * misbehave silently (a host pointer, an overrun, a freed workspace, a handle used on another
 * device) this one aborts through cuemu::fatal naming the call and operand; such places are
 * marked "STRICTER". The product is a plain reference loop with double accumulation. Test
 * infrastructure only. */
#include <cublas_v2.h>

#include "lib_checks.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <unordered_set>
#include <vector>

using namespace cuemu;

/* ------------------------------------------------------------------------------------- */
/* cuBLAS                                                                                 */

struct cublasContext {
    int device;           /* current device at cublasCreate */
    cudaStream_t stream;  /* NULL: the legacy default stream */
    cublasMath_t math;
    void *ws;             /* cublasSetWorkspace; NULL: the library's own */
    size_t ws_size;
};

namespace {

cublasStatus_t blas_handle(cublasHandle_t h, const char *fn) {
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!live_objects().has(h))
        cuemu::fatal("%s: handle %p is not a live cublasHandle_t (destroyed, or never created)",
                     fn, (void *)h);
    return CUBLAS_STATUS_SUCCESS;
}

/* Bytes spanned by a column-major rows x cols matrix with leading dimension ld. */
size_t colmajor_bytes(int rows, int cols, int ld) {
    if (rows <= 0 || cols <= 0) return 0;
    return ((size_t)(cols - 1) * (size_t)ld + (size_t)rows) * sizeof(float);
}

} // namespace

extern "C" cublasStatus_t cublasCreate_v2(cublasHandle_t *handle) {
    if (!handle) return CUBLAS_STATUS_INVALID_VALUE;
    *handle = NULL;
    if (cuemu::device_count() <= 0) return CUBLAS_STATUS_NOT_INITIALIZED;
    cublasContext *h = new cublasContext;
    h->device = cuemu::current_device();
    h->stream = NULL;
    h->math = CUBLAS_DEFAULT_MATH;
    h->ws = NULL;
    h->ws_size = 0;
    live_objects().add(h);
    *handle = h;
    return CUBLAS_STATUS_SUCCESS;
}

extern "C" cublasStatus_t cublasDestroy_v2(cublasHandle_t handle) {
    cublasStatus_t st = blas_handle(handle, "cublasDestroy");
    if (st != CUBLAS_STATUS_SUCCESS) return st;
    live_objects().remove(handle);
    delete handle; /* queued work holds copies of everything it needs */
    return CUBLAS_STATUS_SUCCESS;
}

extern "C" cublasStatus_t cublasSetStream_v2(cublasHandle_t handle, cudaStream_t streamId) {
    cublasStatus_t st = blas_handle(handle, "cublasSetStream");
    if (st != CUBLAS_STATUS_SUCCESS) return st;
    if (streamId) {
        /* STRICTER: real cuBLAS takes any stream here and fails at the first launch. */
        int sd = cuemu::stream_device(streamId);
        if (sd < 0 || sd != handle->device) return CUBLAS_STATUS_INVALID_VALUE;
    }
    handle->stream = streamId;
    /* as in real cuBLAS: cublasSetStream resets the workspace to the library's default, so a
     * user workspace must be set again after it */
    handle->ws = NULL;
    handle->ws_size = 0;
    return CUBLAS_STATUS_SUCCESS;
}

extern "C" cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode) {
    cublasStatus_t st = blas_handle(handle, "cublasSetMathMode");
    if (st != CUBLAS_STATUS_SUCCESS) return st;
    int base = (int)mode & ~(int)CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION;
    if (base < CUBLAS_DEFAULT_MATH || base > CUBLAS_TF32_TENSOR_OP_MATH)
        return CUBLAS_STATUS_INVALID_VALUE;
    handle->math = mode; /* results are exact (double) whatever the mode */
    return CUBLAS_STATUS_SUCCESS;
}

extern "C" cublasStatus_t cublasSetWorkspace_v2(cublasHandle_t handle, void *workspace,
                                                size_t workspaceSizeInBytes) {
    cublasStatus_t st = blas_handle(handle, "cublasSetWorkspace");
    if (st != CUBLAS_STATUS_SUCCESS) return st;
    if (!workspace && workspaceSizeInBytes) return CUBLAS_STATUS_INVALID_VALUE;
    if ((uintptr_t)workspace % 256) return CUBLAS_STATUS_INVALID_VALUE; /* as documented */
    /* the library writes into it from its kernels: a range that is not device memory of the
     * handle's GPU is a fault there (STRICTER: caught at once instead of at first use) */
    if (workspaceSizeInBytes &&
        !cuemu::is_device_range(workspace, workspaceSizeInBytes, handle->device))
        cuemu::fatal("cublasSetWorkspace: workspace %p, %zu bytes, is not inside one live "
                     "cudaMalloc block of device %d (the handle's)",
                     workspace, workspaceSizeInBytes, handle->device);
    handle->ws = workspace;
    handle->ws_size = workspaceSizeInBytes;
    return CUBLAS_STATUS_SUCCESS;
}

extern "C" const char *cublasGetStatusString(cublasStatus_t status) {
    switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    }
    return "CUBLAS_STATUS_UNKNOWN";
}

namespace {

/* The sgemm itself, column-major, on the stream's worker. Sums in double. */
void sgemm_run(bool ta, bool tb, int m, int n, int k, float alpha, const float *A, int lda,
               const float *B, int ldb, float beta, float *C, int ldc) {
    std::vector<double> acc((size_t)m);
    std::vector<float> bcol(tb ? (size_t)k : 0);
    /* alpha == 0 or k == 0: C = beta C and A, B are not read (reference BLAS) */
    bool product = alpha != 0.0f && k > 0;
    for (int j = 0; j < n; j++) {
        std::fill(acc.begin(), acc.end(), 0.0);
        if (product) {
            const float *bj; /* op(B)(:, j), contiguous */
            if (!tb) {
                bj = B + (size_t)j * ldb;
            } else {
                for (int l = 0; l < k; l++) bcol[l] = B[j + (size_t)l * ldb];
                bj = bcol.data();
            }
            if (!ta) { /* op(A)(i, l) = A[i + l lda]: axpy over columns of A */
                for (int l = 0; l < k; l++) {
                    const float *a = A + (size_t)l * lda;
                    double b = bj[l];
                    for (int i = 0; i < m; i++) acc[i] += (double)a[i] * b;
                }
            } else { /* op(A)(i, l) = A[l + i lda]: dot of column i of A with bj */
                for (int i = 0; i < m; i++) {
                    const float *a = A + (size_t)i * lda;
                    double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
                    int l = 0;
                    for (; l + 4 <= k; l += 4) {
                        s0 += (double)a[l] * bj[l];
                        s1 += (double)a[l + 1] * bj[l + 1];
                        s2 += (double)a[l + 2] * bj[l + 2];
                        s3 += (double)a[l + 3] * bj[l + 3];
                    }
                    for (; l < k; l++) s0 += (double)a[l] * bj[l];
                    acc[i] = (s0 + s1) + (s2 + s3);
                }
            }
        }
        float *c = C + (size_t)j * ldc;
        for (int i = 0; i < m; i++) {
            /* beta == 0: C is not read (a NaN there does not propagate) */
            double v;
            if (!product) v = beta != 0.0f ? (double)beta * c[i] : 0.0;
            else if (beta == 0.0f) v = (double)alpha * acc[i];
            else v = (double)alpha * acc[i] + (double)beta * c[i];
            c[i] = (float)v;
        }
    }
}

} // namespace

extern "C" cublasStatus_t cublasSgemm_v2(cublasHandle_t handle, cublasOperation_t transa,
                                         cublasOperation_t transb, int m, int n, int k,
                                         const float *alpha, const float *A, int lda,
                                         const float *B, int ldb, const float *beta, float *C,
                                         int ldc) {
    static const char *fn = "cublasSgemm";
    cublasStatus_t st = blas_handle(handle, fn);
    if (st != CUBLAS_STATUS_SUCCESS) return st;
    /* argument checks in cuBLAS's order of concerns; OP_C is OP_T for real matrices */
    if ((transa != CUBLAS_OP_N && transa != CUBLAS_OP_T && transa != CUBLAS_OP_C) ||
        (transb != CUBLAS_OP_N && transb != CUBLAS_OP_T && transb != CUBLAS_OP_C))
        return CUBLAS_STATUS_INVALID_VALUE;
    bool ta = transa != CUBLAS_OP_N, tb = transb != CUBLAS_OP_N;
    if (m < 0 || n < 0 || k < 0) return CUBLAS_STATUS_INVALID_VALUE;
    int rows_a = ta ? k : m, cols_a = ta ? m : k; /* A as stored */
    int rows_b = tb ? n : k, cols_b = tb ? k : n;
    if (lda < std::max(1, rows_a) || ldb < std::max(1, rows_b) || ldc < std::max(1, m))
        return CUBLAS_STATUS_INVALID_VALUE;
    if (!alpha || !beta) return CUBLAS_STATUS_INVALID_VALUE;
    if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS; /* quick return, nothing read */
    /* STRICTER: real cuBLAS does not check the current device; the handle is tied to the GPU
     * that was current at cublasCreate, and using it with another one current is undefined
     * (work lands on the wrong GPU or faults). */
    if (cuemu::current_device() != handle->device)
        cuemu::fatal("%s: handle created on device %d used while device %d is current", fn,
                     handle->device, cuemu::current_device());
    check_host_scalar(alpha, fn, "alpha");
    check_host_scalar(beta, fn, "beta");
    const float a_v = *alpha, b_v = *beta; /* host pointer mode: read now */
    int dev = handle->device;
    /* Every operand must lie in device memory of the handle's GPU for all the bytes its
     * column-major extent spans: anything else is a fault in the kernel. STRICTER: A and B
     * are checked even when alpha == 0 or k == 0 (where they would not be read). */
    size_t bytes_a = colmajor_bytes(rows_a, cols_a, lda);
    size_t bytes_b = colmajor_bytes(rows_b, cols_b, ldb);
    size_t bytes_c = colmajor_bytes(m, n, ldc);
    struct { const void *p; size_t bytes; const char *name; int rows, cols, ld; } ops[3] = {
        {A, bytes_a, "A", rows_a, cols_a, lda},
        {B, bytes_b, "B", rows_b, cols_b, ldb},
        {C, bytes_c, "C", m, n, ldc}};
    for (const auto &o : ops)
        if (o.bytes && !cuemu::is_device_range(o.p, o.bytes, dev))
            cuemu::fatal("%s: %s = %p (%d x %d, ld %d: %zu bytes, m=%d n=%d k=%d, trans %c%c) is "
                         "not inside one live cudaMalloc block of device %d",
                         fn, o.name, o.p, o.rows, o.cols, o.ld, o.bytes, m, n, k,
                         ta ? 'T' : 'N', tb ? 'T' : 'N', dev);
    /* STRICTER: C aliasing A or B is undefined in BLAS (results depend on the kernel's
     * tiling); the real library does not check. */
    if (overlaps(C, bytes_c, A, bytes_a) || overlaps(C, bytes_c, B, bytes_b))
        cuemu::fatal("%s: output C (%p, %zu bytes) overlaps input %s (m=%d n=%d k=%d)", fn,
                     (void *)C, bytes_c, overlaps(C, bytes_c, A, bytes_a) ? "A" : "B", m, n, k);
    /* a workspace set earlier and freed since would be written by the kernel */
    if (handle->ws && !cuemu::is_device_range(handle->ws, handle->ws_size, dev))
        cuemu::fatal("%s: the workspace given to cublasSetWorkspace (%p, %zu bytes) is no "
                     "longer a live cudaMalloc block of device %d",
                     fn, handle->ws, handle->ws_size, dev);
    /* The kernel may use the workspace (split-K): scribble on part of it so that a workspace
     * shared with live data shows. */
    void *ws = handle->ws;
    size_t scribble = std::min(handle->ws_size, std::max((size_t)4096, bytes_c));
    cudaError_t e = cuemu::enqueue(handle->stream, [=]() {
        if (ws) memset(ws, 0xff, scribble);
        sgemm_run(ta, tb, m, n, k, a_v, A, lda, B, ldb, b_v, C, ldc);
    });
    return e == cudaSuccess ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_EXECUTION_FAILED;
}

namespace {

/* Whether two of the batch's output matrices share an element (cuBLAS leaves the result
 * undefined then; STRICTER: it does not check). Marks every element of C_0 .. C_{batch-1}
 * in a bitmap of their common extent; extents over 2^26 elements are not checked. */
bool batch_outputs_overlap(int m, int n, int ldc, long long strideC, int batch) {
    size_t extent = (size_t)(batch - 1) * (size_t)strideC + (size_t)(n - 1) * ldc + (size_t)m;
    if (extent > ((size_t)1 << 26)) return false;
    std::vector<bool> seen(extent, false);
    for (int b = 0; b < batch; b++)
        for (int j = 0; j < n; j++)
            for (int i = 0; i < m; i++) {
                size_t e = (size_t)b * (size_t)strideC + (size_t)j * ldc + (size_t)i;
                if (seen[e]) return true;
                seen[e] = true;
            }
    return false;
}

} // namespace

/* cublasSgemm's checks on the whole batch (each operand's extent is its last matrix's end),
 * then the batch's products one after the other on the stream's worker. */
extern "C" cublasStatus_t cublasSgemmStridedBatched(cublasHandle_t handle,
                                                    cublasOperation_t transa,
                                                    cublasOperation_t transb, int m, int n,
                                                    int k, const float *alpha, const float *A,
                                                    int lda, long long int strideA,
                                                    const float *B, int ldb,
                                                    long long int strideB, const float *beta,
                                                    float *C, int ldc, long long int strideC,
                                                    int batchCount) {
    static const char *fn = "cublasSgemmStridedBatched";
    cublasStatus_t st = blas_handle(handle, fn);
    if (st != CUBLAS_STATUS_SUCCESS) return st;
    if ((transa != CUBLAS_OP_N && transa != CUBLAS_OP_T && transa != CUBLAS_OP_C) ||
        (transb != CUBLAS_OP_N && transb != CUBLAS_OP_T && transb != CUBLAS_OP_C))
        return CUBLAS_STATUS_INVALID_VALUE;
    bool ta = transa != CUBLAS_OP_N, tb = transb != CUBLAS_OP_N;
    if (m < 0 || n < 0 || k < 0 || batchCount < 0) return CUBLAS_STATUS_INVALID_VALUE;
    int rows_a = ta ? k : m, cols_a = ta ? m : k;
    int rows_b = tb ? n : k, cols_b = tb ? k : n;
    if (lda < std::max(1, rows_a) || ldb < std::max(1, rows_b) || ldc < std::max(1, m))
        return CUBLAS_STATUS_INVALID_VALUE;
    if (!alpha || !beta) return CUBLAS_STATUS_INVALID_VALUE;
    if (m == 0 || n == 0 || batchCount == 0) return CUBLAS_STATUS_SUCCESS;
    /* STRICTER: negative strides are accepted by the real library */
    if (strideA < 0 || strideB < 0 || strideC < 0) return CUBLAS_STATUS_INVALID_VALUE;
    if (cuemu::current_device() != handle->device)
        cuemu::fatal("%s: handle created on device %d used while device %d is current", fn,
                     handle->device, cuemu::current_device());
    check_host_scalar(alpha, fn, "alpha");
    check_host_scalar(beta, fn, "beta");
    const float a_v = *alpha, b_v = *beta;
    int dev = handle->device, batch = batchCount;
    size_t last = (size_t)(batch - 1);
    size_t bytes_a = colmajor_bytes(rows_a, cols_a, lda);
    size_t bytes_b = colmajor_bytes(rows_b, cols_b, ldb);
    size_t bytes_c = colmajor_bytes(m, n, ldc);
    if (bytes_a) bytes_a += last * (size_t)strideA * sizeof(float);
    if (bytes_b) bytes_b += last * (size_t)strideB * sizeof(float);
    bytes_c += last * (size_t)strideC * sizeof(float);
    struct { const void *p; size_t bytes; const char *name; long long stride; } ops[3] = {
        {A, bytes_a, "A", strideA}, {B, bytes_b, "B", strideB}, {C, bytes_c, "C", strideC}};
    for (const auto &o : ops)
        if (o.bytes && !cuemu::is_device_range(o.p, o.bytes, dev))
            cuemu::fatal("%s: %s = %p (%zu bytes over %d matrices of stride %lld, m=%d n=%d "
                         "k=%d, trans %c%c) is not inside one live cudaMalloc block of device %d",
                         fn, o.name, o.p, o.bytes, batch, o.stride, m, n, k, ta ? 'T' : 'N',
                         tb ? 'T' : 'N', dev);
    if (overlaps(C, bytes_c, A, bytes_a) || overlaps(C, bytes_c, B, bytes_b))
        cuemu::fatal("%s: output C (%p, %zu bytes) overlaps input %s (m=%d n=%d k=%d)", fn,
                     (void *)C, bytes_c, overlaps(C, bytes_c, A, bytes_a) ? "A" : "B", m, n, k);
    if (batch > 1 && batch_outputs_overlap(m, n, ldc, strideC, batch))
        cuemu::fatal("%s: the %d output matrices share elements (m=%d n=%d ldc=%d strideC=%lld)",
                     fn, batch, m, n, ldc, strideC);
    if (handle->ws && !cuemu::is_device_range(handle->ws, handle->ws_size, dev))
        cuemu::fatal("%s: the workspace given to cublasSetWorkspace (%p, %zu bytes) is no "
                     "longer a live cudaMalloc block of device %d",
                     fn, handle->ws, handle->ws_size, dev);
    void *ws = handle->ws;
    size_t scribble = std::min(handle->ws_size, std::max((size_t)4096, bytes_c));
    long long sA = strideA, sB = strideB, sC = strideC;
    cudaError_t e = cuemu::enqueue(handle->stream, [=]() {
        if (ws) memset(ws, 0xff, scribble);
        for (int b = 0; b < batch; b++)
            sgemm_run(ta, tb, m, n, k, a_v, A + b * sA, lda, B + b * sB, ldb, b_v, C + b * sC,
                      ldc);
    });
    return e == cudaSuccess ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_EXECUTION_FAILED;
}
