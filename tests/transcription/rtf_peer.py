#!/usr/bin/env python3
"""Benchmark peer: how fast and how well faster-whisper transcribes the test corpus here.

    rtf_peer.py MODEL_DIR [--threads 1] [--sentences N] [--pin CPU] [--details]

Synthesizes the first N sentences of sentences.txt (default: all) with speak.sh at 16 kHz,
loads the CTranslate2 Whisper model (int8, CPU, cpu_threads=--threads), transcribes one
clip untimed as a warm-up, then transcribes each clip (beam 5, without_timestamps,
no VAD, language "en"; faster-whisper's temperature fallback unless --no-fallback) and
prints one JSON object:

  audio_seconds       total length of the clips
  processing_seconds  wall time spent in transcribe() over all clips (decoding the WAV
                      files and the warm-up are not counted)
  rtf                 processing_seconds / audio_seconds (below 1 = faster than real time)
  cpu_seconds, rtf_cpu   the same with process CPU time
  wer                 corpus word error rate (total edits / total reference words, wer.py)
  peak_rss_mb         this process's peak resident memory (getrusage ru_maxrss)
  fallback_sentences  sentences re-decoded at a temperature above 0 (random sampling:
                      these make runs differ; --no-fallback makes them repeatable)
  ...plus the settings, versions and, with --details, every call's text and timing.

--group K transcribes K sentences per call (joined by --gap s of silence) instead of one:
Whisper pads every call to a 30 s window, so short calls cost nearly as much as long ones.

--pin CPU restricts this process (and so its engine threads) to that CPU with
os.sched_setaffinity before the model loads; `taskset -c CPU rtf_peer.py ...` works too.
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
_VENV_PY = os.path.join(_HERE, "..", "..", "target", "transcription-venv", "bin", "python")
try:
    import faster_whisper  # noqa: F401
except ImportError:
    if os.path.exists(_VENV_PY) and not os.environ.get("HEARTH_TRANSCRIPTION_REEXEC"):
        os.environ["HEARTH_TRANSCRIPTION_REEXEC"] = "1"
        os.execv(_VENV_PY, [_VENV_PY] + sys.argv)
    sys.exit("faster_whisper is not installed: run tests/transcription/setup.sh")

import argparse
import json
import platform
import resource
import subprocess
import tempfile
import time

import ctranslate2
import numpy as np
from faster_whisper import WhisperModel, decode_audio

sys.dont_write_bytecode = True  # importing wer.py leaves no __pycache__ in the tree
sys.path.insert(0, _HERE)
from wer import errors  # noqa: E402

SAMPLE_RATE = 16000


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description="faster-whisper real-time factor and WER on the corpus")
    ap.add_argument("model_dir")
    ap.add_argument("--threads", type=int, default=1, help="CTranslate2 CPU threads (default 1)")
    ap.add_argument("--sentences", type=int, help="use the first N sentences (default all)")
    ap.add_argument("--corpus", default=os.path.join(_HERE, "sentences.txt"))
    ap.add_argument("--pin", type=int, metavar="CPU", help="pin this process to one CPU")
    ap.add_argument("--voice", default="en-us", help="espeak-ng voice (default en-us)")
    ap.add_argument("--speed", type=int, default=175, help="espeak-ng words per minute (default 175)")
    ap.add_argument("--beam", type=int, default=5, help="beam size (default 5)")
    ap.add_argument("--group", type=int, default=1, metavar="K",
                    help="transcribe K sentences per call, joined by --gap seconds of silence "
                         "(default 1: one call per sentence; keep K * ~3 s under 30 s)")
    ap.add_argument("--gap", type=float, default=1.0, help="silence between grouped sentences, s")
    ap.add_argument("--no-fallback", action="store_true",
                    help="decode at temperature 0 only (deterministic); by default faster-whisper "
                         "re-decodes a failing window at 0.2, 0.4, ... (random sampling)")
    ap.add_argument("--details", action="store_true", help="include every sentence")
    a = ap.parse_args(argv)

    if a.pin is not None:
        os.sched_setaffinity(0, {a.pin})
    with open(a.corpus, encoding="utf-8") as f:
        refs = [line.strip() for line in f if line.strip()]
    if a.sentences is not None:
        refs = refs[: a.sentences]
    if not refs:
        sys.exit("no sentences")
    n_sentences = len(refs)

    with tempfile.TemporaryDirectory(prefix="rtf-peer-") as tmp:
        clips = []
        for i, ref in enumerate(refs):
            path = os.path.join(tmp, f"s{i:03d}.wav")
            subprocess.run([os.path.join(_HERE, "speak.sh"), "--rate", str(SAMPLE_RATE),
                            "--voice", a.voice, "--speed", str(a.speed), "--", ref, path], check=True)
            clips.append(decode_audio(path, sampling_rate=SAMPLE_RATE))
    if a.group > 1:  # join K sentences (and their texts) per call
        silence = np.zeros(int(a.gap * SAMPLE_RATE), dtype=np.float32)
        groups = [range(i, min(i + a.group, len(refs))) for i in range(0, len(refs), a.group)]
        clips = [np.concatenate([x for k in g for x in (clips[k], silence)][:-1]) for g in groups]
        refs = [" ".join(refs[k] for k in g) for g in groups]

    t0 = time.perf_counter()
    model = WhisperModel(a.model_dir, device="cpu", compute_type="int8",
                         cpu_threads=a.threads, num_workers=1, local_files_only=True)
    load_seconds = time.perf_counter() - t0

    extra = {"temperature": 0.0} if a.no_fallback else {}

    def transcribe(audio):
        segments, _ = model.transcribe(audio, language="en", beam_size=a.beam,
                                       without_timestamps=True, vad_filter=False, **extra)
        segments = list(segments)  # the generator does the work
        fell_back = any((seg.temperature or 0) > 0 for seg in segments)
        return "".join(seg.text for seg in segments).strip(), fell_back

    transcribe(clips[0])  # warm-up, untimed
    fallbacks = 0

    wall = cpu = 0.0
    s = d = ins = nref = 0
    rows = []
    for ref, audio in zip(refs, clips):
        w0, c0 = time.perf_counter(), time.process_time()
        hyp, fell_back = transcribe(audio)
        fallbacks += fell_back
        dw, dc = time.perf_counter() - w0, time.process_time() - c0
        wall, cpu = wall + dw, cpu + dc
        e = errors(ref, hyp)
        s, d, ins, nref = s + e.substitutions, d + e.deletions, ins + e.insertions, nref + e.reference_words
        rows.append({"reference": ref, "hypothesis": hyp, "wer": round(e.wer, 4),
                     "audio_seconds": round(len(audio) / SAMPLE_RATE, 3),
                     "processing_seconds": round(dw, 3), "fallback": fell_back})

    audio_seconds = sum(len(c) for c in clips) / SAMPLE_RATE
    out = {
        "engine": "faster-whisper",
        "model_dir": os.path.abspath(a.model_dir),
        "sentences": n_sentences,
        "calls": len(refs),
        "group": a.group,
        "threads": a.threads,
        "pinned_cpu": a.pin,
        "affinity": sorted(os.sched_getaffinity(0)),
        "voice": a.voice, "speed_wpm": a.speed,
        "beam_size": a.beam,
        "compute_type": "int8",
        "temperature_fallback": not a.no_fallback,
        "audio_seconds": round(audio_seconds, 3),
        "processing_seconds": round(wall, 3),
        "rtf": round(wall / audio_seconds, 4),
        "cpu_seconds": round(cpu, 3),
        "rtf_cpu": round(cpu / audio_seconds, 4),
        "wer": round((s + d + ins) / nref, 4),
        "substitutions": s, "deletions": d, "insertions": ins, "reference_words": nref,
        "exact_calls": sum(r["wer"] == 0 for r in rows),
        "fallback_sentences": fallbacks,
        "model_load_seconds": round(load_seconds, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "versions": {"python": platform.python_version(),
                     "faster_whisper": faster_whisper.__version__,
                     "ctranslate2": ctranslate2.__version__},
    }
    if a.details:
        out["details"] = rows
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
