#!/usr/bin/env bash
# The source tree's include rule (tools/check_layers.sh, README "Layout"): the tree as it is
# passes, and copies of it with one planted upward, sideways or private include fail,
# naming the file and line. PASS/FAIL for tests/run.sh.
. "$(dirname "$0")/lib.sh" layers

expect layers_tree 0 "every include goes down" -- tools/check_layers.sh .

# plant: a copy of src/ and cuda/ with one line added to one file; must fail naming it
plant() { # NAME FILE LINE EXPECTED-MESSAGE
    local copy=$TMP/tree_$1
    mkdir -p "$copy" && cp -r src cuda "$copy"/
    printf '%s\n' "$3" >> "$copy/$2"
    local out rc
    out=$(tools/check_layers.sh "$copy" 2>&1); rc=$?
    if [ $rc = 0 ]; then fail "layers_$1" "a planted '$3' in $2 passed"
    elif ! grep -qF "$2:" <<< "$out" || ! grep -qF "$4" <<< "$out"; then
        fail "layers_$1" "the error does not name $2 and '$4': $out"
    else pass "layers_$1"; fi
}
plant upward   src/nn/net.c             '#include "train/config.h"' 'train/ is not below nn/'
plant sideways src/data/loader.c        '#include "nn/net.h"'       'nn/ is not below data/'
plant cuda_up  cuda/backend_cuda.cu     '#include "parallel/ddp.h"' 'parallel/ is not below cuda/'
plant private  src/train/evaluate.c     '#include "backend/cpu/cpu_internal.h"' 'private to backend/'
plant core_up  src/core/common.c        '#include "backend/backend.h"' 'backend/ is not below core/'
