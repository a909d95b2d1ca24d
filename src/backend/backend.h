/* backend.h: the op table every compute backend implements (DESIGN.md "Backends").
 *
 * All tensors are NHWC fp32 in the backend's memory. Layers call these ops and never
 * branch on the backend. Conventions (as in llm.c):
 *   - outputs first, then inputs; shape comments give the layout;
 *   - every backward op ACCUMULATES (+=) into its input and parameter gradients, so a
 *     tensor consumed by several layers gets the sum of their gradients;
 *   - M = N*H*W (number of pixels) where an op only cares about "rows of C channels".
 * Per-channel statistics ops write small arrays in backend memory so that sync-BN can
 * all-reduce them without a host round trip. */
#ifndef CAMO_BACKEND_H
#define CAMO_BACKEND_H

#include <stddef.h>

typedef struct camo_backend camo_backend;

/* Convolution geometry. Weights are OHWI: [K][R][S][C/groups] (cuDNN's NHWC filter
 * layout "KRSC"); PyTorch's [K][C/groups][R][S] is converted on load/save. */
typedef struct camo_conv_desc {
    int N, H, W, C;       /* input  (N, H, W, C) */
    int K, R, S;          /* output channels, kernel height, kernel width */
    int stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups;
    int P, Q;             /* output height, width (filled by camo_conv_desc_finish) */
} camo_conv_desc;

/* Fills P and Q with PyTorch's formula; returns 0, or -1 (error set) if the geometry is
 * impossible (kernel larger than padded input, channels not divisible by groups). */
int camo_conv_desc_finish(camo_conv_desc *d);

typedef enum {
    CAMO_ACT_IDENTITY, CAMO_ACT_RELU, CAMO_ACT_LEAKY_RELU, CAMO_ACT_SILU, CAMO_ACT_GELU,
    CAMO_ACT_SIGMOID, CAMO_ACT_TANH
} camo_act;

typedef enum { CAMO_POOL_MAX, CAMO_POOL_AVG } camo_pool_type;

typedef struct camo_pool_desc {
    camo_pool_type type;
    int N, H, W, C;
    int R, S, stride_h, stride_w, pad_h, pad_w;
    int count_include_pad; /* avg only; PyTorch default true */
    int P, Q;              /* output size (filled by camo_pool_desc_finish, floor mode) */
} camo_pool_desc;
int camo_pool_desc_finish(camo_pool_desc *d);

/* How the second operand of a multiply broadcasts over the first (N,H,W,C). */
typedef enum {
    CAMO_BCAST_NONE,     /* b is (N,H,W,C) */
    CAMO_BCAST_CHANNEL,  /* b is (N,H,W,1): spatial attention map */
    CAMO_BCAST_SPATIAL   /* b is (N,1,1,C): channel attention vector */
} camo_bcast;

/* Multi-head attention over the tokens of N images (cpu_attention.c, cuda_attention.cu).
 * Head h of a token is its channels [h*D, (h+1)*D), D = C/heads: PyTorch's reshape of the
 * last axis to (heads, D). q is (N, L, ldq) with the C channels first in each row, k is
 * (N, S, ldk) and v (N, S, ldv) likewise, so a fused projection (timm's qkv, ld = 3C) is read
 * in place; their gradients have the same strides and may share one tensor. out and dout are
 * dense (N, L, C). */
typedef struct camo_attn_desc {
    int N, L, S, C, heads;
    int ldq, ldk, ldv;
} camo_attn_desc;

/* Floats of the work buffer xca_backward takes: per image the (C/heads)^2 matrices of the
 * heads plus three per-channel vectors. */
static inline size_t camo_xca_work_floats(const camo_attn_desc *d) {
    return (size_t)d->N * d->C * (d->C / d->heads + 3);
}

/* fences of a backend (backend.fence): what replica.c waits on */
enum { CAMO_FENCE_UPLOAD, CAMO_FENCE_STATS0, CAMO_FENCE_STATS1, CAMO_FENCES };

struct camo_backend {
    const char *name;  /* "cpu", "cuda" */
    int device;        /* GPU ordinal, -1 for the CPU */
    int threads;       /* intra-op threads (CPU) */
    void *ctx;         /* backend private state (workspace, handles, stream) */

    /* ---- memory ---- */
    void *(*alloc)(camo_backend *be, size_t bytes);        /* zeroed; NULL + error on failure */
    void (*free)(camo_backend *be, void *p);
    void (*upload)(camo_backend *be, void *dst, const void *host_src, size_t bytes);
    void (*download)(camo_backend *be, void *host_dst, const void *src, size_t bytes);
    void (*copy)(camo_backend *be, void *dst, const void *src, size_t bytes);
    void (*zero)(camo_backend *be, void *dst, size_t bytes);
    void (*sync)(camo_backend *be);                        /* wait for queued work */
    /* Host-side fences, so that the host waits only for what it needs: fence(be, k) marks
     * the work queued so far; fence_wait(be, k) returns once the work before the latest
     * fence(be, k) is done (k < CAMO_FENCES). download_async copies into host memory from
     * camo_cuda_host_alloc without waiting: the data is there once a fence placed after it
     * has been waited. On the CPU every op is done when it returns. */
    void (*fence)(camo_backend *be, int k);
    void (*fence_wait)(camo_backend *be, int k);
    void (*download_async)(camo_backend *be, void *pinned_dst, const void *src, size_t bytes);
    void (*destroy)(camo_backend *be);

    /* ---- dense algebra, row-major: C = alpha * op(A) op(B) + beta * C ---- */
    void (*gemm)(camo_backend *be, int trans_a, int trans_b, int M, int N, int K, float alpha,
                 const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc);

    /* ---- convolution ---- */
    /* out (N,P,Q,K) = conv(in (N,H,W,C), w (K,R,S,C/g)) + bias (K) [bias may be NULL] */
    void (*conv2d_forward)(camo_backend *be, const camo_conv_desc *d, float *out,
                           const float *in, const float *w, const float *bias);
    /* din (N,H,W,C) += conv_transpose(dout (N,P,Q,K), w) */
    void (*conv2d_backward_data)(camo_backend *be, const camo_conv_desc *d, float *din,
                                 const float *dout, const float *w);
    /* dw (K,R,S,C/g) += ..., dbias (K) += sum(dout) [dbias may be NULL] */
    void (*conv2d_backward_filter)(camo_backend *be, const camo_conv_desc *d, float *dw,
                                   float *dbias, const float *dout, const float *in);

    /* ---- batch norm, split so sync-BN can all-reduce the sums between the steps ---- */
    /* Two passes over M rows of x (M, C), as E[x^2] - mean^2 cancels when mean^2 >> var:
     * mean NULL: stats[0:C] = sum_c x; else stats[C:2C] = sum_c (x - mean_c)^2 */
    void (*bn_stats)(camo_backend *be, int M, int C, float *stats, const float *x,
                     const float *mean);
    /* mean (C) = stats[0:C] / count: the global mean from the first pass's global sums */
    void (*bn_mean)(camo_backend *be, int C, const float *stats, double count, float *mean);
    /* From mean and the global second-pass sums stats[C:2C] over `count` rows:
     * invstd = 1/sqrt(var_biased + eps); if running_mean != NULL also
     * running = (1-momentum)*running + momentum*batch (unbiased var). */
    void (*bn_finalize)(camo_backend *be, int C, const float *stats, double count, float eps,
                        float momentum, const float *mean, float *invstd, float *running_mean,
                        float *running_var);
    /* running stats -> mean, invstd for eval mode */
    void (*bn_eval_params)(camo_backend *be, int C, const float *running_mean,
                           const float *running_var, float eps, float *mean, float *invstd);
    /* y (M, C) = (x - mean) * invstd * gamma + beta */
    void (*bn_apply)(camo_backend *be, int M, int C, float *y, const float *x,
                     const float *mean, const float *invstd, const float *gamma,
                     const float *beta);
    /* sums (2C) = [sum dy, sum dy * xhat] with xhat = (x - mean) * invstd */
    void (*bn_backward_reduce)(camo_backend *be, int M, int C, float *sums, const float *dy,
                               const float *x, const float *mean, const float *invstd);
    /* Training-mode input gradient from global sums over `count` rows:
     * dx += gamma*invstd*(dy - sum_dy/count - xhat*sum_dyxhat/count) */
    void (*bn_backward_data)(camo_backend *be, int M, int C, float *dx, const float *dy,
                             const float *x, const float *mean, const float *invstd,
                             const float *gamma, const float *sums, double count);
    /* Eval-mode (frozen statistics) input gradient: dx += dy * gamma * invstd */
    void (*bn_backward_data_frozen)(camo_backend *be, int M, int C, float *dx,
                                    const float *dy, const float *invstd, const float *gamma);

    /* ---- layer norm over the C channels of each of M rows ---- */
    void (*layernorm_forward)(camo_backend *be, int M, int C, float *y, float *mean,
                              float *rstd, const float *x, const float *gamma,
                              const float *beta, float eps);
    void (*layernorm_backward)(camo_backend *be, int M, int C, float *dx, float *dgamma,
                               float *dbeta, const float *dy, const float *x,
                               const float *mean, const float *rstd, const float *gamma);

    /* ---- elementwise ---- */
    void (*act_forward)(camo_backend *be, camo_act act, float alpha, size_t n, float *y,
                        const float *x);
    /* dx += dy * act'(x); y = act(x) is passed too, for activations cheaper through it */
    void (*act_backward)(camo_backend *be, camo_act act, float alpha, size_t n, float *dx,
                         const float *dy, const float *x, const float *y);
    void (*add)(camo_backend *be, size_t n, float *y, const float *a, const float *b);
    /* y += alpha * x */
    void (*axpy)(camo_backend *be, size_t n, float alpha, const float *x, float *y);
    void (*scale)(camo_backend *be, size_t n, float alpha, float *x);
    /* y = a * b with b broadcast as `mode` says; a is (N,H,W,C) */
    void (*mul_forward)(camo_backend *be, camo_bcast mode, int N, int HW, int C, float *y,
                        const float *a, const float *b);
    void (*mul_backward)(camo_backend *be, camo_bcast mode, int N, int HW, int C, float *da,
                         float *db, const float *dy, const float *a, const float *b);
    /* Copy src (M, Cs) into channels [off, off+Cs) of dst (M, Cd) (concat forward), or
     * accumulate that channel slice of dst into src when backward != 0 (concat backward). */
    void (*channel_slice)(camo_backend *be, int backward, int M, int Cd, int off, int Cs,
                          float *dst, float *src);
    /* Rows of C channels between strided tensors: dst (M, ldd)[:, :C] = src (M, lds)[:, :C],
     * or += when accumulate != 0 (the slice layer: forward takes a channel range of its
     * input, backward adds into that range). cpu_rows.c, cuda_rows.cu. */
    void (*copy_rows)(camo_backend *be, int accumulate, int M, int C, float *dst, int ldd,
                      const float *src, int lds);
    /* softmax over the C channels of each row */
    void (*softmax_forward)(camo_backend *be, int M, int C, float *y, const float *x);
    void (*softmax_backward)(camo_backend *be, int M, int C, float *dx, const float *dy,
                             const float *y);

    /* ---- mixture of experts (cpu_moe.c, cuda_moe.cu): images are rows of D floats; idx
     * holds n distinct image indices (int32, backend memory), so no two rows collide ---- */
    /* dst[j] = src[idx[j]] for j < n (dispatch forward: an expert's images to the front) */
    void (*moe_gather)(camo_backend *be, int n, size_t D, float *dst, const float *src,
                       const int *idx);
    /* dst[idx[j]] += src[j] (dispatch backward) */
    void (*moe_scatter_add)(camo_backend *be, int n, size_t D, float *dst, const float *src,
                            const int *idx);
    /* out[idx[j]] += gate[idx[j]*K + e] * y[j]: expert e's rows weighted into place */
    void (*moe_combine_forward)(camo_backend *be, int n, size_t D, int K, int e, float *out,
                                const float *y, const float *gate, const int *idx);
    /* dy[j] += gate[idx[j]*K + e] * dout[idx[j]]; dgate[idx[j]*K + e] += dout[idx[j]] . y[j]
     * (either of dy, dgate may be NULL) */
    void (*moe_combine_backward)(camo_backend *be, int n, size_t D, int K, int e, float *dy,
                                 float *dgate, const float *dout, const float *y,
                                 const float *gate, const int *idx);

    /* ---- attention (camo_attn_desc) ---- */
    /* Scaled dot-product attention (SegFormer): P (N, heads, L, S) = softmax over S of
     * scale * q_h k_h^T; out (N, L, C) = P v_h, the heads side by side. P is kept for the
     * backward. */
    void (*attention_forward)(camo_backend *be, const camo_attn_desc *d, float scale,
                              float *out, float *P, const float *q, const float *k,
                              const float *v);
    /* dq, dk, dv += the gradients of sum(out * dout); work: heads * L * S floats (the op runs
     * one image at a time). */
    void (*attention_backward)(camo_backend *be, const camo_attn_desc *d, float scale,
                               float *dq, float *dk, float *dv, float *work,
                               const float *dout, const float *q, const float *k,
                               const float *v, const float *P);
    /* Cross-covariance attention (XCiT, EdgeNeXt; S == L): rq (N, C) = 1 / max(||q[:, c]||,
     * 1e-12) over the L tokens of each image (F.normalize), rk the same of k; per head
     * G (N, heads, D, D) = (q_h rq)^T (k_h rk), the cosines; P = softmax over the last axis
     * of temp[h] * G; out (N, L, C) = v_h P^T. G, P, rq, rk are kept for the backward. */
    void (*xca_forward)(camo_backend *be, const camo_attn_desc *d, float *out, float *P,
                        float *G, float *rq, float *rk, const float *q, const float *k,
                        const float *v, const float *temp);
    /* dq, dk, dv += ..., dtemp (heads) += ...; work: camo_xca_work_floats(d) floats */
    void (*xca_backward)(camo_backend *be, const camo_attn_desc *d, float *dq, float *dk,
                         float *dv, float *dtemp, float *work, const float *dout,
                         const float *q, const float *k, const float *v, const float *temp,
                         const float *P, const float *G, const float *rq, const float *rk);

    /* ---- pooling and resizing ---- */
    /* argmax (N,P,Q,C) int32 index into the input plane (h*W+w), max pooling only */
    void (*pool_forward)(camo_backend *be, const camo_pool_desc *d, float *y, int *argmax,
                         const float *x);
    void (*pool_backward)(camo_backend *be, const camo_pool_desc *d, float *dx,
                          const float *dy, const int *argmax);
    /* PyTorch adaptive_avg_pool2d: (N,H,W,C) -> (N,P,Q,C) */
    void (*adaptive_avg_forward)(camo_backend *be, int N, int H, int W, int C, int P, int Q,
                                 float *y, const float *x);
    void (*adaptive_avg_backward)(camo_backend *be, int N, int H, int W, int C, int P, int Q,
                                  float *dx, const float *dy);
    /* PyTorch F.interpolate(mode="bilinear", align_corners=ac): (N,H,W,C) -> (N,P,Q,C).
     * scale_h/scale_w > 0 reproduce PyTorch's source-index rule when the size came from
     * scale_factor (recompute_scale_factor=False); 0 means "from sizes". */
    void (*resize_forward)(camo_backend *be, int N, int H, int W, int C, int P, int Q,
                           int align_corners, float scale_h, float scale_w, float *y,
                           const float *x);
    void (*resize_backward)(camo_backend *be, int N, int H, int W, int C, int P, int Q,
                            int align_corners, float scale_h, float scale_w, float *dx,
                            const float *dy);

    /* ---- losses: fused forward + gradient. Each ADDS its loss value to *loss (a float in
     * backend memory, so nothing syncs) and ADDS d(loss)/d(logits) to dlogits. The loss is
     * sum over this replica's items divided by `norm` (the GLOBAL count: samples or pixels),
     * so summing across replicas gives the global mean (DESIGN.md item 1). ---- */
    /* logits, target (N,H,W,1); mean of per-pixel BCE => norm = global pixel count */
    void (*loss_bce_logits)(camo_backend *be, int N, int H, int W, float *loss,
                            float *dlogits, const float *logits, const float *target,
                            float norm);
    /* SINet-V2/F3Net structure loss: weighted BCE + weighted IoU with
     * weit = 1 + 5|avgpool31(mask) - mask|, per image; norm = global image count */
    void (*loss_structure)(camo_backend *be, int N, int H, int W, float *loss,
                           float *dlogits, const float *logits, const float *target,
                           float norm);
    /* soft Dice on sigmoid(logits), smooth 1, per image; norm = global image count */
    void (*loss_dice)(camo_backend *be, int N, int H, int W, float *loss, float *dlogits,
                      const float *logits, const float *target, float norm);
    /* softmax cross-entropy over C classes; labels int32 (N,H,W); label == ignore_index
     * skipped; norm = global count of valid pixels */
    void (*loss_cross_entropy)(camo_backend *be, int N, int H, int W, int C, float *loss,
                               float *dlogits, const float *logits, const int *labels,
                               int ignore_index, float norm);

    /* ---- training metrics ---- */
    /* Pixel accuracy of a prediction, as counts: acc[0] += pixels predicted right,
     * acc[1] += pixels counted; acc is 2 doubles in backend memory (integer counts stay exact
     * up to 2^53, so sums over replicas and micro-batches do not depend on their order).
     * C == 1: logits, target (N,H,W,1), prediction sigmoid(logit) > 0.5 against target > 0.5
     * (the eval's threshold), every pixel counted. C > 1: logits (N,H,W,C), labels int32
     * (N,H,W), prediction the first largest logit; label == ignore_index (or outside
     * [0, C)) not counted. The unused one of target / labels may be NULL. */
    void (*pixel_correct)(camo_backend *be, int N, int H, int W, int C, double *acc,
                          const float *logits, const float *target, const int *labels,
                          int ignore_index);

    /* ---- optimizer and reductions ---- */
    /* out[0] = sum of x^2 (backend memory); used for the global grad norm */
    void (*sumsq)(camo_backend *be, size_t n, float *out, const float *x);
    /* Gradient clipping without a host wait, all in backend memory: norm = sqrt(sum of
     * sumsq[0..n), in double, in order) / loss_scale; *factor = (clip > 0 && norm > clip ?
     * clip / (norm + 1e-6) : 1) / loss_scale, as a float; *norm_out = norm. */
    void (*clip_factor)(camo_backend *be, int n, const float *sumsq, double clip,
                        double loss_scale, float *factor, double *norm_out);
    /* x (n) *= alpha[0], alpha in backend memory */
    void (*scale_by)(camo_backend *be, size_t n, const float *alpha, float *x);
    /* SGD (PyTorch semantics): g' = g + wd*w; buf = momentum*buf + g' (buf = g' at t=1);
     * step = nesterov ? g' + momentum*buf : buf; w -= lr*step. grad_scale multiplies g first. */
    void (*sgd_step)(camo_backend *be, size_t n, float *w, const float *g, float *buf,
                     float lr, float momentum, int nesterov, float wd, float grad_scale,
                     int first_step);
    /* AdamW (PyTorch semantics, step t >= 1): w *= 1 - lr*wd; m,v updated; bias-corrected */
    void (*adamw_step)(camo_backend *be, size_t n, float *w, const float *g, float *m,
                       float *v, float lr, float beta1, float beta2, float eps, float wd,
                       float grad_scale, int t);
    /* ema = decay * ema + (1 - decay) * w */
    void (*ema_update)(camo_backend *be, size_t n, float *ema, const float *w, float decay);
};

/* A GPU backend (CUDA) is one with a device ordinal; the CPU backend has -1. */
static inline int camo_backend_on_gpu(const camo_backend *be) { return be && be->device >= 0; }

/* The CPU backend: OpenBLAS sgemm + plain loops, `threads` intra-op threads
 * (0 = all cores). */
camo_backend *camo_backend_cpu_create(int threads);
/* A CPU backend's allocated bytes now and at their peak (blocks and its workspace). */
void camo_cpu_mem_stats(camo_backend *be, size_t *live, size_t *peak);

/* OpenMP and OpenBLAS read their settings when they load, before main, and two defaults
 * hurt on small machines: OpenMP threads spin while they wait (2-4x slower when the cores
 * are shared with OpenBLAS or another process), and OpenBLAS 0.3.21 does not know recent
 * Xeons and falls back to SSE3 kernels. When OMP_WAIT_POLICY is unset, or OpenBLAS chose
 * its Prescott kernels and OPENBLAS_CORETYPE is unset, this sets them (passive; SkylakeX or
 * Haswell from the CPU's flags) and re-executes the program with the same arguments; call
 * it first thing in main. Returns only when nothing needed changing, when CAMO_NO_REEXEC is
 * set, or when the exec failed (the program then runs with the defaults). */
void camo_cpu_env_reexec(char **argv);

/* The CUDA backend on GPU `device`: its own stream, cuDNN and cuBLAS handles, caching
 * allocator. NULL + error when camotrain was built without CUDA or the GPU is unusable.
 * Declared in every build so that callers never #ifdef (src/backend/backend_cuda_stub.c). */
camo_backend *camo_backend_cuda_create(int device);
/* Usable GPUs (honours CUDA_VISIBLE_DEVICES); 0 without CUDA or without a driver. */
int camo_cuda_device_count(void);
/* The backend's cudaStream_t as void*, NULL for the CPU backend. */
void *camo_backend_stream(camo_backend *be);

#endif
