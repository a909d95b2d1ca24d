/* optim.h: optimizer state and step (SGD, AdamW), learning-rate schedule, gradient
 * clipping and EMA of weights. State blocks share net->param_block's layout, so a
 * checkpoint stores them per parameter as optim.<slot>.<param> (PyTorch's slot names). */
#ifndef CAMO_OPTIM_H
#define CAMO_OPTIM_H

#include "nn/net.h"

typedef enum { CAMO_OPT_SGD, CAMO_OPT_ADAMW } camo_opt_type;

/* What an optimizer is made of (train.* in the config). */
typedef struct camo_optim_opts {
    camo_opt_type type;
    double momentum, weight_decay, beta1, beta2, eps;
    int nesterov;
    double ema_decay;           /* 0: no EMA of the weights */
} camo_optim_opts;

typedef struct camo_optim {
    camo_opt_type type;
    double momentum, weight_decay, beta1, beta2, eps;
    int nesterov;
    int n_slots;
    const char *slot_name[2];   /* "momentum_buffer" | "exp_avg", "exp_avg_sq" */
    float *slot[2];             /* backend memory, net->n_weight_floats each */
    int64_t t;                  /* optimizer steps taken (AdamW bias correction) */
    float *ema;                 /* EMA of the weights (param_block layout) or NULL */
    double ema_decay;
    float *scratch;             /* backend floats for reductions (one per tensor) */
    float *scratch_host;        /* their host copy */
} camo_optim;

camo_optim *camo_optim_create(camo_net *net, const camo_optim_opts *opts);
void camo_optim_free(camo_net *net, camo_optim *o);

/* Global L2 norm of the gradients of unfrozen weights (host sync). */
double camo_grad_norm(camo_net *net, camo_optim *o);
/* Clips the gradients of unfrozen weights to norm `clip` (and divides them by loss_scale)
 * on the device, with no host wait: then camo_optim_step with grad_scale 1 updates as the
 * host path (camo_grad_norm, grad_scale) would, bit for bit. *norm_out (backend memory, a
 * double) = the norm / loss_scale. */
void camo_clip_grads_dev(camo_net *net, camo_optim *o, double clip, double loss_scale,
                         double *norm_out);
/* Backend floats of the optimizer's reduction scratch (one per parameter tensor + 1, >= 4). */
size_t camo_optim_scratch_floats(const camo_net *net);
/* One update of every unfrozen weight with learning rate lr; gradients are multiplied by
 * grad_scale first (clipping). Also updates the EMA when enabled. */
void camo_optim_step(camo_net *net, camo_optim *o, double lr, double grad_scale);
/* EMA <-> weights exchange for evaluation with EMA weights (call twice to undo). */
void camo_optim_swap_ema(camo_net *net, camo_optim *o);

#endif
