//! Energy-based voice activity detection with an adaptive noise floor, on 10 ms frames of
//! 16 kHz mono audio.
//!
//! Per frame ([`VAD_FRAME_SAMPLES`] = 160 samples):
//!
//! 1. A high-pass filter (2nd-order Butterworth at [`VadConfig::highpass_hz`], default
//!    150 Hz) removes DC, hum and rumble: wind, traffic and brown-ish noise have most of their
//!    energy there and fluctuate enough to pass for syllables, while speech keeps its
//!    harmonics and formants above it.
//! 2. The frame energy is its mean square in dBFS (a full-scale sine is -3 dBFS).
//! 3. **Digital silence** (energy at or below [`VadConfig::digital_silence_db`], e.g. a muted
//!    microphone, DTX filler or concealment zeros) is never speech and says little about the
//!    background noise that will follow it: it only lets a floor above the quietest one that
//!    matters (`min_energy_db - margin_db`) relax slowly towards it (time constant
//!    [`VadConfig::noise_rise_ms`]), so that a loud click before minutes of silence cannot
//!    deafen the detector.
//! 4. **Noise floor**: starts at the energy of the first frame that is not digital silence;
//!    then falls quickly towards quieter frames (half the distance per frame) and rises slowly
//!    towards louder ones (time constant [`VadConfig::noise_rise_ms`]), or quickly
//!    ([`VadConfig::noise_rise_fast_ms`]) while the energy is *stationary*: its spread over
//!    the last [`VadConfig::stationary_window_ms`] stays within
//!    [`VadConfig::stationary_spread_db`]. Speech is never stationary for that long (its
//!    energy swings by tens of dB at the syllable rate), steady background noise (fans, hum,
//!    comfort noise) is, so a new noise level is learnt in about a second while a long
//!    utterance barely moves the floor; the pauses between syllables pull it back down.
//! 5. A frame is **voiced** when its energy exceeds both the floor plus
//!    [`VadConfig::margin_db`] and the absolute minimum [`VadConfig::min_energy_db`].
//! 6. **Hangover**: the speech decision stays on for [`VadConfig::hangover_ms`] after the
//!    last voiced frame, bridging the short dips between syllables.
//!
//! Deterministic, allocation-free after construction, no panics on any input (NaN and
//! infinite samples are treated as silence).

/// Samples per VAD frame: 10 ms at 16 kHz.
pub const VAD_FRAME_SAMPLES: usize = 160;
/// Duration of one VAD frame in milliseconds.
pub const VAD_FRAME_MS: u32 = 10;
/// Longest stationarity window the detector supports (frames).
const MAX_WINDOW_FRAMES: usize = 200;

/// Thresholds of the [`Vad`]. All levels are in dBFS of the frame's mean square (a full-scale
/// sine is -3 dBFS, conversational speech from a browser with AGC is about -35..-15 dBFS).
#[derive(Clone, Debug, PartialEq)]
pub struct VadConfig {
    /// Cut-off of the high-pass applied before measuring energy, Hz (clamped to 20..=1000).
    /// Default 150 Hz.
    pub highpass_hz: f32,
    /// A frame must be this far above the noise floor to be voiced. Default 10 dB.
    pub margin_db: f32,
    /// A frame must also be louder than this to be voiced, whatever the floor: keeps comfort
    /// noise and very quiet rooms out. Default -50 dBFS.
    pub min_energy_db: f32,
    /// Frames at or below this level are digital silence: never voiced, and they do not move
    /// the noise floor. Default -80 dBFS.
    pub digital_silence_db: f32,
    /// Speech stays on this long after the last voiced frame. Default 100 ms.
    pub hangover_ms: u32,
    /// Time constant of the noise floor's rise towards louder frames. Default 3000 ms.
    pub noise_rise_ms: u32,
    /// Time constant of the rise while the energy is stationary. Default 250 ms.
    pub noise_rise_fast_ms: u32,
    /// Window over which stationarity is judged (at most 2000 ms). Default 500 ms.
    pub stationary_window_ms: u32,
    /// Largest max-min energy spread in that window that counts as stationary. Default 6 dB.
    pub stationary_spread_db: f32,
}

impl Default for VadConfig {
    fn default() -> Self {
        Self {
            highpass_hz: 150.0,
            margin_db: 10.0,
            min_energy_db: -50.0,
            digital_silence_db: -80.0,
            hangover_ms: 100,
            noise_rise_ms: 3_000,
            noise_rise_fast_ms: 250,
            stationary_window_ms: 500,
            stationary_spread_db: 6.0,
        }
    }
}

/// The detector's verdict on one frame.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VadFrame {
    /// The frame itself is loud enough above the floor (no hangover).
    pub voiced: bool,
    /// Speech decision with hangover.
    pub speech: bool,
    /// The frame's energy, dBFS (clamped at -120).
    pub energy_db: f32,
    /// The noise floor after this frame, dBFS (`None` until a non-silent frame was seen).
    pub noise_db: Option<f32>,
}

/// Energy VAD with an adaptive noise floor (see the module docs).
#[derive(Clone, Debug)]
pub struct Vad {
    cfg: VadConfig,
    /// High-pass biquad: coefficients (b0, b1, b2, a1, a2, normalised) and state.
    hp: [f64; 5],
    hp_state: [f64; 4],
    noise_db: Option<f32>,
    rise_slow: f32,
    rise_fast: f32,
    /// Recent frame energies (ring), for the stationarity test.
    recent: [f32; MAX_WINDOW_FRAMES],
    recent_len: usize,
    recent_at: usize,
    window_frames: usize,
    hangover_frames: u32,
    hangover_left: u32,
}

const FLOOR_DB: f32 = -120.0;

/// Butterworth (Q = 1/sqrt 2) high-pass biquad at `hz` for 16 kHz (RBJ's cookbook).
fn highpass(hz: f32) -> [f64; 5] {
    let hz = if hz.is_finite() {
        hz.clamp(20.0, 1_000.0)
    } else {
        150.0
    };
    let w0 = 2.0 * std::f64::consts::PI * f64::from(hz) / 16_000.0;
    let (sin, cos) = w0.sin_cos();
    let alpha = sin / std::f64::consts::SQRT_2;
    let a0 = 1.0 + alpha;
    [
        (1.0 + cos) / 2.0 / a0,
        -(1.0 + cos) / a0,
        (1.0 + cos) / 2.0 / a0,
        -2.0 * cos / a0,
        (1.0 - alpha) / a0,
    ]
}

impl Vad {
    /// A detector with no history.
    pub fn new(cfg: VadConfig) -> Self {
        let per_frame = |tau_ms: u32| {
            let tau = f64::from(tau_ms.max(1));
            (1.0 - (-f64::from(VAD_FRAME_MS) / tau).exp()) as f32
        };
        let window_frames =
            ((cfg.stationary_window_ms / VAD_FRAME_MS) as usize).clamp(2, MAX_WINDOW_FRAMES);
        Self {
            rise_slow: per_frame(cfg.noise_rise_ms),
            rise_fast: per_frame(cfg.noise_rise_fast_ms),
            hangover_frames: cfg.hangover_ms / VAD_FRAME_MS,
            window_frames,
            hp: highpass(cfg.highpass_hz),
            hp_state: [0.0; 4],
            cfg,
            noise_db: None,
            recent: [0.0; MAX_WINDOW_FRAMES],
            recent_len: 0,
            recent_at: 0,
            hangover_left: 0,
        }
    }

    /// The configuration in use.
    pub fn config(&self) -> &VadConfig {
        &self.cfg
    }

    /// The current noise floor estimate, dBFS.
    pub fn noise_db(&self) -> Option<f32> {
        self.noise_db
    }

    /// Classifies one frame (normally [`VAD_FRAME_SAMPLES`] samples; any length works, an
    /// empty frame is silence).
    pub fn process(&mut self, frame: &[f32]) -> VadFrame {
        let mut sum = 0.0f64;
        let [b0, b1, b2, a1, a2] = self.hp;
        let [mut x1, mut x2, mut y1, mut y2] = self.hp_state;
        for &x in frame {
            // Non-finite and absurd samples count as silence (decoded audio is within +-1).
            let x = if x.is_finite() && x.abs() <= 16.0 {
                f64::from(x)
            } else {
                0.0
            };
            let y = b0 * x + b1 * x1 + b2 * x2 - a1 * y1 - a2 * y2;
            (x2, x1, y2, y1) = (x1, x, y1, y);
            sum += y * y;
        }
        self.hp_state = [x1, x2, y1, y2];
        let mean_square = if frame.is_empty() {
            0.0
        } else {
            sum / frame.len() as f64
        };
        let energy_db = if mean_square > 1e-12 && mean_square.is_finite() {
            ((10.0 * mean_square.log10()) as f32).max(FLOOR_DB)
        } else {
            FLOOR_DB
        };

        let mut voiced = false;
        if energy_db <= self.cfg.digital_silence_db {
            let quietest = self.cfg.min_energy_db - self.cfg.margin_db;
            if let Some(n) = self.noise_db.filter(|n| *n > quietest) {
                self.noise_db = Some(n + self.rise_slow * (quietest - n));
            }
        } else {
            let stationary = self.push_recent(energy_db);
            let noise = match self.noise_db {
                None => energy_db,
                Some(n) if energy_db < n => n + 0.5 * (energy_db - n),
                Some(n) => {
                    let rate = if stationary {
                        self.rise_fast
                    } else {
                        self.rise_slow
                    };
                    n + rate * (energy_db - n)
                }
            };
            // Judge against the floor before this frame moved it up.
            let reference = self.noise_db.unwrap_or(noise).min(noise);
            voiced =
                energy_db > reference + self.cfg.margin_db && energy_db > self.cfg.min_energy_db;
            self.noise_db = Some(noise);
        }

        if voiced {
            self.hangover_left = self.hangover_frames;
        } else {
            self.hangover_left = self.hangover_left.saturating_sub(1);
        }
        VadFrame {
            voiced,
            speech: voiced || self.hangover_left > 0,
            energy_db,
            noise_db: self.noise_db,
        }
    }

    /// Records an energy and reports whether the window is full and its spread small.
    fn push_recent(&mut self, energy_db: f32) -> bool {
        self.recent[self.recent_at] = energy_db;
        self.recent_at = (self.recent_at + 1) % self.window_frames;
        self.recent_len = (self.recent_len + 1).min(self.window_frames);
        if self.recent_len < self.window_frames {
            return false;
        }
        let window = &self.recent[..self.window_frames];
        let (lo, hi) = window
            .iter()
            .fold((f32::MAX, f32::MIN), |(lo, hi), &e| (lo.min(e), hi.max(e)));
        hi - lo <= self.cfg.stationary_spread_db
    }

    /// Forgets the hangover and the stationarity window (the noise floor is kept): used after
    /// a discontinuity in the audio.
    pub fn reset_short_term(&mut self) {
        self.hangover_left = 0;
        self.recent_len = 0;
        self.recent_at = 0;
        self.hp_state = [0.0; 4];
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Deterministic white noise in -amp..amp.
    pub(crate) fn noise(n: usize, amp: f32, seed: &mut u32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                *seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                ((*seed >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0) * amp
            })
            .collect()
    }

    fn run(vad: &mut Vad, x: &[f32]) -> Vec<VadFrame> {
        x.chunks(VAD_FRAME_SAMPLES)
            .map(|f| vad.process(f))
            .collect()
    }

    #[test]
    fn audio_vad_digital_silence_is_never_speech() {
        let mut vad = Vad::new(VadConfig::default());
        let frames = run(&mut vad, &vec![0.0; 16_000 * 120]);
        assert!(frames.iter().all(|f| !f.speech));
        assert_eq!(vad.noise_db(), None);
    }

    #[test]
    fn audio_vad_adapts_to_steady_noise() {
        let mut seed = 7;
        let mut vad = Vad::new(VadConfig::default());
        // Quiet room, then a loud fan switches on: at most a short false alarm, then quiet.
        let quiet = noise(16_000 * 3, 0.002, &mut seed);
        let loud = noise(16_000 * 20, 0.05, &mut seed);
        let f1 = run(&mut vad, &quiet);
        assert!(f1.iter().all(|f| !f.voiced));
        let f2 = run(&mut vad, &loud);
        let voiced = f2.iter().filter(|f| f.voiced).count();
        assert!(voiced < 150, "{voiced} voiced frames of steady noise");
        assert!(f2[300..].iter().all(|f| !f.speech));
    }

    #[test]
    fn audio_vad_ignores_rumble() {
        // Brown-ish noise (leaky random walk): loud, strongly fluctuating, all below 150 Hz
        // in energy terms; the high-pass keeps it from passing for syllables.
        let mut seed = 11;
        let white = noise(16_000 * 60, 1.0, &mut seed);
        let mut acc = 0.0f32;
        let rumble: Vec<f32> = white
            .iter()
            .map(|w| {
                acc = 0.998 * acc + 0.02 * w;
                acc
            })
            .collect();
        let mut seg = crate::audio::Segmenter::new(crate::audio::SegmenterConfig::default());
        seg.push(&rumble);
        assert!(seg.poll_event().is_none());
    }

    #[test]
    fn audio_vad_ignores_nan_and_inf() {
        let mut vad = Vad::new(VadConfig::default());
        let mut frame = vec![f32::NAN; VAD_FRAME_SAMPLES];
        frame[3] = f32::INFINITY;
        frame[4] = f32::NEG_INFINITY;
        let f = vad.process(&frame);
        assert!(!f.voiced);
        let f = vad.process(&[]);
        assert!(!f.voiced);
    }
}
