/* test_bn_stable.c: training-mode batch norm's batch variance where mean^2 >> var (a few
 * rows per channel after global pooling), against PyTorch's float64 batch norm on the same
 * float32 input (tools/bn_stable_ref.py prints the REF tables; x is its formula):
 *   - the ops (two passes: sum x, mean, sum (x - mean)^2, finalize) on 2 rows, and on 2 + 2
 *     rows of two "replicas" whose per-pass sums are added, on the CPU and a GPU if usable;
 *   - the network path: a batchnorm layer on 2 cpu replicas (threads, the cpu comm) whose
 *     net->bn_sync adds the sums as src/parallel/replica.c's hook does, 2 images each.
 * The old one-pass formula (float sums of x and x^2, var = E[x^2] - mean^2) is emulated to
 * show this input breaks it. Bounds: the mean within 2 float ulps; the variance within
 * d^2 + 1e-6 relative, d = mean - reference mean (a float mean offset by d adds d^2 to the
 * mean square deviation: float32's own limit, PyTorch float32 shares it). */
#include "test_util.h"

#include <libconfig.h>
#include <pthread.h>

#include "backend/backend.h"
#include "backend/comm.h"
#include "core/common.h"
#include "nn/layer.h"
#include "nn/net.h"

enum { C = 4, MAXR = 4 };
static const double BASE[C] = {1000.0, -30000.0, 5.0, 100000.0};
static const double STEP[C] = {1e-3, 0.5, 0.1, 0.03};
#define EPS 1e-10f

/* tools/bn_stable_ref.py, torch 1.13.0a0 */
static const double REF2_Y[] = {-0.99979035079377354, -0.99999999920719063, -0.99999997999995927,
    -0.9999997948143573, 0.99979035070152156, 0.99999999919280969, 0.99999997999996582,
    0.99999979558576868};
static const double REF2_MEAN[] = {1000.00048828125, -29999.75, 5.0499999523162842, 100000.015625};
static const double REF2_INVSTD[] = {2047.5706383311822, 3.9999999968000006, 20.000018673503387,
    63.999986892804031};
static const double REF2_VAR_UNBIASED[] = {4.76837158203125e-07, 0.125, 0.0049999904632613834,
    0.00048828125};
static const double REF4_Y[] = {-1.3360342855175986, -1.3416407862839748, -1.3416399281405731,
    -1.3416407314798562, -0.46352209902642838, -0.44721359542716721, -0.44721402020671741,
    -0.44721357711567578, 0.46352209912044001, 0.44721359542964034, 0.44721188772713827,
    0.44721357724850463, 1.3360342856116103, 1.3416407862864479, 1.3416420606201429,
    1.341640731612685};
static const double REF4_MEAN[] = {1000.0014953613281, -29999.25, 5.1499999761581421,
    100000.046875};
static const double REF4_INVSTD[] = {893.45247896695832, 1.7888543817136151, 8.9442676092568547,
    28.621668939653773};
static const double REF4_VAR_UNBIASED[] = {1.6701718171437581e-06, 0.41666666666666669,
    0.016666682561265134, 0.0016276041666666667};

typedef struct {
    const double *y, *mean, *invstd, *var_unbiased;
} bn_ref;

static const bn_ref REF2 = {REF2_Y, REF2_MEAN, REF2_INVSTD, REF2_VAR_UNBIASED};
static const bn_ref REF4 = {REF4_Y, REF4_MEAN, REF4_INVSTD, REF4_VAR_UNBIASED};

static camo_backend *cpu, *gpu;

/* rows r0 .. r0+rows-1 of the input (rows, C) */
static void fill_x(float *x, int r0, int rows) {
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < C; c++) x[r * C + c] = (float)(BASE[c] + STEP[c] * (r0 + r));
}

/* The old one-pass statistics on `reps` replicas of `rows` rows each: per-replica sums of x
 * and x^2 in double stored as float, added across replicas in float, then
 * var = E[x^2] - mean^2 (clamped at 0). Returns the worst relative error of the unbiased
 * variance against ref. */
static double old_formula_error(int reps, int rows, const bn_ref *ref) {
    float x[MAXR * C], s[C] = {0}, ss[C] = {0};
    fill_x(x, 0, reps * rows);
    for (int k = 0; k < reps; k++)
        for (int c = 0; c < C; c++) {
            double a = 0, b = 0;
            for (int r = k * rows; r < (k + 1) * rows; r++) {
                a += x[r * C + c];
                b += (double)x[r * C + c] * x[r * C + c];
            }
            s[c] += (float)a;
            ss[c] += (float)b;
        }
    double n = reps * rows, worst = 0;
    for (int c = 0; c < C; c++) {
        double mu = s[c] / n, var = fmax(ss[c] / n - mu * mu, 0) * n / (n - 1);
        worst = fmax(worst, fabs(var - ref->var_unbiased[c]) / ref->var_unbiased[c]);
    }
    return worst;
}

/* Checks mean, invstd, the unbiased variance over n rows (running_var after a momentum-1
 * update from running_var = 1) and `rows` rows of y against ref; returns the worst relative
 * variance error. */
static double check_stats(const char *what, int n, int rows, const float *mean,
                          const float *invstd, const float *rv, const float *y,
                          const bn_ref *ref) {
    double worst = 0;
    for (int c = 0; c < C; c++) {
        double d = mean[c] - ref->mean[c], vr = ref->var_unbiased[c];
        double verr = fabs(rv[c] - vr), vtol = d * d * n / (n - 1) + 1e-6 * vr;
        double ierr = fabs(invstd[c] - ref->invstd[c]) / ref->invstd[c];
        double itol = (vtol / vr) / 2 + 1e-6; /* invstd ~ var^-1/2 */
        worst = fmax(worst, verr / vr);
        if (fabs(d) > 2.4e-7 * fabs(ref->mean[c]) || verr > vtol || ierr > itol)
            fprintf(stderr, "  %s c%d: mean %.9g (ref %.17g) var %.9g (ref %.17g, tol %.3g) "
                    "invstd %.9g (ref %.17g)\n", what, c, mean[c], ref->mean[c], rv[c], vr,
                    vtol, invstd[c], ref->invstd[c]);
        assert_true(fabs(d) <= 2.4e-7 * fabs(ref->mean[c]));
        assert_true(verr <= vtol);
        assert_true(ierr <= itol);
        for (int r = 0; r < rows; r++) { /* the output: x - mean is off by d */
            double e = fabs(y[r * C + c] - ref->y[r * C + c]);
            double tol = fabs(d) * ref->invstd[c] + itol * fabs(ref->y[r * C + c]) + 1e-6;
            if (e > tol) fprintf(stderr, "  %s y[%d][%d] %.9g ref %.17g\n", what, r, c,
                                 y[r * C + c], ref->y[r * C + c]);
            assert_true(e <= tol);
        }
    }
    return worst;
}

/* ---- the ops ---- */

typedef struct {
    float *x, *stats, *stats2, *mean, *invstd, *rm, *rv, *y;
} dev_bufs;

static float *dev_upload(camo_backend *be, const float *h, size_t n) {
    float *d = be->alloc(be, n * sizeof(float));
    assert_non_null(d);
    be->upload(be, d, h, n * sizeof(float));
    return d;
}

/* On backend be: 2 replicas of `rows` rows (reps = 1 or 2) through the ops, the per-pass sums
 * of the replicas added on the host as an all-reduce would; checked against ref. */
static double run_ops(camo_backend *be, const char *what, int reps, int rows,
                      const bn_ref *ref) {
    int n = reps * rows;
    float x[MAXR * C], zero[2 * C] = {0}, one[C] = {1, 1, 1, 1}, h[2 * C], h2[2 * C];
    fill_x(x, 0, n);
    dev_bufs b = {dev_upload(be, x, (size_t)n * C), dev_upload(be, zero, 2 * C),
                  dev_upload(be, zero, 2 * C), dev_upload(be, zero, C),
                  dev_upload(be, zero, C), dev_upload(be, zero, C),
                  dev_upload(be, one, C), dev_upload(be, x, (size_t)n * C)};
    float *x1 = b.x + (size_t)rows * C;
    /* pass 1: sum x on each replica, added */
    be->bn_stats(be, rows, C, b.stats, b.x, NULL);
    be->download(be, h, b.stats, 2 * C * sizeof(float));
    if (reps == 2) {
        be->bn_stats(be, rows, C, b.stats2, x1, NULL);
        be->download(be, h2, b.stats2, 2 * C * sizeof(float));
        for (int c = 0; c < C; c++) h[c] += h2[c];
        be->upload(be, b.stats, h, 2 * C * sizeof(float));
    }
    be->bn_mean(be, C, b.stats, n, b.mean);
    /* pass 2: sum (x - mean)^2 on each replica, added */
    be->bn_stats(be, rows, C, b.stats, b.x, b.mean);
    be->download(be, h, b.stats, 2 * C * sizeof(float));
    if (reps == 2) {
        be->bn_stats(be, rows, C, b.stats2, x1, b.mean);
        be->download(be, h2, b.stats2, 2 * C * sizeof(float));
        for (int c = C; c < 2 * C; c++) h[c] += h2[c];
        be->upload(be, b.stats, h, 2 * C * sizeof(float));
    }
    be->bn_finalize(be, C, b.stats, n, EPS, 1.0f, b.mean, b.invstd, b.rm, b.rv);
    be->bn_apply(be, n, C, b.y, b.x, b.mean, b.invstd, NULL, NULL);
    float mean[C], invstd[C], rm[C], rv[C], y[MAXR * C];
    be->download(be, mean, b.mean, sizeof mean);
    be->download(be, invstd, b.invstd, sizeof invstd);
    be->download(be, rm, b.rm, sizeof rm);
    be->download(be, rv, b.rv, sizeof rv);
    be->download(be, y, b.y, (size_t)n * C * sizeof(float));
    for (int c = 0; c < C; c++) assert_true(rm[c] == mean[c]); /* momentum 1 */
    double err = check_stats(what, n, n, mean, invstd, rv, y, ref);
    float **p = (float **)&b;
    for (size_t i = 0; i < sizeof b / sizeof(float *); i++) be->free(be, p[i]);
    return err;
}

static void test_ops(void **state) {
    (void)state;
    double old2 = old_formula_error(1, 2, &REF2), old4 = old_formula_error(2, 2, &REF4);
    double new2 = run_ops(cpu, "cpu 2 rows", 1, 2, &REF2);
    double new4 = run_ops(cpu, "cpu 2+2 rows", 2, 2, &REF4);
    fprintf(stderr, "  unbiased variance, worst relative error: 2 rows old %.3g new %.3g; "
            "2+2 rows old %.3g new %.3g\n", old2, new2, old4, new4);
    /* the input breaks the one-pass formula, so passing here means something */
    assert_true(old2 > 0.5 && old4 > 0.5);
    if (gpu) {
        new2 = run_ops(gpu, "gpu 2 rows", 1, 2, &REF2);
        new4 = run_ops(gpu, "gpu 2+2 rows", 2, 2, &REF4);
        fprintf(stderr, "  %s backend: 2 rows %.3g, 2+2 rows %.3g\n", gpu->name, new2, new4);
    }
}

/* ---- the network path on 2 cpu replicas ---- */

typedef struct {
    camo_comm *comm;
    camo_backend *be;
    camo_net *net;
    int calls; /* bn_sync calls in the forward */
    int rc;
} replica;

/* net->bn_sync as src/parallel/replica.c's (without DDP or ghosts): float sums and the host
 * row count all-reduced on the cpu comm */
static void sync_hook(void *ctx, float *data, size_t n, double *count) {
    replica *r = ctx;
    r->calls++;
    if (r->comm->all_reduce_sum(r->comm, data, n) || r->comm->wait(r->comm) ||
        (count && r->comm->all_reduce_host(r->comm, count, 1)))
        r->rc = -1;
}

static void *replica_forward(void *p) {
    replica *r = p;
    fill_x(r->net->input, 2 * r->comm->rank, 2);
    camo_net_forward(r->net, 2, 1);
    return NULL;
}

static camo_net *build_net(camo_backend *be) {
    static const char *text = "input_channels = 4; layers = ({ name = \"bn\"; "
                              "type = \"batchnorm\"; eps = 1e-10; momentum = 1.0; });";
    config_t cfg;
    config_init(&cfg);
    camo_net *net = NULL;
    if (config_read_string(&cfg, text))
        net = camo_net_from_setting(config_root_setting(&cfg), "bn_stable", be, 0);
    config_destroy(&cfg);
    if (!net) fprintf(stderr, "  %s\n", camo_last_error());
    assert_non_null(net);
    assert_int_equal(camo_net_set_input_size(net, 2, 1, 1), 0);
    camo_net_init_weights(net, 1);
    return net;
}

static void test_sync_replicas(void **state) {
    (void)state;
    camo_comm *comms[2];
    assert_int_equal(camo_comm_cpu_create(2, 30, comms), 0);
    replica reps[2];
    pthread_t t[2];
    for (int k = 0; k < 2; k++) {
        reps[k] = (replica){.comm = comms[k], .be = camo_backend_cpu_create(1)};
        assert_non_null(reps[k].be);
        reps[k].net = build_net(reps[k].be);
        reps[k].net->bn_sync = sync_hook;
        reps[k].net->bn_sync_ctx = &reps[k];
    }
    for (int k = 0; k < 2; k++)
        assert_int_equal(pthread_create(&t[k], NULL, replica_forward, &reps[k]), 0);
    for (int k = 0; k < 2; k++) pthread_join(t[k], NULL);
    for (int k = 0; k < 2; k++) {
        replica *r = &reps[k];
        assert_int_equal(r->rc, 0);
        assert_int_equal(r->calls, 2); /* pass 1 and pass 2: the same on every replica */
        camo_layer *l = NULL;
        for (int i = 0; i < r->net->n_layers; i++)
            if (r->net->layers[i].type == CAMO_LAYER_BATCHNORM) l = &r->net->layers[i];
        assert_non_null(l);
        assert_true(l->u.bn.count == 4);
        int H, W, Cy;
        const float *y = camo_net_output(r->net, 0, &H, &W, &Cy);
        assert_int_equal(Cy, C);
        /* this replica's rows of the 4-row reference */
        bn_ref ref = REF4;
        ref.y = REF4_Y + 2 * k * C;
        double err = check_stats(k ? "replica 1" : "replica 0", 4, 2, l->u.bn.mean,
                                 l->u.bn.invstd, layer_param(r->net, l, 3)->data, y, &ref);
        fprintf(stderr, "  replica %d: unbiased variance worst relative error %.3g\n", k, err);
    }
    for (int k = 0; k < 2; k++) {
        camo_net_free(reps[k].net);
        reps[k].be->destroy(reps[k].be);
        comms[k]->destroy(comms[k]);
    }
}

int main(int argc, char **argv) {
    (void)argc;
    camo_cpu_env_reexec(argv); /* passive OpenMP waits: tests share 2 busy cores */
    cpu = camo_backend_cpu_create(2);
    if (camo_cuda_device_count() > 0 && !(gpu = camo_backend_cuda_create(0)))
        fprintf(stderr, "GPU present but unusable: %s\n", camo_last_error());
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ops),
        cmocka_unit_test(test_sync_replicas),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    if (gpu) gpu->destroy(gpu);
    cpu->destroy(cpu);
    return rc;
}
