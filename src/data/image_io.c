/* image_io.c: image files: a file read whole into a reusable buffer and decoded with
 * stb_image (implementation and allocation arena in stb_impl.c), camo_image_read, the
 * atomic PNG writers, and the grow-only buffers the sample pipeline reuses. */
#include <errno.h>
#include <limits.h>
#include <string.h>
#include <unistd.h>

#include <stb_image.h>
#include <stb_image_write.h>

#include "core/common.h"
#include "core/fs.h"
#include "data_internal.h"

void *camo_grow(camo_grow_buf *g, size_t n) {
    if (n > g->cap) {
        free(g->buf);
        g->cap = n + n / 8;
        g->buf = camo_malloc(g->cap);
    }
    return g->buf;
}

/* The file is read in one go (no stdio copy per decode) into a buffer reused across
 * samples. A class-index mask is refused unless single-channel 8-bit: stb would turn
 * palette indices into colours and 16-bit values into their high byte, both silently
 * wrong labels. */
uint8_t *data_decode(const char *path, int channels, int index_mask, camo_grow_buf *file,
                     int *w, int *h) {
    size_t len;
    if (camo_read_file(path, INT_MAX, &file->buf, &file->cap, &len)) return NULL;
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

uint8_t *camo_image_read(const char *path, int channels, int *w, int *h) {
    CAMO_ASSERT(channels >= 1 && channels <= 4);
    camo_grow_buf file = {0};
    uint8_t *p = data_decode(path, channels, 0, &file, w, h);
    free(file.buf);
    return p;
}

/* PNG written to a temporary name, then renamed: a reader never sees half a file. */
static int png_write(const char *path, const uint8_t *pixels, int w, int h, int ch) {
    size_t n = strlen(path) + 32;
    char *tmp = camo_malloc(n);
    snprintf(tmp, n, "%s.tmp%ld", path, (long)getpid());
    int rc = 0;
    errno = 0;
    if (!stbi_write_png(tmp, w, h, ch, pixels, w * ch)) {
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

int camo_png_write_gray(const char *path, const uint8_t *pixels, int w, int h) {
    return png_write(path, pixels, w, h, 1);
}

int camo_png_write_rgb(const char *path, const uint8_t *pixels, int w, int h) {
    return png_write(path, pixels, w, h, 3);
}
