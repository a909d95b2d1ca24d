/* train.h: a training run: set-up from a config (or a checkpoint), the epoch loop with
 * stages, accumulation, clipping, EMA, evaluation, checkpoints, logging and signals. */
#ifndef CAMO_TRAIN_H
#define CAMO_TRAIN_H

#include "train/config.h"
#include "nn/net.h"

/* Runs training; returns the process exit code. resume: a checkpoint to continue from
 * (its config and network are used; `c` then only carries the command-line overrides). */
int camo_train_run(camo_config *c, const char *resume_path);

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
