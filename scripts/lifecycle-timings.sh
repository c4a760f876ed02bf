#!/bin/bash
# Lifecycle timings against a real doppel (the release build, demo data, as root): stop,
# start and restart of a container (5 runs), and 3 copies of web-app from request to a
# running copy, each followed by a sync of the running copy (its downtime). One run each;
# the machines are shared and noisy.
set -eu
cd "$(dirname "$0")/.."
bin=target/release/doppel
[ -x "$bin" ] || { echo "lifecycle-timings.sh: $bin is missing; run make build first" >&2; exit 1; }
d=$(mktemp -d); port=3977
$bin --data-dir $d serve --addr 127.0.0.1:$port --container-network 10.93.0.0/16 --site-root target/site > $d/log 2>&1 &
pid=$!
trap "kill $pid; wait $pid 2>/dev/null; $bin --data-dir $d purge-containers 2>/dev/null; rm -rf $d" EXIT
t0=$(date +%s%N)
until curl -sf http://127.0.0.1:$port/healthz >/dev/null; do sleep 0.05; done
echo "first start with demo data (seed + 4 containers started): $(( ($(date +%s%N)-t0)/1000000 )) ms"
T=$($bin --data-dir $d token create --user admin)
api() { curl -s -H "Authorization: Bearer $T" -H 'Content-Type: application/json' "$@"; }
id() { api http://127.0.0.1:$port/api/v1/containers | python3 -c "import json,sys; print([c['id'] for c in json.load(sys.stdin)['containers'] if c['name']=='$1'][0])"; }
etl=$(id etl-worker); web=$(id web-app)
for i in 1 2 3 4 5; do
  s=$(api -o /dev/null -w '%{time_total}' -X POST "http://127.0.0.1:$port/api/v1/containers/$etl/stop")
  st=$(api -o /dev/null -w '%{time_total}' -X POST "http://127.0.0.1:$port/api/v1/containers/$etl/start")
  r=$(api -o /dev/null -w '%{time_total}' -X POST "http://127.0.0.1:$port/api/v1/containers/$etl/restart")
  echo "run $i: stop ${s}s start ${st}s restart ${r}s"
done
proj=$(api http://127.0.0.1:$port/api/v1/projects | python3 -c "import json,sys; print([p['id'] for p in json.load(sys.stdin)['projects'] if p['name']=='web-platform'][0])")
for i in 1 2 3; do
  t0=$(date +%s%N)
  job=$(api -X POST "http://127.0.0.1:$port/api/v1/containers/$web/copy" -d "{\"target_project_id\":\"$proj\",\"name\":\"m$i\"}" | python3 -c "import json,sys; b=json.load(sys.stdin); print(b['job']['url'], b['container']['id'])")
  url=${job% *}; cid=${job#* }
  until api http://127.0.0.1:$port$url | grep -q '"status":"succeeded"'; do sleep 0.02; done
  echo "copy $i: request to running copy $(( ($(date +%s%N)-t0)/1000000 )) ms; status $(api http://127.0.0.1:$port/api/v1/containers/$cid | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])')"
  root=$(api http://127.0.0.1:$port/api/v1/containers/$web | python3 -c 'import json,sys; print(json.load(sys.stdin)["root_path"])')
  echo "<h1>edit $i</h1>" > $root/www/content.html
  surl=$(api -X POST "http://127.0.0.1:$port/api/v1/containers/$cid/sync" | python3 -c "import json,sys; print(json.load(sys.stdin)['job']['url'])")
  until api http://127.0.0.1:$port$surl | grep -q '"status":"succeeded"'; do sleep 0.02; done
  api http://127.0.0.1:$port$surl | python3 -c "import json,sys; j=json.load(sys.stdin)['summary']; print('  sync of the running copy: duration', j['duration_ms'], 'ms, downtime', j['downtime_ms'], 'ms')"
done
