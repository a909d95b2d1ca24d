/* net_build.h: a network from where a run describes it (a network file, a config's inline
 * `model` group, or the text saved in a checkpoint), and name matching against the
 * network's groups (stage freezing). */
#ifndef CAMO_NET_BUILD_H
#define CAMO_NET_BUILD_H

#include "nn/net.h"

/* Where a run's network comes from (train/config.c camo_config_net_source fills it). */
typedef struct camo_net_source {
    const char *config_path;  /* the config file, for messages */
    const char *config_text;  /* its text after overrides (re-read for an inline network) */
    const struct config_setting_t *inline_group; /* the network inside the config, or NULL */
    const char *model_path;   /* else this network file */
    int model_only;           /* the config is itself a network file: keep its `classes` */
    int classes;              /* data.classes: decides the head width unless model_only */
} camo_net_source;

/* Builds the network of src on be. *network_text (may be NULL) receives a self-contained
 * text of it (saved in checkpoints); free() it. NULL + error naming file:line. */
camo_net *camo_net_build(const camo_net_source *src, camo_backend *be, char **network_text);
/* The network saved in a checkpoint's metadata; `source` names it in errors. */
camo_net *camo_net_build_from_text(const char *network_text, const char *source,
                                   camo_backend *be);

/* Is layer-name `name` covered by `spec`: comma-separated group names (the network's
 * `groups`, each a list of prefixes) or layer-name prefixes? */
int camo_net_matches(const camo_net *net, const char *spec, const char *name);

#endif
