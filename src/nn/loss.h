/* loss.h: the training objective over a network's outputs: the configured loss on the
 * main output, plus the auxiliary outputs with their weights (deep supervision). */
#ifndef CAMO_LOSS_H
#define CAMO_LOSS_H

#include <stdint.h>

#include "nn/net.h"

typedef enum { LOSS_STRUCTURE, LOSS_BCE, LOSS_DICE, LOSS_BCE_DICE, LOSS_CE } camo_loss_kind;

/* "structure" | "bce" | "dice" | "bce+dice" | "ce"; -1 if unknown. */
int camo_loss_parse(const char *name, camo_loss_kind *out);

/* Adds the loss of the first n images to *loss_dev (backend memory) and its gradient to
 * the outputs' gradient buffers. target: (n,H,W) floats for binary losses, labels: (n,H,W)
 * int32 for "ce". norm_images / norm_pixels: GLOBAL counts over every replica and
 * micro-batch of the optimizer step (pixels: valid pixels for "ce"). Auxiliary outputs are
 * included when deep_supervision is set, each scaled by its weight; an output whose size
 * differs from the target is an error at set-up (networks resize their heads). */
void camo_loss_forward_backward(camo_net *net, camo_loss_kind kind, int deep_supervision,
                                int n, const float *target, const int32_t *labels,
                                int ignore_index, double norm_images, double norm_pixels,
                                float *loss_dev);

/* Checks that every output used by the loss has the input's size and a channel count the
 * loss accepts (1 for binary, classes for ce). */
int camo_loss_check(const camo_net *net, camo_loss_kind kind, int deep_supervision);

#endif
