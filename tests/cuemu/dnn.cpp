/* dnn.cpp: the cuDNN stand-in of cuemu (include/cudnn.h): the convolution calls the CUDA
 * backend makes. Test infrastructure only.
 *
 * Purpose: run the backend's glue code (cuda/cuda_conv.cu, cuda/backend_cuda.cu) on a CPU
 * and catch its bugs. So every call validates its arguments the way the real library does,
 * and where the real library would silently misbehave or fault (a host pointer, a buffer
 * overrun, a freed workspace, a handle used on the wrong device) this one aborts through
 * cuemu::fatal with a message naming the call and the operand. Places where the stand-in is
 * stricter than the real library are marked "STRICTER".
 *
 * Work (sgemm, the convolutions) is queued on the handle's stream with cuemu::enqueue, so it
 * runs asynchronously and in stream order, like a kernel; every argument is copied at call
 * time (descriptors by value, alpha and beta read from the host pointers).
 *
 * The arithmetic is a plain reference implementation, independent of the project's CPU
 * backend: products and sums in double, half/bf16 operands read through the cuda_fp16.h /
 * cuda_bf16.h conversions, the result rounded once to the output's type (via float, as the
 * GPU's fp32 accumulators do). The math type of a convolution only selects which
 * algorithms exist; the result is the exact one in every mode.
 *
 * Algorithms cuDNN reports CUDNN_NON_DETERMINISTIC (backward-data ALGO_0, backward-filter
 * ALGO_0 and ALGO_3) really are run-to-run non-deterministic here, as on a GPU: the reduction
 * is cut into chunks whose fp32 partial sums are added in a random order (last-bit
 * differences, like atomicAdd). CAMO_CUEMU_NONDET=0 fixes the order.
 *
 * Test knobs, read on every call (a test may change them between calls):
 *   CAMO_CUEMU_DNN_FAIL=<where>:<status>  the calls at <where> (heuristics: the three
 *       cudnnGet*Algorithm_v7; workspace: the three workspace queries; conv: the three
 *       convolutions) return cuDNN status <status> (a number, e.g. 3002 or 1008) and leave
 *       a message for cudnnGetLastErrorString, as a broken installation or an unsupported
 *       set-up would;
 *   CAMO_CUEMU_DNN_MAX_ELEMS=<n>  tensor and filter descriptors refuse more than n elements
 *       (default 2^31 - 1, cuDNN's limit), so the callers' batch splitting runs on small
 *       tensors. */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cudnn.h>

#include "lib_checks.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <random>
#include <unordered_set>
#include <vector>

using namespace cuemu;

/* ------------------------------------------------------------------------------------- */
/* cuDNN                                                                                  */

struct cudnnContext {
    int device;          /* current device at cudnnCreate */
    cudaStream_t stream; /* NULL: the legacy default stream */
};

struct cudnnTensorStruct {
    int set;
    cudnnTensorFormat_t format;
    cudnnDataType_t type;
    int n, c, h, w;
};

struct cudnnFilterStruct {
    int set;
    cudnnDataType_t type;
    cudnnTensorFormat_t format; /* NCHW = KCRS, NHWC = KRSC */
    int k, c, r, s;
};

struct cudnnConvolutionStruct {
    int set;
    int pad_h, pad_w, u, v, dil_h, dil_w;
    cudnnConvolutionMode_t mode;
    cudnnDataType_t compute;
    int groups;
    cudnnMathType_t math;
};

namespace {

enum Op { FWD, BWD_DATA, BWD_FILTER };

size_t type_size(cudnnDataType_t t) { return t == CUDNN_DATA_FLOAT ? 4 : 2; }

bool type_ok(cudnnDataType_t t) {
    return t == CUDNN_DATA_FLOAT || t == CUDNN_DATA_HALF || t == CUDNN_DATA_BFLOAT16;
}

/* cudnnGetLastErrorString's message: per thread, as in cuDNN 9. */
thread_local char last_error[512];

__attribute__((format(printf, 1, 2))) void set_last_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
}

double max_elems() {
    const char *e = getenv("CAMO_CUEMU_DNN_MAX_ELEMS");
    double v = e && *e ? atof(e) : 0;
    return v > 0 && v < 2147483647.0 ? v : 2147483647.0;
}

/* CAMO_CUEMU_DNN_FAIL=<where>:<status>: the status injected into call `fn` at `where`, else
 * CUDNN_STATUS_SUCCESS. */
cudnnStatus_t injected(const char *where, const char *fn) {
    const char *e = getenv("CAMO_CUEMU_DNN_FAIL");
    size_t n = strlen(where);
    if (!e || strncmp(e, where, n) != 0 || e[n] != ':') return CUDNN_STATUS_SUCCESS;
    int st = atoi(e + n + 1);
    if (st <= 0) cuemu::fatal("CAMO_CUEMU_DNN_FAIL=%s: the status must be a positive number", e);
    set_last_error("cuemu: %s failed as told by CAMO_CUEMU_DNN_FAIL=%s", fn, e);
    return (cudnnStatus_t)st;
}

/* Set-time checks shared by tensors and filters: dims, format, type. */
cudnnStatus_t check_4d(cudnnTensorFormat_t f, cudnnDataType_t t, int a, int b, int c, int d) {
    if (f != CUDNN_TENSOR_NCHW && f != CUDNN_TENSOR_NHWC) {
        if (f == CUDNN_TENSOR_NCHW_VECT_C) return CUDNN_STATUS_NOT_SUPPORTED; /* not emulated */
        return CUDNN_STATUS_BAD_PARAM;
    }
    if (t == CUDNN_DATA_DOUBLE) return CUDNN_STATUS_NOT_SUPPORTED; /* not emulated */
    if (!type_ok(t)) return CUDNN_STATUS_BAD_PARAM;
    if (a <= 0 || b <= 0 || c <= 0 || d <= 0) return CUDNN_STATUS_BAD_PARAM;
    /* cuDNN limits a tensor to 2^31 - 1 elements (lowered by CAMO_CUEMU_DNN_MAX_ELEMS) */
    double n = (double)a * b * c * d, cap = max_elems();
    if (n > cap) {
        set_last_error("cuemu: a 4-d descriptor of %.0f elements exceeds the limit of %.0f", n,
                       cap);
        return CUDNN_STATUS_NOT_SUPPORTED;
    }
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t dnn_handle(cudnnHandle_t h, const char *fn, bool need_current) {
    if (!h) return CUDNN_STATUS_BAD_PARAM;
    if (!live_objects().has(h))
        cuemu::fatal("%s: handle %p is not a live cudnnHandle_t (destroyed, or never created)",
                     fn, (void *)h);
    /* STRICTER: a cuDNN handle is tied to the GPU current at cudnnCreate; using it with
     * another current is undefined in the real library. */
    if (need_current && cuemu::current_device() != h->device)
        cuemu::fatal("%s: handle created on device %d used while device %d is current", fn,
                     h->device, cuemu::current_device());
    return CUDNN_STATUS_SUCCESS;
}

template <class D> void check_live(const D *d, const char *fn, const char *what) {
    if (!live_objects().has(d))
        cuemu::fatal("%s: %s %p is not a live descriptor (destroyed, or never created)", fn,
                     what, (const void *)d);
}

/* Everything one convolution call needs, copied from its descriptors at call time. */
struct Geom {
    cudnnDataType_t type;
    cudnnTensorFormat_t format; /* of x, y and w (all three must agree) */
    int N, C, H, W;             /* x */
    int K, Cg, R, S;            /* w */
    int P, Q;                   /* y */
    int G, Kg;                  /* groups, output channels per group */
    int pad_h, pad_w, u, v, dil_h, dil_w;
    bool flip;                  /* CUDNN_CONVOLUTION: the kernel is applied flipped */
    cudnnMathType_t math;
    size_t xn, wn, yn;          /* element counts */
};

/* The checks cuDNN makes on a (x, w, conv, y) set-up before any convolution call: each
 * descriptor set, one data type, a supported compute-type configuration, channels divisible
 * by the group count, and y exactly the forward output size. */
cudnnStatus_t geometry(const cudnnTensorStruct *x, const cudnnFilterStruct *w,
                       const cudnnConvolutionStruct *c, const cudnnTensorStruct *y,
                       const char *fn, Geom *g) {
    if (!x || !w || !c || !y) return CUDNN_STATUS_BAD_PARAM;
    check_live(x, fn, "x/dx tensor descriptor");
    check_live(y, fn, "y/dy tensor descriptor");
    check_live(w, fn, "filter descriptor");
    check_live(c, fn, "convolution descriptor");
    if (!x->set || !w->set || !c->set || !y->set) return CUDNN_STATUS_BAD_PARAM;
    if (x->type != w->type || y->type != x->type) return CUDNN_STATUS_BAD_PARAM;
    /* STRICTER: cuDNN runs some mixed-layout set-ups (e.g. NCHW tensors with a KRSC filter);
     * here x, y and w must share one layout, so a descriptor built with the wrong format
     * is an error rather than a silent transpose. */
    if (x->format != y->format || w->format != x->format) return CUDNN_STATUS_BAD_PARAM;
    /* configurations: FLOAT data / FLOAT compute; HALF data / HALF or FLOAT compute;
     * BFLOAT16 data / FLOAT compute */
    bool cfg = x->type == CUDNN_DATA_FLOAT ? c->compute == CUDNN_DATA_FLOAT
               : x->type == CUDNN_DATA_HALF
                   ? (c->compute == CUDNN_DATA_HALF || c->compute == CUDNN_DATA_FLOAT)
                   : c->compute == CUDNN_DATA_FLOAT;
    if (!cfg) return CUDNN_STATUS_NOT_SUPPORTED;
    g->type = x->type;
    g->format = x->format;
    g->N = x->n, g->C = x->c, g->H = x->h, g->W = x->w;
    g->K = w->k, g->Cg = w->c, g->R = w->r, g->S = w->s;
    g->G = c->groups;
    g->pad_h = c->pad_h, g->pad_w = c->pad_w, g->u = c->u, g->v = c->v;
    g->dil_h = c->dil_h, g->dil_w = c->dil_w;
    g->flip = c->mode == CUDNN_CONVOLUTION;
    g->math = c->math;
    if ((long long)g->Cg * g->G != g->C || g->K % g->G) return CUDNN_STATUS_BAD_PARAM;
    g->Kg = g->K / g->G;
    long long eff_r = (long long)(g->R - 1) * g->dil_h + 1;
    long long eff_s = (long long)(g->S - 1) * g->dil_w + 1;
    long long span_h = (long long)g->H + 2LL * g->pad_h, span_w = (long long)g->W + 2LL * g->pad_w;
    if (span_h < eff_r || span_w < eff_s) return CUDNN_STATUS_BAD_PARAM;
    g->P = (int)((span_h - eff_r) / g->u + 1);
    g->Q = (int)((span_w - eff_s) / g->v + 1);
    if (y->n != g->N || y->c != g->K || y->h != g->P || y->w != g->Q)
        return CUDNN_STATUS_BAD_PARAM;
    g->xn = (size_t)g->N * g->C * g->H * g->W;
    g->wn = (size_t)g->K * g->Cg * g->R * g->S;
    g->yn = (size_t)g->N * g->K * g->P * g->Q;
    return CUDNN_STATUS_SUCCESS;
}

/* ---- the emulated algorithm catalogue ----
 * One list per (op, set-up), in the order cudnnGet*Algorithm_v7 reports it. Each entry is an
 * (algorithm, math type) variant; the same algorithm may appear with several math types, as
 * in real cuDNN. The lists are made to exercise a caller's picking logic:
 *   - tensor-op entries exist for half/bf16 data only, and only with 8-aligned channels per
 *     group (tensor-core kernels); otherwise they are listed as NOT_SUPPORTED;
 *   - fp32 data has DEFAULT and FMA entries; a DEFAULT entry marked !fma_ok stands for a
 *     TF32 tensor-op kernel and does not exist under CUDNN_FMA_MATH;
 *   - the backward lists start with a non-deterministic algorithm;
 *   - FFT variants want more than 1 GiB of workspace; some entries are NOT_SUPPORTED;
 *   - workspaces are a few hundred KB, growing with the problem;
 *   - STRICTER than a fixed rule: the GEMM forward needs twice its workspace for a batch that
 *     is not a multiple of 4 images (its last tile staged in a padded copy), so a smaller
 *     batch can need more workspace than the full one, as real heuristics may pick another
 *     algorithm for another batch size. A caller that sizes its workspace on the first batch
 *     allocates again at the smaller last batch of an epoch (test_gpu_paths.sh checks). */
struct Entry {
    int algo;
    cudnnStatus_t status;
    cudnnMathType_t math;
    cudnnDeterminism_t det;
    size_t ws;
    bool fma_ok; /* DEFAULT entries: also runs with the descriptor in CUDNN_FMA_MATH */
};

std::vector<Entry> catalogue(Op op, const Geom &g) {
    const cudnnStatus_t OK = CUDNN_STATUS_SUCCESS, NS = CUDNN_STATUS_NOT_SUPPORTED;
    const cudnnDeterminism_t D = CUDNN_DETERMINISTIC, ND = CUDNN_NON_DETERMINISTIC;
    const cudnnMathType_t TC = CUDNN_TENSOR_OP_MATH, DEF = CUDNN_DEFAULT_MATH,
                          FMA = CUDNN_FMA_MATH;
    size_t es = type_size(g.type), xb = g.xn * es, yb = g.yn * es, wb = g.wn * es;
    bool half = g.type != CUDNN_DATA_FLOAT;
    bool tc = half && g.Cg % 8 == 0 && g.Kg % 8 == 0;
    bool unit = g.u == 1 && g.v == 1 && g.dil_h == 1 && g.dil_w == 1 && g.G == 1;
    bool fft = !half && unit;
    bool wino = unit && g.R == 3 && g.S == 3;
    size_t fft_ws = ((size_t)1 << 30) + round256(8 * (xb + yb + wb)); /* over our 1 GiB cap */
    size_t wino_ws = round256(256 * 1024 + 2 * (xb + yb));
    std::vector<Entry> l;
    if (op == FWD) {
        size_t pre = round256(64 * 1024 + yb / 4), pre_tc = round256(192 * 1024 + yb / 2);
        size_t im2col = round256((size_t)g.N * g.P * g.Q * g.Cg * g.R * g.S * es);
        if (g.N % 4) im2col *= 2; /* a ragged last tile of images */
        if (half) {
            l.push_back({CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM, tc ? OK : NS, TC, D,
                         tc ? pre_tc : 0, false});
            l.push_back({CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM, tc ? OK : NS, TC, D, 0, false});
        }
        l.push_back({CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM, OK, DEF, D, pre, true});
        l.push_back({CUDNN_CONVOLUTION_FWD_ALGO_FFT, fft ? OK : NS, FMA, D, fft ? fft_ws : 0,
                     false});
        l.push_back({CUDNN_CONVOLUTION_FWD_ALGO_GEMM, OK, FMA, D, im2col, false});
        l.push_back({CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM, OK, FMA, D, 0, false});
        l.push_back({CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED, wino ? OK : NS, DEF, D,
                     wino ? wino_ws : 0, false});
        l.push_back({CUDNN_CONVOLUTION_FWD_ALGO_DIRECT, NS, FMA, D, 0, false});
    } else if (op == BWD_DATA) {
        size_t a1 = round256(128 * 1024 + xb / 4), a1_tc = round256(256 * 1024 + xb / 2);
        size_t tiling = round256(512 * 1024 + 4 * (xb + yb));
        if (half) {
            l.push_back({CUDNN_CONVOLUTION_BWD_DATA_ALGO_0, tc ? OK : NS, TC, ND, 0, false});
            l.push_back({CUDNN_CONVOLUTION_BWD_DATA_ALGO_1, tc ? OK : NS, TC, D, tc ? a1_tc : 0,
                         false});
        }
        l.push_back({CUDNN_CONVOLUTION_BWD_DATA_ALGO_0, OK, FMA, ND, 0, false});
        l.push_back({CUDNN_CONVOLUTION_BWD_DATA_ALGO_1, OK, DEF, D, a1, true});
        l.push_back({CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT_TILING, fft ? OK : NS, FMA, D,
                     fft ? tiling : 0, false});
        l.push_back({CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD_NONFUSED, wino ? OK : NS, DEF, D,
                     wino ? wino_ws : 0, false});
        if (!half) l.push_back({CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT, fft ? OK : NS, FMA, D,
                                fft ? fft_ws : 0, false});
        if (!half) l.push_back({CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD, NS, FMA, D, 0, false});
    } else {
        size_t a3 = round256(64 * 1024 + wb), a1 = round256(128 * 1024 + 2 * wb);
        size_t a1_tc = round256(192 * 1024 + 4 * wb);
        if (half) {
            l.push_back({CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3, tc ? OK : NS, TC, ND, tc ? a3 : 0,
                         false});
            l.push_back({CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1, tc ? OK : NS, TC, D, tc ? a1_tc : 0,
                         false});
            l.push_back({CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0, OK, DEF, ND, 0, true});
            l.push_back({CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1, OK, DEF, D, a1, true});
        } else {
            l.push_back({CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3, OK, FMA, ND, a3, false});
            l.push_back({CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0, OK, FMA, ND, 0, false});
            l.push_back({CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1, OK, FMA, D, a1, false});
        }
        l.push_back({CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT, fft ? OK : NS, FMA, D,
                     fft ? fft_ws : 0, false});
        l.push_back({CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD, NS, FMA, D, 0, false});
        l.push_back({CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD_NONFUSED, wino ? OK : NS, DEF, D,
                     wino ? wino_ws : 0, false});
        if (!half) l.push_back({CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT_TILING, fft ? OK : NS, FMA,
                                D, fft ? round256(512 * 1024 + 4 * (xb + yb + wb)) : 0, false});
    }
    return l;
}

int algo_count(Op op) {
    return op == FWD        ? (int)CUDNN_CONVOLUTION_FWD_ALGO_COUNT
           : op == BWD_DATA ? (int)CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT
                            : (int)CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT;
}

/* Whether a variant can run with the descriptor's math type: FMA only FMA kernels (and
 * DEFAULT entries that are FMA kernels); DEFAULT no tensor-op kernels; TENSOR_OP any. */
bool math_allows(cudnnMathType_t desc, const Entry &e) {
    switch (desc) {
    case CUDNN_FMA_MATH:
        return e.math == CUDNN_FMA_MATH || (e.math == CUDNN_DEFAULT_MATH && e.fma_ok);
    case CUDNN_DEFAULT_MATH: return e.math != CUDNN_TENSOR_OP_MATH;
    default: return true;
    }
}

/* The variant of `algo` a call with the descriptor's math type runs: one reported with that
 * math type first, else any the math type allows. NOT_SUPPORTED when there is none (e.g. an
 * algorithm picked from a TENSOR_OP entry run with FMA math). */
cudnnStatus_t lookup(Op op, const Geom &g, int algo, Entry *out) {
    std::vector<Entry> l = catalogue(op, g);
    for (int pass = 0; pass < 2; pass++)
        for (const Entry &e : l)
            if (e.algo == algo && e.status == CUDNN_STATUS_SUCCESS && math_allows(g.math, e) &&
                (pass == 1 || e.math == g.math)) {
                *out = e;
                return CUDNN_STATUS_SUCCESS;
            }
    return CUDNN_STATUS_NOT_SUPPORTED;
}

template <class Perf>
cudnnStatus_t heuristics(Op op, cudnnHandle_t h, const cudnnTensorStruct *x,
                         const cudnnFilterStruct *w, const cudnnConvolutionStruct *c,
                         const cudnnTensorStruct *y, int requested, int *returned, Perf *perf,
                         const char *fn) {
    cudnnStatus_t st = dnn_handle(h, fn, true);
    if (st == CUDNN_STATUS_SUCCESS) st = injected("heuristics", fn);
    if (st != CUDNN_STATUS_SUCCESS) return st;
    if (!returned || !perf || requested <= 0) return CUDNN_STATUS_BAD_PARAM;
    Geom g;
    st = geometry(x, w, c, y, fn, &g);
    if (st != CUDNN_STATUS_SUCCESS) return st;
    std::vector<Entry> l = catalogue(op, g);
    /* a rough time estimate: 2 flops per MAC at a few TFLOP/s, later entries slower */
    double flops = 2.0 * g.N * g.K * g.P * g.Q * (double)g.Cg * g.R * g.S;
    int n = std::min<int>(requested, (int)l.size());
    for (int i = 0; i < n; i++) {
        const Entry &e = l[i];
        Perf p;
        memset(&p, 0, sizeof p);
        p.algo = (decltype(p.algo))e.algo;
        p.status = e.status;
        p.time = e.status == CUDNN_STATUS_SUCCESS
                     ? (float)(0.004 + flops / (e.math == CUDNN_TENSOR_OP_MATH ? 2e11 : 2e10) *
                                           (1.0 + 0.25 * i))
                     : -1.0f;
        p.memory = e.ws;
        p.determinism = e.det;
        p.mathType = e.math;
        perf[i] = p;
    }
    *returned = n;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t workspace_size(Op op, cudnnHandle_t h, const cudnnTensorStruct *x,
                             const cudnnFilterStruct *w, const cudnnConvolutionStruct *c,
                             const cudnnTensorStruct *y, int algo, size_t *bytes,
                             const char *fn) {
    cudnnStatus_t st = dnn_handle(h, fn, true);
    if (st == CUDNN_STATUS_SUCCESS) st = injected("workspace", fn);
    if (st != CUDNN_STATUS_SUCCESS) return st;
    if (!bytes) return CUDNN_STATUS_BAD_PARAM;
    Geom g;
    st = geometry(x, w, c, y, fn, &g);
    if (st != CUDNN_STATUS_SUCCESS) return st;
    if (algo < 0 || algo >= algo_count(op)) return CUDNN_STATUS_BAD_PARAM;
    Entry e;
    st = lookup(op, g, algo, &e);
    if (st != CUDNN_STATUS_SUCCESS) return st;
    *bytes = e.ws;
    return CUDNN_STATUS_SUCCESS;
}

/* ---- the reference convolution ----
 * Operands are first converted to float in canonical layouts (activations NHWC, filters
 * KRSC, already flipped for CUDNN_CONVOLUTION), the op runs on those with double
 * accumulators, and the result is blended into the output in its own layout and type. */

inline float load1(const void *p, cudnnDataType_t t, size_t i) {
    switch (t) {
    case CUDNN_DATA_HALF: return __half2float(((const __half *)p)[i]);
    case CUDNN_DATA_BFLOAT16: return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
    default: return ((const float *)p)[i];
    }
}

inline void store1(void *p, cudnnDataType_t t, size_t i, float v) {
    switch (t) {
    case CUDNN_DATA_HALF: ((__half *)p)[i] = __float2half(v); break;
    case CUDNN_DATA_BFLOAT16: ((__nv_bfloat16 *)p)[i] = __float2bfloat16(v); break;
    default: ((float *)p)[i] = v; break;
    }
}

/* index of element (n, c, h, w) of an N x C x H x W tensor stored in format f */
inline size_t at4(cudnnTensorFormat_t f, int n, int c, int h, int w, int C, int H, int W) {
    return f == CUDNN_TENSOR_NHWC ? (((size_t)n * H + h) * W + w) * C + c
                                  : (((size_t)n * C + c) * H + h) * W + w;
}

/* activation (N, C, H, W) in format f -> float NHWC */
std::vector<float> load_act(const void *p, cudnnDataType_t t, cudnnTensorFormat_t f, int N,
                            int C, int H, int W) {
    std::vector<float> out((size_t)N * C * H * W);
    size_t i = 0;
    for (int n = 0; n < N; n++)
        for (int h = 0; h < H; h++)
            for (int w = 0; w < W; w++)
                for (int c = 0; c < C; c++, i++) out[i] = load1(p, t, at4(f, n, c, h, w, C, H, W));
    return out;
}

/* filter (K, Cg, R, S) in format f (NCHW = KCRS, NHWC = KRSC) -> float KRSC, flipped in R and
 * S when flip */
std::vector<float> load_filter(const void *p, const Geom &g) {
    std::vector<float> out(g.wn);
    size_t i = 0;
    for (int k = 0; k < g.K; k++)
        for (int r = 0; r < g.R; r++)
            for (int s = 0; s < g.S; s++)
                for (int c = 0; c < g.Cg; c++, i++) {
                    int rr = g.flip ? g.R - 1 - r : r, ss = g.flip ? g.S - 1 - s : s;
                    out[i] = load1(p, g.type, at4(g.format, k, c, rr, ss, g.Cg, g.R, g.S));
                }
    return out;
}

/* out = alpha v + beta out for an activation (v in NHWC order); beta == 0: out not read */
void store_act(void *p, cudnnDataType_t t, cudnnTensorFormat_t f, int N, int C, int H, int W,
               double alpha, double beta, const double *v) {
    size_t i = 0;
    for (int n = 0; n < N; n++)
        for (int h = 0; h < H; h++)
            for (int w = 0; w < W; w++)
                for (int c = 0; c < C; c++, i++) {
                    size_t j = at4(f, n, c, h, w, C, H, W);
                    double r = alpha * v[i];
                    if (beta != 0.0) r += beta * load1(p, t, j);
                    store1(p, t, j, (float)r);
                }
}

/* the same for a filter gradient (v: KRSC, with respect to the flipped kernel when flip) */
void store_filter(void *p, const Geom &g, double alpha, double beta, const double *v) {
    for (int k = 0; k < g.K; k++)
        for (int r = 0; r < g.R; r++)
            for (int s = 0; s < g.S; s++)
                for (int c = 0; c < g.Cg; c++) {
                    int rr = g.flip ? g.R - 1 - r : r, ss = g.flip ? g.S - 1 - s : s;
                    size_t i = (((size_t)k * g.R + r) * g.S + s) * g.Cg + c;
                    size_t j = at4(g.format, k, c, rr, ss, g.Cg, g.R, g.S);
                    double x = alpha * v[i];
                    if (beta != 0.0) x += beta * load1(p, g.type, j);
                    store1(p, g.type, j, (float)x);
                }
}

inline double dot(const float *a, const float *b, int n) {
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int i = 0;
    for (; i + 4 <= n; i += 4) {
        s0 += (double)a[i] * b[i];
        s1 += (double)a[i + 1] * b[i + 1];
        s2 += (double)a[i + 2] * b[i + 2];
        s3 += (double)a[i + 3] * b[i + 3];
    }
    for (; i < n; i++) s0 += (double)a[i] * b[i];
    return (s0 + s1) + (s2 + s3);
}

/* y (N,P,Q,K) = sum over taps and the group's channels of x (N,H,W,C) * w (K,R,S,Cg) */
void conv_fwd(const Geom &g, const float *x, const float *w, double *y) {
    for (int n = 0; n < g.N; n++)
        for (int p = 0; p < g.P; p++)
            for (int q = 0; q < g.Q; q++) {
                double *o = y + (((size_t)n * g.P + p) * g.Q + q) * g.K;
                for (int k = 0; k < g.K; k++) o[k] = 0;
                for (int r = 0; r < g.R; r++) {
                    int h = p * g.u - g.pad_h + r * g.dil_h;
                    if (h < 0 || h >= g.H) continue;
                    for (int s = 0; s < g.S; s++) {
                        int ww = q * g.v - g.pad_w + s * g.dil_w;
                        if (ww < 0 || ww >= g.W) continue;
                        const float *xp = x + (((size_t)n * g.H + h) * g.W + ww) * g.C;
                        const float *wp = w + ((size_t)r * g.S + s) * g.Cg;
                        size_t wk = (size_t)g.R * g.S * g.Cg; /* filter stride of k */
                        for (int k = 0; k < g.K; k++)
                            o[k] += dot(xp + (size_t)(k / g.Kg) * g.Cg, wp + k * wk, g.Cg);
                    }
                }
            }
}

/* dx (N,H,W,C) += the contributions of taps [t0, t1) and of the output channels k with
 * k % Kg in [k0, k1): the transposed convolution of dy with w, scattered */
void conv_bwd_data(const Geom &g, const float *dy, const float *w, double *dx, int t0, int t1,
                   int k0, int k1) {
    size_t wk = (size_t)g.R * g.S * g.Cg;
    for (int n = 0; n < g.N; n++)
        for (int p = 0; p < g.P; p++)
            for (int q = 0; q < g.Q; q++) {
                const float *dyp = dy + (((size_t)n * g.P + p) * g.Q + q) * g.K;
                for (int t = t0; t < t1; t++) {
                    int r = t / g.S, s = t % g.S;
                    int h = p * g.u - g.pad_h + r * g.dil_h;
                    int ww = q * g.v - g.pad_w + s * g.dil_w;
                    if (h < 0 || h >= g.H || ww < 0 || ww >= g.W) continue;
                    double *dxp = dx + (((size_t)n * g.H + h) * g.W + ww) * g.C;
                    const float *wp = w + ((size_t)r * g.S + s) * g.Cg;
                    for (int gi = 0; gi < g.G; gi++) {
                        double *d = dxp + (size_t)gi * g.Cg;
                        for (int kk = k0; kk < k1; kk++) {
                            int k = gi * g.Kg + kk;
                            double v = dyp[k];
                            const float *wq = wp + k * wk;
                            for (int c = 0; c < g.Cg; c++) d[c] += v * wq[c];
                        }
                    }
                }
            }
}

/* dw (K,R,S,Cg) += the contributions of images [n0, n1) and output rows [p0, p1) */
void conv_bwd_filter(const Geom &g, const float *x, const float *dy, double *dw, int n0,
                     int n1, int p0, int p1) {
    size_t wk = (size_t)g.R * g.S * g.Cg;
    for (int n = n0; n < n1; n++)
        for (int p = p0; p < p1; p++)
            for (int q = 0; q < g.Q; q++) {
                const float *dyp = dy + (((size_t)n * g.P + p) * g.Q + q) * g.K;
                for (int r = 0; r < g.R; r++) {
                    int h = p * g.u - g.pad_h + r * g.dil_h;
                    if (h < 0 || h >= g.H) continue;
                    for (int s = 0; s < g.S; s++) {
                        int ww = q * g.v - g.pad_w + s * g.dil_w;
                        if (ww < 0 || ww >= g.W) continue;
                        const float *xp = x + (((size_t)n * g.H + h) * g.W + ww) * g.C;
                        double *dwp = dw + ((size_t)r * g.S + s) * g.Cg;
                        for (int k = 0; k < g.K; k++) {
                            double v = dyp[k];
                            const float *xg = xp + (size_t)(k / g.Kg) * g.Cg;
                            double *d = dwp + k * wk;
                            for (int c = 0; c < g.Cg; c++) d[c] += v * xg[c];
                        }
                    }
                }
            }
}

/* ---- non-determinism of the atomics-based algorithms ---- */

bool nondet_enabled() {
    static const bool on = [] {
        const char *e = getenv("CAMO_CUEMU_NONDET");
        return !(e && e[0] == '0');
    }();
    return on;
}

/* A fresh random order of n chunks (identity with CAMO_CUEMU_NONDET=0). */
std::vector<int> chunk_order(int n) {
    static std::atomic<uint64_t> counter{0};
    static const uint64_t seed = [] {
        std::random_device rd;
        return ((uint64_t)rd() << 32) ^ rd();
    }();
    std::vector<int> order((size_t)n);
    for (int i = 0; i < n; i++) order[i] = i;
    if (nondet_enabled()) {
        std::mt19937_64 rng(seed + 0x9e3779b97f4a7c15ULL * ++counter);
        std::shuffle(order.begin(), order.end(), rng);
    }
    return order;
}

/* Sums chunks as atomicAdd would: each chunk's partial sum (exact, in double) rounded to
 * float, then added in float into the result in a random chunk order. run(chunk, buf) adds
 * chunk's contribution into the zeroed double buffer buf. */
template <class Run> void nondet_sum(size_t len, int chunks, double *out, Run run) {
    std::vector<double> part(len);
    std::vector<float> acc(len, 0.0f);
    for (int c : chunk_order(chunks)) {
        std::fill(part.begin(), part.end(), 0.0);
        run(c, part.data());
        for (size_t i = 0; i < len; i++) acc[i] += (float)part[i];
    }
    for (size_t i = 0; i < len; i++) out[i] = acc[i];
}

/* One queued convolution call, everything by value. */
struct Job {
    Op op;
    Geom g;
    Entry e;
    double alpha, beta;
    const void *in1, *in2; /* FWD: x, w; BWD_DATA: w, dy; BWD_FILTER: x, dy */
    void *out;             /* y, dx, dw */
    void *ws;
    size_t ws_bytes;       /* the variant's workspace, scribbled on */
};

void run_job(const Job &j) {
    const Geom &g = j.g;
    if (j.ws && j.ws_bytes) memset(j.ws, 0xff, j.ws_bytes); /* cuDNN owns it during the call */
    bool nd = j.e.det == CUDNN_NON_DETERMINISTIC;
    if (j.op == FWD) {
        std::vector<float> x = load_act(j.in1, g.type, g.format, g.N, g.C, g.H, g.W);
        std::vector<float> w = load_filter(j.in2, g);
        std::vector<double> y(g.yn);
        conv_fwd(g, x.data(), w.data(), y.data());
        store_act(j.out, g.type, g.format, g.N, g.K, g.P, g.Q, j.alpha, j.beta, y.data());
    } else if (j.op == BWD_DATA) {
        std::vector<float> w = load_filter(j.in1, g);
        std::vector<float> dy = load_act(j.in2, g.type, g.format, g.N, g.K, g.P, g.Q);
        std::vector<double> dx(g.xn, 0.0);
        int taps = g.R * g.S;
        if (!nd) {
            conv_bwd_data(g, dy.data(), w.data(), dx.data(), 0, taps, 0, g.Kg);
        } else { /* chunks: one tap x one half of each group's output channels */
            int kb = std::min(g.Kg, 2);
            nondet_sum(g.xn, taps * kb, dx.data(), [&](int c, double *buf) {
                int t = c / kb, b = c % kb;
                conv_bwd_data(g, dy.data(), w.data(), buf, t, t + 1, g.Kg * b / kb,
                              g.Kg * (b + 1) / kb);
            });
        }
        store_act(j.out, g.type, g.format, g.N, g.C, g.H, g.W, j.alpha, j.beta, dx.data());
    } else {
        std::vector<float> x = load_act(j.in1, g.type, g.format, g.N, g.C, g.H, g.W);
        std::vector<float> dy = load_act(j.in2, g.type, g.format, g.N, g.K, g.P, g.Q);
        std::vector<double> dw(g.wn, 0.0);
        if (!nd) {
            conv_bwd_filter(g, x.data(), dy.data(), dw.data(), 0, g.N, 0, g.P);
        } else { /* chunks: one image x one quarter of the output rows */
            int pb = std::min(g.P, 4);
            nondet_sum(g.wn, g.N * pb, dw.data(), [&](int c, double *buf) {
                int n = c / pb, b = c % pb;
                conv_bwd_filter(g, x.data(), dy.data(), buf, n, n + 1, g.P * b / pb,
                                g.P * (b + 1) / pb);
            });
        }
        store_filter(j.out, g, j.alpha, j.beta, dw.data());
    }
}

/* The checks and the queueing shared by the three convolution calls. */
cudnnStatus_t convolve(Op op, const char *fn, cudnnHandle_t h, const void *alpha,
                       const cudnnTensorStruct *x, const cudnnFilterStruct *w,
                       const cudnnConvolutionStruct *c, const cudnnTensorStruct *y, int algo,
                       const void *in1, const void *in2, void *out, void *ws, size_t ws_size,
                       const void *beta) {
    cudnnStatus_t st = dnn_handle(h, fn, true);
    if (st == CUDNN_STATUS_SUCCESS) st = injected("conv", fn);
    if (st != CUDNN_STATUS_SUCCESS) return st;
    if (!alpha || !beta) return CUDNN_STATUS_BAD_PARAM;
    Geom g;
    st = geometry(x, w, c, y, fn, &g);
    if (st != CUDNN_STATUS_SUCCESS) return st;
    if (algo < 0 || algo >= algo_count(op)) return CUDNN_STATUS_BAD_PARAM;
    Entry e;
    st = lookup(op, g, algo, &e);
    if (st != CUDNN_STATUS_SUCCESS) return st;
    /* workspace: too small (or missing) is BAD_PARAM, as in cuDNN. STRICTER: a NULL pointer
     * with a nonzero size is BAD_PARAM even when the algorithm needs none. */
    if (ws_size < e.ws || (e.ws && !ws) || (ws_size && !ws)) return CUDNN_STATUS_BAD_PARAM;
    if (!in1 || !in2 || !out) return CUDNN_STATUS_BAD_PARAM_NULL_POINTER;
    int dev = h->device;
    /* STRICTER: the whole declared size must be device memory, not only what the algorithm
     * uses: a caller passing more than it allocated has a bug. */
    if (ws_size && !cuemu::is_device_range(ws, ws_size, dev))
        cuemu::fatal("%s: workspace %p, %zu bytes (algorithm %d needs %zu), is not inside one "
                     "live cudaMalloc block of device %d",
                     fn, ws, ws_size, algo, e.ws, dev);
    check_host_scalar(alpha, fn, "alpha");
    check_host_scalar(beta, fn, "beta");
    size_t es = type_size(g.type);
    size_t bx = g.xn * es, bw = g.wn * es, by = g.yn * es;
    struct Operand { const void *p; size_t bytes; const char *name; };
    Operand ops[3];
    if (op == FWD) {
        ops[0] = {in1, bx, "x"}, ops[1] = {in2, bw, "w"}, ops[2] = {out, by, "y"};
    } else if (op == BWD_DATA) {
        ops[0] = {in1, bw, "w"}, ops[1] = {in2, by, "dy"}, ops[2] = {out, bx, "dx"};
    } else {
        ops[0] = {in1, bx, "x"}, ops[1] = {in2, by, "dy"}, ops[2] = {out, bw, "dw"};
    }
    for (const Operand &o : ops)
        if (!cuemu::is_device_range(o.p, o.bytes, dev))
            cuemu::fatal("%s: %s = %p (%zu bytes; x %dx%dx%dx%d, w %dx%dx%dx%d, y %dx%dx%dx%d "
                         "as N,C,H,W / K,C,R,S, %s) is not inside one live cudaMalloc block of "
                         "device %d",
                         fn, o.name, o.p, o.bytes, g.N, g.C, g.H, g.W, g.K, g.Cg, g.R, g.S, g.N,
                         g.K, g.P, g.Q, g.format == CUDNN_TENSOR_NHWC ? "NHWC" : "NCHW", dev);
    /* STRICTER: in-place convolutions are undefined in cuDNN (not checked there); the output
     * must not overlap an input, nor the workspace anything. */
    for (int i = 0; i < 2; i++)
        if (overlaps(ops[2].p, ops[2].bytes, ops[i].p, ops[i].bytes))
            cuemu::fatal("%s: output %s (%p, %zu bytes) overlaps input %s (%p, %zu bytes)", fn,
                         ops[2].name, ops[2].p, ops[2].bytes, ops[i].name, ops[i].p,
                         ops[i].bytes);
    for (const Operand &o : ops)
        if (overlaps(ws, e.ws, o.p, o.bytes))
            cuemu::fatal("%s: workspace (%p, %zu bytes used) overlaps %s (%p, %zu bytes)", fn,
                         ws, e.ws, o.name, o.p, o.bytes);
    Job j;
    j.op = op;
    j.g = g;
    j.e = e;
    j.alpha = *(const float *)alpha; /* host scalars, float for these data types: read now */
    j.beta = *(const float *)beta;
    j.in1 = in1, j.in2 = in2, j.out = out;
    j.ws = ws;
    j.ws_bytes = e.ws;
    cudaError_t err = cuemu::enqueue(h->stream, [j]() { run_job(j); });
    return err == cudaSuccess ? CUDNN_STATUS_SUCCESS : CUDNN_STATUS_EXECUTION_FAILED;
}

} // namespace

/* ---- library, handle ---- */

/* CAMO_CUEMU_CUDNN_VERSION=N: report version N (tests of the start-up version check) */
extern "C" size_t cudnnGetVersion(void) {
    const char *v = getenv("CAMO_CUEMU_CUDNN_VERSION");
    return v ? (size_t)strtoul(v, NULL, 10) : (size_t)CUDNN_VERSION;
}

extern "C" const char *cudnnGetErrorString(cudnnStatus_t status) {
    switch (status) {
#define CUEMU_S(x) case x: return #x;
    CUEMU_S(CUDNN_STATUS_SUCCESS)
    CUEMU_S(CUDNN_STATUS_NOT_INITIALIZED)
    CUEMU_S(CUDNN_STATUS_SUBLIBRARY_VERSION_MISMATCH)
    CUEMU_S(CUDNN_STATUS_SERIALIZATION_VERSION_MISMATCH)
    CUEMU_S(CUDNN_STATUS_DEPRECATED)
    CUEMU_S(CUDNN_STATUS_LICENSE_ERROR)
    CUEMU_S(CUDNN_STATUS_RUNTIME_IN_PROGRESS)
    CUEMU_S(CUDNN_STATUS_RUNTIME_FP_OVERFLOW)
    CUEMU_S(CUDNN_STATUS_SUBLIBRARY_LOADING_FAILED)
    CUEMU_S(CUDNN_STATUS_BAD_PARAM)
    CUEMU_S(CUDNN_STATUS_BAD_PARAM_NULL_POINTER)
    CUEMU_S(CUDNN_STATUS_BAD_PARAM_MISALIGNED_POINTER)
    CUEMU_S(CUDNN_STATUS_BAD_PARAM_NOT_FINALIZED)
    CUEMU_S(CUDNN_STATUS_BAD_PARAM_OUT_OF_BOUND)
    CUEMU_S(CUDNN_STATUS_BAD_PARAM_SIZE_INSUFFICIENT)
    CUEMU_S(CUDNN_STATUS_BAD_PARAM_STREAM_MISMATCH)
    CUEMU_S(CUDNN_STATUS_BAD_PARAM_SHAPE_MISMATCH)
    CUEMU_S(CUDNN_STATUS_BAD_PARAM_DUPLICATED_ENTRIES)
    CUEMU_S(CUDNN_STATUS_BAD_PARAM_ATTRIBUTE_TYPE)
    CUEMU_S(CUDNN_STATUS_BAD_PARAM_CUDA_GRAPH_MISMATCH)
    CUEMU_S(CUDNN_STATUS_BAD_PARAM_DESCRIPTOR_TYPE)
    CUEMU_S(CUDNN_STATUS_NOT_SUPPORTED)
    CUEMU_S(CUDNN_STATUS_NOT_SUPPORTED_GRAPH_PATTERN)
    CUEMU_S(CUDNN_STATUS_NOT_SUPPORTED_SHAPE)
    CUEMU_S(CUDNN_STATUS_NOT_SUPPORTED_DATA_TYPE)
    CUEMU_S(CUDNN_STATUS_NOT_SUPPORTED_LAYOUT)
    CUEMU_S(CUDNN_STATUS_NOT_SUPPORTED_INCOMPATIBLE_CUDA_DRIVER)
    CUEMU_S(CUDNN_STATUS_NOT_SUPPORTED_INCOMPATIBLE_CUDART)
    CUEMU_S(CUDNN_STATUS_NOT_SUPPORTED_ARCH_MISMATCH)
    CUEMU_S(CUDNN_STATUS_NOT_SUPPORTED_RUNTIME_PREREQUISITE_MISSING)
    CUEMU_S(CUDNN_STATUS_NOT_SUPPORTED_SUBLIBRARY_UNAVAILABLE)
    CUEMU_S(CUDNN_STATUS_NOT_SUPPORTED_SHARED_MEMORY_INSUFFICIENT)
    CUEMU_S(CUDNN_STATUS_NOT_SUPPORTED_PADDING)
    CUEMU_S(CUDNN_STATUS_NOT_SUPPORTED_BAD_LAUNCH_PARAM)
    CUEMU_S(CUDNN_STATUS_NOT_SUPPORTED_CUDA_GRAPH_NATIVE_API)
    CUEMU_S(CUDNN_STATUS_NOT_SUPPORTED_INVALID_DYNAMIC_SHAPE)
    CUEMU_S(CUDNN_STATUS_INTERNAL_ERROR)
    CUEMU_S(CUDNN_STATUS_INTERNAL_ERROR_COMPILATION_FAILED)
    CUEMU_S(CUDNN_STATUS_INTERNAL_ERROR_UNEXPECTED_VALUE)
    CUEMU_S(CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED)
    CUEMU_S(CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED)
    CUEMU_S(CUDNN_STATUS_INTERNAL_ERROR_BAD_LAUNCH_PARAM)
    CUEMU_S(CUDNN_STATUS_INTERNAL_ERROR_TEXTURE_CREATION_FAILED)
    CUEMU_S(CUDNN_STATUS_EXECUTION_FAILED)
    CUEMU_S(CUDNN_STATUS_EXECUTION_FAILED_CUDA_DRIVER)
    CUEMU_S(CUDNN_STATUS_EXECUTION_FAILED_CUBLAS)
    CUEMU_S(CUDNN_STATUS_EXECUTION_FAILED_CUDART)
    CUEMU_S(CUDNN_STATUS_EXECUTION_FAILED_CURAND)
#undef CUEMU_S
    }
    return "CUDNN_STATUS_UNKNOWN";
}

/* the calling thread's last message, then cleared (so it never describes an older error) */
extern "C" void cudnnGetLastErrorString(char *message, size_t max_size) {
    if (!message || !max_size) return;
    snprintf(message, max_size, "%s", last_error);
    last_error[0] = 0;
}

extern "C" cudnnStatus_t cudnnCreate(cudnnHandle_t *handle) {
    if (!handle) return CUDNN_STATUS_BAD_PARAM;
    *handle = NULL;
    if (cuemu::device_count() <= 0) return CUDNN_STATUS_NOT_INITIALIZED;
    cudnnContext *h = new cudnnContext;
    h->device = cuemu::current_device();
    h->stream = NULL;
    live_objects().add(h);
    *handle = h;
    return CUDNN_STATUS_SUCCESS;
}

extern "C" cudnnStatus_t cudnnDestroy(cudnnHandle_t handle) {
    cudnnStatus_t st = dnn_handle(handle, "cudnnDestroy", false);
    if (st != CUDNN_STATUS_SUCCESS) return st;
    live_objects().remove(handle);
    delete handle; /* queued work holds copies of everything it needs */
    return CUDNN_STATUS_SUCCESS;
}

extern "C" cudnnStatus_t cudnnSetStream(cudnnHandle_t handle, cudaStream_t streamId) {
    cudnnStatus_t st = dnn_handle(handle, "cudnnSetStream", false);
    if (st != CUDNN_STATUS_SUCCESS) return st;
    if (streamId) {
        int sd = cuemu::stream_device(streamId);
        if (sd < 0) return CUDNN_STATUS_BAD_PARAM;
        if (sd != handle->device) return CUDNN_STATUS_BAD_PARAM_STREAM_MISMATCH;
    }
    handle->stream = streamId;
    return CUDNN_STATUS_SUCCESS;
}

/* ---- descriptors ---- */

namespace {

template <class D> cudnnStatus_t create_desc(D **out) {
    if (!out) return CUDNN_STATUS_BAD_PARAM;
    D *d = new D;
    memset(d, 0, sizeof *d);
    live_objects().add(d);
    *out = d;
    return CUDNN_STATUS_SUCCESS;
}

template <class D> cudnnStatus_t destroy_desc(D *d, const char *fn) {
    if (!d) return CUDNN_STATUS_SUCCESS; /* as cuDNN: destroying NULL is a no-op */
    if (!live_objects().remove(d))
        cuemu::fatal("%s: %p is not a live descriptor (destroyed twice?)", fn, (void *)d);
    delete d;
    return CUDNN_STATUS_SUCCESS;
}

template <class D> cudnnStatus_t set_target(D *d, const char *fn) {
    if (!d) return CUDNN_STATUS_BAD_PARAM;
    check_live(d, fn, "descriptor");
    return CUDNN_STATUS_SUCCESS;
}

} // namespace

extern "C" cudnnStatus_t cudnnCreateTensorDescriptor(cudnnTensorDescriptor_t *tensorDesc) {
    return create_desc(tensorDesc);
}

extern "C" cudnnStatus_t cudnnDestroyTensorDescriptor(cudnnTensorDescriptor_t tensorDesc) {
    return destroy_desc(tensorDesc, "cudnnDestroyTensorDescriptor");
}

extern "C" cudnnStatus_t cudnnSetTensor4dDescriptor(cudnnTensorDescriptor_t tensorDesc,
                                                    cudnnTensorFormat_t format,
                                                    cudnnDataType_t dataType, int n, int c,
                                                    int h, int w) {
    cudnnStatus_t st = set_target(tensorDesc, "cudnnSetTensor4dDescriptor");
    if (st == CUDNN_STATUS_SUCCESS) st = check_4d(format, dataType, n, c, h, w);
    if (st != CUDNN_STATUS_SUCCESS) return st;
    tensorDesc->set = 1;
    tensorDesc->format = format;
    tensorDesc->type = dataType;
    tensorDesc->n = n, tensorDesc->c = c, tensorDesc->h = h, tensorDesc->w = w;
    return CUDNN_STATUS_SUCCESS;
}

extern "C" cudnnStatus_t cudnnCreateFilterDescriptor(cudnnFilterDescriptor_t *filterDesc) {
    return create_desc(filterDesc);
}

extern "C" cudnnStatus_t cudnnDestroyFilterDescriptor(cudnnFilterDescriptor_t filterDesc) {
    return destroy_desc(filterDesc, "cudnnDestroyFilterDescriptor");
}

extern "C" cudnnStatus_t cudnnSetFilter4dDescriptor(cudnnFilterDescriptor_t filterDesc,
                                                    cudnnDataType_t dataType,
                                                    cudnnTensorFormat_t format, int k, int c,
                                                    int h, int w) {
    cudnnStatus_t st = set_target(filterDesc, "cudnnSetFilter4dDescriptor");
    if (st == CUDNN_STATUS_SUCCESS) st = check_4d(format, dataType, k, c, h, w);
    if (st != CUDNN_STATUS_SUCCESS) return st;
    filterDesc->set = 1;
    filterDesc->type = dataType;
    filterDesc->format = format;
    filterDesc->k = k, filterDesc->c = c, filterDesc->r = h, filterDesc->s = w;
    return CUDNN_STATUS_SUCCESS;
}

extern "C" cudnnStatus_t cudnnCreateConvolutionDescriptor(cudnnConvolutionDescriptor_t *convDesc) {
    cudnnStatus_t st = create_desc(convDesc);
    if (st == CUDNN_STATUS_SUCCESS) {
        (*convDesc)->groups = 1; /* cuDNN's defaults */
        (*convDesc)->math = CUDNN_DEFAULT_MATH;
    }
    return st;
}

extern "C" cudnnStatus_t cudnnDestroyConvolutionDescriptor(cudnnConvolutionDescriptor_t convDesc) {
    return destroy_desc(convDesc, "cudnnDestroyConvolutionDescriptor");
}

extern "C" cudnnStatus_t cudnnSetConvolution2dDescriptor(cudnnConvolutionDescriptor_t convDesc,
                                                         int pad_h, int pad_w, int u, int v,
                                                         int dilation_h, int dilation_w,
                                                         cudnnConvolutionMode_t mode,
                                                         cudnnDataType_t computeType) {
    cudnnStatus_t st = set_target(convDesc, "cudnnSetConvolution2dDescriptor");
    if (st != CUDNN_STATUS_SUCCESS) return st;
    if (pad_h < 0 || pad_w < 0 || u < 1 || v < 1 || dilation_h < 1 || dilation_w < 1)
        return CUDNN_STATUS_BAD_PARAM;
    if (mode != CUDNN_CONVOLUTION && mode != CUDNN_CROSS_CORRELATION)
        return CUDNN_STATUS_BAD_PARAM;
    if (computeType == CUDNN_DATA_DOUBLE) return CUDNN_STATUS_NOT_SUPPORTED; /* not emulated */
    if (computeType != CUDNN_DATA_FLOAT && computeType != CUDNN_DATA_HALF)
        return CUDNN_STATUS_BAD_PARAM;
    convDesc->set = 1;
    convDesc->pad_h = pad_h, convDesc->pad_w = pad_w;
    convDesc->u = u, convDesc->v = v;
    convDesc->dil_h = dilation_h, convDesc->dil_w = dilation_w;
    convDesc->mode = mode;
    convDesc->compute = computeType;
    return CUDNN_STATUS_SUCCESS;
}

extern "C" cudnnStatus_t cudnnSetConvolutionGroupCount(cudnnConvolutionDescriptor_t convDesc,
                                                       int groupCount) {
    cudnnStatus_t st = set_target(convDesc, "cudnnSetConvolutionGroupCount");
    if (st != CUDNN_STATUS_SUCCESS) return st;
    if (groupCount < 1) return CUDNN_STATUS_BAD_PARAM;
    convDesc->groups = groupCount;
    return CUDNN_STATUS_SUCCESS;
}

extern "C" cudnnStatus_t cudnnSetConvolutionMathType(cudnnConvolutionDescriptor_t convDesc,
                                                     cudnnMathType_t mathType) {
    cudnnStatus_t st = set_target(convDesc, "cudnnSetConvolutionMathType");
    if (st != CUDNN_STATUS_SUCCESS) return st;
    if (mathType != CUDNN_DEFAULT_MATH && mathType != CUDNN_TENSOR_OP_MATH &&
        mathType != CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION && mathType != CUDNN_FMA_MATH)
        return CUDNN_STATUS_BAD_PARAM;
    convDesc->math = mathType;
    return CUDNN_STATUS_SUCCESS;
}

/* ---- heuristics and workspace sizes ---- */

extern "C" cudnnStatus_t cudnnGetConvolutionForwardAlgorithm_v7(
    cudnnHandle_t handle, const cudnnTensorDescriptor_t srcDesc,
    const cudnnFilterDescriptor_t filterDesc, const cudnnConvolutionDescriptor_t convDesc,
    const cudnnTensorDescriptor_t destDesc, const int requestedAlgoCount,
    int *returnedAlgoCount, cudnnConvolutionFwdAlgoPerf_t *perfResults) {
    return heuristics(FWD, handle, srcDesc, filterDesc, convDesc, destDesc, requestedAlgoCount,
                      returnedAlgoCount, perfResults, "cudnnGetConvolutionForwardAlgorithm_v7");
}

extern "C" cudnnStatus_t cudnnGetConvolutionBackwardDataAlgorithm_v7(
    cudnnHandle_t handle, const cudnnFilterDescriptor_t filterDesc,
    const cudnnTensorDescriptor_t diffDesc, const cudnnConvolutionDescriptor_t convDesc,
    const cudnnTensorDescriptor_t gradDesc, const int requestedAlgoCount,
    int *returnedAlgoCount, cudnnConvolutionBwdDataAlgoPerf_t *perfResults) {
    return heuristics(BWD_DATA, handle, gradDesc, filterDesc, convDesc, diffDesc,
                      requestedAlgoCount, returnedAlgoCount, perfResults,
                      "cudnnGetConvolutionBackwardDataAlgorithm_v7");
}

extern "C" cudnnStatus_t cudnnGetConvolutionBackwardFilterAlgorithm_v7(
    cudnnHandle_t handle, const cudnnTensorDescriptor_t srcDesc,
    const cudnnTensorDescriptor_t diffDesc, const cudnnConvolutionDescriptor_t convDesc,
    const cudnnFilterDescriptor_t gradDesc, const int requestedAlgoCount,
    int *returnedAlgoCount, cudnnConvolutionBwdFilterAlgoPerf_t *perfResults) {
    return heuristics(BWD_FILTER, handle, srcDesc, gradDesc, convDesc, diffDesc,
                      requestedAlgoCount, returnedAlgoCount, perfResults,
                      "cudnnGetConvolutionBackwardFilterAlgorithm_v7");
}

extern "C" cudnnStatus_t cudnnGetConvolutionForwardWorkspaceSize(
    cudnnHandle_t handle, const cudnnTensorDescriptor_t xDesc,
    const cudnnFilterDescriptor_t wDesc, const cudnnConvolutionDescriptor_t convDesc,
    const cudnnTensorDescriptor_t yDesc, cudnnConvolutionFwdAlgo_t algo, size_t *sizeInBytes) {
    return workspace_size(FWD, handle, xDesc, wDesc, convDesc, yDesc, (int)algo, sizeInBytes,
                          "cudnnGetConvolutionForwardWorkspaceSize");
}

extern "C" cudnnStatus_t cudnnGetConvolutionBackwardDataWorkspaceSize(
    cudnnHandle_t handle, const cudnnFilterDescriptor_t wDesc,
    const cudnnTensorDescriptor_t dyDesc, const cudnnConvolutionDescriptor_t convDesc,
    const cudnnTensorDescriptor_t dxDesc, cudnnConvolutionBwdDataAlgo_t algo,
    size_t *sizeInBytes) {
    return workspace_size(BWD_DATA, handle, dxDesc, wDesc, convDesc, dyDesc, (int)algo,
                          sizeInBytes, "cudnnGetConvolutionBackwardDataWorkspaceSize");
}

extern "C" cudnnStatus_t cudnnGetConvolutionBackwardFilterWorkspaceSize(
    cudnnHandle_t handle, const cudnnTensorDescriptor_t xDesc,
    const cudnnTensorDescriptor_t dyDesc, const cudnnConvolutionDescriptor_t convDesc,
    const cudnnFilterDescriptor_t gradDesc, cudnnConvolutionBwdFilterAlgo_t algo,
    size_t *sizeInBytes) {
    return workspace_size(BWD_FILTER, handle, xDesc, gradDesc, convDesc, dyDesc, (int)algo,
                          sizeInBytes, "cudnnGetConvolutionBackwardFilterWorkspaceSize");
}

/* ---- the convolutions ---- */

extern "C" cudnnStatus_t cudnnConvolutionForward(cudnnHandle_t handle, const void *alpha,
                                                 const cudnnTensorDescriptor_t xDesc,
                                                 const void *x,
                                                 const cudnnFilterDescriptor_t wDesc,
                                                 const void *w,
                                                 const cudnnConvolutionDescriptor_t convDesc,
                                                 cudnnConvolutionFwdAlgo_t algo,
                                                 void *workSpace, size_t workSpaceSizeInBytes,
                                                 const void *beta,
                                                 const cudnnTensorDescriptor_t yDesc, void *y) {
    return convolve(FWD, "cudnnConvolutionForward", handle, alpha, xDesc, wDesc, convDesc,
                    yDesc, (int)algo, x, w, y, workSpace, workSpaceSizeInBytes, beta);
}

extern "C" cudnnStatus_t cudnnConvolutionBackwardData(
    cudnnHandle_t handle, const void *alpha, const cudnnFilterDescriptor_t wDesc, const void *w,
    const cudnnTensorDescriptor_t dyDesc, const void *dy,
    const cudnnConvolutionDescriptor_t convDesc, cudnnConvolutionBwdDataAlgo_t algo,
    void *workSpace, size_t workSpaceSizeInBytes, const void *beta,
    const cudnnTensorDescriptor_t dxDesc, void *dx) {
    return convolve(BWD_DATA, "cudnnConvolutionBackwardData", handle, alpha, dxDesc, wDesc,
                    convDesc, dyDesc, (int)algo, w, dy, dx, workSpace, workSpaceSizeInBytes,
                    beta);
}

extern "C" cudnnStatus_t cudnnConvolutionBackwardFilter(
    cudnnHandle_t handle, const void *alpha, const cudnnTensorDescriptor_t xDesc, const void *x,
    const cudnnTensorDescriptor_t dyDesc, const void *dy,
    const cudnnConvolutionDescriptor_t convDesc, cudnnConvolutionBwdFilterAlgo_t algo,
    void *workSpace, size_t workSpaceSizeInBytes, const void *beta,
    const cudnnFilterDescriptor_t dwDesc, void *dw) {
    return convolve(BWD_FILTER, "cudnnConvolutionBackwardFilter", handle, alpha, xDesc, dwDesc,
                    convDesc, dyDesc, (int)algo, x, dy, dw, workSpace, workSpaceSizeInBytes,
                    beta);
}
