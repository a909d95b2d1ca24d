/* optim.c: optimizer steps over the parameter list, LR schedules, clipping, EMA. */
#include "nn/optim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"

static float *alloc_block(camo_net *net, size_t floats) {
    float *p = net->be->alloc(net->be, floats * sizeof(float));
    if (!p) CAMO_DIE("%s", camo_last_error());
    return p;
}

camo_optim *camo_optim_create(camo_net *net, const camo_optim_opts *opts) {
    camo_optim *o = camo_calloc(1, sizeof *o);
    o->type = opts->type;
    o->momentum = opts->momentum;
    o->weight_decay = opts->weight_decay;
    o->beta1 = opts->beta1;
    o->beta2 = opts->beta2;
    o->eps = opts->eps;
    o->nesterov = opts->nesterov;
    if (o->type == CAMO_OPT_SGD) {
        o->n_slots = 1;
        o->slot_name[0] = "momentum_buffer";
    } else {
        o->n_slots = 2;
        o->slot_name[0] = "exp_avg";
        o->slot_name[1] = "exp_avg_sq";
    }
    for (int s = 0; s < o->n_slots; s++) o->slot[s] = alloc_block(net, net->n_weight_floats);
    o->ema_decay = opts->ema_decay;
    if (o->ema_decay > 0) {
        o->ema = alloc_block(net, net->n_weight_floats);
        net->be->copy(net->be, o->ema, net->param_block, net->n_weight_floats * sizeof(float));
    }
    o->scratch = alloc_block(net, camo_optim_scratch_floats(net));
    o->scratch_host = camo_malloc(camo_optim_scratch_floats(net) * sizeof(float));
    return o;
}

void camo_optim_free(camo_net *net, camo_optim *o) {
    if (!o) return;
    for (int s = 0; s < o->n_slots; s++) net->be->free(net->be, o->slot[s]);
    if (o->ema) net->be->free(net->be, o->ema);
    net->be->free(net->be, o->scratch);
    free(o->scratch_host);
    free(o);
}

static size_t offset_of(const camo_net *net, const camo_param *p) {
    return (size_t)(p->data - net->param_block);
}

size_t camo_optim_scratch_floats(const camo_net *net) {
    return (size_t)CAMO_MAX(net->n_params + 1, 4);
}

/* Each tensor's sum of squares lands in its own scratch float; one download for all (a
 * download per tensor would make the host wait for the GPU hundreds of times a step). */
static int grad_sumsq(camo_net *net, camo_optim *o) {
    camo_backend *be = net->be;
    int n = 0;
    for (int i = 0; i < net->n_params; i++) {
        camo_param *p = &net->params[i];
        if (p->kind != CAMO_PARAM_WEIGHT || p->frozen) continue;
        be->sumsq(be, p->numel, o->scratch + n++, p->grad);
    }
    return n;
}

double camo_grad_norm(camo_net *net, camo_optim *o) {
    camo_backend *be = net->be;
    int n = grad_sumsq(net, o);
    be->download(be, o->scratch_host, o->scratch, (size_t)n * sizeof(float));
    double total = 0;
    for (int i = 0; i < n; i++) total += o->scratch_host[i]; /* tensor order, as always */
    return sqrt(total);
}

/* The factor lands after the sums in the scratch; multiplying the gradients by it first
 * gives the bits of the host path (an update multiplies g by grad_scale before anything). */
void camo_clip_grads_dev(camo_net *net, camo_optim *o, double clip, double loss_scale,
                         double *norm_out) {
    camo_backend *be = net->be;
    int n = grad_sumsq(net, o);
    float *factor = o->scratch + net->n_params;
    be->clip_factor(be, n, o->scratch, clip, loss_scale, factor, norm_out);
    be->scale_by(be, net->n_weight_floats, factor, net->grad_block);
}

void camo_optim_step(camo_net *net, camo_optim *o, double lr, double grad_scale) {
    camo_backend *be = net->be;
    o->t++;
    for (int i = 0; i < net->n_params; i++) {
        camo_param *p = &net->params[i];
        if (p->kind != CAMO_PARAM_WEIGHT || p->frozen) continue;
        size_t off = offset_of(net, p);
        float wd = p->no_decay ? 0.0f : (float)o->weight_decay;
        if (o->type == CAMO_OPT_SGD)
            be->sgd_step(be, p->numel, p->data, p->grad, o->slot[0] + off, (float)lr,
                         (float)o->momentum, o->nesterov, wd, (float)grad_scale, o->t == 1);
        else
            be->adamw_step(be, p->numel, p->data, p->grad, o->slot[0] + off, o->slot[1] + off,
                           (float)lr, (float)o->beta1, (float)o->beta2, (float)o->eps, wd,
                           (float)grad_scale, (int)o->t);
    }
    if (o->ema) be->ema_update(be, net->n_weight_floats, o->ema, net->param_block, (float)o->ema_decay);
}

void camo_optim_swap_ema(camo_net *net, camo_optim *o) {
    if (!o || !o->ema) return;
    float *tmp = net->param_block;
    net->param_block = o->ema;
    o->ema = tmp;
    /* parameters point into the block: re-point them */
    for (int i = 0; i < net->n_params; i++) {
        camo_param *p = &net->params[i];
        if (p->kind == CAMO_PARAM_WEIGHT) p->data = net->param_block + (p->data - o->ema);
    }
}
