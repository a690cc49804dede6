"""Shared test harness for the REST API tests in this folder (no third-party imports).

`HearthServer` starts the real server binary on a free loopback port with its own API key
pair and data dir (no TURN), waits for GET /readyz, mints tokens with `hearth token`, and
kills the server at the end. `SignalingParticipant` joins a meeting over WebSocket
signaling (`/v1/signal`, a minimal RFC 6455 client on the standard library) so that the
participant paths of the REST API have a real participant to act on.
"""

import base64
import json
import os
import socket
import struct
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
READY_DEADLINE_S = 30


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HearthServer:
    def __init__(self, binary: Path, api_key: str, api_secret: str, extra_args: tuple[str, ...] = ()):
        self.binary = Path(binary)
        self.api_key = api_key
        self.api_secret = api_secret
        self.extra_args = extra_args
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self._data = None
        self._log = None
        self.proc = None

    def __enter__(self) -> "HearthServer":
        self._data = tempfile.TemporaryDirectory()
        self._log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [
                str(self.binary),
                "--http", f"127.0.0.1:{self.port}",
                "--media-port", "0",
                "--turn-port", "0",
                "--data-dir", self._data.name,
                "--api-key", self.api_key,
                "--api-secret", self.api_secret,
                *self.extra_args,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + READY_DEADLINE_S
        while True:
            try:
                with urllib.request.urlopen(f"{self.base}/readyz", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = self.log()
                self.__exit__(None, None, None)
                raise SystemExit(f"the server did not become ready:\n{log}")
            time.sleep(0.1)

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._data is not None:
            self._data.cleanup()
            self._data = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        if self._log is None:
            return ""
        self._log.flush()
        self._log.seek(0)
        text = self._log.read()
        self._log.seek(0, os.SEEK_END)
        return text

    def token(self, identity: str, *, admin: bool = False, meeting: str | None = None) -> str:
        """A token minted by `hearth token` (the same binary) with this node's key pair."""
        cmd = [str(self.binary), "token", "--identity", identity,
               "--api-key", self.api_key, "--api-secret", self.api_secret]
        if admin:
            cmd.append("--admin")
        if meeting is not None:
            cmd += ["--meeting", meeting]
        return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()

    def request(self, method: str, path: str, token: str, body=None) -> tuple[int, dict | None]:
        """A plain JSON request (for setup, not under test)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.base}{path}", data=data, method=method)
        req.add_header("authorization", f"Bearer {token}")
        if data is not None:
            req.add_header("content-type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                raw = r.read()
                return r.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as e:
            raw = e.read()
            return e.code, json.loads(raw) if raw else None


class SignalingParticipant:
    """One participant joined over WebSocket signaling, kept alive by signaling pings."""

    def __init__(self, server: HearthServer, meeting: str, identity: str, token: str | None = None):
        self.server = server
        self.token = token
        self.meeting = meeting
        self.identity = identity
        self.id: str | None = None
        self.messages: list[dict] = []
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> "SignalingParticipant":
        token = self.token or self.server.token(self.identity, meeting=self.meeting)
        sock = socket.create_connection(("127.0.0.1", self.server.port), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            (
                "GET /v1/signal HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{self.server.port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(1)
            if not chunk:
                raise RuntimeError("signaling: connection closed during the handshake")
            head += chunk
        if not head.startswith(b"HTTP/1.1 101"):
            raise RuntimeError(f"signaling: no upgrade: {head!r}")
        self._sock = sock
        self._send({"join": {"token": token}})
        while True:
            msg = self._recv()
            if msg is None:
                raise RuntimeError("signaling: closed before join")
            if "join" in msg:
                self.id = msg["join"]["participantId"]
                break
            if "error" in msg:
                raise RuntimeError(f"signaling: join refused: {msg}")
        sock.settimeout(None)
        for target in (self._reader, self._pinger):
            t = threading.Thread(target=target, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._sock is not None and not exc[0]:
            try:
                self._send({"leave": {}})
            except OSError:
                pass
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()

    def _send(self, obj: dict, opcode: int = 1) -> None:
        payload = json.dumps(obj).encode() if opcode == 1 else obj
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        with self._lock:
            self._sock.sendall(header + mask + masked)

    def _read_exact(self, n: int) -> bytes | None:
        buf = b""
        while len(buf) < n:
            chunk = self._sock.recv(n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return buf

    def _recv(self) -> dict | None:
        """The next text message (answering WebSocket pings); None when the socket closes."""
        while True:
            head = self._read_exact(2)
            if head is None:
                return None
            opcode, n = head[0] & 0x0F, head[1] & 0x7F
            if n == 126:
                n = struct.unpack("!H", self._read_exact(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._read_exact(8))[0]
            payload = self._read_exact(n) if n else b""
            if payload is None or opcode == 8:
                return None
            if opcode == 9:
                self._send(payload, opcode=10)
            elif opcode == 1:
                return json.loads(payload)

    def _reader(self) -> None:
        try:
            while not self._stop.is_set():
                msg = self._recv()
                if msg is None:
                    return
                self.messages.append(msg)
        except OSError:
            return

    def wait_for(self, key: str, timeout: float = 5.0) -> dict:
        """The first message received with this key (e.g. `appMessage`), waiting for it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for msg in list(self.messages):
                if key in msg:
                    return msg[key]
            time.sleep(0.02)
        raise AssertionError(f"{self.identity}: no {key} within {timeout}s (got {self.messages})")

    def _pinger(self) -> None:
        while not self._stop.wait(5):
            try:
                self._send({"ping": {"timestamp": str(int(time.time() * 1000))}})
            except OSError:
                return
