//! The REST API (`/v1` on the HTTP port) through a plain HTTP/1.1 JSON client (reqwest):
//! meetings, participants (real WebRTC participants joined over signaling), tokens, the
//! OpenAPI document, idempotency, the rate limit, and bad input of every kind, each answered
//! with RFC 9457 problem details.

use std::time::{Duration, SystemTime};

use hearth_actors::Grants;
use hearth_api::token;
use hearth_tests::{API_KEY, API_SECRET, ClientOptions, Kind, TestClient, TestServer};
use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(15);

fn admin() -> Grants {
    Grants {
        admin: true,
        ..Grants::default()
    }
}

fn mint(key: &str, secret: &str, meeting: &str, grants: Grants, ttl: Duration) -> String {
    let claims = token::claims_for(key, meeting, "app", "app", grants, SystemTime::now(), ttl);
    token::mint(&claims, secret)
}

/// A node-wide admin token of the test key.
fn node_admin() -> String {
    mint(API_KEY, API_SECRET, "", admin(), Duration::from_secs(3600))
}

/// An HTTP client for one server and one token.
struct Api {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
}

/// An answer: status, headers, and the body as JSON (Null when empty or not JSON).
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    headers: header::HeaderMap,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// Asserts a problem+json answer with this status and code.
    #[track_caller]
    fn problem(&self, status: u16, code: &str) {
        assert_eq!(self.status.as_u16(), status, "{self:?}");
        assert_eq!(
            self.header("content-type"),
            "application/problem+json",
            "{self:?}"
        );
        assert_eq!(self.body["code"], code, "{self:?}");
        assert_eq!(self.body["status"], status, "{self:?}");
        assert_eq!(self.body["type"], "about:blank", "{self:?}");
        assert!(self.body["title"].is_string(), "{self:?}");
        assert!(self.body["detail"].is_string(), "{self:?}");
    }

    #[track_caller]
    fn ok(&self, status: u16) -> &Value {
        assert_eq!(self.status.as_u16(), status, "{self:?}");
        &self.body
    }
}

impl Api {
    fn new(server: &TestServer, token: Option<String>) -> Self {
        Self {
            base: format!("http://{}", server.server.http_addr),
            http: reqwest::Client::new(),
            token,
        }
    }

    fn admin(server: &TestServer) -> Self {
        Self::new(server, Some(node_admin()))
    }

    fn with_token(&self, token: &str) -> Self {
        Self {
            base: self.base.clone(),
            http: self.http.clone(),
            token: Some(token.to_owned()),
        }
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .timeout(T);
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        req
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Answer {
        let response = req.send().await.expect("HTTP request");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("HTTP body");
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn get(&self, path: &str) -> Answer {
        self.send(self.request(Method::GET, path)).await
    }

    async fn delete(&self, path: &str) -> Answer {
        self.send(self.request(Method::DELETE, path)).await
    }

    async fn json(&self, method: Method, path: &str, body: Value) -> Answer {
        self.send(self.request(method, path).json(&body)).await
    }

    /// A raw body with a content type.
    async fn raw(&self, method: Method, path: &str, content_type: &str, body: Vec<u8>) -> Answer {
        let mut req = self.request(method, path).body(body);
        if !content_type.is_empty() {
            req = req.header(header::CONTENT_TYPE, content_type);
        }
        self.send(req).await
    }

    /// Polls `path` until `cond` holds on the answer.
    async fn get_until(&self, path: &str, what: &str, cond: impl Fn(&Answer) -> bool) -> Answer {
        let deadline = tokio::time::Instant::now() + T;
        loop {
            let answer = self.get(path).await;
            if cond(&answer) {
                return answer;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}: {answer:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn ids(list: &Value) -> Vec<String> {
    list["meetings"]
        .as_array()
        .expect("meetings array")
        .iter()
        .map(|m| m["id"].as_str().expect("id").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meetings_are_created_listed_by_page_updated_and_ended() {
    let server = TestServer::start().await;
    let api = Api::admin(&server);

    let created = api
        .json(
            Method::POST,
            "/v1/meetings",
            json!({"id": "m-00", "settings": {"maxParticipants": 7, "emptyTimeoutSeconds": 300}}),
        )
        .await;
    assert_eq!(created.header("location"), "/v1/meetings/m-00");
    let m = created.ok(201);
    assert_eq!(m["id"], "m-00");
    assert_eq!(m["participantCount"], 0);
    assert_eq!(m["settings"]["maxParticipants"], 7);
    assert_eq!(m["settings"]["emptyTimeoutSeconds"], 300);
    assert_eq!(m["participants"], json!([]));
    assert!(m["startedAt"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert!(m["actorId"].is_string());

    // Defaults filled in when settings are absent.
    for i in 1..12 {
        let answer = api
            .json(
                Method::POST,
                "/v1/meetings",
                json!({"id": format!("m-{i:02}")}),
            )
            .await;
        assert_eq!(answer.ok(201)["settings"]["maxParticipants"], 100);
    }
    api.json(Method::POST, "/v1/meetings", json!({"id": "m-00"}))
        .await
        .problem(409, "ALREADY_EXISTS");

    // Pages of 5 over 12 meetings: 5, 5, 2, in name order, with cursors in between.
    let mut seen = Vec::new();
    let mut path = "/v1/meetings?limit=5".to_owned();
    let mut pages = 0;
    loop {
        let page = api.get(&path).await;
        let body = page.ok(200);
        pages += 1;
        let page_ids = ids(body);
        assert!(page_ids.len() <= 5);
        assert!(body["meetings"][0]["participants"] == json!([]));
        seen.extend(page_ids);
        match body["nextCursor"].as_str() {
            Some(cursor) => path = format!("/v1/meetings?limit=5&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let expected: Vec<String> = (0..12).map(|i| format!("m-{i:02}")).collect();
    assert_eq!(seen, expected);
    // The default page holds them all, with no cursor.
    let all = api.get("/v1/meetings").await;
    assert_eq!(ids(all.ok(200)), expected);
    assert!(all.body.get("nextCursor").is_none());

    let got = api.get("/v1/meetings/m-03").await;
    assert_eq!(got.ok(200)["id"], "m-03");

    let updated = api
        .json(
            Method::PATCH,
            "/v1/meetings/m-03",
            json!({"settings": {"maxParticipants": 3}}),
        )
        .await;
    let body = updated.ok(200);
    assert_eq!(body["settings"]["maxParticipants"], 3);
    assert_eq!(body["settings"]["emptyTimeoutSeconds"], 5, "unchanged");
    // An empty update changes nothing.
    let same = api
        .json(Method::PATCH, "/v1/meetings/m-03", json!({}))
        .await;
    assert_eq!(same.ok(200)["settings"]["maxParticipants"], 3);
    api.json(
        Method::PATCH,
        "/v1/meetings/m-03",
        json!({"settings": {"maxParticipants": 10001}}),
    )
    .await
    .problem(400, "INVALID_ARGUMENT");
    api.json(
        Method::PATCH,
        "/v1/meetings/nope",
        json!({"settings": {"maxParticipants": 3}}),
    )
    .await
    .problem(404, "NOT_FOUND");

    let ended = api.delete("/v1/meetings/m-03").await;
    assert_eq!(ended.ok(200)["participants"], 0);
    api.get_until("/v1/meetings/m-03", "the ended meeting gone", |a| {
        a.status == StatusCode::NOT_FOUND
    })
    .await
    .problem(404, "NOT_FOUND");
    api.delete("/v1/meetings/nope")
        .await
        .problem(404, "NOT_FOUND");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participants_are_listed_muted_restricted_and_removed() {
    let server = TestServer::start().await;
    let api = Api::admin(&server);
    let ada = TestClient::join(&server, "team", "ada", ClientOptions::av())
        .await
        .expect("ada");
    let bob = TestClient::join(&server, "team", "bob", ClientOptions::receive_only())
        .await
        .expect("bob");
    let ada_id = ada.participant_id().to_owned();
    let bob_id = bob.participant_id().to_owned();
    let ada_audio = ada
        .wait_until("own audio track", T, |s| {
            s.own_tracks.contains_key(&Kind::Audio)
        })
        .await
        .own_tracks[&Kind::Audio]
        .clone();

    let listed = api
        .get_until("/v1/meetings/team/participants", "ada's 2 tracks", |a| {
            a.body["participants"]
                .as_array()
                .and_then(|ps| ps.iter().find(|p| p["id"] == ada_id.as_str()))
                .is_some_and(|p| p["tracks"].as_array().is_some_and(|t| t.len() == 2))
        })
        .await;
    let participants = listed.ok(200)["participants"].as_array().expect("array");
    assert_eq!(participants.len(), 2);
    let ada_json = &participants[0];
    assert_eq!(ada_json["id"], ada_id.as_str());
    assert!(
        ada_json["identity"]
            .as_str()
            .is_some_and(|i| i.starts_with("ada-"))
    );
    assert_eq!(ada_json["virtual"], false);
    assert_eq!(
        ada_json["permissions"],
        json!({"publish": true, "subscribe": true})
    );
    assert!(ada_json["joinedAt"].is_string());
    let kinds: Vec<&str> = ada_json["tracks"]
        .as_array()
        .expect("tracks")
        .iter()
        .map(|t| t["kind"].as_str().expect("kind"))
        .collect();
    assert!(
        kinds.contains(&"AUDIO") && kinds.contains(&"VIDEO"),
        "{kinds:?}"
    );

    let one = api
        .get(&format!("/v1/meetings/team/participants/{bob_id}"))
        .await;
    assert_eq!(one.ok(200)["id"], bob_id.as_str());
    api.get("/v1/meetings/team/participants/PA_nobody")
        .await
        .problem(404, "NOT_FOUND");
    api.get("/v1/meetings/nope/participants")
        .await
        .problem(404, "NOT_FOUND");

    // Mute ada's audio for everyone: bob is told.
    let track_path = format!("/v1/meetings/team/participants/{ada_id}/tracks/{ada_audio}");
    let muted = api
        .json(Method::PATCH, &track_path, json!({"muted": true}))
        .await;
    let track = muted.ok(200);
    assert_eq!(track["muted"], true);
    assert_eq!(track["id"], ada_audio.as_str());
    assert_eq!(track["participantId"], ada_id.as_str());
    assert_eq!(track["kind"], "AUDIO");
    bob.wait_until("trackMuted true", T, |s| {
        s.tracks_muted
            .iter()
            .any(|(t, m)| t.track == ada_audio && *m)
    })
    .await;
    let unmuted = api
        .json(Method::PATCH, &track_path, json!({"muted": false}))
        .await;
    assert_eq!(unmuted.ok(200)["muted"], false);
    api.json(
        Method::PATCH,
        &format!("/v1/meetings/team/participants/{bob_id}/tracks/{ada_audio}"),
        json!({"muted": true}),
    )
    .await
    .problem(404, "NOT_FOUND");
    api.json(Method::PATCH, &track_path, json!({"muted": "yes"}))
        .await
        .problem(400, "INVALID_ARGUMENT");

    // Permissions: both required, both applied.
    let perms_path = format!("/v1/meetings/team/participants/{bob_id}/permissions");
    let restricted = api
        .json(
            Method::PUT,
            &perms_path,
            json!({"publish": false, "subscribe": false}),
        )
        .await;
    assert_eq!(
        restricted.ok(200)["permissions"],
        json!({"publish": false, "subscribe": false})
    );
    api.json(Method::PUT, &perms_path, json!({"publish": true}))
        .await
        .problem(400, "INVALID_ARGUMENT");
    let restored = api
        .json(
            Method::PUT,
            &perms_path,
            json!({"publish": true, "subscribe": true}),
        )
        .await;
    assert_eq!(
        restored.ok(200)["permissions"],
        json!({"publish": true, "subscribe": true})
    );

    // Remove bob: he is told, and the list shrinks to ada.
    let removed = api
        .delete(&format!("/v1/meetings/team/participants/{bob_id}"))
        .await;
    assert_eq!(removed.status, StatusCode::NO_CONTENT);
    bob.wait_until("removed", T, |s| {
        s.error_codes().contains(&"REMOVED") || s.meeting_ended.is_some() || s.closed
    })
    .await;
    api.get_until("/v1/meetings/team/participants", "bob gone", |a| {
        a.body["participants"]
            .as_array()
            .is_some_and(|p| p.len() == 1)
    })
    .await;
    api.delete(&format!("/v1/meetings/team/participants/{bob_id}"))
        .await
        .problem(404, "NOT_FOUND");

    // Ending the meeting reports who was in it.
    let ended = api.delete("/v1/meetings/team").await;
    assert_eq!(ended.ok(200)["participants"], 1);
    ada.wait_until("meetingEnded", T, |s| s.meeting_ended.is_some())
        .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minted_tokens_join_and_manage() {
    let server = TestServer::start().await;
    let api = Api::admin(&server);
    let minted = api
        .json(
            Method::POST,
            "/v1/tokens",
            json!({"meeting": "hall", "identity": "cy", "name": "Cy", "ttlSeconds": 600}),
        )
        .await;
    let body = minted.ok(200);
    let jwt = body["token"].as_str().expect("token").to_owned();
    assert!(body["expiresAt"].as_str().is_some_and(|t| t.ends_with('Z')));
    let claims = server
        .server
        .state
        .keys
        .verify(&jwt, SystemTime::now())
        .expect("a valid token");
    assert_eq!(claims.meeting, "hall");
    assert_eq!(claims.sub, "cy");
    assert_eq!(claims.name, "Cy");
    assert!(claims.grants.join && claims.grants.publish && !claims.grants.admin);

    let cy = TestClient::join_with_token(
        &server.ws_url(),
        &jwt,
        "hall",
        ClientOptions::receive_only(),
    )
    .await
    .expect("cy joins with the minted token");
    let listed = api.get("/v1/meetings/hall/participants").await;
    assert_eq!(listed.ok(200)["participants"][0]["id"], cy.participant_id());
    assert_eq!(listed.body["participants"][0]["name"], "Cy");

    // A node-wide admin token needs no meeting; any other token does.
    let ops = api
        .json(
            Method::POST,
            "/v1/tokens",
            json!({"identity": "ops", "grants": {"admin": true}}),
        )
        .await;
    let ops_token = ops.ok(200)["token"].as_str().expect("token").to_owned();
    assert_eq!(
        ids(api.with_token(&ops_token).get("/v1/meetings").await.ok(200)),
        ["hall"]
    );
    api.json(Method::POST, "/v1/tokens", json!({"identity": "x"}))
        .await
        .problem(400, "INVALID_ARGUMENT");
    api.json(
        Method::POST,
        "/v1/tokens",
        json!({"meeting": "hall", "identity": "x", "ttlSeconds": 40 * 24 * 3600}),
    )
    .await
    .problem(400, "INVALID_ARGUMENT");
    api.json(
        Method::POST,
        "/v1/tokens",
        json!({"meeting": "bad name", "identity": "x"}),
    )
    .await
    .problem(400, "INVALID_ARGUMENT");

    // A meeting-scoped admin mints only for its meeting.
    let scoped = api.with_token(&mint(
        API_KEY,
        API_SECRET,
        "hall",
        admin(),
        Duration::from_secs(600),
    ));
    scoped
        .json(
            Method::POST,
            "/v1/tokens",
            json!({"meeting": "hall", "identity": "d"}),
        )
        .await
        .ok(200);
    scoped
        .json(
            Method::POST,
            "/v1/tokens",
            json!({"meeting": "other", "identity": "d"}),
        )
        .await
        .problem(403, "PERMISSION_DENIED");
    scoped
        .json(
            Method::POST,
            "/v1/tokens",
            json!({"identity": "d", "grants": {"admin": true}}),
        )
        .await
        .problem(403, "PERMISSION_DENIED");
    drop(cy);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_checked_like_grpc() {
    let server = TestServer::start().await;
    let api = Api::admin(&server);
    api.json(Method::POST, "/v1/meetings", json!({"id": "a"}))
        .await
        .ok(201);
    api.json(Method::POST, "/v1/meetings", json!({"id": "b"}))
        .await
        .ok(201);
    let hour = Duration::from_secs(3600);

    let anonymous = Api::new(&server, None);
    let answer = anonymous.get("/v1/meetings").await;
    answer.problem(401, "UNAUTHENTICATED");
    assert!(answer.header("www-authenticate").starts_with("Bearer"));
    let forged = api.with_token(&mint(
        API_KEY,
        "not-the-secret-0123456789",
        "",
        admin(),
        hour,
    ));
    forged
        .get("/v1/meetings")
        .await
        .problem(401, "UNAUTHENTICATED");
    let unknown_key = api.with_token(&mint("APIother", API_SECRET, "", admin(), hour));
    unknown_key
        .get("/v1/meetings")
        .await
        .problem(401, "UNAUTHENTICATED");
    let mut claims = token::claims_for(API_KEY, "", "app", "app", admin(), SystemTime::now(), hour);
    claims.exp = claims.iat.saturating_sub(1);
    let expired = api.with_token(&token::mint(&claims, API_SECRET));
    let answer = expired.get("/v1/meetings").await;
    answer.problem(401, "UNAUTHENTICATED");
    assert!(
        answer.body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("expired"))
    );
    api.with_token("not.a.jwt")
        .get("/v1/meetings")
        .await
        .problem(401, "UNAUTHENTICATED");
    let basic = anonymous
        .send(
            anonymous
                .request(Method::GET, "/v1/meetings")
                .header(header::AUTHORIZATION, "Basic YWRhOnNlY3JldA=="),
        )
        .await;
    basic.problem(401, "UNAUTHENTICATED");

    // A participant's token (no admin grant) manages nothing.
    let participant = api.with_token(&server.token("a", "p", Grants::default()));
    participant
        .get("/v1/meetings/a")
        .await
        .problem(403, "PERMISSION_DENIED");

    // A meeting-scoped admin token sees and manages its meeting only.
    let scoped = api.with_token(&mint(API_KEY, API_SECRET, "a", admin(), hour));
    assert_eq!(ids(scoped.get("/v1/meetings").await.ok(200)), ["a"]);
    scoped.get("/v1/meetings/a").await.ok(200);
    scoped
        .get("/v1/meetings/b")
        .await
        .problem(403, "PERMISSION_DENIED");
    scoped
        .delete("/v1/meetings/b")
        .await
        .problem(403, "PERMISSION_DENIED");
    scoped
        .get("/v1/meetings/b/participants")
        .await
        .problem(403, "PERMISSION_DENIED");
    scoped
        .json(Method::POST, "/v1/meetings", json!({"id": "c"}))
        .await
        .problem(403, "PERMISSION_DENIED");
    // Both meetings still there.
    assert_eq!(ids(api.get("/v1/meetings").await.ok(200)), ["a", "b"]);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_problem_details() {
    let server = TestServer::start().await;
    let api = Api::admin(&server);

    // Unknown paths and methods on the HTTP port: 404/405 problem+json, never gRPC.
    for path in ["/v1/anything", "/v1", "/nope", "/v1/meetings/a/b/c/d/e/f"] {
        let answer = api.get(path).await;
        answer.problem(404, "NOT_FOUND");
        assert!(answer.header("grpc-status").is_empty(), "{answer:?}");
    }
    api.json(Method::POST, "/v1/anything", json!({}))
        .await
        .problem(404, "NOT_FOUND");
    let answer = api.send(api.request(Method::PUT, "/v1/meetings")).await;
    answer.problem(405, "UNIMPLEMENTED");
    assert!(answer.header("allow").contains("GET"), "{answer:?}");
    api.send(api.request(Method::DELETE, "/v1/tokens"))
        .await
        .problem(405, "UNIMPLEMENTED");
    api.send(api.request(Method::POST, "/healthz"))
        .await
        .problem(405, "UNIMPLEMENTED");
    // A gRPC path without a gRPC content type is an unknown HTTP path.
    api.json(Method::POST, "/hearth.v1.MeetingService/List", json!({}))
        .await
        .problem(404, "NOT_FOUND");

    // Bodies.
    let json_type = "application/json";
    api.raw(
        Method::POST,
        "/v1/meetings",
        json_type,
        b"{\"id\": ".to_vec(),
    )
    .await
    .problem(400, "INVALID_ARGUMENT");
    api.raw(Method::POST, "/v1/meetings", json_type, b"[1, 2]".to_vec())
        .await
        .problem(400, "INVALID_ARGUMENT");
    api.raw(Method::POST, "/v1/meetings", json_type, Vec::new())
        .await
        .problem(400, "INVALID_ARGUMENT");
    api.json(Method::POST, "/v1/meetings", json!({"id": 5}))
        .await
        .problem(400, "INVALID_ARGUMENT");
    api.json(
        Method::POST,
        "/v1/meetings",
        json!({"id": "x", "settings": {"maxParticipants": -1}}),
    )
    .await
    .problem(400, "INVALID_ARGUMENT");
    api.json(
        Method::POST,
        "/v1/meetings",
        json!({"id": "x", "settings": {"maxParticipants": 1e12}}),
    )
    .await
    .problem(400, "INVALID_ARGUMENT");
    let unknown = api
        .json(
            Method::POST,
            "/v1/meetings",
            json!({"id": "x", "colour": "red"}),
        )
        .await;
    unknown.problem(400, "INVALID_ARGUMENT");
    assert!(
        unknown.body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("colour"))
    );
    api.json(
        Method::POST,
        "/v1/meetings",
        json!({"id": "x", "settings": {"maxParticipant": 3}}),
    )
    .await
    .problem(400, "INVALID_ARGUMENT");
    api.json(
        Method::POST,
        "/v1/tokens",
        json!({"meeting": "x", "identity": "i", "grants": {"root": true}}),
    )
    .await
    .problem(400, "INVALID_ARGUMENT");
    api.json(Method::POST, "/v1/meetings", json!({"id": "bad name!"}))
        .await
        .problem(400, "INVALID_ARGUMENT");
    api.json(Method::POST, "/v1/meetings", json!({"id": "x".repeat(129)}))
        .await
        .problem(400, "INVALID_ARGUMENT");
    api.raw(
        Method::POST,
        "/v1/meetings",
        "text/plain",
        b"{\"id\":\"x\"}".to_vec(),
    )
    .await
    .problem(415, "INVALID_ARGUMENT");
    api.raw(Method::POST, "/v1/meetings", "", b"{\"id\":\"x\"}".to_vec())
        .await
        .problem(415, "INVALID_ARGUMENT");
    // Larger than 64 KiB (a valid JSON document), with and without an Idempotency-Key.
    let huge = serde_json::to_vec(&json!({"id": "x".repeat(100 * 1024)})).expect("json");
    api.raw(Method::POST, "/v1/meetings", json_type, huge.clone())
        .await
        .problem(413, "RESOURCE_EXHAUSTED");
    api.send(
        api.request(Method::POST, "/v1/meetings")
            .header(header::CONTENT_TYPE, json_type)
            .header("idempotency-key", "huge")
            .body(huge.clone()),
    )
    .await
    .problem(413, "RESOURCE_EXHAUSTED");
    api.raw(Method::PATCH, "/v1/meetings/x", json_type, huge)
        .await
        .problem(413, "RESOURCE_EXHAUSTED");

    // Paths and queries.
    api.get("/v1/meetings/bad%20name")
        .await
        .problem(400, "INVALID_ARGUMENT");
    api.get("/v1/meetings/%FF")
        .await
        .problem(400, "INVALID_ARGUMENT");
    for query in [
        "limit=0",
        "limit=101",
        "limit=x",
        "limit=-1",
        "cursor=!!!",
        "cursor=bm90IGEgbmFtZQ", // base64url of "not a name"
        "cursor=%FF",
    ] {
        api.get(&format!("/v1/meetings?{query}"))
            .await
            .problem(400, "INVALID_ARGUMENT");
    }
    let long_cursor = "A".repeat(1000);
    api.get(&format!("/v1/meetings?cursor={long_cursor}"))
        .await
        .problem(400, "INVALID_ARGUMENT");
    let long_pid = "P".repeat(65);
    api.json(Method::POST, "/v1/meetings", json!({"id": "x"}))
        .await
        .ok(201);
    api.get(&format!("/v1/meetings/x/participants/{long_pid}"))
        .await
        .problem(400, "INVALID_ARGUMENT");

    // The node still serves after all that.
    assert_eq!(ids(api.get("/v1/meetings").await.ok(200)), ["x"]);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_replay_the_first_answer() {
    let server = TestServer::start().await;
    let api = Api::admin(&server);
    let post = |key: &str, body: Value| {
        api.request(Method::POST, "/v1/meetings")
            .header("idempotency-key", key)
            .json(&body)
    };
    let first = api.send(post("k1", json!({"id": "once"}))).await;
    assert_eq!(first.ok(201)["id"], "once");
    assert_eq!(first.header("idempotent-replayed"), "");
    let again = api.send(post("k1", json!({"id": "once"}))).await;
    assert_eq!(again.status, StatusCode::CREATED, "{again:?}");
    assert_eq!(again.body, first.body);
    assert_eq!(again.header("location"), "/v1/meetings/once");
    assert_eq!(again.header("idempotent-replayed"), "true");
    // The same key with another body is refused; another key runs the request again.
    api.send(post("k1", json!({"id": "twice"})))
        .await
        .problem(422, "INVALID_ARGUMENT");
    api.send(post("k2", json!({"id": "once"})))
        .await
        .problem(409, "ALREADY_EXISTS");
    // Refusals are remembered too.
    let refused = api.send(post("k2", json!({"id": "once"}))).await;
    refused.problem(409, "ALREADY_EXISTS");
    assert_eq!(refused.header("idempotent-replayed"), "true");
    api.send(post("", json!({"id": "y"})))
        .await
        .problem(400, "INVALID_ARGUMENT");

    // Tokens: a retried mint gives the same token.
    let mint_req = |key: &str| {
        api.request(Method::POST, "/v1/tokens")
            .header("idempotency-key", key)
            .json(&json!({"meeting": "once", "identity": "i"}))
    };
    let t1 = api.send(mint_req("t")).await;
    let t2 = api.send(mint_req("t")).await;
    assert_eq!(t1.ok(200)["token"], t2.ok(200)["token"]);

    // All of that created one meeting.
    assert_eq!(ids(api.get("/v1/meetings").await.ok(200)), ["once"]);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_is_per_api_key_with_retry_after() {
    const OTHER_KEY: &str = "APIother";
    const OTHER_SECRET: &str = "other-secret-0123456789";
    let server = TestServer::start_with(|c| c.keys.insert(OTHER_KEY, OTHER_SECRET)).await;
    let api = Api::admin(&server);
    // Hammer with 8 requests at a time until one is refused (the burst is 100).
    let mut limited = None;
    'outer: for _ in 0..100 {
        let batch: Vec<_> = (0..8).map(|_| api.get("/v1/meetings/none")).collect();
        for answer in futures::future::join_all(batch).await {
            if answer.status == StatusCode::TOO_MANY_REQUESTS {
                limited = Some(answer);
                break 'outer;
            }
            answer.problem(404, "NOT_FOUND");
        }
    }
    let limited = limited.expect("a 429 within 800 requests");
    limited.problem(429, "RESOURCE_EXHAUSTED");
    let retry_after: u64 = limited
        .header("retry-after")
        .parse()
        .expect("Retry-After seconds");
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    // Another API key is not limited by the first one's traffic.
    let other = api.with_token(&mint(
        OTHER_KEY,
        OTHER_SECRET,
        "",
        admin(),
        Duration::from_secs(600),
    ));
    other.get("/v1/meetings").await.ok(200);
    // Unauthenticated requests are refused before the limit is consulted.
    Api::new(&server, None)
        .get("/v1/meetings")
        .await
        .problem(401, "UNAUTHENTICATED");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_the_api() {
    let server = TestServer::start().await;
    // No token needed.
    let doc = Api::new(&server, None).get("/v1/openapi.json").await;
    assert_eq!(doc.header("content-type"), "application/json");
    let doc = doc.ok(200);
    assert_eq!(doc["openapi"], "3.1.0");
    for (path, method) in [
        ("/v1/meetings", "post"),
        ("/v1/meetings", "get"),
        ("/v1/meetings/{id}", "get"),
        ("/v1/meetings/{id}", "patch"),
        ("/v1/meetings/{id}", "delete"),
        ("/v1/meetings/{id}/participants", "get"),
        ("/v1/meetings/{id}/participants/{pid}", "get"),
        ("/v1/meetings/{id}/participants/{pid}", "delete"),
        ("/v1/meetings/{id}/participants/{pid}/tracks/{tid}", "patch"),
        ("/v1/meetings/{id}/participants/{pid}/permissions", "put"),
        ("/v1/tokens", "post"),
    ] {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} missing"
        );
    }
    let schemas = &doc["components"]["schemas"];
    for name in [
        "Meeting",
        "Participant",
        "Track",
        "Problem",
        "MintToken",
        "Token",
    ] {
        assert!(schemas[name].is_object(), "schema {name}");
    }
    assert_eq!(schemas["CreateMeeting"]["additionalProperties"], false);
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    // The document is what the code generates.
    assert_eq!(
        doc,
        &serde_json::to_value(hearth_api::rest::openapi()).expect("document")
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_still_answers_on_the_http_port() {
    use hearth_proto::v1 as pb;
    let server = TestServer::start().await;
    let channel =
        tonic::transport::Channel::from_shared(format!("http://{}", server.server.http_addr))
            .expect("uri")
            .connect()
            .await
            .expect("connect");
    let mut meetings = pb::meeting_service_client::MeetingServiceClient::new(channel);
    let mut request = tonic::Request::new(pb::CreateMeetingRequest {
        id: "g".into(),
        settings: None,
        metadata: String::new(),
    });
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", node_admin()).parse().expect("ascii"),
    );
    meetings.create(request).await.expect("gRPC Create");
    // ... and REST sees the same meeting.
    let api = Api::admin(&server);
    assert_eq!(ids(api.get("/v1/meetings").await.ok(200)), ["g"]);
    server.shutdown().await;
}

/// `hearth token --admin` without `--meeting` mints a node-wide admin token offline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hearth_token_admin_without_meeting() {
    let server = TestServer::start().await;
    let hearth = hearth_tests::workspace_bin("hearth");
    let run = |args: &[&str]| {
        std::process::Command::new(&hearth)
            .arg("token")
            .args(args)
            .args(["--api-key", API_KEY, "--api-secret", API_SECRET])
            .env_remove("HEARTH_CONFIG")
            .output()
            .expect("run hearth token")
    };
    let out = run(&["--admin", "--identity", "ops"]);
    assert!(out.status.success(), "{out:?}");
    let jwt = String::from_utf8(out.stdout).expect("utf-8");
    let claims = server
        .server
        .state
        .keys
        .verify(jwt.trim(), SystemTime::now())
        .expect("valid");
    assert_eq!(claims.meeting, "");
    assert!(claims.grants.admin);
    Api::new(&server, Some(jwt.trim().to_owned()))
        .get("/v1/meetings")
        .await
        .ok(200);
    // `--meeting ""` (as the README once said) works too; a non-admin token needs a meeting.
    assert!(
        run(&["--admin", "--meeting", "", "--identity", "ops"])
            .status
            .success()
    );
    let refused = run(&["--identity", "ops"]);
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    server.shutdown().await;
}

/// A request that outlives the deadline is answered 504 DEADLINE_EXCEEDED: the REST router
/// of a running node served alone with a 300 ms deadline, and a client that sends its
/// headers and half its body, then stalls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_its_deadline_gets_504() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start().await;
    let state = std::sync::Arc::clone(&server.server.state);
    let limits = hearth_api::rest::Limits {
        request_timeout: Duration::from_millis(300),
        ..hearth_api::rest::Limits::default()
    };
    let app =
        hearth_api::rest::router_with(std::sync::Arc::clone(&state), limits).with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let serving = tokio::spawn(async move { axum::serve(listener, app).await });

    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /v1/meetings HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{{\"id\": ",
        node_admin()
    );
    stream.write_all(head.as_bytes()).await.expect("send");
    let started = std::time::Instant::now();
    let mut response = Vec::new();
    tokio::time::timeout(T, stream.read_to_end(&mut response))
        .await
        .expect("an answer before the test's deadline")
        .expect("read");
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 504"), "{text}");
    assert!(text.contains("application/problem+json"), "{text}");
    assert!(text.contains("\"DEADLINE_EXCEEDED\""), "{text}");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    // Nothing was created.
    Api::admin(&server)
        .get("/v1/meetings")
        .await
        .ok(200)
        .get("meetings")
        .map(|m| assert_eq!(m, &json!([])))
        .expect("meetings");
    serving.abort();
    server.shutdown().await;
}

/// `POST /v1/meetings/{id}/messages` reaches every participant over signaling, or only the
/// named ones; a named participant who is not there means nobody gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_reach_the_participants_over_signaling() {
    let server = TestServer::start().await;
    let api = Api::admin(&server);
    let ada = TestClient::join(&server, "chat", "ada", ClientOptions::receive_only())
        .await
        .expect("ada");
    let bob = TestClient::join(&server, "chat", "bob", ClientOptions::receive_only())
        .await
        .expect("bob");

    let sent = api
        .json(
            Method::POST,
            "/v1/meetings/chat/messages",
            json!({"text": "The meeting ends in 5 minutes.", "from": "Host"}),
        )
        .await;
    let body = sent.ok(202).clone();
    assert_eq!(body["delivered"], 2);
    let id = body["id"].as_str().expect("an id").to_owned();
    assert!(id.starts_with("MS_"), "{id}");
    for client in [&ada, &bob] {
        let stats = client
            .wait_until("the app message", T, |s| !s.app_messages.is_empty())
            .await;
        let m = &stats.app_messages[0];
        assert_eq!(
            (m.id.as_str(), m.text.as_str(), m.from.as_str()),
            (id.as_str(), "The meeting ends in 5 minutes.", "Host")
        );
        assert!(m.sent_at_ms > 0);
    }

    // Only to ada.
    let only = api
        .json(
            Method::POST,
            "/v1/meetings/chat/messages",
            json!({"text": "just you", "to": [ada.participant_id()]}),
        )
        .await;
    assert_eq!(only.ok(202)["delivered"], 1);
    ada.wait_until("the second message", T, |s| s.app_messages.len() == 2)
        .await;
    assert_eq!(ada.stats().app_messages[1].from, "", "from the app itself");

    // A named participant who is not there: 404, and nobody gets anything.
    api.json(
        Method::POST,
        "/v1/meetings/chat/messages",
        json!({"text": "lost", "to": [ada.participant_id(), "PA_nobodyhere0"]}),
    )
    .await
    .problem(404, "NOT_FOUND");
    // Refused bodies.
    for (body, status, code) in [
        (json!({"text": ""}), 400, "INVALID_ARGUMENT"),
        (json!({"text": "x".repeat(4097)}), 400, "INVALID_ARGUMENT"),
        (
            json!({"text": "hi", "from": "x".repeat(257)}),
            400,
            "INVALID_ARGUMENT",
        ),
        (json!({"text": 5}), 400, "INVALID_ARGUMENT"),
        (json!({"text": "hi", "unknown": 1}), 400, "INVALID_ARGUMENT"),
    ] {
        api.json(Method::POST, "/v1/meetings/chat/messages", body.clone())
            .await
            .problem(status, code);
    }
    api.json(
        Method::POST,
        "/v1/meetings/nomeeting/messages",
        json!({"text": "hi"}),
    )
    .await
    .problem(404, "NOT_FOUND");
    // Only the messages that were accepted arrived: bob's one, ada's two. A last message
    // to both is the marker that nothing refused slipped in before it.
    api.json(
        Method::POST,
        "/v1/meetings/chat/messages",
        json!({"text": "marker"}),
    )
    .await
    .ok(202);
    let bob_seen = bob
        .wait_until("the marker", T, |s| {
            s.app_messages.last().is_some_and(|m| m.text == "marker")
        })
        .await;
    assert_eq!(bob_seen.app_messages.len(), 2);
    let ada_seen = ada
        .wait_until("the marker", T, |s| {
            s.app_messages.last().is_some_and(|m| m.text == "marker")
        })
        .await;
    assert_eq!(ada_seen.app_messages.len(), 3);
    server.shutdown().await;
}

/// A meeting's metadata: set at create, read back, given to joiners, changed with PATCH
/// (participants get `meetingUpdated`), bounded in size, and kept when the meeting actor
/// restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meeting_metadata_is_set_updated_and_told_to_participants() {
    let server = TestServer::start().await;
    let api = Api::admin(&server);
    let created = api
        .json(
            Method::POST,
            "/v1/meetings",
            json!({"id": "meta", "metadata": "{\"topic\":\"standup\"}"}),
        )
        .await;
    assert_eq!(created.ok(201)["metadata"], "{\"topic\":\"standup\"}");
    let ada = TestClient::join(&server, "meta", "ada", ClientOptions::receive_only())
        .await
        .expect("ada");
    assert_eq!(ada.stats().meeting_metadata, "{\"topic\":\"standup\"}");

    // Settings alone leave the metadata as it is and tell nobody.
    let same = api
        .json(
            Method::PATCH,
            "/v1/meetings/meta",
            json!({"settings": {"maxParticipants": 10}}),
        )
        .await;
    assert_eq!(same.ok(200)["metadata"], "{\"topic\":\"standup\"}");
    let updated = api
        .json(
            Method::PATCH,
            "/v1/meetings/meta",
            json!({"metadata": "retro"}),
        )
        .await;
    assert_eq!(updated.ok(200)["metadata"], "retro");
    let seen = ada
        .wait_until("meetingUpdated", T, |s| s.meeting_metadata == "retro")
        .await;
    assert_eq!(seen.meeting_updates, 1);
    assert_eq!(
        api.get("/v1/meetings/meta").await.ok(200)["metadata"],
        "retro"
    );

    // Too big: refused, nothing changes.
    api.json(
        Method::PATCH,
        "/v1/meetings/meta",
        json!({"metadata": "x".repeat(16 * 1024 + 1)}),
    )
    .await
    .problem(400, "INVALID_ARGUMENT");
    assert_eq!(
        api.get("/v1/meetings/meta").await.ok(200)["metadata"],
        "retro"
    );

    // A restarted meeting keeps it.
    assert!(server.inject_meeting_fault("meta"));
    let after = api
        .get_until("/v1/meetings/meta", "the restarted meeting", |a| {
            a.status == StatusCode::OK && a.body["actorId"] != updated.body["actorId"]
        })
        .await;
    assert_eq!(after.ok(200)["metadata"], "retro");
    server.shutdown().await;
}
