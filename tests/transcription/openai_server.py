#!/usr/bin/env python3
"""A small OpenAI-compatible speech-to-text server around faster-whisper.

    openai_server.py MODEL_DIR --port P [--host 127.0.0.1] [--threads 1] [--api-key KEY]
                     [--max-mb 25] [--no-fallback] [--no-warmup]

It stands in for a real third-party transcription engine in Hearth's tests. Endpoints:

  POST /v1/audio/transcriptions   multipart/form-data:
        file             (required) audio in any container/codec PyAV decodes (WAV, ...)
        model            (optional, ignored; logged)
        language         (optional ISO-639-1 code; an English-only model always uses "en")
        prompt           (optional) initial prompt
        temperature      (optional, 0..1; absent or 0 = faster-whisper's fallback ladder
                         0, 0.2, ..., 1, which samples randomly, unless --no-fallback)
        response_format  json (default) -> {"text": "..."}
                         text           -> the text, text/plain
                         verbose_json   -> {"task","language","duration","text","segments":[...]}
                         srt, vtt       -> subtitles, text/plain
        Other fields (e.g. timestamp_granularities[]) are accepted and ignored.
  GET /health                     200 {"status": "ok"}
  GET /v1/models                  200 OpenAI-style model list (one model, "whisper-1")

Errors are OpenAI-style JSON {"error": {"message", "type", "param", "code"}}: 400
invalid_request_error for bad input (no file, not multipart, undecodable or <0.1 s audio,
bad field values), 401 with --api-key and a missing/wrong "Authorization: Bearer KEY",
404/405 for unknown paths/methods, 411 without a body length, 413 over --max-mb,
500 server_error if the engine fails.

Decoding: beam size 5, without_timestamps=True, vad_filter=False, int8 on CPU.
Requests are served by threads; transcriptions run one at a time (a lock), like a
single-worker engine. Once the model is loaded and warmed up it prints
"listening on HOST:PORT" (the real port, also with --port 0) to stdout.
Run it with the venv's python (tests/transcription/setup.sh makes it); launched with
another python that lacks faster_whisper, it re-executes itself with
target/transcription-venv/bin/python if that exists.
"""

from __future__ import annotations

import os
import sys

_VENV_PY = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                        "..", "..", "target", "transcription-venv", "bin", "python")
try:
    import faster_whisper  # noqa: F401
except ImportError:
    if os.path.exists(_VENV_PY) and not os.environ.get("HEARTH_TRANSCRIPTION_REEXEC"):
        os.environ["HEARTH_TRANSCRIPTION_REEXEC"] = "1"
        os.execv(_VENV_PY, [_VENV_PY] + sys.argv)
    sys.exit("faster_whisper is not installed: run tests/transcription/setup.sh")

import argparse
import email.parser
import email.policy
import io
import json
import signal
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from faster_whisper import WhisperModel, decode_audio
from faster_whisper.tokenizer import _LANGUAGE_CODES

SAMPLE_RATE = 16000
MIN_SECONDS = 0.1
FORMATS = ("json", "text", "verbose_json", "srt", "vtt")


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type,
                          "param": self.param, "code": self.code}}


@dataclass
class FormPart:
    name: str
    filename: str | None
    content_type: str
    data: bytes


def parse_multipart(content_type: str, body: bytes) -> dict[str, FormPart]:
    """Parses a multipart/form-data body with the stdlib email package. Returns the parts
    by field name (the first part wins for a repeated name, except that later "file"
    parts never replace an earlier one)."""
    if not content_type.lower().startswith("multipart/form-data"):
        raise ApiError(400, "Content-Type must be multipart/form-data, got "
                       + (content_type or "nothing"))
    head = b"MIME-Version: 1.0\r\nContent-Type: " + content_type.encode("latin-1") + b"\r\n\r\n"
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if msg.get_param("boundary") is None:
        raise ApiError(400, "multipart/form-data Content-Type has no boundary")
    if not msg.is_multipart() or any(
            type(d).__name__ in ("StartBoundaryNotFoundDefect", "CloseBoundaryNotFoundDefect",
                                 "MultipartInvariantViolationDefect") for d in msg.defects):
        raise ApiError(400, "malformed multipart/form-data body")
    parts: dict[str, FormPart] = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not name:
            continue
        data = part.get_payload(decode=True) or b""
        if name not in parts:
            parts[name] = FormPart(name, part.get_filename(), part.get_content_type(), data)
    return parts


def field(parts: dict[str, FormPart], name: str) -> str | None:
    p = parts.get(name)
    if p is None:
        return None
    try:
        value = p.data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ApiError(400, f"field '{name}' is not UTF-8 text", param=name) from None
    return value or None


def _ts(seconds: float, sep: str) -> str:
    ms = int(round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


class Engine:
    def __init__(self, model_dir: str, threads: int, fallback: bool = True):
        self.fallback = fallback
        self.model = WhisperModel(model_dir, device="cpu", compute_type="int8",
                                  cpu_threads=threads, num_workers=1, local_files_only=True)
        self.lock = threading.Lock()

    def transcribe(self, audio: np.ndarray, language: str | None, prompt: str | None,
                   temperature: float | None):
        kwargs = {}
        if temperature:  # 0 or absent: keep faster-whisper's fallback ladder, as OpenAI does
            kwargs["temperature"] = temperature
        elif not self.fallback:
            kwargs["temperature"] = 0.0
        with self.lock:
            segments, info = self.model.transcribe(
                audio, language=language, initial_prompt=prompt, beam_size=5,
                without_timestamps=True, vad_filter=False, **kwargs)
            return list(segments), info  # the generator does the work: consume under the lock


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "hearth-test-whisper/1"
    engine: Engine
    api_key: str | None
    max_bytes: int

    # ---- plumbing
    def log_message(self, fmt, *args):
        sys.stderr.write(f"{self.address_string()} {self.log_date_time_string()} {fmt % args}\n")
        sys.stderr.flush()

    def _send(self, status: int, body: bytes, content_type: str, close: bool = False):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj, close: bool = False):
        self._send(status, json.dumps(obj).encode(), "application/json", close)

    def _error(self, e: ApiError, close: bool = False):
        self._json(e.status, e.body(), close)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks, total = [], 0
            while True:
                line = self.rfile.readline(1024)
                if not line:
                    raise ApiError(400, "truncated chunked body")
                try:
                    size = int(line.split(b";")[0].strip(), 16)
                except ValueError:
                    raise ApiError(400, "bad chunk size") from None
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                total += size
                if total > self.max_bytes:
                    raise ApiError(413, f"request body over {self.max_bytes} bytes")
                chunks.append(self.rfile.read(size))
                self.rfile.readline(16)
        length = self.headers.get("Content-Length")
        if length is None:
            raise ApiError(411, "Content-Length or chunked Transfer-Encoding required")
        try:
            n = int(length)
        except ValueError:
            raise ApiError(400, "bad Content-Length") from None
        if n > self.max_bytes:
            raise ApiError(413, f"request body of {n} bytes is over {self.max_bytes} bytes")
        body = self.rfile.read(n)
        if len(body) != n:
            raise ApiError(400, "truncated body")
        return body

    def _early_error(self) -> ApiError | None:
        """What can be refused from the request line and headers alone."""
        path = self.path.split("?")[0]
        if path != "/v1/audio/transcriptions":
            return ApiError(404, f"no route for POST {path}")
        if not self._authorized():
            return ApiError(401, "missing or wrong API key (Authorization: Bearer KEY)",
                            code="invalid_api_key")
        try:
            n = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            return ApiError(400, "bad Content-Length")
        if n > self.max_bytes:
            return ApiError(413, f"request body of {n} bytes is over {self.max_bytes} bytes")
        return None

    def handle_expect_100(self):
        # Refuse before the client sends the body, rather than after it did.
        if self.command == "POST" and (e := self._early_error()) is not None:
            self._error(e, close=True)
            return False
        return super().handle_expect_100()

    def _discard_body(self) -> bool:
        """Reads and drops a body that is refused, so that the client gets to read the
        answer and the connection stays usable; False if it is too large to bother."""
        try:
            n = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            return False
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower() or n > 512 << 20:
            return False
        while n > 0:
            got = self.rfile.read(min(n, 1 << 20))
            if not got:
                return False
            n -= len(got)
        return True

    def _authorized(self) -> bool:
        if not self.api_key:
            return True
        return self.headers.get("Authorization", "") == f"Bearer {self.api_key}"

    # ---- routes
    def do_GET(self):
        path = self.path.split("?")[0]
        if path == "/health":
            self._json(200, {"status": "ok"})
        elif path == "/v1/models":
            self._json(200, {"object": "list", "data": [
                {"id": "whisper-1", "object": "model", "created": 0, "owned_by": "hearth-test"}]})
        elif path == "/v1/audio/transcriptions":
            self._error(ApiError(405, "use POST for /v1/audio/transcriptions"))
        else:
            self._error(ApiError(404, f"no route for GET {path}"))

    do_HEAD = do_GET

    def do_POST(self):
        if (e := self._early_error()) is not None:
            self._error(e, close=not self._discard_body())
            return
        try:
            body = self._read_body()
        except ApiError as e:
            self._error(e, close=True)
            return
        try:
            self._transcribe(body)
        except ApiError as e:
            self._error(e)
        except Exception as e:  # an engine failure, not the client's
            self.log_message("engine error: %r", e)
            self._error(ApiError(500, f"transcription failed: {e}", "server_error"))

    def _transcribe(self, body: bytes):
        parts = parse_multipart(self.headers.get("Content-Type", ""), body)
        upload = parts.get("file")
        if upload is None:
            raise ApiError(400, "missing required field 'file'", param="file")
        if not upload.data:
            raise ApiError(400, "the uploaded file is empty", param="file")
        fmt = field(parts, "response_format") or "json"
        if fmt not in FORMATS:
            raise ApiError(400, f"response_format must be one of {', '.join(FORMATS)}; got '{fmt}'",
                           param="response_format")
        language = field(parts, "language")
        if language is not None:
            language = language.lower()
            if language not in _LANGUAGE_CODES:
                raise ApiError(400, f"unsupported language '{language}'", param="language")
        temperature = None
        if (t := field(parts, "temperature")) is not None:
            try:
                temperature = float(t)
            except ValueError:
                raise ApiError(400, f"temperature must be a number; got '{t}'",
                               param="temperature") from None
            if not 0.0 <= temperature <= 1.0:
                raise ApiError(400, "temperature must be between 0 and 1", param="temperature")
        prompt = field(parts, "prompt")
        model = field(parts, "model")

        try:
            audio = decode_audio(io.BytesIO(upload.data), sampling_rate=SAMPLE_RATE)
        except Exception as e:
            raise ApiError(400, f"could not decode the audio file: {e}", param="file") from None
        duration = audio.shape[0] / SAMPLE_RATE
        if duration < MIN_SECONDS:
            raise ApiError(400, f"audio file is too short ({duration:.3f} s); "
                           f"minimum audio length is {MIN_SECONDS} seconds", param="file",
                           code="audio_too_short")

        t0 = time.perf_counter()
        segments, info = self.engine.transcribe(audio, language, prompt, temperature)
        took = time.perf_counter() - t0
        text = "".join(s.text for s in segments).strip()
        self.log_message("transcribed %.2f s of audio in %.2f s (rtf %.3f) model=%s format=%s: %r",
                         duration, took, took / duration, model, fmt, text)

        if fmt == "json":
            self._json(200, {"text": text})
        elif fmt == "text":
            self._send(200, (text + "\n").encode(), "text/plain; charset=utf-8")
        elif fmt == "verbose_json":
            self._json(200, {
                "task": "transcribe", "language": info.language, "duration": round(duration, 3),
                "text": text,
                "segments": [{
                    "id": i, "seek": s.seek, "start": round(s.start, 3),
                    "end": round(s.end, 3), "text": s.text, "tokens": list(s.tokens),
                    "temperature": s.temperature, "avg_logprob": s.avg_logprob,
                    "compression_ratio": s.compression_ratio, "no_speech_prob": s.no_speech_prob,
                } for i, s in enumerate(segments)],
            })
        else:
            sep, out = ("," if fmt == "srt" else "."), []
            if fmt == "vtt":
                out.append("WEBVTT\n")
            for i, s in enumerate(segments, 1):
                cue = f"{_ts(s.start, sep)} --> {_ts(s.end, sep)}\n{s.text.strip()}\n"
                out.append(f"{i}\n{cue}" if fmt == "srt" else cue)
            self._send(200, "\n".join(out).encode(), "text/plain; charset=utf-8")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description="OpenAI-compatible transcription server (faster-whisper)")
    ap.add_argument("model_dir", help="CTranslate2 Whisper model directory (model.bin, tokenizer.json, ...)")
    ap.add_argument("--port", type=int, required=True, help="TCP port (0 = any free port)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--threads", type=int, default=1, help="CTranslate2 CPU threads (default 1)")
    ap.add_argument("--api-key", help="require 'Authorization: Bearer KEY'")
    ap.add_argument("--max-mb", type=float, default=25.0, help="largest request body, MiB (default 25)")
    ap.add_argument("--no-fallback", action="store_true",
                    help="temperature absent or 0 decodes at 0 only (repeatable answers) instead "
                         "of faster-whisper's fallback ladder 0, 0.2, ..., 1 (random sampling)")
    ap.add_argument("--no-warmup", action="store_true", help="skip the warm-up transcription")
    a = ap.parse_args(argv)

    if not os.path.isfile(os.path.join(a.model_dir, "model.bin")):
        print(f"openai_server.py: no model.bin in {a.model_dir}", file=sys.stderr)
        return 1
    engine = Engine(a.model_dir, a.threads, fallback=not a.no_fallback)
    if not a.no_warmup:
        engine.transcribe(np.zeros(SAMPLE_RATE, dtype=np.float32), "en", None, None)

    Handler.engine, Handler.api_key, Handler.max_bytes = engine, a.api_key, int(a.max_mb * 1024 * 1024)
    server_class = ThreadingHTTPServer
    if ":" in a.host:  # an IPv6 address such as ::1
        server_class = type("Server6", (ThreadingHTTPServer,), {"address_family": socket.AF_INET6})
    server = server_class((a.host, a.port), Handler)
    server.daemon_threads = True

    def stop(*_):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, stop)

    host, port = server.server_address[:2]
    print(f"listening on {host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
