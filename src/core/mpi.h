/* mpi.h: the processes of one training run (docs/parallel.md "Several processes"): MPI
 * behind a few calls, so that nothing above this file includes <mpi.h> or #ifdefs it.
 * src/core/mpi.c wraps OpenMPI (built when the Makefile finds it: pkg-config ompi-c or
 * mpicc); src/core/mpi_stub.c is the same API for builds without it (one process).
 *
 * A run started by mpirun or srun --mpi=pmix (OMPI_COMM_WORLD_SIZE, PMI_SIZE or PMIX_RANK
 * in the environment) calls camo_mpi_init; any other run never touches MPI and is one
 * process: rank 0 of size 1.
 *
 * Threads: MPI is initialised with MPI_THREAD_SERIALIZED and every MPI call of this file is
 * made under one process-wide lock. Calls come from several threads (a replica's DDP comm
 * thread reduces buckets on one group while its training thread sums losses on another, and
 * the main thread exchanges the run's decisions on a third), but no call blocks: collectives
 * are started non-blocking and polled (MPI_Test) with the lock taken per call, so the lock
 * is never held while waiting for a peer, and SERIALIZED is all MPI has to provide.
 *
 * Every wait is bounded: it polls until the operation completes, the local group is
 * aborted (its core barrier, which a failing replica aborts), or timeout_s passes, which
 * aborts that barrier with a reason naming the wait. A failed run ends with
 * camo_mpi_abort (MPI_Abort), which ends every process of the job: no peer hangs. */
#ifndef CAMO_MPI_H
#define CAMO_MPI_H

#include <stddef.h>

#include "core/barrier.h"

/* 1 when a launcher (mpirun, srun --mpi=pmix) started this process, from the environment
 * alone (no MPI call). */
int camo_mpi_launched(void);
/* Under a launcher: MPI_Init_thread once (later calls return 0 at once). Not launched: 0,
 * and the process stays rank 0 of 1. -1 + error when MPI cannot start, or when a build
 * without MPI was launched as one of several processes. */
int camo_mpi_init(void);
/* This process and the processes of the run (0 and 1 without MPI). */
int camo_mpi_rank(void);
int camo_mpi_size(void);
/* Processes of the run on this machine, and this one's index among them (0 .. size - 1, in
 * rank order): MPI's shared-memory split (MPI_COMM_TYPE_SHARED), which is what the
 * launcher's OMPI_COMM_WORLD_LOCAL_RANK or SLURM_LOCALID say (those are read only if the
 * split fails); 1 and 0 without MPI. CPU threads and `auto`'s GPUs are shared among them. */
int camo_mpi_local_size(void);
int camo_mpi_local_rank(void);
/* Local process l (0 .. camo_mpi_local_size() - 1): its rank in the run, and in *visible
 * its CUDA_VISIBLE_DEVICES at start (NULL: unset), exchanged once by camo_mpi_init so that
 * src/parallel/devices.c can see which GPUs the processes of one machine share. */
int camo_mpi_local_peer(int l, const char **visible);
/* "OpenMPI 4.1.4" or "none" (a build without MPI). */
const char *camo_mpi_library(void);
/* MPI_Finalize after a successful run (no-op for one process). */
void camo_mpi_finalize(void);
/* A failed run of several processes: MPI_Abort(code), which ends every process of the job
 * (never returns). One process: returns at once. */
void camo_mpi_abort(int code);

/* One MPI communicator (a duplicate of MPI_COMM_WORLD) for one sequence of collectives:
 * every process creates its groups in the same order, and issues a group's collectives in
 * the same order, from one thread at a time. */
typedef struct camo_mpi_group camo_mpi_group;

/* Collective over the processes. NULL + error when it fails or takes longer than
 * timeout_s (<= 0: no limit). Without MPI or with one process: NULL and no error (the
 * caller then needs none). */
camo_mpi_group *camo_mpi_group_create(double timeout_s);
void camo_mpi_group_free(camo_mpi_group *g);
double camo_mpi_group_timeout(const camo_mpi_group *g);

/* The collectives. bar: the local group's barrier, watched while waiting (its abort ends
 * the wait; a timeout or an MPI error aborts it with the reason), or NULL (the error is
 * only returned). 0, or -1 with camo_last_error() set. */

/* data[0..n) = the sum over processes, in process order (((p0 + p1) + p2) ...: the same
 * bits on every process, for any n and any split into calls); each process reduces one
 * contiguous chunk (MPI_Ialltoallv, then MPI_Iallgatherv), so it moves 2n(P-1)/P values
 * like a ring all-reduce. */
int camo_mpi_sum_floats(camo_mpi_group *g, float *data, size_t n, camo_barrier *bar);
int camo_mpi_sum_doubles(camo_mpi_group *g, double *data, size_t n, camo_barrier *bar);
/* bytes[0..n) of process `root` on every process. */
int camo_mpi_bcast(camo_mpi_group *g, void *data, size_t n, int root, camo_barrier *bar);
/* In place: out[p * n .. (p + 1) * n) of each process p becomes that process's bytes. */
int camo_mpi_all_gather(camo_mpi_group *g, void *out, size_t n, camo_barrier *bar);
int camo_mpi_barrier(camo_mpi_group *g, camo_barrier *bar);
/* The run's decisions (train.c): v = the largest v of any process (stop flags, status). */
int camo_mpi_max_int(camo_mpi_group *g, int *v, camo_barrier *bar);

/* A group whose collectives wait for a long task of process `root` (process 0's
 * evaluation): every other process waits at most wait_s and then fails naming `what`
 * ("process 0's evaluation (parallel.eval_timeout_s)"); root itself, which arrives last
 * when the others are waiting already, at most timeout_s. NULL as camo_mpi_group_create. */
camo_mpi_group *camo_mpi_group_create_await(double timeout_s, int root, double wait_s,
                                            const char *what);

#endif
