/* comm.h: the collective-communication op table (DESIGN.md "Comm behind an op table").
 *
 * One camo_comm per replica thread; all comms of a group are created together (from one
 * thread) before any collective runs. Every rank calls the same collectives in the same
 * order. Buffers are in the replica's backend memory (host for cpu, device for cuda).
 *
 * Backends:
 *   cpu   - shared memory between threads, fixed reduction order (rank 0 + 1 + ... + N-1),
 *           so results are deterministic and identical on every rank
 *           (src/backend/cpu/comm_cpu.c);
 *   host  - the cpu comm for host values only (all_reduce_host, barrier, wait, abort); its
 *           float collectives fail and abort the group. The control comm of GPU replicas
 *           that need no device collective on it: no GPU clique, no GPU memory;
 *   nccl  - one NCCL communicator per replica from ncclCommInitAll (cuda/comm_nccl.cu);
 *   local - several replicas sharing one GPU, reduced on the device (cuda/comm_local.cu).
 * All of them meet, time out and abort through one barrier (src/core/barrier.h).
 *
 * Errors: every op returns 0, or non-zero with camo_last_error() set in the calling thread
 * ("comm aborted by replica 2: ..." or "collective timed out after 60 s"). After abort()
 * on any rank, every pending and later op of every rank of the group returns non-zero
 * promptly: no hang. */
#ifndef CAMO_COMM_H
#define CAMO_COMM_H

#include <stddef.h>

typedef struct camo_comm camo_comm;

struct camo_comm {
    const char *name;   /* "cpu", "host", "nccl", "local" */
    int rank, size;
    void *ctx;          /* backend private state (shared group + this rank's part) */

    /* data[0..n) = sum over ranks of data[0..n), in place, on every rank */
    int (*all_reduce_sum)(camo_comm *c, float *data, size_t n);
    /* data on every rank = data of `root` */
    int (*broadcast)(camo_comm *c, float *data, size_t n, int root);
    /* data on `root` = sum over ranks; other ranks' data is left unspecified */
    int (*reduce_to_root)(camo_comm *c, float *data, size_t n, int root);
    /* out[rank * n .. (rank+1) * n) = in of each rank, on every rank; out holds size * n */
    int (*all_gather)(camo_comm *c, float *out, const float *in, size_t n);
    /* Sum of small HOST double arrays (losses, counts, metric sums), in place. */
    int (*all_reduce_host)(camo_comm *c, double *data, size_t n);
    int (*barrier)(camo_comm *c);
    /* Wait until every collective this rank issued has completed (device backends issue
     * asynchronously on a comm stream; cpu ops are complete on return). */
    int (*wait)(camo_comm *c);
    /* Ends every pending and future collective of the whole group with an error; safe to
     * call from any thread, any number of times; the first reason is kept. */
    void (*abort)(camo_comm *c, const char *reason);
    /* Non-zero once the group was aborted (by any rank or by a timeout). */
    int (*aborted)(camo_comm *c);
    /* Frees this rank's part; the last rank to call it frees the shared state. */
    void (*destroy)(camo_comm *c);
};

/* A group of n CPU comms (comms[0..n)); collectives time out after timeout_s seconds
 * (<= 0: no timeout). Returns 0 or -1 with an error. */
int camo_comm_cpu_create(int n, double timeout_s, camo_comm **comms);

/* A group whose ranks span processes (docs/parallel.md "Several processes"): this process
 * holds the n ranks base .. base + n - 1 of `world` (every process the same n; process p has
 * base p * n), and xp (core/mpi.h) carries what crosses processes. comm->rank and ->size are
 * then the global ones. The group takes xp over (the last rank's destroy frees it). */
struct camo_mpi_group;
typedef struct camo_comm_span {
    struct camo_mpi_group *xp;
    int base, world;
} camo_comm_span;

/* The cpu (and host) comm over processes: each collective first combines the local ranks as
 * above (rank order), then local rank 0 combines the processes' results with xp in process
 * order (core/mpi.h camo_mpi_sum_floats): deterministic, and the same bits on every rank.
 * span NULL: camo_comm_cpu_create. */
int camo_comm_cpu_create_span(int n, double timeout_s, const camo_comm_span *span,
                              camo_comm **comms);

/* The host comm: n ranks between threads; all_reduce_host sums in rank order, like the cpu
 * comm and the host sums of the GPU comms, so results are bitwise the same as theirs. The
 * float collectives fail ("replica R: all_reduce_sum on the host comm ...") and abort the
 * group. 0, or -1 with an error. */
int camo_comm_host_create(int n, double timeout_s, camo_comm **comms);
int camo_comm_host_create_span(int n, double timeout_s, const camo_comm_span *span,
                               camo_comm **comms);

/* NCCL over distinct GPUs devices[0..n) (ncclCommInitAll), and the `local` comm for
 * replicas that share one GPU (devices may repeat). streams[i]: the replica's compute
 * stream (cudaStream_t, from camo_backend_stream) the collectives must follow. Declared in
 * every build; without CUDA they fail with a clear error (src/backend/backend_cuda_stub.c).
 * nccl forces NCCL_LAUNCH_MODE=PARALLEL (a user's GROUP is overridden with a warning: in
 * GROUP mode a stalled replica hangs its peers inside NCCL, past every timeout) and sets
 * NCCL_RUNTIME_CONNECT=0 unless set, before ncclCommInitAll (cuda/comm_nccl.cu nccl_env). */
int camo_comm_nccl_create(int n, const int *devices, void *const *streams, double timeout_s,
                          camo_comm **comms);
int camo_comm_local_create(int n, const int *devices, void *const *streams, double timeout_s,
                           camo_comm **comms);

/* NCCL over processes: this process's n GPUs are global ranks span->base .. of span->world
 * of one communicator, each joined with ncclCommInitRank inside one ncclGroupStart/End;
 * nccl_id (CAMO_NCCL_ID_BYTES) is what camo_comm_nccl_unique_id made on process 0, sent to
 * every process (core/mpi.h camo_mpi_bcast). The host side (all_reduce_host, barrier) crosses
 * processes through span->xp. Without CUDA both fail with a clear error. */
#define CAMO_NCCL_ID_BYTES 128
int camo_comm_nccl_unique_id(void *nccl_id);
int camo_comm_nccl_create_span(int n, const int *devices, void *const *streams,
                               double timeout_s, const camo_comm_span *span,
                               const void *nccl_id, camo_comm **comms);

#endif
