//! One simulated participant's signaling against Hearth: a WebSocket at `/v1/signal`
//! speaking the `proto/` messages as proto3 JSON, exactly as a browser does. With
//! `--reconnect` a participant whose session is lost joins again ([`crate::reconnect`]).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use hearth_proto::signal::v1 as pb;
use pb::client_message::Message as C;
use pb::server_message::Message as S;
use rtc::peer_connection::transport::RTCIceCandidateInit;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;

use crate::jwt;
use crate::peer::{PeerOut, Sending};
use crate::reconnect::{Backoff, Tracker};
use crate::shard::{Link, ShardCmd, ShardHandle};

const JOIN_TIMEOUT: Duration = Duration::from_secs(10);
/// A participant connected this long before its session ended, in a meeting where others
/// publish, should have received media.
const FIRST_MEDIA_GRACE: Duration = Duration::from_secs(5);

/// The phase a peer failure (`PeerOut::Failed`) happened in, from its reason's prefix.
pub fn phase_of(why: &str) -> &'static str {
    const SDP: [&str; 4] = ["server offer", "server answer", "cannot offer", "rollback"];
    if why.starts_with("ICE") {
        "ice"
    } else if why.starts_with("DTLS") || why.starts_with("SRTP") {
        "dtls"
    } else if SDP.iter().any(|p| why.starts_with(p)) {
        "sdp"
    } else {
        "transport"
    }
}

/// Counters shared by every participant task.
#[derive(Default)]
pub struct Counters {
    pub joined: AtomicU64,
    pub left: AtomicU64,
    pub errors: Mutex<BTreeMap<String, u64>>,
    /// The first few failure reasons, for the report.
    pub examples: Mutex<Vec<String>>,
    /// Participants whose connection failed, by phase: `signaling` (the join), `setup`
    /// (the local peer could not be created), `sdp` (a description did not apply), `ice`,
    /// `dtls`, `transport` (the full client's peer connection failed after both),
    /// `not_connected` (joined, never connected, no failure reported by the client),
    /// `first_media` (connected, others published, nothing arrived).
    pub phases: Mutex<BTreeMap<String, u64>>,
}

impl Counters {
    pub fn error(&self, code: &str) {
        if let Ok(mut e) = self.errors.lock() {
            *e.entry(code.to_owned()).or_insert(0) += 1;
        }
    }

    pub fn failed_in(&self, phase: &str) {
        if let Ok(mut p) = self.phases.lock() {
            *p.entry(phase.to_owned()).or_insert(0) += 1;
        }
    }

    /// Errors by code so far.
    pub fn errors_now(&self) -> BTreeMap<String, u64> {
        self.errors.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// Connection failures by phase so far.
    pub fn phases_now(&self) -> BTreeMap<String, u64> {
        self.phases.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// Connection failures in every phase so far.
    pub fn connection_failures(&self) -> u64 {
        self.phases.lock().map_or(0, |p| p.values().sum())
    }

    pub fn example(&self, why: String) {
        if let Ok(mut e) = self.examples.lock()
            && e.len() < 5
        {
            e.push(why);
        }
    }
}

/// Who one simulated participant is.
pub struct Plan {
    pub id: u32,
    pub meeting: String,
    pub identity: String,
    pub grants: jwt::Grants,
    pub sending: Sending,
    pub ip: IpAddr,
    /// Others in its meeting send media: with `--reconnect` it is back at the first media
    /// packet after a rejoin (else once joined and connected).
    pub expects_media: bool,
    /// Joins during the hold in place of one that left (`--churn`).
    pub churn: bool,
    /// With `--churn`: where it is (`STATE_*`), for the churn to pick connected ones.
    pub state: Option<Arc<std::sync::atomic::AtomicU8>>,
}

pub const STATE_JOINING: u8 = 0;
pub const STATE_CONNECTED: u8 = 1;
pub const STATE_ENDED: u8 = 2;

/// What every participant task shares.
pub struct Ctx {
    /// The client participants use (full `rtc` or lean).
    pub link: Link,
    pub ws_url: String,
    pub api_key: String,
    pub api_secret: String,
    /// With `--reconnect`: lost sessions rejoin, and what participants notice is recorded.
    pub tracker: Option<Arc<Tracker>>,
}

/// Fatal errors after which the web client joins again (others end its session).
const RETRYABLE: [&str; 3] = ["TIMEOUT", "NODE_UNAVAILABLE", "INTERNAL"];

fn encode(m: C) -> Message {
    let msg = pb::ClientMessage { message: Some(m) };
    Message::text(serde_json::to_string(&msg).unwrap_or_default())
}

fn error_name(code: i32) -> String {
    pb::ErrorCode::try_from(code)
        .map(|c| c.as_str_name().trim_start_matches("ERROR_CODE_").to_owned())
        .unwrap_or_else(|_| format!("CODE_{code}"))
}

/// How a session ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The run ended: it left (or never got to join).
    Stopped,
    /// For good: the first join failed, the meeting ended, a fatal error.
    Final,
    /// The session was lost (noticed at `at`) while the run goes on; with `--reconnect`
    /// it joins again. A rejoin attempt that failed is `Lost` too.
    Lost { at: Instant, reason: String },
}

/// What a participant carries from one session to the next.
#[derive(Default)]
struct Life {
    /// A join was accepted once (counted in `joined`, and `left` at the end).
    joined: bool,
    /// Its peer connected once (later sessions are not counted again).
    connected: bool,
    /// Down since it noticed a loss, until it is back.
    down_since: Option<Instant>,
    /// The last session's join was accepted.
    in_session: bool,
}

/// Runs one participant until `stop` flips (then it leaves) or the server ends it; with
/// `--reconnect`, a lost session is joined again until the run ends.
pub async fn run(
    plan: Plan,
    ctx: Arc<Ctx>,
    shard: ShardHandle,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) {
    let mut life = Life::default();
    let mut backoff = Backoff::default();
    loop {
        let end = session(&plan, &ctx, &shard, &counters, &mut stop, &mut life).await;
        if life.in_session {
            // A join was accepted since the last loss: back to the first delay.
            life.in_session = false;
            backoff.reset();
        }
        let (at, reason) = match end {
            End::Stopped => break,
            End::Final => {
                if let Some(t) = &ctx.tracker
                    && life.joined
                {
                    t.ended(plan.id);
                }
                break;
            }
            End::Lost { at, reason } => (at, reason),
        };
        let Some(tracker) = &ctx.tracker else {
            break;
        };
        // Noticed now, or a rejoin attempt failed (the outage goes on from the first
        // notice; a session it joined meanwhile is gone).
        if life.down_since.is_none() {
            life.down_since = Some(at);
        } else {
            tracker.attempt_failed(plan.id);
        }
        tracker.lost(plan.id, at, &reason);
        let delay = backoff.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stopped(&mut stop) => break,
        }
        if *stop.borrow() {
            break;
        }
    }
    if life.joined {
        counters.left.fetch_add(1, Ordering::Relaxed);
    }
    if let Some(state) = &plan.state {
        state.store(STATE_ENDED, Ordering::Relaxed);
    }
}

/// One session: a WebSocket, a join, a peer connection, until it ends.
async fn session(
    plan: &Plan,
    ctx: &Ctx,
    shard: &ShardHandle,
    counters: &Counters,
    stop: &mut watch::Receiver<bool>,
    life: &mut Life,
) -> End {
    let rejoin = life.down_since.is_some();
    // Failures before the join is accepted: a first join counts them as errors and gives
    // up (as before); a rejoin tries again.
    let fail = |code: &str| {
        if rejoin {
            End::Lost {
                at: Instant::now(),
                reason: code.to_owned(),
            }
        } else {
            counters.error(code);
            counters.failed_in(if code == "PEER_SETUP" {
                "setup"
            } else {
                "signaling"
            });
            counters.example(format!("participant {}: join failed: {code}", plan.id));
            End::Final
        }
    };
    let token = jwt::mint(
        &ctx.api_key,
        &ctx.api_secret,
        &plan.meeting,
        &plan.identity,
        plan.grants,
        24 * 3600,
    );
    let started = Instant::now();
    let joining = async {
        let ws =
            match tokio::time::timeout(JOIN_TIMEOUT, tokio_tungstenite::connect_async(&ctx.ws_url))
                .await
            {
                Ok(Ok((ws, _))) => ws,
                Ok(Err(_)) => return Err("TRANSPORT".to_owned()),
                Err(_) => return Err("CONNECT_TIMEOUT".to_owned()),
            };
        let (mut tx, mut rx) = ws.split();
        tx.send(encode(C::Join(pb::JoinRequest {
            token,
            meeting: plan.meeting.clone(),
            data_channels: false,
        })))
        .await
        .map_err(|_| "TRANSPORT".to_owned())?;
        let joined = tokio::time::timeout(JOIN_TIMEOUT, async {
            while let Some(frame) = rx.next().await {
                let Ok(Message::Text(text)) = frame else {
                    continue;
                };
                match serde_json::from_str::<pb::ServerMessage>(text.as_str()).map(|m| m.message) {
                    Ok(Some(S::Join(j))) => return Ok(j.participant_id),
                    Ok(Some(S::Error(e))) => return Err(error_name(e.code)),
                    _ => continue,
                }
            }
            Err("TRANSPORT".to_owned())
        })
        .await;
        match joined {
            Ok(Ok(pid)) => Ok((tx, rx, pid)),
            Ok(Err(code)) => Err(code),
            Err(_) => Err("JOIN_TIMEOUT".to_owned()),
        }
    };
    let (mut tx, mut rx, participant_id) = tokio::select! {
        r = joining => match r {
            Ok(j) => j,
            Err(code) => return fail(&code),
        },
        _ = stopped(stop) => return End::Stopped,
    };
    life.in_session = true;
    if !life.joined {
        life.joined = true;
        counters.joined.fetch_add(1, Ordering::Relaxed);
    }
    if let Some(t) = &ctx.tracker {
        t.joined(plan.id, &participant_id);
    }
    let (out_tx, mut out_rx) = mpsc::unbounded_channel();
    let (reply_tx, reply_rx) = oneshot::channel();
    let _ = shard.cmds.send(ShardCmd::Add {
        id: plan.id,
        ip: plan.ip,
        sending: plan.sending,
        started,
        out: out_tx,
        counts: !life.connected,
        watch: ctx.tracker.is_some(),
        churn: plan.churn,
        link: ctx.link,
        reply: reply_tx,
    });
    match reply_rx.await {
        Ok(Ok(())) => {}
        _ => return fail("PEER_SETUP"),
    }
    let id = plan.id;
    let reconnect = ctx.tracker.is_some();
    let tracker = ctx.tracker.as_deref();
    let lost = |reason: &str| End::Lost {
        at: Instant::now(),
        reason: reason.to_owned(),
    };
    let mut ping = tokio::time::interval(Duration::from_secs(10));
    ping.tick().await;
    let mut connected_at = None;
    let mut got_media = false;
    // A connection failure of this session was counted (by phase).
    let mut phase_counted = false;
    let end = loop {
        tokio::select! {
            frame = rx.next() => {
                let text = match frame {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(_)) => continue,
                    _ => { counters.error("SOCKET_CLOSED"); break lost("SOCKET_CLOSED"); }
                };
                let Ok(msg) = serde_json::from_str::<pb::ServerMessage>(text.as_str()) else {
                    counters.error("UNDECODABLE");
                    continue;
                };
                let cmd = match msg.message {
                    Some(S::Offer(d)) => Some(ShardCmd::Offer { id, sdp: d.sdp }),
                    Some(S::Answer(d)) => Some(ShardCmd::Answer { id, sdp: d.sdp }),
                    Some(S::Trickle(c)) => Some(ShardCmd::Candidate {
                        id,
                        candidate: RTCIceCandidateInit {
                            candidate: c.candidate,
                            sdp_mid: (!c.sdp_mid.is_empty()).then_some(c.sdp_mid),
                            sdp_mline_index: u16::try_from(c.sdp_m_line_index).ok(),
                            username_fragment: (!c.username_fragment.is_empty())
                                .then_some(c.username_fragment),
                            ..Default::default()
                        },
                    }),
                    Some(S::Error(e)) => {
                        let code = error_name(e.code);
                        counters.error(&code);
                        if let Some(t) = tracker {
                            t.error(id, Instant::now(), &code);
                        }
                        if reconnect && e.fatal {
                            // The server closes the socket after a fatal error.
                            break if RETRYABLE.contains(&code.as_str()) { lost(&code) } else { End::Final };
                        }
                        None
                    }
                    Some(S::Reconnect(_)) => { counters.error("RECONNECT"); break lost("RECONNECT"); }
                    Some(S::MeetingEnded(_)) => { counters.error("MEETING_ENDED"); break End::Final; }
                    Some(S::PublishLayers(p)) => Some(ShardCmd::PausedLayers { id, layers: p.paused_layers }),
                    _ => None,
                };
                if let Some(cmd) = cmd {
                    let _ = shard.cmds.send(cmd);
                }
            }
            out = out_rx.recv() => {
                let msg = match out {
                    Some(PeerOut::Offer(sdp)) => Some(C::Offer(pb::SessionDescription { r#type: "offer".into(), sdp, ..Default::default() })),
                    Some(PeerOut::Answer(sdp)) => Some(C::Answer(pb::SessionDescription { r#type: "answer".into(), sdp, ..Default::default() })),
                    Some(PeerOut::Candidate(c)) => Some(C::Trickle(pb::IceCandidate {
                        candidate: c.candidate,
                        sdp_mid: c.sdp_mid.unwrap_or_default(),
                        sdp_m_line_index: u32::from(c.sdp_mline_index.unwrap_or(0)),
                        username_fragment: c.username_fragment.unwrap_or_default(),
                    })),
                    Some(PeerOut::Connected) => {
                        life.connected = true;
                        connected_at = Some(Instant::now());
                        if let Some(state) = &plan.state {
                            state.store(STATE_CONNECTED, Ordering::Relaxed);
                        }
                        if !plan.expects_media {
                            is_back(tracker, id, life, Instant::now());
                        }
                        None
                    }
                    Some(PeerOut::FirstMedia(at)) => {
                        got_media = true;
                        is_back(tracker, id, life, at);
                        None
                    }
                    Some(PeerOut::Failed(why)) => {
                        counters.error("PEER_FAILED");
                        if connected_at.is_none() && !rejoin {
                            // A connection that never came up (a later loss is not one).
                            counters.failed_in(phase_of(&why));
                            phase_counted = true;
                        }
                        counters.example(format!("participant {id}: {why}"));
                        if reconnect {
                            break lost("PEER_FAILED");
                        }
                        None
                    }
                    None => break End::Final,
                };
                if let Some(m) = msg && tx.send(encode(m)).await.is_err() {
                    counters.error("SOCKET_CLOSED");
                    break lost("SOCKET_CLOSED");
                }
            }
            _ = ping.tick() => {
                let _ = tx.send(encode(C::Ping(pb::Ping { timestamp: 0 }))).await;
            }
            _ = stopped(stop) => {
                let _ = tx.send(encode(C::Leave(pb::LeaveRequest {}))).await;
                break End::Stopped;
            }
        }
    };
    if connected_at.is_none() && !phase_counted && !rejoin {
        // Joined, but the media connection never came up and the client reported no failure
        // (the server gave up first, or the run ended).
        counters.failed_in("not_connected");
        let ended = match &end {
            End::Stopped => "the run ended",
            End::Final => "ended for good",
            End::Lost { reason, .. } => reason.as_str(),
        };
        counters.example(format!(
            "participant {id}: joined, but its media never connected (session: {ended})"
        ));
    }
    if end == End::Stopped
        && plan.expects_media
        && !got_media
        && connected_at.is_some_and(|t| t.elapsed() >= FIRST_MEDIA_GRACE)
    {
        counters.error("NO_MEDIA");
        counters.failed_in("first_media");
        counters.example(format!(
            "participant {id}: connected, others published, no media arrived"
        ));
    }
    let _ = shard.cmds.send(ShardCmd::Remove { id });
    end
}

/// Returns once the run ends (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Media flows again after a rejoin: the outage ends.
fn is_back(tracker: Option<&Tracker>, id: u32, life: &mut Life, at: Instant) {
    if let (Some(t), Some(_)) = (tracker, life.down_since.take()) {
        t.back(id, at);
    }
}

#[cfg(test)]
mod tests {
    use super::phase_of;

    #[test]
    fn peer_failures_are_booked_by_phase() {
        assert_eq!(phase_of("ICE: no answer to 200 binding requests"), "ice");
        assert_eq!(phase_of("DTLS: the handshake timed out"), "dtls");
        assert_eq!(phase_of("SRTP keys: bad length"), "dtls");
        assert_eq!(phase_of("server offer: malformed m-line"), "sdp");
        assert_eq!(phase_of("cannot offer: no codec"), "sdp");
        assert_eq!(
            phase_of("transport: the connected peer connection failed"),
            "transport"
        );
    }
}
