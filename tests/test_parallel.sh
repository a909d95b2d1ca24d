#!/usr/bin/env bash
# End-to-end tests of data parallelism through the binary: device specs, --devices cpu:N
# with --parallel ddp|dp, uneven data, a replica that fails or stalls mid-run (the run
# ends within the timeout, names the replica, keeps last.ckpt), a replica whose weights
# differ at start, and SIGTERM with several replicas. PASS/FAIL/SKIP lines for tests/run.sh.
. "$(dirname "$0")/lib.sh" parallel_sh

DATA=$TMP/synth
if ! $BIN synth --out "$DATA" --train 22 --test 4 --size 32 --seed 3 > "$TMP/synth.log" 2>&1; then
    fail synth "$(tail -3 "$TMP/synth.log")"; exit 0
fi
C="--conf conf/demo.cfg --set data.root=$DATA --set data.img_size=32 --set train.batch=8"
C="$C --set eval.every=0 --set train.threads=1 --set data.workers=1 --set train.epochs=1 --quiet"

# ---- device specs ----
expect devices_cpu0 2 'cpu:N needs 1 <= N' -- $BIN $C --devices cpu:0 --out "$TMP/bad"
expect devices_garbage 2 'expected cpu, cpu:N, auto or GPU ids' -- $BIN $C --devices gpu1 --out "$TMP/bad"
expect parallel_mode 2 'mode' -- $BIN $C --devices cpu:2 --parallel ring --out "$TMP/bad"
if command -v nvidia-smi > /dev/null 2>&1; then
    skip devices_no_gpu "a GPU driver is present"
else
    expect devices_no_gpu 2 'GPU 0 does not exist' -- $BIN $C --devices 0,1 --out "$TMP/bad"
    out=$($BIN ${C% --quiet} --devices auto --set train.max_steps=1 --out "$TMP/auto" 2>&1 | head -20)
    echo "$out" | grep -q 'auto -> cpu' && pass devices_auto_cpu || fail devices_auto_cpu "$out"
fi

# ---- DDP and DP runs: per-step comm time in metrics.jsonl, uneven last batch ----
for mode in ddp dp; do
    expect "cpu2_$mode" 0 'done' -- $BIN $C --devices cpu:2 --parallel $mode --out "$TMP/$mode"
    if grep -q '"replicas":2,"comm_time":' "$TMP/$mode/metrics.jsonl" &&
       grep -q "\"mode\":\"$mode\",\"comm_s\":" "$TMP/$mode/metrics.jsonl"; then
        pass "comm_time_$mode"; else fail "comm_time_$mode" "no comm_time in metrics.jsonl"; fi
    # 22 images in batches of 5 on 4 replicas: the last batch (2) leaves 2 replicas empty
    expect "uneven_$mode" 0 'done: 2 epochs, 10 steps' -- $BIN $C --devices cpu:4 --parallel $mode \
        --set train.batch=5 --set train.epochs=2 --set parallel.sync_bn=true --out "$TMP/uneven_$mode"
done

# ---- a replica fails at step 3: all stop, exit 1 naming it, last.ckpt of step 2 intact ----
start=$(date +%s)
out=$(CAMO_TEST_FAIL_REPLICA=1 CAMO_TEST_FAIL_STEP=3 $BIN $C --devices cpu:3 \
      --set checkpoint.every_steps=1 --set parallel.timeout_s=30 --out "$TMP/fail" 2>&1); rc=$?
took=$(( $(date +%s) - start ))
if [ $rc = 1 ] && echo "$out" | grep -q 'replica 1: test hook' && [ $took -lt 30 ]; then
    pass fault_exit; else fail fault_exit "exit $rc after ${took}s: $(echo "$out" | tail -2)"; fi
[ "$(meta step "$TMP/fail/last.ckpt")" = 2 ] && pass fault_last_ckpt \
    || fail fault_last_ckpt "last.ckpt step is '$(meta step "$TMP/fail/last.ckpt")', expected 2"
expect fault_resume 0 'done' -- $BIN --resume "$TMP/fail/last.ckpt" --set parallel.devices=cpu:2 --quiet

# ---- a replica stalls at step 2: its peers time out after parallel.timeout_s ----
start=$(date +%s)
out=$(CAMO_TEST_FAIL_REPLICA=2 CAMO_TEST_FAIL_STEP=2 CAMO_TEST_FAIL_STALL=1 $BIN $C --devices cpu:3 \
      --set checkpoint.every_steps=1 --set parallel.timeout_s=2 --out "$TMP/stall" 2>&1); rc=$?
took=$(( $(date +%s) - start ))
if [ $rc = 1 ] && echo "$out" | grep -q 'timed out after 2 s: replica 2 did not join' && [ $took -lt 20 ]; then
    pass stall_timeout; else fail stall_timeout "exit $rc after ${took}s: $(echo "$out" | tail -2)"; fi
[ "$(meta step "$TMP/stall/last.ckpt")" = 1 ] && pass stall_last_ckpt || fail stall_last_ckpt "step $(meta step "$TMP/stall/last.ckpt")"

# ---- replicas that differ at start are refused ----
expect start_checksum 1 'weights differ between replicas' -- env CAMO_TEST_CORRUPT_REPLICA=1 \
    $BIN $C --devices cpu:2 --out "$TMP/corrupt"

# ---- SIGTERM with 2 replicas: finish the step, save, exit 0 ----
expect sigterm_cpu2 0 'interrupted' -- env CAMO_TEST_SIGNAL_AT_STEP=2 $BIN $C --devices cpu:2 \
    --set train.epochs=3 --out "$TMP/sig"
[ "$(meta step "$TMP/sig/last.ckpt")" = 2 ] && pass sigterm_ckpt || fail sigterm_ckpt "step $(meta step "$TMP/sig/last.ckpt")"

# ---- tools/dp_vs_ddp: both modes on 1..2 replicas, a CSV row each (and a plot) ----
out=$(tools/dp_vs_ddp --conf conf/demo.cfg --bin "$BIN" --max 2 --steps 3 --out "$TMP/dvd" \
      --set data.root="$DATA" --set data.img_size=32 --set train.batch=8 --set train.threads=1 \
      --set data.workers=1 2>&1); rc=$?
rows=$(grep -cE '^(ddp|dp),[12],8,[0-9.]+,[0-9.]+,[0-9.]+,[0-9.]+,[0-9.]+,[0-9.]+$' "$TMP/dvd/dp_vs_ddp.csv" 2>/dev/null)
if [ $rc = 0 ] && [ "$rows" = 4 ]; then pass dp_vs_ddp_csv
else fail dp_vs_ddp_csv "exit $rc, $rows rows: $(echo "$out" | tail -2)"; fi
# scaling efficiency = speed-up / replicas, speed-up = img/s over the same mode's 1 replica
if awk -F, 'NR > 1 { one[$1] = $2 == 1 ? $4 : one[$1]; r[NR] = $0 }
            END { for (i in r) { split(r[i], f, ",");
                    if ((f[9] - f[8] / f[2]) ^ 2 > 1e-5 || (f[8] - f[4] / one[f[1]]) ^ 2 > 1e-4) exit 1 } }' \
       "$TMP/dvd/dp_vs_ddp.csv" 2>/dev/null && [ "$rows" = 4 ]; then pass dp_vs_ddp_efficiency
else fail dp_vs_ddp_efficiency "$(cat "$TMP/dvd/dp_vs_ddp.csv" 2>/dev/null | tr '\n' ' ')"; fi
if command -v gnuplot > /dev/null 2>&1; then
    [ -s "$TMP/dvd/dp_vs_ddp.png" ] && pass dp_vs_ddp_png || fail dp_vs_ddp_png "no plot"
else skip dp_vs_ddp_png "gnuplot not installed"; fi

# ---- drop_path draws from (seed, step, image): the same on 1, 2 and 3 replicas and after
# a resume (a draw tied to a replica or to the process would change the losses by ~1e-2) ----
DP_NET=$TMP/droppath.cfg  # the fixture's SegFormer block (two drop_paths, p = 0.5) + a head
sed -e 's/^name = .*/name = "droppath_net";/' \
    -e 's/^\(  { name = "blk.add2";.*}\)$/\1,\n  { name = "head"; type = "conv"; filters = "classes"; size = 1; }/' \
    tests/fixtures/attention/drop_path.cfg > "$DP_NET"
D="--set model=\"$DP_NET\" --set train.optimizer=sgd --set train.max_steps=4 --set train.epochs=2"
losses() { grep '"type":"step"' "$1/metrics.jsonl" | sed 's/.*"loss":\([^,]*\),.*/\1/' | tr '\n' ' '; }
for n in 1 2 3; do
    $BIN $C $D --devices cpu:$n --out "$TMP/dp$n" > "$TMP/dp$n.log" 2>&1 ||
        fail "drop_path_cpu$n" "$(tail -2 "$TMP/dp$n.log")"
done
$BIN $C $D --devices cpu:1 --set train.max_steps=2 --out "$TMP/dpr" > "$TMP/dpr.log" 2>&1 &&
    $BIN --resume "$TMP/dpr/last.ckpt" --set train.max_steps=4 --devices cpu:2 --quiet \
        > "$TMP/dpr2.log" 2>&1 || fail drop_path_resume "$(tail -2 "$TMP/dpr2.log")"
if awk -v a="$(losses "$TMP/dp1")" -v b="$(losses "$TMP/dp2")" -v c="$(losses "$TMP/dp3")" \
       -v r="$(losses "$TMP/dpr")" 'BEGIN { n = split(a, x, " "); split(b, y, " "); split(c, z, " ");
         split(r, w, " "); if (n != 4) exit 1
         for (i = 1; i <= n; i++) { s = x[i] > 0 ? x[i] : 1
           if ((x[i] - y[i]) / s > 1e-5 || (y[i] - x[i]) / s > 1e-5) exit 1
           if ((x[i] - z[i]) / s > 1e-5 || (z[i] - x[i]) / s > 1e-5) exit 1
           if ((x[i] - w[i]) / s > 1e-5 || (w[i] - x[i]) / s > 1e-5) exit 1 } }'; then
    pass drop_path_replicas_resume
else
    fail drop_path_replicas_resume "losses cpu:1 [$(losses "$TMP/dp1")] cpu:2 [$(losses "$TMP/dp2")] cpu:3 [$(losses "$TMP/dp3")] resumed [$(losses "$TMP/dpr")]"
fi

# ---- deeplabv3_r18 (dilated ResNet, ASPP with image pooling, aux head) on 3-class data:
# 2 steps on cpu:2 in DDP and in DP; the two checkpoints are bit-identical ----
MC=$TMP/synth3
if $BIN synth --out "$MC" --train 8 --test 4 --size 32 --seed 5 --classes 3 > "$TMP/synth3.log" 2>&1; then
    M="--conf conf/demo.cfg --set model=\"$PWD/conf/models/deeplabv3_r18.cfg\" --set data.root=$MC"
    M="$M --set data.img_size=32 --set data.classes=3 --set train.loss=\"ce\" --set train.batch=4"
    M="$M --set train.max_steps=2 --set eval.every=0 --set train.threads=1 --set data.workers=1 --quiet"
    for mode in ddp dp; do
        expect "deeplabv3_cpu2_$mode" 0 'max_steps reached: 1 epochs, 2 steps' -- \
            $BIN $M --devices cpu:2 --parallel $mode --out "$TMP/dl_$mode"
    done
    if [ -s "$TMP/dl_ddp/last.ckpt" ] && [ "$(hashes "$TMP/dl_ddp/last.ckpt" | grep -c aux_classifier)" -gt 0 ] &&
       [ "$(hashes "$TMP/dl_ddp/last.ckpt")" = "$(hashes "$TMP/dl_dp/last.ckpt")" ]; then
        pass deeplabv3_ddp_dp_identical
    else
        fail deeplabv3_ddp_dp_identical "$(diff <(hashes "$TMP/dl_ddp/last.ckpt") <(hashes "$TMP/dl_dp/last.ckpt") 2>&1 | head -3 | tr '\n' ' ')"
    fi
else
    fail synth_classes3 "$(tail -3 "$TMP/synth3.log")"
fi
