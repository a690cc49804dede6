//! The embedded TURN server: coturn's own clients against it, protocol errors and bad
//! input, crash isolation of allocations, ephemeral credentials in the SFU's join response.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use hearth_actors::turn::{ClientKey, Transport};
use hearth_api::config::Config;
use hearth_engine::stun::{Class, Message, MessageBuilder, attr, method};
use hearth_engine::turn::policy::Cidr;
use hearth_tests::TestServer;
use hearth_tests::turn::{TurnClient, echo_peer};
use tokio::process::Command;

const USER: &str = "alice";
const PASS: &str = "wonderland";
const SECRET: &str = "northwind";

fn turn_config(c: &mut Config) {
    let turn = c.turn.as_mut().expect("test config has TURN");
    turn.users = vec![(USER.into(), PASS.into())];
    turn.secret = Some(SECRET.into());
    turn.allow_peers = vec![Cidr::parse("127.0.0.0/8").unwrap()];
    turn.relay_ports = (40000, 40999);
}

fn turn_addr(server: &TestServer) -> SocketAddr {
    server.node().turn_addrs().expect("TURN runs").udp
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Runs a coturn tool to completion and returns its output (stdout and stderr).
async fn run(tool: &str, args: &[&str]) -> String {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        Command::new(tool).args(args).stdin(Stdio::null()).output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{tool} did not finish in 60 s"))
    .unwrap_or_else(|e| {
        panic!("cannot run {tool} (install Debian's coturn package; tests/run.sh does): {e}")
    });
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    text
}

/// The numbers in uclient's summary: (sent, received, lost %).
fn uclient_summary(output: &str) -> (u64, u64, f64) {
    let field = |name: &str| -> Option<u64> {
        output
            .lines()
            .rev()
            .find_map(|l| l.split(name).nth(1))
            .and_then(|rest| {
                rest.trim_start_matches('=')
                    .split(|c: char| !c.is_ascii_digit())
                    .next()
                    .and_then(|n| n.parse().ok())
            })
    };
    let lost = output
        .lines()
        .find_map(|l| l.split("Total lost packets ").nth(1))
        .and_then(|rest| rest.split('(').nth(1))
        .and_then(|pct| pct.split('%').next())
        .and_then(|pct| pct.parse::<f64>().ok());
    match (field("tot_send_msgs"), field("tot_recv_msgs"), lost) {
        (Some(s), Some(r), Some(l)) => (s, r, l),
        _ => panic!("unexpected uclient output:\n{output}"),
    }
}

/// A self-signed certificate for `localhost` in `dir`: (chain PEM, key PEM).
fn self_signed(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()])
        .expect("a self-signed certificate");
    let cert = dir.join("turn-cert.pem");
    let key = dir.join("turn-key.pem");
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coturn_clients_relay_through_hearth_without_loss() {
    let dir = std::env::temp_dir().join(format!("hearth-turn-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = self_signed(&dir);
    let server = TestServer::start_with(|c| {
        turn_config(c);
        c.turn.as_mut().unwrap().tls = Some(hearth_actors::turn::TlsSettings {
            listen: "127.0.0.1:0".parse().unwrap(),
            cert,
            key,
        });
    })
    .await;
    let turn = turn_addr(&server);
    let port = turn.port().to_string();
    let tls_port = server
        .node()
        .turn_addrs()
        .and_then(|a| a.tls)
        .expect("TLS listener")
        .port()
        .to_string();
    let mut usage = server.node().turn_usage().expect("usage events");

    let stun = run("turnutils_stunclient", &["-p", &port, "127.0.0.1"]).await;
    assert!(
        stun.contains("UDP reflexive addr: 127.0.0.1:"),
        "stunclient got no reflexive address:\n{stun}"
    );

    let peer_port = free_udp_port().to_string();
    let mut peer = Command::new("turnutils_peer")
        .args(["-L", "127.0.0.1", "-p", &peer_port])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("turnutils_peer runs (install Debian's coturn package)");

    let common = [
        "-e",
        "127.0.0.1",
        "-r",
        &peer_port,
        "-n",
        "100",
        "-m",
        "4",
        "-l",
        "1000",
        "-z",
        "10",
    ];
    let static_user = ["-u", USER, "-w", PASS];
    let rest_user = ["-u", "restuser", "-W", SECRET];
    let cases: [(&str, &[&str], &[&str], &str); 7] = [
        ("UDP, channels, static user", &[], &static_user, &port),
        ("UDP, Send/Data indications", &["-s"], &static_user, &port),
        ("TCP, channels", &["-t"], &static_user, &port),
        ("TCP, indications", &["-t", "-s"], &static_user, &port),
        ("UDP, ephemeral (REST) credentials", &[], &rest_user, &port),
        (
            "TCP, ephemeral (REST) credentials",
            &["-t"],
            &rest_user,
            &port,
        ),
        ("TLS, channels", &["-t", "-S"], &static_user, &tls_port),
    ];
    for (what, flags, user, port) in cases {
        let mut args: Vec<&str> = flags.to_vec();
        args.extend_from_slice(user);
        args.extend_from_slice(&["-p", port]);
        args.extend_from_slice(&common);
        args.push("127.0.0.1");
        let output = run("turnutils_uclient", &args).await;
        let (sent, received, lost) = uclient_summary(&output);
        assert!(sent >= 400, "{what}: only {sent} sent\n{output}");
        assert_eq!(received, sent, "{what}: lost packets\n{output}");
        assert_eq!(lost, 0.0, "{what}\n{output}");
    }
    peer.kill().await.ok();

    let relayed = server
        .metric("hearth_turn_relayed_packets_total{direction=\"to_peer\"}")
        .await;
    assert!(relayed >= 2800.0, "relayed {relayed}");
    // Finished allocations report their usage for billing (uclient deletes its allocations
    // with Refresh 0 when it is done).
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !(seen
        .iter()
        .any(|e: &hearth_actors::UsageEvent| e.transport == "tcp" && e.reason == "deleted")
        && seen.iter().any(|e| e.transport == "udp")
        && seen.iter().any(|e| e.transport == "tls"))
    {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, usage.recv()).await {
            Ok(Ok(event)) => seen.push(event),
            _ => panic!("usage events so far: {seen:#?}"),
        }
    }
    assert!(
        seen.iter()
            .any(|e| e.bytes_to_peer > 0 && e.bytes_to_client > 0 && e.packets_to_peer > 0),
        "{seen:#?}"
    );
    assert!(
        seen.iter().all(|e| e.user == USER || e.user == "restuser"),
        "{seen:#?}"
    );
    assert!(seen.iter().all(|e| e.ended_at >= e.started_at), "{seen:#?}");
    server.shutdown().await;
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_errors_have_their_codes() {
    let server = TestServer::start_with(|c| {
        turn_config(c);
        c.turn.as_mut().unwrap().max_allocations_per_user = 2;
    })
    .await;
    let turn = turn_addr(&server);
    let (peer, _echo) = echo_peer().await;

    // Missing integrity: the first round trip is a 401 with REALM and NONCE.
    let mut c = TurnClient::udp(turn, USER, PASS).await;
    let first = c
        .request_plain(method::ALLOCATE, |b| {
            b.u32_attr(attr::REQUESTED_TRANSPORT, 17 << 24)
        })
        .await;
    assert_eq!(first.code(), Some(401));
    assert!(first.msg().text(attr::NONCE).is_some());
    assert_eq!(first.msg().text(attr::REALM), Some("hearth"));

    // Wrong password: 401 even with a valid nonce; nothing allocated.
    let mut wrong = TurnClient::udp(turn, USER, "not-it").await;
    assert_eq!(wrong.allocate().await, Err(401));
    let failures = server.metric("hearth_turn_auth_failures_total").await;
    assert!(failures >= 1.0, "auth failures counted: {failures}");

    // Refresh without an allocation: 437.
    let mut stray = TurnClient::udp(turn, USER, PASS).await;
    assert_eq!(stray.refresh(600).await, Some(437));

    // A real allocation; a stale (foreign) nonce is answered 438 with a fresh one.
    let mut a = TurnClient::udp(turn, USER, PASS).await;
    a.allocate().await.expect("allocation");
    let tid = [0x51; 12];
    let stale = MessageBuilder::new(method::REFRESH, Class::Request, tid)
        .attr(attr::USERNAME, USER.as_bytes())
        .attr(attr::REALM, b"hearth")
        .attr(attr::NONCE, b"1-0000000000000000")
        .integrity(&a.key())
        .build();
    a.send_raw(&stale).await;
    let reply = a.recv(Duration::from_secs(2)).await.expect("a response");
    let m = Message::parse(&reply).unwrap();
    assert_eq!(m.error_code().map(|e| e.0), Some(438));
    assert!(
        m.text(attr::NONCE)
            .is_some_and(|n| n != "1-0000000000000000")
    );

    // Forbidden peers: 403, and no permission appears.
    for denied in [
        "10.1.2.3:5000",
        "169.254.1.1:5000",
        "224.0.0.9:5000",
        "[::1]:5000",
    ] {
        assert_eq!(
            a.create_permission(denied.parse().unwrap()).await,
            Some(403),
            "{denied}"
        );
    }
    assert_eq!(
        a.channel_bind(0x4001, "10.1.2.3:5000".parse().unwrap())
            .await,
        Some(403)
    );
    // Unsupported: DONT-FRAGMENT (420), TCP relaying (442).
    let mut b = TurnClient::udp(turn, USER, PASS).await;
    let r = b
        .request(method::ALLOCATE, |b| {
            b.u32_attr(attr::REQUESTED_TRANSPORT, 17 << 24)
                .attr(attr::DONT_FRAGMENT, &[])
        })
        .await;
    assert_eq!(r.code(), Some(420));
    let r = b
        .request(method::ALLOCATE, |b| {
            b.u32_attr(attr::REQUESTED_TRANSPORT, 6 << 24)
        })
        .await;
    assert_eq!(r.code(), Some(442));

    // Quota: alice may hold 2 allocations; the third gets 486, the first two keep working.
    b.allocate().await.expect("second allocation");
    let mut c3 = TurnClient::udp(turn, USER, PASS).await;
    assert_eq!(c3.allocate().await, Err(486));
    assert!(server.metric("hearth_turn_quota_rejections_total").await >= 1.0);
    assert_eq!(a.channel_bind(0x4001, peer).await, None);
    a.send_channel(0x4001, b"still relaying").await;
    assert_eq!(
        a.recv_data(Duration::from_secs(5)).await.as_deref(),
        Some(&b"still relaying"[..])
    );
    // EVEN-PORT with the R bit: an even port, and a token that claims the next one.
    let (username, password) =
        hearth_engine::turn::auth::ephemeral_credentials(SECRET.as_bytes(), "even", 4_000_000_000);
    let mut d = TurnClient::udp(turn, &username, &password).await;
    let r = d
        .request(method::ALLOCATE, |b| {
            b.u32_attr(attr::REQUESTED_TRANSPORT, 17 << 24)
                .attr(attr::EVEN_PORT, &[0x80])
        })
        .await;
    assert_eq!(r.code(), None);
    let relay = r.msg().xor_address(attr::XOR_RELAYED_ADDRESS).unwrap();
    assert_eq!(relay.port() % 2, 0);
    let token = r
        .msg()
        .get(attr::RESERVATION_TOKEN)
        .expect("a token")
        .to_vec();
    let mut e = TurnClient::udp(turn, &username, &password).await;
    let r = e
        .request(method::ALLOCATE, |b| {
            b.u32_attr(attr::REQUESTED_TRANSPORT, 17 << 24)
                .attr(attr::RESERVATION_TOKEN, &token)
        })
        .await;
    assert_eq!(r.code(), None);
    assert_eq!(
        r.msg()
            .xor_address(attr::XOR_RELAYED_ADDRESS)
            .unwrap()
            .port(),
        relay.port() + 1
    );
    // Refresh 0 deletes; the next request is a 437.
    assert_eq!(e.refresh(0).await, None);
    assert_eq!(e.create_permission(peer).await, Some(437));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_dropped_and_counted_and_relaying_goes_on() {
    let server = TestServer::start_with(turn_config).await;
    let turn = turn_addr(&server);
    let (peer, _echo) = echo_peer().await;
    let mut a = TurnClient::udp(turn, USER, PASS).await;
    a.allocate().await.expect("allocation");
    assert_eq!(a.channel_bind(0x4000, peer).await, None);

    // Random, truncated and mangled datagrams from several sockets.
    let mut state = 0x243F_6A88_85A3_08D3u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let valid = MessageBuilder::new(method::ALLOCATE, Class::Request, [7; 12])
        .u32_attr(attr::REQUESTED_TRANSPORT, 17 << 24)
        .attr(attr::USERNAME, USER.as_bytes())
        .attr(attr::REALM, b"hearth")
        .attr(attr::NONCE, b"x")
        .integrity(&[0; 16])
        .fingerprint()
        .build();
    let socks: Vec<tokio::net::UdpSocket> =
        futures::future::join_all((0..4).map(|_| tokio::net::UdpSocket::bind("127.0.0.1:0")))
            .await
            .into_iter()
            .map(|s| s.unwrap())
            .collect();
    for i in 0..6000u32 {
        let data: Vec<u8> = match i % 4 {
            0 => (0..(next() % 200) as usize).map(|_| next() as u8).collect(),
            1 => valid[..(next() as usize % valid.len())].to_vec(),
            2 => {
                let mut v = valid.clone();
                let at = next() as usize % v.len();
                v[at] ^= (next() as u8) | 1;
                v
            }
            _ => {
                // ChannelData-looking junk with lying lengths.
                let mut v = vec![0x40, (next() % 256) as u8, 0xFF, 0xFF];
                v.extend((0..(next() % 40)).map(|_| next() as u8));
                v
            }
        };
        let _ = socks[i as usize % 4].send_to(&data, turn).await;
    }
    // TCP: a stream cut in the middle of a message, and one that is not STUN at all.
    let mut cut = tokio::net::TcpStream::connect(turn).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut cut, &valid[..30])
        .await
        .unwrap();
    drop(cut);
    let mut junk = tokio::net::TcpStream::connect(turn).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut junk, b"GET / HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut junk, &mut buf),
    )
    .await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "a stream that does not speak STUN is closed"
    );

    server
        .wait_metric(
            "hearth_turn_dropped_total{reason=\"malformed\"}",
            Duration::from_secs(10),
            |v| v >= 1000.0,
        )
        .await;
    // The allocation is untouched and relays both ways.
    for i in 0..20u8 {
        a.send_channel(0x4000, &[i; 100]).await;
        assert_eq!(
            a.recv_data(Duration::from_secs(5)).await,
            Some(vec![i; 100]),
            "echo {i}"
        );
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_allocation_frees_its_port_and_others_keep_relaying() {
    let server = TestServer::start_with(turn_config).await;
    let turn = turn_addr(&server);
    let (peer, _echo) = echo_peer().await;
    let mut victim = TurnClient::udp(turn, USER, PASS).await;
    let victim_relay = victim.allocate().await.expect("allocation");
    let mut bystander = TurnClient::tcp(turn, USER, PASS).await;
    bystander.allocate().await.expect("allocation");
    assert_eq!(victim.channel_bind(0x4000, peer).await, None);
    assert_eq!(bystander.channel_bind(0x4000, peer).await, None);
    let failures_before = server
        .metric("hearth_actor_failures_total{kind=\"allocation\"}")
        .await;

    let key = ClientKey {
        transport: Transport::Udp,
        addr: victim.local_addr(),
    };
    assert!(server.node().inject_allocation_fault(key).await);
    server
        .wait_metric(
            "hearth_actor_failures_total{kind=\"allocation\"}",
            Duration::from_secs(10),
            |v| v >= failures_before + 1.0,
        )
        .await;
    // Its relayed port is free again (the socket closed with the actor).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while std::net::UdpSocket::bind(("127.0.0.1", victim_relay.port())).is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "port {} still bound",
            victim_relay.port()
        );
        tokio::task::yield_now().await;
    }
    // The bystander relays as before.
    for i in 0..10u8 {
        bystander.send_channel(0x4000, &[i; 64]).await;
        assert_eq!(
            bystander.recv_data(Duration::from_secs(5)).await,
            Some(vec![i; 64])
        );
    }
    // A TCP allocation ends with its connection, and reports its usage.
    let mut usage = server.node().turn_usage().expect("usage events");
    let allocations = server.node().turn_allocations();
    drop(bystander);
    let event = tokio::time::timeout(Duration::from_secs(10), usage.recv())
        .await
        .expect("a usage event")
        .expect("usage stream open");
    assert_eq!((event.transport, event.reason), ("tcp", "closed"));
    assert_eq!(event.packets_to_peer, 10);
    assert_eq!(event.bytes_to_client, 640);
    assert_eq!(server.node().turn_allocations(), allocations - 1);
    // The victim's allocation is gone (437) and it can allocate again.
    assert_eq!(victim.refresh(600).await, Some(437));
    victim.allocate().await.expect("re-allocation");
    assert_eq!(victim.channel_bind(0x4000, peer).await, None);
    victim.send_channel(0x4000, b"back").await;
    assert_eq!(
        victim.recv_data(Duration::from_secs(5)).await.as_deref(),
        Some(&b"back"[..])
    );
    server.shutdown().await;
}

/// Joins `meeting` as `identity` over WebSocket; returns the socket (the participant stays
/// while it is open), the participant id and the first ICE server's (username, credential).
async fn join_for_turn(
    server: &TestServer,
    meeting: &str,
    identity: &str,
) -> (
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    String,
    (String, String),
) {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message as Ws;

    let token = server.token(meeting, identity, hearth_actors::Grants::default());
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url())
        .await
        .unwrap();
    ws.send(Ws::Text(
        format!(r#"{{"join":{{"token":"{token}"}}}}"#).into(),
    ))
    .await
    .unwrap();
    let Some(Ok(Ws::Text(text))) = ws.next().await else {
        panic!("no join response")
    };
    let v: serde_json::Value = serde_json::from_str(text.as_str()).unwrap();
    let servers = &v["join"]["iceServers"];
    let first = &servers[0];
    let urls: Vec<&str> = first["urls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect();
    let port = turn_addr(server).port();
    assert!(
        urls.contains(&format!("turn:127.0.0.1:{port}?transport=udp").as_str()),
        "{urls:?}"
    );
    assert!(
        urls.contains(&format!("turn:127.0.0.1:{port}?transport=tcp").as_str()),
        "{urls:?}"
    );
    let id = v["join"]["participantId"]
        .as_str()
        .expect("participantId")
        .to_owned();
    let username = first["username"].as_str().unwrap().to_owned();
    let credential = first["credential"].as_str().unwrap().to_owned();
    (ws, id, (username, credential))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_response_carries_working_turn_credentials() {
    let server = TestServer::start_with(turn_config).await;
    let (_ws, id, (username, credential)) = join_for_turn(&server, "turn-join", "ada").await;
    // SFU credentials of this participant, expiring with its token (an hour), not in 24 h.
    assert!(username.ends_with(&format!(":sfu:{id}")), "{username}");
    let expiry: u64 = username.split(':').next().unwrap().parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        (now + 3000..=now + 3700).contains(&expiry),
        "{expiry} vs {now}"
    );
    // The credentials work at the node's TURN server.
    let mut c = TurnClient::udp(turn_addr(&server), &username, &credential).await;
    c.allocate()
        .await
        .expect("the join response's TURN credentials allocate");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sfu_credentials_relay_only_to_the_sfu_and_end_with_the_participant() {
    // The allow-list opens all of loopback to operator credentials; the SFU's are narrower.
    let server = TestServer::start_with(turn_config).await;
    let turn = turn_addr(&server);
    let media = server.media_addr();
    let (_echo_addr, _echo) = echo_peer().await;
    let (_ws, id, (username, credential)) = join_for_turn(&server, "turn-kick", "eve").await;
    let mut c = TurnClient::udp(turn, &username, &credential).await;
    c.allocate().await.expect("allocation");
    for other in ["127.0.0.2:5000", "8.8.8.8:53", "[::ffff:127.0.0.2]:5000"] {
        assert_eq!(
            c.create_permission(other.parse().unwrap()).await,
            Some(403),
            "{other}"
        );
    }
    let other_port = SocketAddr::new(media.ip(), free_udp_port());
    assert_eq!(c.channel_bind(0x4001, other_port).await, Some(403));
    assert_eq!(c.create_permission(media).await, None);
    assert_eq!(c.channel_bind(0x4002, media).await, None);
    // Operator credentials on the same node are not restricted.
    let mut op = TurnClient::udp(turn, USER, PASS).await;
    op.allocate().await.expect("allocation");
    assert_eq!(
        op.create_permission("127.0.0.2:5000".parse().unwrap())
            .await,
        None
    );

    // Editing the username into an operator REST credential breaks the password: 401.
    let rest_form = username.replacen(":sfu:", ":", 1);
    let mut forged = TurnClient::udp(turn, &rest_form, &credential).await;
    assert_eq!(forged.allocate().await, Err(401));

    // Expired credentials: 401.
    let node = server.node();
    let pid = hearth_actors::ParticipantId::random();
    let past = std::time::SystemTime::now() - Duration::from_secs(10);
    let expired = &node.ice_servers(&pid, Some(past))[0];
    let mut late = TurnClient::udp(turn, &expired.username, &expired.credential).await;
    assert_eq!(late.allocate().await, Err(401));

    // Kicked: the allocation ends (reported as revoked) and the credentials get 401.
    let mut usage = node.turn_usage().expect("usage events");
    let meeting = hearth_actors::MeetingId::parse("turn-kick").unwrap();
    node.remove_participant(&meeting, &hearth_actors::ParticipantId::from_string(id))
        .await
        .expect("the kick");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let event = tokio::time::timeout(left, usage.recv())
            .await
            .expect("a usage event")
            .expect("usage stream open");
        if event.reason == "revoked" {
            assert!(event.user.starts_with("sfu:"), "{event:?}");
            break;
        }
    }
    assert_eq!(c.refresh(600).await, Some(401));
    let mut again = TurnClient::udp(turn, &username, &credential).await;
    assert_eq!(again.allocate().await, Err(401));
    // The operator's allocation is untouched.
    assert_eq!(op.refresh(600).await, None);
    server.shutdown().await;
}

/// Peer addresses that are, or reach, something a TURN server must not relay to.
const BYPASS_FORMS: &[&str] = &[
    "0.0.0.0",
    "::",
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "::ffff:0:127.0.0.1",
    "64:ff9b::7f00:1",
    "64:ff9b::a00:1",
    "64:ff9b:1::808:808",
    "2002:7f00:1::1",
    "2002:a00:1::1",
    "::127.0.0.1",
    "::10.0.0.1",
    "2001:0:4136:e378:8000:63bf:80ff:fffe",
    "2001:0:a00:1:8000:63bf:f7f7:f7f7",
    "ff0e::1",
    "224.0.0.1",
    "255.255.255.255",
    "169.254.169.254",
    "fe80::1",
    "fd12:3456::1",
    "2001:db8::1",
    "3fff::1",
    "192.0.2.1",
    "198.51.100.1",
    "203.0.113.1",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_address_bypass_forms_get_403_through_the_udp_listener() {
    // TURN only: no SFU media address on loopback to allow.
    let server = TestServer::start_with(|c| {
        turn_config(c);
        c.turn.as_mut().unwrap().allow_peers = Vec::new();
        c.turn_only = true;
    })
    .await;
    let mut a = TurnClient::udp(turn_addr(&server), USER, PASS).await;
    a.allocate().await.expect("allocation");
    for form in BYPASS_FORMS {
        let peer = SocketAddr::new(form.parse().unwrap(), 5000);
        assert_eq!(a.create_permission(peer).await, Some(403), "{form}");
    }
    for form in ["::ffff:127.0.0.1", "64:ff9b::a00:1", "2002:7f00:1::1"] {
        let peer = SocketAddr::new(form.parse().unwrap(), 5000);
        assert_eq!(a.channel_bind(0x4001, peer).await, Some(403), "{form}");
    }
    // The same forms of a public address are fine (only the permission is created here).
    for form in ["64:ff9b::808:808", "2002:808:808::1", "8.8.8.8"] {
        let peer = SocketAddr::new(form.parse().unwrap(), 5000);
        assert_eq!(a.create_permission(peer).await, None, "{form}");
    }
    server.shutdown().await;
}

/// Waits until the peer closes `stream` (EOF or a reset); panics after `within`.
async fn closed_by_server(stream: &mut tokio::net::TcpStream, within: Duration) {
    let mut buf = [0u8; 512];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, tokio::io::AsyncReadExt::read(stream, &mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => continue,
            Err(_) => panic!("the server kept the connection open for {within:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_connections_without_an_allocation_are_closed_and_capped() {
    let dir = std::env::temp_dir().join(format!("hearth-turn-hygiene-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = self_signed(&dir);
    let server = TestServer::start_with(|c| {
        turn_config(c);
        let turn = c.turn.as_mut().unwrap();
        turn.stream_allocate_timeout = Duration::from_secs(2);
        turn.tls_handshake_timeout = Duration::from_secs(1);
        turn.stream_limits = hearth_actors::limits::GateLimits {
            max_connections: 100,
            max_per_source: 3,
        };
        turn.tls = Some(hearth_actors::turn::TlsSettings {
            listen: "127.0.0.1:0".parse().unwrap(),
            cert,
            key,
        });
    })
    .await;
    let turn = turn_addr(&server);
    let tls = server.node().turn_addrs().and_then(|a| a.tls).unwrap();
    let (peer, _echo) = echo_peer().await;
    let closed = |listener: &str, reason: &str| {
        format!("hearth_connections_closed_total{{listener=\"{listener}\",reason=\"{reason}\"}}")
    };
    let no_allocation = server.metric(&closed("turn-tcp", "no_allocation")).await;
    let handshakes = server
        .metric(&closed("turn-tls", "tls_handshake_timeout"))
        .await;
    let refused_metric =
        "hearth_connections_refused_total{listener=\"turn-tcp\",reason=\"per_source\"}";
    let refused = server.metric(refused_metric).await;

    // One connection allocates; two say nothing, or only Binding.
    let mut allocated = TurnClient::tcp(turn, USER, PASS).await;
    allocated.allocate().await.expect("allocation");
    let mut idle = tokio::net::TcpStream::connect(turn).await.unwrap();
    let mut binding_only = TurnClient::tcp(turn, USER, PASS).await;
    let r = binding_only.request_plain(method::BINDING, |b| b).await;
    assert_eq!(r.code(), None);
    // A fourth from the same address is over the per-source cap: closed at once.
    let mut over = tokio::net::TcpStream::connect(turn).await.unwrap();
    closed_by_server(&mut over, Duration::from_secs(1)).await;
    server
        .wait_metric(refused_metric, Duration::from_secs(5), |v| {
            v >= refused + 1.0
        })
        .await;
    // A TLS client that never finishes its handshake.
    let mut handshaking = tokio::net::TcpStream::connect(tls).await.unwrap();

    closed_by_server(&mut idle, Duration::from_secs(10)).await;
    assert!(
        binding_only.recv(Duration::from_secs(10)).await.is_none(),
        "a connection that only asks Binding is closed too"
    );
    closed_by_server(&mut handshaking, Duration::from_secs(10)).await;
    server
        .wait_metric(
            &closed("turn-tcp", "no_allocation"),
            Duration::from_secs(5),
            |v| v >= no_allocation + 2.0,
        )
        .await;
    server
        .wait_metric(
            &closed("turn-tls", "tls_handshake_timeout"),
            Duration::from_secs(5),
            |v| v >= handshakes + 1.0,
        )
        .await;
    // The allocated connection outlived the deadline and relays.
    assert_eq!(allocated.channel_bind(0x4000, peer).await, None);
    allocated.send_channel(0x4000, b"still here").await;
    assert_eq!(
        allocated.recv_data(Duration::from_secs(5)).await.as_deref(),
        Some(&b"still here"[..])
    );
    server.shutdown().await;
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_stream_listener_evicts_a_connection_without_an_allocation() {
    let server = TestServer::start_with(|c| {
        turn_config(c);
        c.turn.as_mut().unwrap().stream_limits = hearth_actors::limits::GateLimits {
            max_connections: 2,
            max_per_source: 10,
        };
    })
    .await;
    let turn = turn_addr(&server);
    let (peer, _echo) = echo_peer().await;
    let mut allocated = TurnClient::tcp(turn, USER, PASS).await;
    allocated.allocate().await.expect("allocation");
    let mut idle = tokio::net::TcpStream::connect(turn).await.unwrap();
    // The listener is full: the newcomer takes the idle connection's place, not the
    // allocated one's.
    let mut newcomer = TurnClient::tcp(turn, USER, PASS).await;
    closed_by_server(&mut idle, Duration::from_secs(5)).await;
    newcomer.allocate().await.expect("the newcomer allocates");
    for c in [&mut allocated, &mut newcomer] {
        assert_eq!(c.channel_bind(0x4000, peer).await, None);
        c.send_channel(0x4000, b"ok").await;
        assert_eq!(
            c.recv_data(Duration::from_secs(5)).await.as_deref(),
            Some(&b"ok"[..])
        );
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_listener_tasks_are_restarted_and_traffic_still_flows() {
    use hearth_actors::node::ListenerFault;
    let server = TestServer::start_with(turn_config).await;
    let turn = turn_addr(&server);
    let (peer, _echo) = echo_peer().await;
    let failures = "hearth_actor_failures_total{kind=\"turn-listener\"}";
    let restarts = "hearth_actor_restarts_total{kind=\"turn-listener\"}";
    let mut a = TurnClient::udp(turn, USER, PASS).await;
    a.allocate().await.expect("allocation");
    assert_eq!(a.channel_bind(0x4000, peer).await, None);

    // A UDP worker fails on the next datagram it receives.
    let before = server.metric(restarts).await;
    let failed = server.metric(failures).await;
    assert!(server.node().inject_listener_fault(ListenerFault::TurnUdp));
    let poke = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let binding = MessageBuilder::new(method::BINDING, Class::Request, [3; 12]).build();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while server.metric(restarts).await < before + 1.0 {
        assert!(tokio::time::Instant::now() < deadline, "no restart");
        poke.send_to(&binding, turn).await.unwrap();
    }
    assert!(server.metric(failures).await >= failed + 1.0);
    // Every client gets answered (no socket without a reader keeps a share of them), and
    // the existing allocation relays through the fresh socket.
    for _ in 0..24 {
        let mut c = TurnClient::udp(turn, USER, PASS).await;
        assert_eq!(c.request_plain(method::BINDING, |b| b).await.code(), None);
    }
    for i in 0..5u8 {
        a.send_channel(0x4000, &[i; 32]).await;
        assert_eq!(a.recv_data(Duration::from_secs(5)).await, Some(vec![i; 32]));
    }

    // The TCP accept loop fails on the next connection.
    let before = server.metric(restarts).await;
    assert!(
        server
            .node()
            .inject_listener_fault(ListenerFault::TurnStream)
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while server.metric(restarts).await < before + 1.0 {
        assert!(tokio::time::Instant::now() < deadline, "no restart");
        let _ = tokio::net::TcpStream::connect(turn).await;
    }
    let mut t = TurnClient::tcp(turn, USER, PASS).await;
    t.allocate()
        .await
        .expect("TCP allocation after the restart");
    assert_eq!(t.channel_bind(0x4000, peer).await, None);
    t.send_channel(0x4000, b"tcp").await;
    assert_eq!(
        t.recv_data(Duration::from_secs(5)).await.as_deref(),
        Some(&b"tcp"[..])
    );

    // A media port driver fails the same way and is restarted (its traffic test is the
    // mux's own, in hearth-actors).
    let mux_restarts = "hearth_actor_restarts_total{kind=\"udp-mux\"}";
    let before = server.metric(mux_restarts).await;
    assert!(server.node().inject_listener_fault(ListenerFault::MediaMux));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while server.metric(mux_restarts).await < before + 1.0 {
        assert!(tokio::time::Instant::now() < deadline, "no restart");
        poke.send_to(b"poke", server.media_addr()).await.unwrap();
    }
    assert!(
        server
            .metric("hearth_actor_failures_total{kind=\"udp-mux\"}")
            .await
            >= 1.0
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bandwidth_quota_drops_the_excess_of_one_allocation() {
    let server = TestServer::start_with(|c| {
        turn_config(c);
        c.turn.as_mut().unwrap().bandwidth = 20_000; // bytes/s: bursts of 2000
    })
    .await;
    let turn = turn_addr(&server);
    let (peer, _echo) = echo_peer().await;
    let mut c = TurnClient::udp(turn, USER, PASS).await;
    c.allocate().await.expect("allocation");
    assert_eq!(c.channel_bind(0x4000, peer).await, None);
    for i in 0..50u8 {
        c.send_channel(0x4000, &[i; 1000]).await;
    }
    let mut received = 0;
    while c.recv_data(Duration::from_millis(300)).await.is_some() {
        received += 1;
    }
    assert!(
        (1..=5).contains(&received),
        "a 20 kB/s allocation passed {received} of 50 back-to-back 1000-byte datagrams"
    );
    server
        .wait_metric(
            "hearth_turn_dropped_total{reason=\"no_permission_or_quota\"}",
            Duration::from_secs(10),
            |v| v >= 40.0,
        )
        .await;
    // Another allocation is not limited by this one's quota.
    let mut d = TurnClient::udp(turn, USER, PASS).await;
    d.allocate().await.expect("allocation");
    assert_eq!(d.channel_bind(0x4000, peer).await, None);
    d.send_channel(0x4000, b"unaffected").await;
    assert_eq!(
        d.recv_data(Duration::from_secs(5)).await.as_deref(),
        Some(&b"unaffected"[..])
    );
    server.shutdown().await;
}
