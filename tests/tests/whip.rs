//! WHIP (RFC 9725) and WHEP over plain HTTP (reqwest): the exchange, the resource (trickle,
//! ICE restart, If-Match, DELETE), WHEP placing a publisher's tracks into the
//! viewer's receiving sections, the session ending with what it watches, and bad input of
//! every kind refused before anything exists for it. Media through these sessions is
//! exercised with aiortc and Chromium in `tests/browser/whip.test.mjs`.

use std::time::Duration;

use hearth_actors::{Grants, MeetingId};
use hearth_tests::{ClientOptions, Kind, TestClient, TestServer};
use reqwest::{StatusCode, header};
use serde_json::Value;

const T: Duration = Duration::from_secs(15);

const SESSION: &str = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
a=fingerprint:sha-256 11:22:33:44\r\na=ice-ufrag:cliu\r\na=ice-pwd:clientpassword0123456789\r\n";

/// An encoder's offer: Opus and VP8, send-only.
fn publish_offer() -> String {
    format!(
        "{SESSION}a=group:BUNDLE 0 1\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=setup:actpass\r\n\
a=rtcp-mux\r\na=sendonly\r\na=rtpmap:111 opus/48000/2\r\na=ssrc:1111 cname:enc\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\na=setup:actpass\r\n\
a=rtcp-mux\r\na=sendonly\r\na=rtpmap:96 VP8/90000\r\na=ssrc:2222 cname:enc\r\n"
    )
}

/// A player's offer: receive-only sections of `kinds`, in order.
fn play_offer(kinds: &[&str]) -> String {
    let mut sdp = format!(
        "{SESSION}a=group:BUNDLE {}\r\n",
        (0..kinds.len())
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    );
    for (mid, kind) in kinds.iter().enumerate() {
        let codec = if *kind == "audio" {
            "111\r\nc=IN IP4 0.0.0.0\r\na=rtpmap:111 opus/48000/2"
        } else {
            "96 97\r\nc=IN IP4 0.0.0.0\r\na=rtpmap:96 VP8/90000\r\na=rtcp-fb:96 nack pli\r\n\
a=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96"
        };
        sdp.push_str(&format!(
            "m={kind} 9 UDP/TLS/RTP/SAVPF {codec}\r\na=mid:{mid}\r\na=setup:actpass\r\n\
a=rtcp-mux\r\na=recvonly\r\n"
        ));
    }
    sdp
}

struct Http {
    base: String,
    client: reqwest::Client,
}

#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: header::HeaderMap,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// A problem+json refusal with this status and code.
    #[track_caller]
    fn problem(&self, status: u16, code: &str) {
        assert_eq!(self.status.as_u16(), status, "{self:?}");
        assert_eq!(
            self.header("content-type"),
            "application/problem+json",
            "{self:?}"
        );
        let body: Value = serde_json::from_str(&self.body).expect("problem JSON");
        assert_eq!(body["code"], code, "{self:?}");
        assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()));
    }
}

impl Http {
    fn new(server: &TestServer) -> Self {
        Self {
            base: format!("http://{}", server.server.http_addr),
            client: reqwest::Client::new(),
        }
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        content_type: Option<&str>,
        body: impl Into<reqwest::Body>,
        extra: &[(&str, &str)],
    ) -> Reply {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .timeout(T)
            .body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(ct) = content_type {
            req = req.header(header::CONTENT_TYPE, ct);
        }
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        let response = req.send().await.expect("HTTP request");
        Reply {
            status: response.status(),
            headers: response.headers().clone(),
            body: response.text().await.expect("HTTP body"),
        }
    }

    async fn post_sdp(&self, path: &str, token: &str, sdp: String) -> Reply {
        self.send(
            reqwest::Method::POST,
            path,
            Some(token),
            Some("application/sdp"),
            sdp,
            &[],
        )
        .await
    }

    async fn patch(&self, path: &str, token: &str, frag: &str, extra: &[(&str, &str)]) -> Reply {
        self.send(
            reqwest::Method::PATCH,
            path,
            Some(token),
            Some("application/trickle-ice-sdpfrag"),
            frag.to_owned(),
            extra,
        )
        .await
    }

    async fn delete(&self, path: &str, token: &str) -> Reply {
        self.send(reqwest::Method::DELETE, path, Some(token), None, "", &[])
            .await
    }
}

/// The participant ids in `meeting` (empty when it is not live).
async fn members(server: &TestServer, meeting: &str) -> Vec<String> {
    let id = MeetingId::parse(meeting).expect("name");
    match server.node().meeting(&id).await {
        Some(s) => s
            .participants
            .iter()
            .map(|m| m.info.id.to_string())
            .collect(),
        None => Vec::new(),
    }
}

async fn members_until(
    server: &TestServer,
    meeting: &str,
    what: &str,
    cond: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let m = members(server, meeting).await;
        if cond(&m) {
            return m;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; members {m:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whip_publisher_is_a_participant_until_its_resource_is_deleted() {
    let server = TestServer::start().await;
    let http = Http::new(&server);
    let token = server.token("stage", "encoder", Grants::default());

    let created = http.post_sdp("/whip/stage", &token, publish_offer()).await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    assert_eq!(created.header("content-type"), "application/sdp");
    let location = created.header("location").to_owned();
    assert!(location.starts_with("/whip/stage/PA_"), "{location}");
    let etag = created.header("etag").to_owned();
    assert!(etag.starts_with('"') && etag.len() > 2, "{etag}");
    let links: Vec<&str> = created
        .headers
        .get_all(header::LINK)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    assert!(
        links.iter().any(|l| l.starts_with("<turn:")
            && l.contains("rel=\"ice-server\"")
            && l.contains("credential-type=\"password\"")),
        "TURN in Link headers: {links:?}"
    );
    let answer = &created.body;
    for line in [
        "a=ice-lite",
        "a=setup:passive",
        "a=recvonly",
        "a=candidate:",
    ] {
        assert!(answer.contains(line), "{line} in {answer}");
    }
    assert_eq!(created.header("access-control-allow-origin"), "*");
    let id = location.rsplit('/').next().unwrap().to_owned();
    assert_eq!(members(&server, "stage").await, vec![id.clone()]);

    // Trickle: taken (204); If-Match must name the session.
    let frag = "a=ice-ufrag:cliu\r\na=ice-pwd:clientpassword0123456789\r\na=mid:0\r\n\
a=candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host\r\n";
    let r = http
        .patch(&location, &token, frag, &[("if-match", &etag)])
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{r:?}");
    let r = http
        .patch(&location, &token, frag, &[("if-match", "\"other\"")])
        .await;
    r.problem(412, "FAILED_PRECONDITION");
    // An ICE restart: our new credentials and candidate come back with a new ETag; the old
    // ETag no longer matches; a fragment without a password is refused; restarts are bounded.
    let restart = frag
        .replace("cliu", "newu")
        .replace("clientpassword", "newclientpasswrd");
    let r = http
        .patch(&location, &token, &restart, &[("if-match", "*")])
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.header("content-type"), "application/trickle-ice-sdpfrag");
    let new_etag = r.header("etag").to_owned();
    assert_ne!(new_etag, etag);
    let ufrag_line = |sdp: &str| {
        sdp.lines()
            .find(|l| l.starts_with("a=ice-ufrag:"))
            .map(str::to_owned)
    };
    assert!(
        r.body.contains("a=ice-pwd:") && r.body.contains("a=candidate:"),
        "{}",
        r.body
    );
    assert_ne!(
        ufrag_line(&r.body),
        ufrag_line(&created.body),
        "new credentials"
    );
    let r = http
        .patch(&location, &token, frag, &[("if-match", &etag)])
        .await;
    r.problem(412, "FAILED_PRECONDITION");
    let no_pwd = "a=ice-ufrag:other1\r\na=mid:0\r\n";
    http.patch(&location, &token, no_pwd, &[])
        .await
        .problem(400, "INVALID_ARGUMENT");
    for i in 0..5 {
        let again = restart.replace("newu", &format!("nu{i}x"));
        let r = http.patch(&location, &token, &again, &[]).await;
        assert_eq!(r.status, StatusCode::OK, "restart {i}: {r:?}");
    }
    let r = http
        .patch(&location, &token, &restart.replace("newu", "last"), &[])
        .await;
    r.problem(429, "RESOURCE_EXHAUSTED");
    let r = http
        .send(
            reqwest::Method::PATCH,
            &location,
            Some(&token),
            Some("application/sdp"),
            frag.to_owned(),
            &[],
        )
        .await;
    r.problem(415, "INVALID_ARGUMENT");

    // Someone else's token cannot end it; a token of another meeting neither.
    let other = server.token("stage", "someone-else", Grants::default());
    http.delete(&location, &other)
        .await
        .problem(403, "PERMISSION_DENIED");
    let elsewhere = server.token("elsewhere", "encoder", Grants::default());
    http.delete(&location, &elsewhere)
        .await
        .problem(403, "PERMISSION_DENIED");
    assert_eq!(members(&server, "stage").await, vec![id.clone()]);

    let r = http.delete(&location, &token).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    members_until(&server, "stage", "the publisher gone", |m| m.is_empty()).await;
    http.delete(&location, &token)
        .await
        .problem(404, "NOT_FOUND");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whep_places_what_it_watches_in_the_players_offer_and_ends_with_it() {
    let server = TestServer::start().await;
    let http = Http::new(&server);
    let ada = TestClient::join(&server, "show", "ada", ClientOptions::av())
        .await
        .expect("ada joins");
    let ada_id = ada.participant_id().to_owned();
    let tracks = ada
        .wait_until("both own tracks", T, |s| s.own_tracks.len() == 2)
        .await
        .own_tracks;
    let viewer = server.token("show", "viewer", Grants::default());

    // By participant: both of ada's tracks, in the player's sections, with our SSRCs.
    let r = http
        .post_sdp(
            &format!("/whep/show/{ada_id}"),
            &viewer,
            play_offer(&["audio", "video"]),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    let location = r.header("location").to_owned();
    assert!(
        location.starts_with(&format!("/whep/show/{ada_id}/PA_")),
        "{location}"
    );
    assert_eq!(r.body.matches("a=sendonly").count(), 2, "{}", r.body);
    assert_eq!(r.body.matches("a=msid:").count(), 2, "{}", r.body);
    assert!(
        r.body.contains("a=ssrc-group:FID "),
        "video with RTX: {}",
        r.body
    );
    assert!(!r.body.contains("a=recvonly"), "{}", r.body);

    // By track: only that one; the other section stays inactive.
    let video_track = tracks[&Kind::Video].clone();
    let r2 = http
        .post_sdp(
            &format!("/whep/show/{video_track}"),
            &viewer,
            play_offer(&["audio", "video"]),
        )
        .await;
    assert_eq!(r2.status, StatusCode::CREATED, "{r2:?}");
    assert_eq!(r2.body.matches("a=sendonly").count(), 1, "{}", r2.body);
    assert!(r2.body.contains("m=audio") && r2.body.contains("a=inactive"));
    let before = members(&server, "show").await;
    assert_eq!(before.len(), 3, "ada and two players: {before:?}");
    assert_eq!(server.server.state.http_sessions.len(), 2);

    // The publisher leaves: both players' sessions end with it.
    ada.leave().await;
    members_until(&server, "show", "the players gone with ada", |m| {
        m.is_empty()
    })
    .await;
    let deadline = tokio::time::Instant::now() + T;
    while !server.server.state.http_sessions.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "sessions forgotten");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    http.delete(&location, &viewer)
        .await
        .problem(404, "NOT_FOUND");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_whip_and_whep_requests_are_refused_before_anything_exists() {
    let server = TestServer::start().await;
    let http = Http::new(&server);
    let token = server.token("room", "enc", Grants::default());
    let post = |token: Option<String>, ct: Option<&'static str>, body: Vec<u8>| {
        let http = &http;
        async move {
            http.send(
                reqwest::Method::POST,
                "/whip/room",
                token.as_deref(),
                ct,
                body,
                &[],
            )
            .await
        }
    };
    let sdp = || publish_offer().into_bytes();
    post(None, Some("application/sdp"), sdp())
        .await
        .problem(401, "UNAUTHENTICATED");
    post(Some("not.a.token".into()), Some("application/sdp"), sdp())
        .await
        .problem(401, "UNAUTHENTICATED");
    let other_meeting = server.token("another", "enc", Grants::default());
    post(Some(other_meeting), Some("application/sdp"), sdp())
        .await
        .problem(403, "PERMISSION_DENIED");
    let no_publish = server.token(
        "room",
        "enc",
        Grants {
            publish: false,
            ..Grants::default()
        },
    );
    post(Some(no_publish), Some("application/sdp"), sdp())
        .await
        .problem(403, "PERMISSION_DENIED");
    post(Some(token.clone()), Some("text/plain"), sdp())
        .await
        .problem(415, "INVALID_ARGUMENT");
    post(Some(token.clone()), None, sdp())
        .await
        .problem(415, "INVALID_ARGUMENT");
    let mut huge = publish_offer();
    while huge.len() <= 64 * 1024 {
        huge.push_str("a=x-padding:0123456789012345678901234567890123456789\r\n");
    }
    post(
        Some(token.clone()),
        Some("application/sdp"),
        huge.into_bytes(),
    )
    .await
    .problem(413, "RESOURCE_EXHAUSTED");
    for bad in [
        b"hello".to_vec(),
        vec![0xff, 0xfe, 0x00, 0x01],
        publish_offer().replace("a=ice-pwd", "a=x-pwd").into_bytes(),
        publish_offer()
            .replace("a=fingerprint", "a=x-fp")
            .into_bytes(),
        publish_offer()
            .replace("a=setup:actpass", "a=setup:passive")
            .into_bytes(),
        // 17 published sections: more than a participant may publish.
        format!(
            "{SESSION}{}",
            (0..17)
                .map(|i| format!(
                    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:{i}\r\n\
a=setup:actpass\r\na=sendonly\r\na=rtpmap:111 opus/48000/2\r\n"
                ))
                .collect::<String>()
        )
        .into_bytes(),
    ] {
        post(Some(token.clone()), Some("application/sdp"), bad)
            .await
            .problem(400, "INVALID_ARGUMENT");
    }
    // Nothing was created by any of them.
    assert!(server.node().meeting_ids().is_empty());
    assert_eq!(server.node().participant_count(), 0);

    // WHEP: a meeting that is not live, an unknown source, a participant that publishes
    // nothing, no subscribe grant.
    let viewer = server.token("room", "viewer", Grants::default());
    http.post_sdp("/whep/room/PA_nobody", &viewer, play_offer(&["video"]))
        .await
        .problem(404, "NOT_FOUND");
    let quiet = TestClient::join(&server, "room", "quiet", ClientOptions::receive_only())
        .await
        .expect("quiet joins");
    for source in ["TR_unknown", "PA_unknown", "nobody", quiet.participant_id()] {
        http.post_sdp(
            &format!("/whep/room/{source}"),
            &viewer,
            play_offer(&["video"]),
        )
        .await
        .problem(404, "NOT_FOUND");
    }
    let no_subscribe = server.token(
        "room",
        "viewer",
        Grants {
            subscribe: false,
            ..Grants::default()
        },
    );
    http.post_sdp(
        &format!("/whep/room/{}", quiet.participant_id()),
        &no_subscribe,
        play_offer(&["video"]),
    )
    .await
    .problem(403, "PERMISSION_DENIED");
    assert_eq!(members(&server, "room").await.len(), 1, "only quiet");

    // The endpoint still serves a good publisher.
    let ok = http.post_sdp("/whip/room", &token, publish_offer()).await;
    assert_eq!(ok.status, StatusCode::CREATED, "{ok:?}");
    assert_eq!(members(&server, "room").await.len(), 2);
    quiet.leave().await;
    server.shutdown().await;
}
