/* fault.h: fault injection for the tests. Each fault is an environment variable
 * CAMO_TEST_*, read once; production code asks at the one place where a fault would
 * strike whether it strikes now, so tests reach failure paths with real threads, comms and
 * files (tests/test_parallel.sh, test_train_resume.sh, test_loss_scale.sh). Without those
 * variables every query answers "no". */
#ifndef CAMO_FAULT_H
#define CAMO_FAULT_H

#include <stdint.h>

typedef enum {
    CAMO_FAULT_NONE, CAMO_FAULT_FAIL, CAMO_FAULT_STALL, CAMO_FAULT_KILL
} camo_fault_kind;

/* CAMO_TEST_FAIL_REPLICA=r with CAMO_TEST_FAIL_STEP=s: replica r fails when it starts step
 * s, or (CAMO_TEST_FAIL_STALL set, and more than one replica) stops responding instead, or
 * (CAMO_TEST_FAIL_KILL set) its process dies at once, as under kill -9 (a process of a
 * multi-process run, tests/test_mpi.sh). r is a global rank (process p holds p * k ..). */
camo_fault_kind camo_fault_replica(int rank, int replicas, int64_t step);
/* CAMO_TEST_CORRUPT_REPLICA=r: replica r's weights differ after the start broadcast. */
int camo_fault_corrupt_replica(int rank);
/* CAMO_TEST_GRAD_OVERFLOW=k: a summed gradient becomes inf at a replica's k-th step. */
int camo_fault_grad_overflow(int64_t replica_step);
/* CAMO_TEST_SIGNAL_AT_STEP=s: the signal to raise after step s (CAMO_TEST_SIGNAL, default
 * SIGTERM; 9 imitates a crash), else 0. */
int camo_fault_signal_at(int64_t step);
/* CAMO_TEST_LOSS_SCALE=1: fp16 loss scaling on CPU replicas (exact in fp32). */
int camo_fault_loss_scale_on_cpu(void);
/* CAMO_TEST_EVAL_STALL=n: the process's n-th evaluation (1 = its first) stops responding
 * at its first batch (camo_fault_hang): process 0 of a multi-process run hung inside
 * evaluation, for the others' parallel.eval_timeout_s (tests/test_mpi.sh). Call once per
 * evaluation. */
int camo_fault_eval_stall(void);
/* Never returns: sleeps until the process is killed (a stalled evaluation; signals that
 * the process handles do not end it, as they would not end a real hang). */
void camo_fault_hang(void);

#endif
