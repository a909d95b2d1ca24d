/* base.c: stage 1 of a sample, its base: the image and mask decoded (image_io.c), checked
 * (sizes, class values) and resized to a square B x B (resize.c: triangle filter for the
 * image and a binary mask, nearest for class indices); and data.cache = decoded, which keeps
 * every sample's base in memory once decoded. Stage 2 (augment.c) starts from the base, so
 * cached and uncached epochs give identical batches. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include <stb_image.h>

#include "core/common.h"
#include "data_internal.h"

int camo_augment_base_size(const camo_augment *aug) {
    double smax = aug->train && aug->scale_max > 1 ? aug->scale_max : 1;
    return (int)ceil(aug->size * smax - 1e-9);
}

/* Every value of a class-index mask must be a class or the ignore value. */
static int check_labels(const camo_dataset *ds, const char *path, const uint8_t *m, int w, int h) {
    for (size_t i = 0; i < (size_t)w * h; i++) {
        if (ds->label_of[m[i]] != LABEL_BAD) continue;
        CAMO_ERR("mask '%s': pixel (x %zu, y %zu) has value %d, which is neither a class of "
                 "data.classes = %d%s nor data.ignore_index = %d", path, i % w, i / w, m[i],
                 ds->classes, !strcmp(ds->format, "ade20k") ? " (ade20k: values 1..classes)" : "",
                 ds->ignore_index);
        return -1;
    }
    return 0;
}

/* Decodes pair `index` into the bases img (B, B, 3) and mask (B, B). */
static int decode_base(const camo_dataset *ds, int index, int B, camo_sample_scratch *sc,
                       uint8_t *img, uint8_t *mask, int *oh, int *ow) {
    int W, H, mw, mh, multi = ds->classes > 1, rc = -1;
    data_stbi_arena(&sc->arena); /* until the stb buffers are freed below */
    uint8_t *px = data_decode(ds->images[index], 3, 0, &sc->file, &W, &H), *m = NULL;
    if (px) m = data_decode(ds->masks[index], 1, multi, &sc->file, &mw, &mh);
    if (m && (mw != W || mh != H))
        CAMO_ERR("size mismatch: image '%s' is %dx%d but its mask '%s' is %dx%d",
                 ds->images[index], W, H, ds->masks[index], mw, mh);
    else if (m && !(multi && check_labels(ds, ds->masks[index], m, W, H)))
        rc = 0;
    if (!rc) {
        *oh = H;
        *ow = W;
        data_resize_filtered(px, W, H, 3, img, B, &sc->resize);
        if (multi) camo_resize_nearest(m, W, H, mask, B, B);
        else data_resize_filtered(m, W, H, 1, mask, B, &sc->resize);
        if (sc->keep_gt) {
            memcpy(camo_grow(&sc->gt, (size_t)W * H), m, (size_t)W * H);
            sc->gt_w = W;
            sc->gt_h = H;
        }
    }
    stbi_image_free(px);
    stbi_image_free(m);
    data_stbi_arena(NULL);
    return rc;
}

/* keep_gt needs the original mask, so it bypasses the cache. */
int data_load_base(const camo_dataset *ds, int index, int B, camo_sample_scratch *sc,
                   const uint8_t **img, const uint8_t **mask, int *oh, int *ow) {
    data_cache *c = ds->cache;
    if (c && c->B == B && !sc->keep_gt) {
        size_t plane = (size_t)B * B;
        uint8_t *ci = c->img + (size_t)index * plane * 3, *cm = c->mask + (size_t)index * plane;
        int expect = 0;
        if (atomic_load_explicit(&c->state[index], memory_order_acquire) != 2 &&
            atomic_compare_exchange_strong(&c->state[index], &expect, 1)) {
            int rc = decode_base(ds, index, B, sc, ci, cm, &c->orig_h[index], &c->orig_w[index]);
            atomic_store_explicit(&c->state[index], rc ? 0 : 2, memory_order_release);
            if (rc) return -1;
        }
        if (atomic_load_explicit(&c->state[index], memory_order_acquire) == 2) {
            *img = ci;
            *mask = cm;
            *oh = c->orig_h[index];
            *ow = c->orig_w[index];
            return 0;
        } /* another thread is filling it: decode our own copy */
    }
    uint8_t *bi = camo_grow(&sc->base_img, (size_t)B * B * 3);
    uint8_t *bm = camo_grow(&sc->base_mask, (size_t)B * B);
    *img = bi;
    *mask = bm;
    return decode_base(ds, index, B, sc, bi, bm, oh, ow);
}

/* ---------------------------------------------------------------- data.cache = decoded */

/* MemAvailable from /proc/meminfo in bytes; 0 when unknown. */
static uint64_t mem_available(void) {
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f) return 0;
    char line[256];
    unsigned long long kb = 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) break;
    fclose(f);
    return (uint64_t)kb * 1024;
}

size_t camo_dataset_cache_bytes(const camo_dataset *ds, const camo_augment *aug) {
    size_t B = (size_t)camo_augment_base_size(aug);
    return (size_t)ds->n * (B * B * 4 + 2 * sizeof(int) + sizeof(atomic_int));
}

int camo_dataset_enable_cache(camo_dataset *ds, const camo_augment *aug) {
    size_t need = camo_dataset_cache_bytes(ds, aug);
    uint64_t avail = mem_available();
    int B = camo_augment_base_size(aug);
    if (avail && need > avail / 10 * 8) {
        CAMO_ERR("data.cache = \"decoded\" needs %.2f GiB for %d images at %dx%d, but only "
                 "%.2f GiB of memory is available (80%% may be used): set data.cache = \"none\" "
                 "or lower data.img_size", need / 1073741824.0, ds->n, B, B, avail / 1073741824.0);
        return -1;
    }
    data_cache_free(ds->cache);
    data_cache *c = camo_calloc(1, sizeof *c);
    size_t plane = (size_t)B * B;
    c->B = B;
    c->img = camo_malloc((size_t)ds->n * plane * 3); /* pages are touched as samples arrive */
    c->mask = camo_malloc((size_t)ds->n * plane);
    c->orig_h = camo_calloc((size_t)ds->n, sizeof(int));
    c->orig_w = camo_calloc((size_t)ds->n, sizeof(int));
    c->state = camo_calloc((size_t)ds->n, sizeof(atomic_int));
    for (int i = 0; i < ds->n; i++) atomic_init(&c->state[i], 0);
    ds->cache = c;
    camo_info("data: caching decoded %dx%d images in memory (%.2f GiB for %d images)", B, B,
              need / 1073741824.0, ds->n);
    return 0;
}

void data_cache_free(data_cache *c) {
    if (!c) return;
    free(c->img);
    free(c->mask);
    free(c->orig_h);
    free(c->orig_w);
    free(c->state);
    free(c);
}
