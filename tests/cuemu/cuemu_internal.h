/* cuemu_internal.h: what the emulated libraries (cuBLAS, cuDNN, NCCL stand-ins) share with
 * the emulated runtime (runtime.cpp). C++ only. */
#ifndef CUEMU_INTERNAL_H
#define CUEMU_INTERNAL_H

#include <cuda_runtime.h>

#include <functional>

namespace cuemu {

/* Queues `op` on stream s (NULL: the legacy default stream of the current device). It runs
 * later on the stream's worker thread, after everything queued on s before it, and after any
 * event s was told to wait for. Returns cudaErrorInvalidResourceHandle (and runs nothing)
 * when s was destroyed or belongs to another device than the calling thread's current one,
 * as a real launch would fail. */
cudaError_t enqueue(cudaStream_t s, std::function<void()> op);

/* Current device of the calling host thread (cudaSetDevice); 0 by default. */
int current_device();
/* Device a stream was created on; -1 for a stream that does not exist. */
int stream_device(cudaStream_t s);
/* Emulated device count: CAMO_CUEMU_DEVICES (default 1, 0 = "no GPU"). */
int device_count();

/* 1 when [p, p + bytes) lies inside one live cudaMalloc block of `device` (-1: any device);
 * library stand-ins check every pointer they are given with it, as cuDNN/cuBLAS would fault
 * on a host pointer or an overrun. */
int is_device_range(const void *p, size_t bytes, int device);

/* Prints "cuemu: <message>" to stderr and aborts: for misuse that would be undefined
 * behaviour or a crash on a GPU (a fault inside a kernel, a deadlocked barrier). */
[[noreturn]] void fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

} // namespace cuemu

#endif
