# Cove — two commands do everything on a fresh machine:
#   make demo   installs what is missing, builds, runs Python in a microVM sandbox
#   make test   the whole suite, real guests included (what CI runs)

SHELL := /bin/bash
CARGO ?= cargo
# The demo uses the normal Cove home; tests use their own under target/.
COVE_HOME ?= $(if $(filter 0,$(shell id -u)),/var/lib/cove,$(HOME)/.local/share/cove)
TEST_HOME := $(CURDIR)/target/cove-test-home
# A clean clone gains nothing from incremental caches, which are most of a debug target/.
ifdef CI
export CARGO_INCREMENTAL := 0
endif

.PHONY: all build setup demo test lint fmt bench prune clean-sandboxes

all: build

build:
	$(CARGO) build --release --bins

# Debian packages, guest kernel (cached), agent, initramfs, default images (cached).
setup: build
	COVE_BIN=target/release/cove guest/setup.sh "$(COVE_HOME)"

demo: build setup
	COVE_HOME="$(COVE_HOME)" scripts/demo.sh target/release/cove

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

test:
	scripts/test-deps.sh
	scripts/e2b-sdks.sh
	scripts/python-sdk.sh
	$(CARGO) build --workspace --bins --tests
	COVE_BIN=target/debug/cove guest/setup.sh "$(TEST_HOME)"
	COVE_HOME="$(TEST_HOME)" target/debug/cove daemon stop >/dev/null
	$(MAKE) lint
	@# Whatever the tests did, their sandboxes are checked for and the coved their commands
	@# started is stopped (it would outlive the run).
	set -o pipefail; COVE_TEST_HOME="$(TEST_HOME)" $(CARGO) test --workspace --all-targets --no-fail-fast 2>&1 | tee target/test.log; rc=$$?; \
	cove="env COVE_HOME=$(TEST_HOME) target/debug/cove"; \
	leftover=$$($$cove ls -q); \
	if [ -n "$$leftover" ]; then echo "tests left sandboxes behind: $$leftover"; $$cove rm -f $$leftover; rc=1; fi; \
	$$cove daemon stop >/dev/null; exit $$rc
	@awk '/^test result:/ { p += $$4; f += $$6 } END { printf "cove: %d passed, %d failed\n", p, f; if (p == 0 || f > 0) exit 1 }' target/test.log

# Benchmarks print one JSON line each (see bench/README.md).
bench: build
	COVE_BIN=target/release/cove guest/setup.sh "$(TEST_HOME)"
	COVE_HOME="$(TEST_HOME)" bench/run boot
	COVE_HOME="$(TEST_HOME)" bench/run exec
	COVE_HOME="$(TEST_HOME)" bench/run lifecycle
	COVE_HOME="$(TEST_HOME)" bench/run image-import
	COVE_HOME="$(TEST_HOME)" bench/run api
	COVE_HOME="$(TEST_HOME)" bench/run net
	bench/run netns
	scripts/e2b-sdks.sh
	COVE_HOME="$(TEST_HOME)" bench/run e2b
	scripts/python-sdk.sh
	COVE_HOME="$(TEST_HOME)" bench/run sdk
	bench/run kvm

fmt:
	$(CARGO) fmt --all

# What cargo keeps of earlier builds (every test binary of every hash it built, and the
# incremental caches) grows a development target/ by about a gigabyte a day: what has not been
# rebuilt for two days goes.
prune:
	find target/debug/deps target/release/deps -maxdepth 1 -type f -mtime +2 -delete 2>/dev/null || true
	rm -rf target/debug/incremental target/release/incremental
