#!/usr/bin/env python3
"""Third-party client interop test of Hearth's gRPC API, with Python's grpcio.

Hearth's own tests talk to the API through tonic, the same library the server uses; this
one checks that an independent gRPC implementation (the C-core behind Python's `grpcio`)
interoperates with it over HTTP/2 cleartext on the shared HTTP port, that tokens minted by
hand (HS256 JWT via hmac/hashlib) are accepted, and that the standard health and reflection
services answer stock clients.

It starts the real server binary on a free loopback port with its own API key, data dir
and no TURN, waits for GET /readyz, generates Python stubs from proto/hearth/v1/*.proto
with grpc_tools.protoc into a temporary directory (nothing generated is kept), and checks:

  1. grpc.health.v1.Health/Check: "" and "hearth.v1.MeetingService" are SERVING;
  2. auth: MeetingService.List with an admin token (OK, empty), without a token and with
     a wrongly signed one (UNAUTHENTICATED), without the admin grant (PERMISSION_DENIED);
  3. MeetingService Create/Get/List (settings, node defaults filled in), NOT_FOUND,
     INVALID_ARGUMENT, ALREADY_EXISTS;
  4. TokenService.Mint: the JWT's payload and signature, and the minted token in use;
  5. server reflection (v1alpha): hearth.v1.MeetingService is listed and described;
  6. AdminService.Drain: NodeInfo says draining, /readyz turns 503, Create and
     PublishTrack are refused with FAILED_PRECONDITION, and once the (empty) meeting's
     timeout passes the process exits by itself with status 0.

Run by tests/run.sh, which makes a venv with requirements.txt (pinned) in target/grpc-venv:

    target/grpc-venv/bin/python tests/grpc_python/grpc_interop.py target/debug/hearth

Prints one line per check and a closing `grpc-python: N passed, M failed`; exits 1 if any
check failed. The server subprocess is always killed at the end; its log is printed when
something failed.
"""

import argparse
import base64
import contextlib
import hashlib
import hmac
import importlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

REPO = Path(__file__).resolve().parents[2]
API_KEY = "APIpy"
API_SECRET = "py-interop-secret-0123456789abcd"  # 32 characters
assert len(API_SECRET) == 32
WRONG_SECRET = "not-the-secret-0123456789abcdefg"
ROOM = "py-room"
NODE_EMPTY_TIMEOUT_S = 45  # the node default; distinct from the drain deadline below
DRAIN_DEADLINE_S = 30
RPC_TIMEOUT_S = 10
READY_DEADLINE_S = 30
EXIT_DEADLINE_S = 40
ALL_GRANTS = {"join": True, "publish": True, "subscribe": True, "create": True, "admin": True}


# ---- tokens ---------------------------------------------------------------------------

def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def mint_jwt(secret, *, iss=API_KEY, sub="py-admin", name="Python admin", meeting="",
             grants=None, ttl=600):
    """An HS256 JWT in Hearth's format (api/src/token.rs)."""
    now = int(time.time())
    header = {"alg": "HS256", "typ": "JWT"}
    claims = {
        "iss": iss,
        "sub": sub,
        "name": name,
        "meeting": meeting,
        "grants": dict(ALL_GRANTS if grants is None else grants),
        "iat": now,
        "nbf": now,
        "exp": now + ttl,
    }
    compact = lambda obj: json.dumps(obj, separators=(",", ":")).encode()  # noqa: E731
    signing_input = f"{b64url(compact(header))}.{b64url(compact(claims))}"
    sig = hmac.new(secret.encode(), signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(sig)}"


def bearer(token):
    return (("authorization", f"Bearer {token}"),)


# ---- check bookkeeping ----------------------------------------------------------------

class Checks:
    def __init__(self):
        self.passed = 0
        self.failed = []

    @contextlib.contextmanager
    def case(self, name):
        start = time.monotonic()
        try:
            yield
        except Exception as e:  # noqa: BLE001 - every failure is reported, then we go on
            self.failed.append(name)
            if isinstance(e, grpc.RpcError) and hasattr(e, "code"):
                why = f"unexpected RPC error {e.code().name}: {e.details()}"
            elif isinstance(e, AssertionError):
                why = str(e) or traceback.format_exc(limit=2)
            else:
                why = f"{type(e).__name__}: {e}"
            print(f"FAIL {name}: {why}", flush=True)
        else:
            self.passed += 1
            print(f"ok   {name} ({(time.monotonic() - start) * 1000:.0f} ms)", flush=True)


def expect_code(code, fn, *args, **kwargs):
    """Calls fn and asserts it fails with `code`; returns the error's details."""
    try:
        result = fn(*args, **kwargs)
    except grpc.RpcError as e:
        assert e.code() == code, (
            f"expected {code.name}, got {e.code().name}: {e.details()}"
        )
        return e.details()
    raise AssertionError(f"expected {code.name}, but the call succeeded: {result!r}")


# ---- the server -----------------------------------------------------------------------

def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, binary, workdir):
        self.binary = Path(binary).resolve()
        self.workdir = Path(workdir)
        self.proc = None
        self.port = None
        self.log_path = self.workdir / "hearth.log"
        self.log = None

    def start(self):
        """Starts the node on a free port; retries if another process took the port."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("HEARTH_")}
        env.setdefault("RUST_LOG", "info")
        for attempt in range(3):
            self.port = free_port()
            data_dir = self.workdir / f"data{attempt}"
            data_dir.mkdir()
            cmd = [
                str(self.binary), "serve",
                "--http", f"127.0.0.1:{self.port}",
                "--media-port", "0",
                "--media-bind", "127.0.0.1",
                "--turn-port", "0",
                "--api-key", API_KEY,
                "--api-secret", API_SECRET,
                "--data-dir", str(data_dir),
                "--empty-timeout", f"{NODE_EMPTY_TIMEOUT_S}s",
            ]
            if self.log is not None:
                self.log.close()
            self.log = open(self.log_path, "ab")
            self.log.write(f"$ {' '.join(cmd)}\n".encode())
            self.log.flush()
            self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env, cwd=self.workdir)
            if self.wait_ready():
                return
            if "in use" not in self.log_text().lower():
                break
            print(f"port {self.port} was taken, retrying", flush=True)
        raise RuntimeError(f"the server did not become ready:\n{self.log_tail()}")

    def wait_ready(self):
        deadline = time.monotonic() + READY_DEADLINE_S
        url = f"http://127.0.0.1:{self.port}/readyz"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 200:
                        return True
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.05)
        return False

    def readyz_status(self):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=5) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    def log_text(self):
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines=60):
        return "\n".join(self.log_text().splitlines()[-lines:])

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        if self.log is not None:
            self.log.close()


# ---- stubs ----------------------------------------------------------------------------

def generate_stubs(proto_root, out_dir):
    protos = sorted(str(p) for p in (Path(proto_root) / "hearth" / "v1").glob("*.proto"))
    assert protos, f"no .proto files under {proto_root}/hearth/v1"
    cmd = [sys.executable, "-m", "grpc_tools.protoc", f"-I{proto_root}",
           f"--python_out={out_dir}", f"--grpc_python_out={out_dir}", *protos]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"protoc failed ({r.returncode}):\n{r.stdout}{r.stderr}")
    sys.path.insert(0, str(out_dir))
    mods = {}
    for name in ("models", "meeting", "token", "admin", "media"):
        mods[name] = importlib.import_module(f"hearth.v1.{name}_pb2")
        mods[name + "_grpc"] = importlib.import_module(f"hearth.v1.{name}_pb2_grpc")
    return len(protos), mods


# ---- the checks -----------------------------------------------------------------------

def run_checks(checks, server, m):
    T = RPC_TIMEOUT_S
    C = grpc.StatusCode
    admin = bearer(mint_jwt(API_SECRET))
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    grpc.channel_ready_future(channel).result(timeout=T)
    meetings = m["meeting_grpc"].MeetingServiceStub(channel)
    tokens = m["token_grpc"].TokenServiceStub(channel)
    admin_svc = m["admin_grpc"].AdminServiceStub(channel)
    media = m["media_grpc"].MediaServiceStub(channel)
    models, mpb, tpb, apb, mediapb = m["models"], m["meeting"], m["token"], m["admin"], m["media"]

    # 1. health
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "hearth.v1.MeetingService"):
        with checks.case(f"1 health Check({service!r}) is SERVING"):
            r = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=T)
            assert r.status == health_pb2.HealthCheckResponse.SERVING, (
                f"status {health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)}")
    with checks.case("1 health Check of an unknown service is NOT_FOUND"):
        expect_code(C.NOT_FOUND, health.Check,
                    health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=T)

    # 2. auth
    with checks.case("2 List with an admin token: OK and empty"):
        r = meetings.List(mpb.ListMeetingsRequest(), metadata=admin, timeout=T)
        assert list(r.meetings) == [], f"expected no meetings, got {r.meetings}"
    with checks.case("2 List without a token: UNAUTHENTICATED"):
        expect_code(C.UNAUTHENTICATED, meetings.List, mpb.ListMeetingsRequest(), timeout=T)
    with checks.case("2 List with a token signed by a wrong secret: UNAUTHENTICATED"):
        bad = bearer(mint_jwt(WRONG_SECRET))
        expect_code(C.UNAUTHENTICATED, meetings.List, mpb.ListMeetingsRequest(),
                    metadata=bad, timeout=T)
    with checks.case("2 List with an expired token: UNAUTHENTICATED"):
        old = bearer(mint_jwt(API_SECRET, ttl=-3600))
        expect_code(C.UNAUTHENTICATED, meetings.List, mpb.ListMeetingsRequest(),
                    metadata=old, timeout=T)
    with checks.case("2 List with a token without the admin grant: PERMISSION_DENIED"):
        grants = dict(ALL_GRANTS, admin=False)
        weak = bearer(mint_jwt(API_SECRET, grants=grants))
        expect_code(C.PERMISSION_DENIED, meetings.List, mpb.ListMeetingsRequest(),
                    metadata=weak, timeout=T)

    # 3. meetings
    settings = models.MeetingSettings(max_participants=7)
    with checks.case(f"3 Create({ROOM!r}, max_participants 7)"):
        r = meetings.Create(mpb.CreateMeetingRequest(id=ROOM, settings=settings),
                            metadata=admin, timeout=T)
        assert r.id == ROOM, f"id {r.id!r}"
        assert r.settings.max_participants == 7, f"max {r.settings.max_participants}"
        assert r.participant_count == 0, f"participant_count {r.participant_count}"
        assert r.started_at.seconds > 0, "started_at is not set"
    with checks.case("3 Get shows it with max 7 and the node's empty timeout"):
        r = meetings.Get(mpb.GetMeetingRequest(id=ROOM), metadata=admin, timeout=T)
        assert r.id == ROOM, f"id {r.id!r}"
        assert r.settings.max_participants == 7, f"max {r.settings.max_participants}"
        assert r.settings.empty_timeout_seconds == NODE_EMPTY_TIMEOUT_S, (
            f"empty_timeout_seconds {r.settings.empty_timeout_seconds}, "
            f"expected the node default {NODE_EMPTY_TIMEOUT_S}")
        assert list(r.participants) == [], f"participants {r.participants}"
        assert r.actor_id, "actor_id is empty"
    with checks.case("3 List shows it with max 7"):
        r = meetings.List(mpb.ListMeetingsRequest(), metadata=admin, timeout=T)
        got = [(x.id, x.settings.max_participants) for x in r.meetings]
        assert got == [(ROOM, 7)], f"meetings {got}"
    with checks.case("3 Get of an unknown meeting: NOT_FOUND"):
        expect_code(C.NOT_FOUND, meetings.Get, mpb.GetMeetingRequest(id="py-nowhere"),
                    metadata=admin, timeout=T)
    with checks.case("3 Create with an invalid name: INVALID_ARGUMENT"):
        expect_code(C.INVALID_ARGUMENT, meetings.Create,
                    mpb.CreateMeetingRequest(id="bad name!"), metadata=admin, timeout=T)
    with checks.case("3 Create again: ALREADY_EXISTS"):
        expect_code(C.ALREADY_EXISTS, meetings.Create,
                    mpb.CreateMeetingRequest(id=ROOM, settings=settings),
                    metadata=admin, timeout=T)

    # 4. tokens
    minted = {}
    with checks.case("4 TokenService.Mint: payload names the meeting and identity"):
        before = int(time.time())
        r = tokens.Mint(tpb.MintTokenRequest(meeting=ROOM, identity="py-alice", name="Alice",
                                             ttl_seconds=600), metadata=admin, timeout=T)
        parts = r.token.split(".")
        assert len(parts) == 3, f"not a JWT: {r.token!r}"
        header = json.loads(b64url_decode(parts[0]))
        claims = json.loads(b64url_decode(parts[1]))
        assert header.get("alg") == "HS256", f"header {header}"
        assert claims.get("meeting") == ROOM, f"meeting claim {claims.get('meeting')!r}"
        assert claims.get("sub") == "py-alice", f"sub claim {claims.get('sub')!r}"
        assert claims.get("name") == "Alice", f"name claim {claims.get('name')!r}"
        assert claims.get("iss") == API_KEY, f"iss claim {claims.get('iss')!r}"
        want = {"join": True, "publish": True, "subscribe": True, "create": True,
                "admin": False}
        assert claims.get("grants") == want, f"grants {claims.get('grants')} (unset grants "\
            f"should mean {want})"
        assert claims["exp"] - claims["iat"] == 600, f"exp - iat = {claims['exp'] - claims['iat']}"
        assert before - 5 <= claims["iat"] <= time.time() + 5, f"iat {claims['iat']}"
        assert abs(r.expires_at.seconds - claims["exp"]) <= 1, (
            f"expires_at {r.expires_at.seconds} vs exp {claims['exp']}")
        sig = hmac.new(API_SECRET.encode(), f"{parts[0]}.{parts[1]}".encode(),
                       hashlib.sha256).digest()
        assert hmac.compare_digest(b64url_decode(parts[2]), sig), \
            "the signature does not verify with the API secret"
        minted["participant"] = r.token
    with checks.case("4 a minted meeting-scoped admin token manages only its meeting"):
        r = tokens.Mint(tpb.MintTokenRequest(meeting=ROOM, identity="py-ops",
                                             grants=tpb.Grants(admin=True)),
                        metadata=admin, timeout=T)
        scoped = bearer(r.token)
        g = meetings.Get(mpb.GetMeetingRequest(id=ROOM), metadata=scoped, timeout=T)
        assert g.id == ROOM, f"id {g.id!r}"
        expect_code(C.PERMISSION_DENIED, meetings.Get, mpb.GetMeetingRequest(id="py-other"),
                    metadata=scoped, timeout=T)
        expect_code(C.PERMISSION_DENIED, admin_svc.NodeInfo, apb.NodeInfoRequest(),
                    metadata=scoped, timeout=T)
    with checks.case("4 a minted participant token (no admin grant) is refused by the API"):
        assert "participant" in minted, "no token was minted"
        expect_code(C.PERMISSION_DENIED, meetings.List, mpb.ListMeetingsRequest(),
                    metadata=bearer(minted["participant"]), timeout=T)

    # 5. reflection
    with checks.case("5 reflection (v1alpha) lists hearth.v1.MeetingService"):
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = list(stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=T))
        assert len(responses) == 1, f"{len(responses)} responses"
        names = sorted(s.name for s in responses[0].list_services_response.service)
        for want in ("hearth.v1.MeetingService", "hearth.v1.AdminService",
                     "grpc.health.v1.Health"):
            assert want in names, f"{want} not among {names}"
    with checks.case("5 reflection describes MeetingService's methods"):
        db = ProtoReflectionDescriptorDatabase(channel)
        fd = db.FindFileContainingSymbol("hearth.v1.MeetingService")
        svc = next((s for s in fd.service if s.name == "MeetingService"), None)
        assert svc is not None, f"{fd.name} has no MeetingService"
        methods = sorted(x.name for x in svc.method)
        assert methods == ["Create", "End", "Get", "List", "SendMessage", "Update"], f"methods {methods}"

    # 6. drain
    with checks.case("6 NodeInfo before Drain: not draining, one meeting"):
        r = admin_svc.NodeInfo(apb.NodeInfoRequest(), metadata=admin, timeout=T)
        assert not r.draining, "draining is already true"
        assert r.meetings == 1, f"meetings {r.meetings}"
        assert r.pid == server.proc.pid, f"pid {r.pid}, the subprocess is {server.proc.pid}"
    drain_started = None
    with checks.case(f"6 Drain(deadline_seconds={DRAIN_DEADLINE_S}) answers"):
        r = admin_svc.Drain(apb.DrainRequest(deadline_seconds=DRAIN_DEADLINE_S),
                            metadata=admin, timeout=T)
        drain_started = time.monotonic()
        assert r.meetings == 1 and r.participants == 0, (
            f"meetings {r.meetings}, participants {r.participants}; expected 1 and 0")
    with checks.case("6 NodeInfo after Drain: draining=true"):
        r = admin_svc.NodeInfo(apb.NodeInfoRequest(), metadata=admin, timeout=T)
        assert r.draining, "draining is false"
    with checks.case("6 /readyz answers 503 while draining"):
        status = server.readyz_status()
        assert status == 503, f"/readyz answered {status}"
    with checks.case("6 Create after Drain: FAILED_PRECONDITION"):
        expect_code(C.FAILED_PRECONDITION, meetings.Create,
                    mpb.CreateMeetingRequest(id="py-late"), metadata=admin, timeout=T)
    with checks.case("6 a join (MediaService.PublishTrack) after Drain: FAILED_PRECONDITION"):
        start = mediapb.PublishTrackRequest(start=mediapb.PublishTrackStart(
            meeting=ROOM, identity="py-bot", kind=models.AUDIO,
            codec=models.Codec(mime_type="audio/opus", clock_rate=48000, channels=2,
                               payload_type=111)))
        def publish():
            return list(media.PublishTrack(iter([start]), metadata=admin, timeout=T))
        expect_code(C.FAILED_PRECONDITION, publish)
    with checks.case("6 Update the empty meeting's timeout to 1 s (keeps max 7)"):
        r = meetings.Update(mpb.UpdateMeetingRequest(
            id=ROOM, settings=models.MeetingSettings(empty_timeout_seconds=1)),
            metadata=admin, timeout=T)
        assert r.settings.empty_timeout_seconds == 1, f"timeout {r.settings.empty_timeout_seconds}"
        assert r.settings.max_participants == 7, f"max {r.settings.max_participants}"
    channel.close()
    with checks.case("6 the meeting ends and the server exits by itself with status 0"):
        deadline = time.monotonic() + EXIT_DEADLINE_S
        while server.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        code = server.proc.poll()
        assert code is not None, f"still running {EXIT_DEADLINE_S} s after Drain"
        assert code == 0, f"exit status {code}"
        took = time.monotonic() - (drain_started or time.monotonic())
        print(f"     (exited {took:.1f} s after Drain)", flush=True)
        assert took < DRAIN_DEADLINE_S - 5, (
            f"exited {took:.1f} s after Drain: the meeting was ended by the drain deadline "
            f"({DRAIN_DEADLINE_S} s), not by its 1 s empty timeout")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("binary", nargs="?", default=str(REPO / "target/debug/hearth"),
                   help="the hearth server binary (default: target/debug/hearth)")
    p.add_argument("--proto-dir", default=str(REPO / "proto"),
                   help="the directory holding hearth/v1/*.proto")
    args = p.parse_args()
    binary = Path(args.binary).resolve()
    if not os.access(binary, os.X_OK):
        print(f"grpc-python: {binary} is not an executable; build it first "
              "(cargo build --bin hearth)", file=sys.stderr)
        return 2

    started = time.monotonic()
    checks = Checks()
    with tempfile.TemporaryDirectory(prefix="hearth-grpc-py-") as tmp:
        stubs = Path(tmp) / "stubs"
        stubs.mkdir()
        server = Server(binary, tmp)
        try:
            n, mods = generate_stubs(args.proto_dir, stubs)
            print(f"generated stubs for {n} .proto files "
                  f"({time.monotonic() - started:.1f} s)", flush=True)
            t = time.monotonic()
            server.start()
            print(f"server ready on 127.0.0.1:{server.port} (pid {server.proc.pid}, "
                  f"{time.monotonic() - t:.1f} s)", flush=True)
            run_checks(checks, server, mods)
        except Exception:  # noqa: BLE001 - setup failure: report it as one failed check
            checks.failed.append("setup")
            print(f"FAIL setup:\n{traceback.format_exc()}", flush=True)
        finally:
            server.stop()
            if checks.failed and server.proc is not None:
                print(f"---- server log (last lines of {server.log_path.name}) ----")
                print(server.log_tail())
                print("---- end of server log ----")
    print(f"took {time.monotonic() - started:.1f} s", flush=True)
    print(f"grpc-python: {checks.passed} passed, {len(checks.failed)} failed", flush=True)
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
