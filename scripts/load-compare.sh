#!/usr/bin/env bash
# Compares doppel builds under `make load`, for a machine whose timings are noisy (shared
# cores): runs the load N times per build, the builds taking turns, and prints each
# figure's median and range per build.
#
#   scripts/load-compare.sh 5 /tmp/doppel-before target/perf/doppel
#
# Copy a build aside first (cp target/perf/doppel /tmp/doppel-before). LOAD_POSTS,
# LOAD_SUBSCRIBERS and LOAD_ROUNDS pass through.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 2 ]; then
  echo "usage: $0 RUNS BINARY..." >&2
  exit 2
fi
runs=$1
shift
bench=$(cargo bench --profile perf -p doppel --bench load --no-run 2>&1 \
  | sed -n 's/.*Executable benches\/load.rs (\(.*\))/\1/p' | tail -1)
[ -x "$bench" ] || { echo "cannot build the load bench" >&2; exit 1; }
ulimit -n 8192 2>/dev/null || true
results=$(mktemp)
trap 'rm -f "$results"' EXIT
for run in $(seq 1 "$runs"); do
  for bin in "$@"; do
    echo "run $run/$runs: $bin" >&2
    DOPPEL_LOAD_BIN=$(realpath "$bin") "$bench" 2>/dev/null \
      | awk -v b="$bin" '/^[a-z0-9_]+ [0-9.]+$/ { print b, $1, $2 }' >> "$results"
  done
done
# Median and range of each figure, per build.
sort -k1,1 -k2,2 -k3,3g "$results" | awk '
  function flush() {
    if (n) printf "%-34s %-40s median %8.1f  [%.1f - %.1f]\n", key, bin, v[int((n + 1) / 2)], v[1], v[n]
  }
  { k = $2; b = $1
    if (k != key || b != bin) { flush(); key = k; bin = b; n = 0 }
    v[++n] = $3 }
  END { flush() }' | sort -k1,1 -s
