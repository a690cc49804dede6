#!/usr/bin/env python3
"""Hearth's webhooks verified by an independent library: the Standard Webhooks reference
implementation for Python (`standardwebhooks`, pinned in requirements.txt).

Starts the real server binary (its ledger on SQLite in its data dir, retries fast), runs a
local receiver on loopback that answers 503 to the first three deliveries and 204 after,
registers it over the REST API, then makes events happen: a meeting is created, a
participant joins over WebSocket signaling and leaves, the meeting ends. Checks:

  - every lifecycle event arrives (meeting.started, participant.joined, participant.left,
    meeting.ended), each request verified by `standardwebhooks.Webhook(secret).verify`
    (signature, id, timestamp); a tampered body fails that verification;
  - the failed deliveries were retried with the same `webhook-id` until they succeeded, and no
    event was delivered twice after a success;
  - the delivery log (`GET /v1/webhooks/{id}/deliveries`) shows every delivery delivered,
    the retried ones with more than one attempt.

    target/rest-openapi-venv/bin/python tests/rest_openapi/webhooks_standard.py target/debug/hearth

Exits 0 if every check held, 1 otherwise (with the server's log).
"""

import argparse
import http.server
import json
import sys
import threading
import time
from pathlib import Path

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hearth_server import HearthServer, SignalingParticipant, free_port  # noqa: E402

API_KEY = "APIwebhooks"
API_SECRET = "webhooks-secret-0123456789abcdef"
DEADLINE_S = 30
FAIL_FIRST = 3
EXPECTED = {"meeting.started", "participant.joined", "participant.left", "meeting.ended"}


class Receiver(http.server.ThreadingHTTPServer):
    def __init__(self, port: int):
        super().__init__(("127.0.0.1", port), Handler)
        self.lock = threading.Lock()
        self.requests: list[tuple[dict, bytes, int]] = []


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        server: Receiver = self.server  # type: ignore[assignment]
        with server.lock:
            status = 503 if len(server.requests) < FAIL_FIRST else 204
            server.requests.append(({k.lower(): v for k, v in self.headers.items()}, body, status))
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    args = ap.parse_args()
    port = free_port()
    receiver = Receiver(port)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    extra = ("--webhook-retry-base", "200ms", "--empty-timeout", "1s",
             "--webhook-allowed-hosts", "127.0.0.1")
    with HearthServer(Path(args.binary), API_KEY, API_SECRET, extra) as server:
        try:
            return run(server, receiver, port)
        except AssertionError as e:
            print(f"FAIL: {e}\n--- server log ---\n{server.log()}")
            return 1
        finally:
            receiver.shutdown()


def run(server: HearthServer, receiver: Receiver, port: int) -> int:
    admin = server.token("webhooks-test", admin=True)
    status, ep = server.request("POST", "/v1/webhooks", admin,
                                {"url": f"http://127.0.0.1:{port}/hook",
                                 "description": "standardwebhooks check"})
    assert status == 201, f"create endpoint: {status} {ep}"
    secret = ep["secret"]
    status, refused = server.request("POST", "/v1/webhooks", admin, {"url": "http://example.com/x"})
    assert status == 400 and "only to" in refused["detail"], f"allowed hosts: {status} {refused}"

    status, meeting = server.request("POST", "/v1/meetings", admin, {"id": "standard-hooks"})
    assert status == 201, f"create meeting: {status} {meeting}"
    with SignalingParticipant(server, "standard-hooks", "ada") as p:
        participant = p.id
    # The meeting ends a second after its last participant left.

    wh = Webhook(secret)
    deadline = time.monotonic() + DEADLINE_S
    while True:
        with receiver.lock:
            done = {json.loads(b)["type"] for _, b, s in receiver.requests if s == 204}
        if EXPECTED <= done:
            break
        assert time.monotonic() < deadline, f"events delivered so far: {sorted(done)}"
        time.sleep(0.05)

    with receiver.lock:
        requests = list(receiver.requests)
    delivered_ids = []
    for headers, body, status in requests:
        payload = wh.verify(body, headers)  # raises on a bad signature, id or timestamp
        assert payload["type"] in EXPECTED, payload
        assert headers["webhook-id"].startswith("msg_")
        if payload["type"].startswith("participant."):
            assert payload["data"]["participant"] == participant, payload
            assert payload["data"]["identity"] == "ada", payload
        if payload["type"].endswith((".left", ".ended")):
            assert payload["data"]["duration_ms"] >= 0 and payload["data"]["reason"], payload
        if status == 204:
            delivered_ids.append(headers["webhook-id"])
    # Tampering is caught by the independent verifier.
    headers, body, _ = requests[0]
    try:
        wh.verify(body.replace(b"standard-hooks", b"standard-hookz"), headers)
        raise AssertionError("a tampered body verified")
    except WebhookVerificationError:
        pass
    failed_ids = [h["webhook-id"] for h, _, s in requests if s == 503]
    assert len(failed_ids) == FAIL_FIRST, failed_ids
    for fid in failed_ids:
        assert fid in delivered_ids, f"{fid} was not retried to success"
    assert len(delivered_ids) == len(set(delivered_ids)), f"delivered twice: {delivered_ids}"

    # The sender records a delivery after the receiver has answered it: poll the log until
    # it has caught up (a read right after the last 204 once found `meeting.ended` pending).
    while True:
        status, log = server.request("GET", f"/v1/webhooks/{ep['id']}/deliveries", admin)
        assert status == 200, log
        deliveries = log["deliveries"]
        if all(d["status"] == "delivered" for d in deliveries) or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    assert {d["eventType"] for d in deliveries} >= EXPECTED, deliveries
    assert all(d["status"] == "delivered" for d in deliveries), deliveries
    assert any(d["attempts"] > 1 for d in deliveries), deliveries
    print(f"ok: {len(delivered_ids)} events delivered and verified by standardwebhooks "
          f"({FAIL_FIRST} deliveries failed first and were retried with the same id)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
