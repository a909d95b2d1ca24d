/* replica.c: one replica's model, its slice of every global batch, the gradient exchange
 * and the optimizer step (see replica.h). DESIGN.md "Training semantics" 1-6: losses are
 * local sums over the GLOBAL count, gradients are SUM-reduced, so N replicas take the
 * same step as one replica on the whole batch. */
#include "parallel/replica.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cuda.h"
#include "core/common.h"
#include "core/fault.h"

/* r->loss_dev is the block of backend memory where a step's measurements add up on the
 * device, read back with one download per step: the loss (a float at byte 0, what the loss
 * ops add to), then from byte 8 the main output's pixel counts [correct, counted] as doubles
 * (pixel_correct adds to them; integer counts stay exact), then the gradient norm when
 * clipping ran on the device (a double at byte 24). The download is queued behind
 * the step into one of two pinned blocks and read a step later, so that the host never
 * waits for the GPU to drain (only for the previous step's end). */
#define STATS_BYTES (4 * sizeof(double))
static double *pixel_counts(camo_replica *r) {
    return (double *)((char *)r->loss_dev + sizeof(double));
}
static double *grad_norm_slot(camo_replica *r) {
    return (double *)((char *)r->loss_dev + 3 * sizeof(double));
}

int camo_replica_init(camo_replica *r, const camo_replica_opts *opts, const camo_ckpt *ck,
                      camo_backend *be, int rank, int size, int local_batch,
                      char **network_text) {
    memset(r, 0, sizeof *r);
    r->o = *opts;
    r->rank = rank;
    r->size = size;
    r->be = be;
    r->dp = opts->dp;
    r->sync_bn = opts->sync_bn;
    if (ck) {
        if (network_text) *network_text = camo_strdup(ck->network_text);
        r->net = camo_net_build_from_text(ck->network_text, ck->path, be);
    } else {
        r->net = camo_net_build(&opts->net, be, network_text);
    }
    if (!r->net) return -1;
    int S = opts->img_size;
    camo_net_set_lean(r->net, opts->lean_memory); /* before the first plan: nothing to redo */
    if (opts->checkpointing && camo_net_set_checkpointing(r->net, 1) < 0) return -1;
    if (camo_net_set_input_size(r->net, CAMO_MAX(local_batch, 1), S, S) ||
        camo_loss_check(r->net, opts->loss, opts->deep_supervision))
        return -1;
    camo_net_init_weights(r->net, opts->seed);
    if (ck && camo_ckpt_load_weights(ck, r->net, 0)) return -1;
    if (!ck && opts->init_weights && opts->init_weights[0]) { /* before the EMA copies them */
        camo_pretrained_report rep;
        if (camo_net_load_pretrained(r->net, opts->init_weights, opts->init_prefix,
                                     opts->init_strict, &rep))
            return -1;
        if (rank == 0) camo_pretrained_print(&rep, r->net->name);
    }
    r->opt = camo_optim_create(r->net, &opts->optim);
    if (ck && camo_ckpt_load_optim(ck, r->net, r->opt)) return -1;
    size_t plane = (size_t)S * S, nb = (size_t)CAMO_MAX(local_batch, 1);
    r->target = be->alloc(be, nb * plane * sizeof(float));
    r->labels = be->alloc(be, nb * plane * sizeof(int32_t));
    r->loss_dev = be->alloc(be, STATS_BYTES);
    for (int k = 0; k < 2; k++) /* pinned only on GPUs: no CUDA context for CPU runs */
        r->stats_host[k] = camo_backend_on_gpu(be) ? camo_cuda_host_alloc(STATS_BYTES)
                                                   : camo_malloc(STATS_BYTES);
    return r->target && r->labels && r->loss_dev && r->stats_host[0] && r->stats_host[1] ? 0 : -1;
}

/* net->bn_sync: global BN sums (and row count) across replicas. A ghost pass (a replica
 * with no images, see micro_batch) adds nothing, and in backward (count == NULL) keeps
 * zero sums, so that its zero output gradients give exactly zero parameter gradients.
 *
 * Which communicator: on NCCL two communicators with kernels in flight at once on the same
 * GPUs can deadlock unless every rank issues them in the same order. Under DDP the buckets
 * run on `comm` while backward (and its BN sums) goes on, so with DDP every device
 * collective of this hook goes through the same comm thread and communicator as the
 * buckets, in one FIFO: backward's order of layers, BN sums and bucket launches is the same
 * on every rank, so the FIFOs are too. Without DDP nothing else is in flight, and `ctl` is
 * used. Either way the result is waited for (NCCL is asynchronous) before it is read; the
 * count is a host sum (no device kernel). The cpu comm sums the same way on both groups,
 * so CPU results do not change. */
static void bn_sync(void *ctx, float *data, size_t n, double *count) {
    camo_replica *r = ctx;
    if (r->bn_error) return;
    if (r->ghost) {
        r->be->zero(r->be, data, n * sizeof(float));
        if (count) *count = 0;
    }
    int rc = r->ddp_on ? camo_ddp_side_all_reduce(&r->ddp, data, n)
                       : r->ctl->all_reduce_sum(r->ctl, data, n) || r->ctl->wait(r->ctl);
    if (rc || (count && r->ctl->all_reduce_host(r->ctl, count, 1)))
        r->bn_error = 1;
    if (r->ghost && !count) r->be->zero(r->be, data, n * sizeof(float));
}

int camo_replica_attach(camo_replica *r, camo_comm *comm, camo_comm *ctl) {
    r->comm = comm;
    r->ctl = ctl;
    if (r->size == 1) return 0;
    if (r->sync_bn) {
        r->net->bn_sync = bn_sync;
        r->net->bn_sync_ctx = r;
    }
    if (!r->dp) {
        if (camo_ddp_init(&r->ddp, r->net, comm, 1.0, r->o.bucket_mb)) return -1;
        r->ddp_on = 1;
    }
    return 0;
}

/* ---- fp16 loss scaling ---- */

void camo_loss_scale_init(camo_loss_scale *s, double scale) {
    memset(s, 0, sizeof *s);
    s->scale = scale > 0 ? scale : CAMO_LOSS_SCALE_INIT;
}

int camo_loss_scale_update(camo_loss_scale *s, int finite) {
    if (!finite) {
        s->good = 0;
        s->bad_run++;
        s->skipped++;
        if (s->scale > CAMO_LOSS_SCALE_MIN) s->scale *= 0.5;
        return 1;
    }
    s->bad_run = 0;
    if (++s->good >= CAMO_LOSS_SCALE_GROWTH) {
        s->good = 0;
        if (s->scale < CAMO_LOSS_SCALE_MAX) s->scale *= 2;
    }
    return 0;
}

/* ---- identical start ---- */

static uint32_t weights_checksum(camo_replica *r) {
    camo_net *net = r->net;
    size_t nw = net->n_weight_floats, nb = net->n_buffer_floats;
    float *host = camo_malloc((CAMO_MAX(nw, nb) + 1) * sizeof(float));
    r->be->download(r->be, host, net->param_block, nw * sizeof(float));
    uint32_t h = camo_fnv1a_bytes(CAMO_FNV1A_INIT, host, nw * sizeof(float));
    if (nb) {
        r->be->download(r->be, host, net->buffer_block, nb * sizeof(float));
        h = camo_fnv1a_bytes(h, host, nb * sizeof(float));
    }
    free(host);
    return h;
}

/* Fault injection (core/fault.h): replica r's weights differ after the broadcast */
static void corrupt_for_test(camo_replica *r) {
    if (!camo_fault_corrupt_replica(r->rank) || !r->net->n_weight_floats) return;
    float v;
    r->be->download(r->be, &v, r->net->param_block, sizeof v);
    v += 1.0f;
    r->be->upload(r->be, r->net->param_block, &v, sizeof v);
}

int camo_replica_sync_start(camo_replica *r) {
    if (r->size == 1) return 0;
    camo_net *net = r->net;
    if (r->comm->broadcast(r->comm, net->param_block, net->n_weight_floats, 0) ||
        (net->n_buffer_floats &&
         r->comm->broadcast(r->comm, net->buffer_block, net->n_buffer_floats, 0)) ||
        r->comm->wait(r->comm))
        return -1;
    corrupt_for_test(r);
    /* all equal <=> (sum x)^2 == N sum x^2, exact in doubles for 16-bit halves */
    uint32_t h = weights_checksum(r);
    double hi = h >> 16, lo = h & 0xffff;
    double v[4] = {hi, lo, hi * hi, lo * lo};
    if (r->ctl->all_reduce_host(r->ctl, v, 4)) return -1;
    if (v[0] * v[0] != r->size * v[2] || v[1] * v[1] != r->size * v[3]) {
        CAMO_ERR("weights differ between replicas after the broadcast from replica 0 (this "
                 "replica's checksum %08x); refusing to train diverging replicas", h);
        return -1;
    }
    return 0;
}

/* ---- one micro-batch ---- */

void camo_replica_slice(int n, int rank, int size, int *lo, int *count) {
    int base = n / size, extra = n % size;
    *count = base + (rank < extra);
    *lo = rank * base + CAMO_MIN(rank, extra);
}

/* Whether a step of global batch n ran before (and records it). The first step at each
 * global batch size runs without overlap: its buckets are all-reduced only after the whole
 * backward is queued. That step launches kernels (and may load their modules, take the
 * context lock and drain the GPU) for the first time; with an NCCL kernel of ours in flight
 * waiting for a peer whose threads are stuck the same way, that would deadlock
 * (docs/cuda.md "Lazy module loading"). The decision depends only on the global batch
 * size, so every rank takes it alike and its comm thread's FIFO keeps the same order. */
static int seen_batch(camo_replica *r, int n) {
    for (int i = 0; i < r->n_seen; i++)
        if (r->seen_n[i] == n) return 1;
    if (r->n_seen < (int)(sizeof r->seen_n / sizeof r->seen_n[0])) r->seen_n[r->n_seen++] = n;
    else return 1; /* more than 16 sizes: later new ones overlap (the list is full) */
    return 0;
}

/* Training pixel accuracy of the main output on this slice (after forward, before backward
 * can reuse anything): counts added on the device, read with the step's loss. */
static void count_correct(camo_replica *r, int n) {
    int H, W, C;
    const float *logits = camo_net_output(r->net, 0, &H, &W, &C);
    r->be->pixel_correct(r->be, n, H, W, C, pixel_counts(r), logits, r->target, r->labels,
                         r->o.ignore_index);
}

void camo_replica_set_position(camo_replica *r, int64_t step, int64_t step_image0) {
    r->pos_step = step;
    r->pos_image0 = step_image0;
}

int camo_replica_micro_batch(camo_replica *r, const camo_batch *b, double norm_images,
                             double norm_pixels, int last_micro) {
    camo_net *net = r->net;
    camo_backend *be = r->be;
    int lo, n;
    /* slices of the global batch; b may hold only this process's window of it (data.h) */
    camo_replica_slice(b->total, r->rank, r->size, &lo, &n);
    net->rng_seed = r->o.seed;
    net->rng_step = r->pos_step - 1;
    net->rng_sample0 = r->pos_image0 + lo;
    lo -= b->first;
    size_t plane = (size_t)b->size * b->size;
    if (r->ddp_on && last_micro) camo_ddp_arm(&r->ddp, seen_batch(r, b->total));
    /* An empty slice contributes zero gradients. With sync-BN it must still join the BN
     * collectives of every layer: it runs a ghost pass on one image whose BN sums count
     * for nothing and whose output gradients are zero (no loss), so every gradient it
     * computes is exactly zero. */
    if (n == 0 && r->sync_bn) {
        be->upload(be, net->input, b->image, plane * 3 * sizeof(float));
        be->fence(be, CAMO_FENCE_UPLOAD);
        r->ghost = 1;
        camo_net_forward(net, 1, 1);
        camo_net_zero_act_grads(net);
        camo_net_backward(net, 1);
        r->ghost = 0;
    } else if (n > 0) {
        size_t px = (size_t)n * plane, off = (size_t)lo * plane; /* this slice's pixels */
        be->upload(be, net->input, b->image + off * 3, px * 3 * sizeof(float));
        if (r->o.loss == LOSS_CE) be->upload(be, r->labels, b->labels + off, px * sizeof(int32_t));
        else be->upload(be, r->target, b->mask + off, px * sizeof(float));
        be->fence(be, CAMO_FENCE_UPLOAD);
        camo_net_forward(net, n, 1);
        camo_net_zero_act_grads(net);
        /* fp16: loss (and every gradient) times S, exactly (S is a power of two) */
        double S = r->scaling ? r->ls.scale : 1.0;
        camo_loss_forward_backward(net, r->o.loss, r->o.deep_supervision, n, r->target,
                                   r->labels, r->o.ignore_index, norm_images / S,
                                   norm_pixels / S, r->loss_dev);
        count_correct(r, n);
        camo_net_backward(net, n);
    }
    if (r->bn_error) return -1;
    return 0;
}

void camo_replica_uploads_wait(camo_replica *r) { r->be->fence_wait(r->be, CAMO_FENCE_UPLOAD); }

/* ---- the step ---- */

/* Sums the gradients: DDP waits for its buckets, DP reduces to replica 0. */
static int exchange_grads(camo_replica *r) {
    camo_net *net = r->net;
    double t0 = camo_now();
    int rc = 0;
    r->comm_s = r->wait_s = 0;
    if (r->ddp_on) {
        rc = camo_ddp_finish(&r->ddp, &r->comm_s);
        r->wait_s = camo_now() - t0;
    } else if (r->dp) {
        rc = r->comm->reduce_to_root(r->comm, net->grad_block, net->n_weight_floats, 0) ||
             r->comm->wait(r->comm);
        r->comm_s = r->wait_s = camo_now() - t0;
    }
    return rc ? -1 : 0;
}

/* The update; norm: the gradient norm (>= 0) if already known, else < 0. Gradients are
 * times S under fp16 loss scaling: unscaled by grad_scale 1/S, clipped on norm/S (exact,
 * S being a power of two). */
static void update(camo_replica *r, double lr, double norm, double *grad_norm) {
    double S = r->scaling ? r->ls.scale : 1.0, scale = 1.0, clip = r->o.clip_grad_norm;
    *grad_norm = NAN;
    if (clip > 0 && norm < 0) { /* on the device: its norm travels with the step's loss */
        camo_clip_grads_dev(r->net, r->opt, clip, S, grad_norm_slot(r));
        camo_optim_step(r->net, r->opt, lr, 1.0);
        r->norm_on_device = 1;
        return;
    }
    if (clip > 0 || norm >= 0) {
        *grad_norm = (norm >= 0 ? norm : camo_grad_norm(r->net, r->opt)) / S;
        if (clip > 0 && *grad_norm > clip) scale = clip / (*grad_norm + 1e-6);
    }
    camo_optim_step(r->net, r->opt, lr, scale / S);
}

/* Fault injection (core/fault.h): at this replica's k-th step (1-based) one summed
 * gradient becomes inf on the replica that checks last (the last one in DDP, replica 0 in
 * DP), as an fp16 overflow would: every replica must skip that step. */
static void overflow_for_test(camo_replica *r) {
    r->steps++;
    if (!camo_fault_grad_overflow(r->steps) || r->rank != (r->dp ? 0 : r->size - 1)) return;
    float v = INFINITY;
    r->be->upload(r->be, r->net->grad_block, &v, sizeof v);
}

/* fp16 loss scaling: whether the summed gradients are finite, decided from all-reduced
 * data so that every replica skips together (in DP only replica 0 holds the sum). *norm:
 * the scaled gradient norm where computed, else -1. 1 = finite, 0 = overflow, -1 = error. */
static int grads_finite(camo_replica *r, double *norm) {
    *norm = -1;
    double bad = 0;
    overflow_for_test(r);
    if (!r->dp || r->rank == 0 || r->size == 1) {
        *norm = camo_grad_norm(r->net, r->opt);
        bad = !isfinite(*norm);
    }
    if (r->size > 1 && r->ctl->all_reduce_host(r->ctl, &bad, 1)) return -1;
    return bad == 0;
}

/* Queues the step's measurements for the host (a pinned block, a fence) and clears them
 * for the next step, in stream order: no wait. */
static void queue_measures(camo_replica *r, double loss_scale) {
    int k = (int)(r->stats_queued % 2);
    r->be->download_async(r->be, r->stats_host[k], r->loss_dev, STATS_BYTES);
    r->be->zero(r->be, r->loss_dev, STATS_BYTES);
    r->be->fence(r->be, CAMO_FENCE_STATS0 + k);
    r->stats_scale[k] = loss_scale;
    r->stats_step[k] = r->pos_step;
    r->stats_norm[k] = r->norm_on_device;
    r->norm_on_device = 0;
    r->stats_queued++;
}

int camo_replica_pending(const camo_replica *r) {
    return (int)(r->stats_queued - r->stats_taken);
}

/* The loss and pixel counts are summed over the replicas in one host all-reduce (the cpu
 * comm adds in rank order: the counts are exact, the loss the same for any replica count up
 * to the rounding of the per-replica float sums). */
int camo_replica_measures(camo_replica *r, camo_step_stats *st) {
    memset(st, 0, sizeof *st);
    st->loss = NAN;
    if (r->stats_taken == r->stats_queued) return 0;
    int k = (int)(r->stats_taken % 2);
    r->be->fence_wait(r->be, CAMO_FENCE_STATS0 + k);
    r->stats_taken++;
    const unsigned char *block = r->stats_host[k];
    float l;
    double v[3];
    memcpy(&l, block, sizeof l);
    memcpy(v + 1, block + sizeof(double), 2 * sizeof(double));
    v[0] = l / r->stats_scale[k]; /* exact: S is a power of two */
    if (r->size > 1 && r->ctl->all_reduce_host(r->ctl, v, 3)) return -1;
    st->grad_norm = NAN; /* this replica's: the same on all that updated (not summed) */
    if (r->stats_norm[k]) memcpy(&st->grad_norm, block + 3 * sizeof(double), sizeof(double));
    st->step = r->stats_step[k];
    st->loss = v[0];
    st->pixels_correct = v[1];
    st->pixels_counted = v[2];
    return 1;
}

int camo_replica_step(camo_replica *r, double lr, double *grad_norm) {
    camo_net *net = r->net;
    *grad_norm = NAN;
    if (r->size > 1 && exchange_grads(r)) return -1;
    double S = r->scaling ? r->ls.scale : 1.0; /* this step's, before the update changes it */
    double norm = -1;
    r->skipped = 0;
    if (r->scaling) { /* S of this step stays in force for the update; then the new S */
        int finite = grads_finite(r, &norm);
        if (finite < 0) return -1;
        r->skipped = !finite;
        if (!finite) *grad_norm = INFINITY;
    }
    if (!r->skipped && (!r->dp || r->rank == 0 || r->size == 1))
        update(r, lr, norm, grad_norm);
    queue_measures(r, S);
    if (r->scaling) camo_loss_scale_update(&r->ls, !r->skipped);
    camo_net_zero_param_grads(net);
    if (r->dp && r->size > 1) { /* DP: replica 0 stepped; everyone takes its weights */
        double t0 = camo_now();
        if (r->comm->broadcast(r->comm, net->param_block, net->n_weight_floats, 0) ||
            r->comm->wait(r->comm))
            return -1;
        double dt = camo_now() - t0;
        r->comm_s += dt;
        r->wait_s += dt;
    }
    return 0;
}

void camo_replica_free(camo_replica *r) {
    if (r->ddp_on) camo_ddp_free(&r->ddp);
    if (r->be) {
        r->be->sync(r->be); /* no download from loss_dev into the blocks still in flight */
        if (r->target) r->be->free(r->be, r->target);
        if (r->labels) r->be->free(r->be, r->labels);
        if (r->loss_dev) r->be->free(r->be, r->loss_dev);
        for (int k = 0; k < 2; k++) {
            if (camo_backend_on_gpu(r->be)) camo_cuda_host_free(r->stats_host[k]);
            else free(r->stats_host[k]);
        }
        if (r->net) camo_optim_free(r->net, r->opt);
        camo_net_free(r->net);
        r->be->destroy(r->be);
    }
    memset(r, 0, sizeof *r);
}

/* ---- memory ---- */

/* Mirrors camo_replica_init's allocations: tests/test_net_memory.c counts them on a
 * backend that records every alloc and checks these figures against it. */
int camo_replica_memory(camo_net *net, const camo_replica_opts *opts, camo_replica_mem *m) {
    memset(m, 0, sizeof *m);
    if (camo_net_memory(net, &m->net)) return -1;
    m->optim_slots = opts->optim.type == CAMO_OPT_SGD ? 1 : 2;
    m->optim = (size_t)m->optim_slots * net->n_weight_floats * sizeof(float);
    m->ema = opts->optim.ema_decay > 0 ? net->n_weight_floats * sizeof(float) : 0;
    m->other = camo_optim_scratch_floats(net) * sizeof(float) + STATS_BYTES;
    m->targets_img = (size_t)opts->img_size * opts->img_size * (sizeof(float) + sizeof(int32_t));
    return 0;
}

size_t camo_replica_mem_fixed(const camo_replica_mem *m) {
    return m->net.weights + m->net.grads + m->net.buffers + m->net.scratch_fixed + m->optim +
           m->ema + m->other;
}

size_t camo_replica_mem_per_image(const camo_replica_mem *m) {
    return camo_net_mem_per_image(&m->net) + m->targets_img;
}
