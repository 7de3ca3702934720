#!/bin/sh
# run.sh - runs libFuzzer targets one after the other (`make fuzz`).
#
#   FUZZ_SECONDS=60 sh tests/fuzz/run.sh build/fuzz request peer ...
#
# Each target BUILD/targets/NAME runs for FUZZ_SECONDS over the seeds of
# tests/fuzz/corpus/NAME (read only) and its working corpus
# BUILD/corpus/NAME (new inputs go there and are kept for the next run),
# with ASan's leak check, a 2 GiB RSS limit and a 25 s limit per input.
# A finding (crash, leak, timeout, out of memory, a harness check) is saved
# in BUILD/findings/NAME/ and stops that target; the others still run.
# Per target it prints the executions per second, the corpus size and the
# coverage libFuzzer reached; the full output is in BUILD/logs/NAME.log.
# The exit status is 1 when any target had a finding or did not run.
set -u

if [ $# -lt 2 ]; then
    echo "usage: FUZZ_SECONDS=N sh tests/fuzz/run.sh BUILD_DIR TARGET..." >&2
    exit 2
fi
cd "$(dirname "$0")/../.." || exit 1
build=$1
shift
secs=${FUZZ_SECONDS:-60}
case $secs in
'' | *[!0-9]*)
    echo "run.sh: FUZZ_SECONDS must be a number of seconds" >&2
    exit 2
    ;;
esac

failed=""
for t in "$@"; do
    bin=$build/targets/$t
    seeds=tests/fuzz/corpus/$t
    work=$build/corpus/$t
    found=$build/findings/$t
    log=$build/logs/$t.log
    echo "=== fuzz $t ($secs s)"
    if [ ! -x "$bin" ] || [ ! -d "$seeds" ]; then
        echo "--- FAIL fuzz $t: $bin or $seeds is missing"
        failed="$failed $t"
        continue
    fi
    mkdir -p "$work" "$found" "$build/logs"
    before=$(ls "$found" | wc -l)
    dict=""
    [ -f "tests/fuzz/$t.dict" ] && dict="-dict=tests/fuzz/$t.dict"
    # shellcheck disable=SC2086 # $dict is one word or none
    "$bin" -max_total_time="$secs" -rss_limit_mb=2048 -timeout=25 \
        -detect_leaks=1 -print_final_stats=1 -artifact_prefix="$found/" \
        $dict "$work" "$seeds" >"$log" 2>&1
    rc=$?
    after=$(ls "$found" | wc -l)
    execs=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    status=$(grep -E '^#[0-9]+' "$log" | tail -n 1)
    cov=$(echo "$status" | sed -n 's/.*cov: \([0-9]*\).*/\1/p')
    corp=$(echo "$status" | sed -n 's/.*corp: \([0-9]*\/[0-9a-zA-Z]*\).*/\1/p')
    files=$(ls "$work" | wc -l)
    echo "    ${runs:-?} runs, ${execs:-?} exec/s, corpus ${corp:-?}" \
        "(inputs/bytes; $files kept in $work), coverage ${cov:-?}"
    if [ $rc -eq 0 ] && [ "$after" -eq "$before" ]; then
        echo "--- PASS fuzz $t"
    else
        echo "--- FAIL fuzz $t (exit $rc): the report, from $log:"
        grep -E 'ERROR|finding|SUMMARY|Test unit written|deadly signal' "$log" |
            head -n 20 | sed 's/^/    /'
        echo "    reproduce: build/fuzz-replay/$t FILE (make), or $bin FILE"
        failed="$failed $t"
    fi
done
echo
if [ -n "$failed" ]; then
    echo "fuzz: findings or failures in:$failed"
    exit 1
fi
echo "fuzz: $# target(s), no finding"
