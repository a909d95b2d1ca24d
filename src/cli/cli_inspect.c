/* cli_inspect.c: `camotrain inspect CKPT`: tensors, shapes, dtypes and metadata of any
 * safetensors file (camotrain checkpoints get their training position summarised). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn/checkpoint.h"
#include "cli/cli.h"
#include "core/common.h"
#include "core/safetensors.h"
#include "train/tensorboard.h"

/* 64-bit FNV-1a of a tensor's bytes: compare tensors across files (bitwise resume tests) */
static uint64_t tensor_hash(const camo_st_tensor *t) {
    uint64_t h = 1469598103934665603ull;
    const uint8_t *p = t->data;
    for (size_t i = 0; i < t->nbytes; i++) { h ^= p[i]; h *= 1099511628211ull; }
    return h;
}

static void print_shape(const camo_st_tensor *t, int hash) {
    char buf[128];
    size_t k = (size_t)snprintf(buf, sizeof buf, "[");
    for (int d = 0; d < t->ndim && k < sizeof buf; d++)
        k += (size_t)snprintf(buf + k, sizeof buf - k, d ? ", %lld" : "%lld", (long long)t->shape[d]);
    if (k < sizeof buf) snprintf(buf + k, sizeof buf - k, "]");
    if (hash) printf("  %-56s %-5s %-22s %016llx\n", t->name, camo_st_dtype_name(t->dtype), buf,
                     (unsigned long long)tensor_hash(t));
    else printf("  %-56s %-5s %-22s\n", t->name, camo_st_dtype_name(t->dtype), buf);
}

/* Metadata values can be whole config files: show the first line and the size. */
static void print_meta(const char *key, const char *value) {
    const char *nl = strchr(value, '\n');
    if (!nl) { printf("  %-16s %s\n", key, value); return; }
    printf("  %-16s %.*s ... (%zu bytes; see --meta %s)\n", key, (int)(nl - value), value,
           strlen(value), key);
}

static void inspect_usage(FILE *f) {
    fputs("usage: camotrain inspect CHECKPOINT [--hash] [--meta KEY] [--compare OTHER]\n"
          "       camotrain inspect --events RUN/events.out.tfevents.*\n"
          "  lists tensors (name, dtype, shape; --hash adds a content hash) and metadata;\n"
          "  --meta KEY prints one metadata value (e.g. config, network);\n"
          "  --compare OTHER prints how far CHECKPOINT's F32 tensors are from OTHER's\n"
          "  (relative L2 over all of them, and the worst tensor): e.g. a GPU run against\n"
          "  a CPU run, or 4 replicas against 1\n"
          "  --events FILE checks every record's CRCs of a TensorBoard events file and\n"
          "  prints one line per value: step, tag, value (text: its size)\n", f);
}

/* sum of squared differences and of squared reference values over one F32 tensor pair */
static int tensor_diff(const camo_st_tensor *a, const camo_st_tensor *b, double *d2, double *b2) {
    float *x = malloc(a->numel * sizeof(float) + 1), *y = malloc(b->numel * sizeof(float) + 1);
    int rc = !x || !y || camo_st_read_f32(a, x) || camo_st_read_f32(b, y) ? -1 : 0;
    *d2 = *b2 = 0;
    for (int64_t i = 0; rc == 0 && i < a->numel; i++) {
        double d = (double)x[i] - y[i];
        *d2 += d * d;
        *b2 += (double)y[i] * y[i];
    }
    free(x), free(y);
    return rc;
}

static int same_shape(const camo_st_tensor *a, const camo_st_tensor *b) {
    if (a->ndim != b->ndim || a->dtype != b->dtype) return 0;
    for (int d = 0; d < a->ndim; d++)
        if (a->shape[d] != b->shape[d]) return 0;
    return 1;
}

/* --compare: relative L2 distance of A from B over every F32 tensor both hold */
static int compare_files(const char *pa, const camo_st_file *a, const char *pb) {
    camo_st_file *b = camo_st_open(pb);
    if (!b) {
        fprintf(stderr, "camotrain: error: %s\n", camo_last_error());
        return CAMO_ERR_INPUT;
    }
    double d2 = 0, b2 = 0, worst = 0;
    const char *worst_name = "-";
    int n = 0, differ = 0;
    for (int i = 0; i < camo_st_count(a); i++) {
        const camo_st_tensor *ta = camo_st_get(a, i), *tb = camo_st_find(b, ta->name);
        if (ta->dtype != CAMO_ST_F32) continue;
        if (!tb || !same_shape(ta, tb)) {
            printf("  %-56s only in %s (or another shape there)\n", ta->name, pa);
            differ++;
            continue;
        }
        double td2, tb2;
        if (tensor_diff(ta, tb, &td2, &tb2)) {
            fprintf(stderr, "camotrain: error: %s: %s: cannot read\n", pa, ta->name);
            camo_st_close(b);
            return CAMO_ERR_INPUT;
        }
        double rel = sqrt(td2 / (tb2 > 0 ? tb2 : 1));
        if (rel > worst || n == 0) worst = rel, worst_name = ta->name;
        d2 += td2, b2 += tb2, n++;
    }
    printf("%d F32 tensors compared, %d unmatched\n", n, differ);
    printf("worst tensor: %s, relative L2 %.3g\n", worst_name, worst);
    printf("relative L2 difference: %.3g\n", sqrt(d2 / (b2 > 0 ? b2 : 1)));
    camo_st_close(b);
    return CAMO_OK;
}

/* --events: one line per summary value; the reader checks both CRCs of every record */
static int print_event(const camo_tb_event *ev, void *user) {
    (void)user;
    if (ev->kind == CAMO_TB_VERSION) printf("version %s\n", ev->text);
    else if (ev->kind == CAMO_TB_SCALAR) printf("%lld %s %.9g\n", (long long)ev->step, ev->tag,
                                                ev->value);
    else if (ev->kind == CAMO_TB_SESSION)
        printf("%lld session_log status %d%s\n", (long long)ev->step, (int)ev->value,
               ev->value == 1 ? " (START)" : "");
    else printf("%lld %s text (%zu bytes)\n", (long long)ev->step, ev->tag, strlen(ev->text));
    return 0;
}

static int inspect_events(const char *path) {
    long n = camo_tb_read(path, print_event, NULL);
    if (n < 0) {
        fprintf(stderr, "camotrain: error: %s\n", camo_last_error());
        return CAMO_ERR_INPUT;
    }
    printf("%ld records, every length and data CRC good\n", n);
    return CAMO_OK;
}

int cli_inspect(int argc, char **argv) {
    const char *path = NULL, *meta_key = NULL, *other = NULL;
    int hash = 0;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--meta") && i + 1 < argc) meta_key = argv[++i];
        else if (!strcmp(argv[i], "--hash")) hash = 1;
        else if (!strcmp(argv[i], "--compare") && i + 1 < argc) other = argv[++i];
        else if (!strcmp(argv[i], "--events") && i + 1 < argc) return inspect_events(argv[i + 1]);
        else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            inspect_usage(stdout);
            return CAMO_OK;
        }
        else if (argv[i][0] != '-' && !path) path = argv[i];
        else { fprintf(stderr, "camotrain inspect: unexpected argument '%s'\n", argv[i]); return CAMO_ERR_INPUT; }
    }
    if (!path) {
        inspect_usage(stderr);
        return CAMO_ERR_INPUT;
    }
    camo_st_file *f = camo_st_open(path);
    if (!f) {
        fprintf(stderr, "camotrain: error: %s\n", camo_last_error());
        return CAMO_ERR_INPUT;
    }
    if (other) {
        int rc = compare_files(path, f, other);
        camo_st_close(f);
        return rc;
    }
    if (meta_key) { /* print one metadata value whole (e.g. the saved config) */
        const char *v = camo_st_meta(f, meta_key);
        if (v) fputs(v, stdout);
        else fprintf(stderr, "camotrain: error: %s: no metadata '%s'\n", path, meta_key);
        camo_st_close(f);
        return v ? CAMO_OK : CAMO_ERR_INPUT;
    }
    int64_t values = 0;
    printf("%s: %d tensors\n", path, camo_st_count(f));
    for (int i = 0; i < camo_st_count(f); i++) {
        const camo_st_tensor *t = camo_st_get(f, i);
        values += t->numel;
        print_shape(t, hash);
    }
    printf("%lld values\nmetadata:\n", (long long)values);
    for (int i = 0; i < camo_st_meta_count(f); i++) {
        const char *k, *v;
        camo_st_meta_get(f, i, &k, &v);
        print_meta(k, v);
    }
    camo_st_close(f);
    return CAMO_OK;
}
