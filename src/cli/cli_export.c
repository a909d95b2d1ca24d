/* cli_export.c: `camotrain export`: a checkpoint's network as an ONNX model (EMA weights
 * when it has them), written by nn/onnx_export.c (docs/export.md); and the .npy writer of
 * predict's --dump-logits, which tools/onnx_check.py compares onnxruntime against. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "core/common.h"
#include "core/fs.h"
#include "core/safetensors.h"
#include "nn/checkpoint.h"
#include "nn/net_build.h"
#include "nn/onnx_export.h"
#include "train/config.h"

#define SIZE_MAX_SIDE 65536

typedef struct {
    const char *ckpt, *onnx;
    int H, W;                 /* 0: the checkpoint's data.img_size */
    int opset, dynamic_batch, all_outputs, no_ema;
} export_args;

static void export_usage(FILE *f) {
    fprintf(f,
            "usage: camotrain export --ckpt C --onnx FILE [--size H W] [--dynamic-batch] "
            "[--opset N] [--all-outputs] [--no-ema]\n"
            "  writes the checkpoint's network as an ONNX model (EMA weights when it has\n"
            "  them; --no-ema: the trained ones). Input `input` (N, 3, H, W): the image as\n"
            "  predict feeds it (RGB resized to H x W, ImageNet mean/std). Outputs (N, classes,\n"
            "  H, W): logits, before sigmoid/softmax; the main output, or every one with\n"
            "  --all-outputs. --size: default the checkpoint's data.img_size;\n"
            "  --dynamic-batch: N symbolic (else 1); --opset: %d..%d (default %d)\n",
            CAMO_ONNX_OPSET_MIN, CAMO_ONNX_OPSET_MAX, CAMO_ONNX_OPSET_DEFAULT);
}

/* A whole decimal integer in [lo, hi]; 0, or -1. */
static int parse_int(const char *s, int lo, int hi, int *out) {
    char *end;
    long v = strtol(s, &end, 10);
    if (!*s || *end || v < lo || v > hi) return -1;
    *out = (int)v;
    return 0;
}

static int parse(int argc, char **argv, export_args *a) {
    for (int i = 0; i < argc; i++) {
        const char *f = argv[i];
        int left = argc - 1 - i;
        if (!strcmp(f, "--ckpt") || !strcmp(f, "--onnx")) {
            if (left < 1) { fprintf(stderr, "camotrain export: %s needs a value\n", f); return -1; }
            *(!strcmp(f, "--ckpt") ? &a->ckpt : &a->onnx) = argv[++i];
        } else if (!strcmp(f, "--size")) {
            if (left < 2 || parse_int(argv[i + 1], 1, SIZE_MAX_SIDE, &a->H) ||
                parse_int(argv[i + 2], 1, SIZE_MAX_SIDE, &a->W)) {
                fprintf(stderr, "camotrain export: --size needs two integers H W in [1, %d]\n",
                        SIZE_MAX_SIDE);
                return -1;
            }
            i += 2;
        } else if (!strcmp(f, "--opset")) {
            if (left < 1 || parse_int(argv[i + 1], CAMO_ONNX_OPSET_MIN, CAMO_ONNX_OPSET_MAX,
                                      &a->opset)) {
                fprintf(stderr, "camotrain export: --opset needs an integer in [%d, %d]\n",
                        CAMO_ONNX_OPSET_MIN, CAMO_ONNX_OPSET_MAX);
                return -1;
            }
            i++;
        } else if (!strcmp(f, "--dynamic-batch")) a->dynamic_batch = 1;
        else if (!strcmp(f, "--all-outputs")) a->all_outputs = 1;
        else if (!strcmp(f, "--no-ema")) a->no_ema = 1;
        else if (!strcmp(f, "--help") || !strcmp(f, "-h")) { export_usage(stdout); return 1; }
        else { fprintf(stderr, "camotrain export: unknown option '%s'\n", f); return -1; }
    }
    return 0;
}

/* The side predict uses: the checkpoint config's data.img_size. 0, or -1 + error. */
static int config_size(const camo_ckpt *ck, const char *path, int *S) {
    camo_config c;
    int rc = camo_config_load(&c, path, ck->config_text, NULL, 0);
    if (rc == 0) *S = c.data.aug.size;
    camo_config_free(&c);
    return rc;
}

/* Shape inference at H x W; the error names the size and the layer that refused it. */
static int set_size(camo_net *net, int H, int W) {
    if (camo_net_set_input_size(net, 1, H, W) == 0) return 0;
    char why[900];
    snprintf(why, sizeof why, "%s", camo_last_error());
    CAMO_ERR("--size %d %d does not fit network '%s': %s", H, W, net->name, why);
    return -1;
}

static void print_done(camo_net *net, const export_args *a, int ema,
                       const camo_onnx_stats *st) {
    printf("export: %s (%s weights), input [%s, %d, %d, %d], opset %d:", net->name,
           ema ? "EMA" : "trained", a->dynamic_batch ? "N" : "1", net->input_channels, net->H,
           net->W, a->opset ? a->opset : CAMO_ONNX_OPSET_DEFAULT);
    for (int k = 0; k < st->outputs; k++) {
        int H, W, C;
        camo_net_output(net, k, &H, &W, &C);
        printf("%s %s [%s, %d, %d, %d]", k ? "," : " output", net->outputs[k].name,
               a->dynamic_batch ? "N" : "1", C, H, W);
    }
    printf("; %d nodes, %d initializers, %.1f MB -> %s\n", st->nodes, st->initializers,
           st->bytes / 1e6, a->onnx);
}

static int export_checkpoint(const export_args *a, camo_backend *be) {
    camo_ckpt *ck = camo_ckpt_open(a->ckpt);
    if (!ck) return CAMO_ERR_INPUT;
    int rc = CAMO_ERR_INPUT, H = a->H, W = a->W;
    const char *e = camo_st_meta(ck->file, "ema");
    int ema = !a->no_ema && e && !strcmp(e, "1");
    camo_net *net = NULL;
    if (H || config_size(ck, a->ckpt, &H) == 0) {
        if (!W) W = H;
        net = camo_net_build_from_text(ck->network_text, a->ckpt, be);
    }
    if (net && camo_ckpt_load_weights(ck, net, !a->no_ema) == 0 && set_size(net, H, W) == 0) {
        char doc[CAMO_PATH_MAX + 512];
        snprintf(doc, sizeof doc,
                 "camotrain export of %s (%s weights). Input: RGB resized to %dx%d, scaled "
                 "to [0, 1], normalised with the ImageNet mean and std. Outputs: logits "
                 "(sigmoid: probability of 1 class; argmax over channels: K classes).",
                 a->ckpt, ema ? "EMA" : "trained", H, W);
        camo_onnx_opts o = {.opset = a->opset, .dynamic_batch = a->dynamic_batch,
                            .all_outputs = a->all_outputs, .doc = doc};
        camo_onnx_stats st;
        rc = camo_onnx_export(net, a->onnx, &o, &st);
        if (rc == 0) print_done(net, a, ema, &st);
    }
    camo_net_free(net);
    camo_ckpt_close(ck);
    return rc;
}

int cli_export(int argc, char **argv) {
    export_args a;
    memset(&a, 0, sizeof a);
    int prc = parse(argc, argv, &a); /* 1: --help printed */
    if (prc) return prc > 0 ? CAMO_OK : CAMO_ERR_INPUT;
    if (!a.ckpt || !a.onnx) {
        export_usage(stderr);
        return CAMO_ERR_INPUT;
    }
    if (camo_is_dir(a.onnx)) {
        fprintf(stderr, "camotrain: error: --onnx '%s' is a folder, not a file name\n", a.onnx);
        return CAMO_ERR_INPUT;
    }
    int rc = CAMO_ERR_INPUT;
    if (!camo_onnx_available()) {
        camo_onnx_export(NULL, a.onnx, NULL, NULL); /* sets the error: what to install */
    } else {
        camo_backend *be = camo_backend_cpu_create(1);
        rc = export_checkpoint(&a, be);
        be->destroy(be);
    }
    if (rc) fprintf(stderr, "camotrain: error: %s\n", camo_last_error());
    return rc;
}

/* ---- .npy files (NumPy format 1.0) ---- */

int cli_write_npy_nchw(const char *path, const float *nhwc, int N, int H, int W, int C) {
    char hdr[192];
    int n = snprintf(hdr, sizeof hdr, "{'descr': '<f4', 'fortran_order': False, "
                                      "'shape': (%d, %d, %d, %d), }", N, C, H, W);
    int len = (10 + n + 1 + 63) / 64 * 64 - 10; /* header padded so the data is aligned */
    memset(hdr + n, ' ', (size_t)(len - n - 1));
    hdr[len - 1] = '\n';
    uint8_t pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (uint8_t)len, (uint8_t)(len >> 8)};
    FILE *fp = fopen(path, "wb");
    int ok = fp && fwrite(pre, 1, 10, fp) == 10 && fwrite(hdr, 1, (size_t)len, fp) == (size_t)len;
    for (int b = 0; ok && b < N; b++)
        for (int c = 0; ok && c < C; c++)
            for (size_t i = 0; ok && i < (size_t)H * W; i++) {
                uint32_t u;
                memcpy(&u, &nhwc[((size_t)b * H * W + i) * C + c], 4);
                uint8_t le[4] = {(uint8_t)u, (uint8_t)(u >> 8), (uint8_t)(u >> 16),
                                 (uint8_t)(u >> 24)};
                ok = fwrite(le, 1, 4, fp) == 4;
            }
    if (fp && fclose(fp) != 0) ok = 0;
    if (!ok) CAMO_ERR("cannot write '%s'", path);
    return ok ? 0 : -1;
}
