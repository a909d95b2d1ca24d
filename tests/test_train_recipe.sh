#!/usr/bin/env bash
# The recipe end to end on tiny synthetic sets: conf/kaggle_2gpu.cfg (seed 004) parses and
# trains two steps; early stopping stops where the evaluations say it must; the progress
# line, the JSONL log (every step, every eval, the summary) and the end summary; train.log
# (the console's lines, appended on resume); the per-epoch training loss and pixel accuracy
# (values, rising, across a resume, the same on 1 and 2 replicas).
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
log_out=$out # the console of this run (train.log is checked against it below)
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

# ---- train.log: the console's lines, kept in the run folder and appended on resume ----
L=$TMP/log/train.log
if [ ! -s "$L" ]; then fail train_log_written "no $L"
elif [ "$(head -1 "$L" | grep -c '^==== .*  new run of conf/demo.cfg$')" != 1 ]; then
    fail train_log_written "first line: $(head -1 "$L")"
elif ! diff <(echo "$log_out") <(tail -n +2 "$L") > "$TMP/log_diff.txt"; then
    fail train_log_written "train.log differs from the console: $(head -4 "$TMP/log_diff.txt")"
elif ! tail -2 "$L" | head -1 | grep -q '^done: 2 epochs, 6 steps' ||
     ! tail -1 "$L" | grep -q '^memory (replica 0): peak [0-9.]* MiB allocated'; then
    fail train_log_written "no end summary (done, memory): $(tail -2 "$L" | tr '\n' '|')"
else pass train_log_written; fi
# an interrupted run of 4 epochs (the settings of the "acc" run below), resumed
# shellcheck disable=SC2086
CAMO_TEST_SIGNAL_AT_STEP=4 $BIN --conf conf/demo.cfg $COMMON --set train.epochs=4 --set eval.every=0 \
    --quiet --out "$TMP/cut" > "$TMP/cut.log" 2>&1
$BIN --resume "$TMP/cut/last.ckpt" > "$TMP/resume.log" 2>&1
first=$(grep -n '^==== ' "$TMP/cut/train.log" | head -1)
second=$(grep -n '^==== .*  resumed from .*/cut/last.ckpt$' "$TMP/cut/train.log" | cut -d: -f1)
if [ "${first%%:*}" != 1 ] || [ -z "$second" ]; then
    fail train_log_resume "markers: $(grep '^==== ' "$TMP/cut/train.log" | tr '\n' '|')"
elif ! head -n $((second - 1)) "$TMP/cut/train.log" | grep -q '^interrupted: 1 epochs, 4 steps'; then
    fail train_log_resume "the first run's lines are not kept before the resume marker"
elif ! diff "$TMP/resume.log" <(tail -n +$((second + 1)) "$TMP/cut/train.log") > /dev/null; then
    fail train_log_resume "the resumed run's lines differ from its console"
elif ! tail -2 "$TMP/cut/train.log" | grep -q '^done: 4 epochs, 12 steps'; then
    fail train_log_resume "last lines: $(tail -2 "$TMP/cut/train.log" | tr '\n' '|')"
else pass train_log_resume; fi

# ---- per-epoch training loss and pixel accuracy ----
# num KEY RECORD: a number field of a JSON line
num() { echo "$2" | sed -n "s/.*\"$1\":\([-0-9.e+]*\).*/\1/p"; }
# epochs FILE: the epoch records of a metrics.jsonl, one per line
epochs() { grep '"type":"epoch"' "$1"; }
n_ep=$(epochs "$J" | wc -l)
bad=$(epochs "$J" | while read -r r; do
    l=$(num train_loss "$r"); a=$(num train_pixel_acc "$r")
    awk -v l="$l" -v a="$a" -v i="$(num images "$r")" -v p="$(num pixels "$r")" \
        'BEGIN {exit !(l > 0 && l < 100 && a >= 0 && a <= 1 && i == 24 && p == 24 * 32 * 32)}' ||
        echo "$r"; done)
# the epoch's mean of the step losses, weighted by the step images (batches 8, 8, 8)
mean1=$(grep '"type":"step","epoch":1,' "$J" | sed 's/.*"loss":\([-0-9.e+]*\).*/\1/' |
        awk '{s += $1 * 8; n += 8} END {print s / n}')
ep1=$(epochs "$J" | head -1)
if [ "$n_ep" != 2 ] || [ -n "$bad" ]; then fail epoch_records "$n_ep records; bad: $bad"
elif ! awk -v a="$(num train_loss "$ep1")" -v b="$mean1" 'BEGIN {exit !((a - b) ^ 2 < 1e-8)}'; then
    fail epoch_records "train_loss $(num train_loss "$ep1") is not the step mean $mean1"
elif ! echo "$log_out" | grep -Eq '^train epoch 1: loss [0-9.]+  pixel acc 0\.[0-9]+  \(24 images, 3 steps\)$'
then fail epoch_records "no log line: $(echo "$log_out" | grep -m1 '^train epoch')"
else pass epoch_records; fi

# pixel accuracy rises over a few epochs of the demo config (CPU runs repeat bit for bit)
# shellcheck disable=SC2086
$BIN --conf conf/demo.cfg $COMMON --set train.epochs=4 --set eval.every=0 --quiet \
    --out "$TMP/acc" > "$TMP/acc.log" 2>&1
a1=$(num train_pixel_acc "$(epochs "$TMP/acc/metrics.jsonl" | head -1)")
a4=$(num train_pixel_acc "$(epochs "$TMP/acc/metrics.jsonl" | sed -n 4p)")
if [ -n "$a1" ] && [ -n "$a4" ] && awk -v a="$a1" -v b="$a4" 'BEGIN {exit !(b > a + 0.02)}'
then pass epoch_pixel_acc_rises
else fail epoch_pixel_acc_rises "epoch 1: '$a1', epoch 4: '$a4'"; fi

# after a resume mid-epoch (step 4 = epoch 2, batch 2), the epoch still reports all its steps
# (the checkpoint carries the epoch's sums): every epoch record equals the uninterrupted run's
if [ "$(epochs "$TMP/cut/metrics.jsonl" | wc -l)" != 4 ]; then
    fail epoch_after_resume "$(epochs "$TMP/cut/metrics.jsonl" | wc -l) epoch records, not 4"
elif ! diff <(epochs "$TMP/acc/metrics.jsonl") <(epochs "$TMP/cut/metrics.jsonl") > "$TMP/ep_diff.txt"; then
    fail epoch_after_resume "epochs differ from the uninterrupted run: $(head -4 "$TMP/ep_diff.txt")"
else pass epoch_after_resume; fi

# summed across replicas like the loss: cpu:1, cpu:2 (ddp and dp) give the same records.
# A network without BatchNorm, whose results do not depend on how a batch is split.
printf 'name = "plain";\nlayers = (\n  { name = "c1"; type = "conv"; filters = 8; size = 3; act = "relu"; },\n  { name = "head"; type = "conv"; filters = "classes"; size = 3; }\n);\n' > "$TMP/plain.cfg"
P="--set model=$TMP/plain.cfg --set train.deep_supervision=false --set train.epochs=2 --set eval.every=0 --quiet"
for run in "cpu:1 ddp" "cpu:2 ddp" "cpu:2 dp"; do
    read -r dev mode <<< "$run"
    # shellcheck disable=SC2086
    $BIN --conf conf/demo.cfg $COMMON $P --devices "$dev" --parallel "$mode" \
        --out "$TMP/rep_${dev}_$mode" > "$TMP/rep.log" 2>&1 ||
        fail "epoch_replicas_${dev}_$mode" "$(tail -2 "$TMP/rep.log")"
done
ref=$(epochs "$TMP/rep_cpu:1_ddp/metrics.jsonl")
for r in cpu:2_ddp cpu:2_dp; do
    got=$(epochs "$TMP/rep_$r/metrics.jsonl")
    if [ "$(echo "$got" | wc -l)" != 2 ] || [ "$(echo "$ref" | wc -l)" != 2 ]; then
        fail "epoch_replicas_$r" "records: $got"; continue; fi
    ok=1
    for e in 1 2; do
        a=$(echo "$ref" | sed -n ${e}p); b=$(echo "$got" | sed -n ${e}p)
        [ "$(num pixels "$a")" = "$(num pixels "$b")" ] || ok=0
        awk -v x="$(num train_loss "$a")" -v y="$(num train_loss "$b")" \
            -v p="$(num train_pixel_acc "$a")" -v q="$(num train_pixel_acc "$b")" \
            'BEGIN {exit !((x - y) ^ 2 <= 1e-10 * x * x && (p - q) ^ 2 <= 1e-8)}' || ok=0
    done
    if [ $ok = 1 ]; then pass "epoch_replicas_$r"
    else fail "epoch_replicas_$r" "cpu:1: $ref | $r: $got"; fi
done
exit 0
