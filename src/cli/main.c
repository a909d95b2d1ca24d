/* main.c: the camotrain command line: dispatches to the subcommands. */
#include <stdio.h>
#include <string.h>

#include "backend/backend.h"
#include "cli/cli.h"
#include "core/common.h"

static void usage(FILE *out) {
    fputs(
        "camotrain: train image-segmentation networks on every GPU (or CPU core) of a machine\n"
        "\n"
        "usage:\n"
        "  camotrain [train] --conf X.cfg [options]   train (the default command)\n"
        "  camotrain --conf X.cfg --summary           layers, shapes, parameters, FLOPs, memory\n"
        "  camotrain --resume RUN/last.ckpt [options] continue a run exactly\n"
        "  camotrain eval --ckpt C [--data DIR] [--json]\n"
        "  camotrain eval --pred DIR --gt DIR [--json]\n"
        "  camotrain predict --ckpt C --input DIR --output DIR\n"
        "  camotrain export --ckpt C --onnx FILE [--size H W] [--dynamic-batch] [--opset N]\n"
        "                   [--all-outputs]       the network as an ONNX model (onnxruntime)\n"
        "  camotrain inspect C                        tensors, shapes and metadata of a checkpoint\n"
        "  camotrain synth --out DIR [options]        synthetic camouflage data set (COD10K layout)\n"
        "  camotrain plot RUN [RUN...] [-o FILE.png]  loss, lr, validation curves of runs (gnuplot)\n"
        "  camotrain profile --conf X.cfg [options]   img/s and peak memory per batch size\n"
        "  camotrain inspect --events FILE            check and list a TensorBoard events file\n"
        "\n"
        "train options (each also a config key; the flag wins):\n"
        "  --conf FILE          training config (conf/*.cfg) or a network file (conf/models/*.cfg)\n"
        "  --set key=value      override any config key by its dotted path (repeatable)\n"
        "  --model NAME         the network conf/models/NAME.cfg, or a network file (model)\n"
        "  --devices LIST       auto | cpu | cpu:N | 0,1 | 0,0          (parallel.devices)\n"
        "  --parallel MODE      ddp | dp                                  (parallel.mode)\n"
        "  --out DIR            run folder: log, metrics.jsonl, last.ckpt, best.ckpt (out)\n"
        "  --summary            print the network table and the memory of a step, and exit\n"
        "  --quiet              only warnings and the final summary\n"
        "  --help               this text\n"
        "\n"
        "exit codes: 0 ok, 1 runtime failure, 2 usage/config/input error\n",
        out);
}

int main(int argc, char **argv) {
    camo_cpu_env_reexec(argv); /* OpenMP/OpenBLAS settings that must precede their loading */
    if (argc < 2) { usage(stderr); return CAMO_ERR_INPUT; }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
        usage(stdout);
        return CAMO_OK;
    }
    if (!strcmp(cmd, "train")) return cli_train(argc - 2, argv + 2);
    if (!strcmp(cmd, "eval")) return cli_eval(argc - 2, argv + 2);
    if (!strcmp(cmd, "predict")) return cli_predict(argc - 2, argv + 2);
    if (!strcmp(cmd, "inspect")) return cli_inspect(argc - 2, argv + 2);
    if (!strcmp(cmd, "synth")) return cli_synth(argc - 2, argv + 2);
    if (!strcmp(cmd, "plot")) return cli_plot(argc - 2, argv + 2);
    if (!strcmp(cmd, "profile")) return cli_profile(argc - 2, argv + 2);
    if (!strcmp(cmd, "export")) return cli_export(argc - 2, argv + 2);
    if (cmd[0] == '-') return cli_train(argc - 1, argv + 1);
    fprintf(stderr, "camotrain: unknown command '%s' (try --help)\n", cmd);
    return CAMO_ERR_INPUT;
}
