/* checkpoint.c: save and load training state as safetensors (PyTorch names and layouts). */
#include "nn/checkpoint.h"

#include <inttypes.h>
#include <math.h>
#include <string.h>

#include "core/common.h"

/* ---- save ---- */

static int add_f32(camo_st_writer *w, const char *name, const camo_param *p, const float *host) {
    return camo_st_add(w, name, CAMO_ST_F32, p->ndim, p->shape, host);
}

/* One parameter's slice of a weight-layout block (EMA, optimizer slot) in torch layout. */
static int add_block_slice(camo_st_writer *w, camo_net *net, const camo_param *p,
                           const float *block, const char *prefix, float *host) {
    char name[256];
    snprintf(name, sizeof name, "%s.%s", prefix, p->name);
    camo_param_read(net, p, block + (p->data - net->param_block), host);
    return add_f32(w, name, p, host);
}

static int add_params(camo_st_writer *w, camo_net *net, const camo_optim *opt) {
    int rc = 0;
    for (int i = 0; i < net->n_params && !rc; i++) {
        const camo_param *p = &net->params[i];
        if (p->kind == CAMO_PARAM_COUNTER) {
            int64_t shape0[1];
            rc = camo_st_add(w, p->name, CAMO_ST_I64, 0, shape0, p->counter);
            continue;
        }
        float *host = camo_malloc(p->numel * sizeof(float));
        camo_param_get(net, p, host);
        rc = add_f32(w, p->name, p, host);
        if (!rc && opt && p->kind == CAMO_PARAM_WEIGHT) {
            if (opt->ema) rc = add_block_slice(w, net, p, opt->ema, "ema", host);
            for (int s = 0; s < opt->n_slots && !rc; s++) {
                char prefix[64];
                snprintf(prefix, sizeof prefix, "optim.%s", opt->slot_name[s]);
                rc = add_block_slice(w, net, p, opt->slot[s], prefix, host);
            }
        }
        free(host);
    }
    return rc;
}

static int meta_int(camo_st_writer *w, const char *k, int64_t v) {
    char buf[32];
    snprintf(buf, sizeof buf, "%" PRId64, v);
    return camo_st_add_meta(w, k, buf);
}

static int add_meta(camo_st_writer *w, const camo_net *net, const camo_optim *opt,
                    const camo_train_state *st, const char *config_text,
                    const char *network_text, uint64_t seed) {
    char buf[64];
    int rc = camo_st_add_meta(w, "format", CAMO_CKPT_FORMAT) ||
             meta_int(w, "format_version", CAMO_CKPT_VERSION) ||
             camo_st_add_meta(w, "network_name", net->name) ||
             camo_st_add_meta(w, "network", network_text ? network_text : "") ||
             camo_st_add_meta(w, "config", config_text ? config_text : "") ||
             meta_int(w, "epoch", st->epoch) || meta_int(w, "batch", st->batch) ||
             meta_int(w, "step", st->step) || meta_int(w, "best_epoch", st->best_epoch) ||
             meta_int(w, "bad_epochs", st->bad_epochs) ||
             meta_int(w, "seed", (int64_t)seed);
    snprintf(buf, sizeof buf, "%.17g", st->best_metric);
    rc = rc || camo_st_add_meta(w, "best_metric", buf);
    snprintf(buf, sizeof buf, "%.3f", st->elapsed_s);
    rc = rc || camo_st_add_meta(w, "elapsed_s", buf);
    if (st->loss_scale > 0) { /* optional key: older readers ignore it, older files lack it */
        snprintf(buf, sizeof buf, "%.17g", st->loss_scale);
        rc = rc || camo_st_add_meta(w, "loss_scale", buf);
    }
    if (st->batch > 0) { /* optional key, as loss_scale */
        const camo_epoch_sums *e = &st->epoch_sums;
        char sums[160];
        snprintf(sums, sizeof sums, "%.17g %.17g %.17g %.17g %d", e->loss_x_images, e->images,
                 e->correct, e->counted, e->steps);
        rc = rc || camo_st_add_meta(w, "epoch_sums", sums);
    }
    if (opt) {
        rc = rc || camo_st_add_meta(w, "optimizer", opt->slot_name[0][0] == 'm' ? "sgd" : "adamw") ||
             meta_int(w, "optimizer_t", opt->t) || meta_int(w, "ema", opt->ema != NULL);
    }
    return rc;
}

int camo_ckpt_save(const char *path, camo_net *net, const camo_optim *opt,
                   const camo_train_state *st, const char *config_text,
                   const char *network_text, uint64_t seed) {
    camo_st_writer *w = camo_st_writer_new();
    int rc = add_params(w, net, opt) ||
             add_meta(w, net, opt, st, config_text, network_text, seed) ||
             camo_st_write_file(w, path);
    camo_st_writer_free(w);
    return rc ? -1 : 0;
}

/* ---- load ---- */

static int meta_i64(camo_ckpt *ck, const char *key, int64_t *out, int required) {
    const char *v = camo_st_meta(ck->file, key);
    if (!v) {
        if (!required) return 0;
        CAMO_ERR("%s: not a complete camotrain checkpoint: metadata '%s' is missing", ck->path, key);
        return -1;
    }
    char *end;
    long long x = strtoll(v, &end, 10);
    if (end == v || *end) {
        CAMO_ERR("%s: metadata '%s' = '%s' is not an integer", ck->path, key, v);
        return -1;
    }
    *out = x;
    return 0;
}

/* The optional "epoch_sums" key; one that does not parse is ignored (the resumed epoch
 * then reports only its own steps, as with checkpoints that predate the key). */
static void read_epoch_sums(camo_ckpt *ck) {
    const char *v = camo_st_meta(ck->file, "epoch_sums");
    camo_epoch_sums *e = &ck->st.epoch_sums;
    ck->st.has_epoch_sums = v && sscanf(v, "%lf %lf %lf %lf %d", &e->loss_x_images, &e->images,
                                        &e->correct, &e->counted, &e->steps) == 5;
    if (!ck->st.has_epoch_sums) memset(e, 0, sizeof *e);
}

camo_ckpt *camo_ckpt_open(const char *path) {
    camo_st_file *f = camo_st_open(path);
    if (!f) return NULL;
    camo_ckpt *ck = camo_calloc(1, sizeof *ck);
    ck->file = f;
    snprintf(ck->path, sizeof ck->path, "%s", path);
    const char *fmt = camo_st_meta(f, "format");
    int64_t ver = 0, epoch = 0, batch = 0, step = 0, best_epoch = 0, bad = 0, seed = 0;
    if (!fmt || strcmp(fmt, CAMO_CKPT_FORMAT) != 0) {
        CAMO_ERR("%s: not a camotrain checkpoint (no '%s' format in its metadata)", path,
                 CAMO_CKPT_FORMAT);
        goto fail;
    }
    if (meta_i64(ck, "format_version", &ver, 1)) goto fail;
    if (ver > CAMO_CKPT_VERSION) {
        CAMO_ERR("%s: checkpoint format version %lld is newer than this camotrain (%d)", path,
                 (long long)ver, CAMO_CKPT_VERSION);
        goto fail;
    }
    if (meta_i64(ck, "epoch", &epoch, 1) || meta_i64(ck, "batch", &batch, 1) ||
        meta_i64(ck, "step", &step, 1) || meta_i64(ck, "best_epoch", &best_epoch, 0) ||
        meta_i64(ck, "bad_epochs", &bad, 0) || meta_i64(ck, "seed", &seed, 0))
        goto fail;
    ck->config_text = camo_st_meta(f, "config");
    ck->network_text = camo_st_meta(f, "network");
    if (!ck->network_text || !*ck->network_text) {
        CAMO_ERR("%s: checkpoint has no network description", path);
        goto fail;
    }
    ck->st.epoch = (int)epoch;
    ck->st.batch = (int)batch;
    ck->st.step = step;
    ck->st.best_epoch = (int)best_epoch;
    ck->st.bad_epochs = (int)bad;
    ck->seed = (uint64_t)seed;
    const char *bm = camo_st_meta(f, "best_metric"), *el = camo_st_meta(f, "elapsed_s");
    ck->st.best_metric = bm ? strtod(bm, NULL) : NAN;
    ck->st.elapsed_s = el ? strtod(el, NULL) : 0;
    const char *ls = camo_st_meta(f, "loss_scale");
    ck->st.loss_scale = ls ? strtod(ls, NULL) : 0;
    if (!(ck->st.loss_scale > 0 && ck->st.loss_scale < 1e300)) ck->st.loss_scale = 0;
    read_epoch_sums(ck);
    return ck;
fail:
    camo_ckpt_close(ck);
    return NULL;
}

void camo_ckpt_close(camo_ckpt *ck) {
    if (!ck) return;
    camo_st_close(ck->file);
    free(ck);
}

/* The tensor `name`, checked against p's shape and dtype. */
static const camo_st_tensor *find_checked(const camo_ckpt *ck, const camo_net *net,
                                          const camo_param *p, const char *name) {
    const camo_st_tensor *t = camo_st_find(ck->file, name);
    if (!t) {
        CAMO_ERR("%s: tensor '%s' of network '%s' is missing (checkpoint of another network?)",
                 ck->path, name, net->name);
        return NULL;
    }
    int same = t->ndim == p->ndim;
    for (int i = 0; same && i < p->ndim; i++) same = t->shape[i] == p->shape[i];
    if (!same) {
        char a[96], b[96];
        camo_shape_str(a, sizeof a, t->ndim, t->shape);
        camo_shape_str(b, sizeof b, p->ndim, p->shape);
        CAMO_ERR("%s: tensor '%s' has shape %s, network '%s' needs %s", ck->path, name, a,
                 net->name, b);
        return NULL;
    }
    camo_st_dtype want = p->kind == CAMO_PARAM_COUNTER ? CAMO_ST_I64 : CAMO_ST_F32;
    if (t->dtype != want && !(want == CAMO_ST_F32 && (t->dtype == CAMO_ST_F16 || t->dtype == CAMO_ST_BF16))) {
        CAMO_ERR("%s: tensor '%s' has dtype %s, expected %s", ck->path, name,
                 camo_st_dtype_name(t->dtype), camo_st_dtype_name(want));
        return NULL;
    }
    return t;
}

/* Reads tensor `name` into p's slice of `block` (NULL: p's own data). */
static int load_into(const camo_ckpt *ck, camo_net *net, camo_param *p, const char *name,
                     float *block) {
    const camo_st_tensor *t = find_checked(ck, net, p, name);
    if (!t) return -1;
    if (p->kind == CAMO_PARAM_COUNTER) {
        memcpy(p->counter, t->data, sizeof(int64_t));
        return 0;
    }
    float *host = camo_malloc(p->numel * sizeof(float));
    int rc = camo_st_read_f32(t, host);
    if (!rc) {
        float *dev = block ? block + (p->data - net->param_block) : p->data;
        camo_param_write(net, p, dev, host);
    }
    free(host);
    return rc;
}

static int known_tensor(const camo_net *net, const char *name) {
    if (!strncmp(name, "optim.", 6) || !strncmp(name, "ema.", 4)) return 1;
    for (int i = 0; i < net->n_params; i++)
        if (!strcmp(net->params[i].name, name)) return 1;
    return 0;
}

int camo_ckpt_load_weights(const camo_ckpt *ck, camo_net *net, int use_ema) {
    for (int i = 0; i < camo_st_count(ck->file); i++) {
        const char *name = camo_st_get(ck->file, i)->name;
        if (!known_tensor(net, name)) {
            CAMO_ERR("%s: tensor '%s' is not part of network '%s' (checkpoint of another "
                     "network?)", ck->path, name, net->name);
            return -1;
        }
    }
    int has_ema = use_ema && camo_st_meta(ck->file, "ema") && !strcmp(camo_st_meta(ck->file, "ema"), "1");
    for (int i = 0; i < net->n_params; i++) {
        camo_param *p = &net->params[i];
        char name[256];
        snprintf(name, sizeof name, "%s%s", has_ema && p->kind == CAMO_PARAM_WEIGHT ? "ema." : "", p->name);
        if (load_into(ck, net, p, name, NULL)) return -1;
    }
    return 0;
}

int camo_ckpt_load_optim(const camo_ckpt *ck, camo_net *net, camo_optim *opt) {
    const char *kind = camo_st_meta(ck->file, "optimizer");
    const char *mine = opt->type == CAMO_OPT_SGD ? "sgd" : "adamw";
    if (!kind || strcmp(kind, mine) != 0) {
        CAMO_ERR("%s: checkpoint optimizer is '%s', the config asks for '%s'", ck->path,
                 kind ? kind : "none", mine);
        return -1;
    }
    int64_t t = 0, ema = 0;
    if (meta_i64((camo_ckpt *)ck, "optimizer_t", &t, 1) || meta_i64((camo_ckpt *)ck, "ema", &ema, 0))
        return -1;
    opt->t = t;
    for (int i = 0; i < net->n_params; i++) {
        camo_param *p = &net->params[i];
        if (p->kind != CAMO_PARAM_WEIGHT) continue;
        char name[256];
        for (int s = 0; s < opt->n_slots; s++) {
            snprintf(name, sizeof name, "optim.%s.%s", opt->slot_name[s], p->name);
            if (load_into(ck, net, p, name, opt->slot[s])) return -1;
        }
        if (opt->ema && ema) {
            snprintf(name, sizeof name, "ema.%s", p->name);
            if (load_into(ck, net, p, name, opt->ema)) return -1;
        }
    }
    return 0;
}
