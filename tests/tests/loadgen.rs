//! `hearth-loadgen` against a real node process: a short run of 20 meetings of 3, over
//! signaling and real WebRTC, must carry media with under 1% loss, and its JSON report must
//! have every field; and `--reconnect` against an in-process node whose participant actor
//! is killed. The binaries come from `cargo build --workspace`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

const KEY: &str = "APIloadgen";
const SECRET: &str = "loadgen-secret-0123456789abcdef";

fn bin(name: &str) -> PathBuf {
    hearth_tests::workspace_bin(name)
}

/// `hearth-loadgen` against the node on `port` with the tests' key pair; output captured,
/// killed with the test.
fn loadgen(port: u16) -> Command {
    let mut c = Command::new(bin("hearth-loadgen"));
    c.args(["--url", &format!("http://127.0.0.1:{port}")])
        .args(["--api-key", KEY, "--api-secret", SECRET])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    c
}

/// A node process on a free port with its own data directory, ready (`/readyz`).
async fn start_node(tag: &str) -> (tokio::process::Child, u16, PathBuf) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let dir = std::env::temp_dir().join(format!("hearth-loadgen-{tag}-{port}"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut node = Command::new(bin("hearth"));
    let node = hearth_tests::node_args(&mut node, port, (KEY, SECRET), &dir.join("data"))
        .spawn()
        .expect("node starts");
    // Ready when /readyz answers (bounded polling; the node starts in milliseconds).
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the node never listened"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(hearth_tests::http_get(addr, "/readyz").await, "ready");
    (node, port, dir)
}

/// The full `rtc` client: besides media and the report, no error of any kind (the
/// generator's trickled candidates were once refused as INVALID_CANDIDATE by the server).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_run_carries_media_and_reports_every_field() {
    short_run("full", &[]).await;
}

/// The lean client, with one video publisher per meeting: the same checks, plus keyframes
/// and no packet that failed authentication.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_run_on_the_lean_client_carries_media_and_reports_every_field() {
    let r = short_run("lean", &["--video-publishers", "1", "--video-kbps", "300"]).await;
    assert!(
        r["packets"]["keyframes_received"].as_u64().unwrap_or(0) > 0,
        "{r}"
    );
    assert_eq!(r["packets"]["media_errors"], 0, "{r}");
}

async fn short_run(client: &str, extra: &[&str]) -> serde_json::Value {
    let (mut node, port, dir) = start_node("test").await;
    let pid = node.id().expect("pid");
    let json = dir.join("report.json");
    let svg = dir.join("report.svg");
    let run = loadgen(port)
        .args(["--meetings", "20", "--participants", "3", "--speakers", "1"])
        .args(["--ramp", "30", "--duration", "10s"])
        .args(["--client", client])
        .args(extra)
        .args(["--server-pid", &pid.to_string()])
        .arg("--json")
        .arg(&json)
        .arg("--svg")
        .arg(&svg)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the run ends in time")
        .expect("loadgen runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let text = std::fs::read_to_string(&json)
        .unwrap_or_else(|e| panic!("no JSON report ({e}):\n{stdout}\n{stderr}"));
    let r: serde_json::Value = serde_json::from_str(&text).expect("the report is JSON");
    for field in [
        "target",
        "scenario",
        "meetings",
        "participants_planned",
        "participants_joined",
        "participants_connected",
        "join_ms",
        "loss_pct",
        "packets",
        "throughput",
        "latency_ms",
        "jitter_ms_avg",
        "server",
        "errors",
        "slo",
        "timeline",
    ] {
        assert!(r.get(field).is_some(), "missing {field}: {text}");
    }
    for p in ["p50", "p95", "p99", "p999", "max"] {
        assert!(r["latency_ms"].get(p).is_some() && r["join_ms"].get(p).is_some());
    }
    assert_eq!(r["participants_joined"], 60, "{stdout}\n{stderr}");
    assert_eq!(r["participants_connected"], 60, "{stdout}\n{stderr}");
    let received = r["packets"]["received"].as_u64().unwrap_or(0);
    // 60 participants each receiving 2 audio streams at 50 packets/s for about 10 s.
    assert!(received > 30_000, "media flowed: {received}\n{stdout}");
    let loss = r["loss_pct"].as_f64().unwrap_or(100.0);
    assert!(loss < 1.0, "loss {loss}%\n{stdout}");
    assert!(r["latency_ms"]["p50"].as_f64().unwrap_or(0.0) > 0.0);
    assert!(r["server"]["rss_mb_peak"].as_f64().unwrap_or(0.0) > 1.0);
    assert!(r["timeline"].as_array().is_some_and(|t| t.len() >= 10));
    let chart = std::fs::read_to_string(&svg).expect("an SVG chart");
    assert!(chart.starts_with("<svg") && chart.contains("polyline"));
    assert!(stdout.contains("added latency"), "{stdout}");
    assert_eq!(r["client"], client, "{stdout}");
    assert_eq!(
        r["errors"].as_object().map(|e| e.len()),
        Some(0),
        "no error of any kind: {stdout}"
    );
    let _ = node.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
    r
}

/// `--reconnect` against an in-process node: one participant's actor is made to fail (the
/// drill hook), its simulated participant is told to reconnect, joins again with the same
/// identity and gets media again; the report counts exactly that one disconnect and return,
/// and no other participant noticed anything (no error, no gap in anyone else's media).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_participant_comes_back_and_nobody_else_notices() {
    let server = hearth_tests::TestServer::start().await;
    let dir = std::env::temp_dir().join(format!(
        "hearth-loadgen-reconnect-{}",
        server.server.http_addr.port()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let json = dir.join("report.json");
    let run = Command::new(bin("hearth-loadgen"))
        .args(["--url", &format!("http://{}", server.server.http_addr)])
        .args([
            "--api-key",
            hearth_tests::API_KEY,
            "--api-secret",
            hearth_tests::API_SECRET,
        ])
        .args(["--meetings", "2", "--participants", "3", "--speakers", "1"])
        .args(["--ramp", "30", "--duration", "12s", "--reconnect"])
        .arg("--json")
        .arg(&json)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("loadgen starts");
    // Everyone joined and publishes, and media flows (bounded polling).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let (meeting, victim) = loop {
        let meetings = server.node().meetings().await;
        let publishing = meetings
            .iter()
            .flat_map(|m| &m.participants)
            .filter(|p| !p.info.tracks.is_empty())
            .count();
        if meetings.len() == 2 && publishing == 6 {
            let m = &meetings[0];
            break (m.id.as_str().to_owned(), m.participants[0].info.clone());
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the 6 participants never all published"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // 6 receivers x 2 streams x 50 packets/s: about 2 s of media.
    server
        .wait_metric(
            "hearth_media_packets_out_total",
            Duration::from_secs(20),
            |v| v > 1200.0,
        )
        .await;
    assert!(server.inject_participant_fault(&meeting, victim.id.as_str()));
    // It is back: the same identity, a new participant id, publishing again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let back = server
            .node()
            .meetings()
            .await
            .into_iter()
            .filter(|m| m.id.as_str() == meeting)
            .flat_map(|m| m.participants)
            .any(|p| {
                p.info.identity == victim.identity
                    && p.info.id != victim.id
                    && !p.info.tracks.is_empty()
            });
        if back {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} never rejoined",
            victim.identity
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = tokio::time::timeout(Duration::from_secs(60), run.wait_with_output())
        .await
        .expect("the run ends in time")
        .expect("loadgen runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let text = std::fs::read_to_string(&json)
        .unwrap_or_else(|e| panic!("no JSON report ({e}):\n{stdout}\n{stderr}"));
    let r: serde_json::Value = serde_json::from_str(&text).expect("the report is JSON");
    let rc = &r["reconnect"];
    assert_eq!(rc["participants_disconnected"], 1, "{stdout}\n{stderr}");
    assert_eq!(rc["disconnects"], 1, "{stdout}");
    assert_eq!(rc["reconnects"], 1, "{stdout}");
    assert_eq!(rc["not_back"], 0, "{stdout}");
    assert_eq!(rc["others_noticed"], 0, "bystanders noticed: {stdout}");
    assert_eq!(rc["time_back_ms"]["count"], 1);
    let back_ms = rc["time_back_ms"]["max"].as_f64().unwrap_or(0.0);
    assert!(back_ms > 0.0 && back_ms < 5000.0, "time back {back_ms} ms");
    assert_eq!(r["errors"]["RECONNECT"], 1, "{stdout}");
    assert_eq!(r["participants_joined"], 6, "rejoins are not new joins");
    assert_eq!(r["slo"]["reconnect_ok"], true, "{stdout}");
    assert!(stdout.contains("time back"), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
    server.shutdown().await;
}

/// `--chaos-every` against an in-process node: the load generator itself finds actors of
/// its run in the supervision tree and kills them over gRPC (`AdminService.KillActor`);
/// every kill's participants come back, and no bystander notices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_kills_only_disturb_the_killed_actors_participants() {
    let server = hearth_tests::TestServer::start().await;
    let dir = std::env::temp_dir().join(format!(
        "hearth-loadgen-chaos-{}",
        server.server.http_addr.port()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let json = dir.join("report.json");
    // Kills 3 s into the hold and every 3 s after, while a kill's 5 s window fits in the
    // 12 s hold: two kills, one of each kind at most (the kind is drawn per kill).
    let run = Command::new(bin("hearth-loadgen"))
        .args(["--url", &format!("http://{}", server.server.http_addr)])
        .args([
            "--api-key",
            hearth_tests::API_KEY,
            "--api-secret",
            hearth_tests::API_SECRET,
        ])
        .args(["--meetings", "3", "--participants", "3", "--speakers", "1"])
        .args(["--ramp", "30", "--duration", "12s", "--reconnect"])
        .args([
            "--chaos-every",
            "3s",
            "--chaos-kinds",
            "participant,meeting",
        ])
        .arg("--json")
        .arg(&json)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .expect("the run ends in time")
        .expect("loadgen runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let text = std::fs::read_to_string(&json)
        .unwrap_or_else(|e| panic!("no JSON report ({e}):\n{stdout}\n{stderr}"));
    let r: serde_json::Value = serde_json::from_str(&text).expect("the report is JSON");
    let chaos = &r["chaos"];
    assert_eq!(chaos["kills"], 2, "{stdout}\n{stderr}");
    assert_eq!(chaos["failed_kills"], 0, "{stdout}\n{stderr}");
    assert_eq!(chaos["bystanders_noticed"], 0, "{stdout}");
    assert_eq!(chaos["affected_not_back"], 0, "{stdout}");
    let kills = chaos["per_kill"].as_array().expect("per-kill records");
    let mut affected = 0;
    for k in kills {
        let n = k["affected"].as_array().map_or(0, Vec::len);
        match k["kind"].as_str() {
            Some("participant") => assert_eq!(n, 1, "{k}"),
            Some("meeting") => assert_eq!(n, 3, "{k}"),
            other => panic!("unexpected kind {other:?}"),
        }
        assert_eq!(k["affected_noticed"].as_u64(), Some(n as u64), "{k}");
        assert!(k["all_back_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{k}");
        affected += n;
    }
    // Every affected participant lost its session once and came back; nobody else did.
    let rc = &r["reconnect"];
    assert_eq!(rc["disconnects"], affected, "{stdout}");
    assert_eq!(rc["reconnects"], rc["disconnects"], "{stdout}");
    assert_eq!(rc["not_back"], 0, "{stdout}");
    assert_eq!(rc["others_noticed"], 0, "{stdout}");
    assert_eq!(r["slo"]["reconnect_ok"], true, "{stdout}");
    assert!(stdout.contains("bystanders"), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
    server.shutdown().await;
}

/// A run where nothing can be measured (nobody publishes) must not pass its SLO: the report
/// says so and the exit status is non-zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_with_no_media_does_not_pass_its_slo() {
    let (mut node, port, dir) = start_node("silent").await;
    let json = dir.join("report.json");
    let run = loadgen(port)
        .args(["--meetings", "2", "--participants", "4"])
        .args(["--audio-publishers", "0", "--speakers", "0"])
        .args(["--duration", "3s"])
        .arg("--json")
        .arg(&json)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the run ends in time")
        .expect("loadgen runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "a run with no media exits non-zero:\n{stdout}"
    );
    assert!(stdout.contains("NOT MEASURED"), "{stdout}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("a JSON report"))
            .expect("JSON");
    assert_eq!(r["slo"]["held"], false);
    assert_eq!(r["slo"]["measured"], false);
    node.start_kill().expect("kill");
    let _ = node.wait().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Starts `hearth-loadgen agent` on a free loopback port; returns it and its address.
async fn agent() -> (tokio::process::Child, String) {
    use tokio::io::AsyncBufReadExt;
    let mut child = Command::new(bin("hearth-loadgen"))
        .args(["agent", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("agent starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let first = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("the agent says where it listens")
        .expect("read")
        .expect("a line");
    let addr = first.rsplit(' ').next().expect("an address").to_owned();
    (child, addr)
}

/// Two agents and a controller: meetings are placed whole on each agent, and one merged
/// report counts everyone, with a row per agent. Then a second run loses an agent
/// mid-run: the report names it as lost and the run fails its SLO.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_share_a_run_and_a_dead_agent_is_reported() {
    use tokio::io::AsyncBufReadExt;
    let (mut node, port, dir) = start_node("agents").await;
    let (_a1, addr1) = agent().await;
    let (mut a2, addr2) = agent().await;
    let controller = |json: &std::path::Path, hold: &str| {
        let mut c = loadgen(port);
        c.args(["--agents", &format!("{addr1},{addr2}")])
            .args(["--meetings", "4", "--participants", "3", "--client", "lean"])
            .args(["--duration", hold])
            .arg("--json")
            .arg(json);
        c
    };
    let json = dir.join("agents.json");
    let out = tokio::time::timeout(Duration::from_secs(90), controller(&json, "4s").output())
        .await
        .expect("the run ends in time")
        .expect("the controller runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("a JSON report"))
            .expect("JSON");
    assert!(out.status.success(), "{stdout}");
    assert_eq!(r["participants_connected"], 12, "{stdout}");
    let agents = r["agents"].as_array().expect("agent rows");
    assert_eq!(agents.len(), 2);
    for (a, first) in agents.iter().zip([0, 2]) {
        assert_eq!(a["status"], "done", "{a}");
        assert_eq!(a["first_meeting"], first, "{a}");
        assert_eq!(a["meetings"], 2, "{a}");
        assert_eq!(a["participants_connected"], 6, "{a}");
    }
    assert!(
        r["packets"]["received"].as_u64().unwrap_or(0) > 1000,
        "{stdout}"
    );
    assert!(r["loss_pct"].as_f64().unwrap_or(100.0) < 1.0, "{stdout}");
    assert_eq!(r["slo"]["held"], true, "{stdout}");

    // Second run: kill the second agent once everyone is connected.
    let json = dir.join("lost.json");
    let mut run = controller(&json, "8s")
        .spawn()
        .expect("the controller runs");
    let stderr = run.stderr.take().expect("stderr");
    let mut progress = tokio::io::BufReader::new(stderr).lines();
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = progress.next_line().await {
            if line.contains("connected 12 ") {
                return;
            }
        }
        panic!("the run ended before everyone connected");
    })
    .await
    .expect("everyone connects");
    a2.start_kill().expect("kill the agent");
    let drain = tokio::spawn(async move { while let Ok(Some(_)) = progress.next_line().await {} });
    let out = tokio::time::timeout(Duration::from_secs(90), run.wait_with_output())
        .await
        .expect("the run ends in time")
        .expect("the controller runs");
    let _ = drain.await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "a lost agent fails the run:\n{stdout}"
    );
    assert!(stdout.contains("lost"), "{stdout}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("a JSON report"))
            .expect("JSON");
    assert_eq!(r["agents"][0]["status"], "done", "{stdout}");
    assert!(
        r["agents"][1]["status"]
            .as_str()
            .is_some_and(|s| s.starts_with("lost")),
        "{stdout}"
    );
    assert_eq!(r["slo"]["agents_ok"], false);
    assert_eq!(r["slo"]["held"], false);
    node.start_kill().expect("kill");
    let _ = node.wait().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The lean client and the full one measure the same thing: one node, the same scenario
/// run with each, loss within 0.1 % of each other and the steady receive rate within 1 %.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lean_and_the_full_client_agree() {
    let (mut node, port, dir) = start_node("agree").await;
    let mut reports = Vec::new();
    for client in ["full", "lean"] {
        let json = dir.join(format!("{client}.json"));
        let out = loadgen(port)
            .args(["--meetings", "10", "--participants", "3", "--speakers", "1"])
            .args(["--ramp", "30", "--duration", "8s", "--client", client])
            .arg("--json")
            .arg(&json)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(90), out)
            .await
            .expect("the run ends in time")
            .expect("loadgen runs");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{client}:\n{stdout}");
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).expect("a JSON report"))
                .expect("JSON");
        reports.push((r, stdout));
    }
    let (full, lean) = (&reports[0], &reports[1]);
    let loss = |r: &serde_json::Value| r["loss_pct"].as_f64().expect("loss");
    let rate = |r: &serde_json::Value| r["throughput"]["pps_in"].as_f64().expect("rate");
    assert!(
        (loss(&full.0) - loss(&lean.0)).abs() < 0.1,
        "loss: full {} lean {}\n{}\n{}",
        loss(&full.0),
        loss(&lean.0),
        full.1,
        lean.1
    );
    // 30 participants, each receiving 2 audio streams of 50 packets/s: 3,000 packets/s.
    let (f, l) = (rate(&full.0), rate(&lean.0));
    assert!(f > 2_500.0, "{}", full.1);
    assert!((f - l).abs() / f < 0.01, "receive rate: full {f} lean {l}");
    node.start_kill().expect("kill");
    let _ = node.wait().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--churn`: during the hold participants leave and others join in their place; every
/// replacement joins and gets media, and the run still holds its SLO.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_replaces_participants_during_the_hold() {
    let (mut node, port, dir) = start_node("churn").await;
    let json = dir.join("churn.json");
    let out = loadgen(port)
        .args(["--meetings", "6", "--participants", "3", "--speakers", "1"])
        .args(["--ramp", "30", "--duration", "20s", "--churn", "2"])
        .args(["--client", "lean"])
        .arg("--json")
        .arg(&json)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(90), out)
        .await
        .expect("the run ends in time")
        .expect("loadgen runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("a JSON report"))
            .expect("JSON");
    // Participants are eligible after 10 s in their meeting, and the churn stops 3 s before
    // the end: about 7 s of churn at 2/s.
    let left = r["churn"]["left"].as_u64().expect("churn.left");
    assert!(left >= 3, "{stdout}");
    assert_eq!(
        r["churn"]["joined"], left,
        "every replacement got media: {stdout}"
    );
    assert_eq!(r["meetings"], 6, "{stdout}");
    assert_eq!(r["slo"]["held"], true, "{stdout}");
    assert!(stdout.contains("churn (2/s)"), "{stdout}");
    node.start_kill().expect("kill");
    let _ = node.wait().await;
    let _ = std::fs::remove_dir_all(&dir);
}
