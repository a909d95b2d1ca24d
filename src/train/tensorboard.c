/* tensorboard.c: TensorBoard event files (tensorboard.h): a TFRecord writer with a
 * hand-written protobuf encoder for the few messages TensorBoard needs, and the matching
 * reader. Protobuf wire format: each field is a key varint (field << 3 | wire type), then
 * a varint (type 0), 8 little-endian bytes (1), a length varint and bytes (2) or 4 bytes (5). */
#define _GNU_SOURCE /* gethostname */
#include "train/tensorboard.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "core/common.h"

/* ---- CRC-32C ---- */

static uint32_t crc_table[256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ 0x82f63b78u : c >> 1; /* reflected */
        crc_table[i] = c;
    }
}

uint32_t camo_crc32c(const void *data, size_t n) {
    pthread_once(&crc_once, crc_init);
    const uint8_t *p = data;
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++) c = crc_table[(c ^ p[i]) & 0xff] ^ (c >> 8);
    return c ^ 0xffffffffu;
}

uint32_t camo_tb_mask_crc(uint32_t crc) {
    return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

/* ---- protobuf encoding into growing buffers ---- */

typedef struct pbuf { uint8_t *p; size_t n, cap; } pbuf;

static void pb_put(pbuf *b, const void *data, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = camo_realloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, data, n);
    b->n += n;
}

static void pb_varint(pbuf *b, uint64_t v) {
    uint8_t t[10];
    int k = 0;
    do { t[k++] = (uint8_t)((v & 0x7f) | (v > 0x7f ? 0x80 : 0)); v >>= 7; } while (v);
    pb_put(b, t, (size_t)k);
}

static void pb_key(pbuf *b, int field, int wire) { pb_varint(b, (uint64_t)field << 3 | wire); }

static void pb_bytes(pbuf *b, int field, const void *data, size_t n) {
    pb_key(b, field, 2);
    pb_varint(b, n);
    pb_put(b, data, n);
}

static void pb_string(pbuf *b, int field, const char *s) { pb_bytes(b, field, s, strlen(s)); }

/* The host is little-endian (x86-64, aarch64), as the wire format is. */
static void pb_double(pbuf *b, int field, double v) { pb_key(b, field, 1); pb_put(b, &v, 8); }
static void pb_float(pbuf *b, int field, float v) { pb_key(b, field, 5); pb_put(b, &v, 4); }

/* ---- the writer ---- */

struct camo_tb {
    FILE *f;
    char path[4096];
};

static double unix_time(void) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return tv.tv_sec + tv.tv_usec * 1e-6;
}

/* One TFRecord around an Event's bytes. */
static int write_record(camo_tb *tb, const pbuf *ev) {
    uint64_t len = ev->n;
    uint32_t len_crc = camo_tb_mask_crc(camo_crc32c(&len, 8));
    uint32_t data_crc = camo_tb_mask_crc(camo_crc32c(ev->p, ev->n));
    if (fwrite(&len, 8, 1, tb->f) != 1 || fwrite(&len_crc, 4, 1, tb->f) != 1 ||
        fwrite(ev->p, 1, ev->n, tb->f) != ev->n || fwrite(&data_crc, 4, 1, tb->f) != 1) {
        CAMO_ERR("%s: write failed: %s", tb->path, strerror(errno));
        return -1;
    }
    return 0;
}

/* An Event at step holding one summary Value (already encoded), or the version record. */
static int write_event(camo_tb *tb, int64_t step, const pbuf *value, const char *version) {
    pbuf ev = {0}, sum = {0};
    pb_double(&ev, 1, unix_time());
    if (step) pb_key(&ev, 2, 0), pb_varint(&ev, (uint64_t)step);
    if (version) pb_string(&ev, 3, version);
    if (value) {
        pb_bytes(&sum, 1, value->p, value->n);
        pb_bytes(&ev, 5, sum.p, sum.n);
    }
    int rc = write_record(tb, &ev);
    free(ev.p), free(sum.p);
    return rc;
}

/* Opens a new file: O_EXCL, so a second writer (a resume within the same second) takes
 * the next suffix instead of overwriting. */
static FILE *create_events_file(const char *dir, char *path, size_t n) {
    char host[256] = "localhost";
    gethostname(host, sizeof host - 1);
    host[sizeof host - 1] = 0;
    long t = (long)time(NULL);
    for (int k = 1; k < 1000; k++) {
        if (k == 1) snprintf(path, n, "%s/events.out.tfevents.%ld.%s", dir, t, host);
        else snprintf(path, n, "%s/events.out.tfevents.%ld.%s.%d", dir, t, host, k);
        int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0644);
        if (fd >= 0) return fdopen(fd, "wb");
        if (errno != EEXIST) break;
    }
    CAMO_ERR("%s: cannot create: %s", path, strerror(errno));
    return NULL;
}

camo_tb *camo_tb_open(const char *dir) {
    camo_tb *tb = camo_calloc(1, sizeof *tb);
    tb->f = create_events_file(dir, tb->path, sizeof tb->path);
    if (!tb->f || write_event(tb, 0, NULL, "brain.Event:2")) {
        camo_tb_close(tb);
        return NULL;
    }
    fflush(tb->f); /* TensorBoard lists the run as soon as the file has its first record */
    return tb;
}

int camo_tb_scalar(camo_tb *tb, const char *tag, int64_t step, double value) {
    pbuf v = {0};
    pb_string(&v, 1, tag);
    pb_float(&v, 2, (float)value);
    int rc = write_event(tb, step, &v, NULL);
    free(v.p);
    return rc;
}

/* An Event with session_log (field 7; 6 is the old log_message) = SessionLog { status (1)
 * = START (1) } at step.
 * TensorBoard's accumulator takes a folder's first START as the run's start and each
 * later one as a restart: it drops every record already read with step >= this step. */
int camo_tb_session_start(camo_tb *tb, int64_t step) {
    pbuf ev = {0}, log = {0};
    pb_key(&log, 1, 0), pb_varint(&log, 1);
    pb_double(&ev, 1, unix_time());
    if (step) pb_key(&ev, 2, 0), pb_varint(&ev, (uint64_t)step);
    pb_bytes(&ev, 7, log.p, log.n);
    int rc = write_record(tb, &ev);
    free(ev.p), free(log.p);
    if (!rc) fflush(tb->f); /* a run killed right after still marks its restart */
    return rc;
}

int camo_tb_text(camo_tb *tb, const char *tag, int64_t step, const char *text) {
    pbuf v = {0}, meta = {0}, plugin = {0}, tensor = {0};
    pb_string(&plugin, 1, "text");               /* PluginData.plugin_name */
    pb_bytes(&meta, 1, plugin.p, plugin.n);      /* SummaryMetadata.plugin_data */
    pb_key(&tensor, 1, 0), pb_varint(&tensor, 7); /* TensorProto.dtype = DT_STRING */
    pb_bytes(&tensor, 2, "", 0);                 /* tensor_shape: a scalar */
    pb_string(&tensor, 8, text);                 /* string_val */
    pb_string(&v, 1, tag);
    pb_bytes(&v, 8, tensor.p, tensor.n);
    pb_bytes(&v, 9, meta.p, meta.n);
    int rc = write_event(tb, step, &v, NULL);
    free(v.p), free(meta.p), free(plugin.p), free(tensor.p);
    return rc;
}

void camo_tb_flush(camo_tb *tb) {
    if (tb && tb->f) fflush(tb->f);
}

const char *camo_tb_path(const camo_tb *tb) { return tb->path; }

void camo_tb_close(camo_tb *tb) {
    if (!tb) return;
    if (tb->f) fclose(tb->f);
    free(tb);
}

/* ---- the reader ---- */

/* A bounded view of protobuf bytes; ok drops to 0 on anything malformed. */
typedef struct pview { const uint8_t *p, *end; int ok; } pview;

static uint64_t pv_varint(pview *v) {
    uint64_t x = 0;
    for (int s = 0; s < 64; s += 7) {
        if (v->p >= v->end) break;
        uint8_t b = *v->p++;
        x |= (uint64_t)(b & 0x7f) << s;
        if (!(b & 0x80)) return x;
    }
    v->ok = 0;
    return 0;
}

/* Reads one field's key and payload: a varint/fixed value in *num, or bytes in *sub. */
static int pv_field(pview *v, int *field, uint64_t *num, pview *sub) {
    uint64_t key = pv_varint(v);
    *field = (int)(key >> 3);
    size_t n = 0;
    switch (key & 7) {
    case 0: *num = pv_varint(v); return v->ok;
    case 1: n = 8; break;
    case 5: n = 4; break;
    case 2: n = pv_varint(v); break;
    default: v->ok = 0; return 0;
    }
    if (!v->ok || n > (size_t)(v->end - v->p)) { v->ok = 0; return 0; }
    *sub = (pview){v->p, v->p + n, 1};
    *num = 0;
    if ((key & 7) != 2) memcpy(num, v->p, n); /* fixed64 / fixed32, little-endian */
    v->p += n;
    return 1;
}

/* A copy of a string field, NUL-terminated (freed by the caller). */
static char *pv_strdup(const pview *s) {
    size_t n = (size_t)(s->end - s->p);
    char *c = camo_malloc(n + 1);
    memcpy(c, s->p, n);
    c[n] = 0;
    return c;
}

/* TensorProto: the first string_val. */
static char *tensor_text(pview t) {
    int f;
    uint64_t num;
    pview sub;
    while (t.p < t.end && pv_field(&t, &f, &num, &sub))
        if (f == 8) return pv_strdup(&sub);
    return NULL;
}

/* One Summary.Value: calls fn with a scalar or a text event. */
static int decode_value(pview v, camo_tb_event *ev, camo_tb_fn fn, void *user) {
    int f, rc = 0;
    uint64_t num;
    pview sub;
    char *tag = NULL, *text = NULL;
    float sv = NAN;
    int have_scalar = 0;
    while (v.p < v.end && pv_field(&v, &f, &num, &sub)) {
        if (f == 1) { free(tag); tag = pv_strdup(&sub); }
        else if (f == 2) { uint32_t u = (uint32_t)num; memcpy(&sv, &u, 4); have_scalar = 1; }
        else if (f == 8) { free(text); text = tensor_text(sub); }
    }
    if (!v.ok || !tag) rc = -2;
    else if (have_scalar || text) {
        ev->kind = have_scalar ? CAMO_TB_SCALAR : CAMO_TB_TEXT;
        ev->tag = tag, ev->value = sv, ev->text = text;
        rc = fn(ev, user);
    }
    free(tag), free(text);
    return rc;
}

/* SessionLog: its status (field 1), 0 (STATUS_UNSPECIFIED) when absent. */
static int session_status(pview s, int *status) {
    int f;
    uint64_t num;
    pview sub;
    *status = 0;
    while (s.p < s.end && pv_field(&s, &f, &num, &sub))
        if (f == 1) *status = (int)num;
    return s.ok;
}

/* One Event: fn per summary value, or once for the file_version or session_log record.
 * -2: malformed. */
static int decode_event(pview e, camo_tb_fn fn, void *user) {
    camo_tb_event ev = {.kind = CAMO_TB_VERSION};
    pview summary = {0}, version = {0}, session = {0};
    int f, have_summary = 0, have_version = 0, have_session = 0;
    uint64_t num;
    pview sub;
    while (e.p < e.end && pv_field(&e, &f, &num, &sub)) {
        if (f == 1) memcpy(&ev.wall_time, &num, 8);
        else if (f == 2) ev.step = (int64_t)num;
        else if (f == 3) version = sub, have_version = 1;
        else if (f == 5) summary = sub, have_summary = 1;
        else if (f == 7) session = sub, have_session = 1;
    }
    if (!e.ok) return -2;
    if (have_session) {
        int status;
        if (!session_status(session, &status)) return -2;
        camo_tb_event s = ev;
        s.kind = CAMO_TB_SESSION, s.value = status;
        int rc = fn(&s, user);
        if (rc) return rc;
    }
    if (have_version) {
        char *s = pv_strdup(&version);
        ev.text = s;
        int rc = fn(&ev, user);
        free(s);
        if (rc) return rc;
    }
    while (have_summary && summary.p < summary.end && pv_field(&summary, &f, &num, &sub)) {
        if (f != 1) continue;
        int rc = decode_value(sub, &ev, fn, user);
        if (rc) return rc;
    }
    return summary.ok || !have_summary ? 0 : -2;
}

/* Reads the record at *off: 1 = one read into *data (n bytes), 0 = end of file, -1 = bad. */
static int read_record(FILE *f, const char *path, long off, uint8_t **data, uint64_t *n) {
    uint8_t head[12];
    size_t got = fread(head, 1, 12, f);
    if (got == 0 && feof(f)) return 0;
    uint32_t len_crc, data_crc;
    if (got != 12) { CAMO_ERR("%s: record at byte %ld: truncated header", path, off); return -1; }
    memcpy(n, head, 8), memcpy(&len_crc, head + 8, 4);
    if (camo_tb_mask_crc(camo_crc32c(head, 8)) != len_crc) {
        CAMO_ERR("%s: record at byte %ld: length CRC mismatch", path, off);
        return -1;
    }
    if (*n > (1u << 30)) { CAMO_ERR("%s: record at byte %ld: length %llu", path, off,
                                    (unsigned long long)*n); return -1; }
    *data = camo_realloc(*data, *n + 1);
    if (fread(*data, 1, *n, f) != *n || fread(&data_crc, 4, 1, f) != 1) {
        CAMO_ERR("%s: record at byte %ld: truncated data", path, off);
        return -1;
    }
    if (camo_tb_mask_crc(camo_crc32c(*data, *n)) != data_crc) {
        CAMO_ERR("%s: record at byte %ld: data CRC mismatch", path, off);
        return -1;
    }
    return 1;
}

long camo_tb_read(const char *path, camo_tb_fn fn, void *user) {
    FILE *f = fopen(path, "rb");
    if (!f) { CAMO_ERR("%s: cannot open: %s", path, strerror(errno)); return -1; }
    uint8_t *data = NULL;
    uint64_t n;
    long records = 0, off = 0;
    int r, rc = 0;
    while ((r = read_record(f, path, off, &data, &n)) == 1) {
        rc = decode_event((pview){data, data + n, 1}, fn, user);
        if (rc == -2) CAMO_ERR("%s: record at byte %ld: not an Event message", path, off);
        if (rc) break;
        records++;
        off += (long)n + 16;
    }
    free(data);
    fclose(f);
    if (r < 0 || rc == -2) return -1;
    return rc ? rc : records;
}
