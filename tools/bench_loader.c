/* bench_loader.c: how fast the data loader feeds training at 320x320 (make bench).
 *
 * Writes a small COD10K-like set (JPEG images of COD10K's typical size, PNG masks) to a
 * temporary folder, then measures, in this run:
 *   ref      stbi JPEG decode alone, one thread: the reference every ratio is against
 *   jpeg     the loader with 1 worker, training augmentation, from the JPEG files
 *   cache    the same from data.cache = decoded (second epoch; the first fills it), also
 *            with rotation
 *   jpeg x2  2 workers (the machine's cores permitting)
 *   wait     a consumer that "steps" for a fixed time per batch (sleeping, as a GPU step's
 *            host thread mostly does): the fraction of its time spent waiting for data
 * and prints img/s per worker and the ratios. Sizes: BENCH_LOADER_N images (default 64). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <stb_image.h>
#include <stb_image_write.h>

#include "core/common.h"
#include "data/data.h"

enum { IMG_W = 800, IMG_H = 600, SIDE = 320, BATCH = 16 };

static char dir[512];

/* Smooth texture plus noise: compresses like a photo (about 100 kB at quality 90). */
static void make_image(uint8_t *px, uint8_t *m, int k) {
    for (int y = 0; y < IMG_H; y++)
        for (int x = 0; x < IMG_W; x++) {
            size_t i = (size_t)y * IMG_W + x;
            float n = camo_rand_uniform((uint64_t)k, i) * 40;
            px[3 * i] = (uint8_t)(100 + 60 * ((x / 37 + y / 23 + k) % 3) / 2 + n);
            px[3 * i + 1] = (uint8_t)(80 + (x * y / 97 + k * 11) % 90 + n / 2);
            px[3 * i + 2] = (uint8_t)(60 + (x + 2 * y) % 120 + n / 3);
            int dx = x - IMG_W / 2 - k * 5, dy = y - IMG_H / 2;
            m[i] = dx * dx + dy * dy < 150 * 150 ? 255 : 0;
        }
}

static int write_set(int n) {
    char path[700];
    snprintf(path, sizeof path, "%s/Train", dir);
    mkdir(path, 0755);
    snprintf(path, sizeof path, "%s/Train/Image", dir);
    mkdir(path, 0755);
    snprintf(path, sizeof path, "%s/Train/GT_Object", dir);
    mkdir(path, 0755);
    uint8_t *px = camo_malloc((size_t)IMG_W * IMG_H * 3), *m = camo_malloc((size_t)IMG_W * IMG_H);
    int rc = 0;
    for (int k = 0; k < n && !rc; k++) {
        make_image(px, m, k);
        snprintf(path, sizeof path, "%s/Train/Image/b%04d.jpg", dir, k);
        rc |= !stbi_write_jpg(path, IMG_W, IMG_H, 3, px, 90);
        snprintf(path, sizeof path, "%s/Train/GT_Object/b%04d.png", dir, k);
        rc |= camo_png_write_gray(path, m, IMG_W, IMG_H);
    }
    free(px);
    free(m);
    return rc;
}

/* Process CPU seconds (all threads) and wall seconds. */
static double cpu_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static double decode_reference(const camo_dataset *ds, double *cpu) {
    int n = camo_dataset_size(ds);
    double t0 = camo_now(), c0 = cpu_now();
    for (int i = 0; i < n; i++) {
        int w, h, c;
        uint8_t *p = stbi_load(camo_dataset_image_path(ds, i), &w, &h, &c, 3);
        if (!p) CAMO_DIE("decode failed: %s", camo_dataset_image_path(ds, i));
        stbi_image_free(p);
    }
    *cpu = n / (cpu_now() - c0);
    return n / (camo_now() - t0);
}

/* One epoch through the loader; step_s > 0: the consumer sleeps that long per batch.
 * Returns img/s (wall); *wait_frac: the consumer's time waiting for batches / its total. */
static double run_epoch(camo_loader *L, int n, int epoch, double step_s, double *wait_frac,
                        double *cpu_ips) {
    int *order = camo_malloc((size_t)n * sizeof(int));
    camo_epoch_permutation(order, n, 1, epoch);
    double t0 = camo_now(), c0 = cpu_now(), w1 = 0, t1 = 0;
    camo_loader_start(L, order, n, BATCH, 1, epoch);
    camo_batch *b;
    int got = 0;
    while ((b = camo_loader_next(L)) != NULL) {
        if (!got) { /* the steady state starts after the first batch (pipeline fill) */
            w1 = camo_loader_wait_seconds(L);
            t1 = camo_now();
        }
        got += b->n;
        if (step_s > 0)
            nanosleep(&(struct timespec){(time_t)step_s, (long)(fmod(step_s, 1) * 1e9)}, NULL);
        camo_loader_release(L, b);
    }
    double t = camo_now() - t0;
    if (camo_loader_failed(L) || got != n) CAMO_DIE("loader failed: %s", camo_last_error());
    if (wait_frac) *wait_frac = (camo_loader_wait_seconds(L) - w1) / (camo_now() - t1);
    if (cpu_ips) *cpu_ips = n / (cpu_now() - c0);
    free(order);
    return n / t;
}

static camo_augment train_aug(void) {
    return (camo_augment){.size = SIDE, .train = 1, .hflip = 1, .scale_min = 0.75f,
                          .scale_max = 1.25f, .jitter = 0.2f}; /* the config's defaults */
}

int main(void) {
    const char *env = getenv("BENCH_LOADER_N");
    int n = env ? atoi(env) : 64;
    if (n < BATCH) n = BATCH;
    snprintf(dir, sizeof dir, "/tmp/camo_bench_loader_%ld", (long)getpid());
    mkdir(dir, 0755);
    camo_log_set_quiet(1);
    if (write_set(n)) CAMO_DIE("cannot write the benchmark set in %s", dir);
    camo_dataset *ds = camo_dataset_open(dir, "cod10k", "Train", 1, 0);
    if (!ds) CAMO_DIE("%s", camo_last_error());
    camo_augment aug = train_aug();
    double ref_cpu, ref = decode_reference(ds, &ref_cpu);

    camo_loader *L = camo_loader_create(ds, &aug, 1, BATCH, 4);
    run_epoch(L, n, 0, 0, NULL, NULL); /* warm: page cache, scratch buffers */
    double jpeg_cpu, jpeg = run_epoch(L, n, 1, 0, NULL, &jpeg_cpu);
    camo_loader_free(L);

    L = camo_loader_create(ds, &aug, 2, BATCH, 4);
    double jpeg2 = run_epoch(L, n, 1, 0, NULL, NULL);
    camo_loader_free(L);

    /* a consumer stepping at 90% of the 1-worker JPEG rate: should hardly wait */
    double step = BATCH / (0.9 * jpeg), wait_jpeg;
    L = camo_loader_create(ds, &aug, 1, BATCH, 4);
    run_epoch(L, n, 1, step, &wait_jpeg, NULL);
    camo_loader_free(L);

    if (camo_dataset_enable_cache(ds, &aug)) CAMO_DIE("%s", camo_last_error());
    L = camo_loader_create(ds, &aug, 1, BATCH, 4);
    run_epoch(L, n, 0, 0, NULL, NULL); /* fills the cache */
    double cache_cpu, cache = run_epoch(L, n, 1, 0, NULL, &cache_cpu);
    /* a consumer stepping at the 1-worker JPEG rate, now fed from the cache */
    double wait_cache;
    run_epoch(L, n, 2, BATCH / jpeg, &wait_cache, NULL);
    camo_loader_free(L);
    camo_augment rot = aug; /* rotation: a per-pixel affine lookup instead of per-axis taps */
    rot.rotate = 10;
    L = camo_loader_create(ds, &rot, 1, BATCH, 4);
    double rot_cpu, rot_ips = run_epoch(L, n, 1, 0, NULL, &rot_cpu);
    camo_loader_free(L);

    printf("bench_loader: %d JPEGs of %dx%d -> %dx%d training samples (scale-crop, flip, "
           "jitter), batch %d\n", n, IMG_W, IMG_H, SIDE, SIDE, BATCH);
    printf("  reference: stbi JPEG decode alone, 1 thread     %7.1f img/s (%.1f per CPU-s)\n",
           ref, ref_cpu);
    const char *row = "  %-44s %7.1f img/s  %.2fx ref (%.1f per CPU-s)\n";
    printf(row, "loader 1 worker, from JPEG", jpeg, jpeg / ref, jpeg_cpu);
    printf("  %-44s %7.1f img/s  %.2fx ref (%.2fx 1 worker)\n", "loader 2 workers, from JPEG",
           jpeg2, jpeg2 / ref, jpeg2 / jpeg);
    printf(row, "loader 1 worker, data.cache = decoded", cache, cache / ref, cache_cpu);
    printf(row, "the same with rotate = 10 degrees", rot_ips, rot_ips / ref, rot_cpu);
    printf("  steady-state share of a step's time spent waiting for data: %.1f%% (JPEG, steps "
           "at 0.9x its rate), %.1f%% (cache, steps at the JPEG rate)\n", 100 * wait_jpeg,
           100 * wait_cache);
    const double h100 = 3000; /* assumed unet_s 320x320 training img/s of one H100 (bf16) */
    printf("  one H100 at an assumed %.0f img/s (unet_s, 320x320) needs %.1f loader cores from "
           "JPEG, %.1f from the cache\n", h100, h100 / jpeg_cpu, h100 / cache_cpu);
    camo_dataset_free(ds);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "bench_loader: could not remove %s\n", dir);
    return 0;
}
