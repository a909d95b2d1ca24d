/* train.c: the training run: set-up, the epoch loop (stages, accumulation, clipping, EMA),
 * evaluation, checkpoints, logging, SIGINT/SIGTERM handling.
 *
 * Data parallelism (DESIGN.md "Training semantics"): one replica thread per device
 * (src/parallel/replica.c). Replica 0 runs in the calling thread and coordinates: it runs the epoch
 * loop, reads global batches from the one loader and posts each micro-batch as a command on
 * a board that every other replica waits on; each replica takes its slice, and the
 * collectives of the step keep them in lock-step. Replica 0 alone logs, evaluates and
 * saves. A failure anywhere aborts the board and the comms, so every thread returns.
 *
 * Several processes (mpirun / srun, core/mpi.h; docs/parallel.md "Several processes"): each
 * runs this loop over its own replicas, global ranks proc * k .. of procs * k, and loads only
 * its window of every global batch; the comms span the processes. Process 0 alone logs,
 * evaluates and saves; the decisions that change the control flow (stop after a signal,
 * early stop) are agreed on over MPI (the `mpi_*` parts below), and a failure anywhere ends
 * the job with MPI_Abort. */
#include "train/train.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <time.h>

#include "core/cfgutil.h"
#include "nn/checkpoint.h"
#include "core/common.h"
#include "core/fault.h"
#include "core/fs.h"
#include "core/mpi.h"
#include "backend/cuda.h"
#include "data/data.h"
#include "parallel/devices.h"
#include "train/evaluate.h"
#include "nn/loss.h"
#include "nn/moe.h"
#include "nn/net_build.h"
#include "nn/optim.h"
#include "parallel/replica.h"
#include "train/schedule.h"
#include "train/tensorboard.h"
#include "nn/layer.h"

static volatile sig_atomic_t stop_signal;
static void on_signal(int sig) { stop_signal = sig; }

/* What replica 0 asks every replica to do next. */
typedef enum { CMD_MICRO, CMD_FLUSH, CMD_STOP } command_kind; /* FLUSH: camo_replica_measures */
typedef struct command {
    command_kind kind;
    const camo_batch *b;        /* the global micro-batch (host memory, read-only) */
    double norm_images, norm_pixels;
    int last_micro;             /* then also the optimizer step, with lr */
    double lr;
    int stage;                  /* freezing of the stage at epoch_in_stage */
    double epoch_in_stage;
    int64_t step;               /* the optimizer step this micro-batch belongs to (1-based) */
    int64_t step_image0;        /* index of the batch's first image among the step's images */
} command;

/* Commands from replica 0 to the others, and the first failure of any replica. Waits on
 * the board have no timeout (replica 0 may evaluate for minutes) but end on abort. */
typedef struct board {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    command cmd;
    unsigned long seq;          /* commands posted */
    int taken;                  /* replicas done with the batch of the current command */
    int aborted;
    int fail_rank;              /* -1 = none */
    char fail_msg[1024];
} board;

/* A step whose measurements are still on their way to the host (they travel one step
 * behind, replica.h): what its records need that was known when it ran. */
typedef struct step_record {
    int64_t step;               /* 0: none pending */
    int epoch, batch, n_batches;
    double lr, gnorm, norm_images, time; /* gnorm: NaN, or as clipped on the host */
    int64_t images;             /* images trained on at its end */
    int skipped;                /* fp16 overflow: no update, its loss may be inf */
    char *json;                 /* its metrics.jsonl fields after the gradient norm (NULL: no
                                   file) */
} step_record;

/* The epoch's training sums (camo_epoch_sums, kept in checkpoints), and where they start:
 * 0, or after a resume from a checkpoint without them, the batch resumed at. */
typedef struct epoch_sums {
    camo_epoch_sums sum;
    int from_batch;
} epoch_sums;

typedef struct trainer {
    camo_config *c;
    char *network_text;
    camo_dataset *train_ds, *val_ds;
    camo_loader *loader;
    camo_backend *be;           /* replica 0's (aliases for logging, eval, checkpoints) */
    size_t rss_before_model;    /* resident bytes before any replica existed */
    size_t rss_steps;           /* resident high-water mark after the last step (before the
                                   final checkpoint's host copy) */
    camo_net *net;
    camo_optim *opt;
    camo_train_state st;
    camo_devices dev;
    int n_rep;
    camo_replica *rep;
    camo_comm **comms, **ctls;  /* gradient and control comm of each replica */
    board bd;
    int boards_ready;
    double comm_s, comm_wait_s; /* run totals of replica 0 */
    FILE *jsonl;
    camo_tb *tb;                /* TensorBoard events (log.tensorboard), else NULL */
    double tb_last_t;           /* time and images at the previous step: its img/s */
    int64_t tb_last_images;
    char out[CAMO_PATH_MAX];
    double t0, elapsed0, last_log_t;
    int64_t images, last_log_images;
    double loss_sum;      /* host sum of step losses since the last log line */
    int loss_count;
    epoch_sums ep;        /* the training measures of the epoch in progress */
    step_record pending;  /* the last step, until its measurements arrive */
    int max_batch;
    /* several processes (core/mpi.h): procs = 1 and proc = 0 otherwise; world = replicas
     * of all processes, base = global rank of this process's replica 0 */
    int proc, procs, world, base;
    int windowed;               /* the loader reads this process's window of each batch */
    camo_mpi_group *mpi_ctl;    /* the main thread's exchanges (parallel.timeout_s) */
    camo_mpi_group *mpi_wait;   /* the wait for process 0's evaluation (eval_timeout_s) */
} trainer;

/* ---- run folder and logging ---- */

static void out_path(const trainer *T, const char *file, char *buf, size_t n) {
    snprintf(buf, n, "%s/%s", T->out, file);
}

static void fmt_duration(double s, char *buf, size_t n) {
    if (!(s >= 0) || s > 1e7) { snprintf(buf, n, "--"); return; }
    int h = (int)(s / 3600), m = (int)(s / 60) % 60, sec = (int)s % 60;
    if (h) snprintf(buf, n, "%dh%02dm", h, m);
    else snprintf(buf, n, "%dm%02ds", m, sec);
}

/* ---- stages and freezing ---- */

static int stage_of_epoch(const camo_config *c, int epoch, int *first_epoch) {
    int e0 = 0;
    for (int s = 0; s < c->train.n_stages; s++) {
        if (epoch < e0 + c->train.stages[s].epochs) { *first_epoch = e0; return s; }
        e0 += c->train.stages[s].epochs;
    }
    *first_epoch = e0 - c->train.stages[c->train.n_stages - 1].epochs;
    return c->train.n_stages - 1;
}

/* Freezes the stage's `freeze` layers. With progressive unfreezing, the frozen set shrinks
 * from the deepest frozen layer towards the input over unfreeze_epochs. */
static void apply_freeze(camo_net *net, const camo_config *c, int stage, double epoch_in_stage) {
    const camo_stage *st = &c->train.stages[stage];
    int n_match = 0;
    for (int i = 0; i < net->n_layers; i++)
        if (st->freeze[0] && camo_net_matches(net, st->freeze, net->layers[i].name)) n_match++;
    int keep_frozen = n_match;
    if (st->progressive_unfreeze && st->unfreeze_epochs > 0) {
        double f = epoch_in_stage / st->unfreeze_epochs;
        keep_frozen = f >= 1 ? 0 : (int)ceil(n_match * (1 - f));
    }
    int k = 0;
    for (int i = 0; i < net->n_layers; i++) {
        camo_layer *l = &net->layers[i];
        int frozen = 0;
        if (st->freeze[0] && camo_net_matches(net, st->freeze, l->name)) frozen = k++ < keep_frozen;
        for (int j = 0; j < l->n_params; j++) net->params[l->param0 + j].frozen = frozen;
    }
}

/* ---- the board: replica 0's commands ---- */

static void board_init(board *bd) {
    memset(bd, 0, sizeof *bd);
    pthread_mutex_init(&bd->mu, NULL);
    pthread_cond_init(&bd->cv, NULL);
    bd->fail_rank = -1;
}

static void board_free(board *bd) {
    pthread_mutex_destroy(&bd->mu);
    pthread_cond_destroy(&bd->cv);
}

/* Records the first failure (replica `rank`, this thread's error) and stops everyone:
 * the board wakes its waiters, the comms end their collectives. */
static void run_fail(trainer *T, int rank) {
    board *bd = &T->bd;
    char reason[1100];
    pthread_mutex_lock(&bd->mu);
    if (bd->fail_rank < 0) {
        bd->fail_rank = rank;
        snprintf(bd->fail_msg, sizeof bd->fail_msg, "%s", camo_last_error());
    }
    snprintf(reason, sizeof reason, "replica %d failed: %s", bd->fail_rank, bd->fail_msg);
    bd->aborted = 1;
    pthread_cond_broadcast(&bd->cv);
    pthread_mutex_unlock(&bd->mu);
    for (int i = 0; i < T->n_rep && T->comms; i++) {
        if (T->comms[i]) T->comms[i]->abort(T->comms[i], reason);
        if (T->ctls[i]) T->ctls[i]->abort(T->ctls[i], reason);
    }
}

static void board_post(trainer *T, const command *cmd) {
    board *bd = &T->bd;
    pthread_mutex_lock(&bd->mu);
    bd->cmd = *cmd;
    bd->taken = 0;
    bd->seq++;
    pthread_cond_broadcast(&bd->cv);
    pthread_mutex_unlock(&bd->mu);
}

/* Replica != 0: waits for the command after *seen. -1 once aborted. */
static int board_next(trainer *T, unsigned long *seen, command *cmd) {
    board *bd = &T->bd;
    pthread_mutex_lock(&bd->mu);
    while (bd->seq == *seen && !bd->aborted) pthread_cond_wait(&bd->cv, &bd->mu);
    int rc = bd->aborted ? -1 : 0;
    *cmd = bd->cmd;
    *seen = bd->seq;
    pthread_mutex_unlock(&bd->mu);
    return rc;
}

static void board_take(trainer *T) {
    board *bd = &T->bd;
    pthread_mutex_lock(&bd->mu);
    bd->taken++;
    pthread_cond_broadcast(&bd->cv);
    pthread_mutex_unlock(&bd->mu);
}

/* Replica 0: waits until every other replica is done with the current batch (a
 * micro-batch's work: parallel.timeout_s at most, like a collective). */
static int board_wait_taken(trainer *T) {
    board *bd = &T->bd;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += (time_t)T->c->parallel.timeout_s;
    int timed_out = 0;
    pthread_mutex_lock(&bd->mu);
    while (bd->taken < T->n_rep - 1 && !bd->aborted && !timed_out)
        timed_out = pthread_cond_timedwait(&bd->cv, &bd->mu, &ts) == ETIMEDOUT;
    int rc = bd->aborted || bd->taken < T->n_rep - 1 ? -1 : 0;
    int taken = bd->taken;
    pthread_mutex_unlock(&bd->mu);
    if (rc && timed_out)
        CAMO_ERR("%d of %d replicas did not finish a micro-batch within parallel.timeout_s = %g s",
                 T->n_rep - 1 - taken, T->n_rep, T->c->parallel.timeout_s);
    else if (rc)
        CAMO_ERR("stopped: replica %d failed", bd->fail_rank);
    return rc;
}

/* ---- one micro-batch on one replica ---- */

/* Fault injection (core/fault.h): replica r (a global rank) fails at the start of `step`,
 * or stalls (stops responding until a peer's failure is on the board, not merely the comm
 * aborted: the timed-out peer records why only after aborting its collective), or its whole
 * process dies as under kill -9. */
static int injected_failure(trainer *T, camo_replica *r, int64_t step) {
    camo_fault_kind f = camo_fault_replica(r->rank, T->world, step);
    if (f == CAMO_FAULT_NONE) return 0;
    if (f == CAMO_FAULT_KILL) raise(SIGKILL);
    if (f == CAMO_FAULT_STALL) {
        board *bd = &T->bd;
        pthread_mutex_lock(&bd->mu);
        while (!bd->aborted) pthread_cond_wait(&bd->cv, &bd->mu);
        pthread_mutex_unlock(&bd->mu);
    }
    CAMO_ERR("test hook CAMO_TEST_FAIL_REPLICA=%d: replica %d %s at step %lld", r->rank,
             r->rank, f == CAMO_FAULT_STALL ? "stalled" : "fails", (long long)step);
    if (r->rank != T->base) board_take(T);
    return -1;
}

/* Runs a MICRO command on replica r: its slice of the batch, then (last micro-batch) the
 * gradient exchange and the update. *ss, *gnorm: the step's global values. */
static int run_command(trainer *T, camo_replica *r, const command *cmd, camo_step_stats *ss,
                       double *gnorm) {
    if (injected_failure(T, r, cmd->step)) return -1;
    apply_freeze(r->net, T->c, cmd->stage, cmd->epoch_in_stage);
    camo_replica_set_position(r, cmd->step, cmd->step_image0);
    int rc = camo_replica_micro_batch(r, cmd->b, cmd->norm_images, cmd->norm_pixels,
                                      cmd->last_micro);
    /* GPU batches are pinned and uploads from them asynchronous: the batch may go back to
     * the loader (and be refilled) once this replica's uploads are done, while its compute
     * goes on (after a failure the batch is never released, see run_epoch) */
    if (rc == 0) camo_replica_uploads_wait(r);
    if (r->rank != T->base) board_take(T); /* replica 0 may release the batch now */
    if (rc || !cmd->last_micro) return rc;
    if (camo_replica_step(r, cmd->lr, gnorm)) return -1;
    /* one step in flight at most: the previous step's measurements now */
    return camo_replica_pending(r) > 1 && camo_replica_measures(r, ss) < 0 ? -1 : 0;
}

static void *replica_thread(void *arg) {
    camo_replica *r = arg;
    trainer *T = r->user;
    if (camo_replica_sync_start(r)) { run_fail(T, r->rank); return NULL; }
    unsigned long seen = 0;
    command cmd;
    while (board_next(T, &seen, &cmd) == 0 && cmd.kind != CMD_STOP) {
        camo_step_stats ss;
        double gnorm;
        int rc = cmd.kind == CMD_FLUSH ? camo_replica_measures(r, &ss) < 0
                                       : run_command(T, r, &cmd, &ss, &gnorm);
        if (rc) { run_fail(T, r->rank); break; }
    }
    return NULL;
}

/* Replica 0: posts a micro-batch to every replica, runs its own slice, and releases the
 * batch once all are done with it. */
static int train_micro_batch(trainer *T, command *cmd, camo_step_stats *ss, double *gnorm) {
    if (T->n_rep > 1) board_post(T, cmd);
    int rc = run_command(T, &T->rep[0], cmd, ss, gnorm);
    if (!rc && T->n_rep > 1) rc = board_wait_taken(T);
    if (!rc && cmd->last_micro) {
        T->comm_s += T->rep[0].comm_s;
        T->comm_wait_s += T->rep[0].wait_s;
    }
    return rc;
}

/* *px = norm_pixels of a micro-batch: valid pixels of the global batch for "ce" (scaled to
 * the step under accumulation), else every pixel of the step. Counted on the host from the
 * whole global batch, so every replica uses the same global count; a process that loaded
 * only its window of the batch adds the other processes' counts (exact: integers). 0, or
 * -1 + error. */
static int step_pixels(trainer *T, const camo_batch *b, double norm_images, double *px) {
    size_t plane = (size_t)b->size * b->size;
    if (T->c->train.loss_kind != LOSS_CE) {
        *px = norm_images * (double)plane;
        return 0;
    }
    size_t count = 0;
    for (size_t i = 0; i < (size_t)b->n * plane; i++)
        count += b->labels[i] != T->c->data.ignore_index;
    double valid = (double)count;
    if (T->windowed && camo_mpi_sum_doubles(T->mpi_ctl, &valid, 1, NULL)) return -1;
    *px = (valid ? valid : 1.0) * norm_images / b->total;
    return 0;
}

/* ---- checkpoints ---- */

static int save_checkpoint(trainer *T, const char *file) {
    if (T->proc != 0) return 0; /* process 0 saves for all (its replicas hold every weight) */
    char path[CAMO_PATH_MAX + 32];
    out_path(T, file, path, sizeof path);
    T->st.elapsed_s = T->elapsed0 + camo_now() - T->t0;
    T->st.loss_scale = T->rep[0].scaling ? T->rep[0].ls.scale : 0;
    T->st.epoch_sums = T->ep.sum;
    if (camo_ckpt_save(path, T->net, T->opt, &T->st, T->c->text, T->network_text, T->c->seed)) {
        camo_warn("%s", camo_last_error());
        return -1;
    }
    return 0;
}

/* ---- logging ---- */

/* GPU replicas: replica 0's device memory (MiB reserved by the caching allocator, its peak)
 * and the count of cudaMalloc calls so far, which stays flat after the first epoch (every
 * batch size seen) when steps allocate nothing. */
static void log_gpu_memory(trainer *T, FILE *f) {
    size_t reserved, peak, mallocs;
    if (!T->dev.gpu) { /* CPU: replica 0's backend blocks, now and at their peak */
        camo_cpu_mem_stats(T->be, &reserved, &peak);
        fprintf(f, ",\"mem_mb\":%.1f,\"peak_mb\":%.1f", reserved / 1048576.0,
                peak / 1048576.0);
        return;
    }
    camo_cuda_mem_stats(T->be, &reserved, &peak, &mallocs);
    fprintf(f, ",\"gpu_mem_mb\":%.1f,\"gpu_peak_mb\":%.1f,\"gpu_mallocs\":%zu"
            ",\"direct_convs\":%d", reserved / 1048576.0, peak / 1048576.0, mallocs,
            camo_cuda_direct_conv_count(T->be));
}

/* The step's scalars in TensorBoard but its loss and gradient norm (log_step): what its
 * metrics.jsonl record holds, plus the step's own img/s (the console's is over log.every
 * steps). */
static void tb_step(trainer *T, double lr, double now) {
    int64_t s = T->st.step;
    double dt = now - T->tb_last_t;
    camo_tb_scalar(T->tb, "train/lr", s, lr);
    if (dt > 0) camo_tb_scalar(T->tb, "train/img_per_s", s, (T->images - T->tb_last_images) / dt);
    if (T->rep[0].scaling) camo_tb_scalar(T->tb, "train/loss_scale", s, T->rep[0].ls.scale);
    if (T->world > 1) {
        camo_tb_scalar(T->tb, "comm/time_s", s, T->rep[0].comm_s);
        camo_tb_scalar(T->tb, "comm/wait_s", s, T->rep[0].wait_s);
    }
    if (T->dev.gpu) {
        size_t reserved, peak;
        camo_cuda_mem_stats(T->be, &reserved, &peak, NULL);
        camo_tb_scalar(T->tb, "gpu/mem_mb", s, reserved / 1048576.0);
        camo_tb_scalar(T->tb, "gpu/peak_mb", s, peak / 1048576.0);
    }
    T->tb_last_t = now;
    T->tb_last_images = T->images;
}

/* The step's metrics.jsonl fields after its gradient norm, as known when it ran (malloc'ed). */
static char *step_json(trainer *T, double now) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) return NULL;
    camo_moe_log_json(f, T->net); /* mixture of experts: balance, usage */
    if (T->rep[0].scaling) /* the scale for the next step, after this one's update */
        fprintf(f, ",\"loss_scale\":%.9g,\"skipped\":%s,\"skipped_total\":%lld",
                T->rep[0].ls.scale, T->rep[0].skipped ? "true" : "false",
                (long long)T->rep[0].ls.skipped);
    if (T->world > 1)
        fprintf(f, ",\"replicas\":%d,\"comm_time\":%.6f,\"comm_wait\":%.6f", T->world,
                T->rep[0].comm_s, T->rep[0].wait_s);
    log_gpu_memory(T, f);
    fprintf(f, ",\"images\":%lld,\"time\":%.3f}", (long long)T->images, now - T->t0);
    fclose(f);
    return buf;
}

/* Step T->st.step is queued: keeps what its records need until its measurements arrive
 * (TensorBoard gets all but the loss now). */
static void step_begin(trainer *T, int epoch, int batch, int n_batches, double lr,
                       double gnorm, double norm_images) {
    double now = camo_now();
    T->rss_steps = camo_rss_bytes(1);
    if (T->tb) tb_step(T, lr, now);
    T->pending = (step_record){.step = T->st.step, .epoch = epoch, .batch = batch,
                               .n_batches = n_batches, .lr = lr, .gnorm = gnorm,
                               .norm_images = norm_images, .time = now, .images = T->images,
                               .skipped = T->rep[0].skipped};
    if (T->jsonl) T->pending.json = step_json(T, now);
}

/* The pending step's records with its loss and gradient norm (clipped on the host: known
 * when it ran; on the device: arrived with the loss; else NaN): metrics.jsonl, TensorBoard,
 * and every log.every steps (and at an epoch's last batch) the console line. */
static void log_step(trainer *T, const step_record *p, double loss, double gnorm,
                     int64_t steps_total) {
    if (T->tb) camo_tb_scalar(T->tb, "train/loss", p->step, loss);
    if (T->tb && isfinite(gnorm)) camo_tb_scalar(T->tb, "train/grad_norm", p->step, gnorm);
    T->loss_sum += loss;
    T->loss_count++;
    if (T->jsonl && p->json) {
        fprintf(T->jsonl, "{\"type\":\"step\",\"epoch\":%d,\"step\":%lld,\"loss\":%.6g,"
                "\"lr\":%.6g", p->epoch + 1, (long long)p->step, loss, p->lr);
        if (isfinite(gnorm)) fprintf(T->jsonl, ",\"grad_norm\":%.6g", gnorm);
        fprintf(T->jsonl, "%s\n", p->json);
    }
    if (p->step % T->c->log.every != 0 && p->batch != p->n_batches) return;
    double dt = p->time - T->last_log_t;
    double ips = dt > 0 ? (p->images - T->last_log_images) / dt : 0;
    double steps_per_s = dt > 0 ? T->loss_count / dt : 0;
    char eta[32];
    fmt_duration(steps_per_s > 0 ? (steps_total - p->step) / steps_per_s : -1, eta, sizeof eta);
    /* on a terminal, redrawn in place; epoch and eval lines scroll above it */
    camo_progress("epoch %d/%d  batch %d/%d  step %lld  loss %.4f  lr %.2e  %.1f img/s  ETA %s",
              p->epoch + 1, T->c->train.epochs, p->batch, p->n_batches, (long long)p->step,
              T->loss_sum / T->loss_count, p->lr, ips, eta);
    T->loss_sum = 0;
    T->loss_count = 0;
    T->last_log_t = p->time;
    T->last_log_images = p->images;
    if (T->jsonl) fflush(T->jsonl);
    camo_tb_flush(T->tb);
}

/* Adds an optimizer step to the epoch's sums; images: the step's global image count. A
 * non-finite loss (an fp16 step skipped on overflow) adds its pixels but not its loss. */
static void epoch_add(trainer *T, const camo_step_stats *ss, double images) {
    camo_epoch_sums *e = &T->ep.sum;
    if (isfinite(ss->loss)) {
        e->loss_x_images += ss->loss * images;
        e->images += images;
    }
    e->correct += ss->pixels_correct;
    e->counted += ss->pixels_counted;
    e->steps++;
}

/* The measurements *ss of the pending step arrived: its records, the divergence check and
 * the epoch's sums. 0, or -2 + error (training diverged). */
static int step_finish(trainer *T, const camo_step_stats *ss, int64_t steps_total) {
    step_record *p = &T->pending;
    int rc = 0;
    if (ss->step != p->step) {
        CAMO_ERR("internal: the measurements of step %lld arrived for step %lld",
                 (long long)ss->step, (long long)p->step);
        rc = -4;
    } else if (!isfinite(ss->loss) && !p->skipped) {
        CAMO_ERR("loss is %g at epoch %d, step %lld: training diverged (lower train.lr or "
                 "set train.clip_grad_norm); the last good checkpoint is kept",
                 ss->loss, p->epoch + 1, (long long)p->step);
        rc = -2;
    } else {
        log_step(T, p, ss->loss, isfinite(p->gnorm) ? p->gnorm : ss->grad_norm, steps_total);
        epoch_add(T, ss, p->norm_images);
    }
    free(p->json);
    memset(p, 0, sizeof *p);
    return rc;
}

/* Takes the pending step's measurements now, on every replica (the board's FLUSH): before
 * a checkpoint and at the end of an epoch or a run. 0, -2 (diverged) or -4 (a replica
 * failed). */
static int flush_measures(trainer *T, int64_t steps_total) {
    if (!camo_replica_pending(&T->rep[0])) return 0;
    if (T->n_rep > 1) {
        command cmd = {.kind = CMD_FLUSH};
        board_post(T, &cmd);
    }
    camo_step_stats ss;
    if (camo_replica_measures(&T->rep[0], &ss) < 0) return -4;
    return step_finish(T, &ss, steps_total);
}

/* The epoch's training measures: a log line and an "epoch" record in metrics.jsonl. */
static void log_epoch(trainer *T, int epoch) {
    const camo_epoch_sums *e = &T->ep.sum;
    int from_batch = T->ep.from_batch;
    double loss = e->images > 0 ? e->loss_x_images / e->images : NAN;
    double acc = e->counted > 0 ? e->correct / e->counted : NAN;
    char resumed[64] = "";
    if (from_batch > 0)
        snprintf(resumed, sizeof resumed, ", from batch %d after a resume", from_batch + 1);
    camo_info("train epoch %d: loss %.4f  pixel acc %.4f  (%.0f images, %d step%s%s)",
              epoch + 1, loss, acc, e->images, e->steps, e->steps == 1 ? "" : "s", resumed);
    if (T->tb) {
        camo_tb_scalar(T->tb, "epoch/train_loss", T->st.step, loss);
        camo_tb_scalar(T->tb, "epoch/train_pixel_acc", T->st.step, acc);
        camo_tb_scalar(T->tb, "epoch/epoch", T->st.step, epoch + 1);
        camo_tb_flush(T->tb);
    }
    if (!T->jsonl) return;
    fprintf(T->jsonl, "{\"type\":\"epoch\",\"epoch\":%d,\"step\":%lld,\"train_loss\":",
            epoch + 1, (long long)T->st.step);
    camo_json_number(T->jsonl, loss);
    fputs(",\"train_pixel_acc\":", T->jsonl);
    camo_json_number(T->jsonl, acc);
    fprintf(T->jsonl, ",\"images\":%.0f,\"pixels\":%.0f,\"steps\":%d", e->images, e->counted,
            e->steps);
    if (from_batch > 0) fprintf(T->jsonl, ",\"from_batch\":%d", from_batch + 1);
    fputs("}\n", T->jsonl);
    fflush(T->jsonl);
}

/* ---- evaluation at the end of an epoch ---- */

static int run_eval(trainer *T, int epoch, int *early_stop) {
    camo_eval_full full; /* every metric, for TensorBoard; r is its summary */
    camo_optim_swap_ema(T->net, T->opt); /* evaluate (and keep as best) the EMA weights */
    int rc = camo_evaluate_full(T->net, T->c, T->val_ds, T->c->data.workers, &full);
    camo_optim_swap_ema(T->net, T->opt);
    camo_eval_result r = full.r;
    if (!rc && T->tb) {
        camo_eval_tb(T->tb, &full, (long long)T->st.step);
        camo_tb_flush(T->tb);
    }
    camo_eval_full_free(&full);
    T->tb_last_t = camo_now(); /* the next step's img/s leaves the evaluation out */
    if (rc) return -1;
    double score = camo_eval_score(&r, T->c->checkpoint.metric);
    int improved = !(score <= T->st.best_metric); /* NaN best = first eval */
    if (T->net->classes > 1)
        camo_info("eval  epoch %d: loss %.4f  mIoU %.4f  pixel acc %.4f  (%d images, %.1f s)%s",
                  epoch + 1, r.loss, r.miou, r.pixel_acc, r.n_images, r.seconds, improved ? "  *best*" : "");
    else
        camo_info("eval  epoch %d: loss %.4f  IoU %.4f  Dice %.4f  MAE %.4f  (%d images, %.1f s)%s",
                  epoch + 1, r.loss, r.iou, r.dice, r.mae, r.n_images, r.seconds, improved ? "  *best*" : "");
    if (T->jsonl) {
        camo_eval_jsonl(T->jsonl, &r, T->net->classes, epoch + 1, (long long)T->st.step);
        fflush(T->jsonl);
    }
    if (improved) {
        T->st.best_metric = score;
        T->st.best_epoch = epoch + 1;
        T->st.bad_epochs = 0;
        save_checkpoint(T, "best.ckpt");
    } else if (T->c->train.early_stop_patience > 0 &&
               ++T->st.bad_epochs >= T->c->train.early_stop_patience) {
        camo_info("early stop: no %s improvement in %d evaluations (best %.4f at epoch %d)",
                  T->c->checkpoint.metric, T->st.bad_epochs, fabs(T->st.best_metric), T->st.best_epoch);
        *early_stop = 1;
    }
    return 0;
}

/* ---- the epoch loop ---- */

static int64_t total_steps(const camo_config *c, int n) {
    int64_t steps = 0;
    for (int s = 0; s < c->train.n_stages; s++) {
        int nb = (n + c->train.stages[s].batch - 1) / c->train.stages[s].batch;
        steps += (int64_t)c->train.stages[s].epochs * ((nb + c->train.accum_steps - 1) / c->train.accum_steps);
    }
    if (c->train.max_steps > 0 && c->train.max_steps < steps) steps = c->train.max_steps;
    return steps;
}

/* Several processes: each sees its own signals, so after every step they agree: a signal
 * in any process (2) stops all after this step as a signal would, max_steps (1) alike.
 * 0, or -1 + error (a process did not answer within parallel.timeout_s). */
static int mpi_agree_stop(trainer *T, int *stop) {
    int v = stop_signal ? 2 : *stop ? 1 : 0;
    if (camo_mpi_max_int(T->mpi_ctl, &v, NULL)) return -1;
    if (v == 2 && !stop_signal) stop_signal = SIGTERM; /* another process's */
    *stop = v > 0;
    return 0;
}

/* Runs (the rest of) one epoch. *stop: a signal or max_steps ended it early. */
static int run_epoch(trainer *T, int epoch, int64_t steps_total, int *stop) {
    const camo_config *c = T->c;
    int e0, s = stage_of_epoch(c, epoch, &e0);
    int B = c->train.stages[s].batch, n = camo_dataset_size(T->train_ds);
    int nb = (n + B - 1) / B, accum = c->train.accum_steps;
    int *order = camo_malloc((size_t)n * sizeof(int));
    camo_epoch_permutation(order, n, c->seed, epoch);
    int start = epoch == T->st.epoch ? T->st.batch : 0;
    memset(&T->ep, 0, sizeof T->ep);
    T->ep.from_batch = start;
    if (start > 0 && T->st.has_epoch_sums) { /* resumed mid-epoch: the steps before count */
        T->ep.sum = T->st.epoch_sums;
        T->ep.from_batch = 0;
    }
    camo_loader_start(T->loader, order + (size_t)start * B, n - start * B, B, c->seed, epoch);
    int rc = 0;
    for (int b = start; b < nb && !rc && !*stop; b++) {
        camo_batch *bt = camo_loader_next(T->loader);
        if (!bt) { rc = -1; break; }
        int g0 = b - b % accum, g1 = CAMO_MIN(g0 + accum, nb);
        command cmd = {.kind = CMD_MICRO, .b = bt, .last_micro = b + 1 == g1,
                       .stage = s, .epoch_in_stage = epoch - e0, .step = T->st.step + 1,
                       .step_image0 = (int64_t)(b - g0) * B};
        cmd.norm_images = CAMO_MIN((int64_t)g1 * B, n) - (int64_t)g0 * B;
        if (step_pixels(T, bt, cmd.norm_images, &cmd.norm_pixels)) {
            rc = -4;
            break;
        }
        cmd.lr = camo_lr_at(c, s, (epoch - e0) + (double)(b + 1) / nb);
        camo_step_stats ss = {.step = 0, .loss = NAN}; /* the previous step's, if any */
        double gnorm = NAN, lr = cmd.lr;
        if (train_micro_batch(T, &cmd, &ss, &gnorm)) {
            rc = -4; /* a replica failed; others may still read bt: it is never released */
            break;
        }
        T->images += bt->total;
        camo_loader_release(T->loader, bt);
        if (!cmd.last_micro) continue;
        T->st.step++;
        T->st.batch = b + 1;
        if (ss.step && (rc = step_finish(T, &ss, steps_total))) break;
        const camo_replica *r0 = &T->rep[0];
        if (r0->skipped) /* fp16 overflow: no update; the data and the schedule move on */
            camo_info("step %lld skipped: fp16 gradient overflow, loss scale now %g",
                      (long long)T->st.step, r0->ls.scale);
        if (r0->skipped && r0->ls.bad_run >= 40) {
            CAMO_ERR("40 steps in a row overflowed in fp16 (loss scale now %g) at epoch %d, "
                     "step %lld: use train.amp = bf16 or off, or lower train.lr",
                     r0->ls.scale, epoch + 1, (long long)T->st.step);
            rc = -2;
            break;
        }
        step_begin(T, epoch, b + 1, nb, lr, gnorm, cmd.norm_images);
        if (c->checkpoint.every_steps > 0 && T->st.step % c->checkpoint.every_steps == 0) {
            if ((rc = flush_measures(T, steps_total))) break;
            save_checkpoint(T, "last.ckpt");
        }
        int sig = camo_fault_signal_at(T->st.step);
        if (sig) raise(sig);
        if (stop_signal || (c->train.max_steps > 0 && T->st.step >= c->train.max_steps)) *stop = 1;
        if (T->procs > 1 && mpi_agree_stop(T, stop)) {
            rc = -4;
            break;
        }
    }
    if (!rc) rc = flush_measures(T, steps_total);
    if (rc == -1 && camo_loader_failed(T->loader))
        rc = -3; /* bad input data: the message names the file */
    free(order);
    if (!rc && T->st.batch >= nb) {
        log_epoch(T, epoch);
        T->st.epoch = epoch + 1;
        T->st.batch = 0;
    }
    return rc;
}

/* ---- set-up and the run ---- */

static int open_data(trainer *T) {
    const camo_config *c = T->c;
    if (!c->data.root[0]) {
        CAMO_ERR("%s: data.root is not set (a data set folder, e.g. data/synth)", c->path);
        return -1;
    }
    T->train_ds = camo_dataset_open(c->data.root, c->data.format, c->data.train_split,
                                    c->data.classes, c->data.skip_bad);
    if (T->train_ds && c->data.subset > 0) {
        int n = camo_dataset_size(T->train_ds);
        camo_info("data.subset: %d of %d training images (chosen by seed %llu)",
                  camo_dataset_subset(T->train_ds, c->data.subset, c->seed), n,
                  (unsigned long long)c->seed);
    }
    if (!T->train_ds || camo_dataset_configure(T->train_ds, c->data.ignore_index, c->data.cache,
                                               &c->data.aug))
        return -1;
    if (c->eval.every > 0 && T->proc == 0) { /* process 0 evaluates for all */
        T->val_ds = camo_dataset_open(c->data.root, c->data.format, c->data.val_split,
                                      c->data.classes, c->data.skip_bad);
        if (!T->val_ds) return -1;
        camo_dataset_set_ignore_index(T->val_ds, c->data.ignore_index);
    }
    camo_info("data: %d training images (%s/%s), %d validation images", camo_dataset_size(T->train_ds),
              c->data.root, c->data.train_split, T->val_ds ? camo_dataset_size(T->val_ds) : 0);
    return 0;
}

/* train.amp on backend be (NULL: before any backend, for the CPU notice). Returns whether
 * fp16 loss scaling is on: a GPU whose convolutions run in fp16 (asked for, or bf16 falling
 * back on sm_75). CPU replicas compute in fp32: one notice, no scaling, except under the
 * test hook CAMO_TEST_LOSS_SCALE=1, which scales on CPU replicas too (exact in fp32, so the
 * numbers must not change: tests/test_loss_scale.sh). */
static int setup_amp(trainer *T, camo_backend *be) {
    camo_cuda_amp mode = CAMO_AMP_OFF;
    camo_cuda_amp_parse(T->c->train.amp, &mode); /* validated by the config parser */
    if (!T->dev.gpu) {
        if (be == NULL && mode != CAMO_AMP_OFF)
            camo_info("train.amp = %s applies to GPUs only: CPU replicas compute in fp32",
                      T->c->train.amp);
        return camo_fault_loss_scale_on_cpu();
    }
    if (be == NULL) return 0;
    return camo_cuda_set_amp(be, mode) == CAMO_AMP_FP16;
}

/* What each replica needs of the config. */
static camo_replica_opts replica_opts(const camo_config *c) {
    return (camo_replica_opts){
        .net = camo_config_net_source(c), .img_size = c->data.aug.size,
        .loss = c->train.loss_kind, .deep_supervision = c->train.deep_supervision,
        .ignore_index = c->data.ignore_index, .optim = camo_config_optim_opts(c),
        .clip_grad_norm = c->train.clip_grad_norm, .seed = c->seed,
        .dp = !strcmp(c->parallel.mode, "dp"), .sync_bn = c->parallel.sync_bn,
        .bucket_mb = c->parallel.bucket_mb, .init_weights = c->init.weights,
        .init_prefix = c->init.prefix, .init_strict = c->init.strict,
        .lean_memory = c->train.lean_memory, .checkpointing = c->train.checkpointing};
}

/* Several processes: every one must run the same recipe from the same point with the same
 * replica count, or their collectives would not match (and could hang). Each process's
 * (config hash, replicas, GPU or CPU, resumed step) is gathered to all, and all compare
 * them with process 0's, so all reach the same verdict. 0, or -1 + error. */
static int mpi_same_run(trainer *T, const camo_ckpt *ck) {
    double mine[4] = {camo_fnv1a(T->c->text), T->n_rep, T->dev.gpu,
                      ck ? (double)ck->st.step : -1};
    double *all = camo_calloc((size_t)T->procs * 4, sizeof(double));
    memcpy(all + 4 * T->proc, mine, sizeof mine);
    int rc = camo_mpi_all_gather(T->mpi_ctl, all, sizeof mine, NULL), bad = -1;
    for (int p = 1; !rc && p < T->procs && bad < 0; p++)
        if (memcmp(all + 4 * p, all, sizeof mine)) bad = p;
    if (!rc && bad >= 0)
        CAMO_ERR("process %d of %d differs from process 0: %s (every process must run the same "
                 "config and --devices, from the same checkpoint)", bad, T->procs,
                 all[4 * bad] != all[0] ? "another config (the file and every --set)" :
                 all[4 * bad + 3] != all[3] ? "another --resume checkpoint" :
                 "another replica count or device kind (parallel.devices)");
    free(all);
    return rc || bad >= 0 ? -1 : 0;
}

/* The replicas of parallel.devices, each with its backend and model, and their comms. */
static int setup_model(trainer *T, const camo_ckpt *ck) {
    T->rss_before_model = camo_rss_bytes(0);
    const camo_config *c = T->c;
    if (camo_devices_parse(c->parallel.devices, c->train.threads, &T->dev)) return -1;
    for (int s = 0; s < c->train.n_stages; s++)
        T->max_batch = CAMO_MAX(T->max_batch, c->train.stages[s].batch);
    T->n_rep = T->dev.n;
    T->world = T->n_rep * T->procs; /* global replicas: base .. base + n_rep - 1 are ours */
    T->base = T->n_rep * T->proc;
    if (T->procs > 1 && mpi_same_run(T, ck)) return -1;
    int local = (T->max_batch + T->world - 1) / T->world;
    T->rep = camo_calloc((size_t)T->n_rep, sizeof *T->rep);
    camo_backend *bes[CAMO_MAX_REPLICAS];
    camo_replica_opts opts = replica_opts(c);
    int batches[CAMO_MAX_STAGES];
    for (int s = 0; s < c->train.n_stages; s++) batches[s] = c->train.stages[s].batch;
    int scaling = setup_amp(T, NULL);
    for (int i = 0; i < T->n_rep; i++) {
        camo_backend *be = camo_devices_backend(&T->dev, i);
        if (!be) return -1;
        if (T->dev.gpu) {
            scaling = setup_amp(T, be);
            camo_cuda_set_deterministic(be, c->train.deterministic);
        }
        if (camo_replica_init(&T->rep[i], &opts, ck, be, T->base + i, T->world, local,
                              i == 0 ? &T->network_text : NULL) ||
            camo_devices_prepare(&T->dev, T->rep[i].net, batches, c->train.n_stages,
                                 c->parallel.sync_bn, camo_dataset_size(T->train_ds),
                                 T->base + i))
            return -1;
        T->rep[i].user = T;
        T->rep[i].scaling = scaling;
        camo_loss_scale_init(&T->rep[i].ls, ck ? ck->st.loss_scale : 0);
        bes[i] = be;
    }
    T->be = T->rep[0].be;
    T->net = T->rep[0].net;
    if (c->parallel.sync_bn && T->world > 1 && camo_moe_check_sync_bn(T->net)) return -1;
    T->opt = T->rep[0].opt;
    if (T->world > 1) {
        T->comms = camo_calloc((size_t)T->n_rep, sizeof *T->comms);
        T->ctls = camo_calloc((size_t)T->n_rep, sizeof *T->ctls);
        if (camo_devices_comms(&T->dev, bes, c->parallel.timeout_s, T->comms) ||
            camo_devices_ctl_comms(&T->dev, bes, opts.dp && opts.sync_bn, c->parallel.timeout_s,
                                   T->ctls))
            return -1;
    }
    for (int i = 0; i < T->n_rep; i++)
        if (camo_replica_attach(&T->rep[i], T->comms ? T->comms[i] : NULL,
                                T->ctls ? T->ctls[i] : NULL))
            return -1;
    if (T->procs > 1)
        camo_info("parallel: %d processes x %d %s replica%s = %d (%s, %s%s; %s), local batch "
                  "<= %d", T->procs, T->n_rep, T->dev.gpu ? "GPU" : "CPU",
                  T->n_rep == 1 ? "" : "s", T->world, c->parallel.devices, c->parallel.mode,
                  c->parallel.sync_bn ? ", sync-BN" : "", camo_mpi_library(), local);
    else if (T->n_rep > 1)
        camo_info("parallel: %d %s replicas (%s, %s%s), local batch <= %d, %d thread%s each",
                  T->n_rep, T->dev.gpu ? "GPU" : "CPU", c->parallel.devices, c->parallel.mode,
                  c->parallel.sync_bn ? ", sync-BN" : "", local, T->dev.gpu ? 1 : T->dev.threads,
                  T->dev.gpu || T->dev.threads == 1 ? "" : "s");
    return 0;
}

/* A new events file in the run folder (a resume adds one; TensorBoard merges a folder's
 * files), with the config as text: indented, so TensorBoard's markdown shows it verbatim.
 * It starts with a session START at the first step it will log: after a crash, the old
 * file holds steps past the checkpoint that this run logs again, and TensorBoard drops
 * those at a restart's START (steps >= its step), so each step shows once. */
static int open_tensorboard(trainer *T, int64_t first_step) {
    if (!(T->tb = camo_tb_open(T->out))) return -1;
    if (camo_tb_session_start(T->tb, first_step)) return -1;
    size_t n = 0;
    char *md = NULL;
    FILE *f = open_memstream(&md, &n);
    if (!f) CAMO_DIE("open_memstream failed");
    for (const char *p = T->c->text; *p;) {
        size_t k = strcspn(p, "\n");
        fprintf(f, "    %.*s\n", (int)k, p);
        p += k + (p[k] == '\n');
    }
    fclose(f);
    int rc = camo_tb_text(T->tb, "config", 0, md);
    free(md);
    return rc;
}

/* ck: the checkpoint resumed from, or NULL (T->st is only set from it later). */
static int setup_run_folder(trainer *T, const char *resume_path, const camo_ckpt *ck) {
    const camo_config *c = T->c;
    if (c->out[0]) snprintf(T->out, sizeof T->out, "%s", c->out);
    else if (resume_path) {
        snprintf(T->out, sizeof T->out, "%s", resume_path);
        char *slash = strrchr(T->out, '/');
        if (slash) *slash = 0; else snprintf(T->out, sizeof T->out, ".");
    } else {
        const char *base = strrchr(c->path, '/');
        base = base ? base + 1 : c->path;
        snprintf(T->out, sizeof T->out, "runs/%.*s", (int)(strcspn(base, ".")), base);
    }
    if (camo_mkdirs(T->out)) return -1;
    char path[CAMO_PATH_MAX + 32];
    out_path(T, "config.cfg", path, sizeof path);
    FILE *f = fopen(path, "w");
    if (f) { fputs(c->text, f); fclose(f); }
    out_path(T, "metrics.jsonl", path, sizeof path);
    T->jsonl = fopen(path, "a");
    if (!T->jsonl) {
        CAMO_ERR("%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    /* the console's lines, appended like metrics.jsonl: a resume continues the same file */
    char marker[CAMO_PATH_MAX + 32];
    snprintf(marker, sizeof marker, "%s %s", resume_path ? "resumed from" : "new run of",
             resume_path ? resume_path : c->path);
    if (c->log.tensorboard && open_tensorboard(T, ck ? ck->st.step + 1 : 0)) return -1;
    out_path(T, "train.log", path, sizeof path);
    return camo_log_open(path, marker);
}

/* Every replica thread has been joined. Order matters on GPUs: the DDP comm threads stop;
 * each comm waits for what it issued (an aborted one returns at once) and is destroyed
 * (NCCL: ncclCommAbort if aborted, which ends kernels still waiting for peers); then each
 * backend drains its stream, so no collective or upload still reads a buffer; only then
 * are the pinned loader batches, the replicas' buffers and the backends freed. */
static void teardown(trainer *T) {
    for (int i = 0; T->rep && i < T->n_rep; i++)
        if (T->rep[i].ddp_on) {
            camo_ddp_free(&T->rep[i].ddp);
            T->rep[i].ddp_on = 0;
        }
    for (int i = 0; T->comms && i < T->n_rep; i++) {
        camo_comm *cs[2] = {T->comms[i], T->ctls[i]};
        for (int k = 0; k < 2; k++) {
            if (!cs[k]) continue;
            if (!cs[k]->aborted(cs[k])) cs[k]->wait(cs[k]);
            cs[k]->destroy(cs[k]);
        }
    }
    for (int i = 0; T->rep && i < T->n_rep; i++)
        if (T->rep[i].be) T->rep[i].be->sync(T->rep[i].be);
    if (T->loader) camo_loader_free(T->loader);
    if (T->train_ds) camo_dataset_free(T->train_ds);
    if (T->val_ds) camo_dataset_free(T->val_ds);
    for (int i = 0; T->rep && i < T->n_rep; i++) camo_replica_free(&T->rep[i]);
    free(T->comms);
    free(T->ctls);
    free(T->rep);
    free(T->pending.json); /* a step whose measurements a failure left unread */
    if (T->jsonl) fclose(T->jsonl);
    camo_tb_close(T->tb);
    free(T->network_text);
}

static void print_summary(trainer *T, const char *why) {
    if (T->proc != 0) return; /* process 0 speaks for the run */
    double t = camo_now() - T->t0;
    char dur[32];
    fmt_duration(t, dur, sizeof dur);
    const char *m = T->c->checkpoint.metric;
    double best = T->st.best_metric;
    if (!strcmp(m, "mae") || !strcmp(m, "loss")) best = -best;
    camo_print("%s: %d epochs, %lld steps in %s, %.1f img/s; best %s %.4f at epoch %d; "
               "run folder %s", why, T->st.epoch, (long long)T->st.step, dur,
               t > 0 ? T->images / t : 0.0, m, T->st.best_epoch ? best : NAN, T->st.best_epoch,
               T->out);
    if (!T->dev.gpu) {
        size_t peak;
        camo_cpu_mem_stats(T->be, NULL, &peak);
        camo_print("memory (replica 0): peak %.1f MiB allocated, of which activations and their "
                   "gradients %.1f MiB (train.memory \"%s\"); process resident peak %.1f MiB "
                   "over the steps, %.1f MiB before the model", peak / 1048576.0,
                   T->net->mem_arena / 1048576.0, T->c->train.memory, T->rss_steps / 1048576.0,
                   T->rss_before_model / 1048576.0);
    }
    if (T->dev.gpu) {
        size_t peak;
        camo_cuda_mem_stats(T->be, NULL, &peak, NULL);
        camo_print("peak GPU memory (replica 0): %.0f MiB", peak / 1048576.0);
        int direct = camo_cuda_direct_conv_count(T->be);
        if (direct > 0) /* cuDNN said unsupported: correct, but slow (docs/cuda.md) */
            camo_warn("%d convolution set-up%s of replica 0 ran on camotrain's direct kernel, "
                      "not cuDNN (unsupported there; slow)", direct, direct == 1 ? "" : "s");
    }
    if (T->jsonl)
        fprintf(T->jsonl, "{\"type\":\"summary\",\"reason\":\"%s\",\"epochs\":%d,\"steps\":%lld,"
                "\"seconds\":%.3f,\"img_per_s\":%.3f,\"best_metric\":%.6g,\"best_epoch\":%d,"
                "\"replicas\":%d,\"mode\":\"%s\",\"comm_s\":%.6f,\"comm_wait_s\":%.6f}\n",
                why, T->st.epoch, (long long)T->st.step, t, t > 0 ? T->images / t : 0.0,
                T->st.best_epoch ? best : 0.0, T->st.best_epoch, T->world, T->c->parallel.mode,
                T->comm_s, T->comm_wait_s);
    fflush(stdout);
}

static void install_signals(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESETHAND; /* a second signal kills at once */
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

/* Starts replicas 1..N-1 and runs replica 0's start-up check. 0, or -1 (recorded). */
static int start_replicas(trainer *T, pthread_t *threads, int *started) {
    board_init(&T->bd);
    T->boards_ready = 1;
    for (int i = 1; i < T->n_rep; i++) {
        if (pthread_create(&threads[i], NULL, replica_thread, &T->rep[i]) != 0) {
            CAMO_ERR("cannot start the thread of replica %d", i);
            run_fail(T, T->base);
            return -1;
        }
        (*started)++;
    }
    if (camo_replica_sync_start(&T->rep[0])) { run_fail(T, T->base); return -1; }
    return 0;
}

/* Ends every replica thread: a STOP command after success, else the abort (the first
 * failure names its replica), then joins the threads. */
static void stop_replicas(trainer *T, pthread_t *threads, int started, int ok) {
    if (!T->boards_ready) return;
    if (ok) {
        command cmd = {.kind = CMD_STOP};
        board_post(T, &cmd);
    } else {
        run_fail(T, T->base);
    }
    for (int i = 1; i <= started; i++) pthread_join(threads[i], NULL);
}

/* ---- several processes (core/mpi.h) ---- */

/* Joins the run's processes when a launcher started this one (else one process, no MPI
 * call), with the main thread's two exchange groups; processes other than 0 log nothing
 * but errors. 0, or -1 + error. */
static int mpi_start(trainer *T) {
    T->procs = 1;
    if (camo_mpi_init()) return -1;
    T->proc = camo_mpi_rank();
    T->procs = camo_mpi_size();
    if (T->procs == 1) return 0;
    if (T->proc != 0) camo_log_set_quiet(1);
    T->mpi_ctl = camo_mpi_group_create(T->c->parallel.timeout_s);
    T->mpi_wait = T->mpi_ctl ? camo_mpi_group_create_await(T->c->parallel.timeout_s, 0,
        T->c->parallel.eval_timeout_s, "process 0's evaluation (parallel.eval_timeout_s)") : NULL;
    return T->mpi_wait ? 0 : -1;
}

/* At the end, after the comms are gone: MPI_Finalize if MPI was started (a failed run of
 * several processes never gets here: camo_mpi_abort). */
static void mpi_stop(trainer *T) {
    camo_mpi_group_free(T->mpi_ctl);
    camo_mpi_group_free(T->mpi_wait);
    T->mpi_ctl = T->mpi_wait = NULL;
    camo_mpi_finalize();
}

/* "process 2 of 4: " before an error of a multi-process run, else "". */
static const char *mpi_who(const trainer *T) {
    static char who[64];
    if (T->procs < 2) return "";
    snprintf(who, sizeof who, "process %d of %d: ", T->proc, T->procs);
    return who;
}

/* The loader's window (data.h) of a process: the contiguous union of its replicas'
 * slices of a global batch of n. */
static void process_window(int n, void *ctx, int *lo, int *count) {
    const trainer *T = ctx;
    int lo0, n0, lo1, n1;
    camo_replica_slice(n, T->base, T->world, &lo0, &n0);
    camo_replica_slice(n, T->base + T->n_rep - 1, T->world, &lo1, &n1);
    *lo = lo0;
    *count = lo1 + n1 - lo0;
}

int camo_train_run(camo_config *c, const char *resume_path) {
    trainer T;
    memset(&T, 0, sizeof T);
    T.c = c;
    T.st.best_metric = NAN;
    camo_ckpt *ck = NULL;
    int rc = CAMO_ERR_INPUT;
    if (mpi_start(&T)) goto done;
    if (resume_path && !(ck = camo_ckpt_open(resume_path))) goto done;
    if (open_data(&T) || setup_model(&T, ck) ||
        (T.proc == 0 && setup_run_folder(&T, resume_path, ck)))
        goto done;
    if (ck) {
        T.st = ck->st;
        T.elapsed0 = ck->st.elapsed_s;
        camo_info("resuming %s at epoch %d, batch %d, step %lld", resume_path, T.st.epoch + 1,
                  T.st.batch, (long long)T.st.step);
    }
    camo_loader_opts lo = {0};
    if (T.dev.gpu) { /* pinned batches: true async uploads, no pageable-copy driver path */
        lo.alloc = camo_cuda_loader_alloc;
        lo.free = camo_cuda_loader_free;
    }
    /* several processes: each reads only its window of every batch, unless bad files are
     * skipped (which ones drop must be the same everywhere: every process loads it all) */
    T.windowed = T.procs > 1 && !c->data.skip_bad;
    if (T.windowed) {
        lo.window = process_window;
        lo.window_ctx = &T;
    }
    T.loader = camo_loader_create_ex(T.train_ds, &c->data.aug, c->data.workers, T.max_batch, 4,
                                     &lo);
    install_signals();
    int64_t steps_total = total_steps(c, camo_dataset_size(T.train_ds));
    camo_info("training %s: %zu parameters, %d epochs, %lld steps, loss %s, optimizer %s",
              T.net->name, camo_net_param_count(T.net), c->train.epochs, (long long)steps_total,
              c->train.loss, c->train.optimizer);
    T.t0 = T.last_log_t = T.tb_last_t = camo_now();
    int stop = 0, early = 0, started = 0;
    pthread_t threads[CAMO_MAX_REPLICAS];
    rc = start_replicas(&T, threads, &started) ? CAMO_ERR_RUNTIME : CAMO_OK;
    while (rc == CAMO_OK && T.st.epoch < c->train.epochs && !stop && !early) {
        int epoch = T.st.epoch;
        int erc = run_epoch(&T, epoch, steps_total, &stop);
        if (erc) { rc = erc == -3 ? CAMO_ERR_INPUT : CAMO_ERR_RUNTIME; break; }
        int last_epoch = T.st.epoch == c->train.epochs;
        if (T.st.epoch == epoch + 1 && T.val_ds &&
            ((epoch + 1) % c->eval.every == 0 || last_epoch || (stop && !stop_signal))) {
            /* not after a signal: an extra eval would change best/early stopping on resume */
            if (run_eval(&T, epoch, &early)) { rc = CAMO_ERR_INPUT; break; }
        }
        /* process 0's early stop for all; the others wait for its evaluation (bounded) */
        if (T.procs > 1 && camo_mpi_max_int(T.mpi_wait, &early, NULL)) {
            rc = CAMO_ERR_RUNTIME;
            break;
        }
        if (save_checkpoint(&T, "last.ckpt")) { rc = CAMO_ERR_RUNTIME; break; }
    }
    stop_replicas(&T, threads, started, rc == CAMO_OK);
    if (rc == CAMO_OK) {
        if (stop_signal) camo_info("stopped by signal %d after step %lld: %s/last.ckpt saved",
                                   (int)stop_signal, (long long)T.st.step, T.out);
        print_summary(&T, stop_signal ? "interrupted" : early ? "early stop" :
                          stop ? "max_steps reached" : "done");
    }
done:
    if (rc != CAMO_OK && T.boards_ready && T.bd.fail_rank >= 0 && T.world > 1)
        camo_print_error("%sreplica %d: %s (every replica stopped; the last good checkpoint is "
                         "kept)", mpi_who(&T), T.bd.fail_rank, T.bd.fail_msg);
    else if (rc != CAMO_OK)
        camo_print_error("%s%s", mpi_who(&T), camo_last_error());
    /* several processes: a failure ends them all now (none may wait for this one); the
     * checkpoints on disk are whole (written atomically), this one's state is not needed */
    if (rc != CAMO_OK) camo_mpi_abort(rc);
    camo_ckpt_close(ck);
    teardown(&T);
    if (T.boards_ready) board_free(&T.bd);
    mpi_stop(&T);
    camo_log_close();
    return rc;
}
