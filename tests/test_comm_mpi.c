/* test_comm_mpi.c: the cpu and host comms over processes (camo_comm_cpu_create_span, core/mpi.h),
 * run by tests/test_mpi.sh as `mpirun -np 2`: each process runs 2 replica threads, 4 global
 * ranks in all. Every collective's result on every rank against sums done here in the order
 * the comm promises (local ranks in rank order, then processes in process order: bitwise),
 * broadcasts from a root in either process, the bucket-sized sums of DDP split in calls of
 * any size, and a process that joins late: the other's ranks time out within the limit
 * with the MPI wait's reason. Alone (no mpirun) every test is skipped. */
#include "test_util.h"

#include <pthread.h>
#include <time.h>

#include "backend/comm.h"
#include "core/common.h"
#include "core/mpi.h"

#define NL 2            /* replica threads per process */
#define NP 2            /* processes */
#define NW (NL * NP)    /* global ranks */
#define LEN 100003      /* uneven chunks among local ranks and among processes */

typedef struct rank_arg {
    camo_comm *c, *h;
    int rc;
    char err[512];
    float *data, *bcast, *root_sum, *split;
    float gathered[NW * 3];
    double host[3];
    double seconds;
} rank_arg;

static rank_arg args[NL];

static float value(int rank, int i) {
    return (float)((rank + 1) * 0.37 + i * 1e-3 + 1.0 / (i + 3));
}

/* the promised order: ((r0 + r1) + (r2 + r3)) for 2 x 2 */
static float want_sum(int i) {
    float total = 0;
    for (int p = 0; p < NP; p++) {
        float part = value(p * NL, i);
        for (int l = 1; l < NL; l++) part += value(p * NL + l, i);
        total = p ? total + part : part;
    }
    return total;
}

static int skip_alone(void) { return camo_mpi_size() != NP; }

static void *collectives(void *p) {
    rank_arg *a = p;
    camo_comm *c = a->c;
    for (int i = 0; i < LEN; i++)
        a->data[i] = a->bcast[i] = a->root_sum[i] = a->split[i] = value(c->rank, i);
    float in[3] = {(float)c->rank, c->rank * 10.0f, -1.0f};
    a->host[0] = c->rank;
    a->host[1] = 0.1 * (c->rank + 1); /* inexact: the order shows in the bits */
    a->host[2] = -1e17 * (c->rank == 0) + 1.0;
    a->rc = c->all_reduce_sum(c, a->data, LEN) || c->broadcast(c, a->bcast, LEN, 3) ||
            c->reduce_to_root(c, a->root_sum, LEN, 2) || c->all_gather(c, a->gathered, in, 3) ||
            c->all_reduce_sum(c, a->split, 1000) || /* DDP's buckets: any split */
            c->all_reduce_sum(c, a->split + 1000, LEN - 1000) ||
            a->h->all_reduce_host(a->h, a->host, 3) || c->barrier(c) || a->h->barrier(a->h) ||
            c->wait(c);
    if (a->rc) snprintf(a->err, sizeof a->err, "%s", camo_last_error());
    return NULL;
}

static void run_ranks(camo_comm **comms, camo_comm **hosts, void *(*fn)(void *)) {
    pthread_t t[NL];
    for (int r = 0; r < NL; r++) {
        args[r].c = comms[r];
        args[r].h = hosts ? hosts[r] : NULL;
        args[r].rc = 0;
        args[r].err[0] = 0;
        assert_int_equal(pthread_create(&t[r], NULL, fn, &args[r]), 0);
    }
    for (int r = 0; r < NL; r++) pthread_join(t[r], NULL);
}

static void make_group(camo_comm **comms, double timeout_s, int host) {
    camo_comm_span span = {camo_mpi_group_create(timeout_s), camo_mpi_rank() * NL, NW};
    assert_non_null(span.xp);
    assert_int_equal(host ? camo_comm_host_create_span(NL, timeout_s, &span, comms)
                          : camo_comm_cpu_create_span(NL, timeout_s, &span, comms), 0);
}

static void test_collectives(void **state) {
    (void)state;
    if (skip_alone()) skip();
    camo_comm *comms[NL], *hosts[NL];
    make_group(comms, 20, 0);
    make_group(hosts, 20, 1);
    assert_int_equal(comms[1]->rank, camo_mpi_rank() * NL + 1);
    assert_int_equal(comms[1]->size, NW);
    run_ranks(comms, hosts, collectives);
    double hw[3] = {0, 0, 0};
    for (int p = 0; p < NP; p++) {
        double part[3] = {0, 0, 0};
        for (int l = 0; l < NL; l++) {
            int r = p * NL + l;
            part[0] += r;
            part[1] += 0.1 * (r + 1);
            part[2] += -1e17 * (r == 0) + 1.0;
        }
        for (int k = 0; k < 3; k++) hw[k] = p ? hw[k] + part[k] : part[k];
    }
    for (int l = 0; l < NL; l++) {
        rank_arg *a = &args[l];
        int r = comms[l]->rank;
        if (a->rc) fprintf(stderr, "rank %d: %s\n", r, a->err);
        assert_int_equal(a->rc, 0);
        int bad = 0;
        for (int i = 0; i < LEN; i++) {
            float w = want_sum(i);
            bad += a->data[i] != w || a->split[i] != w || a->bcast[i] != value(3, i) ||
                   (r == 2 && a->root_sum[i] != w);
        }
        assert_int_equal(bad, 0);
        for (int k = 0; k < NW; k++) {
            assert_true(a->gathered[k * 3] == (float)k);
            assert_true(a->gathered[k * 3 + 1] == k * 10.0f);
        }
        for (int k = 0; k < 3; k++) assert_true(a->host[k] == hw[k]);
    }
    for (int l = 0; l < NL; l++) {
        comms[l]->destroy(comms[l]);
        hosts[l]->destroy(hosts[l]);
    }
}

/* Process 1 joins 2 s late, process 0 waits at most 0.5 s: process 0's ranks fail with the
 * MPI wait's timeout (not "replica 0 did not join"), and soon. Process 1 then finds its
 * peer gone and times out as well. Last test: requests stay pending after a timeout (a
 * real run ends in MPI_Abort). */
static void *late_process(void *p) {
    rank_arg *a = p;
    camo_comm *c = a->c;
    if (camo_mpi_rank() == 1) nanosleep(&(struct timespec){2, 0}, NULL);
    double t0 = camo_now();
    a->rc = c->all_reduce_sum(c, a->data, LEN);
    if (a->rc) snprintf(a->err, sizeof a->err, "%s", camo_last_error());
    a->seconds = camo_now() - t0;
    return NULL;
}

static void test_late_process_times_out(void **state) {
    (void)state;
    if (skip_alone()) skip();
    camo_comm *comms[NL];
    make_group(comms, 0.5, 0);
    run_ranks(comms, NULL, late_process);
    for (int l = 0; l < NL; l++) {
        if (camo_mpi_rank() == 0 || args[l].rc)
            fprintf(stderr, "process %d rank %d: %.2f s: %s\n", camo_mpi_rank(), comms[l]->rank,
                    args[l].seconds, args[l].err);
        if (camo_mpi_rank() != 0) continue;
        assert_int_not_equal(args[l].rc, 0);
        assert_non_null(strstr(args[l].err, "timed out after 0.5 s: process 0 of 2 waited in "
                                            "an MPI all-reduce"));
        assert_true(args[l].seconds >= 0.45 && args[l].seconds < 1.9);
    }
    for (int l = 0; l < NL; l++) comms[l]->destroy(comms[l]);
}

int main(void) {
    if (camo_mpi_init()) {
        fprintf(stderr, "%s\n", camo_last_error());
        return 1;
    }
    for (int l = 0; l < NL; l++) {
        args[l].data = camo_malloc(4 * LEN * sizeof(float));
        args[l].bcast = args[l].data + LEN;
        args[l].root_sum = args[l].data + 2 * LEN;
        args[l].split = args[l].data + 3 * LEN;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_collectives),
        cmocka_unit_test(test_late_process_times_out),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    /* args[].data stays: the timed-out collective may still be in MPI's hands */
    if (rc == 0) camo_mpi_finalize();
    else camo_mpi_abort(1);
    return rc;
}
