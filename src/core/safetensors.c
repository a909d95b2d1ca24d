/* safetensors.c: safetensors writer (atomic replace of the target file) and a reader that
 * validates header and layout before handing out any tensor. Little-endian host assumed. */
#include "core/safetensors.h"
#include "core/common.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define ST_MAX_HEADER ((uint64_t)100 * 1024 * 1024) /* larger header lengths are absurd */
#define ST_MAX_JSON_INT 9007199254740992.0           /* 2^53: exact in a double */

static const char *const dtype_names[CAMO_ST_NDTYPE] = {"F32", "F16", "BF16", "I64", "I32",
                                                         "U8"};
static const size_t dtype_sizes[CAMO_ST_NDTYPE] = {4, 2, 2, 8, 4, 1};

const char *camo_st_dtype_name(camo_st_dtype dtype) {
    return (unsigned)dtype < CAMO_ST_NDTYPE ? dtype_names[dtype] : "?";
}

static int dtype_from_name(const char *s) {
    for (int i = 0; i < CAMO_ST_NDTYPE; i++)
        if (strcmp(s, dtype_names[i]) == 0) return i;
    return -1;
}

/* numel and byte size of shape[0..ndim); non-zero if a dimension is negative or the
 * product overflows int64. */
static int shape_size(int ndim, const int64_t *shape, size_t itemsize, int64_t *numel,
                      size_t *nbytes) {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) return 1;
        if (shape[i] != 0 && n > INT64_MAX / shape[i]) return 1;
        n *= shape[i];
    }
    if (n > INT64_MAX / (int64_t)itemsize) return 1;
    *numel = n;
    *nbytes = (size_t)n * itemsize;
    return 0;
}

/* Frees n metadata pairs and their two arrays (writer and reader keep them alike). */
static void free_meta(char **keys, char **vals, int n) {
    for (int i = 0; i < n; i++) {
        free(keys[i]);
        free(vals[i]);
    }
    free(keys);
    free(vals);
}

/* ------------------------------------------------------------------------------------ */
/* writer                                                                               */

typedef struct {
    char *name;
    camo_st_dtype dtype;
    int ndim;
    int64_t shape[CAMO_ST_MAX_DIM];
    size_t nbytes;
    void *data; /* owned copy */
} st_entry;

struct camo_st_writer {
    st_entry *t;
    int nt, cap_t;
    char **keys, **vals;
    int nmeta, cap_meta;
};

camo_st_writer *camo_st_writer_new(void) {
    return camo_calloc(1, sizeof(camo_st_writer));
}

void camo_st_writer_free(camo_st_writer *w) {
    if (!w) return;
    for (int i = 0; i < w->nt; i++) {
        free(w->t[i].name);
        free(w->t[i].data);
    }
    free_meta(w->keys, w->vals, w->nmeta);
    free(w->t);
    free(w);
}

static int check_add_args(const camo_st_writer *w, const char *name, camo_st_dtype dtype,
                          int ndim, const int64_t *shape) {
    if (!w || !name) { CAMO_ERR("camo_st_add: NULL writer or name"); return 1; }
    if (!name[0] || strcmp(name, "__metadata__") == 0) {
        CAMO_ERR("safetensors: invalid tensor name '%s'", name);
        return 1;
    }
    if ((unsigned)dtype >= CAMO_ST_NDTYPE) {
        CAMO_ERR("safetensors: tensor '%s': unsupported dtype %d", name, (int)dtype);
        return 1;
    }
    if (ndim < 0 || ndim > CAMO_ST_MAX_DIM || (ndim > 0 && !shape)) {
        CAMO_ERR("safetensors: tensor '%s': ndim %d not in 0..%d (or shape NULL)", name, ndim,
                 CAMO_ST_MAX_DIM);
        return 1;
    }
    for (int i = 0; i < w->nt; i++)
        if (strcmp(w->t[i].name, name) == 0) {
            CAMO_ERR("safetensors: tensor '%s' added twice", name);
            return 1;
        }
    return 0;
}

int camo_st_add(camo_st_writer *w, const char *name, camo_st_dtype dtype, int ndim,
                const int64_t *shape, const void *data) {
    if (check_add_args(w, name, dtype, ndim, shape)) return 1;
    int64_t numel;
    size_t nbytes;
    if (shape_size(ndim, shape, dtype_sizes[dtype], &numel, &nbytes)) {
        CAMO_ERR("safetensors: tensor '%s': negative or overflowing shape", name);
        return 1;
    }
    if (nbytes > 0 && !data) {
        CAMO_ERR("safetensors: tensor '%s': NULL data for %zu bytes", name, nbytes);
        return 1;
    }
    if (w->nt == w->cap_t) {
        w->cap_t = w->cap_t ? 2 * w->cap_t : 16;
        w->t = camo_realloc(w->t, (size_t)w->cap_t * sizeof(st_entry));
    }
    st_entry *e = &w->t[w->nt++];
    memset(e, 0, sizeof *e);
    e->name = camo_strdup(name);
    e->dtype = dtype;
    e->ndim = ndim;
    for (int i = 0; i < ndim; i++) e->shape[i] = shape[i];
    e->nbytes = nbytes;
    e->data = camo_malloc(nbytes);
    if (nbytes) memcpy(e->data, data, nbytes);
    return 0;
}

int camo_st_add_meta(camo_st_writer *w, const char *key, const char *value) {
    if (!w || !key || !value) { CAMO_ERR("camo_st_add_meta: NULL argument"); return 1; }
    for (int i = 0; i < w->nmeta; i++)
        if (strcmp(w->keys[i], key) == 0) {
            CAMO_ERR("safetensors: metadata key '%s' added twice", key);
            return 1;
        }
    if (w->nmeta == w->cap_meta) {
        w->cap_meta = w->cap_meta ? 2 * w->cap_meta : 16;
        w->keys = camo_realloc(w->keys, (size_t)w->cap_meta * sizeof(char *));
        w->vals = camo_realloc(w->vals, (size_t)w->cap_meta * sizeof(char *));
    }
    w->keys[w->nmeta] = camo_strdup(key);
    w->vals[w->nmeta] = camo_strdup(value);
    w->nmeta++;
    return 0;
}

/* An exact integer for the header (cJSON numbers are doubles; raw text keeps all digits). */
static cJSON *json_int(int64_t v) {
    char buf[32];
    snprintf(buf, sizeof buf, "%" PRId64, v);
    return cJSON_CreateRaw(buf);
}

/* Adds {"dtype", "shape", "data_offsets"} for e; 0 on allocation failure (cJSON's). */
static int json_add_tensor(cJSON *root, const st_entry *e, size_t begin) {
    cJSON *o = cJSON_AddObjectToObject(root, e->name);
    if (!o || !cJSON_AddStringToObject(o, "dtype", dtype_names[e->dtype])) return 0;
    cJSON *shape = cJSON_AddArrayToObject(o, "shape");
    cJSON *offs = cJSON_AddArrayToObject(o, "data_offsets");
    if (!shape || !offs) return 0;
    for (int i = 0; i < e->ndim; i++)
        if (!cJSON_AddItemToArray(shape, json_int(e->shape[i]))) return 0;
    return cJSON_AddItemToArray(offs, json_int((int64_t)begin)) &&
           cJSON_AddItemToArray(offs, json_int((int64_t)(begin + e->nbytes)));
}

/* Header JSON padded with spaces to a multiple of 8 bytes; NULL with an error. */
static char *build_header(const camo_st_writer *w, const char *path, size_t *len) {
    cJSON *root = cJSON_CreateObject();
    int ok = root != NULL;
    if (ok && w->nmeta > 0) {
        cJSON *meta = cJSON_AddObjectToObject(root, "__metadata__");
        ok = meta != NULL;
        for (int i = 0; ok && i < w->nmeta; i++)
            ok = cJSON_AddStringToObject(meta, w->keys[i], w->vals[i]) != NULL;
    }
    size_t off = 0;
    for (int i = 0; ok && i < w->nt; i++) {
        ok = json_add_tensor(root, &w->t[i], off);
        off += w->t[i].nbytes;
    }
    char *js = ok ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    if (!js) { CAMO_ERR("cannot write '%s': out of memory building header", path); return NULL; }
    size_t n = strlen(js), padded = (n + 7) / 8 * 8;
    if (padded > ST_MAX_HEADER) {
        CAMO_ERR("cannot write '%s': header of %zu bytes exceeds 100 MB", path, padded);
        cJSON_free(js);
        return NULL;
    }
    char *h = camo_malloc(padded);
    memcpy(h, js, n);
    memset(h + n, ' ', padded - n);
    cJSON_free(js);
    *len = padded;
    return h;
}

/* Writes length, header and data to tmp and syncs it to disk. */
static int write_tmp(const camo_st_writer *w, const char *tmp, const char *path,
                     const char *header, size_t hlen) {
    FILE *fp = fopen(tmp, "wb");
    if (!fp) {
        CAMO_ERR("cannot write '%s': cannot create '%s': %s", path, tmp, strerror(errno));
        return 1;
    }
    uint8_t len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (uint8_t)((uint64_t)hlen >> (8 * i));
    errno = 0;
    int ok = fwrite(len8, 1, 8, fp) == 8 && fwrite(header, 1, hlen, fp) == hlen;
    for (int i = 0; ok && i < w->nt; i++)
        ok = fwrite(w->t[i].data, 1, w->t[i].nbytes, fp) == w->t[i].nbytes;
    ok = ok && fflush(fp) == 0 && fsync(fileno(fp)) == 0;
    int err = errno;
    if (fclose(fp) != 0 && ok) { ok = 0; err = errno; }
    if (!ok) {
        CAMO_ERR("cannot write '%s': %s", path, err ? strerror(err) : "write failed");
        return 1;
    }
    return 0;
}

/* fsync the directory holding path so the rename itself is durable. */
static int fsync_dir(const char *path) {
    char *dir = camo_strdup(path);
    char *slash = strrchr(dir, '/');
    if (!slash) strcpy(dir, ".");
    else if (slash == dir) dir[1] = 0;
    else *slash = 0;
    int rc = 0, fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0 || (fsync(fd) != 0 && errno != EINVAL)) {
        CAMO_ERR("cannot write '%s': sync of directory '%s': %s", path, dir, strerror(errno));
        rc = 1;
    }
    if (fd >= 0) close(fd);
    free(dir);
    return rc;
}

int camo_st_write_file(camo_st_writer *w, const char *path) {
    if (!w || !path || !path[0]) {
        CAMO_ERR("camo_st_write_file: NULL writer or empty path");
        return 1;
    }
    size_t hlen;
    char *header = build_header(w, path, &hlen);
    if (!header) return 1;
    size_t tn = strlen(path) + 32;
    char *tmp = camo_malloc(tn);
    snprintf(tmp, tn, "%s.tmp.%ld", path, (long)getpid());
    int rc = write_tmp(w, tmp, path, header, hlen);
    if (rc == 0 && rename(tmp, path) != 0) {
        CAMO_ERR("cannot write '%s': rename from '%s': %s", path, tmp, strerror(errno));
        rc = 1;
    }
    if (rc) unlink(tmp); /* the old file, if any, is untouched */
    else rc = fsync_dir(path);
    free(tmp);
    free(header);
    return rc;
}

/* ------------------------------------------------------------------------------------ */
/* reader                                                                               */

struct camo_st_file {
    char *path;
    uint8_t *buf;                  /* the whole file */
    size_t size;
    camo_st_tensor *t;             /* sorted by data offset */
    const camo_st_tensor **byname; /* sorted by name, for bsearch */
    int nt;
    char **keys, **vals;
    int nmeta;
};

void camo_st_close(camo_st_file *f) {
    if (!f) return;
    for (int i = 0; i < f->nt; i++) free((char *)f->t[i].name);
    free_meta(f->keys, f->vals, f->nmeta);
    free(f->t);
    free(f->byname);
    free(f->buf);
    free(f->path);
    free(f);
}

static int read_whole(const char *path, uint8_t **buf, size_t *size) {
    FILE *fp = fopen(path, "rb");
    if (!fp) { CAMO_ERR("%s: cannot open: %s", path, strerror(errno)); return 1; }
    struct stat st;
    if (fstat(fileno(fp), &st) != 0 || !S_ISREG(st.st_mode)) {
        CAMO_ERR("%s: not a regular file", path);
        fclose(fp);
        return 1;
    }
    size_t n = (size_t)st.st_size;
    uint8_t *b = camo_malloc(n);
    size_t got = fread(b, 1, n, fp);
    int err = ferror(fp) ? errno : 0;
    fclose(fp);
    if (got != n) {
        CAMO_ERR("%s: read %zu of %zu bytes: %s", path, got, n,
                 err ? strerror(err) : "file changed while reading");
        free(b);
        return 1;
    }
    *buf = b;
    *size = n;
    return 0;
}

/* A JSON number that is an integer in [0, 2^53]. */
static int json_uint(const cJSON *v, int64_t *out) {
    if (!cJSON_IsNumber(v)) return 1;
    double d = v->valuedouble;
    if (!(d >= 0 && d <= ST_MAX_JSON_INT) || d != floor(d)) return 1;
    *out = (int64_t)d;
    return 0;
}

static int parse_meta(camo_st_file *f, const cJSON *meta) {
    if (!cJSON_IsObject(meta) || f->keys) {
        CAMO_ERR("%s: __metadata__ is not an object or appears twice", f->path);
        return 1;
    }
    int n = cJSON_GetArraySize(meta);
    f->keys = camo_calloc((size_t)n, sizeof(char *));
    f->vals = camo_calloc((size_t)n, sizeof(char *));
    for (const cJSON *m = meta->child; m; m = m->next) {
        if (!cJSON_IsString(m)) {
            CAMO_ERR("%s: __metadata__ value of '%s' is not a string", f->path, m->string);
            return 1;
        }
        f->keys[f->nmeta] = camo_strdup(m->string);
        f->vals[f->nmeta] = camo_strdup(m->valuestring);
        f->nmeta++;
    }
    return 0;
}

/* dtype and shape of entry e into t. */
static int parse_dtype_shape(const camo_st_file *f, const cJSON *e, camo_st_tensor *t) {
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(e, "shape");
    if (!cJSON_IsString(dt) || !cJSON_IsArray(sh)) {
        CAMO_ERR("%s: tensor '%s': missing %s", f->path, t->name,
                 cJSON_IsString(dt) ? "shape" : "dtype");
        return 1;
    }
    int d = dtype_from_name(dt->valuestring);
    if (d < 0) {
        CAMO_ERR("%s: tensor '%s': unsupported dtype '%s'", f->path, t->name, dt->valuestring);
        return 1;
    }
    t->dtype = (camo_st_dtype)d;
    int nd = cJSON_GetArraySize(sh);
    if (nd > CAMO_ST_MAX_DIM) {
        CAMO_ERR("%s: tensor '%s': %d dimensions (max %d)", f->path, t->name, nd, CAMO_ST_MAX_DIM);
        return 1;
    }
    t->ndim = 0;
    for (const cJSON *s = sh->child; s; s = s->next, t->ndim++)
        if (json_uint(s, &t->shape[t->ndim])) {
            CAMO_ERR("%s: tensor '%s': shape[%d] is not a non-negative integer", f->path,
                     t->name, t->ndim);
            return 1;
        }
    if (shape_size(t->ndim, t->shape, dtype_sizes[d], &t->numel, &t->nbytes)) {
        CAMO_ERR("%s: tensor '%s': shape overflows", f->path, t->name);
        return 1;
    }
    return 0;
}

/* One tensor entry; begin/end are its data offsets, checked against the data size. */
static int parse_entry(const camo_st_file *f, const cJSON *e, size_t data_size,
                       camo_st_tensor *t, int64_t *begin, int64_t *end) {
    if (!cJSON_IsObject(e)) {
        CAMO_ERR("%s: tensor '%s': not an object", f->path, t->name);
        return 1;
    }
    if (parse_dtype_shape(f, e, t)) return 1;
    const cJSON *off = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!cJSON_IsArray(off) || cJSON_GetArraySize(off) != 2 || json_uint(off->child, begin) ||
        json_uint(off->child->next, end)) {
        CAMO_ERR("%s: tensor '%s': missing or invalid data_offsets", f->path, t->name);
        return 1;
    }
    if (*begin > *end || (uint64_t)*end > data_size) {
        CAMO_ERR("%s: tensor '%s': data_offsets [%" PRId64 ", %" PRId64 "] out of range "
                 "(data section has %zu bytes)", f->path, t->name, *begin, *end, data_size);
        return 1;
    }
    if ((uint64_t)(*end - *begin) != t->nbytes) {
        CAMO_ERR("%s: tensor '%s': %" PRId64 " data bytes, but %s shape needs %zu", f->path,
                 t->name, *end - *begin, dtype_names[t->dtype], t->nbytes);
        return 1;
    }
    return 0;
}

typedef struct { int64_t begin, end; int idx; } st_range;

static int cmp_range(const void *a, const void *b) {
    const st_range *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return x->idx - y->idx; /* header order for equal (empty) ranges */
}

/* The ranges, sorted, must tile [0, data_size) exactly. */
static int check_coverage(const camo_st_file *f, const camo_st_tensor *t, st_range *r, int n,
                          size_t data_size) {
    qsort(r, (size_t)n, sizeof *r, cmp_range);
    int64_t pos = 0;
    for (int i = 0; i < n; i++) {
        if (r[i].begin != pos) {
            CAMO_ERR("%s: tensor '%s' starts at data offset %" PRId64 " but the previous one "
                     "ends at %" PRId64 " (%s)", f->path, t[r[i].idx].name, r[i].begin, pos,
                     r[i].begin < pos ? "overlapping data" : "gap in data");
            return 1;
        }
        pos = r[i].end;
    }
    if ((uint64_t)pos != data_size) {
        CAMO_ERR("%s: tensors cover %" PRId64 " of %zu data bytes (trailing data)", f->path,
                 pos, data_size);
        return 1;
    }
    return 0;
}

static int cmp_byname(const void *a, const void *b) {
    return strcmp((*(const camo_st_tensor *const *)a)->name,
                  (*(const camo_st_tensor *const *)b)->name);
}

/* Orders f->t by data offset and builds the name index; rejects duplicate names. */
static int index_tensors(camo_st_file *f, camo_st_tensor *tmp, const st_range *r) {
    f->t = camo_calloc((size_t)f->nt, sizeof(camo_st_tensor));
    for (int i = 0; i < f->nt; i++) {
        f->t[i] = tmp[r[i].idx];
        tmp[r[i].idx].name = NULL; /* ownership moves to f->t */
    }
    f->byname = camo_calloc((size_t)f->nt, sizeof(camo_st_tensor *));
    for (int i = 0; i < f->nt; i++) f->byname[i] = &f->t[i];
    qsort(f->byname, (size_t)f->nt, sizeof(camo_st_tensor *), cmp_byname);
    for (int i = 1; i < f->nt; i++)
        if (strcmp(f->byname[i - 1]->name, f->byname[i]->name) == 0) {
            CAMO_ERR("%s: tensor '%s' appears twice in the header", f->path, f->byname[i]->name);
            return 1;
        }
    return 0;
}

/* Parses every entry of the header object into tensors (data pointers set). */
static int parse_tensors(camo_st_file *f, const cJSON *root, const uint8_t *data,
                         size_t data_size) {
    int n = cJSON_GetArraySize(root), nt = 0, rc = 0;
    camo_st_tensor *tmp = camo_calloc((size_t)n, sizeof(camo_st_tensor));
    st_range *r = camo_calloc((size_t)n, sizeof(st_range));
    for (const cJSON *e = root->child; e && !rc; e = e->next) {
        if (strcmp(e->string, "__metadata__") == 0) {
            rc = parse_meta(f, e);
            continue;
        }
        camo_st_tensor *t = &tmp[nt];
        t->name = camo_strdup(e->string);
        r[nt].idx = nt;
        nt++;
        rc = parse_entry(f, e, data_size, t, &r[nt - 1].begin, &r[nt - 1].end);
        if (!rc) t->data = data + r[nt - 1].begin;
    }
    if (!rc) rc = check_coverage(f, tmp, r, nt, data_size);
    if (!rc) {
        f->nt = nt;
        rc = index_tensors(f, tmp, r);
    }
    for (int i = 0; i < nt; i++) free((char *)tmp[i].name);
    free(tmp);
    free(r);
    return rc;
}

static int is_json_space(uint8_t c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

/* Length prefix, JSON validity and the header object; then the tensors. */
static int parse_file(camo_st_file *f) {
    if (f->size < 8) {
        CAMO_ERR("%s: file too short (%zu bytes) to be safetensors", f->path, f->size);
        return 1;
    }
    uint64_t hlen = 0;
    for (int i = 0; i < 8; i++) hlen |= (uint64_t)f->buf[i] << (8 * i);
    if (hlen > ST_MAX_HEADER) {
        CAMO_ERR("%s: header length %" PRIu64 " is absurd (> 100 MB)", f->path, hlen);
        return 1;
    }
    if (hlen > f->size - 8) {
        CAMO_ERR("%s: header length %" PRIu64 " exceeds the file size %zu (truncated?)",
                 f->path, hlen, f->size);
        return 1;
    }
    const char *js = (const char *)f->buf + 8, *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(js, (size_t)hlen, &end, 0);
    if (!root) {
        CAMO_ERR("%s: header is not valid JSON (at byte %td)", f->path, end ? end - js : 0);
        return 1;
    }
    int rc = 0;
    while (end < js + hlen && is_json_space((uint8_t)*end)) end++;
    if (end != js + hlen) {
        CAMO_ERR("%s: header has junk after the JSON (at byte %td)", f->path, end - js);
        rc = 1;
    } else if (!cJSON_IsObject(root)) {
        CAMO_ERR("%s: header is not a JSON object", f->path);
        rc = 1;
    }
    if (!rc) rc = parse_tensors(f, root, f->buf + 8 + hlen, f->size - 8 - (size_t)hlen);
    cJSON_Delete(root);
    return rc;
}

camo_st_file *camo_st_open(const char *path) {
    if (!path) { CAMO_ERR("camo_st_open: NULL path"); return NULL; }
    camo_st_file *f = camo_calloc(1, sizeof(camo_st_file));
    f->path = camo_strdup(path);
    if (read_whole(path, &f->buf, &f->size) || parse_file(f)) {
        camo_st_close(f);
        return NULL;
    }
    return f;
}

int camo_st_count(const camo_st_file *f) { return f ? f->nt : 0; }

const camo_st_tensor *camo_st_get(const camo_st_file *f, int i) {
    return f && i >= 0 && i < f->nt ? &f->t[i] : NULL;
}

const camo_st_tensor *camo_st_find(const camo_st_file *f, const char *name) {
    if (!f || !name || f->nt == 0) return NULL;
    camo_st_tensor key = {.name = name};
    const camo_st_tensor *kp = &key;
    const camo_st_tensor **hit =
        bsearch(&kp, f->byname, (size_t)f->nt, sizeof(camo_st_tensor *), cmp_byname);
    return hit ? *hit : NULL;
}

const char *camo_st_meta(const camo_st_file *f, const char *key) {
    if (!f || !key) return NULL;
    for (int i = 0; i < f->nmeta; i++)
        if (strcmp(f->keys[i], key) == 0) return f->vals[i];
    return NULL;
}

int camo_st_meta_count(const camo_st_file *f) { return f ? f->nmeta : 0; }

int camo_st_meta_get(const camo_st_file *f, int i, const char **key, const char **value) {
    if (!f || i < 0 || i >= f->nmeta) {
        CAMO_ERR("safetensors: metadata index %d out of range", i);
        return 1;
    }
    if (key) *key = f->keys[i];
    if (value) *value = f->vals[i];
    return 0;
}

float camo_st_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    uint32_t bits;
    if (exp == 0) { /* zero or subnormal: man * 2^-24 is exact in float */
        float v = (float)man * 0x1p-24f;
        return sign ? -v : v;
    }
    if (exp == 31) bits = sign | 0x7f800000u | (man << 13); /* inf / nan */
    else bits = sign | ((exp + 112) << 23) | (man << 13);
    float v;
    memcpy(&v, &bits, 4);
    return v;
}

float camo_st_bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float v;
    memcpy(&v, &bits, 4);
    return v;
}

int camo_st_read_f32(const camo_st_tensor *t, float *out) {
    if (!t || (!out && t->numel > 0)) { CAMO_ERR("camo_st_read_f32: NULL argument"); return 1; }
    const uint8_t *p = t->data;
    switch (t->dtype) {
    case CAMO_ST_F32:
        if (t->nbytes) memcpy(out, p, t->nbytes);
        return 0;
    case CAMO_ST_F16:
    case CAMO_ST_BF16:
        for (int64_t i = 0; i < t->numel; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            out[i] = t->dtype == CAMO_ST_F16 ? camo_st_f16_to_f32(h) : camo_st_bf16_to_f32(h);
        }
        return 0;
    default:
        CAMO_ERR("safetensors: tensor '%s' has dtype %s, not a float type", t->name,
                 camo_st_dtype_name(t->dtype));
        return 1;
    }
}
