#!/usr/bin/env bash
# The memory plan (src/nn/net_plan.h) changes where tensors live, never what is computed:
# short training runs give bit-identical checkpoints (every weight, BN statistic and
# optimizer slot, `inspect --hash`) with every tensor in its own memory (CAMO_PLAN=plain),
# with the planned arena (train.memory "fast"), with batch norms and activations recomputed
# in backward ("lean"), with whole blocks recomputed (train.checkpointing), and with every dead tensor filled with NaN (CAMO_POISON=1: a read
# after a tensor's life ended would turn the weights to NaN or change their bits). On
# networks with max pooling, deep supervision, skip connections, bottlenecks, attention,
# layer norm and GELU, on one replica and on two (DDP). Also --summary: the plan is smaller
# than one buffer per tensor, and lean smaller than fast. PASS/FAIL for tests/run.sh.
. "$(dirname "$0")/lib.sh" memory_plan

$BIN synth --out "$TMP/data" --train 8 --test 2 --size 48 --seed 3 > /dev/null ||
    { fail memory_plan_synth "synth failed"; exit 0; }

# run NAME MODEL DEVICES [ENV...]: 3 steps, the hashes of last.ckpt in $TMP/NAME.hash
run() {
    local name=$1 model=$2 devices=$3; shift 3
    env "$@" $BIN --conf conf/demo.cfg --model "$model" --out "$TMP/$name" --quiet \
        --set data.root="$TMP/data" --set data.img_size=32 --set train.batch=4 \
        --set train.max_steps=3 --set train.epochs=2 --set eval.every=${EVAL:-0} \
        ${EVAL_BATCH:+--set eval.batch=$EVAL_BATCH} \
        --set parallel.devices="$devices" --set data.workers=1 \
        --set "train.memory=\"${MEM:-fast}\"" --set train.checkpointing=${CKPT:-false} \
        > "$TMP/$name.log" 2>&1 &&
        hashes "$TMP/$name/last.ckpt" > "$TMP/$name.hash"
}

for case in "unet_s cpu:1" "fpn_r18 cpu:2" "deeplabv3_r18 cpu:1" "segformer_b0 cpu:2"; do
    set -- $case
    model=$1 dev=$2 tag=${1}_${2/:/}
    ok=1
    MEM=fast run "${tag}_plain" "$model" "$dev" CAMO_PLAN=plain || ok=0
    variants="fast lean"
    [ "$model" != unet_s ] && variants="$variants ckpt" # unet_s names no checkpoint_blocks
    for v in $variants; do
        if [ $v = ckpt ]; then CKPT=true MEM=lean run "${tag}_$v" "$model" "$dev" CAMO_POISON=1 || ok=0
        else MEM=$v run "${tag}_$v" "$model" "$dev" CAMO_POISON=1 || ok=0; fi
    done
    if [ $ok = 0 ]; then fail "plan_bitwise_$tag" "a run failed: $(tail -2 "$TMP"/${tag}_*.log)"; continue; fi
    if [ ! -s "$TMP/${tag}_plain.hash" ]; then
        fail "plan_bitwise_$tag" "no checkpoint hashes"; continue
    fi
    bad=""
    for v in $variants; do
        cmp -s "$TMP/${tag}_plain.hash" "$TMP/${tag}_$v.hash" || bad="$bad $v"
    done
    if [ -n "$bad" ]; then
        fail "plan_bitwise_$tag" "checkpoints differ from the unplanned run:$bad ($(diff "$TMP/${tag}_plain.hash" "$TMP/${tag}_fast.hash" | head -2))"
    else pass "plan_bitwise_$tag"; fi
done

# evaluation between epochs (its own forward-only plan in the same arena, at eval.batch)
# leaves training untouched: the same checkpoint as without evaluation
EVAL=1 EVAL_BATCH=3 MEM=lean run eval_on segformer_b0 cpu:1 CAMO_POISON=1
MEM=lean run eval_off segformer_b0 cpu:1
if [ -s "$TMP/eval_off.hash" ] && cmp -s "$TMP/eval_on.hash" "$TMP/eval_off.hash" &&
   grep -q '"type":"eval"' "$TMP/eval_on/metrics.jsonl"; then pass plan_eval_leaves_training
else fail plan_eval_leaves_training "$(tail -2 "$TMP/eval_on.log")"; fi

# --summary: arena (activations + gradients) per image, fast > lean, both < unplanned
arena() { # MEM: MiB per image of the arena line
    $BIN --conf conf/demo.cfg --model fpn_r18 --summary --set data.img_size=64 \
        --set "train.memory=\"$1\"" 2>&1 |
        awk '/activations \+ gradients x/ { for (i = 1; i <= NF; i++) if ($i == "per") print $(i - 2) }'
}
plain=$($BIN --conf conf/demo.cfg --model fpn_r18 --summary --set data.img_size=64 2>&1 |
    sed -n 's/.*; \([0-9.]*\) MiB with every tensor its own.*/\1/p')
f=$(arena fast) l=$(arena lean)
if awk -v f="$f" -v l="$l" -v p="$plain" 'BEGIN { exit !(l > 0 && l < f && f * 16 < p) }'; then
    pass "plan_summary_sizes"
else fail "plan_summary_sizes" "arena per image fast '$f' lean '$l', unplanned for 16 images '$plain'"; fi
