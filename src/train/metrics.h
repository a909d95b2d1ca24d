/* metrics.h: evaluation metrics for binary (camouflaged / salient object) and multi-class
 * segmentation, plus the scorer of saved prediction PNGs against ground-truth folders.
 *
 * Binary metrics match PySODMetrics 1.6 (the field's reference, itself a port of the
 * MATLAB toolboxes) to ~1e-12 on the same uint8 inputs:
 *   - the GT is gt > 128 (PySODMetrics' prepare_data); IoU/Dice use gt > 127 like our data
 *     loader (the two differ only on pixels equal to 128, absent in 0/255 masks);
 *   - the prediction is p/255, then min-max normalised when not constant (MATLAB's
 *     mapminmax(im2double(.))); every metric except IoU/Dice sees the normalised map;
 *   - curves (E, F) have 256 thresholds on floor(255 * normalised); the set's curve is
 *     the mean over images, and max/mean are taken of that mean curve;
 *   - every other metric is computed per image and averaged over images;
 *   - one deliberate difference: when the GT centroid rounds onto the last row or column,
 *     S-measure's empty quadrant (weight 0) makes the reference NaN; it counts 0 here.
 * Shapes: images are (h, w) row-major uint8. */
#ifndef CAMO_METRICS_H
#define CAMO_METRICS_H

#include <stdint.h>
#include <stdio.h>

typedef struct camo_sod_metrics {
    double sm;                       /* S-measure, alpha = 0.5 */
    double em_mean, em_max, em_adp;  /* E-measure over 256 thresholds; adaptive (2 x mean) */
    double wfm;                      /* weighted F-measure, beta^2 = 1 */
    double fm_mean, fm_max, fm_adp;  /* F-measure, beta^2 = 0.3 */
    double mae;                      /* mean absolute error of the normalised map */
    double iou, dice;                /* at 0.5 on the raw map: pred >= 128 vs gt > 127;
                                        1 when prediction and GT are both empty */
    int64_t n_images;
} camo_sod_metrics;

typedef struct camo_sod_acc camo_sod_acc;

camo_sod_acc *camo_sod_acc_new(void);
void camo_sod_acc_free(camo_sod_acc *a);
void camo_sod_acc_reset(camo_sod_acc *a);
/* Scores one image. pred: (h, w) 0..255 foreground probability; gt: (h, w) mask (0/255).
 * Non-zero with an error on a bad size. Scratch buffers are kept between calls. */
int camo_sod_acc_add(camo_sod_acc *a, const uint8_t *pred, const uint8_t *gt, int w, int h);
/* Same with a float probability map in [0, 1] (clamped), quantised as round(p * 255),
 * which is what saving the map as a PNG and scoring the file would give. */
int camo_sod_acc_add_f32(camo_sod_acc *a, const float *prob, const uint8_t *gt, int w, int h);
/* Adds src's images into dst (per-thread accumulators, merged at the end). */
void camo_sod_acc_merge(camo_sod_acc *dst, const camo_sod_acc *src);
/* Averages over the images added so far; all zero when none were. */
void camo_sod_acc_result(const camo_sod_acc *a, camo_sod_metrics *out);

/* A table (json = 0) or one JSON object on one line (json = 1). */
void camo_sod_print(const camo_sod_metrics *m, FILE *out, int json);
/* The JSON members alone ("sm": ..., ...), to embed in a larger object. */
void camo_sod_print_fields(const camo_sod_metrics *m, FILE *out);

/* ---- multi-class: a K x K confusion matrix (rows = GT, columns = prediction) ---- */

typedef struct camo_cls_metrics {
    int K;
    double miou;       /* mean IoU over classes with union > 0 (nanmean convention) */
    double pixel_acc;  /* correct / counted pixels */
    double mean_acc;   /* mean per-class recall over classes present in the GT */
    int64_t n_pixels;  /* counted pixels (GT != ignore_index) */
    const double *iou; /* (K,) per-class IoU, NaN where the class is in neither GT nor
                          prediction; points into the caller's array given to _result */
} camo_cls_metrics;

typedef struct camo_cls_acc camo_cls_acc;

/* K >= 1 classes 0..K-1; GT pixels equal to ignore_index are skipped (use a value outside
 * 0..K-1, e.g. 255, or -1 for none). */
camo_cls_acc *camo_cls_acc_new(int K, int ignore_index);
void camo_cls_acc_free(camo_cls_acc *a);
/* Counts n pixels. Non-zero with an error naming the value when a counted GT or a
 * prediction is outside 0..K-1 (nothing of that call is counted then). */
int camo_cls_acc_add(camo_cls_acc *a, const int32_t *pred, const int32_t *gt, size_t n);
void camo_cls_acc_merge(camo_cls_acc *dst, const camo_cls_acc *src);
/* (K, K) counts, row = GT class, column = predicted class. */
const int64_t *camo_cls_acc_confusion(const camo_cls_acc *a);
/* iou: (K,) array filled with the per-class IoU; out->iou points to it. */
void camo_cls_acc_result(const camo_cls_acc *a, camo_cls_metrics *out, double *iou);

/* A table with per-class IoU (json = 0) or one JSON object on one line. */
void camo_cls_print(const camo_cls_metrics *m, FILE *out, int json);
void camo_cls_print_fields(const camo_cls_metrics *m, FILE *out);

/* ---- scoring saved predictions (src/eval_pred.c) ---- */

/* What the ground truth is and how to score it. */
typedef struct camo_pred_eval {
    int classes;        /* 1: probability maps (GT > 127 is foreground); 2..256: class indices */
    int ignore_index;   /* classes > 1: GT pixels with this value are not counted (e.g. 255) */
    const char *format; /* a data.format name or NULL; "ade20k": GT 0 = ignore, v = class v-1 */
    const char *split;  /* gt is a data-set root: its split (NULL: "Test", with its aliases) */
} camo_pred_eval;

/* Scores the predictions in pred_dir (predict's output: one map per image, named by the
 * image's stem, any extension) against gt, then prints the metrics to out (a table, or one
 * JSON line). gt is either a folder of masks, each paired with the prediction of its own stem,
 * else of its image's stem in data.format's layouts (CARLA's NAME_label.png: NAME), or, when
 * it holds no images, a data-set root whose split is opened as training opens it
 * (camo_dataset_open with o->format, "auto" when NULL), each mask paired with the prediction
 * of its image; an ADE20K root implies the ade20k mapping. Predictions of another size are
 * resized to the GT's: bilinear for probabilities (half-pixel centres, as cv2.resize in the
 * field's scripts), nearest for class indices. A prediction without GT is warned about and
 * skipped. Returns 0, or 2 with an error naming the folder/file: missing folder, no
 * predictions, a GT without prediction, two predictions with one stem or two GTs for one
 * prediction, an unreadable image, a class value out of range. */
int camo_eval_pred(const char *pred_dir, const char *gt, const camo_pred_eval *o, int json,
                   FILE *out);
/* camo_eval_pred for probability maps (classes = 1). */
int camo_eval_pred_dirs(const char *pred_dir, const char *gt_dir, int json, FILE *out);
/* camo_eval_pred for class-index maps; ade20k: format "ade20k". */
int camo_eval_pred_dirs_cls(const char *pred_dir, const char *gt_dir, int classes,
                            int ignore_index, int ade20k, int json, FILE *out);

#endif
