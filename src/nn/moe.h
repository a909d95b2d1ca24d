/* moe.h: mixture of experts (layer_moe.c; docs/models.md "Mixture of experts"): the routing
 * rule, the load-balancing loss, and what the trainer reads of them. */
#ifndef CAMO_MOE_H
#define CAMO_MOE_H

#include <stdio.h>

#include "nn/net.h"

/* the combine layer takes the router and every expert as inputs */
#define CAMO_MOE_MAX_EXPERTS (CAMO_MAX_INPUTS - 1)

/* One image's routing over K experts: p = softmax(logits) in double; the top_k largest p
 * are selected (sel[e] = 1; of equal values the lower index first), w[e] = p[e] / (sum of
 * the selected p) for them and 0 for the others. */
void camo_moe_route(int K, int top_k, const float *logits, double *p, float *w,
                    unsigned char *sel);

/* The load-balancing loss over n images (Switch Transformer's, for top_k routings):
 * K * sum_e f_e * P_e with f_e = counts[e] / (n * top_k), the fraction of the routings
 * that went to e, and P_e = psum[e] / n, the mean gate probability of e. 1 when both are
 * uniform; K / top_k when every image goes to the same experts with certainty. */
double camo_moe_balance(int K, int top_k, double n, const double *counts, const double *psum);

/* Arms the balancing loss's gradient for the next backward: norm_images is what the loss
 * ops divide by (the step's global image count, over the fp16 loss scale), so the loss
 * weighs balance_weight * K * sum_e f_e p_ie / norm_images for each image i. Called by
 * camo_loss_forward_backward; every forward disarms it (evaluation, sync-BN ghost passes
 * and tests without a loss add no balancing gradient). */
void camo_moe_set_balance_norm(camo_net *net, double norm_images);

/* Router `which` (0-based, in layer order) of the training forwards since the last reset:
 * mean balancing loss (NAN when none ran) and usage[e], the fraction of routings that went
 * to expert e (experts() floats). Returns the expert count, or 0 when there is no such
 * router. With parallel.sync_bn on several replicas the figures are global, else this
 * replica's images'. */
int camo_moe_stats(const camo_net *net, int which, double *balance_loss, double *usage);
void camo_moe_stats_reset(camo_net *net);

/* metrics.jsonl: `,"moe":[{"layer":NAME,"balance_loss":x,"usage":[...]}, ...]` over the
 * training forwards since the last call, then reset; writes nothing when the net has no
 * mixture of experts or none ran. */
void camo_moe_log_json(FILE *f, camo_net *net);

/* parallel.sync_bn across replicas: a batch norm inside an expert would wait in its
 * collective for replicas on which its expert got no image. -1 + error naming it, else 0. */
int camo_moe_check_sync_bn(const camo_net *net);

#endif
