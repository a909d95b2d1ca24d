#!/usr/bin/env bash
# The CUDA backend's paths end to end, on whatever "GPU" this machine has:
#  - real GPUs (nvidia-smi lists some): the normal build, CAMO_TEST_GPUS = their count;
#  - else the cuemu build ($CUEMU_BUILD, made by `make test`): the real cuda/ sources on the
#    host emulation of tests/cuemu with 2 emulated GPUs (CAMO_CUEMU_DEVICES), so that CI, which
#    has no GPU, runs them too. The emulation proves our kernels, stream/event ordering, comms
#    and glue; it says nothing of real cuDNN/cuBLAS/NCCL or of GPU speed (tests/cuemu/README.md).
# Checks: the parity suite (emulation only: tests/run.sh runs it on real GPUs), the [parallel]
# equivalence suite on GPU replicas (local comm: several replicas on one GPU; nccl: one a GPU;
# mixes), tools/test_multi_gpu, and training through the binary: CPU vs GPU, DDP vs DP and
# local vs nccl bit for bit, no cudaMalloc after the first epoch, a failing and a stalled
# replica on each comm, AMP bf16/fp16, a GPU checkpoint resumed on the CPU, SIGTERM.
. "$(dirname "$0")/lib.sh" gpu_paths

if command -v nvidia-smi > /dev/null 2>&1 && [ "$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')" -gt 0 ]; then
    MODE=gpu
    GPUS=$(nvidia-smi -L | grep -c '^GPU')
    G=${BUILD:-build}
else
    MODE=cuemu
    G=${CUEMU_BUILD:-}
    if [ -z "$G" ] || [ ! -x "$G/camotrain" ]; then
        skip gpu_paths "no GPU and no cuemu build (make test builds build-cuemu; not under TSAN=1)"
        exit 0
    fi
    export CAMO_CUEMU_DEVICES=2
    GPUS=2
fi
B=$G/camotrain
echo "GPU paths on $MODE ($GPUS GPUs), binaries from $G"

# cmocka output -> PASS/FAIL/SKIP lines named PREFIX_test
cmocka_lines() {
    sed -n -e "s/^\[       OK \] \(.*\)/PASS $1_\1/p" -e "s/^\[  FAILED  \] \(test_[a-z0-9_]*\)$/FAIL $1_\1: see above/p" \
        -e "s/^\[  SKIPPED \] \(test_[a-z0-9_]*\)$/SKIP $1_\1: skipped/p" "$2" | sort -u
}

run_cmocka() { # PREFIX BINARY [env...]
    local prefix=$1 bin=$2; shift 2
    env "$@" "$bin" > "$TMP/$prefix.log" 2>&1; local rc=$?
    grep -v '^\[ *\(OK\|RUN\|PASSED\|FAILED\|SKIPPED\|=*\) *\]' "$TMP/$prefix.log" | sed 's/^/  | /' | tail -40
    cmocka_lines "$prefix" "$TMP/$prefix.log"
    if [ $rc -ne 0 ] && ! grep -q '^\[  FAILED  \]' "$TMP/$prefix.log"; then
        fail "$prefix" "exit $rc: $(tail -3 "$TMP/$prefix.log")"
    fi
}

# ---- the parity suite and the [parallel] equivalence suite on GPU replicas ----
# (tools/gpu_check.sh runs them as checks of their own: CAMO_GPU_PATHS_NO_SUITES=1)
if [ -z "${CAMO_GPU_PATHS_NO_SUITES:-}" ]; then
    [ $MODE = cuemu ] && run_cmocka cuemu_parity "$G/tests/test_cuda_parity"
    [ $MODE = cuemu ] && run_cmocka cuemu_moe "$G/tests/test_moe" # the MoE kernels vs PyTorch
    run_cmocka "${MODE}_parallel_1gpu" "$G/tests/test_parallel" CAMO_TEST_GPUS=1
    [ "$GPUS" -ge 2 ] && run_cmocka "${MODE}_parallel_${GPUS}gpus" "$G/tests/test_parallel" CAMO_TEST_GPUS=$GPUS
fi

# ---- tools/test_multi_gpu: exit 0 with every check passed ----
"$G/tools/test_multi_gpu" > "$TMP/mgpu.log" 2>&1; rc=$?
sed 's/^/  | /' "$TMP/mgpu.log" | tail -8
[ $rc = 0 ] && grep -q 'PASS: 0 checks failed' "$TMP/mgpu.log" && pass "${MODE}_test_multi_gpu" \
    || fail "${MODE}_test_multi_gpu" "exit $rc: $(tail -2 "$TMP/mgpu.log")"

# ---- training through the binary ----
DATA=$TMP/synth
if ! $B synth --out "$DATA" --train 22 --test 4 --size 32 --seed 3 > "$TMP/synth.log" 2>&1; then
    fail "${MODE}_synth" "$(tail -3 "$TMP/synth.log")"; exit 0
fi
C="--conf conf/demo.cfg --set data.root=$DATA --set data.img_size=32 --set train.batch=8"
C="$C --set eval.every=0 --set train.threads=1 --set data.workers=1 --set train.epochs=2 --quiet"
D="$C --set train.deterministic=true"
rel() { $B inspect "$1" --compare "$2" 2>&1 | sed -n 's/^relative L2 difference: //p'; }
# rel_ok A B TOL: A's tensors within TOL (relative L2, all tensors) of B's
rel_ok() { awk -v e="$(rel "$1" "$2")" -v t="$3" 'BEGIN { exit !(e != "" && e + 0 <= t) }'; }
same() { [ "$(hashes "$1")" = "$(hashes "$2")" ] && [ -n "$(hashes "$1")" ]; }

run() { # NAME DEVICES MODE [more options]: trains into $TMP/NAME
    local name=$1 dev=$2 mode=$3; shift 3
    $B $D --devices "$dev" --parallel "$mode" "$@" --out "$TMP/$name" > "$TMP/$name.log" 2>&1
}

# one GPU against the CPU: 6 SGD steps of the demo network made smooth (lib.sh smooth_net:
# no kinks for another summation order to flip), so the runs differ by rounding alone
smooth_net conf/models/unet_s.cfg "$TMP/unet_s_smooth.cfg"
SM="--set model=$TMP/unet_s_smooth.cfg --set train.optimizer=sgd --set train.lr=0.05"
if run cpu cpu ddp $SM && run g1 0 ddp $SM; then
    e=$(rel "$TMP/g1/last.ckpt" "$TMP/cpu/last.ckpt")
    rel_ok "$TMP/g1/last.ckpt" "$TMP/cpu/last.ckpt" 1e-4 && pass "${MODE}_gpu_vs_cpu_training ($e)" \
        || fail "${MODE}_gpu_vs_cpu_training" "relative L2 difference $e (bound 1e-4)"
else fail "${MODE}_gpu_vs_cpu_training" "$(tail -2 "$TMP/g1.log" "$TMP/cpu.log")"; fi

# steps allocate nothing: cudaMalloc count flat from the first step to the last
m=$(grep -o '"gpu_mallocs":[0-9]*' "$TMP/g1/metrics.jsonl" | sort -u | wc -l)
n=$(grep -c '"gpu_mallocs"' "$TMP/g1/metrics.jsonl")
[ "$m" = 1 ] && [ "$n" = 6 ] && pass "${MODE}_no_malloc_after_warmup" \
    || fail "${MODE}_no_malloc_after_warmup" "$n step records, $m distinct gpu_mallocs values"
grep -q 'peak GPU memory (replica 0): [0-9]* MiB' "$TMP/g1.log" && pass "${MODE}_peak_memory_line" \
    || fail "${MODE}_peak_memory_line" "no peak GPU memory line in the summary"
# every convolution of unet_s on cuDNN, none on the direct kernel; the versions at start-up
d=$(grep -o '"direct_convs":[0-9]*' "$TMP/g1/metrics.jsonl" | sort -u | tr '\n' ' ')
[ "$d" = '"direct_convs":0 ' ] && pass "${MODE}_no_direct_convs" \
    || fail "${MODE}_no_direct_convs" "metrics.jsonl says: ${d:-nothing}"
grep -Eq '^cuda: runtime [0-9.]+, driver [0-9.]+; cuDNN [0-9.]+ \(built with [0-9.]+\); NCCL [0-9.]+ \(built with [0-9.]+\)$' \
    "$TMP/g1/train.log" && pass "${MODE}_versions_line" \
    || fail "${MODE}_versions_line" "no versions line in train.log: $(grep -m1 '^cuda:' "$TMP/g1/train.log")"
# a cuDNN of another major version at run time is refused before anything starts
if [ $MODE = cuemu ]; then
    expect cuemu_cudnn_version_refused 2 'cuDNN 8.9.7 found at run time, but camotrain was built with cuDNN' -- \
        env CAMO_CUEMU_CUDNN_VERSION=80907 $B $D --devices 0 --out "$TMP/oldcudnn"
fi

# two replicas: DDP = DP bit for bit; sync-BN two replicas = one GPU (whole model, 1e-6; smooth network)
TWO="0,0"; [ "$GPUS" -ge 2 ] && TWO="0,1"
S="$SM --set train.max_steps=3 --set parallel.sync_bn=true"
if run s1 0 ddp $S && run s_ddp "$TWO" ddp $S && run s_dp "$TWO" dp $S && run s_local 0,0 ddp $S; then
    same "$TMP/s_ddp/last.ckpt" "$TMP/s_dp/last.ckpt" && pass "${MODE}_ddp_equals_dp" \
        || fail "${MODE}_ddp_equals_dp" "DDP and DP on $TWO differ"
    same "$TMP/s_ddp/last.ckpt" "$TMP/s_local/last.ckpt" && pass "${MODE}_local_equals_${TWO/,/_}" \
        || fail "${MODE}_local_equals_${TWO/,/_}" "0,0 (local comm) and $TWO differ"
    rel_ok "$TMP/s_ddp/last.ckpt" "$TMP/s1/last.ckpt" 1e-6 && pass "${MODE}_sync_bn_two_equals_one" \
        || fail "${MODE}_sync_bn_two_equals_one" "relative L2 $(rel "$TMP/s_ddp/last.ckpt" "$TMP/s1/last.ckpt")"
else fail "${MODE}_two_replicas" "$(tail -2 "$TMP"/s_*.log "$TMP/s1.log")"; fi

# a replica fails at step 3, or stalls at step 2: every replica stops, exit 1 naming it
for dev in 0,0 "$TWO"; do
    [ "$dev" = 0,1 ] && comm=nccl || comm=local
    start=$(date +%s)
    out=$(CAMO_TEST_FAIL_REPLICA=1 CAMO_TEST_FAIL_STEP=3 $B $C --devices $dev \
          --set checkpoint.every_steps=1 --set parallel.timeout_s=30 --out "$TMP/fail_$comm" 2>&1); rc=$?
    took=$(( $(date +%s) - start ))
    if [ $rc = 1 ] && echo "$out" | grep -q 'replica 1: test hook' && [ $took -lt 30 ] &&
       [ "$(meta step "$TMP/fail_$comm/last.ckpt")" = 2 ]; then pass "${MODE}_fault_$comm"
    else fail "${MODE}_fault_$comm" "exit $rc after ${took}s: $(echo "$out" | tail -2)"; fi
    start=$(date +%s)
    out=$(CAMO_TEST_FAIL_REPLICA=1 CAMO_TEST_FAIL_STEP=2 CAMO_TEST_FAIL_STALL=1 $B $C --devices $dev \
          --set parallel.timeout_s=2 --out "$TMP/stall_$comm" 2>&1); rc=$?
    took=$(( $(date +%s) - start ))
    if [ $rc = 1 ] && echo "$out" | grep -q 'timed out after 2 s' && [ $took -lt 25 ]; then
        pass "${MODE}_stall_$comm"
    else fail "${MODE}_stall_$comm" "exit $rc after ${took}s: $(echo "$out" | tail -2)"; fi
    [ "$dev" = "$TWO" ] && break
done

# AMP: bf16 and fp16 (dynamic loss scale recorded) train to a finite loss
for amp in bf16 fp16; do
    if run "amp_$amp" 0 ddp --set train.amp=$amp && grep -q '"type":"summary"' "$TMP/amp_$amp/metrics.jsonl" &&
       ! grep '"type":"step"' "$TMP/amp_$amp/metrics.jsonl" | grep -q '"loss":\(nan\|inf\|-nan\)'; then
        if [ $amp = fp16 ] && ! grep -q '"loss_scale":' "$TMP/amp_fp16/metrics.jsonl"; then
            fail "${MODE}_amp_fp16" "no loss_scale in metrics.jsonl"
        else pass "${MODE}_amp_$amp"; fi
    else fail "${MODE}_amp_$amp" "$(tail -2 "$TMP/amp_$amp.log")"; fi
done

# a GPU checkpoint resumes on the CPU and on two GPU replicas (checkpoints are device-free)
if run half 0 ddp --set train.max_steps=4; then
    expect "${MODE}_resume_gpu_on_cpu" 0 'done: 2 epochs, 6 steps' -- \
        $B --resume "$TMP/half/last.ckpt" --set parallel.devices=cpu --set train.max_steps=0 --out "$TMP/res_cpu"
    expect "${MODE}_resume_gpu_on_two" 0 'done: 2 epochs, 6 steps' -- \
        $B --resume "$TMP/half/last.ckpt" --devices "$TWO" --set train.max_steps=0 --out "$TMP/res_two"
else fail "${MODE}_resume" "$(tail -2 "$TMP/half.log")"; fi

# SIGTERM with two GPU replicas: the step finishes, last.ckpt is saved, exit 0
expect "${MODE}_sigterm" 0 'interrupted' -- env CAMO_TEST_SIGNAL_AT_STEP=2 $B $C --devices "$TWO" \
    --set train.epochs=3 --out "$TMP/sig"

# device lists the machine cannot serve are refused before anything starts
expect "${MODE}_too_many_gpus" 2 'GPU 7' -- $B $C --devices 0,7 --out "$TMP/bad"
if [ $MODE = cuemu ]; then
    out=$(CAMO_CUEMU_DEVICES=0 $B ${C% --quiet} --devices auto --set train.max_steps=1 --out "$TMP/auto" 2>&1 | head -20)
    echo "$out" | grep -q 'auto -> cpu' && pass cuemu_auto_without_gpu || fail cuemu_auto_without_gpu "$out"
    out=$($B ${C% --quiet} --devices auto --set train.max_steps=1 --out "$TMP/auto2" 2>&1 | head -20)
    echo "$out" | grep -q 'auto -> 2 GPUs' && pass cuemu_auto_all_gpus || fail cuemu_auto_all_gpus "$(echo "$out" | head -3)"
    out=$(CUDA_VISIBLE_DEVICES=1 $B ${C% --quiet} --devices auto --set train.max_steps=1 --out "$TMP/auto3" 2>&1 | head -20)
    echo "$out" | grep -q 'auto -> 1 GPU (ids 0..0 of CUDA_VISIBLE_DEVICES=1)' && pass cuemu_auto_visible_devices \
        || fail cuemu_auto_visible_devices "$(echo "$out" | grep -i 'parallel\|error' | head -3)"
fi
# a partial last batch makes no cudaMalloc either (src/parallel/devices.c camo_devices_prepare: every
# convolution runs at each local batch size before step 1): two replicas, slices 4, 4, 3;
# cuemu's cuDNN wants more workspace for a ragged batch than for the full one
m=$(grep -o '"gpu_mallocs":[0-9]*' "$TMP/s_ddp/metrics.jsonl" 2>/dev/null | sort -u | wc -l)
n=$(grep -c '"gpu_mallocs"' "$TMP/s_ddp/metrics.jsonl" 2>/dev/null)
[ "$m" = 1 ] && [ "$n" = 3 ] && pass "${MODE}_no_malloc_at_partial_batch" \
    || fail "${MODE}_no_malloc_at_partial_batch" "$n step records, $m distinct gpu_mallocs values"

# ---- what the emulated driver and NCCL saw at initialisation (CAMO_CUEMU_REPORT) ----
if [ $MODE = cuemu ]; then
    # rep NAME DEVICES [options/env via env]: one short run; its report in $TMP/NAME.rep
    rep() {
        local name=$1 dev=$2; shift 2
        rm -f "$TMP/$name.rep"
        CAMO_CUEMU_REPORT="$TMP/$name.rep" $B $C --devices "$dev" --set train.max_steps=1 "$@" \
            --out "$TMP/rep_$name" > "$TMP/rep_$name.log" 2>&1
    }
    # seen NAME KEY: the values of KEY= in NAME's report, one line each
    seen() { sed -n "s/.* $2=\([^ ]*\).*/\1/p" "$TMP/$1.rep" | sort -u; }
    cliques() { grep -c '^nccl_comm_init_all ' "$TMP/$1.rep"; }

    # NCCL_LAUNCH_MODE=GROUP in the environment: overridden (with a warning), NCCL sees PARALLEL
    if NCCL_LAUNCH_MODE=GROUP rep group 0,1; then
        [ "$(seen group launch_mode)" = PARALLEL ] && grep -q 'NCCL_LAUNCH_MODE=GROUP overridden' "$TMP/rep_group.log" \
            && pass cuemu_nccl_launch_mode_parallel \
            || fail cuemu_nccl_launch_mode_parallel "report: $(tr '\n' ' ' < "$TMP/group.rep")"
    else fail cuemu_nccl_launch_mode_parallel "exit: $(tail -2 "$TMP/rep_group.log")"; fi

    # eager module loading only where NCCL runs (two distinct GPUs); a user's value is kept;
    # auto counts GPUs before CUDA starts: CUDA_VISIBLE_DEVICES, /proc/driver/nvidia/gpus
    # (absent here unless the machine has an NVIDIA driver: then 2 emulated GPUs is unknown)
    rep one 0; rep shared 0,0; CUDA_MODULE_LOADING=LAZY rep user 0,1
    CUDA_VISIBLE_DEVICES=1 rep auto_one auto; rep auto_two auto
    want_auto=EAGER; [ -d /proc/driver/nvidia/gpus ] && want_auto=$(seen auto_two module_loading)
    got="0:$(seen one module_loading) 0,0:$(seen shared module_loading) 0,1:$(seen group module_loading)"
    got="$got user:$(seen user module_loading) auto(1 visible):$(seen auto_one module_loading)"
    got="$got auto(2):$(seen auto_two module_loading)"
    [ "$got" = "0:unset 0,0:unset 0,1:EAGER user:LAZY auto(1 visible):unset auto(2):$want_auto" ] \
        && pass cuemu_eager_loading_only_for_nccl || fail cuemu_eager_loading_only_for_nccl "$got"

    # one NCCL communicator per replica: the control comm is a host comm, except under DP
    # with sync-BN, whose BN sums of device data go through it
    rep ddp_bn 0,1 --set parallel.sync_bn=true; rep dp_bn 0,1 --parallel dp --set parallel.sync_bn=true
    rep dp 0,1 --parallel dp
    got="ddp:$(cliques group) ddp+bn:$(cliques ddp_bn) dp:$(cliques dp) dp+bn:$(cliques dp_bn)"
    [ "$got" = "ddp:1 ddp+bn:1 dp:1 dp+bn:2" ] && [ "$(seen dp_bn ranks)" = 2 ] \
        && pass cuemu_nccl_comms_per_replica || fail cuemu_nccl_comms_per_replica "cliques $got"

    # a stalled replica on nccl: exit 1, the timeout names it
    out=$(CAMO_TEST_FAIL_REPLICA=1 CAMO_TEST_FAIL_STEP=2 CAMO_TEST_FAIL_STALL=1 $B $C --devices 0,1 \
          --set parallel.timeout_s=2 --out "$TMP/stall_named" 2>&1); rc=$?
    [ $rc = 1 ] && echo "$out" | grep -q 'timed out after 2 s: replica 1 did not join' \
        && pass cuemu_stall_names_replica || fail cuemu_stall_names_replica "exit $rc: $(echo "$out" | tail -1)"

    # a slow GPU (3 ms more per kernel: a step's queued work outlasts the 1 s timeout) is not
    # a late peer: the host runs ahead, and a replica's wait for a collective is timed only
    # from when its own GPU reached it (cuda/comm_nccl.cu nccl_poll). DDP, and DP with sync-BN
    got=""
    for mode in "ddp" "dp --set parallel.sync_bn=true"; do
        CAMO_CUEMU_KERNEL_US=3000 $B $C --devices 0,1 --parallel $mode --set parallel.timeout_s=1 \
            --set train.max_steps=2 --out "$TMP/slow_gpu" > "$TMP/slow_gpu.log" 2>&1
        got="$got ${mode%% *}:$?"
    done
    [ "$got" = " ddp:0 dp:0" ] && pass cuemu_slow_gpu_no_false_timeout \
        || fail cuemu_slow_gpu_no_false_timeout "exit codes$got: $(tail -1 "$TMP/slow_gpu.log")"

    # training steps never drain the stream (docs/cuda.md "Host waits"): the host waits on
    # fences only, for a batch's uploads and for the previous step's loss, so the GPU always
    # has the next step queued. Runs of 3 and 9 steps (11 a epoch, same start and end) make
    # the same full-stream waits, with gradient clipping too (on the device, its norm sent
    # with the loss)
    waits() { sed -n "s/^host_waits .*$2=\([0-9]*\).*/\1/p" "$TMP/$1.rep"; }
    W="--set train.batch=2 --set train.epochs=1"
    rep w3 0 $W --set train.max_steps=3 --set train.clip_grad_norm=0
    rep w9 0 $W --set train.max_steps=9 --set train.clip_grad_norm=0
    rep c3 0 $W --set train.max_steps=3 --set train.clip_grad_norm=1
    rep c9 0 $W --set train.max_steps=9 --set train.clip_grad_norm=1
    ds=$(( $(waits w9 stream_sync) - $(waits w3 stream_sync) ))
    de=$(( $(waits w9 event_sync) - $(waits w3 event_sync) ))
    dc=$(( $(waits c9 stream_sync) - $(waits c3 stream_sync) ))
    db=$(( $(waits w9 blocking_copy) - $(waits w3 blocking_copy) ))
    [ "$ds" = 0 ] && [ "$db" = 0 ] && [ "$de" -le 12 ] && [ "$dc" = 0 ] && [ -n "$(waits w3 stream_sync)" ] \
        && pass cuemu_no_stream_wait_per_step \
        || fail cuemu_no_stream_wait_per_step "6 more steps: +$ds stream syncs, +$db blocking copies, +$de fence waits; clipped: +$dc stream syncs"
fi

# camotrain profile on a GPU: peaks are the caching allocator's, the headroom is taken of
# the GPU's total memory (the emulated GPU has CAMO_CUEMU_MEM_MB), and --mem-limit caps the
# GPU peak: a cap between batch 2's and batch 4's peaks stops the sweep at 4
if [ $MODE = cuemu ]; then
    P="--conf conf/demo.cfg --set data.root=$DATA --set data.img_size=32 --set data.workers=1"
    P="$P --devices 0 --batches 2,4 --steps 2"
    out=$(CAMO_CUEMU_DEVICES=1 CAMO_CUEMU_MEM_MB=4096 $B profile $P --out "$TMP/prof" 2>&1)
    rows=$(awk '$1 ~ /^[0-9]+$/ && $NF == "yes"' "$TMP/prof/profile.txt" 2>/dev/null | wc -l)
    if grep -q '^memory limit: 4096 MB (the GPU.s total); peak: GPU memory' "$TMP/prof/profile.txt" &&
       [ "$rows" = 2 ]; then pass cuemu_profile_gpu
    else fail cuemu_profile_gpu "$(echo "$out" | tail -4)"; fi
    p2=$(awk '$1 == 2 {print $4}' "$TMP/prof/profile.txt"); p4=$(awk '$1 == 4 {print $4}' "$TMP/prof/profile.txt")
    cap=$(awk -v a="${p2:-0}" -v b="${p4:-0}" 'BEGIN { printf "%.0f", (a + b) / 2 }')
    CAMO_CUEMU_DEVICES=1 $B profile $P --mem-limit "$cap" --out "$TMP/prof_cap" > "$TMP/prof_cap.log" 2>&1
    grep -q '^ *4 .*no: GPU memory peak passed the cap' "$TMP/prof_cap/profile.txt" 2>/dev/null &&
        pass cuemu_profile_gpu_cap || fail cuemu_profile_gpu_cap "cap $cap MB: $(tail -4 "$TMP/prof_cap.log")"
fi
exit 0
