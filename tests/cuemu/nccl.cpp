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
 * blocked when its communicator is destroyed or aborted stays valid. ncclCommInitRank calls
 * that cover only some ranks of an id make a clique over processes of this machine, which
 * meet through files ("cliques over processes" below); the semantics stay those above. */
#include "cuemu_internal.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
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

/* a peer process's contribution file, mapped read-only */
struct Mapped {
    void *p = MAP_FAILED;
    size_t len = 0;
    ~Mapped() {
        if (p != MAP_FAILED) munmap(p, len);
    }
};

/* one collective (by sequence number) of a clique; over processes, a remote rank is present
 * once its contribution file was seen (its `in` then points into the mapped file) */
struct Coll {
    std::vector<Args> in;
    std::vector<char> present;
    std::vector<std::unique_ptr<Mapped>> maps;
    int arrived = 0, departed = 0, withdrawn = 0;
    bool computing = false, done = false, mismatch = false;
};

/* what a clique over processes shares with the other processes (its directory; see
 * "cliques over processes" below) */
struct Xproc {
    std::string dir;
    int me = 0;    /* this process's name in the directory: its lowest rank */
    int procs = 0; /* processes that joined */
    ~Xproc();      /* leaves: the last process to leave removes the directory */
};

struct Clique {
    int id = 0, n = 0, nlocal = 0; /* ranks in all; of them in this process */
    std::vector<int> dev;          /* device of each local rank (-1: another process's) */
    std::vector<char> local;       /* rank lives in this process */
    std::unique_ptr<Xproc> xp;     /* the directory shared with the other processes, or null */
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
 * "<what()>" so that a test never hangs silently. A clique over processes also wakes every
 * 20 us to 2 ms (doubling) and calls poll(), which looks for the other processes' files and
 * returns true when it changed something (ok() is then asked again at once). */
template <class Ok, class What, class Poll>
void wait_or_die(Clique &cl, std::unique_lock<std::mutex> &lk, Ok ok, What what, Poll poll) {
    typedef std::chrono::steady_clock clock;
    auto deadline = clock::now() + std::chrono::duration_cast<clock::duration>(
                                       std::chrono::duration<double>(hang_seconds()));
    std::chrono::microseconds step(20);
    while (!ok()) {
        if (poll()) continue;
        if (clock::now() >= deadline) {
            std::string m = what();
            cuemu::fatal("%s", m.c_str());
        }
        auto until = deadline;
        if (cl.xp) {
            until = std::min(deadline, clock::now() + step);
            step = std::min(step * 2, std::chrono::microseconds(2000));
        }
        cl.cv.wait_until(lk, until);
    }
}

template <class Ok, class What>
void wait_or_die(Clique &cl, std::unique_lock<std::mutex> &lk, Ok ok, What what) {
    wait_or_die(cl, lk, ok, what, [] { return false; });
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

/* every buffer the collective touches must still be allocated when it runs (a rank of
 * another process: its input is a mapped file, its output not ours to write) */
void recheck(const Clique &cl, long seq, int r, const char *which, const void *p, size_t bytes) {
    if (cl.local[r] && !cuemu::is_device_range(p, bytes, cl.dev[r]))
        cuemu::fatal("nccl collective #%ld: rank %d's %s %p (%zu bytes on device %d) was freed "
                     "while the collective was queued or in flight", seq, r, which, p, bytes,
                     cl.dev[r]);
}

/* The last contributor computes; called without the lock (the inputs are complete and no
 * rank leaves while `computing`). Inputs are copied or reduced into a scratch buffer first,
 * then written to every output: in-place and overlapping buffers work. Over processes each
 * process computes the same result from every rank's input and writes its own ranks'
 * outputs. */
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
            if (!cl.local[r] || (a.kind == K_REDUCE && r != a.root)) continue;
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
            if (!cl.local[r]) continue;
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
            if (!cl.local[r]) continue;
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

/* ---- cliques over processes: the collectives ----
 * Each rank of this process writes its input of collective #seq to the file p<seq>.<rank>
 * of the clique's directory (under a temporary name, then renamed: a file that exists is
 * whole). Every process reads every other rank's file and computes the result for its own
 * ranks from all inputs in global rank order: the bits of the one-process emulation. Nobody
 * writes another process's memory, so a process that leaves (abort) or dies cannot corrupt
 * a peer: its peers wait as for a rank that never comes, until their own abort. Once every
 * rank has contributed to #seq, every process has read #seq-1 (a rank contributes only after
 * its previous collective ended): each process then deletes its ranks' files of #seq-1. */

struct PartHead {
    char magic[8];                              /* "cuemuNC" */
    int32_t kind, type, op, root, rank, unused;
    uint64_t count, bytes;                      /* bytes: the data after this head */
    char fill[16];
};
static_assert(sizeof(PartHead) == 64, "the data of a part file starts at byte 64");

std::string part_name(long seq, int r) {
    return "p" + std::to_string(seq) + "." + std::to_string(r);
}

void write_all(int fd, const void *p, size_t n, const std::string &path) {
    const char *b = (const char *)p;
    while (n) {
        ssize_t w = write(fd, b, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) cuemu::fatal("nccl: writing %s: %s", path.c_str(), strerror(errno));
        b += w;
        n -= (size_t)w;
    }
}

/* dir/name = head + data, appearing whole (a temporary file renamed); dies on an I/O error:
 * the peers could not go on either */
void write_file(const std::string &dir, const std::string &name, const void *head,
                size_t hbytes, const void *data, size_t bytes) {
    std::string tmp = dir + "/.tmp." + name, path = dir + "/" + name;
    int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) cuemu::fatal("nccl: cannot create %s: %s", tmp.c_str(), strerror(errno));
    write_all(fd, head, hbytes, tmp);
    if (bytes) write_all(fd, data, bytes, tmp);
    close(fd);
    if (rename(tmp.c_str(), path.c_str()))
        cuemu::fatal("nccl: cannot rename %s: %s", tmp.c_str(), strerror(errno));
}

/* Local rank r's input of #seq, for the other processes (without the lock). */
void put_part(const Clique &cl, long seq, int r, const Args &a) {
    bool sends = a.kind != K_BROADCAST || r == a.root;
    size_t bytes = sends ? a.count * type_size(a.type) : 0;
    if (bytes) recheck(cl, seq, r, "sendbuff", a.send, bytes);
    PartHead h;
    memset(&h, 0, sizeof h);
    memcpy(h.magic, "cuemuNC", 8);
    h.kind = a.kind;
    h.type = a.type;
    h.op = a.op;
    h.root = a.root;
    h.rank = r;
    h.count = a.count;
    h.bytes = bytes;
    write_file(cl.xp->dir, part_name(seq, r), &h, sizeof h, a.send, bytes);
}

/* Rank r (of this process, or another's whose file was found) has reached #seq with `a`; a
 * collective that differs from one already there is the asynchronous error ncclInvalidUsage
 * on every communicator of the clique (over processes, each process finds it itself). */
void arrive(Clique &cl, Coll &c, long seq, int r, const Args &a) {
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
}

/* Under the lock: the other processes' files of #seq not seen yet; each one found arrives
 * (its input read in place from the mapped file). */
void poll_parts(Clique &cl, Coll &c, long seq) {
    for (int r = 0; r < cl.n; r++) {
        if (cl.local[r] || c.present[r]) continue;
        std::string path = cl.xp->dir + "/" + part_name(seq, r);
        int fd = open(path.c_str(), O_RDONLY);
        if (fd < 0) {
            if (errno == ENOENT) continue;
            cuemu::fatal("nccl: cannot open %s: %s", path.c_str(), strerror(errno));
        }
        PartHead h;
        struct stat st;
        if (pread(fd, &h, sizeof h, 0) != (ssize_t)sizeof h || fstat(fd, &st) ||
            memcmp(h.magic, "cuemuNC", 8) || h.rank != r ||
            (uint64_t)st.st_size != sizeof h + h.bytes)
            cuemu::fatal("nccl: %s is not rank %d's part of collective #%ld", path.c_str(), r,
                         seq);
        std::unique_ptr<Mapped> m(new Mapped);
        if (h.bytes) {
            m->len = (size_t)st.st_size;
            m->p = mmap(nullptr, m->len, PROT_READ, MAP_PRIVATE, fd, 0);
            if (m->p == MAP_FAILED)
                cuemu::fatal("nccl: cannot map %s: %s", path.c_str(), strerror(errno));
        }
        close(fd);
        const void *data = h.bytes ? (const char *)m->p + sizeof h : nullptr;
        c.maps.push_back(std::move(m));
        arrive(cl, c, seq, r,
               Args{(Kind)h.kind, data, nullptr, (size_t)h.count, (ncclDataType_t)h.type, h.op,
                    h.root});
    }
}

/* every rank has arrived and none left: the collective can complete */
bool ready(const Clique &cl, const Coll &c) {
    return c.arrived == cl.n && c.withdrawn == 0 && !c.done && !c.computing;
}

/* Completes a ready collective (computes it unless mismatched), without the lock. */
void finish(Clique &cl, Coll &c, long seq, std::unique_lock<std::mutex> &lk) {
    c.computing = true;
    lk.unlock();
    if (!c.mismatch) compute(cl, c, seq);
    if (cl.xp && seq > 0) /* every rank reached #seq: #seq-1's files were read by all */
        for (int r = 0; r < cl.n; r++)
            if (cl.local[r]) unlink((cl.xp->dir + "/" + part_name(seq - 1, r)).c_str());
    lk.lock();
    c.computing = false;
    c.done = true;
    cl.cv.notify_all();
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
    if (cl.xp && !cl.aborted[r]) { /* the other processes need this rank's input */
        lk.unlock();
        put_part(cl, seq, r, a);
        lk.lock();
    }
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
    arrive(cl, c, seq, r, a);
    if (cl.xp) poll_parts(cl, c, seq);
    if (ready(cl, c)) {
        finish(cl, c, seq, lk);
    } else {
        /* a real kernel spins until its peers arrive; only this rank's abort stops it (a
         * peer's abort does not). If the result is being written, it waits for that. Over
         * processes the waiting ranks look for the other processes' files meanwhile. */
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
        }, [&] {
            if (!cl.xp || c.done || c.computing || cl.aborted[r]) return false;
            poll_parts(cl, c, seq);
            if (!ready(cl, c)) return false;
            finish(cl, c, seq, lk);
            return true;
        });
        if (!c.done) c.withdrawn++; /* aborted: outputs left untouched */
    }
    if (++c.departed == cl.nlocal) cl.colls.erase(seq);
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
 * the call in CAMO_CUEMU_REPORT's line. Over processes (xp): out[i] is null and dev[i] -1 for
 * the ranks of other processes. */
void make_clique(const std::vector<ncclComm_t *> &out, const std::vector<int> &dev,
                 const char *what, std::unique_ptr<Xproc> xp = nullptr) {
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
    cl->local.assign(ndev, 0);
    for (int i = 0; i < ndev; i++) {
        cl->local[i] = out[i] != nullptr;
        cl->nlocal += cl->local[i];
    }
    std::string devs, where;
    for (int i = 0; i < ndev; i++)
        if (out[i]) devs += (devs.empty() ? "" : ",") + std::to_string(dev[i]);
    if (xp) {
        where = " processes=" + std::to_string(xp->procs) + " local_ranks=";
        for (int i = 0, k = 0; i < ndev; i++)
            if (out[i]) where += (k++ ? "," : "") + std::to_string(i);
    }
    cl->xp = std::move(xp);
    {
        std::lock_guard<std::mutex> l(g.mu);
        for (int i = 0; i < ndev; i++) {
            if (!out[i]) continue;
            *out[i] = new ncclComm{cl, i, dev[i]};
            g.live.insert(*out[i]);
        }
    }
    const char *rc = getenv("NCCL_RUNTIME_CONNECT");
    report("%s clique=%d ranks=%d devices=%s%s launch_mode=%s runtime_connect=%s", what,
           cl->id, ndev, devs.c_str(), where.c_str(), launch_mode(), rc && *rc ? rc : "unset");
    if (debug_on())
        fprintf(stderr, "cuemu nccl: INFO clique %d: %d ranks, here on devices %s%s, "
                "NCCL_LAUNCH_MODE %s\n", cl->id, ndev, devs.c_str(), where.c_str(),
                launch_mode());
}

/* ---- cliques over processes: joining and leaving ----
 * ncclCommInitRank calls of a group that cover only some ranks of an id: this process's
 * ranks are the local part of a clique whose other parts are other processes on this
 * machine. The parts meet in the directory $TMPDIR/cuemu-nccl-<id> (TMPDIR, else /tmp):
 * each process writes join.<r0> (r0: its lowest rank) with its ranks, their GPUs and its
 * pid, and waits until the join files cover every rank. Leaving (the clique's last handle
 * and operation gone), a process writes left.<r0>; the last to leave removes the directory.
 * A process that dies leaves it behind (tests give each run its own TMPDIR).
 *
 * GPUs of other processes: NCCL refuses two ranks on one physical GPU ("Duplicate GPU
 * detected"), comparing bus ids. Emulated GPUs have none; a rank's GPU is its ordinal as
 * CUDA_VISIBLE_DEVICES maps it (entry i of the list; the ordinal itself when unset), so two
 * processes that both use ordinal 0 without CUDA_VISIBLE_DEVICES share "GPU 0" and are
 * refused, as on a real machine, and CUDA_VISIBLE_DEVICES=<local rank> per process (or
 * distinct ordinals) gives each its own. */

int physical_device(int dev) {
    const char *vis = getenv("CUDA_VISIBLE_DEVICES");
    if (!vis) return dev;
    int i = 0;
    for (const char *q = vis; *q; i++) {
        char *end;
        long d = strtol(q, &end, 10);
        if (end == q) break;
        if (i == dev) return (int)d;
        if (*end != ',') break;
        q = end + 1;
    }
    return dev;
}

/* the names in dir that start with `prefix` */
std::vector<std::string> list_dir(const std::string &dir, const char *prefix) {
    std::vector<std::string> v;
    DIR *d = opendir(dir.c_str());
    if (!d) return v;
    size_t k = strlen(prefix);
    for (struct dirent *e; (e = readdir(d));)
        if (!strncmp(e->d_name, prefix, k)) v.push_back(e->d_name);
    closedir(d);
    return v;
}

Xproc::~Xproc() {
    std::string left = dir + "/left." + std::to_string(me);
    int fd = open(left.c_str(), O_WRONLY | O_CREAT, 0600);
    if (fd >= 0) close(fd);
    if ((int)list_dir(dir, "left.").size() < procs) return;
    for (const std::string &f : list_dir(dir, "")) /* the last to leave: all have read all */
        if (f != "." && f != "..") unlink((dir + "/" + f).c_str());
    rmdir(dir.c_str());
}

/* one process's join file: its ranks of an n-rank clique, their GPUs, its pid */
struct Joined {
    int n = 0, pid = 0;
    std::vector<int> ranks, gpus;
};

bool read_join(const std::string &path, Joined *j) {
    FILE *f = fopen(path.c_str(), "r");
    if (!f) return false;
    bool ok = fscanf(f, "%d %d", &j->n, &j->pid) == 2;
    int r, gpu;
    while (ok && fscanf(f, "%d %d", &r, &gpu) == 2) {
        j->ranks.push_back(r);
        j->gpus.push_back(gpu);
    }
    fclose(f);
    return ok && !j->ranks.empty();
}

/* Waits until the join files of dir cover all n ranks (0), or finds them inconsistent (an
 * NCCL error); *procs = the processes seen. Dies after CAMO_CUEMU_HANG_S. */
ncclResult_t await_joins(const std::string &dir, int n, int *procs) {
    auto t0 = std::chrono::steady_clock::now();
    for (;;) {
        std::vector<int> owner(n, -1), gpu(n, -1);
        std::vector<std::string> files = list_dir(dir, "join.");
        *procs = (int)files.size();
        int covered = 0;
        for (const std::string &f : files) {
            Joined j;
            if (!read_join(dir + "/" + f, &j))
                cuemu::fatal("nccl: %s/%s is not a join file of cuemu", dir.c_str(), f.c_str());
            for (size_t k = 0; k < j.ranks.size(); k++) {
                int r = j.ranks[k];
                if (j.n != n || r < 0 || r >= n)
                    return warn(ncclInvalidArgument, true, "ncclCommInitRank: process %d joined "
                                "as rank %d of %d, this one as a rank of %d", j.pid, r, j.n, n);
                if (owner[r] >= 0)
                    return warn(ncclInvalidArgument, true, "ncclCommInitRank: rank %d joined "
                                "in two processes (pids %d and %d)", r, owner[r], j.pid);
                owner[r] = j.pid;
                gpu[r] = j.gpus[k];
                covered++;
            }
        }
        if (covered == n) {
            for (int a = 0; a < n; a++)
                for (int b = a + 1; b < n; b++)
                    if (gpu[a] == gpu[b])
                        return warn(ncclInvalidUsage, true, "ncclCommInitRank: Duplicate GPU "
                                    "detected: rank %d (pid %d) and rank %d (pid %d) both on "
                                    "CUDA device %d (CUDA_VISIBLE_DEVICES index: give each "
                                    "process its own GPUs)", a, owner[a], b, owner[b], gpu[a]);
            return ncclSuccess;
        }
        std::chrono::duration<double> waited = std::chrono::steady_clock::now() - t0;
        if (waited.count() > hang_seconds()) {
            std::string missing;
            for (int r = 0; r < n; r++)
                if (owner[r] < 0) missing += (missing.empty() ? "" : ",") + std::to_string(r);
            cuemu::fatal("nccl: ncclCommInitRank waited %g s for rank(s) %s of %d to join (%s)",
                         hang_seconds(), missing.c_str(), n, dir.c_str());
        }
        struct timespec ts = {0, 1000000}; /* 1 ms */
        nanosleep(&ts, nullptr);
    }
}

/* This process's ranks `v` of an id whose other ranks are in other processes. */
ncclResult_t join_processes(const std::string &id, const std::vector<const PendingInit *> &v,
                            int n) {
    std::string name(id.c_str()); /* the id is NUL-padded */
    if (name.compare(0, 6, "cuemu-") ||
        name.find_first_not_of("0123456789abcdefghijklmnopqrstuvwxyz-") != std::string::npos)
        return warn(ncclInvalidArgument, true, "ncclCommInitRank: the unique id was not made by "
                    "cuemu's ncclGetUniqueId");
    const char *t = getenv("TMPDIR");
    std::unique_ptr<Xproc> x(new Xproc);
    x->dir = std::string(t && *t ? t : "/tmp") + "/cuemu-nccl-" + name.substr(6);
    if (mkdir(x->dir.c_str(), 0700) && errno != EEXIST)
        return warn(ncclSystemError, true, "ncclCommInitRank: cannot create %s: %s",
                    x->dir.c_str(), strerror(errno));
    std::vector<ncclComm_t *> out(n, nullptr);
    std::vector<int> dev(n, -1);
    x->me = n;
    std::string text = std::to_string(n) + " " + std::to_string((int)getpid()) + "\n";
    for (const PendingInit *p : v) {
        out[p->rank] = p->out;
        dev[p->rank] = p->dev;
        x->me = std::min(x->me, p->rank);
        text += std::to_string(p->rank) + " " + std::to_string(physical_device(p->dev)) + "\n";
    }
    write_file(x->dir, "join." + std::to_string(x->me), text.data(), text.size(), nullptr, 0);
    ncclResult_t r = await_joins(x->dir, n, &x->procs);
    if (r != ncclSuccess) return r; /* x leaves the directory */
    make_clique(out, dev, "nccl_comm_init_rank", std::move(x));
    return ncclSuccess;
}

/* The outermost ncclGroupEnd: the cliques of the ncclCommInitRank calls of the group. An
 * id's ranks here must be on distinct devices; ranks missing are other processes' ranks. */
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
        ncclResult_t r = (int)v.size() == n ? ncclSuccess : join_processes(kv.first, v, n);
        if (r != ncclSuccess) return r;
        if ((int)v.size() == n) make_clique(out, dev, "nccl_comm_init_rank");
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
    struct timespec ts; /* with the pid: unique on this machine, also against stale files */
    clock_gettime(CLOCK_REALTIME, &ts);
    snprintf(uniqueId->internal, sizeof uniqueId->internal, "cuemu-%d-%lu-%lx-%lx",
             (int)getpid(), next++, (unsigned long)ts.tv_sec, (unsigned long)ts.tv_nsec);
    return ncclSuccess;
}

ncclResult_t ncclCommInitRank(ncclComm_t *comm, int nranks, ncclUniqueId commId, int rank) {
    if (!comm || nranks < 1 || rank < 0 || rank >= nranks)
        return group_err(warn(ncclInvalidArgument, false, "ncclCommInitRank: rank %d of %d",
                              rank, nranks));
    PendingInit p{comm, nranks, rank, cuemu::current_device(),
                  std::string(commId.internal, sizeof commId.internal)};
    if (t_group.depth > 0) {
        t_group.inits.push_back(p);
        return ncclSuccess;
    }
    std::vector<PendingInit> one{p}; /* blocks until the other ranks' processes join */
    return join_inits(one);
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
