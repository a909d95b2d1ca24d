#!/usr/bin/env bash
# Bad inputs end to end: mismatched and damaged checkpoints (renamed tensor, wrong shape,
# another network's description, not ours, cut in the tensor data), resume with another
# network or optimizer, bad data (image without mask, truncated JPEG and PNG) with and
# without data.skip_bad, bad --set values. Each must exit 2 with a message naming the file
# or key, never crash. Also the atomic-write contract: no temp files left in a run folder.
# Prints PASS/FAIL/SKIP lines for tests/run.sh.
. "$(dirname "$0")/lib.sh" train_inputs
export OMP_WAIT_POLICY=passive

DATA=$TMP/synth
$BIN synth --out "$DATA" --train 16 --test 4 --size 40 --seed 9 > "$TMP/synth.log" 2>&1 ||
    { fail inputs_synth "$(tail -2 "$TMP/synth.log")"; exit 0; }
COMMON="--set data.root=$DATA --set data.img_size=32 --set train.batch=8 --set eval.batch=4
        --set train.threads=1 --set data.workers=1 --set log.every=100 --quiet"
# shellcheck disable=SC2086
$BIN --conf conf/demo.cfg $COMMON --set train.epochs=1 --out "$TMP/run" > "$TMP/run.log" 2>&1 ||
    { fail inputs_train "$(tail -2 "$TMP/run.log")"; exit 0; }
CK=$TMP/run/last.ckpt

# ---- damaged and mismatched checkpoints ----
# edit_header SRC DST SED: a same-length edit of the JSON header (tensor offsets stay valid)
edit_header() {
    local n
    n=$(od -An -tu8 -N8 "$1" | tr -d ' ')
    { head -c $((8 + n)) "$1" | LC_ALL=C sed "$3"; tail -c +$((9 + n)) "$1"; } > "$2"
    [ "$(stat -c %s "$1")" = "$(stat -c %s "$2")" ] && ! cmp -s "$1" "$2"
}
ok=1
edit_header "$CK" "$TMP/renamed.ckpt" 's/"enc1a\.conv\.weight"/"encXa.conv.weight"/' || ok=0
edit_header "$CK" "$TMP/shape.ckpt" 's/"enc1a\.conv\.weight":{"dtype":"F32","shape":\[16,3,3,3\]/"enc1a.conv.weight":{"dtype":"F32","shape":[48,1,3,3]/' || ok=0
# the saved network description says 24 filters for enc1a: another network than the tensors
edit_header "$CK" "$TMP/othernet.ckpt" '0,/filters = 16;/s//filters = 24;/' || ok=0
edit_header "$CK" "$TMP/notours.ckpt" 's/camotrain-checkpoint/Xamotrain-checkpoint/' || ok=0
[ $ok = 1 ] && pass ckpt_header_edits || fail ckpt_header_edits "could not edit the header of $CK"
expect_str ckpt_renamed_tensor_eval 2 "renamed.ckpt: tensor 'encXa.conv.weight' is not part of network 'unet_s'" -- \
    $BIN eval --ckpt "$TMP/renamed.ckpt"
expect_str ckpt_renamed_tensor_resume 2 "renamed.ckpt" -- $BIN --resume "$TMP/renamed.ckpt" --quiet
expect_str ckpt_wrong_shape_eval 2 "shape.ckpt: tensor 'enc1a.conv.weight' has shape [48, 1, 3, 3]" -- \
    $BIN eval --ckpt "$TMP/shape.ckpt"
expect_str ckpt_wrong_shape_predict 2 "shape.ckpt" -- \
    $BIN predict --ckpt "$TMP/shape.ckpt" --input "$DATA/Test/Image" --output "$TMP/pred"
expect_str ckpt_other_network_eval 2 "othernet.ckpt: tensor 'enc1a.conv.weight' has shape [16, 3, 3, 3], network 'unet_s' needs [24, 3, 3, 3]" -- \
    $BIN eval --ckpt "$TMP/othernet.ckpt"
expect_str ckpt_other_network_resume 2 "othernet.ckpt" -- $BIN --resume "$TMP/othernet.ckpt" --quiet
expect_str ckpt_not_camotrain 2 "notours.ckpt: not a camotrain checkpoint" -- $BIN eval --ckpt "$TMP/notours.ckpt"
expect_str ckpt_not_camotrain_inspect 0 "Xamotrain-checkpoint" -- $BIN inspect "$TMP/notours.ckpt"
head -c $(( $(stat -c %s "$CK") - 4096 )) "$CK" > "$TMP/cut_data.ckpt"
expect_str ckpt_truncated_data_resume 2 "cut_data.ckpt" -- $BIN --resume "$TMP/cut_data.ckpt" --quiet
expect_str ckpt_truncated_data_inspect 2 "cut_data.ckpt" -- $BIN inspect "$TMP/cut_data.ckpt"
: > "$TMP/empty.ckpt"
expect_str ckpt_empty 2 "empty.ckpt" -- $BIN eval --ckpt "$TMP/empty.ckpt"
expect_str ckpt_is_a_folder 2 "$TMP/run" -- $BIN --resume "$TMP/run" --quiet
expect_str resume_other_model 2 "--resume continues the network saved in" -- \
    $BIN --resume "$CK" --set model=models/fpn_r18.cfg --quiet
expect_str resume_other_classes 2 "data.classes" -- $BIN --resume "$CK" --set data.classes=3 --quiet
expect_str resume_other_optimizer 2 "checkpoint optimizer is 'adamw', the config asks for 'sgd'" -- \
    $BIN --resume "$CK" --set train.optimizer=sgd --quiet
left=$(ls -A "$TMP/run" | grep -v -x -e last.ckpt -e best.ckpt -e metrics.jsonl -e config.cfg -e train.log \
       -e 'events\.out\.tfevents\..*')
[ -z "$left" ] && pass ckpt_no_temp_files_left || fail ckpt_no_temp_files_left "$left"

# ---- bad data: exit 2 naming the file, or skipped with a warning ----
bad_set() { # $1 = folder: a copy of the synthetic set
    rm -rf "$1"; mkdir -p "$1"; cp -r "$DATA/Train" "$DATA/Test" "$1/"
}
img=$(ls "$DATA/Train/Image" | sed -n 2p); stem=${img%.*}
bad_set "$TMP/nomask"; rm "$TMP/nomask/Train/GT_Object/$stem.png"
bad_set "$TMP/truncjpg"; f="$TMP/truncjpg/Train/Image/$img"; head -c $(( $(stat -c %s "$f") / 2 )) "$f" > "$f.x" && mv "$f.x" "$f"
bad_set "$TMP/truncpng"; f="$TMP/truncpng/Train/GT_Object/$stem.png"; head -c $(( $(stat -c %s "$f") / 2 )) "$f" > "$f.x" && mv "$f.x" "$f"
for kind in nomask truncjpg truncpng; do
    # shellcheck disable=SC2086
    expect_str bad_data_$kind 2 "$stem" -- $BIN --conf conf/demo.cfg $COMMON --set data.root="$TMP/$kind" \
        --set train.epochs=1 --out "$TMP/run_$kind"
    # shellcheck disable=SC2086
    out=$($BIN --conf conf/demo.cfg $COMMON --set data.root="$TMP/$kind" --set train.epochs=1 \
          --set data.skip_bad=true --out "$TMP/skip_$kind" 2>&1); rc=$?
    if [ $rc = 0 ] && echo "$out" | grep -qi "warn.*$stem"; then pass bad_data_${kind}_skipped
    else fail bad_data_${kind}_skipped "exit $rc, no warning naming $stem: $(echo "$out" | tail -2)"; fi
done
expect_str bad_data_missing_split 2 "$TMP/nomask/Nope" -- $BIN --conf conf/demo.cfg $COMMON \
    --set data.root="$TMP/nomask" --set data.train_split=Nope --out "$TMP/run_split"

# ---- bad --set keys and values ----
expect_str set_unknown_section_key 2 "unknown key 'lr'" -- $BIN --conf conf/demo.cfg --set data.lr=1
expect_str set_bad_float 2 "train.lr=fast" -- $BIN --conf conf/demo.cfg --set train.lr=fast
expect_str set_out_of_range 2 "'accum_steps'" -- $BIN --conf conf/demo.cfg --set train.accum_steps=0
expect_str set_bad_choice 2 "'optimizer': 'adam' is not one of" -- $BIN --conf conf/demo.cfg --set train.optimizer=adam
expect_str set_bad_schedule 2 "'schedule'" -- $BIN --conf conf/demo.cfg --set train.schedule=linear
expect_str set_no_equals 2 "expected key=value" -- $BIN --conf conf/demo.cfg --set train.lr
expect_str set_bad_bool 2 "boolean" -- $BIN --conf conf/demo.cfg --set data.skip_bad=maybe
expect_str set_group_as_value 2 "group or list" -- $BIN --conf conf/demo.cfg --set train=3
exit 0
