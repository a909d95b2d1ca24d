/* comm_group.cuh: what the two GPU comms of comm.h (comm_nccl.cu, comm_local.cu) share: the
 * host side of a group of ranks (the core barrier with its timeout and abort, the host double
 * all-reduce in rank order, the reference count), the base of each rank's state, and the
 * construction and failure paths common to both (comm_group.cu). Each comm's group and rank
 * structs start with these bases. */
#ifndef CAMO_COMM_GROUP_CUH
#define CAMO_COMM_GROUP_CUH

#include "cuda_common.cuh"

extern "C" {
#include "backend/comm.h"
#include "core/barrier.h"
#include "core/mpi.h"
}

typedef struct comm_group {
    int n;              /* ranks in this process */
    int refs;           /* ranks not destroyed yet: the last one frees the group */
    camo_barrier *bar;  /* host barrier: timeout, abort and its reason */
    double *slots;      /* all_reduce_host: (n, COMM_HOST_SLOT) */
    /* over processes (comm.h camo_comm_span): the global rank of local rank 0, the ranks
     * of all processes, and what carries host sums and barriers between them (else 0, n,
     * NULL) */
    int base, world;
    camo_mpi_group *xp;
} comm_group;

typedef struct comm_rank {
    comm_group *g;
    int local;            /* index in this process (c->rank is the global rank) */
    int device;
    cudaStream_t compute; /* the replica's compute stream, which the collectives follow */
} comm_rank;

static inline comm_rank *comm_rank_of(camo_comm *c) { return (comm_rank *)c->ctx; }
static inline comm_group *comm_group_of(camo_comm *c) { return comm_rank_of(c)->g; }
static inline int comm_local(camo_comm *c) { return comm_rank_of(c)->local; }

void comm_group_init(comm_group *g, int n, double timeout_s);
/* The group spans processes (before comm_new); g takes span->xp over. */
void comm_group_span(comm_group *g, const camo_comm_span *span);
void comm_group_fini(comm_group *g);
/* Drops one rank's reference: 1 when it was the last. */
int comm_group_release(comm_group *g);

/* Local rank `rank` of group g over rank state r (the caller's, freed by its destroy): r's
 * base is filled in, and the ops both comms share are set (all_reduce_host, abort,
 * aborted). c->rank and c->size are global (g->base + rank of g->world). */
camo_comm *comm_new(const char *name, int rank, comm_group *g, comm_rank *r, int device,
                    void *stream);

/* The host barrier of a collective over every process: the local ranks meet, local rank 0
 * meets the other processes (MPI), the local ranks meet again. 0, or -1 + error. */
int comm_barrier_all(camo_comm *c);

int comm_aborted(camo_comm *c);
void comm_abort(camo_comm *c, const char *reason);
/* -1 with camo_last_error() = "comm aborted: <reason>" (the group is aborted) */
int comm_fail(camo_comm *c);
/* A call of rank c failed: aborts the group with "replica R: <that call's error>". */
void comm_abort_failed(camo_comm *c);

/* n >= 1 usable GPUs in devices[0..n), each listed once when want_distinct. 0 or -1. */
int comm_check_devices(int n, const int *devices, int want_distinct);

#endif
