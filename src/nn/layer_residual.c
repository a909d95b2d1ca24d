/* layer_residual.c: what transformer and ConvNeXt-style blocks put on a residual branch
 * before the add: layer_scale (a learned per-channel factor, timm's `gamma`) and drop_path
 * (stochastic depth: in training each image's branch is zeroed with probability p and the
 * others scaled by 1/(1-p); the identity in evaluation). */
#include "layer.h"

#include <stdlib.h>

#include "core/common.h"

/* ---- layer_scale: y = x * gamma, gamma (C) named after the layer itself (timm's bare
 * nn.Parameter `gamma` / `gamma_xca` of a block) ---- */

static void layer_scale_forward(camo_net *net, camo_layer *l, int n, int training) {
    (void)training;
    /* all pixels of all images as one image of n*H*W rows: gamma broadcasts over rows */
    net->be->mul_forward(net->be, CAMO_BCAST_SPATIAL, 1, n * l->H * l->W, l->C, l->out,
                         layer_input(net, l, 0), layer_param(net, l, 0)->data);
}

static void layer_scale_backward(camo_net *net, camo_layer *l, int n) {
    float *din = layer_input_grad(net, l, 0), *dg = layer_param_grad(net, l, 0);
    if (din || dg) /* either may be NULL */
        net->be->mul_backward(net->be, CAMO_BCAST_SPATIAL, 1, n * l->H * l->W, l->C, din, dg,
                              l->dout, layer_input(net, l, 0), layer_param(net, l, 0)->data);
}

const camo_layer_ops layer_scale_layer_ops = {
    .infer = layer_infer_same_size, .forward = layer_scale_forward,
    .backward = layer_scale_backward, .flops = layer_elementwise_flops,
    .saves = layer_saves_input0, .recomputable = 1,
};

/* ---- drop_path ---- */

static int drop_path_infer(camo_net *net, camo_layer *l) {
    layer_infer_same_size(net, l);
    free(l->u.drop.keep); /* host memory: one factor per image */
    l->u.drop.keep = camo_calloc((size_t)net->N, sizeof(float));
    return 0;
}

static void drop_path_release(camo_net *net, camo_layer *l) {
    (void)net;
    free(l->u.drop.keep);
    l->u.drop.keep = NULL;
}

/* Image i's draw in [0, 1): a function of (seed, step, global sample index, layer name)
 * only (net.h rng_*), so every replica count, thread count and resume draws alike. */
static float drop_path_uniform(const camo_net *net, const camo_layer *l, int i) {
    uint64_t key = camo_hash64(net->rng_seed ^ 0x64726f7070617468ull); /* "droppath" */
    key = camo_hash64(key ^ (uint64_t)net->rng_step);
    key = camo_hash64(key ^ (uint64_t)(net->rng_sample0 + i));
    return camo_rand_uniform(key, camo_fnv1a(l->name));
}

/* Runs of images with the same factor f: out = f * x (f == 0: zeros), or backward
 * din += f * dout (f == 0: nothing). */
static void drop_path_apply(camo_net *net, camo_layer *l, int n, int backward) {
    camo_backend *be = net->be;
    size_t img = (size_t)l->H * l->W * l->C;
    const float *f = l->u.drop.keep;
    float *x = layer_input(net, l, 0), *din = backward ? layer_input_grad(net, l, 0) : NULL;
    if (backward && !din) return;
    for (int i = 0, j; i < n; i = j) {
        for (j = i + 1; j < n && f[j] == f[i]; j++) {}
        size_t off = (size_t)i * img, cnt = (size_t)(j - i) * img;
        if (backward) {
            if (f[i] != 0.0f) be->axpy(be, cnt, f[i], l->dout + off, din + off);
        } else if (f[i] == 0.0f) {
            be->zero(be, l->out + off, cnt * sizeof(float));
        } else {
            be->copy(be, l->out + off, x + off, cnt * sizeof(float));
            if (f[i] != 1.0f) be->scale(be, cnt, f[i], l->out + off);
        }
    }
}

/* timm's drop_path: keep with probability 1 - p, kept images times 1/(1-p) (scale_by_keep);
 * p = 1 drops every image. Evaluation, and p = 0, pass the input through. */
static void drop_path_forward(camo_net *net, camo_layer *l, int n, int training) {
    float p = l->u.drop.p, keep = 1.0f - p;
    for (int i = 0; i < n; i++) {
        if (!training || p <= 0.0f) l->u.drop.keep[i] = 1.0f;
        else l->u.drop.keep[i] = drop_path_uniform(net, l, i) >= p ? 1.0f / keep : 0.0f;
    }
    drop_path_apply(net, l, n, 0);
}

static void drop_path_backward(camo_net *net, camo_layer *l, int n) {
    drop_path_apply(net, l, n, 1);
}

const camo_layer_ops drop_path_layer_ops = {
    .infer = drop_path_infer, .forward = drop_path_forward, .backward = drop_path_backward,
    .flops = layer_elementwise_flops, .release = drop_path_release,
    .saves = layer_saves_nothing, /* the kept factors */ .recomputable = 1,
};
