/* pretrained.h: pretrained weights (init.weights): a safetensors state dict from PyTorch
 * (torchvision, timm, Hugging Face; tools/convert_weights.py turns .pth/.bin into one) loaded
 * into a network BY NAME before training. docs/models.md "Pretrained weights". */
#ifndef CAMO_PRETRAINED_H
#define CAMO_PRETRAINED_H

#include "nn/net.h"

#define CAMO_PRETRAINED_LIST 6    /* names a report lists of each kind, then "(+N more)" */

/* What a load found. Names are the network's (the file's with the prefix removed). */
typedef struct camo_pretrained_report {
    char path[1024], prefix[128];
    int file_tensors;       /* tensors in the file */
    int outside_prefix;     /* not starting with the prefix: not considered */
    int network_tensors;    /* parameters + buffers of the network (counters excluded) */
    int matched;            /* loaded into a parameter or buffer */
    int converted;          /* of those, F16/BF16 converted to F32 */
    int ignored;            /* integer tensors and BN counters (num_batches_tracked) */
    int n_missing;          /* network tensors the file lacks: left as initialised */
    int n_unexpected;       /* float tensors the network lacks: not used */
    char missing[CAMO_PRETRAINED_LIST * (CAMO_NAME_MAX + 32) + 32];    /* first names, ", " */
    char unexpected[CAMO_PRETRAINED_LIST * (CAMO_NAME_MAX + 32) + 32];
} camo_pretrained_report;

/* Loads the tensors of `path` whose names start with `prefix` ("" or NULL: all), the prefix
 * removed, into net's parameters and buffers of the same names, converting PyTorch layouts
 * (conv weights OIHW -> OHWI) and F16/BF16 to F32; integer tensors (num_batches_tracked) are
 * ignored. Everything is checked before anything is written: a shape mismatch, a dtype that
 * cannot be converted, no tensor matching at all, or with `strict` any missing or unexpected
 * tensor, is an error naming the file and the tensor(s), and leaves net unchanged.
 * 0, or -1 + error (camo_last_error). rep (may be NULL) receives what was found. */
int camo_net_load_pretrained(camo_net *net, const char *path, const char *prefix, int strict,
                             camo_pretrained_report *rep);

/* Three camo_info lines: "init.weights: matched ...", "... missing ...", "... unexpected ...". */
void camo_pretrained_print(const camo_pretrained_report *rep, const char *net_name);

#endif
