/* data_internal.h: what data.c (data sets, formats) and augment.c (sample pipeline, cache)
 * share, and the layouts' mask naming for eval_pred.c; not a public header. */
#ifndef CAMO_DATA_INTERNAL_H
#define CAMO_DATA_INTERNAL_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "camo/data.h"

/* A buffer that only grows (stb_image_resize's work memory, base images): reused across
 * samples so the steady state allocates nothing. */
typedef struct { void *buf; size_t cap; } camo_grow_buf;
void *camo_grow(camo_grow_buf *g, size_t n);

/* A bump arena for stb_image's allocations during one decode (stb_impl.c). */
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

/* data.cache = decoded: every sample's base image + raw mask (B x B), filled once by the
 * first worker that decodes it (state 0 empty -> 1 filling -> 2 ready). */
typedef struct {
    int B;
    uint8_t *img;      /* (n, B, B, 3) */
    uint8_t *mask;     /* (n, B, B) raw mask values */
    int *orig_h, *orig_w;
    atomic_int *state; /* (n) */
} data_cache;

struct camo_dataset {
    int n, classes, skip_bad, ignore_index;
    char format[16];
    char **images, **masks;  /* full paths, sorted by image file name */
    int32_t label_of[256];   /* raw mask value -> class id, ignore_index, or LABEL_BAD */
    data_cache *cache;
};

#define LABEL_BAD INT32_MIN

/* The length of the image stem that mask file `name` belongs to in the layouts of data.c:
 * its stem less a layout's mask suffix (CARLA's "NAME_label.png" -> "NAME"), else its whole
 * stem. eval_pred.c pairs ground truth with predict's output (named by image stem) by it. */
size_t data_image_stem_len(const char *mask_name);

/* Rebuilds label_of from classes, ignore_index and the format (ade20k: 0 = ignore). */
void data_label_map(camo_dataset *ds);
void data_cache_free(data_cache *c);

#endif
