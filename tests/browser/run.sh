#!/usr/bin/env bash
# Runs one browser test inside a fresh network namespace, so the browsers and Hearth meet
# there and nothing leaves the machine.
#   tests/browser/run.sh <test.mjs> <hearth binary>
# Chromium's tests get a namespace with only loopback. Firefox gathers no ICE candidates
# without an interface that has a default route, so firefox*.test.mjs also gets a veth pair
# (both ends inside the namespace, 10.77.0.1/24 on v0, default route through v0); the node
# advertises that address (HEARTH_TEST_IP) and traffic to it stays in the namespace.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
test=$1
binary=$(realpath "$2")
setup="ip link set lo up"
case "$(basename "$test")" in
  firefox*|whip*)
    setup="$setup && ip link add v0 type veth peer name v1 && ip addr add 10.77.0.1/24 dev v0 \
      && ip link set v0 up && ip link set v1 up && ip route add default dev v0"
    export HEARTH_TEST_IP=10.77.0.1
    ;;
esac
exec unshare --net -- bash -c "$setup && cd '$here' && node '$test' '$binary'"
