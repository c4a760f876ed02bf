#!/usr/bin/env bash
# Runs the Playwright tests against a real doppel: the release build, a fresh data dir with
# demo data, a free loopback port, and passwords set the scripted way (stdin).
set -euo pipefail
cd "$(dirname "$0")"

bin=../target/release/doppel
[ -x "$bin" ] || { echo "run.sh: $bin is missing; run 'make build' first" >&2; exit 1; }
tmp=$(mktemp -d)
port=$(node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')
export DOPPEL_DATA_DIR="$tmp/data" LEPTOS_SITE_ROOT=../target/site

# Containers run (as root): on a network of their own, so a `make run` beside is no bother.
"$bin" serve --addr "127.0.0.1:$port" --container-network 10.90.0.0/16 >"$tmp/server.log" 2>&1 &
pid=$!
cleanup() {
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  # Containers outlive doppel: end them, their namespaces and bridges.
  "$bin" purge-containers 2>/dev/null || true
  mkdir -p test-results && cp "$tmp/server.log" test-results/server.log 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

up=0
for _ in $(seq 1 120); do
  if node -e "fetch('http://127.0.0.1:$port/healthz').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"; then
    up=1
    break
  fi
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.5
done
if [ "$up" != 1 ]; then
  echo "run.sh: doppel did not come up:" >&2
  cat "$tmp/server.log" >&2
  exit 1
fi

password=$(node -e 'console.log(require("crypto").randomBytes(18).toString("base64url"))')
printf '%s\n' "$password" | "$bin" user set-password admin
printf '%s\n' "$password" | "$bin" user set-password alice

DOPPEL_URL="http://127.0.0.1:$port" DOPPEL_PASSWORD="$password" npx playwright test "$@"
