#!/usr/bin/env bash
# A receiver on a constrained link, through Hearth and directly between two Chromium pages
# (Chromium's own congestion control), back to back over the same shaped link: time to
# settle under the link, received rate as a fraction of it, frames, gaps and freezes. Prints
# a Markdown table (BENCHMARKS.md, "Congestion control").
#
#   deploy/bench/constrained_link.sh [hearth binary]      (root: network namespaces, tc, nft)
#   LINK_KBPS=500 LOSS_PERCENT=2 QUEUE_MS=200 HOLD_S=40 deploy/bench/constrained_link.sh
#   ALICE_QUERY='&codec=vp9&svc=L3T3_KEY' deploy/bench/constrained_link.sh   (VP9 SVC, not simulcast)
#
# Needs what tests/run.sh installs (chromium, node modules in tests/browser, iproute2,
# nftables) and a release build (cargo build --release --bin hearth).
set -euo pipefail
cd "$(dirname "$0")/../.."
hearth=${1:-target/release/hearth}
[ -x "$hearth" ] || { echo "build first: cargo build --release --bin hearth"; exit 2; }
exec tests/browser/run.sh congestion.bench.mjs "$hearth"
