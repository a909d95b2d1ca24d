/* test_comm.c: the cpu comm between real threads: every collective's result on every
 * rank against a sum done here in rank order (so bitwise), abort waking blocked ranks,
 * and the timeout when a rank never arrives; the host comm (the control comm of GPU
 * replicas): the same host sums, float collectives refused with an abort, the timeout. */
#include "test_util.h"

#include <pthread.h>

#include "backend/comm.h"
#include "core/common.h"

#define NR 4
#define LEN 1003  /* not a multiple of NR: uneven chunks */

typedef struct rank_arg {
    camo_comm *c;
    int rc;
    char err[256];
    float data[LEN], bcast[LEN], root_sum[LEN], gathered[NR * 3];
    double host[3];
    double seconds;   /* time the blocked op took (abort / timeout tests) */
} rank_arg;

static rank_arg args[NR];

static float value(int rank, int i) { return (float)((rank + 1) * 0.37 + i * 1e-3 + 1.0 / (i + 3)); }

static void *collectives(void *p) {
    rank_arg *a = p;
    camo_comm *c = a->c;
    for (int i = 0; i < LEN; i++) a->data[i] = a->bcast[i] = a->root_sum[i] = value(c->rank, i);
    float in[3] = {(float)c->rank, c->rank * 10.0f, -1.0f};
    a->host[0] = c->rank;
    a->host[1] = 1.0;
    a->host[2] = 0.5 * c->rank;
    a->rc = c->all_reduce_sum(c, a->data, LEN) || c->broadcast(c, a->bcast, LEN, 2) ||
            c->reduce_to_root(c, a->root_sum, LEN, 1) || c->all_gather(c, a->gathered, in, 3) ||
            c->all_reduce_host(c, a->host, 3) || c->barrier(c) || c->wait(c);
    if (a->rc) snprintf(a->err, sizeof a->err, "%s", camo_last_error());
    return NULL;
}

static void run_ranks(camo_comm **comms, void *(*fn)(void *)) {
    pthread_t t[NR];
    for (int r = 0; r < NR; r++) {
        memset(&args[r], 0, sizeof args[r]);
        args[r].c = comms[r];
        assert_int_equal(pthread_create(&t[r], NULL, fn, &args[r]), 0);
    }
    for (int r = 0; r < NR; r++) pthread_join(t[r], NULL);
}

static void test_collectives(void **state) {
    (void)state;
    camo_comm *comms[NR];
    assert_int_equal(camo_comm_cpu_create(NR, 10, comms), 0);
    run_ranks(comms, collectives);
    for (int r = 0; r < NR; r++) {
        if (args[r].rc) fprintf(stderr, "rank %d: %s\n", r, args[r].err);
        assert_int_equal(args[r].rc, 0);
        for (int i = 0; i < LEN; i++) {
            float want = value(0, i);
            for (int k = 1; k < NR; k++) want += value(k, i); /* rank order: bitwise */
            assert_true(args[r].data[i] == want);
            assert_true(args[r].bcast[i] == value(2, i));
            if (r == 1) assert_true(args[r].root_sum[i] == want);
        }
        for (int k = 0; k < NR; k++) {
            assert_true(args[r].gathered[k * 3] == (float)k);
            assert_true(args[r].gathered[k * 3 + 1] == k * 10.0f);
        }
        assert_true(args[r].host[0] == 6.0 && args[r].host[1] == NR && args[r].host[2] == 3.0);
    }
    for (int r = 0; r < NR; r++) comms[r]->destroy(comms[r]);
}

/* ranks 0..NR-2 block in an all-reduce; the last rank aborts instead of joining */
static void *abort_or_wait(void *p) {
    rank_arg *a = p;
    camo_comm *c = a->c;
    double t0 = camo_now();
    if (c->rank == NR - 1) {
        struct timespec ts = {0, 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
        c->abort(c, "replica 3 failed: test");
        a->rc = -1;
    } else {
        a->rc = c->all_reduce_sum(c, a->data, LEN);
        if (a->rc) snprintf(a->err, sizeof a->err, "%s", camo_last_error());
    }
    a->seconds = camo_now() - t0;
    return NULL;
}

static void test_abort_wakes_everyone(void **state) {
    (void)state;
    camo_comm *comms[NR];
    assert_int_equal(camo_comm_cpu_create(NR, 0 /* no timeout: only the abort can wake */, comms), 0);
    run_ranks(comms, abort_or_wait);
    for (int r = 0; r < NR - 1; r++) {
        assert_int_not_equal(args[r].rc, 0);
        assert_non_null(strstr(args[r].err, "replica 3 failed: test"));
        assert_true(args[r].seconds < 5);
    }
    /* later ops of every rank fail at once */
    assert_true(comms[0]->aborted(comms[0]));
    assert_int_not_equal(comms[1]->barrier(comms[1]), 0);
    assert_int_not_equal(comms[2]->wait(comms[2]), 0);
    for (int r = 0; r < NR; r++) comms[r]->destroy(comms[r]);
}

/* rank NR-1 never arrives: the others time out */
static void *absent_rank(void *p) {
    rank_arg *a = p;
    camo_comm *c = a->c;
    if (c->rank == NR - 1) return NULL;
    double t0 = camo_now();
    a->rc = c->broadcast(c, a->data, LEN, 0);
    if (a->rc) snprintf(a->err, sizeof a->err, "%s", camo_last_error());
    a->seconds = camo_now() - t0;
    return NULL;
}

static void test_timeout(void **state) {
    (void)state;
    camo_comm *comms[NR];
    assert_int_equal(camo_comm_cpu_create(NR, 0.3, comms), 0);
    run_ranks(comms, absent_rank);
    for (int r = 0; r < NR - 1; r++) {
        assert_int_not_equal(args[r].rc, 0);
        assert_non_null(strstr(args[r].err, "timed out after 0.3 s: replica 3 did not join"));
        assert_true(args[r].seconds >= 0.25 && args[r].seconds < 5);
    }
    for (int r = 0; r < NR; r++) comms[r]->destroy(comms[r]);
}

static void test_single_rank(void **state) {
    (void)state;
    camo_comm *c;
    assert_int_equal(camo_comm_cpu_create(1, 1, &c), 0);
    float x[3] = {1, 2, 3};
    assert_int_equal(c->all_reduce_sum(c, x, 3), 0);
    assert_true(x[0] == 1 && x[1] == 2 && x[2] == 3);
    c->destroy(c);
    camo_comm *bad;
    assert_int_not_equal(camo_comm_cpu_create(0, 1, &bad), 0);
}

/* ---- the host comm: host sums as the cpu comm, float collectives refused ---- */

/* ranks 0..NR-2 wait at the barrier; the last rank calls a float collective on the host
 * comm, which must fail at once and abort the group, waking the others */
static void *misuse_or_wait(void *p) {
    rank_arg *a = p;
    camo_comm *c = a->c;
    double t0 = camo_now();
    if (c->rank == NR - 1) {
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
        a->rc = c->all_reduce_sum(c, a->data, LEN);
    } else {
        a->rc = c->barrier(c);
    }
    if (a->rc) snprintf(a->err, sizeof a->err, "%s", camo_last_error());
    a->seconds = camo_now() - t0;
    return NULL;
}

static void *host_sums(void *p) {
    rank_arg *a = p;
    camo_comm *c = a->c;
    a->host[0] = c->rank;
    a->host[1] = 0.1 * (c->rank + 1); /* inexact: the order of the adds shows in the bits */
    a->host[2] = -1e17 * (c->rank == 0) + 1.0;
    a->rc = c->all_reduce_host(c, a->host, 3) || c->barrier(c) || c->wait(c);
    if (a->rc) snprintf(a->err, sizeof a->err, "%s", camo_last_error());
    return NULL;
}

static void test_host_comm_sums(void **state) {
    (void)state;
    camo_comm *comms[NR];
    double want[3] = {0, 0, 0};
    for (int r = 0; r < NR; r++) { /* rank order, as the cpu and GPU comms sum */
        want[0] += r;
        want[1] += 0.1 * (r + 1);
        want[2] += -1e17 * (r == 0) + 1.0;
    }
    assert_int_equal(camo_comm_host_create(NR, 10, comms), 0);
    assert_string_equal(comms[0]->name, "host");
    run_ranks(comms, host_sums);
    for (int r = 0; r < NR; r++) {
        if (args[r].rc) fprintf(stderr, "rank %d: %s\n", r, args[r].err);
        assert_int_equal(args[r].rc, 0);
        for (int i = 0; i < 3; i++) assert_true(args[r].host[i] == want[i]);
    }
    for (int r = 0; r < NR; r++) comms[r]->destroy(comms[r]);
}

static void test_host_comm_refuses_floats(void **state) {
    (void)state;
    camo_comm *comms[NR];
    assert_int_equal(camo_comm_host_create(NR, 0 /* no timeout: only the abort wakes */, comms), 0);
    run_ranks(comms, misuse_or_wait);
    for (int r = 0; r < NR; r++) {
        assert_int_not_equal(args[r].rc, 0);
        assert_non_null(strstr(args[r].err, "replica 3: all_reduce_sum on the host comm"));
        assert_true(args[r].seconds < 5);
    }
    float x = 1;
    assert_int_not_equal(comms[0]->broadcast(comms[0], &x, 1, 0), 0);
    assert_int_not_equal(comms[1]->reduce_to_root(comms[1], &x, 1, 0), 0);
    assert_int_not_equal(comms[2]->all_gather(comms[2], &x, &x, 1), 0);
    assert_true(x == 1); /* nothing was touched */
    for (int r = 0; r < NR; r++) comms[r]->destroy(comms[r]);
}

/* a stalled rank: the host comm times out naming it, like the cpu comm */
static void *absent_rank_host(void *p) {
    rank_arg *a = p;
    camo_comm *c = a->c;
    if (c->rank == 2) return NULL;
    double t0 = camo_now();
    a->rc = c->all_reduce_host(c, a->host, 3);
    if (a->rc) snprintf(a->err, sizeof a->err, "%s", camo_last_error());
    a->seconds = camo_now() - t0;
    return NULL;
}

static void test_host_comm_timeout(void **state) {
    (void)state;
    camo_comm *comms[NR];
    assert_int_equal(camo_comm_host_create(NR, 0.3, comms), 0);
    run_ranks(comms, absent_rank_host);
    for (int r = 0; r < NR; r++) {
        if (r == 2) continue;
        assert_int_not_equal(args[r].rc, 0);
        assert_non_null(strstr(args[r].err, "timed out after 0.3 s: replica 2 did not join"));
        assert_true(args[r].seconds >= 0.25 && args[r].seconds < 5);
    }
    for (int r = 0; r < NR; r++) comms[r]->destroy(comms[r]);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_collectives),
        cmocka_unit_test(test_abort_wakes_everyone),
        cmocka_unit_test(test_timeout),
        cmocka_unit_test(test_single_rank),
        cmocka_unit_test(test_host_comm_sums),
        cmocka_unit_test(test_host_comm_refuses_floats),
        cmocka_unit_test(test_host_comm_timeout),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
