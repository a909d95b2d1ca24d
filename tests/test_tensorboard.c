/* test_tensorboard.c: the TensorBoard event writer against a reader written here from the
 * format's definition (bitwise CRC-32C, a protobuf walk of its own), so a mistake shared by
 * the library's encoder and decoder cannot pass; then the library's reader on good and on
 * damaged files. tools/tb_check.py checks the same files with TensorBoard's own reader. */
#include <dirent.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "test_util.h"

#include "core/common.h"
#include "train/tensorboard.h"

/* ---- an independent reader ---- */

static uint32_t crc32c_bitwise(const uint8_t *p, size_t n) {
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0x82f63b78u & (0u - (c & 1)));
    }
    return ~c;
}

static uint32_t masked(uint32_t c) { return ((c >> 15) | (c << 17)) + 0xa282ead8u; }

static uint64_t rd_le(const uint8_t *p, int n) {
    uint64_t x = 0;
    for (int i = n - 1; i >= 0; i--) x = x << 8 | p[i];
    return x;
}

typedef struct { const uint8_t *p, *end; } cur;

static uint64_t varint(cur *c) {
    uint64_t x = 0;
    for (int s = 0;; s += 7) {
        assert_true(c->p < c->end && s < 64);
        uint8_t b = *c->p++;
        x |= (uint64_t)(b & 0x7f) << s;
        if (!(b & 0x80)) return x;
    }
}

/* Next field: its number and wire type; bytes fields in *sub, numbers in *num. */
static int field(cur *c, int *wire, uint64_t *num, cur *sub) {
    if (c->p >= c->end) return 0;
    uint64_t key = varint(c);
    *wire = (int)(key & 7);
    size_t n = *wire == 1 ? 8 : *wire == 5 ? 4 : 0;
    if (*wire == 0) { *num = varint(c); return (int)(key >> 3); }
    if (*wire == 2) n = varint(c);
    assert_true(*wire == 1 || *wire == 2 || *wire == 5);
    assert_true(n <= (size_t)(c->end - c->p));
    *sub = (cur){c->p, c->p + n};
    *num = *wire == 2 ? 0 : rd_le(c->p, (int)n);
    c->p += n;
    return (int)(key >> 3);
}

/* What one record held (one summary value at most: the writer writes one per Event). */
typedef struct rec {
    double wall;
    int64_t step;
    char version[32], tag[64], text[512], plugin[16];
    float value;
    int has_value, dtype;
    int session_status; /* SessionLog.status, -1: no session_log */
} rec;

static void copy_str(char *dst, size_t n, cur s) {
    size_t k = (size_t)(s.end - s.p);
    assert_true(k < n);
    memcpy(dst, s.p, k);
    dst[k] = 0;
}

static void decode_tensor(cur t, rec *r) {
    int w, f;
    uint64_t num;
    cur sub;
    while ((f = field(&t, &w, &num, &sub)))
        if (f == 1) r->dtype = (int)num;
        else if (f == 8) copy_str(r->text, sizeof r->text, sub);
}

static void decode_value(cur v, rec *r) {
    int w, f;
    uint64_t num;
    cur sub, sub2, sub3;
    while ((f = field(&v, &w, &num, &sub))) {
        if (f == 1) copy_str(r->tag, sizeof r->tag, sub);
        if (f == 2) { uint32_t u = (uint32_t)num; memcpy(&r->value, &u, 4); r->has_value = 1; }
        if (f == 8) decode_tensor(sub, r);
        if (f == 9) /* SummaryMetadata.plugin_data.plugin_name */
            while (field(&sub, &w, &num, &sub2) == 1)
                while (field(&sub2, &w, &num, &sub3))
                    copy_str(r->plugin, sizeof r->plugin, sub3);
    }
}

static void decode_event(cur e, rec *r) {
    int w, f;
    uint64_t num;
    cur sub, val;
    while ((f = field(&e, &w, &num, &sub))) {
        if (f == 1) { assert_int_equal(w, 1); memcpy(&r->wall, &num, 8); }
        if (f == 2) r->step = (int64_t)num;
        if (f == 3) copy_str(r->version, sizeof r->version, sub);
        if (f == 5)
            while (field(&sub, &w, &num, &val) == 1) decode_value(val, r);
        if (f == 7) { /* session_log: SessionLog, status is field 1, a varint enum */
            r->session_status = 0;
            while (field(&sub, &w, &num, &val))
                if (w == 0) r->session_status = (int)num;
        }
    }
}

/* Reads every record of path, checking both CRCs; returns the count (recs: up to max). */
static int read_all(const char *path, rec *recs, int max) {
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    uint8_t head[12], buf[4096], tail[4];
    int n = 0;
    while (fread(head, 1, 12, f) == 12) {
        uint64_t len = rd_le(head, 8);
        assert_int_equal(rd_le(head + 8, 4), masked(crc32c_bitwise(head, 8)));
        assert_true(len < sizeof buf);
        assert_int_equal(fread(buf, 1, len, f), len);
        assert_int_equal(fread(tail, 1, 4, f), 4);
        assert_int_equal(rd_le(tail, 4), masked(crc32c_bitwise(buf, len)));
        assert_true(n < max);
        memset(&recs[n], 0, sizeof recs[n]);
        recs[n].session_status = -1;
        decode_event((cur){buf, buf + len}, &recs[n]);
        n++;
    }
    assert_true(feof(f)); /* no partial record at the end */
    fclose(f);
    return n;
}

/* ---- helpers ---- */

static void fresh_dir(char *dir, size_t n, const char *name) {
    snprintf(dir, n, "%s/tb_%ld_%s", tu_tmpdir(), (long)getpid(), name);
    mkdir(dir, 0755);
}

static int count_event_files(const char *dir) {
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));) n += !strncmp(e->d_name, "events.out.tfevents.", 20);
    closedir(d);
    return n;
}

static const char *config_text =
    "# a comment line\ntrain = { lr = 0.003; batch = 16; };\n"
    "data = { root = \"data/synth\"; img_size = 64; }; # long enough for a 2-byte length\n";

/* Writes a small run: scalars at steps that need 1-, 2- and 6-byte varints, and text. */
static void write_sample(const char *dir) {
    camo_tb *tb = camo_tb_open(dir);
    assert_non_null(tb);
    assert_int_equal(camo_tb_text(tb, "config", 0, config_text), 0);
    assert_int_equal(camo_tb_scalar(tb, "train/loss", 1, 0.75), 0);
    assert_int_equal(camo_tb_scalar(tb, "train/lr", 300, 3e-4), 0);
    assert_int_equal(camo_tb_scalar(tb, "eval/iou", 1LL << 40, -2.5), 0);
    camo_tb_close(tb);
}

/* ---- tests ---- */

static void test_crc32c(void **state) {
    (void)state;
    /* the check value of CRC-32C, and RFC 3720's 32 zero bytes */
    assert_int_equal(camo_crc32c("123456789", 9), 0xe3069283u);
    uint8_t zeros[32] = {0};
    assert_int_equal(camo_crc32c(zeros, 32), 0x8a9136aau);
    assert_int_equal(crc32c_bitwise((const uint8_t *)"123456789", 9), 0xe3069283u);
    assert_int_equal(camo_tb_mask_crc(0x12345678u), masked(0x12345678u));
}

static void test_write_and_read_back(void **state) {
    (void)state;
    char dir[512], path[1024];
    fresh_dir(dir, sizeof dir, "rw");
    camo_tb *tb = camo_tb_open(dir);
    assert_non_null(tb);
    snprintf(path, sizeof path, "%s", camo_tb_path(tb));
    camo_tb_close(tb);
    unlink(path);
    double t0 = (double)time(NULL);
    write_sample(dir);
    assert_int_equal(count_event_files(dir), 1);
    DIR *d = opendir(dir);
    for (struct dirent *e; (e = readdir(d));)
        if (!strncmp(e->d_name, "events.out.tfevents.", 20))
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
    closedir(d);
    rec r[8];
    assert_int_equal(read_all(path, r, 8), 5);
    assert_string_equal(r[0].version, "brain.Event:2");
    for (int i = 0; i < 5; i++) assert_true(fabs(r[i].wall - t0) < 60);
    assert_string_equal(r[1].tag, "config");
    assert_string_equal(r[1].plugin, "text");
    assert_int_equal(r[1].dtype, 7);
    assert_string_equal(r[1].text, config_text);
    assert_false(r[1].has_value);
    const char *tags[3] = {"train/loss", "train/lr", "eval/iou"};
    int64_t steps[3] = {1, 300, 1LL << 40};
    float vals[3] = {0.75f, 3e-4f, -2.5f};
    for (int i = 0; i < 3; i++) {
        assert_string_equal(r[i + 2].tag, tags[i]);
        assert_int_equal(r[i + 2].step, steps[i]);
        assert_true(r[i + 2].has_value);
        assert_true(r[i + 2].value == vals[i]);
    }
}

/* The library's reader gives what the independent one gives. */
typedef struct seen { int n; char tags[8][64]; int64_t steps[8]; double vals[8]; } seen;

static int collect(const camo_tb_event *ev, void *user) {
    seen *s = user;
    if (s->n >= 8) return 1;
    snprintf(s->tags[s->n], 64, "%s", ev->kind == CAMO_TB_VERSION ? ev->text : ev->tag);
    s->steps[s->n] = ev->step;
    s->vals[s->n] = ev->kind == CAMO_TB_SCALAR ? ev->value : ev->kind == CAMO_TB_TEXT
                        ? (double)strlen(ev->text) : -1;
    s->n++;
    return 0;
}

static void test_library_reader(void **state) {
    (void)state;
    char dir[512], path[1024];
    fresh_dir(dir, sizeof dir, "lib");
    camo_tb *tb = camo_tb_open(dir);
    snprintf(path, sizeof path, "%s", camo_tb_path(tb));
    assert_int_equal(camo_tb_text(tb, "config", 0, config_text), 0);
    assert_int_equal(camo_tb_scalar(tb, "train/loss", 7, 1.5), 0);
    camo_tb_close(tb);
    seen s = {0};
    assert_int_equal(camo_tb_read(path, collect, &s), 3);
    assert_int_equal(s.n, 3);
    assert_string_equal(s.tags[0], "brain.Event:2");
    assert_string_equal(s.tags[1], "config");
    assert_true(s.vals[1] == (double)strlen(config_text));
    assert_string_equal(s.tags[2], "train/loss");
    assert_int_equal(s.steps[2], 7);
    assert_true(s.vals[2] == 1.5);
}

/* A resumed run's file: version, then session_log START at the resumed step, read by
 * both readers; a new run's START at step 0 has no step field (proto default). */
static int first_session(const camo_tb_event *ev, void *user) {
    if (ev->kind != CAMO_TB_SESSION) return 0;
    int64_t *out = user;
    out[0] = ev->step, out[1] = (int64_t)ev->value;
    return 1;
}

static void test_session_start(void **state) {
    (void)state;
    char dir[512], path[1024];
    fresh_dir(dir, sizeof dir, "start");
    int64_t steps[2] = {0, 301}; /* a new run, and a resume from a checkpoint at step 300 */
    for (int i = 0; i < 2; i++) {
        camo_tb *tb = camo_tb_open(dir);
        snprintf(path, sizeof path, "%s", camo_tb_path(tb));
        assert_int_equal(camo_tb_session_start(tb, steps[i]), 0);
        assert_int_equal(camo_tb_scalar(tb, "train/loss", steps[i] + 1, 0.5), 0);
        camo_tb_close(tb);
        rec r[4];
        assert_int_equal(read_all(path, r, 4), 3);
        assert_string_equal(r[0].version, "brain.Event:2");
        assert_int_equal(r[0].session_status, -1);
        assert_int_equal(r[1].session_status, 1); /* START */
        assert_int_equal(r[1].step, steps[i]);
        assert_false(r[1].has_value);
        assert_int_equal(r[2].session_status, -1);
        int64_t got[2] = {-1, -1};
        assert_int_equal(camo_tb_read(path, first_session, got), 1); /* fn's 1 stops it */
        assert_int_equal(got[0], steps[i]);
        assert_int_equal(got[1], 1);
    }
    assert_int_equal(count_event_files(dir), 2);
}

/* Damaged files: each error names the file, the record's offset and what is wrong. */
static void expect_damage(const char *path, long at, int truncate_to, const char *what) {
    FILE *f = fopen(path, "rb");
    uint8_t buf[8192];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    char bad[1100];
    snprintf(bad, sizeof bad, "%s.bad", path);
    if (at >= 0) buf[at] ^= 0x40;
    f = fopen(bad, "wb");
    fwrite(buf, 1, truncate_to >= 0 ? (size_t)truncate_to : n, f);
    fclose(f);
    seen s = {0};
    assert_int_equal(camo_tb_read(bad, collect, &s), -1);
    const char *e = camo_last_error();
    if (!strstr(e, what) || !strstr(e, bad)) fail_msg("error '%s' lacks '%s'", e, what);
    unlink(bad);
}

static void test_damaged_files(void **state) {
    (void)state;
    char dir[512], path[1024];
    fresh_dir(dir, sizeof dir, "bad");
    camo_tb *tb = camo_tb_open(dir);
    snprintf(path, sizeof path, "%s", camo_tb_path(tb));
    assert_int_equal(camo_tb_scalar(tb, "train/loss", 1, 0.5), 0);
    camo_tb_close(tb);
    struct stat st;
    stat(path, &st);
    FILE *f = fopen(path, "rb");
    uint8_t head[8];
    assert_int_equal(fread(head, 1, 8, f), 8);
    fclose(f);
    long first = 16 + (long)rd_le(head, 8); /* where the second record starts */
    expect_damage(path, first + 1, -1, "length CRC mismatch");        /* its length */
    expect_damage(path, first + 14, -1, "data CRC mismatch");        /* its Event bytes */
    char want[64];
    snprintf(want, sizeof want, "record at byte %ld", first);
    expect_damage(path, first + 14, -1, want);
    expect_damage(path, -1, (int)st.st_size - 2, "truncated data");
    expect_damage(path, -1, (int)first + 5, "truncated header");
}

/* Two writers in one folder within the same second (a resume): two files, none lost. */
static void test_second_file(void **state) {
    (void)state;
    char dir[512];
    fresh_dir(dir, sizeof dir, "two");
    camo_tb *a = camo_tb_open(dir), *b = camo_tb_open(dir);
    assert_non_null(a);
    assert_non_null(b);
    assert_string_not_equal(camo_tb_path(a), camo_tb_path(b));
    camo_tb_close(a);
    camo_tb_close(b);
    assert_int_equal(count_event_files(dir), 2);
    char missing[600];
    snprintf(missing, sizeof missing, "%s/no/such/dir", dir);
    assert_null(camo_tb_open(missing));
    assert_non_null(strstr(camo_last_error(), missing));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crc32c),
        cmocka_unit_test(test_write_and_read_back),
        cmocka_unit_test(test_library_reader),
        cmocka_unit_test(test_session_start),
        cmocka_unit_test(test_damaged_files),
        cmocka_unit_test(test_second_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
