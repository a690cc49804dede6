#!/usr/bin/env python3
"""Drives Hearth's REST API through a third-party client generated from its OpenAPI document.

Starts the real server binary on a free loopback port (its own API key pair, data dir, no
TURN), fetches GET /v1/openapi.json, generates a Python client from it with
`openapi-python-client` (pinned in requirements.txt next to this file) into a temporary
directory (nothing is committed), imports that client and walks the main flows with a
node-wide admin token minted by `hearth token --admin`:

  create meetings (201, Location, settings; a repeat is 409 ALREADY_EXISTS; Idempotency-Key
  replays), list them a page at a time following nextCursor, get one, update its settings,
  mint a participant token (and join with it over WebSocket signaling), list and get the
  participant, set its permissions, send it a message (and see it arrive), remove a second
  participant, end the meeting (the participant is told), and the refusals on the way
  (404 NOT_FOUND after the end, 401 without a token) as typed Problem objects.

    target/rest-openapi-venv/bin/python tests/rest_openapi/generated_client.py target/debug/hearth

The generator must take the whole document without a warning (an unsupported OpenAPI 3.1
construct shows up as one). Exits 0 if every step held, 1 otherwise (with the step, and the
server's log).
"""

import argparse
import importlib
import json
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hearth_server import REPO, HearthServer, SignalingParticipant  # noqa: E402

API_KEY = "APIgenclient"
API_SECRET = "generated-client-secret-0123456789"
PACKAGE = "hearth_rest_client"
PAGE = 3
MEETINGS = [f"flow-{i}" for i in range(7)]  # more than two pages of PAGE


def generate(base: str, work: Path) -> list[str]:
    """Generates the client package into `work`; returns the generator's warnings."""
    with urllib.request.urlopen(f"{base}/v1/openapi.json", timeout=10) as r:
        (work / "openapi.json").write_bytes(r.read())
    # No post hooks (the default runs `ruff`); nothing else is configured.
    (work / "config.json").write_text(json.dumps({"post_hooks": [], "project_name_override": PACKAGE}))
    generator = Path(sys.executable).parent / "openapi-python-client"
    proc = subprocess.run(
        [str(generator), "generate", "--path", str(work / "openapi.json"), "--config", str(work / "config.json"),
         "--meta", "none", "--output-path", str(work / PACKAGE), "--overwrite"],
        capture_output=True, text=True,
    )
    out = proc.stdout + proc.stderr
    if proc.returncode != 0 or not (work / PACKAGE / "__init__.py").exists():
        raise SystemExit(f"openapi-python-client failed (exit {proc.returncode}):\n{out}")
    return [line for line in out.splitlines() if line.strip() and line.strip() != f"Generating {work / PACKAGE}"]


class Flow:
    def __init__(self, server: HearthServer, admin: str):
        self.server = server
        self.c = importlib.import_module(PACKAGE)
        self.models = importlib.import_module(f"{PACKAGE}.models")
        self.types = importlib.import_module(f"{PACKAGE}.types")
        self.client = self.c.AuthenticatedClient(base_url=server.base, token=admin, raise_on_unexpected_status=True)
        self.steps = 0

    def step(self, what: str) -> None:
        self.steps += 1
        print(f"  {self.steps:2}. {what}", flush=True)

    def expect(self, response, status: int, cls):
        assert response.status_code == status, f"status {response.status_code}, expected {status}: {response.content[:300]!r}"
        assert isinstance(response.parsed, cls), f"parsed as {type(response.parsed).__name__}, expected {cls.__name__}"
        return response.parsed

    def problem(self, response, status: int, code: str):
        p = self.expect(response, status, self.models.Problem)
        assert p.status == status and p.code.value == code, f"problem {p.status} {p.code}: {p.detail}"
        assert response.headers["content-type"].startswith("application/problem+json"), response.headers["content-type"]
        return p

    def run(self) -> None:
        m, UNSET = self.models, self.types.UNSET
        create = importlib.import_module(f"{PACKAGE}.api.meetings.create_meeting")
        list_meetings = importlib.import_module(f"{PACKAGE}.api.meetings.list_meetings")
        get_meeting = importlib.import_module(f"{PACKAGE}.api.meetings.get_meeting")
        update_meeting = importlib.import_module(f"{PACKAGE}.api.meetings.update_meeting")
        send_message = importlib.import_module(f"{PACKAGE}.api.meetings.send_message")
        end_meeting = importlib.import_module(f"{PACKAGE}.api.meetings.end_meeting")
        list_participants = importlib.import_module(f"{PACKAGE}.api.participants.list_participants")
        get_participant = importlib.import_module(f"{PACKAGE}.api.participants.get_participant")
        set_permissions = importlib.import_module(f"{PACKAGE}.api.participants.set_permissions")
        remove_participant = importlib.import_module(f"{PACKAGE}.api.participants.remove_participant")
        mint_token = importlib.import_module(f"{PACKAGE}.api.tokens.mint_token")
        c = self.client
        host = MEETINGS[0]

        self.step(f"createMeeting {host} with settings: 201, Location, the settings")
        r = create.sync_detailed(client=c, body=m.CreateMeeting(
            id=host, settings=m.MeetingSettingsInput(max_participants=8, empty_timeout_seconds=300)))
        meeting = self.expect(r, 201, m.Meeting)
        assert r.headers["location"] == f"/v1/meetings/{host}", r.headers.get("location")
        assert meeting.id == host and meeting.participant_count == 0 and meeting.participants == []
        assert meeting.settings.max_participants == 8 and meeting.settings.empty_timeout_seconds == 300
        assert abs(meeting.started_at - datetime.now(timezone.utc)) < timedelta(minutes=1), meeting.started_at

        self.step(f"createMeeting {len(MEETINGS) - 1} more, in reverse order (defaults for absent settings)")
        for name in reversed(MEETINGS[1:]):
            created = self.expect(create.sync_detailed(client=c, body=m.CreateMeeting(id=name)), 201, m.Meeting)
            assert created.id == name and created.settings.max_participants > 0, created

        self.step("createMeeting of a live meeting: 409 ALREADY_EXISTS")
        self.problem(create.sync_detailed(client=c, body=m.CreateMeeting(id=host)), 409, "ALREADY_EXISTS")

        self.step("createMeeting with an Idempotency-Key, twice: the same answer, replayed")
        body = m.CreateMeeting(id="flow-idem")
        first = create.sync_detailed(client=c, body=body, idempotency_key="flow-idem-1")
        again = create.sync_detailed(client=c, body=body, idempotency_key="flow-idem-1")
        a, b = self.expect(first, 201, m.Meeting), self.expect(again, 201, m.Meeting)
        assert a.to_dict() == b.to_dict(), (a, b)
        assert again.headers.get("idempotent-replayed") == "true", dict(again.headers)
        other = create.sync_detailed(client=c, body=m.CreateMeeting(id="flow-idem-other"), idempotency_key="flow-idem-1")
        self.problem(other, 422, "INVALID_ARGUMENT")
        self.expect(end_meeting.sync_detailed("flow-idem", client=c), 200, m.EndedMeeting)

        self.step(f"listMeetings limit={PAGE}, following nextCursor to the last page")
        seen, pages, cursor = [], 0, UNSET
        while True:
            page = self.expect(list_meetings.sync_detailed(client=c, limit=PAGE, cursor=cursor), 200, m.MeetingList)
            pages += 1
            assert len(page.meetings) <= PAGE, len(page.meetings)
            assert all(x.participants == [] for x in page.meetings), "lists carry no participants"
            seen += [x.id for x in page.meetings]
            if page.next_cursor in (UNSET, None):
                break
            assert len(page.meetings) == PAGE, f"a page before the last has {len(page.meetings)}"
            cursor = page.next_cursor
            assert pages < 20, "nextCursor does not end"
        assert seen == sorted(MEETINGS), f"listed {seen}"
        assert pages == -(-len(MEETINGS) // PAGE), f"{pages} pages"
        self.problem(list_meetings.sync_detailed(client=c, limit=PAGE, cursor="not-a-cursor"), 400, "INVALID_ARGUMENT")

        self.step("mintToken for participant ada in the meeting; she joins over signaling with it")
        t = self.expect(mint_token.sync_detailed(client=c, body=m.MintToken(
            identity="ada", name="Ada", meeting=host,
            grants=m.Grants(join=True, publish=True, subscribe=True), ttl_seconds=600)), 200, m.Token)
        left = t.expires_at - datetime.now(timezone.utc)
        assert timedelta(minutes=9) < left <= timedelta(minutes=10, seconds=5), left
        ada = SignalingParticipant(self.server, host, "ada", token=t.token).__enter__()
        bob = SignalingParticipant(self.server, host, "bob").__enter__()
        try:
            self.step("getMeeting: both participants, in join order")
            got = self.expect(get_meeting.sync_detailed(host, client=c), 200, m.Meeting)
            assert got.participant_count == 2, got.participant_count
            assert [(p.id, p.identity, p.name) for p in got.participants] == [(ada.id, "ada", "Ada"), (bob.id, "bob", "bob")], got.participants
            assert got.participants[0].permissions.publish is True and got.participants[0].virtual is False

            self.step("updateMeeting settings: the new values, kept by getMeeting")
            upd = self.expect(update_meeting.sync_detailed(host, client=c, body=m.UpdateMeeting(
                settings=m.MeetingSettingsInput(max_participants=16))), 200, m.Meeting)
            assert upd.settings.max_participants == 16 and upd.settings.empty_timeout_seconds == 300, upd.settings
            upd = self.expect(update_meeting.sync_detailed(host, client=c, body=m.UpdateMeeting(
                settings=m.MeetingSettingsInput(empty_timeout_seconds=120))), 200, m.Meeting)
            assert upd.settings.max_participants == 16 and upd.settings.empty_timeout_seconds == 120, upd.settings
            got = self.expect(get_meeting.sync_detailed(host, client=c), 200, m.Meeting)
            assert (got.settings.max_participants, got.settings.empty_timeout_seconds) == (16, 120), got.settings

            self.step("listParticipants and getParticipant")
            plist = self.expect(list_participants.sync_detailed(host, client=c), 200, m.ParticipantList)
            assert [p.id for p in plist.participants] == [ada.id, bob.id], plist
            p = self.expect(get_participant.sync_detailed(host, ada.id, client=c), 200, m.Participant)
            assert p.identity == "ada" and p.tracks == [], p
            self.problem(get_participant.sync_detailed(host, "PA_nobody", client=c), 404, "NOT_FOUND")

            self.step("setPermissions: ada may no longer publish")
            p = self.expect(set_permissions.sync_detailed(host, ada.id, client=c, body=m.Permissions(
                publish=False, subscribe=True)), 200, m.Participant)
            assert p.permissions.publish is False and p.permissions.subscribe is True, p.permissions

            self.step("sendMessage to ada: 202, delivered 1, and she receives it")
            sent = self.expect(send_message.sync_detailed(host, client=c, body=m.SendMessage(
                text="The meeting ends in 5 minutes.", from_="Host", to=[ada.id])), 202, m.SentMessage)
            assert sent.delivered == 1 and sent.id.startswith("MS_"), sent
            got_msg = ada.wait_for("appMessage")
            assert got_msg["id"] == sent.id and got_msg["text"] == "The meeting ends in 5 minutes.", got_msg
            assert got_msg.get("from") == "Host", got_msg
            sent = self.expect(send_message.sync_detailed(host, client=c, body=m.SendMessage(text="hello all")), 202, m.SentMessage)
            assert sent.delivered == 2, sent

            self.step("removeParticipant bob: 204, and he is gone")
            r = remove_participant.sync_detailed(host, bob.id, client=c)
            assert r.status_code == 204, (r.status_code, r.content)
            bob.wait_for("error")
            self.problem(get_participant.sync_detailed(host, bob.id, client=c), 404, "NOT_FOUND")

            self.step("endMeeting: 200 with the participant count; ada is told; then 404")
            ended = self.expect(end_meeting.sync_detailed(host, client=c), 200, m.EndedMeeting)
            assert ended.participants == 1, ended
            ada.wait_for("meetingEnded")
            self.problem(get_meeting.sync_detailed(host, client=c), 404, "NOT_FOUND")
            self.problem(end_meeting.sync_detailed(host, client=c), 404, "NOT_FOUND")
        finally:
            ada.__exit__(None, None, None)
            bob.__exit__(None, None, None)

        self.step("no token: 401 UNAUTHENTICATED; a participant token (no admin grant): 403 PERMISSION_DENIED")
        anon = self.c.Client(base_url=self.server.base, raise_on_unexpected_status=True)
        self.problem(list_meetings.sync_detailed(client=anon), 401, "UNAUTHENTICATED")
        user = self.c.AuthenticatedClient(base_url=self.server.base, token=t.token, raise_on_unexpected_status=True)
        self.problem(get_meeting.sync_detailed(MEETINGS[1], client=user), 403, "PERMISSION_DENIED")

        self.step("endMeeting for the rest; the list is empty")
        for name in MEETINGS[1:]:
            self.expect(end_meeting.sync_detailed(name, client=c), 200, m.EndedMeeting)
        page = self.expect(list_meetings.sync_detailed(client=c), 200, m.MeetingList)
        assert page.meetings == [] and page.next_cursor in (UNSET, None), page


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("binary", nargs="?", default=str(REPO / "target/debug/hearth"))
    args = parser.parse_args()
    started = time.monotonic()
    with HearthServer(Path(args.binary), API_KEY, API_SECRET) as server, tempfile.TemporaryDirectory() as work:
        warnings = generate(server.base, Path(work))
        if warnings:
            print("rest-client: openapi-python-client warned about the document:")
            print("\n".join(f"  {w}" for w in warnings))
            return 1
        print(f"rest-client: generated {PACKAGE} with openapi-python-client; driving the main flows", flush=True)
        sys.path.insert(0, work)
        flow = Flow(server, server.token("client-admin", admin=True))
        try:
            flow.run()
        except Exception:
            traceback.print_exc()
            print("---- server log (tail) ----")
            print("\n".join(server.log().splitlines()[-60:]))
            print(f"rest-client: FAILED at step {flow.steps}")
            return 1
    print(f"rest-client: {flow.steps} steps passed ({time.monotonic() - started:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
