/* mpi_stub.c: what core/mpi.h needs in every build (is this process under a launcher?),
 * and the whole API for builds without MPI (make finds no OpenMPI, or MPI=0): one process,
 * rank 0 of 1, every group NULL and every collective a no-op. Such a build started as one
 * of several processes refuses to run rather than train P separate copies. */
#include "core/mpi.h"

#include <stdlib.h>

#include "core/common.h"

int camo_mpi_launched(void) {
    return getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMI_SIZE") || getenv("PMIX_RANK");
}

#ifndef CAMO_HAVE_MPI

/* The size the launcher announced (0: none). */
static int launched_size(void) {
    const char *names[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "SLURM_NTASKS"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        const char *v = getenv(names[i]);
        if (v && atoi(v) > 0 && (i < 3 || getenv("PMIX_RANK"))) return atoi(v);
    }
    return getenv("PMIX_RANK") ? 1 : 0;
}

int camo_mpi_init(void) {
    int n = camo_mpi_launched() ? launched_size() : 0;
    if (n > 1) {
        CAMO_ERR("started as one of %d MPI processes, but this camotrain was built without "
                 "MPI (OpenMPI not found at build time: install libopenmpi-dev with "
                 "tools/install_deps.sh and rebuild); refusing to train %d separate copies", n, n);
        return -1;
    }
    return 0;
}

int camo_mpi_rank(void) { return 0; }
int camo_mpi_size(void) { return 1; }
int camo_mpi_local_size(void) { return 1; }
int camo_mpi_local_rank(void) { return 0; }
int camo_mpi_local_peer(int l, const char **visible) {
    *visible = getenv("CUDA_VISIBLE_DEVICES");
    return l;
}
const char *camo_mpi_library(void) { return "none"; }
void camo_mpi_finalize(void) {}
void camo_mpi_abort(int code) { (void)code; }

camo_mpi_group *camo_mpi_group_create(double timeout_s) {
    (void)timeout_s;
    return NULL;
}
camo_mpi_group *camo_mpi_group_create_await(double timeout_s, int root, double wait_s,
                                            const char *what) {
    (void)timeout_s, (void)root, (void)wait_s, (void)what;
    return NULL;
}
void camo_mpi_group_free(camo_mpi_group *g) { (void)g; }
double camo_mpi_group_timeout(const camo_mpi_group *g) {
    (void)g;
    return 0;
}

int camo_mpi_sum_floats(camo_mpi_group *g, float *data, size_t n, camo_barrier *bar) {
    (void)g, (void)data, (void)n, (void)bar;
    return 0;
}
int camo_mpi_sum_doubles(camo_mpi_group *g, double *data, size_t n, camo_barrier *bar) {
    (void)g, (void)data, (void)n, (void)bar;
    return 0;
}
int camo_mpi_bcast(camo_mpi_group *g, void *data, size_t n, int root, camo_barrier *bar) {
    (void)g, (void)data, (void)n, (void)root, (void)bar;
    return 0;
}
int camo_mpi_all_gather(camo_mpi_group *g, void *out, size_t n, camo_barrier *bar) {
    (void)g, (void)out, (void)n, (void)bar;
    return 0;
}
int camo_mpi_barrier(camo_mpi_group *g, camo_barrier *bar) {
    (void)g, (void)bar;
    return 0;
}
int camo_mpi_max_int(camo_mpi_group *g, int *v, camo_barrier *bar) {
    (void)g, (void)v, (void)bar;
    return 0;
}

#endif
