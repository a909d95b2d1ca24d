/* common.c: error buffer, checked allocation, logging (console and the run's train.log),
 * hashing. */
#include "core/common.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static _Thread_local char error_buf[1024];

static void log_line(FILE *console, const char *prefix, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

void camo_set_error(const char *file, int line, const char *fmt, ...) {
    /* errors about the user's input name the user's file/key, not our source line
     * (camo_set_error_at is for failures where our line is the useful part) */
    (void)file; (void)line;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(error_buf, sizeof error_buf, fmt, ap);
    va_end(ap);
}

/* "cuda/comm.cu" from whatever path the compiler was given for it (an out-of-tree or
 * absolute build): the part from the last project folder on. */
static const char *project_path(const char *file) {
    const char *dirs[] = {"/cuda/", "/src/", "/tools/", "/tests/"}, *best = NULL;
    for (size_t i = 0; i < sizeof dirs / sizeof dirs[0]; i++) {
        const char *p = strstr(file, dirs[i]);
        for (; p; p = strstr(p + 1, dirs[i]))
            if (!best || p > best) best = p;
    }
    return best ? best + 1 : file;
}

void camo_set_error_at(const char *file, int line, const char *fmt, ...) {
    int n = snprintf(error_buf, sizeof error_buf, "%s:%d: ", project_path(file), line);
    size_t off = n > 0 && (size_t)n < sizeof error_buf ? (size_t)n : 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(error_buf + off, sizeof error_buf - off, fmt, ap);
    va_end(ap);
}

const char *camo_last_error(void) { return error_buf[0] ? error_buf : "unknown error"; }
void camo_clear_error(void) { error_buf[0] = 0; }

void camo_die(const char *file, int line, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    log_line(stderr, "camotrain: fatal ", "(%s:%d): %s", file, line, msg); /* also in the log */
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

/* ---- logging ----
 * A line goes to the console and, once a run has opened its log (camo_log_open), to that
 * file as well, whatever --quiet says. Lines logged before the log opens (config, data,
 * devices) wait in a bounded backlog and are written first, so the file begins where the
 * console did. Replica, loader and comm threads log too: the file is written under a lock,
 * one whole line at a time, and flushed, so a crash loses nothing already printed. */

#define LOG_BACKLOG_MAX (64u << 10)

static struct {
    pthread_mutex_t mu;
    int quiet;
    FILE *file;
    char *backlog;
    size_t backlog_len;
    int dropped;          /* lines that did not fit the backlog */
    int tty;              /* stderr is a terminal: -1 until first asked */
    int progress_open;    /* a progress line, without its newline, ends stderr */
} log_state = {.mu = PTHREAD_MUTEX_INITIALIZER, .tty = -1};

void camo_log_set_quiet(int quiet) { log_state.quiet = quiet; }

/* Into the run's log, or the backlog while no log is open. */
static void log_record(const char *line, size_t n) {
    pthread_mutex_lock(&log_state.mu);
    if (log_state.file) {
        fwrite(line, 1, n, log_state.file);
        fflush(log_state.file);
    } else if (log_state.backlog_len + n <= LOG_BACKLOG_MAX &&
               (log_state.backlog || (log_state.backlog = malloc(LOG_BACKLOG_MAX)))) {
        /* plain malloc: camo_malloc's failure path logs, and the lock is held here */
        memcpy(log_state.backlog + log_state.backlog_len, line, n);
        log_state.backlog_len += n;
    } else {
        log_state.dropped++;
    }
    pthread_mutex_unlock(&log_state.mu);
}

/* Shows a line (with its newline) on the console. A progress line on a terminal is drawn
 * over the previous one and keeps no newline; any line after it starts by erasing it
 * ("\r\033[K"), so finished lines scroll up and the next progress line redraws below.
 * Under the lock: replica and loader threads print too. */
static void console_put(FILE *console, const char *line, size_t len, int progress) {
    pthread_mutex_lock(&log_state.mu);
    if (log_state.tty < 0) log_state.tty = isatty(fileno(stderr));
    int redraw = progress && log_state.tty && console == stderr;
    if (log_state.progress_open) fputs("\r\033[K", stderr);
    if (redraw) fwrite(line, 1, len - 1, stderr); /* no newline: the next line overwrites */
    else fputs(line, console);
    log_state.progress_open = redraw;
    fflush(stderr);
    fflush(console); /* stdout too: the console and the file show the same order */
    pthread_mutex_unlock(&log_state.mu);
}

/* Formats prefix + message + newline, shows it on `console` (NULL: not shown) and records
 * it: in the file always as a plain line. */
static void log_emit_ex(FILE *console, const char *prefix, int progress, const char *fmt,
                        va_list ap) {
    char small[1024], *line = small;
    va_list aq;
    va_copy(aq, ap);
    int n = vsnprintf(NULL, 0, fmt, aq);
    va_end(aq);
    size_t plen = strlen(prefix), len = plen + (size_t)(n > 0 ? n : 0) + 1;
    if (len + 1 > sizeof small) line = camo_malloc(len + 1);
    memcpy(line, prefix, plen);
    vsnprintf(line + plen, len - plen, fmt, ap);
    line[len - 1] = '\n';
    line[len] = 0;
    if (console) console_put(console, line, len, progress);
    log_record(line, len);
    if (line != small) free(line);
}

static void log_emit(FILE *console, const char *prefix, const char *fmt, va_list ap) {
    log_emit_ex(console, prefix, 0, fmt, ap);
}

void camo_progress(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    log_emit_ex(log_state.quiet ? NULL : stderr, "", 1, fmt, ap);
    va_end(ap);
}

void camo_info(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    log_emit(log_state.quiet ? NULL : stderr, "", fmt, ap);
    va_end(ap);
}

void camo_warn(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    log_emit(stderr, "camotrain: warning: ", fmt, ap);
    va_end(ap);
}

void camo_print(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    log_emit(stdout, "", fmt, ap);
    va_end(ap);
}

void camo_print_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    log_emit(stderr, "camotrain: error: ", fmt, ap);
    va_end(ap);
}

static void log_line(FILE *console, const char *prefix, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    log_emit(console, prefix, fmt, ap);
    va_end(ap);
}

int camo_log_open(const char *path, const char *marker) {
    FILE *f = fopen(path, "a");
    if (!f) {
        CAMO_ERR("%s: cannot open the log: %s", path, strerror(errno));
        return -1;
    }
    char when[64] = "";
    time_t now = time(NULL);
    struct tm tm;
    if (localtime_r(&now, &tm)) strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S", &tm);
    pthread_mutex_lock(&log_state.mu);
    if (log_state.file) fclose(log_state.file);
    fprintf(f, "==== %s  %s\n", when, marker);
    if (log_state.dropped)
        fprintf(f, "(%d earlier lines were not kept)\n", log_state.dropped);
    fwrite(log_state.backlog ? log_state.backlog : "", 1, log_state.backlog_len, f);
    fflush(f);
    log_state.backlog_len = 0;
    log_state.dropped = 0;
    log_state.file = f;
    pthread_mutex_unlock(&log_state.mu);
    return 0;
}

void camo_log_close(void) {
    pthread_mutex_lock(&log_state.mu);
    if (log_state.progress_open) fputs("\n", stderr); /* the shell's prompt on a line of its own */
    log_state.progress_open = 0;
    if (log_state.file) fclose(log_state.file);
    log_state.file = NULL;
    free(log_state.backlog);
    log_state.backlog = NULL;
    log_state.backlog_len = 0;
    log_state.dropped = 0;
    pthread_mutex_unlock(&log_state.mu);
}

double camo_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

uint32_t camo_fnv1a_bytes(uint32_t h, const void *p, size_t n) {
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 16777619u;
    return h;
}

uint32_t camo_fnv1a(const char *s) { return camo_fnv1a_bytes(CAMO_FNV1A_INIT, s, strlen(s)); }

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

void camo_json_number(FILE *f, double v) {
    if (isfinite(v)) fprintf(f, "%.6g", v);
    else fputs("null", f);
}

size_t camo_rss_bytes(int peak) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return 0;
    const char *key = peak ? "VmHWM:" : "VmRSS:";
    char line[256];
    size_t kb = 0;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, key, strlen(key))) { kb = strtoull(line + strlen(key), NULL, 10); break; }
    fclose(f);
    return kb * 1024;
}
