#!/usr/bin/env bash
# bench_memory.sh: part of `make bench`. Memory of one CPU training step (fp32, AdamW,
# structure loss with deep supervision, batch BENCH_MEM_BATCH of BENCH_MEM_SIZE^2 images):
#   camotrain, allocated: weights, gradients, optimizer state, the planned arena of
#     activations and gradients, layer scratch (--summary's total, which test_net_memory
#     checks against the real allocations), plus the CPU im2col workspace (measured);
#   camotrain, resident: peak RSS of a 3-step run less the process's RSS before the model;
#   PyTorch: peak RSS of its third step less the runtime's (tools/torch_mem_bench.py), NCHW
#     and channels_last;
# and the ratio of camotrain (resident) to PyTorch's smaller figure. The goal is <= 0.8.
# Environment: CAMOTRAIN, BENCH_MEM_MODELS ("unet_s fpn_r18"), BENCH_MEM_SIZE (128),
# BENCH_MEM_BATCH (16), BENCH_THREADS, PYTHON (needs torch and libconf: Debian's
# python3-torch and python3-libconf; else PyTorch is skipped, camotrain's figures printed).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
BIN=${CAMOTRAIN:-./camotrain}
MODELS=${BENCH_MEM_MODELS:-"unet_s fpn_r18"}
SIZE=${BENCH_MEM_SIZE:-128}
BATCH=${BENCH_MEM_BATCH:-16}
THREADS=${BENCH_THREADS:-$(nproc)}
PY=${PYTHON:-python3}
[ -x /usr/bin/python3 ] && [ -z "${PYTHON:-}" ] && PY=/usr/bin/python3 # Debian's torch
tmp=$(mktemp -d /tmp/camobench_mem.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

echo "== training memory, ${SIZE}x${SIZE}, batch $BATCH, fp32 (camotrain vs PyTorch)"
"$BIN" synth --out "$tmp/data" --train $((BATCH * 3)) --test 2 --size "$SIZE" --seed 1 > /dev/null
have_torch=1
"$PY" -c "import torch, libconf" 2> /dev/null || have_torch=0

mib() { awk -v b="$1" 'BEGIN { printf "%.0f", b / 1048576 }'; }

# camo_resident MODEL MEMORY: bytes of peak RSS above the process's RSS before the model
# (both from the end summary of the run)
camo_resident() {
    local out=$tmp/run_$1_$2
    OMP_NUM_THREADS=$THREADS "$BIN" --conf conf/demo.cfg --model "$1" \
        --out "$out" --set data.root="$tmp/data" --set data.img_size="$SIZE" \
        --set train.batch="$BATCH" --set train.max_steps=3 --set train.epochs=1 \
        --set eval.every=0 --set data.workers=1 --set train.threads="$THREADS" \
        --set data.augment.scale_min=1.0 --set data.augment.scale_max=1.0 \
        --set "train.memory=\"$2\"" > "$out.log" 2>&1 ||
        { echo "camotrain failed: $(tail -2 "$out.log")" >&2; return 1; }
    sed -n 's/.*peak \([0-9.]*\) MiB allocated.*/\1/p' "$out.log" > "$out.alloc"
    sed -n 's/.*resident peak \([0-9.]*\) MiB over the steps, \([0-9.]*\) MiB before the model.*/\1 \2/p' \
        "$out.log" | awk '{ printf "%.0f\n", ($1 - $2) * 1048576 }'
}

camo_allocated() {
    "$BIN" --conf conf/demo.cfg --model "$1" --summary --set data.img_size="$SIZE" \
        --set train.batch="$BATCH" --set "train.memory=\"$2\"" --set parallel.devices=cpu:1 |
        awk '$1 == "total" { print $2 * 1048576 }'
}

for m in $MODELS; do
    for mode in lean fast; do
        a=$(camo_allocated "$m" "$mode")
        r=$(camo_resident "$m" "$mode")
        printf "%-10s camotrain (train.memory %-4s) planned %4s MiB, allocated peak %4.0f MiB (+ workspace), resident %4s MiB\n" \
            "$m" "$mode" "$(mib "$a")" "$(cat "$tmp/run_${m}_$mode.alloc")" "$(mib "$r")"
        eval "res_$mode=$r"
    done
    if [ $have_torch = 0 ]; then
        echo "           PyTorch skipped: $PY lacks torch or libconf (apt-get install python3-torch python3-libconf)"
        continue
    fi
    best=0
    for fmt in "" --channels-last; do
        b=$("$PY" tools/torch_mem_bench.py --config "conf/models/$m.cfg" --batch "$BATCH" \
            --size "$SIZE" --threads "$THREADS" $fmt | sed -n 's/^train_bytes \([0-9]*\).*/\1/p')
        printf "%-10s PyTorch %-14s resident %5s MiB\n" "$m" "${fmt:---nchw}" "$(mib "$b")"
        if [ "$best" = 0 ] || [ "$b" -lt "$best" ]; then best=$b; fi
    done
    awk -v m="$m" -v l="$res_lean" -v f="$res_fast" -v p="$best" 'BEGIN {
        printf "%-10s ratio camotrain / PyTorch (its smaller): lean %.2fx, fast %.2fx (goal <= 0.8)\n",
               m, l / p, f / p }'
done
