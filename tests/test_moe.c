/* test_moe.c: the mixture-of-experts block (config type `moe`, src/nn/layer_moe.c):
 *   - top-k selection, tie rule and renormalisation, and the balancing loss, on cases
 *     computed by hand;
 *   - the whole block against PyTorch (tools/moe_ref.py: forward, routing, balancing loss,
 *     every gradient), on the CPU and on a GPU backend where one is usable (cuemu in CI),
 *     one case with idle experts;
 *   - finite differences through the network, the balancing loss included;
 *   - config errors; sync-BN with a batch norm inside an expert refused;
 *   - training: the loss goes down, metrics.jsonl reports balance and usage, and cpu:1 and
 *     cpu:3 (sync-BN: global balance statistics; ghost passes) give the same weights and the
 *     same routing. */
#include "test_util.h"

#include <libconfig.h>
#include <unistd.h>

#include "backend/backend.h"
#include "cli/cli.h"
#include "core/common.h"
#include "core/safetensors.h"
#include "nn/checkpoint.h"
#include "nn/layer.h"
#include "nn/moe.h"
#include "nn/net.h"
#include "train/config.h"
#include "train/train.h"

static camo_backend *cpu;

/* ---- hand-computed routing ---- */

static void expect_route(int K, int k, const float *logits, const float *w_exp,
                         const unsigned char *sel_exp) {
    double p[8];
    float w[8];
    unsigned char sel[8];
    camo_moe_route(K, k, logits, p, w, sel);
    for (int e = 0; e < K; e++) {
        assert_int_equal(sel[e], sel_exp[e]);
        assert_true(fabs(w[e] - w_exp[e]) <= 1e-6);
    }
}

static void test_route_by_hand(void **state) {
    (void)state;
    /* p = (1, 2, 3, 4) / 10: experts 3 and 2, weights 4/7 and 3/7 */
    float a[] = {0, logf(2), logf(3), logf(4)};
    expect_route(4, 2, a, (float[]){0, 0, 3.0f / 7, 4.0f / 7}, (unsigned char[]){0, 0, 1, 1});
    /* k = K: the weights are the probabilities themselves */
    expect_route(4, 4, a, (float[]){0.1f, 0.2f, 0.3f, 0.4f}, (unsigned char[]){1, 1, 1, 1});
    /* all equal, 7 experts, top 4: the four lowest indices, 1/4 each */
    float b[7] = {0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f};
    expect_route(7, 4, b, (float[]){.25f, .25f, .25f, .25f, 0, 0, 0},
                 (unsigned char[]){1, 1, 1, 1, 0, 0, 0});
    /* a tie at the cut: experts 1 and 2 equal, one place left -> the lower, 1 */
    float c[] = {3, 2, 2, 0};
    double e3 = exp(3.0), e2 = exp(2.0);
    expect_route(4, 2, c, (float[]){(float)(e3 / (e3 + e2)), (float)(e2 / (e3 + e2)), 0, 0},
                 (unsigned char[]){1, 1, 0, 0});
    expect_route(4, 1, (float[]){1, 2, 2, 0}, (float[]){0, 1, 0, 0}, (unsigned char[]){0, 1, 0, 0});
    /* large logits: softmax without overflow */
    expect_route(3, 2, (float[]){1000, 999, -1000}, (float[]){(float)(1 / (1 + exp(-1.0))),
                 (float)(exp(-1.0) / (1 + exp(-1.0))), 0}, (unsigned char[]){1, 1, 0});
}

static void test_balance_by_hand(void **state) {
    (void)state;
    /* 2 experts, top 1, 2 images both routed to 0 with p = (0.7, 0.3), (0.8, 0.2):
     * f = (1, 0), P = (0.75, 0.25): 2 * 0.75 */
    double c1[] = {2, 0}, p1[] = {1.5, 0.5};
    assert_true(fabs(camo_moe_balance(2, 1, 2, c1, p1) - 1.5) < 1e-12);
    /* uniform: 1 */
    double c2[] = {2, 2, 2, 2}, p2[] = {1, 1, 1, 1};
    assert_true(fabs(camo_moe_balance(4, 2, 4, c2, p2) - 1.0) < 1e-12);
    /* 4 experts, top 2, 1 image with p = (.4, .3, .2, .1) on experts 0, 1:
     * f = (.5, .5, 0, 0), K sum f P = 4 * (.2 + .15) */
    double c3[] = {1, 1, 0, 0}, p3[] = {.4, .3, .2, .1};
    assert_true(fabs(camo_moe_balance(4, 2, 1, c3, p3) - 1.4) < 1e-12);
}

/* ---- against PyTorch (tools/moe_ref.py) ---- */

static float *read_tensor(const camo_st_file *f, const char *name, size_t *numel) {
    const camo_st_tensor *t = camo_st_find(f, name);
    if (!t) fprintf(stderr, "  fixture has no %s\n", name);
    assert_non_null(t);
    float *x = tu_falloc((size_t)t->numel);
    assert_int_equal(camo_st_read_f32(t, x), 0);
    if (numel) *numel = (size_t)t->numel;
    return x;
}

static void nchw_to_nhwc(const float *a, float *b, int N, int C, int H, int W, int to_nhwc) {
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++)
            for (int i = 0; i < H * W; i++) {
                size_t nchw = ((size_t)n * C + c) * H * W + i, nhwc = ((size_t)n * H * W + i) * C + c;
                if (to_nhwc) b[nhwc] = a[nchw];
                else b[nchw] = a[nhwc];
            }
}

static double normwise(const float *x, const float *ref, size_t n) {
    double d = 0, m = 0;
    for (size_t i = 0; i < n; i++) {
        d += ((double)x[i] - ref[i]) * ((double)x[i] - ref[i]);
        m += (double)ref[i] * ref[i];
    }
    return m > 0 ? sqrt(d / m) : sqrt(d);
}

static int router_index(const camo_net *net) {
    for (int i = 0; i < net->n_layers; i++)
        if (net->layers[i].type == CAMO_LAYER_MOE_ROUTER) return i;
    return -1;
}

#define REF_TOL 1e-5

static void check_reference(camo_backend *be, const char *fixture) {
    char path[CAMO_PATH_MAX];
    snprintf(path, sizeof path, "tests/fixtures/moe/%s.safetensors", fixture);
    camo_st_file *f = camo_st_open(path);
    assert_non_null(f);
    int N = atoi(camo_st_meta(f, "batch")), H = atoi(camo_st_meta(f, "height"));
    int W = atoi(camo_st_meta(f, "width"));
    double bw = atof(camo_st_meta(f, "balance_weight"));
    camo_net *net = camo_net_load(camo_st_meta(f, "config"), be, 0);
    if (!net) fprintf(stderr, "%s\n", camo_last_error());
    assert_non_null(net);
    assert_int_equal(camo_net_set_input_size(net, N, H, W), 0);
    int ri = router_index(net);
    assert_int_equal(camo_net_keep_layer(net, ri), 0);
    net->want_input_grad = 1;
    for (int i = 0; i < net->n_params; i++) { /* every parameter from the reference */
        char name[CAMO_NAME_MAX + 48];
        snprintf(name, sizeof name, "param.%s", net->params[i].name);
        float *v = read_tensor(f, name, NULL);
        camo_param_set(net, &net->params[i], v);
        free(v);
    }
    size_t nin, nout;
    float *x = read_tensor(f, "input", &nin), *gout = read_tensor(f, "grad_output", &nout);
    float *tmp = tu_falloc(CAMO_MAX(nin, nout));
    nchw_to_nhwc(x, tmp, N, 3, H, W, 1);
    be->upload(be, net->input, tmp, nin * sizeof(float));
    camo_net_zero_param_grads(net);
    camo_moe_stats_reset(net);
    camo_net_forward(net, N, 1);
    camo_net_zero_act_grads(net);
    int Ho, Wo, Co;
    float *out_dev = camo_net_output(net, 0, &Ho, &Wo, &Co);
    nchw_to_nhwc(gout, tmp, N, Co, Ho, Wo, 1);
    be->upload(be, camo_net_output_grad(net, 0), tmp, nout * sizeof(float));
    camo_moe_set_balance_norm(net, N); /* the objective's balance_weight * L_bal */
    float *out = tu_falloc(nout), *ref = read_tensor(f, "output", NULL);
    be->download(be, tmp, out_dev, nout * sizeof(float));
    nchw_to_nhwc(tmp, out, N, Co, Ho, Wo, 0);
    camo_net_backward(net, N);
    be->sync(be);
    double worst = normwise(out, ref, nout);
    printf("  %s on %s: output %.2g", fixture, be->name, worst);
    assert_true(worst <= REF_TOL);
    /* routing and gate weights */
    size_t nw;
    float *gw_ref = read_tensor(f, "gate_weights", &nw), *gw = tu_falloc(nw);
    be->download(be, gw, net->layers[ri].out, nw * sizeof(float));
    for (size_t i = 0; i < nw; i++) assert_int_equal(gw[i] != 0, gw_ref[i] != 0);
    double e = normwise(gw, gw_ref, nw);
    assert_true(e <= REF_TOL);
    double bal, use[CAMO_MOE_MAX_EXPERTS];
    assert_true(camo_moe_stats(net, 0, &bal, use) > 0);
    assert_true(fabs(bal - atof(camo_st_meta(f, "balance_loss"))) <= 1e-5);
    /* gradients */
    float *din = tu_falloc(nin), *din_ref = read_tensor(f, "dinput", NULL);
    be->download(be, tmp, camo_net_input_grad(net), nin * sizeof(float));
    nchw_to_nhwc(tmp, din, N, 3, H, W, 0);
    e = normwise(din, din_ref, nin);
    worst = fmax(worst, e);
    assert_true(e <= REF_TOL);
    for (int i = 0; i < net->n_params; i++) {
        camo_param *p = &net->params[i];
        char name[CAMO_NAME_MAX + 48];
        snprintf(name, sizeof name, "grad.%s", p->name);
        float *g_ref = read_tensor(f, name, NULL), *g = tu_falloc(p->numel);
        camo_param_grad_get(net, p, g);
        e = normwise(g, g_ref, p->numel);
        if (!(e <= REF_TOL)) fprintf(stderr, "\n  %s: %.3g", name, e);
        assert_true(e <= REF_TOL);
        worst = fmax(worst, e);
        free(g);
        free(g_ref);
    }
    printf(", worst of all (gradients, balance %.6f, bw %g) %.2g\n", bal, bw, worst);
    free(x); free(gout); free(tmp); free(out); free(ref); free(gw); free(gw_ref);
    free(din); free(din_ref);
    camo_net_free(net);
    camo_st_close(f);
}

static void test_reference(void **state) {
    (void)state;
    camo_backend *gpu = NULL;
    if (camo_cuda_device_count() > 0 && !(gpu = camo_backend_cuda_create(0)))
        fprintf(stderr, "  GPU backend: %s\n", camo_last_error());
    for (int b = 0; b < 2; b++) {
        camo_backend *be = b ? gpu : cpu;
        if (!be) continue;
        check_reference(be, "moe_block");
        check_reference(be, "moe_idle");
    }
    if (gpu) gpu->destroy(gpu);
}

/* ---- finite differences through the network (CPU) ---- */

static const char *GC_NET =
    "input_channels = 2; layers = ("
    " {name=\"c\"; type=\"conv\"; filters=4; size=3;},"
    " {name=\"m\"; type=\"moe\"; experts=3; top_k=2; balance_weight=0.7; expert=("
    "   {name=\"a\"; type=\"conv\"; filters=3; size=3; act=\"tanh\";},"
    "   {name=\"b\"; type=\"linear\"; filters=4;},"
    "   {name=\"s\"; type=\"add\"; from=[\"b\", \"input\"];} ); },"
    " {name=\"h\"; type=\"conv\"; filters=2; size=1;} );";

static camo_net *from_text(const char *text, camo_backend *be) {
    config_t cfg;
    config_init(&cfg);
    camo_net *net = NULL;
    if (config_read_string(&cfg, text) == CONFIG_TRUE)
        net = camo_net_from_setting(config_root_setting(&cfg), "test", be, 0);
    else
        fprintf(stderr, "  config: %s line %d\n", config_error_text(&cfg), config_error_line(&cfg));
    config_destroy(&cfg);
    return net;
}

/* f = sum(out * dy) + balance_weight * L_bal: the objective the backward differentiates
 * with norm = n; *route: which experts each image went to */
static double gc_objective(camo_net *net, int n, const float *dy, uint64_t *route) {
    int H, W, C;
    camo_moe_stats_reset(net);
    camo_net_forward(net, n, 1);
    const float *y = camo_net_output(net, 0, &H, &W, &C);
    double f = 0, bal, use[CAMO_MOE_MAX_EXPERTS];
    for (size_t i = 0; i < (size_t)n * H * W * C; i++) f += (double)y[i] * dy[i];
    camo_moe_stats(net, 0, &bal, use);
    const camo_layer *r = &net->layers[router_index(net)];
    *route = 0;
    for (int i = 0; i < n * r->C; i++) *route = *route * 2 + (r->out[i] != 0);
    return f + r->u.moe.balance_weight * bal;
}

static void test_gradcheck(void **state) {
    (void)state;
    camo_net *net = from_text(GC_NET, cpu);
    assert_non_null(net);
    int N = 5, H = 4, W = 3;
    assert_int_equal(camo_net_set_input_size(net, N, H, W), 0);
    assert_int_equal(camo_net_keep_layer(net, router_index(net)), 0);
    camo_param *gw = camo_net_find_param(net, "m.gate.weight");
    assert_non_null(gw);
    assert_int_equal(gw->ndim, 2);
    net->want_input_grad = 1;
    size_t nin = (size_t)N * H * W * 2;
    /* the first seed whose routing uses every expert, so that the check covers each */
    for (uint32_t seed = 1;; seed++) {
        assert_true(seed < 100);
        camo_net_init_weights(net, seed);
        for (size_t i = 0; i < gw->numel; i++) gw->data[i] *= 4; /* decisive routing */
        tu_fill(net->input, nin, seed, -1, 1);
        camo_net_forward(net, N, 1);
        int idle = 0;
        for (int i = 0; i < net->n_layers; i++)
            if (net->layers[i].type == CAMO_LAYER_MOE_DISPATCH) idle += !net->layers[i].routed_rows;
        if (!idle) break;
    }
    int Ho, Wo, Co;
    uint64_t route0;
    camo_net_forward(net, N, 1);
    camo_net_output(net, 0, &Ho, &Wo, &Co);
    size_t nout = (size_t)N * Ho * Wo * Co;
    float *dy = tu_falloc(nout);
    tu_fill(dy, nout, 6, -1, 1);
    gc_objective(net, N, dy, &route0);
    camo_net_zero_param_grads(net);
    camo_net_zero_act_grads(net);
    memcpy(camo_net_output_grad(net, 0), dy, nout * sizeof(float));
    camo_moe_set_balance_norm(net, N);
    camo_net_backward(net, N);
    float *grads = NULL;
    double worst = 0;
    int checked = 0;
    for (int pi = -1; pi < net->n_params; pi++) {
        float *x = pi < 0 ? net->input : net->params[pi].data;
        size_t numel = pi < 0 ? nin : net->params[pi].numel;
        if (pi >= 0 && net->params[pi].kind != CAMO_PARAM_WEIGHT) continue;
        free(grads);
        grads = tu_falloc(numel);
        memcpy(grads, pi < 0 ? camo_net_input_grad(net) : net->params[pi].grad,
               numel * sizeof(float));
        for (size_t k = 0; k < CAMO_MIN(numel, (size_t)6); k++) {
            size_t i = (k * 7919 + 3) % numel;
            float keep = x[i];
            double num = NAN, ana = grads[i];
            /* the step shrinks while it changes the routing (f jumps there) */
            for (double eps = 1e-2 * fmax(1.0, fabs(keep)); eps > 1e-4 && isnan(num); eps /= 4) {
                uint64_t rp, rm;
                float xp = keep + (float)eps, xm = keep - (float)eps;
                x[i] = xp;
                double fp = gc_objective(net, N, dy, &rp);
                x[i] = xm;
                double fm = gc_objective(net, N, dy, &rm);
                x[i] = keep;
                if (rp == route0 && rm == route0) num = (fp - fm) / ((double)xp - xm);
            }
            if (isnan(num)) continue; /* a routing boundary within 1e-4: skipped */
            double err = fabs(num - ana) / fmax(fmax(fabs(num), fabs(ana)), 5e-2);
            if (err > 1e-2)
                fprintf(stderr, "  %s[%zu]: numeric %.6g analytic %.6g\n",
                        pi < 0 ? "input" : net->params[pi].name, i, num, ana);
            worst = fmax(worst, err);
            checked++;
        }
    }
    printf("  gradcheck: %d values, worst relative error %.2g\n", checked, worst);
    assert_true(worst <= 1e-2);
    free(grads);
    free(dy);
    camo_net_free(net);
}

/* The balancing loss's own gradient, alone (dy = 0): its sign pushes probability away from
 * the busiest expert, and without a loss call (norm 0) there is none. */
static void test_balance_gradient_armed(void **state) {
    (void)state;
    camo_net *net = from_text(GC_NET, cpu);
    assert_non_null(net);
    assert_int_equal(camo_net_set_input_size(net, 4, 4, 3), 0);
    camo_net_init_weights(net, 3);
    tu_fill(net->input, 4 * 4 * 3 * 2, 9, -1, 1);
    camo_param *gb = camo_net_find_param(net, "m.gate.bias");
    float g[3];
    for (int armed = 0; armed < 2; armed++) {
        camo_net_forward(net, 4, 1);
        camo_net_zero_param_grads(net);
        camo_net_zero_act_grads(net);
        if (armed) camo_moe_set_balance_norm(net, 4);
        camo_net_backward(net, 4);
        camo_param_grad_get(net, gb, g);
        double s = fabs(g[0]) + fabs(g[1]) + fabs(g[2]);
        if (!armed) assert_true(s == 0);
        else assert_true(s > 0 && fabs(g[0] + g[1] + g[2]) < 1e-6); /* softmax: sums to 0 */
    }
    camo_net_free(net);
}

/* ---- config errors ---- */

static void expect_error(const char *moe_keys, const char *expert, const char *after,
                         const char *msg) {
    char text[2048];
    snprintf(text, sizeof text,
             "layers = ( {name=\"c\"; type=\"conv\"; filters=4; size=3;},"
             " {name=\"m\"; type=\"moe\"; %s expert=( %s ); } %s );", moe_keys, expert, after);
    camo_net *net = from_text(text, cpu);
    if (net || !strstr(camo_last_error(), msg))
        fprintf(stderr, "  expected '%s', got: %s\n", msg, net ? "(no error)" : camo_last_error());
    assert_null(net);
    assert_non_null(strstr(camo_last_error(), msg));
}

static void test_config_errors(void **state) {
    (void)state;
    const char *ok = "{name=\"a\"; type=\"conv\"; filters=4; size=3;}";
    expect_error("experts=8; top_k=2;", ok, "", "experts <= 7");
    expect_error("experts=3; top_k=4;", ok, "", "top_k <= experts");
    expect_error("experts=3; top_k=1; balance_weight=-1.0;", ok, "", "balance_weight >= 0");
    expect_error("experts=3; top_k=1; expertz=1;", ok, "", "unknown key 'expertz'");
    expect_error("experts=3; top_k=1;", "{name=\"a\"; type=\"conv\"; filters=4; size=3; from=\"c\";}",
                 "", "outside its expert");
    expect_error("experts=2; top_k=1;", ok,
                 ", {name=\"z\"; type=\"conv\"; filters=2; size=1; from=\"m.experts.0.a\";}",
                 "inside a mixture-of-experts expert");
    expect_error("experts=2; top_k=1;",
                 "{name=\"n\"; type=\"moe\"; experts=2; top_k=1; expert=(" /* nested */
                 "{name=\"a\"; type=\"conv\"; filters=4; size=3;});}", "", "do not nest");
    /* experts of different widths cannot be summed: not expressible with one list, but
     * "input" inside an expert is its own input, and names are per expert */
    camo_net *net = from_text(
        "layers = ( {name=\"c\"; type=\"conv\"; filters=4; size=3;},"
        " {name=\"m\"; type=\"moe\"; experts=2; top_k=1; expert=("
        "   {name=\"c\"; type=\"conv\"; filters=4; size=3; bn=true;},"
        "   {name=\"s\"; type=\"add\"; from=[\"c\", \"input\"];} ); } );", cpu);
    assert_non_null(net);
    assert_non_null(camo_net_find_param(net, "m.experts.1.c.conv.weight"));
    assert_non_null(camo_net_find_param(net, "m.gate.weight"));
    const camo_layer *add = &net->layers[net->n_layers - 2];
    assert_string_equal(add->name, "m.experts.1.s");
    assert_string_equal(net->layers[add->in[1]].name, "m.experts.1.dispatch");
    assert_int_equal(camo_moe_check_sync_bn(net), -1); /* BN inside an expert */
    assert_non_null(strstr(camo_last_error(), "parallel.sync_bn"));
    camo_net_free(net);
}

/* ---- training ---- */

static char root[CAMO_PATH_MAX], tmp[CAMO_PATH_MAX], data[CAMO_PATH_MAX + 16];

static const char *TRAIN =
    "model = \"%s/tests/fixtures/moe_small.cfg\";\n"
    "seed = 4;\n"
    "data = { root = \"%s\"; img_size = 32; classes = 1; workers = 1;\n"
    "         augment = { hflip = true; }; };\n"
    "train = { epochs = 3; batch = 5; optimizer = \"sgd\"; lr = 0.05; momentum = 0.9;\n"
    "          loss = \"bce\"; threads = 1; warmup_epochs = 0.0; };\n"
    "eval = { every = 0; };\n"
    "parallel = { sync_bn = true; bucket_mb = 0.001; };\n"
    "log = { every = 1000; tensorboard = false; };\n";

static int train(const char *out, const char *devices, const char *more) {
    char path[CAMO_PATH_MAX + 64], o_out[CAMO_PATH_MAX + 128], o_dev[96], o_more[256];
    snprintf(path, sizeof path, "%s/train.cfg", tmp);
    snprintf(o_out, sizeof o_out, "out=%s/%s", tmp, out);
    snprintf(o_dev, sizeof o_dev, "parallel.devices=\"%s\"", devices);
    char *sets[6] = {o_out, o_dev};
    int n = 2;
    if (more) {
        snprintf(o_more, sizeof o_more, "%s", more);
        sets[n++] = o_more;
    }
    camo_config c;
    int rc = camo_config_load(&c, path, NULL, sets, n);
    if (rc) fprintf(stderr, "config: %s\n", camo_last_error());
    assert_int_equal(rc, 0);
    rc = camo_train_run(&c, NULL);
    camo_config_free(&c);
    return rc;
}

/* the "moe" parts of every step line of a run's metrics.jsonl, and the first and last loss */
static char *moe_lines(const char *run, double *first_loss, double *last_loss) {
    char path[CAMO_PATH_MAX + 64], line[4096];
    snprintf(path, sizeof path, "%s/%s/metrics.jsonl", tmp, run);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    size_t cap = 1 << 16, len = 0;
    char *all = calloc(1, cap);
    *first_loss = NAN;
    while (fgets(line, sizeof line, f)) {
        if (!strstr(line, "\"type\":\"step\"")) continue;
        char *l = strstr(line, "\"loss\":"), *m = strstr(line, ",\"moe\":"), *end;
        assert_non_null(m);
        double v = strtod(l + 7, NULL);
        if (isnan(*first_loss)) *first_loss = v;
        *last_loss = v;
        end = strstr(m, "]}]");
        assert_non_null(end);
        len += (size_t)snprintf(all + len, cap - len, "%.*s\n", (int)(end - m + 3), m);
    }
    fclose(f);
    return all;
}

static double ckpt_diff(const char *a, const char *b) {
    char pa[CAMO_PATH_MAX + 64], pb[CAMO_PATH_MAX + 64];
    snprintf(pa, sizeof pa, "%s/%s/last.ckpt", tmp, a);
    snprintf(pb, sizeof pb, "%s/%s/last.ckpt", tmp, b);
    camo_st_file *fa = camo_st_open(pa), *fb = camo_st_open(pb);
    assert_non_null(fa);
    assert_non_null(fb);
    double d = 0, m = 0;
    for (int i = 0; i < camo_st_count(fa); i++) {
        const camo_st_tensor *ta = camo_st_get(fa, i), *tb;
        if (ta->dtype != CAMO_ST_F32 || strncmp(ta->name, "optim.", 6) == 0) continue;
        assert_non_null(tb = camo_st_find(fb, ta->name));
        float *x = tu_falloc((size_t)ta->numel), *y = tu_falloc((size_t)ta->numel);
        camo_st_read_f32(ta, x);
        camo_st_read_f32(tb, y);
        for (int64_t j = 0; j < ta->numel; j++) {
            d += ((double)x[j] - y[j]) * ((double)x[j] - y[j]);
            m += (double)y[j] * y[j];
        }
        free(x);
        free(y);
    }
    camo_st_close(fa);
    camo_st_close(fb);
    return sqrt(d / m);
}

static void test_train_and_replicas(void **state) {
    (void)state;
    /* 22 images in batches of 5: 5 steps an epoch, the last of 2 images leaves one of 3
     * replicas empty (a sync-BN ghost pass through the router) */
    assert_int_equal(train("r1", "cpu:1", NULL), 0);
    assert_int_equal(train("r3", "cpu:3", NULL), 0);
    double l0, l1, m0, m1;
    char *a = moe_lines("r1", &l0, &l1), *b = moe_lines("r3", &m0, &m1);
    printf("  cpu:1 loss %.4f -> %.4f; first step: %.*s\n", l0, l1,
           (int)(strchr(a, '\n') - a), a);
    assert_true(l1 < 0.8 * l0);
    assert_string_equal(a, b); /* the same routing and balance, step by step (6 digits) */
    double e = ckpt_diff("r3", "r1");
    printf("  cpu:3 vs cpu:1 weights: relative error %.2g\n", e);
    assert_true(e <= 1e-5);
    free(a);
    free(b);
    /* without sync-BN each replica balances its own images: routing still the same, and
     * with balance_weight 0 the weights too */
    assert_int_equal(train("s1", "cpu:1", "parallel.sync_bn=false"), 0);
    assert_int_equal(train("s2", "cpu:2", "parallel.sync_bn=false"), 0);
    e = ckpt_diff("s2", "s1");
    printf("  cpu:2 vs cpu:1 without sync-BN (balance_weight 0.01): %.2g\n", e);
}

static int group_setup(void **state) {
    (void)state;
    cpu = camo_backend_cpu_create(1);
    assert_non_null(getcwd(root, sizeof root));
    snprintf(tmp, sizeof tmp, "%s/moe.%d", tu_tmpdir(), (int)getpid());
    snprintf(data, sizeof data, "%s/synth", tmp);
    char *argv[] = {"--out", data, "--train", "22", "--test", "2", "--size", "32", "--seed", "3"};
    if (cli_synth(10, argv) != CAMO_OK) return -1;
    char text[4096], path[CAMO_PATH_MAX + 32];
    snprintf(text, sizeof text, TRAIN, root, data);
    snprintf(path, sizeof path, "%s/train.cfg", tmp);
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    fputs(text, f);
    fclose(f);
    camo_log_set_quiet(1);
    return 0;
}

static int group_teardown(void **state) {
    (void)state;
    cpu->destroy(cpu);
    if (getenv("CAMO_TEST_KEEP")) return 0;
    char cmd[CAMO_PATH_MAX + 16];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    return system(cmd) == 0 ? 0 : -1;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_route_by_hand),
        cmocka_unit_test(test_balance_by_hand),
        cmocka_unit_test(test_reference),
        cmocka_unit_test(test_gradcheck),
        cmocka_unit_test(test_balance_gradient_armed),
        cmocka_unit_test(test_config_errors),
        cmocka_unit_test(test_train_and_replicas),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
