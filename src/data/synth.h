/* synth.h: a synthetic camouflaged-object data set (synth.c), written in the COD10K layout:
 * OUT/Train/Image/synth_00001.jpg + OUT/Train/GT_Object/synth_00001.png, the same for Test.
 * The command line is `camotrain synth` (cli/cli_synth.c). */
#ifndef CAMO_SYNTH_H
#define CAMO_SYNTH_H

#include <stdint.h>

typedef struct camo_synth {
    int train, test;   /* images of each split */
    int size;          /* side of every image, 16..8192 */
    int classes;       /* 1: binary masks 0/255; K > 1: class-index masks 0..K-1 (K <= 256) */
    double difficulty; /* 0 easy .. 1 very hard: how close the objects' texture is to the
                          background's */
    uint64_t seed;     /* fixes every file */
} camo_synth;

/* `camotrain synth`'s defaults. */
#define CAMO_SYNTH_DEFAULTS \
    ((camo_synth){.train = 600, .test = 100, .size = 128, .classes = 1, .difficulty = 0.5})

/* Writes the data set under out (folders made as needed; files of the same names replaced).
 * 0, or -1 + error naming the folder or file that could not be written. */
int camo_synth_write(const camo_synth *s, const char *out);

#endif
