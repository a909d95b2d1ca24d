/* onnx_export.h: a network as an ONNX model file (docs/export.md), written from C with
 * protobuf-c (the schema: src/nn/onnx.proto, compiled at build time). The graph takes and
 * gives NCHW tensors like PyTorch: input `input` (N, input_channels, H, W), the preprocessed
 * image; outputs named as the network's outputs, (N, C, h, w), the raw values of the output
 * layers (logits: what predict computes before sigmoid or softmax). Weights are
 * initializers named as their parameters (conv weights OIHW); BN running statistics are
 * exported, its counter is not. */
#ifndef CAMO_ONNX_EXPORT_H
#define CAMO_ONNX_EXPORT_H

#include <stddef.h>

#include "nn/net.h"

#define CAMO_ONNX_OPSET_MIN 13     /* Softmax over one axis, Resize with sizes, Split... */
#define CAMO_ONNX_OPSET_MAX 21
#define CAMO_ONNX_OPSET_DEFAULT 17 /* LayerNormalization */

typedef struct camo_onnx_opts {
    int opset;          /* CAMO_ONNX_OPSET_MIN..MAX; 0 = CAMO_ONNX_OPSET_DEFAULT */
    int dynamic_batch;  /* batch dimension "N" (symbolic) instead of 1 */
    int all_outputs;    /* every output of the network, else only the main (first) one */
    const char *doc;    /* the model's doc_string (where it came from, its input), or NULL */
} camo_onnx_opts;

/* What was written (may be NULL). */
typedef struct camo_onnx_stats {
    int nodes, initializers, outputs;
    size_t bytes;
} camo_onnx_stats;

/* 1 when this build can write ONNX (protobuf-c was found at build time). */
int camo_onnx_available(void);

/* Writes net at its current input size (camo_net_set_input_size: H, W; weights as they
 * are now) to `path` atomically: a temporary file beside it, synced, renamed over path; on
 * any failure the temporary file is removed and an existing file at path is left as it
 * was. Layers no exported output depends on are left out. Returns 0; CAMO_ERR_INPUT with
 * an error naming the layer (file:line, name, type) for a layer that cannot be exported,
 * for an opset out of range, or when the file cannot be created; CAMO_ERR_RUNTIME when
 * writing fails. */
int camo_onnx_export(camo_net *net, const char *path, const camo_onnx_opts *opts,
                     camo_onnx_stats *stats);

#endif
