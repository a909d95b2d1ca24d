/* cli_train.c: `camotrain [train]`: flags -> config overrides, --model, --summary (with the
 * memory a training step needs), --resume. */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "nn/checkpoint.h"
#include "cli/cli.h"
#include "core/common.h"
#include "parallel/devices.h"
#include "parallel/replica.h"
#include "train/config.h"
#include "train/train.h"

#define MODELS_DIR "conf/models"

#define MAX_SETS 256

typedef struct {
    const char *conf, *resume, *model;
    char model_path[PATH_MAX];   /* --model resolved */
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
    int n = *nf < 8 ? snprintf(a->flag_sets[*nf], sizeof a->flag_sets[0], "%s=%s", key, value) : -1;
    if (n < 0 || n >= (int)sizeof a->flag_sets[0]) {
        fprintf(stderr, "camotrain: %s: too many flags or a value too long\n", key);
        return -1;
    }
    return add_set(a, a->flag_sets[(*nf)++]);
}

/* --model NAME: the network conf/models/NAME.cfg, relative to the working directory (the
 * repository root), or NAME itself when it is a path (has a '/' or ends in .cfg). */
static int model_file(const char *name, char *dst, size_t n) {
    size_t len = strlen(name);
    if (strchr(name, '/') || (len > 4 && !strcmp(name + len - 4, ".cfg"))) {
        if (access(name, R_OK) == 0) return snprintf(dst, n, "%s", name) < (int)n ? 0 : -1;
        fprintf(stderr, "camotrain: error: --model %s: cannot read the network file: %s\n", name,
                strerror(errno));
        return -1;
    }
    snprintf(dst, n, "%s/%s.cfg", MODELS_DIR, name);
    return access(dst, R_OK) == 0 ? 0 : 1;
}

/* whether s contains sub, ignoring case */
static int contains_nocase(const char *s, const char *sub) {
    size_t n = strlen(sub);
    for (; *s; s++)
        if (!strncasecmp(s, sub, n)) return 1;
    return n == 0;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The error of a --model NAME without conf/models/NAME.cfg: the networks there, and those
 * whose names contain NAME (any case: seed 001's -m PSPnet finds pspnet_r50). */
static void model_not_found(const char *name) {
    DIR *d = opendir(MODELS_DIR);
    if (!d) {
        fprintf(stderr, "camotrain: error: --model %s: no %s folder in the current directory "
                "(run camotrain from the repository root, or give the network file's path)\n",
                name, MODELS_DIR);
        return;
    }
    char *names[256];
    int n = 0;
    for (struct dirent *e; (e = readdir(d)) && n < 256;) {
        size_t len = strlen(e->d_name);
        if (len > 4 && !strcmp(e->d_name + len - 4, ".cfg"))
            names[n++] = camo_strdup(e->d_name);
    }
    closedir(d);
    qsort(names, (size_t)n, sizeof *names, cmp_str);
    char all[4096] = "", near[1024] = "";
    for (int i = 0; i < n; i++) {
        names[i][strlen(names[i]) - 4] = 0;
        size_t k = strlen(all), c = strlen(near);
        snprintf(all + k, sizeof all - k, "%s%s", i ? ", " : "", names[i]);
        if (contains_nocase(names[i], name))
            snprintf(near + c, sizeof near - c, "%s%s", c ? ", " : "", names[i]);
    }
    fprintf(stderr, "camotrain: error: --model %s: no network %s/%s.cfg; available in %s: %s%s%s%s\n",
            name, MODELS_DIR, name, MODELS_DIR, n ? all : "none", near[0] ? " (did you mean " : "",
            near, near[0] ? "?)" : "");
    for (int i = 0; i < n; i++) free(names[i]);
}

/* --model: the network file, as the config's `model` (a string whatever `model` was, also
 * an inline group), or as --conf when there is none (--model NAME --summary). */
static int resolve_model(train_args *a, int *nf) {
    char file[PATH_MAX];
    int rc = model_file(a->model, file, sizeof file);
    if (rc > 0) model_not_found(a->model);
    if (rc) return -1;
    if (!realpath(file, a->model_path)) snprintf(a->model_path, sizeof a->model_path, "%s", file);
    if (!a->conf) { a->conf = a->model_path; return 0; }
    char quoted[PATH_MAX + 2];
    snprintf(quoted, sizeof quoted, "\"%s\"", a->model_path);
    return flag_to_set(a, nf, "model", quoted);
}

static int parse_args(int argc, char **argv, train_args *a) {
    int nf = 0;
    for (int i = 0; i < argc; i++) {
        const char *f = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        int takes = !strcmp(f, "--conf") || !strcmp(f, "--set") || !strcmp(f, "--devices") ||
                    !strcmp(f, "--parallel") || !strcmp(f, "--out") || !strcmp(f, "--resume") ||
                    !strcmp(f, "--model");
        if (takes && !v) { fprintf(stderr, "camotrain: %s needs a value\n", f); return -1; }
        if (!strcmp(f, "--conf")) a->conf = v;
        else if (!strcmp(f, "--model")) a->model = v;
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
    if (a->model && a->resume) {
        fprintf(stderr, "camotrain: error: --model %s: --resume continues the network saved in "
                "%s; start a new run (--conf) for another one\n", a->model, a->resume);
        return -1;
    }
    if (a->model && resolve_model(a, &nf)) return -1;
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

static double mib(size_t bytes) { return (double)bytes / (1024.0 * 1024.0); }

static void mem_line(const char *what, size_t bytes, const char *note) {
    printf("  %-34s %10.2f MiB%s%s\n", what, mib(bytes), note[0] ? "  " : "", note);
}

/* The memory a training step needs on each replica (camo_replica_memory: what
 * camo_replica_init allocates), for the local batch of the largest stage; and replica 0's
 * growth when it evaluates at a larger eval.batch. The net is at 1 image of S x S. */
static int summary_memory(camo_config *c, camo_net *net, int quiet) {
    camo_devices dev;
    camo_log_set_quiet(1); /* the replica count only: not the run's device notices */
    int rc = camo_devices_parse(c->parallel.devices, c->train.threads, &dev);
    camo_log_set_quiet(quiet);
    if (rc) return -1;
    int B = 0;
    for (int s = 0; s < c->train.n_stages; s++) B = CAMO_MAX(B, c->train.stages[s].batch);
    int L = (B + dev.n - 1) / dev.n; /* train.c setup_model's local batch */
    camo_replica_opts o = {.img_size = c->data.aug.size, .optim = camo_config_optim_opts(c)};
    camo_replica_mem m;
    size_t other_arena = 0; /* the arena with train.checkpointing flipped, to show its worth */
    int ck = c->train.checkpointing, blocks = 0;
    if (camo_net_set_lean(net, c->train.lean_memory)) return -1;
    if (net->checkpoint_blocks) {
        if ((blocks = camo_net_set_checkpointing(net, !ck)) < 0 || camo_replica_memory(net, &o, &m))
            return -1;
        other_arena = m.net.arena_img;
    }
    if ((ck && (blocks = camo_net_set_checkpointing(net, 1)) < 0) ||
        (!ck && net->checkpoint_blocks && camo_net_set_checkpointing(net, 0) < 0) ||
        camo_replica_memory(net, &o, &m))
        return -1;
    char note[160], what[64];
    printf("memory per replica for training (fp32, the bytes camotrain allocates): %d replica%s "
           "(parallel.devices \"%s\"), local batch %d of the global batch %d%s\n", dev.n,
           dev.n == 1 ? "" : "s", c->parallel.devices, L, B,
           c->train.n_stages > 1 ? " (largest stage)" : "");
    mem_line("weights", m.net.weights, "");
    mem_line("gradients", m.net.grads, "");
    mem_line("buffers (BN running statistics)", m.net.buffers, "");
    snprintf(what, sizeof what, "optimizer state (%s)", c->train.optimizer);
    snprintf(note, sizeof note, "%d weight-sized slot%s", m.optim_slots, m.optim_slots > 1 ? "s" : "");
    mem_line(what, m.optim, note);
    mem_line("EMA of weights", m.ema, m.ema ? "train.ema_decay" : "off (train.ema_decay = 0)");
    mem_line("fixed scratch", m.net.scratch_fixed + m.other, "BN statistics, loss and norm sums");
    struct { const char *what; size_t per; } part[] = {
        {"input and its gradient", m.net.input_img},
        {"activations + gradients", m.net.arena_img},
        {"layer scratch", m.net.scratch_img}, {"targets", m.targets_img}};
    for (size_t i = 0; i < sizeof part / sizeof part[0]; i++) {
        snprintf(what, sizeof what, "%s x %d image%s", part[i].what, L, L == 1 ? "" : "s");
        snprintf(note, sizeof note, "%.2f MiB per image", mib(part[i].per));
        mem_line(what, (size_t)L * part[i].per, note);
    }
    printf("    (activations + gradients, train.memory \"%s\": %.2f MiB kept from forward to "
           "backward, gradients at most %.2f MiB at once; %.2f MiB with every tensor its own)\n",
           net->lean ? "lean" : "fast", mib((size_t)L * m.net.kept_img),
           mib((size_t)L * m.net.grad_peak_img), mib((size_t)L * m.net.plain_img));
    if (net->checkpoint_blocks)
        printf("    (train.checkpointing %s: the network's %d blocks %s; %s, %.2f MiB)\n",
               ck ? "on" : "off", blocks, ck ? "recomputed in backward" : "kept",
               ck ? "off" : "on", mib((size_t)L * other_arena));
    size_t fixed = camo_replica_mem_fixed(&m), per = camo_replica_mem_per_image(&m);
    snprintf(note, sizeof note, "= %.2f MiB + %d x %.2f MiB per image", mib(fixed), L, mib(per));
    mem_line("total", fixed + (size_t)L * per, note);
    if (!c->model_only && c->eval.every > 0 && c->eval.batch > L) { /* camo_net_set_eval_size */
        size_t E = (size_t)c->eval.batch, arena = CAMO_MAX((size_t)L * m.net.arena_img,
                                                           E * m.net.eval_arena_img);
        printf("  replica 0 evaluates at eval.batch = %d (forward only: %.2f MiB per image in "
               "the shared arena): %.2f MiB in all\n", c->eval.batch,
               mib(m.net.eval_arena_img), mib(fixed + (size_t)L * m.targets_img + arena +
               E * (m.net.input_img + m.net.scratch_img + m.targets_img)));
    }
    printf("  not counted: backend workspaces (the CPU's im2col buffer, cuDNN's, cuBLAS's: "
           "camotrain profile measures peaks), comm buffers, host memory (loader, data.cache)\n");
    return 0;
}

static int summary(camo_config *c, int quiet) {
    camo_backend *be = camo_backend_cpu_create(1);
    camo_net_source src = camo_config_net_source(c);
    camo_net *net = camo_net_build(&src, be, NULL);
    int S = c->data.aug.size, rc = CAMO_ERR_INPUT;
    if (net && camo_net_set_input_size(net, 1, S, S) == 0) {
        camo_net_summary(net, stdout);
        if (summary_memory(c, net, quiet) == 0) rc = CAMO_OK;
    }
    if (rc) fprintf(stderr, "camotrain: error: %s\n", camo_last_error());
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
    if (a.model && c.model_only && a.conf != a.model_path) {
        fprintf(stderr, "camotrain: error: --model %s: --conf %s is itself a network file; give "
                "a training config (or --model alone with --summary)\n", a.model, c.path);
        rc = CAMO_ERR_INPUT;
    } else if (a.summary) rc = summary(&c, a.quiet);
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
