#!/usr/bin/env bash
# init.weights, --model and --summary's memory figures end to end (tests/test_pretrained.c
# checks the loader against torchvision; tests/test_net_memory.c the figures against what a
# replica allocates). Weights: tests/fixtures/pretrained/tiny*.safetensors, written by
# tools/convert_weights.py from PyTorch (tools/pretrained_ref.py), loaded into
# tests/fixtures/pretrained/tiny_net.cfg. Where python3 has torch and torchvision, the
# converter runs here too (on torchvision's resnet18 and resnet50 as well). Prints
# PASS/FAIL/SKIP lines for tests/run.sh.
. "$(dirname "$0")/lib.sh" pretrained
FX=tests/fixtures/pretrained
PY=
for p in ${PYTHON:-} python3 /usr/bin/python3; do # the first with torch and torchvision
    if $p -c "import torch, torchvision" > /dev/null 2>&1; then PY=$p; break; fi
done

DATA=$TMP/synth
$BIN synth --out "$DATA" --train 16 --test 4 --size 40 --seed 5 > "$TMP/synth.log" 2>&1 ||
    { fail pre_synth "$(tail -2 "$TMP/synth.log")"; exit 0; }

# mkcfg FILE [INIT_GROUP [TRAIN_KEYS]]: by default seed 004's first stage in small: the
# encoder frozen, the head trained
mkcfg() {
    local train='stages = ( { epochs = 1; freeze = ["encoder"]; } );'
    [ $# -ge 3 ] && train=$3
    cat > "$1" <<EOF
model = "$FX/tiny_net.cfg";
${2:-}
data = { root = "$DATA"; img_size = 32; workers = 1; };
train = { batch = 8; threads = 1; loss = "bce"; ema_decay = 0.5;
          $train };
eval = { every = 0; };
log = { tensorboard = false; };
EOF
}
mkcfg "$TMP/run.cfg" "init = { weights = \"$FX/tiny.safetensors\"; };"

# ---- the report, and the weights really loaded (frozen, so last.ckpt keeps them) ----
out=$($BIN --conf "$TMP/run.cfg" --devices cpu:2 --out "$TMP/run" 2>&1); rc=$?
if [ $rc = 0 ] &&
   echo "$out" | grep -qF 'init.weights: matched 15 of 17 tensors of tiny_net from tests/fixtures/pretrained/tiny.safetensors (prefix ""; 3 integer tensors (num_batches_tracked) ignored)' &&
   echo "$out" | grep -qF 'init.weights: missing 2 (kept as initialised): head.weight, head.bias' &&
   echo "$out" | grep -qF 'init.weights: unexpected 2 (not used): fc.weight, fc.bias'; then
    pass pre_report
else fail pre_report "exit $rc: $(echo "$out" | grep -m3 'init\|error')"; fi
n=$(echo "$out" | grep -c '^init.weights: matched')
[ "$n" = 1 ] && pass pre_report_once || fail pre_report_once "$n report lines for 2 replicas"
grep -q '^init.weights: unexpected 2' "$TMP/run/train.log" 2>/dev/null && pass pre_report_in_log ||
    fail pre_report_in_log "not in train.log"
# the frozen encoder's weights in last.ckpt and its EMA copy (made after the load; decay 0.5
# keeps an EMA of constant weights exact): the file's, bit for bit
want=$(hashes "$FX/tiny.safetensors" | grep -E '^(conv1|bn1|layer1\.0\.(conv|bn)[12])\.(weight|bias) ' | sort)
got=$(hashes "$TMP/run/last.ckpt" | grep -E '^(conv1|bn1|layer1\.0\.(conv|bn)[12])\.(weight|bias) ' | sort)
ema=$(hashes "$TMP/run/last.ckpt" | grep -E '^ema\.(conv1|bn1|layer1\.0\.(conv|bn)[12])\.(weight|bias) ' |
      sed 's/^ema\.//' | sort)
if [ "$(echo "$want" | wc -l)" = 9 ] && [ "$want" = "$got" ] && [ "$want" = "$ema" ]; then
    pass pre_weights_loaded
else fail pre_weights_loaded "checkpoint tensors differ from the file: $(diff <(echo "$want") <(echo "$got") | head -2)"; fi

# ---- refusals: exit 2, naming what is wrong ----
expect_str pre_strict 2 'init.strict = true, but the file does not match network '"'"'tiny_net'"'"' exactly: 2 missing (head.weight, head.bias), 2 unexpected (fc.weight, fc.bias)' -- \
    $BIN --conf "$TMP/run.cfg" --set init.strict=true --out "$TMP/strict"
sed 's/filters = 8; size = 3; bias = false;/filters = 16; size = 3; bias = false;/' "$FX/tiny_net.cfg" > "$TMP/wide_net.cfg"
expect_str pre_shape_mismatch 2 "tensor 'conv1.weight' has shape [8, 3, 3, 3], but 'conv1.weight' of network 'tiny_net' is [16, 3, 3, 3]" -- \
    $BIN --conf "$TMP/run.cfg" --set model="$TMP/wide_net.cfg" --out "$TMP/wide"
expect_str pre_missing_file 2 "init.weights: cannot read '$TMP/nope.safetensors'" -- \
    $BIN --conf "$TMP/run.cfg" --set init.weights="$TMP/nope.safetensors" --out "$TMP/nope"
printf 'model = "x.cfg";\ninit = {\n  weigths = "a.safetensors";\n};\n' > "$TMP/typo.cfg"
expect_str pre_unknown_key 2 "typo.cfg:3" -- $BIN --conf "$TMP/typo.cfg" --summary
expect_str pre_bad_strict 2 "strict" -- $BIN --conf "$TMP/run.cfg" --set init.strict=maybe

# ---- init.prefix (a segmenter's state dict: backbone.*, head.*; mmsegmentation-style file) ----
expect_str pre_prefix 0 'init.weights: matched 15 of 17 tensors of tiny_net from tests/fixtures/pretrained/tiny_backbone.safetensors (prefix "backbone."; 2 without the prefix not considered; 3 integer tensors (num_batches_tracked) ignored)' -- \
    $BIN --conf "$TMP/run.cfg" --set init.weights=$FX/tiny_backbone.safetensors --set init.prefix=backbone. --out "$TMP/prefix"
expect_str pre_no_prefix 0 'init.weights: matched 2 of 17 tensors' -- \
    $BIN --conf "$TMP/run.cfg" --set init.weights=$FX/tiny_backbone.safetensors --out "$TMP/noprefix"
expect_str pre_prefix_none_match 2 'no tensor matches a parameter of network '"'"'tiny_net'"'"' (init.prefix "backbone."; 0 of 20 tensors start with it' -- \
    $BIN --conf "$TMP/run.cfg" --set init.prefix=backbone. --out "$TMP/nomatch"

# ---- a relative path resolves from the config's folder (as `model` does) ----
mkdir -p "$TMP/sub/w"
cp "$FX/tiny.safetensors" "$TMP/sub/w/enc.safetensors"
mkcfg "$TMP/sub/rel.cfg" 'init = { weights = "w/enc.safetensors"; };'
expect_str pre_relative_path 0 "from $TMP/sub/w/enc.safetensors" -- $BIN --conf "$TMP/sub/rel.cfg" --out "$TMP/rel"

# ---- a resume takes the checkpoint's weights, not init.weights (gone by then) ----
cp "$FX/tiny.safetensors" "$TMP/gone.safetensors"
mkcfg "$TMP/resume.cfg" "init = { weights = \"$TMP/gone.safetensors\"; };" "epochs = 2;"
CAMO_TEST_SIGNAL_AT_STEP=1 $BIN --conf "$TMP/resume.cfg" --out "$TMP/cut" > "$TMP/cut.log" 2>&1
rm -f "$TMP/gone.safetensors"
out=$($BIN --resume "$TMP/cut/last.ckpt" 2>&1); rc=$?
if [ -s "$TMP/cut/last.ckpt" ] && [ $rc = 0 ] && ! echo "$out" | grep -q 'init.weights'; then
    pass pre_resume_ignores_init
else fail pre_resume_ignores_init "exit $rc: $(tail -2 "$TMP/cut.log") / $(echo "$out" | tail -2)"; fi

# ---- --model NAME (seed 001's -m) ----
expect_str pre_model_name 0 "network unet_s (" -- $BIN --model unet_s --summary
expect_str pre_model_overrides_conf 0 "network fpn_r18 (" -- $BIN --conf conf/demo.cfg --model fpn_r18 --summary
printf 'model = { name = "inline"; layers = ( { name = "c"; type = "conv"; filters = 1; size = 1; } ); };\n' > "$TMP/inline.cfg"
expect_str pre_model_over_inline 0 "network unet_s (" -- $BIN --conf "$TMP/inline.cfg" --model unet_s --summary
expect_str pre_model_path 0 "training tiny_net" -- \
    $BIN --conf "$TMP/run.cfg" --set model=conf/models/unet_s.cfg --model "$FX/tiny_net.cfg" --out "$TMP/mpath"
out=$($BIN --model PSPnet_nope --summary 2>&1); rc=$?
if [ $rc = 2 ] && echo "$out" | grep -qF -- "--model PSPnet_nope: no network conf/models/PSPnet_nope.cfg; available in conf/models:" &&
   echo "$out" | grep -q "fpn_r18" && echo "$out" | grep -q "unet_s"; then pass pre_model_unknown
else fail pre_model_unknown "exit $rc: $out"; fi
expect_str pre_model_suggest 2 "(did you mean unet_s?)" -- $BIN --model UNET --summary
expect_str pre_model_bad_path 2 "--model $TMP/none.cfg: cannot read the network file" -- $BIN --model "$TMP/none.cfg" --summary
expect_str pre_model_resume 2 "--resume continues the network" -- $BIN --resume "$TMP/cut/last.ckpt" --model unet_s
expect_str pre_model_network_conf 2 "is itself a network file" -- $BIN --conf conf/models/unet_s.cfg --model fpn_r18 --summary

# ---- --summary: the memory of a training step ----
# mib LABEL: the MiB figure of that line of the summary in $out
mib() { echo "$out" | awk -v l="$1" 'index($0, "  " l) == 1 { for (i = 1; i <= NF; i++) if ($(i+1) == "MiB") { print $i; exit } }'; }
out=$($BIN --conf conf/kaggle_2gpu.cfg --summary --devices cpu:2 2>&1); rc=$?
parts=0
for l in "weights " "gradients " "buffers " "optimizer state" "EMA of weights" "fixed scratch" \
         "input and its gradient x" "activations + gradients x" "layer scratch x" "targets x"; do
    v=$(mib "$l"); [ -n "$v" ] || { fail pre_summary_memory "no line '$l': $(echo "$out" | tail -14)"; parts=; break; }
    parts="$parts $v"
done
total=$(mib "total")
if [ $rc = 0 ] && [ -n "$parts" ] && [ -n "$total" ] &&
   echo "$out" | grep -qF '2 replicas (parallel.devices "cpu:2"), local batch 16 of the global batch 32 (largest stage)' &&
   echo "$parts $total" | awk '{ s = 0; for (i = 1; i < NF; i++) s += $i; d = s - $NF; exit !(d < 0.06 && d > -0.06) }'; then
    pass pre_summary_memory
else fail pre_summary_memory "exit $rc: parts$parts, total $total"; fi
# the total's own split (fixed + L x per image), the optimizer's and EMA's sizes
w=$(mib "weights "); o=$(mib "optimizer state"); e=$(mib "EMA of weights")
split=$(echo "$out" | sed -n 's/.*total .* MiB  = \([0-9.]*\) MiB + \([0-9]*\) x \([0-9.]*\) MiB per image/\1 \2 \3/p')
if echo "$w $o $e $split $total" | awk '{ d = $4 + $5 * $6 - $7; o = $2 - 2 * $1; exit !(o < 0.02 && o > -0.02 && $3 == $1 && $5 == 16 && d < 0.2 && d > -0.2) }' &&
   echo "$out" | grep -q "2 weight-sized slots" &&
   echo "$out" | grep -qF "replica 0 evaluates at eval.batch = 32"; then
    pass pre_summary_parts
else fail pre_summary_parts "weights $w, optimizer $o, EMA $e, split '$split', total $total"; fi
out=$($BIN --conf conf/kaggle_2gpu.cfg --summary --devices cpu --set train.optimizer=sgd --set train.ema_decay=0 2>&1)
w=$(mib "weights "); o=$(mib "optimizer state"); e=$(mib "EMA of weights"); t1=$(mib "total")
p1=$(echo "$out" | sed -n 's/.*x \([0-9.]*\) MiB per image$/\1/p')
out=$($BIN --conf conf/kaggle_2gpu.cfg --summary --devices cpu:4 --set train.optimizer=sgd --set train.ema_decay=0 2>&1)
t4=$(mib "total")
# 1 replica: local batch 32; 4: 8 per replica; the difference is 24 images
if [ "$o" = "$w" ] && [ "$e" = 0.00 ] && echo "$t1 $t4 $p1" | awk '{ d = $1 - $2 - 24 * $3; exit !(d < 0.2 && d > -0.2) }'; then
    pass pre_summary_sgd_and_batch
else fail pre_summary_sgd_and_batch "sgd optimizer $o vs weights $w, EMA $e, totals $t1 / $t4, per image $p1"; fi

# ---- tools/convert_weights.py (where python3 has torch) ----
if [ -z "$PY" ]; then
    skip pre_convert "python3 without torch/torchvision"
else
    expect pre_convert_help 0 "usage: convert_weights.py" -- $PY tools/convert_weights.py --help
    # a training checkpoint: {"model": state dict, "optimizer": ..., "epoch": ...}, tensors in float64
    $PY - "$TMP/ckpt.pth" > "$TMP/pth.log" 2>&1 <<'PY'
import sys, torch
sys.path.insert(0, "tools")
from pretrained_ref import TinyResNet
torch.manual_seed(3)
m = TinyResNet().double()
torch.save({"model": m.state_dict(), "optimizer": {"step": 10}, "epoch": 4}, sys.argv[1])
torch.save({"model": m.state_dict(), "lr": 0.1}, sys.argv[1] + ".float")
PY
    out=$($PY tools/convert_weights.py "$TMP/ckpt.pth" "$TMP/ckpt.safetensors" 2>&1); rc=$?
    if [ $rc = 0 ] && echo "$out" | grep -qF "20 tensors" && echo "$out" | grep -qF "(state dict: model)" &&
       echo "$out" | grep -qF "float64 tensors written as F32"; then pass pre_convert_unwrap
    else fail pre_convert_unwrap "exit $rc: $out"; fi
    expect_str pre_convert_loads 0 "init.weights: matched 15 of 17" -- \
        $BIN --conf "$TMP/run.cfg" --set init.weights="$TMP/ckpt.safetensors" --out "$TMP/conv"
    # a float outside the tensors: older torch's weights_only loading refuses it
    $PY tools/convert_weights.py "$TMP/ckpt.pth.float" "$TMP/f.safetensors" > "$TMP/f.log" 2>&1
    rc=$?
    if [ $rc = 0 ]; then skip pre_convert_unsafe_hint "this torch's weights_only loading reads floats"
    elif [ $rc = 2 ] && grep -qF "pass --unsafe-pickle" "$TMP/f.log"; then pass pre_convert_unsafe_hint
    else fail pre_convert_unsafe_hint "exit $rc: $(tail -2 "$TMP/f.log")"; fi
    expect_str pre_convert_unsafe 0 "20 tensors" -- \
        $PY tools/convert_weights.py "$TMP/ckpt.pth.float" "$TMP/f.safetensors" --unsafe-pickle
    expect_str pre_convert_bad_key 2 "--key state_dict: no entry 'state_dict'" -- \
        $PY tools/convert_weights.py "$TMP/ckpt.pth" "$TMP/x.safetensors" --key state_dict
    # torchvision's resnet18 and resnet50 through the converter, then the C test on those very
    # files (fpn_r18's layer4.1, fpn_r50's layer4.2; a few seconds each)
    TP=${BUILD:-build}/tests/test_pretrained
    if [ ! -x "$TP" ]; then skip pre_convert_torchvision "no $TP"
    elif $PY tools/pretrained_ref.py --weights "$TMP/r18.safetensors" > "$TMP/r18.log" 2>&1 &&
         $PY tools/pretrained_ref.py --weights "$TMP/r50.safetensors" --arch resnet50 >> "$TMP/r18.log" 2>&1 &&
         CAMO_PRETRAINED_WEIGHTS=$TMP/r18.safetensors CAMO_PRETRAINED_WEIGHTS_R50=$TMP/r50.safetensors \
         CAMO_TEST_TMP=$TMP "$TP" > "$TMP/tp.log" 2>&1 &&
         grep -q "layer4.1 vs torchvision layer4 ($TMP/r18.safetensors): normwise" "$TMP/tp.log" &&
         grep -q "layer4.2 vs torchvision layer4 ($TMP/r50.safetensors): normwise" "$TMP/tp.log"; then
        pass "pre_convert_torchvision (resnet18 $(grep -o 'normwise [0-9.e-]*' "$TMP/tp.log" |
            sed -n 1p), resnet50 $(grep -o 'normwise [0-9.e-]*' "$TMP/tp.log" | sed -n 2p))"
    else fail pre_convert_torchvision "$(tail -3 "$TMP/r18.log") $(grep -m3 'ERROR\|FAIL\|normwise' "$TMP/tp.log")"; fi
    rm -f "$TMP/r18.safetensors" "$TMP/r50.safetensors"
fi
