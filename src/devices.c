/* devices.c: device specs, per-replica backends and comm groups (see devices.h). */
#include "camo/devices.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "camo/common.h"

static int cores(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

/* "0,1,1": GPU ordinals */
static int parse_gpu_list(const char *spec, camo_devices *d) {
    const char *p = spec;
    d->n = 0;
    while (*p) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 0 || v > 1023 || (*end && *end != ',')) goto bad;
        if (d->n == CAMO_MAX_REPLICAS) {
            CAMO_ERR("parallel.devices = \"%s\": more than %d replicas", spec, CAMO_MAX_REPLICAS);
            return -1;
        }
        d->id[d->n++] = (int)v;
        p = *end ? end + 1 : end;
        if (*end && !*p) goto bad;
    }
    if (d->n == 0) goto bad;
    int have = camo_cuda_device_count();
    for (int i = 0; i < d->n; i++) {
        if (d->id[i] >= have) {
            CAMO_ERR("parallel.devices = \"%s\": GPU %d does not exist (%d usable GPU%s)", spec,
                     d->id[i], have, have == 1 ? "" : "s");
            return -1;
        }
    }
    d->gpu = 1;
    return 0;
bad:
    CAMO_ERR("parallel.devices = \"%s\": expected cpu, cpu:N, auto or GPU ids like 0,1", spec);
    return -1;
}

/* CUDA 12 loads kernel modules lazily, at a kernel's first launch, holding the context lock
 * and waiting for the device queue; in the first overlapped step that can wait for an NCCL
 * kernel whose peer thread is itself blocked: a deadlock (docs/cuda.md). Eager loading
 * avoids it. The driver reads the variable at its initialisation, so this runs before the
 * first CUDA call of the process (camo_cuda_device_count below); a user's value is kept. */
static void cuda_eager_loading(void) { setenv("CUDA_MODULE_LOADING", "EAGER", 0); }

int camo_devices_parse(const char *spec, int threads, camo_devices *d) {
    memset(d, 0, sizeof *d);
    int total = threads > 0 ? threads : cores();
    if (strcmp(spec, "cpu") && strncmp(spec, "cpu:", 4) && strchr(spec, ','))
        cuda_eager_loading(); /* several GPU replicas: NCCL or local comm */
    else if (!strcmp(spec, "auto"))
        cuda_eager_loading(); /* may be several GPUs; counting them initialises CUDA */
    if (!strcmp(spec, "auto")) {
        int g = camo_cuda_device_count();
        if (g > 0) {
            d->gpu = 1;
            d->n = CAMO_MIN(g, CAMO_MAX_REPLICAS);
            for (int i = 0; i < d->n; i++) d->id[i] = i;
            const char *vis = getenv("CUDA_VISIBLE_DEVICES");
            camo_info("devices: auto -> %d GPU%s (ids 0..%d of CUDA_VISIBLE_DEVICES=%s)", d->n,
                      d->n == 1 ? "" : "s", d->n - 1, vis ? vis : "unset");
            return 0;
        }
        camo_info("devices: auto -> cpu (no usable GPU)");
        spec = "cpu";
    }
    if (!strcmp(spec, "cpu") || !strncmp(spec, "cpu:", 4)) {
        char *end = NULL;
        long n = spec[3] ? strtol(spec + 4, &end, 10) : 1;
        if ((end && (*end || end == spec + 4)) || n < 1 || n > CAMO_MAX_REPLICAS) {
            CAMO_ERR("parallel.devices = \"%s\": cpu:N needs 1 <= N <= %d", spec,
                     CAMO_MAX_REPLICAS);
            return -1;
        }
        d->n = (int)n;
        for (int i = 0; i < d->n; i++) d->id[i] = -1;
        d->threads = CAMO_MAX(1, total / d->n);
        return 0;
    }
    return parse_gpu_list(spec, d);
}

camo_backend *camo_devices_backend(const camo_devices *d, int i) {
    if (d->gpu) return camo_backend_cuda_create(d->id[i]);
    /* each CPU replica runs its own OpenMP team of d->threads; OpenBLAS's process-wide
     * pool stays at 1 thread (backend_cpu.c), its sgemms run inside those teams */
    return camo_backend_cpu_create(d->threads);
}

int camo_devices_comms(const camo_devices *d, camo_backend *const *backends,
                       double timeout_s, camo_comm **comms) {
    if (!d->gpu) return camo_comm_cpu_create(d->n, timeout_s, comms);
    void *streams[CAMO_MAX_REPLICAS];
    int shared = 0;
    for (int i = 0; i < d->n; i++) {
        streams[i] = camo_backend_stream(backends[i]);
        for (int j = 0; j < i; j++) shared |= d->id[i] == d->id[j];
    }
    if (shared) return camo_comm_local_create(d->n, d->id, streams, timeout_s, comms);
    return camo_comm_nccl_create(d->n, d->id, streams, timeout_s, comms);
}
