/* cpu_loss.c: CPU fused losses (forward value + gradient): BCE with logits, the SINet-V2 /
 * F3Net structure loss, soft Dice and softmax cross-entropy. Each ADDS sum/norm to *loss and
 * ADDS d(loss)/d(logits) to dlogits (backend.h). Binary maps are (N,H,W,1). Also the
 * training pixel accuracy counts (pixel_correct), which read the same logits and targets.
 * Sums are taken in double over fixed blocks of pixels added in block order, so a loss
 * value does not depend on the thread count and a rerun is bitwise equal. */
#include "cpu_internal.h"

#include <math.h>
#include <string.h>

#include "core/common.h"

#define CPU_LOSS_BLOCK 4096  /* pixels per partial sum */
#define CPU_LOSS_PAR_MIN 16384
#define STRUCT_R 15          /* structure loss: avg_pool2d(31, stride 1, padding 15) */
#define STRUCT_K 4           /* per-image sums of the structure loss */

/* What the per-block functions read and write. */
typedef struct loss_args {
    const float *x, *t;  /* logits, targets (binary losses) */
    const int *labels;   /* cross-entropy labels */
    const float *w;      /* structure loss pixel weights */
    float *dx;           /* gradient (written by single-pass losses) */
    int C, ignore_index; /* cross-entropy */
    float norm;
} loss_args;

/* Adds K sums over pixels [i0, i1) (flat indices over all images) into acc (K). */
typedef void (*block_fn)(const loss_args *a, size_t i0, size_t i1, double *acc);

/* sums (N, K) = per-image sums of fn over P pixels per image, in fixed blocks added in
 * order: deterministic for any thread count. */
static void image_sums(camo_backend *be, int N, size_t P, int K, block_fn fn,
                       const loss_args *a, double *sums) {
    size_t nb = (P + CPU_LOSS_BLOCK - 1) / CPU_LOSS_BLOCK, jobs = (size_t)N * nb;
    double *part = camo_calloc(jobs * K + 1, sizeof(double)); /* (N, nb, K) */
    (void)be;
#pragma omp parallel for if ((size_t)N * P >= CPU_LOSS_PAR_MIN) num_threads(cpu_threads(be))
    for (size_t j = 0; j < jobs; j++) {
        size_t n = j / nb, p0 = (j % nb) * CPU_LOSS_BLOCK;
        fn(a, n * P + p0, n * P + CAMO_MIN(P, p0 + CPU_LOSS_BLOCK), part + j * K);
    }
    memset(sums, 0, (size_t)N * K * sizeof(double));
    for (size_t j = 0; j < jobs; j++)
        for (int k = 0; k < K; k++) sums[(j / nb) * K + k] += part[j * K + k];
    free(part);
}

static inline float sigmoid_f(float x) { return 1.0f / (1.0f + expf(-x)); } /* inf-safe */

/* BCEWithLogits(x, t) = max(x,0) - x*t + log(1 + exp(-|x|)), stable for any x */
static inline float bce_f(float x, float t) {
    return fmaxf(x, 0.0f) - x * t + log1pf(expf(-fabsf(x)));
}

/* ---- BCE with logits: mean over pixels, norm = global pixel count ---- */

static void bce_block(const loss_args *a, size_t i0, size_t i1, double *acc) {
    double s = 0;
    for (size_t i = i0; i < i1; i++) {
        s += bce_f(a->x[i], a->t[i]);
        a->dx[i] += (sigmoid_f(a->x[i]) - a->t[i]) / a->norm;
    }
    acc[0] += s;
}

/* logits, target, dlogits (N,H,W,1) */
static void cpu_loss_bce_logits(camo_backend *be, int N, int H, int W, float *loss,
                                float *dlogits, const float *logits, const float *target,
                                float norm) {
    loss_args a = {.x = logits, .t = target, .dx = dlogits, .norm = norm};
    double s;
    image_sums(be, 1, (size_t)N * H * W, 1, bce_block, &a, &s);
    *loss += (float)(s / norm);
}

/* ---- structure loss (SINet-V2 / F3Net) ---- */

/* hs row h (W) = sums of mask row h (W) over windows [w-15, w+15] clipped to the image,
 * by a sliding window kept in double so the add/remove drift stays far below float
 * precision */
static void structure_row_sums(int W, const float *mask, float *hs, int h) {
    const float *row = mask + (size_t)h * W;
    float *out = hs + (size_t)h * W;
    double s = 0;
    for (int j = 0; j <= STRUCT_R && j < W; j++) s += row[j];
    for (int w = 0; w < W; w++) { /* s = sum of row[w-R .. w+R] inside the image */
        out[w] = (float)s;
        if (w + STRUCT_R + 1 < W) s += row[w + STRUCT_R + 1];
        if (w - STRUCT_R >= 0) s -= row[w - STRUCT_R];
    }
}

/* weit (N,H,W) = 1 + 5|avgpool31(mask) - mask| for masks (N,H,W); zero padding is counted
 * (count_include_pad=True: always / 961). Separable box filter, ~33 adds a pixel instead of
 * 961: row sums, then 31 row sums per output row. hs (N,H,W) is scratch. */
static void structure_weights(camo_backend *be, int N, int H, int W, float *weit, float *hs,
                              const float *mask) {
    const float inv_area = 1.0f / (float)((2 * STRUCT_R + 1) * (2 * STRUCT_R + 1));
    (void)be;
#pragma omp parallel for if ((size_t)N * H * W >= CPU_LOSS_PAR_MIN) num_threads(cpu_threads(be))
    for (int nh = 0; nh < N * H; nh++)
        structure_row_sums(W, mask + (size_t)(nh / H) * H * W, hs + (size_t)(nh / H) * H * W,
                           nh % H);
#pragma omp parallel for if ((size_t)N * H * W >= CPU_LOSS_PAR_MIN) num_threads(cpu_threads(be))
    for (int nh = 0; nh < N * H; nh++) {
        int n = nh / H, h = nh % H;
        const float *hsn = hs + (size_t)n * H * W, *m = mask + (size_t)nh * W;
        float *out = weit + (size_t)nh * W;
        for (int w = 0; w < W; w++) out[w] = 0;
        for (int i = CAMO_MAX(0, h - STRUCT_R); i <= CAMO_MIN(H - 1, h + STRUCT_R); i++)
            for (int w = 0; w < W; w++) out[w] += hsn[(size_t)i * W + w];
        for (int w = 0; w < W; w++) out[w] = 1.0f + 5.0f * fabsf(out[w] * inv_area - m[w]);
    }
}

/* acc = [sum w, sum w*bce, inter = sum p*t*w, union = sum (p+t)*w] */
static void structure_block(const loss_args *a, size_t i0, size_t i1, double *acc) {
    double sw = 0, swb = 0, inter = 0, uni = 0;
    for (size_t i = i0; i < i1; i++) {
        float x = a->x[i], t = a->t[i], w = a->w[i], p = sigmoid_f(x);
        sw += w;
        swb += w * bce_f(x, t);
        inter += p * t * w;
        uni += (p + t) * w;
    }
    acc[0] += sw;
    acc[1] += swb;
    acc[2] += inter;
    acc[3] += uni;
}

/* Per image: wbce = sum(w*bce)/sum(w); wiou = 1 - (inter+1)/(union-inter+1); the loss adds
 * (wbce + wiou)/norm. The weights depend on the mask only, so d/dx is
 * w*(p-t)/sum(w) - w*p*(1-p)*(t*B - A*(1-t))/B^2 with A = inter+1, B = union-inter+1. */
static void cpu_loss_structure(camo_backend *be, int N, int H, int W, float *loss,
                               float *dlogits, const float *logits, const float *target,
                               float norm) {
    size_t P = (size_t)H * W;
    float *weit = cpu_workspace(be, 2 * (size_t)N * P), *hs = weit + (size_t)N * P;
    structure_weights(be, N, H, W, weit, hs, target);
    loss_args a = {.x = logits, .t = target, .w = weit};
    double *s = camo_malloc((size_t)N * STRUCT_K * sizeof(double)), total = 0;
    image_sums(be, N, P, STRUCT_K, structure_block, &a, s);
    for (int n = 0; n < N; n++) {
        double *sn = s + n * STRUCT_K, A = sn[2] + 1, B = sn[3] - sn[2] + 1;
        total += sn[1] / sn[0] + 1 - A / B;
    }
#pragma omp parallel for if (N * P >= CPU_LOSS_PAR_MIN) num_threads(cpu_threads(be))
    for (size_t i = 0; i < N * P; i++) {
        const double *sn = s + (i / P) * STRUCT_K;
        double A = sn[2] + 1, B = sn[3] - sn[2] + 1;
        double x = logits[i], t = target[i], w = weit[i], p = sigmoid_f((float)x);
        double g = w * (p - t) / sn[0] - w * p * (1 - p) * (t * B - A * (1 - t)) / (B * B);
        dlogits[i] += (float)(g / norm);
    }
    *loss += (float)(total / norm);
    free(s);
}

/* ---- soft Dice ---- */

/* acc = [sum p*t, sum p, sum t] */
static void dice_block(const loss_args *a, size_t i0, size_t i1, double *acc) {
    double spt = 0, sp = 0, st = 0;
    for (size_t i = i0; i < i1; i++) {
        float p = sigmoid_f(a->x[i]), t = a->t[i];
        spt += p * t;
        sp += p;
        st += t;
    }
    acc[0] += spt;
    acc[1] += sp;
    acc[2] += st;
}

/* Per image 1 - A/B with A = 2*sum(p*t)+1, B = sum(p)+sum(t)+1; dA/dp = 2t, dB/dp = 1. */
static void cpu_loss_dice(camo_backend *be, int N, int H, int W, float *loss, float *dlogits,
                          const float *logits, const float *target, float norm) {
    size_t P = (size_t)H * W;
    loss_args a = {.x = logits, .t = target};
    double *s = camo_malloc((size_t)N * 3 * sizeof(double)), total = 0;
    image_sums(be, N, P, 3, dice_block, &a, s);
    for (int n = 0; n < N; n++) total += 1 - (2 * s[n * 3] + 1) / (s[n * 3 + 1] + s[n * 3 + 2] + 1);
#pragma omp parallel for if (N * P >= CPU_LOSS_PAR_MIN) num_threads(cpu_threads(be))
    for (size_t i = 0; i < N * P; i++) {
        const double *sn = s + (i / P) * 3;
        double A = 2 * sn[0] + 1, B = sn[1] + sn[2] + 1;
        double p = sigmoid_f(logits[i]), t = target[i];
        double g = -(2 * t * B - A) / (B * B) * p * (1 - p);
        dlogits[i] += (float)(g / norm);
    }
    *loss += (float)(total / norm);
    free(s);
}

/* ---- softmax cross-entropy ---- */

static void ce_block(const loss_args *a, size_t i0, size_t i1, double *acc) {
    int C = a->C;
    double s = 0;
    for (size_t i = i0; i < i1; i++) {
        int l = a->labels[i];
        /* the data loader rejects labels outside [0, C) other than ignore_index; should
         * one get here anyway, it is skipped like ignore_index rather than read out of
         * bounds */
        if (l == a->ignore_index || l < 0 || l >= C) continue;
        const float *x = a->x + i * C;
        float *dx = a->dx + i * C;
        float mx = -INFINITY;
        for (int c = 0; c < C; c++) mx = fmaxf(mx, x[c]);
        double z = 0;
        for (int c = 0; c < C; c++) z += expf(x[c] - mx);
        s += mx + log(z) - x[l]; /* -log softmax(x)[l] = logsumexp(x) - x[l] */
        float inv_z = (float)(1.0 / z), inv_norm = 1.0f / a->norm;
        for (int c = 0; c < C; c++)
            dx[c] += (expf(x[c] - mx) * inv_z - (float)(c == l)) * inv_norm;
    }
    acc[0] += s;
}

/* logits, dlogits (N,H,W,C); labels (N,H,W); norm = global count of valid pixels */
static void cpu_loss_cross_entropy(camo_backend *be, int N, int H, int W, int C, float *loss,
                                   float *dlogits, const float *logits, const int *labels,
                                   int ignore_index, float norm) {
    loss_args a = {.x = logits, .labels = labels, .dx = dlogits, .C = C,
                   .ignore_index = ignore_index, .norm = norm};
    double s;
    image_sums(be, 1, (size_t)N * H * W, 1, ce_block, &a, &s);
    /* no valid pixel anywhere (norm 0): PyTorch's mean would be 0/0 = NaN; add nothing,
     * so one fully ignored batch does not poison the running loss */
    if (norm > 0) *loss += (float)(s / norm);
}

/* ---- training pixel accuracy (backend.h pixel_correct) ---- */

/* index of the first largest of C values (torch.argmax's choice among ties) */
static int argmax_first(const float *x, int C) {
    int best = 0;
    for (int c = 1; c < C; c++)
        if (x[c] > x[best]) best = c;
    return best;
}

static void correct_block(const loss_args *a, size_t i0, size_t i1, double *acc) {
    size_t correct = 0, counted = 0;
    for (size_t i = i0; i < i1; i++) {
        if (a->C == 1) { /* sigmoid(x) > 0.5 <=> x > 0 */
            correct += (a->x[i] > 0.0f) == (a->t[i] > 0.5f);
            counted++;
            continue;
        }
        int l = a->labels[i];
        if (l == a->ignore_index || l < 0 || l >= a->C) continue;
        correct += argmax_first(a->x + i * a->C, a->C) == l;
        counted++;
    }
    acc[0] += (double)correct;
    acc[1] += (double)counted;
}

static void cpu_pixel_correct(camo_backend *be, int N, int H, int W, int C, double *acc,
                              const float *logits, const float *target, const int *labels,
                              int ignore_index) {
    loss_args a = {.x = logits, .t = target, .labels = labels, .C = C,
                   .ignore_index = ignore_index};
    double s[2];
    image_sums(be, 1, (size_t)N * H * W, 2, correct_block, &a, s);
    acc[0] += s[0];
    acc[1] += s[1];
}

void cpu_register_loss(camo_backend *be) {
    be->pixel_correct = cpu_pixel_correct;
    be->loss_bce_logits = cpu_loss_bce_logits;
    be->loss_structure = cpu_loss_structure;
    be->loss_dice = cpu_loss_dice;
    be->loss_cross_entropy = cpu_loss_cross_entropy;
}
