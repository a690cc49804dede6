//! Utterance segmentation of 16 kHz mono audio: a [`Vad`] decision per 10 ms frame drives a
//! small state machine that emits interim and final [`UtteranceEvent`]s.
//!
//! States:
//!
//! - **Idle**: the last `pre_roll_ms + 2 * min_speech_ms + 500 ms` of audio are kept in a ring
//!   (the pre-roll source).
//! - **Candidate**: a voiced frame was seen. The run continues while the VAD says speech
//!   (voiced frames plus hangover). When it holds `min_speech_ms` of *voiced* frames (hangover
//!   frames do not count, so a blip plus its hangover never triggers), an utterance starts at
//!   the run's first voiced frame, with up to `pre_roll_ms` of audio before it. A run that
//!   dies earlier was a blip: nothing is emitted.
//! - **Speaking**: audio accumulates in the utterance buffer. Every `interim_every_ms` of new
//!   audio, if a voiced frame came since the last event, an interim event carries the whole
//!   utterance so far. The utterance ends when `silence_end_ms` have passed since the last
//!   voiced frame (final event, trailing non-speech trimmed to `trailing_ms`), when
//!   [`Segmenter::finish`] is called (the caller's wall-clock timeout), or when the buffer
//!   would exceed `max_utterance_ms`: then the final carries the full buffer and a new segment
//!   continues seamlessly from the cut (no min-speech wait, no pre-roll overlap).
//!
//! Times are milliseconds of the input timeline (samples pushed plus samples skipped, at
//! 16 kHz), quantised to the 10 ms frame. In an event, `start_ms` is the speech onset,
//! `end_ms` the end of the last voiced frame so far, and `audio` starts at `audio_start_ms`
//! (onset minus pre-roll) and runs contiguously from there.
//!
//! Memory is bounded by the configuration: the utterance buffer never holds more than
//! `max_utterance_ms` of samples (allocated once, at the first utterance), the ring is fixed,
//! and the event queue holds at most [`MAX_QUEUED_EVENTS`] (a newer interim replaces a queued
//! older one of the same segment; beyond that the oldest event is dropped and counted).

use std::collections::VecDeque;
use std::sync::Arc;

use super::vad::{VAD_FRAME_MS, VAD_FRAME_SAMPLES, Vad, VadConfig};

/// Samples per millisecond at 16 kHz.
pub const SAMPLES_PER_MS: u64 = 16;
/// Most events held for the caller; see the module docs.
pub const MAX_QUEUED_EVENTS: usize = 32;
/// Longest utterance the segmenter accepts as `max_utterance_ms` (Whisper's window).
pub const MAX_UTTERANCE_LIMIT_MS: u32 = 30_000;

/// Segmentation thresholds. Out-of-range values are clamped by [`Segmenter::new`] (see each
/// field), so any configuration keeps memory bounded.
#[derive(Clone, Debug, PartialEq)]
pub struct SegmenterConfig {
    /// Voiced audio needed before an utterance starts. Default 120 ms; 10..=2000.
    pub min_speech_ms: u32,
    /// Audio kept before the detected onset. Default 200 ms; 0..=1000.
    pub pre_roll_ms: u32,
    /// Non-speech after the last voiced frame that ends an utterance; also the wall-clock
    /// quiet time after which [`super::TrackAudio::handle_timeout`] ends one. Default 500 ms;
    /// 10..=10000.
    pub silence_end_ms: u32,
    /// Longest utterance (audio including pre-roll); a longer one is cut into several finals.
    /// Default 15000 ms; 1000..=30000.
    pub max_utterance_ms: u32,
    /// Interim event cadence, in new audio. Default 700 ms; 0 turns interims off, otherwise
    /// at least 100.
    pub interim_every_ms: u32,
    /// Non-speech kept after the last voiced frame in a final event. Default 200 ms; at most
    /// `silence_end_ms`.
    pub trailing_ms: u32,
    /// Voice activity detection thresholds.
    pub vad: VadConfig,
}

impl Default for SegmenterConfig {
    fn default() -> Self {
        Self {
            min_speech_ms: 120,
            pre_roll_ms: 200,
            silence_end_ms: 500,
            max_utterance_ms: 15_000,
            interim_every_ms: 700,
            trailing_ms: 200,
            vad: VadConfig::default(),
        }
    }
}

impl SegmenterConfig {
    /// The configuration with every field clamped to its documented range.
    pub fn clamped(&self) -> Self {
        let max_utterance_ms = self.max_utterance_ms.clamp(1_000, MAX_UTTERANCE_LIMIT_MS);
        let silence_end_ms = self.silence_end_ms.clamp(10, 10_000);
        Self {
            min_speech_ms: self.min_speech_ms.clamp(VAD_FRAME_MS, 2_000),
            pre_roll_ms: self.pre_roll_ms.min(1_000),
            silence_end_ms,
            max_utterance_ms,
            interim_every_ms: match self.interim_every_ms {
                0 => 0,
                ms => ms.max(100),
            },
            trailing_ms: self.trailing_ms.min(silence_end_ms),
            vad: self.vad.clone(),
        }
    }
}

/// Why a final event ended its utterance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// `silence_end_ms` of non-speech followed the last voiced frame.
    Silence,
    /// The utterance reached `max_utterance_ms`; speech may continue in the next segment.
    MaxLength,
    /// The caller ended it ([`Segmenter::finish`], e.g. no packets for `silence_end_ms` of
    /// wall time).
    Timeout,
}

/// An interim or final result of segmentation.
#[derive(Clone, Debug)]
pub struct UtteranceEvent {
    /// Utterance id: 1 for a track's first, +1 for each next; the same for the interims and
    /// the final of one utterance.
    pub segment: u32,
    /// The last event of this segment.
    pub is_final: bool,
    /// For a final: why it ended; `None` for an interim.
    pub end_reason: Option<EndReason>,
    /// Speech onset (first voiced frame), ms of the track's timeline.
    pub start_ms: u64,
    /// End of the last voiced frame so far, ms.
    pub end_ms: u64,
    /// Time of `audio[0]`, ms (onset minus the pre-roll that was available).
    pub audio_start_ms: u64,
    /// The whole utterance so far: 16 kHz mono, contiguous from `audio_start_ms`.
    pub audio: Arc<[f32]>,
}

/// Counters of a [`Segmenter`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegmenterStats {
    /// Final events emitted.
    pub utterances: u64,
    /// Interim events emitted.
    pub interims: u64,
    /// Finals caused by `max_utterance_ms`.
    pub cuts: u64,
    /// Voiced runs shorter than `min_speech_ms`, dropped.
    pub blips: u64,
    /// Events dropped because the caller did not drain the queue.
    pub events_dropped: u64,
    /// Samples of timeline skipped without audio.
    pub skipped_samples: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Idle,
    Candidate { run_start: u64, voiced_frames: u32 },
    Speaking,
}

/// VAD-driven utterance segmenter over 16 kHz mono samples (see the module docs).
#[derive(Clone, Debug)]
pub struct Segmenter {
    cfg: SegmenterConfig,
    vad: Vad,
    // Derived sizes, in samples or frames.
    min_speech_frames: u32,
    pre_roll: u64,
    silence_end: u64,
    max_samples: usize,
    interim_every: u64,
    trailing: u64,
    ring_cap: usize,

    /// Partial frame being filled.
    frame: [f32; VAD_FRAME_SAMPLES],
    frame_fill: usize,
    /// Timeline position (samples) of the end of the last complete frame.
    pos: u64,
    /// Recent audio while not speaking, ending at `pos`.
    ring: VecDeque<f32>,
    state: State,

    // The current utterance (valid while Speaking).
    utt: Vec<f32>,
    segment: u32,
    next_segment: u32,
    speech_start: u64,
    audio_start: u64,
    last_voiced_end: u64,
    voiced_frames_in_segment: u32,
    since_event: u64,
    voiced_since_event: bool,
    interims_in_segment: u32,

    events: VecDeque<UtteranceEvent>,
    stats: SegmenterStats,
}

/// Zeros fed for silence, in chunks.
static ZEROS: [f32; 1_600] = [0.0; 1_600];

impl Segmenter {
    /// A segmenter at timeline position 0. The configuration is [`SegmenterConfig::clamped`].
    pub fn new(cfg: SegmenterConfig) -> Self {
        let cfg = cfg.clamped();
        let frame = VAD_FRAME_SAMPLES as u64;
        let ms = |v: u32| u64::from(v) * SAMPLES_PER_MS;
        // Whole frames, so that the buffer limit falls on a frame boundary.
        let max_samples = (ms(cfg.max_utterance_ms) / frame * frame) as usize;
        let ring_cap = ms(cfg.pre_roll_ms + 2 * cfg.min_speech_ms + 500) as usize;
        Self {
            vad: Vad::new(cfg.vad.clone()),
            min_speech_frames: cfg.min_speech_ms.div_ceil(VAD_FRAME_MS).max(1),
            pre_roll: ms(cfg.pre_roll_ms),
            silence_end: ms(cfg.silence_end_ms),
            max_samples,
            interim_every: ms(cfg.interim_every_ms),
            trailing: ms(cfg.trailing_ms),
            ring_cap,
            cfg,
            frame: [0.0; VAD_FRAME_SAMPLES],
            frame_fill: 0,
            pos: 0,
            ring: VecDeque::with_capacity(ring_cap),
            state: State::Idle,
            utt: Vec::new(),
            segment: 0,
            next_segment: 1,
            speech_start: 0,
            audio_start: 0,
            last_voiced_end: 0,
            voiced_frames_in_segment: 0,
            since_event: 0,
            voiced_since_event: false,
            interims_in_segment: 0,
            events: VecDeque::new(),
            stats: SegmenterStats::default(),
        }
    }

    /// The (clamped) configuration in use.
    pub fn config(&self) -> &SegmenterConfig {
        &self.cfg
    }

    /// Counters so far.
    pub fn stats(&self) -> SegmenterStats {
        self.stats
    }

    /// Timeline position in samples: everything pushed or skipped so far.
    pub fn position_samples(&self) -> u64 {
        self.pos + self.frame_fill as u64
    }

    /// Timeline position in ms.
    pub fn position_ms(&self) -> u64 {
        self.position_samples() / SAMPLES_PER_MS
    }

    /// True while an utterance is open (a final event will follow).
    pub fn is_speaking(&self) -> bool {
        self.state == State::Speaking
    }

    /// Samples held in buffers (utterance buffer, pre-roll ring, queued events): for memory
    /// accounting.
    pub fn buffered_samples(&self) -> usize {
        self.utt.len()
            + self.ring.len()
            + self.frame_fill
            + self.events.iter().map(|e| e.audio.len()).sum::<usize>()
    }

    /// The next event, oldest first.
    pub fn poll_event(&mut self) -> Option<UtteranceEvent> {
        self.events.pop_front()
    }

    /// Feeds 16 kHz mono samples (any chunk size). Non-finite samples are treated as 0.
    pub fn push(&mut self, samples: &[f32]) {
        let mut rest = samples;
        while !rest.is_empty() {
            let take = (VAD_FRAME_SAMPLES - self.frame_fill).min(rest.len());
            for (dst, &src) in self.frame[self.frame_fill..self.frame_fill + take]
                .iter_mut()
                .zip(&rest[..take])
            {
                *dst = if src.is_finite() { src } else { 0.0 };
            }
            self.frame_fill += take;
            rest = &rest[take..];
            if self.frame_fill == VAD_FRAME_SAMPLES {
                self.frame_fill = 0;
                self.on_frame();
            }
        }
    }

    /// Advances the timeline by `samples` without audio (a gap the caller chose not to fill).
    /// It counts as non-speech: an open utterance sees up to `silence_end_ms` of silence (so
    /// it ends normally), the rest is jumped over. Audio before and after a jump is never
    /// joined: the pre-roll ring and any partial frame are dropped.
    pub fn skip(&mut self, samples: u64) {
        let mut left = samples;
        if self.state != State::Idle {
            let mut zeros = left.min(self.silence_end + VAD_FRAME_SAMPLES as u64);
            left -= zeros;
            while zeros > 0 {
                let n = zeros.min(ZEROS.len() as u64);
                self.push(&ZEROS[..n as usize]);
                zeros -= n;
            }
        }
        if left == 0 {
            return;
        }
        if self.state == State::Speaking {
            self.end_utterance(EndReason::Silence);
        }
        self.state = State::Idle;
        self.pos = self
            .pos
            .saturating_add(self.frame_fill as u64)
            .saturating_add(left);
        self.stats.skipped_samples = self.stats.skipped_samples.saturating_add(left);
        self.frame_fill = 0;
        self.ring.clear();
        self.vad.reset_short_term();
    }

    /// Ends an open utterance now (final event with [`EndReason::Timeout`]); drops a voiced
    /// run that has not become an utterance yet.
    pub fn finish(&mut self) {
        match self.state {
            State::Speaking => self.end_utterance(EndReason::Timeout),
            State::Candidate { .. } => {
                self.stats.blips += 1;
                self.state = State::Idle;
            }
            State::Idle => {}
        }
    }

    fn on_frame(&mut self) {
        let frame_start = self.pos;
        self.pos = self.pos.saturating_add(VAD_FRAME_SAMPLES as u64);
        let v = self.vad.process(&self.frame);

        if self.state == State::Speaking {
            if self.utt.len() + VAD_FRAME_SAMPLES > self.max_samples {
                self.cut();
            }
            self.utt.extend_from_slice(&self.frame);
            self.since_event += VAD_FRAME_SAMPLES as u64;
            if v.voiced {
                self.last_voiced_end = self.pos;
                self.voiced_frames_in_segment += 1;
                self.voiced_since_event = true;
            }
            if self.pos.saturating_sub(self.last_voiced_end) >= self.silence_end {
                self.end_utterance(EndReason::Silence);
            } else if self.interim_every > 0
                && self.since_event >= self.interim_every
                && self.voiced_since_event
            {
                self.emit(false, None);
            }
            return;
        }

        // Idle or Candidate: keep recent audio for the pre-roll.
        if self.ring.len() + VAD_FRAME_SAMPLES > self.ring_cap {
            let excess = self.ring.len() + VAD_FRAME_SAMPLES - self.ring_cap;
            self.ring.drain(..excess.min(self.ring.len()));
        }
        self.ring.extend(self.frame.iter().copied());

        self.state = match self.state {
            State::Idle if v.voiced => State::Candidate {
                run_start: frame_start,
                voiced_frames: 1,
            },
            State::Candidate {
                run_start,
                voiced_frames,
            } if v.voiced => State::Candidate {
                run_start,
                voiced_frames: voiced_frames + 1,
            },
            State::Candidate { .. } if !v.speech => {
                self.stats.blips += 1;
                State::Idle
            }
            other => other,
        };
        if let State::Candidate {
            run_start,
            voiced_frames,
        } = self.state
        {
            if v.voiced {
                self.last_voiced_end = self.pos;
            }
            if voiced_frames >= self.min_speech_frames {
                self.start_utterance(run_start, voiced_frames);
            }
        }
    }

    fn start_utterance(&mut self, run_start: u64, voiced_frames: u32) {
        let oldest = self.pos - self.ring.len() as u64;
        let mut audio_start = run_start.saturating_sub(self.pre_roll).max(oldest);
        // A long voiced run may hold more than half the buffer limit: keep its newest half.
        audio_start = audio_start.max(self.pos.saturating_sub(self.max_samples as u64 / 2));
        let skip = (audio_start - oldest) as usize;
        let run_start = run_start.max(audio_start);
        if self.utt.capacity() < self.max_samples {
            self.utt.reserve_exact(self.max_samples - self.utt.len());
        }
        self.utt.clear();
        self.utt.extend(self.ring.iter().skip(skip).copied());
        self.ring.clear();
        self.state = State::Speaking;
        self.segment = self.next_segment;
        self.speech_start = run_start;
        self.audio_start = audio_start;
        self.voiced_frames_in_segment = voiced_frames;
        self.since_event = self.utt.len() as u64;
        self.voiced_since_event = true;
        self.interims_in_segment = 0;
    }

    /// Ends the segment at the buffer limit and opens its continuation.
    fn cut(&mut self) {
        self.stats.cuts += 1;
        self.emit(true, Some(EndReason::MaxLength));
        self.next_segment = next_id(self.segment);
        self.segment = self.next_segment;
        self.utt.clear();
        self.speech_start = self.pos - VAD_FRAME_SAMPLES as u64;
        self.audio_start = self.speech_start;
        self.voiced_frames_in_segment = 0;
        self.since_event = 0;
        self.voiced_since_event = false;
        self.interims_in_segment = 0;
    }

    fn end_utterance(&mut self, reason: EndReason) {
        self.state = State::Idle;
        // A continuation after a cut that turned out to be silence is dropped, unless the
        // caller already saw interims of it.
        if self.voiced_frames_in_segment < self.min_speech_frames && self.interims_in_segment == 0 {
            self.keep_tail_as_pre_roll(self.utt.len());
            self.utt.clear();
            return;
        }
        let end = self.last_voiced_end.max(self.speech_start);
        let audio_end = self
            .pos
            .min(end.saturating_add(self.trailing))
            .max(self.audio_start);
        let keep = ((audio_end - self.audio_start) as usize).min(self.utt.len());
        self.keep_tail_as_pre_roll(self.utt.len());
        self.utt.truncate(keep);
        self.emit(true, Some(reason));
        self.next_segment = next_id(self.segment);
        self.utt.clear();
    }

    /// After an utterance ends, its last samples become the pre-roll of the next one.
    fn keep_tail_as_pre_roll(&mut self, len: usize) {
        self.ring.clear();
        let from = len.saturating_sub(self.ring_cap);
        self.ring.extend(self.utt[from..len].iter().copied());
    }

    fn emit(&mut self, is_final: bool, end_reason: Option<EndReason>) {
        let event = UtteranceEvent {
            segment: self.segment,
            is_final,
            end_reason,
            start_ms: self.speech_start / SAMPLES_PER_MS,
            end_ms: self.last_voiced_end.max(self.speech_start) / SAMPLES_PER_MS,
            audio_start_ms: self.audio_start / SAMPLES_PER_MS,
            audio: Arc::from(&self.utt[..]),
        };
        self.since_event = 0;
        self.voiced_since_event = false;
        if is_final {
            self.stats.utterances += 1;
        } else {
            self.stats.interims += 1;
            self.interims_in_segment += 1;
            let seg = self.segment;
            self.events.retain(|e| e.is_final || e.segment != seg);
        }
        if self.events.len() >= MAX_QUEUED_EVENTS {
            self.events.pop_front();
            self.stats.events_dropped += 1;
        }
        self.events.push_back(event);
    }
}

fn next_id(id: u32) -> u32 {
    id.wrapping_add(1).max(1)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::audio::vad::tests::noise;
    use proptest::prelude::*;

    pub(crate) const SR: f64 = 16_000.0;

    /// A voiced-speech-like signal: a harmonic series on a wandering pitch, shaped into
    /// syllables of `syllable_ms` (raised-cosine envelopes, silent between syllables every
    /// fourth syllable for a word gap), `ms` long, peak about `amp`.
    pub(crate) fn speech_like(ms: u32, amp: f32, seed: u32) -> Vec<f32> {
        let n = (u64::from(ms) * SAMPLES_PER_MS) as usize;
        let mut phase = 0.0f64;
        let syllable = 0.22 + 0.03 * f64::from(seed % 3);
        (0..n)
            .map(|i| {
                let t = i as f64 / SR;
                let f0 = 130.0 + 25.0 * (2.0 * std::f64::consts::PI * 0.7 * t).sin();
                phase += 2.0 * std::f64::consts::PI * f0 / SR;
                let mut s = 0.0;
                for k in 1..=12 {
                    // A crude formant tilt: strong around 500 and 1500 Hz.
                    let f = f0 * f64::from(k);
                    let w = 1.0 / (1.0 + ((f - 500.0) / 400.0).powi(2))
                        + 0.5 / (1.0 + ((f - 1500.0) / 500.0).powi(2));
                    s += w * (phase * f64::from(k)).sin();
                }
                let syl = (t / syllable).floor() as u64;
                let frac = t / syllable - syl as f64;
                let env = if syl % 4 == 3 && frac > 0.6 {
                    0.0 // a short pause between words
                } else {
                    (std::f64::consts::PI * frac).sin().powi(2)
                };
                (s * env * f64::from(amp) * 0.5) as f32
            })
            .collect()
    }

    fn silence(ms: u32) -> Vec<f32> {
        vec![0.0; (u64::from(ms) * SAMPLES_PER_MS) as usize]
    }

    /// Feeds in 20 ms chunks, draining events after each.
    fn feed(seg: &mut Segmenter, x: &[f32], events: &mut Vec<UtteranceEvent>) {
        for chunk in x.chunks(320) {
            seg.push(chunk);
            while let Some(e) = seg.poll_event() {
                events.push(e);
            }
        }
    }

    fn finals(events: &[UtteranceEvent]) -> Vec<&UtteranceEvent> {
        events.iter().filter(|e| e.is_final).collect()
    }

    #[test]
    fn audio_segmenter_silence_and_quiet_noise_give_nothing() {
        let mut seg = Segmenter::new(SegmenterConfig::default());
        let mut events = Vec::new();
        // Five minutes of digital silence, then a minute of faint noise (comfort-noise level).
        let zeros = silence(1_000);
        for _ in 0..300 {
            feed(&mut seg, &zeros, &mut events);
        }
        let mut s = 1;
        feed(&mut seg, &noise(16_000 * 60, 0.0005, &mut s), &mut events);
        assert!(events.is_empty());
        assert_eq!(seg.position_ms(), 360_000);
        assert_eq!(seg.stats().utterances, 0);
    }

    #[test]
    fn audio_segmenter_one_utterance_interims_then_one_final() {
        let mut seg = Segmenter::new(SegmenterConfig::default());
        let mut events = Vec::new();
        let mut s = 3;
        let mut x = noise(16_000, 0.001, &mut s); // 1 s of room noise
        let speech = speech_like(2_000, 0.3, 1);
        let mut bg = noise(speech.len(), 0.001, &mut s);
        for (b, v) in bg.iter_mut().zip(&speech) {
            *b += v;
        }
        x.extend(bg);
        x.extend(noise(16_000 * 2, 0.001, &mut s));
        feed(&mut seg, &x, &mut events);

        let f = finals(&events);
        assert_eq!(f.len(), 1, "{events:?}");
        assert!(events.len() >= 3, "interims expected: {}", events.len());
        assert!(events.iter().all(|e| e.segment == 1));
        assert!(events.last().is_some_and(|e| e.is_final));
        assert!(events[..events.len() - 1].iter().all(|e| !e.is_final));
        let fin = f[0];
        assert_eq!(fin.end_reason, Some(EndReason::Silence));
        // Truth: speech from 1000 to 2900 ms (the last word ends with a pause from 2900 ms).
        assert!(
            fin.start_ms.abs_diff(1_000) <= 100,
            "start {}",
            fin.start_ms
        );
        assert!(fin.end_ms.abs_diff(2_900) <= 100, "end {}", fin.end_ms);
        assert_eq!(fin.audio_start_ms, fin.start_ms - 200);
        // Trailing silence trimmed to ~200 ms after the last voiced frame.
        let audio_end = fin.audio_start_ms + fin.audio.len() as u64 / SAMPLES_PER_MS;
        assert_eq!(audio_end, fin.end_ms + 200);
        // Interims grow and carry the whole utterance so far.
        let lens: Vec<usize> = events.iter().map(|e| e.audio.len()).collect();
        assert!(lens.windows(2).all(|w| w[0] <= w[1]), "{lens:?}");
        assert_eq!(seg.stats().utterances, 1);
    }

    #[test]
    fn audio_segmenter_two_utterances_two_segments() {
        let mut seg = Segmenter::new(SegmenterConfig::default());
        let mut events = Vec::new();
        let mut x = silence(500);
        x.extend(speech_like(1_500, 0.3, 1));
        x.extend(silence(1_000));
        x.extend(speech_like(1_200, 0.2, 2));
        x.extend(silence(1_000));
        feed(&mut seg, &x, &mut events);
        let f = finals(&events);
        assert_eq!(f.len(), 2, "{events:?}");
        assert_eq!((f[0].segment, f[1].segment), (1, 2));
        assert!(f[0].start_ms.abs_diff(500) <= 100);
        assert!(f[1].start_ms.abs_diff(3_000) <= 100, "{}", f[1].start_ms);
        assert!(f[1].end_ms.abs_diff(4_200) <= 100, "{}", f[1].end_ms);
        // Ids never go backwards and interims precede their final.
        let mut seen_final = std::collections::HashSet::new();
        for e in &events {
            assert!(!seen_final.contains(&e.segment));
            if e.is_final {
                seen_final.insert(e.segment);
            }
        }
    }

    #[test]
    fn audio_segmenter_short_blips_give_nothing() {
        let mut seg = Segmenter::new(SegmenterConfig::default());
        let mut events = Vec::new();
        let mut s = 9;
        feed(&mut seg, &noise(16_000, 0.001, &mut s), &mut events);
        for i in 0..20 {
            feed(&mut seg, &noise(16 * 700, 0.001, &mut s), &mut events);
            // Syllable onsets and clicks shorter than min_speech_ms.
            let blip = if i % 2 == 0 {
                speech_like(100, 0.3, i)
            } else {
                noise(16 * 60, 0.5, &mut s)
            };
            feed(&mut seg, &blip, &mut events);
        }
        feed(&mut seg, &silence(1_000), &mut events);
        assert!(events.is_empty(), "{events:?}");
        assert!(seg.stats().blips >= 15, "{:?}", seg.stats());
    }

    #[test]
    fn audio_segmenter_cuts_long_speech_at_max_length() {
        let cfg = SegmenterConfig::default();
        let max = cfg.max_utterance_ms;
        let mut seg = Segmenter::new(cfg);
        let mut events = Vec::new();
        let mut x = silence(300);
        x.extend(speech_like(40_000, 0.3, 0));
        x.extend(silence(1_000));
        feed(&mut seg, &x, &mut events);
        let f = finals(&events);
        assert!(f.len() >= 3, "{}", f.len());
        for (i, e) in f.iter().enumerate() {
            assert_eq!(e.segment, i as u32 + 1);
            assert!(e.audio.len() <= (max as usize) * 16);
        }
        assert_eq!(f[0].end_reason, Some(EndReason::MaxLength));
        assert_eq!(f[0].audio.len(), max as usize * 16);
        // Continuations join seamlessly: each starts where the previous one's audio ended.
        for w in f.windows(2) {
            if w[0].end_reason == Some(EndReason::MaxLength) {
                let end = w[0].audio_start_ms + w[0].audio.len() as u64 / SAMPLES_PER_MS;
                assert_eq!(w[1].audio_start_ms, end);
            }
        }
        let last = f[f.len() - 1];
        assert_eq!(last.end_reason, Some(EndReason::Silence));
        assert!(last.end_ms.abs_diff(40_300) <= 150, "{}", last.end_ms);
        assert!(seg.stats().cuts >= 2);
    }

    #[test]
    fn audio_segmenter_finish_and_skip() {
        let mut seg = Segmenter::new(SegmenterConfig::default());
        let mut events = Vec::new();
        feed(&mut seg, &speech_like(1_000, 0.3, 0), &mut events);
        assert!(seg.is_speaking());
        seg.finish();
        let e = seg.poll_event();
        assert!(
            e.as_ref()
                .is_some_and(|e| e.is_final && e.end_reason == Some(EndReason::Timeout))
        );
        assert!(!seg.is_speaking());
        // A long gap while speaking ends the utterance by silence and moves the timeline.
        feed(&mut seg, &speech_like(1_000, 0.3, 1), &mut events);
        let before = seg.position_samples();
        seg.skip(16_000 * 60);
        assert_eq!(seg.position_samples(), before + 16_000 * 60);
        let mut last = None;
        while let Some(e) = seg.poll_event() {
            last = Some(e);
        }
        let last = last.expect("a final");
        assert!(last.is_final && last.segment == 2);
        assert_eq!(last.end_reason, Some(EndReason::Silence));
        // After the gap, speech is placed at the right time.
        events.clear();
        feed(&mut seg, &speech_like(1_000, 0.3, 2), &mut events);
        feed(&mut seg, &silence(800), &mut events);
        let f = finals(&events);
        assert_eq!(f.len(), 1);
        assert!(f[0].start_ms.abs_diff(before / 16 + 60_000) <= 100);
        assert_eq!(f[0].segment, 3);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Push(Vec<f32>),
        Speech(u16, u8),
        Skip(u64),
        Finish,
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: (crate::transport::proptest_cases() / 8).max(1),
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        /// Any samples (NaN, huge), skips (up to u64::MAX) and finishes in any order: no panic,
        /// bounded buffers, ids in order, finals well-formed.
        #[test]
        fn audio_segmenter_arbitrary_input_never_panics(
            ops in proptest::collection::vec(
                prop_oneof![
                    proptest::collection::vec(proptest::num::f32::ANY, 0..2_000)
                        .prop_map(Op::Push),
                    (0u16..1_500, any::<u8>()).prop_map(|(ms, s)| Op::Speech(ms, s)),
                    any::<u64>().prop_map(Op::Skip),
                    (0u64..40_000).prop_map(Op::Skip),
                    Just(Op::Finish),
                ],
                1..20,
            ),
            max_utterance_ms in 0u32..40_000,
            interim_every_ms in 0u32..2_000,
        ) {
            let cfg = SegmenterConfig {
                max_utterance_ms,
                interim_every_ms,
                ..SegmenterConfig::default()
            };
            let mut seg = Segmenter::new(cfg);
            let max = seg.max_samples;
            let mut last = 0u32;
            for op in ops {
                match op {
                    Op::Push(x) => seg.push(&x),
                    Op::Speech(ms, s) => seg.push(&speech_like(u32::from(ms), 0.3, u32::from(s))),
                    Op::Skip(n) => seg.skip(n),
                    Op::Finish => seg.finish(),
                }
                prop_assert!(seg.utt.len() <= max && seg.ring.len() <= seg.ring_cap);
                prop_assert!(seg.events.len() <= MAX_QUEUED_EVENTS);
                while let Some(e) = seg.poll_event() {
                    prop_assert!(e.segment >= last && e.segment >= 1);
                    prop_assert!(e.audio.len() <= max);
                    prop_assert!(e.start_ms <= e.end_ms && e.audio_start_ms <= e.start_ms);
                    prop_assert!(e.audio.iter().all(|s| s.is_finite()));
                    last = e.segment;
                }
            }
        }
    }

    #[test]
    fn audio_segmenter_bounds_queue_and_buffers() {
        let cfg = SegmenterConfig {
            max_utterance_ms: 1_000,
            ..SegmenterConfig::default()
        };
        let mut seg = Segmenter::new(cfg);
        // Never drained: the queue stays bounded.
        let x = speech_like(40_000, 0.3, 0);
        for chunk in x.chunks(16_000) {
            seg.push(chunk);
            assert!(seg.events.len() <= MAX_QUEUED_EVENTS);
            assert!(seg.utt.len() <= 16_000);
            assert!(seg.utt.capacity() <= 16_000);
            assert!(seg.ring.len() <= seg.ring_cap);
        }
        assert!(seg.stats().events_dropped > 0);
    }
}
