#!/usr/bin/env bash
# Synthesizes English speech with espeak-ng into a mono 16-bit WAV (sox converts it).
#
#   speak.sh [options] SENTENCE_OR_FILE OUT.wav
#       One clip: the text (or, if the argument is an existing file, that file's text)
#       spoken into OUT.wav.
#   speak.sh --sequence [options] FILE OUT.wav
#       One long clip: every non-empty line of FILE is one sentence, laid out as
#       lead silence, sentence 1, gap, sentence 2, gap, ..., sentence N, tail silence.
#       Writes OUT.json beside OUT.wav (or --json PATH) with the reference text and each
#       sentence's speech start/end in seconds from the start of OUT.wav.
#
# Options:
#   --rate HZ      output sample rate (default 48000: a browser's fake microphone;
#                  16000 for speech engines)
#   --voice V      espeak-ng voice (default en-us)
#   --speed WPM    espeak-ng words per minute (default 175, espeak-ng's own default)
#   --lead S       --sequence: silence before the first sentence, seconds (default 1.5)
#   --gap S        --sequence: silence between sentences, seconds (default 2)
#   --tail S       --sequence: silence after the last sentence, seconds (default 2)
#   --skip K       --sequence: skip the first K sentences of FILE (default 0)
#   --count N      --sequence: use at most N sentences (default all)
#   --json PATH    --sequence: where to write the JSON (default OUT.wav with .json)
#
# espeak-ng's output ends with ~0.3 s of silence; each spoken piece is trimmed of
# leading/trailing silence below -60 dBFS so that the JSON times bound the speech itself,
# and normalized to a -3 dBFS peak (headroom for resampling).
# The output is byte-for-byte repeatable for given espeak-ng/sox versions (sox -R seeds
# its dither with a fixed number).
set -euo pipefail

usage() { sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

rate=48000 voice=en-us speed=175 lead=1.5 gap=2 tail=2 skip=0 count= json= sequence=0
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --rate) rate=${2:?}; shift 2 ;;
    --voice) voice=${2:?}; shift 2 ;;
    --speed) speed=${2:?}; shift 2 ;;
    --lead) lead=${2:?}; shift 2 ;;
    --gap) gap=${2:?}; shift 2 ;;
    --tail) tail=${2:?}; shift 2 ;;
    --skip) skip=${2:?}; shift 2 ;;
    --count) count=${2:?}; shift 2 ;;
    --json) json=${2:?}; shift 2 ;;
    --sequence) sequence=1; shift ;;
    -h|--help) usage ;;
    --) shift; args+=("$@"); break ;;
    -?*) echo "speak.sh: unknown option $1" >&2; usage ;;
    *) args+=("$1"); shift ;;
  esac
done
[ ${#args[@]} -eq 2 ] || usage
src=${args[0]} out=${args[1]}

for tool in espeak-ng sox soxi python3; do
  command -v "$tool" >/dev/null || {
    echo "speak.sh: $tool not found (apt-get install -y espeak-ng sox python3)" >&2; exit 1; }
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# speak TEXT OUT: one trimmed mono 16-bit piece at $rate.
speak() {
  printf '%s\n' "$1" | espeak-ng --stdin -v "$voice" -s "$speed" -w "$tmp/raw.wav"
  sox -R "$tmp/raw.wav" -r "$rate" -c 1 -b 16 -e signed-integer "$2" \
    silence 1 0.02 -60d reverse silence 1 0.02 -60d reverse gain -n -3
  if [ "$(soxi -s "$2")" -eq 0 ]; then
    echo "speak.sh: espeak-ng produced no audible speech for: $1" >&2; exit 1
  fi
}

mkdir -p "$(dirname "$out")"

if [ "$sequence" = 0 ]; then
  if [ -f "$src" ]; then text=$(tr '\n' ' ' <"$src"); else text=$src; fi
  [ -n "${text// /}" ] || { echo "speak.sh: empty text" >&2; exit 1; }
  speak "$text" "$out"
  exit 0
fi

[ -f "$src" ] || { echo "speak.sh: --sequence needs a file of sentences, got $src" >&2; exit 1; }
mapfile -t lines < <(grep -v '^[[:space:]]*$' "$src" | tail -n +"$((skip + 1))")
[ -n "$count" ] && lines=("${lines[@]:0:$count}")
[ ${#lines[@]} -gt 0 ] || { echo "speak.sh: no sentences in $src (skip=$skip count=$count)" >&2; exit 1; }

silence() { sox -R -n -r "$rate" -c 1 -b 16 -e signed-integer "$2" trim 0 "$1"; }
silence "$lead" "$tmp/lead.wav"
silence "$gap" "$tmp/gap.wav"
silence "$tail" "$tmp/tail.wav"

# Positions are counted in samples (soxi -s) so that they match the concatenation exactly.
pieces=("$tmp/lead.wav")
pos=$(soxi -s "$tmp/lead.wav")
gap_samples=$(soxi -s "$tmp/gap.wav")
: >"$tmp/index.tsv"
for i in "${!lines[@]}"; do
  line=$(printf '%s' "${lines[$i]}" | sed 's/^[[:space:]]*//; s/[[:space:]]*$//')
  speak "$line" "$tmp/s$i.wav"
  n=$(soxi -s "$tmp/s$i.wav")
  printf '%s\t%s\t%s\n' "$pos" "$((pos + n))" "$line" >>"$tmp/index.tsv"
  pieces+=("$tmp/s$i.wav")
  pos=$((pos + n))
  if [ "$i" -lt $((${#lines[@]} - 1)) ]; then
    pieces+=("$tmp/gap.wav")
    pos=$((pos + gap_samples))
  fi
done
pieces+=("$tmp/tail.wav")
sox -R "${pieces[@]}" "$out"

[ -n "$json" ] || json="${out%.wav}.json"
python3 - "$tmp/index.tsv" "$json" "$out" "$rate" "$voice" "$speed" "$lead" "$gap" "$tail" "$(soxi -s "$out")" <<'PY'
import json, os, sys
index, path, wav, rate, voice, speed, lead, gap, tail, total = sys.argv[1:]
rate = int(rate)
sentences = []
with open(index, encoding="utf-8") as f:
    for i, row in enumerate(f):
        start, end, text = row.rstrip("\n").split("\t", 2)
        sentences.append({"index": i, "text": text,
                          "start": round(int(start) / rate, 4), "end": round(int(end) / rate, 4)})
doc = {
    "wav": os.path.basename(wav),
    "rate": rate,
    "voice": voice,
    "speed_wpm": int(speed),
    "lead": float(lead), "gap": float(gap), "tail": float(tail),
    "duration": round(int(total) / rate, 4),
    "speech_seconds": round(sum(s["end"] - s["start"] for s in sentences), 4),
    "text": " ".join(s["text"] for s in sentences),
    "sentences": sentences,
}
with open(path, "w", encoding="utf-8") as f:
    json.dump(doc, f, indent=2)
    f.write("\n")
PY
