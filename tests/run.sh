#!/bin/sh
# run.sh - runs every test of kv, in order, and counts the steps.
#
#   B=build SAN=0 sh tests/run.sh        (make test; everything already built)
#
# Steps, each bounded by `timeout 600`:
#   1. every $B/tests/unit_*                       (Check suites)
#   2. every other executable $B/tests/*           (cluster tests; env KVNODE,
#      except libkv_example                        KVCLIENT name the binaries;
#                                                  chaos: 30 s of register)
#   2b. $B/tests/sim --seeds 500                   (the simulator)
#   2c. $B/tests/chaos --workload bank             (20 s; CHAOS_BANK_S=N)
#       --compact-entries 100                      (snapshots under faults)
#   2d. $B/tests/chaos --workload incr             (20 s; CHAOS_INCR_S=N)
#       --compact-entries 100
#   2e. $B/tests/chaos --session-ttl 5             (20 s; CHAOS_SESSIONS_S=N)
#   2f. every $B/fuzz-replay/* on tests/fuzz/corpus (each fuzz target
#       replays every seed; make fuzz runs them under libFuzzer)
#   3. tests/cluster/cli.sh                        (kvclient end to end)
#   4. $B/tests/libkv_example embedded:TMPDIR      (the documented example)
# A failing step does not stop the run. The last line is exactly
# "N passed, M failed"; the exit status is 1 when any step failed.
set -u

B=${B:-build}
SAN=${SAN:-0}
STEP_TIMEOUT=600

cd "$(dirname "$0")/.." || exit 1
if [ ! -d "$B" ]; then
    echo "run.sh: no build directory $B (run make first)" >&2
    echo "0 passed, 1 failed"
    exit 1
fi
B=$(cd "$B" && pwd)

if [ "$SAN" = 1 ]; then
    # Check's fork mode hides sanitizer reports of the child; run in-process.
    CK_FORK=no
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
    UBSAN_OPTIONS=print_stacktrace=1
    export CK_FORK ASAN_OPTIONS UBSAN_OPTIONS
fi

passed=0
failed=0
failures=""

now_ms() {
    echo $(($(date +%s%N) / 1000000))
}

# run_step NAME CMD ARGS...: runs one step under timeout, records the result.
run_step() {
    name=$1
    shift
    echo "=== $name"
    t0=$(now_ms)
    timeout "$STEP_TIMEOUT" "$@"
    rc=$?
    t1=$(now_ms)
    ms=$((t1 - t0))
    secs=$(printf '%d.%03d' $((ms / 1000)) $((ms % 1000)))
    if [ $rc -eq 0 ]; then
        echo "--- PASS $name (${secs} s)"
        passed=$((passed + 1))
    else
        if [ $rc -eq 124 ]; then
            why="timed out after ${STEP_TIMEOUT} s"
        elif [ $rc -gt 128 ]; then
            why="killed by signal $((rc - 128))"
        else
            why="exit $rc"
        fi
        echo "--- FAIL $name ($why, ${secs} s)"
        failed=$((failed + 1))
        failures="$failures $name"
    fi
    echo
}

# 1. unit suites
for t in "$B"/tests/unit_*; do
    [ -f "$t" ] || continue
    run_step "${t##*/}" "$t"
done

# 2. cluster tests: real kvnode processes on 127.0.0.1
for t in "$B"/tests/*; do
    if [ ! -f "$t" ] || [ ! -x "$t" ]; then continue; fi
    case ${t##*/} in unit_* | libkv_example | sim | *.o | *.d) continue ;; esac
    run_step "${t##*/}" env KVNODE="$B/kvnode" KVCLIENT="$B/kvclient" "$t"
done

# 2b. the deterministic simulation: SIM_SEEDS seeds (make sim runs more);
# fewer under the sanitizers, which slow it several times over
if [ -x "$B/tests/sim" ]; then
    if [ "${SAN:-0}" = 1 ]; then seeds=${SIM_SEEDS:-100}; else seeds=${SIM_SEEDS:-500}; fi
    run_step sim "$B/tests/sim" --seeds "$seeds"
fi

# 2c. the chaos test's bank workload (transactions under kill -9 and
# SIGSTOP; step 2 ran its register workload for 30 s), with logs compacted
# every 100 entries: killed nodes catch up through snapshots that carry
# transactions in flight
if [ -x "$B/tests/chaos" ]; then
    run_step chaos-bank env KVNODE="$B/kvnode" "$B/tests/chaos" \
        --workload bank --compact-entries 100 --duration "${CHAOS_BANK_S:-20}"
fi

# 2d. the chaos test's incr workload (procedure calls under kill -9 and
# SIGSTOP: acknowledged increments applied once, the others at most once)
if [ -x "$B/tests/chaos" ]; then
    run_step chaos-incr env KVNODE="$B/kvnode" "$B/tests/chaos" \
        --workload incr --compact-entries 100 --duration "${CHAOS_INCR_S:-20}"
fi

# 2e. the chaos test's register workload with sessions of 5 s: clients
# take new handles every second, and the sessions they leave behind expire
# under kill -9 and SIGSTOP while lincheck watches for a write applied twice
if [ -x "$B/tests/chaos" ]; then
    run_step chaos-sessions env KVNODE="$B/kvnode" "$B/tests/chaos" \
        --session-ttl 5 --duration "${CHAOS_SESSIONS_S:-20}"
fi

# 2f. the fuzz corpus: every seed of tests/fuzz/corpus through every fuzz
# target, built without libFuzzer (a finding aborts the replay)
nreplay=0
for t in "$B"/fuzz-replay/*; do
    [ -f "$t" ] && [ -x "$t" ] || continue
    nreplay=$((nreplay + 1))
    run_step "fuzz-${t##*/}" "$t" tests/fuzz/corpus
done
if [ $nreplay -eq 0 ]; then
    echo "=== fuzz corpus"
    echo "--- FAIL fuzz corpus (no $B/fuzz-replay/* built)"
    echo
    failed=$((failed + 1))
    failures="$failures fuzz-corpus"
fi

# 3. the command-line client, end to end (a missing script is a failure)
if [ -f tests/cluster/cli.sh ]; then
    run_step cli.sh env B="$B" sh tests/cluster/cli.sh
else
    echo "=== cli.sh"
    echo "--- FAIL cli.sh (tests/cluster/cli.sh is missing)"
    echo
    failed=$((failed + 1))
    failures="$failures cli.sh"
fi

# 4. the example program of docs/libkv.md, on a fresh embedded database
tmp=$(mktemp -d "${TMPDIR:-/tmp}/kv-example.XXXXXX") || tmp=""
if [ -n "$tmp" ] && [ -x "$B/tests/libkv_example" ]; then
    run_step libkv_example "$B/tests/libkv_example" "embedded:$tmp"
else
    echo "=== libkv_example"
    echo "--- FAIL libkv_example (not built, or no temp dir)"
    echo
    failed=$((failed + 1))
    failures="$failures libkv_example"
fi
[ -n "$tmp" ] && rm -rf "$tmp"

[ $failed -eq 0 ] || echo "failed steps:$failures"
echo "$passed passed, $failed failed"
[ $failed -eq 0 ]
