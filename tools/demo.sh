#!/usr/bin/env bash
# demo.sh: what `make demo` runs after installing packages and building ./camotrain:
# writes the synthetic camouflage set (reused when it is already there with the same
# options), trains conf/demo.cfg in a fresh runs/demo, evaluates best.ckpt and prints the
# final metrics. Environment: CAMOTRAIN (binary), DEMO_DATA, DEMO_OUT, DEMO_SET (extra
# `--set` options, e.g. DEMO_SET="train.epochs=2"), DEMO_SYNTH (the synth options; a smaller
# set for quick checks such as tools/gpu_check.sh on cuemu).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
BIN=${CAMOTRAIN:-./camotrain}
DATA=${DEMO_DATA:-data/synth}
OUT=${DEMO_OUT:-runs/demo}
# 600 training and 100 test images of 128 px; the network sees them at data.img_size
SYNTH_ARGS=${DEMO_SYNTH:-"--train 600 --test 100 --size 128 --seed 0 --difficulty 0.5"}
n_train=$(echo "$SYNTH_ARGS" | sed -n 's/.*--train \([0-9]*\).*/\1/p')
n_test=$(echo "$SYNTH_ARGS" | sed -n 's/.*--test \([0-9]*\).*/\1/p')

say() { printf '\n== %s\n' "$*"; }

# OMP_WAIT_POLICY (passive) and OPENBLAS_CORETYPE (for OpenBLAS's Prescott fallback) need
# no setting here: the binary sets them itself when unset (camo_cpu_env_reexec).

say "synthetic data: $DATA"
stamp="$DATA/.synth-args"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$SYNTH_ARGS" ] &&
   [ "$(ls "$DATA/Train/Image" 2>/dev/null | wc -l)" = "$n_train" ] &&
   [ "$(ls "$DATA/Test/GT_Object" 2>/dev/null | wc -l)" = "$n_test" ]; then
    echo "reusing $DATA (written earlier with: $SYNTH_ARGS)"
else
    rm -rf "$DATA"
    # shellcheck disable=SC2086
    "$BIN" synth --out "$DATA" $SYNTH_ARGS
    echo "$SYNTH_ARGS" > "$stamp"
fi

sets=(--set "data.root=$DATA")
for kv in ${DEMO_SET:-}; do sets+=(--set "$kv"); done

say "training conf/demo.cfg -> $OUT"
if [ -e "$OUT" ]; then
    echo "removing the previous demo run $OUT (a demo always starts fresh)"
    rm -rf "$OUT"
fi
t0=$(date +%s.%N)
"$BIN" --conf conf/demo.cfg --out "$OUT" "${sets[@]}"
t1=$(date +%s.%N)

say "evaluating $OUT/best.ckpt on $DATA/Test"
"$BIN" eval --ckpt "$OUT/best.ckpt" --data "$DATA" | tee "$OUT/eval.txt"
json=$("$BIN" eval --ckpt "$OUT/best.ckpt" --data "$DATA" --json)

# one number of a flat JSON object: field NAME
field() { printf '%s' "$1" | grep -o "\"$2\": *[-0-9.eE+naif]*" | head -1 | sed 's/.*: *//'; }
summary=$(grep '"type":"summary"' "$OUT/metrics.jsonl" | tail -1)
iou=$(field "$json" iou); dice=$(field "$json" dice); mae=$(field "$json" mae)
ips=$(field "$summary" img_per_s); best_epoch=$(field "$summary" best_epoch)
wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", b - a }')

# the curves (camotrain plot, through gnuplot): a missing gnuplot only costs the picture
curves="(no plot: see the warning above)"
if "$BIN" plot "$OUT" -o "$OUT/curves.png" > /dev/null; then curves="$OUT/curves.png"
else echo "camotrain: warning: no $OUT/curves.png (camotrain plot failed)" >&2; fi

say "demo result"
printf '  validation IoU  %s   (goal >= 0.75)\n' "$iou"
printf '  Dice            %s\n' "$dice"
printf '  MAE             %s\n' "$mae"
printf '  training time   %s s, %s img/s (best epoch %s)\n' "$wall" "$ips" "$best_epoch"
printf '  run folder      %s  (metrics.jsonl, best.ckpt, last.ckpt)\n' "$OUT"
printf '  curves          %s;  tensorboard --logdir %s\n' "$curves" "$(dirname "$OUT")"
if awk -v x="$iou" 'BEGIN { exit !(x >= 0.75) }'; then
    echo "  PASS: IoU >= 0.75"
else
    echo "  IoU below 0.75 (a busy or slow machine? see $OUT/metrics.jsonl)"
    exit 1
fi
