/* evaluate.c: validation of a network on a data set (training-time eval and `eval`). */
#include <math.h>
#include <string.h>

#include "camo/common.h"
#include "camo/data.h"
#include "camo/loss.h"
#include "camo/train.h"

typedef struct {
    double loss, iou, dice, mae;
    int64_t *conf;        /* classes x classes confusion matrix (multi-class) */
    int classes;
} eval_acc;

static float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

/* per-image IoU, Dice (threshold thr on the probability) and MAE */
static void add_binary(eval_acc *a, const float *logits, const float *mask, size_t npix, double thr) {
    double inter = 0, pred = 0, gt = 0, err = 0;
    for (size_t i = 0; i < npix; i++) {
        float p = sigmoidf(logits[i]);
        int pb = p >= thr, gb = mask[i] >= 0.5f;
        inter += pb && gb;
        pred += pb;
        gt += gb;
        err += fabs(p - mask[i]);
    }
    double uni = pred + gt - inter;
    a->iou += uni > 0 ? inter / uni : 1.0; /* empty prediction of an empty mask is perfect */
    a->dice += pred + gt > 0 ? 2 * inter / (pred + gt) : 1.0;
    a->mae += err / (double)npix;
}

static void add_multiclass(eval_acc *a, const float *logits, const int32_t *labels, size_t npix,
                           int C, int ignore) {
    for (size_t i = 0; i < npix; i++) {
        if (labels[i] == ignore || labels[i] < 0 || labels[i] >= C) continue;
        const float *x = logits + i * C;
        int best = 0;
        for (int c = 1; c < C; c++) if (x[c] > x[best]) best = c;
        a->conf[(size_t)labels[i] * C + best]++;
    }
}

static void finish_multiclass(const eval_acc *a, camo_eval_result *r) {
    int C = a->classes, present = 0;
    double iou_sum = 0, correct = 0, total = 0;
    for (int c = 0; c < C; c++) {
        double tp = a->conf[(size_t)c * C + c], row = 0, col = 0;
        for (int k = 0; k < C; k++) { row += a->conf[(size_t)c * C + k]; col += a->conf[(size_t)k * C + c]; }
        correct += tp;
        total += row;
        if (row + col - tp > 0) { iou_sum += tp / (row + col - tp); present++; }
    }
    r->miou = present ? iou_sum / present : 0;
    r->pixel_acc = total > 0 ? correct / total : 0;
}

int camo_evaluate(camo_net *net, const camo_config *c, camo_dataset *ds, int workers,
                  camo_eval_result *r) {
    memset(r, 0, sizeof *r);
    double t0 = camo_now();
    camo_backend *be = net->be;
    int S = c->data.aug.size, B = c->eval.batch, n = camo_dataset_size(ds);
    int classes = net->classes, multi = classes > 1;
    camo_augment aug = c->data.aug;
    aug.train = 0;
    if (B > net->N || S != net->H) {
        if (camo_net_set_input_size(net, B, S, S)) return -1;
    }
    camo_loader *L = camo_loader_create(ds, &aug, workers, B, 2);
    int *order = camo_malloc((size_t)n * sizeof(int));
    for (int i = 0; i < n; i++) order[i] = i;
    camo_loader_start(L, order, n, B, c->seed, 0);
    size_t plane = (size_t)S * S;
    float *target = be->alloc(be, (size_t)B * plane * sizeof(float));
    int32_t *labels = be->alloc(be, (size_t)B * plane * sizeof(int32_t));
    float *loss_dev = be->alloc(be, sizeof(float));
    float *logits = camo_malloc((size_t)B * plane * classes * sizeof(float));
    eval_acc acc = {.classes = classes};
    if (multi) acc.conf = camo_calloc((size_t)classes * classes, sizeof(int64_t));
    camo_loss_kind kind = multi ? LOSS_CE : LOSS_BCE;
    camo_loss_parse(c->train.loss, &kind);
    int rc = 0;
    camo_batch *b;
    while ((b = camo_loader_next(L)) != NULL) {
        be->upload(be, net->input, b->image, (size_t)b->n * plane * 3 * sizeof(float));
        camo_net_forward(net, b->n, 0);
        be->download(be, logits, camo_net_output(net, 0, NULL, NULL, NULL),
                     (size_t)b->n * plane * classes * sizeof(float));
        if (multi) be->upload(be, labels, b->labels, (size_t)b->n * plane * sizeof(int32_t));
        else be->upload(be, target, b->mask, (size_t)b->n * plane * sizeof(float));
        /* the loss as a mean over this data set: norms are the totals */
        camo_loss_forward_backward(net, kind, 0, b->n, target, labels, c->data.ignore_index,
                                   n, (double)n * plane, loss_dev);
        for (int i = 0; i < b->n; i++) {
            if (multi) add_multiclass(&acc, logits + i * plane * classes, b->labels + i * plane,
                                      plane, classes, c->data.ignore_index);
            else add_binary(&acc, logits + i * plane, b->mask + i * plane, plane, c->eval.threshold);
        }
        r->n_images += b->n;
        camo_loader_release(L, b);
    }
    if (camo_loader_failed(L)) rc = -1;
    float loss = 0;
    be->download(be, &loss, loss_dev, sizeof loss);
    r->loss = loss;
    if (r->n_images) { r->iou = acc.iou / r->n_images; r->dice = acc.dice / r->n_images; r->mae = acc.mae / r->n_images; }
    if (multi) finish_multiclass(&acc, r);
    r->seconds = camo_now() - t0;
    camo_loader_free(L);
    free(order);
    free(logits);
    free(acc.conf);
    be->free(be, target);
    be->free(be, labels);
    be->free(be, loss_dev);
    return rc;
}

double camo_eval_score(const camo_eval_result *r, const char *metric) {
    if (!strcmp(metric, "dice")) return r->dice;
    if (!strcmp(metric, "mae")) return -r->mae;
    if (!strcmp(metric, "loss")) return -r->loss;
    if (!strcmp(metric, "miou")) return r->miou;
    return r->n_images && r->miou > 0 && r->iou == 0 ? r->miou : r->iou;
}
