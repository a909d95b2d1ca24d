/* metrics.c: binary segmentation metrics (S, E, weighted F, F, MAE, IoU, Dice) matching
 * PySODMetrics 1.6 op for op, and a confusion-matrix accumulator for K classes.
 *
 * A uint8 prediction has only 256 values, so everything that depends on the value alone
 * (normalisation, thresholds, histograms split by GT) goes through a 256-entry table; only
 * S-measure's quadrant SSIM and weighted F's distance transform + Gaussian look at pixels. */
#include "train/metrics.h"

#include "core/common.h"

#include <math.h>
#include <string.h>

/* numpy's np.spacing(1) (= DBL_EPSILON), used as the reference's "eps" everywhere */
#define SOD_EPS 2.220446049250313e-16
#define FM_BETA2 0.3   /* F-measure's beta^2, as the field uses */
#define WFM_BETA2 1.0  /* weighted F-measure's beta^2 */

struct camo_sod_acc {
    int64_t n;
    double sm, em_adp, wfm, fm_adp, mae, iou, dice;   /* sums over images */
    double em_curve[256], fm_curve[256];              /* [t]: sums at "pred >= t" */
    /* per-image scratch, grown to the largest image seen */
    size_t cap, line_cap;
    double *et, *tmp, *ea;   /* (h, w) */
    int32_t *fr, *fc;        /* (h, w) feature transform: nearest GT-foreground pixel */
    int32_t (*line)[2];      /* (max(h, w), 2) one line of features for the Voronoi pass */
    int *stack;              /* (max(h, w),) */
    uint8_t *q;              /* (h, w) quantised float map for _add_f32 */
};

/* One image, reduced to what the metrics need. */
typedef struct {
    const uint8_t *pred, *gt;
    int w, h;
    int64_t N, n_fg;                      /* pixels, GT foreground pixels (gt > 128) */
    int64_t hist_fg[256], hist_bg[256];   /* raw prediction values split by GT */
    double norm[256];                     /* raw value -> normalised prediction (only values
                                             present in the image lie in [0, 1]) */
    double row_sum, col_sum;              /* of GT foreground coordinates (centroid) */
} sod_image;

camo_sod_acc *camo_sod_acc_new(void) { return camo_calloc(1, sizeof(camo_sod_acc)); }

void camo_sod_acc_free(camo_sod_acc *a) {
    if (!a) return;
    free(a->et); free(a->tmp); free(a->ea);
    free(a->fr); free(a->fc); free(a->line); free(a->stack); free(a->q);
    free(a);
}

void camo_sod_acc_reset(camo_sod_acc *a) {
    a->n = 0;
    a->sm = a->em_adp = a->wfm = a->fm_adp = a->mae = a->iou = a->dice = 0;
    memset(a->em_curve, 0, sizeof a->em_curve);
    memset(a->fm_curve, 0, sizeof a->fm_curve);
}

static void sod_reserve(camo_sod_acc *a, int w, int h) {
    size_t n = (size_t)w * h, line = (size_t)CAMO_MAX(w, h);
    if (n > a->cap) {
        a->et = camo_realloc(a->et, n * sizeof(double));
        a->tmp = camo_realloc(a->tmp, n * sizeof(double));
        a->ea = camo_realloc(a->ea, n * sizeof(double));
        a->fr = camo_realloc(a->fr, n * sizeof(int32_t));
        a->fc = camo_realloc(a->fc, n * sizeof(int32_t));
        a->q = camo_realloc(a->q, n);
        a->cap = n;
    }
    if (line > a->line_cap) {
        a->line = camo_realloc(a->line, line * sizeof(*a->line));
        a->stack = camo_realloc(a->stack, line * sizeof(int));
        a->line_cap = line;
    }
}

/* Histograms, centroid sums and the normalisation table: PySODMetrics' prepare_data is
 * pred / 255, then (pred - min) / (max - min) unless constant; the same double operations
 * in the same order give bit-identical values. */
static void sod_prepare(sod_image *im, const uint8_t *pred, const uint8_t *gt, int w, int h) {
    memset(im, 0, sizeof *im);
    im->pred = pred; im->gt = gt; im->w = w; im->h = h;
    im->N = (int64_t)w * h;
    int vmin = 255, vmax = 0;
    for (int y = 0; y < h; y++) {
        int64_t row_fg = 0;
        for (int x = 0; x < w; x++) {
            size_t i = (size_t)y * w + x;
            uint8_t v = pred[i];
            vmin = CAMO_MIN(vmin, v);
            vmax = CAMO_MAX(vmax, v);
            if (gt[i] > 128) {
                im->hist_fg[v]++;
                row_fg++;
                im->col_sum += x;
            } else {
                im->hist_bg[v]++;
            }
        }
        im->n_fg += row_fg;
        im->row_sum += (double)row_fg * y;
    }
    double mn = vmin / 255.0, mx = vmax / 255.0;
    for (int v = 0; v < 256; v++) {
        double p = v / 255.0;
        im->norm[v] = vmax != vmin ? (p - mn) / (mx - mn) : p;
    }
}

static double sod_pred_mean(const sod_image *im) {
    double s = 0;
    for (int v = 0; v < 256; v++) s += (double)(im->hist_fg[v] + im->hist_bg[v]) * im->norm[v];
    return s / (double)im->N;
}

static double sod_mae(const sod_image *im) {
    double s = 0;
    for (int v = 0; v < 256; v++)
        s += (double)im->hist_fg[v] * (1.0 - im->norm[v]) + (double)im->hist_bg[v] * im->norm[v];
    return s / (double)im->N;
}

/* ---- E-measure and F-measure from counts of a binarised prediction ---- */

/* Enhanced-alignment sum of one (prediction, GT) part pair, as in
 * Emeasure.generate_parts_numel_combinations: every pixel of a part has the same value. */
static double em_part(double count, double dp, double dg) {
    double align = 2 * (dp * dg) / (dp * dp + dg * dg + SOD_EPS);
    double enhanced = (align + 1) * (align + 1) / 4;
    return enhanced * count;
}

/* fg_fg / fg_bg: predicted-foreground pixels on GT foreground / background. */
static double em_from_counts(double fg_fg, double fg_bg, double N, double n_fg) {
    double fg = fg_fg + fg_bg, bg = N - fg, sum;
    if (n_fg == 0) {
        sum = bg;
    } else if (n_fg == N) {
        sum = fg;
    } else {
        double bg_fg = n_fg - fg_fg, bg_bg = bg - bg_fg;
        double mp = fg / N, mg = n_fg / N;
        sum = em_part(fg_fg, 1 - mp, 1 - mg);
        sum += em_part(fg_bg, 1 - mp, 0 - mg);
        sum += em_part(bg_fg, 0 - mp, 1 - mg);
        sum += em_part(bg_bg, 0 - mp, 0 - mg);
    }
    return sum / (N - 1 + SOD_EPS);
}

/* Fmeasure.cal_pr at one threshold: zero denominators become 1 (the numerator is 0). */
static double fm_curve_point(double tp, double fp, double n_fg) {
    double P = tp + fp, T = n_fg > 1 ? n_fg : 1;
    if (P == 0) P = 1;
    double prec = tp / P, rec = tp / T;
    double num = (1 + FM_BETA2) * prec * rec;
    double den = num == 0 ? 1 : FM_BETA2 * prec + rec;
    return num / den;
}

/* Curves over thresholds t = 0..255 on floor(255 * normalised), as the reference's
 * (pred * 255).astype(uint8) + histogram + flipped cumsum. */
static void sod_curves(const sod_image *im, double *em, double *fm) {
    int64_t fg_h[256] = {0}, bg_h[256] = {0};
    for (int v = 0; v < 256; v++) {
        if (!im->hist_fg[v] && !im->hist_bg[v]) continue; /* outside [min, max]: no bin */
        int b = (int)(im->norm[v] * 255);
        fg_h[b] += im->hist_fg[v];
        bg_h[b] += im->hist_bg[v];
    }
    int64_t tp = 0, fp = 0;
    for (int t = 255; t >= 0; t--) {
        tp += fg_h[t];
        fp += bg_h[t];
        em[t] = em_from_counts((double)tp, (double)fp, (double)im->N, (double)im->n_fg);
        fm[t] = fm_curve_point((double)tp, (double)fp, (double)im->n_fg);
    }
}

/* Adaptive E and F: binarise at min(2 * mean(pred), 1). */
static void sod_adaptive(const sod_image *im, double *em_adp, double *fm_adp) {
    double thr = CAMO_MIN(2 * sod_pred_mean(im), 1.0);
    int64_t fg_fg = 0, fg_bg = 0;
    for (int v = 0; v < 256; v++)
        if (im->norm[v] >= thr) {
            fg_fg += im->hist_fg[v];
            fg_bg += im->hist_bg[v];
        }
    *em_adp = em_from_counts((double)fg_fg, (double)fg_bg, (double)im->N, (double)im->n_fg);
    if (fg_fg == 0) {
        *fm_adp = 0;
    } else {
        double pre = (double)fg_fg / (double)(fg_fg + fg_bg);
        double rec = (double)fg_fg / (double)im->n_fg;
        *fm_adp = (1 + FM_BETA2) * pre * rec / (FM_BETA2 * pre + rec);
    }
}

/* ---- S-measure ---- */

/* Smeasure.s_object over the pixels of one GT side; bg scores 1 - pred. */
static double s_object(const sod_image *im, int fg_side) {
    const int64_t *hist = fg_side ? im->hist_fg : im->hist_bg;
    int64_t n = fg_side ? im->n_fg : im->N - im->n_fg;
    double s = 0, ss = 0;
    for (int v = 0; v < 256; v++) s += (double)hist[v] * (fg_side ? im->norm[v] : 1 - im->norm[v]);
    double mean = s / (double)n;
    for (int v = 0; v < 256; v++) {
        double d = (fg_side ? im->norm[v] : 1 - im->norm[v]) - mean;
        ss += (double)hist[v] * d * d;
    }
    double sd = n > 1 ? sqrt(ss / (double)(n - 1)) : 0;  /* np.std(ddof=1) */
    return 2 * mean / (mean * mean + 1 + sd + SOD_EPS);
}

/* Smeasure.ssim of the rectangle rows [y0, y1) x cols [x0, x1). An empty rectangle (centroid
 * on the last row/column) has weight 0; the reference returns NaN there, we return 0. */
static double s_ssim(const sod_image *im, int y0, int y1, int x0, int x1) {
    double N = (double)(y1 - y0) * (x1 - x0);
    if (N <= 0) return 0;
    double sx = 0, sy = 0;
    for (int y = y0; y < y1; y++)
        for (int x = x0; x < x1; x++) {
            size_t i = (size_t)y * im->w + x;
            sx += im->norm[im->pred[i]];
            sy += im->gt[i] > 128;
        }
    double mx = sx / N, my = sy / N, vx = 0, vy = 0, cxy = 0;
    for (int y = y0; y < y1; y++)
        for (int x = x0; x < x1; x++) {
            size_t i = (size_t)y * im->w + x;
            double dx = im->norm[im->pred[i]] - mx, dy = (im->gt[i] > 128) - my;
            vx += dx * dx; vy += dy * dy; cxy += dx * dy;
        }
    vx /= N - 1 + SOD_EPS; vy /= N - 1 + SOD_EPS; cxy /= N - 1 + SOD_EPS;
    double alpha = 4 * mx * my * cxy, beta = (mx * mx + my * my) * (vx + vy);
    if (alpha != 0) return alpha / (beta + SOD_EPS);
    return beta == 0 ? 1 : 0;
}

/* Smeasure.region: four quadrants split at the GT centroid (rounded half to even like
 * np.round, plus one like the MATLAB code), weighted by area. */
static double s_region(const sod_image *im) {
    int h = im->h, w = im->w;
    double area = (double)im->N;
    int cy = (int)nearbyint(im->row_sum / (double)im->n_fg) + 1;
    int cx = (int)nearbyint(im->col_sum / (double)im->n_fg) + 1;
    double w_lt = (double)cx * cy / area, w_rt = (double)cy * (w - cx) / area;
    double w_lb = (double)(h - cy) * cx / area, w_rb = 1 - w_lt - w_rt - w_lb;
    return s_ssim(im, 0, cy, 0, cx) * w_lt + s_ssim(im, 0, cy, cx, w) * w_rt +
           s_ssim(im, cy, h, 0, cx) * w_lb + s_ssim(im, cy, h, cx, w) * w_rb;
}

static double s_measure(const sod_image *im) {
    if (im->n_fg == 0) return 1 - sod_pred_mean(im);
    if (im->n_fg == im->N) return sod_pred_mean(im);
    double y = (double)im->n_fg / (double)im->N;
    double object = s_object(im, 1) * y + s_object(im, 0) * (1 - y);
    double sm = object * 0.5 + s_region(im) * (1 - 0.5);
    return sm > 0 ? sm : 0;
}

/* ---- weighted F-measure ---- */

/* One line of scipy's exact Euclidean feature transform (Maurer et al. 2003, scipy's
 * _VoronoiFT for 2-D): fr/fc hold each position's nearest feature so far along the
 * previous axis (fr < 0: none); d is the axis of this line, other = its coordinate on the
 * other axis. The same operations and tie rules as scipy, so ties pick the same pixel. */
static void voronoi_ft(int32_t *fr, int32_t *fc, ptrdiff_t stride, int len, int d, int other,
                       int32_t (*f)[2], int *g) {
    for (int i = 0; i < len; i++) { f[i][0] = fr[i * stride]; f[i][1] = fc[i * stride]; }
    int l = -1, o = 1 - d;
    for (int i = 0; i < len; i++) {
        if (f[i][0] < 0) continue;
        double fd = f[i][d], tw = f[i][o] - other, wR = tw * tw;
        while (l >= 1) {
            int i1 = g[l], i2 = g[l - 1];
            double f1 = f[i1][d], a = f1 - f[i2][d], b = fd - f1, c = a + b;
            double tu = f[i2][o] - other, tv = f[i1][o] - other;
            if (c * (tv * tv) - b * (tu * tu) - a * wR - a * b * c <= 0.0) break;
            --l;
        }
        g[++l] = i;
    }
    if (l < 0) return;
    int maxl = l;
    l = 0;
    for (int i = 0; i < len; i++) {
        double t0 = f[g[l]][d] - i, t1 = f[g[l]][o] - other, d1 = t0 * t0 + t1 * t1;
        while (l < maxl) {
            double u0 = f[g[l + 1]][d] - i, u1 = f[g[l + 1]][o] - other;
            double d2 = u0 * u0 + u1 * u1;
            if (d1 <= d2) break;
            d1 = d2;
            ++l;
        }
        fr[i * stride] = f[g[l]][0];
        fc[i * stride] = f[g[l]][1];
    }
}

/* scipy.ndimage.distance_transform_edt(gt == 0, return_indices=True)'s indices: for each
 * pixel the nearest GT-foreground pixel (itself when foreground). Columns first, then rows,
 * like scipy's recursion over axes. */
static void wfm_feature_transform(camo_sod_acc *a, const sod_image *im) {
    int h = im->h, w = im->w;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            size_t i = (size_t)y * w + x;
            int fg = im->gt[i] > 128;
            a->fr[i] = fg ? y : -1;
            a->fc[i] = fg ? x : -1;
        }
    for (int x = 0; x < w; x++)
        voronoi_ft(a->fr + x, a->fc + x, w, h, 0, x, a->line, a->stack);
    for (int y = 0; y < h; y++)
        voronoi_ft(a->fr + (size_t)y * w, a->fc + (size_t)y * w, 1, w, 1, y, a->line, a->stack);
}

/* MATLAB's fspecial('gaussian', 7, 5), separated: the 2-D kernel is the outer product of
 * this normalised 1-D one (no entry falls under the eps * max cut-off at sigma 5). */
static void wfm_gauss7(double *k) {
    double s = 0;
    for (int i = 0; i < 7; i++) s += k[i] = exp(-(double)((i - 3) * (i - 3)) / (2 * 5.0 * 5.0));
    for (int i = 0; i < 7; i++) k[i] /= s;
}

/* src -> dst filtered with the 7-tap kernel along x then y, zeros outside the image
 * (scipy.ndimage.convolve(mode="constant", cval=0), which the reference uses). */
static void wfm_blur(double *dst, double *tmp, const double *src, int w, int h) {
    double k[7];
    wfm_gauss7(k);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            double s = 0;
            for (int j = -3; j <= 3; j++)
                if (x + j >= 0 && x + j < w) s += k[j + 3] * src[(size_t)y * w + x + j];
            tmp[(size_t)y * w + x] = s;
        }
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            double s = 0;
            for (int j = -3; j <= 3; j++)
                if (y + j >= 0 && y + j < h) s += k[j + 3] * tmp[(size_t)(y + j) * w + x];
            dst[(size_t)y * w + x] = s;
        }
}

static double wfm_error(const sod_image *im, size_t i) {
    return fabs(im->norm[im->pred[i]] - (im->gt[i] > 128));
}

/* WeightedFmeasure.cal_wfm (Margolin et al. 2014). */
static double weighted_fm(camo_sod_acc *a, const sod_image *im) {
    if (im->n_fg == 0) return 0;
    int w = im->w;
    size_t N = (size_t)im->N;
    wfm_feature_transform(a, im);
    /* pixel dependency: background pixels take the error of their nearest GT pixel */
    for (size_t i = 0; i < N; i++)
        a->et[i] = wfm_error(im, (size_t)a->fr[i] * w + (size_t)a->fc[i]);
    wfm_blur(a->ea, a->tmp, a->et, w, im->h);
    /* pixel importance: background errors grow with the distance to the object */
    double sum_fg = 0, sum_bg = 0, decay = log(0.5) / 5;
    for (size_t i = 0; i < N; i++) {
        double e = wfm_error(im, i);
        if (im->gt[i] > 128) {
            sum_fg += a->ea[i] < e ? a->ea[i] : e;
        } else {
            double dy = a->fr[i] - (double)(i / w), dx = a->fc[i] - (double)(i % w);
            sum_bg += e * (2 - exp(decay * sqrt(dy * dy + dx * dx)));
        }
    }
    double tpw = (double)im->n_fg - sum_fg, fpw = sum_bg;
    double R = 1 - sum_fg / (double)im->n_fg;
    double P = tpw / (tpw + fpw + SOD_EPS);
    return (1 + WFM_BETA2) * R * P / (R + WFM_BETA2 * P + SOD_EPS);
}

/* ---- accumulation ---- */

/* IoU and Dice on the raw map at 0.5: pred >= 127.5 and the data loader's gt > 127. */
static void sod_iou_dice(const sod_image *im, double *iou, double *dice) {
    int64_t inter = 0, np = 0, ng = 0;
    for (int64_t i = 0; i < im->N; i++) {
        int p = im->pred[i] >= 128, g = im->gt[i] > 127;
        inter += p & g; np += p; ng += g;
    }
    int64_t uni = np + ng - inter;
    *iou = uni ? (double)inter / (double)uni : 1.0;
    *dice = np + ng ? 2.0 * (double)inter / (double)(np + ng) : 1.0;
}

int camo_sod_acc_add(camo_sod_acc *a, const uint8_t *pred, const uint8_t *gt, int w, int h) {
    if (w <= 0 || h <= 0) {
        CAMO_ERR("metrics: bad image size %dx%d", w, h);
        return CAMO_ERR_INPUT;
    }
    sod_reserve(a, w, h);
    sod_image im;
    sod_prepare(&im, pred, gt, w, h);
    double em[256], fm[256], em_adp, fm_adp, iou, dice;
    sod_curves(&im, em, fm);
    for (int t = 0; t < 256; t++) { a->em_curve[t] += em[t]; a->fm_curve[t] += fm[t]; }
    sod_adaptive(&im, &em_adp, &fm_adp);
    sod_iou_dice(&im, &iou, &dice);
    a->em_adp += em_adp;
    a->fm_adp += fm_adp;
    a->iou += iou;
    a->dice += dice;
    a->sm += s_measure(&im);
    a->mae += sod_mae(&im);
    a->wfm += weighted_fm(a, &im);
    a->n++;
    return 0;
}

int camo_sod_acc_add_f32(camo_sod_acc *a, const float *prob, const uint8_t *gt, int w, int h) {
    if (w <= 0 || h <= 0) {
        CAMO_ERR("metrics: bad image size %dx%d", w, h);
        return CAMO_ERR_INPUT;
    }
    sod_reserve(a, w, h);
    size_t n = (size_t)w * h;
    for (size_t i = 0; i < n; i++) {
        float p = prob[i];
        p = p > 0 ? (p < 1 ? p : 1) : 0; /* also maps NaN to 0 */
        a->q[i] = (uint8_t)(p * 255.0f + 0.5f);
    }
    return camo_sod_acc_add(a, a->q, gt, w, h);
}

void camo_sod_acc_merge(camo_sod_acc *dst, const camo_sod_acc *src) {
    dst->n += src->n;
    dst->sm += src->sm; dst->em_adp += src->em_adp; dst->wfm += src->wfm;
    dst->fm_adp += src->fm_adp; dst->mae += src->mae;
    dst->iou += src->iou; dst->dice += src->dice;
    for (int t = 0; t < 256; t++) {
        dst->em_curve[t] += src->em_curve[t];
        dst->fm_curve[t] += src->fm_curve[t];
    }
}

/* Mean and max of the image-averaged curve. */
static void curve_stats(const double *sum, double n, double *mean, double *max) {
    double s = 0, m = -INFINITY;
    for (int t = 0; t < 256; t++) {
        double v = sum[t] / n;
        s += v;
        m = v > m ? v : m;
    }
    *mean = s / 256;
    *max = m;
}

void camo_sod_acc_result(const camo_sod_acc *a, camo_sod_metrics *out) {
    memset(out, 0, sizeof *out);
    out->n_images = a->n;
    if (a->n == 0) return;
    double n = (double)a->n;
    out->sm = a->sm / n;
    out->em_adp = a->em_adp / n;
    out->wfm = a->wfm / n;
    out->fm_adp = a->fm_adp / n;
    out->mae = a->mae / n;
    out->iou = a->iou / n;
    out->dice = a->dice / n;
    curve_stats(a->em_curve, n, &out->em_mean, &out->em_max);
    curve_stats(a->fm_curve, n, &out->fm_mean, &out->fm_max);
}

void camo_sod_print_fields(const camo_sod_metrics *m, FILE *out) {
    fprintf(out, "\"n_images\": %lld, \"sm\": %.6f, \"em_mean\": %.6f, \"em_max\": %.6f, "
            "\"em_adp\": %.6f, \"wfm\": %.6f, \"fm_mean\": %.6f, \"fm_max\": %.6f, "
            "\"fm_adp\": %.6f, \"mae\": %.6f, \"iou\": %.6f, \"dice\": %.6f",
            (long long)m->n_images, m->sm, m->em_mean, m->em_max, m->em_adp, m->wfm,
            m->fm_mean, m->fm_max, m->fm_adp, m->mae, m->iou, m->dice);
}

void camo_sod_print(const camo_sod_metrics *m, FILE *out, int json) {
    if (json) {
        fputc('{', out);
        camo_sod_print_fields(m, out);
        fputs("}\n", out);
        return;
    }
    fprintf(out, "images            %lld\n", (long long)m->n_images);
    fprintf(out, "S-measure         %.4f\n", m->sm);
    fprintf(out, "E-measure  mean   %.4f   max %.4f   adp %.4f\n", m->em_mean, m->em_max,
            m->em_adp);
    fprintf(out, "weighted F        %.4f\n", m->wfm);
    fprintf(out, "F-measure  mean   %.4f   max %.4f   adp %.4f\n", m->fm_mean, m->fm_max,
            m->fm_adp);
    fprintf(out, "MAE               %.4f\n", m->mae);
    fprintf(out, "IoU@0.5           %.4f\n", m->iou);
    fprintf(out, "Dice@0.5          %.4f\n", m->dice);
}

/* ---- multi-class ---- */

struct camo_cls_acc {
    int K, ignore;
    int64_t *cm; /* (K, K) */
};

camo_cls_acc *camo_cls_acc_new(int K, int ignore_index) {
    CAMO_ASSERT(K >= 1);
    camo_cls_acc *a = camo_calloc(1, sizeof *a);
    a->K = K;
    a->ignore = ignore_index;
    a->cm = camo_calloc((size_t)K * K, sizeof(int64_t));
    return a;
}

void camo_cls_acc_free(camo_cls_acc *a) {
    if (!a) return;
    free(a->cm);
    free(a);
}

int camo_cls_acc_add(camo_cls_acc *a, const int32_t *pred, const int32_t *gt, size_t n) {
    int K = a->K;
    /* validate first so that a bad call counts nothing */
    for (size_t i = 0; i < n; i++) {
        if (gt[i] == a->ignore) continue;
        if (gt[i] < 0 || gt[i] >= K || pred[i] < 0 || pred[i] >= K) {
            CAMO_ERR("metrics: pixel %zu has %s class %d outside 0..%d", i,
                     gt[i] < 0 || gt[i] >= K ? "ground-truth" : "predicted",
                     gt[i] < 0 || gt[i] >= K ? gt[i] : pred[i], K - 1);
            return CAMO_ERR_INPUT;
        }
    }
    for (size_t i = 0; i < n; i++)
        if (gt[i] != a->ignore) a->cm[(size_t)gt[i] * K + pred[i]]++;
    return 0;
}

void camo_cls_acc_merge(camo_cls_acc *dst, const camo_cls_acc *src) {
    CAMO_ASSERT(dst->K == src->K);
    for (size_t i = 0; i < (size_t)dst->K * dst->K; i++) dst->cm[i] += src->cm[i];
}

const int64_t *camo_cls_acc_confusion(const camo_cls_acc *a) { return a->cm; }

void camo_cls_acc_result(const camo_cls_acc *a, camo_cls_metrics *out, double *iou) {
    int K = a->K, n_iou = 0, n_acc = 0;
    int64_t correct = 0, total = 0;
    double s_iou = 0, s_acc = 0;
    for (int k = 0; k < K; k++) {
        int64_t row = 0, col = 0, tp = a->cm[(size_t)k * K + k];
        for (int j = 0; j < K; j++) {
            row += a->cm[(size_t)k * K + j];
            col += a->cm[(size_t)j * K + k];
        }
        int64_t uni = row + col - tp;
        iou[k] = uni > 0 ? (double)tp / (double)uni : NAN;
        if (uni > 0) { s_iou += iou[k]; n_iou++; }
        if (row > 0) { s_acc += (double)tp / (double)row; n_acc++; }
        correct += tp;
        total += row;
    }
    out->K = K;
    out->iou = iou;
    out->n_pixels = total;
    out->miou = n_iou ? s_iou / n_iou : NAN;
    out->mean_acc = n_acc ? s_acc / n_acc : NAN;
    out->pixel_acc = total ? (double)correct / (double)total : NAN;
}

/* JSON has no NaN: absent classes are null. */
static void json_num(FILE *out, double v) {
    if (isnan(v)) fputs("null", out);
    else fprintf(out, "%.6f", v);
}

void camo_cls_print_fields(const camo_cls_metrics *m, FILE *out) {
    fprintf(out, "\"n_pixels\": %lld, \"miou\": ", (long long)m->n_pixels);
    json_num(out, m->miou);
    fputs(", \"pixel_acc\": ", out);
    json_num(out, m->pixel_acc);
    fputs(", \"mean_acc\": ", out);
    json_num(out, m->mean_acc);
    /* "class_iou", not "iou": that key is the binary IoU@0.5, a number, in every other record */
    fputs(", \"class_iou\": [", out);
    for (int k = 0; k < m->K; k++) {
        if (k) fputs(", ", out);
        json_num(out, m->iou[k]);
    }
    fputc(']', out);
}

void camo_cls_print(const camo_cls_metrics *m, FILE *out, int json) {
    if (json) {
        fputc('{', out);
        camo_cls_print_fields(m, out);
        fputs("}\n", out);
        return;
    }
    fprintf(out, "pixels            %lld\n", (long long)m->n_pixels);
    fprintf(out, "mIoU              %.4f\n", m->miou);
    fprintf(out, "pixel accuracy    %.4f\n", m->pixel_acc);
    fprintf(out, "mean accuracy     %.4f\n", m->mean_acc);
    for (int k = 0; k < m->K; k++) {
        if (isnan(m->iou[k])) fprintf(out, "  class %-3d IoU   -      (absent)\n", k);
        else fprintf(out, "  class %-3d IoU   %.4f\n", k, m->iou[k]);
    }
}
