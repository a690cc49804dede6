//! Hearth's embedded speech-to-text engine: Whisper (tiny.en by default) through
//! CTranslate2 (`ct2rs`), driven at the `ct2rs::sys::Whisper` level.
//!
//! Why not `ct2rs::Whisper::generate`: it always prompts with a language token and
//! `<|transcribe|>`, which English-only (`.en`) models never saw and which wrecks their
//! output. Here the prompt is `<|startoftranscript|><|notimestamps|>` for `.en` models
//! (`<|startoftranscript|><|en|><|transcribe|><|notimestamps|>` for multilingual ones), the
//! log-mel features come from [`mel`] (Whisper's own front end) and token ids are decoded
//! with the model's vocabulary ([`tokens`]).
//!
//! The engine runs inside the `hearth-stt` worker process (see `main.rs`), never inside the
//! node: native code that aborts takes down only the worker.

pub mod mel;
pub mod tokens;
pub mod wav;

use std::path::{Path, PathBuf};
use std::time::Instant;

use ct2rs::sys::{StorageView, Whisper, WhisperOptions};
use ct2rs::{ComputeType, Config, Device};
use thiserror::Error;

use crate::mel::{HOP, MelFrontEnd, N_FRAMES, SAMPLE_RATE};
use crate::tokens::{VocabError, Vocabulary};

/// Longest input: Whisper's 30-second window.
pub const MAX_SAMPLES: usize = N_FRAMES * HOP;

/// Why a model cannot be loaded.
#[derive(Debug, Error)]
pub enum LoadError {
    #[error(
        "model directory {0} does not exist (install it with deploy/models/install-whisper.sh)"
    )]
    NoDirectory(PathBuf),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("{0} is missing (install the model with deploy/models/install-whisper.sh)")]
    NoModelFile(PathBuf),
    #[error("vocabulary: {0}")]
    Vocabulary(#[from] VocabError),
    #[error("CTranslate2 cannot load {path}: {reason}")]
    Model { path: PathBuf, reason: String },
    #[error("unsupported model in {path}: {reason}")]
    Unsupported { path: PathBuf, reason: String },
}

/// Why one transcription failed (the engine stays usable).
#[derive(Debug, Error)]
pub enum TranscribeError {
    #[error("{0} samples is more than Whisper's 30-second window ({MAX_SAMPLES})")]
    TooLong(usize),
    #[error("the model cannot transcribe language {0:?} (English-only, or no such language)")]
    Language(String),
    #[error("CTranslate2: {0}")]
    Model(String),
}

/// How much audio the encoder sees.
///
/// CTranslate2 accepts fewer than 3000 frames (`WhisperEncoder` only checks
/// `frames <= 2 * num_positions` and slices the position encodings), and a short window
/// makes the encoder, the bulk of the cost for short utterances, several times cheaper.
/// But Whisper was trained on 30-second windows only. Measured with tiny.en, int8, one
/// core, on espeak-ng Harvard sentences (WER over 40 utterances in 4 voices; runaway
/// outputs over 120 utterances in 12 voices, finals and interims):
///
/// | window | RTF of finals, 1 s / 3 s / 8.6 s | WER | runaway outputs |
/// |---|---|---|---|
/// | full (3000 frames) | 0.79 / 0.30 / 0.15 | 27.8 % | none |
/// | audio + 8 s | 0.34 / 0.13 / 0.10 | 25.9 % | 2 finals, 2 interims (sentence said twice) |
/// | audio + 6 s | | 26.9 % | 5 finals, 3 interims |
/// | audio + 4 s | | 36.9 % | |
/// | audio + 2 s | | 34 to 131 % per voice | loops on most voices |
/// | audio only | | 124 to 218 % per voice | loops everywhere |
///
/// The repeated sentences come with good scores (average log probability about -0.2), so
/// no confidence gate catches them. [`Window::Full`] is therefore the default; `Fit` stays
/// for measurement (`hearth-stt --bench ... --window fit --pad-ms MS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    /// Always Whisper's 30-second window (3000 frames), zero padded: what the model was
    /// trained on.
    Full,
    /// Only the audio plus `pad_ms` of silence (at most 30 s).
    Fit { pad_ms: u32 },
}

/// Engine settings beyond the model directory.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Intra-op threads of CTranslate2 (0: CTranslate2's default).
    pub threads: usize,
    pub window: Window,
    /// Beam width for final results.
    pub final_beam: usize,
    /// Beam width for interim results (1: greedy).
    pub interim_beam: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            threads: 1,
            window: Window::Full,
            final_beam: 5,
            interim_beam: 1,
        }
    }
}

/// A transcript with what the decoder said about it.
#[derive(Clone, Debug, Default)]
pub struct Transcript {
    pub text: String,
    /// Probability of `<|nocaptions|>` at the first step (no speech).
    pub no_speech_prob: f32,
    /// Length-normalised log probability of the chosen hypothesis.
    pub avg_logprob: f32,
    /// Text tokens generated.
    pub tokens: usize,
    /// Mel frames the encoder saw.
    pub frames: usize,
    /// Whether the no-speech gate dropped the text.
    pub gated: bool,
}

const SOT: &str = "<|startoftranscript|>";
const NO_TIMESTAMPS: &str = "<|notimestamps|>";
const TRANSCRIBE: &str = "<|transcribe|>";

/// Peak below which input is digital silence and not decoded at all (-80 dBFS).
const SILENCE_PEAK: f32 = 1e-4;
/// Whisper's own no-speech rule: drop a result whose no-speech probability is above this
/// while its average log probability is below [`GATE_LOGPROB`].
const GATE_NO_SPEECH: f32 = 0.6;
const GATE_LOGPROB: f32 = -1.0;

/// A loaded Whisper model.
pub struct Engine {
    whisper: Whisper,
    vocab: Vocabulary,
    front_end: MelFrontEnd,
    options: EngineOptions,
    name: String,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("name", &self.name)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Loads the CTranslate2 Whisper model in `model_dir` (`model.bin`, `config.json`,
    /// `vocabulary.txt` or `tokenizer.json`) for the CPU, int8, with `threads` intra-op
    /// threads.
    pub fn load(model_dir: impl AsRef<Path>, threads: usize) -> Result<Self, LoadError> {
        Self::load_with(
            model_dir,
            EngineOptions {
                threads,
                ..EngineOptions::default()
            },
        )
    }

    pub fn load_with(
        model_dir: impl AsRef<Path>,
        options: EngineOptions,
    ) -> Result<Self, LoadError> {
        let dir = model_dir.as_ref();
        match std::fs::metadata(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(LoadError::NoDirectory(dir.to_owned()));
            }
            Err(source) => {
                return Err(LoadError::Io {
                    path: dir.to_owned(),
                    source,
                });
            }
            Ok(m) if !m.is_dir() => return Err(LoadError::NotADirectory(dir.to_owned())),
            Ok(_) => {}
        }
        let bin = dir.join("model.bin");
        if !bin.is_file() {
            return Err(LoadError::NoModelFile(bin));
        }
        let vocab = Vocabulary::load(dir)?;
        let config = Config {
            device: Device::CPU,
            // The weights are fp16; on the CPU anything but int8 means fp32 (2x the memory
            // and slower).
            compute_type: ComputeType::INT8,
            device_indices: vec![0],
            tensor_parallel: false,
            num_threads_per_replica: options.threads,
            max_queued_batches: 0,
            cpu_core_offset: -1,
        };
        // C++ exceptions (bad header, truncated file, wrong spec) come back as errors.
        let whisper = Whisper::new(dir, config).map_err(|e| LoadError::Model {
            path: dir.to_owned(),
            reason: format!("{e:#}"),
        })?;
        let unsupported = |reason: String| LoadError::Unsupported {
            path: dir.to_owned(),
            reason,
        };
        let n_mels = whisper.n_mels();
        if n_mels != 80 && n_mels != 128 {
            return Err(unsupported(format!("{n_mels} mel bins")));
        }
        let mut needed = vec![SOT, NO_TIMESTAMPS];
        if whisper.is_multilingual() {
            needed.extend(["<|en|>", TRANSCRIBE]);
        }
        for t in needed {
            if vocab.id(t).is_none() {
                return Err(unsupported(format!("the vocabulary has no {t}")));
            }
        }
        let name = format!(
            "{} (CTranslate2 {}, int8, {} thread{})",
            dir.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "whisper".into()),
            if whisper.is_multilingual() {
                "whisper"
            } else {
                "whisper, English-only"
            },
            options.threads,
            if options.threads == 1 { "" } else { "s" }
        );
        Ok(Self {
            whisper,
            vocab,
            front_end: MelFrontEnd::new(n_mels),
            options,
            name,
        })
    }

    /// What was loaded, for the worker's Hello.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn is_multilingual(&self) -> bool {
        self.whisper.is_multilingual()
    }

    pub fn options(&self) -> &EngineOptions {
        &self.options
    }

    /// The vocabulary of the loaded model.
    pub fn vocabulary(&self) -> &Vocabulary {
        &self.vocab
    }

    /// Text of `samples_16k` (16 kHz mono, at most 30 s), in English. `interim` results
    /// are decoded greedily, finals with beam search.
    pub fn transcribe(
        &self,
        samples_16k: &[f32],
        interim: bool,
    ) -> Result<String, TranscribeError> {
        self.transcribe_detailed(samples_16k, interim, "")
            .map(|t| t.text)
    }

    /// The decoder prompt for `language` (BCP 47 or ISO 639; empty: English).
    fn prompt(&self, language: &str) -> Result<Vec<String>, TranscribeError> {
        let primary = language
            .split(['-', '_'])
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        let english = language.is_empty() || primary == "en" || primary == "eng";
        if !self.is_multilingual() {
            return if english {
                Ok(vec![SOT.into(), NO_TIMESTAMPS.into()])
            } else {
                Err(TranscribeError::Language(language.to_owned()))
            };
        }
        let code = if english { "en" } else { primary.as_str() };
        let token = format!("<|{code}|>");
        if self.vocab.id(&token).is_none() {
            return Err(TranscribeError::Language(language.to_owned()));
        }
        Ok(vec![
            SOT.into(),
            token,
            TRANSCRIBE.into(),
            NO_TIMESTAMPS.into(),
        ])
    }

    /// [`Engine::transcribe`] in `language` (BCP 47 or ISO 639-1, empty: English), with the
    /// decoder's scores. English-only models refuse other languages.
    pub fn transcribe_detailed(
        &self,
        samples_16k: &[f32],
        interim: bool,
        language: &str,
    ) -> Result<Transcript, TranscribeError> {
        if samples_16k.len() > MAX_SAMPLES {
            return Err(TranscribeError::TooLong(samples_16k.len()));
        }
        let prompt = self.prompt(language)?;
        let peak = samples_16k.iter().fold(0.0f32, |m, s| m.max(s.abs()));
        if peak < SILENCE_PEAK {
            // Whisper invents text for silence ("you", "Thank you."): do not ask it.
            return Ok(Transcript::default());
        }
        let frames = self.frames_for(samples_16k.len());
        let started = Instant::now();
        let mut features = self.front_end.compute(samples_16k, frames);
        let mel_us = started.elapsed().as_micros();
        let n_mels = self.front_end.n_mels();
        let view = StorageView::new(&[1, n_mels, frames], &mut features, Device::CPU)
            .map_err(|e| TranscribeError::Model(format!("{e:#}")))?;
        let secs = samples_16k.len() as f32 / SAMPLE_RATE as f32;
        // Bound a runaway (looping) decode: ~10 tokens a second of speech is fast talk; the
        // model's own limit is 448 positions, half of them for generation.
        let max_new = 24 + (secs * 10.0).ceil() as usize;
        let options = WhisperOptions {
            beam_size: if interim {
                self.options.interim_beam
            } else {
                self.options.final_beam
            }
            .max(1),
            max_length: (2 * max_new).min(448),
            return_scores: true,
            return_no_speech_prob: true,
            suppress_blank: true,
            // -1: the model's own suppress list (config.json `suppress_ids`).
            suppress_tokens: vec![-1],
            ..WhisperOptions::default()
        };
        let results = self
            .whisper
            .generate(&view, std::slice::from_ref(&prompt), &options)
            .map_err(|e| TranscribeError::Model(format!("{e:#}")))?;
        let Some(result) = results.into_iter().next() else {
            return Err(TranscribeError::Model("no result".into()));
        };
        let ids = result.sequences_ids.first().cloned().unwrap_or_default();
        let avg_logprob = result.scores.first().copied().unwrap_or(0.0);
        let text = self.vocab.decode(&ids);
        let gated = result.no_speech_prob > GATE_NO_SPEECH && avg_logprob < GATE_LOGPROB;
        debug_log(|| {
            format!(
                "decode: {:.2} s audio, {frames} frames, mel {mel_us} us, total {} us, {} tokens, no_speech {:.2}, logprob {:.2}{}",
                secs,
                started.elapsed().as_micros(),
                ids.len(),
                result.no_speech_prob,
                avg_logprob,
                if gated { " (gated)" } else { "" }
            )
        });
        Ok(Transcript {
            text: if gated { String::new() } else { text },
            no_speech_prob: result.no_speech_prob,
            avg_logprob,
            tokens: ids.iter().filter(|&&id| !self.vocab.is_special(id)).count(),
            frames,
            gated,
        })
    }

    /// Mel frames the encoder gets for `n` samples.
    pub fn frames_for(&self, n: usize) -> usize {
        match self.options.window {
            Window::Full => N_FRAMES,
            Window::Fit { pad_ms } => {
                let pad = pad_ms as usize * SAMPLE_RATE / 1000;
                n.saturating_add(pad).div_ceil(HOP).clamp(2, N_FRAMES)
            }
        }
    }
}

/// Debug lines on stderr when `HEARTH_STT_DEBUG` is set (stdout is the worker's protocol).
fn debug_log(line: impl FnOnce() -> String) {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *ON.get_or_init(|| std::env::var_os("HEARTH_STT_DEBUG").is_some()) {
        eprintln!("hearth-stt: {}", line());
    }
}
