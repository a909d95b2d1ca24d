#!/usr/bin/env bash
# The numerical suites under other OpenBLAS kernels. OpenBLAS picks its kernels (and with
# them the order of every sgemm sum) by CPU: a test whose bound holds for one machine's
# order but not for every correct one passes here and fails on a user's machine. tests/run.sh
# runs the suites under this machine's default kernel; this script runs them again under
# others: in `make test` under one other kernel (Sandybridge, or Haswell where Sandybridge is
# the default), in `make test-matrix` (CAMO_MATRIX=all) under every kernel a user's x86-64
# machine may pick, then under the default with other cache sizes (OPENBLAS_L2_SIZE) and two
# threads. CAMO_MATRIX="Zen Haswell" runs the kernels named.
# Suites: PyTorch references (layers, losses), gradcheck, CPU ops, the [parallel] equivalence
# suite, and the CUDA parity suite on cuemu (its "GPU" sums in double: the CPU side is the
# one whose order changes). One PASS/FAIL line per suite and setting.
. "$(dirname "$0")/lib.sh" blas_matrix
B=${BUILD:-build}
CUEMU=${CUEMU_BUILD:-}
export CAMO_CUEMU_DEVICES=2
ALL="Prescott Nehalem Sandybridge Haswell Zen SkylakeX"
SUITES="test_torch_ref test_loss_torch test_gradcheck test_cpu_conv test_cpu_pool_norm
        test_cpu_elementwise test_cpu_loss_optim test_parallel"

# the kernel OpenBLAS picks here (it names it at load with OPENBLAS_VERBOSE=2)
default=$(CAMO_NO_REEXEC=1 OPENBLAS_VERBOSE=2 "$BIN" --help 2>&1 | sed -n 's/^Core: //p' | head -1)
echo "OpenBLAS default kernel here: ${default:-unknown}"

case ${CAMO_MATRIX:-} in
    "") other=Sandybridge; [ "$default" = Sandybridge ] && other=Haswell; SETTINGS="core=$other" ;;
    all) SETTINGS=""
         for c in $ALL; do SETTINGS="$SETTINGS core=$c"; done
         SETTINGS="$SETTINGS l2=262144 l2=1048576 l2=8388608 threads=2" ;;
    *) SETTINGS=""; for c in $CAMO_MATRIX; do SETTINGS="$SETTINGS core=$c"; done ;;
esac

# run_suite SETTING BINARY: the cmocka binary under the setting's environment
run_suite() {
    local setting=$1 bin=$2 name env=()
    name=$(basename "$bin")
    case $setting in
        core=*) env=(OPENBLAS_CORETYPE="${setting#core=}") ;;
        l2=*) env=(OPENBLAS_L2_SIZE="${setting#l2=}") ;;
        threads=*) env=(OPENBLAS_NUM_THREADS="${setting#threads=}" OMP_NUM_THREADS="${setting#threads=}") ;;
    esac
    if [ ! -x "$bin" ]; then fail "${setting}_$name" "$bin not built"; return; fi
    local log=$TMP/$name.${setting//=/_}.log start
    start=$(date +%s)
    env "${env[@]}" "$bin" > "$log" 2>&1; local rc=$?
    if [ $rc = 0 ] && grep -q '^\[  PASSED  \]' "$log" && ! grep -q '^\[  FAILED  \]' "$log"; then
        pass "${setting}_$name ($(( $(date +%s) - start )) s)"
    else
        grep -B4 '^\[  FAILED  \] test_' "$log" | grep -v '^\[ *\(RUN\|OK\) *\]' | sed 's/^/  | /' | tail -30
        fail "${setting}_$name" "exit $rc under ${env[*]}: $(grep '^\[  FAILED  \] test_' "$log" | sort -u | tr '\n' ' ')"
    fi
}

for setting in $SETTINGS; do
    for s in $SUITES; do run_suite "$setting" "$B/tests/$s"; done
    if [ -n "$CUEMU" ]; then
        run_suite "$setting" "$CUEMU/tests/test_cuda_parity"
    fi
done
