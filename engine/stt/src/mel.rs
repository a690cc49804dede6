//! Whisper's log-mel front end, reimplemented to match `whisper.audio.log_mel_spectrogram`
//! (and faster-whisper's `FeatureExtractor`) bit for bit in method, if not in rounding:
//!
//! - 16 kHz mono input, padded with zeros (or cut) to `n_frames * 160` samples;
//! - STFT with a 400-sample periodic Hann window (25 ms), hop 160 (10 ms), `center=True` with
//!   reflect padding of 200 samples each side, keeping `n_frames` frames (torch drops the last);
//! - power spectrum (|X|^2, 201 bins) through librosa's Slaney-normalised mel filter bank
//!   (`htk=False`, `norm="slaney"`, 0..8000 Hz);
//! - `log10(max(mel, 1e-10))`, clamped below at `max - 8`, then `(x + 4) / 4`.
//!
//! The output is `n_mels x n_frames`, row-major (one row per mel bin): the layout of the
//! `[1, n_mels, n_frames]` tensor the encoder takes. Whisper's window is 3000 frames (30 s).

use std::sync::Arc;

use realfft::num_complex::Complex;
use realfft::{RealFftPlanner, RealToComplex};

/// Sample rate the front end expects.
pub const SAMPLE_RATE: usize = 16_000;
/// FFT size / window length: 25 ms.
pub const N_FFT: usize = 400;
/// Hop between frames: 10 ms.
pub const HOP: usize = 160;
/// Frames in Whisper's 30-second window.
pub const N_FRAMES: usize = 3000;
/// Mel bins of every Whisper model except large-v3 (128).
pub const N_MELS: usize = 80;
/// Value of a frame of pure silence when the whole input is silent: `(log10(1e-10) + 4) / 4`.
pub const SILENCE_FLOOR: f32 = -1.5;

const N_BINS: usize = N_FFT / 2 + 1;

/// One triangular mel filter, stored sparsely: weights for bins `first..first + w.len()`.
struct Filter {
    first: usize,
    weights: Vec<f32>,
}

/// A reusable front end (FFT plan, window and filter bank are computed once).
pub struct MelFrontEnd {
    n_mels: usize,
    window: Vec<f32>,
    filters: Vec<Filter>,
    fft: Arc<dyn RealToComplex<f32>>,
}

impl MelFrontEnd {
    /// A front end producing `n_mels` bins (80 for Whisper tiny/base/small/medium/large-v2).
    pub fn new(n_mels: usize) -> Self {
        let window = (0..N_FFT)
            .map(|n| {
                let x = 2.0 * std::f64::consts::PI * n as f64 / N_FFT as f64;
                (0.5 - 0.5 * x.cos()) as f32
            })
            .collect();
        let filters = mel_filters(SAMPLE_RATE as f64, N_FFT, n_mels)
            .into_iter()
            .map(|row| {
                let first = row.iter().position(|&w| w > 0.0).unwrap_or(0);
                let last = row.iter().rposition(|&w| w > 0.0).unwrap_or(0);
                let weights = if row[first] > 0.0 {
                    row[first..=last].iter().map(|&w| w as f32).collect()
                } else {
                    Vec::new()
                };
                Filter { first, weights }
            })
            .collect();
        let fft = RealFftPlanner::<f32>::new().plan_fft_forward(N_FFT);
        Self {
            n_mels,
            window,
            filters,
            fft,
        }
    }

    pub fn n_mels(&self) -> usize {
        self.n_mels
    }

    /// Log-mel features of `samples` (16 kHz), padded with zeros or cut to `n_frames`
    /// frames: `n_mels * n_frames` values, one row of `n_frames` per mel bin.
    pub fn compute(&self, samples: &[f32], n_frames: usize) -> Vec<f32> {
        let n_frames = n_frames.max(1);
        let total = n_frames * HOP; // the padded/trimmed signal length
        let used = samples.len().min(total);
        let x = &samples[..used];
        // Sample `i` of the signal zero-padded to `total`, then reflect-padded by N_FFT/2.
        let at = |i: isize| -> f32 {
            let half = (N_FFT / 2) as isize;
            let len = total as isize;
            let mut j = i - half;
            if j < 0 {
                j = -j;
            }
            if j >= len {
                j = 2 * (len - 1) - j;
            }
            if j < 0 {
                return 0.0; // only for absurdly short windows
            }
            x.get(j as usize).copied().unwrap_or(0.0)
        };

        let mut out = vec![0.0f32; self.n_mels * n_frames];
        let mut frame = self.fft.make_input_vec();
        let mut spectrum = self.fft.make_output_vec();
        let mut scratch = self.fft.make_scratch_vec();
        let mut power = vec![0.0f32; N_BINS];
        for t in 0..n_frames {
            let start = (t * HOP) as isize;
            let mut silent = true;
            for (k, v) in frame.iter_mut().enumerate() {
                let s = at(start + k as isize);
                silent &= s == 0.0;
                *v = s * self.window[k];
            }
            if silent {
                continue; // all-zero power: mel stays 0
            }
            if self
                .fft
                .process_with_scratch(&mut frame, &mut spectrum, &mut scratch)
                .is_err()
            {
                continue; // lengths come from the plan itself; cannot happen
            }
            for (p, c) in power.iter_mut().zip(spectrum.iter()) {
                *p = norm_sqr(c);
            }
            for (m, f) in self.filters.iter().enumerate() {
                let bins = &power[f.first..f.first + f.weights.len()];
                let e: f32 = bins.iter().zip(&f.weights).map(|(p, w)| p * w).sum();
                out[m * n_frames + t] = e;
            }
        }

        let mut max = f32::NEG_INFINITY;
        for v in out.iter_mut() {
            *v = v.max(1e-10).log10();
            max = max.max(*v);
        }
        let floor = max - 8.0;
        for v in out.iter_mut() {
            *v = (v.max(floor) + 4.0) / 4.0;
        }
        out
    }
}

fn norm_sqr(c: &Complex<f32>) -> f32 {
    c.re * c.re + c.im * c.im
}

/// Slaney mel scale (librosa `hz_to_mel`, `htk=False`): linear below 1 kHz, log above.
fn hz_to_mel(hz: f64) -> f64 {
    const F_SP: f64 = 200.0 / 3.0;
    const MIN_LOG_HZ: f64 = 1000.0;
    let min_log_mel = MIN_LOG_HZ / F_SP;
    let logstep = 6.4f64.ln() / 27.0;
    if hz >= MIN_LOG_HZ {
        min_log_mel + (hz / MIN_LOG_HZ).ln() / logstep
    } else {
        hz / F_SP
    }
}

fn mel_to_hz(mel: f64) -> f64 {
    const F_SP: f64 = 200.0 / 3.0;
    const MIN_LOG_HZ: f64 = 1000.0;
    let min_log_mel = MIN_LOG_HZ / F_SP;
    let logstep = 6.4f64.ln() / 27.0;
    if mel >= min_log_mel {
        MIN_LOG_HZ * (logstep * (mel - min_log_mel)).exp()
    } else {
        F_SP * mel
    }
}

/// librosa.filters.mel(sr, n_fft, n_mels, fmin=0, fmax=sr/2, htk=False, norm="slaney"):
/// `n_mels` rows of `n_fft/2 + 1` weights.
pub fn mel_filters(sr: f64, n_fft: usize, n_mels: usize) -> Vec<Vec<f64>> {
    let n_bins = n_fft / 2 + 1;
    let fft_freqs: Vec<f64> = (0..n_bins).map(|i| i as f64 * sr / n_fft as f64).collect();
    let (lo, hi) = (hz_to_mel(0.0), hz_to_mel(sr / 2.0));
    let mel_f: Vec<f64> = (0..n_mels + 2)
        .map(|i| mel_to_hz(lo + (hi - lo) * i as f64 / (n_mels + 1) as f64))
        .collect();
    (0..n_mels)
        .map(|m| {
            let (f0, f1, f2) = (mel_f[m], mel_f[m + 1], mel_f[m + 2]);
            let enorm = 2.0 / (f2 - f0);
            fft_freqs
                .iter()
                .map(|&f| {
                    let lower = (f - f0) / (f1 - f0);
                    let upper = (f2 - f) / (f2 - f1);
                    lower.min(upper).max(0.0) * enorm
                })
                .collect()
        })
        .collect()
}

/// Centre frequency (Hz) of mel bin `m` of an `n_mels` bank (for tests and diagnostics).
pub fn mel_center_hz(m: usize, n_mels: usize) -> f64 {
    let (lo, hi) = (hz_to_mel(0.0), hz_to_mel(SAMPLE_RATE as f64 / 2.0));
    mel_to_hz(lo + (hi - lo) * (m + 1) as f64 / (n_mels + 1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(hz: f32, secs: f32, amp: f32) -> Vec<f32> {
        let n = (secs * SAMPLE_RATE as f32) as usize;
        (0..n)
            .map(|i| amp * (2.0 * std::f32::consts::PI * hz * i as f32 / SAMPLE_RATE as f32).sin())
            .collect()
    }

    #[test]
    fn shape_is_80_by_3000() {
        let fe = MelFrontEnd::new(N_MELS);
        let out = fe.compute(&tone(440.0, 2.0, 0.5), N_FRAMES);
        assert_eq!(out.len(), 80 * 3000);
        // Longer input is cut to the window.
        let out = fe.compute(&tone(440.0, 31.0, 0.5), N_FRAMES);
        assert_eq!(out.len(), 80 * 3000);
        assert!(out.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn silence_gives_the_floor_everywhere() {
        let fe = MelFrontEnd::new(N_MELS);
        for input in [vec![], vec![0.0; 16_000]] {
            let out = fe.compute(&input, N_FRAMES);
            assert!(
                out.iter().all(|&v| v == SILENCE_FLOOR),
                "silence -> {SILENCE_FLOOR}"
            );
        }
    }

    #[test]
    fn a_1khz_tone_peaks_in_the_mel_bin_centred_on_1khz() {
        let fe = MelFrontEnd::new(N_MELS);
        let out = fe.compute(&tone(1000.0, 1.0, 0.5), N_FRAMES);
        // Frame 50 (0.5 s) is well inside the tone.
        let col: Vec<f32> = (0..N_MELS).map(|m| out[m * N_FRAMES + 50]).collect();
        let peak = (0..N_MELS)
            .max_by(|&a, &b| col[a].total_cmp(&col[b]))
            .unwrap();
        let nearest = (0..N_MELS)
            .min_by(|&a, &b| {
                (mel_center_hz(a, N_MELS) - 1000.0)
                    .abs()
                    .total_cmp(&(mel_center_hz(b, N_MELS) - 1000.0).abs())
            })
            .unwrap();
        assert_eq!(
            peak, nearest,
            "peak bin {peak}, bin nearest 1 kHz {nearest}"
        );
        // Slaney scale: 1 kHz is mel 15, so (80 bins over 0..~45.2 mel) bin 25 or 26.
        assert!((25..=26).contains(&peak), "peak {peak}");
        // The padding after the tone sits at the clamp floor, 8 decades (2.0 after /4) below.
        let max = out.iter().cloned().fold(f32::MIN, f32::max);
        let tail = out[peak * N_FRAMES + 2000];
        assert!((max - tail - 2.0).abs() < 1e-5, "max {max} tail {tail}");
    }

    #[test]
    fn filter_bank_matches_librosa_reference_values() {
        // librosa.filters.mel(sr=16000, n_fft=400, n_mels=80) (Whisper's mel_filters.npz):
        // row 0 spans 0..74.48 Hz peaking at 37.24 Hz; bin 1 (40 Hz) is on its falling
        // edge: (74.48 - 40) / 37.24 * (2 / 74.48) = 0.0248626.
        let f = mel_filters(16_000.0, 400, 80);
        assert_eq!(f.len(), 80);
        assert_eq!(f[0].len(), 201);
        assert_eq!(f[0][0], 0.0);
        assert!((f[0][1] - 0.024_862_59).abs() < 1e-6, "{}", f[0][1]);
        // Every filter has some support and the bank covers up to 8 kHz.
        assert!(f.iter().all(|row| row.iter().any(|&w| w > 0.0)));
    }

    #[test]
    fn short_windows_have_the_requested_shape() {
        let fe = MelFrontEnd::new(N_MELS);
        let out = fe.compute(&tone(300.0, 1.0, 0.3), 100);
        assert_eq!(out.len(), 80 * 100);
        // Identical to the first 100 frames of the full window: zero padding never raises
        // the maximum, so the clamp floor is the same.
        let full = fe.compute(&tone(300.0, 1.0, 0.3), N_FRAMES);
        for m in 0..N_MELS {
            for t in 0..98 {
                assert!((out[m * 100 + t] - full[m * N_FRAMES + t]).abs() < 1e-6);
            }
        }
    }
}
