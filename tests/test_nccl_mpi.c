/* test_nccl_mpi.c: NCCL over processes, run by tests/test_mpi_gpu.sh as `mpirun -np 2` (on
 * the cuemu build with CAMO_CUEMU_DEVICES=4, or on 4 real GPUs). Process p drives GPUs
 * p*k .. p*k+k-1 (distinct GPUs: NCCL takes one rank per GPU), and process 0's unique id
 * reaches process 1 over MPI, as camotrain does it (src/parallel/devices.c).
 *  - the nccl comm over processes (camo_comm_nccl_create_span) with 1 and 2 GPUs a process:
 *    every collective on every rank against results computed here;
 *  - NCCL itself over 2 x 2 ranks: AllReduce with every op, Reduce, Broadcast and AllGather
 *    on every type (reductions on the types cuemu reduces), a mismatched collective
 *    (ncclInvalidUsage on both processes), an abort that ends a collective whose peers never
 *    come, two processes on one GPU refused.
 * On cuemu, whose NCCL sums in rank order (0 + 1 + 2 + 3), float results must be those bits;
 * real NCCL sums in its own order: within 1e-6. Alone (no mpirun), or without the GPUs,
 * every test is skipped. */
#include "test_util.h"

#include <pthread.h>
#include <time.h>

#include "backend/backend.h"
#include "backend/comm.h"
#include "core/common.h"
#include "core/mpi.h"

#ifdef CAMO_HAVE_CUDA
#include <cuda_runtime.h>
#include <nccl.h>
#endif

#define NP 2     /* processes */
#define MAXK 2   /* GPUs a process */
#define LEN 4099 /* elements a rank */

#ifdef CUEMU_NCCL_H
static const int EXACT = 1; /* cuemu: reductions in rank order, bit for bit */
#else
static const int EXACT = 0;
#endif

static void need(int k) {
    if (camo_mpi_size() != NP || camo_cuda_device_count() < NP * k) skip();
}

/* process 0's NCCL unique id, on every process */
static void shared_id(void *id) {
    camo_mpi_group *g = camo_mpi_group_create(30);
    assert_non_null(g);
    if (camo_mpi_rank() == 0) assert_int_equal(camo_comm_nccl_unique_id(id), 0);
    assert_int_equal(camo_mpi_bcast(g, id, CAMO_NCCL_ID_BYTES, 0, NULL), 0);
    camo_mpi_group_free(g);
}

static int same_float(float got, float want) {
    if (EXACT) return memcmp(&got, &want, sizeof got) == 0;
    return fabsf(got - want) <= 1e-6f * (fabsf(want) + 1);
}

/* ---- the nccl comm over processes ---- */

static float value(int rank, int i) {
    return (float)((rank + 1) * 0.37 + i * 1e-3 + 1.0 / (i + 3)); /* inexact: order shows */
}

static float want_sum(int i, int world) {
    float s = value(0, i);
    for (int r = 1; r < world; r++) s += value(r, i);
    return s;
}

typedef struct rank_arg {
    camo_comm *c;
    camo_backend *be;
    int rc;
    char err[512];
    float *sum, *bcast, *root, *gath;
    double host[2];
} rank_arg;

static void fill(float *h, int rank) {
    for (int i = 0; i < LEN; i++) h[i] = value(rank, i);
}

static void *comm_worker(void *p) {
    rank_arg *a = p;
    camo_comm *c = a->c;
    camo_backend *be = a->be;
    int W = c->size, r = c->rank;
    size_t bytes = LEN * sizeof(float);
    float *h = camo_malloc(bytes), *d = be->alloc(be, bytes), *o = be->alloc(be, bytes * W);
    int rc = !d || !o;
    fill(h, r);
    be->upload(be, d, h, bytes);
    /* DDP's buckets: a sum split in calls of any size */
    rc = rc || c->all_reduce_sum(c, d, 1000) || c->all_reduce_sum(c, d + 1000, LEN - 1000) ||
         c->wait(c);
    if (!rc) be->download(be, a->sum, d, bytes);
    be->upload(be, d, h, bytes);
    rc = rc || c->broadcast(c, d, LEN, W - 1) || c->wait(c); /* from process 1's last rank */
    if (!rc) be->download(be, a->bcast, d, bytes);
    be->upload(be, d, h, bytes);
    rc = rc || c->reduce_to_root(c, d, LEN, 1) || c->wait(c);
    if (!rc) be->download(be, a->root, d, bytes);
    be->upload(be, d, h, bytes);
    rc = rc || c->all_gather(c, o, d, LEN) || c->wait(c);
    if (!rc) be->download(be, a->gath, o, bytes * W);
    a->host[0] = r;
    a->host[1] = 0.1 * (r + 1); /* inexact: the order shows in the bits */
    rc = rc || c->all_reduce_host(c, a->host, 2) || c->barrier(c);
    if (rc) snprintf(a->err, sizeof a->err, "%s", camo_last_error());
    a->rc = rc;
    be->free(be, d);
    be->free(be, o);
    free(h);
    return NULL;
}

static void run_comm_span(int k) {
    need(k);
    int P = camo_mpi_rank(), W = NP * k, devs[MAXK];
    unsigned char id[CAMO_NCCL_ID_BYTES] = {0};
    shared_id(id);
    camo_backend *bes[MAXK];
    void *streams[MAXK];
    camo_comm *comms[MAXK];
    for (int i = 0; i < k; i++) {
        devs[i] = P * k + i;
        bes[i] = camo_backend_cuda_create(devs[i]);
        assert_non_null(bes[i]);
        streams[i] = camo_backend_stream(bes[i]);
    }
    camo_comm_span span = {camo_mpi_group_create(30), P * k, W};
    assert_non_null(span.xp);
    int rc = camo_comm_nccl_create_span(k, devs, streams, 30, &span, id, comms);
    if (rc) fprintf(stderr, "process %d: %s\n", P, camo_last_error());
    assert_int_equal(rc, 0);
    assert_int_equal(comms[0]->rank, P * k);
    assert_int_equal(comms[0]->size, W);
    rank_arg args[MAXK];
    pthread_t t[MAXK];
    for (int i = 0; i < k; i++) {
        args[i] = (rank_arg){.c = comms[i], .be = bes[i]};
        args[i].sum = camo_malloc((size_t)(3 + W) * LEN * sizeof(float));
        args[i].bcast = args[i].sum + LEN;
        args[i].root = args[i].sum + 2 * LEN;
        args[i].gath = args[i].sum + 3 * LEN;
        assert_int_equal(pthread_create(&t[i], NULL, comm_worker, &args[i]), 0);
    }
    for (int i = 0; i < k; i++) pthread_join(t[i], NULL);
    /* host sums: local ranks in order, then processes in order (comm_group.cu) */
    double hw[2] = {0, 0};
    for (int p = 0; p < NP; p++) {
        double part[2] = {0, 0};
        for (int l = 0; l < k; l++) {
            part[0] += p * k + l;
            part[1] += 0.1 * (p * k + l + 1);
        }
        for (int j = 0; j < 2; j++) hw[j] = p ? hw[j] + part[j] : part[j];
    }
    for (int i = 0; i < k; i++) {
        rank_arg *a = &args[i];
        int r = comms[i]->rank, bad = 0;
        if (a->rc) fprintf(stderr, "rank %d: %s\n", r, a->err);
        assert_int_equal(a->rc, 0);
        for (int j = 0; j < LEN; j++) {
            float w = want_sum(j, W);
            bad += !same_float(a->sum[j], w) || a->bcast[j] != value(W - 1, j) ||
                   (r == 1 && !same_float(a->root[j], w));
            for (int q = 0; q < W; q++) bad += a->gath[(size_t)q * LEN + j] != value(q, j);
        }
        if (bad) fprintf(stderr, "rank %d: %d wrong values\n", r, bad);
        assert_int_equal(bad, 0);
        assert_true(a->host[0] == hw[0] && a->host[1] == hw[1]);
        free(a->sum);
    }
    for (int i = 0; i < k; i++) comms[i]->destroy(comms[i]);
    for (int i = 0; i < k; i++) bes[i]->destroy(bes[i]);
}

static void test_comm_2x1(void **state) {
    (void)state;
    run_comm_span(1);
}

static void test_comm_2x2(void **state) {
    (void)state;
    run_comm_span(2);
}

/* ---- NCCL itself over processes ---- */

#ifdef CAMO_HAVE_CUDA

#define K 2           /* GPUs a process */
#define W (NP * K)    /* ranks */

/* element sizes of ncclDataType_t 0..11: int8 uint8 int32 uint32 int64 uint64 half float
 * double bfloat16 fp8e4m3 fp8e5m2 */
static const size_t TSIZE[12] = {1, 1, 4, 4, 8, 8, 2, 4, 8, 2, 1, 1};
static const int REDUCIBLE[] = {ncclInt8, ncclUint8, ncclInt32, ncclUint32, ncclInt64,
                                ncclUint64, ncclFloat32, ncclFloat64};

typedef struct raw {
    int base; /* global rank of local rank 0 */
    ncclComm_t comm[K];
    cudaStream_t st[K];
    void *send[K], *recv[K];
    unsigned char *in[W]; /* every rank's input (each process makes all), LEN * 8 bytes */
    unsigned char *want, *got;
} raw;

/* rank r's element i as type t: small integers (products wrap alike everywhere), inexact
 * floats, any bytes for the types only copied */
static void make_input(unsigned char *out, int r, int t) {
    for (int i = 0; i < LEN; i++) {
        long v = (r * 7 + i * 3) % 11;
        double f = (r + 1) * 0.37 + i * 1e-3 + 1.0 / (i + 3);
        switch (t) {
        case ncclInt8: ((int8_t *)out)[i] = (int8_t)(v - 5); break;
        case ncclUint8: ((uint8_t *)out)[i] = (uint8_t)v; break;
        case ncclInt32: ((int32_t *)out)[i] = (int32_t)(v - 5) * 1000003; break;
        case ncclUint32: ((uint32_t *)out)[i] = (uint32_t)v * 1000003u; break;
        case ncclInt64: ((int64_t *)out)[i] = (int64_t)(v - 5) * 100000000003LL; break;
        case ncclUint64: ((uint64_t *)out)[i] = (uint64_t)v * 100000000003ULL; break;
        case ncclFloat32: ((float *)out)[i] = (float)f; break;
        case ncclFloat64: ((double *)out)[i] = f / 3; break;
        default:
            for (size_t b = 0; b < TSIZE[t]; b++)
                out[i * TSIZE[t] + b] = (unsigned char)(r * 31 + i * 7 + (int)b + t);
        }
    }
}

/* want = in[0] op in[1] op ... in rank order, in the type's own arithmetic (integers wrap) */
#define FOLD(T, U, FLT)                                                                      \
    do {                                                                                     \
        T *o = (T *)x->want;                                                                 \
        for (int i = 0; i < LEN; i++) {                                                      \
            T acc = ((const T *)x->in[0])[i];                                                \
            for (int r = 1; r < W; r++) {                                                    \
                T v = ((const T *)x->in[r])[i];                                              \
                if (op == ncclSum || op == ncclAvg)                                          \
                    acc = FLT ? (T)(acc + v) : (T)(U)((U)acc + (U)v);                        \
                else if (op == ncclProd)                                                     \
                    acc = FLT ? (T)(acc * v) : (T)(U)((U)acc * (U)v);                        \
                else if (op == ncclMax)                                                      \
                    acc = v > acc ? v : acc;                                                 \
                else                                                                         \
                    acc = v < acc ? v : acc;                                                 \
            }                                                                                \
            o[i] = op == ncclAvg ? (T)(acc / (T)W) : acc;                                    \
        }                                                                                    \
    } while (0)

static void fold(raw *x, int t, int op) {
    switch (t) {
    case ncclInt8: FOLD(int8_t, uint8_t, 0); break;
    case ncclUint8: FOLD(uint8_t, uint8_t, 0); break;
    case ncclInt32: FOLD(int32_t, uint32_t, 0); break;
    case ncclUint32: FOLD(uint32_t, uint32_t, 0); break;
    case ncclInt64: FOLD(int64_t, uint64_t, 0); break;
    case ncclUint64: FOLD(uint64_t, uint64_t, 0); break;
    case ncclFloat32: FOLD(float, uint32_t, 1); break;
    case ncclFloat64: FOLD(double, uint64_t, 1); break;
    }
}

/* got (n elements of type t) against want: bitwise, or for floats off cuemu within 1e-6 */
static int wrong(const raw *x, int t, size_t n) {
    if (!memcmp(x->got, x->want, n * TSIZE[t])) return 0;
    if (EXACT || (t != ncclFloat32 && t != ncclFloat64)) return 1;
    for (size_t i = 0; i < n; i++) {
        double g = t == ncclFloat32 ? ((float *)x->got)[i] : ((double *)x->got)[i];
        double w = t == ncclFloat32 ? ((float *)x->want)[i] : ((double *)x->want)[i];
        if (fabs(g - w) > 1e-6 * (fabs(w) + 1)) return 1;
    }
    return 0;
}

#define CK(call) assert_int_equal((int)(call), 0)

static void mpi_barrier(void) {
    camo_mpi_group *g = camo_mpi_group_create(30);
    assert_non_null(g);
    assert_int_equal(camo_mpi_barrier(g, NULL), 0);
    camo_mpi_group_free(g);
}

/* This process's K ranks of one communicator over both processes; same_gpu: one rank a
 * process, both on GPU 0 (what NCCL must refuse): returns ncclCommInitRank's result. */
static int raw_init(raw *x, int same_gpu) {
    unsigned char id[CAMO_NCCL_ID_BYTES];
    ncclUniqueId uid;
    shared_id(id);
    memcpy(&uid, id, sizeof uid);
    memset(x, 0, sizeof *x);
    if (same_gpu) {
        CK(cudaSetDevice(0));
        return ncclCommInitRank(&x->comm[0], NP, uid, camo_mpi_rank());
    }
    x->base = camo_mpi_rank() * K;
    CK(ncclGroupStart());
    for (int l = 0; l < K; l++) {
        CK(cudaSetDevice(x->base + l));
        CK(ncclCommInitRank(&x->comm[l], W, uid, x->base + l));
    }
    CK(ncclGroupEnd());
    for (int l = 0; l < K; l++) {
        CK(cudaSetDevice(x->base + l));
        CK(cudaStreamCreate(&x->st[l]));
        CK(cudaMalloc(&x->send[l], LEN * 8));
        CK(cudaMalloc(&x->recv[l], (size_t)LEN * 8 * W));
    }
    for (int r = 0; r < W; r++) x->in[r] = camo_malloc(LEN * 8);
    x->want = camo_malloc((size_t)LEN * 8 * W);
    x->got = camo_malloc((size_t)LEN * 8 * W);
    return 0;
}

static void raw_free(raw *x, int abort) {
    for (int l = 0; l < K; l++) {
        CK(cudaSetDevice(x->base + l));
        if (abort) CK(ncclCommAbort(x->comm[l]));
        else CK(ncclCommDestroy(x->comm[l]));
        CK(cudaFree(x->send[l]));
        CK(cudaFree(x->recv[l]));
        CK(cudaStreamDestroy(x->st[l]));
    }
    for (int r = 0; r < W; r++) free(x->in[r]);
    free(x->want);
    free(x->got);
}

enum { ALL_REDUCE, REDUCE, BROADCAST, ALL_GATHER };

/* One collective on every local rank (one group: one thread drives both GPUs), checked on
 * every local rank that gets a result. 0, or the number of wrong ranks. */
static int raw_run(raw *x, int kind, int t, int op, int root) {
    size_t bytes = LEN * TSIZE[t], out_n = kind == ALL_GATHER ? (size_t)LEN * W : LEN;
    for (int r = 0; r < W; r++) make_input(x->in[r], r, t);
    if (kind == ALL_REDUCE || kind == REDUCE) fold(x, t, op);
    else if (kind == BROADCAST) memcpy(x->want, x->in[root], bytes);
    else
        for (int r = 0; r < W; r++) memcpy(x->want + (size_t)r * bytes, x->in[r], bytes);
    for (int l = 0; l < K; l++) {
        CK(cudaSetDevice(x->base + l));
        CK(cudaMemcpy(x->send[l], x->in[x->base + l], bytes, cudaMemcpyHostToDevice));
        CK(cudaMemset(x->recv[l], 0xab, out_n * TSIZE[t]));
    }
    CK(ncclGroupStart());
    for (int l = 0; l < K; l++) {
        ncclComm_t c = x->comm[l];
        cudaStream_t s = x->st[l];
        ncclDataType_t ty = (ncclDataType_t)t;
        if (kind == ALL_REDUCE) CK(ncclAllReduce(x->send[l], x->recv[l], LEN, ty, op, c, s));
        if (kind == REDUCE) CK(ncclReduce(x->send[l], x->recv[l], LEN, ty, op, root, c, s));
        if (kind == BROADCAST) CK(ncclBroadcast(x->send[l], x->recv[l], LEN, ty, root, c, s));
        if (kind == ALL_GATHER) CK(ncclAllGather(x->send[l], x->recv[l], LEN, ty, c, s));
    }
    CK(ncclGroupEnd());
    int bad = 0;
    for (int l = 0; l < K; l++) {
        CK(cudaSetDevice(x->base + l));
        CK(cudaStreamSynchronize(x->st[l]));
        if (kind == REDUCE && x->base + l != root) continue;
        CK(cudaMemcpy(x->got, x->recv[l], out_n * TSIZE[t], cudaMemcpyDeviceToHost));
        if (wrong(x, t, out_n)) {
            fprintf(stderr, "rank %d: collective %d, type %d, op %d, root %d: wrong result\n",
                    x->base + l, kind, t, op, root);
            bad++;
        }
    }
    return bad;
}

static void test_every_type(void **state) {
    (void)state;
    need(K);
    raw x;
    assert_int_equal(raw_init(&x, 0), 0);
    int bad = 0, n = 0;
    for (size_t j = 0; j < sizeof REDUCIBLE / sizeof *REDUCIBLE; j++) {
        for (int op = 0; op < ncclNumOps; op++, n++) bad += raw_run(&x, ALL_REDUCE, REDUCIBLE[j], op, -1);
        bad += raw_run(&x, REDUCE, REDUCIBLE[j], ncclSum, 2); /* root in process 1 */
        n++;
    }
    for (int t = 0; t < (int)ncclNumTypes; t++, n += 2) {
        bad += raw_run(&x, BROADCAST, t, -1, 1 + t % 3);
        bad += raw_run(&x, ALL_GATHER, t, -1, -1);
    }
    fprintf(stderr, "process %d: %d collectives, %d wrong results\n", camo_mpi_rank(), n, bad);
    assert_int_equal(bad, 0);
    raw_free(&x, 0);
}

/* Process 0 all-reduces 8 floats, process 1 nine: both see ncclInvalidUsage (cuemu; real
 * NCCL does not promise to detect it). */
static void test_mismatch(void **state) {
    (void)state;
    need(K);
    if (!EXACT) skip();
    raw x;
    assert_int_equal(raw_init(&x, 0), 0);
    size_t count = 8 + (size_t)camo_mpi_rank();
    CK(ncclGroupStart());
    for (int l = 0; l < K; l++)
        CK(ncclAllReduce(x.send[l], x.recv[l], count, ncclFloat32, ncclSum, x.comm[l], x.st[l]));
    CK(ncclGroupEnd());
    double t0 = camo_now();
    for (int l = 0; l < K; l++) {
        ncclResult_t e = ncclSuccess;
        while (e == ncclSuccess && camo_now() - t0 < 10) CK(ncclCommGetAsyncError(x.comm[l], &e));
        assert_int_equal(e, ncclInvalidUsage);
    }
    mpi_barrier();
    raw_free(&x, 1);
}

/* Process 1 never issues: process 0's collective waits (still running after 0.3 s) until
 * process 0 aborts its communicators, which ends it at once. */
static void test_abort_ends_wait(void **state) {
    (void)state;
    need(K);
    raw x;
    assert_int_equal(raw_init(&x, 0), 0);
    if (camo_mpi_rank() == 0) {
        CK(ncclGroupStart());
        for (int l = 0; l < K; l++)
            CK(ncclAllReduce(x.send[l], x.recv[l], LEN, ncclFloat32, ncclSum, x.comm[l], x.st[l]));
        CK(ncclGroupEnd());
        nanosleep(&(struct timespec){0, 300000000L}, NULL);
        CK(cudaSetDevice(x.base));
        assert_int_equal(cudaStreamQuery(x.st[0]), cudaErrorNotReady);
        double t0 = camo_now();
        for (int l = 0; l < K; l++) {
            CK(cudaSetDevice(x.base + l));
            CK(ncclCommAbort(x.comm[l]));
            x.comm[l] = NULL; /* raw_free's ncclCommAbort(NULL) does nothing */
        }
        for (int l = 0; l < K; l++) {
            CK(cudaSetDevice(x.base + l));
            CK(cudaStreamSynchronize(x.st[l]));
        }
        assert_true(camo_now() - t0 < 3);
    }
    mpi_barrier(); /* process 1 leaves only now */
    raw_free(&x, 1);
}

/* Both processes put their rank on GPU 0: NCCL refuses it on both ("Duplicate GPU"). */
static void test_same_gpu_refused(void **state) {
    (void)state;
    need(1);
    raw x;
    assert_int_equal(raw_init(&x, 1), ncclInvalidUsage);
}

#else
static void test_every_type(void **state) { (void)state; skip(); }
static void test_mismatch(void **state) { (void)state; skip(); }
static void test_abort_ends_wait(void **state) { (void)state; skip(); }
static void test_same_gpu_refused(void **state) { (void)state; skip(); }
#endif

int main(void) {
    if (camo_mpi_init()) {
        fprintf(stderr, "%s\n", camo_last_error());
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_comm_2x1),         cmocka_unit_test(test_comm_2x2),
        cmocka_unit_test(test_every_type),       cmocka_unit_test(test_mismatch),
        cmocka_unit_test(test_abort_ends_wait), cmocka_unit_test(test_same_gpu_refused),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    if (rc == 0) camo_mpi_finalize();
    else camo_mpi_abort(1);
    return rc;
}
