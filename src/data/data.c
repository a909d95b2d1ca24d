/* data.c: data sets on disk: the layouts (COD10K, CAMO, CARLA lane, ADE20K, images/ + masks/
 * folders), detecting which one a folder holds, pairing images with masks (by listing the
 * folders or from metadata.json), the class-id map of mask values. Reading the samples is
 * base.c's and augment.c's. */
#include "data/data.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <string.h>
#include <strings.h>

#include <cjson/cJSON.h>

#include "core/common.h"
#include "core/fs.h"
#include "data_internal.h"

/* ---------------------------------------------------------------- pairing folders */

static int stem_cmp(const char *a, const char *b) {
    size_t la = camo_stem_len(a), lb = camo_stem_len(b);
    int c = memcmp(a, b, la < lb ? la : lb);
    return c ? c : (la > lb) - (la < lb);
}

static int cmp_name(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int cmp_stem(const void *a, const void *b) {
    return stem_cmp(*(char *const *)a, *(char *const *)b);
}

/* Masks sorted by stem, ties (a.png, a.bmp) by name: the same pairing whatever readdir's order. */
static int cmp_stem_name(const void *a, const void *b) {
    int c = cmp_stem(a, b);
    return c ? c : cmp_name(a, b);
}

static void add_pair(camo_dataset *ds, int *cap, char *img, char *mask) {
    if (ds->n == *cap) {
        *cap = *cap ? 2 * *cap : 256;
        ds->images = camo_realloc(ds->images, (size_t)*cap * sizeof *ds->images);
        ds->masks = camo_realloc(ds->masks, (size_t)*cap * sizeof *ds->masks);
    }
    ds->images[ds->n] = img;
    ds->masks[ds->n++] = mask;
}

/* The mask of image `name`: same stem, or stem + suffix (CARLA's "_label"); NULL if none. */
static char **find_mask(char **masks, int nm, const char *name, const char *suffix) {
    if (!nm) return NULL;
    char **m = bsearch(&name, masks, (size_t)nm, sizeof *masks, cmp_stem);
    if (m || !suffix) return m;
    size_t ls = camo_stem_len(name), lx = strlen(suffix);
    char *key = camo_malloc(ls + lx + 3);
    memcpy(key, name, ls);
    memcpy(key + ls, suffix, lx);
    memcpy(key + ls + lx, ".x", 3); /* a stand-in extension: only the stem is compared */
    m = bsearch(&key, masks, (size_t)nm, sizeof *masks, cmp_stem);
    free(key);
    return m;
}

/* COD10K-v3's Image/ folders also hold non-camouflaged pictures without masks. */
static int is_noncam(const char *name) {
    return strstr(name, "-NonCAM-") != NULL || strstr(name, "-BG-") != NULL;
}

/* Pairs every image of img_dir with its mask in mask_dir. Images without a mask: COD10K's
 * non-camouflaged pictures are skipped and counted (`unmasked_ok`); any other is an error
 * naming it (a warning when skip_bad). */
static int pair_files(camo_dataset *ds, const char *img_dir, const char *mask_dir,
                      int unmasked_ok, const char *suffix) {
    int ni, nm, cap = 0, unmasked = 0, rc = 0;
    char **imgs = camo_list_images(img_dir, NULL, 0, &ni);
    if (!imgs) return -1;
    char **masks = camo_list_images(mask_dir, NULL, 0, &nm);
    if (!masks) { camo_free_names(imgs, ni); return -1; }
    qsort(masks, (size_t)nm, sizeof *masks, cmp_stem_name);
    for (int i = 0; i < ni && !rc; i++) {
        char **m = is_noncam(imgs[i]) && unmasked_ok ? NULL : find_mask(masks, nm, imgs[i], suffix);
        if (m) {
            add_pair(ds, &cap, camo_path_join(img_dir, imgs[i]), camo_path_join(mask_dir, *m));
        } else if (unmasked_ok && is_noncam(imgs[i])) {
            unmasked++;
        } else if (ds->skip_bad) {
            camo_warn("skipping image '%s/%s': no mask with that name in '%s'", img_dir, imgs[i],
                      mask_dir);
        } else {
            CAMO_ERR("image '%s/%s' has no mask with the same name in '%s'", img_dir, imgs[i],
                     mask_dir);
            rc = -1;
        }
    }
    if (unmasked)
        camo_info("data: %s: %d camouflaged image/mask pairs used; %d images without a mask "
                  "(non-camouflaged -NonCAM-/-BG- pictures) skipped", img_dir, ds->n, unmasked);
    if (!rc && ds->n == 0) {
        CAMO_ERR("no images with masks in '%s' (masks looked for in '%s')", img_dir, mask_dir);
        rc = -1;
    }
    camo_free_names(imgs, ni);
    camo_free_names(masks, nm);
    return rc;
}

/* ---------------------------------------------------------------- layouts */

/* Where a layout keeps a split's images and masks. */
typedef struct {
    const char *name;
    const char *img_fmt, *mask_fmt; /* "%s/%s/Image": root, split */
    int unmasked_ok;                /* images without masks are expected (COD10K) */
    const char *mask_suffix;        /* a mask may be named stem + suffix */
} layout;

static const layout layouts[] = {
    {"cod10k", "%s/%s/Image", "%s/%s/GT_Object", 1, NULL},
    {"folders", "%s/%s/images", "%s/%s/masks", 0, NULL},
    {"camo", "%s/Images/%s", "%s/GT", 0, NULL},
    {"ade20k", "%s/images/%s", "%s/annotations/%s", 0, NULL},
    {"carla", "%s/%s", "%s/%s_label", 0, "_label"},
};
enum { N_LAYOUTS = sizeof layouts / sizeof *layouts };

static char *layout_path(const char *fmt, const char *root, const char *split) {
    size_t n = strlen(fmt) + strlen(root) + strlen(split) + 1;
    char *p = camo_malloc(n);
    snprintf(p, n, fmt, root, split);
    /* split "": ROOT//images -> ROOT/images */
    for (char *s = strstr(p, "//"); s; s = strstr(s, "//")) memmove(s, s + 1, strlen(s));
    size_t l = strlen(p);
    if (l > 1 && p[l - 1] == '/') p[l - 1] = 0;
    return p;
}

static int layout_present(const layout *L, const char *root, const char *split) {
    char *i = layout_path(L->img_fmt, root, split), *m = layout_path(L->mask_fmt, root, split);
    int ok = camo_is_dir(i) && camo_is_dir(m) && strcmp(i, m) != 0;
    free(i);
    free(m);
    return ok;
}

/* The names users give one split across the layouts: "Train" in our configs is "train" in
 * CARLA lane and "training" in ADE20K; Roboflow and HuggingFace exports (seed 003) call the
 * validation split "valid". Tried in this order. */
enum { N_ALIASES = 10 };
static const char *const split_aliases[][N_ALIASES] = {
    {"Train", "train", "training", "TrainDataset", NULL},
    {"Test", "test", "val", "valid", "validation", "Val", "Valid", "Validation", "TestDataset",
     NULL},
};
enum { N_GROUPS = sizeof split_aliases / sizeof *split_aliases };

/* The alias group a split name belongs to (any case); -1 when none. */
static int alias_group(const char *split) {
    for (int g = 0; g < N_GROUPS; g++)
        for (int k = 0; k < N_ALIASES && split_aliases[g][k]; k++)
            if (!strcasecmp(split, split_aliases[g][k])) return g;
    return -1;
}

/* The split folder name under which layout L exists in root: split itself, else a name of
 * the same alias group; NULL when none. */
static const char *resolve_split(const layout *L, const char *root, const char *split) {
    if (layout_present(L, root, split)) return split;
    int g = alias_group(split);
    for (int k = 0; g >= 0 && k < N_ALIASES && split_aliases[g][k]; k++)
        if (layout_present(L, root, split_aliases[g][k])) return split_aliases[g][k];
    return NULL;
}

/* Only the suffixes of the layouts (not guesses like "_mask"): eval --pred pairs exactly
 * the masks training would pair. */
size_t camo_mask_image_stem_len(const char *mask_name) {
    size_t ls = camo_stem_len(mask_name);
    for (int i = 0; i < N_LAYOUTS; i++) {
        const char *sx = layouts[i].mask_suffix;
        size_t lx = sx ? strlen(sx) : 0;
        if (lx && ls > lx && !memcmp(mask_name + ls - lx, sx, lx)) return ls - lx;
    }
    return ls;
}

static const layout *find_layout(const char *name) {
    for (int i = 0; i < N_LAYOUTS; i++)
        if (!strcmp(layouts[i].name, name)) return &layouts[i];
    return NULL;
}

/* "auto": the first layout present in root for this split; NULL + error when none. */
static const layout *detect_layout(const char *root, const char *split, const char **real) {
    for (int i = 0; i < N_LAYOUTS; i++) {
        *real = resolve_split(&layouts[i], root, split);
        if (!*real) continue;
        camo_info("data: %s (split '%s'): detected the %s layout", root, *real, layouts[i].name);
        return &layouts[i];
    }
    char *base = camo_path_join(root, split);
    if (!camo_is_dir(root))
        CAMO_ERR("cannot open folder '%s': %s", base, strerror(ENOENT));
    else
        CAMO_ERR("cannot detect the layout of data folder '%s' for split '%s': expected one of "
                 "SPLIT/Image + SPLIT/GT_Object (cod10k), SPLIT/images + SPLIT/masks "
                 "(folders), Images/SPLIT + GT (camo), images/SPLIT + annotations/SPLIT "
                 "(ade20k), SPLIT + SPLIT_label (carla); set data.format to name one", base,
                 split);
    free(base);
    return NULL;
}

/* ---------------------------------------------------------------- metadata.json */

/* ROOT/metadata.json, when present, lists a split's files instead of the folder listing
 * (seed 003's SegFormer layout), in either of two forms (docs/data.md):
 *   {"train": [ENTRY, ...], "valid": [ENTRY, ...], ...}      other keys are ignored
 *   [{"image": PATH, "mask": PATH, "split": "train"}, ...]
 * ENTRY is an image PATH or {"image": PATH, "mask": PATH}; without a mask, the mask is the
 * image's by stem in the split's mask folder, as when pairing folders. A PATH with a '/' is
 * relative to ROOT (or absolute); a bare file name is in the split's image (mask) folder. */

typedef struct {
    const char *file, *root, *img_dir, *mask_dir, *suffix; /* file: for messages */
    camo_dataset *ds;
    int cap;       /* of ds's arrays */
    char **masks;  /* the mask folder, listed on first need (entries without "mask") */
    int nm;        /* -1: not listed yet */
} meta_ctx;

/* The parsed file; NULL + error naming the file and the line where parsing stopped. */
static cJSON *meta_parse(const char *path) {
    void *buf = NULL;
    size_t cap = 0, len;
    if (camo_read_file(path, 0, &buf, &cap, &len)) {
        free(buf);
        return NULL;
    }
    const char *text = buf, *end = NULL;
    cJSON *j = cJSON_ParseWithOpts(text, &end, 1);
    if (!j) {
        int line = 1;
        for (const char *p = text; end && p < end; p++) line += *p == '\n';
        CAMO_ERR("%s:%d: not valid JSON", path, line);
    }
    free(buf);
    return j;
}

/* The split an element names: an object key, or an array entry's "split". */
static const char *meta_split_of(const cJSON *e, int array_form) {
    if (!array_form) return e->string;
    const cJSON *s = cJSON_IsObject(e) ? cJSON_GetObjectItemCaseSensitive(e, "split") : NULL;
    return cJSON_IsString(s) ? s->valuestring : NULL;
}

/* One of the two forms; else an error naming the file and the first entry that fits neither. */
static int meta_check_form(const cJSON *j, const char *file) {
    if (cJSON_IsObject(j)) return 0;
    if (!cJSON_IsArray(j)) {
        CAMO_ERR("%s: expected {\"SPLIT\": [files], ...} or [{\"image\": PATH, \"mask\": PATH, "
                 "\"split\": SPLIT}, ...]", file);
        return -1;
    }
    int i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, j) {
        if (!meta_split_of(e, 1)) {
            CAMO_ERR("%s: entry %d: expected {\"image\": PATH, \"mask\": PATH, \"split\": SPLIT}",
                     file, i);
            return -1;
        }
        i++;
    }
    return 0;
}

/* The name the metadata gives split folder `real`: the same name, else one of its alias group
 * ("valid" for "val"); NULL when it lists no such split. */
static const char *meta_split_name(const cJSON *j, const char *real) {
    const char *alias = NULL;
    int g = alias_group(real), array_form = cJSON_IsArray(j);
    const cJSON *e;
    cJSON_ArrayForEach(e, j) {
        const char *s = meta_split_of(e, array_form);
        if (s && !strcmp(s, real)) return s;
        if (s && !alias && g >= 0 && alias_group(s) == g) alias = s;
    }
    return alias;
}

/* A metadata path: as is when absolute, under ROOT when it names a folder, else in dir. */
static char *meta_path(const meta_ctx *M, const char *p, const char *dir) {
    return camo_path_join(*p == '/' ? "" : strchr(p, '/') ? M->root : dir, p);
}

/* The mask of an entry without "mask": the image's, by stem, in the split's mask folder. */
static char *meta_find_mask(meta_ctx *M, const char *img) {
    if (M->nm < 0) {
        M->masks = camo_list_images(M->mask_dir, NULL, 0, &M->nm);
        if (!M->masks) return NULL;
        qsort(M->masks, (size_t)M->nm, sizeof *M->masks, cmp_stem_name);
    }
    char **m = find_mask(M->masks, M->nm, camo_path_name(img), M->suffix);
    return m ? camo_path_join(M->mask_dir, *m) : NULL;
}

/* Entry e (`where`: "valid"[3]) into ds: 0, 1 when skipped (skip_bad), -1 on error. Files
 * are checked here so that a wrong list fails at start-up, naming the entry. */
static int meta_entry(meta_ctx *M, const cJSON *e, const char *where) {
    const cJSON *im = cJSON_IsObject(e) ? cJSON_GetObjectItemCaseSensitive(e, "image") : e;
    const cJSON *mk = cJSON_IsObject(e) ? cJSON_GetObjectItemCaseSensitive(e, "mask") : NULL;
    if (!cJSON_IsString(im) || (mk && !cJSON_IsString(mk))) {
        CAMO_ERR("%s: %s: expected an image path or {\"image\": PATH, \"mask\": PATH}", M->file,
                 where);
        return -1;
    }
    char msg[2 * PATH_MAX + 128];
    char *img = meta_path(M, im->valuestring, M->img_dir);
    char *mask = mk ? meta_path(M, mk->valuestring, M->mask_dir) : meta_find_mask(M, img);
    if (!camo_is_file(img))
        snprintf(msg, sizeof msg, "image '%s' not found (%s)", im->valuestring, img);
    else if (mk && !camo_is_file(mask))
        snprintf(msg, sizeof msg, "mask '%s' not found (%s)", mk->valuestring, mask);
    else if (!mask)
        snprintf(msg, sizeof msg, "image '%s' has no mask with the same name in '%s'",
                 im->valuestring, M->mask_dir);
    else {
        add_pair(M->ds, &M->cap, img, mask);
        return 0;
    }
    free(img);
    free(mask);
    if (M->ds->skip_bad) {
        camo_warn("%s: %s: %s: skipped", M->file, where, msg);
        return 1;
    }
    CAMO_ERR("%s: %s: %s", M->file, where, msg);
    return -1;
}

/* The entries of split `name`, in the file's order. */
static int meta_pairs(meta_ctx *M, const cJSON *j, const char *name) {
    int array_form = cJSON_IsArray(j), i = -1;
    const cJSON *list = array_form ? j : cJSON_GetObjectItemCaseSensitive(j, name), *e;
    if (!cJSON_IsArray(list)) {
        CAMO_ERR("%s: \"%s\": expected a list of files", M->file, name);
        return -1;
    }
    cJSON_ArrayForEach(e, list) {
        char where[256];
        i++;
        if (array_form && strcmp(meta_split_of(e, 1), name)) continue;
        if (array_form) snprintf(where, sizeof where, "entry %d", i);
        else snprintf(where, sizeof where, "\"%.200s\"[%d]", name, i);
        if (meta_entry(M, e, where) < 0) return -1;
    }
    if (M->ds->n == 0) {
        CAMO_ERR("%s: split \"%s\" lists no image with a mask", M->file, name);
        return -1;
    }
    camo_info("data: %s: %d image/mask pairs of split \"%s\", as listed there", M->file,
              M->ds->n, name);
    return 0;
}

/* Pairs split folder `real` from the metadata: 0, -1 on error, 1 when it lists no such
 * split (the folders are paired instead). */
static int pair_metadata(meta_ctx *M, const char *real) {
    cJSON *j = meta_parse(M->file);
    if (!j) return -1;
    int rc = meta_check_form(j, M->file);
    const char *name = rc ? NULL : meta_split_name(j, real);
    if (!rc && !name) {
        camo_info("data: %s lists no split '%s': pairing the files of '%s'", M->file, real,
                  M->img_dir);
        rc = 1;
    } else if (!rc) {
        rc = meta_pairs(M, j, name);
    }
    cJSON_Delete(j);
    if (M->nm >= 0) camo_free_names(M->masks, M->nm);
    return rc;
}

/* ---------------------------------------------------------------- opening */

/* label_of from classes, ignore_index and the format (ade20k: 0 = ignore). */
static void label_map(camo_dataset *ds) {
    int ade = !strcmp(ds->format, "ade20k"), K = ds->classes;
    for (int v = 0; v < 256; v++) {
        int lab = ade ? v - 1 : v; /* ADE20K: 0 = "other", ignored; 1..150 = classes 0..149 */
        if (ade && v == 0) ds->label_of[v] = ds->ignore_index;
        else if (lab >= 0 && lab < K) ds->label_of[v] = lab;
        else if (v == ds->ignore_index) ds->label_of[v] = ds->ignore_index;
        else ds->label_of[v] = LABEL_BAD;
    }
}

static int open_layout(camo_dataset *ds, const layout *L, const char *root, const char *split) {
    const char *real = resolve_split(L, root, split);
    if (!real) real = split; /* let pairing name the missing folder */
    else if (strcmp(real, split))
        camo_info("data: %s: split '%s' is the folder '%s' in the %s layout", root, split, real,
                  L->name);
    char *id = layout_path(L->img_fmt, root, real), *md = layout_path(L->mask_fmt, root, real);
    char *meta = camo_path_join(root, "metadata.json");
    meta_ctx M = {.file = meta, .root = root, .img_dir = id, .mask_dir = md,
                  .suffix = L->mask_suffix, .ds = ds, .nm = -1};
    int rc = camo_is_file(meta) ? pair_metadata(&M, real) : 1;
    if (rc == 1) rc = pair_files(ds, id, md, L->unmasked_ok, L->mask_suffix);
    free(meta);
    free(id);
    free(md);
    return rc;
}

static camo_dataset *open_one(const char *root, const char *format, const char *split,
                              int classes, int skip_bad) {
    if (classes < 1) { CAMO_ERR("data.classes must be >= 1 (got %d)", classes); return NULL; }
    if (!format || !*format) format = "auto";
    if (!split) split = "";
    const char *real = split;
    const layout *L = strcmp(format, "auto") ? find_layout(format)
                                             : detect_layout(root, split, &real);
    if (!L && strcmp(format, "auto")) {
        CAMO_ERR("unknown data format '%s' (expected auto, cod10k, camo, carla, ade20k or "
                 "folders)", format);
        return NULL;
    }
    if (!L) return NULL;
    camo_dataset *ds = camo_calloc(1, sizeof *ds);
    ds->classes = classes;
    ds->skip_bad = skip_bad;
    ds->ignore_index = 255;
    snprintf(ds->format, sizeof ds->format, "%s", L->name);
    label_map(ds);
    if (open_layout(ds, L, root, real)) { camo_dataset_free(ds); return NULL; }
    return ds;
}

/* Appends src's pairs to dst (taking them over) and frees src. */
static void append_pairs(camo_dataset *dst, camo_dataset *src) {
    size_t n = (size_t)dst->n + (size_t)src->n;
    dst->images = camo_realloc(dst->images, n * sizeof *dst->images);
    dst->masks = camo_realloc(dst->masks, n * sizeof *dst->masks);
    memcpy(dst->images + dst->n, src->images, (size_t)src->n * sizeof *src->images);
    memcpy(dst->masks + dst->n, src->masks, (size_t)src->n * sizeof *src->masks);
    dst->n = (int)n;
    src->n = 0;
    camo_dataset_free(src);
}

camo_dataset *camo_dataset_open(const char *root, const char *format, const char *split,
                                int classes, int skip_bad) {
    if (!split || !strchr(split, ',')) return open_one(root, format, split, classes, skip_bad);
    char *list = camo_strdup(split), *save = NULL;
    camo_dataset *ds = NULL;
    for (char *t = strtok_r(list, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        camo_dataset *part = open_one(root, format, t, classes, skip_bad);
        if (!part) { camo_dataset_free(ds); ds = NULL; break; }
        if (ds && strcmp(ds->format, part->format)) {
            CAMO_ERR("data.train_split '%s': split '%s' is in the %s layout, the others in %s",
                     split, t, part->format, ds->format);
            camo_dataset_free(part);
            camo_dataset_free(ds);
            ds = NULL;
            break;
        }
        if (ds) append_pairs(ds, part);
        else ds = part;
    }
    free(list);
    return ds;
}

static int cmp_int(const void *a, const void *b) {
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

int camo_dataset_subset(camo_dataset *ds, double subset, uint64_t seed) {
    if (subset <= 0) return ds->n;
    int keep = subset >= 1 ? (int)CAMO_MIN(subset, (double)ds->n)
                           : (int)CAMO_MAX(1.0, floor(subset * ds->n + 0.5));
    if (keep >= ds->n) return ds->n;
    int *order = camo_malloc((size_t)ds->n * sizeof *order);
    camo_epoch_permutation(order, ds->n, seed ^ 0x737562736574ull, 0); /* "subset" */
    qsort(order, (size_t)keep, sizeof *order, cmp_int); /* the kept ones in name order */
    char *drop = camo_calloc((size_t)ds->n, 1);
    for (int i = keep; i < ds->n; i++) drop[order[i]] = 1;
    for (int i = 0; i < ds->n; i++)
        if (drop[i]) { free(ds->images[i]); free(ds->masks[i]); }
    for (int i = 0; i < keep; i++) {
        ds->images[i] = ds->images[order[i]];
        ds->masks[i] = ds->masks[order[i]];
    }
    ds->n = keep;
    free(drop);
    free(order);
    return keep;
}

void camo_dataset_set_ignore_index(camo_dataset *ds, int ignore_index) {
    ds->ignore_index = ignore_index;
    label_map(ds);
}

int camo_dataset_configure(camo_dataset *ds, int ignore_index, int cache,
                           const camo_augment *aug) {
    camo_dataset_set_ignore_index(ds, ignore_index);
    if (ds->classes > 1 && !strcmp(ds->format, "ade20k"))
        camo_info("data: ade20k masks: value 0 is ignored (ignore_index %d), values 1..%d are "
                  "classes 0..%d", ignore_index, ds->classes, ds->classes - 1);
    return cache ? camo_dataset_enable_cache(ds, aug) : 0;
}

int camo_dataset_size(const camo_dataset *ds) { return ds->n; }
int camo_dataset_classes(const camo_dataset *ds) { return ds->classes; }
int camo_dataset_skip_bad(const camo_dataset *ds) { return ds->skip_bad; }
int camo_dataset_ignore_index(const camo_dataset *ds) { return ds->ignore_index; }
const char *camo_dataset_format(const camo_dataset *ds) { return ds->format; }
int camo_dataset_label(const camo_dataset *ds, int raw) {
    return raw >= 0 && raw < 256 && ds->label_of[raw] != LABEL_BAD ? ds->label_of[raw] : -2;
}

const char *camo_dataset_image_path(const camo_dataset *ds, int i) {
    return i >= 0 && i < ds->n ? ds->images[i] : NULL;
}

const char *camo_dataset_mask_path(const camo_dataset *ds, int i) {
    return i >= 0 && i < ds->n ? ds->masks[i] : NULL;
}

void camo_dataset_free(camo_dataset *ds) {
    if (!ds) return;
    camo_free_names(ds->images, ds->n);
    camo_free_names(ds->masks, ds->n);
    data_cache_free(ds->cache);
    free(ds);
}
