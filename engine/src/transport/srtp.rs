//! SRTP/SRTCP (RFC 3711, RFC 7714) contexts of one participant, from the DTLS-exported keys.
//!
//! One receive context (the client's key) with a replay window; one send context (our key)
//! for everything the server sends on this transport. Both come from `rtc-srtp`, which keeps
//! per-SSRC state created on first use: the caller must hand it only SSRCs that were
//! negotiated, so a stranger's SSRCs can never grow that state.

use bytes::BytesMut;
use rtc_shared::marshal::Unmarshal;
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
    /// SRTCP, and SRTP of profiles other than AES-GCM.
    rx: Context,
    tx: Context,
    /// SRTP with AES-GCM: Hearth's own, in place.
    rx_gcm: Option<GcmOpener>,
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
        let rx_gcm = match keys.profile {
            ProtectionProfile::AeadAes128Gcm | ProtectionProfile::AeadAes256Gcm => Some(
                GcmOpener::new(keys.profile, &keys.remote_key, &keys.remote_salt, crypto)?,
            ),
            _ => None,
        };
        Ok(Self { rx, tx, rx_gcm })
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

    /// Authenticates and decrypts one SRTP packet in place, whose RTP header is
    /// `header_len` octets with `ssrc` and `seq`: on success `packet` is the plain RTP packet
    /// (its tag removed). Fails on a bad tag, a replay (or a packet older than the replay
    /// window), or a packet too short for its tag; the packet must then be dropped. Per-SSRC
    /// state is created only for a packet that authenticated.
    pub fn open_rtp(
        &mut self,
        packet: &mut BytesMut,
        header_len: usize,
        ssrc: u32,
        seq: u16,
    ) -> Result<(), SrtpError> {
        if let Some(gcm) = &mut self.rx_gcm {
            return gcm.open(packet, header_len, ssrc, seq);
        }
        let header = rtc_rtp::header::Header::unmarshal(&mut &packet[..])
            .map_err(|e| SrtpError(e.to_string()))?;
        *packet = self.decrypt_rtp(packet, &header)?;
        Ok(())
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
/// ...and with its largest extension block: the preamble, the transport-wide sequence
/// number and one more element of up to 255 octets in the two-byte form, padded.
const MAX_SEALED_HEADER_LEN: usize = SEALED_HEADER_LEN + 4 + 4 + 2 + 255 + 3;

/// Writes `fields`' header extensions (RFC 8285) after the fixed header in `header` and
/// sets the X bit; returns the header's length. The one-byte form when every element fits
/// it (ids 1 to 14, 1 to 16 octets); the two-byte form when the transport-wide sequence
/// number's id is above 14, or the extra element needs it and allows it; otherwise the
/// extra element is left out.
fn write_extensions(header: &mut [u8; MAX_SEALED_HEADER_LEN], fields: &SealFields<'_>) -> usize {
    // A transport-wide sequence number agreed with an id above 14 goes in the two-byte
    // form (RFC 8285 4.3: a peer that agreed such an id reads that form), on every packet,
    // so the stream never mixes the forms.
    let twcc = fields
        .transport_seq
        .filter(|(id, _)| *id >= 1)
        .map(|(id, seq)| (id, seq.to_be_bytes()));
    let twcc_two_byte = twcc.is_some_and(|(id, _)| id > 14);
    let extra = fields
        .extra
        .filter(|e| e.id >= 1 && !e.data.is_empty() && e.data.len() <= 255);
    let fits_one = |e: &ExtraExtension<'_>| e.id <= 14 && e.data.len() <= 16;
    let extra = extra.filter(|e| fits_one(e) || e.two_byte || twcc_two_byte);
    let one_byte = !twcc_two_byte && extra.as_ref().is_none_or(fits_one);
    if twcc.is_none() && extra.is_none() {
        return SEALED_HEADER_LEN;
    }
    let mut at = SEALED_HEADER_LEN + 4;
    let mut element = |header: &mut [u8; MAX_SEALED_HEADER_LEN], id: u8, data: &[u8]| {
        if one_byte {
            header[at] = (id << 4) | (data.len() as u8 - 1);
            at += 1;
        } else {
            header[at] = id;
            header[at + 1] = data.len() as u8;
            at += 2;
        }
        header[at..at + data.len()].copy_from_slice(data);
        at += data.len();
    };
    if let Some((id, seq)) = twcc {
        element(header, id, &seq);
    }
    if let Some(e) = extra {
        element(header, e.id, e.data);
    }
    let end = at.next_multiple_of(4);
    header[at..end].fill(0);
    let words = ((end - SEALED_HEADER_LEN - 4) / 4) as u16;
    let profile: u16 = if one_byte { 0xBEDE } else { 0x1000 };
    header[0] |= 0x10;
    header[12..14].copy_from_slice(&profile.to_be_bytes());
    header[14..16].copy_from_slice(&words.to_be_bytes());
    end
}
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
        self.seal_with_prefix(seq, timestamp, marker, &[], payload, out)
    }

    /// [`Self::seal_into`] with `prefix` written before `payload` (an RTX packet's original
    /// sequence number, RFC 4588 §4).
    pub fn seal_with_prefix(
        &mut self,
        seq: u16,
        timestamp: u32,
        marker: bool,
        prefix: &[u8],
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), SrtpError> {
        self.seal_packet(
            &SealFields {
                seq,
                timestamp,
                marker,
                ..SealFields::default()
            },
            prefix,
            payload,
            out,
        )
    }

    /// Appends one SRTP packet with everything [`SealFields`] can say: the transport-wide
    /// sequence number in a one-byte header extension (RFC 8285), and RTP padding (a probe
    /// packet is padding only).
    pub fn seal_packet(
        &mut self,
        fields: &SealFields<'_>,
        prefix: &[u8],
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), SrtpError> {
        let start = out.len();
        let mut header = [0u8; MAX_SEALED_HEADER_LEN];
        let padded = fields.padding > 0;
        header[0] = 0x80 | if padded { 0x20 } else { 0 };
        header[1] = (u8::from(fields.marker) << 7) | (self.payload_type & 0x7f);
        header[2..4].copy_from_slice(&fields.seq.to_be_bytes());
        header[4..8].copy_from_slice(&fields.timestamp.to_be_bytes());
        header[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
        let header_len = write_extensions(&mut header, fields);
        let mut pad = [0u8; 255];
        let pad = if padded {
            let n = usize::from(fields.padding);
            pad[n - 1] = fields.padding;
            &pad[..n]
        } else {
            &pad[..0]
        };
        let header = &header[..header_len];
        let result = match &mut self.cipher {
            SealerCipher::Gcm(gcm) => {
                gcm.seal(header, self.ssrc, fields.seq, [prefix, payload, pad], out)
            }
            SealerCipher::Context(ctx) => {
                out.extend_from_slice(header);
                out.extend_from_slice(prefix);
                out.extend_from_slice(payload);
                out.extend_from_slice(pad);
                match ctx.encrypt_rtp(&out[start..]) {
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
}

/// What [`RtpSealer::seal_packet`] writes besides the payload.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SealFields<'a> {
    pub seq: u16,
    pub timestamp: u32,
    pub marker: bool,
    /// (extension id, transport-wide sequence number); ids above 14 are written in the
    /// two-byte header form, id 0 not at all.
    pub transport_seq: Option<(u8, u16)>,
    /// Octets of RTP padding after the payload (0: none; the last one holds the count).
    pub padding: u8,
    /// One more header extension element (a forwarded dependency descriptor).
    pub extra: Option<ExtraExtension<'a>>,
}

/// A header extension element a sealed packet carries besides the transport-wide sequence
/// number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExtraExtension<'a> {
    pub id: u8,
    pub data: &'a [u8],
    /// The two-byte form may be used (`a=extmap-allow-mixed` agreed): elements longer than
    /// 16 octets, or with ids above 14, need it. Without it such an element is left out.
    pub two_byte: bool,
}

/// SRTP with AES-GCM for one outgoing SSRC (RFC 7714), sealing in place.
struct GcmSealer {
    aead: Box<dyn rtc_crypto::AeadCipher>,
    /// The SRTP session salt (12 octets), XORed into every IV.
    salt: [u8; 12],
    /// The highest 48-bit packet index sent so far (RFC 3711 §3.3.1); None before the
    /// first packet.
    highest: Option<u64>,
}

impl GcmSealer {
    fn new(keys: &SrtpKeys, crypto: &dyn rtc_crypto::RTCCrypto) -> Result<Self, SrtpError> {
        let (aead, salt) = gcm_session(keys.profile, &keys.local_key, &keys.local_salt, crypto)?;
        Ok(Self {
            aead,
            salt,
            highest: None,
        })
    }

    /// The rollover counter for `seq`, from the highest index sent so far (the estimate of
    /// RFC 3711 Appendix A, so a retransmission of a packet from before a wrap gets the
    /// counter it was first sent with); advances the state for a newer packet.
    fn rollover_for(&mut self, seq: u16) -> Result<u32, SrtpError> {
        let Some(highest) = self.highest else {
            self.highest = Some(u64::from(seq));
            return Ok(0);
        };
        let Some(index) = estimate_index(highest, seq)? else {
            // A packet from before the very first one sent: there is no earlier counter.
            return Ok(0);
        };
        if index > highest {
            self.highest = Some(index);
        }
        Ok((index >> 16) as u32)
    }

    fn seal(
        &mut self,
        header: &[u8],
        ssrc: u32,
        seq: u16,
        parts: [&[u8]; 3],
        out: &mut Vec<u8>,
    ) -> Result<(), SrtpError> {
        let roc = self.rollover_for(seq)?;
        let iv = gcm_iv(&self.salt, ssrc, roc, seq);
        let start = out.len();
        let body_len: usize = parts.iter().map(|p| p.len()).sum();
        out.reserve(header.len() + body_len + GCM_TAG_LEN);
        out.extend_from_slice(header);
        for part in parts {
            out.extend_from_slice(part);
        }
        let (aad, body) = out[start..].split_at_mut(header.len());
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

/// RFC 3711 §3.3.1 and Appendix A: the 48-bit packet index of `seq`, given the highest
/// index so far. `Ok(None)` for a packet from before the stream's first rollover counter;
/// an error once the index space (2^48 packets under one key) is exhausted.
fn estimate_index(highest: u64, seq: u16) -> Result<Option<u64>, SrtpError> {
    const HALF: i64 = 0x8000;
    let roc = (highest >> 16) as i64;
    let (s, h) = (i64::from(seq), (highest & 0xffff) as i64);
    let guess = if h < HALF {
        if s - h > HALF { roc - 1 } else { roc }
    } else if h - HALF > s {
        roc + 1
    } else {
        roc
    };
    if guess < 0 {
        return Ok(None);
    }
    if guess > i64::from(u32::MAX) {
        return Err(SrtpError("SRTP packet index exhausted".into()));
    }
    Ok(Some(((guess as u64) << 16) | u64::from(seq)))
}

/// Packets remembered per SSRC by the in-place opener, as 64-bit words.
const REPLAY_WORDS: usize = REPLAY_WINDOW / 64;

/// Receive state of one authenticated SSRC: the highest index and which of the
/// [`REPLAY_WINDOW`] indices at or below it arrived (bit `d`: index `highest - d`).
struct ReplayState {
    highest: u64,
    seen: [u64; REPLAY_WORDS],
    /// When the stream last authenticated a packet (the opener's packet counter): the
    /// least recent gives way when the opener is full.
    used: u64,
}

impl ReplayState {
    fn new(index: u64, used: u64) -> Self {
        let mut seen = [0; REPLAY_WORDS];
        seen[0] = 1;
        Self {
            highest: index,
            seen,
            used,
        }
    }

    /// True if `index` arrived before or is older than the window.
    fn is_replay(&self, index: u64) -> bool {
        if index > self.highest {
            return false;
        }
        let d = (self.highest - index) as usize;
        d >= REPLAY_WINDOW || self.seen[d / 64] & (1 << (d % 64)) != 0
    }

    /// Records an authenticated packet.
    fn accept(&mut self, index: u64) {
        if index > self.highest {
            let shift = index - self.highest;
            self.highest = index;
            if shift >= REPLAY_WINDOW as u64 {
                self.seen = [0; REPLAY_WORDS];
            } else {
                let (words, bits) = ((shift / 64) as usize, (shift % 64) as u32);
                for i in (0..REPLAY_WORDS).rev() {
                    let from = i.checked_sub(words);
                    let hi = from.map_or(0, |f| self.seen[f]);
                    let lo = from
                        .and_then(|f| f.checked_sub(1))
                        .map_or(0, |f| self.seen[f]);
                    self.seen[i] = if bits == 0 {
                        hi
                    } else {
                        (hi << bits) | (lo >> (64 - bits))
                    };
                }
            }
            self.seen[0] |= 1;
        } else {
            let d = (self.highest - index) as usize;
            self.seen[d / 64] |= 1 << (d % 64);
        }
    }
}

/// Most SSRCs one transport's opener keeps state for (the caller only hands it negotiated
/// or mid-announced SSRCs, and state is created only for authenticated packets). A new
/// authenticated SSRC beyond it replaces the stream that was quiet longest, so a long
/// session whose tracks come and go (new SSRCs each time) never runs out.
const MAX_OPEN_STREAMS: usize = 64;

/// SRTP with AES-GCM on receive (RFC 7714), authenticated and decrypted in place, with a
/// replay window per SSRC.
struct GcmOpener {
    aead: Box<dyn rtc_crypto::AeadCipher>,
    salt: [u8; 12],
    streams: std::collections::HashMap<u32, ReplayState>,
    /// Packets authenticated so far (the streams' recency clock).
    opened: u64,
}

impl GcmOpener {
    fn new(
        profile: ProtectionProfile,
        master_key: &[u8],
        master_salt: &[u8],
        crypto: &dyn rtc_crypto::RTCCrypto,
    ) -> Result<Self, SrtpError> {
        let (aead, salt) = gcm_session(profile, master_key, master_salt, crypto)?;
        Ok(Self {
            aead,
            salt,
            streams: std::collections::HashMap::new(),
            opened: 0,
        })
    }

    fn open(
        &mut self,
        packet: &mut BytesMut,
        header_len: usize,
        ssrc: u32,
        seq: u16,
    ) -> Result<(), SrtpError> {
        if packet.len() < header_len + GCM_TAG_LEN {
            return Err(SrtpError(
                "SRTP packet shorter than its header and tag".into(),
            ));
        }
        let state = self.streams.get(&ssrc);
        let index = match state {
            None => u64::from(seq),
            Some(st) => estimate_index(st.highest, seq)?.unwrap_or(u64::from(seq)),
        };
        if state.is_some_and(|st| st.is_replay(index)) {
            return Err(SrtpError("replayed or too old".into()));
        }
        let iv = gcm_iv(&self.salt, ssrc, (index >> 16) as u32, seq);
        let tag_at = packet.len() - GCM_TAG_LEN;
        let (head, tag) = packet.split_at_mut(tag_at);
        let (aad, body) = head.split_at_mut(header_len);
        self.aead
            .open_in_place(&iv, aad, body, tag)
            .map_err(|_| SrtpError("authentication failed".into()))?;
        packet.truncate(tag_at);
        self.opened += 1;
        match self.streams.get_mut(&ssrc) {
            Some(st) => {
                st.accept(index);
                st.used = self.opened;
            }
            None => {
                if self.streams.len() >= MAX_OPEN_STREAMS
                    && let Some(quietest) = self
                        .streams
                        .iter()
                        .min_by_key(|(_, st)| st.used)
                        .map(|(ssrc, _)| *ssrc)
                {
                    self.streams.remove(&quietest);
                }
                self.streams
                    .insert(ssrc, ReplayState::new(index, self.opened));
            }
        }
        Ok(())
    }
}

/// The SRTP session cipher and salt for an AES-GCM profile (RFC 7714 §11).
fn gcm_session(
    profile: ProtectionProfile,
    master_key: &[u8],
    master_salt: &[u8],
    crypto: &dyn rtc_crypto::RTCCrypto,
) -> Result<(Box<dyn rtc_crypto::AeadCipher>, [u8; 12]), SrtpError> {
    let (algorithm, block) = match profile {
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
    if master_key.len() != profile.key_len() || master_salt.len() != profile.salt_len() {
        return Err(SrtpError("master key or salt of the wrong length".into()));
    }
    let session_key = derive_session_key(
        crypto,
        block,
        LABEL_SRTP_ENCRYPTION,
        master_key,
        master_salt,
        master_key.len(),
    )?;
    let salt_bytes =
        derive_session_key(crypto, block, LABEL_SRTP_SALT, master_key, master_salt, 12)?;
    let mut salt = [0u8; 12];
    salt.copy_from_slice(&salt_bytes);
    let aead = crypto
        .new_aead(algorithm, &session_key)
        .map_err(|e| SrtpError(e.to_string()))?;
    if aead.tag_len() != GCM_TAG_LEN {
        return Err(SrtpError("AES-GCM with an unexpected tag length".into()));
    }
    Ok((aead, salt))
}

/// RFC 7714 §8.1: 0x0000 || SSRC || ROC || SEQ, XORed with the session salt.
fn gcm_iv(salt: &[u8; 12], ssrc: u32, roc: u32, seq: u16) -> [u8; 12] {
    let mut iv = [0u8; 12];
    iv[2..6].copy_from_slice(&ssrc.to_be_bytes());
    iv[6..10].copy_from_slice(&roc.to_be_bytes());
    iv[10..12].copy_from_slice(&seq.to_be_bytes());
    for (b, s) in iv.iter_mut().zip(salt) {
        *b ^= s;
    }
    iv
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

    /// An RTX packet (RFC 4588): the original sequence number sealed in front of the
    /// payload, byte for byte what `rtc-srtp` makes of the same plain packet, for both
    /// cipher paths (AES-GCM in place, AES-CM through `rtc-srtp`).
    #[test]
    fn sealing_with_a_prefix_is_sealing_the_joined_payload() {
        for profile in [
            ProtectionProfile::AeadAes128Gcm,
            ProtectionProfile::Aes128CmHmacSha1_80,
        ] {
            let k = keys(profile);
            let mut ours = RtpSealer::new(&k, crypto(), 0x0bad_cafe, 97).unwrap();
            let mut reference =
                Context::new(&k.local_key, &k.local_salt, profile, None, None, crypto()).unwrap();
            let payload: Vec<u8> = (0..40u8).collect();
            for (n, (seq, osn)) in [(7u16, 1000u16), (8, 1003), (9, 65_535)]
                .into_iter()
                .enumerate()
            {
                let mut out = Vec::new();
                ours.seal_with_prefix(
                    seq,
                    90 * n as u32,
                    true,
                    &osn.to_be_bytes(),
                    &payload,
                    &mut out,
                )
                .unwrap();
                let mut joined = osn.to_be_bytes().to_vec();
                joined.extend_from_slice(&payload);
                let expected = reference_encrypt(
                    &mut reference,
                    0x0bad_cafe,
                    97,
                    seq,
                    90 * n as u32,
                    true,
                    &joined,
                );
                assert_eq!(out, expected, "{profile:?} seq {seq}");
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
        assert_eq!(gcm.highest, Some((1 << 16) | 11));
        // Before the very first packet: counter 0, state unchanged.
        let mut fresh = GcmSealer::new(&k, crypto()).unwrap();
        fresh.rollover_for(5).unwrap();
        assert_eq!(fresh.rollover_for(65_000).unwrap(), 0);
        assert_eq!(fresh.highest, Some(5));
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

    /// The in-place opener: opens what `rtc-srtp` seals across a wrap; refuses a replay, a
    /// packet older than the window and a tampered packet (creating no state for a stranger
    /// SSRC); accepts reordered packets within the window once each.
    #[test]
    fn in_place_opener_follows_the_stream_and_refuses_replays() {
        let k = keys(ProtectionProfile::AeadAes128Gcm);
        let mut reference =
            Context::new(&k.local_key, &k.local_salt, k.profile, None, None, crypto()).unwrap();
        let mut rx = SrtpSession::new(&k, crypto()).unwrap();
        let mut sent = Vec::new();
        for seq in (65_000u16..=65_535).chain(0..700) {
            let payload = seq.to_be_bytes().repeat(10);
            sent.push((
                seq,
                reference_encrypt(&mut reference, 5, 111, seq, 1, false, &payload),
                payload,
            ));
        }
        let open = |rx: &mut SrtpSession, sealed: &[u8], seq: u16| {
            let mut p = BytesMut::from(sealed);
            rx.open_rtp(&mut p, 12, 5, seq).map(|()| p)
        };
        // In order, skipping every tenth packet (they come late, below).
        for (i, (seq, sealed, payload)) in sent.iter().enumerate() {
            if i % 10 == 3 {
                continue;
            }
            let plain = open(&mut rx, sealed, *seq).unwrap();
            assert_eq!(&plain[12..], &payload[..], "seq {seq}");
        }
        // Late but within the window: accepted once; a replay is refused.
        let n = sent.len();
        for (i, (seq, sealed, _)) in sent.iter().enumerate() {
            let within = n - 1 - i < REPLAY_WINDOW;
            if i % 10 == 3 && within {
                assert!(open(&mut rx, sealed, *seq).is_ok(), "late seq {seq}");
            }
            if within {
                assert!(open(&mut rx, sealed, *seq).is_err(), "replayed seq {seq}");
            }
        }
        // Older than the window: refused even though never seen.
        let (seq, sealed, _) = &sent[3];
        assert!(open(&mut rx, sealed, *seq).is_err());
        // Tampered: refused, and a stranger SSRC whose packet fails leaves no state.
        let (seq, sealed, _) = &sent[n - 1];
        let mut bad = sealed.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(open(&mut rx, &bad, *seq).is_err());
        let before = rx.rx_gcm.as_ref().unwrap().streams.len();
        let mut stranger = BytesMut::from(&bad[..]);
        stranger[8..12].copy_from_slice(&77u32.to_be_bytes());
        assert!(rx.open_rtp(&mut stranger, 12, 77, *seq).is_err());
        assert_eq!(rx.rx_gcm.as_ref().unwrap().streams.len(), before);
        // Too short for header and tag.
        assert!(open(&mut rx, &sealed[..20], *seq).is_err());
    }

    /// More SSRCs than the opener keeps, one after another (tracks that come and go): each
    /// new one still opens, the quietest stream gives way, and a live stream keeps its
    /// replay protection.
    #[test]
    fn new_ssrcs_beyond_the_limit_replace_the_quietest() {
        let k = keys(ProtectionProfile::AeadAes128Gcm);
        let mut rx = SrtpSession::new(&k, crypto()).unwrap();
        let seal = |ssrc: u32, seq: u16| {
            let mut ctx =
                Context::new(&k.local_key, &k.local_salt, k.profile, None, None, crypto()).unwrap();
            reference_encrypt(&mut ctx, ssrc, 111, seq, 0, false, b"x")
        };
        let live = seal(1, 10);
        let open = |rx: &mut SrtpSession, p: &[u8], ssrc: u32, seq: u16| {
            rx.open_rtp(&mut BytesMut::from(p), 12, ssrc, seq)
        };
        open(&mut rx, &live, 1, 10).unwrap();
        for ssrc in 100..100 + 3 * MAX_OPEN_STREAMS as u32 {
            open(&mut rx, &seal(ssrc, 5), ssrc, 5).unwrap();
            // The live stream keeps sending, so it is never the quietest.
            let seq = 11 + (ssrc - 100) as u16;
            open(&mut rx, &seal(1, seq), 1, seq).unwrap();
        }
        let streams = &rx.rx_gcm.as_ref().unwrap().streams;
        assert_eq!(streams.len(), MAX_OPEN_STREAMS);
        assert!(streams.contains_key(&1));
        assert!(
            open(&mut rx, &live, 1, 10).is_err(),
            "replay on the live stream"
        );
    }

    /// The replay window's bookkeeping against a set of seen indices, for shifts of every
    /// size (within a word, across words, beyond the window).
    #[test]
    fn replay_window_matches_a_model() {
        let mut st = ReplayState::new(1_000, 0);
        let mut seen = std::collections::BTreeSet::from([1_000u64]);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let index = match x % 4 {
                0 => st.highest + 1 + x % 700,
                1 => st.highest + 1,
                _ => st.highest.saturating_sub(x % 600),
            };
            let model_replay = index <= st.highest
                && (st.highest - index >= REPLAY_WINDOW as u64 || seen.contains(&index));
            assert_eq!(
                st.is_replay(index),
                model_replay,
                "index {index} highest {}",
                st.highest
            );
            if !model_replay {
                st.accept(index);
                seen.insert(index);
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
        // The in-place entry point falls back to the context for this profile.
        let mut rx = SrtpSession::new(&k, crypto()).unwrap();
        let mut p = BytesMut::from(sealed);
        rx.open_rtp(&mut p, 12, 7, 1).unwrap();
        assert_eq!(&p[12..], &[9; 40][..]);
    }

    /// The transport-wide sequence number goes into a one-byte header extension that
    /// `rtc-rtp` reads back under its id, and a padding-only probe is a valid padded
    /// packet, for both cipher paths.
    #[test]
    fn transport_sequence_extension_and_padding_open_with_rtc_srtp() {
        for profile in [
            ProtectionProfile::AeadAes128Gcm,
            ProtectionProfile::Aes128CmHmacSha1_80,
        ] {
            let k = keys(profile);
            let mut ours = RtpSealer::new(&k, crypto(), 0x0bad_cafe, 96).unwrap();
            let mut rx = SrtpSession::new(&k, crypto()).unwrap();
            for (seq, tseq, padding, payload) in [
                (1u16, 65_535u16, 0u8, vec![7u8; 30]),
                (2, 0, 200, Vec::new()),
                (3, 1, 1, vec![1, 2, 3]),
            ] {
                let mut out = Vec::new();
                let fields = SealFields {
                    seq,
                    timestamp: 90,
                    marker: false,
                    transport_seq: Some((3, tseq)),
                    padding,
                    extra: None,
                };
                ours.seal_packet(&fields, &[], &payload, &mut out).unwrap();
                let mut reader = &out[..];
                let header =
                    <rtc_rtp::header::Header as rtc_shared::marshal::Unmarshal>::unmarshal(
                        &mut reader,
                    )
                    .unwrap();
                assert_eq!(
                    header.get_extension(3).map(|b| b.to_vec()),
                    Some(tseq.to_be_bytes().to_vec()),
                    "{profile:?}"
                );
                assert_eq!(header.padding, padding > 0);
                let opened = rx.decrypt_rtp(&out, &header).unwrap();
                let body = &opened[20..];
                assert_eq!(body.len(), payload.len() + usize::from(padding));
                assert_eq!(&body[..payload.len()], &payload[..]);
                if padding > 0 {
                    assert_eq!(body[body.len() - 1], padding);
                }
            }
            // An id a one-byte header cannot carry goes in the two-byte form.
            let mut out = Vec::new();
            let fields = SealFields {
                seq: 9,
                transport_seq: Some((15, 0x1234)),
                ..SealFields::default()
            };
            ours.seal_packet(&fields, &[], &[1], &mut out).unwrap();
            assert_eq!(out[0] & 0x10, 0x10);
            assert_eq!(&out[12..14], &[0x10, 0x00], "{profile:?}");
            let mut buf = &out[..];
            let header =
                <rtc_rtp::header::Header as rtc_shared::marshal::Unmarshal>::unmarshal(&mut buf)
                    .unwrap();
            assert_eq!(
                header.get_extension(15).map(|b| b.to_vec()),
                Some(vec![0x12, 0x34]),
                "{profile:?}"
            );
            let opened = rx.decrypt_rtp(&out, &header).unwrap();
            assert_eq!(&opened[opened.len() - 1..], &[1]);
            // Id 0 is no extension at all.
            let mut out = Vec::new();
            let fields = SealFields {
                seq: 10,
                transport_seq: Some((0, 1)),
                ..SealFields::default()
            };
            ours.seal_packet(&fields, &[], &[1], &mut out).unwrap();
            assert_eq!(out[0] & 0x10, 0);
        }
    }

    /// A forwarded dependency descriptor rides beside the transport-wide sequence number:
    /// in the one-byte form when it fits, the two-byte form when it does not and that form
    /// was agreed, and left out when it was not. `rtc-srtp` opens every variant.
    #[test]
    fn an_extra_extension_takes_the_form_it_fits() {
        let k = keys(ProtectionProfile::AeadAes128Gcm);
        let mut ours = RtpSealer::new(&k, crypto(), 0x0bad_cafe, 45).unwrap();
        let mut rx = SrtpSession::new(&k, crypto()).unwrap();
        let short = [0xc1u8, 0x00, 0x07];
        let long: Vec<u8> = (0..40).collect();
        let payload = [5u8; 50];
        for (seq, data, two_byte, carried, profile) in [
            (1u16, &short[..], false, true, 0xBEDEu16),
            (2, &long[..], true, true, 0x1000),
            (3, &long[..], false, false, 0xBEDE),
            (4, &short[..], true, true, 0xBEDE),
        ] {
            let fields = SealFields {
                seq,
                transport_seq: Some((3, seq)),
                extra: Some(ExtraExtension {
                    id: 12,
                    data,
                    two_byte,
                }),
                ..SealFields::default()
            };
            let mut out = Vec::new();
            ours.seal_packet(&fields, &[], &payload, &mut out).unwrap();
            let view = crate::transport::rtp_view::RtpView::parse(&out).unwrap();
            assert_eq!(u16::from_be_bytes([out[12], out[13]]), profile, "{seq}");
            assert_eq!(view.header_len % 4, 0);
            assert_eq!(view.extension(3), Some(&seq.to_be_bytes()[..]), "{seq}");
            assert_eq!(view.extension(12), carried.then_some(data), "{seq}");
            let header_len = view.header_len;
            let mut p = BytesMut::from(&out[..]);
            rx.open_rtp(&mut p, header_len, 0x0bad_cafe, seq).unwrap();
            assert_eq!(&p[header_len..], &payload[..]);
        }
    }
}
