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
//! (forwarder and sealer never panic on any input: property-tested in `hearth-engine`). Should
//! that work panic all the same, the panic is caught in [`SendLeg::forward`], so the
//! publisher's actor carries on; the lock is then poisoned, every later use skips the leg, and
//! its subscriber's actor fails on its next tick ([`SendLeg::is_poisoned`]): its supervisor
//! removes that participant alone and its client reconnects. A closed leg is skipped too.
//!
//! PERFORMANCE-CRITICAL PATH: [`SendLeg::forward`]. No allocation (the copy is sealed straight
//! into the caller's [`SendBatch`], whose buffer is reused), no logging.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use hearth_engine::codec::{VP8_DESCRIPTOR_MAX, vp9_layer};
use hearth_engine::forwarder::{Drop as ForwardDrop, ForwardedHeader, Forwarder};
use hearth_engine::media::MediaPacket;
use hearth_engine::stats::SendStats;
use hearth_engine::svc::{SvcSelector, SvcVerdict, Vp8Stream};
use hearth_engine::transport::bwe::SendHistory;
use hearth_engine::transport::{ExtraExtension, RtpSealer, SealFields};

use crate::billing::UsageInterval;
use crate::ids::ParticipantId;
use crate::udp_mux::SendBatch;

/// Retransmissions sent to subscribers (answers to their NACKs), by the stream they went
/// on: `rtx` (RFC 4588, where the subscriber accepted it) or `primary`.
pub const RETRANSMISSIONS_METRIC: &str = "hearth_retransmissions_sent_total";

/// One (subscriber, track) stream's data side.
pub struct SendLeg {
    pub subscriber: ParticipantId,
    state: Mutex<LegState>,
    /// The subscriber's usage interval: every datagram sent on the leg counts as its bytes out.
    usage: Option<Arc<UsageInterval>>,
}

/// What the lock guards.
pub struct LegState {
    pub forwarder: Forwarder,
    pub stats: SendStats,
    /// Set once the stream is negotiated and the transport connected.
    pub sealer: Option<RtpSealer>,
    /// The RTX stream (RFC 4588), when the subscriber accepted RTX for this stream's codec:
    /// retransmissions go there, each with its own sequence number and the original one
    /// in front of the payload. Without it they go on the primary SSRC.
    pub rtx: Option<RtxStream>,
    /// The subscriber's selected path.
    pub dest: Option<SocketAddr>,
    /// False once the subscription ended or the subscriber left.
    pub open: bool,
    /// Packets sent on this leg (first sends and retransmissions), and their bytes.
    pub sent: u64,
    pub sent_bytes: u64,
    /// The subscriber's transport-wide sequence numbers (its send history, shared by all
    /// its legs), once the extension is agreed: every packet sent carries the next one.
    pub twcc: Option<TwccLeg>,
    /// Simulcast: the layers of the track this subscriber's tile can use (up to the one its
    /// height asks for), smallest first, with the rate each arrives at (bits/s). Written by
    /// the publisher, read by the subscriber's bandwidth allocation.
    pub layers: Vec<(u8, u32)>,
    /// VP8: the payload descriptors' picture ids and TL0PICIDX rewritten to run on across
    /// source switches (simulcast layer changes, restarts) and pictures left out, and the
    /// temporal layers this subscriber gets (set by the publisher; packets without a
    /// temporal index all pass).
    /// (Boxed, like `svc`: every leg, audio ones too, carries the field.)
    pub vp8: Option<Box<Vp8Stream>>,
    /// VP9: the spatial layers this subscriber gets of a scalable stream (set by the
    /// publisher; packets without layer indices all pass).
    pub svc: Option<Box<SvcSelector>>,
    /// AV1: the dependency descriptor's extension id on the subscriber's section, and
    /// whether its two-byte form is allowed; packets carry their publisher's descriptor.
    pub dd_ext: Option<(u8, bool)>,
    /// VP9: layers are read from the payload descriptor (AV1's come with the packet, from
    /// its dependency descriptor; an AV1 payload must never be read as VP9's).
    pub vp9: bool,
}

/// A leg's handle on its subscriber's transport-wide sequence.
#[derive(Clone)]
pub struct TwccLeg {
    pub history: Arc<Mutex<SendHistory>>,
    /// The extension id agreed for it.
    pub ext: u8,
}

impl TwccLeg {
    /// The next transport-wide sequence number, for a packet of about `size` bytes sealed
    /// now (None if the history's lock is poisoned). The clock is read here, not taken from
    /// the caller: a publisher forwards with its packet's arrival time, and the time spent
    /// in the node would read as path delay.
    fn next(&self, size: usize) -> Option<(u8, u16)> {
        let now = Instant::now();
        let mut history = self.history.lock().ok()?;
        let probe = history.active_probe;
        Some((self.ext, history.on_sent(now, size, probe)))
    }
}

/// Bytes a sealed packet adds around its payload: header with the transport-wide
/// extension, and the AES-GCM tag.
const SEAL_OVERHEAD: usize = 20 + 16;

/// A send leg's retransmission stream. Kept for the leg's lifetime once created, even
/// while a later exchange turns RTX off: a new sealer for the same SSRC would restart its
/// rollover counter and sequence series, and could seal two packets with one SRTP IV.
pub struct RtxStream {
    pub sealer: RtpSealer,
    /// The next RTX sequence number (its own series, starting at a random point).
    pub next_seq: u16,
    /// RTX is agreed now (off: retransmissions go on the primary SSRC).
    pub enabled: bool,
}

/// What [`SendLeg::forward`] did with a packet.
pub enum Forwarded {
    /// A datagram of this many bytes was sealed into the batch.
    Sent(usize),
    /// Video waits for a keyframe: the publisher should ask its client for one.
    NeedsKeyframe,
    /// Not for this leg now (closed, not ready, paused, too old, duplicate, or failed).
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
                rtx: None,
                dest: None,
                open: true,
                sent: 0,
                sent_bytes: 0,
                twcc: None,
                layers: Vec::new(),
                vp8: None,
                svc: None,
                dd_ext: None,
                vp9: false,
            }),
            usage: None,
        }
    }

    /// A VP8 stream: its descriptors are rewritten and its temporal layers chosen (see
    /// [`Vp8Stream`]).
    pub fn with_vp8_munging(self) -> Self {
        if let Ok(mut st) = self.state.lock() {
            st.vp8 = Some(Box::default());
        }
        self
    }

    /// A scalable stream (VP9, whose layers its payload descriptor names, if `vp9`; AV1,
    /// whose layers come with each packet from its dependency descriptor): spatial and
    /// temporal layers above the subscriber's are left out (see [`SvcSelector`]); it starts
    /// with every layer until the publisher chooses.
    pub fn with_svc(self, vp9: bool) -> Self {
        if let Ok(mut st) = self.state.lock() {
            st.svc = Some(Box::new(SvcSelector::new(u8::MAX)));
            st.vp9 = vp9;
        }
        self
    }

    /// Counts what the leg sends into the subscriber's usage.
    pub fn with_usage(mut self, usage: Arc<UsageInterval>) -> Self {
        self.usage = Some(usage);
        self
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

    /// True once a panic happened while the leg was locked: the leg is dead.
    pub fn is_poisoned(&self) -> bool {
        self.state.is_poisoned()
    }

    /// Rewrites and seals one packet of the publisher's track for this subscriber
    /// (`retransmission`: an answer to its NACK, mapped like the original), into `batch`.
    pub fn forward(
        &self,
        now: Instant,
        pkt: &MediaPacket,
        retransmission: bool,
        batch: &mut SendBatch,
    ) -> Forwarded {
        // A panic in here must not take the publisher's actor down with it (see the module
        // docs): it poisons this leg only. (The batch stays consistent: a datagram is only
        // queued once it was sealed whole.)
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.forward_locked(now, pkt, retransmission, batch)
        }))
        .unwrap_or(Forwarded::Skipped);
        if let (Forwarded::Sent(len), Some(usage)) = (&result, &self.usage) {
            usage.add_out(*len as u64);
        }
        result
    }

    /// Sends `size` bytes of padding (at most 255) on the leg's RTX stream: one packet of a
    /// bandwidth probe, counted by the client's transport (its TWCC feedback names it) and
    /// never seen by its decoder. Returns the datagram's length; 0 when the leg has no RTX
    /// stream, no transport-wide sequence or is not ready.
    pub fn send_padding(&self, size: usize, batch: &mut SendBatch) -> usize {
        let Some(mut st) = self.lock() else {
            return 0;
        };
        let st = &mut *st;
        let (true, Some(dest), Some(twcc)) = (st.open, st.dest, st.twcc.as_ref()) else {
            return 0;
        };
        let timestamp = st.stats.last_timestamp().unwrap_or(0);
        let Some(rtx) = st.rtx.as_mut().filter(|r| r.enabled) else {
            return 0;
        };
        let padding = size.clamp(1, 255) as u8;
        let fields = SealFields {
            seq: rtx.next_seq,
            timestamp,
            marker: false,
            transport_seq: twcc.next(SEAL_OVERHEAD + usize::from(padding)),
            padding,
            extra: None,
        };
        let len = batch.push_with(dest, |buf| {
            rtx.sealer.seal_packet(&fields, &[], &[], buf).is_ok()
        });
        if len > 0 {
            rtx.next_seq = rtx.next_seq.wrapping_add(1);
        }
        len
    }

    fn forward_locked(
        &self,
        now: Instant,
        pkt: &MediaPacket,
        retransmission: bool,
        batch: &mut SendBatch,
    ) -> Forwarded {
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
        // VP9 and AV1 SVC: layers above the subscriber's are left out, and the picture's
        // marker bit moves to the last packet of the highest layer it gets.
        let mut marker = None;
        // (Only packets of the source the forwarder follows: a simulcast track's other
        // layers reach the forwarder to switch at their keyframe, and their sequence
        // numbers would confuse the selector's.)
        if let Some(svc) = st.svc.as_mut()
            && st.forwarder.current_source().is_none_or(|s| s == pkt.ssrc)
            && let Some(layer) = pkt.layer.or_else(|| {
                if st.vp9 {
                    vp9_layer(&pkt.payload)
                } else {
                    None
                }
            })
        {
            if retransmission {
                match svc.retransmission(pkt.seq, pkt.marker) {
                    Some(m) => marker = Some(m),
                    None => return Forwarded::Skipped,
                }
            } else {
                match svc.select(pkt.seq, layer, pkt.keyframe, pkt.marker) {
                    SvcVerdict::Forward { marker: m } => marker = Some(m),
                    SvcVerdict::Drop => {
                        st.forwarder.skip(pkt);
                        // A paused leg waits for nothing (it asks when it resumes).
                        return if svc.needs_keyframe() && !st.forwarder.is_paused() {
                            Forwarded::NeedsKeyframe
                        } else {
                            Forwarded::Skipped
                        };
                    }
                }
            }
        }
        // VP8 temporal layers: pictures above the subscriber's are left out whole, and
        // numbered past (sequence numbers and picture ids).
        if !retransmission
            && let Some(vp8) = st.vp8.as_mut()
            && vp8.leave_out(&mut st.forwarder, pkt)
        {
            return Forwarded::Skipped;
        }
        let mut header: ForwardedHeader = if retransmission {
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
        if let Some(marker) = marker {
            header.marker = marker;
        }
        // VP8: the descriptor rewritten goes first, the rest of the payload after it.
        let segment = st.forwarder.segments();
        let mut desc = [0u8; VP8_DESCRIPTOR_MAX];
        let desc_len = st.vp8.as_mut().map_or(0, |m| {
            m.munge(segment, retransmission, &pkt.payload, &mut desc)
        });
        let body = &pkt.payload[desc_len..];
        let twcc = st.twcc.as_ref();
        let extra = match (st.dd_ext, &pkt.dependency) {
            (Some((id, two_byte)), Some(data)) => Some(ExtraExtension { id, data, two_byte }),
            _ => None,
        };
        let extra_len = extra.map_or(0, |e| e.data.len() + 2);
        let len = match (&mut st.rtx, retransmission) {
            (Some(rtx), true) if rtx.enabled => {
                // RFC 4588 §4: the RTX stream's own sequence number, the original (as the
                // subscriber saw it) first in the payload.
                let seq = rtx.next_seq;
                let fields = SealFields {
                    seq,
                    timestamp: header.timestamp,
                    marker: header.marker,
                    transport_seq: twcc
                        .and_then(|t| t.next(SEAL_OVERHEAD + extra_len + 2 + pkt.payload.len())),
                    padding: 0,
                    extra,
                };
                let mut prefix = [0u8; 2 + VP8_DESCRIPTOR_MAX];
                prefix[..2].copy_from_slice(&header.seq.to_be_bytes());
                prefix[2..2 + desc_len].copy_from_slice(&desc[..desc_len]);
                let len = batch.push_with(dest, |buf| {
                    rtx.sealer
                        .seal_packet(&fields, &prefix[..2 + desc_len], body, buf)
                        .is_ok()
                });
                if len > 0 {
                    rtx.next_seq = seq.wrapping_add(1);
                    metrics::counter!(RETRANSMISSIONS_METRIC, "stream" => "rtx").increment(1);
                }
                len
            }
            _ => {
                let fields = SealFields {
                    seq: header.seq,
                    timestamp: header.timestamp,
                    marker: header.marker,
                    transport_seq: twcc
                        .and_then(|t| t.next(SEAL_OVERHEAD + extra_len + pkt.payload.len())),
                    padding: 0,
                    extra,
                };
                batch.push_with(dest, |buf| {
                    sealer
                        .seal_packet(&fields, &desc[..desc_len], body, buf)
                        .is_ok()
                })
            }
        };
        if len == 0 {
            return Forwarded::Skipped;
        }
        st.sent += 1;
        st.sent_bytes += len as u64;
        if retransmission && !st.rtx.as_ref().is_some_and(|r| r.enabled) {
            metrics::counter!(RETRANSMISSIONS_METRIC, "stream" => "primary").increment(1);
        }
        if !retransmission {
            st.stats.on_sent(now, header.timestamp, pkt.payload.len());
        }
        Forwarded::Sent(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_engine::media::{MediaKind, Ssrc};

    fn leg() -> SendLeg {
        SendLeg::new(
            ParticipantId::from_string("PA_test"),
            Forwarder::new(Ssrc(1), MediaKind::Audio, 48_000),
            SendStats::new(Ssrc(1), 48_000),
        )
    }

    fn packet() -> MediaPacket {
        MediaPacket {
            ssrc: Ssrc(9),
            seq: 1,
            timestamp: 0,
            marker: false,
            payload_type: 111,
            payload: bytes::Bytes::from_static(&[1, 2, 3]),
            arrival: Instant::now(),
            keyframe: false,
            audio_level: None,
            layer: None,
            dependency: None,
        }
    }

    #[test]
    fn a_leg_without_sealer_or_path_skips() {
        let l = leg();
        let mut batch = SendBatch::default();
        assert!(matches!(
            l.forward(Instant::now(), &packet(), false, &mut batch),
            Forwarded::Skipped
        ));
        assert!(batch.is_empty());
        l.close();
        assert!(!l.is_open());
    }

    /// A panic while a leg is locked (a bug) poisons that leg only: forwarding on it is
    /// skipped from then on, without unwinding into the caller, and it reports poisoned so
    /// its subscriber can fail alone.
    #[test]
    fn a_panic_inside_a_leg_poisons_only_that_leg() {
        let l = leg();
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _guard = l.lock();
            panic!("a bug inside the leg");
        }));
        assert!(caught.is_err());
        assert!(l.is_poisoned());
        assert!(!l.is_open());
        let mut batch = SendBatch::default();
        assert!(matches!(
            l.forward(Instant::now(), &packet(), false, &mut batch),
            Forwarded::Skipped
        ));
        let other = leg();
        assert!(!other.is_poisoned());
    }
}
