/* fs.c: file-system helpers (fs.h): paths, file names, image listings, whole-file reads,
 * making folders. */
#include "core/fs.h"

#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "core/common.h"

char *camo_path_join(const char *dir, const char *name) {
    if (!dir || !*dir) return camo_strdup(name ? name : "");
    if (!name || !*name) return camo_strdup(dir);
    size_t ld = strlen(dir), ln = strlen(name);
    int slash = dir[ld - 1] != '/';
    char *p = camo_malloc(ld + ln + 2);
    memcpy(p, dir, ld);
    if (slash) p[ld] = '/';
    memcpy(p + ld + slash, name, ln + 1);
    return p;
}

const char *camo_path_name(const char *path) {
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

size_t camo_stem_len(const char *name) {
    const char *dot = strrchr(name, '.');
    return dot && dot != name ? (size_t)(dot - name) : strlen(name);
}

char *camo_stem(const char *name) {
    size_t n = camo_stem_len(name);
    char *s = camo_malloc(n + 1);
    memcpy(s, name, n);
    s[n] = 0;
    return s;
}

int camo_is_image_name(const char *name) {
    static const char *const exts[] = {".jpg", ".jpeg", ".png", ".bmp"};
    const char *dot = strrchr(name, '.');
    if (!dot || dot == name) return 0;
    for (size_t i = 0; i < sizeof exts / sizeof *exts; i++)
        if (!strcasecmp(dot, exts[i])) return 1;
    return 0;
}

int camo_is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

int camo_is_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static int cmp_name(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Whether listing entry `name` of dir is kept under `flags`. */
static int keep_entry(const char *dir, const char *name, int flags) {
    if ((name[0] == '.' && !(flags & CAMO_LIST_HIDDEN)) || !camo_is_image_name(name)) return 0;
    if (!(flags & CAMO_LIST_FILES)) return 1;
    char *path = camo_path_join(dir, name);
    int regular = camo_is_file(path);
    free(path);
    return regular;
}

char **camo_list_images(const char *dir, const char *what, int flags, int *n) {
    *n = 0;
    DIR *d = opendir(dir);
    if (!d) {
        CAMO_ERR("cannot open %s%sfolder '%s': %s", what ? what : "", what ? " " : "", dir,
                 strerror(errno));
        return NULL;
    }
    char **names = camo_malloc(sizeof *names);
    int cap = 1;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!keep_entry(dir, e->d_name, flags)) continue;
        if (*n == cap) names = camo_realloc(names, (size_t)(cap *= 2) * sizeof *names);
        names[(*n)++] = camo_strdup(e->d_name);
    }
    closedir(d);
    qsort(names, (size_t)*n, sizeof *names, cmp_name);
    return names;
}

void camo_free_names(char **names, int n) {
    for (int i = 0; names && i < n; i++) free(names[i]);
    free(names);
}

int camo_read_file(const char *path, size_t max, void **buf, size_t *cap, size_t *len) {
    FILE *f = fopen(path, "rb");
    struct stat st;
    if (!f || fstat(fileno(f), &st) != 0) {
        CAMO_ERR("cannot read '%s': %s", path, strerror(errno));
        if (f) fclose(f);
        return -1;
    }
    size_t n = (size_t)st.st_size;
    if (max && n > max) {
        fclose(f);
        CAMO_ERR("'%s' is too large (%zu bytes)", path, n);
        return -1;
    }
    if (n + 1 > *cap) { /* nothing to keep: a fresh block, no copy */
        free(*buf);
        *cap = n + 1 + (n + 1) / 8;
        *buf = camo_malloc(*cap);
    }
    uint8_t *p = *buf;
    size_t got = n ? fread(p, 1, n, f) : 0;
    int err = ferror(f);
    fclose(f);
    if (got != n || err) {
        CAMO_ERR("cannot read '%s': short read", path);
        return -1;
    }
    p[n] = 0;
    *len = n;
    return 0;
}

int camo_mkdirs(const char *path) {
    if (!*path) {
        CAMO_ERR("cannot create folder '': %s", strerror(ENOENT));
        return -1;
    }
    char *p = camo_strdup(path);
    int rc = 0;
    for (char *s = p + 1; !rc; s++) { /* each prefix ending at a '/', then the whole path */
        int end = *s == 0;
        if (*s != '/' && !end) continue;
        *s = 0;
        if (mkdir(p, 0777) != 0 && errno != EEXIST) rc = -1;
        if (end) break;
        *s = '/';
    }
    if (rc) CAMO_ERR("cannot create folder '%s': %s", p, strerror(errno));
    free(p);
    return rc;
}
