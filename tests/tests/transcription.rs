//! Live transcription, end to end:
//! - the external batch engine (`hearth_api::stt::OpenAiEngine`) against a real
//!   OpenAI-compatible server (faster-whisper, `tests/transcription/openai_server.py`) on
//!   espeak-ng speech, scored by word error rate; and against servers that misbehave
//!   (closed port, hang-up, not JSON, too slow, 4xx and 5xx): retries and deadlines;
//! - a node whose embedded engine cannot run (no model, a corrupt `model.bin`): captions say
//!   why, the worker fails and is retried, nothing else notices, media keeps flowing;
//! - the `captions` grant, the `captions` signaling message, `CaptionsChanged` in the event
//!   log and `JoinResponse.captions`;
//! - a transcriber that fails is restarted for its track; the meeting and media go on;
//! - `transcription_ms` in the usage ledger, and `GET /v1/meetings/{id}/transcript` as JSON,
//!   WebVTT and SubRip (503 without a ledger).
//!
//! Some tests pin down bugs found while writing these (each says what it expects in its
//! doc): `external_engine_results_are_counted_in_the_transcription_stats`,
//! `the_audio_seconds_metric_adds_up_short_utterances`,
//! `participants_are_told_when_the_engine_fails_after_captions_are_on`,
//! `a_failed_transcribers_tap_is_stopped_while_its_track_is_muted` and
//! `a_crash_looping_transcriber_is_parked_then_restarted_after_a_minute` (which takes a
//! minute by design: the parking lasts one).
//!
//! The model (`HEARTH_STT_MODEL`, default `data/models/whisper-tiny.en`), the Python venv
//! (`tests/transcription/setup.sh`, `target/transcription-venv`), espeak-ng/sox and the
//! `hearth-stt` worker binary are needed by some tests only; those print that they skipped
//! when one is missing, unless `HEARTH_TEST_REQUIRE_STT=1` (set by `tests/run.sh`), which
//! makes them fail instead.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use hearth_actors::billing::rfc3339_ms;
use hearth_actors::billing::store::{TranscriptRow, now_ms};
use hearth_actors::billing::webhook::WebhookConfig;
use hearth_actors::events::{EventKind, Start};
use hearth_actors::registry::{ActorKind, ActorView};
use hearth_actors::transcription::{ExternalEngine, SttError, SttJob, Transcription};
use hearth_actors::{EngineKind, Grants, Language, MeetingId, Node, TrackId};
use hearth_api::config::{LedgerConfig, OpenAiSttConfig};
use hearth_api::stt::OpenAiEngine;
use hearth_api::token;
use hearth_tests::{API_KEY, API_SECRET, ClientOptions, ClientStats, Kind, TestClient, TestServer};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Generous: a debug build on a small, shared CI machine.
const T: Duration = Duration::from_secs(20);

// ----- What the tests need from the machine -------------------------------------------------

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_owned()
}

fn require_stt() -> bool {
    std::env::var("HEARTH_TEST_REQUIRE_STT").is_ok_and(|v| v == "1")
}

/// The value, or None after saying why the test is skipped (a failure with
/// `HEARTH_TEST_REQUIRE_STT=1`).
fn needed<V>(what: &str, found: Result<V, String>) -> Option<V> {
    match found {
        Ok(v) => Some(v),
        Err(why) => {
            assert!(
                !require_stt(),
                "HEARTH_TEST_REQUIRE_STT=1, but {what} is missing: {why}"
            );
            eprintln!("skipped: {what} is missing: {why}");
            None
        }
    }
}

/// The Whisper model directory: `HEARTH_STT_MODEL`, else where `tests/run.sh` installs it.
fn model_dir() -> Result<PathBuf, String> {
    let dir = std::env::var_os("HEARTH_STT_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("data/models/whisper-tiny.en"));
    if dir.join("model.bin").is_file() {
        Ok(dir)
    } else {
        Err(format!(
            "no model.bin in {} (set HEARTH_STT_MODEL; deploy/models/install-whisper.sh DIR)",
            dir.display()
        ))
    }
}

/// The Python of the venv `tests/transcription/setup.sh` makes (faster-whisper).
fn venv_python() -> Result<PathBuf, String> {
    let venv = std::env::var_os("HEARTH_TRANSCRIPTION_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/transcription-venv"));
    let python = venv.join("bin/python");
    if python.is_file() {
        Ok(python)
    } else {
        Err(format!(
            "{} does not exist (run tests/transcription/setup.sh)",
            python.display()
        ))
    }
}

/// A Python for `wer.py` (standard library only): the venv's, else `python3`.
fn any_python() -> PathBuf {
    venv_python().unwrap_or_else(|_| PathBuf::from("python3"))
}

/// espeak-ng and sox (`speak.sh`).
fn speech_tools() -> Result<(), String> {
    let found = std::process::Command::new("sh")
        .args([
            "-c",
            "command -v espeak-ng && command -v sox && command -v soxi",
        ])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        Ok(())
    } else {
        Err("espeak-ng or sox is not installed (run tests/transcription/setup.sh)".into())
    }
}

/// The `hearth-stt` worker next to the test executable's directory (target/<profile>/).
fn stt_worker() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join(format!("hearth-stt{}", std::env::consts::EXE_SUFFIX)))
        .ok_or("the test executable is not in target/<profile>/deps")?;
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{} is not built (cargo build -p hearth-stt)",
            path.display()
        ))
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "hearth-transcription-{name}-{}",
        hearth_actors::ids::random_string(8)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

// ----- Speech and scoring --------------------------------------------------------------------

/// `speak.sh --rate 16000 TEXT OUT.wav`: espeak-ng speech, 16 kHz mono 16-bit.
async fn speak(text: &str, out: &Path) {
    let script = workspace_root().join("tests/transcription/speak.sh");
    let result = tokio::process::Command::new("bash")
        .arg(&script)
        .args(["--rate", "16000", text])
        .arg(out)
        .output()
        .await
        .expect("run speak.sh");
    assert!(
        result.status.success(),
        "speak.sh failed: {}",
        String::from_utf8_lossy(&result.stderr)
    );
}

/// The samples of a 16 kHz mono 16-bit PCM WAV file as f32 in [-1, 1).
fn read_wav_16k(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).expect("read the WAV");
    assert!(
        bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WAVE",
        "{} is not a WAV file",
        path.display()
    );
    let u16_at = |i: usize| u16::from_le_bytes([bytes[i], bytes[i + 1]]);
    let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap());
    let mut pos = 12;
    let mut format = None;
    while pos + 8 <= bytes.len() {
        let id = &bytes[pos..pos + 4];
        let len = u32_at(pos + 4) as usize;
        let body = pos + 8;
        match id {
            b"fmt " => {
                format = Some((
                    u16_at(body),
                    u16_at(body + 2),
                    u32_at(body + 4),
                    u16_at(body + 14),
                ))
            }
            b"data" => {
                assert_eq!(
                    format,
                    Some((1, 1, 16_000, 16)),
                    "(PCM, mono, 16 kHz, 16-bit) expected"
                );
                let end = (body + len).min(bytes.len());
                return bytes[body..end]
                    .chunks_exact(2)
                    .map(|c| f32::from(i16::from_le_bytes([c[0], c[1]])) / 32768.0)
                    .collect();
            }
            _ => {}
        }
        pos = body + len + (len & 1);
    }
    panic!("{} has no data chunk", path.display());
}

/// Word error rate by `tests/transcription/wer.py` (its normalization).
async fn wer(python: &Path, reference: &str, hypothesis: &str) -> f64 {
    let script = workspace_root().join("tests/transcription/wer.py");
    let out = tokio::process::Command::new(python)
        .arg(&script)
        .args(["--json", reference, hypothesis])
        .output()
        .await
        .expect("run wer.py");
    assert!(
        out.status.success(),
        "wer.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("wer.py prints JSON");
    v["wer"].as_f64().expect("a wer number")
}

// ----- Engines -------------------------------------------------------------------------------

fn openai_engine(url: String, timeout: Duration) -> OpenAiEngine {
    OpenAiEngine::new(OpenAiSttConfig {
        url,
        key: None,
        model: "whisper-1".into(),
        timeout,
        concurrency: 1,
    })
}

fn final_job(samples: Vec<f32>) -> SttJob {
    SttJob {
        audio: samples.into(),
        interim: false,
        language: Language::EN,
        deadline: Instant::now() + Duration::from_secs(120),
    }
}

/// One second of a 440 Hz tone (what the engine sends does not matter to the fake servers).
fn tone() -> Vec<f32> {
    (0..16_000)
        .map(|i| (i as f32 * 440.0 * std::f32::consts::TAU / 16_000.0).sin() * 0.3)
        .collect()
}

/// `openai_server.py` (faster-whisper) on an ephemeral loopback port; killed on drop.
struct OpenAiServer {
    child: tokio::process::Child,
    addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl OpenAiServer {
    async fn start(python: &Path, model: &Path) -> OpenAiServer {
        let script = workspace_root().join("tests/transcription/openai_server.py");
        let mut child = tokio::process::Command::new(python)
            .arg(&script)
            .arg(model)
            // Temperature 0 alone: the same audio gives the same words on every run.
            .args(["--port", "0", "--threads", "1", "--no-fallback"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start openai_server.py");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = Arc::clone(&log);
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        // Loading and warming up the model: seconds, more on a loaded machine.
        let listening = tokio::time::timeout(Duration::from_secs(180), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(addr) = line.strip_prefix("listening on ") {
                    return addr.trim().parse::<SocketAddr>().ok();
                }
            }
            None
        })
        .await;
        let Ok(Some(addr)) = listening else {
            let _ = child.kill().await;
            panic!(
                "openai_server.py did not say where it listens: {}",
                log.lock().unwrap()
            );
        };
        // Keep reading stdout so the server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        OpenAiServer { child, addr, log }
    }

    fn url(&self) -> String {
        format!("http://{}/v1/audio/transcriptions", self.addr)
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// A fake transcription server: reads each whole request, counts it, waits `delay`, then
/// answers `status` with `body` (or hangs up without an answer when `status` is 0).
struct FakeEngine {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for FakeEngine {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeEngine {
    async fn start(status: u16, body: &str, delay: Duration) -> FakeEngine {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&requests);
        let body = body.to_owned();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let counter = Arc::clone(&counter);
                let body = body.clone();
                tokio::spawn(async move {
                    if !read_request(&mut stream).await {
                        return;
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                    if status == 0 {
                        return; // hang up
                    }
                    tokio::time::sleep(delay).await;
                    let reason = match status {
                        200 => "OK",
                        400 => "Bad Request",
                        503 => "Service Unavailable",
                        _ => "Whatever",
                    };
                    let head = format!(
                        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = stream.write_all(head.as_bytes()).await;
                    let _ = stream.write_all(body.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        FakeEngine {
            addr,
            requests,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/v1/audio/transcriptions", self.addr)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// Reads one HTTP/1.1 request (head and `Content-Length` body); false if it did not arrive.
async fn read_request(stream: &mut tokio::net::TcpStream) -> bool {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 64 * 1024 {
            return false;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    true
}

fn engine_error(result: Result<hearth_actors::transcription::SttOutput, SttError>) -> String {
    match result {
        Err(SttError::Engine(message)) => message,
        other => panic!("expected an engine error, got {other:?}"),
    }
}

// ----- Nodes and clients ---------------------------------------------------------------------

fn admin_token() -> String {
    let grants = Grants {
        admin: true,
        ..Grants::default()
    };
    let claims = token::claims_for(
        API_KEY,
        "",
        "ops",
        "ops",
        grants,
        SystemTime::now(),
        Duration::from_secs(3600),
    );
    token::mint(&claims, API_SECRET)
}

/// Joins with a token that grants everything but admin, and `captions` if asked.
async fn join(
    server: &TestServer,
    meeting: &str,
    name: &str,
    captions: bool,
    opts: ClientOptions,
) -> TestClient {
    let identity = format!("{name}-{}", hearth_actors::ids::random_string(6));
    let grants = Grants {
        captions,
        ..Grants::default()
    };
    let token = server.token(meeting, &identity, grants);
    TestClient::join_with_token(&server.ws_url(), &token, meeting, opts)
        .await
        .unwrap_or_else(|e| panic!("{name} joins {meeting}: {e}"))
}

fn audio_only() -> ClientOptions {
    ClientOptions {
        publish_audio: true,
        ..ClientOptions::default()
    }
}

/// The client's own audio track id, once published.
async fn audio_track(c: &TestClient) -> String {
    c.wait_until("our audio track is published", T, |s| {
        s.own_tracks.contains_key(&Kind::Audio)
    })
    .await
    .own_tracks[&Kind::Audio]
        .clone()
}

/// Polls `f` every 50 ms until it gives a value; panics with `what()` after `timeout`.
async fn poll<V>(
    timeout: Duration,
    what: impl Fn() -> String,
    mut f: impl FnMut() -> Option<V>,
) -> V {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {}",
            what()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The node's actors of `kind` named `name`.
fn actors(node: &Node, kind: ActorKind, name: &str) -> Vec<ActorView> {
    node.actor_tree()
        .into_iter()
        .filter(|a| a.kind == kind && a.name == name)
        .collect()
}

fn transcriber_name(track: &str) -> String {
    format!("transcriber {track}")
}

fn captions_on(s: &ClientStats) -> bool {
    s.captions.as_ref().is_some_and(|c| c.enabled)
}

/// How many `captions` messages (after the join response) the client got.
fn captions_messages(s: &ClientStats) -> usize {
    s.events
        .iter()
        .filter(|e| e.starts_with("captions "))
        .count()
}

/// Both receive more audio from each other: media flows.
async fn media_flows_both_ways(a: &TestClient, b: &TestClient, packets: u64) {
    b.wait_for_more(a.participant_id(), Kind::Audio, packets, T)
        .await;
    a.wait_for_more(b.participant_id(), Kind::Audio, packets, T)
        .await;
}

fn assert_no_trouble(c: &TestClient) {
    let s = c.stats();
    assert!(
        s.errors.is_empty(),
        "{}: server errors {:?}",
        c.participant_id(),
        s.errors
    );
    assert_eq!(
        s.reconnect,
        None,
        "{}: told to reconnect",
        c.participant_id()
    );
    assert!(
        s.left.is_empty(),
        "{}: someone left: {:?}",
        c.participant_id(),
        s.left
    );
    assert!(
        s.protocol_errors.is_empty(),
        "{}: {:?}",
        c.participant_id(),
        s.protocol_errors
    );
}

/// A REST answer: status, content type, body text.
async fn rest_get(server: &TestServer, path: &str) -> (u16, String, String) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let resp = reqwest::Client::new()
        .get(format!("http://{}{path}", server.server.http_addr))
        .bearer_auth(admin_token())
        .timeout(T)
        .send()
        .await
        .expect("HTTP");
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    (status, ct, resp.text().await.expect("body"))
}

async fn rest_json(server: &TestServer, path: &str) -> Value {
    let (status, ct, body) = rest_get(server, path).await;
    assert_eq!(status, 200, "GET {path}: {body}");
    assert!(ct.starts_with("application/json"), "GET {path}: {ct}");
    serde_json::from_str(&body).expect("JSON")
}

#[track_caller]
fn assert_problem(answer: &(u16, String, String), status: u16, code: &str) -> Value {
    let (got, ct, body) = answer;
    assert_eq!(*got, status, "{body}");
    assert_eq!(ct, "application/problem+json", "{body}");
    let p: Value = serde_json::from_str(body).expect("problem JSON");
    assert_eq!(p["code"], code, "{p}");
    assert_eq!(p["status"], status, "{p}");
    p
}

// ----- 1. The external engine against a real OpenAI-compatible server ------------------------

/// Sentences tiny.en transcribes well from espeak-ng's voice (measured WERs in the report).
const SENTENCES: &[&str] = &[
    "The hogs were fed chopped corn and garbage.",
    "The juice of lemons makes fine punch.",
    "The boy was there when the sun rose.",
];

/// `OpenAiEngine` speaks OpenAI's `POST /v1/audio/transcriptions` to a real third-party
/// implementation (faster-whisper behind `openai_server.py`): espeak-ng sentences come back
/// with a word error rate of at most 35 %, directly and through the node's `Transcription`
/// service; a clip the server refuses (too short: 400) is an engine error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_engine_transcribes_speech_through_a_real_openai_compatible_server() {
    let Some(model) = needed("the Whisper model", model_dir()) else {
        return;
    };
    let Some(python) = needed("the transcription venv", venv_python()) else {
        return;
    };
    let Some(()) = needed("espeak-ng and sox", speech_tools()) else {
        return;
    };
    let started = Instant::now();
    let server = OpenAiServer::start(&python, &model).await;
    eprintln!("openai_server.py ready in {:?}", started.elapsed());
    let engine = Arc::new(openai_engine(server.url(), Duration::from_secs(60)));
    assert_eq!(engine.kind(), EngineKind::OpenAi);
    assert!(!engine.supports_interim(), "a batch engine: finals only");

    let dir = temp_dir("speech");
    let mut clips = Vec::new();
    for (i, sentence) in SENTENCES.iter().enumerate() {
        let wav = dir.join(format!("s{i}.wav"));
        speak(sentence, &wav).await;
        let samples = read_wav_16k(&wav);
        assert!(
            samples.len() > 16_000,
            "{sentence:?}: over a second of speech"
        );
        clips.push((*sentence, samples));
    }

    // Directly: the engine as a gateway builds it.
    let mut wers = Vec::new();
    for (sentence, samples) in &clips[..2] {
        let out = engine
            .transcribe(final_job(samples.clone()))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "{sentence:?}: {e}\nserver log:\n{}",
                    server.log.lock().unwrap()
                )
            });
        let w = wer(&python, sentence, &out.text).await;
        eprintln!(
            "WER {w:.3} for {sentence:?} -> {:?} ({} ms of audio in {:?})",
            out.text,
            samples.len() / 16,
            out.decode
        );
        assert!(
            w <= 0.35,
            "WER {w:.3} > 0.35: {sentence:?} came back as {:?}",
            out.text
        );
        assert!(out.decode > Duration::ZERO);
        wers.push(w);
    }

    // Through the node's service, as a transcriber submits a final utterance.
    let t = Transcription::new(hearth_actors::transcription::TranscriptionConfig {
        default_engine: EngineKind::OpenAi,
        external: vec![engine.clone() as Arc<dyn ExternalEngine>],
        ..Default::default()
    });
    assert!(t.engines().contains(&EngineKind::OpenAi));
    assert_eq!(t.unavailable(EngineKind::OpenAi), None);
    assert!(!t.supports_interim(EngineKind::OpenAi));
    let (sentence, samples) = &clips[2];
    let out = t
        .submit(EngineKind::OpenAi, final_job(samples.clone()))
        .await
        .expect("the service answers")
        .unwrap_or_else(|e| panic!("{sentence:?}: {e}"));
    let w = wer(&python, sentence, &out.text).await;
    eprintln!(
        "WER {w:.3} for {sentence:?} -> {:?} (via Transcription::submit)",
        out.text
    );
    assert!(
        w <= 0.35,
        "WER {w:.3} > 0.35: {sentence:?} came back as {:?}",
        out.text
    );
    wers.push(w);
    eprintln!(
        "mean WER {:.3} over {} sentences",
        wers.iter().sum::<f64>() / wers.len() as f64,
        wers.len()
    );

    // 50 ms of audio: the server refuses it (400 audio_too_short); no retry helps.
    let message = engine_error(engine.transcribe(final_job(vec![0.0; 800])).await);
    assert!(message.contains("400"), "{message}");
    assert!(
        message.contains("short"),
        "the server's reason is kept: {message}"
    );
    server.stop().await;
}

// ----- 2. The external engine and servers that misbehave -------------------------------------

/// Nothing listens: an engine error (after one retry), well within the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_engine_reports_an_unreachable_server_within_its_timeout() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().unwrap().port()
    }; // closed again: connections are refused
    let timeout = Duration::from_secs(5);
    let url = format!("http://127.0.0.1:{port}/v1/audio/transcriptions");
    let engine = openai_engine(url.clone(), timeout);
    let started = Instant::now();
    let message = engine_error(engine.transcribe(final_job(tone())).await);
    let took = started.elapsed();
    assert!(message.contains("cannot reach"), "{message}");
    assert!(message.contains(&url), "names the URL: {message}");
    assert!(
        took < timeout,
        "a refused connection fails at once, took {took:?}"
    );
    // One retry, 200 ms after the first attempt.
    assert!(took >= Duration::from_millis(200), "retried once: {took:?}");

    // A server that reads the request and hangs up without an answer: retried once.
    let fake = FakeEngine::start(0, "", Duration::ZERO).await;
    let engine = openai_engine(fake.url(), timeout);
    let started = Instant::now();
    let message = engine_error(engine.transcribe(final_job(tone())).await);
    assert!(message.contains("cannot reach"), "{message}");
    assert_eq!(fake.requests(), 2, "one retry after a dropped connection");
    assert!(started.elapsed() < timeout, "{:?}", started.elapsed());
}

/// A 200 whose body is not JSON: an engine error that says so, not retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_engine_rejects_an_answer_that_is_not_json() {
    let fake = FakeEngine::start(200, "<html><body>hello</body></html>", Duration::ZERO).await;
    let engine = openai_engine(fake.url(), Duration::from_secs(5));
    let message = engine_error(engine.transcribe(final_job(tone())).await);
    assert!(message.contains("JSON"), "{message}");
    assert_eq!(fake.requests(), 1, "garbage is not retried");

    // JSON, but not a transcript.
    let fake = FakeEngine::start(200, r#"{"txt": "hello"}"#, Duration::ZERO).await;
    let engine = openai_engine(fake.url(), Duration::from_secs(5));
    let message = engine_error(engine.transcribe(final_job(tone())).await);
    assert!(message.contains("\"text\""), "{message}");
    assert_eq!(fake.requests(), 1);
}

/// A server slower than the timeout: an engine error after two attempts, each cut at the
/// timeout, so the call returns within about twice the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_engine_gives_up_on_a_slow_server_after_twice_its_timeout() {
    let timeout = Duration::from_secs(1);
    let fake = FakeEngine::start(200, r#"{"text": "too late"}"#, Duration::from_secs(30)).await;
    let engine = openai_engine(fake.url(), timeout);
    let started = Instant::now();
    let message = engine_error(engine.transcribe(final_job(tone())).await);
    let took = started.elapsed();
    assert!(message.contains("no answer within"), "{message}");
    assert_eq!(fake.requests(), 2, "a timeout is retried once");
    assert!(
        took >= 2 * timeout,
        "each attempt waits its timeout: {took:?}"
    );
    // 2 x timeout + the 200 ms pause between attempts, with room for a slow machine.
    assert!(
        took < 2 * timeout + Duration::from_secs(2),
        "returned after {took:?}, more than ~2 x {timeout:?}"
    );
}

/// A 400 with OpenAI's error body is refused at once with the server's reason; a 503 is
/// retried once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_engine_retries_server_errors_but_not_client_errors() {
    let body = r#"{"error": {"message": "Invalid file format.", "type": "invalid_request_error", "param": "file", "code": null}}"#;
    let fake = FakeEngine::start(400, body, Duration::ZERO).await;
    let engine = openai_engine(fake.url(), Duration::from_secs(5));
    let message = engine_error(engine.transcribe(final_job(tone())).await);
    assert!(message.contains("400"), "{message}");
    assert!(message.contains("Invalid file format."), "{message}");
    assert_eq!(fake.requests(), 1, "a 4xx is not retried");

    let body = r#"{"error": {"message": "overloaded", "type": "server_error"}}"#;
    let fake = FakeEngine::start(503, body, Duration::ZERO).await;
    let engine = openai_engine(fake.url(), Duration::from_secs(5));
    let message = engine_error(engine.transcribe(final_job(tone())).await);
    assert!(message.contains("503"), "{message}");
    assert!(message.contains("overloaded"), "{message}");
    assert_eq!(fake.requests(), 2, "a 5xx is retried once");
}

/// The node's counters count an external engine's results as they count the embedded
/// one's (`finals`, `audio_us`, `engine_errors`; the `hearth_transcription_*` metrics come
/// from the same place).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_engine_results_are_counted_in_the_transcription_stats() {
    let ok = FakeEngine::start(200, r#"{"text": " hello there "}"#, Duration::ZERO).await;
    let t = Transcription::new(hearth_actors::transcription::TranscriptionConfig {
        default_engine: EngineKind::OpenAi,
        external: vec![Arc::new(openai_engine(ok.url(), Duration::from_secs(5)))],
        ..Default::default()
    });
    let out = t
        .submit(EngineKind::OpenAi, final_job(tone()))
        .await
        .expect("the service answers")
        .expect("transcribed");
    assert_eq!(out.text, "hello there");
    let s = &t.stats;
    assert_eq!(s.jobs.load(Ordering::Relaxed), 1);
    assert_eq!(
        (
            s.finals.load(Ordering::Relaxed),
            s.audio_us.load(Ordering::Relaxed)
        ),
        (1, 1_000_000),
        "one final of one second of audio is counted: {s:?}"
    );

    let bad = FakeEngine::start(400, r#"{"error": {"message": "no"}}"#, Duration::ZERO).await;
    let t = Transcription::new(hearth_actors::transcription::TranscriptionConfig {
        default_engine: EngineKind::OpenAi,
        external: vec![Arc::new(openai_engine(bad.url(), Duration::from_secs(5)))],
        ..Default::default()
    });
    let result = t
        .submit(EngineKind::OpenAi, final_job(tone()))
        .await
        .expect("the service answers");
    engine_error(result);
    assert_eq!(
        t.stats.engine_errors.load(Ordering::Relaxed),
        1,
        "the engine error is counted: {:?}",
        t.stats
    );
}

// ----- The streaming engine (opus-transcriber-proxy's contract) ------------------------------

fn streaming_engine(url: String) -> hearth_api::stt_stream::StreamingEngine {
    hearth_api::stt_stream::StreamingEngine::new(hearth_api::config::StreamingSttConfig {
        url,
        connect_timeout: Duration::from_secs(2),
        extra_roots: Vec::new(),
    })
}

/// A wss:// engine: with its certificate trusted (as `--streaming-stt-ca` does) it works
/// as over ws://; the same server without that trust is trouble, and the reason says the
/// certificate did not verify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_engine_over_tls() {
    use futures::{SinkExt, StreamExt};
    use hearth_actors::transcription::StreamEvent;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use tokio_tungstenite::tungstenite::Message;
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()])
        .expect("a self-signed certificate");
    let cert = certified.cert.der().to_vec();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![CertificateDer::from(cert.clone())], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut ws) = tokio_tungstenite::accept_async(tls).await else {
                    return;
                };
                while let Some(Ok(Message::Text(t))) = ws.next().await {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    if v["event"] != "media" {
                        continue;
                    }
                    let reply = r#"{"type":"transcription-result","is_interim":false,"transcript":[{"text":"over tls","confidence":0.9}],"participant":{"id":"PA_speaker"},"timestamp":1}"#;
                    if ws.send(Message::text(reply)).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    // "localhost", the certificate's name: the client checks it.
    let url = format!("wss://localhost:{port}/transcribe");
    let engine = |extra_roots| {
        hearth_api::stt_stream::StreamingEngine::new(hearth_api::config::StreamingSttConfig {
            url: url.clone(),
            connect_timeout: Duration::from_secs(2),
            extra_roots,
        })
    };
    let trusted = engine(vec![cert.clone()]);
    let mut stream = trusted.open_stream(stream_spec()).unwrap();
    stream.audio.send(opus_chunk(0)).await.unwrap();
    assert_eq!(
        next_event(&mut stream.events).await,
        StreamEvent::Result {
            text: "over tls".into(),
            is_final: true
        }
    );
    let untrusted = engine(Vec::new());
    let mut stream = untrusted.open_stream(stream_spec()).unwrap();
    stream.audio.send(opus_chunk(0)).await.unwrap();
    match next_event(&mut stream.events).await {
        StreamEvent::Trouble(why) => assert!(
            why.contains("TLS") && why.to_lowercase().contains("certificate"),
            "{why}"
        ),
        other => panic!("an untrusted certificate was taken: {other:?}"),
    }
}

fn stream_spec() -> hearth_actors::transcription::StreamSpec {
    hearth_actors::transcription::StreamSpec {
        participant: "PA_speaker".into(),
        language: Language::EN,
    }
}

fn opus_chunk(chunk: u64) -> hearth_actors::transcription::StreamAudio {
    hearth_actors::transcription::StreamAudio {
        opus: bytes::Bytes::from(vec![0xfc, chunk as u8, 0x01]),
        chunk,
        timestamp: chunk * 960,
    }
}

/// Accepts WebSocket connections on loopback; each is handed to `serve` with the request's
/// path and query. Returns the URL. (The handshake callback's error type is tungstenite's.)
#[allow(clippy::result_large_err)]
async fn ws_server<F, Fut>(serve: F) -> String
where
    F: Fn(usize, String, tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>) -> Fut
        + Send
        + Sync
        + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/transcribe", listener.local_addr().unwrap());
    let serve = Arc::new(serve);
    tokio::spawn(async move {
        let mut n = 0;
        while let Ok((tcp, _)) = listener.accept().await {
            let path = Arc::new(Mutex::new(String::new()));
            let seen = Arc::clone(&path);
            let callback =
                move |req: &tokio_tungstenite::tungstenite::handshake::server::Request, resp| {
                    *seen.lock().unwrap() = req.uri().to_string();
                    Ok(resp)
                };
            let Ok(ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await else {
                continue;
            };
            let path = path.lock().unwrap().clone();
            tokio::spawn((serve)(n, path, ws));
            n += 1;
        }
    });
    url
}

async fn next_event(
    events: &mut tokio::sync::mpsc::Receiver<hearth_actors::transcription::StreamEvent>,
) -> hearth_actors::transcription::StreamEvent {
    tokio::time::timeout(T, events.recv())
        .await
        .expect("an event in time")
        .expect("the stream is open")
}

/// The streaming engine speaks the contract: one connection per track with the session,
/// interim and language parameters; each Opus packet as a `media` event (tag, chunk,
/// timestamp, base64 payload); `transcription-result`s come back as interim and final
/// results, other message types are ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_engine_speaks_the_opus_transcriber_proxy_contract() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
    let paths: Arc<Mutex<Vec<String>>> = Arc::default();
    let (seen2, paths2) = (Arc::clone(&seen), Arc::clone(&paths));
    let url = ws_server(move |_, path, mut ws| {
        let seen = Arc::clone(&seen2);
        paths2.lock().unwrap().push(path);
        async move {
            while let Some(Ok(Message::Text(t))) = ws.next().await {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                let chunk = v["media"]["chunk"].as_u64().unwrap_or(99);
                if v["event"] == "ping" {
                    continue;
                }
                seen.lock().unwrap().push(v);
                let reply = match chunk {
                    1 => r#"{"event":"pong","id":1}"#.to_owned(),
                    2 => r#"{"type":"transcription-result","is_interim":true,"transcript":[{"text":"hel","confidence":0.5}],"participant":{"id":"PA_speaker"},"timestamp":1}"#.to_owned(),
                    3 => r#"{"type":"transcription-result","is_interim":false,"transcript":[{"text":"hello","confidence":0.9}],"participant":{"id":"PA_speaker"},"timestamp":2}"#.to_owned(),
                    _ => continue,
                };
                if ws.send(Message::text(reply)).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    let engine = streaming_engine(url);
    assert_eq!(engine.kind(), EngineKind::Streaming);
    assert!(engine.supports_interim());
    let mut stream = engine
        .open_stream(stream_spec())
        .expect("a streaming engine streams");
    for chunk in 0..4 {
        stream.audio.send(opus_chunk(chunk)).await.unwrap();
    }
    use hearth_actors::transcription::StreamEvent;
    assert_eq!(
        next_event(&mut stream.events).await,
        StreamEvent::Result {
            text: "hel".into(),
            is_final: false
        }
    );
    assert_eq!(
        next_event(&mut stream.events).await,
        StreamEvent::Result {
            text: "hello".into(),
            is_final: true
        }
    );
    let mut media = seen.lock().unwrap().clone();
    assert_eq!(media.len(), 5, "a start, then four packets: {media:?}");
    let start = media.remove(0);
    assert_eq!(start["event"], "start", "{start}");
    assert_eq!(start["start"]["tag"], "PA_speaker");
    assert_eq!(start["start"]["mediaFormat"]["encoding"], "opus");
    assert_eq!(start["start"]["mediaFormat"]["sampleRate"], 48000);
    for (i, m) in media.iter().enumerate() {
        assert_eq!(m["event"], "media");
        assert_eq!(m["media"]["tag"], "PA_speaker");
        assert_eq!(m["media"]["chunk"], i as u64);
        assert_eq!(m["media"]["timestamp"], i as u64 * 960);
        let payload = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            m["media"]["payload"].as_str().unwrap(),
        )
        .unwrap();
        assert_eq!(payload, vec![0xfc, i as u8, 0x01]);
    }
    let path = paths.lock().unwrap()[0].clone();
    assert!(
        path.starts_with("/transcribe?sessionId=hearth-")
            && path.contains("&sendBack=true&sendBackInterim=true&lang=en"),
        "{path}"
    );
    // A transcription test without the batch API: said so, not silently empty.
    let err = engine.transcribe(final_job(tone())).await.unwrap_err();
    assert!(
        matches!(err, SttError::Engine(ref m) if m.contains("stream")),
        "{err}"
    );
}

/// An engine that answers with text that is not JSON is trouble (reported once, with why);
/// the stream reconnects after a backoff, says so, and results flow on the new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_engine_reports_garbage_and_reconnects() {
    use futures::{SinkExt, StreamExt};
    use hearth_actors::transcription::StreamEvent;
    use tokio_tungstenite::tungstenite::Message;
    let url = ws_server(|n, _, mut ws| async move {
        // The first connection answers its first packet with garbage; later ones properly.
        while let Some(Ok(Message::Text(_))) = ws.next().await {
            let reply = if n == 0 {
                "<html>502 Bad Gateway</html>".to_owned()
            } else {
                r#"{"type":"transcription-result","is_interim":false,"transcript":[{"text":"back again"}]}"#.to_owned()
            };
            if ws.send(Message::text(reply)).await.is_err() {
                return;
            }
        }
    })
    .await;
    let engine = streaming_engine(url);
    let mut stream = engine.open_stream(stream_spec()).unwrap();
    stream.audio.send(opus_chunk(0)).await.unwrap();
    match next_event(&mut stream.events).await {
        StreamEvent::Trouble(why) => assert!(why.contains("not JSON"), "{why}"),
        other => panic!("expected trouble, got {other:?}"),
    }
    // Audio keeps going in while it reconnects (dropped, never blocking the sender).
    let deadline = tokio::time::Instant::now() + T;
    let mut chunk = 1;
    let recovered = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no recovery in time"
        );
        let _ = stream.audio.try_send(opus_chunk(chunk));
        chunk += 1;
        match tokio::time::timeout(Duration::from_millis(50), stream.events.recv()).await {
            Ok(Some(StreamEvent::Recovered)) => break true,
            Ok(Some(other)) => panic!("expected recovery, got {other:?}"),
            Ok(None) => panic!("the stream ended"),
            Err(_) => continue,
        }
    };
    assert!(recovered);
    let result = loop {
        let _ = stream.audio.try_send(opus_chunk(chunk));
        chunk += 1;
        if let Ok(Some(e)) =
            tokio::time::timeout(Duration::from_millis(50), stream.events.recv()).await
        {
            break e;
        }
    };
    assert_eq!(
        result,
        StreamEvent::Result {
            text: "back again".into(),
            is_final: true
        }
    );
}

/// An unreachable engine: trouble within the connect timeout, said once (not once per
/// retry), audio never blocks; closing the track's side ends the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_engine_reports_an_unreachable_server_once() {
    use hearth_actors::transcription::StreamEvent;
    // A port nobody listens on.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/transcribe", closed.local_addr().unwrap());
    drop(closed);
    let engine = streaming_engine(url);
    let mut stream = engine.open_stream(stream_spec()).unwrap();
    let started = Instant::now();
    match next_event(&mut stream.events).await {
        StreamEvent::Trouble(why) => assert!(why.contains("cannot connect"), "{why}"),
        other => panic!("expected trouble, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // 3 s of retries (0.5, 1, 2 s backoff) with 20 ms audio: no second report, no block.
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut chunk = 0;
    while tokio::time::Instant::now() < until {
        let _ = stream.audio.try_send(opus_chunk(chunk));
        chunk += 1;
        if let Ok(Some(e)) =
            tokio::time::timeout(Duration::from_millis(20), stream.events.recv()).await
        {
            panic!("one report per outage, got {e:?}");
        }
    }
    drop(stream.audio);
    let ended = tokio::time::timeout(T, stream.events.recv()).await;
    assert!(
        matches!(ended, Ok(None)),
        "the stream ends with its track: {ended:?}"
    );
}

// ----- The embedded engine -------------------------------------------------------------------

/// A node with the real model and `hearth-stt`: espeak-ng sentences submitted to the node's
/// `Transcription` service are decoded by one worker process (started once, shown in the
/// actor tree) with a word error rate of at most 35 %.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_engine_transcribes_speech_in_a_worker_process() {
    let Some(model) = needed("the Whisper model", model_dir()) else {
        return;
    };
    let Some(worker) = needed("the hearth-stt worker", stt_worker()) else {
        return;
    };
    let Some(()) = needed("espeak-ng and sox", speech_tools()) else {
        return;
    };
    let python = any_python();
    let server = TestServer::start_with(|c| {
        c.stt.model = model;
        c.stt.worker = worker;
    })
    .await;
    let node = server.node();
    let t = node.transcription().clone();
    assert_eq!(t.unavailable(EngineKind::Embedded), None);
    let dir = temp_dir("embedded");
    let mut wers = Vec::new();
    for (i, sentence) in SENTENCES.iter().enumerate() {
        let wav = dir.join(format!("s{i}.wav"));
        speak(sentence, &wav).await;
        let samples = read_wav_16k(&wav);
        let started = Instant::now();
        let out = t
            .submit(EngineKind::Embedded, final_job(samples.clone()))
            .await
            .expect("the service answers")
            .unwrap_or_else(|e| panic!("{sentence:?}: {e}"));
        let w = wer(&python, sentence, &out.text).await;
        eprintln!(
            "embedded WER {w:.3} for {sentence:?} -> {:?} ({} ms of audio, decode {:?}, answered in {:?})",
            out.text,
            samples.len() / 16,
            out.decode,
            started.elapsed()
        );
        assert!(
            w <= 0.35,
            "WER {w:.3} > 0.35: {sentence:?} came back as {:?}",
            out.text
        );
        wers.push(w);
    }
    eprintln!(
        "embedded mean WER {:.3} over {} sentences",
        wers.iter().sum::<f64>() / wers.len() as f64,
        wers.len()
    );
    let s = &t.stats;
    assert_eq!(
        s.finals.load(Ordering::Relaxed),
        SENTENCES.len() as u64,
        "{s:?}"
    );
    assert_eq!(
        s.worker_starts.load(Ordering::Relaxed),
        1,
        "one worker, started once: {s:?}"
    );
    assert_eq!(s.worker_failures.load(Ordering::Relaxed), 0, "{s:?}");
    assert_eq!(s.engine_errors.load(Ordering::Relaxed), 0, "{s:?}");
    let workers: Vec<ActorView> = node
        .actor_tree()
        .into_iter()
        .filter(|a| a.kind == ActorKind::SttWorker)
        .collect();
    assert_eq!(workers.len(), 1, "{workers:?}");
    assert!(
        workers[0].name.starts_with("stt-worker-0 (pid "),
        "{workers:?}"
    );
    assert_eq!(workers[0].restarts, 0);
    server.shutdown().await;
}

/// `hearth_transcription_audio_seconds_total` adds up the audio transcribed: after three
/// utterances of 0.9 s it has grown by at least two seconds (its integer part), as
/// `TranscriptionStats::audio_us` has by 2.7 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audio_seconds_metric_adds_up_short_utterances() {
    let Some(model) = needed("the Whisper model", model_dir()) else {
        return;
    };
    let Some(worker) = needed("the hearth-stt worker", stt_worker()) else {
        return;
    };
    let Some(()) = needed("espeak-ng and sox", speech_tools()) else {
        return;
    };
    let server = TestServer::start_with(|c| {
        c.stt.model = model;
        c.stt.worker = worker;
    })
    .await;
    let t = server.node().transcription().clone();
    let metric = "hearth_transcription_audio_seconds_total";
    let before = server.metric(metric).await;
    let dir = temp_dir("short");
    let wav = dir.join("s.wav");
    speak(SENTENCES[0], &wav).await;
    let clip = read_wav_16k(&wav)[..14_400].to_vec(); // 0.9 s
    for _ in 0..3 {
        t.submit(EngineKind::Embedded, final_job(clip.clone()))
            .await
            .expect("the service answers")
            .expect("transcribed");
    }
    let audio_us = t.stats.audio_us.load(Ordering::Relaxed);
    assert_eq!(audio_us, 2_700_000);
    let grown = server.metric(metric).await - before;
    assert!(
        grown >= 2.0,
        "{metric} grew by {grown} s for {} s of audio: each utterance's fraction of a second is lost",
        audio_us as f64 / 1e6
    );
    server.shutdown().await;
}

// ----- 3. No model ---------------------------------------------------------------------------

/// The embedded engine's model is not installed: turning captions on works, and every
/// participant is told captions are on but unavailable, and how to install the model; no
/// worker is started; transcribers run without breaking anything; media flows; the node
/// keeps serving (a later joiner learns the same from its join response).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captions_without_a_model_say_how_to_install_it_and_media_flows() {
    let missing = temp_dir("no-model").join("whisper-tiny.en");
    let model = missing.clone();
    let server = TestServer::start_with(|c| c.stt.model = model).await;
    let node = server.node();
    let why = node
        .transcription()
        .unavailable(EngineKind::Embedded)
        .expect("no model: unavailable");
    assert!(why.contains("install-whisper.sh"), "{why}");

    let alice = join(&server, "nomodel", "alice", true, ClientOptions::av()).await;
    let bob = join(&server, "nomodel", "bob", false, ClientOptions::av()).await;
    let (a, b) = (
        alice.participant_id().to_owned(),
        bob.participant_id().to_owned(),
    );
    bob.wait_for_media_from(&[&a], 25, 10, T).await;
    alice.wait_for_media_from(&[&b], 25, 10, T).await;
    assert!(
        alice.stats().captions.is_some_and(|c| !c.enabled),
        "captions start off"
    );

    alice.set_captions(true, "en").await;
    for c in [&alice, &bob] {
        let s = c.wait_until("captions on", T, captions_on).await;
        let captions = s.captions.unwrap();
        assert_eq!(captions.engine, "embedded");
        assert_eq!(captions.language, "en");
        assert_eq!(captions.changed_by, a);
        assert!(
            captions.unavailable.contains("install-whisper.sh")
                && captions
                    .unavailable
                    .contains(&missing.display().to_string()),
            "says how to install the model, and where: {:?}",
            captions.unavailable
        );
    }
    // Both audio tracks get a transcriber (which cannot transcribe): nothing else changes.
    let tracks = [audio_track(&alice).await, audio_track(&bob).await];
    for track in &tracks {
        poll(
            T,
            || format!("a transcriber for {track}"),
            || {
                (actors(node, ActorKind::Transcriber, &transcriber_name(track)).len() == 1)
                    .then_some(())
            },
        )
        .await;
    }
    media_flows_both_ways(&alice, &bob, 100).await;
    bob.wait_for_more(&a, Kind::Video, 30, T).await;
    assert_eq!(
        node.transcription()
            .stats
            .worker_starts
            .load(Ordering::Relaxed),
        0,
        "no speech worker is started without a model"
    );

    // The node keeps serving: a newcomer joins, sees the captions state, gets media.
    let carol = join(
        &server,
        "nomodel",
        "carol",
        false,
        ClientOptions::receive_only(),
    )
    .await;
    let joined = carol.stats();
    let captions = joined.captions.expect("JoinResponse.captions");
    assert!(captions.enabled && captions.unavailable.contains("install-whisper.sh"));
    carol.wait_for_media_from(&[&a, &b], 25, 10, T).await;
    for track in &tracks {
        let t = actors(node, ActorKind::Transcriber, &transcriber_name(track));
        assert_eq!(t.len(), 1, "{track}: {t:?}");
        assert_eq!(t[0].restarts, 0, "the transcriber never failed: {t:?}");
    }
    for c in [&alice, &bob, &carol] {
        assert_no_trouble(c);
    }
    carol.leave().await;
    bob.leave().await;
    alice.leave().await;
    server.shutdown().await;
}

// ----- 4. A corrupt model --------------------------------------------------------------------

/// A `model.bin` that is not a model: the `hearth-stt` worker cannot load it and exits; the
/// node says why (`Transcription::unavailable`, a later joiner's captions state, the
/// supervisor's last failure), retries the worker with backoff, and nothing else fails:
/// no transcriber or meeting restarts, media flows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_model_fails_the_worker_and_nothing_else() {
    let Some(worker) = needed("the hearth-stt worker", stt_worker()) else {
        return;
    };
    let dir = temp_dir("corrupt-model");
    std::fs::write(
        dir.join("model.bin"),
        "this is not a CTranslate2 model\n".repeat(4096),
    )
    .expect("write model.bin");
    // The rest of an install, when there is one to copy: only model.bin is broken.
    if let Ok(real) = model_dir() {
        for f in ["config.json", "tokenizer.json", "vocabulary.txt"] {
            if real.join(f).is_file() {
                std::fs::copy(real.join(f), dir.join(f)).expect("copy a model file");
            }
        }
    }
    let model = dir.clone();
    let server = TestServer::start_with(|c| {
        c.stt.model = model;
        c.stt.worker = worker;
    })
    .await;
    let node = server.node();
    let t = node.transcription().clone();
    assert_eq!(
        t.unavailable(EngineKind::Embedded),
        None,
        "on disk, the model looks installed"
    );
    let failures = r#"hearth_actor_failures_total{kind="stt_worker"}"#;
    let failures_before = server.metric(failures).await;

    let alice = join(&server, "badmodel", "alice", true, ClientOptions::av()).await;
    let bob = join(&server, "badmodel", "bob", false, ClientOptions::av()).await;
    let a = alice.participant_id().to_owned();
    bob.wait_for_media_from(&[&a], 25, 10, T).await;
    let meeting_before = server
        .node()
        .meeting(&MeetingId::parse("badmodel").unwrap())
        .await
        .expect("the meeting");
    alice.set_captions(true, "en").await;
    bob.wait_until("captions on", T, captions_on).await;
    let track = audio_track(&alice).await;

    // The worker starts (captions on), cannot load the model, exits; the node says why.
    let why = poll(
        Duration::from_secs(60),
        || {
            format!(
                "the embedded engine to report the broken model; tree {:?}",
                node.actor_tree()
            )
        },
        || t.unavailable(EngineKind::Embedded),
    )
    .await;
    eprintln!("unavailable: {why}");
    assert!(why.contains("cannot load the model"), "{why}");
    assert!(
        why.contains(&dir.display().to_string()),
        "names the model: {why}"
    );
    // The supervisor retries it (backoff from 1 s): a second failure, still no panic.
    poll(
        Duration::from_secs(30),
        || format!("a retried worker to fail again: {:?}", t.stats),
        || (t.stats.worker_failures.load(Ordering::Relaxed) >= 2).then_some(()),
    )
    .await;
    assert!(t.stats.worker_starts.load(Ordering::Relaxed) >= 2);
    server
        .wait_metric(failures, T, |v| v >= failures_before + 2.0)
        .await;
    let sup = node
        .actor_tree()
        .into_iter()
        .find(|a| a.kind == ActorKind::TranscriptionSupervisor)
        .expect("the transcription supervisor");
    let last = sup.last_failure.clone().unwrap_or_default();
    assert!(
        last.contains("speech worker") && last.contains("cannot load the model"),
        "{sup:?}"
    );

    // Nothing else failed: same meeting actor, transcribers never restarted.
    let meeting = node
        .meeting(&MeetingId::parse("badmodel").unwrap())
        .await
        .expect("the meeting");
    assert_eq!(
        meeting.actor, meeting_before.actor,
        "the meeting was not restarted"
    );
    let transcriber = actors(node, ActorKind::Transcriber, &transcriber_name(&track));
    assert_eq!(transcriber.len(), 1, "{transcriber:?}");
    assert_eq!(transcriber[0].restarts, 0, "{transcriber:?}");
    media_flows_both_ways(&alice, &bob, 100).await;

    // A newcomer learns why captions do not work.
    let carol = join(
        &server,
        "badmodel",
        "carol",
        false,
        ClientOptions::receive_only(),
    )
    .await;
    let captions = carol.stats().captions.expect("JoinResponse.captions");
    assert!(captions.enabled, "{captions:?}");
    assert!(
        captions.unavailable.contains("cannot load the model"),
        "{captions:?}"
    );
    carol.wait_for_media_from(&[&a], 25, 10, T).await;
    for c in [&alice, &bob, &carol] {
        assert_no_trouble(c);
    }
    carol.leave().await;
    bob.leave().await;
    alice.leave().await;
    server.shutdown().await;
}

// ----- 5. The captions grant -----------------------------------------------------------------

/// Without the `captions` grant `setCaptions` is refused (`PERMISSION_DENIED`) and nothing
/// changes for anyone; with it, every participant gets `captions`, the node's event log
/// records `CaptionsChanged`, and a later joiner's `JoinResponse.captions` says enabled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_captions_grant_turns_captions_on() {
    let missing = temp_dir("grant").join("no-model");
    let server = TestServer::start_with(|c| c.stt.model = missing).await;
    let node = server.node();
    let meeting = MeetingId::parse("grant").unwrap();
    let events = node.events(Start::New).expect("subscribe to events");
    let mut live = events.live;

    let mallory = join(
        &server,
        "grant",
        "mallory",
        false,
        ClientOptions::receive_only(),
    )
    .await;
    let host = join(
        &server,
        "grant",
        "host",
        true,
        ClientOptions::receive_only(),
    )
    .await;
    mallory
        .wait_until("host joined", T, |s| {
            s.participants.contains(host.participant_id())
        })
        .await;
    for c in [&mallory, &host] {
        let captions = c.stats().captions.expect("JoinResponse.captions");
        assert!(!captions.enabled, "captions start off: {captions:?}");
    }

    // Refused: an error to the sender alone.
    mallory.set_captions(true, "en").await;
    let s = mallory
        .wait_until("the refusal", T, |s| !s.errors.is_empty())
        .await;
    assert_eq!(s.error_codes(), ["PERMISSION_DENIED"], "{:?}", s.errors);
    assert!(
        s.errors[0].message.contains("captions grant"),
        "{:?}",
        s.errors
    );
    assert!(!s.errors[0].fatal, "the participant stays");
    // Her socket is ordered: a broadcast would have arrived before the error.
    assert_eq!(captions_messages(&s), 0, "{:?}", s.events);
    let snapshot = node.meeting(&meeting).await.expect("the meeting");
    assert!(!snapshot.settings.transcription.enabled);

    // A malformed language is refused too, even with the grant.
    host.set_captions(true, "not a language").await;
    let s = host
        .wait_until("the refusal", T, |s| !s.errors.is_empty())
        .await;
    assert_eq!(s.error_codes(), ["MALFORMED_MESSAGE"], "{:?}", s.errors);

    // Granted: everyone is told, once.
    host.set_captions(true, "en").await;
    for c in [&mallory, &host] {
        let s = c.wait_until("captions on", T, captions_on).await;
        let captions = s.captions.as_ref().unwrap();
        assert_eq!(captions.changed_by, host.participant_id(), "{captions:?}");
        assert_eq!(captions.language, "en");
        // The meeting handles messages in order: had the refused request changed anything,
        // its `captions` would have come first.
        assert_eq!(captions_messages(&s), 1, "{:?}", s.events);
    }
    assert!(
        node.meeting(&meeting)
            .await
            .unwrap()
            .settings
            .transcription
            .enabled
    );

    // The event log: exactly one CaptionsChanged for this meeting, enabled, by the host.
    let deadline = tokio::time::Instant::now() + T;
    let changed = loop {
        let event = tokio::time::timeout_at(deadline, live.recv())
            .await
            .expect("CaptionsChanged in time")
            .expect("the event stream");
        if event.meeting == meeting
            && let EventKind::CaptionsChanged(c) = &event.kind
        {
            break c.clone();
        }
    };
    assert!(changed.enabled);
    assert_eq!(changed.engine, EngineKind::Embedded);
    assert_eq!(
        changed.changed_by.as_ref().map(|p| p.to_string()),
        Some(host.participant_id().to_owned())
    );
    let replay = node.events(Start::Oldest).expect("replay").replay;
    let changes = replay
        .iter()
        .filter(|e| e.meeting == meeting && matches!(e.kind, EventKind::CaptionsChanged(_)))
        .count();
    assert_eq!(changes, 1, "the refused request left no event");

    // A later joiner sees the captions in its join response.
    let late = join(
        &server,
        "grant",
        "late",
        false,
        ClientOptions::receive_only(),
    )
    .await;
    let s = late.stats();
    let captions = s.captions.expect("JoinResponse.captions");
    assert!(captions.enabled, "{captions:?}");
    assert_eq!(captions.changed_by, host.participant_id());
    assert!(
        !captions.unavailable.is_empty(),
        "no model here: {captions:?}"
    );

    // Off again: everyone is told.
    host.set_captions(false, "").await;
    for c in [&mallory, &host, &late] {
        c.wait_until("captions off", T, |s| {
            s.captions.as_ref().is_some_and(|c| !c.enabled) && captions_messages(s) >= 1
        })
        .await;
    }
    assert_eq!(mallory.stats().errors.len(), 1, "no other error");
    late.leave().await;
    host.leave().await;
    mallory.leave().await;
    server.shutdown().await;
}

// ----- 6. Transcriber supervision ------------------------------------------------------------

/// A transcriber that fails (drill hook) is restarted for the same track by its meeting:
/// the tree shows the new one with its restart and the reason, exactly one transcriber and
/// one track tap remain for the track, the other track's transcriber is untouched, and the
/// meeting and its media carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_transcriber_is_restarted_for_its_track() {
    let missing = temp_dir("supervision").join("no-model");
    let server = TestServer::start_with(|c| c.stt.model = missing).await;
    let node = server.node();
    let meeting = MeetingId::parse("sup").unwrap();
    let alice = join(&server, "sup", "alice", true, ClientOptions::av()).await;
    let bob = join(&server, "sup", "bob", false, audio_only()).await;
    let (a, b) = (
        alice.participant_id().to_owned(),
        bob.participant_id().to_owned(),
    );
    bob.wait_for_media_from(&[&a], 25, 10, T).await;
    alice.wait_for_packets(&b, Kind::Audio, 25, T).await;
    alice.set_captions(true, "en").await;
    let track = audio_track(&alice).await;
    let other = audio_track(&bob).await;
    let name = transcriber_name(&track);
    let first = poll(
        T,
        || format!("a transcriber for {track}"),
        || actors(node, ActorKind::Transcriber, &name).pop(),
    )
    .await;
    let bobs = poll(
        T,
        || format!("a transcriber for {other}"),
        || actors(node, ActorKind::Transcriber, &transcriber_name(&other)).pop(),
    )
    .await;
    assert_eq!(first.restarts, 0);
    let before = node.meeting(&meeting).await.expect("the meeting");
    let failures = r#"hearth_actor_failures_total{kind="transcriber"}"#;
    let restarts = r#"hearth_actor_restarts_total{kind="transcriber"}"#;
    let (failures_before, restarts_before) =
        (server.metric(failures).await, server.metric(restarts).await);

    assert!(node.inject_transcriber_fault(&meeting, &TrackId::from_string(track.clone())));
    let second = poll(
        T,
        || format!("{name} restarted: {:?}", node.actor_tree()),
        || {
            actors(node, ActorKind::Transcriber, &name)
                .into_iter()
                .find(|t| t.id != first.id && t.restarts >= 1)
        },
    )
    .await;
    assert_eq!(second.restarts, 1, "{second:?}");
    assert_eq!(second.parent, first.parent, "under the same meeting");
    assert!(
        second
            .last_failure
            .as_deref()
            .is_some_and(|f| f.contains("fault injected")),
        "{second:?}"
    );
    server
        .wait_metric(failures, T, |v| v >= failures_before + 1.0)
        .await;
    server
        .wait_metric(restarts, T, |v| v >= restarts_before + 1.0)
        .await;

    // Media keeps flowing, both ways; the old tap goes once its reader is gone.
    media_flows_both_ways(&alice, &bob, 100).await;
    poll(
        T,
        || format!("one tap of {track}: {:?}", node.actor_tree()),
        || (actors(node, ActorKind::TrackTap, &format!("tap of {track}")).len() == 1).then_some(()),
    )
    .await;
    let now = actors(node, ActorKind::Transcriber, &name);
    assert_eq!(now.len(), 1, "one transcriber for the track: {now:?}");
    assert_eq!(now[0].id, second.id);
    let bobs_now = actors(node, ActorKind::Transcriber, &transcriber_name(&other));
    assert_eq!(bobs_now.len(), 1);
    assert_eq!(
        bobs_now[0].id, bobs.id,
        "the other track's transcriber is untouched"
    );
    assert_eq!(bobs_now[0].restarts, 0);

    // The meeting is the same actor, with the same participants and captions.
    let after = node.meeting(&meeting).await.expect("the meeting");
    assert_eq!(after.actor, before.actor, "the meeting did not restart");
    assert_eq!(after.started_at, before.started_at);
    assert_eq!(after.participants.len(), 2);
    assert!(after.settings.transcription.enabled);
    for c in [&alice, &bob] {
        assert_no_trouble(c);
        assert_eq!(captions_messages(&c.stats()), 1, "no captions churn");
    }
    bob.leave().await;
    alice.leave().await;
    server.shutdown().await;
}

/// Participants already in the meeting when the embedded engine turns out to be broken are
/// told (signaling: `captions` is sent when "the transcription engine's state changed"),
/// so that their captions do not stay on with nothing coming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participants_are_told_when_the_engine_fails_after_captions_are_on() {
    let Some(worker) = needed("the hearth-stt worker", stt_worker()) else {
        return;
    };
    let dir = temp_dir("told");
    std::fs::write(dir.join("model.bin"), "not a model\n".repeat(1024)).expect("model.bin");
    let model = dir.clone();
    let server = TestServer::start_with(|c| {
        c.stt.model = model;
        c.stt.worker = worker;
    })
    .await;
    let t = server.node().transcription().clone();
    let alice = join(&server, "told", "alice", true, audio_only()).await;
    let bob = join(&server, "told", "bob", false, ClientOptions::receive_only()).await;
    alice.set_captions(true, "en").await;
    for c in [&alice, &bob] {
        c.wait_until("captions on", T, captions_on).await;
    }
    let why = poll(
        Duration::from_secs(60),
        || "the node to know the engine is broken".into(),
        || t.unavailable(EngineKind::Embedded),
    )
    .await;
    for c in [&alice, &bob] {
        let s = c
            .wait_until(
                &format!("a `captions` message saying why captions do not work ({why})"),
                T,
                |s| {
                    s.captions
                        .as_ref()
                        .is_some_and(|c| c.enabled && !c.unavailable.is_empty())
                },
            )
            .await;
        assert!(
            s.captions
                .unwrap()
                .unavailable
                .contains("cannot load the model")
        );
    }
    bob.leave().await;
    alice.leave().await;
    server.shutdown().await;
}

/// A transcriber that fails while its track is muted (no packets reach its tap): its tap is
/// stopped with it, not left behind subscribed to the track (a failed transcriber's
/// `post_stop`, which stops the tap, does not run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_transcribers_tap_is_stopped_while_its_track_is_muted() {
    let missing = temp_dir("muted").join("no-model");
    let server = TestServer::start_with(|c| c.stt.model = missing).await;
    let node = server.node();
    let meeting = MeetingId::parse("muted").unwrap();
    let alice = join(&server, "muted", "alice", true, audio_only()).await;
    let bob = join(
        &server,
        "muted",
        "bob",
        false,
        ClientOptions::receive_only(),
    )
    .await;
    let a = alice.participant_id().to_owned();
    bob.wait_for_packets(&a, Kind::Audio, 25, T).await;
    alice.set_captions(true, "en").await;
    let track = audio_track(&alice).await;
    let name = transcriber_name(&track);
    let tap = format!("tap of {track}");
    let first = poll(
        T,
        || format!("a transcriber for {track}"),
        || actors(node, ActorKind::Transcriber, &name).pop(),
    )
    .await;
    assert_eq!(actors(node, ActorKind::TrackTap, &tap).len(), 1);

    alice.mute(Kind::Audio, true).await;
    bob.wait_until("alice's audio muted", T, |s| {
        s.tracks_muted.iter().any(|(e, m)| e.track == track && *m)
    })
    .await;
    assert!(node.inject_transcriber_fault(&meeting, &TrackId::from_string(track.clone())));
    poll(
        T,
        || format!("{name} restarted"),
        || {
            actors(node, ActorKind::Transcriber, &name)
                .into_iter()
                .find(|t| t.id != first.id && t.restarts == 1)
        },
    )
    .await;
    poll(
        T,
        || format!("one {tap}: {:?}", actors(node, ActorKind::TrackTap, &tap)),
        || (actors(node, ActorKind::TrackTap, &tap).len() == 1).then_some(()),
    )
    .await;
    alice.mute(Kind::Audio, false).await;
    bob.wait_for_more(&a, Kind::Audio, 50, T).await;
    bob.leave().await;
    alice.leave().await;
    server.shutdown().await;
}

/// A transcriber that keeps failing is parked after six failures within a minute (the
/// meeting and media go on without it), and restarted once that minute is over, as
/// `MeetingState::sync_transcribers` documents ("stops being restarted (for a minute)").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_looping_transcriber_is_parked_then_restarted_after_a_minute() {
    let missing = temp_dir("crashloop").join("no-model");
    let server = TestServer::start_with(|c| c.stt.model = missing).await;
    let node = server.node();
    let meeting = MeetingId::parse("loop").unwrap();
    let alice = join(&server, "loop", "alice", true, audio_only()).await;
    let bob = join(&server, "loop", "bob", false, audio_only()).await;
    let a = alice.participant_id().to_owned();
    bob.wait_for_packets(&a, Kind::Audio, 25, T).await;
    alice.set_captions(true, "en").await;
    let track = audio_track(&alice).await;
    let name = transcriber_name(&track);
    let mut current = poll(
        T,
        || format!("a transcriber for {track}"),
        || actors(node, ActorKind::Transcriber, &name).pop(),
    )
    .await;
    let first_failure = tokio::time::Instant::now();
    for n in 1..=5u32 {
        assert!(node.inject_transcriber_fault(&meeting, &TrackId::from_string(track.clone())));
        let old = current.id;
        current = poll(
            T,
            || format!("restart {n} of {name}"),
            || {
                actors(node, ActorKind::Transcriber, &name)
                    .into_iter()
                    .find(|t| t.id != old && t.restarts == n)
            },
        )
        .await;
    }
    // The sixth failure in a minute: parked.
    assert!(node.inject_transcriber_fault(&meeting, &TrackId::from_string(track.clone())));
    poll(
        T,
        || format!("{name} parked: {:?}", node.actor_tree()),
        || {
            actors(node, ActorKind::Transcriber, &name)
                .is_empty()
                .then_some(())
        },
    )
    .await;
    media_flows_both_ways(&alice, &bob, 50).await;
    let other = audio_track(&bob).await;
    assert_eq!(
        actors(node, ActorKind::Transcriber, &transcriber_name(&other)).len(),
        1,
        "the other track is still transcribed"
    );
    // After the minute it comes back.
    let back = first_failure + Duration::from_secs(60) + T;
    loop {
        if let Some(t) = actors(node, ActorKind::Transcriber, &name).pop() {
            assert!(t.restarts >= 6, "{t:?}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < back,
            "{name} was never restarted, {:?} after its first failure",
            first_failure.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    media_flows_both_ways(&alice, &bob, 50).await;
    bob.leave().await;
    alice.leave().await;
    server.shutdown().await;
}

// ----- 7. Metering and the stored transcript -------------------------------------------------

fn ledger(name: &str) -> LedgerConfig {
    LedgerConfig {
        url: format!("sqlite://{}/ledger.db", temp_dir(name).display()),
        node_id: Some("test-node".into()),
        webhooks: WebhookConfig::default(),
    }
}

/// The total of `meter` for `participant` in `/v1/usage` (grouped by participant).
fn usage_of(report: &Value, participant: &str, meter: &str) -> i64 {
    report["totals"]
        .as_array()
        .expect("totals")
        .iter()
        .filter(|t| t["group"] == participant && t["meter"] == meter)
        .map(|t| t["quantity"].as_i64().unwrap())
        .sum()
}

/// Captions on over a published audio track for a few (measured) seconds, then off: the
/// ledger has `transcription_ms` for the publisher, bracketed by what the test measured,
/// one interval for the track, and none for a participant without audio.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transcription_time_is_metered_per_track() {
    // An engine that is configured and answers (the metering does not depend on speech).
    let engine = FakeEngine::start(200, r#"{"text": ""}"#, Duration::ZERO).await;
    let url = engine.url();
    let server = TestServer::start_with(|c| {
        c.ledger = Some(ledger("metering"));
        c.stt.engine = EngineKind::OpenAi;
        c.stt.openai = Some(OpenAiSttConfig {
            url,
            key: None,
            model: "whisper-1".into(),
            timeout: Duration::from_secs(5),
            concurrency: 2,
        });
    })
    .await;
    let node = server.node();
    let alice = join(&server, "meter", "alice", true, audio_only()).await;
    let bob = join(
        &server,
        "meter",
        "bob",
        false,
        ClientOptions::receive_only(),
    )
    .await;
    let (a, b) = (
        alice.participant_id().to_owned(),
        bob.participant_id().to_owned(),
    );
    bob.wait_for_packets(&a, Kind::Audio, 25, T).await;
    let track = audio_track(&alice).await;
    let name = transcriber_name(&track);

    let t_on = now_ms();
    alice.set_captions(true, "en").await;
    let s = alice.wait_until("captions on", T, captions_on).await;
    let captions = s.captions.unwrap();
    assert_eq!(captions.engine, "openai");
    assert_eq!(
        captions.unavailable, "",
        "the configured engine is available"
    );
    poll(
        T,
        || format!("a transcriber for {track}"),
        || (!actors(node, ActorKind::Transcriber, &name).is_empty()).then_some(()),
    )
    .await;
    let t_running = now_ms();
    // Two seconds of audio go by (100 packets), measured rather than slept.
    bob.wait_for_more(&a, Kind::Audio, 100, T).await;
    let t_off = now_ms();
    alice.set_captions(false, "").await;
    poll(
        T,
        || format!("{name} to stop"),
        || {
            actors(node, ActorKind::Transcriber, &name)
                .is_empty()
                .then_some(())
        },
    )
    .await;
    let t_stopped = now_ms();
    let billing = node.billing().expect("a ledger").clone();
    billing.tick_once().await.expect("the ledger writes");

    let report = rest_json(
        &server,
        "/v1/usage?window=hour&group_by=participant&meter=transcription_ms",
    )
    .await;
    let metered = usage_of(&report, &a, "transcription_ms");
    eprintln!(
        "transcription_ms {metered} (transcriber seen running for {} ms, captions on for {} ms)",
        t_off - t_running,
        t_stopped - t_on
    );
    assert!(metered > 0, "{report}");
    assert!(
        metered >= t_off - t_running,
        "{metered} ms < the {} ms the transcriber was seen running",
        t_off - t_running
    );
    assert!(
        metered <= t_stopped - t_on + 1000,
        "{metered} ms > the {} ms captions were on (+1 s)",
        t_stopped - t_on
    );
    assert_eq!(usage_of(&report, &b, "transcription_ms"), 0, "{report}");

    // The raw rows: alice's audio track's transcription interval.
    let (status, _, text) = rest_get(&server, "/v1/usage/events?limit=1000").await;
    assert_eq!(status, 200, "{text}");
    // NDJSON (the default format): one row a line.
    let rows: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object a line"))
        .filter(|r: &Value| r["meter"] == "transcription_ms")
        .collect();
    // One interval (two rows only if it crossed an hour: slices never do).
    assert!(!rows.is_empty() && rows.len() <= 2, "{rows:#?}");
    for r in &rows {
        assert_eq!(r["participant"], a.as_str(), "{r}");
        assert_eq!(r["subject"], track.as_str(), "{r}");
        assert_eq!(r["meeting"], "meter", "{r}");
        assert_eq!(r["apiKey"], API_KEY, "{r}");
    }
    let total: i64 = rows.iter().map(|r| r["quantity"].as_i64().unwrap()).sum();
    assert_eq!(total, metered, "{rows:#?}");
    eprintln!(
        "the fake engine got {} requests from the test client's synthetic Opus",
        engine.requests()
    );
    bob.leave().await;
    alice.leave().await;
    server.shutdown().await;
}

fn row(meeting: &str, session: i64, start: i64, name: &str, text: &str) -> TranscriptRow {
    TranscriptRow {
        segment_id: format!("SG_t{session}_{start}"),
        node: "test-node".into(),
        api_key: API_KEY.into(),
        meeting: meeting.into(),
        meeting_started_ms: session,
        participant: "PA_alice".into(),
        identity: "alice-1".into(),
        name: name.into(),
        track: "TR_audio".into(),
        language: "en".into(),
        start_ms: start,
        end_ms: start + 1500,
        text: text.into(),
        created_ms: now_ms(),
    }
}

/// Transcript rows recorded through `Billing::record_transcript` are served by
/// `GET /v1/meetings/{id}/transcript`: JSON in spoken order (whatever the recording order),
/// the newest session by default and an older one by `session`, WebVTT and SubRip with the
/// right content types and cues; another tenant's rows stay hidden; an unknown session is
/// a 404, a malformed one or format a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_transcripts_are_served_as_json_webvtt_and_srt() {
    let server = TestServer::start_with(|c| c.ledger = Some(ledger("transcript"))).await;
    let billing = server.node().billing().expect("a ledger").clone();
    let (old, new) = (1_700_000_000_000_i64, 1_700_000_600_000_i64);
    // Recorded out of spoken order, across two sessions of the meeting.
    billing.record_transcript(row("tx", new, 5_000, "Alice", "Second sentence."));
    billing.record_transcript(row("tx", new, 1_000, "Alice", "First sentence."));
    billing.record_transcript(row("tx", old, 2_000, "Alice", "From the first session."));
    billing.record_transcript(row("tx", new, 62_250, "", "Third <b> & -->"));
    let mut other = row("tx", new, 3_000, "Eve", "another tenant's words");
    other.api_key = "APIother".into();
    billing.record_transcript(other);
    billing.record_transcript(row("elsewhere", new, 0, "Alice", "another meeting"));

    let t = rest_json(&server, "/v1/meetings/tx/transcript").await;
    assert_eq!(t["meeting"], "tx");
    assert_eq!(t["session"], rfc3339_ms(new), "{t}");
    assert_eq!(
        t["sessions"],
        serde_json::json!([rfc3339_ms(new), rfc3339_ms(old)])
    );
    let texts: Vec<&str> = t["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["text"].as_str().unwrap())
        .collect();
    assert_eq!(
        texts,
        ["First sentence.", "Second sentence.", "Third <b> & -->"],
        "spoken order, this tenant and meeting only: {t}"
    );
    let first = &t["segments"][0];
    assert_eq!(first["segmentId"], format!("SG_t{new}_1000"));
    assert_eq!(first["participantId"], "PA_alice");
    assert_eq!(first["identity"], "alice-1");
    assert_eq!(first["name"], "Alice");
    assert_eq!(first["trackId"], "TR_audio");
    assert_eq!(first["startMs"], 1000);
    assert_eq!(first["endMs"], 2500);
    assert_eq!(first["language"], "en");

    // An older session, by its RFC 3339 start or its Unix milliseconds.
    for session in [rfc3339_ms(old), old.to_string()] {
        let path = format!(
            "/v1/meetings/tx/transcript?session={}",
            session.replace('+', "%2B").replace(':', "%3A")
        );
        let t = rest_json(&server, &path).await;
        assert_eq!(t["session"], rfc3339_ms(old), "{t}");
        assert_eq!(t["segments"].as_array().unwrap().len(), 1, "{t}");
        assert_eq!(t["segments"][0]["text"], "From the first session.");
    }

    let (status, ct, vtt) = rest_get(&server, "/v1/meetings/tx/transcript?format=vtt").await;
    assert_eq!(status, 200, "{vtt}");
    assert_eq!(ct, "text/vtt; charset=utf-8");
    assert_eq!(
        vtt,
        format!(
            "WEBVTT\n\n\
             SG_t{new}_1000\n00:00:01.000 --> 00:00:02.500\n<v Alice>First sentence.\n\n\
             SG_t{new}_5000\n00:00:05.000 --> 00:00:06.500\n<v Alice>Second sentence.\n\n\
             SG_t{new}_62250\n00:01:02.250 --> 00:01:03.750\n<v alice-1>Third &lt;b&gt; &amp; --&gt;\n\n"
        )
    );
    let (status, ct, srt) = rest_get(&server, "/v1/meetings/tx/transcript?format=srt").await;
    assert_eq!(status, 200, "{srt}");
    assert_eq!(ct, "application/x-subrip; charset=utf-8");
    assert_eq!(
        srt,
        "1\n00:00:01,000 --> 00:00:02,500\nAlice: First sentence.\n\n\
         2\n00:00:05,000 --> 00:00:06,500\nAlice: Second sentence.\n\n\
         3\n00:01:02,250 --> 00:01:03,750\nalice-1: Third \u{2039}b\u{203a} & --\u{203a}\n\n"
    );

    // A meeting with no transcript: empty, not an error.
    let t = rest_json(&server, "/v1/meetings/quiet/transcript").await;
    assert_eq!(t["segments"], serde_json::json!([]), "{t}");
    assert_eq!(t["sessions"], serde_json::json!([]), "{t}");
    assert_eq!(t["session"], "");

    let unknown = rest_get(
        &server,
        "/v1/meetings/tx/transcript?session=2001-01-01T00%3A00%3A00Z",
    )
    .await;
    assert_problem(&unknown, 404, "NOT_FOUND");
    let bad = rest_get(&server, "/v1/meetings/tx/transcript?session=yesterday").await;
    assert_problem(&bad, 400, "INVALID_ARGUMENT");
    let bad = rest_get(&server, "/v1/meetings/tx/transcript?format=docx").await;
    assert_problem(&bad, 400, "INVALID_ARGUMENT");
    server.shutdown().await;
}

/// Without a ledger (`--no-ledger`) there is nowhere to read transcripts from: 503 with a
/// problem that says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_ledger_the_transcript_is_unavailable() {
    let server = TestServer::start_with(|c| c.ledger = None).await;
    assert!(server.node().billing().is_none());
    let answer = rest_get(&server, "/v1/meetings/tx/transcript").await;
    let p = assert_problem(&answer, 503, "UNAVAILABLE");
    assert!(
        p["detail"].as_str().unwrap_or("").contains("--no-ledger"),
        "{p}"
    );
    server.shutdown().await;
}
