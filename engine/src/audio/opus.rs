//! Opus packets: a bounds-checked RFC 6716 packet parser (§3: TOC byte, frame packing,
//! constraints R1-R7) and a guarded 48 kHz mono decoder around the pure-Rust
//! [`opus_decoder`] crate.
//!
//! # Why a parser of our own
//!
//! The timeline needs each packet's duration even when its audio cannot be decoded, and the
//! decoder should only ever see packets that are well-formed at the framing level. So every
//! payload is parsed here first: a packet that fails is counted and never reaches the decoder.
//! A packet whose frames are all at most one byte is DTX (RFC 6716 §3.2.1: a frame of 0 or 1
//! byte carries no audio; WebRTC sends such packets during discontinuous transmission): it
//! becomes silence of its duration without touching the decoder.
//!
//! # Guarding the decoder
//!
//! `opus-decoder` 0.1 is young. Fuzzing it with corrupted real packets shows it can panic on
//! malformed frame *content* (an out-of-range slice in hybrid redundancy handling), and in
//! builds with overflow checks (the workspace's dev profile) even on about one valid stereo
//! CELT packet in fifty (a `1u8 << i` with `i >= 8` in CELT PVQ collapse masks; release
//! builds wrap silently there). The framing parser cannot rule those out, so each decoder
//! call runs under [`std::panic::catch_unwind`] (as `hearth-actors` already does around
//! forwarding legs; the workspace builds with `panic = "unwind"`): a panic is counted, the
//! decoder is replaced by a fresh one and the packet becomes silence of its duration.
//!
//! Each panic still goes through the process's panic hook (one log line), so panics are
//! rate-limited per track by a budget: [`PANIC_BUDGET`] panics, regaining one per
//! [`PANIC_REFILL_MS`] of audio. With the budget spent, the decoder is off and packets decode
//! as silence of their duration until a panic is regained: the timeline and everything
//! downstream keep working, and a hostile sender gets one log line per 10 s at most.

use std::panic::{AssertUnwindSafe, catch_unwind};

use opus_decoder::OpusDecoder;

/// Opus audio is always clocked at 48 kHz (RFC 7587).
pub const OPUS_RATE: u32 = 48_000;
/// Longest packet duration: 120 ms at 48 kHz (RFC 6716 §3.2.5, R5).
pub const MAX_PACKET_SAMPLES: usize = 5_760;
/// Longest frame, bytes (RFC 6716 §3.2.1, R2).
pub const MAX_FRAME_BYTES: usize = 1_275;
/// Longest payload accepted, bytes (one MTU; also the decoder crate's own limit).
pub const MAX_PAYLOAD_BYTES: usize = 1_500;
/// Decoder panics a track may have in a row before its decoder is switched off.
pub const PANIC_BUDGET: u32 = 3;
/// Audio (timeline) after which one panic of the budget is regained, ms.
pub const PANIC_REFILL_MS: u32 = 10_000;
const PANIC_REFILL_SAMPLES: u64 = PANIC_REFILL_MS as u64 * 48;

/// Why a payload is not a valid Opus packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpusPacketError {
    /// No TOC byte (R1).
    #[error("empty payload")]
    Empty,
    /// Longer than [`MAX_PAYLOAD_BYTES`].
    #[error("payload too long")]
    TooLong,
    /// A frame length that does not fit the packet or exceeds 1275 bytes (R2-R4, R6-R7).
    #[error("bad frame length")]
    BadFrameLength,
    /// Code 3 frame count of zero or more than 120 ms of audio (R5).
    #[error("bad frame count")]
    BadFrameCount,
    /// Code 3 padding longer than the packet (R6-R7).
    #[error("bad padding")]
    BadPadding,
}

/// What the TOC byte and frame packing say about a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpusPacketInfo {
    /// TOC configuration number, 0..=31 (mode, bandwidth, frame size).
    pub config: u8,
    /// The stereo flag.
    pub stereo: bool,
    /// Number of frames, 1..=48.
    pub frames: u8,
    /// Samples per frame at 48 kHz.
    pub samples_per_frame: u32,
    /// Length of the longest frame, bytes.
    pub max_frame_bytes: u16,
}

impl OpusPacketInfo {
    /// Duration of the packet in 48 kHz samples (at most [`MAX_PACKET_SAMPLES`]).
    pub fn samples(&self) -> u32 {
        self.samples_per_frame * u32::from(self.frames)
    }

    /// True if no frame carries audio (every frame 0 or 1 byte): DTX.
    pub fn is_dtx(&self) -> bool {
        self.max_frame_bytes <= 1
    }
}

/// Samples per frame at 48 kHz for a TOC configuration (RFC 6716 §3.1, table 2).
fn samples_per_frame(config: u8) -> u32 {
    match config {
        0..=11 => [480, 960, 1_920, 2_880][usize::from(config & 3)],
        12..=15 => [480, 960][usize::from(config & 1)],
        _ => [120, 240, 480, 960][usize::from(config & 3)],
    }
}

/// Reads a frame length (RFC 6716 §3.2.1): one byte below 252, else two bytes.
fn frame_len(data: &[u8]) -> Result<(usize, usize), OpusPacketError> {
    match data {
        [] => Err(OpusPacketError::BadFrameLength),
        [b0, ..] if *b0 < 252 => Ok((usize::from(*b0), 1)),
        [b0, b1, ..] => Ok((usize::from(*b1) * 4 + usize::from(*b0), 2)),
        [_] => Err(OpusPacketError::BadFrameLength),
    }
}

/// Parses and validates an Opus packet's framing (RFC 6716 §3.1-3.4). Never panics.
pub fn parse_packet(payload: &[u8]) -> Result<OpusPacketInfo, OpusPacketError> {
    let Some((&toc, rest)) = payload.split_first() else {
        return Err(OpusPacketError::Empty);
    };
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(OpusPacketError::TooLong);
    }
    let config = toc >> 3;
    let stereo = toc & 0x04 != 0;
    let spf = samples_per_frame(config);
    let (frames, max_frame) = match toc & 0x03 {
        0 => (1u8, rest.len()),
        1 => {
            if rest.len() % 2 != 0 {
                return Err(OpusPacketError::BadFrameLength);
            }
            (2, rest.len() / 2)
        }
        2 => {
            let (n1, used) = frame_len(rest)?;
            let data = rest.len() - used;
            if n1 > data {
                return Err(OpusPacketError::BadFrameLength);
            }
            (2, n1.max(data - n1))
        }
        _ => {
            let Some((&count_byte, mut rest)) = rest.split_first() else {
                return Err(OpusPacketError::BadFrameCount);
            };
            let count = usize::from(count_byte & 0x3f);
            if count == 0 || count * spf as usize > MAX_PACKET_SAMPLES {
                return Err(OpusPacketError::BadFrameCount);
            }
            if count_byte & 0x40 != 0 {
                // Padding length: bytes of 255 add 254 and continue; the last adds itself.
                let mut padding = 0usize;
                loop {
                    let Some((&b, tail)) = rest.split_first() else {
                        return Err(OpusPacketError::BadPadding);
                    };
                    rest = tail;
                    if b == 255 {
                        padding += 254;
                    } else {
                        padding += usize::from(b);
                        break;
                    }
                }
                if padding > rest.len() {
                    return Err(OpusPacketError::BadPadding);
                }
                rest = &rest[..rest.len() - padding];
            }
            let max_frame = if count_byte & 0x80 != 0 {
                // VBR: count - 1 lengths, the last frame takes the rest.
                let mut sum = 0usize;
                let mut max = 0usize;
                for _ in 1..count {
                    let (n, used) = frame_len(rest)?;
                    rest = &rest[used..];
                    sum += n;
                    max = max.max(n);
                }
                if sum > rest.len() {
                    return Err(OpusPacketError::BadFrameLength);
                }
                max.max(rest.len() - sum)
            } else {
                if rest.len() % count != 0 {
                    return Err(OpusPacketError::BadFrameLength);
                }
                rest.len() / count
            };
            (count as u8, max_frame)
        }
    };
    if max_frame > MAX_FRAME_BYTES {
        return Err(OpusPacketError::BadFrameLength);
    }
    Ok(OpusPacketInfo {
        config,
        stereo,
        frames,
        samples_per_frame: spf,
        max_frame_bytes: max_frame as u16,
    })
}

/// How [`OpusMonoDecoder::decode`] went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeOutcome {
    /// Audio decoded.
    Decoded,
    /// A DTX packet: silence of its duration.
    Dtx,
    /// The framing parsed but the decoder rejected the content: concealment of the packet's
    /// duration was substituted.
    Corrupt,
    /// The decoder panicked, or is off because its panic budget is spent: silence of the
    /// packet's duration was substituted.
    DecoderFailed,
}

/// Counters of an [`OpusMonoDecoder`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecoderStats {
    /// Decoder panics caught.
    pub panics: u32,
    /// The decoder is off (panic budget spent, see the module docs).
    pub disabled: bool,
    /// Packets turned into silence because the decoder was off.
    pub packets_while_disabled: u64,
}

/// Guarded Opus decoder producing 48 kHz mono (stereo packets are downmixed by the decoder).
pub struct OpusMonoDecoder {
    decoder: Option<OpusDecoder>,
    scratch: Vec<f32>,
    decoded_any: bool,
    panic_tokens: u32,
    refill: u64,
    stats: DecoderStats,
}

impl std::fmt::Debug for OpusMonoDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpusMonoDecoder")
            .field("decoded_any", &self.decoded_any)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Default for OpusMonoDecoder {
    fn default() -> Self {
        Self::new()
    }
}

fn new_decoder() -> Option<OpusDecoder> {
    OpusDecoder::new(OPUS_RATE, 1).ok()
}

impl OpusMonoDecoder {
    /// A fresh decoder.
    pub fn new() -> Self {
        let decoder = new_decoder();
        Self {
            stats: DecoderStats {
                disabled: decoder.is_none(),
                ..DecoderStats::default()
            },
            decoder,
            scratch: vec![0.0; MAX_PACKET_SAMPLES],
            decoded_any: false,
            panic_tokens: PANIC_BUDGET,
            refill: 0,
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> DecoderStats {
        self.stats
    }

    /// Decodes one packet whose framing `info` was parsed from `payload` by [`parse_packet`],
    /// appending exactly `info.samples()` samples to `out` whatever happens.
    pub fn decode(
        &mut self,
        payload: &[u8],
        info: &OpusPacketInfo,
        out: &mut Vec<f32>,
    ) -> DecodeOutcome {
        let want = (info.samples() as usize).min(MAX_PACKET_SAMPLES);
        self.advance(want);
        if info.is_dtx() {
            out.resize(out.len() + want, 0.0);
            return DecodeOutcome::Dtx;
        }
        let was_off = self.decoder.is_none();
        match self.guarded(payload) {
            Some(Ok(n)) => {
                let n = n.min(want);
                out.extend(
                    self.scratch[..n]
                        .iter()
                        .map(|&s| if s.is_finite() { s } else { 0.0 }),
                );
                out.resize(out.len() + (want - n), 0.0);
                self.decoded_any = true;
                DecodeOutcome::Decoded
            }
            Some(Err(_)) => {
                self.conceal(want, out);
                DecodeOutcome::Corrupt
            }
            None => {
                if was_off {
                    self.stats.packets_while_disabled += 1;
                }
                out.resize(out.len() + want, 0.0);
                DecodeOutcome::DecoderFailed
            }
        }
    }

    /// Appends `samples` samples of concealment: the decoder's packet-loss concealment
    /// while it has something to extrapolate from, zeros for the rest. Returns how many
    /// samples came from the decoder's concealment.
    pub fn conceal(&mut self, samples: usize, out: &mut Vec<f32>) -> usize {
        self.advance(samples);
        let mut plc = 0;
        while plc < samples && self.decoded_any {
            match self.guarded(&[]) {
                Some(Ok(n)) if n > 0 => {
                    let n = n.min(samples - plc);
                    out.extend(
                        self.scratch[..n]
                            .iter()
                            .map(|&s| if s.is_finite() { s } else { 0.0 }),
                    );
                    plc += n;
                }
                _ => break,
            }
        }
        out.resize(out.len() + (samples - plc), 0.0);
        plc
    }

    /// Accounts `samples` of timeline for the panic budget; turns the decoder back on when a
    /// panic is regained.
    fn advance(&mut self, samples: usize) {
        if self.panic_tokens >= PANIC_BUDGET {
            return;
        }
        self.refill += samples as u64;
        if self.refill >= PANIC_REFILL_SAMPLES {
            self.refill = 0;
            self.panic_tokens += 1;
            if self.decoder.is_none() {
                self.decoder = new_decoder();
                self.decoded_any = false;
                self.stats.disabled = self.decoder.is_none();
            }
        }
    }

    /// Runs the decoder on `payload` (empty: concealment) under `catch_unwind`. `None` if
    /// there is no decoder (switched off) or it panicked.
    fn guarded(&mut self, payload: &[u8]) -> Option<Result<usize, opus_decoder::OpusError>> {
        let decoder = self.decoder.as_mut()?;
        let scratch = &mut self.scratch;
        match catch_unwind(AssertUnwindSafe(|| {
            decoder.decode_float(payload, scratch, false)
        })) {
            Ok(result) => Some(result),
            Err(_) => {
                self.stats.panics += 1;
                self.decoded_any = false;
                self.panic_tokens = self.panic_tokens.saturating_sub(1);
                self.decoder = if self.panic_tokens > 0 {
                    new_decoder()
                } else {
                    None
                };
                self.stats.disabled = self.decoder.is_none();
                None
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Packets of a test fixture: each is a big-endian u16 length and the packet bytes.
    pub(crate) fn fixture_packets(data: &[u8]) -> Vec<&[u8]> {
        let mut out = Vec::new();
        let mut rest = data;
        while let [hi, lo, tail @ ..] = rest {
            let n = usize::from(u16::from_be_bytes([*hi, *lo]));
            if n > tail.len() {
                break;
            }
            out.push(&tail[..n]);
            rest = &tail[n..];
        }
        out
    }

    /// "Hello, this is a test." (espeak-ng), padded with 1 s of silence each side, 48 kHz
    /// mono, opusenc 24 kb/s 20 ms: hybrid fullband (config 15).
    pub(crate) const SPEECH_MONO: &[u8] = include_bytes!("testdata/speech_mono_hybrid.pkts");
    /// The same as SILK wideband: opusenc 12 kb/s 20 ms (config 9).
    pub(crate) const SPEECH_SILK: &[u8] = include_bytes!("testdata/speech_mono_silk.pkts");
    /// 1 s of the same voice in stereo at 64 kb/s: CELT fullband stereo (config 31).
    pub(crate) const STEREO_CELT: &[u8] = include_bytes!("testdata/stereo_celt.pkts");
    /// "Testing one two three." at 10 kb/s in 60 ms frames: SILK wideband (config 11).
    pub(crate) const SILK_60MS: &[u8] = include_bytes!("testdata/silk_60ms.pkts");

    #[test]
    fn audio_opus_parses_toc_and_framing() {
        // Code 0, config 15 (hybrid FB 20 ms), mono.
        let p = parse_packet(&[15 << 3, 1, 2, 3]).expect("valid");
        assert_eq!(
            (p.config, p.frames, p.samples(), p.stereo),
            (15, 1, 960, false)
        );
        assert!(!p.is_dtx());
        // TOC only: a zero-length frame, DTX.
        let p = parse_packet(&[15 << 3]).expect("valid");
        assert!(p.is_dtx());
        assert_eq!(p.samples(), 960);
        // Code 1: two equal frames (odd remainder is invalid).
        assert_eq!(
            parse_packet(&[(31 << 3) | 4 | 1, 1, 2]).map(|p| p.frames),
            Ok(2)
        );
        assert_eq!(
            parse_packet(&[(31 << 3) | 1, 1, 2, 3]),
            Err(OpusPacketError::BadFrameLength)
        );
        // Code 2: first frame length 1, second 2.
        let p = parse_packet(&[(1 << 3) | 2, 1, 9, 8, 7]).expect("valid");
        assert_eq!((p.frames, p.samples(), p.max_frame_bytes), (2, 1_920, 2));
        assert_eq!(
            parse_packet(&[(1 << 3) | 2, 5, 9]),
            Err(OpusPacketError::BadFrameLength)
        );
        assert_eq!(
            parse_packet(&[(1 << 3) | 2, 252]),
            Err(OpusPacketError::BadFrameLength)
        );
        // Code 3: 3 CBR frames of 2 bytes of 20 ms CELT.
        let p = parse_packet(&[(19 << 3) | 3, 3, 1, 1, 2, 2, 3, 3]).expect("valid");
        assert_eq!((p.frames, p.samples()), (3, 2_880));
        // Code 3 VBR with padding: 2 frames, lengths 1 and rest, 2 bytes of padding.
        let p = parse_packet(&[(19 << 3) | 3, 0x80 | 0x40 | 2, 2, 1, 7, 8, 9, 0, 0]).expect("ok");
        assert_eq!((p.frames, p.max_frame_bytes), (2, 2));
        // Padding longer than the packet; zero frames; more than 120 ms (7 x 20 ms SILK).
        assert_eq!(
            parse_packet(&[(19 << 3) | 3, 0x40 | 1, 255, 10]),
            Err(OpusPacketError::BadPadding)
        );
        assert_eq!(
            parse_packet(&[(19 << 3) | 3, 0]),
            Err(OpusPacketError::BadFrameCount)
        );
        assert_eq!(
            parse_packet(&[(1 << 3) | 3, 7]),
            Err(OpusPacketError::BadFrameCount)
        );
        assert_eq!(parse_packet(&[]), Err(OpusPacketError::Empty));
        assert_eq!(parse_packet(&[0; 1_501]), Err(OpusPacketError::TooLong));
        // A single frame above 1275 bytes.
        assert_eq!(
            parse_packet(&[0; 1_277]),
            Err(OpusPacketError::BadFrameLength)
        );
    }

    #[test]
    fn audio_opus_fixture_packets_parse() {
        for (data, config, count) in [
            (SPEECH_MONO, 15, 193),
            (STEREO_CELT, 31, 51),
            (SPEECH_SILK, 9, 193),
            (SILK_60MS, 11, 29),
        ] {
            let packets = fixture_packets(data);
            assert_eq!(packets.len(), count);
            let configs: Vec<u8> = packets
                .iter()
                .map(|p| parse_packet(p).expect("valid fixture").config)
                .collect();
            assert!(configs.iter().filter(|c| **c == config).count() >= count - 1);
        }
    }

    #[test]
    fn audio_opus_decodes_stereo_to_mono_and_conceals() {
        let mut dec = OpusMonoDecoder::new();
        let mut out = Vec::new();
        // Concealment before anything was decoded is plain silence.
        assert_eq!(dec.conceal(960, &mut out), 0);
        assert_eq!(out.len(), 960);
        out.clear();
        let mut failed = 0;
        for p in fixture_packets(STEREO_CELT) {
            let info = parse_packet(p).expect("valid");
            assert!(info.stereo);
            match dec.decode(p, &info, &mut out) {
                DecodeOutcome::Decoded => {}
                // Builds with overflow checks panic inside opus-decoder on one of these
                // packets (see the module docs); it is caught and counted.
                DecodeOutcome::DecoderFailed => failed += 1,
                other => panic!("{other:?}"),
            }
        }
        assert!(failed <= 1);
        assert_eq!(dec.stats().panics, failed);
        assert!(!dec.stats().disabled);
        assert_eq!(out.len(), 51 * 960);
        let rms = (out.iter().map(|s| s * s).sum::<f32>() / out.len() as f32).sqrt();
        assert!(rms > 0.01, "{rms}");
        // After audio, concealment comes from the decoder.
        let mut plc = Vec::new();
        assert_eq!(dec.conceal(1_000, &mut plc), 1_000);
        assert_eq!(plc.len(), 1_000);
    }

    /// Packets with valid framing that make opus-decoder 0.1.1 panic (found by fuzzing it
    /// with bit-flipped fixture packets; an out-of-range slice in hybrid redundancy).
    const POISON: [&[u8]; 2] = [
        &[
            0x78, 0x08, 0xad, 0xe5, 0xd8, 0x14, 0x17, 0x98, 0xe1, 0xec, 0x56, 0xac, 0xcc, 0x5f,
            0xca, 0x10, 0x9d, 0xb5, 0x82, 0x86, 0xe4, 0x3c, 0xe2, 0x78, 0xeb, 0xa6, 0xcf, 0x27,
        ],
        &[
            0x78, 0x09, 0x93, 0xb9, 0x1a, 0x74, 0x84, 0xaf, 0xbe, 0x0a, 0x94, 0x9d, 0x09, 0x35,
            0x51, 0x55, 0xbc, 0x08, 0x3e, 0x5e, 0x21, 0x1e, 0xa8, 0x57, 0xb7, 0xb0,
        ],
    ];

    #[test]
    fn audio_opus_decoder_panics_are_caught_and_rate_limited() {
        let mut dec = OpusMonoDecoder::new();
        let mut out = Vec::new();
        let good = fixture_packets(SPEECH_SILK);
        let mut outcomes = Vec::new();
        for i in 0..10 {
            let p = POISON[i % 2];
            let info = parse_packet(p).expect("valid framing");
            outcomes.push(dec.decode(p, &info, &mut out));
            assert_eq!(out.len(), (i + 1) * 960);
        }
        assert!(outcomes.iter().all(|o| *o == DecodeOutcome::DecoderFailed));
        // The budget: three panics, then the decoder is off.
        assert_eq!(dec.stats().panics, PANIC_BUDGET);
        assert!(dec.stats().disabled);
        assert_eq!(dec.stats().packets_while_disabled, 7);
        // Off: even good packets are silence (of the right length) ...
        let info = parse_packet(good[60]).expect("valid");
        assert_eq!(
            dec.decode(good[60], &info, &mut out),
            DecodeOutcome::DecoderFailed
        );
        // ... until 10 s of audio have passed.
        let mut decoded = 0;
        for p in good.iter().cycle().take(600) {
            let info = parse_packet(p).expect("valid");
            if dec.decode(p, &info, &mut out) == DecodeOutcome::Decoded {
                decoded += 1;
            }
        }
        assert!(!dec.stats().disabled);
        assert!(decoded >= 600 - 500, "{decoded}");
        assert!(out.iter().all(|s| s.is_finite()));
    }

    #[test]
    fn audio_opus_corrupt_content_is_concealed() {
        let mut dec = OpusMonoDecoder::new();
        let mut out = Vec::new();
        let packets = fixture_packets(SPEECH_MONO);
        let mut seed = 99u32;
        let mut outcomes = Vec::new();
        for (i, p) in packets.iter().enumerate().take(60) {
            let mut p = p.to_vec();
            if i % 3 == 2 {
                // Scramble everything after the TOC: framing stays valid (code 0).
                for b in p.iter_mut().skip(1) {
                    seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    *b = (seed >> 24) as u8;
                }
            }
            let Ok(info) = parse_packet(&p) else { continue };
            let before = out.len();
            outcomes.push(dec.decode(&p, &info, &mut out));
            assert_eq!(out.len() - before, info.samples() as usize);
        }
        assert!(
            outcomes
                .iter()
                .filter(|o| **o == DecodeOutcome::Decoded)
                .count()
                >= 40
        );
        assert!(out.iter().all(|s| s.is_finite() && s.abs() <= 1.0));
    }
}
