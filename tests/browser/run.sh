#!/usr/bin/env bash
# Runs one browser test inside a fresh network namespace that has only loopback, so
# Chromium and Hearth meet on 127.0.0.1 and nothing leaves the machine.
#   tests/browser/run.sh <test.mjs> <hearth binary>
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
test=$1
binary=$(realpath "$2")
exec unshare --net -- bash -c "ip link set lo up && cd '$here' && node '$test' '$binary'"
