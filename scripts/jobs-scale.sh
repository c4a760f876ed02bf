#!/usr/bin/env bash
# How the job lists hold up when jobs pile up: a doppel data dir (demo data, no runtime)
# given JOBS jobs (default 200,000: 50 copies of a demo container, syncs of each) and
# CONTAINERS more containers in a project of their own (default 10,000), then the
# lists timed end to end (curl, best of 5), for each build given; each gets its own copy
# of the data dir (a newer build migrates it).
#
#   scripts/jobs-scale.sh /tmp/doppel-before target/release/doppel
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 BINARY..." >&2; exit 2; }
jobs=${JOBS:-200000}
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
serve() { # BINARY DATA PORT
  "$1" --data-dir "$2" serve --no-runtime --addr "127.0.0.1:$3" >"$2.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 150); do curl -sf -o /dev/null "http://127.0.0.1:$3/healthz" && return; sleep 0.2; done
  echo "doppel did not start: $2.log" >&2; exit 1
}
# The data: the first build seeds the demo, then the jobs are written while it is stopped.
seed="$work/seed"
p=$(port); serve "$1" "$seed" "$p"; kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
python3 - "$seed/doppel.db" "$jobs" <<'PY'
import os, sqlite3, sys, time
db, n = sys.argv[1], int(sys.argv[2])
c = sqlite3.connect(db)
cols = [r[1] for r in c.execute("PRAGMA table_info(containers)")]
src = dict(zip(cols, c.execute("SELECT * FROM containers WHERE deleted_at IS NULL LIMIT 1").fetchone()))
copies = []
for i in range(50):
    row = dict(src, id=os.urandom(12).hex(), name=f"scale-copy-{i}", source_container_id=src["id"], ssh_public_key=None)
    c.execute(f"INSERT INTO containers ({','.join(row)}) VALUES ({','.join('?' * len(row))})", list(row.values()))
    copies.append(row["id"])
user = c.execute("SELECT id FROM users LIMIT 1").fetchone()[0]
t0 = int(time.time() * 1000) - 86_400_000 * 30
c.executemany(
    "INSERT INTO jobs (id, kind, status, project_id, container_id, source_container_id, requested_by, params, created_at)"
    " VALUES (?, ?, 'succeeded', ?, ?, ?, ?, '{}', ?)",
    ((os.urandom(12).hex(), "copy" if k < 50 else "sync", src["project_id"], copies[k % 50], src["id"], user, t0 + 13 * k) for k in range(n)))
# A project of many containers beside them (CONTAINERS, default 10,000), none of them the
# demo member's.
other = os.urandom(12).hex()
c.execute("INSERT INTO projects (id, name, created_at) VALUES (?, 'scale-other', 1)", (other,))
for i in range(int(os.environ.get("CONTAINERS", "10000"))):
    row = dict(src, id=os.urandom(12).hex(), name=f"scale-other-{i}", project_id=other, source_container_id=None, ssh_public_key=None)
    c.execute(f"INSERT INTO containers ({','.join(row)}) VALUES ({','.join('?' * len(row))})", list(row.values()))
c.commit()
print(f"{n} jobs written", file=sys.stderr)
PY
source_id=$(python3 -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute(\"SELECT source_container_id FROM containers WHERE name = 'scale-copy-0'\").fetchone()[0])" "$seed/doppel.db")
copy_id=$(python3 -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute(\"SELECT id FROM containers WHERE name = 'scale-copy-0'\").fetchone()[0])" "$seed/doppel.db")
printf '| build | path | best of 5 (ms) |\n|---|---|---|\n'
for bin in "$@"; do
  data="$work/data-$(basename "$bin")-$RANDOM"
  cp -a "$seed" "$data"
  p=$(port); serve "$bin" "$data" "$p"
  token=$("$bin" --data-dir "$data" token create --user admin)
  for path in "/api/v1/jobs?limit=100" "/api/v1/jobs?status=running" "/api/v1/jobs?status=failed" "/api/v1/jobs?status=succeeded" "/api/v1/jobs?kind=copy" "/api/v1/jobs?container_id=$copy_id" \
      "/api/v1/jobs?container_id=$source_id" "/api/v1/sync-status"; do
    best=$(for _ in 1 2 3 4 5; do
      curl -sf -o /dev/null -w '%{time_total}\n' -H "Authorization: Bearer $token" "http://127.0.0.1:$p$path"
    done | sort -g | head -1)
    printf '| %s | %s | %.1f |\n' "$bin" "${path//$source_id/<source>}" "$(python3 -c "print($best * 1000)")" | sed "s/$copy_id/<copy>/"
  done
  # A member of other projects (the demo's alice): none of these jobs are theirs.
  member=$("$bin" --data-dir "$data" token create --user alice)
  best=$(for _ in 1 2 3 4 5; do
    curl -sf -o /dev/null -w '%{time_total}\n' -H "Authorization: Bearer $member" "http://127.0.0.1:$p/api/v1/jobs?limit=100"
  done | sort -g | head -1)
  printf '| %s | %s | %.1f |\n' "$bin" "/api/v1/jobs?limit=100 (alice, a member of other projects)" "$(python3 -c "print($best * 1000)")"
  best=$(for _ in 1 2 3 4 5; do
    curl -sf -o /dev/null -w '%{time_total}\n' -H "Authorization: Bearer $member" "http://127.0.0.1:$p/api/v1/containers"
  done | sort -g | head -1)
  printf '| %s | %s | %.1f |\n' "$bin" "/api/v1/containers (alice; the platform has 10,000 more in a project not hers)" "$(python3 -c "print($best * 1000)")"
  kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
done
