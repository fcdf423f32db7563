# keygate: `make setup && make demo` runs the stack; `make test` runs every test.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

WASM_CARGO := .ci/wasm-cargo
FILTER_WASM := target/wasm32-wasip1/release/keygate.wasm
FILTER_NATIVE := target/native/libkeygate_native.so
ENVOY := .venv/bin/envoy

.PHONY: help setup build build-wasm build-native build-native-filter build-panic-probe lint \
        test test-unit test-postgres test-wasm test-e2e validate wasm-image demo bench \
        bench-host-calls bench-service clean

help:
	@echo "make setup    install Envoy $(shell sed -n 's/^ENVOY_VERSION=//p' .ci/setup.sh), the wasm toolchain and test tools"
	@echo "make build    $(FILTER_WASM), $(FILTER_NATIVE), target/release/{key-service,mock-upstream}"
	@echo "make build-native-filter  $(FILTER_NATIVE): keygate as an Envoy dynamic module"
	@echo "make demo     run Envoy :10000 + key-service :8081 + mock upstream :8082 (Ctrl-C stops all)"
	@echo "make wasm-image  target/wasm-image/: keygate.wasm as an OCI image layout for Istio"
	@echo "make test     lint, unit tests (key-service on SQLite and PostgreSQL), wasm logic tests in V8,"
	@echo "              config validation, end-to-end tests"
	@echo "make bench    keygate (Wasm and native) in Envoy against no filter, no-op Wasm and native filters,"
	@echo "              api_key_auth, Lua and"
	@echo "              ext_authz; disable-to-401 delay; streams (TTFB, scanning CPU); billing reconciled"
	@echo "              under load; bench/results/REPORT.md with plots"
	@echo "make bench-host-calls  what each host call keygate makes costs in Envoy's V8 (about 7 min)"
	@echo "make bench-service  the key-service alone on SQLite and PostgreSQL (about 4 min)"

setup:
	bash .ci/setup.sh

build: build-wasm build-native build-native-filter

build-wasm:
	$(WASM_CARGO) build -p keygate --target wasm32-wasip1 --release
	@ls -l $(FILTER_WASM) | awk '{ print "filter: " $$9 " (" $$5 " bytes)" }'

build-native:
	cargo build --release -p key-service -p keygate-e2e --bins

# keygate as an Envoy dynamic module, for the Envoy release `make setup` installs (the ABI
# must match it exactly: README, "Wasm or native").
build-native-filter:
	cargo build --profile native -p keygate-native
	@ls -l $(FILTER_NATIVE) | awk '{ print "filter: " $$9 " (" $$5 " bytes)" }'

# For the end-to-end tests only: the native filter with a request header that makes a hook
# panic (tests/tests/native.rs shows Envoy living on). Never deploy it.
build-panic-probe:
	cargo build --profile native -p keygate-native --features panic-probe \
	    --target-dir target/panic-probe

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

test-unit:
	cargo test -p keygate-core -p keygate -p keygate-native -p key-service
	cargo test -p keygate-e2e --lib --bins

# The key-service's tests again, each on a fresh database of a throwaway PostgreSQL server.
test-postgres:
	.ci/postgres.sh cargo test -p key-service

# The filter's pure logic compiled to wasm and run in Node's V8 (wasm-bindgen-test).
test-wasm:
	$(WASM_CARGO) test -p keygate-core --target wasm32-unknown-unknown --lib

# Every shipped Envoy config must load, filter included; the compose file must parse.
# Provider secrets (/etc/keygate/secrets/*.yaml) are stood in for by placeholder files.
validate: build-wasm build-native-filter
	tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	for s in $$(grep -oh '/etc/keygate/secrets/[a-z]*\.yaml' envoy/*.yaml | sort -u); do \
	    n=$$(basename $$s .yaml); printf '%s\n' 'resources:' \
	    '  - "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret' \
	    "    name: $$n" '    generic_secret: { secret: { inline_string: placeholder } }' \
	    > $$tmp/$$n.yaml; done && \
	for c in envoy/*.yaml; do sed "s#/etc/keygate/secrets/#$$tmp/#" $$c > $$tmp/config.yaml; \
	    KEYGATE_FILTER_TOKEN=validate $(ENVOY) --mode validate -c $$tmp/config.yaml \
	    --log-level error || { echo "envoy rejected $$c" >&2; exit 1; }; echo "valid: $$c"; done
	KEYGATE_ADMIN_TOKEN=x KEYGATE_FILTER_TOKEN=x docker-compose -f docker-compose.yml config -q
	KEYGATE_ADMIN_TOKEN=x KEYGATE_FILTER_TOKEN=x docker-compose -f docker-compose.yml \
	    --profile postgres config -q
	@echo "valid: docker-compose.yml"

# keygate.wasm as an OCI image layout for Istio's WasmPlugin (docs/deploying.md, "Istio").
WASM_IMAGE_TAG ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
wasm-image: build-wasm
	istio/wasm-image.sh $(FILTER_WASM) target/wasm-image $(WASM_IMAGE_TAG)

# Under a throwaway PostgreSQL server: the hostile-tenant tests run on both engines. The
# same suite runs on both builds of the filter (Wasm, then native).
test-e2e: build build-panic-probe
	.ci/postgres.sh cargo test -p keygate-e2e --test '*' -- --test-threads 2
	KEYGATE_E2E_FILTER=native .ci/postgres.sh cargo test -p keygate-e2e --test '*' -- --test-threads 2

test: lint test-unit test-postgres test-wasm validate test-e2e

demo: build
	bash envoy/demo.sh

# Not part of `make test`: it takes minutes and wants a quiet machine. Reports go to
# bench/results/. The first run seeds a million keys (about 2 min); later runs reuse them.
bench: build
	$(WASM_CARGO) build -p keygate-noop-filter --target wasm32-wasip1 --release
	cargo build --release -p keygate-noop-native
	cargo build --profile native -p keygate-native --features bench-floor --target-dir target/bench-floor
	target/release/keygate-bench --keys 10000,1000000 --memory-keys 0,100000 --rounds 3 \
	    --duration 3 --enforcement-tries 50 --out bench/results/filter.md
	target/release/keygate-bench --keys 10000 --rounds 2 --duration 3 --upstream \
	    --only "no filter,no-op wasm,keygate,envoy api_key_auth,lua table lookup,ext_authz to key-service" \
	    --out bench/results/filter-upstream.md
	target/release/keygate-stream-bench --out bench/results/streams.md
	target/release/keygate-reconcile --seconds 40 --out bench/results/reconciliation.md
	/usr/bin/python3 bench/report.py bench/results

# The price of each host call keygate makes per request, measured with a filter making
# one kind of call 20 times per request: the floor under keygate's own cost (about 7 min).
bench-host-calls: build
	$(WASM_CARGO) build -p keygate-hostcall-filter --target wasm32-wasip1 --release
	target/release/keygate-bench --host-calls --keys 10000 --rounds 3 --duration 3 \
	    --out bench/results/host-calls.md

# The key-service alone on SQLite and on a throwaway PostgreSQL (about 4 min).
bench-service: build-native
	.ci/postgres.sh target/release/keygate-service-bench --keys 1000000 --rounds 3 \
	    --out bench/results/key-service.md

clean:
	cargo clean
