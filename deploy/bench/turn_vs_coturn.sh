#!/usr/bin/env bash
# TURN relay benchmark: the same turnutils_uclient load against coturn and against
# `hearth --turn-only`, side by side, in one run on one machine.
#
#   deploy/bench/turn_vs_coturn.sh [path/to/release/hearth]
#
# Needs Debian's coturn package (turnserver, turnutils_uclient, turnutils_peer) and a
# release build of hearth. Servers run pinned to CPU 0, the load (uclient + echo peer) to
# CPU 1 (taskset; on a 1-CPU machine both share it). Everything stays on 127.0.0.1.
# For each scenario it prints loss, RTT and jitter (from uclient), server CPU seconds per GB
# relayed (utime+stime from /proc/PID/stat over the run), the server's peak RSS, and then
# allocation setup rate and RSS per live allocation.
set -euo pipefail
cd "$(dirname "$0")/../.."
hearth=${1:-target/release/hearth}
[ -x "$hearth" ] || { echo "build it first: cargo build --release --bin hearth"; exit 2; }
for tool in turnserver turnutils_uclient turnutils_peer taskset; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install coturn util-linux)"; exit 2; }
done
ncpu=$(nproc)
srv_cpu=0; cli_cpu=$(( ncpu > 1 ? 1 : 0 ))
work=$(mktemp -d /tmp/turnbench.XXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

COTURN_PORT=34780; HEARTH_PORT=34790; PEER_PORT=34800; HTTP_PORT=34810
USER=bench; PASS=benchpass

cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
hwm_kib() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
tick=$(getconf CLK_TCK)

taskset -c "$cli_cpu" turnutils_peer -L 127.0.0.1 -p $PEER_PORT >/dev/null 2>&1 &

taskset -c "$srv_cpu" turnserver -n --listening-ip=127.0.0.1 --listening-port=$COTURN_PORT \
  --relay-ip=127.0.0.1 --min-port=30000 --max-port=33999 --lt-cred-mech \
  --user=$USER:$PASS --realm=hearth --allow-loopback-peers --no-tls --no-dtls --no-cli \
  --log-file=/dev/null --no-stdout-log --pidfile="$work/coturn.pid" --total-quota=0 \
  --user-quota=0 >/dev/null 2>&1 &
coturn_pid=$!

taskset -c "$srv_cpu" "$hearth" --turn-only --http 127.0.0.1:$HTTP_PORT \
  --turn-bind 127.0.0.1 --turn-port $HEARTH_PORT --turn-user $USER:$PASS \
  --turn-allow-peer 127.0.0.0/8 --turn-relay-ports 40000-43999 \
  --turn-max-allocations 100000 --turn-max-allocations-per-user 100000 \
  --data-dir "$work/data" >"$work/hearth.log" 2>&1 &
hearth_pid=$!

# Both answer a Binding before the load starts.
for port in $COTURN_PORT $HEARTH_PORT; do
  for _ in $(seq 100); do
    timeout 1 turnutils_stunclient -p $port 127.0.0.1 2>/dev/null | grep -q reflexive && break
    sleep 0.05
  done
done
echo "machine: $(nproc) CPU ($(lscpu | awk -F: '/Model name/ {gsub(/^ +/,"",$2); print $2}')), $(uname -r)"
echo "coturn: $(turnserver --version 2>&1 | head -1), pid $coturn_pid; hearth: $("$hearth" --version), pid $hearth_pid"
echo "idle RSS: coturn $(rss_kib $coturn_pid) KiB, hearth $(rss_kib $hearth_pid) KiB"
echo

run_case() { # name sessions length count interval extra
  set +e
  local name=$1 m=$2 l=$3 n=$4 z=$5 extra=${6:-}
  printf '%-44s %-7s %7s %9s %8s %9s %12s %10s\n' "$name" server "loss%" "rtt ms" "jit ms" "sent" "cpu s/GB" "peakRSS"
  for server in coturn hearth; do
    local port pid
    if [ $server = coturn ]; then port=$COTURN_PORT; pid=$coturn_pid; else port=$HEARTH_PORT; pid=$hearth_pid; fi
    local t0; t0=$(cpu_ticks $pid)
    # shellcheck disable=SC2086
    local out; out=$(taskset -c "$cli_cpu" turnutils_uclient -c $extra -u $USER -w $PASS -p $port \
      -e 127.0.0.1 -r $PEER_PORT -m "$m" -l "$l" -n "$n" -z "$z" 127.0.0.1 2>&1 || true)
    local t1; t1=$(cpu_ticks $pid)
    local sent recv_b sent_b loss rtt jit
    sent=$(grep -o 'tot_send_msgs=[0-9]*' <<<"$out" | tail -1 | cut -d= -f2)
    sent_b=$(grep -o 'tot_send_bytes ~ [0-9]*' <<<"$out" | tail -1 | awk '{print $3}')
    recv_b=$(grep -o 'tot_recv_bytes ~ [0-9]*' <<<"$out" | tail -1 | awk '{print $3}')
    loss=$(grep -o 'Total lost packets [0-9]* ([0-9.]*%' <<<"$out" | sed 's/.*(//; s/%//')
    rtt=$(grep -o 'Average round trip delay [0-9.]*' <<<"$out" | awk '{print $5}')
    jit=$(grep -o 'Average jitter [0-9.]*' <<<"$out" | awk '{print $3}')
    local gb; gb=$(awk -v a="${sent_b:-0}" -v b="${recv_b:-0}" 'BEGIN {print (a+b)/1e9}')
    local cpu; cpu=$(awk -v d=$((t1 - t0)) -v hz="$tick" -v gb="$gb" 'BEGIN {if (gb>0) printf "%.1f", d/hz/gb; else print "n/a"}')
    printf '%-44s %-7s %7s %9s %8s %9s %12s %8s Ki\n' "" $server "${loss:-?}" "${rtt:-?}" "${jit:-?}" "${sent:-?}" "$cpu" "$(hwm_kib $pid)"
  done
  set -e
}

run_case "100 sessions x 1000 B, 50 pkt/s each, channels" 100 1000 500 20
run_case "200 sessions x 1000 B, 50 pkt/s each, channels" 200 1000 500 20
run_case "200 sessions x 1000 B, Send/Data indications"   200 1000 500 20 -s
run_case "300 sessions x 100 B, 50 pkt/s each, channels"  300 100 500 20
run_case "100 sessions x 1000 B over TCP, channels"        100 1000 500 20 -t

echo
echo "allocation setup and memory (uclient -m 1000 -n 1 -h: 1000 allocations held):"
set +e
for server in coturn hearth; do
  if [ $server = coturn ]; then port=$COTURN_PORT; pid=$coturn_pid; else port=$HEARTH_PORT; pid=$hearth_pid; fi
  before=$(rss_kib $pid)
  start=$(date +%s.%N)
  taskset -c "$cli_cpu" turnutils_uclient -c -h -u $USER -w $PASS -p $port -e 127.0.0.1 -r $PEER_PORT \
    -m 1000 -l 100 -n 1 127.0.0.1 >"$work/hold.$server" 2>&1 &
  holder=$!
  # Wait until uclient has sent its one packet per session (all allocations made).
  for _ in $(seq 600); do grep -q 'tot_send_msgs=1000' "$work/hold.$server" && break; sleep 0.1; done
  end=$(date +%s.%N)
  after=$(rss_kib $pid)
  kill $holder 2>/dev/null || true; wait $holder 2>/dev/null || true
  awk -v s="$start" -v e="$end" -v b="$before" -v a="$after" -v srv=$server 'BEGIN {
    printf "  %-7s 1000 allocations in %.2f s (%.0f/s incl. the client), RSS +%d KiB = %.2f KiB per allocation\n",
      srv, e-s, 1000/(e-s), a-b, (a-b)/1000 }'
done
