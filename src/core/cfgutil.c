/* cfgutil.c: checked libconfig reads with file:line:key messages. */
#include "core/cfgutil.h"

#include <errno.h>
#include <libgen.h>
#include <math.h>
#include <string.h>

#include "core/common.h"

static _Thread_local const char *default_source;

void cfg_set_default_source(const char *name) { default_source = name; }

/* "a.b.c" of a setting, for settings that came from --set rather than from a file */
static void dotted_path(const config_setting_t *s, char *buf, size_t n) {
    const char *parts[32];
    int k = 0;
    for (; s && k < 32; s = config_setting_parent(s))
        if (config_setting_name(s)) parts[k++] = config_setting_name(s);
    buf[0] = 0;
    for (int i = k - 1; i >= 0; i--) {
        size_t len = strlen(buf);
        snprintf(buf + len, n - len, "%s%s", i == k - 1 ? "" : ".", parts[i]);
    }
}

const char *cfg_where(const config_setting_t *s) {
    static _Thread_local char buf[512];
    const char *f = s ? config_setting_source_file(s) : NULL;
    int line = s ? (int)config_setting_source_line(s) : 0;
    if (!f) f = default_source ? default_source : "<config>";
    if (s && line == 0 && config_setting_name(s)) { /* added by an override */
        char path[256];
        dotted_path(s, path, sizeof path);
        snprintf(buf, sizeof buf, "%s: --set %s", f, path);
    } else {
        snprintf(buf, sizeof buf, "%s:%d", f, line);
    }
    return buf;
}

static const config_setting_t *member(const config_setting_t *g, const char *key) {
    return g ? config_setting_get_member(g, key) : NULL;
}

int cfg_int(const config_setting_t *g, const char *key, int *out) {
    const config_setting_t *s = member(g, key);
    if (!s) return 1;
    int t = config_setting_type(s);
    if (t == CONFIG_TYPE_INT || t == CONFIG_TYPE_INT64) {
        long long v = config_setting_get_int64(s);
        if (v < -2147483647LL || v > 2147483647LL) {
            CAMO_ERR("%s: key '%s': %lld is out of range", cfg_where(s), key, v);
            return -1;
        }
        *out = (int)v;
        return 0;
    }
    CAMO_ERR("%s: key '%s' must be an integer", cfg_where(s), key);
    return -1;
}

int cfg_float(const config_setting_t *g, const char *key, double *out) {
    const config_setting_t *s = member(g, key);
    if (!s) return 1;
    int t = config_setting_type(s);
    if (t == CONFIG_TYPE_FLOAT) *out = config_setting_get_float(s);
    else if (t == CONFIG_TYPE_INT || t == CONFIG_TYPE_INT64) *out = (double)config_setting_get_int64(s);
    else {
        CAMO_ERR("%s: key '%s' must be a number", cfg_where(s), key);
        return -1;
    }
    if (!isfinite(*out)) {
        CAMO_ERR("%s: key '%s' must be finite", cfg_where(s), key);
        return -1;
    }
    return 0;
}

int cfg_bool(const config_setting_t *g, const char *key, int *out) {
    const config_setting_t *s = member(g, key);
    if (!s) return 1;
    if (config_setting_type(s) != CONFIG_TYPE_BOOL) {
        CAMO_ERR("%s: key '%s' must be true or false", cfg_where(s), key);
        return -1;
    }
    *out = config_setting_get_bool(s);
    return 0;
}

int cfg_string(const config_setting_t *g, const char *key, const char **out) {
    const config_setting_t *s = member(g, key);
    if (!s) return 1;
    if (config_setting_type(s) != CONFIG_TYPE_STRING) {
        CAMO_ERR("%s: key '%s' must be a string", cfg_where(s), key);
        return -1;
    }
    *out = config_setting_get_string(s);
    return 0;
}

static int need(int rc, const config_setting_t *g, const char *key) {
    if (rc == 1) CAMO_ERR("%s: missing key '%s'", cfg_where(g), key);
    return rc ? -1 : 0;
}

int cfg_need_int(const config_setting_t *g, const char *key, int *out) {
    return need(cfg_int(g, key, out), g, key);
}

int cfg_need_string(const config_setting_t *g, const char *key, const char **out) {
    return need(cfg_string(g, key, out), g, key);
}

int cfg_check_keys(const config_setting_t *g, const char *const *allowed, const char *what) {
    int n = config_setting_length(g);
    for (int i = 0; i < n; i++) {
        const config_setting_t *s = config_setting_get_elem(g, (unsigned)i);
        const char *name = config_setting_name(s);
        if (!name) continue;
        int ok = 0;
        for (const char *const *a = allowed; *a && !ok; a++) ok = strcmp(*a, name) == 0;
        if (!ok) {
            CAMO_ERR("%s: %s: unknown key '%s'", cfg_where(s), what, name);
            return -1;
        }
    }
    return 0;
}

int cfg_read_file(config_t *cfg, const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) {
        CAMO_ERR("%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    fclose(f);
    char *copy = camo_strdup(path);
    config_set_include_dir(cfg, dirname(copy));
    free(copy);
    int ok = config_read_file(cfg, path); /* by name, so settings know their file */
    if (!ok) {
        const char *ef = config_error_file(cfg);
        CAMO_ERR("%s:%d: %s", ef ? ef : path, config_error_line(cfg), config_error_text(cfg));
        return -1;
    }
    return 0;
}
