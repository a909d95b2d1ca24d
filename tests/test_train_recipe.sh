#!/usr/bin/env bash
# The recipe end to end on tiny synthetic sets: conf/kaggle_2gpu.cfg (seed 004) parses and
# trains two steps; early stopping stops where the evaluations say it must; the progress
# line, the JSONL log (every step, every eval, the summary) and the end summary.
# Prints PASS/FAIL/SKIP lines for tests/run.sh.
. "$(dirname "$0")/lib.sh" train_recipe
export OMP_WAIT_POLICY=passive

DATA=$TMP/synth
$BIN synth --out "$DATA" --train 24 --test 4 --size 40 --seed 4 > "$TMP/synth.log" 2>&1 ||
    { fail recipe_synth "$(tail -2 "$TMP/synth.log")"; exit 0; }

# ---- seed 004's recipe ----
out=$($BIN --conf conf/kaggle_2gpu.cfg --summary 2>&1); rc=$?
if [ $rc = 0 ] && echo "$out" | grep -q "320x320" && echo "$out" | grep -q "output aux"; then
    pass kaggle_cfg_summary
else fail kaggle_cfg_summary "exit $rc: $(echo "$out" | tail -2)"; fi
out=$($BIN --conf conf/kaggle_2gpu.cfg --set data.root="$DATA" --set data.img_size=64 \
      --set train.max_steps=2 --set eval.batch=4 --set data.workers=1 --set train.threads=1 \
      --out "$TMP/kaggle" 2>&1); rc=$?
step=$($BIN inspect "$TMP/kaggle/last.ckpt" 2>/dev/null | awk '$1 == "step" {print $2}')
if [ $rc = 0 ] && [ "$step" = 2 ] && echo "$out" | grep -q "140 epochs" &&
   echo "$out" | grep -q "max_steps reached" && grep -q '"type":"eval"' "$TMP/kaggle/metrics.jsonl"; then
    pass kaggle_cfg_two_steps
else fail kaggle_cfg_two_steps "exit $rc, step '$step': $(echo "$out" | tail -2)"; fi

# ---- progress line, JSONL and summary ----
COMMON="--set data.root=$DATA --set data.img_size=32 --set train.batch=8 --set eval.batch=4
        --set train.threads=1 --set data.workers=1"
# shellcheck disable=SC2086
out=$($BIN --conf conf/demo.cfg $COMMON --set train.epochs=2 --set log.every=1 --out "$TMP/log" 2>&1)
rc=$?
J=$TMP/log/metrics.jsonl
if [ $rc = 0 ] && echo "$out" | grep -Eq '^epoch 1/2  batch 1/3  step 1  loss [0-9.]+  lr [0-9.e+-]+  [0-9.]+ img/s  ETA [0-9]+m[0-9]+s$'; then
    pass progress_line
else fail progress_line "exit $rc: $(echo "$out" | grep -m1 '^epoch')"; fi
n_steps=$(grep -c '"type":"step".*"loss":.*"lr":' "$J")
n_evals=$(grep -c '"type":"eval".*"iou":.*"dice":.*"mae":' "$J")
if [ "$n_steps" = 6 ] && [ "$n_evals" = 2 ] && tail -1 "$J" | grep -q '"type":"summary","reason":"done","epochs":2,"steps":6'; then
    pass jsonl_steps_evals_summary
else fail jsonl_steps_evals_summary "$n_steps step and $n_evals eval records; last: $(tail -1 "$J")"; fi
if echo "$out" | grep -Eq '^done: 2 epochs, 6 steps in [0-9]+m[0-9]+s, [0-9.]+ img/s; best iou [0-9.]+ at epoch [12]; run folder'; then
    pass end_summary
else fail end_summary "$(echo "$out" | tail -1)"; fi

# ---- early stopping: the run must stop at the first evaluation that makes `patience`
# evaluations without improvement, as computed here from its own eval records ----
# shellcheck disable=SC2086
out=$($BIN --conf conf/demo.cfg $COMMON --set train.epochs=8 --set train.lr=1e-6 \
      --set train.early_stop_patience=2 --set checkpoint.metric=mae --quiet --out "$TMP/es" 2>&1)
rc=$?
want=$(grep '"type":"eval"' "$TMP/es/metrics.jsonl" | sed 's/.*"epoch":\([0-9]*\).*"mae":\([-0-9.e+]*\).*/\1 \2/' |
       awk 'NR == 1 || $2 < best {best = $2; bad = 0; next} {if (++bad >= 2) {print $1; exit}} END {}')
last=$(grep '"type":"eval"' "$TMP/es/metrics.jsonl" | tail -1 | sed 's/.*"epoch":\([0-9]*\).*/\1/')
if [ $rc != 0 ]; then fail early_stopping "exit $rc: $(echo "$out" | tail -2)"
elif [ -z "$want" ]; then
    [ "$last" = 8 ] && pass early_stopping || fail early_stopping "no stop was due, yet it ended at epoch $last"
elif [ "$last" = "$want" ] && echo "$out" | grep -q "^early stop: $want epochs"; then pass early_stopping
else fail early_stopping "expected the stop after epoch $want, last eval at epoch $last: $(echo "$out" | tail -1)"; fi
exit 0
