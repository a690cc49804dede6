#!/usr/bin/env bash
# Builds deploy/Dockerfile offline with podman and runs a node from the image:
# /healthz, /readyz and the web page answer, the image's HEALTHCHECK passes, the node runs
# as uid 10001, and `podman stop` (SIGTERM) ends it with status 0.
#
#   deploy/image_smoke.sh [BIN_DIR]      BIN_DIR holds hearth, hearthctl, hearth-stt
#                                        (default target/debug; target/release works too)
#
# This machine reaches no container registry (docker.io, quay.io, ghcr.io: no DNS), so
# both base images are made here:
#   - the runtime base: Debian bookworm "minbase" from deb.debian.org by debootstrap,
#     imported into podman (cached as localhost/hearth-base:bookworm);
#   - the builder: that base plus a stand-in `cargo` that hands over BIN_DIR's binaries
#     (the real builder, rust:1-bookworm, cannot be pulled). So the Dockerfile's runtime
#     stage, its user, volume, ports, HEALTHCHECK and entrypoint are what is tested; its
#     `cargo build` line is not (tests/run.sh builds the same binaries outside).
# Installs podman and debootstrap (apt-get -y) when missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin=$(realpath "${1:-target/debug}")
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
for b in hearth hearthctl hearth-stt; do
  [ -x "$bin/$b" ] || { echo "image_smoke: $bin/$b missing (cargo build first)"; exit 1; }
done

need=()
command -v podman >/dev/null || need+=(podman)
command -v debootstrap >/dev/null || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null \
    || { as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null; }
fi
# The sandbox refuses raising rlimits; give every container limits under the host's.
limits=(--ulimit nofile=16384:16384 --ulimit nproc=8192:8192)
# A machine where podman cannot work at all (no user namespaces, an unprivileged container
# runner) is reported, not failed: nothing here could test the image there.
if ! info_err=$(podman info 2>&1 >/dev/null); then
  echo "image_smoke: SKIPPED: podman cannot run on this machine: $(tail -1 <<<"$info_err")"
  exit 0
fi

# Under target/ (an exec, dev filesystem: debootstrap refuses a noexec or nodev /tmp).
mkdir -p target
rootfs="$PWD/target/image-rootfs"
work=$(mktemp -d "$PWD/target/image-build.XXXXXX")
name=hearth-smoke-$$
cleanup() {
  podman rm -f "$name" >/dev/null 2>&1 || true
  podman rmi -f localhost/hearth:smoke localhost/hearth-standin-builder:smoke >/dev/null 2>&1 || true
  # The build stage's untagged image is not kept either.
  podman image prune -f >/dev/null 2>&1 || true
  rm -rf "$work"
  if [ -d "$rootfs" ]; then as_root rm -rf "$rootfs"; fi
  return 0
}
trap cleanup EXIT

base=localhost/hearth-base:bookworm
if ! podman image exists "$base"; then
  echo "image_smoke: debootstrap bookworm minbase (once; cached as $base)"
  as_root rm -rf "$rootfs"
  as_root debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian >/dev/null
  as_root tar -C "$rootfs" -c . | podman import - "$base" >/dev/null
  as_root rm -rf "$rootfs"
fi

# The stand-in builder: `cargo build ...` copies the prebuilt binaries where the
# Dockerfile's build stage expects them (target/release/ under the build's WORKDIR).
cp "$bin/hearth" "$bin/hearthctl" "$bin/hearth-stt" "$work/"
cat > "$work/cargo" <<'EOF'
#!/bin/sh
mkdir -p target/release && cp /prebuilt/hearth /prebuilt/hearthctl /prebuilt/hearth-stt target/release/
EOF
chmod +x "$work/cargo"
cat > "$work/Containerfile" <<EOF
FROM $base
COPY hearth hearthctl hearth-stt /prebuilt/
COPY cargo /usr/local/bin/cargo
EOF
podman build -q "${limits[@]}" -t localhost/hearth-standin-builder:smoke "$work" >/dev/null

echo "image_smoke: podman build -f deploy/Dockerfile (stand-in builder, local base)"
podman build -q --format docker "${limits[@]}" -f deploy/Dockerfile \
  --ignorefile deploy/Dockerfile.dockerignore \
  --build-arg RUST_IMAGE=localhost/hearth-standin-builder:smoke \
  --build-arg RUNTIME_IMAGE="$base" \
  -t localhost/hearth:smoke . >/dev/null

port=$((20000 + RANDOM % 20000))
fail() { echo "image_smoke: FAIL: $*"; podman logs "$name" 2>&1 | tail -20; exit 1; }
# Without systemd, podman cannot arm the HEALTHCHECK timer and says so on stderr; the check
# itself is run below with `podman healthcheck run`.
quiet() { "$@" 2> >(grep -v 'systemd' >&2); }
quiet podman run -d --name "$name" "${limits[@]}" -p "127.0.0.1:$port:7881" \
  -e HEARTH_API_KEY=APIsmoke -e HEARTH_API_SECRET=smoke-secret-0123456789 \
  -e HEARTH_TURN_PORT=0 localhost/hearth:smoke >/dev/null || fail "podman run"
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
  sleep 0.2
done
[ "$(curl -fsS "http://127.0.0.1:$port/healthz")" = ok ] || fail "/healthz"
[ "$(curl -fsS "http://127.0.0.1:$port/readyz")" = ready ] || fail "/readyz"
metrics=$(curl -fsS "http://127.0.0.1:$port/metrics") || fail "/metrics"
grep -q '^hearth_meetings ' <<<"$metrics" || fail "/metrics has no hearth_meetings"
[ "$(podman exec "$name" id -u)" = 10001 ] || fail "the node does not run as uid 10001"
podman healthcheck run "$name" >/dev/null || fail "the image's HEALTHCHECK"
quiet podman stop -t 10 "$name" >/dev/null
status=$(podman inspect -f '{{.State.ExitCode}}' "$name")
[ "$status" = 0 ] || fail "exit status $status after SIGTERM"
size=$(podman image inspect -f '{{.Size}}' localhost/hearth:smoke)
echo "ok: image built from deploy/Dockerfile ($((size / 1024 / 1024)) MB with $(basename "$bin") binaries); node healthy, uid 10001, SIGTERM exits 0"
