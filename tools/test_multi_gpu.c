/* test_multi_gpu.c: what a multi-GPU machine offers camotrain, and whether it works.
 * Lists the GPUs (name, memory, compute capability), CUDA runtime/driver, cuDNN and NCCL
 * versions and peer access between each pair; checks an NCCL all-reduce over every GPU for
 * correctness and prints its bus bandwidth from 1 MiB to 256 MiB; runs one unet_s training
 * step (forward, structure loss, backward) on each GPU and compares loss and gradient norm
 * with the CPU backend. Prints PASS/FAIL per check; exit 0 when all pass, 1 when one
 * fails, 2 when there is no usable GPU. Models: the seeds' test_multi_gpu.py / test_ddp.py. */
#include "camo/backend.h"
#include "camo/common.h"
#include "camo/cuda.h"
#include "camo/loss.h"
#include "camo/net.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifdef CAMO_HAVE_CUDA
#include <cuda_runtime.h>
#include <cudnn.h>
#include <nccl.h>

static int failures;

static void report(int ok, const char *what) {
    printf("%s  %s\n", ok ? "PASS" : "FAIL", what);
    if (!ok) failures++;
}

/* ---- inventory ---- */

static void list_versions(int n) {
    int rt = 0, drv = 0, nccl = 0;
    cudaRuntimeGetVersion(&rt);
    cudaDriverGetVersion(&drv);
    ncclGetVersion(&nccl);
    printf("CUDA runtime %d.%d, driver %d.%d, cuDNN %zu, NCCL %d.%d.%d\n", rt / 1000,
           rt % 1000 / 10, drv / 1000, drv % 1000 / 10, cudnnGetVersion(), nccl / 10000,
           nccl / 100 % 100, nccl % 100);
    for (int d = 0; d < n; d++) {
        struct cudaDeviceProp p;
        if (cudaGetDeviceProperties(&p, d) != cudaSuccess) continue;
        printf("GPU %d: %s, %.1f GiB, compute capability %d.%d, %d SMs\n", d, p.name,
               p.totalGlobalMem / 1073741824.0, p.major, p.minor, p.multiProcessorCount);
    }
    if (n < 2) return;
    printf("peer access (row can read column):\n     ");
    for (int j = 0; j < n; j++) printf(" %3d", j);
    printf("\n");
    for (int i = 0; i < n; i++) {
        printf("  %2d ", i);
        for (int j = 0; j < n; j++) {
            int can = 0;
            if (i != j) cudaDeviceCanAccessPeer(&can, i, j);
            printf(" %3s", i == j ? "-" : can ? "yes" : "no");
        }
        printf("\n");
    }
}

/* ---- NCCL all-reduce ---- */

typedef struct ar_bufs {
    int n;
    ncclComm_t comm[16];
    cudaStream_t stream[16];
    float *buf[16];
} ar_bufs;

static int ar_run(ar_bufs *b, size_t count) {
    if (ncclGroupStart() != ncclSuccess) return -1;
    int bad = 0;
    for (int r = 0; r < b->n && !bad; r++)
        bad = ncclAllReduce(b->buf[r], b->buf[r], count, ncclFloat, ncclSum, b->comm[r],
                            b->stream[r]) != ncclSuccess;
    /* the group is always closed, even after a failed call, or NCCL stays in group mode */
    if (ncclGroupEnd() != ncclSuccess || bad) return -1;
    for (int r = 0; r < b->n; r++) {
        cudaSetDevice(r);
        if (cudaStreamSynchronize(b->stream[r]) != cudaSuccess) return -1;
    }
    return 0;
}

/* rank r holds (r+1) * (i%13 + 1): every sum is exact in float */
static int ar_check(ar_bufs *b, size_t count, float *host) {
    for (int r = 0; r < b->n; r++) {
        for (size_t i = 0; i < count; i++) host[i] = (float)((r + 1) * (int)(i % 13 + 1));
        cudaSetDevice(r);
        if (cudaMemcpy(b->buf[r], host, count * 4, cudaMemcpyHostToDevice)) return -1;
    }
    if (ar_run(b, count)) return -1;
    double ranks = b->n * (b->n + 1) / 2.0;
    for (int r = 0; r < b->n; r++) {
        cudaSetDevice(r);
        if (cudaMemcpy(host, b->buf[r], count * 4, cudaMemcpyDeviceToHost)) return -1;
        for (size_t i = 0; i < count; i++)
            if (host[i] != (float)(ranks * (double)(i % 13 + 1))) return -1;
    }
    return 0;
}

static void check_allreduce(int n) {
    ar_bufs b;
    memset(&b, 0, sizeof b);
    b.n = n > 16 ? 16 : n;
    int devs[16];
    for (int r = 0; r < b.n; r++) devs[r] = r;
    size_t maxc = (256u << 20) / 4;
    float *host = malloc(maxc * 4);
    int ok = host && ncclCommInitAll(b.comm, b.n, devs) == ncclSuccess;
    for (int r = 0; ok && r < b.n; r++) {
        cudaSetDevice(r);
        ok = cudaStreamCreate(&b.stream[r]) == cudaSuccess &&
             cudaMalloc((void **)&b.buf[r], maxc * 4) == cudaSuccess;
    }
    if (!ok) {
        report(0, "NCCL set-up (ncclCommInitAll, buffers)");
    } else {
        printf("NCCL all-reduce over %d GPU%s (float sum, in place):\n", b.n, b.n > 1 ? "s" : "");
        printf("  %10s %12s %12s %12s\n", "size", "time (us)", "algbw GB/s", "busbw GB/s");
        int correct = 1;
        for (size_t bytes = 1u << 20; bytes <= 256u << 20; bytes *= 2) {
            size_t count = bytes / 4;
            if (ar_check(&b, count, host)) { correct = 0; break; }
            int iters = bytes >= (64u << 20) ? 5 : 20, failed = ar_run(&b, count) != 0;
            double t0 = camo_now();
            for (int it = 0; it < iters && !failed; it++) failed = ar_run(&b, count) != 0;
            if (failed) { correct = 0; break; } /* no bandwidth from failed runs */
            double t = (camo_now() - t0) / iters, alg = bytes / t / 1e9;
            printf("  %7zu MiB %12.1f %12.2f %12.2f\n", bytes >> 20, t * 1e6, alg,
                   alg * 2.0 * (b.n - 1) / b.n);
        }
        report(correct, "NCCL all-reduce results correct on every GPU (1 MiB .. 256 MiB)");
    }
    /* Finalizing a communicator waits for its peers, so one thread holding all of them
     * finalizes them inside one group (as NCCL's single-process example does), then
     * destroys them; only then the buffers and streams they used go. */
    int have = 0;
    for (int r = 0; r < b.n; r++) have |= b.comm[r] != NULL;
    if (have) {
        int fin = ncclGroupStart() == ncclSuccess;
        for (int r = 0; fin && r < b.n; r++)
            if (b.comm[r]) fin = ncclCommFinalize(b.comm[r]) == ncclSuccess;
        fin = ncclGroupEnd() == ncclSuccess && fin;
        for (int r = 0; r < b.n; r++) {
            if (!b.comm[r]) continue;
            cudaSetDevice(r);
            if (fin) ncclCommDestroy(b.comm[r]);
            else ncclCommAbort(b.comm[r]);
        }
    }
    for (int r = 0; r < b.n; r++) {
        cudaSetDevice(r);
        if (b.buf[r]) cudaFree(b.buf[r]);
        if (b.stream[r]) cudaStreamDestroy(b.stream[r]);
    }
    free(host);
}

/* ---- one training step per GPU vs the CPU ---- */

enum { STEP_N = 2, STEP_S = 96 };

/* conf/models/unet_s.cfg from the working directory, or from the repository this binary
 * was built in (build/tools/ or tools/) */
static const char *model_path(char *buf, size_t size) {
    const char *rel = "conf/models/unet_s.cfg";
    if (access(rel, R_OK) == 0) return rel;
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) return rel;
    exe[n] = 0;
    char *slash = strrchr(exe, '/');
    if (slash) *slash = 0;
    const char *ups[] = {"/../", "/../../"};
    for (int i = 0; i < 2; i++) {
        snprintf(buf, size, "%s%s%s", exe, ups[i], rel);
        if (access(buf, R_OK) == 0) return buf;
    }
    return rel;
}

/* loss and gradient norm of one unet_s step on `be`; -1 on error */
static int train_step(camo_backend *be, double *loss_out, double *gnorm_out) {
    char path[4200];
    camo_net *net = camo_net_load(model_path(path, sizeof path), be, 0);
    if (!net || camo_net_set_input_size(net, STEP_N, STEP_S, STEP_S)) {
        if (net) camo_net_free(net);
        return -1;
    }
    camo_net_init_weights(net, 42);
    size_t plane = (size_t)STEP_N * STEP_S * STEP_S;
    float *img = malloc(plane * 3 * 4), *mask = malloc(plane * 4);
    for (size_t i = 0; i < plane * 3; i++) img[i] = camo_rand_normal(7, i);
    for (size_t i = 0; i < plane; i++) {
        int y = (int)(i / STEP_S % STEP_S) - STEP_S / 2, x = (int)(i % STEP_S) - STEP_S / 3;
        mask[i] = x * x + y * y < STEP_S * STEP_S / 16;
    }
    float *target = be->alloc(be, plane * 4), *loss_dev = be->alloc(be, 4);
    float *sq = be->alloc(be, 4), loss = 0, g2 = 0;
    be->upload(be, net->input, img, plane * 3 * 4);
    be->upload(be, target, mask, plane * 4);
    camo_net_zero_param_grads(net);
    camo_net_forward(net, STEP_N, 1);
    camo_net_zero_act_grads(net);
    camo_loss_forward_backward(net, LOSS_STRUCTURE, 1, STEP_N, target, NULL, 255, STEP_N,
                               (double)plane, loss_dev);
    camo_net_backward(net, STEP_N);
    be->sumsq(be, net->n_weight_floats, sq, net->grad_block);
    be->download(be, &loss, loss_dev, 4);
    be->download(be, &g2, sq, 4);
    *loss_out = loss;
    *gnorm_out = sqrt(g2);
    be->free(be, target), be->free(be, loss_dev), be->free(be, sq);
    camo_net_free(net);
    free(img), free(mask);
    return camo_cuda_backend_status(be);
}

static void check_training(int n) {
    camo_backend *cpu = camo_backend_cpu_create(0);
    double lc, gc;
    if (train_step(cpu, &lc, &gc)) {
        printf("CPU reference step failed: %s\n", camo_last_error());
        report(0, "unet_s CPU reference step");
        cpu->destroy(cpu);
        return;
    }
    cpu->destroy(cpu);
    printf("unet_s step (%d x %dx%d, structure loss): CPU loss %.7f, grad norm %.6g\n", STEP_N,
           STEP_S, STEP_S, lc, gc);
    for (int d = 0; d < n; d++) {
        char what[160];
        double lg = 0, gg = 0;
        camo_backend *be = camo_backend_cuda_create(d);
        int rc = be ? train_step(be, &lg, &gg) : -1;
        if (rc) printf("GPU %d: %s\n", d, camo_last_error());
        else printf("GPU %d: loss %.7f, grad norm %.6g\n", d, lg, gg);
        snprintf(what, sizeof what, "GPU %d unet_s training step matches the CPU (loss and "
                 "gradient norm within 1e-4 relative)", d);
        report(!rc && fabs(lg - lc) <= 1e-4 * fabs(lc) && fabs(gg - gc) <= 1e-4 * gc, what);
        if (be) be->destroy(be);
    }
}

int main(void) {
    camo_log_set_quiet(1);
    int n = camo_cuda_device_count();
    if (n == 0) {
        int drv = 0;
        cudaDriverGetVersion(&drv);
        printf("No usable GPU: %s. Nothing to test (exit 2).\n",
               drv == 0 ? "no NVIDIA driver is loaded on this machine"
                        : "the driver reports no device (check CUDA_VISIBLE_DEVICES)");
        return 2;
    }
    list_versions(n);
    check_allreduce(n);
    check_training(n);
    printf("%s: %d check%s failed\n", failures ? "FAIL" : "PASS", failures,
           failures == 1 ? "" : "s");
    return failures ? 1 : 0;
}

#else /* built without CUDA */

int main(void) {
    printf("No usable GPU: camotrain was built without CUDA (make CUDA=0 or nvcc not found). "
           "Nothing to test (exit 2).\n");
    return 2;
}

#endif
