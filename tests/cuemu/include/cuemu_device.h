/* cuemu_device.h: what kernel code needs on the host (included by cuda_runtime.h under C++):
 * the CUDA qualifiers as no-ops, threadIdx & co. as per-thread state the block scheduler
 * sets, __syncthreads and warp shuffles as fiber switches, atomics, device math, and
 * cuemu::launch, which tests/cuemu/launch.pl substitutes for every <<<...>>> launch. */
#ifndef CUEMU_DEVICE_H
#define CUEMU_DEVICE_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __restrict__ __restrict
/* Block-shared arrays: the threads of a block are fibers on one host thread, and one block
 * runs at a time on that thread, so per-thread static storage is exactly per-block. */
#define __shared__ static thread_local

struct uint3 { unsigned x, y, z; };
struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

namespace cuemu {
extern thread_local uint3 t_thread_idx, t_block_idx;
extern thread_local dim3 t_block_dim, t_grid_dim;
/* By value, through calls: kernel code never takes the address of the thread-local state
 * (UBSan reports a thread-local's address as null inside a fiber) */
uint3 thread_idx();
uint3 block_idx();
dim3 block_dim();
dim3 grid_dim();
void syncthreads();
/* value of `bits` held by lane `src_lane` of the caller's warp, after every lane arrived */
uint64_t shfl(uint64_t bits, int src_lane);
int lane_id();

struct launch_cfg {
    dim3 grid, block;
    size_t smem;
    cudaStream_t stream;
};
inline launch_cfg cfg(dim3 grid, dim3 block, size_t smem = 0, cudaStream_t stream = 0) {
    return launch_cfg{grid, block, smem, stream};
}
/* Validates the configuration (errors go to cudaGetLastError, as a real launch's) and queues
 * the grid on the stream; `thread_body` runs once per (block, thread). */
void launch_grid(const launch_cfg &c, std::function<void()> thread_body);

/* kernel<<<c>>>(args...) becomes launch(cfg(c), [=](auto... a) { kernel(a...); }, args...):
 * the arguments are evaluated once, at the launch, and copied, as CUDA copies them. */
template <class F, class... A> void launch(const launch_cfg &c, F f, A... a) {
    auto args = std::make_tuple(a...);
    launch_grid(c, [f, args]() { std::apply(f, args); });
}
} // namespace cuemu

#define threadIdx (cuemu::thread_idx())
#define blockIdx (cuemu::block_idx())
#define blockDim (cuemu::block_dim())
#define gridDim (cuemu::grid_dim())
static constexpr int warpSize = 32;

inline void __syncthreads() { cuemu::syncthreads(); }

template <class T> inline T cuemu_shfl_value(T v, int src) {
    static_assert(sizeof(T) <= 8, "shuffle of a value wider than 8 bytes");
    uint64_t bits = 0;
    memcpy(&bits, &v, sizeof v);
    bits = cuemu::shfl(bits, src);
    memcpy(&v, &bits, sizeof v);
    return v;
}
template <class T> inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    (void)mask;
    int lane = cuemu::lane_id();
    return cuemu_shfl_value(v, (lane & ~(width - 1)) | ((lane ^ lane_mask) & (width - 1)));
}
template <class T> inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    (void)mask;
    int lane = cuemu::lane_id(), in_seg = (lane & (width - 1)) + (int)delta;
    return cuemu_shfl_value(v, in_seg < width ? lane + (int)delta : lane);
}
template <class T> inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
    (void)mask;
    int lane = cuemu::lane_id();
    return cuemu_shfl_value(v, (lane & ~(width - 1)) + (src & (width - 1)));
}

/* atomics: kernels on different streams may run at the same time on different host threads */
template <class T> inline T cuemu_atomic_add_bits(T *p, T v) {
    static_assert(sizeof(T) == 4 || sizeof(T) == 8, "atomicAdd size");
    typedef typename std::conditional<sizeof(T) == 4, uint32_t, uint64_t>::type U;
    U *u = (U *)p, old = __atomic_load_n(u, __ATOMIC_RELAXED), upd;
    T o, n;
    do {
        memcpy(&o, &old, sizeof o);
        n = o + v;
        memcpy(&upd, &n, sizeof upd);
    } while (!__atomic_compare_exchange_n(u, &old, upd, false, __ATOMIC_SEQ_CST,
                                          __ATOMIC_RELAXED));
    return o;
}
inline float atomicAdd(float *p, float v) { return cuemu_atomic_add_bits(p, v); }
inline double atomicAdd(double *p, double v) { return cuemu_atomic_add_bits(p, v); }
inline int atomicAdd(int *p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
inline unsigned atomicAdd(unsigned *p, unsigned v) {
    return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
}
inline unsigned long long atomicAdd(unsigned long long *p, unsigned long long v) {
    return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
}

/* device math that <math.h> lacks */
template <class A, class B> inline typename std::common_type<A, B>::type min(A a, B b) {
    typedef typename std::common_type<A, B>::type T;
    return (T)a < (T)b ? (T)a : (T)b;
}
template <class A, class B> inline typename std::common_type<A, B>::type max(A a, B b) {
    typedef typename std::common_type<A, B>::type T;
    return (T)a > (T)b ? (T)a : (T)b;
}
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
/* round-to-nearest intrinsics: exactly the IEEE operation, never contracted into an FMA */
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
template <class T> inline T __ldg(const T *p) { return *p; }

#endif
