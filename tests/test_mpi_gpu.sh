#!/usr/bin/env bash
# One training over several processes on GPUs (issue 19; docs/parallel.md "Several processes",
# "GPUs across processes"): mpirun starts 2 processes, each with its own GPUs
# (CUDA_VISIBLE_DEVICES per rank), and every GPU of both joins one NCCL communicator
# (unique id over MPI_Bcast, ncclCommInitRank in a group). On a machine without 2 GPUs it
# runs on the cuemu build ($CUEMU_BUILD, made by `make test`), whose NCCL joins the ranks of
# several processes through a directory under $TMPDIR (tests/cuemu/README.md). Checks: the
# comm test across processes (tests/test_nccl_mpi.c, every collective bitwise), 2 processes
# x 1 GPU against 1 process x 2 GPUs and 2 x 2 against 1 x 4 (DDP and DP, within
# tests/test_mpi.sh's bounds; on cuemu with deterministic cuDNN also bit for bit), two
# processes on one GPU refused, a peer killed (kill -9) or hung mid-step (the other exits
# non-zero within parallel.timeout_s), and on cuemu one communicator per process and no files
# left behind. PASS/FAIL/SKIP lines for tests/run.sh; all SKIP without mpirun or without a
# cuemu build or 2 GPUs.
. "$(dirname "$0")/lib.sh" mpi_gpu

if ! command -v mpirun > /dev/null 2>&1; then
    skip mpi_gpu "mpirun not found (openmpi-bin; tools/install_deps.sh)"; exit 0
fi
if command -v nvidia-smi > /dev/null 2>&1 && [ "$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')" -ge 2 ]; then
    MODE=gpu G=${BUILD:-build} GPUS=$(nvidia-smi -L | grep -c '^GPU')
else
    MODE=cuemu G=${CUEMU_BUILD:-} GPUS=4
    if [ -z "$G" ] || [ ! -x "$G/camotrain" ]; then
        skip mpi_gpu "no 2 GPUs and no cuemu build (make test builds build-cuemu; not under TSAN=1)"
        exit 0
    fi
    export CAMO_CUEMU_DEVICES=4 CAMO_CUEMU_HANG_S=60
fi
B=$G/camotrain
RB=$B
. "$(dirname "$0")/mpi_recipe.sh"
# cuemu's NCCL meets the other processes in $TMPDIR: this test's own, to see what stays
export TMPDIR=$TMP/tmpdir
mkdir -p "$TMPDIR"
echo "GPUs over processes on $MODE, binaries from $G"

# ranks.sh K CMD...: process p sees GPUs p*K .. p*K+K-1 as its ordinals 0..K-1
cat > "$TMP/ranks.sh" <<'EOF'
#!/bin/sh
k=$1; shift; p=${OMPI_COMM_WORLD_RANK:-0}; v=$((p * k))
i=1; while [ $i -lt "$k" ]; do v="$v,$((p * k + i))"; i=$((i + 1)); done
CUDA_VISIBLE_DEVICES=$v exec "$@"
EOF
chmod +x "$TMP/ranks.sh"

if ! ldd "$B" 2> /dev/null | grep -q libmpi; then
    skip mpi_gpu "$B was built without MPI (no OpenMPI at build time)"; exit 0
fi

# ---- the comm across processes: every collective and type bitwise, abort, errors ----
if [ -x "$G/tests/test_nccl_mpi" ]; then
    mkdir -p "$TMP/tmp_comm" # its own: a failure there leaves files behind
    out=$(TMPDIR=$TMP/tmp_comm $MPI -np 2 "$G/tests/test_nccl_mpi" 2>&1); rc=$?
    n=$(echo "$out" | grep -c '^\[  PASSED  \] [1-9][0-9]* test(s)')
    f=$(echo "$out" | grep -c '^\[  FAILED  \]')
    s=$(echo "$out" | grep -c '^\[  SKIPPED \]') # real NCCL: the mismatch test is cuemu's
    [ $rc = 0 ] && [ "$n" = 2 ] && [ "$f" = 0 ] && { [ "$s" = 0 ] || [ $MODE = gpu ]; } &&
        pass "${MODE}_nccl_mpi_comm" \
        || fail "${MODE}_nccl_mpi_comm" "exit $rc, $n processes passed, $s skipped: $(echo "$out" |
            grep -E 'FAIL|rror|SKIP' | head -3)"
else skip "${MODE}_nccl_mpi_comm" "no $G/tests/test_nccl_mpi"; fi

mpi_recipe "${MODE}_mpi_gpu_synth" || exit 0
one() { $B $C "$@" > "$TMP/last.log" 2>&1; }                                 # one process
procs() { local k=$1; shift; $MPI -np 2 "$TMP/ranks.sh" "$k" $B $C "$@" > "$TMP/last.log" 2>&1; }

# ---- 2 processes x 1 GPU = 1 process x 2 GPUs, 2 x 2 = 1 x 4; DDP and DP ----
: > "$TMP/report"
for k in 1 2; do
    [ $((2 * k)) -gt "$GPUS" ] && { skip "${MODE}_mpi_gpu_2x$k" "$GPUS GPUs"; continue; }
    all=0; ids=0; i=1; while [ $i -lt $((2 * k)) ]; do all="$all,$i"; i=$((i + 1)); done
    i=1; while [ $i -lt "$k" ]; do ids="$ids,$i"; i=$((i + 1)); done
    for mode in ddp dp; do
        name=${MODE}_mpi_gpu_2x${k}_equals_1x$((2 * k))_$mode
        rep=""; [ $mode = ddp ] && [ $k = 2 ] && rep=$TMP/report
        if one --devices "$all" --parallel $mode --out "$TMP/one_${k}_$mode" &&
           CAMO_CUEMU_REPORT=$rep procs "$k" --devices "$ids" --parallel $mode \
               --out "$TMP/two_${k}_$mode"; then
            close "$name" "$TMP/two_${k}_$mode/last.ckpt" "$TMP/one_${k}_$mode/last.ckpt"
        else fail "$name" "$(tail -3 "$TMP/last.log")"; fi
    done
done

if [ $MODE = cuemu ]; then
    # cuemu's NCCL sums in rank order in one process and over processes alike: with cuDNN's
    # deterministic algorithms, 2 x 2 is 1 x 4 bit for bit (real NCCL picks its own order)
    name=cuemu_mpi_gpu_2x2_equals_1x4_bitwise
    if one --devices 0,1,2,3 --set train.deterministic=true --out "$TMP/one_det" &&
       procs 2 --devices 0,1 --set train.deterministic=true --out "$TMP/two_det"; then
        h1=$(hashes "$TMP/one_det/last.ckpt"); h2=$(hashes "$TMP/two_det/last.ckpt")
        [ -n "$h1" ] && [ "$h1" = "$h2" ] && pass $name \
            || fail $name "relative L2 $(rel "$TMP/two_det/last.ckpt" "$TMP/one_det/last.ckpt")"
    else fail $name "$(tail -3 "$TMP/last.log")"; fi
    # DDP: the gradients' communicator only (the host comm carries losses): one per process,
    # each over the 4 GPUs of both processes
    n=$(grep -c '^nccl_comm_init_rank .*ranks=4 .*processes=2 ' "$TMP/report")
    m=$(grep -c '^nccl_comm_init_all ' "$TMP/report")
    [ "$n" = 2 ] && [ "$m" = 0 ] && pass cuemu_mpi_gpu_one_communicator_over_processes \
        || fail cuemu_mpi_gpu_one_communicator_over_processes "$n init_rank lines, $m init_all: $(
            grep nccl "$TMP/report" | head -3)"
    left=$(ls "$TMPDIR" | grep -c '^cuemu-nccl-')
    [ "$left" = 0 ] && pass cuemu_mpi_gpu_files_removed \
        || fail cuemu_mpi_gpu_files_removed "$left cuemu-nccl-* folders left in TMPDIR"
fi

# ---- two processes on one GPU: refused (by camotrain's own check, else NCCL's Duplicate
# GPU: tests/test_nccl_mpi.c checks that one), both end, fast ----
start=$(date +%s)
out=$(CUDA_VISIBLE_DEVICES=0 timeout 120 $MPI -np 2 $B $C --devices 0 --out "$TMP/dup" 2>&1); rc=$?
took=$(( $(date +%s) - start ))
[ $rc != 0 ] && [ $rc != 124 ] && [ $took -lt 30 ] && echo "$out" | grep -qE 'same GPU|invalid usage' \
    && pass "${MODE}_mpi_gpu_same_gpu_refused (exit $rc after ${took}s)" \
    || fail "${MODE}_mpi_gpu_same_gpu_refused" "exit $rc after ${took}s: $(echo "$out" | grep -i error | head -2)"

# ---- kill -9 of process 1 at step 3: process 0 exits non-zero in time, last.ckpt loads ----
# (a) mpirun ends the job, (b) told not to: process 0's NCCL wait times out after
# parallel.timeout_s, aborts its communicator (which must end the wait in NCCL), MPI_Abort
K="--devices 0 --set checkpoint.every_steps=1 --set parallel.timeout_s=5"
for how in launcher timeout; do
    mca=""; [ $how = timeout ] && mca="--mca orte_abort_on_non_zero_status 0"
    start=$(date +%s)
    CAMO_TEST_FAIL_REPLICA=1 CAMO_TEST_FAIL_STEP=3 CAMO_TEST_FAIL_KILL=1 timeout 120 \
        $MPI $mca -np 2 "$TMP/ranks.sh" 1 $B $C $K --out "$TMP/kill_$how" > "$TMP/kill_$how.log" 2>&1
    rc=$? took=$(( $(date +%s) - start )) step=$(meta step "$TMP/kill_$how/last.ckpt")
    said=1; [ $how = timeout ] && { grep -q 'timed out after 5 s' "$TMP/kill_$how.log" || said=0; }
    if [ $rc != 0 ] && [ $rc != 124 ] && [ $took -lt 20 ] && [ "$step" = 2 ] && [ $said = 1 ]; then
        pass "${MODE}_mpi_gpu_kill9_$how (exit $rc after ${took}s)"
    else fail "${MODE}_mpi_gpu_kill9_$how" \
        "exit $rc after ${took}s, last.ckpt step '$step': $(tail -2 "$TMP/kill_$how.log")"; fi
done

# ---- a process hangs (replica 1 stalls at step 2): process 0 times out ----
start=$(date +%s)
CAMO_TEST_FAIL_REPLICA=1 CAMO_TEST_FAIL_STEP=2 CAMO_TEST_FAIL_STALL=1 timeout 120 \
    $MPI -np 2 "$TMP/ranks.sh" 1 $B $C --devices 0 --set checkpoint.every_steps=1 \
    --set parallel.timeout_s=3 --out "$TMP/stall" > "$TMP/stall.log" 2>&1
rc=$? took=$(( $(date +%s) - start )) step=$(meta step "$TMP/stall/last.ckpt")
if [ $rc != 0 ] && [ $rc != 124 ] && [ $took -lt 20 ] && [ "$step" = 1 ] &&
   grep -q 'process 0 of 2: .*timed out after 3 s' "$TMP/stall.log"; then
    pass "${MODE}_mpi_gpu_hung_process (exit $rc after ${took}s)"
else fail "${MODE}_mpi_gpu_hung_process" \
    "exit $rc after ${took}s, last.ckpt step '$step': $(tail -2 "$TMP/stall.log")"; fi
