/* data_internal.h: what the files of data/ share; not a public header (data.h is).
 *
 *   data.c      data sets on disk: the layouts, listing and pairing files, metadata.json,
 *               the class-id map of mask values; struct camo_dataset
 *   image_io.c  image files: read whole, decode (stb_image), write PNG; grow-only buffers
 *   stb_impl.c  the stb implementations and the arena stb_image allocates from
 *   resize.c    resampling: the triangle filter and nearest neighbour
 *   base.c      stage 1 of a sample, its base (decoded, checked, resized to B x B), and
 *               the data.cache = decoded store of bases
 *   augment.c   stage 2: augmentation and normalisation; the per-worker scratch; inference
 *               preprocessing; sample keys
 *   loader.c    the loader threads
 *   synth.c     the synthetic data set (synth.h)
 *
 * Calls between them go one way only: data.c -> base.c; loader.c -> augment.c -> base.c,
 * resize.c, image_io.c; base.c -> image_io.c, resize.c, stb_impl.c; synth.c -> image_io.c. */
#ifndef CAMO_DATA_INTERNAL_H
#define CAMO_DATA_INTERNAL_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "data/data.h"

/* ---- image_io.c */

/* A buffer that only grows (file bytes, resize work memory, base images): reused across
 * samples so the steady state allocates nothing. */
typedef struct { void *buf; size_t cap; } camo_grow_buf;
/* At least n bytes of g (its contents are not kept when it grows). */
void *camo_grow(camo_grow_buf *g, size_t n);
/* Decodes file path (read into `file`) to 8-bit with `channels` channels; stb_image
 * converts grey/RGBA/palette/16-bit images. index_mask: a class-index mask, which must be
 * one 8-bit channel. NULL + error naming the file; free the pixels with stbi_image_free. */
uint8_t *data_decode(const char *path, int channels, int index_mask, camo_grow_buf *file,
                     int *w, int *h);

/* ---- stb_impl.c */

/* A bump arena for stb_image's allocations during one decode. */
typedef struct {
    uint8_t *base;
    size_t cap, used, want;
    size_t heap_allocs; /* allocations of this use that did not fit (went to malloc) */
} camo_arena;
/* a != NULL: this thread's stb_image allocations come from `a`, reset (and grown to the
 * last use's need); NULL: back to malloc. Everything stb allocated from the arena must be
 * freed (stbi_image_free) before the arena is reset or left. */
void data_stbi_arena(camo_arena *a);
void data_arena_free(camo_arena *a);

/* ---- resize.c */

/* src (w, h, C) -> dst (B, B, C), C = 1 or 3, with the triangle filter (PIL's BILINEAR:
 * bilinear when enlarging, antialiased when shrinking); work memory from `work`. */
void data_resize_filtered(const uint8_t *src, int w, int h, int C, uint8_t *dst, int B,
                          camo_grow_buf *work);

/* ---- base.c (and augment.c, which owns the scratch) */

struct camo_sample_scratch {
    camo_grow_buf file, resize, base_img, base_mask, gt; /* base.c */
    camo_grow_buf taps;                                  /* augment.c */
    camo_arena arena; /* stb_image's decode memory */
    int keep_gt, gt_w, gt_h;
};

/* data.cache = decoded: every sample's base image + raw mask (B x B), filled once by the
 * first worker that decodes it (state 0 empty -> 1 filling -> 2 ready). */
typedef struct {
    int B;
    uint8_t *img;      /* (n, B, B, 3) */
    uint8_t *mask;     /* (n, B, B) raw mask values */
    int *orig_h, *orig_w;
    atomic_int *state; /* (n) */
} data_cache;

/* The B x B base of sample `index`: img (B, B, 3), mask (B, B) raw values, the original
 * size; from the cache when it holds the sample (or this call fills it), else decoded into
 * the scratch. 0, or -1 + error naming the file. */
int data_load_base(const camo_dataset *ds, int index, int B, camo_sample_scratch *sc,
                   const uint8_t **img, const uint8_t **mask, int *orig_h, int *orig_w);
void data_cache_free(data_cache *c);

/* ---- data.c */

struct camo_dataset {
    int n, classes, skip_bad, ignore_index;
    char format[16];
    char **images, **masks;  /* full paths, sorted by image file name */
    int32_t label_of[256];   /* raw mask value -> class id, ignore_index, or LABEL_BAD */
    data_cache *cache;
};

#define LABEL_BAD INT32_MIN

#endif
