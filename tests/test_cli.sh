#!/usr/bin/env bash
# End-to-end tests of the camotrain binary: usage errors, summaries, a small training run,
# kill-and-resume bit-identity, checkpoints (inspect, corrupt files, PyTorch loading),
# eval and predict, and bad data. Prints PASS/FAIL/SKIP lines for tests/run.sh.
. "$(dirname "$0")/lib.sh" cli

# ---- usage and configs ----
expect help 0 "--conf" -- $BIN --help
expect no_args 2 "usage" -- $BIN
for sub in eval predict inspect synth plot profile; do
    expect "help_$sub" 0 "usage: camotrain $sub" -- $BIN $sub --help
done
expect unknown_option 2 "unknown option '--frobnicate'" -- $BIN --conf conf/demo.cfg --frobnicate
expect unknown_command 2 "unknown command" -- $BIN frobnicate
expect summary_unet 0 "parameters:" -- $BIN --conf conf/models/unet_s.cfg --summary
expect summary_fpn 0 "layer4.1.conv2" -- $BIN --conf conf/models/fpn_r18.cfg --summary
expect summary_train_cfg 0 "unet_s" -- $BIN --conf conf/demo.cfg --summary
expect missing_config 2 "nope.cfg" -- $BIN --conf conf/nope.cfg
expect set_unknown_key 2 "unknown key 'lrr'" -- $BIN --conf conf/demo.cfg --set train.lrr=1
expect set_bad_value 2 "not a valid integer" -- $BIN --conf conf/demo.cfg --set train.epochs=many
printf 'name = "bad";\nlayers = (\n  { name = "a"; type = "conv"; filters = 4; size = 3; },\n  { name = "b"; type = "dense"; }\n);\n' > "$TMP/bad_net.cfg"
expect_str bad_layer_type 2 "bad_net.cfg:4: layer #2 'b': unknown type 'dense' (types: conv," -- $BIN --conf "$TMP/bad_net.cfg" --summary
# a misspelt type with keys of its own: the type is the error, with the closest known one
printf 'layers = (\n  { name = "a"; type = "conv"; filters = 4; size = 3; },\n  { name = "b"; type = "convv"; filters = 3; }\n);\n' > "$TMP/typo_type.cfg"
expect_str typo_layer_type 2 "typo_type.cfg:3: layer #2 'b': unknown type 'convv' (did you mean 'conv'?" -- $BIN --conf "$TMP/typo_type.cfg" --summary
printf 'layers = (\n  { name = "a"; type = "conv"; filters = 4; size = 3;\n    strides = 2; }\n);\n' > "$TMP/typo_key.cfg"
expect_str typo_layer_key 2 "typo_key.cfg:3: layer #1 'a': unknown key 'strides' for type 'conv' (did you mean 'stride'?" -- $BIN --conf "$TMP/typo_key.cfg" --summary
printf 'name = "bad";\nlayers = (\n  { name = "p"; type = "maxpool"; size = 2; },\n  { name = "c"; type = "concat"; from = ["p", "input"]; }\n);\n' > "$TMP/bad_shape.cfg"
expect shape_mismatch 2 "bad_shape.cfg:4: layer 'c': inputs differ in size" -- $BIN --conf "$TMP/bad_shape.cfg" --summary
expect train_network_file 2 "network file" -- $BIN --conf conf/models/unet_s.cfg

# ---- a small training run ----
DATA=$TMP/synth
if ! $BIN synth --out "$DATA" --train 24 --test 8 --size 40 --seed 3 > "$TMP/synth.log" 2>&1; then
    fail synth "$(tail -3 "$TMP/synth.log")"
fi
COMMON="--set data.root=$DATA --set data.img_size=32 --set train.batch=8 --set eval.batch=8 --set train.threads=1 --set data.workers=2 --quiet"
expect missing_data_root 2 "$TMP/none" -- $BIN --conf conf/demo.cfg $COMMON --set data.root=$TMP/none --out "$TMP/run_none"
expect train_small 0 "done" -- $BIN --conf conf/demo.cfg $COMMON --set train.epochs=2 --set eval.every=1 --out "$TMP/run1"
for f in last.ckpt best.ckpt metrics.jsonl config.cfg; do
    [ -s "$TMP/run1/$f" ] && pass "run_folder_$f" || fail "run_folder_$f" "missing"
done
if grep -q '"type":"eval"' "$TMP/run1/metrics.jsonl" && grep -q '"type":"step"' "$TMP/run1/metrics.jsonl"; then
    pass metrics_jsonl; else fail metrics_jsonl "no step/eval records"; fi
expect inspect 0 "enc1a.conv.weight" -- $BIN inspect "$TMP/run1/last.ckpt"
expect inspect_meta 0 "format_version" -- $BIN inspect "$TMP/run1/last.ckpt"
expect inspect_config 0 "img_size = 32" -- $BIN inspect "$TMP/run1/last.ckpt" --meta config
expect eval_ckpt 0 "IoU" -- $BIN eval --ckpt "$TMP/run1/best.ckpt" --set data.workers=1
expect eval_json 0 '"iou":' -- $BIN eval --ckpt "$TMP/run1/best.ckpt" --json
mkdir -p "$TMP/pred"
expect predict 0 "8 images" -- $BIN predict --ckpt "$TMP/run1/best.ckpt" --input "$DATA/Test/Image" --output "$TMP/pred"
first=$(ls "$DATA/Test/Image" | head -1); stem=${first%.*}
if [ -s "$TMP/pred/$stem.png" ]; then pass predict_png; else fail predict_png "no $stem.png"; fi
# the predictions against the mask folder and against the data-set root (its Test split)
expect eval_pred_masks 0 '"n_images": 8' -- $BIN eval --pred "$TMP/pred" --gt "$DATA/Test/GT_Object" --json
expect eval_pred_root 0 '"n_images": 8' -- $BIN eval --pred "$TMP/pred" --gt "$DATA" --json
expect eval_pred_bad_format 2 "format 'bogus'" -- $BIN eval --pred "$TMP/pred" --gt "$DATA" --format bogus

# ---- kill and resume: identical weights, bit for bit ----
RUN="$BIN --conf conf/demo.cfg $COMMON --set train.epochs=3 --set eval.every=1 --set train.ema_decay=0.9"
$RUN --out "$TMP/full" > "$TMP/full.log" 2>&1 || fail resume_reference "$(tail -3 "$TMP/full.log")"
CAMO_TEST_SIGNAL_AT_STEP=4 $RUN --out "$TMP/cut" > "$TMP/cut.log" 2>&1
rc=$?
if [ $rc -eq 0 ] && grep -q interrupted "$TMP/cut.log"; then pass signal_exit_0; else fail signal_exit_0 "exit $rc: $(tail -2 "$TMP/cut.log")"; fi
$BIN --resume "$TMP/cut/last.ckpt" --quiet > "$TMP/resume.log" 2>&1 || fail resume_run "$(tail -3 "$TMP/resume.log")"
if [ -n "$(hashes "$TMP/full/last.ckpt")" ] && diff <(hashes "$TMP/full/last.ckpt") <(hashes "$TMP/cut/last.ckpt") > "$TMP/diff.txt"; then
    pass resume_bitwise_identical
else fail resume_bitwise_identical "tensors differ: $(head -4 "$TMP/diff.txt")"; fi
# a real SIGTERM at an arbitrary moment (while loading, mid-step or evaluating)
$RUN --out "$TMP/killed" > "$TMP/killed.log" 2>&1 &
pid=$!
sleep 1.5
kill -TERM $pid 2>/dev/null
wait $pid; rc=$?
if [ $rc -ne 0 ]; then fail sigterm_exit_0 "exit $rc"
elif [ ! -s "$TMP/killed/last.ckpt" ]; then skip sigterm_resume "the run finished or had no step before the signal"
else
    pass sigterm_exit_0
    $BIN --resume "$TMP/killed/last.ckpt" --quiet > "$TMP/killed_resume.log" 2>&1
    if diff <(hashes "$TMP/full/last.ckpt") <(hashes "$TMP/killed/last.ckpt") > /dev/null; then
        pass sigterm_resume_identical; else fail sigterm_resume_identical "tensors differ"; fi
fi

# ---- bad checkpoints ----
head -c 1000 "$TMP/run1/last.ckpt" > "$TMP/trunc.ckpt"
expect truncated_ckpt_inspect 2 "trunc.ckpt" -- $BIN inspect "$TMP/trunc.ckpt"
expect truncated_ckpt_resume 2 "trunc.ckpt" -- $BIN --resume "$TMP/trunc.ckpt"
expect truncated_ckpt_eval 2 "trunc.ckpt" -- $BIN eval --ckpt "$TMP/trunc.ckpt"
head -c 100000 /dev/urandom > "$TMP/random.ckpt"
expect random_ckpt 2 "random.ckpt" -- $BIN --resume "$TMP/random.ckpt"
expect missing_ckpt 2 "nothere.ckpt" -- $BIN eval --ckpt "$TMP/nothere.ckpt"

# ---- PyTorch reads our checkpoints (when safetensors is installed: with torch, else numpy) ----
if python3 -c "import safetensors, numpy" > /dev/null 2>&1; then
    if python3 - "$TMP/run1/best.ckpt" > "$TMP/py.log" 2>&1 <<'PY'
import sys
from safetensors import safe_open
try:
    from safetensors.torch import load_file
    flavour = "torch"
except ImportError:
    from safetensors.numpy import load_file
    flavour = "numpy"
sd = load_file(sys.argv[1])
w = sd["enc1a.conv.weight"]
assert tuple(w.shape) == (16, 3, 3, 3), w.shape          # [out, in, kh, kw]
assert tuple(sd["head.weight"].shape) == (1, 16, 1, 1)
assert tuple(sd["head.bias"].shape) == (1,)
assert "int64" in str(sd["enc1a.bn.num_batches_tracked"].dtype)
assert tuple(sd["enc1a.bn.num_batches_tracked"].shape) == ()
assert tuple(sd["enc1a.bn.running_var"].shape) == (16,)
assert "float32" in str(w.dtype)
assert any(k.startswith("optim.exp_avg.") for k in sd)
assert all(k in sd for k in sd if not k.startswith(("optim.", "ema.")))
with safe_open(sys.argv[1], flavour if flavour == "numpy" else "pt") as f:
    meta = f.metadata()
assert meta["format"] == "camotrain-checkpoint" and "img_size" in meta["config"]
print("loaded with", flavour)
PY
    then pass "pytorch_loads_checkpoint ($(tail -1 "$TMP/py.log"))"
    else fail pytorch_loads_checkpoint "$(tail -3 "$TMP/py.log")"; fi
else
    skip pytorch_loads_checkpoint "python3 safetensors not installed"
fi

# ---- bad data ----
BAD=$TMP/bad
mkdir -p "$BAD/Train" "$BAD/Test"
cp -r "$DATA/Train/Image" "$DATA/Train/GT_Object" "$BAD/Train/"
cp -r "$DATA/Test/Image" "$DATA/Test/GT_Object" "$BAD/Test/"
victim=$(ls "$BAD/Train/Image" | sed -n 3p)
head -c 300 /dev/urandom > "$BAD/Train/Image/$victim"
expect corrupt_jpeg 2 "$victim" -- $BIN --conf conf/demo.cfg $COMMON --set data.root=$BAD --set train.epochs=1 --out "$TMP/run_bad"
expect corrupt_jpeg_skip 0 "done" -- $BIN --conf conf/demo.cfg $COMMON --set data.root=$BAD --set train.epochs=1 --set data.skip_bad=true --out "$TMP/run_skip"

# ---- the tools the README lists are there after `make test` (and `make demo`) ----
# the default build copies tools/test_multi_gpu next to the other tools; without a GPU it
# says so and exits 2 (sanitizer builds keep theirs in their build folder)
if [ "${BUILD:-build}" = build ] && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
    [ -x tools/test_multi_gpu ] && pass test_multi_gpu_in_tools || fail test_multi_gpu_in_tools "not built"
elif [ "${BUILD:-build}" = build ]; then
    expect test_multi_gpu_in_tools 2 'GPU' -- tools/test_multi_gpu
else
    skip test_multi_gpu_in_tools "BUILD=$BUILD keeps its tools in $BUILD/tools"
fi

# a CUDA build finds cuDNN, NCCL and the CUDA libraries without LD_LIBRARY_PATH (rpath)
if ! command -v readelf > /dev/null; then skip cuda_rpath "no readelf"
elif ! readelf -d "$BIN" | grep -q 'NEEDED.*libcudart'; then skip cuda_rpath "built without CUDA"
elif readelf -d "$BIN" | grep -Eq 'R(UN)?PATH.*cuda'; then pass cuda_rpath
else fail cuda_rpath "no rpath to the CUDA libraries: $(readelf -d "$BIN" | grep -i path)"; fi

# on a GPU machine without apt (.devdeps/env.sh: packages unpacked under
# PKG_CONFIG_SYSROOT_DIR), an OpenMPI installed on the machine keeps its real include path
if ! pkg-config --exists ompi-c 2> /dev/null; then skip mpi_flags_sysroot "no ompi-c for pkg-config"
else
    real=$(pkg-config --cflags-only-I ompi-c | awk '{print $1}')
    got=$(PKG_CONFIG_SYSROOT_DIR=$TMP/devroot make -n --no-print-directory CAMO_DEPS_OK=1 CUDA=0 \
          BUILD="$TMP/flags" "$TMP/flags/src/core/mpi.o" 2>&1 | grep -o -- '-I[^ ]*openmpi[^ ]*' | head -1)
    [ -n "$real" ] && [ "$got" = "$real" ] && pass mpi_flags_sysroot \
        || fail mpi_flags_sysroot "under a sysroot: '$got', the machine's: '$real'"
fi

# tools/gpu_check.sh (the GPU acceptance) on a machine without a GPU: exit 2, one clear line
# (its checks run on cuemu with CAMO_GPU_CHECK_CUEMU=1; too long for every make test)
if nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
    skip gpu_check_without_gpu "this machine has a GPU"
else
    expect gpu_check_without_gpu 2 'no NVIDIA GPU on this machine' -- tools/gpu_check.sh "$TMP/gpu_check"
fi

# ---- every shipped network parses, builds and sizes a training step (--model, --summary) ----
bad=""
for f in conf/models/*.cfg; do
    m=$(basename "$f" .cfg)
    out=$($BIN --conf conf/demo.cfg --model "$m" --set data.img_size=64 --set train.batch=2 \
          --summary 2>&1) && echo "$out" | grep -q '^ *total ' || bad="$bad $m"
done
if [ -z "$bad" ]; then pass models_all_build; else fail models_all_build "failed:$bad"; fi
exit 0
