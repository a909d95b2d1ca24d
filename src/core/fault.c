/* fault.c: the CAMO_TEST_* variables of fault.h, parsed once (thread-safe). */
#include "core/fault.h"

#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

static struct {
    int fail_replica, fail_stall, fail_kill, corrupt_replica, signal, loss_scale;
    int64_t fail_step, grad_overflow, signal_at_step, eval_stall;
} F;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static int64_t env_int(const char *name, int64_t unset) {
    const char *e = getenv(name);
    return e ? atoll(e) : unset;
}

static void read_env(void) {
    int both = getenv("CAMO_TEST_FAIL_REPLICA") && getenv("CAMO_TEST_FAIL_STEP");
    F.fail_replica = both ? (int)env_int("CAMO_TEST_FAIL_REPLICA", -1) : -1;
    F.fail_step = both ? env_int("CAMO_TEST_FAIL_STEP", -1) : -1;
    F.fail_stall = getenv("CAMO_TEST_FAIL_STALL") != NULL;
    F.fail_kill = getenv("CAMO_TEST_FAIL_KILL") != NULL;
    F.corrupt_replica = (int)env_int("CAMO_TEST_CORRUPT_REPLICA", -1);
    F.grad_overflow = env_int("CAMO_TEST_GRAD_OVERFLOW", -1);
    F.signal_at_step = env_int("CAMO_TEST_SIGNAL_AT_STEP", 0);
    int sig = (int)env_int("CAMO_TEST_SIGNAL", 0);
    F.signal = sig > 0 ? sig : SIGTERM;
    F.loss_scale = env_int("CAMO_TEST_LOSS_SCALE", 0) == 1;
    F.eval_stall = env_int("CAMO_TEST_EVAL_STALL", 0);
}

static void load(void) { pthread_once(&once, read_env); }

camo_fault_kind camo_fault_replica(int rank, int replicas, int64_t step) {
    load();
    if (F.fail_replica != rank || F.fail_step != step) return CAMO_FAULT_NONE;
    if (F.fail_kill) return CAMO_FAULT_KILL;
    return F.fail_stall && replicas > 1 ? CAMO_FAULT_STALL : CAMO_FAULT_FAIL;
}

int camo_fault_corrupt_replica(int rank) {
    load();
    return F.corrupt_replica == rank;
}

int camo_fault_grad_overflow(int64_t replica_step) {
    load();
    return F.grad_overflow == replica_step;
}

int camo_fault_signal_at(int64_t step) {
    load();
    return F.signal_at_step && step == F.signal_at_step ? F.signal : 0;
}

int camo_fault_loss_scale_on_cpu(void) {
    load();
    return F.loss_scale;
}

int camo_fault_eval_stall(void) {
    static int64_t evals; /* evaluations run on the main thread, one at a time */
    load();
    return F.eval_stall > 0 && ++evals == F.eval_stall;
}

void camo_fault_hang(void) {
    for (;;) sleep(1);
}
