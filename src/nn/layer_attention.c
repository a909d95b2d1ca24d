/* layer_attention.c: multi-head attention over the pixels of each image as tokens (NHWC rows
 * are PyTorch's (B, H*W, C) token matrices): `attention`, SegFormer's scaled dot-product
 * attention (queries from one map, keys and values from another, e.g. spatially reduced),
 * and `xca`, XCiT / EdgeNeXt's cross-covariance (transposed, channel) attention with a
 * learned temperature per head. The projections around them (q/k/v, qkv, proj) are
 * `linear` layers of the network file. Ops: backend.h camo_attn_desc. */
#include "layer.h"

#include <math.h>

#include "core/common.h"

/* The sizes of inputs a and b differ: an error naming both; returns -1. */
static int size_error(camo_net *net, camo_layer *l, int a, int b, const char *what) {
    int Ha, Wa, Ca, Hb, Wb, Cb;
    layer_input_shape(net, l, a, &Ha, &Wa, &Ca);
    layer_input_shape(net, l, b, &Hb, &Wb, &Cb);
    const camo_layer *la = layer_input_layer(net, l, a), *lb = layer_input_layer(net, l, b);
    CAMO_ERR("%s: layer '%s': %s: '%s' is %dx%d, '%s' is %dx%d", l->where, l->name, what,
             la ? la->name : "input", Ha, Wa, lb ? lb->name : "input", Hb, Wb);
    return -1;
}

/* ---- attention: inputs q (N,H,W,C), k and v (N,h,w,C); out (N,H,W,C) ----
 * out = concat over heads of softmax(q_h k_h^T / sqrt(C/heads)) v_h. The probabilities are
 * kept from the forward (N * heads * H*W * h*w floats) rather than recomputed: the backward
 * needs them twice (dv = P^T dout and the softmax backward), recomputing costs a second
 * q k^T product and softmax, and at SegFormer's sizes (keys reduced 64x, 16x, 4x) they are a
 * few MB per image. */

static int attention_infer(camo_net *net, camo_layer *l) {
    int C, Hk, Wk, Hv, Wv;
    layer_input_shape(net, l, 0, &l->H, &l->W, &C);
    layer_input_shape(net, l, 1, &Hk, &Wk, &C);
    layer_input_shape(net, l, 2, &Hv, &Wv, &C);
    if (Hk != Hv || Wk != Wv) return size_error(net, l, 1, 2, "keys and values differ in size");
    size_t LS = (size_t)l->H * l->W * Hk * Wk, heads = (size_t)l->u.attn.heads;
    LAYER_DROP(net, l->u.attn.P); /* the input size may have changed */
    LAYER_DROP(net, l->u.attn.work);
    l->u.attn.P = layer_alloc(net, (size_t)net->N * heads * LS * sizeof(float));
    l->u.attn.work = layer_alloc(net, heads * LS * sizeof(float));
    return 0;
}

static void attention_release(camo_net *net, camo_layer *l) {
    LAYER_DROP(net, l->u.attn.P);
    LAYER_DROP(net, l->u.attn.work);
}

static camo_attn_desc attention_desc(camo_net *net, const camo_layer *l, int n) {
    int Hk, Wk, C;
    layer_input_shape(net, l, 1, &Hk, &Wk, &C);
    return (camo_attn_desc){n, l->H * l->W, Hk * Wk, l->C, l->u.attn.heads, l->C, l->C, l->C};
}

/* HF's attention_scores / math.sqrt(attention_head_size) */
static float attention_scale(const camo_layer *l) {
    return (float)(1.0 / sqrt((double)(l->C / l->u.attn.heads)));
}

static void attention_forward(camo_net *net, camo_layer *l, int n, int training) {
    (void)training;
    camo_attn_desc d = attention_desc(net, l, n);
    net->be->attention_forward(net->be, &d, attention_scale(l), l->out, l->u.attn.P,
                               layer_input(net, l, 0), layer_input(net, l, 1),
                               layer_input(net, l, 2));
}

static void attention_backward(camo_net *net, camo_layer *l, int n) {
    float *dq = layer_input_grad(net, l, 0), *dk = layer_input_grad(net, l, 1);
    float *dv = layer_input_grad(net, l, 2);
    if (!dq && !dk && !dv) return;
    /* the op writes all three: an untrained input's goes to its buffer nobody reads */
    if (!dq) dq = layer_input_grad_raw(net, l, 0);
    if (!dk) dk = layer_input_grad_raw(net, l, 1);
    if (!dv) dv = layer_input_grad_raw(net, l, 2);
    camo_attn_desc d = attention_desc(net, l, n);
    net->be->attention_backward(net->be, &d, attention_scale(l), dq, dk, dv, l->u.attn.work,
                                l->dout, layer_input(net, l, 0), layer_input(net, l, 1),
                                layer_input(net, l, 2), l->u.attn.P);
}

/* q k^T and P v (2 L S C each) and the softmax (about 5 per score) */
static double attention_flops(const camo_net *net, const camo_layer *l) {
    int Hk, Wk, C;
    layer_input_shape(net, l, 1, &Hk, &Wk, &C);
    double L = (double)l->H * l->W, S = (double)Hk * Wk;
    return 4.0 * L * S * l->C + 5.0 * L * S * l->u.attn.heads;
}

const camo_layer_ops attention_layer_ops = {
    .infer = attention_infer, .forward = attention_forward, .backward = attention_backward,
    .flops = attention_flops, .release = attention_release, .saves = layer_saves_inputs,
    .recomputable = 1,
};

/* ---- xca: inputs q, k, v (N,H,W,C), or one input (N,H,W,3C) = timm's qkv projection,
 * channels [q | k | v]; out (N,H,W,C); parameter NAME.temperature (heads, 1, 1) ----
 * Per head, with q and k L2-normalised along the tokens: attn (D x D) = softmax(q_n^T k_n *
 * temperature), out = v attn^T (timm's (attn @ v) on (B, heads, D, N) tensors). */

static int xca_infer(camo_net *net, camo_layer *l) {
    int C;
    layer_input_shape(net, l, 0, &l->H, &l->W, &C);
    for (int k = 1; k < l->n_in; k++) {
        int H, W;
        layer_input_shape(net, l, k, &H, &W, &C);
        if (H != l->H || W != l->W) return size_error(net, l, 0, k, "inputs differ in size");
    }
    size_t N = (size_t)net->N, D = (size_t)(l->C / l->u.xca.heads);
    camo_attn_desc d = {net->N, l->H * l->W, l->H * l->W, l->C, l->u.xca.heads, 0, 0, 0};
    float **bufs[] = {&l->u.xca.P, &l->u.xca.G, &l->u.xca.rq, &l->u.xca.rk, &l->u.xca.work};
    size_t floats[] = {N * l->C * D, N * l->C * D, N * l->C, N * l->C, camo_xca_work_floats(&d)};
    for (int i = 0; i < 5; i++) {
        LAYER_DROP(net, *bufs[i]); /* the batch size may have changed */
        *bufs[i] = layer_alloc(net, floats[i] * sizeof(float));
    }
    if (!l->u.xca.dscratch)
        l->u.xca.dscratch = layer_alloc(net, (size_t)l->u.xca.heads * sizeof(float));
    return 0;
}

static void xca_release(camo_net *net, camo_layer *l) {
    LAYER_DROP(net, l->u.xca.P);
    LAYER_DROP(net, l->u.xca.G);
    LAYER_DROP(net, l->u.xca.rq);
    LAYER_DROP(net, l->u.xca.rk);
    LAYER_DROP(net, l->u.xca.work);
    LAYER_DROP(net, l->u.xca.dscratch);
}

/* The descriptor and where q, k, v (or their gradients, grad != 0) start: three tensors, or
 * the channel thirds of one fused tensor. */
static camo_attn_desc xca_desc(camo_net *net, const camo_layer *l, int n, int grad,
                               float *p[3]) {
    int C = l->C, fused = l->n_in == 1, ld = fused ? 3 * C : C;
    for (int k = 0; k < 3; k++) {
        int in = fused ? 0 : k;
        float *base = grad ? layer_input_grad_raw(net, l, in) : layer_input(net, l, in);
        p[k] = base + (fused ? k * C : 0);
    }
    return (camo_attn_desc){n, l->H * l->W, l->H * l->W, C, l->u.xca.heads, ld, ld, ld};
}

static void xca_forward(camo_net *net, camo_layer *l, int n, int training) {
    (void)training;
    float *x[3];
    camo_attn_desc d = xca_desc(net, l, n, 0, x);
    net->be->xca_forward(net->be, &d, l->out, l->u.xca.P, l->u.xca.G, l->u.xca.rq,
                         l->u.xca.rk, x[0], x[1], x[2], layer_param(net, l, 0)->data);
}

static void xca_backward(camo_net *net, camo_layer *l, int n) {
    int any = layer_param_grad(net, l, 0) != NULL;
    for (int k = 0; k < l->n_in; k++) any |= layer_input_grad(net, l, k) != NULL;
    if (!any) return;
    /* the op writes every gradient: untrained inputs' go to buffers nobody reads, a frozen
     * temperature's to the layer's scratch */
    float *x[3], *dx[3];
    camo_attn_desc d = xca_desc(net, l, n, 0, x);
    xca_desc(net, l, n, 1, dx);
    float *dtemp = layer_param_grad(net, l, 0);
    net->be->xca_backward(net->be, &d, dx[0], dx[1], dx[2], dtemp ? dtemp : l->u.xca.dscratch,
                          l->u.xca.work, l->dout, x[0], x[1], x[2],
                          layer_param(net, l, 0)->data, l->u.xca.P, l->u.xca.G, l->u.xca.rq,
                          l->u.xca.rk);
}

/* q^T k and v attn^T (2 L C D each), the norms (4 L C) */
static double xca_flops(const camo_net *net, const camo_layer *l) {
    (void)net;
    double L = (double)l->H * l->W, D = (double)(l->C / l->u.xca.heads);
    return 4.0 * L * l->C * D + 4.0 * L * l->C;
}

const camo_layer_ops xca_layer_ops = {
    .infer = xca_infer, .forward = xca_forward, .backward = xca_backward,
    .flops = xca_flops, .release = xca_release, .saves = layer_saves_inputs,
    .recomputable = 1,
};
