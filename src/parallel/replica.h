/* replica.h: one replica of a data-parallel run (STYLE.md habit 5): its backend, model copy,
 * optimizer, comms and DDP buckets, and the per-step work run by each replica thread:
 * forward/backward of its slice of a global batch, the gradient exchange (DDP all-reduce
 * or DP reduce-to-root + broadcast) and the optimizer step. */
#ifndef CAMO_REPLICA_H
#define CAMO_REPLICA_H

#include "nn/checkpoint.h"
#include "backend/comm.h"
#include "data/data.h"
#include "parallel/ddp.h"
#include "nn/loss.h"
#include "nn/net.h"
#include "nn/net_build.h"
#include "nn/optim.h"
#include "nn/pretrained.h"

/* Dynamic loss scaling for fp16 convolutions (docs/cuda.md "Mixed precision"): losses are
 * multiplied by `scale`; a step whose all-reduced gradients hold an inf or NaN is skipped
 * and the scale halved; after CAMO_LOSS_SCALE_GROWTH good steps in a row it doubles.
 * Powers of two only, so scaling and unscaling are exact. */
#define CAMO_LOSS_SCALE_INIT 65536.0
#define CAMO_LOSS_SCALE_GROWTH 2000
#define CAMO_LOSS_SCALE_MIN 0x1p-24
#define CAMO_LOSS_SCALE_MAX 0x1p24
typedef struct camo_loss_scale {
    double scale;
    int good;               /* good steps in a row since the last change */
    int bad_run;            /* skipped steps in a row */
    int64_t skipped;        /* skipped steps in all */
} camo_loss_scale;
/* Starts at `scale` (<= 0: CAMO_LOSS_SCALE_INIT). */
void camo_loss_scale_init(camo_loss_scale *s, double scale);
/* The state after a step whose (all-reduced, so identical on every replica) gradients were
 * finite or not. Returns 1 when the step must be skipped. Pure: no I/O, no collective. */
int camo_loss_scale_update(camo_loss_scale *s, int finite);

/* What a replica needs of the run's recipe (train/train.c fills it from the config). */
typedef struct camo_replica_opts {
    camo_net_source net;    /* the network, when not resuming from a checkpoint */
    int img_size;           /* square training input (data.img_size) */
    camo_loss_kind loss;
    int deep_supervision;
    int ignore_index;       /* multi-class labels that count for nothing */
    camo_optim_opts optim;
    double clip_grad_norm;  /* 0: no clipping */
    uint64_t seed;          /* weight initialisation */
    int dp;                 /* parallel.mode = "dp": master-gather */
    int sync_bn;
    double bucket_mb;       /* DDP bucket size */
    /* init.*: pretrained weights loaded by name over the seed's, before the optimizer and
     * its EMA copy exist (nn/pretrained.h); not when resuming. NULL or "" = none. */
    const char *init_weights, *init_prefix;
    int init_strict;
    int lean_memory;        /* train.memory = "lean": BN and activations recomputed */
    int checkpointing;      /* train.checkpointing: the network's checkpoint_blocks too */
} camo_replica_opts;

/* What one optimizer step measured on its training batch, summed over every replica the
 * way the loss is (one host all-reduce of all three, in rank order). */
typedef struct camo_step_stats {
    int64_t step;           /* the optimizer step measured (camo_replica_set_position) */
    double loss;            /* the step's global loss (the configured loss, mean) */
    double pixels_correct;  /* main-output pixels predicted right (backend.h pixel_correct) */
    double pixels_counted;  /* pixels counted (multi-class: those not ignored) */
    double grad_norm;       /* clipping on the device: the norm it clipped, else NaN */
} camo_step_stats;

typedef struct camo_replica {
    camo_replica_opts o;
    int rank, size;
    int dp;                 /* o.dp, o.sync_bn */
    int sync_bn;
    camo_backend *be;
    camo_net *net;
    camo_optim *opt;
    float *target, *loss_dev;   /* backend memory */
    void *stats_host[2];    /* pinned: the last steps' loss_dev, on their way to the host */
    double stats_scale[2];  /* their fp16 loss scale */
    int64_t stats_step[2];  /* their optimizer step */
    int stats_norm[2];      /* whether they hold a gradient norm */
    int norm_on_device;     /* this step clipped on the device (camo_clip_grads_dev) */
    int64_t stats_queued, stats_taken; /* steps queued / taken (camo_replica_measures) */
    int32_t *labels;
    camo_comm *comm;        /* gradients and parameters (the DDP comm thread's in backward) */
    camo_comm *ctl;         /* losses, sync-BN sums, start-up checks (the compute thread's) */
    camo_ddp ddp;
    int ddp_on;
    int bn_error;           /* a sync-BN collective failed (the hook cannot return it) */
    int ghost;              /* running the ghost pass of an empty slice (sync-BN) */
    double comm_s;          /* last step: seconds in gradient/parameter collectives */
    double wait_s;          /* last step: of which the compute thread waited for */
    int scaling;            /* fp16 loss scaling on (set after init by the trainer) */
    camo_loss_scale ls;
    int skipped;            /* the last step was skipped (gradient overflow) */
    int64_t steps;          /* steps checked for overflow by this replica (test hook) */
    int seen_n[16], n_seen; /* global batch sizes stepped so far (first one: no overlap) */
    void *user;             /* the run this replica belongs to (train.c) */
    int64_t pos_step;       /* camo_replica_set_position */
    int64_t pos_image0;
} camo_replica;

/* Builds replica `rank` of `size` on backend be (taken over): the network of opts->net (or
 * of the checkpoint ck), activations for `local_batch` images, weights from opts->seed or
 * ck, the optimizer. network_text (may be NULL) receives the network's text. 0, or -1 +
 * error. */
int camo_replica_init(camo_replica *r, const camo_replica_opts *opts, const camo_ckpt *ck,
                      camo_backend *be, int rank, int size, int local_batch,
                      char **network_text);
/* Gives the replica its comms (comm for gradients, ctl for the rest; both may be NULL for
 * a lone replica) and starts DDP buckets / sync-BN as its options say. 0, or -1. */
int camo_replica_attach(camo_replica *r, camo_comm *comm, camo_comm *ctl);
/* Collective, from every replica thread: broadcasts replica 0's weights and buffers, then
 * compares a checksum of them across replicas. 0, or -1 with an error on a mismatch. */
int camo_replica_sync_start(camo_replica *r);
/* This replica's share of a global batch of n: images [*lo, *lo + *count), contiguous,
 * per-replica batch n / size with the remainder spread over the first replicas. */
void camo_replica_slice(int n, int rank, int size, int *lo, int *count);
/* Forward, loss and backward of this replica's slice of global batch b; gradients
 * accumulate. norm_images / norm_pixels: global counts of the optimizer step. last_micro:
 * the step's last micro-batch, whose backward launches the DDP buckets. 0, or -1. */
/* Where the next micro-batch sits in the run, for layers that draw random numbers
 * (drop_path, net.h rng_*): the optimizer step it belongs to (1-based) and the index, among
 * that step's images, of the global micro-batch's first image. The draws then depend on
 * (seed, step, image) only: the same for every replica count and after a resume. */
void camo_replica_set_position(camo_replica *r, int64_t step, int64_t step_image0);
int camo_replica_micro_batch(camo_replica *r, const camo_batch *b, double norm_images,
                             double norm_pixels, int last_micro);
/* Waits until the last micro-batch's uploads are done (not its compute): b may then be
 * refilled. */
void camo_replica_uploads_wait(camo_replica *r);
/* Gradient exchange, clipping and update with learning rate lr; *grad_norm: the
 * clipped-over norm (NaN without clipping). The step's loss and pixel counts are queued
 * for the host, not waited for (camo_replica_measures). 0, or -1 + error. */
int camo_replica_step(camo_replica *r, double lr, double *grad_norm);
/* Steps whose measurements are queued and not yet taken (0, 1 or 2). */
int camo_replica_pending(const camo_replica *r);
/* Collective, from every replica thread when camo_replica_pending is the same on all: *st
 * = the global loss and pixel counts of the oldest step not yet taken, waiting for its
 * download only (the GPU may go on with later steps). 1 when a step was taken, 0 when none
 * was pending, -1 + error. */
int camo_replica_measures(camo_replica *r, camo_step_stats *st);
void camo_replica_free(camo_replica *r);

/* Backend memory one replica allocates for training (camo_replica_init: network,
 * optimizer state, EMA, targets), in bytes requested, measured on net (set to some input
 * size of opts->img_size) without allocating at the training batch. */
typedef struct camo_replica_mem {
    camo_net_mem net;
    int optim_slots;        /* SGD 1 (momentum_buffer), AdamW 2 (exp_avg, exp_avg_sq) */
    size_t optim;           /* the slots, weight-sized each */
    size_t ema;             /* train.ema_decay > 0: one more weight-sized block */
    size_t other;           /* fixed: optimizer reduction scratch, the step's loss block */
    size_t targets_img;     /* per image: mask (float) and labels (int32) */
} camo_replica_mem;
int camo_replica_memory(camo_net *net, const camo_replica_opts *opts, camo_replica_mem *m);
/* Bytes that do not depend on the batch, and per image of the local batch. */
size_t camo_replica_mem_fixed(const camo_replica_mem *m);
size_t camo_replica_mem_per_image(const camo_replica_mem *m);

#endif
