//! Audio for live transcription: Opus decode, resampling to 16 kHz, voice activity detection
//! and utterance segmentation, per track, sans-IO.
//!
//! ```text
//! RTP (seq, timestamp, Opus payload)
//!   -> opus::parse_packet + OpusMonoDecoder   48 kHz mono, gaps/DTX/loss filled, timeline
//!   -> Resampler48To16                         16 kHz mono (153-tap Kaiser FIR, 80 dB)
//!   -> Vad (10 ms frames)                      high-passed energy vs adaptive noise floor
//!   -> Segmenter                               interim and final UtteranceEvents
//! ```
//!
//! # API
//!
//! ```text
//! TrackAudio::new(cfg: SegmenterConfig) -> TrackAudio
//! TrackAudio::handle_rtp(&mut self, now_ms: u64, seq: u16, rtp_timestamp: u32, payload: &[u8])
//! TrackAudio::handle_timeout(&mut self, now_ms: u64)
//! TrackAudio::poll_timeout(&self) -> Option<u64>
//! TrackAudio::poll_event(&mut self) -> Option<UtteranceEvent>
//! TrackAudio::stats(&self) -> AudioStats
//!
//! UtteranceEvent { segment: u32, is_final: bool, end_reason: Option<EndReason>,
//!                  start_ms: u64, end_ms: u64, audio_start_ms: u64, audio: Arc<[f32]> }
//! ```
//!
//! The pieces work on their own too, for WAV-fed tests and benchmarks:
//! [`Segmenter`] (16 kHz samples in, events out; [`Segmenter::push`], [`Segmenter::skip`],
//! [`Segmenter::finish`]), [`Resampler48To16`], [`Vad`], [`opus::parse_packet`] and
//! [`OpusMonoDecoder`].
//!
//! # Usage
//!
//! Create one [`TrackAudio`] per transcribed audio track. For each received RTP packet call
//! `handle_rtp(now_ms, seq, timestamp, payload)` with the caller's monotonic wall clock in ms
//! (e.g. since the pipeline was created), then drain `poll_event()`. Arm a timer for
//! `poll_timeout()` and call `handle_timeout(now_ms)` when it fires (and drain again): that
//! ends an utterance when packets stop arriving (mute, pause, DTX sending nothing).
//!
//! # Events
//!
//! - One utterance is one `segment` id (1, 2, ... per track): zero or more interims (every
//!   `interim_every_ms` of new audio, each with the whole utterance so far), then exactly one
//!   final. A final with [`EndReason::MaxLength`] means the speech goes on in the next segment.
//! - `start_ms`: speech onset; `end_ms`: end of the last voiced 10 ms frame so far; both in ms
//!   of the track's timeline (the RTP timestamp clock, 0 at the first packet), quantised to
//!   10 ms and late by the resampler's 1.6 ms delay. `audio` is 16 kHz mono f32, contiguous
//!   from `audio_start_ms` (= onset minus up to `pre_roll_ms`); a final's audio ends at most
//!   `trailing_ms` after `end_ms`.
//!
//! # Defaults ([`SegmenterConfig::default`])
//!
//! `min_speech_ms` 120 (a stressed syllable; shorter clicks and blips are dropped),
//! `pre_roll_ms` 200 (keeps weak onsets, e.g. fricatives, the energy VAD misses),
//! `silence_end_ms` 500 (longer than most pauses inside a sentence, short enough for live
//! captions), `max_utterance_ms` 15000 (half of Whisper's 30 s window: latency and memory
//! stay bounded, cuts are rare), `interim_every_ms` 700, `trailing_ms` 200. VAD: 150 Hz high-pass,
//! 10 dB above the adaptive noise floor and above -50 dBFS, 100 ms hangover (see [`vad`]).
//!
//! # Robustness
//!
//! Sans-IO and deterministic: time comes in as arguments, nothing here reads a clock or
//! spawns anything. Arbitrary payloads, sequence numbers, timestamps and wall times cannot
//! panic it or grow its memory beyond what the configuration bounds (utterance buffer at most
//! `max_utterance_ms`, at most [`segment::MAX_QUEUED_EVENTS`] queued events); see
//! [`pipeline`] for how loss, DTX, reordering and timestamp jumps are handled and [`opus`]
//! for how the decoder is guarded.

pub mod opus;
pub mod pipeline;
pub mod resample;
pub mod segment;
pub mod vad;

pub use opus::{OpusMonoDecoder, OpusPacketError, OpusPacketInfo, parse_packet};
pub use pipeline::{AudioStats, TrackAudio};
pub use resample::Resampler48To16;
pub use segment::{EndReason, Segmenter, SegmenterConfig, SegmenterStats, UtteranceEvent};
pub use vad::{Vad, VadConfig, VadFrame};

/// The bytes of a 16-bit PCM, 16 kHz, mono WAV file holding `samples` (clamped to -1..=1):
/// what file-based speech engines take, and what tests and tools write.
pub fn wav_16k_mono(samples: &[f32]) -> Vec<u8> {
    let data_len = (samples.len() * 2) as u32;
    let mut out = Vec::with_capacity(44 + samples.len() * 2);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&16_000u32.to_le_bytes());
    out.extend_from_slice(&32_000u32.to_le_bytes()); // byte rate
    out.extend_from_slice(&2u16.to_le_bytes()); // block align
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        let v = (s.clamp(-1.0, 1.0) * 32767.0).round() as i16;
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}
