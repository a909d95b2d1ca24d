/* net_parse.c: builds a network from a libconfig description (docs/models.md). Config
 * layers (their types: config_types) expand into primitive layers (layer.h); parameters
 * get PyTorch state_dict names. */
#include "layer.h"

#include <ctype.h>
#include <string.h>

#include <libconfig.h>

#include "core/cfgutil.h"
#include "core/common.h"
#include "moe.h"

void net_alloc_params(camo_net *net); /* net.c */

typedef struct {
    camo_net *net;
    int cap_layers, cap_params;
    int n_names, cap_names;
    struct name_entry { char name[CAMO_NAME_MAX]; int layer; } *names;
    const char *where; /* file:line of the config layer being parsed */
    char label[CAMO_NAME_MAX + 32]; /* "layer #3 'enc1'": what messages call it */
    const char *type;  /* its type (NULL until read) */
    const char *scope; /* inside a mixture-of-experts expert: "NAME.experts.<e>." */
    int scope_input;   /* ... and its dispatch layer, what "input" means there */
} parser;

/* ---- building blocks ---- */

static int lookup_name(const parser *P, const char *name) {
    if (strcmp(name, "input") == 0) return -1;
    for (int i = P->n_names - 1; i >= 0; i--)
        if (strcmp(P->names[i].name, name) == 0) return P->names[i].layer;
    return -2;
}

/* A name as a config layer writes it: inside an expert its own layers' names come first,
 * and "input" is the expert's input. */
static int lookup(const parser *P, const char *name) {
    if (!P->scope) return lookup_name(P, name);
    if (strcmp(name, "input") == 0) return P->scope_input;
    char full[2 * CAMO_NAME_MAX];
    snprintf(full, sizeof full, "%s%s", P->scope, name);
    int li = lookup_name(P, full);
    return li != -2 ? li : lookup_name(P, name);
}

static void define_name(parser *P, const char *name, int layer) {
    for (int i = 0; i < P->n_names; i++)
        if (strcmp(P->names[i].name, name) == 0) { P->names[i].layer = layer; return; }
    if (P->n_names == P->cap_names) {
        P->cap_names = P->cap_names ? 2 * P->cap_names : 64;
        P->names = camo_realloc(P->names, (size_t)P->cap_names * sizeof *P->names);
    }
    snprintf(P->names[P->n_names].name, CAMO_NAME_MAX, "%s", name);
    P->names[P->n_names++].layer = layer;
}

static int new_layer(parser *P, camo_layer_type type, const char *name, const int *in, int n_in,
                     int C) {
    camo_net *net = P->net;
    if (net->n_layers == P->cap_layers) {
        P->cap_layers = P->cap_layers ? 2 * P->cap_layers : 64;
        net->layers = camo_realloc(net->layers, (size_t)P->cap_layers * sizeof *net->layers);
    }
    camo_layer *l = &net->layers[net->n_layers];
    memset(l, 0, sizeof *l);
    l->type = type;
    snprintf(l->name, sizeof l->name, "%s", name);
    snprintf(l->where, sizeof l->where, "%s", P->where);
    l->n_in = n_in;
    memcpy(l->in, in, (size_t)n_in * sizeof(int));
    l->C = C;
    l->param0 = net->n_params;
    define_name(P, name, net->n_layers);
    return net->n_layers++;
}

static camo_param *add_param(parser *P, const char *suffix, camo_param_kind kind, int ndim,
                             const int64_t *shape) {
    camo_net *net = P->net;
    if (net->n_params == P->cap_params) {
        P->cap_params = P->cap_params ? 2 * P->cap_params : 128;
        net->params = camo_realloc(net->params, (size_t)P->cap_params * sizeof *net->params);
    }
    camo_param *p = &net->params[net->n_params++];
    memset(p, 0, sizeof *p);
    camo_layer *l = &net->layers[net->n_layers - 1];
    snprintf(p->name, sizeof p->name, "%s.%s", l->name, suffix);
    p->kind = kind;
    p->ndim = ndim;
    p->numel = 1;
    for (int i = 0; i < ndim; i++) { p->shape[i] = shape[i]; p->numel *= (size_t)shape[i]; }
    p->layer = net->n_layers - 1;
    p->no_decay = ndim <= 1; /* biases and norm scales: no weight decay */
    l->n_params++;
    return p;
}

static int prim_conv(parser *P, const char *name, int in, int C, int K, int size, int stride,
                     int pad, int dil, int groups, int bias) {
    if (C % groups || K % groups) {
        CAMO_ERR("%s: %s: groups = %d must divide the %d input and %d output channels",
                 P->where, P->label, groups, C, K);
        return -3;
    }
    int li = new_layer(P, CAMO_LAYER_CONV2D, name, &in, 1, K);
    camo_layer *l = &P->net->layers[li];
    camo_conv_desc *d = &l->u.conv.d;
    d->C = C; d->K = K; d->R = d->S = size;
    d->stride_h = d->stride_w = stride;
    d->pad_h = d->pad_w = pad;
    d->dil_h = d->dil_w = dil;
    d->groups = groups;
    l->u.conv.has_bias = bias;
    int64_t ws[4] = {K, C / groups, size, size};
    int fan_in = C / groups * size * size;
    camo_param *w = add_param(P, "weight", CAMO_PARAM_WEIGHT, 4, ws);
    w->layout = CAMO_LAYOUT_OHWI;
    w->fan_in = fan_in;
    if (bias) { /* add_param may move net->params: w is stale after it */
        int64_t bs[1] = {K};
        add_param(P, "bias", CAMO_PARAM_WEIGHT, 1, bs)->fan_in = fan_in;
    }
    return li;
}

static int prim_bn(parser *P, const char *name, int in, int C, double eps, double momentum) {
    int li = new_layer(P, CAMO_LAYER_BATCHNORM, name, &in, 1, C);
    camo_layer *l = &P->net->layers[li];
    l->u.bn.eps = (float)eps;
    l->u.bn.momentum = (float)momentum;
    int64_t s[1] = {C};
    add_param(P, "weight", CAMO_PARAM_WEIGHT, 1, s);
    add_param(P, "bias", CAMO_PARAM_WEIGHT, 1, s);
    add_param(P, "running_mean", CAMO_PARAM_BUFFER, 1, s);
    add_param(P, "running_var", CAMO_PARAM_BUFFER, 1, s);
    /* the counter's pointer is set after parsing: layers may still be reallocated */
    add_param(P, "num_batches_tracked", CAMO_PARAM_COUNTER, 0, s);
    return li;
}

static int prim_act(parser *P, const char *name, int in, int C, camo_act act, float alpha) {
    int li = new_layer(P, CAMO_LAYER_ACTIVATION, name, &in, 1, C);
    P->net->layers[li].u.act.act = act;
    P->net->layers[li].u.act.alpha = alpha;
    return li;
}

static int channels_of(const parser *P, int layer) {
    return layer < 0 ? P->net->input_channels : P->net->layers[layer].C;
}

/* ---- config readers ---- */

/* The activation `act` names in conv and resblock; -1 (error set) for an unknown name.
 * After config_types, whose activation types it takes the names from. */
static int find_act(const parser *P, const config_setting_t *s, const char *name,
                    camo_act *act);

static int positive(parser *P, const config_setting_t *s, const char *key, int v, int min) {
    if (v >= min) return 0;
    CAMO_ERR("%s: %s: '%s' must be >= %d, not %d", cfg_where(s), P->label, key, min, v);
    return -1;
}

/* Reads `from`: a name or a list of names; default the previous layer. */
static int read_from(parser *P, const config_setting_t *s, int prev, int *in, int *n_in) {
    const config_setting_t *f = config_setting_get_member(s, "from");
    if (!f) { in[0] = prev; *n_in = 1; return 0; }
    int t = config_setting_type(f), n = 1;
    if (t == CONFIG_TYPE_ARRAY || t == CONFIG_TYPE_LIST) n = config_setting_length(f);
    else if (t != CONFIG_TYPE_STRING) n = 0;
    if (n < 1 || n > CAMO_MAX_INPUTS) {
        CAMO_ERR("%s: %s: 'from' must be a layer name or a list of 1..%d names",
                 cfg_where(f), P->label, CAMO_MAX_INPUTS);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        const config_setting_t *e =
            t == CONFIG_TYPE_STRING ? f : config_setting_get_elem(f, (unsigned)i);
        const char *name = config_setting_get_string(e);
        if (!name) {
            CAMO_ERR("%s: %s: 'from' entries must be strings", cfg_where(f), P->label);
            return -1;
        }
        in[i] = lookup(P, name);
        if (in[i] == -2) {
            CAMO_ERR("%s: %s: unknown layer '%s' in 'from' (a layer can only use "
                     "layers defined before it, or \"input\")", cfg_where(f), P->label, name);
            return -1;
        }
    }
    *n_in = n;
    return 0;
}

static int read_int_pair(parser *P, const config_setting_t *s, const char *key, int *a, int *b) {
    const config_setting_t *v = config_setting_get_member(s, key);
    int t = config_setting_type(v);
    if (t == CONFIG_TYPE_INT) { *a = *b = config_setting_get_int(v); }
    else if ((t == CONFIG_TYPE_ARRAY || t == CONFIG_TYPE_LIST) && config_setting_length(v) == 2 &&
             config_setting_type(config_setting_get_elem(v, 0)) == CONFIG_TYPE_INT &&
             config_setting_type(config_setting_get_elem(v, 1)) == CONFIG_TYPE_INT) {
        *a = config_setting_get_int_elem(v, 0);
        *b = config_setting_get_int_elem(v, 1);
    } else {
        CAMO_ERR("%s: %s: '%s' must be an integer or [h, w]", cfg_where(v), P->label, key);
        return -1;
    }
    if (*a < 1 || *b < 1) {
        CAMO_ERR("%s: %s: '%s' must be positive", cfg_where(v), P->label, key);
        return -1;
    }
    return 0;
}

/* ---- names a user may have misspelt ---- */

/* Edit distance (insertions, deletions, substitutions) of two short names; capped at 99. */
static int edit_distance(const char *a, const char *b) {
    size_t na = strlen(a), nb = strlen(b);
    if (na > 48 || nb > 48) return 99;
    int row[49];
    for (size_t j = 0; j <= nb; j++) row[j] = (int)j;
    for (size_t i = 1; i <= na; i++) {
        int diag = row[0];
        row[0] = (int)i;
        for (size_t j = 1; j <= nb; j++) {
            int up = row[j], best = diag + (a[i - 1] != b[j - 1]);
            best = CAMO_MIN(best, up + 1);
            best = CAMO_MIN(best, row[j - 1] + 1);
            diag = up;
            row[j] = best;
        }
    }
    return row[nb];
}

/* The entry of `names` closest to `s`, if close enough to be a likely typo (at most two
 * edits, and fewer than half the letters): "convv" -> "conv", never "dense" -> "resize". */
static const char *closest(const char *s, const char *const *names, int n) {
    const char *best = NULL;
    int best_d = 3;
    for (int i = 0; i < n && names[i]; i++) {
        int d = edit_distance(s, names[i]);
        if (d < best_d && 2 * d < (int)strlen(s)) { best = names[i]; best_d = d; }
    }
    return best;
}

/* Writes ", " joined names into buf. */
static void join_names(char *buf, size_t n, const char *const *names, int count) {
    buf[0] = 0;
    for (int i = 0; i < count && names[i]; i++) {
        size_t len = strlen(buf);
        snprintf(buf + len, n - len, "%s%s", i ? ", " : "", names[i]);
    }
}

#define KEYS_MAX 32 /* a bound on a type's NULL-terminated key list */

/* Unknown keys are errors (STYLE.md: a typo must not be ignored). The message names the
 * key's file:line, the layer and its type, a likely intended key, and the keys the type
 * takes. */
static int check_keys(const parser *P, const config_setting_t *s, const char *const *allowed) {
    for (int i = 0; i < config_setting_length(s); i++) {
        const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
        const char *key = config_setting_name(e);
        int ok = !key;
        for (const char *const *a = allowed; *a && !ok; a++) ok = strcmp(*a, key) == 0;
        if (ok) continue;
        const char *guess = closest(key, allowed, KEYS_MAX);
        char list[512];
        join_names(list, sizeof list, allowed, KEYS_MAX);
        CAMO_ERR("%s: %s: unknown key '%s' for type '%s' (%s%s%skeys: %s)", cfg_where(e),
                 P->label, key, P->type, guess ? "did you mean '" : "", guess ? guess : "",
                 guess ? "'? " : "", list);
        return -1;
    }
    return 0;
}

/* ---- config layer types ---- */

/* A config type's reader: adds the primitive layers of config layer s, named `name`, on
 * inputs in[0..n_in) (parse_layer has checked one input unless the type takes several),
 * and returns the last, or -3 (error set). arg: the variant its config_types line gives. */
typedef int (*type_reader)(parser *P, const config_setting_t *s, const char *name,
                           const int *in, int n_in, int arg);

/* `filters`: a count, or "classes" (the network's classes: a head's width) */
static int read_filters(parser *P, const config_setting_t *s, int *K) {
    const config_setting_t *f = config_setting_get_member(s, "filters");
    if (f && config_setting_type(f) == CONFIG_TYPE_STRING) {
        if (strcmp(config_setting_get_string(f), "classes") != 0) {
            CAMO_ERR("%s: %s: filters must be a number or \"classes\"", cfg_where(f), P->label);
            return -1;
        }
        *K = P->net->classes;
        return 0;
    }
    return cfg_need_int(s, "filters", K) != 0 ? -1 : 0;
}

static int parse_conv(parser *P, const config_setting_t *s, const char *name, const int *from,
                      int n_in, int arg) {
    static const char *const keys[] = {"name", "type", "from", "filters", "size", "stride",
                                       "pad", "dilation", "groups", "bias", "bn", "act", NULL};
    (void)n_in, (void)arg;
    int in = from[0];
    if (check_keys(P, s, keys)) return -3;
    int K = 0, size = 0, stride = 1, dil = 1, groups = 1, bn = 0, bias, pad;
    const char *act_name = "linear";
    if (read_filters(P, s, &K)) return -3;
    if (cfg_need_int(s, "size", &size) || cfg_int(s, "stride", &stride) < 0 ||
        cfg_int(s, "dilation", &dil) < 0 || cfg_int(s, "groups", &groups) < 0 ||
        cfg_bool(s, "bn", &bn) < 0 || cfg_string(s, "act", &act_name) < 0)
        return -3;
    bias = !bn;
    pad = dil * (size - 1) / 2;
    if (cfg_bool(s, "bias", &bias) < 0 || cfg_int(s, "pad", &pad) < 0) return -3;
    if (positive(P, s, "filters", K, 1) || positive(P, s, "size", size, 1) ||
        positive(P, s, "stride", stride, 1) || positive(P, s, "dilation", dil, 1) ||
        positive(P, s, "groups", groups, 1) || positive(P, s, "pad", pad, 0))
        return -3;
    camo_act act;
    if (find_act(P, s, act_name, &act) != 0) return -3;
    int composite = bn || act != CAMO_ACT_IDENTITY;
    char sub[CAMO_NAME_MAX + 8];
    snprintf(sub, sizeof sub, composite ? "%s.conv" : "%s", name);
    int li = prim_conv(P, sub, in, channels_of(P, in), K, size, stride, pad, dil, groups, bias);
    if (li < -2) return li;
    if (bn) {
        snprintf(sub, sizeof sub, "%s.bn", name);
        li = prim_bn(P, sub, li, K, 1e-5, 0.1);
    }
    if (act != CAMO_ACT_IDENTITY) {
        snprintf(sub, sizeof sub, "%s.act", name);
        li = prim_act(P, sub, li, K, act, 0.01f);
    }
    return li;
}

/* The keys and activation shared by resblock and bottleneck: filters, stride, dilation
 * (>= 1) and act (default relu: torchvision's; tests swap in a smooth one, no kinks). */
static int read_block(parser *P, const config_setting_t *s, int *K, int *stride, int *dil,
                      camo_act *act) {
    static const char *const keys[] = {"name", "type", "from", "filters", "stride",
                                       "dilation", "act", NULL};
    const char *act_name = "relu";
    *stride = *dil = 1;
    if (check_keys(P, s, keys) || cfg_need_int(s, "filters", K) ||
        cfg_int(s, "stride", stride) < 0 || cfg_int(s, "dilation", dil) < 0 ||
        cfg_string(s, "act", &act_name) < 0)
        return -1;
    if (positive(P, s, "filters", *K, 1) || positive(P, s, "stride", *stride, 1) ||
        positive(P, s, "dilation", *dil, 1))
        return -1;
    return find_act(P, s, act_name, act);
}

/* A residual block's end: the shortcut (identity, or when the stride is not 1 or the
 * channels change, NAME.downsample.0: 1x1 conv with the stride, no bias, and
 * NAME.downsample.1: BN), NAME.add of branch `a` and the shortcut, NAME.relu. */
static int block_tail(parser *P, const char *name, int a, int in, int C, int K, int stride,
                      camo_act act) {
    char sub[CAMO_NAME_MAX + 16];
#define SUB(fmt) (snprintf(sub, sizeof sub, fmt, name), sub)
    int shortcut = in;
    if (stride != 1 || C != K) {
        shortcut = prim_conv(P, SUB("%s.downsample.0"), in, C, K, 1, stride, 0, 1, 1, 0);
        shortcut = prim_bn(P, SUB("%s.downsample.1"), shortcut, K, 1e-5, 0.1);
    }
    int sum_in[2] = {a, shortcut};
    int sum = new_layer(P, CAMO_LAYER_ADD, SUB("%s.add"), sum_in, 2, K);
    return prim_act(P, SUB("%s.relu"), sum, K, act, 0);
#undef SUB
}

/* torchvision's BasicBlock; with `dilation`, mmsegmentation's (torchvision refuses it):
 * conv1 3x3 with the stride, padding and dilation `dilation`; conv2 3x3, padding 1. */
static int parse_resblock(parser *P, const config_setting_t *s, const char *name,
                          const int *from, int n_in, int arg) {
    (void)n_in, (void)arg;
    int in = from[0], K = 0, stride, dil;
    camo_act act;
    if (read_block(P, s, &K, &stride, &dil, &act)) return -3;
    int C = channels_of(P, in);
    char sub[CAMO_NAME_MAX + 16];
#define SUB(fmt) (snprintf(sub, sizeof sub, fmt, name), sub)
    int a = prim_conv(P, SUB("%s.conv1"), in, C, K, 3, stride, dil, dil, 1, 0);
    a = prim_bn(P, SUB("%s.bn1"), a, K, 1e-5, 0.1);
    a = prim_act(P, SUB("%s.relu1"), a, K, act, 0);
    a = prim_conv(P, SUB("%s.conv2"), a, K, K, 3, 1, 1, 1, 1, 0);
    a = prim_bn(P, SUB("%s.bn2"), a, K, 1e-5, 0.1);
#undef SUB
    return block_tail(P, name, a, in, C, K, stride, act);
}

/* torchvision's Bottleneck (ResNet-50/101/152): conv1 1x1 to `filters` (the width), conv2
 * 3x3 with the stride and the dilation (padding = dilation), conv3 1x1 to 4 * filters. */
static int parse_bottleneck(parser *P, const config_setting_t *s, const char *name,
                            const int *from, int n_in, int arg) {
    (void)n_in, (void)arg;
    int in = from[0], F = 0, stride, dil;
    camo_act act;
    if (read_block(P, s, &F, &stride, &dil, &act)) return -3;
    int C = channels_of(P, in), K = 4 * F;
    char sub[CAMO_NAME_MAX + 16];
#define SUB(fmt) (snprintf(sub, sizeof sub, fmt, name), sub)
    int a = prim_conv(P, SUB("%s.conv1"), in, C, F, 1, 1, 0, 1, 1, 0);
    a = prim_bn(P, SUB("%s.bn1"), a, F, 1e-5, 0.1);
    a = prim_act(P, SUB("%s.relu1"), a, F, act, 0);
    a = prim_conv(P, SUB("%s.conv2"), a, F, F, 3, stride, dil, dil, 1, 0);
    a = prim_bn(P, SUB("%s.bn2"), a, F, 1e-5, 0.1);
    a = prim_act(P, SUB("%s.relu2"), a, F, act, 0);
    a = prim_conv(P, SUB("%s.conv3"), a, F, K, 1, 1, 0, 1, 1, 0);
    a = prim_bn(P, SUB("%s.bn3"), a, K, 1e-5, 0.1);
#undef SUB
    return block_tail(P, name, a, in, C, K, stride, act);
}

/* arg: the primitive, CAMO_LAYER_BATCHNORM or CAMO_LAYER_LAYERNORM */
static int parse_norm(parser *P, const config_setting_t *s, const char *name, const int *from,
                      int n_in, int arg) {
    static const char *const bn_keys[] = {"name", "type", "from", "eps", "momentum", NULL};
    static const char *const ln_keys[] = {"name", "type", "from", "eps", NULL};
    (void)n_in;
    int in = from[0], ln = arg == CAMO_LAYER_LAYERNORM;
    if (check_keys(P, s, ln ? ln_keys : bn_keys))
        return -3;
    double eps = ln ? 1e-6 : 1e-5, momentum = 0.1;
    if (cfg_float(s, "eps", &eps) < 0 || cfg_float(s, "momentum", &momentum) < 0) return -3;
    int C = channels_of(P, in);
    if (!ln) return prim_bn(P, name, in, C, eps, momentum);
    int li = new_layer(P, CAMO_LAYER_LAYERNORM, name, &in, 1, C);
    P->net->layers[li].u.ln.eps = (float)eps;
    int64_t sh[1] = {C};
    add_param(P, "weight", CAMO_PARAM_WEIGHT, 1, sh);
    add_param(P, "bias", CAMO_PARAM_WEIGHT, 1, sh);
    return li;
}

/* arg: the camo_pool_type */
static int parse_pool(parser *P, const config_setting_t *s, const char *name, const int *from,
                      int n_in, int arg) {
    static const char *const max_keys[] = {"name", "type", "from", "size", "stride", "pad", NULL};
    static const char *const avg_keys[] = {"name", "type", "from", "size", "stride", "pad",
                                           "count_include_pad", NULL};
    (void)n_in;
    int in = from[0], avg = arg == CAMO_POOL_AVG;
    if (check_keys(P, s, avg ? avg_keys : max_keys))
        return -3;
    int size = 0, stride, pad = 0, cip = 1;
    if (cfg_need_int(s, "size", &size)) return -3;
    stride = size;
    if (cfg_int(s, "stride", &stride) < 0 || cfg_int(s, "pad", &pad) < 0 ||
        cfg_bool(s, "count_include_pad", &cip) < 0)
        return -3;
    if (positive(P, s, "size", size, 1) || positive(P, s, "stride", stride, 1) ||
        positive(P, s, "pad", pad, 0))
        return -3;
    int li = new_layer(P, CAMO_LAYER_POOL, name, &in, 1, channels_of(P, in));
    camo_pool_desc *d = &P->net->layers[li].u.pool.d;
    d->type = (camo_pool_type)arg;
    d->R = d->S = size;
    d->stride_h = d->stride_w = stride;
    d->pad_h = d->pad_w = pad;
    d->count_include_pad = cip;
    return li;
}

static int parse_adaptive(parser *P, const config_setting_t *s, const char *name,
                          const int *from, int n_in, int arg) {
    static const char *const keys[] = {"name", "type", "from", "size", NULL};
    (void)n_in, (void)arg;
    int in = from[0];
    if (check_keys(P, s, keys)) return -3;
    if (!config_setting_get_member(s, "size")) {
        CAMO_ERR("%s: %s: missing key 'size'", cfg_where(s), P->label);
        return -3;
    }
    int Ph, Pw;
    if (read_int_pair(P, s, "size", &Ph, &Pw)) return -3;
    int li = new_layer(P, CAMO_LAYER_ADAPTIVE_AVGPOOL, name, &in, 1, channels_of(P, in));
    P->net->layers[li].u.adaptive.P = Ph;
    P->net->layers[li].u.adaptive.Q = Pw;
    return li;
}

static int parse_resize(parser *P, const config_setting_t *s, const char *name,
                        const int *from, int n_in, int arg) {
    static const char *const keys[] = {"name", "type", "from", "scale", "size", "like",
                                       "align_corners", NULL};
    (void)n_in, (void)arg;
    int in = from[0];
    if (check_keys(P, s, keys)) return -3;
    int has_scale = config_setting_get_member(s, "scale") != NULL;
    int has_size = config_setting_get_member(s, "size") != NULL;
    int has_like = config_setting_get_member(s, "like") != NULL;
    if (has_scale + has_size + has_like != 1) {
        CAMO_ERR("%s: %s: resize needs exactly one of 'scale', 'size', 'like'",
                 cfg_where(s), P->label);
        return -3;
    }
    int li = new_layer(P, CAMO_LAYER_RESIZE, name, &in, 1, channels_of(P, in));
    camo_layer *l = &P->net->layers[li];
    int ac = 0;
    if (cfg_bool(s, "align_corners", &ac) < 0) return -3;
    l->u.resize.align_corners = ac;
    if (has_scale) {
        double sc = 0;
        if (cfg_float(s, "scale", &sc) < 0) return -3;
        if (sc <= 0) {
            CAMO_ERR("%s: %s: scale must be positive", cfg_where(s), P->label);
            return -3;
        }
        l->u.resize.mode = RESIZE_SCALE;
        l->u.resize.scale = (float)sc;
    } else if (has_size) {
        l->u.resize.mode = RESIZE_SIZE;
        if (read_int_pair(P, s, "size", &l->u.resize.P, &l->u.resize.Q)) return -3;
    } else {
        const char *like = NULL;
        if (cfg_string(s, "like", &like) < 0) return -3;
        int target = lookup(P, like);
        if (target == -2 || target == li) {
            CAMO_ERR("%s: %s: unknown layer '%s' in 'like' (it must be defined "
                     "before, or be \"input\")", cfg_where(s), P->label, like);
            return -3;
        }
        l->u.resize.mode = RESIZE_LIKE;
        l->u.resize.like = target;
    }
    return li;
}

/* arg: the primitive, CAMO_LAYER_CONCAT, _ADD or _MUL */
static int parse_join(parser *P, const config_setting_t *s, const char *name, const int *in,
                      int n_in, int arg) {
    static const char *const keys[] = {"name", "type", "from", NULL};
    camo_layer_type type = (camo_layer_type)arg;
    if (check_keys(P, s, keys)) return -3;
    int min_in = 2, max_in = type == CAMO_LAYER_MUL ? 2 : CAMO_MAX_INPUTS;
    if (n_in < min_in || n_in > max_in) {
        CAMO_ERR("%s: %s: needs %s in 'from', got %d", cfg_where(s), P->label,
                 type == CAMO_LAYER_MUL ? "exactly 2 layers" : "at least 2 layers", n_in);
        return -3;
    }
    int C = channels_of(P, in[0]);
    if (type == CAMO_LAYER_CONCAT) {
        for (int k = 1; k < n_in; k++) C += channels_of(P, in[k]);
    } else {
        for (int k = 1; k < n_in; k++) {
            int Ck = channels_of(P, in[k]);
            if (Ck == C || (type == CAMO_LAYER_MUL && Ck == 1)) continue;
            CAMO_ERR("%s: %s: input %d has %d channels, input 1 has %d", cfg_where(s),
                     P->label, k + 1, Ck, C);
            return -3;
        }
    }
    return new_layer(P, type, name, in, n_in, C);
}

/* arg: the camo_act. Only leaky_relu takes `slope`; the others ignore alpha. */
static int parse_act(parser *P, const config_setting_t *s, const char *name, const int *in,
                     int n_in, int arg) {
    static const char *const keys[] = {"name", "type", "from", NULL};
    static const char *const leaky_keys[] = {"name", "type", "from", "slope", NULL};
    (void)n_in;
    if (check_keys(P, s, arg == CAMO_ACT_LEAKY_RELU ? leaky_keys : keys)) return -3;
    double slope = 0.01;
    if (cfg_float(s, "slope", &slope) < 0) return -3;
    return prim_act(P, name, in[0], channels_of(P, in[0]), (camo_act)arg, (float)slope);
}

static int parse_softmax(parser *P, const config_setting_t *s, const char *name, const int *in,
                         int n_in, int arg) {
    static const char *const keys[] = {"name", "type", "from", NULL};
    (void)n_in, (void)arg;
    if (check_keys(P, s, keys)) return -3;
    return new_layer(P, CAMO_LAYER_SOFTMAX, name, in, 1, channels_of(P, in[0]));
}

/* ---- transformer layers (layer_attention.c, layer_residual.c) ---- */

/* PyTorch's nn.Linear on the channels of every pixel: a 1x1 convolution whose weight has
 * Linear's shape [out, in] (the same values in the same order as the conv's OHWI
 * [out][1][1][in], so no conversion), bias [out]; initialised as Linear (fan_in = in). */
static int parse_linear(parser *P, const config_setting_t *s, const char *name, const int *in,
                        int n_in, int arg) {
    static const char *const keys[] = {"name", "type", "from", "filters", "bias", NULL};
    (void)n_in, (void)arg;
    int K = 0, bias = 1, C = channels_of(P, in[0]);
    if (check_keys(P, s, keys) || read_filters(P, s, &K) ||
        cfg_bool(s, "bias", &bias) < 0 || positive(P, s, "filters", K, 1))
        return -3;
    int li = prim_conv(P, name, in[0], C, K, 1, 1, 0, 1, 1, bias);
    if (li < -2) return li;
    camo_param *w = &P->net->params[P->net->layers[li].param0];
    w->ndim = 2;
    w->shape[0] = K, w->shape[1] = C, w->shape[2] = w->shape[3] = 0;
    w->layout = CAMO_LAYOUT_PLAIN;
    return li;
}

/* `heads` (>= 1, dividing the C channels) of attention and xca */
static int read_heads(parser *P, const config_setting_t *s, int C, int *heads) {
    if (cfg_need_int(s, "heads", heads) || positive(P, s, "heads", *heads, 1)) return -1;
    if (C % *heads == 0) return 0;
    CAMO_ERR("%s: %s: heads = %d must divide the %d channels", cfg_where(s), P->label, *heads,
             C);
    return -1;
}

/* inputs first..n_in-1 must have C channels */
static int same_channels(parser *P, const config_setting_t *s, const int *in, int n_in, int C) {
    for (int k = 1; k < n_in; k++) {
        if (channels_of(P, in[k]) == C) continue;
        CAMO_ERR("%s: %s: input %d has %d channels, input 1 has %d", cfg_where(s), P->label,
                 k + 1, channels_of(P, in[k]), C);
        return -1;
    }
    return 0;
}

/* attention: from = [queries, keys, values], one channel count; keys and values one size */
static int parse_attention(parser *P, const config_setting_t *s, const char *name,
                           const int *in, int n_in, int arg) {
    static const char *const keys[] = {"name", "type", "from", "heads", NULL};
    (void)arg;
    if (check_keys(P, s, keys)) return -3;
    if (n_in != 3) {
        CAMO_ERR("%s: %s: needs 'from' = [queries, keys, values], got %d layer%s",
                 cfg_where(s), P->label, n_in, n_in == 1 ? "" : "s");
        return -3;
    }
    int C = channels_of(P, in[0]), heads;
    if (same_channels(P, s, in, 3, C) || read_heads(P, s, C, &heads)) return -3;
    int li = new_layer(P, CAMO_LAYER_ATTENTION, name, in, 3, C);
    P->net->layers[li].u.attn.heads = heads;
    return li;
}

/* xca: from = [q, k, v] of C channels, or one layer of 3C (timm's qkv: [q | k | v]);
 * parameter NAME.temperature (heads, 1, 1), without weight decay as timm's module declares
 * (CrossCovarianceAttn.no_weight_decay) */
static int parse_xca(parser *P, const config_setting_t *s, const char *name, const int *in,
                     int n_in, int arg) {
    static const char *const keys[] = {"name", "type", "from", "heads", NULL};
    (void)arg;
    if (check_keys(P, s, keys)) return -3;
    int C = channels_of(P, in[0]), heads;
    if (n_in == 3) {
        if (same_channels(P, s, in, 3, C)) return -3;
    } else if (n_in == 1 && C % 3 == 0) {
        C /= 3;
    } else {
        CAMO_ERR("%s: %s: needs 'from' = [q, k, v], or one layer of 3C channels (q | k | v); "
                 "got %d layer%s, the first of %d channels", cfg_where(s), P->label, n_in,
                 n_in == 1 ? "" : "s", C);
        return -3;
    }
    if (read_heads(P, s, C, &heads)) return -3;
    int li = new_layer(P, CAMO_LAYER_XCA, name, in, n_in, C);
    P->net->layers[li].u.xca.heads = heads;
    int64_t sh[3] = {heads, 1, 1};
    add_param(P, "temperature", CAMO_PARAM_WEIGHT, 3, sh)->no_decay = 1;
    return li;
}

/* layer_scale: y = x * gamma (C); the parameter is named as the layer itself (timm's bare
 * block parameters `gamma`, `gamma_xca`); init: gamma's initial value (timm's
 * ls_init_value; default 1) */
static int parse_layer_scale(parser *P, const config_setting_t *s, const char *name,
                             const int *in, int n_in, int arg) {
    static const char *const keys[] = {"name", "type", "from", "init", NULL};
    (void)n_in, (void)arg;
    if (check_keys(P, s, keys)) return -3;
    double init = 1.0;
    if (cfg_float(s, "init", &init) < 0) return -3;
    int C = channels_of(P, in[0]);
    int li = new_layer(P, CAMO_LAYER_LAYER_SCALE, name, in, 1, C);
    P->net->layers[li].u.scale.init = (float)init;
    int64_t sh[1] = {C};
    camo_param *g = add_param(P, "gamma", CAMO_PARAM_WEIGHT, 1, sh);
    snprintf(g->name, sizeof g->name, "%s", name);
    return li;
}

/* drop_path: p, the probability of dropping an image's branch in training, in [0, 1] */
static int parse_drop_path(parser *P, const config_setting_t *s, const char *name,
                           const int *in, int n_in, int arg) {
    static const char *const keys[] = {"name", "type", "from", "p", NULL};
    (void)n_in, (void)arg;
    if (check_keys(P, s, keys)) return -3;
    double p = -1;
    int rc = cfg_float(s, "p", &p);
    if (rc < 0) return -3;
    if (rc > 0 || !(p >= 0 && p <= 1)) {
        CAMO_ERR("%s: %s: needs 'p', the drop probability in [0, 1]%s", cfg_where(s), P->label,
                 rc > 0 ? "" : " (out of range)");
        return -3;
    }
    int li = new_layer(P, CAMO_LAYER_DROP_PATH, name, in, 1, channels_of(P, in[0]));
    P->net->layers[li].u.drop.p = (float)p;
    return li;
}

/* slice (layer_slice.c): channels [start, start + channels) of the input; `channels`
 * defaults to the rest */
static int parse_slice(parser *P, const config_setting_t *s, const char *name, const int *in,
                       int n_in, int arg) {
    static const char *const keys[] = {"name", "type", "from", "start", "channels", NULL};
    (void)n_in, (void)arg;
    int Cin = channels_of(P, in[0]), start = 0, C;
    if (check_keys(P, s, keys) || cfg_int(s, "start", &start) < 0) return -3;
    C = Cin - start;
    if (cfg_int(s, "channels", &C) < 0) return -3;
    if (start < 0 || C < 1 || start + C > Cin) {
        CAMO_ERR("%s: %s: channels [%d, %d) are not within the input's %d", cfg_where(s),
                 P->label, start, start + C, Cin);
        return -3;
    }
    int li = new_layer(P, CAMO_LAYER_SLICE, name, in, 1, C);
    P->net->layers[li].u.slice.c0 = start;
    return li;
}

/* fourier_pos (layer_posenc.c): timm's PositionalEncodingFourier less its projection,
 * 2 * hidden_dim channels at the input's size */
static int parse_fourier_pos(parser *P, const config_setting_t *s, const char *name,
                             const int *in, int n_in, int arg) {
    static const char *const keys[] = {"name", "type", "from", "hidden_dim", "temperature",
                                       NULL};
    (void)n_in, (void)arg;
    int hidden = 32;
    double temp = 10000;
    if (check_keys(P, s, keys) || cfg_int(s, "hidden_dim", &hidden) < 0 ||
        cfg_float(s, "temperature", &temp) < 0 || positive(P, s, "hidden_dim", hidden, 1))
        return -3;
    if (!(temp > 0)) {
        CAMO_ERR("%s: %s: temperature must be positive", cfg_where(s), P->label);
        return -3;
    }
    int li = new_layer(P, CAMO_LAYER_FOURIER_POS, name, in, 1, 2 * hidden);
    P->net->layers[li].u.fourier.temperature = (float)temp;
    return li;
}

/* ---- mixture of experts (layer_moe.c, moe.h) ---- */

static int parse_layer(parser *P, const config_setting_t *s, int index, int prev);

/* The layers of expert e just parsed (first .. n_layers-1) run on the images dispatch d
 * routed to e: they may read only each other and d, and hold no moe block themselves. */
static int close_expert(parser *P, const config_setting_t *s, int d, int first) {
    camo_net *net = P->net;
    for (int i = first; i < net->n_layers; i++) {
        camo_layer *l = &net->layers[i];
        l->rows_from = d + 1;
        if (l->type == CAMO_LAYER_MOE_ROUTER || l->type == CAMO_LAYER_MOE_COMBINE) {
            CAMO_ERR("%s: %s: expert layer '%s': moe blocks do not nest", cfg_where(s),
                     P->label, l->name);
            return -1;
        }
        for (int k = 0; k < l->n_in; k++) {
            if (l->in[k] >= d) continue;
            CAMO_ERR("%s: %s: expert layer '%s' reads '%s', outside its expert (an expert's "
                     "layers read its own layers; \"input\" is the expert's input)",
                     cfg_where(s), P->label, l->name,
                     l->in[k] < 0 ? "input" : net->layers[l->in[k]].name);
            return -1;
        }
    }
    return 0;
}

/* moe: `experts` K (1..7), `top_k` (1..K), `balance_weight` (0.01), `expert`: the layers of
 * one expert, repeated K times. Expands into NAME.pool (global average), NAME.gate (linear
 * to K logits: PyTorch's nn.Linear `gate`), NAME.router, per expert NAME.experts.<e>.dispatch
 * and the expert's layers as NAME.experts.<e>.<layer> (an nn.ModuleList's names), and NAME,
 * the weighted sum of the experts' outputs. */
static int parse_moe(parser *P, const config_setting_t *s, const char *name, const int *in,
                     int n_in, int arg) {
    static const char *const keys[] = {"name", "type", "from", "experts", "top_k",
                                       "balance_weight", "expert", NULL};
    (void)n_in, (void)arg;
    int K = 0, k = 0, x = in[0], C = channels_of(P, x);
    double bw = 0.01;
    if (check_keys(P, s, keys) || cfg_need_int(s, "experts", &K) ||
        cfg_need_int(s, "top_k", &k) || cfg_float(s, "balance_weight", &bw) < 0 ||
        positive(P, s, "experts", K, 1) || positive(P, s, "top_k", k, 1))
        return -3;
    const config_setting_t *ex = config_setting_get_member(s, "expert");
    if (K > CAMO_MOE_MAX_EXPERTS || k > K || !(bw >= 0)) {
        CAMO_ERR("%s: %s: needs experts <= %d, top_k <= experts and balance_weight >= 0 "
                 "(got %d, %d, %g)", cfg_where(s), P->label, CAMO_MOE_MAX_EXPERTS, K, k, bw);
        return -3;
    }
    if (!ex || !config_setting_is_list(ex) || config_setting_length(ex) < 1) {
        CAMO_ERR("%s: %s: needs 'expert', the non-empty list of one expert's layers "
                 "( {...}, ... )", cfg_where(s), P->label);
        return -3;
    }
    char sub[2 * CAMO_NAME_MAX];
#define SUB(...) (snprintf(sub, sizeof sub, __VA_ARGS__), sub)
    int pool = new_layer(P, CAMO_LAYER_ADAPTIVE_AVGPOOL, SUB("%s.pool", name), &x, 1, C);
    P->net->layers[pool].u.adaptive.P = P->net->layers[pool].u.adaptive.Q = 1;
    int gate = prim_conv(P, SUB("%s.gate", name), pool, C, K, 1, 1, 0, 1, 1, 1);
    camo_param *w = &P->net->params[P->net->layers[gate].param0]; /* nn.Linear's [K, C] */
    w->ndim = 2;
    w->shape[2] = w->shape[3] = 0;
    w->layout = CAMO_LAYOUT_PLAIN;
    int last[CAMO_MAX_INPUTS];
    last[0] = new_layer(P, CAMO_LAYER_MOE_ROUTER, SUB("%s.router", name), &gate, 1, K);
    const char *where = P->where, *type = P->type;
    char label[sizeof P->label];
    memcpy(label, P->label, sizeof label);
    for (int e = 0; e < K; e++) {
        int d = new_layer(P, CAMO_LAYER_MOE_DISPATCH, SUB("%s.experts.%d.dispatch", name, e),
                          &x, 1, C);
        P->net->layers[d].u.moe.expert = e;
        char scope[2 * CAMO_NAME_MAX];
        snprintf(scope, sizeof scope, "%s.experts.%d.", name, e);
        P->scope = scope, P->scope_input = d;
        int prev = d;
        for (int i = 0; i < config_setting_length(ex) && prev >= -1; i++)
            prev = parse_layer(P, config_setting_get_elem(ex, (unsigned)i), i, prev);
        P->scope = NULL;
        if (prev < -1) return -3;
        P->where = where, P->type = type;
        memcpy(P->label, label, sizeof label);
        if (close_expert(P, s, d, d + 1)) return -3;
        last[e + 1] = prev;
    }
    int Co = channels_of(P, last[1]);
    for (int e = 1; e < K; e++)
        if (channels_of(P, last[e + 1]) != Co) {
            CAMO_ERR("%s: %s: expert %d gives %d channels, expert 0 %d", cfg_where(s),
                     P->label, e, channels_of(P, last[e + 1]), Co);
            return -3;
        }
    int li = new_layer(P, CAMO_LAYER_MOE_COMBINE, name, last, K + 1, Co);
    for (int i = last[0]; i <= li; i++) { /* router, dispatches, combine */
        camo_layer *l = &P->net->layers[i];
        if (l->type != CAMO_LAYER_MOE_ROUTER && l->type != CAMO_LAYER_MOE_DISPATCH &&
            l->type != CAMO_LAYER_MOE_COMBINE)
            continue;
        l->u.moe.experts = K, l->u.moe.top_k = k, l->u.moe.router = last[0];
        l->u.moe.balance_weight = (float)bw;
    }
    return li;
#undef SUB
}

static int valid_name(const char *s) {
    if (!*s || strcmp(s, "input") == 0) return 0;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && *s != '_' && *s != '.') return 0;
    return 1;
}

/* The config layer types (docs/models.md), in the order messages list them: the one list
 * that the type look-up, its suggestions, the input check, the dispatch and conv's `act`
 * read. A config type is one line here plus its reader. */
static const struct config_type {
    const char *name;
    type_reader read;
    int arg;  /* the reader's variant (a primitive type, a camo_pool_type, a camo_act) */
    int many; /* takes several layers in 'from'; else exactly one */
} config_types[] = {
    {"conv", parse_conv, 0, 0},
    {"resblock", parse_resblock, 0, 0},
    {"bottleneck", parse_bottleneck, 0, 0},
    {"batchnorm", parse_norm, CAMO_LAYER_BATCHNORM, 0},
    {"layernorm", parse_norm, CAMO_LAYER_LAYERNORM, 0},
    {"maxpool", parse_pool, CAMO_POOL_MAX, 0},
    {"avgpool", parse_pool, CAMO_POOL_AVG, 0},
    {"adaptive_avgpool", parse_adaptive, 0, 0},
    {"resize", parse_resize, 0, 0},
    {"concat", parse_join, CAMO_LAYER_CONCAT, 1},
    {"add", parse_join, CAMO_LAYER_ADD, 1},
    {"mul", parse_join, CAMO_LAYER_MUL, 1},
    {"relu", parse_act, CAMO_ACT_RELU, 0},
    {"leaky_relu", parse_act, CAMO_ACT_LEAKY_RELU, 0},
    {"silu", parse_act, CAMO_ACT_SILU, 0},
    {"gelu", parse_act, CAMO_ACT_GELU, 0},
    {"sigmoid", parse_act, CAMO_ACT_SIGMOID, 0},
    {"tanh", parse_act, CAMO_ACT_TANH, 0},
    {"softmax", parse_softmax, 0, 0},
    {"linear", parse_linear, 0, 0},
    {"attention", parse_attention, 0, 1},
    {"xca", parse_xca, 0, 1},
    {"layer_scale", parse_layer_scale, 0, 0},
    {"drop_path", parse_drop_path, 0, 0},
    {"moe", parse_moe, 0, 0},
    {"slice", parse_slice, 0, 0},
    {"fourier_pos", parse_fourier_pos, 0, 0},
};
#define N_TYPES ((int)(sizeof config_types / sizeof config_types[0]))

/* The entry of config layer s's type P->type; NULL (error set) for an unknown one, whose
 * message suggests a close name and lists all. Checked before any key, so a misspelt type
 * is reported as such, not as a key the misread type does not take. */
static const struct config_type *find_type(const parser *P, const config_setting_t *s) {
    const char *names[N_TYPES];
    for (int i = 0; i < N_TYPES; i++) {
        if (!strcmp(config_types[i].name, P->type)) return &config_types[i];
        names[i] = config_types[i].name;
    }
    const char *guess = closest(P->type, names, N_TYPES);
    char list[512];
    join_names(list, sizeof list, names, N_TYPES);
    const config_setting_t *t = config_setting_get_member(s, "type");
    CAMO_ERR("%s: %s: unknown type '%s' (%s%s%stypes: %s)", cfg_where(t), P->label, P->type,
             guess ? "did you mean '" : "", guess ? guess : "", guess ? "'? " : "", list);
    return NULL;
}

/* `act` takes "linear" (none) or the name of an activation type: a config_types line read
 * by parse_act, so a new activation type is a new `act` too. */
static int find_act(const parser *P, const config_setting_t *s, const char *name,
                    camo_act *act) {
    const char *names[N_TYPES + 1] = {"linear"};
    int n = 1;
    if (!strcmp(name, "linear")) { *act = CAMO_ACT_IDENTITY; return 0; }
    for (int i = 0; i < N_TYPES; i++) {
        if (config_types[i].read != parse_act) continue;
        names[n++] = config_types[i].name;
        if (!strcmp(config_types[i].name, name)) { *act = (camo_act)config_types[i].arg; return 0; }
    }
    char list[256];
    join_names(list, sizeof list, names, n);
    CAMO_ERR("%s: %s: unknown act '%s' (%s)", cfg_where(s), P->label, name, list);
    return -1;
}

/* The generic readers (cfgutil: a missing key, a value of the wrong type) name the file,
 * line and key but not the layer; in a network of one-line layers (or an @include) the
 * layer is what the user looks for, so it is added. */
static void name_layer_in_error(const parser *P) {
    const char *e = camo_last_error();
    if (strstr(e, P->label)) return;
    char msg[900];
    snprintf(msg, sizeof msg, "%s", e);
    if (P->type) CAMO_ERR("%s (%s, type '%s')", msg, P->label, P->type);
    else CAMO_ERR("%s (%s)", msg, P->label);
}

/* Layer `index` (0-based) of the `layers` list; returns its last primitive layer, or -3. */
static int parse_layer(parser *P, const config_setting_t *s, int index, int prev) {
    const char *name = NULL, *type = NULL;
    char where[160];
    snprintf(where, sizeof where, "%s", cfg_where(s));
    P->where = where;
    snprintf(P->label, sizeof P->label, "layer #%d", index + 1);
    P->type = NULL; /* until read */
    if (!config_setting_is_group(s)) {
        CAMO_ERR("%s: %s: each entry of 'layers' must be a group { name = ...; type = ...; }",
                 where, P->label);
        return -3;
    }
    if (cfg_need_string(s, "name", &name)) { name_layer_in_error(P); return -3; }
    char full[2 * CAMO_NAME_MAX]; /* inside an expert, the name with the expert's prefix */
    snprintf(full, sizeof full, "%s%s", P->scope ? P->scope : "", name);
    snprintf(P->label, sizeof P->label, "layer #%d '%.*s'", index + 1, CAMO_NAME_MAX, full);
    if (cfg_need_string(s, "type", &type)) { name_layer_in_error(P); return -3; }
    P->type = type;
    const struct config_type *ct = find_type(P, s);
    if (!ct) return -3;
    if (!valid_name(name) || strlen(full) >= CAMO_NAME_MAX - 24) {
        CAMO_ERR("%s: %s: invalid layer name '%s' (letters, digits, '_' and '.', not "
                 "\"input\")", where, P->label, name);
        return -3;
    }
    if (lookup_name(P, full) != -2) {
        CAMO_ERR("%s: %s: layer name '%s' is used twice", where, P->label, full);
        return -3;
    }
    int in[CAMO_MAX_INPUTS], n_in;
    if (read_from(P, s, prev, in, &n_in) != 0) return -3;
    if (!ct->many && n_in != 1) {
        CAMO_ERR("%s: %s: type '%s' takes one input", where, P->label, type);
        return -3;
    }
    for (int k = 0; k < n_in; k++) /* an expert's layers hold its routed images only */
        if (!P->scope && in[k] >= 0 && P->net->layers[in[k]].rows_from) {
            CAMO_ERR("%s: %s: reads '%s', a layer inside a mixture-of-experts expert (only "
                     "the moe block's output holds every image)", where, P->label,
                     P->net->layers[in[k]].name);
            return -3;
        }
    int li = ct->read(P, s, full, in, n_in, ct->arg);
    if (li < -2) {
        name_layer_in_error(P);
        return -3;
    }
    define_name(P, full, li); /* the config name means the last primitive layer */
    return li;
}

/* ---- outputs and groups ---- */

static int parse_outputs(parser *P, const config_setting_t *root) {
    camo_net *net = P->net;
    const config_setting_t *o = config_setting_get_member(root, "outputs");
    if (!o) { /* default: the last layer is the only output */
        snprintf(net->outputs[0].name, CAMO_NAME_MAX, "main");
        net->outputs[0].layer = net->n_layers - 1;
        net->outputs[0].weight = 1.0f;
        net->n_outputs = 1;
        return 0;
    }
    int n = config_setting_is_list(o) ? config_setting_length(o) : -1;
    if (n < 1 || n > CAMO_MAX_OUTPUTS) {
        CAMO_ERR("%s: 'outputs' must be a list of 1..%d groups", cfg_where(o), CAMO_MAX_OUTPUTS);
        return -1;
    }
    static const char *const keys[] = {"name", "layer", "weight", NULL};
    for (int i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(o, (unsigned)i);
        const char *name, *layer;
        double w = 1.0;
        if (!config_setting_is_group(e)) {
            CAMO_ERR("%s: outputs entries must be groups", cfg_where(e));
            return -1;
        }
        if (cfg_check_keys(e, keys, "output") || cfg_need_string(e, "name", &name) ||
            cfg_need_string(e, "layer", &layer) || cfg_float(e, "weight", &w) < 0)
            return -1;
        int li = lookup(P, layer);
        if (li < 0) {
            CAMO_ERR("%s: output '%s': unknown layer '%s'", cfg_where(e), name, layer);
            return -1;
        }
        for (int j = 0; j < i; j++)
            if (strcmp(net->outputs[j].name, name) == 0) {
                CAMO_ERR("%s: output name '%s' is used twice", cfg_where(e), name);
                return -1;
            }
        snprintf(net->outputs[i].name, CAMO_NAME_MAX, "%s", name);
        net->outputs[i].layer = li;
        net->outputs[i].weight = (float)w;
    }
    net->n_outputs = n;
    return 0;
}

static int parse_groups(parser *P, const config_setting_t *root) {
    camo_net *net = P->net;
    const config_setting_t *g = config_setting_get_member(root, "groups");
    if (!g) return 0;
    if (!config_setting_is_group(g) || config_setting_length(g) > 16) {
        CAMO_ERR("%s: 'groups' must be a group of at most 16 lists of layer-name prefixes",
                 cfg_where(g));
        return -1;
    }
    for (int i = 0; i < config_setting_length(g); i++) {
        const config_setting_t *e = config_setting_get_elem(g, (unsigned)i);
        if (!config_setting_is_array(e) && !config_setting_is_list(e)) {
            CAMO_ERR("%s: group '%s' must be a list of strings", cfg_where(e),
                     config_setting_name(e));
            return -1;
        }
        size_t len = 1;
        for (int j = 0; j < config_setting_length(e); j++) {
            const char *p = config_setting_get_string_elem(e, j);
            if (!p) {
                CAMO_ERR("%s: group '%s' must be a list of strings", cfg_where(e),
                         config_setting_name(e));
                return -1;
            }
            len += strlen(p) + 1;
        }
        char *buf = camo_calloc(1, len);
        for (int j = 0; j < config_setting_length(e); j++) {
            if (j) strcat(buf, ",");
            strcat(buf, config_setting_get_string_elem(e, j));
        }
        snprintf(net->group_name[net->n_groups], 32, "%s", config_setting_name(e));
        net->group_prefixes[net->n_groups++] = buf;
    }
    return 0;
}

/* checkpoint_blocks = ["layer*.*", ...]: name patterns of the blocks gradient checkpointing
 * recomputes (camo_net_set_checkpointing), kept comma-joined */
static int parse_checkpoint_blocks(parser *P, const config_setting_t *root) {
    const config_setting_t *c = config_setting_get_member(root, "checkpoint_blocks");
    if (!c) return 0;
    size_t len = 1;
    int n = config_setting_length(c);
    for (int j = 0; j < n; j++) {
        const char *p = config_setting_get_string_elem(c, j);
        if ((!config_setting_is_array(c) && !config_setting_is_list(c)) || !p || !p[0] ||
            strchr(p, ',')) {
            CAMO_ERR("%s: 'checkpoint_blocks' must be a list of block-name patterns such as "
                     "\"layer*.*\" (no commas)", cfg_where(c));
            return -1;
        }
        len += strlen(p) + 1;
    }
    char *buf = camo_calloc(1, len);
    for (int j = 0; j < n; j++) {
        if (j) strcat(buf, ",");
        strcat(buf, config_setting_get_string_elem(c, j));
    }
    P->net->checkpoint_blocks = buf;
    return 0;
}

/* ---- entry points ---- */

static int parse_root(parser *P, const config_setting_t *root, int classes_override) {
    camo_net *net = P->net;
    static const char *const keys[] = {"name", "input_channels", "classes", "layers",
                                       "outputs", "groups", "checkpoint_blocks", NULL};
    if (cfg_check_keys(root, keys, "network") != 0) return -1;
    const char *name = "net";
    net->input_channels = 3;
    net->classes = 1;
    if (cfg_string(root, "name", &name) < 0 ||
        cfg_int(root, "input_channels", &net->input_channels) < 0 ||
        cfg_int(root, "classes", &net->classes) < 0)
        return -1;
    if (classes_override > 0) net->classes = classes_override;
    snprintf(net->name, sizeof net->name, "%s", name);
    if (net->input_channels < 1 || net->classes < 1) {
        CAMO_ERR("%s: input_channels and classes must be positive", cfg_where(root));
        return -1;
    }
    const config_setting_t *layers = config_setting_get_member(root, "layers");
    if (!layers || !config_setting_is_list(layers) || config_setting_length(layers) < 1) {
        CAMO_ERR("%s: %s needs a non-empty list 'layers = ( {...}, ... );'", net->source,
                 layers ? cfg_where(layers) : "the network");
        return -1;
    }
    int prev = -1;
    for (int i = 0; i < config_setting_length(layers); i++) {
        prev = parse_layer(P, config_setting_get_elem(layers, (unsigned)i), i, prev);
        if (prev < -1) return -1;
    }
    if (parse_outputs(P, root) || parse_groups(P, root) || parse_checkpoint_blocks(P, root))
        return -1;
    return 0;
}

camo_net *camo_net_from_setting(const config_setting_t *root, const char *source,
                                camo_backend *be, int classes_override) {
    camo_net *net = camo_calloc(1, sizeof *net);
    net->be = be;
    net->source = camo_strdup(source);
    parser P = {.net = net};
    cfg_set_default_source(net->source); /* settings read from a string name the source */
    int rc = parse_root(&P, root, classes_override);
    cfg_set_default_source(NULL);
    free(P.names);
    if (rc != 0) {
        camo_net_free(net);
        return NULL;
    }
    for (int i = 0; i < net->n_params; i++) /* layers no longer move: point counters */
        if (net->params[i].kind == CAMO_PARAM_COUNTER)
            net->params[i].counter = &net->layers[net->params[i].layer].u.bn.num_batches;
    net_alloc_params(net);
    return net;
}

camo_net *camo_net_load(const char *path, camo_backend *be, int classes_override) {
    config_t cfg;
    config_init(&cfg);
    camo_net *net = NULL;
    if (cfg_read_file(&cfg, path) == 0)
        net = camo_net_from_setting(config_root_setting(&cfg), path, be, classes_override);
    config_destroy(&cfg);
    return net;
}
