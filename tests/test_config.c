/* test_config.c: training configs: defaults, --set overrides, stages, and errors that name
 * the file, line and key. */
#include "test_util.h"

#include "core/common.h"
#include "train/config.h"

static const char *write_cfg(const char *name, const char *text) {
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", tu_tmpdir(), name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    return path;
}

static void test_demo_config_loads(void **state) {
    (void)state;
    camo_config c;
    assert_int_equal(camo_config_load(&c, "conf/demo.cfg", NULL, NULL, 0), 0);
    assert_int_equal(c.train.n_stages, 1);
    assert_int_equal(c.train.stages[0].epochs, c.train.epochs);
    assert_string_equal(c.data.format, "auto");
    assert_non_null(strstr(c.model_path, "unet_s.cfg"));
    camo_config_free(&c);
}

static void test_overrides(void **state) {
    (void)state;
    char *sets[] = {"train.lr=0.5", "train.epochs=3", "data.augment.hflip=false", "out=runs/x",
                    "train.loss=bce", "parallel.sync_bn=true", "eval.threshold=1"};
    camo_config c;
    assert_int_equal(camo_config_load(&c, "conf/demo.cfg", NULL, sets, 7), 0);
    assert_true(fabs(c.train.stages[0].lr - 0.5) < 1e-12);
    assert_int_equal(c.train.epochs, 3);
    assert_int_equal(c.data.aug.hflip, 0);
    assert_string_equal(c.out, "runs/x");
    assert_string_equal(c.train.loss, "bce");
    assert_int_equal(c.parallel.sync_bn, 1);
    assert_non_null(strstr(c.text, "0.5")); /* the saved text carries the overrides */
    camo_config_free(&c);
}

static void expect_fail(const char *path, char **sets, int n, const char *needle) {
    camo_config c;
    camo_clear_error();
    assert_int_not_equal(camo_config_load(&c, path, NULL, sets, n), 0);
    camo_config_free(&c);
    if (!strstr(camo_last_error(), needle))
        fprintf(stderr, "  error: %s\n  wanted: %s\n", camo_last_error(), needle);
    assert_non_null(strstr(camo_last_error(), needle));
}

static void test_errors(void **state) {
    (void)state;
    char *s1[] = {"train.lrr=1"};
    expect_fail("conf/demo.cfg", s1, 1, "unknown key 'lrr'");
    expect_fail("conf/demo.cfg", s1, 1, "--set train.lrr"); /* names the override */
    char *s2[] = {"train.epochs=ten"};
    expect_fail("conf/demo.cfg", s2, 1, "not a valid integer");
    char *s3[] = {"train.optimizer=lamb"};
    expect_fail("conf/demo.cfg", s3, 1, "not one of sgd|adamw");
    char *s4[] = {"nokey"};
    expect_fail("conf/demo.cfg", s4, 1, "expected key=value");
    char *s5[] = {"train.batch=0"};
    expect_fail("conf/demo.cfg", s5, 1, "out of range");
    expect_fail("conf/nope.cfg", NULL, 0, "nope.cfg");
    const char *p = write_cfg("bad1.cfg", "model = \"x.cfg\";\ntrain = {\n  epochs = 2;\n  lr = \"fast\";\n};\n");
    expect_fail(p, NULL, 0, "bad1.cfg:4");
    p = write_cfg("bad2.cfg", "model = \"x.cfg\";\ntrain = { epochs = 5; stages = ( { epochs = 2; }, { epochs = 2; } ); };\n");
    expect_fail(p, NULL, 0, "add up to 4");
    /* a syntax error (libconfig makes ';' optional, so a missing value) */
    p = write_cfg("bad3.cfg", "model = \"x.cfg\";\ntrain = { epochs = ; };\n");
    expect_fail(p, NULL, 0, "bad3.cfg:2");
    p = write_cfg("bad4.cfg", "train = { epochs = 1; };\n");
    expect_fail(p, NULL, 0, "missing key 'model'");
    p = write_cfg("bad5.cfg", "model = \"x.cfg\";\ndata = { augment = { scale_min = 1.5; scale_max = 1.2; }; };\n");
    expect_fail(p, NULL, 0, "scale_min");
}

/* data.subset: the libconfig type decides fraction (float) or count (int); train_split: a
 * string or a list, kept joined by commas. */
static void test_subset_and_splits(void **state) {
    (void)state;
    camo_config c;
    char *frac[] = {"data.subset=0.25", "data.train_split=[\"Train\", \"Val\"]"};
    assert_int_equal(camo_config_load(&c, "conf/demo.cfg", NULL, frac, 2), 0);
    assert_float_equal(c.data.subset, 0.25, 0);
    assert_string_equal(c.data.train_split, "Train,Val");
    camo_config_free(&c);
    char *count[] = {"data.subset=1"};
    assert_int_equal(camo_config_load(&c, "conf/demo.cfg", NULL, count, 1), 0);
    assert_float_equal(c.data.subset, 1.0, 0);  /* one image */
    camo_config_free(&c);
    char *all[] = {"data.subset=1.0"};
    assert_int_equal(camo_config_load(&c, "conf/demo.cfg", NULL, all, 1), 0);
    assert_float_equal(c.data.subset, 0.0, 0);  /* every image */
    camo_config_free(&c);
    char *bad[][1] = {{"data.subset=0"}, {"data.subset=1.5"}, {"data.subset=-3"},
                      {"data.subset=\"half\""}};
    for (int i = 0; i < 4; i++) expect_fail("conf/demo.cfg", bad[i], 1, "data.subset must be");
    const char *p = write_cfg("nosplit.cfg", "model = \"x.cfg\";\ndata = { root = \"d\"; };\n");
    assert_int_equal(camo_config_load(&c, p, NULL, NULL, 0), 0);
    assert_string_equal(c.data.train_split, "Train"); /* the default when the key is absent */
    camo_config_free(&c);
    char *split[] = {"data.train_split=[1, 2]"};
    expect_fail("conf/demo.cfg", split, 1, "train_split");
}

static void test_stages(void **state) {
    (void)state;
    camo_config c;
    assert_int_equal(camo_config_load(&c, "conf/kaggle_2gpu.cfg", NULL, NULL, 0), 0);
    assert_int_equal(c.train.n_stages, 2);
    assert_int_equal(c.train.epochs, 140);
    assert_int_equal(c.train.stages[0].epochs, 30);
    assert_int_equal(c.train.stages[1].batch, 24);
    assert_true(fabs(c.train.stages[1].lr - 1.5e-4) < 1e-12);
    assert_true(fabs(c.train.stages[0].warmup_epochs - 10) < 1e-12);
    assert_true(c.train.stages[1].warmup_epochs == 0);
    assert_string_equal(c.train.stages[0].freeze, "encoder");
    assert_int_equal(c.train.stages[1].progressive_unfreeze, 1);
    camo_config_free(&c);
}

static void test_checkpoint_text_roundtrip(void **state) {
    (void)state;
    char *sets[] = {"train.lr=0.25"};
    camo_config a, b;
    assert_int_equal(camo_config_load(&a, "conf/demo.cfg", NULL, sets, 1), 0);
    assert_int_equal(camo_config_load(&b, "ck", a.text, NULL, 0), 0);
    assert_true(fabs(b.train.stages[0].lr - 0.25) < 1e-12);
    assert_int_equal(b.data.aug.size, a.data.aug.size);
    camo_config_free(&a);
    camo_config_free(&b);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_demo_config_loads),
        cmocka_unit_test(test_overrides),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_subset_and_splits),
        cmocka_unit_test(test_stages),
        cmocka_unit_test(test_checkpoint_text_roundtrip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
