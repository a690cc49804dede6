//! Live transcription: every transcribed audio track's utterances, interim and final, to the
//! meeting's participants, the event stream, the database and webhooks.
//!
//! ```text
//! NodeSupervisor
//!  |- TranscriptionSupervisor          the embedded engine's worker pool and its queue
//!  |    `- SttWorker (one per process) `hearth-stt`: Whisper through CTranslate2
//!  `- ... MeetingActor
//!           `- Transcriber (one per transcribed audio track), fed by a track tap:
//!              RTP -> Opus decode -> 16 kHz -> VAD -> utterances (hearth_engine::audio)
//!              -> jobs to the engine -> `Transcript`s back to the meeting
//! ```
//!
//! Engines ([`EngineKind`]): the embedded one runs Whisper in worker *processes* (a crash,
//! an abort in native code or a corrupt model file takes down one worker, never the node;
//! the CPU it may use is capped by the number of workers, each single-threaded); external
//! ones ([`ExternalEngine`], e.g. an OpenAI-compatible server, implemented in the gateway,
//! which owns JSON) run as HTTP requests with a concurrency cap.
//!
//! Load shedding, never unbounded queues: an interim job runs only if a worker is idle
//! (else it is skipped: the next interim or the final supersedes it); a final job waits in a
//! bounded queue for at most `max_wait`, else it is dropped, counted
//! (`hearth_transcription_dropped_total`), reported as a `TranscriptionDropped` event, and
//! the participants get an empty final so no interim text sticks on their screens.

pub mod supervisor;
pub mod transcriber;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ractor::ActorRef;
use tokio::sync::{Semaphore, oneshot};

use crate::domain::{EngineKind, Language};

pub use hearth_engine::audio::SegmenterConfig;

/// What the node's transcription may use.
#[derive(Clone)]
pub struct TranscriptionConfig {
    /// The engine meetings use unless they name another.
    pub default_engine: EngineKind,
    /// The language meetings use unless they name another.
    pub default_language: Language,
    pub embedded: EmbeddedConfig,
    /// External engines the gateway built (OpenAI-compatible, ...).
    pub external: Vec<Arc<dyn ExternalEngine>>,
    /// Most final utterances waiting for an engine; beyond it they are dropped.
    pub max_queue: usize,
    /// A final utterance waiting longer than this for an engine is dropped: the engine has
    /// fallen behind real time.
    pub max_wait: Duration,
    /// Utterance segmentation.
    pub segmenter: SegmenterConfig,
    /// RTP packets a transcriber buffers before its tap drops the excess.
    pub queue: usize,
}

impl Default for TranscriptionConfig {
    fn default() -> Self {
        Self {
            default_engine: EngineKind::Embedded,
            default_language: Language::EN,
            embedded: EmbeddedConfig::default(),
            external: Vec::new(),
            max_queue: 32,
            max_wait: Duration::from_secs(5),
            segmenter: SegmenterConfig::default(),
            queue: 256,
        }
    }
}

impl std::fmt::Debug for TranscriptionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TranscriptionConfig")
            .field("default_engine", &self.default_engine)
            .field("default_language", &self.default_language)
            .field("embedded", &self.embedded)
            .field(
                "external",
                &self.external.iter().map(|e| e.kind()).collect::<Vec<_>>(),
            )
            .field("max_queue", &self.max_queue)
            .field("max_wait", &self.max_wait)
            .finish()
    }
}

/// The embedded engine: `hearth-stt` worker processes.
#[derive(Clone, Debug)]
pub struct EmbeddedConfig {
    /// The worker executable.
    pub worker: PathBuf,
    /// The model directory (`deploy/models/install-whisper.sh` puts it there).
    pub model: PathBuf,
    /// Worker processes, each decoding on one thread: the CPU transcription may take.
    pub workers: usize,
    /// Workers stop after this long without work (they hold the model in memory).
    pub idle_stop: Duration,
    /// Longest one decode may take before the worker is killed and restarted.
    pub decode_timeout: Duration,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        Self {
            worker: PathBuf::from("hearth-stt"),
            model: PathBuf::from("data/models/whisper-tiny.en"),
            workers: 1,
            idle_stop: Duration::from_secs(600),
            decode_timeout: Duration::from_secs(30),
        }
    }
}

impl EmbeddedConfig {
    /// Why the embedded engine cannot run here, checked on disk (None: it can try).
    pub fn check(&self) -> Option<String> {
        if !self.model.join("model.bin").is_file() {
            return Some(format!(
                "the speech model is not installed at {} (run deploy/models/install-whisper.sh {})",
                self.model.display(),
                self.model.display()
            ));
        }
        if self.worker.components().count() > 1 && !self.worker.is_file() {
            return Some(format!(
                "the speech worker {} is not built (cargo build --release -p hearth-stt)",
                self.worker.display()
            ));
        }
        None
    }
}

/// One utterance to transcribe.
#[derive(Clone, Debug)]
pub struct SttJob {
    /// 16 kHz mono.
    pub audio: Arc<[f32]>,
    /// An interim result (superseded by a later one).
    pub interim: bool,
    pub language: Language,
    /// Dropped (overloaded) if it cannot start by then.
    pub deadline: Instant,
}

/// A transcript and what it cost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SttOutput {
    pub text: String,
    pub decode: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SttError {
    #[error("transcription unavailable: {0}")]
    Unavailable(String),
    #[error("the transcription engine is behind real time")]
    Overloaded,
    #[error("the transcription engine failed: {0}")]
    Engine(String),
}

impl SttError {
    /// The `reason` of a `TranscriptionDropped` event.
    pub fn reason(&self) -> &'static str {
        match self {
            SttError::Unavailable(_) => "unavailable",
            SttError::Overloaded => "overloaded",
            SttError::Engine(_) => "engine_error",
        }
    }
}

pub type SttFuture = Pin<Box<dyn Future<Output = Result<SttOutput, SttError>> + Send>>;

/// An engine outside the node (the gateway implements the wire protocol).
pub trait ExternalEngine: Send + Sync + 'static {
    fn kind(&self) -> EngineKind;
    /// Whether interim results are worth asking for (a batch engine: no).
    fn supports_interim(&self) -> bool;
    /// How many requests may run at once.
    fn concurrency(&self) -> usize;
    /// Transcribes one utterance (timeouts and retries are the engine's).
    fn transcribe(&self, job: SttJob) -> SttFuture;
    /// A streaming engine: opens the stream of one track (its Opus packets in, results
    /// out). None for engines that take utterances ([`Self::transcribe`]).
    fn open_stream(&self, _spec: StreamSpec) -> Option<SttStream> {
        None
    }
}

/// What a streaming engine is told about the track it transcribes.
#[derive(Clone, Debug)]
pub struct StreamSpec {
    /// Who speaks (the participant id: results are attributed by it).
    pub participant: String,
    pub language: Language,
}

/// One Opus packet of the track, as it arrived (undecoded).
#[derive(Clone, Debug)]
pub struct StreamAudio {
    pub opus: bytes::Bytes,
    /// The packet's RTP sequence number counted from the track's first packet (extended:
    /// no wrap), so a receiver sees losses and reordering.
    pub chunk: u64,
    /// The packet's RTP timestamp counted from the track's first packet (48 kHz ticks).
    pub timestamp: u64,
}

/// What comes back from a streaming engine.
#[derive(Clone, Debug, PartialEq)]
pub enum StreamEvent {
    /// Words of the utterance in progress (replaced by later ones), or its final text.
    Result { text: String, is_final: bool },
    /// The engine cannot be reached or broke the protocol; the stream retries on its own
    /// (audio sent meanwhile is lost). `reason` is for people.
    Trouble(String),
    /// The engine is reachable again after trouble.
    Recovered,
}

/// A track's stream to a streaming engine; dropping it closes the stream.
pub struct SttStream {
    /// Audio in: bounded; when it is full the packet is dropped (counted by the caller).
    pub audio: tokio::sync::mpsc::Sender<StreamAudio>,
    /// Results out, until the stream ends.
    pub events: tokio::sync::mpsc::Receiver<StreamEvent>,
}

/// Counters of the node's transcription.
#[derive(Default, Debug)]
pub struct TranscriptionStats {
    pub jobs: AtomicU64,
    pub finals: AtomicU64,
    pub interims: AtomicU64,
    /// Interim jobs not run because no engine capacity was free.
    pub interims_skipped: AtomicU64,
    /// Final utterances dropped (overloaded, engine errors, unavailable).
    pub dropped: AtomicU64,
    pub engine_errors: AtomicU64,
    pub worker_starts: AtomicU64,
    pub worker_failures: AtomicU64,
    /// Microseconds of audio transcribed and spent decoding (finals and interims).
    pub audio_us: AtomicU64,
    pub decode_us: AtomicU64,
}

struct ExternalSlot {
    engine: Arc<dyn ExternalEngine>,
    permits: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
}

/// The node's transcription service, shared by every transcriber.
pub struct Transcription {
    pub config: TranscriptionConfig,
    pub stats: Arc<TranscriptionStats>,
    supervisor: Mutex<Option<ActorRef<supervisor::SupervisorMsg>>>,
    /// Why the embedded workers cannot start (set by the pool, cleared when one starts).
    embedded_failure: Mutex<Option<String>>,
    external: Vec<ExternalSlot>,
}

impl Transcription {
    pub fn new(config: TranscriptionConfig) -> Arc<Transcription> {
        let external = config
            .external
            .iter()
            .map(|engine| ExternalSlot {
                permits: Arc::new(Semaphore::new(engine.concurrency().max(1))),
                engine: Arc::clone(engine),
                waiting: Arc::new(AtomicUsize::new(0)),
            })
            .collect();
        Arc::new(Transcription {
            config,
            stats: Arc::default(),
            supervisor: Mutex::new(None),
            embedded_failure: Mutex::new(None),
            external,
        })
    }

    pub(crate) fn set_supervisor(&self, actor: Option<ActorRef<supervisor::SupervisorMsg>>) {
        *self.supervisor.lock().unwrap_or_else(|e| e.into_inner()) = actor;
    }

    pub(crate) fn set_embedded_failure(&self, failure: Option<String>) {
        *self
            .embedded_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = failure;
    }

    /// The engines this node can use (configured ones).
    pub fn engines(&self) -> Vec<EngineKind> {
        let mut out = vec![EngineKind::Embedded];
        out.extend(self.external.iter().map(|e| e.engine.kind()));
        out
    }

    /// Why `kind` cannot transcribe now (None: it can).
    pub fn unavailable(&self, kind: EngineKind) -> Option<String> {
        match kind {
            EngineKind::Embedded => self.config.embedded.check().or_else(|| {
                self.embedded_failure
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone()
            }),
            other => {
                if self.external.iter().any(|e| e.engine.kind() == other) {
                    None
                } else {
                    Some(format!(
                        "the {} engine is not configured on this node",
                        other.as_str()
                    ))
                }
            }
        }
    }

    /// Opens a stream for one track if `kind` is a configured streaming engine.
    pub fn open_stream(&self, kind: EngineKind, spec: StreamSpec) -> Option<SttStream> {
        self.external
            .iter()
            .find(|e| e.engine.kind() == kind)
            .and_then(|e| e.engine.open_stream(spec))
    }

    /// Whether asking `kind` for interim results makes sense.
    pub fn supports_interim(&self, kind: EngineKind) -> bool {
        match kind {
            EngineKind::Embedded => true,
            other => self
                .external
                .iter()
                .find(|e| e.engine.kind() == other)
                .is_some_and(|e| e.engine.supports_interim()),
        }
    }

    /// Starts the embedded workers ahead of the first utterance (captions were turned on).
    pub fn warm(&self, kind: EngineKind) {
        if kind == EngineKind::Embedded
            && let Some(sup) = self
                .supervisor
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
        {
            let _ = sup.send_message(supervisor::SupervisorMsg::Warm);
        }
    }

    /// Submits one utterance; the answer (or why there is none) arrives on the receiver.
    pub fn submit(
        &self,
        kind: EngineKind,
        job: SttJob,
    ) -> oneshot::Receiver<Result<SttOutput, SttError>> {
        let (tx, rx) = oneshot::channel();
        self.stats.jobs.fetch_add(1, Ordering::Relaxed);
        if kind == EngineKind::Embedded {
            if let Some(reason) = self.config.embedded.check() {
                let _ = tx.send(Err(SttError::Unavailable(reason)));
                return rx;
            }
            let sup = self
                .supervisor
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            match sup {
                Some(sup) => {
                    if let Err(ractor::MessagingErr::SendErr(supervisor::SupervisorMsg::Submit(
                        _,
                        tx,
                    ))) = sup.send_message(supervisor::SupervisorMsg::Submit(job, tx))
                    {
                        let _ = tx.send(Err(SttError::Unavailable(
                            "the transcription supervisor is restarting".into(),
                        )));
                    }
                }
                None => {
                    let _ = tx.send(Err(SttError::Unavailable(
                        "the transcription supervisor is not running".into(),
                    )));
                }
            }
            return rx;
        }
        let Some(slot) = self.external.iter().find(|e| e.engine.kind() == kind) else {
            let _ = tx.send(Err(SttError::Unavailable(format!(
                "the {} engine is not configured on this node",
                kind.as_str()
            ))));
            return rx;
        };
        let permit = match Arc::clone(&slot.permits).try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) if job.interim => {
                self.stats.interims_skipped.fetch_add(1, Ordering::Relaxed);
                let _ = tx.send(Err(SttError::Overloaded));
                return rx;
            }
            Err(_) => None,
        };
        if permit.is_none() && slot.waiting.load(Ordering::Relaxed) >= self.config.max_queue {
            let _ = tx.send(Err(SttError::Overloaded));
            return rx;
        }
        let engine = Arc::clone(&slot.engine);
        let permits = Arc::clone(&slot.permits);
        let waiting = Arc::clone(&slot.waiting);
        let stats = Arc::clone(&self.stats);
        tokio::spawn(async move {
            let _permit = match permit {
                Some(p) => p,
                None => {
                    waiting.fetch_add(1, Ordering::Relaxed);
                    let wait = job.deadline.saturating_duration_since(Instant::now());
                    let got = tokio::time::timeout(wait, permits.acquire_owned()).await;
                    waiting.fetch_sub(1, Ordering::Relaxed);
                    match got {
                        Ok(Ok(p)) => p,
                        _ => {
                            let _ = tx.send(Err(SttError::Overloaded));
                            return;
                        }
                    }
                }
            };
            let samples = job.audio.len();
            let interim = job.interim;
            let result = engine.transcribe(job).await;
            match &result {
                Ok(out) => stats.record(samples, interim, out),
                Err(_) => {
                    stats.engine_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            let _ = tx.send(result);
        });
        rx
    }
}

impl TranscriptionStats {
    /// Counts a finished job.
    pub fn record(&self, audio_samples: usize, interim: bool, out: &SttOutput) {
        let s = self;
        if interim {
            s.interims.fetch_add(1, Ordering::Relaxed);
        } else {
            s.finals.fetch_add(1, Ordering::Relaxed);
        }
        let audio_us = audio_samples as u64 * 1_000_000 / 16_000;
        let total_us = s.audio_us.fetch_add(audio_us, Ordering::Relaxed) + audio_us;
        s.decode_us
            .fetch_add(out.decode.as_micros() as u64, Ordering::Relaxed);
        let kind = if interim { "interim" } else { "final" };
        metrics::counter!("hearth_transcription_results_total", "kind" => kind).increment(1);
        metrics::histogram!("hearth_transcription_decode_seconds", "kind" => kind)
            .record(out.decode.as_secs_f64());
        // Whole seconds crossed by this job: an increment, not an absolute value, so the
        // counter adds up when several nodes share a process's recorder (tests).
        let whole = total_us / 1_000_000 - (total_us - audio_us) / 1_000_000;
        if whole > 0 {
            metrics::counter!("hearth_transcription_audio_seconds_total").increment(whole);
        }
    }
}

/// The speech of 16 kHz samples as a 16-bit PCM WAV file (for engines that take files).
pub use hearth_engine::audio::wav_16k_mono as wav_16k;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wav_header_describes_16k_mono_pcm() {
        let wav = wav_16k(&[0.0, 1.0, -1.0, 2.0]);
        assert_eq!(&wav[..4], b"RIFF");
        assert_eq!(u32::from_le_bytes(wav[4..8].try_into().unwrap()), 36 + 8);
        assert_eq!(u32::from_le_bytes(wav[24..28].try_into().unwrap()), 16_000);
        assert_eq!(u32::from_le_bytes(wav[40..44].try_into().unwrap()), 8);
        let samples: Vec<i16> = wav[44..]
            .chunks(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]]))
            .collect();
        assert_eq!(samples, vec![0, 32767, -32767, 32767]);
    }

    #[test]
    fn embedded_engine_without_model_says_how_to_install_it() {
        let cfg = EmbeddedConfig {
            model: PathBuf::from("/nonexistent/model"),
            ..EmbeddedConfig::default()
        };
        let why = cfg.check().expect("unavailable");
        assert!(why.contains("install-whisper.sh"), "{why}");
    }
}
