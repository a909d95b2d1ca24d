/* test_train_recipe.c: the recipe's pieces against hand-computed values: learning-rate
 * schedules with warm-up and stages, weight decay skipping norms and biases, frozen
 * parameters, gradient norm and clipping scale, EMA, deep-supervision loss weights. */
#include "test_util.h"

#include "core/common.h"
#include "train/config.h"
#include "nn/loss.h"
#include "nn/optim.h"
#include "nn/net_build.h"
#include "train/schedule.h"
#include "train/train.h"

static const char *const TRAIN_TEXT =
    "model = \"models/unet_s.cfg\";\n"
    "train = { epochs = 10; lr = 1.0; min_lr = 0.1; warmup_epochs = 2.0; };\n";

static const char *const NET_TEXT =
    "name = \"tiny\"; input_channels = 3; classes = 1;\n"
    "layers = (\n"
    "  { name = \"body\"; type = \"conv\"; filters = 4; size = 3; bn = true; act = \"relu\"; },\n"
    "  { name = \"head\"; type = \"conv\"; filters = \"classes\"; size = 1; },\n"
    "  { name = \"aux\"; type = \"conv\"; filters = \"classes\"; size = 1; from = \"body\"; }\n"
    ");\n"
    "outputs = ( { name = \"main\"; layer = \"head\"; },\n"
    "            { name = \"aux\"; layer = \"aux\"; weight = 0.5; } );\n"
    "groups = { encoder = [\"body\"]; };\n";

/* NET_TEXT with the aux layer as the only output: the same weights (same layers, seed) */
static const char *const NET_AUX_ONLY =
    "name = \"tiny\"; input_channels = 3; classes = 1;\n"
    "layers = (\n"
    "  { name = \"body\"; type = \"conv\"; filters = 4; size = 3; bn = true; act = \"relu\"; },\n"
    "  { name = \"head\"; type = \"conv\"; filters = \"classes\"; size = 1; },\n"
    "  { name = \"aux\"; type = \"conv\"; filters = \"classes\"; size = 1; from = \"body\"; }\n"
    ");\n"
    "outputs = ( { name = \"main\"; layer = \"aux\"; } );\n";

static void load_cfg(camo_config *c, const char *text, char **sets, int n) {
    int rc = camo_config_load(c, "recipe.cfg", text, sets, n);
    if (rc) fprintf(stderr, "%s\n", camo_last_error());
    assert_int_equal(rc, 0);
}

static void test_lr_schedules(void **state) {
    (void)state;
    camo_config c;
    load_cfg(&c, TRAIN_TEXT, NULL, 0); /* cosine by default */
    assert_float_equal(camo_lr_at(&c, 0, 0.5), 0.25, 1e-12);  /* linear warm-up */
    assert_float_equal(camo_lr_at(&c, 0, 1.0), 0.5, 1e-12);
    assert_float_equal(camo_lr_at(&c, 0, 2.0), 1.0, 1e-12);
    assert_float_equal(camo_lr_at(&c, 0, 6.0), 0.55, 1e-12);  /* half-way: (1 + 0.1) / 2 */
    assert_float_equal(camo_lr_at(&c, 0, 10.0), 0.1, 1e-12);  /* min_lr at the end */
    camo_config_free(&c);
    char *poly[] = {"train.schedule=poly", "train.poly_power=2"};
    load_cfg(&c, TRAIN_TEXT, poly, 2);
    assert_float_equal(camo_lr_at(&c, 0, 6.0), 0.1 + 0.9 * 0.25, 1e-12);
    camo_config_free(&c);
    char *step[] = {"train.schedule=step", "train.step_size=3", "train.step_gamma=0.5"};
    load_cfg(&c, TRAIN_TEXT, step, 3);
    assert_float_equal(camo_lr_at(&c, 0, 4.9), 1.0, 1e-12);
    assert_float_equal(camo_lr_at(&c, 0, 5.0), 0.5, 1e-12);
    assert_float_equal(camo_lr_at(&c, 0, 8.5), 0.25, 1e-12);
    camo_config_free(&c);
    char *constant[] = {"train.schedule=constant", "train.warmup_epochs=0.25"};
    load_cfg(&c, TRAIN_TEXT, constant, 2); /* a warm-up of part of an epoch (steps) */
    assert_float_equal(camo_lr_at(&c, 0, 0.125), 0.5, 1e-12);
    assert_float_equal(camo_lr_at(&c, 0, 7.0), 1.0, 1e-12);
    camo_config_free(&c);
}

static void test_stage_lr_and_batch(void **state) {
    (void)state;
    const char *text =
        "model = \"models/unet_s.cfg\";\n"
        "train = { lr = 1.0; min_lr = 0.0; warmup_epochs = 1.0; batch = 8; stages = (\n"
        "  { epochs = 2; freeze = [\"encoder\"]; },\n"
        "  { epochs = 4; lr = 0.2; batch = 6; progressive_unfreeze = true; } ); };\n";
    camo_config c;
    load_cfg(&c, text, NULL, 0);
    assert_int_equal(c.train.n_stages, 2);
    assert_int_equal(c.train.epochs, 6);
    assert_int_equal(c.train.stages[0].batch, 8);
    assert_int_equal(c.train.stages[1].batch, 6);
    assert_string_equal(c.train.stages[0].freeze, "encoder");
    assert_float_equal(camo_lr_at(&c, 0, 0.5), 0.5, 1e-12);  /* stage 1 warms up */
    assert_float_equal(camo_lr_at(&c, 1, 0.5), 0.2 * 0.5 * (1 + cos(M_PI / 8)), 1e-12);
    assert_float_equal(camo_lr_at(&c, 1, 4.0), 0.0, 1e-12);  /* each stage ends at min_lr */
    assert_float_equal(c.train.stages[1].unfreeze_epochs, 2.0, 1e-12); /* default: half */
    camo_config_free(&c);
}

typedef struct fixture {
    camo_backend *be;
    camo_net *net;
} fixture;

static void build(fixture *f, const char *text) {
    f->be = camo_backend_cpu_create(1);
    f->net = camo_net_build_from_text(text, "tiny", f->be);
    if (!f->net) fprintf(stderr, "%s\n", camo_last_error());
    assert_non_null(f->net);
    assert_int_equal(camo_net_set_input_size(f->net, 2, 8, 8), 0);
    camo_net_init_weights(f->net, 3);
    camo_net_zero_param_grads(f->net);
}

static void destroy(fixture *f) {
    camo_net_free(f->net);
    f->be->destroy(f->be);
}

static float *get(fixture *f, const char *name) {
    camo_param *p = camo_net_find_param(f->net, name);
    assert_non_null(p);
    float *h = malloc(p->numel * sizeof(float));
    assert_non_null(h);
    camo_param_get(f->net, p, h);
    return h;
}

static void fill_grads(fixture *f, float v) {
    size_t n = f->net->n_weight_floats;
    float *g = malloc(n * sizeof(float));
    assert_non_null(g);
    for (size_t i = 0; i < n; i++) g[i] = v;
    f->be->upload(f->be, f->net->grad_block, g, n * sizeof(float));
    free(g);
}

static camo_optim *make_opt(fixture *f, const char *opt, double wd, double ema) {
    char o[64], w[64], e[64], *sets[] = {o, w, e, "train.momentum=0"};
    snprintf(o, sizeof o, "train.optimizer=%s", opt);
    snprintf(w, sizeof w, "train.weight_decay=%g", wd);
    snprintf(e, sizeof e, "train.ema_decay=%g", ema);
    camo_config c;
    load_cfg(&c, TRAIN_TEXT, sets, 4);
    camo_optim_opts oo = camo_config_optim_opts(&c);
    camo_optim *o_ = camo_optim_create(f->net, &oo);
    camo_config_free(&c);
    return o_;
}

/* zero gradients: only weight decay moves a parameter, and only conv/linear weights */
static void test_no_decay_on_norms_and_biases(void **state) {
    (void)state;
    const char *opts[] = {"sgd", "adamw"};
    for (int k = 0; k < 2; k++) {
        fixture f;
        build(&f, NET_TEXT);
        camo_optim *o = make_opt(&f, opts[k], 0.5, 0);
        const char *fixed[] = {"body.bn.weight", "body.bn.bias", "head.bias"};
        float *w0 = get(&f, "body.conv.weight"), *b0[3];
        for (int i = 0; i < 3; i++) b0[i] = get(&f, fixed[i]);
        camo_optim_step(f.net, o, 0.1, 1.0);
        float *w1 = get(&f, "body.conv.weight");
        for (int i = 0; i < 4 * 27; i++) assert_float_equal(w1[i], w0[i] * 0.95f, 1e-6);
        for (int i = 0; i < 3; i++) {
            camo_param *p = camo_net_find_param(f.net, fixed[i]);
            float *b1 = get(&f, fixed[i]);
            assert_memory_equal(b0[i], b1, p->numel * sizeof(float));
            free(b1);
            free(b0[i]);
        }
        free(w0);
        free(w1);
        camo_optim_free(f.net, o);
        destroy(&f);
    }
}

/* frozen weights neither move nor count in the gradient norm; clipping scales the step */
static void test_frozen_norm_and_clip(void **state) {
    (void)state;
    fixture f;
    build(&f, NET_TEXT);
    camo_optim *o = make_opt(&f, "sgd", 0, 0);
    size_t unfrozen = 0;
    for (int i = 0; i < f.net->n_params; i++) {
        camo_param *p = &f.net->params[i];
        if (p->kind != CAMO_PARAM_WEIGHT) continue;
        p->frozen = !strncmp(p->name, "body.", 5);
        if (!p->frozen) unfrozen += p->numel;
    }
    fill_grads(&f, 2.0f);
    assert_float_equal(camo_grad_norm(f.net, o), 2.0 * sqrt((double)unfrozen), 1e-4);
    float *body0 = get(&f, "body.conv.weight"), *head0 = get(&f, "head.weight");
    camo_optim_step(f.net, o, 1.0, 0.25); /* clipped: grad 2 x 0.25 */
    float *body1 = get(&f, "body.conv.weight"), *head1 = get(&f, "head.weight");
    assert_memory_equal(body0, body1, 4 * 27 * sizeof(float));
    for (int i = 0; i < 4; i++) assert_float_equal(head1[i], head0[i] - 0.5f, 1e-6);
    free(body0); free(body1); free(head0); free(head1);
    camo_optim_free(f.net, o);
    destroy(&f);
}

/* Clipping on the device (camo_clip_grads_dev, no host wait) moves every weight exactly as
 * the host path (camo_grad_norm, then the update's grad_scale) does, and finds the same
 * norm: clipped and not, with an fp16 loss scale, a frozen layer, AdamW (whose moments see
 * the scaled gradient). */
static void test_clip_on_device_equals_host(void **state) {
    (void)state;
    const double cases[][2] = {{0.05, 1}, {1e9, 1}, {0.05, 1024}, {0.3, 8}};
    for (int k = 0; k < 4; k++) {
        double clip = cases[k][0], S = cases[k][1];
        fixture f[2];
        camo_optim *o[2];
        float *w[2];
        double norm[2];
        for (int j = 0; j < 2; j++) {
            build(&f[j], NET_TEXT);
            o[j] = make_opt(&f[j], "adamw", 1e-2, 0);
            camo_net_find_param(f[j].net, "aux.weight")->frozen = 1;
            size_t n = f[j].net->n_weight_floats;
            float *g = calloc(n, sizeof(float));
            assert_non_null(g);
            for (int i = 0; i < f[j].net->n_params; i++) { /* no padding: it stays zero */
                camo_param *p = &f[j].net->params[i];
                if (p->kind == CAMO_PARAM_WEIGHT)
                    tu_fill(g + (p->grad - f[j].net->grad_block), p->numel, 7 + i, -0.1f, 0.1f);
            }
            for (size_t i = 0; i < n; i++) g[i] *= (float)S;
            f[j].be->upload(f[j].be, f[j].net->grad_block, g, n * sizeof(float));
            free(g);
        }
        norm[0] = camo_grad_norm(f[0].net, o[0]) / S;
        double scale = norm[0] > clip ? clip / (norm[0] + 1e-6) : 1.0;
        camo_optim_step(f[0].net, o[0], 0.1, scale / S);
        double *norm_dev = f[1].be->alloc(f[1].be, sizeof(double));
        camo_clip_grads_dev(f[1].net, o[1], clip, S, norm_dev);
        camo_optim_step(f[1].net, o[1], 0.1, 1.0);
        f[1].be->download(f[1].be, &norm[1], norm_dev, sizeof(double));
        f[1].be->free(f[1].be, norm_dev);
        assert_memory_equal(&norm[0], &norm[1], sizeof(double));
        assert_true(k == 1 ? scale == 1.0 : scale < 1.0); /* the cases clip but one */
        for (int j = 0; j < 2; j++) w[j] = get(&f[j], "head.weight");
        assert_memory_equal(w[0], w[1], 4 * sizeof(float));
        for (int j = 0; j < 2; j++) {
            free(w[j]);
            w[j] = get(&f[j], "body.conv.weight");
        }
        assert_memory_equal(w[0], w[1], 4 * 27 * sizeof(float));
        for (int j = 0; j < 2; j++) {
            free(w[j]);
            camo_optim_free(f[j].net, o[j]);
            destroy(&f[j]);
        }
    }
}

/* EMA after one step: decay * w0 + (1 - decay) * w1; swap puts it in the weights */
static void test_ema_update_and_swap(void **state) {
    (void)state;
    fixture f;
    build(&f, NET_TEXT);
    camo_optim *o = make_opt(&f, "sgd", 0, 0.9);
    float *w0 = get(&f, "head.weight");
    fill_grads(&f, 1.0f);
    camo_optim_step(f.net, o, 0.5, 1.0);
    float *w1 = get(&f, "head.weight");
    camo_optim_swap_ema(f.net, o);
    float *e = get(&f, "head.weight");
    for (int i = 0; i < 4; i++) {
        assert_float_equal(w1[i], w0[i] - 0.5f, 1e-6);
        assert_float_equal(e[i], 0.9f * w0[i] + 0.1f * w1[i], 1e-6);
    }
    camo_optim_swap_ema(f.net, o);
    float *back = get(&f, "head.weight");
    assert_memory_equal(back, w1, 4 * sizeof(float));
    free(w0); free(w1); free(e); free(back);
    camo_optim_free(f.net, o);
    destroy(&f);
}

/* loss and output gradient of one network on fixed inputs; ds = deep supervision */
static double run_loss(const char *text, int ds, float *aux_grad, int aux_index) {
    fixture f;
    build(&f, text);
    size_t pix = 2 * 8 * 8;
    float *x = malloc(pix * 3 * sizeof(float)), *t = malloc(pix * sizeof(float));
    assert_true(x && t);
    tu_fill(x, pix * 3, 1, -1, 1);
    for (size_t i = 0; i < pix; i++) t[i] = (i % 3) == 0;
    float *target = f.be->alloc(f.be, pix * sizeof(float)), *loss = f.be->alloc(f.be, sizeof(float));
    f.be->upload(f.be, f.net->input, x, pix * 3 * sizeof(float));
    f.be->upload(f.be, target, t, pix * sizeof(float));
    f.be->zero(f.be, loss, sizeof(float));
    camo_net_forward(f.net, 2, 1);
    camo_net_zero_act_grads(f.net);
    camo_loss_forward_backward(f.net, LOSS_BCE, ds, 2, target, NULL, 255, 2, (double)pix, loss);
    float l = 0;
    f.be->download(f.be, &l, loss, sizeof l);
    if (aux_grad)
        f.be->download(f.be, aux_grad, camo_net_output_grad(f.net, aux_index), pix * sizeof(float));
    f.be->free(f.be, target);
    f.be->free(f.be, loss);
    free(x);
    free(t);
    destroy(&f);
    return l;
}

static void test_deep_supervision_weights(void **state) {
    (void)state;
    size_t pix = 2 * 8 * 8;
    float *g_ds = malloc(pix * sizeof(float)), *g_alone = malloc(pix * sizeof(float));
    assert_true(g_ds && g_alone);
    double main_only = run_loss(NET_TEXT, 0, NULL, 0);
    double with_aux = run_loss(NET_TEXT, 1, g_ds, 1);
    double aux_alone = run_loss(NET_AUX_ONLY, 0, g_alone, 0);
    assert_true(main_only > 0 && aux_alone > 0);
    assert_float_equal(with_aux, main_only + 0.5 * aux_alone, 1e-5);
    for (size_t i = 0; i < pix; i++) assert_float_equal(g_ds[i], 0.5f * g_alone[i], 1e-7);
    free(g_ds);
    free(g_alone);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lr_schedules),
        cmocka_unit_test(test_stage_lr_and_batch),
        cmocka_unit_test(test_no_decay_on_norms_and_biases),
        cmocka_unit_test(test_frozen_norm_and_clip),
        cmocka_unit_test(test_clip_on_device_equals_host),
        cmocka_unit_test(test_ema_update_and_swap),
        cmocka_unit_test(test_deep_supervision_weights),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
