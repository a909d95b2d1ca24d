/* layer_merge.c: layers that join several inputs of one size: concat (along channels), add
 * (sum) and mul (product, broadcasting a 1-channel or 1x1 second input). */
#include "layer.h"

#include "core/common.h"

/* infer of all three: the output takes the inputs' size, which must agree (mul also
 * takes a 1x1 second input: channel attention) */
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

/* ---- concat: inputs side by side along channels, in list order ---- */

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
    .infer = check_inputs_same_size, .forward = concat_forward, .backward = concat_backward,
    .flops = layer_elementwise_flops, .saves = layer_saves_nothing, .recomputable = 1,
};

/* ---- add: the sum of 2 or more inputs of one shape ---- */

static void add_forward(camo_net *net, camo_layer *l, int n, int training) {
    (void)training;
    size_t cnt = layer_numel(l, n);
    net->be->add(net->be, cnt, l->out, layer_input(net, l, 0), layer_input(net, l, 1));
    for (int k = 2; k < l->n_in; k++)
        net->be->axpy(net->be, cnt, 1.0f, layer_input(net, l, k), l->out);
}

static void add_backward(camo_net *net, camo_layer *l, int n) {
    for (int k = 0; k < l->n_in; k++) {
        float *din = layer_input_grad(net, l, k);
        if (din) net->be->axpy(net->be, layer_numel(l, n), 1.0f, l->dout, din);
    }
}

const camo_layer_ops add_layer_ops = {
    .infer = check_inputs_same_size, .forward = add_forward, .backward = add_backward,
    .flops = layer_elementwise_flops, .saves = layer_saves_nothing, .recomputable = 1,
};

/* ---- mul: product of 2 inputs, the second broadcast when it has 1 channel or is 1x1 ---- */

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
    /* the op writes both gradients: an untrained side's goes to its unread buffer */
    if (!da) da = layer_input_grad_raw(net, l, 0);
    if (!db) db = layer_input_grad_raw(net, l, 1);
    net->be->mul_backward(net->be, l->u.mul.mode, n, l->H * l->W, l->C, da, db, l->dout,
                          layer_input(net, l, 0), layer_input(net, l, 1));
}

const camo_layer_ops mul_layer_ops = {
    .infer = mul_infer, .forward = mul_forward, .backward = mul_backward,
    .flops = layer_elementwise_flops, .saves = layer_saves_inputs, .recomputable = 1,
};
