#!/usr/bin/env bash
# Looking at runs: the TensorBoard events file of real training runs (every record's CRCs,
# the tags, the values against metrics.jsonl, resume, multi-class, turned off), `camotrain
# plot` (one curve per run in the data gnuplot reads) and `camotrain profile` (one row per
# batch size, a memory cap that the largest does not fit). PASS/FAIL/SKIP for tests/run.sh.
. "$(dirname "$0")/lib.sh" observe

DATA=$TMP/synth
$BIN synth --out "$DATA" --train 24 --test 8 --size 40 --seed 3 > /dev/null 2>&1 || fail synth "synth failed"
COMMON="--set data.root=$DATA --set data.img_size=32 --set train.batch=8 --set eval.batch=8 --set train.threads=1 --set data.workers=1 --quiet"

# events_of RUN: the run's events files, oldest first
events_of() { ls "$1"/events.out.tfevents.* 2>/dev/null | sort; }

# ---- TensorBoard ----
RUN=$TMP/run_tb
$BIN --conf conf/demo.cfg $COMMON --set train.epochs=2 --devices cpu:2 --out "$RUN" > "$TMP/tb.log" 2>&1 ||
    fail tb_train "$(tail -3 "$TMP/tb.log")"
ev=$(events_of "$RUN")
if [ "$(echo "$ev" | grep -c tfevents)" != 1 ]; then fail tb_one_file "run folder has: $(ls "$RUN")"
else pass tb_one_file; fi
expect tb_crcs 0 "every length and data CRC good" -- $BIN inspect --events "$ev"
$BIN inspect --events "$ev" > "$TMP/tb.txt" 2>&1
missing=""
for tag in train/loss train/lr train/grad_norm train/img_per_s comm/time_s comm/wait_s \
           epoch/train_loss epoch/train_pixel_acc eval/loss eval/iou eval/dice eval/mae eval/sm \
           eval/em_mean eval/wfm eval/fm_max; do
    grep -q "^[0-9]* $tag " "$TMP/tb.txt" || missing="$missing $tag"
done
grep -q "^0 config text" "$TMP/tb.txt" || missing="$missing config(text)"
[ -z "$missing" ] && pass tb_tags || fail tb_tags "missing:$missing"

# every step record of metrics.jsonl has its loss and lr at its step in the events file
# (metrics.jsonl keeps 6 significant digits; the events file float32)
steps_jsonl() { grep '"type":"step"' "$1/metrics.jsonl" |
    sed 's/.*"step":\([0-9]*\),"loss":\([^,]*\),"lr":\([^,]*\),.*/\1 \2 \3/'; }
bad=$(awk 'NR == FNR { loss[$1] = $2; lr[$1] = $3; n++; next }
           $2 == "train/loss" { d = $3 - loss[$1]; if (!($1 in loss) || d * d > 1e-10 * (1 + $3 * $3)) b++; m++ }
           $2 == "train/lr" { d = $3 - lr[$1]; if (d * d > 1e-10 * (1 + $3 * $3)) b++ }
           END { if (n == 0 || m != n) b++; print b + 0 }' <(steps_jsonl "$RUN") "$TMP/tb.txt")
[ "$bad" = 0 ] && pass tb_matches_jsonl || fail tb_matches_jsonl "$bad step values differ or are missing"
evals=$(grep -c '"type":"eval"' "$RUN/metrics.jsonl")
[ "$(grep -c ' eval/iou ' "$TMP/tb.txt")" = "$evals" ] && [ "$evals" -gt 0 ] && pass tb_eval_count ||
    fail tb_eval_count "$evals evals in metrics.jsonl, $(grep -c ' eval/iou ' "$TMP/tb.txt") in TensorBoard"

# a damaged copy: exit 2 naming the file and what is wrong
cp "$ev" "$TMP/damaged.tfevents"
size=$(stat -c %s "$TMP/damaged.tfevents")
printf 'X' | dd of="$TMP/damaged.tfevents" bs=1 seek=$((size - 30)) conv=notrunc 2>/dev/null
expect tb_damaged 2 "damaged.tfevents: record at byte [0-9]*: data CRC mismatch" -- $BIN inspect --events "$TMP/damaged.tfevents"

# resume adds a second file; both check, and its steps continue after the first's
$BIN --resume "$RUN/last.ckpt" --set train.epochs=3 --quiet > "$TMP/tb_resume.log" 2>&1 ||
    fail tb_resume_train "$(tail -3 "$TMP/tb_resume.log")"
n_files=$(events_of "$RUN" | wc -l)
second=$(events_of "$RUN" | grep -v -x -F "$ev" | head -1)
if [ "$n_files" != 2 ] || [ -z "$second" ]; then fail tb_resume "$n_files events files"
elif ! $BIN inspect --events "$second" > "$TMP/tb2.txt" 2>&1; then fail tb_resume "$(tail -1 "$TMP/tb2.txt")"
else
    last1=$(awk '$2 == "train/loss" {s = $1} END {print s}' "$TMP/tb.txt")
    first2=$(awk '$2 == "train/loss" {print $1; exit}' "$TMP/tb2.txt")
    [ -n "$first2" ] && [ "$first2" = $((last1 + 1)) ] && $BIN inspect --events "$ev" > /dev/null &&
        pass tb_resume || fail tb_resume "first step after resume $first2, last before $last1"
    # each file starts with a session START at its first step: TensorBoard's restart mark
    grep -q "^0 session_log status 1 (START)" "$TMP/tb.txt" &&
        grep -q "^$((last1 + 1)) session_log status 1 (START)" "$TMP/tb2.txt" && pass tb_session_start ||
        fail tb_session_start "$(grep session_log "$TMP/tb.txt" "$TMP/tb2.txt")"
fi

# a crash (SIGKILL after step 5) after a checkpoint at step 3: the old file holds step 4 (step
# 5's loss was still on the device, read a step later), the resumed file's START is at 4, so
# TensorBoard drops the old step 4 and shows each step once
CR=$TMP/run_crash
(CAMO_TEST_SIGNAL_AT_STEP=5 CAMO_TEST_SIGNAL=9 $BIN --conf conf/demo.cfg $COMMON --set train.epochs=3 \
    --set eval.every=0 --set log.every=1 --set checkpoint.every_steps=3 --devices cpu --out "$CR" > /dev/null 2>&1; :) 2> /dev/null # ":": the subshell, not this shell, reports the kill
crash1=$(events_of "$CR")
$BIN --resume "$CR/last.ckpt" --quiet > "$TMP/crash_resume.log" 2>&1 || fail tb_crash_train "$(tail -3 "$TMP/crash_resume.log")"
crash2=$(events_of "$CR" | grep -v -x -F "$crash1" | head -1)
$BIN inspect --events "$crash1" > "$TMP/crash1.txt" 2>&1; $BIN inspect --events "$crash2" > "$TMP/crash2.txt" 2>&1
if grep -q "^4 train/loss " "$TMP/crash1.txt" && grep -q "^4 session_log status 1 (START)" "$TMP/crash2.txt" &&
   grep -q "^4 train/loss " "$TMP/crash2.txt" && ! grep -q "^3 train/loss " "$TMP/crash2.txt"; then
    pass tb_crash_resume
else fail tb_crash_resume "old: $(grep -c train/loss "$TMP/crash1.txt") losses, new: $(grep -E 'session|^[34] train/loss' "$TMP/crash2.txt" | head -3)"; fi
if [ -x /tmp/venv-tb/bin/python ]; then
    /tmp/venv-tb/bin/python tools/tb_check.py "$CR" > "$TMP/crash_tb.txt" 2>&1 && pass tb_crash_tensorboard ||
        fail tb_crash_tensorboard "$(grep FAIL "$TMP/crash_tb.txt" | head -3)"
else skip tb_crash_tensorboard "no TensorBoard in /tmp/venv-tb (see tools/tb_check.py)"; fi

# multi-class: mIoU, pixel accuracy, per-class IoU
$BIN synth --out "$TMP/k3" --train 8 --test 4 --size 40 --seed 3 --classes 3 > /dev/null 2>&1
$BIN --conf conf/demo.cfg $COMMON --set data.root="$TMP/k3" --set data.classes=3 --set train.loss=ce \
    --set train.epochs=1 --devices cpu --out "$TMP/run_k3" > "$TMP/k3.log" 2>&1 || fail tb_k3_train "$(tail -3 "$TMP/k3.log")"
$BIN inspect --events "$(events_of "$TMP/run_k3")" > "$TMP/k3.txt" 2>&1
if grep -q ' eval/miou ' "$TMP/k3.txt" && grep -q ' eval/pixel_acc ' "$TMP/k3.txt" &&
   grep -q ' eval/class_iou/0 ' "$TMP/k3.txt" && ! grep -q ' eval/sm ' "$TMP/k3.txt"; then
    pass tb_multiclass
else fail tb_multiclass "$(grep eval/ "$TMP/k3.txt" | head -5)"; fi

# log.tensorboard = false: no events file
$BIN --conf conf/demo.cfg $COMMON --set train.epochs=1 --set log.tensorboard=false --devices cpu \
    --out "$TMP/run_off" > /dev/null 2>&1
[ -f "$TMP/run_off/metrics.jsonl" ] && [ -z "$(events_of "$TMP/run_off")" ] && pass tb_off ||
    fail tb_off "$(ls "$TMP/run_off")"

# ---- console: progress redrawn in place on a terminal, plain lines elsewhere ----
CON="--conf conf/demo.cfg --set data.root=$DATA --set data.img_size=32 --set train.batch=8 --set eval.batch=8 --set train.threads=1 --set data.workers=1 --set train.epochs=1 --set log.every=1 --devices cpu"
$BIN $CON --out "$TMP/run_pipe" 2>&1 | cat > "$TMP/pipe.txt"
if grep -q $'\r\|\033' "$TMP/pipe.txt" || [ "$(grep -c ' step [0-9]* ' "$TMP/pipe.txt")" != 3 ]; then
    fail console_pipe "$(cat -A "$TMP/pipe.txt" | grep step | head -3)"
else pass console_pipe; fi
if ! command -v script > /dev/null; then skip console_tty "script (util-linux) not installed"
else
    # script gives the run a terminal; each of the 3 progress lines but the first erases
    # the one before ("\r\033[K"), and the epoch summary erases the last
    script -qc "$BIN $CON --out $TMP/run_tty" /dev/null > "$TMP/tty.txt" 2>&1 < /dev/null
    redraws=$(grep -o $'\r\033\[K' "$TMP/tty.txt" | wc -l)
    log=$TMP/run_tty/train.log
    if [ "$redraws" -ge 3 ] && grep -q $'\r\033\[Kepoch 1/1  batch 3/3' "$TMP/tty.txt" &&
       ! grep -q $'\r\|\033' "$log" && [ "$(grep -c ' step [0-9]* ' "$log")" = 3 ]; then pass console_tty
    else fail console_tty "$redraws redraws; train.log: $(cat -A "$log" | grep step | head -2)"; fi
fi

# ---- camotrain plot ----
expect help_plot 0 "usage: camotrain plot" -- $BIN plot --help
expect plot_no_run 2 "usage: camotrain plot" -- $BIN plot
expect plot_missing_jsonl 2 "$TMP/nowhere: no metrics.jsonl" -- $BIN plot "$RUN" "$TMP/nowhere" -o "$TMP/x.png"
if ! command -v gnuplot > /dev/null; then
    skip plot "gnuplot not installed (tools/install_deps.sh installs gnuplot-nox)"
else
    # a second run (DP) beside the resumed DDP run: one curve per run in every panel
    $BIN --conf conf/demo.cfg $COMMON --set train.epochs=2 --devices cpu:2 --parallel dp \
        --out "$TMP/run_dp" > /dev/null 2>&1 || fail plot_train_dp "training failed"
    expect plot_two 0 "wrote $TMP/two.png (2 runs)" -- $BIN plot "$RUN" "$TMP/run_dp" -o "$TMP/two.png" --keep-data
    D=$TMP/two-data
    [ "$(head -c 4 "$TMP/two.png" | od -An -c | tr -d ' ')" = "211PNG" ] && pass plot_png ||
        fail plot_png "$TMP/two.png is not a PNG"
    ok=1
    for k in 1 2; do
        r=$([ $k = 1 ] && echo "$RUN" || echo "$TMP/run_dp")
        want_s=$(grep -c '"type":"step"' "$r/metrics.jsonl"); want_e=$(grep -c '"type":"eval"' "$r/metrics.jsonl")
        got_s=$(grep -vc '^#' "$D/run$k.train.dat"); got_e=$(grep -vc '^#' "$D/run$k.eval.dat")
        [ "$want_s" = "$got_s" ] && [ "$want_e" = "$got_e" ] && [ "$want_s" -gt 0 ] ||
            { ok=0; echo "run$k: $got_s/$want_s steps, $got_e/$want_e evals"; }
    done
    # each of the 6 panels plots both runs, each under its folder's name
    n1=$(grep -c "run1\.\(train\|eval\)\.dat' using .* title 'run_tb'" "$D/curves.gp")
    n2=$(grep -c "run2\.\(train\|eval\)\.dat' using .* title 'run_dp'" "$D/curves.gp")
    [ "$n1" = 6 ] && [ "$n2" = 6 ] || { ok=0; echo "curves in curves.gp: run_tb $n1, run_dp $n2 (want 6 each)"; }
    # the resumed run's wall time keeps rising across the resume (each process starts at 0)
    awk '!/^#/ { if ($2 < t) bad = 1; t = $2 } END { exit bad }' "$D/run1.train.dat" ||
        { ok=0; echo "wall time goes back in run1.train.dat"; }
    [ $ok = 1 ] && pass plot_one_curve_per_run || fail plot_one_curve_per_run "see above"
    expect plot_default_out 0 "wrote $TMP/run_dp/curves.png" -- $BIN plot "$TMP/run_dp"
    [ ! -e "$TMP/run_dp/curves-data" ] && [ -s "$TMP/run_dp/curves.png" ] && pass plot_no_data_left ||
        fail plot_no_data_left "$(ls "$TMP/run_dp")"
    mkdir -p "$TMP/nognuplot"; ln -sf "$(command -v awk)" "$TMP/nognuplot/awk"
    expect plot_without_gnuplot 1 "gnuplot not found on PATH: install it" -- \
        env PATH="$TMP/nognuplot" CAMO_NO_REEXEC=1 "$(realpath "$BIN")" plot "$RUN" -o "$TMP/y.png"
fi

# ---- camotrain profile ----
expect help_profile 0 "usage: camotrain profile" -- $BIN profile --help
expect profile_bad_batches 2 "expected rising sizes" -- $BIN profile --conf conf/demo.cfg --batches 8,4
expect profile_bad_key 2 "unknown key 'lrr'" -- $BIN profile --conf conf/demo.cfg --set train.lrr=1 --out "$TMP/prof_bad"
# rows: "batch img/s step_ms peak_mb fits..." lines of profile.txt
rows() { awk '$1 ~ /^[0-9]+$/' "$1/profile.txt"; }
PROF="--conf conf/demo.cfg --set data.root=$TMP/no_such_data --set data.img_size=48 --set train.threads=1 --set data.workers=1 --devices cpu --batches 2,4,32 --steps 3"
if ! $BIN profile $PROF --out "$TMP/prof" > "$TMP/prof.log" 2>&1; then fail profile_rows "$(tail -3 "$TMP/prof.log")"
else
    # synthetic data (the root does not exist), one measured row per size, a best batch
    if [ "$(rows "$TMP/prof" | grep -c ' yes$')" = 3 ] && [ -d "$TMP/prof/synth/Train/Image" ] &&
       grep -Eq '^best: batch (2|4|32):' "$TMP/prof/profile.txt" &&
       awk '$2 <= 0 || $4 <= 0 { exit 1 }' <(rows "$TMP/prof"); then pass profile_rows
    else fail profile_rows "$(cat "$TMP/prof/profile.txt")"; fi
    command -v gnuplot > /dev/null && { [ -s "$TMP/prof/profile.png" ] && pass profile_png || fail profile_png "no PNG"; }
    # a cap that leaves batches 2 and 4 their 10 % headroom and is below batch 32's peak: 32
    # does not fit, the sweep stops there, the best is 2 or 4 (a CUDA build's libraries make
    # a large common part of every peak: batch 32 is far enough above it)
    p4=$(rows "$TMP/prof" | awk '$1 == 2 || $1 == 4 {if ($4 > m) m = $4} END {print m}')
    p8=$(rows "$TMP/prof" | awk '$1 == 32 {print $4}')
    cap=$(awk -v a="$p4" -v b="$p8" 'BEGIN { printf "%.0f", (a / 0.9 + b) / 2 }')
    if awk -v a="$p4" -v b="$p8" 'BEGIN { exit !(b - a / 0.9 > 12) }'; then
        $BIN profile $PROF --mem-limit "$cap" --out "$TMP/prof_cap" > "$TMP/prof_cap.log" 2>&1
        r=$(rows "$TMP/prof_cap")
        if [ "$(echo "$r" | wc -l)" = 3 ] && echo "$r" | grep -q '^ *32 .*no: resident memory' &&
           [ "$(echo "$r" | grep -c ' yes$')" = 2 ] && grep -q '^best: batch [24]:' "$TMP/prof_cap/profile.txt"; then
            pass profile_mem_cap
        else fail profile_mem_cap "cap $cap MB: $(cat "$TMP/prof_cap/profile.txt" "$TMP/prof_cap.log" | tail -8)"; fi
    else skip profile_mem_cap "peaks of batches 2/4 and 32 too close ($p4, $p8 MB) for a cap between them"; fi
fi
exit 0
