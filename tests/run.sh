#!/usr/bin/env bash
# Runs every C test binary (cmocka) and every shell test (tests/*.sh), then prints one
# line "N passed, N failed, N skipped" and exits non-zero on any failure.
# C tests: cmocka summary lines. Shell tests: lines "PASS name", "FAIL name", "SKIP name".
# CAMO_RUN_ONLY="tests/x.sh ..." runs just those shell tests (make test-matrix).
set -u
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
export CAMOTRAIN=${CAMOTRAIN:-$BUILD/camotrain}
export CAMO_TEST_TMP=$(mktemp -d /tmp/camotest.XXXXXX)
trap 'rm -rf "$CAMO_TEST_TMP"' EXIT
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
# the tests share 2 cores in CI: one OpenBLAS thread each
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
passed=0 failed=0 skipped=0
failures=""
log=$CAMO_TEST_TMP/log

count_cmocka() { # $1 = log file, $2 = test name
    local p f s
    p=$(sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p' "$1" | awk '{s+=$1} END {print s+0}')
    f=$(sed -n 's/^\[  FAILED  \] \([0-9]*\) test.*/\1/p' "$1" | awk '{s+=$1} END {print s+0}')
    s=$(sed -n 's/^\[  SKIPPED \] \([0-9]*\) test.*/\1/p' "$1" | awk '{s+=$1} END {print s+0}')
    passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
    [ "$f" -gt 0 ] && failures="$failures $2"
    return 0
}

C_TESTS="$BUILD/tests/test_*" SH_TESTS="tests/test_*.sh"
if [ -n "${CAMO_RUN_ONLY:-}" ]; then C_TESTS="" SH_TESTS=$CAMO_RUN_ONLY; fi

for t in $C_TESTS; do
    [ -x "$t" ] || continue
    name=$(basename "$t")
    start=$(date +%s)
    "$t" > "$log" 2>&1
    rc=$?
    cat "$log"
    before=$failed
    count_cmocka "$log" "$name"
    if [ $rc -ne 0 ] && [ $failed -eq $before ]; then  # crashed or aborted outside cmocka
        echo "FAIL $name (exit $rc)"; failed=$((failed + 1)); failures="$failures $name"
    fi
    echo "--- $name: $(( $(date +%s) - start )) s"
done

for t in $SH_TESTS; do
    [ -f "$t" ] || continue
    name=$(basename "$t")
    start=$(date +%s)
    bash "$t" > "$log" 2>&1
    rc=$?
    cat "$log"
    p=$(grep -c '^PASS ' "$log"); f=$(grep -c '^FAIL ' "$log"); s=$(grep -c '^SKIP ' "$log")
    passed=$((passed + p)); skipped=$((skipped + s)); failed=$((failed + f))
    if [ "$f" -gt 0 ]; then failures="$failures $name"
    elif [ $rc -ne 0 ]; then echo "FAIL $name (exit $rc)"; failed=$((failed + 1)); failures="$failures $name"
    fi
    echo "--- $name: $(( $(date +%s) - start )) s"
done

[ -n "$failures" ] && echo "failed:$failures"
echo "$passed passed, $failed failed, $skipped skipped"
[ $failed -eq 0 ] && [ $((passed + skipped)) -gt 0 ]
