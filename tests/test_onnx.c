/* test_onnx.c: the ONNX files camo_onnx_export writes (nn/onnx_export.h), read back with
 * protobuf-c's generated unpack (no Python): opset and IR version, the input and output
 * names and shapes, one initializer per exported parameter with its dims and values (EMA
 * weights from a checkpoint that has them), the node count of unet_s and fpn_r18, every
 * node input defined before use, every value defined once, no dangling node output and no
 * unused initializer; for unet_s and fpn_r18 from checkpoints written by camo_ckpt_save,
 * and for every layer fixture and network of conf/models at every opset branch. Errors: a
 * layer type the exporter lacks is named, bad opsets, an unwritable path, and a write that
 * fails half-way leaves the old file and no temporary one. tests/test_export.sh compares
 * onnxruntime's numbers with camotrain's. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "test_util.h"

#include "backend/backend.h"
#include "core/common.h"
#include "nn/checkpoint.h"
#include "nn/layer.h"
#include "nn/net.h"
#include "nn/net_build.h"
#include "nn/onnx_export.h"
#include "nn/optim.h"

static camo_backend *be;
static char dir[512]; /* scratch folder of this run */

static int setup(void **state) {
    (void)state;
    be = camo_backend_cpu_create(1);
    const char *base = getenv("CAMO_TEST_TMP");
    snprintf(dir, sizeof dir, "%s/onnx.XXXXXX", base && *base ? base : "/tmp");
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    be->destroy(be);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

#ifndef CAMO_HAVE_ONNX

/* Built without protobuf-c: export says what to install, and the structure tests skip. */
static void test_without_protobuf(void **state) {
    (void)state;
    assert_int_equal(camo_onnx_available(), 0);
    assert_int_equal(camo_onnx_export(NULL, "x.onnx", NULL, NULL), CAMO_ERR_INPUT);
    assert_non_null(strstr(camo_last_error(), "protobuf-c"));
}

static void test_structure(void **state) {
    (void)state;
    skip();
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_without_protobuf),
        cmocka_unit_test(test_structure),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

#else

#include "nn/onnx.pb-c.h"

static int file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

/* Names in dir that contain ".tmp." (temporary files left behind). */
static int temp_files_left(void) {
    DIR *d = opendir(dir);
    int n = 0;
    for (struct dirent *e; d && (e = readdir(d));) n += strstr(e->d_name, ".tmp.") != NULL;
    if (d) closedir(d);
    return n;
}

/* ---- reading a model back ---- */

static Onnx__ModelProto *read_model(const char *path) {
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    fseek(fp, 0, SEEK_END);
    long n = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    uint8_t *buf = malloc((size_t)n + 1);
    assert_int_equal(fread(buf, 1, (size_t)n, fp), (size_t)n);
    fclose(fp);
    Onnx__ModelProto *m = onnx__model_proto__unpack(NULL, (size_t)n, buf);
    free(buf);
    assert_non_null(m);
    return m;
}

/* A set of names: plain arrays, the graphs are a few hundred values. */
typedef struct { const char **s; size_t n, cap; } names;

static int has(const names *a, const char *s) {
    for (size_t i = 0; i < a->n; i++)
        if (!strcmp(a->s[i], s)) return 1;
    return 0;
}

static void add(names *a, const char *s) {
    if (a->n == a->cap) {
        a->cap = a->cap ? 2 * a->cap : 256;
        a->s = realloc(a->s, a->cap * sizeof *a->s);
    }
    a->s[a->n++] = s;
}

static const Onnx__TensorProto *find_init(const Onnx__GraphProto *g, const char *name) {
    for (size_t i = 0; i < g->n_initializer; i++)
        if (!strcmp(g->initializer[i]->name, name)) return g->initializer[i];
    return NULL;
}

/* dims of a graph input/output: (N or 1, C, H, W) */
static void check_value_info(const Onnx__ValueInfoProto *vi, const char *name, int dynamic,
                             int C, int H, int W) {
    assert_string_equal(vi->name, name);
    assert_non_null(vi->type);
    assert_int_equal(vi->type->value_case, ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE);
    const Onnx__TypeProto__Tensor *t = vi->type->tensor_type;
    assert_int_equal(t->elem_type, ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT);
    assert_int_equal(t->shape->n_dim, 4);
    Onnx__TensorShapeProto__Dimension **d = t->shape->dim;
    if (dynamic) {
        assert_int_equal(d[0]->value_case, ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_PARAM);
        assert_string_equal(d[0]->dim_param, "N");
    } else {
        assert_int_equal(d[0]->value_case, ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE);
        assert_int_equal(d[0]->dim_value, 1);
    }
    int64_t want[3] = {C, H, W};
    for (int k = 0; k < 3; k++) {
        assert_int_equal(d[k + 1]->value_case,
                         ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE);
        assert_int_equal(d[k + 1]->dim_value, want[k]);
    }
}

/* Layers the exported outputs depend on (the test's own walk). */
static void needed_layers(const camo_net *net, int n_out, char *need) {
    memset(need, 0, (size_t)net->n_layers);
    for (int k = 0; k < n_out; k++) need[net->outputs[k].layer] = 1;
    for (int i = net->n_layers - 1; i >= 0; i--)
        for (int k = 0; need[i] && k < net->layers[i].n_in; k++)
            if (net->layers[i].in[k] >= 0) need[net->layers[i].in[k]] = 1;
}

/* One initializer per parameter of an exported layer (not BN's counter), with its PyTorch
 * dims and the values the network holds; none for anything else of the network. */
static void check_params(const Onnx__GraphProto *g, camo_net *net, const char *need) {
    for (int i = 0; i < net->n_params; i++) {
        const camo_param *p = &net->params[i];
        size_t count = 0;
        for (size_t k = 0; k < g->n_initializer; k++)
            count += !strcmp(g->initializer[k]->name, p->name);
        int exported = need[p->layer] && p->kind != CAMO_PARAM_COUNTER;
        if (count != (size_t)exported) fprintf(stderr, "  initializer %s: %zu\n", p->name, count);
        assert_int_equal(count, exported);
        if (!exported) continue;
        const Onnx__TensorProto *t = find_init(g, p->name);
        assert_int_equal(t->data_type, ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT);
        /* a `linear` weight [out, in] goes to its Conv node as [out, in, 1, 1] */
        int linear = net->layers[p->layer].type == CAMO_LAYER_CONV2D && p->ndim == 2;
        assert_int_equal(t->n_dims, linear ? 4 : p->ndim);
        for (int d = 0; d < p->ndim; d++) assert_int_equal(t->dims[d], p->shape[d]);
        if (linear) assert_true(t->dims[2] == 1 && t->dims[3] == 1);
        assert_true(t->has_raw_data);
        assert_int_equal(t->raw_data.len, 4 * p->numel);
        float *want = malloc(p->numel * sizeof(float)), *got = malloc(p->numel * sizeof(float));
        camo_param_get(net, p, want);
        memcpy(got, t->raw_data.data, 4 * p->numel); /* little-endian hosts (x86, arm64) */
        assert_memory_equal(got, want, 4 * p->numel);
        free(want);
        free(got);
    }
}

static const char *const known_ops[] = {
    "Conv", "BatchNormalization", "LayerNormalization", "Transpose", "ReduceMean", "Sub",
    "Mul", "Add", "Sqrt", "Div", "Reshape", "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Erf",
    "Gelu", "Identity", "MaxPool", "AveragePool", "GlobalAveragePool", "Slice", "Concat",
    "Resize", "Shape", "Sum", "Softmax", "MatMul", NULL};

/* Nodes in topological order, each value defined once, every input defined before it is
 * read, every node output read by a later node or a graph output, every initializer read,
 * only ops of the table. */
static void check_graph_order(const Onnx__GraphProto *g) {
    names defined = {0}, read = {0};
    add(&defined, "input");
    for (size_t i = 0; i < g->n_initializer; i++) {
        assert_false(has(&defined, g->initializer[i]->name));
        add(&defined, g->initializer[i]->name);
    }
    for (size_t i = 0; i < g->n_node; i++) {
        const Onnx__NodeProto *n = g->node[i];
        int known = 0;
        for (const char *const *op = known_ops; *op; op++) known |= !strcmp(*op, n->op_type);
        if (!known) fprintf(stderr, "  unexpected op %s\n", n->op_type);
        assert_true(known);
        for (size_t k = 0; k < n->n_input; k++) {
            if (!n->input[k][0]) continue; /* an omitted optional input */
            if (!has(&defined, n->input[k]))
                fprintf(stderr, "  node %zu (%s) reads '%s' before it is defined\n", i,
                        n->op_type, n->input[k]);
            assert_true(has(&defined, n->input[k]));
            add(&read, n->input[k]);
        }
        assert_int_equal(n->n_output, 1);
        assert_false(has(&defined, n->output[0]));
        add(&defined, n->output[0]);
    }
    names outs = {0};
    for (size_t k = 0; k < g->n_output; k++) {
        assert_true(has(&defined, g->output[k]->name));
        add(&outs, g->output[k]->name);
    }
    for (size_t i = 0; i < g->n_node; i++) {
        const char *o = g->node[i]->output[0];
        if (!has(&read, o) && !has(&outs, o)) fprintf(stderr, "  dangling output %s\n", o);
        assert_true(has(&read, o) || has(&outs, o));
    }
    for (size_t i = 0; i < g->n_initializer; i++) assert_true(has(&read, g->initializer[i]->name));
    free(defined.s);
    free(read.s);
    free(outs.s);
}

/* Exports net (at its input size) with o to dir/name.onnx and checks all of the above;
 * returns the model (onnx__model_proto__free_unpacked). */
static Onnx__ModelProto *export_and_check(camo_net *net, const camo_onnx_opts *o,
                                          const char *name) {
    char path[700];
    snprintf(path, sizeof path, "%s/%s.onnx", dir, name);
    camo_onnx_stats st;
    int rc = camo_onnx_export(net, path, o, &st);
    if (rc) fprintf(stderr, "  %s: %s\n", name, camo_last_error());
    assert_int_equal(rc, 0);
    Onnx__ModelProto *m = read_model(path);
    int opset = o->opset ? o->opset : CAMO_ONNX_OPSET_DEFAULT;
    assert_int_equal(m->n_opset_import, 1);
    assert_true(!m->opset_import[0]->domain || !m->opset_import[0]->domain[0]);
    assert_int_equal(m->opset_import[0]->version, opset);
    assert_int_equal(m->ir_version, opset <= 14 ? 7 : opset <= 18 ? 8 : opset <= 20 ? 9 : 10);
    assert_string_equal(m->producer_name, "camotrain");
    const Onnx__GraphProto *g = m->graph;
    assert_int_equal(g->n_input, 1);
    check_value_info(g->input[0], "input", o->dynamic_batch, net->input_channels, net->H,
                     net->W);
    int n_out = o->all_outputs ? net->n_outputs : 1;
    assert_int_equal(g->n_output, n_out);
    for (int k = 0; k < n_out; k++) {
        int H, W, C;
        camo_net_output(net, k, &H, &W, &C);
        check_value_info(g->output[k], net->outputs[k].name, o->dynamic_batch, C, H, W);
    }
    char *need = malloc((size_t)net->n_layers);
    needed_layers(net, n_out, need);
    check_params(g, net, need);
    free(need);
    check_graph_order(g);
    assert_int_equal(st.nodes, g->n_node);
    assert_int_equal(st.initializers, g->n_initializer);
    assert_int_equal(st.outputs, n_out);
    return m;
}

/* Nodes of a network made of one-node layers (conv, BN, ReLU, pooling, resize, concat,
 * add): one per exported layer; a dynamic batch adds Shape + Slice once and a Concat per
 * resize to a size. */
static size_t one_node_layers_count(const camo_net *net, int n_out, int dynamic) {
    char *need = malloc((size_t)net->n_layers);
    needed_layers(net, n_out, need);
    size_t n = 0, sized = 0;
    for (int i = 0; i < net->n_layers; i++) {
        if (!need[i]) continue;
        const camo_layer *l = &net->layers[i];
        n++;
        sized += l->type == CAMO_LAYER_RESIZE && l->u.resize.mode != RESIZE_SCALE;
    }
    free(need);
    return n + (dynamic && sized ? 2 + sized : 0);
}

/* ---- checkpoints ---- */

static char *read_text(const char *path) {
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    fseek(fp, 0, SEEK_END);
    long n = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    char *s = calloc(1, (size_t)n + 1);
    assert_int_equal(fread(s, 1, (size_t)n, fp), (size_t)n);
    fclose(fp);
    return s;
}

/* A checkpoint of network file cfg (camo_ckpt_save): initial weights, BN statistics away
 * from 0/1, and an EMA that differs from the weights (0.5 w + 0.01). */
static void make_checkpoint(const char *cfg, const char *ckpt) {
    camo_net *net = camo_net_load(cfg, be, 0);
    assert_non_null(net);
    camo_net_init_weights(net, 11);
    camo_optim_opts oo = {.type = CAMO_OPT_SGD, .momentum = 0.9, .ema_decay = 0.99};
    camo_optim *opt = camo_optim_create(net, &oo);
    for (int i = 0; i < net->n_params; i++) {
        camo_param *p = &net->params[i];
        if (p->kind == CAMO_PARAM_COUNTER) continue;
        float *h = malloc(p->numel * sizeof(float));
        camo_param_get(net, p, h);
        if (p->kind == CAMO_PARAM_BUFFER) {
            int var = strstr(p->name, "running_var") != NULL;
            tu_fill(h, p->numel, (uint32_t)i, var ? 0.5f : -0.3f, var ? 2.0f : 0.3f);
            camo_param_set(net, p, h);
        } else {
            for (size_t k = 0; k < p->numel; k++) h[k] = 0.5f * h[k] + 0.01f;
            camo_param_write(net, p, opt->ema + (p->data - net->param_block), h);
        }
        free(h);
    }
    camo_train_state st;
    memset(&st, 0, sizeof st);
    st.best_metric = NAN;
    char *text = read_text(cfg);
    assert_int_equal(camo_ckpt_save(ckpt, net, opt, &st, "", text, 11), 0);
    free(text);
    camo_optim_free(net, opt);
    camo_net_free(net);
}

/* The checkpoint's network with its weights (EMA or trained), at H x W. */
static camo_net *load_checkpoint(const char *ckpt, int use_ema, int H, int W) {
    camo_ckpt *ck = camo_ckpt_open(ckpt);
    assert_non_null(ck);
    camo_net *net = camo_net_build_from_text(ck->network_text, ckpt, be);
    assert_non_null(net);
    assert_int_equal(camo_ckpt_load_weights(ck, net, use_ema), 0);
    camo_ckpt_close(ck);
    assert_int_equal(camo_net_set_input_size(net, 1, H, W), 0);
    return net;
}

/* A shipped network from a checkpoint: EMA weights exported (not the trained ones), the
 * node count, main output only and all outputs with a dynamic batch. */
static void check_shipped(const char *cfg, const char *tag, int S, int opset_all) {
    char ckpt[700];
    snprintf(ckpt, sizeof ckpt, "%s/%s.ckpt", dir, tag);
    make_checkpoint(cfg, ckpt);
    camo_net *net = load_checkpoint(ckpt, 1, S, S);
    camo_onnx_opts o = {0}; /* opset 17, main output, batch 1 */
    Onnx__ModelProto *m = export_and_check(net, &o, tag);
    assert_int_equal(m->graph->n_node, one_node_layers_count(net, 1, 0));
    /* the EMA, not the trained weights: the first conv's weight differs from those */
    camo_net *trained = load_checkpoint(ckpt, 0, S, S);
    const camo_param *p = &trained->params[0];
    float *w = malloc(p->numel * sizeof(float));
    camo_param_get(trained, p, w);
    const Onnx__TensorProto *t = find_init(m->graph, p->name);
    assert_non_null(t);
    assert_memory_not_equal(t->raw_data.data, w, 4 * p->numel);
    for (size_t k = 0; k < p->numel; k++) w[k] = 0.5f * w[k] + 0.01f;
    TU_ASSERT_CLOSE((const float *)t->raw_data.data, w, p->numel, 1e-6, 1e-6, p->name);
    free(w);
    camo_net_free(trained);
    onnx__model_proto__free_unpacked(m, NULL);
    camo_onnx_opts all = {.opset = opset_all, .dynamic_batch = 1, .all_outputs = 1};
    char tag2[96];
    snprintf(tag2, sizeof tag2, "%s_all", tag);
    m = export_and_check(net, &all, tag2);
    assert_int_equal(m->graph->n_node, one_node_layers_count(net, net->n_outputs, 1));
    onnx__model_proto__free_unpacked(m, NULL);
    camo_net_free(net);
}

static void test_unet_s_checkpoint(void **state) {
    (void)state;
    check_shipped("conf/models/unet_s.cfg", "unet_s", 64, 13);
}

static void test_fpn_r18_checkpoint(void **state) {
    (void)state;
    check_shipped("conf/models/fpn_r18.cfg", "fpn_r18", 64, 21);
}

/* ---- every layer and network: the structure at every opset branch ---- */

/* net from file cfg with initial weights at the first size of sizes it takes (0, 0 ends);
 * NULL, named, when it has more than max_params parameters */
static camo_net *net_at_some_size(const char *cfg, const int (*sizes)[2], size_t max_params) {
    camo_net *net = camo_net_load(cfg, be, 0);
    if (!net) fprintf(stderr, "  %s: %s\n", cfg, camo_last_error());
    assert_non_null(net);
    if (camo_net_param_count(net) > max_params) {
        printf("  %s: %zu parameters, not exported here\n", cfg, camo_net_param_count(net));
        camo_net_free(net);
        return NULL;
    }
    camo_net_init_weights(net, 5);
    for (int k = 0; sizes[k][0]; k++)
        if (camo_net_set_input_size(net, 1, sizes[k][0], sizes[k][1]) == 0) return net;
    fprintf(stderr, "  %s: no test size fits: %s\n", cfg, camo_last_error());
    camo_net_free(net);
    fail();
    return NULL;
}

static void export_every_way(camo_net *net, const char *tag, const int *opsets, int n_opsets) {
    for (int k = 0; k < n_opsets; k++)
        for (int way = 0; way < 2; way++) {
            camo_onnx_opts o = {.opset = opsets[k], .dynamic_batch = way, .all_outputs = way};
            char name[200], path[800];
            snprintf(name, sizeof name, "%s_%d_%d", tag, opsets[k], way);
            snprintf(path, sizeof path, "%s/%s.onnx", dir, name);
            onnx__model_proto__free_unpacked(export_and_check(net, &o, name), NULL);
            unlink(path);
        }
}

/* Files "*.cfg" of folder d, sorted. */
static int list_cfgs(const char *d, char out[][300], int max) {
    DIR *dp = opendir(d);
    int n = 0;
    for (struct dirent *e; dp && (e = readdir(dp)) && n < max;) {
        size_t len = strlen(e->d_name);
        if (len > 4 && !strcmp(e->d_name + len - 4, ".cfg"))
            snprintf(out[n++], 300, "%s/%s", d, e->d_name);
    }
    if (dp) closedir(dp);
    qsort(out, (size_t)n, 300, (int (*)(const void *, const void *))strcmp);
    return n;
}

static void test_layer_fixtures(void **state) {
    (void)state;
    static const int sizes[][2] = {{9, 7}, {12, 10}, {7, 5}, {40, 40}, {0, 0}};
    static const int opsets[] = {13, 16, 17, 18, 20, 21}; /* the branches of the exporter */
    static char cfgs[65][300];
    int n = list_cfgs("tests/fixtures/layers", cfgs, 64);
    assert_true(n >= 13);
    snprintf(cfgs[n++], 300, "tests/fixtures/onnx_all_layers.cfg");
    for (int i = 0; i < n; i++) {
        camo_net *net = net_at_some_size(cfgs[i], sizes, SIZE_MAX);
        assert_non_null(net);
        export_every_way(net, strrchr(cfgs[i], '/') + 1, opsets, 6);
        camo_net_free(net);
    }
}

/* Every network of conf/models (others are added there) of at most MODEL_MAX_PARAMS
 * parameters: exports at opset 17, all outputs, dynamic batch, as it is. Larger ones (the
 * ResNet-50 variants, built from the same layer types as their ResNet-18 twins) would make
 * this test hold gigabytes; they are named and left out. */
#define MODEL_MAX_PARAMS 20000000
static void test_every_model(void **state) {
    (void)state;
    static const int sizes[][2] = {{64, 64}, {96, 96}, {128, 128}, {224, 224}, {0, 0}};
    static const int opsets[] = {17};
    static char cfgs[64][300];
    int n = list_cfgs("conf/models", cfgs, 64);
    assert_true(n >= 2);
    for (int i = 0; i < n; i++) {
        camo_net *net = net_at_some_size(cfgs[i], sizes, MODEL_MAX_PARAMS);
        if (!net) continue;
        char path[700];
        snprintf(path, sizeof path, "%s/model.onnx", dir);
        camo_onnx_opts o = {.opset = opsets[0], .dynamic_batch = 1, .all_outputs = 1};
        onnx__model_proto__free_unpacked(export_and_check(net, &o, "model"), NULL);
        unlink(path);
        camo_net_free(net);
    }
}

/* ---- errors ---- */

static camo_net *unet(void) {
    camo_net *net = camo_net_load("conf/models/unet_s.cfg", be, 0);
    assert_non_null(net);
    camo_net_init_weights(net, 3);
    assert_int_equal(camo_net_set_input_size(net, 1, 32, 32), 0);
    return net;
}

/* A layer type the exporter does not know (one added to layer.h later) is named: exit 2. */
static void test_unknown_layer_type_named(void **state) {
    (void)state;
    camo_net *net = unet();
    int li = -1;
    for (int i = 0; i < net->n_layers; i++)
        if (!strcmp(net->layers[i].name, "enc2a.conv")) li = i;
    assert_true(li >= 0);
    camo_layer_type saved = net->layers[li].type;
    net->layers[li].type = CAMO_LAYER_COUNT;
    char path[700];
    snprintf(path, sizeof path, "%s/unknown.onnx", dir);
    camo_clear_error();
    int rc = camo_onnx_export(net, path, NULL, NULL);
    net->layers[li].type = saved;
    assert_int_equal(rc, CAMO_ERR_INPUT);
    assert_non_null(strstr(camo_last_error(), "layer 'enc2a.conv'"));
    assert_non_null(strstr(camo_last_error(), "cannot be exported to ONNX"));
    assert_non_null(strstr(camo_last_error(), "unet_s.cfg:"));
    assert_false(file_exists(path));
    assert_int_equal(temp_files_left(), 0);
    camo_net_free(net);
}

static void test_bad_opset(void **state) {
    (void)state;
    camo_net *net = unet();
    char path[700];
    snprintf(path, sizeof path, "%s/opset.onnx", dir);
    for (int opset = 12; opset <= 22; opset += 10) {
        camo_onnx_opts o = {.opset = opset};
        assert_int_equal(camo_onnx_export(net, path, &o, NULL), CAMO_ERR_INPUT);
        assert_non_null(strstr(camo_last_error(), "opset"));
    }
    assert_false(file_exists(path));
    camo_net_free(net);
}

static void test_unwritable_path(void **state) {
    (void)state;
    camo_net *net = unet();
    char path[700];
    snprintf(path, sizeof path, "%s/no/such/folder/m.onnx", dir);
    assert_int_equal(camo_onnx_export(net, path, NULL, NULL), CAMO_ERR_INPUT);
    assert_non_null(strstr(camo_last_error(), "cannot write"));
    assert_non_null(strstr(camo_last_error(), "m.onnx"));
    assert_false(file_exists(path));
    camo_net_free(net);
}

/* A write that fails half-way (CAMO_TEST_ONNX_WRITE_FAIL: as a full disk): exit 1, the old
 * file as it was, no temporary file; the next export replaces the file whole. */
static void test_failed_write_keeps_old_file(void **state) {
    (void)state;
    camo_net *net = unet();
    char path[700];
    snprintf(path, sizeof path, "%s/keep.onnx", dir);
    FILE *fp = fopen(path, "w");
    fputs("old", fp);
    fclose(fp);
    setenv("CAMO_TEST_ONNX_WRITE_FAIL", "1", 1);
    int rc = camo_onnx_export(net, path, NULL, NULL);
    unsetenv("CAMO_TEST_ONNX_WRITE_FAIL");
    assert_int_equal(rc, CAMO_ERR_RUNTIME);
    assert_non_null(strstr(camo_last_error(), "cannot write"));
    char *text = read_text(path);
    assert_string_equal(text, "old");
    free(text);
    assert_int_equal(temp_files_left(), 0);
    camo_onnx_stats st;
    assert_int_equal(camo_onnx_export(net, path, NULL, &st), 0);
    onnx__model_proto__free_unpacked(read_model(path), NULL);
    assert_int_equal(temp_files_left(), 0);
    camo_net_free(net);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unet_s_checkpoint),
        cmocka_unit_test(test_fpn_r18_checkpoint),
        cmocka_unit_test(test_layer_fixtures),
        cmocka_unit_test(test_every_model),
        cmocka_unit_test(test_unknown_layer_type_named),
        cmocka_unit_test(test_bad_opset),
        cmocka_unit_test(test_unwritable_path),
        cmocka_unit_test(test_failed_write_keeps_old_file),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

#endif /* CAMO_HAVE_ONNX */
