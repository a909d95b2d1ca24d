/* layer_activation.c: pointwise nonlinearities, output the size of the input:
 * activation (relu, leaky_relu, silu, gelu, sigmoid, tanh; camo_act) and softmax over
 * the channels of each pixel. */
#include "layer.h"

/* ---- activation ---- */

static void activation_forward(camo_net *net, camo_layer *l, int n, int training) {
    (void)training;
    net->be->act_forward(net->be, l->u.act.act, l->u.act.alpha, layer_numel(l, n), l->out,
                         layer_input(net, l, 0));
}

/* The derivative of ReLU and leaky ReLU (slope >= 0) depends only on the sign, which the
 * output shares with the input (x > 0 exactly when y > 0); sigmoid's and tanh's are
 * functions of the output. These need only their output, so they can run in place. */
static int act_needs_output_only(const camo_layer *l) {
    camo_act a = l->u.act.act;
    return a == CAMO_ACT_RELU || a == CAMO_ACT_SIGMOID || a == CAMO_ACT_TANH ||
           (a == CAMO_ACT_LEAKY_RELU && l->u.act.alpha >= 0.0f);
}

static unsigned activation_saves(const camo_net *net, const camo_layer *l) {
    (void)net;
    if (l->u.act.act == CAMO_ACT_IDENTITY) return 0;
    return act_needs_output_only(l) ? LAYER_SAVES_OUTPUT : LAYER_SAVES_INPUT(0);
}

static void activation_backward(camo_net *net, camo_layer *l, int n) {
    float *din = layer_input_grad(net, l, 0);
    if (!din) return;
    /* the input may be gone (or overwritten in place) when only the output is needed */
    int from_out = act_needs_output_only(l);
    const float *x = from_out ? l->out : layer_input(net, l, 0);
    net->be->act_backward(net->be, l->u.act.act, l->u.act.alpha, layer_numel(l, n), din,
                          l->dout, x, from_out ? l->out : NULL);
}

const camo_layer_ops activation_layer_ops = {
    .infer = layer_infer_same_size, .forward = activation_forward,
    .backward = activation_backward, .flops = layer_elementwise_flops,
    .saves = activation_saves, .in_place = 1, .recomputable = 1,
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

static unsigned softmax_saves(const camo_net *net, const camo_layer *l) {
    (void)net, (void)l;
    return LAYER_SAVES_OUTPUT;
}

const camo_layer_ops softmax_layer_ops = {
    .infer = layer_infer_same_size, .forward = softmax_forward, .backward = softmax_backward,
    .flops = layer_elementwise_flops, .saves = softmax_saves, .recomputable = 1,
};
