/* gnuplot.c: running gnuplot (gnuplot.h). gnuplot-nox is in tools/install_deps.sh, but the
 * build does not need it: its absence is an error of the plotting command alone. */
#include "train/gnuplot.h"

#include <errno.h>
#include <spawn.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "core/common.h"

extern char **environ;

void camo_gnuplot_terminal(FILE *f, int w, int h, const char *png) {
    fprintf(f, "if (strstrt(GPVAL_TERMINALS, 'pngcairo') > 0) {\n"
               "    set terminal pngcairo size %d,%d font ',10' noenhanced\n"
               "} else {\n"
               "    set terminal png size %d,%d noenhanced\n"
               "}\nset output ", w, h, w, h);
    camo_gnuplot_str(f, png);
    fputc('\n', f);
}

void camo_gnuplot_str(FILE *f, const char *s) {
    fputc('\'', f);
    for (; *s; s++) {
        if (*s == '\'') fputc('\'', f);
        fputc(*s == '\n' ? ' ' : *s, f);
    }
    fputc('\'', f);
}

int camo_gnuplot_run(const char *script, const char *png) {
    char *argv[] = {"gnuplot", (char *)script, NULL};
    pid_t pid;
    int err = posix_spawnp(&pid, "gnuplot", NULL, NULL, argv, environ);
    if (err == ENOENT) {
        CAMO_ERR("gnuplot not found on PATH: install it (Debian: apt-get install gnuplot-nox, "
                 "or tools/install_deps.sh)");
        return -1;
    }
    if (err) {
        CAMO_ERR("cannot run gnuplot: %s", strerror(err));
        return -1;
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
    struct stat st;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        CAMO_ERR("gnuplot failed on %s (its message is above)", script);
        return -1;
    }
    if (stat(png, &st) != 0 || st.st_size == 0) {
        CAMO_ERR("%s: gnuplot wrote no image", png);
        return -1;
    }
    return 0;
}
