//! A send leg: the data side of one (subscriber, track) stream, shared by the subscriber's
//! actor (which owns it) with the publisher's actor (which forwards on it).
//!
//! The publisher rewrites (the leg's `Forwarder`), encrypts (the leg's `RtpSealer`, the
//! subscriber's SRTP key for this one SSRC) and sends each copy itself, so a forwarded packet
//! takes no mailbox hop and no task wake-up per subscriber. The subscriber keeps the control
//! side: negotiation, RTCP (its reports read the leg's `SendStats`), NACK answers and
//! keyframe requests, pause on mute, and when the leg opens and where it sends.
//!
//! Isolation: a leg is only touched under its own mutex, for a bounded amount of engine work
//! (forwarder and sealer never panic on any input: property-tested in `hearth-engine`). A
//! leg whose lock is poisoned (its subscriber panicked while holding it) or that is closed is
//! skipped, never blocking the publisher.
//!
//! PERFORMANCE-CRITICAL PATH: [`SendLeg::forward`]. No allocation besides the sealed
//! datagram, no logging.

use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use bytes::BytesMut;
use hearth_engine::forwarder::{Drop as ForwardDrop, ForwardedHeader, Forwarder};
use hearth_engine::media::MediaPacket;
use hearth_engine::stats::SendStats;
use hearth_engine::transport::RtpSealer;

use crate::ids::ParticipantId;

/// One (subscriber, track) stream's data side.
pub struct SendLeg {
    pub subscriber: ParticipantId,
    state: Mutex<LegState>,
}

/// What the lock guards.
pub struct LegState {
    pub forwarder: Forwarder,
    pub stats: SendStats,
    /// Set once the stream is negotiated and the transport connected.
    pub sealer: Option<RtpSealer>,
    /// The subscriber's selected path.
    pub dest: Option<SocketAddr>,
    /// False once the subscription ended or the subscriber left.
    pub open: bool,
    /// Packets sent on this leg (first sends and retransmissions).
    pub sent: u64,
}

/// What [`SendLeg::forward`] did with a packet.
pub enum Forwarded {
    /// Send this datagram to this address.
    Send(BytesMut, SocketAddr),
    /// Video waits for a keyframe: the publisher should ask its client for one.
    NeedsKeyframe,
    /// Not for this leg now (closed, not ready, paused, too old, duplicate).
    Skipped,
}

impl SendLeg {
    pub fn new(subscriber: ParticipantId, forwarder: Forwarder, stats: SendStats) -> Self {
        Self {
            subscriber,
            state: Mutex::new(LegState {
                forwarder,
                stats,
                sealer: None,
                dest: None,
                open: true,
                sent: 0,
            }),
        }
    }

    /// The state, or None if a panic poisoned it (the leg is then dead for everyone).
    pub fn lock(&self) -> Option<MutexGuard<'_, LegState>> {
        self.state.lock().ok()
    }

    /// Marks the leg closed: publishers skip it from now on.
    pub fn close(&self) {
        if let Some(mut st) = self.lock() {
            st.open = false;
        }
    }

    pub fn is_open(&self) -> bool {
        self.lock().is_some_and(|st| st.open)
    }

    /// Rewrites and seals one packet of the publisher's track for this subscriber
    /// (`retransmission`: an answer to its NACK, mapped like the original).
    pub fn forward(&self, now: Instant, pkt: &MediaPacket, retransmission: bool) -> Forwarded {
        let Some(mut st) = self.lock() else {
            return Forwarded::Skipped;
        };
        let st = &mut *st;
        let (true, Some(dest)) = (st.open, st.dest) else {
            return Forwarded::Skipped;
        };
        let Some(sealer) = st.sealer.as_mut() else {
            return Forwarded::Skipped;
        };
        let header: ForwardedHeader = if retransmission {
            match st.forwarder.forward_retransmission(pkt) {
                Ok(h) => h,
                Err(_) => return Forwarded::Skipped,
            }
        } else {
            match st.forwarder.forward(pkt) {
                Ok(h) => h,
                Err(ForwardDrop::WaitingForKeyframe) => return Forwarded::NeedsKeyframe,
                Err(_) => return Forwarded::Skipped,
            }
        };
        match sealer.seal(header.seq, header.timestamp, header.marker, &pkt.payload) {
            Ok(datagram) => {
                st.sent += 1;
                if !retransmission {
                    st.stats.on_sent(now, header.timestamp, pkt.payload.len());
                }
                Forwarded::Send(datagram, dest)
            }
            Err(_) => Forwarded::Skipped,
        }
    }
}
