#!/usr/bin/env bash
# Schemathesis against a real doppel: the release build on a free loopback port, a fresh
# data dir with the demo data and an admin token. It generates requests from
# /api/v1/openapi.json (examples, coverage, fuzzing, and stateful sequences that follow the
# links it infers between operations) and fails on any 5xx, any response the document does
# not describe, and schema-valid requests refused or invalid ones accepted.
# The event streams (/events, /jobs/{id}/events) are left out: they never end, so a
# generic client can only time out on them; tests/streams.rs covers them. So is revoking a
# token: the stateful phase finds the run's own token in GET /tokens and revokes it, and
# every later request would be a 401; tests/tokens.rs covers it.
# Env: FUZZ_EXAMPLES (per operation, default 100), FUZZ_SEED (default 1: CI runs the same
# cases every time; any other seed explores more), FUZZ_MIN_CASES (default 1000).
set -euo pipefail
cd "$(dirname "$0")/.."

bin=target/release/doppel
st=target/schemathesis-venv/bin/schemathesis
[ -x "$bin" ] || { echo "api-fuzz.sh: $bin is missing; run 'make build' first" >&2; exit 1; }
[ -x "$st" ] || { echo "api-fuzz.sh: $st is missing; run 'make test' (it sets it up)" >&2; exit 1; }

tmp=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export DOPPEL_DATA_DIR="$tmp/data"
"$bin" serve --addr "127.0.0.1:$port" --container-network 10.91.0.0/16 >"$tmp/server.log" 2>&1 &
pid=$!
cleanup() {
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  # Containers outlive doppel: end them, their namespaces and bridges.
  "$bin" purge-containers 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

for _ in $(seq 1 120); do
  curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break
  kill -0 "$pid" 2>/dev/null || { cat "$tmp/server.log" >&2; exit 1; }
  sleep 0.5
done
token=$("$bin" token create --user admin)

set +e
"$st" run "http://127.0.0.1:$port/api/v1/openapi.json" \
  --header "Authorization: Bearer $token" \
  --checks all \
  --exclude-path-regex '(events$|^/tokens/)' \
  --max-examples "${FUZZ_EXAMPLES:-100}" \
  --seed "${FUZZ_SEED:-1}" \
  --request-timeout 30 \
  --no-color 2>&1 | tee "$tmp/out.txt"
status=${PIPESTATUS[0]}
set -e
if grep -q "panicked" "$tmp/server.log"; then
  echo "api-fuzz.sh: doppel panicked:" >&2
  grep -A5 "panicked" "$tmp/server.log" >&2
  exit 1
fi
[ "$status" = 0 ] || exit "$status"
cases=$(sed -n 's/^ *\([0-9][0-9]*\) generated.*/\1/p' "$tmp/out.txt" | tail -1)
if [ "${cases:-0}" -lt "${FUZZ_MIN_CASES:-1000}" ]; then
  echo "api-fuzz.sh: only ${cases:-0} test cases were generated (want ${FUZZ_MIN_CASES:-1000})" >&2
  exit 1
fi
echo "api-fuzz.sh: $cases test cases, no failure"
