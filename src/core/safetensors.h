/* safetensors.h: read and write safetensors files, the checkpoint format of camotrain
 * (readable by Python's safetensors.torch.load_file).
 *
 * File layout: 8-byte little-endian header length N, N bytes of JSON header
 *   {"__metadata__": {"k": "v", ...}, "name": {"dtype": "F32", "shape": [..],
 *    "data_offsets": [begin, end]}, ...}
 * then the data section; offsets are relative to the data section and the tensors cover
 * it exactly, without gaps or overlaps. Tensor data is row-major, little-endian.
 *
 * A little-endian host is assumed (x86-64, aarch64): data is copied as is, not swapped.
 * Errors: functions return 0 (or a valid pointer) on success and non-zero (or NULL) on
 * error, with the message recorded by CAMO_ERR (read it with camo_last_error()); the
 * message names the file and the reason. */
#ifndef CAMO_SAFETENSORS_H
#define CAMO_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#define CAMO_ST_MAX_DIM 8

typedef enum {
    CAMO_ST_F32,
    CAMO_ST_F16,
    CAMO_ST_BF16,
    CAMO_ST_I64,
    CAMO_ST_I32,
    CAMO_ST_U8,
    CAMO_ST_NDTYPE
} camo_st_dtype;

const char *camo_st_dtype_name(camo_st_dtype dtype);  /* "F32", ...; "?" if invalid */

/* ---- writing ---- */

typedef struct camo_st_writer camo_st_writer;

camo_st_writer *camo_st_writer_new(void);
void camo_st_writer_free(camo_st_writer *w);

/* Adds a tensor of shape[0..ndim) (ndim 0..8; ndim 0 is a scalar, a zero dimension an
 * empty tensor). The data (numel * itemsize bytes) is COPIED: the caller may reuse its
 * buffer at once. Tensors are written in the order added. Names must be non-empty,
 * unique and not "__metadata__". */
int camo_st_add(camo_st_writer *w, const char *name, camo_st_dtype dtype, int ndim,
                const int64_t *shape, const void *data);
/* Adds a string -> string pair to __metadata__ (both copied; keys unique). */
int camo_st_add_meta(camo_st_writer *w, const char *key, const char *value);
/* Writes atomically: "<path>.tmp.<pid>", fflush + fsync, rename over path, fsync of the
 * directory. On error the temp file is removed and an existing file at path is left as it
 * was. Not safe for two threads of one process writing the same path at once. */
int camo_st_write_file(camo_st_writer *w, const char *path);

/* ---- reading ---- */

typedef struct {
    const char *name;
    camo_st_dtype dtype;
    int ndim;
    int64_t shape[CAMO_ST_MAX_DIM];
    int64_t numel;            /* 1 for a scalar, 0 if any dimension is 0 */
    size_t nbytes;            /* numel * itemsize */
    const void *data;         /* inside the file buffer; may be unaligned: memcpy it */
} camo_st_tensor;

typedef struct camo_st_file camo_st_file;

/* Reads the whole file and validates header and layout; NULL with an error on any
 * problem (missing, truncated, bad JSON, bad dtype/shape/offsets, non-string metadata). */
camo_st_file *camo_st_open(const char *path);
void camo_st_close(camo_st_file *f);

int camo_st_count(const camo_st_file *f);
const camo_st_tensor *camo_st_get(const camo_st_file *f, int i);  /* by data offset */
const camo_st_tensor *camo_st_find(const camo_st_file *f, const char *name); /* or NULL */

const char *camo_st_meta(const camo_st_file *f, const char *key);  /* NULL if absent */
int camo_st_meta_count(const camo_st_file *f);
/* Pair i (header order) into *key and *value; non-zero with an error if i is out of range. */
int camo_st_meta_get(const camo_st_file *f, int i, const char **key, const char **value);

/* Converts an F32/F16/BF16 tensor to float: out holds t->numel floats. Other dtypes are
 * an error. */
int camo_st_read_f32(const camo_st_tensor *t, float *out);

float camo_st_f16_to_f32(uint16_t h);
float camo_st_bf16_to_f32(uint16_t h);

#endif
