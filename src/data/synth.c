/* synth.c: the synthetic camouflaged-object data set of synth.h, in the COD10K layout
 * (OUT/Train/Image/synth_00001.jpg + OUT/Train/GT_Object/synth_00001.png, same for Test);
 * `camotrain synth` (cli/cli_synth.c) is its command line.
 *
 * Each image is a textured background (oriented sinusoids + value noise through a colour
 * palette) with 1-3 blob-shaped objects filled with a texture of the same family, shifted in
 * colour, frequency and orientation by an amount that shrinks as difficulty goes to 1. Every
 * number comes from the counter RNG keyed by (seed, split, image), so a seed fixes the files. */
#include "data/synth.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <stb_image_write.h>

#include "core/common.h"
#include "core/fs.h"
#include "data/data.h"

#define TWO_PI 6.28318530718f
enum { N_WAVES = 3, MAX_OBJECTS = 3, N_HARM = 3, N_FAMILIES = 6 };

typedef struct {
    float fx[N_WAVES], fy[N_WAVES], phase[N_WAVES], amp[N_WAVES]; /* cycles per pixel */
    float cell, noise_amp;
    uint64_t noise_key;
    float pal[3][3]; /* dark, middle, light colour in [0, 1] */
} texture;

typedef struct {
    float cx, cy, r0, aspect, cosr, sinr, power, bound;
    float harm_amp[N_HARM], harm_phase[N_HARM];
    int lobes, label;
    texture tex;
} object;

/* A tiny stream over the counter RNG: draw k of a key. */
typedef struct { uint64_t key, k; } rng;
static float U(rng *r, float lo, float hi) {
    return lo + (hi - lo) * camo_rand_uniform(r->key, r->k++);
}

/* ---------------------------------------------------------------- textures */

static float clampf(float v, float lo, float hi) { return v < lo ? lo : v > hi ? hi : v; }

static void texture_random(texture *t, rng *r, int S) {
    for (int i = 0; i < N_WAVES; i++) {
        float f = U(r, 2, 10) / S, a = U(r, 0, TWO_PI / 2);
        t->fx[i] = f * cosf(a);
        t->fy[i] = f * sinf(a);
        t->phase[i] = U(r, 0, TWO_PI);
        t->amp[i] = U(r, 0.05f, 0.14f);
    }
    t->cell = S / U(r, 4, 12);
    t->noise_amp = U(r, 0.15f, 0.35f);
    t->noise_key = camo_hash64(r->key ^ r->k++);
    float base[3];
    for (int c = 0; c < 3; c++) base[c] = U(r, 0.2f, 0.8f);
    for (int j = 0; j < 3; j++)
        for (int c = 0; c < 3; c++)
            t->pal[j][c] = clampf(base[c] + (j - 1) * U(r, 0.1f, 0.3f), 0, 1);
}

/* The object's texture: the background's, shifted by `e` = 1 - difficulty (0: the same family
 * with new phases and a trace of colour shift, still separable only by its pattern seams). */
static void texture_shift(texture *t, const texture *bg, rng *r, float e) {
    *t = *bg;
    float fscale = expf((U(r, 0, 1) < 0.5f ? -1 : 1) * e * U(r, 0.3f, 0.7f));
    float rot = (U(r, 0, 1) < 0.5f ? -1 : 1) * e * U(r, 0.4f, 1.2f), cr = cosf(rot), sr = sinf(rot);
    for (int i = 0; i < N_WAVES; i++) {
        float fx = bg->fx[i], fy = bg->fy[i];
        t->fx[i] = fscale * (cr * fx - sr * fy);
        t->fy[i] = fscale * (sr * fx + cr * fy);
        t->phase[i] = U(r, 0, TWO_PI);
    }
    t->noise_key = camo_hash64(r->key ^ r->k++);
    float shift[3];
    for (int c = 0; c < 3; c++) shift[c] = e * U(r, -0.4f, 0.4f) + U(r, -0.03f, 0.03f);
    for (int j = 0; j < 3; j++)
        for (int c = 0; c < 3; c++) t->pal[j][c] = clampf(bg->pal[j][c] + shift[c], 0, 1);
}

static float lattice(uint64_t key, int ix, int iy) {
    return camo_rand_uniform(key, ((uint64_t)(uint32_t)ix << 32) | (uint32_t)iy);
}

/* Smooth value noise in [0, 1). */
static float value_noise(uint64_t key, float x, float y) {
    float fx = floorf(x), fy = floorf(y), tx = x - fx, ty = y - fy;
    int ix = (int)fx, iy = (int)fy;
    tx = tx * tx * (3 - 2 * tx);
    ty = ty * ty * (3 - 2 * ty);
    float a = lattice(key, ix, iy), b = lattice(key, ix + 1, iy);
    float c = lattice(key, ix, iy + 1), d = lattice(key, ix + 1, iy + 1);
    float top = a + (b - a) * tx, bot = c + (d - c) * tx;
    return top + (bot - top) * ty;
}

static void texture_eval(const texture *t, float x, float y, float rgb[3]) {
    float v = 0.5f + t->noise_amp * (value_noise(t->noise_key, x / t->cell, y / t->cell) - 0.5f);
    for (int i = 0; i < N_WAVES; i++)
        v += t->amp[i] * sinf(TWO_PI * (t->fx[i] * x + t->fy[i] * y) + t->phase[i]);
    v = clampf(v, 0, 1);
    int j = v < 0.5f ? 0 : 1;
    float w = v < 0.5f ? 2 * v : 2 * v - 1;
    for (int c = 0; c < 3; c++) rgb[c] = t->pal[j][c] + (t->pal[j + 1][c] - t->pal[j][c]) * w;
}

/* ---------------------------------------------------------------- shapes */

/* Shape families (the class of an object in multi-class sets): 0 ellipse-like blob,
 * 1 rounded square (superellipse), 2.. lobed stars with family + 1 lobes. */
static void object_random(object *o, rng *r, int S, int family, int label) {
    o->r0 = U(r, 0.05f, 0.2f) * S; /* diameter 10-40 % of the side */
    o->aspect = U(r, 0.6f, 1.0f);
    o->cx = U(r, o->r0, S - o->r0);
    o->cy = U(r, o->r0, S - o->r0);
    float rot = U(r, 0, TWO_PI);
    o->cosr = cosf(rot);
    o->sinr = sinf(rot);
    o->power = family == 1 ? 4.0f : 2.0f;
    o->lobes = family >= 2 ? family + 1 : 0;
    float amp_sum = o->lobes ? 0.3f : 0;
    for (int k = 0; k < N_HARM; k++) {
        o->harm_amp[k] = U(r, 0, family == 0 ? 0.12f : 0.05f);
        o->harm_phase[k] = U(r, 0, TWO_PI);
        amp_sum += o->harm_amp[k];
    }
    o->bound = o->r0 * 1.2f * (1 + amp_sum) / o->aspect + 2;
    o->label = label;
}

/* Signed distance-like value: > 0 inside (in pixels, roughly), from the object's radius
 * function r(theta) = r0 * superellipse(theta) * (1 + harmonics). */
static float object_inside(const object *o, float x, float y) {
    float dx = x - o->cx, dy = y - o->cy;
    if (fabsf(dx) > o->bound || fabsf(dy) > o->bound) return -1e9f;
    float lx = o->cosr * dx + o->sinr * dy, ly = (-o->sinr * dx + o->cosr * dy) / o->aspect;
    float rho = sqrtf(lx * lx + ly * ly), th = atan2f(ly, lx);
    float c = fabsf(cosf(th)), s = fabsf(sinf(th));
    float rse =
        o->power == 2.0f ? 1.0f : powf(powf(c, o->power) + powf(s, o->power), -1 / o->power);
    float m = 1 + (o->lobes ? 0.3f * cosf(o->lobes * th) : 0);
    for (int k = 0; k < N_HARM; k++) m += o->harm_amp[k] * cosf((k + 2) * th + o->harm_phase[k]);
    return o->r0 * rse * m - rho;
}

/* ---------------------------------------------------------------- one image */

static int make_objects(object *obj, rng *r, const texture *bg, const camo_synth *a) {
    int n = 1 + (int)U(r, 0, 3);
    float e = 1.0f - (float)a->difficulty;
    for (int i = 0; i < n; i++) {
        int label = a->classes > 1 ? 1 + (int)U(r, 0, (float)(a->classes - 1)) : 255;
        int family = a->classes > 1 ? (label - 1) % N_FAMILIES : (int)U(r, 0, N_FAMILIES);
        object_random(&obj[i], r, a->size, family, label);
        texture_shift(&obj[i].tex, bg, r, e);
    }
    return n;
}

static void render(uint64_t key, const camo_synth *a, uint8_t *rgb, uint8_t *mask) {
    rng r = {key, 0};
    int S = a->size;
    texture bg;
    object obj[MAX_OBJECTS];
    texture_random(&bg, &r, S);
    int n = make_objects(obj, &r, &bg, a);
    for (int y = 0; y < S; y++) {
        for (int x = 0; x < S; x++) {
            float c[3], oc[3], px = x + 0.5f, py = y + 0.5f;
            uint8_t m = 0;
            texture_eval(&bg, px, py, c);
            for (int i = 0; i < n; i++) {
                float d = object_inside(&obj[i], px, py);
                if (d <= -1.0f) continue;
                float alpha = clampf(d + 0.5f, 0, 1); /* a soft 1-pixel edge, no outline cue */
                texture_eval(&obj[i].tex, px, py, oc);
                for (int k = 0; k < 3; k++) c[k] += (oc[k] - c[k]) * alpha;
                if (d > 0) m = (uint8_t)obj[i].label;
            }
            size_t p = (size_t)y * S + x;
            for (int k = 0; k < 3; k++) {
                float noise = 0.04f * (camo_rand_uniform(key ^ 0xabcdefull, 3 * p + k) - 0.5f);
                rgb[3 * p + k] = (uint8_t)lrintf(255 * clampf(c[k] + noise, 0, 1));
            }
            mask[p] = m;
        }
    }
}

/* ---------------------------------------------------------------- files */

static int write_split(const camo_synth *a, const char *out, const char *split, int split_id,
                       int count) {
    size_t n = strlen(out) + strlen(split) + 64;
    char *img_dir = camo_malloc(n), *mask_dir = camo_malloc(n), *path = camo_malloc(n);
    snprintf(img_dir, n, "%s/%s/Image", out, split);
    snprintf(mask_dir, n, "%s/%s/GT_Object", out, split);
    uint8_t *rgb = camo_malloc((size_t)a->size * a->size * 3),
            *mask = camo_malloc((size_t)a->size * a->size);
    int rc = count > 0 && (camo_mkdirs(img_dir) || camo_mkdirs(mask_dir)) ? -1 : 0;
    uint64_t split_key = camo_hash64(camo_hash64(a->seed ^ 0x73796e7468ull) ^ (uint64_t)split_id);
    for (int i = 0; i < count && !rc; i++) {
        render(camo_hash64(split_key ^ (uint64_t)i), a, rgb, mask);
        snprintf(path, n, "%s/synth_%05d.jpg", img_dir, i + 1);
        if (!stbi_write_jpg(path, a->size, a->size, 3, rgb, 90)) {
            CAMO_ERR("cannot write '%s'", path);
            rc = -1;
            break;
        }
        snprintf(path, n, "%s/synth_%05d.png", mask_dir, i + 1);
        rc = camo_png_write_gray(path, mask, a->size, a->size);
    }
    free(img_dir); free(mask_dir); free(path); free(rgb); free(mask);
    return rc;
}

int camo_synth_write(const camo_synth *s, const char *out) {
    if (s->train < 0 || s->test < 0 || s->size < 16 || s->size > 8192 || s->classes < 1 ||
        s->classes > 256 || !(s->difficulty >= 0 && s->difficulty <= 1)) {
        CAMO_ERR("synthetic data: settings out of range (train %d, test %d, size %d, classes "
                 "%d, difficulty %g)", s->train, s->test, s->size, s->classes, s->difficulty);
        return -1;
    }
    if (write_split(s, out, "Train", 0, s->train) || write_split(s, out, "Test", 1, s->test))
        return -1;
    return 0;
}
