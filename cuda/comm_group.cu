/* comm_group.cu: the host side shared by the nccl and local comms (comm_group.cuh): group
 * set-up and reference count, the host double all-reduce summed in rank order (the cpu
 * comm's order, so host sums are bitwise the same on every comm), abort and failure on the
 * core barrier, and the check of the GPUs a group is asked for. Over processes the host
 * sums and barriers go on through core/mpi.h (local rank 0 for its process). */
#include "comm_group.cuh"

#include <string.h>

#define COMM_HOST_SLOT 4096 /* doubles per rank for all_reduce_host; more go in chunks */

void comm_group_init(comm_group *g, int n, double timeout_s) {
    g->n = g->refs = n;
    g->bar = camo_barrier_create(n, timeout_s);
    g->slots = (double *)camo_calloc((size_t)n * COMM_HOST_SLOT, sizeof(double));
    g->base = 0;
    g->world = n;
    g->xp = NULL;
}

void comm_group_span(comm_group *g, const camo_comm_span *span) {
    g->base = span->base;
    g->world = span->world;
    g->xp = span->xp;
}

void comm_group_fini(comm_group *g) {
    camo_mpi_group_free(g->xp);
    camo_barrier_free(g->bar);
    free(g->slots);
}

int comm_group_release(comm_group *g) {
    return __atomic_sub_fetch(&g->refs, 1, __ATOMIC_ACQ_REL) == 0;
}

int comm_aborted(camo_comm *c) { return camo_barrier_aborted(comm_group_of(c)->bar); }

void comm_abort(camo_comm *c, const char *reason) {
    camo_barrier_abort(comm_group_of(c)->bar, reason);
}

int comm_fail(camo_comm *c) { return camo_barrier_fail(comm_group_of(c)->bar); }

void comm_abort_failed(camo_comm *c) {
    char msg[300];
    snprintf(msg, sizeof msg, "replica %d: %s", c->rank, camo_last_error()); /* global */
    comm_abort(c, msg);
}

/* Over processes, once every local rank has its process's sums in data[0..m): local rank
 * 0 sums them over the processes in process order (core/mpi.h) in its slot, the others
 * wait for it (untimed: its MPI wait is timed and aborts the group), and all copy it. */
static int host_across_sum(camo_comm *c, double *data, size_t m) {
    comm_group *g = comm_group_of(c);
    int me = comm_local(c);
    if (camo_barrier_wait(g->bar, me)) return -1; /* every slot read */
    if (me == 0) {
        memcpy(g->slots, data, m * sizeof(double));
        if (camo_mpi_sum_doubles(g->xp, g->slots, m, g->bar) || camo_barrier_wait(g->bar, me))
            return -1;
    } else if (camo_barrier_wait_untimed(g->bar, me)) {
        return -1;
    }
    memcpy(data, g->slots, m * sizeof(double));
    return 0;
}

/* data (n) = sum over ranks in rank order (local ranks, then processes), COMM_HOST_SLOT
 * doubles at a time */
static int comm_all_reduce_host(camo_comm *c, double *data, size_t n) {
    comm_group *g = comm_group_of(c);
    int me = comm_local(c);
    double *mine = g->slots + (size_t)me * COMM_HOST_SLOT;
    for (size_t off = 0; off < n; off += COMM_HOST_SLOT) {
        size_t m = n - off < COMM_HOST_SLOT ? n - off : COMM_HOST_SLOT;
        memcpy(mine, data + off, m * sizeof(double));
        if (camo_barrier_wait(g->bar, me)) return -1;
        for (size_t i = 0; i < m; i++) {
            double s = 0;
            for (int r = 0; r < g->n; r++) s += g->slots[(size_t)r * COMM_HOST_SLOT + i];
            data[off + i] = s;
        }
        if (g->xp && host_across_sum(c, data + off, m)) return -1;
        /* nobody refills a slot still being read */
        if (camo_barrier_wait(g->bar, me)) return -1;
    }
    return 0;
}

int comm_barrier_all(camo_comm *c) {
    comm_group *g = comm_group_of(c);
    int me = comm_local(c);
    if (camo_barrier_wait(g->bar, me)) return -1;
    if (!g->xp) return 0;
    if (me == 0)
        return camo_mpi_barrier(g->xp, g->bar) || camo_barrier_wait(g->bar, me) ? -1 : 0;
    return camo_barrier_wait_untimed(g->bar, me);
}

camo_comm *comm_new(const char *name, int rank, comm_group *g, comm_rank *r, int device,
                    void *stream) {
    camo_comm *c = (camo_comm *)camo_calloc(1, sizeof *c);
    r->g = g;
    r->local = rank;
    r->device = device;
    r->compute = (cudaStream_t)stream;
    c->name = name;
    c->rank = g->base + rank;
    c->size = g->world;
    c->ctx = r;
    c->all_reduce_host = comm_all_reduce_host;
    c->abort = comm_abort;
    c->aborted = comm_aborted;
    return c;
}

int comm_check_devices(int n, const int *devices, int want_distinct) {
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
