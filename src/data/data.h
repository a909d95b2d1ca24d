/* data.h: data sets on disk (data.c), sample decoding + augmentation (base.c, augment.c),
 * the loader threads that fill a bounded queue of batches (loader.c), image files (image_io.c,
 * resize.c); DESIGN.md "Data". The synthetic data set is synth.h's.
 *
 * Randomness of a sample's augmentation comes only from (seed, epoch, sample index), never
 * from a thread's generator, so every worker and replica count sees the same data. */
#ifndef CAMO_DATA_H
#define CAMO_DATA_H

#include <stddef.h>
#include <stdint.h>

typedef struct camo_dataset camo_dataset;

/* Opens a split of a data set (docs/data.md). Pairs are matched by file stem.
 *   format: "cod10k"  ROOT/SPLIT/Image + ROOT/SPLIT/GT_Object; images without a mask (COD10K-v3's
 *                     -NonCAM-/-BG- pictures) are skipped and counted once
 *           "camo"    ROOT/Images/SPLIT + ROOT/GT
 *           "carla"   ROOT/SPLIT + ROOT/SPLIT_label (mask NAME.png or NAME_label.png)
 *           "ade20k"  ROOT/images/SPLIT + ROOT/annotations/SPLIT; mask value 0 = ignore,
 *                     values 1..K = classes 0..K-1
 *           "folders" ROOT/SPLIT/images + ROOT/SPLIT/masks (SPLIT "" = ROOT/images + masks)
 *           "auto"    the first of the above present, logged
 *   split: a folder name; "Train" also finds train/training and "Test" test/val/validation;
 *          several joined by commas ("Train,Val") are opened in turn and concatenated.
 *   classes: 1 = binary masks (pixel > 127 is foreground); K > 1 = class-index PNGs (values
 *            0..K-1 or the ignore index, 255 unless camo_dataset_set_ignore_index).
 *   skip_bad: unreadable pairs are skipped with a warning instead of an error.
 * Files are listed and sorted by name (deterministic order); decoding happens later.
 * NULL + error naming the folder/file on: missing folder, no images, an image without mask. */
camo_dataset *camo_dataset_open(const char *root, const char *format, const char *split,
                                int classes, int skip_bad);
int camo_dataset_size(const camo_dataset *ds);
/* Keeps a subset of the images, the same for every run with the same seed (data.subset):
 * subset in (0, 1) a fraction (at least one image), >= 1 a count, 0 all. The kept images
 * stay in name order. Returns the images kept. Call before the cache is enabled. */
int camo_dataset_subset(camo_dataset *ds, double subset, uint64_t seed);
const char *camo_dataset_image_path(const camo_dataset *ds, int i);
const char *camo_dataset_mask_path(const camo_dataset *ds, int i);
void camo_dataset_free(camo_dataset *ds);
/* The layout opened ("cod10k", ...; "auto" resolved). */
const char *camo_dataset_format(const camo_dataset *ds);
void camo_dataset_set_ignore_index(camo_dataset *ds, int ignore_index);
int camo_dataset_ignore_index(const camo_dataset *ds);
/* Class id of a raw mask value (multi-class): 0..K-1, the ignore index, or -2 (invalid). */
int camo_dataset_label(const camo_dataset *ds, int raw);
/* The length of the stem of the image that mask file `mask_name` belongs to in the layouts:
 * its stem less a layout's mask suffix (CARLA's "NAME_label.png" -> "NAME"), else its whole
 * stem. Pairs a folder of ground truth with predictions named by image stem (eval --pred). */
size_t camo_mask_image_stem_len(const char *mask_name);

typedef struct camo_augment {
    int size;            /* output is size x size */
    int train;           /* 0: resize only (validation) */
    int hflip;           /* random horizontal flip (p = 0.5) */
    float scale_min, scale_max; /* random scale-crop: crop side = side / s, s in [min, max];
                                   1, 1 = off */
    float jitter;        /* colour jitter strength: brightness/contrast/saturation +- jitter */
    float rotate;        /* random rotation, uniform in [-rotate, rotate] degrees; 0 = off */
} camo_augment;

/* The side B of the square base a sample is resized to before augmentation:
 * size * max(1, scale_max) when training, else size. */
int camo_augment_base_size(const camo_augment *aug);

/* data.cache = decoded: keeps every sample's decoded B x B base (image + mask) in memory
 * once loaded, so later epochs skip decoding; batches are identical with and without it.
 * Error (naming the sizes) when it would need more than 80% of the available memory. */
int camo_dataset_enable_cache(camo_dataset *ds, const camo_augment *aug);
size_t camo_dataset_cache_bytes(const camo_dataset *ds, const camo_augment *aug);
/* What a trainer does after opening a split: ignore index, and the cache when `cache`. */
int camo_dataset_configure(camo_dataset *ds, int ignore_index, int cache,
                           const camo_augment *aug);

/* One decoded, augmented, normalised sample.
 *   image: (size, size, 3) float, ImageNet mean/std normalised, NHWC
 *   mask:  (size, size) float in {0, 1} (binary; bilinear-resized masks re-thresholded at 0.5)
 *   labels: (size, size) int32 class indices for classes > 1 (nearest resize), else unused;
 *           pixels outside the image (crop padding, rotation corners) get the ignore index
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
/* keep != 0: each load also keeps the raw mask at its original size (evaluation at the
 * ground truth's size), read with camo_sample_scratch_gt until the next load. */
void camo_sample_scratch_keep_gt(camo_sample_scratch *sc, int keep);
const uint8_t *camo_sample_scratch_gt(const camo_sample_scratch *sc, int *w, int *h);
/* How many of stb_image's allocations in the last load did not fit the scratch's arena
 * (0 in the steady state: the arena grows to the largest image's need between loads). */
size_t camo_sample_scratch_heap_allocs(const camo_sample_scratch *sc);
/* camo_sample_load with caller-owned scratch; camo_sample_load uses a temporary one. */
int camo_sample_load_ex(const camo_dataset *ds, int index, const camo_augment *aug,
                        uint64_t key, camo_sample_scratch *sc, float *image, float *mask,
                        int32_t *labels, int *orig_h, int *orig_w);
int camo_dataset_classes(const camo_dataset *ds);
int camo_dataset_skip_bad(const camo_dataset *ds);

/* The key of sample `index` in `epoch` of a run with `seed`. */
uint64_t camo_sample_key(uint64_t seed, int epoch, int64_t index);

/* One global batch, filled by the loader (or this process's window of it: see
 * camo_loader_opts.window). */
typedef struct camo_batch {
    int n;                  /* samples in this batch (in the buffers below) */
    int total;              /* samples in the global batch: n, unless a window */
    int first;              /* the global batch's position of sample 0 here: 0, unless a window */
    int size;               /* side */
    float *image;           /* (n, size, size, 3) */
    float *mask;            /* (n, size, size) */
    int32_t *labels;        /* (n, size, size) or NULL when binary */
    int *index;             /* data-set index of each sample */
    int *orig_h, *orig_w;   /* original image size of each sample */
    int seq;                /* position of the batch in its epoch: 0, 1, ... */
    uint8_t **gt;           /* keep_gt loaders: raw mask of each sample (orig_h, orig_w) */
} camo_batch;

typedef struct camo_loader camo_loader;

/* `workers` decoding threads, up to `max_batch` samples per batch, `depth` batches
 * prepared ahead (bounded queue). */
camo_loader *camo_loader_create(const camo_dataset *ds, const camo_augment *aug, int workers,
                                int max_batch, int depth);
/* Batch buffers come from alloc/free (e.g. cudaHostAlloc'd pinned memory for the CUDA
 * backend; NULL = malloc). keep_gt: batches carry each sample's mask at its original size. */
typedef struct camo_loader_opts {
    void *(*alloc)(size_t bytes, void *ctx); /* NULL on failure */
    void (*free)(void *p, void *ctx);
    void *ctx;
    int keep_gt;
    /* A run of several processes (docs/parallel.md "Several processes"): only samples
     * [*lo, *lo + *count) of each global batch of n are loaded (this process's replicas'
     * slices), into positions 0.. of the buffers; NULL = whole batches. An empty window
     * still loads one sample (a ghost pass of sync-BN runs on it). Not with a data set
     * that skips bad files (which samples drop must be known to every process). */
    void (*window)(int n, void *window_ctx, int *lo, int *count);
    void *window_ctx;
} camo_loader_opts;
camo_loader *camo_loader_create_ex(const camo_dataset *ds, const camo_augment *aug, int workers,
                                   int max_batch, int depth, const camo_loader_opts *opts);
/* Seconds camo_loader_next spent waiting for a batch since the loader was made. */
double camo_loader_wait_seconds(const camo_loader *L);

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
/* 8-bit grayscale / RGB PNG write; atomic (temp + rename). 0, or -1 + error naming the file. */
int camo_png_write_gray(const char *path, const uint8_t *pixels, int w, int h);
int camo_png_write_rgb(const char *path, const uint8_t *pixels, int w, int h);
/* Inference input like validation: rgb (h, w, 3) resized to (S, S, 3) (triangle filter),
 * ImageNet-normalised into out. */
int camo_image_preprocess(const uint8_t *rgb, int w, int h, int S, float *out);
/* Decode an image to 8-bit with `channels` channels (1 or 3); caller frees with free(). */
uint8_t *camo_image_read(const char *path, int channels, int *w, int *h);
/* One-channel src (sh, sw) -> dst (dh, dw), nearest neighbour (class-index maps: the
 * pixel whose centre is nearest, no invented classes). */
void camo_resize_nearest(const uint8_t *src, int sw, int sh, uint8_t *dst, int dw, int dh);

#endif
