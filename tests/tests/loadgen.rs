//! `hearth-loadgen` against a real node process: a short run of 20 meetings of 3, over
//! signaling and real WebRTC, must carry media with under 1% loss, and its JSON report must
//! have every field. Both binaries come from `cargo build --workspace`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

const KEY: &str = "APIloadgen";
const SECRET: &str = "loadgen-secret-0123456789abcdef";

fn bin(name: &str) -> PathBuf {
    hearth_tests::workspace_bin(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_run_carries_media_and_reports_every_field() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let dir = std::env::temp_dir().join(format!("hearth-loadgen-test-{port}"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut node = Command::new(bin("hearth"));
    let mut node = hearth_tests::node_args(&mut node, port, (KEY, SECRET), &dir.join("data"))
        .spawn()
        .expect("node starts");
    let pid = node.id().expect("pid");
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
    let json = dir.join("report.json");
    let svg = dir.join("report.svg");
    let run = Command::new(bin("hearth-loadgen"))
        .args(["--url", &format!("http://127.0.0.1:{port}")])
        .args(["--api-key", KEY, "--api-secret", SECRET])
        .args(["--meetings", "20", "--participants", "3", "--speakers", "1"])
        .args(["--ramp", "30", "--duration", "10s"])
        .args(["--server-pid", &pid.to_string()])
        .arg("--json")
        .arg(&json)
        .arg("--svg")
        .arg(&svg)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
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
    let _ = node.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
}
