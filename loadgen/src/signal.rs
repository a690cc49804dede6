//! One simulated participant's signaling against Hearth: a WebSocket at `/v1/signal`
//! speaking the `proto/` messages as proto3 JSON, exactly as a browser does.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use hearth_proto::signal::v1 as pb;
use pb::client_message::Message as C;
use pb::server_message::Message as S;
use rtc::peer_connection::transport::RTCIceCandidateInit;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;

use crate::peer::{PeerOut, Sending};
use crate::shard::{Link, ShardCmd, ShardHandle};

const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Counters shared by every participant task.
#[derive(Default)]
pub struct Counters {
    pub joined: AtomicU64,
    pub left: AtomicU64,
    pub errors: Mutex<BTreeMap<String, u64>>,
    /// The first few failure reasons, for the report.
    pub examples: Mutex<Vec<String>>,
}

impl Counters {
    pub fn error(&self, code: &str) {
        if let Ok(mut e) = self.errors.lock() {
            *e.entry(code.to_owned()).or_insert(0) += 1;
        }
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
    pub token: String,
    pub sending: Sending,
    pub ip: IpAddr,
}

fn encode(m: C) -> Message {
    let msg = pb::ClientMessage { message: Some(m) };
    Message::text(serde_json::to_string(&msg).unwrap_or_default())
}

fn error_name(code: i32) -> String {
    pb::ErrorCode::try_from(code)
        .map(|c| c.as_str_name().trim_start_matches("ERROR_CODE_").to_owned())
        .unwrap_or_else(|_| format!("CODE_{code}"))
}

/// Runs one participant until `stop` flips (then it leaves) or the server ends it.
pub async fn run(
    plan: Plan,
    ws_url: String,
    shard: ShardHandle,
    counters: std::sync::Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) {
    let started = Instant::now();
    let connect =
        tokio::time::timeout(JOIN_TIMEOUT, tokio_tungstenite::connect_async(&ws_url)).await;
    let ws = match connect {
        Ok(Ok((ws, _))) => ws,
        Ok(Err(_)) => return counters.error("TRANSPORT"),
        Err(_) => return counters.error("CONNECT_TIMEOUT"),
    };
    let (mut tx, mut rx) = ws.split();
    if tx
        .send(encode(C::Join(pb::JoinRequest {
            token: plan.token.clone(),
            meeting: plan.meeting.clone(),
        })))
        .await
        .is_err()
    {
        return counters.error("TRANSPORT");
    }
    let joined = tokio::time::timeout(JOIN_TIMEOUT, async {
        while let Some(frame) = rx.next().await {
            let Ok(Message::Text(text)) = frame else {
                continue;
            };
            match serde_json::from_str::<pb::ServerMessage>(text.as_str()).map(|m| m.message) {
                Ok(Some(S::Join(_))) => return Ok(()),
                Ok(Some(S::Error(e))) => return Err(error_name(e.code)),
                _ => continue,
            }
        }
        Err("TRANSPORT".to_owned())
    })
    .await;
    match joined {
        Ok(Ok(())) => {}
        Ok(Err(code)) => return counters.error(&code),
        Err(_) => return counters.error("JOIN_TIMEOUT"),
    }
    counters.joined.fetch_add(1, Ordering::Relaxed);
    let (out_tx, mut out_rx) = mpsc::unbounded_channel();
    let (reply_tx, reply_rx) = oneshot::channel();
    let _ = shard.cmds.send(ShardCmd::Add {
        id: plan.id,
        ip: plan.ip,
        sending: plan.sending,
        started,
        out: out_tx,
        counts: true,
        link: Link::WebRtc,
        reply: reply_tx,
    });
    match reply_rx.await {
        Ok(Ok(())) => {}
        _ => return counters.error("PEER_SETUP"),
    }
    let id = plan.id;
    let mut ping = tokio::time::interval(Duration::from_secs(10));
    ping.tick().await;
    loop {
        tokio::select! {
            frame = rx.next() => {
                let text = match frame {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(_)) => continue,
                    _ => { counters.error("SOCKET_CLOSED"); break; }
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
                    Some(S::Error(e)) => { counters.error(&error_name(e.code)); None }
                    Some(S::Reconnect(_)) => { counters.error("RECONNECT"); break; }
                    Some(S::MeetingEnded(_)) => { counters.error("MEETING_ENDED"); break; }
                    _ => None,
                };
                if let Some(cmd) = cmd {
                    let _ = shard.cmds.send(cmd);
                }
            }
            out = out_rx.recv() => {
                let msg = match out {
                    Some(PeerOut::Offer(sdp)) => Some(C::Offer(pb::SessionDescription { r#type: "offer".into(), sdp })),
                    Some(PeerOut::Answer(sdp)) => Some(C::Answer(pb::SessionDescription { r#type: "answer".into(), sdp })),
                    Some(PeerOut::Candidate(c)) => Some(C::Trickle(pb::IceCandidate {
                        candidate: c.candidate,
                        sdp_mid: c.sdp_mid.unwrap_or_default(),
                        sdp_m_line_index: u32::from(c.sdp_mline_index.unwrap_or(0)),
                        username_fragment: c.username_fragment.unwrap_or_default(),
                    })),
                    Some(PeerOut::Connected) => None,
                    Some(PeerOut::Failed(why)) => {
                        counters.error("PEER_FAILED");
                        counters.example(format!("participant {id}: {why}"));
                        None
                    }
                    None => break,
                };
                if let Some(m) = msg && tx.send(encode(m)).await.is_err() {
                    counters.error("SOCKET_CLOSED");
                    break;
                }
            }
            _ = ping.tick() => {
                let _ = tx.send(encode(C::Ping(pb::Ping { timestamp: 0 }))).await;
            }
            _ = stop.changed() => {
                let _ = tx.send(encode(C::Leave(pb::LeaveRequest {}))).await;
                break;
            }
        }
    }
    let _ = shard.cmds.send(ShardCmd::Remove { id });
    counters.left.fetch_add(1, Ordering::Relaxed);
}
