/* bench_conv.c: `make bench`: the CPU backend's convolutions on unet_s's training shapes.
 * For every conv layer of conf/models/unet_s.cfg at 96x96 batch 16 (conf/demo.cfg) and at
 * 320x320 batch 4, times forward, backward data and backward filter, and prints the achieved
 * GFLOP/s per layer and in total, with its ratio to OpenBLAS's own multi-threaded sgemm on a
 * square 1024 problem measured in the same run (the practical ceiling of a gemm-based conv).
 * FLOPs: 2 * multiply-adds per op (bias excluded). Usage: bench_conv [threads] [model.cfg] */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "core/common.h"
#include "nn/net.h"
#include "nn/layer.h"

#define MIN_SECONDS 0.25 /* per op: repeat until at least this long */

typedef struct { double seconds, flops; } tally;

static void fill(float *x, size_t n, uint64_t key) {
    for (size_t i = 0; i < n; i++) x[i] = 2.0f * camo_rand_uniform(key, i) - 1.0f;
}

/* OpenBLAS alone, on all its threads: C = A B, n x n x n, best of 3 */
static double sgemm_gflops(int threads, int n) {
    float *a = camo_malloc((size_t)n * n * 4), *b = camo_malloc((size_t)n * n * 4);
    float *c = camo_malloc((size_t)n * n * 4);
    fill(a, (size_t)n * n, 1);
    fill(b, (size_t)n * n, 2);
    openblas_set_num_threads(threads);
    double best = 1e30;
    for (int rep = 0; rep < 4; rep++) { /* the first is a warm-up */
        double t0 = camo_now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f,
                    c, n);
        double t = camo_now() - t0;
        if (rep && t < best) best = t;
    }
    openblas_set_num_threads(1); /* the backend's setting (backend_cpu.c) */
    free(a), free(b), free(c);
    return 2.0 * n * n * n / best / 1e9;
}

typedef struct { camo_backend *be; camo_conv_desc d; float *in, *w, *out, *din, *dw; } conv_args;

static void run_op(const conv_args *a, int op) {
    if (op == 0) a->be->conv2d_forward(a->be, &a->d, a->out, a->in, a->w, NULL);
    else if (op == 1) a->be->conv2d_backward_data(a->be, &a->d, a->din, a->out, a->w);
    else a->be->conv2d_backward_filter(a->be, &a->d, a->dw, NULL, a->out, a->in);
}

/* seconds per call of op after one warm-up call */
static double time_op(const conv_args *a, int op) {
    run_op(a, op);
    int reps = 0;
    double t0 = camo_now(), t;
    do {
        run_op(a, op);
        reps++;
        t = camo_now() - t0;
    } while (t < MIN_SECONDS);
    return t / reps;
}

/* Every conv layer of `cfg` at N x S x S; adds to *sum, prints one line per layer. */
static int bench_shape(camo_backend *be, const char *cfg, int N, int S, double ref,
                       tally *sum) {
    camo_net *net = camo_net_load(cfg, be, 0);
    if (!net || camo_net_set_input_size(net, 1, S, S) != 0) {
        fprintf(stderr, "bench_conv: %s\n", camo_last_error());
        camo_net_free(net);
        return -1;
    }
    printf("\n%s at %dx%d, batch %d\n", cfg, S, S, N);
    printf("%-14s %-22s %9s %9s %9s %9s %7s\n", "layer", "in -> out", "fwd", "bwd-data",
           "bwd-filt", "all", "/sgemm");
    tally all = {0, 0};
    for (int i = 0; i < net->n_layers; i++) {
        camo_layer *l = &net->layers[i];
        if (l->type != CAMO_LAYER_CONV2D) continue;
        conv_args a = {.be = be, .d = l->u.conv.d};
        a.d.N = N;
        const camo_conv_desc *d = &a.d;
        size_t nin = (size_t)N * d->H * d->W * d->C, nout = (size_t)N * d->P * d->Q * d->K;
        size_t nw = (size_t)d->K * d->R * d->S * (d->C / d->groups);
        a.in = be->alloc(be, nin * 4), a.din = be->alloc(be, nin * 4);
        a.out = be->alloc(be, nout * 4), a.w = be->alloc(be, nw * 4), a.dw = be->alloc(be, nw * 4);
        if (!a.in || !a.din || !a.out || !a.w || !a.dw) CAMO_DIE("%s", camo_last_error());
        fill(a.in, nin, 3);
        fill(a.w, nw, 4);
        double macs = (double)nout * d->R * d->S * (d->C / d->groups), g[3] = {0, 0, 0};
        double layer_s = 0, layer_f = 0;
        int first = l->in[0] < 0; /* training computes no gradient for the image itself */
        for (int op = 0; op < 3; op++) {
            if (op == 1 && first) continue;
            double t = time_op(&a, op);
            g[op] = 2 * macs / t / 1e9;
            layer_s += t;
            layer_f += 2 * macs;
        }
        char shape[64], bd[16] = "-";
        snprintf(shape, sizeof shape, "%dx%dx%d -> %dx%dx%d", d->H, d->W, d->C, d->P, d->Q, d->K);
        if (!first) snprintf(bd, sizeof bd, "%.1f", g[1]);
        printf("%-14s %-22s %9.1f %9s %9.1f %9.1f %7.2f\n", l->name, shape, g[0], bd, g[2],
               layer_f / layer_s / 1e9, layer_f / layer_s / 1e9 / ref);
        all.seconds += layer_s;
        all.flops += layer_f;
        be->free(be, a.in), be->free(be, a.din), be->free(be, a.out);
        be->free(be, a.w), be->free(be, a.dw);
    }
    printf("%-37s %39.1f %7.2f   (%.1f GFLOP in %.2f s per step)\n", "total (GFLOP/s)",
           all.flops / all.seconds / 1e9, all.flops / all.seconds / 1e9 / ref, all.flops / 1e9,
           all.seconds);
    sum->seconds += all.seconds;
    sum->flops += all.flops;
    camo_net_free(net);
    return 0;
}

int main(int argc, char **argv) {
    camo_cpu_env_reexec(argv);
    int threads = argc > 1 ? atoi(argv[1]) : 0;
    const char *cfg = argc > 2 ? argv[2] : "conf/models/unet_s.cfg";
    camo_backend *be = camo_backend_cpu_create(threads);
    threads = be->threads;
    double ref = sgemm_gflops(threads, 1024);
    const char *wait = getenv("OMP_WAIT_POLICY");
    printf("bench_conv: %d threads, OpenBLAS %s kernels, OMP_WAIT_POLICY=%s\n", threads,
           openblas_get_corename(), wait ? wait : "(unset)");
    printf("reference: OpenBLAS sgemm 1024^3 on %d threads: %.1f GFLOP/s\n", threads, ref);
    printf("columns: GFLOP/s of conv forward, backward data, backward filter, all three; the\n"
           "last is the ratio of 'all' to the reference sgemm\n");
    tally sum = {0, 0};
    if (bench_shape(be, cfg, 16, 96, ref, &sum) || bench_shape(be, cfg, 4, 320, ref, &sum)) {
        be->destroy(be);
        return 1;
    }
    printf("\nall shapes: %.1f GFLOP/s = %.2f x OpenBLAS sgemm (%.1f GFLOP/s)\n",
           sum.flops / sum.seconds / 1e9, sum.flops / sum.seconds / 1e9 / ref, ref);
    be->destroy(be);
    return 0;
}
