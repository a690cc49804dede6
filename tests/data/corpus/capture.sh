#!/usr/bin/env bash
# Regenerates the fuzzing corpus in this directory from real traffic (see README.md here).
#
#   tests/data/corpus/capture.sh [hearth binary, default target/debug/hearth]
#
# Needs root or an unprivileged user namespace (like tests/run.sh's browser step), tcpdump
# and tshark (`apt-get install tcpdump tshark`; only for regenerating, the tests read the
# committed files), and what the browser tests need (chromium, firefox-esr, coturn's
# turnutils_*, `npm ci` in tests/browser).
#
# Inside one private network namespace (loopback plus the veth pair of tests/browser/run.sh,
# 10.77.0.1) it records with tcpdump, on every interface, the HTTP/WebSocket port (7880),
# the media port (UDP 7882) and the TURN port (UDP/TCP 3478) while it runs:
#   1. tests/browser/firefox.test.mjs: Chromium and Firefox in one meeting, 20 Chromium
#      participants joining and leaving (renegotiations), closes; both browsers also gather
#      relayed candidates from Hearth's TURN server, which the join response hands out;
#   2. tests/browser/relay.test.mjs: two Chromium pages through Hearth's TURN (UDP and TCP);
#   3. coturn's turnutils_uclient (UDP and TCP, channels and Send indications, static and
#      REST credentials) against `hearth --turn-only`, relaying to turnutils_peer.
# Then extract.py turns the capture into the corpus files.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
binary=$(realpath "${1:-$root/target/debug/hearth}")

if [ "${HEARTH_CORPUS_INSIDE:-}" != 1 ]; then
  work=$(mktemp -d /tmp/hearth-corpus-XXXXXX)
  echo "capturing into $work"
  inner=(env HEARTH_CORPUS_INSIDE=1 HEARTH_CORPUS_WORK="$work" "$0" "$binary")
  if [ "$(id -u)" = 0 ]; then unshare --net -- "${inner[@]}"
  else unshare --user --map-root-user --net -- "${inner[@]}"; fi
  python3 "$here/extract.py" "$work/capture.pcap" "$here" "$work/phases"
  echo "corpus written to $here (capture kept in $work)"
  exit 0
fi

# ---- inside the namespace ----
work=$HEARTH_CORPUS_WORK
ip link set lo up
ip link add v0 type veth peer name v1
ip addr add 10.77.0.1/24 dev v0
ip link set v0 up && ip link set v1 up && ip route add default dev v0
tcpdump -i any -s 0 -U -w "$work/capture.pcap" \
  'tcp port 7880 or udp port 7882 or port 3478' 2>"$work/tcpdump.log" &
dump=$!
sleep 2

phase() { echo "$1 $(date +%s.%N)" >>"$work/phases"; }

cd "$root/tests/browser"
phase browsers
HEARTH_TEST_IP=10.77.0.1 node firefox.test.mjs "$binary" >"$work/firefox.log" 2>&1 \
  || echo "firefox.test.mjs failed (capture kept; see $work/firefox.log)"
node relay.test.mjs "$binary" >"$work/relay.log" 2>&1 \
  || echo "relay.test.mjs failed (see $work/relay.log)"

# coturn's clients against a TURN-only node (extract.py attributes everything after this
# mark to uclient).
phase uclient
data=$(mktemp -d)
"$binary" serve --turn-only --http 127.0.0.1:7880 --data-dir "$data" --turn-port 3478 \
  --turn-user alice:secret --turn-secret rest-secret --turn-allow-peer 127.0.0.0/8 \
  >"$work/turn-only.log" 2>&1 &
node=$!
turnutils_peer -L 127.0.0.1 -p 3480 >/dev/null 2>&1 &
peer=$!
for _ in $(seq 50); do curl -sf http://127.0.0.1:7880/readyz >/dev/null && break; sleep 0.1; done
turnutils_stunclient -p 3478 127.0.0.1 >>"$work/uclient.log" 2>&1 || true
for flags in "" "-s" "-t" "-t -s"; do
  # shellcheck disable=SC2086
  turnutils_uclient $flags -u alice -w secret -p 3478 -e 127.0.0.1 -r 3480 -n 20 -m 2 -l 300 \
    127.0.0.1 >>"$work/uclient.log" 2>&1 || true
done
turnutils_uclient -u restuser -W rest-secret -p 3478 -e 127.0.0.1 -r 3480 -n 20 -m 2 -l 300 \
  127.0.0.1 >>"$work/uclient.log" 2>&1 || true
# Wrong password: 401s and a retry that fails.
turnutils_uclient -u alice -w wrong -p 3478 -e 127.0.0.1 -r 3480 -n 5 -m 1 -l 200 \
  127.0.0.1 >>"$work/uclient.log" 2>&1 || true
kill "$peer" "$node"
wait "$node" 2>/dev/null || true
rm -rf "$data"
sleep 1
kill "$dump"
wait "$dump" 2>/dev/null || true
