/* config.c: training configuration: load, --set overrides, validation with file:line. */
#include "train/config.h"

#include <ctype.h>
#include <errno.h>
#include <libgen.h>
#include <string.h>
#include <unistd.h>

#include "core/cfgutil.h"
#include "core/common.h"

/* ---- overrides ---- */

static int parse_scalar(config_setting_t *s, int type, const char *v, const char *assignment) {
    char *end = NULL;
    switch (type) {
    case CONFIG_TYPE_BOOL:
        if (!strcmp(v, "true") || !strcmp(v, "1")) return !config_setting_set_bool(s, 1);
        if (!strcmp(v, "false") || !strcmp(v, "0")) return !config_setting_set_bool(s, 0);
        break;
    case CONFIG_TYPE_INT:
    case CONFIG_TYPE_INT64: {
        errno = 0;
        long long x = strtoll(v, &end, 10);
        if (!errno && end != v && !*end) return !config_setting_set_int64(s, x);
        break;
    }
    case CONFIG_TYPE_FLOAT: {
        double x = strtod(v, &end);
        if (end != v && !*end) return !config_setting_set_float(s, x);
        break;
    }
    case CONFIG_TYPE_STRING:
        return !config_setting_set_string(s, v);
    }
    CAMO_ERR("--set %s: '%s' is not a valid %s", assignment, v,
             type == CONFIG_TYPE_BOOL ? "boolean (true/false)" :
             type == CONFIG_TYPE_FLOAT ? "number" : "integer");
    return -1;
}

static int infer_type(const char *v) {
    if (!strcmp(v, "true") || !strcmp(v, "false")) return CONFIG_TYPE_BOOL;
    char *end;
    errno = 0;
    (void)strtoll(v, &end, 10);
    if (end != v && !*end && !errno) return CONFIG_TYPE_INT64;
    (void)strtod(v, &end);
    if (end != v && !*end) return CONFIG_TYPE_FLOAT;
    return CONFIG_TYPE_STRING;
}

/* "[a, b, c]" -> a list of strings/numbers, element types inferred */
static int set_list(config_setting_t *parent, const char *key, const char *v, const char *assignment) {
    config_setting_t *old = config_setting_get_member(parent, key);
    if (old) config_setting_remove(parent, key);
    config_setting_t *list = config_setting_add(parent, key, CONFIG_TYPE_LIST);
    char *buf = camo_strdup(v + 1);
    char *close = strrchr(buf, ']');
    if (!close) { free(buf); CAMO_ERR("--set %s: missing ']'", assignment); return -1; }
    *close = 0;
    int rc = 0;
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok && !rc; tok = strtok_r(NULL, ",", &save)) {
        while (isspace((unsigned char)*tok)) tok++;
        char *e = tok + strlen(tok);
        while (e > tok && isspace((unsigned char)e[-1])) *--e = 0;
        if (*tok == '"' && e > tok + 1 && e[-1] == '"') { e[-1] = 0; tok++; }
        int t = infer_type(tok);
        config_setting_t *el = config_setting_add(list, NULL, t);
        rc = parse_scalar(el, t, tok, assignment);
    }
    free(buf);
    return rc;
}

int camo_config_override(config_t *cfg, const char *assignment) {
    const char *eq = strchr(assignment, '=');
    if (!eq || eq == assignment) {
        CAMO_ERR("--set %s: expected key=value (e.g. --set train.lr=3e-4)", assignment);
        return -1;
    }
    char *key = camo_strdup(assignment);
    key[eq - assignment] = 0;
    const char *value = eq + 1;
    config_setting_t *g = config_root_setting(cfg);
    char *save = NULL, *part = strtok_r(key, ".", &save);
    int rc = 0;
    while (part && !rc) {
        char *next = strtok_r(NULL, ".", &save);
        config_setting_t *s = config_setting_get_member(g, part);
        if (next) { /* an intermediate group */
            if (!s) s = config_setting_add(g, part, CONFIG_TYPE_GROUP);
            if (!s || !config_setting_is_group(s)) {
                CAMO_ERR("--set %s: '%s' is not a group", assignment, part);
                rc = -1;
            }
            g = s;
        } else if (value[0] == '[') {
            rc = set_list(g, part, value, assignment);
        } else if (value[0] == '"' && strlen(value) >= 2 && value[strlen(value) - 1] == '"') {
            /* key="text": a string whatever it looks like (e.g. parallel.devices="0") */
            char *text = camo_strdup(value + 1);
            text[strlen(text) - 1] = 0;
            if (s) config_setting_remove(g, part);
            s = config_setting_add(g, part, CONFIG_TYPE_STRING);
            rc = s ? parse_scalar(s, CONFIG_TYPE_STRING, text, assignment) : -1;
            free(text);
        } else {
            int t = s ? config_setting_type(s) : infer_type(value);
            if (s && config_setting_is_aggregate(s)) {
                CAMO_ERR("--set %s: '%s' is a group or list; give [a, b] for a list", assignment, part);
                rc = -1;
            } else {
                if (s && t == CONFIG_TYPE_INT && infer_type(value) == CONFIG_TYPE_FLOAT) {
                    config_setting_remove(g, part); /* 1 -> 0.5: the value decides */
                    s = NULL;
                    t = CONFIG_TYPE_FLOAT;
                }
                if (!s) s = config_setting_add(g, part, t);
                rc = s ? parse_scalar(s, t, value, assignment) : -1;
            }
        }
        part = next;
    }
    free(key);
    return rc;
}

/* ---- validation helpers ---- */

static int get_str(const config_setting_t *g, const char *key, char *dst, size_t n) {
    const char *v = NULL;
    int rc = cfg_string(g, key, &v);
    if (rc == 0) {
        if (strlen(v) >= n) {
            CAMO_ERR("%s: key '%s' is too long", cfg_where(config_setting_get_member(g, key)), key);
            return -1;
        }
        snprintf(dst, n, "%s", v);
    }
    return rc < 0 ? -1 : 0;
}

/* parallel.devices: a string ("auto", "cpu:2", "0,1"), or one GPU id as a number
 * (devices = 0; or --set parallel.devices=0) */
static int get_devices(const config_setting_t *g, char *dst, size_t n) {
    const config_setting_t *s = g ? config_setting_get_member(g, "devices") : NULL;
    if (s && (config_setting_type(s) == CONFIG_TYPE_INT ||
              config_setting_type(s) == CONFIG_TYPE_INT64)) {
        snprintf(dst, n, "%lld", config_setting_get_int64(s));
        return 0;
    }
    return get_str(g, "devices", dst, n);
}

static int one_of(const config_setting_t *g, const char *key, const char *v, const char *choices) {
    char buf[256];
    snprintf(buf, sizeof buf, "%s", choices);
    for (char *save = NULL, *t = strtok_r(buf, "|", &save); t; t = strtok_r(NULL, "|", &save))
        if (!strcmp(t, v)) return 0;
    const config_setting_t *s = config_setting_get_member(g, key);
    CAMO_ERR("%s: key '%s': '%s' is not one of %s", s ? cfg_where(s) : cfg_where(g), key, v, choices);
    return -1;
}

static int range(const config_setting_t *g, const char *key, double v, double lo, double hi) {
    if (v >= lo && v <= hi) return 0;
    const config_setting_t *s = config_setting_get_member(g, key);
    CAMO_ERR("%s: key '%s' = %g is out of range [%g, %g]", s ? cfg_where(s) : cfg_where(g), key,
             v, lo, hi);
    return -1;
}

static int get_int(const config_setting_t *g, const char *key, int *v, int lo, int hi) {
    if (cfg_int(g, key, v) < 0) return -1;
    return range(g, key, *v, lo, hi);
}

static int get_num(const config_setting_t *g, const char *key, double *v, double lo, double hi) {
    if (cfg_float(g, key, v) < 0) return -1;
    return range(g, key, *v, lo, hi);
}

static int get_flag(const config_setting_t *g, const char *key, int *v) {
    return cfg_bool(g, key, v) < 0 ? -1 : 0;
}

/* A string or a list of strings, joined with commas. */
static int get_str_list(const config_setting_t *g, const char *key, char *dst, size_t n) {
    const config_setting_t *s = config_setting_get_member(g, key);
    if (!s) return 0; /* the default stays (data.train_split's "Train") */
    dst[0] = 0;
    if (config_setting_type(s) == CONFIG_TYPE_STRING) return get_str(g, key, dst, n);
    if (!config_setting_is_array(s) && !config_setting_is_list(s)) goto bad;
    for (int i = 0; i < config_setting_length(s); i++) {
        const char *v = config_setting_get_string_elem(s, i);
        if (!v) goto bad;
        if (strlen(dst) + strlen(v) + 2 > n) goto bad;
        if (i) strcat(dst, ",");
        strcat(dst, v);
    }
    return 0;
bad:
    CAMO_ERR("%s: key '%s' must be a string or a list of strings", cfg_where(s), key);
    return -1;
}

static const config_setting_t *section(const config_t *cfg, const char *name, int *rc) {
    const config_setting_t *s = config_lookup(cfg, name);
    if (s && !config_setting_is_group(s)) {
        CAMO_ERR("%s: '%s' must be a group { ... }", cfg_where(s), name);
        *rc = -1;
    }
    return s;
}

/* ---- sections ---- */

/* data.subset: a float in (0, 1] is a fraction of the training images, an integer >= 1 a
 * count (the type decides: 1.0 is all of them, 1 is one image). */
static int get_subset(const config_setting_t *d, double *subset) {
    const config_setting_t *s = config_setting_get_member(d, "subset");
    if (!s) return 0;
    int type = config_setting_type(s);
    if (type == CONFIG_TYPE_INT || type == CONFIG_TYPE_INT64) {
        long long n = config_setting_get_int64(s);
        if (n >= 1 && n <= 2000000000) { *subset = (double)n; return 0; }
    } else if (type == CONFIG_TYPE_FLOAT) {
        double f = config_setting_get_float(s);
        if (f > 0 && f <= 1) { *subset = f < 1 ? f : 0; return 0; }
    }
    CAMO_ERR("%s: data.subset must be a fraction in (0, 1] (e.g. 0.25) or a count of images "
             ">= 1 (e.g. 200)", cfg_where(s));
    return -1;
}

static int load_data(camo_config *c, const config_setting_t *d) {
    static const char *const keys[] = {"root", "format", "train_split", "val_split", "img_size",
                                       "classes", "workers", "skip_bad", "ignore_index",
                                       "augment", "cache", "subset", NULL};
    static const char *const aug_keys[] = {"hflip", "scale_min", "scale_max", "jitter",
                                           "rotate", NULL};
    char cache[16] = "none";
    snprintf(c->data.format, sizeof c->data.format, "auto");
    snprintf(c->data.train_split, sizeof c->data.train_split, "Train");
    snprintf(c->data.val_split, sizeof c->data.val_split, "Test");
    c->data.classes = 1;
    c->data.workers = 2;
    c->data.ignore_index = 255;
    camo_augment *a = &c->data.aug;
    a->size = 320;
    a->hflip = 1;
    a->scale_min = 0.75f; a->scale_max = 1.25f; a->jitter = 0.2f;
    if (!d) return 0;
    if (cfg_check_keys(d, keys, "data")) return -1;
    double smin = a->scale_min, smax = a->scale_max, jit = a->jitter;
    if (get_str(d, "root", c->data.root, sizeof c->data.root) ||
        get_str(d, "format", c->data.format, sizeof c->data.format) ||
        one_of(d, "format", c->data.format, "auto|cod10k|camo|carla|ade20k|folders") ||
        get_str(d, "cache", cache, sizeof cache) || one_of(d, "cache", cache, "none|decoded") ||
        get_str_list(d, "train_split", c->data.train_split, sizeof c->data.train_split) ||
        get_subset(d, &c->data.subset) ||
        get_str(d, "val_split", c->data.val_split, sizeof c->data.val_split) ||
        get_int(d, "img_size", &a->size, 16, 8192) || get_int(d, "classes", &c->data.classes, 1, 65535) ||
        get_int(d, "workers", &c->data.workers, 0, 256) || get_flag(d, "skip_bad", &c->data.skip_bad) ||
        get_int(d, "ignore_index", &c->data.ignore_index, -1, 65535))
        return -1;
    c->data.cache = !strcmp(cache, "decoded");
    double rot = 0;
    const config_setting_t *ag = config_setting_get_member(d, "augment");
    if (ag) {
        if (!config_setting_is_group(ag)) {
            CAMO_ERR("%s: 'augment' must be a group", cfg_where(ag));
            return -1;
        }
        if (cfg_check_keys(ag, aug_keys, "data.augment") || get_flag(ag, "hflip", &a->hflip) ||
            get_num(ag, "scale_min", &smin, 0.1, 10) || get_num(ag, "scale_max", &smax, 0.1, 10) ||
            get_num(ag, "jitter", &jit, 0, 1) || get_num(ag, "rotate", &rot, 0, 180))
            return -1;
        if (smin > smax) {
            CAMO_ERR("%s: scale_min %g is larger than scale_max %g", cfg_where(ag), smin, smax);
            return -1;
        }
    }
    a->scale_min = (float)smin; a->scale_max = (float)smax; a->jitter = (float)jit;
    a->rotate = (float)rot;
    return 0;
}

static int load_stage(camo_config *c, const config_setting_t *s, int i) {
    static const char *const keys[] = {"epochs", "lr", "batch", "warmup_epochs", "freeze",
                                       "progressive_unfreeze", "unfreeze_epochs", NULL};
    camo_stage *st = &c->train.stages[i];
    if (!config_setting_is_group(s)) {
        CAMO_ERR("%s: each stage must be a group { epochs = ...; }", cfg_where(s));
        return -1;
    }
    if (cfg_check_keys(s, keys, "stage")) return -1;
    if (cfg_need_int(s, "epochs", &st->epochs) || range(s, "epochs", st->epochs, 1, 100000))
        return -1;
    st->unfreeze_epochs = st->epochs / 2.0;
    if (get_num(s, "lr", &st->lr, 0, 10) || get_int(s, "batch", &st->batch, 1, 1 << 20) ||
        get_num(s, "warmup_epochs", &st->warmup_epochs, 0, st->epochs) ||
        get_str_list(s, "freeze", st->freeze, sizeof st->freeze) ||
        get_flag(s, "progressive_unfreeze", &st->progressive_unfreeze) ||
        get_num(s, "unfreeze_epochs", &st->unfreeze_epochs, 0, st->epochs))
        return -1;
    return 0;
}

static camo_schedule schedule_kind(const char *name) { /* one_of checked the name */
    if (!strcmp(name, "poly")) return CAMO_SCHED_POLY;
    if (!strcmp(name, "step")) return CAMO_SCHED_STEP;
    if (!strcmp(name, "constant")) return CAMO_SCHED_CONSTANT;
    return CAMO_SCHED_COSINE;
}

static int load_train(camo_config *c, const config_setting_t *t) {
    static const char *const keys[] = {
        "epochs", "batch", "lr", "min_lr", "optimizer", "momentum", "nesterov", "weight_decay",
        "beta1", "beta2", "eps", "schedule", "warmup_epochs", "poly_power", "step_size",
        "step_gamma", "clip_grad_norm", "accum_steps", "max_steps", "threads", "deterministic",
        "loss", "deep_supervision", "ema_decay", "early_stop_patience", "amp", "memory",
        "checkpointing", "stages",
        NULL};
    typeof(c->train) *tr = &c->train;
    int epochs = 10, batch = 16;
    double warmup = 0;
    tr->lr = 1e-3; tr->min_lr = 1e-5; tr->momentum = 0.9; tr->weight_decay = 1e-4;
    tr->beta1 = 0.9; tr->beta2 = 0.999; tr->eps = 1e-8; tr->poly_power = 0.9;
    tr->step_size = 30; tr->step_gamma = 0.1; tr->accum_steps = 1; tr->deep_supervision = 1;
    snprintf(tr->optimizer, sizeof tr->optimizer, "adamw");
    snprintf(tr->schedule, sizeof tr->schedule, "cosine");
    snprintf(tr->loss, sizeof tr->loss, "structure");
    snprintf(tr->amp, sizeof tr->amp, "off");
    snprintf(tr->memory, sizeof tr->memory, "lean");
    if (t && cfg_check_keys(t, keys, "train")) return -1;
    if (get_int(t, "epochs", &epochs, 1, 100000) || get_int(t, "batch", &batch, 1, 1 << 20) ||
        get_num(t, "lr", &tr->lr, 0, 10) || get_num(t, "min_lr", &tr->min_lr, 0, 10) ||
        get_str(t, "optimizer", tr->optimizer, sizeof tr->optimizer) ||
        one_of(t, "optimizer", tr->optimizer, "sgd|adamw") ||
        get_num(t, "momentum", &tr->momentum, 0, 1) || get_flag(t, "nesterov", &tr->nesterov) ||
        get_num(t, "weight_decay", &tr->weight_decay, 0, 10) ||
        get_num(t, "beta1", &tr->beta1, 0, 0.999999) || get_num(t, "beta2", &tr->beta2, 0, 0.9999999) ||
        get_num(t, "eps", &tr->eps, 0, 1) ||
        get_str(t, "schedule", tr->schedule, sizeof tr->schedule) ||
        one_of(t, "schedule", tr->schedule, "cosine|poly|step|constant") ||
        get_num(t, "warmup_epochs", &warmup, 0, 100000) ||
        get_num(t, "poly_power", &tr->poly_power, 0, 100) ||
        get_int(t, "step_size", &tr->step_size, 1, 100000) ||
        get_num(t, "step_gamma", &tr->step_gamma, 0, 1) ||
        get_num(t, "clip_grad_norm", &tr->clip_grad_norm, 0, 1e9) ||
        get_int(t, "accum_steps", &tr->accum_steps, 1, 4096) ||
        get_int(t, "max_steps", &tr->max_steps, 0, 2000000000) ||
        get_int(t, "threads", &tr->threads, 0, 1024) ||
        get_flag(t, "deterministic", &tr->deterministic) ||
        get_str(t, "loss", tr->loss, sizeof tr->loss) ||
        one_of(t, "loss", tr->loss, "structure|bce|dice|bce+dice|ce") ||
        get_flag(t, "deep_supervision", &tr->deep_supervision) ||
        get_num(t, "ema_decay", &tr->ema_decay, 0, 0.999999) ||
        get_int(t, "early_stop_patience", &tr->early_stop_patience, 0, 100000) ||
        get_str(t, "amp", tr->amp, sizeof tr->amp) || one_of(t, "amp", tr->amp, "off|bf16|fp16") ||
        get_str(t, "memory", tr->memory, sizeof tr->memory) ||
        one_of(t, "memory", tr->memory, "lean|fast") ||
        get_flag(t, "checkpointing", &tr->checkpointing))
        return -1;
    tr->lean_memory = strcmp(tr->memory, "lean") == 0;
    camo_loss_parse(tr->loss, &tr->loss_kind); /* one_of checked the name */
    tr->opt_type = strcmp(tr->optimizer, "sgd") == 0 ? CAMO_OPT_SGD : CAMO_OPT_ADAMW;
    tr->schedule_kind = schedule_kind(tr->schedule);
    if (tr->nesterov && strcmp(tr->optimizer, "sgd") != 0) {
        CAMO_ERR("%s: nesterov applies to optimizer \"sgd\" only", cfg_where(t));
        return -1;
    }
    const config_setting_t *st = t ? config_setting_get_member(t, "stages") : NULL;
    if (!st) {
        tr->n_stages = 1;
        tr->stages[0] = (camo_stage){.epochs = epochs, .lr = tr->lr, .batch = batch,
                                     .warmup_epochs = warmup};
    } else {
        tr->n_stages = config_setting_is_list(st) ? config_setting_length(st) : 0;
        if (tr->n_stages < 1 || tr->n_stages > CAMO_MAX_STAGES) {
            CAMO_ERR("%s: 'stages' must be a list of 1..%d groups", cfg_where(st), CAMO_MAX_STAGES);
            return -1;
        }
        int total = 0;
        for (int i = 0; i < tr->n_stages; i++) {
            camo_stage *s = &tr->stages[i];
            s->lr = tr->lr; s->batch = batch; s->warmup_epochs = i == 0 ? warmup : 0;
            if (load_stage(c, config_setting_get_elem(st, (unsigned)i), i)) return -1;
            total += s->epochs;
        }
        if (config_setting_get_member(t, "epochs") && total != epochs) {
            CAMO_ERR("%s: train.epochs = %d but the stages add up to %d epochs",
                     cfg_where(config_setting_get_member(t, "epochs")), epochs, total);
            return -1;
        }
        epochs = total;
    }
    tr->epochs = epochs;
    return 0;
}

static int load_rest(camo_config *c) {
    int rc = 0;
    const config_setting_t *e = section(&c->cfg, "eval", &rc);
    const config_setting_t *k = section(&c->cfg, "checkpoint", &rc);
    const config_setting_t *p = section(&c->cfg, "parallel", &rc);
    const config_setting_t *l = section(&c->cfg, "log", &rc);
    if (rc) return -1;
    static const char *const ekeys[] = {"every", "batch", "threshold", NULL};
    static const char *const kkeys[] = {"every_steps", "metric", NULL};
    static const char *const pkeys[] = {"devices", "mode", "bucket_mb", "sync_bn", "timeout_s",
                                        "eval_timeout_s", NULL};
    static const char *const lkeys[] = {"every", "tensorboard", NULL};
    c->eval.every = 1;
    c->eval.batch = c->train.stages[0].batch;
    c->eval.threshold = 0.5;
    snprintf(c->checkpoint.metric, sizeof c->checkpoint.metric, "iou");
    snprintf(c->parallel.devices, sizeof c->parallel.devices, "auto");
    snprintf(c->parallel.mode, sizeof c->parallel.mode, "ddp");
    c->parallel.bucket_mb = 25;
    c->parallel.timeout_s = 300;
    c->parallel.eval_timeout_s = 3600; /* a bound for hangs: docs/parallel.md says why */
    c->log.every = 10;
    c->log.tensorboard = 1;
    if ((e && cfg_check_keys(e, ekeys, "eval")) || (k && cfg_check_keys(k, kkeys, "checkpoint")) ||
        (p && cfg_check_keys(p, pkeys, "parallel")) || (l && cfg_check_keys(l, lkeys, "log")))
        return -1;
    if (get_int(e, "every", &c->eval.every, 0, 100000) || get_int(e, "batch", &c->eval.batch, 1, 1 << 20) ||
        get_num(e, "threshold", &c->eval.threshold, 0, 1) ||
        get_int(k, "every_steps", &c->checkpoint.every_steps, 0, 2000000000) ||
        get_str(k, "metric", c->checkpoint.metric, sizeof c->checkpoint.metric) ||
        one_of(k, "metric", c->checkpoint.metric, "iou|dice|mae|loss") ||
        get_devices(p, c->parallel.devices, sizeof c->parallel.devices) ||
        get_str(p, "mode", c->parallel.mode, sizeof c->parallel.mode) ||
        one_of(p, "mode", c->parallel.mode, "ddp|dp") ||
        get_num(p, "bucket_mb", &c->parallel.bucket_mb, 0.001, 1e6) ||
        get_flag(p, "sync_bn", &c->parallel.sync_bn) ||
        get_num(p, "timeout_s", &c->parallel.timeout_s, 1, 1e6) ||
        get_num(p, "eval_timeout_s", &c->parallel.eval_timeout_s, 1, 1e7) ||
        get_int(l, "every", &c->log.every, 1, 1000000) ||
        get_flag(l, "tensorboard", &c->log.tensorboard))
        return -1;
    return 0;
}

/* A path named in the config: relative to the config's folder when the file is there,
 * else as given (relative to the working directory). */
static void resolve_path(const camo_config *c, const char *p, char *dst, size_t n) {
    char *copy = camo_strdup(c->path);
    snprintf(dst, n, "%s/%s", dirname(copy), p);
    free(copy);
    if (p[0] == '/' || access(dst, R_OK) != 0) snprintf(dst, n, "%s", p);
}

/* init: pretrained weights (init.weights, init.prefix, init.strict) */
static int load_init(camo_config *c) {
    static const char *const keys[] = {"weights", "prefix", "strict", NULL};
    int rc = 0;
    const config_setting_t *g = section(&c->cfg, "init", &rc);
    char weights[CAMO_PATH_MAX] = "";
    if (rc || !g) return rc;
    if (cfg_check_keys(g, keys, "init") || get_str(g, "weights", weights, sizeof weights) ||
        get_str(g, "prefix", c->init.prefix, sizeof c->init.prefix) ||
        get_flag(g, "strict", &c->init.strict))
        return -1;
    if (weights[0]) resolve_path(c, weights, c->init.weights, sizeof c->init.weights);
    return 0;
}

/* The network: a path (relative to the config's folder, else to the working directory)
 * or an inline group. */
static int load_model_ref(camo_config *c) {
    const config_setting_t *m = config_lookup(&c->cfg, "model");
    if (!m) {
        CAMO_ERR("%s: missing key 'model' (a network file such as \"models/unet_s.cfg\", or "
                 "an inline group)", c->path);
        return -1;
    }
    if (config_setting_is_group(m)) { c->model_setting = m; return 0; }
    const char *p = config_setting_get_string(m);
    if (!p) {
        CAMO_ERR("%s: 'model' must be a file name or a group", cfg_where(m));
        return -1;
    }
    resolve_path(c, p, c->model_path, sizeof c->model_path);
    return 0;
}

static int render_text(camo_config *c) {
    size_t n = 0;
    FILE *f = open_memstream(&c->text, &n);
    if (!f) CAMO_DIE("open_memstream failed");
    config_write(&c->cfg, f);
    fclose(f);
    return 0;
}

int camo_config_load(camo_config *c, const char *path, const char *text,
                     char *const *overrides, int n_overrides) {
    memset(c, 0, sizeof *c);
    config_init(&c->cfg);
    snprintf(c->path, sizeof c->path, "%s", path ? path : "<checkpoint>");
    if (text) {
        if (!config_read_string(&c->cfg, text)) {
            CAMO_ERR("%s: saved config, line %d: %s", c->path, config_error_line(&c->cfg),
                     config_error_text(&c->cfg));
            return -1;
        }
    } else if (cfg_read_file(&c->cfg, path) != 0) {
        return -1;
    }
    for (int i = 0; i < n_overrides; i++)
        if (camo_config_override(&c->cfg, overrides[i]) != 0) return -1;
    const config_setting_t *root = config_root_setting(&c->cfg);
    render_text(c);
    if (config_setting_get_member(root, "layers")) { /* a network file on its own */
        c->model_only = 1;
        c->model_setting = root;
        int rc = 0;
        if (load_data(c, NULL) || load_train(c, NULL)) rc = -1;
        if (!rc) rc = load_rest(c);
        return rc;
    }
    static const char *const keys[] = {"model", "seed", "out", "init", "data", "train",
                                       "eval", "checkpoint", "parallel", "log", NULL};
    if (cfg_check_keys(root, keys, "training config")) return -1;
    int rc = 0, seed = 42;
    const config_setting_t *d = section(&c->cfg, "data", &rc);
    const config_setting_t *t = section(&c->cfg, "train", &rc);
    if (rc || get_int(root, "seed", &seed, 0, 2147483647) ||
        get_str(root, "out", c->out, sizeof c->out) || load_model_ref(c) ||
        load_init(c) || load_data(c, d) || load_train(c, t) || load_rest(c))
        return -1;
    c->seed = (uint64_t)seed;
    return 0;
}

void camo_config_free(camo_config *c) {
    config_destroy(&c->cfg);
    free(c->text);
    c->text = NULL;
}

camo_net_source camo_config_net_source(const camo_config *c) {
    return (camo_net_source){.config_path = c->path, .config_text = c->text,
                             .inline_group = c->model_setting, .model_path = c->model_path,
                             .model_only = c->model_only, .classes = c->data.classes};
}

camo_optim_opts camo_config_optim_opts(const camo_config *c) {
    return (camo_optim_opts){.type = c->train.opt_type, .momentum = c->train.momentum,
                             .weight_decay = c->train.weight_decay, .beta1 = c->train.beta1,
                             .beta2 = c->train.beta2, .eps = c->train.eps,
                             .nesterov = c->train.nesterov, .ema_decay = c->train.ema_decay};
}
