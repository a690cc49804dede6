//! Helpers shared by the integration tests: the model gate, speech synthesis, WER and a
//! worker child process speaking the wire protocol.
#![allow(dead_code)] // each test binary uses a different subset

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::Duration;

use hearth_engine::stt_wire::{FrameReader, SttMessage, encode};

/// The model directory from `HEARTH_STT_MODEL`, or `None` after printing that the test is
/// skipped. With `HEARTH_TEST_REQUIRE_STT=1` a missing model fails the test instead.
pub fn model_dir(test: &str) -> Option<PathBuf> {
    match std::env::var_os("HEARTH_STT_MODEL") {
        Some(d) if !d.is_empty() => Some(PathBuf::from(d)),
        _ => {
            skip_or_fail(
                test,
                "HEARTH_STT_MODEL is not set (install with deploy/models/install-whisper.sh DIR, then HEARTH_STT_MODEL=DIR)",
            );
            None
        }
    }
}

pub fn required() -> bool {
    std::env::var("HEARTH_TEST_REQUIRE_STT").is_ok_and(|v| v == "1")
}

pub fn skip_or_fail(test: &str, why: &str) {
    if required() {
        panic!("{test}: {why}, and HEARTH_TEST_REQUIRE_STT=1 requires this test to run");
    }
    // Straight to the stderr handle: the test harness captures `println!`/`eprintln!` of
    // passing tests, and a skip must be visible in a plain `cargo test` run.
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

/// A fresh temporary directory (removed on drop).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "hearth-stt-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        Self(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `text` spoken by espeak-ng (US English, 140 words a minute, 50 ms between words: the
/// clearest of the settings tried for tiny.en), as 16 kHz mono samples (via sox), or `None`
/// (after skipping or failing per [`skip_or_fail`]) when the tools are missing.
pub fn synth(test: &str, text: &str) -> Option<Vec<f32>> {
    let dir = TempDir::new("synth");
    let raw = dir.path().join("raw.wav");
    let out = dir.path().join("16k.wav");
    let ok = Command::new("espeak-ng")
        .args(["-v", "en-us", "-s", "140", "-g", "5"])
        .arg("-w")
        .arg(&raw)
        .arg(text)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        skip_or_fail(
            test,
            "espeak-ng is not installed (apt-get install -y espeak-ng sox)",
        );
        return None;
    }
    let ok = Command::new("sox")
        .arg(&raw)
        .args(["-r", "16000", "-c", "1", "-b", "16"])
        .arg(&out)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        skip_or_fail(
            test,
            "sox is not installed (apt-get install -y espeak-ng sox)",
        );
        return None;
    }
    let bytes = std::fs::read(&out).expect("read sox output");
    Some(hearth_stt::wav::read_wav_16k_mono(&bytes).expect("sox wrote 16 kHz mono PCM"))
}

fn words(s: &str) -> Vec<String> {
    s.to_lowercase()
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '\'' {
                c
            } else {
                ' '
            }
        })
        .collect::<String>()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// Word edit distance between `reference` and `hypothesis` (case and punctuation ignored),
/// and the reference's word count.
pub fn word_errors(reference: &str, hypothesis: &str) -> (usize, usize) {
    let r = words(reference);
    let h = words(hypothesis);
    let mut prev: Vec<usize> = (0..=h.len()).collect();
    for (i, rw) in r.iter().enumerate() {
        let mut cur = vec![i + 1; h.len() + 1];
        for (j, hw) in h.iter().enumerate() {
            let sub = prev[j] + usize::from(rw != hw);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    (prev[h.len()], r.len())
}

/// A running `hearth-stt` worker with a thread decoding its stdout into messages.
pub struct Worker {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    pub messages: Receiver<SttMessage>,
}

impl Worker {
    pub fn spawn(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_hearth-stt"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn hearth-stt");
        let stdin = child.stdin.take();
        let mut stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            let mut reader = FrameReader::new();
            let mut buf = [0u8; 65536];
            loop {
                let n = match stdout.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                reader.handle_bytes(&buf[..n]);
                while let Ok(Some(m)) = reader.poll_message() {
                    if tx.send(m).is_err() {
                        return;
                    }
                }
            }
        });
        Self {
            child,
            stdin,
            messages: rx,
        }
    }

    /// The next message, failing the test after `secs`.
    pub fn next(&self, secs: u64) -> SttMessage {
        match self.messages.recv_timeout(Duration::from_secs(secs)) {
            Ok(m) => m,
            Err(RecvTimeoutError::Timeout) => panic!("no message from the worker in {secs} s"),
            Err(RecvTimeoutError::Disconnected) => panic!("the worker closed stdout"),
        }
    }

    pub fn send(&mut self, msg: &SttMessage) {
        let mut buf = Vec::new();
        encode(msg, &mut buf);
        self.send_raw(&buf);
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(bytes).expect("write to worker");
        stdin.flush().expect("flush worker stdin");
    }

    /// Closes stdin and waits (at most `secs`) for the exit code.
    pub fn finish(mut self, secs: u64) -> Option<i32> {
        drop(self.stdin.take());
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.code();
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the worker did not exit within {secs} s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
