/* test_data.c: data sets (layouts, pairing, bad files), augmentation (determinism, flip,
 * normalisation, plain resize), the loader (order, worker-count independence, uneven last
 * batch, errors, clean shutdown), epoch permutations and the synthetic data generator. */
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/cli.h"
#include "core/common.h"
#include "data/data.h"
#include "test_util.h"
#include "data_util.h"

/* ---------------------------------------------------------------- file helpers */

/* A deterministic, left-right asymmetric RGB image. */
static uint8_t *pattern(int w, int h, int seed) {
    uint8_t *p = malloc((size_t)w * h * 3);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            uint8_t *q = p + 3 * ((size_t)y * w + x);
            q[0] = (uint8_t)(x * 7 + seed * 13);
            q[1] = (uint8_t)(y * 5 + x * x);
            q[2] = (uint8_t)(255 - x * 3 + seed);
        }
    return p;
}

/* An image (pattern) and a mask (left `frac` of the columns foreground) of the same size. */
static void write_pair(const char *img, const char *mask, int w, int h, int seed) {
    uint8_t *px = pattern(w, h, seed), *m = malloc((size_t)w * h);
    for (int i = 0; i < w * h; i++) m[i] = (i % w) < w / 3 ? 255 : 0;
    write_img(img, px, w, h, 3);
    write_img(mask, m, w, h, 1);
    free(px);
    free(m);
}

static uint8_t *read_bytes(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc(*n ? *n : 1);
    assert_int_equal(fread(b, 1, *n, f), *n);
    fclose(f);
    return b;
}

static camo_augment aug_train(int size) {
    return (camo_augment){.size = size, .train = 1, .hflip = 1, .scale_min = 0.75f,
                          .scale_max = 1.25f, .jitter = 0.2f};
}

/* ---------------------------------------------------------------- layouts */

static void test_cod10k_layout(void **state) {
    (void)state;
    write_pair(P("cod/Train/Image/b.jpg"), P("cod/Train/GT_Object/b.png"), 12, 10, 1);
    write_pair(P("cod/Train/Image/a.jpg"), P("cod/Train/GT_Object/a.png"), 12, 10, 2);
    write_pair(P("cod/Train/Image/COD10K-NonCAM-1.jpg"), P("cod/unused/COD10K-NonCAM-1.png"), 12,
               10, 3); /* a non-camouflaged picture: no mask */
    write_pair(P("cod/Test/Image/c.jpg"), P("cod/Test/GT_Object/c.png"), 12, 10, 4);
    const char *fmts[] = {"cod10k", "auto"};
    for (int f = 0; f < 2; f++) {
        camo_dataset *ds = camo_dataset_open(P("cod"), fmts[f], "Train", 1, 0);
        assert_non_null(ds);
        assert_int_equal(camo_dataset_size(ds), 2);
        assert_true(ends_with(camo_dataset_image_path(ds, 0), "Train/Image/a.jpg"));
        assert_true(ends_with(camo_dataset_mask_path(ds, 0), "Train/GT_Object/a.png"));
        assert_true(ends_with(camo_dataset_image_path(ds, 1), "Train/Image/b.jpg"));
        assert_true(ends_with(camo_dataset_mask_path(ds, 1), "Train/GT_Object/b.png"));
        camo_dataset_free(ds);
    }
    camo_dataset *ds = camo_dataset_open(P("cod"), "auto", "Test", 1, 0);
    assert_non_null(ds);
    assert_int_equal(camo_dataset_size(ds), 1);
    camo_dataset_free(ds);
}

/* data.train_split with several splits: their pairs in split order; data.subset: the same
 * seed keeps the same images (in name order), another seed others, fractions and counts. */
static void test_splits_and_subset(void **state) {
    (void)state;
    char img[64], mask[64];
    for (int i = 0; i < 10; i++) {
        snprintf(img, sizeof img, "sub/Train/Image/%02d.jpg", i);
        snprintf(mask, sizeof mask, "sub/Train/GT_Object/%02d.png", i);
        write_pair(P(img), P(mask), 8, 8, (uint32_t)i);
    }
    write_pair(P("sub/Test/Image/t.jpg"), P("sub/Test/GT_Object/t.png"), 8, 8, 99);
    camo_dataset *ds = camo_dataset_open(P("sub"), "auto", "Train,Test", 1, 0);
    assert_non_null(ds);
    assert_int_equal(camo_dataset_size(ds), 11);
    assert_true(ends_with(camo_dataset_image_path(ds, 10), "Test/Image/t.jpg"));
    camo_dataset_free(ds);
    assert_null(camo_dataset_open(P("sub"), "auto", "Train,Nope", 1, 0));
    assert_non_null(strstr(camo_last_error(), "Nope"));

    char first[4][16];
    for (int run = 0; run < 4; run++) { /* seeds 7, 7, 8 (fraction 0.3 = 3), count 4 */
        ds = camo_dataset_open(P("sub"), "cod10k", "Train", 1, 0);
        double subset = run < 3 ? 0.3 : 4;
        int keep = camo_dataset_subset(ds, subset, run == 2 ? 8 : 7);
        assert_int_equal(keep, run < 3 ? 3 : 4);
        assert_int_equal(camo_dataset_size(ds), keep);
        first[run][0] = 0;
        for (int i = 0; i < keep; i++) {
            const char *p = strrchr(camo_dataset_image_path(ds, i), '/') + 1;
            if (i) assert_true(strcmp(camo_dataset_image_path(ds, i - 1),
                                      camo_dataset_image_path(ds, i)) < 0);
            strncat(first[run], p, 2);
        }
        camo_dataset_free(ds);
    }
    assert_string_equal(first[0], first[1]);   /* same seed, same images */
    assert_string_not_equal(first[0], first[2]);
    ds = camo_dataset_open(P("sub"), "cod10k", "Train", 1, 0);
    assert_int_equal(camo_dataset_subset(ds, 50, 7), 10); /* more than there are: all */
    assert_int_equal(camo_dataset_subset(ds, 0.01, 7), 1); /* at least one */
    camo_dataset_free(ds);
}

static void test_folders_layout(void **state) {
    (void)state;
    write_pair(P("fold/Train/images/y.JPG"), P("fold/Train/masks/y.png"), 9, 7, 1);
    write_pair(P("fold/Train/images/x.png"), P("fold/Train/masks/x.png"), 9, 7, 2);
    write_pair(P("fold/Train/images/w.bmp"), P("fold/Train/masks/w.png"), 9, 7, 3);
    write_bytes(P("fold/Train/images/notes.txt"), "hi", 2); /* not an image: ignored */
    const char *fmts[] = {"folders", "auto"};
    for (int f = 0; f < 2; f++) {
        camo_dataset *ds = camo_dataset_open(P("fold"), fmts[f], "Train", 1, 0);
        assert_non_null(ds);
        assert_int_equal(camo_dataset_size(ds), 3);
        assert_true(ends_with(camo_dataset_image_path(ds, 0), "images/w.bmp"));
        assert_true(ends_with(camo_dataset_image_path(ds, 1), "images/x.png"));
        assert_true(ends_with(camo_dataset_image_path(ds, 2), "images/y.JPG"));
        assert_true(ends_with(camo_dataset_mask_path(ds, 2), "masks/y.png"));
        float img[5 * 5 * 3], mask[5 * 5];
        camo_augment a = {.size = 5};
        for (int i = 0; i < 3; i++)
            assert_int_equal(camo_sample_load(ds, i, &a, 1, img, mask, NULL, NULL, NULL), 0);
        camo_dataset_free(ds);
    }
    /* split "" = ROOT/images + ROOT/masks */
    write_pair(P("flat/images/p.png"), P("flat/masks/p.png"), 9, 7, 1);
    camo_dataset *ds = camo_dataset_open(P("flat"), "auto", "", 1, 0);
    assert_non_null(ds);
    assert_int_equal(camo_dataset_size(ds), 1);
    camo_dataset_free(ds);
}

static void test_folders_missing_mask(void **state) {
    (void)state;
    write_pair(P("fm/Train/images/a.png"), P("fm/Train/masks/a.png"), 8, 8, 1);
    write_pair(P("fm/Train/images/lonely.png"), P("fm/elsewhere/lonely.png"), 8, 8, 1);
    camo_clear_error();
    assert_null(camo_dataset_open(P("fm"), "folders", "Train", 1, 0));
    assert_error_names("lonely.png");
    camo_dataset *ds = camo_dataset_open(P("fm"), "folders", "Train", 1, 1); /* skip_bad */
    assert_non_null(ds);
    assert_int_equal(camo_dataset_size(ds), 1);
    camo_dataset_free(ds);
}

static void test_missing_folder(void **state) {
    (void)state;
    const char *fmts[] = {"cod10k", "folders", "auto"};
    for (int f = 0; f < 3; f++) {
        camo_clear_error();
        assert_null(camo_dataset_open(P("no_such_set"), fmts[f], "Train", 1, 0));
        assert_error_names(P("no_such_set/Train"));
    }
    mkdirs(P("empty/Train/Image"));
    mkdirs(P("empty/Train/GT_Object"));
    assert_null(camo_dataset_open(P("empty"), "cod10k", "Train", 1, 0));
    assert_error_names(P("empty/Train/Image"));
    assert_null(camo_dataset_open(P("cod"), "voc", "Train", 1, 0));
    assert_error_names("voc");
}

/* ---------------------------------------------------------------- bad files */

/* bad/Train: a.png good, b_corrupt.jpg random bytes, c_trunc.png cut in half, d.png good,
 * e_mism.png with a mask of another size. */
static void make_bad_set(void) {
    write_pair(P("bad/Train/Image/a.png"), P("bad/Train/GT_Object/a.png"), 16, 12, 1);
    write_pair(P("bad/Train/Image/d.png"), P("bad/Train/GT_Object/d.png"), 16, 12, 2);
    uint8_t junk[600];
    float r[600];
    tu_fill(r, 600, 7, 0, 256);
    for (int i = 0; i < 600; i++) junk[i] = (uint8_t)r[i];
    junk[0] = 0xff; junk[1] = 0xd8; junk[2] = 0xff; /* looks like a JPEG, is not */
    write_bytes(P("bad/Train/Image/b_corrupt.jpg"), junk, sizeof junk);
    uint8_t m[16 * 12] = {0};
    write_img(P("bad/Train/GT_Object/b_corrupt.png"), m, 16, 12, 1);
    write_pair(P("bad/Train/Image/c_trunc.png"), P("bad/Train/GT_Object/c_trunc.png"), 48, 40, 4);
    size_t n;
    uint8_t *png = read_bytes(P("bad/Train/Image/c_trunc.png"), &n);
    write_bytes(P("bad/Train/Image/c_trunc.png"), png, n / 2);
    free(png);
    write_pair(P("bad/Train/Image/e_mism.png"), P("bad/Train/GT_Object/e_mism.png"), 16, 12, 5);
    write_pair(P("bad/tmp/e_mism.png"), P("bad/Train/GT_Object/e_mism.png"), 10, 12, 5);
}

static void test_bad_files(void **state) {
    (void)state;
    make_bad_set();
    camo_dataset *ds = camo_dataset_open(P("bad"), "cod10k", "Train", 1, 0);
    assert_non_null(ds);
    assert_int_equal(camo_dataset_size(ds), 5);
    camo_augment a = {.size = 8};
    float img[8 * 8 * 3], mask[8 * 8];
    const char *names[] = {"b_corrupt.jpg", "c_trunc.png", "e_mism.png"};
    const int index[] = {1, 2, 4};
    for (int i = 0; i < 3; i++) {
        camo_clear_error();
        assert_int_not_equal(camo_sample_load(ds, index[i], &a, 1, img, mask, NULL, NULL, NULL), 0);
        assert_error_names(names[i]);
    }
    assert_error_names("Image/e_mism.png"); /* a size mismatch names both files */
    assert_error_names("GT_Object/e_mism.png");
    assert_int_equal(camo_sample_load(ds, 0, &a, 1, img, mask, NULL, NULL, NULL), 0);
    camo_dataset_free(ds);
}

static void test_skip_bad_in_loader(void **state) {
    (void)state;
    make_bad_set();
    camo_dataset *ds = camo_dataset_open(P("bad"), "cod10k", "Train", 1, 1);
    assert_non_null(ds);
    int order[5] = {0, 1, 2, 3, 4}, got = 0;
    camo_augment a = aug_train(8);
    for (int workers = 0; workers <= 2; workers++) {
        camo_loader *L = camo_loader_create(ds, &a, workers, 2, 2);
        camo_loader_start(L, order, 5, 2, 1, 0);
        camo_batch *b;
        got = 0;
        while ((b = camo_loader_next(L)) != NULL) {
            for (int i = 0; i < b->n; i++) assert_true(b->index[i] == 0 || b->index[i] == 3);
            got += b->n;
            camo_loader_release(L, b);
        }
        assert_int_equal(camo_loader_failed(L), 0);
        assert_int_equal(got, 2);
        camo_loader_free(L);
    }
    camo_dataset_free(ds);
}

/* ---------------------------------------------------------------- augmentation */

static void test_augment_determinism(void **state) {
    (void)state;
    write_pair(P("aug/Train/Image/a.png"), P("aug/Train/GT_Object/a.png"), 40, 30, 1);
    camo_dataset *ds = camo_dataset_open(P("aug"), "cod10k", "Train", 1, 0);
    assert_non_null(ds);
    camo_augment a = aug_train(24);
    enum { N = 24 * 24 };
    float i1[N * 3], i2[N * 3], m1[N], m2[N];
    int h, w;
    assert_int_equal(camo_sample_load(ds, 0, &a, 42, i1, m1, NULL, &h, &w), 0);
    assert_int_equal(h, 30);
    assert_int_equal(w, 40);
    assert_int_equal(camo_sample_load(ds, 0, &a, 42, i2, m2, NULL, NULL, NULL), 0);
    assert_memory_equal(i1, i2, sizeof i1);
    assert_memory_equal(m1, m2, sizeof m1);
    int differ = 0;
    for (uint64_t k = 43; k < 46; k++) {
        assert_int_equal(camo_sample_load(ds, 0, &a, k, i2, m2, NULL, NULL, NULL), 0);
        differ += memcmp(i1, i2, sizeof i1) != 0;
    }
    assert_int_equal(differ, 3);
    for (int i = 0; i < N; i++) assert_true(m1[i] == 0.0f || m1[i] == 1.0f);
    assert_int_not_equal(camo_sample_key(1, 0, 5), camo_sample_key(1, 1, 5));
    assert_int_not_equal(camo_sample_key(1, 0, 5), camo_sample_key(2, 0, 5));
    assert_int_not_equal(camo_sample_key(1, 0, 5), camo_sample_key(1, 0, 6));
    camo_dataset_free(ds);
}

/* Without scale or jitter an output the source's size is the identity, so a flipped sample
 * must be the exact mirror of the unflipped one, image and mask together. */
static void test_flip(void **state) {
    (void)state;
    write_pair(P("flip/Train/Image/a.png"), P("flip/Train/GT_Object/a.png"), 32, 32, 1);
    camo_dataset *ds = camo_dataset_open(P("flip"), "cod10k", "Train", 1, 0);
    assert_non_null(ds);
    enum { S = 32, N = S * S };
    static float ref[N * 3], rm[N], img[N * 3], m[N];
    camo_augment plain = {.size = S, .train = 1, .scale_min = 1, .scale_max = 1};
    camo_augment flip = plain;
    flip.hflip = 1;
    assert_int_equal(camo_sample_load(ds, 0, &plain, 0, ref, rm, NULL, NULL, NULL), 0);
    int flipped = 0;
    for (uint64_t key = 0; key < 20; key++) {
        assert_int_equal(camo_sample_load(ds, 0, &flip, key, img, m, NULL, NULL, NULL), 0);
        int same = !memcmp(img, ref, sizeof img), same_m = !memcmp(m, rm, sizeof m);
        int mir = 1, mir_m = 1;
        for (int y = 0; y < S; y++)
            for (int x = 0; x < S; x++) {
                mir_m &= m[y * S + x] == rm[y * S + S - 1 - x];
                for (int c = 0; c < 3; c++)
                    mir &= img[(y * S + x) * 3 + c] == ref[(y * S + S - 1 - x) * 3 + c];
            }
        assert_true((same && same_m) || (mir && mir_m));
        assert_int_equal(same, same_m);
        flipped += mir;
    }
    assert_in_range(flipped, 3, 17);
    assert_true(rm[0] == 1.0f && rm[S - 1] == 0.0f); /* the mask is asymmetric */
    camo_dataset_free(ds);
}

static void test_normalisation(void **state) {
    (void)state;
    uint8_t px[8 * 8 * 3], m[8 * 8] = {0};
    for (int i = 0; i < 64; i++) { px[3 * i] = 200; px[3 * i + 1] = 100; px[3 * i + 2] = 50; }
    px[3 * 9] = 10; /* pixel (1, 1) red = 10 */
    write_img(P("norm/Train/Image/a.png"), px, 8, 8, 3);
    write_img(P("norm/Train/GT_Object/a.png"), m, 8, 8, 1);
    camo_dataset *ds = camo_dataset_open(P("norm"), "cod10k", "Train", 1, 0);
    assert_non_null(ds);
    float img[8 * 8 * 3], mask[64];
    camo_augment a = {.size = 8};
    assert_int_equal(camo_sample_load(ds, 0, &a, 0, img, mask, NULL, NULL, NULL), 0);
    const float want[3] = {(200 / 255.0f - 0.485f) / 0.229f, (100 / 255.0f - 0.456f) / 0.224f,
                           (50 / 255.0f - 0.406f) / 0.225f};
    for (int c = 0; c < 3; c++) assert_float_equal(img[c], want[c], 1e-5);
    assert_float_equal(img[3 * 9], (10 / 255.0f - 0.485f) / 0.229f, 1e-5);
    assert_float_equal(img[3 * 9 + 1], want[1], 1e-5);
    camo_dataset_free(ds);
}

/* Reference bilinear resize (align_corners = false, edges clamped), one channel. */
static float ref_bilinear(const float *src, int w, int h, int S, int ox, int oy) {
    float sx = (ox + 0.5f) * w / S - 0.5f, sy = (oy + 0.5f) * h / S - 0.5f;
    int x0 = (int)floorf(sx), y0 = (int)floorf(sy);
    float wx = sx - x0, wy = sy - y0;
    int xa = x0 < 0 ? 0 : x0, xb = x0 + 1 > w - 1 ? w - 1 : x0 + 1;
    int ya = y0 < 0 ? 0 : y0, yb = y0 + 1 > h - 1 ? h - 1 : y0 + 1;
    float top = src[ya * w + xa] * (1 - wx) + src[ya * w + xb] * wx;
    float bot = src[yb * w + xa] * (1 - wx) + src[yb * w + xb] * wx;
    return top * (1 - wy) + bot * wy;
}

static void test_validation_resize(void **state) {
    (void)state;
    enum { W = 4, H = 4, S = 8 };
    uint8_t px[W * H * 3], m[W * H];
    float gray[W * H];
    for (int i = 0; i < W * H; i++) {
        gray[i] = (float)((i * 37) % 256);
        px[3 * i] = px[3 * i + 1] = px[3 * i + 2] = (uint8_t)gray[i];
        m[i] = (i % W) < 2 ? 255 : 0;
    }
    write_img(P("val/Train/Image/a.png"), px, W, H, 3);
    write_img(P("val/Train/GT_Object/a.png"), m, W, H, 1);
    camo_dataset *ds = camo_dataset_open(P("val"), "cod10k", "Train", 1, 0);
    assert_non_null(ds);
    camo_augment a = {
        .size = S, .train = 0, .hflip = 1, .scale_min = 0.5f, .scale_max = 2, .jitter = 0.5f};
    float img[S * S * 3], img2[S * S * 3], mask[S * S], want[S * S * 3];
    assert_int_equal(camo_sample_load(ds, 0, &a, 1, img, mask, NULL, NULL, NULL), 0);
    for (int y = 0; y < S; y++)
        for (int x = 0; x < S; x++) {
            /* the base is 8-bit: bilinear, rounded */
            float v = floorf(ref_bilinear(gray, W, H, S, x, y) + 0.5f) / 255.0f;
            want[(y * S + x) * 3 + 0] = (v - 0.485f) / 0.229f;
            want[(y * S + x) * 3 + 1] = (v - 0.456f) / 0.224f;
            want[(y * S + x) * 3 + 2] = (v - 0.406f) / 0.225f;
            assert_float_equal(mask[y * S + x], x < 4 ? 1.0f : 0.0f, 0);
        }
    TU_ASSERT_CLOSE(img, want, (size_t)S * S * 3, 1.0, 1e-5, "validation resize");
    assert_int_equal(camo_sample_load(ds, 0, &a, 999, img2, mask, NULL, NULL, NULL), 0);
    assert_memory_equal(img, img2, sizeof img); /* no randomness in validation */
    camo_dataset_free(ds);
}

static void test_class_labels(void **state) {
    (void)state;
    enum { W = 6, H = 6, S = 12 };
    uint8_t px[W * H * 3] = {0}, m[W * H];
    for (int i = 0; i < W * H; i++) m[i] = (uint8_t)((i % W) / 2); /* classes 0, 1, 2 */
    write_img(P("cls/Train/Image/a.png"), px, W, H, 3);
    write_img(P("cls/Train/GT_Object/a.png"), m, W, H, 1);
    camo_dataset *ds = camo_dataset_open(P("cls"), "cod10k", "Train", 3, 0);
    assert_non_null(ds);
    assert_int_equal(camo_dataset_classes(ds), 3);
    camo_augment a = {.size = S};
    float img[S * S * 3], mask[S * S];
    int32_t lab[S * S];
    assert_int_equal(camo_sample_load(ds, 0, &a, 0, img, mask, lab, NULL, NULL), 0);
    for (int y = 0; y < S; y++)
        for (int x = 0; x < S; x++) assert_int_equal(lab[y * S + x], x / 4); /* nearest, 2x */
    camo_dataset_free(ds);
}

/* ---------------------------------------------------------------- loader */

enum { LN = 7, LS = 16 };

static camo_dataset *loader_set(void) {
    for (int i = 0; i < LN; i++) /* varied sizes: per-worker scratch grows */
        write_pair(P("ld/Train/Image/s%02d.png", i), P("ld/Train/GT_Object/s%02d.png", i),
                   12 + 5 * i, 20 + 3 * (i % 3), i);
    camo_dataset *ds = camo_dataset_open(P("ld"), "cod10k", "Train", 1, 0);
    assert_non_null(ds);
    assert_int_equal(camo_dataset_size(ds), LN);
    return ds;
}

/* Runs one epoch and appends every delivered sample (image bytes) in order to out. */
static void run_epoch(camo_loader *L, const int *order, int batch, int epoch, float *out) {
    camo_loader_start(L, order, LN, batch, 11, epoch);
    camo_batch *b;
    int seq = 0, pos = 0;
    size_t plane = (size_t)LS * LS;
    while ((b = camo_loader_next(L)) != NULL) {
        assert_int_equal(b->seq, seq++);
        assert_int_equal(b->n, CAMO_MIN(batch, LN - pos));
        assert_int_equal(b->size, LS);
        for (int i = 0; i < b->n; i++, pos++) {
            assert_int_equal(b->index[i], order[pos]);
            assert_int_equal(b->orig_w[i], 12 + 5 * order[pos]);
        }
        memcpy(out + (pos - b->n) * plane * 3, b->image, b->n * plane * 3 * sizeof(float));
        camo_loader_release(L, b);
    }
    assert_int_equal(camo_loader_failed(L), 0);
    assert_int_equal(pos, LN);
    assert_int_equal(seq, (LN + batch - 1) / batch);
}

static void test_loader_order(void **state) {
    (void)state;
    camo_dataset *ds = loader_set();
    camo_augment a = aug_train(LS);
    size_t per = (size_t)LS * LS * 3;
    float *want = malloc(LN * per * sizeof(float)), *got = malloc(LN * per * sizeof(float));
    int order[LN];
    for (int epoch = 0; epoch < 2; epoch++) {
        camo_epoch_permutation(order, LN, 11, epoch);
        for (int i = 0; i < LN; i++)
            assert_int_equal(camo_sample_load(ds, order[i], &a,
                                              camo_sample_key(11, epoch, order[i]), want + i * per,
                                              NULL, NULL, NULL, NULL),
                             0);
        for (int workers = 0; workers <= 3; workers++) {
            camo_loader *L = camo_loader_create(ds, &a, workers, 3, 2);
            memset(got, 0, LN * per * sizeof(float));
            run_epoch(L, order, 3, epoch, got); /* batches of 3, 3, 1 */
            assert_memory_equal(got, want, LN * per * sizeof(float));
            run_epoch(L, order, 2, epoch, got); /* the same loader again, batches of 2 */
            assert_memory_equal(got, want, LN * per * sizeof(float));
            camo_loader_free(L);
        }
    }
    free(want);
    free(got);
    camo_dataset_free(ds);
}

/* An epoch abandoned half-way (train's max_steps) and a new one started at once. */
static void test_loader_restart(void **state) {
    (void)state;
    camo_dataset *ds = loader_set();
    camo_augment a = aug_train(LS);
    int order[LN];
    camo_epoch_permutation(order, LN, 11, 0);
    float *got = malloc(LN * (size_t)LS * LS * 3 * sizeof(float));
    camo_loader *L = camo_loader_create(ds, &a, 3, 2, 2);
    camo_loader_start(L, order, LN, 2, 11, 0);
    camo_batch *b = camo_loader_next(L);
    assert_non_null(b);
    camo_loader_release(L, b);
    run_epoch(L, order, 2, 0, got);
    camo_loader_start(L, order, LN, 1, 11, 0); /* and freed mid-epoch, batches unreleased */
    assert_non_null(camo_loader_next(L));
    camo_loader_free(L);
    L = camo_loader_create(ds, &a, 2, 2, 3); /* freed before anything was taken */
    camo_loader_start(L, order, LN, 2, 11, 0);
    camo_loader_free(L);
    free(got);
    camo_dataset_free(ds);
}

static void test_loader_error(void **state) {
    (void)state;
    make_bad_set();
    camo_dataset *ds = camo_dataset_open(P("bad"), "cod10k", "Train", 1, 0);
    assert_non_null(ds);
    int order[3] = {0, 3, 1}; /* good, good, corrupt */
    camo_augment a = aug_train(8);
    for (int workers = 0; workers <= 3; workers++) {
        camo_loader *L = camo_loader_create(ds, &a, workers, 1, 2);
        camo_loader_start(L, order, 3, 1, 1, 0);
        camo_batch *b;
        int batches = 0;
        camo_clear_error();
        while ((b = camo_loader_next(L)) != NULL) { batches++; camo_loader_release(L, b); }
        assert_true(camo_loader_failed(L));
        assert_in_range(batches, 0, 2);
        assert_error_names("b_corrupt.jpg");
        assert_null(camo_loader_next(L));
        camo_loader_free(L);
    }
    camo_dataset_free(ds);
}

static void test_epoch_permutation(void **state) {
    (void)state;
    enum { N = 100 };
    int a[N], b[N], seen[N];
    camo_epoch_permutation(a, N, 5, 0);
    memset(seen, 0, sizeof seen);
    for (int i = 0; i < N; i++) { assert_in_range(a[i], 0, N - 1); seen[a[i]]++; }
    for (int i = 0; i < N; i++) assert_int_equal(seen[i], 1);
    camo_epoch_permutation(b, N, 5, 0);
    assert_memory_equal(a, b, sizeof a);
    camo_epoch_permutation(b, N, 5, 1);
    assert_memory_not_equal(a, b, sizeof a);
    camo_epoch_permutation(b, N, 6, 0);
    assert_memory_not_equal(a, b, sizeof a);
    int fixed = 0;
    for (int i = 0; i < N; i++) fixed += a[i] == i;
    assert_true(fixed < 10); /* shuffled, not the identity */
    camo_epoch_permutation(b, 1, 5, 0);
    assert_int_equal(b[0], 0);
    camo_epoch_permutation(b, 0, 5, 0);
}

/* ---------------------------------------------------------------- synth */

static int synth(const char *out, const char *seed, const char *classes) {
    char *argv[] = {"--out", (char *)out, "--train", "3", "--test", "2", "--size", "32",
                    "--seed", (char *)seed, "--difficulty", "0.3", "--classes", (char *)classes};
    return cli_synth(14, argv);
}

static int same_file(const char *a, const char *b) {
    size_t na, nb;
    uint8_t *x = read_bytes(a, &na), *y = read_bytes(b, &nb);
    assert_non_null(x);
    assert_non_null(y);
    int same = na == nb && !memcmp(x, y, na);
    free(x);
    free(y);
    return same;
}

static void test_synth(void **state) {
    (void)state;
    char d1[600], d2[600], d3[600], a[1200], b[1200];
    snprintf(d1, sizeof d1, "%s", P("syn1"));
    snprintf(d2, sizeof d2, "%s", P("syn2"));
    snprintf(d3, sizeof d3, "%s", P("syn3"));
    assert_int_equal(synth(d1, "7", "1"), 0);
    assert_int_equal(synth(d2, "7", "1"), 0);
    assert_int_equal(synth(d3, "8", "1"), 0);
    const char *files[] = {"Train/Image/synth_00001.jpg", "Train/GT_Object/synth_00003.png",
                           "Train/Image/synth_00003.jpg", "Test/Image/synth_00002.jpg",
                           "Test/GT_Object/synth_00002.png"};
    for (int i = 0; i < 5; i++) {
        snprintf(a, sizeof a, "%s/%s", d1, files[i]);
        snprintf(b, sizeof b, "%s/%s", d2, files[i]);
        assert_true(same_file(a, b));
        snprintf(b, sizeof b, "%s/%s", d3, files[i]);
        if (strstr(files[i], ".jpg")) assert_false(same_file(a, b));
    }
    camo_dataset *ds = camo_dataset_open(d1, "auto", "Train", 1, 0);
    assert_non_null(ds);
    assert_int_equal(camo_dataset_size(ds), 3);
    camo_dataset_free(ds);
    int w, h, fg = 0;
    snprintf(a, sizeof a, "%s/Train/GT_Object/synth_00001.png", d1);
    uint8_t *m = camo_image_read(a, 1, &w, &h);
    assert_non_null(m);
    assert_int_equal(w, 32);
    for (int i = 0; i < w * h; i++) { assert_true(m[i] == 0 || m[i] == 255); fg += m[i] != 0; }
    assert_in_range(fg, 1, w * h - 1);
    free(m);
}

static void test_synth_classes_and_args(void **state) {
    (void)state;
    char d[600], a[1200];
    snprintf(d, sizeof d, "%s", P("synk"));
    assert_int_equal(synth(d, "3", "4"), 0);
    int w, h, fg = 0;
    for (int k = 1; k <= 3; k++) {
        snprintf(a, sizeof a, "%s/Train/GT_Object/synth_%05d.png", d, k);
        uint8_t *m = camo_image_read(a, 1, &w, &h);
        assert_non_null(m);
        for (int i = 0; i < w * h; i++) { assert_true(m[i] < 4); fg += m[i] != 0; }
        free(m);
    }
    assert_true(fg > 0);
    char *bad1[] = {"--out", d, "--size", "abc"};
    char *bad2[] = {"--out", d, "--bogus", "1"};
    char *bad3[] = {"--out", d, "--difficulty", "2"};
    char *bad4[] = {"--train", "3"};
    char *bad5[] = {"--out", d, "--train"};
    assert_int_equal(cli_synth(4, bad1), 2);
    assert_int_equal(cli_synth(4, bad2), 2);
    assert_int_equal(cli_synth(4, bad3), 2);
    assert_int_equal(cli_synth(2, bad4), 2);
    assert_int_equal(cli_synth(3, bad5), 2);
    char *io[] = {"--out", "/proc/no_such/synth", "--train", "1", "--test", "0", "--size", "16"};
    assert_int_equal(cli_synth(8, io), 1);
}

int main(void) {
    du_root_create("data");
    camo_log_set_quiet(1);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cod10k_layout),
        cmocka_unit_test(test_splits_and_subset),
        cmocka_unit_test(test_folders_layout),
        cmocka_unit_test(test_folders_missing_mask),
        cmocka_unit_test(test_missing_folder),
        cmocka_unit_test(test_bad_files),
        cmocka_unit_test(test_skip_bad_in_loader),
        cmocka_unit_test(test_augment_determinism),
        cmocka_unit_test(test_flip),
        cmocka_unit_test(test_normalisation),
        cmocka_unit_test(test_validation_resize),
        cmocka_unit_test(test_class_labels),
        cmocka_unit_test(test_loader_order),
        cmocka_unit_test(test_loader_restart),
        cmocka_unit_test(test_loader_error),
        cmocka_unit_test(test_epoch_permutation),
        cmocka_unit_test(test_synth),
        cmocka_unit_test(test_synth_classes_and_args),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    du_root_remove();
    return rc;
}
