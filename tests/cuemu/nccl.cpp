/* nccl.cpp: the NCCL stand-in of cuemu (include/nccl.h). One clique per ncclCommInitAll; a
 * collective is validated when called, queued on the caller's stream (at ncclGroupEnd inside
 * a group, as NCCL launches there), and, when the stream's worker reaches it, contributes to
 * the clique's collective of the same sequence number and waits there until every rank has
 * contributed, as a NCCL kernel spins until its peers arrive. The last contributor computes
 * the result (reductions in rank order: rank 0 + rank 1 + ...; every input is read before
 * any output is written, so in-place works). A rank whose peers never come waits until its
 * OWN communicator is aborted; ranks that disagree on a collective get the asynchronous error
 * ncclInvalidUsage. Ownership: a communicator handle, every queued operation and every
 * pending group operation hold the clique by shared_ptr, so an operation still queued or
 * blocked when its communicator is destroyed or aborted stays valid. */
#include "cuemu_internal.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>
#include <unordered_set>
#include <vector>

namespace cuemu_nccl {

enum Kind { K_ALL_REDUCE, K_BROADCAST, K_REDUCE, K_ALL_GATHER };

const char *kind_name(Kind k) {
    switch (k) {
    case K_ALL_REDUCE: return "AllReduce";
    case K_BROADCAST: return "Broadcast";
    case K_REDUCE: return "Reduce";
    case K_ALL_GATHER: return "AllGather";
    }
    return "?";
}

bool reduces(Kind k) { return k == K_ALL_REDUCE || k == K_REDUCE; }
bool rooted(Kind k) { return k == K_BROADCAST || k == K_REDUCE; }

size_t type_size(ncclDataType_t t) {
    switch (t) {
    case ncclInt8: case ncclUint8: case ncclFloat8e4m3: case ncclFloat8e5m2: return 1;
    case ncclFloat16: case ncclBfloat16: return 2;
    case ncclInt32: case ncclUint32: case ncclFloat32: return 4;
    case ncclInt64: case ncclUint64: case ncclFloat64: return 8;
    default: return 0;
    }
}

const char *type_name(ncclDataType_t t) {
    static const char *names[] = {"int8", "uint8", "int32", "uint32", "int64", "uint64",
                                  "float16", "float32", "float64", "bfloat16", "float8e4m3",
                                  "float8e5m2"};
    return (int)t >= 0 && (int)t < (int)ncclNumTypes ? names[(int)t] : "?";
}

const char *op_name(int op) {
    static const char *names[] = {"sum", "prod", "max", "min", "avg"};
    return op >= 0 && op < ncclNumOps ? names[op] : "?";
}

/* one rank's part of a collective, as called */
struct Args {
    Kind kind;
    const void *send;
    void *recv;
    size_t count;
    ncclDataType_t type;
    int op;   /* reductions only, else -1 */
    int root; /* broadcast/reduce only, else -1 */
};

std::string describe(const Args &a) {
    char b[160];
    int l = snprintf(b, sizeof b, "%s(count %zu, %s", kind_name(a.kind), a.count,
                     type_name(a.type));
    if (reduces(a.kind)) l += snprintf(b + l, sizeof b - l, ", %s", op_name(a.op));
    if (rooted(a.kind)) l += snprintf(b + l, sizeof b - l, ", root %d", a.root);
    snprintf(b + l, sizeof b - l, ")");
    return b;
}

bool same_collective(const Args &a, const Args &b) {
    return a.kind == b.kind && a.count == b.count && a.type == b.type && a.op == b.op &&
           a.root == b.root;
}

/* one collective (by sequence number) of a clique */
struct Coll {
    std::vector<Args> in;
    std::vector<char> present;
    int arrived = 0, departed = 0, withdrawn = 0;
    bool computing = false, done = false, mismatch = false;
};

struct Clique {
    int id = 0, n = 0;
    std::vector<int> dev;
    std::mutex mu; /* everything below */
    std::condition_variable cv;
    std::vector<long> issued, finished; /* per rank: queued / ended stream operations */
    std::vector<char> aborted, finalized;
    std::vector<ncclResult_t> async_err;
    std::map<long, Coll> colls;
    std::unique_ptr<std::mutex[]> issue_mu; /* per rank: sequence number + enqueue, one step */
};

/* what a call needs of a handle, copied under the registry lock */
struct Ref {
    std::shared_ptr<Clique> cl;
    int rank = -1, dev = -1;
};

/* a collective called inside a group, launched at the outermost ncclGroupEnd */
struct Pending {
    Ref ref;
    cudaStream_t stream;
    Args args;
};

/* an ncclCommInitRank called inside a group, joined at the outermost ncclGroupEnd */
struct PendingInit {
    ncclComm_t *out;
    int nranks, rank, dev;
    std::string id;
};

struct GroupState {
    int depth = 0;
    ncclResult_t err = ncclSuccess;
    std::vector<Pending> ops;
    std::vector<Ref> finalize;
    std::vector<PendingInit> inits;
};

thread_local GroupState t_group;
thread_local char t_last_error[512] = "";

double hang_seconds() {
    static const double s = [] {
        const char *e = getenv("CAMO_CUEMU_HANG_S");
        double v = e && *e ? atof(e) : 300;
        return v > 0 ? v : 300;
    }();
    return s;
}

bool debug_on() {
    static const bool on = [] {
        const char *e = getenv("NCCL_DEBUG");
        return e && *e;
    }();
    return on;
}

/* Records the message as the thread's last error; prints it when `always` (misuse that is a
 * bug on a real GPU too) or when NCCL_DEBUG is set, as NCCL's WARN lines. */
__attribute__((format(printf, 3, 4))) ncclResult_t warn(ncclResult_t r, bool always,
                                                        const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t_last_error, sizeof t_last_error, fmt, ap);
    va_end(ap);
    if (always || debug_on()) fprintf(stderr, "cuemu nccl: %s\n", t_last_error);
    return r;
}

/* CAMO_CUEMU_REPORT=FILE: appends one line per communicator clique to FILE, with the
 * environment NCCL would have read at its initialisation, for tests to assert on (how many
 * communicators a run creates, the launch mode camotrain forces). One write(2) per line
 * with O_APPEND, so lines of concurrent writers never interleave. */
__attribute__((format(printf, 1, 2))) void report(const char *fmt, ...) {
    const char *path = getenv("CAMO_CUEMU_REPORT");
    if (!path || !*path) return;
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line - 1, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if (n > (int)sizeof line - 2) n = (int)sizeof line - 2;
    line[n++] = '\n';
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT, 0644);
    if (fd < 0) cuemu::fatal("CAMO_CUEMU_REPORT=%s: cannot open: %s", path, strerror(errno));
    ssize_t w = write(fd, line, (size_t)n);
    close(fd);
    if (w != n) cuemu::fatal("CAMO_CUEMU_REPORT=%s: short write", path);
}

/* NCCL_LAUNCH_MODE as NCCL parses it (init.cc): GROUP, any case, else PARALLEL. In GROUP
 * mode a real NCCL makes the ranks of a process meet in a host spin barrier at each launch
 * (no abort check), which this emulation does not model: the report is how tests see it. */
const char *launch_mode() {
    const char *m = getenv("NCCL_LAUNCH_MODE");
    return m && !strcasecmp(m, "GROUP") ? "GROUP" : "PARALLEL";
}

/* an error of a call made inside a group also fails the outermost ncclGroupEnd */
ncclResult_t group_err(ncclResult_t r) {
    if (r != ncclSuccess && t_group.depth > 0 && t_group.err == ncclSuccess) t_group.err = r;
    return r;
}

} // namespace cuemu_nccl

using namespace cuemu_nccl;

/* the handle behind ncclComm_t */
struct ncclComm {
    std::shared_ptr<Clique> cl;
    int rank, dev;
};

namespace cuemu_nccl {

/* live handles: a destroyed or aborted one is reported instead of dereferenced */
struct Registry {
    std::mutex mu;
    std::unordered_set<const ncclComm *> live;
    std::atomic<int> next_id{0};
};

Registry &REG() {
    static Registry *r = new Registry; /* never destroyed: stream workers may outlive main */
    return *r;
}

bool lookup(const ncclComm *c, Ref *out) {
    Registry &g = REG();
    std::lock_guard<std::mutex> l(g.mu);
    if (!g.live.count(c)) return false;
    out->cl = c->cl;
    out->rank = c->rank;
    out->dev = c->dev;
    return true;
}

/* removes the handle from the registry; true when it was live (the caller deletes it) */
bool take(const ncclComm *c) {
    Registry &g = REG();
    std::lock_guard<std::mutex> l(g.mu);
    return g.live.erase(c) > 0;
}

ncclResult_t dead_comm(const char *fn, const void *c, ncclResult_t r) {
    return warn(r, true, "%s: communicator %p was destroyed or aborted, or never created", fn, c);
}

/* Waits on the clique's condition until ok(), or dies after CAMO_CUEMU_HANG_S seconds with
 * "<what()>" so that a test never hangs silently. */
template <class Ok, class What>
void wait_or_die(Clique &cl, std::unique_lock<std::mutex> &lk, Ok ok, What what) {
    auto deadline = std::chrono::steady_clock::now() +
                    std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                        std::chrono::duration<double>(hang_seconds()));
    while (!ok()) {
        if (cl.cv.wait_until(lk, deadline) == std::cv_status::timeout && !ok()) {
            std::string m = what();
            cuemu::fatal("%s", m.c_str());
        }
    }
}

/* ---- reductions ---- */

template <class T> T add(T a, T b) {
    if constexpr (std::is_integral<T>::value) {
        typedef typename std::make_unsigned<T>::type U;
        return (T)(U)((U)a + (U)b); /* wraps, as the GPU does */
    } else {
        return a + b;
    }
}

template <class T> T mul(T a, T b) {
    if constexpr (std::is_integral<T>::value) {
        typedef typename std::make_unsigned<T>::type U;
        return (T)(U)((U)a * (U)b);
    } else {
        return a * b;
    }
}

/* acc (count) = in[0] op in[1] op ... in rank order; acc may alias no input */
template <class T>
void reduce_typed(void *acc_, const std::vector<const void *> &in, size_t count, int op) {
    T *acc = (T *)acc_;
    memcpy(acc, in[0], count * sizeof(T));
    for (size_t r = 1; r < in.size(); r++) {
        const T *x = (const T *)in[r];
        switch (op) {
        case ncclSum: case ncclAvg:
            for (size_t i = 0; i < count; i++) acc[i] = add(acc[i], x[i]);
            break;
        case ncclProd:
            for (size_t i = 0; i < count; i++) acc[i] = mul(acc[i], x[i]);
            break;
        case ncclMax:
            for (size_t i = 0; i < count; i++) acc[i] = x[i] > acc[i] ? x[i] : acc[i];
            break;
        case ncclMin:
            for (size_t i = 0; i < count; i++) acc[i] = x[i] < acc[i] ? x[i] : acc[i];
            break;
        }
    }
    if (op == ncclAvg) {
        T n = (T)in.size();
        for (size_t i = 0; i < count; i++) acc[i] = acc[i] / n;
    }
}

void reduce(void *acc, const std::vector<const void *> &in, size_t count, ncclDataType_t t,
            int op) {
    switch (t) {
    case ncclInt8: reduce_typed<int8_t>(acc, in, count, op); break;
    case ncclUint8: reduce_typed<uint8_t>(acc, in, count, op); break;
    case ncclInt32: reduce_typed<int32_t>(acc, in, count, op); break;
    case ncclUint32: reduce_typed<uint32_t>(acc, in, count, op); break;
    case ncclInt64: reduce_typed<int64_t>(acc, in, count, op); break;
    case ncclUint64: reduce_typed<uint64_t>(acc, in, count, op); break;
    case ncclFloat32: reduce_typed<float>(acc, in, count, op); break;
    case ncclFloat64: reduce_typed<double>(acc, in, count, op); break;
    default: cuemu::fatal("nccl: reductions on %s are not emulated", type_name(t));
    }
}

/* every buffer the collective touches must still be allocated when it runs */
void recheck(const Clique &cl, long seq, int r, const char *which, const void *p, size_t bytes) {
    if (!cuemu::is_device_range(p, bytes, cl.dev[r]))
        cuemu::fatal("nccl collective #%ld: rank %d's %s %p (%zu bytes on device %d) was freed "
                     "while the collective was queued or in flight", seq, r, which, p, bytes,
                     cl.dev[r]);
}

/* The last contributor computes; called without the lock (the inputs are complete and no
 * rank leaves while `computing`). Inputs are copied or reduced into a scratch buffer first,
 * then written to every output: in-place and overlapping buffers work. */
void compute(const Clique &cl, const Coll &c, long seq) {
    const Args &a = c.in[0];
    int n = cl.n;
    size_t bytes = a.count * type_size(a.type);
    std::vector<const void *> in(n);
    for (int r = 0; r < n; r++) in[r] = c.in[r].send;
    switch (a.kind) {
    case K_ALL_REDUCE:
    case K_REDUCE: {
        for (int r = 0; r < n; r++) recheck(cl, seq, r, "sendbuff", in[r], bytes);
        std::unique_ptr<unsigned char[]> tmp(new unsigned char[bytes]);
        reduce(tmp.get(), in, a.count, a.type, a.op);
        for (int r = 0; r < n; r++) {
            if (a.kind == K_REDUCE && r != a.root) continue;
            recheck(cl, seq, r, "recvbuff", c.in[r].recv, bytes);
            memcpy(c.in[r].recv, tmp.get(), bytes);
        }
        break;
    }
    case K_BROADCAST: {
        recheck(cl, seq, a.root, "sendbuff", in[a.root], bytes);
        std::unique_ptr<unsigned char[]> tmp(new unsigned char[bytes]);
        memcpy(tmp.get(), in[a.root], bytes);
        for (int r = 0; r < n; r++) {
            recheck(cl, seq, r, "recvbuff", c.in[r].recv, bytes);
            memcpy(c.in[r].recv, tmp.get(), bytes);
        }
        break;
    }
    case K_ALL_GATHER: {
        std::unique_ptr<unsigned char[]> tmp(new unsigned char[bytes * n]);
        for (int r = 0; r < n; r++) {
            recheck(cl, seq, r, "sendbuff", in[r], bytes);
            memcpy(tmp.get() + (size_t)r * bytes, in[r], bytes);
        }
        for (int r = 0; r < n; r++) {
            recheck(cl, seq, r, "recvbuff", c.in[r].recv, bytes * n);
            memcpy(c.in[r].recv, tmp.get(), bytes * n);
        }
        break;
    }
    }
}

std::string rank_list(const Coll &c, int n, bool want_present) {
    std::string s;
    for (int r = 0; r < n; r++) {
        if ((c.present[r] != 0) != want_present) continue;
        if (!s.empty()) s += ",";
        s += std::to_string(r);
    }
    return s;
}

/* The stream operation of rank r's collective #seq (runs on the stream's worker). */
void run_op(Clique &cl, int r, long seq, const Args &a) {
    std::unique_lock<std::mutex> lk(cl.mu);
    /* NCCL orders a communicator's kernels across streams: #seq starts after #seq-1 ended */
    wait_or_die(cl, lk, [&] { return cl.finished[r] >= seq || cl.aborted[r]; }, [&] {
        char m[300];
        snprintf(m, sizeof m, "nccl collective #%ld on rank %d waited %g s: the previous "
                 "collective of this communicator (queued on another stream) never ended",
                 seq, r, hang_seconds());
        return std::string(m);
    });
    if (cl.aborted[r]) { /* kernels of an aborted communicator do nothing */
        cl.finished[r]++;
        cl.cv.notify_all();
        return;
    }
    Coll &c = cl.colls[seq];
    if (c.in.empty()) {
        c.in.resize(cl.n);
        c.present.assign(cl.n, 0);
    }
    if (!c.mismatch) {
        for (int o = 0; o < cl.n; o++) {
            if (!c.present[o] || same_collective(c.in[o], a)) continue;
            c.mismatch = true;
            for (int k = 0; k < cl.n; k++)
                if (cl.async_err[k] == ncclSuccess) cl.async_err[k] = ncclInvalidUsage;
            fprintf(stderr,
                    "cuemu nccl: collective mismatch at collective #%ld: rank %d %s, rank %d "
                    "%s (asynchronous error ncclInvalidUsage on every communicator of the "
                    "clique)\n", seq, o, describe(c.in[o]).c_str(), r, describe(a).c_str());
            break;
        }
    }
    c.in[r] = a;
    c.present[r] = 1;
    c.arrived++;
    if (c.arrived == cl.n && c.withdrawn == 0) {
        c.computing = true;
        lk.unlock();
        if (!c.mismatch) compute(cl, c, seq);
        lk.lock();
        c.computing = false;
        c.done = true;
    } else {
        /* a real kernel spins until its peers arrive; only this rank's abort stops it (a
         * peer's abort does not). If the result is being written, it waits for that. */
        wait_or_die(cl, lk, [&] { return c.done || (cl.aborted[r] && !c.computing); }, [&] {
            std::string missing = rank_list(c, cl.n, false), m;
            char b[400];
            snprintf(b, sizeof b, "nccl collective #%ld on rank %d waited %g s: %s; ", seq, r,
                     hang_seconds(), describe(a).c_str());
            m = b;
            if (!missing.empty())
                m += "rank(s) " + missing + " never reached it";
            else
                m += "a rank that reached it left when its communicator was aborted";
            m += " (a rank waits for its peers until ncclCommAbort on its own communicator)";
            return m;
        });
        if (!c.done) c.withdrawn++; /* aborted: outputs left untouched */
    }
    if (++c.departed == cl.n) cl.colls.erase(seq);
    cl.finished[r]++;
    cl.cv.notify_all();
}

/* Waits until every collective rank r queued has ended (ncclCommFinalize, ncclCommDestroy). */
void wait_quiet(const Ref &ref, const char *fn) {
    Clique &cl = *ref.cl;
    int r = ref.rank;
    std::unique_lock<std::mutex> lk(cl.mu);
    wait_or_die(cl, lk, [&] { return cl.finished[r] >= cl.issued[r] || cl.aborted[r]; }, [&] {
        char m[300];
        snprintf(m, sizeof m, "%s on rank %d waited %g s for its collective #%ld to end (its "
                 "peers never reached it?)", fn, r, hang_seconds(), cl.finished[r]);
        return std::string(m);
    });
}

/* Assigns the next sequence number of the rank and queues the operation on its stream,
 * from the communicator's device as NCCL launches (the caller's device is restored). */
ncclResult_t launch(const Pending &p) {
    Clique &cl = *p.ref.cl;
    int r = p.ref.rank;
    std::lock_guard<std::mutex> il(cl.issue_mu[r]);
    long seq;
    {
        std::lock_guard<std::mutex> l(cl.mu);
        if (cl.aborted[r])
            return warn(ncclInvalidUsage, true, "%s: rank %d's communicator was aborted before "
                        "ncclGroupEnd launched the collective", kind_name(p.args.kind), r);
        seq = cl.issued[r];
    }
    int prev = cuemu::current_device();
    if (cudaSetDevice(p.ref.dev) != cudaSuccess)
        return warn(ncclUnhandledCudaError, false, "cudaSetDevice(%d) failed", p.ref.dev);
    std::shared_ptr<Clique> keep = p.ref.cl;
    Args a = p.args;
    cudaError_t e = cuemu::enqueue(p.stream, [keep, r, seq, a] { run_op(*keep, r, seq, a); });
    cudaSetDevice(prev);
    if (e != cudaSuccess)
        return warn(ncclUnhandledCudaError, false, "%s: launch on stream %p failed: %s",
                    kind_name(a.kind), (void *)p.stream, cudaGetErrorString(e));
    std::lock_guard<std::mutex> l(cl.mu);
    cl.issued[r]++;
    return ncclSuccess;
}

ncclResult_t check_buffer(const char *fn, const char *which, const void *p, size_t bytes,
                          int dev) {
    if (cuemu::is_device_range(p, bytes, dev)) return ncclSuccess;
    return warn(ncclInvalidArgument, false, "%s: %s %p is not a device buffer of %zu bytes on "
                "device %d", fn, which, p, bytes, dev);
}

ncclResult_t collective(const char *fn, Args a, ncclComm_t comm, cudaStream_t stream) {
    if (!comm) return group_err(warn(ncclInvalidArgument, false, "%s: comm is NULL", fn));
    Ref ref;
    if (!lookup(comm, &ref)) return group_err(dead_comm(fn, comm, ncclInvalidUsage));
    Clique &cl = *ref.cl;
    int r = ref.rank, n = cl.n;
    {
        std::lock_guard<std::mutex> l(cl.mu);
        if (cl.finalized[r])
            return group_err(warn(ncclInvalidUsage, false, "%s: rank %d's communicator was "
                                  "finalized", fn, r));
    }
    size_t es = type_size(a.type);
    if (!es)
        return group_err(warn(ncclInvalidArgument, false, "%s: invalid datatype %d", fn,
                              (int)a.type));
    if (reduces(a.kind) && (a.op < 0 || a.op >= ncclNumOps))
        return group_err(warn(ncclInvalidArgument, false, "%s: invalid reduction op %d", fn,
                              a.op));
    if (rooted(a.kind) && (a.root < 0 || a.root >= n))
        return group_err(warn(ncclInvalidArgument, false, "%s: invalid root %d (%d ranks)", fn,
                              a.root, n));
    size_t blocks = a.kind == K_ALL_GATHER ? (size_t)n : 1;
    if (a.count > SIZE_MAX / es / blocks)
        return group_err(warn(ncclInvalidArgument, false, "%s: count %zu too large", fn,
                              a.count));
    if (stream && cuemu::stream_device(stream) != ref.dev)
        return group_err(warn(ncclInvalidUsage, false, "%s: stream %p is not a live stream of "
                              "device %d, rank %d's device", fn, (void *)stream, ref.dev, r));
    if (reduces(a.kind) && (a.type == ncclFloat16 || a.type == ncclBfloat16 ||
                            a.type == ncclFloat8e4m3 || a.type == ncclFloat8e5m2))
        cuemu::fatal("nccl %s on %s: reductions on this type are not emulated", fn,
                     type_name(a.type));
    if (a.count == 0) return ncclSuccess; /* NCCL drops empty collectives */
    size_t bytes = a.count * es;
    bool need_send = a.kind != K_BROADCAST || r == a.root;
    bool need_recv = a.kind != K_REDUCE || r == a.root;
    ncclResult_t res = ncclSuccess;
    if (need_send) res = check_buffer(fn, "sendbuff", a.send, bytes, ref.dev);
    if (!res && need_recv) res = check_buffer(fn, "recvbuff", a.recv, bytes * blocks, ref.dev);
    if (res) return group_err(res);
    Pending p{ref, stream, a};
    if (t_group.depth > 0) {
        t_group.ops.push_back(std::move(p));
        return ncclSuccess;
    }
    return launch(p);
}

} // namespace cuemu_nccl

/* ---------------------------------------------------------------- API */

extern "C" {

ncclResult_t ncclGetVersion(int *version) {
    if (!version) return warn(ncclInvalidArgument, false, "ncclGetVersion: version is NULL");
    *version = NCCL_VERSION_CODE;
    return ncclSuccess;
}

const char *ncclGetErrorString(ncclResult_t r) {
    switch (r) {
    case ncclSuccess: return "no error";
    case ncclUnhandledCudaError: return "unhandled cuda error";
    case ncclSystemError: return "unhandled system error";
    case ncclInternalError: return "internal error";
    case ncclInvalidArgument: return "invalid argument";
    case ncclInvalidUsage: return "invalid usage";
    case ncclRemoteError: return "remote process exited or there was a network error";
    case ncclInProgress: return "NCCL operation in progress";
    default: return "unknown result code";
    }
}

const char *ncclGetLastError(ncclComm_t comm) {
    (void)comm;
    return t_last_error;
}

namespace cuemu_nccl {

/* A clique of dev.size() ranks (rank i on dev[i]); *out[i] = rank i's handle. `what` names
 * the call in CAMO_CUEMU_REPORT's line. */
void make_clique(const std::vector<ncclComm_t *> &out, const std::vector<int> &dev,
                 const char *what) {
    int ndev = (int)dev.size();
    auto cl = std::make_shared<Clique>();
    Registry &g = REG();
    cl->id = g.next_id++;
    cl->n = ndev;
    cl->dev = dev;
    cl->issued.assign(ndev, 0);
    cl->finished.assign(ndev, 0);
    cl->aborted.assign(ndev, 0);
    cl->finalized.assign(ndev, 0);
    cl->async_err.assign(ndev, ncclSuccess);
    cl->issue_mu.reset(new std::mutex[ndev]);
    {
        std::lock_guard<std::mutex> l(g.mu);
        for (int i = 0; i < ndev; i++) {
            *out[i] = new ncclComm{cl, i, dev[i]};
            g.live.insert(*out[i]);
        }
    }
    std::string devs;
    for (int i = 0; i < ndev; i++) devs += (i ? "," : "") + std::to_string(dev[i]);
    const char *rc = getenv("NCCL_RUNTIME_CONNECT");
    report("%s clique=%d ranks=%d devices=%s launch_mode=%s runtime_connect=%s", what,
           cl->id, ndev, devs.c_str(), launch_mode(), rc && *rc ? rc : "unset");
    if (debug_on())
        fprintf(stderr, "cuemu nccl: INFO clique %d: %d ranks on devices %s, NCCL_LAUNCH_MODE "
                "%s\n", cl->id, ndev, devs.c_str(), launch_mode());
}

/* The outermost ncclGroupEnd: the cliques of the ncclCommInitRank calls of the group. Each
 * id's ranks must all be here (one process), on distinct devices. */
ncclResult_t join_inits(std::vector<PendingInit> &inits) {
    std::map<std::string, std::vector<const PendingInit *>> by_id;
    for (const PendingInit &p : inits) by_id[p.id].push_back(&p);
    for (auto &kv : by_id) {
        std::vector<const PendingInit *> &v = kv.second;
        int n = v[0]->nranks;
        std::vector<ncclComm_t *> out(n, nullptr);
        std::vector<int> dev(n, -1);
        for (const PendingInit *p : v) {
            if (p->nranks != n || p->rank < 0 || p->rank >= n || out[p->rank])
                return warn(ncclInvalidArgument, true, "ncclCommInitRank: rank %d of %d (another "
                            "call says %d ranks, or the rank repeats)", p->rank, p->nranks, n);
            for (int r = 0; r < n; r++)
                if (out[r] && dev[r] == p->dev)
                    return warn(ncclInvalidUsage, true, "ncclCommInitRank: Duplicate GPU "
                                "detected: rank %d and rank %d both on CUDA device %d", r,
                                p->rank, p->dev);
            out[p->rank] = p->out;
            dev[p->rank] = p->dev;
        }
        if ((int)v.size() != n)
            return warn(ncclInvalidUsage, true, "ncclCommInitRank: %zu of the %d ranks joined in "
                        "this process; cuemu is one process and cannot emulate the ranks of "
                        "others (a multi-process run needs real NCCL)", v.size(), n);
        make_clique(out, dev, "nccl_comm_init_rank");
    }
    return ncclSuccess;
}

} // namespace cuemu_nccl

ncclResult_t ncclCommInitAll(ncclComm_t *comms, int ndev, const int *devlist) {
    if (!comms) return warn(ncclInvalidArgument, false, "ncclCommInitAll: comms is NULL");
    if (ndev < 1)
        return warn(ncclInvalidArgument, false, "ncclCommInitAll: invalid ndev %d", ndev);
    int count = cuemu::device_count();
    std::vector<int> dev(ndev);
    for (int i = 0; i < ndev; i++) {
        dev[i] = devlist ? devlist[i] : i;
        if (dev[i] < 0 || dev[i] >= count)
            return warn(ncclInvalidArgument, false, "ncclCommInitAll: invalid device %d for "
                        "rank %d (%d devices)", dev[i], i, count);
        for (int j = 0; j < i; j++)
            if (dev[j] == dev[i])
                return warn(ncclInvalidUsage, false, "ncclCommInitAll: Duplicate GPU detected: "
                            "rank %d and rank %d both on CUDA device %d", j, i, dev[i]);
    }
    std::vector<ncclComm_t *> out(ndev);
    for (int i = 0; i < ndev; i++) out[i] = &comms[i];
    make_clique(out, dev, "nccl_comm_init_all");
    return ncclSuccess;
}

ncclResult_t ncclGetUniqueId(ncclUniqueId *uniqueId) {
    if (!uniqueId) return warn(ncclInvalidArgument, false, "ncclGetUniqueId: NULL");
    static std::atomic<unsigned long> next{1};
    memset(uniqueId, 0, sizeof *uniqueId);
    snprintf(uniqueId->internal, sizeof uniqueId->internal, "cuemu-%d-%lu", (int)getpid(),
             next++);
    return ncclSuccess;
}

ncclResult_t ncclCommInitRank(ncclComm_t *comm, int nranks, ncclUniqueId commId, int rank) {
    if (!comm || nranks < 1 || rank < 0 || rank >= nranks)
        return group_err(warn(ncclInvalidArgument, false, "ncclCommInitRank: rank %d of %d",
                              rank, nranks));
    if (t_group.depth == 0)
        return warn(ncclInvalidUsage, true, "ncclCommInitRank outside a group: cuemu joins "
                    "ranks only inside ncclGroupStart/End (one process)");
    int dev = cuemu::current_device();
    t_group.inits.push_back(PendingInit{comm, nranks, rank, dev,
                                        std::string(commId.internal, sizeof commId.internal)});
    return ncclSuccess;
}

ncclResult_t ncclAllReduce(const void *sendbuff, void *recvbuff, size_t count,
                           ncclDataType_t datatype, ncclRedOp_t op, ncclComm_t comm,
                           cudaStream_t stream) {
    return collective("ncclAllReduce",
                      Args{K_ALL_REDUCE, sendbuff, recvbuff, count, datatype, (int)op, -1}, comm,
                      stream);
}

ncclResult_t ncclBroadcast(const void *sendbuff, void *recvbuff, size_t count,
                           ncclDataType_t datatype, int root, ncclComm_t comm,
                           cudaStream_t stream) {
    return collective("ncclBroadcast",
                      Args{K_BROADCAST, sendbuff, recvbuff, count, datatype, -1, root}, comm,
                      stream);
}

ncclResult_t ncclReduce(const void *sendbuff, void *recvbuff, size_t count,
                        ncclDataType_t datatype, ncclRedOp_t op, int root, ncclComm_t comm,
                        cudaStream_t stream) {
    return collective("ncclReduce",
                      Args{K_REDUCE, sendbuff, recvbuff, count, datatype, (int)op, root}, comm,
                      stream);
}

ncclResult_t ncclAllGather(const void *sendbuff, void *recvbuff, size_t sendcount,
                           ncclDataType_t datatype, ncclComm_t comm, cudaStream_t stream) {
    return collective("ncclAllGather",
                      Args{K_ALL_GATHER, sendbuff, recvbuff, sendcount, datatype, -1, -1}, comm,
                      stream);
}

ncclResult_t ncclGroupStart(void) {
    t_group.depth++;
    return ncclSuccess;
}

/* The outermost end launches what the group queued, in call order, then waits for the
 * communicators finalized inside it. If a call inside the group failed, nothing is launched
 * and that error is returned (NCCL discards the group's operations). */
ncclResult_t ncclGroupEnd(void) {
    GroupState &g = t_group;
    if (g.depth == 0)
        return warn(ncclInvalidUsage, false, "ncclGroupEnd: no matching ncclGroupStart");
    if (--g.depth > 0) return ncclSuccess;
    std::vector<Pending> ops;
    std::vector<Ref> fin;
    std::vector<PendingInit> inits;
    ops.swap(g.ops);
    fin.swap(g.finalize);
    inits.swap(g.inits);
    ncclResult_t err = g.err;
    g.err = ncclSuccess;
    if (err != ncclSuccess)
        return warn(err, false, "ncclGroupEnd: a call inside the group failed (%s); its %zu "
                    "collective(s) were not launched", ncclGetErrorString(err), ops.size());
    if (!inits.empty() && (err = join_inits(inits)) != ncclSuccess) return err;
    ncclResult_t res = ncclSuccess;
    for (const Pending &p : ops) {
        ncclResult_t r = launch(p);
        if (res == ncclSuccess) res = r;
    }
    for (const Ref &f : fin) wait_quiet(f, "ncclCommFinalize");
    return res;
}

ncclResult_t ncclCommFinalize(ncclComm_t comm) {
    if (!comm) return ncclSuccess;
    Ref ref;
    if (!lookup(comm, &ref)) return group_err(dead_comm("ncclCommFinalize", comm, ncclInvalidUsage));
    {
        std::lock_guard<std::mutex> l(ref.cl->mu);
        if (ref.cl->finalized[ref.rank])
            return group_err(warn(ncclInvalidArgument, false, "ncclCommFinalize: rank %d's "
                                  "communicator was already finalized", ref.rank));
        ref.cl->finalized[ref.rank] = 1;
    }
    if (t_group.depth > 0) {
        t_group.finalize.push_back(ref);
        return ncclSuccess;
    }
    wait_quiet(ref, "ncclCommFinalize");
    return ncclSuccess;
}

/* Like NCCL: a communicator neither finalized nor in error first waits for its collectives. */
ncclResult_t ncclCommDestroy(ncclComm_t comm) {
    if (!comm) return ncclSuccess;
    Ref ref;
    if (!lookup(comm, &ref))
        return warn(ncclInvalidArgument, true, "ncclCommDestroy: comm %p has already been "
                    "destroyed (or aborted, or was never created)", (void *)comm);
    bool wait;
    {
        std::lock_guard<std::mutex> l(ref.cl->mu);
        wait = !ref.cl->finalized[ref.rank] && ref.cl->async_err[ref.rank] == ncclSuccess;
    }
    if (wait) wait_quiet(ref, "ncclCommDestroy");
    if (take(comm)) delete comm;
    return ncclSuccess;
}

/* Any host thread: wakes this rank's waiting collective (its outputs are left as they are);
 * later ones of this rank do nothing. The peers keep waiting until their own abort. */
ncclResult_t ncclCommAbort(ncclComm_t comm) {
    if (!comm) return ncclSuccess;
    Ref ref;
    if (!lookup(comm, &ref) || !take(comm))
        return warn(ncclInvalidArgument, true, "ncclCommAbort: comm %p has already been "
                    "destroyed (or aborted, or was never created)", (void *)comm);
    {
        std::lock_guard<std::mutex> l(ref.cl->mu);
        ref.cl->aborted[ref.rank] = 1;
        ref.cl->cv.notify_all();
    }
    delete comm;
    return ncclSuccess;
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t *asyncError) {
    if (!comm || !asyncError)
        return warn(ncclInvalidArgument, false, "ncclCommGetAsyncError: NULL argument");
    Ref ref;
    if (!lookup(comm, &ref)) return dead_comm("ncclCommGetAsyncError", comm, ncclInvalidUsage);
    std::lock_guard<std::mutex> l(ref.cl->mu);
    *asyncError = ref.cl->async_err[ref.rank];
    return ncclSuccess;
}

ncclResult_t ncclCommCount(const ncclComm_t comm, int *count) {
    if (!comm || !count) return warn(ncclInvalidArgument, false, "ncclCommCount: NULL argument");
    Ref ref;
    if (!lookup(comm, &ref)) return dead_comm("ncclCommCount", comm, ncclInvalidUsage);
    *count = ref.cl->n;
    return ncclSuccess;
}

ncclResult_t ncclCommCuDevice(const ncclComm_t comm, int *device) {
    if (!comm || !device)
        return warn(ncclInvalidArgument, false, "ncclCommCuDevice: NULL argument");
    Ref ref;
    if (!lookup(comm, &ref)) return dead_comm("ncclCommCuDevice", comm, ncclInvalidUsage);
    *device = ref.dev;
    return ncclSuccess;
}

ncclResult_t ncclCommUserRank(const ncclComm_t comm, int *rank) {
    if (!comm || !rank) return warn(ncclInvalidArgument, false, "ncclCommUserRank: NULL argument");
    Ref ref;
    if (!lookup(comm, &ref)) return dead_comm("ncclCommUserRank", comm, ncclInvalidUsage);
    *rank = ref.rank;
    return ncclSuccess;
}

} // extern "C"
