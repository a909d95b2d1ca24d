/* net_plan.h: where a network's activations and activation gradients live (internal).
 *
 * One arena per network holds every layer output and every activation gradient. The plan
 * gives each of them an interval of time steps in which it is alive and an offset in the
 * arena, so tensors whose lives do not overlap share memory, as PyTorch frees tensors when
 * autograd no longer needs them:
 *   time i          forward of layer i          (0 .. L-1)
 *   time L          the loss (reads the outputs, writes their gradients)
 *   time 2L - j     backward of layer j          (L+1 .. 2L)
 * - an output lives from its forward to its last reader: the forward of a consumer, or the
 *   backward of a layer that reads it there (each layer type says what its backward reads,
 *   camo_layer_ops.saves); network outputs and kept layers live to the end;
 * - a gradient lives from the backward of its last consumer (it is zeroed then, since
 *   backward accumulates) to its own layer's backward; an output's from the loss;
 * - an activation whose backward reads only its output (ReLU, sigmoid, ...) writes over its
 *   input when nothing else reads that input (in place: one buffer for both);
 * - a recomputed layer (cheap ones in lean memory mode, marked blocks with gradient
 *   checkpointing) keeps its output only through forward; backward regenerates it, bit for
 *   bit, just before the first backward that reads it (a second life, another offset).
 * Every size is n images times a per-image size, so the plan is made per image and the
 * arena of N images is N times the plan's: the summary sizes any batch without allocating.
 */
#ifndef CAMO_NET_PLAN_H
#define CAMO_NET_PLAN_H

#include <stddef.h>

typedef struct camo_net camo_net;

enum { PLAN_OUT, PLAN_REC, PLAN_GRAD, PLAN_KINDS };

typedef struct plan_life {
    int birth, death;   /* time steps, inclusive; birth > death: this life does not exist */
    int slot;           /* lives written in place over each other share a slot */
} plan_life;

/* Layers grouped by time step: those of step t are layer[first[t]] .. layer[first[t+1]-1],
 * in layer order. Made once per plan, so backward does not scan every layer at each step. */
typedef struct plan_steps {
    int *first;                   /* steps + 1 */
    int *layer;
} plan_steps;

typedef struct camo_plan {
    int n_layers, steps;          /* steps = 2L + 1 */
    plan_life (*life)[PLAN_KINDS]; /* per layer */
    int *recompute;               /* per layer: the output is regenerated in backward */
    int *in_place;                /* per layer: forward writes over input 0 */
    size_t *slot_off, *slot_size; /* per slot, floats per image */
    int *slot_birth, *slot_death;
    int n_slots;
    size_t arena_img;             /* floats per image */
    size_t kept_img;              /* floats per image alive at the loss (time L) */
    size_t grad_peak_img;         /* most gradient floats per image alive at once */
    size_t plain_img;             /* every output and gradient in its own buffer */
    plan_steps grad_born;         /* gradients whose life begins (backward adds into them,
                                     so they are zeroed then); not the network outputs',
                                     which the loss writes */
    plan_steps regen;             /* recomputed outputs regenerated (their second life) */
} camo_plan;

/* Make the plan for the network's current shapes (after every layer's infer). lean:
 * recompute batch norms and activations in backward; plain: no sharing at all (every
 * tensor its own memory, nothing in place or recomputed: the reference the tests compare
 * the plan with); inference: forward only (evaluation): an output lives to its last
 * forward reader, and only the network outputs have gradients (the loss writes them).
 * 0, or -1 + error. */
int camo_plan_make(const camo_net *net, int lean, int plain, int inference, camo_plan *p);
void camo_plan_free(camo_plan *p);

/* The life of layer i's tensor of kind k exists. */
static inline int plan_has(const camo_plan *p, int i, int k) {
    return p->life[i][k].birth <= p->life[i][k].death;
}
static inline size_t plan_offset(const camo_plan *p, int i, int k) {
    return p->slot_off[p->life[i][k].slot];
}
/* The layers of list s at time step t; *n: how many. */
static inline const int *plan_at(const plan_steps *s, int t, int *n) {
    *n = s->first[t + 1] - s->first[t];
    return s->layer + s->first[t];
}

#endif
