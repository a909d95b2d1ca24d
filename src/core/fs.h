/* fs.h: file-system helpers: joining paths, file names (stem, image extensions), sorted
 * listings of a folder's image files, whole-file reads and making folders. Used by the data
 * sets (data/), evaluation of saved predictions (train/eval_pred.c) and the command line. */
#ifndef CAMO_FS_H
#define CAMO_FS_H

#include <stddef.h>

/* dir + "/" + name, newly allocated; no '/' doubled when dir ends in one. An empty (or NULL)
 * dir gives name, an empty (or NULL) name gives dir. */
char *camo_path_join(const char *dir, const char *name);
/* The file name of a path: what follows its last '/' (the whole path when it has none). */
const char *camo_path_name(const char *path);
/* The length of a file name's stem: up to its last '.', the whole name when it has no '.'
 * or only a leading one (".hidden"). camo_stem: the stem as a new string. */
size_t camo_stem_len(const char *name);
char *camo_stem(const char *name);
/* 1 when name has an image extension we decode: .jpg .jpeg .png .bmp in any case (a name
 * that is only an extension, ".png", has none). */
int camo_is_image_name(const char *name);
int camo_is_dir(const char *path);
int camo_is_file(const char *path); /* a regular file (a link to one counts) */

/* What camo_list_images keeps besides image names that do not start with '.'. */
enum {
    CAMO_LIST_HIDDEN = 1, /* names starting with '.' too */
    CAMO_LIST_FILES = 2,  /* only regular files (links followed): not a folder "x.png" */
};
/* The image file names (camo_is_image_name) in folder dir, sorted by strcmp (the same order
 * on every machine), as a new array of new strings for camo_free_names; *n of them, none
 * being no error. NULL + error "cannot open [WHAT ]folder 'DIR': REASON" when the folder
 * cannot be read (what: "prediction", ... or NULL). */
char **camo_list_images(const char *dir, const char *what, int flags, int *n);
void camo_free_names(char **names, int n);

/* Reads file path whole into *buf (*cap bytes, replaced by a larger block when too small:
 * the caller's buffer is reused across reads and freed by the caller), followed by a NUL
 * byte; *len = the file's size. max: the largest size accepted (0: any). 0, or -1 + error
 * naming the file ("cannot read 'PATH': REASON", "'PATH' is too large (N bytes)"). */
int camo_read_file(const char *path, size_t max, void **buf, size_t *cap, size_t *len);

/* Makes folder path and the missing ones above it (existing ones are fine); 0, or -1 +
 * error "cannot create folder 'PATH': REASON". */
int camo_mkdirs(const char *path);

#endif
