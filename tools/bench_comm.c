/* bench_comm.c: `make bench`: the cpu comm's all-reduce between replica threads on a
 * DDP-bucket-sized buffer (25 MB) and on fpn_r18's whole gradient (46 MB), for 2 and 4
 * ranks. Prints the time per all-reduce and its effective bandwidth (bytes of one rank's
 * buffer per second), with the ratio to one thread's read-add-write pass over the same
 * buffer measured in the same run (the all-reduce moves N times that data with N threads).
 * Usage: bench_comm [max_ranks] */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/comm.h"
#include "core/common.h"

#define MIN_SECONDS 0.3

typedef struct {
    camo_comm *c;
    float *buf;
    size_t n;
    int reps;
} rank_job;

static void *run_rank(void *p) {
    rank_job *j = p;
    for (int r = 0; r < j->reps; r++)
        if (j->c->all_reduce_sum(j->c, j->buf, j->n)) CAMO_DIE("all_reduce: %s", camo_last_error());
    return NULL;
}

/* seconds per all-reduce of n floats on `ranks` threads */
static double time_all_reduce(int ranks, size_t n, int reps) {
    camo_comm *comms[8];
    rank_job jobs[8];
    pthread_t t[8];
    if (camo_comm_cpu_create(ranks, 60, comms)) CAMO_DIE("%s", camo_last_error());
    for (int r = 0; r < ranks; r++) {
        jobs[r] = (rank_job){comms[r], camo_malloc(n * sizeof(float)), n, reps};
        for (size_t i = 0; i < n; i++) jobs[r].buf[i] = (float)(i % 97) * 1e-3f;
    }
    double t0 = camo_now();
    for (int r = 0; r < ranks; r++) pthread_create(&t[r], NULL, run_rank, &jobs[r]);
    for (int r = 0; r < ranks; r++) pthread_join(t[r], NULL);
    double s = (camo_now() - t0) / reps;
    for (int r = 0; r < ranks; r++) {
        free(jobs[r].buf);
        comms[r]->destroy(comms[r]);
    }
    return s;
}

/* the reference: y += x over n floats on one thread */
static double time_axpy(size_t n, int *reps_out) {
    float *x = camo_malloc(n * sizeof(float)), *y = camo_malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) { x[i] = 1e-3f; y[i] = 0; }
    int reps = 0;
    double t0 = camo_now(), t;
    do {
        for (size_t i = 0; i < n; i++) y[i] += x[i];
        reps++;
    } while ((t = camo_now() - t0) < MIN_SECONDS);
    volatile float sink = y[n / 2];
    (void)sink;
    free(x);
    free(y);
    *reps_out = reps;
    return t / reps;
}

int main(int argc, char **argv) {
    int max_ranks = argc > 1 ? atoi(argv[1]) : 4;
    if (max_ranks < 2 || max_ranks > 8) max_ranks = 4;
    const size_t sizes[] = {25u << 20, 46u << 20}; /* bytes */
    const char *names[] = {"25 MB bucket", "46 MB (fpn_r18 gradients)"};
    printf("bench_comm: cpu comm all-reduce (sum in rank order, chunk per rank)\n");
    for (int k = 0; k < 2; k++) {
        size_t n = sizes[k] / sizeof(float);
        int reps;
        double ref = time_axpy(n, &reps);
        printf("  %s: reference y += x on 1 thread %.2f ms (%.2f GB/s)\n", names[k], ref * 1e3,
               sizes[k] / ref / 1e9);
        for (int ranks = 2; ranks <= max_ranks; ranks *= 2) {
            int r = CAMO_MAX(2, (int)(MIN_SECONDS / (ref * ranks)) + 1);
            double s = time_all_reduce(ranks, n, r);
            printf("    %d ranks: %.2f ms per all-reduce, %.2f GB/s per rank, %.2fx the reference "
                   "time\n", ranks, s * 1e3, sizes[k] / s / 1e9, s / ref);
        }
    }
    return 0;
}
