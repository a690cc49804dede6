#!/usr/bin/env bash
# The same hearth-loadgen scenarios against Hearth and against Janus's VideoRoom, in one
# run on one machine: each server pinned to CPU 0, the load generator to CPU 1.
#
#   deploy/bench/loadgen_vs_janus.sh [OUT_DIR]
#
# Needs release builds (cargo build --release --bin hearth --bin hearth-loadgen), root (for
# the network namespace Janus runs in: it ignores loopback interfaces), and Debian's janus
# package (apt-get install -y janus). deploy/bench/janus_netns.sh starts Janus in namespace
# `janusns` behind a veth pair and routes 10.78.0.0/16 (the simulated participants'
# addresses) to this host. Results: OUT_DIR/<scenario>-<target>.{json,svg,txt}.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-target/bench-loadgen}
mkdir -p "$out"
hearth=target/release/hearth
lg=target/release/hearth-loadgen
[ -x "$hearth" ] && [ -x "$lg" ] || { echo "build first: cargo build --release --bin hearth --bin hearth-loadgen"; exit 2; }
command -v janus >/dev/null || { echo "install janus: apt-get install -y janus"; exit 2; }
KEY=APIbench; SECRET=bench-secret-0123456789abcdef; PORT=37880
DURATION=${DURATION:-30s}

# name | loadgen arguments
scenarios=(
  "audio-rooms-100|--preset audio-rooms --meetings 100 --ramp 100"
  "audio-rooms-200|--preset audio-rooms --meetings 200 --ramp 100"
  "big-audio-room-100|--preset big-audio-room --meetings 1 --participants 100 --ramp 50"
  "video-meeting-4x8|--preset video-meeting --meetings 4 --participants 8 --ramp 20"
  "livestream-1x100|--preset livestream --meetings 1 --participants 100 --ramp 50"
)

run_hearth() { # name args
  local name=$1; shift
  taskset -c 0 "$hearth" --http 127.0.0.1:$PORT --media-port 0 --turn-port 0 \
    --api-key $KEY --api-secret $SECRET --data-dir "$out/data" >"$out/$name-hearth.log" 2>&1 &
  local pid=$!
  for _ in $(seq 200); do curl -sf http://127.0.0.1:$PORT/readyz >/dev/null && break; sleep 0.05; done
  taskset -c 1 "$lg" --url http://127.0.0.1:$PORT --api-key $KEY --api-secret $SECRET \
    --server-pid $pid --duration "$DURATION" --json "$out/$name-hearth.json" \
    --svg "$out/$name-hearth.svg" "$@" >"$out/$name-hearth.txt" 2>"$out/$name-hearth.progress" || true
  kill $pid; wait $pid 2>/dev/null || true
}

run_janus() { # name args
  local name=$1; shift
  local pid
  pid=$(deploy/bench/janus_netns.sh 2>"$out/$name-janus.log")
  taskset -a -p -c 0 "$pid" >/dev/null
  taskset -c 1 "$lg" --target janus --janus-url http://10.77.0.2:8088/janus --local-net 10.78.0.0 \
    --server-pid "$pid" --duration "$DURATION" --json "$out/$name-janus.json" \
    --svg "$out/$name-janus.svg" "$@" >"$out/$name-janus.txt" 2>"$out/$name-janus.progress" || true
  deploy/bench/janus_netns.sh --stop >>"$out/$name-janus.log" 2>&1 || true
}

echo "machine: $(nproc) CPU ($(lscpu | awk -F: '/Model name/ {gsub(/^ +/,"",$2); print $2}')), $(uname -r); janus $(janus --version 2>/dev/null | head -1)"
for entry in "${scenarios[@]}"; do
  name=${entry%%|*}; args=${entry#*|}
  # shellcheck disable=SC2086
  run_hearth "$name" $args
  # shellcheck disable=SC2086
  run_janus "$name" $args
  for target in hearth janus; do
    python3 - "$out/$name-$target.json" "$name" "$target" <<'PY'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except Exception as e:
    print(f"{sys.argv[2]:<22} {sys.argv[3]:<7} no report ({e})"); sys.exit()
s = r["server"]; t = r["throughput"]; l = r["latency_ms"]
cpu = s.get("cpu_pct_avg") or 0
pps = t["pps_in"] or 1
print(f"{sys.argv[2]:<22} {sys.argv[3]:<7} joined {r['participants_joined']:>5}/{r['participants_planned']:<5} "
      f"loss {r['loss_pct']:6.3f}%  p50 {l['p50']:7.3f} ms  p99 {l['p99']:8.3f} ms  p99.9 {l['p999']:8.3f} ms  "
      f"out {t['pps_in']:8.0f} pkt/s  cpu {cpu:5.1f}%  {cpu*10000/pps:6.2f} µs/pkt  rss {s.get('rss_mb_peak') or 0:6.1f} MB  "
      f"join p95 {r['join_ms']['p95']:.0f} ms  loadgen cpu {s.get('loadgen_cpu_pct_avg') or 0:.0f}%")
PY
  done
done
