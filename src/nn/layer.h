/* layer.h: primitive layers of a network (internal). A config layer such as `conv` with
 * bn and act, or `resblock`, expands into several of these (net_parse.c).
 * Adding a primitive type is one line in CAMO_LAYER_TYPES plus its file, layer_<family>.c,
 * which defines <name>_layer_ops: the line makes the enum value, the entry of
 * camo_layer_table and the name the summary prints. A config file can name it once
 * net_parse.c's config_types has a line for it (and its reader), see docs/models.md. */
#ifndef CAMO_LAYER_H
#define CAMO_LAYER_H

#include "nn/net.h"

/* X(ENUM, name): CAMO_LAYER_<ENUM>, ops <name>_layer_ops, shown as "<name>" */
#define CAMO_LAYER_TYPES(X)                                                              \
    X(CONV2D, conv2d)                     /* layer_conv.c */                             \
    X(BATCHNORM, batchnorm)               /* layer_norm.c */                             \
    X(LAYERNORM, layernorm)               /* layer_norm.c */                             \
    X(ACTIVATION, activation)             /* layer_activation.c */                       \
    X(POOL, pool)                         /* layer_pool.c */                             \
    X(ADAPTIVE_AVGPOOL, adaptive_avgpool) /* layer_pool.c */                             \
    X(RESIZE, resize)                     /* layer_resize.c */                           \
    X(CONCAT, concat)                     /* layer_merge.c */                            \
    X(ADD, add)                           /* layer_merge.c */                            \
    X(MUL, mul)                           /* layer_merge.c */                            \
    X(SOFTMAX, softmax)                   /* layer_activation.c */                       \
    X(ATTENTION, attention)               /* layer_attention.c */                        \
    X(XCA, xca)                           /* layer_attention.c */                        \
    X(LAYER_SCALE, layer_scale)           /* layer_residual.c */                         \
    X(DROP_PATH, drop_path)               /* layer_residual.c */                         \
    X(SLICE, slice)                       /* layer_slice.c */                            \
    X(FOURIER_POS, fourier_pos)           /* layer_posenc.c */                           \
    X(MOE_ROUTER, moe_router)             /* layer_moe.c */                              \
    X(MOE_DISPATCH, moe_dispatch)         /* layer_moe.c */                              \
    X(MOE_COMBINE, moe_combine)           /* layer_moe.c */                              \

typedef enum {
#define X(id, fn) CAMO_LAYER_##id,
    CAMO_LAYER_TYPES(X)
#undef X
    CAMO_LAYER_COUNT
} camo_layer_type;

typedef enum { RESIZE_SCALE, RESIZE_SIZE, RESIZE_LIKE } camo_resize_mode;

struct camo_layer {
    camo_layer_type type;
    char name[CAMO_NAME_MAX];
    char where[160];              /* "file:line" of the config entry, for messages */
    int n_in;
    int in[CAMO_MAX_INPUTS];      /* producing layer index; -1 = the network input */
    int H, W, C;                  /* output shape of one image */
    float *out, *dout;            /* (N, H, W, C) backend memory */
    int param0, n_params;         /* this layer's parameters: net->params[param0 ...] */
    int requires_grad;            /* set each backward: something upstream is trained */
    int rows_from;                /* 0: runs on the forward's n images; k > 0: on the
                                     routed_rows images that layer k-1 (a mixture-of-experts
                                     dispatch) gathered to the front of its output */
    int routed_rows;              /* MoE dispatch layers: images routed by the last forward */
    int keep;                     /* the output stays valid to the end of the step (network
                                     outputs; tests and tools that read a layer's output) */
    int recompute;                /* gradient checkpointing: backward regenerates the output */
    union {
        struct { camo_conv_desc d; int has_bias; } conv;
        struct {
            float eps, momentum;
            int64_t num_batches;
            float *mean, *invstd;  /* (C) batch (train) or running (eval) statistics */
            float *stats;          /* (2C) sums; for sync-BN all-reduced between the ops */
            double count;          /* rows the statistics were taken over */
            int eval_stats;        /* last forward used running statistics */
        } bn;
        struct { float eps; float *mean, *rstd, *dscratch; } ln;
        struct { camo_act act; float alpha; } act;
        struct { camo_pool_desc d; int *argmax; } pool;
        struct { int P, Q; } adaptive;
        struct {
            camo_resize_mode mode;
            float scale;           /* RESIZE_SCALE */
            int P, Q;              /* RESIZE_SIZE */
            int like;              /* RESIZE_LIKE: layer index, -1 = input */
            int align_corners;
        } resize;
        struct { camo_bcast mode; } mul;
        struct { int heads; float *P, *work; } attn; /* P: (N, heads, L, S) probabilities */
        struct { float init; } scale;  /* layer_scale: gamma's initial value */
        struct {
            int heads;
            float *P, *G;          /* (N, heads, D, D): probabilities, cosines */
            float *rq, *rk;        /* (N, C) inverse norms of q and k over the tokens */
            float *work, *dscratch; /* backward scratch; dtemp sink of a frozen temperature */
        } xca;
        struct { float p; float *keep; } drop; /* keep: host (N), the last forward's factors */
        struct { int c0; } slice;          /* first input channel taken */
        struct { float temperature; float *table; } fourier; /* table: (H, W, C), backend */
        struct {                   /* mixture of experts (layer_moe.c, moe.h) */
            int experts, top_k;    /* K experts, k of them per image */
            int router;            /* dispatch, combine: the router's layer index */
            int expert;            /* dispatch: its expert */
            float balance_weight;  /* router: weight of the load-balancing loss */
            int *idx;              /* dispatch: backend (N) images of its expert */
            struct camo_moe_state *st; /* host: routing, statistics (layer_moe.c) */
        } moe;
    } u;
};

/* Per-type functions. infer: set H, W from the inputs' sizes (channels were set at parse
 * time) and validate; allocate type-specific scratch for N images. forward/backward work
 * on the first n images. backward accumulates into the inputs' dout when they need it. */
typedef struct camo_layer_ops {
    int (*infer)(camo_net *net, camo_layer *l);
    void (*forward)(camo_net *net, camo_layer *l, int n, int training);
    void (*backward)(camo_net *net, camo_layer *l, int n);
    double (*flops)(const camo_net *net, const camo_layer *l); /* per image */
    void (*release)(camo_net *net, camo_layer *l);             /* free scratch (may be NULL) */
    /* What backward reads of the forward's values (net_plan.c frees the rest early): bit k
     * = input k, LAYER_SAVES_OUTPUT = the layer's own output. NULL = everything. */
    unsigned (*saves)(const camo_net *net, const camo_layer *l);
    int in_place;     /* forward may write its output over input 0 (elementwise, same size) */
    int recomputable; /* forward with training == CAMO_FWD_RECOMPUTE regenerates the output
                         bit for bit and changes nothing else (statistics, collectives) */
} camo_layer_ops;

#define LAYER_SAVES_OUTPUT (1u << 31)
#define LAYER_SAVES_ALL (~0u)
#define LAYER_SAVES_INPUT(k) (1u << (k))

#define X(id, fn) extern const camo_layer_ops fn##_layer_ops;
CAMO_LAYER_TYPES(X)
#undef X
extern const camo_layer_ops *const camo_layer_table[CAMO_LAYER_COUNT];
extern const char *const camo_layer_names[CAMO_LAYER_COUNT];

/* Helpers shared by the layer files (net.c). */
static inline size_t layer_numel(const camo_layer *l, int n) {
    return (size_t)n * l->H * l->W * l->C;
}
const camo_layer *layer_input_layer(const camo_net *net, const camo_layer *l, int k);
void layer_input_shape(const camo_net *net, const camo_layer *l, int k, int *H, int *W, int *C);
float *layer_input(camo_net *net, const camo_layer *l, int k);
/* The gradient buffer of input k, or NULL when nothing upstream of it is trained. */
float *layer_input_grad(camo_net *net, const camo_layer *l, int k);
/* The gradient buffer of input k even when nothing reads it (a sink for fused ops). */
float *layer_input_grad_raw(camo_net *net, const camo_layer *l, int k);
camo_param *layer_param(camo_net *net, const camo_layer *l, int i);
/* Parameter gradient pointer, or NULL when the parameter is frozen. */
float *layer_param_grad(camo_net *net, const camo_layer *l, int i);
/* Allocate/free backend scratch; errors are fatal (out of memory at set-up). */
void *layer_alloc(camo_net *net, size_t bytes);
void layer_free(camo_net *net, void *p);
/* Frees scratch pointer p (any type) and clears it: what every release does. */
#define LAYER_DROP(net, p) (layer_free((net), (p)), (p) = NULL)
/* camo_layer_ops.saves for the common cases: nothing; input 0; every input */
unsigned layer_saves_nothing(const camo_net *net, const camo_layer *l);
unsigned layer_saves_input0(const camo_net *net, const camo_layer *l);
unsigned layer_saves_inputs(const camo_net *net, const camo_layer *l);
/* camo_layer_ops.infer of a layer whose output has its input 0's height and width (the
 * channels are the parser's): activations, softmax, slice, layer_scale */
int layer_infer_same_size(camo_net *net, camo_layer *l);
/* flops of one operation per output value (activations, softmax, concat, add, mul) */
double layer_elementwise_flops(const camo_net *net, const camo_layer *l);
/* infer's error when a descriptor (conv, pool) rejected the input: the descriptor's message
 * prefixed with the layer and its input size; returns -1. */
int layer_input_size_error(const camo_layer *l, int H, int W);

#endif
