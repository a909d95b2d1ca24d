/* devices.h: parallel.devices ("cpu", "cpu:N", "auto", "0,1", "0,0") -> the replicas of a
 * run, their backends and their comms (DESIGN.md "Training semantics"). */
#ifndef CAMO_DEVICES_H
#define CAMO_DEVICES_H

#include "backend/backend.h"
#include "backend/comm.h"
#include "nn/net.h"

#define CAMO_MAX_REPLICAS 64

typedef struct camo_devices {
    int n;                        /* replicas */
    int gpu;                      /* 1: GPU ids in id[], 0: CPU replicas */
    int id[CAMO_MAX_REPLICAS];    /* GPU ordinal of each replica (-1 for the CPU) */
    int threads;                  /* intra-op threads of each CPU replica */
    /* A run of several processes (core/mpi.h; 0 and 1 otherwise): this process's replicas
     * are global ranks proc * n .. proc * n + n - 1 of procs * n, every process has n. */
    int proc, procs;
} camo_devices;

/* Parses a device spec. `threads`: train.threads (0 = all cores, divided among the run's
 * processes on this machine), divided among CPU replicas. "auto" = every GPU, else one CPU
 * replica with a one-line notice. 0, or -1 with an error naming the spec. Runs before the
 * process's first CUDA call: when the replicas will talk through NCCL (two or more distinct
 * GPUs, or any over several processes; for "auto", GPUs counted without CUDA, or unknown) it
 * sets CUDA_MODULE_LOADING=EAGER unless the environment has a
 * value (docs/cuda.md "Lazy module loading"), with one info line; other runs stay lazy. */
int camo_devices_parse(const char *spec, int threads, camo_devices *d);

/* Backend of replica i. NULL + error. A CPU replica gets d->threads intra-op threads (its
 * own OpenMP team; OpenBLAS stays single-threaded inside it), so N replicas share the
 * cores instead of oversubscribing them. */
camo_backend *camo_devices_backend(const camo_devices *d, int i);

/* A group of comms, one per replica: cpu for CPU replicas, nccl for two or more distinct
 * GPUs, local when a GPU holds several replicas (or for a lone GPU). backends[i] gives the
 * streams. Over several processes (d->procs > 1; collective, every process in the same
 * order) the group spans them all: cpu over MPI, or one NCCL communicator over every GPU of
 * every process (the id from process 0 by MPI); GPUs shared by replicas cannot span
 * processes. 0, or -1 + error. */
int camo_devices_comms(const camo_devices *d, camo_backend *const *backends,
                       double timeout_s, camo_comm **comms);

/* The group of control comms (replica.h `ctl`): the host comm (no GPU clique, no GPU
 * memory) for GPU replicas unless ctl must carry device data (device_data: sync-BN in DP
 * mode), else what camo_devices_comms gives. 0, or -1 + error. */
int camo_devices_ctl_comms(const camo_devices *d, camo_backend *const *backends,
                           int device_data, double timeout_s, camo_comm **comms);

/* GPU replicas, before step 1 and before any comm exists: runs every convolution of net
 * (replica `rank`, global over processes, on its backend) once at each image count the
 * replica will see in training (its slice of each full and last partial global batch of
 * n_images, for the global batch sizes batches[0..n_batches) of the stages; the ghost pass
 * of sync_bn), so that no step makes a cuDNN plan or grows a workspace
 * (cudaMalloc) while collectives may be in flight. Parameter and activation gradients are
 * zeroed after. No-op for CPU replicas. 0, or -1 + error naming the replica. */
int camo_devices_prepare(const camo_devices *d, camo_net *net, const int *batches,
                         int n_batches, int sync_bn, int n_images, int rank);

#endif
