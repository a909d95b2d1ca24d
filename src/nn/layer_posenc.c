/* layer_posenc.c: `fourier_pos`, timm's PositionalEncodingFourier (EdgeNeXt, XCiT) before
 * its 1x1 projection: a fixed sine/cosine encoding of every pixel's position, 2 * hidden_dim
 * channels, the same for every image. Only the input's height and width are read; nothing
 * flows back to it, and there are no parameters (the projection is a `conv` of the file).
 *
 * With eps = 1e-6, scale = 2 pi, T = temperature, D = hidden_dim, j = 0 .. D-1:
 *   y = (h + 1) / (H + eps) * scale,  x = (w + 1) / (W + eps) * scale,
 *   t_j = T ^ (2 floor(j / 2) / D),  channel j: sin(y / t_j) (j even) or cos(y / t_j) (odd),
 *   channel D + j the same of x.
 * timm computes it in float32 whatever the model's dtype (its cumsum and arange are float32),
 * so it is computed here with the same float32 roundings, step for step. */
#include "layer.h"

#include <math.h>
#include <stdlib.h>

#include "core/common.h"

/* the encoding of one image, (H, W, C) with C = 2D */
static void fourier_table(float *t, int H, int W, int C, float temperature) {
    const float eps = 1e-6f, scale = (float)(2.0 * M_PI);
    int D = C / 2;
    float *dim_t = camo_malloc((size_t)D * sizeof(float));
    for (int j = 0; j < D; j++) {
        float e = (float)(2 * (j / 2)) / (float)D;
        dim_t[j] = (float)pow((double)temperature, (double)e);
    }
    float hden = (float)H + eps, wden = (float)W + eps;
    for (int h = 0; h < H; h++) {
        float y = (float)(h + 1) / hden * scale;
        for (int w = 0; w < W; w++) {
            float x = (float)(w + 1) / wden * scale, *p = t + ((size_t)h * W + w) * C;
            for (int j = 0; j < D; j++) {
                float ay = y / dim_t[j], ax = x / dim_t[j];
                p[j] = (float)(j % 2 ? cos((double)ay) : sin((double)ay));
                p[D + j] = (float)(j % 2 ? cos((double)ax) : sin((double)ax));
            }
        }
    }
    free(dim_t);
}

static int fourier_pos_infer(camo_net *net, camo_layer *l) {
    int C;
    layer_input_shape(net, l, 0, &l->H, &l->W, &C);
    size_t n = (size_t)l->H * l->W * l->C;
    float *host = camo_malloc(n * sizeof(float));
    fourier_table(host, l->H, l->W, l->C, l->u.fourier.temperature);
    LAYER_DROP(net, l->u.fourier.table); /* the input size may have changed */
    l->u.fourier.table = layer_alloc(net, n * sizeof(float));
    net->be->upload(net->be, l->u.fourier.table, host, n * sizeof(float));
    free(host);
    return 0;
}

static void fourier_pos_release(camo_net *net, camo_layer *l) {
    LAYER_DROP(net, l->u.fourier.table);
}

static void fourier_pos_forward(camo_net *net, camo_layer *l, int n, int training) {
    (void)training;
    size_t img = (size_t)l->H * l->W * l->C;
    for (int i = 0; i < n; i++)
        net->be->copy(net->be, l->out + i * img, l->u.fourier.table, img * sizeof(float));
}

/* a constant: nothing to propagate */
static void fourier_pos_backward(camo_net *net, camo_layer *l, int n) {
    (void)net, (void)l, (void)n;
}

static double fourier_pos_flops(const camo_net *net, const camo_layer *l) {
    (void)net, (void)l;
    return 0.0;
}

const camo_layer_ops fourier_pos_layer_ops = {
    .infer = fourier_pos_infer, .forward = fourier_pos_forward,
    .backward = fourier_pos_backward, .flops = fourier_pos_flops,
    .release = fourier_pos_release, .saves = layer_saves_nothing, .recomputable = 1,
};
