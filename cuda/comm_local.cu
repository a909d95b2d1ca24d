/* comm_local.cu: the `local` comm of comm.h: several replicas on one GPU (NCCL refuses two
 * ranks per GPU; also any mix such as 0,0,1,1). Every rank copies its buffer into its slot of
 * a staging buffer on rank 0's GPU, rank 0 sums the slots in rank order, every rank copies
 * the sum back; cross-stream order through events, host order through the group's barrier
 * (comm_group.cu, which also holds the host sums, abort and timeout). */
#include "comm_group.cuh"

#include <string.h>

#define LOCAL_MAX 64 /* ranks of a local group */

typedef struct local_group {
    comm_group base;
    int device;                    /* rank 0's GPU, where the staging buffer lives */
    const float *ptrs[LOCAL_MAX];  /* buffer each rank published */
    int rank_device[LOCAL_MAX];
    cudaEvent_t ev_ready[LOCAL_MAX], ev_copied[LOCAL_MAX], ev_sum;
    float *shared;                 /* staging (ranks, n) on `device` */
    size_t shared_cap;
} local_group;

static local_group *LG(camo_comm *c) { return (local_group *)comm_group_of(c); }

static void local_group_free(local_group *g) {
    comm_group_fini(&g->base);
    free(g);
}

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
    comm_abort_failed(c);
    return comm_fail(c);
}

static int local_barrier(camo_comm *c) {
    return camo_barrier_wait(comm_group_of(c)->bar, c->rank);
}

/* Publishes this rank's buffer and marks its current stream position. */
static int local_publish(camo_comm *c, const float *p) {
    comm_rank *r = comm_rank_of(c);
    local_group *g = LG(c);
    if (comm_aborted(c)) return comm_fail(c);
    g->ptrs[c->rank] = p;
    if (CUDA_CHECK(cudaSetDevice(r->device)) ||
        CUDA_CHECK(cudaEventRecord(g->ev_ready[c->rank], r->compute)))
        return local_fail(c);
    return local_barrier(c);
}

/* Rank 0: the staging buffer (ranks, n) on its GPU holds at least n floats a rank. Grows
 * during warm-up only: it waits on the host for every earlier copy out of it first. */
static int local_grow(camo_comm *c, size_t n) {
    local_group *g = LG(c);
    size_t need = n * g->base.n;
    for (int j = 0; j < g->base.n; j++)
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
    comm_rank *r = comm_rank_of(c);
    local_group *g = LG(c);
    if (!n || g->base.n == 1) return comm_aborted(c) ? comm_fail(c) : 0;
    if (comm_aborted(c)) return comm_fail(c);
    if (CUDA_CHECK(cudaSetDevice(r->device))) return local_fail(c);
    /* every rank reads the capacity before the barrier; only rank 0 changes it, after */
    int grow = n * g->base.n > g->shared_cap;
    /* A: every rank finished the previous collective, its ev_copied is recorded */
    if (local_barrier(c)) return -1;
    if (c->rank == 0 && grow && local_grow(c, n)) return -1;
    /* Every rank overwrites part of the staging buffer below, and with another n its slot
     * overlaps the last collective's slot 0, which slower ranks may still be copying their
     * result out of: each rank's stream waits until everyone copied the last result out. */
    for (int j = 0; j < g->base.n; j++)
        if (CUDA_CHECK(cudaStreamWaitEvent(r->compute, g->ev_copied[j], 0)))
            return local_fail(c);
    if (grow && local_barrier(c)) return -1; /* the new staging buffer exists */
    float *slot = g->shared + (size_t)c->rank * n;
    if (CUDA_CHECK(cudaMemcpyPeerAsync(slot, g->device, data, r->device, n * sizeof(float),
                                       r->compute)) ||
        CUDA_CHECK(cudaEventRecord(g->ev_ready[c->rank], r->compute)))
        return local_fail(c);
    if (local_barrier(c)) return -1;
    if (c->rank == 0) {
        for (int j = 0; j < g->base.n; j++)
            if (CUDA_CHECK(cudaStreamWaitEvent(r->compute, g->ev_ready[j], 0)))
                return local_fail(c);
        local_sum_k<<<cu_blocks(n), CU_THREADS, 0, r->compute>>>(n, g->base.n, g->shared,
                                                                 g->shared);
        if (CUDA_CHECK(cudaGetLastError()) || CUDA_CHECK(cudaEventRecord(g->ev_sum, r->compute)))
            return local_fail(c);
    }
    if (local_barrier(c)) return -1;
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
    comm_rank *r = comm_rank_of(c);
    local_group *g = LG(c);
    if (local_barrier(c)) return -1;
    for (int j = 0; j < g->base.n; j++)
        if (CUDA_CHECK(cudaStreamWaitEvent(r->compute, g->ev_copied[j], 0)))
            return local_fail(c);
    return 0;
}

static int local_broadcast(camo_comm *c, float *data, size_t n, int root) {
    comm_rank *r = comm_rank_of(c);
    local_group *g = LG(c);
    if (!n || g->base.n == 1) return comm_aborted(c) ? comm_fail(c) : 0;
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
    comm_rank *r = comm_rank_of(c);
    local_group *g = LG(c);
    if (!n) return comm_aborted(c) ? comm_fail(c) : 0;
    if (local_publish(c, in)) return -1;
    for (int j = 0; j < g->base.n; j++)
        if (CUDA_CHECK(cudaStreamWaitEvent(r->compute, g->ev_ready[j], 0)) ||
            CUDA_CHECK(cudaMemcpyPeerAsync(out + (size_t)j * n, r->device, g->ptrs[j],
                                           g->rank_device[j], n * sizeof(float), r->compute)))
            return local_fail(c);
    if (CUDA_CHECK(cudaEventRecord(g->ev_copied[c->rank], r->compute))) return local_fail(c);
    return local_wait_copies(c);
}

/* Everything is queued on the compute streams in order: nothing to wait for. */
static int local_wait(camo_comm *c) {
    return comm_aborted(c) ? comm_fail(c) : 0;
}

static void local_destroy(camo_comm *c) {
    if (!c) return;
    comm_rank *r = comm_rank_of(c);
    local_group *g = LG(c);
    if (comm_group_release(&g->base)) {
        for (int j = 0; j < g->base.n; j++) { /* no copy may still use the staging buffer */
            cudaSetDevice(g->rank_device[j]);
            cudaDeviceSynchronize();
        }
        cudaSetDevice(g->device);
        for (int j = 0; j < g->base.n; j++) {
            if (g->ev_ready[j]) cudaEventDestroy(g->ev_ready[j]);
            if (g->ev_copied[j]) cudaEventDestroy(g->ev_copied[j]);
        }
        if (g->ev_sum) cudaEventDestroy(g->ev_sum);
        if (g->shared) cudaFree(g->shared);
        local_group_free(g);
    }
    free(r);
    free(c);
}

/* ---- construction ---- */

/* The group's events, each on its rank's GPU (ev_sum on rank 0's): 0, or -1 with an error. */
static int local_events(local_group *g, int n, const int *devices) {
    if (CUDA_CHECK(cudaSetDevice(g->device)) ||
        CUDA_CHECK(cudaEventCreateWithFlags(&g->ev_sum, cudaEventDisableTiming)))
        return -1;
    for (int j = 0; j < n; j++) {
        g->rank_device[j] = devices[j];
        if (CUDA_CHECK(cudaSetDevice(devices[j])) ||
            CUDA_CHECK(cudaEventCreateWithFlags(&g->ev_ready[j], cudaEventDisableTiming)) ||
            CUDA_CHECK(cudaEventCreateWithFlags(&g->ev_copied[j], cudaEventDisableTiming)))
            return -1;
    }
    return 0;
}

extern "C" int camo_comm_local_create(int n, const int *devices, void *const *streams,
                                      double timeout_s, camo_comm **comms) {
    if (comm_check_devices(n, devices, 0)) return -1;
    if (n > LOCAL_MAX) {
        CAMO_ERR("local comm: at most %d replicas (got %d)", LOCAL_MAX, n);
        return -1;
    }
    local_group *g = (local_group *)camo_calloc(1, sizeof *g);
    comm_group_init(&g->base, n, timeout_s);
    g->device = devices[0];
    int bad = local_events(g, n, devices);
    for (int i = 0; i < n; i++) {
        comm_rank *r = (comm_rank *)camo_calloc(1, sizeof *r);
        camo_comm *c = comm_new("local", i, &g->base, r, devices[i], streams ? streams[i] : NULL);
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
