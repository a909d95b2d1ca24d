/* test_gradcheck.c: finite-difference gradient checks of every config layer type, through
 * the network (parsing, expansion, shape inference, forward, backward, accumulation into
 * shared inputs). f = sum(output * dy) for a fixed random dy; a sample of input and
 * parameter elements is perturbed by +-eps and the central difference compared with the
 * analytic gradient. */
#include "test_util.h"

#include <libconfig.h>

#include "backend/backend.h"
#include "core/common.h"
#include "nn/net.h"
#include "nn/layer.h"

typedef struct { const char *name; int N, H, W; const char *layers; } gc_case;

/* Each case starts with a conv so parameters upstream of the tested layer get gradients too. */
static const gc_case cases[] = {
    {"conv_stride_pad", 2, 9, 7, "{name=\"c\"; type=\"conv\"; filters=4; size=3; stride=2;}"},
    {"conv_dilation", 1, 9, 8, "{name=\"c\"; type=\"conv\"; filters=3; size=3; dilation=2;}"},
    {"conv_groups", 2, 6, 5, "{name=\"a\"; type=\"conv\"; filters=4; size=1;},"
                             "{name=\"c\"; type=\"conv\"; filters=6; size=3; groups=2;}"},
    {"conv_depthwise", 2, 7, 6, "{name=\"a\"; type=\"conv\"; filters=4; size=1;},"
                                "{name=\"c\"; type=\"conv\"; filters=4; size=3; groups=4; stride=2;}"},
    {"conv_dil_groups_stride", 2, 9, 7, "{name=\"a\"; type=\"conv\"; filters=6; size=1;},"
                                        "{name=\"c\"; type=\"conv\"; filters=9; size=3; stride=2;"
                                        " dilation=2; groups=3;}"},
    {"conv_5x5_even", 1, 11, 8, "{name=\"c\"; type=\"conv\"; filters=4; size=5; stride=3; pad=1;},"
                                "{name=\"d\"; type=\"conv\"; filters=3; size=2; pad=0; from=\"input\";}"},
    {"conv_1x1_nobias", 2, 5, 5, "{name=\"c\"; type=\"conv\"; filters=5; size=1; bias=false;}"},
    {"conv_bn_silu", 2, 6, 5, "{name=\"c\"; type=\"conv\"; filters=4; size=3; bn=true; act=\"silu\";}"},
    {"conv_gelu", 2, 6, 5, "{name=\"c\"; type=\"conv\"; filters=4; size=3; act=\"gelu\";}"},
    {"conv_tanh_sigmoid", 1, 6, 5, "{name=\"c\"; type=\"conv\"; filters=4; size=3; act=\"tanh\";},"
                                   "{name=\"s\"; type=\"sigmoid\";}"},
    {"leaky_relu", 2, 5, 4, "{name=\"c\"; type=\"conv\"; filters=3; size=3;},"
                            "{name=\"l\"; type=\"leaky_relu\"; slope=0.2;}"},
    {"relu", 2, 5, 4, "{name=\"c\"; type=\"conv\"; filters=3; size=3;}, {name=\"r\"; type=\"relu\";}"},
    {"batchnorm", 3, 4, 5, "{name=\"c\"; type=\"conv\"; filters=3; size=3;}, {name=\"bn\"; type=\"batchnorm\";}"},
    {"layernorm", 2, 4, 5, "{name=\"c\"; type=\"conv\"; filters=5; size=3;}, {name=\"ln\"; type=\"layernorm\";}"},
    {"maxpool_pad", 2, 7, 6, "{name=\"c\"; type=\"conv\"; filters=3; size=3;},"
                             "{name=\"p\"; type=\"maxpool\"; size=3; stride=2; pad=1;}"},
    {"avgpool", 2, 7, 6, "{name=\"c\"; type=\"conv\"; filters=3; size=3;},"
                         "{name=\"p\"; type=\"avgpool\"; size=3; stride=2; pad=1; count_include_pad=false;}"},
    {"adaptive_avgpool", 2, 7, 5, "{name=\"c\"; type=\"conv\"; filters=3; size=3;},"
                                  "{name=\"p\"; type=\"adaptive_avgpool\"; size=[3, 2];}"},
    {"resize_scale", 2, 5, 4, "{name=\"c\"; type=\"conv\"; filters=3; size=3;}, {name=\"r\"; type=\"resize\"; scale=2.0;}"},
    {"resize_size_odd", 2, 9, 7, "{name=\"c\"; type=\"conv\"; filters=3; size=3;},"
                                 "{name=\"r\"; type=\"resize\"; size=[5, 11];}"},
    {"resize_scale_down", 1, 9, 7, "{name=\"c\"; type=\"conv\"; filters=2; size=3;},"
                                   "{name=\"r\"; type=\"resize\"; scale=0.5;}"},
    {"batchnorm_eps_momentum", 2, 5, 3, "{name=\"c\"; type=\"conv\"; filters=3; size=3;},"
                                        "{name=\"bn\"; type=\"batchnorm\"; eps=1e-3; momentum=0.3;}"},
    {"resize_down_ac", 1, 9, 7, "{name=\"c\"; type=\"conv\"; filters=3; size=3;},"
                                "{name=\"r\"; type=\"resize\"; size=[4, 3]; align_corners=true;}"},
    {"concat_like", 2, 8, 6, "{name=\"c\"; type=\"conv\"; filters=3; size=3;},"
                             "{name=\"d\"; type=\"conv\"; filters=2; size=3; stride=2;},"
                             "{name=\"u\"; type=\"resize\"; like=\"c\";},"
                             "{name=\"k\"; type=\"concat\"; from=[\"u\", \"c\"];}"},
    {"add_shared_input", 2, 5, 5, "{name=\"c\"; type=\"conv\"; filters=3; size=3;},"
                                  "{name=\"d\"; type=\"conv\"; filters=3; size=3;},"
                                  "{name=\"s\"; type=\"add\"; from=[\"c\", \"d\", \"c\"];}"},
    {"mul_same", 2, 5, 4, "{name=\"c\"; type=\"conv\"; filters=3; size=3;},"
                          "{name=\"d\"; type=\"conv\"; filters=3; size=3; from=\"input\";},"
                          "{name=\"m\"; type=\"mul\"; from=[\"c\", \"d\"];}"},
    {"mul_spatial_map", 2, 5, 4, "{name=\"c\"; type=\"conv\"; filters=3; size=3;},"
                                 "{name=\"a\"; type=\"conv\"; filters=1; size=3; act=\"sigmoid\";},"
                                 "{name=\"m\"; type=\"mul\"; from=[\"c\", \"a\"];}"},
    {"mul_channel_vector", 2, 5, 4, "{name=\"c\"; type=\"conv\"; filters=3; size=3;},"
                                    "{name=\"g\"; type=\"adaptive_avgpool\"; size=1;},"
                                    "{name=\"m\"; type=\"mul\"; from=[\"c\", \"g\"];}"},
    {"softmax", 2, 4, 4, "{name=\"c\"; type=\"conv\"; filters=4; size=3;}, {name=\"s\"; type=\"softmax\";}"},
    {"resblock_downsample", 2, 8, 6, "{name=\"b\"; type=\"resblock\"; filters=4; stride=2;}"},
    {"resblock_identity", 2, 6, 5, "{name=\"a\"; type=\"conv\"; filters=4; size=1;},"
                                   "{name=\"b\"; type=\"resblock\"; filters=4;}"},
    /* transformer layers (layer_attention.c, layer_residual.c) */
    {"linear", 2, 5, 4,
     "{name=\"c\"; type=\"conv\"; filters=4; size=3;},"
     "{name=\"l\"; type=\"linear\"; filters=5;},"
     "{name=\"m\"; type=\"linear\"; filters=3; bias=false;}"},
    {"attention_sr", 2, 6, 4,
     "{name=\"c\"; type=\"conv\"; filters=6; size=3;},"
     "{name=\"r\"; type=\"conv\"; filters=6; size=2; stride=2; pad=0;},"
     "{name=\"q\"; type=\"linear\"; filters=6; from=\"c\";},"
     "{name=\"k\"; type=\"linear\"; filters=6; from=\"r\";},"
     "{name=\"v\"; type=\"linear\"; filters=6; from=\"r\";},"
     "{name=\"a\"; type=\"attention\"; heads=2; from=[\"q\", \"k\", \"v\"];}"},
    {"attention_shared_input", 1, 4, 5,
     "{name=\"c\"; type=\"conv\"; filters=4; size=3;},"
     "{name=\"a\"; type=\"attention\"; heads=1; from=[\"c\", \"c\", \"c\"];}"},
    {"xca_fused_qkv", 2, 5, 4,
     "{name=\"c\"; type=\"conv\"; filters=4; size=3;},"
     "{name=\"x.qkv\"; type=\"linear\"; filters=12;},"
     "{name=\"x\"; type=\"xca\"; heads=2;}"},
    {"xca_three_inputs", 2, 4, 4,
     "{name=\"c\"; type=\"conv\"; filters=6; size=3;},"
     "{name=\"q\"; type=\"linear\"; filters=6;},"
     "{name=\"k\"; type=\"linear\"; filters=6; from=\"c\";},"
     "{name=\"v\"; type=\"conv\"; filters=6; size=1; from=\"c\";},"
     "{name=\"x\"; type=\"xca\"; heads=3; from=[\"q\", \"k\", \"v\"];}"},
    {"layer_scale", 2, 5, 4,
     "{name=\"c\"; type=\"conv\"; filters=4; size=3;},"
     "{name=\"c.gamma\"; type=\"layer_scale\";}"},
    {"drop_path_residual", 4, 4, 4,
     "{name=\"c\"; type=\"conv\"; filters=3; size=3;},"
     "{name=\"b\"; type=\"conv\"; filters=3; size=1;},"
     "{name=\"d\"; type=\"drop_path\"; p=0.5;},"
     "{name=\"s\"; type=\"add\"; from=[\"c\", \"d\"];}"},
};

static camo_backend *be;

static camo_net *build(const gc_case *gc) {
    char text[4096];
    snprintf(text, sizeof text, "input_channels = 3; layers = ( %s );", gc->layers);
    config_t cfg;
    config_init(&cfg);
    camo_net *net = NULL;
    if (config_read_string(&cfg, text))
        net = camo_net_from_setting(config_root_setting(&cfg), gc->name, be, 0);
    config_destroy(&cfg);
    if (!net) fprintf(stderr, "  %s: %s\n", gc->name, camo_last_error());
    return net;
}

/* f = sum(out * dy) in double after a training-mode forward */
static double objective(camo_net *net, int n, const float *dy) {
    int H, W, C;
    camo_net_forward(net, n, 1);
    const float *y = camo_net_output(net, 0, &H, &W, &C);
    double f = 0;
    for (size_t i = 0; i < (size_t)n * H * W * C; i++) f += (double)y[i] * dy[i];
    return f;
}

/* A hash of which side of every kink the last forward was on: the sign of each ReLU /
 * leaky-ReLU input and each max-pool argmax. A central difference whose two points differ
 * here straddles a kink, where f is not differentiable and the quotient is meaningless
 * (a 10-20% error on resblocks with eps = 1e-2, where one BN-normalised value sat 1e-3 from
 * ReLU's kink). */
static uint64_t kink_state(camo_net *net, int n) {
    uint64_t h = 1469598103934665603ull;
    for (int i = 0; i < net->n_layers; i++) {
        camo_layer *l = &net->layers[i];
        size_t m = (size_t)n * l->H * l->W * l->C;
        if (l->type == CAMO_LAYER_ACTIVATION &&
            (l->u.act.act == CAMO_ACT_RELU || l->u.act.act == CAMO_ACT_LEAKY_RELU)) {
            const float *x = layer_input(net, l, 0);
            for (size_t j = 0; j < m; j++) h = (h ^ (x[j] > 0)) * 1099511628211ull;
        } else if (l->type == CAMO_LAYER_POOL && l->u.pool.d.type == CAMO_POOL_MAX) {
            for (size_t j = 0; j < m; j++)
                h = (h ^ (uint32_t)l->u.pool.argmax[j]) * 1099511628211ull;
        }
    }
    return h;
}

/* Central difference of f at x[i]. The step starts at 1e-2 (relative for |x| > 1) and is
 * divided by 4 while the two points fall on different sides of a kink; returns 0 and
 * leaves *num unset when no step down to ~1e-4 avoids it (the sample is skipped). */
static int numeric_grad(camo_net *net, int n, const float *dy, float *x, size_t i,
                        double *num) {
    float keep = x[i];
    objective(net, n, dy);
    uint64_t base = kink_state(net, n);
    for (double eps = 1e-2 * fmax(1.0, fabs(keep)); eps > 1e-4; eps /= 4) {
        float xp = keep + (float)eps, xm = keep - (float)eps;
        x[i] = xp;
        double fp = objective(net, n, dy);
        uint64_t kp = kink_state(net, n);
        x[i] = xm;
        double fm = objective(net, n, dy);
        uint64_t km = kink_state(net, n);
        x[i] = keep;
        if (kp == base && km == base) {
            *num = (fp - fm) / ((double)xp - (double)xm);
            return 1;
        }
    }
    return 0;
}

/* Compares d f / d x[i] at `count` spread indices; returns the worst relative error.
 * *checked counts the samples compared (kink straddles are skipped). */
static double check_tensor(camo_net *net, int n, const float *dy, float *x, const float *grad,
                           size_t numel, const char *what, int *checked) {
    double worst = 0;
    size_t count = numel < 12 ? numel : 12;
    for (size_t k = 0; k < count; k++) {
        size_t i = (k * 7919 + 3) % numel;
        double num;
        if (!numeric_grad(net, n, dy, x, i, &num)) continue;
        (*checked)++;
        double ana = grad[i];
        double err = fabs(num - ana) / fmax(fmax(fabs(num), fabs(ana)), 5e-2);
        if (err > worst) worst = err;
        if (err > 3e-2) fprintf(stderr, "  %s[%zu]: numeric %.6g analytic %.6g\n", what, i, num, ana);
    }
    return worst;
}

static void run_case(const gc_case *gc) {
    camo_net *net = build(gc);
    assert_non_null(net);
    net->want_input_grad = 1;
    assert_int_equal(camo_net_set_input_size(net, gc->N, gc->H, gc->W), 0);
    camo_net_init_weights(net, 7);
    /* non-trivial norm parameters so their gradients are exercised */
    for (int i = 0; i < net->n_params; i++) {
        camo_param *p = &net->params[i];
        if (p->kind == CAMO_PARAM_WEIGHT && p->ndim == 1)
            tu_fill(p->data, p->numel, 100 + i, 0.5f, 1.5f);
    }
    size_t nin = (size_t)gc->N * gc->H * gc->W * 3;
    tu_fill(net->input, nin, 11, -1, 1);
    int H, W, C;
    camo_net_forward(net, gc->N, 1);
    camo_net_output(net, 0, &H, &W, &C);
    size_t nout = (size_t)gc->N * H * W * C;
    float *dy = malloc(nout * sizeof(float));
    tu_fill(dy, nout, 13, -1, 1);
    camo_net_zero_act_grads(net);
    camo_net_zero_param_grads(net);
    memcpy(camo_net_output_grad(net, 0), dy, nout * sizeof(float));
    camo_net_backward(net, gc->N);
    float *din = malloc(nin * sizeof(float));
    memcpy(din, camo_net_input_grad(net), nin * sizeof(float));
    int checked = 0, total = (int)(nin < 12 ? nin : 12);
    double worst = check_tensor(net, gc->N, dy, net->input, din, nin, "input", &checked);
    for (int i = 0; i < net->n_params; i++) {
        camo_param *p = &net->params[i];
        if (p->kind != CAMO_PARAM_WEIGHT) continue;
        float *g = malloc(p->numel * sizeof(float));
        memcpy(g, p->grad, p->numel * sizeof(float));
        worst = fmax(worst, check_tensor(net, gc->N, dy, p->data, g, p->numel, p->name,
                                         &checked));
        total += (int)(p->numel < 12 ? p->numel : 12);
        free(g);
    }
    if (worst > 3e-2) fprintf(stderr, "  case %s: worst relative error %.3g\n", gc->name, worst);
    assert_true(worst <= 3e-2);
    /* skips are rare: a check that skipped most samples would prove little */
    if (checked < total * 9 / 10)
        fprintf(stderr, "  case %s: only %d of %d samples away from kinks\n", gc->name,
                checked, total);
    assert_true(checked >= total * 9 / 10);
    free(dy);
    free(din);
    camo_net_free(net);
}

static void test_case(void **state) { run_case((const gc_case *)*state); }

int main(int argc, char **argv) {
    (void)argc;
    camo_cpu_env_reexec(argv); /* passive OpenMP waits: tests share 2 busy cores */
    be = camo_backend_cpu_create(1);
    size_t n = sizeof cases / sizeof cases[0];
    struct CMUnitTest *tests = calloc(n, sizeof *tests);
    for (size_t i = 0; i < n; i++) {
        tests[i].name = cases[i].name;
        tests[i].test_func = test_case;
        tests[i].initial_state = (void *)&cases[i];
    }
    int rc = _cmocka_run_group_tests("gradcheck", tests, n, NULL, NULL);
    free(tests);
    be->destroy(be);
    return rc;
}
