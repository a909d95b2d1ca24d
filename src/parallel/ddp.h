/* ddp.h: DDP gradient buckets (DESIGN.md "Training semantics" item 4). net->grad_block is
 * laid out in reverse parameter order, so buckets are contiguous slices of it: the first
 * (1 MB) holds the last layers' gradients, the next ones parallel.bucket_mb each. While
 * camo_net_backward runs, net->on_layer_grads tells which prefix of the block is final;
 * every bucket inside that prefix is queued to this replica's comm thread, which
 * all-reduces the buckets in their fixed order (the same on every rank) while backward
 * goes on. */
#ifndef CAMO_DDP_H
#define CAMO_DDP_H

#include <pthread.h>
#include <stddef.h>

#include "backend/comm.h"
#include "nn/net.h"

typedef struct camo_ddp {
    camo_net *net;
    camo_comm *comm;          /* used only by the comm thread while a step is armed */
    int n_buckets;
    size_t *bucket_end;       /* bucket b is grad_block[bucket_end[b-1] .. bucket_end[b]) */
    size_t *ready_after;      /* per layer: floats of grad_block final once it is done */

    pthread_t thread;
    int thread_started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int launched, done;       /* buckets handed to / finished by the comm thread */
    /* One side request (a sync-BN sum) queued behind the first `side_after` buckets; the
     * compute thread waits for it, so there is at most one. */
    float *side_data;
    size_t side_n;
    int side_after, side_pending, side_rc;
    int quit, failed;
    char error[512];          /* the comm thread's first error */
    double busy_s;            /* comm thread time in all-reduces since camo_ddp_arm */
} camo_ddp;

/* Plans buckets of net's gradients (first_mb, then bucket_mb) and starts the comm thread.
 * 0, or -1 with an error. */
int camo_ddp_init(camo_ddp *d, camo_net *net, camo_comm *comm, double first_mb,
                  double bucket_mb);
/* Starts an optimizer step's exchange: call before the backward of the last micro-batch of
 * the step (earlier ones accumulate locally). overlap: install the backward hook, so
 * buckets go out while backward runs; 0: every bucket waits for camo_ddp_finish (the same
 * collectives in the same order; every rank must pass the same value). */
void camo_ddp_arm(camo_ddp *d, int overlap);
/* Launches the buckets not yet launched, waits for all of them and removes the hook.
 * busy_s: comm thread seconds in all-reduces for this step. 0, or -1 with the comm's
 * error (aborted, timed out). */
int camo_ddp_finish(camo_ddp *d, double *busy_s);
/* All-reduces data[0..n) (backend memory) through the comm thread, after every bucket
 * launched so far and before any launched later, and waits for the result (comm->wait
 * included). With it a replica has one communicator and one FIFO for every device
 * collective of backward: sync-BN sums cannot interleave with buckets in a different
 * order on different ranks (docs/parallel.md "One communicator in backward"). Compute
 * thread only. 0, or -1 with the comm's error. */
int camo_ddp_side_all_reduce(camo_ddp *d, float *data, size_t n);
void camo_ddp_free(camo_ddp *d);

#endif
