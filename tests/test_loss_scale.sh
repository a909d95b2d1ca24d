#!/usr/bin/env bash
# Trainer paths of the GPU work that run on CPU replicas: fp16 dynamic loss scaling
# (forced on CPU replicas by the test hook CAMO_TEST_LOSS_SCALE=1; scaling by a power of two
# is exact in fp32, so the tensors must equal those of an unscaled run bit for bit), a
# gradient overflow on one replica (CAMO_TEST_GRAD_OVERFLOW=k: every replica skips step k,
# the scale halves, metrics.jsonl and the checkpoint say so), sync-BN under DDP (its BN
# sums go through the DDP comm thread's queue) against DP, bitwise, and the AMP notice on
# CPU replicas. PASS/FAIL/SKIP lines for tests/run.sh.
. "$(dirname "$0")/lib.sh" loss_scale_sh

DATA=$TMP/synth
if ! $BIN synth --out "$DATA" --train 20 --test 4 --size 32 --seed 5 > "$TMP/synth.log" 2>&1; then
    fail loss_scale_synth "$(tail -3 "$TMP/synth.log")"; exit 0
fi
C="--conf conf/demo.cfg --set data.root=$DATA --set data.img_size=32 --set train.batch=6"
C="$C --set eval.every=0 --set train.threads=1 --set data.workers=1 --set train.epochs=2"
C="$C --set parallel.sync_bn=true --set train.accum_steps=2"

# run NAME [env...] -- args: trains into $TMP/NAME; 0 on success
run() {
    local name=$1; shift
    local envs=()
    while [ "$1" != "--" ]; do envs+=("$1"); shift; done
    shift
    rm -rf "${TMP:?}/$name" # metrics.jsonl is appended to: start empty
    env "${envs[@]}" $BIN $C --out "$TMP/$name" "$@" > "$TMP/$name.log" 2>&1
}

# ---- scaling is exact: same tensors with and without it ----
for dev in cpu:1 cpu:2; do
    for mode in ddp dp; do
        [ $dev = cpu:1 ] && [ $mode = dp ] && continue
        n=${dev#cpu:}_$mode
        if ! run plain_$n X=1 -- --devices $dev --parallel $mode ||
           ! run scaled_$n CAMO_TEST_LOSS_SCALE=1 -- --devices $dev --parallel $mode; then
            fail loss_scale_exact_$n "a run failed: $(tail -2 "$TMP/scaled_$n.log" "$TMP/plain_$n.log")"
            continue
        fi
        if ! diff -q <(hashes "$TMP/plain_$n/last.ckpt") <(hashes "$TMP/scaled_$n/last.ckpt") > /dev/null
        then fail loss_scale_exact_$n "tensors differ between a scaled and an unscaled run"
        elif [ "$(meta loss_scale "$TMP/scaled_$n/last.ckpt")" != 65536 ]; then
            fail loss_scale_exact_$n "checkpoint loss_scale is '$(meta loss_scale "$TMP/scaled_$n/last.ckpt")'"
        elif [ -n "$(meta loss_scale "$TMP/plain_$n/last.ckpt")" ]; then
            fail loss_scale_exact_$n "an unscaled run saved a loss_scale"
        elif ! grep -q '"loss_scale":65536,"skipped":false' "$TMP/scaled_$n/metrics.jsonl" ||
             grep -q loss_scale "$TMP/plain_$n/metrics.jsonl"; then
            fail loss_scale_exact_$n "metrics.jsonl lacks (or has) loss_scale"
        else pass loss_scale_exact_$n; fi
    done
done

# ---- sync-BN: DDP (BN sums through the comm thread's queue) equals DP bit for bit ----
if diff -q <(hashes "$TMP/plain_2_ddp/last.ckpt") <(hashes "$TMP/plain_2_dp/last.ckpt") > /dev/null
then pass sync_bn_ddp_equals_dp
else fail sync_bn_ddp_equals_dp "cpu:2 sync-BN tensors differ between ddp and dp"; fi

# ---- an overflow on one replica: every replica skips that step ----
for mode in ddp dp; do
    name=loss_scale_overflow_$mode
    if ! run ovf_$mode CAMO_TEST_LOSS_SCALE=1 CAMO_TEST_GRAD_OVERFLOW=2 -- --devices cpu:3 \
            --parallel $mode; then
        fail $name "run failed: $(tail -2 "$TMP/ovf_$mode.log")"; continue
    fi
    J=$TMP/ovf_$mode/metrics.jsonl
    s2=$(grep '"type":"step"' "$J" | grep '"step":2,' | grep -c '"loss_scale":32768,"skipped":true')
    nskip=$(grep -c '"skipped":true' "$J")
    last=$(grep '"type":"step"' "$J" | tail -1)
    if [ "$s2" != 1 ] || [ "$nskip" != 1 ]; then
        fail $name "expected step 2 alone skipped at scale 32768: $(grep -c . "$J") lines, $nskip skipped"
    elif ! echo "$last" | grep -q '"loss_scale":32768,"skipped":false,"skipped_total":1'; then
        fail $name "last step record: $last"
    elif [ "$(meta loss_scale "$TMP/ovf_$mode/last.ckpt")" != 32768 ]; then
        fail $name "checkpoint loss_scale is '$(meta loss_scale "$TMP/ovf_$mode/last.ckpt")'"
    elif ! grep -q 'step 2 skipped: fp16 gradient overflow' "$TMP/ovf_$mode.log"; then
        fail $name "no skip notice in the log"
    else pass $name; fi
done
# replicas that disagreed about the skip would have diverged: with the same skip, ddp = dp
if diff -q <(hashes "$TMP/ovf_ddp/last.ckpt") <(hashes "$TMP/ovf_dp/last.ckpt") > /dev/null
then pass loss_scale_overflow_consistent
else fail loss_scale_overflow_consistent "cpu:3 ddp and dp differ after a skipped step"; fi

# ---- train.amp on CPU replicas: one notice, fp32 numbers ----
if ! run amp_cpu X=1 -- --devices cpu:2 --set train.amp=fp16 --set train.epochs=1; then
    fail amp_cpu_notice "run failed: $(tail -2 "$TMP/amp_cpu.log")"
elif [ "$(grep -c 'applies to GPUs only' "$TMP/amp_cpu.log")" != 1 ] ||
     grep -q loss_scale "$TMP/amp_cpu/metrics.jsonl"; then
    fail amp_cpu_notice "expected one notice and no loss scaling: $(head -3 "$TMP/amp_cpu.log")"
else pass amp_cpu_notice; fi
