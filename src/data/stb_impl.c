/* stb_impl.c: the one translation unit that holds the stb implementations (decode, encode,
 * resize), and the per-thread arena stb_image allocates from (data_stbi_arena). Kept apart
 * because stb is slow to compile and noisy under strict warnings; every other file includes
 * the headers only. Not linked with -lstb (BUILD-NOTES.md). */
#include <assert.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "data_internal.h"

/* stb_image's allocations go through a per-thread bump arena while a loader worker decodes a
 * sample (data_stbi_arena), so the steady state allocates nothing: the arena is reset for
 * each sample and grows, between samples, to what the largest one needed. Outside an arena
 * (or past its end) they are plain malloc/realloc/free. */
static _Thread_local camo_arena *tl_arena;

static size_t round16(size_t n) { return (n + 15) & ~(size_t)15; }

void data_stbi_arena(camo_arena *a) {
    tl_arena = a;
    if (!a) return;
    if (a->want > a->cap) {
        free(a->base);
        a->cap = a->want + a->want / 4;
        a->base = camo_malloc(a->cap);
    }
    a->used = a->want = a->heap_allocs = 0;
}

void data_arena_free(camo_arena *a) {
    free(a->base);
    a->base = NULL;
    a->cap = a->used = a->want = 0;
}

static int in_arena(const void *p) {
    const camo_arena *a = tl_arena;
    return a && a->base && (const uint8_t *)p >= a->base && (const uint8_t *)p < a->base + a->cap;
}

static void *arena_malloc(size_t n) {
    camo_arena *a = tl_arena;
    if (!a) return malloc(n);
    n = round16(n ? n : 1);
    a->want += n;
    if (!a->base || a->used + n > a->cap) {
        a->heap_allocs++;
        return malloc(n);
    }
    void *p = a->base + a->used;
    a->used += n;
    return p;
}

static void arena_free(void *p) {
    if (p && !in_arena(p)) free(p);
}

static void *arena_realloc(void *p, size_t old, size_t n) {
    if (!p) return arena_malloc(n);
    camo_arena *a = tl_arena;
    if (!in_arena(p)) {
        if (a) {
            a->want += round16(n);
            a->heap_allocs++;
        }
        return realloc(p, n);
    }
    size_t off = (size_t)((uint8_t *)p - a->base), o16 = round16(old), n16 = round16(n);
    if (off + o16 == a->used && off + n16 <= a->cap) { /* the last block: grow in place */
        a->used = off + n16;
        a->want += n16 > o16 ? n16 - o16 : 0;
        return p;
    }
    void *q = arena_malloc(n);
    if (q) memcpy(q, p, old < n ? old : n);
    return q;
}

#define STBI_MALLOC(n) arena_malloc(n)
#define STBI_FREE(p) arena_free(p)
#define STBI_REALLOC_SIZED(p, old, n) arena_realloc(p, old, n)
#define STB_IMAGE_IMPLEMENTATION
#include <stb_image.h>

/* stb_image_write's JPEG bit writer shifts ints into the sign bit (stb_image_write.h v1.16,
 * stbiw__jpg_writeBits): harmless with gcc, but fatal under -fsanitize=undefined with
 * -fno-sanitize-recover (make test SAN=1). Its functions are all `static`, so that keyword is
 * the only hook to exempt them from the shift check alone; the attribute is ignored (and the
 * warning silenced) on static variables. The system headers are included above, untouched. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wattributes"
#define static static __attribute__((no_sanitize("shift")))
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb_image_write.h>
#undef static
#pragma GCC diagnostic pop

/* v0.97 asserts that a downsampling kernel's weights sum to about 1 before it renormalises
 * them; for some small odd ratios (9 -> 5 columns) they sum to 1.1+ and the renormalised
 * result is still right, so the check is turned off rather than aborting a run. */
#define STBIR_ASSERT(x) ((void)0)
#define STB_IMAGE_RESIZE_IMPLEMENTATION
#include <stb_image_resize.h>
