#!/usr/bin/env bash
# One training over several processes (issue 19; docs/parallel.md "Several processes"), with
# real processes started by mpirun and real files: 2 processes x cpu:2 against cpu:4 in one
# process (DDP and DP, within tests/test_parallel.c's bounds on the smooth network), an empty
# window (a process with no image in a batch, sync-BN ghost pass), "ce" pixel counts summed
# over windows, a signal in one process only, a 2x2 checkpoint resumed as 1x4 and as 4x1, a
# process killed (kill -9) or hung mid-step (the others exit non-zero within
# parallel.timeout_s, last.ckpt intact), processes that disagree, the comm test across
# processes, process 0 hung in evaluation (the others give up after
# parallel.eval_timeout_s), --devices auto split among the processes of a machine and a GPU
# shared by two processes refused (on the cuemu build, $CUEMU_BUILD, else SKIP), and no MPI
# at all without a launcher. PASS/FAIL/SKIP lines for tests/run.sh; all SKIP without
# mpirun (tools/install_deps.sh installs openmpi-bin).
. "$(dirname "$0")/lib.sh" mpi_sh

if ! command -v mpirun > /dev/null 2>&1; then
    skip mpi "mpirun not found (openmpi-bin; tools/install_deps.sh)"; exit 0
fi
RB=$BIN
. "$(dirname "$0")/mpi_recipe.sh"
BUILD=${BUILD:-build}

mpi_recipe synth || exit 0
same() { [ -n "$(hashes "$1")" ] && [ "$(hashes "$1")" = "$(hashes "$2")" ]; }
one() { $BIN $C "$@" > "$TMP/last.log" 2>&1; }             # one process
procs() { local p=$1; shift; $MPI -np "$p" $BIN $C "$@" > "$TMP/last.log" 2>&1; }

# a build without MPI refuses to run as one of several processes: nothing more to test
procs 2 --devices cpu:2 --set train.max_steps=1 --out "$TMP/probe"
if grep -q 'built without MPI' "$TMP/last.log"; then
    skip mpi "this camotrain was built without MPI (no OpenMPI at build time)"; exit 0
fi

# ---- the comm across processes: every collective bitwise, a late process times out ----
if [ -x "$BUILD/tests/test_comm_mpi" ]; then
    out=$($MPI -np 2 "$BUILD/tests/test_comm_mpi" 2>&1); rc=$?
    n=$(echo "$out" | grep -c '^\[  PASSED  \] 2 test(s)')
    [ $rc = 0 ] && [ "$n" = 2 ] && pass comm_mpi_2x2 \
        || fail comm_mpi_2x2 "exit $rc, $n passed: $(echo "$out" | grep -E 'FAIL|rror' | head -3)"
else skip comm_mpi_2x2 "no $BUILD/tests/test_comm_mpi"; fi

# ---- 2 processes x cpu:2 = cpu:4 in one process, DDP and DP ----
for mode in ddp dp; do
    if one --devices cpu:4 --parallel $mode --out "$TMP/one_$mode" &&
       procs 2 --devices cpu:2 --parallel $mode --out "$TMP/two_$mode"; then
        close "mpi_2x2_equals_cpu4_$mode" "$TMP/two_$mode/last.ckpt" "$TMP/one_$mode/last.ckpt"
    else fail "mpi_2x2_equals_cpu4_$mode" "$(tail -3 "$TMP/last.log")"; fi
done
same "$TMP/two_ddp/last.ckpt" "$TMP/two_dp/last.ckpt" && pass mpi_2x2_dp_equals_ddp_bitwise \
    || fail mpi_2x2_dp_equals_ddp_bitwise "DP and DDP over 2 processes differ"
# process 0 alone writes: one summary, 4 replicas in the metrics
procs 2 --devices cpu:2 --set train.max_steps=2 --out "$TMP/speak" --set log.tensorboard=false
n=$(grep -c '^max_steps reached: ' "$TMP/last.log")
grep -q '"replicas":4,' "$TMP/speak/metrics.jsonl" 2>/dev/null && [ "$n" = 1 ] \
    && pass mpi_process0_logs || fail mpi_process0_logs "$n summaries; $(tail -2 "$TMP/last.log")"

# ---- an empty window: batches of 5, the last (2 images) leaves process 1 without one ----
if one --devices cpu:4 --set train.batch=5 --out "$TMP/one_b5" &&
   procs 2 --devices cpu:2 --set train.batch=5 --out "$TMP/two_b5"; then
    close mpi_empty_window_sync_bn "$TMP/two_b5/last.ckpt" "$TMP/one_b5/last.ckpt"
else fail mpi_empty_window_sync_bn "$(tail -3 "$TMP/last.log")"; fi

# ---- "ce": valid pixels of each batch summed over the processes' windows ----
if $BIN synth --out "$TMP/synth3" --train 22 --test 4 --size 32 --seed 3 --classes 3 \
       > "$TMP/synth3.log" 2>&1; then
    CE="--set data.root=$TMP/synth3 --set data.classes=3 --set train.loss=ce"
    CE="$CE --set train.deep_supervision=false"
    if one --devices cpu:4 $CE --out "$TMP/one_ce" &&
       procs 2 --devices cpu:2 $CE --out "$TMP/two_ce"; then
        close mpi_ce_pixel_counts "$TMP/two_ce/last.ckpt" "$TMP/one_ce/last.ckpt"
    else fail mpi_ce_pixel_counts "$(tail -3 "$TMP/last.log")"; fi
else fail mpi_ce_pixel_counts "synth --classes 3: $(tail -2 "$TMP/synth3.log")"; fi

# ---- SIGTERM in process 1 only, after step 2: all stop there, process 0 saves, exit 0 ----
cat > "$TMP/signal_one.sh" <<'EOF'
#!/bin/sh
[ "${OMPI_COMM_WORLD_RANK:-0}" = 1 ] && export CAMO_TEST_SIGNAL_AT_STEP=2
exec "$@"
EOF
chmod +x "$TMP/signal_one.sh"
$MPI -np 2 "$TMP/signal_one.sh" $BIN $C --devices cpu:2 --out "$TMP/part" > "$TMP/part.log" 2>&1
rc=$?
step=$(meta step "$TMP/part/last.ckpt")
[ $rc = 0 ] && [ "$step" = 2 ] && grep -q '^interrupted: ' "$TMP/part.log" \
    && pass mpi_signal_one_process \
    || fail mpi_signal_one_process "exit $rc, last.ckpt step '$step': $(tail -2 "$TMP/part.log")"

# ---- that 2x2 checkpoint resumed as 1x4 and as 4 processes x 1 ends where cpu:4 ends ----
if [ "$step" = 2 ]; then
    R="--resume $TMP/part/last.ckpt --quiet" # the checkpoint's config, not --conf
    if $BIN $R --devices cpu:4 --out "$TMP/res_1x4" > "$TMP/last.log" 2>&1; then
        close mpi_resume_2x2_as_1x4 "$TMP/res_1x4/last.ckpt" "$TMP/one_ddp/last.ckpt"
    else fail mpi_resume_2x2_as_1x4 "$(tail -3 "$TMP/last.log")"; fi
    if $MPI -np 4 $BIN $R --devices cpu:1 --out "$TMP/res_4x1" > "$TMP/last.log" 2>&1; then
        close mpi_resume_2x2_as_4x1 "$TMP/res_4x1/last.ckpt" "$TMP/one_ddp/last.ckpt"
    else fail mpi_resume_2x2_as_4x1 "$(tail -3 "$TMP/last.log")"; fi
else
    fail mpi_resume_2x2_as_1x4 "no 2x2 checkpoint at step 2"
    fail mpi_resume_2x2_as_4x1 "no 2x2 checkpoint at step 2"
fi

# ---- kill -9 of process 1 at step 3: process 0 exits non-zero in time, last.ckpt loads ----
# (a) mpirun's own reaction (it ends the job), (b) with that turned off, process 0's
# collective times out after parallel.timeout_s and MPI_Abort ends the job
K="--devices cpu:2 --set checkpoint.every_steps=1 --set parallel.timeout_s=5"
for how in launcher timeout; do
    mca=""; [ $how = timeout ] && mca="--mca orte_abort_on_non_zero_status 0"
    start=$(date +%s)
    CAMO_TEST_FAIL_REPLICA=2 CAMO_TEST_FAIL_STEP=3 CAMO_TEST_FAIL_KILL=1 timeout 120 \
        $MPI $mca -np 2 $BIN $C $K --out "$TMP/kill_$how" > "$TMP/kill_$how.log" 2>&1
    rc=$? took=$(( $(date +%s) - start )) step=$(meta step "$TMP/kill_$how/last.ckpt")
    said=1; [ $how = timeout ] && { grep -q 'timed out after 5 s' "$TMP/kill_$how.log" || said=0; }
    if [ $rc != 0 ] && [ $rc != 124 ] && [ $took -lt 15 ] && [ "$step" = 2 ] && [ $said = 1 ]; then
        pass "mpi_kill9_$how (exit $rc after ${took}s)"
    else fail "mpi_kill9_$how" \
        "exit $rc after ${took}s, last.ckpt step '$step': $(tail -2 "$TMP/kill_$how.log")"; fi
done
expect mpi_kill9_ckpt_loads 0 '^done: ' -- $BIN --resume "$TMP/kill_timeout/last.ckpt" \
    --devices cpu:4 --out "$TMP/kill_resumed"

# ---- a process hangs (2 x cpu:1, replica 1 stalls at step 2): process 0 times out ----
start=$(date +%s)
CAMO_TEST_FAIL_REPLICA=1 CAMO_TEST_FAIL_STEP=2 CAMO_TEST_FAIL_STALL=1 timeout 120 \
    $MPI -np 2 $BIN $C --devices cpu:1 --set checkpoint.every_steps=1 --set parallel.timeout_s=3 \
    --out "$TMP/stall" > "$TMP/stall.log" 2>&1
rc=$? took=$(( $(date +%s) - start )) step=$(meta step "$TMP/stall/last.ckpt")
if [ $rc != 0 ] && [ $rc != 124 ] && [ $took -lt 15 ] && [ "$step" = 1 ] &&
   grep -q 'process 0 of 2: .*timed out after 3 s' "$TMP/stall.log"; then
    pass "mpi_hung_process (exit $rc after ${took}s)"
else fail mpi_hung_process \
    "exit $rc after ${took}s, last.ckpt step '$step': $(tail -2 "$TMP/stall.log")"; fi

# ---- processes that disagree (another train.lr in process 1) are refused before training ----
out=$(timeout 120 $MPI -np 1 $BIN $C --devices cpu:1 --out "$TMP/differ" : \
      -np 1 $BIN $C --devices cpu:1 --set train.lr=0.01 --out "$TMP/differ" 2>&1); rc=$?
[ $rc != 0 ] && echo "$out" | grep -q 'process 1 of 2 differs from process 0: another config' \
    && pass mpi_processes_differ || fail mpi_processes_differ "exit $rc: $(echo "$out" | tail -2)"

# ---- process 0 evaluates for all; the others wait for it at most parallel.eval_timeout_s ----
E="--devices cpu:1 --set eval.every=1 --set checkpoint.every_steps=1 --set parallel.timeout_s=60"
procs 2 $E --set parallel.eval_timeout_s=3 --out "$TMP/eval"; rc=$?
n=$(grep -c '"type":"eval"' "$TMP/eval/metrics.jsonl" 2>/dev/null)
[ $rc = 0 ] && [ "$n" = 2 ] && pass mpi_eval_by_process0 \
    || fail mpi_eval_by_process0 "exit $rc, $n eval records: $(tail -2 "$TMP/last.log")"
# process 0 hangs in its first evaluation (CAMO_TEST_EVAL_STALL): process 1 gives up after
# eval_timeout_s (3 s, not timeout_s = 60), names process 0's evaluation, MPI_Abort ends both
start=$(date +%s)
CAMO_TEST_EVAL_STALL=1 timeout 120 $MPI -np 2 $BIN $C $E --set parallel.eval_timeout_s=3 \
    --out "$TMP/eval_stall" > "$TMP/eval_stall.log" 2>&1
rc=$? took=$(( $(date +%s) - start )) step=$(meta step "$TMP/eval_stall/last.ckpt")
if [ $rc != 0 ] && [ $rc != 124 ] && [ $took -lt 30 ] && [ "$step" = 3 ] && grep -q \
       "process 1 of 2: .*waited 3 s for process 0's evaluation (parallel.eval_timeout_s)" \
       "$TMP/eval_stall.log"; then
    pass "mpi_eval_hang_process0 (exit $rc after ${took}s)"
else fail mpi_eval_hang_process0 \
    "exit $rc after ${took}s, last.ckpt step '$step': $(grep -m1 error "$TMP/eval_stall.log")"; fi

# ---- --devices auto with several processes on one machine ----
# no GPU (hidden): auto keeps its meaning, one CPU replica per process
out=$(CUDA_VISIBLE_DEVICES= $MPI -np 2 $BIN --conf "$TMP/unet.cfg" --devices auto \
      --set train.max_steps=1 --out "$TMP/auto_cpu" 2>&1); rc=$?
[ $rc = 0 ] && echo "$out" | grep -q 'auto -> cpu' &&
    echo "$out" | grep -q 'parallel: 2 processes x 1 CPU replica = 2 (auto' \
    && pass mpi_devices_auto_cpu || fail mpi_devices_auto_cpu "exit $rc: $(echo "$out" | tail -2)"
# GPUs: on the cuemu build (4 emulated GPUs). Each run stops at the start-up check (process 1
# runs another train.lr) right after the devices are chosen: these test the choice, not NCCL
# across processes (tests/test_mpi_gpu.sh). vis.sh "A B" CMD: process p sees word p + 1.
G=${CUEMU_BUILD:-}
if [ -n "$G" ] && [ -x "$G/camotrain" ] && ldd "$G/camotrain" | grep -q libmpi; then
    cat > "$TMP/vis.sh" <<'EOF'
#!/bin/sh
v=$1; shift
CUDA_VISIBLE_DEVICES=$(echo "$v" | cut -d' ' -f$((${OMPI_COMM_WORLD_RANK:-0} + 1)))
export CUDA_VISIBLE_DEVICES; exec "$@"
EOF
    chmod +x "$TMP/vis.sh"
    # gpus NAME GPUS SPEC [VIS]: 2 processes on GPUS emulated GPUs with --devices SPEC (and
    # VIS: each its own CUDA_VISIBLE_DEVICES); the output in $out
    gpus() {
        local w=(); [ -n "${4:-}" ] && w=("$TMP/vis.sh" "$4")
        out=$(env -u CUDA_VISIBLE_DEVICES CAMO_CUEMU_DEVICES=$2 timeout 120 $MPI \
              -np 1 "${w[@]}" "$G/camotrain" --conf "$TMP/unet.cfg" --devices "$3" --out "$TMP/$1" : \
              -np 1 "${w[@]}" "$G/camotrain" --conf "$TMP/unet.cfg" --devices "$3" --set train.lr=0.01 \
              --out "$TMP/$1" 2>&1)
    }
    has() { echo "$out" | grep -q -- "$1"; }
    gpus auto4 4 auto
    has 'auto on .*: 4 GPUs shared out among its 2 processes, 2 each: process 0 -> 0\.\.1; process 1 -> 2\.\.3' &&
        has 'auto -> 2 GPUs (ids 0\.\.1 of CUDA_VISIBLE_DEVICES=unset)' &&
        has 'process 1 of 2 differs from process 0' \
        && pass mpi_devices_auto_split || fail mpi_devices_auto_split "$(echo "$out" | head -4)"
    # and trains on those shares: one NCCL communicator over the 4 GPUs (cuemu's NCCL, like
    # NCCL, refuses a GPU joined twice), process 0's checkpoint at step 2
    out=$(env -u CUDA_VISIBLE_DEVICES CAMO_CUEMU_DEVICES=4 timeout 300 $MPI -np 2 "$G/camotrain" \
          $C --devices auto --set train.max_steps=2 --out "$TMP/auto_train" 2>&1); rc=$?
    [ $rc = 0 ] && [ "$(meta step "$TMP/auto_train/last.ckpt")" = 2 ] \
        && pass mpi_devices_auto_trains || fail mpi_devices_auto_trains "exit $rc: $(echo "$out" | grep -m2 -i error)"
    gpus auto3 3 auto
    has '"auto": 3 GPUs visible (CUDA_VISIBLE_DEVICES=unset) to each of the 2 processes .*3 GPUs do not divide among 2 processes' &&
        ! has 'differs from process 0' \
        && pass mpi_devices_auto_uneven_refused || fail mpi_devices_auto_uneven_refused "$(echo "$out" | head -3)"
    gpus own 4 auto "0,1 2,3" # each its own GPUs: auto takes all it sees
    has 'auto -> 2 GPUs (ids 0\.\.1 of CUDA_VISIBLE_DEVICES=0,1)' && ! has 'shared out' &&
        has 'differs from process 0' \
        && pass mpi_devices_auto_own_visible || fail mpi_devices_auto_own_visible "$(echo "$out" | head -3)"
    gpus overlap 4 auto "0,1 1,2"
    has 'processes 0 and 1 of 2, both on .*, would use the same GPU 1 (CUDA_VISIBLE_DEVICES 0,1 and 1,2)' &&
        ! has 'differs from process 0' \
        && pass mpi_devices_auto_overlap_refused || fail mpi_devices_auto_overlap_refused "$(echo "$out" | head -3)"
    gpus list 4 0,1 # one explicit list in two processes: refused before NCCL
    has '"0,1": processes 0 and 1 of 2, both on .*, would use the same GPU 0 (CUDA_VISIBLE_DEVICES unset and unset)' &&
        ! has 'differs from process 0' \
        && pass mpi_devices_same_gpu_refused || fail mpi_devices_same_gpu_refused "$(echo "$out" | head -3)"
else skip mpi_devices_gpus "no cuemu build with MPI (\$CUEMU_BUILD; make test builds build-cuemu)"; fi

# ---- without a launcher no MPI is started (a singleton MPI_Init leaves $TMPDIR/ompi.*) ----
mkdir -p "$TMP/tmpdir"
TMPDIR=$TMP/tmpdir $BIN $C --devices cpu:2 --set train.max_steps=1 --out "$TMP/alone" \
    > "$TMP/alone.log" 2>&1; rc=$?
[ $rc = 0 ] && [ -z "$(ls -A "$TMP/tmpdir")" ] && pass mpi_not_started_alone \
    || fail mpi_not_started_alone "exit $rc, in TMPDIR: $(ls "$TMP/tmpdir" | head -3)"
expect mpi_one_process 0 "^max_steps reached: " -- $MPI -np 1 $BIN $C --devices cpu:2 \
    --set train.max_steps=1 --out "$TMP/np1"
