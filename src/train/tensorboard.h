/* tensorboard.h: TensorBoard event files written directly (src/train/tensorboard.c), no
 * TensorFlow or protobuf library: each record is
 *     uint64 length, uint32 masked CRC32C(length), Event bytes, uint32 masked CRC32C(bytes)
 * (little-endian; mask: ((crc >> 15) | (crc << 17)) + 0xa282ead8), and Event is the protobuf
 * message of tensorflow/core/util/event.proto, hand-encoded: wall_time (1, double), step
 * (2, int64), file_version (3, "brain.Event:2", first record only), summary (5: Summary
 * { repeated Value value = 1 }, Value { tag = 1, simple_value = 2 float, tensor = 8,
 * metadata = 9 }), session_log (7: SessionLog { status = 1 }, START = 1). Scalars are
 * simple_value; text is a DT_STRING tensor with the "text" plugin's metadata, which
 * TensorBoard's Text tab shows. A reader (camo_tb_read) checks every CRC and decodes what
 * the writer writes (`camotrain inspect --events FILE`). */
#ifndef CAMO_TENSORBOARD_H
#define CAMO_TENSORBOARD_H

#include <stddef.h>
#include <stdint.h>

typedef struct camo_tb camo_tb;

/* Creates dir/events.out.tfevents.<unix time>.<host> (".2", ".3"... appended when that
 * name exists: a resume within the same second) and writes the file_version record.
 * TensorBoard merges every events file of a folder, so a resumed run adds a file.
 * NULL + error naming the file. */
camo_tb *camo_tb_open(const char *dir);
/* One scalar (a Value with simple_value) at step; NaN and inf are written as they are
 * (TensorBoard shows them). 0, or -1 + error on a write failure. */
int camo_tb_scalar(camo_tb *tb, const char *tag, int64_t step, double value);
/* A session_log START event at step (SessionLog.status = START): write it first in every
 * file, at step 0 for a new run and at S + 1 for a run resumed from a checkpoint at step
 * S. TensorBoard takes a folder's first START as the start and a later one as a restart,
 * and drops the earlier files' records at steps >= the restart's: what a crashed run
 * logged after its checkpoint, which the resumed run logs again. Flushed. */
int camo_tb_session_start(camo_tb *tb, int64_t step);
/* A text summary (markdown) at step, shown in TensorBoard's Text tab. */
int camo_tb_text(camo_tb *tb, const char *tag, int64_t step, const char *text);
void camo_tb_flush(camo_tb *tb);
const char *camo_tb_path(const camo_tb *tb);
void camo_tb_close(camo_tb *tb); /* NULL is fine */

/* CRC-32C (Castagnoli) of n bytes, and TFRecord's masking of it. */
uint32_t camo_crc32c(const void *data, size_t n);
uint32_t camo_tb_mask_crc(uint32_t crc);

/* One decoded event: a file_version record (version set, n_values 0), a session_log
 * record (value: its status, 1 = START) or a summary value (tag, and value for a scalar
 * or text for a text summary). */
typedef enum { CAMO_TB_VERSION, CAMO_TB_SCALAR, CAMO_TB_TEXT, CAMO_TB_SESSION } camo_tb_kind;
typedef struct camo_tb_event {
    camo_tb_kind kind;
    double wall_time;
    int64_t step;
    const char *tag;     /* scalar and text (not NUL-terminated in the file: copied) */
    double value;        /* scalar */
    const char *text;    /* text, or the version string */
} camo_tb_event;

/* Reads every record of an events file, checks both CRCs of each and calls fn for the
 * version record, a session_log record and every summary value (an Event with several
 * values calls it once per value). Returns the number of records, or -1 + error naming
 * the file and the byte offset of a bad length or data CRC, a truncated record or an
 * undecodable Event; a positive return of fn stops the read and is returned. */
typedef int (*camo_tb_fn)(const camo_tb_event *ev, void *user);
long camo_tb_read(const char *path, camo_tb_fn fn, void *user);

#endif
