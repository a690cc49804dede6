#!/usr/bin/env bash
# Installs what tests/transcription needs (idempotent, quiet when nothing is missing):
#   - Debian packages espeak-ng and sox (apt-get, as root or through sudo)
#   - a Python venv with requirements.txt, by default target/transcription-venv
#
#   tests/transcription/setup.sh [VENV_DIR]
#
# The Whisper model itself is not installed here: see deploy/models/install-whisper.sh.
# The venv is reinstalled only when requirements.txt changes (a stamp file records its hash).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
venv=${1:-$root/target/transcription-venv}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

need=()
command -v espeak-ng >/dev/null || need+=(espeak-ng)
command -v sox >/dev/null || need+=(sox)
command -v soxi >/dev/null || need+=(sox)
if [ ${#need[@]} -gt 0 ]; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

python=${PYTHON:-python3}
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv" || {
    echo "setup.sh: '$python -m venv' failed (Debian: apt-get install python3-venv)" >&2; exit 1; }
fi
stamp="$venv/.requirements.sha256"
want=$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
  "$venv/bin/python" -c "import faster_whisper, ctranslate2, av, websockets"
  echo "$want" >"$stamp"
fi
echo "transcription test tools ready: $venv ($("$venv/bin/python" -c \
  'import faster_whisper, ctranslate2; print("faster-whisper", faster_whisper.__version__, "ctranslate2", ctranslate2.__version__)'))"
