/* data.c: data sets on disk (COD10K and images/ + masks/ folders), decoding one sample and
 * augmenting it (scale-crop, flip, colour jitter, ImageNet normalisation), image file I/O.
 *
 * A sample's augmentation is a pure function of (file, augment settings, key): every random
 * decision is camo_rand_uniform(key, k) with a fixed k, so worker and replica counts never
 * change the data (DESIGN.md, training semantics item 3). */
#include "camo/data.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <stb_image.h>
#include <stb_image_write.h>

#include "camo/common.h"

/* The random decisions of one sample: counters of camo_rand_uniform(key, k). */
enum { RND_SCALE, RND_CROP_X, RND_CROP_Y, RND_FLIP, RND_BRIGHT, RND_CONTRAST, RND_SAT };

static const float img_mean[3] = {0.485f, 0.456f, 0.406f};
static const float img_std[3] = {0.229f, 0.224f, 0.225f};

struct camo_dataset {
    int n, classes, skip_bad;
    char **images, **masks; /* full paths, sorted by image file name */
};

/* ---------------------------------------------------------------- listing folders */

static char *path_join(const char *a, const char *b) {
    if (!a || !*a) return camo_strdup(b ? b : "");
    if (!b || !*b) return camo_strdup(a);
    size_t la = strlen(a), lb = strlen(b);
    int slash = a[la - 1] != '/';
    char *p = camo_malloc(la + lb + 2);
    memcpy(p, a, la);
    if (slash) p[la] = '/';
    memcpy(p + la + slash, b, lb + 1);
    return p;
}

static int is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static int has_image_ext(const char *name) {
    static const char *const exts[] = {".jpg", ".jpeg", ".png", ".bmp"};
    const char *dot = strrchr(name, '.');
    if (!dot || dot == name) return 0;
    for (size_t i = 0; i < sizeof exts / sizeof *exts; i++)
        if (!strcasecmp(dot, exts[i])) return 1;
    return 0;
}

static size_t stem_len(const char *name) {
    const char *dot = strrchr(name, '.');
    return dot ? (size_t)(dot - name) : strlen(name);
}

static int stem_cmp(const char *a, const char *b) {
    size_t la = stem_len(a), lb = stem_len(b);
    int c = memcmp(a, b, la < lb ? la : lb);
    return c ? c : (la > lb) - (la < lb);
}

static int cmp_name(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int cmp_stem(const void *a, const void *b) {
    return stem_cmp(*(char *const *)a, *(char *const *)b);
}

/* Masks sorted by stem, ties (a.png, a.bmp) by name: the same pairing whatever readdir's order. */
static int cmp_stem_name(const void *a, const void *b) {
    int c = cmp_stem(a, b);
    return c ? c : cmp_name(a, b);
}

static void free_names(char **names, int n) {
    for (int i = 0; i < n; i++) free(names[i]);
    free(names);
}

/* Image file names in `dir`, sorted by name; NULL + error naming the folder if unreadable. */
static char **list_images(const char *dir, int *n) {
    *n = 0;
    DIR *d = opendir(dir);
    if (!d) {
        CAMO_ERR("cannot open folder '%s': %s", dir, strerror(errno));
        return NULL;
    }
    char **names = NULL;
    int cap = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.' || !has_image_ext(e->d_name)) continue;
        if (*n == cap)
            names = camo_realloc(names, (size_t)(cap = cap ? 2 * cap : 256) * sizeof *names);
        names[(*n)++] = camo_strdup(e->d_name);
    }
    closedir(d);
    if (*n) qsort(names, (size_t)*n, sizeof *names, cmp_name);
    else names = camo_malloc(sizeof *names);
    return names;
}

static void add_pair(camo_dataset *ds, int *cap, char *img, char *mask) {
    if (ds->n == *cap) {
        *cap = *cap ? 2 * *cap : 256;
        ds->images = camo_realloc(ds->images, (size_t)*cap * sizeof *ds->images);
        ds->masks = camo_realloc(ds->masks, (size_t)*cap * sizeof *ds->masks);
    }
    ds->images[ds->n] = img;
    ds->masks[ds->n++] = mask;
}

/* Pairs every image of img_dir with the mask of the same stem in mask_dir. An image without a
 * mask is skipped silently-but-counted when `unmasked_ok` (COD10K's non-camouflaged pictures),
 * else an error naming it (a warning when skip_bad). */
static int pair_files(camo_dataset *ds, const char *img_dir, const char *mask_dir,
                      int unmasked_ok) {
    int ni, nm, cap = 0, unmasked = 0, rc = 0;
    char **imgs = list_images(img_dir, &ni);
    if (!imgs) return -1;
    char **masks = list_images(mask_dir, &nm);
    if (!masks) { free_names(imgs, ni); return -1; }
    qsort(masks, (size_t)nm, sizeof *masks, cmp_stem_name);
    for (int i = 0; i < ni && !rc; i++) {
        char **m = nm ? bsearch(&imgs[i], masks, (size_t)nm, sizeof *masks, cmp_stem) : NULL;
        if (m) {
            add_pair(ds, &cap, path_join(img_dir, imgs[i]), path_join(mask_dir, *m));
        } else if (unmasked_ok) {
            unmasked++;
        } else if (ds->skip_bad) {
            camo_warn("skipping image '%s/%s': no mask with that name in '%s'", img_dir, imgs[i],
                      mask_dir);
        } else {
            CAMO_ERR("image '%s/%s' has no mask with the same name in '%s'", img_dir, imgs[i],
                     mask_dir);
            rc = -1;
        }
    }
    if (unmasked)
        camo_info("data: %s: %d of %d images have no mask in %s (non-camouflaged pictures): "
                  "skipped", img_dir, unmasked, ni, mask_dir);
    if (!rc && ds->n == 0) {
        CAMO_ERR("no images with masks in '%s' (masks looked for in '%s')", img_dir, mask_dir);
        rc = -1;
    }
    free_names(imgs, ni);
    free_names(masks, nm);
    return rc;
}

/* "auto": which layout the split folder holds; NULL + error when neither. */
static const char *detect_format(const char *base) {
    char *cod = path_join(base, "Image"), *fold = path_join(base, "images");
    const char *f = is_dir(cod) ? "cod10k" : is_dir(fold) ? "folders" : NULL;
    free(cod);
    free(fold);
    if (f) camo_info("data: %s: %s layout", base, f);
    else if (!is_dir(base)) CAMO_ERR("cannot open folder '%s': %s", base, strerror(ENOENT));
    else CAMO_ERR("data folder '%s' holds neither Image/ + GT_Object/ (cod10k) nor images/ + "
                  "masks/ (folders)", base);
    return f;
}

camo_dataset *camo_dataset_open(const char *root, const char *format, const char *split,
                                int classes, int skip_bad) {
    if (classes < 1) { CAMO_ERR("data.classes must be >= 1 (got %d)", classes); return NULL; }
    if (!format || !*format) format = "auto";
    char *base = path_join(root, split);
    const char *f = strcmp(format, "auto") ? format : detect_format(base);
    camo_dataset *ds = camo_calloc(1, sizeof *ds);
    ds->classes = classes;
    ds->skip_bad = skip_bad;
    int rc = -1;
    if (!f) {
        rc = -1;
    } else if (!strcmp(f, "cod10k") || !strcmp(f, "folders")) {
        int cod = !strcmp(f, "cod10k");
        char *id = path_join(base, cod ? "Image" : "images");
        char *md = path_join(base, cod ? "GT_Object" : "masks");
        rc = pair_files(ds, id, md, cod);
        free(id);
        free(md);
    } else {
        CAMO_ERR("unknown data format '%s' (expected cod10k, folders or auto)", format);
    }
    free(base);
    if (rc) { camo_dataset_free(ds); return NULL; }
    return ds;
}

int camo_dataset_size(const camo_dataset *ds) { return ds->n; }
int camo_dataset_classes(const camo_dataset *ds) { return ds->classes; }
int camo_dataset_skip_bad(const camo_dataset *ds) { return ds->skip_bad; }

const char *camo_dataset_image_path(const camo_dataset *ds, int i) {
    return i >= 0 && i < ds->n ? ds->images[i] : NULL;
}

const char *camo_dataset_mask_path(const camo_dataset *ds, int i) {
    return i >= 0 && i < ds->n ? ds->masks[i] : NULL;
}

void camo_dataset_free(camo_dataset *ds) {
    if (!ds) return;
    free_names(ds->images, ds->n);
    free_names(ds->masks, ds->n);
    free(ds);
}

/* ---------------------------------------------------------------- decoding */

/* One resampling tap per output row/column: bilinear neighbours i0, i1 with weight w of i1,
 * nearest pixel nn, and whether the sample falls inside the source (else padding). */
typedef struct { int i0, i1, nn, valid; float w; } tap;

struct camo_sample_scratch {
    uint8_t *file;
    size_t file_cap;
    tap *taps; /* 2 * side: columns, then rows */
    int taps_cap;
};

camo_sample_scratch *camo_sample_scratch_create(void) {
    return camo_calloc(1, sizeof(camo_sample_scratch));
}

void camo_sample_scratch_free(camo_sample_scratch *sc) {
    if (!sc) return;
    free(sc->file);
    free(sc->taps);
    free(sc);
}

/* Reads the whole file into the scratch buffer: one read, no stdio copy per decode. */
static int read_file(const char *path, camo_sample_scratch *sc, size_t *len) {
    FILE *f = fopen(path, "rb");
    struct stat st;
    if (!f || fstat(fileno(f), &st) != 0) {
        CAMO_ERR("cannot read '%s': %s", path, strerror(errno));
        if (f) fclose(f);
        return -1;
    }
    size_t n = (size_t)st.st_size;
    if (n > INT_MAX) { fclose(f); CAMO_ERR("'%s' is too large (%zu bytes)", path, n); return -1; }
    if (n > sc->file_cap) {
        free(sc->file);
        sc->file_cap = n + n / 4;
        sc->file = camo_malloc(sc->file_cap);
    }
    size_t got = n ? fread(sc->file, 1, n, f) : 0;
    int err = ferror(f);
    fclose(f);
    if (got != n || err) { CAMO_ERR("cannot read '%s': short read", path); return -1; }
    *len = n;
    return 0;
}

/* Decodes `path` to 8-bit with `channels` channels (stb converts grey/RGBA/palette). A class
 * index mask must be single-channel 8-bit: stb would turn palette indices into colours and
 * 16-bit values into their high byte, both silently wrong labels. */
static uint8_t *decode_file(const char *path, int channels, int index_mask,
                            camo_sample_scratch *sc, int *w, int *h) {
    size_t len;
    if (read_file(path, sc, &len)) return NULL;
    int n;
    if (index_mask && stbi_info_from_memory(sc->file, (int)len, w, h, &n) &&
        (n > 2 || stbi_is_16_bit_from_memory(sc->file, (int)len))) {
        CAMO_ERR("class-index mask '%s' must be an 8-bit single-channel PNG (it has %d channels%s)",
                 path, n, stbi_is_16_bit_from_memory(sc->file, (int)len) ? ", 16 bits" : "");
        return NULL;
    }
    uint8_t *p = stbi_load_from_memory(sc->file, (int)len, w, h, &n, channels);
    if (!p) CAMO_ERR("cannot decode '%s': %s", path, stbi_failure_reason());
    return p;
}

uint8_t *camo_image_read(const char *path, int channels, int *w, int *h) {
    CAMO_ASSERT(channels >= 1 && channels <= 4);
    camo_sample_scratch sc = {0};
    uint8_t *p = decode_file(path, channels, 0, &sc, w, h);
    free(sc.file);
    return p;
}

int camo_png_write_gray(const char *path, const uint8_t *pixels, int w, int h) {
    size_t n = strlen(path) + 32;
    char *tmp = camo_malloc(n);
    snprintf(tmp, n, "%s.tmp%ld", path, (long)getpid());
    int rc = 0;
    if (!stbi_write_png(tmp, w, h, 1, pixels, w)) {
        CAMO_ERR("cannot write '%s': %s", path, strerror(errno ? errno : EIO));
        rc = -1;
    } else if (rename(tmp, path) != 0) {
        CAMO_ERR("cannot write '%s': %s", path, strerror(errno));
        rc = -1;
    }
    if (rc) unlink(tmp);
    free(tmp);
    return rc;
}

/* ---------------------------------------------------------------- augmentation */

/* The sampled geometric + colour transform: the crop window (x0, y0, cw, ch) in source pixels
 * (it may reach past the image when scale < 1: padding), flip, and jitter factors. */
typedef struct {
    double x0, y0, cw, ch;
    int flip, jitter;
    float bright, contrast, sat;
} xform;

static float jitter_factor(float j, uint64_t key, int k) {
    float f = 1.0f + j * (2.0f * camo_rand_uniform(key, (uint64_t)k) - 1.0f);
    return f > 0 ? f : 0;
}

static void draw_xform(const camo_augment *aug, uint64_t key, int W, int H, xform *t) {
    memset(t, 0, sizeof *t);
    t->cw = W;
    t->ch = H;
    if (!aug->train) return;
    float smin = aug->scale_min > 0 ? aug->scale_min : 1,
          smax = aug->scale_max > 0 ? aug->scale_max : 1;
    if (smax < smin) smax = smin;
    double s = smin + (smax - smin) * camo_rand_uniform(key, RND_SCALE);
    t->cw = W / s;
    t->ch = H / s;
    t->x0 = camo_rand_uniform(key, RND_CROP_X) * (W - t->cw); /* negative range when s < 1 */
    t->y0 = camo_rand_uniform(key, RND_CROP_Y) * (H - t->ch);
    t->flip = aug->hflip && camo_rand_uniform(key, RND_FLIP) < 0.5f;
    if (aug->jitter > 0) {
        t->jitter = 1;
        t->bright = jitter_factor(aug->jitter, key, RND_BRIGHT);
        t->contrast = jitter_factor(aug->jitter, key, RND_CONTRAST);
        t->sat = jitter_factor(aug->jitter, key, RND_SAT);
    }
}

static int clampi(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

/* Taps for S outputs over the window [start, start + len) of an axis of n source pixels,
 * half-pixel centres (align_corners = false), edges replicated inside the image. */
static void make_taps(tap *tp, int S, int n, double start, double len, int flip) {
    double step = len / S;
    for (int o = 0; o < S; o++) {
        double u = start + ((flip ? S - 1 - o : o) + 0.5) * step, f = floor(u - 0.5);
        tap *p = &tp[o];
        p->valid = u >= 0 && u < n;
        p->w = (float)(u - 0.5 - f);
        p->i0 = clampi((int)f, 0, n - 1);
        p->i1 = clampi((int)f + 1, 0, n - 1);
        p->nn = clampi((int)floor(u), 0, n - 1);
    }
}

/* Bilinear RGB samples in 0..255 into out (S, S, 3); padding is the ImageNet mean colour,
 * which normalises to 0. */
static void sample_rgb(const uint8_t *img, int W, const tap *xt, const tap *yt, int S, float *out) {
    const float pad[3] = {255 * img_mean[0], 255 * img_mean[1], 255 * img_mean[2]};
    for (int oy = 0; oy < S; oy++) {
        const tap *ty = &yt[oy];
        const uint8_t *r0 = img + (size_t)ty->i0 * W * 3, *r1 = img + (size_t)ty->i1 * W * 3;
        float wy = ty->w, *o = out + (size_t)oy * S * 3;
        for (int ox = 0; ox < S; ox++, o += 3) {
            const tap *tx = &xt[ox];
            if (!tx->valid || !ty->valid) { o[0] = pad[0]; o[1] = pad[1]; o[2] = pad[2]; continue; }
            const uint8_t *a = r0 + tx->i0 * 3, *b = r0 + tx->i1 * 3;
            const uint8_t *c = r1 + tx->i0 * 3, *d = r1 + tx->i1 * 3;
            float wx = tx->w;
            for (int k = 0; k < 3; k++) {
                float top = a[k] + (b[k] - a[k]) * wx, bot = c[k] + (d[k] - c[k]) * wx;
                o[k] = top + (bot - top) * wy;
            }
        }
    }
}

/* Binary mask: bilinear in 0..255, then > 127.5 (the 0.5 threshold; pixel > 127 unresized). */
static void sample_mask(const uint8_t *m, int W, const tap *xt, const tap *yt, int S, float *out) {
    for (int oy = 0; oy < S; oy++) {
        const tap *ty = &yt[oy];
        const uint8_t *r0 = m + (size_t)ty->i0 * W, *r1 = m + (size_t)ty->i1 * W;
        float *o = out + (size_t)oy * S;
        for (int ox = 0; ox < S; ox++) {
            const tap *tx = &xt[ox];
            if (!tx->valid || !ty->valid) { o[ox] = 0; continue; }
            float top = r0[tx->i0] + (r0[tx->i1] - r0[tx->i0]) * tx->w;
            float bot = r1[tx->i0] + (r1[tx->i1] - r1[tx->i0]) * tx->w;
            o[ox] = top + (bot - top) * ty->w > 127.5f ? 1.0f : 0.0f;
        }
    }
}

/* Class indices: nearest neighbour (interpolating labels would invent classes); padding is
 * class 0. The mask, when wanted, is "any class but 0". */
static void sample_labels(const uint8_t *m, int W, const tap *xt, const tap *yt, int S,
                          int32_t *labels, float *mask) {
    for (int oy = 0; oy < S; oy++) {
        const tap *ty = &yt[oy];
        const uint8_t *r = m + (size_t)ty->nn * W;
        for (int ox = 0; ox < S; ox++) {
            const tap *tx = &xt[ox];
            int v = tx->valid && ty->valid ? r[tx->nn] : 0;
            size_t i = (size_t)oy * S + ox;
            if (labels) labels[i] = v;
            if (mask) mask[i] = v ? 1.0f : 0.0f;
        }
    }
}

static float clamp01(float v) { return v < 0 ? 0 : v > 1 ? 1 : v; }
static float gray(const float *p) { return 0.299f * p[0] + 0.587f * p[1] + 0.114f * p[2]; }

/* Colour jitter in [0, 1] (brightness, then contrast against the mean grey of the image, then
 * saturation against each pixel's grey; torchvision's ColorJitter in a fixed order). */
static void color_jitter(float *px, size_t npix, const xform *t) {
    double sum = 0;
    for (size_t i = 0; i < npix; i++) {
        float *p = px + 3 * i;
        for (int k = 0; k < 3; k++) p[k] = clamp01(p[k] * (1.0f / 255) * t->bright);
        sum += gray(p);
    }
    float mean = (float)(sum / (double)(npix ? npix : 1)), c = t->contrast, s = t->sat;
    for (size_t i = 0; i < npix; i++) {
        float *p = px + 3 * i;
        for (int k = 0; k < 3; k++) p[k] = clamp01(c * p[k] + (1 - c) * mean);
        float g = gray(p);
        for (int k = 0; k < 3; k++) p[k] = 255 * clamp01(s * p[k] + (1 - s) * g);
    }
}

/* In place: 0..255 -> (x / 255 - mean) / std. */
static void normalise(float *px, size_t npix) {
    float sc[3], off[3];
    for (int k = 0; k < 3; k++) {
        sc[k] = 1.0f / (255 * img_std[k]);
        off[k] = -img_mean[k] / img_std[k];
    }
    for (size_t i = 0; i < npix; i++, px += 3)
        for (int k = 0; k < 3; k++) px[k] = px[k] * sc[k] + off[k];
}

static int decode_pair(const camo_dataset *ds, int index, camo_sample_scratch *sc,
                       uint8_t **img, uint8_t **m, int *W, int *H) {
    int mw, mh;
    *m = NULL;
    *img = decode_file(ds->images[index], 3, 0, sc, W, H);
    if (!*img) return -1;
    *m = decode_file(ds->masks[index], 1, ds->classes > 1, sc, &mw, &mh);
    if (*m && (mw != *W || mh != *H))
        CAMO_ERR("size mismatch: image '%s' is %dx%d but its mask '%s' is %dx%d", ds->images[index],
                 *W, *H, ds->masks[index], mw, mh);
    else if (*m) return 0;
    stbi_image_free(*img);
    stbi_image_free(*m);
    *img = *m = NULL;
    return -1;
}

int camo_sample_load_ex(const camo_dataset *ds, int index, const camo_augment *aug, uint64_t key,
                        camo_sample_scratch *sc, float *image, float *mask, int32_t *labels,
                        int *orig_h, int *orig_w) {
    if (index < 0 || index >= ds->n) {
        CAMO_ERR("sample %d out of range [0, %d)", index, ds->n);
        return -1;
    }
    uint8_t *img, *m;
    int W, H, S = aug->size;
    if (decode_pair(ds, index, sc, &img, &m, &W, &H)) return -1;
    if (orig_h) *orig_h = H;
    if (orig_w) *orig_w = W;
    if (2 * S > sc->taps_cap) {
        free(sc->taps);
        sc->taps_cap = 2 * S;
        sc->taps = camo_malloc((size_t)sc->taps_cap * sizeof *sc->taps);
    }
    tap *xt = sc->taps, *yt = sc->taps + S;
    xform t;
    draw_xform(aug, key, W, H, &t);
    make_taps(xt, S, W, t.x0, t.cw, t.flip);
    make_taps(yt, S, H, t.y0, t.ch, 0);
    size_t npix = (size_t)S * S;
    sample_rgb(img, W, xt, yt, S, image);
    if (t.jitter) color_jitter(image, npix, &t);
    normalise(image, npix);
    if (ds->classes > 1) sample_labels(m, W, xt, yt, S, labels, mask);
    else if (mask) sample_mask(m, W, xt, yt, S, mask);
    stbi_image_free(img);
    stbi_image_free(m);
    return 0;
}

int camo_sample_load(const camo_dataset *ds, int index, const camo_augment *aug, uint64_t key,
                     float *image, float *mask, int32_t *labels, int *orig_h, int *orig_w) {
    camo_sample_scratch sc = {0};
    int rc = camo_sample_load_ex(ds, index, aug, key, &sc, image, mask, labels, orig_h, orig_w);
    free(sc.file);
    free(sc.taps);
    return rc;
}

uint64_t camo_sample_key(uint64_t seed, int epoch, int64_t index) {
    uint64_t h = camo_hash64(seed ^ 0x5a3c0e1d2b4f6789ull);
    h = camo_hash64(h ^ (uint64_t)(uint32_t)epoch);
    return camo_hash64(h ^ (uint64_t)index);
}
