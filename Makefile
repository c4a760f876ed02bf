# doppel: `make run` and `make test` set up everything they need on a fresh machine and
# skip what is already there. See README.md.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

# Only `make dev` (cargo leptos watch) uses cargo-leptos; `make build` does its steps itself.
CARGO_LEPTOS_VERSION := 0.3.11
# wasm-bindgen-cli must match the wasm-bindgen crate in Cargo.lock exactly.
WASM_BINDGEN_VERSION := $(shell awk '/^name = "wasm-bindgen"$$/ { getline; gsub(/"/, "", $$3); print $$3; exit }' Cargo.lock)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Build tools only orchestrate a build: they are built without optimisation, LTO or debug
# info, in many codegen units. cargo-leptos's own release profile (fat LTO, one codegen unit)
# made the fresh-machine set-up of `make run` take 47 minutes.
TOOL_PROFILE := CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=256 \
  CARGO_PROFILE_RELEASE_OPT_LEVEL=0 CARGO_PROFILE_RELEASE_DEBUG=false \
  CARGO_PROFILE_RELEASE_STRIP=true CARGO_PROFILE_RELEASE_INCREMENTAL=false
# What cargo-leptos tells a build. The server needs LEPTOS_OUTPUT_NAME at compile time:
# without it leptos's hydration script asks for /pkg/doppel_bg.wasm, which is not there.
LEPTOS_ENV := LEPTOS_OUTPUT_NAME=doppel LEPTOS_SITE_ROOT=target/site LEPTOS_SITE_PKG_DIR=pkg \
  LEPTOS_SITE_ADDR=127.0.0.1:3000 LEPTOS_RELOAD_PORT=3001 LEPTOS_LIB_DIR=frontend \
  LEPTOS_BIN_DIR=server LEPTOS_JS_MINIFY=true LEPTOS_HASH_FILES=false
# Cuts the WASM at the lazy routes (tools/wasm-split); built here, in seconds.
WASM_SPLIT := target/tools/release/doppel-wasm-split
STAMP := target/.setup

# cargo-installed tools, and wasm-opt from the pinned npm package binaryen.
export PATH := $(HOME)/.cargo/bin:$(CURDIR)/end2end/node_modules/.bin:$(PATH)

.PHONY: size help setup setup-test run build server site test lint unit e2e api-fuzz dev clean bench bench-remote load

help:
	@echo "make run    set up, build (release) and start doppel on http://127.0.0.1:3000"
	@echo "make test   set up, then fmt, clippy, unit/integration and browser tests"
	@echo "make dev    cargo leptos watch (rebuilds on change)"

# What a build needs; the browser tests also need Chromium (`make run` does not wait for it).
setup: $(STAMP)/toolchain $(STAMP)/wasm-bindgen-$(WASM_BINDGEN_VERSION) $(WASM_SPLIT) $(STAMP)/npm
setup-test: setup $(STAMP)/chromium $(STAMP)/schemathesis $(STAMP)/runtime $(STAMP)/filesystems

$(STAMP)/toolchain: rust-toolchain.toml
	@mkdir -p $(STAMP)
	rustup toolchain install
	@touch $@

$(STAMP)/cargo-leptos-$(CARGO_LEPTOS_VERSION): | $(STAMP)/toolchain
	@if cargo leptos --version 2>/dev/null | grep -qF '$(CARGO_LEPTOS_VERSION)'; then \
	  echo "cargo-leptos $(CARGO_LEPTOS_VERSION) present"; \
	else \
	  echo "installing cargo-leptos $(CARGO_LEPTOS_VERSION) (for make dev)"; \
	  $(TOOL_PROFILE) cargo install cargo-leptos --version $(CARGO_LEPTOS_VERSION) --locked --features no_downloads; \
	fi
	@touch $@

$(WASM_SPLIT): tools/wasm-split/Cargo.toml tools/wasm-split/Cargo.lock tools/wasm-split/src/main.rs | $(STAMP)/toolchain
	+cargo build --release --locked --manifest-path tools/wasm-split/Cargo.toml --target-dir target/tools

# Not --locked: the CLI's own lock file names a webpki-roots version the registry lacks.
$(STAMP)/wasm-bindgen-$(WASM_BINDGEN_VERSION): | $(STAMP)/toolchain
	+@if wasm-bindgen --version 2>/dev/null | grep -qF '$(WASM_BINDGEN_VERSION)'; then \
	  echo "wasm-bindgen $(WASM_BINDGEN_VERSION) present"; \
	else \
	  $(TOOL_PROFILE) cargo install wasm-bindgen-cli --version $(WASM_BINDGEN_VERSION); \
	fi
	@touch $@

$(STAMP)/npm: end2end/package.json end2end/package-lock.json
	@mkdir -p $(STAMP)
	cd end2end && npm ci --no-audit --no-fund
	@touch $@

# Debian packages: Chromium for the browser tests, curl for the API tests (the contract's
# examples are run with curl, as written).
$(STAMP)/chromium:
	@mkdir -p $(STAMP)
	@if command -v chromium >/dev/null && command -v curl >/dev/null; then \
	  echo "chromium and curl present"; \
	else \
	  $(SUDO) apt-get update && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y chromium curl; \
	fi
	@touch $@

# Debian packages containers run with: runc (the OCI runtime), iproute2 (network namespaces,
# veths, bridges), nftables (firewall rules) and busybox-static (the demo's root filesystems).
$(STAMP)/runtime:
	@mkdir -p $(STAMP)
	@if command -v runc >/dev/null && command -v nft >/dev/null && command -v ip >/dev/null \
	    && { [ -x /bin/busybox ] || [ -x /usr/bin/busybox ]; }; then \
	  echo "runc, nftables, iproute2 and busybox present"; \
	else \
	  $(SUDO) apt-get update && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y runc nftables iproute2 busybox-static; \
	fi
	@touch $@

# XFS (reflink) and btrfs images that tests and `make bench` loop-mount: copies that share
# extents are tested and measured there.
$(STAMP)/filesystems:
	@mkdir -p $(STAMP)
	@if command -v mkfs.xfs >/dev/null && command -v mkfs.btrfs >/dev/null; then \
	  echo "mkfs.xfs and mkfs.btrfs present"; \
	else \
	  $(SUDO) apt-get update && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y xfsprogs btrfs-progs; \
	fi
	@touch $@

# The server and the site are built side by side (the site's tools install meanwhile), and
# every cargo in them shares make's three job slots (the `+` lines): on two cores this keeps
# a fresh machine's first `make run` short without running a dozen compilers at once.
# Schemathesis, pinned with everything it uses, in a virtualenv of its own.
$(STAMP)/schemathesis: scripts/schemathesis-requirements.txt
	@mkdir -p $(STAMP)
	@python3 -m venv --help >/dev/null 2>&1 || { $(SUDO) apt-get update && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y python3 python3-venv; }
	rm -rf target/schemathesis-venv
	python3 -m venv target/schemathesis-venv
	target/schemathesis-venv/bin/pip install --quiet --disable-pip-version-check -r scripts/schemathesis-requirements.txt
	@touch $@

build: $(STAMP)/toolchain
	$(MAKE) --no-print-directory -j3 server site
	node scripts/precompress.mjs target/site/pkg

server: $(STAMP)/toolchain
	+$(LEPTOS_ENV) cargo build --release -p doppel --bin doppel

site: $(STAMP)/wasm-bindgen-$(WASM_BINDGEN_VERSION) $(WASM_SPLIT) $(STAMP)/npm
	+$(LEPTOS_ENV) WASM_SPLIT=$(WASM_SPLIT) scripts/build-site.sh

# What the browser downloads (raw, gzip, brotli) and the server's render time of the pages.
size: build
	node scripts/size.mjs

run: build $(STAMP)/runtime
	./target/release/doppel serve

dev: setup $(STAMP)/cargo-leptos-$(CARGO_LEPTOS_VERSION)
	cargo leptos watch

lint: setup
	cargo fmt --all --check
	cargo clippy -p doppel -p app --all-targets -- -D warnings
	cargo clippy -p frontend --target wasm32-unknown-unknown -- -D warnings

unit: setup-test
	cargo test -p doppel -p app

e2e: build setup-test
	end2end/run.sh

# Generated requests over the whole REST API (scripts/api-fuzz.sh): no 5xx, nothing the
# OpenAPI document does not describe.
api-fuzz: build setup-test
	scripts/api-fuzz.sh

test: lint unit e2e api-fuzz

clean:
	cargo clean
	rm -rf end2end/node_modules end2end/test-results end2end/playwright-report

# The engine against rsync and cp (BENCH_SCALE=0.1 for a quick look). Not part of `make test`.
# Benches build with the `perf` profile into target/perf/: target/release/doppel stays the
# server `make build` built (one built without LEPTOS_ENV would serve a console it cannot find).
bench: setup $(STAMP)/filesystems
	@command -v rsync >/dev/null || { $(SUDO) apt-get update && $(SUDO) apt-get install -y rsync; }
	cargo bench --profile perf -p doppel --bench engine

# doppel between two agents (network namespaces, links shaped with tc) against rsync.
bench-remote: setup
	@command -v rsync >/dev/null || { $(SUDO) apt-get update && $(SUDO) apt-get install -y rsync; }
	cargo bench --profile perf -p doppel --bench remote

# 200 concurrent copy requests and 500 SSE subscribers against a real doppel (prints figures).
load: setup
	ulimit -n 8192 2>/dev/null; cargo bench --profile perf -p doppel --bench load
