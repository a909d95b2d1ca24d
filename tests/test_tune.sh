#!/usr/bin/env bash
# tools/tune (Optuna): a 6-trial search over lr and batch on synthetic data finishes, prunes
# at least one trial, writes best_hyperparams.json as a --set list and leaves no trial
# checkpoint; a search killed mid-trial resumes with its finished trials kept; the final
# run trains with the best values on train + test. Needs optuna in $CAMO_PYTHON (else
# python3): SKIP (counted) where it is missing. PASS/FAIL/SKIP for tests/run.sh.
. "$(dirname "$0")/lib.sh" tune

PY=${CAMO_PYTHON:-python3}
if ! "$PY" -c "import optuna" 2>/dev/null; then
    skip tune "no optuna for $PY (pip install optuna; CAMO_PYTHON=venv/bin/python)"
    exit 0
fi

DATA=$TMP/data
$BIN synth --out "$DATA" --train 48 --test 12 --size 40 --seed 2 > /dev/null 2>&1 || fail synth "synth failed"
cat > "$TMP/space.json" <<'JSON'
{"train.lr": {"type": "categorical", "choices": [0.003, 1e-9]},
 "train.batch": {"type": "categorical", "choices": [4, 8]}}
JSON
tune() { # OUT [more args]: a 6-trial search on the synthetic set
    local out=$1; shift
    "$PY" tools/tune --bin "$BIN" --conf conf/demo.cfg --space "$TMP/space.json" --trials 6 \
        --subset 0.5 --out "$out" --no-final --set data.root="$DATA" --set data.img_size=32 \
        --set train.epochs=3 --set eval.every=1 --set train.threads=1 --set data.workers=1 \
        --set train.warmup_epochs=0 "$@"
}
# finished_of LOG: "C P" from the study line
counts() { sed -n "s/^study 'camotrain': \([0-9]*\) complete, \([0-9]*\) pruned.*/\1 \2/p" "$1" | tail -1; }
no_ckpt() { [ -z "$(find "$1" -name '*.ckpt*' 2>/dev/null)" ]; }

# ---- a whole search ----
OUT=$TMP/search
tune "$OUT" > "$TMP/search.log" 2>&1 || fail tune_search "exit $?: $(tail -3 "$TMP/search.log")"
read -r c p <<< "$(counts "$TMP/search.log")"
if [ "$((${c:-0} + ${p:-0}))" != 6 ]; then fail tune_six_trials "complete ${c:-?} + pruned ${p:-?} != 6"
else pass tune_six_trials; fi
if [ "${p:-0}" -ge 1 ]; then pass tune_pruned; else fail tune_pruned "no trial pruned"; fi
if "$PY" - "$OUT/best_hyperparams.json" <<'PY'
import json, sys
h = json.load(open(sys.argv[1]))
keys = sorted(s.split("=")[0] for s in h["set"])
sys.exit(0 if keys == ["train.batch", "train.lr"] and h["metric"] == "iou" else 1)
PY
then pass tune_best_file; else fail tune_best_file "$(cat "$OUT/best_hyperparams.json" 2>&1)"; fi
if no_ckpt "$OUT"; then pass tune_no_checkpoints; else fail tune_no_checkpoints "$(find "$OUT" -name '*.ckpt*')"; fi

# ---- killed mid-trial, then resumed ----
OUT2=$TMP/resume
setsid bash -c "$(declare -f tune); PY='$PY' BIN='$BIN' TMP='$TMP' DATA='$DATA' tune '$OUT2'" \
    > "$TMP/killed.log" 2>&1 &
pid=$!
for _ in $(seq 600); do # two trials finished and the third one started: kill it mid-way
    [ "$(grep -cE '^trial [0-9]+: (iou|pruned)' "$TMP/killed.log")" -ge 2 ] &&
        [ "$(grep -cE '^trial [0-9]+: train' "$TMP/killed.log")" -ge 3 ] && sleep 1 && break
    sleep 0.1
done
kill -9 -- -"$pid" 2>/dev/null; wait "$pid" 2>/dev/null
killed_done=$(grep -cE '^trial [0-9]+: (iou|pruned)' "$TMP/killed.log")
tune "$OUT2" > "$TMP/resume.log" 2>&1 || fail tune_resume "exit $?: $(tail -3 "$TMP/resume.log")"
kept=$(sed -n "s/^resuming study 'camotrain': \([0-9]*\) finished.*/\1/p" "$TMP/resume.log")
read -r c p <<< "$(counts "$TMP/resume.log")"
if [ "${kept:-0}" -lt 2 ] || [ "${kept:-0}" != "$killed_done" ]; then
    fail tune_resume "kept '${kept:-}' trials, the killed search had finished $killed_done"
elif [ "$((${c:-0} + ${p:-0}))" != 6 ]; then
    fail tune_resume "complete ${c:-?} + pruned ${p:-?} != 6 after the resume"
else pass tune_resume; fi
if no_ckpt "$OUT2"; then pass tune_resume_no_checkpoints
else fail tune_resume_no_checkpoints "$(find "$OUT2" -name '*.ckpt*')"; fi

# ---- the final run with the best values, on Train + Test ----
"$PY" tools/tune --bin "$BIN" --conf conf/demo.cfg --skip-hyperopt \
    --hyperparams-file "$OUT/best_hyperparams.json" --final-splits Train,Test --out "$OUT" \
    --set data.root="$DATA" --set data.img_size=32 --set train.epochs=1 --set train.threads=1 \
    --set data.workers=1 > "$TMP/final.log" 2>&1
rc=$?
lr=$("$PY" -c "import json,sys; print([s.split('=')[1] for s in json.load(open(sys.argv[1]))['set'] if s.startswith('train.lr=')][0])" "$OUT/best_hyperparams.json")
if [ $rc != 0 ]; then fail tune_final "exit $rc: $(tail -3 "$TMP/final.log")"
elif ! grep -q "data: 60 training images" "$OUT/final/train.log"; then
    fail tune_final "not trained on Train + Test (48 + 12): $(grep 'training images' "$OUT/final/train.log")"
elif ! grep -q "lr = $lr" "$OUT/final/config.cfg" && ! grep -q "lr = ${lr}0*;" "$OUT/final/config.cfg"; then
    fail tune_final "config.cfg lacks train.lr $lr: $(grep 'lr' "$OUT/final/config.cfg" | head -3)"
else pass tune_final; fi

# ---- bad input ----
"$PY" tools/tune --bin "$BIN" --conf conf/demo.cfg --space "$TMP/nope.json" --out "$TMP/bad" \
    > "$TMP/bad.log" 2>&1
if [ $? = 0 ] || ! grep -q "nope.json" "$TMP/bad.log"; then
    fail tune_bad_space "a missing space file: $(tail -2 "$TMP/bad.log")"
else pass tune_bad_space; fi
