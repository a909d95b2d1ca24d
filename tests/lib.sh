# tests/lib.sh: the preamble of every tests/test_*.sh, sourced (not run: tests/run.sh runs
# only tests/test_*.sh) as
#     . "$(dirname "$0")/lib.sh" NAME
# Goes to the repository root; sets BIN (the binary: $CAMOTRAIN, else ./camotrain) and TMP
# (an empty scratch folder NAME under $CAMO_TEST_TMP, else under a new temporary folder);
# one OpenMP and one OpenBLAS thread; defines pass, fail, skip, expect, expect_str,
# hashes and meta (all but hashes and meta print the PASS/FAIL/SKIP lines tests/run.sh counts).
set -u
cd "$(dirname "$0")/.."
BIN=${CAMOTRAIN:-./camotrain}
TMP=${CAMO_TEST_TMP:-$(mktemp -d)}/$1
rm -rf "$TMP"; mkdir -p "$TMP"
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1

pass() { echo "PASS $1"; }
fail() { echo "FAIL $1: $2"; }
skip() { echo "SKIP $1: $2"; }

# hashes CKPT: name and hash of every tensor (weights, BN statistics, EMA, optimizer slots)
hashes() { $BIN inspect --hash "$1" | awk '$2 ~ /^(F32|I64)$/ && NF >= 4 {print $1, $NF}'; }

# meta KEY CKPT: a metadata value of a checkpoint, whitespace removed
meta() { $BIN inspect "$2" --meta "$1" 2>/dev/null | tr -d '[:space:]'; }

# smooth_net SRC DST: the network file SRC with max pooling made average pooling and every
# ReLU SiLU (tests/test_util.h tu_write_smooth_net says why: equivalence and parity checks of
# whole networks need a trajectory without kinks to hold under any summation order)
smooth_net() {
    sed -e 's/"maxpool"/"avgpool"/g' -e 's/"relu"/"silu"/g' \
        -e 's/"resblock";/"resblock"; act = "silu";/g' \
        -e 's/"bottleneck";/"bottleneck"; act = "silu";/g' "$1" > "$2"
}

# expect NAME RC PATTERN -- command...: exit code RC and PATTERN (a grep regex) in stdout+stderr
expect() { expect_grep -q "$@"; }
# expect_str NAME RC STRING -- command...: the same with a fixed STRING
expect_str() { expect_grep -qF "$@"; }

# expect_grep GREP_FLAGS NAME RC PATTERN -- command...: what expect and expect_str share
expect_grep() {
    local flags=$1 name=$2 want=$3 pat=$4; shift 5
    local out rc
    out=$("$@" 2>&1); rc=$?
    if [ "$rc" != "$want" ]; then fail "$name" "exit $rc, expected $want; output: $(echo "$out" | tail -3)"
    elif ! echo "$out" | grep "$flags" -- "$pat"; then fail "$name" "output lacks '$pat': $(echo "$out" | tail -3)"
    else pass "$name"; fi
}
