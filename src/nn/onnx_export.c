/* onnx_export.c: camo_onnx_export (onnx_export.h). One ONNX node, or a few, per primitive
 * layer (the table in docs/export.md), emitted in the network's layer order, which is
 * topological: a layer only reads layers defined before it. Every value is NCHW, so no
 * layout changes are needed except around LayerNormalization, which normalises trailing
 * axes. Messages are built with protobuf-c's generated types from src/nn/onnx.proto; every
 * string, array and sub-message is malloc'ed once, so the finished tree is freed whole by
 * onnx__model_proto__free_unpacked. */
#include "nn/onnx_export.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/common.h"
#include "nn/layer.h"

#ifndef CAMO_HAVE_ONNX

int camo_onnx_available(void) { return 0; }

int camo_onnx_export(camo_net *net, const char *path, const camo_onnx_opts *opts,
                     camo_onnx_stats *stats) {
    (void)net, (void)opts, (void)stats;
    CAMO_ERR("cannot write '%s': this camotrain was built without protobuf-c (install "
             "protobuf-c-compiler and libprotobuf-c-dev: tools/install_deps.sh; then rebuild)",
             path);
    return CAMO_ERR_INPUT;
}

#else

#include "nn/onnx.pb-c.h"

int camo_onnx_available(void) { return 1; }

/* ---- the graph under construction ---- */

typedef struct {
    camo_net *net;
    int opset, dynamic;
    Onnx__NodeProto **node;       /* in topological order */
    size_t n_node, cap_node;
    Onnx__TensorProto **init;     /* weights and constants */
    size_t n_init, cap_init;
    char **name;                  /* every value name: each is defined once */
    size_t n_name, cap_name;
    const char **val;             /* per layer: the value of its output; NULL: left out */
    const char *batch;            /* dynamic batch: value (1) int64 = N, made on first use */
} graph;

#define PUSH(arr, n, cap, x)                                                   \
    do {                                                                       \
        if ((n) == (cap)) {                                                    \
            (cap) = (cap) ? 2 * (cap) : 32;                                    \
            (arr) = camo_realloc((arr), (cap) * sizeof *(arr));                \
        }                                                                      \
        (arr)[(n)++] = (x);                                                    \
    } while (0)

static int name_taken(const graph *g, const char *s) {
    for (size_t i = 0; i < g->n_name; i++)
        if (!strcmp(g->name[i], s)) return 1;
    return 0;
}

/* Reserves s as it is (the network input, parameters). */
static void claim_exact(graph *g, const char *s) {
    char *c = camo_strdup(s);
    PUSH(g->name, g->n_name, g->cap_name, c);
}

/* A new value name: the formatted base, or base_1, base_2, ... when taken. */
static const char *fresh(graph *g, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static const char *fresh(graph *g, const char *fmt, ...) {
    char base[256], s[280];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(base, sizeof base, fmt, ap);
    va_end(ap);
    snprintf(s, sizeof s, "%s", base);
    for (int k = 1; name_taken(g, s); k++) snprintf(s, sizeof s, "%s_%d", base, k);
    claim_exact(g, s);
    return g->name[g->n_name - 1];
}

/* ---- nodes and attributes ---- */

static Onnx__NodeProto *node_v(graph *g, const char *op, const char *out, int n_in,
                               const char *const *in) {
    Onnx__NodeProto *n = camo_malloc(sizeof *n);
    onnx__node_proto__init(n);
    n->op_type = camo_strdup(op);
    n->name = camo_strdup(out);
    n->n_input = (size_t)n_in;
    n->input = camo_malloc((size_t)(n_in > 0 ? n_in : 1) * sizeof(char *));
    for (int i = 0; i < n_in; i++) n->input[i] = camo_strdup(in[i]);
    n->n_output = 1;
    n->output = camo_malloc(sizeof(char *));
    n->output[0] = camo_strdup(out);
    PUSH(g->node, g->n_node, g->cap_node, n);
    return n;
}

/* node(g, op, out, n_in, in0, in1, ...): one output; "" is an omitted optional input */
static Onnx__NodeProto *node(graph *g, const char *op, const char *out, int n_in, ...) {
    const char *in[8];
    va_list ap;
    va_start(ap, n_in);
    for (int i = 0; i < n_in && i < 8; i++) in[i] = va_arg(ap, const char *);
    va_end(ap);
    return node_v(g, op, out, n_in < 8 ? n_in : 8, in);
}

static Onnx__AttributeProto *attr(Onnx__NodeProto *n, const char *name,
                                  Onnx__AttributeProto__AttributeType type) {
    Onnx__AttributeProto *a = camo_malloc(sizeof *a);
    onnx__attribute_proto__init(a);
    a->name = camo_strdup(name);
    a->has_type = 1;
    a->type = type;
    n->attribute = camo_realloc(n->attribute, (n->n_attribute + 1) * sizeof *n->attribute);
    n->attribute[n->n_attribute++] = a;
    return a;
}

static void attr_int(Onnx__NodeProto *n, const char *name, int64_t v) {
    Onnx__AttributeProto *a = attr(n, name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT);
    a->has_i = 1;
    a->i = v;
}

static void attr_float(Onnx__NodeProto *n, const char *name, float v) {
    Onnx__AttributeProto *a = attr(n, name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOAT);
    a->has_f = 1;
    a->f = v;
}

static void attr_str(Onnx__NodeProto *n, const char *name, const char *s) {
    Onnx__AttributeProto *a = attr(n, name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__STRING);
    a->has_s = 1;
    a->s.len = strlen(s);
    a->s.data = (uint8_t *)camo_strdup(s);
}

static void attr_ints(Onnx__NodeProto *n, const char *name, int k, const int64_t *v) {
    Onnx__AttributeProto *a = attr(n, name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INTS);
    a->n_ints = (size_t)k;
    a->ints = camo_malloc((size_t)k * sizeof(int64_t));
    memcpy(a->ints, v, (size_t)k * sizeof(int64_t));
}

static void attr_pair(Onnx__NodeProto *n, const char *name, int64_t a, int64_t b) {
    int64_t v[2] = {a, b};
    attr_ints(n, name, 2, v);
}

/* pads of a 2-D window op: [top, left, bottom, right] */
static void attr_pads(Onnx__NodeProto *n, int64_t ph, int64_t pw) {
    int64_t v[4] = {ph, pw, ph, pw};
    attr_ints(n, "pads", 4, v);
}

/* ---- initializers: weights and constants ---- */

static Onnx__TensorProto *tensor(graph *g, const char *name, int type, int ndim,
                                 const int64_t *dims) {
    Onnx__TensorProto *t = camo_malloc(sizeof *t);
    onnx__tensor_proto__init(t);
    t->name = camo_strdup(name);
    t->has_data_type = 1;
    t->data_type = type;
    t->n_dims = (size_t)ndim;
    t->dims = camo_malloc((size_t)(ndim > 0 ? ndim : 1) * sizeof(int64_t));
    if (ndim > 0) memcpy(t->dims, dims, (size_t)ndim * sizeof(int64_t));
    PUSH(g->init, g->n_init, g->cap_init, t);
    return t;
}

/* float32 values as raw_data: little-endian IEEE 754, whatever the host's byte order */
static void init_f32(graph *g, const char *name, int ndim, const int64_t *dims,
                     const float *v, size_t n) {
    Onnx__TensorProto *t = tensor(g, name, ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT, ndim, dims);
    uint8_t *b = camo_malloc(n ? 4 * n : 1);
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &v[i], 4);
        for (int k = 0; k < 4; k++) b[4 * i + k] = (uint8_t)(u >> (8 * k));
    }
    t->has_raw_data = 1;
    t->raw_data.len = 4 * n;
    t->raw_data.data = b;
}

/* A 1-D int64 constant owned by layer `owner`; returns its value name. */
static const char *const_i64(graph *g, const char *owner, const char *what, int n,
                             const int64_t *v) {
    const char *name = fresh(g, "%s/%s", owner, what);
    int64_t d = n;
    Onnx__TensorProto *t = tensor(g, name, ONNX__TENSOR_PROTO__DATA_TYPE__INT64, 1, &d);
    t->n_int64_data = (size_t)n;
    t->int64_data = camo_malloc((size_t)n * sizeof(int64_t));
    memcpy(t->int64_data, v, (size_t)n * sizeof(int64_t));
    return name;
}

/* A float constant of n values (ndim 0: a scalar, ndim 1: a vector of n). */
static const char *const_f32(graph *g, const char *owner, const char *what, int ndim, int n,
                             const float *v) {
    const char *name = fresh(g, "%s/%s", owner, what);
    int64_t d = n;
    init_f32(g, name, ndim, &d, v, (size_t)n);
    return name;
}

static const char *const_scalar(graph *g, const char *owner, const char *what, float v) {
    return const_f32(g, owner, what, 0, 1, &v);
}

/* The layer's parameters (BN's counter aside) as initializers, named as in checkpoints,
 * in PyTorch layout (conv weights OIHW). */
static void add_params(graph *g, const camo_layer *l) {
    for (int i = 0; i < l->n_params; i++) {
        camo_param *p = &g->net->params[l->param0 + i];
        if (p->kind == CAMO_PARAM_COUNTER) continue;
        float *host = camo_malloc(p->numel * sizeof(float));
        camo_param_get(g->net, p, host);
        /* a `linear` layer's weight is [out, in] in PyTorch, its Conv node wants
         * [out, in, 1, 1]: the same values in the same order */
        int64_t conv_dims[4] = {p->ndim == 2 ? p->shape[0] : 0, p->ndim == 2 ? p->shape[1] : 0,
                                1, 1};
        int linear = l->type == CAMO_LAYER_CONV2D && p->ndim == 2;
        init_f32(g, p->name, linear ? 4 : p->ndim, linear ? conv_dims : p->shape, host,
                 p->numel);
        free(host);
    }
}

static const char *pname(const graph *g, const camo_layer *l, int i) {
    return g->net->params[l->param0 + i].name;
}

static const char *input_of(const graph *g, const camo_layer *l, int k) {
    return l->in[k] < 0 ? "input" : g->val[l->in[k]];
}

/* ---- shared pieces ---- */

/* y = mean of x over `axis`, kept as a dimension of 1 (axes: an attribute before opset
 * 18, an input from 18 on). */
static void reduce_mean(graph *g, const camo_layer *l, const char *y, const char *x, int axis) {
    int64_t ax = axis;
    Onnx__NodeProto *n;
    if (g->opset >= 18) {
        n = node(g, "ReduceMean", y, 2, x, const_i64(g, l->name, "axes", 1, &ax));
    } else {
        n = node(g, "ReduceMean", y, 1, x);
        attr_ints(n, "axes", 1, &ax);
    }
    attr_int(n, "keepdims", 1);
}

/* The batch size of `input` as a (1) int64 value: made once, for dynamic-batch sizes. */
static const char *batch_value(graph *g) {
    if (g->batch) return g->batch;
    int64_t zero = 0, one = 1;
    const char *shape = fresh(g, "input/shape");
    node(g, "Shape", shape, 1, "input");
    const char *starts = const_i64(g, "input", "batch_start", 1, &zero);
    const char *ends = const_i64(g, "input", "batch_end", 1, &one);
    const char *axes = const_i64(g, "input", "batch_axis", 1, &zero);
    g->batch = fresh(g, "input/batch");
    node(g, "Slice", g->batch, 4, shape, starts, ends, axes);
    return g->batch;
}

/* Resize's `sizes` input for an (N, C, P, Q) output. */
static const char *sizes_value(graph *g, const camo_layer *l, int C, int P, int Q) {
    if (!g->dynamic) {
        int64_t v[4] = {1, C, P, Q};
        return const_i64(g, l->name, "sizes", 4, v);
    }
    int64_t v[3] = {C, P, Q};
    const char *in[2] = {batch_value(g), const_i64(g, l->name, "sizes_chw", 3, v)};
    const char *sizes = fresh(g, "%s/sizes", l->name);
    attr_int(node_v(g, "Concat", sizes, 2, in), "axis", 0);
    return sizes;
}

/* ---- one function per layer family (the table in docs/export.md) ---- */

static int emit_conv(graph *g, const camo_layer *l, const char *x, const char *y) {
    const camo_conv_desc *d = &l->u.conv.d;
    Onnx__NodeProto *n = l->u.conv.has_bias
                             ? node(g, "Conv", y, 3, x, pname(g, l, 0), pname(g, l, 1))
                             : node(g, "Conv", y, 2, x, pname(g, l, 0));
    attr_pair(n, "dilations", d->dil_h, d->dil_w);
    attr_int(n, "group", d->groups);
    attr_pair(n, "kernel_shape", d->R, d->S);
    attr_pads(n, d->pad_h, d->pad_w);
    attr_pair(n, "strides", d->stride_h, d->stride_w);
    return 0;
}

/* eval mode: the running statistics (weight, bias, running_mean, running_var) */
static int emit_batchnorm(graph *g, const camo_layer *l, const char *x, const char *y) {
    Onnx__NodeProto *n = node(g, "BatchNormalization", y, 5, x, pname(g, l, 0),
                              pname(g, l, 1), pname(g, l, 2), pname(g, l, 3));
    attr_float(n, "epsilon", l->u.bn.eps);
    return 0;
}

/* Over the channels of each pixel: LayerNormalization on the last axis between two
 * transposes (opset 17+), else mean, variance and scale written out. */
static int emit_layernorm(graph *g, const camo_layer *l, const char *x, const char *y) {
    const char *nm = l->name;
    if (g->opset >= 17) {
        const char *t = fresh(g, "%s/nhwc", nm), *n = fresh(g, "%s/norm", nm);
        int64_t to_nhwc[4] = {0, 2, 3, 1}, to_nchw[4] = {0, 3, 1, 2};
        attr_ints(node(g, "Transpose", t, 1, x), "perm", 4, to_nhwc);
        Onnx__NodeProto *ln = node(g, "LayerNormalization", n, 3, t, pname(g, l, 0),
                                   pname(g, l, 1));
        attr_int(ln, "axis", -1);
        attr_float(ln, "epsilon", l->u.ln.eps);
        attr_ints(node(g, "Transpose", y, 1, n), "perm", 4, to_nchw);
        return 0;
    }
    const char *mu = fresh(g, "%s/mean", nm), *d = fresh(g, "%s/centered", nm);
    const char *d2 = fresh(g, "%s/squared", nm), *var = fresh(g, "%s/var", nm);
    const char *ve = fresh(g, "%s/var_eps", nm), *sd = fresh(g, "%s/std", nm);
    const char *xn = fresh(g, "%s/normalized", nm), *sc = fresh(g, "%s/scaled", nm);
    const char *gam = fresh(g, "%s/weight_c11", nm), *bet = fresh(g, "%s/bias_c11", nm);
    int64_t c11[3] = {l->C, 1, 1};
    const char *shape = const_i64(g, nm, "shape_c11", 3, c11);
    reduce_mean(g, l, mu, x, 1);
    node(g, "Sub", d, 2, x, mu);
    node(g, "Mul", d2, 2, d, d);
    reduce_mean(g, l, var, d2, 1);
    node(g, "Add", ve, 2, var, const_scalar(g, nm, "eps", l->u.ln.eps));
    node(g, "Sqrt", sd, 1, ve);
    node(g, "Div", xn, 2, d, sd);
    node(g, "Reshape", gam, 2, pname(g, l, 0), shape);
    node(g, "Reshape", bet, 2, pname(g, l, 1), shape);
    node(g, "Mul", sc, 2, xn, gam);
    node(g, "Add", y, 2, sc, bet);
    return 0;
}

/* GELU, erf form: Gelu from opset 20, else x * 0.5 * (1 + erf(x / sqrt 2)) */
static void emit_gelu(graph *g, const camo_layer *l, const char *x, const char *y) {
    if (g->opset >= 20) {
        node(g, "Gelu", y, 1, x);
        return;
    }
    const char *nm = l->name;
    const char *s = fresh(g, "%s/scaled", nm), *e = fresh(g, "%s/erf", nm);
    const char *p = fresh(g, "%s/erf_plus_1", nm), *xp = fresh(g, "%s/x_times", nm);
    node(g, "Div", s, 2, x, const_scalar(g, nm, "sqrt2", 1.41421356237309505f));
    node(g, "Erf", e, 1, s);
    node(g, "Add", p, 2, e, const_scalar(g, nm, "one", 1.0f));
    node(g, "Mul", xp, 2, x, p);
    node(g, "Mul", y, 2, xp, const_scalar(g, nm, "half", 0.5f));
}

static int emit_activation(graph *g, const camo_layer *l, const char *x, const char *y) {
    switch (l->u.act.act) {
    case CAMO_ACT_IDENTITY: node(g, "Identity", y, 1, x); return 0;
    case CAMO_ACT_RELU: node(g, "Relu", y, 1, x); return 0;
    case CAMO_ACT_LEAKY_RELU:
        attr_float(node(g, "LeakyRelu", y, 1, x), "alpha", l->u.act.alpha);
        return 0;
    case CAMO_ACT_SILU: {
        const char *s = fresh(g, "%s/sigmoid", l->name);
        node(g, "Sigmoid", s, 1, x);
        node(g, "Mul", y, 2, x, s);
        return 0;
    }
    case CAMO_ACT_GELU: emit_gelu(g, l, x, y); return 0;
    case CAMO_ACT_SIGMOID: node(g, "Sigmoid", y, 1, x); return 0;
    case CAMO_ACT_TANH: node(g, "Tanh", y, 1, x); return 0;
    default: break; /* an activation added after this exporter */
    }
    CAMO_ERR("%s: layer '%s': activation #%d cannot be exported to ONNX", l->where, l->name,
             (int)l->u.act.act);
    return -1;
}

/* floor mode; avg: count_include_pad as camotrain computes it (cpu_pool.c: in floor mode
 * every window lies within the padded input, so the divisor is the kernel size, as ONNX's) */
static int emit_pool(graph *g, const camo_layer *l, const char *x, const char *y) {
    const camo_pool_desc *d = &l->u.pool.d;
    int max = d->type == CAMO_POOL_MAX;
    Onnx__NodeProto *n = node(g, max ? "MaxPool" : "AveragePool", y, 1, x);
    if (!max) attr_int(n, "count_include_pad", d->count_include_pad);
    attr_pair(n, "kernel_shape", d->R, d->S);
    attr_pads(n, d->pad_h, d->pad_w);
    attr_pair(n, "strides", d->stride_h, d->stride_w);
    return 0;
}

/* PyTorch's adaptive bins along one axis: bin i of P over H is [floor(i*H/P), ceil((i+1)*H/P)) */
static int64_t bin_start(int i, int H, int P) { return (int64_t)i * H / P; }
static int64_t bin_end(int i, int H, int P) { return ((int64_t)(i + 1) * H + P - 1) / P; }

/* y = adaptive average of x along axis 2 (H -> P) or 3: an AveragePool when the bins tile
 * the axis evenly, else one Slice (+ ReduceMean) per bin and a Concat. */
static void adaptive_axis(graph *g, const camo_layer *l, const char *x, const char *y, int axis,
                          int H, int P) {
    char c = axis == 2 ? 'h' : 'w';
    if (H % P == 0) {
        int64_t k = H / P;
        Onnx__NodeProto *n = node(g, "AveragePool", y, 1, x);
        attr_pair(n, "kernel_shape", axis == 2 ? k : 1, axis == 2 ? 1 : k);
        attr_pair(n, "strides", axis == 2 ? k : 1, axis == 2 ? 1 : k);
        return;
    }
    int64_t ax = axis;
    const char *axes = const_i64(g, l->name, axis == 2 ? "axis_h" : "axis_w", 1, &ax);
    const char **bins = camo_malloc((size_t)P * sizeof *bins);
    for (int p = 0; p < P; p++) {
        int64_t s = bin_start(p, H, P), e = bin_end(p, H, P);
        const char *st = const_i64(g, l->name, c == 'h' ? "start_h" : "start_w", 1, &s);
        const char *en = const_i64(g, l->name, c == 'h' ? "end_h" : "end_w", 1, &e);
        const char *sl = fresh(g, "%s/bin_%c%d", l->name, c, p);
        node(g, "Slice", sl, 4, x, st, en, axes);
        bins[p] = sl;
        if (e - s > 1) { /* a bin of one row is its own mean */
            bins[p] = fresh(g, "%s/mean_%c%d", l->name, c, p);
            reduce_mean(g, l, bins[p], sl, axis);
        }
    }
    attr_int(node_v(g, "Concat", y, P, bins), "axis", axis);
    free(bins);
}

/* The bins are rectangles of equal weights: the mean over one is the mean over its rows
 * of the means over its columns, so rows and columns are pooled one after the other. */
static int emit_adaptive(graph *g, const camo_layer *l, const char *x, const char *y) {
    int H, W, C;
    layer_input_shape(g->net, l, 0, &H, &W, &C);
    int P = l->H, Q = l->W;
    if (P == 1 && Q == 1) {
        node(g, "GlobalAveragePool", y, 1, x);
    } else if (H % P == 0 && W % Q == 0) {
        Onnx__NodeProto *n = node(g, "AveragePool", y, 1, x);
        attr_pair(n, "kernel_shape", H / P, W / Q);
        attr_pair(n, "strides", H / P, W / Q);
    } else {
        const char *r = x;
        if (P != H) {
            r = Q == W ? y : fresh(g, "%s/rows", l->name);
            adaptive_axis(g, l, x, r, 2, H, P);
        }
        if (Q != W) adaptive_axis(g, l, r, y, 3, W, Q);
    }
    return 0;
}

/* Bilinear: Resize, mode linear, half_pixel (camotrain clamps source coordinates at 0, as
 * onnxruntime does for linear) or align_corners. A `scale` layer samples at 1/scale, as
 * Resize does given `scales`; sizes (`size`, `like`) sample at in/out, as Resize does given
 * `sizes`. Given scales, onnxruntime takes the output size as in * scale in float, which can
 * be one more than camotrain's floor(in * scale) (exact): the row or column past the end,
 * sampled on the same grid, is then sliced off. */
static int emit_resize(graph *g, const camo_layer *l, const char *x, const char *y) {
    int H, W, C;
    layer_input_shape(g->net, l, 0, &H, &W, &C);
    const char *nm = l->name;
    Onnx__NodeProto *n;
    if (l->u.resize.mode == RESIZE_SCALE) {
        float s = l->u.resize.scale, sc[4] = {1.0f, 1.0f, s, s};
        int64_t Pf = (int64_t)(s * (float)H), Qf = (int64_t)(s * (float)W);
        if (Pf < l->H || Qf < l->W || Pf > l->H + 1 || Qf > l->W + 1) {
            CAMO_ERR("%s: layer '%s': scale %g of %dx%d cannot be exported to ONNX (Resize "
                     "gives %lldx%lld, camotrain %dx%d)", l->where, nm, (double)s, H, W,
                     (long long)Pf, (long long)Qf, l->H, l->W);
            return -1;
        }
        int cut = Pf != l->H || Qf != l->W;
        const char *r = cut ? fresh(g, "%s/resized", nm) : y;
        n = node(g, "Resize", r, 3, x, "", const_f32(g, nm, "scales", 1, 4, sc));
        if (cut) {
            int64_t zero[2] = {0, 0}, end[2] = {l->H, l->W}, axes[2] = {2, 3};
            node(g, "Slice", y, 4, r, const_i64(g, nm, "starts", 2, zero),
                 const_i64(g, nm, "ends", 2, end), const_i64(g, nm, "axes", 2, axes));
        }
    } else {
        n = node(g, "Resize", y, 4, x, "", "", sizes_value(g, l, C, l->H, l->W));
    }
    attr_str(n, "coordinate_transformation_mode",
             l->u.resize.align_corners ? "align_corners" : "half_pixel");
    attr_str(n, "mode", "linear");
    return 0;
}

static int emit_join(graph *g, const camo_layer *l, const char *y) {
    const char *in[CAMO_MAX_INPUTS];
    for (int k = 0; k < l->n_in; k++) in[k] = input_of(g, l, k);
    if (l->type == CAMO_LAYER_CONCAT)
        attr_int(node_v(g, "Concat", y, l->n_in, in), "axis", 1);
    else if (l->type == CAMO_LAYER_ADD)
        node_v(g, l->n_in == 2 ? "Add" : "Sum", y, l->n_in, in);
    else /* mul: ONNX broadcasting covers (N,1,H,W) and (N,C,1,1) second inputs */
        node_v(g, "Mul", y, 2, in);
    return 0;
}

/* ---- attention and residual helpers (layer_attention.c, layer_residual.c) ---- */

/* x (N, C, H, W) viewed as (N, heads, C/heads, H*W), transposed to (N, heads, H*W, C/heads)
 * when `tokens_last` is 0. Reshape's 0 keeps the batch: static or dynamic alike. */
static const char *heads_view(graph *g, const camo_layer *l, const char *x, int src,
                              int heads, int transpose, const char *what) {
    const camo_layer *s = &g->net->layers[src];
    int64_t shape[4] = {0, heads, s->C / heads, (int64_t)s->H * s->W};
    const char *r = fresh(g, "%s/%s", l->name, what);
    node(g, "Reshape", r, 2, x, const_i64(g, l->name, what, 4, shape));
    if (!transpose) return r;
    int64_t perm[4] = {0, 1, 3, 2};
    const char *t = fresh(g, "%s/%s_t", l->name, what);
    attr_ints(node(g, "Transpose", t, 1, r), "perm", 4, perm);
    return t;
}

/* out = concat_h softmax(q_h k_h^T * scale) v_h, as layer_attention.c: heads split the
 * channels in contiguous groups, which NCHW's (N, heads, C/heads, L) view keeps. */
static int emit_attention(graph *g, const camo_layer *l, const char *y) {
    int heads = l->u.attn.heads;
    const char *q = heads_view(g, l, input_of(g, l, 0), l->in[0], heads, 1, "q");
    const char *k = heads_view(g, l, input_of(g, l, 1), l->in[1], heads, 0, "k");
    const char *v = heads_view(g, l, input_of(g, l, 2), l->in[2], heads, 1, "v");
    const char *qk = fresh(g, "%s/qk", l->name), *sc = fresh(g, "%s/scores", l->name);
    node(g, "MatMul", qk, 2, q, k);
    float scale = (float)(1.0 / sqrt((double)(l->C / heads)));
    node(g, "Mul", sc, 2, qk, const_scalar(g, l->name, "scale", scale));
    const char *p = fresh(g, "%s/probs", l->name), *o = fresh(g, "%s/heads", l->name);
    attr_int(node(g, "Softmax", p, 1, sc), "axis", -1);
    node(g, "MatMul", o, 2, p, v);
    int64_t perm[4] = {0, 1, 3, 2}, shape[4] = {0, l->C, l->H, l->W};
    const char *t = fresh(g, "%s/heads_t", l->name);
    attr_ints(node(g, "Transpose", t, 1, o), "perm", 4, perm);
    node(g, "Reshape", y, 2, t, const_i64(g, l->name, "shape", 4, shape));
    return 0;
}

/* y = x * gamma, gamma (C) seen as (1, C, 1, 1) */
static int emit_layer_scale(graph *g, const camo_layer *l, const char *x, const char *y) {
    int64_t shape[4] = {1, l->C, 1, 1};
    const char *gm = fresh(g, "%s/gamma", l->name);
    node(g, "Reshape", gm, 2, pname(g, l, 0), const_i64(g, l->name, "gamma_shape", 4, shape));
    node(g, "Mul", y, 2, x, gm);
    return 0;
}

/* Part 0, 1, 2 (q, k, v) of xca's input(s) as (N, heads, D, L); q and k L2-normalised along
 * the tokens: x / (||x|| + 1e-12), with the ops of the other layers (the norm as
 * sqrt(L * mean(x^2))). F.normalize divides by max(||x||, 1e-12): the same float32 values
 * for any norm above 1e-5, and 0 for a zero row. */
static const char *xca_part(graph *g, const camo_layer *l, int part, const char *what) {
    int fused = l->n_in == 1;
    const char *x = input_of(g, l, fused ? 0 : part);
    if (fused) { /* timm's qkv: channels [q | k | v] */
        int64_t s = (int64_t)part * l->C, e = s + l->C, ax = 1;
        const char *sl = fresh(g, "%s/%s_in", l->name, what);
        node(g, "Slice", sl, 4, x, const_i64(g, l->name, "starts", 1, &s),
             const_i64(g, l->name, "ends", 1, &e), const_i64(g, l->name, "axes", 1, &ax));
        x = sl;
    }
    int64_t shape[4] = {0, l->u.xca.heads, l->C / l->u.xca.heads, (int64_t)l->H * l->W};
    const char *r = fresh(g, "%s/%s", l->name, what);
    node(g, "Reshape", r, 2, x, const_i64(g, l->name, what, 4, shape));
    if (part == 2) return r;
    const char *sq = fresh(g, "%s/%s_sq", l->name, what);
    const char *ms = fresh(g, "%s/%s_ms", l->name, what);
    const char *ss = fresh(g, "%s/%s_ss", l->name, what);
    const char *nm = fresh(g, "%s/%s_norm", l->name, what);
    const char *de = fresh(g, "%s/%s_den", l->name, what);
    const char *u = fresh(g, "%s/%s_unit", l->name, what);
    node(g, "Mul", sq, 2, r, r);
    reduce_mean(g, l, ms, sq, -1);
    node(g, "Mul", ss, 2, ms, const_scalar(g, l->name, "tokens", (float)(l->H * l->W)));
    node(g, "Sqrt", nm, 1, ss);
    node(g, "Add", de, 2, nm, const_scalar(g, l->name, "eps", 1e-12f));
    node(g, "Div", u, 2, r, de);
    return u;
}

/* as layer_attention.c: per head softmax(q_n k_n^T * temperature) v, on NCHW's
 * (N, heads, D, L) views; the temperature (heads, 1, 1) broadcasts */
static int emit_xca(graph *g, const camo_layer *l, const char *y) {
    const char *q = xca_part(g, l, 0, "q"), *k = xca_part(g, l, 1, "k");
    const char *v = xca_part(g, l, 2, "v");
    int64_t perm[4] = {0, 1, 3, 2}, shape[4] = {0, l->C, l->H, l->W};
    const char *kt = fresh(g, "%s/k_t", l->name), *gm = fresh(g, "%s/cos", l->name);
    attr_ints(node(g, "Transpose", kt, 1, k), "perm", 4, perm);
    node(g, "MatMul", gm, 2, q, kt);
    const char *sc = fresh(g, "%s/scores", l->name), *p = fresh(g, "%s/probs", l->name);
    node(g, "Mul", sc, 2, gm, pname(g, l, 0));
    attr_int(node(g, "Softmax", p, 1, sc), "axis", -1);
    const char *o = fresh(g, "%s/heads", l->name);
    node(g, "MatMul", o, 2, p, v);
    node(g, "Reshape", y, 2, o, const_i64(g, l->name, "shape", 4, shape));
    return 0;
}

/* channels [c0, c0 + C): Slice on axis 1 */
static int emit_slice(graph *g, const camo_layer *l, const char *x, const char *y) {
    int64_t s = l->u.slice.c0, e = l->u.slice.c0 + l->C, ax = 1;
    node(g, "Slice", y, 4, x, const_i64(g, l->name, "starts", 1, &s),
         const_i64(g, l->name, "ends", 1, &e), const_i64(g, l->name, "axes", 1, &ax));
    return 0;
}

/* the encoding at the export size, a (1, C, H, W) constant (Add broadcasts it over a
 * dynamic batch) */
static int emit_fourier_pos(graph *g, const camo_layer *l, const char *y) {
    camo_backend *be = g->net->be;
    size_t hw = (size_t)l->H * l->W, n = hw * l->C;
    float *nhwc = camo_malloc(n * sizeof(float)), *nchw = camo_malloc(n * sizeof(float));
    be->download(be, nhwc, l->u.fourier.table, n * sizeof(float));
    for (size_t p = 0; p < hw; p++)
        for (int c = 0; c < l->C; c++) nchw[(size_t)c * hw + p] = nhwc[p * l->C + c];
    int64_t dims[4] = {1, l->C, l->H, l->W};
    const char *t = fresh(g, "%s/table", l->name);
    init_f32(g, t, 4, dims, nchw, n);
    node(g, "Identity", y, 1, t);
    free(nhwc);
    free(nchw);
    return 0;
}

/* Layer i's nodes, writing its value g->val[i]. */
static int emit_layer(graph *g, int i) {
    const camo_layer *l = &g->net->layers[i];
    const char *x = input_of(g, l, 0), *y = g->val[i];
    switch (l->type) {
    case CAMO_LAYER_CONV2D: return emit_conv(g, l, x, y);
    case CAMO_LAYER_BATCHNORM: return emit_batchnorm(g, l, x, y);
    case CAMO_LAYER_LAYERNORM: return emit_layernorm(g, l, x, y);
    case CAMO_LAYER_ACTIVATION: return emit_activation(g, l, x, y);
    case CAMO_LAYER_POOL: return emit_pool(g, l, x, y);
    case CAMO_LAYER_ADAPTIVE_AVGPOOL: return emit_adaptive(g, l, x, y);
    case CAMO_LAYER_RESIZE: return emit_resize(g, l, x, y);
    case CAMO_LAYER_CONCAT:
    case CAMO_LAYER_ADD:
    case CAMO_LAYER_MUL: return emit_join(g, l, y);
    case CAMO_LAYER_SOFTMAX: attr_int(node(g, "Softmax", y, 1, x), "axis", 1); return 0;
    case CAMO_LAYER_ATTENTION: return emit_attention(g, l, y);
    case CAMO_LAYER_LAYER_SCALE: return emit_layer_scale(g, l, x, y);
    case CAMO_LAYER_DROP_PATH: node(g, "Identity", y, 1, x); return 0; /* inference */
    case CAMO_LAYER_XCA: return emit_xca(g, l, y);
    case CAMO_LAYER_SLICE: return emit_slice(g, l, x, y);
    case CAMO_LAYER_FOURIER_POS: return emit_fourier_pos(g, l, y);
    default: break; /* a type added to layer.h after this exporter */
    }
    CAMO_ERR("%s: layer '%s' (type '%s') cannot be exported to ONNX", l->where, l->name,
             (unsigned)l->type < CAMO_LAYER_COUNT ? camo_layer_names[l->type] : "unknown");
    return -1;
}

/* ---- graph inputs and outputs, the model ---- */

static Onnx__TensorShapeProto__Dimension *dim(int64_t v, const char *param) {
    Onnx__TensorShapeProto__Dimension *d = camo_malloc(sizeof *d);
    onnx__tensor_shape_proto__dimension__init(d);
    if (param) {
        d->value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_PARAM;
        d->dim_param = camo_strdup(param);
    } else {
        d->value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE;
        d->dim_value = v;
    }
    return d;
}

/* A float tensor (N, C, H, W); N is "N" with a dynamic batch, else 1. */
static Onnx__ValueInfoProto *value_info(const char *name, int dynamic, int C, int H, int W) {
    Onnx__TensorShapeProto *shape = camo_malloc(sizeof *shape);
    onnx__tensor_shape_proto__init(shape);
    shape->n_dim = 4;
    shape->dim = camo_malloc(4 * sizeof *shape->dim);
    shape->dim[0] = dim(1, dynamic ? "N" : NULL);
    shape->dim[1] = dim(C, NULL);
    shape->dim[2] = dim(H, NULL);
    shape->dim[3] = dim(W, NULL);
    Onnx__TypeProto__Tensor *tt = camo_malloc(sizeof *tt);
    onnx__type_proto__tensor__init(tt);
    tt->has_elem_type = 1;
    tt->elem_type = ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT;
    tt->shape = shape;
    Onnx__TypeProto *type = camo_malloc(sizeof *type);
    onnx__type_proto__init(type);
    type->value_case = ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE;
    type->tensor_type = tt;
    Onnx__ValueInfoProto *vi = camo_malloc(sizeof *vi);
    onnx__value_info_proto__init(vi);
    vi->name = camo_strdup(name);
    vi->type = type;
    return vi;
}

static Onnx__StringStringEntryProto *meta(const char *key, const char *value) {
    Onnx__StringStringEntryProto *e = camo_malloc(sizeof *e);
    onnx__string_string_entry_proto__init(e);
    e->key = camo_strdup(key);
    e->value = camo_strdup(value);
    return e;
}

/* The IR version of the ONNX release that introduced the opset (onnx 1.8: opset 13, IR
 * 7; 1.10: 15, IR 8; 1.14: 19, IR 9; 1.16: 21, IR 10): readers of that release take it. */
static int64_t ir_version_for(int opset) {
    return opset <= 14 ? 7 : opset <= 18 ? 8 : opset <= 20 ? 9 : 10;
}

/* The model around the graph's nodes and initializers (which it takes over). */
static Onnx__ModelProto *model_new(graph *g, const camo_onnx_opts *o, int n_out,
                                   const char *const *out_name) {
    camo_net *net = g->net;
    Onnx__GraphProto *gr = camo_malloc(sizeof *gr);
    onnx__graph_proto__init(gr);
    gr->name = camo_strdup(net->name);
    gr->n_node = g->n_node;
    gr->node = g->node;
    gr->n_initializer = g->n_init;
    gr->initializer = g->init;
    g->node = NULL; /* the model owns them now */
    g->init = NULL;
    g->n_node = g->n_init = 0;
    gr->n_input = 1;
    gr->input = camo_malloc(sizeof *gr->input);
    gr->input[0] = value_info("input", g->dynamic, net->input_channels, net->H, net->W);
    gr->n_output = (size_t)n_out;
    gr->output = camo_malloc((size_t)n_out * sizeof *gr->output);
    for (int k = 0; k < n_out; k++) {
        const camo_layer *l = &net->layers[net->outputs[k].layer];
        gr->output[k] = value_info(out_name[k], g->dynamic, l->C, l->H, l->W);
    }
    Onnx__ModelProto *m = camo_malloc(sizeof *m);
    onnx__model_proto__init(m);
    m->has_ir_version = 1;
    m->ir_version = ir_version_for(g->opset);
    m->producer_name = camo_strdup("camotrain");
    m->has_model_version = 1;
    m->model_version = 1;
    if (o->doc) m->doc_string = camo_strdup(o->doc);
    m->graph = gr;
    m->n_opset_import = 1;
    m->opset_import = camo_malloc(sizeof *m->opset_import);
    m->opset_import[0] = camo_malloc(sizeof **m->opset_import);
    onnx__operator_set_id_proto__init(m->opset_import[0]);
    m->opset_import[0]->domain = camo_strdup("");
    m->opset_import[0]->has_version = 1;
    m->opset_import[0]->version = g->opset;
    char size[48];
    snprintf(size, sizeof size, "%dx%d", net->H, net->W);
    m->n_metadata_props = 2;
    m->metadata_props = camo_malloc(2 * sizeof *m->metadata_props);
    m->metadata_props[0] = meta("camotrain.network", net->name);
    m->metadata_props[1] = meta("camotrain.input_size", size);
    return m;
}

/* ---- writing ---- */

/* protobuf-c's output sink: appends to a file; CAMO_TEST_ONNX_WRITE_FAIL=1 (tests) makes it
 * fail half-way, as a full disk would. */
typedef struct {
    ProtobufCBuffer base;
    FILE *fp;
    size_t written, fail_at;
    int err;
} file_sink;

static void sink_append(ProtobufCBuffer *b, size_t len, const uint8_t *data) {
    file_sink *s = (file_sink *)b;
    if (s->err) return;
    if (s->fail_at && s->written + len >= s->fail_at) {
        size_t part = s->fail_at - s->written;
        s->err = fwrite(data, 1, part, s->fp) == part ? ENOSPC : EIO;
        return;
    }
    errno = 0;
    if (fwrite(data, 1, len, s->fp) != len) s->err = errno ? errno : EIO;
    s->written += len;
}

/* Makes the rename durable; a failure here leaves a complete file, so it only warns. */
static void sync_dir(const char *path) {
    char *dir = camo_strdup(path);
    char *slash = strrchr(dir, '/');
    if (!slash) strcpy(dir, ".");
    else if (slash == dir) dir[1] = 0;
    else *slash = 0;
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0 || (fsync(fd) != 0 && errno != EINVAL))
        camo_warn("%s: sync of folder '%s': %s", path, dir, strerror(errno));
    if (fd >= 0) close(fd);
    free(dir);
}

/* "<path>.tmp.<pid>", written, flushed and synced, then renamed over path. */
static int write_model(const Onnx__ModelProto *m, const char *path, size_t *bytes) {
    size_t size = onnx__model_proto__get_packed_size(m);
    if (size > INT32_MAX) { /* protobuf's limit for one message */
        CAMO_ERR("cannot write '%s': the model takes %zu bytes, over protobuf's 2 GiB",
                 path, size);
        return CAMO_ERR_INPUT;
    }
    size_t tn = strlen(path) + 32;
    char *tmp = camo_malloc(tn);
    snprintf(tmp, tn, "%s.tmp.%ld", path, (long)getpid());
    file_sink s = {.base = {sink_append}, .fp = fopen(tmp, "wb")};
    if (!s.fp) {
        CAMO_ERR("cannot write '%s': cannot create '%s': %s", path, tmp, strerror(errno));
        free(tmp);
        return CAMO_ERR_INPUT;
    }
    const char *f = getenv("CAMO_TEST_ONNX_WRITE_FAIL");
    if (f && !strcmp(f, "1")) s.fail_at = size / 2 + 1;
    size_t packed = onnx__model_proto__pack_to_buffer(m, &s.base);
    int err = s.err ? s.err : packed != size ? EIO : 0;
    errno = 0;
    if (!err && (fflush(s.fp) != 0 || fsync(fileno(s.fp)) != 0)) err = errno ? errno : EIO;
    if (fclose(s.fp) != 0 && !err) err = errno ? errno : EIO;
    if (!err && rename(tmp, path) != 0) err = errno;
    if (err) {
        unlink(tmp); /* never a half-written file; an old one at path is left as it was */
        CAMO_ERR("cannot write '%s': %s", path, strerror(err));
        free(tmp);
        return CAMO_ERR_RUNTIME;
    }
    sync_dir(path);
    free(tmp);
    *bytes = size;
    return 0;
}

/* ---- the export ---- */

/* Layers some exported output depends on (inputs come before their readers). */
static char *needed_layers(const camo_net *net, int n_out) {
    char *need = camo_calloc((size_t)net->n_layers + 1, 1);
    for (int k = 0; k < n_out; k++) need[net->outputs[k].layer] = 1;
    for (int i = net->n_layers - 1; i >= 0; i--) {
        const camo_layer *l = &net->layers[i];
        for (int k = 0; need[i] && k < l->n_in; k++)
            if (l->in[k] >= 0) need[l->in[k]] = 1;
    }
    return need;
}

/* Names (input, parameters, outputs, layers) and every layer's nodes; then an Identity
 * for an output whose layer's value already has another output's name. */
static int build(graph *g, const char *need, int n_out, const char **out_name) {
    camo_net *net = g->net;
    claim_exact(g, "input");
    for (int i = 0; i < net->n_params; i++)
        if (need[net->params[i].layer] && net->params[i].kind != CAMO_PARAM_COUNTER)
            claim_exact(g, net->params[i].name);
    for (int k = 0; k < n_out; k++) {
        out_name[k] = fresh(g, "%s", net->outputs[k].name);
        if (!g->val[net->outputs[k].layer]) g->val[net->outputs[k].layer] = out_name[k];
    }
    for (int i = 0; i < net->n_layers; i++) {
        if (!need[i]) continue;
        if (!g->val[i]) g->val[i] = fresh(g, "%s", net->layers[i].name);
        add_params(g, &net->layers[i]);
        if (emit_layer(g, i)) return CAMO_ERR_INPUT;
    }
    for (int k = 0; k < n_out; k++) {
        const char *v = g->val[net->outputs[k].layer];
        if (strcmp(v, out_name[k]) != 0) node(g, "Identity", out_name[k], 1, v);
    }
    return 0;
}

static void graph_free(graph *g) {
    for (size_t i = 0; i < g->n_node; i++)
        protobuf_c_message_free_unpacked(&g->node[i]->base, NULL);
    for (size_t i = 0; i < g->n_init; i++)
        protobuf_c_message_free_unpacked(&g->init[i]->base, NULL);
    free(g->node);
    free(g->init);
    for (size_t i = 0; i < g->n_name; i++) free(g->name[i]);
    free(g->name);
    free(g->val);
}

int camo_onnx_export(camo_net *net, const char *path, const camo_onnx_opts *opts,
                     camo_onnx_stats *stats) {
    camo_onnx_opts o = opts ? *opts : (camo_onnx_opts){0};
    if (!o.opset) o.opset = CAMO_ONNX_OPSET_DEFAULT;
    if (o.opset < CAMO_ONNX_OPSET_MIN || o.opset > CAMO_ONNX_OPSET_MAX) {
        CAMO_ERR("opset %d: camotrain writes opsets %d to %d", o.opset, CAMO_ONNX_OPSET_MIN,
                 CAMO_ONNX_OPSET_MAX);
        return CAMO_ERR_INPUT;
    }
    if (net->N < 1) {
        CAMO_ERR("%s: export: the network has no input size yet", net->name);
        return CAMO_ERR_INPUT;
    }
    graph g = {.net = net, .opset = o.opset, .dynamic = o.dynamic_batch};
    int n_out = o.all_outputs ? net->n_outputs : 1;
    const char *out_name[CAMO_MAX_OUTPUTS];
    char *need = needed_layers(net, n_out);
    g.val = camo_calloc((size_t)net->n_layers + 1, sizeof *g.val);
    int rc = build(&g, need, n_out, out_name);
    free(need);
    if (rc) {
        graph_free(&g);
        return rc;
    }
    int n_nodes = (int)g.n_node, n_inits = (int)g.n_init;
    Onnx__ModelProto *m = model_new(&g, &o, n_out, out_name);
    size_t bytes = 0;
    rc = write_model(m, path, &bytes);
    onnx__model_proto__free_unpacked(m, NULL);
    graph_free(&g);
    if (!rc && stats) *stats = (camo_onnx_stats){n_nodes, n_inits, n_out, bytes};
    return rc;
}

#endif /* CAMO_HAVE_ONNX */
