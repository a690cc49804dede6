#!/usr/bin/env python3
"""A streaming speech-to-text server around faster-whisper, speaking the WebSocket
contract of Jitsi's opus-transcriber-proxy.

    streaming_server.py MODEL_DIR --port P [--host 127.0.0.1] [--threads 1] [--no-warmup]

It stands in for a real streaming transcription service in Hearth's tests (the proxy
itself forwards to cloud engines that are not reachable from here), the way
openai_server.py stands in for an OpenAI-compatible one. The contract:

  connect  ws://HOST:PORT/transcribe?sessionId=S&sendBack=true&sendBackInterim=true&lang=en
  in       {"event":"start","start":{"tag":T,"mediaFormat":{"encoding":"opus",...}}}
           {"event":"media","media":{"tag":T,"chunk":n,"timestamp":t,"payload":BASE64 OPUS}}
           {"event":"ping","id":n}                       -> {"event":"pong","id":n}
  out      {"type":"transcription-result","event":"transcription-result","is_interim":B,
            "transcript":[{"text":...,"confidence":...}],"participant":{"id":T},
            "timestamp":MS,"language":L,"message_id":...}

Each tag (participant) is transcribed on its own: its Opus frames are decoded (PyAV's
Opus decoder, 48 kHz) and resampled to 16 kHz; an energy detector finds speech (two 20 ms
frames above -45 dBFS start it, with the 0.5 s before kept; 600 ms below end it, as do
20 s of speech); while someone speaks, the utterance so far is decoded greedily every
0.7 s of new audio (an interim, if the engine is free and `sendBackInterim`), and when they
pause it is decoded once more with beam search 5 (the final, if `sendBack`). Decodes run
one at a time on a thread.

Bad input: text that is not JSON closes the connection (1003); media without a tag or
whose payload is not base64 is skipped and counted; undecodable Opus is skipped. Once the
model is loaded and warmed up it prints "listening on HOST:PORT" (the real port, also
with --port 0) to stdout. Run it with target/transcription-venv/bin/python
(tests/transcription/setup.sh makes it); with another python it re-executes itself there.
"""

from __future__ import annotations

import os
import sys

_VENV_PY = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                        "..", "..", "target", "transcription-venv", "bin", "python")
try:
    import faster_whisper  # noqa: F401
    import websockets  # noqa: F401
except ImportError:
    if os.path.exists(_VENV_PY) and not os.environ.get("HEARTH_TRANSCRIPTION_REEXEC"):
        os.environ["HEARTH_TRANSCRIPTION_REEXEC"] = "1"
        os.execv(_VENV_PY, [_VENV_PY] + sys.argv)
    sys.exit("faster_whisper and websockets are not installed: run tests/transcription/setup.sh")

import argparse
import asyncio
import base64
import binascii
import concurrent.futures
import json
import time
import urllib.parse
import uuid

import av
import numpy as np
from faster_whisper import WhisperModel
from websockets.asyncio.server import serve

RATE = 16000
FRAME = 320                 # 20 ms at 16 kHz
SPEECH_DBFS = -45.0         # a frame above it is voiced
START_FRAMES = 2            # voiced frames in a row that start an utterance
END_SILENCE = 0.6           # seconds below the threshold that end it
MAX_UTTERANCE = 20.0        # seconds
INTERIM_EVERY = 0.7         # seconds of new speech between interim decodes
MIN_INTERIM = 0.5           # seconds of speech before the first interim
PRE_ROLL = 0.5              # seconds kept before the detected start


class Engine:
    """faster-whisper on one thread: decodes run one at a time."""

    def __init__(self, model_dir: str, threads: int):
        self.model = WhisperModel(model_dir, device="cpu", compute_type="int8",
                                  cpu_threads=threads)
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        self.queued = 0            # decodes submitted and not finished

    def _decode(self, audio: np.ndarray, language: str, beam: int) -> str:
        segments, _ = self.model.transcribe(
            audio, language=language if language else None, beam_size=beam,
            without_timestamps=True, vad_filter=False, condition_on_previous_text=False,
            temperature=0.0)
        return " ".join(s.text.strip() for s in segments).strip()

    @property
    def busy(self) -> bool:
        return self.queued > 0

    async def decode(self, audio: np.ndarray, language: str, beam: int) -> str:
        self.queued += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self.pool, self._decode, audio, language, beam)
        finally:
            self.queued -= 1


class Speaker:
    """One tag's audio: decode, resample, detect speech, cut utterances."""

    def __init__(self, tag: str):
        self.tag = tag
        self.decoder = av.codec.CodecContext.create("opus", "r")
        self.decoder.sample_rate = 48000
        self.resampler = av.AudioResampler(format="flt", layout="mono", rate=RATE)
        self.pending = np.zeros(0, dtype=np.float32)   # samples not yet in a frame
        self.history = np.zeros(0, dtype=np.float32)   # recent audio (pre-roll)
        self.utterance: list[np.ndarray] | None = None
        self.utterance_id = 0
        self.voiced_run = 0
        self.last_voice = 0.0
        self.started = 0.0
        self.interim_at = 0.0      # speech seconds at the last interim decode
        self.interim_running = False
        self.interim_shown = False # an interim of this utterance was sent
        self.undecodable = 0

    def feed(self, opus: bytes) -> None:
        try:
            frames = self.decoder.decode(av.packet.Packet(opus))
        except (av.error.FFmpegError, ValueError):
            self.undecodable += 1
            return
        for frame in frames:
            frame.pts = None
            for out in self.resampler.resample(frame):
                self.pending = np.concatenate([self.pending, out.to_ndarray().reshape(-1)])
        now = time.monotonic()
        while len(self.pending) >= FRAME:
            chunk, self.pending = self.pending[:FRAME], self.pending[FRAME:]
            self._frame(chunk, now)

    def _frame(self, chunk: np.ndarray, now: float) -> None:
        rms = float(np.sqrt(np.mean(chunk * chunk)) + 1e-9)
        voiced = 20 * np.log10(rms) > SPEECH_DBFS
        self.voiced_run = self.voiced_run + 1 if voiced else 0
        if voiced:
            self.last_voice = now
        if self.utterance is None:
            self.history = np.concatenate([self.history, chunk])[-int(PRE_ROLL * RATE):]
            if self.voiced_run >= START_FRAMES:
                self.utterance = [self.history.copy()]
                self.utterance_id += 1
                self.started = now
                self.interim_at = 0.0
                self.interim_shown = False
        else:
            self.utterance.append(chunk)

    def speech_seconds(self) -> float:
        return sum(len(c) for c in self.utterance) / RATE if self.utterance else 0.0

    def audio(self) -> np.ndarray:
        return np.concatenate(self.utterance) if self.utterance else np.zeros(0, np.float32)

    def ended(self, now: float) -> bool:
        return self.utterance is not None and (
            now - self.last_voice >= END_SILENCE or self.speech_seconds() >= MAX_UTTERANCE)


class Session:
    def __init__(self, ws, engine: Engine, params: dict):
        self.ws = ws
        self.engine = engine
        self.language = params.get("lang", [""])[0]
        self.send_finals = params.get("sendBack", ["false"])[0] == "true"
        self.send_interims = params.get("sendBackInterim", ["false"])[0] == "true"
        self.speakers: dict[str, Speaker] = {}
        self.skipped = 0
        self.tasks: set[asyncio.Task] = set()

    async def result(self, tag: str, text: str, interim: bool, closes: bool = False) -> None:
        # An empty final is sent only to close interim words already shown.
        if (not text and not closes) or (interim and not self.send_interims) \
                or (not interim and not self.send_finals):
            return
        msg = {"type": "transcription-result", "event": "transcription-result",
               "is_interim": interim, "transcript": [{"text": text, "confidence": 1.0}],
               "participant": {"id": tag}, "timestamp": int(time.time() * 1000),
               "language": self.language or "en", "message_id": str(uuid.uuid4())}
        try:
            await self.ws.send(json.dumps(msg))
        except websockets.ConnectionClosed:
            pass

    def spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def interim(self, sp: Speaker, utterance_id: int, audio: np.ndarray) -> None:
        try:
            text = await self.engine.decode(audio, self.language, 1)
        finally:
            sp.interim_running = False
        # Stale once the utterance has ended (its final is on its way).
        if sp.utterance is not None and sp.utterance_id == utterance_id and text:
            sp.interim_shown = True
            await self.result(sp.tag, text, True)

    async def final(self, sp: Speaker, audio: np.ndarray, shown: bool) -> None:
        text = await self.engine.decode(audio, self.language, 5)
        await self.result(sp.tag, text, False, closes=shown)

    def step(self, sp: Speaker) -> None:
        """After new audio or a tick: cut a final, or start an interim."""
        now = time.monotonic()
        if sp.ended(now):
            audio = sp.audio()
            sp.utterance = None
            sp.history = np.zeros(0, dtype=np.float32)
            self.spawn(self.final(sp, audio, sp.interim_shown))
            return
        seconds = sp.speech_seconds()
        if (sp.utterance is not None and self.send_interims and not sp.interim_running
                and not self.engine.busy and seconds >= MIN_INTERIM
                and seconds - sp.interim_at >= INTERIM_EVERY):
            sp.interim_running = True
            sp.interim_at = seconds
            self.spawn(self.interim(sp, sp.utterance_id, sp.audio()))

    def media(self, media: dict) -> None:
        tag = media.get("tag")
        payload = media.get("payload")
        if not isinstance(tag, str) or not tag or not isinstance(payload, str):
            self.skipped += 1
            return
        try:
            opus = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            self.skipped += 1
            return
        sp = self.speakers.get(tag)
        if sp is None:
            if len(self.speakers) >= 64:
                self.skipped += 1
                return
            sp = self.speakers[tag] = Speaker(tag)
        sp.feed(opus)
        self.step(sp)

    async def ticker(self) -> None:
        # Pauses end utterances even when no packets come (DTX, a muted microphone).
        while True:
            await asyncio.sleep(0.1)
            for sp in list(self.speakers.values()):
                self.step(sp)


async def handler(ws, engine: Engine) -> None:
    request = ws.request
    url = urllib.parse.urlsplit(request.path)
    if url.path.rstrip("/") not in ("/transcribe", ""):
        await ws.close(1008, "unknown path")
        return
    session = Session(ws, engine, urllib.parse.parse_qs(url.query))
    ticker = asyncio.create_task(session.ticker())
    try:
        async for message in ws:
            if isinstance(message, bytes):
                await ws.close(1003, "binary messages are not part of the protocol")
                return
            try:
                msg = json.loads(message)
            except json.JSONDecodeError:
                await ws.close(1003, "messages are JSON text")
                return
            if not isinstance(msg, dict):
                session.skipped += 1
                continue
            event = msg.get("event")
            if event == "media" and isinstance(msg.get("media"), dict):
                session.media(msg["media"])
            elif event == "start":
                pass  # the tag's format: browsers' Opus, what we decode anyway
            elif event == "ping":
                await ws.send(json.dumps({"event": "pong", "id": msg.get("id")}))
            else:
                session.skipped += 1
    except websockets.ConnectionClosed:
        pass
    finally:
        ticker.cancel()
        # What was being said when the connection ended is transcribed no more.
        for task in list(session.tasks):
            task.cancel()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-warmup", action="store_true")
    args = parser.parse_args()
    engine = Engine(args.model, args.threads)
    if not args.no_warmup:
        await engine.decode(np.zeros(RATE, dtype=np.float32), "en", 1)
    async with serve(lambda ws: handler(ws, engine), args.host, args.port,
                     max_size=1 << 20) as server:
        host, port = next(iter(server.sockets)).getsockname()[:2]
        print(f"listening on {host}:{port}", flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
