/* cfgutil.h: typed, checked reads of libconfig settings. Every error names the file, the
 * line and the key, and unknown keys are errors (a typo must not be silently ignored). */
#ifndef CAMO_CFGUTIL_H
#define CAMO_CFGUTIL_H

#include <libconfig.h>

/* "file:line" of a setting (static buffer per thread). */
const char *cfg_where(const config_setting_t *s);
/* File name cfg_where gives settings read from a string (NULL: "<config>"); per thread. */
void cfg_set_default_source(const char *name);

/* Each getter: 0 = found and valid, 1 = absent (value left as is), -1 = error (set). */
int cfg_int(const config_setting_t *g, const char *key, int *out);
int cfg_float(const config_setting_t *g, const char *key, double *out);
int cfg_bool(const config_setting_t *g, const char *key, int *out);
int cfg_string(const config_setting_t *g, const char *key, const char **out);

/* Same, but absence is an error too. */
int cfg_need_int(const config_setting_t *g, const char *key, int *out);
int cfg_need_string(const config_setting_t *g, const char *key, const char **out);

/* Error if the group has a key not in the NULL-terminated list `allowed`; `what` names the
 * group in the message ("layer 'enc1'"). */
int cfg_check_keys(const config_setting_t *g, const char *const *allowed, const char *what);

/* Reads a file into `cfg` with includes relative to the file's folder. -1 + error naming
 * file:line on a syntax error or a missing file. */
int cfg_read_file(config_t *cfg, const char *path);

#endif
