/* config.h: the training configuration (conf/NAME.cfg), with --set overrides applied and
 * every key validated (unknown keys are errors naming file:line). See conf/demo.cfg for a
 * commented example of every key. */
#ifndef CAMO_CONFIG_H
#define CAMO_CONFIG_H

#include <limits.h>
#include <stdint.h>

#include <libconfig.h>

#include "data/data.h"
#include "nn/loss.h"
#include "nn/net_build.h"
#include "nn/optim.h"

#define CAMO_MAX_STAGES 8
#define CAMO_PATH_MAX 1024

typedef enum { CAMO_SCHED_COSINE, CAMO_SCHED_POLY, CAMO_SCHED_STEP, CAMO_SCHED_CONSTANT } camo_schedule;

typedef struct camo_stage {
    int epochs;
    double lr;
    int batch;                   /* global batch */
    double warmup_epochs;
    char freeze[512];            /* comma-separated group names or layer-name prefixes */
    int progressive_unfreeze;    /* unfreeze `freeze` gradually over `unfreeze_epochs` */
    double unfreeze_epochs;
} camo_stage;

typedef struct camo_config {
    config_t cfg;                /* the parsed file after overrides */
    char path[CAMO_PATH_MAX];    /* the file, or "<checkpoint>" */
    char *text;                  /* config text after overrides (saved in checkpoints) */
    int model_only;              /* the file is a network file (conf/models/...) */
    const config_setting_t *model_setting; /* inline network group (or the root) */
    char model_path[CAMO_PATH_MAX];        /* or a network file */
    uint64_t seed;
    char out[CAMO_PATH_MAX];

    struct {
        char root[CAMO_PATH_MAX], format[16], val_split[128];
        char train_split[256];   /* one split, or several joined by commas (train+val) */
        int classes, workers, skip_bad, ignore_index;
        int cache;               /* data.cache: 0 none, 1 decoded */
        double subset;           /* data.subset: 0 all; (0, 1) a fraction; >= 1 a count */
        camo_augment aug;        /* aug.size = img_size */
    } data;

    struct {
        int epochs, accum_steps, max_steps, threads, deterministic, deep_supervision;
        int early_stop_patience, nesterov;
        char optimizer[16], schedule[16], loss[32], amp[8], memory[8];
        int lean_memory;           /* memory == "lean" */
        int checkpointing;         /* recompute the network's checkpoint_blocks in backward */
        camo_loss_kind loss_kind;  /* `loss` parsed */
        camo_opt_type opt_type;    /* `optimizer` parsed */
        camo_schedule schedule_kind; /* `schedule` parsed */
        double lr, min_lr, momentum, weight_decay, beta1, beta2, eps;
        double poly_power, step_gamma, clip_grad_norm, ema_decay;
        int step_size;           /* epochs between lr drops (schedule "step") */
        int n_stages;
        camo_stage stages[CAMO_MAX_STAGES];
    } train;

    struct { int every, batch; char metric[16]; double threshold; } eval;
    struct { int every_steps; char metric[16]; } checkpoint;
    /* eval_timeout_s: how long the other processes wait for process 0's evaluation */
    struct {
        char devices[64], mode[8];
        double bucket_mb, timeout_s, eval_timeout_s;
        int sync_bn;
    } parallel;
    struct { int every, tensorboard; } log; /* tensorboard: write events.out.tfevents.* */
    /* init: pretrained weights loaded by name before training (nn/pretrained.h); weights
     * "" = none; resolved like `model` (the config's folder first, else as given) */
    struct { char weights[CAMO_PATH_MAX], prefix[128]; int strict; } init;
} camo_config;

/* Loads `path` (or, when text != NULL, the config text saved in a checkpoint), applies the
 * `key=value` overrides in order and validates. 0, or -1 with an error naming file:line,
 * the key or the override. */
int camo_config_load(camo_config *c, const char *path, const char *text,
                     char *const *overrides, int n_overrides);
void camo_config_free(camo_config *c);

/* Applies one "dotted.key=value" to a libconfig tree (creating groups as needed); the
 * value's type follows the existing setting, else is inferred (bool, int, float, string,
 * [list]). */
int camo_config_override(config_t *cfg, const char *assignment);

/* Where the run's network comes from (pointers into c: valid while c is). */
camo_net_source camo_config_net_source(const camo_config *c);
/* The optimizer settings of train.* */
camo_optim_opts camo_config_optim_opts(const camo_config *c);

#endif
