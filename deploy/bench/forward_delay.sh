#!/usr/bin/env bash
# Time a packet spends in the node (`hearth_forward_delay_seconds`: socket arrival to the
# batch that carried its copy handed to the kernel, one copy in 8 sampled) under a
# hearth-loadgen scenario: the histogram's change over 15 s of the hold, as the share of
# samples under each bucket bound. Server on CPU 0, load generator on CPU 1.
#
#   deploy/bench/forward_delay.sh [OUT_DIR] [loadgen scenario args...]
#   HEARTH=/tmp/old/hearth deploy/bench/forward_delay.sh target/fd-old   # A/B: alternate binaries
#
# Default scenario: audio-rooms 100 x 4 (60,000 packets/s out). Needs release builds
# (cargo build --release --bin hearth --bin hearth-loadgen) and python3.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-target/bench-forward-delay}; shift || true
[ $# -gt 0 ] || set -- --preset audio-rooms --meetings 100 --ramp 100
mkdir -p "$out"
hearth=${HEARTH:-target/release/hearth}
lg=${LOADGEN:-target/release/hearth-loadgen}
[ -x "$hearth" ] && [ -x "$lg" ] || { echo "build first: cargo build --release --bin hearth --bin hearth-loadgen"; exit 2; }
KEY=APIbench; SECRET=bench-secret-0123456789abcdef; PORT=37993
taskset -c 0 "$hearth" --http 127.0.0.1:$PORT --media-port 0 --turn-port 0 --max-connections-per-ip 100000 \
  --api-key $KEY --api-secret $SECRET --data-dir "$out/data" >"$out/hearth.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 200); do curl -sf http://127.0.0.1:$PORT/readyz >/dev/null && break; sleep 0.05; done
taskset -c 1 "$lg" --url http://127.0.0.1:$PORT --api-key $KEY --api-secret $SECRET \
  --duration 25s "$@" >"$out/report.txt" 2>"$out/progress" &
lgpid=$!
# Joined and holding by 12 s for the presets' default ramps; 15 s of the hold after that.
sleep 12; curl -sf http://127.0.0.1:$PORT/metrics >"$out/metrics-start"
sleep 15; curl -sf http://127.0.0.1:$PORT/metrics >"$out/metrics-end"
wait $lgpid || true
python3 - "$out/metrics-start" "$out/metrics-end" <<'PY'
import re, sys
def buckets(path):
    d = {}
    for line in open(path):
        m = re.match(r'hearth_forward_delay_seconds_bucket\{le="([^"]+)"\} (\S+)', line)
        if m:
            d[m.group(1)] = float(m.group(2))
    return d
a, b = buckets(sys.argv[1]), buckets(sys.argv[2])
total = b.get("+Inf", 0) - a.get("+Inf", 0)
if total <= 0:
    sys.exit("no samples: did the scenario forward anything?")
print(f"samples {int(total)}")
for le in sorted(b, key=lambda k: float("inf") if k == "+Inf" else float(k)):
    print(f"under {le:>9} s: {100 * (b[le] - a.get(le, 0)) / total:6.2f} %")
PY
grep -E "loss|added latency" "$out/report.txt" | head -3 || true
