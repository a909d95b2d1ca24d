/* resize.c: resampling of 8-bit images: the triangle filter (PIL's BILINEAR) for images and
 * binary masks, nearest neighbour for class-index maps. */
#include <math.h>
#include <string.h>

#include "core/common.h"
#include "data_internal.h"

/* The triangle ("bilinear") resampler, PIL's way: the filter widens by the scale when
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
void data_resize_filtered(const uint8_t *src, int w, int h, int C, uint8_t *dst, int B,
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

/* Interpolating labels would invent classes; the pixel whose centre is nearest is taken. */
void camo_resize_nearest(const uint8_t *src, int sw, int sh, uint8_t *dst, int dw, int dh) {
    for (int y = 0; y < dh; y++) {
        const uint8_t *row = src + (size_t)((y * 2 + 1) * (int64_t)sh / (2 * dh)) * sw;
        for (int x = 0; x < dw; x++)
            dst[(size_t)y * dw + x] = row[(x * 2 + 1) * (int64_t)sw / (2 * dw)];
    }
}
