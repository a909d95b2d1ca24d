/* layer_pool.c: spatial pooling: pool (max or average over a window, camo_pool_desc) and
 * adaptive_avgpool (average down to a fixed output size). */
#include "layer.h"

/* ---- max / average pooling ---- */

static int pool_infer(camo_net *net, camo_layer *l) {
    camo_pool_desc *d = &l->u.pool.d;
    layer_input_shape(net, l, 0, &d->H, &d->W, &d->C);
    d->N = net->N;
    if (camo_pool_desc_finish(d) != 0) return layer_input_size_error(l, d->H, d->W);
    l->H = d->P;
    l->W = d->Q;
    LAYER_DROP(net, l->u.pool.argmax); /* the input size may have changed */
    if (d->type == CAMO_POOL_MAX)
        l->u.pool.argmax = layer_alloc(net, layer_numel(l, net->N) * sizeof(int));
    return 0;
}

static void pool_release(camo_net *net, camo_layer *l) { LAYER_DROP(net, l->u.pool.argmax); }

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

const camo_layer_ops pool_layer_ops = {
    .infer = pool_infer, .forward = pool_forward, .backward = pool_backward,
    .flops = pool_flops, .release = pool_release, .saves = layer_saves_nothing, /* argmax */
    .recomputable = 1,
};

/* ---- adaptive average pooling ---- */

static int adaptive_avgpool_infer(camo_net *net, camo_layer *l) {
    (void)net;
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
    .infer = adaptive_avgpool_infer, .forward = adaptive_avgpool_forward,
    .backward = adaptive_avgpool_backward, .flops = adaptive_avgpool_flops,
    .saves = layer_saves_nothing, .recomputable = 1,
};
