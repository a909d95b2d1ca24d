/* layer_resize.c: resize: bilinear interpolation to a scale, a fixed size or another
 * layer's size (PyTorch's F.interpolate(mode="bilinear")). */
#include "layer.h"

#include <math.h>

#include "core/common.h"

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

/* a scale_factor changes PyTorch's source-index rule, so the backends get it; 0: sizes */
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
    .infer = resize_infer, .forward = resize_forward, .backward = resize_backward,
    .flops = resize_flops, .saves = layer_saves_nothing, .recomputable = 1,
};
