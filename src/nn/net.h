/* net.h: a network built from a libconfig file (docs/models.md): parameters, layers,
 * forward and backward on one backend. One net per replica. */
#ifndef CAMO_NET_H
#define CAMO_NET_H

#include <stdint.h>
#include <stdio.h>

#include "backend/backend.h"

#define CAMO_NAME_MAX 96
#define CAMO_MAX_INPUTS 8
#define CAMO_MAX_OUTPUTS 8

typedef enum {
    CAMO_PARAM_WEIGHT,   /* trained; has a gradient */
    CAMO_PARAM_BUFFER,   /* saved, not trained (BN running stats) */
    CAMO_PARAM_COUNTER   /* int64 host counter (BN num_batches_tracked) */
} camo_param_kind;

typedef enum {
    CAMO_LAYOUT_PLAIN,   /* same element order as PyTorch */
    CAMO_LAYOUT_OHWI     /* conv weight: memory [K][R][S][C/g], PyTorch [K][C/g][R][S] */
} camo_layout;

typedef struct camo_param {
    char name[CAMO_NAME_MAX + 32]; /* PyTorch state_dict name, e.g. "enc1a.conv.weight" */
    camo_param_kind kind;
    camo_layout layout;
    int ndim;
    int64_t shape[4];           /* PyTorch shape */
    size_t numel;
    float *data;                /* backend memory (NULL for counters) */
    float *grad;                /* backend memory, WEIGHT only; a slice of net->grad_block */
    int64_t *counter;           /* COUNTER only: points into the owning layer */
    int no_decay;               /* norm scales and biases: no weight decay */
    int frozen;                 /* set by training stages: no update, no gradient needed */
    int layer;                  /* index of the owning layer */
    int fan_in;                 /* for initialisation */
} camo_param;

/* Alignment of every parameter, gradient and buffer inside the blocks, in floats (256 bytes):
 * cuDNN may refuse misaligned operands (CUDNN_STATUS_BAD_PARAM_MISALIGNED_POINTER) or pick
 * slower kernels, and NCCL's buckets start aligned. The backends' alloc returns blocks
 * aligned at least this much. */
#define CAMO_PARAM_ALIGN 64

/* numel rounded up to whole CAMO_PARAM_ALIGN units: a tensor's room in its block */
static inline size_t camo_param_padded(size_t numel) {
    return (numel + CAMO_PARAM_ALIGN - 1) / CAMO_PARAM_ALIGN * CAMO_PARAM_ALIGN;
}

typedef struct camo_layer camo_layer; /* defined in nn/layer.h */
typedef struct camo_plan camo_plan;   /* defined in nn/net_plan.h */

/* camo_net_forward's `training` when backward regenerates a dropped output (net_plan.h):
 * the training forward's numbers without its side effects (BN statistics, collectives) */
#define CAMO_FWD_RECOMPUTE 2

typedef struct camo_output {
    char name[CAMO_NAME_MAX];
    int layer;      /* producing layer */
    float weight;   /* loss weight (deep supervision) */
} camo_output;

typedef struct camo_net {
    camo_backend *be;
    char name[CAMO_NAME_MAX];
    char *source;               /* config file path (for messages) */
    int input_channels, classes;

    int n_layers;
    camo_layer *layers;

    /* Parameters in forward order. All WEIGHT data lives in one block and all gradients in
     * another, laid out in REVERSE parameter order so DDP buckets are contiguous slices
     * (STYLE.md habit 4). Every tensor of the blocks starts on a 256-byte boundary
     * (CAMO_PARAM_ALIGN): the gap after each one is zero and stays zero, since every
     * whole-block operation (zeroing, optimizer steps, EMA, norms, all-reduce, broadcast)
     * maps zeros to zeros. */
    int n_params;
    camo_param *params;
    float *param_block, *grad_block;
    size_t n_weight_floats;     /* floats in param_block == in grad_block, padding included
                                   (camo_net_param_count: the parameters alone) */
    float *buffer_block;        /* BUFFER params (BN running statistics), forward order */
    size_t n_buffer_floats;     /* padding included */

    int n_outputs;
    camo_output outputs[CAMO_MAX_OUTPUTS];

    /* named groups of layer-name prefixes (for freezing) */
    int n_groups;
    char group_name[16][32];
    char *group_prefixes[16];   /* comma-separated prefixes */

    /* geometry the activations are allocated for: N = max(N_train, N_eval) images (layer
     * scratch, the input); training batches up to N_train, evaluation batches (forward
     * only, their own plan: camo_net_set_eval_size) up to N_eval (0 = none) */
    int N, H, W;
    int N_train, N_eval;
    float *input;               /* (N, H, W, input_channels), backend memory */
    int training;
    int want_input_grad;        /* tests: compute the input image's gradient */
    float *dinput;              /* (N, H, W, input_channels) */

    /* Randomness of training-only layers (drop_path), set by the trainer before each
     * training forward. A layer's draw for image i depends only on (rng_seed, rng_step,
     * rng_sample0 + i) and the layer's name, never on a replica's or thread's state, as
     * augmentation's does (DESIGN.md item 3): resume and every replica count give the same
     * numbers. All 0 (tests, evaluation) is a valid fixed draw. */
    uint64_t rng_seed;          /* the run's seed */
    int64_t rng_step;           /* optimizer steps taken before the one being computed */
    int64_t rng_sample0;        /* index of image 0 of this forward among the step's images:
                                   micro-batch index in the step * global batch + the
                                   replica's slice offset */

    /* sync-BN (parallel.sync_bn): sums `n` floats across replicas in place and, when
     * count != NULL, the row count too. NULL = each replica its own statistics. */
    void (*bn_sync)(void *ctx, float *data, size_t n, double *count);
    void *bn_sync_ctx;

    /* Called by camo_net_backward after layer `layer` (which owns parameters) is done:
     * the gradients of its parameters, and of every later layer's, are final. DDP uses it
     * to launch bucket all-reduces while backward goes on. NULL = no hook. */
    void (*on_layer_grads)(void *ctx, int layer);
    void *on_layer_grads_ctx;

    /* Activations and their gradients: one arena, shared by tensors whose lives do not
     * overlap (net_plan.h). lean: batch norms and activations are recomputed in backward
     * instead of kept (train.memory = "lean"). poison: every tensor is filled with NaN when
     * its life ends, so a read after that shows (CAMO_POISON=1, tests). */
    camo_plan *plan;            /* training: forward and backward */
    camo_plan *plan_eval;       /* evaluation: forward only (NULL until set_eval_size) */
    int eval_active;            /* the layers' pointers follow plan_eval */
    float *arena;
    int lean, poison;
    char *checkpoint_blocks;    /* network file's checkpoint_blocks patterns, comma-joined */
    int checkpointing;          /* train.checkpointing: those blocks are recomputed */
    int plan_plain;             /* CAMO_PLAN=plain: every tensor its own memory (reference) */

    /* bytes requested through layer_alloc so far (never decreased: differences measure),
     * and what camo_net_set_input_size allocated for the current N (camo_net_memory) */
    size_t alloc_bytes;
    size_t mem_arena, mem_scratch;
} camo_net;

/* Parse a network file. NULL on error; camo_last_error() names the file, line and layer.
 * `classes_override` > 0 replaces the file's `classes`. */
camo_net *camo_net_load(const char *path, camo_backend *be, int classes_override);
/* Same from a libconfig setting (a training config's inline `model` group or a root). */
struct config_setting_t;
camo_net *camo_net_from_setting(const struct config_setting_t *root, const char *source,
                                camo_backend *be, int classes_override);
void camo_net_free(camo_net *net);

/* Shape inference and activation allocation for batches of up to N images of H x W.
 * Returns 0, or non-zero with an error naming the layer on a shape mismatch. */
int camo_net_set_input_size(camo_net *net, int N, int H, int W);
/* Room for evaluation batches of up to B images of H x W besides the training batch:
 * forward-only (training = 0) batches of up to B images then use their own plan, in which
 * an output lives only until its last reader, in the same arena (max of the two plans).
 * Another H x W re-sizes the training batch too; on a net without buffers yet, there is
 * no room for training (N_train = 0). 0, or -1 + error. */
int camo_net_set_eval_size(camo_net *net, int B, int H, int W);
/* Keep layer i's output valid after forward and backward (it is otherwise reused once its
 * readers are done): for tests and tools that read inner layers. Re-plans the arena. */
int camo_net_keep_layer(camo_net *net, int i);
/* Memory mode: lean = 1 recomputes batch norms and activations in backward. Re-plans. */
int camo_net_set_lean(camo_net *net, int lean);
/* Gradient checkpointing: every layer of the blocks the network file's checkpoint_blocks
 * patterns name (a pattern matches whole name components, each with * and ?: "layer*.*"
 * is torchvision's layer1.0 ... layer4.2) keeps its output through forward only and is
 * recomputed in backward, except each block's last layer (its output). The gradients are
 * the same bits. Returns the number of blocks, or -1 + error (on = 1 and no pattern). */
int camo_net_set_checkpointing(camo_net *net, int on);

/* Initialise weights like PyTorch's defaults (kaiming-uniform convs, BN 1/0), from seed. */
void camo_net_init_weights(camo_net *net, uint64_t seed);

/* Forward pass on net->input for n <= N images. training: BN uses batch statistics and
 * updates running stats. */
void camo_net_forward(camo_net *net, int n, int training);
/* Zero the gradients the loss writes into (the outputs') and the input image's; the
 * others are zeroed by backward when their life begins (parameter gradients are NOT
 * touched: they accumulate across micro-batches until camo_net_zero_param_grads). */
void camo_net_zero_act_grads(camo_net *net);
void camo_net_zero_param_grads(camo_net *net);
/* Backward pass: reads the gradients of the outputs (camo_net_output_grad) and accumulates
 * parameter gradients. */
void camo_net_backward(camo_net *net, int n);

/* Output i (after forward): (n, H, W, C) in backend memory; shape through out-params. */
float *camo_net_output(camo_net *net, int i, int *H, int *W, int *C);
float *camo_net_output_grad(camo_net *net, int i);
/* Gradient of the input image (for tests). */
float *camo_net_input_grad(camo_net *net);

/* Find a parameter (or buffer/counter) by PyTorch name; NULL if absent. */
camo_param *camo_net_find_param(camo_net *net, const char *name);
/* Copy a parameter to/from host memory in PyTorch layout and element order. */
void camo_param_get(camo_net *net, const camo_param *p, float *host_torch_layout);
void camo_param_set(camo_net *net, camo_param *p, const float *host_torch_layout);
void camo_param_grad_get(camo_net *net, const camo_param *p, float *host_torch_layout);
/* The same for any block laid out like the weights (optimizer slots, EMA): `dev` is the
 * parameter's slice of that block. */
void camo_param_read(camo_net *net, const camo_param *p, const float *dev, float *host);
void camo_param_write(camo_net *net, const camo_param *p, float *dev, const float *host);

/* A shape as PyTorch prints it, "[64, 3, 7, 7]", cut to fit n bytes (messages). */
void camo_shape_str(char *buf, size_t n, int ndim, const int64_t *shape);

size_t camo_net_param_count(const camo_net *net);   /* trainable values */
double camo_net_forward_flops(const camo_net *net); /* per image at the current H x W */
/* Table of layers, output shapes, parameters and FLOPs. */
void camo_net_summary(const camo_net *net, FILE *out);

/* Backend memory of a network, in bytes requested (what camo_net_set_input_size and the
 * parameter blocks allocate; backend-internal workspaces such as cuDNN's not included). */
typedef struct camo_net_mem {
    size_t weights, grads, buffers;    /* parameter blocks, alignment padding included */
    size_t input_img;                  /* per image: the input image and its gradient */
    size_t arena_img;                  /* per image: the planned arena of activations and
                                          activation gradients (net_plan.h) */
    size_t kept_img, grad_peak_img;    /* of which alive at the loss; gradients' peak */
    size_t plain_img;                  /* what every tensor in its own buffer would take */
    size_t eval_arena_img;             /* per image: the evaluation (forward-only) plan's */
    size_t scratch_img, scratch_fixed; /* layer scratch: per image (max-pool indices, LN
                                          statistics), fixed (BN statistics) */
} camo_net_mem;
/* Measures at 1 and 2 images of the current H x W (every allocation is linear in the
 * image count), then restores the current size: nothing is allocated at a large batch.
 * 0, or -1 + error. */
int camo_net_memory(camo_net *net, camo_net_mem *m);
static inline size_t camo_net_mem_per_image(const camo_net_mem *m) {
    return m->input_img + m->arena_img + m->scratch_img;
}

#endif
