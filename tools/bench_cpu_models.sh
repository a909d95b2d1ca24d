#!/usr/bin/env bash
# bench_cpu_models.sh: part of `make bench`. The CPU training step of deeplabv3_r50 and
# pspnet_r50 at 256x256 (batch 2, fp32, AdamW, structure loss with the auxiliary head at
# 0.4) with camotrain and with the same network in PyTorch (tools/torch_cpu_bench.py, built
# by tools/ref_nets.py), on the same threads, in the same run; prints img/s of both and
# their ratio. Without PyTorch it says so and skips. Environment: CAMOTRAIN (binary),
# BENCH_MODELS ("deeplabv3_r50 pspnet_r50"), BENCH_SIZE (256), BENCH_BATCH (2),
# BENCH_STEPS (5, after 2 warm-up steps), BENCH_THREADS (all cores), PYTHON.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
BIN=${CAMOTRAIN:-./camotrain}
MODELS=${BENCH_MODELS:-"deeplabv3_r50 pspnet_r50"}
SIZE=${BENCH_SIZE:-256}
BATCH=${BENCH_BATCH:-2}
STEPS=${BENCH_STEPS:-5}
THREADS=${BENCH_THREADS:-$(nproc)}
PY=${PYTHON:-python3}
[ -x /usr/bin/python3 ] && [ -z "${PYTHON:-}" ] && PY=/usr/bin/python3

echo "== CPU training step, ${SIZE}x${SIZE}, batch $BATCH, $THREADS threads (camotrain vs PyTorch)"
if ! "$PY" -c "import torch, torchvision" 2> /dev/null; then
    echo "skipped: no torch/torchvision for $PY (apt-get install python3-torch python3-torchvision)"
    exit 0
fi
tmp=$(mktemp -d /tmp/camobench_cpu.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
"$BIN" synth --out "$tmp/data" --train $((BATCH * (STEPS + 2))) --test 2 --size "$SIZE" --seed 1 > /dev/null

# img/s of camotrain over the steps after the warm-up, from metrics.jsonl's step times
camo_rate() {
    local model=$1 out=$tmp/run_$1
    OMP_NUM_THREADS=$THREADS "$BIN" --conf conf/demo.cfg --model "$model" --out "$out" --quiet \
        --set data.root="$tmp/data" --set data.img_size="$SIZE" --set train.batch="$BATCH" \
        --set train.max_steps=$((STEPS + 2)) --set train.epochs=1 --set eval.every=0 \
        --set train.threads="$THREADS" --set data.workers=1 --set data.augment.scale_min=1.0 \
        --set data.augment.scale_max=1.0 --set train.optimizer=adamw > "$out.log" 2>&1 ||
        { echo "camotrain failed: $(tail -2 "$out.log")" >&2; return 1; }
    awk -F'"time":' -v b="$BATCH" -v w=2 '/"type":"step"/ { split($2, a, "[,}]"); t[++n] = a[1] }
        END { if (n > w) printf "%.3f", (n - w) * b / (t[n] - t[w]); else print "nan" }' \
        "$out/metrics.jsonl"
}

for m in $MODELS; do
    c=$(camo_rate "$m")
    p=$("$PY" tools/torch_cpu_bench.py --model "$m" --batch "$BATCH" --size "$SIZE" \
        --steps "$STEPS" --threads "$THREADS" | sed -n 's/^img\/s \([0-9.]*\).*/\1/p')
    awk -v m="$m" -v c="$c" -v p="$p" 'BEGIN { printf "%-16s camotrain %8.3f img/s   PyTorch %8.3f img/s   ratio %.2fx\n", m, c, p, (p > 0 ? c / p : 0) }'
done
