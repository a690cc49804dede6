#!/usr/bin/env bash
# The floor of this machine for an SFU's traffic shape: the same participants, packets and
# rates as the Hearth and Janus runs, through a forwarder that does no protocol work, with
# the same pinning (forwarder on CPU 0, load generator on CPU 1) and the same measurement
# (the forwarder's utime+stime from /proc/PID/stat, per packet the participants received).
#
#   deploy/bench/floor.sh [OUT_DIR]
#   DURATION=10s FLOOR_MODE=both deploy/bench/floor.sh target/bench-floor
#
# How the traffic gets there. The load generator normally speaks WebRTC (signaling, ICE,
# DTLS, SRTP), which a no-protocol forwarder cannot answer, so `hearth-loadgen --target
# floor` skips all of it: each simulated participant sends one 8-byte registration
# datagram ("HFLR" + meeting number) from its own address, then the RTP packets it would
# send to Hearth (same payload sizes, 20 ms audio and 30 fps video timing, same addresses
# and sockets), each padded by the 16 bytes of SRTP's AES-GCM tag, and counts what comes
# back exactly as in the WebRTC runs (loss, latency, packets out). The forwarder,
# deploy/bench/floor_forwarder.c (single thread, recvmmsg), sends each datagram to every
# other registered member of the sender's meeting: one sendto per copy (FLOOR_MODE=sendto,
# the default and what Hearth does), or sendmmsg per receive batch (FLOOR_MODE=sendmmsg),
# or both one after the other (FLOOR_MODE=both). It does no RTCP, no encryption, no
# sequence rewriting, no congestion control: what it costs is the kernel's UDP receive and
# send paths on this machine plus a table lookup, the least any SFU that sends one
# datagram per copy pays. Traffic stays on loopback (127.0.0.1 and 127.64.0.0/10).
#
# Environment:
#   DURATION=10s       hold after the ramp (the scenarios' ramps add 1 to 2 s)
#   FLOOR_MODE=sendto  sendto | sendmmsg | both
#   FLOOR_SCENARIOS="big-audio-room-100 video-meeting-4x8"   names from the list below
#   FLOOR_PORT=37990   LOADGEN=target/release/hearth-loadgen   CC=cc
#
# Needs: a C compiler, hearth-loadgen (cargo build --release -p hearth-loadgen), python3,
# taskset. Results: OUT_DIR/<scenario>-floor[-mmsg].{json,txt,progress,counters}.
#
# deploy/bench/loadgen_vs_janus.sh sources this file for floor_build and run_floor, and
# runs the floor in the same run as Hearth and Janus.
set -euo pipefail

# name | loadgen arguments (the same as loadgen_vs_janus.sh's)
floor_all_scenarios=(
  "audio-rooms-100|--preset audio-rooms --meetings 100 --ramp 100"
  "audio-rooms-200|--preset audio-rooms --meetings 200 --ramp 100"
  "big-audio-room-100|--preset big-audio-room --meetings 1 --participants 100 --ramp 50"
  "video-meeting-4x8|--preset video-meeting --meetings 4 --participants 8 --ramp 20"
  "livestream-1x100|--preset livestream --meetings 1 --participants 100 --ramp 50"
)

# Seconds in a loadgen duration (30s, 2m, 1500ms).
floor_secs() {
  python3 -c 'import re,sys; m=re.fullmatch(r"([0-9.]+)(ms|s|m|h)?", sys.argv[1].strip()); n=float(m.group(1)); print(int(n*{"ms":0.001,"s":1,"m":60,"h":3600}[m.group(2) or "s"]+0.999))' "$1"
}

# floor_build OUT: compiles the forwarder to OUT/floor_forwarder; prints its path.
floor_build() {
  local dir
  dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
  ${CC:-cc} -O2 -Wall -o "$1/floor_forwarder" "$dir/floor_forwarder.c" >&2
  echo "$1/floor_forwarder"
}

# run_floor OUT FORWARDER MODE NAME LOADGEN_ARGS...: one scenario against the floor, the
# forwarder on CPU 0 and the generator on CPU 1. MODE is sendto or sendmmsg; the target
# is called floor or floor-mmsg in the file names.
run_floor() {
  local out=$1 fwd=$2 mode=$3 name=$4; shift 4
  local target=floor flag=()
  [ "$mode" = sendmmsg ] && { target=floor-mmsg; flag=(-m); }
  local port=${FLOOR_PORT:-37990} lg=${LOADGEN:-target/release/hearth-loadgen}
  local hold; hold=$(floor_secs "${DURATION:-30s}")
  # Bounds: the forwarder exits by itself after the run could have ended; the generator
  # is stopped if it overruns (its ramp is seconds; joins are instant here).
  local limit=$((hold + 300))
  taskset -c 0 "$fwd" -a 127.0.0.1 -p "$port" -t "$limit" "${flag[@]}" \
    >"$out/$name-$target.counters" 2>"$out/$name-$target.log" &
  local pid=$!
  for _ in $(seq 100); do grep -q "pid" "$out/$name-$target.log" 2>/dev/null && break; sleep 0.02; done
  kill -0 "$pid" 2>/dev/null || { echo "floor_forwarder did not start: $(cat "$out/$name-$target.log")" >&2; return 1; }
  timeout "$limit" taskset -c 1 "$lg" --target floor --floor-addr "127.0.0.1:$port" \
    --server-pid "$pid" --duration "${DURATION:-30s}" --json "$out/$name-$target.json" \
    --svg "$out/$name-$target.svg" "$@" >"$out/$name-$target.txt" 2>"$out/$name-$target.progress" || true
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

floor_main() {
  cd "$(dirname "${BASH_SOURCE[0]}")/../.."
  local out=${1:-target/bench-floor}
  mkdir -p "$out"
  local lg=${LOADGEN:-target/release/hearth-loadgen}
  [ -x "$lg" ] || { echo "build first: cargo build --release -p hearth-loadgen (or set LOADGEN=)"; exit 2; }
  local fwd; fwd=$(floor_build "$out")
  local modes
  case "${FLOOR_MODE:-sendto}" in
    sendto) modes=(sendto) ;; sendmmsg) modes=(sendmmsg) ;; both) modes=(sendto sendmmsg) ;;
    *) echo "FLOOR_MODE: sendto, sendmmsg or both"; exit 2 ;;
  esac
  local wanted=" ${FLOOR_SCENARIOS:-big-audio-room-100 video-meeting-4x8} "
  echo "machine: $(nproc) CPU ($(lscpu | awk -F: '/Model name/ {gsub(/^ +/,"",$2); print $2}')), $(uname -r); hold ${DURATION:-30s}; loadgen $lg"
  local entry name args mode targets
  for entry in "${floor_all_scenarios[@]}"; do
    name=${entry%%|*}; args=${entry#*|}
    [[ "$wanted" == *" $name "* ]] || continue
    targets=()
    for mode in "${modes[@]}"; do
      # shellcheck disable=SC2086
      run_floor "$out" "$fwd" "$mode" "$name" $args
      if [ "$mode" = sendmmsg ]; then targets+=(floor-mmsg); else targets+=(floor); fi
    done
    python3 deploy/bench/summary.py "$out" "$name" "${targets[@]}"
  done
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  floor_main "$@"
fi
