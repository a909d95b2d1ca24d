/* layer_activation.c: pointwise nonlinearities, output the size of the input:
 * activation (relu, leaky_relu, silu, gelu, sigmoid, tanh; camo_act) and softmax over
 * the channels of each pixel. */
#include "layer.h"

static int same_size_infer(camo_net *net, camo_layer *l) {
    int C;
    layer_input_shape(net, l, 0, &l->H, &l->W, &C);
    return 0;
}

/* ---- activation ---- */

static void activation_forward(camo_net *net, camo_layer *l, int n, int training) {
    (void)training;
    net->be->act_forward(net->be, l->u.act.act, l->u.act.alpha, layer_numel(l, n), l->out,
                         layer_input(net, l, 0));
}

static void activation_backward(camo_net *net, camo_layer *l, int n) {
    float *din = layer_input_grad(net, l, 0);
    if (din)
        net->be->act_backward(net->be, l->u.act.act, l->u.act.alpha, layer_numel(l, n), din,
                              l->dout, layer_input(net, l, 0), l->out);
}

const camo_layer_ops activation_layer_ops = {
    .infer = same_size_infer, .forward = activation_forward,
    .backward = activation_backward, .flops = layer_elementwise_flops,
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
    .infer = same_size_infer, .forward = softmax_forward, .backward = softmax_backward,
    .flops = layer_elementwise_flops,
};
