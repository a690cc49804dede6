//! Hostile input at the node's front door: floods of connections that never finish their
//! requests or never join, refused token forms, removed participants.
//!
//! The connection floods run against a real `hearth` process whose open-file limit is set to
//! 1,024 (soft and hard) before it starts, as from a default shell, while a meeting of three
//! participants keeps flowing beside them and `/readyz` is probed throughout. The benchmark
//! form (a release node, figures printed):
//! `HEARTH_BIN=target/release/hearth cargo test -p hearth-tests --test hostile connection_floods -- --nocapture`

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use hearth_actors::Grants;
use hearth_api::token;
use hearth_tests::{ClientOptions, Kind, TestClient, TestServer, parse_metric};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio::process::Command;

const T: Duration = Duration::from_secs(20);
const API_KEY: &str = "APIhostile";
const API_SECRET: &str = "hostile-secret-0123456789";

fn mint(meeting: &str, identity: &str, issued: SystemTime, ttl: Duration) -> String {
    let claims = token::claims_for(
        API_KEY,
        meeting,
        identity,
        identity,
        Grants::default(),
        issued,
        ttl,
    );
    token::mint(&claims, API_SECRET)
}

// ----- Removed participants --------------------------------------------------------------

/// A kicked participant is told `REMOVED` (terminal, no `reconnect`), its token cannot bring
/// it back, and a token minted after the kick can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_participant_cannot_rejoin_with_its_token() {
    let server = TestServer::start().await;
    let meeting = "kick-me";
    let token = server.token(meeting, "mallory", Grants::default());
    let mallory = TestClient::join_with_token(
        &server.ws_url(),
        &token,
        meeting,
        ClientOptions::receive_only(),
    )
    .await
    .expect("mallory joins");
    let _bob = TestClient::join(&server, meeting, "bob", ClientOptions::receive_only())
        .await
        .expect("bob joins");
    let id = hearth_actors::ParticipantId::from_string(mallory.participant_id());
    let meeting_id = hearth_actors::MeetingId::parse(meeting).expect("a meeting name");
    server
        .node()
        .remove_participant(&meeting_id, &id)
        .await
        .expect("the kick");
    let stats = mallory
        .wait_until("a fatal REMOVED error", T, |s| {
            s.errors.iter().any(|e| e.code == "REMOVED" && e.fatal)
        })
        .await;
    assert_eq!(
        stats.reconnect, None,
        "a removed participant must not be told to reconnect"
    );
    let again = TestClient::join_with_token(
        &server.ws_url(),
        &token,
        meeting,
        ClientOptions::receive_only(),
    )
    .await;
    let err = again.err().expect("the old token is refused");
    assert_eq!(err.code, "REMOVED", "{err}");
    assert!(err.fatal);
    // The app readmits with a fresh token (issued after the kick: tokens count in seconds).
    let later = SystemTime::now() + Duration::from_secs(2);
    let (key, secret) = server
        .server
        .state
        .keys
        .first()
        .map(|(k, s)| (k.to_owned(), s.to_owned()))
        .expect("a key");
    let claims = token::claims_for(
        &key,
        meeting,
        "mallory",
        "mallory",
        Grants::default(),
        later,
        Duration::from_secs(3600),
    );
    let mut claims = claims;
    claims.nbf = claims.iat.saturating_sub(5);
    let fresh = token::mint(&claims, &secret);
    TestClient::join_with_token(
        &server.ws_url(),
        &fresh,
        meeting,
        ClientOptions::receive_only(),
    )
    .await
    .expect("a token minted after the kick joins");
    server.shutdown().await;
}

// ----- Token forms -----------------------------------------------------------------------

/// Each refused token form gets its stable error code over signaling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_token_forms_have_stable_codes() {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use hmac::{Hmac, Mac};
    let server = TestServer::start().await;
    let (key, secret) = server
        .server
        .state
        .keys
        .first()
        .map(|(k, s)| (k.to_owned(), s.to_owned()))
        .expect("a key");
    let now = SystemTime::now();
    let base = token::claims_for(
        &key,
        "tokens",
        "eve",
        "eve",
        Grants::default(),
        now,
        Duration::from_secs(600),
    );
    let signed = |header: &str, claims: &token::Claims| {
        let h = B64.encode(header.as_bytes());
        let b = B64.encode(serde_json::to_vec(claims).expect("claims encode"));
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("hmac");
        mac.update(format!("{h}.{b}").as_bytes());
        format!("{h}.{b}.{}", B64.encode(mac.finalize().into_bytes()))
    };
    let unsigned = |header: &str, claims: &token::Claims| {
        let h = B64.encode(header.as_bytes());
        let b = B64.encode(serde_json::to_vec(claims).expect("claims encode"));
        format!("{h}.{b}.")
    };
    let mut future_nbf = base.clone();
    future_nbf.nbf += 120;
    let mut just_expired = base.clone();
    just_expired.exp = just_expired.iat - 1;
    let cases = [
        (
            "alg none",
            unsigned(r#"{"alg":"none"}"#, &base),
            "INVALID_TOKEN",
        ),
        (
            "alg none, signed",
            signed(r#"{"alg":"none","typ":"JWT"}"#, &base),
            "INVALID_TOKEN",
        ),
        (
            "alg HS384",
            signed(r#"{"alg":"HS384"}"#, &base),
            "INVALID_TOKEN",
        ),
        (
            "alg RS256",
            signed(r#"{"alg":"RS256"}"#, &base),
            "INVALID_TOKEN",
        ),
        (
            "kid of an unknown key",
            signed(r#"{"alg":"HS256","kid":"APIwho"}"#, &base),
            "INVALID_TOKEN",
        ),
        (
            "nbf in the future",
            signed(r#"{"alg":"HS256"}"#, &future_nbf),
            "TOKEN_EXPIRED",
        ),
        (
            "expired a second ago (within the skew)",
            signed(r#"{"alg":"HS256"}"#, &just_expired),
            "TOKEN_EXPIRED",
        ),
    ];
    for (what, bad, code) in cases {
        let err = TestClient::join_with_token(
            &server.ws_url(),
            &bad,
            "tokens",
            ClientOptions::receive_only(),
        )
        .await
        .err()
        .unwrap_or_else(|| panic!("{what}: the token was accepted"));
        assert_eq!(err.code, code, "{what}: {err}");
        assert!(err.fatal, "{what}");
    }
    // The well-formed one joins: the refusals above are about their one defect.
    TestClient::join_with_token(
        &server.ws_url(),
        &signed(r#"{"alg":"HS256","typ":"JWT"}"#, &base),
        "tokens",
        ClientOptions::receive_only(),
    )
    .await
    .expect("the valid token joins");
    server.shutdown().await;
}

// ----- Connection floods -----------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Hostile {
    /// Connects and sends nothing.
    Silent,
    /// Sends half a request's headers, then nothing.
    PartialHeaders,
    /// Upgrades to WebSocket on /v1/signal, then never joins.
    SilentWebSocket,
}

impl Hostile {
    fn opening(self) -> &'static [u8] {
        match self {
            Hostile::Silent => b"",
            Hostile::PartialHeaders => b"GET /readyz HTTP/1.1\r\nHost: x\r\nX-Slow: ",
            Hostile::SilentWebSocket => {
                b"GET /v1/signal HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            }
        }
    }
}

/// What happened to a flood's connections.
#[derive(Default)]
struct Outcome {
    /// Refused at connect or answered 503 at once.
    refused: AtomicU64,
    /// Held, then closed by the server.
    closed: AtomicU64,
    /// Longest time a held connection stayed open, in ms.
    longest_ms: AtomicU64,
    /// Still open at the test's deadline.
    stuck: AtomicU64,
}

/// Opens `n` connections of `kind` from `sources`, at most `parallel` at a time, each kept
/// until the server closes it or `give_up` passes.
async fn flood(
    addr: SocketAddr,
    sources: &[IpAddr],
    kind: Hostile,
    n: usize,
    give_up: Duration,
) -> Arc<Outcome> {
    let outcome = Arc::new(Outcome::default());
    let permits = Arc::new(tokio::sync::Semaphore::new(1000));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let source = sources[i % sources.len()];
        let outcome = Arc::clone(&outcome);
        let permit = Arc::clone(&permits)
            .acquire_owned()
            .await
            .expect("the semaphore stays open");
        tasks.spawn(async move {
            let _permit = permit;
            let socket = TcpSocket::new_v4().expect("a socket");
            socket
                .bind(SocketAddr::new(source, 0))
                .expect("bind a loopback source");
            let started = Instant::now();
            let Ok(Ok(mut stream)) =
                tokio::time::timeout(Duration::from_secs(5), socket.connect(addr)).await
            else {
                outcome.refused.fetch_add(1, Ordering::Relaxed);
                return;
            };
            if stream.write_all(kind.opening()).await.is_err() {
                outcome.refused.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let mut buf = [0u8; 4096];
            let mut first = Vec::new();
            loop {
                match tokio::time::timeout_at(
                    tokio::time::Instant::from_std(started + give_up),
                    stream.read(&mut buf),
                )
                .await
                {
                    Err(_) => {
                        outcome.stuck.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    Ok(Ok(n)) => {
                        if first.len() < 64 {
                            first.extend_from_slice(&buf[..n]);
                        }
                    }
                }
            }
            let held = started.elapsed();
            if first.starts_with(b"HTTP/1.1 503") || held < Duration::from_millis(200) {
                outcome.refused.fetch_add(1, Ordering::Relaxed);
            } else {
                outcome.closed.fetch_add(1, Ordering::Relaxed);
                outcome
                    .longest_ms
                    .fetch_max(held.as_millis() as u64, Ordering::Relaxed);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    outcome
}

async fn http_status(addr: SocketAddr, path: &str) -> Option<(u16, Duration)> {
    let started = Instant::now();
    let mut stream =
        tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
            .await
            .ok()?
            .ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut response))
        .await
        .ok()?
        .ok()?;
    let status = std::str::from_utf8(response.get(9..12)?)
        .ok()?
        .parse()
        .ok()?;
    Some((status, started.elapsed()))
}

/// With its open-file limit at 1,024, a node holds 5,000 connections of each hostile kind
/// from one address, and again from several, refusing or closing every one within its
/// deadline, while a three-person meeting beside them loses nothing and `/readyz` keeps
/// answering fast.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connection_floods_do_not_take_the_node_offline() {
    // The flood's own sockets: this process needs more than the node gets.
    hearth_actors::limits::raise_nofile_limit();
    // HEARTH_BIN=target/release/hearth measures a release node (BENCHMARKS.md).
    let hearth = std::env::var_os("HEARTH_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| hearth_tests::workspace_bin("hearth"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let probe_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let data = std::env::temp_dir().join(format!("hearth-hostile-{port}"));
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(r#"ulimit -n 1024 && exec "$0" "$@""#)
        .arg(&hearth);
    let mut node = hearth_tests::node_args(&mut cmd, port, (API_KEY, API_SECRET), &data)
        .args(["--header-timeout", "2s", "--first-byte-timeout", "2s"])
        .args(["--probe-http", &format!("127.0.0.1:{probe_port}")])
        .spawn()
        .expect("the node starts");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let probe_addr = SocketAddr::from(([127, 0, 0, 1], probe_port));
    let deadline = Instant::now() + T;
    while http_status(addr, "/readyz").await.map(|r| r.0) != Some(200) {
        assert!(Instant::now() < deadline, "the node never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The meeting beside the flood.
    let ws = format!("ws://{addr}/v1/signal");
    let now = SystemTime::now();
    let ttl = Duration::from_secs(600);
    let mut clients = Vec::new();
    for name in ["ann", "ben", "cy"] {
        let client = TestClient::join_with_token(
            &ws,
            &mint("beside", name, now, ttl),
            "beside",
            ClientOptions {
                publish_audio: true,
                publish_video: false,
                screen: false,
                accept_rtx: false,
            },
        )
        .await
        .expect("joins");
        clients.push(client);
    }
    let ids: Vec<String> = clients
        .iter()
        .map(|c| c.participant_id().to_owned())
        .collect();
    for (i, client) in clients.iter().enumerate() {
        let others: Vec<&str> = ids
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, id)| id.as_str())
            .collect();
        client.wait_for_media_from(&others, 20, 0, T).await;
    }

    // /readyz probed every 20 ms throughout, from an address the floods do not use: on the
    // flooded port and on the probe listener (`--probe-http`, a thread of its own).
    let probing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let probe_task = |target: SocketAddr| {
        let probing = Arc::clone(&probing);
        tokio::spawn(async move {
            let (mut times, mut failures) = (Vec::new(), 0u32);
            while probing.load(Ordering::Relaxed) {
                match http_status(target, "/readyz").await {
                    Some((200, took)) => times.push(took),
                    _ => failures += 1,
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            times.sort();
            (times, failures)
        })
    };
    let probe = probe_task(addr);
    let probe_own = probe_task(probe_addr);

    let one = [IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))];
    let several: Vec<IpAddr> = (3..=10)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))
        .collect();
    // Held connections close by the header deadline (2 s here) or the join deadline (10 s);
    // 8 s / 16 s leave room for a loaded CI machine.
    let before = clients_stats(&clients, &ids);
    for (sources, label) in [
        (&one[..], "one address"),
        (&several[..], "several addresses"),
    ] {
        let (silent, partial, ws) = tokio::join!(
            flood(addr, sources, Hostile::Silent, 5000, Duration::from_secs(8)),
            flood(
                addr,
                sources,
                Hostile::PartialHeaders,
                5000,
                Duration::from_secs(8)
            ),
            flood(
                addr,
                sources,
                Hostile::SilentWebSocket,
                5000,
                Duration::from_secs(16)
            ),
        );
        for (kind, o, limit) in [
            ("silent", &silent, 8_000),
            ("partial headers", &partial, 8_000),
            ("silent WebSocket", &ws, 16_000),
        ] {
            let (refused, closed, stuck) = (
                o.refused.load(Ordering::Relaxed),
                o.closed.load(Ordering::Relaxed),
                o.stuck.load(Ordering::Relaxed),
            );
            eprintln!(
                "{label}, {kind}: {refused} refused, {closed} held then closed (longest {} ms), {stuck} still open",
                o.longest_ms.load(Ordering::Relaxed)
            );
            assert_eq!(refused + closed + stuck, 5000, "{label}, {kind}");
            assert_eq!(
                stuck, 0,
                "{label}, {kind}: connections outlived their deadline"
            );
            assert!(
                o.longest_ms.load(Ordering::Relaxed) < limit,
                "{label}, {kind}"
            );
        }
    }
    probing.store(false, Ordering::Relaxed);
    let (own_times, own_failures) = probe_own.await.expect("the probe task");
    let own_at = |q: f64| own_times[((own_times.len() - 1) as f64 * q) as usize];
    eprintln!(
        "/readyz on --probe-http: {} probes, {own_failures} failed, p50 {:?}, p99 {:?}, slowest {:?}",
        own_times.len(),
        own_at(0.5),
        own_at(0.99),
        own_at(1.0)
    );
    assert_eq!(own_failures, 0, "/readyz on the probe listener failed");
    let (times, failures) = probe.await.expect("the probe task");
    let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
    eprintln!(
        "/readyz on the flooded port: {} probes, {failures} failed, p50 {:?}, p99 {:?}, slowest {:?}",
        times.len(),
        at(0.5),
        at(0.99),
        at(1.0)
    );
    assert_eq!(failures, 0, "/readyz failed during the floods");
    // Answered throughout; how fast is a benchmark's question (release build, quiet
    // machine: BENCHMARKS.md), not this debug build's on CPUs the flood itself saturates.
    assert!(
        at(1.0) < Duration::from_secs(1),
        "/readyz took {:?}",
        at(1.0)
    );

    // The meeting kept flowing without loss.
    let after = clients_stats(&clients, &ids);
    for ((i, j), (received_before, lost_before)) in &before {
        let (received, lost) = after[&(*i, *j)];
        assert!(
            received > received_before + 100,
            "{} stopped receiving from {}",
            ids[*i],
            ids[*j]
        );
        assert_eq!(
            lost, *lost_before,
            "{} lost packets of {}",
            ids[*i], ids[*j]
        );
    }

    // The node counted what it refused, and its connection count is back to the meeting's.
    let metrics = loop {
        let text = fetch_metrics(addr).await;
        let open = parse_metric(&text, r#"hearth_connections{listener="http"}"#).unwrap_or(-1.0);
        // The three participants' WebSockets and this /metrics request.
        if open <= 4.0 {
            break text;
        }
        assert!(
            Instant::now() < deadline + Duration::from_secs(120),
            "connections stay open: {open}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for reason in ["per_source", "evicted_unproven", "header_timeout", "silent"] {
        let refused = parse_metric(
            &metrics,
            &format!(r#"hearth_connections_refused_total{{listener="http",reason="{reason}"}}"#),
        )
        .or_else(|| {
            parse_metric(
                &metrics,
                &format!(r#"hearth_connections_closed_total{{listener="http",reason="{reason}"}}"#),
            )
        })
        .unwrap_or(0.0);
        assert!(refused > 0.0, "no {reason} counted:\n{metrics}");
    }
    node.kill().await.ok();
    let _ = std::fs::remove_dir_all(&data);
}

type PairStats = std::collections::HashMap<(usize, usize), (u64, u64)>;

fn clients_stats(clients: &[TestClient], ids: &[String]) -> PairStats {
    let mut out = PairStats::new();
    for (i, client) in clients.iter().enumerate() {
        let stats = client.stats();
        for (j, id) in ids.iter().enumerate() {
            if i != j {
                let s = stats.stream_from(id, Kind::Audio);
                out.insert((i, j), (s.packets, s.lost));
            }
        }
    }
    out
}

async fn fetch_metrics(addr: SocketAddr) -> String {
    hearth_tests::http_get(addr, "/metrics").await
}

/// HTTP/2 "rapid reset" (CVE-2023-44487): a client that opens streams and resets them at once,
/// as fast as it can, loses its connection; everyone else is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_reset_flood_ends_that_connection_only() {
    let server = TestServer::start().await;
    let addr = server.server.http_addr;
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let driver = tokio::spawn(connection);
    let mut sent = 0u32;
    let mut refused = None;
    for _ in 0..20_000 {
        let request = http::Request::get(format!("http://{addr}/readyz"))
            .body(())
            .expect("a request");
        let ready = match client.clone().ready().await {
            Ok(ready) => ready,
            Err(e) => {
                refused = Some(e.to_string());
                break;
            }
        };
        client = ready;
        match client.send_request(request, false) {
            Ok((_response, mut stream)) => {
                stream.send_reset(h2::Reason::CANCEL);
                sent += 1;
            }
            Err(e) => {
                refused = Some(e.to_string());
                break;
            }
        }
    }
    let refused = refused.expect("the node ended the flooding connection");
    eprintln!("reset flood: connection ended after {sent} resets: {refused}");
    assert!(sent < 20_000);
    let ended = tokio::time::timeout(T, driver)
        .await
        .expect("the connection ends");
    assert!(
        ended.map(|r| r.is_err()).unwrap_or(true),
        "the node ends a flooding connection with an error (GOAWAY)"
    );
    // Everyone else: served as before.
    assert_eq!(hearth_tests::http_get(addr, "/readyz").await, "ready");
    server.shutdown().await;
}

/// An HTTP/1 keep-alive connection that goes quiet after a request is closed after the
/// header deadline, not held forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http1_keep_alive_connection_is_closed() {
    let server = TestServer::start_with(|c| {
        c.http_limits.header_timeout = Duration::from_millis(500);
    })
    .await;
    let mut stream = tokio::net::TcpStream::connect(server.server.http_addr)
        .await
        .expect("connect");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("send");
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(T, stream.read(&mut buf)).await {
            Err(_) => panic!("the idle keep-alive connection was never closed"),
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    let held = started.elapsed();
    assert!(
        held >= Duration::from_millis(400) && held < Duration::from_secs(5),
        "closed after {held:?}"
    );
    server.shutdown().await;
}
