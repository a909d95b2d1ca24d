/* runtime.cpp: the emulated CUDA runtime (include/cuda_runtime.h): devices, memory with a
 * registry of live allocations, asynchronous streams (one worker thread each, ops in order),
 * events, the legacy default stream, per-thread sticky errors, and the kernel scheduler that
 * runs a grid block by block: a block whose first thread finishes without a barrier runs its
 * other threads as plain calls; otherwise every thread is a fiber (ucontext) and the
 * scheduler releases __syncthreads and warp shuffles when all participants have arrived. */
#include "cuemu_internal.h"

#include <cuda_runtime.h>

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define CUEMU_ASAN 1
#else
#define CUEMU_ASAN 0
#endif

/* ---------------------------------------------------------------- process-wide state */

namespace {

enum mem_kind { MEM_DEVICE, MEM_HOST };
struct alloc_info {
    size_t bytes;
    int device;
    mem_kind kind;
};

struct stream_state;

struct globals {
    std::mutex mu;                        /* allocations, streams, devices */
    std::map<uintptr_t, alloc_info> allocs;
    std::vector<size_t> used;             /* device bytes in use, per device */
    std::set<stream_state *> streams;     /* live streams (null streams included) */
    std::vector<stream_state *> null_stream;
    int n_devices = -1;
    size_t mem_limit = 0;
    std::mutex ev_mu;                     /* all events: one lock, one condition */
    std::condition_variable ev_cv;
};

/* Never destroyed: stream workers may outlive main()'s static destructors. */
globals &G() {
    static globals *g = new globals;
    return *g;
}

thread_local int t_device = 0;
thread_local cudaError_t t_last_error = cudaSuccess;

cudaError_t fail(cudaError_t e) {
    if (e != cudaSuccess) t_last_error = e;
    return e;
}

/* CAMO_CUEMU_REPORT=FILE: appends `line` (and a newline) to FILE for tests to assert on;
 * one write(2) with O_APPEND, so lines of concurrent writers (nccl.cpp) never interleave. */
void report_line(const char *line) {
    const char *path = getenv("CAMO_CUEMU_REPORT");
    if (!path || !*path) return;
    std::string l = std::string(line) + "\n";
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT, 0644);
    ssize_t w = fd < 0 ? -1 : write(fd, l.data(), l.size());
    if (fd >= 0) close(fd);
    if (w != (ssize_t)l.size())
        cuemu::fatal("CAMO_CUEMU_REPORT=%s: cannot append: %s", path, strerror(errno));
}

/* Calls on which the host waits for device work, by kind: CAMO_CUEMU_REPORT gets their
 * totals at exit ("host_waits ..."), so that tests can see how often a run drains a stream
 * (tests/test_gpu_paths.sh: no full-stream wait per training step). */
std::atomic<long> n_stream_sync{0}, n_device_sync{0}, n_event_sync{0}, n_blocking_copy{0};

void report_host_waits() {
    char line[200];
    snprintf(line, sizeof line, "host_waits stream_sync=%ld device_sync=%ld event_sync=%ld "
             "blocking_copy=%ld", n_stream_sync.load(), n_device_sync.load(),
             n_event_sync.load(), n_blocking_copy.load());
    report_line(line);
}

/* The driver's initialisation, at the process's first device call: it reads the
 * environment then, so a variable set later (CUDA_MODULE_LOADING, which camotrain sets in
 * src/parallel/devices.c only for NCCL runs) has no effect. The report records what it saw. */
void init_devices_locked(globals &g) {
    if (g.n_devices >= 0) return;
    const char *loading = getenv("CUDA_MODULE_LOADING");
    char line[160];
    snprintf(line, sizeof line, "cuda_init module_loading=%s",
             loading && *loading ? loading : "unset");
    report_line(line);
    atexit(report_host_waits);
    const char *env = getenv("CAMO_CUEMU_DEVICES");
    g.n_devices = env && *env ? atoi(env) : 1;
    if (g.n_devices < 0) g.n_devices = 0;
    if (g.n_devices > 16) g.n_devices = 16;
    /* CUDA_VISIBLE_DEVICES=1,0: the listed ordinals, up to the first invalid one (as the
     * driver does; only their number matters here) */
    const char *vis = getenv("CUDA_VISIBLE_DEVICES");
    if (vis) {
        int seen = 0;
        for (const char *q = vis; *q;) {
            char *end;
            long d = strtol(q, &end, 10);
            if (end == q || d < 0 || d >= g.n_devices) break;
            seen++;
            q = *end == ',' ? end + 1 : end;
            if (end == q && *q) break;
        }
        g.n_devices = seen;
    }
    const char *mem = getenv("CAMO_CUEMU_MEM_MB");
    g.mem_limit = (size_t)(mem && *mem ? atol(mem) : 8192) << 20;
    g.used.assign(g.n_devices, 0);
    g.null_stream.assign(g.n_devices, nullptr);
}

int n_devices() {
    globals &g = G();
    std::lock_guard<std::mutex> l(g.mu);
    init_devices_locked(g);
    return g.n_devices;
}

/* allocation containing p, or nullptr */
const alloc_info *find_alloc_locked(globals &g, const void *p, uintptr_t *base) {
    uintptr_t a = (uintptr_t)p;
    auto it = g.allocs.upper_bound(a);
    if (it == g.allocs.begin()) return nullptr;
    --it;
    if (a >= it->first + (it->second.bytes ? it->second.bytes : 1)) return nullptr;
    if (base) *base = it->first;
    return &it->second;
}

} // namespace

/* ---------------------------------------------------------------- streams */

struct cuemu_stream {}; /* handles are stream_state pointers cast to this opaque type */

namespace {

struct stream_state {
    int device;
    bool blocking;  /* synchronises with the legacy default stream */
    bool is_null;
    std::mutex mu;
    std::condition_variable cv;
    std::deque<std::function<void()>> q;
    uint64_t queued = 0, done = 0;
    bool closing = false; /* destroyed: the worker drains the queue, then frees this */
};

void worker_main(stream_state *s) {
    std::unique_lock<std::mutex> l(s->mu);
    for (;;) {
        s->cv.wait(l, [s] { return !s->q.empty() || s->closing; });
        if (s->q.empty()) break; /* closing and drained */
        std::function<void()> op = std::move(s->q.front());
        s->q.pop_front();
        l.unlock();
        op();
        op = nullptr;
        l.lock();
        s->done++;
        s->cv.notify_all();
    }
    l.unlock();
    delete s;
}

stream_state *new_stream(int device, bool blocking, bool is_null) {
    stream_state *s = new stream_state;
    s->device = device;
    s->blocking = blocking;
    s->is_null = is_null;
    std::thread(worker_main, s).detach();
    return s;
}

void drain(stream_state *s) {
    std::unique_lock<std::mutex> l(s->mu);
    uint64_t target = s->queued;
    s->cv.wait(l, [s, target] { return s->done >= target; });
}

/* the legacy default stream of a device, created on first use */
stream_state *null_stream_locked(globals &g, int device) {
    if (!g.null_stream[device]) {
        g.null_stream[device] = new_stream(device, true, true);
        g.streams.insert(g.null_stream[device]);
    }
    return g.null_stream[device];
}

/* Resolves a handle (NULL: legacy stream of the current device); nullptr if not live. */
stream_state *resolve(cudaStream_t h) {
    globals &g = G();
    std::lock_guard<std::mutex> l(g.mu);
    init_devices_locked(g);
    if (!h) {
        if (t_device < 0 || t_device >= g.n_devices) return nullptr;
        return null_stream_locked(g, t_device);
    }
    stream_state *s = (stream_state *)h;
    return g.streams.count(s) ? s : nullptr;
}

/* Legacy default stream semantics, conservatively: work on it starts after every blocking
 * stream of its device drained, and work on a blocking stream after the null stream did. */
void legacy_order(stream_state *s) {
    if (!s->blocking) return;
    globals &g = G();
    std::vector<stream_state *> wait;
    {
        std::lock_guard<std::mutex> l(g.mu);
        for (stream_state *o : g.streams) {
            if (o == s || o->device != s->device || !o->blocking) continue;
            if (s->is_null || o->is_null) wait.push_back(o);
        }
    }
    for (stream_state *o : wait) drain(o);
}

void push(stream_state *s, std::function<void()> op) {
    legacy_order(s);
    std::lock_guard<std::mutex> l(s->mu);
    s->q.push_back(std::move(op));
    s->queued++;
    s->cv.notify_all();
}

void sync_device(int device) {
    globals &g = G();
    std::vector<stream_state *> all;
    {
        std::lock_guard<std::mutex> l(g.mu);
        for (stream_state *o : g.streams)
            if (o->device == device) all.push_back(o);
    }
    for (stream_state *o : all) drain(o);
}

} // namespace

namespace cuemu {

cudaError_t enqueue(cudaStream_t h, std::function<void()> op) {
    stream_state *s = resolve(h);
    if (!s || s->device != t_device) return cudaErrorInvalidResourceHandle;
    push(s, std::move(op));
    return cudaSuccess;
}

int current_device() { return t_device; }

int stream_device(cudaStream_t h) {
    stream_state *s = resolve(h);
    return s ? s->device : -1;
}

int device_count() { return n_devices(); }

int is_device_range(const void *p, size_t bytes, int device) {
    globals &g = G();
    std::lock_guard<std::mutex> l(g.mu);
    uintptr_t base;
    const alloc_info *a = find_alloc_locked(g, p, &base);
    if (!a || a->kind != MEM_DEVICE || (device >= 0 && a->device != device)) return 0;
    return (uintptr_t)p + bytes <= base + a->bytes;
}

void fatal(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "cuemu: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    fflush(stderr);
    abort();
}

} // namespace cuemu

/* ---------------------------------------------------------------- devices, errors */

extern "C" {

cudaError_t cudaGetDeviceCount(int *count) {
    int n = n_devices();
    *count = n;
    return n > 0 ? cudaSuccess : fail(cudaErrorNoDevice);
}

cudaError_t cudaSetDevice(int device) {
    if (device < 0 || device >= n_devices()) return fail(cudaErrorInvalidDevice);
    t_device = device;
    return cudaSuccess;
}

cudaError_t cudaGetDevice(int *device) {
    if (n_devices() == 0) return fail(cudaErrorNoDevice);
    *device = t_device;
    return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *p, int device) {
    if (device < 0 || device >= n_devices()) return fail(cudaErrorInvalidDevice);
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "cuemu host emulation %d", device);
    p->totalGlobalMem = G().mem_limit;
    p->sharedMemPerBlock = 48 << 10;
    p->warpSize = 32;
    p->maxThreadsPerBlock = 1024;
    p->maxThreadsDim[0] = p->maxThreadsDim[1] = 1024;
    p->maxThreadsDim[2] = 64;
    p->maxGridSize[0] = 0x7fffffff;
    p->maxGridSize[1] = p->maxGridSize[2] = 65535;
    const char *cc = getenv("CAMO_CUEMU_SM"); /* e.g. 75 to emulate a T4's capability */
    int sm = cc && *cc ? atoi(cc) : 90;
    p->major = sm / 10;
    p->minor = sm % 10;
    p->multiProcessorCount = 4;
    return cudaSuccess;
}

cudaError_t cudaDeviceCanAccessPeer(int *can, int device, int peer) {
    int n = n_devices();
    if (device < 0 || device >= n || peer < 0 || peer >= n) return fail(cudaErrorInvalidDevice);
    *can = device != peer;
    return cudaSuccess;
}

cudaError_t cudaDeviceEnablePeerAccess(int peer, unsigned flags) {
    (void)flags;
    return peer >= 0 && peer < n_devices() ? cudaSuccess : fail(cudaErrorInvalidDevice);
}

cudaError_t cudaDeviceSynchronize(void) {
    if (n_devices() == 0) return fail(cudaErrorNoDevice);
    n_device_sync++;
    sync_device(t_device);
    return cudaSuccess;
}

cudaError_t cudaRuntimeGetVersion(int *v) {
    *v = CUDART_VERSION;
    return cudaSuccess;
}

cudaError_t cudaDriverGetVersion(int *v) {
    *v = n_devices() > 0 ? CUDART_VERSION : 0;
    return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes) {
    globals &g = G();
    std::lock_guard<std::mutex> l(g.mu);
    init_devices_locked(g);
    if (t_device >= g.n_devices) return fail(cudaErrorNoDevice);
    *total_bytes = g.mem_limit;
    *free_bytes = g.mem_limit - g.used[t_device];
    return cudaSuccess;
}

cudaError_t cudaGetLastError(void) {
    cudaError_t e = t_last_error;
    t_last_error = cudaSuccess;
    return e;
}

cudaError_t cudaPeekAtLastError(void) { return t_last_error; }

const char *cudaGetErrorName(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInitializationError: return "cudaErrorInitializationError";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevicePointer: return "cudaErrorInvalidDevicePointer";
    case cudaErrorInvalidMemcpyDirection: return "cudaErrorInvalidMemcpyDirection";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorNotReady: return "cudaErrorNotReady";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    default: return "cudaErrorUnknown";
    }
}

const char *cudaGetErrorString(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInitializationError: return "initialization error";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevicePointer: return "invalid device pointer";
    case cudaErrorInvalidMemcpyDirection: return "invalid copy direction for memcpy";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorNotReady: return "device not ready";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    default: return "unknown error";
    }
}

/* ---------------------------------------------------------------- memory */

static cudaError_t register_alloc(void **p, size_t bytes, int device, mem_kind kind) {
    globals &g = G();
    {
        std::lock_guard<std::mutex> l(g.mu);
        init_devices_locked(g);
        if (g.n_devices == 0) return fail(cudaErrorNoDevice);
        if (kind == MEM_DEVICE && g.used[device] + bytes > g.mem_limit)
            return fail(cudaErrorMemoryAllocation);
    }
    void *q = nullptr;
    if (posix_memalign(&q, 256, bytes ? bytes : 1)) return fail(cudaErrorMemoryAllocation);
    /* fresh device memory is not zeroed on a GPU either: all-ones bytes are float NaNs, so a
     * read of memory nobody wrote shows up in the results */
    if (kind == MEM_DEVICE) memset(q, 0xff, bytes);
    std::lock_guard<std::mutex> l(g.mu);
    g.allocs[(uintptr_t)q] = alloc_info{bytes, device, kind};
    if (kind == MEM_DEVICE) g.used[device] += bytes;
    *p = q;
    return cudaSuccess;
}

static cudaError_t unregister_alloc(void *p, mem_kind kind) {
    globals &g = G();
    std::lock_guard<std::mutex> l(g.mu);
    auto it = g.allocs.find((uintptr_t)p);
    if (it == g.allocs.end() || it->second.kind != kind)
        return fail(kind == MEM_DEVICE ? cudaErrorInvalidDevicePointer : cudaErrorInvalidValue);
    if (kind == MEM_DEVICE) g.used[it->second.device] -= it->second.bytes;
    g.allocs.erase(it);
    free(p);
    return cudaSuccess;
}

cudaError_t cudaMalloc(void **p, size_t bytes) {
    if (!p) return fail(cudaErrorInvalidValue);
    return register_alloc(p, bytes, t_device, MEM_DEVICE);
}

/* cudaFree waits for the device, as the real one does */
cudaError_t cudaFree(void *p) {
    if (!p) return cudaSuccess;
    if (n_devices() == 0) return fail(cudaErrorNoDevice);
    sync_device(t_device);
    return unregister_alloc(p, MEM_DEVICE);
}

cudaError_t cudaHostAlloc(void **p, size_t bytes, unsigned flags) {
    (void)flags;
    if (!p) return fail(cudaErrorInvalidValue);
    return register_alloc(p, bytes, -1, MEM_HOST);
}

cudaError_t cudaMallocHost(void **p, size_t bytes) { return cudaHostAlloc(p, bytes, 0); }

cudaError_t cudaFreeHost(void *p) {
    if (!p) return cudaSuccess;
    return unregister_alloc(p, MEM_HOST);
}

cudaError_t cudaPointerGetAttributes(struct cudaPointerAttributes *a, const void *p) {
    globals &g = G();
    std::lock_guard<std::mutex> l(g.mu);
    memset(a, 0, sizeof *a);
    a->device = -2;
    const alloc_info *info = find_alloc_locked(g, p, nullptr);
    if (info && info->kind == MEM_DEVICE) {
        a->type = cudaMemoryTypeDevice;
        a->device = info->device;
        a->devicePointer = (void *)p;
    } else if (info) {
        a->type = cudaMemoryTypeHost;
        a->hostPointer = a->devicePointer = (void *)p;
    } else {
        a->type = cudaMemoryTypeUnregistered; /* pageable memory: success, as CUDA >= 11 */
    }
    return cudaSuccess;
}

/* What a copy operand is, from one registry lookup: device memory holding the whole range,
 * pinned host memory, pageable memory (unknown to the runtime), or a device range overrun. */
enum range_kind { RANGE_PAGEABLE, RANGE_PINNED, RANGE_DEVICE, RANGE_BAD };

static range_kind classify(const void *p, size_t bytes) {
    globals &g = G();
    std::lock_guard<std::mutex> l(g.mu);
    uintptr_t base;
    const alloc_info *a = find_alloc_locked(g, p, &base);
    if (!a) return RANGE_PAGEABLE;
    if (a->kind == MEM_HOST) return RANGE_PINNED;
    return (uintptr_t)p + bytes <= base + a->bytes ? RANGE_DEVICE : RANGE_BAD;
}

/* A copy's operands must be what its kind says, as the runtime checks them (with UVA,
 * cudaMemcpyDefault takes either). */
static cudaError_t check_copy(range_kind dst, range_kind src, cudaMemcpyKind kind) {
    bool dd = dst == RANGE_DEVICE, sd = src == RANGE_DEVICE;
    bool dh = dst == RANGE_PAGEABLE || dst == RANGE_PINNED;
    bool sh = src == RANGE_PAGEABLE || src == RANGE_PINNED;
    switch (kind) {
    case cudaMemcpyHostToDevice: return dd && sh ? cudaSuccess : cudaErrorInvalidValue;
    case cudaMemcpyDeviceToHost: return sd && dh ? cudaSuccess : cudaErrorInvalidValue;
    case cudaMemcpyDeviceToDevice: return dd && sd ? cudaSuccess : cudaErrorInvalidValue;
    case cudaMemcpyHostToHost: return dh && sh ? cudaSuccess : cudaErrorInvalidValue;
    case cudaMemcpyDefault: return dst != RANGE_BAD && src != RANGE_BAD ? cudaSuccess
                                                                         : cudaErrorInvalidValue;
    }
    return cudaErrorInvalidMemcpyDirection;
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind,
                            cudaStream_t h) {
    if (!bytes) return cudaSuccess;
    range_kind dk = classify(dst, bytes), sk = classify(src, bytes);
    cudaError_t e = check_copy(dk, sk, kind);
    if (e != cudaSuccess) return fail(e);
    stream_state *s = resolve(h);
    if (!s) return fail(cudaErrorInvalidResourceHandle);
    if (sk == RANGE_PAGEABLE) {
        /* pageable source: the runtime stages it before returning; the caller may reuse it */
        auto staged = std::make_shared<std::vector<char>>((const char *)src,
                                                          (const char *)src + bytes);
        push(s, [dst, staged] { memcpy(dst, staged->data(), staged->size()); });
    } else {
        /* pinned or device source: read when the stream gets there, not now */
        push(s, [dst, src, bytes] { memcpy(dst, src, bytes); });
    }
    if (dk == RANGE_PAGEABLE) { /* a copy into pageable memory returns when done */
        n_blocking_copy++;
        drain(s);
    }
    return cudaSuccess;
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind) {
    cudaError_t e = cudaMemcpyAsync(dst, src, bytes, kind, 0);
    if (e != cudaSuccess) return e;
    n_blocking_copy++;
    stream_state *s = resolve(0);
    if (s) drain(s);
    return cudaSuccess;
}

cudaError_t cudaMemcpyPeerAsync(void *dst, int dst_device, const void *src, int src_device,
                                size_t bytes, cudaStream_t h) {
    if (!bytes) return cudaSuccess;
    if (!cuemu::is_device_range(dst, bytes, dst_device) ||
        !cuemu::is_device_range(src, bytes, src_device))
        return fail(cudaErrorInvalidValue);
    stream_state *s = resolve(h);
    if (!s) return fail(cudaErrorInvalidResourceHandle);
    push(s, [dst, src, bytes] { memmove(dst, src, bytes); });
    return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void *p, int value, size_t bytes, cudaStream_t h) {
    if (!bytes) return cudaSuccess;
    if (classify(p, bytes) != RANGE_DEVICE) return fail(cudaErrorInvalidValue);
    stream_state *s = resolve(h);
    if (!s) return fail(cudaErrorInvalidResourceHandle);
    push(s, [p, value, bytes] { memset(p, value, bytes); });
    return cudaSuccess;
}

cudaError_t cudaMemset(void *p, int value, size_t bytes) {
    cudaError_t e = cudaMemsetAsync(p, value, bytes, 0);
    if (e != cudaSuccess) return e;
    stream_state *s = resolve(0);
    if (s) drain(s);
    return cudaSuccess;
}

/* ---------------------------------------------------------------- streams, events */

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *h, unsigned flags) {
    if (!h) return fail(cudaErrorInvalidValue);
    if (n_devices() == 0) return fail(cudaErrorNoDevice);
    stream_state *s = new_stream(t_device, !(flags & cudaStreamNonBlocking), false);
    globals &g = G();
    std::lock_guard<std::mutex> l(g.mu);
    g.streams.insert(s);
    *h = (cudaStream_t)s;
    return cudaSuccess;
}

cudaError_t cudaStreamCreate(cudaStream_t *h) {
    return cudaStreamCreateWithFlags(h, cudaStreamDefault);
}

/* Returns at once, as CUDA does; the worker finishes the queued work, then frees the stream. */
cudaError_t cudaStreamDestroy(cudaStream_t h) {
    stream_state *s = (stream_state *)h;
    globals &g = G();
    {
        std::lock_guard<std::mutex> l(g.mu);
        if (!s || !g.streams.count(s) || s->is_null) return fail(cudaErrorInvalidResourceHandle);
        g.streams.erase(s);
    }
    std::lock_guard<std::mutex> l(s->mu);
    s->closing = true;
    s->cv.notify_all();
    return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t h) {
    stream_state *s = resolve(h);
    if (!s) return fail(cudaErrorInvalidResourceHandle);
    n_stream_sync++;
    drain(s);
    return cudaSuccess;
}

cudaError_t cudaStreamQuery(cudaStream_t h) {
    stream_state *s = resolve(h);
    if (!s) return fail(cudaErrorInvalidResourceHandle);
    std::lock_guard<std::mutex> l(s->mu);
    return s->done >= s->queued ? cudaSuccess : cudaErrorNotReady;
}

} // extern "C"

struct cuemu_event {}; /* handles are event_handle pointers */

namespace {
struct event_state {
    int device;
    bool timing;
    uint64_t recorded = 0, completed = 0; /* generations: query = completed >= recorded */
    std::chrono::steady_clock::time_point when;
};
struct event_handle {
    std::shared_ptr<event_state> st; /* queued records and waits keep the state alive */
};
} // namespace

extern "C" {

cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned flags) {
    if (!e) return fail(cudaErrorInvalidValue);
    if (n_devices() == 0) return fail(cudaErrorNoDevice);
    event_handle *h = new event_handle;
    h->st = std::make_shared<event_state>();
    h->st->device = t_device;
    h->st->timing = !(flags & cudaEventDisableTiming);
    *e = (cudaEvent_t)h;
    return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t *e) { return cudaEventCreateWithFlags(e, 0); }

cudaError_t cudaEventDestroy(cudaEvent_t e) {
    if (!e) return fail(cudaErrorInvalidResourceHandle);
    delete (event_handle *)e;
    return cudaSuccess;
}

/* The event and the stream must belong to the same device (CUDA returns an error otherwise). */
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t h) {
    if (!e) return fail(cudaErrorInvalidResourceHandle);
    std::shared_ptr<event_state> st = ((event_handle *)e)->st;
    stream_state *s = resolve(h);
    if (!s || s->device != st->device) return fail(cudaErrorInvalidResourceHandle);
    globals &g = G();
    uint64_t gen;
    {
        std::lock_guard<std::mutex> l(g.ev_mu);
        gen = ++st->recorded;
    }
    push(s, [st, gen] {
        globals &gg = G();
        std::lock_guard<std::mutex> l(gg.ev_mu);
        if (st->completed < gen) st->completed = gen;
        st->when = std::chrono::steady_clock::now();
        gg.ev_cv.notify_all();
    });
    return cudaSuccess;
}

cudaError_t cudaEventQuery(cudaEvent_t e) {
    if (!e) return fail(cudaErrorInvalidResourceHandle);
    event_state *st = ((event_handle *)e)->st.get();
    globals &g = G();
    std::lock_guard<std::mutex> l(g.ev_mu);
    return st->completed >= st->recorded ? cudaSuccess : cudaErrorNotReady;
}

cudaError_t cudaEventSynchronize(cudaEvent_t e) {
    if (!e) return fail(cudaErrorInvalidResourceHandle);
    std::shared_ptr<event_state> st = ((event_handle *)e)->st;
    n_event_sync++;
    globals &g = G();
    std::unique_lock<std::mutex> l(g.ev_mu);
    uint64_t gen = st->recorded;
    g.ev_cv.wait(l, [&] { return st->completed >= gen; });
    return cudaSuccess;
}

/* Waits for the record most recent at this call; an event never recorded is complete. */
cudaError_t cudaStreamWaitEvent(cudaStream_t h, cudaEvent_t e, unsigned flags) {
    (void)flags;
    if (!e) return fail(cudaErrorInvalidResourceHandle);
    std::shared_ptr<event_state> st = ((event_handle *)e)->st;
    stream_state *s = resolve(h);
    if (!s) return fail(cudaErrorInvalidResourceHandle);
    globals &g = G();
    uint64_t gen;
    {
        std::lock_guard<std::mutex> l(g.ev_mu);
        gen = st->recorded;
    }
    if (!gen) return cudaSuccess;
    push(s, [st, gen] {
        globals &gg = G();
        std::unique_lock<std::mutex> l(gg.ev_mu);
        gg.ev_cv.wait(l, [&] { return st->completed >= gen; });
    });
    return cudaSuccess;
}

cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b) {
    if (!a || !b || !ms) return fail(cudaErrorInvalidResourceHandle);
    event_state *x = ((event_handle *)a)->st.get(), *y = ((event_handle *)b)->st.get();
    if (!x->timing || !y->timing) return fail(cudaErrorInvalidResourceHandle);
    globals &g = G();
    std::lock_guard<std::mutex> l(g.ev_mu);
    if (x->completed < x->recorded || y->completed < y->recorded) return cudaErrorNotReady;
    *ms = std::chrono::duration<float, std::milli>(y->when - x->when).count();
    return cudaSuccess;
}

} // extern "C"

/* ---------------------------------------------------------------- kernel scheduler */

namespace cuemu {

thread_local uint3 t_thread_idx, t_block_idx;
thread_local dim3 t_block_dim, t_grid_dim;
uint3 thread_idx() { return t_thread_idx; }
uint3 block_idx() { return t_block_idx; }
dim3 block_dim() { return t_block_dim; }
dim3 grid_dim() { return t_grid_dim; }

} // namespace cuemu

namespace {

#define FIBER_STACK (256u << 10)

enum fiber_state { F_READY, F_SYNC, F_SHFL, F_DONE };

struct fiber {
    ucontext_t ctx;
    char *stack = nullptr;
    fiber_state state = F_READY;
    uint3 tid;
    uint64_t shfl_in = 0, shfl_out = 0;
    int shfl_src = 0;
};

/* One per host thread that runs kernels (a stream worker). */
struct block_runner {
    std::vector<fiber> fibers;
    ucontext_t sched;
    const std::function<void()> *body = nullptr;
    int current = -1;   /* fiber running now; -1: a plain call (no barrier allowed) */
    bool used_barrier = false;
    int n = 0;
#if CUEMU_ASAN
    void *fake_stack = nullptr;
    const void *sched_bottom = nullptr;
    size_t sched_size = 0;
#endif
};

/* one per worker thread; its fiber stacks go back when the thread ends */
struct runner_holder {
    block_runner *r = nullptr;
    ~runner_holder() {
        if (!r) return;
        for (fiber &f : r->fibers)
            if (f.stack) munmap(f.stack, FIBER_STACK);
        delete r;
    }
};
thread_local runner_holder t_runner;

block_runner &runner() {
    if (!t_runner.r) t_runner.r = new block_runner;
    return *t_runner.r;
}

void set_thread_idx(const uint3 &t) { cuemu::t_thread_idx = t; }

/* fiber -> scheduler */
void yield_to_scheduler(block_runner &r) {
    fiber &f = r.fibers[r.current];
#if CUEMU_ASAN
    void *fs = nullptr;
    __sanitizer_start_switch_fiber(&fs, r.sched_bottom, r.sched_size);
    swapcontext(&f.ctx, &r.sched);
    __sanitizer_finish_switch_fiber(fs, nullptr, nullptr);
#else
    swapcontext(&f.ctx, &r.sched);
#endif
    set_thread_idx(f.tid); /* resumed: the scheduler ran other threads meanwhile */
}

void fiber_entry() {
    block_runner &r = runner();
#if CUEMU_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &r.sched_bottom, &r.sched_size);
#endif
    (*r.body)();
    r.fibers[r.current].state = F_DONE;
#if CUEMU_ASAN
    __sanitizer_start_switch_fiber(nullptr, r.sched_bottom, r.sched_size);
#endif
    /* returning resumes uc_link = the scheduler */
}

/* scheduler -> fiber i, until it waits or ends */
void resume(block_runner &r, int i) {
    r.current = i;
    set_thread_idx(r.fibers[i].tid);
#if CUEMU_ASAN
    __sanitizer_start_switch_fiber(&r.fake_stack, r.fibers[i].stack, FIBER_STACK);
    swapcontext(&r.sched, &r.fibers[i].ctx);
    __sanitizer_finish_switch_fiber(r.fake_stack, nullptr, nullptr);
#else
    swapcontext(&r.sched, &r.fibers[i].ctx);
#endif
    r.current = -1;
}

void start_fiber(block_runner &r, int i) {
    fiber &f = r.fibers[i];
    if (!f.stack) {
        void *m = mmap(nullptr, FIBER_STACK, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m == MAP_FAILED) cuemu::fatal("cannot map a fiber stack");
        f.stack = (char *)m;
    }
    f.state = F_READY;
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack;
    f.ctx.uc_stack.ss_size = FIBER_STACK;
    f.ctx.uc_link = &r.sched;
    makecontext(&f.ctx, fiber_entry, 0);
    resume(r, i);
}

uint3 thread_of(int i, const dim3 &b) {
    uint3 t;
    t.x = i % b.x;
    t.y = (i / b.x) % b.y;
    t.z = i / (b.x * b.y);
    return t;
}

[[noreturn]] void deadlock(block_runner &r) {
    int sync = 0, shfl = 0, done = 0;
    for (int i = 0; i < r.n; i++) {
        sync += r.fibers[i].state == F_SYNC;
        shfl += r.fibers[i].state == F_SHFL;
        done += r.fibers[i].state == F_DONE;
    }
    cuemu::fatal("kernel deadlock in block (%u,%u,%u): %d threads at __syncthreads, %d at a "
                 "warp shuffle whose warp is not complete, %d finished (a barrier or shuffle "
                 "inside divergent code)", cuemu::t_block_idx.x, cuemu::t_block_idx.y,
                 cuemu::t_block_idx.z, sync, shfl, done);
}

/* Releases warps whose live lanes all wait at a shuffle; true if any was released. */
bool release_warps(block_runner &r) {
    bool any = false;
    for (int w0 = 0; w0 < r.n; w0 += 32) {
        int w1 = std::min(r.n, w0 + 32), waiting = 0, live = 0;
        for (int i = w0; i < w1; i++) {
            live += r.fibers[i].state != F_DONE;
            waiting += r.fibers[i].state == F_SHFL;
        }
        if (!waiting || waiting != live) continue;
        if (live != 32)
            cuemu::fatal("warp shuffle in block (%u,%u,%u), warp %d: %d of 32 lanes take part "
                         "(a full-mask shuffle needs every lane)", cuemu::t_block_idx.x,
                         cuemu::t_block_idx.y, cuemu::t_block_idx.z, w0 / 32, live);
        for (int i = w0; i < w1; i++)
            r.fibers[i].shfl_out = r.fibers[w0 + r.fibers[i].shfl_src].shfl_in;
        for (int i = w0; i < w1; i++) r.fibers[i].state = F_READY;
        any = true;
    }
    return any;
}

bool release_block_barrier(block_runner &r) {
    int waiting = 0, live = 0;
    for (int i = 0; i < r.n; i++) {
        live += r.fibers[i].state != F_DONE;
        waiting += r.fibers[i].state == F_SYNC;
    }
    if (!waiting || waiting != live) return false; /* finished threads count as arrived */
    for (int i = 0; i < r.n; i++)
        if (r.fibers[i].state == F_SYNC) r.fibers[i].state = F_READY;
    return true;
}

/* Every thread of the block as a fiber, round-robin until all are done. */
void run_block_fibers(block_runner &r) {
    for (int i = 1; i < r.n; i++) start_fiber(r, i);
    for (;;) {
        bool ran = false;
        for (int i = 0; i < r.n; i++)
            if (r.fibers[i].state == F_READY) {
                resume(r, i);
                ran = true;
            }
        bool all_done = true;
        for (int i = 0; i < r.n && all_done; i++) all_done = r.fibers[i].state == F_DONE;
        if (all_done) return;
        if (ran) continue;
        if (!release_warps(r) && !release_block_barrier(r)) deadlock(r);
    }
}

void run_block(block_runner &r, const dim3 &block) {
    r.n = (int)(block.x * block.y * block.z);
    if ((int)r.fibers.size() < r.n) r.fibers.resize(r.n);
    for (int i = 0; i < r.n; i++) r.fibers[i].tid = thread_of(i, block);
    r.used_barrier = false;
    start_fiber(r, 0); /* thread 0 first, as a fiber: does this kernel use barriers? */
    if (r.used_barrier || r.fibers[0].state != F_DONE) {
        run_block_fibers(r);
        return;
    }
    for (int i = 1; i < r.n; i++) { /* no barrier: plain calls, fast */
        set_thread_idx(r.fibers[i].tid);
        (*r.body)();
    }
}

} // namespace

namespace cuemu {

/* The runner of a thread about to wait at `what`; it must be running as a fiber. */
static block_runner &waiting_runner(const char *what) {
    block_runner &r = runner();
    if (r.current < 0)
        fatal("%s in thread (%u,%u,%u) of block (%u,%u,%u), but thread 0 of the block "
              "finished without one (a barrier or shuffle inside divergent code)", what,
              t_thread_idx.x, t_thread_idx.y, t_thread_idx.z, t_block_idx.x, t_block_idx.y,
              t_block_idx.z);
    r.used_barrier = true;
    return r;
}

void syncthreads() {
    block_runner &r = waiting_runner("__syncthreads");
    r.fibers[r.current].state = F_SYNC;
    yield_to_scheduler(r);
}

int lane_id() {
    const dim3 &b = t_block_dim;
    return (int)((t_thread_idx.x + b.x * (t_thread_idx.y + b.y * t_thread_idx.z)) % 32);
}

uint64_t shfl(uint64_t bits, int src_lane) {
    block_runner &r = waiting_runner("a warp shuffle");
    fiber &f = r.fibers[r.current];
    f.shfl_in = bits;
    f.shfl_src = src_lane;
    f.state = F_SHFL;
    yield_to_scheduler(r);
    return r.fibers[r.current].shfl_out;
}

/* CAMO_CUEMU_KERNEL_US=N: every kernel takes N microseconds more, as on a slow GPU, so
 * that the host runs far ahead of its device (tests/test_gpu_paths.sh: a timeout must not
 * count the queued work of the waiting replica itself) */
static long kernel_extra_us() {
    static const long us = [] {
        const char *e = getenv("CAMO_CUEMU_KERNEL_US");
        return e && *e ? atol(e) : 0L;
    }();
    return us;
}

void launch_grid(const launch_cfg &c, std::function<void()> body) {
    const dim3 &g = c.grid, &b = c.block;
    unsigned long long threads = (unsigned long long)b.x * b.y * b.z;
    if (!g.x || !g.y || !g.z || !threads || threads > 1024 || b.x > 1024 || b.y > 1024 ||
        b.z > 64 || g.x > 0x7fffffffu || g.y > 65535 || g.z > 65535 || c.smem > (48u << 10)) {
        fail(cudaErrorInvalidConfiguration);
        return;
    }
    long extra_us = kernel_extra_us();
    cudaError_t e = enqueue(c.stream, [g, b, body, extra_us] {
        if (extra_us > 0) std::this_thread::sleep_for(std::chrono::microseconds(extra_us));
        block_runner &r = runner();
        r.body = &body;
        t_grid_dim = g;
        t_block_dim = b;
        for (unsigned z = 0; z < g.z; z++)
            for (unsigned y = 0; y < g.y; y++)
                for (unsigned x = 0; x < g.x; x++) {
                    t_block_idx = uint3{x, y, z};
                    run_block(r, b);
                }
        r.body = nullptr;
    });
    if (e != cudaSuccess) fail(e);
}

} // namespace cuemu
