#!/usr/bin/env bash
# One training over several processes (issue 19; docs/parallel.md "Several processes"), with
# real processes started by mpirun and real files: 2 processes x cpu:2 against cpu:4 in one
# process (DDP and DP, within tests/test_parallel.c's bounds on the smooth network), an empty
# window (a process with no image in a batch, sync-BN ghost pass), "ce" pixel counts summed
# over windows, a signal in one process only, a 2x2 checkpoint resumed as 1x4 and as 4x1, a
# process killed (kill -9) or hung mid-step (the others exit non-zero within
# parallel.timeout_s, last.ckpt intact), processes that disagree, the comm test across
# processes, and no MPI at all without a launcher. PASS/FAIL/SKIP lines for tests/run.sh;
# all SKIP without mpirun (tools/install_deps.sh installs openmpi-bin).
. "$(dirname "$0")/lib.sh" mpi_sh

if ! command -v mpirun > /dev/null 2>&1; then
    skip mpi "mpirun not found (openmpi-bin; tools/install_deps.sh)"; exit 0
fi
# tests run as root; 4 processes on a 2-core machine
MPI="mpirun --allow-run-as-root --oversubscribe"
# A sanitizer build (make test SAN=1): OpenMPI's plugins leak at MPI_Finalize, from modules
# unloaded before exit that LeakSanitizer cannot even name, and its report would fail every
# run here. ASan's memory checks stay on; only the leak report is off, for this script.
if ldd "$BIN" 2> /dev/null | grep -q libasan; then
    export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"
fi
BUILD=${BUILD:-build}

DATA=$TMP/synth
if ! $BIN synth --out "$DATA" --train 22 --test 4 --size 32 --seed 3 > "$TMP/synth.log" 2>&1; then
    fail synth "$(tail -3 "$TMP/synth.log")"; exit 0
fi
smooth_net conf/models/unet_s.cfg "$TMP/unet_s_smooth.cfg"
# tests/test_parallel.c's UNET recipe (sync-BN, deep supervision, clipping, small buckets)
cat > "$TMP/unet.cfg" <<EOF
model = "$TMP/unet_s_smooth.cfg";
seed = 5;
data = { root = "$DATA"; img_size = 32; classes = 1; workers = 1;
         augment = { hflip = true; scale_min = 0.9; scale_max = 1.1; jitter = 0.1; }; };
train = { epochs = 2; batch = 8; optimizer = "sgd"; lr = 0.05; momentum = 0.9;
          weight_decay = 1e-4; loss = "structure"; deep_supervision = true; threads = 1;
          clip_grad_norm = 1.0; warmup_epochs = 0.0; };
eval = { every = 0; };
parallel = { sync_bn = true; bucket_mb = 0.02; };
log = { every = 1000; };
EOF
C="--conf $TMP/unet.cfg --quiet"

rel() { $BIN inspect "$1" --compare "$2" 2>&1 | sed -n 's/^relative L2 difference: //p'; }
worst() { $BIN inspect "$1" --compare "$2" 2>&1 | sed -n 's/^worst tensor: .*relative L2 //p'; }
# close NAME A B: A within tests/test_parallel.c's bounds of B (model 1e-6, any tensor 1e-4)
close() {
    local e w
    e=$(rel "$2" "$3"); w=$(worst "$2" "$3")
    if awk -v e="$e" -v w="$w" \
           'BEGIN { exit !(e != "" && w != "" && e + 0 <= 1e-6 && w + 0 <= 1e-4) }'; then
        pass "$1 (relative L2 $e, worst tensor $w)"
    else fail "$1" "relative L2 '$e' (bound 1e-6), worst tensor '$w' (bound 1e-4)"; fi
}
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

# ---- without a launcher no MPI is started (a singleton MPI_Init leaves $TMPDIR/ompi.*) ----
mkdir -p "$TMP/tmpdir"
TMPDIR=$TMP/tmpdir $BIN $C --devices cpu:2 --set train.max_steps=1 --out "$TMP/alone" \
    > "$TMP/alone.log" 2>&1; rc=$?
[ $rc = 0 ] && [ -z "$(ls -A "$TMP/tmpdir")" ] && pass mpi_not_started_alone \
    || fail mpi_not_started_alone "exit $rc, in TMPDIR: $(ls "$TMP/tmpdir" | head -3)"
expect mpi_one_process 0 "^max_steps reached: " -- $MPI -np 1 $BIN $C --devices cpu:2 \
    --set train.max_steps=1 --out "$TMP/np1"
