/* layer_norm.c: batch norm (train/eval, running statistics, optional sync across
 * replicas through net->bn_sync) and layer norm over channels. */
#include "layer.h"

#include "core/common.h"

/* ---- batch norm: params weight, bias; buffers running_mean, running_var; counter ---- */

static int batchnorm_infer(camo_net *net, camo_layer *l) {
    int C;
    layer_input_shape(net, l, 0, &l->H, &l->W, &C);
    if (!l->u.bn.mean) {
        l->u.bn.mean = layer_alloc(net, (size_t)C * sizeof(float));
        l->u.bn.invstd = layer_alloc(net, (size_t)C * sizeof(float));
        l->u.bn.stats = layer_alloc(net, 2 * (size_t)C * sizeof(float));
    }
    return 0;
}

static void batchnorm_release(camo_net *net, camo_layer *l) {
    LAYER_DROP(net, l->u.bn.mean);
    LAYER_DROP(net, l->u.bn.invstd);
    LAYER_DROP(net, l->u.bn.stats);
}

/* Batch mean (l->u.bn.mean), sum of squared deviations (stats[C:2C]) and row count, global
 * under sync-BN, in two passes: E[x^2] - mean^2 cancels when mean^2 >> var (few rows after
 * global pooling). Every replica, ghost passes included, makes the same two bn_sync calls;
 * both pass a count (a forward call): with NULL (backward) the hook would hand a ghost zero
 * sums back, variance 0, instead of the global statistics. */
static void batchnorm_batch_stats(camo_net *net, camo_layer *l, int M, const float *x) {
    camo_backend *be = net->be;
    int C = l->C;
    float *stats = l->u.bn.stats;
    double count = M, count2 = M;
    be->bn_stats(be, M, C, stats, x, NULL);
    if (net->bn_sync) net->bn_sync(net->bn_sync_ctx, stats, (size_t)C, &count);
    be->bn_mean(be, C, stats, count, l->u.bn.mean);
    be->bn_stats(be, M, C, stats, x, l->u.bn.mean);
    if (net->bn_sync) net->bn_sync(net->bn_sync_ctx, stats + C, (size_t)C, &count2);
    l->u.bn.count = count;
}

static void batchnorm_forward(camo_net *net, camo_layer *l, int n, int training) {
    camo_backend *be = net->be;
    int C = l->C, M = n * l->H * l->W;
    float *x = layer_input(net, l, 0);
    camo_param *rm = layer_param(net, l, 2), *rv = layer_param(net, l, 3);
    if (training == CAMO_FWD_RECOMPUTE) { /* the statistics of the forward being redone */
        be->bn_apply(be, M, C, l->out, x, l->u.bn.mean, l->u.bn.invstd,
                     layer_param(net, l, 0)->data, layer_param(net, l, 1)->data);
        return;
    }
    l->u.bn.eval_stats = !training;
    if (training) {
        batchnorm_batch_stats(net, l, M, x);
        be->bn_finalize(be, C, l->u.bn.stats, l->u.bn.count, l->u.bn.eps, l->u.bn.momentum,
                        l->u.bn.mean, l->u.bn.invstd, rm->data, rv->data);
        l->u.bn.num_batches++;
    } else {
        be->bn_eval_params(be, C, rm->data, rv->data, l->u.bn.eps, l->u.bn.mean,
                           l->u.bn.invstd);
    }
    be->bn_apply(be, M, C, l->out, x, l->u.bn.mean, l->u.bn.invstd,
                 layer_param(net, l, 0)->data, layer_param(net, l, 1)->data);
}

static void batchnorm_backward(camo_net *net, camo_layer *l, int n) {
    camo_backend *be = net->be;
    int C = l->C, M = n * l->H * l->W;
    float *x = layer_input(net, l, 0);
    float *dgamma = layer_param_grad(net, l, 0), *dbeta = layer_param_grad(net, l, 1);
    float *din = layer_input_grad(net, l, 0);
    const float *gamma = layer_param(net, l, 0)->data;
    if (l->u.bn.eval_stats) { /* frozen statistics (eval-mode forward): a per-channel affine */
        if (dgamma || dbeta) {
            be->bn_backward_reduce(be, M, C, l->u.bn.stats, l->dout, x, l->u.bn.mean,
                                   l->u.bn.invstd);
            if (dbeta) be->axpy(be, (size_t)C, 1.0f, l->u.bn.stats, dbeta);
            if (dgamma) be->axpy(be, (size_t)C, 1.0f, l->u.bn.stats + C, dgamma);
        }
        if (din) be->bn_backward_data_frozen(be, M, C, din, l->dout, l->u.bn.invstd, gamma);
        return;
    }
    /* stats is reused for [sum dy, sum dy*xhat]: the forward sums are no longer needed */
    float *sums = l->u.bn.stats;
    be->bn_backward_reduce(be, M, C, sums, l->dout, x, l->u.bn.mean, l->u.bn.invstd);
    /* parameter gradients are local sums: the gradient all-reduce adds the replicas */
    if (dbeta) be->axpy(be, (size_t)C, 1.0f, sums, dbeta);
    if (dgamma) be->axpy(be, (size_t)C, 1.0f, sums + C, dgamma);
    if (!din) return;
    double count = l->u.bn.count;
    if (net->bn_sync) net->bn_sync(net->bn_sync_ctx, sums, 2 * (size_t)C, NULL);
    be->bn_backward_data(be, M, C, din, l->dout, x, l->u.bn.mean, l->u.bn.invstd, gamma, sums,
                         count);
}

static double batchnorm_flops(const camo_net *net, const camo_layer *l) {
    (void)net;
    return 4.0 * l->H * l->W * l->C;
}

const camo_layer_ops batchnorm_layer_ops = {
    .infer = batchnorm_infer, .forward = batchnorm_forward, .backward = batchnorm_backward,
    .flops = batchnorm_flops, .release = batchnorm_release, .saves = layer_saves_input0,
    .recomputable = 1,
};

/* ---- layer norm over the channels of each pixel: params weight, bias ---- */

static int layernorm_infer(camo_net *net, camo_layer *l) {
    int C;
    layer_input_shape(net, l, 0, &l->H, &l->W, &C);
    LAYER_DROP(net, l->u.ln.mean); /* per pixel: the input size may have changed */
    LAYER_DROP(net, l->u.ln.rstd);
    size_t rows = (size_t)net->N * l->H * l->W;
    l->u.ln.mean = layer_alloc(net, rows * sizeof(float));
    l->u.ln.rstd = layer_alloc(net, rows * sizeof(float));
    if (!l->u.ln.dscratch) l->u.ln.dscratch = layer_alloc(net, 2 * (size_t)C * sizeof(float));
    return 0;
}

static void layernorm_release(camo_net *net, camo_layer *l) {
    LAYER_DROP(net, l->u.ln.mean);
    LAYER_DROP(net, l->u.ln.rstd);
    LAYER_DROP(net, l->u.ln.dscratch);
}

static void layernorm_forward(camo_net *net, camo_layer *l, int n, int training) {
    (void)training;
    net->be->layernorm_forward(net->be, n * l->H * l->W, l->C, l->out, l->u.ln.mean,
                               l->u.ln.rstd, layer_input(net, l, 0),
                               layer_param(net, l, 0)->data, layer_param(net, l, 1)->data,
                               l->u.ln.eps);
}

static void layernorm_backward(camo_net *net, camo_layer *l, int n) {
    float *din = layer_input_grad(net, l, 0);
    float *dg = layer_param_grad(net, l, 0), *db = layer_param_grad(net, l, 1);
    if (!din && !dg && !db) return;
    /* the op computes all three gradients: unneeded ones go to buffers nobody reads (an
     * untrained input's gradient buffer, the layer's scratch for frozen parameters) */
    if (!din) din = layer_input_grad_raw(net, l, 0);
    if (!dg) dg = l->u.ln.dscratch;
    if (!db) db = l->u.ln.dscratch + l->C;
    net->be->layernorm_backward(net->be, n * l->H * l->W, l->C, din, dg, db, l->dout,
                                layer_input(net, l, 0), l->u.ln.mean, l->u.ln.rstd,
                                layer_param(net, l, 0)->data);
}

static double layernorm_flops(const camo_net *net, const camo_layer *l) {
    (void)net;
    return 8.0 * l->H * l->W * l->C;
}

const camo_layer_ops layernorm_layer_ops = {
    .infer = layernorm_infer, .forward = layernorm_forward, .backward = layernorm_backward,
    .flops = layernorm_flops, .release = layernorm_release, .saves = layer_saves_input0,
    .recomputable = 1,
};
