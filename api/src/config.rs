//! Configuration: command line, `HEARTH_*` environment variables and `hearth.toml`.
//!
//! Precedence for every setting: flag > environment > config file > built-in default.
//! The defaults serve one machine: HTTP and signaling on 127.0.0.1:7880, media on UDP 7882.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

use crate::listen::HttpLimits;
use crate::token::{KeyStore, parse_duration};
use hearth_actors::TurnConfig;
use hearth_actors::turn::TlsSettings;
use hearth_engine::turn::policy::Cidr;

/// Hearth: an actor-based real-time media engine (WebRTC SFU with signaling).
#[derive(Debug, Parser)]
#[command(
    name = "hearth",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default).
    Serve(Box<ServeArgs>),
    /// Mint an access token for a participant.
    Token(TokenArgs),
}

#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// Configuration file (TOML).
    #[arg(long, env = "HEARTH_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// HTTP, WebSocket signaling and metrics listen address [default: 127.0.0.1:7880].
    #[arg(long, env = "HEARTH_HTTP", value_name = "ADDR")]
    pub http: Option<SocketAddr>,
    /// Serve the gRPC API on its own listener [default: on the HTTP port].
    #[arg(long, env = "HEARTH_GRPC", value_name = "ADDR")]
    pub grpc: Option<SocketAddr>,
    /// A listener of its own for `/healthz`, `/readyz` and `/metrics`, served by a thread of
    /// its own, so probes answer fast while the main port is flooded (e.g. 0.0.0.0:7881).
    #[arg(long, env = "HEARTH_PROBE_HTTP", value_name = "ADDR")]
    pub probe_http: Option<SocketAddr>,
    /// UDP port for all media (ICE, DTLS, SRTP) [default: 7882; 0 picks a free port].
    #[arg(long, env = "HEARTH_MEDIA_PORT", value_name = "PORT")]
    pub media_port: Option<u16>,
    /// Address the media socket binds to [default: the advertised address (--public-ip) if it
    /// is this host's, so replies leave from it; else 0.0.0.0].
    #[arg(long, env = "HEARTH_MEDIA_BIND", value_name = "IP")]
    pub media_bind: Option<IpAddr>,
    /// Address advertised in ICE candidates [default: the HTTP address if it is a loopback
    /// or specific address, else this machine's primary address].
    #[arg(long, env = "HEARTH_PUBLIC_IP", value_name = "IP")]
    pub public_ip: Option<IpAddr>,
    /// Directory for the node's data [default: ./data].
    #[arg(long, env = "HEARTH_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Development mode: serves GET /v1/dev/token and generates an API key pair if none is
    /// configured.
    #[arg(long, env = "HEARTH_DEV")]
    pub dev: bool,
    /// The node's API key (issuer of access tokens).
    #[arg(long, env = "HEARTH_API_KEY", value_name = "KEY")]
    pub api_key: Option<String>,
    /// The node's API secret (HS256 signing key of access tokens).
    #[arg(
        long,
        env = "HEARTH_API_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub api_secret: Option<String>,
    /// Log format: pretty or json [default: pretty].
    #[arg(long, env = "HEARTH_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// How long an empty meeting lingers before it ends, e.g. 20s [default: 20s].
    #[arg(long, env = "HEARTH_EMPTY_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub empty_timeout: Option<Duration>,
    /// Maximum participants per meeting [default: 100].
    #[arg(long, env = "HEARTH_MAX_PARTICIPANTS", value_name = "N")]
    pub max_participants: Option<usize>,
    /// Media receive workers (sockets on the media port) [default: one per core].
    #[arg(long, env = "HEARTH_MEDIA_WORKERS", value_name = "N")]
    pub media_workers: Option<usize>,
    /// Connections open at once on the HTTP (and the gRPC) listener [default: 10000;
    /// never more than the open-file limit allows].
    #[arg(long, env = "HEARTH_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Connections open at once from one source address (IPv6: one /64) [default: 256].
    #[arg(long, env = "HEARTH_MAX_CONNECTIONS_PER_IP", value_name = "N")]
    pub max_connections_per_ip: Option<usize>,
    /// Time a client has to send an HTTP request's headers, e.g. 10s [default: 10s].
    #[arg(long, env = "HEARTH_HEADER_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub header_timeout: Option<Duration>,
    /// Time a new connection may stay silent before it is closed, e.g. 60s [default: 60s].
    #[arg(long, env = "HEARTH_FIRST_BYTE_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub first_byte_timeout: Option<Duration>,
    /// The usage ledger and webhook outbox: `sqlite://FILE` or `postgres://USER:PASS@HOST/DB`
    /// [default: sqlite://DATA_DIR/hearth.db].
    #[arg(long, env = "HEARTH_DATABASE_URL", value_name = "URL")]
    pub database_url: Option<String>,
    /// Do not meter usage (no ledger, no webhooks).
    #[arg(long, env = "HEARTH_NO_LEDGER", conflicts_with = "database_url")]
    pub no_ledger: bool,
    /// This node's id in the ledger and the cluster [default: generated once, kept in
    /// DATA_DIR/node-id].
    #[arg(long, env = "HEARTH_NODE_ID", value_name = "ID")]
    pub node_id: Option<String>,
    /// Join a cluster of nodes that share this Redis, e.g. `redis://10.0.0.5:6379/0`
    /// [default: no cluster, the node is on its own].
    #[arg(long, env = "HEARTH_REDIS_URL", value_name = "URL")]
    pub redis_url: Option<String>,
    /// Cluster: this node's region label (the `region-first` placement prefers it).
    #[arg(long, env = "HEARTH_REGION", value_name = "NAME")]
    pub region: Option<String>,
    /// Cluster: the base URL clients and other nodes reach this node's HTTP port at, e.g.
    /// `https://node-2.example.com` [default: http://PUBLIC_IP:HTTP_PORT].
    #[arg(long, env = "HEARTH_PUBLIC_URL", value_name = "URL")]
    pub public_url: Option<String>,
    /// Cluster: how a new meeting's node is chosen: least-loaded, fewest-participants or
    /// region-first [default: least-loaded].
    #[arg(long, env = "HEARTH_PLACEMENT", value_name = "SELECTOR")]
    pub placement: Option<String>,
    /// Webhooks: delay after a failed delivery, doubled per attempt up to an hour [default: 5s].
    #[arg(long, env = "HEARTH_WEBHOOK_RETRY_BASE", value_name = "DURATION", value_parser = parse_duration)]
    pub webhook_retry_base: Option<Duration>,
    /// Webhooks: attempts per delivery before it is marked failed [default: 12].
    #[arg(long, env = "HEARTH_WEBHOOK_MAX_ATTEMPTS", value_name = "N")]
    pub webhook_max_attempts: Option<u32>,
    /// Webhooks: consecutive failed attempts that pause an endpoint [default: 50].
    #[arg(long, env = "HEARTH_WEBHOOK_PAUSE_AFTER", value_name = "N")]
    pub webhook_pause_after: Option<u32>,
    /// Webhooks: time an endpoint has to answer [default: 10s].
    #[arg(long, env = "HEARTH_WEBHOOK_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub webhook_timeout: Option<Duration>,
    /// REST API: requests per second per API key, sustained [default: 50].
    #[arg(long, env = "HEARTH_REST_RATE", value_name = "N")]
    pub rest_rate: Option<f64>,
    /// REST API: requests per API key in a burst [default: 100].
    #[arg(long, env = "HEARTH_REST_BURST", value_name = "N")]
    pub rest_burst: Option<u32>,
    /// REST API: time a request may take [default: 10s].
    #[arg(long, env = "HEARTH_REST_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub rest_timeout: Option<Duration>,
    /// REST API: largest request body in bytes [default: 65536].
    #[arg(long, env = "HEARTH_REST_MAX_BODY", value_name = "BYTES")]
    pub rest_max_body: Option<usize>,
    /// Webhooks: the only hosts endpoints may name, comma-separated (default: any).
    #[arg(
        long,
        env = "HEARTH_WEBHOOK_ALLOWED_HOSTS",
        value_name = "HOSTS",
        value_delimiter = ','
    )]
    pub webhook_allowed_hosts: Vec<String>,
    /// Live captions: the engine meetings use unless they name one: `embedded` (Whisper on
    /// this machine's CPU) or `openai` (the server of --openai-stt-url) [default: embedded].
    #[arg(long, env = "HEARTH_TRANSCRIPTION_ENGINE", value_name = "ENGINE")]
    pub transcription_engine: Option<String>,
    /// Live captions: the spoken language meetings use unless they name one [default: en].
    #[arg(long, env = "HEARTH_TRANSCRIPTION_LANGUAGE", value_name = "LANG")]
    pub transcription_language: Option<String>,
    /// Live captions: CPU cores the embedded engine may take, one single-threaded worker
    /// process each; media never waits for them [default: 1].
    #[arg(long, env = "HEARTH_TRANSCRIPTION_THREADS", value_name = "N")]
    pub transcription_threads: Option<usize>,
    /// Live captions: longest wait of a finished utterance for an engine before it is
    /// dropped (the engine is behind real time) [default: 5s].
    #[arg(long, env = "HEARTH_TRANSCRIPTION_MAX_WAIT", value_name = "DURATION", value_parser = parse_duration)]
    pub transcription_max_wait: Option<Duration>,
    /// The embedded engine's model directory (installed by deploy/models/install-whisper.sh)
    /// [default: DATA_DIR/models/whisper-tiny.en].
    #[arg(long, env = "HEARTH_STT_MODEL", value_name = "DIR")]
    pub stt_model: Option<PathBuf>,
    /// The embedded engine's worker program [default: hearth-stt next to this binary].
    #[arg(long, env = "HEARTH_STT_WORKER", value_name = "PATH")]
    pub stt_worker: Option<PathBuf>,
    /// An OpenAI-compatible transcription endpoint (whisper.cpp's server, speaches, ...),
    /// e.g. http://gpu-box:8000/v1/audio/transcriptions: enables the `openai` engine.
    #[arg(long, env = "HEARTH_OPENAI_STT_URL", value_name = "URL")]
    pub openai_stt_url: Option<String>,
    /// Bearer key for --openai-stt-url.
    #[arg(
        long,
        env = "HEARTH_OPENAI_STT_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    pub openai_stt_key: Option<String>,
    /// The `model` field sent to --openai-stt-url [default: whisper-1].
    #[arg(long, env = "HEARTH_OPENAI_STT_MODEL", value_name = "NAME")]
    pub openai_stt_model: Option<String>,
    /// Time one request to --openai-stt-url may take; one retry after a failure [default: 10s].
    #[arg(long, env = "HEARTH_OPENAI_STT_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub openai_stt_timeout: Option<Duration>,
    /// Requests to --openai-stt-url at once [default: 4].
    #[arg(long, env = "HEARTH_OPENAI_STT_CONCURRENCY", value_name = "N")]
    pub openai_stt_concurrency: Option<usize>,
    /// A streaming transcription server speaking the WebSocket contract of Jitsi's
    /// opus-transcriber-proxy, e.g. ws://stt-box:8080/transcribe or
    /// wss://stt.example.com/transcribe: enables the `streaming` engine (each transcribed
    /// track's Opus goes there undecoded; interim and final results come back).
    #[arg(long, env = "HEARTH_STREAMING_STT_URL", value_name = "URL")]
    pub streaming_stt_url: Option<String>,
    /// PEM file of CA certificates trusted for a wss:// --streaming-stt-url, besides the
    /// system's (a private CA, or a self-signed engine).
    #[arg(long, env = "HEARTH_STREAMING_STT_CA", value_name = "PEM")]
    pub streaming_stt_ca: Option<PathBuf>,
    #[command(flatten)]
    pub turn: TurnArgs,
}

/// Live transcription settings of a node.
#[derive(Debug, Clone)]
pub struct SttConfig {
    pub engine: hearth_actors::EngineKind,
    pub language: hearth_actors::Language,
    pub threads: usize,
    pub max_wait: Duration,
    pub model: PathBuf,
    pub worker: PathBuf,
    pub openai: Option<OpenAiSttConfig>,
    pub streaming: Option<StreamingSttConfig>,
}

/// A streaming transcription server (opus-transcriber-proxy's contract).
#[derive(Clone, Debug)]
pub struct StreamingSttConfig {
    /// `ws://host:port/path` or `wss://...` (query parameters kept; the stream's are added).
    pub url: String,
    /// Longest wait for a connection (TCP, TLS and the WebSocket handshake).
    pub connect_timeout: Duration,
    /// CA certificates (DER) trusted for wss:// besides the system's.
    pub extra_roots: Vec<Vec<u8>>,
}

/// An OpenAI-compatible transcription server.
#[derive(Clone)]
pub struct OpenAiSttConfig {
    pub url: String,
    pub key: Option<String>,
    pub model: String,
    pub timeout: Duration,
    pub concurrency: usize,
}

impl std::fmt::Debug for OpenAiSttConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiSttConfig")
            .field("url", &self.url)
            .field("key", &self.key.as_ref().map(|_| "***"))
            .field("model", &self.model)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl SttConfig {
    /// Defaults under `data_dir`.
    pub fn defaults(data_dir: &Path) -> SttConfig {
        SttConfig {
            engine: hearth_actors::EngineKind::Embedded,
            language: hearth_actors::Language::EN,
            threads: 1,
            max_wait: Duration::from_secs(5),
            model: data_dir.join("models").join("whisper-tiny.en"),
            worker: default_worker(),
            openai: None,
            streaming: None,
        }
    }
}

/// `hearth-stt` next to the running binary (cargo puts both in target/<profile>/).
pub fn default_worker() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("hearth-stt")))
        .unwrap_or_else(|| PathBuf::from("hearth-stt"))
}

fn resolve_stt(
    args: &ServeArgs,
    file: &FileTranscription,
    data_dir: &Path,
) -> Result<SttConfig, ConfigError> {
    let mut c = SttConfig::defaults(data_dir);
    let duration = |flag: Option<Duration>, text: &Option<String>, name: &str| match (flag, text) {
        (Some(d), _) => Ok(Some(d)),
        (None, Some(s)) => parse_duration(s)
            .map(Some)
            .map_err(|e| ConfigError::Invalid(format!("transcription.{name}: {e}"))),
        (None, None) => Ok(None),
    };
    let engine = args.transcription_engine.clone().or(file.engine.clone());
    let language = args
        .transcription_language
        .clone()
        .or(file.language.clone());
    let threads = args.transcription_threads.or(file.threads);
    let max_wait = duration(args.transcription_max_wait, &file.max_wait, "max_wait")?;
    let model = args.stt_model.clone().or(file.model.clone());
    let worker = args.stt_worker.clone().or(file.worker.clone());
    let openai_url = args.openai_stt_url.clone().or(file.openai_url.clone());
    let openai_key = args.openai_stt_key.clone().or(file.openai_key.clone());
    let openai_model = args.openai_stt_model.clone().or(file.openai_model.clone());
    let openai_timeout = duration(
        args.openai_stt_timeout,
        &file.openai_timeout,
        "openai_timeout",
    )?;
    let openai_concurrency = args.openai_stt_concurrency.or(file.openai_concurrency);
    if let Some(e) = &engine {
        c.engine = hearth_actors::EngineKind::parse(e.trim()).ok_or_else(|| {
            ConfigError::Invalid(format!(
                "transcription_engine: `embedded`, `openai` or `streaming` (got {e:?})"
            ))
        })?;
    }
    if let Some(l) = &language {
        c.language = hearth_actors::Language::parse(l).ok_or_else(|| {
            ConfigError::Invalid(format!(
                "transcription_language: an ISO 639-1 code such as `en` (got {l:?})"
            ))
        })?;
    }
    if let Some(n) = threads {
        if !(1..=256).contains(&n) {
            return Err(ConfigError::Invalid(
                "transcription_threads: 1 to 256".into(),
            ));
        }
        c.threads = n;
    }
    if let Some(w) = max_wait {
        if w.is_zero() || w > Duration::from_secs(300) {
            return Err(ConfigError::Invalid(
                "transcription_max_wait: above 0 and at most 5m".into(),
            ));
        }
        c.max_wait = w;
    }
    if let Some(m) = model {
        c.model = m;
    }
    if let Some(w) = worker {
        c.worker = w;
    }
    if let Some(url) = &openai_url {
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| ConfigError::Invalid(format!("openai_stt_url: not a URL ({e})")))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
            return Err(ConfigError::Invalid(
                "openai_stt_url: an http:// or https:// URL".into(),
            ));
        }
        let timeout = openai_timeout.unwrap_or(Duration::from_secs(10));
        let concurrency = openai_concurrency.unwrap_or(4);
        if timeout.is_zero() || !(1..=1024).contains(&concurrency) {
            return Err(ConfigError::Invalid(
                "openai_stt_timeout above 0, openai_stt_concurrency 1 to 1024".into(),
            ));
        }
        c.openai = Some(OpenAiSttConfig {
            url: url.clone(),
            key: openai_key.filter(|k| !k.is_empty()),
            model: openai_model.unwrap_or_else(|| "whisper-1".into()),
            timeout,
            concurrency,
        });
    } else if c.engine == hearth_actors::EngineKind::OpenAi {
        return Err(ConfigError::Invalid(
            "transcription_engine openai needs --openai-stt-url".into(),
        ));
    }
    if let Some(url) = args
        .streaming_stt_url
        .clone()
        .or(file.streaming_url.clone())
    {
        let parsed = reqwest::Url::parse(&url)
            .map_err(|e| ConfigError::Invalid(format!("streaming_stt_url: not a URL ({e})")))?;
        if !matches!(parsed.scheme(), "ws" | "wss") || parsed.host().is_none() {
            return Err(ConfigError::Invalid(
                "streaming_stt_url: a ws:// or wss:// URL, e.g. ws://stt-box:8080/transcribe"
                    .into(),
            ));
        }
        let extra_roots = match args.streaming_stt_ca.clone().or(file.streaming_ca.clone()) {
            Some(path) => read_ca_file(&path)?,
            None => Vec::new(),
        };
        c.streaming = Some(StreamingSttConfig {
            url,
            connect_timeout: Duration::from_secs(5),
            extra_roots,
        });
    } else if c.engine == hearth_actors::EngineKind::Streaming {
        return Err(ConfigError::Invalid(
            "transcription_engine streaming needs --streaming-stt-url".into(),
        ));
    }
    Ok(c)
}

/// Where usage is metered and webhooks come from.
#[derive(Debug, Clone)]
pub struct LedgerConfig {
    /// `sqlite://...` or `postgres://...`.
    pub url: String,
    /// None: kept in the data dir.
    pub node_id: Option<String>,
    pub webhooks: hearth_actors::billing::webhook::WebhookConfig,
}

/// The embedded TURN server's flags (coturn's names where there is one).
#[derive(Debug, Clone, Default, Args)]
pub struct TurnArgs {
    /// TURN over UDP and TCP on this port [default: 3478; 0 turns TURN off].
    #[arg(long, env = "HEARTH_TURN_PORT", value_name = "PORT")]
    pub turn_port: Option<u16>,
    /// Address the TURN listeners and relayed sockets bind [default: the advertised address
    /// if it is this host's, else 0.0.0.0].
    #[arg(long, env = "HEARTH_TURN_BIND", value_name = "IP")]
    pub turn_bind: Option<IpAddr>,
    /// Realm of TURN's long-term credentials [default: hearth].
    #[arg(long, env = "HEARTH_TURN_REALM", value_name = "REALM")]
    pub turn_realm: Option<String>,
    /// Shared secret of ephemeral TURN credentials (coturn's static-auth-secret)
    /// [default: generated at start, handed out to the node's own participants].
    #[arg(
        long,
        env = "HEARTH_TURN_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub turn_secret: Option<String>,
    /// A static TURN user, `user:password` (repeatable).
    #[arg(long = "turn-user", value_name = "USER:PASS")]
    pub turn_users: Vec<String>,
    /// Ports of relayed addresses, `MIN-MAX` [default: 49152-65535].
    #[arg(long, env = "HEARTH_TURN_RELAY_PORTS", value_name = "MIN-MAX")]
    pub turn_relay_ports: Option<String>,
    /// Peer range TURN may relay to despite the default denials (repeatable), e.g.
    /// 127.0.0.0/8 for tests.
    #[arg(long = "turn-allow-peer", value_name = "CIDR")]
    pub turn_allow_peers: Vec<String>,
    /// Run only the TURN server (no SFU, no meetings; HTTP keeps /metrics and probes).
    #[arg(long, env = "HEARTH_TURN_ONLY")]
    pub turn_only: bool,
    /// PEM certificate chain for TURN over TLS (turns:).
    #[arg(long, env = "HEARTH_TURN_TLS_CERT", value_name = "FILE")]
    pub turn_tls_cert: Option<PathBuf>,
    /// PEM private key for TURN over TLS.
    #[arg(long, env = "HEARTH_TURN_TLS_KEY", value_name = "FILE")]
    pub turn_tls_key: Option<PathBuf>,
    /// Port of TURN over TLS [default: 5349].
    #[arg(long, env = "HEARTH_TURN_TLS_PORT", value_name = "PORT")]
    pub turn_tls_port: Option<u16>,
    /// Allocations on this node at most [default: 10000].
    #[arg(long, env = "HEARTH_TURN_MAX_ALLOCATIONS", value_name = "N")]
    pub turn_max_allocations: Option<usize>,
    /// Allocations per user at most [default: 100].
    #[arg(long, env = "HEARTH_TURN_MAX_ALLOCATIONS_PER_USER", value_name = "N")]
    pub turn_max_allocations_per_user: Option<usize>,
    /// TURN over TCP/TLS: connections open at once per listener [default: 10000].
    #[arg(long, env = "HEARTH_TURN_MAX_CONNECTIONS", value_name = "N")]
    pub turn_max_connections: Option<usize>,
    /// TURN over TCP/TLS: connections open at once from one address [default: 128].
    #[arg(long, env = "HEARTH_TURN_MAX_CONNECTIONS_PER_IP", value_name = "N")]
    pub turn_max_connections_per_ip: Option<usize>,
    /// Bandwidth per allocation and direction in bytes/s, with k/M/G suffixes allowed
    /// [default: 0, unlimited].
    #[arg(long, env = "HEARTH_TURN_BANDWIDTH", value_name = "BYTES_PER_SEC")]
    pub turn_bandwidth: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// Meeting the token is for; without it (and with --admin) a node-wide admin token.
    #[arg(long)]
    pub meeting: Option<String>,
    /// The participant's identity (your application's user id).
    #[arg(long)]
    pub identity: String,
    /// Display name [default: the identity].
    #[arg(long)]
    pub name: Option<String>,
    /// Receive only: the holder may not publish.
    #[arg(long)]
    pub no_publish: bool,
    /// The holder may not receive others' media.
    #[arg(long)]
    pub no_subscribe: bool,
    /// The holder may join only if the meeting already exists.
    #[arg(long)]
    pub no_create: bool,
    /// Grant operator (admin) rights.
    #[arg(long)]
    pub admin: bool,
    /// Grant `captions`: turn the meeting's live captions on and off.
    #[arg(long)]
    pub captions: bool,
    /// Validity, e.g. 90s, 15m, 1h, 2d.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub ttl: Duration,
    /// Configuration file to read the API key pair from.
    #[arg(long, env = "HEARTH_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// API key (issuer).
    #[arg(long, env = "HEARTH_API_KEY", value_name = "KEY")]
    pub api_key: Option<String>,
    /// API secret.
    #[arg(
        long,
        env = "HEARTH_API_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub api_secret: Option<String>,
}

/// `hearth.toml`. Every field is optional; see `deploy/hearth.example.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub http: Option<SocketAddr>,
    pub grpc: Option<SocketAddr>,
    pub media_port: Option<u16>,
    pub media_bind: Option<IpAddr>,
    pub public_ip: Option<IpAddr>,
    pub data_dir: Option<PathBuf>,
    pub dev: Option<bool>,
    pub log_format: Option<LogFormat>,
    pub empty_timeout: Option<String>,
    pub max_participants: Option<usize>,
    pub media_workers: Option<usize>,
    pub max_connections: Option<usize>,
    pub max_connections_per_ip: Option<usize>,
    pub header_timeout: Option<String>,
    pub first_byte_timeout: Option<String>,
    pub database_url: Option<String>,
    /// false: do not meter usage.
    pub ledger: Option<bool>,
    pub node_id: Option<String>,
    /// The `[cluster]` table.
    #[serde(default)]
    pub cluster: FileCluster,
    /// API keys: `key = "secret"`.
    #[serde(default)]
    pub keys: BTreeMap<String, String>,
    /// The `[turn]` table.
    #[serde(default)]
    pub turn: FileTurn,
    /// The `[transcription]` table (live captions).
    #[serde(default)]
    pub transcription: FileTranscription,
}

/// `[transcription]` in hearth.toml: the same settings as the `--transcription-*`,
/// `--stt-*` and `--openai-stt-*` flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTranscription {
    pub engine: Option<String>,
    pub language: Option<String>,
    pub threads: Option<usize>,
    pub max_wait: Option<String>,
    pub model: Option<PathBuf>,
    pub worker: Option<PathBuf>,
    pub openai_url: Option<String>,
    pub openai_key: Option<String>,
    pub openai_model: Option<String>,
    pub openai_timeout: Option<String>,
    pub openai_concurrency: Option<usize>,
    pub streaming_url: Option<String>,
    pub streaming_ca: Option<PathBuf>,
}

/// The CA certificates of a PEM file (`--streaming-stt-ca`), as DER; a clear error for a
/// missing file, one that does not parse, or one without a certificate.
fn read_ca_file(path: &std::path::Path) -> Result<Vec<Vec<u8>>, ConfigError> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let bad =
        |why: String| ConfigError::Invalid(format!("streaming_stt_ca {}: {why}", path.display()));
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .map(|c| c.map(|c| c.as_ref().to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not PEM certificates ({e})")))?;
    if certs.is_empty() {
        return Err(bad("no CERTIFICATE in it".into()));
    }
    Ok(certs)
}

/// `[cluster]` in hearth.toml: the same settings as `--redis-url`, `--region`,
/// `--public-url` and `--placement`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCluster {
    pub redis_url: Option<String>,
    pub region: Option<String>,
    pub public_url: Option<String>,
    pub placement: Option<String>,
}

/// Membership of a cluster (resolved).
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub redis_url: String,
    pub region: String,
    /// None: `http://PUBLIC_IP:HTTP_PORT` once the port is bound.
    pub public_url: Option<String>,
    pub selector: hearth_actors::cluster::Selector,
}

/// `[turn]` in hearth.toml.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTurn {
    pub port: Option<u16>,
    pub bind: Option<IpAddr>,
    pub realm: Option<String>,
    pub secret: Option<String>,
    #[serde(default)]
    pub users: Vec<String>,
    pub relay_ports: Option<String>,
    #[serde(default)]
    pub allow_peers: Vec<String>,
    pub only: Option<bool>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_port: Option<u16>,
    pub max_allocations: Option<usize>,
    pub max_allocations_per_user: Option<usize>,
    pub max_connections: Option<usize>,
    pub max_connections_per_ip: Option<usize>,
    pub bandwidth: Option<String>,
}

/// Errors in configuration; each names the setting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// The resolved settings of a server.
#[derive(Debug, Clone)]
pub struct Config {
    pub http: SocketAddr,
    /// A listener of its own for gRPC (None: gRPC shares the HTTP port).
    pub grpc: Option<SocketAddr>,
    /// A listener of its own for probes and metrics (None: on the HTTP port only).
    pub probe_http: Option<SocketAddr>,
    pub media_bind: SocketAddr,
    pub public_ip: IpAddr,
    pub data_dir: PathBuf,
    pub dev: bool,
    pub log_format: LogFormat,
    pub empty_timeout: Duration,
    pub max_participants: usize,
    pub media_workers: usize,
    pub keys: KeyStore,
    /// True when the key pair was generated at start (dev mode); the server prints it.
    pub generated_key: bool,
    /// The embedded TURN server (None when off).
    pub turn: Option<TurnConfig>,
    /// TURN only: no SFU.
    pub turn_only: bool,
    /// Connection limits of the HTTP and gRPC listeners.
    pub http_limits: HttpLimits,
    /// The usage ledger (None: usage is not metered).
    pub ledger: Option<LedgerConfig>,
    /// The REST API's limits.
    pub rest: crate::rest::Limits,
    /// Live transcription.
    pub stt: SttConfig,
    /// This node's id (None: kept in the data dir).
    pub node_id: Option<String>,
    /// Membership of a cluster on Redis (None: on its own).
    pub cluster: Option<ClusterSettings>,
}

impl Config {
    /// Defaults for tests: loopback, ephemeral ports, dev mode with a fixed key pair.
    pub fn for_tests() -> Config {
        let mut keys = KeyStore::new();
        keys.insert("APItest", "test-secret-0123456789");
        Config {
            http: SocketAddr::from(([127, 0, 0, 1], 0)),
            grpc: None,
            probe_http: None,
            media_bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            public_ip: IpAddr::from([127, 0, 0, 1]),
            data_dir: std::env::temp_dir().join("hearth-test-data"),
            dev: true,
            log_format: LogFormat::Pretty,
            empty_timeout: Duration::from_secs(5),
            max_participants: 100,
            media_workers: 2,
            keys,
            generated_key: false,
            turn: Some(TurnConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                relay_ip: IpAddr::from([127, 0, 0, 1]),
                relay_bind: IpAddr::from([127, 0, 0, 1]),
                secret: Some("test-turn-secret".into()),
                workers: 2,
                ..TurnConfig::default()
            }),
            turn_only: false,
            http_limits: HttpLimits::default(),
            ledger: None,
            rest: crate::rest::Limits::default(),
            stt: SttConfig::defaults(&std::env::temp_dir().join("hearth-test-data")),
            node_id: None,
            cluster: None,
        }
    }
}

/// Reads and parses a config file.
pub fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// Merges flags/environment (`args`) over the file over the defaults.
pub fn resolve(args: &ServeArgs) -> Result<Config, ConfigError> {
    let file = match &args.config {
        Some(path) => read_file(path)?,
        None => FileConfig::default(),
    };
    let http = args
        .http
        .or(file.http)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7880)));
    let media_port = args.media_port.or(file.media_port).unwrap_or(7882);
    let media_ip = args
        .media_bind
        .or(file.media_bind)
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let public_ip = args
        .public_ip
        .or(file.public_ip)
        .unwrap_or_else(|| default_public_ip(http.ip(), media_ip));
    if public_ip.is_unspecified() {
        return Err(ConfigError::Invalid(format!(
            "--public-ip {public_ip}: an unspecified address cannot be advertised to clients"
        )));
    }
    // Replies must leave from the address clients were told to use: a socket bound to the
    // unspecified address answers from whatever address the route back picks, which on a
    // host with several addresses may not be the advertised one (and clients drop those).
    // So when the operator did not choose a bind address and the advertised one belongs to
    // this host, the media sockets bind to it. (Behind a NAT the advertised address is not
    // local and the unspecified bind stays.)
    let media_ip = if args.media_bind.or(file.media_bind).is_none() && is_local_address(public_ip) {
        public_ip
    } else {
        media_ip
    };
    let empty_timeout = match (&args.empty_timeout, &file.empty_timeout) {
        (Some(d), _) => *d,
        (None, Some(s)) => {
            parse_duration(s).map_err(|e| ConfigError::Invalid(format!("empty_timeout: {e}")))?
        }
        (None, None) => Duration::from_secs(20),
    };
    let max_participants = args
        .max_participants
        .or(file.max_participants)
        .unwrap_or(100);
    if max_participants == 0 {
        return Err(ConfigError::Invalid(
            "max_participants must be at least 1".into(),
        ));
    }
    let media_workers = args
        .media_workers
        .or(file.media_workers)
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        });
    let dev = args.dev || file.dev.unwrap_or(false);

    let mut keys = KeyStore::new();
    for (k, s) in &file.keys {
        check_key_pair(k, s)?;
        keys.insert(k.clone(), s.clone());
    }
    match (&args.api_key, &args.api_secret) {
        (Some(k), Some(s)) => {
            check_key_pair(k, s)?;
            keys.insert(k.clone(), s.clone());
        }
        (None, None) => {}
        _ => {
            return Err(ConfigError::Invalid(
                "--api-key and --api-secret go together (or HEARTH_API_KEY and HEARTH_API_SECRET)"
                    .into(),
            ));
        }
    }
    let mut generated_key = false;
    if keys.is_empty() && dev {
        keys.insert(
            format!("APIdev{}", hearth_actors::ids::random_string(8)),
            hearth_actors::ids::random_string(32),
        );
        generated_key = true;
    }
    let defaults = HttpLimits::default();
    let header_timeout = match (&args.header_timeout, &file.header_timeout) {
        (Some(d), _) => *d,
        (None, Some(s)) => {
            parse_duration(s).map_err(|e| ConfigError::Invalid(format!("header_timeout: {e}")))?
        }
        (None, None) => defaults.header_timeout,
    };
    let first_byte_timeout = match (&args.first_byte_timeout, &file.first_byte_timeout) {
        (Some(d), _) => *d,
        (None, Some(s)) => parse_duration(s)
            .map_err(|e| ConfigError::Invalid(format!("first_byte_timeout: {e}")))?,
        (None, None) => defaults.first_byte_timeout,
    };
    if first_byte_timeout.is_zero() || first_byte_timeout > Duration::from_secs(3600) {
        return Err(ConfigError::Invalid(
            "first_byte_timeout must be between 1ms and 1h".into(),
        ));
    }
    let http_limits = HttpLimits {
        first_byte_timeout,
        max_connections: args
            .max_connections
            .or(file.max_connections)
            .unwrap_or(defaults.max_connections),
        max_per_source: args
            .max_connections_per_ip
            .or(file.max_connections_per_ip)
            .unwrap_or(defaults.max_per_source),
        header_timeout,
        ..defaults
    };
    if http_limits.max_connections == 0 || http_limits.max_per_source == 0 {
        return Err(ConfigError::Invalid(
            "max_connections and max_connections_per_ip must be at least 1".into(),
        ));
    }
    if header_timeout.is_zero() || header_timeout > Duration::from_secs(600) {
        return Err(ConfigError::Invalid(
            "header_timeout must be between 1ms and 10m".into(),
        ));
    }
    let data_dir = args
        .data_dir
        .clone()
        .or(file.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from("./data"));
    let no_ledger = args.no_ledger || file.ledger == Some(false);
    let node_id = args.node_id.clone().or(file.node_id.clone());
    if let Some(id) = &node_id
        && (id.is_empty()
            || id.len() > 64
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)))
    {
        return Err(ConfigError::Invalid(
            "node_id: 1 to 64 of A-Z a-z 0-9 - _ .".into(),
        ));
    }
    let ledger = if no_ledger && args.database_url.is_none() {
        None
    } else {
        let url = args
            .database_url
            .clone()
            .or(file.database_url.clone())
            .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("hearth.db").display()));
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            return Err(ConfigError::Invalid(format!(
                "database_url must start with sqlite:// or postgres:// (got {})",
                hearth_actors::billing::store::redact(&url)
            )));
        }
        let defaults = hearth_actors::billing::webhook::WebhookConfig::default();
        let webhooks = hearth_actors::billing::webhook::WebhookConfig {
            retry_base: args.webhook_retry_base.unwrap_or(defaults.retry_base),
            max_attempts: args.webhook_max_attempts.unwrap_or(defaults.max_attempts),
            pause_after: args.webhook_pause_after.unwrap_or(defaults.pause_after),
            timeout: args.webhook_timeout.unwrap_or(defaults.timeout),
            allowed_hosts: args
                .webhook_allowed_hosts
                .iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect(),
            ..defaults
        };
        if webhooks.retry_base.is_zero()
            || webhooks.max_attempts == 0
            || webhooks.pause_after == 0
            || webhooks.timeout.is_zero()
        {
            return Err(ConfigError::Invalid(
                "webhook retry base, attempts, pause-after and timeout must be above zero".into(),
            ));
        }
        Some(LedgerConfig {
            url,
            node_id: node_id.clone(),
            webhooks,
        })
    };
    let rest_defaults = crate::rest::Limits::default();
    let rest = crate::rest::Limits {
        rate_per_second: args.rest_rate.unwrap_or(rest_defaults.rate_per_second),
        rate_burst: args.rest_burst.unwrap_or(rest_defaults.rate_burst),
        request_timeout: args.rest_timeout.unwrap_or(rest_defaults.request_timeout),
        max_body: args.rest_max_body.unwrap_or(rest_defaults.max_body),
        ..rest_defaults
    };
    if !(rest.rate_per_second.is_finite() && rest.rate_per_second > 0.0)
        || rest.rate_burst == 0
        || rest.request_timeout.is_zero()
        || !(1024..=16 * 1024 * 1024).contains(&rest.max_body)
    {
        return Err(ConfigError::Invalid(
            "REST limits: rate and burst above 0, a timeout above 0, a body limit of 1 KiB to 16 MiB"
                .into(),
        ));
    }
    let stt = resolve_stt(args, &file.transcription, &data_dir)?;
    let cluster = resolve_cluster(args, &file.cluster, generated_key)?;
    let turn_only = args.turn.turn_only || file.turn.only.unwrap_or(false);
    let turn = resolve_turn(&args.turn, &file.turn, public_ip, http.port(), turn_only)?;
    Ok(Config {
        http,
        grpc: args.grpc.or(file.grpc),
        probe_http: args.probe_http,
        media_bind: SocketAddr::new(media_ip, media_port),
        public_ip,
        data_dir,
        dev,
        log_format: args
            .log_format
            .or(file.log_format)
            .unwrap_or(LogFormat::Pretty),
        empty_timeout,
        max_participants,
        media_workers: media_workers.max(1),
        keys,
        generated_key,
        turn,
        turn_only,
        http_limits,
        ledger,
        rest,
        stt,
        node_id,
        cluster,
    })
}

fn resolve_cluster(
    args: &ServeArgs,
    file: &FileCluster,
    generated_key: bool,
) -> Result<Option<ClusterSettings>, ConfigError> {
    let Some(redis_url) = args.redis_url.clone().or(file.redis_url.clone()) else {
        return Ok(None);
    };
    if !["redis://", "rediss://", "redis+unix://", "unix://"]
        .iter()
        .any(|s| redis_url.starts_with(s))
    {
        return Err(ConfigError::Invalid(format!(
            "--redis-url must start with redis://, rediss:// or redis+unix:// (got `{redis_url}`)"
        )));
    }
    if generated_key {
        return Err(ConfigError::Invalid(
            "a cluster needs the same API key pair on every node (a token minted by one node \
             is checked by another): set --api-key and --api-secret, or [keys] in the config file"
                .into(),
        ));
    }
    let placement = args.placement.clone().or(file.placement.clone());
    let selector = match placement.as_deref() {
        None => hearth_actors::cluster::Selector::default(),
        Some(s) => hearth_actors::cluster::Selector::parse(s).ok_or_else(|| {
            ConfigError::Invalid(format!(
                "--placement `{s}`: one of least-loaded, fewest-participants, region-first"
            ))
        })?,
    };
    let public_url = args.public_url.clone().or(file.public_url.clone());
    if let Some(url) = &public_url
        && !(url.starts_with("http://") || url.starts_with("https://"))
    {
        return Err(ConfigError::Invalid(format!(
            "--public-url must start with http:// or https:// (got `{url}`)"
        )));
    }
    let region = args
        .region
        .clone()
        .or(file.region.clone())
        .unwrap_or_default();
    if region.len() > 64 || region.contains('|') {
        return Err(ConfigError::Invalid(
            "--region: at most 64 bytes, no `|`".into(),
        ));
    }
    Ok(Some(ClusterSettings {
        redis_url,
        region,
        public_url: public_url.map(|u| u.trim_end_matches('/').to_owned()),
        selector,
    }))
}

fn resolve_turn(
    args: &TurnArgs,
    file: &FileTurn,
    public_ip: IpAddr,
    http_port: u16,
    turn_only: bool,
) -> Result<Option<TurnConfig>, ConfigError> {
    let port = args.turn_port.or(file.port).unwrap_or(3478);
    if port == 0 {
        if turn_only {
            return Err(ConfigError::Invalid(
                "--turn-only with --turn-port 0: nothing would run".into(),
            ));
        }
        return Ok(None);
    }
    let invalid = |m: String| ConfigError::Invalid(m);
    // As for media: with no bind address chosen and an advertised address of this host's,
    // the listeners and relayed sockets bind to it, so answers and relayed data leave from
    // the address clients and peers were given (a socket on the unspecified address answers
    // from whatever address the route back picks, which a multi-homed host may not have
    // advertised; TURN clients and peers drop those).
    let bind = match args.turn_bind.or(file.bind) {
        Some(ip) => ip,
        None if is_local_address(public_ip) => public_ip,
        None => IpAddr::from([0, 0, 0, 0]),
    };
    let mut users = Vec::new();
    for u in args.turn_users.iter().chain(&file.users) {
        let (user, pass) = u
            .split_once(':')
            .filter(|(u, p)| !u.is_empty() && !p.is_empty())
            .ok_or_else(|| invalid(format!("--turn-user `{u}`: expected user:password")))?;
        users.push((user.to_owned(), pass.to_owned()));
    }
    let relay_ports = match args.turn_relay_ports.as_ref().or(file.relay_ports.as_ref()) {
        None => (49152, 65535),
        Some(r) => {
            let parsed = r.split_once('-').and_then(|(a, b)| {
                Some((a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?))
            });
            match parsed {
                Some((lo, hi)) if lo > 0 && lo <= hi => (lo, hi),
                _ => {
                    return Err(invalid(format!(
                        "--turn-relay-ports `{r}`: expected MIN-MAX with 0 < MIN <= MAX"
                    )));
                }
            }
        }
    };
    let mut allow_peers = Vec::new();
    for c in args.turn_allow_peers.iter().chain(&file.allow_peers) {
        allow_peers.push(Cidr::parse(c).map_err(|e| invalid(format!("--turn-allow-peer {e}")))?);
    }
    let tls = match (
        args.turn_tls_cert.clone().or(file.tls_cert.clone()),
        args.turn_tls_key.clone().or(file.tls_key.clone()),
    ) {
        (Some(cert), Some(key)) => Some(TlsSettings {
            listen: SocketAddr::new(bind, args.turn_tls_port.or(file.tls_port).unwrap_or(5349)),
            cert,
            key,
        }),
        (None, None) => None,
        _ => {
            return Err(invalid(
                "--turn-tls-cert and --turn-tls-key go together".into(),
            ));
        }
    };
    let bandwidth = match args.turn_bandwidth.as_ref().or(file.bandwidth.as_ref()) {
        None => 0,
        Some(b) => parse_bytes(b).map_err(|e| invalid(format!("--turn-bandwidth {e}")))?,
    };
    // The SFU hands its participants ephemeral credentials, so it needs a secret; one is
    // made up at start when none is configured.
    let secret = args
        .turn_secret
        .clone()
        .or(file.secret.clone())
        .or_else(|| (!turn_only).then(|| hearth_actors::ids::random_string(32)));
    let defaults = TurnConfig::default();
    let stream_limits = hearth_actors::limits::GateLimits {
        max_connections: args
            .turn_max_connections
            .or(file.max_connections)
            .unwrap_or(defaults.stream_limits.max_connections),
        max_per_source: args
            .turn_max_connections_per_ip
            .or(file.max_connections_per_ip)
            .unwrap_or(defaults.stream_limits.max_per_source),
    };
    if stream_limits.max_connections == 0 || stream_limits.max_per_source == 0 {
        return Err(ConfigError::Invalid(
            "turn max_connections and max_connections_per_ip must be at least 1".into(),
        ));
    }
    Ok(Some(TurnConfig {
        listen: SocketAddr::new(bind, port),
        tls,
        realm: args
            .turn_realm
            .clone()
            .or(file.realm.clone())
            .unwrap_or_else(|| "hearth".into()),
        users,
        secret,
        relay_ip: public_ip,
        relay_bind: bind,
        relay_ports,
        allow_peers,
        own_ports: vec![http_port],
        max_allocations: args
            .turn_max_allocations
            .or(file.max_allocations)
            .unwrap_or(defaults.max_allocations),
        max_allocations_per_user: args
            .turn_max_allocations_per_user
            .or(file.max_allocations_per_user)
            .unwrap_or(defaults.max_allocations_per_user),
        bandwidth,
        stream_limits,
        ..defaults
    }))
}

/// `1500`, `64k`, `2M`, `1G` (powers of 1000) -> bytes.
fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], 1_000),
        Some('m' | 'M') => (&s[..s.len() - 1], 1_000_000),
        Some('g' | 'G') => (&s[..s.len() - 1], 1_000_000_000),
        _ => (s, 1),
    };
    num.trim()
        .parse::<u64>()
        .map(|n| n.saturating_mul(mult))
        .map_err(|_| format!("`{s}`: expected bytes per second, e.g. 250k or 2M"))
}

/// The key pair for `hearth token`: flags/env, else the config file's first key.
pub fn token_keys(args: &TokenArgs) -> Result<(String, String), ConfigError> {
    match (&args.api_key, &args.api_secret) {
        (Some(k), Some(s)) => return Ok((k.clone(), s.clone())),
        (None, None) => {}
        _ => {
            return Err(ConfigError::Invalid(
                "--api-key and --api-secret go together".into(),
            ));
        }
    }
    if let Some(path) = &args.config {
        let file = read_file(path)?;
        if let Some((k, s)) = file.keys.into_iter().next() {
            return Ok((k, s));
        }
    }
    Err(ConfigError::Invalid(
        "no API key: pass --api-key and --api-secret, set HEARTH_API_KEY and HEARTH_API_SECRET, \
         or --config a file with a [keys] table"
            .into(),
    ))
}

fn check_key_pair(key: &str, secret: &str) -> Result<(), ConfigError> {
    if key.is_empty() || key.len() > 128 || key.contains(char::is_whitespace) {
        return Err(ConfigError::Invalid(format!(
            "API key `{key}`: 1 to 128 characters, no spaces"
        )));
    }
    if secret.len() < 16 {
        return Err(ConfigError::Invalid(format!(
            "API secret of `{key}`: at least 16 characters"
        )));
    }
    Ok(())
}

/// True if `ip` is assigned to this host (a socket can bind to it).
fn is_local_address(ip: IpAddr) -> bool {
    UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// What to advertise when the operator did not say: a specific HTTP or media bind address
/// if there is one, else the address of the interface that routes outward, else loopback.
fn default_public_ip(http_ip: IpAddr, media_ip: IpAddr) -> IpAddr {
    if !media_ip.is_unspecified() {
        return media_ip;
    }
    if http_ip.is_loopback() || !http_ip.is_unspecified() {
        return http_ip;
    }
    // Connecting a UDP socket sends nothing; it only asks the kernel for the route.
    UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| {
            s.connect("192.0.2.1:9")?;
            s.local_addr()
        })
        .map(|a| a.ip())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_serve_one_machine() {
        let c = resolve(&ServeArgs::default()).unwrap();
        assert_eq!(c.http, "127.0.0.1:7880".parse::<SocketAddr>().unwrap());
        // The advertised address is local: media binds to it, so replies leave from it.
        assert_eq!(
            c.media_bind,
            "127.0.0.1:7882".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(c.public_ip, IpAddr::from([127, 0, 0, 1]));
        assert!(!c.dev);
        assert!(c.keys.is_empty());
    }

    #[test]
    fn dev_generates_a_key_pair() {
        let c = resolve(&ServeArgs {
            dev: true,
            ..Default::default()
        })
        .unwrap();
        assert!(c.generated_key);
        let (k, s) = c.keys.first().unwrap();
        assert!(k.starts_with("APIdev"));
        assert_eq!(s.len(), 32);
    }

    /// Media binds to the advertised address when it is this host's and the operator chose
    /// no bind address; an explicit bind (even 0.0.0.0) and a non-local advertised address
    /// (behind a NAT) keep what they say.
    #[test]
    fn media_binds_to_the_advertised_address_when_it_is_local() {
        let nat = resolve(&ServeArgs {
            public_ip: Some(IpAddr::from([192, 0, 2, 7])),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(nat.media_bind.ip(), IpAddr::from([0, 0, 0, 0]));
        let explicit = resolve(&ServeArgs {
            media_bind: Some(IpAddr::from([0, 0, 0, 0])),
            public_ip: Some(IpAddr::from([127, 0, 0, 1])),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(explicit.media_bind.ip(), IpAddr::from([0, 0, 0, 0]));
        let local = resolve(&ServeArgs {
            http: Some("0.0.0.0:7880".parse().unwrap()),
            public_ip: Some(IpAddr::from([127, 0, 0, 1])),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(local.media_bind.ip(), IpAddr::from([127, 0, 0, 1]));
    }

    /// TURN follows media: its listeners and relayed sockets bind to the advertised address
    /// when it is this host's and no bind was chosen; an explicit bind and a non-local
    /// advertised address (behind a NAT) keep what they say.
    #[test]
    fn turn_binds_to_the_advertised_address_when_it_is_local() {
        let turn = |args: ServeArgs| resolve(&args).unwrap().turn.expect("TURN on");
        let local = turn(ServeArgs {
            public_ip: Some(IpAddr::from([127, 0, 0, 1])),
            ..Default::default()
        });
        assert_eq!(local.listen.ip(), IpAddr::from([127, 0, 0, 1]));
        assert_eq!(local.relay_bind, IpAddr::from([127, 0, 0, 1]));
        let nat = turn(ServeArgs {
            public_ip: Some(IpAddr::from([192, 0, 2, 7])),
            ..Default::default()
        });
        assert_eq!(nat.listen.ip(), IpAddr::from([0, 0, 0, 0]));
        assert_eq!(nat.relay_ip, IpAddr::from([192, 0, 2, 7]));
        let mut explicit = ServeArgs {
            public_ip: Some(IpAddr::from([127, 0, 0, 1])),
            ..Default::default()
        };
        explicit.turn.turn_bind = Some(IpAddr::from([0, 0, 0, 0]));
        let explicit = turn(explicit);
        assert_eq!(explicit.listen.ip(), IpAddr::from([0, 0, 0, 0]));
        assert_eq!(explicit.relay_bind, IpAddr::from([0, 0, 0, 0]));
    }

    #[test]
    fn flags_override_file() {
        let dir = std::env::temp_dir().join(format!("hearth-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("hearth.toml");
        std::fs::write(
            &path,
            "http = \"127.0.0.1:9000\"\nmedia_port = 9002\nempty_timeout = \"1m\"\n[keys]\nAPIfile = \"file-secret-0123456789\"\n",
        )
        .unwrap();
        let c = resolve(&ServeArgs {
            config: Some(path.clone()),
            media_port: Some(9100),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.http.port(), 9000);
        assert_eq!(c.media_bind.port(), 9100);
        assert_eq!(c.empty_timeout, Duration::from_secs(60));
        assert_eq!(c.keys.secret("APIfile"), Some("file-secret-0123456789"));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn transcription_settings_come_from_the_file_and_flags_win() {
        let dir = std::env::temp_dir().join(format!("hearth-cfg-stt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("hearth.toml");
        std::fs::write(
            &path,
            "[transcription]\nengine = \"openai\"\nlanguage = \"de\"\nthreads = 3\n\
             max_wait = \"2s\"\nopenai_url = \"http://127.0.0.1:8000/v1/audio/transcriptions\"\n\
             openai_timeout = \"3s\"\n",
        )
        .unwrap();
        let c = resolve(&ServeArgs {
            config: Some(path.clone()),
            transcription_threads: Some(2),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.stt.engine, hearth_actors::EngineKind::OpenAi);
        assert_eq!(c.stt.language.as_str(), "de");
        assert_eq!(c.stt.threads, 2, "the flag beats the file");
        assert_eq!(c.stt.max_wait, Duration::from_secs(2));
        let openai = c.stt.openai.expect("the openai engine is configured");
        assert_eq!(openai.timeout, Duration::from_secs(3));
        std::fs::write(&path, "[transcription]\nengine = \"streaming\"\n").unwrap();
        let err = resolve(&ServeArgs {
            config: Some(path.clone()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("--streaming-stt-url"), "{err}");
        std::fs::write(
            &path,
            "[transcription]\nengine = \"streaming\"\nstreaming_url = \"ws://stt:8080/transcribe\"\n",
        )
        .unwrap();
        let c = resolve(&ServeArgs {
            config: Some(path.clone()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.stt.engine, hearth_actors::EngineKind::Streaming);
        assert_eq!(c.stt.streaming.unwrap().url, "ws://stt:8080/transcribe");
        for (url, says) in [
            ("http://stt/transcribe", "a ws:// or wss:// URL"),
            ("not a url", "not a URL"),
        ] {
            let err = resolve(&ServeArgs {
                streaming_stt_url: Some(url.into()),
                ..Default::default()
            })
            .unwrap_err();
            assert!(err.to_string().contains(says), "{url}: {err}");
        }
        // wss:// is taken; a CA file must hold certificates.
        let c = resolve(&ServeArgs {
            streaming_stt_url: Some("wss://stt.example.com/transcribe".into()),
            ..Default::default()
        })
        .unwrap();
        let streaming = c.stt.streaming.unwrap();
        assert_eq!(streaming.url, "wss://stt.example.com/transcribe");
        assert!(streaming.extra_roots.is_empty());
        let ca = dir.join("ca.pem");
        for (content, says) in [
            (None, "No such file"),
            (Some("not pem at all\n"), "no CERTIFICATE"),
            (
                Some("-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n"),
                "not PEM certificates",
            ),
        ] {
            match content {
                Some(text) => std::fs::write(&ca, text).unwrap(),
                None => {
                    let _ = std::fs::remove_file(&ca);
                }
            }
            let err = resolve(&ServeArgs {
                streaming_stt_url: Some("wss://stt/transcribe".into()),
                streaming_stt_ca: Some(ca.clone()),
                ..Default::default()
            })
            .unwrap_err();
            assert!(err.to_string().contains(says), "{content:?}: {err}");
            assert!(err.to_string().contains("streaming_stt_ca"), "{err}");
        }
        std::fs::write(&path, "[transcription]\nengine = \"openai\"\n").unwrap();
        let err = resolve(&ServeArgs {
            config: Some(path),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("--openai-stt-url"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn the_example_config_parses_and_enables_turn() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/hearth.example.toml");
        let c = resolve(&ServeArgs {
            config: Some(path),
            ..Default::default()
        })
        .unwrap();
        let turn = c.turn.expect("TURN is on in the example");
        assert_eq!(turn.listen.port(), 3478);
        assert_eq!(turn.relay_ports, (49152, 65535));
        assert!(
            turn.secret.is_some(),
            "a secret is generated for the SFU's participants"
        );
    }

    #[test]
    fn cluster_flags_are_checked() {
        let keyed = |f: &dyn Fn(&mut ServeArgs)| {
            let mut args = ServeArgs {
                api_key: Some("k".into()),
                api_secret: Some("a-secret-of-enough-length".into()),
                redis_url: Some("redis://127.0.0.1:6379/0".into()),
                ..Default::default()
            };
            f(&mut args);
            resolve(&args)
        };
        let ok = keyed(&|_| {}).unwrap();
        let c = ok.cluster.expect("a cluster");
        assert_eq!(c.selector, hearth_actors::cluster::Selector::LeastLoaded);
        assert!(c.public_url.is_none());
        let err = keyed(&|a| a.redis_url = Some("http://redis".into())).unwrap_err();
        assert!(err.to_string().contains("redis://"), "{err}");
        let err = keyed(&|a| a.placement = Some("random".into())).unwrap_err();
        assert!(err.to_string().contains("least-loaded"), "{err}");
        let err = keyed(&|a| a.public_url = Some("node-2:7880".into())).unwrap_err();
        assert!(err.to_string().contains("http://"), "{err}");
        let trimmed = keyed(&|a| a.public_url = Some("https://n2.example.com/".into())).unwrap();
        assert_eq!(
            trimmed.cluster.and_then(|c| c.public_url).as_deref(),
            Some("https://n2.example.com")
        );
        // A generated dev key differs per node: tokens would not verify across the cluster.
        let err = resolve(&ServeArgs {
            redis_url: Some("redis://127.0.0.1:6379/0".into()),
            dev: true,
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("same API key"), "{err}");
        assert!(resolve(&ServeArgs::default()).unwrap().cluster.is_none());
    }

    #[test]
    fn turn_flags_are_checked() {
        let with = |turn: TurnArgs| {
            resolve(&ServeArgs {
                turn,
                ..Default::default()
            })
        };
        let err = with(TurnArgs {
            turn_relay_ports: Some("60000-50000".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("MIN-MAX"), "{err}");
        let err = with(TurnArgs {
            turn_users: vec!["nopassword".into()],
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("user:password"), "{err}");
        let err = with(TurnArgs {
            turn_allow_peers: vec!["10.0.0.0/99".into()],
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("prefix"), "{err}");
        let off = with(TurnArgs {
            turn_port: Some(0),
            ..Default::default()
        })
        .unwrap();
        assert!(off.turn.is_none());
        let c = with(TurnArgs {
            turn_bandwidth: Some("2M".into()),
            turn_only: true,
            ..Default::default()
        })
        .unwrap();
        assert!(c.turn_only);
        assert_eq!(c.turn.unwrap().bandwidth, 2_000_000);
    }

    #[test]
    fn bad_config_is_a_clear_error() {
        let dir = std::env::temp_dir().join(format!("hearth-badcfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("hearth.toml");
        std::fs::write(&path, "htp = \"127.0.0.1:9000\"\n").unwrap();
        let err = resolve(&ServeArgs {
            config: Some(path.clone()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `htp`"), "{err}");
        std::fs::write(&path, "[keys]\nk = \"short\"\n").unwrap();
        let err = resolve(&ServeArgs {
            config: Some(path),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("at least 16"), "{err}");
        let err = resolve(&ServeArgs {
            api_key: Some("k".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("go together"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
