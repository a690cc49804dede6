#!/usr/bin/env bash
# REST benchmark: `GET /v1/meetings/{id}` with a bearer token, Hearth against the same
# endpoint in Node.js + Fastify (server.mjs), each on one core with the load on the other,
# alternating in one run. Prints Markdown tables (see README.md for what is measured).
#
#   deploy/bench/rest_vs_fastify/run.sh [--duration 10] [--runs 2] [--warmup 3]
#       [--connections 64] [--fixed-connections 32] [--fraction 0.5] [--keys 5000]
#       [--pipeline N] [--only hearth|fastify] [--out DIR]
#
# Hearth binary: $HEARTH_BIN, else /tmp/soakbin/hearth, else target/release/hearth
# (cargo build --release --bin hearth). $HEARTH_EXTRA_ARGS is appended to its flags.
# Installs what is missing on Debian: wrk, a C compiler, Node.js/npm (apt-get), Fastify
# (npm ci, into node_modules here).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)

if [ -z "${HEARTH_BIN:-}" ]; then
  for b in /tmp/soakbin/hearth "$repo/target/release/hearth"; do
    if [ -x "$b" ]; then HEARTH_BIN=$b; break; fi
  done
fi
case " $* " in
  *" --only fastify "* | *" --only=fastify "*) ;;
  *) [ -x "${HEARTH_BIN:-}" ] || { echo "no hearth binary: cargo build --release --bin hearth, or set HEARTH_BIN" >&2; exit 2; } ;;
esac
export HEARTH_BIN

# System packages, installed only when missing.
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v cc >/dev/null || need+=(gcc libc6-dev)
command -v taskset >/dev/null || need+=(util-linux)
command -v getconf >/dev/null || need+=(libc-bin)
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
if [ ${#need[@]} -gt 0 ]; then
  echo "# installing ${need[*]}" >&2
  sudo=; [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get install -y "${need[@]}" >/dev/null 2>&1 ||
    { $sudo apt-get update >/dev/null && $sudo apt-get install -y "${need[@]}" >/dev/null; }
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
[ "$node_major" -ge 20 ] || { echo "Fastify 5 needs Node.js 20 or later; this is $(node --version)" >&2; exit 2; }

# Fastify, exactly as locked.
if ! cmp -s "$here/package-lock.json" "$here/node_modules/.installed-lock.json" 2>/dev/null; then
  (cd "$here" && npm ci --no-audit --no-fund --loglevel=error >&2 &&
    cp package-lock.json node_modules/.installed-lock.json)
fi

# The fixed-rate load generator.
mkdir -p "$here/build"
if [ ! -x "$here/build/fixedrate" ] || [ "$here/fixedrate.c" -nt "$here/build/fixedrate" ]; then
  cc -O2 -Wall -o "$here/build/fixedrate" "$here/fixedrate.c"
fi

# The driver itself stays off the server's CPU.
load_cpu=${LOAD_CPU:-$([ "$(nproc)" -gt 1 ] && echo 1 || echo 0)}
exec taskset -c "$load_cpu" node "$here/bench.mjs" "$@"
