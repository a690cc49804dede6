#!/usr/bin/env bash
# Two hearth-loadgen agents, each in a network namespace of its own, and a controller drive
# one node, as agents on separate machines would: each agent reaches the node over its own
# veth pair and sends from its own routed range of participant addresses (--local-net). The
# merged report must have a row per agent whose counts add up to the totals, and hold its
# SLO.
#
# Runs inside a private network namespace (tests/run.sh starts it with `unshare --net`):
#   unshare --net -- tests/loadgen/agents_netns.sh target/debug
set -euo pipefail
bin=$(cd "${1:-target/debug}" && pwd)
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  # Bounded: whatever ignores SIGTERM for 5 s is killed.
  for _ in $(seq 100); do
    alive=0; for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break; sleep 0.05
  done
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "agents_netns: $*" >&2; for f in "$work"/*.log "$work"/*.txt "$work"/progress; do [ -f "$f" ] && { echo "--- $f"; tail -20 "$f"; }; done >&2; exit 1; }
# Polls `cond` (a command) every 50 ms for up to `secs` seconds.
until_true() { local secs=$1; shift; for _ in $(seq $((secs * 20))); do "$@" && return 0; sleep 0.05; done; return 1; }

KEY=APIagents; SECRET=agents-secret-0123456789abcdef; TOKEN=agents-token-0123
# Only in a namespace of its own (made for this test: just `lo`), never on a host.
[ "$(ip -o link | wc -l)" = 1 ] || fail "run me in a fresh network namespace (unshare --net)"
ip link set lo up
agents=()
for i in 1 2; do
  unshare --net -- sleep 600 &
  ns_pid=$!; pids+=("$ns_pid")
  other_ns() {
    [ -e "/proc/$ns_pid/ns/net" ] &&
      [ "$(readlink "/proc/$ns_pid/ns/net")" != "$(readlink /proc/self/ns/net)" ]
  }
  until_true 5 other_ns || fail "namespace $i did not come up"
  in_ns() { nsenter --net="/proc/$ns_pid/ns/net" -- "$@"; }
  ip link add "h$i" type veth peer name "a$i"
  ip link set "a$i" netns "$ns_pid"
  ip addr add "10.79.$i.1/24" dev "h$i"
  ip link set "h$i" up
  in_ns ip link set lo up
  in_ns ip addr add "10.79.$i.2/24" dev "a$i"
  in_ns ip link set "a$i" up
  in_ns ip route add default via "10.79.$i.1"
  # The agent's participants: a range local to its namespace, routed to it from the node's.
  in_ns ip route add local "10.80.$i.0/24" dev lo
  ip route add "10.80.$i.0/24" via "10.79.$i.2"
  # exec: $! is the agent itself (a backgrounded function would leave it orphaned).
  (exec nsenter --net="/proc/$ns_pid/ns/net" -- "$bin/hearth-loadgen" agent \
    --listen "10.79.$i.2:7999" --local-net "10.80.$i.0" --token "$TOKEN" \
    >"$work/agent$i.txt" 2>"$work/agent$i.log") &
  pids+=("$!")
  agents+=("10.79.$i.2:7999")
done
port=7990
"$bin/hearth" --http "10.79.1.1:$port" --public-ip 10.79.1.1 --media-port 0 --turn-port 0 \
  --api-key "$KEY" --api-secret "$SECRET" --data-dir "$work/data" >"$work/node.log" 2>&1 &
pids+=("$!")
ready() { curl -sf "http://10.79.1.1:$port/readyz" >/dev/null; }
until_true 20 ready || fail "the node never became ready"
for i in 1 2; do
  listening() { grep -q "listening on" "$work/agent$i.txt"; }
  until_true 20 listening || fail "agent $i never listened"
done
"$bin/hearth-loadgen" --url "http://10.79.1.1:$port" --api-key "$KEY" --api-secret "$SECRET" \
  --agents "$(IFS=,; echo "${agents[*]}")" --agent-token "$TOKEN" \
  --preset mixed --mix audio-rooms:50,video-meeting:50 --meetings 4 --ramp 30 --duration 6s \
  --client lean \
  --json "$work/report.json" >"$work/report.txt" 2>"$work/progress" \
  || fail "the controller's run failed"
python3 - "$work/report.json" <<'PY' || fail "the report does not add up"
import json, sys
r = json.load(open(sys.argv[1]))
agents = r["agents"]
assert len(agents) == 2 and all(a["status"] == "done" for a in agents), agents
# A mixed run (an audio room of 4, then a video meeting of 8, and again): 2 meetings and
# 12 participants per agent.
assert [a["meetings"] for a in agents] == [2, 2], agents
assert [a["participants_planned"] for a in agents] == [12, 12], agents
assert sum(a["participants_planned"] for a in agents) == r["participants_planned"] == 24, r
assert sum(a["participants_connected"] for a in agents) == r["participants_connected"] == 24, r
assert r["packets"]["received"] > 1000, r["packets"]
assert r["loss_pct"] < 1.0 and r["slo"]["held"], (r["loss_pct"], r["slo"])
print("ok: 2 agents in 2 network namespaces, a mixed run, 24 participants connected, "
      f"{r['packets']['received']} packets received, loss {r['loss_pct']:.3f} %")
PY
