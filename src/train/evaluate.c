/* evaluate.c: validation of a network on a data set (training-time eval and `eval --ckpt`).
 * The loader keeps each sample's mask at its original size; the network's output is resized
 * to it (bilinear on logits, align_corners = false) and scored there: the binary metrics of
 * metrics.c (PySODMetrics-compatible) or a confusion matrix for multi-class. */
#include "train/evaluate.h"

#include <math.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "core/common.h"
#include "core/fault.h"
#include "data/data.h"
#include "nn/loss.h"
#include "train/tensorboard.h"

/* Bilinear taps of one axis, PyTorch's F.interpolate(align_corners=False) rule. */
typedef struct { int i0, i1; float w; } tap;

static void make_taps(tap *t, int out, int in) {
    double scale = (double)in / out;
    for (int o = 0; o < out; o++) {
        double src = (o + 0.5) * scale - 0.5;
        if (src < 0) src = 0;
        int i0 = (int)src;
        t[o].i0 = i0;
        t[o].i1 = i0 + (i0 < in - 1);
        t[o].w = (float)(src - i0);
    }
}

/* Growing per-image buffers (the largest ground truth so far). */
typedef struct {
    size_t cap, tap_cap;
    float *prob;
    int32_t *pred, *gt;
    tap *taps;
} eval_bufs;

static void bufs_reserve(eval_bufs *b, int w, int h) {
    size_t n = (size_t)w * h, t = (size_t)w + h;
    if (n > b->cap) {
        b->prob = camo_realloc(b->prob, n * sizeof *b->prob);
        b->pred = camo_realloc(b->pred, n * sizeof *b->pred);
        b->gt = camo_realloc(b->gt, n * sizeof *b->gt);
        b->cap = n;
    }
    if (t > b->tap_cap) {
        b->taps = camo_realloc(b->taps, t * sizeof *b->taps);
        b->tap_cap = t;
    }
}

static float lerp4(const float *x, int S, int C, const tap *tx, const tap *ty) {
    float a = x[((size_t)ty->i0 * S + tx->i0) * C], b = x[((size_t)ty->i0 * S + tx->i1) * C];
    float c = x[((size_t)ty->i1 * S + tx->i0) * C], d = x[((size_t)ty->i1 * S + tx->i1) * C];
    float top = a + (b - a) * tx->w, bot = c + (d - c) * tx->w;
    return top + (bot - top) * ty->w;
}

/* logits (S, S, 1) -> foreground probability at (h, w), scored against the raw mask. */
static int score_binary(camo_sod_acc *acc, eval_bufs *b, const float *logits, int S,
                        const uint8_t *gt, int w, int h) {
    bufs_reserve(b, w, h);
    tap *tx = b->taps, *ty = b->taps + w;
    make_taps(tx, w, S);
    make_taps(ty, h, S);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            b->prob[(size_t)y * w + x] = 1.0f / (1.0f + expf(-lerp4(logits, S, 1, &tx[x], &ty[y])));
    return camo_sod_acc_add_f32(acc, b->prob, gt, w, h);
}

/* logits (S, S, K) -> argmax of the resized logits at (h, w), against the mapped mask. */
static int score_classes(camo_cls_acc *acc, eval_bufs *b, const camo_dataset *ds,
                         const float *logits, int S, int K, const uint8_t *gt, int w, int h) {
    bufs_reserve(b, w, h);
    tap *tx = b->taps, *ty = b->taps + w;
    make_taps(tx, w, S);
    make_taps(ty, h, S);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            size_t i = (size_t)y * w + x;
            int best = 0;
            float bv = -INFINITY;
            for (int k = 0; k < K; k++) {
                float v = lerp4(logits + k, S, K, &tx[x], &ty[y]);
                if (v > bv) { bv = v; best = k; }
            }
            b->pred[i] = best;
            b->gt[i] = camo_dataset_label(ds, gt[i]);
        }
    return camo_cls_acc_add(acc, b->pred, b->gt, (size_t)w * h);
}

/* Scoring runs on OpenMP threads, one image each: per thread a working accumulator (its
 * per-pixel scratch) and buffers; per batch position a small accumulator that receives the
 * image's sums, merged into the total in image order, so the result does not depend on the
 * thread count. Confusion counts are integers: per-thread matrices merge in any order. */
typedef struct {
    camo_sod_acc *sod;     /* the total (binary) */
    camo_cls_acc *cls;     /* the total (multi-class) */
    int nthreads;
    camo_sod_acc **work;   /* (nthreads) per-thread binary scorers */
    camo_cls_acc **cwork;  /* (nthreads) per-thread confusion matrices */
    camo_sod_acc **image;  /* (batch) one image's sums */
    eval_bufs *bufs;       /* (nthreads) */
    float *logits;
} eval_state;

static int thread_id(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

static void state_init(eval_state *E, int K, int B, int ignore) {
#ifdef _OPENMP
    E->nthreads = omp_get_max_threads();
#else
    E->nthreads = 1;
#endif
    E->bufs = camo_calloc((size_t)E->nthreads, sizeof *E->bufs);
    if (K > 1) {
        E->cls = camo_cls_acc_new(K, ignore);
        E->cwork = camo_calloc((size_t)E->nthreads, sizeof *E->cwork);
        for (int t = 0; t < E->nthreads; t++) E->cwork[t] = camo_cls_acc_new(K, ignore);
        return;
    }
    E->sod = camo_sod_acc_new();
    E->work = camo_calloc((size_t)E->nthreads, sizeof *E->work);
    for (int t = 0; t < E->nthreads; t++) E->work[t] = camo_sod_acc_new();
    E->image = camo_calloc((size_t)B, sizeof *E->image);
    for (int i = 0; i < B; i++) E->image[i] = camo_sod_acc_new();
}

static void state_free(eval_state *E, int B) {
    for (int t = 0; t < E->nthreads; t++) {
        if (E->work) camo_sod_acc_free(E->work[t]);
        if (E->cwork) camo_cls_acc_free(E->cwork[t]);
        eval_bufs *b = &E->bufs[t];
        free(b->prob); free(b->pred); free(b->gt); free(b->taps);
    }
    for (int i = 0; E->image && i < B; i++) camo_sod_acc_free(E->image[i]);
    free(E->work); free(E->cwork); free(E->image); free(E->bufs);
    camo_sod_acc_free(E->sod);
    camo_cls_acc_free(E->cls);
    free(E->logits);
}

static int score_one(eval_state *E, const camo_dataset *ds, const camo_batch *b, int K, int i) {
    int t = thread_id();
    const float *lg = E->logits + i * (size_t)b->size * b->size * K;
    if (K > 1)
        return score_classes(E->cwork[t], &E->bufs[t], ds, lg, b->size, K, b->gt[i],
                             b->orig_w[i], b->orig_h[i]);
    camo_sod_acc_reset(E->work[t]);
    int rc = score_binary(E->work[t], &E->bufs[t], lg, b->size, b->gt[i], b->orig_w[i],
                          b->orig_h[i]);
    camo_sod_acc_reset(E->image[i]);
    camo_sod_acc_merge(E->image[i], E->work[t]);
    return rc;
}

static int score_batch(eval_state *E, const camo_dataset *ds, const camo_batch *b, int K) {
    int bad = b->n;
#pragma omp parallel for schedule(dynamic) reduction(min : bad)
    for (int i = 0; i < b->n; i++)
        if (score_one(E, ds, b, K, i) && i < bad) bad = i;
    if (bad < b->n) { /* again on this thread, so that the error message is this thread's */
        score_one(E, ds, b, K, bad);
        return -1;
    }
    for (int i = 0; K == 1 && i < b->n; i++) camo_sod_acc_merge(E->sod, E->image[i]);
    return 0;
}

static void finish(eval_state *E, camo_eval_full *out) {
    camo_eval_result *r = &out->r;
    if (out->classes > 1) {
        for (int t = 0; t < E->nthreads; t++) camo_cls_acc_merge(E->cls, E->cwork[t]);
        out->class_iou = camo_calloc((size_t)out->classes, sizeof(double));
        camo_cls_acc_result(E->cls, &out->cls, out->class_iou);
        r->miou = isnan(out->cls.miou) ? 0 : out->cls.miou;
        r->pixel_acc = isnan(out->cls.pixel_acc) ? 0 : out->cls.pixel_acc;
    } else {
        camo_sod_acc_result(E->sod, &out->sod);
        r->iou = out->sod.iou;
        r->dice = out->sod.dice;
        r->mae = out->sod.mae;
    }
}

int camo_evaluate_full(camo_net *net, const camo_config *c, camo_dataset *ds, int workers,
                       camo_eval_full *out) {
    memset(out, 0, sizeof *out);
    double t0 = camo_now();
    camo_backend *be = net->be;
    int S = c->data.aug.size, B = c->eval.batch, n = camo_dataset_size(ds), K = net->classes;
    out->classes = K;
    camo_augment aug = c->data.aug;
    aug.train = 0;
    if (camo_net_set_eval_size(net, B, S, S)) return -1; /* forward-only plan: small */
    camo_loader *L = camo_loader_create_ex(ds, &aug, workers, B, 2,
                                           &(camo_loader_opts){.keep_gt = 1});
    int *order = camo_malloc((size_t)n * sizeof(int));
    for (int i = 0; i < n; i++) order[i] = i;
    camo_loader_start(L, order, n, B, c->seed, 0);
    size_t plane = (size_t)S * S;
    float *target = be->alloc(be, (size_t)B * plane * sizeof(float));
    int32_t *labels = be->alloc(be, (size_t)B * plane * sizeof(int32_t));
    float *loss_dev = be->alloc(be, sizeof(float));
    eval_state E = {0};
    E.logits = camo_malloc((size_t)B * plane * K * sizeof(float));
    state_init(&E, K, B, camo_dataset_ignore_index(ds));
    camo_loss_kind kind = c->train.loss_kind;
    int rc = 0, stall = camo_fault_eval_stall();
    camo_batch *b;
    while (!rc && (b = camo_loader_next(L)) != NULL) {
        if (stall) camo_fault_hang(); /* tests: process 0 hung inside evaluation */
        be->upload(be, net->input, b->image, (size_t)b->n * plane * 3 * sizeof(float));
        camo_net_forward(net, b->n, 0);
        be->download(be, E.logits, camo_net_output(net, 0, NULL, NULL, NULL),
                     (size_t)b->n * plane * K * sizeof(float));
        if (K > 1) be->upload(be, labels, b->labels, (size_t)b->n * plane * sizeof(int32_t));
        else be->upload(be, target, b->mask, (size_t)b->n * plane * sizeof(float));
        /* the loss as a mean over this data set: norms are the totals */
        camo_loss_forward_backward(net, kind, 0, b->n, target, labels, c->data.ignore_index,
                                   n, (double)n * plane, loss_dev);
        rc = score_batch(&E, ds, b, K);
        out->r.n_images += b->n;
        camo_loader_release(L, b);
    }
    if (camo_loader_failed(L)) rc = -1;
    float loss = 0;
    be->download(be, &loss, loss_dev, sizeof loss);
    out->r.loss = loss;
    finish(&E, out);
    out->r.seconds = camo_now() - t0;
    camo_loader_free(L);
    free(order);
    state_free(&E, B);
    be->free(be, target);
    be->free(be, labels);
    be->free(be, loss_dev);
    return rc;
}

void camo_eval_full_free(camo_eval_full *e) {
    free(e->class_iou);
    e->class_iou = NULL;
}

int camo_evaluate(camo_net *net, const camo_config *c, camo_dataset *ds, int workers,
                  camo_eval_result *r) {
    camo_eval_full e;
    int rc = camo_evaluate_full(net, c, ds, workers, &e);
    *r = e.r;
    camo_eval_full_free(&e);
    return rc;
}

void camo_eval_full_print(const camo_eval_full *e, FILE *out, int json) {
    if (json) {
        fprintf(out, "{\"images\": %d, \"loss\": %.6g, \"seconds\": %.3f, ", e->r.n_images,
                e->r.loss, e->r.seconds);
        if (e->classes > 1) camo_cls_print_fields(&e->cls, out);
        else camo_sod_print_fields(&e->sod, out);
        fputs("}\n", out);
        return;
    }
    fprintf(out, "loss              %.4f\n", e->r.loss);
    if (e->classes > 1) camo_cls_print(&e->cls, out, 0);
    else camo_sod_print(&e->sod, out, 0);
    fprintf(out, "(%d images, %.1f s; metrics at each ground truth's original size)\n",
            e->r.n_images, e->r.seconds);
}

/* "key":value, — null for a NaN or infinite value (a diverged loss). */
static void jsonl_num(FILE *f, const char *key, double v) {
    fprintf(f, "\"%s\":", key);
    camo_json_number(f, v);
    fputc(',', f);
}

void camo_eval_jsonl(FILE *f, const camo_eval_result *r, int classes, int epoch,
                     long long step) {
    fprintf(f, "{\"type\":\"eval\",\"epoch\":%d,\"step\":%lld,", epoch, step);
    jsonl_num(f, "loss", r->loss);
    if (classes > 1) {
        jsonl_num(f, "miou", r->miou);
        jsonl_num(f, "pixel_acc", r->pixel_acc);
    } else {
        jsonl_num(f, "iou", r->iou);
        jsonl_num(f, "dice", r->dice);
        jsonl_num(f, "mae", r->mae);
    }
    fprintf(f, "\"images\":%d,\"seconds\":%.3f}\n", r->n_images, r->seconds);
}

void camo_eval_tb(camo_tb *tb, const camo_eval_full *e, long long step) {
    camo_tb_scalar(tb, "eval/loss", step, e->r.loss);
    if (e->classes > 1) {
        const camo_cls_metrics *m = &e->cls;
        camo_tb_scalar(tb, "eval/miou", step, m->miou);
        camo_tb_scalar(tb, "eval/pixel_acc", step, m->pixel_acc);
        camo_tb_scalar(tb, "eval/mean_acc", step, m->mean_acc);
        for (int k = 0; k < m->K; k++) {
            char tag[48];
            snprintf(tag, sizeof tag, "eval/class_iou/%d", k);
            if (isfinite(m->iou[k])) camo_tb_scalar(tb, tag, step, m->iou[k]); /* NaN: absent */
        }
        return;
    }
    const camo_sod_metrics *m = &e->sod;
    const struct { const char *tag; double v; } sod[] = {
        {"eval/sm", m->sm}, {"eval/em_mean", m->em_mean}, {"eval/em_max", m->em_max},
        {"eval/wfm", m->wfm}, {"eval/fm_mean", m->fm_mean}, {"eval/fm_max", m->fm_max},
        {"eval/mae", m->mae}, {"eval/iou", m->iou}, {"eval/dice", m->dice}};
    for (size_t i = 0; i < sizeof sod / sizeof sod[0]; i++)
        camo_tb_scalar(tb, sod[i].tag, step, sod[i].v);
}

double camo_eval_score(const camo_eval_result *r, const char *metric) {
    if (!strcmp(metric, "dice")) return r->dice;
    if (!strcmp(metric, "mae")) return -r->mae;
    if (!strcmp(metric, "loss")) return -r->loss;
    if (!strcmp(metric, "miou")) return r->miou;
    return r->n_images && r->miou > 0 && r->iou == 0 ? r->miou : r->iou;
}
