#!/usr/bin/env bash
# `make demo`: the key-service, the mock LLM upstream and Envoy with the keygate filter, in
# the foreground with a fresh embedded database. Ctrl-C (or any of them exiting) stops all.
# KEYGATE_* variables pass through to the key-service (see docs/configuration.md).
set -euo pipefail
cd "$(dirname "$0")/.."

data=data/demo
for bin in target/release/key-service target/release/mock-upstream \
    target/wasm32-wasip1/release/keygate.wasm .venv/bin/envoy; do
    [ -e "$bin" ] || { echo "demo: $bin is missing: run 'make setup' and 'make build'" >&2; exit 1; }
done

rm -rf "$data"
mkdir -p "$data"
export KEYGATE_DATABASE_URL=${KEYGATE_DATABASE_URL:-sqlite://$data/keygate.db}

pids=()
stop() {
    trap - EXIT INT TERM
    [ ${#pids[@]} -eq 0 ] || kill "${pids[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
    echo "demo: stopped"
}
trap stop EXIT INT TERM

target/release/key-service &
pids+=($!)
target/release/mock-upstream --listen 127.0.0.1:8082 &
pids+=($!)

# The key-service writes generated tokens next to its database on first start.
for _ in $(seq 100); do
    curl -fsS http://127.0.0.1:8081/healthz >/dev/null 2>&1 && break
    sleep 0.1
done
curl -fsS http://127.0.0.1:8081/healthz >/dev/null || { echo "demo: key-service did not start" >&2; exit 1; }
if [ -z "${KEYGATE_FILTER_TOKEN:-}" ]; then
    KEYGATE_FILTER_TOKEN=$(cat "$data/filter.token")
fi
export KEYGATE_FILTER_TOKEN
admin_token_cmd="cat $data/admin.token"
[ -n "${KEYGATE_ADMIN_TOKEN:-}" ] && admin_token_cmd='echo $KEYGATE_ADMIN_TOKEN'

.venv/bin/envoy -c envoy/envoy.yaml --log-level warn --disable-hot-restart &
pids+=($!)

cat <<TXT

keygate demo: Envoy http://127.0.0.1:10000  key-service http://127.0.0.1:8081  upstream :8082

Console: open http://127.0.0.1:8081/ and sign in with the admin token ($admin_token_cmd).
Or, in another shell, from $(pwd):

  ADMIN=\$($admin_token_cmd)
  KEY=\$(curl -s -H "Authorization: Bearer \$ADMIN" -H 'content-type: application/json' \\
        -d '{"name":"dev-local"}' http://127.0.0.1:8081/api/v1/keys | sed 's/.*"key":"\\([^"]*\\)".*/\\1/')
  curl -s http://127.0.0.1:10000/v1/chat/completions -H "Authorization: Bearer \$KEY" \\
        -H 'content-type: application/json' \\
        -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hello there"}]}'

Without a key the same call gets 401 missing_api_key. Ctrl-C stops everything.
TXT

wait -n "${pids[@]}"
echo "demo: a process exited; stopping the others" >&2
