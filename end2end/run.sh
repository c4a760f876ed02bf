#!/usr/bin/env bash
# Runs the Playwright tests against a real doppel: the release build, a fresh data dir with
# demo data, a free loopback port, and an admin password set the scripted way.
set -euo pipefail
cd "$(dirname "$0")"

bin=../target/release/doppel
[ -x "$bin" ] || { echo "run.sh: $bin is missing; run 'make build' first" >&2; exit 1; }
tmp=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export DOPPEL_DATA_DIR="$tmp/data" LEPTOS_SITE_ROOT=../target/site

"$bin" serve --addr "127.0.0.1:$port" >"$tmp/server.log" 2>&1 &
pid=$!
cleanup() {
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  mkdir -p test-results && cp "$tmp/server.log" test-results/server.log 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

for _ in $(seq 1 120); do
  if curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1; then break; fi
  kill -0 "$pid" 2>/dev/null || { echo "doppel exited:" >&2; cat "$tmp/server.log" >&2; exit 1; }
  sleep 0.5
done

password=$(python3 -c 'import secrets; print(secrets.token_urlsafe(18))')
printf '%s\n' "$password" | "$bin" user set-password admin
printf '%s\n' "$password" | "$bin" user set-password alice

DOPPEL_URL="http://127.0.0.1:$port" DOPPEL_PASSWORD="$password" npx playwright test "$@"
