/* schedule.c: learning-rate schedules (see schedule.h). */
#include "train/schedule.h"

#include <math.h>

double camo_lr_at(const camo_config *c, int s, double e) {
    const camo_stage *st = &c->train.stages[s];
    double base = st->lr, min_lr = c->train.min_lr < base ? c->train.min_lr : base;
    if (st->warmup_epochs > 0 && e < st->warmup_epochs)
        return base * e / st->warmup_epochs; /* callers pass e after the step: never 0 */
    double span = st->epochs - st->warmup_epochs;
    double f = span > 0 ? (e - st->warmup_epochs) / span : 1.0; /* progress in [0, 1] */
    if (f < 0) f = 0;
    if (f > 1) f = 1;
    switch (c->train.schedule_kind) {
    case CAMO_SCHED_COSINE:
        return min_lr + (base - min_lr) * 0.5 * (1 + cos(M_PI * f));
    case CAMO_SCHED_POLY:
        return min_lr + (base - min_lr) * pow(1 - f, c->train.poly_power);
    case CAMO_SCHED_STEP:
        return base * pow(c->train.step_gamma, floor((e - st->warmup_epochs) / c->train.step_size));
    case CAMO_SCHED_CONSTANT:
        break;
    }
    return base;
}
