/* comm_cpu.c: the `cpu` comm: collectives between replica threads of one process through
 * shared memory. Every rank posts its buffer, waits at a barrier, then reduces its own
 * contiguous chunk of the result over all ranks in rank order (0 + 1 + ... + N-1), so the
 * sums are deterministic and identical on every rank, and the work is spread over ranks.
 * The barriers (core/barrier.h) wake on abort and time out after timeout_s, so a lost peer
 * never hangs a run.
 * The `host` comm is the same group with the float (backend memory) collectives refused:
 * the control comm of GPU replicas, which sums host values only. */
#include "backend/comm.h"

#include <string.h>

#include "core/barrier.h"
#include "core/common.h"

typedef struct cpu_group {
    camo_barrier *bar;  /* timeout, abort and its reason (core/barrier.h) */
    int refs;           /* ranks not destroyed yet: the last frees the group */
    void **ptr;         /* each rank's buffer of the collective in progress */
    const void **in;    /* all_gather: each rank's input */
} cpu_group;

typedef struct cpu_rank {
    cpu_group *g;
} cpu_rank;

static cpu_group *group_of(camo_comm *c) { return ((cpu_rank *)c->ctx)->g; }

/* what a rank posts at the opening barrier of a collective */
typedef struct posting {
    cpu_group *g;
    void *ptr;
    const void *in;
} posting;

static void post(void *arg, int rank) {
    posting *p = (posting *)arg;
    p->g->ptr[rank] = p->ptr;
    p->g->in[rank] = p->in;
}

/* The opening barrier of a collective: also posts this rank's pointers (under the
 * barrier's lock, and not once aborted), which peers read until the closing barrier. */
static int group_open(camo_comm *c, void *ptr, const void *in) {
    posting p = {group_of(c), ptr, in};
    return camo_barrier_wait_with(p.g->bar, c->rank, post, &p);
}

/* The closing barrier: nobody returns while a peer still reads or writes its buffer. */
static int group_close(camo_comm *c) { return camo_barrier_wait(group_of(c)->bar, c->rank); }

/* [lo, hi) of this rank's chunk of n elements */
static void my_chunk(const camo_comm *c, size_t n, size_t *lo, size_t *hi) {
    *lo = n * (size_t)c->rank / (size_t)c->size;
    *hi = n * (size_t)(c->rank + 1) / (size_t)c->size;
}

/* dst[0..n) += src[0..n) */
static void add_into(float *restrict dst, const float *restrict src, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] += src[i];
}

/* Sums this rank's chunk over every rank's buffer in rank order, in place in rank 0's
 * buffer ((d0 + d1) + d2 ...: the same bits as an element-by-element loop), then copies it
 * to every buffer (all_reduce) or only to root's (root >= 0). */
static int reduce_floats(camo_comm *c, float *data, size_t n, int root) {
    if (group_open(c, data, NULL)) return -1;
    cpu_group *g = group_of(c);
    size_t lo, hi;
    my_chunk(c, n, &lo, &hi);
    float *acc = (float *)g->ptr[0] + lo;
    for (int r = 1; r < c->size; r++) add_into(acc, (const float *)g->ptr[r] + lo, hi - lo);
    for (int r = 1; r < c->size; r++)
        if (root < 0 || r == root)
            memcpy((float *)g->ptr[r] + lo, acc, (hi - lo) * sizeof(float));
    return group_close(c);
}

static int cpu_all_reduce_sum(camo_comm *c, float *data, size_t n) {
    return reduce_floats(c, data, n, -1);
}

static int cpu_reduce_to_root(camo_comm *c, float *data, size_t n, int root) {
    return reduce_floats(c, data, n, root);
}

static int cpu_broadcast(camo_comm *c, float *data, size_t n, int root) {
    if (group_open(c, data, NULL)) return -1;
    cpu_group *g = group_of(c);
    if (c->rank != root) memcpy(data, g->ptr[root], n * sizeof(float));
    return group_close(c);
}

static int cpu_all_gather(camo_comm *c, float *out, const float *in, size_t n) {
    if (group_open(c, out, in)) return -1;
    cpu_group *g = group_of(c);
    for (int r = 0; r < c->size; r++) memcpy(out + (size_t)r * n, g->in[r], n * sizeof(float));
    return group_close(c);
}

static int cpu_all_reduce_host(camo_comm *c, double *data, size_t n) {
    if (group_open(c, data, NULL)) return -1;
    cpu_group *g = group_of(c);
    size_t lo, hi;
    my_chunk(c, n, &lo, &hi);
    for (size_t i = lo; i < hi; i++) {
        double s = ((double *)g->ptr[0])[i];
        for (int r = 1; r < c->size; r++) s += ((double *)g->ptr[r])[i];
        for (int r = 0; r < c->size; r++) ((double *)g->ptr[r])[i] = s;
    }
    return group_close(c);
}

static int cpu_barrier(camo_comm *c) { return group_close(c); }

static int cpu_wait(camo_comm *c) {
    camo_barrier *b = group_of(c)->bar;
    return camo_barrier_aborted(b) ? camo_barrier_fail(b) : 0;
}

static void cpu_abort(camo_comm *c, const char *reason) {
    camo_barrier_abort(group_of(c)->bar, reason);
}

static int cpu_aborted(camo_comm *c) { return camo_barrier_aborted(group_of(c)->bar); }

static void cpu_destroy(camo_comm *c) {
    if (!c) return;
    cpu_group *g = group_of(c);
    if (__atomic_sub_fetch(&g->refs, 1, __ATOMIC_ACQ_REL) == 0) {
        camo_barrier_free(g->bar);
        free(g->ptr);
        free(g->in);
        free(g);
    }
    free(c->ctx);
    free(c);
}

/* ---- the host comm: the same group, host collectives only ---- */

/* A float collective on a host comm: the caller passed (device) data to a comm made for host
 * values only (camo_devices_ctl_comms decided its replicas would not need one). A bug, not a
 * run-time condition: the whole group is aborted with the reason, so every rank stops at
 * once instead of waiting for the timeout in its next collective. */
static int host_refuse(camo_comm *c, const char *op) {
    char why[256];
    snprintf(why, sizeof why, "replica %d: %s on the host comm, which carries host sums "
             "only (all_reduce_host, barrier): this group was created without a GPU clique "
             "(src/parallel/devices.c camo_devices_ctl_comms)", c->rank, op);
    c->abort(c, why);
    CAMO_ERR("%s", why);
    return -1;
}

static int host_all_reduce_sum(camo_comm *c, float *data, size_t n) {
    (void)data, (void)n;
    return host_refuse(c, "all_reduce_sum");
}

static int host_broadcast(camo_comm *c, float *data, size_t n, int root) {
    (void)data, (void)n, (void)root;
    return host_refuse(c, "broadcast");
}

static int host_reduce_to_root(camo_comm *c, float *data, size_t n, int root) {
    (void)data, (void)n, (void)root;
    return host_refuse(c, "reduce_to_root");
}

static int host_all_gather(camo_comm *c, float *out, const float *in, size_t n) {
    (void)out, (void)in, (void)n;
    return host_refuse(c, "all_gather");
}

/* ---- construction ---- */

int camo_comm_cpu_create(int n, double timeout_s, camo_comm **comms) {
    if (n < 1) {
        CAMO_ERR("cpu comm: %d ranks (need at least 1)", n);
        return -1;
    }
    cpu_group *g = camo_calloc(1, sizeof *g);
    g->bar = camo_barrier_create(n, timeout_s);
    g->refs = n;
    g->ptr = camo_calloc((size_t)n, sizeof *g->ptr);
    g->in = camo_calloc((size_t)n, sizeof *g->in);
    for (int r = 0; r < n; r++) {
        camo_comm *c = camo_calloc(1, sizeof *c);
        cpu_rank *cr = camo_calloc(1, sizeof *cr);
        cr->g = g;
        c->name = "cpu";
        c->rank = r;
        c->size = n;
        c->ctx = cr;
        c->all_reduce_sum = cpu_all_reduce_sum;
        c->broadcast = cpu_broadcast;
        c->reduce_to_root = cpu_reduce_to_root;
        c->all_gather = cpu_all_gather;
        c->all_reduce_host = cpu_all_reduce_host;
        c->barrier = cpu_barrier;
        c->wait = cpu_wait;
        c->abort = cpu_abort;
        c->aborted = cpu_aborted;
        c->destroy = cpu_destroy;
        comms[r] = c;
    }
    return 0;
}

int camo_comm_host_create(int n, double timeout_s, camo_comm **comms) {
    if (camo_comm_cpu_create(n, timeout_s, comms)) return -1;
    for (int r = 0; r < n; r++) {
        comms[r]->name = "host";
        comms[r]->all_reduce_sum = host_all_reduce_sum;
        comms[r]->broadcast = host_broadcast;
        comms[r]->reduce_to_root = host_reduce_to_root;
        comms[r]->all_gather = host_all_gather;
    }
    return 0;
}
