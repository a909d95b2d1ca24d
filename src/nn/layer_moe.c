/* layer_moe.c: mixture of experts (moe.h, docs/models.md "Mixture of experts").
 * A config `moe` block expands (net_parse.c) into a global average pool, a linear gate to
 * K logits, and three primitives of this file:
 *   moe_router   logits (N,1,1,K) -> dense gate weights (N,1,1,K): softmax, the top_k
 *                largest kept and renormalised, 0 for the others; the load-balancing loss
 *                enters its backward;
 *   moe_dispatch one per expert: copies the images routed to expert e to the front of its
 *                output and sets routed_rows, so the expert's layers (rows_from) run on
 *                those images only, forward and backward (net.c skips an idle expert);
 *   moe_combine  out[i] = sum over the experts e of image i of w[i,e] * expert_e(x_i).
 * Routing is decided on the host from the downloaded logits (K floats an image): the same
 * code and tie rule on every backend, and net.c needs the routed counts on the host anyway.
 * It depends on the image alone, so every replica count routes alike. */
#include "layer.h"
#include "moe.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"

typedef struct camo_moe_state {
    int N, K;
    /* router: the last forward's n images (host) */
    float *h;              /* (N*K) logits as downloaded; backward: gradients */
    double *p;             /* (N*K) softmax */
    float *w;              /* (N*K) renormalised gate weights, 0 where not selected */
    unsigned char *sel;    /* (N*K) selected */
    float *dev;            /* backend (max(N*K, 2K)): uploads and the sync-BN sums */
    double *counts, *psum; /* (K) routings and probability sums of the last training
                              forward; global under sync-BN */
    double rows;           /* images they were taken over */
    double norm;           /* balancing gradient: the loss's norm_images; 0 = none */
    double *use, use_total, bal_sum; /* since the last stats reset */
    int bal_n;
    /* dispatch */
    int *idx;              /* (N) host copy of the routed images */
} camo_moe_state;

/* ---- the routing rule and the balancing loss (pure functions, moe.h) ---- */

void camo_moe_route(int K, int top_k, const float *logits, double *p, float *w,
                    unsigned char *sel) {
    double mx = logits[0], s = 0;
    for (int e = 1; e < K; e++) mx = fmax(mx, logits[e]);
    for (int e = 0; e < K; e++) s += p[e] = exp((double)logits[e] - mx);
    for (int e = 0; e < K; e++) { p[e] /= s; sel[e] = 0; }
    double kept = 0;
    for (int t = 0; t < top_k; t++) { /* k passes: K <= 7, and the tie rule stays plain */
        int best = -1;
        for (int e = 0; e < K; e++)
            if (!sel[e] && (best < 0 || p[e] > p[best])) best = e; /* strict: lower wins */
        sel[best] = 1;
        kept += p[best];
    }
    for (int e = 0; e < K; e++) w[e] = sel[e] ? (float)(p[e] / kept) : 0.0f;
}

double camo_moe_balance(int K, int top_k, double n, const double *counts, const double *psum) {
    if (n <= 0) return NAN;
    double s = 0;
    for (int e = 0; e < K; e++) s += counts[e] / (n * top_k) * (psum[e] / n);
    return K * s;
}

/* ---- shared ---- */

static void state_free(camo_moe_state *st) {
    if (!st) return;
    free(st->h); free(st->p); free(st->w); free(st->sel);
    free(st->counts); free(st->psum); free(st->use); free(st->idx);
    free(st);
}

static void moe_release(camo_net *net, camo_layer *l) {
    if (l->u.moe.st) LAYER_DROP(net, l->u.moe.st->dev);
    state_free(l->u.moe.st);
    l->u.moe.st = NULL;
    LAYER_DROP(net, l->u.moe.idx);
}

static camo_moe_state *router_state(const camo_net *net, const camo_layer *l) {
    return net->layers[l->u.moe.router].u.moe.st;
}

/* the dispatch layer of the expert whose last layer is input k of a combine */
static const camo_layer *expert_dispatch(const camo_net *net, const camo_layer *l, int k) {
    return &net->layers[net->layers[l->in[k]].rows_from - 1];
}

static double moe_no_flops(const camo_net *net, const camo_layer *l) {
    (void)net, (void)l;
    return 0;
}

/* ---- router ---- */

static int router_infer(camo_net *net, camo_layer *l) {
    int H, W, C, K = l->u.moe.experts, N = net->N;
    layer_input_shape(net, l, 0, &H, &W, &C);
    if (H != 1 || W != 1 || C != K) {
        CAMO_ERR("%s: layer '%s': the router takes (1, 1, %d) gate logits, got %dx%dx%d",
                 l->where, l->name, K, H, W, C);
        return -1;
    }
    l->H = l->W = 1;
    moe_release(net, l);
    camo_moe_state *st = camo_calloc(1, sizeof *st);
    st->N = N, st->K = K;
    st->h = camo_calloc((size_t)N * K, sizeof *st->h);
    st->p = camo_calloc((size_t)N * K, sizeof *st->p);
    st->w = camo_calloc((size_t)N * K, sizeof *st->w);
    st->sel = camo_calloc((size_t)N * K, 1);
    st->counts = camo_calloc((size_t)K, sizeof(double));
    st->psum = camo_calloc((size_t)K, sizeof(double));
    st->use = camo_calloc((size_t)K, sizeof(double));
    st->dev = layer_alloc(net, (size_t)CAMO_MAX(N, 2) * K * sizeof(float));
    l->u.moe.st = st;
    return 0;
}

/* The routings and probability sums of a training forward, summed over the replicas under
 * sync-BN (net->bn_sync: in a ghost pass this replica adds nothing), and the statistics
 * metrics.jsonl reports. */
static void router_statistics(camo_net *net, camo_layer *l, int n) {
    camo_moe_state *st = l->u.moe.st;
    int K = st->K, k = l->u.moe.top_k;
    for (int e = 0; e < K; e++) st->counts[e] = st->psum[e] = 0;
    for (int i = 0; i < n; i++)
        for (int e = 0; e < K; e++) {
            st->counts[e] += st->sel[i * K + e];
            st->psum[e] += st->p[i * K + e];
        }
    st->rows = n;
    if (net->bn_sync) { /* float sums: counts are exact integers below 2^24 */
        float buf[2 * CAMO_MOE_MAX_EXPERTS];
        for (int e = 0; e < K; e++) buf[e] = (float)st->counts[e], buf[K + e] = (float)st->psum[e];
        net->be->upload(net->be, st->dev, buf, 2 * (size_t)K * sizeof(float));
        net->bn_sync(net->bn_sync_ctx, st->dev, 2 * (size_t)K, &st->rows);
        net->be->download(net->be, buf, st->dev, 2 * (size_t)K * sizeof(float));
        for (int e = 0; e < K; e++) st->counts[e] = buf[e], st->psum[e] = buf[K + e];
    }
    if (st->rows <= 0) return;
    for (int e = 0; e < K; e++) st->use[e] += st->counts[e];
    st->use_total += st->rows * k;
    st->bal_sum += camo_moe_balance(K, k, st->rows, st->counts, st->psum);
    st->bal_n++;
}

static void router_forward(camo_net *net, camo_layer *l, int n, int training) {
    camo_moe_state *st = l->u.moe.st;
    int K = st->K;
    size_t bytes = (size_t)n * K * sizeof(float);
    net->be->download(net->be, st->h, layer_input(net, l, 0), bytes);
    for (int i = 0; i < n; i++)
        camo_moe_route(K, l->u.moe.top_k, st->h + i * K, st->p + i * K, st->w + i * K,
                       st->sel + i * K);
    net->be->upload(net->be, l->out, st->w, bytes);
    st->norm = 0;
    st->rows = 0;
    if (training == 1) router_statistics(net, l, n); /* not in evaluation */
}

/* Through the renormalisation (image i, selected set S, s = sum_S p):
 *   dL/dp_j = (g_j - sum_{l in S} g_l w_l) / s for j in S, 0 otherwise (g = dL/dw);
 * the balancing loss adds balance_weight * K * f_j / norm to every dL/dp_j (f: the
 * forward's routed fractions, constants: they change only by jumps); then the softmax:
 *   dL/dz_j = p_j (dL/dp_j - sum_l p_l dL/dp_l). */
static void router_backward(camo_net *net, camo_layer *l, int n) {
    camo_moe_state *st = l->u.moe.st;
    float *din = layer_input_grad(net, l, 0);
    if (!din) return;
    int K = st->K, k = l->u.moe.top_k;
    double a[CAMO_MOE_MAX_EXPERTS] = {0};
    if (st->norm > 0 && l->u.moe.balance_weight > 0 && st->rows > 0)
        for (int e = 0; e < K; e++)
            a[e] = l->u.moe.balance_weight * K * (st->counts[e] / (st->rows * k)) / st->norm;
    size_t bytes = (size_t)n * K * sizeof(float);
    net->be->download(net->be, st->h, l->dout, bytes);
    for (int i = 0; i < n; i++) {
        float *g = st->h + i * K;
        const double *p = st->p + i * K;
        const float *w = st->w + i * K;
        const unsigned char *sel = st->sel + i * K;
        double s = 0, t = 0, u = 0, dp[CAMO_MOE_MAX_EXPERTS];
        for (int e = 0; e < K; e++)
            if (sel[e]) s += p[e], t += (double)g[e] * w[e];
        for (int e = 0; e < K; e++) {
            dp[e] = (sel[e] ? (g[e] - t) / s : 0) + a[e];
            u += p[e] * dp[e];
        }
        for (int e = 0; e < K; e++) g[e] = (float)(p[e] * (dp[e] - u));
    }
    net->be->upload(net->be, st->dev, st->h, bytes);
    net->be->axpy(net->be, (size_t)n * K, 1.0f, st->dev, din);
}

static double router_flops(const camo_net *net, const camo_layer *l) {
    (void)net;
    return 8.0 * l->u.moe.experts; /* softmax, selection, renormalisation */
}

const camo_layer_ops moe_router_layer_ops = {
    .infer = router_infer, .forward = router_forward, .backward = router_backward,
    .flops = router_flops, .release = moe_release, .saves = layer_saves_nothing,
};

/* ---- dispatch ---- */

static int dispatch_infer(camo_net *net, camo_layer *l) {
    int C;
    layer_input_shape(net, l, 0, &l->H, &l->W, &C);
    moe_release(net, l);
    l->u.moe.st = camo_calloc(1, sizeof *l->u.moe.st);
    l->u.moe.st->idx = camo_calloc((size_t)net->N, sizeof(int));
    l->u.moe.idx = layer_alloc(net, (size_t)net->N * sizeof(int));
    l->routed_rows = 0;
    return 0;
}

static void dispatch_forward(camo_net *net, camo_layer *l, int n, int training) {
    (void)training;
    const camo_moe_state *rs = router_state(net, l);
    int *idx = l->u.moe.st->idx, K = rs->K, e = l->u.moe.expert, m = 0;
    for (int i = 0; i < n; i++)
        if (rs->sel[i * K + e]) idx[m++] = i;
    l->routed_rows = m;
    if (!m) return;
    net->be->upload(net->be, l->u.moe.idx, idx, (size_t)m * sizeof(int));
    net->be->moe_gather(net->be, m, (size_t)l->H * l->W * l->C, l->out,
                        layer_input(net, l, 0), l->u.moe.idx);
}

static void dispatch_backward(camo_net *net, camo_layer *l, int n) {
    (void)n;
    float *din = layer_input_grad(net, l, 0);
    if (!din || !l->routed_rows) return;
    net->be->moe_scatter_add(net->be, l->routed_rows, (size_t)l->H * l->W * l->C, din,
                             l->dout, l->u.moe.idx);
}

const camo_layer_ops moe_dispatch_layer_ops = {
    .infer = dispatch_infer, .forward = dispatch_forward, .backward = dispatch_backward,
    .flops = moe_no_flops, .release = moe_release, .saves = layer_saves_nothing,
};

/* ---- combine ---- */

static int combine_infer(camo_net *net, camo_layer *l) {
    int H, W, C;
    layer_input_shape(net, l, 1, &l->H, &l->W, &C);
    for (int k = 2; k < l->n_in; k++) {
        layer_input_shape(net, l, k, &H, &W, &C);
        if (H == l->H && W == l->W && C == l->C) continue;
        CAMO_ERR("%s: layer '%s': expert %d gives %dx%dx%d, expert 0 %dx%dx%d (every expert "
                 "must give one shape)", l->where, l->name, k - 1, H, W, C, l->H, l->W, l->C);
        return -1;
    }
    return 0;
}

static void combine_forward(camo_net *net, camo_layer *l, int n, int training) {
    (void)training;
    camo_backend *be = net->be;
    size_t D = (size_t)l->H * l->W * l->C;
    be->zero(be, l->out, (size_t)n * D * sizeof(float));
    for (int e = 0; e + 1 < l->n_in; e++) {
        const camo_layer *d = expert_dispatch(net, l, e + 1);
        if (d->routed_rows)
            be->moe_combine_forward(be, d->routed_rows, D, l->u.moe.experts, e, l->out,
                                    layer_input(net, l, e + 1), layer_input(net, l, 0),
                                    d->u.moe.idx);
    }
}

static void combine_backward(camo_net *net, camo_layer *l, int n) {
    (void)n;
    camo_backend *be = net->be;
    size_t D = (size_t)l->H * l->W * l->C;
    float *dgate = layer_input_grad(net, l, 0);
    for (int e = 0; e + 1 < l->n_in; e++) {
        const camo_layer *d = expert_dispatch(net, l, e + 1);
        float *dy = layer_input_grad(net, l, e + 1);
        if (d->routed_rows && (dy || dgate))
            be->moe_combine_backward(be, d->routed_rows, D, l->u.moe.experts, e, dy, dgate,
                                     l->dout, layer_input(net, l, e + 1),
                                     layer_input(net, l, 0), d->u.moe.idx);
    }
}

static double combine_flops(const camo_net *net, const camo_layer *l) {
    (void)net;
    return 2.0 * l->u.moe.top_k * l->H * l->W * l->C;
}

const camo_layer_ops moe_combine_layer_ops = {
    .infer = combine_infer, .forward = combine_forward, .backward = combine_backward,
    .flops = combine_flops, .saves = layer_saves_inputs,
};

/* ---- what the loss and the trainer call (moe.h) ---- */

void camo_moe_set_balance_norm(camo_net *net, double norm_images) {
    for (int i = 0; i < net->n_layers; i++)
        if (net->layers[i].type == CAMO_LAYER_MOE_ROUTER && net->layers[i].u.moe.st)
            net->layers[i].u.moe.st->norm = norm_images;
}

static const camo_layer *nth_router(const camo_net *net, int which) {
    for (int i = 0; i < net->n_layers; i++)
        if (net->layers[i].type == CAMO_LAYER_MOE_ROUTER && which-- == 0) return &net->layers[i];
    return NULL;
}

int camo_moe_stats(const camo_net *net, int which, double *balance_loss, double *usage) {
    const camo_layer *l = nth_router(net, which);
    if (!l || !l->u.moe.st) return 0;
    const camo_moe_state *st = l->u.moe.st;
    *balance_loss = st->bal_n ? st->bal_sum / st->bal_n : NAN;
    for (int e = 0; e < st->K; e++)
        usage[e] = st->use_total > 0 ? st->use[e] / st->use_total : NAN;
    return st->K;
}

void camo_moe_stats_reset(camo_net *net) {
    for (int i = 0; i < net->n_layers; i++) {
        camo_moe_state *st = net->layers[i].u.moe.st;
        if (net->layers[i].type != CAMO_LAYER_MOE_ROUTER || !st) continue;
        memset(st->use, 0, (size_t)st->K * sizeof(double));
        st->use_total = st->bal_sum = 0;
        st->bal_n = 0;
    }
}

void camo_moe_log_json(FILE *f, camo_net *net) {
    double bal, use[CAMO_MOE_MAX_EXPERTS];
    int first = 1;
    for (int r = 0, K; (K = camo_moe_stats(net, r, &bal, use)) > 0; r++) {
        if (isnan(bal)) continue;
        const char *name = nth_router(net, r)->name, *dot = strrchr(name, '.');
        fprintf(f, "%s{\"layer\":\"%.*s\",\"balance_loss\":%.6g,\"usage\":[",
                first ? ",\"moe\":[" : ",", (int)(dot ? dot - name : (long)strlen(name)), name,
                bal);
        for (int e = 0; e < K; e++) fprintf(f, "%s%.6g", e ? "," : "", use[e]);
        fputs("]}", f);
        first = 0;
    }
    if (!first) fputc(']', f);
    camo_moe_stats_reset(net);
}

int camo_moe_check_sync_bn(const camo_net *net) {
    for (int i = 0; i < net->n_layers; i++) {
        const camo_layer *l = &net->layers[i];
        if (l->type != CAMO_LAYER_BATCHNORM || !l->rows_from) continue;
        CAMO_ERR("%s: layer '%s': a batchnorm inside a mixture-of-experts expert cannot use "
                 "parallel.sync_bn (a replica on which the expert gets no image would leave "
                 "the others waiting in its collective); use layernorm in experts, or set "
                 "parallel.sync_bn = false", l->where, l->name);
        return -1;
    }
    return 0;
}
