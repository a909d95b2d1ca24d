/* test_cpu_pool_norm.c: CPU batch norm, layer norm, pooling, adaptive average pooling and
 * bilinear resize against naive double-precision references (PyTorch's formulas written out
 * directly), and every backward op against central differences of f = sum(y * dy).
 * fp32 tolerances: forward 1e-5..1e-4 relative; gradients 1e-2 relative (floor 0.1..1). */
#include "backend/backend.h"
#include "core/common.h"

#include "test_util.h"

TU_CPU_BACKEND_FIXTURE(2)

/* x (n) = distinct values spaced 0.05 apart, shuffled, plus `offset`: no max-pool ties, and
 * a 1e-2 perturbation never reorders a window */
static void fill_distinct(float *x, size_t n, uint32_t seed, float offset) {
    float *r = malloc(n * sizeof(float));
    tu_fill(r, n, seed, 0, 1);
    for (size_t i = 0; i < n; i++) x[i] = (float)i;
    for (size_t i = n; i > 1; i--) { /* Fisher-Yates */
        size_t j = (size_t)(r[i - 1] * (float)i) % i;
        float t = x[i - 1];
        x[i - 1] = x[j];
        x[j] = t;
    }
    for (size_t i = 0; i < n; i++) x[i] = 0.05f * (x[i] - (float)n / 2) + offset;
    free(r);
}

/* ---- batch norm ---- */

enum { BN_M = 70, BN_C = 5 }; /* 2 images of 7x5 pixels */

typedef struct {
    float x[BN_M * BN_C], y[BN_M * BN_C], dy[BN_M * BN_C], dx[BN_M * BN_C];
    float gamma[BN_C], beta[BN_C], rm[BN_C], rv[BN_C];
    float stats[2 * BN_C], mean[BN_C], invstd[BN_C], sums[2 * BN_C];
    int eval;
} bn_ctx;

/* the training forward's statistics: sum x -> mean -> sum (x - mean)^2 -> finalize */
static void bn_batch_stats(const float *x, int M, float *stats, float *mean, float *invstd,
                           float *rm, float *rv) {
    be->bn_stats(be, M, BN_C, stats, x, NULL);
    be->bn_mean(be, BN_C, stats, M, mean);
    be->bn_stats(be, M, BN_C, stats, x, mean);
    be->bn_finalize(be, BN_C, stats, M, 1e-5f, 0.1f, mean, invstd, rm, rv);
}

/* training: stats -> finalize -> apply; eval: eval_params -> apply */
static void bn_fwd(void *p) {
    bn_ctx *b = p;
    if (b->eval) {
        be->bn_eval_params(be, BN_C, b->rm, b->rv, 1e-5f, b->mean, b->invstd);
    } else {
        bn_batch_stats(b->x, BN_M, b->stats, b->mean, b->invstd, NULL, NULL);
    }
    be->bn_apply(be, BN_M, BN_C, b->y, b->x, b->mean, b->invstd, b->gamma, b->beta);
}

static void bn_init(bn_ctx *b, int eval) {
    memset(b, 0, sizeof *b);
    b->eval = eval;
    tu_fill(b->x, BN_M * BN_C, 20, -1, 1);
    for (int i = 0; i < BN_M * BN_C; i++) b->x[i] += (float)(i % BN_C) - 1.0f; /* means */
    tu_fill(b->dy, BN_M * BN_C, 21, -1, 1);
    tu_fill(b->gamma, BN_C, 22, 0.5f, 1.5f);
    tu_fill(b->beta, BN_C, 23, -1, 1);
    tu_fill(b->rm, BN_C, 24, -1, 1);
    tu_fill(b->rv, BN_C, 25, 0.5f, 2);
}

static void test_bn_train_forward(void **state) {
    (void)state;
    bn_ctx b;
    bn_init(&b, 0);
    float rm[BN_C], rv[BN_C], ry[BN_M * BN_C], rmean[BN_C], rinv[BN_C];
    memcpy(rm, b.rm, sizeof rm);
    memcpy(rv, b.rv, sizeof rv);
    for (int c = 0; c < BN_C; c++) { /* two-pass double reference */
        double s = 0, v = 0;
        for (int m = 0; m < BN_M; m++) s += b.x[m * BN_C + c];
        double mu = s / BN_M;
        for (int m = 0; m < BN_M; m++) v += (b.x[m * BN_C + c] - mu) * (b.x[m * BN_C + c] - mu);
        v /= BN_M;
        rmean[c] = (float)mu;
        rinv[c] = (float)(1 / sqrt(v + 1e-5));
        for (int m = 0; m < BN_M; m++)
            ry[m * BN_C + c] = (float)((b.x[m * BN_C + c] - mu) * rinv[c] * b.gamma[c] + b.beta[c]);
        rm[c] = (float)(0.9 * rm[c] + 0.1 * mu);
        rv[c] = (float)(0.9 * rv[c] + 0.1 * v * BN_M / (BN_M - 1)); /* unbiased */
    }
    bn_batch_stats(b.x, BN_M, b.stats, b.mean, b.invstd, b.rm, b.rv);
    be->bn_apply(be, BN_M, BN_C, b.y, b.x, b.mean, b.invstd, b.gamma, b.beta);
    TU_ASSERT_CLOSE(b.mean, rmean, BN_C, 1.0, 1e-5, "bn mean");
    TU_ASSERT_CLOSE(b.invstd, rinv, BN_C, 1.0, 1e-5, "bn invstd");
    TU_ASSERT_CLOSE(b.y, ry, BN_M * BN_C, 1.0, 1e-5, "bn y");
    TU_ASSERT_CLOSE(b.rm, rm, BN_C, 1.0, 1e-6, "bn running_mean");
    TU_ASSERT_CLOSE(b.rv, rv, BN_C, 1.0, 1e-5, "bn running_var");

    /* sync-BN: each pass's sums of two replicas' halves, added, give the same statistics */
    float s1[2 * BN_C], s2[2 * BN_C], mean2[BN_C], inv2[BN_C];
    be->bn_stats(be, 30, BN_C, s1, b.x, NULL);
    be->bn_stats(be, BN_M - 30, BN_C, s2, b.x + 30 * BN_C, NULL);
    for (int i = 0; i < BN_C; i++) s1[i] += s2[i];
    be->bn_mean(be, BN_C, s1, BN_M, mean2);
    be->bn_stats(be, 30, BN_C, s1, b.x, mean2);
    be->bn_stats(be, BN_M - 30, BN_C, s2, b.x + 30 * BN_C, mean2);
    for (int i = BN_C; i < 2 * BN_C; i++) s1[i] += s2[i];
    be->bn_finalize(be, BN_C, s1, BN_M, 1e-5f, 0.1f, mean2, inv2, NULL, NULL);
    TU_ASSERT_CLOSE(mean2, rmean, BN_C, 1.0, 1e-5, "bn split mean");
    TU_ASSERT_CLOSE(inv2, rinv, BN_C, 1.0, 1e-5, "bn split invstd");
}

/* reduce -> backward_data into b->dx; returns via b->sums = [dbeta, dgamma] */
static void bn_backward(bn_ctx *b) {
    be->bn_backward_reduce(be, BN_M, BN_C, b->sums, b->dy, b->x, b->mean, b->invstd);
    if (b->eval)
        be->bn_backward_data_frozen(be, BN_M, BN_C, b->dx, b->dy, b->invstd, b->gamma);
    else
        be->bn_backward_data(be, BN_M, BN_C, b->dx, b->dy, b->x, b->mean, b->invstd, b->gamma,
                             b->sums, BN_M);
}

static void check_bn_backward(int eval) {
    bn_ctx *b = malloc(sizeof *b);
    bn_init(b, eval);
    bn_fwd(b);
    bn_backward(b);
    float dgamma[BN_C], dbeta[BN_C], rg[BN_C], rb[BN_C];
    memcpy(dbeta, b->sums, sizeof dbeta);
    memcpy(dgamma, b->sums + BN_C, sizeof dgamma);
    for (int c = 0; c < BN_C; c++) { /* dgamma = sum dy * xhat, dbeta = sum dy */
        double sg = 0, sb = 0;
        for (int m = 0; m < BN_M; m++) {
            int i = m * BN_C + c;
            sg += (double)b->dy[i] * (b->x[i] - b->mean[c]) * b->invstd[c];
            sb += b->dy[i];
        }
        rg[c] = (float)sg;
        rb[c] = (float)sb;
    }
    TU_ASSERT_CLOSE(dgamma, rg, BN_C, 1.0, 1e-5, "bn dgamma = sum dy*xhat");
    TU_ASSERT_CLOSE(dbeta, rb, BN_C, 1.0, 1e-5, "bn dbeta = sum dy");
    size_t n = BN_M * BN_C;
    tu_fd_check(bn_fwd, b, b->x, n, b->y, b->dy, n, b->dx, 1e-2f, 0.1, 1e-2, "bn dx");
    tu_fd_check(bn_fwd, b, b->gamma, BN_C, b->y, b->dy, n, dgamma, 1e-2f, 1.0, 1e-2, "bn dgamma");
    tu_fd_check(bn_fwd, b, b->beta, BN_C, b->y, b->dy, n, dbeta, 1e-2f, 1.0, 1e-2, "bn dbeta");
    float *dx1 = malloc(n * sizeof(float)); /* backward accumulates: twice doubles dx */
    for (size_t i = 0; i < n; i++) dx1[i] = 2 * b->dx[i];
    bn_backward(b);
    TU_ASSERT_CLOSE(b->dx, dx1, n, 1.0, 1e-6, "bn dx accumulates");
    free(dx1);
    free(b);
}

static void test_bn_train_backward(void **state) {
    (void)state;
    check_bn_backward(0);
}

static void test_bn_eval(void **state) {
    (void)state;
    bn_ctx b;
    bn_init(&b, 1);
    bn_fwd(&b);
    float ry[BN_M * BN_C];
    for (int i = 0; i < BN_M * BN_C; i++) {
        int c = i % BN_C;
        ry[i] = (float)((b.x[i] - b.rm[c]) / sqrt((double)b.rv[c] + 1e-5) * b.gamma[c] +
                        b.beta[c]);
    }
    TU_ASSERT_CLOSE(b.y, ry, BN_M * BN_C, 1.0, 1e-5, "bn eval y");
    check_bn_backward(1);
}

/* ---- layer norm ---- */

enum { LN_M = 14, LN_C = 7 };

typedef struct {
    float x[LN_M * LN_C], y[LN_M * LN_C], dy[LN_M * LN_C], dx[LN_M * LN_C];
    float gamma[LN_C], beta[LN_C], dgamma[LN_C], dbeta[LN_C], mean[LN_M], rstd[LN_M];
} ln_ctx;

static void ln_fwd(void *p) {
    ln_ctx *l = p;
    be->layernorm_forward(be, LN_M, LN_C, l->y, l->mean, l->rstd, l->x, l->gamma, l->beta,
                          1e-5f);
}

static void ln_backward(ln_ctx *l) {
    be->layernorm_backward(be, LN_M, LN_C, l->dx, l->dgamma, l->dbeta, l->dy, l->x, l->mean,
                           l->rstd, l->gamma);
}

static void test_layernorm(void **state) {
    (void)state;
    ln_ctx l;
    memset(&l, 0, sizeof l);
    tu_fill(l.x, LN_M * LN_C, 30, -1, 3);
    tu_fill(l.dy, LN_M * LN_C, 31, -1, 1);
    tu_fill(l.gamma, LN_C, 32, 0.5f, 1.5f);
    tu_fill(l.beta, LN_C, 33, -1, 1);
    ln_fwd(&l);
    float ry[LN_M * LN_C], rmean[LN_M], rrstd[LN_M];
    for (int m = 0; m < LN_M; m++) {
        double s = 0, v = 0;
        for (int c = 0; c < LN_C; c++) s += l.x[m * LN_C + c];
        double mu = s / LN_C;
        for (int c = 0; c < LN_C; c++) v += (l.x[m * LN_C + c] - mu) * (l.x[m * LN_C + c] - mu);
        double rs = 1 / sqrt(v / LN_C + 1e-5);
        rmean[m] = (float)mu;
        rrstd[m] = (float)rs;
        for (int c = 0; c < LN_C; c++)
            ry[m * LN_C + c] = (float)((l.x[m * LN_C + c] - mu) * rs * l.gamma[c] + l.beta[c]);
    }
    TU_ASSERT_CLOSE(l.y, ry, LN_M * LN_C, 1.0, 1e-5, "ln y");
    TU_ASSERT_CLOSE(l.mean, rmean, LN_M, 1.0, 1e-6, "ln mean");
    TU_ASSERT_CLOSE(l.rstd, rrstd, LN_M, 1.0, 1e-5, "ln rstd");

    ln_backward(&l);
    size_t n = LN_M * LN_C;
    tu_fd_check(ln_fwd, &l, l.x, n, l.y, l.dy, n, l.dx, 1e-2f, 0.1, 1e-2, "ln dx");
    tu_fd_check(ln_fwd, &l, l.gamma, LN_C, l.y, l.dy, n, l.dgamma, 1e-2f, 1.0, 1e-2, "ln dgamma");
    tu_fd_check(ln_fwd, &l, l.beta, LN_C, l.y, l.dy, n, l.dbeta, 1e-2f, 1.0, 1e-2, "ln dbeta");
    float dx1[LN_M * LN_C], dg1[LN_C];
    for (size_t i = 0; i < n; i++) dx1[i] = 2 * l.dx[i];
    for (int c = 0; c < LN_C; c++) dg1[c] = 2 * l.dgamma[c];
    ln_backward(&l);
    TU_ASSERT_CLOSE(l.dx, dx1, n, 1.0, 1e-6, "ln dx accumulates");
    TU_ASSERT_CLOSE(l.dgamma, dg1, LN_C, 1.0, 1e-6, "ln dgamma accumulates");
}

/* ---- pooling ---- */

static camo_pool_desc mkpool(camo_pool_type type, int N, int H, int W, int C, int R, int S,
                             int sh, int sw, int ph, int pw, int include_pad) {
    camo_pool_desc d = {type, N, H, W, C, R, S, sh, sw, ph, pw, include_pad, 0, 0};
    return d;
}

static void test_pool_desc_finish(void **state) {
    (void)state;
    camo_pool_desc d = mkpool(CAMO_POOL_MAX, 1, 7, 5, 3, 3, 3, 2, 2, 1, 1, 1);
    assert_int_equal(camo_pool_desc_finish(&d), 0);
    assert_int_equal(d.P, 4); /* floor((7 + 2 - 3) / 2) + 1 */
    assert_int_equal(d.Q, 3);
    d = mkpool(CAMO_POOL_MAX, 1, 7, 5, 3, 2, 2, 2, 2, 0, 0, 1);
    assert_int_equal(camo_pool_desc_finish(&d), 0);
    assert_int_equal(d.P, 3); /* floor mode drops the last row */
    assert_int_equal(d.Q, 2);
    d = mkpool(CAMO_POOL_AVG, 1, 7, 5, 3, 3, 3, 1, 1, 2, 1, 1); /* pad 2 > 3/2 */
    assert_int_equal(camo_pool_desc_finish(&d), -1);
    d = mkpool(CAMO_POOL_AVG, 1, 7, 5, 3, 2, 2, 1, 1, 0, 1, 1); /* pad 1 = 2/2 is fine */
    assert_int_equal(camo_pool_desc_finish(&d), 0);
    assert_int_equal(d.Q, 6);
    d = mkpool(CAMO_POOL_MAX, 1, 2, 5, 3, 4, 2, 1, 1, 0, 0, 1); /* kernel 4 > 2 rows */
    assert_int_equal(camo_pool_desc_finish(&d), -1);
}

/* y, argmax from x: padding is -inf for max, counted only if include_pad for avg */
static void ref_pool(const camo_pool_desc *d, float *y, int *am, const float *x) {
    for (int n = 0; n < d->N; n++)
        for (int p = 0; p < d->P; p++)
            for (int q = 0; q < d->Q; q++)
                for (int c = 0; c < d->C; c++) {
                    double best = -INFINITY, sum = 0;
                    int arg = -1, cnt = 0;
                    for (int r = 0; r < d->R; r++)
                        for (int s = 0; s < d->S; s++) {
                            int h = p * d->stride_h - d->pad_h + r;
                            int w = q * d->stride_w - d->pad_w + s;
                            if (h < 0 || h >= d->H || w < 0 || w >= d->W) continue;
                            float v = x[((n * d->H + h) * d->W + w) * d->C + c];
                            if (v > best) best = v, arg = h * d->W + w;
                            sum += v;
                            cnt++;
                        }
                    int o = ((n * d->P + p) * d->Q + q) * d->C + c;
                    if (d->type == CAMO_POOL_MAX) {
                        y[o] = (float)best;
                        am[o] = arg;
                    } else {
                        y[o] = (float)(sum / (d->count_include_pad ? d->R * d->S : cnt));
                    }
                }
}

typedef struct {
    camo_pool_desc d;
    float *x, *y, *dy, *dx;
    int *am;
} pool_ctx;

static void pool_fwd(void *p) {
    pool_ctx *c = p;
    be->pool_forward(be, &c->d, c->y, c->am, c->x);
}

static void check_pool(camo_pool_desc d, float offset) {
    assert_int_equal(camo_pool_desc_finish(&d), 0);
    size_t nx = (size_t)d.N * d.H * d.W * d.C, ny = (size_t)d.N * d.P * d.Q * d.C;
    pool_ctx c = {d, tu_falloc(nx), tu_falloc(ny), tu_falloc(ny), tu_falloc(nx),
                  calloc(ny, sizeof(int))};
    float *ry = tu_falloc(ny);
    int *ram = calloc(ny, sizeof(int));
    fill_distinct(c.x, nx, 40, offset);
    tu_fill(c.dy, ny, 41, -1, 1);
    ref_pool(&c.d, ry, ram, c.x);
    pool_fwd(&c);
    TU_ASSERT_CLOSE(c.y, ry, ny, 1.0, 1e-6, "pool forward");
    if (d.type == CAMO_POOL_MAX) assert_memory_equal(c.am, ram, ny * sizeof(int));
    be->pool_backward(be, &c.d, c.dx, c.dy, c.am);
    tu_fd_check(pool_fwd, &c, c.x, nx, c.y, c.dy, ny, c.dx, 1e-2f, 1.0, 1e-2, "pool dx");
    free(c.x), free(c.y), free(c.dy), free(c.dx), free(c.am), free(ry), free(ram);
}

static void test_max_pool(void **state) {
    (void)state;
    check_pool(mkpool(CAMO_POOL_MAX, 2, 7, 5, 3, 3, 3, 2, 2, 1, 1, 1), 0);
    check_pool(mkpool(CAMO_POOL_MAX, 2, 7, 5, 3, 2, 2, 2, 2, 0, 0, 1), 0);
    check_pool(mkpool(CAMO_POOL_MAX, 1, 7, 5, 20, 3, 2, 1, 2, 1, 1, 1), 0); /* 2 ch blocks */
    /* all inputs negative: a padded zero must never win */
    check_pool(mkpool(CAMO_POOL_MAX, 2, 7, 5, 3, 3, 3, 1, 1, 1, 1, 1), -100);
    /* ties go to the first maximum in scan order, as in PyTorch */
    camo_pool_desc d = mkpool(CAMO_POOL_MAX, 1, 4, 4, 1, 2, 2, 2, 2, 0, 0, 1);
    assert_int_equal(camo_pool_desc_finish(&d), 0);
    float x[16], y[4];
    int am[4];
    for (int i = 0; i < 16; i++) x[i] = 1;
    be->pool_forward(be, &d, y, am, x);
    assert_int_equal(am[0], 0);
    assert_int_equal(am[1], 2);
    assert_int_equal(am[2], 8);
    assert_int_equal(am[3], 10);
}

static void test_avg_pool(void **state) {
    (void)state;
    check_pool(mkpool(CAMO_POOL_AVG, 2, 7, 5, 3, 3, 3, 2, 2, 1, 1, 1), 0);
    check_pool(mkpool(CAMO_POOL_AVG, 2, 7, 5, 3, 3, 3, 2, 2, 1, 1, 0), 0);
    check_pool(mkpool(CAMO_POOL_AVG, 1, 7, 5, 20, 3, 2, 1, 2, 1, 1, 0), 0);
    check_pool(mkpool(CAMO_POOL_AVG, 2, 7, 5, 3, 2, 2, 2, 2, 0, 0, 1), 0);
    /* corner of a 3x3 window padded by 1 on a constant image: 4/9 or 4/4 of the value */
    camo_pool_desc d = mkpool(CAMO_POOL_AVG, 1, 3, 3, 1, 3, 3, 1, 1, 1, 1, 1);
    assert_int_equal(camo_pool_desc_finish(&d), 0);
    float x[9], y[9];
    for (int i = 0; i < 9; i++) x[i] = 9;
    be->pool_forward(be, &d, y, NULL, x);
    assert_float_equal(y[0], 4, 1e-5);
    assert_float_equal(y[4], 9, 1e-5);
    d.count_include_pad = 0;
    be->pool_forward(be, &d, y, NULL, x);
    assert_float_equal(y[0], 9, 1e-5);
}

/* ---- adaptive average pooling ---- */

typedef struct {
    int N, H, W, C, P, Q;
    float *x, *y, *dy, *dx;
} adapt_ctx;

static void adapt_fwd(void *p) {
    adapt_ctx *a = p;
    be->adaptive_avg_forward(be, a->N, a->H, a->W, a->C, a->P, a->Q, a->y, a->x);
}

static void check_adaptive(int N, int H, int W, int C, int P, int Q) {
    size_t nx = (size_t)N * H * W * C, ny = (size_t)N * P * Q * C;
    adapt_ctx a = {N, H, W, C, P, Q, tu_falloc(nx), tu_falloc(ny), tu_falloc(ny), tu_falloc(nx)};
    float *ry = tu_falloc(ny);
    tu_fill(a.x, nx, 50, -1, 1);
    tu_fill(a.dy, ny, 51, -1, 1);
    for (int n = 0; n < N; n++) /* PyTorch's bins, with floor/ceil written out */
        for (int p = 0; p < P; p++)
            for (int q = 0; q < Q; q++)
                for (int c = 0; c < C; c++) {
                    int h0 = (int)floor((double)p * H / P), h1 = (int)ceil((double)(p + 1) * H / P);
                    int w0 = (int)floor((double)q * W / Q), w1 = (int)ceil((double)(q + 1) * W / Q);
                    double s = 0;
                    for (int h = h0; h < h1; h++)
                        for (int w = w0; w < w1; w++) s += a.x[((n * H + h) * W + w) * C + c];
                    ry[((n * P + p) * Q + q) * C + c] = (float)(s / ((h1 - h0) * (w1 - w0)));
                }
    adapt_fwd(&a);
    TU_ASSERT_CLOSE(a.y, ry, ny, 1.0, 1e-5, "adaptive forward");
    be->adaptive_avg_backward(be, N, H, W, C, P, Q, a.dx, a.dy);
    tu_fd_check(adapt_fwd, &a, a.x, nx, a.y, a.dy, ny, a.dx, 1e-2f, 1.0, 1e-2, "adaptive dx");
    free(a.x), free(a.y), free(a.dy), free(a.dx), free(ry);
}

static void test_adaptive_avg(void **state) {
    (void)state;
    check_adaptive(2, 7, 5, 3, 3, 2);
    check_adaptive(2, 7, 5, 3, 1, 1); /* global pooling, PSPNet's bins 1, 2, 3, 6 */
    check_adaptive(2, 7, 5, 3, 2, 2);
    check_adaptive(2, 7, 5, 3, 3, 3);
    check_adaptive(2, 7, 5, 3, 6, 6); /* 6 > 5: overlapping bins */
    check_adaptive(1, 12, 12, 20, 6, 6);
}

/* ---- bilinear resize ---- */

typedef struct {
    int N, H, W, C, P, Q, ac;
    float sh, sw;
    float *x, *y, *dy, *dx;
} resize_ctx;

static void resize_fwd(void *p) {
    resize_ctx *r = p;
    be->resize_forward(be, r->N, r->H, r->W, r->C, r->P, r->Q, r->ac, r->sh, r->sw, r->y, r->x);
}

/* PyTorch's source coordinate of output index o along an axis of H -> P */
static double ref_src(int o, int H, int P, int ac, float scale) {
    if (ac) return P > 1 ? (double)o * (H - 1) / (P - 1) : 0;
    double s = (scale > 0 ? 1.0 / scale : (double)H / P) * (o + 0.5) - 0.5;
    return s < 0 ? 0 : s;
}

static void ref_resize(const resize_ctx *r, float *y) {
    for (int n = 0; n < r->N; n++)
        for (int p = 0; p < r->P; p++)
            for (int q = 0; q < r->Q; q++) {
                double sh = ref_src(p, r->H, r->P, r->ac, r->sh);
                double sw = ref_src(q, r->W, r->Q, r->ac, r->sw);
                int h0 = CAMO_MIN((int)sh, r->H - 1), w0 = CAMO_MIN((int)sw, r->W - 1);
                int h1 = CAMO_MIN(h0 + 1, r->H - 1), w1 = CAMO_MIN(w0 + 1, r->W - 1);
                double lh = sh - h0, lw = sw - w0;
                for (int c = 0; c < r->C; c++) {
                    const float *x = r->x + (size_t)n * r->H * r->W * r->C + c;
                    double v = (1 - lh) * ((1 - lw) * x[(h0 * r->W + w0) * r->C] +
                                           lw * x[(h0 * r->W + w1) * r->C]) +
                               lh * ((1 - lw) * x[(h1 * r->W + w0) * r->C] +
                                     lw * x[(h1 * r->W + w1) * r->C]);
                    y[((n * r->P + p) * r->Q + q) * r->C + c] = (float)v;
                }
            }
}

static void check_resize(int N, int H, int W, int C, int P, int Q, int ac, float scale) {
    size_t nx = (size_t)N * H * W * C, ny = (size_t)N * P * Q * C;
    resize_ctx r = {N, H, W, C, P, Q, ac, scale, scale,
                    tu_falloc(nx), tu_falloc(ny), tu_falloc(ny), tu_falloc(nx)};
    float *ry = tu_falloc(ny);
    /* a ramp x = 2h - 3w + c maps to the ramp of the source coordinates: checks the index
     * rule independently of the interpolation reference */
    for (size_t i = 0; i < nx; i++) {
        int c = (int)(i % C), w = (int)(i / C % W), h = (int)(i / C / W % H);
        r.x[i] = 2.0f * h - 3.0f * w + c;
    }
    resize_fwd(&r);
    for (int n = 0; n < N; n++)
        for (int p = 0; p < P; p++)
            for (int q = 0; q < Q; q++)
                for (int c = 0; c < C; c++) {
                    double sh = CAMO_MIN(ref_src(p, H, P, ac, scale), H - 1);
                    double sw = CAMO_MIN(ref_src(q, W, Q, ac, scale), W - 1);
                    ry[((n * P + p) * Q + q) * C + c] = (float)(2 * sh - 3 * sw + c);
                }
    TU_ASSERT_CLOSE(r.y, ry, ny, 1.0, 1e-5, "resize ramp");

    tu_fill(r.x, nx, 60, -1, 1);
    tu_fill(r.dy, ny, 61, -1, 1);
    ref_resize(&r, ry);
    resize_fwd(&r);
    TU_ASSERT_CLOSE(r.y, ry, ny, 1.0, 1e-5, "resize forward");
    be->resize_backward(be, N, H, W, C, P, Q, ac, scale, scale, r.dx, r.dy);
    tu_fd_check(resize_fwd, &r, r.x, nx, r.y, r.dy, ny, r.dx, 1e-2f, 1.0, 1e-2, "resize dx");
    free(r.x), free(r.y), free(r.dy), free(r.dx), free(ry);
}

static void test_resize(void **state) {
    (void)state;
    for (int ac = 0; ac < 2; ac++) {
        check_resize(2, 7, 5, 3, 14, 10, ac, 0); /* up x2 */
        check_resize(2, 7, 5, 3, 3, 2, ac, 0);   /* down */
        check_resize(1, 5, 3, 20, 7, 9, ac, 0);  /* odd sizes, 2 channel blocks */
        check_resize(1, 5, 4, 2, 1, 1, ac, 0);   /* to a single pixel */
        check_resize(1, 7, 5, 2, 7, 5, ac, 0);   /* identity */
    }
    /* sizes from scale_factor (recompute_scale_factor=False): 1/scale, not H/P */
    check_resize(2, 5, 7, 3, 7, 10, 0, 1.5f);
    check_resize(2, 7, 5, 3, 3, 2, 0, 0.5f);
    check_resize(1, 7, 5, 3, 14, 10, 1, 2.0f); /* align_corners ignores the scale */
}

/* values PyTorch gives: F.interpolate(x, size=4, align_corners=False/True) of [0, 1], and
 * scale_factor=1.5 of [0..4] (5 -> 7 columns) */
static void test_resize_known_values(void **state) {
    (void)state;
    float x2[2] = {0, 1}, x5[5] = {0, 1, 2, 3, 4}, y[7];
    const float up_f[4] = {0, 0.25f, 0.75f, 1}, up_t[4] = {0, 1 / 3.f, 2 / 3.f, 1};
    const float sc[7] = {0, 0.5f, 7 / 6.f, 11 / 6.f, 2.5f, 19 / 6.f, 23 / 6.f};
    be->resize_forward(be, 1, 1, 2, 1, 1, 4, 0, 0, 0, y, x2);
    TU_ASSERT_CLOSE(y, up_f, 4, 1.0, 1e-6, "resize [0,1] -> 4");
    be->resize_forward(be, 1, 1, 2, 1, 1, 4, 1, 0, 0, y, x2);
    TU_ASSERT_CLOSE(y, up_t, 4, 1.0, 1e-6, "resize [0,1] -> 4 align_corners");
    be->resize_forward(be, 1, 1, 5, 1, 1, 7, 0, 1.5f, 1.5f, y, x5);
    TU_ASSERT_CLOSE(y, sc, 7, 1.0, 1e-6, "resize scale 1.5");
    be->resize_forward(be, 1, 1, 5, 1, 1, 7, 0, 0, 0, y, x5);
    assert_float_equal(y[6], 4, 1e-6); /* from sizes: 6.5 * 5/7 - 0.5 > 4, clamped */
}

int main(int argc, char **argv) {
    (void)argc;
    camo_cpu_env_reexec(argv); /* passive OpenMP waits: tests share 2 busy cores */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bn_train_forward),
        cmocka_unit_test(test_bn_train_backward),
        cmocka_unit_test(test_bn_eval),
        cmocka_unit_test(test_layernorm),
        cmocka_unit_test(test_pool_desc_finish),
        cmocka_unit_test(test_max_pool),
        cmocka_unit_test(test_avg_pool),
        cmocka_unit_test(test_adaptive_avg),
        cmocka_unit_test(test_resize),
        cmocka_unit_test(test_resize_known_values),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
