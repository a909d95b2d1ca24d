/* layer_misc.c: parameter-free layers: activation, pooling, adaptive average pooling,
 * bilinear resize, concat, add, multiply, softmax. */
#include "layer.h"

#include <math.h>
#include <stdio.h>

#include "camo/common.h"

static size_t numel(const camo_layer *l, int n) { return (size_t)n * l->H * l->W * l->C; }

static int same_size_infer(camo_net *net, camo_layer *l) {
    int C;
    layer_input_shape(net, l, 0, &l->H, &l->W, &C);
    return 0;
}

static double elementwise_flops(const camo_net *net, const camo_layer *l) {
    (void)net;
    return (double)l->H * l->W * l->C;
}

/* ---- activation ---- */

static void activation_forward(camo_net *net, camo_layer *l, int n, int training) {
    (void)training;
    net->be->act_forward(net->be, l->u.act.act, l->u.act.alpha, numel(l, n), l->out,
                         layer_input(net, l, 0));
}

static void activation_backward(camo_net *net, camo_layer *l, int n) {
    float *din = layer_input_grad(net, l, 0);
    if (din)
        net->be->act_backward(net->be, l->u.act.act, l->u.act.alpha, numel(l, n), din, l->dout,
                              layer_input(net, l, 0), l->out);
}

const camo_layer_ops activation_layer_ops = {
    "activation", same_size_infer, activation_forward, activation_backward, elementwise_flops,
    NULL,
};

/* ---- max / average pooling ---- */

static int pool_infer(camo_net *net, camo_layer *l) {
    camo_pool_desc *d = &l->u.pool.d;
    layer_input_shape(net, l, 0, &d->H, &d->W, &d->C);
    d->N = net->N;
    if (camo_pool_desc_finish(d) != 0) {
        char msg[256];
        snprintf(msg, sizeof msg, "%s", camo_last_error());
        CAMO_ERR("%s: layer '%s': input %dx%d: %s", l->where, l->name, d->H, d->W, msg);
        return -1;
    }
    l->H = d->P;
    l->W = d->Q;
    layer_free(net, l->u.pool.argmax);
    l->u.pool.argmax = NULL;
    if (d->type == CAMO_POOL_MAX)
        l->u.pool.argmax = layer_alloc(net, numel(l, net->N) * sizeof(int));
    return 0;
}

static void pool_forward(camo_net *net, camo_layer *l, int n, int training) {
    (void)training;
    camo_pool_desc d = l->u.pool.d;
    d.N = n;
    net->be->pool_forward(net->be, &d, l->out, l->u.pool.argmax, layer_input(net, l, 0));
}

static void pool_backward(camo_net *net, camo_layer *l, int n) {
    float *din = layer_input_grad(net, l, 0);
    if (!din) return;
    camo_pool_desc d = l->u.pool.d;
    d.N = n;
    net->be->pool_backward(net->be, &d, din, l->dout, l->u.pool.argmax);
}

static double pool_flops(const camo_net *net, const camo_layer *l) {
    (void)net;
    return (double)l->H * l->W * l->C * l->u.pool.d.R * l->u.pool.d.S;
}

static void pool_release(camo_net *net, camo_layer *l) {
    layer_free(net, l->u.pool.argmax);
    l->u.pool.argmax = NULL;
}

const camo_layer_ops pool_layer_ops = {
    "pool", pool_infer, pool_forward, pool_backward, pool_flops, pool_release,
};

/* ---- adaptive average pooling ---- */

static int adaptive_avgpool_infer(camo_net *net, camo_layer *l) {
    int H, W, C;
    layer_input_shape(net, l, 0, &H, &W, &C);
    l->H = l->u.adaptive.P;
    l->W = l->u.adaptive.Q;
    return 0;
}

static void adaptive_avgpool_forward(camo_net *net, camo_layer *l, int n, int training) {
    (void)training;
    int H, W, C;
    layer_input_shape(net, l, 0, &H, &W, &C);
    net->be->adaptive_avg_forward(net->be, n, H, W, C, l->H, l->W, l->out,
                                  layer_input(net, l, 0));
}

static void adaptive_avgpool_backward(camo_net *net, camo_layer *l, int n) {
    float *din = layer_input_grad(net, l, 0);
    if (!din) return;
    int H, W, C;
    layer_input_shape(net, l, 0, &H, &W, &C);
    net->be->adaptive_avg_backward(net->be, n, H, W, C, l->H, l->W, din, l->dout);
}

static double adaptive_avgpool_flops(const camo_net *net, const camo_layer *l) {
    int H, W, C;
    layer_input_shape(net, l, 0, &H, &W, &C);
    return (double)H * W * C;
}

const camo_layer_ops adaptive_avgpool_layer_ops = {
    "adaptive_avgpool", adaptive_avgpool_infer, adaptive_avgpool_forward,
    adaptive_avgpool_backward, adaptive_avgpool_flops, NULL,
};

/* ---- bilinear resize ---- */

static int resize_infer(camo_net *net, camo_layer *l) {
    int H, W, C;
    layer_input_shape(net, l, 0, &H, &W, &C);
    switch (l->u.resize.mode) {
    case RESIZE_SCALE: /* PyTorch: floor(size * scale_factor) */
        l->H = (int)floor(H * (double)l->u.resize.scale);
        l->W = (int)floor(W * (double)l->u.resize.scale);
        break;
    case RESIZE_SIZE:
        l->H = l->u.resize.P;
        l->W = l->u.resize.Q;
        break;
    case RESIZE_LIKE:
        if (l->u.resize.like < 0) { l->H = net->H; l->W = net->W; }
        else { l->H = net->layers[l->u.resize.like].H; l->W = net->layers[l->u.resize.like].W; }
        break;
    }
    if (l->H < 1 || l->W < 1) {
        CAMO_ERR("%s: layer '%s': resize of %dx%d gives an empty %dx%d output", l->where,
                 l->name, H, W, l->H, l->W);
        return -1;
    }
    return 0;
}

static float resize_scale(const camo_layer *l) {
    return l->u.resize.mode == RESIZE_SCALE ? l->u.resize.scale : 0.0f;
}

static void resize_forward(camo_net *net, camo_layer *l, int n, int training) {
    (void)training;
    int H, W, C;
    layer_input_shape(net, l, 0, &H, &W, &C);
    float s = resize_scale(l);
    net->be->resize_forward(net->be, n, H, W, C, l->H, l->W, l->u.resize.align_corners, s, s,
                            l->out, layer_input(net, l, 0));
}

static void resize_backward(camo_net *net, camo_layer *l, int n) {
    float *din = layer_input_grad(net, l, 0);
    if (!din) return;
    int H, W, C;
    layer_input_shape(net, l, 0, &H, &W, &C);
    float s = resize_scale(l);
    net->be->resize_backward(net->be, n, H, W, C, l->H, l->W, l->u.resize.align_corners, s, s,
                             din, l->dout);
}

static double resize_flops(const camo_net *net, const camo_layer *l) {
    (void)net;
    return 7.0 * l->H * l->W * l->C;
}

const camo_layer_ops resize_layer_ops = {
    "resize", resize_infer, resize_forward, resize_backward, resize_flops, NULL,
};

/* ---- inputs that must agree in size: concat, add, mul ---- */

static int check_inputs_same_size(camo_net *net, camo_layer *l) {
    int H0, W0, C0;
    layer_input_shape(net, l, 0, &H0, &W0, &C0);
    for (int k = 1; k < l->n_in; k++) {
        int H, W, C;
        layer_input_shape(net, l, k, &H, &W, &C);
        if (H == H0 && W == W0) continue;
        if (l->type == CAMO_LAYER_MUL && H == 1 && W == 1) continue; /* channel attention */
        const camo_layer *a = layer_input_layer(net, l, 0), *b = layer_input_layer(net, l, k);
        CAMO_ERR("%s: layer '%s': inputs differ in size: '%s' is %dx%d, '%s' is %dx%d "
                 "(add a resize with like = \"%s\")", l->where, l->name,
                 a ? a->name : "input", H0, W0, b ? b->name : "input", H, W,
                 a ? a->name : "input");
        return -1;
    }
    l->H = H0;
    l->W = W0;
    return 0;
}

static void concat_forward(camo_net *net, camo_layer *l, int n, int training) {
    (void)training;
    int M = n * l->H * l->W, off = 0;
    for (int k = 0; k < l->n_in; k++) {
        int H, W, C;
        layer_input_shape(net, l, k, &H, &W, &C);
        net->be->channel_slice(net->be, 0, M, l->C, off, C, l->out, layer_input(net, l, k));
        off += C;
    }
}

static void concat_backward(camo_net *net, camo_layer *l, int n) {
    int M = n * l->H * l->W, off = 0;
    for (int k = 0; k < l->n_in; k++) {
        int H, W, C;
        layer_input_shape(net, l, k, &H, &W, &C);
        float *din = layer_input_grad(net, l, k);
        if (din) net->be->channel_slice(net->be, 1, M, l->C, off, C, l->dout, din);
        off += C;
    }
}

const camo_layer_ops concat_layer_ops = {
    "concat", check_inputs_same_size, concat_forward, concat_backward, elementwise_flops, NULL,
};

static void add_forward(camo_net *net, camo_layer *l, int n, int training) {
    (void)training;
    size_t cnt = numel(l, n);
    net->be->add(net->be, cnt, l->out, layer_input(net, l, 0), layer_input(net, l, 1));
    for (int k = 2; k < l->n_in; k++) net->be->axpy(net->be, cnt, 1.0f, layer_input(net, l, k), l->out);
}

static void add_backward(camo_net *net, camo_layer *l, int n) {
    for (int k = 0; k < l->n_in; k++) {
        float *din = layer_input_grad(net, l, k);
        if (din) net->be->axpy(net->be, numel(l, n), 1.0f, l->dout, din);
    }
}

const camo_layer_ops add_layer_ops = {
    "add", check_inputs_same_size, add_forward, add_backward, elementwise_flops, NULL,
};

static int mul_infer(camo_net *net, camo_layer *l) {
    if (check_inputs_same_size(net, l) != 0) return -1;
    int H, W, C;
    layer_input_shape(net, l, 1, &H, &W, &C);
    if (H == 1 && W == 1 && !(l->H == 1 && l->W == 1)) l->u.mul.mode = CAMO_BCAST_SPATIAL;
    else if (C == 1 && l->C != 1) l->u.mul.mode = CAMO_BCAST_CHANNEL;
    else l->u.mul.mode = CAMO_BCAST_NONE;
    if (l->u.mul.mode == CAMO_BCAST_SPATIAL && C != l->C) {
        CAMO_ERR("%s: layer '%s': a 1x1 multiplier needs %d channels, not %d", l->where,
                 l->name, l->C, C);
        return -1;
    }
    return 0;
}

static void mul_forward(camo_net *net, camo_layer *l, int n, int training) {
    (void)training;
    net->be->mul_forward(net->be, l->u.mul.mode, n, l->H * l->W, l->C, l->out,
                         layer_input(net, l, 0), layer_input(net, l, 1));
}

static void mul_backward(camo_net *net, camo_layer *l, int n) {
    float *da = layer_input_grad(net, l, 0), *db = layer_input_grad(net, l, 1);
    if (!da && !db) return;
    if (!da) da = layer_input_grad_raw(net, l, 0);
    if (!db) db = layer_input_grad_raw(net, l, 1);
    net->be->mul_backward(net->be, l->u.mul.mode, n, l->H * l->W, l->C, da, db, l->dout,
                          layer_input(net, l, 0), layer_input(net, l, 1));
}

const camo_layer_ops mul_layer_ops = {
    "mul", mul_infer, mul_forward, mul_backward, elementwise_flops, NULL,
};

/* ---- softmax over channels ---- */

static void softmax_forward(camo_net *net, camo_layer *l, int n, int training) {
    (void)training;
    net->be->softmax_forward(net->be, n * l->H * l->W, l->C, l->out, layer_input(net, l, 0));
}

static void softmax_backward(camo_net *net, camo_layer *l, int n) {
    float *din = layer_input_grad(net, l, 0);
    if (din) net->be->softmax_backward(net->be, n * l->H * l->W, l->C, din, l->dout, l->out);
}

const camo_layer_ops softmax_layer_ops = {
    "softmax", same_size_infer, softmax_forward, softmax_backward, elementwise_flops, NULL,
};
