/* barrier.c: the abortable, timed group barrier of barrier.h: a generation counter under one
 * mutex and condition variable. Each rank records the generation it arrived at, so that a
 * timeout can name the ranks that never came. */
#include "core/barrier.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <time.h>

#include "core/common.h"

struct camo_barrier {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int n, arrived, aborted;
    unsigned long gen;          /* completed barriers */
    unsigned long *arrived_gen; /* per rank: gen + 1 of its last arrival */
    double timeout_s;
    char reason[512];
};

camo_barrier *camo_barrier_create(int n, double timeout_s) {
    camo_barrier *b = camo_calloc(1, sizeof *b);
    pthread_mutex_init(&b->mu, NULL);
    pthread_cond_init(&b->cv, NULL);
    b->n = n;
    b->timeout_s = timeout_s;
    b->arrived_gen = camo_calloc((size_t)(n > 0 ? n : 1), sizeof *b->arrived_gen);
    return b;
}

void camo_barrier_free(camo_barrier *b) {
    if (!b) return;
    pthread_mutex_destroy(&b->mu);
    pthread_cond_destroy(&b->cv);
    free(b->arrived_gen);
    free(b);
}

double camo_barrier_timeout(const camo_barrier *b) { return b->timeout_s; }

static void abort_locked(camo_barrier *b, const char *reason) {
    if (!b->aborted) {
        b->aborted = 1;
        snprintf(b->reason, sizeof b->reason, "%s", reason && reason[0] ? reason : "aborted");
    }
    pthread_cond_broadcast(&b->cv);
}

void camo_barrier_abort(camo_barrier *b, const char *reason) {
    pthread_mutex_lock(&b->mu);
    abort_locked(b, reason);
    pthread_mutex_unlock(&b->mu);
}

int camo_barrier_aborted(camo_barrier *b) {
    pthread_mutex_lock(&b->mu);
    int a = b->aborted;
    pthread_mutex_unlock(&b->mu);
    return a;
}

int camo_barrier_fail(camo_barrier *b) {
    pthread_mutex_lock(&b->mu);
    CAMO_ERR("comm aborted: %s", b->reason);
    pthread_mutex_unlock(&b->mu);
    return -1;
}

void camo_barrier_timeout_text(const camo_barrier *b, int waiter,
                               int (*late)(const void *arg, int r, int waiter),
                               const void *arg, char *buf, size_t size) {
    size_t len = (size_t)snprintf(buf, size, "collective timed out after %g s", b->timeout_s);
    size_t mark = len;
    for (int r = 0; r < b->n && len + 56 < size; r++) /* room left for the tail */
        if (late(arg, r, waiter))
            len += (size_t)snprintf(buf + len, size - len, "%s%d",
                                    len > mark ? ", " : ": replica ", r);
    if (len > mark && len < size)
        snprintf(buf + len, size - len, " did not join (replica %d waited)", waiter);
}

/* rank r has not arrived at the barrier `waiter` waits at (under b->mu) */
static int arrival_late(const void *arg, int r, int waiter) {
    const camo_barrier *b = arg;
    return b->arrived_gen[r] != b->arrived_gen[waiter];
}

static void deadline_after(struct timespec *ts, double s) {
    clock_gettime(CLOCK_REALTIME, ts);
    double whole = (double)(time_t)s;
    ts->tv_sec += (time_t)s;
    ts->tv_nsec += (long)((s - whole) * 1e9);
    if (ts->tv_nsec >= 1000000000L) { ts->tv_sec++; ts->tv_nsec -= 1000000000L; }
}

/* Under b->mu: arrives and waits for the others. 1 when all came; 0 when the group was
 * aborted first, by a peer or by this rank's own timeout. */
static int arrive_locked(camo_barrier *b, int rank, double timeout_s) {
    unsigned long gen = b->gen;
    b->arrived_gen[rank] = gen + 1;
    if (++b->arrived == b->n) {
        b->arrived = 0;
        b->gen++;
        pthread_cond_broadcast(&b->cv);
        return 1;
    }
    struct timespec dl;
    if (timeout_s > 0) deadline_after(&dl, timeout_s);
    while (gen == b->gen && !b->aborted) {
        int w = timeout_s > 0 ? pthread_cond_timedwait(&b->cv, &b->mu, &dl)
                                 : pthread_cond_wait(&b->cv, &b->mu);
        if (w == ETIMEDOUT && gen == b->gen) {
            char why[256];
            camo_barrier_timeout_text(b, rank, arrival_late, b, why, sizeof why);
            abort_locked(b, why);
        }
    }
    return gen != b->gen; /* the last rank came, even if an abort followed */
}

static int wait_with(camo_barrier *b, int rank, void (*on_arrive)(void *arg, int rank),
                     void *arg, double timeout_s) {
    pthread_mutex_lock(&b->mu);
    int ok = !b->aborted;
    if (ok && on_arrive) on_arrive(arg, rank);
    if (ok) ok = arrive_locked(b, rank, timeout_s);
    if (!ok) CAMO_ERR("comm aborted: %s", b->reason);
    pthread_mutex_unlock(&b->mu);
    return ok ? 0 : -1;
}

int camo_barrier_wait_with(camo_barrier *b, int rank, void (*on_arrive)(void *arg, int rank),
                           void *arg) {
    return wait_with(b, rank, on_arrive, arg, b->timeout_s);
}

int camo_barrier_wait(camo_barrier *b, int rank) {
    return wait_with(b, rank, NULL, NULL, b->timeout_s);
}

int camo_barrier_wait_untimed(camo_barrier *b, int rank) {
    return wait_with(b, rank, NULL, NULL, 0);
}
