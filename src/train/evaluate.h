/* evaluate.h: the full evaluation of a network on a data set split (src/train/evaluate.c): every
 * metric of metrics.h, computed per image at the ground truth's original size (the
 * network's output is resized to it, bilinear, like the field's scripts), then averaged.
 * camo_evaluate (train.h) is the summary of this used during training. */
#ifndef CAMO_EVALUATE_H
#define CAMO_EVALUATE_H

#include "train/config.h"
#include "train/metrics.h"
#include "nn/net.h"
#include "train/train.h"

typedef struct camo_eval_full {
    camo_eval_result r;   /* images, loss, iou/dice/mae or miou/pixel_acc, seconds */
    int classes;
    camo_sod_metrics sod; /* classes == 1 */
    camo_cls_metrics cls; /* classes > 1; cls.iou points to class_iou */
    double *class_iou;    /* (classes,) owned; NULL when binary */
} camo_eval_full;

int camo_evaluate_full(camo_net *net, const camo_config *c, camo_dataset *ds, int workers,
                       camo_eval_full *out);
void camo_eval_full_free(camo_eval_full *e);

/* A table (json = 0) or one JSON object on one line: images, loss, seconds and the metrics. */
void camo_eval_full_print(const camo_eval_full *e, FILE *out, int json);

/* The evaluation record of metrics.jsonl, one line: type, epoch, step, loss, then iou, dice,
 * mae (classes == 1) or miou, pixel_acc (classes > 1), images, seconds. Only the metrics of
 * the network's kind: a 0 written for one not computed would read as a score. */
void camo_eval_jsonl(FILE *f, const camo_eval_result *r, int classes, int epoch,
                     long long step);

/* The evaluation as TensorBoard scalars at step: eval/loss and every metric of the kind
 * (eval/sm, eval/em_mean, ... eval/iou, eval/dice; or eval/miou, eval/pixel_acc,
 * eval/mean_acc and eval/class_iou/<k>), named as in `eval --json`. */
struct camo_tb;
void camo_eval_tb(struct camo_tb *tb, const camo_eval_full *e, long long step);

#endif
