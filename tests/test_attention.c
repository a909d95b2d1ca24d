/* test_attention.c: the transformer layer types (linear, attention, xca, layer_scale,
 * drop_path) against the reference implementations themselves: every fixture of
 * tests/fixtures/attention/ (tools/attention_ref.py: transformers' SegformerLayer, timm's
 * CrossCovarianceAttn, ConvBlock, Mlp and drop_path, run in float64) through the C network of
 * the same file: outputs, input gradient, every parameter gradient, drop_path's decisions.
 * Parameters are loaded from the fixture's state dict (param.NAME, PyTorch shapes) through
 * camo_net_load_pretrained, and a checkpoint written afterwards must hold them bit for bit in
 * the same shapes. Error per tensor: max|a-b| / max|b| <= 1e-4 (docs/models.md "Reference
 * tests"; a parameter gradient's denominator at least the fixture's grad_floor), or
 * the fixture's `tol.<tensor>` where float32 PyTorch itself is further off (a gradient that
 * is 0 in exact arithmetic).
 * Then drop_path's randomness contract (the same decisions for any split of a batch into
 * replica slices, for a resumed step; new ones each step; the identity in evaluation), the
 * layers' parameter shapes and weight-decay flags, and their config errors. */
#include <dirent.h>
#include <unistd.h>

#include <libconfig.h>

#include "test_util.h"

#include "backend/backend.h"
#include "backend/cuda.h"
#include "core/common.h"
#include "core/safetensors.h"
#include "nn/checkpoint.h"
#include "nn/layer.h"
#include "nn/net.h"
#include "nn/pretrained.h"

#define FIXTURE_DIR "tests/fixtures/attention"
#define TOL 1e-4

static camo_backend *be;  /* the backend of the test running: the CPU, or a GPU's */
static camo_backend *cpu, *gpu;

static camo_net *net_from_text(const char *text, const char *source) {
    config_t cfg;
    config_init(&cfg);
    camo_net *net = NULL;
    camo_clear_error();
    if (config_read_string(&cfg, text))
        net = camo_net_from_setting(config_root_setting(&cfg), source, be, 0);
    else
        fprintf(stderr, "  %s: line %d: %s\n", source, config_error_line(&cfg),
                config_error_text(&cfg));
    config_destroy(&cfg);
    return net;
}

/* ---- fixtures ---- */

typedef struct {
    const char *name;
    camo_st_file *f;
    double floor_;                   /* least denominator of a parameter gradient's error */
    double worst_ratio, worst_err;   /* the worst error against its bound */
    double strict_err;               /* the worst of those held to 1e-4 */
    char worst[160], strict[160];
    int failures;
} fx_ctx;

static const char *meta(fx_ctx *c, const char *key) {
    const char *v = camo_st_meta(c->f, key);
    if (!v) fail_msg("%s: no metadata '%s'", c->name, key);
    return v;
}

/* The fixture tensor `name` with n values, read into a new buffer (NULL + failure) */
static float *fx_tensor(fx_ctx *c, const char *name, size_t n) {
    const camo_st_tensor *t = camo_st_find(c->f, name);
    if (!t || (size_t)t->numel != n) {
        fprintf(stderr, "  %s: tensor '%s' %s\n", c->name, name,
                t ? "has another size than the net's" : "missing");
        c->failures++;
        return NULL;
    }
    float *b = malloc(n * sizeof(float) + 4);
    assert_int_equal(camo_st_read_f32(t, b), 0);
    return b;
}

static void compare(fx_ctx *c, const char *name, const float *got, size_t n, int is_grad) {
    float *want = fx_tensor(c, name, n);
    if (!want) return;
    double d = 0, m = is_grad ? c->floor_ : 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)got[i] - want[i]);
        if (!(e <= d)) d = e; /* NaN is the worst */
        m = fmax(m, fabs((double)want[i]));
    }
    double err = m > 0 ? d / m : d, tol = TOL;
    char key[256];
    snprintf(key, sizeof key, "tol.%s", name);
    if (camo_st_meta(c->f, key)) tol = fmax(tol, atof(camo_st_meta(c->f, key)));
    if (!(err <= tol)) {
        fprintf(stderr, "  %s: %s: normwise error %.3g > %.3g\n", c->name, name, err, tol);
        c->failures++;
    }
    if (tol == TOL && !(err <= c->strict_err)) {
        c->strict_err = err;
        snprintf(c->strict, sizeof c->strict, "%s", name);
    }
    if (!(err / tol <= c->worst_ratio)) {
        c->worst_ratio = err / tol;
        c->worst_err = err;
        snprintf(c->worst, sizeof c->worst, "%s", name);
    }
    free(want);
}

static void to_layout(float *dst, const float *src, int N, int H, int W, int C, int to_nchw) {
    for (int n = 0; n < N; n++)
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++)
                for (int ch = 0; ch < C; ch++) {
                    size_t nchw = (((size_t)n * C + ch) * H + y) * W + x;
                    size_t nhwc = (((size_t)n * H + y) * W + x) * C + ch;
                    if (to_nchw) dst[nchw] = src[nhwc];
                    else dst[nhwc] = src[nchw];
                }
}

/* Parameters from the fixture's state dict (prefix "param."), strictly: every one */
static void fx_load_params(fx_ctx *c, camo_net *net, const char *path) {
    camo_pretrained_report rep;
    int rc = camo_net_load_pretrained(net, path, "param.", 1, &rep);
    if (rc) fprintf(stderr, "  %s: %s\n", c->name, camo_last_error());
    assert_int_equal(rc, 0);
    assert_int_equal(rep.matched, rep.network_tensors);
    assert_int_equal(rep.n_missing + rep.n_unexpected, 0);
}

static void fx_forward_outputs(fx_ctx *c, camo_net *net, int N) {
    for (int o = 0; o < net->n_outputs; o++) {
        int H, W, C;
        float *dev = camo_net_output(net, o, &H, &W, &C);
        size_t n = (size_t)N * H * W * C;
        float *a = malloc(n * 4), *b = malloc(n * 4);
        be->download(be, a, dev, n * 4);
        to_layout(b, a, N, H, W, C, 1);
        char name[CAMO_NAME_MAX + 16];
        snprintf(name, sizeof name, "output.%s", net->outputs[o].name);
        compare(c, name, b, n, 0);
        snprintf(name, sizeof name, "grad_output.%s", net->outputs[o].name);
        float *g = fx_tensor(c, name, n);
        assert_non_null(g);
        to_layout(a, g, N, H, W, C, 0);
        be->upload(be, camo_net_output_grad(net, o), a, n * 4);
        free(a), free(b), free(g);
    }
}

static void fx_gradients(fx_ctx *c, camo_net *net, int N, int H, int W) {
    size_t nin = (size_t)N * H * W * net->input_channels;
    float *a = malloc(nin * 4), *b = malloc(nin * 4);
    be->download(be, a, camo_net_input_grad(net), nin * 4);
    to_layout(b, a, N, H, W, net->input_channels, 1);
    compare(c, "dinput", b, nin, 0);
    free(a), free(b);
    for (int i = 0; i < net->n_params; i++) {
        camo_param *p = &net->params[i];
        if (p->kind != CAMO_PARAM_WEIGHT) continue;
        float *g = malloc(p->numel * 4);
        camo_param_grad_get(net, p, g);
        char name[sizeof p->name + 8];
        snprintf(name, sizeof name, "grad.%s", p->name);
        compare(c, name, g, p->numel, 1);
        free(g);
    }
}

/* drop_path's decisions, layer by layer in forward order as the reference drew them */
static void fx_drop_decisions(fx_ctx *c, camo_net *net, int N) {
    char got[256] = "";
    size_t k = 0;
    for (int i = 0; i < net->n_layers; i++) {
        const camo_layer *l = &net->layers[i];
        if (l->type != CAMO_LAYER_DROP_PATH) continue;
        for (int n = 0; n < N && k + 1 < sizeof got; n++) got[k++] = l->u.drop.keep[n] ? '1' : '0';
    }
    got[k] = 0;
    if (strcmp(got, meta(c, "drop_decisions"))) {
        fprintf(stderr, "  %s: drop_path kept %s, the reference %s\n", c->name, got,
                meta(c, "drop_decisions"));
        c->failures++;
    }
}

/* A checkpoint of the net holds every parameter in the fixture's (PyTorch's) shape, bit for
 * bit (the 2-D linear weights and XCA's (heads, 1, 1) temperature included). */
static void fx_checkpoint(fx_ctx *c, camo_net *net, const char *cfg) {
    char path[512];
    snprintf(path, sizeof path, "%s/attention_%d_%s.ckpt", tu_tmpdir(), (int)getpid(), c->name);
    camo_train_state st = {0};
    assert_int_equal(camo_ckpt_save(path, net, NULL, &st, "", cfg, 0), 0);
    camo_st_file *ck = camo_st_open(path);
    assert_non_null(ck);
    for (int i = 0; i < camo_st_count(c->f); i++) {
        const camo_st_tensor *t = camo_st_get(c->f, i), *u;
        if (strncmp(t->name, "param.", 6)) continue;
        u = camo_st_find(ck, t->name + 6);
        int same = u && u->ndim == t->ndim && u->nbytes == t->nbytes &&
                   !memcmp(u->shape, t->shape, (size_t)t->ndim * sizeof(int64_t)) &&
                   !memcmp(u->data, t->data, t->nbytes);
        if (!same) {
            fprintf(stderr, "  %s: the checkpoint's '%s' differs from the state dict's\n",
                    c->name, t->name + 6);
            c->failures++;
        }
    }
    camo_st_close(ck);
    unlink(path);
}

typedef struct { char path[300], name[320]; int on_gpu; } fx_case;

static void run_fixture(void **state) {
    const fx_case *fc = *state;
    const char *path = fc->path;
    be = fc->on_gpu ? gpu : cpu;
    fx_ctx c = {.name = fc->name};
    c.f = camo_st_open(path);
    if (!c.f) fprintf(stderr, "  %s\n", camo_last_error());
    assert_non_null(c.f);
    const char *cfg = meta(&c, "config");
    int N = atoi(meta(&c, "batch")), H = atoi(meta(&c, "height")), W = atoi(meta(&c, "width"));
    c.floor_ = atof(meta(&c, "grad_floor"));
    camo_net *net = net_from_text(cfg, path);
    if (!net) fprintf(stderr, "  %s: %s\n", path, camo_last_error());
    assert_non_null(net);
    net->want_input_grad = 1;
    assert_int_equal(camo_net_set_input_size(net, N, H, W), 0);
    fx_load_params(&c, net, path);
    size_t nin = (size_t)N * 3 * H * W;
    float *x = fx_tensor(&c, "input", nin), *xh = malloc(nin * 4);
    assert_non_null(x);
    to_layout(xh, x, N, H, W, 3, 0);
    be->upload(be, net->input, xh, nin * 4);
    net->rng_seed = strtoull(meta(&c, "rng_seed"), NULL, 10);
    net->rng_step = strtoll(meta(&c, "rng_step"), NULL, 10);
    net->rng_sample0 = strtoll(meta(&c, "rng_sample0"), NULL, 10);
    camo_net_forward(net, N, atoi(meta(&c, "training")));
    camo_net_zero_act_grads(net);
    camo_net_zero_param_grads(net);
    fx_forward_outputs(&c, net, N);
    fx_drop_decisions(&c, net, N);
    camo_net_backward(net, N);
    fx_gradients(&c, net, N, H, W);
    fx_checkpoint(&c, net, cfg);
    assert_int_equal(camo_cuda_backend_status(be), 0);
    printf("  %s: worst at 1e-4: %s %.3g; worst against its bound: %s %.3g (%.2g of it); "
           "float32 PyTorch %s\n", c.name, c.strict, c.strict_err, c.worst, c.worst_err,
           c.worst_ratio, meta(&c, "torch_f32_err"));
    free(x), free(xh);
    camo_net_free(net);
    camo_st_close(c.f);
    assert_int_equal(c.failures, 0);
}

/* ---- drop_path's randomness ---- */

static const char *DROP_NET =
    "input_channels = 3; layers = ("
    "{ name = \"c\"; type = \"conv\"; filters = 2; size = 1; },"
    "{ name = \"blk.drop_path\"; type = \"drop_path\"; p = 0.5; });";

/* which of n images the forward at (seed, step, sample0) keeps, as a bit mask; out (host)
 * gets the output when not NULL */
static unsigned drop_mask(camo_net *net, int n, uint64_t seed, int64_t step, int64_t sample0,
                          int training, float *out) {
    net->rng_seed = seed, net->rng_step = step, net->rng_sample0 = sample0;
    camo_net_forward(net, n, training);
    const camo_layer *l = &net->layers[net->n_layers - 1];
    if (out) be->download(be, out, l->out, (size_t)n * l->H * l->W * l->C * 4);
    unsigned m = 0;
    for (int i = 0; i < n; i++) m |= (l->u.drop.keep[i] != 0.0f) << i;
    return m;
}

/* Replica slices (8 images as 8, 4+4, 3+3+2, 1 x 8) draw the same decisions and compute the
 * same output bits: an image's draw depends on its index in the step, not on the replica */
static void test_drop_path_replicas(void **state) {
    (void)state;
    be = cpu;
    camo_net *net = net_from_text(DROP_NET, "drop_net");
    assert_non_null(net);
    int S = 5;
    assert_int_equal(camo_net_set_input_size(net, 8, S, S), 0);
    camo_net_init_weights(net, 3);
    size_t img = (size_t)S * S * 2;
    float *x = malloc(8 * S * S * 3 * 4), *whole = malloc(8 * img * 4);
    float *part = malloc(8 * img * 4);
    tu_fill(x, (size_t)8 * S * S * 3, 5, -1, 1);
    be->upload(be, net->input, x, (size_t)8 * S * S * 3 * 4);
    unsigned all = drop_mask(net, 8, 77, 11, 0, 1, whole);
    assert_true(all != 0 && all != 0xff);
    const int splits[][4] = {{4, 4, 0, 0}, {3, 3, 2, 0}, {1, 1, 1, 1}};
    for (int s = 0; s < 3; s++) {
        int lo = 0;
        for (int k = 0; k < 4 && splits[s][k]; k++) {
            int n = splits[s][k];
            be->upload(be, net->input, x + (size_t)lo * S * S * 3, (size_t)n * S * S * 3 * 4);
            unsigned m = drop_mask(net, n, 77, 11, lo, 1, part);
            assert_int_equal(m, (all >> lo) & ((1u << n) - 1));
            assert_memory_equal(part, whole + (size_t)lo * img, (size_t)n * img * 4);
            lo += n;
        }
    }
    free(x), free(whole), free(part);
    camo_net_free(net);
}

/* A resumed step (same seed and step) draws the same; each step draws anew, about half kept
 * at p = 0.5; another seed draws otherwise; evaluation passes the input through. */
static void test_drop_path_steps(void **state) {
    (void)state;
    be = cpu;
    camo_net *net = net_from_text(DROP_NET, "drop_net");
    assert_non_null(net);
    int N = 4, S = 3, kept = 0, changes = 0, differ = 0;
    assert_int_equal(camo_net_set_input_size(net, N, S, S), 0);
    assert_int_equal(camo_net_keep_layer(net, 0), 0); /* read below, after drop_path ran */
    camo_net_init_weights(net, 3);
    unsigned prev = 0;
    for (int64_t step = 0; step < 200; step++) {
        unsigned m = drop_mask(net, N, 42, step, 0, 1, NULL);
        assert_int_equal(m, drop_mask(net, N, 42, step, 0, 1, NULL));
        differ += m != drop_mask(net, N, 43, step, 0, 1, NULL);
        kept += __builtin_popcount(m);
        changes += step > 0 && m != prev;
        prev = m;
    }
    printf("  drop_path p = 0.5: %d of 800 kept; decisions changed at %d of 199 steps; "
           "another seed differed at %d of 200\n", kept, changes, differ);
    assert_true(kept > 330 && kept < 470); /* 400 +- 4.5 sigma */
    assert_true(changes > 150 && differ > 150);
    /* evaluation: the identity, and the gradient passes through */
    size_t n = (size_t)N * S * S * 2;
    float *a = malloc(n * 4), *b = malloc(n * 4);
    assert_int_equal(drop_mask(net, N, 42, 0, 0, 0, a), (1u << N) - 1);
    be->download(be, b, net->layers[0].out, n * 4);
    assert_memory_equal(a, b, n * 4);
    camo_net_zero_act_grads(net);
    camo_net_zero_param_grads(net);
    tu_fill(a, n, 9, -1, 1);
    be->upload(be, net->layers[1].dout, a, n * 4);
    camo_net_backward(net, N);
    be->download(be, b, net->layers[0].dout, n * 4);
    assert_memory_equal(a, b, n * 4);
    free(a), free(b);
    camo_net_free(net);
}

/* ---- parameters and config errors ---- */

static void test_param_shapes(void **state) {
    (void)state;
    be = cpu;
    camo_net *net = net_from_text(
        "input_channels = 3; layers = ("
        "{ name = \"q\"; type = \"linear\"; filters = 12; },"
        "{ name = \"x\"; type = \"xca\"; heads = 2; },"
        "{ name = \"blk.gamma\"; type = \"layer_scale\"; },"
        "{ name = \"blk.gamma2\"; type = \"layer_scale\"; init = 1e-6; });", "shapes");
    assert_non_null(net);
    camo_param *w = camo_net_find_param(net, "q.weight"), *b = camo_net_find_param(net, "q.bias");
    camo_param *t = camo_net_find_param(net, "x.temperature");
    camo_param *g = camo_net_find_param(net, "blk.gamma");
    assert_true(w && b && t && g);
    assert_int_equal(w->ndim, 2);
    assert_true(w->shape[0] == 12 && w->shape[1] == 3 && w->layout == CAMO_LAYOUT_PLAIN);
    assert_true(w->fan_in == 3 && !w->no_decay && b->no_decay);
    assert_true(t->ndim == 3 && t->shape[0] == 2 && t->shape[1] == 1 && t->shape[2] == 1);
    assert_true(t->no_decay); /* timm: CrossCovarianceAttn.no_weight_decay() */
    assert_true(g->ndim == 1 && g->shape[0] == 4 && g->no_decay);
    assert_int_equal(net->n_params, 5);
    /* init: the start value (timm's ls_init_value), default 1 */
    assert_int_equal(camo_net_set_input_size(net, 1, 2, 2), 0);
    camo_net_init_weights(net, 1);
    float v1[4], v2[4];
    camo_param_get(net, g, v1);
    camo_param_get(net, camo_net_find_param(net, "blk.gamma2"), v2);
    for (int i = 0; i < 4; i++) assert_true(v1[i] == 1.0f && v2[i] == 1e-6f);
    camo_net_free(net);
}

static void expect_error(const char *layers, int H, const char *want) {
    char text[2048];
    snprintf(text, sizeof text, "input_channels = 3; layers = (%s);", layers);
    camo_net *net = net_from_text(text, "bad.cfg");
    if (net && camo_net_set_input_size(net, 1, H, H) == 0) fail_msg("accepted: %s", layers);
    const char *e = camo_last_error();
    if (!strstr(e, want)) fail_msg("'%s': error '%s' lacks '%s'", layers, e, want);
    camo_net_free(net);
}

static void test_config_errors(void **state) {
    (void)state;
    be = cpu;
    const char *conv = "{ name = \"c\"; type = \"conv\"; filters = 8; size = 1; },";
    char l[1024];
#define BAD(rest, want) (snprintf(l, sizeof l, "%s%s", conv, rest), expect_error(l, 8, want))
    BAD("{ name = \"a\"; type = \"attention\"; heads = 2; from = [\"c\", \"c\"]; }",
        "needs 'from' = [queries, keys, values], got 2 layers");
    BAD("{ name = \"a\"; type = \"attention\"; heads = 3; from = [\"c\", \"c\", \"c\"]; }",
        "heads = 3 must divide the 8 channels");
    BAD("{ name = \"a\"; type = \"attention\"; from = [\"c\", \"c\", \"c\"]; }",
        "heads");
    BAD("{ name = \"a\"; type = \"attention\"; heads = 2; from = [\"c\", \"c\", \"input\"]; }",
        "input 3 has 3 channels, input 1 has 8");
    BAD("{ name = \"s\"; type = \"conv\"; filters = 8; size = 2; stride = 2; pad = 0; },"
        "{ name = \"a\"; type = \"attention\"; heads = 2; from = [\"c\", \"s\", \"c\"]; }",
        "layer 'a': keys and values differ in size: 's' is 4x4, 'c' is 8x8");
    BAD("{ name = \"x\"; type = \"xca\"; heads = 2; }",
        "or one layer of 3C channels (q | k | v); got 1 layer, the first of 8 channels");
    BAD("{ name = \"l\"; type = \"linear\"; filter = 4; }", "did you mean 'filters'");
    BAD("{ name = \"d\"; type = \"drop_path\"; }", "needs 'p', the drop probability");
    BAD("{ name = \"d\"; type = \"drop_path\"; p = 1.5; }", "(out of range)");
    BAD("{ name = \"g\"; type = \"layer_scale\"; scale = 1e-6; }", "unknown key 'scale'");
#undef BAD
}

/* ---- main ---- */

int main(int argc, char **argv) {
    (void)argc;
    camo_cpu_env_reexec(argv); /* passive OpenMP waits: tests share 2 busy cores */
    be = cpu = camo_backend_cpu_create(2);
    /* where a GPU is usable (a CUDA build on a GPU machine, or cuemu), the fixtures run on
     * it too: the CUDA ops and the layers' glue on them against PyTorch */
    if (camo_cuda_device_count() > 0 && !(gpu = camo_backend_cuda_create(0)))
        fprintf(stderr, "GPU present but unusable: %s\n", camo_last_error());
    static char paths[32][300];
    int n = 0;
    DIR *d = opendir(FIXTURE_DIR);
    for (struct dirent *e; d && (e = readdir(d)) && n < 32;) {
        size_t len = strlen(e->d_name);
        if (len > 12 && !strcmp(e->d_name + len - 12, ".safetensors"))
            snprintf(paths[n++], sizeof paths[0], "%s/%s", FIXTURE_DIR, e->d_name);
    }
    if (d) closedir(d);
    qsort(paths, (size_t)n, sizeof paths[0], (int (*)(const void *, const void *))strcmp);
    static fx_case cases[64];
    int nc = 0;
    for (int g = 0; g < (gpu ? 2 : 1); g++)
        for (int i = 0; i < n; i++, nc++) {
            memcpy(cases[nc].path, paths[i], sizeof cases[nc].path); /* both char[300] */
            snprintf(cases[nc].name, sizeof cases[nc].name, "%s%s", strrchr(paths[i], '/') + 1,
                     g ? " (cuda)" : "");
            cases[nc].on_gpu = g;
        }
    struct CMUnitTest *tests = calloc((size_t)nc + 5, sizeof *tests);
    for (int i = 0; i < nc; i++)
        tests[i] = (struct CMUnitTest){cases[i].name, run_fixture, NULL, NULL, &cases[i]};
    const struct CMUnitTest more[] = {
        cmocka_unit_test(test_drop_path_replicas), cmocka_unit_test(test_drop_path_steps),
        cmocka_unit_test(test_param_shapes), cmocka_unit_test(test_config_errors),
    };
    for (int i = 0; i < 4; i++) tests[nc + i] = more[i];
    if (n < 6) fprintf(stderr, "%d fixtures in %s (tools/attention_ref.py)\n", n, FIXTURE_DIR);
    int rc = n < 6 ? 1 : _cmocka_run_group_tests("attention", tests, (size_t)nc + 4, NULL, NULL);
    free(tests);
    if (gpu) gpu->destroy(gpu);
    cpu->destroy(cpu);
    return rc;
}
