/* test_safetensors.c: round trips, atomic writes, every corruption case of the reader,
 * half-precision conversion, and interoperability with Python's safetensors.torch. */
#include <errno.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test_util.h"

#include "core/common.h"
#include "core/safetensors.h"

/* ---- helpers ---- */

static void tpath(char *buf, size_t n, const char *name) {
    snprintf(buf, n, "%s/st_%ld_%s", tu_tmpdir(), (long)getpid(), name);
}

static uint8_t *slurp(const char *path, size_t *n) {
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    fseek(fp, 0, SEEK_END);
    long sz = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    uint8_t *b = malloc((size_t)sz + 1);
    assert_int_equal(fread(b, 1, (size_t)sz, fp), (size_t)sz);
    fclose(fp);
    *n = (size_t)sz;
    return b;
}

static void spit(const char *path, const void *data, size_t n) {
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    assert_int_equal(fwrite(data, 1, n, fp), n);
    assert_int_equal(fclose(fp), 0);
}

static int file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

/* A raw file: 8-byte length, header padded with spaces to 8, then ndata bytes of zeros. */
static void write_raw(const char *path, const char *header, size_t ndata) {
    size_t hn = strlen(header), padded = (hn + 7) / 8 * 8;
    uint8_t *b = calloc(1, 8 + padded + ndata);
    for (int i = 0; i < 8; i++) b[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    memcpy(b + 8, header, hn);
    memset(b + 8 + hn, ' ', padded - hn);
    spit(path, b, 8 + padded + ndata);
    free(b);
}

/* Opening path must fail with a message naming the file and containing why (if given). */
static void expect_open_fails(const char *path, const char *why) {
    camo_clear_error();
    camo_st_file *f = camo_st_open(path);
    if (f) fprintf(stderr, "  expected failure opening %s (%s)\n", path, why ? why : "");
    assert_null(f);
    const char *msg = camo_last_error();
    if (!strstr(msg, path) || (why && !strstr(msg, why)))
        fprintf(stderr, "  message '%s' lacks '%s' or '%s'\n", msg, path, why ? why : "");
    assert_non_null(strstr(msg, path));
    if (why) assert_non_null(strstr(msg, why));
}

/* The sample checkpoint used by several tests: every dtype, a scalar, an empty tensor. */
static const float s_w[6] = {0.5f, -1.25f, 3.0f, 0.0f, 1e-3f, -7.5f};
static const uint16_t s_h[4] = {0x3C00, 0xC000, 0x7BFF, 0x0001}; /* 1, -2, 65504, 2^-24 */
static const uint16_t s_bf[4] = {0x3F80, 0xC040, 0x4049, 0x0000}; /* 1, -3, 3.140625, 0 */
static const int64_t s_step = 1234567890123ll;
static const int32_t s_none[1] = {0};
static const uint8_t s_u8[5] = {0, 1, 127, 128, 255};
static const char *s_note = "say \"hi\"\n\xc3\xbc";

static void write_sample(const char *path) {
    camo_st_writer *w = camo_st_writer_new();
    const int64_t sw[2] = {2, 3}, sh[1] = {4}, sbf[2] = {2, 2}, sn[2] = {3, 0}, su[1] = {5};
    assert_int_equal(camo_st_add(w, "model.conv.weight", CAMO_ST_F32, 2, sw, s_w), 0);
    assert_int_equal(camo_st_add(w, "half", CAMO_ST_F16, 1, sh, s_h), 0);
    assert_int_equal(camo_st_add(w, "brain", CAMO_ST_BF16, 2, sbf, s_bf), 0);
    assert_int_equal(camo_st_add(w, "step", CAMO_ST_I64, 0, NULL, &s_step), 0);
    assert_int_equal(camo_st_add(w, "empty", CAMO_ST_I32, 2, sn, s_none), 0);
    assert_int_equal(camo_st_add(w, "bytes", CAMO_ST_U8, 1, su, s_u8), 0);
    assert_int_equal(camo_st_add_meta(w, "format", "camotrain-1"), 0);
    assert_int_equal(camo_st_add_meta(w, "note", s_note), 0);
    assert_int_equal(camo_st_write_file(w, path), 0);
    camo_st_writer_free(w);
}

static void check_tensor(const camo_st_tensor *t, const char *name, camo_st_dtype dt, int ndim,
                         const int64_t *shape, const void *data, size_t nbytes) {
    assert_non_null(t);
    assert_string_equal(t->name, name);
    assert_int_equal(t->dtype, dt);
    assert_int_equal(t->ndim, ndim);
    int64_t numel = 1;
    for (int i = 0; i < ndim; i++) {
        assert_int_equal(t->shape[i], shape[i]);
        numel *= shape[i];
    }
    assert_int_equal(t->numel, numel);
    assert_int_equal(t->nbytes, nbytes);
    if (nbytes) assert_memory_equal(t->data, data, nbytes);
}

/* ---- round trip ---- */

static void test_roundtrip(void **state) {
    (void)state;
    char path[512];
    tpath(path, sizeof path, "rt.safetensors");
    write_sample(path);
    camo_st_file *f = camo_st_open(path);
    if (!f) fprintf(stderr, "  %s\n", camo_last_error());
    assert_non_null(f);
    assert_int_equal(camo_st_count(f), 6);
    const int64_t sw[2] = {2, 3}, sh[1] = {4}, sbf[2] = {2, 2}, sn[2] = {3, 0}, su[1] = {5};
    /* camo_st_get is in data order, which is the order added */
    check_tensor(camo_st_get(f, 0), "model.conv.weight", CAMO_ST_F32, 2, sw, s_w, 24);
    check_tensor(camo_st_get(f, 1), "half", CAMO_ST_F16, 1, sh, s_h, 8);
    check_tensor(camo_st_get(f, 2), "brain", CAMO_ST_BF16, 2, sbf, s_bf, 8);
    check_tensor(camo_st_get(f, 3), "step", CAMO_ST_I64, 0, NULL, &s_step, 8);
    check_tensor(camo_st_get(f, 4), "empty", CAMO_ST_I32, 2, sn, NULL, 0);
    check_tensor(camo_st_get(f, 5), "bytes", CAMO_ST_U8, 1, su, s_u8, 5);
    assert_null(camo_st_get(f, 6));
    assert_null(camo_st_get(f, -1));
    assert_ptr_equal(camo_st_find(f, "step"), camo_st_get(f, 3));
    assert_ptr_equal(camo_st_find(f, "bytes"), camo_st_get(f, 5));
    assert_null(camo_st_find(f, "model.conv"));
    assert_null(camo_st_find(f, "__metadata__"));

    assert_int_equal(camo_st_meta_count(f), 2);
    assert_string_equal(camo_st_meta(f, "format"), "camotrain-1");
    assert_string_equal(camo_st_meta(f, "note"), s_note);
    assert_null(camo_st_meta(f, "epoch"));
    const char *k, *v;
    assert_int_equal(camo_st_meta_get(f, 1, &k, &v), 0);
    assert_string_equal(k, "note");
    assert_string_equal(v, s_note);
    assert_int_not_equal(camo_st_meta_get(f, 2, &k, &v), 0);

    float out[6];
    assert_int_equal(camo_st_read_f32(camo_st_find(f, "model.conv.weight"), out), 0);
    assert_memory_equal(out, s_w, sizeof s_w);
    assert_int_not_equal(camo_st_read_f32(camo_st_find(f, "step"), out), 0);
    assert_non_null(strstr(camo_last_error(), "step"));
    camo_st_close(f);

    /* header length is a multiple of 8, so the data section starts aligned */
    size_t n;
    uint8_t *b = slurp(path, &n);
    uint64_t hlen = 0;
    for (int i = 0; i < 8; i++) hlen |= (uint64_t)b[i] << (8 * i);
    assert_int_equal(hlen % 8, 0);
    assert_int_equal(n, 8 + hlen + 24 + 8 + 8 + 8 + 0 + 5);
    free(b);
    unlink(path);
}

static void test_empty_file(void **state) {
    (void)state;
    char path[512];
    tpath(path, sizeof path, "empty.safetensors");
    camo_st_writer *w = camo_st_writer_new();
    assert_int_equal(camo_st_write_file(w, path), 0);
    camo_st_writer_free(w);
    camo_st_file *f = camo_st_open(path);
    assert_non_null(f);
    assert_int_equal(camo_st_count(f), 0);
    assert_int_equal(camo_st_meta_count(f), 0);
    assert_null(camo_st_find(f, "x"));
    camo_st_close(f);
    unlink(path);
}

static void test_writer_rejects(void **state) {
    (void)state;
    camo_st_writer *w = camo_st_writer_new();
    const int64_t s2[1] = {2}, neg[1] = {-1}, big[3] = {1ll << 32, 1ll << 32, 1ll << 32};
    const int64_t nine[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
    float x[2] = {1, 2};
    assert_int_equal(camo_st_add(w, "a", CAMO_ST_F32, 1, s2, x), 0);
    assert_int_not_equal(camo_st_add(w, "a", CAMO_ST_F32, 1, s2, x), 0); /* duplicate */
    assert_non_null(strstr(camo_last_error(), "'a'"));
    assert_int_not_equal(camo_st_add(w, "", CAMO_ST_F32, 1, s2, x), 0);
    assert_int_not_equal(camo_st_add(w, "__metadata__", CAMO_ST_F32, 1, s2, x), 0);
    assert_int_not_equal(camo_st_add(w, "b", (camo_st_dtype)99, 1, s2, x), 0);
    assert_int_not_equal(camo_st_add(w, "b", CAMO_ST_F32, 1, neg, x), 0);
    assert_int_not_equal(camo_st_add(w, "b", CAMO_ST_F32, 3, big, x), 0);
    assert_int_not_equal(camo_st_add(w, "b", CAMO_ST_F32, 9, nine, x), 0);
    assert_int_not_equal(camo_st_add(w, "b", CAMO_ST_F32, 1, s2, NULL), 0);
    assert_int_equal(camo_st_add_meta(w, "k", "v"), 0);
    assert_int_not_equal(camo_st_add_meta(w, "k", "w"), 0);
    assert_int_not_equal(camo_st_add_meta(w, "k2", NULL), 0);
    /* data is copied: changing the caller's buffer after add changes nothing */
    x[0] = 99;
    char path[512];
    tpath(path, sizeof path, "rej.safetensors");
    assert_int_equal(camo_st_write_file(w, path), 0);
    camo_st_writer_free(w);
    camo_st_file *f = camo_st_open(path);
    assert_non_null(f);
    assert_int_equal(camo_st_count(f), 1);
    float y[2];
    assert_int_equal(camo_st_read_f32(camo_st_find(f, "a"), y), 0);
    assert_true(y[0] == 1.0f && y[1] == 2.0f);
    camo_st_close(f);
    unlink(path);
}

/* ---- atomic write ---- */

static void assert_no_tmp(const char *path) {
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    assert_false(file_exists(tmp));
}

static camo_st_writer *big_writer(void) {
    camo_st_writer *w = camo_st_writer_new();
    int64_t n = 1 << 16;
    uint8_t *z = calloc((size_t)n, 1);
    assert_int_equal(camo_st_add(w, "big", CAMO_ST_U8, 1, &n, z), 0);
    free(z);
    return w;
}

/* A write that fails part way: the file size limit makes write() return EFBIG. */
static void failing_write_efbig(const char *path) {
    struct rlimit old, lim;
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    lim = old;
    lim.rlim_cur = 4096;
    void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);
    camo_st_writer *w = big_writer();
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    int rc = camo_st_write_file(w, path);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, prev);
    camo_st_writer_free(w);
    assert_int_not_equal(rc, 0);
    const char *msg = camo_last_error();
    assert_non_null(strstr(msg, path));
    assert_non_null(strstr(msg, strerror(EFBIG)));
}

static void test_atomic_write(void **state) {
    (void)state;
    char path[512], bad[600], dirpath[512];
    tpath(path, sizeof path, "atomic.safetensors");
    write_sample(path);
    size_t n0, n1;
    uint8_t *before = slurp(path, &n0);

    failing_write_efbig(path);
    uint8_t *after = slurp(path, &n1);
    assert_int_equal(n0, n1);
    assert_memory_equal(before, after, n0);
    free(after);
    assert_no_tmp(path);

    /* a directory that does not exist */
    snprintf(bad, sizeof bad, "%s/st_no_such_dir_%ld/x.safetensors", tu_tmpdir(), (long)getpid());
    camo_st_writer *w = big_writer();
    assert_int_not_equal(camo_st_write_file(w, bad), 0);
    assert_non_null(strstr(camo_last_error(), bad));
    assert_non_null(strstr(camo_last_error(), strerror(ENOENT)));

    /* the target is a directory: the temp file is written, the rename fails */
    tpath(dirpath, sizeof dirpath, "atomic_dir");
    assert_int_equal(mkdir(dirpath, 0755), 0);
    assert_int_not_equal(camo_st_write_file(w, dirpath), 0);
    assert_non_null(strstr(camo_last_error(), dirpath));
    assert_no_tmp(dirpath);
    assert_int_equal(rmdir(dirpath), 0);

    /* a successful overwrite replaces the file and leaves no temp file */
    assert_int_equal(camo_st_write_file(w, path), 0);
    assert_no_tmp(path);
    camo_st_writer_free(w);
    camo_st_file *f = camo_st_open(path);
    assert_non_null(f);
    assert_int_equal(camo_st_count(f), 1);
    assert_int_equal(camo_st_find(f, "big")->numel, 1 << 16);
    camo_st_close(f);
    free(before);
    unlink(path);
}

/* ---- corruption ---- */

static void test_missing_and_short(void **state) {
    (void)state;
    char path[512];
    tpath(path, sizeof path, "does_not_exist.safetensors");
    expect_open_fails(path, strerror(ENOENT));
    tpath(path, sizeof path, "dir.safetensors");
    assert_int_equal(mkdir(path, 0755), 0);
    expect_open_fails(path, "not a regular file");
    rmdir(path);
    tpath(path, sizeof path, "short.safetensors");
    spit(path, "\x10\0\0", 3);
    expect_open_fails(path, "too short");
    unlink(path);
}

/* Every proper prefix of a valid file is rejected. */
static void test_truncated(void **state) {
    (void)state;
    char path[512], cut[512];
    tpath(path, sizeof path, "full.safetensors");
    tpath(cut, sizeof cut, "cut.safetensors");
    write_sample(path);
    size_t n;
    uint8_t *b = slurp(path, &n);
    for (size_t len = 0; len < n; len++) {
        spit(cut, b, len);
        expect_open_fails(cut, NULL);
    }
    spit(cut, b, n);
    camo_st_file *f = camo_st_open(cut);
    assert_non_null(f);
    camo_st_close(f);
    free(b);
    unlink(path);
    unlink(cut);
}

/* Flipping any header byte gives a clean error or (e.g. inside a string) a valid file. */
static void test_flipped_header_bytes(void **state) {
    (void)state;
    char path[512], bad[512];
    tpath(path, sizeof path, "flip_src.safetensors");
    tpath(bad, sizeof bad, "flip.safetensors");
    write_sample(path);
    size_t n;
    uint8_t *b = slurp(path, &n);
    uint64_t hlen = 0;
    for (int i = 0; i < 8; i++) hlen |= (uint64_t)b[i] << (8 * i);
    int failed = 0;
    const uint8_t flips[3] = {0xFF, 0x01, 0x20};
    for (size_t i = 0; i < 8 + hlen; i++)
        for (int k = 0; k < 3; k++) {
            b[i] ^= flips[k];
            spit(bad, b, n);
            b[i] ^= flips[k];
            camo_clear_error();
            camo_st_file *f = camo_st_open(bad);
            if (f) { camo_st_close(f); continue; }
            failed++;
            assert_non_null(strstr(camo_last_error(), bad));
        }
    assert_true(failed > (int)(8 + hlen)); /* most flips break something */
    free(b);
    unlink(path);
    unlink(bad);
}

static void test_bad_length(void **state) {
    (void)state;
    char path[512];
    tpath(path, sizeof path, "len.safetensors");
    uint8_t b[64] = {0};
    b[5] = 1; /* 2^40 */
    spit(path, b, sizeof b);
    expect_open_fails(path, "absurd");
    memset(b, 0, sizeof b);
    b[0] = 200;
    spit(path, b, sizeof b);
    expect_open_fails(path, "exceeds the file size");
    memset(b, 0, sizeof b);
    spit(path, b, 8); /* header length 0 */
    expect_open_fails(path, "not valid JSON");
    unlink(path);
}

typedef struct { const char *header; size_t ndata; const char *why; } bad_case;

static void test_bad_headers(void **state) {
    (void)state;
    static const bad_case cases[] = {
        {"{\"a\": ", 0, "not valid JSON"},
        {"[1, 2]", 0, "not a JSON object"},
        {"{} x", 0, "junk after"},
        {"{\"a\": 3}", 0, "not an object"},
        {"{\"a\": {\"shape\": [1], \"data_offsets\": [0, 4]}}", 4, "missing dtype"},
        {"{\"a\": {\"dtype\": \"F32\", \"data_offsets\": [0, 4]}}", 4, "missing shape"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [1]}}", 4, "data_offsets"},
        {"{\"a\": {\"dtype\": \"F64\", \"shape\": [1], \"data_offsets\": [0, 8]}}", 8,
         "unsupported dtype 'F64'"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [-1], \"data_offsets\": [0, 4]}}", 4,
         "shape[0]"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [1.5], \"data_offsets\": [0, 4]}}", 4,
         "shape[0]"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [4294967296, 4294967296, 4294967296], "
         "\"data_offsets\": [0, 4]}}", 4, "overflows"},
        {"{\"a\": {\"dtype\": \"U8\", \"shape\": [1,1,1,1,1,1,1,1,1], \"data_offsets\": [0, 1]}}",
         1, "dimensions"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4, 8]}}", 8,
         "data_offsets"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [-4, 0]}}", 4,
         "data_offsets"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [25], \"data_offsets\": [0, 100]}}", 16,
         "out of range"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [0], \"data_offsets\": [8, 4]}}", 8,
         "out of range"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 4]}}", 4,
         "shape needs 8"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}, "
         "\"b\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [4, 12]}}", 12,
         "overlapping"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}, "
         "\"b\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [8, 12]}}", 12, "gap"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 8]}}", 8, "gap"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}", 8,
         "trailing"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}, "
         "\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 8]}}", 8, "twice"},
        {"{\"__metadata__\": {\"k\": 1}}", 0, "'k' is not a string"},
        {"{\"__metadata__\": {\"k\": null}}", 0, "not a string"},
        {"{\"__metadata__\": [\"k\"]}", 0, "__metadata__"},
        {"{\"__metadata__\": {}, \"__metadata__\": {}}", 0, "twice"},
    };
    char path[512];
    tpath(path, sizeof path, "hdr.safetensors");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        write_raw(path, cases[i].header, cases[i].ndata);
        expect_open_fails(path, cases[i].why);
    }
    /* a valid file with a scalar, an empty tensor at the end and metadata opens */
    write_raw(path, "{\"__metadata__\": {\"k\": \"v\"}, \"z\": {\"dtype\": \"U8\", \"shape\": [0], "
                    "\"data_offsets\": [4, 4]}, \"a\": {\"dtype\": \"F32\", \"shape\": [], "
                    "\"data_offsets\": [0, 4]}}",
              4);
    camo_st_file *f = camo_st_open(path);
    if (!f) fprintf(stderr, "  %s\n", camo_last_error());
    assert_non_null(f);
    assert_string_equal(camo_st_get(f, 0)->name, "a");
    assert_string_equal(camo_st_get(f, 1)->name, "z");
    assert_int_equal(camo_st_find(f, "a")->ndim, 0);
    assert_int_equal(camo_st_find(f, "a")->numel, 1);
    camo_st_close(f);
    unlink(path);
}

/* ---- half precision ---- */

static float ref_f16(uint16_t h) {
    int e = (h >> 10) & 0x1f, m = h & 0x3ff;
    float v = e == 0    ? ldexpf((float)m, -24)
              : e == 31 ? (m ? NAN : INFINITY)
                        : ldexpf((float)(m | 0x400), e - 25);
    return (h & 0x8000) ? -v : v;
}

static void test_half_conversion(void **state) {
    (void)state;
    assert_true(camo_st_f16_to_f32(0x3C00) == 1.0f);
    assert_true(camo_st_f16_to_f32(0xC000) == -2.0f);
    assert_true(camo_st_f16_to_f32(0x7BFF) == 65504.0f);
    assert_true(camo_st_f16_to_f32(0x0001) == ldexpf(1, -24));
    assert_true(camo_st_f16_to_f32(0x0400) == ldexpf(1, -14));
    assert_true(camo_st_f16_to_f32(0x3555) == 0.333251953125f);
    assert_true(isinf(camo_st_f16_to_f32(0x7C00)) && camo_st_f16_to_f32(0x7C00) > 0);
    assert_true(isinf(camo_st_f16_to_f32(0xFC00)) && camo_st_f16_to_f32(0xFC00) < 0);
    assert_true(isnan(camo_st_f16_to_f32(0x7E00)));
    assert_true(signbit(camo_st_f16_to_f32(0x8000)) && camo_st_f16_to_f32(0x8000) == 0);
    for (uint32_t h = 0; h < 65536; h++) {
        float a = camo_st_f16_to_f32((uint16_t)h), b = ref_f16((uint16_t)h);
        if (isnan(b)) assert_true(isnan(a));
        else assert_true(a == b && signbit(a) == signbit(b));
    }
    assert_true(camo_st_bf16_to_f32(0x3F80) == 1.0f);
    assert_true(camo_st_bf16_to_f32(0xC040) == -3.0f);
    assert_true(camo_st_bf16_to_f32(0x4049) == 3.140625f);
    assert_true(camo_st_bf16_to_f32(0x0001) == ldexpf(1, -133));
    assert_true(isinf(camo_st_bf16_to_f32(0x7F80)));
    assert_true(isnan(camo_st_bf16_to_f32(0x7FC0)));

    /* and through a file */
    char path[512];
    tpath(path, sizeof path, "half.safetensors");
    write_sample(path);
    camo_st_file *f = camo_st_open(path);
    assert_non_null(f);
    float h[4], bf[4];
    const float want_h[4] = {1, -2, 65504, ldexpf(1, -24)}, want_bf[4] = {1, -3, 3.140625f, 0};
    assert_int_equal(camo_st_read_f32(camo_st_find(f, "half"), h), 0);
    assert_int_equal(camo_st_read_f32(camo_st_find(f, "brain"), bf), 0);
    assert_memory_equal(h, want_h, sizeof h);
    assert_memory_equal(bf, want_bf, sizeof bf);
    camo_st_close(f);
    unlink(path);
}

/* ---- interoperability with Python's safetensors.torch ---- */

static const char *py_script =
    "import sys, torch\n"
    "from safetensors import safe_open\n"
    "from safetensors.torch import load_file, save_file\n"
    "t = load_file(sys.argv[1])\n"
    "assert sorted(t) == ['brain', 'bytes', 'empty', 'half', 'model.conv.weight', 'step'], t\n"
    "want = {'model.conv.weight': (torch.float32, [2, 3]), 'half': (torch.float16, [4]),\n"
    "        'brain': (torch.bfloat16, [2, 2]), 'step': (torch.int64, []),\n"
    "        'empty': (torch.int32, [3, 0]), 'bytes': (torch.uint8, [5])}\n"
    "for k, (dt, sh) in want.items():\n"
    "    assert t[k].dtype == dt and list(t[k].shape) == sh, (k, t[k].dtype, t[k].shape)\n"
    "r = t['model.conv.weight'][1].tolist()\n"
    "assert r[0] == 0.0 and abs(r[1] - 1e-3) < 1e-9 and r[2] == -7.5, r\n"
    "assert t['model.conv.weight'][0].tolist() == [0.5, -1.25, 3.0]\n"
    "assert t['half'].float().tolist() == [1.0, -2.0, 65504.0, 2.0 ** -24]\n"
    "assert t['brain'].float().tolist() == [[1.0, -3.0], [3.140625, 0.0]]\n"
    "assert t['step'].item() == 1234567890123\n"
    "assert t['bytes'].tolist() == [0, 1, 127, 128, 255]\n"
    "with safe_open(sys.argv[1], 'pt') as f:\n"
    "    m = f.metadata()\n"
    "assert m == {'format': 'camotrain-1', 'note': 'say \"hi\"\\n\\u00fc'}, m\n"
    "save_file({'a': torch.arange(6, dtype=torch.float32).reshape(2, 3) * 0.5,\n"
    "           'b': torch.tensor([1.0, -2.0, 0.375], dtype=torch.float16),\n"
    "           'c': torch.tensor([[1.5, -3.0]], dtype=torch.bfloat16),\n"
    "           'd': torch.tensor(42, dtype=torch.int64),\n"
    "           'e': torch.zeros(3, 0, dtype=torch.int32),\n"
    "           'f': torch.tensor([1, 2, 255], dtype=torch.uint8)},\n"
    "          sys.argv[2], metadata={'epoch': '7', 'note': '\\u00fc\"'})\n"
    "print('python: ok')\n";

/* The first python3 that has safetensors and torch: the one on PATH, else Debian's (a
 * pyenv python3 on PATH does not see Debian's python3-torch). NULL if none. */
static const char *python_with_safetensors(void) {
    static const char *const candidates[] = {"python3", "/usr/bin/python3"};
    char cmd[256];
    for (size_t i = 0; i < sizeof candidates / sizeof candidates[0]; i++) {
        snprintf(cmd, sizeof cmd, "%s -c 'import safetensors.torch' >/dev/null 2>&1",
                 candidates[i]);
        if (system(cmd) == 0) return candidates[i];
    }
    return NULL;
}

static void check_python_file(const char *path) {
    camo_st_file *f = camo_st_open(path);
    if (!f) fprintf(stderr, "  %s\n", camo_last_error());
    assert_non_null(f);
    assert_int_equal(camo_st_count(f), 6);
    const camo_st_tensor *a = camo_st_find(f, "a"), *b = camo_st_find(f, "b");
    const camo_st_tensor *c = camo_st_find(f, "c"), *d = camo_st_find(f, "d");
    const camo_st_tensor *e = camo_st_find(f, "e"), *u = camo_st_find(f, "f");
    assert_true(a && b && c && d && e && u);
    assert_true(a->dtype == CAMO_ST_F32 && a->ndim == 2 && a->shape[0] == 2 && a->shape[1] == 3);
    assert_true(b->dtype == CAMO_ST_F16 && b->numel == 3);
    assert_true(c->dtype == CAMO_ST_BF16 && c->ndim == 2 && c->shape[1] == 2);
    assert_true(d->dtype == CAMO_ST_I64 && d->ndim == 0 && d->numel == 1);
    assert_true(e->dtype == CAMO_ST_I32 && e->ndim == 2 && e->shape[0] == 3 && e->numel == 0);
    assert_true(u->dtype == CAMO_ST_U8 && u->numel == 3);
    float fa[6], fb[3], fc[2];
    const float wa[6] = {0, 0.5f, 1, 1.5f, 2, 2.5f}, wb[3] = {1, -2, 0.375f}, wc[2] = {1.5f, -3};
    assert_int_equal(camo_st_read_f32(a, fa), 0);
    assert_int_equal(camo_st_read_f32(b, fb), 0);
    assert_int_equal(camo_st_read_f32(c, fc), 0);
    assert_memory_equal(fa, wa, sizeof fa);
    assert_memory_equal(fb, wb, sizeof fb);
    assert_memory_equal(fc, wc, sizeof fc);
    int64_t dv;
    memcpy(&dv, d->data, 8);
    assert_int_equal(dv, 42);
    assert_memory_equal(u->data, "\x01\x02\xff", 3);
    assert_string_equal(camo_st_meta(f, "epoch"), "7");
    assert_string_equal(camo_st_meta(f, "note"), "\xc3\xbc\"");
    camo_st_close(f);
}

static void test_python_interop(void **state) {
    (void)state;
    const char *python = python_with_safetensors();
    if (!python) {
        fprintf(stderr, "  python3 with safetensors.torch not found: skipping\n");
        skip();
    }
    char script[512], cfile[512], pyfile[512], cmd[2048];
    tpath(script, sizeof script, "interop.py");
    tpath(cfile, sizeof cfile, "from_c.safetensors");
    tpath(pyfile, sizeof pyfile, "from_py.safetensors");
    spit(script, py_script, strlen(py_script));
    write_sample(cfile);
    snprintf(cmd, sizeof cmd, "%s '%s' '%s' '%s'", python, script, cfile, pyfile);
    int rc = system(cmd);
    assert_true(rc != -1 && WIFEXITED(rc));
    assert_int_equal(WEXITSTATUS(rc), 0);
    check_python_file(pyfile);
    unlink(script);
    unlink(cfile);
    unlink(pyfile);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_empty_file),
        cmocka_unit_test(test_writer_rejects),
        cmocka_unit_test(test_atomic_write),
        cmocka_unit_test(test_missing_and_short),
        cmocka_unit_test(test_truncated),
        cmocka_unit_test(test_flipped_header_bytes),
        cmocka_unit_test(test_bad_length),
        cmocka_unit_test(test_bad_headers),
        cmocka_unit_test(test_half_conversion),
        cmocka_unit_test(test_python_interop),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
