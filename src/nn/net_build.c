/* net_build.c: networks from a network file, a config's inline `model` group or a
 * checkpoint's saved text (the parser itself is net_parse.c), and group/prefix matching of
 * layer names. */
#include "nn/net_build.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libconfig.h>

#include "core/cfgutil.h"
#include "core/common.h"

/* The network group of a tree: the root of a network file, or a config's `model` group. */
static config_setting_t *network_group(config_t *cfg) {
    config_setting_t *root = config_root_setting(cfg);
    if (config_setting_get_member(root, "layers")) return root;
    config_setting_t *m = config_setting_get_member(root, "model");
    return m && config_setting_is_group(m) ? m : root;
}

camo_net *camo_net_build_from_text(const char *text, const char *source, camo_backend *be) {
    config_t cfg;
    config_init(&cfg);
    camo_net *net = NULL;
    if (!config_read_string(&cfg, text))
        CAMO_ERR("%s: network text, line %d: %s", source, config_error_line(&cfg),
                 config_error_text(&cfg));
    else
        net = camo_net_from_setting(network_group(&cfg), source, be, 0);
    config_destroy(&cfg);
    return net;
}

static char *tree_text(config_t *cfg) {
    char *text = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&text, &n);
    if (!f) CAMO_DIE("open_memstream failed");
    config_write(cfg, f);
    fclose(f);
    return text;
}

/* The text saved in checkpoints is the network tree with `classes` already set from
 * data.classes, so a checkpoint rebuilds the same network without the original files. */
camo_net *camo_net_build(const camo_net_source *src, camo_backend *be, char **network_text) {
    config_t cfg;
    config_init(&cfg);
    const char *source = src->config_path;
    int ok;
    if (src->inline_group) ok = config_read_string(&cfg, src->config_text) != 0;
    else { ok = cfg_read_file(&cfg, src->model_path) == 0; source = src->model_path; }
    camo_net *net = NULL;
    if (ok) {
        config_setting_t *g = network_group(&cfg);
        if (!src->model_only) { /* data.classes decides the head width */
            config_setting_t *k = config_setting_get_member(g, "classes");
            if (!k) k = config_setting_add(g, "classes", CONFIG_TYPE_INT);
            config_setting_set_int(k, src->classes);
        }
        /* parse the loaded tree where there is one: its settings know their file and line */
        if (src->inline_group)
            net = camo_net_from_setting(src->inline_group, source, be,
                                        src->model_only ? 0 : src->classes);
        else
            net = camo_net_from_setting(g, source, be, 0);
        if (net && network_text) *network_text = tree_text(&cfg);
    } else if (src->inline_group) {
        CAMO_ERR("%s: cannot re-read the config text", src->config_path);
    }
    config_destroy(&cfg);
    return net;
}

static int prefix_list_match(const char *list, const char *name) {
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", list);
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        size_t n = strlen(t);
        if (n && strncmp(name, t, n) == 0) return 1;
    }
    return 0;
}

int camo_net_matches(const camo_net *net, const char *spec, const char *name) {
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", spec);
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        int group = 0;
        for (int g = 0; g < net->n_groups; g++)
            if (!strcmp(net->group_name[g], t)) {
                group = 1;
                if (prefix_list_match(net->group_prefixes[g], name)) return 1;
            }
        if (!group && strncmp(name, t, strlen(t)) == 0) return 1;
    }
    return 0;
}
