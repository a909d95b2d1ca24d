/* devices.c: device specs, per-replica backends and comm groups (see devices.h). */
#include "parallel/devices.h"

#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/common.h"
#include "core/mpi.h"
#include "backend/cuda.h"
#include "parallel/replica.h"
#include "nn/layer.h" /* the conv layers' descriptors and buffers (camo_devices_prepare) */

static int cores(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

/* ---- CUDA module loading ---- */

/* Entries of CUDA_VISIBLE_DEVICES up to the first invalid one (the driver stops there):
 * ordinals, GPU-/MIG- UUIDs. "" or "-1" hide every GPU. */
static int visible_count(const char *vis) {
    int n = 0;
    for (const char *p = vis; *p && *p != ',' && *p != '-';) {
        n++;
        p += strcspn(p, ",");
        if (*p) p++;
    }
    return n;
}

/* GPUs `auto` will find, counted without initialising CUDA: the NVIDIA kernel driver's
 * entries in /proc/driver/nvidia/gpus (a container sees only its own), at most as many as
 * CUDA_VISIBLE_DEVICES lists. -1 when unknown (no such folder: no NVIDIA driver, WSL, the
 * emulator) and CUDA_VISIBLE_DEVICES is unset. */
static int gpus_before_cuda(void) {
    int n = -1;
    DIR *dir = opendir("/proc/driver/nvidia/gpus");
    if (dir) {
        n = 0;
        for (struct dirent *e; (e = readdir(dir));) n += e->d_name[0] != '.';
        closedir(dir);
    }
    const char *vis = getenv("CUDA_VISIBLE_DEVICES");
    if (vis) n = n < 0 ? visible_count(vis) : CAMO_MIN(n, visible_count(vis));
    return n;
}

/* CUDA 12 loads kernel modules lazily, at a kernel's first launch, holding the context lock
 * and waiting for the device queue; in the first overlapped step that can wait for an NCCL
 * kernel whose peer thread is itself blocked: a deadlock (docs/cuda.md). Eager loading
 * avoids it, at a price: every kernel of cuDNN and cuBLAS is loaded into each context,
 * seconds and hundreds of MB per GPU (a real share of a 16 GB T4). So only runs whose
 * replicas talk through NCCL (two or more distinct GPUs) get it; one GPU has no collective,
 * and the local comm of replicas sharing a GPU launches no kernel that waits for a peer.
 * The driver reads the variable when it initialises, so this runs before the first CUDA
 * call of the process; a user's value is kept. why: what makes it an NCCL run. */
static void eager_loading_for_nccl(const char *why) {
    const char *user = getenv("CUDA_MODULE_LOADING");
    if (user) {
        camo_info("devices: CUDA_MODULE_LOADING=%s kept from the environment (%s)", user, why);
        return;
    }
    setenv("CUDA_MODULE_LOADING", "EAGER", 1);
    camo_info("devices: CUDA_MODULE_LOADING=EAGER (%s; docs/cuda.md)", why);
}

/* No GPU of this process holds two replicas. */
static int gpus_unshared(const camo_devices *d) {
    for (int i = 0; i < d->n; i++)
        for (int j = 0; j < i; j++)
            if (d->id[i] == d->id[j]) return 0;
    return 1;
}

/* 1 when the replicas sit on two or more GPUs, each alone (this process's, or those of
 * every process of the run): camo_devices_comms gives them the nccl comm. */
static int distinct_gpus(const camo_devices *d) {
    return gpus_unshared(d) && (d->n >= 2 || d->procs > 1);
}

/* ---- the processes of one machine (several processes of a run, core/mpi.h) ---- */

/* How the machine names GPU ordinal i of a process whose CUDA_VISIBLE_DEVICES is `visible`
 * (NULL: unset): entry i of that list, else the ordinal. Two processes naming a GPU alike
 * hold the same GPU (unless one lists it by UUID and the other by ordinal: not caught). */
static void gpu_name(const char *visible, int i, char *out, size_t n) {
    if (!visible) {
        snprintf(out, n, "%d", i);
        return;
    }
    const char *p = visible;
    for (int k = 0; k < i && *p; k++) {
        p += strcspn(p, ",");
        if (*p) p++;
    }
    snprintf(out, n, "%.*s", (int)strcspn(p, ","), p);
}

/* Every process of this machine sees the same GPUs (the same CUDA_VISIBLE_DEVICES, or none). */
static int same_visibility(int L) {
    const char *v0, *v;
    camo_mpi_local_peer(0, &v0);
    for (int l = 1; l < L; l++) {
        camo_mpi_local_peer(l, &v);
        if ((v == NULL) != (v0 == NULL) || (v && strcmp(v, v0))) return 0;
    }
    return 1;
}

/* `auto` over L processes that see the same g GPUs: local process l takes g / L of them,
 * from l * g / L (g must divide: equal replica counts). */
static void auto_share(int g, int L, int l, int *first, int *n) {
    *n = g / L;
    *first = l * *n;
}

/* The GPU ordinals local process l uses (every process parses the same spec): the list in
 * d (all = 0), or for auto (all = 1) every GPU it sees (with an unset CUDA_VISIBLE_DEVICES
 * every GPU of the machine, up to the cap). */
static int peer_ids(const camo_devices *d, int l, int all, int *ids) {
    const char *vis;
    camo_mpi_local_peer(l, &vis);
    int n = !all ? d->n : vis ? visible_count(vis) : CAMO_MAX_REPLICAS;
    n = CAMO_MIN(n, CAMO_MAX_REPLICAS);
    for (int i = 0; i < n; i++) ids[i] = all ? i : d->id[i];
    return n;
}

static const char *host(void) {
    static char name[256];
    if (gethostname(name, sizeof name - 1)) snprintf(name, sizeof name, "this machine");
    return name;
}

/* NCCL takes one rank per GPU: no GPU may serve two processes of this machine (a GPU
 * shared by replicas of one process is the local comm's, and nccl_span refuses it).
 * all: as peer_ids. Every process finds the same answer. */
static int gpus_unshared_by_processes(const camo_devices *d, const char *spec, int all) {
    int L = camo_mpi_local_size(), ia[CAMO_MAX_REPLICAS], ib[CAMO_MAX_REPLICAS];
    char na[1024], nb[1024];
    for (int a = 0; a < L; a++) {
        int n_a = peer_ids(d, a, all, ia);
        for (int b = a + 1; b < L; b++) {
            int n_b = peer_ids(d, b, all, ib);
            const char *va, *vb;
            int pa = camo_mpi_local_peer(a, &va), pb = camo_mpi_local_peer(b, &vb);
            for (int i = 0; i < n_a; i++)
                for (int j = 0; j < n_b; j++) {
                    gpu_name(va, ia[i], na, sizeof na);
                    gpu_name(vb, ib[j], nb, sizeof nb);
                    if (strcmp(na, nb) || !na[0]) continue;
                    CAMO_ERR("parallel.devices = \"%s\": processes %d and %d of %d, both on %s, "
                             "would use the same GPU %s (CUDA_VISIBLE_DEVICES %s and %s); NCCL "
                             "takes one rank per GPU. Give each process its own GPUs: "
                             "--devices auto shares this machine's GPUs out among its %d "
                             "processes, or set CUDA_VISIBLE_DEVICES per process", spec, pa, pb,
                             d->procs, host(), na, va ? va : "unset", vb ? vb : "unset", L);
                    return -1;
                }
        }
    }
    return 0;
}

/* `auto` with L > 1 processes on this machine, g GPUs visible here: this process's first
 * GPU and count. 0, or -1 + error. */
static int auto_local(const camo_devices *d, int g, int *first, int *n) {
    int L = camo_mpi_local_size(), l = camo_mpi_local_rank();
    const char *vis = getenv("CUDA_VISIBLE_DEVICES");
    if (!same_visibility(L)) { /* each was given its own GPUs: all it sees */
        *first = 0;
        *n = g;
        return gpus_unshared_by_processes(d, "auto", 1);
    }
    if (g % L) {
        CAMO_ERR("parallel.devices = \"auto\": %d GPU%s visible (CUDA_VISIBLE_DEVICES=%s) to each "
                 "of the %d processes of this run on %s, and auto gives each process an equal "
                 "share: %d GPU%s do%s not divide among %d processes. Start a process count "
                 "that divides %d on this machine, give each process its own GPUs with "
                 "CUDA_VISIBLE_DEVICES (auto then takes all a process sees), or name them with "
                 "--devices", g, g == 1 ? "" : "s", vis ? vis : "unset", L, host(), g,
                 g == 1 ? "" : "s", g == 1 ? "es" : "", L, g);
        return -1;
    }
    auto_share(g, L, l, first, n);
    char line[1024];
    int len = snprintf(line, sizeof line, "devices: auto on %s: %d GPUs shared out among its %d "
                       "processes, %d each:", host(), g, L, *n);
    for (int p = 0; p < L && len < (int)sizeof line; p++) {
        const char *v;
        int f, k, rank = camo_mpi_local_peer(p, &v);
        auto_share(g, L, p, &f, &k);
        len += snprintf(line + len, sizeof line - (size_t)len, "%s process %d -> %d..%d",
                        p ? ";" : "", rank, f, f + k - 1);
    }
    camo_info("%s", line);
    return 0;
}

/* ---- parsing ---- */

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
    if (camo_mpi_local_size() > 1 && gpus_unshared_by_processes(d, spec, 0)) return -1;
    if (distinct_gpus(d)) eager_loading_for_nccl("NCCL over distinct GPUs"); /* before CUDA */
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

/* "auto": every GPU (with several processes on this machine, this one's share), else one
 * CPU replica. 1 when it found GPUs, 0 for the CPU, -1 + error. */
static int parse_auto(camo_devices *d) {
    int before = gpus_before_cuda(); /* counting with CUDA would initialise it */
    if (before < 0 || before >= 2 || d->procs > 1)
        eager_loading_for_nccl("auto: possibly several GPUs");
    int g = camo_cuda_device_count();
    if (g <= 0) {
        camo_info("devices: auto -> cpu (no usable GPU)");
        return 0;
    }
    int first = 0, n = g;
    if (camo_mpi_local_size() > 1 && auto_local(d, g, &first, &n)) return -1;
    d->gpu = 1;
    d->n = CAMO_MIN(n, CAMO_MAX_REPLICAS);
    for (int i = 0; i < d->n; i++) d->id[i] = first + i;
    const char *vis = getenv("CUDA_VISIBLE_DEVICES");
    camo_info("devices: auto -> %d GPU%s (ids %d..%d of CUDA_VISIBLE_DEVICES=%s)", d->n,
              d->n == 1 ? "" : "s", first, first + d->n - 1, vis ? vis : "unset");
    return 1;
}

static int parse_devices(const char *spec, int threads, camo_devices *d) {
    memset(d, 0, sizeof *d);
    d->proc = camo_mpi_rank();
    d->procs = camo_mpi_size();
    int total = threads > 0 ? threads : CAMO_MAX(1, cores() / camo_mpi_local_size());
    if (!strcmp(spec, "auto")) {
        int found = parse_auto(d);
        if (found) return found < 0 ? -1 : 0;
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

int camo_devices_parse(const char *spec, int threads, camo_devices *d) {
    if (parse_devices(spec, threads, d)) return -1;
    return d->gpu ? camo_cuda_check_versions() : 0;
}

/* ---- backends and comms ---- */

camo_backend *camo_devices_backend(const camo_devices *d, int i) {
    if (d->gpu) return camo_backend_cuda_create(d->id[i]);
    /* each CPU replica runs its own OpenMP team of d->threads; OpenBLAS's process-wide
     * pool stays at 1 thread (backend_cpu.c), its sgemms run inside those teams */
    return camo_backend_cpu_create(d->threads);
}

/* The span of a group over the run's processes (a new MPI communicator: collective). */
static int make_span(const camo_devices *d, double timeout_s, camo_comm_span *span) {
    span->base = d->proc * d->n;
    span->world = d->procs * d->n;
    span->xp = camo_mpi_group_create(timeout_s);
    return span->xp ? 0 : -1;
}

/* NCCL over every process's GPUs: process 0 makes the unique id, MPI takes it to the
 * others, every process joins with its GPUs. */
static int nccl_span(const camo_devices *d, void *const *streams, double timeout_s,
                     camo_comm_span *span, camo_comm **comms) {
    unsigned char id[CAMO_NCCL_ID_BYTES] = {0};
    if (!gpus_unshared(d)) {
        CAMO_ERR("parallel.devices: replicas sharing a GPU cannot span processes (NCCL takes "
                 "one rank per GPU); give each process distinct GPUs");
    } else if ((d->proc != 0 || camo_comm_nccl_unique_id(id) == 0) &&
               camo_mpi_bcast(span->xp, id, sizeof id, 0, NULL) == 0) {
        return camo_comm_nccl_create_span(d->n, d->id, streams, timeout_s, span, id, comms);
    }
    camo_mpi_group_free(span->xp);
    return -1;
}

int camo_devices_comms(const camo_devices *d, camo_backend *const *backends,
                       double timeout_s, camo_comm **comms) {
    camo_comm_span span;
    if (d->procs > 1 && make_span(d, timeout_s, &span)) return -1;
    if (!d->gpu)
        return camo_comm_cpu_create_span(d->n, timeout_s, d->procs > 1 ? &span : NULL, comms);
    void *streams[CAMO_MAX_REPLICAS];
    for (int i = 0; i < d->n; i++) streams[i] = camo_backend_stream(backends[i]);
    if (d->procs > 1) return nccl_span(d, streams, timeout_s, &span, comms);
    if (!distinct_gpus(d)) return camo_comm_local_create(d->n, d->id, streams, timeout_s, comms);
    return camo_comm_nccl_create(d->n, d->id, streams, timeout_s, comms);
}

/* What `ctl` carries (src/parallel/replica.c): host sums everywhere (losses, pixel counts, the
 * start-up checksum, fp16 overflow flags, sync-BN row counts), and device data only for the
 * sync-BN sums of DP. Under DDP those go through the gradient comm's thread instead
 * (camo_ddp_side_all_reduce), so every other run needs no GPU clique for `ctl`: on NCCL that
 * saves a second communicator per GPU (its buffers, its connections) for a few doubles. */
int camo_devices_ctl_comms(const camo_devices *d, camo_backend *const *backends,
                           int device_data, double timeout_s, camo_comm **comms) {
    camo_comm_span span;
    if (!d->gpu || device_data) return camo_devices_comms(d, backends, timeout_s, comms);
    if (d->procs > 1 && make_span(d, timeout_s, &span)) return -1;
    return camo_comm_host_create_span(d->n, timeout_s, d->procs > 1 ? &span : NULL, comms);
}

/* ---- convolutions prepared before step 1 ---- */

/* Adds n to sizes[0..*k) unless present (at most cap entries; n > 0). */
static void add_size(int *sizes, int *k, int cap, int n) {
    for (int i = 0; i < *k; i++)
        if (sizes[i] == n) return;
    if (*k < cap) sizes[(*k)++] = n;
}

/* The image counts replica `rank` of `size` will run: its slice of every stage's full
 * global batch and of the last, partial one (the loader's only other size), and the
 * one-image ghost pass of sync-BN when a slice is empty. Largest first. */
static int local_batches(const int *batches, int n_batches, int sync_bn, int n_images,
                         int rank, int size, int *sizes, int cap) {
    int k = 0;
    for (int s = 0; s < n_batches; s++) {
        int B = batches[s];
        int global[2] = {CAMO_MIN(B, n_images), n_images % B};
        for (int j = 0; j < 2; j++) {
            int lo, count;
            if (global[j] <= 0) continue;
            camo_replica_slice(global[j], rank, size, &lo, &count);
            if (count > 0) add_size(sizes, &k, cap, count);
            else if (sync_bn) add_size(sizes, &k, cap, 1);
        }
    }
    for (int i = 1; i < k; i++) /* insertion sort, descending */
        for (int j = i; j > 0 && sizes[j] > sizes[j - 1]; j--) {
            int t = sizes[j];
            sizes[j] = sizes[j - 1];
            sizes[j - 1] = t;
        }
    return k;
}

/* Runs every convolution of net once at n images, as a training step would (forward,
 * backward filter, backward data unless its input is the image), on the net's own buffers.
 * routed_only: only those inside mixture-of-experts branches (rows_from), which run on any
 * number of images up to the batch: the routing decides. */
static void run_convs(camo_net *net, int n, int routed_only) {
    camo_backend *be = net->be;
    for (int i = 0; i < net->n_layers; i++) {
        camo_layer *l = &net->layers[i];
        if (l->type != CAMO_LAYER_CONV2D || (routed_only && l->rows_from == 0)) continue;
        camo_conv_desc d = l->u.conv.d;
        d.N = n;
        camo_param *w = &net->params[l->param0];
        camo_param *b = l->u.conv.has_bias ? &net->params[l->param0 + 1] : NULL;
        const float *in = layer_input(net, l, 0);
        be->conv2d_forward(be, &d, l->out, in, w->data, b ? b->data : NULL);
        be->conv2d_backward_filter(be, &d, w->grad, b ? b->grad : NULL, l->dout, in);
        if (l->in[0] >= 0 || net->want_input_grad)
            be->conv2d_backward_data(be, &d, layer_input_grad_raw(net, l, 0), l->dout, w->data);
    }
}

/* Why: a GPU backend makes a convolution's cuDNN plan at its first use and grows its
 * workspace (cudaMalloc) when a plan needs more, and another batch size is another plan
 * whose algorithm may want more workspace than the full batch's (the smaller last batch of
 * an epoch, the next stage). Inside a step that cudaMalloc may wait for the device while
 * peers' NCCL kernels are in flight (DESIGN.md hazards). Running every convolution at every
 * local batch size here, before step 1 and before any comm exists, makes the plans and
 * grows the workspace to the largest any step needs. The results are discarded: gradients
 * are zeroed after; activations and their gradients are rewritten by every step. */
int camo_devices_prepare(const camo_devices *d, camo_net *net, const int *batches,
                         int n_batches, int sync_bn, int n_images, int rank) {
    if (!d->gpu || n_images <= 0) return 0;
    int cap = 2 * n_batches + 1, *sizes = camo_malloc((size_t)cap * sizeof *sizes);
    int size = d->n * CAMO_MAX(1, d->procs); /* rank is global: slices of every process */
    int k = local_batches(batches, n_batches, sync_bn, n_images, rank, size, sizes, cap);
    for (int i = 0; i < k; i++)
        if (sizes[i] <= net->N_train) run_convs(net, sizes[i], 0);
    int largest = k ? sizes[0] : 0;
    for (int m = 1; m <= CAMO_MIN(largest, net->N_train); m++) run_convs(net, m, 1);
    free(sizes);
    camo_net_zero_param_grads(net);
    camo_net_zero_act_grads(net);
    net->be->sync(net->be);
    if (camo_cuda_backend_status(net->be)) {
        char msg[600];
        snprintf(msg, sizeof msg, "%s", camo_last_error());
        CAMO_ERR("replica %d: preparing the convolutions of %s for batches of up to %d "
                 "images: %s", rank, net->name, largest, msg);
        return -1;
    }
    return 0;
}
