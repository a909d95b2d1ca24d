/* data.h: data sets on disk, sample decoding + augmentation, and the loader threads that
 * fill a bounded queue of batches (DESIGN.md "Data").
 *
 * Randomness of a sample's augmentation comes only from (seed, epoch, sample index), never
 * from a thread's generator, so every worker and replica count sees the same data. */
#ifndef CAMO_DATA_H
#define CAMO_DATA_H

#include <stdint.h>

typedef struct camo_dataset camo_dataset;

/* Opens a split of a data set.
 *   format: "cod10k"  (ROOT/Train/Image/NAME.jpg + ROOT/Train/GT_Object/NAME.png; split "Train"/"Test")
 *           "folders" (ROOT/SPLIT/images/F + ROOT/SPLIT/masks/F, pairs matched by file stem;
 *                      SPLIT may be "" for ROOT/images + ROOT/masks)
 *           "auto"    (detects one of the above and logs which)
 *   classes: 1 = binary masks (pixel > 127 is foreground); K > 1 = class-index PNGs.
 *   skip_bad: unreadable pairs are skipped with a warning instead of an error.
 * Files are listed and sorted by name (deterministic order); decoding happens later.
 * NULL + error naming the folder/file on: missing folder, no images, an image without mask. */
camo_dataset *camo_dataset_open(const char *root, const char *format, const char *split,
                                int classes, int skip_bad);
int camo_dataset_size(const camo_dataset *ds);
const char *camo_dataset_image_path(const camo_dataset *ds, int i);
const char *camo_dataset_mask_path(const camo_dataset *ds, int i);
void camo_dataset_free(camo_dataset *ds);

typedef struct camo_augment {
    int size;            /* output is size x size */
    int train;           /* 0: resize only (validation) */
    int hflip;           /* random horizontal flip (p = 0.5) */
    float scale_min, scale_max; /* random scale-crop: crop side = side / s, s in [min, max];
                                   1, 1 = off */
    float jitter;        /* colour jitter strength: brightness/contrast/saturation +- jitter */
} camo_augment;

/* One decoded, augmented, normalised sample.
 *   image: (size, size, 3) float, ImageNet mean/std normalised, NHWC
 *   mask:  (size, size) float in {0, 1} (binary; bilinear-resized masks re-thresholded at 0.5)
 *   labels: (size, size) int32 class indices for classes > 1 (nearest resize), else unused
 * Returns 0, or non-zero with an error naming the file (corrupt/truncated image, size
 * mismatch between image and mask). */
int camo_sample_load(const camo_dataset *ds, int index, const camo_augment *aug, uint64_t key,
                     float *image, float *mask, int32_t *labels, int *orig_h, int *orig_w);

/* Reusable per-thread buffers for camo_sample_load_ex (file bytes, resize tables), grown to
 * the largest file and output side seen, so a loader worker allocates nothing of its own per
 * sample in the steady state (stb's decoded pixels are stb's). */
typedef struct camo_sample_scratch camo_sample_scratch;
camo_sample_scratch *camo_sample_scratch_create(void);
void camo_sample_scratch_free(camo_sample_scratch *sc);
/* camo_sample_load with caller-owned scratch; camo_sample_load uses a temporary one. */
int camo_sample_load_ex(const camo_dataset *ds, int index, const camo_augment *aug,
                        uint64_t key, camo_sample_scratch *sc, float *image, float *mask,
                        int32_t *labels, int *orig_h, int *orig_w);
int camo_dataset_classes(const camo_dataset *ds);
int camo_dataset_skip_bad(const camo_dataset *ds);

/* The key of sample `index` in `epoch` of a run with `seed`. */
uint64_t camo_sample_key(uint64_t seed, int epoch, int64_t index);

/* One global batch, filled by the loader. */
typedef struct camo_batch {
    int n;                  /* samples in this batch */
    int size;               /* side */
    float *image;           /* (n, size, size, 3) */
    float *mask;            /* (n, size, size) */
    int32_t *labels;        /* (n, size, size) or NULL when binary */
    int *index;             /* data-set index of each sample */
    int *orig_h, *orig_w;   /* original image size of each sample */
    int seq;                /* position of the batch in its epoch: 0, 1, ... */
} camo_batch;

typedef struct camo_loader camo_loader;

/* `workers` decoding threads, up to `max_batch` samples per batch, `depth` batches
 * prepared ahead (bounded queue). */
camo_loader *camo_loader_create(const camo_dataset *ds, const camo_augment *aug, int workers,
                                int max_batch, int depth);
/* Queue an epoch: the samples `order[0..n)` in batches of `batch` (the last one may be
 * smaller); keys from (seed, epoch, index). Any earlier epoch must have been drained. */
void camo_loader_start(camo_loader *L, const int *order, int n, int batch, uint64_t seed,
                       int epoch);
/* Next batch of the epoch in order (blocking), NULL when the epoch is done or on error
 * (then camo_loader_failed() != 0 and camo_last_error() in this thread names the file). */
camo_batch *camo_loader_next(camo_loader *L);
void camo_loader_release(camo_loader *L, camo_batch *b);
int camo_loader_failed(const camo_loader *L);
void camo_loader_free(camo_loader *L);

/* The epoch's permutation of 0..n-1 from (seed, epoch) (Fisher-Yates on a counter RNG). */
void camo_epoch_permutation(int *order, int n, uint64_t seed, int epoch);

/* Image files (stb_image + stb_image_write). */
/* 8-bit grayscale PNG write; atomic (temp + rename). */
int camo_png_write_gray(const char *path, const uint8_t *pixels, int w, int h);
/* Decode an image to 8-bit with `channels` channels (1 or 3); caller frees with free(). */
uint8_t *camo_image_read(const char *path, int channels, int *w, int *h);

#endif
