/* barrier.h: the abortable, timed barrier of a group of ranks (replica threads of one
 * process), on pthreads: the host-side meeting point of every comm (src/backend/cpu/comm_cpu.c,
 * cuda/comm_group.cu). A wait that outlasts the timeout aborts the whole group with a reason
 * that names the late ranks; after an abort, by any rank or any thread, every pending and
 * later wait fails promptly with "comm aborted: <reason>", so a lost peer never hangs a run. */
#ifndef CAMO_BARRIER_H
#define CAMO_BARRIER_H

#include <stddef.h>

typedef struct camo_barrier camo_barrier;

/* n ranks (0..n-1); a wait times out after timeout_s seconds (<= 0: never). */
camo_barrier *camo_barrier_create(int n, double timeout_s);
void camo_barrier_free(camo_barrier *b);
double camo_barrier_timeout(const camo_barrier *b);

/* Rank `rank` waits until all n ranks arrived: 0. Once the group is aborted, or when the
 * timeout passes (which aborts it with "collective timed out after 2 s: replica 1, 3 did
 * not join (replica 0 waited)"): -1 with camo_last_error() = "comm aborted: <reason>". */
int camo_barrier_wait(camo_barrier *b, int rank);
/* The same, with on_arrive(arg, rank) run under the barrier's lock on arrival, and only
 * when the group is not aborted: what it writes (a rank's buffer pointer) is seen by every
 * rank after the wait, and never changes under a peer that an abort left mid-collective. */
int camo_barrier_wait_with(camo_barrier *b, int rank, void (*on_arrive)(void *arg, int rank),
                           void *arg);

/* camo_barrier_wait without the timeout (an abort still ends it), for ranks that wait while
 * one rank of the group runs a wait of its own that is timed and aborts the group when it
 * passes (the cpu comm's process leader inside MPI, core/mpi.h): its reason is then the one
 * reported, not a misleading "replica 0 did not join". */
int camo_barrier_wait_untimed(camo_barrier *b, int rank);

/* Ends every pending and later wait with an error; the first reason is kept (NULL or "":
 * "aborted"). Safe from any thread, any number of times. */
void camo_barrier_abort(camo_barrier *b, const char *reason);
/* Non-zero once aborted (by a rank, any thread or a timeout). */
int camo_barrier_aborted(camo_barrier *b);
/* Sets camo_last_error() to "comm aborted: <reason>"; returns -1. */
int camo_barrier_fail(camo_barrier *b);

/* The timeout's reason for `waiter`, naming the ranks r for which late(arg, r, waiter):
 * "collective timed out after 2 s: replica 1, 3 did not join (replica 0 waited)", or
 * "collective timed out after 2 s" when none is late. For comms whose own waits time out
 * (the nccl comm polls its GPU work), so that every timeout reads the same. */
void camo_barrier_timeout_text(const camo_barrier *b, int waiter,
                               int (*late)(const void *arg, int r, int waiter),
                               const void *arg, char *buf, size_t size);

#endif
