//! `hearth-stt`: the speech-to-text worker process of a Hearth node.
//!
//! ```text
//! hearth-stt --model DIR [--threads N] [--interim-beam N]       serve the node (stdin/stdout)
//! hearth-stt --model DIR [--threads N] --bench FILE.wav... [--interim] [--repeat K]
//!            [--window full|fit] [--pad-ms MS]                  measure
//! ```
//!
//! Serving: loads the model, writes `Hello{model}` (or `Failure{id: 0}` and exits 2), then
//! answers every `Request` frame on stdin with a `Result` or a `Failure` for that id,
//! flushing after each. Exits 0 at the end of stdin, 3 on malformed input (after a
//! `Failure{id: 0}`), 1 when stdout is gone. The frames are `hearth_engine::stt_wire`'s.
//! stdout carries only frames; logs go to stderr.
//!
//! Bench: transcribes 16-bit PCM, 16 kHz, mono WAV files (no resampling; convert with
//! `sox IN -r 16000 -c 1 -b 16 OUT.wav`) and prints one JSON object per file and a summary.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use hearth_engine::stt_wire::{FrameReader, SttMessage, encode};
use hearth_stt::{Engine, EngineOptions, Window};

/// Exit codes.
const EXIT_OK: u8 = 0;
const EXIT_IO: u8 = 1;
const EXIT_NO_MODEL: u8 = 2;
const EXIT_MALFORMED: u8 = 3;

#[derive(Parser, Debug)]
#[command(
    name = "hearth-stt",
    version,
    about = "Hearth's speech-to-text worker: Whisper (CTranslate2, int8, CPU) over stdin/stdout frames"
)]
struct Args {
    /// Directory of a CTranslate2 Whisper model (model.bin, config.json, vocabulary.txt);
    /// install with deploy/models/install-whisper.sh.
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// CTranslate2 intra-op threads (0: CTranslate2's default).
    #[arg(long, value_name = "N", default_value_t = 1)]
    threads: usize,
    /// Encoder window: `full` (Whisper's 30 s, the default) or `fit` (the audio plus
    /// --pad-ms of silence: 2-3x faster on short utterances, but tiny.en then sometimes
    /// repeats a sentence; for measurements only, see `hearth_stt::Window`).
    #[arg(long, value_name = "full|fit", default_value = "full")]
    window: String,
    /// Silence appended to the audio with --window fit.
    #[arg(long, value_name = "MS", default_value_t = 8000)]
    pad_ms: u32,
    /// Beam width for interim results (1: greedy). With CTranslate2 + ruy greedy decoding is
    /// not faster than beam 5 (the encoder dominates), only less accurate.
    #[arg(long, value_name = "N", default_value_t = 1)]
    interim_beam: usize,
    /// Transcribe these WAV files (16-bit PCM, 16 kHz, mono), print JSON lines, exit.
    #[arg(long, value_name = "FILE.wav", num_args = 1..)]
    bench: Vec<PathBuf>,
    /// With --bench: decode as interim results (--interim-beam) instead of finals (beam 5).
    #[arg(long, requires = "bench")]
    interim: bool,
    /// With --bench: decode each file K times and report the median time.
    #[arg(long, value_name = "K", default_value_t = 1, requires = "bench")]
    repeat: usize,
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) if !e.use_stderr() => {
            // --help, --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let _ = e.print();
            // The node reads stdout: tell it too.
            fail_worker(&format!("bad arguments: {}", first_line(&e.to_string())));
            return ExitCode::from(EXIT_NO_MODEL);
        }
    };
    let window = match args.window.as_str() {
        "full" => Window::Full,
        "fit" => Window::Fit {
            pad_ms: args.pad_ms,
        },
        other => {
            let msg = format!("bad arguments: --window {other}: expected full or fit");
            eprintln!("hearth-stt: {msg}");
            fail_worker(&msg);
            return ExitCode::from(EXIT_NO_MODEL);
        }
    };
    let options = EngineOptions {
        threads: args.threads,
        window,
        interim_beam: args.interim_beam.max(1),
        ..EngineOptions::default()
    };
    let started = Instant::now();
    let engine = match Engine::load_with(&args.model, options) {
        Ok(e) => e,
        Err(e) => {
            let msg = format!("cannot load the model: {e}");
            eprintln!("hearth-stt: {msg}");
            if args.bench.is_empty() {
                fail_worker(&msg);
            }
            return ExitCode::from(EXIT_NO_MODEL);
        }
    };
    eprintln!(
        "hearth-stt: loaded {} from {} in {} ms",
        engine.name(),
        args.model.display(),
        started.elapsed().as_millis()
    );
    if args.bench.is_empty() {
        ExitCode::from(serve(&engine))
    } else {
        ExitCode::from(bench(&engine, &args))
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

/// Writes `Failure{id: 0, message}` to stdout (best effort: the worker is exiting).
fn fail_worker(message: &str) {
    let _ = write_frame(
        &mut std::io::stdout().lock(),
        &SttMessage::Failure {
            id: 0,
            message: message.to_owned(),
        },
    );
}

fn write_frame(out: &mut impl Write, msg: &SttMessage) -> std::io::Result<()> {
    let mut buf = Vec::new();
    encode(msg, &mut buf);
    out.write_all(&buf)?;
    out.flush()
}

/// The worker loop: frames in on stdin, frames out on stdout.
fn serve(engine: &Engine) -> u8 {
    let mut stdin = std::io::stdin().lock();
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = write_frame(
        &mut stdout,
        &SttMessage::Hello {
            model: engine.name().to_owned(),
        },
    ) {
        eprintln!("hearth-stt: cannot write to stdout: {e}");
        return EXIT_IO;
    }
    let mut reader = FrameReader::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match stdin.read(&mut buf) {
            Ok(0) => return EXIT_OK,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!("hearth-stt: cannot read stdin: {e}");
                return EXIT_IO;
            }
        };
        reader.handle_bytes(&buf[..n]);
        loop {
            let reply = match reader.poll_message() {
                Ok(None) => break,
                Ok(Some(SttMessage::Request {
                    id,
                    interim,
                    language,
                    samples,
                })) => answer(engine, id, interim, &language, &samples),
                Ok(Some(other)) => {
                    return malformed(&mut stdout, &format!("unexpected message {}", kind(&other)));
                }
                Err(e) => return malformed(&mut stdout, &e.to_string()),
            };
            if let Err(e) = write_frame(&mut stdout, &reply) {
                eprintln!("hearth-stt: cannot write to stdout: {e}");
                return EXIT_IO;
            }
        }
    }
}

fn kind(msg: &SttMessage) -> &'static str {
    match msg {
        SttMessage::Hello { .. } => "Hello",
        SttMessage::Request { .. } => "Request",
        SttMessage::Result { .. } => "Result",
        SttMessage::Failure { .. } => "Failure",
    }
}

fn malformed(out: &mut impl Write, why: &str) -> u8 {
    let message = format!("malformed input: {why}");
    eprintln!("hearth-stt: {message}");
    let _ = write_frame(out, &SttMessage::Failure { id: 0, message });
    EXIT_MALFORMED
}

/// The reply to one request.
fn answer(engine: &Engine, id: u64, interim: bool, language: &str, samples: &[f32]) -> SttMessage {
    let started = Instant::now();
    // A panic in our own code (the front end) fails the request, not the worker.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        engine.transcribe_detailed(samples, interim, language)
    }));
    let decode_us = u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX);
    match result {
        Ok(Ok(t)) => SttMessage::Result {
            id,
            decode_us,
            text: t.text,
        },
        Ok(Err(e)) => {
            eprintln!("hearth-stt: request {id}: {e}");
            SttMessage::Failure {
                id,
                message: e.to_string(),
            }
        }
        Err(_) => SttMessage::Failure {
            id,
            message: "internal error (panic) while transcribing".into(),
        },
    }
}

fn bench(engine: &Engine, args: &Args) -> u8 {
    // Warm up (first-call allocations, ruy packing caches) on a second of tone.
    let warm: Vec<f32> = (0..16_000)
        .map(|i| 0.1 * (i as f32 * 440.0 * std::f32::consts::TAU / 16_000.0).sin())
        .collect();
    let _ = engine.transcribe(&warm, args.interim);
    let mode = if args.interim { "interim" } else { "final" };
    let (mut total_audio, mut total_decode, mut failed) = (0.0f64, 0.0f64, 0usize);
    for path in &args.bench {
        let samples = match std::fs::read(path)
            .map_err(|e| e.to_string())
            .and_then(|b| hearth_stt::wav::read_wav_16k_mono(&b).map_err(|e| e.to_string()))
        {
            Ok(s) => s,
            Err(e) => {
                println!("{}", serde_json::json!({"file": path, "error": e}));
                failed += 1;
                continue;
            }
        };
        let audio_s = samples.len() as f64 / 16_000.0;
        let mut times = Vec::new();
        let mut last = None;
        for _ in 0..args.repeat.max(1) {
            let t = Instant::now();
            let r = engine.transcribe_detailed(&samples, args.interim, "");
            times.push(t.elapsed().as_secs_f64());
            last = Some(r);
        }
        times.sort_by(f64::total_cmp);
        let decode_s = times[times.len() / 2];
        match last {
            Some(Ok(t)) => {
                total_audio += audio_s;
                total_decode += decode_s;
                println!(
                    "{}",
                    serde_json::json!({
                        "file": path, "mode": mode, "audio_s": round3(audio_s),
                        "decode_s": round3(decode_s), "rtf": round3(decode_s / audio_s.max(1e-9)),
                        "frames": t.frames, "tokens": t.tokens,
                        "no_speech_prob": round3(t.no_speech_prob.into()),
                        "avg_logprob": round3(t.avg_logprob.into()), "text": t.text,
                    })
                );
            }
            Some(Err(e)) => {
                println!(
                    "{}",
                    serde_json::json!({"file": path, "error": e.to_string()})
                );
                failed += 1;
            }
            None => {}
        }
    }
    println!(
        "{}",
        serde_json::json!({"summary": {
            "model": engine.name(), "mode": mode, "files": args.bench.len(), "failed": failed,
            "audio_s": round3(total_audio), "decode_s": round3(total_decode),
            "rtf": round3(total_decode / total_audio.max(1e-9)),
        }})
    );
    if failed > 0 { EXIT_IO } else { EXIT_OK }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
