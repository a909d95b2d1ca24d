#!/usr/bin/env bash
# `camotrain export` (docs/export.md): usage and input errors (exit 2), the file written
# atomically (a failed write leaves no file and no temporary one, and an old file as it
# was), and, where numpy, onnx and onnxruntime import in $CAMO_PYTHON (default python3),
# tools/onnx_check.py on unet_s, fpn_r18 and tests/fixtures/onnx_all_layers.cfg (every layer
# type): onnx.checker accepts the file and onnxruntime's logits equal camotrain predict's
# within 1e-4 (SKIP, counted, where the packages are missing:
#     python3 -m venv --system-site-packages /tmp/venv-onnx &&
#     /tmp/venv-onnx/bin/pip install onnx==1.16.2 onnxruntime==1.18.1 "numpy<2"
#     CAMO_PYTHON=/tmp/venv-onnx/bin/python bash tests/test_export.sh).
# Prints PASS/FAIL/SKIP lines for tests/run.sh.
. "$(dirname "$0")/lib.sh" export

expect help_export 0 "usage: camotrain export" -- $BIN export --help
expect export_no_args 2 "usage: camotrain export" -- $BIN export
expect export_unknown_option 2 "unknown option '--frob'" -- $BIN export --frob
expect export_missing_value 2 "needs a value" -- $BIN export --ckpt
if $BIN export --ckpt x --onnx "$TMP/x.onnx" 2>&1 | grep -q "built without protobuf-c"; then
    skip export "camotrain was built without protobuf-c (tools/install_deps.sh, then make)"
    exit 0
fi

# ---- checkpoints: short runs on synthetic data (EMA on, so export takes the EMA weights) ----
DATA=$TMP/synth
$BIN synth --out "$DATA" --train 16 --test 3 --size 48 --seed 5 > "$TMP/synth.log" 2>&1 ||
    fail synth "$(tail -3 "$TMP/synth.log")"
COMMON="--set data.root=$DATA --set train.batch=8 --set train.epochs=1 --set eval.batch=4
        --set train.ema_decay=0.5 --set train.threads=1 --set data.workers=1 --quiet"
train() { # NAME NETWORK IMG_SIZE [--set ...]: $TMP/NAME/last.ckpt
    local name=$1 net=$2 size=$3; shift 3
    if $BIN --conf conf/demo.cfg $COMMON --set "model=$PWD/$net" --set "data.img_size=$size" \
        "$@" --out "$TMP/$name" > "$TMP/$name.log" 2>&1 && [ -s "$TMP/$name/last.ckpt" ]; then
        pass "train_$name"
    else fail "train_$name" "$(tail -3 "$TMP/$name.log")"; fi
}
train unet conf/models/unet_s.cfg 64
train fpn conf/models/fpn_r18.cfg 64
train all tests/fixtures/onnx_all_layers.cfg 40

# ---- errors: exit 2 naming the problem, nothing written ----
X=("$BIN" export --ckpt "$TMP/unet/last.ckpt") # the unet_s checkpoint's export
expect_str missing_ckpt 2 "$TMP/none.ckpt" -- \
    $BIN export --ckpt "$TMP/none.ckpt" --onnx "$TMP/e1.onnx"
echo "not a checkpoint" > "$TMP/bad.ckpt"
expect_str bad_ckpt 2 "$TMP/bad.ckpt" -- $BIN export --ckpt "$TMP/bad.ckpt" --onnx "$TMP/e2.onnx"
expect bad_size_zero 2 "--size needs two integers" -- "${X[@]}" --onnx "$TMP/e3.onnx" --size 0 64
expect bad_size_word 2 "--size needs two integers" -- "${X[@]}" --onnx "$TMP/e3.onnx" --size 6 x
expect bad_size_one 2 "--size needs two integers" -- "${X[@]}" --onnx "$TMP/e3.onnx" --size 64
expect bad_size_net 2 "--size 3 3 does not fit network 'unet_s'" -- \
    "${X[@]}" --onnx "$TMP/e3.onnx" --size 3 3
expect bad_opset 2 "--opset needs an integer in \[13, 21\]" -- \
    "${X[@]}" --onnx "$TMP/e4.onnx" --opset 12
expect_str unwritable 2 "cannot write '$TMP/no/such/m.onnx'" -- \
    "${X[@]}" --onnx "$TMP/no/such/m.onnx"
expect onnx_is_folder 2 "is a folder" -- "${X[@]}" --onnx "$TMP"
if ls "$TMP"/e[1-4].onnx* "$TMP"/no 2>/dev/null | grep -q .; then
    fail errors_write_nothing "$(ls "$TMP"/e[1-4].onnx* 2>/dev/null)"
else pass errors_write_nothing; fi

# ---- what is written, atomically ----
expect export_unet 0 "output main \[1, 1, 64, 64\]" -- "${X[@]}" --onnx "$TMP/u.onnx"
expect export_ema 0 "(EMA weights)" -- "${X[@]}" --onnx "$TMP/u2.onnx"
if cmp -s "$TMP/u.onnx" "$TMP/u2.onnx"; then pass export_deterministic
else fail export_deterministic "two exports of one checkpoint differ"; fi
expect export_no_ema 0 "(trained weights)" -- "${X[@]}" --onnx "$TMP/u3.onnx" --no-ema
if cmp -s "$TMP/u.onnx" "$TMP/u3.onnx"; then fail export_ema_differs "EMA = trained weights"
else pass export_ema_differs; fi
expect export_all_dynamic 0 "output main \[N, 1, 64, 64\], aux2 \[N, 1, 64, 64\], aux3" -- \
    "${X[@]}" --onnx "$TMP/ud.onnx" --all-outputs --dynamic-batch
expect export_size 0 "input \[1, 3, 96, 128\]" -- "${X[@]}" --onnx "$TMP/us.onnx" --size 96 128
# a write that fails half-way (a full disk): exit 1, the old file untouched, no temporary file
echo "old model" > "$TMP/keep.onnx"
expect write_fails 1 "cannot write '$TMP/keep.onnx'" -- \
    env CAMO_TEST_ONNX_WRITE_FAIL=1 "${X[@]}" --onnx "$TMP/keep.onnx"
if [ "$(cat "$TMP/keep.onnx")" = "old model" ]; then pass failed_write_keeps_old
else fail failed_write_keeps_old "keep.onnx changed"; fi
if ls "$TMP" | grep -q '\.tmp\.'; then fail no_temp_files "$(ls "$TMP" | grep '\.tmp\.')"
else pass no_temp_files; fi
expect replace_existing 0 "keep.onnx" -- "${X[@]}" --onnx "$TMP/keep.onnx"
if cmp -s "$TMP/u.onnx" "$TMP/keep.onnx"; then pass replaced_whole
else fail replaced_whole "keep.onnx is not the export"; fi

# ---- onnx.checker and onnxruntime against camotrain predict ----
PY=${CAMO_PYTHON:-python3}
if ! "$PY" -c 'import numpy, onnx, onnxruntime' > /dev/null 2>&1; then
    skip onnxruntime "numpy, onnx or onnxruntime missing in $PY (CAMO_PYTHON: see the top of $0)"
    exit 0
fi
check() { # NAME RUN [onnx_check options]: one PASS/FAIL line, with the figures
    local name=$1 run=$2 out rc; shift 2
    out=$("$PY" tools/onnx_check.py --camotrain "$BIN" --ckpt "$TMP/$run/last.ckpt" \
          --images "$DATA/Test/Image" --work "$TMP/check_$name" "$@" 2>&1); rc=$?
    echo "$out"
    case $rc in
        0) pass "onnx_$name" ;;
        3) skip "onnx_$name" "$(echo "$out" | tail -1)" ;;
        *) fail "onnx_$name" "exit $rc: $(echo "$out" | tail -2)" ;;
    esac
}
check unet_s unet
check unet_s_dynamic_all unet --dynamic-batch --all-outputs
check fpn_r18 fpn
check fpn_r18_opset13_dynamic fpn --opset 13 --dynamic-batch
check all_layers_opset13 all --opset 13
check all_layers_opset17 all --opset 17
check all_layers_opset18 all --opset 18
check all_layers_opset20 all --opset 20
check all_layers_opset21_dynamic_all all --opset 21 --dynamic-batch --all-outputs
# the other networks of conf/models (others add them) up to 20M parameters (the ResNet-50
# variants are the same layer types as their ResNet-18 twins): one step at 32x32 each
for f in conf/models/*.cfg; do
    n=$(basename "$f" .cfg)
    case $n in unet_s|fpn_r18) continue ;; esac
    params=$($BIN --conf conf/demo.cfg --set "model=$PWD/$f" --summary 2>/dev/null |
             sed -n 's/^parameters: \([0-9]*\).*/\1/p')
    if [ -z "$params" ] || [ "$params" -gt 20000000 ]; then continue; fi
    train "zoo_$n" "$f" 32 --set train.batch=16
    [ -s "$TMP/zoo_$n/last.ckpt" ] && check "$n" "zoo_$n" --all-outputs --dynamic-batch
done
