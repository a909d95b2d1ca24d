/* cli_plot.c: `camotrain plot RUN [RUN...] [-o FILE.png] [--keep-data]`: the training
 * loss, learning rate and validation metric of one or more runs, against step and against
 * wall time, overlaid with each run's folder name (a DP run beside a DDP run, 1 GPU beside
 * 2). Reads each run's metrics.jsonl, writes one gnuplot data file per run and panel kind
 * plus the script, and runs gnuplot (src/train/gnuplot.c). The data files are what the tests
 * check (one curve per run), not pixels; --keep-data keeps them beside the PNG. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/cli.h"
#include "core/common.h"
#include "train/gnuplot.h"

#define MAX_RUNS 16

typedef struct plot_run {
    const char *dir;
    char name[256];      /* the folder's name, or its path when two runs share a name */
    char train_dat[4200], eval_dat[4200];
    int n_steps, n_evals;
    int multiclass;      /* eval records hold miou (K classes) rather than iou */
} plot_run;

static void plot_usage(FILE *f) {
    fputs("usage: camotrain plot RUN [RUN...] [-o FILE.png] [--keep-data]\n"
          "  training loss, learning rate and validation IoU (mIoU for K classes) of each run,\n"
          "  against step and against wall time, runs overlaid and named by their folders;\n"
          "  from RUN/metrics.jsonl, drawn by gnuplot (Debian package gnuplot-nox)\n"
          "  -o FILE.png   the image (default: RUN/curves.png for one run, curves.png for more)\n"
          "  --keep-data   keep the gnuplot script and data files in FILE-data/ (a temporary\n"
          "                folder otherwise)\n", f);
}

/* A number member of a JSON record, NaN when absent or null. */
static double num(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

/* One step or eval record into the run's data files. *t: the wall time of the latest step
 * (evals have none; they follow their step), continued across resumes, whose processes
 * each count time from 0. */
static void add_record(plot_run *r, const cJSON *o, FILE *tf, FILE *ef, double *t, double *off) {
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(o, "type");
    if (!cJSON_IsString(type)) return;
    if (!strcmp(type->valuestring, "step")) {
        double time = num(o, "time");
        if (time + *off < *t) *off = *t; /* a resumed process starts at 0 again */
        *t = time + *off;
        fprintf(tf, "%.0f %.3f %.8g %.8g\n", num(o, "step"), *t, num(o, "loss"), num(o, "lr"));
        r->n_steps++;
    } else if (!strcmp(type->valuestring, "eval")) {
        double m = num(o, "iou");
        if (isnan(m) && !isnan(num(o, "miou"))) m = num(o, "miou"), r->multiclass = 1;
        fprintf(ef, "%.0f %.3f %.8g %.8g\n", num(o, "step"), *t, num(o, "loss"), m);
        r->n_evals++;
    }
}

/* Reads RUN/metrics.jsonl into dir/runK.train.dat and dir/runK.eval.dat. 0, or 2 naming
 * the run (no metrics.jsonl) or -1 (a data file cannot be written). */
static int read_run(plot_run *r, const char *dir, int k) {
    char path[4200];
    snprintf(path, sizeof path, "%s/metrics.jsonl", r->dir);
    FILE *in = fopen(path, "r");
    if (!in) {
        CAMO_ERR("%s: no metrics.jsonl there (%s): not a run folder?", r->dir, strerror(errno));
        return CAMO_ERR_INPUT;
    }
    snprintf(r->train_dat, sizeof r->train_dat, "%s/run%d.train.dat", dir, k + 1);
    snprintf(r->eval_dat, sizeof r->eval_dat, "%s/run%d.eval.dat", dir, k + 1);
    FILE *tf = fopen(r->train_dat, "w"), *ef = fopen(r->eval_dat, "w");
    int rc = tf && ef ? 0 : -1;
    if (rc) CAMO_ERR("%s: cannot write: %s", tf ? r->eval_dat : r->train_dat, strerror(errno));
    char *line = NULL;
    size_t cap = 0;
    double t = 0, off = 0;
    if (!rc) {
        fprintf(tf, "# %s: step wall_time_s loss lr\n", r->name);
        fprintf(ef, "# %s: step wall_time_s eval_loss iou_or_miou\n", r->name);
    }
    while (!rc && getline(&line, &cap, in) > 0) {
        cJSON *o = cJSON_Parse(line);
        if (o) add_record(r, o, tf, ef, &t, &off); /* a torn last line (a kill) is skipped */
        cJSON_Delete(o);
    }
    free(line);
    fclose(in);
    if (tf) fclose(tf);
    if (ef) fclose(ef);
    if (!rc && r->n_steps == 0) camo_warn("%s: metrics.jsonl has no step records", r->dir);
    return rc;
}

/* Run names: folder names, or whole paths where two runs would get the same name. */
static void name_runs(plot_run *runs, int n) {
    for (int i = 0; i < n; i++) {
        char d[4096];
        snprintf(d, sizeof d, "%s", runs[i].dir);
        size_t len = strlen(d);
        while (len > 1 && d[len - 1] == '/') d[--len] = 0;
        const char *base = strrchr(d, '/');
        /* a display name: a longer one is cut (explicitly, for -Wformat-truncation) */
        snprintf(runs[i].name, sizeof runs[i].name, "%.*s", (int)sizeof runs[i].name - 1,
                 base && base[1] ? base + 1 : d);
    }
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++)
            if (i != j && !strcmp(runs[i].name, runs[j].name) &&
                strcmp(runs[i].name, runs[i].dir) != 0)
                snprintf(runs[i].name, sizeof runs[i].name, "%.*s",
                         (int)sizeof runs[i].name - 1, runs[i].dir);
}

/* One panel: column y of each run's train (eval = 0) or eval file against column x. */
static void panel(FILE *f, const plot_run *runs, int n, int eval, int x, int y,
                  const char *xlabel, const char *ylabel) {
    /* losses and the lr fall towards the end, metrics rise: keep the key off the curves */
    fprintf(f, "set xlabel '%s'\nset ylabel '%s'\nset key %s right\n", xlabel, ylabel,
            eval ? "bottom" : "top");
    int any = 0;
    for (int i = 0; i < n; i++) any += eval ? runs[i].n_evals > 0 : runs[i].n_steps > 0;
    if (!any) { /* gnuplot stops at a plot with no points: an empty, labelled panel */
        fputs("set label 1 'no data' at graph 0.5,0.5 center\n"
              "plot [0:1] [0:1] NaN notitle\nunset label 1\n", f);
        return;
    }
    const char *sep = "plot ";
    for (int i = 0; i < n; i++) {
        if (eval ? runs[i].n_evals == 0 : runs[i].n_steps == 0) continue;
        fputs(sep, f);
        camo_gnuplot_str(f, eval ? runs[i].eval_dat : runs[i].train_dat);
        fprintf(f, " using %d:%d with %s lt %d lw 1.5 title ", x, y,
                eval ? "linespoints pt 7 ps 0.6" : "lines", i + 1);
        camo_gnuplot_str(f, runs[i].name);
        sep = ", \\\n     ";
    }
    fputc('\n', f);
}

/* The script: 3 rows (loss, lr, validation metric) x 2 columns (step, wall time). */
static int write_script(const char *script, const plot_run *runs, int n, const char *png) {
    FILE *f = fopen(script, "w");
    if (!f) { CAMO_ERR("%s: cannot write: %s", script, strerror(errno)); return -1; }
    int multi = 0;
    for (int i = 0; i < n; i++) multi += runs[i].multiclass;
    const char *metric = multi == 0 ? "validation IoU" : multi == n ? "validation mIoU"
                                                                    : "validation IoU / mIoU";
    camo_gnuplot_terminal(f, 1200, 1050, png);
    fputs("set grid\nset format y '%g'\n"
          "set multiplot layout 3,2 title ", f);
    camo_gnuplot_str(f, n == 1 ? runs[0].name : "camotrain runs");
    fputc('\n', f);
    panel(f, runs, n, 0, 1, 3, "step", "training loss");
    panel(f, runs, n, 0, 2, 3, "wall time (s)", "training loss");
    panel(f, runs, n, 0, 1, 4, "step", "learning rate");
    panel(f, runs, n, 0, 2, 4, "wall time (s)", "learning rate");
    panel(f, runs, n, 1, 1, 4, "step", metric);
    panel(f, runs, n, 1, 2, 4, "wall time (s)", metric);
    fputs("unset multiplot\n", f);
    return fclose(f) == 0 ? 0 : -1;
}

/* The folder for the data files: FILE-data beside the PNG (kept), else a temporary one. */
static int data_folder(const char *png, int keep, char *dir, size_t n) {
    if (!keep) {
        snprintf(dir, n, "%s/camoplot.XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
        if (mkdtemp(dir)) return 0;
    } else {
        size_t len = strlen(png);
        int ext = len > 4 && !strcmp(png + len - 4, ".png");
        snprintf(dir, n, "%.*s-data", (int)(ext ? len - 4 : len), png);
        if (mkdir(dir, 0755) == 0 || errno == EEXIST) return 0;
    }
    CAMO_ERR("%s: cannot create: %s", dir, strerror(errno));
    return -1;
}

static void remove_data(const char *dir, const plot_run *runs, int n, const char *script) {
    for (int i = 0; i < n; i++) {
        if (runs[i].train_dat[0]) unlink(runs[i].train_dat);
        if (runs[i].eval_dat[0]) unlink(runs[i].eval_dat);
    }
    unlink(script);
    rmdir(dir);
}

static int plot_runs(plot_run *runs, int n, const char *png, int keep) {
    char dir[4096], script[4200];
    if (data_folder(png, keep, dir, sizeof dir)) return CAMO_ERR_RUNTIME;
    snprintf(script, sizeof script, "%s/curves.gp", dir);
    name_runs(runs, n);
    int rc = 0;
    for (int i = 0; i < n && !rc; i++) rc = read_run(&runs[i], dir, i);
    if (rc == -1) rc = CAMO_ERR_RUNTIME;
    if (!rc && (write_script(script, runs, n, png) || camo_gnuplot_run(script, png)))
        rc = CAMO_ERR_RUNTIME;
    if (!keep) remove_data(dir, runs, n, script);
    if (rc) {
        fprintf(stderr, "camotrain: error: %s\n", camo_last_error());
        return rc;
    }
    printf("wrote %s (%d run%s)%s%s\n", png, n, n == 1 ? "" : "s", keep ? "; data in " : "",
           keep ? dir : "");
    return CAMO_OK;
}

int cli_plot(int argc, char **argv) {
    plot_run runs[MAX_RUNS];
    memset(runs, 0, sizeof runs);
    const char *png = NULL;
    int n = 0, keep = 0;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) { plot_usage(stdout); return 0; }
        if ((!strcmp(argv[i], "-o") || !strcmp(argv[i], "--out")) && i + 1 < argc) png = argv[++i];
        else if (!strcmp(argv[i], "--keep-data")) keep = 1;
        else if (argv[i][0] == '-') {
            fprintf(stderr, "camotrain plot: unknown option '%s' (try --help)\n", argv[i]);
            return CAMO_ERR_INPUT;
        } else if (n == MAX_RUNS) {
            fprintf(stderr, "camotrain plot: at most %d runs in one plot\n", MAX_RUNS);
            return CAMO_ERR_INPUT;
        } else runs[n++].dir = argv[i];
    }
    if (n == 0) { plot_usage(stderr); return CAMO_ERR_INPUT; }
    char def[4200];
    if (!png) {
        if (n == 1) snprintf(def, sizeof def, "%s/curves.png", runs[0].dir);
        else snprintf(def, sizeof def, "curves.png");
        png = def;
    }
    return plot_runs(runs, n, png, keep);
}
