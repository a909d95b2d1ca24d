/* test_net_plan.c: the memory plan (src/nn/net_plan.h) moves tensors, never changes a
 * number. For shipped networks, one training forward + loss + backward gives bit-identical
 * outputs, parameter gradients and BN statistics with every tensor in its own memory
 * (plain), with the planned arena (fast) and with batch norms and activations recomputed
 * (lean), with the network's checkpoint_blocks recomputed (train.checkpointing); with
 * every dead tensor poisoned with NaN. And the plan's rules on small graphs:
 * ReLU runs in place over its batch norm, a gradient lives only during backward, a kept
 * layer survives, and the arena is much smaller than one buffer per tensor. */
#include "test_util.h"

#include "backend/backend.h"
#include "core/common.h"
#include "nn/layer.h"
#include "nn/loss.h"
#include "nn/net_plan.h"

typedef struct {
    float *grads, *outs, *buffers;
    size_t n_grads, n_outs, n_buffers;
} step_result;

/* one training step's numbers on a fresh network from `path` in the given memory mode */
static step_result run_step(const char *path, int N, int S, int lean, int plain, int poison,
                            int ckpt) {
    camo_backend *be = camo_backend_cpu_create(1);
    camo_net *net = camo_net_load(path, be, 0);
    assert_non_null(net);
    setenv("CAMO_PLAN", plain ? "plain" : "", 1);
    setenv("CAMO_POISON", poison ? "1" : "0", 1);
    camo_net_set_lean(net, lean);
    assert_int_equal(camo_net_set_input_size(net, N, S, S), 0);
    if (ckpt) assert_true(camo_net_set_checkpointing(net, 1) > 0);
    camo_net_init_weights(net, 7);
    size_t nin = (size_t)N * S * S * net->input_channels, npx = (size_t)N * S * S;
    float *x = tu_falloc(nin), *target = tu_falloc(npx);
    tu_fill(x, nin, 1, -1, 1);
    for (size_t i = 0; i < npx; i++) target[i] = (float)((i * 7919) % 3 == 0);
    be->upload(be, net->input, x, nin * sizeof(float));
    float *tdev = be->alloc(be, npx * sizeof(float)), *loss = be->alloc(be, 4 * sizeof(float));
    be->upload(be, tdev, target, npx * sizeof(float));
    camo_net_zero_param_grads(net);
    camo_net_forward(net, N, 1);
    camo_net_zero_act_grads(net);
    camo_loss_forward_backward(net, LOSS_STRUCTURE, 1, N, tdev, NULL, -1, N, (double)npx, loss);
    step_result r = {.n_grads = net->n_weight_floats, .n_buffers = net->n_buffer_floats};
    int H, W, C;
    camo_net_output(net, 0, &H, &W, &C);
    r.n_outs = (size_t)N * H * W * C;
    r.outs = tu_falloc(r.n_outs);
    be->download(be, r.outs, camo_net_output(net, 0, NULL, NULL, NULL), r.n_outs * 4);
    camo_net_backward(net, N);
    r.grads = tu_falloc(r.n_grads);
    r.buffers = tu_falloc(r.n_buffers);
    be->download(be, r.grads, net->grad_block, r.n_grads * 4);
    be->download(be, r.buffers, net->buffer_block, r.n_buffers * 4);
    be->free(be, tdev), be->free(be, loss);
    free(x), free(target);
    camo_net_free(net);
    be->destroy(be);
    unsetenv("CAMO_PLAN"), unsetenv("CAMO_POISON");
    return r;
}

static void free_result(step_result *r) { free(r->grads), free(r->outs), free(r->buffers); }

static void expect_same(const step_result *a, const step_result *b, const char *what) {
    int same = a->n_grads == b->n_grads &&
               !memcmp(a->grads, b->grads, a->n_grads * 4) &&
               !memcmp(a->outs, b->outs, a->n_outs * 4) &&
               !memcmp(a->buffers, b->buffers, a->n_buffers * 4);
    if (!same)
        fprintf(stderr, "  %s: not bit-identical to the unplanned step (outputs %s, gradients "
                "%s, BN statistics %s)\n", what,
                memcmp(a->outs, b->outs, a->n_outs * 4) ? "differ" : "same",
                memcmp(a->grads, b->grads, a->n_grads * 4) ? "differ" : "same",
                memcmp(a->buffers, b->buffers, a->n_buffers * 4) ? "differ" : "same");
    assert_true(same);
}

static void check_modes(const char *path, int N, int S) {
    step_result plain = run_step(path, N, S, 0, 1, 0, 0);
    int finite = 1;
    for (size_t i = 0; i < plain.n_grads; i++) finite &= isfinite(plain.grads[i]);
    assert_true(finite);
    int ckpt_max = strstr(path, "unet_s") ? 0 : 1; /* unet_s names no blocks */
    for (int lean = 0; lean <= 1; lean++)
        for (int poison = 0; poison <= 1; poison++)
            for (int ckpt = 0; ckpt <= ckpt_max; ckpt++) {
                step_result r = run_step(path, N, S, lean, 0, poison, ckpt);
                char what[200];
                snprintf(what, sizeof what, "%s %s%s%s", path, lean ? "lean" : "fast",
                         poison ? " poisoned" : "", ckpt ? " checkpointing" : "");
                expect_same(&r, &plain, what);
                free_result(&r);
            }
    free_result(&plain);
}

static void test_unet_s(void **state) { (void)state; check_modes("conf/models/unet_s.cfg", 3, 32); }
static void test_fpn_r18(void **state) { (void)state; check_modes("conf/models/fpn_r18.cfg", 2, 64); }
static void test_pspnet_r18(void **state) { (void)state; check_modes("conf/models/pspnet_r18.cfg", 2, 64); }
static void test_segformer_b0(void **state) {
    (void)state;
    check_modes("conf/models/segformer_b0.cfg", 2, 64);
}

/* conv -> bn -> relu -> conv: the ReLU writes over the BN output; every gradient is born in
 * backward; lean recomputes BN and ReLU (only the first conv's output is kept) */
static const char *SMALL =
    "name = \"small\"; input_channels = 3; classes = 1;\n"
    "layers = ({ name = \"a\"; type = \"conv\"; filters = 4; size = 3; bn = true; act = \"relu\"; },\n"
    "          { name = \"head\"; type = \"conv\"; filters = 1; size = 1; bias = true; });\n"
    "outputs = ({ name = \"main\"; layer = \"head\"; });\n";

static int find_layer(const camo_net *net, const char *name) {
    for (int i = 0; i < net->n_layers; i++)
        if (!strcmp(net->layers[i].name, name)) return i;
    fail_msg("no layer %s", name);
    return -1;
}

static void test_rules(void **state) {
    (void)state;
    char path[600];
    snprintf(path, sizeof path, "%s/small.cfg", tu_tmpdir());
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(SMALL, f);
    fclose(f);
    camo_backend *be = camo_backend_cpu_create(1);
    camo_net *net = camo_net_load(path, be, 0);
    assert_non_null(net);
    assert_int_equal(camo_net_set_input_size(net, 2, 8, 8), 0);
    const camo_plan *p = net->plan;
    int conv = find_layer(net, "a.conv"), bn = find_layer(net, "a.bn"), relu = find_layer(net, "a.act");
    int L = net->n_layers;
    assert_true(p->in_place[relu] && !p->in_place[bn]);
    assert_true(net->layers[relu].out == net->layers[bn].out);
    assert_true(net->layers[conv].out != net->layers[bn].out);
    for (int i = 0; i < L; i++) assert_true(p->life[i][PLAN_GRAD].birth >= L);
    assert_true(!p->recompute[bn] && !p->recompute[relu]);
    size_t fast = p->arena_img;
    assert_true(fast < p->plain_img);
    /* lean: BN and ReLU regenerated in backward, the arena shrinks */
    assert_int_equal(camo_net_set_lean(net, 1), 0);
    p = net->plan;
    assert_true(p->recompute[bn] && p->recompute[relu] && !p->recompute[conv]);
    assert_true(plan_has(p, relu, PLAN_REC) && p->life[relu][PLAN_OUT].death < L);
    assert_true(p->arena_img <= fast);
    /* a kept layer lives to the end of the step */
    assert_int_equal(camo_net_keep_layer(net, relu), 0);
    p = net->plan;
    assert_true(!p->recompute[relu] && p->life[relu][PLAN_OUT].death == 2 * L);
    camo_net_free(net);
    be->destroy(be);
}

/* evaluation batches (camo_net_set_eval_size): the forward-only plan gives the outputs of
 * the training plan's evaluation-mode forward, bit for bit, with dead tensors poisoned; a
 * training step after it is unchanged; its arena is smaller */
static void check_eval_plan(const char *path, int N, int S) {
    setenv("CAMO_POISON", "1", 1);
    camo_backend *be = camo_backend_cpu_create(1);
    camo_net *net = camo_net_load(path, be, 0);
    assert_non_null(net);
    assert_int_equal(camo_net_set_input_size(net, N, S, S), 0);
    camo_net_init_weights(net, 5);
    size_t nin = (size_t)N * S * S * net->input_channels;
    float *x = tu_falloc(nin);
    tu_fill(x, nin, 3, -1, 1);
    int H, W, C;
    camo_net_output(net, 0, &H, &W, &C);
    size_t ny = (size_t)N * H * W * C;
    float *a = tu_falloc(ny), *b = tu_falloc(ny);
    be->upload(be, net->input, x, nin * 4);
    camo_net_forward(net, N, 0);
    be->download(be, a, camo_net_output(net, 0, NULL, NULL, NULL), ny * 4);
    assert_int_equal(camo_net_set_eval_size(net, N + 1, S, S), 0);
    assert_true(net->plan_eval->arena_img < net->plan->arena_img);
    be->upload(be, net->input, x, nin * 4);
    camo_net_forward(net, N, 0);
    assert_true(net->eval_active);
    be->download(be, b, camo_net_output(net, 0, NULL, NULL, NULL), ny * 4);
    assert_memory_equal(a, b, ny * 4);
    camo_net_forward(net, N, 1); /* training: back to the training plan */
    assert_false(net->eval_active);
    free(a), free(b), free(x);
    camo_net_free(net);
    be->destroy(be);
    unsetenv("CAMO_POISON");
}

static void test_eval_plan(void **state) {
    (void)state;
    check_eval_plan("conf/models/unet_s.cfg", 2, 32);
    check_eval_plan("conf/models/segformer_b0.cfg", 2, 64);
}

/* train.checkpointing: the blocks the patterns name are found (ResNet-18 has 8, MiT-b0 8),
 * their inner layers recomputed, their outputs kept; the arena shrinks */
static void check_blocks(const char *path, int want_blocks, const char *inner, const char *out) {
    camo_backend *be = camo_backend_cpu_create(1);
    camo_net *net = camo_net_load(path, be, 0);
    assert_non_null(net);
    assert_int_equal(camo_net_set_input_size(net, 2, 64, 64), 0);
    size_t before = net->plan->arena_img;
    assert_int_equal(camo_net_set_checkpointing(net, 1), want_blocks);
    int i = find_layer(net, inner), o = find_layer(net, out);
    assert_true(net->layers[i].recompute && !net->layers[o].recompute);
    fprintf(stderr, "  %s: arena %.2f MiB per image, %.2f with checkpointing\n", path,
            before * 4.0 / 1048576, net->plan->arena_img * 4.0 / 1048576);
    assert_true(net->plan->arena_img < before);
    assert_int_equal(camo_net_set_checkpointing(net, 0), want_blocks);
    assert_true(!net->layers[i].recompute && net->plan->arena_img == before);
    camo_net_free(net);
    be->destroy(be);
}

static void test_checkpoint_blocks(void **state) {
    (void)state;
    check_blocks("conf/models/fpn_r18.cfg", 8, "layer2.1.conv2", "layer2.1.relu");
    check_blocks("conf/models/segformer_b0.cfg", 8, "segformer.encoder.block.1.0.mlp.act",
                 "segformer.encoder.block.1.0.add2");
    /* a network without patterns refuses, naming the key */
    camo_backend *be = camo_backend_cpu_create(1);
    camo_net *net = camo_net_load("conf/models/unet_s.cfg", be, 0);
    assert_non_null(net);
    assert_int_equal(camo_net_set_checkpointing(net, 1), -1);
    assert_non_null(strstr(camo_last_error(), "checkpoint_blocks"));
    camo_net_free(net);
    be->destroy(be);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rules),        cmocka_unit_test(test_checkpoint_blocks),
        cmocka_unit_test(test_eval_plan),    cmocka_unit_test(test_unet_s),
        cmocka_unit_test(test_fpn_r18),      cmocka_unit_test(test_pspnet_r18),
        cmocka_unit_test(test_segformer_b0),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
