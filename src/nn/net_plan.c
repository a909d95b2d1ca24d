/* net_plan.c: lifetimes and arena offsets of activations and their gradients (net_plan.h
 * explains the time axis and the rules). */
#include "net_plan.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "layer.h"

static int t_backward(int L, int j) { return 2 * L - j; }

static unsigned layer_saves(const camo_net *net, const camo_layer *l) {
    const camo_layer_ops *o = camo_layer_table[l->type];
    return o->saves ? o->saves(net, l) : LAYER_SAVES_ALL;
}

static int is_output(const camo_net *net, int i) {
    for (int o = 0; o < net->n_outputs; o++)
        if (net->outputs[o].layer == i) return 1;
    return 0;
}

static size_t layer_size_img(const camo_layer *l) {
    return camo_param_padded((size_t)l->H * l->W * l->C);
}

static void life_extend(plan_life *f, int t) {
    if (f->birth > f->death) { f->birth = f->death = t; return; }
    if (t < f->birth) f->birth = t;
    if (t > f->death) f->death = t;
}

typedef struct {
    int *fwd_last, *consumers, *bwd_first, *bwd_last, *pinned;
} plan_uses;

/* Who reads each output, in forward and in backward (inference: forward only). */
static void find_uses(const camo_net *net, int inference, plan_uses *u) {
    int L = net->n_layers;
    for (int i = 0; i < L; i++) {
        u->fwd_last[i] = i;
        u->bwd_first[i] = INT_MAX;
        u->bwd_last[i] = -1;
        u->pinned[i] = net->layers[i].keep || is_output(net, i);
    }
    for (int j = 0; j < L; j++) {
        const camo_layer *l = &net->layers[j];
        unsigned saves = inference ? 0 : layer_saves(net, l);
        int tb = t_backward(L, j);
        for (int k = 0; k < l->n_in; k++) {
            int p = l->in[k];
            if (p < 0) continue;
            u->fwd_last[p] = CAMO_MAX(u->fwd_last[p], j);
            u->consumers[p]++;
            if (saves & (1u << k)) {
                u->bwd_first[p] = CAMO_MIN(u->bwd_first[p], tb);
                u->bwd_last[p] = CAMO_MAX(u->bwd_last[p], tb);
            }
        }
        if (saves & LAYER_SAVES_OUTPUT) {
            u->bwd_first[j] = CAMO_MIN(u->bwd_first[j], tb);
            u->bwd_last[j] = CAMO_MAX(u->bwd_last[j], tb);
        }
    }
}

/* lean: batch norms and activations cost one pass over memory to redo, and each keeps a
 * tensor as large as a convolution's output */
static int wants_recompute(const camo_layer *l, int lean) {
    if (!camo_layer_table[l->type]->recomputable) return 0;
    return l->recompute || (lean && (l->type == CAMO_LAYER_BATCHNORM ||
                                     l->type == CAMO_LAYER_ACTIVATION));
}

/* Forward and recompute lives; a recomputed layer's inputs must be there when it is
 * regenerated, so they live (or are regenerated) until then: later layers first. */
static void output_lives(const camo_net *net, const plan_uses *u, int lean, camo_plan *p) {
    int L = net->n_layers, end = 2 * L;
    for (int i = 0; i < L; i++) {
        plan_life *out = &p->life[i][PLAN_OUT], *rec = &p->life[i][PLAN_REC];
        p->recompute[i] = !u->pinned[i] && wants_recompute(&net->layers[i], lean);
        out->birth = i;
        out->death = u->pinned[i] ? end : u->fwd_last[i];
        rec->birth = 1, rec->death = 0;
        if (u->bwd_last[i] < 0) continue;
        if (p->recompute[i]) rec->birth = u->bwd_first[i], rec->death = u->bwd_last[i];
        else out->death = CAMO_MAX(out->death, u->bwd_last[i]);
    }
    for (int i = L - 1; i >= 0; i--) {
        if (!plan_has(p, i, PLAN_REC)) continue;
        int t = p->life[i][PLAN_REC].birth;
        const camo_layer *l = &net->layers[i];
        for (int k = 0; k < l->n_in; k++) {
            int q = l->in[k];
            if (q < 0) continue;
            if (p->recompute[q]) life_extend(&p->life[q][PLAN_REC], t);
            else p->life[q][PLAN_OUT].death = CAMO_MAX(p->life[q][PLAN_OUT].death, t);
        }
    }
}

/* A gradient is born when its last consumer's backward first adds to it (an output's at
 * the loss) and dies after its own layer's backward read it. Inference: the outputs' only,
 * written by the loss and read by no one. */
static void grad_lives(const camo_net *net, const plan_uses *u, int inference, camo_plan *p) {
    int L = net->n_layers;
    for (int i = 0; i < L; i++) {
        plan_life *g = &p->life[i][PLAN_GRAD];
        if (inference) {
            g->birth = is_output(net, i) ? L : 1, g->death = is_output(net, i) ? L : 0;
            continue;
        }
        g->death = t_backward(L, i);
        if (is_output(net, i)) g->birth = L;
        else g->birth = t_backward(L, u->consumers[i] ? u->fwd_last[i] : i);
    }
}

/* Layer j may write over its input q when its backward needs only its own output and
 * nothing else ever reads q: q's lives end exactly where j's corresponding lives begin. */
static int can_share(const camo_net *net, const plan_uses *u, const camo_plan *p, int j) {
    const camo_layer *l = &net->layers[j];
    if (!camo_layer_table[l->type]->in_place || l->n_in != 1 || l->in[0] < 0) return 0;
    if (layer_saves(net, l) != LAYER_SAVES_OUTPUT) return 0;
    int q = l->in[0];
    const camo_layer *src = &net->layers[q];
    if (u->pinned[q] || u->consumers[q] != 1 || u->bwd_last[q] >= 0) return 0;
    if (layer_size_img(src) != layer_size_img(l) || src->rows_from != l->rows_from) return 0;
    if (p->recompute[q] != p->recompute[j] || p->life[q][PLAN_OUT].death != j) return 0;
    if (plan_has(p, q, PLAN_REC) != plan_has(p, j, PLAN_REC)) return 0;
    if (!plan_has(p, j, PLAN_REC)) return 1;
    const plan_life *rq = &p->life[q][PLAN_REC], *rj = &p->life[j][PLAN_REC];
    return rq->birth == rj->birth && rq->death == rj->birth;
}

static void assign_slots(const camo_net *net, const plan_uses *u, camo_plan *p) {
    int L = net->n_layers;
    for (int i = 0; i < L; i++)
        for (int k = 0; k < PLAN_KINDS; k++) p->life[i][k].slot = i * PLAN_KINDS + k;
    for (int j = 0; j < L; j++) {
        if (!can_share(net, u, p, j)) continue;
        int q = net->layers[j].in[0];
        p->in_place[j] = 1;
        p->life[j][PLAN_OUT].slot = p->life[q][PLAN_OUT].slot;
        p->life[j][PLAN_REC].slot = p->life[q][PLAN_REC].slot;
    }
    p->n_slots = L * PLAN_KINDS;
    for (int s = 0; s < p->n_slots; s++) p->slot_birth[s] = INT_MAX, p->slot_death[s] = -1;
    for (int i = 0; i < L; i++)
        for (int k = 0; k < PLAN_KINDS; k++) {
            if (!plan_has(p, i, k)) continue;
            const plan_life *f = &p->life[i][k];
            p->slot_birth[f->slot] = CAMO_MIN(p->slot_birth[f->slot], f->birth);
            p->slot_death[f->slot] = CAMO_MAX(p->slot_death[f->slot], f->death);
            p->slot_size[f->slot] = CAMO_MAX(p->slot_size[f->slot],
                                             layer_size_img(&net->layers[i]));
        }
}

static const camo_plan *g_sort_plan; /* qsort has no context argument */

/* largest first (they are hardest to fit), then earliest born, then index */
static int slot_order(const void *a, const void *b) {
    const camo_plan *p = g_sort_plan;
    int x = *(const int *)a, y = *(const int *)b;
    if (p->slot_size[x] != p->slot_size[y]) return p->slot_size[x] > p->slot_size[y] ? -1 : 1;
    if (p->slot_birth[x] != p->slot_birth[y]) return p->slot_birth[x] < p->slot_birth[y] ? -1 : 1;
    return x < y ? -1 : x > y;
}

static int overlaps(const camo_plan *p, int a, int b) {
    return p->slot_birth[a] <= p->slot_death[b] && p->slot_birth[b] <= p->slot_death[a];
}

/* Greedy by size: each slot takes the lowest offset where it fits beside the placed slots
 * whose lives overlap its own. */
static void place_slots(camo_plan *p, int plain) {
    int *order = camo_malloc((size_t)p->n_slots * sizeof *order), n = 0;
    for (int s = 0; s < p->n_slots; s++)
        if (p->slot_death[s] >= 0) order[n++] = s;
    g_sort_plan = p;
    qsort(order, (size_t)n, sizeof *order, slot_order);
    g_sort_plan = NULL;
    for (int a = 0; a < n; a++) {
        int s = order[a];
        size_t off = plain ? p->arena_img : 0;
        for (int moved = !plain; moved;) { /* bump past every overlapping placed slot */
            moved = 0;
            for (int b = 0; b < a; b++) {
                int t = order[b];
                if (!overlaps(p, s, t)) continue;
                size_t lo = p->slot_off[t], hi = lo + p->slot_size[t];
                if (off < hi && lo < off + p->slot_size[s]) off = hi, moved = 1;
            }
        }
        p->slot_off[s] = off;
        p->arena_img = CAMO_MAX(p->arena_img, off + p->slot_size[s]);
    }
    free(order);
}

/* Figures for the summary: what is alive at the loss, the gradients' peak, and the size
 * without a plan (every output and gradient its own buffer). */
static void plan_figures(const camo_net *net, camo_plan *p) {
    int L = net->n_layers;
    for (int s = 0; s < p->n_slots; s++)
        if (p->slot_death[s] >= 0 && p->slot_birth[s] <= L && L <= p->slot_death[s])
            p->kept_img += p->slot_size[s];
    for (int t = 0; t < p->steps; t++) {
        size_t g = 0;
        for (int i = 0; i < L; i++) {
            const plan_life *f = &p->life[i][PLAN_GRAD];
            if (f->birth <= t && t <= f->death) g += layer_size_img(&net->layers[i]);
        }
        p->grad_peak_img = CAMO_MAX(p->grad_peak_img, g);
    }
    for (int i = 0; i < L; i++) p->plain_img += 2 * layer_size_img(&net->layers[i]);
}

/* Bucket the layers by step[i] (-1: in no step), keeping layer order within a step. */
static void bucket_steps(int steps, int L, const int *step, plan_steps *s) {
    s->first = camo_calloc((size_t)steps + 1, sizeof(int));
    s->layer = camo_calloc((size_t)L + 1, sizeof(int));
    for (int i = 0; i < L; i++)
        if (step[i] >= 0) s->first[step[i] + 1]++;
    for (int t = 0; t < steps; t++) s->first[t + 1] += s->first[t];
    int *next = camo_malloc((size_t)steps * sizeof *next);
    memcpy(next, s->first, (size_t)steps * sizeof *next);
    for (int i = 0; i < L; i++)
        if (step[i] >= 0) s->layer[next[step[i]]++] = i;
    free(next);
}

/* What backward does before each step: zero the gradients born then, regenerate the
 * recomputed outputs whose second life begins then. */
static void step_lists(const camo_net *net, camo_plan *p) {
    int L = p->n_layers;
    int *step = camo_malloc((size_t)(L + 1) * sizeof *step);
    for (int i = 0; i < L; i++)
        step[i] = plan_has(p, i, PLAN_GRAD) && !is_output(net, i) ?
                  p->life[i][PLAN_GRAD].birth : -1;
    bucket_steps(p->steps, L, step, &p->grad_born);
    for (int i = 0; i < L; i++)
        step[i] = p->recompute[i] && plan_has(p, i, PLAN_REC) ? p->life[i][PLAN_REC].birth : -1;
    bucket_steps(p->steps, L, step, &p->regen);
    free(step);
}

int camo_plan_make(const camo_net *net, int lean, int plain, int inference, camo_plan *p) {
    memset(p, 0, sizeof *p);
    int L = net->n_layers;
    p->n_layers = L;
    p->steps = 2 * L + 1;
    p->life = camo_calloc((size_t)L, sizeof *p->life);
    p->recompute = camo_calloc((size_t)L, sizeof(int));
    p->in_place = camo_calloc((size_t)L, sizeof(int));
    size_t S = (size_t)L * PLAN_KINDS;
    p->slot_off = camo_calloc(S, sizeof(size_t));
    p->slot_size = camo_calloc(S, sizeof(size_t));
    p->slot_birth = camo_calloc(S, sizeof(int));
    p->slot_death = camo_calloc(S, sizeof(int));
    plan_uses u;
    int *mem = camo_calloc(5 * (size_t)L, sizeof(int));
    u.fwd_last = mem, u.consumers = mem + L, u.bwd_first = mem + 2 * L;
    u.bwd_last = mem + 3 * L, u.pinned = mem + 4 * L;
    find_uses(net, inference, &u);
    if (inference) lean = 0; /* nothing is read back: nothing to recompute */
    if (plain) /* every output pinned: no early end, nothing shared in place or recomputed */
        for (int i = 0; i < L; i++) u.pinned[i] = 1;
    output_lives(net, &u, lean, p);
    if (inference) memset(p->recompute, 0, (size_t)L * sizeof(int)); /* no backward */
    grad_lives(net, &u, inference, p);
    assign_slots(net, &u, p);
    place_slots(p, plain);
    plan_figures(net, p);
    step_lists(net, p);
    free(mem);
    return 0;
}

void camo_plan_free(camo_plan *p) {
    free(p->life);
    free(p->recompute);
    free(p->in_place);
    free(p->slot_off);
    free(p->slot_size);
    free(p->slot_birth);
    free(p->slot_death);
    free(p->grad_born.first);
    free(p->grad_born.layer);
    free(p->regen.first);
    free(p->regen.layer);
    memset(p, 0, sizeof *p);
}
