#!/usr/bin/env bash
# Does live transcription disturb the media? One meeting of N audio publishers who all
# speak, driven by hearth-loadgen, with captions off and on, alternating, in one run. The
# node (and its hearth-stt workers, which inherit its affinity) on CPU 0, the load generator
# on CPU 1. Loadgen's packets carry no audio level, so every packet of every track is
# decoded: the worst case for the node's audio threads. Its payloads are not speech, so the
# engine's share depends on what the VAD makes of them (reported: utterances, engine jobs).
#
#   deploy/bench/captions_media.sh [--speakers N] [--duration 30s] [--rounds R]
#
# Prints per round: captions off/on, loss, p50/p99 added latency, node CPU (the hearth
# process only: media and audio threads), and the transcription counters from /metrics.
set -euo pipefail
cd "$(dirname "$0")/../.."
speakers=8 duration=30s rounds=2
while [ $# -gt 0 ]; do
  case "$1" in
    --speakers) speakers=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    *) echo "usage: $0 [--speakers N] [--duration 30s] [--rounds R]" >&2; exit 2 ;;
  esac
done
hearth=${HEARTH:-target/release/hearth}
lg=${LOADGEN:-target/release/hearth-loadgen}
model=${HEARTH_STT_MODEL:-data/models/whisper-tiny.en}
[ -x "$hearth" ] && [ -x "$lg" ] && [ -x "$(dirname "$hearth")/hearth-stt" ] || {
  echo "build first: cargo build --release --bin hearth --bin hearth-loadgen --bin hearth-stt" >&2; exit 2; }
KEY=APIbench SECRET=bench-secret-0123456789abcdef PORT=37890
out=$(mktemp -d /tmp/hearth-captions-media.XXXXXX)
admin=$("$hearth" token --admin --identity bench --api-key $KEY --api-secret $SECRET | tail -1)

captions_on() { # turn captions on in every meeting as soon as it exists
  for _ in $(seq 400); do
    ids=$(curl -sf -H "authorization: Bearer $admin" http://127.0.0.1:$PORT/v1/meetings |
      python3 -c 'import json,sys; print(" ".join(m["id"] for m in json.load(sys.stdin)["meetings"]))' || true)
    if [ -n "$ids" ]; then
      for id in $ids; do
        curl -sf -X PATCH -H "authorization: Bearer $admin" -H 'content-type: application/json' \
          -d '{"settings":{"transcription":{"enabled":true}}}' \
          "http://127.0.0.1:$PORT/v1/meetings/$id" >/dev/null
      done
      return
    fi
    sleep 0.05
  done
}

metric() { curl -sf "http://127.0.0.1:$PORT/metrics" | awk -v m="$1" '$1 ~ "^"m {s += $2} END {print s + 0}'; }

for round in $(seq "$rounds"); do
  for mode in off on; do
    taskset -c 0 "$hearth" --http 127.0.0.1:$PORT --media-port 0 --turn-port 0 --max-connections-per-ip 100000 --no-ledger \
      --api-key $KEY --api-secret $SECRET --data-dir "$out/data" --stt-model "$model" \
      --transcription-threads 1 >"$out/$round-$mode.log" 2>&1 &
    pid=$!
    for _ in $(seq 200); do curl -sf http://127.0.0.1:$PORT/readyz >/dev/null && break; sleep 0.05; done
    [ $mode = on ] && captions_on &
    taskset -c 1 "$lg" --url http://127.0.0.1:$PORT --api-key $KEY --api-secret $SECRET \
      --server-pid $pid --meetings 1 --participants "$speakers" --speakers "$speakers" \
      --video-publishers 0 --duration "$duration" --json "$out/$round-$mode.json" \
      >"$out/$round-$mode.txt" 2>/dev/null || true
    jobs_done=$(metric hearth_transcription_results_total)
    dropped=$(metric hearth_transcription_dropped_total)
    kill $pid; wait $pid 2>/dev/null || true
    python3 - "$out/$round-$mode.json" "$round" "$mode" "$jobs_done" "$dropped" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
s = r["server"]
print(f"round {sys.argv[2]} captions {sys.argv[3]:3}: loss {r['loss_pct']:.3f} %  "
      f"latency p50 {r['latency_ms']['p50']:.2f} ms p99 {r['latency_ms']['p99']:.2f} ms  "
      f"node CPU {s['cpu_pct_avg'] or 0:.1f} % (max {s['cpu_pct_max'] or 0:.1f})  "
      f"engine results {sys.argv[4]}  dropped {sys.argv[5]}")
EOF
  done
done
rm -rf "$out"
