#!/bin/sh
# cluster.sh - start or stop the local cluster of a cluster.conf.
#
#   B=build sh .ci/cluster.sh start cluster.conf    (make run)
#   B=build sh .ci/cluster.sh stop cluster.conf     (make stop)
#
# start: runs one kvnode per [node ID] of the config that is not already
# running, each in its own session (setsid) so that Ctrl-C of make does not
# reach it, with its log in DATA_DIR/node-ID.log and its PID in
# DATA_DIR/node-ID.pid; waits until `kvclient status` answers, then runs a
# short demo and says how to use and stop the cluster.
#
# stop: ends exactly the processes start recorded: a PID is signalled only
# while /proc/PID/cmdline is the kvnode of this config and node. SIGTERM
# first (kvnode makes every acknowledged write durable and exits), SIGKILL
# after 10 s.
set -u

B=${B:-build}
START_WAIT=15 # seconds for the cluster to answer status
STOP_WAIT=10  # seconds for a node to exit on SIGTERM

die() {
    echo "cluster.sh: $*" >&2
    exit 1
}

usage() {
    echo "usage: B=BUILD_DIR sh .ci/cluster.sh start|stop CONF" >&2
    exit 2
}

[ $# -eq 2 ] || usage
CMD=$1
CONF=$2
CONF_ARG=$2 # as given, for the commands shown to the user
case $CMD in start | stop) ;; *) usage ;; esac
[ -f "$CONF" ] || die "no config file $CONF"

# Absolute paths: they are what /proc/PID/cmdline is matched against.
CONF=$(cd "$(dirname "$CONF")" && pwd)/$(basename "$CONF")
if [ -d "$B" ]; then
    B=$(cd "$B" && pwd)
elif [ "$CMD" = start ]; then
    die "no build directory $B (run make first)"
fi
KVNODE=$B/kvnode
KVCLIENT=$B/kvclient

# data_dir read from the file itself, for stop when kvnode is not built
# (e.g. after make clean while nodes still run). Relative to the config.
data_dir_from_file() {
    d=$(sed -n '/^[[:space:]]*\[/q; s/#.*//; s/^[[:space:]]*data_dir[[:space:]]*=[[:space:]]*//p' "$CONF" |
        sed 's/[[:space:]]*$//' | tail -n 1)
    [ -n "$d" ] || d=data
    case $d in /*) echo "$d" ;; *) echo "$(dirname "$CONF")/$d" ;; esac
}

# The config as kvnode reads it: "data_dir PATH" then "node ID ADDRESS".
read_config() {
    if [ ! -x "$KVNODE" ] && [ "$CMD" = stop ]; then
        DATA_DIR=$(data_dir_from_file)
        return
    fi
    [ -x "$KVNODE" ] || die "$KVNODE is not built (run make)"
    LAYOUT=$("$KVNODE" -c "$CONF" --check) || die "invalid config $CONF"
    DATA_DIR=$(printf '%s\n' "$LAYOUT" | sed -n 's/^data_dir //p')
    NODE_IDS=$(printf '%s\n' "$LAYOUT" | sed -n 's/^node \([0-9][0-9]*\) .*/\1/p')
    [ -n "$DATA_DIR" ] || die "kvnode --check printed no data_dir"
    [ -n "$NODE_IDS" ] || die "kvnode --check printed no nodes"
}

# The address of node ID, from the layout kvnode printed.
node_addr() {
    printf '%s\n' "$LAYOUT" | sed -n "s/^node $1 //p"
}

# Whether some process listens on the TCP port of ADDR (tcp://host:port),
# read from /proc/net/tcp{,6} (state 0A = LISTEN), so that start does not
# mistake another program on that port for the node it launched.
port_busy() {
    port=${1##*:}
    case $port in '' | *[!0-9]*) return 1 ;; esac
    hex=$(printf ':%04X' "$port")
    cat /proc/net/tcp /proc/net/tcp6 2>/dev/null |
        awk -v p="$hex" '$4 == "0A" && substr($2, length($2) - 4) == p { f = 1 } END { exit !f }'
}

# Whether PID is a live (not zombie) process.
alive() {
    kill -0 "$1" 2>/dev/null || return 1
    state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1)
    [ -n "$state" ] && [ "$state" != Z ]
}

# Whether PID is the kvnode that start launched for node ID of this config.
is_our_node() {
    pid=$1
    id=$2
    alive "$pid" || return 1
    cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    case $cmd in
    *"kvnode -c $CONF -n $id ") return 0 ;;
    *) return 1 ;;
    esac
}

# The PID recorded for node ID if that process is still our kvnode.
running_pid() {
    f=$DATA_DIR/node-$1.pid
    [ -f "$f" ] || return 1
    p=$(cat "$f" 2>/dev/null)
    case $p in '' | *[!0-9]*) return 1 ;; esac
    is_our_node "$p" "$1" || return 1
    echo "$p"
}

now() {
    date +%s
}

show_logs() {
    for id in $NODE_IDS; do
        echo "--- tail of $DATA_DIR/node-$id.log" >&2
        tail -n 20 "$DATA_DIR/node-$id.log" >&2 2>/dev/null
    done
    echo "--- nodes that did start keep running; stop them with:" >&2
    echo "    B=$B sh .ci/cluster.sh stop $CONF_ARG   (make stop)" >&2
}

# ARG quoted for a shell when it needs it (for commands shown to copy).
shq() {
    case $1 in
    *[!A-Za-z0-9_:./=,+-]* | '') printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")" ;;
    *) printf '%s' "$1" ;;
    esac
}

# Prints a demo command, then runs it. An expected non-zero exit is given
# as EXPECT=N; a different exit is reported and makes start fail at the end.
demo() {
    expect=${EXPECT:-0}
    line="\$ $SHOW_CLIENT"
    for a in "$@"; do
        line="$line $(shq "$a")"
    done
    echo "$line"
    "$KVCLIENT" -c "$CONF" "$@"
    rc=$?
    if [ "$rc" -ne "$expect" ]; then
        echo "cluster.sh: demo command exited $rc, expected $expect" >&2
        DEMO_OK=0
    elif [ "$rc" -ne 0 ]; then
        echo "(exit $rc, as expected)"
    fi
    echo
}

start() {
    read_config
    [ -x "$KVCLIENT" ] || die "$KVCLIENT is not built (run make)"
    command -v setsid >/dev/null 2>&1 || die "setsid not found (util-linux)"
    mkdir -p "$DATA_DIR" || die "cannot create $DATA_DIR"

    for id in $NODE_IDS; do
        pidf=$DATA_DIR/node-$id.pid
        log=$DATA_DIR/node-$id.log
        if p=$(running_pid "$id"); then
            echo "node $id: already running (pid $p)"
            continue
        fi
        addr=$(node_addr "$id")
        if port_busy "$addr"; then
            echo "node $id: $addr is already in use by another process" >&2
            echo "(another cluster? see: ss -ltnp, or stop it first)" >&2
            exit 1
        fi
        rm -f "$pidf"
        # The inner shell writes its own PID, then becomes kvnode (exec), so
        # the file names kvnode whether or not setsid had to fork.
        # shellcheck disable=SC2016
        setsid sh -c 'echo $$ >"$1" && exec "$2" -c "$3" -n "$4"' \
            sh "$pidf" "$KVNODE" "$CONF" "$id" >>"$log" 2>&1 </dev/null &
        n=0
        while [ ! -s "$pidf" ] && [ $n -lt 50 ]; do
            sleep 0.1
            n=$((n + 1))
        done
        [ -s "$pidf" ] || die "node $id: no pid file after 5 s"
        # Until its exec, the process is the wrapper shell: wait for kvnode.
        p=$(cat "$pidf")
        n=0
        while ! is_our_node "$p" "$id" && alive "$p" && [ $n -lt 50 ]; do
            sleep 0.1
            n=$((n + 1))
        done
        echo "node $id: started (pid $p, log $log)"
    done

    printf 'waiting for the cluster to answer'
    deadline=$(($(now) + START_WAIT))
    ok=0
    while [ "$(now)" -lt "$deadline" ]; do
        if timeout 5 "$KVCLIENT" -c "$CONF" status >/dev/null 2>&1; then
            ok=1
            break
        fi
        for id in $NODE_IDS; do
            if ! running_pid "$id" >/dev/null; then
                echo
                echo "node $id exited during start-up" >&2
                show_logs
                exit 1
            fi
        done
        printf '.'
        sleep 0.3
    done
    echo
    # Something else may have answered (a port taken by another program):
    # every node started here must still be running.
    if [ $ok -eq 1 ]; then
        sleep 0.5
        for id in $NODE_IDS; do
            if ! running_pid "$id" >/dev/null; then
                echo "node $id is not running (see its log)" >&2
                show_logs
                exit 1
            fi
        done
    fi
    if [ $ok -eq 0 ]; then
        echo "the cluster did not answer status within ${START_WAIT} s" >&2
        show_logs
        exit 1
    fi
    echo "cluster is up: $(echo "$NODE_IDS" | wc -w) nodes, data in $DATA_DIR"
    echo

    # How the user would type kvclient from here: relative paths if short.
    here=$(pwd)
    SHOW_CLIENT=${KVCLIENT#"$here"/}
    # kvclient's default target is ./cluster.conf: name -c only if needed.
    [ "$CONF" = "$here/cluster.conf" ] ||
        SHOW_CLIENT="$SHOW_CLIENT -c $(shq "$CONF_ARG")"
    echo "=== demo"
    echo
    DEMO_OK=1
    echo "# keys spread over the shards by hash; the two {cart:7} keys share"
    echo "# one shard (a hash tag): see the KEYS column of status at the end"
    for i in 1 2 3 4 5 6; do
        demo put "user:$i" "name-$i"
    done
    demo put '{cart:7}:item1' 'apples'
    demo put '{cart:7}:item2' 'pears'
    demo get user:3
    demo get '{cart:7}:item1'
    echo "# a create-only put of a key that exists is refused (exit 3):"
    EXPECT=3 demo put user:1 'someone else' --if-absent
    demo scan --prefix user:
    echo "# procedures run on the node holding the key: a counter, and a"
    echo "# transfer within one hash tag (plugins of procs/, docs/procedures.md)"
    demo call incr demo:visits
    demo call incr demo:visits 10
    demo put '{acme}.alice' 100
    demo call move '{acme}.alice' '{acme}.bob' 30
    demo call-all sum_prefix '{acme}.'
    demo status
    [ $DEMO_OK -eq 1 ] || echo "cluster.sh: some demo commands failed" >&2

    k=$SHOW_CLIENT
    if [ "$CONF" = "$here/cluster.conf" ] && [ -f "$here/Makefile" ]; then
        stop_cmd="make stop"
    else
        stop_cmd="B=${B#"$here"/} sh .ci/cluster.sh stop $(shq "$CONF_ARG")"
    fi
    cat <<EOF
=== the cluster is running ($(echo "$NODE_IDS" | wc -w) nodes)
  $k put KEY VALUE                 write; prints the new version
  $k put KEY VALUE --if-absent     create only (exit 3 if it exists)
  $k put KEY VALUE --if-version V  compare-and-set (exit 3 if it moved)
  $k get KEY                       read
  $k del KEY                       delete
  $k scan --prefix P               keys in order, merged across shards
  $k call incr KEY [N]             run a procedure on KEY's node (docs/procedures.md)
  $k status                        nodes, shards, which node serves each
  $k bench --help                  load generator (throughput, latency)
  $k help                          every command and option
logs: $DATA_DIR/node-ID.log (one per node)
stop: $stop_cmd
EOF
    [ $DEMO_OK -eq 1 ]
}

stop() {
    read_config
    # 1. SIGTERM every node that is ours; forget stale pid files.
    pids=""
    for pidf in "$DATA_DIR"/node-*.pid; do
        [ -f "$pidf" ] || continue
        id=${pidf##*/node-}
        id=${id%.pid}
        p=$(cat "$pidf" 2>/dev/null)
        case $p in '' | *[!0-9]*) p=0 ;; esac
        if [ "$p" -eq 0 ] || ! is_our_node "$p" "$id"; then
            echo "node $id: not running (removed stale $pidf)"
            rm -f "$pidf"
            continue
        fi
        kill -TERM "$p" 2>/dev/null
        pids="$pids $id:$p"
    done
    if [ -z "$pids" ]; then
        echo "no node of $CONF_ARG was running"
        return 0
    fi

    # 2. Wait for all of them together, at most STOP_WAIT seconds.
    deadline=$(($(now) + STOP_WAIT))
    while [ "$(now)" -lt "$deadline" ]; do
        left=0
        for ip in $pids; do
            alive "${ip#*:}" && left=1
        done
        [ $left -eq 0 ] && break
        sleep 0.1
    done

    # 3. SIGKILL what is left (still checking it is our kvnode).
    for ip in $pids; do
        id=${ip%%:*}
        p=${ip#*:}
        if is_our_node "$p" "$id"; then
            echo "node $id: still running ${STOP_WAIT} s after SIGTERM, sending SIGKILL"
            kill -KILL "$p" 2>/dev/null
            n=0
            while alive "$p" && [ $n -lt 50 ]; do
                sleep 0.1
                n=$((n + 1))
            done
        fi
        if alive "$p"; then
            echo "node $id: pid $p did not exit" >&2
            continue
        fi
        rm -f "$DATA_DIR/node-$id.pid"
        echo "node $id: stopped (pid $p)"
    done
}

$CMD
