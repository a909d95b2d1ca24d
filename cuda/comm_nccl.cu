/* comm_nccl.cu: the `nccl` comm of comm.h: one communicator per replica from ncclCommInitAll
 * (distinct GPUs, created from one thread before any collective). Collectives run on a comm
 * stream that waits for the replica's compute stream through an event; wait() polls the
 * completion event and ncclCommGetAsyncError with a timeout. On an error, a timeout or an
 * abort() anywhere, every rank aborts ITS OWN communicator (NCCL handles are used by their
 * owning thread only) and every op returns -1: no hang. The host side (barrier, abort, host
 * sums) is the shared group of comm_group.cu.
 * Over processes (camo_comm_nccl_create_span): one communicator over every GPU of every
 * process, each of this process's ranks joined with ncclCommInitRank in one group; the
 * host side crosses processes through core/mpi.h (comm_group.cu). */
#include "comm_group.cuh"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

typedef struct nccl_group {
    comm_group base;
    pthread_mutex_t mu; /* guards issued */
    long *issued;       /* collectives each rank has issued: a timeout names the late ones */
    ncclComm_t *comm;   /* communicator of each rank */
    int *dead;          /* rank's communicator was aborted (its owner sets it) */
    int *dev;           /* device of each rank */
} nccl_group;

typedef struct nccl_rank {
    comm_rank base;
    cudaStream_t side;             /* the comm stream */
    cudaEvent_t ev_ready, ev_done;
    int own_aborted;               /* this rank's communicator was aborted */
} nccl_rank;

static nccl_rank *NR(camo_comm *c) { return (nccl_rank *)c->ctx; }
static nccl_group *NG(camo_comm *c) { return (nccl_group *)comm_group_of(c); }
static ncclComm_t own_comm(camo_comm *c) { return NG(c)->comm[comm_local(c)]; }

/* Aborts this rank's communicator once (its kernels stop waiting for peers). */
static void nccl_abort_own(camo_comm *c) {
    nccl_rank *r = NR(c);
    if (r->own_aborted) return;
    r->own_aborted = 1;
    NG(c)->dead[comm_local(c)] = 1;
    cudaSetDevice(r->base.device);
    ncclCommAbort(own_comm(c));
}

/* A failed call: record why, abort the group and this rank's communicator. */
static int nccl_fail(camo_comm *c) {
    comm_abort_failed(c);
    nccl_abort_own(c);
    return comm_fail(c);
}

/* The group was aborted elsewhere: this rank's communicator follows. */
static int nccl_aborted(camo_comm *c) {
    nccl_abort_own(c);
    return comm_fail(c);
}

/* Before a collective: the comm stream waits for what the compute stream queued so far. */
static int nccl_begin(camo_comm *c) {
    nccl_rank *r = NR(c);
    nccl_group *g = NG(c);
    if (comm_aborted(c)) return nccl_aborted(c);
    if (CUDA_CHECK(cudaSetDevice(r->base.device)) ||
        CUDA_CHECK(cudaEventRecord(r->ev_ready, r->base.compute)) ||
        CUDA_CHECK(cudaStreamWaitEvent(r->side, r->ev_ready, 0)))
        return nccl_fail(c);
    pthread_mutex_lock(&g->mu); /* for a timeout's message: who did not issue it */
    g->issued[comm_local(c)]++;
    pthread_mutex_unlock(&g->mu);
    return 0;
}

/* rank r has issued fewer collectives than `waiter`, which waits for its last one */
static int issue_late(const void *arg, int r, int waiter) {
    const nccl_group *g = (const nccl_group *)arg;
    return g->issued[r] < g->issued[waiter];
}

/* The timeout of nccl_poll, naming the ranks that never issued the awaited collective. */
static int nccl_timed_out(camo_comm *c) {
    nccl_group *g = NG(c);
    char msg[256];
    pthread_mutex_lock(&g->mu);
    camo_barrier_timeout_text(g->base.bar, comm_local(c), issue_late, g, msg, sizeof msg);
    pthread_mutex_unlock(&g->mu);
    CAMO_ERR("%s", msg);
    return nccl_fail(c);
}

static int nccl_wait(camo_comm *c);

/* After a collective that is not all_reduce_sum: wait for it at once (these are rare and
 * callers read their results right away). It must be the polling wait, not only a
 * cross-stream event: if the compute stream merely waited on the comm stream, a peer that
 * never issues its part (it failed) would leave this rank's next download/sync blocked in
 * the driver for ever, where no timeout or abort can reach it. */
static int nccl_join(camo_comm *c) { return nccl_wait(c); }

static int nccl_all_reduce_sum(camo_comm *c, float *data, size_t n) {
    if (!n) return 0;
    if (nccl_begin(c)) return -1;
    if (NCCL_CHECK(ncclAllReduce(data, data, n, ncclFloat, ncclSum, own_comm(c), NR(c)->side)))
        return nccl_fail(c);
    return 0; /* asynchronous: wait() orders the compute stream after it */
}

static int nccl_broadcast(camo_comm *c, float *data, size_t n, int root) {
    if (!n) return 0;
    if (nccl_begin(c)) return -1;
    if (NCCL_CHECK(ncclBroadcast(data, data, n, ncclFloat, root, own_comm(c), NR(c)->side)))
        return nccl_fail(c);
    return nccl_join(c);
}

static int nccl_reduce_to_root(camo_comm *c, float *data, size_t n, int root) {
    if (!n) return 0;
    if (nccl_begin(c)) return -1;
    if (NCCL_CHECK(ncclReduce(data, data, n, ncclFloat, ncclSum, root, own_comm(c),
                              NR(c)->side)))
        return nccl_fail(c);
    return nccl_join(c);
}

static int nccl_all_gather(camo_comm *c, float *out, const float *in, size_t n) {
    if (!n) return 0;
    if (nccl_begin(c)) return -1;
    if (NCCL_CHECK(ncclAllGather(in, out, n, ncclFloat, own_comm(c), NR(c)->side)))
        return nccl_fail(c);
    return nccl_join(c);
}

/* One look at the work queued on the comm stream: 0 done, 1 still running, -1 failed (an
 * error of the event or an asynchronous NCCL error, recorded). */
static int nccl_check(camo_comm *c) {
    cudaError_t q = cudaEventQuery(NR(c)->ev_done);
    if (q == cudaSuccess) return 0;
    if (q != cudaErrorNotReady) {
        CUDA_CHECK(q);
        return -1;
    }
    ncclResult_t ae = ncclSuccess;
    if (NCCL_CHECK(ncclCommGetAsyncError(own_comm(c), &ae))) return -1;
    if (ae != ncclSuccess && ae != ncclInProgress) {
        CAMO_ERR("NCCL asynchronous error: %s", ncclGetErrorString(ae));
        return -1;
    }
    return 1;
}

/* 1 once this rank's compute stream has reached its latest collective (nccl_begin's mark),
 * 0 while it is still on the work queued before it, -1 on an error (recorded). */
static int own_work_reached(camo_comm *c) {
    cudaError_t q = cudaEventQuery(NR(c)->ev_ready);
    if (q == cudaSuccess) return 1;
    if (q == cudaErrorNotReady) return 0;
    CUDA_CHECK(q);
    return -1;
}

/* Polls until everything this rank queued on its comm stream has completed, NCCL reports an
 * asynchronous error, another rank aborts the group, or the timeout passes. The host runs
 * ahead of its GPU (docs/cuda.md "Host waits in a training step"), so the clock starts only
 * once this rank's own GPU has reached the collective: a long forward and backward still
 * queued here is not a late peer. */
static int nccl_poll(camo_comm *c) {
    nccl_rank *r = NR(c);
    double timeout_s = camo_barrier_timeout(NG(c)->base.bar);
    if (comm_aborted(c)) return nccl_aborted(c);
    if (CUDA_CHECK(cudaSetDevice(r->base.device)) ||
        CUDA_CHECK(cudaEventRecord(r->ev_done, r->side)))
        return nccl_fail(c);
    double t0 = camo_now();
    int reached = 0;
    for (;;) {
        int rc = nccl_check(c);
        if (rc == 0) break;
        if (rc < 0) return nccl_fail(c);
        if (comm_aborted(c)) return nccl_aborted(c);
        if (!reached && (reached = own_work_reached(c)) < 0) return nccl_fail(c);
        if (!reached) t0 = camo_now();
        if (timeout_s > 0 && camo_now() - t0 > timeout_s) return nccl_timed_out(c);
        struct timespec ts = {0, 50000}; /* 50 us */
        nanosleep(&ts, NULL);
    }
    return 0;
}

/* nccl_poll, then the compute stream is ordered after the comm stream (the collectives'
 * results are complete, so this wait can never block on a peer). */
static int nccl_wait(camo_comm *c) {
    nccl_rank *r = NR(c);
    if (nccl_poll(c)) return -1;
    if (CUDA_CHECK(cudaStreamWaitEvent(r->base.compute, r->ev_done, 0))) return nccl_fail(c);
    return 0;
}

static int nccl_barrier(camo_comm *c) {
    if (nccl_wait(c)) return -1;
    return comm_barrier_all(c); /* over every process of a span */
}

/* Aborts the live communicators of an aborted group (once each); returns how many are live. */
static int nccl_abort_all(nccl_group *g) {
    int aborted = camo_barrier_aborted(g->base.bar), live = 0;
    for (int i = 0; i < g->base.n; i++) {
        if (!g->comm[i] || g->dead[i]) continue;
        if (aborted) {
            cudaSetDevice(g->dev[i]);
            ncclCommAbort(g->comm[i]);
            g->dead[i] = 1;
        } else {
            live++;
        }
    }
    return live;
}

/* ncclCommFinalize/ncclCommDestroy synchronise with the peers of the communicator, so one
 * thread finalizing its communicators one by one deadlocks (the trainer's teardown destroys
 * the comms of all replicas from one thread). So each rank only drains its comm stream and
 * drops its reference; the last one finalizes every live communicator of the group inside
 * one ncclGroupStart/End (NCCL's own single-process example) and then destroys them. Aborted
 * communicators are only aborted (once). */
static void nccl_group_teardown(nccl_group *g) {
    if (!nccl_abort_all(g)) return;
    int ok = ncclGroupStart() == ncclSuccess;
    for (int i = 0; ok && i < g->base.n; i++) {
        if (g->dead[i]) continue;
        cudaSetDevice(g->dev[i]);
        if (NCCL_CHECK(ncclCommFinalize(g->comm[i]))) ok = 0;
    }
    if (NCCL_CHECK(ncclGroupEnd())) ok = 0;
    for (int i = 0; i < g->base.n; i++) {
        if (g->dead[i]) continue;
        cudaSetDevice(g->dev[i]);
        if (ok) ncclCommDestroy(g->comm[i]);
        else ncclCommAbort(g->comm[i]); /* finalize failed: do not wait for peers */
        g->dead[i] = 1;
    }
    if (!ok) camo_warn("nccl comm: finalize failed (%s); communicators aborted",
                       camo_last_error());
}

static void nccl_group_free(nccl_group *g) {
    comm_group_fini(&g->base);
    pthread_mutex_destroy(&g->mu);
    free(g->issued);
    free(g->comm);
    free(g->dead);
    free(g->dev);
    free(g);
}

static void nccl_destroy(camo_comm *c) {
    if (!c) return;
    nccl_rank *r = NR(c);
    nccl_group *g = NG(c);
    cudaSetDevice(r->base.device);
    /* drain the comm stream with the polling wait (timeout, abort), never a blocking sync: a
     * collective a peer never matched would hang here. The compute stream may already be
     * gone (the trainer frees the backends first), so only the comm stream is touched. */
    if (comm_aborted(c)) nccl_abort_own(c);
    else if (!r->own_aborted && r->side && nccl_poll(c)) camo_warn("%s", camo_last_error());
    if (r->ev_ready) cudaEventDestroy(r->ev_ready);
    if (r->ev_done) cudaEventDestroy(r->ev_done);
    if (r->side) cudaStreamDestroy(r->side);
    if (comm_group_release(&g->base)) {
        nccl_group_teardown(g);
        nccl_group_free(g);
    }
    free(r);
    free(c);
}

/* ---- construction ---- */

static int nccl_rank_init(camo_comm *c) {
    nccl_rank *r = NR(c);
    if (CUDA_CHECK(cudaSetDevice(r->base.device)) ||
        CUDA_CHECK(cudaStreamCreateWithFlags(&r->side, cudaStreamNonBlocking)) ||
        CUDA_CHECK(cudaEventCreateWithFlags(&r->ev_ready, cudaEventDisableTiming)) ||
        CUDA_CHECK(cudaEventCreateWithFlags(&r->ev_done, cudaEventDisableTiming)))
        return -1;
    c->all_reduce_sum = nccl_all_reduce_sum;
    c->broadcast = nccl_broadcast;
    c->reduce_to_root = nccl_reduce_to_root;
    c->all_gather = nccl_all_gather;
    c->barrier = nccl_barrier;
    c->wait = nccl_wait;
    c->destroy = nccl_destroy;
    return 0;
}

/* The NCCL settings the poll/abort path above depends on. NCCL reads both in the
 * initialisation of each communicator (init.cc, initTransportsRank; the launch mode is then
 * process-wide), so they are set here, before every ncclCommInitAll, from the one thread
 * that creates the comms, before any replica thread runs.
 *  - NCCL_RUNTIME_CONNECT=0: NCCL >= 2.22 connects peers lazily inside the first collective
 *    of each kind, where a rank's thread blocks until its peers arrive and NCCL allocates and
 *    maps memory while other ranks' kernels may already run (DESIGN.md hazards). Connect
 *    everything in ncclCommInitAll instead, unless the user chose otherwise.
 *  - NCCL_LAUNCH_MODE=PARALLEL, always: in GROUP mode the ranks of one process launch their
 *    kernels through a host spin barrier (ncclCommIntraBarrierOut in group.cc, which never
 *    looks at the abort flag), so a stalled replica would hang its peers' threads inside
 *    ncclAllReduce, where wait()'s polling, parallel.timeout_s and abort() cannot reach
 *    them. A user's other value is overridden with one warning. */
static void nccl_env(void) {
    if (!getenv("NCCL_RUNTIME_CONNECT")) setenv("NCCL_RUNTIME_CONNECT", "0", 0);
    const char *mode = getenv("NCCL_LAUNCH_MODE");
    if (mode && strcasecmp(mode, "PARALLEL"))
        camo_warn("NCCL_LAUNCH_MODE=%s overridden with PARALLEL: in GROUP mode a stalled "
                  "replica hangs the others inside NCCL, out of reach of parallel.timeout_s",
                  mode);
    setenv("NCCL_LAUNCH_MODE", "PARALLEL", 1);
}

static nccl_group *nccl_group_new(int n, const int *devices, double timeout_s) {
    nccl_group *g = (nccl_group *)camo_calloc(1, sizeof *g);
    comm_group_init(&g->base, n, timeout_s);
    pthread_mutex_init(&g->mu, NULL);
    g->issued = (long *)camo_calloc(n, sizeof(long));
    g->comm = (ncclComm_t *)camo_calloc(n, sizeof(ncclComm_t));
    g->dead = (int *)camo_calloc(n, sizeof(int));
    g->dev = (int *)camo_calloc(n, sizeof(int));
    for (int i = 0; i < n; i++) g->dev[i] = devices[i];
    return g;
}

/* The comms of g's ranks once their communicators exist. 0, or -1 (all torn down). */
static int nccl_make_ranks(nccl_group *g, int n, const int *devices, void *const *streams,
                           camo_comm **comms) {
    for (int i = 0; i < n; i++) {
        nccl_rank *r = (nccl_rank *)camo_calloc(1, sizeof *r);
        comms[i] = comm_new("nccl", i, &g->base, &r->base, devices[i],
                            streams ? streams[i] : NULL);
        if (nccl_rank_init(comms[i])) {
            char msg[512];
            snprintf(msg, sizeof msg, "%s", camo_last_error());
            /* destroy aborts the communicators instead of flushing */
            camo_barrier_abort(g->base.bar, msg);
            g->base.refs = i + 1; /* the last of these destroys aborts the rest, frees g */
            for (int j = 0; j <= i; j++) nccl_destroy(comms[j]);
            CAMO_ERR("nccl comm: %s", msg);
            return -1;
        }
    }
    return 0;
}

extern "C" int camo_comm_nccl_create(int n, const int *devices, void *const *streams,
                                     double timeout_s, camo_comm **comms) {
    if (comm_check_devices(n, devices, 1)) return -1;
    nccl_env();
    nccl_group *g = nccl_group_new(n, devices, timeout_s);
    if (NCCL_CHECK(ncclCommInitAll(g->comm, n, devices))) {
        nccl_group_free(g);
        return -1;
    }
    return nccl_make_ranks(g, n, devices, streams, comms);
}

/* ---- over processes ---- */

extern "C" int camo_comm_nccl_unique_id(void *nccl_id) {
    static_assert(sizeof(ncclUniqueId) == CAMO_NCCL_ID_BYTES, "NCCL's unique id size");
    ncclUniqueId id;
    if (NCCL_CHECK(ncclGetUniqueId(&id))) return -1;
    memcpy(nccl_id, &id, sizeof id);
    return 0;
}

/* ncclCommInitRank of this process's ranks, inside one group (NCCL's pattern for several
 * GPUs per process), on a thread of its own: it blocks until every rank of every process
 * has joined, and the caller gives up after the timeout instead (the run then ends with
 * MPI_Abort, which also ends the thread left inside NCCL). */
typedef struct init_job {
    nccl_group *g;
    int n, world, base;
    ncclUniqueId id;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done, rc, abandoned;
    char err[512];
} init_job;

static void init_job_free(init_job *j) {
    pthread_mutex_destroy(&j->mu);
    pthread_cond_destroy(&j->cv);
    free(j);
}

static void *init_ranks(void *arg) {
    init_job *j = (init_job *)arg;
    int rc = NCCL_CHECK(ncclGroupStart());
    for (int i = 0; !rc && i < j->n; i++)
        rc = CUDA_CHECK(cudaSetDevice(j->g->dev[i])) ||
             NCCL_CHECK(ncclCommInitRank(&j->g->comm[i], j->world, j->id, j->base + i));
    if (NCCL_CHECK(ncclGroupEnd())) rc = -1;
    pthread_mutex_lock(&j->mu);
    j->done = 1;
    j->rc = rc ? -1 : 0;
    if (rc) snprintf(j->err, sizeof j->err, "%s", camo_last_error());
    int abandoned = j->abandoned;
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
    if (abandoned) init_job_free(j);
    return NULL;
}

/* Runs init_ranks and waits for it at most timeout_s (<= 0: no limit). 0, or -1 + error. */
static int init_ranks_timed(init_job *j, double timeout_s) {
    pthread_t t;
    if (pthread_create(&t, NULL, init_ranks, j) != 0) {
        CAMO_ERR("nccl comm: cannot start the thread that joins the communicator");
        init_job_free(j);
        return -1;
    }
    pthread_detach(t);
    double t0 = camo_now();
    pthread_mutex_lock(&j->mu);
    while (!j->done && !(timeout_s > 0 && camo_now() - t0 > timeout_s)) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 100000000L; /* 0.1 s */
        if (ts.tv_nsec >= 1000000000L) { ts.tv_sec++; ts.tv_nsec -= 1000000000L; }
        pthread_cond_timedwait(&j->cv, &j->mu, &ts);
    }
    int done = j->done, rc = j->rc;
    if (!done) j->abandoned = 1; /* the thread frees the job if it ever returns */
    else if (rc) CAMO_ERR("%s", j->err);
    pthread_mutex_unlock(&j->mu);
    if (!done) {
        CAMO_ERR("nccl comm: joining the communicator of %d GPUs timed out after %g s: a "
                 "process did not join (NCCL_SOCKET_IFNAME, firewalls: docs/parallel.md)",
                 j->world, timeout_s);
        return -1;
    }
    init_job_free(j);
    return rc;
}

extern "C" int camo_comm_nccl_create_span(int n, const int *devices, void *const *streams,
                                          double timeout_s, const camo_comm_span *span,
                                          const void *nccl_id, camo_comm **comms) {
    if (!span) return camo_comm_nccl_create(n, devices, streams, timeout_s, comms);
    if (comm_check_devices(n, devices, 1)) {
        camo_mpi_group_free(span->xp);
        return -1;
    }
    nccl_env();
    nccl_group *g = nccl_group_new(n, devices, timeout_s);
    comm_group_span(&g->base, span);
    init_job *j = (init_job *)camo_calloc(1, sizeof *j);
    j->g = g;
    j->n = n;
    j->world = span->world;
    j->base = span->base;
    memcpy(&j->id, nccl_id, sizeof j->id);
    pthread_mutex_init(&j->mu, NULL);
    pthread_cond_init(&j->cv, NULL);
    if (init_ranks_timed(j, timeout_s)) {
        /* a thread may still be inside NCCL with g: g stays (the run ends in MPI_Abort) */
        return -1;
    }
    return nccl_make_ranks(g, n, devices, streams, comms);
}
