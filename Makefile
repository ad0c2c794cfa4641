# Paddock: `make up` brings up an all-in-one node, `make test` runs every test.
# Both must be run as root and install missing OS packages themselves.

SHELL := /bin/bash
PADDOCK_HOME ?= /var/lib/paddock
CARGO ?= cargo
PREFIX ?= /usr/local

.PHONY: up down status test bench install lint deps test-deps build-release build-debug clean-state

up: deps build-release
	PADDOCK_HOME=$(PADDOCK_HOME) scripts/up.sh

down:
	PADDOCK_HOME=$(PADDOCK_HOME) scripts/down.sh

status:
	PADDOCK_HOME=$(PADDOCK_HOME) scripts/up.sh --status

test: deps test-deps lint build-debug
	# Every test binary runs even when one fails; then the controller's API suites again on
	# the etcd store backend (a private etcd per test). Fails if either failed.
	status=0; \
	PADDOCK_BIN_DIR=$(CURDIR)/target/debug $(CARGO) test --workspace --no-fail-fast -- --test-threads=2 || status=1; \
	CARGO=$(CARGO) scripts/test-etcd-suites.sh || status=1; \
	exit $$status

# The benchmark suite on release binaries; writes bench/results/latest.{json,md}.
# BENCH_ARGS: e.g. --only api-path,start-latency (see target/release/paddock-bench --list).
bench: deps build-release
	PADDOCK_BIN_DIR=$(CURDIR)/target/release target/release/paddock-bench $(BENCH_ARGS)

# Paddock as a system service: binaries in $(PREFIX)/bin, systemd units for both daemons,
# configs in /etc/paddock (never overwritten). DESTDIR stages into another root.
install: deps build-release
	DESTDIR=$(DESTDIR) PREFIX=$(PREFIX) scripts/install.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

deps:
	scripts/deps.sh
	scripts/criu.sh

# Test-only tools (moto's S3 server for the S3 backup store tests), under target/.
test-deps:
	scripts/test-deps.sh

build-release:
	$(CARGO) build --release --bins

build-debug:
	$(CARGO) build --bins
