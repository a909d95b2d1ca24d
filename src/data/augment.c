/* augment.c: stage 2 of a sample: from its B x B base (base.c) to the network's input. One
 * affine map from output pixels to base pixels (scale-crop, rotation, horizontal flip),
 * bilinear for the image and binary mask, nearest for class indices, the same map for all
 * of them; colour jitter; ImageNet normalisation. Also the per-worker scratch, inference
 * preprocessing (camo_image_preprocess) and the sample keys.
 *
 * Every random decision is camo_rand_uniform(key, k) with a fixed k: the data never depends
 * on worker or replica counts (DESIGN.md item 3). */
#include <math.h>
#include <string.h>

#include "core/common.h"
#include "data_internal.h"

/* The random decisions of one sample: counters of camo_rand_uniform(key, k). */
enum { RND_SCALE, RND_CROP_X, RND_CROP_Y, RND_FLIP, RND_BRIGHT, RND_CONTRAST, RND_SAT, RND_ROT };

static const float img_mean[3] = {0.485f, 0.456f, 0.406f};
static const float img_std[3] = {0.229f, 0.224f, 0.225f};

camo_sample_scratch *camo_sample_scratch_create(void) {
    return camo_calloc(1, sizeof(camo_sample_scratch));
}

void camo_sample_scratch_free(camo_sample_scratch *sc) {
    if (!sc) return;
    free(sc->file.buf);
    free(sc->resize.buf);
    free(sc->base_img.buf);
    free(sc->base_mask.buf);
    free(sc->gt.buf);
    free(sc->taps.buf);
    data_arena_free(&sc->arena);
    free(sc);
}

void camo_sample_scratch_keep_gt(camo_sample_scratch *sc, int keep) { sc->keep_gt = keep; }

const uint8_t *camo_sample_scratch_gt(const camo_sample_scratch *sc, int *w, int *h) {
    if (!sc->keep_gt || !sc->gt.buf) return NULL;
    *w = sc->gt_w;
    *h = sc->gt_h;
    return sc->gt.buf;
}

size_t camo_sample_scratch_heap_allocs(const camo_sample_scratch *sc) {
    return sc->arena.heap_allocs;
}

/* ---------------------------------------------------------------- the affine map */

/* Output pixel (ox, oy) samples base point (u0 + ox * du + oy * eu, v0 + ox * dv + oy * ev),
 * in pixel units with pixel i covering [i, i + 1). */
typedef struct {
    double u0, v0, du, dv, eu, ev;
    int jitter;
    float bright, contrast, sat;
} xform;

static float jitter_factor(float j, uint64_t key, int k) {
    float f = 1.0f + j * (2.0f * camo_rand_uniform(key, (uint64_t)k) - 1.0f);
    return f > 0 ? f : 0;
}

/* Crop side B / s at a random place (s < 1 reaches past the base: padding), rotated by a
 * random angle about the crop centre, mirrored; identity when not training and B = S. */
static void draw_xform(const camo_augment *aug, uint64_t key, int B, xform *t) {
    memset(t, 0, sizeof *t);
    int S = aug->size;
    double s = 1, cx = B / 2.0, cy = B / 2.0, angle = 0, flip = 1;
    if (aug->train) {
        double smin = aug->scale_min > 0 ? aug->scale_min : 1;
        double smax = aug->scale_max > 0 ? aug->scale_max : 1;
        if (smax < smin) smax = smin;
        s = smin + (smax - smin) * camo_rand_uniform(key, RND_SCALE);
        double side = B / s;
        cx = camo_rand_uniform(key, RND_CROP_X) * (B - side) + side / 2;
        cy = camo_rand_uniform(key, RND_CROP_Y) * (B - side) + side / 2;
        if (aug->hflip && camo_rand_uniform(key, RND_FLIP) < 0.5f) flip = -1;
        if (aug->rotate > 0)
            angle = (2 * camo_rand_uniform(key, RND_ROT) - 1) * aug->rotate * (M_PI / 180);
        if (aug->jitter > 0) {
            t->jitter = 1;
            t->bright = jitter_factor(aug->jitter, key, RND_BRIGHT);
            t->contrast = jitter_factor(aug->jitter, key, RND_CONTRAST);
            t->sat = jitter_factor(aug->jitter, key, RND_SAT);
        }
    }
    double step = B / s / S, c = cos(angle) * step, sn = sin(angle) * step;
    /* x' = flip * (ox + 0.5 - S/2), y' = oy + 0.5 - S/2;
     * u = cx + c x' - sn y', v = cy + sn x' + c y' */
    double x0 = flip * (0.5 - S / 2.0), y0 = 0.5 - S / 2.0;
    t->u0 = cx + c * x0 - sn * y0;
    t->v0 = cy + sn * x0 + c * y0;
    t->du = c * flip;
    t->dv = sn * flip;
    t->eu = -sn;
    t->ev = c;
}


/* One bilinear lookup at base point (u, v), pixel centres at i + 0.5: the four corner
 * offsets (edges replicated) and weights; 0 when (u, v) is outside the base. */
typedef struct { int i00, i01, i10, i11; float w00, w01, w10, w11; } bilin;

static inline int bilin_at(float u, float v, int B, bilin *b) {
    if (!(u >= 0 && u < B && v >= 0 && v < B)) return 0;
    float fx = u - 0.5f, fy = v - 0.5f;
    int x0 = (int)(fx + 1.0f) - 1, y0 = (int)(fy + 1.0f) - 1; /* floor, as fx, fy >= -0.5 */
    float wx = fx - x0, wy = fy - y0;
    int xa = x0 < 0 ? 0 : x0, xb = x0 + 1 < B ? x0 + 1 : B - 1;
    int ya = y0 < 0 ? 0 : y0, yb = y0 + 1 < B ? y0 + 1 : B - 1;
    b->i00 = ya * B + xa; b->i01 = ya * B + xb;
    b->i10 = yb * B + xa; b->i11 = yb * B + xb;
    b->w00 = (1 - wx) * (1 - wy); b->w01 = wx * (1 - wy);
    b->w10 = (1 - wx) * wy;       b->w11 = wx * wy;
    return 1;
}

static inline float lerp2(const uint8_t *p, int C, const bilin *b) {
    return p[b->i00 * C] * b->w00 + p[b->i01 * C] * b->w01 + p[b->i10 * C] * b->w10 +
           p[b->i11 * C] * b->w11;
}

/* Output pixel o from the lookup b (in: inside the base; nn: the nearest base pixel):
 * image in 0..255, padding the ImageNet mean (0 after normalisation); binary mask bilinear
 * then > 127.5; class ids nearest via label_of, padding ignore_index. */
static inline void put_pixel(const camo_dataset *ds, const uint8_t *img, const uint8_t *m,
                             int in, const bilin *b, size_t nn, size_t o, float *image,
                             float *mask, int32_t *labels) {
    float *px = image + 3 * o;
    if (in) {
        px[0] = lerp2(img, 3, b);
        px[1] = lerp2(img + 1, 3, b);
        px[2] = lerp2(img + 2, 3, b);
    } else {
        px[0] = 255 * img_mean[0]; px[1] = 255 * img_mean[1]; px[2] = 255 * img_mean[2];
    }
    if (ds->classes == 1) {
        if (mask) mask[o] = in && lerp2(m, 1, b) > 127.5f ? 1.0f : 0.0f;
        return;
    }
    int lab = in ? ds->label_of[m[nn]] : ds->ignore_index;
    if (labels) labels[o] = lab;
    if (mask) mask[o] = lab > 0 && lab != ds->ignore_index ? 1.0f : 0.0f;
}

/* The general map (rotation): every pixel its own lookup. */
static void warp_affine(const camo_dataset *ds, const uint8_t *img, const uint8_t *m, int B,
                        const xform *t, int S, float *image, float *mask, int32_t *labels) {
    float du = (float)t->du, dv = (float)t->dv;
    for (int oy = 0; oy < S; oy++) {
        float u0 = (float)(t->u0 + oy * t->eu), v0 = (float)(t->v0 + oy * t->ev);
        for (int ox = 0; ox < S; ox++) {
            float u = u0 + ox * du, v = v0 + ox * dv;
            bilin b;
            int in = bilin_at(u, v, B, &b);
            size_t nn = in ? (size_t)(int)v * B + (size_t)(int)u : 0;
            put_pixel(ds, img, m, in, &b, nn, (size_t)oy * S + ox, image, mask, labels);
        }
    }
}

/* One axis of an axis-aligned lookup: the same arithmetic as bilin_at, done once per
 * column (or row) instead of once per pixel. */
typedef struct { int in, a, b, nn; float w; } axis_tap;

static void axis_tap_at(float p, int B, axis_tap *t) {
    t->in = p >= 0 && p < B;
    if (!t->in) return;
    float f = p - 0.5f;
    int i0 = (int)(f + 1.0f) - 1;
    t->w = f - i0;
    t->a = i0 < 0 ? 0 : i0;
    t->b = i0 + 1 < B ? i0 + 1 : B - 1;
    t->nn = (int)p;
}

/* No rotation: u depends on the column only, v on the row only (bit-identical results to
 * warp_affine, faster). xt: (S) scratch. */
static void warp_axis(const camo_dataset *ds, const uint8_t *img, const uint8_t *m, int B,
                      const xform *t, int S, axis_tap *xt, float *image, float *mask,
                      int32_t *labels) {
    float u0 = (float)t->u0, du = (float)t->du;
    for (int ox = 0; ox < S; ox++) axis_tap_at(u0 + ox * du, B, &xt[ox]);
    for (int oy = 0; oy < S; oy++) {
        axis_tap ty;
        axis_tap_at((float)(t->v0 + oy * t->ev), B, &ty);
        for (int ox = 0; ox < S; ox++) {
            const axis_tap *tx = &xt[ox];
            int in = tx->in && ty.in;
            bilin b;
            size_t nn = 0;
            if (in) {
                b.i00 = ty.a * B + tx->a; b.i01 = ty.a * B + tx->b;
                b.i10 = ty.b * B + tx->a; b.i11 = ty.b * B + tx->b;
                b.w00 = (1 - tx->w) * (1 - ty.w); b.w01 = tx->w * (1 - ty.w);
                b.w10 = (1 - tx->w) * ty.w;       b.w11 = tx->w * ty.w;
                nn = (size_t)ty.nn * B + tx->nn;
            }
            put_pixel(ds, img, m, in, &b, nn, (size_t)oy * S + ox, image, mask, labels);
        }
    }
}

static float clamp01(float v) { return v < 0 ? 0 : v > 1 ? 1 : v; }
static float gray(const float *p) { return 0.299f * p[0] + 0.587f * p[1] + 0.114f * p[2]; }

/* Colour jitter (brightness, then contrast against the mean grey of the image, then
 * saturation against each pixel's grey; torchvision's ColorJitter in a fixed order) and
 * the ImageNet normalisation, in place: 0..255 in, (x / 255 - mean) / std out. */
static void colour_and_normalise(float *px, size_t npix, const xform *t) {
    float sc[3], off[3];
    for (int k = 0; k < 3; k++) {
        sc[k] = 1.0f / img_std[k];
        off[k] = -img_mean[k] / img_std[k];
    }
    if (!t->jitter) {
        for (size_t i = 0; i < npix; i++, px += 3)
            for (int k = 0; k < 3; k++) px[k] = px[k] * (1.0f / 255) * sc[k] + off[k];
        return;
    }
    double sum = 0;
    float br = t->bright * (1.0f / 255);
    for (size_t i = 0; i < npix; i++) {
        float *p = px + 3 * i;
        for (int k = 0; k < 3; k++) p[k] = clamp01(p[k] * br);
        sum += gray(p);
    }
    float mean = (float)(sum / (double)(npix ? npix : 1)), c = t->contrast, s = t->sat;
    for (size_t i = 0; i < npix; i++, px += 3) {
        for (int k = 0; k < 3; k++) px[k] = clamp01(c * px[k] + (1 - c) * mean);
        float g = gray(px);
        for (int k = 0; k < 3; k++) px[k] = clamp01(s * px[k] + (1 - s) * g) * sc[k] + off[k];
    }
}

int camo_sample_load_ex(const camo_dataset *ds, int index, const camo_augment *aug, uint64_t key,
                        camo_sample_scratch *sc, float *image, float *mask, int32_t *labels,
                        int *orig_h, int *orig_w) {
    if (index < 0 || index >= ds->n) {
        CAMO_ERR("sample %d out of range [0, %d)", index, ds->n);
        return -1;
    }
    int B = camo_augment_base_size(aug), S = aug->size, oh, ow;
    const uint8_t *img = NULL, *m = NULL;
    if (data_load_base(ds, index, B, sc, &img, &m, &oh, &ow)) return -1;
    if (orig_h) *orig_h = oh;
    if (orig_w) *orig_w = ow;
    xform t;
    draw_xform(aug, key, B, &t);
    if (t.dv == 0 && t.eu == 0)
        warp_axis(ds, img, m, B, &t, S, camo_grow(&sc->taps, (size_t)S * sizeof(axis_tap)), image,
                  mask, labels);
    else
        warp_affine(ds, img, m, B, &t, S, image, mask, labels);
    colour_and_normalise(image, (size_t)S * S, &t);
    return 0;
}

int camo_sample_load(const camo_dataset *ds, int index, const camo_augment *aug, uint64_t key,
                     float *image, float *mask, int32_t *labels, int *orig_h, int *orig_w) {
    camo_sample_scratch *sc = camo_sample_scratch_create();
    int rc = camo_sample_load_ex(ds, index, aug, key, sc, image, mask, labels, orig_h, orig_w);
    camo_sample_scratch_free(sc);
    return rc;
}

int camo_image_preprocess(const uint8_t *rgb, int w, int h, int S, float *out) {
    uint8_t *base = camo_malloc((size_t)S * S * 3);
    camo_grow_buf work = {0};
    data_resize_filtered(rgb, w, h, 3, base, S, &work);
    for (size_t i = 0; i < (size_t)S * S * 3; i++) out[i] = base[i];
    colour_and_normalise(out, (size_t)S * S, &(xform){0});
    free(base);
    free(work.buf);
    return 0;
}

uint64_t camo_sample_key(uint64_t seed, int epoch, int64_t index) {
    uint64_t h = camo_hash64(seed ^ 0x5a3c0e1d2b4f6789ull);
    h = camo_hash64(h ^ (uint64_t)(uint32_t)epoch);
    return camo_hash64(h ^ (uint64_t)index);
}
