/* test_net_memory.c: the memory figures of --summary (camo_replica_memory, measured at 1 and
 * 2 images) are what a replica really allocates at its training batch: a replica is built
 * with camo_replica_init on a CPU backend whose alloc/free are counted, and the bytes live
 * after it must equal fixed + local_batch x per-image, exactly, for networks with BN, max
 * pooling and deep supervision, AdamW with EMA and SGD without. Also after a resize to a
 * larger batch (evaluation at eval.batch). */
#include <unistd.h>

#include "test_util.h"

#include "backend/backend.h"
#include "core/common.h"
#include "parallel/replica.h"
#include "train/config.h"

#define MAX_LIVE 8192

static struct {
    void *p[MAX_LIVE];
    size_t n[MAX_LIVE];
    int count;
    size_t bytes;
    void *(*alloc)(camo_backend *, size_t);
    void (*free)(camo_backend *, void *);
} live;

static void *count_alloc(camo_backend *be, size_t n) {
    void *p = live.alloc(be, n);
    if (p && live.count < MAX_LIVE) {
        live.p[live.count] = p;
        live.n[live.count++] = n;
        live.bytes += n;
    }
    return p;
}

static void count_free(camo_backend *be, void *p) {
    for (int i = 0; p && i < live.count; i++)
        if (live.p[i] == p) {
            live.bytes -= live.n[i];
            live.p[i] = live.p[--live.count];
            live.n[i] = live.n[live.count];
            break;
        }
    live.free(be, p);
}

static camo_backend *counting_backend(void) {
    camo_backend *be = camo_backend_cpu_create(1);
    assert_non_null(be);
    memset(&live, 0, sizeof live);
    live.alloc = be->alloc;
    live.free = be->free;
    be->alloc = count_alloc;
    be->free = count_free;
    return be;
}

static void check(const char *net_file, const char *optimizer, double ema, int S, int L) {
    char path[600], cwd[400];
    snprintf(path, sizeof path, "%s/net_memory.cfg", tu_tmpdir());
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_non_null(getcwd(cwd, sizeof cwd));
    fprintf(f, "model = \"%s/%s\";\ndata = { img_size = %d; };\n"
            "train = { optimizer = \"%s\"; ema_decay = %g; };\n", cwd, net_file, S, optimizer, ema);
    fclose(f);
    camo_config c;
    int rc = camo_config_load(&c, path, NULL, NULL, 0);
    if (rc) fprintf(stderr, "  %s\n", camo_last_error());
    assert_int_equal(rc, 0);
    camo_replica_opts o = {.net = camo_config_net_source(&c), .img_size = S,
                           .loss = LOSS_STRUCTURE, .deep_supervision = 1,
                           .optim = camo_config_optim_opts(&c), .seed = 1};
    /* the figures, from a net at 1 image (as --summary has it) */
    camo_backend *plain = camo_backend_cpu_create(1);
    camo_net *net = camo_net_build(&o.net, plain, NULL);
    assert_non_null(net);
    assert_int_equal(camo_net_set_input_size(net, 1, S, S), 0);
    camo_replica_mem m;
    assert_int_equal(camo_replica_memory(net, &o, &m), 0);
    assert_int_equal(net->N, 1); /* restored */
    size_t fixed = camo_replica_mem_fixed(&m), per = camo_replica_mem_per_image(&m);
    /* what a replica allocates */
    camo_replica r;
    assert_int_equal(camo_replica_init(&r, &o, NULL, counting_backend(), 0, 1, L, NULL), 0);
    fprintf(stderr, "  %s %s ema %g, %dx%d, batch %d: allocated %zu bytes, figures %zu + %d x "
            "%zu = %zu\n", net->name, optimizer, ema, S, S, L, live.bytes, fixed, L, per,
            fixed + (size_t)L * per);
    assert_int_equal(live.bytes, fixed + (size_t)L * per);
    assert_true(m.net.arena_img > 0 && m.net.arena_img < m.net.plain_img / 2);
    assert_true(m.net.kept_img <= m.net.arena_img && m.net.grad_peak_img < m.net.arena_img);
    assert_int_equal(m.optim, (size_t)(strcmp(optimizer, "sgd") ? 2 : 1) * m.net.weights);
    assert_int_equal(m.ema, ema > 0 ? m.net.weights : 0);
    /* replica 0 evaluating at a larger batch: evaluate.c adds a forward-only plan for it,
     * sharing the arena; input and layer scratch grow to that batch */
    size_t before = live.bytes, E = 2 * (size_t)L + 1;
    assert_int_equal(camo_net_set_eval_size(r.net, (int)E, S, S), 0);
    size_t arena_l = L * m.net.arena_img, arena_e = E * m.net.eval_arena_img;
    fprintf(stderr, "  evaluation at %zu images: arena %zu bytes per image (training %zu)\n", E,
            m.net.eval_arena_img, m.net.arena_img);
    assert_true(m.net.eval_arena_img > 0 && m.net.eval_arena_img < m.net.arena_img);
    assert_int_equal(live.bytes, before + (E - L) * (m.net.input_img + m.net.scratch_img) +
                                     (arena_e > arena_l ? arena_e - arena_l : 0));
    assert_int_equal(camo_net_set_input_size(r.net, L, S, S), 0); /* back: the figures hold */
    assert_int_equal(live.bytes, before);
    assert_int_equal(camo_net_set_input_size(r.net, 2 * L + 1, S, S), 0);
    assert_int_equal(live.bytes, before + (size_t)(L + 1) * camo_net_mem_per_image(&m.net));
    camo_replica_free(&r);
    assert_int_equal(live.bytes, 0); /* and everything is freed */
    camo_net_free(net);
    plain->destroy(plain);
    camo_config_free(&c);
}

static void test_unet_adamw_ema(void **state) {
    (void)state;
    check("conf/models/unet_s.cfg", "adamw", 0.99, 48, 3);
}

static void test_fpn_sgd(void **state) {
    (void)state;
    check("conf/models/fpn_r18.cfg", "sgd", 0, 64, 2);
}

int main(int argc, char **argv) {
    (void)argc;
    camo_cpu_env_reexec(argv);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unet_adamw_ema),
        cmocka_unit_test(test_fpn_sgd),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
