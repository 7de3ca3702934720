#!/bin/sh
# Installs the Debian packages kv needs, only when something is missing.
# --quiet: say nothing when all is present (used before every build).
# --fuzz: also clang and its libFuzzer runtime (only `make fuzz` needs them).
set -e
missing=""
if [ "$1" = "--fuzz" ]; then
    command -v clang >/dev/null 2>&1 || missing="$missing clang"
    # libFuzzer's runtime ships apart from the compiler on Debian.
    if ! command -v clang >/dev/null 2>&1 ||
        ! ls "$(clang -print-resource-dir 2>/dev/null)"/lib/linux/libclang_rt.fuzzer-*.a \
            >/dev/null 2>&1; then
        missing="$missing libclang-rt-dev"
    fi
fi
pkg-config --exists libzmq 2>/dev/null || missing="$missing libzmq3-dev"
pkg-config --exists libsodium 2>/dev/null || missing="$missing libsodium-dev"
pkg-config --exists libprotobuf-c 2>/dev/null || missing="$missing libprotobuf-c-dev"
pkg-config --exists check 2>/dev/null || missing="$missing check"
command -v protoc-c >/dev/null 2>&1 || missing="$missing protobuf-c-compiler"
command -v pkg-config >/dev/null 2>&1 || missing="$missing pkg-config"
[ -f /usr/include/leveldb/c.h ] || missing="$missing libleveldb-dev"
# tests/cluster/replication runs a node with its clock set ahead.
ls /usr/lib/*/faketime/libfaketimeMT.so.1 >/dev/null 2>&1 ||
    missing="$missing libfaketime"
if [ -z "$missing" ]; then
    [ "$1" = "--quiet" ] || echo "deps: all present"
    exit 0
fi
echo "deps: installing$missing"
if [ "$(id -u)" != 0 ]; then
    echo "deps: run as root (or: sudo apt-get install$missing)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq $missing >/dev/null
