#!/usr/bin/env bash
# Every data set layout end to end through the binary: a small tree of real JPEG/PNG files in
# the layout (COD10K-v3 with its unmasked -NonCAM-/-BG- pictures, CAMO, CARLA lane, ADE20K,
# images/ + masks/ folders, seed 003's train/ + valid/ with metadata.json), detected by
# data.format = auto, trained two steps and evaluated; the multi-class path (ce loss, mIoU
# table and JSON, predict with class-index PNGs and --overlay); eval records holding only
# the metrics computed; eval --pred against each layout's masks; bad labels, sizes and
# metadata named in the error; data.cache = decoded.
# Prints PASS/FAIL/SKIP lines for tests/run.sh.
. "$(dirname "$0")/lib.sh" datasets

# A binary and a 4-class synthetic set (COD10K layout) to rearrange into the others.
$BIN synth --out "$TMP/bin" --train 4 --test 2 --size 40 --seed 1 > /dev/null &&
$BIN synth --out "$TMP/k4" --train 4 --test 2 --size 40 --seed 2 --classes 4 > /dev/null &&
$BIN synth --out "$TMP/k3" --train 4 --test 2 --size 40 --seed 3 --classes 3 > /dev/null ||
    { fail synth "camotrain synth failed"; exit 0; }

# copy_set SRC SPLIT IMGDIR MASKDIR [IMGPREFIX] [MASKSUFFIX]: SRC/SPLIT pairs into a layout
copy_set() {
    local src=$1 split=$2 idir=$3 mdir=$4 pre=${5:-} suf=${6:-} f b
    mkdir -p "$idir" "$mdir"
    for f in "$src/$split/Image/"*.jpg; do
        b=$(basename "$f" .jpg)
        cp "$f" "$idir/$pre$b.jpg"
        cp "$src/$split/GT_Object/$b.png" "$mdir/$pre$b$suf.png"
    done
}

# check_keys NAME JSON_LINE MUST MUST_NOT: the line's keys include every one of MUST and
# none of MUST_NOT (space-separated lists)
check_keys() {
    local name=$1 line=$2 k miss="" extra="" keys
    keys=" $(echo "$line" | grep -o '"[A-Za-z_]*":' | tr -d '":' | tr '\n' ' ')"
    for k in $3; do case "$keys" in *" $k "*) ;; *) miss="$miss $k" ;; esac; done
    for k in $4; do case "$keys" in *" $k "*) extra="$extra $k" ;; esac; done
    if [ -z "$line" ]; then fail "$name" "no JSON line"
    elif [ -n "$miss$extra" ]; then fail "$name" "lacks:${miss:- -}; has:${extra:- -}; in $line"
    else pass "$name"; fi
}
BIN_KEYS="iou dice mae"
CLS_KEYS="miou pixel_acc"

# train NAME ROOT PATTERN [--set ...]: two steps (one epoch) + eval through the binary
train() {
    local name=$1 root=$2 pat=$3; shift 3
    local out rc
    out=$($BIN --conf conf/demo.cfg --set data.root="$root" --set data.img_size=32 \
        --set data.workers=1 --set train.batch=2 --set train.max_steps=2 --set eval.every=1 \
        --set train.threads=1 --set out="$TMP/run_$name" "$@" 2>&1); rc=$?
    if [ $rc -ne 0 ]; then fail "$name" "exit $rc: $(echo "$out" | tail -3)"
    elif ! echo "$out" | grep -q -- "$pat"; then fail "$name" "output lacks '$pat': $(echo "$out" | tail -4)"
    elif ! echo "$out" | grep -q "^eval  epoch 1"; then fail "$name" "no eval line: $(echo "$out" | tail -3)"
    else pass "$name"; fi
}

# ---- COD10K-v3: CAM pairs used, NonCAM/BG pictures without masks skipped and counted ----
R=$TMP/COD10K-v3
copy_set "$TMP/bin" Train "$R/Train/Image" "$R/Train/GT_Object" COD10K-CAM-1-Aquatic-1-BatFish-
copy_set "$TMP/bin" Test "$R/Test/Image" "$R/Test/GT_Object" COD10K-CAM-2-Terrestrial-
cp "$TMP/bin/Train/Image/synth_00001.jpg" "$R/Train/Image/COD10K-NonCAM-5-Background-1-Sky-1.jpg"
cp "$TMP/bin/Train/Image/synth_00002.jpg" "$R/Train/Image/COD10K-BG-1-Sky-2.jpg"
cp "$TMP/bin/Train/Image/synth_00003.jpg" "$R/Train/Image/COD10K-NonCAM-5-Background-2-Sea-3.jpg"
train layout_cod10k "$R" "detected the cod10k layout"
out=$($BIN --conf conf/demo.cfg --set data.root="$R" --set train.max_steps=1 --set eval.every=0 \
      --set data.img_size=32 --set train.batch=2 --set out="$TMP/run_cod2" 2>&1)
if echo "$out" | grep -q "4 camouflaged image/mask pairs used; 3 images without a mask" &&
   ! echo "$out" | grep -qi "error"; then pass cod10k_noncam_count
else fail cod10k_noncam_count "$(echo "$out" | grep -i "mask\|error" | head -3)"; fi

# ---- CAMO: Images/Train, Images/Test, one GT folder ----
R=$TMP/CAMO
copy_set "$TMP/bin" Train "$R/Images/Train" "$R/GT" camourflage_1
copy_set "$TMP/bin" Test "$R/Images/Test" "$R/GT" camourflage_2
train layout_camo "$R" "detected the camo layout"

# ---- images/ + masks/ folders ----
R=$TMP/folders
copy_set "$TMP/bin" Train "$R/Train/images" "$R/Train/masks"
copy_set "$TMP/bin" Test "$R/Test/images" "$R/Test/masks"
train layout_folders "$R" "detected the folders layout"

# ---- CARLA lane: train/ + train_label/ (NAME_label.png), val/ + val_label/, 3 classes ----
R=$TMP/carla
copy_set "$TMP/k3" Train "$R/train" "$R/train_label" Town04_Clear_Noon_frame_ _label
copy_set "$TMP/k3" Test "$R/val" "$R/val_label" Town04_Clear_Noon_frame_ _label
train layout_carla "$R" "detected the carla layout" --set data.classes=3 --set train.loss=ce

# ---- ADE20K: images/training + annotations/training, 0 = ignore, values 1..3 = classes ----
R=$TMP/ADEChallengeData2016
copy_set "$TMP/k4" Train "$R/images/training" "$R/annotations/training" ADE_train_
copy_set "$TMP/k4" Test "$R/images/validation" "$R/annotations/validation" ADE_val_
train layout_ade20k "$R" "value 0 is ignored" --set data.classes=3 --set train.loss=ce

# ---- multi-class eval and predict on the ADE20K run ----
CK=$TMP/run_layout_ade20k/last.ckpt
if [ ! -f "$CK" ]; then fail multiclass_eval "no checkpoint from layout_ade20k"
else
    out=$($BIN eval --ckpt "$CK" 2>&1)
    if echo "$out" | grep -q "^mIoU" && echo "$out" | grep -q "mean accuracy" &&
       echo "$out" | grep -q "class 2 "; then pass multiclass_eval_table
    else fail multiclass_eval_table "$(echo "$out" | tail -4)"; fi
    js=$($BIN eval --ckpt "$CK" --json 2>/dev/null)
    if echo "$js" | grep -q '"miou": [0-9.]*, "pixel_acc": [0-9.]*, "mean_acc": [0-9.]*, "class_iou": \[[^],]*, [^],]*, [^],]*\]'
    then pass multiclass_eval_json; else fail multiclass_eval_json "$js"; fi
    # only what was computed: no binary keys (a 0 there would read as a score)
    check_keys multiclass_eval_json_keys "$js" "$CLS_KEYS mean_acc class_iou loss" \
        "$BIN_KEYS sm em_mean wfm fm_mean"
    out=$($BIN predict --ckpt "$CK" --input "$R/images/validation" --output "$TMP/pred_ade" --overlay 2>&1)
    f=$TMP/pred_ade/ADE_val_synth_00001.png
    o=$TMP/pred_ade/overlay/ADE_val_synth_00001.png
    # PNG header bytes 24, 25: bit depth and colour type (0 grey, 2 RGB)
    if [ -f "$f" ] && [ -f "$o" ] && [ "$(od -An -tu1 -j24 -N2 "$f" | tr -s ' ')" = " 8 0" ] &&
       [ "$(od -An -tu1 -j24 -N2 "$o" | tr -s ' ')" = " 8 2" ]; then
        pass multiclass_predict_overlay
    else fail multiclass_predict_overlay "$(echo "$out" | tail -2); $(ls "$TMP/pred_ade" 2>&1)"; fi
    # saved class-index PNGs scored against the annotations: the checkpoint's own numbers
    rm -rf "$TMP/pred_ade/overlay"
    js2=$($BIN eval --pred "$TMP/pred_ade" --gt "$R/annotations/validation" --classes 3 \
          --format ade20k --json 2>&1)
    m1=$(echo "$js" | grep -o '"miou": [0-9.]*'); m2=$(echo "$js2" | grep -o '"miou": [0-9.]*')
    if [ -n "$m1" ] && [ "$m1" = "$m2" ]; then pass multiclass_eval_pred
    else fail multiclass_eval_pred "checkpoint $m1 vs saved PNGs: $js2"; fi
    out=$($BIN eval --pred "$TMP/pred_ade" --gt "$R/annotations/validation" --classes 2 2>&1); rc=$?
    if [ $rc = 2 ] && echo "$out" | grep -q "ADE_val_synth_0000[12].png"; then pass multiclass_eval_pred_bad
    else fail multiclass_eval_pred_bad "exit $rc: $out"; fi
fi

# ---- binary eval: every field metric, table and JSON ----
CK=$TMP/run_layout_cod10k/last.ckpt
js=$($BIN eval --ckpt "$CK" --json 2>/dev/null)
ok=1
for k in sm em_mean em_max wfm fm_mean fm_max mae iou dice; do
    echo "$js" | grep -q "\"$k\": [0-9]" || ok=0
done
[ $ok = 1 ] && pass binary_eval_json || fail binary_eval_json "$js"
check_keys binary_eval_json_keys "$js" "$BIN_KEYS sm loss" "$CLS_KEYS mean_acc class_iou"
# metrics.jsonl's evaluation records: binary (COD10K) and 3-class (CARLA) runs
check_keys binary_jsonl_eval_keys "$(grep '"type":"eval"' "$TMP/run_layout_cod10k/metrics.jsonl" | head -1)" \
    "$BIN_KEYS loss images" "$CLS_KEYS"
check_keys multiclass_jsonl_eval_keys "$(grep '"type":"eval"' "$TMP/run_layout_carla/metrics.jsonl" | head -1)" \
    "$CLS_KEYS loss images" "$BIN_KEYS"
# images are scored on OpenMP threads: the numbers must not depend on how many
j1=$(OMP_NUM_THREADS=1 $BIN eval --ckpt "$CK" --split Train --json 2>/dev/null | sed 's/"seconds": [0-9.]*, //')
j3=$(OMP_NUM_THREADS=3 $BIN eval --ckpt "$CK" --split Train --json 2>/dev/null | sed 's/"seconds": [0-9.]*, //')
if [ -n "$j1" ] && [ "$j1" = "$j3" ] && echo "$j1" | grep -q '"images": 4'; then pass eval_threads_identical
else fail eval_threads_identical "1 thread: $j1; 3 threads: $j3"; fi

# ---- eval --pred on predict's output (named by image stem) for layouts whose masks are named
# or kept otherwise: every GT pairs with its own image's prediction, so the numbers are the
# checkpoint's own (a mispairing would change them) ----
# json_val KEY JSON: the number after "KEY": in JSON
json_val() { echo "$2" | grep -o "\"$1\": [0-9.]*" | head -1; }
# pred_eval NAME WANT_KEY WANT -- eval args...: exit 0 and KEY's value in the JSON equal to WANT
pred_eval() {
    local name=$1 key=$2 want=$3 out rc; shift 4
    out=$($BIN eval --json "$@" 2>&1); rc=$?
    if [ $rc != 0 ]; then fail "$name" "exit $rc: $(echo "$out" | tail -2)"
    elif [ -z "$want" ] || [ "$(json_val "$key" "$out")" != "$want" ]; then
        fail "$name" "want $want, got: $(echo "$out" | tail -1)"
    else pass "$name"; fi
}
R=$TMP/carla  # val/NAME.png, val_label/NAME_label.png
CK=$TMP/run_layout_carla/last.ckpt
$BIN predict --ckpt "$CK" --input "$R/val" --output "$TMP/pred_carla" > /dev/null 2>&1
want=$(json_val miou "$($BIN eval --ckpt "$CK" --json 2>/dev/null)")
pred_eval pred_carla_label_suffix miou "$want" -- --pred "$TMP/pred_carla" --gt "$R/val_label" --classes 3
pred_eval pred_carla_root miou "$want" -- --pred "$TMP/pred_carla" --gt "$R" --classes 3
pred_eval pred_carla_root_split miou "$want" -- --pred "$TMP/pred_carla" --gt "$R" --split val --format carla --classes 3
# NAME.png next to NAME_label.png: two masks for one prediction, named
cp -r "$R/val_label" "$TMP/carla_twice"
m=$(ls "$TMP/carla_twice" | head -1)
cp "$TMP/carla_twice/$m" "$TMP/carla_twice/${m%_label.png}.png"
expect pred_carla_two_masks 2 "ground truths .*/${m%_label.png}.png and .*/$m both pair with" -- \
    $BIN eval --pred "$TMP/pred_carla" --gt "$TMP/carla_twice" --classes 3
R=$TMP/ADEChallengeData2016  # annotations are 0 = other, 1..3: a root implies that mapping
want=$(json_val miou "$($BIN eval --ckpt "$TMP/run_layout_ade20k/last.ckpt" --json 2>/dev/null)")
pred_eval pred_ade20k_root miou "$want" -- --pred "$TMP/pred_ade" --gt "$R" --classes 3
R=$TMP/CAMO  # GT/ holds both splits' masks: only the root says which are Test's
CK=$TMP/run_layout_camo/last.ckpt
$BIN predict --ckpt "$CK" --input "$R/Images/Test" --output "$TMP/pred_camo" > /dev/null 2>&1
n=$(ls "$R/Images/Test" | wc -l)
pred_eval pred_camo_root n_images "\"n_images\": $n" -- --pred "$TMP/pred_camo" --gt "$R"
expect pred_camo_gt_folder_hint 2 "no prediction for ground truth .*and 3 more; .*data-set root" -- \
    $BIN eval --pred "$TMP/pred_camo" --gt "$R/GT"

# ---- bad data: a class value >= classes, an image/mask size mismatch ----
R=$TMP/badlabel
copy_set "$TMP/k4" Train "$R/train" "$R/train_label"
copy_set "$TMP/k4" Test "$R/val" "$R/val_label"
out=$($BIN --conf conf/demo.cfg --set data.root="$R" --set data.classes=3 --set train.loss=ce \
      --set train.max_steps=1 --set data.img_size=32 --set train.batch=4 --set eval.every=0 \
      --set out="$TMP/run_bad" 2>&1); rc=$?
if [ $rc = 2 ] && echo "$out" | grep -q "mask '.*train_label/synth_0000[0-9].png'.*value 3"; then
    pass bad_class_value
else fail bad_class_value "exit $rc: $(echo "$out" | tail -2)"; fi
R=$TMP/badsize
copy_set "$TMP/bin" Train "$R/Train/images" "$R/Train/masks"
$BIN synth --out "$TMP/small" --train 1 --test 0 --size 24 > /dev/null
cp "$TMP/small/Train/GT_Object/synth_00001.png" "$R/Train/masks/synth_00002.png"
out=$($BIN --conf conf/demo.cfg --set data.root="$R" --set train.max_steps=2 --set eval.every=0 \
      --set data.img_size=32 --set train.batch=4 --set out="$TMP/run_bad2" 2>&1); rc=$?
if [ $rc = 2 ] && echo "$out" | grep -q "size mismatch: image '.*images/synth_00002.jpg' is 40x40 but its mask '.*masks/synth_00002.png' is 24x24"; then
    pass bad_size_mismatch
else fail bad_size_mismatch "exit $rc: $(echo "$out" | tail -2)"; fi

# ---- seed 003 (SegFormer): train/ + valid/, each images/ + masks/, optional metadata.json ----
R=$TMP/seed003
copy_set "$TMP/bin" Train "$R/train/images" "$R/train/masks"
copy_set "$TMP/bin" Test "$R/valid/images" "$R/valid/masks"
train seed003_valid "$R" "(split 'valid'): detected the folders layout"
# val and validation are the validation split too (eval opens the config's val_split "Test")
CK=$TMP/run_seed003_valid/last.ckpt
for v in val validation; do
    cp -r "$R" "$TMP/seed003_$v" && mv "$TMP/seed003_$v/valid" "$TMP/seed003_$v/$v"
    expect "seed003_$v" 0 "(split '$v'): detected the folders layout" -- \
        $BIN eval --ckpt "$CK" --data "$TMP/seed003_$v" --set data.workers=1
done
# metadata.json lists a subset: bare names (the split's folders), paths under ROOT, and a mask
# named otherwise (pairing by stem would not find it); "validation" stands for valid/
M=$TMP/seed003_meta
cp -r "$R" "$M"
mv "$M/train/masks/synth_00003.png" "$M/train/masks/other.png"
cat > "$M/metadata.json" <<'JSON'
{"classes": ["background", "object"],
 "train": ["synth_00001.jpg", "train/images/synth_00002.jpg",
           {"image": "synth_00003.jpg", "mask": "train/masks/other.png"}],
 "validation": [{"image": "valid/images/synth_00002.jpg"}]}
JSON
train seed003_metadata "$M" "data: 3 training images (.*), 1 validation images"
# the other form: a list of {"image", "mask", "split"}
cat > "$M/metadata.json" <<'JSON'
[{"image": "train/images/synth_00004.jpg", "mask": "train/masks/synth_00004.png", "split": "train"},
 {"image": "valid/images/synth_00001.jpg", "mask": "valid/masks/synth_00001.png", "split": "valid"},
 {"image": "valid/images/synth_00002.jpg", "mask": "valid/masks/synth_00002.png", "split": "valid"}]
JSON
train seed003_metadata_list "$M" "data: 1 training images (.*), 2 validation images"
# bad metadata.json: exit 2 naming the file and the line or the entry
meta_bad() {
    local name=$1 pat=$2; shift 2
    printf '%s\n' "$@" > "$M/metadata.json"
    expect "$name" 2 "$pat" -- $BIN --conf conf/demo.cfg --set data.root="$M" \
        --set train.max_steps=1 --set data.img_size=32 --set out="$TMP/run_meta_bad"
}
meta_bad seed003_metadata_bad_json "seed003_meta/metadata.json:3: not valid JSON" \
    '{"train": ["synth_00001.jpg",' '  "synth_00002.jpg"],' '  "valid": ["synth_00001.jpg",]}'
meta_bad seed003_metadata_missing_file \
    "metadata.json: \"train\"\[1\]: image 'nope.jpg' not found (.*/train/images/nope.jpg)" \
    '{"train": ["synth_00001.jpg", "nope.jpg"]}'
meta_bad seed003_metadata_missing_mask \
    "metadata.json: \"train\"\[0\]: mask 'train/masks/x.png' not found" \
    '{"train": [{"image": "synth_00001.jpg", "mask": "train/masks/x.png"}]}'
meta_bad seed003_metadata_bad_entry "metadata.json: \"train\"\[2\]: expected an image path" \
    '{"train": ["synth_00001.jpg", "synth_00002.jpg", 42]}'
meta_bad seed003_metadata_no_split "metadata.json: entry 1: expected {\"image\"" \
    '[{"image": "synth_00001.jpg", "split": "train"}, {"image": "synth_00002.jpg"}]'
meta_bad seed003_metadata_not_list 'metadata.json: "train": expected a list of files' \
    '{"train": "train.txt"}'
printf '{"train": ["synth_00001.jpg", "nope.jpg", "synth_00002.jpg"]}\n' > "$M/metadata.json"
train seed003_metadata_skip_bad "$M" "data: 2 training images" --set data.skip_bad=true

# ---- data.cache = decoded trains and says so ----
train cache_decoded "$TMP/folders" "caching decoded" --set data.cache=decoded
