#!/usr/bin/env bash
# Where a forwarded packet's server CPU goes: runs one hearth-loadgen scenario (server on
# CPU 0, load generator on CPU 1), records the server with `perf record --call-graph dwarf`
# for 8 s in the middle of the hold, and splits the samples into kernel / cipher / transport /
# Hearth / runtime buckets, in percent and in µs per forwarded packet.
#
#   deploy/bench/profile_forwarding.sh [OUT_DIR] [loadgen scenario args...]
#   deploy/bench/profile_forwarding.sh target/prof --preset big-audio-room --meetings 1 --participants 100 --ramp 50
#
# Needs: release builds (cargo build --release --bin hearth --bin hearth-loadgen), perf
# (apt-get install -y linux-perf), python3, and permission to profile (root, or
# kernel.perf_event_paranoid <= 1).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-target/prof}; shift || true
[ $# -gt 0 ] || set -- --preset big-audio-room --meetings 1 --participants 100 --ramp 50
mkdir -p "$out"
hearth=${HEARTH:-target/release/hearth}
lg=target/release/hearth-loadgen
[ -x "$hearth" ] && [ -x "$lg" ] || { echo "build first: cargo build --release --bin hearth --bin hearth-loadgen"; exit 2; }
command -v perf >/dev/null || { echo "install perf: apt-get install -y linux-perf"; exit 2; }
KEY=APIbench; SECRET=bench-secret-0123456789abcdef; PORT=37895
taskset -c 0 "$hearth" --http 127.0.0.1:$PORT --media-port 0 --turn-port 0 --max-connections-per-ip 100000 \
  --api-key $KEY --api-secret $SECRET --data-dir "$out/data" >"$out/hearth.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 200); do curl -sf http://127.0.0.1:$PORT/readyz >/dev/null && break; sleep 0.05; done
taskset -c 1 "$lg" --url http://127.0.0.1:$PORT --api-key $KEY --api-secret $SECRET \
  --server-pid $pid --duration "${DURATION:-25s}" --json "$out/report.json" "$@" \
  >"$out/report.txt" 2>"$out/progress" &
lgpid=$!
# Joined and holding by then for the presets' default ramps; the profile is the steady state.
sleep "${PROFILE_AFTER:-12}"
perf record -F 499 --call-graph dwarf,65528 -p $pid -o "$out/perf.data" -- sleep 8 2>"$out/perf.log"
wait $lgpid || true
perf script -i "$out/perf.data" -F ip,sym --no-inline 2>/dev/null >"$out/stacks.txt"
us=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["server"]["cpu_pct_avg"]*10000/max(r["throughput"]["pps_in"],1))' "$out/report.json")
python3 deploy/bench/cpu_breakdown.py "$out/stacks.txt" "$us" | tee "$out/breakdown.md"
