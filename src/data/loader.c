/* loader.c: decoding threads that fill a ring of `depth` preallocated batches, handed to the
 * caller strictly in order (seq 0, 1, 2, ...) whatever worker finished first.
 *
 * Work is handed out per sample, in epoch order: a worker claims the next sample position,
 * and may do so only while that sample's batch has a ring slot (the batch `depth` earlier
 * was released). So at most `depth` batches are in flight, samples of one batch load in
 * parallel, and no sample allocates: batches and per-worker scratch are made up front.
 * With a window (camo_loader_opts.window: a process of a multi-process run) only the
 * window's positions of each batch are claimed and loaded. */
#include "data/data.h"

#include <pthread.h>
#include <string.h>

#include "core/common.h"

typedef enum { SLOT_FREE, SLOT_FILLING, SLOT_READY, SLOT_OUT } slot_state;

typedef struct {
    camo_batch b; /* first member: a released camo_batch * is its slot */
    slot_state state;
    int nload;    /* samples to load: b.n, or 1 for an empty window (b.n = 0) */
    int filled;   /* samples finished (loaded or skipped) */
    int nbad;     /* samples skipped (skip_bad) */
    uint8_t *bad; /* (max_batch) */
    size_t *gt_cap; /* keep_gt: capacity of each b.gt[i] (grown, never shrunk) */
} slot;

typedef struct {
    camo_loader *L;
    camo_sample_scratch *sc;
    pthread_t thread;
} worker;

struct camo_loader {
    const camo_dataset *ds;
    camo_augment aug;
    camo_loader_opts opts;
    double wait_s;       /* caller's time blocked in camo_loader_next */
    int classes, skip_bad, nworkers, max_batch, depth;
    slot *slots;
    worker *workers;
    camo_sample_scratch *sync_sc; /* workers == 0: the caller's thread decodes */
    pthread_mutex_t mu;
    pthread_cond_t work; /* workers wait: new epoch, a slot released, stop */
    pthread_cond_t done; /* caller waits: a batch ready, a failure, workers idle */
    /* the queued epoch (changed only under mu while no sample is being loaded) */
    int *order, order_cap, n, batch, nbatches, epoch;
    uint64_t seed;
    int active, next_pos, next_seq, busy, failed, stop;
    char err[1024];
};

/* A batch buffer from the caller's allocator (pinned host memory), else malloc. */
static void *host_alloc(const camo_loader_opts *o, size_t n) {
    if (!o->alloc) return camo_malloc(n);
    void *p = o->alloc(n, o->ctx);
    if (!p) CAMO_DIE("data loader: the host allocator failed for %zu bytes", n);
    return p;
}

static void host_free(const camo_loader_opts *o, void *p) {
    if (!p) return;
    if (o->free) o->free(p, o->ctx);
    else free(p);
}

static void slot_alloc(slot *s, const camo_loader_opts *o, int max_batch, int S, int labels) {
    size_t plane = (size_t)S * S;
    s->b.size = S;
    s->b.image = host_alloc(o, (size_t)max_batch * plane * 3 * sizeof(float));
    s->b.mask = host_alloc(o, (size_t)max_batch * plane * sizeof(float));
    s->b.labels = labels ? host_alloc(o, (size_t)max_batch * plane * sizeof(int32_t)) : NULL;
    if (o->keep_gt) {
        s->b.gt = camo_calloc((size_t)max_batch, sizeof *s->b.gt);
        s->gt_cap = camo_calloc((size_t)max_batch, sizeof *s->gt_cap);
    }
    s->b.index = camo_malloc((size_t)max_batch * sizeof(int));
    s->b.orig_h = camo_malloc((size_t)max_batch * sizeof(int));
    s->b.orig_w = camo_malloc((size_t)max_batch * sizeof(int));
    s->bad = camo_malloc((size_t)max_batch);
    s->state = SLOT_FREE;
}

static void slot_free(slot *s, const camo_loader_opts *o, int max_batch) {
    host_free(o, s->b.image);
    host_free(o, s->b.mask);
    host_free(o, s->b.labels);
    for (int i = 0; s->b.gt && i < max_batch; i++) free(s->b.gt[i]);
    free(s->b.gt);
    free(s->gt_cap);
    free(s->b.index);
    free(s->b.orig_h);
    free(s->b.orig_w);
    free(s->bad);
}

/* The batch's window (whole batches without one); an empty window loads one sample that
 * does not count (b.n = 0): a ghost pass of sync-BN needs an image. */
static void slot_window(camo_loader *L, slot *s) {
    int total = s->b.total, lo = 0, count = total;
    if (L->opts.window) {
        L->opts.window(total, L->opts.window_ctx, &lo, &count);
        lo = CAMO_MAX(0, CAMO_MIN(lo, total));
        count = CAMO_MAX(0, CAMO_MIN(count, total - lo));
    }
    s->b.n = count;
    s->nload = count > 0 || total == 0 ? count : 1;
    s->b.first = count > 0 ? lo : CAMO_MIN(lo, total - 1);
}

static void slot_begin(camo_loader *L, slot *s, int seq) {
    s->b.seq = seq;
    s->b.total = CAMO_MIN(L->batch, L->n - seq * L->batch);
    slot_window(L, s);
    s->filled = s->nbad = 0;
    memset(s->bad, 0, (size_t)L->max_batch);
    s->state = SLOT_FILLING;
}

/* Decodes sample position p of the epoch into its place in slot s (no lock held). */
static int load_one(camo_loader *L, camo_sample_scratch *sc, slot *s, int p) {
    int i = p - s->b.seq * L->batch - s->b.first, idx = L->order[p];
    size_t plane = (size_t)L->aug.size * L->aug.size;
    s->b.index[i] = idx;
    uint64_t key = camo_sample_key(L->seed, L->epoch, idx);
    int rc = camo_sample_load_ex(L->ds, idx, &L->aug, key, sc, s->b.image + i * plane * 3,
                                 s->b.mask + i * plane,
                                 s->b.labels ? s->b.labels + i * plane : NULL,
                                 &s->b.orig_h[i], &s->b.orig_w[i]);
    int w, h;
    const uint8_t *gt = rc || !s->b.gt ? NULL : camo_sample_scratch_gt(sc, &w, &h);
    if (gt) { /* grows to the largest mask seen in this place, then stays */
        size_t n = (size_t)w * h;
        if (n > s->gt_cap[i]) {
            free(s->b.gt[i]);
            s->b.gt[i] = camo_malloc(n);
            s->gt_cap[i] = n;
        }
        memcpy(s->b.gt[i], gt, n);
    }
    return rc;
}

/* A sample failed: skip it (skip_bad) or stop the loader with the worker's message. */
static void note_failure(camo_loader *L, slot *s, int p) {
    if (L->skip_bad) {
        camo_warn("skipping a sample: %s", camo_last_error());
        s->bad[p - s->b.seq * L->batch - s->b.first] = 1;
        s->nbad++;
    } else if (!L->failed) {
        L->failed = 1;
        snprintf(L->err, sizeof L->err, "%s", camo_last_error());
    }
}

/* The next sample position whose batch has a slot, or NULL (mu held). next_pos is always
 * an unclaimed position of its batch's window, or a batch's start (before its window). */
static slot *claim(camo_loader *L, int *pos) {
    if (!L->active || L->failed || L->stop || L->next_pos >= L->n) return NULL;
    int p = L->next_pos, seq = p / L->batch;
    slot *s = &L->slots[seq % L->depth];
    if (s->state == SLOT_FREE) slot_begin(L, s, seq);
    else if (s->state != SLOT_FILLING || s->b.seq != seq) return NULL; /* ring full */
    int lo = seq * L->batch + s->b.first;
    if (p < lo) p = lo;
    /* past the window's last sample: the next batch's start */
    L->next_pos = p + 1 < lo + s->nload ? p + 1 : (seq + 1) * L->batch;
    *pos = p;
    return s;
}

static void *worker_main(void *arg) {
    worker *w = arg;
    camo_loader *L = w->L;
    pthread_mutex_lock(&L->mu);
    while (!L->stop) {
        int p;
        slot *s = claim(L, &p);
        if (!s) { pthread_cond_wait(&L->work, &L->mu); continue; }
        L->busy++;
        pthread_mutex_unlock(&L->mu);
        int rc = load_one(L, w->sc, s, p);
        pthread_mutex_lock(&L->mu);
        L->busy--;
        if (rc) note_failure(L, s, p);
        if (++s->filled == s->nload) s->state = SLOT_READY;
        pthread_cond_broadcast(&L->done); /* batch ready, failure or idle: the caller rechecks */
    }
    pthread_mutex_unlock(&L->mu);
    return NULL;
}

camo_loader *camo_loader_create(const camo_dataset *ds, const camo_augment *aug, int workers,
                                int max_batch, int depth) {
    return camo_loader_create_ex(ds, aug, workers, max_batch, depth, NULL);
}

camo_loader *camo_loader_create_ex(const camo_dataset *ds, const camo_augment *aug, int workers,
                                   int max_batch, int depth, const camo_loader_opts *opts) {
    CAMO_ASSERT(max_batch >= 1 && aug->size >= 1);
    camo_loader *L = camo_calloc(1, sizeof *L);
    L->ds = ds;
    L->aug = *aug;
    if (opts) L->opts = *opts;
    L->classes = camo_dataset_classes(ds);
    L->skip_bad = camo_dataset_skip_bad(ds);
    CAMO_ASSERT(!(L->skip_bad && L->opts.window)); /* data.h: not together */
    L->nworkers = workers > 0 ? workers : 0;
    L->max_batch = max_batch;
    L->depth = depth > 0 ? depth : 1;
    if (!L->nworkers) L->depth = 1;
    L->slots = camo_calloc((size_t)L->depth, sizeof *L->slots);
    for (int i = 0; i < L->depth; i++)
        slot_alloc(&L->slots[i], &L->opts, max_batch, aug->size, L->classes > 1);
    pthread_mutex_init(&L->mu, NULL);
    pthread_cond_init(&L->work, NULL);
    pthread_cond_init(&L->done, NULL);
    if (!L->nworkers) {
        L->sync_sc = camo_sample_scratch_create();
        camo_sample_scratch_keep_gt(L->sync_sc, L->opts.keep_gt);
        return L;
    }
    L->workers = camo_calloc((size_t)L->nworkers, sizeof *L->workers);
    for (int i = 0; i < L->nworkers; i++) {
        worker *w = &L->workers[i];
        w->L = L;
        w->sc = camo_sample_scratch_create();
        camo_sample_scratch_keep_gt(w->sc, L->opts.keep_gt);
        if (pthread_create(&w->thread, NULL, worker_main, w) != 0)
            CAMO_DIE("cannot start data loader thread %d of %d", i + 1, L->nworkers);
    }
    return L;
}

void camo_loader_start(camo_loader *L, const int *order, int n, int batch, uint64_t seed,
                       int epoch) {
    CAMO_ASSERT(batch >= 1 && batch <= L->max_batch && n >= 0);
    pthread_mutex_lock(&L->mu);
    L->active = 0; /* an undrained epoch: no new claims; wait out samples in progress */
    while (L->busy > 0) pthread_cond_wait(&L->done, &L->mu);
    for (int i = 0; i < L->depth; i++) L->slots[i].state = SLOT_FREE;
    if (n > L->order_cap) {
        free(L->order);
        L->order = camo_malloc((size_t)n * sizeof(int));
        L->order_cap = n;
    }
    if (n) memcpy(L->order, order, (size_t)n * sizeof(int));
    L->n = n;
    L->batch = batch;
    L->nbatches = (n + batch - 1) / batch;
    L->seed = seed;
    L->epoch = epoch;
    L->next_pos = L->next_seq = 0;
    L->failed = 0;
    L->err[0] = 0;
    L->active = 1;
    pthread_cond_broadcast(&L->work);
    pthread_mutex_unlock(&L->mu);
}

/* skip_bad: moves the good samples of a batch to its front (caller's thread, rare). */
static void compact(camo_loader *L, slot *s) {
    size_t plane = (size_t)L->aug.size * L->aug.size;
    camo_batch *b = &s->b;
    int j = 0;
    for (int i = 0; i < b->n; i++) {
        if (s->bad[i]) continue;
        if (i != j) {
            memcpy(b->image + j * plane * 3, b->image + i * plane * 3, plane * 3 * sizeof(float));
            memcpy(b->mask + j * plane, b->mask + i * plane, plane * sizeof(float));
            if (b->labels)
                memcpy(b->labels + j * plane, b->labels + i * plane, plane * sizeof(int32_t));
            b->index[j] = b->index[i];
            if (b->gt) { /* swap, so every buffer stays owned exactly once */
                uint8_t *g = b->gt[j];
                size_t c = s->gt_cap[j];
                b->gt[j] = b->gt[i]; s->gt_cap[j] = s->gt_cap[i];
                b->gt[i] = g; s->gt_cap[i] = c;
            }
            b->orig_h[j] = b->orig_h[i];
            b->orig_w[j] = b->orig_w[i];
        }
        j++;
    }
    b->n = j;
    b->total = j; /* no window with skip_bad (data.h) */
}

/* workers == 0: the caller's thread decodes the batch itself. */
static camo_batch *next_sync(camo_loader *L) {
    if (!L->active || L->failed || L->next_seq >= L->nbatches) {
        if (L->failed) camo_set_error(__FILE__, __LINE__, "%s", L->err);
        return NULL;
    }
    slot *s = &L->slots[0];
    slot_begin(L, s, L->next_seq);
    for (int i = 0; i < s->nload; i++) {
        int p = s->b.seq * L->batch + s->b.first + i;
        if (load_one(L, L->sync_sc, s, p) == 0) continue;
        note_failure(L, s, p);
        if (L->failed) return NULL; /* the message is already this thread's */
    }
    s->state = SLOT_OUT;
    L->next_seq++;
    if (s->nbad) compact(L, s);
    return &s->b;
}

camo_batch *camo_loader_next(camo_loader *L) {
    double t0 = camo_now();
    if (!L->nworkers) {
        camo_batch *b = next_sync(L);
        L->wait_s += camo_now() - t0; /* decoding on the caller's thread is all waiting */
        return b;
    }
    pthread_mutex_lock(&L->mu);
    slot *s = NULL;
    while (!L->failed && L->active && L->next_seq < L->nbatches) {
        slot *c = &L->slots[L->next_seq % L->depth];
        if (c->state == SLOT_READY && c->b.seq == L->next_seq) { s = c; break; }
        pthread_cond_wait(&L->done, &L->mu);
    }
    L->wait_s += camo_now() - t0;
    if (s) {
        s->state = SLOT_OUT;
        L->next_seq++;
    } else if (L->failed) {
        camo_set_error(__FILE__, __LINE__, "%s", L->err);
    }
    pthread_mutex_unlock(&L->mu);
    if (s && s->nbad) compact(L, s);
    return s ? &s->b : NULL;
}

void camo_loader_release(camo_loader *L, camo_batch *b) {
    if (!b) return;
    slot *s = (slot *)b;
    pthread_mutex_lock(&L->mu);
    s->state = SLOT_FREE;
    pthread_cond_broadcast(&L->work);
    pthread_mutex_unlock(&L->mu);
}

double camo_loader_wait_seconds(const camo_loader *L) {
    pthread_mutex_lock((pthread_mutex_t *)&L->mu);
    double w = L->wait_s;
    pthread_mutex_unlock((pthread_mutex_t *)&L->mu);
    return w;
}

int camo_loader_failed(const camo_loader *L) {
    pthread_mutex_lock((pthread_mutex_t *)&L->mu);
    int f = L->failed;
    pthread_mutex_unlock((pthread_mutex_t *)&L->mu);
    return f;
}

void camo_loader_free(camo_loader *L) {
    if (!L) return;
    pthread_mutex_lock(&L->mu);
    L->stop = 1; /* workers finish the sample in hand, then leave */
    pthread_cond_broadcast(&L->work);
    pthread_mutex_unlock(&L->mu);
    for (int i = 0; i < L->nworkers; i++) {
        pthread_join(L->workers[i].thread, NULL);
        camo_sample_scratch_free(L->workers[i].sc);
    }
    for (int i = 0; i < L->depth; i++) slot_free(&L->slots[i], &L->opts, L->max_batch);
    camo_sample_scratch_free(L->sync_sc);
    pthread_mutex_destroy(&L->mu);
    pthread_cond_destroy(&L->work);
    pthread_cond_destroy(&L->done);
    free(L->slots);
    free(L->workers);
    free(L->order);
    free(L);
}

/* Fisher-Yates with j drawn from a 64-bit counter hash of (seed, epoch, i): the permutation
 * is a pure function of (seed, epoch, n), whoever computes it. */
void camo_epoch_permutation(int *order, int n, uint64_t seed, int epoch) {
    uint64_t key =
        camo_hash64(camo_hash64(seed ^ 0x7065726d75746521ull) ^ (uint64_t)(uint32_t)epoch);
    for (int i = 0; i < n; i++) order[i] = i;
    for (int i = n - 1; i > 0; i--) {
        int j = (int)(camo_hash64(key ^ camo_hash64((uint64_t)i)) % (uint64_t)(i + 1));
        int t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
}
