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
/* The same with our source location first: "cuda/comm.cu:123: <message>". For failures of
 * library calls (the CUDA runtime, cuBLAS, cuDNN, NCCL: cuda/cuda_common.cuh), where there is
 * no user file to name and the call site is what a bug report needs. */
void camo_set_error_at(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

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

/* Logging, one line per call (the newline is added). Every line also goes to the run's log
 * once camo_log_open has opened one (quiet or not), so train.log keeps what the console
 * showed. info: stderr unless quiet; warn: "camotrain: warning: ..." on stderr; print: a
 * result on stdout (the end summary); print_error: "camotrain: error: ..." on stderr. */
void camo_log_set_quiet(int quiet);
void camo_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void camo_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Like camo_info for a progress line: where stderr is a terminal it is redrawn in place
 * ("\r" + the line + clear to end of line, no newline) and the next line of any kind
 * replaces it; elsewhere (a pipe, a file, CI) a plain line. train.log gets a plain line. */
void camo_progress(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void camo_print(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void camo_print_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Appends every later line to `path`, after a line "==== <local time>  <marker>" (runs and
 * resumes appended to one file stay apart) and the lines logged before this call (at most
 * 64 KiB of them). 0, or -1 + error. */
int camo_log_open(const char *path, const char *marker);
/* Closes the log; later lines go to the console only (and wait for the next log). */
void camo_log_close(void);

double camo_now(void); /* monotonic seconds */
/* This process's resident memory in bytes (peak: its high-water mark); 0 if unknown. */
size_t camo_rss_bytes(int peak);

/* 32-bit FNV-1a: used for deterministic test weights, name hashing and checksums of weights.
 * camo_fnv1a_bytes continues hash h (CAMO_FNV1A_INIT to start) over n bytes at p, so a
 * checksum of several blocks is a chain of calls; camo_fnv1a hashes a string. */
#define CAMO_FNV1A_INIT 2166136261u
uint32_t camo_fnv1a_bytes(uint32_t h, const void *p, size_t n);
uint32_t camo_fnv1a(const char *s);

/* Counter-based random numbers: a value depends only on (key, counter), never on a thread's
 * state, so every replica/worker count sees the same randomness (DESIGN.md item 3). */
uint64_t camo_hash64(uint64_t x);
float camo_rand_uniform(uint64_t key, uint64_t counter);          /* [0, 1) */
float camo_rand_normal(uint64_t key, uint64_t counter);

#define CAMO_MIN(a, b) ((a) < (b) ? (a) : (b))
#define CAMO_MAX(a, b) ((a) > (b) ? (a) : (b))

/* A JSON number (%.6g), or null for NaN and infinities, which JSON lacks. */
void camo_json_number(FILE *f, double v);

#endif
