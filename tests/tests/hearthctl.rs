//! `hearthctl`, the operator CLI, as an operator runs it: the real binary in a subprocess,
//! against an in-process node with real WebRTC participants. Every assertion is about what
//! the CLI prints, its exit status, or what the participants see.
//!
//! The binary is not a dependency of this test crate: `cargo build --workspace` first.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use hearth_proto::v1 as pb;
use hearth_tests::{API_KEY, API_SECRET, ClientOptions, Kind, TestClient, TestServer};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// Generous: a debug build on a small CI machine.
const T: Duration = Duration::from_secs(20);

/// Parses proto3 JSON printed by `hearthctl --json` into a `hearth.v1` message.
macro_rules! parse {
    ($ty:ty, $text:expr) => {{
        let text: &str = &$text;
        serde_json::from_str::<$ty>(text)
            .unwrap_or_else(|e| panic!("not a {} in proto3 JSON: {e}\n{text}", stringify!($ty)))
    }};
}

/// `target/<profile>/hearthctl`, next to the `deps/` directory of this test executable.
fn hearthctl_bin() -> PathBuf {
    hearth_tests::workspace_bin("hearthctl")
}

/// What one run of the CLI did.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `hearthctl` against one node (URL and key pair in the environment, as an
/// operator's shell would have them).
struct Ctl {
    bin: PathBuf,
    url: String,
}

impl Ctl {
    fn new(server: &TestServer) -> Ctl {
        Ctl {
            bin: hearthctl_bin(),
            url: format!("http://{}", server.server.http_addr),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .env("HEARTH_URL", &self.url)
            .env("HEARTH_API_KEY", API_KEY)
            .env("HEARTH_API_SECRET", API_SECRET)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    /// Runs to completion (bounded) and captures the output.
    async fn run_cmd(mut cmd: Command, what: &str) -> Run {
        let output = tokio::time::timeout(T, cmd.output())
            .await
            .unwrap_or_else(|_| panic!("hearthctl {what} did not finish within {T:?}"))
            .unwrap_or_else(|e| panic!("hearthctl {what} could not run: {e}"));
        Run {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    async fn run(&self, args: &[&str]) -> Run {
        Self::run_cmd(self.command(args), &args.join(" ")).await
    }

    /// Runs and asserts exit status 0; returns stdout.
    async fn ok(&self, args: &[&str]) -> String {
        let run = self.run(args).await;
        assert_eq!(
            run.code,
            Some(0),
            "hearthctl {} failed: {run:#?}",
            args.join(" ")
        );
        run.stdout
    }

    /// Runs and asserts the exit status and that stderr mentions `needle`.
    async fn fails(&self, args: &[&str], code: i32, needle: &str) -> Run {
        let run = self.run(args).await;
        assert_eq!(
            run.code,
            Some(code),
            "hearthctl {}: expected exit {code}: {run:#?}",
            args.join(" ")
        );
        assert!(
            run.stderr.contains(needle),
            "hearthctl {}: expected {needle:?} on stderr: {run:#?}",
            args.join(" ")
        );
        run
    }

    async fn tree(&self) -> Vec<pb::ActorInfo> {
        parse!(pb::ActorTreeResponse, self.ok(&["tree", "--json"]).await).actors
    }

    /// Polls `tree --json` until `cond` holds; panics after `T`.
    async fn wait_tree(
        &self,
        what: &str,
        cond: impl Fn(&[pb::ActorInfo]) -> bool,
    ) -> Vec<pb::ActorInfo> {
        let deadline = tokio::time::Instant::now() + T;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            let actors = self.tree().await;
            if cond(&actors) {
                return actors;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out after {T:?} waiting for the tree to show: {what}\n{actors:#?}"
            );
        }
    }

    /// Polls `hearthctl <args>` until its stdout satisfies `cond`; returns that stdout.
    async fn wait_output(&self, args: &[&str], what: &str, cond: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + T;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            let out = self.ok(args).await;
            if cond(&out) {
                return out;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out after {T:?} waiting for `hearthctl {}` to show {what}:\n{out}",
                args.join(" ")
            );
        }
    }
}

async fn join(server: &TestServer, meeting: &str, name: &str, opts: ClientOptions) -> TestClient {
    TestClient::join(server, meeting, name, opts)
        .await
        .unwrap_or_else(|e| panic!("{name} joins {meeting}: {e}"))
}

fn find<'a>(actors: &'a [pb::ActorInfo], kind: &str, name: &str) -> Option<&'a pb::ActorInfo> {
    actors.iter().find(|a| a.kind == kind && a.name == name)
}

/// The line of `tree` output that shows the actor with this id.
fn tree_line<'a>(text: &'a str, id: &str) -> &'a str {
    text.lines()
        .find(|l| l.split_whitespace().any(|w| w == id))
        .unwrap_or_else(|| panic!("no line for actor {id} in\n{text}"))
}

/// Where the actor's kind starts on its line (its depth in the drawing).
fn indent(line: &str, kind: &str) -> usize {
    let byte = line
        .find(&format!(" {kind} "))
        .or_else(|| line.find(&format!("─ {kind} ")))
        .unwrap_or_else(|| panic!("no {kind} on line {line:?}"));
    line[..byte].chars().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tree_draws_the_node_the_meeting_and_its_participants() {
    let server = TestServer::start().await;
    let ctl = Ctl::new(&server);
    let a = join(&server, "ctl-tree", "a", ClientOptions::receive_only()).await;
    let b = join(&server, "ctl-tree", "b", ClientOptions::receive_only()).await;
    let (pa, pb_) = (a.participant_id(), b.participant_id());

    let actors = ctl
        .wait_tree("the meeting and both participants", |t| {
            find(t, "participant", pa).is_some() && find(t, "participant", pb_).is_some()
        })
        .await;
    let node = actors
        .iter()
        .find(|x| x.kind == "node")
        .expect("a node actor");
    assert!(node.parent_id.is_empty(), "the node is the root: {node:?}");
    let supervisor = actors
        .iter()
        .find(|x| x.kind == "meeting_supervisor")
        .expect("a meeting supervisor");
    assert_eq!(
        supervisor.parent_id, node.id,
        "the meeting supervisor is the node's child"
    );
    let meeting = find(&actors, "meeting", "ctl-tree").expect("the meeting actor");
    assert_eq!(meeting.parent_id, supervisor.id);
    for p in [pa, pb_] {
        let actor = find(&actors, "participant", p).expect("participant actor");
        assert_eq!(actor.parent_id, meeting.id, "{p} is the meeting's child");
        assert!(!actor.policy.is_empty(), "{actor:?} has a policy");
    }

    let text = ctl.ok(&["tree"]).await;
    let node_line = tree_line(&text, &node.id);
    let sup_line = tree_line(&text, &supervisor.id);
    let meeting_line = tree_line(&text, &meeting.id);
    assert!(meeting_line.contains("ctl-tree"), "{meeting_line}");
    assert!(sup_line.contains("─ meeting_supervisor"), "{text}");
    assert!(meeting_line.contains("─ meeting "), "{text}");
    let depths = [
        indent(node_line, "node"),
        indent(sup_line, "meeting_supervisor"),
        indent(meeting_line, "meeting"),
    ];
    assert!(
        depths[0] < depths[1] && depths[1] < depths[2],
        "each level is indented deeper: {depths:?}\n{text}"
    );
    for p in [pa, pb_] {
        let id = &find(&actors, "participant", p).expect("participant").id;
        let line = tree_line(&text, id);
        assert!(line.contains(p), "{line}");
        assert!(
            indent(line, "participant") > depths[2],
            "participants are drawn under their meeting:\n{text}"
        );
    }
    assert!(
        text.contains("├─ participant") && text.contains("└─ participant"),
        "box drawing:\n{text}"
    );
    assert!(
        !text.lines().any(|l| l.starts_with('!')),
        "nothing has failed yet:\n{text}"
    );
    // The policy of each kind is printed once.
    let policy = &find(&actors, "participant", pa)
        .expect("participant")
        .policy;
    assert_eq!(text.matches(policy.as_str()).count(), 1, "{text}");

    let kinds: Vec<&str> = actors.iter().map(|x| x.kind.as_str()).collect();
    assert!(kinds.contains(&"meeting") && kinds.contains(&"participant"));
    drop((a, b));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_fails_a_participant_and_the_tree_shows_it() {
    let server = TestServer::start().await;
    let ctl = Ctl::new(&server);
    let a = join(&server, "ctl-kill", "a", ClientOptions::av()).await;
    let b = join(&server, "ctl-kill", "b", ClientOptions::av()).await;
    let (pa, pb_) = (a.participant_id().to_owned(), b.participant_id().to_owned());
    ctl.wait_tree("both participants", |t| {
        find(t, "participant", &pa).is_some() && find(t, "participant", &pb_).is_some()
    })
    .await;

    let list = parse!(
        pb::ListParticipantsResponse,
        ctl.ok(&["participants", "list", "ctl-kill", "--json"])
            .await
    );
    let victim = list
        .participants
        .iter()
        .find(|p| p.id == pa)
        .unwrap_or_else(|| panic!("{pa} in {list:?}"));
    assert!(!victim.actor_id.is_empty(), "{victim:?}");
    let before = ctl.tree().await;
    let meeting_before = find(&before, "meeting", "ctl-kill")
        .expect("meeting")
        .clone();
    let policy = find(&before, "participant", &pa)
        .expect("victim")
        .policy
        .clone();

    let out = ctl.ok(&["kill", &victim.actor_id]).await;
    assert!(
        out.contains(&format!("killed participant {pa}")),
        "names what was killed: {out}"
    );
    assert!(out.contains(&policy), "prints the policy ({policy}): {out}");

    a.wait_until("told to reconnect", T, |s| s.reconnect.is_some())
        .await;
    b.wait_until("sees the killed participant leave", T, |s| {
        s.left.iter().any(|(p, _)| p == &pa)
    })
    .await;
    let after = ctl
        .wait_tree("the killed participant gone", |t| {
            find(t, "participant", &pa).is_none()
        })
        .await;
    let meeting = find(&after, "meeting", "ctl-kill").expect("the meeting lives on");
    assert_eq!(
        meeting.id, meeting_before.id,
        "the meeting was not restarted"
    );
    assert_eq!(meeting.restarts, meeting_before.restarts + 1, "{meeting:?}");
    assert!(
        meeting.last_failure.contains(&pa),
        "the last failure names the participant: {meeting:?}"
    );
    assert!(
        find(&after, "participant", &pb_).is_some(),
        "the other participant stays"
    );

    let text = ctl.ok(&["tree"]).await;
    let line = tree_line(&text, &meeting.id);
    assert!(line.starts_with('!'), "the meeting is flagged:\n{text}");
    assert!(line.contains(&pa), "{line}");
    assert!(
        line.split_whitespace()
            .any(|w| w == meeting.restarts.to_string()),
        "{line}"
    );
    assert!(text.contains(&pb_), "{text}");
    assert_eq!(
        text.lines().filter(|l| l.contains(&pa)).count(),
        1,
        "only the meeting's last failure still names {pa}:\n{text}"
    );
    // The survivor still gets media.
    let c = join(&server, "ctl-kill", "c", ClientOptions::receive_only()).await;
    c.wait_for_packets(&pb_, Kind::Audio, 10, T).await;
    drop((a, b, c));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meetings_and_participants_are_managed_from_the_cli() {
    let server = TestServer::start().await;
    let ctl = Ctl::new(&server);
    let a = join(&server, "ctl-meet", "a", ClientOptions::av()).await;
    let b = join(&server, "ctl-meet", "b", ClientOptions::receive_only()).await;
    let (pa, pb_) = (a.participant_id().to_owned(), b.participant_id().to_owned());
    let audio = a
        .wait_until("its audio track is published", T, |s| {
            s.own_tracks.contains_key(&Kind::Audio)
        })
        .await
        .own_tracks[&Kind::Audio]
        .clone();

    let out = ctl
        .ok(&[
            "meetings",
            "create",
            "ctl-new",
            "--max-participants",
            "7",
            "--empty-timeout",
            "30",
        ])
        .await;
    assert!(out.contains("created meeting ctl-new"), "{out}");
    ctl.fails(&["meetings", "create", "ctl-new"], 1, "ALREADY_EXISTS")
        .await;

    let table = ctl.ok(&["meetings", "list"]).await;
    let header = table.lines().next().expect("a header");
    for column in ["ID", "PARTICIPANTS", "STARTED", "MAX", "ACTOR"] {
        assert!(header.contains(column), "{table}");
    }
    let row = |id: &str| -> Vec<String> {
        table
            .lines()
            .find(|l| l.starts_with(&format!("{id} ")))
            .unwrap_or_else(|| panic!("no row for {id}:\n{table}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(row("ctl-meet")[1], "2", "{table}");
    assert_eq!(row("ctl-new")[1], "0", "{table}");
    assert!(row("ctl-new").contains(&"7".to_owned()), "{table}");
    let list = parse!(
        pb::ListMeetingsResponse,
        ctl.ok(&["meetings", "list", "--json"]).await
    );
    let ids: Vec<&str> = list.meetings.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["ctl-meet", "ctl-new"]);
    let settings = list.meetings[1].settings.as_ref().expect("settings");
    assert_eq!(
        (settings.max_participants, settings.empty_timeout_seconds),
        (7, 30)
    );

    // `show` lists both participants with the published track.
    let shown = ctl
        .wait_output(
            &["meetings", "show", "ctl-meet"],
            "the audio track",
            |out| out.contains(&audio),
        )
        .await;
    assert!(shown.contains(&pa) && shown.contains(&pb_), "{shown}");
    assert!(shown.contains("audio/opus"), "{shown}");
    let meeting = parse!(
        pb::Meeting,
        ctl.ok(&["meetings", "show", "ctl-meet", "--json"]).await
    );
    assert_eq!(meeting.participant_count, 2);
    assert_eq!(meeting.participants.len(), 2);
    let people = ctl.ok(&["participants", "list", "ctl-meet"]).await;
    assert!(people.contains(&pa) && people.contains(&pb_), "{people}");

    // Server-side mute and unmute: the subscriber sees both.
    let out = ctl
        .ok(&["participants", "mute", "ctl-meet", &pa, &audio])
        .await;
    assert!(out.contains("muted"), "{out}");
    b.wait_until("trackMuted", T, |s| {
        s.tracks_muted.iter().any(|(t, m)| t.track == audio && *m)
    })
    .await;
    let track = parse!(
        pb::Track,
        ctl.ok(&[
            "participants",
            "mute",
            "ctl-meet",
            &pa,
            &audio,
            "--unmute",
            "--json"
        ])
        .await
    );
    assert!(!track.muted, "{track:?}");
    b.wait_until("trackMuted false", T, |s| {
        s.tracks_muted.iter().any(|(t, m)| t.track == audio && !*m)
    })
    .await;

    // Kick: the other participant sees `removed`.
    let out = ctl.ok(&["participants", "kick", "ctl-meet", &pa]).await;
    assert!(out.contains(&pa), "{out}");
    b.wait_until("participantLeft removed", T, |s| s.saw_left(&pa, "removed"))
        .await;
    ctl.fails(&["participants", "kick", "ctl-meet", &pa], 1, "NOT_FOUND")
        .await;

    // End: the last participant is told, the meeting is gone.
    let out = ctl.ok(&["meetings", "end", "ctl-meet"]).await;
    assert!(out.contains("ended meeting ctl-meet"), "{out}");
    assert!(out.contains("1 participant"), "{out}");
    b.wait_until("meetingEnded", T, |s| s.meeting_ended.is_some())
        .await;
    ctl.fails(&["meetings", "show", "ctl-meet"], 1, "NOT_FOUND")
        .await;
    let end = parse!(
        pb::EndMeetingResponse,
        ctl.ok(&["meetings", "end", "ctl-new", "--json"]).await
    );
    assert_eq!(end.participants, 0);
    assert_eq!(
        ctl.ok(&["meetings", "list"]).await.trim(),
        "(no live meetings)"
    );
    drop((a, b));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_map_to_documented_exit_codes() {
    let server = TestServer::start().await;
    let ctl = Ctl::new(&server);

    // 1: the node refused.
    ctl.fails(&["meetings", "show", "no-such-meeting"], 1, "NOT_FOUND")
        .await;
    let run = ctl.run(&["meetings", "show", "no-such-meeting"]).await;
    assert!(
        run.stderr.starts_with("error: NOT_FOUND: "),
        "{}",
        run.stderr
    );
    assert!(run.stdout.is_empty(), "{run:?}");
    ctl.fails(
        &["participants", "list", "bad name!"],
        1,
        "INVALID_ARGUMENT",
    )
    .await;
    ctl.fails(&["kill", "9.9999"], 1, "NOT_FOUND").await;
    let node = ctl
        .tree()
        .await
        .into_iter()
        .find(|a| a.kind == "node")
        .expect("the node actor");
    ctl.fails(&["kill", &node.id], 1, "FAILED_PRECONDITION")
        .await;
    ctl.fails(&["token", "--identity", "x"], 1, "INVALID_ARGUMENT")
        .await;

    // 4: authentication; flags beat the environment.
    let run = ctl
        .fails(
            &["--api-secret", "wrong-secret", "status"],
            4,
            "UNAUTHENTICATED",
        )
        .await;
    assert!(run.stderr.contains("--api-secret"), "a hint: {run:#?}");
    ctl.fails(&["--api-key", "APIunknown", "tree"], 4, "UNAUTHENTICATED")
        .await;
    let mut cmd = ctl.command(&["status"]);
    cmd.env_remove("HEARTH_API_KEY");
    let run = Ctl::run_cmd(cmd, "status without a key").await;
    assert_eq!(run.code, Some(4), "{run:#?}");
    assert!(run.stderr.contains("--api-key"), "{run:#?}");

    // 3: unreachable.
    ctl.fails(
        &["--url", "http://127.0.0.1:1", "status"],
        3,
        "cannot reach http://127.0.0.1:1",
    )
    .await;

    // 2: usage.
    ctl.fails(&["meetings"], 2, "subcommand").await;
    ctl.fails(&["--timeout", "soon", "status"], 2, "--timeout")
        .await;
    let help = ctl.ok(&["--help"]).await;
    assert!(help.contains("Exit status"), "{help}");
    for code in 0..=4 {
        assert!(
            help.lines()
                .any(|l| l.trim_start().starts_with(&format!("{code}  "))),
            "--help documents exit status {code}:\n{help}"
        );
    }

    // Flags work without the environment too.
    let mut cmd = Command::new(hearthctl_bin());
    cmd.args([
        "--url",
        &ctl.url,
        "--api-key",
        API_KEY,
        "--api-secret",
        API_SECRET,
        "--json",
        "status",
    ])
    .env_remove("HEARTH_URL")
    .env_remove("HEARTH_API_KEY")
    .env_remove("HEARTH_API_SECRET")
    .kill_on_drop(true);
    let run = Ctl::run_cmd(cmd, "status with flags").await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    let doc: serde_json::Value = serde_json::from_str(&run.stdout).expect("JSON");
    assert!(doc["node"]["version"].is_string(), "{doc}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_events_top_and_token() {
    let server = TestServer::start().await;
    let ctl = Ctl::new(&server);
    let a = join(&server, "ctl-events", "a", ClientOptions::receive_only()).await;
    let pa = a.participant_id().to_owned();

    // status: version and counts.
    let status = ctl.ok(&["status"]).await;
    let value = |key: &str| -> String {
        status
            .lines()
            .find(|l| l.split_whitespace().next() == Some(key))
            .unwrap_or_else(|| panic!("no {key} line:\n{status}"))
            .split_whitespace()
            .skip(1)
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(
        value("version"),
        format!("hearth {}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(value("meetings"), "1", "{status}");
    assert_eq!(value("participants"), "1", "{status}");
    assert_eq!(value("draining"), "no", "{status}");
    let doc: serde_json::Value =
        serde_json::from_str(&ctl.ok(&["status", "--json"]).await).expect("status JSON");
    assert_eq!(doc["node"]["meetings"], 1, "{doc}");
    assert_eq!(doc["stats"]["participants"], 1, "{doc}");

    // events: the retained ones after #1, with sequence numbers.
    let joined = format!("participant_joined {pa}");
    let out = ctl
        .wait_output(&["events", "--resume-after", "1"], "a's join", |out| {
            out.contains(&joined)
        })
        .await;
    let mut last = 1;
    for line in out.lines() {
        let seq: u64 = line
            .strip_prefix('#')
            .and_then(|l| l.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not `#seq ...`: {line:?}\n{out}"));
        assert!(seq > last, "increasing sequence numbers after 1:\n{out}");
        last = seq;
    }
    let line = out
        .lines()
        .find(|l| l.contains(&joined))
        .expect("join line");
    assert!(line.contains(" ctl-events "), "{line}");
    let json = ctl
        .ok(&[
            "events",
            "--resume-after",
            "1",
            "--meeting",
            "ctl-events",
            "--json",
        ])
        .await;
    let events: Vec<pb::Event> = json.lines().map(|l| parse!(pb::Event, l)).collect();
    assert!(!events.is_empty());
    assert!(
        events
            .iter()
            .all(|e| e.sequence > 1 && e.meeting == "ctl-events")
    );
    assert!(events.iter().any(|e| matches!(
        &e.kind,
        Some(pb::event::Kind::ParticipantJoined(j))
            if j.participant.as_ref().is_some_and(|p| p.id == pa)
    )));

    // events --follow: replayed, then live, until stopped.
    let mut follow = ctl.command(&[
        "events",
        "--follow",
        "--meeting",
        "ctl-events",
        "--resume-after",
        "1",
    ]);
    follow.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = follow.spawn().expect("spawn hearthctl events --follow");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut seen = Vec::new();
    let mut next_until = async |needle: &str, seen: &mut Vec<String>| {
        let found = tokio::time::timeout(T, async {
            while let Ok(Some(line)) = lines.next_line().await {
                let hit = line.contains(needle);
                seen.push(line);
                if hit {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(
            found,
            Ok(true),
            "events --follow never printed {needle}: {seen:#?}"
        );
    };
    next_until(&joined, &mut seen).await;
    let b = join(&server, "ctl-events", "b", ClientOptions::receive_only()).await;
    next_until(
        &format!("participant_joined {}", b.participant_id()),
        &mut seen,
    )
    .await;
    drop(b);
    next_until("participant_left", &mut seen).await;
    child.start_kill().expect("stop events --follow");
    let _ = tokio::time::timeout(T, child.wait()).await;

    // top: two refreshes, then it stops by itself.
    let top = ctl.ok(&["top", "--iterations", "2"]).await;
    assert_eq!(top.matches("MEETINGS").count(), 2, "{top}");
    assert!(
        top.lines().any(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w == ["ctl-events", "1"]
        }),
        "{top}"
    );
    let frames: Vec<serde_json::Value> = ctl
        .ok(&["top", "--iterations", "2", "--json"])
        .await
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(frames.len(), 2);
    assert!(frames[0]["rates"].is_null() && frames[1]["rates"].is_object());

    // token: what it mints joins the meeting.
    let token = ctl
        .ok(&[
            "token",
            "--meeting",
            "ctl-events",
            "--identity",
            "zed",
            "--name",
            "Zed",
            "--ttl",
            "10m",
        ])
        .await;
    let token = token.trim();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    let z = TestClient::join_with_token(
        &server.ws_url(),
        token,
        "ctl-events",
        ClientOptions::receive_only(),
    )
    .await
    .expect("the minted token joins");
    let minted = parse!(
        pb::MintTokenResponse,
        ctl.ok(&[
            "token",
            "--meeting",
            "ctl-events",
            "--identity",
            "zed",
            "--json"
        ])
        .await
    );
    assert!(!minted.token.is_empty() && minted.expires_at.is_some());
    drop((a, z));
    server.shutdown().await;
}

/// `drain --wait` against a real node process: no new meetings, the meeting ends, the node
/// exits 0, and the CLI exits 0 once the node is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_waits_for_the_node_to_exit_cleanly() {
    let ctl_bin = hearthctl_bin();
    let hearth = ctl_bin.with_file_name(format!("hearth{}", std::env::consts::EXE_SUFFIX));
    assert!(hearth.is_file(), "run `cargo build --workspace` first");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let data = std::env::temp_dir().join(format!("hearthctl-drain-{port}"));
    let mut node = Command::new(&hearth);
    let mut node = hearth_tests::node_args(&mut node, port, (API_KEY, API_SECRET), &data)
        .args(["--empty-timeout", "1s"])
        .spawn()
        .expect("the node starts");
    let ctl = Ctl {
        bin: ctl_bin,
        url: format!("http://127.0.0.1:{port}"),
    };
    // Up when `status` answers (bounded polling; the node starts in milliseconds).
    let deadline = tokio::time::Instant::now() + T;
    loop {
        if ctl.run(&["status"]).await.code == Some(0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the node never answered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ctl.ok(&["meetings", "create", "maintenance", "--empty-timeout", "2s"])
        .await;
    let drain = Ctl::run_cmd(
        ctl.command(&["drain", "--deadline", "30", "--wait"]),
        "drain --wait",
    );
    let (drain, refused) = tokio::join!(drain, async {
        // While it drains, new meetings are refused.
        let deadline = tokio::time::Instant::now() + T;
        loop {
            let run = ctl.run(&["meetings", "create", "late"]).await;
            if run.code == Some(1) && run.stderr.contains("FAILED_PRECONDITION") {
                break run;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "create was never refused: {run:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    assert!(refused.stderr.contains("draining"), "{refused:#?}");
    assert_eq!(drain.code, Some(0), "{drain:#?}");
    let status = tokio::time::timeout(T, node.wait())
        .await
        .expect("the node exits by itself")
        .expect("wait");
    assert!(status.success(), "the node exits 0: {status:?}");
    let _ = std::fs::remove_dir_all(&data);
}
