/* schedule.h: the learning rate at any point of a run: per stage, linear warm-up, then
 * cosine, poly, step or constant down to train.min_lr (DESIGN.md "Training semantics"). */
#ifndef CAMO_SCHEDULE_H
#define CAMO_SCHEDULE_H

#include "train/config.h"

/* The learning rate for a position in the run: stage `s` of c, `epoch_in_stage` as a
 * fraction (epoch index + batch fraction). Linear warm-up, then the schedule. */
double camo_lr_at(const camo_config *c, int s, double epoch_in_stage);

#endif
