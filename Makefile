# kv - build, dependencies, tests, local cluster.
#
#   make            libkv.a, libkv.so, kvnode, kvclient (into build/)
#   make deps       install missing Debian packages (apt-get, as root)
#   make test       deps + build + every test        (SAN=1: under ASan/UBSan)
#   make run        deps + build + start the cluster of cluster.conf + demo
#   make stop       stop exactly the nodes `make run` started (by PID)
#   make clean      remove build outputs
#   make fuzz       clang + libFuzzer: run every tests/fuzz target for
#                   FUZZ_SECONDS (default 60) each, one after the other
#                   (FUZZ_TARGETS="request peer" runs only those)
#
# SAN=1 builds everything with -fsanitize=address,undefined into build/san.
# FUZZ=1 (used by `make fuzz`) builds with clang and
# -fsanitize=fuzzer-no-link,address,undefined into build/fuzz.

SAN ?= 0
FUZZ ?= 0
CC ?= cc
FUZZ_CC ?= clang
ifeq ($(FUZZ),1)
B := build/fuzz
CC := $(FUZZ_CC)
SANFLAGS := -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
OPT := -O1 -g
else ifeq ($(SAN),1)
B := build/san
SANFLAGS := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
OPT := -O1 -g
else
B := build
SANFLAGS :=
OPT := -O2 -g
endif

WARN := -std=c11 -D_POSIX_C_SOURCE=200809L -Wall -Wextra -Wpedantic -Werror \
        -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wformat=2 -Wvla \
        -Wimplicit-fallthrough
PKGS := libzmq libsodium libprotobuf-c
PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS = $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lleveldb -lpthread -ldl
CHECK_LIBS = $(shell pkg-config --libs check 2>/dev/null)
CFLAGS := $(OPT) $(WARN) $(SANFLAGS) -fPIC -Ilibkv -I$(B)/gen
# Procedure plugins (procs/*.so, loaded with dlopen) call the kv_proc_*
# functions of the program that loads them: every program exports its
# symbols (libkv.so exports them anyway).
EXPORT := -rdynamic
LDFLAGS := $(SANFLAGS) $(EXPORT)

LIB_SRC := $(wildcard libkv/*.c)
LIB_OBJ := $(patsubst libkv/%.c,$(B)/obj/libkv/%.o,$(LIB_SRC)) $(B)/obj/gen/kv.pb-c.o
NODE_OBJ := $(patsubst %.c,$(B)/obj/%.o,$(filter-out kvnode/main.c,$(wildcard kvnode/*.c)))
CLI_OBJ := $(patsubst %.c,$(B)/obj/%.o,$(wildcard kvclient/*.c))
UNIT_SUITES := $(patsubst tests/unit/check_%.c,%,$(wildcard tests/unit/check_*.c))
UNIT_BINS := $(patsubst %,$(B)/tests/unit_%,$(UNIT_SUITES))
CLUSTER_BINS := $(patsubst tests/cluster/%.c,$(B)/tests/%,$(filter-out tests/cluster/harness.c,$(wildcard tests/cluster/*.c)))
PROC_SOS := $(patsubst procs/%.c,$(B)/procs/%.so,$(wildcard procs/*.c))
# Broken plugins the procedure unit tests load (kept out of $(B)/tests, whose
# executables run.sh runs).
TEST_PROC_SOS := $(patsubst tests/unit/procs/%.c,$(B)/testprocs/%.so,$(wildcard tests/unit/procs/*.c))

.PHONY: all deps deps-check test run stop clean format-check chaos sim \
        fuzz fuzz-deps fuzz-build fuzz-corpus
.DELETE_ON_ERROR:
.SECONDARY:

all: deps-check $(B)/libkv.a $(B)/libkv.so $(B)/kvnode $(B)/kvclient $(B)/lincheck $(PROC_SOS)

# --- dependencies -----------------------------------------------------------
# Installs only when something is missing, so a built tree needs no network.
deps:
	@sh .ci/deps.sh

deps-check:
	@sh .ci/deps.sh --quiet

# --- build ------------------------------------------------------------------
$(B)/gen/kv.pb-c.c $(B)/gen/kv.pb-c.h: libkv/kv.proto | deps-check
	@mkdir -p $(B)/gen
	protoc-c --proto_path=libkv --c_out=$(B)/gen libkv/kv.proto

$(B)/obj/gen/kv.pb-c.o: $(B)/gen/kv.pb-c.c
	@mkdir -p $(dir $@)
	$(CC) $(OPT) $(SANFLAGS) -fPIC -I$(B)/gen $(PKG_CFLAGS) -c $< -o $@

$(B)/obj/%.o: %.c $(B)/gen/kv.pb-c.h $(wildcard libkv/*.h kvnode/*.h kvclient/*.h tests/*/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(PKG_CFLAGS) -Ikvnode -Itests/cluster -Itests/lincheck -Itests/sim -c $< -o $@

$(B)/libkv.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(B)/libkv.so: $(LIB_OBJ)
	$(CC) -shared $(LDFLAGS) -o $@ $^ $(PKG_LIBS)

# The server's modules (all but main) also link into unit tests and the sim.
$(B)/libkvnode.a: $(NODE_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(B)/kvnode: $(B)/obj/kvnode/main.o $(B)/libkvnode.a $(B)/libkv.a
	$(CC) $(LDFLAGS) -o $@ $^ $(PKG_LIBS) -ldl

$(B)/kvclient: $(CLI_OBJ) $(B)/libkv.a
	$(CC) $(LDFLAGS) -o $@ $(CLI_OBJ) $(B)/libkv.a $(PKG_LIBS) -lm

$(B)/procs/%.so: procs/%.c libkv/kvproc.h libkv/kv.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -shared -o $@ $<

$(B)/testprocs/%.so: tests/unit/procs/%.c libkv/kvproc.h libkv/kv.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -shared -o $@ $<

# --- tests ------------------------------------------------------------------
$(B)/tests/unit_%: $(B)/obj/tests/unit/check_%.o tests/unit/runner.c $(B)/libkvnode.a $(B)/libkv.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(EXPORT) $(PKG_CFLAGS) -DSUITE_FN=$*_suite -o $@ tests/unit/runner.c \
	    $(B)/obj/tests/unit/check_$*.o $(B)/libkvnode.a $(B)/libkv.a $(CHECK_LIBS) $(PKG_LIBS) -lm

# The procedure tests load the example plugins and the broken test plugins
# from this build's folders (KV_PROC_DIR, KV_TESTPROC_DIR in the
# environment override them).
$(B)/tests/unit_proc: $(PROC_SOS) $(TEST_PROC_SOS)
# the procs cluster test loads the example and test plugins into kvnode
$(B)/tests/procs: $(PROC_SOS) $(TEST_PROC_SOS)
$(B)/obj/tests/unit/check_proc.o: CFLAGS += -DKV_PROC_DIR='"$(abspath $(B))/procs"' \
    -DKV_TESTPROC_DIR='"$(abspath $(B))/testprocs"'

$(B)/tests/%: $(B)/obj/tests/cluster/%.o $(B)/obj/tests/cluster/harness.o $(B)/libkv.a
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $< $(B)/obj/tests/cluster/harness.o $(B)/libkv.a \
	    $(CHECK_LIBS) $(PKG_LIBS) -lm

# The history checker as a command (kept out of build/tests: it reads stdin).
$(B)/lincheck: $(B)/obj/tests/lincheck/lincheck_main.o $(B)/obj/tests/lincheck/lincheck.o
	$(CC) $(LDFLAGS) -o $@ $^

# check_raft.c includes raft.c (to inject allocation failures).
$(B)/obj/tests/unit/check_raft.o: kvnode/raft.c

$(B)/tests/unit_lincheck: $(B)/obj/tests/unit/check_lincheck.o $(B)/obj/tests/lincheck/lincheck.o tests/unit/runner.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(EXPORT) $(PKG_CFLAGS) -DSUITE_FN=lincheck_suite -o $@ tests/unit/runner.c \
	    $(B)/obj/tests/unit/check_lincheck.o $(B)/obj/tests/lincheck/lincheck.o $(CHECK_LIBS) -lm

# --- simulation (tests/sim): real raft.c, replica.c and engine.c on a
# simulated network and disk. store_sim.o comes before the archives so it
# replaces libkv's LevelDB store.
SIM_OBJ := $(patsubst %.c,$(B)/obj/%.o,$(wildcard tests/sim/*.c)) \
           $(B)/obj/tests/lincheck/lincheck.o
SEEDS ?= 5000

$(B)/tests/sim: $(SIM_OBJ) $(B)/libkvnode.a $(B)/libkv.a
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $(SIM_OBJ) $(B)/libkvnode.a $(B)/libkv.a $(PKG_LIBS) -lm

sim: deps all $(B)/tests/sim
	$(B)/tests/sim --seeds $(SEEDS)

# --- chaos (tests/chaos): real processes, kill -9 / SIGSTOP under load ------
CHAOS_OBJ := $(patsubst %.c,$(B)/obj/%.o,$(wildcard tests/chaos/*.c)) \
             $(B)/obj/tests/cluster/harness.o $(B)/obj/tests/lincheck/lincheck.o
DURATION ?= 300
WORKLOAD ?= register

$(B)/tests/chaos: $(CHAOS_OBJ) $(B)/libkv.a
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $(CHAOS_OBJ) $(B)/libkv.a $(PKG_LIBS)

chaos: deps all $(B)/tests/chaos
	KVNODE=$(B)/kvnode $(B)/tests/chaos --duration $(DURATION) --workload $(WORKLOAD)

$(B)/tests/libkv_example: docs/libkv_example.c $(B)/libkv.so
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(EXPORT) -o $@ $< -L$(B) -Wl,-rpath,$(abspath $(B)) -lkv

# --- fuzzing (tests/fuzz, docs/security.md) ----------------------------------
# Each tests/fuzz/fuzz_NAME.c is one target. Linked with replay.c (a plain
# main() over files) it is $(B)/fuzz-replay/NAME, which `make test` runs on
# every file of tests/fuzz/corpus; linked with libFuzzer (FUZZ=1) it is
# build/fuzz/targets/NAME, which `make fuzz` runs. store_sim.o comes
# before the archives so it replaces libkv's LevelDB store, as in the sim.
FUZZ_TARGETS_ALL := $(patsubst tests/fuzz/fuzz_%.c,%,$(filter-out tests/fuzz/fuzz_node.c,$(wildcard tests/fuzz/fuzz_*.c)))
FUZZ_HARNESS := $(B)/obj/tests/fuzz/fuzz_node.o $(B)/obj/tests/sim/store_sim.o
FUZZ_REPLAYS := $(patsubst %,$(B)/fuzz-replay/%,$(FUZZ_TARGETS_ALL))
FUZZ_BINS := $(patsubst %,$(B)/targets/%,$(FUZZ_TARGETS_ALL))
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= $(FUZZ_TARGETS_ALL)

# The harness loads the example plugins from this build's folder.
$(B)/obj/tests/fuzz/fuzz_node.o: CFLAGS += -DKV_FUZZ_PROC_DIR='"$(abspath $(B))/procs"'

$(B)/fuzz-replay/%: $(B)/obj/tests/fuzz/fuzz_%.o $(B)/obj/tests/fuzz/replay.o $(FUZZ_HARNESS) \
                    $(B)/libkvnode.a $(B)/libkv.a | $(PROC_SOS)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $< $(B)/obj/tests/fuzz/replay.o $(FUZZ_HARNESS) \
	    $(B)/libkvnode.a $(B)/libkv.a $(PKG_LIBS) -lm

$(B)/targets/%: $(B)/obj/tests/fuzz/fuzz_%.o $(FUZZ_HARNESS) $(B)/libkvnode.a $(B)/libkv.a | $(PROC_SOS)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -fsanitize=fuzzer -o $@ $< $(FUZZ_HARNESS) \
	    $(B)/libkvnode.a $(B)/libkv.a $(PKG_LIBS) -lm

fuzz-deps:
	@sh .ci/deps.sh --fuzz

# Rewrites the generated seeds of tests/fuzz/corpus (corpus_gen.c says
# which); inputs kept by hand ("found-*") stay.
$(B)/fuzz-gen/corpus_gen: $(B)/obj/tests/fuzz/corpus_gen.o $(FUZZ_HARNESS) $(B)/libkvnode.a $(B)/libkv.a
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $< $(FUZZ_HARNESS) $(B)/libkvnode.a $(B)/libkv.a $(PKG_LIBS) -lm

fuzz-corpus: $(B)/fuzz-gen/corpus_gen
	$(B)/fuzz-gen/corpus_gen tests/fuzz/corpus

# The libFuzzer builds exist only with FUZZ=1 (clang).
ifeq ($(FUZZ),1)
fuzz-build: deps-check $(FUZZ_BINS) $(PROC_SOS)
else
fuzz-build: fuzz-deps
	@$(MAKE) --no-print-directory FUZZ=1 fuzz-build
endif

# Builds the targets with clang (FUZZ=1, into build/fuzz) and runs each for
# FUZZ_SECONDS over tests/fuzz/corpus/NAME; new inputs go to
# build/fuzz/corpus/NAME, findings to build/fuzz/findings/NAME.
fuzz: fuzz-deps
	@$(MAKE) --no-print-directory FUZZ=1 fuzz-build
	@FUZZ_SECONDS=$(FUZZ_SECONDS) sh tests/fuzz/run.sh build/fuzz $(FUZZ_TARGETS)

test: deps all $(UNIT_BINS) $(CLUSTER_BINS) $(B)/tests/sim $(B)/tests/chaos $(B)/tests/libkv_example \
      $(FUZZ_REPLAYS)
	@B=$(B) SAN=$(SAN) sh tests/run.sh

# --- local cluster ----------------------------------------------------------
run: deps all
	@B=$(B) sh .ci/cluster.sh start cluster.conf

stop:
	@B=$(B) sh .ci/cluster.sh stop cluster.conf

clean:
	rm -rf build

format-check:
	clang-format --dry-run --Werror libkv/*.c libkv/*.h kvnode/*.c kvnode/*.h \
	    kvclient/*.c tests/unit/*.c tests/unit/procs/*.c tests/cluster/*.c \
	    procs/*.c tests/fuzz/*.c tests/fuzz/*.h
