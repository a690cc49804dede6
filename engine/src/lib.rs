//! Hearth's sans-IO SFU core.
//!
//! This crate owns the media decisions of the SFU: which packet goes to which subscriber with
//! which header ([`forwarder`]), retransmissions and loss detection ([`nack`]), keyframe
//! request throttling ([`keyframe`]), RTCP report state ([`stats`]), active speakers
//! ([`speaker`]), keyframe detection ([`codec`]) and the shared types and sequence arithmetic
//! they use ([`media`], [`seq`]). It also owns the protocols: the server's WebRTC transport
//! ([`transport`]: ICE-lite, DTLS, SRTP, SDP, RTCP, TWCC on webrtc-rs's component crates),
//! STUN ([`stun`]) and the TURN server ([`turn`]).
//!
//! # Invariants
//!
//! - **Sans-IO.** No async runtime, no sockets, no threads, no clock: every state machine
//!   gets time as an [`std::time::Instant`] argument and returns its effects as values. The
//!   caller (an actor in `hearth-actors`) owns sockets and timers. Tests run in virtual time.
//! - **One vocabulary.** `handle_*`/`on_*` feed input, `poll_*` drain output,
//!   `poll_timeout()`/`handle_timeout(now)` handle time. After feeding input, drain the
//!   `poll_*` outputs until they are empty.
//! - **No panic on input.** Nothing a publisher, subscriber or network sends can make this
//!   crate panic; parsers use bounds-checked reads only.
//! - **No allocation per packet** on the forwarding path: `Forwarder::forward`,
//!   `RetransmissionCache::insert`, `ReceiveStats::on_rtp` and `AudioLevelMeter::observe`
//!   touch fixed-size state only. Payloads are `bytes::Bytes` handles, cloned, never copied.
//! - **Deterministic.** The same inputs give the same outputs; nothing here draws random
//!   numbers (callers pass any randomness in, e.g. [`Forwarder::with_initial`]), with one
//!   exception: the DTLS handshake in [`transport`] draws its randoms from the crypto
//!   provider, as TLS must.

/// Longest duration the timers accept: configured intervals and ages above it are clamped,
/// so deadline arithmetic (`Instant + Duration`) cannot overflow on any input.
pub const MAX_INTERVAL: std::time::Duration = std::time::Duration::from_secs(86_400);

pub mod audio;
pub mod codec;
pub mod dd;
pub mod forwarder;
#[cfg(test)]
mod fuzz;
pub mod keyframe;
pub mod media;
pub mod nack;
pub mod rtp;
pub mod seq;
pub mod speaker;
pub mod stats;
pub mod stt_wire;
pub mod stun;
pub mod svc;
pub mod transport;
pub mod turn;

pub use codec::is_keyframe;
/// [`forwarder::Drop`] under a name that does not shadow the `Drop` trait.
pub use forwarder::Drop as ForwardDrop;
pub use forwarder::{ForwardedHeader, Forwarder};
pub use keyframe::KeyframeRequester;
pub use media::{AudioLevel, Codec, MediaKind, MediaPacket, Ssrc};
pub use nack::{
    NackConfig, NackGenerator, RetransmissionCache, RetransmitLimiter, nack_pairs, nack_seqs,
};
pub use seq::{SeqUnwrapper, TsUnwrapper, seq_diff, seq_newer};
pub use speaker::{ActiveSpeakerDetector, AudioLevelMeter, SpeakerConfig};
pub use stats::{NtpTime, ReceiveStats, ReportBlock, ReportTimer, SendStats, SenderInfo};
