/* checkpoint.h: safetensors checkpoints (DESIGN.md "Checkpoints"): parameters, BN
 * statistics, EMA weights (ema.<name>), optimizer state (optim.<slot>.<name>), and in
 * __metadata__ the config and network texts, position (epoch, batch, step), best metric
 * and format version. Independent of replica count and device; written atomically. */
#ifndef CAMO_CHECKPOINT_H
#define CAMO_CHECKPOINT_H

#include <stdint.h>

#include "nn/net.h"
#include "nn/optim.h"
#include "core/safetensors.h"

#define CAMO_CKPT_FORMAT "camotrain-checkpoint"
#define CAMO_CKPT_VERSION 1

/* Sums over the optimizer steps of the epoch in progress, for its mean training loss
 * (weighted by each step's images) and training pixel accuracy; in checkpoints, so that an
 * epoch resumed in its middle still reports all its steps. */
typedef struct camo_epoch_sums {
    double loss_x_images, images;   /* sum of step loss * step images; images */
    double correct, counted;        /* pixel counts (camo_step_stats) */
    int steps;
} camo_epoch_sums;

typedef struct camo_train_state {
    int epoch;            /* epoch in progress (0-based) */
    int batch;            /* next batch of that epoch: the sampler position */
    int64_t step;         /* optimizer steps done */
    double best_metric;   /* of checkpoint.metric; NaN before the first eval */
    int best_epoch;       /* 1-based epoch of the best metric, 0 = none */
    int bad_epochs;       /* evals since the best one (early stopping) */
    double elapsed_s;     /* training time so far, across resumes */
    double loss_scale;    /* fp16 dynamic loss scale; 0 = none (saved only when > 0) */
    camo_epoch_sums epoch_sums; /* of the steps of `epoch` before `batch` (saved when batch > 0) */
    int has_epoch_sums;   /* loaded: the checkpoint had them (older ones do not) */
} camo_train_state;

/* Writes everything needed to continue exactly. opt may be NULL (weights only). */
int camo_ckpt_save(const char *path, camo_net *net, const camo_optim *opt,
                   const camo_train_state *st, const char *config_text,
                   const char *network_text, uint64_t seed);

typedef struct camo_ckpt {
    camo_st_file *file;
    char path[1024];
    const char *config_text, *network_text; /* point into the file's metadata */
    camo_train_state st;
    uint64_t seed;
} camo_ckpt;

/* Opens and validates a checkpoint (format, version, metadata). NULL + error naming the
 * file (truncated, corrupt, not a camotrain checkpoint, newer version). */
camo_ckpt *camo_ckpt_open(const char *path);
void camo_ckpt_close(camo_ckpt *ck);
/* Loads parameters, buffers and counters into net (built from ck->network_text); with
 * use_ema, trained weights come from the EMA copy when the checkpoint has one. Every
 * parameter must be present with its shape; tensors the network lacks are an error. */
int camo_ckpt_load_weights(const camo_ckpt *ck, camo_net *net, int use_ema);
/* Loads optimizer slots, step count and EMA (the optimizer must match the checkpoint's). */
int camo_ckpt_load_optim(const camo_ckpt *ck, camo_net *net, camo_optim *opt);

#endif
