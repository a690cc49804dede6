//! Streaming 48 kHz -> 16 kHz decimator: a linear-phase windowed-sinc low-pass FIR evaluated
//! only at every third input sample (polyphase decimation by 3).
//!
//! # Filter
//!
//! - [`TAPS`] = 153 taps (odd, symmetric: linear phase, group delay [`GROUP_DELAY_48K`] = 76
//!   input samples, about 1.6 ms).
//! - Ideal low-pass with its -6 dB point at 7.2 kHz, shaped by a Kaiser window with
//!   beta = 7.86 (about 80 dB side-lobe attenuation), giving a transition band of roughly
//!   6.4..8.0 kHz. The output Nyquist frequency is 8 kHz, so everything that could alias
//!   (input above 8 kHz) sits in the stop band; speech content below 6.4 kHz passes flat.
//! - Coefficients are normalised to a DC gain of exactly 1 and computed once in
//!   [`Resampler48To16::new`] in `f64`, then stored as `f32`.
//!
//! # Streaming
//!
//! The resampler keeps the last `TAPS - 1` input samples and the decimation phase between
//! calls, so feeding a signal in chunks of any size gives exactly the output of one call.
//! Work is done in bounded blocks through an internal buffer that stops growing after the
//! first call: no allocation per call after warm-up (the caller's output `Vec` grows only if
//! its capacity is short).
//!
//! Cost: `TAPS` multiply-adds per output sample, about 2.5 M/s per track.

/// Number of FIR taps (odd: the filter is symmetric around its centre tap).
pub const TAPS: usize = 153;

/// Delay of the filter in 48 kHz input samples (`(TAPS - 1) / 2`).
pub const GROUP_DELAY_48K: usize = (TAPS - 1) / 2;

/// Decimation factor: 48 kHz / 16 kHz.
pub const FACTOR: usize = 3;

/// -6 dB cut-off of the low-pass, in Hz.
const CUTOFF_HZ: f64 = 7_200.0;
/// Kaiser window shape parameter: 0.1102 * (80 - 8.7), about 80 dB attenuation.
const KAISER_BETA: f64 = 7.857;
/// Largest block of input processed through the internal buffer at once.
const BLOCK: usize = 4_096;

/// Streaming 48 kHz -> 16 kHz mono decimator (see the module docs).
#[derive(Clone, Debug)]
pub struct Resampler48To16 {
    /// Filter coefficients, `TAPS` long.
    taps: Vec<f32>,
    /// `TAPS - 1` samples of history followed by the block being processed.
    buf: Vec<f32>,
    /// Input samples to consume before the next output sample (0..FACTOR).
    phase: usize,
    /// Exact zeros at the end of the input so far (capped): when the whole history is zero, a
    /// block of zeros is output as zeros without filtering (DTX and gap filler are cheap).
    zero_run: usize,
}

impl Default for Resampler48To16 {
    fn default() -> Self {
        Self::new()
    }
}

impl Resampler48To16 {
    /// A resampler with zeroed history.
    pub fn new() -> Self {
        Self {
            taps: design_lowpass(),
            buf: vec![0.0; TAPS - 1],
            phase: 0,
            zero_run: TAPS,
        }
    }

    /// Forgets the history (as if the input had been silent) and the decimation phase.
    pub fn reset(&mut self) {
        self.buf.clear();
        self.buf.resize(TAPS - 1, 0.0);
        self.phase = 0;
        self.zero_run = TAPS;
    }

    /// The filter coefficients (for inspection and tests).
    pub fn taps(&self) -> &[f32] {
        &self.taps
    }

    /// Filters `input` (48 kHz) and appends the 16 kHz output to `out`: one output sample for
    /// every third input sample, counting across calls.
    pub fn process(&mut self, input: &[f32], out: &mut Vec<f32>) {
        for block in input.chunks(BLOCK) {
            self.process_block(block, out);
        }
    }

    fn process_block(&mut self, block: &[f32], out: &mut Vec<f32>) {
        let hist = TAPS - 1;
        let trailing_zeros = block.iter().rev().take_while(|x| **x == 0.0).count();
        if trailing_zeros == block.len() {
            if self.zero_run >= hist {
                // All inputs under the filter are zero: so is every output, and the history
                // stays all zeros.
                let outputs = (block.len() + FACTOR - 1 - self.phase) / FACTOR;
                out.resize(out.len() + outputs, 0.0);
                self.phase = self.phase + outputs * FACTOR - block.len();
                return;
            }
            self.zero_run = (self.zero_run + block.len()).min(TAPS);
        } else {
            self.zero_run = trailing_zeros;
        }
        self.buf.truncate(hist);
        self.buf.extend_from_slice(block);
        // Input sample `t` of the block sits at `buf[hist + t]`; the output taken at `t`
        // uses `buf[t ..= hist + t]` (the newest sample last).
        let mut t = self.phase;
        while t < block.len() {
            let window = &self.buf[t..t + TAPS];
            let acc: f32 = window
                .iter()
                .rev()
                .zip(&self.taps)
                .map(|(x, h)| x * h)
                .sum();
            out.push(acc);
            t += FACTOR;
        }
        self.phase = t - block.len();
        // Keep the newest `hist` samples as history for the next block.
        let len = self.buf.len();
        self.buf.copy_within(len - hist..len, 0);
        self.buf.truncate(hist);
    }
}

/// Designs the Kaiser-windowed sinc low-pass (see the module docs).
fn design_lowpass() -> Vec<f32> {
    let fc = CUTOFF_HZ / 48_000.0; // normalised cut-off, cycles per sample
    let mid = GROUP_DELAY_48K as f64;
    let i0_beta = bessel_i0(KAISER_BETA);
    let raw: Vec<f64> = (0..TAPS)
        .map(|n| {
            let x = n as f64 - mid;
            let sinc = if x == 0.0 {
                2.0 * fc
            } else {
                (2.0 * std::f64::consts::PI * fc * x).sin() / (std::f64::consts::PI * x)
            };
            let r = x / mid;
            let window = bessel_i0(KAISER_BETA * (1.0 - r * r).max(0.0).sqrt()) / i0_beta;
            sinc * window
        })
        .collect();
    let sum: f64 = raw.iter().sum();
    raw.iter().map(|h| (h / sum) as f32).collect()
}

/// Modified Bessel function of the first kind, order 0 (power series; converges fast for
/// the arguments used here).
fn bessel_i0(x: f64) -> f64 {
    let half = x / 2.0;
    let mut term = 1.0;
    let mut sum = 1.0;
    for k in 1..64 {
        let f = half / k as f64;
        term *= f * f;
        sum += term;
        if term < sum * 1e-17 {
            break;
        }
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(freq: f64, seconds: f64, amp: f64) -> Vec<f32> {
        let n = (48_000.0 * seconds) as usize;
        (0..n)
            .map(|i| (amp * (2.0 * std::f64::consts::PI * freq * i as f64 / 48_000.0).sin()) as f32)
            .collect()
    }

    /// RMS of the steady-state part (skips the filter's start-up transient).
    fn rms_steady(x: &[f32]) -> f64 {
        let skip = TAPS; // output samples, more than the transient
        let tail = &x[skip..];
        (tail.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / tail.len() as f64).sqrt()
    }

    fn gain_db(freq: f64) -> f64 {
        let input = tone(freq, 0.5, 0.5);
        let mut r = Resampler48To16::new();
        let mut out = Vec::new();
        r.process(&input, &mut out);
        assert_eq!(out.len(), input.len() / 3);
        20.0 * (rms_steady(&out) / (0.5 / 2f64.sqrt())).log10()
    }

    #[test]
    fn audio_resampler_passes_speech_band_flat() {
        for f in [100.0, 300.0, 1_000.0, 3_000.0, 5_000.0, 6_000.0] {
            let g = gain_db(f);
            assert!(g.abs() < 0.1, "{f} Hz: {g:.3} dB");
        }
    }

    #[test]
    fn audio_resampler_rejects_aliasing_band() {
        // 10 kHz would alias to 6 kHz: it must be attenuated by at least 50 dB (design: ~80).
        let g = gain_db(10_000.0);
        assert!(g < -50.0, "10 kHz: {g:.1} dB");
        // Everything from the output Nyquist frequency up is in the stop band.
        for f in [8_500.0, 9_000.0, 12_000.0, 16_000.0, 20_000.0, 23_900.0] {
            let g = gain_db(f);
            assert!(g < -60.0, "{f} Hz: {g:.1} dB");
        }
    }

    #[test]
    fn audio_resampler_dc_gain_is_one_and_taps_symmetric() {
        let r = Resampler48To16::new();
        let sum: f32 = r.taps().iter().sum();
        assert!((sum - 1.0).abs() < 1e-5);
        for i in 0..TAPS {
            assert_eq!(r.taps()[i], r.taps()[TAPS - 1 - i]);
        }
    }

    #[test]
    fn audio_resampler_streaming_matches_one_call() {
        let mut seed = 0x1234_5678u32;
        let input: Vec<f32> = (0..20_000)
            .map(|_| {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect();
        let mut whole = Vec::new();
        Resampler48To16::new().process(&input, &mut whole);

        let mut r = Resampler48To16::new();
        let mut pieces = Vec::new();
        let sizes = [1usize, 2, 7, 960, 5, 4_097, 13, 0, 333, 8_191];
        let mut at = 0;
        let mut k = 0;
        while at < input.len() {
            let n = sizes[k % sizes.len()].min(input.len() - at);
            r.process(&input[at..at + n], &mut pieces);
            at += n;
            k += 1;
        }
        assert_eq!(whole, pieces);
        assert_eq!(whole.len(), 20_000usize.div_ceil(3));
    }

    #[test]
    fn audio_resampler_matches_direct_convolution_across_silence() {
        // Signal, exact zeros (the fast path), signal again, in odd chunks.
        let mut input: Vec<f32> = (0..3_000)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) / 10.0)
            .collect();
        input.extend(std::iter::repeat_n(0.0, 10_001));
        input.extend((0..2_000).map(|i| ((i * 5 % 11) as f32 - 5.0) / 10.0));
        input.extend(std::iter::repeat_n(0.0, 100));
        let mut r = Resampler48To16::new();
        let taps = r.taps().to_vec();
        let mut out = Vec::new();
        for chunk in input.chunks(997) {
            r.process(chunk, &mut out);
        }
        let direct: Vec<f32> = (0..input.len())
            .step_by(FACTOR)
            .map(|t| {
                (0..TAPS)
                    .filter(|j| *j <= t)
                    .map(|j| f64::from(taps[j]) * f64::from(input[t - j]))
                    .sum::<f64>() as f32
            })
            .collect();
        assert_eq!(out.len(), direct.len());
        for (a, b) in out.iter().zip(&direct) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    #[test]
    fn audio_resampler_delay_is_the_group_delay() {
        // An impulse at input sample 3k + delay comes out centred on output sample k + delay/3.
        let mut input = vec![0.0f32; 3_000];
        input[300] = 1.0;
        let mut out = Vec::new();
        Resampler48To16::new().process(&input, &mut out);
        let peak = out
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i)
            .unwrap_or(0);
        let expected = (300 + GROUP_DELAY_48K) / 3;
        assert!(peak.abs_diff(expected) <= 1, "{peak} vs {expected}");
    }
}
