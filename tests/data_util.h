/* data_util.h: scratch trees of image files for the data tests (test_data.c, test_loader.c).
 * Include after test_util.h. */
#ifndef CAMO_DATA_UTIL_H
#define CAMO_DATA_UTIL_H

#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <stb_image_write.h> /* declarations only: the implementation lives in libcamo */

#include "core/common.h"
#include "test_util.h"

static char root[512]; /* this run's scratch tree */

/* A path under root (rotating buffers). */
static inline const char *P(const char *fmt, ...) {
    static char buf[8][1024];
    static int k;
    char rel[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(rel, sizeof rel, fmt, ap);
    va_end(ap);
    char *out = buf[k++ % 8];
    snprintf(out, 1024, "%s/%s", root, rel);
    return out;
}

static inline void mkdirs(const char *path) {
    char tmp[1024];
    snprintf(tmp, sizeof tmp, "%s", path);
    for (char *s = tmp + 1; *s; s++) {
        if (*s != '/') continue;
        *s = 0;
        mkdir(tmp, 0777);
        *s = '/';
    }
    mkdir(tmp, 0777);
}

static inline void parent_dirs(const char *path) {
    char tmp[1024];
    snprintf(tmp, sizeof tmp, "%s", path);
    char *slash = strrchr(tmp, '/');
    if (slash) { *slash = 0; mkdirs(tmp); }
}

/* Creates root, named tu_tmpdir()/camo_test_NAME_PID; du_root_remove deletes it. */
static inline void du_root_create(const char *name) {
    snprintf(root, sizeof root, "%s/camo_test_%s_%ld", tu_tmpdir(), name, (long)getpid());
    mkdirs(root);
}

static inline void du_root_remove(void) {
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", root);
}

/* px (w x h x ch) as a file whose extension picks the format: .jpg/.jpeg, .bmp, else PNG. */
static inline void write_img(const char *path, const uint8_t *px, int w, int h, int ch) {
    parent_dirs(path);
    const char *ext = strrchr(path, '.');
    int ok;
    if (!strcasecmp(ext, ".jpg") || !strcasecmp(ext, ".jpeg"))
        ok = stbi_write_jpg(path, w, h, ch, px, 95);
    else if (!strcasecmp(ext, ".bmp")) ok = stbi_write_bmp(path, w, h, ch, px);
    else ok = stbi_write_png(path, w, h, ch, px, w * ch);
    assert_true(ok);
}

static inline void write_bytes(const char *path, const void *data, size_t n) {
    parent_dirs(path);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, n, f), n);
    fclose(f);
}

/* The last error names `what` (prints it when not). */
static inline void assert_error_names(const char *what) {
    const char *e = camo_last_error();
    if (!strstr(e, what)) fprintf(stderr, "  error '%s' does not name '%s'\n", e, what);
    assert_non_null(strstr(e, what));
}

static inline int ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcmp(s + a - b, suffix);
}

#endif
