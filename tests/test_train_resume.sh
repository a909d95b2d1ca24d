#!/usr/bin/env bash
# Kill-and-resume under the whole recipe: two stages (frozen encoder, then progressive
# unfreezing at another batch size and lr), gradient accumulation, clipping, SGD with
# nesterov momentum, EMA, checkpoint.every_steps. Runs stopped by SIGTERM (at a step inside
# stage 1, exactly at the stage boundary, inside stage 2) or killed with SIGKILL (resumed
# from the periodic checkpoint) must end with the same tensors, bit for bit, as the run
# never stopped. Prints PASS/FAIL/SKIP lines for tests/run.sh.
. "$(dirname "$0")/lib.sh" train_resume
export OMP_WAIT_POLICY=passive

DATA=$TMP/synth
if ! $BIN synth --out "$DATA" --train 24 --test 6 --size 40 --seed 5 > "$TMP/synth.log" 2>&1; then
    fail resume_synth "$(tail -3 "$TMP/synth.log")"; exit 0
fi

# 24 images: stage 1 = 3 batches of 8 = 2 optimizer steps an epoch (accum 2, the last step
# has one micro-batch); stage 2 = 4 batches of 6 = 2 steps an epoch. Steps 1-4 are stage 1,
# 5-8 stage 2; epochs end at steps 2, 4, 6, 8; every_steps = 3 saves mid-epoch at 3 and 6.
cat > "$TMP/recipe.cfg" <<EOF
model = "$PWD/conf/models/unet_s.cfg";
seed = 11;
data = { root = "$DATA"; img_size = 32; workers = 2;
         augment = { hflip = true; scale_min = 0.8; scale_max = 1.2; jitter = 0.1; }; };
train = {
  optimizer = "sgd"; nesterov = true; momentum = 0.9; weight_decay = 1e-3;
  lr = 0.05; min_lr = 1e-4; schedule = "cosine"; warmup_epochs = 0.5;
  accum_steps = 2; clip_grad_norm = 0.5; ema_decay = 0.8; threads = 1;
  stages = (
    { epochs = 2; batch = 8; freeze = ["encoder"]; },
    { epochs = 2; batch = 6; lr = 0.02; freeze = ["encoder"];
      progressive_unfreeze = true; unfreeze_epochs = 2.0; }
  );
};
eval = { every = 1; batch = 6; };
checkpoint = { every_steps = 3; metric = "dice"; };
log = { every = 100; };
EOF

RUN="$BIN --conf $TMP/recipe.cfg --quiet"

$RUN --out "$TMP/ref" > "$TMP/ref.log" 2>&1 || { fail resume_reference "$(tail -3 "$TMP/ref.log")"; exit 0; }
hashes "$TMP/ref/last.ckpt" > "$TMP/ref.hash"
if [ "$(meta step "$TMP/ref/last.ckpt")" = 8 ] && grep -q '^ema\.' "$TMP/ref.hash" &&
   grep -q '^optim\.momentum_buffer\.' "$TMP/ref.hash"; then
    pass resume_reference
else fail resume_reference "expected 8 steps with ema.* and optim.momentum_buffer.* tensors"; fi

# SIGTERM (test hook: raised right after optimizer step N), then --resume to the end
for n in 3 4 5; do
    name=resume_sigterm_step$n
    CAMO_TEST_SIGNAL_AT_STEP=$n $RUN --out "$TMP/cut$n" > "$TMP/cut$n.log" 2>&1
    rc=$?
    if [ $rc -ne 0 ] || [ "$(meta step "$TMP/cut$n/last.ckpt")" != "$n" ]; then
        fail $name "exit $rc, last.ckpt at step $(meta step "$TMP/cut$n/last.ckpt"), expected $n"
        continue
    fi
    hashes "$TMP/cut$n/last.ckpt" > "$TMP/step$n.hash"
    $BIN --resume "$TMP/cut$n/last.ckpt" --quiet > "$TMP/res$n.log" 2>&1 ||
        { fail $name "resume failed: $(tail -2 "$TMP/res$n.log")"; continue; }
    if hashes "$TMP/cut$n/last.ckpt" | diff "$TMP/ref.hash" - > "$TMP/diff$n.txt"; then pass $name
    else fail $name "tensors differ from the uninterrupted run: $(head -3 "$TMP/diff$n.txt" | tr '\n' ' ')"; fi
done

# the signalled run's JSONL ends where the resumed one goes on: every step once
steps=$(grep -o '"type":"step","epoch":[0-9]*,"step":[0-9]*' "$TMP/cut5/metrics.jsonl" | sed 's/.*://' | tr '\n' ' ')
if [ "$steps" = "1 2 3 4 5 6 7 8 " ]; then pass resume_jsonl_steps_once
else fail resume_jsonl_steps_once "step records: $steps"; fi

# SIGKILL: nothing is saved at exit; resume from the last checkpoint.every_steps one, taken
# mid-epoch (12 steps of 2 images, a checkpoint after each)
KRUN="$BIN --conf conf/demo.cfg --quiet --set data.root=$DATA --set data.img_size=32
      --set train.threads=1 --set checkpoint.every_steps=1 --set train.epochs=2 --set train.batch=2
      --set eval.every=0 --set train.optimizer=sgd --set train.nesterov=true --set train.lr=0.05
      --set train.ema_decay=0.8"
# shellcheck disable=SC2086
$KRUN --out "$TMP/kref" > "$TMP/kref.log" 2>&1 || fail resume_sigkill_every_steps "$(tail -2 "$TMP/kref.log")"
# shellcheck disable=SC2086
$KRUN --out "$TMP/killed" > "$TMP/killed.log" 2>&1 &
pid=$!
for _ in $(seq 1 1000); do
    [ -s "$TMP/killed/last.ckpt" ] && break
    kill -0 $pid 2>/dev/null || break
    sleep 0.01
done
kill -KILL $pid 2>/dev/null
wait $pid 2>/dev/null
kstep=$(meta step "$TMP/killed/last.ckpt")
if [ -z "$kstep" ] || [ "$kstep" -ge 24 ]; then
    skip resume_sigkill_every_steps "the run was not caught between two checkpoints (step '$kstep')"
elif [ "$kstep" = 12 ] || [ "$(meta batch "$TMP/killed/last.ckpt")" = 0 ]; then
    fail resume_sigkill_every_steps "the checkpoint at step $kstep is not a mid-epoch one"
elif ! $BIN --resume "$TMP/killed/last.ckpt" --quiet > "$TMP/killed_res.log" 2>&1; then
    fail resume_sigkill_every_steps "resume failed: $(tail -2 "$TMP/killed_res.log")"
elif diff -q <(hashes "$TMP/kref/last.ckpt") <(hashes "$TMP/killed/last.ckpt") > /dev/null; then
    pass "resume_sigkill_every_steps (killed after step $kstep)"
else fail resume_sigkill_every_steps "tensors differ from the uninterrupted run"; fi

# a real SIGINT from outside (Ctrl-C) once the first epoch's checkpoint is there
$RUN --out "$TMP/int" > "$TMP/int.log" 2>&1 &
pid=$!
for _ in $(seq 1 600); do
    [ -s "$TMP/int/last.ckpt" ] && break
    kill -0 $pid 2>/dev/null || break
    sleep 0.02
done
kill -INT $pid 2>/dev/null
wait $pid; rc=$?
if [ $rc != 0 ]; then fail resume_sigint "exit $rc after SIGINT: $(tail -2 "$TMP/int.log")"
elif [ "$(meta step "$TMP/int/last.ckpt")" = 8 ]; then
    skip resume_sigint "the run ended before the signal arrived"
elif ! $BIN --resume "$TMP/int/last.ckpt" --quiet > "$TMP/int_res.log" 2>&1; then
    fail resume_sigint "resume failed: $(tail -2 "$TMP/int_res.log")"
elif hashes "$TMP/int/last.ckpt" | diff -q "$TMP/ref.hash" - > /dev/null; then pass resume_sigint
else fail resume_sigint "tensors differ from the uninterrupted run"; fi

# best.ckpt holds the EMA weights it was judged by: `eval` (EMA by default) reproduces the
# training-time validation loss of the best epoch; --no-ema gives the raw weights' loss
be=$(meta best_epoch "$TMP/ref/best.ckpt")
train_loss=$(grep "\"type\":\"eval\",\"epoch\":$be," "$TMP/ref/metrics.jsonl" | sed 's/.*"loss": *\([-0-9.e+]*\).*/\1/')
ema_loss=$($BIN eval --ckpt "$TMP/ref/best.ckpt" --json 2>/dev/null | sed -n 's/.*"loss": *\([-0-9.e+]*\).*/\1/p')
raw_loss=$($BIN eval --ckpt "$TMP/ref/best.ckpt" --json --no-ema 2>/dev/null | sed -n 's/.*"loss": *\([-0-9.e+]*\).*/\1/p')
r4() { awk -v x="$1" 'BEGIN { printf "%.4f", x }'; }
if [ -n "$train_loss" ] && [ -n "$ema_loss" ] && [ "$(r4 "$train_loss")" = "$(r4 "$ema_loss")" ] &&
   [ -n "$raw_loss" ] && [ "$(r4 "$raw_loss")" != "$(r4 "$ema_loss")" ]; then
    pass ema_used_for_eval_and_saved
else fail ema_used_for_eval_and_saved "epoch $be: training loss '$train_loss', eval EMA '$ema_loss', raw '$raw_loss'"; fi

# eval every 2 epochs with early stopping: a signal at the end of epoch 1 must not add an
# evaluation (it would set best and count bad epochs differently from the run never stopped)
ES="--set eval.every=2 --set train.early_stop_patience=1"
# shellcheck disable=SC2086
$RUN $ES --out "$TMP/es_ref" > "$TMP/es_ref.log" 2>&1
# shellcheck disable=SC2086
CAMO_TEST_SIGNAL_AT_STEP=2 $RUN $ES --out "$TMP/es_cut" > "$TMP/es_cut.log" 2>&1
if grep -q '"type":"eval","epoch":1,' "$TMP/es_cut/metrics.jsonl"; then
    fail resume_eval_schedule_early_stop "the signalled run evaluated epoch 1 (eval.every = 2)"
elif ! $BIN --resume "$TMP/es_cut/last.ckpt" --quiet > "$TMP/es_res.log" 2>&1; then
    fail resume_eval_schedule_early_stop "resume failed: $(tail -2 "$TMP/es_res.log")"
elif [ "$(meta best_metric "$TMP/es_ref/best.ckpt")" != "$(meta best_metric "$TMP/es_cut/best.ckpt")" ] ||
     ! diff -q <(hashes "$TMP/es_ref/last.ckpt") <(hashes "$TMP/es_cut/last.ckpt") > /dev/null; then
    fail resume_eval_schedule_early_stop "best metric or tensors differ from the run never stopped"
else pass resume_eval_schedule_early_stop; fi

# stage 1 freezes the encoder; stage 2 unfreezes it from the deepest layer (mid_b) towards
# the input over 2 epochs, so enc1a stays frozen to the end while the decoder always trains
h() { awk -v t="$1" '$1 == t {print $2}' "$2"; }
if [ -s "$TMP/step3.hash" ] && [ -s "$TMP/step4.hash" ] &&
   [ "$(h enc1a.conv.weight "$TMP/step3.hash")" = "$(h enc1a.conv.weight "$TMP/step4.hash")" ] &&
   [ "$(h enc1a.conv.weight "$TMP/step4.hash")" = "$(h enc1a.conv.weight "$TMP/ref.hash")" ] &&
   [ "$(h mid_b.conv.weight "$TMP/step3.hash")" = "$(h mid_b.conv.weight "$TMP/step4.hash")" ] &&
   [ "$(h mid_b.conv.weight "$TMP/step4.hash")" != "$(h mid_b.conv.weight "$TMP/ref.hash")" ] &&
   [ "$(h dec1a.conv.weight "$TMP/step3.hash")" != "$(h dec1a.conv.weight "$TMP/step4.hash")" ]; then
    pass stages_freeze_progressive_unfreeze
else fail stages_freeze_progressive_unfreeze "enc1a/mid_b/dec1a weights moved when they should not (or the reverse)"; fi
exit 0
