#!/usr/bin/env bash
# Speech-to-text on this machine: Hearth's embedded engine (hearth-stt: Whisper tiny.en
# through CTranslate2, int8, one thread) against faster-whisper (Python) on the same model,
# the same espeak-ng sentences and the same pinned core, back to back in one run.
#
#   deploy/bench/transcription.sh [--sentences N] [--speed WPM] [--cpu C] [--runs R]
#
# Needs: target/<profile>/hearth-stt (cargo build --release -p hearth-stt, or debug: its
# C++ and the front end are optimised in debug builds too), the model
# (deploy/models/install-whisper.sh), and tests/transcription/setup.sh (espeak-ng, sox and
# the faster-whisper venv). Prints one line per engine and run: audio seconds, decode
# seconds, real-time factor (decode / audio, on one core), word error rate, peak RSS.
set -euo pipefail
cd "$(dirname "$0")/../.."
sentences=50 speed=175 cpu=1 runs=1
while [ $# -gt 0 ]; do
  case "$1" in
    --sentences) sentences=$2; shift 2 ;;
    --speed) speed=$2; shift 2 ;;
    --cpu) cpu=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    *) echo "usage: $0 [--sentences N] [--speed WPM] [--cpu C] [--runs R]" >&2; exit 2 ;;
  esac
done
model=${HEARTH_STT_MODEL:-data/models/whisper-tiny.en}
stt=target/release/hearth-stt
[ -x "$stt" ] || stt=target/debug/hearth-stt
[ -x "$stt" ] || { echo "build hearth-stt first (cargo build --release -p hearth-stt)" >&2; exit 1; }
[ -f "$model/model.bin" ] || { echo "install the model first (deploy/models/install-whisper.sh)" >&2; exit 1; }
py=target/transcription-venv/bin/python
[ -x "$py" ] || { echo "run tests/transcription/setup.sh first" >&2; exit 1; }

dir=$(mktemp -d /tmp/hearth-stt-bench.XXXXXX)
trap 'rm -rf "$dir"' EXIT
head -n "$sentences" tests/transcription/sentences.txt > "$dir/refs.txt"
i=0
while IFS= read -r line; do
  i=$((i + 1))
  tests/transcription/speak.sh --rate 16000 --speed "$speed" "$line" "$dir/$(printf %03d $i).wav" >/dev/null
done < "$dir/refs.txt"

for run in $(seq 1 "$runs"); do
  # Hearth: hearth-stt --bench prints one JSON object per file, then a summary.
  /usr/bin/time -f '%M' -o "$dir/rss" taskset -c "$cpu" "$stt" --model "$model" --bench "$dir"/*.wav \
    > "$dir/hearth.jsonl" 2>/dev/null
  "$py" - "$dir" "$run" <<'EOF'
import json, os, sys
sys.path.insert(0, "tests/transcription")
from wer import corpus_wer
d, run = sys.argv[1], sys.argv[2]
refs = open(os.path.join(d, "refs.txt")).read().splitlines()
hyps, audio, decode = {}, 0.0, 0.0
for line in open(os.path.join(d, "hearth.jsonl")):
    o = json.loads(line)
    if "file" in o and "text" in o:
        hyps[int(os.path.basename(o["file"])[:3]) - 1] = o["text"]
        audio += o["audio_s"]; decode += o["decode_s"]
pairs = [(refs[i], hyps.get(i, "")) for i in range(len(refs))]
rss = int(open(os.path.join(d, "rss")).read().split()[-1]) / 1024
print(f"run {run} hearth-stt     audio {audio:6.1f} s  decode {decode:6.1f} s  RTF {decode/audio:.3f}  "
      f"WER {corpus_wer(pairs)*100:5.1f} %  peak RSS {rss:.0f} MiB")
EOF
  # faster-whisper on the same WAVs, same core, same beam, no temperature fallback.
  # (rtf_peer.py synthesizes the same sentences with the same speak.sh: identical WAVs.)
  taskset -c "$cpu" "$py" tests/transcription/rtf_peer.py "$model" --threads 1 --no-fallback \
    --sentences "$sentences" --speed "$speed" > "$dir/peer.json"
  "$py" - "$dir/peer.json" "$run" <<'EOF'
import json, sys
o = json.load(open(sys.argv[1]))
print(f"run {sys.argv[2]} faster-whisper audio {o['audio_seconds']:6.1f} s  decode {o['processing_seconds']:6.1f} s  "
      f"RTF {o['rtf']:.3f}  WER {o['wer']*100:5.1f} %  peak RSS {o['peak_rss_mb']:.0f} MiB")
EOF
done
