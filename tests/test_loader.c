/* test_loader.c: what issue 7 added to the data path: the layouts' pairing rules (CARLA's
 * _label masks, split aliases, ADE20K's 0 = ignore), bad data (class values, 16-bit and
 * grey/RGBA files), rotation applying one transform to image and mask, data.cache giving
 * identical batches, the loader's host allocator and original-size masks for evaluation;
 * the window of a process of a multi-process run (issue 19): its part of each batch only. */
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

#include "core/common.h"
#include "data/data.h"
#include "test_util.h"
#include "data_util.h"

/* In stb_image_write's implementation section only (compiled into libcamo, not static). */
unsigned char *stbi_write_png_to_mem(const unsigned char *pixels, int stride_bytes, int x, int y,
                                     int n, int *out_len);

static uint32_t crc32_png(const uint8_t *p, size_t n) {
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++) c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
    }
    return ~c;
}

/* A 16-bit greyscale PNG: stb writes only 8 bits, but 8-bit grey+alpha rows have the same
 * bytes and filter unit (2 bytes a pixel) as 16-bit grey rows; only IHDR differs. */
static void write_png16(const char *path, const uint16_t *v, int w, int h) {
    uint8_t *be = malloc((size_t)w * h * 2);
    for (int i = 0; i < w * h; i++) {
        be[2 * i] = (uint8_t)(v[i] >> 8);
        be[2 * i + 1] = (uint8_t)v[i];
    }
    int len;
    uint8_t *png = stbi_write_png_to_mem(be, w * 2, w, h, 2, &len);
    assert_non_null(png);
    assert_int_equal(png[24], 8);
    assert_int_equal(png[25], 4);
    png[24] = 16; /* bit depth */
    png[25] = 0;  /* colour type grey */
    uint32_t crc = crc32_png(png + 12, 17); /* "IHDR" + 13 data bytes */
    for (int k = 0; k < 4; k++) png[29 + k] = (uint8_t)(crc >> (24 - 8 * k));
    write_bytes(path, png, (size_t)len);
    free(png);
    free(be);
}

/* An RGB pattern and a mask, the same size. */
static void write_pair(const char *img, const char *mask, int w, int h, int seed) {
    uint8_t *px = malloc((size_t)w * h * 3), *m = malloc((size_t)w * h);
    for (int i = 0; i < w * h; i++) {
        px[3 * i] = (uint8_t)(i * 7 + seed);
        px[3 * i + 1] = (uint8_t)(i / w * 9);
        px[3 * i + 2] = (uint8_t)(255 - i % w * 5);
        m[i] = (i % w) < w / 3 ? 255 : 0;
    }
    write_img(img, px, w, h, 3);
    write_img(mask, m, w, h, 1);
    free(px);
    free(m);
}

/* ---------------------------------------------------------------- layouts */

static void test_carla_and_split_aliases(void **state) {
    (void)state;
    write_pair(P("carla/train/Town04_f1.png"), P("carla/train_label/Town04_f1_label.png"), 8, 8, 1);
    write_pair(P("carla/train/Town04_f2.png"), P("carla/train_label/Town04_f2_label.png"), 8, 8, 2);
    write_pair(P("carla/val/Town05_f1.png"), P("carla/val_label/Town05_f1_label.png"), 8, 8, 3);
    const char *fmts[] = {"carla", "auto"};
    for (int f = 0; f < 2; f++) {
        camo_dataset *ds = camo_dataset_open(P("carla"), fmts[f], "Train", 1, 0); /* = train */
        assert_non_null(ds);
        assert_string_equal(camo_dataset_format(ds), "carla");
        assert_int_equal(camo_dataset_size(ds), 2);
        assert_true(ends_with(camo_dataset_mask_path(ds, 1), "train_label/Town04_f2_label.png"));
        camo_dataset_free(ds);
        ds = camo_dataset_open(P("carla"), fmts[f], "Test", 1, 0); /* = val */
        assert_non_null(ds);
        assert_int_equal(camo_dataset_size(ds), 1);
        camo_dataset_free(ds);
    }
    write_pair(P("camo/Images/Train/c1.jpg"), P("camo/GT/c1.png"), 8, 8, 1);
    write_pair(P("camo/Images/Test/c2.jpg"), P("camo/GT/c2.png"), 8, 8, 1);
    camo_dataset *ds = camo_dataset_open(P("camo"), "auto", "Test", 1, 0);
    assert_non_null(ds);
    assert_string_equal(camo_dataset_format(ds), "camo");
    assert_int_equal(camo_dataset_size(ds), 1); /* GT holds both splits' masks */
    camo_dataset_free(ds);
    camo_clear_error();
    assert_null(camo_dataset_open(P("camo"), "auto", "Elsewhere", 1, 0));
    assert_error_names("cannot detect the layout");
}

/* COD10K-v3: -NonCAM-/-BG- pictures are skipped even when a stray mask has their name. */
static void test_cod10k_noncam(void **state) {
    (void)state;
    const char *names[] = {"COD10K-CAM-1-A-1", "COD10K-NonCAM-5-B-2"};
    for (int k = 0; k < 2; k++)
        write_pair(P("cod/Train/Image/%s.jpg", names[k]), P("cod/Train/GT_Object/%s.png", names[k]),
                   8, 8, 1);
    write_pair(P("cod/Train/Image/COD10K-BG-3.jpg"), P("cod/x/COD10K-BG-3.png"), 8, 8, 1);
    camo_dataset *ds = camo_dataset_open(P("cod"), "auto", "Train", 1, 0);
    assert_non_null(ds);
    assert_int_equal(camo_dataset_size(ds), 1);
    assert_true(ends_with(camo_dataset_image_path(ds, 0), "COD10K-CAM-1-A-1.jpg"));
    camo_dataset_free(ds);
    /* a camouflaged picture without its mask is an error (a warning with skip_bad) */
    write_pair(P("cod/Train/Image/COD10K-CAM-2-B-9.jpg"), P("cod/y/COD10K-CAM-2-B-9.png"), 8, 8, 1);
    camo_clear_error();
    assert_null(camo_dataset_open(P("cod"), "cod10k", "Train", 1, 0));
    assert_error_names("COD10K-CAM-2-B-9.jpg");
    ds = camo_dataset_open(P("cod"), "cod10k", "Train", 1, 1);
    assert_non_null(ds);
    assert_int_equal(camo_dataset_size(ds), 1);
    camo_dataset_free(ds);
}

/* ADE20K: 0 -> ignore, v -> v - 1; values above classes are errors naming the file. */
static void test_ade20k_labels(void **state) {
    (void)state;
    enum { W = 8, H = 4 };
    uint8_t px[W * H * 3] = {0}, m[W * H];
    for (int i = 0; i < W * H; i++) m[i] = (uint8_t)(i % W / 2); /* 0, 1, 2, 3 */
    write_img(P("ade/images/training/ADE_train_1.jpg"), px, W, H, 3);
    write_img(P("ade/annotations/training/ADE_train_1.png"), m, W, H, 1);
    camo_dataset *ds = camo_dataset_open(P("ade"), "auto", "Train", 3, 0);
    assert_non_null(ds);
    assert_string_equal(camo_dataset_format(ds), "ade20k");
    camo_dataset_set_ignore_index(ds, 200);
    assert_int_equal(camo_dataset_label(ds, 0), 200);
    assert_int_equal(camo_dataset_label(ds, 3), 2);
    assert_int_equal(camo_dataset_label(ds, 4), -2);
    camo_augment a = {.size = W};
    float img[W * W * 3], mask[W * W];
    int32_t lab[W * W];
    assert_int_equal(camo_sample_load(ds, 0, &a, 0, img, mask, lab, NULL, NULL), 0);
    for (int y = 0; y < W; y++)
        for (int x = 0; x < W; x++) assert_int_equal(lab[y * W + x], x / 2 == 0 ? 200 : x / 2 - 1);
    camo_dataset_free(ds);
    ds = camo_dataset_open(P("ade"), "ade20k", "training", 2, 0); /* value 3 is class 2: bad */
    assert_non_null(ds);
    camo_clear_error();
    assert_int_not_equal(camo_sample_load(ds, 0, &a, 0, img, mask, lab, NULL, NULL), 0);
    assert_error_names("annotations/training/ADE_train_1.png");
    assert_error_names("value 3");
    camo_dataset_free(ds);
}

/* Class values: >= classes is an error naming the mask, the ignore value is not. */
static void test_class_values(void **state) {
    (void)state;
    enum { W = 6, H = 6 };
    uint8_t px[W * H * 3] = {0}, m[W * H];
    for (int i = 0; i < W * H; i++) m[i] = i < W ? 255 : (uint8_t)(i % 3);
    write_img(P("cv/Train/images/a.png"), px, W, H, 3);
    write_img(P("cv/Train/masks/a.png"), m, W, H, 1);
    m[W + 2] = 3;
    write_img(P("cv/Train/images/b.png"), px, W, H, 3);
    write_img(P("cv/Train/masks/b.png"), m, W, H, 1);
    camo_dataset *ds = camo_dataset_open(P("cv"), "folders", "Train", 3, 0);
    assert_non_null(ds);
    camo_augment a = {.size = W};
    float img[W * W * 3], mask[W * W];
    int32_t lab[W * W];
    assert_int_equal(camo_sample_load(ds, 0, &a, 0, img, mask, lab, NULL, NULL), 0);
    assert_int_equal(lab[0], 255);
    assert_int_equal(lab[W + 2], 2);
    camo_clear_error();
    assert_int_not_equal(camo_sample_load(ds, 1, &a, 0, img, mask, lab, NULL, NULL), 0);
    assert_error_names("masks/b.png");
    assert_error_names("(x 2, y 1) has value 3");
    camo_dataset_set_ignore_index(ds, -1); /* now 255 is bad too */
    assert_int_not_equal(camo_sample_load(ds, 0, &a, 0, img, mask, lab, NULL, NULL), 0);
    assert_error_names("value 255");
    camo_dataset_free(ds);
}

/* Grey, grey+alpha, RGBA and 16-bit images load as RGB; a 16-bit binary mask works; a
 * 16-bit class-index mask is an error naming it (its values would be silently cut). */
static void test_image_kinds(void **state) {
    (void)state;
    enum { W = 5, H = 4 };
    uint8_t g[W * H], ga[W * H * 2], rgba[W * H * 4], m[W * H];
    uint16_t g16[W * H], m16[W * H];
    for (int i = 0; i < W * H; i++) {
        g[i] = (uint8_t)(i * 10);
        ga[2 * i] = g[i]; ga[2 * i + 1] = 255;
        for (int c = 0; c < 3; c++) rgba[4 * i + c] = g[i];
        rgba[4 * i + 3] = 255;
        g16[i] = (uint16_t)(g[i] * 257);
        m[i] = i % W < 2 ? 255 : 0;
        m16[i] = i % W < 2 ? 65535 : 0;
    }
    write_img(P("kinds/Train/images/grey.png"), g, W, H, 1);
    write_img(P("kinds/Train/images/greyalpha.png"), ga, W, H, 2);
    write_img(P("kinds/Train/images/rgba.png"), rgba, W, H, 4);
    write_png16(P("kinds/Train/images/sixteen.png"), g16, W, H);
    for (int k = 0; k < 3; k++)
        write_img(P("kinds/Train/masks/%s.png", k == 0 ? "grey" : k == 1 ? "greyalpha" : "rgba"),
                  m, W, H, 1);
    write_png16(P("kinds/Train/masks/sixteen.png"), m16, W, H);
    camo_dataset *ds = camo_dataset_open(P("kinds"), "folders", "Train", 1, 0);
    assert_non_null(ds);
    assert_int_equal(camo_dataset_size(ds), 4);
    camo_augment a = {.size = W};
    float img[W * W * 3], ref[W * W * 3], mask[W * W], rm[W * W];
    assert_int_equal(camo_sample_load(ds, 0, &a, 0, ref, rm, NULL, NULL, NULL), 0);
    for (int i = 1; i < 4; i++) {
        camo_clear_error();
        if (camo_sample_load(ds, i, &a, 0, img, mask, NULL, NULL, NULL))
            fprintf(stderr, "  %s: %s\n", camo_dataset_image_path(ds, i), camo_last_error());
        assert_int_equal(camo_sample_load(ds, i, &a, 0, img, mask, NULL, NULL, NULL), 0);
        assert_memory_equal(img, ref, sizeof img); /* same grey levels, as RGB */
        assert_memory_equal(mask, rm, sizeof mask);
    }
    for (int p = 0; p < W * W; p++) assert_true(mask[p] == (p % W < 2 ? 1.0f : 0.0f));
    camo_dataset_free(ds);
    ds = camo_dataset_open(P("kinds"), "folders", "Train", 3, 0);
    assert_non_null(ds);
    camo_clear_error();
    int32_t lab[W * W];
    assert_int_not_equal(camo_sample_load(ds, 3, &a, 0, img, mask, lab, NULL, NULL), 0);
    assert_error_names("masks/sixteen.png");
    assert_error_names("16 bits");
    camo_dataset_free(ds);
}

/* ---------------------------------------------------------------- augmentation */

/* The image's red channel is the mask (255 inside): with scale, rotation and flip the mask
 * sampled bilinearly and thresholded must equal the image's red channel thresholded, pixel
 * for pixel (same map, same weights); labels (nearest) must agree almost everywhere. */
static void test_rotation_same_transform(void **state) {
    (void)state;
    enum { W = 40, H = 30, S = 24, K = 3 };
    uint8_t px[W * H * 3], m[W * H], lm[W * H];
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            int i = y * W + x, in = (x - 14) * (x - 14) + (y - 12) * (y - 12) < 64 || x > 33;
            m[i] = in ? 255 : 0;
            lm[i] = (uint8_t)(y < 10 ? 0 : x < 20 ? 1 : 2);
            px[3 * i] = m[i];
            px[3 * i + 1] = (uint8_t)(lm[i] * 100);
            px[3 * i + 2] = 0;
        }
    write_img(P("rot/Train/images/a.png"), px, W, H, 3);
    write_img(P("rot/Train/masks/a.png"), m, W, H, 1);
    write_img(P("rotk/Train/images/a.png"), px, W, H, 3);
    write_img(P("rotk/Train/masks/a.png"), lm, W, H, 1);
    camo_dataset *ds = camo_dataset_open(P("rot"), "folders", "Train", 1, 0);
    camo_dataset *dk = camo_dataset_open(P("rotk"), "folders", "Train", K, 0);
    assert_non_null(ds);
    assert_non_null(dk);
    camo_augment a = {.size = S, .train = 1, .hflip = 1, .scale_min = 0.7f, .scale_max = 1.3f,
                      .rotate = 30};
    static float img[S * S * 3], mask[S * S];
    static int32_t lab[S * S];
    int agree = 0, counted = 0, fg = 0;
    for (uint64_t key = 1; key <= 12; key++) {
        assert_int_equal(camo_sample_load(ds, 0, &a, key, img, mask, NULL, NULL, NULL), 0);
        for (int p = 0; p < S * S; p++) {
            float red = (img[3 * p] * 0.229f + 0.485f) * 255; /* undo the normalisation */
            assert_true((red > 127.5f + 1e-3f) == (mask[p] == 1.0f) || fabsf(red - 127.5f) < 1e-2f);
            fg += mask[p] == 1.0f;
        }
        assert_int_equal(camo_sample_load(dk, 0, &a, key, img, mask, lab, NULL, NULL), 0);
        for (int p = 0; p < S * S; p++) {
            float green = (img[3 * p + 1] * 0.224f + 0.456f) * 255;
            if (lab[p] == 255) continue; /* outside the image (padding, rotated corners) */
            counted++;
            agree += fabsf(green - 100.0f * lab[p]) < 50;
        }
    }
    assert_true(fg > 0);
    assert_true(agree > counted * 9 / 10);
    static float img0[S * S * 3];
    camo_augment a0 = a;
    a0.rotate = 0; /* the rotation is real: the same key without it differs */
    assert_int_equal(camo_sample_load(ds, 0, &a0, 5, img0, mask, NULL, NULL, NULL), 0);
    assert_int_equal(camo_sample_load(ds, 0, &a, 5, img, mask, NULL, NULL, NULL), 0);
    assert_memory_not_equal(img0, img, sizeof img);
    camo_dataset_free(ds);
    camo_dataset_free(dk);
}

/* ---------------------------------------------------------------- loader */

enum { LN = 6, LS = 20 };

static size_t allocs, frees;
static void *count_alloc(size_t n, void *ctx) { allocs++; (*(size_t *)ctx) += n; return malloc(n); }
static void count_free(void *p, void *ctx) { (void)ctx; frees++; free(p); }

/* Two epochs with and without data.cache (and 0..2 workers, a host allocator): identical
 * batches; the cached epochs decode nothing (the files are gone by then). */
static void test_cache_identical(void **state) {
    (void)state;
    for (int i = 0; i < LN; i++) {
        write_pair(P("cache/Train/Image/s%d.jpg", i), P("cache/Train/GT_Object/s%d.png", i),
                   30 + 7 * i, 26 + 3 * i, i);
        write_pair(P("cache2/Train/Image/s%d.jpg", i), P("cache2/Train/GT_Object/s%d.png", i),
                   30 + 7 * i, 26 + 3 * i, i);
    }
    camo_augment a = {.size = LS, .train = 1, .hflip = 1, .scale_min = 0.8f, .scale_max = 1.25f,
                      .jitter = 0.3f, .rotate = 15};
    size_t per = (size_t)LS * LS, bytes = 0;
    size_t all = 2 * LN * per * 4 * sizeof(float); /* 2 epochs of image + mask */
    float *want = malloc(all), *got = malloc(all);
    int order[LN];
    for (int pass = 0; pass < 4; pass++) { /* 0: uncached; 1-3: cached, 0..2 workers */
        camo_dataset *ds = camo_dataset_open(P(pass ? "cache2" : "cache"), "cod10k", "Train", 1, 0);
        assert_non_null(ds);
        if (pass) assert_int_equal(camo_dataset_enable_cache(ds, &a), 0);
        camo_loader_opts o = {.alloc = count_alloc, .free = count_free, .ctx = &bytes};
        camo_loader *L = camo_loader_create_ex(ds, &a, pass ? pass - 1 : 2, 4, 2, &o);
        float *out = pass ? got : want;
        for (int epoch = 0; epoch < 2; epoch++) {
            if (pass >= 2 && epoch == 1) /* everything is cached: the files are not needed */
                for (int i = 0; i < LN; i++) unlink(P("cache2/Train/Image/s%d.jpg", i));
            camo_epoch_permutation(order, LN, 3, epoch);
            camo_loader_start(L, order, LN, 4, 3, epoch);
            camo_batch *b;
            int pos = 0;
            while ((b = camo_loader_next(L)) != NULL) {
                for (int i = 0; i < b->n; i++, pos++) {
                    float *dst = out + ((size_t)epoch * LN + pos) * per * 4;
                    memcpy(dst, b->image + i * per * 3, per * 3 * sizeof(float));
                    memcpy(dst + per * 3, b->mask + i * per, per * sizeof(float));
                }
                camo_loader_release(L, b);
            }
            if (camo_loader_failed(L)) fprintf(stderr, "  %s\n", camo_last_error());
            assert_int_equal(camo_loader_failed(L), 0);
            assert_int_equal(pos, LN);
        }
        camo_loader_free(L);
        if (pass) assert_memory_equal(got, want, all);
        camo_dataset_free(ds);
        if (pass >= 2) /* the next pass fills its cache afresh: restore the files */
            for (int i = 0; i < LN; i++)
                write_pair(P("cache2/Train/Image/s%d.jpg", i),
                           P("cache2/Train/GT_Object/s%d.png", i), 30 + 7 * i, 26 + 3 * i, i);
    }
    assert_true(allocs > 0 && allocs == frees); /* every batch buffer came from the allocator */
    assert_true(bytes >= (size_t)4 * 4 * per * 4 * 2); /* 4 loaders x 2 slots x (image + mask) */
    free(want);
    free(got);
}

static void test_cache_too_big(void **state) {
    (void)state;
    write_pair(P("big/Train/images/a.png"), P("big/Train/masks/a.png"), 8, 8, 1);
    camo_dataset *ds = camo_dataset_open(P("big"), "folders", "Train", 1, 0);
    assert_non_null(ds);
    camo_augment a = {.size = 8000000, .train = 0}; /* 2.5e14 bytes: more than any machine */
    camo_clear_error();
    assert_int_not_equal(camo_dataset_enable_cache(ds, &a), 0);
    assert_error_names("data.cache");
    assert_error_names("GiB");
    camo_dataset_free(ds);
}

/* keep_gt: each batch carries the raw masks at their original sizes, in batch order. */
static void test_keep_gt(void **state) {
    (void)state;
    for (int i = 0; i < 3; i++)
        write_pair(P("gt/Train/images/g%d.png", i), P("gt/Train/masks/g%d.png", i), 9 + 4 * i,
                   7 + i, i);
    camo_dataset *ds = camo_dataset_open(P("gt"), "folders", "Train", 1, 0);
    assert_non_null(ds);
    camo_augment a = {.size = 8};
    int order[3] = {2, 0, 1};
    for (int workers = 0; workers <= 2; workers += 2) {
        camo_loader *L = camo_loader_create_ex(ds, &a, workers, 2, 2,
                                               &(camo_loader_opts){.keep_gt = 1});
        camo_loader_start(L, order, 3, 2, 0, 0);
        camo_batch *b;
        int pos = 0;
        while ((b = camo_loader_next(L)) != NULL) {
            for (int i = 0; i < b->n; i++, pos++) {
                int k = order[pos], w = 9 + 4 * k, h = 7 + k;
                assert_int_equal(b->orig_w[i], w);
                assert_int_equal(b->orig_h[i], h);
                assert_non_null(b->gt[i]);
                for (int p = 0; p < w * h; p++)
                    assert_int_equal(b->gt[i][p], p % w < w / 3 ? 255 : 0);
            }
            camo_loader_release(L, b);
        }
        assert_int_equal(pos, 3);
        assert_true(camo_loader_wait_seconds(L) >= 0);
        camo_loader_free(L);
    }
    camo_dataset_free(ds);
}

/* A worker's scratch: after the first load of the largest image, loads (JPEG image, PNG
 * mask, both through stb_image) take no memory from the heap. */
static void test_no_heap_in_steady_state(void **state) {
    (void)state;
    write_pair(P("heap/Train/Image/a.jpg"), P("heap/Train/GT_Object/a.png"), 90, 70, 1);
    write_pair(P("heap/Train/Image/b.jpg"), P("heap/Train/GT_Object/b.png"), 60, 50, 2);
    camo_dataset *ds = camo_dataset_open(P("heap"), "cod10k", "Train", 1, 0);
    assert_non_null(ds);
    camo_sample_scratch *sc = camo_sample_scratch_create();
    camo_augment a = {.size = 16, .train = 1, .scale_min = 0.9f, .scale_max = 1.1f, .rotate = 5};
    float img[16 * 16 * 3], mask[16 * 16];
    assert_int_equal(camo_sample_load_ex(ds, 0, &a, 1, sc, img, mask, NULL, NULL, NULL), 0);
    assert_true(camo_sample_scratch_heap_allocs(sc) > 0); /* the first load fills the arena */
    for (int k = 0; k < 4; k++) {
        assert_int_equal(
            camo_sample_load_ex(ds, k % 2, &a, (uint64_t)k, sc, img, mask, NULL, NULL, NULL), 0);
        assert_int_equal(camo_sample_scratch_heap_allocs(sc), 0);
    }
    camo_sample_scratch_free(sc);
    camo_dataset_free(ds);
}

/* ---- windows: a process of a multi-process run loads its part of each batch ---- */

enum { WN = 11, WB = 4, WS = 12, WPARTS = 5 }; /* batches of 4, 4, 3 in 5 parts */

typedef struct wpart { int part, parts; } wpart;

/* part `part` of `parts` of a batch of n, as the replicas' slices are cut */
static void part_window(int n, void *ctx, int *lo, int *count) {
    const wpart *w = ctx;
    int base = n / w->parts, extra = n % w->parts;
    *count = base + (w->part < extra);
    *lo = w->part * base + (w->part < extra ? w->part : extra);
}

static void write_win_pair(int i) {
    write_pair(P("win/Train/Image/w%02d.jpg", i), P("win/Train/GT_Object/w%02d.png", i),
               20 + 3 * i, 18 + i, i);
}

/* One part's loader (0 or 2 workers) while every image outside its windows is garbage:
 * its batches are its slice of the whole batches (total, first, pixels, data-set indices);
 * an empty window holds one sample (the next part's first) and says n = 0. */
static void check_part(int part, int workers, const int *order, const float *want,
                       const int *want_idx) {
    size_t per = (size_t)WS * WS * 3;
    wpart w = {part, WPARTS};
    int needed[WN] = {0};
    for (int bt = 0; bt * WB < WN; bt++) {
        int total = CAMO_MIN(WB, WN - bt * WB), lo, cnt;
        part_window(total, &w, &lo, &cnt);
        for (int k = 0; k < CAMO_MAX(cnt, 1); k++)
            needed[order[bt * WB + (cnt ? lo + k : CAMO_MIN(lo, total - 1))]] = 1;
    }
    for (int i = 0; i < WN; i++)
        if (!needed[i]) write_bytes(P("win/Train/Image/w%02d.jpg", i), "garbage", 7);
    camo_dataset *ds = camo_dataset_open(P("win"), "cod10k", "Train", 1, 0);
    assert_non_null(ds);
    camo_augment a = {.size = WS, .train = 1, .hflip = 1, .jitter = 0.2f};
    camo_loader_opts o = {.window = part_window, .window_ctx = &w};
    camo_loader *L = camo_loader_create_ex(ds, &a, workers, WB, 2, &o);
    camo_loader_start(L, order, WN, WB, 5, 1);
    camo_batch *b;
    int bt = 0;
    while ((b = camo_loader_next(L)) != NULL) {
        int total = CAMO_MIN(WB, WN - bt * WB), lo, cnt;
        part_window(total, &w, &lo, &cnt);
        int first = cnt ? lo : CAMO_MIN(lo, total - 1), at = bt * WB + first;
        assert_int_equal(b->total, total);
        assert_int_equal(b->n, cnt);
        assert_int_equal(b->first, first);
        for (int k = 0; k < CAMO_MAX(cnt, 1); k++) assert_int_equal(b->index[k], want_idx[at + k]);
        assert_memory_equal(b->image, want + (size_t)at * per,
                            (size_t)CAMO_MAX(cnt, 1) * per * sizeof(float));
        camo_loader_release(L, b);
        bt++;
    }
    if (camo_loader_failed(L)) fprintf(stderr, "  part %d: %s\n", part, camo_last_error());
    assert_int_equal(camo_loader_failed(L), 0);
    assert_int_equal(bt, (WN + WB - 1) / WB);
    camo_loader_free(L);
    camo_dataset_free(ds);
    for (int i = 0; i < WN; i++)
        if (!needed[i]) write_win_pair(i);
}

static void test_window(void **state) {
    (void)state;
    for (int i = 0; i < WN; i++) write_win_pair(i);
    size_t per = (size_t)WS * WS * 3;
    float *want = malloc(WN * per * sizeof(float));
    int order[WN], want_idx[WN], pos = 0;
    camo_epoch_permutation(order, WN, 5, 1);
    camo_dataset *ds = camo_dataset_open(P("win"), "cod10k", "Train", 1, 0);
    assert_non_null(ds);
    camo_augment a = {.size = WS, .train = 1, .hflip = 1, .jitter = 0.2f};
    camo_loader *L = camo_loader_create(ds, &a, 1, WB, 2);
    camo_loader_start(L, order, WN, WB, 5, 1);
    camo_batch *b;
    while ((b = camo_loader_next(L)) != NULL) { /* whole batches: total = n, first = 0 */
        assert_int_equal(b->total, b->n);
        assert_int_equal(b->first, 0);
        memcpy(want + (size_t)pos * per, b->image, (size_t)b->n * per * sizeof(float));
        memcpy(want_idx + pos, b->index, (size_t)b->n * sizeof(int));
        pos += b->n;
        camo_loader_release(L, b);
    }
    assert_int_equal(pos, WN);
    camo_loader_free(L);
    camo_dataset_free(ds);
    for (int part = 0; part < WPARTS; part++)
        for (int workers = 0; workers <= 2; workers += 2)
            check_part(part, workers, order, want, want_idx);
    free(want);
}

int main(void) {
    du_root_create("loader");
    camo_log_set_quiet(1);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_carla_and_split_aliases),
        cmocka_unit_test(test_cod10k_noncam),
        cmocka_unit_test(test_ade20k_labels),
        cmocka_unit_test(test_class_values),
        cmocka_unit_test(test_image_kinds),
        cmocka_unit_test(test_rotation_same_transform),
        cmocka_unit_test(test_cache_identical),
        cmocka_unit_test(test_cache_too_big),
        cmocka_unit_test(test_keep_gt),
        cmocka_unit_test(test_no_heap_in_steady_state),
        cmocka_unit_test(test_window),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    du_root_remove();
    return rc;
}
