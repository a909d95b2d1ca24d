/* cli_inspect.c: `camotrain inspect CKPT`: tensors, shapes, dtypes and metadata of any
 * safetensors file (camotrain checkpoints get their training position summarised). */
#include <stdio.h>
#include <string.h>

#include "camo/checkpoint.h"
#include "camo/cli.h"
#include "camo/common.h"
#include "camo/safetensors.h"

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
    fputs("usage: camotrain inspect CHECKPOINT [--hash] [--meta KEY]\n"
          "  lists tensors (name, dtype, shape; --hash adds a content hash) and metadata;\n"
          "  --meta KEY prints one metadata value (e.g. config, network)\n", f);
}

int cli_inspect(int argc, char **argv) {
    const char *path = NULL, *meta_key = NULL;
    int hash = 0;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--meta") && i + 1 < argc) meta_key = argv[++i];
        else if (!strcmp(argv[i], "--hash")) hash = 1;
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
