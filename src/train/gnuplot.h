/* gnuplot.h: running gnuplot for the PNGs of `camotrain plot` and `camotrain profile`
 * (src/train/gnuplot.c). Scripts are files (kept with the data when asked), run by exec, not by a
 * shell, so run names and paths need no shell quoting. */
#ifndef CAMO_GNUPLOT_H
#define CAMO_GNUPLOT_H

#include <stdio.h>

/* Writes the lines selecting a w x h PNG terminal (pngcairo where this gnuplot has it, else
 * the libgd png one) and output file png; text is not "enhanced" (run names with '_'). */
void camo_gnuplot_terminal(FILE *f, int w, int h, const char *png);
/* Writes s as a single-quoted gnuplot string ('' doubles a quote). */
void camo_gnuplot_str(FILE *f, const char *s);
/* Runs `gnuplot script` and checks that png is then a non-empty file. 0, or -1 + error:
 * gnuplot missing (naming the Debian package), gnuplot failing, or no PNG. */
int camo_gnuplot_run(const char *script, const char *png);

#endif
