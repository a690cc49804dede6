//! SRTP/SRTCP (RFC 3711, RFC 7714) contexts of one participant, from the DTLS-exported keys.
//!
//! One receive context (the client's key) with a replay window; one send context (our key)
//! for everything the server sends on this transport. Both come from `rtc-srtp`, which keeps
//! per-SSRC state created on first use: the caller must hand it only SSRCs that were
//! negotiated, so a stranger's SSRCs can never grow that state.

use bytes::BytesMut;
use rtc_srtp::context::Context;
use rtc_srtp::option::{srtcp_replay_protection, srtp_replay_protection};

use super::dtls::SrtpKeys;

/// Packets remembered per SSRC for replay detection (mediasoup uses 1024, rtc 64; Chromium
/// reorders video by up to a few hundred packets under loss with RTX).
pub const REPLAY_WINDOW: usize = 512;

/// Why an SRTP operation failed.
#[derive(Debug, thiserror::Error)]
#[error("SRTP: {0}")]
pub struct SrtpError(String);

/// The SRTP state of one transport.
pub struct SrtpSession {
    rx: Context,
    tx: Context,
}

impl SrtpSession {
    pub fn new(keys: &SrtpKeys, crypto: &dyn rtc_crypto::RTCCrypto) -> Result<Self, SrtpError> {
        let err = |e: rtc_shared::error::Error| SrtpError(e.to_string());
        let tx = Context::new(
            &keys.local_key,
            &keys.local_salt,
            keys.profile,
            None,
            None,
            crypto,
        )
        .map_err(err)?;
        let rx = Context::new(
            &keys.remote_key,
            &keys.remote_salt,
            keys.profile,
            Some(srtp_replay_protection(REPLAY_WINDOW)),
            Some(srtcp_replay_protection(REPLAY_WINDOW)),
            crypto,
        )
        .map_err(err)?;
        Ok(Self { rx, tx })
    }

    /// Authenticates and decrypts one SRTP packet whose header was parsed already. Fails on a
    /// bad tag, a replay, or a packet too short for its tag.
    pub fn decrypt_rtp(
        &mut self,
        packet: &[u8],
        header: &rtc_rtp::header::Header,
    ) -> Result<BytesMut, SrtpError> {
        self.rx
            .decrypt_rtp_with_header(packet, header)
            .map_err(|e| SrtpError(e.to_string()))
    }

    /// Encrypts one plaintext RTP packet (header included) whose header is `header`.
    pub fn encrypt_rtp(
        &mut self,
        packet: &[u8],
        header: &rtc_rtp::header::Header,
    ) -> Result<BytesMut, SrtpError> {
        self.tx
            .encrypt_rtp_with_header(packet, header)
            .map_err(|e| SrtpError(e.to_string()))
    }

    pub fn decrypt_rtcp(&mut self, packet: &[u8]) -> Result<BytesMut, SrtpError> {
        self.rx
            .decrypt_rtcp(packet)
            .map_err(|e| SrtpError(e.to_string()))
    }

    pub fn encrypt_rtcp(&mut self, packet: &[u8]) -> Result<BytesMut, SrtpError> {
        self.tx
            .encrypt_rtcp(packet)
            .map_err(|e| SrtpError(e.to_string()))
    }
}

/// The data side of one outgoing stream, sealed outside its transport: a subscriber hands
/// it to the publisher's fan-out, which rewrites and encrypts each copy itself (no queue hop
/// per copy). Its own SRTP context, keyed like the transport's, for this one SSRC only: the
/// transport never encrypts RTP of that SSRC once the sealer exists.
pub struct RtpSealer {
    ctx: Context,
    ssrc: u32,
    /// The payload type agreed for the stream (changes with renegotiation).
    pub payload_type: u8,
    scratch: BytesMut,
}

impl std::fmt::Debug for RtpSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RtpSealer")
            .field("ssrc", &self.ssrc)
            .field("payload_type", &self.payload_type)
            .finish_non_exhaustive()
    }
}

impl RtpSealer {
    pub fn new(
        keys: &SrtpKeys,
        crypto: &dyn rtc_crypto::RTCCrypto,
        ssrc: u32,
        payload_type: u8,
    ) -> Result<Self, SrtpError> {
        let ctx = Context::new(
            &keys.local_key,
            &keys.local_salt,
            keys.profile,
            None,
            None,
            crypto,
        )
        .map_err(|e| SrtpError(e.to_string()))?;
        Ok(Self {
            ctx,
            ssrc,
            payload_type,
            // Grows to the largest packet sealed (audio legs stay small).
            scratch: BytesMut::new(),
        })
    }

    /// One SRTP packet: a 12-byte header (our SSRC, the agreed payload type, the forwarded
    /// sequence number, timestamp and marker) and `payload`, encrypted. Fails only if the
    /// cipher does (or after 2^48 packets).
    pub fn seal(
        &mut self,
        seq: u16,
        timestamp: u32,
        marker: bool,
        payload: &[u8],
    ) -> Result<BytesMut, SrtpError> {
        use bytes::BufMut;
        let header = rtc_rtp::header::Header {
            version: 2,
            marker,
            payload_type: self.payload_type,
            sequence_number: seq,
            timestamp,
            ssrc: self.ssrc,
            ..Default::default()
        };
        self.scratch.clear();
        self.scratch.put_u8(0x80);
        self.scratch
            .put_u8((u8::from(marker) << 7) | (self.payload_type & 0x7f));
        self.scratch.put_u16(seq);
        self.scratch.put_u32(timestamp);
        self.scratch.put_u32(self.ssrc);
        self.scratch.extend_from_slice(payload);
        self.ctx
            .encrypt_rtp_with_header(&self.scratch, &header)
            .map_err(|e| SrtpError(e.to_string()))
    }
}
