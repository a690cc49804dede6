#!/usr/bin/env bash
# End-to-end check of the transcription test tools on this machine (about 30 s, 1 core):
# wer.py's unit tests, speak.sh (one clip and a sequence with its JSON), then
# openai_server.py on a free loopback port: /health, transcriptions in every response
# format, the WER of a few sentences, and the error contract. Ends with the plain
# "N passed, N failed" line; exits non-zero if anything failed.
#
#   tests/transcription/smoke.sh MODEL_DIR
#
# Needs setup.sh to have run. WER thresholds are generous: Whisper tiny.en on espeak-ng's
# voice gets roughly 0.3 on single sentences and 0.1-0.2 on multi-sentence clips.
set -uo pipefail
export PYTHONDONTWRITEBYTECODE=1  # wer.py is imported from here: leave no __pycache__
here=$(cd "$(dirname "$0")" && pwd)
model=${1:?usage: smoke.sh MODEL_DIR}
py=$here/../../target/transcription-venv/bin/python
[ -x "$py" ] || py=python3
tmp=$(mktemp -d)
server_pid=
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT

passed=0 failed=0
check() {  # check NAME COMMAND...: runs the command, counts it
  local name=$1; shift
  if out=$("$@" 2>&1); then
    passed=$((passed + 1)); echo "ok   $name"
  else
    failed=$((failed + 1)); echo "FAIL $name"; printf '%s\n' "$out" | tail -20 | sed 's/^/     /'
  fi
}
# jcheck FILE PYTHON_EXPR: asserts the expression over j (the parsed JSON in FILE).
jcheck() { python3 -c "import json,sys; j=json.load(open(sys.argv[1])); assert ($2), j" "$1"; }

check "wer.py --self-test" python3 "$here/wer.py" --self-test

check "speak.sh one sentence at 48 kHz" bash -c "
  '$here/speak.sh' 'The hogs were fed chopped corn and garbage.' '$tmp/one48.wav' &&
  [ \"\$(soxi -r '$tmp/one48.wav')\" = 48000 ] && [ \"\$(soxi -c '$tmp/one48.wav')\" = 1 ] &&
  [ \"\$(soxi -b '$tmp/one48.wav')\" = 16 ]"

check "speak.sh --sequence writes consistent JSON" bash -c "
  '$here/speak.sh' --sequence --count 6 --rate 16000 '$here/sentences.txt' '$tmp/seq.wav' &&
  python3 - '$tmp/seq.json' \"\$(soxi -D '$tmp/seq.wav')\" <<'PY'
import json, sys
j = json.load(open(sys.argv[1])); s = j['sentences']
assert len(s) == 6 and j['rate'] == 16000
assert abs(s[0]['start'] - j['lead']) < 1e-3
assert all(a['end'] > a['start'] > 0 for a in s)
assert all(abs(b['start'] - a['end'] - j['gap']) < 1e-3 for a, b in zip(s, s[1:]))
assert abs(s[-1]['end'] + j['tail'] - j['duration']) < 1e-3
assert abs(j['duration'] - float(sys.argv[2])) < 1e-3
PY"

# ---- the server
"$py" "$here/openai_server.py" "$model" --port 0 >"$tmp/server.out" 2>"$tmp/server.err" &
server_pid=$!
for _ in $(seq 120); do
  grep -q '^listening on ' "$tmp/server.out" && break
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 0.5
done
port=$(sed -n 's/^listening on .*:\([0-9]*\)$/\1/p' "$tmp/server.out")
check "openai_server.py prints 'listening on HOST:PORT'" test -n "$port"
if [ -z "$port" ]; then
  tail -20 "$tmp/server.err"
  echo "$passed passed, $((failed + 1)) failed"; exit 1
fi
base=http://127.0.0.1:$port
url=$base/v1/audio/transcriptions
post() { curl -sS --max-time 120 -o "$1" -w '%{http_code}' "$url" "${@:2}"; }

check "GET /health is 200" bash -c "[ \"\$(curl -sS -o /dev/null -w '%{http_code}' $base/health)\" = 200 ]"

check "json: one 48 kHz sentence" bash -c "
  [ \"\$(curl -sS --max-time 120 -o '$tmp/r1.json' -w '%{http_code}' $url -F file=@$tmp/one48.wav -F model=whisper-1)\" = 200 ] &&
  python3 -c \"import json,sys; sys.path.insert(0,'$here'); from wer import wer
t=json.load(open('$tmp/r1.json'))['text']; w=wer('The hogs were fed chopped corn and garbage.', t)
assert w <= 0.6, (w, t)\""

# Five sentences, one request each: corpus WER.
: >"$tmp/pairs.tsv"
for i in 10 11 12 13 14; do
  ref=$(sed -n "$((i + 1))p" "$here/sentences.txt")
  "$here/speak.sh" --rate 16000 -- "$ref" "$tmp/c$i.wav"
  code=$(post "$tmp/c$i.json" -F "file=@$tmp/c$i.wav" -F model=whisper-1 -F language=en)
  hyp=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1])).get('text',''))" "$tmp/c$i.json" 2>/dev/null)
  printf '%s\t%s\t%s\n' "$code" "$ref" "$hyp" >>"$tmp/pairs.tsv"
done
check "json: WER over five sentences <= 0.5" python3 -c "
import sys; sys.path.insert(0, '$here'); from wer import corpus_wer
rows = [l.rstrip('\n').split('\t') for l in open('$tmp/pairs.tsv')]
assert all(r[0] == '200' for r in rows), rows
w = corpus_wer((r[1], r[2]) for r in rows); print('WER', w)
assert w <= 0.5, (w, rows)"

check "json: six-sentence clip WER <= 0.5" bash -c "
  [ \"\$(curl -sS --max-time 120 -o '$tmp/rs.json' -w '%{http_code}' $url -F file=@$tmp/seq.wav)\" = 200 ] &&
  python3 -c \"import json,sys; sys.path.insert(0,'$here'); from wer import wer
t=json.load(open('$tmp/rs.json'))['text']; w=wer(json.load(open('$tmp/seq.json'))['text'], t)
assert w <= 0.5, (w, t)\""

check "text: plain text body" bash -c "
  [ \"\$(curl -sS --max-time 120 -o '$tmp/r.txt' -w '%{http_code}' $url -F file=@$tmp/c10.wav -F response_format=text)\" = 200 ] &&
  grep -qi '[a-z]' '$tmp/r.txt' && ! grep -q '{' '$tmp/r.txt'"

check "verbose_json: segments, language, duration" bash -c "
  [ \"\$(curl -sS --max-time 120 -o '$tmp/rv.json' -w '%{http_code}' $url -F file=@$tmp/c10.wav -F response_format=verbose_json -F prompt=Hello -F temperature=0.2)\" = 200 ]" 
check "verbose_json body" jcheck "$tmp/rv.json" \
  "j['language'] == 'en' and j['duration'] > 1 and j['segments'] and j['text'] and j['task'] == 'transcribe'"

check "400 without a file field" bash -c "
  [ \"\$(curl -sS -o '$tmp/e1.json' -w '%{http_code}' $url -F model=whisper-1)\" = 400 ]"
check "error body is OpenAI-style" jcheck "$tmp/e1.json" \
  "j['error']['type'] == 'invalid_request_error' and j['error']['message']"
check "400 for undecodable audio" bash -c "
  [ \"\$(curl -sS -o /dev/null -w '%{http_code}' $url -F file=@$here/sentences.txt)\" = 400 ]"
check "400 for a bad response_format" bash -c "
  [ \"\$(curl -sS -o /dev/null -w '%{http_code}' $url -F file=@$tmp/c10.wav -F response_format=xml)\" = 400 ]"
check "400 for a non-multipart body" bash -c "
  [ \"\$(curl -sS -o /dev/null -w '%{http_code}' $url -H 'Content-Type: application/json' -d '{}')\" = 400 ]"

kill "$server_pid" 2>/dev/null
wait "$server_pid" 2>/dev/null
server_pid=
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
