/* cpu_attention.c: CPU multi-head attention over the tokens of each image (camo_attn_desc,
 * backend.h): scaled dot-product attention (SegFormer's efficient self-attention, whose keys
 * and values come from a spatially reduced map) and cross-covariance attention (XCiT and
 * EdgeNeXt's XCA), forward and backward; backward ops accumulate.
 * Products are single-threaded sgemms on fixed work units (one head of one image, or a band
 * of ATT_ROWS of its rows) shared out to the OpenMP team; every output value is written by
 * one unit, and sums across units are added in a fixed order, so the results are the same
 * bits for any thread count. cuda/cuda_attention.cu is the twin, formula for formula.
 * Functions whose only use of `be` is an OpenMP pragma start with (void)be: builds without
 * OpenMP (TSan) ignore the pragmas. */
#include "cpu_internal.h"

#include <cblas.h>
#include <math.h>

#include "core/common.h"

#define ATT_ROWS 64      /* rows per work unit: fixed, so results ignore the thread count */
#define ATT_PAR_MIN 1e5  /* multiply-adds below which the team is not woken */
#define XCA_EPS 1e-12    /* F.normalize's eps: a norm is max(||x||, eps) */
#define XCA_RMAX 1e12f   /* 1 / XCA_EPS: the inverse norm of a clamped (near-zero) channel */

static void sgemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                  const float *B, int ldb, float beta, float *C, int ldc) {
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

/* threads for `units` work units of `macs` multiply-adds in all */
static int team(camo_backend *be, long units, double macs) {
    long T = macs < ATT_PAR_MIN ? 1 : cpu_threads(be);
    if (T > units) T = units;
    return T < 1 ? 1 : (int)T;
}

/* x (n) = softmax(x) in place: the max subtracted, the sum in double (as cpu_softmax) */
static void softmax_row(float *x, int n) {
    float mx = -INFINITY;
    for (int i = 0; i < n; i++) mx = fmaxf(mx, x[i]);
    double sum = 0;
    for (int i = 0; i < n; i++) {
        x[i] = expf(x[i] - mx);
        sum += x[i];
    }
    float inv = (float)(1.0 / sum);
    for (int i = 0; i < n; i++) x[i] *= inv;
}

/* ---- scaled dot-product attention ---- */

/* Work units: (image, head, band of ATT_ROWS query rows), each independent. */
static void cpu_attention_forward(camo_backend *be, const camo_attn_desc *d, float scale,
                                  float *out, float *P, const float *q, const float *k,
                                  const float *v) {
    int L = d->L, S = d->S, C = d->C, H = d->heads, D = C / H;
    int nb = (L + ATT_ROWS - 1) / ATT_ROWS;
    long units = (long)d->N * H * nb;
    int T = team(be, units, 2.0 * d->N * L * S * C);
    (void)T; /* only read by the OpenMP pragma */
#pragma omp parallel for num_threads(T) schedule(static)
    for (long u = 0; u < units; u++) {
        int n = (int)(u / ((long)H * nb)), h = (int)(u / nb % H), r0 = (int)(u % nb) * ATT_ROWS;
        int rows = CAMO_MIN(ATT_ROWS, L - r0);
        float *p = P + (((size_t)n * H + h) * L + r0) * S; /* (rows, S) */
        sgemm(0, 1, rows, S, D, scale, q + ((size_t)n * L + r0) * d->ldq + h * D, d->ldq,
              k + (size_t)n * S * d->ldk + h * D, d->ldk, 0.0f, p, S);
        for (int r = 0; r < rows; r++) softmax_row(p + (size_t)r * S, S);
        sgemm(0, 0, rows, D, S, 1.0f, p, S, v + (size_t)n * S * d->ldv + h * D, d->ldv, 0.0f,
              out + ((size_t)n * L + r0) * C + h * D, C);
    }
}

/* w (n) = scale * p * (w - sum(w * p)): dP -> d(scores) through the softmax and the scale */
static void softmax_backward_row(float *w, const float *p, int n, float scale) {
    double dot = 0;
    for (int i = 0; i < n; i++) dot += (double)w[i] * p[i];
    float dd = (float)dot;
    for (int i = 0; i < n; i++) w[i] = scale * (p[i] * (w[i] - dd));
}

/* One image at a time (work holds its heads * L * S score gradients). Query bands first:
 * dP = dout v^T, dS = scale * P (dP - rowsum(dP P)), dq += dS k; then key bands, whose
 * sums run over all queries: dv += P^T dout, dk += dS^T q. */
static void cpu_attention_backward(camo_backend *be, const camo_attn_desc *d, float scale,
                                   float *dq, float *dk, float *dv, float *work,
                                   const float *dout, const float *q, const float *k,
                                   const float *v, const float *P) {
    int L = d->L, S = d->S, C = d->C, H = d->heads, D = C / H;
    int nbl = (L + ATT_ROWS - 1) / ATT_ROWS, nbs = (S + ATT_ROWS - 1) / ATT_ROWS;
    size_t LS = (size_t)L * S;
    double macs = 2.0 * L * S * C; /* per phase and image */
    int Tl = team(be, (long)H * nbl, macs), Ts = team(be, (long)H * nbs, macs);
    (void)Tl, (void)Ts; /* only read by the OpenMP pragmas */
    for (int n = 0; n < d->N; n++) {
        const float *qn = q + (size_t)n * L * d->ldq, *kn = k + (size_t)n * S * d->ldk;
        const float *vn = v + (size_t)n * S * d->ldv, *don = dout + (size_t)n * L * C;
        const float *Pn = P + (size_t)n * H * LS;
        float *dqn = dq + (size_t)n * L * d->ldq, *dkn = dk + (size_t)n * S * d->ldk;
        float *dvn = dv + (size_t)n * S * d->ldv;
#pragma omp parallel for num_threads(Tl) schedule(static)
        for (long u = 0; u < (long)H * nbl; u++) {
            int h = (int)(u / nbl), r0 = (int)(u % nbl) * ATT_ROWS;
            int rows = CAMO_MIN(ATT_ROWS, L - r0);
            const float *p = Pn + h * LS + (size_t)r0 * S;
            float *w = work + h * LS + (size_t)r0 * S;
            sgemm(0, 1, rows, S, D, 1.0f, don + (size_t)r0 * C + h * D, C, vn + h * D, d->ldv,
                  0.0f, w, S);
            for (int r = 0; r < rows; r++)
                softmax_backward_row(w + (size_t)r * S, p + (size_t)r * S, S, scale);
            sgemm(0, 0, rows, D, S, 1.0f, w, S, kn + h * D, d->ldk, 1.0f,
                  dqn + (size_t)r0 * d->ldq + h * D, d->ldq);
        }
#pragma omp parallel for num_threads(Ts) schedule(static)
        for (long u = 0; u < (long)H * nbs; u++) {
            int h = (int)(u / nbs), s0 = (int)(u % nbs) * ATT_ROWS;
            int rows = CAMO_MIN(ATT_ROWS, S - s0);
            sgemm(1, 0, rows, D, L, 1.0f, Pn + h * LS + s0, S, don + h * D, C, 1.0f,
                  dvn + (size_t)s0 * d->ldv + h * D, d->ldv);
            sgemm(1, 0, rows, D, L, 1.0f, work + h * LS + s0, S, qn + h * D, d->ldq, 1.0f,
                  dkn + (size_t)s0 * d->ldk + h * D, d->ldk);
        }
    }
}

/* ---- cross-covariance attention ---- */

#define XCA_CBLK 64 /* channels per unit of the norms */

/* r[c] = 1 / max(||x[:, c]||, eps) for c in [c0, c1) over the L rows of x (L, ld) */
static void inv_norms(const float *x, int L, int ld, int c0, int c1, float *r) {
    double acc[XCA_CBLK] = {0};
    for (int t = 0; t < L; t++) {
        const float *row = x + (size_t)t * ld;
        for (int c = c0; c < c1; c++) acc[c - c0] += (double)row[c] * row[c];
    }
    for (int c = c0; c < c1; c++) r[c] = (float)(1.0 / fmax(sqrt(acc[c - c0]), XCA_EPS));
}

static void xca_norms(camo_backend *be, const camo_attn_desc *d, float *rq, float *rk,
                      const float *q, const float *k) {
    int C = d->C, L = d->L, nbc = (C + XCA_CBLK - 1) / XCA_CBLK;
    long units = 2L * d->N * nbc;
    int T = team(be, units, 2.0 * d->N * L * C);
    (void)T; /* only read by the OpenMP pragma */
#pragma omp parallel for num_threads(T) schedule(static)
    for (long u = 0; u < units; u++) {
        int which = (int)(u / ((long)d->N * nbc)), n = (int)(u / nbc % d->N);
        int c0 = (int)(u % nbc) * XCA_CBLK, c1 = CAMO_MIN(C, c0 + XCA_CBLK);
        if (which == 0)
            inv_norms(q + (size_t)n * L * d->ldq, L, d->ldq, c0, c1, rq + (size_t)n * C);
        else
            inv_norms(k + (size_t)n * L * d->ldk, L, d->ldk, c0, c1, rk + (size_t)n * C);
    }
}

/* Units: (image, head). G = q_h^T k_h scaled to cosines, P = row softmax of temp * G,
 * out_h = v_h P^T. */
static void cpu_xca_forward(camo_backend *be, const camo_attn_desc *d, float *out, float *P,
                            float *G, float *rq, float *rk, const float *q, const float *k,
                            const float *v, const float *temp) {
    int L = d->L, C = d->C, H = d->heads, D = C / H;
    xca_norms(be, d, rq, rk, q, k);
    long units = (long)d->N * H;
    int T = team(be, units, 2.0 * d->N * L * C * D);
    (void)T; /* only read by the OpenMP pragma */
#pragma omp parallel for num_threads(T) schedule(static)
    for (long u = 0; u < units; u++) {
        int n = (int)(u / H), h = (int)(u % H);
        size_t off = (size_t)u * D * D; /* (n * H + h) * D * D */
        float *g = G + off, *p = P + off;
        const float *rqh = rq + (size_t)n * C + h * D, *rkh = rk + (size_t)n * C + h * D;
        sgemm(1, 0, D, D, L, 1.0f, q + (size_t)n * L * d->ldq + h * D, d->ldq,
              k + (size_t)n * L * d->ldk + h * D, d->ldk, 0.0f, g, D);
        for (int c = 0; c < D; c++) {
            float *gr = g + (size_t)c * D, *pr = p + (size_t)c * D;
            for (int c2 = 0; c2 < D; c2++) {
                gr[c2] = gr[c2] * rqh[c] * rkh[c2];
                pr[c2] = temp[h] * gr[c2];
            }
            softmax_row(pr, D);
        }
        sgemm(0, 1, L, D, D, 1.0f, v + (size_t)n * L * d->ldv + h * D, d->ldv, p, D, 0.0f,
              out + (size_t)n * L * C + h * D, C);
    }
}

/* Row c of one head: w = dP row -> dG = t * dZ (dZ the softmax backward of dP); *tp = the
 * row's share of dtemp (sum dZ * G); *aq = -rq^2 sum(dG * G), the coefficient of q[:, c] in
 * dq (the normalisation's projection; 0 where the norm was clamped) */
static void xca_row_backward(float *w, const float *p, const float *g, int D, float t,
                             float rq, float *tp, float *aq) {
    double dot = 0, st = 0, sg = 0;
    for (int i = 0; i < D; i++) dot += (double)w[i] * p[i];
    float dd = (float)dot;
    for (int i = 0; i < D; i++) {
        float dz = p[i] * (w[i] - dd);
        st += (double)dz * g[i];
        float dg = t * dz;
        w[i] = dg;
        sg += (double)dg * g[i];
    }
    *tp = (float)st;
    *aq = rq < XCA_RMAX ? -rq * rq * (float)sg : 0.0f;
}

/* Column c2 of one head's dG (D, D): *ak as *aq above for k; then dG[c][c2] *= rq[c] rk:
 * the matrix B with dq_h += k_h B^T and dk_h += q_h B */
static void xca_col_backward(float *w, const float *g, int D, int c2, const float *rqh,
                             float rk, float *ak) {
    double s = 0;
    for (int c = 0; c < D; c++) s += (double)w[(size_t)c * D + c2] * g[(size_t)c * D + c2];
    *ak = rk < XCA_RMAX ? -rk * rk * (float)s : 0.0f;
    for (int c = 0; c < D; c++) w[(size_t)c * D + c2] = w[(size_t)c * D + c2] * rqh[c] * rk;
}

/* One (image, head) unit of the backward. Through the cosines Gc = (q rq)^T (k rk):
 * dq = rq (k rk dG^T) - q rq^2 rowsum(dG Gc), dk likewise with the column sums. */
static void xca_unit_backward(const camo_attn_desc *d, int n, int h, float *dq, float *dk,
                              float *dv, float *work, const float *dout, const float *q,
                              const float *k, const float *v, const float *temp,
                              const float *P, const float *G, const float *rq, const float *rk) {
    int L = d->L, C = d->C, D = C / d->heads;
    size_t off = ((size_t)n * d->heads + h) * D * D, ch = (size_t)n * C + h * D;
    float *w = work + off, *aq = work + (size_t)d->N * C * D, *ak = aq + (size_t)d->N * C;
    float *tp = ak + (size_t)d->N * C;
    const float *p = P + off, *g = G + off, *don = dout + (size_t)n * L * C + h * D;
    size_t oq = (size_t)n * L * d->ldq + h * D, ok = (size_t)n * L * d->ldk + h * D;
    const float *qh = q + oq, *kh = k + ok;
    float *dqh = dq + oq, *dkh = dk + ok;
    sgemm(1, 0, D, D, L, 1.0f, don, C, v + (size_t)n * L * d->ldv + h * D, d->ldv, 0.0f, w, D);
    sgemm(0, 0, L, D, D, 1.0f, don, C, p, D, 1.0f, dv + (size_t)n * L * d->ldv + h * D, d->ldv);
    for (int c = 0; c < D; c++)
        xca_row_backward(w + (size_t)c * D, p + (size_t)c * D, g + (size_t)c * D, D, temp[h],
                         rq[ch + c], &tp[ch + c], &aq[ch + c]);
    for (int c2 = 0; c2 < D; c2++)
        xca_col_backward(w, g, D, c2, rq + ch, rk[ch + c2], &ak[ch + c2]);
    sgemm(0, 1, L, D, D, 1.0f, kh, d->ldk, w, D, 1.0f, dqh, d->ldq);
    sgemm(0, 0, L, D, D, 1.0f, qh, d->ldq, w, D, 1.0f, dkh, d->ldk);
    for (int t = 0; t < L; t++)
        for (int c = 0; c < D; c++)
            dqh[(size_t)t * d->ldq + c] += qh[(size_t)t * d->ldq + c] * aq[ch + c];
    for (int t = 0; t < L; t++)
        for (int c = 0; c < D; c++)
            dkh[(size_t)t * d->ldk + c] += kh[(size_t)t * d->ldk + c] * ak[ch + c];
}

static void cpu_xca_backward(camo_backend *be, const camo_attn_desc *d, float *dq, float *dk,
                             float *dv, float *dtemp, float *work, const float *dout,
                             const float *q, const float *k, const float *v, const float *temp,
                             const float *P, const float *G, const float *rq, const float *rk) {
    int C = d->C, H = d->heads, D = C / H;
    long units = (long)d->N * H;
    int T = team(be, units, 4.0 * d->N * d->L * C * D);
    (void)T; /* only read by the OpenMP pragma */
#pragma omp parallel for num_threads(T) schedule(static)
    for (long u = 0; u < units; u++)
        xca_unit_backward(d, (int)(u / H), (int)(u % H), dq, dk, dv, work, dout, q, k, v, temp,
                          P, G, rq, rk);
    const float *tp = work + (size_t)d->N * C * (D + 2); /* the rows' shares, in fixed order */
    for (int h = 0; h < H; h++) {
        double s = 0;
        for (int n = 0; n < d->N; n++)
            for (int c = 0; c < D; c++) s += tp[(size_t)n * C + h * D + c];
        dtemp[h] += (float)s;
    }
}

void cpu_register_attention(camo_backend *be) {
    be->attention_forward = cpu_attention_forward;
    be->attention_backward = cpu_attention_backward;
    be->xca_forward = cpu_xca_forward;
    be->xca_backward = cpu_xca_backward;
}
