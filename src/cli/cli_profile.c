/* cli_profile.c: `camotrain profile --conf X [--batches 2,4,8,16,32] [--steps N]`: picks a
 * batch size the way seed 002's profile_gpu.py does. For each global batch size, a short
 * training run (N optimizer steps, the first not timed: allocation, cuDNN planning) in a
 * child process, so that each size's peak memory is its own: the child's peak resident set
 * (wait4's ru_maxrss, the VmHWM of /proc/PID/status) on CPUs, its caching allocator's peak
 * (metrics.jsonl gpu_peak_mb) on GPUs. The sweep stops at the first size that does not fit:
 * its child fails (out of memory) or its resident memory passes the cap (--mem-limit MB,
 * else the machine's available memory), polled every 20 ms and killed there. Writes
 * profile.txt, profile.dat and profile.png (gnuplot) in --out and names the size with the
 * best throughput whose peak stays under 90 % of the limit. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli/cli.h"
#include "core/common.h"
#include "train/config.h"
#include "backend/cuda.h"
#include "train/gnuplot.h"

#define MAX_BATCHES 32
#define MAX_SETS 64
#define HEADROOM 0.9 /* a batch is recommended when its peak is under 90 % of the limit */

extern char **environ;

typedef struct prof_args {
    const char *conf, *out, *devices;
    char *sets[MAX_SETS];
    int n_sets, batches[MAX_BATCHES], n_batches, steps;
    double mem_limit_mb;   /* 0: the machine's available memory */
} prof_args;

typedef struct prof_row {
    int batch, fits, gpu;
    double img_s, step_ms, rss_mb, gpu_mb;
    char why[300];
} prof_row;

static void profile_usage(FILE *f) {
    fputs("usage: camotrain profile --conf X.cfg [--batches 2,4,8,16,32] [--steps N]\n"
          "                         [--devices LIST] [--mem-limit MB] [--out DIR] [--set k=v]\n"
          "  for each global batch size, N training steps (default 6; the first is not timed) in\n"
          "  a child process: img/s, step time and peak memory (GPU: the allocator's peak; CPU:\n"
          "  the process's peak resident memory). Stops at the first size that does not fit\n"
          "  (out of memory, or resident memory over --mem-limit MB, default the machine's\n"
          "  available memory). Uses the config's data, or synthetic data of its img_size when\n"
          "  data.root does not exist; train.stages are dropped (every layer trains).\n"
          "  Writes DIR/profile.txt, profile.dat and profile.png (default DIR runs/profile) and\n"
          "  names the batch with the best img/s whose peak is under 90 % of the limit.\n", f);
}

static int parse_batches(const char *s, prof_args *a) {
    a->n_batches = 0;
    for (const char *p = s; *p;) {
        char *end;
        long b = strtol(p, &end, 10);
        if (end == p || b < 1 || b > 65536 || (*end && *end != ',') || a->n_batches == MAX_BATCHES ||
            (a->n_batches && b <= a->batches[a->n_batches - 1])) {
            fprintf(stderr, "camotrain profile: --batches %s: expected rising sizes such as "
                    "2,4,8,16 (at most %d)\n", s, MAX_BATCHES);
            return -1;
        }
        a->batches[a->n_batches++] = (int)b;
        p = *end ? end + 1 : end;
    }
    return a->n_batches ? 0 : -1;
}

static int parse_args(int argc, char **argv, prof_args *a) {
    *a = (prof_args){.out = "runs/profile", .steps = 6, .n_batches = 5,
                     .batches = {2, 4, 8, 16, 32}};
    for (int i = 0; i < argc; i++) {
        const char *f = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(f, "--help") || !strcmp(f, "-h")) { profile_usage(stdout); return 1; }
        if (!v) { fprintf(stderr, "camotrain profile: %s needs a value (try --help)\n", f); return -1; }
        char *end = NULL;
        if (!strcmp(f, "--conf")) a->conf = v;
        else if (!strcmp(f, "--out")) a->out = v;
        else if (!strcmp(f, "--devices")) a->devices = v;
        else if (!strcmp(f, "--batches")) { if (parse_batches(v, a)) return -1; }
        else if (!strcmp(f, "--steps")) a->steps = (int)strtol(v, &end, 10);
        else if (!strcmp(f, "--mem-limit")) a->mem_limit_mb = strtod(v, &end);
        else if (!strcmp(f, "--set") && a->n_sets < MAX_SETS) a->sets[a->n_sets++] = (char *)v;
        else { fprintf(stderr, "camotrain profile: unknown option '%s' (try --help)\n", f); return -1; }
        if (end && (*end || a->steps < 2 || a->mem_limit_mb < 0)) {
            fprintf(stderr, "camotrain profile: %s %s: expected %s\n", f, v,
                    !strcmp(f, "--steps") ? "a number of steps >= 2" : "megabytes");
            return -1;
        }
        i++;
    }
    if (!a->conf) { fprintf(stderr, "camotrain profile: --conf FILE is required\n"); return -1; }
    return 0;
}

/* ---- the children's config ---- */

/* Synthetic data of the config's size and classes in dir/synth, for a data.root that does
 * not exist: enough images that every size's steps fall in one epoch (no checkpoint). */
static int synth_data(camo_config *c, const prof_args *a, const char *dir) {
    char out[CAMO_PATH_MAX + 16], n[16], size[16], classes[16], set[CAMO_PATH_MAX + 32];
    snprintf(out, sizeof out, "%s/synth", dir);
    snprintf(n, sizeof n, "%d", a->batches[a->n_batches - 1] * a->steps);
    snprintf(size, sizeof size, "%d", c->data.aug.size);
    snprintf(classes, sizeof classes, "%d", c->data.classes);
    char *argv[] = {"--out", out, "--train", n, "--test", "2", "--size", size,
                    "--classes", classes, "--seed", "0"};
    camo_info("profile: %s does not exist: synthetic data of %s px in %s", c->data.root, size, out);
    if (cli_synth(12, argv)) return -1;
    const char *kv[] = {"data.format=auto", "data.train_split=Train", "data.val_split=Test"};
    snprintf(set, sizeof set, "data.root=%s", out);
    for (int i = 0; i < 3; i++)
        if (camo_config_override(&c->cfg, kv[i])) return -1;
    return camo_config_override(&c->cfg, set);
}

/* Whether parallel.devices means GPUs, decided without starting CUDA in this process (its
 * context would take GPU memory from the children): "auto" means GPUs when this build has
 * CUDA and the machine an NVIDIA device. */
static int gpu_devices(const char *spec) {
    if (!strncmp(spec, "cpu", 3)) return 0;
    if (strcmp(spec, "auto") != 0) return 1;
#ifdef CAMO_HAVE_CUDA
    return access("/dev/nvidiactl", F_OK) == 0;
#else
    return 0;
#endif
}

/* dir/profile.cfg: the config with the run's length fixed to --steps steps, no evaluation,
 * no TensorBoard, one stage, the network by its resolved path. */
static int write_child_config(const prof_args *a, const char *dir, char *path, size_t n,
                              int *gpu) {
    camo_config c;
    int rc = camo_config_load(&c, a->conf, NULL, a->sets, a->n_sets);
    config_setting_t *t = rc ? NULL : config_lookup(&c.cfg, "train");
    if (t && config_setting_get_member(t, "stages")) config_setting_remove(t, "stages");
    config_setting_t *m = rc ? NULL : config_lookup(&c.cfg, "model");
    if (m && config_setting_type(m) == CONFIG_TYPE_STRING)
        config_setting_set_string(m, c.model_path);
    char steps[48], devices[128];
    snprintf(steps, sizeof steps, "train.max_steps=%d", a->steps);
    snprintf(devices, sizeof devices, "parallel.devices=%s", a->devices ? a->devices : "");
    const char *kv[] = {steps, "train.epochs=100000", "eval.every=0", "log.tensorboard=false",
                        "checkpoint.every_steps=0", a->devices ? devices : NULL};
    for (int i = 0; !rc && i < 6 && kv[i]; i++) rc = camo_config_override(&c.cfg, kv[i]);
    if (!rc && access(c.data.root, F_OK) != 0) rc = synth_data(&c, a, dir);
    /* --devices went into the file only: c.parallel.devices is the config's own */
    *gpu = !rc && gpu_devices(a->devices ? a->devices : c.parallel.devices);
    snprintf(path, n, "%s/profile.cfg", dir);
    if (!rc && !config_write_file(&c.cfg, path)) {
        CAMO_ERR("%s: cannot write", path);
        rc = -1;
    }
    camo_config_free(&c);
    return rc;
}

/* ---- one batch size ---- */

static double proc_kb(const char *file, pid_t pid, const char *key) {
    char path[64], line[256];
    if (pid) snprintf(path, sizeof path, "/proc/%d/%s", (int)pid, file);
    else snprintf(path, sizeof path, "/proc/%s", file);
    FILE *f = fopen(path, "r");
    double kb = 0;
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, key, strlen(key))) kb = atof(line + strlen(key));
    if (f) fclose(f);
    return kb;
}

/* Waits for the child, killing it when its resident memory passes cap_mb (0: no cap).
 * Returns its wait status; *over: killed for memory; *maxrss_mb: its peak. */
static int watch_child(pid_t pid, double cap_mb, int *over, double *maxrss_mb) {
    int status = 0;
    struct rusage ru;
    *over = 0;
    for (;;) {
        pid_t r = wait4(pid, &status, WNOHANG, &ru);
        if (r == pid) break;
        if (r < 0 && errno != EINTR) { *maxrss_mb = 0; return -1; }
        double rss = proc_kb("status", pid, "VmRSS:") / 1024;
        if (cap_mb > 0 && rss > cap_mb && !*over) {
            *over = 1;
            *maxrss_mb = rss;
            kill(pid, SIGKILL);
        }
        usleep(20000);
    }
    if (!*over) *maxrss_mb = ru.ru_maxrss / 1024.0;
    return status;
}

/* Starts `camotrain --conf cfg --set train.batch=B --out run --quiet`, output to run.log. */
static pid_t spawn_child(const char *cfg, int batch, const char *run, const char *log) {
    char exe[4096], set[48];
    ssize_t k = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (k <= 0) { CAMO_ERR("cannot find this program (/proc/self/exe)"); return -1; }
    exe[k] = 0;
    snprintf(set, sizeof set, "train.batch=%d", batch);
    char *argv[] = {exe, "--conf", (char *)cfg, "--set", set, "--out", (char *)run, "--quiet", NULL};
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    pid_t pid;
    int err = posix_spawn(&pid, exe, &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (err) { CAMO_ERR("cannot run %s: %s", exe, strerror(err)); return -1; }
    return pid;
}

/* Step time from the step records' times, the first step left out; GPU peak if any. */
static int read_steps(const char *run, prof_row *row) {
    char path[CAMO_PATH_MAX + 64], *line = NULL;
    snprintf(path, sizeof path, "%s/metrics.jsonl", run);
    FILE *f = fopen(path, "r");
    size_t cap = 0;
    double t_first = NAN, t_last = NAN;
    int n = 0;
    while (f && getline(&line, &cap, f) > 0) {
        cJSON *o = cJSON_Parse(line);
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(o, "type");
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(o, "time");
        const cJSON *g = cJSON_GetObjectItemCaseSensitive(o, "gpu_peak_mb");
        if (cJSON_IsString(type) && !strcmp(type->valuestring, "step") && cJSON_IsNumber(t)) {
            if (n++ == 0) t_first = t->valuedouble;
            t_last = t->valuedouble;
            if (cJSON_IsNumber(g)) row->gpu = 1, row->gpu_mb = fmax(row->gpu_mb, g->valuedouble);
        }
        cJSON_Delete(o);
    }
    free(line);
    if (f) fclose(f);
    if (n < 2) { CAMO_ERR("%s: %d step records (want 2 or more)", path, n); return -1; }
    row->step_ms = (t_last - t_first) / (n - 1) * 1000;
    row->img_s = row->step_ms > 0 ? row->batch / (row->step_ms / 1000) : 0;
    return 0;
}

/* The last line of the child's log that says what went wrong. */
static void last_error(const char *log, char *why, size_t n) {
    FILE *f = fopen(log, "r");
    char line[1024];
    snprintf(why, n, "failed (see %s)", log);
    while (f && fgets(line, sizeof line, f))
        if (strstr(line, "error")) snprintf(why, n, "%.*s", (int)strcspn(line, "\n"), line);
    if (f) fclose(f);
}

/* Runs one size. 0 = measured (row->fits says whether it fits), 2 = the child found the
 * config or data bad (the sweep stops with that error), -1 = could not run. */
static int profile_batch(const char *dir, const char *cfg, double cap_mb, double gpu_cap_mb,
                         prof_row *row) {
    char run[CAMO_PATH_MAX + 32], log[CAMO_PATH_MAX + 64];
    snprintf(run, sizeof run, "%s/batch_%d", dir, row->batch);
    snprintf(log, sizeof log, "%s.log", run);
    pid_t pid = spawn_child(cfg, row->batch, run, log);
    if (pid < 0) return -1;
    int over, status = watch_child(pid, cap_mb, &over, &row->rss_mb);
    if (over)
        snprintf(row->why, sizeof row->why, "resident memory passed the cap of %.0f MB", cap_mb);
    else if (WIFSIGNALED(status))
        snprintf(row->why, sizeof row->why, "killed by signal %d (out of memory?)", WTERMSIG(status));
    else if (WIFEXITED(status) && WEXITSTATUS(status) == CAMO_ERR_INPUT) {
        last_error(log, row->why, sizeof row->why);
        CAMO_ERR("batch %d: %s", row->batch, row->why);
        return CAMO_ERR_INPUT;
    } else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        last_error(log, row->why, sizeof row->why);
    else if (read_steps(run, row))
        snprintf(row->why, sizeof row->why, "%s", camo_last_error());
    else if (!row->gpu && cap_mb > 0 && row->rss_mb > cap_mb) /* a peak between polls */
        snprintf(row->why, sizeof row->why, "resident memory peaked at %.0f MB, over the cap "
                 "of %.0f MB", row->rss_mb, cap_mb);
    else if (row->gpu && gpu_cap_mb > 0 && row->gpu_mb > gpu_cap_mb)
        snprintf(row->why, sizeof row->why, "GPU memory peak passed the cap of %.0f MB",
                 gpu_cap_mb);
    else
        row->fits = 1;
    return 0;
}

/* ---- report ---- */

static double row_peak(const prof_row *r) { return r->gpu ? r->gpu_mb : r->rss_mb; }

/* The total memory of the first GPU of spec (its first number; 0 when none), for the
 * headroom when --mem-limit is not given. Called after the sweep: the CUDA context it
 * starts here would otherwise take GPU memory from the children. */
static int gpu_total_mb(const char *spec, double *mb) {
    const char *d = spec ? strpbrk(spec, "0123456789") : NULL;
    size_t free_b, total_b;
    if (camo_cuda_mem_info(d ? atoi(d) : 0, &free_b, &total_b)) return -1;
    *mb = (double)total_b / 1048576.0;
    return 0;
}

/* The fitting size with the best img/s whose peak is under HEADROOM x limit; -1 if none. */
static int best_row(const prof_row *rows, int n, double limit_mb) {
    int best = -1;
    for (int i = 0; i < n; i++)
        if (rows[i].fits && (limit_mb <= 0 || row_peak(&rows[i]) <= HEADROOM * limit_mb) &&
            (best < 0 || rows[i].img_s > rows[best].img_s))
            best = i;
    return best;
}

static void write_table(FILE *f, const prof_args *a, const prof_row *rows, int n,
                        double limit_mb, const char *limit_src, int best) {
    fprintf(f, "camotrain profile: %s, devices %s, %d steps per batch size (the first not "
            "timed)\nmemory limit: %.0f MB (%s); peak: %s\n", a->conf,
            a->devices ? a->devices : "(the config's)", a->steps, limit_mb, limit_src,
            n && rows[0].gpu ? "GPU memory of replica 0 (caching allocator)"
                             : "resident memory of the training process (VmHWM)");
    fprintf(f, "%6s %10s %10s %10s  %s\n", "batch", "img/s", "step_ms", "peak_mb", "fits");
    for (int i = 0; i < n; i++) {
        const prof_row *r = &rows[i];
        if (r->fits) fprintf(f, "%6d %10.1f %10.1f %10.1f  yes\n", r->batch, r->img_s, r->step_ms,
                             row_peak(r));
        else fprintf(f, "%6d %10s %10s %10.1f  no: %s\n", r->batch, "-", "-", row_peak(r), r->why);
    }
    if (best >= 0 && limit_mb > 0)
        fprintf(f, "best: batch %d: %.1f img/s, peak %.0f MB (under 90 %% of %.0f MB)\n",
                rows[best].batch, rows[best].img_s, row_peak(&rows[best]), limit_mb);
    else if (best >= 0) /* a GPU without --mem-limit: fitting means not out of memory */
        fprintf(f, "best: batch %d: %.1f img/s, peak %.0f MB (no limit given: no headroom "
                "check; use --mem-limit MB)\n", rows[best].batch, rows[best].img_s,
                row_peak(&rows[best]));
    else
        fprintf(f, "best: none: no batch size fits with 10 %% headroom\n");
}

/* profile.dat (batch img/s step_ms peak_mb fits; img/s and step time NaN where it does not
 * fit) and profile.png: throughput and peak memory against the batch, with the limit and its
 * 90 % line when they are on the curves' scale (not 20 GB of free RAM above 60 MB). */
static void plot_profile(const char *dir, const prof_row *rows, int n, double limit_mb) {
    char dat[CAMO_PATH_MAX + 16], gp[CAMO_PATH_MAX + 16], png[CAMO_PATH_MAX + 16];
    snprintf(dat, sizeof dat, "%s/profile.dat", dir);
    snprintf(gp, sizeof gp, "%s/profile.gp", dir);
    snprintf(png, sizeof png, "%s/profile.png", dir);
    FILE *d = fopen(dat, "w"), *f = fopen(gp, "w");
    int ok = d && f;
    double top = 0;
    for (int i = 0; ok && i < n; i++) {
        const prof_row *r = &rows[i];
        fprintf(d, "%d %.3f %.3f %.3f %d\n", r->batch, r->fits ? r->img_s : NAN,
                r->fits ? r->step_ms : NAN, row_peak(r), r->fits);
        top = fmax(top, row_peak(r));
    }
    if (ok) {
        camo_gnuplot_terminal(f, 1000, 420, png);
        fputs("set grid\nset logscale x 2\nset xlabel 'global batch'\nset key bottom right\n"
              "set yrange [0:*]\nset multiplot layout 1,2 title 'camotrain profile'\n"
              "set ylabel 'images / s'\n", f);
        fprintf(f, "plot '%s' using 1:2 with linespoints lw 2 pt 7 title 'img/s'\n", dat);
        fprintf(f, "set ylabel 'peak memory (MB)'\nplot '%s' using 1:($5 == 1 ? $4 : 1/0) with "
                "linespoints lw 2 pt 7 title 'peak (fits)', '' using 1:($5 == 0 ? $4 : 1/0) "
                "with points pt 2 ps 2 lw 2 title 'does not fit'", dat);
        if (limit_mb > 0 && limit_mb < 3 * top)
            fprintf(f, ", %g with lines dt 2 title 'limit', %g with lines dt 3 title '90 %%'",
                    limit_mb, HEADROOM * limit_mb);
        fputs("\nunset multiplot\n", f);
    }
    if (d) fclose(d);
    if (f) fclose(f);
    if (!ok || camo_gnuplot_run(gp, png))
        camo_warn("no %s: %s", png, ok ? camo_last_error() : "cannot write its data");
}

/* Runs the sizes in order until one does not fit. Returns the rows run, or -1 / -2. */
static int sweep(const prof_args *a, const char *dir, const char *cfg, double cap_mb,
                 double gpu_cap_mb, prof_row *rows) {
    int n = 0;
    for (int i = 0; i < a->n_batches; i++) {
        prof_row *r = &rows[n++];
        *r = (prof_row){.batch = a->batches[i]};
        camo_info("profile: batch %d ...", r->batch);
        int rc = profile_batch(dir, cfg, cap_mb, gpu_cap_mb, r);
        if (rc) return rc == CAMO_ERR_INPUT ? -2 : -1;
        if (r->fits) camo_info("profile: batch %d: %.1f img/s, %.1f ms/step, peak %.0f MB",
                               r->batch, r->img_s, r->step_ms, row_peak(r));
        else { camo_info("profile: batch %d does not fit: %s", r->batch, r->why); break; }
    }
    return n;
}

int cli_profile(int argc, char **argv) {
    prof_args a;
    int p = parse_args(argc, argv, &a);
    if (p) return p > 0 ? CAMO_OK : CAMO_ERR_INPUT;
    char dir[CAMO_PATH_MAX], cfg[CAMO_PATH_MAX + 32];
    snprintf(dir, sizeof dir, "%s", a.out);
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "camotrain: error: %s: cannot create: %s\n", dir, strerror(errno));
        return CAMO_ERR_INPUT;
    }
    int gpu;
    if (write_child_config(&a, dir, cfg, sizeof cfg, &gpu)) {
        fprintf(stderr, "camotrain: error: %s\n", camo_last_error());
        return CAMO_ERR_INPUT;
    }
    /* CPU: --mem-limit caps the resident memory (default: what is available); GPU: it caps
     * the GPU peak (default: none but the device's own), host memory stays capped by what
     * is available. The headroom is taken of the limit of the memory reported. */
    double avail = proc_kb("meminfo", 0, "MemAvailable:") / 1024;
    double cap = !gpu && a.mem_limit_mb > 0 ? a.mem_limit_mb : avail;
    double gpu_cap = gpu ? a.mem_limit_mb : 0;
    prof_row rows[MAX_BATCHES];
    int n = sweep(&a, dir, cfg, cap, gpu_cap, rows);
    if (n < 0) {
        fprintf(stderr, "camotrain: error: %s\n", camo_last_error());
        return n == -2 ? CAMO_ERR_INPUT : CAMO_ERR_RUNTIME;
    }
    double limit = gpu ? gpu_cap : cap;
    const char *gpu_src = "none given: 0";
    if (gpu && limit <= 0 && gpu_total_mb(a.devices, &limit) == 0) gpu_src = "the GPU's total";
    int best = best_row(rows, n, limit);
    char txt[CAMO_PATH_MAX + 16];
    snprintf(txt, sizeof txt, "%s/profile.txt", dir);
    FILE *f = fopen(txt, "w");
    const char *src = a.mem_limit_mb > 0 ? "--mem-limit" : gpu ? gpu_src
                                                               : "available memory at the start";
    if (f) write_table(f, &a, rows, n, limit, src, best), fclose(f);
    write_table(stdout, &a, rows, n, limit, src, best);
    plot_profile(dir, rows, n, limit);
    printf("wrote %s and %s/profile.png\n", txt, dir);
    return best >= 0 ? CAMO_OK : CAMO_ERR_RUNTIME;
}
