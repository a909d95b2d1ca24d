/* test_pretrained.c: init.weights (nn/pretrained.c) against torchvision. tools/pretrained_ref.py
 * wrote tests/fixtures/pretrained/resnet18_features.safetensors: the manifest of a torchvision
 * resnet18 state dict converted by tools/convert_weights.py (names, order, dtypes, shapes,
 * sums; fc.* and num_batches_tracked included), whose values follow a closed-form rule, an
 * input and torchvision's layer4 features on it (eval mode). Here the same file is written
 * from the rule (its tensors must match the manifest exactly; with CAMO_PRETRAINED_WEIGHTS=FILE
 * the converter's own file is used instead), loaded by name into conf/models/fpn_r18.cfg,
 * and the encoder run in eval mode must give layer4.1 = torchvision's layer4 within 1e-4
 * normwise. The same for resnet50 (resnet50_features.safetensors, conf/models/fpn_r50.cfg,
 * layer4.2, CAMO_PRETRAINED_WEIGHTS_R50). Then the report, init.strict, init.prefix and
 * every refusal (shape, dtype, no match, unreadable file), each leaving the network
 * unchanged. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"

#include "backend/backend.h"
#include "core/common.h"
#include "core/safetensors.h"
#include "nn/layer.h"
#include "nn/net.h"
#include "nn/pretrained.h"

#define TOL 1e-4
#define MAX_T 512

/* A torchvision ResNet, its fixture and the network its encoder is in. */
typedef struct {
    const char *fixture, *net_file, *env; /* env: the converter's own file, where set */
    const char *last;                     /* the last block: torchvision's layer4 output */
    const char *file;                     /* the rule-written file, in tu_tmpdir() */
    int n_int;                            /* num_batches_tracked tensors (one per BN) */
    const char *loaded[3];                /* read back bit for bit after the load */
} resnet_case;

static const resnet_case R18 = {
    "tests/fixtures/pretrained/resnet18_features.safetensors", "conf/models/fpn_r18.cfg",
    "CAMO_PRETRAINED_WEIGHTS", "layer4.1", "pretrained_r18.safetensors", 20,
    {"conv1.weight", "layer3.0.downsample.0.weight", "layer4.1.bn2.running_var"}};
static const resnet_case R50 = {
    "tests/fixtures/pretrained/resnet50_features.safetensors", "conf/models/fpn_r50.cfg",
    "CAMO_PRETRAINED_WEIGHTS_R50", "layer4.2", "pretrained_r50.safetensors", 53,
    {"conv1.weight", "layer1.0.downsample.0.weight", "layer4.2.bn3.running_var"}};

/* ---- the rule (tools/pretrained_ref.py) ---- */

static double hash_uniform(uint32_t seed, size_t i) {
    uint32_t x = seed + (uint32_t)i * 0x9E3779B9u;
    x ^= x >> 16;
    x *= 0x85EBCA6Bu;
    x ^= x >> 13;
    x *= 0xC2B2AE35u;
    x ^= x >> 16;
    return (double)x / 2147483648.0 - 1.0;
}

static void rule_values(const char *name, int ndim, const int64_t *shape, float *out) {
    size_t n = 1;
    for (int d = 0; d < ndim; d++) n *= (size_t)shape[d];
    const char *dot = strrchr(name, '.'), *leaf = dot ? dot + 1 : name;
    uint32_t seed = camo_fnv1a(name);
    for (size_t i = 0; i < n; i++) {
        double r = hash_uniform(seed, i), v;
        if (!strcmp(leaf, "running_mean")) v = 0.2 * r;
        else if (!strcmp(leaf, "running_var")) v = 1.0 + 0.5 * r;
        else if (ndim == 2 || ndim == 4) v = r * sqrt(3.0 / (double)(n / (size_t)shape[0]));
        else if (!strcmp(leaf, "weight")) v = 1.0 + 0.2 * r;
        else v = 0.1 * r;
        out[i] = (float)v;
    }
}

/* ---- the manifest ---- */

typedef struct {
    char name[128];
    camo_st_dtype dtype;
    int ndim;
    int64_t shape[4];
    size_t numel;
    double sum;          /* sequential float64 sum of the values */
} entry;

typedef struct {
    const resnet_case *rc;
    camo_st_file *fx;    /* the fixture */
    entry e[MAX_T];
    int n, n_float, n_int;
} manifest;

static void read_manifest(manifest *m, const resnet_case *rc) {
    memset(m, 0, sizeof *m);
    m->rc = rc;
    m->fx = camo_st_open(rc->fixture);
    if (!m->fx) fprintf(stderr, "  %s\n", camo_last_error());
    assert_non_null(m->fx);
    const char *text = camo_st_meta(m->fx, "manifest");
    assert_non_null(text);
    for (const char *p = text; *p && m->n < MAX_T; p = strchr(p, '\n') + 1) {
        entry *e = &m->e[m->n];
        char dtype[8], shape[64], sum[64];
        assert_int_equal(sscanf(p, "%127s %7s %63s %63s", e->name, dtype, shape, sum), 4);
        e->dtype = strcmp(dtype, "I64") ? CAMO_ST_F32 : CAMO_ST_I64;
        e->numel = 1;
        for (char *s = shape; *s != '-' && e->ndim < 4; s++) { /* "-": a scalar */
            e->shape[e->ndim] = strtoll(s, &s, 10);
            e->numel *= (size_t)e->shape[e->ndim++];
            if (*s != ',') break;
        }
        e->sum = strtod(sum, NULL);
        if (e->dtype == CAMO_ST_F32) m->n_float++; else m->n_int++;
        m->n++;
    }
    /* resnet18: 122 tensors, 102 float, 20 counters; resnet50: 320, 267, 53 */
    assert_true(m->n > 100 && m->n_int == rc->n_int);
}

/* Writes the rule's state dict in the manifest's order, names prefixed, plus `extra`
 * (name of an extra F32 tensor of 4 values, or NULL); returns the path (in a buffer of its
 * own per file name slot: slot 0..3). */
static const char *write_weights(const manifest *m, const char *file, const char *prefix,
                                 const char *extra, int slot) {
    static char paths[4][600];
    char *path = paths[slot];
    snprintf(path, sizeof paths[0], "%s/%s", tu_tmpdir(), file);
    camo_st_writer *w = camo_st_writer_new();
    for (int i = 0; i < m->n; i++) { /* the manifest's order, as the converter wrote it */
        const entry *e = &m->e[i];
        char name[256];
        snprintf(name, sizeof name, "%s%s", prefix, e->name);
        if (e->dtype == CAMO_ST_I64) {
            int64_t v = 1000;
            assert_int_equal(camo_st_add(w, name, CAMO_ST_I64, e->ndim, e->shape, &v), 0);
            continue;
        }
        float *v = tu_falloc(e->numel);
        rule_values(e->name, e->ndim, e->shape, v);
        assert_int_equal(camo_st_add(w, name, CAMO_ST_F32, e->ndim, e->shape, v), 0);
        free(v);
    }
    if (extra) {
        float v[4] = {1, 2, 3, 4};
        int64_t s[1] = {4};
        assert_int_equal(camo_st_add(w, extra, CAMO_ST_F32, 1, s, v), 0);
    }
    assert_int_equal(camo_st_write_file(w, path), 0);
    camo_st_writer_free(w);
    return path;
}

/* The file at path holds exactly the manifest's tensors: order, names, dtypes, shapes and
 * the float64 sum of the values, summed in order as the Python side did (bitwise equal). */
static void check_against_manifest(const manifest *m, const char *path) {
    camo_st_file *f = camo_st_open(path);
    if (!f) fprintf(stderr, "  %s\n", camo_last_error());
    assert_non_null(f);
    assert_int_equal(camo_st_count(f), m->n);
    for (int i = 0; i < m->n; i++) {
        const entry *e = &m->e[i];
        const camo_st_tensor *t = camo_st_get(f, i);
        if (strcmp(t->name, e->name)) fprintf(stderr, "  #%d: %s, manifest %s\n", i, t->name, e->name);
        assert_string_equal(t->name, e->name);
        assert_int_equal(t->dtype, e->dtype);
        assert_int_equal(t->ndim, e->ndim);
        for (int d = 0; d < e->ndim; d++) assert_int_equal(t->shape[d], e->shape[d]);
        double s = 0;
        if (t->dtype == CAMO_ST_I64) {
            int64_t v;
            memcpy(&v, t->data, sizeof v);
            s = (double)v;
        } else {
            float *v = tu_falloc(e->numel);
            assert_int_equal(camo_st_read_f32(t, v), 0);
            for (size_t k = 0; k < e->numel; k++) s += v[k];
            free(v);
        }
        if (s != e->sum) fprintf(stderr, "  %s: sum %.17g, manifest %.17g\n", e->name, s, e->sum);
        assert_true(s == e->sum);
    }
    camo_st_close(f);
}

/* ---- the network ---- */

static camo_net *fpn(camo_backend *be, const manifest *m, uint64_t seed) {
    camo_clear_error();
    camo_net *net = camo_net_load(m->rc->net_file, be, 0);
    if (!net) fprintf(stderr, "  %s\n", camo_last_error());
    assert_non_null(net);
    int N = atoi(camo_st_meta(m->fx, "batch")), H = atoi(camo_st_meta(m->fx, "height"));
    int W = atoi(camo_st_meta(m->fx, "width"));
    assert_int_equal(camo_net_set_input_size(net, N, H, W), 0);
    camo_net_init_weights(net, seed);
    return net;
}

static float *param_values(camo_net *net, const char *name) {
    camo_param *p = camo_net_find_param(net, name);
    assert_non_null(p);
    float *v = tu_falloc(p->numel);
    camo_param_get(net, p, v);
    return v;
}

/* Whether parameter `name` of a and b hold the same values. */
static int same_param(camo_net *a, camo_net *b, const char *name) {
    camo_param *p = camo_net_find_param(a, name);
    float *x = param_values(a, name), *y = param_values(b, name);
    int same = !memcmp(x, y, p->numel * sizeof(float));
    free(x);
    free(y);
    return same;
}

static int layer_index(const camo_net *net, const char *name) {
    for (int i = 0; i < net->n_layers; i++)
        if (!strcmp(net->layers[i].name, name)) return i;
    return -1;
}

/* The last block's output (its final relu: layer4.1 in resnet18, layer4.2 in resnet50) on the
 * fixture's input, eval mode, against torchvision's layer4 features; the normwise error. */
static double features_error(camo_net *net, const manifest *m) {
    const camo_st_tensor *xt = camo_st_find(m->fx, "input"), *yt = camo_st_find(m->fx, "layer4");
    assert_non_null(xt);
    assert_non_null(yt);
    int N = (int)xt->shape[0], C = (int)xt->shape[1], H = (int)xt->shape[2], W = (int)xt->shape[3];
    float *x = tu_falloc((size_t)xt->numel), *xh = tu_falloc((size_t)xt->numel);
    assert_int_equal(camo_st_read_f32(xt, x), 0);
    for (int n = 0; n < N; n++) /* NCHW -> NHWC */
        for (int c = 0; c < C; c++)
            for (int i = 0; i < H * W; i++)
                xh[((size_t)n * H * W + i) * C + c] = x[((size_t)n * C + c) * H * W + i];
    net->be->upload(net->be, net->input, xh, (size_t)xt->numel * sizeof(float));
    camo_net_forward(net, N, 0);
    char last[CAMO_NAME_MAX];
    snprintf(last, sizeof last, "%s.relu", m->rc->last);
    int li = layer_index(net, last);
    assert_true(li >= 0);
    const camo_layer *l = &net->layers[li];
    assert_int_equal(l->C, (int)yt->shape[1]);
    assert_int_equal(l->H, (int)yt->shape[2]);
    assert_int_equal(l->W, (int)yt->shape[3]);
    size_t ny = (size_t)yt->numel, hw = (size_t)l->H * l->W;
    float *got = tu_falloc(ny), *want = tu_falloc(ny);
    net->be->download(net->be, got, l->out, ny * sizeof(float));
    assert_int_equal(camo_st_read_f32(yt, want), 0);
    double d = 0, mx = 0;
    for (int n = 0; n < N; n++)
        for (int c = 0; c < l->C; c++)
            for (size_t i = 0; i < hw; i++) {
                double a = got[((size_t)n * hw + i) * l->C + c], b = want[((size_t)n * l->C + c) * hw + i];
                d = fmax(d, fabs(a - b));
                mx = fmax(mx, fabs(b));
            }
    free(x); free(xh); free(got); free(want);
    return mx > 0 ? d / mx : INFINITY;
}

static void expect_error(int rc, const char *needle) {
    if (rc == 0 || !strstr(camo_last_error(), needle))
        fprintf(stderr, "  rc %d, error: %s\n  wanted: %s\n", rc, camo_last_error(), needle);
    assert_int_not_equal(rc, 0);
    assert_non_null(strstr(camo_last_error(), needle));
}

/* ---- tests ---- */

/* The torchvision file (rule-written, or the converter's) loaded into rn's network gives
 * torchvision's layer4 features. */
static void check_torchvision_features(const resnet_case *rn) {
    manifest m;
    read_manifest(&m, rn);
    const char *env = getenv(rn->env);
    const char *path = env && *env ? env : write_weights(&m, rn->file, "", NULL, 0);
    check_against_manifest(&m, path);
    camo_backend *be = camo_backend_cpu_create(0);
    camo_net *net = fpn(be, &m, 7), *seeded = fpn(be, &m, 7);
    camo_pretrained_report rep;
    int rc = camo_net_load_pretrained(net, path, "", 0, &rep);
    if (rc) fprintf(stderr, "  %s\n", camo_last_error());
    assert_int_equal(rc, 0);
    /* fpn_r18's (fpn_r50's) encoder is torchvision's resnet18 (50) less fc; the decoder is
     * not in the file */
    assert_int_equal(rep.file_tensors, m.n);
    assert_int_equal(rep.matched, m.n_float - 2);
    assert_int_equal(rep.ignored, m.n_int);
    assert_int_equal(rep.n_unexpected, 2);
    assert_string_equal(rep.unexpected, "fc.weight, fc.bias");
    assert_int_equal(rep.n_missing, rep.network_tensors - rep.matched);
    assert_true(rep.n_missing > 0 && !strncmp(rep.missing, "lat5.weight, lat5.bias", 22));
    assert_int_equal(rep.outside_prefix, 0);
    assert_int_equal(rep.converted, 0);
    camo_pretrained_print(&rep, net->name);
    /* loaded values read back in PyTorch layout: the rule's, bit for bit (OIHW -> OHWI -> OIHW) */
    for (int k = 0; k < 3; k++) {
        camo_param *p = camo_net_find_param(net, rn->loaded[k]);
        assert_non_null(p);
        float *got = param_values(net, rn->loaded[k]), *want = tu_falloc(p->numel);
        rule_values(rn->loaded[k], p->ndim, p->shape, want);
        assert_memory_equal(got, want, p->numel * sizeof(float));
        free(got);
        free(want);
    }
    assert_true(same_param(net, seeded, "lat5.weight"));   /* missing: kept from the seed */
    assert_false(same_param(net, seeded, "conv1.weight"));
    double err = features_error(net, &m);
    fprintf(stderr, "  %s vs torchvision layer4 (%s): normwise %.3g (tol %g)\n", rn->last,
            env && *env ? env : "rule-written file", err, TOL);
    assert_true(err <= TOL);
    if (!(env && *env)) remove(path); /* resnet50's: 102 MB */
    camo_net_free(net);
    camo_net_free(seeded);
    be->destroy(be);
    camo_st_close(m.fx);
}

static void test_torchvision_features(void **state) {
    (void)state;
    check_torchvision_features(&R18);
}

static void test_torchvision_features_r50(void **state) {
    (void)state;
    check_torchvision_features(&R50);
}

static void test_strict_and_prefix(void **state) {
    (void)state;
    manifest m;
    read_manifest(&m, &R18);
    camo_backend *be = camo_backend_cpu_create(0);
    camo_net *net = fpn(be, &m, 7), *seeded = fpn(be, &m, 7);
    const char *plain = write_weights(&m, "pretrained_plain.safetensors", "", NULL, 1);
    /* strict: fc.* unexpected and the decoder missing; nothing written */
    expect_error(camo_net_load_pretrained(net, plain, "", 1, NULL), "init.strict = true");
    assert_non_null(strstr(camo_last_error(), "2 unexpected (fc.weight, fc.bias)"));
    assert_non_null(strstr(camo_last_error(), "missing (lat5.weight, "));
    assert_true(same_param(net, seeded, "conv1.weight"));
    /* a prefix (torchvision's deeplab: backbone.*, classifier.*) */
    const char *pre = write_weights(&m, "pretrained_backbone.safetensors", "backbone.",
                                    "classifier.4.weight", 2);
    camo_pretrained_report rep;
    assert_int_equal(camo_net_load_pretrained(net, pre, "backbone.", 0, &rep), 0);
    assert_int_equal(rep.matched, m.n_float - 2);
    assert_int_equal(rep.outside_prefix, 1);
    assert_string_equal(rep.prefix, "backbone.");
    double err = features_error(net, &m);
    assert_true(err <= TOL);
    /* the same file without the prefix: nothing matches, and the message says which would */
    camo_net *fresh = fpn(be, &m, 7);
    expect_error(camo_net_load_pretrained(fresh, pre, "", 0, NULL), "no tensor matches");
    assert_non_null(strstr(camo_last_error(), "init.prefix = \"backbone.\" would match"));
    expect_error(camo_net_load_pretrained(fresh, plain, "encoder.", 0, NULL),
                 "0 of 122 tensors start with it");
    assert_true(same_param(fresh, seeded, "conv1.weight"));
    camo_net_free(fresh);
    camo_net_free(net);
    camo_net_free(seeded);
    be->destroy(be);
    camo_st_close(m.fx);
}

/* strict passes when the file holds every parameter and buffer (a state dict of the net) */
static void test_strict_exact(void **state) {
    (void)state;
    manifest m;
    read_manifest(&m, &R18);
    camo_backend *be = camo_backend_cpu_create(0);
    camo_net *src = fpn(be, &m, 11), *dst = fpn(be, &m, 12);
    char path[600];
    snprintf(path, sizeof path, "%s/pretrained_exact.safetensors", tu_tmpdir());
    camo_st_writer *w = camo_st_writer_new();
    for (int i = 0; i < src->n_params; i++) {
        camo_param *p = &src->params[i];
        if (p->kind == CAMO_PARAM_COUNTER) {
            int64_t s0[1];
            assert_int_equal(camo_st_add(w, p->name, CAMO_ST_I64, 0, s0, p->counter), 0);
            continue;
        }
        float *v = param_values(src, p->name);
        assert_int_equal(camo_st_add(w, p->name, CAMO_ST_F32, p->ndim, p->shape, v), 0);
        free(v);
    }
    assert_int_equal(camo_st_write_file(w, path), 0);
    camo_st_writer_free(w);
    camo_pretrained_report rep;
    assert_int_equal(camo_net_load_pretrained(dst, path, NULL, 1, &rep), 0);
    assert_int_equal(rep.matched, rep.network_tensors);
    assert_int_equal(rep.n_missing + rep.n_unexpected, 0);
    for (int i = 0; i < src->n_params; i++)
        if (src->params[i].kind != CAMO_PARAM_COUNTER)
            assert_true(same_param(src, dst, src->params[i].name));
    camo_net_free(src);
    camo_net_free(dst);
    be->destroy(be);
    camo_st_close(m.fx);
}

/* A small file: bn1.weight (so that something matches) and tensor `name` as given. */
static const char *small_file(const char *file, const char *name, camo_st_dtype dtype, int ndim,
                              const int64_t *shape, const void *data) {
    static char path[600];
    snprintf(path, sizeof path, "%s/%s", tu_tmpdir(), file);
    camo_st_writer *w = camo_st_writer_new();
    float bn[64];
    int64_t s64[1] = {64};
    rule_values("bn1.weight", 1, s64, bn);
    assert_int_equal(camo_st_add(w, "bn1.weight", CAMO_ST_F32, 1, s64, bn), 0);
    if (name) assert_int_equal(camo_st_add(w, name, dtype, ndim, shape, data), 0);
    assert_int_equal(camo_st_write_file(w, path), 0);
    camo_st_writer_free(w);
    return path;
}

static void test_refusals(void **state) {
    (void)state;
    manifest m;
    read_manifest(&m, &R18);
    camo_backend *be = camo_backend_cpu_create(0);
    camo_net *net = fpn(be, &m, 7), *seeded = fpn(be, &m, 7);
    static float big[64 * 3 * 7 * 7];
    int64_t s3[4] = {64, 3, 3, 3}, s7[4] = {64, 3, 7, 7};
    const char *p = small_file("pre_shape.safetensors", "conv1.weight", CAMO_ST_F32, 4, s3, big);
    expect_error(camo_net_load_pretrained(net, p, "", 0, NULL),
                 "tensor 'conv1.weight' has shape [64, 3, 3, 3], but 'conv1.weight' of network "
                 "'fpn_r18' is [64, 3, 7, 7]");
    p = small_file("pre_dtype.safetensors", "conv1.weight", CAMO_ST_I32, 4, s7, big);
    expect_error(camo_net_load_pretrained(net, p, "", 0, NULL),
                 "tensor 'conv1.weight' has dtype I32");
    assert_true(same_param(net, seeded, "bn1.weight")); /* checked before anything is written */
    expect_error(camo_net_load_pretrained(net, "no/such/weights.safetensors", "", 0, NULL),
                 "cannot read 'no/such/weights.safetensors'");
    char junk[600];
    snprintf(junk, sizeof junk, "%s/pre_junk.safetensors", tu_tmpdir());
    FILE *f = fopen(junk, "w");
    assert_non_null(f);
    fputs("not a safetensors file at all", f);
    fclose(f);
    expect_error(camo_net_load_pretrained(net, junk, "", 0, NULL), "init.weights: ");
    assert_non_null(strstr(camo_last_error(), junk));
    /* integer tensors are ignored: num_batches_tracked, and unknown ones */
    int64_t one = 5, s0[1];
    p = small_file("pre_int.safetensors", "bn1.num_batches_tracked", CAMO_ST_I64, 0, s0, &one);
    camo_pretrained_report rep;
    assert_int_equal(camo_net_load_pretrained(net, p, "", 0, &rep), 0);
    assert_int_equal(rep.matched, 1);
    assert_int_equal(rep.ignored, 1);
    assert_int_equal(rep.n_unexpected, 0);
    assert_false(same_param(net, seeded, "bn1.weight"));
    camo_net_free(net);
    camo_net_free(seeded);
    be->destroy(be);
    camo_st_close(m.fx);
}

/* F16 and BF16 tensors are converted to F32 (conv weight: into the OHWI layout too) */
static void test_half_dtypes(void **state) {
    (void)state;
    camo_backend *be = camo_backend_cpu_create(0);
    manifest m;
    read_manifest(&m, &R18);
    camo_net *net = fpn(be, &m, 7);
    enum { K = 64 * 3 * 7 * 7 };
    static uint16_t h[K], bf[64];
    for (int i = 0; i < K; i++) /* normal halves of either sign, exponents 2^-6 .. 2^3 */
        h[i] = (uint16_t)(((i & 1) << 15) | ((9 + i % 10) << 10) | ((i * 37) & 0x3ff));
    for (int i = 0; i < 64; i++) bf[i] = (uint16_t)(0x3f80 + i); /* 1.0 and up */
    char path[600];
    snprintf(path, sizeof path, "%s/pre_half.safetensors", tu_tmpdir());
    camo_st_writer *w = camo_st_writer_new();
    int64_t s7[4] = {64, 3, 7, 7}, s64[1] = {64};
    assert_int_equal(camo_st_add(w, "conv1.weight", CAMO_ST_F16, 4, s7, h), 0);
    assert_int_equal(camo_st_add(w, "bn1.weight", CAMO_ST_BF16, 1, s64, bf), 0);
    assert_int_equal(camo_st_write_file(w, path), 0);
    camo_st_writer_free(w);
    camo_pretrained_report rep;
    assert_int_equal(camo_net_load_pretrained(net, path, "", 0, &rep), 0);
    assert_int_equal(rep.matched, 2);
    assert_int_equal(rep.converted, 2);
    float *got = param_values(net, "conv1.weight");
    for (int i = 0; i < K; i++) assert_true(got[i] == camo_st_f16_to_f32(h[i]));
    free(got);
    got = param_values(net, "bn1.weight");
    for (int i = 0; i < 64; i++) assert_true(got[i] == camo_st_bf16_to_f32(bf[i]));
    free(got);
    camo_net_free(net);
    be->destroy(be);
    camo_st_close(m.fx);
}

int main(int argc, char **argv) {
    (void)argc;
    camo_cpu_env_reexec(argv); /* passive OpenMP waits: tests share 2 busy cores */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_torchvision_features),
        cmocka_unit_test(test_torchvision_features_r50),
        cmocka_unit_test(test_strict_and_prefix),
        cmocka_unit_test(test_strict_exact),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_half_dtypes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
