/* comm_cpu.c: the `cpu` comm: collectives between replica threads of one process through
 * shared memory. Every rank posts its buffer, waits at a barrier, then reduces its own
 * contiguous chunk of the result over all ranks in rank order (0 + 1 + ... + N-1), so the
 * sums are deterministic and identical on every rank, and the work is spread over ranks.
 * The barriers (core/barrier.h) wake on abort and time out after timeout_s, so a lost peer
 * never hangs a run.
 * The `host` comm is the same group with the float (backend memory) collectives refused:
 * the control comm of GPU replicas, which sums host values only.
 * Over processes (camo_comm_cpu_create_span): after the local step, local rank 0 combines
 * the processes' results in rank 0's buffer through core/mpi.h (sums in process order)
 * while the other local ranks wait, then every rank takes its part from there. */
#include "backend/comm.h"

#include <string.h>

#include "core/barrier.h"
#include "core/common.h"
#include "core/mpi.h"

typedef struct cpu_group {
    int n;              /* ranks in this process */
    int base, world;    /* global rank of local rank 0, ranks of all processes */
    camo_mpi_group *xp; /* the processes (NULL: this process is the whole group) */
    camo_barrier *bar;  /* timeout, abort and its reason (core/barrier.h) */
    int refs;           /* ranks not destroyed yet: the last frees the group */
    void **ptr;         /* each rank's buffer of the collective in progress */
    const void **in;    /* all_gather: each rank's input */
} cpu_group;

typedef struct cpu_rank {
    cpu_group *g;
    int local;          /* this rank's index in the process: c->rank - g->base */
} cpu_rank;

static cpu_group *group_of(camo_comm *c) { return ((cpu_rank *)c->ctx)->g; }
static int local_of(camo_comm *c) { return ((cpu_rank *)c->ctx)->local; }

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
    return camo_barrier_wait_with(p.g->bar, local_of(c), post, &p);
}

/* The closing barrier: nobody returns while a peer still reads or writes its buffer. */
static int group_close(camo_comm *c) { return camo_barrier_wait(group_of(c)->bar, local_of(c)); }

/* [lo, hi) of this rank's chunk of n elements (among the ranks of this process) */
static void my_chunk(camo_comm *c, size_t n, size_t *lo, size_t *hi) {
    size_t me = (size_t)local_of(c), k = (size_t)group_of(c)->n;
    *lo = n * me / k;
    *hi = n * (me + 1) / k;
}

/* What local rank 0 does across processes, on the posted buffers. */
typedef struct across_op {
    enum { X_FLOATS, X_DOUBLES, X_BCAST, X_GATHER, X_BARRIER } kind;
    void *buf;
    size_t n;           /* elements (sums), bytes (broadcast, gather) */
    int root;           /* broadcast: the root process */
} across_op;

static int run_across(cpu_group *g, const across_op *op) {
    switch (op->kind) {
    case X_FLOATS: return camo_mpi_sum_floats(g->xp, op->buf, op->n, g->bar);
    case X_DOUBLES: return camo_mpi_sum_doubles(g->xp, op->buf, op->n, g->bar);
    case X_BCAST: return camo_mpi_bcast(g->xp, op->buf, op->n, op->root, g->bar);
    case X_GATHER: return camo_mpi_all_gather(g->xp, op->buf, op->n, g->bar);
    default: return camo_mpi_barrier(g->xp, g->bar);
    }
}

/* The process step of a collective: once every local rank has done its local part, local
 * rank 0 runs op across the processes while the others wait for it. Their wait has no
 * timeout of its own: rank 0's MPI wait is timed and aborts the group (with its reason)
 * when it passes or fails. A no-op when the group is this process alone. */
static int across(camo_comm *c, const across_op *op) {
    cpu_group *g = group_of(c);
    int me = local_of(c);
    if (!g->xp) return 0;
    if (op->kind != X_BARRIER && camo_barrier_wait(g->bar, me)) return -1;
    if (me == 0) return run_across(g, op) || camo_barrier_wait(g->bar, me) ? -1 : 0;
    return camo_barrier_wait_untimed(g->bar, me);
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
    for (int r = 1; r < g->n; r++) add_into(acc, (const float *)g->ptr[r] + lo, hi - lo);
    across_op op = {X_FLOATS, g->ptr[0], n, 0};
    if (across(c, &op)) return -1;
    acc = (float *)g->ptr[0] + lo;
    for (int r = 1; r < g->n; r++)
        if (root < 0 || g->base + r == root)
            memcpy((float *)g->ptr[r] + lo, acc, (hi - lo) * sizeof(float));
    return group_close(c);
}

static int cpu_all_reduce_sum(camo_comm *c, float *data, size_t n) {
    return reduce_floats(c, data, n, -1);
}

static int cpu_reduce_to_root(camo_comm *c, float *data, size_t n, int root) {
    return reduce_floats(c, data, n, root);
}

/* Root's data reaches its process's ranks from root's buffer; the other processes receive
 * it in local rank 0's buffer, and their ranks copy it from there. */
static int cpu_broadcast(camo_comm *c, float *data, size_t n, int root) {
    if (group_open(c, data, NULL)) return -1;
    cpu_group *g = group_of(c);
    int lroot = root - g->base, src = lroot >= 0 && lroot < g->n ? lroot : 0;
    across_op op = {X_BCAST, g->ptr[src], n * sizeof(float), root / g->n};
    if (across(c, &op)) return -1;
    if (local_of(c) != src) memcpy(data, g->ptr[src], n * sizeof(float));
    return group_close(c);
}

/* Each rank fills this process's block of its out; local rank 0 gathers the processes'
 * blocks into its out (in place), and the others copy them from there. */
static int cpu_all_gather(camo_comm *c, float *out, const float *in, size_t n) {
    if (group_open(c, out, in)) return -1;
    cpu_group *g = group_of(c);
    for (int r = 0; r < g->n; r++)
        memcpy(out + (size_t)(g->base + r) * n, g->in[r], n * sizeof(float));
    across_op op = {X_GATHER, g->ptr[0], (size_t)g->n * n * sizeof(float), 0};
    if (across(c, &op)) return -1;
    if (g->xp && local_of(c) != 0) memcpy(out, g->ptr[0], (size_t)c->size * n * sizeof(float));
    return group_close(c);
}

/* Each rank sums its chunk in rank order into rank 0's buffer, (the processes' sums are
 * combined there,) then copies it to every buffer. */
static int cpu_all_reduce_host(camo_comm *c, double *data, size_t n) {
    if (group_open(c, data, NULL)) return -1;
    cpu_group *g = group_of(c);
    size_t lo, hi;
    my_chunk(c, n, &lo, &hi);
    double *acc = g->ptr[0];
    for (size_t i = lo; i < hi; i++) {
        double s = acc[i];
        for (int r = 1; r < g->n; r++) s += ((double *)g->ptr[r])[i];
        acc[i] = s;
    }
    across_op op = {X_DOUBLES, g->ptr[0], n, 0};
    if (across(c, &op)) return -1;
    for (int r = 1; r < g->n; r++)
        memcpy((double *)g->ptr[r] + lo, acc + lo, (hi - lo) * sizeof(double));
    return group_close(c);
}

static int cpu_barrier(camo_comm *c) {
    across_op op = {X_BARRIER, NULL, 0, 0};
    return group_close(c) || across(c, &op) ? -1 : 0;
}

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
        camo_mpi_group_free(g->xp);
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
    return camo_comm_cpu_create_span(n, timeout_s, NULL, comms);
}

int camo_comm_cpu_create_span(int n, double timeout_s, const camo_comm_span *span,
                              camo_comm **comms) {
    if (n < 1 || (span && (span->base < 0 || span->base + n > span->world))) {
        if (n < 1) CAMO_ERR("cpu comm: %d ranks (need at least 1)", n);
        else CAMO_ERR("cpu comm: ranks %d..%d outside the %d of the run", span->base,
                      span->base + n - 1, span->world);
        if (span) camo_mpi_group_free(span->xp);
        return -1;
    }
    cpu_group *g = camo_calloc(1, sizeof *g);
    g->n = n;
    g->world = span ? span->world : n;
    g->base = span ? span->base : 0;
    g->xp = span ? span->xp : NULL;
    g->bar = camo_barrier_create(n, timeout_s);
    g->refs = n;
    g->ptr = camo_calloc((size_t)n, sizeof *g->ptr);
    g->in = camo_calloc((size_t)n, sizeof *g->in);
    for (int r = 0; r < n; r++) {
        camo_comm *c = camo_calloc(1, sizeof *c);
        cpu_rank *cr = camo_calloc(1, sizeof *cr);
        cr->g = g;
        cr->local = r;
        c->name = "cpu";
        c->rank = g->base + r;
        c->size = g->world;
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
    return camo_comm_host_create_span(n, timeout_s, NULL, comms);
}

int camo_comm_host_create_span(int n, double timeout_s, const camo_comm_span *span,
                               camo_comm **comms) {
    if (camo_comm_cpu_create_span(n, timeout_s, span, comms)) return -1;
    for (int r = 0; r < n; r++) {
        comms[r]->name = "host";
        comms[r]->all_reduce_sum = host_all_reduce_sum;
        comms[r]->broadcast = host_broadcast;
        comms[r]->reduce_to_root = host_reduce_to_root;
        comms[r]->all_gather = host_all_gather;
    }
    return 0;
}
