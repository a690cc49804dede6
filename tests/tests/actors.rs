//! The supervision tree as clients see it: joining and leaving, meetings ending, a crashed
//! participant or meeting, unpublish and mute. Every test drives real WebRTC clients
//! ([`TestClient`]) through a real node and asserts on what the clients and `/metrics` show.

use std::collections::BTreeSet;
use std::time::Duration;

use hearth_tests::{ClientOptions, ClientStats, Kind, TestClient, TestServer, parse_metric};

/// The metrics recorder is one per process, shared by the servers of tests running in
/// parallel: tests that assert on the retransmission counters by stream take turns.
static RETRANSMISSION_COUNTERS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Generous: a debug build on a small CI machine sets up DTLS in well under this.
const T: Duration = Duration::from_secs(20);

/// (count, sum, count within 1 s) of `hearth_forward_delay_seconds`, zeros if absent.
fn forward_delays(metrics: &str) -> (f64, f64, f64) {
    let read = |name: &str| parse_metric(metrics, name).unwrap_or(0.0);
    (
        read("hearth_forward_delay_seconds_count"),
        read("hearth_forward_delay_seconds_sum"),
        read("hearth_forward_delay_seconds_bucket{le=\"1\"}"),
    )
}

async fn join(server: &TestServer, meeting: &str, name: &str) -> TestClient {
    TestClient::join(server, meeting, name, ClientOptions::av())
        .await
        .unwrap_or_else(|e| panic!("{name} joins {meeting}: {e}"))
}

/// Waits until every client receives audio and video from every other one.
async fn everyone_gets_everyone(clients: &[&TestClient]) {
    for c in clients {
        let others: Vec<&str> = clients
            .iter()
            .filter(|o| o.participant_id() != c.participant_id())
            .map(|o| o.participant_id())
            .collect();
        c.wait_for_media_from(&others, 25, 15, T).await;
    }
}

/// Asserts the counts from every other client keep growing (one more second of media).
async fn media_keeps_flowing(clients: &[&TestClient]) {
    for c in clients {
        for o in clients {
            if o.participant_id() != c.participant_id() {
                c.wait_for_more(o.participant_id(), Kind::Audio, 25, T)
                    .await;
                c.wait_for_more(o.participant_id(), Kind::Video, 15, T)
                    .await;
            }
        }
    }
}

/// Asserts that `observer` receives no more `kind` from `silent` while a second of media
/// from `clock` (which must keep flowing) goes by. Half a second of `clock` first lets
/// packets that were in flight when the test decided "it stopped" land.
async fn assert_silent(
    observer: &TestClient,
    silent: &str,
    kind: Kind,
    clock: &str,
    clock_kind: Kind,
) -> ClientStats {
    observer.wait_for_more(clock, clock_kind, 15, T).await;
    let before = observer.stats().packets_from(silent, kind);
    let after = observer.wait_for_more(clock, clock_kind, 40, T).await;
    assert_eq!(
        after.packets_from(silent, kind),
        before,
        "{} still receives {kind:?} from {silent}",
        observer.participant_id()
    );
    after
}

/// Asserts a client saw nothing go wrong: no server errors, no failed negotiation, no
/// undecodable messages, no reconnect.
fn assert_clean(c: &TestClient) {
    let s = c.stats();
    assert!(
        s.errors.is_empty(),
        "{}: server errors {:?}",
        c.participant_id(),
        s.errors
    );
    assert!(
        s.negotiation_failures.is_empty(),
        "{}: negotiation failures {:?}",
        c.participant_id(),
        s.negotiation_failures
    );
    assert!(
        s.protocol_errors.is_empty(),
        "{}: protocol errors {:?}",
        c.participant_id(),
        s.protocol_errors
    );
    assert_eq!(
        s.reconnect,
        None,
        "{}: told to reconnect",
        c.participant_id()
    );
    assert_eq!(
        s.send_errors,
        0,
        "{}: RTP writes refused",
        c.participant_id()
    );
    // Perfect negotiation: every offer we sent was answered, or rolled back because the
    // server's offer crossed it (the server ignores ours then).
    assert_eq!(
        s.offers_sent,
        s.answers_received + s.rollbacks,
        "{}: offers {} answered {} rolled back {}",
        c.participant_id(),
        s.offers_sent,
        s.answers_received,
        s.rollbacks
    );
}

fn ids(clients: &[&TestClient]) -> BTreeSet<String> {
    clients
        .iter()
        .map(|c| c.participant_id().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_exchange_media_and_leave() {
    let server = TestServer::start().await;
    // The metrics recorder is process-wide: other tests in this binary may have recorded
    // forward delays already, so this test looks at what it adds.
    let delays_before = forward_delays(&server.metrics_text().await);
    let a = join(&server, "jl", "ada").await;
    assert_eq!(
        a.stats().participants,
        BTreeSet::new(),
        "ada joined an empty meeting"
    );
    let b = join(&server, "jl", "bob").await;
    assert_eq!(
        b.stats().participants,
        ids(&[&a]),
        "bob's join response lists ada"
    );

    everyone_gets_everyone(&[&a, &b]).await;
    media_keeps_flowing(&[&a, &b]).await;
    a.wait_until("bob in ada's list", T, |s| s.participants == ids(&[&b]))
        .await;

    let c = join(&server, "jl", "cyd").await;
    assert_eq!(c.stats().participants, ids(&[&a, &b]));
    everyone_gets_everyone(&[&a, &b, &c]).await;
    media_keeps_flowing(&[&a, &b, &c]).await;
    for x in [&a, &b] {
        let s = x.stats();
        assert!(s.joined.contains(&c.participant_id().to_owned()));
        assert!(s.participants.contains(c.participant_id()));
    }
    for x in [&a, &b, &c] {
        let s = x.stats();
        assert!(s.connected);
        for p in s.from.values() {
            assert_eq!(
                p.video.first_is_keyframe,
                Some(true),
                "a subscriber's video starts with a keyframe: {p:?}"
            );
        }
    }
    let participants = server.metric("hearth_participants").await;
    assert_eq!(participants, 3.0, "hearth_participants with three clients");

    // Forwarded packets' time in the node is sampled into a histogram; none took long.
    let text = server.metrics_text().await;
    assert!(
        parse_metric(&text, "hearth_forward_delay_seconds_count").is_some(),
        "forward delay histogram exported"
    );
    let after = forward_delays(&text);
    let (count, sum, under_a_second) = (
        after.0 - delays_before.0,
        after.1 - delays_before.1,
        after.2 - delays_before.2,
    );
    assert!(count > 20.0, "forwarded packets sampled: {count}");
    assert_eq!(
        under_a_second, count,
        "every packet forwarded within a second"
    );
    assert!(
        sum / count < 0.05,
        "mean time in the node {} s",
        sum / count
    );

    let c_id = c.participant_id().to_owned();
    c.leave().await;
    for x in [&a, &b] {
        x.wait_until("participantLeft for cyd (left)", T, |s| {
            s.saw_left(&c_id, "left") && !s.participants.contains(&c_id)
        })
        .await;
    }
    // Cyd's media stops at both, while theirs keeps flowing.
    assert_silent(&a, &c_id, Kind::Audio, b.participant_id(), Kind::Audio).await;
    assert_silent(&a, &c_id, Kind::Video, b.participant_id(), Kind::Audio).await;
    assert_silent(&b, &c_id, Kind::Audio, a.participant_id(), Kind::Audio).await;
    assert_silent(&b, &c_id, Kind::Video, a.participant_id(), Kind::Audio).await;
    server
        .wait_metric("hearth_participants", T, |v| v == participants - 1.0)
        .await;
    media_keeps_flowing(&[&a, &b]).await;

    for x in [&a, &b] {
        assert_clean(x);
        let s = x.stats();
        for (publisher, p) in &s.from {
            assert_eq!(
                p.audio.gaps,
                0,
                "{publisher}'s audio at {}: {p:?}",
                x.participant_id()
            );
        }
    }
    let mut s = a.stats();
    s.events.clear();
    eprintln!("A STATS {s:#?}");
    a.leave().await;
    b.leave().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_meeting_ends_after_its_timeout() {
    let server = TestServer::start_with(|c| c.empty_timeout = Duration::from_secs(1)).await;
    let a = join(&server, "brief", "ada").await;
    let b = join(&server, "brief", "bob").await;
    everyone_gets_everyone(&[&a, &b]).await;
    assert_eq!(server.node().meeting_count(), 1);
    assert_eq!(server.metric("hearth_meetings").await, 1.0);

    a.leave().await;
    // One participant left: the meeting lives on (it is not empty).
    b.wait_until("participantLeft for ada", T, |s| s.left.len() == 1)
        .await;
    assert_eq!(
        server.node().meeting_count(),
        1,
        "a meeting with one participant runs"
    );
    b.leave().await;

    server.wait_meeting_count(T, |n| n == 0).await;
    server.wait_metric("hearth_meetings", T, |v| v == 0.0).await;
    server
        .wait_metric("hearth_participants", T, |v| v == 0.0)
        .await;

    // The name is free again: joining creates a fresh meeting.
    let c = join(&server, "brief", "cyd").await;
    assert_eq!(c.stats().participants, BTreeSet::new());
    assert_eq!(server.node().meeting_count(), 1);
    c.leave().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_participant_is_isolated() {
    crashed_participant_is_isolated(Fault::InActor).await;
}

/// A participant whose media handling panics on a UDP driver's fast path (the driver
/// handles an idle publisher's SRTP itself): the driver carries on for everyone else, the
/// participant fails alone exactly as if its actor had panicked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_crashed_on_the_media_driver_is_isolated() {
    crashed_participant_is_isolated(Fault::OnMediaDriver).await;
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    InActor,
    OnMediaDriver,
}

async fn crashed_participant_is_isolated(fault: Fault) {
    let server = TestServer::start().await;
    let a1 = join(&server, "A", "a1").await;
    let a2 = join(&server, "A", "a2").await;
    let a3 = join(&server, "A", "a3").await;
    let b1 = join(&server, "B", "b1").await;
    let b2 = join(&server, "B", "b2").await;
    everyone_gets_everyone(&[&a1, &a2, &a3]).await;
    everyone_gets_everyone(&[&b1, &b2]).await;

    let failures = r#"hearth_actor_failures_total{kind="participant"}"#;
    let restarts = r#"hearth_actor_restarts_total{kind="participant"}"#;
    let failures_before = server.metric(failures).await;
    let restarts_before = server.metric_opt(restarts).await;
    let b_events = (b1.stats().events.len(), b2.stats().events.len());
    let b_gaps = (
        b1.stats()
            .stream_from(b2.participant_id(), Kind::Audio)
            .gaps,
        b2.stats()
            .stream_from(b1.participant_id(), Kind::Audio)
            .gaps,
    );

    let participants = server.metric("hearth_participants").await;
    assert_eq!(participants, 5.0);
    let crashed = a3.participant_id().to_owned();
    let driver_restarts = r#"hearth_actor_restarts_total{kind="udp-mux"}"#;
    let driver_restarts_before = server.metric_opt(driver_restarts).await;
    match fault {
        Fault::InActor => assert!(server.inject_participant_fault("A", &crashed)),
        Fault::OnMediaDriver => {
            assert!(server.inject_participant_media_fault("A", &crashed))
        }
    }

    a3.wait_until("reconnect after the crash", T, |s| s.reconnect.is_some())
        .await;
    a3.wait_until("signaling socket closed", T, |s| s.closed)
        .await;
    for x in [&a1, &a2] {
        x.wait_until("participantLeft (failed) for a3", T, |s| {
            s.saw_left(&crashed, "failed")
        })
        .await;
        let s = x.stats();
        assert!(!s.participants.contains(&crashed));
        assert_eq!(
            s.left.len(),
            1,
            "only the crashed participant left: {:?}",
            s.left
        );
    }
    // The survivors keep talking; the crashed one's media is gone.
    media_keeps_flowing(&[&a1, &a2]).await;
    assert_silent(&a1, &crashed, Kind::Audio, a2.participant_id(), Kind::Audio).await;
    assert_silent(&a2, &crashed, Kind::Video, a1.participant_id(), Kind::Audio).await;

    // Meeting B saw nothing at all.
    media_keeps_flowing(&[&b1, &b2]).await;
    assert_eq!(
        (b1.stats().events.len(), b2.stats().events.len()),
        b_events,
        "meeting B got events: {:?} / {:?}",
        b1.stats().events,
        b2.stats().events
    );
    assert_eq!(
        (
            b1.stats()
                .stream_from(b2.participant_id(), Kind::Audio)
                .gaps,
            b2.stats()
                .stream_from(b1.participant_id(), Kind::Audio)
                .gaps,
        ),
        b_gaps,
        "meeting B lost audio"
    );
    for x in [&b1, &b2, &a1, &a2] {
        assert_clean(x);
    }

    server
        .wait_metric("hearth_participants", T, |v| v == participants - 1.0)
        .await;
    let after = server
        .wait_metric(failures, T, |v| v >= failures_before + 1.0)
        .await;
    assert_eq!(
        after,
        failures_before + 1.0,
        "exactly one participant failure counted"
    );
    // The policy's "restart" of a participant is the client's re-join; a node that counts
    // it exports this series (created by the first failure). One that does not is skipped.
    match server.metric_opt(restarts).await {
        Some(after) => assert_eq!(
            after,
            restarts_before.unwrap_or(0.0) + 1.0,
            "the participant restart is counted"
        ),
        None => eprintln!("{restarts} is not exported; its check is skipped"),
    }

    // The media socket's driver was not restarted: the panic stayed with the participant.
    assert_eq!(
        server.metric_opt(driver_restarts).await,
        driver_restarts_before,
        "{fault:?}: the media driver restarted"
    );

    // The crashed client joins again and is a full participant.
    let a3b = join(&server, "A", "a3-again").await;
    assert_eq!(a3b.stats().participants, ids(&[&a1, &a2]));
    everyone_gets_everyone(&[&a1, &a2, &a3b]).await;
    assert_clean(&a3b);

    for c in [a1, a2, a3b, b1, b2] {
        c.leave().await;
    }
    drop(a3);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_meeting_restarts_and_clients_rejoin() {
    let server = TestServer::start().await;
    let c1 = join(&server, "restart-me", "c1").await;
    let c2 = join(&server, "restart-me", "c2").await;
    let o1 = join(&server, "bystander", "o1").await;
    let o2 = join(&server, "bystander", "o2").await;
    everyone_gets_everyone(&[&c1, &c2]).await;
    everyone_gets_everyone(&[&o1, &o2]).await;

    let restarts = r#"hearth_actor_restarts_total{kind="meeting"}"#;
    let failures = r#"hearth_actor_failures_total{kind="meeting"}"#;
    let restarts_before = server.metric(restarts).await;
    let failures_before = server.metric(failures).await;
    let bystander_events = o1.stats().events.len();

    assert!(server.inject_meeting_fault("restart-me"));
    for c in [&c1, &c2] {
        c.wait_until("reconnect after the meeting crashed", T, |s| {
            s.reconnect.is_some() && s.closed
        })
        .await;
    }
    let after = server
        .wait_metric(restarts, T, |v| v >= restarts_before + 1.0)
        .await;
    assert_eq!(after, restarts_before + 1.0, "one meeting restart counted");
    assert_eq!(server.metric(failures).await, failures_before + 1.0);
    assert_eq!(
        server.node().meeting_count(),
        2,
        "the restarted meeting and the bystander meeting run: {:?}",
        server.node().meeting_ids()
    );
    server.wait_metric("hearth_meetings", T, |v| v == 2.0).await;
    // The crashed meeting's participants are gone; the bystanders remain.
    server
        .wait_metric("hearth_participants", T, |v| v == 2.0)
        .await;

    // Rejoin the same name: the restarted meeting starts empty and carries media again.
    let d1 = join(&server, "restart-me", "c1-again").await;
    assert_eq!(
        d1.stats().participants,
        BTreeSet::new(),
        "the restarted meeting keeps no stale participants"
    );
    assert_eq!(
        d1.stats().meeting_started_at_ms,
        c1.stats().meeting_started_at_ms,
        "the meeting restarts from its record, with its start time"
    );
    let d2 = join(&server, "restart-me", "c2-again").await;
    assert_eq!(d2.stats().participants, ids(&[&d1]));
    everyone_gets_everyone(&[&d1, &d2]).await;
    media_keeps_flowing(&[&d1, &d2]).await;
    assert_clean(&d1);
    assert_clean(&d2);

    // The other meeting never noticed.
    media_keeps_flowing(&[&o1, &o2]).await;
    assert_eq!(o1.stats().events.len(), bystander_events);
    assert_clean(&o1);
    assert_clean(&o2);

    for c in [d1, d2, o1, o2] {
        c.leave().await;
    }
    drop((c1, c2));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpublish_and_mute() {
    let server = TestServer::start().await;
    let p = join(&server, "mute", "pub").await;
    let o = join(&server, "mute", "obs").await;
    everyone_gets_everyone(&[&p, &o]).await;
    let own = p
        .wait_until("own audio and video tracks published", T, |s| {
            s.own_tracks.len() == 2
        })
        .await
        .own_tracks;
    let (audio_track, video_track) = (own[&Kind::Audio].clone(), own[&Kind::Video].clone());
    let pid = p.participant_id().to_owned();
    // The observer learned the same track ids from its events.
    let seen = o.stats();
    for t in [&audio_track, &video_track] {
        assert!(
            seen.tracks_published
                .iter()
                .any(|e| &e.track == t && e.participant == pid),
            "observer saw trackPublished for {t}: {:?}",
            seen.tracks_published
        );
    }

    // Mute video: the observer is told, and the video stops while the audio goes on.
    p.mute(Kind::Video, true).await;
    o.wait_until("trackMuted (true) for pub's video", T, |s| {
        s.tracks_muted
            .iter()
            .any(|(e, m)| *m && e.track == video_track && e.participant == pid)
    })
    .await;
    assert_silent(&o, &pid, Kind::Video, &pid, Kind::Audio).await;
    // Unmute: video resumes with a keyframe (a decoder cannot continue from a delta frame
    // after a hole), and its sequence numbers continue where they stopped.
    p.mute(Kind::Video, false).await;
    let resumed = o.wait_for_more(&pid, Kind::Video, 15, T).await;
    let video = resumed.stream_from(&pid, Kind::Video);
    assert_eq!(
        video.resumes.last(),
        Some(&true),
        "video after the unmute starts with a keyframe: {video:?}"
    );
    assert_eq!(
        video.gaps, 0,
        "outgoing video sequence numbers continue across the mute: {video:?}"
    );

    // Mute audio: the observer is told, and the audio stops while the video goes on.
    let before_mute = o.stats().stream_from(&pid, Kind::Audio);
    p.mute(Kind::Audio, true).await;
    o.wait_until("trackMuted (true) for pub's audio", T, |s| {
        s.tracks_muted
            .iter()
            .any(|(e, m)| *m && e.track == audio_track && e.participant == pid)
    })
    .await;
    assert_silent(&o, &pid, Kind::Audio, &pid, Kind::Video).await;
    let muted = o.stats().stream_from(&pid, Kind::Audio);
    assert!(muted.packets >= before_mute.packets);

    // Unmute: audio resumes, and its sequence numbers continue where they stopped.
    p.mute(Kind::Audio, false).await;
    o.wait_until("trackMuted (false) for pub's audio", T, |s| {
        s.tracks_muted
            .iter()
            .any(|(e, m)| !*m && e.track == audio_track)
    })
    .await;
    let resumed = o.wait_for_more(&pid, Kind::Audio, 25, T).await;
    let audio = resumed.stream_from(&pid, Kind::Audio);
    assert_eq!(
        audio.gaps, 0,
        "outgoing sequence numbers continue across the mute: {audio:?}"
    );
    assert_eq!(audio.ssrcs.len(), 1, "one outgoing stream: {audio:?}");
    assert_eq!(audio.max_step, 1, "{audio:?}");
    assert_eq!(audio.resumes.len(), 1, "one pause in the audio: {audio:?}");

    // Unpublish video: the observer is told, and the video stops while audio goes on.
    p.unpublish(Kind::Video).await;
    o.wait_until("trackUnpublished for pub's video", T, |s| {
        s.tracks_unpublished
            .iter()
            .any(|e| e.track == video_track && e.participant == pid)
    })
    .await;
    assert_silent(&o, &pid, Kind::Video, &pid, Kind::Audio).await;
    // The publisher hears about its own unpublish too.
    p.wait_until("own trackUnpublished", T, |s| {
        s.tracks_unpublished.iter().any(|e| e.track == video_track)
    })
    .await;
    // The observer still sends both kinds, and the publisher still receives them.
    p.wait_for_more(o.participant_id(), Kind::Video, 15, T)
        .await;
    p.wait_for_more(o.participant_id(), Kind::Audio, 25, T)
        .await;
    assert_clean(&p);
    assert_clean(&o);

    p.leave().await;
    o.leave().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_media_dies_is_removed() {
    let server = TestServer::start().await;
    let x = join(&server, "dead", "x").await;
    let y = join(&server, "dead", "y").await;
    everyone_gets_everyone(&[&x, &y]).await;
    let participants = server.metric("hearth_participants").await;

    // y's network dies (its signaling socket stays up and keeps pinging).
    let started = std::time::Instant::now();
    y.cut_media().await;
    let y_id = y.participant_id().to_owned();
    x.wait_until(
        "participantLeft (disconnected) for the client whose media died",
        Duration::from_secs(60),
        |s| s.saw_left(&y_id, "disconnected"),
    )
    .await;
    let detected = started.elapsed();
    y.wait_until("reconnect for the dead media connection", T, |s| {
        s.reconnect.is_some()
    })
    .await;
    eprintln!("dead media detected after {detected:?}");
    server
        .wait_metric("hearth_participants", T, |v| v == participants - 1.0)
        .await;
    assert_clean(&x);
    x.leave().await;
    drop(y);
    server.shutdown().await;
}

/// Packets lost on either leg are repaired: the subscriber's NACKs are answered from the
/// node's retransmission cache, and the node's NACKs to the publisher are answered by the
/// publisher's stack and forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_video_is_retransmitted() {
    let _turn = RETRANSMISSION_COUNTERS.lock().await;
    let server = TestServer::start().await;
    let p = join(&server, "lossy", "pub").await;
    let s = join(&server, "lossy", "sub").await;
    everyone_gets_everyone(&[&p, &s]).await;
    let pid = p.participant_id().to_owned();
    let before = s.stats().stream_from(&pid, Kind::Video);
    assert_eq!(before.lost, 0, "no loss before we cause it: {before:?}");

    // Leg 2: the node -> subscriber. Every 20th video packet never arrives.
    let primary = r#"hearth_retransmissions_sent_total{stream="primary"}"#;
    let primary_before = server.metric(primary).await;
    s.video_loss(20, 0).await;
    let repaired = s
        .wait_until("repaired losses on the subscriber's leg", T, |st| {
            let v = st.stream_from(&pid, Kind::Video);
            st.lost_in >= 5 && v.reordered >= 5 && v.reordered + 2 >= v.lost
        })
        .await;
    let v = repaired.stream_from(&pid, Kind::Video);
    assert!(v.lost <= repaired.lost_in + 2, "{v:?}");
    // This client did not accept RTX: the repairs went on the primary stream.
    let on_primary = server.metric(primary).await - primary_before;
    assert!(
        on_primary >= 5.0,
        "retransmissions on the primary stream: {on_primary}"
    );
    s.video_loss(0, 0).await;

    // Leg 1: publisher -> node. Every 20th video packet p sends is lost on the way.
    let base = s.stats().stream_from(&pid, Kind::Video);
    p.video_loss(0, 20).await;
    let repaired = s
        .wait_until("repaired losses on the publisher's leg", T, |st| {
            let v = st.stream_from(&pid, Kind::Video);
            v.reordered >= base.reordered + 5 && v.reordered + 2 >= v.lost
        })
        .await;
    let v = repaired.stream_from(&pid, Kind::Video);
    let ps = p.stats();
    assert!(ps.lost_out >= 5, "{ps:?}");
    assert!(
        ps.nacks_received > 0,
        "the node asked the publisher to resend: {ps:?}"
    );
    assert!(
        v.lost >= base.lost + 5,
        "the subscriber saw the holes first: {v:?}"
    );
    assert_clean(&p);
    assert_clean(&s);
    p.leave().await;
    s.leave().await;
    server.shutdown().await;
}

/// A packet the subscriber asks for again and again and never receives (every
/// retransmission lost as well) is given up after half a second: the node asks the
/// publisher for a keyframe on the subscriber's behalf, which the subscriber receives,
/// instead of leaving the picture frozen until the client's own request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_packet_lost_for_good_brings_a_keyframe() {
    let _turn = RETRANSMISSION_COUNTERS.lock().await;
    let server = TestServer::start().await;
    let p = join(&server, "stuck", "pub").await;
    let s = join(&server, "stuck", "sub").await;
    everyone_gets_everyone(&[&p, &s]).await;
    let pid = p.participant_id().to_owned();
    let metric = r#"hearth_keyframe_requests_total{reason="nack"}"#;
    let before = server.metric(metric).await;
    let plis_before = p.stats().plis_received;
    let keyframes_before = s.stats().stream_from(&pid, Kind::Video).keyframes;
    s.video_loss_for_good(40).await;
    p.wait_until("a keyframe request reaches the publisher", T, |st| {
        st.plis_received > plis_before
    })
    .await;
    s.wait_until("a keyframe reaches the subscriber", T, |st| {
        st.stream_from(&pid, Kind::Video).keyframes > keyframes_before
    })
    .await;
    let asked = server.metric(metric).await - before;
    assert!(asked >= 1.0, "keyframes asked for lost packets: {asked}");
    s.video_loss(0, 0).await;
    p.leave().await;
    s.leave().await;
    server.shutdown().await;
}

/// A subscriber that accepted RTX (RFC 4588) gets its repairs on the RTX stream: its own
/// SSRC, payload type and sequence numbers, the original sequence number in front of the
/// payload. The client (`rtc`) puts each back into the VP8 stream by that number, so the
/// holes fill only if it is right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retransmissions_go_on_the_rtx_stream_where_accepted() {
    let _turn = RETRANSMISSION_COUNTERS.lock().await;
    let server = TestServer::start().await;
    let p = join(&server, "rtx", "pub").await;
    let s = TestClient::join(
        &server,
        "rtx",
        "sub",
        ClientOptions {
            accept_rtx: true,
            ..ClientOptions::av()
        },
    )
    .await
    .expect("join");
    everyone_gets_everyone(&[&p, &s]).await;
    let pid = p.participant_id().to_owned();
    assert_eq!(s.stats().stream_from(&pid, Kind::Video).lost, 0);

    let counter = |stream: &'static str| {
        let server = &server;
        async move {
            server
                .metric_opt(&format!(
                    r#"hearth_retransmissions_sent_total{{stream="{stream}"}}"#
                ))
                .await
                .unwrap_or(0.0)
        }
    };
    let (rtx_before, primary_before) = (counter("rtx").await, counter("primary").await);
    s.video_loss(20, 0).await;
    let repaired = s
        .wait_until("repaired losses from the RTX stream", T, |st| {
            let v = st.stream_from(&pid, Kind::Video);
            st.lost_in >= 5 && v.reordered >= 5 && v.reordered + 2 >= v.lost
        })
        .await;
    let v = repaired.stream_from(&pid, Kind::Video);
    assert!(v.lost <= repaired.lost_in + 2, "{v:?}");
    let on_rtx = counter("rtx").await - rtx_before;
    assert!(on_rtx >= 5.0, "retransmissions on the RTX stream: {on_rtx}");
    let on_primary = counter("primary").await - primary_before;
    assert_eq!(
        on_primary, 0.0,
        "nothing retransmitted on the primary stream"
    );
    s.video_loss(0, 0).await;
    assert_clean(&p);
    p.leave().await;
    s.leave().await;
    server.shutdown().await;
}
