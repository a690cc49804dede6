#!/usr/bin/env bash
# Chaos under load: a scenario runs while actors die, and only the killed actors' own
# participants may notice; they must be back within the reconnect time.
#
#   deploy/bench/chaos.sh [OUT_DIR] [extra loadgen args...]
#   PARTS=restart HOLD=20s deploy/bench/chaos.sh target/bench-chaos
#
# Two drills, each under about 2 minutes, server on CPU 0 and load generator on CPU 1:
#
#  chaos    MEETINGS four-person audio meetings hold for HOLD with `hearth-loadgen
#           --reconnect --chaos-every EVERY --chaos-kinds KINDS`: every EVERY, a random
#           participant or meeting actor of the run is killed through the node's admin API
#           (gRPC AdminService.KillActor, as `hearthctl kill` does). Prints the per-kill
#           table: kind, participants inside the killed actor (affected), how many of them
#           noticed, bystanders that noticed anything within 5 s (a disconnect, an error, a
#           gap over 500 ms in the media of someone not killed; must be 0), and the time
#           until all affected were back (media flowing again).
#  restart  the same meetings hold for RESTART_HOLD with `--reconnect`; in the middle of the
#           hold the node gets `kill -9` and is started again at once on the same HTTP and
#           media ports. Prints how many participants lost their session, came back, and
#           their time back (from noticing the loss to media flowing again) p50/p95/max.
#
# Environment: PARTS="chaos restart", MEETINGS=20, HOLD=60s, EVERY=5s,
# KINDS=participant,meeting, RESTART_HOLD=30s, PORT=37980 (HTTP and gRPC),
# MEDIA_PORT=37982, HEARTH=target/release/hearth, LOADGEN=target/release/hearth-loadgen.
# Needs release builds (cargo build --release --bin hearth --bin hearth-loadgen), taskset,
# curl. Results: OUT_DIR/{chaos,restart}.{txt,json,progress} and OUT_DIR/hearth-*.log.
# Exit status: 0 if every drill's SLO held (including "all back, no one else noticed").
# The first drills found that with RUST_BACKTRACE=1 (inherited by the node) the default
# panic hook symbolized a backtrace on the killed actor's Tokio worker: about 400 ms of
# stalled forwarding and 130 MB of RSS. `hearth` now installs its own one-line panic hook
# (HEARTH_PANIC_BACKTRACE=1 for backtraces), so the drill runs with the shell's setting.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-target/bench-chaos}; shift || true
mkdir -p "$out"
hearth=${HEARTH:-target/release/hearth}
lg=${LOADGEN:-target/release/hearth-loadgen}
[ -x "$hearth" ] && [ -x "$lg" ] || { echo "build first: cargo build --release --bin hearth --bin hearth-loadgen"; exit 2; }
KEY=APIbench; SECRET=bench-secret-0123456789abcdef
PORT=${PORT:-37980}; MEDIA_PORT=${MEDIA_PORT:-37982}
MEETINGS=${MEETINGS:-20}; HOLD=${HOLD:-60s}; EVERY=${EVERY:-5s}
KINDS=${KINDS:-participant,meeting}; RESTART_HOLD=${RESTART_HOLD:-30s}
PARTS=${PARTS:-chaos restart}
scenario=(--preset audio-rooms --meetings "$MEETINGS" --participants 4 --ramp 100)
total=$((MEETINGS * 4))
pid=

start_node() { # $1: log name; $2: keep to keep the data directory (a restart)
  [ "${2:-}" = keep ] || rm -rf "$out/data"
  taskset -c 0 "$hearth" --http 127.0.0.1:$PORT --media-port "$MEDIA_PORT" --turn-port 0 \
    --api-key $KEY --api-secret $SECRET --data-dir "$out/data" >>"$out/hearth-$1.log" 2>&1 &
  pid=$!
  for _ in $(seq 400); do curl -sf http://127.0.0.1:$PORT/readyz >/dev/null && return 0; sleep 0.025; done
  echo "the node did not get ready (see $out/hearth-$1.log)"; return 1
}
stop_node() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  pid=
}
trap stop_node EXIT
loadgen() { # $1: name, then extra args
  local name=$1; shift
  taskset -c 1 "$lg" --url http://127.0.0.1:$PORT --api-key $KEY --api-secret $SECRET \
    --json "$out/$name.json" "${scenario[@]}" "$@" >"$out/$name.txt" 2>"$out/$name.progress"
}
# Half of a duration such as 30s, 2m or 1500ms, in seconds.
half() {
  case $1 in
    *ms) awk -v v="${1%ms}" 'BEGIN { print v / 2000 }' ;;
    *m) awk -v v="${1%m}" 'BEGIN { print v * 30 }' ;;
    *s) awk -v v="${1%s}" 'BEGIN { print v / 2 }' ;;
    *) awk -v v="$1" 'BEGIN { print v / 2 }' ;;
  esac
}

status=0
for part in $PARTS; do
  case $part in
  chaos)
    echo "== chaos: $MEETINGS x 4 audio, hold $HOLD, a $KINDS actor killed every $EVERY"
    start_node chaos
    loadgen chaos --duration "$HOLD" --reconnect --chaos-every "$EVERY" --chaos-kinds "$KINDS" \
      --server-pid "$pid" "$@" || status=1
    stop_node
    grep -E "^(participants joined|loss|added latency|errors|disconnected|time back|others that|SLO)" "$out/chaos.txt" || true
    echo
    sed -n '/^chaos:/,$p' "$out/chaos.txt"
    ;;
  restart)
    echo "== restart: $MEETINGS x 4 audio, hold $RESTART_HOLD, kill -9 of the node in the middle"
    start_node restart
    loadgen restart --duration "$RESTART_HOLD" --reconnect "$@" &
    lpid=$!
    # Everyone joined and connected, then half the hold.
    for _ in $(seq 600); do
      grep -q "joined $total/$total connected $total " "$out/restart.progress" 2>/dev/null && break
      sleep 0.1
    done
    sleep "$(half "$RESTART_HOLD")"
    t0=$(date +%s%N)
    kill -9 "$pid"; wait "$pid" 2>/dev/null || true
    start_node restart keep
    t1=$(date +%s%N)
    echo "node killed (kill -9) and ready again on the same ports in $(((t1 - t0) / 1000000)) ms"
    wait $lpid || status=1
    stop_node
    grep -E "^(participants joined|loss|errors|disconnected|time back|others that|SLO)" "$out/restart.txt" || true
    ;;
  *) echo "unknown part $part (chaos, restart)"; exit 2 ;;
  esac
  echo
done
exit $status
