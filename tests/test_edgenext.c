/* test_edgenext.c: the layer types EdgeNeXt added (slice, fourier_pos; backend copy_rows) and
 * timm's state dicts loading into conf/models/edgenext_{s,b}.cfg. The whole networks are
 * compared with timm's own model by tests/test_torch_ref.c (tests/fixtures/edgenext_*.
 * safetensors, tools/edgenext_ref.py).
 *   - fourier_pos against timm's PositionalEncodingFourier (before its projection) at three
 *     sizes: 1e-5 absolute (values in [-1, 1]; float32 sin/pow differ by an ulp or two);
 *   - finite differences through a small SDTA-style split (slices of one input, a slice of
 *     the network input, depthwise convs chained by adds, concat, positional encoding,
 *     projection, add, GELU): 3e-2 relative as tests/test_gradcheck.c;
 *   - timm's edgenext_small / edgenext_base state dict (names, dtypes and shapes as
 *     tools/convert_weights.py wrote them, tests/fixtures/edgenext/timm_*.txt) written with
 *     hashed values and loaded: every tensor but timm's classifier (head.*, 4 unexpected)
 *     matched, only decode_head.* missing, and the values land in the parameters; with the
 *     decoder's tensors added the file loads with init.strict;
 *   - CPU against the CUDA backend (a GPU or cuemu; skipped without): copy_rows on odd
 *     shapes, and the split network's forward and backward, 1e-4 relative. */
#include "test_util.h"

#include <libconfig.h>
#include <unistd.h>

#include "backend/backend.h"
#include "backend/cuda.h"
#include "core/common.h"
#include "core/safetensors.h"
#include "nn/net.h"
#include "nn/pretrained.h"

static camo_backend *be, *gpu;

static int setup(void **state) {
    (void)state;
    be = camo_backend_cpu_create(1);
    if (camo_cuda_device_count() > 0) gpu = camo_backend_cuda_create(0);
    return be ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    if (gpu) gpu->destroy(gpu);
    be->destroy(be);
    return 0;
}

static camo_net *build_on(camo_backend *b, const char *layers) {
    char text[4096];
    snprintf(text, sizeof text, "input_channels = 3; layers = ( %s );", layers);
    config_t cfg;
    config_init(&cfg);
    camo_net *net = NULL;
    if (config_read_string(&cfg, text))
        net = camo_net_from_setting(config_root_setting(&cfg), "test_edgenext", b, 0);
    else fprintf(stderr, "  config: %s\n", config_error_text(&cfg));
    config_destroy(&cfg);
    if (!net) fprintf(stderr, "  %s\n", camo_last_error());
    return net;
}

/* ---- fourier_pos against timm ---- */

static void test_fourier_matches_timm(void **state) {
    (void)state;
    camo_st_file *f = camo_st_open("tests/fixtures/edgenext/fourier_pos.safetensors");
    assert_non_null(f);
    int sizes = 0;
    for (int t = 0; t < camo_st_count(f); t++) {
        const camo_st_tensor *ref = camo_st_get(f, t);
        int H, W;
        assert_int_equal(sscanf(ref->name, "pos.%dx%d", &H, &W), 2);
        assert_int_equal(ref->ndim, 3);
        int C = (int)ref->shape[0];
        float *want = malloc((size_t)ref->numel * sizeof(float));
        assert_int_equal(camo_st_read_f32(ref, want), 0);
        camo_net *net = build_on(be, "{name=\"pos\"; type=\"fourier_pos\";}");
        assert_non_null(net);
        assert_int_equal(camo_net_set_input_size(net, 2, H, W), 0);
        camo_net_forward(net, 2, 1);
        int oh, ow, oc;
        const float *y = camo_net_output(net, 0, &oh, &ow, &oc);
        assert_true(oh == H && ow == W && oc == C);
        double worst = 0;
        for (int i = 0; i < 2; i++) /* both images alike */
            for (int c = 0; c < C; c++)
                for (int p = 0; p < H * W; p++) {
                    double d = fabs((double)y[((size_t)i * H * W + p) * C + c] -
                                    want[(size_t)c * H * W + p]);
                    if (d > worst) worst = d;
                }
        fprintf(stderr, "  fourier_pos %dx%d: max |C - timm| %.3g (bound 1e-5)\n", H, W, worst);
        assert_true(worst <= 1e-5);
        camo_net_free(net);
        free(want);
        sizes++;
    }
    assert_int_equal(sizes, 3);
    camo_st_close(f);
}

/* ---- finite differences through a split block ---- */

static const char *SPLIT_NET =
    "{name=\"si\"; type=\"slice\"; start=1; channels=2;},"
    "{name=\"ci\"; type=\"conv\"; filters=7; size=1;},"
    "{name=\"c0\"; type=\"conv\"; filters=7; size=3; from=\"input\";},"
    "{name=\"c\"; type=\"add\"; from=[\"c0\", \"ci\"];},"
    "{name=\"s0\"; type=\"slice\"; start=0; channels=3;},"
    "{name=\"k0\"; type=\"conv\"; filters=3; size=3; groups=3;},"
    "{name=\"s1\"; type=\"slice\"; start=3; channels=3; from=\"c\";},"
    "{name=\"a1\"; type=\"add\"; from=[\"k0\", \"s1\"];},"
    "{name=\"k1\"; type=\"conv\"; filters=3; size=3; groups=3;},"
    "{name=\"s2\"; type=\"slice\"; start=6; from=\"c\";},"
    "{name=\"cat\"; type=\"concat\"; from=[\"k0\", \"k1\", \"s2\"];},"
    "{name=\"f\"; type=\"fourier_pos\"; hidden_dim=3; temperature=100.0;},"
    "{name=\"p\"; type=\"conv\"; filters=7; size=1;},"
    "{name=\"x\"; type=\"add\"; from=[\"cat\", \"p\"];},"
    "{name=\"g\"; type=\"gelu\";}";

enum { GN = 2, GH = 6, GW = 5 };

static double objective(camo_net *net, const float *dy) {
    int H, W, C;
    camo_net_forward(net, GN, 1);
    const float *y = camo_net_output(net, 0, &H, &W, &C);
    double f = 0;
    for (size_t i = 0; i < (size_t)GN * H * W * C; i++) f += (double)y[i] * dy[i];
    return f;
}

static double fd_worst(camo_net *net, const float *dy, float *x, const float *grad, size_t n,
                       const char *what) {
    double worst = 0;
    for (size_t k = 0; k < (n < 12 ? n : 12); k++) {
        size_t i = (k * 7919 + 3) % n;
        float keep = x[i], eps = 1e-2f * fmaxf(1.0f, fabsf(keep));
        x[i] = keep + eps;
        double fp = objective(net, dy);
        x[i] = keep - eps;
        double fm = objective(net, dy);
        x[i] = keep;
        double num = (fp - fm) / ((double)(keep + eps) - (double)(keep - eps)), ana = grad[i];
        double err = fabs(num - ana) / fmax(fmax(fabs(num), fabs(ana)), 5e-2);
        if (err > 3e-2) fprintf(stderr, "  %s[%zu]: numeric %.6g analytic %.6g\n", what, i, num, ana);
        worst = fmax(worst, err);
    }
    return worst;
}

/* the split network on backend b with fixed weights, input and upstream gradient; runs one
 * forward and backward */
static camo_net *split_net_step(camo_backend *b, float **dy_out) {
    camo_net *net = build_on(b, SPLIT_NET);
    assert_non_null(net);
    net->want_input_grad = 1;
    assert_int_equal(camo_net_set_input_size(net, GN, GH, GW), 0);
    for (int i = 0; i < net->n_params; i++) {
        camo_param *p = &net->params[i];
        float *h = malloc(p->numel * sizeof(float));
        tu_fill(h, p->numel, 100 + (uint32_t)i, -0.6f, 0.6f);
        camo_param_set(net, p, h);
        free(h);
    }
    size_t nin = (size_t)GN * GH * GW * 3, nout = (size_t)GN * GH * GW * 7;
    float *x = malloc(nin * sizeof(float)), *dy = malloc(nout * sizeof(float));
    tu_fill(x, nin, 11, -1, 1);
    tu_fill(dy, nout, 13, -1, 1);
    b->upload(b, net->input, x, nin * sizeof(float));
    camo_net_forward(net, GN, 1);
    camo_net_zero_act_grads(net);
    camo_net_zero_param_grads(net);
    b->upload(b, camo_net_output_grad(net, 0), dy, nout * sizeof(float));
    camo_net_backward(net, GN);
    free(x);
    *dy_out = dy;
    return net;
}

static void test_split_gradcheck(void **state) {
    (void)state;
    float *dy;
    camo_net *net = split_net_step(be, &dy);
    size_t nin = (size_t)GN * GH * GW * 3;
    float *din = malloc(nin * sizeof(float));
    memcpy(din, camo_net_input_grad(net), nin * sizeof(float));
    double worst = fd_worst(net, dy, net->input, din, nin, "input");
    for (int i = 0; i < net->n_params; i++) {
        camo_param *p = &net->params[i];
        float *g = malloc(p->numel * sizeof(float));
        memcpy(g, p->grad, p->numel * sizeof(float));
        worst = fmax(worst, fd_worst(net, dy, p->data, g, p->numel, p->name));
        free(g);
    }
    fprintf(stderr, "  split block: worst finite-difference error %.3g (bound 3e-2)\n", worst);
    assert_true(worst <= 3e-2);
    free(din);
    free(dy);
    camo_net_free(net);
}

/* ---- timm state dicts ---- */

typedef struct { char name[CAMO_NAME_MAX]; int ndim; int64_t shape[8]; } manifest_entry;

static int read_manifest(const char *path, manifest_entry *e, int cap) {
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char line[512], dims[256], dtype[32];
    int n = 0;
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '#') continue;
        assert_true(n < cap);
        assert_int_equal(sscanf(line, "%127s %31s %255s", e[n].name, dtype, dims), 3);
        assert_string_equal(dtype, "float32");
        e[n].ndim = 0;
        for (char *s = strtok(dims, ","); s; s = strtok(NULL, ","))
            e[n].shape[e[n].ndim++] = atoll(s);
        n++;
    }
    fclose(f);
    return n;
}

static size_t numel_of(const manifest_entry *e) {
    size_t n = 1;
    for (int d = 0; d < e->ndim; d++) n *= (size_t)e->shape[d];
    return n;
}

/* writes the manifest's tensors (hashed values; head.* too unless skip_head) and, with
 * decoder, the network's decode_head.* parameters */
static void write_state_dict(const char *path, const manifest_entry *e, int n, int skip_head,
                             camo_net *decoder) {
    camo_st_writer *w = camo_st_writer_new();
    for (int i = 0; i < n; i++) {
        if (skip_head && !strncmp(e[i].name, "head.", 5)) continue;
        size_t k = numel_of(&e[i]);
        float *v = malloc(k * sizeof(float));
        tu_fill(v, k, camo_fnv1a(e[i].name), -1, 1);
        assert_int_equal(camo_st_add(w, e[i].name, CAMO_ST_F32, e[i].ndim, e[i].shape, v), 0);
        free(v);
    }
    for (int i = 0; decoder && i < decoder->n_params; i++) {
        camo_param *p = &decoder->params[i];
        if (strncmp(p->name, "decode_head.", 12) || p->kind == CAMO_PARAM_COUNTER) continue;
        float *v = calloc(p->numel, sizeof(float));
        assert_int_equal(camo_st_add(w, p->name, CAMO_ST_F32, p->ndim, p->shape, v), 0);
        free(v);
    }
    assert_int_equal(camo_st_write_file(w, path), 0);
    camo_st_writer_free(w);
}

static void check_timm_load(const char *cfg, const char *manifest) {
    static manifest_entry e[512];
    int n = read_manifest(manifest, e, 512);
    camo_net *net = camo_net_load(cfg, be, 0);
    assert_non_null(net);
    char path[512];
    snprintf(path, sizeof path, "%s/edgenext_timm_%d.safetensors", tu_tmpdir(), (int)getpid());
    write_state_dict(path, e, n, 0, NULL);
    camo_pretrained_report rep;
    int rc = camo_net_load_pretrained(net, path, "", 0, &rep);
    if (rc) fprintf(stderr, "  %s\n", camo_last_error());
    assert_int_equal(rc, 0);
    int decoder = 0;
    for (int i = 0; i < net->n_params; i++)
        decoder += !strncmp(net->params[i].name, "decode_head.", 12) &&
                   net->params[i].kind != CAMO_PARAM_COUNTER;
    fprintf(stderr, "  %s: %d of %d timm tensors loaded, %d unexpected (%s), %d missing (%s)\n",
            cfg, rep.matched, n, rep.n_unexpected, rep.unexpected, rep.n_missing, rep.missing);
    assert_int_equal(rep.matched, n - 4);
    assert_int_equal(rep.n_unexpected, 4);
    assert_int_equal(rep.n_missing, decoder);
    assert_int_equal(rep.network_tensors, n - 4 + decoder);
    assert_null(strstr(rep.missing, "stages"));
    /* the values arrived (in PyTorch's layout, whatever the net keeps) */
    for (int i = 0; i < n; i++) {
        if (!strncmp(e[i].name, "head.", 5)) continue;
        camo_param *p = camo_net_find_param(net, e[i].name);
        assert_non_null(p);
        size_t k = numel_of(&e[i]);
        float *want = malloc(k * sizeof(float)), *got = malloc(k * sizeof(float));
        tu_fill(want, k, camo_fnv1a(e[i].name), -1, 1);
        camo_param_get(net, p, got);
        assert_memory_equal(want, got, k * sizeof(float));
        free(want);
        free(got);
    }
    /* without timm's classifier and with the decoder's tensors: strict */
    write_state_dict(path, e, n, 1, net);
    rc = camo_net_load_pretrained(net, path, "", 1, &rep);
    if (rc) fprintf(stderr, "  %s\n", camo_last_error());
    assert_int_equal(rc, 0);
    assert_int_equal(rep.matched, rep.network_tensors);
    unlink(path);
    camo_net_free(net);
}

static void test_timm_small_loads(void **state) {
    (void)state;
    check_timm_load("conf/models/edgenext_s.cfg",
                    "tests/fixtures/edgenext/timm_edgenext_small.txt");
}

static void test_timm_base_loads(void **state) {
    (void)state;
    check_timm_load("conf/models/edgenext_b.cfg", "tests/fixtures/edgenext/timm_edgenext_base.txt");
}

/* ---- CPU against the CUDA backend ---- */

static double rel_err(const float *a, const float *b, size_t n) {
    double d = 0, m = 0;
    for (size_t i = 0; i < n; i++) {
        d = fmax(d, fabs((double)a[i] - b[i]));
        m = fmax(m, fabs((double)b[i]));
    }
    return d / fmax(m, 1e-30);
}

static void test_copy_rows_parity(void **state) {
    (void)state;
    if (!gpu) skip();
    const int M = 37, C = 5, ldd = 11, lds = 9;
    for (int acc = 0; acc < 2; acc++) {
        size_t nd = (size_t)M * ldd, ns = (size_t)M * lds;
        float *d = malloc(nd * 4), *s = malloc(ns * 4), *want = malloc(nd * 4);
        float *got = malloc(nd * 4);
        tu_fill(d, nd, 1, -1, 1);
        tu_fill(s, ns, 2, -1, 1);
        float *gd = gpu->alloc(gpu, nd * 4), *gs = gpu->alloc(gpu, ns * 4);
        gpu->upload(gpu, gd, d, nd * 4);
        gpu->upload(gpu, gs, s, ns * 4);
        memcpy(want, d, nd * 4);
        be->copy_rows(be, acc, M, C, want + 3, ldd, s + 2, lds);
        gpu->copy_rows(gpu, acc, M, C, gd + 3, ldd, gs + 2, lds);
        gpu->download(gpu, got, gd, nd * 4);
        assert_int_equal(camo_cuda_backend_status(gpu), 0);
        assert_true(rel_err(got, want, nd) <= 1e-6); /* a copy or one add: exact */
        for (int m = 0; m < M; m++) /* the columns outside [3, 3 + C) untouched */
            for (int c = 0; c < ldd; c++)
                if (c < 3 || c >= 3 + C) assert_true(want[m * ldd + c] == d[m * ldd + c]);
        gpu->free(gpu, gd);
        gpu->free(gpu, gs);
        free(d), free(s), free(want), free(got);
    }
}

static void test_split_net_parity(void **state) {
    (void)state;
    if (!gpu) skip();
    float *dy_c, *dy_g;
    camo_net *a = split_net_step(be, &dy_c), *b = split_net_step(gpu, &dy_g);
    int H, W, C;
    size_t nout = (size_t)GN * GH * GW * 7, nin = (size_t)GN * GH * GW * 3;
    float *h = malloc(nout * 4);
    gpu->download(gpu, h, camo_net_output(b, 0, &H, &W, &C), nout * 4);
    double worst = rel_err(h, camo_net_output(a, 0, &H, &W, &C), nout);
    gpu->download(gpu, h, camo_net_input_grad(b), nin * 4);
    worst = fmax(worst, rel_err(h, camo_net_input_grad(a), nin));
    for (int i = 0; i < a->n_params; i++) {
        float *g = malloc(a->params[i].numel * 4);
        gpu->download(gpu, g, b->params[i].grad, a->params[i].numel * 4);
        worst = fmax(worst, rel_err(g, a->params[i].grad, a->params[i].numel));
        free(g);
    }
    assert_int_equal(camo_cuda_backend_status(gpu), 0);
    fprintf(stderr, "  split block CPU vs %s: worst %.3g (bound 1e-4)\n", gpu->name, worst);
    assert_true(worst <= 1e-4);
    free(h), free(dy_c), free(dy_g);
    camo_net_free(a);
    camo_net_free(b);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fourier_matches_timm),
        cmocka_unit_test(test_split_gradcheck),
        cmocka_unit_test(test_timm_small_loads),
        cmocka_unit_test(test_timm_base_loads),
        cmocka_unit_test(test_copy_rows_parity),
        cmocka_unit_test(test_split_net_parity),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
