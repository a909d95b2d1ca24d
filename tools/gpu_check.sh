#!/usr/bin/env bash
# gpu_check.sh: the whole GPU acceptance in one run, for a machine with an NVIDIA GPU (also
# one with no network and no apt: source ../shared/tools/device-deps.sh's .devdeps/env.sh
# first, which sets CAMO_DEPS_OK=1 so the build installs nothing). Meant to finish in under
# 8 minutes on one H100/H200.
#
#     tools/gpu_check.sh [OUTDIR]        # OUTDIR: default $OUT, else runs/gpu_check
#
# Checks, each with a time limit, a log OUTDIR/NAME.log and one line in OUTDIR/summary.txt:
#   build       camotrain and the GPU test binaries for this GPU's architecture only
#               (build-gpu-smXY; no cuemu build, no CPU suites)
#   parity      tests/test_cuda_parity: every op and whole unet_s / fpn_r18 steps against
#               the CPU backend, the caching allocator, bf16, comms, deterministic mode
#   ddp_0_0     tests/test_parallel with CAMO_TEST_GPUS=1: DDP/DP on 2..4 replicas on GPU 0
#               (local comm) against one replica: the [parallel] equivalence suite
#   gpu_paths   tests/test_gpu_paths.sh: training through the binary (GPU vs CPU, DDP = DP,
#               no cudaMalloc after warm-up, a failing and a stalled replica, AMP, resume,
#               SIGTERM)
#   multi_gpu   tools/test_multi_gpu: versions, NCCL all-reduce bandwidth, a step per GPU
#   bench       make bench-gpu: img/s and peak memory against PyTorch in the same run
#   demo        make demo's script on --devices 0: IoU and time
# Exit 0 when every check passes, 1 when one fails, 2 when there is no GPU (or no CUDA
# toolkit) to check. CAMO_GPU_CHECK_CUEMU=1 runs the same checks on cuemu (tests/cuemu: a
# host emulation of 2 GPUs) on a machine without one, to test this script; the benchmark
# needs a real GPU and is skipped there, and the demo shrinks to 48 images, one epoch at
# 32 px (it must run through; its IoU is not judged).
set -u
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
OUTDIR=${1:-${OUT:-runs/gpu_check}}
mkdir -p "$OUTDIR" && OUTDIR=$(cd "$OUTDIR" && pwd)
SUMMARY=$OUTDIR/summary.txt
: > "$SUMMARY"
CUEMU=${CAMO_GPU_CHECK_CUEMU:-0}
JOBS=$(nproc 2>/dev/null || echo 2)
t_all=$(date +%s)

say() { echo "gpu_check: $*"; }
# record STATUS NAME SECONDS DETAIL: one summary line
record() { printf '%-4s %-10s %4ss  %s\n' "$1" "$2" "$3" "$4" | tee -a "$SUMMARY"; }

# run_check NAME LIMIT_S COMMAND...: runs COMMAND under a time limit into OUTDIR/NAME.log;
# sets RC and SECS
run_check() {
    local name=$1 limit=$2; shift 2
    local t0; t0=$(date +%s)
    say "$name: $* (limit ${limit}s)"
    timeout --kill-after=10 "$limit" "$@" > "$OUTDIR/$name.log" 2>&1
    RC=$?
    SECS=$(( $(date +%s) - t0 ))
    [ $RC = 124 ] || [ $RC = 137 ] && echo "gpu_check: $name stopped after ${limit}s" >> "$OUTDIR/$name.log"
    return 0
}

# cmocka log -> "P passed, F failed, S skipped"; cm_ok: exit 0, something passed, nothing
# failed or skipped (a skip means the GPU was not usable)
cm_counts() {
    local k n out=""
    for k in PASSED FAILED SKIPPED; do
        n=$(sed -n "s/^\\[  $k *\\] \\([0-9]*\\) test.*/\\1/p" "$1" | head -1)
        out="$out ${n:-0}"
    done
    set -- $out
    echo "$1 passed, $2 failed, $3 skipped"
}
cm_ok() { [ "$RC" = 0 ] && cm_counts "$1" | grep -q '^[1-9][0-9]* passed, 0 failed, 0 skipped$'; }
status() { if "$@"; then echo PASS; else echo FAIL; fi; }

# ---- is there a GPU? ----
if [ "$CUEMU" = 1 ]; then
    export CAMO_CUEMU_DEVICES=2
    ARCH=emu
    G=build-cuemu
    MAKE_ARGS=(CUDA=emu)
    say "cuemu mode: the checks on 2 emulated GPUs (no real GPU is used)"
else
    if ! command -v nvidia-smi > /dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
        echo "gpu_check: no NVIDIA GPU on this machine (nvidia-smi lists none): nothing to check" \
             "(CAMO_GPU_CHECK_CUEMU=1 runs the checks on the host emulation)" | tee -a "$SUMMARY" >&2
        exit 2
    fi
    NVCC=${NVCC:-${CUDA_HOME:-/usr/local/cuda}/bin/nvcc}
    if [ ! -x "$NVCC" ]; then
        echo "gpu_check: no CUDA toolkit ($NVCC not found; set CUDA_HOME)" | tee -a "$SUMMARY" >&2
        exit 2
    fi
    cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d ' .')
    ARCH=sm_$cap
    G=build-gpu-$ARCH
    MAKE_ARGS=(CUDA=1 "CUDA_ARCH=-arch=$ARCH")
    nvidia-smi -L | tee "$OUTDIR/gpus.txt"
    nvidia-smi > "$OUTDIR/nvidia-smi.txt" 2>&1
fi

# ---- build: only what the checks run ----
targets=("$G/camotrain" "$G/tests/test_cuda_parity" "$G/tests/test_parallel" "$G/tools/test_multi_gpu")
run_check build 600 make -j"$JOBS" --no-print-directory "${MAKE_ARGS[@]}" BUILD="$G" \
    CAMO_DEPS_OK="${CAMO_DEPS_OK:-}" "${targets[@]}"
if [ $RC != 0 ]; then
    record FAIL build "$SECS" "make ${MAKE_ARGS[*]} failed: $(grep -m1 -i 'error' "$OUTDIR/build.log" || tail -1 "$OUTDIR/build.log")"
    say "the build failed; nothing else can run (see $OUTDIR/build.log)"
    exit 1
fi
record PASS build "$SECS" "$G for $ARCH"
B=$G/camotrain
"$B" --help > /dev/null 2>&1 || { record FAIL build 0 "$B does not start: $("$B" --help 2>&1 | tail -1)"; exit 1; }

# ---- parity and equivalence suites ----
run_check parity 300 env "$G/tests/test_cuda_parity"
record "$(status cm_ok "$OUTDIR/parity.log")" parity "$SECS" \
    "$(cm_counts "$OUTDIR/parity.log"); $(grep -m1 'smooth.*unet_s.*rel L2' "$OUTDIR/parity.log" | sed 's/.*rel L2 error/unet_s (smooth): rel L2 error/')"

run_check ddp_0_0 300 env CAMO_TEST_GPUS=1 "$G/tests/test_parallel"
worst=$(sed -n 's/.*weights: relative error \([0-9.e+-]*\)$/\1/p' "$OUTDIR/ddp_0_0.log" | sort -g | tail -1)
record "$(status cm_ok "$OUTDIR/ddp_0_0.log")" ddp_0_0 "$SECS" \
    "$(cm_counts "$OUTDIR/ddp_0_0.log"); worst whole-model weight error ${worst:-?} (bound 1e-6)"

# ---- training through the binary (the suites above already ran: skip them there) ----
run_check gpu_paths 300 env BUILD="$G" CUEMU_BUILD="$G" CAMOTRAIN="$B" CAMO_GPU_PATHS_NO_SUITES=1 \
    CAMO_TEST_TMP="$OUTDIR/tmp" bash tests/test_gpu_paths.sh
np=$(grep -c '^PASS ' "$OUTDIR/gpu_paths.log"); nf=$(grep -c '^FAIL ' "$OUTDIR/gpu_paths.log")
[ "$RC" = 0 ] && [ "$nf" = 0 ] && [ "$np" -gt 0 ] && st=PASS || st=FAIL
record $st gpu_paths "$SECS" "$np passed, $nf failed$(grep -m1 '^FAIL ' "$OUTDIR/gpu_paths.log" | sed 's/^FAIL /; first: /')"
rm -rf "$OUTDIR/tmp"

# ---- tools/test_multi_gpu ----
run_check multi_gpu 180 "$G/tools/test_multi_gpu"
bw=$(awk '/MiB/ && NF == 5 {b = $5} END {print b}' "$OUTDIR/multi_gpu.log")
[ "$RC" = 0 ] && grep -q 'PASS: 0 checks failed' "$OUTDIR/multi_gpu.log" && st=PASS || st=FAIL
record $st multi_gpu "$SECS" "$(grep -m1 '^CUDA runtime' "$OUTDIR/multi_gpu.log"); busbw at 256 MiB: ${bw:-?} GB/s"

# ---- benchmark against PyTorch ----
if [ "$CUEMU" = 1 ]; then
    record SKIP bench 0 "needs a real GPU and PyTorch (make bench-gpu)"
else
    run_check bench 420 env CAMOTRAIN="$B" BENCH_STEPS="${BENCH_STEPS:-40}" bash tools/bench_gpu.sh
    [ "$RC" = 0 ] && st=PASS || st=FAIL
    record $st bench "$SECS" "$(grep -E '^(unet_s|fpn_r18) ' "$OUTDIR/bench.log" | awk '{printf "%s %s img/s vs %s (x%s); ", $1, $2, $3, $4}')"
fi

# ---- the demo on GPU 0 ----
demo_env=(DEMO_SET="parallel.devices=0")
[ "$CUEMU" = 1 ] && demo_env=(DEMO_SET="parallel.devices=0 train.epochs=1 data.img_size=32"
    DEMO_DATA="$OUTDIR/demo_data" DEMO_SYNTH="--train 48 --test 16 --size 32 --seed 0 --difficulty 0.5")
run_check demo 300 env CAMOTRAIN="$B" DEMO_OUT="$OUTDIR/demo_run" "${demo_env[@]}" bash tools/demo.sh
iou=$(sed -n 's/^ *validation IoU *\([0-9.]*\).*/\1/p' "$OUTDIR/demo.log")
took=$(sed -n 's/^ *training time *\(.*\) (best.*/\1/p' "$OUTDIR/demo.log")
if [ "$CUEMU" = 1 ]; then # shortened: it must run through, its IoU is not judged
    [ -n "$iou" ] && st=PASS || st=FAIL
    record $st demo "$SECS" "ran through on cuemu (48 images, 1 epoch at 32 px, IoU ${iou:-?} not judged)"
else
    [ "$RC" = 0 ] && st=PASS || st=FAIL
    record $st demo "$SECS" "IoU ${iou:-?} (goal >= 0.75), training ${took:-?}"
fi

# ---- summary ----
echo
echo "gpu_check summary ($ARCH, $(( $(date +%s) - t_all )) s; logs in $OUTDIR):"
cat "$SUMMARY"
grep -q '^FAIL' "$SUMMARY" && exit 1
exit 0
