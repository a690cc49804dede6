#!/usr/bin/env bash
# The same hearth-loadgen scenarios against Hearth, against Janus's VideoRoom and against
# the floor forwarder (the same traffic with no protocol work: deploy/bench/floor.sh), in
# one run on one machine: each server pinned to CPU 0, the load generator to CPU 1. Each
# scenario ends with the targets' server CPU per forwarded packet as multiples of the
# floor's.
#
#   deploy/bench/loadgen_vs_janus.sh [--no-janus] [OUT_DIR]
#
# Needs release builds (cargo build --release --bin hearth --bin hearth-loadgen), a C
# compiler (for the floor forwarder), root (for the network namespace Janus runs in: it
# ignores loopback interfaces), and Debian's janus package (apt-get install -y janus);
# --no-janus runs Hearth and the floor only (no root or janus needed).
# deploy/bench/janus_netns.sh starts Janus in namespace `janusns` behind a veth pair and
# routes 10.78.0.0/16 (the simulated participants' addresses) to this host. Results:
# OUT_DIR/<scenario>-<target>.{json,svg,txt}, target hearth, janus, floor (floor-mmsg with
# FLOOR_MODE=both).
#
# Environment: DURATION=30s (hold), SCENARIOS="name ..." (a subset of the list below),
# FLOOR_MODE=sendto|sendmmsg|both, HEARTH=target/release/hearth,
# LOADGEN=target/release/hearth-loadgen.
set -euo pipefail
cd "$(dirname "$0")/../.."
janus_too=1
if [ "${1:-}" = --no-janus ]; then janus_too=0; shift; fi
out=${1:-target/bench-loadgen}
mkdir -p "$out"
hearth=${HEARTH:-target/release/hearth}
lg=${LOADGEN:-target/release/hearth-loadgen}
[ -x "$hearth" ] && [ -x "$lg" ] || { echo "build first: cargo build --release --bin hearth --bin hearth-loadgen"; exit 2; }
[ $janus_too = 0 ] || command -v janus >/dev/null || { echo "install janus (apt-get install -y janus), or run with --no-janus"; exit 2; }
KEY=APIbench; SECRET=bench-secret-0123456789abcdef; PORT=37880
DURATION=${DURATION:-30s}
# floor_build, run_floor and the scenario list (floor_all_scenarios).
# shellcheck source=deploy/bench/floor.sh
source deploy/bench/floor.sh
export LOADGEN=$lg DURATION
fwd=$(floor_build "$out")
case "${FLOOR_MODE:-sendto}" in
  sendto) floor_modes=(sendto) ;; sendmmsg) floor_modes=(sendmmsg) ;; both) floor_modes=(sendto sendmmsg) ;;
  *) echo "FLOOR_MODE: sendto, sendmmsg or both"; exit 2 ;;
esac

# name | loadgen arguments
scenarios=("${floor_all_scenarios[@]}")
wanted=" ${SCENARIOS:-${scenarios[*]%%|*}} "

run_hearth() { # name args
  local name=$1; shift
  taskset -c 0 "$hearth" --http 127.0.0.1:$PORT --media-port 0 --turn-port 0 --max-connections-per-ip 100000 \
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

echo "machine: $(nproc) CPU ($(lscpu | awk -F: '/Model name/ {gsub(/^ +/,"",$2); print $2}')), $(uname -r); $([ $janus_too = 1 ] && echo "janus $(janus --version 2>/dev/null | head -1)" || echo "no janus")"
for entry in "${scenarios[@]}"; do
  name=${entry%%|*}; args=${entry#*|}
  [[ "$wanted" == *" $name "* ]] || continue
  targets=(hearth)
  # shellcheck disable=SC2086
  run_hearth "$name" $args
  if [ $janus_too = 1 ]; then
    # shellcheck disable=SC2086
    run_janus "$name" $args
    targets+=(janus)
  fi
  for mode in "${floor_modes[@]}"; do
    # shellcheck disable=SC2086
    run_floor "$out" "$fwd" "$mode" "$name" $args
    if [ "$mode" = sendmmsg ]; then targets+=(floor-mmsg); else targets+=(floor); fi
  done
  python3 deploy/bench/summary.py "$out" "$name" "${targets[@]}"
done
