/* test_torch_ref.c: every network fixture of tests/fixtures/ (written by tools/torch_ref.py
 * from PyTorch, docs/models.md "Reference tests") against the C network: forward outputs,
 * input gradient, every parameter gradient and the BN running statistics after the forward.
 *
 * One cmocka test per tests/fixtures/NAME.safetensors that has `config` metadata. Parameters,
 * input and output gradients get the closed-form values of docs/models.md on both sides.
 * Error measure per tensor: max|a-b| / max|b| (gradients: the denominator is at least
 * GRAD_FLOOR * the largest gradient of the fixture, so that gradients that are zero in exact
 * arithmetic do not divide by ~0) must be <= 1e-4, or <= the fixture's `tol.<tensor>`
 * metadata, which tools/torch_ref.py writes where PyTorch's own float32 run is off by more
 * than 1e-5 (ill-conditioned tensors). Names must match both ways: a parameter the fixture
 * lacks, or a fixture tensor the net lacks, fails. */
#include <dirent.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"

#include "backend/backend.h"
#include "core/common.h"
#include "nn/moe.h"
#include "nn/net.h"
#include "core/safetensors.h"

#define FIXTURE_DIR "tests/fixtures"
#define TOL 1e-4
#define GRAD_FLOOR 1e-7
#define SAMPLES 4096
#define SAMPLE_MUL 2654435761ull

/* ---- closed-form values (docs/models.md; same as tools/torch_ref.py) ---- */

/* n values in [-1, 1): murmur3's fmix32 of (seed + i * 0x9E3779B9) mod 2^32 (integer
 * arithmetic, so bit-identical to tools/torch_ref.py's hash_uniform) */
static double hash_uniform(uint32_t seed, size_t i) {
    uint32_t x = seed + (uint32_t)i * 0x9E3779B9u;
    x ^= x >> 16;
    x *= 0x85EBCA6Bu;
    x ^= x >> 13;
    x *= 0xC2B2AE35u;
    x ^= x >> 16;
    return (double)x / 2147483648.0 - 1.0;
}

static void fill_param(const camo_param *p, float *host) {
    uint32_t seed = camo_fnv1a(p->name);
    size_t n = p->numel;
    const char *dot = strrchr(p->name, '.');
    const char *leaf = dot ? dot + 1 : p->name;
    for (size_t i = 0; i < n; i++) {
        double r = hash_uniform(seed, i), v;
        if (!strcmp(leaf, "running_mean")) v = 0.0;
        else if (!strcmp(leaf, "running_var")) v = 1.0;
        else if (p->ndim >= 2) { /* conv [out, in/g, kh, kw], linear [out, in], ... */
            double fan_in = (double)n / (double)p->shape[0];
            v = r * sqrt(3.0 / fan_in);
        } else if (!strcmp(leaf, "weight")) v = 1.0 + 0.1 * r;
        else v = 0.1 * r; /* bias */
        host[i] = (float)v;
    }
}

/* ---- comparison ---- */

typedef struct {
    const char *fixture;
    camo_st_file *f;
    double gmax;          /* largest |gradient| in the fixture */
    double worst_ratio;   /* worst error / tolerance */
    char worst[200];
    double worst_err, worst_tol;
    char worst_plain[200]; /* worst of the tensors held to TOL (no looser `tol.`) */
    double worst_plain_err;
    int failures;
} cmp_ctx;

static double tol_of(cmp_ctx *c, const char *tensor) {
    char key[256];
    snprintf(key, sizeof key, "tol.%s", tensor);
    const char *v = camo_st_meta(c->f, key);
    double t = v ? atof(v) : TOL;
    return t > TOL ? t : TOL;
}

static void record(cmp_ctx *c, const char *tensor, double err, double tol) {
    double ratio = err / tol;
    if (!(ratio <= 1.0)) {
        c->failures++;
        fprintf(stderr, "  %s: %s: normwise rel err %.3g > tol %.3g\n", c->fixture, tensor, err,
                tol);
    }
    if (!(ratio <= c->worst_ratio)) { /* NaN-safe */
        c->worst_ratio = ratio;
        c->worst_err = err;
        c->worst_tol = tol;
        snprintf(c->worst, sizeof c->worst, "%s", tensor);
    }
    if (tol <= TOL && !(err <= c->worst_plain_err)) {
        c->worst_plain_err = err;
        snprintf(c->worst_plain, sizeof c->worst_plain, "%s", tensor);
    }
}

static double normwise(const float *a, const float *b, size_t n, double floor_) {
    double d = 0, m = floor_;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)a[i] - (double)b[i]);
        if (!(e <= d)) d = e; /* NaN becomes the worst */
        if (fabs((double)b[i]) > m) m = fabs((double)b[i]);
    }
    return m > 0 ? d / m : d;
}

/* Reads fixture tensor `name` (must exist with numel n) into a new buffer. */
static float *fixture_tensor(cmp_ctx *c, const char *name, size_t n) {
    const camo_st_tensor *t = camo_st_find(c->f, name);
    if (!t) {
        fprintf(stderr, "  %s: fixture lacks tensor '%s'\n", c->fixture, name);
        c->failures++;
        return NULL;
    }
    if ((size_t)t->numel != n) {
        fprintf(stderr, "  %s: tensor '%s' has %lld values, the net %zu\n", c->fixture, name,
                (long long)t->numel, n);
        c->failures++;
        return NULL;
    }
    float *buf = malloc(n * sizeof(float) + 1);
    assert_non_null(buf);
    assert_int_equal(camo_st_read_f32(t, buf), 0);
    return buf;
}

static void compare(cmp_ctx *c, const char *name, const float *got, size_t n, int is_grad) {
    float *want = fixture_tensor(c, name, n);
    if (!want) return;
    record(c, name, normwise(got, want, n, is_grad ? GRAD_FLOOR * c->gmax : 0.0),
           tol_of(c, name));
    free(want);
}

/* NCHW <-> NHWC */
static void nhwc_to_nchw(float *dst, const float *src, int N, int H, int W, int C) {
    for (int n = 0; n < N; n++)
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++)
                for (int ch = 0; ch < C; ch++)
                    dst[(((size_t)n * C + ch) * H + y) * W + x] =
                        src[(((size_t)n * H + y) * W + x) * C + ch];
}

static void nchw_to_nhwc(float *dst, const float *src, int N, int H, int W, int C) {
    for (int n = 0; n < N; n++)
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++)
                for (int ch = 0; ch < C; ch++)
                    dst[(((size_t)n * H + y) * W + x) * C + ch] =
                        src[(((size_t)n * C + ch) * H + y) * W + x];
}

static int meta_int(camo_st_file *f, const char *key) {
    const char *v = camo_st_meta(f, key);
    assert_non_null(v);
    return atoi(v);
}

static void run_fixture(void **state) {
    const char *path = *state;
    cmp_ctx c = {0};
    c.fixture = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
    c.f = camo_st_open(path);
    if (!c.f) fprintf(stderr, "  %s\n", camo_last_error());
    assert_non_null(c.f);
    const char *cfg = camo_st_meta(c.f, "config");
    assert_non_null(cfg);
    int N = meta_int(c.f, "batch"), H = meta_int(c.f, "height"), W = meta_int(c.f, "width");
    int training = meta_int(c.f, "training");
    /* gradient samples per big parameter: SAMPLES unless the fixture says fewer */
    size_t samples = camo_st_meta(c.f, "samples") ? (size_t)meta_int(c.f, "samples") : SAMPLES;
    assert_true(samples >= 1 && samples <= SAMPLES);

    for (int i = 0; i < camo_st_count(c.f); i++) { /* largest gradient: the floor's scale */
        const camo_st_tensor *t = camo_st_get(c.f, i);
        if (strncmp(t->name, "grad.", 5) && strncmp(t->name, "gradsample.", 11)) continue;
        float *b = malloc((size_t)t->numel * sizeof(float) + 1);
        assert_non_null(b);
        assert_int_equal(camo_st_read_f32(t, b), 0);
        for (int64_t k = 0; k < t->numel; k++)
            if (fabs((double)b[k]) > c.gmax) c.gmax = fabs((double)b[k]);
        free(b);
    }

    camo_backend *be = camo_backend_cpu_create(0);
    assert_non_null(be);
    camo_clear_error();
    camo_net *net = camo_net_load(cfg, be, 0);
    if (!net) fprintf(stderr, "  %s: %s\n", cfg, camo_last_error());
    assert_non_null(net);
    net->want_input_grad = 1;
    int rc = camo_net_set_input_size(net, N, H, W);
    if (rc) fprintf(stderr, "  %s: %s\n", cfg, camo_last_error());
    assert_int_equal(rc, 0);

    /* parameters and buffers: closed form; counters 0 */
    for (int i = 0; i < net->n_params; i++) {
        camo_param *p = &net->params[i];
        float *h = malloc((p->numel ? p->numel : 1) * sizeof(float));
        assert_non_null(h);
        if (p->kind == CAMO_PARAM_COUNTER) h[0] = 0.0f;
        else fill_param(p, h);
        camo_param_set(net, p, h);
        free(h);
    }

    /* input */
    int C = net->input_channels;
    size_t nin = (size_t)N * C * H * W;
    float *x = fixture_tensor(&c, "input", nin);
    assert_non_null(x);
    const camo_st_tensor *tin = camo_st_find(c.f, "input");
    assert_int_equal(tin->ndim, 4);
    assert_int_equal(tin->shape[1], C);
    float *xh = malloc(nin * sizeof(float));
    assert_non_null(xh);
    nchw_to_nhwc(xh, x, N, H, W, C);
    be->upload(be, net->input, xh, nin * sizeof(float));

    camo_net_forward(net, N, training);

    /* outputs */
    size_t out_n[CAMO_MAX_OUTPUTS];
    int out_shape[CAMO_MAX_OUTPUTS][3];
    for (int o = 0; o < net->n_outputs; o++) {
        int oh, ow, oc;
        float *dev = camo_net_output(net, o, &oh, &ow, &oc);
        size_t n = (size_t)N * oh * ow * oc;
        out_n[o] = n;
        out_shape[o][0] = oh; out_shape[o][1] = ow; out_shape[o][2] = oc;
        float *a = malloc(n * sizeof(float)), *b = malloc(n * sizeof(float));
        assert_true(a && b);
        be->download(be, a, dev, n * sizeof(float));
        nhwc_to_nchw(b, a, N, oh, ow, oc);
        char name[CAMO_NAME_MAX + 16];
        snprintf(name, sizeof name, "output.%s", net->outputs[o].name);
        const camo_st_tensor *t = camo_st_find(c.f, name);
        if (t && (t->ndim != 4 || t->shape[1] != oc || t->shape[2] != oh || t->shape[3] != ow)) {
            fprintf(stderr, "  %s: %s: net shape (%d, %d, %d, %d) differs from the fixture's\n",
                    c.fixture, name, N, oc, oh, ow);
            c.failures++;
        } else {
            compare(&c, name, b, n, 0);
        }
        free(a);
        free(b);
    }

    /* backward: zero, set the output gradients (closed form), run */
    camo_net_zero_act_grads(net);
    camo_net_zero_param_grads(net);
    for (int o = 0; o < net->n_outputs; o++) {
        size_t n = out_n[o];
        int oh = out_shape[o][0], ow = out_shape[o][1], oc = out_shape[o][2];
        float *g = malloc(n * sizeof(float)), *gh = malloc(n * sizeof(float));
        assert_true(g && gh);
        char key[CAMO_NAME_MAX + 8];
        snprintf(key, sizeof key, "grad.%s", net->outputs[o].name);
        uint32_t seed = camo_fnv1a(key);
        for (size_t i = 0; i < n; i++) g[i] = (float)hash_uniform(seed, i);
        nchw_to_nhwc(gh, g, N, oh, ow, oc);
        be->upload(be, camo_net_output_grad(net, o), gh, n * sizeof(float));
        free(g);
        free(gh);
    }
    /* a moe block's balancing loss, as tools/torch_ref.py adds it (balance_weight * L_bal
     * over this forward's N images): no effect on other networks or in eval mode */
    camo_moe_set_balance_norm(net, N);
    camo_net_backward(net, N);
    be->sync(be);

    /* input gradient */
    be->download(be, xh, camo_net_input_grad(net), nin * sizeof(float));
    nhwc_to_nchw(x, xh, N, H, W, C);
    compare(&c, "dinput", x, nin, 0);
    free(x);
    free(xh);

    /* parameter gradients, buffers, counters */
    for (int i = 0; i < net->n_params; i++) {
        camo_param *p = &net->params[i];
        char name[sizeof p->name + 32];
        if (p->kind == CAMO_PARAM_COUNTER) { /* PyTorch counts train-mode forwards */
            float v;
            camo_param_get(net, p, &v);
            if ((int)v != training) {
                fprintf(stderr, "  %s: %s = %g after one %s forward, want %d\n", c.fixture,
                        p->name, (double)v, training ? "train" : "eval", training);
                c.failures++;
            }
            continue;
        }
        float *h = malloc(p->numel * sizeof(float));
        assert_non_null(h);
        if (p->kind == CAMO_PARAM_BUFFER) {
            camo_param_get(net, p, h);
            snprintf(name, sizeof name, "buffer.%s", p->name);
            compare(&c, name, h, p->numel, 0);
            free(h);
            continue;
        }
        camo_param_grad_get(net, p, h);
        if (p->numel <= samples) {
            snprintf(name, sizeof name, "grad.%s", p->name);
            compare(&c, name, h, p->numel, 1);
        } else {
            float *s = malloc(samples * sizeof(float));
            assert_non_null(s);
            double ss = 0;
            for (size_t k = 0; k < p->numel; k++) ss += (double)h[k] * h[k];
            for (uint64_t k = 0; k < samples; k++) s[k] = h[(k * SAMPLE_MUL) % p->numel];
            snprintf(name, sizeof name, "gradsample.%s", p->name);
            compare(&c, name, s, samples, 1);
            free(s);
            double tol = 2 * tol_of(&c, name); /* sum of squares: about twice the error */
            snprintf(name, sizeof name, "gradsumsq.%s", p->name);
            float *want = fixture_tensor(&c, name, 1);
            if (want) { /* floored as the samples are: an idle moe expert's is 0 */
                double fl = GRAD_FLOOR * c.gmax;
                record(&c, name, fabs(ss - want[0]) / fmax(fabs((double)want[0]), fl * fl), tol);
                free(want);
            }
        }
        free(h);
    }

    /* the other direction: every fixture tensor names something of the net */
    for (int i = 0; i < camo_st_count(c.f); i++) {
        const char *tn = camo_st_get(c.f, i)->name;
        const char *pn = NULL;
        if (!strncmp(tn, "grad.", 5)) pn = tn + 5;
        else if (!strncmp(tn, "gradsample.", 11)) pn = tn + 11;
        else if (!strncmp(tn, "gradsumsq.", 10)) pn = tn + 10;
        else if (!strncmp(tn, "buffer.", 7)) pn = tn + 7;
        if (pn) {
            if (!camo_net_find_param(net, pn)) {
                fprintf(stderr, "  %s: fixture tensor '%s': the net has no parameter '%s'\n",
                        c.fixture, tn, pn);
                c.failures++;
            }
        } else if (!strncmp(tn, "output.", 7)) {
            int found = 0;
            for (int o = 0; o < net->n_outputs; o++)
                found |= !strcmp(net->outputs[o].name, tn + 7);
            if (!found) {
                fprintf(stderr, "  %s: fixture has '%s', the net no such output\n", c.fixture, tn);
                c.failures++;
            }
        } else if (strcmp(tn, "input") && strcmp(tn, "dinput")) {
            fprintf(stderr, "  %s: unexpected fixture tensor '%s'\n", c.fixture, tn);
            c.failures++;
        }
    }

    fprintf(stderr, "  %s: worst %s: %.3g (tol %.3g); at tol %g: %s %.3g\n", c.fixture,
            c.worst, c.worst_err, c.worst_tol, TOL, c.worst_plain, c.worst_plain_err);
    camo_net_free(net);
    be->destroy(be);
    camo_st_close(c.f);
    assert_int_equal(c.failures, 0);
}

/* ---- one test per fixture with `config` metadata, found at run time ---- */

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int main(int argc, char **argv) {
    (void)argc;
    camo_cpu_env_reexec(argv); /* passive OpenMP waits: tests share 2 busy cores */
    DIR *d = opendir(FIXTURE_DIR);
    if (!d) {
        fprintf(stderr, "test_torch_ref: no %s (run from the repository root)\n", FIXTURE_DIR);
        return 1;
    }
    char **paths = NULL;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t len = strlen(e->d_name);
        if (len < 12 || strcmp(e->d_name + len - 12, ".safetensors")) continue;
        char *p = malloc(sizeof FIXTURE_DIR + len + 1);
        if (!p) return 1;
        sprintf(p, "%s/%s", FIXTURE_DIR, e->d_name);
        camo_st_file *f = camo_st_open(p);
        int has = f && camo_st_meta(f, "config");
        if (f) camo_st_close(f);
        if (!has) { free(p); continue; }
        paths = realloc(paths, (size_t)(n + 1) * sizeof *paths);
        if (!paths) return 1;
        paths[n++] = p;
    }
    closedir(d);
    if (n) qsort(paths, (size_t)n, sizeof *paths, cmp_str);
    struct CMUnitTest *tests = calloc((size_t)(n ? n : 1), sizeof *tests);
    if (!tests) return 1;
    for (int i = 0; i < n; i++) {
        tests[i].name = strrchr(paths[i], '/') + 1;
        tests[i].test_func = run_fixture;
        tests[i].initial_state = paths[i];
    }
    camo_log_set_quiet(1);
    int rc = _cmocka_run_group_tests("torch_ref", tests, (size_t)n, NULL, NULL);
    for (int i = 0; i < n; i++) free(paths[i]);
    free(paths);
    free(tests);
    return rc;
}
