/* train.h: a training run: set-up from a config (or a checkpoint), the epoch loop with
 * stages, accumulation, clipping, EMA, evaluation, checkpoints, logging and signals. */
#ifndef CAMO_TRAIN_H
#define CAMO_TRAIN_H

#include "camo/config.h"
#include "camo/net.h"

/* Runs training; returns the process exit code. resume: a checkpoint to continue from
 * (its config and network are used; `c` then only carries the command-line overrides). */
int camo_train_run(camo_config *c, const char *resume_path);

/* What one optimizer step measured on its training batch, summed over every replica the
 * way the loss is (one host all-reduce of all three, in rank order). */
typedef struct camo_step_stats {
    double loss;            /* the step's global loss (the configured loss, mean) */
    double pixels_correct;  /* main-output pixels predicted right (backend.h pixel_correct) */
    double pixels_counted;  /* pixels counted (multi-class: those not ignored) */
} camo_step_stats;
/* camo_replica_step (replica.h) with the step's statistics: gradient exchange, clipping and
 * update with learning rate lr; *grad_norm as there. Implemented in src/replica.c. */
struct camo_replica;
int camo_replica_step_stats(struct camo_replica *r, const camo_config *c, double lr,
                            camo_step_stats *st, double *grad_norm);

/* The network of a config: from its file or inline group. *network_text receives a
 * self-contained text of the network (saved in checkpoints); free() it. */
camo_net *camo_build_net(const camo_config *c, camo_backend *be, char **network_text);
/* The network saved in a checkpoint's metadata. */
camo_net *camo_build_net_from_text(const char *network_text, const char *source,
                                   camo_backend *be);

/* Validation metrics of a binary or multi-class network on a data set split. */
typedef struct camo_eval_result {
    int n_images;
    double loss, iou, dice, mae;   /* binary; per-image means */
    double miou, pixel_acc;        /* multi-class */
    double seconds;
} camo_eval_result;

struct camo_dataset;
int camo_evaluate(camo_net *net, const camo_config *c, struct camo_dataset *ds, int workers,
                  camo_eval_result *r);
/* The value of checkpoint.metric in r, oriented so that larger is better. */
double camo_eval_score(const camo_eval_result *r, const char *metric);

#endif
