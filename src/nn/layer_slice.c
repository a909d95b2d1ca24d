/* layer_slice.c: `slice`, a range of channels [c0, c0 + C) of its input: torch's x[:, c0:c0+C]
 * (torch.split / chunk along channels, e.g. the channel groups of EdgeNeXt's
 * SplitTransposeBlock). No parameters; backward adds the gradient into that range. */
#include "layer.h"

#include "core/common.h"

static int input_channels(const camo_net *net, const camo_layer *l) {
    int H, W, C;
    layer_input_shape(net, l, 0, &H, &W, &C);
    return C;
}

static void slice_forward(camo_net *net, camo_layer *l, int n, int training) {
    (void)training;
    int Cin = input_channels(net, l);
    net->be->copy_rows(net->be, 0, n * l->H * l->W, l->C, l->out, l->C,
                       layer_input(net, l, 0) + l->u.slice.c0, Cin);
}

static void slice_backward(camo_net *net, camo_layer *l, int n) {
    float *din = layer_input_grad(net, l, 0);
    if (!din) return;
    int Cin = input_channels(net, l);
    net->be->copy_rows(net->be, 1, n * l->H * l->W, l->C, din + l->u.slice.c0, Cin, l->dout,
                       l->C);
}

const camo_layer_ops slice_layer_ops = {
    .infer = layer_infer_same_size, .forward = slice_forward, .backward = slice_backward,
    .flops = layer_elementwise_flops, .saves = layer_saves_nothing, .recomputable = 1,
};
