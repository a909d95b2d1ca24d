/* ddp.c: DDP gradient buckets and the per-replica comm thread that all-reduces them while
 * backward continues (see ddp.h). Bucket order is fixed at start-up, never "whichever
 * finished first", so every rank issues the same collectives in the same order. */
#include "parallel/ddp.h"

#include <string.h>

#include "core/common.h"
#include "nn/layer.h"

/* ready_after[i]: once layers i..L-1 are done, every gradient below the smallest offset
 * owned by a layer < i is final (the block is in reverse parameter order). */
static void plan_ready(camo_ddp *d) {
    camo_net *net = d->net;
    d->ready_after = camo_calloc((size_t)net->n_layers + 1, sizeof(size_t));
    size_t lowest = net->n_weight_floats;
    for (int i = 0; i < net->n_layers; i++) {
        d->ready_after[i] = lowest; /* offsets owned by layers < i */
        camo_layer *l = &net->layers[i];
        for (int j = 0; j < l->n_params; j++) {
            camo_param *p = &net->params[l->param0 + j];
            if (p->kind != CAMO_PARAM_WEIGHT || !p->grad) continue;
            size_t off = (size_t)(p->grad - net->grad_block);
            if (off < lowest) lowest = off;
        }
    }
}

/* Where parameter k's room in the block ends: the start of the next parameter in block order
 * (k-1, k-2, ...), or the block's end. With net.c's layout that is past k's alignment gap. */
static size_t room_end(const camo_net *net, int k) {
    for (int j = k - 1; j >= 0; j--) {
        const camo_param *q = &net->params[j];
        if (q->kind == CAMO_PARAM_WEIGHT && q->grad) return (size_t)(q->grad - net->grad_block);
    }
    return net->n_weight_floats;
}

/* Bucket ends on parameter boundaries, after the parameter's alignment gap: every bucket
 * starts where a parameter does, 256-byte aligned as NCCL's fastest paths want, and the gaps
 * (zeros) travel with their bucket. A bucket closes once it holds at least its size. */
static void plan_buckets(camo_ddp *d, double first_mb, double bucket_mb) {
    camo_net *net = d->net;
    size_t total = net->n_weight_floats;
    /* parameter start offsets in block order = params in reverse */
    d->bucket_end = camo_calloc((size_t)net->n_params + 1, sizeof(size_t));
    size_t start = 0, cap = (size_t)(first_mb * 1048576.0 / sizeof(float));
    if (cap < 1) cap = 1;
    for (int k = net->n_params - 1; k >= 0; k--) {
        camo_param *p = &net->params[k];
        if (p->kind != CAMO_PARAM_WEIGHT || !p->grad) continue;
        size_t end = room_end(net, k);
        if (end - start >= cap) {
            d->bucket_end[d->n_buckets++] = end;
            start = end;
            cap = (size_t)(bucket_mb * 1048576.0 / sizeof(float));
            if (cap < 1) cap = 1;
        }
    }
    if (start < total || d->n_buckets == 0) d->bucket_end[d->n_buckets++] = total;
}

/* The side request, issued once the buckets queued before it are issued (called and
 * returns with d->mu held). The wait makes its result readable by the compute stream. */
static void run_side(camo_ddp *d) {
    float *data = d->side_data;
    size_t n = d->side_n;
    pthread_mutex_unlock(&d->mu);
    double t0 = camo_now();
    int rc = d->comm->all_reduce_sum(d->comm, data, n) || d->comm->wait(d->comm);
    double dt = camo_now() - t0;
    char msg[512];
    if (rc) snprintf(msg, sizeof msg, "%s", camo_last_error());
    pthread_mutex_lock(&d->mu);
    if (rc && !d->failed) {
        d->failed = 1;
        snprintf(d->error, sizeof d->error, "%s", msg);
    }
    d->side_rc = rc ? -1 : 0;
    d->side_pending = 0;
    d->busy_s += dt;
    pthread_cond_broadcast(&d->cv);
}

static void *comm_thread(void *arg) {
    camo_ddp *d = arg;
    pthread_mutex_lock(&d->mu);
    for (;;) {
        while (!d->quit && d->done == d->launched &&
               !(d->side_pending && d->side_after == d->done))
            pthread_cond_wait(&d->cv, &d->mu);
        if (d->quit) break;
        if (d->side_pending && d->side_after == d->done) { /* FIFO: its turn */
            run_side(d);
            continue;
        }
        int b = d->done;
        pthread_mutex_unlock(&d->mu);
        size_t lo = b ? d->bucket_end[b - 1] : 0, hi = d->bucket_end[b];
        double t0 = camo_now();
        int rc = d->comm->all_reduce_sum(d->comm, d->net->grad_block + lo, hi - lo);
        double dt = camo_now() - t0;
        pthread_mutex_lock(&d->mu);
        if (rc && !d->failed) {
            d->failed = 1;
            snprintf(d->error, sizeof d->error, "%s", camo_last_error());
        }
        d->busy_s += dt;
        d->done++;
        pthread_cond_broadcast(&d->cv);
    }
    pthread_mutex_unlock(&d->mu);
    return NULL;
}

static void launch_upto(camo_ddp *d, size_t ready) {
    pthread_mutex_lock(&d->mu);
    int n = d->launched;
    while (n < d->n_buckets && d->bucket_end[n] <= ready) n++;
    if (n != d->launched) {
        d->launched = n;
        pthread_cond_broadcast(&d->cv);
    }
    pthread_mutex_unlock(&d->mu);
}

/* net->on_layer_grads: layer i and every later one are done */
static void on_layer_grads(void *ctx, int layer) {
    camo_ddp *d = ctx;
    /* no device sync: a device comm orders its collectives after the compute stream */
    launch_upto(d, d->ready_after[layer]);
}

int camo_ddp_init(camo_ddp *d, camo_net *net, camo_comm *comm, double first_mb,
                  double bucket_mb) {
    memset(d, 0, sizeof *d);
    d->net = net;
    d->comm = comm;
    plan_ready(d);
    plan_buckets(d, first_mb, bucket_mb);
    pthread_mutex_init(&d->mu, NULL);
    pthread_cond_init(&d->cv, NULL);
    if (pthread_create(&d->thread, NULL, comm_thread, d) != 0) {
        CAMO_ERR("cannot start the DDP comm thread of replica %d", comm->rank);
        return -1;
    }
    d->thread_started = 1;
    return 0;
}

void camo_ddp_arm(camo_ddp *d, int overlap) {
    pthread_mutex_lock(&d->mu);
    d->launched = d->done = 0;
    d->busy_s = 0;
    pthread_mutex_unlock(&d->mu);
    d->net->on_layer_grads = overlap ? on_layer_grads : NULL;
    d->net->on_layer_grads_ctx = overlap ? d : NULL;
}

int camo_ddp_finish(camo_ddp *d, double *busy_s) {
    d->net->on_layer_grads = NULL;
    d->net->on_layer_grads_ctx = NULL;
    launch_upto(d, d->net->n_weight_floats);
    pthread_mutex_lock(&d->mu);
    while (d->done < d->n_buckets) pthread_cond_wait(&d->cv, &d->mu);
    int failed = d->failed;
    if (busy_s) *busy_s = d->busy_s;
    pthread_mutex_unlock(&d->mu);
    if (failed) {
        CAMO_ERR("%s", d->error);
        return -1;
    }
    return d->comm->wait(d->comm);
}

int camo_ddp_side_all_reduce(camo_ddp *d, float *data, size_t n) {
    pthread_mutex_lock(&d->mu);
    d->side_data = data;
    d->side_n = n;
    d->side_after = d->launched; /* launches come from this thread: none can slip in */
    d->side_pending = 1;
    pthread_cond_broadcast(&d->cv);
    while (d->side_pending) pthread_cond_wait(&d->cv, &d->mu);
    int rc = d->side_rc;
    char msg[512];
    snprintf(msg, sizeof msg, "%s", d->error);
    pthread_mutex_unlock(&d->mu);
    if (rc) CAMO_ERR("%s", msg);
    return rc;
}

void camo_ddp_free(camo_ddp *d) {
    if (d->thread_started) {
        pthread_mutex_lock(&d->mu);
        d->quit = 1;
        pthread_cond_broadcast(&d->cv);
        pthread_mutex_unlock(&d->mu);
        pthread_join(d->thread, NULL);
        pthread_mutex_destroy(&d->mu);
        pthread_cond_destroy(&d->cv);
    }
    free(d->bucket_end);
    free(d->ready_after);
    memset(d, 0, sizeof *d);
}
