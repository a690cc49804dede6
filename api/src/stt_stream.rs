//! The streaming speech-to-text engine: the WebSocket contract of Jitsi's
//! opus-transcriber-proxy (and of servers that speak it).
//!
//! One connection per transcribed track, to
//! `URL?sessionId=<track>&sendBack=true&sendBackInterim=true&lang=<language>`. It starts
//! with the tag's `start` event, then each RTP packet's Opus goes out undecoded, as it
//! arrived:
//!
//! ```json
//! {"event":"start","start":{"tag":"<participant>","mediaFormat":{"encoding":"opus","sampleRate":48000,"channels":2}}}
//! {"event":"media","media":{"tag":"<participant>","chunk":0,"timestamp":0,"payload":"<base64 Opus>"}}
//! ```
//!
//! and results come back, interim words replaced by later ones until a final:
//!
//! ```json
//! {"type":"transcription-result","is_interim":true,"transcript":[{"text":"hello","confidence":0.9}],
//!  "participant":{"id":"<participant>"},"timestamp":1768341932000,"language":"en"}
//! ```
//!
//! `chunk` and `timestamp` are the packet's RTP sequence number and timestamp (48 kHz
//! ticks) counted from the track's first packet, as the proxy's decoder expects them (it
//! conceals gaps from them). `{"event":"ping","id":n}` every 15 s keeps the connection
//! alive; a connection from which nothing (no `pong`, no result) arrives for 40 s is dead.
//! Other message types are ignored. A connection that cannot be made, closes, goes silent,
//! or carries text that is not JSON is trouble: reported once per outage, then retried
//! with a backoff (0.5 s doubling to 10 s) while the track's audio is dropped (counted).
//! The engine counts as back (the transcriber hears so, the backoff starts over) only once
//! a connection has carried a valid message or stayed up for 5 s: a server that accepts
//! and then fails is retried at the backoff's pace, not in a loop.
//!
//! A `wss://` URL is reached over TLS (rustls with ring, as the rest of the node), its
//! certificate checked against the system's roots plus those of `--streaming-stt-ca`; a
//! certificate that does not verify is trouble like any failed connection, with the
//! verifier's reason.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use futures::{SinkExt, StreamExt};
use hearth_actors::EngineKind;
use hearth_actors::transcription::{
    ExternalEngine, StreamAudio, StreamEvent, StreamSpec, SttError, SttFuture, SttJob, SttStream,
};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::config::StreamingSttConfig;

/// Opus packets one connection buffers (5 s of 20 ms frames).
const AUDIO_QUEUE: usize = 250;
/// Results waiting for the transcriber.
const EVENT_QUEUE: usize = 64;
/// Largest message accepted from the engine.
const MAX_MESSAGE: usize = 64 * 1024;
const PING_INTERVAL: Duration = Duration::from_secs(15);
/// Nothing heard for this long: the connection is dead.
const SILENT_LIMIT: Duration = Duration::from_secs(40);
/// A connection up this long (or that carried a valid message) is healthy again.
const HEALTHY_AFTER: Duration = Duration::from_secs(5);
const BACKOFF_FIRST: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

pub struct StreamingEngine {
    cfg: StreamingSttConfig,
    /// For a wss:// URL: the TLS client, or why there is none (every connection attempt
    /// then fails with that reason).
    tls: Option<Result<tokio_rustls::TlsConnector, String>>,
}

impl StreamingEngine {
    pub fn new(cfg: StreamingSttConfig) -> StreamingEngine {
        let tls = cfg
            .url
            .get(..6)
            .is_some_and(|s| s.eq_ignore_ascii_case("wss://"))
            .then(|| tls_connector(&cfg.extra_roots));
        if let Some(Err(why)) = &tls {
            tracing::error!(url = %cfg.url, %why, "no TLS for the streaming engine");
        }
        StreamingEngine { cfg, tls }
    }
}

/// A TLS client that trusts the system's roots and `extra_roots` (DER).
fn tls_connector(extra_roots: &[Vec<u8>]) -> Result<tokio_rustls::TlsConnector, String> {
    use rustls::pki_types::CertificateDer;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = extra_roots
        .iter()
        .map(|der| CertificateDer::from(der.clone()));
    let verifier =
        rustls_platform_verifier::Verifier::new_with_extra_roots(roots, Arc::clone(&provider))
            .map_err(|e| format!("cannot load the trusted certificates: {e}"))?;
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS settings: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// TCP, TLS (the URL's host as the server name) and the WebSocket handshake to a wss://
/// URL.
async fn connect_tls(
    url: &str,
    connector: &tokio_rustls::TlsConnector,
    config: tokio_tungstenite::tungstenite::protocol::WebSocketConfig,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    String,
> {
    use rustls::pki_types::ServerName;
    let uri: tokio_tungstenite::tungstenite::http::Uri = url
        .parse()
        .map_err(|e| format!("the streaming engine's URL: {e}"))?;
    let host = uri
        .host()
        .ok_or("the streaming engine's URL has no host")?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("cannot connect to the streaming engine at {host}:{port}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(host.clone())
        .map_err(|e| format!("{host} is not a TLS server name: {e}"))?;
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS with the streaming engine at {host}:{port} failed: {e}"))?;
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, tls, Some(config))
        .await
        .map_err(|e| format!("cannot open a WebSocket to the streaming engine: {e}"))?;
    Ok(ws)
}

impl ExternalEngine for StreamingEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Streaming
    }

    fn supports_interim(&self) -> bool {
        true
    }

    fn concurrency(&self) -> usize {
        1
    }

    fn transcribe(&self, _job: SttJob) -> SttFuture {
        Box::pin(async {
            Err(SttError::Engine(
                "the streaming engine takes a track's audio as a stream, not utterances".into(),
            ))
        })
    }

    fn open_stream(&self, spec: StreamSpec) -> Option<SttStream> {
        let (audio_tx, audio_rx) = mpsc::channel(AUDIO_QUEUE);
        let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
        let url = stream_url(&self.cfg.url, &spec);
        let timeout = self.cfg.connect_timeout;
        tokio::spawn(run(
            url,
            self.tls.clone(),
            timeout,
            spec.participant,
            audio_rx,
            events_tx,
        ));
        Some(SttStream {
            audio: audio_tx,
            events: events_rx,
        })
    }
}

/// The engine's URL with this stream's query parameters added to the operator's.
pub fn stream_url(base: &str, spec: &StreamSpec) -> String {
    let session = format!("hearth-{:016x}", rand::random::<u64>());
    let sep = if base.contains('?') { '&' } else { '?' };
    format!(
        "{base}{sep}sessionId={session}&sendBack=true&sendBackInterim=true&lang={}",
        spec.language.primary()
    )
}

/// One `media` event.
pub fn media_event(tag: &str, audio: &StreamAudio) -> String {
    serde_json::json!({
        "event": "media",
        "media": {
            "tag": tag,
            "chunk": audio.chunk,
            "timestamp": audio.timestamp,
            "payload": base64::engine::general_purpose::STANDARD.encode(&audio.opus),
        }
    })
    .to_string()
}

/// The `start` event that opens a tag's stream (the proxy drops media of a tag it has not
/// seen start): browsers' Opus, 48 kHz, two channels.
pub fn start_event(tag: &str) -> String {
    serde_json::json!({
        "event": "start",
        "start": {
            "tag": tag,
            "mediaFormat": { "encoding": "opus", "sampleRate": 48000, "channels": 2 },
        }
    })
    .to_string()
}

fn is_pong(text: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| v.get("event").and_then(|e| e.as_str()).map(|e| e == "pong"))
        .unwrap_or(false)
}

/// A message from the engine: a result, nothing (another type), or why it is not the
/// protocol.
pub fn parse_message(text: &str) -> Result<Option<StreamEvent>, String> {
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| format!("the engine sent text that is not JSON ({e})"))?;
    let kind = value
        .get("type")
        .or_else(|| value.get("event"))
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    if kind != "transcription-result" {
        return Ok(None);
    }
    let is_interim = value
        .get("is_interim")
        .and_then(|v| v.as_bool())
        .ok_or("a transcription-result without a boolean is_interim")?;
    let text = value
        .get("transcript")
        .and_then(|t| t.as_array())
        .ok_or("a transcription-result without a transcript list")?
        .first()
        .map(|alt| {
            alt.get("text")
                .and_then(|t| t.as_str())
                .map(str::to_owned)
                .ok_or("a transcript alternative without text")
        })
        .transpose()?
        .unwrap_or_default();
    Ok(Some(StreamEvent::Result {
        text,
        is_final: !is_interim,
    }))
}

/// How a connection ended.
enum Ended {
    /// The track ended (the transcriber dropped its side): done.
    Done,
    /// Trouble: reconnect.
    Failed(String),
}

/// Whether the engine is in an outage, and the backoff before the next try.
struct Health {
    troubled: bool,
    backoff: Duration,
}

impl Health {
    /// The connection proved itself: the outage (if any) is over.
    async fn healthy(&mut self, events: &mpsc::Sender<StreamEvent>) -> bool {
        self.backoff = BACKOFF_FIRST;
        if self.troubled {
            self.troubled = false;
            return events.send(StreamEvent::Recovered).await.is_ok();
        }
        true
    }
}

async fn run(
    url: String,
    tls: Option<Result<tokio_rustls::TlsConnector, String>>,
    timeout: Duration,
    tag: String,
    mut audio: mpsc::Receiver<StreamAudio>,
    events: mpsc::Sender<StreamEvent>,
) {
    let mut health = Health {
        troubled: false,
        backoff: BACKOFF_FIRST,
    };
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    loop {
        let late = || format!("the streaming engine did not answer within {timeout:?}");
        let ended = match &tls {
            None => {
                let connect =
                    tokio_tungstenite::connect_async_with_config(&url, Some(config), false);
                match tokio::time::timeout(timeout, connect).await {
                    Ok(Ok((ws, _))) => {
                        tracing::debug!(%url, "streaming engine connected");
                        converse(ws, &tag, &mut audio, &events, &mut health).await
                    }
                    Ok(Err(e)) => {
                        Ended::Failed(format!("cannot connect to the streaming engine: {e}"))
                    }
                    Err(_) => Ended::Failed(late()),
                }
            }
            Some(Ok(connector)) => {
                match tokio::time::timeout(timeout, connect_tls(&url, connector, config)).await {
                    Ok(Ok(ws)) => {
                        tracing::debug!(%url, "streaming engine connected (TLS)");
                        converse(ws, &tag, &mut audio, &events, &mut health).await
                    }
                    Ok(Err(why)) => Ended::Failed(why),
                    Err(_) => Ended::Failed(late()),
                }
            }
            Some(Err(why)) => Ended::Failed(why.clone()),
        };
        let why = match ended {
            Ended::Done => return,
            Ended::Failed(why) => why,
        };
        metrics::counter!("hearth_transcription_engine_errors_total", "engine" => "streaming")
            .increment(1);
        if health.troubled {
            tracing::debug!(%url, error = %why, "streaming engine still unreachable");
        } else {
            health.troubled = true;
            if events.send(StreamEvent::Trouble(why)).await.is_err() {
                return;
            }
        }
        // Wait before the next try; the track's audio meanwhile is dropped.
        let until = tokio::time::Instant::now() + health.backoff;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => break,
                a = audio.recv() => match a {
                    Some(_) => metrics::counter!("hearth_transcription_stream_dropped_total").increment(1),
                    None => return,
                },
            }
        }
        health.backoff = (health.backoff * 2).min(BACKOFF_MAX);
    }
}

/// One connection: audio out, results in, until the track ends or trouble.
async fn converse<S>(
    ws: tokio_tungstenite::WebSocketStream<S>,
    tag: &str,
    audio: &mut mpsc::Receiver<StreamAudio>,
    events: &mpsc::Sender<StreamEvent>,
    health: &mut Health,
) -> Ended
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut tx, mut rx) = ws.split();
    if let Err(e) = tx.send(Message::text(start_event(tag))).await {
        return Ended::Failed(format!("sending to the streaming engine failed: {e}"));
    }
    let mut ping = tokio::time::interval(PING_INTERVAL);
    ping.tick().await;
    let mut ping_id = 0u64;
    let connected = tokio::time::Instant::now();
    let mut last_heard = connected;
    let mut proven = false;
    let healthy_at = tokio::time::sleep_until(connected + HEALTHY_AFTER);
    tokio::pin!(healthy_at);
    loop {
        tokio::select! {
            _ = &mut healthy_at, if !proven => {
                proven = true;
                if !health.healthy(events).await {
                    return Ended::Done;
                }
            }
            a = audio.recv() => {
                let Some(a) = a else {
                    let _ = tx.send(Message::Close(None)).await;
                    return Ended::Done;
                };
                if let Err(e) = tx.send(Message::text(media_event(tag, &a))).await {
                    return Ended::Failed(format!("sending to the streaming engine failed: {e}"));
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > SILENT_LIMIT {
                    return Ended::Failed(format!(
                        "nothing from the streaming engine for {} s (not even a pong)",
                        SILENT_LIMIT.as_secs()
                    ));
                }
                ping_id += 1;
                let msg = serde_json::json!({"event": "ping", "id": ping_id}).to_string();
                if let Err(e) = tx.send(Message::text(msg)).await {
                    return Ended::Failed(format!("sending to the streaming engine failed: {e}"));
                }
            }
            m = rx.next() => {
                let text = match m {
                    None => return Ended::Failed("the streaming engine closed the connection".into()),
                    Some(Err(e)) => return Ended::Failed(format!("the streaming engine's connection failed: {e}")),
                    Some(Ok(Message::Close(frame))) => {
                        let why = frame.map(|f| format!(" ({}: {})", u16::from(f.code), f.reason)).unwrap_or_default();
                        return Ended::Failed(format!("the streaming engine closed the connection{why}"));
                    }
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Binary(_))) => {
                        return Ended::Failed("the streaming engine sent a binary message (the protocol is JSON text)".into());
                    }
                    Some(Ok(_)) => {
                        last_heard = tokio::time::Instant::now();
                        continue; // ping, pong, frame
                    }
                };
                last_heard = tokio::time::Instant::now();
                if text.len() > MAX_MESSAGE {
                    return Ended::Failed(format!("the streaming engine sent a message of {} bytes", text.len()));
                }
                let event = match parse_message(text.as_str()) {
                    Ok(event) => event,
                    Err(why) => return Ended::Failed(why),
                };
                // Only a result or a pong proves the engine works (not, say, a JSON error
                // before it closes).
                if !proven && (event.is_some() || is_pong(text.as_str())) {
                    proven = true;
                    if !health.healthy(events).await {
                        return Ended::Done;
                    }
                }
                if let Some(event) = event
                    && events.send(event).await.is_err()
                {
                    return Ended::Done;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> StreamSpec {
        StreamSpec {
            participant: "PA_x".into(),
            language: hearth_actors::Language::parse("de").unwrap(),
        }
    }

    #[test]
    fn the_url_carries_the_session_and_asks_for_interims() {
        let url = stream_url("ws://stt:8080/transcribe", &spec());
        assert!(
            url.starts_with("ws://stt:8080/transcribe?sessionId=hearth-"),
            "{url}"
        );
        assert!(
            url.ends_with("&sendBack=true&sendBackInterim=true&lang=de"),
            "{url}"
        );
        let url = stream_url("ws://stt/transcribe?provider=x", &spec());
        assert!(
            url.starts_with("ws://stt/transcribe?provider=x&sessionId="),
            "{url}"
        );
    }

    #[test]
    fn media_events_carry_the_opus_in_base64() {
        let a = StreamAudio {
            opus: bytes::Bytes::from_static(&[0xfc, 0xff, 0xfe]),
            chunk: 7,
            timestamp: 6720,
        };
        let v: serde_json::Value = serde_json::from_str(&media_event("PA_x", &a)).unwrap();
        assert_eq!(v["event"], "media");
        assert_eq!(v["media"]["tag"], "PA_x");
        assert_eq!(v["media"]["chunk"], 7);
        assert_eq!(v["media"]["timestamp"], 6720);
        assert_eq!(v["media"]["payload"], "/P/+");
    }

    #[test]
    fn results_parse_and_everything_else_says_why() {
        let interim = r#"{"type":"transcription-result","is_interim":true,"transcript":[{"text":"hello","confidence":0.9}],"participant":{"id":"PA_x"},"timestamp":1,"language":"en"}"#;
        assert_eq!(
            parse_message(interim),
            Ok(Some(StreamEvent::Result {
                text: "hello".into(),
                is_final: false
            }))
        );
        let last = r#"{"event":"transcription-result","is_interim":false,"transcript":[]}"#;
        assert_eq!(
            parse_message(last),
            Ok(Some(StreamEvent::Result {
                text: String::new(),
                is_final: true
            }))
        );
        assert_eq!(parse_message(r#"{"event":"pong","id":3}"#), Ok(None));
        for bad in [
            "not json",
            r#"{"type":"transcription-result","transcript":[{"text":"x"}]}"#,
            r#"{"type":"transcription-result","is_interim":"no","transcript":[]}"#,
            r#"{"type":"transcription-result","is_interim":true}"#,
            r#"{"type":"transcription-result","is_interim":true,"transcript":[{"words":1}]}"#,
        ] {
            assert!(parse_message(bad).is_err(), "{bad}");
        }
    }
}
