//! The server's own WebRTC transport, sans-IO, on webrtc-rs's component crates.
//!
//! | module | owns |
//! |---|---|
//! | [`ice`] | ICE-lite: checks answered (USERNAME, MESSAGE-INTEGRITY, FINGERPRINT), nomination, consent freshness |
//! | [`dtls`] | DTLS 1.2 server on `rtc-dtls`: node identity, fingerprint check, SRTP key export |
//! | [`srtp`] | SRTP/SRTCP: AES-GCM sealed and opened in place by Hearth (replay window on receive), SRTCP and AES-CM on `rtc-srtp` |
//! | [`sdp`] | offer/answer on `rtc-sdp`: BUNDLE, codecs, extensions, SSRCs, m-line recycling, limits |
//! | [`rtcp`] | RTCP parsing with abuse limits, and builders |
//! | [`rtp_view`] | RTP headers and their extensions read in place |
//! | [`twcc`] | transport-wide congestion control feedback toward publishers, and its reader |
//! | [`bwe`] | send-side bandwidth estimate per subscriber from its TWCC feedback: delay trend, loss, probing |
//! | [`datachannel`] | data channels: SCTP (`rtc-sctp`) over DTLS, DCEP opens, limits and back-pressure |
//! | [`peer`] | one participant's transport: RFC 7983 demux and everything above together |
//!
//! Like the rest of the engine it owns no socket, task or clock: datagrams and `Instant`s
//! come in, datagrams and events go out. One exception to the engine's determinism: the
//! DTLS handshake draws its randoms from the crypto provider, as TLS must, and SCTP its
//! verification tags.

pub mod bwe;
pub mod datachannel;
pub mod dtls;
pub mod ice;
pub mod peer;
pub mod rtcp;
pub mod rtp_view;
pub mod sdp;
pub mod srtp;
pub mod twcc;

#[cfg(test)]
mod fuzz;

/// Property-test cases: `HEARTH_PROPTEST_CASES` when set (the long-running mode), else 256.
#[cfg(test)]
pub(crate) fn proptest_cases() -> u32 {
    std::env::var("HEARTH_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

pub use datachannel::{ChannelStats, SendError as ChannelSendError};
pub use dtls::DtlsIdentity;
pub use peer::{
    CLOSED_BY_PEER, Inbound, InboundTrack, Peer, PeerConfig, PeerError, PeerEvent, PeerStats,
    SenderKey,
};
pub use rtcp::Feedback;
pub use sdp::CodecParams;
pub use srtp::{ExtraExtension, RtpSealer, SealFields};
