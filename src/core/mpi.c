/* mpi.c: core/mpi.h over OpenMPI (built with -DCAMO_HAVE_MPI when the Makefile finds it;
 * src/core/mpi_stub.c otherwise). Every call is made under one lock and never blocks:
 * non-blocking collectives polled with MPI_Test, so SERIALIZED suffices (mpi.h says why),
 * and every wait ends on completion, a local abort, an MPI error or the group's timeout. */
#ifdef CAMO_HAVE_MPI
#include "core/mpi.h"

#include <limits.h>
#include <mpi.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/common.h"

/* A process of this machine as camo_mpi_init exchanged it (camo_mpi_local_peer). */
typedef struct peer {
    int rank, visible_set;
    char visible[1024]; /* CUDA_VISIBLE_DEVICES: 8 MIG UUIDs fit */
} peer;

static struct {
    pthread_mutex_t mu;
    int inited, rank, size, local_size, local_rank;
    peer *peers; /* local_size of them, in local rank order */
    char lib[80];
} M = {PTHREAD_MUTEX_INITIALIZER, 0, 0, 1, 1, 0, NULL, "OpenMPI"};

struct camo_mpi_group {
    MPI_Comm comm;
    double timeout_s;
    int root;           /* camo_mpi_group_create_await: whose task the others wait for */
    char what[160];     /* ... named thus in their timeout error ("" for other groups) */
    int *counts, *displs, *rcounts, *rdispls; /* per process, for the v-collectives */
    void *scratch;                            /* the chunks this process reduces */
    size_t scratch_bytes;
    int pending;        /* a wait gave up on a request: MPI may still use its buffers */
};

static void lock(void) { pthread_mutex_lock(&M.mu); }
static void unlock(void) { pthread_mutex_unlock(&M.mu); }

static const char *mpi_text(int code, char *buf) {
    int len = 0;
    if (MPI_Error_string(code, buf, &len) != MPI_SUCCESS) snprintf(buf, 64, "MPI error %d", code);
    return buf;
}

/* An MPI call failed: the error (and the local group's abort, so its threads stop). */
static int mpi_fail(int code, const char *what, camo_barrier *bar) {
    char text[MPI_MAX_ERROR_STRING + 1], why[MPI_MAX_ERROR_STRING + 160];
    snprintf(why, sizeof why, "process %d of %d: MPI %s failed: %s", M.rank, M.size, what,
             mpi_text(code, text));
    if (bar) camo_barrier_abort(bar, why);
    CAMO_ERR("%s", why);
    return -1;
}

static int find_local_peers(void);

int camo_mpi_init(void) {
    if (M.inited || !camo_mpi_launched()) return 0;
    int provided = 0, rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_SERIALIZED, &provided);
    if (rc != MPI_SUCCESS) return mpi_fail(rc, "MPI_Init_thread", NULL);
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &M.rank);
    MPI_Comm_size(MPI_COMM_WORLD, &M.size);
    M.inited = 1;
    if (provided < MPI_THREAD_SERIALIZED) {
        CAMO_ERR("MPI provides thread level %d, camotrain needs MPI_THREAD_SERIALIZED (%d)",
                 provided, MPI_THREAD_SERIALIZED);
        return -1;
    }
    if (find_local_peers()) return -1;
    char v[MPI_MAX_LIBRARY_VERSION_STRING];
    int len = 0;
    if (MPI_Get_library_version(v, &len) == MPI_SUCCESS) {
        v[strcspn(v, ",\n")] = 0; /* "Open MPI v4.1.4, package: ..." */
        snprintf(M.lib, sizeof M.lib, "%.*s", (int)sizeof M.lib - 1, v);
    }
    return 0;
}

int camo_mpi_rank(void) { return M.rank; }
int camo_mpi_size(void) { return M.size; }
int camo_mpi_local_size(void) { return M.local_size; }
int camo_mpi_local_rank(void) { return M.local_rank; }

int camo_mpi_local_peer(int l, const char **visible) {
    if (!M.peers || l < 0 || l >= M.local_size) { /* no exchange: like this process */
        *visible = getenv("CUDA_VISIBLE_DEVICES");
        return M.rank - M.local_rank + l;
    }
    *visible = M.peers[l].visible_set ? M.peers[l].visible : NULL;
    return M.peers[l].rank;
}
const char *camo_mpi_library(void) { return M.lib; }

void camo_mpi_finalize(void) {
    if (!M.inited) return;
    lock();
    MPI_Finalize();
    M.inited = 0;
    unlock();
}

void camo_mpi_abort(int code) {
    if (!M.inited || M.size < 2) return;
    fflush(stdout);
    fflush(stderr);
    lock(); /* held by a poll for a moment at most: no call here blocks */
    MPI_Abort(MPI_COMM_WORLD, code > 0 ? code : 1);
    unlock();
}

/* Why a wait gave up (-1): an MPI error, the local group aborted, or the timeout (the
 * first and last abort bar with the reason). The request stays pending (a collective
 * cannot be cancelled) with its buffers in use: the group keeps them (camo_mpi_group_free),
 * and the run ends in MPI_Abort. */
static int give_up(camo_mpi_group *g, int rc, const char *what, camo_barrier *bar) {
    g->pending = 1;
    if (rc != MPI_SUCCESS) return mpi_fail(rc, what, bar);
    if (bar && camo_barrier_aborted(bar)) return camo_barrier_fail(bar);
    char why[512];
    if (g->what[0] && M.rank != g->root) { /* camo_mpi_group_create_await's group */
        snprintf(why, sizeof why, "waited %g s for %s without an answer: process %d hangs, or "
                 "takes longer than that (the bound is for hangs; raise it if a slow task is "
                 "expected)", g->timeout_s, g->what, g->root);
    } else {
        snprintf(why, sizeof why, "collective timed out after %g s: process %d of %d waited in "
                 "an MPI %s; another process did not join", g->timeout_s, M.rank, M.size, what);
    }
    if (bar) camo_barrier_abort(bar, why);
    CAMO_ERR("%s", why);
    return -1;
}

/* Polls req until it completes (0), MPI fails, the local group is aborted or the group's
 * timeout passes (-1, give_up). */
static int wait_req(camo_mpi_group *g, MPI_Request *req, const char *what, camo_barrier *bar) {
    double t0 = camo_now();
    long nap_ns = 20000; /* after 100 yields: naps of 20 us doubling to 0.5 ms (CPU replicas
                          * computing beside a waiting comm thread keep their cores) */
    for (long spins = 0;; spins++) {
        int done = 0;
        lock();
        int rc = MPI_Test(req, &done, MPI_STATUS_IGNORE);
        unlock();
        if (rc == MPI_SUCCESS && done) return 0;
        if (rc != MPI_SUCCESS || (bar && camo_barrier_aborted(bar)) ||
            (g->timeout_s > 0 && camo_now() - t0 > g->timeout_s))
            return give_up(g, rc, what, bar);
        if (spins < 100) {
            sched_yield();
        } else {
            nanosleep(&(struct timespec){0, nap_ns}, NULL);
            if (nap_ns < 500000) nap_ns *= 2;
        }
    }
}

/* ---- the processes of this machine ---- */

/* The launcher's word when MPI cannot split (rank and size on this machine, -1: unknown). */
static int env_local(const char *const *names) {
    for (; *names; names++) {
        const char *v = getenv(*names);
        if (v && *v) return atoi(v);
    }
    return -1;
}

/* The processes sharing this machine's memory (MPI_COMM_TYPE_SHARED: one per machine,
 * ordered by rank), and each one's CUDA_VISIBLE_DEVICES. Right after MPI_Init, where every
 * process is anyway, so the bound only catches a broken launch. -1 + error. */
static int find_local_peers(void) {
    MPI_Comm node;
    if (MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node) !=
        MPI_SUCCESS) {
        static const char *const rank[] = {"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID",
                                           "MPI_LOCALRANKID", NULL};
        static const char *const size[] = {"OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS",
                                           NULL};
        int r = env_local(rank), n = env_local(size);
        if (r >= 0 && n > r) M.local_rank = r, M.local_size = n;
        return 0; /* peers unknown: camo_mpi_local_peer answers for this process */
    }
    MPI_Comm_size(node, &M.local_size);
    MPI_Comm_rank(node, &M.local_rank);
    M.peers = camo_calloc((size_t)M.local_size, sizeof *M.peers);
    peer *me = &M.peers[M.local_rank];
    const char *vis = getenv("CUDA_VISIBLE_DEVICES");
    me->rank = M.rank;
    me->visible_set = vis != NULL;
    snprintf(me->visible, sizeof me->visible, "%s", vis ? vis : "");
    camo_mpi_group g = {.comm = node, .timeout_s = 60, .what = ""};
    MPI_Request req;
    lock();
    int rc = MPI_Iallgather(MPI_IN_PLACE, 0, MPI_BYTE, M.peers, (int)sizeof *me, MPI_BYTE, node,
                            &req);
    unlock();
    if (rc != MPI_SUCCESS) return mpi_fail(rc, "exchange of CUDA_VISIBLE_DEVICES", NULL);
    if (wait_req(&g, &req, "exchange of CUDA_VISIBLE_DEVICES", NULL)) return -1;
    MPI_Comm_free(&node);
    return 0;
}

/* ---- groups ---- */

camo_mpi_group *camo_mpi_group_create(double timeout_s) {
    if (!M.inited || M.size < 2) return NULL;
    camo_mpi_group *g = camo_calloc(1, sizeof *g);
    g->timeout_s = timeout_s;
    MPI_Request req;
    lock();
    int rc = MPI_Comm_idup(MPI_COMM_WORLD, &g->comm, &req);
    unlock();
    if (rc != MPI_SUCCESS || wait_req(g, &req, "communicator set-up", NULL)) {
        if (rc != MPI_SUCCESS) mpi_fail(rc, "MPI_Comm_idup", NULL);
        free(g);
        return NULL;
    }
    MPI_Comm_set_errhandler(g->comm, MPI_ERRORS_RETURN);
    int P = M.size;
    g->counts = camo_calloc((size_t)P * 4, sizeof(int));
    g->displs = g->counts + P;
    g->rcounts = g->counts + 2 * P;
    g->rdispls = g->counts + 3 * P;
    return g;
}

void camo_mpi_group_free(camo_mpi_group *g) {
    if (!g || g->pending) return; /* left to MPI_Abort or MPI_Finalize: its buffers too */
    lock();
    MPI_Comm_free(&g->comm);
    unlock();
    free(g->counts);
    free(g->scratch);
    free(g);
}

double camo_mpi_group_timeout(const camo_mpi_group *g) { return g ? g->timeout_s : 0; }

camo_mpi_group *camo_mpi_group_create_await(double timeout_s, int root, double wait_s,
                                            const char *what) {
    camo_mpi_group *g = camo_mpi_group_create(timeout_s);
    if (!g) return NULL;
    g->root = root;
    snprintf(g->what, sizeof g->what, "%s", what);
    if (M.rank != root) g->timeout_s = wait_s;
    return g;
}

/* ---- sums in process order ---- */

static void add_floats(void *acc, const void *x, size_t n) {
    float *a = acc;
    const float *b = x;
    for (size_t i = 0; i < n; i++) a[i] += b[i];
}

static void add_doubles(void *acc, const void *x, size_t n) {
    double *a = acc;
    const double *b = x;
    for (size_t i = 0; i < n; i++) a[i] += b[i];
}

typedef struct elem_type {
    MPI_Datatype t;
    size_t size;
    void (*add)(void *acc, const void *x, size_t n);
} elem_type;

/* One piece of m elements (m fits an int): every process gets chunk `me` of every other
 * (MPI_Ialltoallv), sums it in process order, and the chunks are gathered back in place. */
static int sum_piece(camo_mpi_group *g, char *data, int m, const elem_type *e,
                     camo_barrier *bar) {
    int P = M.size, me = M.rank;
    for (int c = 0; c < P; c++) {
        g->displs[c] = (int)((long long)m * c / P);
        g->counts[c] = (int)((long long)m * (c + 1) / P) - g->displs[c];
    }
    int mine = g->counts[me];
    for (int q = 0; q < P; q++) {
        g->rcounts[q] = mine;
        g->rdispls[q] = q * mine;
    }
    size_t need = (size_t)P * (size_t)mine * e->size + 1;
    if (need > g->scratch_bytes) {
        free(g->scratch);
        g->scratch = camo_malloc(need);
        g->scratch_bytes = need;
    }
    MPI_Request req;
    lock();
    int rc = MPI_Ialltoallv(data, g->counts, g->displs, e->t, g->scratch, g->rcounts,
                            g->rdispls, e->t, g->comm, &req);
    unlock();
    if (rc != MPI_SUCCESS) return mpi_fail(rc, "all-reduce (MPI_Ialltoallv)", bar);
    if (wait_req(g, &req, "all-reduce", bar)) return -1;
    char *acc = g->scratch; /* process 0's part, then + 1, + 2 ... */
    for (int q = 1; q < P; q++)
        e->add(acc, acc + (size_t)q * (size_t)mine * e->size, (size_t)mine);
    memcpy(data + (size_t)g->displs[me] * e->size, acc, (size_t)mine * e->size);
    lock();
    rc = MPI_Iallgatherv(MPI_IN_PLACE, 0, e->t, data, g->counts, g->displs, e->t, g->comm, &req);
    unlock();
    if (rc != MPI_SUCCESS) return mpi_fail(rc, "all-reduce (MPI_Iallgatherv)", bar);
    return wait_req(g, &req, "all-reduce", bar);
}

#define PIECE (1 << 26) /* elements per round: int counts, bounded scratch */

static int sum(camo_mpi_group *g, void *data, size_t n, const elem_type *e, camo_barrier *bar) {
    if (!g || n == 0) return 0;
    for (size_t off = 0; off < n; off += PIECE) {
        size_t m = n - off < PIECE ? n - off : PIECE;
        if (sum_piece(g, (char *)data + off * e->size, (int)m, e, bar)) return -1;
    }
    return 0;
}

int camo_mpi_sum_floats(camo_mpi_group *g, float *data, size_t n, camo_barrier *bar) {
    elem_type e = {MPI_FLOAT, sizeof(float), add_floats};
    return sum(g, data, n, &e, bar);
}

int camo_mpi_sum_doubles(camo_mpi_group *g, double *data, size_t n, camo_barrier *bar) {
    elem_type e = {MPI_DOUBLE, sizeof(double), add_doubles};
    return sum(g, data, n, &e, bar);
}

/* ---- the others ---- */

int camo_mpi_bcast(camo_mpi_group *g, void *data, size_t n, int root, camo_barrier *bar) {
    if (!g) return 0;
    for (size_t off = 0; off < n; off += 1u << 30) {
        size_t m = n - off < (1u << 30) ? n - off : (1u << 30);
        MPI_Request req;
        lock();
        int rc = MPI_Ibcast((char *)data + off, (int)m, MPI_BYTE, root, g->comm, &req);
        unlock();
        if (rc != MPI_SUCCESS) return mpi_fail(rc, "broadcast (MPI_Ibcast)", bar);
        if (wait_req(g, &req, "broadcast", bar)) return -1;
    }
    return 0;
}

int camo_mpi_all_gather(camo_mpi_group *g, void *out, size_t n, camo_barrier *bar) {
    if (!g || n == 0) return 0;
    if (n > INT_MAX) {
        CAMO_ERR("MPI all-gather of %zu bytes per process: at most %d", n, INT_MAX);
        if (bar) camo_barrier_abort(bar, camo_last_error());
        return -1;
    }
    MPI_Request req;
    lock();
    int rc = MPI_Iallgather(MPI_IN_PLACE, 0, MPI_BYTE, out, (int)n, MPI_BYTE, g->comm, &req);
    unlock();
    if (rc != MPI_SUCCESS) return mpi_fail(rc, "all-gather (MPI_Iallgather)", bar);
    return wait_req(g, &req, "all-gather", bar);
}

int camo_mpi_barrier(camo_mpi_group *g, camo_barrier *bar) {
    if (!g) return 0;
    MPI_Request req;
    lock();
    int rc = MPI_Ibarrier(g->comm, &req);
    unlock();
    if (rc != MPI_SUCCESS) return mpi_fail(rc, "barrier (MPI_Ibarrier)", bar);
    return wait_req(g, &req, "barrier", bar);
}

int camo_mpi_max_int(camo_mpi_group *g, int *v, camo_barrier *bar) {
    if (!g) return 0;
    MPI_Request req;
    lock();
    int rc = MPI_Iallreduce(MPI_IN_PLACE, v, 1, MPI_INT, MPI_MAX, g->comm, &req);
    unlock();
    if (rc != MPI_SUCCESS) return mpi_fail(rc, "decision exchange (MPI_Iallreduce)", bar);
    return wait_req(g, &req, "decision exchange", bar);
}

#else
typedef int camo_mpi_c_is_empty_without_mpi; /* src/core/mpi_stub.c stands in */
#endif
