/* cli.h: subcommands of the camotrain binary. Each takes the arguments after its name and
 * returns the process exit code (0 ok, 1 runtime failure, 2 usage/config/input error). */
#ifndef CAMO_CLI_H
#define CAMO_CLI_H

int cli_train(int argc, char **argv);   /* cli_train.c (also --summary) */
int cli_eval(int argc, char **argv);    /* cli_eval.c */
int cli_predict(int argc, char **argv); /* cli_eval.c */
int cli_inspect(int argc, char **argv); /* cli_inspect.c */
int cli_synth(int argc, char **argv);   /* cli_synth.c */
int cli_plot(int argc, char **argv);    /* cli_plot.c */
int cli_profile(int argc, char **argv); /* cli_profile.c */
int cli_export(int argc, char **argv);  /* cli_export.c */

/* An (N, H, W, C) float tensor written as an (N, C, H, W) little-endian float32 .npy file
 * (predict --dump-logits). 0, or -1 + error. cli_export.c. */
int cli_write_npy_nchw(const char *path, const float *nhwc, int N, int H, int W, int C);

#endif
