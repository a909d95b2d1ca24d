/* augment.c: one training/validation sample from its files, in two stages.
 *
 *   1. base: decode the image and mask, check them (sizes, class values), resize both to a
 *      square B x B base (image: triangle filter = bilinear up, antialiased down, like
 *      PIL's BILINEAR; binary mask the same; class indices nearest).
 *      B = img_size * max(1, scale_max) when
 *      training, so a zoomed crop keeps detail. data.cache = decoded keeps the bases.
 *   2. augment: one affine map from output pixels to base pixels (scale-crop, rotation,
 *      horizontal flip), bilinear for the image and binary mask, nearest for class indices,
 *      the same map for all of them; colour jitter; ImageNet normalisation.
 *
 * Both stages run the same code with and without the cache, so cached and uncached epochs
 * give identical batches. Every random decision is camo_rand_uniform(key, k) with a fixed
 * k: the data never depends on worker or replica counts (DESIGN.md item 3). */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include <stb_image.h>

#include "camo/common.h"
#include "data_internal.h"

/* The random decisions of one sample: counters of camo_rand_uniform(key, k). */
enum { RND_SCALE, RND_CROP_X, RND_CROP_Y, RND_FLIP, RND_BRIGHT, RND_CONTRAST, RND_SAT, RND_ROT };

static const float img_mean[3] = {0.485f, 0.456f, 0.406f};
static const float img_std[3] = {0.229f, 0.224f, 0.225f};

struct camo_sample_scratch {
    camo_grow_buf file, resize, base_img, base_mask, gt, taps;
    camo_arena arena; /* stb_image's decode memory */
    int keep_gt, gt_w, gt_h;
};

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

int camo_augment_base_size(const camo_augment *aug) {
    double smax = aug->train && aug->scale_max > 1 ? aug->scale_max : 1;
    return (int)ceil(aug->size * smax - 1e-9);
}

/* ---------------------------------------------------------------- files */

/* Reads the whole file into a reusable buffer: one read, no stdio copy per decode. */
static int read_file(const char *path, camo_grow_buf *buf, size_t *len) {
    FILE *f = fopen(path, "rb");
    struct stat st;
    if (!f || fstat(fileno(f), &st) != 0) {
        CAMO_ERR("cannot read '%s': %s", path, strerror(errno));
        if (f) fclose(f);
        return -1;
    }
    size_t n = (size_t)st.st_size;
    if (n > INT_MAX) { fclose(f); CAMO_ERR("'%s' is too large (%zu bytes)", path, n); return -1; }
    uint8_t *p = camo_grow(buf, n ? n : 1);
    size_t got = n ? fread(p, 1, n, f) : 0;
    int err = ferror(f);
    fclose(f);
    if (got != n || err) { CAMO_ERR("cannot read '%s': short read", path); return -1; }
    *len = n;
    return 0;
}

/* Decodes `path` to 8-bit with `channels` channels (stb converts grey/RGBA/palette/16-bit
 * images). A class-index mask must be single-channel 8-bit: stb would turn palette indices
 * into colours and 16-bit values into their high byte, both silently wrong labels. */
uint8_t *data_decode(const char *path, int channels, int index_mask, camo_grow_buf *file,
                     int *w, int *h) {
    size_t len;
    if (read_file(path, file, &len)) return NULL;
    const uint8_t *bytes = file->buf;
    int n, is16 = stbi_is_16_bit_from_memory(bytes, (int)len);
    if (index_mask && stbi_info_from_memory(bytes, (int)len, w, h, &n) && (n > 2 || is16)) {
        CAMO_ERR("class-index mask '%s' must be an 8-bit single-channel PNG (it has %d "
                 "channels%s)", path, n, is16 ? ", 16 bits" : "");
        return NULL;
    }
    uint8_t *p = stbi_load_from_memory(bytes, (int)len, w, h, &n, channels);
    if (!p) CAMO_ERR("cannot decode '%s': %s", path, stbi_failure_reason());
    return p;
}

/* ---------------------------------------------------------------- stage 1: base */

/* ---- the triangle ("bilinear") resampler, PIL's way: the filter widens by the scale when
 * shrinking (antialiasing), taps outside the image are dropped and the rest renormalised;
 * when enlarging it is plain bilinear interpolation with half-pixel centres. Fixed point:
 * 14-bit weights, a 16-bit intermediate (8 fraction bits), one rounding at the end. */

enum { W_BITS = 14, MID_BITS = 8 };

typedef struct { int first, n; } span; /* taps first .. first + n - 1 */

static double tent(double d) { d = fabs(d); return d < 1 ? 1 - d : 0; }

/* Taps of `out` outputs over `in` inputs into sp (out) and w (out * max_taps); returns
 * max_taps. */
static int tent_taps(int in, int out, span *sp, int16_t *w, int max_taps) {
    double scale = (double)in / out, fs = scale > 1 ? scale : 1, support = fs;
    for (int o = 0; o < out; o++) {
        double centre = (o + 0.5) * scale, sum = 0;
        int lo = (int)(centre - support + 0.5), hi = (int)(centre + support + 0.5);
        if (lo < 0) lo = 0;
        if (hi > in) hi = in;
        if (hi - lo > max_taps) hi = lo + max_taps;
        for (int k = 0; k < hi - lo; k++) sum += tent((lo + k + 0.5 - centre) / fs);
        int16_t *wo = w + (size_t)o * max_taps, acc = 0;
        if (sum <= 0) { sum = 1; hi = lo + 1; } /* degenerate: the nearest pixel alone */
        for (int k = 0; k < hi - lo; k++) {
            wo[k] = (int16_t)lrint(tent((lo + k + 0.5 - centre) / fs) / sum * (1 << W_BITS));
            acc = (int16_t)(acc + wo[k]);
        }
        wo[0] = (int16_t)(wo[0] + (1 << W_BITS) - acc); /* weights sum to exactly 1 */
        sp[o].first = lo;
        sp[o].n = hi - lo;
    }
    return max_taps;
}

/* One row, horizontally: (w, C) with MID_BITS fraction bits -> (B, C) uint8. C is a
 * constant in each caller, so the channel loop unrolls. */
static inline void tent_row(const uint16_t *row, const span *sx, const int16_t *wx, int tx,
                            int B, int C, uint8_t *o) {
    const int sh = W_BITS + MID_BITS;
    for (int x = 0; x < B; x++) {
        const int16_t *k = wx + (size_t)x * tx;
        const uint16_t *p = row + (size_t)sx[x].first * C;
        int32_t acc[3] = {1 << (sh - 1), 1 << (sh - 1), 1 << (sh - 1)};
        for (int t = 0; t < sx[x].n; t++)
            for (int c = 0; c < C; c++) acc[c] += k[t] * p[t * C + c];
        for (int c = 0; c < C; c++) {
            int32_t v = acc[c] >> sh;
            o[x * C + c] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
        }
    }
}

/* src (w, h, C) -> dst (B, B, C), C = 1 or 3: vertically first, whole rows at a time (the
 * loop vectorises), then each row horizontally. Work memory (taps, the (B, w, C)
 * intermediate, one accumulator row) from `work`. */
static void resize_filtered(const uint8_t *src, int w, int h, int C, uint8_t *dst, int B,
                            camo_grow_buf *work) {
    if (w == B && h == B) { memcpy(dst, src, (size_t)B * B * C); return; }
    int tx = (int)ceil(2.0 * (w > B ? (double)w / B : 1)) + 2;
    int ty = (int)ceil(2.0 * (h > B ? (double)h / B : 1)) + 2;
    size_t in_row = (size_t)w * C;
    size_t bytes = (size_t)B * 2 * sizeof(span) + in_row * sizeof(int32_t) +
                   (size_t)B * in_row * sizeof(uint16_t) + (size_t)B * (tx + ty) * sizeof(int16_t);
    uint8_t *mem = camo_grow(work, bytes);
    span *sx = (span *)mem, *sy = sx + B;
    int32_t *acc = (int32_t *)(sy + B);                        /* (w, C) */
    uint16_t *mid = (uint16_t *)(acc + in_row);                /* (B, w, C) */
    int16_t *wx = (int16_t *)(mid + (size_t)B * in_row), *wy = wx + (size_t)B * tx;
    tent_taps(w, B, sx, wx, tx);
    tent_taps(h, B, sy, wy, ty);
    const int sh = W_BITS - MID_BITS;
    for (int y = 0; y < B; y++) {
        const int16_t *k = wy + (size_t)y * ty;
        for (size_t i = 0; i < in_row; i++) acc[i] = 1 << (sh - 1);
        for (int t = 0; t < sy[y].n; t++) {
            const uint8_t *r = src + (size_t)(sy[y].first + t) * in_row;
            int32_t kt = k[t];
#pragma omp simd
            for (size_t i = 0; i < in_row; i++) acc[i] += kt * r[i];
        }
        uint16_t *m = mid + (size_t)y * in_row;
#pragma omp simd
        for (size_t i = 0; i < in_row; i++) m[i] = (uint16_t)(acc[i] >> sh);
        if (C == 3) tent_row(m, sx, wx, tx, B, 3, dst + (size_t)y * B * 3);
        else tent_row(m, sx, wx, tx, B, 1, dst + (size_t)y * B);
    }
}

/* Class indices: nearest neighbour (interpolating labels would invent classes). */
static void resize_nearest(const uint8_t *src, int w, int h, uint8_t *dst, int B) {
    for (int y = 0; y < B; y++) {
        const uint8_t *row = src + (size_t)((y * 2 + 1) * (int64_t)h / (2 * B)) * w;
        for (int x = 0; x < B; x++)
            dst[(size_t)y * B + x] = row[(x * 2 + 1) * (int64_t)w / (2 * B)];
    }
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
        resize_filtered(px, W, H, 3, img, B, &sc->resize);
        if (multi) resize_nearest(m, W, H, mask, B);
        else resize_filtered(m, W, H, 1, mask, B, &sc->resize);
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

/* The base of a sample: from the cache when it holds it (or this call fills it), else
 * decoded into the scratch. keep_gt needs the original mask, so it bypasses the cache. */
static int load_base(const camo_dataset *ds, int index, int B, camo_sample_scratch *sc,
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

/* ---------------------------------------------------------------- stage 2: augment */

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
    if (load_base(ds, index, B, sc, &img, &m, &oh, &ow)) return -1;
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
    resize_filtered(rgb, w, h, 3, base, S, &work);
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

/* ---------------------------------------------------------------- cache */

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
