//! The WebSocket signaling endpoint (`GET /v1/signal`), one task per socket.
//!
//! The task is thin: it decodes frames, authenticates the join, converts messages and
//! forwards them to the participant actor; messages from the actors come back through the
//! participant's signal queue and are encoded for the wire. Protocol rules enforced here:
//! join first (within 10 s), frames of at most 64 KiB, at most 50 messages per second
//! (burst 200), a keep-alive every `ping_interval` (three missed intervals end the session).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::ws::{Message, Utf8Bytes, WebSocket};
use futures::{SinkExt, StreamExt};
use hearth_actors::cluster::Placement;
use hearth_actors::{
    ClientSignal, Grants, JoinRequest, MeetingId, ParticipantHandle, SignalError, SignalErrorCode,
    signal_channel,
};
use hearth_proto::signal::v1 as pb;
use pb::server_message::Message as S;

use crate::convert::{self, Incoming};
use crate::listen::ConnInfo;
use crate::server::AppState;
use crate::token::TokenError;

const JOIN_TIMEOUT: Duration = Duration::from_secs(10);
const PING_INTERVAL: Duration = Duration::from_secs(10);
const RATE_PER_SEC: f64 = 50.0;
const RATE_BURST: f64 = 200.0;
const SIGNAL_QUEUE: usize = 1024;
/// A client that takes no message for this long is gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames a socket may send before its join is accepted (pings, refused attempts).
const MAX_FRAMES_BEFORE_JOIN: u32 = 32;

type Tx = futures::stream::SplitSink<WebSocket, Message>;
type Rx = futures::stream::SplitStream<WebSocket>;

/// Runs one signaling session to its end.
///
/// `conn` is the HTTP connection's place in its listener: the session holds it, marks it
/// established once the join is accepted, and gives up before that if the listener evicts
/// it to make room.
pub async fn run(socket: WebSocket, state: Arc<AppState>, conn: Option<ConnInfo>) {
    metrics::counter!("hearth_signal_sessions_total").increment(1);
    let (mut tx, mut rx) = socket.split();
    let joined = {
        let evicted = async {
            match &conn {
                Some(conn) => conn.evicted().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            joined = join_phase(&mut tx, &mut rx, &state) => joined,
            _ = evicted => None,
        }
    };
    if let Some(conn) = &conn
        && joined.is_some()
    {
        conn.established();
    }
    let Some((handle, mut signals)) = joined else {
        let _ = tx.close().await;
        return;
    };
    let mut limiter = RateLimiter::new(Instant::now());
    let mut last_heard = Instant::now();
    let mut check = tokio::time::interval(PING_INTERVAL);
    check.tick().await;
    let reason = loop {
        tokio::select! {
            frame = rx.next() => {
                let Some(Ok(frame)) = frame else { break "socket closed" };
                last_heard = Instant::now();
                let text = match frame {
                    Message::Text(t) => t,
                    Message::Binary(_) => {
                        if !send_error(&mut tx, &SignalError::new(SignalErrorCode::MalformedMessage,
                            "binary frames are not part of the protocol; send JSON text")).await {
                            break "socket closed";
                        }
                        continue;
                    }
                    Message::Close(_) => break "socket closed",
                    Message::Ping(_) | Message::Pong(_) => continue,
                };
                if !limiter.allow(Instant::now()) {
                    if !send_error(&mut tx, &SignalError::new(SignalErrorCode::RateLimited,
                        "more than 50 messages per second; message dropped")).await {
                        break "socket closed";
                    }
                    continue;
                }
                match convert::decode_client(text.as_str()) {
                    Ok(Incoming::Ping(ts)) => {
                        if !send(&mut tx, S::Pong(pb::Pong { timestamp: ts })).await {
                            break "socket closed";
                        }
                    }
                    Ok(Incoming::Join(_)) => {
                        if !send_error(&mut tx, &SignalError::new(SignalErrorCode::AlreadyJoined,
                            "this socket has joined already")).await { break "socket closed"; }
                    }
                    Ok(Incoming::Signal(signal)) => {
                        let leaving = matches!(signal, ClientSignal::Leave);
                        if !handle.send(signal) {
                            send(&mut tx, S::Reconnect(pb::Reconnect {
                                reason: "session ended".into(),
                            })).await;
                            break "participant gone";
                        }
                        if leaving {
                            break "left";
                        }
                    }
                    Err(e) => if !send_error(&mut tx, &e).await { break "socket closed"; },
                }
            }
            signal = signals.recv() => {
                let Some(signal) = signal else {
                    send(&mut tx, S::Reconnect(pb::Reconnect { reason: "session ended".into() })).await;
                    break "participant gone";
                };
                let ends = signal.ends_session();
                if !send(&mut tx, convert::server_message(signal)).await {
                    break "socket closed";
                }
                if ends {
                    break "ended by server";
                }
                if signals.overflowed() {
                    send_error(&mut tx, &SignalError::fatal(SignalErrorCode::Internal,
                        "the client did not keep up with signaling; reconnect")).await;
                    break "signal overflow";
                }
            }
            _ = check.tick() => {
                if last_heard.elapsed() > PING_INTERVAL * 3 {
                    send_error(&mut tx, &SignalError::fatal(SignalErrorCode::Timeout,
                        "no message for 30 seconds")).await;
                    break "timeout";
                }
            }
        }
    };
    tracing::debug!(participant = %handle.id, reason, "signaling session ended");
    handle.send(ClientSignal::Leave);
    let _ = tx.close().await;
}

/// Waits for a valid `join`; returns the participant, or None after sending the error.
async fn join_phase(
    tx: &mut Tx,
    rx: &mut Rx,
    state: &AppState,
) -> Option<(ParticipantHandle, hearth_actors::SignalReceiver)> {
    let deadline = tokio::time::Instant::now() + JOIN_TIMEOUT;
    let mut frames = 0u32;
    loop {
        frames += 1;
        if frames > MAX_FRAMES_BEFORE_JOIN {
            send_error(
                tx,
                &SignalError::fatal(
                    SignalErrorCode::RateLimited,
                    "too many messages before a join",
                ),
            )
            .await;
            return None;
        }
        let frame = match tokio::time::timeout_at(deadline, rx.next()).await {
            Err(_) => {
                send_error(
                    tx,
                    &SignalError::fatal(SignalErrorCode::Timeout, "no join within 10 seconds"),
                )
                .await;
                return None;
            }
            Ok(None | Some(Err(_))) => return None,
            Ok(Some(Ok(frame))) => frame,
        };
        let text = match frame {
            Message::Text(t) => t,
            Message::Close(_) => return None,
            Message::Ping(_) | Message::Pong(_) => continue,
            Message::Binary(_) => {
                send_error(
                    tx,
                    &SignalError::new(
                        SignalErrorCode::MalformedMessage,
                        "binary frames are not part of the protocol; send JSON text",
                    ),
                )
                .await;
                continue;
            }
        };
        let join = match convert::decode_client(text.as_str()) {
            Ok(Incoming::Join(join)) => join,
            Ok(Incoming::Ping(ts)) => {
                send(tx, S::Pong(pb::Pong { timestamp: ts })).await;
                continue;
            }
            Ok(Incoming::Signal(_)) => {
                send_error(
                    tx,
                    &SignalError::new(SignalErrorCode::NotJoined, "send `join` first"),
                )
                .await;
                continue;
            }
            Err(e) => {
                send_error(tx, &e).await;
                continue;
            }
        };
        match authorize(state, &join) {
            Ok(request) => {
                match state
                    .node
                    .place(&request.meeting, request.grants.create)
                    .await
                {
                    Ok(Placement::Local) => {}
                    Ok(Placement::Remote { node_id, http_url }) => {
                        metrics::counter!("hearth_signal_redirects_total").increment(1);
                        send(
                            tx,
                            S::Redirect(pb::Redirect {
                                url: signal_url(&http_url),
                                node_id,
                            }),
                        )
                        .await;
                        return None;
                    }
                    Err(e) => {
                        send_error(tx, &e).await;
                        return None;
                    }
                }
                let (signal_tx, signal_rx) = signal_channel(SIGNAL_QUEUE);
                match state.node.join_placed(request, signal_tx).await {
                    Ok((accepted, handle)) => {
                        let response =
                            convert::join_response(&accepted, PING_INTERVAL.as_secs() as u32);
                        if !send(tx, response).await {
                            handle.send(ClientSignal::Leave);
                            return None;
                        }
                        return Some((handle, signal_rx));
                    }
                    Err(e) => {
                        send_error(tx, &e).await;
                        if e.fatal {
                            return None;
                        }
                    }
                }
            }
            Err(e) => {
                metrics::counter!("hearth_signal_auth_failures_total").increment(1);
                send_error(tx, &e).await;
                return None;
            }
        }
    }
}

/// The signaling endpoint of the node whose HTTP port is at `http_url`.
pub fn signal_url(http_url: &str) -> String {
    let base = http_url.trim_end_matches('/');
    let ws = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.to_owned()
    };
    format!("{ws}/v1/signal")
}

/// Checks the token of a join and builds the domain request.
pub fn authorize(state: &AppState, join: &pb::JoinRequest) -> Result<JoinRequest, SignalError> {
    let claims = state
        .keys
        .verify(&join.token, SystemTime::now())
        .map_err(|e| {
            let code = match e {
                TokenError::Expired | TokenError::NotYetValid => SignalErrorCode::TokenExpired,
                _ => SignalErrorCode::InvalidToken,
            };
            SignalError::fatal(code, e.to_string())
        })?;
    if !join.meeting.is_empty() && join.meeting != claims.meeting {
        return Err(SignalError::fatal(
            SignalErrorCode::WrongMeeting,
            format!(
                "the token is for meeting `{}`, not `{}`",
                claims.meeting, join.meeting
            ),
        ));
    }
    let meeting = MeetingId::parse(&claims.meeting).ok_or_else(|| {
        SignalError::fatal(
            SignalErrorCode::InvalidToken,
            "the token's meeting name is invalid (1-128 of A-Z a-z 0-9 . _ ~ -)",
        )
    })?;
    let grants: Grants = claims.grants.into();
    if !grants.join {
        return Err(SignalError::fatal(
            SignalErrorCode::PermissionDenied,
            "the token does not grant joining",
        ));
    }
    Ok(JoinRequest {
        meeting,
        name: if claims.name.is_empty() {
            claims.sub.clone()
        } else {
            claims.name
        },
        identity: claims.sub,
        tenant: claims.iss,
        grants,
        token_issued_at: UNIX_EPOCH.checked_add(Duration::from_secs(claims.iat)),
        token_expires_at: UNIX_EPOCH.checked_add(Duration::from_secs(claims.exp)),
        session: hearth_actors::SessionKind::Signaling,
        data_channels: join.data_channels,
    })
}

/// Sends one message; false when the socket is gone or the client has not taken a message
/// for [`WRITE_TIMEOUT`] (a client that stops reading cannot hold its session, or the
/// connection, forever).
async fn send(tx: &mut Tx, msg: S) -> bool {
    let text = convert::encode(msg);
    match tokio::time::timeout(WRITE_TIMEOUT, tx.send(Message::Text(Utf8Bytes::from(text)))).await {
        Ok(sent) => sent.is_ok(),
        Err(_) => {
            metrics::counter!("hearth_signal_write_timeouts_total").increment(1);
            false
        }
    }
}

async fn send_error(tx: &mut Tx, e: &SignalError) -> bool {
    metrics::counter!("hearth_signal_errors_total", "code" => convert::error_code(e.code).as_str_name())
        .increment(1);
    send(tx, convert::error_message(e)).await
}

/// Token bucket per socket.
struct RateLimiter {
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    fn new(now: Instant) -> Self {
        Self {
            tokens: RATE_BURST,
            last: now,
        }
    }

    fn allow(&mut self, now: Instant) -> bool {
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * RATE_PER_SEC).min(RATE_BURST);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limiter_allows_bursts_then_the_rate() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(t0);
        let allowed = (0..300).filter(|_| limiter.allow(t0)).count();
        assert_eq!(allowed, 200);
        assert!(limiter.allow(t0 + Duration::from_millis(20)));
        assert!(!limiter.allow(t0 + Duration::from_millis(20)));
    }
}
