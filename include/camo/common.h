/* common.h: error reporting, checked allocation and small helpers shared by every module. */
#ifndef CAMO_COMMON_H
#define CAMO_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* Exit codes (DESIGN.md): 0 ok, 1 runtime failure, 2 usage/config/input error. */
enum { CAMO_OK = 0, CAMO_ERR_RUNTIME = 1, CAMO_ERR_INPUT = 2 };

/* Errors travel up the stack as non-zero ints; the message is recorded once, where the
 * problem is known, in a thread-local buffer (each replica thread has its own). */
void camo_set_error(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
const char *camo_last_error(void);
void camo_clear_error(void);
#define CAMO_ERR(...) camo_set_error(__FILE__, __LINE__, __VA_ARGS__)

/* Fatal checks for conditions that are programming errors or out-of-memory. */
void camo_die(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4), noreturn));
#define CAMO_DIE(...) camo_die(__FILE__, __LINE__, __VA_ARGS__)
#define CAMO_ASSERT(cond) \
    do { if (!(cond)) CAMO_DIE("assertion failed: %s", #cond); } while (0)

void *camo_malloc_check(size_t n, const char *file, int line);
void *camo_calloc_check(size_t n, size_t size, const char *file, int line);
void *camo_realloc_check(void *p, size_t n, const char *file, int line);
char *camo_strdup_check(const char *s, const char *file, int line);
#define camo_malloc(n) camo_malloc_check((n), __FILE__, __LINE__)
#define camo_calloc(n, s) camo_calloc_check((n), (s), __FILE__, __LINE__)
#define camo_realloc(p, n) camo_realloc_check((p), (n), __FILE__, __LINE__)
#define camo_strdup(s) camo_strdup_check((s), __FILE__, __LINE__)

/* Logging: info goes to stderr unless quiet; warnings always. */
void camo_log_set_quiet(int quiet);
void camo_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void camo_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

double camo_now(void); /* monotonic seconds */

/* 32-bit FNV-1a of a string: used for deterministic test weights and name hashing. */
uint32_t camo_fnv1a(const char *s);

/* Counter-based random numbers: a value depends only on (key, counter), never on a thread's
 * state, so every replica/worker count sees the same randomness (DESIGN.md item 3). */
uint64_t camo_hash64(uint64_t x);
float camo_rand_uniform(uint64_t key, uint64_t counter);          /* [0, 1) */
float camo_rand_normal(uint64_t key, uint64_t counter);

#define CAMO_MIN(a, b) ((a) < (b) ? (a) : (b))
#define CAMO_MAX(a, b) ((a) > (b) ? (a) : (b))

#endif
