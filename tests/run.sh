#!/usr/bin/env bash
# The README's test command: installs what the tests need (idempotent), then runs every
# check CI runs: formatting, lints, architecture rules, unit/property/integration tests
# (including coturn's TURN clients, hearthctl and a short hearth-loadgen run), the Python
# grpcio interop test, and the browser end-to-end tests (with aiortc and GStreamer for
# WHIP/WHEP) in private network namespaces.
#
#   tests/run.sh            everything
#   tests/run.sh --quick    skip the browser tests
set -euo pipefail
cd "$(dirname "$0")/.."
quick=0
[ "${1:-}" = "--quick" ] && quick=1

step() { printf '\n== %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# A fresh target/ (CI's clean clone) gains nothing from incremental compilation, which
# roughly doubles what the workspace's own crates leave on disk.
[ -d target ] || export CARGO_INCREMENTAL=0
disk() { df -h --output=avail,target . | tail -1 | awk '{print "disk: " $1 " free on " $2}'; }
disk

step "system packages"
need=()
command -v chromium >/dev/null || need+=(chromium)
command -v ip >/dev/null || need+=(iproute2)
command -v unshare >/dev/null || need+=(util-linux)
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
command -v curl >/dev/null || need+=(curl)
command -v turnutils_uclient >/dev/null || need+=(coturn)   # coturn's TURN test clients
command -v firefox-esr >/dev/null || need+=(firefox-esr)     # the cross-browser test
command -v cmake >/dev/null || need+=(cmake)                 # builds CTranslate2 (hearth-stt)
command -v g++ >/dev/null || need+=(g++)
command -v espeak-ng >/dev/null || need+=(espeak-ng)         # speech with known words
command -v sox >/dev/null || need+=(sox)
command -v nft >/dev/null || need+=(nftables)                # random loss on a shaped link
command -v redis-server >/dev/null || need+=(redis-server)   # the cluster tests (their own servers)
command -v faketime >/dev/null || need+=(faketime)           # a cluster node with a skewed clock
# GStreamer's webrtcbin through Debian's python: the WHIP test's third WebRTC stack.
/usr/bin/python3 - <<'PY' 2>/dev/null ||
import gi
gi.require_version("Gst", "1.0")
gi.require_version("GstWebRTC", "1.0")
gi.require_version("GstSdp", "1.0")
from gi.repository import Gst
Gst.init(None)
assert all(Gst.ElementFactory.find(e) for e in ("webrtcbin", "vp8enc", "opusenc", "nicesrc", "videotestsrc"))
PY
  need+=(python3-gi python3-gst-1.0 gir1.2-gst-plugins-base-1.0 gir1.2-gst-plugins-bad-1.0
    gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-nice)
if [ ${#need[@]} -gt 0 ]; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
echo "ok: $(chromium --version 2>/dev/null | head -1), $(firefox-esr --version 2>/dev/null | head -1), node $(node --version)"

step "browser test dependencies (npm ci)"
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "architecture invariants"
engine_deps=$(cargo tree -p hearth-engine -e normal --prefix none | awk '{print $1}' | sort -u)
for forbidden in tokio ractor rtc sqlx tonic axum mio socket2; do
  if grep -qx "$forbidden" <<<"$engine_deps"; then
    echo "hearth-engine must stay sans-IO, but depends on $forbidden"; exit 1
  fi
done
# Direct dependencies only: the WebRTC stack itself pulls serde_json for its own types.
actor_deps=$(cargo tree -p hearth-actors -e normal --depth 1 --prefix none | awk '{print $1}' | sort -u)
for forbidden in hearth-proto prost serde_json pbjson; do
  if grep -qx "$forbidden" <<<"$actor_deps"; then
    echo "hearth-actors must know nothing of protobuf/JSON, but depends on $forbidden"; exit 1
  fi
done
# The server's WebRTC transport is Hearth's own (hearth_engine::transport, on webrtc-rs's
# component crates); the `rtc` peer connection is a client stack only (loadgen, tests).
for crate in hearth-engine hearth-actors hearth-api; do
  if cargo tree -p "$crate" -e normal --prefix none | awk '{print $1}' | grep -qx rtc; then
    echo "$crate must not link the rtc peer connection (the server uses its own transport)"; exit 1
  fi
done
# The load generator is a black-box client of the public protocols.
lg_deps=$(cargo tree -p hearth-loadgen -e normal --prefix none | awk '{print $1}' | sort -u)
for forbidden in hearth-actors hearth-api hearth-engine; do
  if grep -qx "$forbidden" <<<"$lg_deps"; then
    echo "hearth-loadgen must use only public protocols, but depends on $forbidden"; exit 1
  fi
done
echo "ok"

step "deploy/: Compose file, Kubernetes manifests (kubernetes-validate), Prometheus, Grafana"
deploy/validate.sh

step "build"
cargo build --workspace --all-targets
disk; du -sh target 2>/dev/null || true

step "container image: deploy/Dockerfile built offline with podman, a node runs from it"
deploy/image_smoke.sh target/debug

step "PostgreSQL for the ledger tests (a throwaway cluster on loopback, removed at exit)"
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
if [ -z "$pg_bin" ] || [ ! -x "$pg_bin/initdb" ]; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql
  pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
fi
# initdb refuses to run as root: the cluster belongs to Debian's `postgres` user then.
pg_as() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
pg_dir=$(mktemp -d /tmp/hearth-pg.XXXXXX)
[ "$(id -u)" = 0 ] && chown postgres "$pg_dir"
pg_as "$pg_bin/initdb" -D "$pg_dir/data" -A trust -U hearth -E UTF8 --no-sync >/dev/null
pg_stop() { pg_as "$pg_bin/pg_ctl" -D "$pg_dir/data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$pg_dir"; }
trap pg_stop EXIT
for attempt in 1 2 3 4 5; do
  pg_port=$((20000 + RANDOM % 30000))
  if pg_as "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/log" -w -t 30 \
      -o "-c listen_addresses=127.0.0.1 -p $pg_port -k $pg_dir -c fsync=off -c max_connections=400" \
      start >/dev/null; then
    break
  fi
  [ "$attempt" = 5 ] && { cat "$pg_dir/log"; exit 1; }
done
export HEARTH_TEST_PG_URL="postgres://hearth@127.0.0.1:$pg_port/postgres"
export HEARTH_TEST_REQUIRE_PG=1
# tests/tests/cluster.rs starts a redis-server of its own per test (unix socket, no data).
export HEARTH_TEST_REQUIRE_REDIS=1
echo "ok: $("$pg_bin/postgres" --version) on 127.0.0.1:$pg_port"

step "speech model for the transcription tests (deploy/models/install-whisper.sh, sha256-verified)"
deploy/models/install-whisper.sh data/models/whisper-tiny.en
export HEARTH_STT_MODEL="$PWD/data/models/whisper-tiny.en"
export HEARTH_TEST_REQUIRE_STT=1
# espeak-ng, sox and target/transcription-venv (faster-whisper behind an OpenAI-compatible
# server: the real third-party engine tests/tests/transcription.rs talks to).
tests/transcription/setup.sh

step "unit, property and integration tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi
cargo test --workspace --doc

# ---- gRPC interop with a third-party client (tests/grpc_python) ----------------------
step "gRPC interop: Python grpcio client against target/debug/hearth"
# Python's grpcio (pinned in tests/grpc_python/requirements.txt) in a venv kept in
# target/grpc-venv and reused while the requirements file is unchanged.
if ! command -v python3 >/dev/null || ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv
fi
# A venv in target/ per pinned requirements file, reused while the file is unchanged.
venv() { # dir requirements
  local dir=$1 req=$2
  if ! "$dir/bin/python" -m pip --version >/dev/null 2>&1; then
    rm -rf "$dir"
    python3 -m venv "$dir"
  fi
  if ! cmp -s "$req" "$dir/requirements.installed"; then
    "$dir/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
    cp "$req" "$dir/requirements.installed"
  fi
}
venv target/grpc-venv tests/grpc_python/requirements.txt
target/grpc-venv/bin/python tests/grpc_python/grpc_interop.py target/debug/hearth
# ---- end of gRPC interop ------------------------------------------------------------

step "REST API: /v1/openapi.json through an independent OpenAPI 3.1 validator"
# openapi-spec-validator (pinned in tests/rest_openapi/requirements.txt) in its own venv.
venv target/rest-openapi-venv tests/rest_openapi/requirements.txt
target/rest-openapi-venv/bin/python tests/rest_openapi/validate.py target/debug/hearth

step "REST API: a client generated from /v1/openapi.json (openapi-python-client) drives the main flows"
target/rest-openapi-venv/bin/python tests/rest_openapi/generated_client.py target/debug/hearth

step "Webhooks: signed deliveries verified by the Standard Webhooks reference library (Python standardwebhooks)"
target/rest-openapi-venv/bin/python tests/rest_openapi/webhooks_standard.py target/debug/hearth

step "REST API: property-based tests from /v1/openapi.json (schemathesis: no 5xx, responses match the document)"
target/rest-openapi-venv/bin/python tests/rest_openapi/schemathesis_run.py target/debug/hearth

if [ "$quick" = 1 ]; then
  echo; echo "quick run: namespace and browser tests skipped"; exit 0
fi

step "load generator: two agents, each in a network namespace of its own, drive one node"
if [ "$(id -u)" = 0 ]; then unshare --net -- tests/loadgen/agents_netns.sh target/debug; else
  unshare --user --map-root-user --net -- tests/loadgen/agents_netns.sh target/debug
fi

# aiortc (pinned in tests/whip/requirements.txt): the WHIP publisher and WHEP player of
# tests/browser/whip.test.mjs, a WebRTC stack independent of the browsers'.
venv target/whip-venv tests/whip/requirements.txt
export HEARTH_WHIP_PYTHON="$PWD/target/whip-venv/bin/python"

step "browser end-to-end tests (headless Chromium and Firefox, in private network namespaces)"
ns_run() {
  if [ "$(id -u)" = 0 ]; then tests/browser/run.sh "$@"; else
    # Unprivileged: a user namespace gives us the right to make a network namespace.
    unshare --user --map-root-user -- tests/browser/run.sh "$@"
  fi
}
for t in tests/browser/*.test.mjs; do
  echo "-- $(basename "$t")"
  ns_run "$(basename "$t")" target/debug/hearth
done

disk
echo; echo "all tests passed"
