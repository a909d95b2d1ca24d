/* net.c: network lifecycle: parameter blocks, activation allocation, forward and backward
 * traversal, parameter access in PyTorch layout, summary. Parsing is in net_parse.c. */
#include "layer.h"

#include <fnmatch.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "net_plan.h"

const camo_layer_ops *const camo_layer_table[CAMO_LAYER_COUNT] = {
#define X(id, fn) [CAMO_LAYER_##id] = &fn##_layer_ops,
    CAMO_LAYER_TYPES(X)
#undef X
};

const char *const camo_layer_names[CAMO_LAYER_COUNT] = {
#define X(id, fn) [CAMO_LAYER_##id] = #fn,
    CAMO_LAYER_TYPES(X)
#undef X
};

/* ---- helpers used by the layer files ---- */

const camo_layer *layer_input_layer(const camo_net *net, const camo_layer *l, int k) {
    return l->in[k] < 0 ? NULL : &net->layers[l->in[k]];
}

void layer_input_shape(const camo_net *net, const camo_layer *l, int k, int *H, int *W, int *C) {
    const camo_layer *src = layer_input_layer(net, l, k);
    *H = src ? src->H : net->H;
    *W = src ? src->W : net->W;
    *C = src ? src->C : net->input_channels;
}

float *layer_input(camo_net *net, const camo_layer *l, int k) {
    return l->in[k] < 0 ? net->input : net->layers[l->in[k]].out;
}

float *layer_input_grad(camo_net *net, const camo_layer *l, int k) {
    if (l->in[k] < 0) return net->want_input_grad ? net->dinput : NULL;
    camo_layer *src = &net->layers[l->in[k]];
    return src->requires_grad ? src->dout : NULL;
}

float *layer_input_grad_raw(camo_net *net, const camo_layer *l, int k) {
    return l->in[k] < 0 ? net->dinput : net->layers[l->in[k]].dout;
}

camo_param *layer_param(camo_net *net, const camo_layer *l, int i) {
    CAMO_ASSERT(i < l->n_params);
    return &net->params[l->param0 + i];
}

float *layer_param_grad(camo_net *net, const camo_layer *l, int i) {
    camo_param *p = layer_param(net, l, i);
    return (p->kind == CAMO_PARAM_WEIGHT && !p->frozen) ? p->grad : NULL;
}

void *layer_alloc(camo_net *net, size_t bytes) {
    void *p = net->be->alloc(net->be, bytes);
    if (!p) CAMO_DIE("%s", camo_last_error());
    net->alloc_bytes += bytes;
    return p;
}

void layer_free(camo_net *net, void *p) {
    if (p) net->be->free(net->be, p);
}

unsigned layer_saves_nothing(const camo_net *net, const camo_layer *l) {
    (void)net, (void)l;
    return 0;
}

unsigned layer_saves_input0(const camo_net *net, const camo_layer *l) {
    (void)net, (void)l;
    return LAYER_SAVES_INPUT(0);
}

unsigned layer_saves_inputs(const camo_net *net, const camo_layer *l) {
    (void)net;
    return (1u << l->n_in) - 1u;
}

int layer_infer_same_size(camo_net *net, camo_layer *l) {
    int C;
    layer_input_shape(net, l, 0, &l->H, &l->W, &C);
    return 0;
}

double layer_elementwise_flops(const camo_net *net, const camo_layer *l) {
    (void)net;
    return (double)l->H * l->W * l->C;
}

int layer_input_size_error(const camo_layer *l, int H, int W) {
    char msg[256]; /* copied: CAMO_ERR rewrites the buffer camo_last_error returns */
    snprintf(msg, sizeof msg, "%s", camo_last_error());
    CAMO_ERR("%s: layer '%s': input %dx%d: %s", l->where, l->name, H, W, msg);
    return -1;
}

/* ---- parameter blocks ---- */

/* Weights and their gradients share one layout, in REVERSE parameter order: the last
 * layer's gradients come first, as backward produces them, so DDP buckets are contiguous.
 * Each tensor takes camo_param_padded(numel) floats, so every one starts 256-byte aligned
 * (the blocks themselves are: backends align alloc); the gaps are zeroed by alloc. */
void net_alloc_params(camo_net *net) {
    size_t nw = 0, nb = 0;
    for (int i = 0; i < net->n_params; i++) {
        camo_param *p = &net->params[i];
        if (p->kind == CAMO_PARAM_WEIGHT) nw += camo_param_padded(p->numel);
        else if (p->kind == CAMO_PARAM_BUFFER) nb += camo_param_padded(p->numel);
    }
    net->n_weight_floats = nw;
    net->n_buffer_floats = nb;
    net->param_block = layer_alloc(net, (nw ? nw : 1) * sizeof(float));
    net->grad_block = layer_alloc(net, (nw ? nw : 1) * sizeof(float));
    net->buffer_block = layer_alloc(net, (nb ? nb : 1) * sizeof(float));
    if (((uintptr_t)net->param_block | (uintptr_t)net->grad_block |
         (uintptr_t)net->buffer_block) % (CAMO_PARAM_ALIGN * sizeof(float)))
        CAMO_DIE("backend %s: alloc returned a block that is not %zu-byte aligned",
                 net->be->name, CAMO_PARAM_ALIGN * sizeof(float));
    size_t off = 0;
    for (int i = net->n_params - 1; i >= 0; i--) {
        camo_param *p = &net->params[i];
        if (p->kind != CAMO_PARAM_WEIGHT) continue;
        p->data = net->param_block + off;
        p->grad = net->grad_block + off;
        off += camo_param_padded(p->numel);
    }
    off = 0;
    for (int i = 0; i < net->n_params; i++) {
        camo_param *p = &net->params[i];
        if (p->kind != CAMO_PARAM_BUFFER) continue;
        p->data = net->buffer_block + off;
        off += camo_param_padded(p->numel);
    }
}

static void fill_host(float *x, size_t n, float v) {
    for (size_t i = 0; i < n; i++) x[i] = v;
}

/* PyTorch defaults: conv weight and bias uniform(+-1/sqrt(fan_in)) (kaiming_uniform with
 * a = sqrt(5)); norm scale 1, shift 0; running mean 0, var 1. Values come from a counter
 * RNG keyed by (seed, name), so they do not depend on parameter order or replica. */
void camo_net_init_weights(camo_net *net, uint64_t seed) {
    for (int i = 0; i < net->n_params; i++) {
        camo_param *p = &net->params[i];
        if (p->kind == CAMO_PARAM_COUNTER) { *p->counter = 0; continue; }
        float *h = camo_malloc(p->numel * sizeof(float));
        const camo_layer *l = &net->layers[p->layer];
        size_t nlen = strlen(p->name);
        int is_bias = nlen >= 4 && strcmp(p->name + nlen - 4, "bias") == 0;
        if (l->type == CAMO_LAYER_LAYER_SCALE) {
            fill_host(h, p->numel, l->u.scale.init);
        } else if (l->type == CAMO_LAYER_CONV2D) {
            float bound = 1.0f / sqrtf((float)p->fan_in);
            uint64_t key = seed * 0x9E3779B97F4A7C15ull ^ camo_fnv1a(p->name);
            for (size_t j = 0; j < p->numel; j++)
                h[j] = bound * (2.0f * camo_rand_uniform(key, j) - 1.0f);
        } else if (strstr(p->name, "running_var") || (!is_bias && p->kind == CAMO_PARAM_WEIGHT)) {
            fill_host(h, p->numel, 1.0f);
        } else {
            fill_host(h, p->numel, 0.0f);
        }
        net->be->upload(net->be, p->data, h, p->numel * sizeof(float));
        free(h);
    }
}

/* ---- PyTorch layout conversion ---- */

/* Conv weights: OHWI in memory, OIHW in PyTorch; to_torch picks the direction. A copy,
 * so each value moves unchanged either way. */
static void convert_ohwi(const camo_param *p, const float *src, float *dst, int to_torch) {
    int64_t K = p->shape[0], C = p->shape[1], R = p->shape[2], S = p->shape[3];
    for (int64_t k = 0; k < K; k++)
        for (int64_t c = 0; c < C; c++)
            for (int64_t r = 0; r < R; r++)
                for (int64_t s = 0; s < S; s++) {
                    int64_t ohwi = ((k * R + r) * S + s) * C + c;
                    int64_t oihw = ((k * C + c) * R + r) * S + s;
                    if (to_torch) dst[oihw] = src[ohwi];
                    else dst[ohwi] = src[oihw];
                }
}

static void get_converted(camo_net *net, const camo_param *p, const float *dev, float *out) {
    size_t bytes = p->numel * sizeof(float);
    if (p->layout == CAMO_LAYOUT_PLAIN) { net->be->download(net->be, out, dev, bytes); return; }
    float *tmp = camo_malloc(bytes);
    net->be->download(net->be, tmp, dev, bytes);
    convert_ohwi(p, tmp, out, 1);
    free(tmp);
}

void camo_param_get(camo_net *net, const camo_param *p, float *host) {
    if (p->kind == CAMO_PARAM_COUNTER) { host[0] = (float)*p->counter; return; }
    get_converted(net, p, p->data, host);
}

void camo_param_grad_get(camo_net *net, const camo_param *p, float *host) {
    CAMO_ASSERT(p->kind == CAMO_PARAM_WEIGHT);
    get_converted(net, p, p->grad, host);
}

void camo_param_read(camo_net *net, const camo_param *p, const float *dev, float *host) {
    get_converted(net, p, dev, host);
}

void camo_param_write(camo_net *net, const camo_param *p, float *dev, const float *host) {
    size_t bytes = p->numel * sizeof(float);
    if (p->layout == CAMO_LAYOUT_PLAIN) { net->be->upload(net->be, dev, host, bytes); return; }
    float *tmp = camo_malloc(bytes);
    convert_ohwi(p, host, tmp, 0);
    net->be->upload(net->be, dev, tmp, bytes);
    free(tmp);
}

void camo_param_set(camo_net *net, camo_param *p, const float *host) {
    if (p->kind == CAMO_PARAM_COUNTER) { *p->counter = (int64_t)host[0]; return; }
    camo_param_write(net, p, p->data, host);
}

camo_param *camo_net_find_param(camo_net *net, const char *name) {
    for (int i = 0; i < net->n_params; i++)
        if (strcmp(net->params[i].name, name) == 0) return &net->params[i];
    return NULL;
}

void camo_shape_str(char *buf, size_t n, int ndim, const int64_t *shape) {
    size_t k = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < ndim && k < n; i++)
        k += (size_t)snprintf(buf + k, n - k, i ? ", %lld" : "%lld", (long long)shape[i]);
    if (k < n) snprintf(buf + k, n - k, "]");
}

/* the trainable values themselves: n_weight_floats also counts the alignment gaps */
size_t camo_net_param_count(const camo_net *net) {
    size_t n = 0;
    for (int i = 0; i < net->n_params; i++)
        if (net->params[i].kind == CAMO_PARAM_WEIGHT) n += net->params[i].numel;
    return n;
}

/* ---- activations: one planned arena (net_plan.h) ---- */

static void free_plan(camo_plan **p) {
    if (*p) camo_plan_free(*p);
    free(*p);
    *p = NULL;
}

static void release_activations(camo_net *net) {
    for (int i = 0; i < net->n_layers; i++) {
        camo_layer *l = &net->layers[i];
        l->out = l->dout = NULL;
        if (camo_layer_table[l->type]->release) camo_layer_table[l->type]->release(net, l);
    }
    LAYER_DROP(net, net->arena);
    LAYER_DROP(net, net->input);
    LAYER_DROP(net, net->dinput);
    free_plan(&net->plan);
    free_plan(&net->plan_eval);
    net->eval_active = 0;
}

/* layer i's tensor of kind k under the plan the layers follow now (NULL: it has none) */
static float *plan_ptr(const camo_net *net, int i, int k) {
    const camo_plan *p = net->eval_active ? net->plan_eval : net->plan;
    size_t n = (size_t)(net->eval_active ? net->N_eval : net->N_train);
    return plan_has(p, i, k) ? net->arena + n * plan_offset(p, i, k) : NULL;
}

/* Point every layer at its output and gradient under the training plan (eval = 0) or the
 * evaluation plan (1): the arena is shared, so switching only moves pointers. */
static void point_layers(camo_net *net, int eval) {
    net->eval_active = eval;
    for (int i = 0; i < net->n_layers; i++) {
        net->layers[i].out = plan_ptr(net, i, PLAN_OUT);
        net->layers[i].dout = plan_ptr(net, i, PLAN_GRAD);
    }
}

static int infer_layers(camo_net *net) {
    for (int i = 0; i < net->n_layers; i++)
        if (camo_layer_table[net->layers[i].type]->infer(net, &net->layers[i]) != 0) return -1;
    return 0;
}

static int make_plan(camo_net *net, camo_plan **p, int inference) {
    *p = camo_calloc(1, sizeof **p);
    return camo_plan_make(net, net->lean, net->plan_plain, inference, *p);
}

/* Buffers for training batches of up to N_train images and, when N_eval > 0, evaluation
 * batches of up to N_eval (forward only, its own plan in the same arena); layer scratch
 * for the larger. 0, or -1 + error (everything released). */
static int size_buffers(camo_net *net, int N_train, int N_eval, int H, int W) {
    release_activations(net);
    int N = CAMO_MAX(N_train, N_eval);
    net->N = N, net->N_train = N_train, net->N_eval = N_eval;
    net->H = H, net->W = W;
    size_t in_bytes = (size_t)N * H * W * net->input_channels * sizeof(float);
    net->input = layer_alloc(net, in_bytes);
    net->dinput = layer_alloc(net, in_bytes);
    /* debugging switches, read here so a test can set them before the first plan */
    net->poison = getenv("CAMO_POISON") && atoi(getenv("CAMO_POISON")) > 0;
    net->plan_plain = getenv("CAMO_PLAN") && strcmp(getenv("CAMO_PLAN"), "plain") == 0;
    size_t start = net->alloc_bytes;
    if (infer_layers(net) != 0 || make_plan(net, &net->plan, 0) != 0 ||
        (N_eval > 0 && make_plan(net, &net->plan_eval, 1) != 0)) {
        release_activations(net);
        net->N = net->N_train = net->N_eval = 0;
        return -1;
    }
    net->mem_scratch = net->alloc_bytes - start; /* what infer took */
    size_t train = (size_t)N_train * net->plan->arena_img;
    size_t eval = N_eval > 0 ? (size_t)N_eval * net->plan_eval->arena_img : 0;
    net->mem_arena = CAMO_MAX(train, eval) * sizeof(float);
    net->arena = layer_alloc(net, net->mem_arena ? net->mem_arena : sizeof(float));
    point_layers(net, 0);
    return 0;
}

int camo_net_set_input_size(camo_net *net, int N, int H, int W) {
    if (net->input && N == net->N_train && !net->N_eval && H == net->H && W == net->W)
        return 0;
    if (N < 1 || H < 1 || W < 1) {
        CAMO_ERR("%s: invalid input size %dx%dx%d", net->source, N, H, W);
        return -1;
    }
    return size_buffers(net, N, 0, H, W);
}

int camo_net_set_eval_size(camo_net *net, int B, int H, int W) {
    if (net->input && B == net->N_eval && H == net->H && W == net->W) return 0;
    if (B < 1 || H < 1 || W < 1) {
        CAMO_ERR("%s: invalid evaluation size %dx%dx%d", net->source, B, H, W);
        return -1;
    }
    /* another image size: the training batch is sized for it too, as before; a net that
     * only evaluates (camotrain eval) has no room for training at all */
    return size_buffers(net, net->input ? net->N_train : 0, B, H, W);
}

/* a change of plan: the buffers are made again for the same sizes */
static int replan(camo_net *net) {
    if (!net->input) return 0;
    return size_buffers(net, net->N_train, net->N_eval, net->H, net->W);
}

int camo_net_keep_layer(camo_net *net, int i) {
    CAMO_ASSERT(i >= 0 && i < net->n_layers);
    net->layers[i].keep = 1;
    return replan(net);
}

int camo_net_set_lean(camo_net *net, int lean) {
    if (net->lean == !!lean) return 0;
    net->lean = !!lean;
    return replan(net);
}

/* Length of the block of `name` that the pattern names (its first components, each
 * matching the pattern's), 0 when the layer is not inside such a block. */
static size_t block_prefix(const char *pattern, const char *name) {
    char pat[CAMO_NAME_MAX], nm[CAMO_NAME_MAX];
    const char *p = pattern, *q = name;
    while (*p) {
        size_t lp = strcspn(p, "."), lq = strcspn(q, ".");
        if (!*q || lp >= sizeof pat || lq >= sizeof nm) return 0;
        memcpy(pat, p, lp), pat[lp] = 0;
        memcpy(nm, q, lq), nm[lq] = 0;
        if (fnmatch(pat, nm, 0) != 0) return 0;
        p += lp + (p[lp] == '.');
        q += lq;
        if (*q == '.' && *p) q++;
    }
    return *q == '.' ? (size_t)(q - name) : 0;
}

/* 1 when layer i is inside a block a checkpoint_blocks pattern names; *len: the block
 * name's length */
static int layer_block(const camo_net *net, int i, size_t *len) {
    const char *pats = net->checkpoint_blocks;
    for (const char *p = pats; p && *p; p += strcspn(p, ",") + (p[strcspn(p, ",")] == ',')) {
        char pat[CAMO_NAME_MAX];
        size_t lp = strcspn(p, ",");
        if (lp >= sizeof pat) continue;
        memcpy(pat, p, lp), pat[lp] = 0;
        if ((*len = block_prefix(pat, net->layers[i].name)) > 0) return 1;
    }
    return 0;
}

int camo_net_set_checkpointing(camo_net *net, int on) {
    if (on && (!net->checkpoint_blocks || !net->checkpoint_blocks[0])) {
        CAMO_ERR("%s: train.checkpointing: the network names no checkpoint_blocks (a list of "
                 "block-name patterns, docs/models.md)", net->source);
        return -1;
    }
    int blocks = 0;
    for (int i = 0; i < net->n_layers; i++) {
        size_t len = 0, next_len = 0;
        int in = layer_block(net, i, &len);
        /* a block's last layer is its output: kept; the next layer is outside the block */
        int last = !in || i + 1 == net->n_layers || !layer_block(net, i + 1, &next_len) ||
                   next_len != len || strncmp(net->layers[i].name, net->layers[i + 1].name, len);
        net->layers[i].recompute = on && in && !last;
        blocks += in && last;
    }
    net->checkpointing = on;
    return replan(net) ? -1 : blocks;
}

/* Sizes at 1 and 2 images: a (per image) and b (fixed) of every a*N + b. */
int camo_net_memory(camo_net *net, camo_net_mem *m) {
    memset(m, 0, sizeof *m);
    int N = net->N_train, H = net->H, W = net->W;
    if (!net->input) {
        CAMO_ERR("%s: camo_net_memory before camo_net_set_input_size", net->source);
        return -1;
    }
    size_t nw = net->n_weight_floats, nb = net->n_buffer_floats;
    m->weights = m->grads = (nw ? nw : 1) * sizeof(float); /* as net_alloc_params asks */
    m->buffers = (nb ? nb : 1) * sizeof(float);
    int N_eval = net->N_eval;
    if (camo_net_set_input_size(net, 1, H, W)) return -1;
    size_t s1 = net->mem_scratch;
    if (camo_net_set_input_size(net, 2, H, W)) return -1;
    const camo_plan *p = net->plan;
    camo_plan ev;
    if (camo_plan_make(net, net->lean, net->plan_plain, 1, &ev)) return -1;
    m->eval_arena_img = ev.arena_img * sizeof(float);
    camo_plan_free(&ev);
    m->input_img = 2 * (size_t)H * W * net->input_channels * sizeof(float);
    m->arena_img = p->arena_img * sizeof(float);
    m->kept_img = p->kept_img * sizeof(float);
    m->grad_peak_img = p->grad_peak_img * sizeof(float);
    m->plain_img = p->plain_img * sizeof(float);
    m->scratch_img = net->mem_scratch - s1;
    m->scratch_fixed = 2 * s1 - net->mem_scratch;
    return size_buffers(net, N, N_eval, H, W);
}

/* ---- forward / backward ---- */

/* Images layer l runs on: all n, or those a mixture-of-experts dispatch routed to its
 * branch (0: the branch is idle this forward, its layers are skipped both ways). */
static int layer_rows(const camo_net *net, const camo_layer *l, int n) {
    return l->rows_from > 0 ? net->layers[l->rows_from - 1].routed_rows : n;
}

/* CAMO_POISON: NaN into every slot whose life ended at time t (not the outputs', which
 * live to the end of the step) */
static void poison_dead(camo_net *net, int t) {
    const camo_plan *p = net->eval_active ? net->plan_eval : net->plan;
    size_t count = (size_t)(net->eval_active ? net->N_eval : net->N_train);
    for (int s = 0; s < p->n_slots; s++) {
        if (p->slot_death[s] != t || t >= p->steps - 1) continue;
        size_t n = count * p->slot_size[s];
        float *x = net->arena + count * p->slot_off[s];
        net->be->zero(net->be, x, n * sizeof(float));
        net->be->scale(net->be, n, NAN, x);
    }
}

void camo_net_forward(camo_net *net, int n, int training) {
    CAMO_ASSERT(net->input && n >= 1 && n <= net->N);
    /* evaluation batches use the forward-only plan once camo_net_set_eval_size made one */
    int eval = !training && net->plan_eval && n <= net->N_eval;
    CAMO_ASSERT(eval || n <= net->N_train);
    if (eval != net->eval_active) point_layers(net, eval);
    net->training = training;
    for (int i = 0; i < net->n_layers; i++) {
        camo_layer *l = &net->layers[i];
        l->out = plan_ptr(net, i, PLAN_OUT); /* backward may have moved it to its second life */
        int m = layer_rows(net, l, n);
        if (m > 0) camo_layer_table[l->type]->forward(net, l, m, training);
        if (net->poison) poison_dead(net, i);
    }
}

/* a layer's output or gradient under the plan the layers follow now */
static size_t layer_bytes(const camo_net *net, const camo_layer *l) {
    size_t n = (size_t)(net->eval_active ? net->N_eval : net->N_train);
    return n * l->H * l->W * l->C * sizeof(float);
}

void camo_net_zero_act_grads(camo_net *net) {
    for (int o = 0; o < net->n_outputs; o++) {
        camo_layer *l = &net->layers[net->outputs[o].layer];
        net->be->zero(net->be, l->dout, layer_bytes(net, l));
    }
    net->be->zero(net->be, net->dinput,
                  (size_t)net->N * net->H * net->W * net->input_channels * sizeof(float));
}

void camo_net_zero_param_grads(camo_net *net) {
    net->be->zero(net->be, net->grad_block, net->n_weight_floats * sizeof(float));
}

/* A layer runs backward when it, or anything upstream, has a trainable parameter: the same
 * rule as PyTorch's requires_grad, so frozen encoders cost no backward time. */
static void mark_requires_grad(camo_net *net) {
    for (int i = 0; i < net->n_layers; i++) {
        camo_layer *l = &net->layers[i];
        int rg = 0;
        for (int j = 0; j < l->n_params && !rg; j++) {
            camo_param *p = layer_param(net, l, j);
            rg = p->kind == CAMO_PARAM_WEIGHT && !p->frozen;
        }
        for (int k = 0; k < l->n_in && !rg; k++)
            rg = l->in[k] < 0 ? net->want_input_grad : net->layers[l->in[k]].requires_grad;
        l->requires_grad = rg;
    }
}

/* Before the backward at time t: zero the gradients whose life begins (backward adds into
 * them), regenerate the dropped outputs that backward reads from now on, in forward order
 * (a regenerated layer's inputs are there: kept, or regenerated just before). */
static void backward_prepare(camo_net *net, int t, int n) {
    const camo_plan *p = net->plan;
    int count;
    const int *born = plan_at(&p->grad_born, t, &count);
    for (int k = 0; k < count; k++) {
        camo_layer *l = &net->layers[born[k]];
        if (l->requires_grad) net->be->zero(net->be, l->dout, layer_bytes(net, l));
    }
    const int *regen = plan_at(&p->regen, t, &count);
    for (int k = 0; k < count; k++) {
        int i = regen[k];
        camo_layer *l = &net->layers[i];
        l->out = plan_ptr(net, i, PLAN_REC);
        int m = layer_rows(net, l, n);
        /* after an evaluation-mode forward (frozen statistics) redo that one */
        int mode = net->training ? CAMO_FWD_RECOMPUTE : 0;
        if (m > 0) camo_layer_table[l->type]->forward(net, l, m, mode);
    }
}

void camo_net_backward(camo_net *net, int n) {
    CAMO_ASSERT(!net->eval_active && n <= net->N_train); /* the evaluation plan keeps nothing */
    mark_requires_grad(net);
    int L = net->n_layers;
    for (int i = L - 1; i >= 0; i--) {
        camo_layer *l = &net->layers[i];
        int t = 2 * L - i;
        backward_prepare(net, t, n);
        int m = layer_rows(net, l, n);
        if (l->requires_grad && m > 0) camo_layer_table[l->type]->backward(net, l, m);
        /* every parameter belongs to one layer: its gradient is final from here on */
        if (net->on_layer_grads && l->n_params) net->on_layer_grads(net->on_layer_grads_ctx, i);
        if (net->poison) poison_dead(net, t);
    }
}

float *camo_net_output(camo_net *net, int i, int *H, int *W, int *C) {
    CAMO_ASSERT(i >= 0 && i < net->n_outputs);
    camo_layer *l = &net->layers[net->outputs[i].layer];
    if (H) *H = l->H;
    if (W) *W = l->W;
    if (C) *C = l->C;
    return l->out;
}

float *camo_net_output_grad(camo_net *net, int i) {
    CAMO_ASSERT(i >= 0 && i < net->n_outputs);
    return net->layers[net->outputs[i].layer].dout;
}

float *camo_net_input_grad(camo_net *net) { return net->dinput; }

void camo_net_free(camo_net *net) {
    if (!net) return;
    release_activations(net);
    layer_free(net, net->param_block);
    layer_free(net, net->grad_block);
    layer_free(net, net->buffer_block);
    for (int g = 0; g < net->n_groups; g++) free(net->group_prefixes[g]);
    free(net->checkpoint_blocks);
    free(net->layers);
    free(net->params);
    free(net->source);
    free(net);
}

/* ---- summary ---- */

double camo_net_forward_flops(const camo_net *net) {
    double f = 0;
    for (int i = 0; i < net->n_layers; i++)
        f += camo_layer_table[net->layers[i].type]->flops(net, &net->layers[i]);
    return f;
}

static void human(double v, char *buf, size_t n) {
    const char *unit[] = {"", "K", "M", "G", "T"};
    int u = 0;
    while (v >= 1000 && u < 4) { v /= 1000; u++; }
    snprintf(buf, n, u ? "%.2f%s" : "%.0f%s", v, unit[u]);
}

void camo_net_summary(const camo_net *net, FILE *out) {
    fprintf(out, "network %s (%s), input %dx%dx%d\n", net->name, net->source, net->H, net->W,
            net->input_channels);
    fprintf(out, "%4s  %-28s %-16s %-18s %10s %10s\n", "#", "layer", "type", "output (HxWxC)",
            "params", "FLOPs");
    for (int i = 0; i < net->n_layers; i++) {
        const camo_layer *l = &net->layers[i];
        size_t np = 0;
        for (int j = 0; j < l->n_params; j++)
            if (net->params[l->param0 + j].kind == CAMO_PARAM_WEIGHT)
                np += net->params[l->param0 + j].numel;
        char shape[32], ps[16], fs[16];
        snprintf(shape, sizeof shape, "%dx%dx%d", l->H, l->W, l->C);
        human((double)np, ps, sizeof ps);
        human(camo_layer_table[l->type]->flops(net, l), fs, sizeof fs);
        fprintf(out, "%4d  %-28s %-16s %-18s %10s %10s\n", i, l->name,
                camo_layer_names[l->type], shape, np ? ps : "-", fs);
    }
    for (int i = 0; i < net->n_outputs; i++) {
        const camo_layer *l = &net->layers[net->outputs[i].layer];
        fprintf(out, "output %-10s <- %-20s %dx%dx%d  loss weight %g\n", net->outputs[i].name,
                l->name, l->H, l->W, l->C, net->outputs[i].weight);
    }
    char ps[16], fs[16];
    size_t np = camo_net_param_count(net);
    human((double)np, ps, sizeof ps);
    human(camo_net_forward_flops(net), fs, sizeof fs);
    fprintf(out, "parameters: %zu (%s, %.1f MB fp32)   forward FLOPs per image: %s\n", np, ps,
            np * 4.0 / 1e6, fs);
}
