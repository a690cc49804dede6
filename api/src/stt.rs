//! External speech-to-text engines (the gateway owns their wire formats; the actors see
//! [`ExternalEngine`]).
//!
//! [`OpenAiEngine`]: any server with OpenAI's `POST /v1/audio/transcriptions` (multipart:
//! `file`, `model`, `language`, `response_format`) such as whisper.cpp's server or speaches
//! (faster-whisper). One request per finished utterance (a WAV file); no interim results.
//! A request that fails (connection refused, 5xx, timeout) is retried once; a 4xx or an
//! answer that is not the expected JSON is an engine error at once (retrying would not help).

use std::sync::Arc;
use std::time::{Duration, Instant};

use hearth_actors::EngineKind;
use hearth_actors::transcription::{
    ExternalEngine, SttError, SttFuture, SttJob, SttOutput, wav_16k,
};

use crate::config::{OpenAiSttConfig, SttConfig};

/// The node's transcription settings from the gateway's configuration.
pub fn transcription_config(c: &SttConfig) -> hearth_actors::transcription::TranscriptionConfig {
    let mut t = hearth_actors::transcription::TranscriptionConfig {
        default_engine: c.engine,
        default_language: c.language,
        max_wait: c.max_wait,
        ..Default::default()
    };
    t.embedded.model = c.model.clone();
    t.embedded.worker = c.worker.clone();
    t.embedded.workers = c.threads;
    if let Some(o) = &c.openai {
        t.external.push(Arc::new(OpenAiEngine::new(o.clone())));
    }
    if let Some(s) = &c.streaming {
        t.external
            .push(Arc::new(crate::stt_stream::StreamingEngine::new(s.clone())));
    }
    t
}

pub struct OpenAiEngine {
    cfg: OpenAiSttConfig,
    client: reqwest::Client,
}

impl OpenAiEngine {
    pub fn new(cfg: OpenAiSttConfig) -> OpenAiEngine {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        OpenAiEngine { cfg, client }
    }
}

/// Why one attempt failed, and whether another could succeed.
struct Attempt {
    message: String,
    retry: bool,
}

/// A multipart/form-data body with the WAV and the form fields.
fn multipart(boundary: &str, wav: &[u8], fields: &[(&str, &str)]) -> Vec<u8> {
    let mut body = Vec::with_capacity(wav.len() + 512);
    for (name, value) in fields {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"utterance.wav\"\r\nContent-Type: audio/wav\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(wav);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    body
}

/// The transcript in an OpenAI-style JSON answer (`{"text": "..."}`), or why it is not one.
pub fn parse_answer(body: &[u8]) -> Result<String, String> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| format!("the engine's answer is not JSON ({e})"))?;
    if let Some(err) = value.get("error") {
        let message = err
            .get("message")
            .and_then(|m| m.as_str())
            .unwrap_or("unknown error");
        return Err(format!("the engine refused: {message}"));
    }
    match value.get("text") {
        Some(serde_json::Value::String(text)) => Ok(text.trim().to_owned()),
        _ => Err("the engine's answer has no \"text\" string".into()),
    }
}

impl OpenAiEngine {
    async fn attempt(&self, body: Vec<u8>, boundary: &str) -> Result<String, Attempt> {
        let mut request = self
            .client
            .post(&self.cfg.url)
            .header(
                reqwest::header::CONTENT_TYPE,
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(body);
        if let Some(key) = &self.cfg.key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.map_err(|e| Attempt {
            message: if e.is_timeout() {
                format!("no answer within {:?}", self.cfg.timeout)
            } else {
                format!("cannot reach {}: {e}", self.cfg.url)
            },
            retry: true,
        })?;
        let status = response.status();
        // Transcripts are short: an answer above 1 MiB is not one.
        let bytes = response.bytes().await.map_err(|e| Attempt {
            message: format!("reading the answer: {e}"),
            retry: true,
        })?;
        if bytes.len() > 1 << 20 {
            return Err(Attempt {
                message: "the engine's answer is larger than 1 MiB".into(),
                retry: false,
            });
        }
        if !status.is_success() {
            let detail = parse_answer(&bytes).err().unwrap_or_default();
            return Err(Attempt {
                message: format!("HTTP {status} {detail}").trim().to_owned(),
                retry: status.is_server_error() || status.as_u16() == 429,
            });
        }
        parse_answer(&bytes).map_err(|message| Attempt {
            message,
            retry: false,
        })
    }
}

impl ExternalEngine for OpenAiEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::OpenAi
    }

    fn supports_interim(&self) -> bool {
        false
    }

    fn concurrency(&self) -> usize {
        self.cfg.concurrency
    }

    fn transcribe(&self, job: SttJob) -> SttFuture {
        let engine = OpenAiEngine {
            cfg: self.cfg.clone(),
            client: self.client.clone(),
        };
        Box::pin(async move {
            let started = Instant::now();
            let wav = wav_16k(&job.audio);
            let boundary = format!("hearth{:016x}", rand::random::<u64>());
            let language = job.language.primary().to_owned();
            let fields = [
                ("model", engine.cfg.model.as_str()),
                ("language", language.as_str()),
                ("response_format", "json"),
                ("temperature", "0"),
            ];
            let body = multipart(&boundary, &wav, &fields);
            let mut last = String::new();
            for attempt in 0..2 {
                match engine.attempt(body.clone(), &boundary).await {
                    Ok(text) => {
                        return Ok(SttOutput {
                            text,
                            decode: started.elapsed(),
                        });
                    }
                    Err(a) => {
                        last = a.message;
                        if !a.retry || attempt == 1 {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
            metrics::counter!("hearth_transcription_engine_errors_total", "engine" => "openai")
                .increment(1);
            Err(SttError::Engine(last))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse_or_say_why_not() {
        assert_eq!(
            parse_answer(br#"{"text":" Hello there. "}"#),
            Ok("Hello there.".into())
        );
        assert!(parse_answer(b"<html>").unwrap_err().contains("not JSON"));
        assert!(
            parse_answer(br#"{"txt":"x"}"#)
                .unwrap_err()
                .contains("no \"text\"")
        );
        assert!(
            parse_answer(br#"{"error":{"message":"bad file"}}"#)
                .unwrap_err()
                .contains("bad file")
        );
    }

    #[test]
    fn multipart_body_has_fields_then_the_file() {
        let body = multipart("B", b"RIFF", &[("model", "m"), ("language", "en")]);
        let text = String::from_utf8_lossy(&body);
        assert!(
            text.starts_with("--B\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nm\r\n")
        );
        assert!(text.contains(
            "filename=\"utterance.wav\"\r\nContent-Type: audio/wav\r\n\r\nRIFF\r\n--B--\r\n"
        ));
    }
}
