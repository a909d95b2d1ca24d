/* devices.h: parallel.devices ("cpu", "cpu:N", "auto", "0,1", "0,0") -> the replicas of a
 * run, their backends and their comms (DESIGN.md "Training semantics"). */
#ifndef CAMO_DEVICES_H
#define CAMO_DEVICES_H

#include "camo/backend.h"
#include "camo/comm.h"

#define CAMO_MAX_REPLICAS 64

typedef struct camo_devices {
    int n;                        /* replicas */
    int gpu;                      /* 1: GPU ids in id[], 0: CPU replicas */
    int id[CAMO_MAX_REPLICAS];    /* GPU ordinal of each replica (-1 for the CPU) */
    int threads;                  /* intra-op threads of each CPU replica */
} camo_devices;

/* Parses a device spec. `threads`: train.threads (0 = all cores), divided among CPU
 * replicas. "auto" = every GPU, else one CPU replica with a one-line notice.
 * 0, or -1 with an error naming the spec. */
int camo_devices_parse(const char *spec, int threads, camo_devices *d);

/* Backend of replica i. NULL + error. A CPU replica gets d->threads intra-op threads (its
 * own OpenMP team; OpenBLAS stays single-threaded inside it), so N replicas share the
 * cores instead of oversubscribing them. */
camo_backend *camo_devices_backend(const camo_devices *d, int i);

/* A group of comms, one per replica: cpu for CPU replicas, nccl for distinct GPUs, local
 * when a GPU holds several replicas. backends[i] gives the streams. 0, or -1 + error. */
int camo_devices_comms(const camo_devices *d, camo_backend *const *backends,
                       double timeout_s, camo_comm **comms);

#endif
