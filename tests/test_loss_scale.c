/* test_loss_scale.c: the fp16 dynamic loss-scale state machine (replica.h) and the DDP
 * side queue that carries sync-BN sums in backward (ddp.h), on CPU comms. */
#include <pthread.h>

#include "backend/comm.h"
#include "core/common.h"
#include "parallel/ddp.h"
#include "parallel/replica.h"
#include "nn/layer.h"

#include "test_util.h"

static void test_start(void **state) {
    (void)state;
    camo_loss_scale s;
    camo_loss_scale_init(&s, 0);
    assert_true(s.scale == 65536.0);
    assert_int_equal(s.good, 0);
    assert_int_equal(s.skipped, 0);
    camo_loss_scale_init(&s, 1024);
    assert_true(s.scale == 1024.0);
}

static void test_overflow_halves_and_skips(void **state) {
    (void)state;
    camo_loss_scale s;
    camo_loss_scale_init(&s, 0);
    for (int i = 0; i < 10; i++) assert_int_equal(camo_loss_scale_update(&s, 1), 0);
    assert_int_equal(s.good, 10);
    assert_int_equal(camo_loss_scale_update(&s, 0), 1);
    assert_true(s.scale == 32768.0);
    assert_int_equal(s.good, 0); /* the run of good steps starts again */
    assert_int_equal(camo_loss_scale_update(&s, 0), 1);
    assert_true(s.scale == 16384.0);
    assert_int_equal(s.bad_run, 2);
    assert_int_equal(s.skipped, 2);
    assert_int_equal(camo_loss_scale_update(&s, 1), 0);
    assert_int_equal(s.bad_run, 0);
    assert_int_equal(s.skipped, 2);
}

static void test_growth_after_2000(void **state) {
    (void)state;
    camo_loss_scale s;
    camo_loss_scale_init(&s, 8);
    for (int i = 0; i < CAMO_LOSS_SCALE_GROWTH - 1; i++) camo_loss_scale_update(&s, 1);
    assert_true(s.scale == 8.0);
    camo_loss_scale_update(&s, 1);
    assert_true(s.scale == 16.0);
    assert_int_equal(s.good, 0);
    /* an overflow one step before the next doubling resets the count */
    for (int i = 0; i < CAMO_LOSS_SCALE_GROWTH - 1; i++) camo_loss_scale_update(&s, 1);
    camo_loss_scale_update(&s, 0);
    assert_true(s.scale == 8.0);
    for (int i = 0; i < CAMO_LOSS_SCALE_GROWTH - 1; i++) camo_loss_scale_update(&s, 1);
    assert_true(s.scale == 8.0);
}

static void test_bounds(void **state) {
    (void)state;
    camo_loss_scale s;
    camo_loss_scale_init(&s, CAMO_LOSS_SCALE_MAX);
    for (int i = 0; i < CAMO_LOSS_SCALE_GROWTH; i++) camo_loss_scale_update(&s, 1);
    assert_true(s.scale == CAMO_LOSS_SCALE_MAX);
    camo_loss_scale_init(&s, CAMO_LOSS_SCALE_MIN);
    assert_int_equal(camo_loss_scale_update(&s, 0), 1);
    assert_true(s.scale == CAMO_LOSS_SCALE_MIN); /* never 0: losses are divided by it */
}

/* ---- the DDP side queue ---- */

/* A tiny network-less DDP: buckets over a fake gradient block, driven by hand. */
typedef struct side_rank {
    camo_comm *comm;
    camo_net net;
    camo_ddp ddp;
    float grad[64], bn[8];
    int rc;
} side_rank;

/* Each rank launches half the buckets, runs a side all-reduce, launches the rest: the
 * side sum is right, and the buckets are summed too, on every rank. */
static void *side_thread(void *arg) {
    side_rank *s = arg;
    int rank = s->comm->rank;
    for (int i = 0; i < 64; i++) s->grad[i] = (float)(rank + 1);
    for (int i = 0; i < 8; i++) s->bn[i] = (float)(10 * (rank + 1) + i);
    camo_ddp_arm(&s->ddp, 1);
    s->net.on_layer_grads(s->net.on_layer_grads_ctx, 1); /* layers 1.. done */
    s->rc = camo_ddp_side_all_reduce(&s->ddp, s->bn, 8);
    s->rc |= camo_ddp_finish(&s->ddp, NULL);
    return NULL;
}

static void test_side_queue(void **state) {
    (void)state;
    enum { N = 3 };
    camo_comm *comms[N];
    assert_int_equal(camo_comm_cpu_create(N, 30, comms), 0);
    side_rank ranks[N];
    memset(ranks, 0, sizeof ranks);
    /* 2 layers, one 32-float weight each; block in reverse order: layer 1 first */
    pthread_t th[N];
    for (int r = 0; r < N; r++) {
        side_rank *s = &ranks[r];
        s->comm = comms[r];
        s->net.n_layers = 2;
        s->net.n_params = 2;
        s->net.n_weight_floats = 64;
        s->net.grad_block = s->grad;
        s->net.params = camo_calloc(2, sizeof(camo_param));
        s->net.layers = camo_calloc(2, sizeof(camo_layer));
        for (int k = 0; k < 2; k++) {
            s->net.params[k].kind = CAMO_PARAM_WEIGHT;
            s->net.params[k].numel = 32;
            s->net.params[k].grad = s->grad + (k == 1 ? 0 : 32);
            s->net.layers[k].param0 = k;
            s->net.layers[k].n_params = 1;
        }
        /* 32 floats per bucket: two buckets */
        assert_int_equal(camo_ddp_init(&s->ddp, &s->net, comms[r], 100.0 / 1048576,
                                       100.0 / 1048576), 0);
    }
    for (int r = 0; r < N; r++) pthread_create(&th[r], NULL, side_thread, &ranks[r]);
    for (int r = 0; r < N; r++) pthread_join(th[r], NULL);
    for (int r = 0; r < N; r++) {
        side_rank *s = &ranks[r];
        assert_int_equal(s->rc, 0);
        for (int i = 0; i < 64; i++) assert_true(s->grad[i] == 6.0f);
        for (int i = 0; i < 8; i++) assert_true(s->bn[i] == (float)(60 + 3 * i));
        camo_ddp_free(&s->ddp);
        free(s->net.params);
        free(s->net.layers);
        comms[r]->destroy(comms[r]);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_start),
        cmocka_unit_test(test_overflow_halves_and_skips),
        cmocka_unit_test(test_growth_after_2000),
        cmocka_unit_test(test_bounds),
        cmocka_unit_test(test_side_queue),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
