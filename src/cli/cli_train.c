/* cli_train.c: `camotrain [train]`: flags -> config overrides, --summary, --resume. */
#include <stdio.h>
#include <string.h>

#include "nn/checkpoint.h"
#include "cli/cli.h"
#include "core/common.h"
#include "train/config.h"
#include "train/train.h"

#define MAX_SETS 256

typedef struct {
    const char *conf, *resume;
    int summary, quiet;
    char *sets[MAX_SETS];
    int n_sets;
    char flag_sets[8][CAMO_PATH_MAX + 32]; /* --devices etc. rendered as key=value */
} train_args;

static int add_set(train_args *a, const char *kv) {
    if (a->n_sets == MAX_SETS) { fprintf(stderr, "camotrain: too many --set options\n"); return -1; }
    a->sets[a->n_sets++] = (char *)kv;
    return 0;
}

static int flag_to_set(train_args *a, int *nf, const char *key, const char *value) {
    snprintf(a->flag_sets[*nf], sizeof a->flag_sets[0], "%s=%s", key, value);
    return add_set(a, a->flag_sets[(*nf)++]);
}

static int parse_args(int argc, char **argv, train_args *a) {
    int nf = 0;
    for (int i = 0; i < argc; i++) {
        const char *f = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        int takes = !strcmp(f, "--conf") || !strcmp(f, "--set") || !strcmp(f, "--devices") ||
                    !strcmp(f, "--parallel") || !strcmp(f, "--out") || !strcmp(f, "--resume");
        if (takes && !v) { fprintf(stderr, "camotrain: %s needs a value\n", f); return -1; }
        if (!strcmp(f, "--conf")) a->conf = v;
        else if (!strcmp(f, "--resume")) a->resume = v;
        else if (!strcmp(f, "--set")) { if (add_set(a, v)) return -1; }
        else if (!strcmp(f, "--devices")) { if (flag_to_set(a, &nf, "parallel.devices", v)) return -1; }
        else if (!strcmp(f, "--parallel")) { if (flag_to_set(a, &nf, "parallel.mode", v)) return -1; }
        else if (!strcmp(f, "--out")) { if (flag_to_set(a, &nf, "out", v)) return -1; }
        else if (!strcmp(f, "--summary")) a->summary = 1;
        else if (!strcmp(f, "--quiet")) a->quiet = 1;
        else { fprintf(stderr, "camotrain: unknown option '%s' (try --help)\n", f); return -1; }
        if (takes) i++;
    }
    if (!a->conf && !a->resume) {
        fprintf(stderr, "camotrain: give --conf FILE (or --resume CHECKPOINT); try --help\n");
        return -1;
    }
    if (a->conf && a->resume) {
        fprintf(stderr, "camotrain: --resume uses the config saved in the checkpoint; use --set "
                "to change keys instead of --conf\n");
        return -1;
    }
    return 0;
}

static int summary(camo_config *c) {
    camo_backend *be = camo_backend_cpu_create(1);
    camo_net_source src = camo_config_net_source(c);
    camo_net *net = camo_net_build(&src, be, NULL);
    int S = c->data.aug.size, rc = CAMO_ERR_INPUT;
    if (net && camo_net_set_input_size(net, 1, S, S) == 0) {
        camo_net_summary(net, stdout);
        rc = CAMO_OK;
    } else {
        fprintf(stderr, "camotrain: error: %s\n", camo_last_error());
    }
    camo_net_free(net);
    be->destroy(be);
    return rc;
}

int cli_train(int argc, char **argv) {
    train_args a;
    memset(&a, 0, sizeof a);
    if (parse_args(argc, argv, &a)) return CAMO_ERR_INPUT;
    camo_log_set_quiet(a.quiet);
    camo_config c;
    int rc;
    if (a.resume) {
        for (int i = 0; i < a.n_sets; i++) /* the network is the checkpoint's own */
            if (!strncmp(a.sets[i], "model", 5) || !strncmp(a.sets[i], "data.classes", 12)) {
                fprintf(stderr, "camotrain: error: --set %s: --resume continues the network "
                        "saved in %s; start a new run (--conf) for another one\n", a.sets[i],
                        a.resume);
                return CAMO_ERR_INPUT;
            }
        camo_ckpt *ck = camo_ckpt_open(a.resume);
        if (!ck) {
            fprintf(stderr, "camotrain: error: %s\n", camo_last_error());
            return CAMO_ERR_INPUT;
        }
        rc = camo_config_load(&c, a.resume, ck->config_text, a.sets, a.n_sets);
        camo_ckpt_close(ck);
    } else {
        rc = camo_config_load(&c, a.conf, NULL, a.sets, a.n_sets);
    }
    if (rc) {
        fprintf(stderr, "camotrain: error: %s\n", camo_last_error());
        camo_config_free(&c);
        return CAMO_ERR_INPUT;
    }
    if (a.summary) rc = summary(&c);
    else if (c.model_only) {
        fprintf(stderr, "camotrain: error: %s is a network file: train with a training config "
                "(conf/demo.cfg shows one) or use --summary\n", c.path);
        rc = CAMO_ERR_INPUT;
    } else { /* parallel.devices is parsed by the run (a bad spec: exit 2) */
        rc = camo_train_run(&c, a.resume);
    }
    camo_config_free(&c);
    return rc;
}
