//! The usage ledger and webhooks, end to end, on SQLite and on PostgreSQL:
//! - usage truth: real participants (WebRTC over signaling) of known durations; the ledger's
//!   participant, track and meeting milliseconds match what the test measured within 1 %,
//!   through the REST API (`/v1/usage`, `/v1/usage/events` as NDJSON and CSV);
//! - crash safety: `kill -9` of a real node in the middle of a meeting, restart, finish: the
//!   killed sessions are closed at their last checkpoint (within a second of the kill), nothing
//!   is counted twice (every idempotency key once);
//! - webhooks: a receiver that fails the first deliveries gets every lifecycle event after
//!   retries, each signed (checked), with a stable id; a failing endpoint is paused, shown in
//!   its delivery log, and resumes when enabled; redelivery;
//! - a database that is unreachable at start (exit code 3, clear message) or goes away while
//!   the node runs (media keeps flowing, usage is buffered and written when it comes back).
//!
//! PostgreSQL: `HEARTH_TEST_PG_URL` (a server `tests/run.sh` starts on loopback); each test
//! makes its own database. Without it the PostgreSQL variants are skipped, unless
//! `HEARTH_TEST_REQUIRE_PG=1` (set by `tests/run.sh`), which makes them fail instead.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use hearth_actors::Grants;
use hearth_actors::billing::store::now_ms;
use hearth_actors::billing::webhook::{WebhookConfig, secret_key, sign};
use hearth_api::config::LedgerConfig;
use hearth_api::token;
use hearth_tests::{API_KEY, API_SECRET, ClientOptions, Kind, TestClient, TestServer};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(20);

fn admin_token(key: &str, secret: &str) -> String {
    let grants = Grants {
        admin: true,
        ..Grants::default()
    };
    let claims = token::claims_for(
        key,
        "",
        "billing",
        "billing",
        grants,
        SystemTime::now(),
        Duration::from_secs(3600),
    );
    token::mint(&claims, secret)
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "hearth-ledger-{name}-{}",
        hearth_actors::ids::random_string(8)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn sqlite_url(name: &str) -> String {
    format!("sqlite://{}/ledger.db", temp_dir(name).display())
}

/// A fresh PostgreSQL database, or None (skipped) when no server is configured.
async fn pg_url(name: &str) -> Option<String> {
    let Ok(base) = std::env::var("HEARTH_TEST_PG_URL") else {
        assert!(
            std::env::var("HEARTH_TEST_REQUIRE_PG").is_err(),
            "HEARTH_TEST_REQUIRE_PG is set but HEARTH_TEST_PG_URL is not"
        );
        eprintln!("skipped: no PostgreSQL (HEARTH_TEST_PG_URL)");
        return None;
    };
    use sqlx::Connection;
    let db = format!(
        "t_{name}_{}",
        hearth_actors::ids::random_string(8).to_ascii_lowercase()
    );
    let mut conn = sqlx::PgConnection::connect(&base)
        .await
        .expect("PostgreSQL at HEARTH_TEST_PG_URL answers");
    sqlx::raw_sql(&format!("CREATE DATABASE {db}"))
        .execute(&mut conn)
        .await
        .expect("CREATE DATABASE");
    let (prefix, _) = base.rsplit_once('/').expect("a URL with a database");
    Some(format!("{prefix}/{db}"))
}

fn ledger_config(url: String, webhooks: WebhookConfig) -> LedgerConfig {
    LedgerConfig {
        url,
        node_id: Some("test-node".into()),
        webhooks,
    }
}

/// A REST client of one node with a node-wide admin token.
struct Api {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Api {
    fn new(base: String, key: &str, secret: &str) -> Self {
        // reqwest uses the process's rustls provider (the node's is ring).
        let _ = rustls::crypto::ring::default_provider().install_default();
        Self {
            base,
            token: admin_token(key, secret),
            http: reqwest::Client::new(),
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .timeout(T);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("HTTP");
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.expect("body");
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn get(&self, path: &str) -> Value {
        let (status, body) = self.call(reqwest::Method::GET, path, None).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    async fn text(&self, path: &str, accept: &str) -> (String, String) {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .header("accept", accept)
            .timeout(T)
            .send()
            .await
            .expect("HTTP");
        assert_eq!(resp.status(), 200);
        let ct = resp.headers()["content-type"]
            .to_str()
            .unwrap_or("")
            .to_owned();
        (ct, resp.text().await.expect("text"))
    }

    /// Every ledger row (NDJSON, paged).
    async fn all_events(&self) -> Vec<Value> {
        let mut out = Vec::new();
        let mut after = 0;
        loop {
            let (ct, text) = self
                .text(
                    &format!("/v1/usage/events?after={after}&limit=500"),
                    "application/x-ndjson",
                )
                .await;
            assert!(ct.starts_with("application/x-ndjson"), "{ct}");
            let page: Vec<Value> = text
                .lines()
                .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
                .collect();
            if page.is_empty() {
                return out;
            }
            after = page.last().unwrap()["seq"].as_i64().unwrap();
            out.extend(page);
        }
    }
}

/// Sums of one meter per subject/participant/group from raw rows.
fn sum(rows: &[Value], meter: &str, field: &str, value: &str) -> i64 {
    rows.iter()
        .filter(|r| r["meter"] == meter && r[field] == value)
        .map(|r| r["quantity"].as_i64().unwrap())
        .sum()
}

/// `value` lies in `[low, high]` widened by 1 % (and `slack_ms`).
fn assert_within(what: &str, value: i64, low: i64, high: i64, slack_ms: i64) {
    let lo = (low as f64 * 0.99) as i64 - slack_ms;
    let hi = (high as f64 * 1.01) as i64 + slack_ms;
    assert!(
        (lo..=hi).contains(&value),
        "{what}: {value} ms is outside the measured [{low}, {high}] ms (+-1 %, +-{slack_ms} ms)"
    );
}

async fn usage_truth(url: String) {
    let server = TestServer::start_with(|c| {
        c.ledger = Some(ledger_config(url, WebhookConfig::default()));
        c.empty_timeout = Duration::from_secs(1);
    })
    .await;
    let api = Api::new(
        format!("http://{}", server.server.http_addr),
        API_KEY,
        API_SECRET,
    );
    // Alice publishes audio and video; Bob receives. The test brackets each start and end.
    let t0 = now_ms();
    let alice = TestClient::join(&server, "bill", "alice", ClientOptions::av())
        .await
        .expect("alice joins");
    let t1 = now_ms();
    let bob = TestClient::join(&server, "bill", "bob", ClientOptions::receive_only())
        .await
        .expect("bob joins");
    let t1b = now_ms();
    let alice_id = alice.participant_id().to_owned();
    let bob_id = bob.participant_id().to_owned();
    // Her tracks are published (metered from then on) before their first packet reaches Bob.
    bob.wait_for_media_from(&[&alice_id], 1, 1, T).await;
    let t_media = now_ms();
    // About three seconds of audio (50 packets/s) reach Bob: a duration that is measured,
    // not slept.
    bob.wait_for_packets(&alice_id, Kind::Audio, 150, T).await;
    // Live usage: the open intervals count up to their last checkpoint.
    server
        .node()
        .billing()
        .unwrap()
        .tick_once()
        .await
        .expect("a checkpoint");
    let live = api
        .get(&format!(
            "/v1/usage?window=hour&group_by=participant&meter=participant_ms&from={}",
            since_yesterday()
        ))
        .await;
    let live_alice: i64 = live["totals"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["group"] == alice_id.as_str())
        .map(|t| t["quantity"].as_i64().unwrap())
        .sum();
    assert!(live_alice >= 2500, "open intervals count: {live}");
    let final_only = api
        .get(&format!(
            "/v1/usage?window=hour&meter=participant_ms&include_open=false&from={}",
            since_yesterday()
        ))
        .await;
    assert!(
        final_only["totals"].as_array().unwrap().is_empty(),
        "nothing has ended yet: {final_only}"
    );
    let t2 = now_ms();
    alice.leave().await;
    bob.wait_until("alice left", T, |s| s.saw_left(&alice_id, "left"))
        .await;
    let t3 = now_ms();
    let t4 = now_ms();
    bob.leave().await;
    server.wait_meeting_count(T, |n| n == 0).await;
    let t5 = now_ms();
    let billing = server.node().billing().expect("billing runs").clone();
    billing.tick_once().await.expect("the ledger writes");

    let rows = api.all_events().await;
    let p_alice = sum(&rows, "participant_ms", "participant", &alice_id);
    let p_bob = sum(&rows, "participant_ms", "participant", &bob_id);
    assert_within("alice's participant_ms", p_alice, t2 - t1, t3 - t0, 0);
    assert_within("bob's participant_ms", p_bob, t4 - t1b, t5 - t1, 0);
    // Her tracks were published during her join and ended when she left.
    let audio = sum(&rows, "audio_track_ms", "participant", &alice_id);
    let video = sum(&rows, "video_track_ms", "participant", &alice_id);
    assert_within("alice's audio_track_ms", audio, t2 - t_media, p_alice, 0);
    assert_within("alice's video_track_ms", video, t2 - t_media, p_alice, 0);
    assert_eq!(sum(&rows, "audio_track_ms", "participant", &bob_id), 0);
    let meeting = sum(&rows, "meeting_ms", "meeting", "bill");
    assert_within(
        "the meeting's meeting_ms",
        meeting,
        t4 - t1,
        t5 - t0 + 1000,
        0,
    );
    // Bytes: what Alice sent came in; what Bob got went out (at least the 150 audio packets).
    assert!(sum(&rows, "bytes_in", "participant", &alice_id) > 150 * 50);
    assert!(sum(&rows, "bytes_out", "participant", &bob_id) > 150 * 50);
    for r in &rows {
        assert_eq!(r["apiKey"], API_KEY, "every row carries the tenant: {r}");
        assert_eq!(r["node"], "test-node");
    }
    let keys: HashSet<&str> = rows
        .iter()
        .map(|r| r["idempotencyKey"].as_str().unwrap())
        .collect();
    assert_eq!(keys.len(), rows.len(), "idempotency keys are unique");

    // The aggregate API agrees with the raw rows.
    let report = api
        .get(&format!("/v1/usage?window=hour&group_by=participant&meter=participant_ms,audio_track_ms&from={}", since_yesterday()))
        .await;
    let total = |group: &str, meter: &str| -> i64 {
        report["totals"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["group"] == group && t["meter"] == meter)
            .map(|t| t["quantity"].as_i64().unwrap())
            .sum()
    };
    assert_eq!(total(&alice_id, "participant_ms"), p_alice);
    assert_eq!(total(&bob_id, "participant_ms"), p_bob);
    assert_eq!(total(&alice_id, "audio_track_ms"), audio);
    assert_eq!(report["window"], "hour");
    let by_identity = api.get("/v1/usage?window=day&group_by=identity").await;
    assert!(
        by_identity["totals"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["group"].as_str().unwrap().starts_with("alice-")),
        "{by_identity}"
    );
    // CSV carries the same rows.
    let (ct, csv) = api.text("/v1/usage/events?limit=10000", "text/csv").await;
    assert!(ct.starts_with("text/csv"), "{ct}");
    assert_eq!(
        csv.lines().count(),
        rows.len() + 1,
        "a header and one line per row"
    );
    assert!(csv.starts_with("seq,idempotency_key,"));
    // Another API key sees none of it.
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_truth_on_sqlite() {
    usage_truth(sqlite_url("truth")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_truth_on_postgres() {
    if let Some(url) = pg_url("truth").await {
        usage_truth(url).await;
    }
}

// ----- kill -9 ----------------------------------------------------------------------------

struct Node {
    child: tokio::process::Child,
    base: String,
    ws: String,
}

async fn spawn_node(port: u16, data: &std::path::Path, url: &str) -> Node {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let bin = hearth_tests::workspace_bin("hearth");
    let mut cmd = tokio::process::Command::new(bin);
    let child = hearth_tests::node_args(&mut cmd, port, (API_KEY, API_SECRET), data)
        .args(["--empty-timeout", "1s", "--node-id", "crash-node"])
        .args(["--database-url", url])
        .spawn()
        .expect("hearth starts");
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + T;
    loop {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await
            && r.status() == 200
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the node never got ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Node {
        child,
        ws: format!("ws://127.0.0.1:{port}/v1/signal"),
        base,
    }
}

fn user_token(meeting: &str, identity: &str) -> String {
    let claims = token::claims_for(
        API_KEY,
        meeting,
        identity,
        identity,
        Grants::default(),
        SystemTime::now(),
        Duration::from_secs(3600),
    );
    token::mint(&claims, API_SECRET)
}

async fn kill_nine(url: String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let data = temp_dir("crash");
    let mut node = spawn_node(port, &data, &url).await;
    // Phase 1: two participants, then the node dies with them in the meeting.
    let t0 = now_ms();
    let a = TestClient::join_with_token(
        &node.ws,
        &user_token("crash", "a"),
        "crash",
        ClientOptions::av(),
    )
    .await
    .expect("a joins");
    let b = TestClient::join_with_token(
        &node.ws,
        &user_token("crash", "b"),
        "crash",
        ClientOptions::receive_only(),
    )
    .await
    .expect("b joins");
    let t1 = now_ms();
    let (a_id, b_id) = (a.participant_id().to_owned(), b.participant_id().to_owned());
    b.wait_for_packets(&a_id, Kind::Audio, 150, T).await;
    let t_kill_low = now_ms();
    node.child.start_kill().expect("SIGKILL");
    let _ = node.child.wait().await;
    let t_kill = now_ms();
    drop((a, b));

    // Phase 2: the node starts again on the same ledger; a new session, ended cleanly.
    let node = spawn_node(port, &data, &url).await;
    let api = Api::new(node.base.clone(), API_KEY, API_SECRET);
    let tc0 = now_ms();
    let c = TestClient::join_with_token(
        &node.ws,
        &user_token("crash", "c"),
        "crash",
        ClientOptions::av(),
    )
    .await
    .expect("c joins");
    let c_id = c.participant_id().to_owned();
    let tc1 = now_ms();
    let d = TestClient::join_with_token(
        &node.ws,
        &user_token("crash", "d"),
        "crash",
        ClientOptions::receive_only(),
    )
    .await
    .expect("d joins");
    d.wait_for_packets(&c_id, Kind::Audio, 100, T).await;
    let t3 = now_ms();
    c.leave().await;
    let t4 = now_ms();
    d.leave().await;
    // Written within a second or two of the meeting's end.
    let deadline = tokio::time::Instant::now() + T;
    let rows = loop {
        let rows = api.all_events().await;
        if rows.iter().any(|r| {
            r["meter"] == "meeting_ms"
                && r["endedAt"].as_str() > Some(&*hearth_actors::billing::rfc3339_ms(t3))
        }) {
            break rows;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "phase 2 never reached the ledger: {rows:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The killed sessions were closed at their last checkpoint: at most about a second (the
    // checkpoint interval) before the kill, never after it.
    let pa = sum(&rows, "participant_ms", "participant", &a_id);
    let pb = sum(&rows, "participant_ms", "participant", &b_id);
    assert_within("a (killed)", pa, t_kill_low - t1 - 1000, t_kill - t0, 100);
    assert_within("b (killed)", pb, t_kill_low - t1 - 1000, t_kill - t0, 100);
    let pc = sum(&rows, "participant_ms", "participant", &c_id);
    assert_within("c", pc, t3 - tc1, t4 - tc0, 0);
    let keys: HashMap<&str, usize> = rows.iter().fold(HashMap::new(), |mut m, r| {
        *m.entry(r["idempotencyKey"].as_str().unwrap()).or_default() += 1;
        m
    });
    assert!(
        keys.values().all(|n| *n == 1),
        "a key counted twice: {keys:?}"
    );
    // A second restart closes nothing again.
    let before = rows.len();
    let mut node = node;
    node.child.start_kill().expect("SIGKILL");
    let _ = node.child.wait().await;
    let node = spawn_node(port, &data, &url).await;
    let api = Api::new(node.base.clone(), API_KEY, API_SECRET);
    let again = api.all_events().await;
    assert!(
        again.len() >= before
            && again
                .iter()
                .filter(|r| r["participant"] == a_id.as_str() || r["participant"] == b_id.as_str())
                .count()
                == rows
                    .iter()
                    .filter(
                        |r| r["participant"] == a_id.as_str() || r["participant"] == b_id.as_str()
                    )
                    .count(),
        "the killed sessions are counted once"
    );
    drop(node);
    let _ = std::fs::remove_dir_all(&data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_nine_loses_at_most_a_second_and_counts_nothing_twice_on_sqlite() {
    let dir = temp_dir("crash-db");
    kill_nine(format!("sqlite://{}/ledger.db", dir.display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_nine_loses_at_most_a_second_and_counts_nothing_twice_on_postgres() {
    if let Some(url) = pg_url("crash").await {
        kill_nine(url).await;
    }
}

// ----- Webhooks ---------------------------------------------------------------------------

#[derive(Clone, Default)]
struct Receiver {
    /// (webhook-id, type, status answered)
    seen: Arc<Mutex<Vec<(String, String, u16)>>>,
    fail_first: usize,
    secret: Arc<Mutex<Option<Vec<u8>>>>,
    bad_signatures: Arc<Mutex<Vec<String>>>,
}

async fn start_receiver(fail_first: usize) -> (Receiver, std::net::SocketAddr) {
    use axum::http::HeaderMap;
    let recv = Receiver {
        fail_first,
        ..Receiver::default()
    };
    let state = recv.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let state = state.clone();
            async move {
                let id = headers["webhook-id"].to_str().unwrap().to_owned();
                let ts: i64 = headers["webhook-timestamp"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                let sig = headers["webhook-signature"].to_str().unwrap().to_owned();
                if let Some(key) = state.secret.lock().unwrap().as_ref()
                    && sign(key, &id, ts, &body) != sig
                {
                    state.bad_signatures.lock().unwrap().push(id.clone());
                }
                let ty = serde_json::from_str::<Value>(&body).unwrap()["type"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                let mut seen = state.seen.lock().unwrap();
                let status = if seen.len() < state.fail_first {
                    503
                } else {
                    204
                };
                seen.push((id, ty, status));
                axum::http::StatusCode::from_u16(status).unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (recv, addr)
}

fn fast_webhooks() -> WebhookConfig {
    WebhookConfig {
        retry_base: Duration::from_millis(100),
        retry_max: Duration::from_millis(500),
        poll: Duration::from_millis(50),
        pause_after: 4,
        max_attempts: 20,
        ..WebhookConfig::default()
    }
}

async fn webhooks_are_retried_until_delivered(url: String) {
    let server = TestServer::start_with(|c| {
        c.ledger = Some(ledger_config(url, fast_webhooks()));
        c.empty_timeout = Duration::from_secs(1);
    })
    .await;
    let api = Api::new(
        format!("http://{}", server.server.http_addr),
        API_KEY,
        API_SECRET,
    );
    let (recv, addr) = start_receiver(3).await;
    let (status, ep) = api
        .call(
            reqwest::Method::POST,
            "/v1/webhooks",
            Some(json!({ "url": format!("http://{addr}/hook"), "description": "test" })),
        )
        .await;
    assert_eq!(status, 201, "{ep}");
    let secret = ep["secret"].as_str().expect("the secret, once").to_owned();
    assert!(secret.starts_with("whsec_"));
    *recv.secret.lock().unwrap() = secret_key(&secret);
    let ep_id = ep["id"].as_str().unwrap().to_owned();
    assert!(
        api.get(&format!("/v1/webhooks/{ep_id}")).await["secret"].is_null(),
        "the secret is shown only at creation"
    );

    let a = TestClient::join(&server, "hooks", "a", ClientOptions::av())
        .await
        .expect("a joins");
    let a_id = a.participant_id().to_owned();
    let b = TestClient::join(&server, "hooks", "b", ClientOptions::receive_only())
        .await
        .expect("b joins");
    b.wait_for_packets(&a_id, Kind::Audio, 20, T).await;
    a.leave().await;
    b.leave().await;
    server.wait_meeting_count(T, |n| n == 0).await;
    let expected = [
        "meeting.started",
        "participant.joined",
        "track.published",
        "track.unpublished",
        "participant.left",
        "meeting.ended",
    ];
    // Every event reaches the receiver with a 2xx answer, after the first three failed.
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let seen = recv.seen.lock().unwrap().clone();
        let delivered: HashSet<&str> = seen
            .iter()
            .filter(|(_, _, s)| *s == 204)
            .map(|(_, t, _)| t.as_str())
            .collect();
        if expected.iter().all(|t| delivered.contains(t)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not every event was delivered: {seen:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = recv.seen.lock().unwrap().clone();
    assert!(
        recv.bad_signatures.lock().unwrap().is_empty(),
        "every signature verifies"
    );
    // Retried deliveries kept their id; every id was delivered exactly once with 2xx.
    let failed: Vec<&String> = seen.iter().filter(|s| s.2 == 503).map(|s| &s.0).collect();
    assert_eq!(failed.len(), 3);
    for id in failed {
        assert!(
            seen.iter().any(|s| &s.0 == id && s.2 == 204),
            "{id} retried to success"
        );
    }
    let mut ok_ids: Vec<&String> = seen.iter().filter(|s| s.2 == 204).map(|s| &s.0).collect();
    let n = ok_ids.len();
    ok_ids.sort();
    ok_ids.dedup();
    assert_eq!(ok_ids.len(), n, "no event delivered twice after success");
    // The delivery log says the same.
    let log = api.get(&format!("/v1/webhooks/{ep_id}/deliveries")).await;
    let deliveries = log["deliveries"].as_array().unwrap();
    assert!(
        deliveries.iter().all(|d| d["status"] == "delivered"),
        "{log}"
    );
    assert!(
        deliveries.iter().any(|d| d["attempts"].as_i64() > Some(1)),
        "{log}"
    );
    assert!(
        deliveries
            .iter()
            .any(|d| d["eventType"] == "participant.left")
    );
    // Redeliver one: it arrives again with the same id.
    let one = &deliveries[0];
    let before = recv.seen.lock().unwrap().len();
    let (status, _) = api
        .call(
            reqwest::Method::POST,
            &format!("/v1/webhooks/{ep_id}/deliveries/{}/redeliver", one["id"]),
            None,
        )
        .await;
    assert_eq!(status, 202);
    let deadline = tokio::time::Instant::now() + T;
    while recv.seen.lock().unwrap().len() == before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "redelivery never came"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        recv.seen.lock().unwrap().last().unwrap().0,
        one["eventId"].as_str().unwrap()
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_retried_until_delivered_on_sqlite() {
    webhooks_are_retried_until_delivered(sqlite_url("hooks")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_retried_until_delivered_on_postgres() {
    if let Some(url) = pg_url("hooks").await {
        webhooks_are_retried_until_delivered(url).await;
    }
}

/// An endpoint that never answers is paused after `pause_after` attempts, says why, and
/// resumes (its pending deliveries go out) when enabled again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_endpoint_is_paused_and_resumes() {
    let server = TestServer::start_with(|c| {
        c.ledger = Some(ledger_config(sqlite_url("pause"), fast_webhooks()));
        c.empty_timeout = Duration::from_secs(1);
    })
    .await;
    let api = Api::new(
        format!("http://{}", server.server.http_addr),
        API_KEY,
        API_SECRET,
    );
    // A port nobody listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (status, ep) = api
        .call(
            reqwest::Method::POST,
            "/v1/webhooks",
            Some(json!({ "url": format!("http://{dead}/hook"), "events": ["meeting.started"] })),
        )
        .await;
    assert_eq!(status, 201, "{ep}");
    let ep_id = ep["id"].as_str().unwrap().to_owned();
    let (status, _) = api
        .call(
            reqwest::Method::POST,
            "/v1/meetings",
            Some(json!({ "id": "p1" })),
        )
        .await;
    assert_eq!(status, 201);
    let deadline = tokio::time::Instant::now() + T;
    let paused = loop {
        let e = api.get(&format!("/v1/webhooks/{ep_id}")).await;
        if e["paused"] == true {
            break e;
        }
        assert!(tokio::time::Instant::now() < deadline, "never paused: {e}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        paused["pausedReason"]
            .as_str()
            .unwrap()
            .contains("cannot connect"),
        "{paused}"
    );
    let log = api.get(&format!("/v1/webhooks/{ep_id}/deliveries")).await;
    let d = &log["deliveries"][0];
    assert_eq!(d["status"], "pending");
    assert_eq!(d["eventType"], "meeting.started");
    assert!(d["lastError"].as_str().unwrap().contains("cannot connect"));
    // Only meeting.started was asked for.
    assert_eq!(log["deliveries"].as_array().unwrap().len(), 1);
    // Now something listens there; enabling the endpoint resumes it.
    let (recv, _) = {
        let recv = Receiver::default();
        let state = recv.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: axum::http::HeaderMap| {
                let state = state.clone();
                async move {
                    state.seen.lock().unwrap().push((
                        headers["webhook-id"].to_str().unwrap().to_owned(),
                        String::new(),
                        200,
                    ));
                    axum::http::StatusCode::OK
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind(dead).await.unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (recv, ())
    };
    let (status, e) = api
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/webhooks/{ep_id}"),
            Some(json!({ "enabled": true })),
        )
        .await;
    assert_eq!(status, 200, "{e}");
    assert_eq!(e["paused"], false);
    let deadline = tokio::time::Instant::now() + T;
    while recv.seen.lock().unwrap().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the resumed endpoint got nothing"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Bad input on the webhook API.
    for (body, what) in [
        (json!({ "url": "ftp://example.com/x" }), "http"),
        (
            json!({ "url": format!("http://127.0.0.1:{}/x", server.server.http_addr.port()) }),
            "this node",
        ),
        (
            json!({ "url": "http://user:pw@127.0.0.1:9/x" }),
            "credentials",
        ),
        (
            json!({ "url": "http://127.0.0.1:9/x", "events": ["nope"] }),
            "unknown type",
        ),
        (
            json!({ "url": "http://127.0.0.1:9/x", "extra": 1 }),
            "unknown field",
        ),
    ] {
        let (status, p) = api
            .call(reqwest::Method::POST, "/v1/webhooks", Some(body))
            .await;
        assert_eq!(status, 400, "{p}");
        assert!(p["detail"].as_str().unwrap().contains(what), "{what}: {p}");
    }
    server.shutdown().await;
}

// ----- The database at start and while running ---------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_at_start_is_a_clear_error_with_its_own_exit_code() {
    let bin = hearth_tests::workspace_bin("hearth");
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let data = temp_dir("nodb");
    for url in [
        format!("postgres://hearth:secretpw@{dead}/nope"),
        "mysql://localhost/x".to_owned(),
        format!("sqlite://{}/no/such/dir/x.db", data.display()),
    ] {
        let out = tokio::process::Command::new(&bin)
            .args([
                "--http",
                "127.0.0.1:0",
                "--media-port",
                "0",
                "--turn-port",
                "0",
            ])
            .args(["--api-key", API_KEY, "--api-secret", API_SECRET])
            .arg("--data-dir")
            .arg(&data)
            .args(["--database-url", &url])
            .output()
            .await
            .expect("hearth runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let code = out.status.code();
        if url.starts_with("mysql") {
            assert_eq!(code, Some(2), "a bad URL is a config error: {stderr}");
            assert!(stderr.contains("sqlite:// or postgres://"), "{stderr}");
        } else {
            assert_eq!(code, Some(3), "{url}: {stderr}");
            assert!(
                stderr.contains("--no-ledger"),
                "says how to run without: {stderr}"
            );
            assert!(
                !stderr.contains("secretpw"),
                "no password in the message: {stderr}"
            );
        }
    }
}

/// PostgreSQL behind a proxy the test cuts: while the database is gone the meeting goes on
/// (media flows, joins work), usage is buffered (write errors counted); when it is back the
/// ledger catches up with everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_catches_up_after_the_database_comes_back() {
    let Some(url) = pg_url("outage").await else {
        return;
    };
    // A TCP proxy to PostgreSQL that can be cut (existing connections closed, new ones
    // refused while down).
    let upstream: std::net::SocketAddr = {
        let rest = url.split('@').nth(1).unwrap();
        let hostport = rest.split('/').next().unwrap();
        hostport.parse().expect("host:port in HEARTH_TEST_PG_URL")
    };
    let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let epoch = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = listener.local_addr().unwrap();
    {
        let (up, epoch) = (Arc::clone(&up), Arc::clone(&epoch));
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if !up.load(std::sync::atomic::Ordering::SeqCst) {
                    continue; // dropped: refused
                }
                let (up, epoch) = (Arc::clone(&up), Arc::clone(&epoch));
                let mine = epoch.load(std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let copy = tokio::io::copy_bidirectional(&mut client, &mut server);
                    let cut = async {
                        while up.load(std::sync::atomic::Ordering::SeqCst)
                            && epoch.load(std::sync::atomic::Ordering::SeqCst) == mine
                        {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    };
                    tokio::select! { _ = copy => {}, _ = cut => {} }
                });
            }
        });
    }
    let proxied = url.replacen(&upstream.to_string(), &proxy.to_string(), 1);
    let server = TestServer::start_with(|c| {
        c.ledger = Some(ledger_config(proxied, WebhookConfig::default()));
        c.empty_timeout = Duration::from_secs(1);
    })
    .await;
    let billing = server.node().billing().unwrap().clone();
    // The database goes away.
    up.store(false, std::sync::atomic::Ordering::SeqCst);
    epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let a = TestClient::join(&server, "outage", "a", ClientOptions::av())
        .await
        .expect("joins work without the database");
    let b = TestClient::join(&server, "outage", "b", ClientOptions::receive_only())
        .await
        .expect("joins work without the database");
    let a_id = a.participant_id().to_owned();
    b.wait_for_packets(&a_id, Kind::Audio, 100, T).await;
    let deadline = tokio::time::Instant::now() + T;
    while billing
        .stats
        .write_errors
        .load(std::sync::atomic::Ordering::Relaxed)
        == 0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no write failed while the database was gone"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.leave().await;
    b.leave().await;
    server.wait_meeting_count(T, |n| n == 0).await;
    assert!(
        billing.open_count() > 0,
        "the ended intervals are kept in memory"
    );
    // Back: the next tick writes everything.
    up.store(true, std::sync::atomic::Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + T;
    while billing.open_count() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the ledger never caught up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let api = Api::new(
        format!("http://{}", server.server.http_addr),
        API_KEY,
        API_SECRET,
    );
    let rows = api.all_events().await;
    assert!(
        sum(&rows, "participant_ms", "participant", &a_id) > 1500,
        "{rows:#?}"
    );
    assert!(sum(&rows, "meeting_ms", "meeting", "outage") > 1500);
    server.shutdown().await;
}

// ----- Screen shares ------------------------------------------------------------------------

/// A video track declared a screen share (`SessionDescription.sources`) is metered as
/// `screen_track_ms`, not as camera video; undeclared or bad declarations are refused or
/// default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_screen_share_is_metered_apart_from_cameras() {
    let server = TestServer::start_with(|c| {
        c.ledger = Some(ledger_config(
            sqlite_url("screen"),
            WebhookConfig::default(),
        ));
        c.empty_timeout = Duration::from_secs(1);
    })
    .await;
    let api = Api::new(
        format!("http://{}", server.server.http_addr),
        API_KEY,
        API_SECRET,
    );
    let sharer = TestClient::join(
        &server,
        "screens",
        "sharer",
        ClientOptions {
            publish_audio: true,
            publish_video: true,
            screen: true,
            accept_rtx: false,
        },
    )
    .await
    .expect("joins");
    let viewer = TestClient::join(&server, "screens", "viewer", ClientOptions::receive_only())
        .await
        .expect("joins");
    let sharer_id = sharer.participant_id().to_owned();
    viewer.wait_for_media_from(&[&sharer_id], 50, 20, T).await;
    sharer.leave().await;
    viewer.leave().await;
    server.wait_meeting_count(T, |n| n == 0).await;
    server
        .node()
        .billing()
        .unwrap()
        .tick_once()
        .await
        .expect("written");
    let rows = api.all_events().await;
    assert!(
        sum(&rows, "screen_track_ms", "participant", &sharer_id) > 500,
        "{rows:#?}"
    );
    assert_eq!(sum(&rows, "video_track_ms", "participant", &sharer_id), 0);
    assert!(sum(&rows, "audio_track_ms", "participant", &sharer_id) > 500);

    // Bad declarations are refused with a clear error.
    for bad in [
        r#"{"offer": {"type": "offer", "sdp": "v=0\r\n", "sources": {"0": "BOGUS"}}}"#,
        r#"{"offer": {"type": "offer", "sdp": "v=0\r\n", "sources": {"0": 99}}}"#,
    ] {
        let mut raw = hearth_tests::RawSignal::connect(&server).await;
        raw.send_join(
            &server.token("screens", "raw", Grants::default()),
            "screens",
        )
        .await;
        let _ = raw.next_message(T).await; // the join answer
        raw.send_text(bad).await;
        let err = raw.expect_error(T).await;
        assert_eq!(err.code, "MALFORMED_MESSAGE", "{bad}: {err:?}");
    }
    server.shutdown().await;
}

// ----- Bad input ----------------------------------------------------------------------------

/// The usage API's refusals: each a problem with a clear detail; a meeting-scoped token sees
/// only its meeting; a node without a ledger says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_queries_refuse_bad_input() {
    let server = TestServer::start_with(|c| {
        c.ledger = Some(ledger_config(sqlite_url("bad"), WebhookConfig::default()));
    })
    .await;
    let api = Api::new(
        format!("http://{}", server.server.http_addr),
        API_KEY,
        API_SECRET,
    );
    for (path, what) in [
        ("/v1/usage?from=2026-12-06&to=2026-12-05", "before"),
        ("/v1/usage?from=2026-12-06&to=2026-12-06", "before"),
        ("/v1/usage?from=yesterday", "RFC 3339"),
        ("/v1/usage?to=2026-02-30", "RFC 3339"),
        ("/v1/usage?from=2020-01-01&to=2026-01-01", "400 days"),
        ("/v1/usage?meter=minutes", "unknown meter"),
        ("/v1/usage?meter=participant_ms,", "unknown meter"),
        ("/v1/usage?window=week", "window"),
        ("/v1/usage?group_by=node", "group_by"),
        ("/v1/usage?colour=blue", "colour"),
        ("/v1/usage/events?after=-1", "after"),
        ("/v1/usage/events?limit=0", "limit"),
        ("/v1/usage/events?limit=10001", "limit"),
        ("/v1/usage/events?after=x", "after"),
        ("/v1/webhooks/..%2Fx", "id"),
    ] {
        let (status, p) = api.call(reqwest::Method::GET, path, None).await;
        assert_eq!(status, 400, "{path}: {p}");
        assert!(
            p["detail"].as_str().unwrap_or("").contains(what),
            "{path}: {what} not in {p}"
        );
        assert_eq!(p["code"], "INVALID_ARGUMENT");
    }
    let resp = reqwest::Client::new()
        .get(format!("{}/v1/usage/events", api.base))
        .bearer_auth(&api.token)
        .header("accept", "image/png")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 406);
    // Forged and missing tokens.
    let forged = admin_token(API_KEY, "not-the-secret-0123456789");
    for token in [forged.as_str(), ""] {
        let resp = reqwest::Client::new()
            .get(format!("{}/v1/usage", api.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
    }
    // A meeting-scoped admin token: that meeting's usage, and no webhooks.
    let scoped = {
        let claims = token::claims_for(
            API_KEY,
            "only-this",
            "ops",
            "ops",
            Grants {
                admin: true,
                ..Grants::default()
            },
            SystemTime::now(),
            Duration::from_secs(600),
        );
        token::mint(&claims, API_SECRET)
    };
    let scoped_api = Api {
        base: api.base.clone(),
        token: scoped,
        http: reqwest::Client::new(),
    };
    let (status, _) = scoped_api
        .call(reqwest::Method::GET, "/v1/usage", None)
        .await;
    assert_eq!(status, 200);
    let (status, p) = scoped_api
        .call(reqwest::Method::GET, "/v1/webhooks", None)
        .await;
    assert_eq!(status, 403, "{p}");
    server.shutdown().await;

    // No ledger: 503 with the reason.
    let server = TestServer::start().await;
    let api = Api::new(
        format!("http://{}", server.server.http_addr),
        API_KEY,
        API_SECRET,
    );
    let (status, p) = api.call(reqwest::Method::GET, "/v1/usage", None).await;
    assert_eq!(status, 503, "{p}");
    assert!(p["detail"].as_str().unwrap().contains("--no-ledger"), "{p}");
    server.shutdown().await;
}

// ----- Supervision ------------------------------------------------------------------------

/// The billing actor and the webhook sender fail as a bug would: the node supervisor restarts
/// them (the tree shows the restart), and the new actors resume: usage opened before the
/// failure is written, webhooks still go out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_billing_and_webhook_actors_are_restarted_and_resume() {
    let server = TestServer::start_with(|c| {
        c.ledger = Some(ledger_config(sqlite_url("restart"), fast_webhooks()));
        c.empty_timeout = Duration::from_secs(1);
    })
    .await;
    let api = Api::new(
        format!("http://{}", server.server.http_addr),
        API_KEY,
        API_SECRET,
    );
    let (recv, addr) = start_receiver(0).await;
    let (status, ep) = api
        .call(
            reqwest::Method::POST,
            "/v1/webhooks",
            Some(json!({ "url": format!("http://{addr}/hook"), "events": ["meeting.ended"] })),
        )
        .await;
    assert_eq!(status, 201, "{ep}");
    let node = server.node();
    let restarts = |kind: hearth_actors::registry::ActorKind| {
        node.actor_tree()
            .iter()
            .filter(|a| a.kind == kind)
            .map(|a| a.restarts)
            .max()
    };
    // A meeting opens its interval, then both actors fail.
    let (status, _) = api
        .call(
            reqwest::Method::POST,
            "/v1/meetings",
            Some(json!({ "id": "r1" })),
        )
        .await;
    assert_eq!(status, 201);
    node.billing().unwrap().inject_fault();
    node.webhooks().unwrap().inject_fault();
    let deadline = tokio::time::Instant::now() + T;
    while restarts(hearth_actors::registry::ActorKind::Billing) != Some(1)
        || restarts(hearth_actors::registry::ActorKind::Webhooks) != Some(1)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not restarted: {:?}",
            node.actor_tree()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The meeting ends (empty): its usage and its webhook come through the new actors.
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let rows = api.all_events().await;
        let delivered = recv
            .seen
            .lock()
            .unwrap()
            .iter()
            .any(|s| s.1 == "meeting.ended");
        if sum(&rows, "meeting_ms", "meeting", "r1") > 0 && delivered {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the restarted actors did not resume: {rows:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.shutdown().await;
}

/// Yesterday's date (UTC, `YYYY-MM-DD`): the start of the usage queries above. Without an
/// explicit `from`, an hourly report starts at today's midnight, and a test that straddled
/// midnight lost the usage before it (the final run of 07 Dec failed at 00:00:01 UTC).
fn since_yesterday() -> String {
    let (y, m, d) = hearth_actors::billing::civil_from_days(now_ms().div_euclid(86_400_000) - 1);
    format!("{y:04}-{m:02}-{d:02}")
}
