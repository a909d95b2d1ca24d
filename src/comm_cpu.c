/* comm_cpu.c: the `cpu` comm: collectives between replica threads of one process through
 * shared memory. Every rank posts its buffer, waits at a barrier, then reduces its own
 * contiguous chunk of the result over all ranks in rank order (0 + 1 + ... + N-1), so the
 * sums are deterministic and identical on every rank, and the work is spread over ranks.
 * Barriers wake on abort and time out after timeout_s, so a lost peer never hangs a run.
 * The `host` comm is the same group with the float (backend memory) collectives refused:
 * the control comm of GPU replicas, which sums host values only. */
#include "camo/comm.h"

#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <time.h>

#include "camo/common.h"

typedef struct cpu_group {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int size, arrived, refs;
    unsigned long generation;
    int aborted;
    char reason[512];
    double timeout_s;
    unsigned long *arrived_gen; /* per rank: generation + 1 of its last arrival */
    void **ptr;               /* each rank's buffer of the collective in progress */
    const void **in;          /* all_gather: each rank's input */
} cpu_group;

typedef struct cpu_rank {
    cpu_group *g;
} cpu_rank;

static cpu_group *group_of(camo_comm *c) { return ((cpu_rank *)c->ctx)->g; }

static void group_abort_locked(cpu_group *g, const char *reason) {
    if (!g->aborted) {
        g->aborted = 1;
        snprintf(g->reason, sizeof g->reason, "%s", reason);
    }
    pthread_cond_broadcast(&g->cv);
}

static void deadline_after(struct timespec *ts, double s) {
    clock_gettime(CLOCK_REALTIME, ts);
    double whole = (double)(time_t)s;
    ts->tv_sec += (time_t)s;
    ts->tv_nsec += (long)((s - whole) * 1e9);
    if (ts->tv_nsec >= 1000000000L) { ts->tv_sec++; ts->tv_nsec -= 1000000000L; }
}

/* The group barrier. publish: also posts this rank's pointers (under the mutex, so every
 * rank sees them after the barrier); only the opening barrier of a collective does, since
 * peers still read them until the closing one. 0, or -1 with an error once aborted or
 * timed out. */
static int group_barrier(camo_comm *c, int publish, void *ptr, const void *in) {
    cpu_group *g = group_of(c);
    pthread_mutex_lock(&g->mu);
    int rc = 0;
    if (g->aborted) rc = -1;
    else {
        if (publish) {
            g->ptr[c->rank] = ptr;
            g->in[c->rank] = in;
        }
        unsigned long gen = g->generation;
        g->arrived_gen[c->rank] = gen + 1;
        if (++g->arrived == g->size) {
            g->arrived = 0;
            g->generation++;
            pthread_cond_broadcast(&g->cv);
        } else {
            struct timespec ts;
            if (g->timeout_s > 0) deadline_after(&ts, g->timeout_s);
            while (gen == g->generation && !g->aborted) {
                int w = g->timeout_s > 0 ? pthread_cond_timedwait(&g->cv, &g->mu, &ts)
                                         : pthread_cond_wait(&g->cv, &g->mu);
                if (w == ETIMEDOUT && gen == g->generation) {
                    char why[256], missing[128] = "";
                    size_t len = 0;
                    for (int r = 0; r < g->size && len + 8 < sizeof missing; r++)
                        if (g->arrived_gen[r] != gen + 1)
                            len += (size_t)snprintf(missing + len, sizeof missing - len, "%s%d",
                                                    len ? ", " : "", r);
                    snprintf(why, sizeof why, "collective timed out after %g s: replica %s did "
                             "not join (replica %d waited)", g->timeout_s, missing, c->rank);
                    group_abort_locked(g, why);
                }
            }
            if (gen == g->generation) rc = -1; /* woken by an abort, not by the last rank */
        }
    }
    if (rc) CAMO_ERR("comm aborted: %s", g->reason);
    pthread_mutex_unlock(&g->mu);
    return rc;
}

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
    if (group_barrier(c, 1, data, NULL)) return -1;
    cpu_group *g = group_of(c);
    size_t lo, hi;
    my_chunk(c, n, &lo, &hi);
    float *acc = (float *)g->ptr[0] + lo;
    for (int r = 1; r < c->size; r++) add_into(acc, (const float *)g->ptr[r] + lo, hi - lo);
    for (int r = 1; r < c->size; r++)
        if (root < 0 || r == root)
            memcpy((float *)g->ptr[r] + lo, acc, (hi - lo) * sizeof(float));
    return group_barrier(c, 0, data, NULL); /* nobody returns while a peer still writes */
}

static int cpu_all_reduce_sum(camo_comm *c, float *data, size_t n) {
    return reduce_floats(c, data, n, -1);
}

static int cpu_reduce_to_root(camo_comm *c, float *data, size_t n, int root) {
    return reduce_floats(c, data, n, root);
}

static int cpu_broadcast(camo_comm *c, float *data, size_t n, int root) {
    if (group_barrier(c, 1, data, NULL)) return -1;
    cpu_group *g = group_of(c);
    if (c->rank != root) memcpy(data, g->ptr[root], n * sizeof(float));
    return group_barrier(c, 0, data, NULL);
}

static int cpu_all_gather(camo_comm *c, float *out, const float *in, size_t n) {
    if (group_barrier(c, 1, out, in)) return -1;
    cpu_group *g = group_of(c);
    for (int r = 0; r < c->size; r++) memcpy(out + (size_t)r * n, g->in[r], n * sizeof(float));
    return group_barrier(c, 0, out, in);
}

static int cpu_all_reduce_host(camo_comm *c, double *data, size_t n) {
    if (group_barrier(c, 1, data, NULL)) return -1;
    cpu_group *g = group_of(c);
    size_t lo, hi;
    my_chunk(c, n, &lo, &hi);
    for (size_t i = lo; i < hi; i++) {
        double s = ((double *)g->ptr[0])[i];
        for (int r = 1; r < c->size; r++) s += ((double *)g->ptr[r])[i];
        for (int r = 0; r < c->size; r++) ((double *)g->ptr[r])[i] = s;
    }
    return group_barrier(c, 0, data, NULL);
}

static int cpu_barrier(camo_comm *c) { return group_barrier(c, 0, NULL, NULL); }

static int cpu_wait(camo_comm *c) {
    if (c->aborted(c)) {
        CAMO_ERR("comm aborted: %s", group_of(c)->reason);
        return -1;
    }
    return 0;
}

static void cpu_abort(camo_comm *c, const char *reason) {
    cpu_group *g = group_of(c);
    pthread_mutex_lock(&g->mu);
    group_abort_locked(g, reason && reason[0] ? reason : "aborted");
    pthread_mutex_unlock(&g->mu);
}

static int cpu_aborted(camo_comm *c) {
    cpu_group *g = group_of(c);
    pthread_mutex_lock(&g->mu);
    int a = g->aborted;
    pthread_mutex_unlock(&g->mu);
    return a;
}

static void cpu_destroy(camo_comm *c) {
    if (!c) return;
    cpu_group *g = group_of(c);
    pthread_mutex_lock(&g->mu);
    int last = --g->refs == 0;
    pthread_mutex_unlock(&g->mu);
    if (last) {
        pthread_mutex_destroy(&g->mu);
        pthread_cond_destroy(&g->cv);
        free(g->ptr);
        free(g->in);
        free(g->arrived_gen);
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
             "(src/devices.c camo_devices_ctl_comms)", c->rank, op);
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
    pthread_mutex_init(&g->mu, NULL);
    pthread_cond_init(&g->cv, NULL);
    g->size = g->refs = n;
    g->timeout_s = timeout_s;
    g->ptr = camo_calloc((size_t)n, sizeof *g->ptr);
    g->in = camo_calloc((size_t)n, sizeof *g->in);
    g->arrived_gen = camo_calloc((size_t)n, sizeof *g->arrived_gen);
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
