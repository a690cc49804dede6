//! SRTP/SRTCP (RFC 3711, RFC 7714) contexts of one participant, from the DTLS-exported keys.
//!
//! One receive context (the client's key) with a replay window; one send context (our key)
//! for everything the server sends on this transport. Both come from `rtc-srtp`, which keeps
//! per-SSRC state created on first use: the caller must hand it only SSRCs that were
//! negotiated, so a stranger's SSRCs can never grow that state.

use bytes::BytesMut;
use rtc_srtp::context::Context;
use rtc_srtp::option::{srtcp_replay_protection, srtp_replay_protection};
use rtc_srtp::protection_profile::ProtectionProfile;

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
/// per copy). Keyed like the transport's send context, for this one SSRC only: the
/// transport never encrypts RTP of that SSRC once the sealer exists.
///
/// With AES-GCM (RFC 7714, what browsers and our clients negotiate) the sealer is Hearth's
/// own: the packet is written once, straight into the caller's buffer, and encrypted in
/// place (no scratch copy, no allocation per packet). Other profiles go through `rtc-srtp`'s
/// context and are copied into the buffer.
pub struct RtpSealer {
    ssrc: u32,
    /// The payload type agreed for the stream (changes with renegotiation).
    pub payload_type: u8,
    cipher: SealerCipher,
}

enum SealerCipher {
    Gcm(GcmSealer),
    Context(Box<Context>),
}

impl std::fmt::Debug for RtpSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RtpSealer")
            .field("ssrc", &self.ssrc)
            .field("payload_type", &self.payload_type)
            .field(
                "cipher",
                &match self.cipher {
                    SealerCipher::Gcm(_) => "aes-gcm (in place)",
                    SealerCipher::Context(_) => "rtc-srtp context",
                },
            )
            .finish_non_exhaustive()
    }
}

/// RTP header written by the sealer: no CSRCs, no extensions.
const SEALED_HEADER_LEN: usize = 12;
/// AES-GCM's authentication tag (RFC 7714: 16 octets).
const GCM_TAG_LEN: usize = 16;

impl RtpSealer {
    pub fn new(
        keys: &SrtpKeys,
        crypto: &dyn rtc_crypto::RTCCrypto,
        ssrc: u32,
        payload_type: u8,
    ) -> Result<Self, SrtpError> {
        let cipher = match keys.profile {
            ProtectionProfile::AeadAes128Gcm | ProtectionProfile::AeadAes256Gcm => {
                SealerCipher::Gcm(GcmSealer::new(keys, crypto)?)
            }
            _ => SealerCipher::Context(Box::new(
                Context::new(
                    &keys.local_key,
                    &keys.local_salt,
                    keys.profile,
                    None,
                    None,
                    crypto,
                )
                .map_err(|e| SrtpError(e.to_string()))?,
            )),
        };
        Ok(Self {
            ssrc,
            payload_type,
            cipher,
        })
    }

    /// Appends one SRTP packet to `out`: a 12-byte header (our SSRC, the agreed payload type,
    /// the forwarded sequence number, timestamp and marker) and `payload`, encrypted and
    /// authenticated. On failure `out` is left as it was. Fails only if the cipher does (or
    /// after 2^48 packets).
    pub fn seal_into(
        &mut self,
        seq: u16,
        timestamp: u32,
        marker: bool,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), SrtpError> {
        let start = out.len();
        let mut header = [0u8; SEALED_HEADER_LEN];
        header[0] = 0x80;
        header[1] = (u8::from(marker) << 7) | (self.payload_type & 0x7f);
        header[2..4].copy_from_slice(&seq.to_be_bytes());
        header[4..8].copy_from_slice(&timestamp.to_be_bytes());
        header[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
        let result = match &mut self.cipher {
            SealerCipher::Gcm(gcm) => gcm.seal(&header, self.ssrc, seq, payload, out),
            SealerCipher::Context(ctx) => {
                out.extend_from_slice(&header);
                out.extend_from_slice(payload);
                let parsed = rtc_rtp::header::Header {
                    version: 2,
                    marker,
                    payload_type: self.payload_type,
                    sequence_number: seq,
                    timestamp,
                    ssrc: self.ssrc,
                    ..Default::default()
                };
                match ctx.encrypt_rtp_with_header(&out[start..], &parsed) {
                    Ok(sealed) => {
                        out.truncate(start);
                        out.extend_from_slice(&sealed);
                        Ok(())
                    }
                    Err(e) => Err(SrtpError(e.to_string())),
                }
            }
        };
        if result.is_err() {
            out.truncate(start);
        }
        result
    }

    /// [`Self::seal_into`] a buffer of its own.
    pub fn seal(
        &mut self,
        seq: u16,
        timestamp: u32,
        marker: bool,
        payload: &[u8],
    ) -> Result<BytesMut, SrtpError> {
        let mut out = Vec::with_capacity(SEALED_HEADER_LEN + payload.len() + GCM_TAG_LEN);
        self.seal_into(seq, timestamp, marker, payload, &mut out)?;
        Ok(BytesMut::from(&out[..]))
    }
}

/// SRTP with AES-GCM for one outgoing SSRC (RFC 7714), sealing in place.
struct GcmSealer {
    aead: Box<dyn rtc_crypto::AeadCipher>,
    /// The SRTP session salt (12 octets), XORed into every IV.
    salt: [u8; 12],
    /// The rollover counter and highest sequence number sent so far (RFC 3711 §3.3.1);
    /// None before the first packet.
    index: Option<(u32, u16)>,
}

impl GcmSealer {
    fn new(keys: &SrtpKeys, crypto: &dyn rtc_crypto::RTCCrypto) -> Result<Self, SrtpError> {
        let (algorithm, block) = match keys.profile {
            ProtectionProfile::AeadAes128Gcm => (
                rtc_crypto::AeadAlgorithm::Aes128Gcm,
                rtc_crypto::BlockCipherAlgorithm::Aes128,
            ),
            ProtectionProfile::AeadAes256Gcm => (
                rtc_crypto::AeadAlgorithm::Aes256Gcm,
                rtc_crypto::BlockCipherAlgorithm::Aes256,
            ),
            other => return Err(SrtpError(format!("not an AES-GCM profile: {other:?}"))),
        };
        if keys.local_key.len() != keys.profile.key_len()
            || keys.local_salt.len() != keys.profile.salt_len()
        {
            return Err(SrtpError("master key or salt of the wrong length".into()));
        }
        let session_key = derive_session_key(
            crypto,
            block,
            LABEL_SRTP_ENCRYPTION,
            &keys.local_key,
            &keys.local_salt,
            keys.local_key.len(),
        )?;
        let salt_bytes = derive_session_key(
            crypto,
            block,
            LABEL_SRTP_SALT,
            &keys.local_key,
            &keys.local_salt,
            12,
        )?;
        let mut salt = [0u8; 12];
        salt.copy_from_slice(&salt_bytes);
        let aead = crypto
            .new_aead(algorithm, &session_key)
            .map_err(|e| SrtpError(e.to_string()))?;
        if aead.tag_len() != GCM_TAG_LEN {
            return Err(SrtpError("AES-GCM with an unexpected tag length".into()));
        }
        Ok(Self {
            aead,
            salt,
            index: None,
        })
    }

    /// The rollover counter for `seq`, from the highest sequence number sent so far (the
    /// estimate of RFC 3711 Appendix A, so a retransmission of a packet from before a wrap
    /// gets the counter it was first sent with); advances the state for a newer packet.
    fn rollover_for(&mut self, seq: u16) -> Result<u32, SrtpError> {
        let Some((roc, highest)) = self.index else {
            self.index = Some((0, seq));
            return Ok(0);
        };
        const HALF: i32 = 0x8000;
        let (s, h) = (i32::from(seq), i32::from(highest));
        let guess: i64 = if h < HALF {
            if s - h > HALF {
                i64::from(roc) - 1
            } else {
                i64::from(roc)
            }
        } else if h - HALF > s {
            i64::from(roc) + 1
        } else {
            i64::from(roc)
        };
        if guess > i64::from(u32::MAX) {
            // 2^48 packets under one key (RFC 3711 §9.2).
            return Err(SrtpError("SRTP packet index exhausted".into()));
        }
        if guess < 0 {
            // A packet from before the very first one sent: there is no earlier counter.
            return Ok(0);
        }
        let guess = guess as u32;
        if guess > roc || (guess == roc && s > h) {
            self.index = Some((guess, seq));
        }
        Ok(guess)
    }

    fn seal(
        &mut self,
        header: &[u8; SEALED_HEADER_LEN],
        ssrc: u32,
        seq: u16,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), SrtpError> {
        let roc = self.rollover_for(seq)?;
        // RFC 7714 §8.1: 0x0000 || SSRC || ROC || SEQ, XORed with the session salt.
        let mut iv = [0u8; 12];
        iv[2..6].copy_from_slice(&ssrc.to_be_bytes());
        iv[6..10].copy_from_slice(&roc.to_be_bytes());
        iv[10..12].copy_from_slice(&seq.to_be_bytes());
        for (b, s) in iv.iter_mut().zip(self.salt) {
            *b ^= s;
        }
        let start = out.len();
        out.reserve(SEALED_HEADER_LEN + payload.len() + GCM_TAG_LEN);
        out.extend_from_slice(header);
        out.extend_from_slice(payload);
        let (aad, body) = out[start..].split_at_mut(SEALED_HEADER_LEN);
        let mut tag = [0u8; GCM_TAG_LEN];
        self.aead
            .seal_in_place(&iv, aad, body, &mut tag)
            .map_err(|e| SrtpError(e.to_string()))?;
        out.extend_from_slice(&tag);
        Ok(())
    }
}

/// RFC 3711 §4.3.1 labels (RFC 7714 §11 reuses them for AES-GCM).
const LABEL_SRTP_ENCRYPTION: u8 = 0x00;
const LABEL_SRTP_SALT: u8 = 0x02;

/// The SRTP key derivation (RFC 3711 §4.3.3, AES-CM PRF; RFC 7714 §11 and RFC 6188 for
/// AES-256) with a key derivation rate of zero, as DTLS-SRTP uses (RFC 5764 §4.1.2):
/// AES_master(IV + counter) over the blocks, IV = (master salt, label XORed into octet 7).
fn derive_session_key(
    crypto: &dyn rtc_crypto::RTCCrypto,
    block: rtc_crypto::BlockCipherAlgorithm,
    label: u8,
    master_key: &[u8],
    master_salt: &[u8],
    len: usize,
) -> Result<Vec<u8>, SrtpError> {
    if master_salt.len() > 14 {
        return Err(SrtpError("master salt longer than 14 octets".into()));
    }
    let mut iv = [0u8; 16];
    iv[..master_salt.len()].copy_from_slice(master_salt);
    iv[7] ^= label;
    let mut out = Vec::with_capacity(len.div_ceil(16) * 16);
    for counter in 0..len.div_ceil(16) as u16 {
        let mut input = iv;
        input[14..16].copy_from_slice(&counter.to_be_bytes());
        crypto
            .block_encrypt(block, master_key, &mut input)
            .map_err(|e| SrtpError(e.to_string()))?;
        out.extend_from_slice(&input);
    }
    out.truncate(len);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crypto() -> &'static dyn rtc_crypto::RTCCrypto {
        static PROVIDER: std::sync::OnceLock<std::sync::Arc<dyn rtc_crypto::RTCCryptoProvider>> =
            std::sync::OnceLock::new();
        PROVIDER
            .get_or_init(|| rtc_crypto::default_provider().unwrap())
            .crypto()
    }

    fn keys(profile: ProtectionProfile) -> SrtpKeys {
        let key: Vec<u8> = (0..profile.key_len() as u8).map(|i| i * 7 + 3).collect();
        let salt: Vec<u8> = (0..profile.salt_len() as u8).map(|i| i * 13 + 1).collect();
        SrtpKeys {
            profile,
            local_key: key.clone(),
            local_salt: salt.clone(),
            remote_key: key,
            remote_salt: salt,
        }
    }

    fn reference_encrypt(
        ctx: &mut Context,
        ssrc: u32,
        pt: u8,
        seq: u16,
        ts: u32,
        marker: bool,
        payload: &[u8],
    ) -> Vec<u8> {
        let header = rtc_rtp::header::Header {
            version: 2,
            marker,
            payload_type: pt,
            sequence_number: seq,
            timestamp: ts,
            ssrc,
            ..Default::default()
        };
        let mut plain = vec![0x80, (u8::from(marker) << 7) | pt];
        plain.extend_from_slice(&seq.to_be_bytes());
        plain.extend_from_slice(&ts.to_be_bytes());
        plain.extend_from_slice(&ssrc.to_be_bytes());
        plain.extend_from_slice(payload);
        ctx.encrypt_rtp_with_header(&plain, &header)
            .unwrap()
            .to_vec()
    }

    /// Hearth's in-place AES-GCM sealer produces byte for byte what `rtc-srtp` produces for
    /// the same keys and packets (so its key derivation, IV and rollover counter are RFC 7714's),
    /// across a sequence-number wrap, and its packets open with `rtc-srtp`'s receive context.
    #[test]
    fn own_gcm_sealer_matches_rtc_srtp_across_a_wrap() {
        for profile in [
            ProtectionProfile::AeadAes128Gcm,
            ProtectionProfile::AeadAes256Gcm,
        ] {
            let k = keys(profile);
            let mut ours = RtpSealer::new(&k, crypto(), 0x1234_5678, 111).unwrap();
            assert!(matches!(ours.cipher, SealerCipher::Gcm(_)));
            let mut reference =
                Context::new(&k.local_key, &k.local_salt, profile, None, None, crypto()).unwrap();
            let mut rx = SrtpSession::new(&k, crypto()).unwrap();
            let mut out = Vec::new();
            for (n, seq) in (65_530u16..=65_535).chain(0..6).enumerate() {
                let payload: Vec<u8> = (0..(20 + n) as u8).collect();
                let ts = 960 * n as u32;
                let marker = n % 3 == 0;
                out.clear();
                out.extend_from_slice(b"prefix");
                ours.seal_into(seq, ts, marker, &payload, &mut out).unwrap();
                let sealed = &out[6..];
                let expected =
                    reference_encrypt(&mut reference, 0x1234_5678, 111, seq, ts, marker, &payload);
                assert_eq!(sealed, &expected[..], "{profile:?} seq {seq}");
                let mut reader = sealed;
                let header =
                    <rtc_rtp::header::Header as rtc_shared::marshal::Unmarshal>::unmarshal(
                        &mut reader,
                    )
                    .unwrap();
                let opened = rx.decrypt_rtp(sealed, &header).unwrap();
                assert_eq!(&opened[12..], &payload[..]);
            }
        }
    }

    /// A retransmission of a packet sent before the wrap is sealed with the rollover counter
    /// it had then; packets after the wrap keep the new one.
    #[test]
    fn rollover_counter_of_old_and_new_packets() {
        let k = keys(ProtectionProfile::AeadAes128Gcm);
        let mut gcm = GcmSealer::new(&k, crypto()).unwrap();
        assert_eq!(gcm.rollover_for(65_000).unwrap(), 0);
        assert_eq!(gcm.rollover_for(65_535).unwrap(), 0);
        assert_eq!(gcm.rollover_for(10).unwrap(), 1);
        assert_eq!(gcm.rollover_for(65_534).unwrap(), 0, "retransmission");
        assert_eq!(gcm.rollover_for(11).unwrap(), 1);
        assert_eq!(gcm.index, Some((1, 11)));
        // Before the very first packet: counter 0, state unchanged.
        let mut fresh = GcmSealer::new(&k, crypto()).unwrap();
        fresh.rollover_for(5).unwrap();
        assert_eq!(fresh.rollover_for(65_000).unwrap(), 0);
        assert_eq!(fresh.index, Some((0, 5)));
    }

    /// The packet RFC 7714 defines for the 48-bit packet index `index`, computed directly
    /// (fresh AEAD, IV from the true rollover counter) as ground truth for the sealer's
    /// counter tracking.
    fn reference_gcm(k: &SrtpKeys, ssrc: u32, index: u64, payload: &[u8]) -> Vec<u8> {
        let block = rtc_crypto::BlockCipherAlgorithm::Aes128;
        let key = derive_session_key(
            crypto(),
            block,
            LABEL_SRTP_ENCRYPTION,
            &k.local_key,
            &k.local_salt,
            16,
        )
        .unwrap();
        let salt = derive_session_key(
            crypto(),
            block,
            LABEL_SRTP_SALT,
            &k.local_key,
            &k.local_salt,
            12,
        )
        .unwrap();
        let mut aead = crypto()
            .new_aead(rtc_crypto::AeadAlgorithm::Aes128Gcm, &key)
            .unwrap();
        let (roc, seq) = ((index >> 16) as u32, index as u16);
        let mut packet = vec![0x80, 100];
        packet.extend_from_slice(&seq.to_be_bytes());
        packet.extend_from_slice(&7u32.to_be_bytes());
        packet.extend_from_slice(&ssrc.to_be_bytes());
        packet.extend_from_slice(payload);
        let mut iv = [0u8; 12];
        iv[2..6].copy_from_slice(&ssrc.to_be_bytes());
        iv[6..10].copy_from_slice(&roc.to_be_bytes());
        iv[10..12].copy_from_slice(&seq.to_be_bytes());
        for (b, s) in iv.iter_mut().zip(salt) {
            *b ^= s;
        }
        let (aad, body) = packet.split_at_mut(12);
        let mut tag = [0u8; 16];
        aead.seal_in_place(&iv, aad, body, &mut tag).unwrap();
        packet.extend_from_slice(&tag);
        packet
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(super::super::proptest_cases()))]
        /// A stream that starts at any sequence number (rollover counter 0), moves forward in steps of any size below half the
        /// sequence space (so it wraps many times) and retransmits packets up to 3,000 behind
        /// its newest: every packet is sealed under the rollover counter of its true 48-bit
        /// index, and holds exactly header + payload + tag.
        #[test]
        fn every_packet_is_sealed_under_its_true_index(
            first in 0u64..65_536,
            steps in proptest::collection::vec(
                (proptest::prelude::any::<bool>(), 0u64..30_000, proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)),
                1..60,
            ),
        ) {
            let k = keys(ProtectionProfile::AeadAes128Gcm);
            let mut ours = RtpSealer::new(&k, crypto(), 99, 100).unwrap();
            let mut newest = first;
            let mut out = Vec::new();
            for (i, (retransmit, delta, payload)) in steps.into_iter().enumerate() {
                let index = if i == 0 {
                    first
                } else if retransmit {
                    newest.saturating_sub(delta % 3_000).max(first)
                } else {
                    newest += delta;
                    newest
                };
                out.clear();
                ours.seal_into(index as u16, 7, false, &payload, &mut out).unwrap();
                proptest::prop_assert_eq!(out.len(), 12 + payload.len() + 16);
                proptest::prop_assert_eq!(&out, &reference_gcm(&k, 99, index, &payload), "index {}", index);
            }
        }
    }

    /// AES-CM profiles still seal (through `rtc-srtp`), into the caller's buffer too.
    #[test]
    fn aes_cm_profile_seals_through_the_context() {
        let k = keys(ProtectionProfile::Aes128CmHmacSha1_80);
        let mut ours = RtpSealer::new(&k, crypto(), 7, 96).unwrap();
        assert!(matches!(ours.cipher, SealerCipher::Context(_)));
        let mut out = vec![1, 2, 3];
        ours.seal_into(1, 2, false, &[9; 40], &mut out).unwrap();
        assert_eq!(out.len(), 3 + 12 + 40 + 10);
        let mut rx = SrtpSession::new(&k, crypto()).unwrap();
        let sealed = &out[3..];
        let mut reader = sealed;
        let header =
            <rtc_rtp::header::Header as rtc_shared::marshal::Unmarshal>::unmarshal(&mut reader)
                .unwrap();
        assert_eq!(
            &rx.decrypt_rtp(sealed, &header).unwrap()[12..],
            &[9; 40][..]
        );
    }
}
