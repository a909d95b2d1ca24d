/* common.c: error buffer, checked allocation, logging, hashing. */
#include "camo/common.h"

#include <math.h>
#include <stdarg.h>
#include <string.h>
#include <time.h>

static _Thread_local char error_buf[1024];
static int log_quiet;

void camo_set_error(const char *file, int line, const char *fmt, ...) {
    (void)file; (void)line; /* user-facing errors name the user's file/key, not ours */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(error_buf, sizeof error_buf, fmt, ap);
    va_end(ap);
}

const char *camo_last_error(void) { return error_buf[0] ? error_buf : "unknown error"; }
void camo_clear_error(void) { error_buf[0] = 0; }

void camo_die(const char *file, int line, const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "camotrain: fatal (%s:%d): ", file, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(CAMO_ERR_RUNTIME);
}

void *camo_malloc_check(size_t n, const char *file, int line) {
    void *p = malloc(n ? n : 1);
    if (!p) camo_die(file, line, "out of memory allocating %zu bytes", n);
    return p;
}

void *camo_calloc_check(size_t n, size_t size, const char *file, int line) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) camo_die(file, line, "out of memory allocating %zu x %zu bytes", n, size);
    return p;
}

void *camo_realloc_check(void *p, size_t n, const char *file, int line) {
    void *q = realloc(p, n ? n : 1);
    if (!q) camo_die(file, line, "out of memory reallocating %zu bytes", n);
    return q;
}

char *camo_strdup_check(const char *s, const char *file, int line) {
    size_t n = strlen(s) + 1;
    char *p = camo_malloc_check(n, file, line);
    memcpy(p, s, n);
    return p;
}

void camo_log_set_quiet(int quiet) { log_quiet = quiet; }

void camo_info(const char *fmt, ...) {
    if (log_quiet) return;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

void camo_warn(const char *fmt, ...) {
    va_list ap;
    fputs("camotrain: warning: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

double camo_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

uint32_t camo_fnv1a(const char *s) {
    uint32_t h = 2166136261u;
    for (; *s; s++) { h ^= (uint8_t)*s; h *= 16777619u; }
    return h;
}

uint64_t camo_hash64(uint64_t x) { /* splitmix64 finaliser */
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

float camo_rand_uniform(uint64_t key, uint64_t counter) {
    uint64_t h = camo_hash64(key ^ camo_hash64(counter));
    return (float)(h >> 40) * (1.0f / 16777216.0f);
}

float camo_rand_normal(uint64_t key, uint64_t counter) {
    float u1 = camo_rand_uniform(key, 2 * counter), u2 = camo_rand_uniform(key, 2 * counter + 1);
    if (u1 < 1e-7f) u1 = 1e-7f;
    return sqrtf(-2.0f * logf(u1)) * cosf(6.28318530718f * u2);
}
