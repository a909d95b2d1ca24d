/* cli_synth.c: `camotrain synth`: the command line (arguments, help, summary line) of the
 * synthetic data set generator (data/synth.h). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "core/common.h"
#include "data/synth.h"

typedef struct {
    const char *out;
    camo_synth s;
} synth_args;

static void usage(FILE *f) {
    fputs("usage: camotrain synth --out DIR [--train N] [--test N] [--size S] [--seed K]\n"
          "                       [--difficulty D] [--classes K]\n"
          "  writes DIR/{Train,Test}/Image/synth_NNNNN.jpg + GT_Object/synth_NNNNN.png\n"
          "  defaults: --train 600 --test 100 --size 128 --seed 0 --difficulty 0.5 (0 easy,\n"
          "  1 very hard) --classes 1 (binary 0/255 masks; K > 1: class-index masks 0..K-1)\n", f);
}

static int parse_long(const char *flag, const char *v, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long x = v ? strtol(v, &end, 10) : 0;
    if (!v || !*v || *end || errno || x < lo || x > hi) {
        fprintf(stderr, "camotrain synth: %s: expected an integer in [%ld, %ld], got '%s'\n", flag,
                lo, hi, v ? v : "(nothing)");
        return -1;
    }
    *out = x;
    return 0;
}

static int parse_option(synth_args *a, const char *flag, const char *v) {
    long x = 0;
    int rc = 0;
    if (!strcmp(flag, "--out")) {
        if (!v || !*v) {
            fprintf(stderr, "camotrain synth: --out: expected a folder\n");
            return -1;
        }
        a->out = v;
    } else if (!strcmp(flag, "--train")) {
        if (!(rc = parse_long(flag, v, 0, 10000000, &x))) a->s.train = (int)x;
    } else if (!strcmp(flag, "--test")) {
        if (!(rc = parse_long(flag, v, 0, 10000000, &x))) a->s.test = (int)x;
    } else if (!strcmp(flag, "--size")) {
        if (!(rc = parse_long(flag, v, 16, 8192, &x))) a->s.size = (int)x;
    } else if (!strcmp(flag, "--classes")) {
        if (!(rc = parse_long(flag, v, 1, 256, &x))) a->s.classes = (int)x;
    } else if (!strcmp(flag, "--seed")) {
        char *end;
        errno = 0;
        a->s.seed = v ? strtoull(v, &end, 10) : 0;
        if (!v || !*v || *end || errno || *v == '-') {
            fprintf(stderr, "camotrain synth: --seed: expected a non-negative integer, got '%s'\n",
                    v ? v : "(nothing)");
            return -1;
        }
    } else if (!strcmp(flag, "--difficulty")) {
        char *end;
        a->s.difficulty = v ? strtod(v, &end) : -1;
        if (!v || !*v || *end || !(a->s.difficulty >= 0 && a->s.difficulty <= 1)) {
            fprintf(stderr,
                    "camotrain synth: --difficulty: expected a number in [0, 1], got '%s'\n",
                    v ? v : "(nothing)");
            return -1;
        }
    } else {
        fprintf(stderr, "camotrain synth: unknown argument '%s' (try --help)\n", flag);
        return -1;
    }
    return rc;
}

/* 0 ok, 1 help printed, -1 bad arguments (message printed). */
static int parse_args(int argc, char **argv, synth_args *a) {
    *a = (synth_args){.s = CAMO_SYNTH_DEFAULTS};
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) { usage(stdout); return 1; }
        if (parse_option(a, argv[i], i + 1 < argc ? argv[i + 1] : NULL)) return -1;
        i++;
    }
    if (!a->out) {
        fprintf(stderr, "camotrain synth: --out DIR is required\n");
        usage(stderr);
        return -1;
    }
    return 0;
}

int cli_synth(int argc, char **argv) {
    synth_args a;
    int p = parse_args(argc, argv, &a);
    if (p) return p > 0 ? CAMO_OK : CAMO_ERR_INPUT;
    const camo_synth *s = &a.s;
    double t0 = camo_now();
    if (camo_synth_write(s, a.out)) {
        fprintf(stderr, "camotrain synth: %s\n", camo_last_error());
        return CAMO_ERR_RUNTIME;
    }
    printf(
        "synth: %d train + %d test images of %dx%d (difficulty %.2f, seed %llu, %d class%s) in %s "
        "(%.1f s)\n",
        s->train, s->test, s->size, s->size, s->difficulty, (unsigned long long)s->seed,
        s->classes, s->classes > 1 ? "es" : "", a.out, camo_now() - t0);
    return CAMO_OK;
}
