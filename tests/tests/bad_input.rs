//! Hostile and broken input: every signaling mistake gets its exact error code, every bad
//! token is refused, and garbage on the media port is dropped — while another meeting on the
//! same node keeps exchanging media throughout (architecture invariant 5: no input from the
//! network stops anything but its own session).

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hearth_actors::Grants;
use hearth_api::token;
use hearth_proto::signal::v1::server_message::Message as S;
use hearth_tests::{API_KEY, API_SECRET, ClientOptions, Kind, RawSignal, TestClient, TestServer};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::net::UdpSocket;

const T: Duration = Duration::from_secs(20);
/// Errors arrive within this (the server answers at once; this only bounds a failure).
const REPLY: Duration = Duration::from_secs(5);

/// Two clients in their own meeting, exchanging audio and video.
struct Background {
    a: TestClient,
    b: TestClient,
    /// Events each had seen once media flowed (joins and track announcements).
    baseline: (usize, usize),
}

impl Background {
    async fn start(server: &TestServer) -> Background {
        let a = TestClient::join(server, "background", "bg-a", ClientOptions::av())
            .await
            .expect("bg-a joins");
        let b = TestClient::join(server, "background", "bg-b", ClientOptions::av())
            .await
            .expect("bg-b joins");
        a.wait_for_media_from(&[b.participant_id()], 25, 15, T)
            .await;
        b.wait_for_media_from(&[a.participant_id()], 25, 15, T)
            .await;
        let baseline = (a.stats().events.len(), b.stats().events.len());
        Background { a, b, baseline }
    }

    /// Both directions deliver more audio and video than before (≈ half a second's worth).
    async fn still_flows(&self, after: &str) {
        for (rx, tx) in [(&self.a, &self.b), (&self.b, &self.a)] {
            for (kind, n) in [(Kind::Audio, 10), (Kind::Video, 6)] {
                let start = rx.stats().packets_from(tx.participant_id(), kind);
                rx.wait_until(
                    &format!("background {kind:?} keeps flowing after {after}"),
                    T,
                    |s| s.packets_from(tx.participant_id(), kind) >= start + n,
                )
                .await;
            }
        }
    }

    /// Nothing reached the background clients but media: no events, no errors, no gaps.
    fn assert_untouched(&self) {
        let baselines = [self.baseline.0, self.baseline.1];
        for ((rx, tx), baseline) in [(&self.a, &self.b), (&self.b, &self.a)]
            .into_iter()
            .zip(baselines)
        {
            let s = rx.stats();
            assert!(s.connected, "{} disconnected", rx.participant_id());
            assert!(
                s.errors.is_empty(),
                "errors at {}: {:?}",
                rx.participant_id(),
                s.errors
            );
            assert!(
                s.negotiation_failures.is_empty(),
                "{:?}",
                s.negotiation_failures
            );
            assert_eq!(s.reconnect, None);
            assert_eq!(
                s.events.len(),
                baseline,
                "the background meeting got events: {:?}",
                &s.events[baseline.min(s.events.len())..]
            );
            let audio = s.stream_from(tx.participant_id(), Kind::Audio);
            assert_eq!(audio.gaps, 0, "background audio lost packets: {audio:?}");
        }
    }

    async fn leave(self) {
        self.a.leave().await;
        self.b.leave().await;
    }
}

fn code_of(e: &hearth_tests::ServerError) -> &str {
    e.code.as_str()
}

fn error(e: &hearth_proto::signal::v1::Error) -> hearth_tests::ServerError {
    hearth_tests::ServerError {
        code: hearth_proto::signal::v1::ErrorCode::try_from(e.code)
            .map(|c| c.as_str_name().to_owned())
            .unwrap_or_default(),
        message: e.message.clone(),
        fatal: e.fatal,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signaling_mistakes_get_their_error_codes() {
    let server = TestServer::start().await;
    let bg = Background::start(&server).await;

    // A socket that never joins: the server gives up on it after its join timeout (10 s).
    let mut silent = RawSignal::connect(&server).await;
    let opened = Instant::now();
    let silent_task = tokio::spawn(async move {
        let e = silent.expect_error(Duration::from_secs(15)).await;
        let closed = silent.closed_within(REPLY).await;
        (e, opened.elapsed(), closed)
    });

    let mut ws = RawSignal::connect(&server).await;
    ws.send_text("{\"join\": {\"token\": ").await;
    let e = ws.expect_error(REPLY).await;
    assert_eq!(code_of(&e), "MALFORMED_MESSAGE", "{e:?}");
    assert!(!e.fatal);
    bg.still_flows("malformed JSON").await;

    ws.send_text(r#"{"fly":{}}"#).await;
    let e = ws.expect_error(REPLY).await;
    assert_eq!(code_of(&e), "UNKNOWN_MESSAGE", "{e:?}");
    bg.still_flows("an unknown message").await;

    ws.send_text("[1, 2, 3]").await;
    assert_eq!(code_of(&ws.expect_error(REPLY).await), "MALFORMED_MESSAGE");
    // Binary frames are not part of the protocol.
    ws.send_binary(vec![0x08, 0x01]).await;
    assert_eq!(code_of(&ws.expect_error(REPLY).await), "MALFORMED_MESSAGE");

    let huge = format!(r#"{{"ping":{{"timestamp":"{}"}}}}"#, "9".repeat(70 * 1024));
    ws.send_text(huge).await;
    let e = ws.expect_error(REPLY).await;
    assert_eq!(code_of(&e), "MESSAGE_TOO_LARGE", "{e:?}");
    bg.still_flows("a 70 KiB frame").await;
    // Beyond the transport's 1 MiB limit the connection ends, and nothing else does.
    let mut giant = RawSignal::connect(&server).await;
    // (The server may reset the connection while the frame is still being written.)
    let sent = giant.try_send_text("x".repeat(2 << 20)).await;
    assert!(
        !sent || giant.closed_within(REPLY).await,
        "a 2 MiB frame ends its connection"
    );
    bg.still_flows("a 2 MiB frame").await;

    ws.send_text(r#"{"leave":{}}"#).await;
    assert_eq!(code_of(&ws.expect_error(REPLY).await), "NOT_JOINED");
    ws.send_text(r#"{"offer":{"type":"offer","sdp":"v=0"}}"#)
        .await;
    assert_eq!(code_of(&ws.expect_error(REPLY).await), "NOT_JOINED");
    bg.still_flows("messages before join").await;

    // The same socket still joins after all of that.
    let token = server.token("solo", "raw-joiner", Grants::default());
    ws.send_join(&token, "solo").await;
    match ws.next_message(REPLY).await {
        Some(S::Join(j)) => assert!(j.participant_id.starts_with("PA_"), "{j:?}"),
        other => panic!("expected the join response, got {other:?}"),
    }
    ws.send_join(&token, "solo").await;
    let e = ws.expect_error(REPLY).await;
    assert_eq!(code_of(&e), "ALREADY_JOINED", "{e:?}");
    ws.send_text(r#"{"mute":{"trackId":"TR_nosuchtrack","muted":true}}"#)
        .await;
    assert_eq!(code_of(&ws.expect_error(REPLY).await), "TRACK_NOT_FOUND");
    ws.send_text(r#"{"unpublish":{"trackId":"TR_nosuchtrack"}}"#)
        .await;
    assert_eq!(code_of(&ws.expect_error(REPLY).await), "TRACK_NOT_FOUND");
    ws.send_text(r#"{"offer":{"type":"answer","sdp":"v=0"}}"#)
        .await;
    assert_eq!(code_of(&ws.expect_error(REPLY).await), "MALFORMED_MESSAGE");
    ws.send_text(r#"{"trickle":{"candidate":"candidate:0 1 udp not-a-priority 1.2.3.4 x typ host","sdpMid":"0"}}"#)
        .await;
    let e = ws.expect_error(REPLY).await;
    assert_eq!(code_of(&e), "INVALID_CANDIDATE", "{e:?}");
    bg.still_flows("a second join and bad requests").await;

    // A burst beyond the rate limit (burst 200, then 50/s): every frame is answered, the
    // excess with RATE_LIMITED, and the session survives.
    const BURST: usize = 300;
    for _ in 0..BURST {
        ws.send_text(r#"{"ping":{"timestamp":"7"}}"#).await;
    }
    let (mut pongs, mut limited) = (0, 0);
    while pongs + limited < BURST {
        match ws.next_message_or_pong(REPLY).await {
            Some(S::Pong(p)) => {
                assert_eq!(p.timestamp, 7);
                pongs += 1;
            }
            Some(S::Error(e)) if code_of(&error(&e)) == "RATE_LIMITED" => {
                assert!(!e.fatal, "{e:?}");
                limited += 1;
            }
            Some(S::Trickle(_)) => {}
            other => panic!("unexpected reply to a ping burst: {other:?}"),
        }
    }
    assert!(
        limited > 0 && pongs >= 200,
        "pongs {pongs}, rate limited {limited}"
    );
    // The bucket refills (50 per second): a ping paced after it is answered again.
    let mut pace = tokio::time::interval(Duration::from_millis(50));
    let deadline = Instant::now() + REPLY;
    loop {
        pace.tick().await;
        ws.send_text(r#"{"ping":{"timestamp":"8"}}"#).await;
        match ws.next_message_or_pong(REPLY).await {
            Some(S::Pong(p)) if p.timestamp == 8 => break,
            Some(S::Error(e)) if code_of(&error(&e)) == "RATE_LIMITED" => {}
            Some(S::Trickle(_)) => {}
            other => panic!("unexpected reply to a ping: {other:?}"),
        }
        assert!(Instant::now() < deadline, "the rate limit never lifted");
    }
    bg.still_flows("a rate-limited burst").await;

    // A real client with no offer outstanding: a stray answer, then nonsense SDP, then a
    // real offer that works.
    let solo = TestClient::join(&server, "solo2", "solo", ClientOptions::receive_only())
        .await
        .expect("solo joins");
    solo.send_raw(format!(
        r#"{{"answer":{{"type":"answer","sdp":{}}}}}"#,
        serde_json::to_string(MINIMAL_SDP).unwrap()
    ))
    .await;
    solo.wait_until("NEGOTIATION_FAILED", T, |s| {
        s.error_codes().contains(&"NEGOTIATION_FAILED")
    })
    .await;
    solo.send_raw(r#"{"offer":{"type":"offer","sdp":"this is not SDP at all"}}"#)
        .await;
    solo.wait_until("INVALID_SDP", T, |s| {
        s.error_codes().contains(&"INVALID_SDP")
    })
    .await;
    bg.still_flows("bad SDP").await;

    solo.publish(Kind::Audio).await;
    let listener = TestClient::join(&server, "solo2", "listener", ClientOptions::receive_only())
        .await
        .expect("listener joins");
    solo.wait_until(
        "the real offer is answered and the track published",
        T,
        |s| s.answers_received >= 1 && s.own_tracks.contains_key(&Kind::Audio),
    )
    .await;
    listener
        .wait_for_packets(solo.participant_id(), Kind::Audio, 25, T)
        .await;
    let s = solo.stats();
    assert_eq!(
        s.error_codes(),
        ["NEGOTIATION_FAILED", "INVALID_SDP"],
        "exactly the two provoked errors: {:?}",
        s.errors
    );
    assert!(
        s.negotiation_failures.is_empty(),
        "{:?}",
        s.negotiation_failures
    );
    assert!(s.errors.iter().all(|e| !e.fatal), "{:?}", s.errors);

    let (e, waited, closed) = silent_task.await.expect("silent socket task");
    assert_eq!(code_of(&e), "TIMEOUT", "{e:?}");
    assert!(e.fatal);
    assert!(closed, "the server closes a socket that never joined");
    assert!(
        waited >= Duration::from_secs(9),
        "the join timeout is 10 s, fired after {waited:?}"
    );
    bg.still_flows("a join timeout").await;
    bg.assert_untouched();

    solo.leave().await;
    listener.leave().await;
    bg.leave().await;
    server.shutdown().await;
}

/// A syntactically valid SDP, so a stray `answer` fails for its timing, not its text.
const MINIMAL_SDP: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n";

fn claims(meeting: &str, grants: Grants, now: SystemTime, ttl: Duration) -> token::Claims {
    token::claims_for(API_KEY, meeting, "mallory", "Mallory", grants, now, ttl)
}

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused() {
    // Two per meeting: the background meeting is full.
    let server = TestServer::start_with(|c| c.max_participants = 2).await;
    let bg = Background::start(&server).await;
    let now = SystemTime::now();
    let auth_failures = server.metric("hearth_signal_auth_failures_total").await;

    let alg_none = {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let body = serde_json::to_vec(&claims("target", Grants::default(), now, HOUR)).unwrap();
        format!("{header}.{}.", URL_SAFE_NO_PAD.encode(body))
    };
    let mut foreign = claims("target", Grants::default(), now, HOUR);
    foreign.iss = "APIsomeoneelse".into();
    let mut nobody = claims("target", Grants::default(), now, HOUR);
    nobody.sub = String::new();
    let no_create = Grants {
        create: false,
        ..Grants::default()
    };
    let no_join = Grants {
        join: false,
        ..Grants::default()
    };
    let cases: Vec<(&str, String, &str, &str)> = vec![
        ("garbage", "not a token".into(), "", "INVALID_TOKEN"),
        ("three garbage parts", "a.b.c".into(), "", "INVALID_TOKEN"),
        (
            "wrong secret",
            token::mint(
                &claims("target", Grants::default(), now, HOUR),
                "not-the-secret-at-all",
            ),
            "",
            "INVALID_TOKEN",
        ),
        (
            "unknown key",
            token::mint(&foreign, API_SECRET),
            "",
            "INVALID_TOKEN",
        ),
        ("alg none", alg_none, "", "INVALID_TOKEN"),
        ("a 10 KB token", "x".repeat(10_000), "", "INVALID_TOKEN"),
        (
            "an invalid meeting name",
            token::mint(&claims("../etc", Grants::default(), now, HOUR), API_SECRET),
            "",
            "INVALID_TOKEN",
        ),
        (
            "no identity",
            token::mint(&nobody, API_SECRET),
            "",
            "INVALID_TOKEN",
        ),
        (
            "expired",
            token::mint(
                &claims(
                    "target",
                    Grants::default(),
                    now - HOUR - Duration::from_secs(60),
                    HOUR,
                ),
                API_SECRET,
            ),
            "",
            "TOKEN_EXPIRED",
        ),
        (
            "not yet valid",
            token::mint(
                &claims(
                    "target",
                    Grants::default(),
                    now + Duration::from_secs(600),
                    HOUR,
                ),
                API_SECRET,
            ),
            "",
            "TOKEN_EXPIRED",
        ),
        (
            "wrong meeting",
            token::mint(&claims("target", Grants::default(), now, HOUR), API_SECRET),
            "background",
            "WRONG_MEETING",
        ),
        (
            "no create grant, no such meeting",
            token::mint(&claims("does-not-exist", no_create, now, HOUR), API_SECRET),
            "",
            "MEETING_NOT_FOUND",
        ),
        (
            "no join grant",
            token::mint(&claims("target", no_join, now, HOUR), API_SECRET),
            "",
            "PERMISSION_DENIED",
        ),
        (
            "a full meeting",
            token::mint(
                &claims("background", Grants::default(), now, HOUR),
                API_SECRET,
            ),
            "background",
            "MEETING_FULL",
        ),
    ];
    let auth_refusals = cases
        .iter()
        .filter(|(_, _, _, code)| {
            matches!(
                *code,
                "INVALID_TOKEN" | "TOKEN_EXPIRED" | "WRONG_MEETING" | "PERMISSION_DENIED"
            )
        })
        .count();
    for (what, token, meeting, code) in &cases {
        let mut ws = RawSignal::connect(&server).await;
        ws.send_join(token, meeting).await;
        let e = ws.expect_error(REPLY).await;
        assert_eq!(code_of(&e), *code, "{what}: {e:?}");
        assert!(e.fatal, "{what}: a refused join ends the session: {e:?}");
        assert!(ws.closed_within(REPLY).await, "{what}: socket closed");
        // The same refusal through the full client.
        let refused =
            TestClient::join_with_token(&server.ws_url(), token, meeting, ClientOptions::av())
                .await
                .err()
                .unwrap_or_else(|| panic!("{what}: the join was accepted"));
        assert_eq!(refused.code, *code, "{what}: {refused}");
        bg.still_flows(what).await;
    }
    assert_eq!(
        server.node().meeting_count(),
        1,
        "no refused join created a meeting: {:?}",
        server.node().meeting_ids()
    );
    let counted = server.metric("hearth_signal_auth_failures_total").await - auth_failures;
    assert!(
        counted >= 2.0 * auth_refusals as f64,
        "auth failures counted: {counted}, expected at least {}",
        2 * auth_refusals
    );

    // A good token with the create grant still works afterwards.
    let ok = TestClient::join(&server, "target", "good", ClientOptions::av())
        .await
        .expect("a valid token joins");
    assert_eq!(ok.stats().participants.len(), 0);
    assert_eq!(server.node().meeting_count(), 2);

    // A receive-only token joins, but the tracks it tries to send are refused.
    let no_publish = Grants {
        publish: false,
        ..Grants::default()
    };
    let listener = TestClient::join_with_token(
        &server.ws_url(),
        &token::mint(&claims("target", no_publish, now, HOUR), API_SECRET),
        "target",
        ClientOptions::av(),
    )
    .await
    .expect("a receive-only token joins");
    listener
        .wait_until("PERMISSION_DENIED for both tracks", T, |s| {
            s.errors.len() >= 2
        })
        .await;
    // It still receives: the good participant's media reaches it.
    listener
        .wait_for_media_from(&[ok.participant_id()], 25, 15, T)
        .await;
    let seen = ok.stats();
    assert!(
        seen.tracks_published
            .iter()
            .all(|t| t.participant != listener.participant_id()),
        "a receive-only participant's track was published: {:?}",
        seen.tracks_published
    );
    assert_eq!(seen.packets_from(listener.participant_id(), Kind::Audio), 0);
    let ls = listener.stats();
    assert!(ls.own_tracks.is_empty());
    // Refusals only, and none fatal. (The node repeats the refusal whenever its stack
    // re-reports the ignored track: 2 to 5 errors for 2 tracks have been seen.)
    assert!(
        ls.errors
            .iter()
            .all(|e| e.code == "PERMISSION_DENIED" && !e.fatal),
        "{:?}",
        ls.errors
    );
    bg.assert_untouched();
    listener.leave().await;
    ok.leave().await;
    bg.leave().await;
    server.shutdown().await;
}

/// The classes of garbage sent to the media port.
#[derive(Clone, Copy, Debug)]
enum Garbage {
    Random,
    TruncatedRtp,
    TruncatedRtcp,
    StunRandomUfrag,
    StunGarbled,
}

fn garbage(rng: &mut StdRng, class: Garbage) -> Vec<u8> {
    match class {
        Garbage::Random => {
            let len = rng.random_range(0..1200);
            (0..len).map(|_| rng.random()).collect()
        }
        Garbage::TruncatedRtp => {
            let full: [u8; 12] = [
                0x80,
                rng.random_range(96..128),
                rng.random(),
                rng.random(),
                1,
                2,
                3,
                4,
                rng.random(),
                rng.random(),
                rng.random(),
                rng.random(),
            ];
            full[..rng.random_range(1..12)].to_vec()
        }
        Garbage::TruncatedRtcp => {
            // A sender report header claiming 6 words, cut short (or with a lying length).
            let mut sr = vec![0x80, 200, 0x00, 0x06];
            sr.extend((0..24).map(|_| rng.random::<u8>()));
            let cut = rng.random_range(1..sr.len());
            if rng.random_bool(0.3) {
                sr[3] = rng.random();
                sr
            } else {
                sr[..cut].to_vec()
            }
        }
        Garbage::StunRandomUfrag => {
            let ufrag = random_ufrag(rng);
            stun_binding(rng, &ufrag)
        }
        Garbage::StunGarbled => {
            let ufrag = random_ufrag(rng);
            let mut msg = stun_binding(rng, &ufrag);
            match rng.random_range(0..4) {
                0 => msg.truncate(rng.random_range(0..msg.len())),
                1 => {
                    // Message length larger than the datagram.
                    msg[2] = 0xFF;
                    msg[3] = rng.random();
                }
                2 => {
                    // USERNAME attribute length running past the end.
                    let at = 20 + 8;
                    msg[at + 2] = 0x7F;
                    msg[at + 3] = 0xFF;
                }
                _ => {
                    let i = rng.random_range(0..msg.len());
                    msg[i] ^= 0xFF;
                }
            }
            msg
        }
    }
}

fn random_ufrag(rng: &mut StdRng) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let len = rng.random_range(4..=32);
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// A STUN Binding request with USERNAME `<server ufrag>:<client ufrag>`, a PRIORITY and a
/// MESSAGE-INTEGRITY that cannot verify (we do not know the password).
fn stun_binding(rng: &mut StdRng, server_ufrag: &str) -> Vec<u8> {
    let mut attrs = Vec::new();
    attrs.extend_from_slice(&[0x00, 0x24, 0x00, 0x04]);
    attrs.extend_from_slice(&rng.random::<u32>().to_be_bytes());
    let username = format!("{server_ufrag}:{}", random_ufrag(rng));
    attrs.extend_from_slice(&0x0006u16.to_be_bytes());
    attrs.extend_from_slice(&(username.len() as u16).to_be_bytes());
    attrs.extend_from_slice(username.as_bytes());
    while attrs.len() % 4 != 0 {
        attrs.push(0);
    }
    attrs.extend_from_slice(&[0x00, 0x08, 0x00, 0x14]);
    attrs.extend((0..20).map(|_| rng.random::<u8>()));
    let mut msg = vec![0x00, 0x01];
    msg.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    msg.extend_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
    msg.extend((0..12).map(|_| rng.random::<u8>()));
    msg.extend_from_slice(&attrs);
    msg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_media_port_is_dropped() {
    let server = TestServer::start().await;
    let bg = Background::start(&server).await;
    let unroutable = r#"hearth_media_dropped_total{reason="unroutable"}"#;
    let unroutable_before = server.metric(unroutable).await;
    let packets_in_before = server.metric("hearth_media_packets_in_total").await;
    let media: SocketAddr = server.media_addr();
    let server_ufrags: Vec<String> = [&bg.a, &bg.b]
        .iter()
        .filter_map(|c| c.stats().server_ufrag)
        .collect();
    assert_eq!(
        server_ufrags.len(),
        2,
        "both clients saw the server's ICE ufrag"
    );

    // Six sockets send only unroutable garbage; two more alternate STUN requests with a real
    // participant's server ufrag (forged: the integrity cannot verify) and garbage. The forged
    // requests reach that participant by ufrag and are refused by its ICE agent; because the
    // mux learns an address only once ICE validated it, the spoofers' garbage stays
    // unroutable too.
    let mut plain = Vec::new();
    for _ in 0..6 {
        plain.push(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    }
    let mut spoofers = Vec::new();
    for _ in 0..2 {
        spoofers.push(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    }
    let mut rng = StdRng::seed_from_u64(0x4EA2_7B00);
    let classes = [
        Garbage::Random,
        Garbage::TruncatedRtp,
        Garbage::TruncatedRtcp,
        Garbage::StunRandomUfrag,
        Garbage::StunGarbled,
    ];
    let gaps_before = (
        bg.a.stats()
            .stream_from(bg.b.participant_id(), Kind::Audio)
            .gaps,
        bg.b.stats()
            .stream_from(bg.a.participant_id(), Kind::Audio)
            .gaps,
    );

    const TOTAL: usize = 10_000;
    const PER_TICK: usize = 100;
    let mut unroutable_sent = 0u64;
    let mut spoofed_sent = 0u64;
    let mut spoofed_garbage = 0u64;
    // Paced at 20,000 datagrams per second: a flood of garbage, not a test of the kernel's
    // socket buffer (which would drop the background meeting's packets too).
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    let started = Instant::now();
    for batch in 0..TOTAL / PER_TICK {
        tick.tick().await;
        for i in 0..PER_TICK {
            let n = batch * PER_TICK + i;
            let class = classes[n % classes.len()];
            if n % 10 == 9 {
                // One in ten from a spoofer: spoofer k alternates forged STUN requests with
                // participant k's server ufrag (first, so its address is learned) and garbage.
                let j = n / 10;
                let k = j % 2;
                let data = if (j / 2).is_multiple_of(2) {
                    stun_binding(&mut rng, &server_ufrags[k])
                } else {
                    spoofed_garbage += 1;
                    garbage(&mut rng, class)
                };
                spoofers[k]
                    .send_to(&data, media)
                    .await
                    .expect("send spoofed");
                spoofed_sent += 1;
            } else {
                let data = garbage(&mut rng, class);
                let socket = &plain[n % plain.len()];
                socket.send_to(&data, media).await.expect("send garbage");
                unroutable_sent += 1;
            }
        }
    }
    let sending_took = started.elapsed();
    assert_eq!(unroutable_sent + spoofed_sent, TOTAL as u64);

    // Every datagram from the plain sockets is counted as unroutable, and so is the
    // spoofers' garbage (their forged checks never taught the mux their address).
    let expected = (unroutable_sent + spoofed_garbage) as f64;
    let after = server
        .wait_metric(unroutable, T, |v| v >= unroutable_before + expected)
        .await;
    assert_eq!(
        after - unroutable_before,
        expected,
        "exactly the plain sockets' datagrams and the spoofers' non-STUN garbage are \
         unroutable (forged checks are routed by ufrag and refused by ICE, never learned)"
    );
    let packets_in = server.metric("hearth_media_packets_in_total").await - packets_in_before;
    assert!(
        packets_in >= TOTAL as f64,
        "the media port received the garbage: {packets_in}"
    );

    // The background meeting carried on: media flows, nothing was lost, nobody was told.
    bg.still_flows(&format!("{TOTAL} garbage datagrams in {sending_took:?}"))
        .await;
    let gaps_after = (
        bg.a.stats()
            .stream_from(bg.b.participant_id(), Kind::Audio)
            .gaps,
        bg.b.stats()
            .stream_from(bg.a.participant_id(), Kind::Audio)
            .gaps,
    );
    assert_eq!(
        gaps_after, gaps_before,
        "background audio lost packets during the flood"
    );
    bg.assert_untouched();

    // And the node still accepts new participants, who get media.
    let late = TestClient::join(&server, "background", "late", ClientOptions::av())
        .await
        .expect("a join after the flood");
    late.wait_for_media_from(&[bg.a.participant_id(), bg.b.participant_id()], 25, 15, T)
        .await;
    let s = late.stats();
    assert!(
        s.errors.is_empty() && s.negotiation_failures.is_empty(),
        "{s:?}"
    );

    late.leave().await;
    bg.leave().await;
    server.shutdown().await;
}
