#!/usr/bin/env python3
"""Property-based testing of Hearth's REST API from its own OpenAPI document (schemathesis).

Starts the real server binary on a free loopback port (its own API key pair, data dir, no
TURN), mints a node-wide admin token with `hearth token --admin`, creates two meetings and
joins two participants over WebSocket signaling (so that the meeting and participant paths
have something real to hit), then runs schemathesis (pinned in requirements.txt next to
this file) against GET /v1/openapi.json with that bearer token:

  checks   not_a_server_error, status_code_conformance, content_type_conformance,
           response_schema_conformance, response_headers_conformance
  phases   examples, coverage, fuzzing, stateful (links inferred from the document)
  data     at most --max-examples cases per operation, seed --seed, one worker, no shrinking
           database or cache kept on disk: the same binary gives the same run

The meeting and participant ids are offered to the generator as dictionaries (used for
half to 70% of the `id` and `pid` path parameters; the rest is generated from the schema):
the first meeting and two of its participants for the participant operations, sendMessage
and getMeeting, a third participant for removeParticipant; the other operations (endMeeting,
updateMeeting) get the second meeting, so that the first one lives through the fuzzing
phase (the stateful phase, last, may still end it). No participant publishes a track (that needs WebRTC media), so
updateTrack is answered 400/404 only.

Requests are paced below the node's documented per-API-key limit (50/s, bursts of 100),
so the run measures the API rather than the rate limiter. 429 with `Retry-After` is in the
document for every operation, so a 429 would pass the checks anyway; it would just test
less.

    target/rest-openapi-venv/bin/python tests/rest_openapi/schemathesis_run.py target/debug/hearth

Exits 0 if no check failed, 1 otherwise (schemathesis prints each failure with a curl line
to reproduce it); the server's log is printed when something failed. Reports (JUnit XML,
and a cassette of every request and response) go to --report-dir if given.
"""

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hearth_server import REPO, HearthServer, SignalingParticipant  # noqa: E402

API_KEY = "APIschemathesis"
API_SECRET = "schemathesis-run-secret-0123456789"
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
]
MEETINGS = ["fuzz-a", "fuzz-b"]

CONFIG = """\
color = false

[cache]
enabled = false

[dictionaries.host]
values = ["{host}"]

[dictionaries.spare]
values = ["{spare}"]

[dictionaries.participants]
values = {participants}

[dictionaries.removable]
values = ["{removable}"]

[parameters]
"path.id" = {{ dictionary = "spare", probability = 0.5 }}

# The participant paths and messages: mostly the meeting with the participants, and them.
[[operations]]
include-path-regex = "/participants/"
exclude-operation-id = "removeParticipant"
parameters = {{ "path.id" = {{ dictionary = "host", probability = 0.7 }}, "path.pid" = {{ dictionary = "participants", probability = 0.7 }} }}

[[operations]]
include-operation-id = ["sendMessage", "listParticipants", "getMeeting"]
parameters = {{ "path.id" = {{ dictionary = "host", probability = 0.7 }} }}

# Ending: no ids learnt from earlier responses in the fuzzing phase (it would end the
# participants' meeting before the participant operations that follow it).
[[operations]]
include-operation-id = "endMeeting"
phases.fuzzing.extra-data-sources.responses = false

# Removing: a participant of its own, so that the others stay for the operations after it.
[[operations]]
include-operation-id = "removeParticipant"
parameters = {{ "path.id" = {{ dictionary = "host", probability = 0.7 }}, "path.pid" = {{ dictionary = "removable", probability = 0.7 }} }}
"""


def toml_list(values: list[str]) -> str:
    return "[" + ", ".join(f'"{v}"' for v in values) + "]"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("binary", nargs="?", default=str(REPO / "target/debug/hearth"))
    parser.add_argument("--max-examples", type=int, default=60, help="test cases per operation and phase (60)")
    parser.add_argument("--seed", type=int, default=11, help="hypothesis seed (11)")
    parser.add_argument("--rate-limit", default="40/s", help="pace of requests (40/s; the node allows 50/s)")
    parser.add_argument("--report-dir", help="keep JUnit XML and a VCR cassette of the run here")
    args = parser.parse_args()

    st = Path(sys.executable).parent / "st"
    if not st.exists():
        st_path = shutil.which("st")
        if st_path is None:
            raise SystemExit("schemathesis (`st`) is not installed next to this Python")
        st = Path(st_path)

    started = time.monotonic()
    # Webhook endpoints the fuzzer creates may name only loopback: no test traffic leaves it.
    extra = ("--webhook-allowed-hosts", "127.0.0.1")
    with HearthServer(Path(args.binary), API_KEY, API_SECRET, extra) as server, tempfile.TemporaryDirectory() as work:
        admin = server.token("fuzz", admin=True)
        for m in MEETINGS:
            status, body = server.request("POST", "/v1/meetings", admin, {"id": m, "settings": {"emptyTimeoutSeconds": 3600}})
            if status != 201:
                raise SystemExit(f"setup: POST /v1/meetings {m}: {status} {body}")
        participants = [SignalingParticipant(server, MEETINGS[0], f"user-{i}") for i in range(3)]
        for p in participants:
            p.__enter__()
        try:
            pids = [p.id for p in participants]
            config = Path(work) / "schemathesis.toml"
            config.write_text(CONFIG.format(
                host=MEETINGS[0], spare=MEETINGS[1],
                participants=toml_list(pids[:2]), removable=pids[2],
            ))
            cmd = [
                str(st), "--config-file", str(config), "run", f"{server.base}/v1/openapi.json",
                "--url", server.base,
                "--header", f"Authorization: Bearer {admin}",
                "--checks", ",".join(CHECKS),
                "--phases", "examples,coverage,fuzzing,stateful",
                "--max-examples", str(args.max_examples),
                "--seed", str(args.seed),
                "--workers", "1",
                "--rate-limit", args.rate_limit,
                "--request-timeout", "15",
                "--generation-database", "none",
                "--continue-on-failure",
                "--suppress-health-check", "too_slow",
                "--output-sanitize", "true",
            ]
            if args.report_dir:
                Path(args.report_dir).mkdir(parents=True, exist_ok=True)
                cmd += ["--report", "junit,vcr", "--report-dir", str(Path(args.report_dir).resolve())]
            print(f"rest-schemathesis: meetings {MEETINGS}, participants {pids} in {MEETINGS[0]}", flush=True)
            # In a scratch directory: schemathesis may write state files into the current one.
            rc = subprocess.run(cmd, cwd=work).returncode
        finally:
            for p in participants:
                p.__exit__(None, None, None)
        alive = server.alive()
        if rc != 0 or not alive:
            print("---- server log (tail) ----")
            print("\n".join(server.log().splitlines()[-80:]))
    elapsed = time.monotonic() - started
    if not alive:
        print(f"rest-schemathesis: the server died during the run ({elapsed:.0f}s)")
        return 1
    if rc != 0:
        print(f"rest-schemathesis: FAILED (schemathesis exit {rc}, {elapsed:.0f}s)")
        return 1
    print(f"rest-schemathesis: no failures ({elapsed:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
