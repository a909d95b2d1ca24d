#!/usr/bin/env bash
# bench_gpu.sh: what `make bench-gpu` runs. Trains unet_s and fpn_r18 at 320x320 for a fixed
# number of steps with camotrain (synthetic data from `camotrain synth`, AdamW, structure
# loss, convolutions in bf16 through CAMO_AMP) and with the same networks in PyTorch
# (tools/torch_bench.py: AMP bf16, channels_last, data already on the GPU) in the same run,
# and prints img/s of both, their ratio and the peak GPU memory of both.
# Environment: CAMOTRAIN (binary), BENCH_STEPS (default 60), BENCH_BATCH (16),
# BENCH_SIZE (320), BENCH_AMP (bf16 | fp16 | off), BENCH_DATA, PYTHON.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
BIN=${CAMOTRAIN:-./camotrain}
STEPS=${BENCH_STEPS:-60}
BATCH=${BENCH_BATCH:-16}
SIZE=${BENCH_SIZE:-320}
AMP=${BENCH_AMP:-bf16}
DATA=${BENCH_DATA:-data/bench_synth}
PY=${PYTHON:-python3}
[ -x /usr/bin/python3 ] && [ -z "${PYTHON:-}" ] && PY=/usr/bin/python3

die() { echo "bench-gpu: $*" >&2; exit 2; }

# ---- is there a GPU camotrain can use? ----
if ! command -v nvidia-smi > /dev/null || ! nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
    die "no NVIDIA GPU on this machine (nvidia-smi finds none): nothing to benchmark"
fi
mgpu=$(dirname "$BIN")/tools/test_multi_gpu
[ -x "$mgpu" ] || mgpu=tools/test_multi_gpu
if [ -x "$mgpu" ]; then
    set +e; "$mgpu" > /dev/null 2>&1; rc=$?; set -e
    [ $rc -eq 2 ] && die "camotrain sees no usable GPU (built without CUDA, or no driver)"
fi
gpu_name=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)

# ---- data ----
need=$(( BATCH * 8 ))
if [ "$(ls "$DATA/Train/Image" 2>/dev/null | wc -l)" -lt "$need" ]; then
    rm -rf "$DATA"
    "$BIN" synth --out "$DATA" --train "$need" --test "$BATCH" --size "$SIZE" --seed 1 > /dev/null
fi

# peak memory.used of GPU 0 over a command, minus what was in use before (MiB)
PEAK_FILE=$(mktemp)
trap 'rm -f "$PEAK_FILE"' EXIT
with_peak_mem() {
    local base
    base=$(nvidia-smi -i 0 --query-gpu=memory.used --format=csv,noheader,nounits | head -1)
    nvidia-smi -i 0 --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 \
        > "$PEAK_FILE" 2>/dev/null &
    local mon=$!
    set +e; "$@"; local rc=$?; set -e
    kill "$mon" 2>/dev/null; wait "$mon" 2>/dev/null || true
    PEAK_MIB=$(awk -v b="$base" 'BEGIN{m=0} {if ($1-b > m) m=$1-b} END{print m}' "$PEAK_FILE")
    return $rc
}

results=()
for model in unet_s fpn_r18; do
    out=$(mktemp -d /tmp/camobench.XXXXXX)
    log="$out/log"
    echo "== $model: camotrain, $STEPS steps, batch $BATCH, ${SIZE}x${SIZE}, amp $AMP"
    if ! with_peak_mem env CAMO_AMP="$AMP" "$BIN" --conf conf/demo.cfg --devices 0 --out "$out/run" \
            --set model="$root/conf/models/$model.cfg" --set data.root="$root/$DATA" \
            --set data.img_size=$SIZE --set train.batch=$BATCH --set train.epochs=1000 \
            --set train.max_steps=$STEPS --set train.amp="$AMP" --set eval.every=0 \
            --set data.workers=8 > "$log" 2>&1; then
        tail -20 "$log"; die "camotrain failed on $model (log above)"
    fi
    c_ips=$(sed -n 's/.* \([0-9.]*\) img\/s; best.*/\1/p' "$log" | tail -1)
    # a convolution cuDNN refused runs on camotrain's slow direct kernel: not a fair benchmark
    direct=$(grep -o '"direct_convs":[0-9]*' "$out/run/metrics.jsonl" | tail -1 | cut -d: -f2)
    if [ "${direct:-0}" != 0 ]; then
        grep -i 'direct' "$log" | tail -3
        die "$model: $direct convolution set-up(s) planned on the direct kernel, not cuDNN (docs/cuda.md)"
    fi
    c_mem=$PEAK_MIB
    echo "== $model: PyTorch"
    if ! with_peak_mem "$PY" tools/torch_bench.py --model "conf/models/$model.cfg" \
            --steps "$STEPS" --batch "$BATCH" --size "$SIZE" --amp "$AMP" > "$out/torch" 2>&1; then
        tail -20 "$out/torch"; die "PyTorch run failed on $model (is torch with CUDA installed?)"
    fi
    t_ips=$(sed -n 's/^img\/s \([0-9.]*\).*/\1/p' "$out/torch" | tail -1)
    t_mem=$PEAK_MIB
    t_alloc=$(sed -n 's/.*max_memory_reserved_mib \([0-9.]*\).*/\1/p' "$out/torch" | tail -1)
    results+=("$(printf '%-8s %12s %12s %8s %14s %14s' "$model" "${c_ips:-?}" "${t_ips:-?}" \
        "$(awk -v a="${c_ips:-0}" -v b="${t_ips:-0}" 'BEGIN{ if (b > 0) printf "%.2f", a/b; else print "?" }')" \
        "$c_mem" "$t_mem (${t_alloc:-?})")")
    rm -rf "$out"
done

echo
echo "GPU: $gpu_name; $STEPS steps of batch $BATCH at ${SIZE}x${SIZE}, amp $AMP"
echo "camotrain img/s: whole run from its final summary (start-up and loader included);"
echo "PyTorch img/s: steps after 10 warm-up steps, data already on the GPU."
echo "peak MiB: nvidia-smi memory.used above the idle baseline (PyTorch: torch's max reserved)"
printf '%-8s %12s %12s %8s %14s %14s\n' model "camo img/s" "torch img/s" ratio \
    "camo peak MiB" "torch peak MiB"
for r in "${results[@]}"; do echo "$r"; done
