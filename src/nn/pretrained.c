/* pretrained.c: init.weights: a PyTorch state dict (safetensors) loaded into a network by
 * name, checked whole before anything is written (see pretrained.h). Layout and dtype
 * conversion are the checkpoint loader's: camo_st_read_f32 (F16/BF16 -> F32) and
 * camo_param_set (PyTorch layout -> the net's, conv OIHW -> OHWI). */
#include "nn/pretrained.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "core/common.h"
#include "core/safetensors.h"

static int is_float(camo_st_dtype d) {
    return d == CAMO_ST_F32 || d == CAMO_ST_F16 || d == CAMO_ST_BF16;
}

/* Adds name to a report list (the first CAMO_PRETRAINED_LIST of *count). */
static void list_add(char *list, size_t n, int *count, const char *name) {
    if ((*count)++ >= CAMO_PRETRAINED_LIST) return;
    size_t k = strlen(list);
    snprintf(list + k, n - k, "%s%s", k ? ", " : "", name);
}

/* "a, b, c (+7 more)" of a list that holds the first names of `count` */
static void list_str(char *buf, size_t n, const char *list, int count) {
    if (count > CAMO_PRETRAINED_LIST)
        snprintf(buf, n, "%s (+%d more)", list, count - CAMO_PRETRAINED_LIST);
    else snprintf(buf, n, "%s", count ? list : "none");
}

/* Checks file tensor t (name = its name without the prefix) against p. 0, or -1 + error. */
static int check_tensor(const camo_net *net, const camo_pretrained_report *rep,
                        const camo_st_tensor *t, const camo_param *p) {
    if (!is_float(t->dtype)) {
        CAMO_ERR("init.weights: %s: tensor '%s' has dtype %s, which cannot be loaded into "
                 "parameter '%s' (F32 needed; F16 and BF16 are converted)", rep->path, t->name,
                 camo_st_dtype_name(t->dtype), p->name);
        return -1;
    }
    int same = t->ndim == p->ndim;
    for (int i = 0; same && i < p->ndim; i++) same = t->shape[i] == p->shape[i];
    if (same) return 0;
    char a[128], b[128];
    camo_shape_str(a, sizeof a, t->ndim, t->shape);
    camo_shape_str(b, sizeof b, p->ndim, p->shape);
    CAMO_ERR("init.weights: %s: tensor '%s' has shape %s, but '%s' of network '%s' is %s",
             rep->path, t->name, a, p->name, net->name, b);
    return -1;
}

/* A prefix that would make the file's names the network's: the file has "<X>name" for the
 * network's first tensor name; X into buf ("" if none). */
static void guess_prefix(const camo_net *net, const camo_st_file *f, char *buf, size_t n) {
    buf[0] = 0;
    const char *q = NULL;
    for (int i = 0; i < net->n_params && !q; i++)
        if (net->params[i].kind != CAMO_PARAM_COUNTER) q = net->params[i].name;
    if (!q) return;
    size_t lq = strlen(q);
    for (int i = 0; i < camo_st_count(f); i++) {
        const char *s = camo_st_get(f, i)->name;
        size_t ls = strlen(s);
        if (ls > lq && !strcmp(s + ls - lq, q) && s[ls - lq - 1] == '.') {
            snprintf(buf, n, "%.*s", (int)(ls - lq), s);
            return;
        }
    }
}

static void no_match_error(const camo_net *net, const camo_st_file *f,
                           const camo_pretrained_report *rep) {
    char guess[160], hint[256] = "";
    guess_prefix(net, f, guess, sizeof guess);
    if (guess[0] && strcmp(guess, rep->prefix))
        snprintf(hint, sizeof hint, "; init.prefix = \"%s\" would match", guess);
    const char *first = camo_st_count(f) ? camo_st_get(f, 0)->name : "(none)";
    CAMO_ERR("init.weights: %s: no tensor matches a parameter of network '%s' (init.prefix "
             "\"%s\"; %d of %d tensors start with it; the file has e.g. '%s', the network "
             "'%s')%s", rep->path, net->name, rep->prefix,
             rep->file_tensors - rep->outside_prefix, rep->file_tensors, first,
             net->n_params ? net->params[0].name : "(none)", hint);
}

/* Pairs file tensors with parameters: src[i] for net->params[i] (NULL: missing). */
static int match(camo_net *net, const camo_st_file *f, const camo_st_tensor **src,
                 camo_pretrained_report *rep) {
    size_t plen = strlen(rep->prefix);
    rep->file_tensors = camo_st_count(f);
    for (int i = 0; i < rep->file_tensors; i++) {
        const camo_st_tensor *t = camo_st_get(f, i);
        if (strncmp(t->name, rep->prefix, plen) != 0) { rep->outside_prefix++; continue; }
        const char *name = t->name + plen;
        camo_param *p = camo_net_find_param(net, name);
        if ((p && p->kind == CAMO_PARAM_COUNTER) || (!p && !is_float(t->dtype))) {
            rep->ignored++; /* num_batches_tracked and the like */
            continue;
        }
        if (!p) {
            list_add(rep->unexpected, sizeof rep->unexpected, &rep->n_unexpected, name);
            continue;
        }
        if (check_tensor(net, rep, t, p)) return -1;
        src[p - net->params] = t;
        rep->matched++;
        rep->converted += t->dtype != CAMO_ST_F32;
    }
    for (int i = 0; i < net->n_params; i++) {
        if (net->params[i].kind == CAMO_PARAM_COUNTER) continue;
        rep->network_tensors++;
        if (!src[i]) list_add(rep->missing, sizeof rep->missing, &rep->n_missing,
                              net->params[i].name);
    }
    return 0;
}

static int check_strict(const camo_net *net, const camo_pretrained_report *rep) {
    if (!rep->n_missing && !rep->n_unexpected) return 0;
    char m[sizeof rep->missing + 32], u[sizeof rep->unexpected + 32];
    list_str(m, sizeof m, rep->missing, rep->n_missing);
    list_str(u, sizeof u, rep->unexpected, rep->n_unexpected);
    CAMO_ERR("init.weights: %s: init.strict = true, but the file does not match network '%s' "
             "exactly: %d missing (%s), %d unexpected (%s)", rep->path, net->name,
             rep->n_missing, m, rep->n_unexpected, u);
    return -1;
}

static int write_all(camo_net *net, const camo_st_tensor **src) {
    for (int i = 0; i < net->n_params; i++) {
        if (!src[i]) continue;
        camo_param *p = &net->params[i];
        float *host = camo_malloc((p->numel ? p->numel : 1) * sizeof(float));
        int rc = camo_st_read_f32(src[i], host);
        if (!rc) camo_param_set(net, p, host);
        free(host);
        if (rc) return -1;
    }
    return 0;
}

int camo_net_load_pretrained(camo_net *net, const char *path, const char *prefix, int strict,
                             camo_pretrained_report *rep_out) {
    camo_pretrained_report rep;
    memset(&rep, 0, sizeof rep);
    snprintf(rep.path, sizeof rep.path, "%s", path);
    snprintf(rep.prefix, sizeof rep.prefix, "%s", prefix ? prefix : "");
    if (access(path, R_OK) != 0) {
        CAMO_ERR("init.weights: cannot read '%s': %s (tools/convert_weights.py makes one from "
                 "a PyTorch .pth/.bin)", path, strerror(errno));
        return -1;
    }
    camo_st_file *f = camo_st_open(path);
    if (!f) {
        char msg[512]; /* copied: CAMO_ERR rewrites the buffer camo_last_error returns */
        snprintf(msg, sizeof msg, "%s", camo_last_error());
        CAMO_ERR("init.weights: %s", msg);
        return -1;
    }
    const camo_st_tensor **src = camo_calloc((size_t)net->n_params + 1, sizeof *src);
    int rc = match(net, f, src, &rep);
    if (!rc && rep.matched == 0) {
        no_match_error(net, f, &rep);
        rc = -1;
    }
    if (!rc && strict) rc = check_strict(net, &rep);
    if (!rc) rc = write_all(net, src);
    free(src);
    camo_st_close(f);
    if (rep_out) *rep_out = rep;
    return rc;
}

void camo_pretrained_print(const camo_pretrained_report *rep, const char *net_name) {
    char extra[256] = "", m[sizeof rep->missing + 32], u[sizeof rep->unexpected + 32];
    size_t k = 0;
    if (rep->outside_prefix)
        k += (size_t)snprintf(extra + k, sizeof extra - k, "; %d without the prefix not considered",
                              rep->outside_prefix);
    if (rep->ignored && k < sizeof extra)
        k += (size_t)snprintf(extra + k, sizeof extra - k, "; %d integer tensors "
                              "(num_batches_tracked) ignored", rep->ignored);
    if (rep->converted && k < sizeof extra)
        snprintf(extra + k, sizeof extra - k, "; %d converted from F16/BF16", rep->converted);
    camo_info("init.weights: matched %d of %d tensors of %s from %s (prefix \"%s\"%s)",
              rep->matched, rep->network_tensors, net_name, rep->path, rep->prefix, extra);
    list_str(m, sizeof m, rep->missing, rep->n_missing);
    list_str(u, sizeof u, rep->unexpected, rep->n_unexpected);
    camo_info("init.weights: missing %d (kept as initialised): %s", rep->n_missing, m);
    camo_info("init.weights: unexpected %d (not used): %s", rep->n_unexpected, u);
}
