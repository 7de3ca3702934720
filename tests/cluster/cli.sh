#!/bin/sh
# cli.sh - kvclient end to end, against a real 3-node cluster on 127.0.0.1.
#
#   B=build sh tests/cluster/cli.sh
#
# It starts its own cluster (free ports, a cluster.conf in a temp dir, one
# kvnode per node in the background), then checks the output and exit code
# of every kvclient command and flag: usage errors, get/put/del, conditions,
# binary values (stdin, --hex), scan bounds across shards, --json output
# (parsed with python3), size limits, the tcp:// and embedded: targets,
# transactions (txn: arguments, stdin scripts, conditions, limits),
# procedures (call, call-all: the built-ins and the example plugins of
# $B/procs, which the cluster loads), bench (incr-proc and incr-rmw with
# their check of the sum too), status with its replication view (leaders,
# terms, members) and get --stale, also with nodes down. Every started process is ended by
# its PID and the temp dir removed on exit. The last line is exactly
# "N passed, M failed"; the exit status is non-zero on any failure.
set -u

B=${B:-build}
B=$(cd "$B" && pwd) || exit 1
KVC="$B/kvclient"
KVNODE="$B/kvnode"

passed=0
failed=0
PIDS=""
T=$(mktemp -d "${TMPDIR:-/tmp}/kv-cli.XXXXXX") || exit 1

# --- cleanup: end every started node by PID, remove the temp dir ---------
cleanup() {
    for pid in $PIDS; do
        kill -TERM "$pid" 2>/dev/null
    done
    for pid in $PIDS; do
        n=0
        while kill -0 "$pid" 2>/dev/null && [ $n -lt 50 ]; do
            sleep 0.1
            n=$((n + 1))
        done
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    PIDS=""
    rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- reporting ------------------------------------------------------------
ok() {
    passed=$((passed + 1))
    echo "ok   $1"
}

bad() {
    failed=$((failed + 1))
    echo "FAIL $1"
    if [ -s "$T/err" ]; then
        sed -n '1,5s/^/     stderr: /p' "$T/err"
    fi
    if [ -s "$T/out" ]; then
        head -c 600 "$T/out" | sed -n '1,5s/^/     stdout: /p'
    fi
}

now_ms() {
    echo $(($(date +%s%N) / 1000000))
}

# kvc ARGS...: runs kvclient on the test cluster; stdout in $T/out, stderr
# in $T/err, exit status in $rc. Stdin is /dev/null unless redirected.
kvc() {
    "$KVC" -c "$CONF" "$@" >"$T/out" 2>"$T/err" </dev/null
    rc=$?
}

# kvc_in FILE ARGS...: as kvc, with stdin from FILE.
kvc_in() {
    f=$1
    shift
    "$KVC" -c "$CONF" "$@" >"$T/out" 2>"$T/err" <"$f"
    rc=$?
}

# kvt TARGET ARGS...: as kvc, on another target.
kvt() {
    tgt=$1
    shift
    "$KVC" -c "$tgt" "$@" >"$T/out" 2>"$T/err" </dev/null
    rc=$?
}

# expect DESC RC [STDOUT]: checks $rc and, when given, the exact stdout
# (without trailing newlines).
expect() {
    if [ "$rc" != "$2" ]; then
        bad "$1: exit $rc, want $2"
        return
    fi
    if [ $# -ge 3 ] && [ "$(cat "$T/out")" != "$3" ]; then
        bad "$1: stdout differs, want: $(printf '%s' "$3" | head -c 200)"
        return
    fi
    ok "$1"
}

# expect_json DESC RC PYEXPR: checks $rc and that stdout is one JSON value
# d for which the Python expression PYEXPR is true.
expect_json() {
    if [ "$rc" != "$2" ]; then
        bad "$1: exit $rc, want $2"
        return
    fi
    if python3 -c '
import json, sys
d = json.loads(open(sys.argv[1], "rb").read().decode("utf-8"))
sys.exit(0 if (eval(sys.argv[2])) else 1)' "$T/out" "$3" 2>"$T/pyerr"; then
        ok "$1"
    else
        bad "$1: JSON check failed: $3 $(head -c 300 "$T/pyerr")"
    fi
}

# expect_jsonl DESC RC PYEXPR: as expect_json, stdout being JSON lines in
# the list L.
expect_jsonl() {
    if [ "$rc" != "$2" ]; then
        bad "$1: exit $rc, want $2"
        return
    fi
    if python3 -c '
import json, sys
L = [json.loads(x) for x in open(sys.argv[1], "rb").read().decode("utf-8").splitlines()]
sys.exit(0 if (eval(sys.argv[2])) else 1)' "$T/out" "$3" 2>"$T/pyerr"; then
        ok "$1"
    else
        bad "$1: JSON lines check failed: $3 $(head -c 300 "$T/pyerr")"
    fi
}

# expect_err DESC RC: checks $rc, an empty stdout and a "kvclient: " line
# on stderr.
expect_err() {
    if [ "$rc" != "$2" ]; then
        bad "$1: exit $rc, want $2"
    elif [ -s "$T/out" ]; then
        bad "$1: stdout not empty"
    elif ! grep -q '^kvclient: ' "$T/err"; then
        bad "$1: no 'kvclient: ' message on stderr"
    else
        ok "$1"
    fi
}

# version_of: the N of "OK version N" in $T/out (empty if absent).
version_of() {
    sed -n 's/^OK version \([0-9][0-9]*\)$/\1/p' "$T/out"
}

# --- the cluster ----------------------------------------------------------
if [ ! -x "$KVC" ] || [ ! -x "$KVNODE" ]; then
    echo "FAIL $KVC or $KVNODE is not built"
    echo "0 passed, 1 failed"
    exit 1
fi
PORTS=$(python3 -c '
import socket
ss = [socket.socket() for _ in range(3)]
for s in ss:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in ss))
for s in ss:
    s.close()') || {
    echo "FAIL no free ports"
    echo "0 passed, 1 failed"
    exit 1
}
# shellcheck disable=SC2086 # split into the three ports on purpose
set -- $PORTS
P1=$1
P2=$2
P3=$3
CONF="$T/cluster.conf"
# The example plugins (make builds them into $B/procs). Without them the
# cluster starts without plugins and their checks fail.
PROCS=""
for so in ratelimit sum_prefix move; do
    [ -f "$B/procs/$so.so" ] && PROCS="$PROCS $B/procs/$so.so"
done
if [ -n "$PROCS" ]; then
    PROCS_LINE="procedures =$PROCS"
else
    PROCS_LINE="# no plugins built in $B/procs"
fi
cat >"$CONF" <<EOF
# written by tests/cluster/cli.sh
cluster = clitest
shards = 8
replicas = 3
data_dir = data
max_key_bytes = 256
max_value_bytes = 65536
max_message_bytes = 1048576
request_timeout_ms = 3000
txn_timeout_ms = 3000
log_level = warn
$PROCS_LINE

[node 1]
address = tcp://127.0.0.1:$P1
[node 2]
address = tcp://127.0.0.1:$P2
[node 3]
address = tcp://127.0.0.1:$P3
EOF

for id in 1 2 3; do
    "$KVNODE" -c "$CONF" -n "$id" 2>"$T/node$id.log" &
    pid=$!
    PIDS="$PIDS $pid"
    case $id in
    1) PID1=$pid ;;
    2) PID2=$pid ;;
    *) PID3=$pid ;;
    esac
done

# Up when status answers for every node (10 s at most), then when a write
# goes through (the shards have a serving node; 10 s at most).
t0=$(now_ms)
up=0
while [ $(($(now_ms) - t0)) -lt 10000 ]; do
    if "$KVC" -c "$CONF" --timeout 300 status >/dev/null 2>&1; then
        up=1
        break
    fi
    sleep 0.1
done
if [ $up = 1 ]; then
    ok "cluster: status exits 0 once all 3 nodes are up"
else
    bad "cluster: status does not exit 0 within 10 s"
fi
t0=$(now_ms)
up=0
while [ $up = 0 ] && [ $(($(now_ms) - t0)) -lt 10000 ]; do
    if "$KVC" -c "$CONF" --timeout 1000 put cli-probe x >/dev/null 2>&1; then
        up=1
    else
        sleep 0.1
    fi
done
if [ $up = 1 ]; then
    ok "cluster: accepts writes"
else
    bad "cluster: no write accepted within 10 s"
    for id in 1 2 3; do
        sed -n '1,10s/^/     node '"$id"': /p' "$T/node$id.log"
    done
    echo "$passed passed, $failed failed"
    exit 1
fi

# --- usage errors (exit 2) --------------------------------------------------
kvc
expect "usage: no command" 2
kvc frobnicate
expect_err "usage: unknown command" 2
kvc get
expect_err "usage: get without a key" 2
kvc get a b
expect_err "usage: get with two keys" 2
kvc put a
expect_err "usage: put without a value" 2
kvc get a --bogus
expect_err "usage: unknown option" 2
kvc get a --timeout
expect_err "usage: option without its value" 2
kvc --timeout abc get a
expect_err "usage: --timeout abc" 2
kvc --timeout 10x get a
expect_err "usage: --timeout with trailing garbage" 2
kvc --timeout ' 10' get a
expect_err "usage: --timeout with a leading space" 2
kvc --timeout 0 get a
expect_err "usage: --timeout 0" 2
kvc scan --limit 99999999999999999999
expect_err "usage: --limit that overflows 64 bits" 2
kvc scan --limit -1
expect_err "usage: --limit -1" 2
kvc get a --if-version 3
expect_err "usage: --if-version does not apply to get" 2
kvc scan --workload read
expect_err "usage: --workload does not apply to scan" 2
kvc put a b --stale
expect_err "usage: --stale does not apply to put" 2
kvc get a --stale=yes
expect_err "usage: --stale takes no value" 2
kvc put a b --if-absent --if-version 3
expect_err "usage: --if-absent with --if-version" 2
kvc put a b --if-version 0
expect_err "usage: --if-version 0" 2
kvc put a b --if-version 18446744073709551616
expect_err "usage: --if-version over 2^64-1" 2
kvc --hex get 6g
expect_err "usage: --hex key with a bad digit" 2
kvc --hex get abc
expect_err "usage: --hex key with an odd digit count" 2
kvc get a --json --json
expect "usage: an option given twice" 2
kvc bench --workload sideways
expect_err "usage: bench --workload sideways" 2
kvc bench --clients 0
expect_err "usage: bench --clients 0" 2
kvc bench --ops 1e5
expect_err "usage: bench --ops 1e5" 2
kvc --json frobnicate
expect_json "usage: --json error object" 2 \
    'd["ok"] is False and d["error"] == "KV_EINVAL" and d["code"] == -6 and "frobnicate" in d["message"]'
kvc --help
if [ $rc = 0 ] && grep -q '^usage: kvclient' "$T/out" && grep -q 'bench' "$T/out"; then
    ok "help: --help prints usage on stdout, exit 0"
else
    bad "help: --help (exit $rc)"
fi
kvc help put
if [ $rc = 0 ] && grep -q 'if-absent' "$T/out"; then
    ok "help: help put"
else
    bad "help: help put (exit $rc)"
fi
kvc help get
if [ $rc = 0 ] && grep -q -- '--stale' "$T/out"; then
    ok "help: help get shows --stale"
else
    bad "help: help get (exit $rc)"
fi

# --- get / put / del -------------------------------------------------------
kvc get cli-missing
expect_err "get: missing key exits 1" 1
if grep -q 'not found' "$T/err"; then
    ok "get: missing key says 'not found' on stderr"
else
    bad "get: missing key message"
fi
kvc put cli-k hello
v1=$(version_of)
if [ $rc = 0 ] && [ -n "$v1" ] && [ "$v1" -gt 0 ]; then
    ok "put: prints 'OK version N' (N=$v1)"
else
    bad "put: exit $rc, want 0 and 'OK version N'"
fi
kvc get cli-k
expect "get: returns what put wrote" 0 "hello"
printf 'hello\n' >"$T/want"
if cmp -s "$T/out" "$T/want"; then
    ok "get: value bytes then exactly one newline"
else
    bad "get: output bytes are not the value plus a newline"
fi
kvc put cli-k world
v2=$(version_of)
if [ $rc = 0 ] && [ -n "$v2" ] && [ -n "$v1" ] && [ "$v2" -gt "$v1" ]; then
    ok "put: overwrite gives a higher version ($v1 -> $v2)"
else
    bad "put: overwrite versions ($v1 -> $v2, exit $rc)"
fi
kvc get cli-k --json
expect_json "get --json: ok, key, value, version" 0 \
    'd == {"ok": True, "key": "cli-k", "value": "world", "version": '"${v2:-0}"'}'
kvc put -- -dash -5
expect "put: '--' lets a key and value start with '-'" 0 "OK version $(version_of)"
kvc get -- -dash
expect "get: key after '--'" 0 "-5"
kvc put cli-empty ''
expect "put: empty value" 0 "OK version $(version_of)"
kvc get cli-empty
expect "get: empty value prints just the newline" 0 ""

# binary values through stdin
printf 'a\000b\377\n\tz' >"$T/bin"
kvc_in "$T/bin" put cli-bin -
expect "put -: binary value from stdin" 0 "OK version $(version_of)"
kvc get cli-bin
{ cat "$T/bin"; printf '\n'; } >"$T/want"
if [ $rc = 0 ] && cmp -s "$T/out" "$T/want"; then
    ok "get: binary value comes back byte for byte"
else
    bad "get: binary value differs (exit $rc)"
fi
kvc get --hex 636c692d62696e
expect "get --hex: key and value in hex" 0 "610062ff0a097a"
kvc get cli-bin --json
expect_json "get --json: non-UTF-8 value as value_hex" 0 \
    'd["value_hex"] == "610062ff0a097a" and "value" not in d and d["key"] == "cli-bin"'
kvc put --hex 636c692d686578 00ff10
expect "put --hex: hex key and value" 0 "OK version $(version_of)"
kvc get cli-hex --json
expect_json "get: the --hex key 636c692d686578 is the text key cli-hex" 0 \
    'd["key"] == "cli-hex" and d["value_hex"] == "00ff10"'
kvc get --hex 636c692d686578
expect "get --hex: value written with --hex" 0 "00ff10"
kvc get --hex 636c692d686578 --json
expect_json "get --hex --json: key_hex and value_hex" 0 \
    'd["key_hex"] == "636c692d686578" and d["value_hex"] == "00ff10"'
printf 'de ad\nBE ef\n' >"$T/hexin"
kvc_in "$T/hexin" put --hex 636c692d686578 -
expect "put --hex -: hex text from stdin, whitespace ignored" 0 \
    "OK version $(version_of)"
kvc get --hex 636c692d686578
expect "get --hex: value from hex stdin" 0 "deadbeef"
printf 'xyz' >"$T/badhex"
kvc_in "$T/badhex" put --hex 636c692d686578 -
expect_err "put --hex -: stdin that is not hex exits 2" 2
printf 'he said "hi"\\\n\001ok' >"$T/jsonv"
kvc_in "$T/jsonv" put cli-json -
kvc get cli-json --json
expect_json "get --json: quotes, backslash, control bytes escaped" 0 \
    'd["value"] == "he said \"hi\"\\\n\x01ok"'
printf 'caf\303\251 \342\202\254' >"$T/utf8"
kvc_in "$T/utf8" put cli-utf8 -
kvc get cli-utf8 --json
expect_json "get --json: UTF-8 text stays text" 0 \
    'd["value"] == "caf\u00e9 \u20ac"'

# conditions
kvc put cli-abs one --if-absent
expect "put --if-absent: first time" 0 "OK version $(version_of)"
kvc put cli-abs two --if-absent
expect_err "put --if-absent: second time exits 3" 3
kvc get cli-abs
expect "put --if-absent: the refused write changed nothing" 0 "one"
kvc put cli-ver one
vv=$(version_of)
kvc put cli-ver two --if-version $((vv + 1000))
expect_err "put --if-version: wrong version exits 3" 3
kvc put cli-ver-none x --if-version 5
expect_err "put --if-version: missing key exits 3" 3
kvc put cli-ver two --if-version "$vv" --json
expect_json "put --if-version: right version, --json" 0 \
    'd["ok"] is True and d["key"] == "cli-ver" and d["version"] > '"$vv"
vv2=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["version"])' "$T/out" 2>/dev/null)
kvc get cli-ver
expect "get: value after the conditional put" 0 "two"
kvc del cli-ver --if-version "$vv"
expect_err "del --if-version: old version exits 3" 3
kvc del cli-ver --if-version "${vv2:-1}"
expect "del --if-version: current version" 0 "OK"
kvc get cli-ver
expect_err "get: deleted key exits 1" 1
kvc del cli-ver
expect_err "del: missing key exits 1" 1
kvc del cli-k --json
expect_json "del --json" 0 'd == {"ok": True, "key": "cli-k"}'
kvc get cli-k --json
expect_json "get --json: missing key error object" 1 \
    'd["ok"] is False and d["error"] == "KV_ENOTFOUND" and d["code"] == -1 and isinstance(d["message"], str)'

# limits (max_key_bytes = 256, max_value_bytes = 65536 in this cluster)
k300=$(printf '%300s' '' | tr ' ' k)
kvc put "$k300" x
expect_err "put: key over max_key_bytes exits 2" 2
k5000=$(printf '%5000s' '' | tr ' ' k)
kvc get "$k5000"
expect_err "get: key over 4096 bytes exits 2" 2
kvc put '' x
expect_err "put: empty key exits 2" 2
head -c 70000 /dev/zero >"$T/big"
kvc_in "$T/big" put cli-big -
expect_err "put: value over max_value_bytes exits 2" 2
kvc get cli-big
expect_err "put: the refused value was not stored" 1
head -c 65536 /dev/zero >"$T/max"
kvc_in "$T/max" put cli-big -
expect "put: value of exactly max_value_bytes" 0 "OK version $(version_of)"
kvc get 636c692d626967 --hex --json
expect_json "get: the 64 KiB value comes back" 0 'd["value_hex"] == "00" * 65536'

# --- scan across shards ------------------------------------------------------
for i in 13 02 19 07 00 11 05 16 09 03 18 01 14 06 10 17 04 12 08 15; do
    "$KVC" -c "$CONF" put "s/$i" "v$i" >/dev/null 2>&1 || bad "scan: put s/$i"
done
"$KVC" -c "$CONF" put "r/x" rx >/dev/null 2>&1
"$KVC" -c "$CONF" put "t/x" tx >/dev/null 2>&1
want=""
for i in 00 01 02 03 04 05 06 07 08 09 10 11 12 13 14 15 16 17 18 19; do
    want="$want$(printf 's/%s\tv%s' "$i" "$i")
"
done
want=${want%?}
kvc scan --prefix s/
expect "scan --prefix: 20 keys in order" 0 "$want"
kvc scan --prefix s/ --stale
expect "scan --prefix --stale: the same 20 keys (nothing written since)" 0 "$want"
kvc scan --prefix s/ --json
expect_jsonl "scan --prefix --json: one object per entry, with versions" 0 \
    'len(L) == 20 and [e["key"] for e in L] == ["s/%02d" % i for i in range(20)] and all(e["value"] == "v" + e["key"][2:] and e["version"] > 0 for e in L)'
kvc scan --prefix 732f --json --hex
expect_jsonl "scan --json --hex: key_hex, value_hex" 0 \
    'len(L) == 20 and bytes.fromhex(L[0]["key_hex"]) == b"s/00" and bytes.fromhex(L[0]["value_hex"]) == b"v00"'
kvc scan --start s/05 --end s/10
expect "scan --start --end: [s/05, s/10)" 0 "$(printf 's/05\tv05\ns/06\tv06\ns/07\tv07\ns/08\tv08\ns/09\tv09')"
kvc scan --prefix s/ --limit 3
expect "scan --limit 3" 0 "$(printf 's/00\tv00\ns/01\tv01\ns/02\tv02')"
kvc scan --prefix s/ --start s/17
expect "scan --prefix --start" 0 "$(printf 's/17\tv17\ns/18\tv18\ns/19\tv19')"
kvc scan --start s/19 --end t/y
expect "scan: range across prefixes" 0 "$(printf 's/19\tv19\nt/x\ttx')"
kvc scan --hex --prefix 732f31 --limit 2
expect "scan --hex: hex bounds and output" 0 "$(printf '732f3130\t763130\n732f3131\t763131')"
kvc scan --prefix nothing/
expect "scan: empty range prints nothing, exit 0" 0 ""
kvc scan --hex
if [ $rc = 0 ] && [ "$(wc -l <"$T/out")" -ge 22 ] &&
    LC_ALL=C sort -c "$T/out" 2>/dev/null; then
    ok "scan: whole key space, sorted"
else
    bad "scan: whole key space (exit $rc)"
fi

# --- txn --------------------------------------------------------------------
# Every key shares the hash tag {ct}: one shard, so the cluster commits it.
kvc txn "put {ct}a 1" "put {ct}b 2"
V1=$(sed -n 's/^{ct}a \([0-9][0-9]*\)$/\1/p' "$T/out")
expect "txn: two puts commit at one version" 0 \
    "$(printf 'committed\n{ct}a %s\n{ct}b %s' "$V1" "$V1")"
kvc get "{ct}b"
expect "txn: its writes are read back" 0 "2"
kvc txn "if-version {ct}a $V1" "if-absent {ct}c" "put {ct}a 10" "del {ct}b"
V2=$(sed -n 's/^{ct}a \([0-9][0-9]*\)$/\1/p' "$T/out")
expect "txn: conditions that hold, a put and a delete" 0 \
    "$(printf 'committed\n{ct}a %s\n{ct}b 0' "$V2")"
if [ -n "$V2" ] && [ "$V2" -gt "$V1" ]; then
    ok "txn: the new version is above the old one"
else
    bad "txn: versions $V1 then $V2"
fi
kvc txn "if-version {ct}a $V1" "put {ct}c written"
expect_err "txn: a stale version exits 3" 3
if grep -q "condition failed: \"{ct}a\" has version $V2, expected $V1" "$T/err"; then
    ok "txn: the failed condition names the key and both versions"
else
    bad "txn: the conflict message"
fi
kvc get "{ct}c"
expect_err "txn: a failed condition writes nothing" 1
kvc txn "if-absent {ct}a" "put {ct}c written" --json
expect_json "txn --json: a failed condition" 3 \
    'd["ok"] is False and d["committed"] is False and d["error"] == "KV_ECONFLICT" and d["code"] == -3 and "exists" in d["message"] and "{ct}a" in d["message"]'
kvc txn "if-version {ct}nope 4" "del {ct}a"
expect_err "txn: a version on a missing key exits 3" 3
if grep -q 'is absent' "$T/err"; then
    ok "txn: ... and says the key is absent"
else
    bad "txn: the absent-key message"
fi
kvc get "{ct}a"
expect "txn: ... and deletes nothing" 0 "10"
kvc txn "put {ct}j1 x" "del {ct}a" "put {ct}j2 y" --json
expect_json "txn --json: committed writes with their versions" 0 \
    'd["ok"] is True and d["committed"] is True and [w["key"] for w in d["writes"]] == ["{ct}j1", "{ct}a", "{ct}j2"] and d["writes"][0]["version"] == d["writes"][2]["version"] > 0 and d["writes"][1]["version"] == 0'
printf '# a transfer\n\nif-absent {ct}s3\r\n  put\t{ct}s1 one  \nput {ct}s2 two\n' >"$T/script"
kvc_in "$T/script" txn
expect "txn: a script on stdin (comments, blank lines, tabs, CRLF)" 0 \
    "$(printf 'committed\n{ct}s1 %s\n{ct}s2 %s' "$(sed -n 's/^{ct}s1 //p' "$T/out")" "$(sed -n 's/^{ct}s1 //p' "$T/out")")"
kvc get "{ct}s1"
expect "txn: ... the script's value has no trailing blanks" 0 "one"
printf 'put {ct}s4 four\ndel {ct}s1\nput {ct}s5\n' >"$T/script"
kvc_in "$T/script" txn
expect_err "txn: a malformed stdin line exits 2" 2
if grep -q 'line 3' "$T/err"; then
    ok "txn: ... naming its line number"
else
    bad "txn: the line number of a malformed stdin line"
fi
kvc get "{ct}s4"
expect_err "txn: ... and nothing is written" 1
: >"$T/script"
kvc_in "$T/script" txn
expect "txn: an empty script commits nothing" 0 "committed"
kvc txn "put {ct}u 1" "frob {ct}u"
expect_err "txn: an unknown op exits 2" 2
grep -q "line 2: unknown op 'frob'" "$T/err" && ok "txn: ... naming the line" ||
    bad "txn: unknown op message"
kvc txn "put {ct}u"
expect_err "txn: put without a value exits 2" 2
kvc txn "del {ct}u {ct}v"
expect_err "txn: del with two keys exits 2" 2
kvc txn "if-version {ct}u 0"
expect_err "txn: if-version 0 exits 2" 2
kvc txn "if-version {ct}u 1x"
expect_err "txn: if-version with trailing garbage exits 2" 2
kvc txn "put {ct}u 1" "if-absent
{ct}v"
expect_err "txn: an argument with a newline exits 2" 2
kvc --hex txn "put 7b63747d75 zz"
expect_err "txn --hex: a bad hex value exits 2" 2
kvc txn --json "put {ct}u 1" "bogus"
expect_json "txn --json: a usage error names the line" 2 \
    'd["ok"] is False and d["error"] == "KV_EINVAL" and "line 2" in d["message"]'
kvc get "{ct}u"
expect_err "txn: nothing of a refused script is written" 1
python3 -c 'print("put {ct}big " + "v" * 65537)' >"$T/script"
kvc_in "$T/script" txn
expect_err "txn: a value over max_value_bytes exits 2" 2
grep -q 'txn line 1' "$T/err" && ok "txn: ... naming the line" ||
    bad "txn: the too-big value message"
seq 1 1001 | sed 's/^/put {ct}n/; s/$/ v/' >"$T/script"
kvc_in "$T/script" txn
expect_err "txn: over max_txn_ops (1000) exits 2" 2
grep -q 'line 1001.*max_txn_ops' "$T/err" && ok "txn: ... naming the line and the limit" ||
    bad "txn: the max_txn_ops message"
kvc --hex txn "put 7b63747d68 00ff" "if-absent 7b63747d6e6f"
expect "txn --hex: keys and values in hex" 0 \
    "$(printf 'committed\n7b63747d68 %s' "$(sed -n 's/^7b63747d68 //p' "$T/out")")"
kvc --hex get 7b63747d68
expect "txn --hex: ... read back" 0 "00ff"
kvc txn "put cross-a 1" "put cross-b 2" "put cross-c 3" --json
expect_json "txn: keys of several shards commit" 0 \
    'd["committed"] is True and all(w["version"] > 0 for w in d["writes"])'
# resolve and forget follow the answer: wait (bounded) until they are done
i=0
while [ $i -lt 50 ]; do
    kvc txn --list
    [ "$(wc -l <"$T/out")" -le 1 ] && break
    sleep 0.1
    i=$((i + 1))
done
expect "txn --list: nothing in flight once they are done" 0 \
    "$(printf '%-6s %-11s %-32s %-5s %10s %s' SHARD STATE TXN HOME AGE_MS KEYS)"
kvc txn --list --json
expect_json "txn --list --json: an empty list from every node" 0 \
    'd["ok"] is True and d["transactions"] == [] and d["nodes_up"] == d["nodes"] == 3'
kvc txn --list "put x 1"
expect_err "txn --list with lines exits 2" 2
kvc help txn
if [ $rc = 0 ] && grep -q 'if-version KEY V' "$T/out"; then
    ok "help: help txn"
else
    bad "help: help txn (exit $rc)"
fi
kvt "embedded:$T/emb-txn" txn "put ta 1" "put tb 2" "put tc 3" "if-absent td"
expect "txn: an embedded target takes any keys in one transaction" 0 \
    "$(printf 'committed\nta 1\ntb 1\ntc 1')"

# --- call, call-all -----------------------------------------------------------
kvc call incr cli-n
expect "call incr: a new key counts from 0" 0 "1"
kvc call incr cli-n
expect "call incr: again" 0 "2"
kvc call incr cli-n 5
printf '7\n' >"$T/want"
if [ $rc = 0 ] && cmp -s "$T/out" "$T/want"; then
    ok "call incr 5: prints the reply and one newline"
else
    bad "call incr 5: exit $rc, want 0 and exactly '7\\n'"
fi
kvc get cli-n
expect "call incr: get shows the count" 0 "7"
kvc call incr cli-n -- -10
expect "call incr: a negative ARG after --" 0 "-3"
kvc call incr cli-n --json
expect_json "call --json: ok and reply" 0 'd == {"ok": True, "reply": "-2"}'
kvc put cli-word hello
kvc call incr cli-word
expect_err "call incr on a non-integer value exits 2 (KV_EINVAL)" 2
kvc get cli-word
expect "call incr: ... and leaves the value unchanged" 0 "hello"
kvc call incr cli-n x1
expect_err "call incr: an ARG that is no integer exits 2" 2
kvc put cli-max 9223372036854775807
kvc call incr cli-max --json
expect_json "call incr past int64: KV_ERANGE, exit 5" 5 \
    'd["ok"] is False and d["error"] == "KV_ERANGE" and d["code"] == -18 and isinstance(d["message"], str)'
kvc get cli-max
expect "call incr: ... nothing written" 0 "9223372036854775807"
kvc call append cli-ap abc
expect "call append: absent key, the new length" 0 "3"
kvc call append cli-ap 'd f'
expect "call append: the new length again" 0 "6"
kvc get cli-ap
expect "call append: get shows both parts" 0 "abcd f"
kvc call append cli-ap
expect "call append: no ARG appends nothing" 0 "6"
kvc --hex call append 636c692d6170 00ff
expect "call --hex: hex key and ARG, the reply in hex" 0 "38"
kvc --hex get 636c692d6170
expect "call --hex: ... the bytes were appended" 0 "61626364206600ff"
kvc put cli-cas old
kvc call cas cli-cas old new
printf '\n' >"$T/want"
if [ $rc = 0 ] && cmp -s "$T/out" "$T/want"; then
    ok "call cas: match, empty reply (a newline)"
else
    bad "call cas: match (exit $rc)"
fi
kvc get cli-cas
expect "call cas: ... swapped" 0 "new"
kvc call cas cli-cas old newer
printf '\000\000\000\003new' >"$T/want"
if [ $rc = 3 ] && cmp -s "$T/out" "$T/want" &&
    grep -q '^kvclient: call cas: condition failed' "$T/err"; then
    ok "call cas: mismatch exits 3, the current value as a list on stdout"
else
    bad "call cas: mismatch (exit $rc, want 3 and the one-item list)"
fi
kvc call cas cli-cas old newer --json
expect_json "call cas --json: mismatch, the reply and the current value in items" 3 \
    'd["ok"] is False and d["error"] == "KV_ECONFLICT" and d["code"] == -3 and d["reply"] == "\x00\x00\x00\x03new" and d["items"] == ["new"] and "cli-cas" in d["message"]'
kvc get cli-cas
expect "call cas: ... unchanged" 0 "new"
kvc call cas cli-cas new
expect_err "call cas: one ARG is no list, exit 2" 2
kvc call cas cli-cas a b c
expect_err "call cas: a list of three, exit 2" 2
printf '\377\377\377\377\000\000\000\005fresh' >"$T/arg"
kvc call cas cli-cas-new --arg-file "$T/arg"
expect "call cas --arg-file: a missing expected item = must be absent" 0 ""
kvc get cli-cas-new
expect "call cas: ... created" 0 "fresh"
kvc call cas cli-cas-new --arg-file "$T/arg" --json
expect_json "call cas: again, the key exists now" 3 'd["items"] == ["fresh"]'
kvc put "{t}a" A
kvc put "{t}b" "$(printf 'b\tB')"
kvc call mget "{t}a" "{t}b" "{t}c" --json
expect_json "call mget --json: hash tag, items with null for the absent key" 0 \
    'd["ok"] is True and d["items"] == ["A", "b\tB", None] and "reply_hex" in d'
kvc call mget "{t}a" "{t}b" --as-list --json
expect_json "call mget --as-list: one more key as a list" 0 \
    'd["items"] == ["A", "b\tB"]'
kvc call mget "{t}a" --json
expect_json "call mget: no ARG reads the call's key" 0 'd["items"] == ["A"]'
kvc call mget "{t}a" "{t}b" "{t}c"
printf '\000\000\000\001A\000\000\000\003b\tB\377\377\377\377' >"$T/want"
if [ $rc = 0 ] && cmp -s "$T/out" "$T/want"; then
    ok "call mget: text output is the reply's bytes, no newline"
else
    bad "call mget: text output (exit $rc)"
fi
# eight more keys without the tag: some are on another shard than {t}
kvc call mget "{t}a" o0 o1 o2 o3 o4 o5 o6 o7 --json
expect_json "call mget: a key of another shard exits 2" 2 \
    'd["error"] == "KV_EINVAL"'
kvc --hex call mget 7b747d61 7b747d62 7b747d63 --json
expect_json "call --hex --json: items_hex" 0 \
    'd["items_hex"] == ["41", "620942", None] and "items" not in d'
kvc call frobnicate cli-n
expect_err "call: an unknown procedure exits 5" 5
grep -q 'frobnicate' "$T/err" && grep -q 'no such procedure' "$T/err" &&
    ok "call: ... and the message names it" || bad "call: unknown procedure message"
kvc call frobnicate cli-n --json
expect_json "call --json: KV_ENOPROC" 5 \
    'd["ok"] is False and d["error"] == "KV_ENOPROC" and d["code"] == -15 and "frobnicate" in d["message"]'
kvc call incr
expect_err "usage: call without a key" 2
kvc call incr cli-n 1 --arg-file "$T/arg"
expect_err "usage: call with ARGs and --arg-file" 2
kvc call incr cli-n --arg-file "$T/no-such-file"
expect_err "call --arg-file: a missing file exits 5" 5
kvc get cli-n --arg-file "$T/arg"
expect_err "usage: --arg-file does not apply to get" 2
printf '40' >"$T/arg"
kvc_in "$T/arg" call incr cli-n --arg-file -
expect "call --arg-file -: the argument from stdin" 0 "38"
kvc help call
if [ $rc = 0 ] && grep -q 'call NAME KEY' "$T/out"; then
    ok "help: help call"
else
    bad "help: help call (exit $rc)"
fi
kvt "embedded:$T/emb-call" call incr e-n 41
kvt "embedded:$T/emb-call" call incr e-n
expect "call on an embedded target" 0 "42"

# the example plugins (loaded by this cluster's cluster.conf)
if [ -n "$PROCS" ] && [ "$(echo $PROCS | wc -w)" = 3 ]; then
    ok "plugins: ratelimit, sum_prefix and move are built in $B/procs"
else
    bad "plugins: not all of ratelimit, sum_prefix and move in $B/procs"
fi
for i in 1 2 3 4 5 6; do
    "$KVC" -c "$CONF" put "cs/$i" "$i$i" >/dev/null 2>&1 || bad "call-all: put cs/$i"
done
"$KVC" -c "$CONF" put cs/x word >/dev/null 2>&1
kvc call-all sum_prefix cs/
expect "call-all sum_prefix: keys, sum and skipped over every shard" 0 "6 231 1"
kvc call-all sum_prefix cs/ --json
expect_json "call-all --json" 0 'd == {"ok": True, "reply": "6 231 1"}'
kvc call-all sum_prefix nothing/
expect "call-all sum_prefix: no key" 0 "0 0 0"
kvc call-all incr
expect_err "call-all of a writing procedure exits 2" 2
kvc call-all frobnicate --json
expect_json "call-all: an unknown procedure" 5 \
    'd["error"] == "KV_ENOPROC" and "frobnicate" in d["message"]'
now=$(now_ms)
kvc call ratelimit cli-rl "2 1 $now"
case $(cat "$T/out") in
allowed\ *) ok "call ratelimit: the first call is allowed" ;;
*) bad "call ratelimit: first call (exit $rc)" ;;
esac
kvc call ratelimit cli-rl "2 1 $now"
kvc call ratelimit cli-rl "2 1 $now"
case $(cat "$T/out") in
denied\ *) ok "call ratelimit: the third call at the same time is denied" ;;
*) bad "call ratelimit: third call (exit $rc)" ;;
esac
kvc put "{acme}.alice" 100
kvc call move "{acme}.alice" "{acme}.bob" 30
if [ $rc = 0 ] && [ "$("$KVC" -c "$CONF" get "{acme}.alice")" = 70 ] &&
    [ "$("$KVC" -c "$CONF" get "{acme}.bob")" = 30 ]; then
    ok "call move: 30 from alice to bob"
else
    bad "call move (exit $rc)"
fi
kvc call move "{acme}.alice" "{acme}.bob" 1000
expect_err "call move: insufficient funds exits 3" 3
if [ "$("$KVC" -c "$CONF" get "{acme}.alice")" = 70 ] &&
    [ "$("$KVC" -c "$CONF" get "{acme}.bob")" = 30 ]; then
    ok "call move: ... and writes nothing"
else
    bad "call move: a failed move changed the balances"
fi

# --- targets --------------------------------------------------------------
kvt "tcp://127.0.0.1:$P2" get s/07
expect "target tcp:// seed list" 0 "v07"
kvt "tcp://127.0.0.1:$P3,tcp://127.0.0.1:$P1" scan --prefix s/1 --limit 1
expect "target tcp:// with two seeds, scan" 0 "$(printf 's/10\tv10')"
E="embedded:$T/emb"
kvt "$E" put e1 one
expect "target embedded: put" 0 "OK version $(version_of)"
kvt "$E" put e2 two --if-absent
kvt "$E" get e1
expect "target embedded: get" 0 "one"
kvt "$E" scan
expect "target embedded: scan" 0 "$(printf 'e1\tone\ne2\ttwo')"
kvt "$E" del e1
kvt "$E" get e1
expect_err "target embedded: deleted key exits 1" 1
kvt "$E" status --json
expect_json "target embedded: status --json" 0 'd["ok"] is True and len(d["nodes"]) == 1'
kvt "$T/no-such.conf" get a
expect_err "target: missing cluster.conf fails with a message" 5

# --- bench ----------------------------------------------------------------
kvc bench --ops 2000 --json
expect_json "bench --ops 2000 --json (16 clients, writes)" 0 \
    'd["workload"] == "write" and d["clients"] == 16 and d["ops"] == 2000 and d["errors"] == 0 and d["seconds"] > 0 and d["ops_per_sec"] > 0 and 0 < d["p50_ms"] <= d["p95_ms"] <= d["p99_ms"] <= d["max_ms"]'
kvc bench --ops 1000 --clients 4 --keys 200 --value-size 10 --workload read
if [ $rc = 0 ] && grep -q '^workload read$' "$T/out" && grep -q '^ops 1000$' "$T/out" &&
    grep -q '^errors 0$' "$T/out" && grep -q '^not_found 0$' "$T/out" &&
    grep -q '^p99_ms [0-9.]*$' "$T/out"; then
    ok "bench --workload read: text report, every preloaded key found"
else
    bad "bench --workload read (exit $rc)"
fi
kvc bench --ops 300 --clients 4 --workload txn --json
expect_jsonl "bench --workload txn: one shard, then two shards" 0 \
    '[d["txn_keys"] for d in L] == ["same", "cross"] and all(d["workload"] == "txn" and d["ops"] == 300 and d["ops_per_sec"] > 0 and d["errors"] == sum(d["errors_by_code"].values()) for d in L)'
kvc bench --ops 1000 --clients 8 --keys 50 --workload mixed --json
expect_json "bench --workload mixed --json" 0 \
    'd["workload"] == "mixed" and d["ops"] == 1000 and d["errors"] == 0'
kvt "embedded:$T/emb-bench" bench --ops 2000 --clients 4 --json
expect_json "bench on an embedded target" 0 'd["ops"] == 2000 and d["errors"] == 0'
kvc bench --ops 1000 --clients 8 --threads 8 --keys 100 --workload read --json
expect_json "bench --threads 8: one blocking handle per client" 0 \
    'd["ops"] == 1000 and d["errors"] == 0 and d["not_found"] == 0'
kvc bench --ops 1000 --clients 8 --threads 2 --keys 100 --workload mixed --json
expect_json "bench --threads 2: pipelined clients" 0 \
    'd["ops"] == 1000 and d["errors"] == 0 and d["clients"] == 8'
kvt "embedded:$T/emb-bench" bench --ops 100 --clients 4 --threads 2
expect_err "usage: an embedded target needs a thread per client" 2
kvc bench --workload incr-proc --ops 2000 --clients 8 --json
expect_json "bench --workload incr-proc: 16 hot keys, the sum checked" 0 \
    'd["workload"] == "incr-proc" and d["keys"] == 16 and d["ops"] == 2000 and d["errors"] == 0 and d["increments"] == 2000 and d["timed_out"] == 0 and d["ops_per_sec"] > 0 and d["verify"] == {"ok": True, "sum": 2000, "found": 16, "keys": 16, "acknowledged": 2000} and 0 < d["p50_ms"] <= d["p99_ms"] <= d["max_ms"]'
kvc bench --workload incr-rmw --ops 1000 --clients 8 --keys 4
if [ $rc = 0 ] && grep -q '^workload incr-rmw$' "$T/out" &&
    grep -q '^increments 1000$' "$T/out" && grep -q '^retries [0-9][0-9]*$' "$T/out" &&
    grep -q '^verify: sum 1000 of 4 keys = acknowledged 1000$' "$T/out"; then
    ok "bench --workload incr-rmw: a run of its own keys, the sum checked"
else
    bad "bench --workload incr-rmw (exit $rc)"
fi
kvc bench --workload incr-rmw --ops 500 --clients 4 --json
expect_json "bench --workload incr-rmw --json: retries and verify" 0 \
    'd["increments"] == 500 and d["retries"] >= 0 and d["verify"]["ok"] is True and d["verify"]["sum"] == 500'
kvt "embedded:$T/emb-bench" bench --workload incr-proc --ops 400 --clients 4 --json
expect_json "bench --workload incr-proc on an embedded target" 0 \
    'd["increments"] == 400 and d["verify"]["sum"] == 400'
kvc bench --workload incr-proc --value-size 10
expect_err "usage: --value-size does not apply to incr-proc" 2
kvc bench --workload incr-rmw --clients 8 --threads 2
expect_err "usage: incr-rmw needs a thread per client" 2

# --- status, then nodes going down ----------------------------------------
kvc status
if [ $rc = 0 ] && [ "$(grep -c ' up ' "$T/out")" = 3 ] && grep -q 'clitest' "$T/out"; then
    ok "status: 3 nodes up, exit 0"
else
    bad "status: all up (exit $rc)"
fi
kvc status --json
expect_json "status --json: cluster, nodes, shards" 0 \
    'd["ok"] is True and d["cluster"] == "clitest" and sorted(n["id"] for n in d["nodes"]) == [1, 2, 3] and all(n["up"] for n in d["nodes"]) and all(n["peer_clock_ahead_ms"] == 0 and n["peer_clock_ahead_node"] is None for n in d["nodes"]) and [s["shard"] for s in d["shards"]] == list(range(8)) and all(s["node"] in (1, 2, 3) for s in d["shards"]) and sum(s["keys"] for s in d["shards"]) >= 22'

# the replication view: every shard has a leader, a term, a commit index and
# three members, exactly one of them the leader
kvc status
# member_rows: the rows of the member table (after its header) in $T/rows.
member_rows() {
    sed -n '/^SHARD  MEMBER ROLE/,$p' "$T/out" | tail -n +2 >"$T/rows"
}
member_rows
if [ $rc = 0 ] && [ "$(wc -l <"$T/rows")" = 24 ] &&
    [ "$(awk '$3 == "leader"' "$T/rows" | wc -l)" = 8 ] &&
    [ "$(awk '$3 == "follower"' "$T/rows" | wc -l)" = 16 ] &&
    [ "$(awk '{ print $1 }' "$T/rows" | sort | uniq -c | awk '$1 == 3' | wc -l)" = 8 ]; then
    ok "status: member table, 3 members per shard, one leader each"
else
    bad "status: member table (exit $rc, $(wc -l <"$T/rows") rows)"
fi
if grep -q '^SHARD  NODE   KEYS       APPLIED    TERM     COMMIT' "$T/out" &&
    ! grep -q 'no leader' "$T/out"; then
    ok "status: shard table has TERM and COMMIT, every shard a leader"
else
    bad "status: shard table with TERM and COMMIT"
fi
if awk 'length($0) > 80 { long = 1 } END { exit long }' "$T/out"; then
    ok "status: every line fits in 80 columns (3 nodes, 8 shards)"
else
    bad "status: a line is wider than 80 columns"
fi
kvc status --json
expect_json "status --json: leader, term, commit and members per shard" 0 \
    'all(s["leader"] == s["node"] and s["term"] >= 1 and s["commit"] >= 1 and sorted(m["id"] for m in s["members"]) == [1, 2, 3] and [m["id"] for m in s["members"] if m["role"] == "leader"] == [s["leader"]] and all(m["up"] is True and m["active"] is True and m["lag"] >= 0 and m["match"] >= 1 and m["applied"] >= 1 and m["installing"] is False for m in s["members"]) for s in d["shards"])'
kvc status --json
expect_json "status --json: lag is the leader's match minus the member's" 0 \
    'all(m["lag"] == [x["match"] for x in s["members"] if x["id"] == s["leader"]][0] - m["match"] for s in d["shards"] for m in s["members"])'

# get --stale: any replica answers from its copy
kvc get s/07 --stale
expect "get --stale: a replica answers" 0 "v07"
kvc get s/07 --stale --json
expect_json "get --stale --json" 0 'd["ok"] is True and d["value"] == "v07" and d["version"] > 0'

kill -TERM "$PID3"
wait "$PID3"
st=$?
if [ $st = 0 ]; then
    ok "kvnode 3 exits 0 on SIGTERM"
else
    bad "kvnode 3 exit status $st on SIGTERM"
fi
kvc status
if [ $rc = 4 ] && grep -q ' down ' "$T/out" && [ "$(grep -c ' up ' "$T/out")" = 2 ]; then
    ok "status: node 3 down -> exit 4, the others still listed"
else
    bad "status with node 3 down (exit $rc, want 4)"
fi
kvc status --json
expect_json "status --json with node 3 down" 4 \
    'd["ok"] is False and [n["up"] for n in sorted(d["nodes"], key=lambda n: n["id"])] == [True, True, False] and "error" in [n for n in d["nodes"] if n["id"] == 3][0]'
expect_json "status --json with node 3 down: its member rows say so" 4 \
    'all([m for m in s["members"] if m["id"] == 3][0]["up"] is False and [m for m in s["members"] if m["id"] == 3][0]["role"] is None and [m for m in s["members"] if m["id"] == 3][0]["applied"] is None and [m for m in s["members"] if m["id"] == 3][0]["installing"] is None for s in d["shards"])'
expect_json "status --json with node 3 down: it handed its shards over" 4 \
    'all(s["leader"] in (1, 2) for s in d["shards"])'
kvc status
member_rows
if [ $rc = 4 ] && [ "$(awk '$2 == 3 && $3 == "down"' "$T/rows" | wc -l)" = 8 ] &&
    [ "$(awk '$3 == "leader"' "$T/rows" | wc -l)" = 8 ]; then
    ok "status: node 3 is a down member of every shard, each shard led"
else
    bad "status: member rows with node 3 down (exit $rc)"
fi
kvc get s/07 --stale
expect "get --stale with node 3 down" 0 "v07"

kill -TERM "$PID1" "$PID2"
wait "$PID1"
wait "$PID2"
PIDS=""
t0=$(now_ms)
kvc --timeout 1000 get s/01
t1=$(now_ms)
if [ $rc = 4 ] && [ $((t1 - t0)) -lt 5000 ]; then
    ok "get: all nodes down -> exit 4 in $((t1 - t0)) ms"
else
    bad "get with all nodes down: exit $rc in $((t1 - t0)) ms, want 4 within 5 s"
fi
t0=$(now_ms)
kvc --timeout 1000 put s/01 x --json
t1=$(now_ms)
if [ $((t1 - t0)) -lt 5000 ]; then
    expect_json "put --json: all nodes down -> exit 4, error object" 4 \
        'd["ok"] is False and d["error"] in ("KV_EUNAVAILABLE", "KV_ETIMEDOUT")'
else
    bad "put with all nodes down took $((t1 - t0)) ms"
fi
kvc --timeout 500 status
expect "status: all nodes down -> exit 4" 4
kvc --timeout 1000 get s/01 --stale
expect_err "get --stale: all nodes down -> exit 4" 4
kvt "tcp://127.0.0.1:$P1" --timeout 1000 get s/01
expect_err "target tcp:// with its node down -> exit 4" 4

if [ $failed -gt 0 ]; then
    for id in 1 2 3; do
        sed -n '1,20s/^/     node '"$id"' log: /p' "$T/node$id.log"
    done
fi
echo "$passed passed, $failed failed"
[ $failed -eq 0 ]
