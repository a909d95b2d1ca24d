/* cuda_loss.cu: the CUDA twins of src/backend/cpu/cpu_loss.c: fused BCE with logits, the
 * SINet-V2/F3Net structure loss, soft Dice, softmax cross-entropy and the training pixel
 * accuracy counts. Sums are taken in double over fixed blocks added in block order
 * (deterministic), and the loss value is added to a float in device memory by a one-thread
 * kernel, so nothing synchronises with the host. */
#include "cuda_common.cuh"

#include <math.h>

#define LOSS_BLOCK 4096   /* pixels per partial sum, as the CPU */
#define STRUCT_R 15       /* avg_pool2d(31, stride 1, padding 15) */

__device__ static float bce_d(float x, float t) {
    return fmaxf(x, 0.0f) - x * t + log1pf(expf(-fabsf(x)));
}

/* ---- per-image sums: part (N, nb, K) by blocks, then sums (N, K) in block order ---- */

template <int K, class F>
__global__ static void img_partial_k(size_t P, int nb, double *part, F f) {
    __shared__ double sh[K][CU_THREADS];
    size_t n = blockIdx.y, b = blockIdx.x;
    size_t i0 = n * P + b * LOSS_BLOCK, i1 = n * P + min(P, (b + 1) * LOSS_BLOCK);
    double acc[K];
    for (int k = 0; k < K; k++) acc[k] = 0;
    for (size_t i = i0 + threadIdx.x; i < i1; i += blockDim.x) f(i, acc);
    for (int k = 0; k < K; k++) sh[k][threadIdx.x] = acc[k];
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s /= 2) {
        if ((int)threadIdx.x < s)
            for (int k = 0; k < K; k++) sh[k][threadIdx.x] += sh[k][threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0)
        for (int k = 0; k < K; k++) part[((size_t)n * nb + b) * K + k] = sh[k][0];
}

template <int K>
__global__ static void img_finish_k(int N, int nb, const double *part, double *sums) {
    int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N) return;
    for (int k = 0; k < K; k++) {
        double s = 0;
        for (int b = 0; b < nb; b++) s += part[((size_t)n * nb + b) * K + k];
        sums[(size_t)n * K + k] = s;
    }
}

/* Scratch layout of a loss: sums (N*K doubles), part (N*nb*K doubles), then `floats`
 * floats. Returns sums; *part and *fl point into the same block. */
static double *loss_scratch(camo_backend *be, int N, size_t P, int K, size_t floats,
                            double **part, float **fl) {
    size_t nb = (P + LOSS_BLOCK - 1) / LOSS_BLOCK;
    size_t nd = (size_t)N * K * (1 + nb);
    double *s = (double *)cu_workspace(be, nd * sizeof(double) + floats * sizeof(float) + 64);
    if (!s) return NULL;
    *part = s + (size_t)N * K;
    if (fl) *fl = (float *)(s + nd);
    return s;
}

template <int K, class F>
static void img_sums(camo_backend *be, int N, size_t P, double *part, double *sums, F f) {
    int nb = (int)((P + LOSS_BLOCK - 1) / LOSS_BLOCK);
    if (N <= 0 || nb <= 0) return;
    img_partial_k<K><<<dim3(nb, N), CU_THREADS, 0, cu_stream(be)>>>(P, nb, part, f);
    img_finish_k<K><<<(N + 127) / 128, 128, 0, cu_stream(be)>>>(N, nb, part, sums);
    CU_LAUNCHED(be);
}

/* *loss += total(sums) / norm, on the device; total is a per-loss functor of (N, sums) */
template <class T>
__global__ static void loss_add_k(float *loss, int N, const double *sums, float norm, T total) {
    if (blockIdx.x == 0 && threadIdx.x == 0) *loss += (float)(total(N, sums) / norm);
}

/* ---- BCE with logits ---- */

static void cu_loss_bce_logits(camo_backend *be, int N, int H, int W, float *loss,
                               float *dlogits, const float *logits, const float *target,
                               float norm) {
    size_t P = (size_t)N * H * W;
    if (!P) return; /* an empty slice adds 0 */
    double *part, *sums = loss_scratch(be, 1, P, 1, 0, &part, NULL);
    if (!sums) return;
    img_sums<1>(be, 1, P, part, sums, [=] __device__(size_t i, double *acc) {
        acc[0] += bce_d(logits[i], target[i]);
        dlogits[i] += (cu_sigmoid(logits[i]) - target[i]) / norm;
    });
    loss_add_k<<<1, 1, 0, cu_stream(be)>>>(
        loss, 1, sums, norm, [] __device__(int, const double *s) { return s[0]; });
    CU_LAUNCHED(be);
}

/* ---- structure loss ---- */

/* hs (N,H,W) = sums of mask rows over [w-15, w+15] clipped to the image */
__global__ static void struct_rows_k(int N, int H, int W, float *hs, const float *mask) {
    size_t n_px = (size_t)N * H * W;
    CU_GRID_LOOP(i, n_px) {
        int w = (int)(i % W);
        const float *row = mask + (i - w);
        double s = 0;
        for (int j = max(0, w - STRUCT_R); j <= min(W - 1, w + STRUCT_R); j++) s += row[j];
        hs[i] = (float)s;
    }
}

/* weit = 1 + 5|avgpool31(mask) - mask| with the zero padding counted (always / 961) */
__global__ static void struct_weights_k(int N, int H, int W, float *weit, const float *hs,
                                        const float *mask) {
    size_t n_px = (size_t)N * H * W;
    const float inv_area = 1.0f / (float)((2 * STRUCT_R + 1) * (2 * STRUCT_R + 1));
    CU_GRID_LOOP(i, n_px) {
        int w = (int)(i % W), h = (int)(i / W % H);
        const float *hsn = hs + (i / ((size_t)W * H)) * H * W;
        float s = 0;
        for (int r = max(0, h - STRUCT_R); r <= min(H - 1, h + STRUCT_R); r++)
            s += hsn[(size_t)r * W + w];
        weit[i] = 1.0f + 5.0f * fabsf(s * inv_area - mask[i]);
    }
}

__global__ static void struct_grad_k(size_t n, size_t P, float *dx, const float *logits,
                                     const float *target, const float *weit,
                                     const double *sums, float norm) {
    CU_GRID_LOOP(i, n) {
        const double *sn = sums + (i / P) * 4;
        double A = sn[2] + 1, B = sn[3] - sn[2] + 1;
        double t = target[i], w = weit[i], p = cu_sigmoid(logits[i]);
        double g = w * (p - t) / sn[0] - w * p * (1 - p) * (t * B - A * (1 - t)) / (B * B);
        dx[i] += (float)(g / norm);
    }
}

static void cu_loss_structure(camo_backend *be, int N, int H, int W, float *loss,
                              float *dlogits, const float *logits, const float *target,
                              float norm) {
    size_t P = (size_t)H * W, n = (size_t)N * P;
    double *part;
    float *weit;
    if (!n) return; /* an empty slice adds 0 */
    double *sums = loss_scratch(be, N, P, 4, 2 * n, &part, &weit);
    if (!sums) return;
    float *hs = weit + n;
    struct_rows_k CU_LAUNCH(be, n)(N, H, W, hs, target);
    struct_weights_k CU_LAUNCH(be, n)(N, H, W, weit, hs, target);
    img_sums<4>(be, N, P, part, sums, [=] __device__(size_t i, double *acc) {
        float x = logits[i], t = target[i], w = weit[i], p = cu_sigmoid(x);
        acc[0] += w;
        acc[1] += w * bce_d(x, t);
        acc[2] += p * t * w;
        acc[3] += (p + t) * w;
    });
    struct_grad_k CU_LAUNCH(be, n)(n, P, dlogits, logits, target, weit, sums, norm);
    loss_add_k<<<1, 1, 0, cu_stream(be)>>>(
        loss, N, sums, norm, [] __device__(int N_, const double *s) {
            double total = 0;
            for (int k = 0; k < N_; k++) {
                const double *sn = s + k * 4;
                double A = sn[2] + 1, B = sn[3] - sn[2] + 1;
                total += sn[1] / sn[0] + 1 - A / B;
            }
            return total;
        });
    CU_LAUNCHED(be);
}

/* ---- soft Dice ---- */

__global__ static void dice_grad_k(size_t n, size_t P, float *dx, const float *logits,
                                   const float *target, const double *sums, float norm) {
    CU_GRID_LOOP(i, n) {
        const double *sn = sums + (i / P) * 3;
        double A = 2 * sn[0] + 1, B = sn[1] + sn[2] + 1;
        double p = cu_sigmoid(logits[i]), t = target[i];
        double g = -(2 * t * B - A) / (B * B) * p * (1 - p);
        dx[i] += (float)(g / norm);
    }
}

static void cu_loss_dice(camo_backend *be, int N, int H, int W, float *loss, float *dlogits,
                         const float *logits, const float *target, float norm) {
    size_t P = (size_t)H * W, n = (size_t)N * P;
    if (!n) return; /* an empty slice adds 0 */
    double *part, *sums = loss_scratch(be, N, P, 3, 0, &part, NULL);
    if (!sums) return;
    img_sums<3>(be, N, P, part, sums, [=] __device__(size_t i, double *acc) {
        float p = cu_sigmoid(logits[i]), t = target[i];
        acc[0] += p * t;
        acc[1] += p;
        acc[2] += t;
    });
    dice_grad_k CU_LAUNCH(be, n)(n, P, dlogits, logits, target, sums, norm);
    loss_add_k<<<1, 1, 0, cu_stream(be)>>>(
        loss, N, sums, norm, [] __device__(int N_, const double *s) {
            double total = 0;
            for (int k = 0; k < N_; k++)
                total += 1 - (2 * s[k * 3] + 1) / (s[k * 3 + 1] + s[k * 3 + 2] + 1);
            return total;
        });
    CU_LAUNCHED(be);
}

/* ---- softmax cross-entropy: one thread per pixel over its C logits ---- */

static void cu_loss_cross_entropy(camo_backend *be, int N, int H, int W, int C, float *loss,
                                  float *dlogits, const float *logits, const int *labels,
                                  int ignore_index, float norm) {
    size_t P = (size_t)N * H * W;
    if (!P) return; /* an empty slice adds 0 */
    double *part, *sums = loss_scratch(be, 1, P, 1, 0, &part, NULL);
    if (!sums) return;
    img_sums<1>(be, 1, P, part, sums, [=] __device__(size_t i, double *acc) {
        int l = labels[i];
        if (l == ignore_index || l < 0 || l >= C) return;
        const float *x = logits + i * C;
        float *dx = dlogits + i * C;
        float mx = -INFINITY;
        for (int c = 0; c < C; c++) mx = fmaxf(mx, x[c]);
        double z = 0;
        for (int c = 0; c < C; c++) z += expf(x[c] - mx);
        acc[0] += mx + log(z) - x[l];
        float inv_z = (float)(1.0 / z), inv_norm = 1.0f / norm;
        for (int c = 0; c < C; c++)
            dx[c] += (expf(x[c] - mx) * inv_z - (float)(c == l)) * inv_norm;
    });
    if (norm > 0) { /* no valid pixel: add nothing (see cpu_loss.c) */
        loss_add_k<<<1, 1, 0, cu_stream(be)>>>(
            loss, 1, sums, norm, [] __device__(int, const double *s) { return s[0]; });
        CU_LAUNCHED(be);
    }
}

/* ---- training pixel accuracy (backend.h pixel_correct; the rule of cpu_loss.c) ---- */

/* acc (2 doubles) += sums (2 doubles), on the device: nothing syncs with the host */
__global__ static void counts_add_k(double *acc, const double *sums) {
    if (blockIdx.x || threadIdx.x) return;
    acc[0] += sums[0];
    acc[1] += sums[1];
}

static void cu_pixel_correct(camo_backend *be, int N, int H, int W, int C, double *acc,
                             const float *logits, const float *target, const int *labels,
                             int ignore_index) {
    size_t P = (size_t)N * H * W;
    if (!P) return; /* an empty slice counts nothing */
    double *part, *sums = loss_scratch(be, 1, P, 2, 0, &part, NULL);
    if (!sums) return;
    img_sums<2>(be, 1, P, part, sums, [=] __device__(size_t i, double *a) {
        if (C == 1) { /* sigmoid(x) > 0.5 <=> x > 0 */
            a[0] += (logits[i] > 0.0f) == (target[i] > 0.5f);
            a[1] += 1;
            return;
        }
        int l = labels[i];
        if (l == ignore_index || l < 0 || l >= C) return;
        const float *x = logits + i * C;
        int best = 0; /* the first largest, as torch.argmax */
        for (int c = 1; c < C; c++)
            if (x[c] > x[best]) best = c;
        a[0] += best == l;
        a[1] += 1;
    });
    counts_add_k<<<1, 1, 0, cu_stream(be)>>>(acc, sums);
    CU_LAUNCHED(be);
}

extern "C" void cuda_register_loss(camo_backend *be) {
    be->loss_bce_logits = cu_loss_bce_logits;
    be->loss_structure = cu_loss_structure;
    be->loss_dice = cu_loss_dice;
    be->loss_cross_entropy = cu_loss_cross_entropy;
    be->pixel_correct = cu_pixel_correct;
}
