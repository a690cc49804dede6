#!/usr/bin/env bash
# --find-max for Hearth and for Janus with the same scenario (default: audio-rooms, 10
# meetings more per 15 s stage), server on CPU 0, load generator on CPU 1.
#   deploy/bench/find_max.sh [OUT_DIR] [extra loadgen args...]
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-target/bench-findmax}; shift || true
mkdir -p "$out"
KEY=APIbench; SECRET=bench-secret-0123456789abcdef; PORT=37890
args=(--preset audio-rooms --meetings 10 --step 10 --ramp 100 --duration 15s --find-max "$@")
taskset -c 0 target/release/hearth --http 127.0.0.1:$PORT --media-port 0 --turn-port 0 --max-connections-per-ip 100000 \
  --api-key $KEY --api-secret $SECRET --data-dir "$out/data" >"$out/hearth.log" 2>&1 &
pid=$!
for _ in $(seq 200); do curl -sf http://127.0.0.1:$PORT/readyz >/dev/null && break; sleep 0.05; done
taskset -c 1 target/release/hearth-loadgen --url http://127.0.0.1:$PORT --api-key $KEY --api-secret $SECRET \
  --server-pid $pid --json "$out/hearth.json" --svg "$out/hearth.svg" "${args[@]}" >"$out/hearth.txt" 2>"$out/hearth.progress" || true
kill $pid; wait $pid 2>/dev/null || true
jpid=$(deploy/bench/janus_netns.sh 2>"$out/janus.log")
taskset -a -p -c 0 "$jpid" >/dev/null
taskset -c 1 target/release/hearth-loadgen --target janus --local-net 10.78.0.0 --server-pid "$jpid" \
  --json "$out/janus.json" --svg "$out/janus.svg" "${args[@]}" >"$out/janus.txt" 2>"$out/janus.progress" || true
deploy/bench/janus_netns.sh --stop >>"$out/janus.log" 2>&1 || true
for t in hearth janus; do echo "== $t"; grep -E "^stage" "$out/$t.progress" || true; grep -E "largest load" "$out/$t.txt" || true; done
