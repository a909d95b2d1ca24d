/* test_cpu_loss_optim.c: CPU fused losses and optimizer ops.
 * Losses: values on hand-computable cases, values against naive double references (the
 * structure loss's 31x31 average pool done the slow way, 961 reads a pixel), gradients
 * against central differences of that reference (in double: the fp32 loss value would
 * bury the per-pixel differences in rounding), accumulation, and bitwise equal values for 1
 * and 3 threads. Optimizers: several steps against reference loops in double.
 * fp32 tolerances: values 1e-5 relative; gradients 1e-3 relative (floor 1% of the largest);
 * optimizer states 1e-5 relative (floor 0.1: the values are O(1), the errors absolute).
 * Pixel accuracy counts (pixel_correct): exact, on hand cases and against a plain loop. */
#include "backend/backend.h"
#include "core/common.h"

#include "test_util.h"

TU_CPU_BACKEND_FIXTURE(2)

/* ---- one interface over the four losses ---- */

enum { L_BCE, L_STRUCTURE, L_DICE, L_CE };
static const char *loss_name[] = {"bce", "structure", "dice", "cross_entropy"};

typedef struct {
    int kind, N, H, W, C;  /* C: classes for CE, 1 otherwise */
    float *x;              /* logits (N,H,W,C) */
    const float *t;        /* targets (N,H,W) for the binary losses */
    const int *labels;     /* labels (N,H,W) for CE */
    int ignore;
    float norm;
} loss_case;

static size_t numel(const loss_case *c) { return (size_t)c->N * c->H * c->W * c->C; }

/* Runs the op on backend b: adds the loss to *loss and the gradient to dx. */
static void run_loss_on(camo_backend *b, const loss_case *c, float *loss, float *dx) {
    switch (c->kind) {
    case L_BCE: b->loss_bce_logits(b, c->N, c->H, c->W, loss, dx, c->x, c->t, c->norm); break;
    case L_STRUCTURE:
        b->loss_structure(b, c->N, c->H, c->W, loss, dx, c->x, c->t, c->norm);
        break;
    case L_DICE: b->loss_dice(b, c->N, c->H, c->W, loss, dx, c->x, c->t, c->norm); break;
    case L_CE:
        b->loss_cross_entropy(b, c->N, c->H, c->W, c->C, loss, dx, c->x, c->labels, c->ignore,
                              c->norm);
        break;
    }
}

/* ---- naive double references ---- */

static double sigmoid_d(double x) { return 1 / (1 + exp(-x)); }
static double bce_d(double x, double t) { return fmax(x, 0) - x * t + log1p(exp(-fabs(x))); }

/* weit (H,W) of one image: avg_pool2d(31, stride 1, pad 15, count_include_pad) directly */
static void ref_weights(int H, int W, const float *t, double *weit) {
    for (int h = 0; h < H; h++)
        for (int w = 0; w < W; w++) {
            double s = 0;
            for (int i = h - 15; i <= h + 15; i++)
                for (int j = w - 15; j <= w + 15; j++)
                    if (i >= 0 && i < H && j >= 0 && j < W) s += t[i * W + j];
            weit[h * W + w] = 1 + 5 * fabs(s / 961 - t[h * W + w]);
        }
}

static double ref_loss(const loss_case *c) {
    int P = c->H * c->W;
    double total = 0;
    double *weit = calloc((size_t)P, sizeof(double));
    for (int n = 0; n < c->N; n++) {
        const float *x = c->x + (size_t)n * P * c->C, *t = c->t ? c->t + (size_t)n * P : NULL;
        double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        if (c->kind == L_STRUCTURE) ref_weights(c->H, c->W, t, weit);
        for (int i = 0; i < P; i++) {
            if (c->kind == L_CE) {
                int l = c->labels[(size_t)n * P + i];
                if (l == c->ignore || l < 0 || l >= c->C) continue;
                double z = 0;
                for (int k = 0; k < c->C; k++) z += exp(x[i * c->C + k]);
                total += log(z) - x[i * c->C + l];
                continue;
            }
            double p = sigmoid_d(x[i]), w = c->kind == L_STRUCTURE ? weit[i] : 1;
            if (c->kind == L_BCE) total += bce_d(x[i], t[i]);
            if (c->kind == L_DICE) { s0 += p * t[i]; s1 += p; s2 += t[i]; }
            if (c->kind == L_STRUCTURE) {
                s0 += w; s1 += w * bce_d(x[i], t[i]); s2 += p * t[i] * w; s3 += (p + t[i]) * w;
            }
        }
        if (c->kind == L_DICE) total += 1 - (2 * s0 + 1) / (s1 + s2 + 1);
        if (c->kind == L_STRUCTURE) total += s1 / s0 + 1 - (s2 + 1) / (s3 - s2 + 1);
    }
    free(weit);
    return total / c->norm;
}

/* ---- test cases ---- */

typedef struct { loss_case c; float *x, *t; int *labels; } case_buf;

/* A blob-shaped binary mask with a few soft values, logits in [-3, 3) (CE: C classes and
 * labels with some ignore_index and one out-of-range label). */
static case_buf make_case(int kind, int N, int H, int W, int C, uint32_t seed) {
    case_buf b = {0};
    if (kind != L_CE) C = 1;
    size_t P = (size_t)N * H * W;
    b.x = tu_falloc(P * C);
    tu_fill(b.x, P * C, seed, -3, 3);
    b.t = tu_falloc(P);
    b.labels = calloc(P, sizeof(int));
    for (int n = 0; n < N; n++)
        for (int h = 0; h < H; h++)
            for (int w = 0; w < W; w++) {
                size_t i = ((size_t)n * H + h) * W + w;
                double dh = h - H * (0.3 + 0.2 * n), dw = w - W * 0.5;
                b.t[i] = dh * dh + dw * dw < 0.1 * H * W ? 1.0f : 0.0f;
                if (i % 17 == 3) b.t[i] = 0.25f; /* soft labels are legal targets */
                b.labels[i] = (int)((h * 3 + w * 5 + n) % (C + 1));
                if (b.labels[i] == C) b.labels[i] = 255;
            }
    if (kind == L_CE) b.labels[1] = C; /* out of range: skipped like ignore_index */
    int valid = 0;
    for (size_t i = 0; i < P; i++) valid += b.labels[i] >= 0 && b.labels[i] < C;
    b.c = (loss_case){kind, N, H, W, C, b.x, b.t, b.labels, 255,
                      kind == L_BCE ? (float)P : kind == L_CE ? (float)valid : (float)N};
    return b;
}

static void free_case(case_buf *b) { free(b->x); free(b->t); free(b->labels); }

static void test_loss_hand_values(void **state) {
    (void)state;
    enum { N = 2, H = 5, W = 7, P = H * W };
    float x[N * P * 2] = {0}, t0[N * P] = {0}, t1[N * P], dx[N * P * 2] = {0}, loss = 0;
    int lab[N * P];
    for (int i = 0; i < N * P; i++) { t1[i] = 1; lab[i] = i % 3 == 0 ? -1 : i % 2; }
    /* BCE of logit 0 is log 2 for any target; gradient (0.5 - t)/norm */
    be->loss_bce_logits(be, N, H, W, &loss, dx, x, t1, N * P);
    assert_float_equal(loss, log(2.0), 1e-6);
    assert_float_equal(dx[0], -0.5 / (N * P), 1e-9);
    /* Dice, p = 0.5, t = 1: 1 - (P + 1)/(1.5P + 1) per image, 2 images / norm 2 */
    loss = 0;
    be->loss_dice(be, N, H, W, &loss, dx, x, t1, N);
    assert_float_equal(loss, 1 - (P + 1.0) / (1.5 * P + 1), 1e-6);
    /* structure, t = 0: weit = 1, wbce = log 2, inter = 0, union = P/2 */
    loss = 0;
    be->loss_structure(be, N, H, W, &loss, dx, x, t0, N);
    assert_float_equal(loss, log(2.0) + 1 - 1 / (0.5 * P + 1), 1e-6);
    /* CE of two equal logits is log 2 for each valid pixel (label -1 is ignore_index) */
    loss = 0;
    int valid = 0;
    for (int i = 0; i < N * P; i++) valid += lab[i] != -1;
    be->loss_cross_entropy(be, N, H, W, 2, &loss, dx, x, lab, -1, valid);
    assert_float_equal(loss, log(2.0), 1e-6);
    /* extreme logits stay finite: BCE(100, 0) = 100, BCE(-100, 0) = 0 */
    float xe[2] = {100, -100}, te[2] = {0, 0}, de[2] = {0, 0};
    loss = 0;
    be->loss_bce_logits(be, 1, 1, 2, &loss, de, xe, te, 1);
    assert_float_equal(loss, 100, 1e-4);
    assert_float_equal(de[0], 1, 1e-6);
    assert_float_equal(de[1], 0, 1e-6);
}

/* Value against the double reference; gradient against central differences of the
 * reference; a second call doubles value and gradient. */
static void check_loss(int kind, int N, int H, int W, int C, int grad_check) {
    case_buf b = make_case(kind, N, H, W, C, 20 + kind);
    loss_case *c = &b.c;
    size_t n = numel(c);
    float loss = 0, *dx = tu_falloc(n), *num = tu_falloc(n);
    run_loss_on(be, c, &loss, dx);
    float want = (float)ref_loss(c);
    assert_true(tu_max_rel_err(&loss, &want, 1, 1e-6, 1e-5, loss_name[kind]) <= 1e-5);
    if (grad_check) {
        const float eps = 1e-3f;
        double gmax = 0;
        for (size_t i = 0; i < n; i++) {
            float save = c->x[i];
            c->x[i] = save + eps;
            double fp = ref_loss(c), xp = c->x[i];
            c->x[i] = save - eps;
            double fm = ref_loss(c), xm = c->x[i];
            c->x[i] = save;
            num[i] = (float)((fp - fm) / (xp - xm));
            gmax = fmax(gmax, fabs(num[i]));
        }
        TU_ASSERT_CLOSE(dx, num, n, 0.01 * gmax, 1e-3, loss_name[kind]);
    }
    float loss2 = loss, *dx2 = tu_falloc(n);
    memcpy(dx2, dx, n * sizeof(float));
    run_loss_on(be, c, &loss2, dx2);
    for (size_t i = 0; i < n; i++) dx[i] *= 2;
    loss *= 2;
    assert_true(tu_max_rel_err(&loss2, &loss, 1, 1e-6, 1e-6, "accumulated loss") <= 1e-6);
    TU_ASSERT_CLOSE(dx2, dx, n, 1e-6, 1e-6, "accumulated gradient");
    free(dx); free(dx2); free(num);
    free_case(&b);
}

static void test_loss_small(void **state) {
    (void)state;
    for (int kind = L_BCE; kind <= L_CE; kind++) check_loss(kind, 2, 9, 11, 4, 1);
    check_loss(L_STRUCTURE, 1, 4, 3, 1, 1); /* image far smaller than the pool window */
}

/* Sizes beyond the pool window (interior pixels), OpenMP paths. No finite differences:
 * the gradient formula does not depend on the size, and the weights it uses are checked
 * through the value. */
static void test_loss_large(void **state) {
    (void)state;
    for (int kind = L_BCE; kind <= L_CE; kind++)
        check_loss(kind, 3, 91, 53, 5, 0); /* 2 pixel blocks an image */
}

/* Same bits with 1 and 3 threads: the block sums do not depend on the thread count. */
static void test_loss_deterministic(void **state) {
    (void)state;
    camo_backend *b1 = camo_backend_cpu_create(1), *b3 = camo_backend_cpu_create(3);
    for (int kind = L_BCE; kind <= L_CE; kind++) {
        case_buf b = make_case(kind, 3, 64, 96, 3, 40 + kind); /* 2 blocks an image */
        size_t n = numel(&b.c);
        float l1 = 0, l3 = 0, *d1 = tu_falloc(n), *d3 = tu_falloc(n);
        run_loss_on(b1, &b.c, &l1, d1);
        run_loss_on(b3, &b.c, &l3, d3);
        assert_memory_equal(&l1, &l3, sizeof l1);
        assert_memory_equal(d1, d3, n * sizeof(float));
        free(d1); free(d3);
        free_case(&b);
    }
    b1->destroy(b1);
    b3->destroy(b3);
}

/* ---- optimizers ---- */

static void test_sumsq(void **state) {
    (void)state;
    const size_t n = 100003;
    float *x = tu_falloc(n), out = 0;
    tu_fill(x, n, 50, -2, 2);
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)x[i] * x[i];
    be->sumsq(be, n, &out, x);
    float want = (float)s;
    assert_true(tu_max_rel_err(&out, &want, 1, 1e-6, 1e-6, "sumsq") <= 1e-6);
    out = 123;
    be->sumsq(be, 0, &out, x); /* empty: 0, not left as it was */
    assert_true(out == 0);
    free(x);
}

typedef struct { float lr, momentum, wd, grad_scale; int nesterov; } sgd_cfg;

/* Independent double reference of torch.optim.SGD (dampening 0). */
static void ref_sgd(const sgd_cfg *k, int steps, size_t n, double *w, double *buf,
                    float *const *grads) {
    for (int s = 0; s < steps; s++)
        for (size_t i = 0; i < n; i++) {
            double g = (double)k->grad_scale * grads[s][i] + (double)k->wd * w[i];
            double d = g;
            if (k->momentum != 0) {
                buf[i] = s == 0 ? g : k->momentum * buf[i] + g;
                d = k->nesterov ? g + k->momentum * buf[i] : buf[i];
            }
            w[i] -= k->lr * d;
        }
}

static void to_float(const double *a, float *b, size_t n) {
    for (size_t i = 0; i < n; i++) b[i] = (float)a[i];
}

static void test_sgd(void **state) {
    (void)state;
    enum { STEPS = 6 };
    const size_t n = 40000; /* over the OpenMP threshold */
    const sgd_cfg cfgs[] = {{0.1f, 0.9f, 1e-4f, 1.0f, 0}, {0.05f, 0.9f, 0.1f, 0.5f, 1},
                            {0.2f, 0.0f, 0.01f, 2.0f, 0}, {0.1f, 0.5f, 0.0f, 1.0f, 1}};
    float *grads[STEPS], *w = tu_falloc(n), *buf = tu_falloc(n), *got = tu_falloc(n);
    double *rw = calloc(n, sizeof(double)), *rbuf = calloc(n, sizeof(double));
    for (int s = 0; s < STEPS; s++) {
        grads[s] = tu_falloc(n);
        tu_fill(grads[s], n, 60 + s, -1, 1);
    }
    for (size_t k = 0; k < sizeof cfgs / sizeof cfgs[0]; k++) {
        const sgd_cfg *c = &cfgs[k];
        tu_fill(w, n, 70, -1, 1);
        tu_fill(buf, n, 71, -1, 1); /* garbage: the first step must overwrite it */
        for (size_t i = 0; i < n; i++) rw[i] = w[i];
        for (int s = 0; s < STEPS; s++)
            be->sgd_step(be, n, w, grads[s], buf, c->lr, c->momentum, c->nesterov, c->wd,
                         c->grad_scale, s == 0);
        ref_sgd(c, STEPS, n, rw, rbuf, grads);
        to_float(rw, got, n);
        TU_ASSERT_CLOSE(w, got, n, 0.1, 1e-5, "sgd weights");
        if (c->momentum != 0) {
            to_float(rbuf, got, n);
            TU_ASSERT_CLOSE(buf, got, n, 0.1, 1e-5, "sgd momentum buffer");
        }
    }
    for (int s = 0; s < STEPS; s++) free(grads[s]);
    free(w); free(buf); free(got); free(rw); free(rbuf);
}

typedef struct { float lr, beta1, beta2, eps, wd, grad_scale; } adamw_cfg;

/* Independent double reference of torch.optim.AdamW (the paper's form with mhat, vhat). */
static void ref_adamw(const adamw_cfg *k, int steps, size_t n, double *w, double *m,
                      double *v, float *const *grads) {
    for (int s = 1; s <= steps; s++)
        for (size_t i = 0; i < n; i++) {
            double g = (double)k->grad_scale * grads[s - 1][i];
            w[i] *= 1 - (double)k->lr * k->wd;
            m[i] = k->beta1 * m[i] + (1 - (double)k->beta1) * g;
            v[i] = k->beta2 * v[i] + (1 - (double)k->beta2) * g * g;
            double mhat = m[i] / (1 - pow(k->beta1, s)), vhat = v[i] / (1 - pow(k->beta2, s));
            w[i] -= k->lr * mhat / (sqrt(vhat) + k->eps);
        }
}

static void test_adamw(void **state) {
    (void)state;
    enum { STEPS = 7 };
    const size_t n = 40000;
    const adamw_cfg cfgs[] = {{1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, 1.0f},
                              {0.05f, 0.8f, 0.99f, 1e-6f, 0.1f, 0.25f},
                              {0.01f, 0.3f, 0.9f, 1e-8f, 0.0f, 1.0f}}; /* lerp weight > 0.5 */
    float *grads[STEPS], *w = tu_falloc(n), *m = tu_falloc(n), *v = tu_falloc(n);
    float *got = tu_falloc(n);
    double *rw = calloc(n, sizeof(double)), *rm = calloc(n, sizeof(double));
    double *rv = calloc(n, sizeof(double));
    for (int s = 0; s < STEPS; s++) {
        grads[s] = tu_falloc(n);
        tu_fill(grads[s], n, 80 + s, -1, 1);
    }
    for (size_t k = 0; k < sizeof cfgs / sizeof cfgs[0]; k++) {
        const adamw_cfg *c = &cfgs[k];
        tu_fill(w, n, 90, -1, 1);
        memset(m, 0, n * sizeof(float));
        memset(v, 0, n * sizeof(float));
        for (size_t i = 0; i < n; i++) { rw[i] = w[i]; rm[i] = rv[i] = 0; }
        for (int s = 1; s <= STEPS; s++)
            be->adamw_step(be, n, w, grads[s - 1], m, v, c->lr, c->beta1, c->beta2, c->eps,
                           c->wd, c->grad_scale, s);
        ref_adamw(c, STEPS, n, rw, rm, rv, grads);
        to_float(rw, got, n);
        TU_ASSERT_CLOSE(w, got, n, 0.1, 1e-5, "adamw weights");
        to_float(rm, got, n);
        TU_ASSERT_CLOSE(m, got, n, 0.1, 1e-5, "adamw m");
        to_float(rv, got, n);
        TU_ASSERT_CLOSE(v, got, n, 0.01, 1e-5, "adamw v"); /* v ~ g^2 */
    }
    for (int s = 0; s < STEPS; s++) free(grads[s]);
    free(w); free(m); free(v); free(got); free(rw); free(rm); free(rv);
}

static void test_ema(void **state) {
    (void)state;
    const size_t n = 40000;
    float *ema = tu_falloc(n), *w = tu_falloc(n), *want = tu_falloc(n);
    tu_fill(ema, n, 100, -1, 1);
    double *ref = calloc(n, sizeof(double));
    for (size_t i = 0; i < n; i++) ref[i] = ema[i];
    for (int s = 0; s < 5; s++) {
        tu_fill(w, n, 101 + s, -1, 1);
        be->ema_update(be, n, ema, w, 0.99f);
        for (size_t i = 0; i < n; i++) ref[i] = 0.99 * ref[i] + (1 - 0.99) * w[i];
    }
    to_float(ref, want, n);
    TU_ASSERT_CLOSE(ema, want, n, 0.1, 1e-5, "ema");
    free(ema); free(w); free(want); free(ref);
}

/* ---- training pixel accuracy counts ---- */

/* Hand cases: binary threshold (logit 0 and target 0.5 both count as "no"), argmax with a
 * tie (the first wins, as torch.argmax), ignored labels, and accumulation into acc. */
static void test_pixel_correct_hand(void **state) {
    (void)state;
    float xb[5] = {2, -1, 0, 3, -2}, tb[5] = {1, 0, 1, 0.4f, 0.5f};
    double acc[2] = {10, 20};
    be->pixel_correct(be, 1, 1, 5, 1, acc, xb, tb, NULL, -1);
    /* predictions 1 0 0 1 0 against 1 0 1 0 0: right at 0, 1, 4 */
    assert_true(acc[0] == 13 && acc[1] == 25);
    float xc[4 * 3] = {1, 2, 0,  0, 0, 5,  9, 0, 0,  3, 3, 1};
    int lc[4] = {0, 2, 255, 1};
    double c[2] = {0, 0};
    be->pixel_correct(be, 1, 2, 2, 3, c, xc, NULL, lc, 255);
    /* argmax 1, 2, (ignored), 0 against 0, 2, 1: one right of three */
    assert_true(c[0] == 1 && c[1] == 3);
    be->pixel_correct(be, 0, 2, 2, 3, c, xc, NULL, lc, 255); /* an empty slice adds 0 */
    assert_true(c[0] == 1 && c[1] == 3);
}

/* Large enough for the parallel blocks: counts equal a plain loop, for 1 and 2 threads. */
static void test_pixel_correct_large(void **state) {
    (void)state;
    int N = 3, H = 37, W = 53, C = 4;
    size_t P = (size_t)N * H * W;
    float *x = tu_falloc(P * C), *t = tu_falloc(P);
    int *l = calloc(P, sizeof(int));
    tu_fill(x, P * C, 7, -2, 2);
    tu_fill(t, P, 8, 0, 1);
    double want[2][2] = {{0, 0}, {0, 0}}; /* [binary, classes][correct, counted] */
    for (size_t i = 0; i < P; i++) {
        l[i] = (int)(t[i] * 5); /* 0..4: 4 is ignore_index */
        want[0][0] += (x[i] > 0) == (t[i] > 0.5f);
        want[0][1] += 1;
        if (l[i] == 4) continue;
        int best = 0;
        for (int k = 1; k < C; k++) best = x[i * C + k] > x[i * C + best] ? k : best;
        want[1][0] += best == l[i];
        want[1][1] += 1;
    }
    for (int threads = 1; threads <= 2; threads++) {
        camo_backend *b = camo_backend_cpu_create(threads);
        double got[2][2] = {{0, 0}, {0, 0}};
        b->pixel_correct(b, N, H, W, 1, got[0], x, t, NULL, 4);
        b->pixel_correct(b, N, H, W, C, got[1], x, NULL, l, 4);
        for (int k = 0; k < 2; k++)
            assert_true(got[k][0] == want[k][0] && got[k][1] == want[k][1]);
        b->destroy(b);
    }
    assert_true(want[1][1] < P && want[1][0] > 0); /* the case exercises both branches */
    free(x); free(t); free(l);
}

int main(int argc, char **argv) {
    (void)argc;
    camo_cpu_env_reexec(argv); /* passive OpenMP waits: tests share 2 busy cores */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_loss_hand_values),
        cmocka_unit_test(test_loss_small),
        cmocka_unit_test(test_loss_large),
        cmocka_unit_test(test_loss_deterministic),
        cmocka_unit_test(test_sumsq),
        cmocka_unit_test(test_sgd),
        cmocka_unit_test(test_adamw),
        cmocka_unit_test(test_ema),
        cmocka_unit_test(test_pixel_correct_hand),
        cmocka_unit_test(test_pixel_correct_large),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
