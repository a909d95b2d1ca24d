/* layer_conv.c: 2-D convolution layer (weights OHWI, optional bias). */
#include "layer.h"

static int conv2d_infer(camo_net *net, camo_layer *l) {
    camo_conv_desc *d = &l->u.conv.d;
    int C;
    layer_input_shape(net, l, 0, &d->H, &d->W, &C);
    d->N = net->N;
    if (camo_conv_desc_finish(d) != 0) return layer_input_size_error(l, d->H, d->W);
    l->H = d->P;
    l->W = d->Q;
    return 0;
}

static void conv2d_forward(camo_net *net, camo_layer *l, int n, int training) {
    (void)training;
    camo_conv_desc d = l->u.conv.d;
    d.N = n;
    const float *bias = l->u.conv.has_bias ? layer_param(net, l, 1)->data : NULL;
    net->be->conv2d_forward(net->be, &d, l->out, layer_input(net, l, 0),
                            layer_param(net, l, 0)->data, bias);
}

static void conv2d_backward(camo_net *net, camo_layer *l, int n) {
    camo_conv_desc d = l->u.conv.d;
    d.N = n;
    float *dw = layer_param_grad(net, l, 0);
    float *db = l->u.conv.has_bias ? layer_param_grad(net, l, 1) : NULL;
    if (dw) /* a layer's parameters freeze together, so db is NULL too when dw is */
        net->be->conv2d_backward_filter(net->be, &d, dw, db, l->dout, layer_input(net, l, 0));
    float *din = layer_input_grad(net, l, 0);
    if (din) net->be->conv2d_backward_data(net->be, &d, din, l->dout, layer_param(net, l, 0)->data);
}

static double conv2d_flops(const camo_net *net, const camo_layer *l) {
    (void)net;
    const camo_conv_desc *d = &l->u.conv.d;
    double macs = (double)d->P * d->Q * d->K * d->R * d->S * (d->C / d->groups);
    return 2.0 * macs + (l->u.conv.has_bias ? (double)d->P * d->Q * d->K : 0.0);
}

const camo_layer_ops conv2d_layer_ops = {
    .infer = conv2d_infer, .forward = conv2d_forward, .backward = conv2d_backward,
    .flops = conv2d_flops, .saves = layer_saves_input0 /* weight gradient */, .recomputable = 1,
};
