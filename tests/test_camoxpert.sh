#!/usr/bin/env bash
# CamoXpert end to end through ./camotrain on CPU replicas (tests/fixtures/camoxpert_small.cfg:
# EdgeNeXt-small encoder, SDTA enhancement, top-down decoder, 7-expert top-4 mixture of
# experts, deep supervision; tools/camoxpert_cfg.py writes it and conf/models/camoxpert.cfg):
#   - DDP and DP on 2 replicas give bit-identical checkpoints (weights, BN statistics,
#     optimizer slots), and the same routing (the moe records of metrics.jsonl);
#   - 1 replica and 2 replicas with sync-BN agree (the MoE's balance statistics are
#     all-reduced then): step losses within 1e-4 relative;
#   - a run stopped after 2 steps and resumed ends bit-identical
#     to the run that did all 4 steps;
#   - train.checkpointing (encoder blocks recomputed) changes no bit;
#   - the shipped files are what the generator writes.
# PASS/FAIL for tests/run.sh.
. "$(dirname "$0")/lib.sh" camoxpert

NET=tests/fixtures/camoxpert_small.cfg
$BIN synth --out "$TMP/data" --train 12 --test 2 --size 40 --seed 5 > /dev/null ||
    { fail camoxpert_synth "synth failed"; exit 0; }
C="--conf conf/demo.cfg --model $NET --quiet --set data.root=$TMP/data --set data.img_size=32
   --set train.batch=6 --set train.epochs=2 --set eval.every=0 --set data.workers=1
   --set train.lr=2e-3"

train() { # NAME DEVICES [ARGS...]: train into $TMP/NAME; the checkpoint hashes in NAME.hash
    local name=$1 dev=$2; shift 2
    $BIN $C --devices "$dev" --out "$TMP/$name" "$@" > "$TMP/$name.log" 2>&1 &&
        hashes "$TMP/$name/last.ckpt" > "$TMP/$name.hash" ||
        { fail "camoxpert_$name" "$(tail -2 "$TMP/$name.log")"; return 1; }
}
same() { # NAME A B: checkpoints bit-identical
    if [ -s "$TMP/$2.hash" ] && cmp -s "$TMP/$2.hash" "$TMP/$3.hash"; then pass "$1"
    else fail "$1" "$2 and $3 differ: $(diff "$TMP/$2.hash" "$TMP/$3.hash" 2>&1 | head -2)"; fi
}
moe_records() { grep '"type":"step"' "$TMP/$1/metrics.jsonl" | sed 's/.*\("moe":\[[^]]*\]\]*\).*/\1/'; }
losses() { grep '"type":"step"' "$TMP/$1/metrics.jsonl" | sed 's/.*"loss":\([^,]*\),.*/\1/' | tr '\n' ' '; }

train ddp cpu:2 --set parallel.mode=\"ddp\"
train dp cpu:2 --set parallel.mode=\"dp\"
same camoxpert_ddp_equals_dp ddp dp
if [ "$(moe_records ddp)" = "$(moe_records dp)" ] && moe_records ddp | grep -q usage; then
    pass camoxpert_routing_ddp_dp
else fail camoxpert_routing_ddp_dp "moe records differ or missing: $(moe_records ddp | head -1)"; fi

train sb1 cpu:1 --set parallel.sync_bn=true
train sb2 cpu:2 --set parallel.sync_bn=true
if awk -v a="$(losses sb1)" -v b="$(losses sb2)" 'BEGIN { n = split(a, x, " "); split(b, y, " ")
       if (n != 4) exit 1
       for (i = 1; i <= n; i++) { d = x[i] - y[i]; if (d < 0) d = -d; if (d > 1e-4 * x[i]) exit 1 } }'
then pass camoxpert_replicas_sync_bn
else fail camoxpert_replicas_sync_bn "losses cpu:1 [$(losses sb1)] cpu:2 [$(losses sb2)]"; fi

train half cpu:1 --set train.max_steps=2
$BIN --resume "$TMP/half/last.ckpt" --set train.max_steps=4 --devices cpu:1 --quiet > "$TMP/resumed.log" 2>&1 &&
    hashes "$TMP/half/last.ckpt" > "$TMP/resumed.hash" ||
    fail camoxpert_resume "$(tail -2 "$TMP/resumed.log")"
train whole cpu:1 --set train.max_steps=4
same camoxpert_resume_exact whole resumed

train ckpt cpu:1 --set train.checkpointing=true
same camoxpert_checkpointing_same_bits whole ckpt

expect camoxpert_files_generated 0 "camoxpert_small.cfg: ok" -- python3 tools/camoxpert_cfg.py --check
