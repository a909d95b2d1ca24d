/* test_net.c: network parsing (names, shapes, errors naming file:line), parameter layout,
 * freezing, and the two shipped networks' structure. */
#include "test_util.h"

#include <libconfig.h>

#include "backend/backend.h"
#include "backend/comm.h"
#include "core/common.h"
#include "parallel/ddp.h"
#include "nn/net.h"

static camo_backend *be;

static int setup(void **state) { (void)state; be = camo_backend_cpu_create(1); return 0; }
static int teardown(void **state) { (void)state; be->destroy(be); return 0; }

/* Builds a network from text; NULL on error (message in camo_last_error). */
static camo_net *net_from_text(const char *text) {
    config_t cfg;
    config_init(&cfg);
    camo_net *net = NULL;
    if (config_read_string(&cfg, text))
        net = camo_net_from_setting(config_root_setting(&cfg), "test.cfg", be, 0);
    else
        fprintf(stderr, "parse error line %d: %s\n", config_error_line(&cfg), config_error_text(&cfg));
    config_destroy(&cfg);
    return net;
}

static void expect_error(const char *text, const char *needle) {
    camo_clear_error();
    camo_net *net = net_from_text(text);
    if (net) camo_net_free(net);
    assert_null(net);
    if (!strstr(camo_last_error(), needle))
        fprintf(stderr, "  error was: %s\n  expected to contain: %s\n", camo_last_error(), needle);
    assert_non_null(strstr(camo_last_error(), needle));
}

static void test_parse_errors(void **state) {
    (void)state;
    expect_error("layers = ( { name = \"a\"; type = \"convv\"; } );", "unknown type 'convv'");
    expect_error("layers = ( { name = \"a\"; type = \"conv\"; filters = 4; size = 3; strides = 2; } );",
                 "unknown key 'strides'");
    expect_error("layers = ( { name = \"a\"; type = \"conv\"; size = 3; } );", "missing key 'filters'");
    expect_error("layers = (\n { name = \"a\"; type = \"relu\"; from = \"b\"; } );", "test.cfg:2");
    expect_error("layers = ( { name = \"a\"; type = \"relu\"; from = \"b\"; } );", "unknown layer 'b'");
    expect_error("layers = ( { name = \"a\"; type = \"relu\"; }, { name = \"a\"; type = \"relu\"; } );",
                 "used twice");
    expect_error("layers = ( { name = \"a\"; type = \"conv\"; filters = 4; size = 3; act = \"swish\"; } );",
                 "unknown act 'swish'");
    expect_error("layers = ( { name = \"a\"; type = \"conv\"; filters = 5; size = 3; groups = 2; } );",
                 "groups = 2 must divide");
    expect_error("layers = ( { name = \"a\"; type = \"conv\"; filters = 4; size = 0; } );", "'size' must be >= 1");
    expect_error("layers = ( { name = \"a\"; type = \"add\"; from = [\"input\"]; } );", "at least 2");
    expect_error("layers = ( { name = \"a\"; type = \"conv\"; filters = 4; size = 1; },"
                 "{ name = \"b\"; type = \"add\"; from = [\"a\", \"input\"]; } );", "channels");
    expect_error("layers = ( { name = \"a\"; type = \"resize\"; scale = 2.0; size = [4, 4]; } );",
                 "exactly one of");
    expect_error("layers = ( { name = \"a\"; type = \"relu\"; } ); outputs = ( { name = \"m\"; layer = \"zz\"; } );",
                 "unknown layer 'zz'");
    expect_error("layers = ( { name = \"bad name\"; type = \"relu\"; } );", "invalid layer name");
    expect_error("layer = ( );", "unknown key 'layer'");
}

/* A misspelt type is reported as the unknown type (with the closest known one), before any
 * key the misread type would not take; an unknown key names file:line, the layer (index and
 * name), its type and the closest key; so do the generic readers' messages. */
static void test_errors_name_layer(void **state) {
    (void)state;
    const char *two = "layers = (\n { name = \"a\"; type = \"relu\"; },\n %s\n);";
    char text[512];
    snprintf(text, sizeof text, two, "{ name = \"b\"; type = \"convv\"; filters = 3; }");
    expect_error(text, "test.cfg:3: layer #2 'b': unknown type 'convv' (did you mean 'conv'?");
    snprintf(text, sizeof text, two, "{ name = \"b\"; type = \"dense\"; filters = 3; }");
    expect_error(text, "test.cfg:3: layer #2 'b': unknown type 'dense' (types: conv,");
    assert_null(strstr(camo_last_error(), "did you mean"));
    snprintf(text, sizeof text, two,
             "{ name = \"b\"; type = \"conv\"; filters = 3; size = 3; strides = 2; }");
    expect_error(text, "test.cfg:3: layer #2 'b': unknown key 'strides' for type 'conv' "
                       "(did you mean 'stride'?");
    snprintf(text, sizeof text, two, "{ name = \"b\"; type = \"maxpool\"; size = 2.5; }");
    expect_error(text, "test.cfg:3: key 'size' must be an integer (layer #2 'b', type 'maxpool')");
    snprintf(text, sizeof text, two, "{ type = \"relu\"; }");
    expect_error(text, "test.cfg:3: missing key 'name' (layer #2)");
}

static void test_shape_mismatch_names_layer(void **state) {
    (void)state;
    camo_net *net = net_from_text(
        "layers = (\n"
        "  { name = \"down\"; type = \"maxpool\"; size = 2; },\n"
        "  { name = \"cat\"; type = \"concat\"; from = [\"down\", \"input\"]; }\n"
        ");");
    assert_non_null(net);
    camo_clear_error();
    assert_int_not_equal(camo_net_set_input_size(net, 1, 8, 8), 0);
    assert_non_null(strstr(camo_last_error(), "test.cfg:3"));
    assert_non_null(strstr(camo_last_error(), "'cat'"));
    assert_non_null(strstr(camo_last_error(), "4x4"));
    camo_net_free(net);
    /* a conv kernel larger than its input */
    net = net_from_text("layers = ( { name = \"c\"; type = \"conv\"; filters = 2; size = 7; pad = 0; } );");
    assert_non_null(net);
    assert_int_not_equal(camo_net_set_input_size(net, 1, 5, 5), 0);
    assert_non_null(strstr(camo_last_error(), "'c'"));
    camo_net_free(net);
}

static void test_composite_names(void **state) {
    (void)state;
    camo_net *net = net_from_text(
        "layers = (\n"
        "  { name = \"stem\"; type = \"conv\"; filters = 8; size = 3; bn = true; act = \"relu\"; },\n"
        "  { name = \"layer1.0\"; type = \"resblock\"; filters = 16; stride = 2; },\n"
        "  { name = \"head\"; type = \"conv\"; filters = \"classes\"; size = 1; }\n"
        "); classes = 3;");
    assert_non_null(net);
    const char *names[] = {"stem.conv.weight", "stem.bn.weight", "stem.bn.bias", "stem.bn.running_mean",
                           "stem.bn.running_var", "stem.bn.num_batches_tracked",
                           "layer1.0.conv1.weight", "layer1.0.bn1.weight", "layer1.0.conv2.weight",
                           "layer1.0.bn2.running_var", "layer1.0.downsample.0.weight",
                           "layer1.0.downsample.1.weight", "head.weight", "head.bias"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (!camo_net_find_param(net, names[i])) fprintf(stderr, "  missing %s\n", names[i]);
        assert_non_null(camo_net_find_param(net, names[i]));
    }
    assert_null(camo_net_find_param(net, "stem.conv.bias")); /* bn => no conv bias */
    camo_param *w = camo_net_find_param(net, "layer1.0.conv1.weight");
    assert_int_equal(w->ndim, 4);
    assert_int_equal(w->shape[0], 16);
    assert_int_equal(w->shape[1], 8);
    assert_int_equal(w->shape[2], 3);
    assert_int_equal(camo_net_find_param(net, "head.weight")->shape[0], 3);
    assert_int_equal(camo_net_set_input_size(net, 2, 9, 7), 0);
    int H, W, C;
    camo_net_output(net, 0, &H, &W, &C);
    assert_int_equal(H, 5); /* stride 2 of 9 with pad 1 */
    assert_int_equal(W, 4);
    assert_int_equal(C, 3);
    camo_net_free(net);
}

/* Gradients are laid out in reverse parameter order, each with its weight at the same
 * offset of param_block (DDP buckets are contiguous slices), each padded to 256 bytes. */
static void test_block_layout(void **state) {
    (void)state;
    camo_net *net = camo_net_load("conf/models/unet_s.cfg", be, 0);
    assert_non_null(net);
    size_t expect = 0;
    for (int i = net->n_params - 1; i >= 0; i--) {
        camo_param *p = &net->params[i];
        if (p->kind != CAMO_PARAM_WEIGHT) continue;
        assert_ptr_equal(p->data, net->param_block + expect);
        assert_ptr_equal(p->grad, net->grad_block + expect);
        expect += camo_param_padded(p->numel);
    }
    assert_int_equal(expect, net->n_weight_floats);
    camo_net_free(net);
}

/* fpn_r18's encoder has exactly torchvision resnet18's parameters (without fc). */
static void test_fpn_r18_encoder(void **state) {
    (void)state;
    camo_net *net = camo_net_load("conf/models/fpn_r18.cfg", be, 0);
    assert_non_null(net);
    size_t enc = 0;
    int n_enc_tensors = 0;
    for (int i = 0; i < net->n_params; i++) {
        camo_param *p = &net->params[i];
        if (strncmp(p->name, "conv1", 5) && strncmp(p->name, "bn1", 3) && strncmp(p->name, "layer", 5))
            continue;
        n_enc_tensors++;
        if (p->kind == CAMO_PARAM_WEIGHT) enc += p->numel;
    }
    assert_int_equal(enc, 11176512);      /* resnet18 parameters minus fc (512*1000+1000) */
    assert_int_equal(n_enc_tensors, 120); /* resnet18 state_dict entries minus fc.weight/bias */
    assert_int_equal(camo_net_set_input_size(net, 1, 64, 64), 0);
    int H, W, C;
    camo_net_output(net, 0, &H, &W, &C);
    assert_int_equal(H, 64);
    assert_int_equal(W, 64);
    assert_int_equal(C, 1);
    assert_int_equal(net->n_outputs, 2);
    camo_net_free(net);
}

static void test_unet_outputs(void **state) {
    (void)state;
    camo_net *net = camo_net_load("conf/models/unet_s.cfg", be, 2);
    assert_non_null(net);
    assert_int_equal(net->classes, 2);
    assert_int_equal(net->n_outputs, 3);
    assert_int_equal(camo_net_set_input_size(net, 2, 48, 40), 0);
    for (int i = 0; i < net->n_outputs; i++) {
        int H, W, C;
        camo_net_output(net, i, &H, &W, &C);
        assert_int_equal(H, 48);
        assert_int_equal(W, 40);
        assert_int_equal(C, 2);
    }
    assert_true(net->outputs[1].weight > 0.49f && net->outputs[1].weight < 0.51f);
    camo_net_free(net);
}

/* Frozen parameters get no gradient and layers upstream of anything trainable are skipped. */
static void test_frozen_params(void **state) {
    (void)state;
    camo_net *net = net_from_text(
        "layers = ( { name = \"a\"; type = \"conv\"; filters = 4; size = 3; },\n"
        "           { name = \"b\"; type = \"conv\"; filters = 2; size = 3; } );");
    assert_non_null(net);
    assert_int_equal(camo_net_set_input_size(net, 2, 6, 6), 0);
    camo_net_init_weights(net, 1);
    tu_fill(net->input, 2 * 6 * 6 * 3, 3, -1, 1);
    camo_param *wa = camo_net_find_param(net, "a.weight"), *wb = camo_net_find_param(net, "b.weight");
    wa->frozen = 1;
    camo_net_find_param(net, "a.bias")->frozen = 1;
    camo_net_forward(net, 2, 1);
    camo_net_zero_act_grads(net);
    camo_net_zero_param_grads(net);
    tu_fill(camo_net_output_grad(net, 0), 2 * 6 * 6 * 2, 4, -1, 1);
    camo_net_backward(net, 2);
    double ga = 0, gb = 0;
    for (size_t i = 0; i < wa->numel; i++) ga += fabs(wa->grad[i]);
    for (size_t i = 0; i < wb->numel; i++) gb += fabs(wb->grad[i]);
    assert_true(ga == 0);
    assert_true(gb > 0);
    camo_net_free(net);
}

static void test_missing_file(void **state) {
    (void)state;
    assert_null(camo_net_load("conf/models/does_not_exist.cfg", be, 0));
    assert_non_null(strstr(camo_last_error(), "does_not_exist.cfg"));
    char path[512];
    snprintf(path, sizeof path, "%s/syntax.cfg", tu_tmpdir());
    FILE *f = fopen(path, "w");
    /* libconfig makes the ';' between settings optional: a missing value is an error */
    fputs("name = \"x\";\nlayers = ( { name = \"a\"; type = ; } );\n", f);
    fclose(f);
    assert_null(camo_net_load(path, be, 0));
    assert_non_null(strstr(camo_last_error(), "syntax.cfg:2"));
}

/* Every parameter's data and gradient and every buffer starts on a 256-byte boundary (cuDNN
 * and NCCL want aligned operands); the gaps between them hold zeros after backward and
 * after whole-block optimizer steps (so no norm or all-reduce sees them); the parameter
 * count leaves them out. */
static void check_gaps_zero(const camo_net *net, const float *block, const char *what) {
    unsigned char *used = calloc(net->n_weight_floats + 1, 1);
    for (int i = 0; i < net->n_params; i++) {
        const camo_param *p = &net->params[i];
        if (p->kind == CAMO_PARAM_WEIGHT)
            memset(used + (p->data - net->param_block), 1, p->numel);
    }
    for (size_t j = 0; j < net->n_weight_floats; j++)
        if (!used[j] && block[j] != 0) fail_msg("%s: gap float %zu is %g", what, j, block[j]);
    free(used);
}

/* DDP buckets of small sizes (many of them) start and end on 256-byte boundaries and cover
 * the whole gradient block in order. */
static void check_buckets_aligned(camo_net *net) {
    camo_comm *comm[1];
    camo_ddp d;
    assert_int_equal(camo_comm_cpu_create(1, 30, comm), 0);
    assert_int_equal(camo_ddp_init(&d, net, comm[0], 0.01, 0.05), 0);
    assert_true(d.n_buckets > 4);
    for (int b = 0; b < d.n_buckets; b++) {
        size_t lo = b ? d.bucket_end[b - 1] : 0;
        if (lo % 64 || d.bucket_end[b] <= lo)
            fail_msg("bucket %d of %d: [%zu, %zu)", b, d.n_buckets, lo, d.bucket_end[b]);
    }
    assert_int_equal(d.bucket_end[d.n_buckets - 1], net->n_weight_floats);
    camo_ddp_free(&d);
    comm[0]->destroy(comm[0]);
}

static void check_aligned_net(const char *cfg) {
    camo_net *net = camo_net_load(cfg, be, 0);
    assert_non_null(net);
    size_t count = 0, odd = 0;
    for (int i = 0; i < net->n_params; i++) {
        camo_param *p = &net->params[i];
        if (p->kind == CAMO_PARAM_COUNTER) continue;
        if ((uintptr_t)p->data % 256 || (p->grad && (uintptr_t)p->grad % 256))
            fail_msg("%s: %s data %p grad %p not 256-byte aligned", cfg, p->name,
                     (void *)p->data, (void *)p->grad);
        if (p->kind == CAMO_PARAM_WEIGHT) count += p->numel, odd += p->numel % 64 != 0;
    }
    fprintf(stderr, "  %s: %zu parameters in %zu floats\n", cfg, count, net->n_weight_floats);
    assert_int_equal(camo_net_param_count(net), count);
    assert_true(odd > 0); /* the shipped networks do have tensors that need a gap */
    check_buckets_aligned(net);
    int N = 2, S = 32, H, W, C;
    assert_int_equal(camo_net_set_input_size(net, N, S, S), 0);
    camo_net_init_weights(net, 5);
    tu_fill(net->input, (size_t)N * S * S * 3, 6, -1, 1);
    camo_net_zero_param_grads(net);
    camo_net_forward(net, N, 1);
    camo_net_zero_act_grads(net);
    camo_net_output(net, 0, &H, &W, &C);
    tu_fill(camo_net_output_grad(net, 0), (size_t)N * H * W * C, 7, -1, 1);
    camo_net_backward(net, N);
    check_gaps_zero(net, net->grad_block, "gradients after backward");
    size_t n = net->n_weight_floats;
    float *m = be->alloc(be, n * sizeof(float)), *v = be->alloc(be, n * sizeof(float));
    be->adamw_step(be, n, net->param_block, net->grad_block, m, v, 1e-3f, 0.9f, 0.999f, 1e-8f,
                   0.05f, 1.0f, 1);
    be->sgd_step(be, n, net->param_block, net->grad_block, m, 0.1f, 0.9f, 1, 1e-4f, 1.0f, 1);
    check_gaps_zero(net, net->param_block, "weights after AdamW and SGD steps");
    check_gaps_zero(net, m, "optimizer state");
    check_gaps_zero(net, v, "AdamW second moments");
    be->free(be, m), be->free(be, v);
    camo_net_free(net);
}

static void test_param_alignment(void **state) {
    (void)state;
    check_aligned_net("conf/models/unet_s.cfg");
    check_aligned_net("conf/models/fpn_r18.cfg");
}

int main(int argc, char **argv) {
    (void)argc;
    camo_cpu_env_reexec(argv); /* passive OpenMP waits: tests share 2 busy cores */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_errors),
        cmocka_unit_test(test_errors_name_layer),
        cmocka_unit_test(test_shape_mismatch_names_layer),
        cmocka_unit_test(test_composite_names),
        cmocka_unit_test(test_block_layout),
        cmocka_unit_test(test_fpn_r18_encoder),
        cmocka_unit_test(test_unet_outputs),
        cmocka_unit_test(test_frozen_params),
        cmocka_unit_test(test_missing_file),
        cmocka_unit_test(test_param_alignment),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
