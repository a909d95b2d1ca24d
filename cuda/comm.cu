/* comm.cu: the two GPU comm backends of comm.h, sharing one host-side group (barrier with
 * timeout and abort, host double all-reduce in fixed rank order).
 *  nccl  - one communicator per replica from ncclCommInitAll (distinct GPUs, created from
 *          one thread before any collective). Collectives run on a comm stream that waits
 *          for the replica's compute stream through an event; wait() polls the completion
 *          event and ncclCommGetAsyncError with a timeout. On an error, a timeout or an
 *          abort() anywhere, every rank aborts ITS OWN communicator (NCCL handles are used by
 *          their owning thread only) and every op returns -1: no hang.
 *  local - several replicas on one GPU (NCCL refuses two ranks per GPU; also any mix such as
 *          0,0,1,1): every rank copies its buffer into its slot of a staging buffer on rank
 *          0's GPU, rank 0 sums the slots in rank order, every rank copies the sum back;
 *          cross-stream order through events, host order through the barrier. */
#include "cuda_common.cuh"

extern "C" {
#include "camo/comm.h"
}

#include <errno.h>
#include <stdlib.h>
#include <pthread.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define HOST_SLOT 4096  /* doubles per rank for all_reduce_host; larger arrays go in chunks */
#define LOCAL_MAX 64    /* ranks of a local group */

typedef struct comm_group {
    int n, device;                 /* device: local groups only */
    double timeout_s;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int arrived, refs;
    unsigned gen;
    unsigned *arrived_gen;         /* per rank: gen + 1 of its last barrier arrival */
    long *issued;                  /* nccl: collectives each rank has issued */
    int aborted;
    char reason[256];
    double *slots;                 /* (n, HOST_SLOT) */
    ncclComm_t *nccl;              /* nccl: comm of each rank */
    int *nccl_dead;                /* nccl: rank's communicator was aborted (owner sets it) */
    int *nccl_dev;                 /* nccl: device of each rank */
    /* local */
    const float *ptrs[LOCAL_MAX];  /* buffer each rank published */
    int rank_device[LOCAL_MAX];
    cudaEvent_t ev_ready[LOCAL_MAX], ev_copied[LOCAL_MAX], ev_sum;
    float *shared;                 /* staging (ranks, n) on `device` = rank 0's GPU */
    size_t shared_cap;
} comm_group;

typedef struct comm_rank {
    comm_group *g;
    int device;
    cudaStream_t compute, side;    /* side: the nccl comm stream */
    cudaEvent_t ev_ready, ev_done; /* nccl */
    int own_aborted;               /* nccl: this rank's communicator was aborted */
} comm_rank;

static comm_rank *R(camo_comm *c) { return (comm_rank *)c->ctx; }

/* ---- host group: barrier, abort ---- */

static void group_abort_locked(comm_group *g, const char *reason) {
    if (!g->aborted) { /* the first reason is kept */
        size_t l = strlen(reason);
        if (l >= sizeof g->reason) l = sizeof g->reason - 1;
        memcpy(g->reason, reason, l);
        g->reason[l] = 0;
        g->aborted = 1;
    }
    pthread_cond_broadcast(&g->cv);
}

static void group_abort(comm_group *g, const char *reason) {
    pthread_mutex_lock(&g->mu);
    group_abort_locked(g, reason);
    pthread_mutex_unlock(&g->mu);
}

static int group_aborted(comm_group *g) {
    pthread_mutex_lock(&g->mu);
    int a = g->aborted;
    pthread_mutex_unlock(&g->mu);
    return a;
}

static int fail_aborted(comm_group *g) {
    pthread_mutex_lock(&g->mu);
    CAMO_ERR("comm aborted: %s", g->reason);
    pthread_mutex_unlock(&g->mu);
    return -1;
}

/* ": replica 1, 3 did not join (replica 0 waited)" for the ranks r with late(g, r, rank), or ""
 * when every rank joined (a peer joined but its GPU never finished). Under g->mu. */
static void name_missing(comm_group *g, int rank, int (*late)(comm_group *, int, int),
                         char *buf, size_t size) {
    size_t len = 0;
    buf[0] = 0;
    for (int r = 0; r < g->n && len + 16 < size; r++)
        if (late(g, r, rank))
            len += (size_t)snprintf(buf + len, size - len, "%s%d", len ? ", " : ": replica ", r);
    if (len) snprintf(buf + len, size - len, " did not join (replica %d waited)", rank);
}

/* rank r has not arrived at the barrier `rank` waits at */
static int barrier_late(comm_group *g, int r, int rank) {
    return g->arrived_gen[r] != g->arrived_gen[rank];
}

/* Host barrier of the group's ranks; `rank`: the caller's. Times out after timeout_s
 * (aborting the group with the ranks that did not come), wakes on abort. */
static int group_barrier(comm_group *g, int rank) {
    pthread_mutex_lock(&g->mu);
    if (g->aborted) {
        pthread_mutex_unlock(&g->mu);
        return fail_aborted(g);
    }
    unsigned gen = g->gen;
    g->arrived_gen[rank] = gen + 1;
    if (++g->arrived == g->n) {
        g->arrived = 0;
        g->gen++;
        pthread_cond_broadcast(&g->cv);
        pthread_mutex_unlock(&g->mu);
        return 0;
    }
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    double t = dl.tv_sec + dl.tv_nsec * 1e-9 + (g->timeout_s > 0 ? g->timeout_s : 0);
    dl.tv_sec = (time_t)t;
    dl.tv_nsec = (long)((t - (double)dl.tv_sec) * 1e9);
    while (gen == g->gen && !g->aborted) {
        if (g->timeout_s <= 0) {
            pthread_cond_wait(&g->cv, &g->mu);
        } else if (pthread_cond_timedwait(&g->cv, &g->mu, &dl) == ETIMEDOUT && gen == g->gen) {
            char missing[160], msg[200];
            name_missing(g, rank, barrier_late, missing, sizeof missing);
            snprintf(msg, sizeof msg, "collective timed out after %g s%s", g->timeout_s, missing);
            group_abort_locked(g, msg);
        }
    }
    int ok = gen != g->gen;
    pthread_mutex_unlock(&g->mu);
    return ok ? 0 : fail_aborted(g);
}

/* data (n) = sum over ranks in rank order, HOST_SLOT doubles at a time */
static int common_all_reduce_host(camo_comm *c, double *data, size_t n) {
    comm_group *g = R(c)->g;
    double *mine = g->slots + (size_t)c->rank * HOST_SLOT;
    for (size_t off = 0; off < n; off += HOST_SLOT) {
        size_t m = n - off < HOST_SLOT ? n - off : HOST_SLOT;
        memcpy(mine, data + off, m * sizeof(double));
        if (group_barrier(g, c->rank)) return -1;
        for (size_t i = 0; i < m; i++) {
            double s = 0;
            for (int r = 0; r < g->n; r++) s += g->slots[(size_t)r * HOST_SLOT + i];
            data[off + i] = s;
        }
        if (group_barrier(g, c->rank)) return -1; /* nobody refills a slot still being read */
    }
    return 0;
}

static void common_abort(camo_comm *c, const char *reason) {
    group_abort(R(c)->g, reason ? reason : "aborted");
}

static int common_aborted(camo_comm *c) { return group_aborted(R(c)->g); }

static comm_group *group_new(int n, double timeout_s) {
    comm_group *g = (comm_group *)camo_calloc(1, sizeof *g);
    g->n = g->refs = n;
    g->timeout_s = timeout_s;
    pthread_mutex_init(&g->mu, NULL);
    pthread_cond_init(&g->cv, NULL);
    g->slots = (double *)camo_calloc((size_t)n * HOST_SLOT, sizeof(double));
    g->arrived_gen = (unsigned *)camo_calloc(n, sizeof(unsigned));
    g->issued = (long *)camo_calloc(n, sizeof(long));
    return g;
}

static void group_free(comm_group *g) {
    pthread_mutex_destroy(&g->mu);
    pthread_cond_destroy(&g->cv);
    free(g->slots);
    free(g->arrived_gen);
    free(g->issued);
    free(g->nccl);
    free(g->nccl_dead);
    free(g->nccl_dev);
    free(g);
}

/* Drops this rank's reference; returns 1 when it was the last one. */
static int group_release(comm_group *g) {
    pthread_mutex_lock(&g->mu);
    int last = --g->refs == 0;
    pthread_mutex_unlock(&g->mu);
    return last;
}

/* ---- nccl ---- */

static ncclComm_t own_comm(camo_comm *c) { return R(c)->g->nccl[c->rank]; }

/* Aborts this rank's communicator once (its kernels stop waiting for peers). */
static void nccl_abort_own(camo_comm *c) {
    comm_rank *r = R(c);
    if (r->own_aborted) return;
    r->own_aborted = 1;
    r->g->nccl_dead[c->rank] = 1;
    cudaSetDevice(r->device);
    ncclCommAbort(own_comm(c));
}

/* A failed call: record why, abort the group and this rank's communicator. */
static int nccl_fail(camo_comm *c) {
    char msg[300];
    snprintf(msg, sizeof msg, "replica %d: %s", c->rank, camo_last_error());
    group_abort(R(c)->g, msg);
    nccl_abort_own(c);
    return fail_aborted(R(c)->g);
}

/* Before a collective: the comm stream waits for what the compute stream queued so far. */
static int nccl_begin(camo_comm *c) {
    comm_rank *r = R(c);
    if (group_aborted(r->g)) {
        nccl_abort_own(c);
        return fail_aborted(r->g);
    }
    if (CUDA_CHECK(cudaSetDevice(r->device)) ||
        CUDA_CHECK(cudaEventRecord(r->ev_ready, r->compute)) ||
        CUDA_CHECK(cudaStreamWaitEvent(r->side, r->ev_ready, 0)))
        return nccl_fail(c);
    pthread_mutex_lock(&r->g->mu); /* for a timeout's message: who did not issue it */
    r->g->issued[c->rank]++;
    pthread_mutex_unlock(&r->g->mu);
    return 0;
}

/* rank r has issued fewer collectives than `rank`, which waits for its last one */
static int issue_late(comm_group *g, int r, int rank) { return g->issued[r] < g->issued[rank]; }

/* The timeout of nccl_poll, naming the ranks that never issued the awaited collective. */
static int nccl_timed_out(camo_comm *c) {
    comm_group *g = R(c)->g;
    char missing[160];
    pthread_mutex_lock(&g->mu);
    name_missing(g, c->rank, issue_late, missing, sizeof missing);
    pthread_mutex_unlock(&g->mu);
    CAMO_ERR("collective timed out after %g s%s", g->timeout_s, missing);
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
    if (NCCL_CHECK(ncclAllReduce(data, data, n, ncclFloat, ncclSum, own_comm(c), R(c)->side)))
        return nccl_fail(c);
    return 0; /* asynchronous: wait() orders the compute stream after it */
}

static int nccl_broadcast(camo_comm *c, float *data, size_t n, int root) {
    if (!n) return 0;
    if (nccl_begin(c)) return -1;
    if (NCCL_CHECK(ncclBroadcast(data, data, n, ncclFloat, root, own_comm(c), R(c)->side)))
        return nccl_fail(c);
    return nccl_join(c);
}

static int nccl_reduce_to_root(camo_comm *c, float *data, size_t n, int root) {
    if (!n) return 0;
    if (nccl_begin(c)) return -1;
    if (NCCL_CHECK(ncclReduce(data, data, n, ncclFloat, ncclSum, root, own_comm(c),
                              R(c)->side)))
        return nccl_fail(c);
    return nccl_join(c);
}

static int nccl_all_gather(camo_comm *c, float *out, const float *in, size_t n) {
    if (!n) return 0;
    if (nccl_begin(c)) return -1;
    if (NCCL_CHECK(ncclAllGather(in, out, n, ncclFloat, own_comm(c), R(c)->side)))
        return nccl_fail(c);
    return nccl_join(c);
}

/* Polls until everything this rank queued on its comm stream has completed, NCCL reports an
 * asynchronous error, another rank aborts the group, or the timeout passes. */
static int nccl_poll(camo_comm *c) {
    comm_rank *r = R(c);
    comm_group *g = r->g;
    if (group_aborted(g)) {
        nccl_abort_own(c);
        return fail_aborted(g);
    }
    if (CUDA_CHECK(cudaSetDevice(r->device)) || CUDA_CHECK(cudaEventRecord(r->ev_done, r->side)))
        return nccl_fail(c);
    double t0 = camo_now();
    for (;;) {
        cudaError_t q = cudaEventQuery(r->ev_done);
        if (q == cudaSuccess) break;
        if (q != cudaErrorNotReady) {
            CUDA_CHECK(q);
            return nccl_fail(c);
        }
        ncclResult_t ae = ncclSuccess;
        if (NCCL_CHECK(ncclCommGetAsyncError(own_comm(c), &ae))) return nccl_fail(c);
        if (ae != ncclSuccess && ae != ncclInProgress) {
            CAMO_ERR("NCCL asynchronous error: %s", ncclGetErrorString(ae));
            return nccl_fail(c);
        }
        if (group_aborted(g)) {
            nccl_abort_own(c);
            return fail_aborted(g);
        }
        if (g->timeout_s > 0 && camo_now() - t0 > g->timeout_s) return nccl_timed_out(c);
        struct timespec ts = {0, 50000}; /* 50 us */
        nanosleep(&ts, NULL);
    }
    return 0;
}

/* nccl_poll, then the compute stream is ordered after the comm stream (the collectives'
 * results are complete, so this wait can never block on a peer). */
static int nccl_wait(camo_comm *c) {
    comm_rank *r = R(c);
    if (nccl_poll(c)) return -1;
    if (CUDA_CHECK(cudaStreamWaitEvent(r->compute, r->ev_done, 0))) return nccl_fail(c);
    return 0;
}

static int nccl_barrier(camo_comm *c) {
    if (nccl_wait(c)) return -1;
    return group_barrier(R(c)->g, c->rank);
}

/* ncclCommFinalize/ncclCommDestroy synchronise with the peers of the communicator, so one
 * thread finalizing its communicators one by one deadlocks (the trainer's teardown destroys
 * the comms of all replicas from one thread). So each rank only drains its comm stream and
 * drops its reference; the last one finalizes every live communicator of the group inside
 * one ncclGroupStart/End (NCCL's own single-process example) and then destroys them. Aborted
 * communicators are only aborted (once). */
static void nccl_group_teardown(comm_group *g) {
    int aborted = g->aborted, live = 0;
    for (int i = 0; i < g->n; i++) {
        if (!g->nccl[i] || g->nccl_dead[i]) continue;
        if (aborted) {
            cudaSetDevice(g->nccl_dev[i]);
            ncclCommAbort(g->nccl[i]);
            g->nccl_dead[i] = 1;
        } else {
            live++;
        }
    }
    if (!live) return;
    int ok = ncclGroupStart() == ncclSuccess;
    for (int i = 0; ok && i < g->n; i++) {
        if (g->nccl_dead[i]) continue;
        cudaSetDevice(g->nccl_dev[i]);
        if (NCCL_CHECK(ncclCommFinalize(g->nccl[i]))) ok = 0;
    }
    if (NCCL_CHECK(ncclGroupEnd())) ok = 0;
    for (int i = 0; i < g->n; i++) {
        if (g->nccl_dead[i]) continue;
        cudaSetDevice(g->nccl_dev[i]);
        if (ok) ncclCommDestroy(g->nccl[i]);
        else ncclCommAbort(g->nccl[i]); /* finalize failed: do not wait for peers */
        g->nccl_dead[i] = 1;
    }
    if (!ok) camo_warn("nccl comm: finalize failed (%s); communicators aborted",
                       camo_last_error());
}

static void nccl_destroy(camo_comm *c) {
    if (!c) return;
    comm_rank *r = R(c);
    comm_group *g = r->g;
    cudaSetDevice(r->device);
    /* drain the comm stream with the polling wait (timeout, abort), never a blocking sync: a
     * collective a peer never matched would hang here. The compute stream may already be
     * gone (the trainer frees the backends first), so only the comm stream is touched. */
    if (group_aborted(g)) nccl_abort_own(c);
    else if (!r->own_aborted && r->side && nccl_poll(c)) camo_warn("%s", camo_last_error());
    if (r->ev_ready) cudaEventDestroy(r->ev_ready);
    if (r->ev_done) cudaEventDestroy(r->ev_done);
    if (r->side) cudaStreamDestroy(r->side);
    if (group_release(g)) {
        nccl_group_teardown(g);
        group_free(g);
    }
    free(r);
    free(c);
}

/* ---- local ---- */

/* out (n) = sum of the `ranks` slots of `in` (ranks, n) in rank order, the cpu comm's
 * order; out may be slot 0 (each element is read before it is written) */
__global__ static void local_sum_k(size_t n, int ranks, const float *in, float *out) {
    CU_GRID_LOOP(i, n) {
        float s = in[i];
        for (int r = 1; r < ranks; r++) s += in[(size_t)r * n + i];
        out[i] = s;
    }
}

static int local_fail(camo_comm *c) {
    char msg[300];
    snprintf(msg, sizeof msg, "replica %d: %s", c->rank, camo_last_error());
    group_abort(R(c)->g, msg);
    return fail_aborted(R(c)->g);
}

/* Publishes this rank's buffer and marks its current stream position. */
static int local_publish(camo_comm *c, const float *p) {
    comm_rank *r = R(c);
    comm_group *g = r->g;
    if (group_aborted(g)) return fail_aborted(g);
    g->ptrs[c->rank] = p;
    if (CUDA_CHECK(cudaSetDevice(r->device)) ||
        CUDA_CHECK(cudaEventRecord(g->ev_ready[c->rank], r->compute)))
        return local_fail(c);
    return group_barrier(g, c->rank);
}

/* Rank 0: the staging buffer (ranks, n) on its GPU holds at least n floats a rank. Grows
 * during warm-up only: it waits on the host for every earlier copy out of it first. */
static int local_grow(camo_comm *c, size_t n) {
    comm_group *g = R(c)->g;
    size_t need = n * g->n;
    for (int j = 0; j < g->n; j++)
        if (CUDA_CHECK(cudaEventSynchronize(g->ev_copied[j]))) return local_fail(c);
    if (g->shared && CUDA_CHECK(cudaFree(g->shared))) return local_fail(c);
    g->shared = NULL;
    g->shared_cap = 0;
    if (CUDA_CHECK(cudaMalloc(&g->shared, need * sizeof(float)))) return local_fail(c);
    g->shared_cap = need;
    return 0;
}

/* All-reduce (copy_back on every rank) or reduce to root (copy_back on root only):
 * every rank copies its data into its slot of rank 0's staging buffer, rank 0 sums the
 * slots into slot 0, every rank copies slot 0 back. Works for replicas on one GPU or on
 * several (peer copies); three host barriers order the steps, events order the streams. */
static int local_reduce(camo_comm *c, float *data, size_t n, int copy_back) {
    comm_rank *r = R(c);
    comm_group *g = r->g;
    if (!n || g->n == 1) return group_aborted(g) ? fail_aborted(g) : 0;
    if (group_aborted(g)) return fail_aborted(g);
    if (CUDA_CHECK(cudaSetDevice(r->device))) return local_fail(c);
    /* every rank reads the capacity before the barrier; only rank 0 changes it, after */
    int grow = n * g->n > g->shared_cap;
    /* A: every rank finished the previous collective, its ev_copied is recorded */
    if (group_barrier(g, c->rank)) return -1;
    if (c->rank == 0 && grow && local_grow(c, n)) return -1;
    /* Every rank overwrites part of the staging buffer below, and with another n its slot
     * overlaps the last collective's slot 0, which slower ranks may still be copying their
     * result out of: each rank's stream waits until everyone copied the last result out. */
    for (int j = 0; j < g->n; j++)
        if (CUDA_CHECK(cudaStreamWaitEvent(r->compute, g->ev_copied[j], 0)))
            return local_fail(c);
    if (grow && group_barrier(g, c->rank)) return -1; /* the new staging buffer exists */
    float *slot = g->shared + (size_t)c->rank * n;
    if (CUDA_CHECK(cudaMemcpyPeerAsync(slot, g->device, data, r->device, n * sizeof(float),
                                       r->compute)) ||
        CUDA_CHECK(cudaEventRecord(g->ev_ready[c->rank], r->compute)))
        return local_fail(c);
    if (group_barrier(g, c->rank)) return -1;
    if (c->rank == 0) {
        for (int j = 0; j < g->n; j++)
            if (CUDA_CHECK(cudaStreamWaitEvent(r->compute, g->ev_ready[j], 0)))
                return local_fail(c);
        local_sum_k<<<cu_blocks(n), CU_THREADS, 0, r->compute>>>(n, g->n, g->shared, g->shared);
        if (CUDA_CHECK(cudaGetLastError()) || CUDA_CHECK(cudaEventRecord(g->ev_sum, r->compute)))
            return local_fail(c);
    }
    if (group_barrier(g, c->rank)) return -1;
    if (CUDA_CHECK(cudaStreamWaitEvent(r->compute, g->ev_sum, 0))) return local_fail(c);
    if (copy_back && CUDA_CHECK(cudaMemcpyPeerAsync(data, r->device, g->shared, g->device,
                                                    n * sizeof(float), r->compute)))
        return local_fail(c);
    if (CUDA_CHECK(cudaEventRecord(g->ev_copied[c->rank], r->compute))) return local_fail(c);
    return 0;
}

static int local_all_reduce_sum(camo_comm *c, float *data, size_t n) {
    return local_reduce(c, data, n, 1);
}

static int local_reduce_to_root(camo_comm *c, float *data, size_t n, int root) {
    return local_reduce(c, data, n, c->rank == root);
}

/* After copies out of other ranks' buffers: each rank's stream waits until everyone copied,
 * so no rank overwrites a buffer another one still reads. */
static int local_wait_copies(camo_comm *c) {
    comm_rank *r = R(c);
    comm_group *g = r->g;
    if (group_barrier(g, c->rank)) return -1;
    for (int j = 0; j < g->n; j++)
        if (CUDA_CHECK(cudaStreamWaitEvent(r->compute, g->ev_copied[j], 0)))
            return local_fail(c);
    return 0;
}

static int local_broadcast(camo_comm *c, float *data, size_t n, int root) {
    comm_rank *r = R(c);
    comm_group *g = r->g;
    if (!n || g->n == 1) return group_aborted(g) ? fail_aborted(g) : 0;
    if (local_publish(c, data)) return -1;
    if (c->rank != root &&
        (CUDA_CHECK(cudaStreamWaitEvent(r->compute, g->ev_ready[root], 0)) ||
         CUDA_CHECK(cudaMemcpyPeerAsync(data, r->device, g->ptrs[root], g->rank_device[root],
                                        n * sizeof(float), r->compute))))
        return local_fail(c);
    if (CUDA_CHECK(cudaEventRecord(g->ev_copied[c->rank], r->compute))) return local_fail(c);
    return local_wait_copies(c);
}

static int local_all_gather(camo_comm *c, float *out, const float *in, size_t n) {
    comm_rank *r = R(c);
    comm_group *g = r->g;
    if (!n) return group_aborted(g) ? fail_aborted(g) : 0;
    if (local_publish(c, in)) return -1;
    for (int j = 0; j < g->n; j++)
        if (CUDA_CHECK(cudaStreamWaitEvent(r->compute, g->ev_ready[j], 0)) ||
            CUDA_CHECK(cudaMemcpyPeerAsync(out + (size_t)j * n, r->device, g->ptrs[j],
                                           g->rank_device[j], n * sizeof(float), r->compute)))
            return local_fail(c);
    if (CUDA_CHECK(cudaEventRecord(g->ev_copied[c->rank], r->compute))) return local_fail(c);
    return local_wait_copies(c);
}

/* Everything is queued on the compute streams in order: nothing to wait for. */
static int local_wait(camo_comm *c) {
    return group_aborted(R(c)->g) ? fail_aborted(R(c)->g) : 0;
}

static int local_barrier(camo_comm *c) { return group_barrier(R(c)->g, c->rank); }

static void local_destroy(camo_comm *c) {
    if (!c) return;
    comm_rank *r = R(c);
    comm_group *g = r->g;
    if (group_release(g)) {
        for (int j = 0; j < g->n; j++) { /* no copy may still use the staging buffer */
            cudaSetDevice(g->rank_device[j]);
            cudaDeviceSynchronize();
        }
        cudaSetDevice(g->device);
        for (int j = 0; j < g->n; j++) {
            if (g->ev_ready[j]) cudaEventDestroy(g->ev_ready[j]);
            if (g->ev_copied[j]) cudaEventDestroy(g->ev_copied[j]);
        }
        if (g->ev_sum) cudaEventDestroy(g->ev_sum);
        if (g->shared) cudaFree(g->shared);
        group_free(g);
    }
    free(r);
    free(c);
}

/* ---- construction ---- */

static camo_comm *comm_new(const char *name, int rank, int n, comm_group *g, int device,
                           void *stream) {
    camo_comm *c = (camo_comm *)camo_calloc(1, sizeof *c);
    comm_rank *r = (comm_rank *)camo_calloc(1, sizeof *r);
    r->g = g;
    r->device = device;
    r->compute = (cudaStream_t)stream;
    c->name = name;
    c->rank = rank;
    c->size = n;
    c->ctx = r;
    c->all_reduce_host = common_all_reduce_host;
    c->abort = common_abort;
    c->aborted = common_aborted;
    return c;
}

static int check_devices(int n, const int *devices, int want_distinct) {
    int count = camo_cuda_device_count();
    if (n < 1) {
        CAMO_ERR("comm: at least one replica needed (got %d)", n);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        if (devices[i] < 0 || devices[i] >= count) {
            CAMO_ERR("comm: GPU %d requested, but %d usable GPU%s found", devices[i], count,
                     count == 1 ? "" : "s");
            return -1;
        }
        for (int j = 0; j < i; j++) {
            if (want_distinct && devices[j] == devices[i]) {
                CAMO_ERR("nccl comm: GPU %d is listed twice; NCCL allows one rank per GPU "
                         "(replicas sharing a GPU use the local comm)", devices[i]);
                return -1;
            }
        }
    }
    return 0;
}

static int nccl_rank_init(camo_comm *c) {
    comm_rank *r = R(c);
    if (CUDA_CHECK(cudaSetDevice(r->device)) ||
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

extern "C" int camo_comm_nccl_create(int n, const int *devices, void *const *streams,
                                     double timeout_s, camo_comm **comms) {
    if (check_devices(n, devices, 1)) return -1;
    nccl_env();
    comm_group *g = group_new(n, timeout_s);
    g->nccl = (ncclComm_t *)camo_calloc(n, sizeof(ncclComm_t));
    g->nccl_dead = (int *)camo_calloc(n, sizeof(int));
    g->nccl_dev = (int *)camo_calloc(n, sizeof(int));
    for (int i = 0; i < n; i++) g->nccl_dev[i] = devices[i];
    if (NCCL_CHECK(ncclCommInitAll(g->nccl, n, devices))) {
        group_free(g);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        comms[i] = comm_new("nccl", i, n, g, devices[i], streams ? streams[i] : NULL);
        if (nccl_rank_init(comms[i])) {
            char msg[512];
            snprintf(msg, sizeof msg, "%s", camo_last_error());
            group_abort(g, msg); /* destroy aborts the communicators instead of flushing */
            g->refs = i + 1; /* the last of these destroys aborts the rest, frees the group */
            for (int j = 0; j <= i; j++) nccl_destroy(comms[j]);
            CAMO_ERR("nccl comm: %s", msg);
            return -1;
        }
    }
    return 0;
}

extern "C" int camo_comm_local_create(int n, const int *devices, void *const *streams,
                                      double timeout_s, camo_comm **comms) {
    if (check_devices(n, devices, 0)) return -1;
    if (n > LOCAL_MAX) {
        CAMO_ERR("local comm: at most %d replicas (got %d)", LOCAL_MAX, n);
        return -1;
    }
    comm_group *g = group_new(n, timeout_s);
    g->device = devices[0];
    int bad = CUDA_CHECK(cudaSetDevice(g->device)) ||
              CUDA_CHECK(cudaEventCreateWithFlags(&g->ev_sum, cudaEventDisableTiming));
    for (int j = 0; j < n && !bad; j++) { /* a rank's events live on its own GPU */
        g->rank_device[j] = devices[j];
        bad = CUDA_CHECK(cudaSetDevice(devices[j])) ||
              CUDA_CHECK(cudaEventCreateWithFlags(&g->ev_ready[j], cudaEventDisableTiming)) ||
              CUDA_CHECK(cudaEventCreateWithFlags(&g->ev_copied[j], cudaEventDisableTiming));
    }
    for (int i = 0; i < n; i++) {
        camo_comm *c = comm_new("local", i, n, g, devices[i], streams ? streams[i] : NULL);
        c->all_reduce_sum = local_all_reduce_sum;
        c->broadcast = local_broadcast;
        c->reduce_to_root = local_reduce_to_root;
        c->all_gather = local_all_gather;
        c->barrier = local_barrier;
        c->wait = local_wait;
        c->destroy = local_destroy;
        comms[i] = c;
    }
    if (bad) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", camo_last_error());
        for (int i = 0; i < n; i++) local_destroy(comms[i]);
        CAMO_ERR("local comm: %s", msg);
        return -1;
    }
    return 0;
}
