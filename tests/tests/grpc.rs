//! The gRPC API (`hearth.v1`) through tonic clients generated from `proto/`: every service,
//! its auth failures, embedding end to end (RTP out of and into a meeting with real WebRTC
//! participants), hostile input, and the operator's drills.

use std::time::{Duration, SystemTime};

use hearth_actors::Grants;
use hearth_api::token;
use hearth_proto::v1 as pb;
use hearth_tests::{API_KEY, API_SECRET, ClientOptions, Kind, TestClient, TestServer};
use pb::admin_service_client::AdminServiceClient;
use pb::event_service_client::EventServiceClient;
use pb::media_service_client::MediaServiceClient;
use pb::meeting_service_client::MeetingServiceClient;
use pb::participant_service_client::ParticipantServiceClient;
use pb::token_service_client::TokenServiceClient;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::{Code, Request};

const T: Duration = Duration::from_secs(15);

fn admin_grants() -> Grants {
    Grants {
        admin: true,
        ..Grants::default()
    }
}

fn mint(meeting: &str, grants: Grants, secret: &str, ttl: Duration, now: SystemTime) -> String {
    let claims = token::claims_for(API_KEY, meeting, "app", "app", grants, now, ttl);
    token::mint(&claims, secret)
}

/// A gRPC connection with a bearer token.
#[derive(Clone)]
struct Api {
    channel: Channel,
    token: Option<String>,
}

impl Api {
    async fn connect(server: &TestServer) -> Api {
        let url = format!("http://{}", server.server.http_addr);
        let channel = Channel::from_shared(url)
            .expect("url")
            .connect()
            .await
            .expect("gRPC shares the HTTP port");
        Api {
            channel,
            token: Some(mint(
                "",
                admin_grants(),
                API_SECRET,
                Duration::from_secs(600),
                SystemTime::now(),
            )),
        }
    }

    fn with_token(&self, token: Option<String>) -> Api {
        Api {
            channel: self.channel.clone(),
            token,
        }
    }

    fn req<M>(&self, message: M) -> Request<M> {
        let mut r = Request::new(message);
        if let Some(t) = &self.token {
            r.metadata_mut().insert(
                "authorization",
                format!("Bearer {t}").parse().expect("ascii"),
            );
        }
        r
    }

    fn meetings(&self) -> MeetingServiceClient<Channel> {
        MeetingServiceClient::new(self.channel.clone())
    }
    fn participants(&self) -> ParticipantServiceClient<Channel> {
        ParticipantServiceClient::new(self.channel.clone())
    }
    fn tokens(&self) -> TokenServiceClient<Channel> {
        TokenServiceClient::new(self.channel.clone())
    }
    fn events(&self) -> EventServiceClient<Channel> {
        EventServiceClient::new(self.channel.clone())
    }
    fn media(&self) -> MediaServiceClient<Channel> {
        MediaServiceClient::new(self.channel.clone())
    }
    fn admin(&self) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.channel.clone())
    }

    async fn tree(&self) -> Vec<pb::ActorInfo> {
        self.admin()
            .actor_tree(self.req(pb::ActorTreeRequest {}))
            .await
            .expect("ActorTree")
            .into_inner()
            .actors
    }

    /// Polls the actor tree until `cond` holds (no sleeps: a short interval, a deadline).
    async fn wait_tree(&self, what: &str, cond: impl Fn(&[pb::ActorInfo]) -> bool) {
        let deadline = tokio::time::Instant::now() + T;
        loop {
            let tree = self.tree().await;
            if cond(&tree) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for the actor tree: {what}\n{tree:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Waits until `client` has received `n` packets of `kind` from `from`.
async fn media_from(client: &TestClient, from: &str, kind: Kind, n: u64) {
    client
        .wait_until(&format!("{n} {kind:?} packets from {from}"), T, |s| {
            s.packets_from(from, kind) >= n
        })
        .await;
}

fn code<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> Code {
    r.expect_err("the call must fail").code()
}

/// RFC 6716 section 3.4: the structural rules every Opus packet obeys.
fn is_valid_opus(p: &[u8]) -> bool {
    let Some(&toc) = p.first() else {
        return false;
    };
    let body = &p[1..];
    match toc & 0x3 {
        0 => body.len() <= 1275,
        1 => body.len().is_multiple_of(2) && body.len() / 2 <= 1275,
        2 => {
            let Some((&b0, rest)) = body.split_first() else {
                return false;
            };
            let (n1, rest) = if b0 < 252 {
                (usize::from(b0), rest)
            } else {
                let Some((&b1, rest)) = rest.split_first() else {
                    return false;
                };
                (usize::from(b1) * 4 + usize::from(b0), rest)
            };
            n1 <= rest.len() && n1 <= 1275 && rest.len() - n1 <= 1275
        }
        _ => body.first().is_some_and(|&m| (m & 0x3f) > 0),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_without_a_valid_admin_token_are_refused_with_the_right_codes() {
    let server = TestServer::start().await;
    let api = Api::connect(&server).await;
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);
    let none = api.with_token(None);
    let wrong_secret = api.with_token(Some(mint("", admin_grants(), "nope", hour, now)));
    let expired = api.with_token(Some(mint(
        "",
        admin_grants(),
        API_SECRET,
        Duration::from_secs(1),
        now - Duration::from_secs(3600),
    )));
    let not_admin = api.with_token(Some(mint("", Grants::default(), API_SECRET, hour, now)));
    let garbage = api.with_token(Some("not.a.jwt".into()));
    for (what, client, want) in [
        ("no token", &none, Code::Unauthenticated),
        ("wrong secret", &wrong_secret, Code::Unauthenticated),
        ("expired", &expired, Code::Unauthenticated),
        ("garbage", &garbage, Code::Unauthenticated),
        ("no admin grant", &not_admin, Code::PermissionDenied),
    ] {
        let list = client
            .meetings()
            .list(client.req(pb::ListMeetingsRequest {}))
            .await;
        assert_eq!(code(list), want, "MeetingService.List, {what}");
        let participants = client
            .participants()
            .list(client.req(pb::ListParticipantsRequest {
                meeting: "m".into(),
            }))
            .await;
        assert_eq!(code(participants), want, "ParticipantService.List, {what}");
        let mint = client
            .tokens()
            .mint(client.req(pb::MintTokenRequest {
                meeting: "m".into(),
                identity: "u".into(),
                ..Default::default()
            }))
            .await;
        assert_eq!(code(mint), want, "TokenService.Mint, {what}");
        let events = client
            .events()
            .subscribe(client.req(pb::SubscribeEventsRequest::default()))
            .await;
        assert_eq!(code(events), want, "EventService.Subscribe, {what}");
        let tap = client
            .media()
            .subscribe_track(client.req(pb::SubscribeTrackRequest {
                meeting: "m".into(),
                track_id: "TR_x".into(),
            }))
            .await;
        assert_eq!(code(tap), want, "MediaService.SubscribeTrack, {what}");
        let info = client
            .admin()
            .node_info(client.req(pb::NodeInfoRequest {}))
            .await;
        assert_eq!(code(info), want, "AdminService.NodeInfo, {what}");
    }

    // A meeting-scoped admin token manages its meeting only, and nothing node-wide.
    let scoped = api.with_token(Some(mint("room-a", admin_grants(), API_SECRET, hour, now)));
    scoped
        .meetings()
        .create(scoped.req(pb::CreateMeetingRequest {
            id: "room-a".into(),
            settings: None,
            metadata: String::new(),
        }))
        .await
        .expect("its own meeting");
    let other = scoped
        .meetings()
        .create(scoped.req(pb::CreateMeetingRequest {
            id: "room-b".into(),
            settings: None,
            metadata: String::new(),
        }))
        .await;
    assert_eq!(code(other), Code::PermissionDenied);
    let tree = scoped
        .admin()
        .actor_tree(scoped.req(pb::ActorTreeRequest {}))
        .await;
    assert_eq!(code(tree), Code::PermissionDenied);
    let listed = scoped
        .meetings()
        .list(scoped.req(pb::ListMeetingsRequest {}))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(
        listed.meetings.len(),
        1,
        "a scoped token sees its meeting only"
    );
    // A scoped admin cannot mint node-wide (or another meeting's) tokens, admin or not.
    for (meeting, grants) in [
        ("", Some(admin_grants())),
        ("", None),
        ("room-b", Some(admin_grants())),
    ] {
        let minted = scoped
            .tokens()
            .mint(scoped.req(pb::MintTokenRequest {
                meeting: meeting.into(),
                identity: "escalate".into(),
                grants: grants.map(|g| pb::Grants {
                    join: g.join,
                    publish: g.publish,
                    subscribe: g.subscribe,
                    create: g.create,
                    admin: g.admin,
                    captions: g.captions,
                }),
                ..Default::default()
            }))
            .await;
        assert_eq!(code(minted), Code::PermissionDenied, "meeting {meeting:?}");
    }
    // A minted token never outlives the token that minted it.
    let short = api.with_token(Some(mint(
        "",
        admin_grants(),
        API_SECRET,
        Duration::from_secs(120),
        now,
    )));
    let minted = short
        .tokens()
        .mint(short.req(pb::MintTokenRequest {
            meeting: "room-a".into(),
            identity: "heir".into(),
            ttl_seconds: 30 * 24 * 3600,
            ..Default::default()
        }))
        .await
        .expect("mint")
        .into_inner();
    let expires = minted.expires_at.expect("an expiry").seconds;
    let caller_expires = now
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
        + 120;
    assert!(
        expires as u64 <= caller_expires,
        "the minted token expires at {expires}, after its minter ({caller_expires})"
    );
    let claims = server
        .server
        .state
        .keys
        .verify(&minted.token, SystemTime::now())
        .expect("the minted token verifies");
    assert_eq!(claims.exp, expires as u64);
    assert!(
        server
            .metric("hearth_grpc_auth_failures_total")
            .await
            .ge(&30.0),
        "auth failures are counted"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meetings_are_created_listed_updated_and_ended_over_grpc() {
    let server = TestServer::start().await;
    let api = Api::connect(&server).await;
    let mut meetings = api.meetings();
    let created = meetings
        .create(api.req(pb::CreateMeetingRequest {
            id: "standup".into(),
            settings: Some(pb::MeetingSettings {
                max_participants: 2,
                empty_timeout_seconds: 60,
                transcription: None,
            }),
            metadata: String::new(),
        }))
        .await
        .expect("Create")
        .into_inner();
    assert_eq!(created.id, "standup");
    assert_eq!(created.participant_count, 0);
    let settings = created.settings.expect("settings");
    assert_eq!(
        (settings.max_participants, settings.empty_timeout_seconds),
        (2, 60)
    );
    assert!(!created.actor_id.is_empty());

    let again = meetings
        .create(api.req(pb::CreateMeetingRequest {
            id: "standup".into(),
            settings: None,
            metadata: String::new(),
        }))
        .await;
    assert_eq!(code(again), Code::AlreadyExists);
    let bad = meetings
        .create(api.req(pb::CreateMeetingRequest {
            id: "no spaces!".into(),
            settings: None,
            metadata: String::new(),
        }))
        .await;
    assert_eq!(code(bad), Code::InvalidArgument);
    let unknown = meetings
        .get(api.req(pb::GetMeetingRequest { id: "nope".into() }))
        .await;
    assert_eq!(code(unknown), Code::NotFound);

    // The settings hold: a third participant is refused.
    let a = TestClient::join(&server, "standup", "ada", ClientOptions::receive_only())
        .await
        .expect("ada joins");
    let b = TestClient::join(&server, "standup", "bob", ClientOptions::receive_only())
        .await
        .expect("bob joins");
    let c = TestClient::join(&server, "standup", "cy", ClientOptions::receive_only()).await;
    assert_eq!(c.err().map(|e| e.code).as_deref(), Some("MEETING_FULL"));

    let got = meetings
        .get(api.req(pb::GetMeetingRequest {
            id: "standup".into(),
        }))
        .await
        .expect("Get")
        .into_inner();
    assert_eq!(got.participant_count, 2);
    let ids: Vec<&str> = got.participants.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, vec![a.participant_id(), b.participant_id()]);

    let updated = meetings
        .update(api.req(pb::UpdateMeetingRequest {
            id: "standup".into(),
            settings: Some(pb::MeetingSettings {
                max_participants: 3,
                empty_timeout_seconds: 0,
                transcription: None,
            }),
            metadata: Some("board: Q3".into()),
        }))
        .await
        .expect("Update")
        .into_inner()
        .settings
        .expect("settings");
    assert_eq!(
        (updated.max_participants, updated.empty_timeout_seconds),
        (3, 60)
    );
    let c = TestClient::join(&server, "standup", "cy", ClientOptions::receive_only())
        .await
        .expect("room for a third now");
    assert_eq!(
        c.stats().meeting_metadata,
        "board: Q3",
        "gRPC Update set the metadata"
    );

    let list = meetings
        .list(api.req(pb::ListMeetingsRequest {}))
        .await
        .expect("List")
        .into_inner();
    assert_eq!(list.meetings.len(), 1);
    assert_eq!(list.meetings[0].participant_count, 3);

    let ended = meetings
        .end(api.req(pb::EndMeetingRequest {
            id: "standup".into(),
        }))
        .await
        .expect("End")
        .into_inner();
    assert_eq!(ended.participants, 3);
    for client in [&a, &b, &c] {
        client
            .wait_until("meetingEnded ended_by_api", T, |s| {
                s.meeting_ended.as_deref() == Some("ended_by_api")
            })
            .await;
    }
    server.wait_meeting_count(T, |n| n == 0).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participants_are_muted_restricted_and_removed_over_grpc() {
    let server = TestServer::start().await;
    let api = Api::connect(&server).await;
    let mut ps = api.participants();
    let ada = TestClient::join(&server, "team", "ada", ClientOptions::av())
        .await
        .expect("ada");
    let bob = TestClient::join(&server, "team", "bob", ClientOptions::receive_only())
        .await
        .expect("bob");
    media_from(&bob, ada.participant_id(), Kind::Audio, 20).await;
    let ada_audio = ada
        .wait_until("own audio track", T, |s| {
            s.own_tracks.contains_key(&Kind::Audio)
        })
        .await
        .own_tracks[&Kind::Audio]
        .clone();

    let listed = ps
        .list(api.req(pb::ListParticipantsRequest {
            meeting: "team".into(),
        }))
        .await
        .expect("List")
        .into_inner()
        .participants;
    assert_eq!(listed.len(), 2);
    let ada_info = listed
        .iter()
        .find(|p| p.id == ada.participant_id())
        .expect("ada listed");
    assert!(ada_info.identity.starts_with("ada-"));
    assert_eq!(ada_info.tracks.len(), 2);
    assert!(!ada_info.r#virtual);

    // Server-side mute: bob is told and receives nothing more of that track.
    let track = ps
        .mute_track(api.req(pb::MuteTrackRequest {
            meeting: "team".into(),
            participant_id: ada.participant_id().into(),
            track_id: ada_audio.clone(),
            muted: true,
        }))
        .await
        .expect("MuteTrack")
        .into_inner();
    assert!(track.muted);
    bob.wait_until("trackMuted true", T, |s| {
        s.tracks_muted
            .iter()
            .any(|(t, m)| t.track == ada_audio && *m)
    })
    .await;
    // Packets already queued may still land; after that, the count stays put while ada's
    // video keeps flowing.
    let video_before = bob.stats().packets_from(ada.participant_id(), Kind::Video);
    bob.wait_until("more video from ada", T, |s| {
        s.packets_from(ada.participant_id(), Kind::Video) >= video_before + 30
    })
    .await;
    let audio_settled = bob.stats().packets_from(ada.participant_id(), Kind::Audio);
    let video_now = bob.stats().packets_from(ada.participant_id(), Kind::Video);
    bob.wait_until("another 30 video packets", T, |s| {
        s.packets_from(ada.participant_id(), Kind::Video) >= video_now + 30
    })
    .await;
    assert_eq!(
        bob.stats().packets_from(ada.participant_id(), Kind::Audio),
        audio_settled,
        "a muted track is not forwarded"
    );
    ps.mute_track(api.req(pb::MuteTrackRequest {
        meeting: "team".into(),
        participant_id: ada.participant_id().into(),
        track_id: ada_audio.clone(),
        muted: false,
    }))
    .await
    .expect("unmute");
    media_from(&bob, ada.participant_id(), Kind::Audio, audio_settled + 20).await;

    let wrong_track = ps
        .mute_track(api.req(pb::MuteTrackRequest {
            meeting: "team".into(),
            participant_id: bob.participant_id().into(),
            track_id: ada_audio.clone(),
            muted: true,
        }))
        .await;
    assert_eq!(code(wrong_track), Code::NotFound);

    // Revoking subscribe withdraws ada's tracks from bob; restoring it brings them back.
    let bob_view = ps
        .update_permissions(api.req(pb::UpdatePermissionsRequest {
            meeting: "team".into(),
            participant_id: bob.participant_id().into(),
            permissions: Some(pb::Permissions {
                publish: true,
                subscribe: false,
            }),
        }))
        .await
        .expect("UpdatePermissions")
        .into_inner();
    assert_eq!(
        bob_view.permissions.map(|p| (p.publish, p.subscribe)),
        Some((true, false))
    );
    let stopped_at = bob.stats().packets_from(ada.participant_id(), Kind::Audio);
    ps.update_permissions(api.req(pb::UpdatePermissionsRequest {
        meeting: "team".into(),
        participant_id: bob.participant_id().into(),
        permissions: Some(pb::Permissions {
            publish: true,
            subscribe: true,
        }),
    }))
    .await
    .expect("restore");
    media_from(&bob, ada.participant_id(), Kind::Audio, stopped_at + 20).await;

    // Revoking publish withdraws ada's tracks from everyone; granting it back makes them
    // visible (and flowing) again, without ada doing anything.
    let publish = |allowed: bool| pb::UpdatePermissionsRequest {
        meeting: "team".into(),
        participant_id: ada.participant_id().into(),
        permissions: Some(pb::Permissions {
            publish: allowed,
            subscribe: true,
        }),
    };
    ps.update_permissions(api.req(publish(false)))
        .await
        .expect("revoke publish");
    bob.wait_until("ada's tracks unpublished", T, |s| {
        s.tracks_unpublished
            .iter()
            .filter(|t| t.participant == ada.participant_id())
            .count()
            >= 2
    })
    .await;
    let listed = ps
        .get(api.req(pb::ParticipantRequest {
            meeting: "team".into(),
            participant_id: ada.participant_id().into(),
        }))
        .await
        .expect("Get")
        .into_inner();
    assert!(
        listed.tracks.is_empty(),
        "a revoked publisher lists no tracks"
    );
    let published_before = bob.stats().tracks_published.len();
    let revoked_at = bob.stats().packets_from(ada.participant_id(), Kind::Audio);
    ps.update_permissions(api.req(publish(true)))
        .await
        .expect("grant publish back");
    bob.wait_until("ada's tracks published again", T, |s| {
        s.tracks_published.len() >= published_before + 2
    })
    .await;
    media_from(&bob, ada.participant_id(), Kind::Audio, revoked_at + 20).await;

    // Remove: bob is gone, ada sees why.
    ps.remove(api.req(pb::ParticipantRequest {
        meeting: "team".into(),
        participant_id: bob.participant_id().into(),
    }))
    .await
    .expect("Remove");
    ada.wait_until("bob removed", T, |s| {
        s.saw_left(bob.participant_id(), "removed")
    })
    .await;
    let gone = ps
        .get(api.req(pb::ParticipantRequest {
            meeting: "team".into(),
            participant_id: bob.participant_id().into(),
        }))
        .await;
    assert_eq!(code(gone), Code::NotFound);
    let twice = ps
        .remove(api.req(pb::ParticipantRequest {
            meeting: "team".into(),
            participant_id: bob.participant_id().into(),
        }))
        .await;
    assert_eq!(code(twice), Code::NotFound);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minted_tokens_join_and_events_stream_and_resume() {
    let server = TestServer::start().await;
    let api = Api::connect(&server).await;
    let mut events = api
        .events()
        .subscribe(api.req(pb::SubscribeEventsRequest {
            meeting: "evt".into(),
            resume_after: 0,
            ..Default::default()
        }))
        .await
        .expect("Subscribe")
        .into_inner();

    let minted = api
        .tokens()
        .mint(api.req(pb::MintTokenRequest {
            meeting: "evt".into(),
            identity: "zoe".into(),
            name: "Zoe".into(),
            grants: None,
            ttl_seconds: 600,
        }))
        .await
        .expect("Mint")
        .into_inner();
    let zoe = TestClient::join_with_token(
        &server.ws_url(),
        &minted.token,
        "evt",
        ClientOptions {
            publish_audio: true,
            publish_video: false,
            screen: false,
            accept_rtx: false,
        },
    )
    .await
    .expect("a minted token joins");
    let bad = api
        .tokens()
        .mint(api.req(pb::MintTokenRequest {
            meeting: "evt".into(),
            identity: String::new(),
            ..Default::default()
        }))
        .await;
    assert_eq!(code(bad), Code::InvalidArgument);

    // meetingStarted, participantJoined, trackPublished, in order, numbered.
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let e = tokio::time::timeout(T, events.next())
            .await
            .expect("an event in time")
            .expect("stream open")
            .expect("event");
        seen.push(e);
    }
    use pb::event::Kind as E;
    assert!(matches!(seen[0].kind, Some(E::MeetingStarted(_))));
    match &seen[1].kind {
        Some(E::ParticipantJoined(j)) => {
            let p = j.participant.as_ref().expect("participant");
            assert_eq!((p.identity.as_str(), p.name.as_str()), ("zoe", "Zoe"));
        }
        other => panic!("expected participantJoined, got {other:?}"),
    }
    assert!(matches!(seen[2].kind, Some(E::TrackPublished(_))));
    assert_eq!(seen[1].sequence, seen[0].sequence + 1);
    assert_eq!(seen[2].sequence, seen[1].sequence + 1);
    assert!(seen.iter().all(|e| e.meeting == "evt"));

    // A reader that lost its stream resumes exactly after the last event it saw.
    let mut resumed = api
        .events()
        .subscribe(api.req(pb::SubscribeEventsRequest {
            meeting: "evt".into(),
            resume_after: seen[0].sequence,
            ..Default::default()
        }))
        .await
        .expect("resume")
        .into_inner();
    for want in &seen[1..] {
        let got = tokio::time::timeout(T, resumed.next())
            .await
            .expect("replayed")
            .expect("open")
            .expect("event");
        assert_eq!(&got, want);
    }
    // From the oldest retained event: this node's first event is the meeting's start.
    let mut all = api
        .events()
        .subscribe(api.req(pb::SubscribeEventsRequest {
            meeting: String::new(),
            resume_after: 0,
            from_oldest: true,
        }))
        .await
        .expect("from the oldest")
        .into_inner();
    let oldest = tokio::time::timeout(T, all.next())
        .await
        .expect("replayed")
        .expect("open")
        .expect("event");
    assert_eq!(oldest, seen[0]);
    // Sequence numbers from the future are refused, and do not hurt the log.
    let future = api
        .events()
        .subscribe(api.req(pb::SubscribeEventsRequest {
            meeting: String::new(),
            resume_after: u64::MAX,
            from_oldest: false,
        }))
        .await;
    assert_eq!(code(future), Code::OutOfRange);
    zoe.leave().await;
    let left = loop {
        let e = tokio::time::timeout(T, events.next())
            .await
            .expect("more events")
            .expect("open")
            .expect("event");
        if let Some(E::ParticipantLeft(l)) = e.kind {
            break l;
        }
    };
    assert_eq!(left.reason, "left");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_pulls_rtp_out_of_a_meeting_and_pushes_a_track_into_it() {
    let server = TestServer::start().await;
    let api = Api::connect(&server).await;
    let ada = TestClient::join(
        &server,
        "embed",
        "ada",
        ClientOptions {
            publish_audio: true,
            publish_video: false,
            screen: false,
            accept_rtx: false,
        },
    )
    .await
    .expect("ada");
    let bob = TestClient::join(&server, "embed", "bob", ClientOptions::receive_only())
        .await
        .expect("bob");
    let ada_audio = ada
        .wait_until("own audio track", T, |s| {
            s.own_tracks.contains_key(&Kind::Audio)
        })
        .await
        .own_tracks[&Kind::Audio]
        .clone();

    // Out: ada's audio as RTP, continuous, valid Opus.
    let mut tap = api
        .media()
        .subscribe_track(api.req(pb::SubscribeTrackRequest {
            meeting: "embed".into(),
            track_id: ada_audio.clone(),
        }))
        .await
        .expect("SubscribeTrack")
        .into_inner();
    let first = tokio::time::timeout(T, tap.next())
        .await
        .expect("started in time")
        .expect("open")
        .expect("message");
    match first.kind {
        Some(pb::track_packet::Kind::Started(s)) => {
            let codec = s.codec.expect("codec");
            assert_eq!(codec.mime_type.to_ascii_lowercase(), "audio/opus");
            assert_eq!(codec.clock_rate, 48_000);
            assert_eq!(s.track.expect("track").participant_id, ada.participant_id());
        }
        other => panic!("expected started, got {other:?}"),
    }
    let mut last: Option<u16> = None;
    for _ in 0..100 {
        let msg = tokio::time::timeout(T, tap.next())
            .await
            .expect("packets keep coming")
            .expect("open")
            .expect("message");
        let Some(pb::track_packet::Kind::Rtp(p)) = msg.kind else {
            panic!("expected rtp");
        };
        let parsed = hearth_engine::rtp::parse(&p.data).expect("a well-formed RTP packet");
        assert!(
            is_valid_opus(&parsed.payload),
            "an Opus packet: {:02x?}",
            &parsed.payload[..4.min(parsed.payload.len())]
        );
        if let Some(prev) = last {
            assert_eq!(
                parsed.seq,
                prev.wrapping_add(1),
                "sequence numbers continue"
            );
        }
        last = Some(parsed.seq);
        assert_eq!(p.dropped, 0);
    }
    // The tap is in the tree under the meeting; dropping the stream removes it.
    api.wait_tree("a track tap", |t| t.iter().any(|a| a.kind == "track_tap"))
        .await;
    drop(tap);
    api.wait_tree("no track tap once the reader went away", |t| {
        !t.iter().any(|a| a.kind == "track_tap")
    })
    .await;

    // In: the app pushes an Opus track; bob receives it from the virtual participant.
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tx.send(hearth_tests::opus_start("embed", "bot"))
        .await
        .expect("queue");
    let mut responses = api
        .media()
        .publish_track(api.req(tokio_stream::wrappers::ReceiverStream::new(rx)))
        .await
        .expect("PublishTrack")
        .into_inner();
    let started = tokio::time::timeout(T, responses.next())
        .await
        .expect("started in time")
        .expect("open")
        .expect("message");
    let Some(pb::publish_track_response::Kind::Started(started)) = started.kind else {
        panic!("expected started");
    };
    assert!(started.participant_id.starts_with("PA_"));
    let pusher = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for seq in 0..u16::MAX {
            tick.tick().await;
            let mut payload = vec![0xFC];
            payload.extend_from_slice(&[seq as u8; 40]);
            if tx
                .send(hearth_tests::opus_rtp(seq, &payload))
                .await
                .is_err()
            {
                break;
            }
        }
    });
    media_from(&bob, &started.participant_id, Kind::Audio, 50).await;
    let from_bot = bob
        .stats()
        .stream_from(&started.participant_id, Kind::Audio);
    assert_eq!(from_bot.lost, 0, "no loss on loopback: {from_bot:?}");
    let got = api
        .participants()
        .get(api.req(pb::ParticipantRequest {
            meeting: "embed".into(),
            participant_id: started.participant_id.clone(),
        }))
        .await
        .expect("the bot is a participant")
        .into_inner();
    assert!(got.r#virtual);
    assert_eq!(got.tracks.len(), 1);

    // Hanging up makes the virtual participant leave.
    pusher.abort();
    drop(responses);
    ada.wait_until("the bot left", T, |s| {
        s.saw_left(&started.participant_id, "left")
    })
    .await;
    api.wait_tree("no virtual participant", |t| {
        !t.iter().any(|a| a.kind == "virtual_participant")
    })
    .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_media_streams_end_with_invalid_argument_and_the_meeting_carries_on() {
    let server = TestServer::start().await;
    let api = Api::connect(&server).await;
    let ada = TestClient::join(&server, "hostile", "ada", ClientOptions::av())
        .await
        .expect("ada");
    let bob = TestClient::join(&server, "hostile", "bob", ClientOptions::receive_only())
        .await
        .expect("bob");
    media_from(&bob, ada.participant_id(), Kind::Audio, 10).await;

    async fn publish(api: &Api, msgs: Vec<pb::PublishTrackRequest>) -> tonic::Status {
        let stream = tokio_stream::iter(msgs).chain(tokio_stream::pending());
        match api.media().publish_track(api.req(stream)).await {
            Err(status) => status,
            Ok(response) => {
                let mut responses = response.into_inner();
                loop {
                    match tokio::time::timeout(T, responses.next())
                        .await
                        .expect("the stream ends in time")
                    {
                        Some(Ok(_)) => continue,
                        Some(Err(status)) => return status,
                        None => panic!("the stream ended without an error"),
                    }
                }
            }
        }
    }
    let garbage = pb::PublishTrackRequest {
        kind: Some(pb::publish_track_request::Kind::Rtp(
            bytes::Bytes::from_static(b"\x00\x01not rtp"),
        )),
    };
    let oversized = hearth_tests::opus_rtp(1, &[0xFC; 1600]);
    let wrong_pt = pb::PublishTrackRequest {
        kind: Some(pb::publish_track_request::Kind::Rtp(
            hearth_engine::rtp::write(false, 96, 1, 1, hearth_engine::media::Ssrc(1), &[0xFC]),
        )),
    };
    let mut bad_codec = hearth_tests::opus_start("hostile", "bot");
    if let Some(pb::publish_track_request::Kind::Start(s)) = &mut bad_codec.kind {
        s.kind = pb::TrackKind::Video as i32;
    }
    let cases = vec![
        (
            "not RTP",
            vec![hearth_tests::opus_start("hostile", "bot"), garbage],
        ),
        (
            "oversized",
            vec![hearth_tests::opus_start("hostile", "bot"), oversized],
        ),
        (
            "wrong payload type",
            vec![hearth_tests::opus_start("hostile", "bot"), wrong_pt],
        ),
        ("no start", vec![hearth_tests::opus_rtp(1, &[0xFC])]),
        (
            "two starts",
            vec![
                hearth_tests::opus_start("hostile", "bot"),
                hearth_tests::opus_start("hostile", "bot"),
            ],
        ),
        ("kind and codec disagree", vec![bad_codec]),
    ];
    for (what, msgs) in cases {
        let status = publish(&api, msgs).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
    }
    let unknown_meeting = publish(&api, vec![hearth_tests::opus_start("nowhere", "bot")]).await;
    assert_eq!(unknown_meeting.code(), Code::NotFound);
    let unknown_track = api
        .media()
        .subscribe_track(api.req(pb::SubscribeTrackRequest {
            meeting: "hostile".into(),
            track_id: "TR_nope".into(),
        }))
        .await;
    assert_eq!(code(unknown_track), Code::NotFound);

    // Nothing leaked, nobody else noticed.
    api.wait_tree("no virtual participants left", |t| {
        !t.iter().any(|a| a.kind == "virtual_participant")
    })
    .await;
    let before = bob.stats().packets_from(ada.participant_id(), Kind::Audio);
    media_from(&bob, ada.participant_id(), Kind::Audio, before + 25).await;
    assert!(bob.stats().errors.is_empty());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_see_the_tree_kill_actors_and_read_stats() {
    let server = TestServer::start().await;
    let api = Api::connect(&server).await;
    let ada = TestClient::join(&server, "ops", "ada", ClientOptions::av())
        .await
        .expect("ada");
    let bob = TestClient::join(&server, "ops", "bob", ClientOptions::receive_only())
        .await
        .expect("bob");
    media_from(&bob, ada.participant_id(), Kind::Video, 20).await;

    let tree = api.tree().await;
    let find = |kind: &str, name: &str| {
        tree.iter()
            .find(|a| a.kind == kind && a.name == name)
            .unwrap_or_else(|| panic!("no {kind} {name} in {tree:#?}"))
            .clone()
    };
    let node = tree.iter().find(|a| a.kind == "node").expect("root");
    assert!(node.parent_id.is_empty());
    let sup = find("meeting_supervisor", "meetings");
    assert_eq!(sup.parent_id, node.id);
    let meeting = find("meeting", "ops");
    assert_eq!(meeting.parent_id, sup.id);
    let ada_actor = find("participant", ada.participant_id());
    let bob_actor = find("participant", bob.participant_id());
    assert_eq!(ada_actor.parent_id, meeting.id);
    assert!(ada_actor.messages > 0);
    assert!(!ada_actor.policy.is_empty());
    let turn = tree
        .iter()
        .find(|a| a.kind == "turn_supervisor")
        .expect("TURN runs in test servers");
    assert_eq!(turn.parent_id, node.id);

    // Kill bob's actor: the meeting removes him, counts it, tells his client to reconnect.
    let killed = api
        .admin()
        .kill_actor(api.req(pb::KillActorRequest {
            actor_id: bob_actor.id.clone(),
        }))
        .await
        .expect("KillActor")
        .into_inner();
    assert_eq!(killed.kind, "participant");
    bob.wait_until("told to reconnect", T, |s| s.reconnect.is_some())
        .await;
    ada.wait_until("bob failed", T, |s| {
        s.saw_left(bob.participant_id(), "failed")
    })
    .await;
    let bob_id = bob.participant_id().to_owned();
    api.wait_tree("bob gone, the meeting counts the failure", |t| {
        let bob_gone = !t.iter().any(|a| a.name == bob_id);
        let meeting = t.iter().find(|a| a.kind == "meeting" && a.name == "ops");
        bob_gone && meeting.is_some_and(|m| m.restarts == 1 && m.last_failure.contains(&bob_id))
    })
    .await;

    // Kill the meeting: its supervisor restarts it from its record (a new actor id).
    api.admin()
        .kill_actor(api.req(pb::KillActorRequest {
            actor_id: meeting.id.clone(),
        }))
        .await
        .expect("kill the meeting");
    let old = meeting.id.clone();
    api.wait_tree("the meeting restarted", |t| {
        t.iter()
            .any(|a| a.kind == "meeting" && a.name == "ops" && a.id != old && a.restarts == 1)
    })
    .await;
    ada.wait_until("ada told to reconnect", T, |s| s.reconnect.is_some())
        .await;

    let root = api
        .admin()
        .kill_actor(api.req(pb::KillActorRequest {
            actor_id: node.id.clone(),
        }))
        .await;
    assert_eq!(code(root), Code::FailedPrecondition);
    let unknown = api
        .admin()
        .kill_actor(api.req(pb::KillActorRequest {
            actor_id: "9.99999".into(),
        }))
        .await;
    assert_eq!(code(unknown), Code::NotFound);

    let stats = api
        .admin()
        .stats(api.req(pb::StatsRequest {}))
        .await
        .expect("Stats")
        .into_inner();
    assert!(stats.packets_in > 0 && stats.packets_out > 0, "{stats:?}");
    assert!(stats.actor_failures >= 2, "{stats:?}");
    assert!(stats.rss_bytes > 0 && stats.cpu_seconds > 0.0);
    let info = api
        .admin()
        .node_info(api.req(pb::NodeInfoRequest {}))
        .await
        .expect("NodeInfo")
        .into_inner();
    assert!(info.version.starts_with("hearth "));
    assert_eq!(info.http_addr, server.server.http_addr.to_string());
    assert_eq!(info.grpc_addr, info.http_addr);
    assert!(!info.draining);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_refuses_joins_tells_clients_and_ends_meetings_at_the_deadline() {
    let server = TestServer::start().await;
    let api = Api::connect(&server).await;
    let ada = TestClient::join(&server, "late", "ada", ClientOptions::receive_only())
        .await
        .expect("ada");
    let drained = api
        .admin()
        .drain(api.req(pb::DrainRequest {
            deadline_seconds: 2,
        }))
        .await
        .expect("Drain")
        .into_inner();
    assert_eq!((drained.meetings, drained.participants), (1, 1));
    ada.wait_until("nodeDraining", T, |s| s.draining == Some(2))
        .await;
    let refused = TestClient::join(&server, "late", "bob", ClientOptions::receive_only()).await;
    assert_eq!(
        refused.err().map(|e| e.code).as_deref(),
        Some("NODE_UNAVAILABLE")
    );
    let create = api
        .meetings()
        .create(api.req(pb::CreateMeetingRequest {
            id: "new".into(),
            settings: None,
            metadata: String::new(),
        }))
        .await;
    assert_eq!(code(create), Code::FailedPrecondition);
    assert!(
        api.admin()
            .node_info(api.req(pb::NodeInfoRequest {}))
            .await
            .expect("NodeInfo")
            .into_inner()
            .draining
    );
    let mut health = tonic_health::pb::health_client::HealthClient::new(api.channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health answers while draining")
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::NotServing as i32,
        "load balancers see the drain"
    );
    ada.wait_until("the meeting ended at the deadline", T, |s| {
        s.meeting_ended.as_deref() == Some("node_shutdown")
    })
    .await;
    tokio::time::timeout(T, server.server.drained())
        .await
        .expect("drained once every meeting ended");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_answers_serving() {
    let server = TestServer::start().await;
    let api = Api::connect(&server).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(api.channel.clone());
    for service in ["", "hearth.v1.MeetingService", "hearth.v1.AdminService"] {
        let deadline = tokio::time::Instant::now() + T;
        loop {
            let status = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .map(|r| r.into_inner().status);
            let serving = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
            if matches!(status, Ok(s) if s == serving) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{service:?}: {status:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    server.shutdown().await;
}

/// A gRPC client's connection outlives quiet spells longer than the header deadline, before
/// its first call (channels connect eagerly) and between calls: the deadline is for a silent
/// connection and for HTTP/1 headers, not for an idle HTTP/2 connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_grpc_connection_stays_open() {
    let server = TestServer::start_with(|c| {
        c.http_limits.header_timeout = Duration::from_millis(300);
    })
    .await;
    let api = Api::connect(&server).await;
    let opened = server
        .metric(r#"hearth_connections{listener="http"}"#)
        .await;
    // Idleness is the stimulus: three header deadlines before the first call...
    tokio::time::sleep(Duration::from_millis(1000)).await;
    api.admin()
        .stats(api.req(pb::StatsRequest {}))
        .await
        .expect("first call, on the eagerly opened connection");
    // ... and between calls.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    api.admin()
        .stats(api.req(pb::StatsRequest {}))
        .await
        .expect("a call after a quiet spell, on the same connection");
    assert_eq!(
        server
            .metric(r#"hearth_connections{listener="http"}"#)
            .await,
        opened,
        "the client had to reconnect"
    );
    assert_eq!(
        server
            .metric_opt(
                r#"hearth_connections_closed_total{listener="http",reason="header_timeout"}"#
            )
            .await
            .unwrap_or(0.0),
        0.0,
        "the node closed the idle gRPC connection"
    );
    server.shutdown().await;
}

/// MeetingService.SendMessage: the same delivery as REST's messages endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_message_reaches_the_participants() {
    let server = TestServer::start().await;
    let api = Api::connect(&server).await;
    let ada = TestClient::join(&server, "grpc-chat", "ada", ClientOptions::receive_only())
        .await
        .expect("ada");
    let sent = api
        .meetings()
        .send_message(api.req(pb::SendMessageRequest {
            meeting: "grpc-chat".into(),
            text: "hello from the app".into(),
            from: String::new(),
            participant_ids: vec![ada.participant_id().into()],
        }))
        .await
        .expect("SendMessage")
        .into_inner();
    assert_eq!(sent.delivered, 1);
    let stats = ada
        .wait_until("the message", T, |s| !s.app_messages.is_empty())
        .await;
    assert_eq!(stats.app_messages[0].id, sent.id);
    assert_eq!(stats.app_messages[0].text, "hello from the app");
    let empty = api
        .meetings()
        .send_message(api.req(pb::SendMessageRequest {
            meeting: "grpc-chat".into(),
            ..Default::default()
        }))
        .await;
    assert_eq!(code(empty), Code::InvalidArgument);
    server.shutdown().await;
}
