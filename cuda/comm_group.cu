/* comm_group.cu: the host side shared by the nccl and local comms (comm_group.cuh): group
 * set-up and reference count, the host double all-reduce summed in rank order (the cpu
 * comm's order, so host sums are bitwise the same on every comm), abort and failure on the
 * core barrier, and the check of the GPUs a group is asked for. */
#include "comm_group.cuh"

#include <string.h>

#define COMM_HOST_SLOT 4096 /* doubles per rank for all_reduce_host; more go in chunks */

void comm_group_init(comm_group *g, int n, double timeout_s) {
    g->n = g->refs = n;
    g->bar = camo_barrier_create(n, timeout_s);
    g->slots = (double *)camo_calloc((size_t)n * COMM_HOST_SLOT, sizeof(double));
}

void comm_group_fini(comm_group *g) {
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
    snprintf(msg, sizeof msg, "replica %d: %s", c->rank, camo_last_error());
    comm_abort(c, msg);
}

/* data (n) = sum over ranks in rank order, COMM_HOST_SLOT doubles at a time */
static int comm_all_reduce_host(camo_comm *c, double *data, size_t n) {
    comm_group *g = comm_group_of(c);
    double *mine = g->slots + (size_t)c->rank * COMM_HOST_SLOT;
    for (size_t off = 0; off < n; off += COMM_HOST_SLOT) {
        size_t m = n - off < COMM_HOST_SLOT ? n - off : COMM_HOST_SLOT;
        memcpy(mine, data + off, m * sizeof(double));
        if (camo_barrier_wait(g->bar, c->rank)) return -1;
        for (size_t i = 0; i < m; i++) {
            double s = 0;
            for (int r = 0; r < g->n; r++) s += g->slots[(size_t)r * COMM_HOST_SLOT + i];
            data[off + i] = s;
        }
        /* nobody refills a slot still being read */
        if (camo_barrier_wait(g->bar, c->rank)) return -1;
    }
    return 0;
}

camo_comm *comm_new(const char *name, int rank, comm_group *g, comm_rank *r, int device,
                    void *stream) {
    camo_comm *c = (camo_comm *)camo_calloc(1, sizeof *c);
    r->g = g;
    r->device = device;
    r->compute = (cudaStream_t)stream;
    c->name = name;
    c->rank = rank;
    c->size = g->n;
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
