//! Hearth's integration test kit: an in-process server ([`TestServer`]) and a black-box
//! WebRTC client of the public protocols ([`TestClient`]).
//!
//! What this crate owns: helpers that drive a node only through what any client can use —
//! WebSocket signaling (`/v1/signal`, proto3 JSON), WebRTC media on the node's UDP port, and
//! `GET /metrics`. The drill hooks (`Node::inject_*_fault`) and `Node::meeting_count` are the
//! only server internals the tests touch. What it must never do: patch, mock or reach into
//! the server's actors; every assertion is about what a client or operator could observe.
//!
//! One client is one Tokio task that owns a WebSocket, one `rtc` `RTCPeerConnection` (the
//! sans-IO core of webrtc-rs), one UDP socket on `127.0.0.1:0` (its single host candidate)
//! and its timers. The task records everything it sees in a [`ClientStats`]; tests read
//! snapshots and wait for conditions with [`TestClient::wait_until`] (woken on every change,
//! bounded by a deadline — never a bare sleep).
//!
//! Servers of one test binary run one at a time ([`TestServer::start`] takes a process-wide
//! lock): the Prometheus recorder is global to the process, so metric deltas are only
//! meaningful when no other server shares it.

pub mod cluster;
pub mod turn;

use std::collections::VecDeque;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use hearth_actors::{Grants, MeetingId, Node, ParticipantId};
use hearth_api::config::Config;
use hearth_api::server::RunningServer;
use hearth_api::token;
use hearth_proto::signal::v1 as pb;
use pb::client_message::Message as C;
use pb::server_message::Message as S;
use rtc::interceptor::{Attribute, Interceptor, Packet, Registry, Slot, StreamInfo, TaggedPacket};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::interceptor_registry::register_default_interceptors;
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_OPUS, MIME_TYPE_RTX, MIME_TYPE_VP8, MediaEngine,
};
use rtc::peer_connection::event::{RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::message::RTCMessage;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::{RTCIceConnectionState, RTCPeerConnectionState};
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCIceCandidate, RTCIceCandidateInit,
};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters,
    RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpSenderId, RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use rtc::{rtcp, rtp};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Redirects a client follows in a row (as the web client).
pub const MAX_REDIRECTS: usize = 3;
/// How long a client waits for the answer to its `join`.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);
/// The protocol's keep-alive interval.
const PING_INTERVAL: Duration = Duration::from_secs(10);
const AUDIO_INTERVAL: Duration = Duration::from_millis(20);
const VIDEO_INTERVAL: Duration = Duration::from_millis(33);
/// Every this many frames is a keyframe (about one per second at 30 fps).
const KEYFRAME_EVERY: u64 = 30;
const AUDIO_PAYLOAD: usize = 60;
const OPUS_PT: u8 = 111;
const VP8_PT: u8 = 96;
const VP8_RTX_PT: u8 = 97;

// ----- Server ------------------------------------------------------------------------------

/// Servers of one test process run one at a time (see the crate docs).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The API key pair of [`Config::for_tests`].
pub const API_KEY: &str = "APItest";
pub const API_SECRET: &str = "test-secret-0123456789";

/// An in-process Hearth node on loopback with ephemeral ports.
pub struct TestServer {
    pub server: RunningServer,
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

impl TestServer {
    /// A server with [`Config::for_tests`].
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// A server with [`Config::for_tests`] changed by `f`.
    pub async fn start_with(f: impl FnOnce(&mut Config)) -> Self {
        let serial = SERIAL.lock().await;
        init_tracing();
        // A test that failed released the lock while its runtime (and its node's actors) was
        // still being torn down; let those decrements land before this node resets the gauges.
        // After a clean `shutdown` this returns at once.
        let _ = tokio::time::timeout(Duration::from_secs(10), gauges_at_zero()).await;
        let mut config = Config::for_tests();
        f(&mut config);
        let server = hearth_api::server::start(config)
            .await
            .expect("test server starts");
        Self {
            server,
            _serial: serial,
        }
    }

    /// The node (for drill hooks and meeting counts).
    pub fn node(&self) -> &Node {
        &self.server.state.node
    }

    /// A token for `identity` in `meeting`, valid for an hour.
    pub fn token(&self, meeting: &str, identity: &str, grants: Grants) -> String {
        let claims = token::claims_for(
            API_KEY,
            meeting,
            identity,
            identity,
            grants,
            SystemTime::now(),
            Duration::from_secs(3600),
        );
        token::mint(&claims, API_SECRET)
    }

    /// `ws://.../v1/signal`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/signal", self.server.http_addr)
    }

    /// The node's media port.
    pub fn media_addr(&self) -> SocketAddr {
        self.server.media_addr.expect("test servers run the SFU")
    }

    /// The body of `GET /metrics`.
    pub async fn metrics_text(&self) -> String {
        http_get(self.server.http_addr, "/metrics").await
    }

    /// One sample of `GET /metrics`, e.g. `hearth_meetings` or
    /// `hearth_actor_failures_total{kind="participant"}`; 0 if the series does not exist yet.
    pub async fn metric(&self, name_with_labels: &str) -> f64 {
        self.metric_opt(name_with_labels).await.unwrap_or(0.0)
    }

    /// One sample of `GET /metrics`, or None if the node does not export that series.
    pub async fn metric_opt(&self, name_with_labels: &str) -> Option<f64> {
        parse_metric(&self.metrics_text().await, name_with_labels)
    }

    /// Polls `GET /metrics` until `cond` holds for the sample; panics after `timeout`.
    pub async fn wait_metric(
        &self,
        name_with_labels: &str,
        timeout: Duration,
        cond: impl Fn(f64) -> bool,
    ) -> f64 {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tick.tick().await;
            let value = self.metric(name_with_labels).await;
            if cond(value) {
                return value;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out after {timeout:?} waiting for metric {name_with_labels}; last value {value}"
            );
        }
    }

    /// Polls the node until `cond` holds for its meeting count; panics after `timeout`.
    pub async fn wait_meeting_count(&self, timeout: Duration, cond: impl Fn(usize) -> bool) {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tick.tick().await;
            let n = self.node().meeting_count();
            if cond(n) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out after {timeout:?} waiting for the meeting count; last {n} ({:?})",
                self.node().meeting_ids()
            );
        }
    }

    /// Makes one participant's actor panic (drill hook).
    pub fn inject_participant_fault(&self, meeting: &str, participant: &str) -> bool {
        let meeting = MeetingId::parse(meeting).expect("valid meeting name");
        self.node()
            .inject_participant_fault(&meeting, &ParticipantId::from_string(participant))
    }

    /// Makes a participant panic on a UDP driver's fast path, the next time one handles its
    /// media (drill hook).
    pub fn inject_participant_media_fault(&self, meeting: &str, participant: &str) -> bool {
        let meeting = MeetingId::parse(meeting).expect("valid meeting name");
        self.node()
            .inject_participant_media_fault(&meeting, &ParticipantId::from_string(participant))
    }

    /// Makes a meeting's actor panic (drill hook).
    pub fn inject_meeting_fault(&self, meeting: &str) -> bool {
        let meeting = MeetingId::parse(meeting).expect("valid meeting name");
        self.node().inject_meeting_fault(&meeting)
    }

    /// Stops the node (ends meetings, stops actors) and releases the serial lock. Asserts
    /// that the node's gauges return to zero: every meeting and participant it counted is
    /// gone (the next test's node starts from a clean recorder).
    pub async fn shutdown(self) {
        let Self { server, _serial } = self;
        server.shutdown().await;
        let zero = tokio::time::timeout(Duration::from_secs(5), gauges_at_zero()).await;
        let (meetings, participants) = gauges();
        assert!(
            zero.is_ok(),
            "after shutdown the node still counts {meetings} meetings and {participants} participants"
        );
    }
}

/// `hearth_meetings` and `hearth_participants` from the process-wide recorder.
fn gauges() -> (f64, f64) {
    let text = hearth_api::server::metrics_handle().render();
    (
        parse_metric(&text, "hearth_meetings").unwrap_or(0.0),
        parse_metric(&text, "hearth_participants").unwrap_or(0.0),
    )
}

/// Returns once both gauges read zero (polled; bound it with a timeout).
async fn gauges_at_zero() {
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        tick.tick().await;
        if gauges() == (0.0, 0.0) {
            return;
        }
    }
}

/// Logs go to the test's captured output; `RUST_LOG` picks the level (default: warnings).
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// A minimal HTTP/1.1 GET (the tests need no HTTP client beyond this).
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr)
        .await
        .expect("connect to HTTP port");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send HTTP request");
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .await
        .expect("read HTTP response");
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "GET {path} failed: {head}"
    );
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A binary of this workspace next to the running test executable (target/<profile>/NAME),
/// built by `cargo build --workspace` (which `tests/run.sh` runs first).
pub fn workspace_bin(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX)))
        .expect("the test executable lives in target/<profile>/deps");
    assert!(
        path.is_file(),
        "{} does not exist: run `cargo build --workspace` first",
        path.display()
    );
    path
}

/// Adds the arguments every spawned `hearth` node of the tests and benches takes: HTTP on
/// 127.0.0.1:`port`, media on an ephemeral loopback port, no fixed TURN port, the API key
/// pair, `data` as its data directory; output discarded; killed when the handle drops.
/// `cmd` is `hearth` itself or a wrapper (`taskset ... hearth`) that ends with it.
pub fn node_args<'a>(
    cmd: &'a mut tokio::process::Command,
    port: u16,
    (key, secret): (&str, &str),
    data: &std::path::Path,
) -> &'a mut tokio::process::Command {
    cmd.args(["--http", &format!("127.0.0.1:{port}")])
        .args([
            "--media-port",
            "0",
            "--media-bind",
            "127.0.0.1",
            "--turn-port",
            "0",
        ])
        .args(["--api-key", key, "--api-secret", secret])
        .arg("--data-dir")
        .arg(data)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
}

/// Finds `name{labels}` (exactly as the exporter writes it) in Prometheus text.
pub fn parse_metric(text: &str, name_with_labels: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let rest = line.strip_prefix(name_with_labels)?;
            let value = rest.strip_prefix(' ')?;
            value.trim().parse::<f64>().ok()
        })
}

// ----- Client: public types ----------------------------------------------------------------

/// Audio or video.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Audio,
    Video,
}

impl Kind {
    fn from_rtc(kind: RtpCodecKind) -> Option<Kind> {
        match kind {
            RtpCodecKind::Audio => Some(Kind::Audio),
            RtpCodecKind::Video => Some(Kind::Video),
            _ => None,
        }
    }

    fn from_wire(kind: i32) -> Option<Kind> {
        match pb::TrackKind::try_from(kind).ok()? {
            pb::TrackKind::Audio => Some(Kind::Audio),
            pb::TrackKind::Video => Some(Kind::Video),
            pb::TrackKind::Unspecified => None,
        }
    }
}

/// What a client publishes once it has joined.
#[derive(Clone, Copy, Debug, Default)]
pub struct ClientOptions {
    pub publish_audio: bool,
    pub publish_video: bool,
    /// The video track is declared a screen share (`SessionDescription.sources`).
    pub screen: bool,
    /// Accept RTX for VP8 (RFC 4588): the server's retransmissions then come on their own
    /// stream, which `rtc` puts back into the VP8 stream. Off by default: `rtc`'s NACK
    /// generator does not see packets recovered from RTX and keeps asking for them.
    pub accept_rtx: bool,
}

impl ClientOptions {
    /// Audio and video.
    pub fn av() -> Self {
        Self {
            publish_audio: true,
            publish_video: true,
            screen: false,
            accept_rtx: false,
        }
    }

    /// Receive only.
    pub fn receive_only() -> Self {
        Self::default()
    }
}

/// A refused join: the server's error code name (e.g. `INVALID_TOKEN`), or `TRANSPORT` /
/// `CLIENT_TIMEOUT` / `PROTOCOL` for failures on the client's side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinError {
    pub code: String,
    pub message: String,
    pub fatal: bool,
}

impl std::fmt::Display for JoinError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for JoinError {}

/// An `{"error":...}` from the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerError {
    pub code: String,
    pub message: String,
    pub fatal: bool,
}

/// Reception of one kind of media from one publisher (summed over its streams).
#[derive(Clone, Debug, Default)]
pub struct StreamStats {
    pub packets: u64,
    pub bytes: u64,
    /// VP8 frames starting with a keyframe header.
    pub keyframes: u64,
    /// Forward jumps in a stream's sequence numbers (each counts once).
    pub gaps: u64,
    /// Sequence numbers skipped by those jumps.
    pub lost: u64,
    /// Packets older than the newest seen (late or retransmitted).
    pub reordered: u64,
    pub duplicates: u64,
    /// Last sequence number of the most recent packet.
    pub last_seq: Option<u16>,
    /// SSRCs this media arrived on.
    pub ssrcs: BTreeSet<u32>,
    /// Largest sequence-number step seen between consecutive packets of one stream.
    pub max_step: u16,
    /// Whether the very first packet started a keyframe (video).
    pub first_is_keyframe: Option<bool>,
    /// For each packet that arrived after a pause of at least [`RESUME_AFTER`] (mute,
    /// unpublish): whether it started a keyframe.
    pub resumes: Vec<bool>,
    /// When the last packet arrived.
    pub last_at: Option<Instant>,
}

/// A silence at least this long before a packet counts as a pause (see
/// [`StreamStats::resumes`]); media normally arrives every 20–33 ms.
pub const RESUME_AFTER: Duration = Duration::from_millis(300);

/// Media received from one publisher.
#[derive(Clone, Debug, Default)]
pub struct PublisherStats {
    pub audio: StreamStats,
    pub video: StreamStats,
}

impl PublisherStats {
    pub fn kind(&self, kind: Kind) -> &StreamStats {
        match kind {
            Kind::Audio => &self.audio,
            Kind::Video => &self.video,
        }
    }
}

/// A track event as the client saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackEvent {
    pub participant: String,
    pub track: String,
    /// Known for `trackPublished` only.
    pub kind: Option<Kind>,
}

/// Everything a client has seen, for assertions.
#[derive(Clone, Debug, Default)]
pub struct ClientStats {
    pub participant_id: String,
    pub meeting: String,
    /// `MeetingInfo.startedAtMs` from the join response.
    pub meeting_started_at_ms: i64,
    /// The meeting's metadata: from the join response, then each `meetingUpdated`.
    pub meeting_metadata: String,
    /// How many `meetingUpdated` arrived.
    pub meeting_updates: usize,
    /// ICE and DTLS are up.
    pub connected: bool,
    /// The server's ICE ufrag, from its latest session description.
    pub server_ufrag: Option<String>,
    /// The other participants, as the join response and later events report them.
    pub participants: BTreeSet<String>,
    /// Every `participantJoined`, in order.
    pub joined: Vec<String>,
    /// Every `participantLeft` as (participant, reason), in order.
    pub left: Vec<(String, String)>,
    pub tracks_published: Vec<TrackEvent>,
    pub tracks_unpublished: Vec<TrackEvent>,
    /// Every `trackMuted` as (event, muted).
    pub tracks_muted: Vec<(TrackEvent, bool)>,
    /// This client's own tracks, from its `trackPublished` events.
    pub own_tracks: BTreeMap<Kind, String>,
    /// Every event after the join response, as a short line, in order (not pongs, trickles,
    /// offers, answers or active speakers).
    pub events: Vec<String>,
    /// Errors sent by the server.
    pub errors: Vec<ServerError>,
    /// Negotiation failures on the client's side (an answer or offer that did not apply).
    pub negotiation_failures: Vec<String>,
    /// Messages that did not decode as `ServerMessage`.
    pub protocol_errors: Vec<String>,
    pub reconnect: Option<String>,
    /// Every `appMessage` (from the REST/gRPC messages call), in order.
    pub app_messages: Vec<pb::AppMessage>,
    /// Every `transcript` (live captions), in order.
    pub transcripts: Vec<pb::Transcript>,
    /// The meeting's captions: from the join response, then each `captions` message.
    pub captions: Option<pb::CaptionsState>,
    /// `nodeDraining`'s deadline in seconds, once the node said it drains.
    pub draining: Option<u32>,
    pub meeting_ended: Option<String>,
    /// The signaling socket closed.
    pub closed: bool,
    pub offers_received: u64,
    pub answers_received: u64,
    pub offers_sent: u64,
    /// Local offers rolled back because a server offer crossed them.
    pub rollbacks: u64,
    pub pongs: u64,
    pub active_speakers: u64,
    pub candidates_received: u64,
    /// Server candidates the stack refused (not an error of the server by itself).
    pub candidate_errors: u64,
    /// Media received, by publisher participant id (the stream's MediaStream id).
    pub from: BTreeMap<String, PublisherStats>,
    /// RTP packets whose track could not be mapped to a publisher.
    pub unmapped_packets: u64,
    pub tracks_opened: u64,
    pub audio_sent: u64,
    pub video_frames_sent: u64,
    pub keyframes_sent: u64,
    pub plis_received: u64,
    pub nacks_received: u64,
    /// RTP writes the stack refused.
    pub send_errors: u64,
    /// Video datagrams dropped on purpose (see [`TestClient::video_loss`]).
    pub lost_in: u64,
    pub lost_out: u64,
}

impl ClientStats {
    /// Packets of `kind` received from `publisher`.
    pub fn packets_from(&self, publisher: &str, kind: Kind) -> u64 {
        self.from.get(publisher).map_or(0, |p| p.kind(kind).packets)
    }

    /// Reception stats of `kind` from `publisher`.
    pub fn stream_from(&self, publisher: &str, kind: Kind) -> StreamStats {
        self.from
            .get(publisher)
            .map(|p| p.kind(kind).clone())
            .unwrap_or_default()
    }

    /// Whether `participantLeft` for `participant` with `reason` arrived.
    pub fn saw_left(&self, participant: &str, reason: &str) -> bool {
        self.left
            .iter()
            .any(|(p, r)| p == participant && r == reason)
    }

    /// Error code names received, in order.
    pub fn error_codes(&self) -> Vec<&str> {
        self.errors.iter().map(|e| e.code.as_str()).collect()
    }
}

// ----- Client ------------------------------------------------------------------------------

enum Command {
    Publish(Kind),
    Unpublish(Kind),
    Mute(Kind, bool),
    SendRaw(String),
    CutMedia,
    Loss { incoming: u32, outgoing: u32 },
    LossForGood(u32),
    Leave,
}

struct Shared {
    stats: Mutex<ClientStats>,
    changed: Notify,
}

impl Shared {
    fn update<R>(&self, f: impl FnOnce(&mut ClientStats) -> R) -> R {
        let mut stats = match self.stats.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut stats)
    }

    fn snapshot(&self) -> ClientStats {
        self.update(|s| s.clone())
    }
}

type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A black-box participant: signaling over WebSocket, media over one peer connection.
pub struct TestClient {
    participant_id: String,
    meeting: String,
    shared: Arc<Shared>,
    commands: mpsc::UnboundedSender<Command>,
    task: Option<JoinHandle<()>>,
    /// The signaling URL the client joined at (after redirects).
    url: String,
    /// The node ids of the redirects followed, in order.
    redirects: Vec<String>,
}

/// What a node answered to `join`.
enum JoinAnswer {
    Joined(Box<pb::JoinResponse>),
    Redirect(pb::Redirect),
}

/// Reads until the join response, a redirect or an error (pongs skipped).
async fn read_join_response(
    rx: &mut SplitStream<WebSocketStream<MaybeTlsStream<TcpStream>>>,
) -> Result<JoinAnswer, JoinError> {
    let transport = |e: &dyn std::fmt::Display| JoinError {
        code: "TRANSPORT".into(),
        message: e.to_string(),
        fatal: true,
    };
    tokio::time::timeout(JOIN_TIMEOUT, async {
        loop {
            match rx.next().await {
                None => break Err(transport(&"socket closed before the join response")),
                Some(Err(e)) => break Err(transport(&e)),
                Some(Ok(Message::Text(text))) => match decode(text.as_str()) {
                    Ok(S::Join(join)) => break Ok(JoinAnswer::Joined(Box::new(join))),
                    Ok(S::Redirect(r)) => break Ok(JoinAnswer::Redirect(r)),
                    Ok(S::Error(e)) => break Err(join_error(&e)),
                    Ok(S::Pong(_)) => continue,
                    Ok(other) => {
                        break Err(JoinError {
                            code: "PROTOCOL".into(),
                            message: format!("expected the join response, got {other:?}"),
                            fatal: true,
                        });
                    }
                    Err(e) => {
                        break Err(JoinError {
                            code: "PROTOCOL".into(),
                            message: e,
                            fatal: true,
                        });
                    }
                },
                Some(Ok(_)) => continue,
            }
        }
    })
    .await
    .map_err(|_| JoinError {
        code: "CLIENT_TIMEOUT".into(),
        message: format!("no join response within {JOIN_TIMEOUT:?}"),
        fatal: true,
    })?
}

impl TestClient {
    /// Joins `meeting` as `name` with a token granting everything but admin.
    pub async fn join(
        server: &TestServer,
        meeting: &str,
        name: &str,
        opts: ClientOptions,
    ) -> Result<TestClient, JoinError> {
        let identity = format!("{name}-{}", hearth_actors::ids::random_string(6));
        let token = server.token(meeting, &identity, Grants::default());
        Self::join_with_token(&server.ws_url(), &token, meeting, opts).await
    }

    /// Joins with an explicit token; `meeting` goes into `JoinRequest.meeting` (may be empty).
    pub async fn join_with_token(
        ws_url: &str,
        token: &str,
        meeting: &str,
        opts: ClientOptions,
    ) -> Result<TestClient, JoinError> {
        let transport = |e: &dyn std::fmt::Display| JoinError {
            code: "TRANSPORT".into(),
            message: e.to_string(),
            fatal: true,
        };
        // A node of a cluster that does not host the meeting answers `redirect`: follow it,
        // at most MAX_REDIRECTS times in a row, as the web client does.
        let mut url = ws_url.to_owned();
        let mut redirects = Vec::new();
        let (tx, rx, response) = loop {
            let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
                .await
                .map_err(|e| transport(&e))?;
            let (mut tx, mut rx) = ws.split();
            let join = C::Join(pb::JoinRequest {
                token: token.to_owned(),
                meeting: meeting.to_owned(),
                data_channels: false,
            });
            tx.send(encode(join)).await.map_err(|e| transport(&e))?;
            match read_join_response(&mut rx).await? {
                JoinAnswer::Joined(response) => break (tx, rx, *response),
                JoinAnswer::Redirect(r) => {
                    if redirects.len() >= MAX_REDIRECTS {
                        return Err(JoinError {
                            code: "TOO_MANY_REDIRECTS".into(),
                            message: format!("redirected {} times: {redirects:?}", redirects.len()),
                            fatal: true,
                        });
                    }
                    if !(r.url.starts_with("ws://") || r.url.starts_with("wss://")) {
                        return Err(JoinError {
                            code: "PROTOCOL".into(),
                            message: format!("redirect to a non-WebSocket URL `{}`", r.url),
                            fatal: true,
                        });
                    }
                    redirects.push(r.node_id.clone());
                    url = r.url;
                }
            }
        };
        Self::start_session(tx, rx, response, url, redirects, opts).await
    }

    async fn start_session(
        tx: SplitSink<WebSocketStream<MaybeTlsStream<TcpStream>>, Message>,
        rx: SplitStream<WebSocketStream<MaybeTlsStream<TcpStream>>>,
        response: pb::JoinResponse,
        url: String,
        redirects: Vec<String>,
        opts: ClientOptions,
    ) -> Result<TestClient, JoinError> {
        let transport = |e: &dyn std::fmt::Display| JoinError {
            code: "TRANSPORT".into(),
            message: e.to_string(),
            fatal: true,
        };
        let participant_id = response.participant_id.clone();
        let meeting_name = response
            .meeting
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default();
        let stats = ClientStats {
            participant_id: participant_id.clone(),
            meeting: meeting_name.clone(),
            meeting_started_at_ms: response.meeting.as_ref().map_or(0, |m| m.started_at_ms),
            meeting_metadata: response
                .meeting
                .as_ref()
                .map(|m| m.metadata.clone())
                .unwrap_or_default(),
            participants: response.others.iter().map(|p| p.id.clone()).collect(),
            captions: response.captions.clone(),
            ..ClientStats::default()
        };
        let shared = Arc::new(Shared {
            stats: Mutex::new(stats),
            changed: Notify::new(),
        });
        let socket = UdpSocket::bind("127.0.0.1:0")
            .await
            .map_err(|e| transport(&e))?;
        let local_addr = socket.local_addr().map_err(|e| transport(&e))?;
        let pc = new_peer_connection(local_addr, opts.accept_rtx).map_err(|e| transport(&e))?;
        let (commands, command_rx) = mpsc::unbounded_channel();
        let mut driver = Box::new(Driver {
            pc,
            socket,
            local_addr,
            ws_tx: tx,
            shared: Arc::clone(&shared),
            me: participant_id.clone(),
            have_local_offer: false,
            need_offer: false,
            negotiated: false,
            pending_candidates: Vec::new(),
            connected: false,
            audio: None,
            video: None,
            frame: 0,
            keyframe_due: true,
            tracks: HashMap::new(),
            last_seq: HashMap::new(),
            dirty: false,
            media_cut: false,
            loss: Loss::default(),
            video_is_screen: opts.screen,
        });
        if opts.publish_audio {
            driver.add_outgoing(Kind::Audio);
        }
        if opts.publish_video {
            driver.add_outgoing(Kind::Video);
        }
        let task = tokio::spawn(async move { driver.run(rx, command_rx).await });
        Ok(TestClient {
            participant_id,
            meeting: meeting_name,
            shared,
            commands,
            task: Some(task),
            url,
            redirects,
        })
    }

    /// The signaling URL this client joined at (the hosting node's, after redirects).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The node ids of the redirects followed to join, in order.
    pub fn redirects(&self) -> &[String] {
        &self.redirects
    }

    pub fn participant_id(&self) -> &str {
        &self.participant_id
    }

    pub fn meeting(&self) -> &str {
        &self.meeting
    }

    /// A snapshot of what the client has seen so far.
    pub fn stats(&self) -> ClientStats {
        self.shared.snapshot()
    }

    /// Starts publishing `kind` (adds a send-only transceiver and offers).
    pub async fn publish(&self, kind: Kind) {
        let _ = self.commands.send(Command::Publish(kind));
    }

    /// Withdraws our `kind` track (`unpublish`) and stops sending it.
    pub async fn unpublish(&self, kind: Kind) {
        let _ = self.commands.send(Command::Unpublish(kind));
    }

    /// Mutes or unmutes our `kind` track. Media keeps flowing from the client (as a browser
    /// sends silence); the server must stop forwarding it.
    pub async fn mute(&self, kind: Kind, muted: bool) {
        let _ = self.commands.send(Command::Mute(kind, muted));
    }

    /// Silently stops all UDP traffic of the client, both ways, as a client whose network
    /// died would; signaling (and its keep-alives) carries on.
    pub async fn cut_media(&self) {
        let _ = self.commands.send(Command::CutMedia);
    }

    /// Drops every `incoming`-th received video RTP datagram and every `outgoing`-th sent
    /// one (0 = none), as a lossy network would; the stacks' NACKs should repair it.
    pub async fn video_loss(&self, incoming: u32, outgoing: u32) {
        let _ = self.commands.send(Command::Loss { incoming, outgoing });
    }

    /// Drops every `incoming`-th received video RTP datagram and every retransmission of
    /// it (on the primary stream: this client takes no RTX), as a link whose queue stays
    /// full would: the NACKs never repair it.
    pub async fn video_loss_for_good(&self, incoming: u32) {
        let _ = self.commands.send(Command::LossForGood(incoming));
    }

    /// Turns the meeting's captions on or off (`setCaptions`; needs the captions grant).
    pub async fn set_captions(&self, enabled: bool, language: &str) {
        let msg = C::SetCaptions(pb::SetCaptionsRequest {
            enabled,
            language: language.to_owned(),
        });
        let msg = pb::ClientMessage { message: Some(msg) };
        let text = serde_json::to_string(&msg).expect("client messages serialize");
        let _ = self.commands.send(Command::SendRaw(text));
    }

    /// Sends one raw text frame on the signaling socket.
    pub async fn send_raw(&self, text: impl Into<String>) {
        let _ = self.commands.send(Command::SendRaw(text.into()));
    }

    /// Sends `leave`, closes the peer connection and ends the client.
    pub async fn leave(mut self) {
        let _ = self.commands.send(Command::Leave);
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }

    /// Waits until `cond` holds for the client's stats (re-checked on every change); panics
    /// with `what` and the last stats after `timeout`.
    pub async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        cond: impl Fn(&ClientStats) -> bool,
    ) -> ClientStats {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let stats = self.stats();
            if cond(&stats) {
                return stats;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let stats = self.stats();
                if cond(&stats) {
                    return stats;
                }
                panic!(
                    "{} ({}): timed out after {timeout:?} waiting for: {what}\nlast stats: {stats:#?}",
                    self.participant_id, self.meeting
                );
            }
        }
    }

    /// Waits until `n` more packets of `kind` from `publisher` than now have arrived.
    pub async fn wait_for_more(
        &self,
        publisher: &str,
        kind: Kind,
        n: u64,
        timeout: Duration,
    ) -> ClientStats {
        let start = self.stats().packets_from(publisher, kind);
        self.wait_until(
            &format!("{n} more {kind:?} packets from {publisher} (had {start})"),
            timeout,
            |s| s.packets_from(publisher, kind) >= start + n,
        )
        .await
    }

    /// Waits until at least `n` packets of `kind` from `publisher` have arrived in all.
    pub async fn wait_for_packets(
        &self,
        publisher: &str,
        kind: Kind,
        n: u64,
        timeout: Duration,
    ) -> ClientStats {
        self.wait_until(
            &format!("{n} {kind:?} packets from {publisher}"),
            timeout,
            |s| s.packets_from(publisher, kind) >= n,
        )
        .await
    }

    /// Waits until this client has received at least `audio` audio and `video` video packets
    /// from each of `publishers`.
    pub async fn wait_for_media_from(
        &self,
        publishers: &[&str],
        audio: u64,
        video: u64,
        timeout: Duration,
    ) -> ClientStats {
        self.wait_until(
            &format!("{audio} audio and {video} video packets from each of {publishers:?}"),
            timeout,
            |s| {
                publishers.iter().all(|p| {
                    s.packets_from(p, Kind::Audio) >= audio
                        && s.packets_from(p, Kind::Video) >= video
                })
            },
        )
        .await
    }
}

impl Drop for TestClient {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

fn join_error(e: &pb::Error) -> JoinError {
    JoinError {
        code: error_code_name(e.code),
        message: e.message.clone(),
        fatal: e.fatal,
    }
}

fn error_code_name(code: i32) -> String {
    pb::ErrorCode::try_from(code)
        .map(|c| c.as_str_name().to_owned())
        .unwrap_or_else(|_| format!("UNKNOWN_CODE_{code}"))
}

/// Encodes a client message as a text frame.
pub fn encode(message: C) -> Message {
    let msg = pb::ClientMessage {
        message: Some(message),
    };
    // Serializing generated message types to JSON cannot fail.
    Message::text(serde_json::to_string(&msg).expect("client messages serialize"))
}

/// Decodes a server text frame.
pub fn decode(text: &str) -> Result<S, String> {
    let msg: pb::ServerMessage = serde_json::from_str(text)
        .map_err(|e| format!("undecodable server message: {e}: {text}"))?;
    msg.message
        .ok_or_else(|| format!("empty server message: {text}"))
}

// ----- Client: the driver task -------------------------------------------------------------

/// One of our outgoing streams.
struct Outgoing {
    sender: RTCRtpSenderId,
    ssrc: u32,
    seq: u16,
    timestamp: u32,
    /// The payload type negotiated for our codec (None until negotiated).
    payload_type: Option<u8>,
    mime: &'static str,
    /// False once unpublished.
    sending: bool,
}

/// The mids of an SDP's sending m-lines of `kind` (`audio` or `video`).
pub fn sending_mids(sdp: &str, kind: &str) -> Vec<String> {
    let mut out = Vec::new();
    for section in sdp.split("\nm=").skip(1) {
        if !section.starts_with(kind) {
            continue;
        }
        let sends = section
            .lines()
            .any(|l| matches!(l.trim(), "a=sendonly" | "a=sendrecv"));
        let mid = section
            .lines()
            .find_map(|l| l.trim().strip_prefix("a=mid:"))
            .map(str::to_owned);
        if let (true, Some(mid)) = (sends, mid) {
            out.push(mid);
        }
    }
    out
}

struct Driver {
    pc: RTCPeerConnection,
    socket: UdpSocket,
    local_addr: SocketAddr,
    ws_tx: SplitSink<WsStream, Message>,
    shared: Arc<Shared>,
    me: String,
    /// Our offer waits for the server's answer.
    have_local_offer: bool,
    /// We have changes to offer once signaling is stable.
    need_offer: bool,
    /// A remote description has been applied at least once.
    negotiated: bool,
    /// Our candidates, trickled once the server has a description of ours to attach them to.
    pending_candidates: Vec<RTCIceCandidateInit>,
    connected: bool,
    audio: Option<Outgoing>,
    video: Option<Outgoing>,
    frame: u64,
    keyframe_due: bool,
    /// Receiver track id -> (publisher participant id, kind).
    tracks: HashMap<String, (String, Kind)>,
    /// Last sequence number per received SSRC.
    last_seq: HashMap<u32, u16>,
    /// Stats changed since the last notification.
    dirty: bool,
    /// UDP is dropped both ways (see [`TestClient::cut_media`]).
    media_cut: bool,
    /// Simulated video loss (see [`TestClient::video_loss`]).
    loss: Loss,
    /// Our video is declared a screen share in our offers.
    video_is_screen: bool,
}

#[derive(Default)]
struct Loss {
    incoming: u32,
    outgoing: u32,
    seen_in: u32,
    seen_out: u32,
    /// SSRCs on which we receive video.
    video_in: std::collections::HashSet<u32>,
    /// Every retransmission of a lost packet is lost too (a queue that stays full).
    for_good: bool,
    /// (SSRC, sequence number) of the packets lost for good.
    lost: std::collections::HashSet<(u32, u16)>,
}

/// The SSRC of an (S)RTP datagram (the header is not encrypted), None for anything else.
fn rtp_ssrc(data: &[u8]) -> Option<u32> {
    if data.len() < 12 || data[0] >> 6 != 2 || (192..=223).contains(&data[1]) {
        return None;
    }
    Some(u32::from_be_bytes([data[8], data[9], data[10], data[11]]))
}

impl Driver {
    async fn run(
        &mut self,
        mut ws_rx: SplitStream<WsStream>,
        mut commands: mpsc::UnboundedReceiver<Command>,
    ) {
        let mut audio_tick = tokio::time::interval(AUDIO_INTERVAL);
        audio_tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let mut video_tick = tokio::time::interval(VIDEO_INTERVAL);
        video_tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let mut ping_tick = tokio::time::interval(PING_INTERVAL);
        ping_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ping_tick.tick().await;
        let mut buf = vec![0u8; 2048];
        if self.audio.is_some() || self.video.is_some() {
            self.need_offer = true;
        }
        self.maybe_offer().await;
        self.pump().await;
        loop {
            let now = Instant::now();
            if self.pc.poll_timeout().is_some_and(|t| t <= now) {
                let _ = self.pc.handle_timeout(now);
                self.pump().await;
            }
            // At least a millisecond, so a deadline the stack keeps in the past cannot spin.
            let timeout = self
                .pc
                .poll_timeout()
                .unwrap_or(now + Duration::from_secs(1))
                .max(now + Duration::from_millis(1));
            tokio::select! {
                frame = ws_rx.next() => {
                    match frame {
                        Some(Ok(Message::Text(text))) => self.on_signal(text.as_str()).await,
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                            self.shared.update(|s| s.closed = true);
                            self.dirty = true;
                            break;
                        }
                        Some(Ok(_)) => {}
                    }
                }
                command = commands.recv() => {
                    let Some(command) = command else { break };
                    if !self.on_command(command).await {
                        break;
                    }
                }
                received = self.socket.recv_from(&mut buf) => {
                    if let (Ok((n, from)), false) = (received, self.media_cut)
                        && !self.lose_incoming(&buf[..n])
                    {
                        let msg = TaggedBytesMut {
                            now: Instant::now(),
                            transport: TransportContext {
                                local_addr: self.local_addr,
                                peer_addr: from,
                                ecn: None,
                                transport_protocol: TransportProtocol::UDP,
                            },
                            message: BytesMut::from(&buf[..n]),
                        };
                        let _ = self.pc.handle_read(msg);
                    }
                }
                _ = audio_tick.tick() => self.send_audio(),
                _ = video_tick.tick() => self.send_video(),
                _ = ping_tick.tick() => {
                    let _ = self.ws_tx.send(encode(C::Ping(pb::Ping { timestamp: 0 }))).await;
                }
                _ = tokio::time::sleep_until(timeout.into()) => {
                    let _ = self.pc.handle_timeout(Instant::now());
                }
            }
            self.pump().await;
            self.notify();
        }
        let _ = self.pc.close();
        self.pump().await;
        self.notify();
    }

    /// True if this received datagram is to be lost.
    fn lose_incoming(&mut self, data: &[u8]) -> bool {
        let loss = &mut self.loss;
        let Some(ssrc) = rtp_ssrc(data) else {
            return false;
        };
        if loss.incoming == 0 || !loss.video_in.contains(&ssrc) {
            return false;
        }
        let seq = u16::from_be_bytes([data[2], data[3]]);
        if loss.for_good && loss.lost.contains(&(ssrc, seq)) {
            self.shared.update(|s| s.lost_in += 1);
            return true;
        }
        loss.seen_in += 1;
        let lose = loss.seen_in.is_multiple_of(loss.incoming);
        if lose {
            if loss.for_good {
                loss.lost.insert((ssrc, seq));
            }
            self.shared.update(|s| s.lost_in += 1);
        }
        lose
    }

    /// True if this datagram we send is to be lost.
    fn lose_outgoing(&mut self, data: &[u8]) -> bool {
        let loss = &mut self.loss;
        let video = self.video.as_ref().map(|v| v.ssrc);
        if loss.outgoing == 0 || rtp_ssrc(data).is_none() || rtp_ssrc(data) != video {
            return false;
        }
        loss.seen_out += 1;
        let lose = loss.seen_out.is_multiple_of(loss.outgoing);
        if lose {
            self.shared.update(|s| s.lost_out += 1);
        }
        lose
    }

    fn notify(&mut self) {
        if std::mem::take(&mut self.dirty) {
            self.shared.changed.notify_waiters();
        }
    }

    /// Drains the peer connection: events, received media, datagrams to send.
    async fn pump(&mut self) {
        loop {
            let mut progressed = false;
            while let Some(event) = self.pc.poll_event() {
                progressed = true;
                self.on_pc_event(event);
            }
            while let Some(msg) = self.pc.poll_read() {
                progressed = true;
                match msg.message {
                    RTCMessage::RtpPacket(track_id, packet) => self.on_rtp(&track_id, &packet),
                    RTCMessage::RtcpPacket(_, packets) => self.on_rtcp(&packets),
                    _ => {}
                }
            }
            while let Some(out) = self.pc.poll_write() {
                progressed = true;
                if self.media_cut || self.lose_outgoing(&out.message) {
                    continue;
                }
                let _ = self
                    .socket
                    .send_to(&out.message, out.transport.peer_addr)
                    .await;
            }
            if !progressed {
                break;
            }
        }
        if self.negotiated && !self.pending_candidates.is_empty() {
            for c in std::mem::take(&mut self.pending_candidates) {
                let msg = C::Trickle(pb::IceCandidate {
                    candidate: c.candidate,
                    sdp_mid: c.sdp_mid.unwrap_or_default(),
                    sdp_m_line_index: u32::from(c.sdp_mline_index.unwrap_or(0)),
                    username_fragment: c.username_fragment.unwrap_or_default(),
                });
                let _ = self.ws_tx.send(encode(msg)).await;
            }
        }
    }

    fn on_pc_event(&mut self, event: RTCPeerConnectionEvent) {
        match event {
            RTCPeerConnectionEvent::OnIceCandidateEvent(ev) => {
                if let Ok(init) = ev.candidate.to_json() {
                    self.pending_candidates.push(init);
                }
            }
            RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) => match state {
                RTCPeerConnectionState::Connected => {
                    self.connected = true;
                    self.keyframe_due = true;
                    self.shared.update(|s| s.connected = true);
                    self.dirty = true;
                }
                RTCPeerConnectionState::Failed => {
                    self.connected = false;
                    self.shared.update(|s| {
                        s.connected = false;
                        s.negotiation_failures.push("peer connection failed".into());
                    });
                    self.dirty = true;
                }
                RTCPeerConnectionState::Closed | RTCPeerConnectionState::Disconnected => {
                    self.connected = false;
                    self.shared.update(|s| s.connected = false);
                    self.dirty = true;
                }
                _ => {}
            },
            RTCPeerConnectionEvent::OnIceConnectionStateChangeEvent(
                RTCIceConnectionState::Failed,
            ) => {
                self.shared
                    .update(|s| s.negotiation_failures.push("ICE failed".into()));
                self.dirty = true;
            }
            RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init)) => {
                let kind = self
                    .pc
                    .rtp_receiver(init.receiver_id)
                    .and_then(|r| Kind::from_rtc(r.track().kind()));
                if let (Some(kind), Some(stream)) = (kind, init.stream_ids.first()) {
                    self.tracks.insert(init.track_id, (stream.clone(), kind));
                }
                self.shared.update(|s| s.tracks_opened += 1);
                self.dirty = true;
            }
            _ => {}
        }
    }

    /// Finds the publisher and kind of a received track (the open event and the first
    /// packet travel in separate queues, so the packet may come first).
    fn resolve_track(&mut self, track_id: &str) -> Option<(String, Kind)> {
        if let Some(found) = self.tracks.get(track_id) {
            return Some(found.clone());
        }
        let receivers: Vec<_> = self.pc.get_receivers().collect();
        for id in receivers {
            let Some(receiver) = self.pc.rtp_receiver(id) else {
                continue;
            };
            let track = receiver.track();
            if track.track_id() == track_id
                && let Some(kind) = Kind::from_rtc(track.kind())
            {
                let found = (track.stream_id().clone(), kind);
                self.tracks.insert(track_id.to_owned(), found.clone());
                return Some(found);
            }
        }
        None
    }

    fn on_rtp(&mut self, track_id: &str, packet: &rtp::Packet) {
        self.dirty = true;
        let Some((publisher, kind)) = self.resolve_track(track_id) else {
            self.shared.update(|s| s.unmapped_packets += 1);
            return;
        };
        let ssrc = packet.header.ssrc;
        let seq = packet.header.sequence_number;
        // Classify against the last packet of this SSRC.
        enum Order {
            First,
            Next(u16),
            Duplicate,
            Late,
        }
        let order = match self.last_seq.get(&ssrc) {
            None => Order::First,
            Some(&last) => {
                let step = seq.wrapping_sub(last);
                if step == 0 {
                    Order::Duplicate
                } else if step < 0x8000 {
                    Order::Next(step)
                } else {
                    Order::Late
                }
            }
        };
        if matches!(order, Order::First | Order::Next(_)) {
            self.last_seq.insert(ssrc, seq);
        }
        if kind == Kind::Video {
            self.loss.video_in.insert(ssrc);
        }
        let keyframe = kind == Kind::Video && vp8_starts_keyframe(&packet.payload);
        let len = packet.payload.len() as u64;
        self.shared.update(|s| {
            let from = s.from.entry(publisher).or_default();
            let stream = match kind {
                Kind::Audio => &mut from.audio,
                Kind::Video => &mut from.video,
            };
            let now = Instant::now();
            if stream.first_is_keyframe.is_none() {
                stream.first_is_keyframe = Some(keyframe);
            }
            if stream
                .last_at
                .is_some_and(|t| now.duration_since(t) >= RESUME_AFTER)
            {
                stream.resumes.push(keyframe);
            }
            stream.last_at = Some(now);
            stream.packets += 1;
            stream.bytes += len;
            stream.ssrcs.insert(ssrc);
            if keyframe {
                stream.keyframes += 1;
            }
            match order {
                Order::First => stream.last_seq = Some(seq),
                Order::Next(step) => {
                    stream.last_seq = Some(seq);
                    stream.max_step = stream.max_step.max(step);
                    if step > 1 {
                        stream.gaps += 1;
                        stream.lost += u64::from(step - 1);
                    }
                }
                Order::Duplicate => stream.duplicates += 1,
                Order::Late => stream.reordered += 1,
            }
        });
    }

    fn on_rtcp(&mut self, packets: &[Box<dyn rtcp::Packet>]) {
        use rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
        use rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
        use rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
        let video_ssrc = self.video.as_ref().map(|v| v.ssrc);
        for packet in packets {
            let any = (**packet).as_any();
            let keyframe_request = if let Some(pli) = any.downcast_ref::<PictureLossIndication>() {
                Some(pli.media_ssrc)
            } else if let Some(fir) = any.downcast_ref::<FullIntraRequest>() {
                fir.fir.first().map(|e| e.ssrc)
            } else {
                if any.downcast_ref::<TransportLayerNack>().is_some() {
                    self.shared.update(|s| s.nacks_received += 1);
                    self.dirty = true;
                }
                None
            };
            if let Some(ssrc) = keyframe_request
                && Some(ssrc) == video_ssrc
            {
                self.keyframe_due = true;
                self.shared.update(|s| s.plis_received += 1);
                self.dirty = true;
            }
        }
    }

    async fn on_signal(&mut self, text: &str) {
        self.dirty = true;
        let message = match decode(text) {
            Ok(m) => m,
            Err(e) => {
                self.shared.update(|s| s.protocol_errors.push(e));
                return;
            }
        };
        match message {
            S::Offer(desc) => self.on_remote_offer(desc.sdp).await,
            S::Answer(desc) => self.on_remote_answer(desc.sdp),
            S::Trickle(c) => {
                let result = self.pc.add_remote_candidate(RTCIceCandidateInit {
                    candidate: c.candidate,
                    sdp_mid: (!c.sdp_mid.is_empty()).then_some(c.sdp_mid),
                    sdp_mline_index: u16::try_from(c.sdp_m_line_index).ok(),
                    username_fragment: (!c.username_fragment.is_empty())
                        .then_some(c.username_fragment),
                    ..Default::default()
                });
                self.shared.update(|s| {
                    s.candidates_received += 1;
                    if result.is_err() {
                        s.candidate_errors += 1;
                    }
                });
            }
            S::Pong(_) => self.shared.update(|s| s.pongs += 1),
            S::ActiveSpeakers(_) => self.shared.update(|s| s.active_speakers += 1),
            other => {
                let me = self.me.clone();
                self.shared.update(|s| record_event(s, &me, other));
            }
        }
        self.maybe_offer().await;
    }

    async fn on_remote_offer(&mut self, sdp: String) {
        self.shared.update(|s| s.offers_received += 1);
        if self.have_local_offer {
            // Polite peer: our offer crossed the server's. Roll back, answer, offer again.
            let rolled_back = RTCSessionDescription::rollback(None)
                .map_err(|e| e.to_string())
                .and_then(|r| {
                    self.pc
                        .set_local_description(Instant::now(), r)
                        .map_err(|e| e.to_string())
                });
            self.have_local_offer = false;
            self.need_offer = true;
            match rolled_back {
                Ok(()) => self.shared.update(|s| s.rollbacks += 1),
                Err(e) => self.fail(format!("rollback failed: {e}")),
            }
        }
        let ufrag = ice_ufrag(&sdp);
        let applied = RTCSessionDescription::offer(sdp)
            .map_err(|e| format!("server offer does not parse: {e}"))
            .and_then(|offer| {
                self.pc
                    .set_remote_description(Instant::now(), offer)
                    .map_err(|e| format!("server offer does not apply: {e}"))
            })
            .and_then(|()| {
                self.pc
                    .create_answer(None)
                    .map_err(|e| format!("cannot answer the server offer: {e}"))
            })
            .and_then(|answer| {
                let sdp = answer.sdp.clone();
                self.pc
                    .set_local_description(Instant::now(), answer)
                    .map(|()| sdp)
                    .map_err(|e| format!("cannot apply our answer: {e}"))
            });
        match applied {
            Ok(answer) => {
                self.after_negotiation(ufrag, false);
                let msg = C::Answer(pb::SessionDescription {
                    sources: HashMap::new(),
                    r#type: "answer".into(),
                    sdp: answer,
                });
                let _ = self.ws_tx.send(encode(msg)).await;
            }
            Err(e) => self.fail(e),
        }
    }

    fn on_remote_answer(&mut self, sdp: String) {
        self.shared.update(|s| s.answers_received += 1);
        if !self.have_local_offer {
            self.fail("an answer arrived with no offer of ours outstanding".into());
            return;
        }
        let ufrag = ice_ufrag(&sdp);
        let applied = RTCSessionDescription::answer(sdp)
            .map_err(|e| format!("server answer does not parse: {e}"))
            .and_then(|answer| {
                self.pc
                    .set_remote_description(Instant::now(), answer)
                    .map_err(|e| format!("server answer does not apply: {e}"))
            });
        self.have_local_offer = false;
        match applied {
            Ok(()) => self.after_negotiation(ufrag, true),
            Err(e) => self.fail(e),
        }
    }

    /// After a remote description applied. Our send streams are negotiated once the server
    /// answered an offer of ours that carried them (`our_offer`); a server offer does not
    /// change them.
    fn after_negotiation(&mut self, ufrag: Option<String>, our_offer: bool) {
        self.negotiated = true;
        if let Some(ufrag) = ufrag {
            self.shared.update(|s| s.server_ufrag = Some(ufrag));
        }
        if !our_offer {
            return;
        }
        for out in [self.audio.as_mut(), self.video.as_mut()]
            .into_iter()
            .flatten()
        {
            if let Some(mut sender) = self.pc.rtp_sender(out.sender) {
                out.payload_type = sender
                    .get_parameters()
                    .rtp_parameters
                    .codecs
                    .iter()
                    .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(out.mime))
                    .map(|c| c.payload_type);
            }
        }
        self.keyframe_due = true;
    }

    fn fail(&mut self, why: String) {
        self.shared.update(|s| s.negotiation_failures.push(why));
        self.dirty = true;
    }

    /// Sends our offer if we have changes and signaling is stable.
    async fn maybe_offer(&mut self) {
        if !self.need_offer || self.have_local_offer {
            return;
        }
        self.need_offer = false;
        let offer = self
            .pc
            .create_offer(None)
            .map_err(|e| format!("cannot create an offer: {e}"))
            .and_then(|offer| {
                let sdp = offer.sdp.clone();
                self.pc
                    .set_local_description(Instant::now(), offer)
                    .map(|()| sdp)
                    .map_err(|e| format!("cannot apply our offer: {e}"))
            });
        match offer {
            Ok(sdp) => {
                self.have_local_offer = true;
                self.shared.update(|s| s.offers_sent += 1);
                let mut sources = HashMap::new();
                if self.video_is_screen {
                    for mid in sending_mids(&sdp, "video") {
                        sources.insert(mid, pb::TrackSource::Screen as i32);
                    }
                }
                let msg = C::Offer(pb::SessionDescription {
                    r#type: "offer".into(),
                    sdp,
                    sources,
                });
                let _ = self.ws_tx.send(encode(msg)).await;
            }
            Err(e) => self.fail(e),
        }
    }

    /// Adds a send-only transceiver for `kind` (never `add_track`, which could take over one
    /// of the server's receive m-lines).
    fn add_outgoing(&mut self, kind: Kind) {
        let (rtc_kind, codec, mime) = match kind {
            Kind::Audio => (RtpCodecKind::Audio, opus(), MIME_TYPE_OPUS),
            Kind::Video => (RtpCodecKind::Video, vp8(), MIME_TYPE_VP8),
        };
        let ssrc: u32 = rand::random();
        let stream_id = format!("stream-{}", self.me);
        let track_id = format!("{}-{kind:?}", self.me).to_ascii_lowercase();
        let added = add_send_only(&mut self.pc, &stream_id, &track_id, rtc_kind, codec, ssrc)
            .map_err(|e| e.to_string())
            .and_then(|t| {
                self.pc
                    .rtp_transceiver(t)
                    .and_then(|t| t.sender())
                    .ok_or_else(|| "new transceiver has no sender".to_owned())
            });
        match added {
            Ok(sender) => {
                let out = Outgoing {
                    sender,
                    ssrc,
                    seq: rand::random(),
                    timestamp: rand::random(),
                    payload_type: None,
                    mime,
                    sending: true,
                };
                match kind {
                    Kind::Audio => self.audio = Some(out),
                    Kind::Video => self.video = Some(out),
                }
                self.need_offer = true;
            }
            Err(e) => self.fail(format!("cannot add a {kind:?} transceiver: {e}")),
        }
    }

    /// Handles a test's command; false ends the client.
    async fn on_command(&mut self, command: Command) -> bool {
        self.dirty = true;
        match command {
            Command::Publish(kind) => {
                self.add_outgoing(kind);
                self.maybe_offer().await;
            }
            Command::Unpublish(kind) => {
                let track = self.shared.update(|s| s.own_tracks.get(&kind).cloned());
                let out = match kind {
                    Kind::Audio => self.audio.as_mut(),
                    Kind::Video => self.video.as_mut(),
                };
                if let Some(out) = out {
                    out.sending = false;
                }
                match track {
                    Some(track_id) => {
                        let msg = C::Unpublish(pb::UnpublishTrackRequest { track_id });
                        let _ = self.ws_tx.send(encode(msg)).await;
                    }
                    None => self.fail(format!("unpublish {kind:?}: no such track of ours")),
                }
            }
            Command::Mute(kind, muted) => {
                let track = self.shared.update(|s| s.own_tracks.get(&kind).cloned());
                match track {
                    Some(track_id) => {
                        let msg = C::Mute(pb::MuteTrackRequest { track_id, muted });
                        let _ = self.ws_tx.send(encode(msg)).await;
                    }
                    None => self.fail(format!("mute {kind:?}: no such track of ours")),
                }
            }
            Command::CutMedia => self.media_cut = true,
            Command::Loss { incoming, outgoing } => {
                self.loss.incoming = incoming;
                self.loss.outgoing = outgoing;
                self.loss.for_good = false;
            }
            Command::LossForGood(incoming) => {
                self.loss.incoming = incoming;
                self.loss.for_good = true;
            }
            Command::SendRaw(text) => {
                let _ = self.ws_tx.send(Message::text(text)).await;
            }
            Command::Leave => {
                let _ = self.ws_tx.send(encode(C::Leave(pb::LeaveRequest {}))).await;
                let _ = self.ws_tx.close().await;
                return false;
            }
        }
        true
    }

    fn send_audio(&mut self) {
        if !self.connected {
            return;
        }
        let Some(out) = self.audio.as_mut() else {
            return;
        };
        let (true, Some(pt)) = (out.sending, out.payload_type) else {
            return;
        };
        let mut payload = vec![0u8; AUDIO_PAYLOAD];
        // An Opus TOC byte (CELT-only, fullband, 20 ms, stereo), then filler: the server
        // forwards Opus without decoding it.
        payload[0] = 0xFC;
        payload[1..].fill(out.seq as u8);
        let packet = rtp_packet(out, pt, true, Bytes::from(payload));
        out.seq = out.seq.wrapping_add(1);
        out.timestamp = out.timestamp.wrapping_add(960);
        let sender = out.sender;
        let ok = self
            .pc
            .rtp_sender(sender)
            .is_some_and(|mut s| s.write_rtp(Instant::now(), packet).is_ok());
        self.shared.update(|s| {
            if ok {
                s.audio_sent += 1;
            } else {
                s.send_errors += 1;
            }
        });
        self.dirty = true;
    }

    fn send_video(&mut self) {
        if !self.connected {
            return;
        }
        let keyframe = self.keyframe_due || self.frame.is_multiple_of(KEYFRAME_EVERY);
        let frame = self.frame;
        let Some(out) = self.video.as_mut() else {
            return;
        };
        let (true, Some(pt)) = (out.sending, out.payload_type) else {
            return;
        };
        let payloads = vp8_frame(frame, keyframe);
        let count = payloads.len();
        let mut packets = Vec::with_capacity(count);
        for (i, payload) in payloads.into_iter().enumerate() {
            packets.push(rtp_packet(out, pt, i + 1 == count, payload));
            out.seq = out.seq.wrapping_add(1);
        }
        out.timestamp = out.timestamp.wrapping_add(3000);
        let sender = out.sender;
        let mut ok = true;
        if let Some(mut s) = self.pc.rtp_sender(sender) {
            for packet in packets {
                ok &= s.write_rtp(Instant::now(), packet).is_ok();
            }
        } else {
            ok = false;
        }
        self.frame += 1;
        if keyframe {
            self.keyframe_due = false;
        }
        self.shared.update(|s| {
            if ok {
                s.video_frames_sent += 1;
                if keyframe {
                    s.keyframes_sent += 1;
                }
            } else {
                s.send_errors += 1;
            }
        });
        self.dirty = true;
    }
}

fn record_event(s: &mut ClientStats, me: &str, message: S) {
    let track_event = |participant: String, track: String, kind: Option<Kind>| TrackEvent {
        participant,
        track,
        kind,
    };
    match message {
        S::Transcript(t) => {
            s.events.push(format!(
                "transcript {} {} final={}",
                t.participant_id, t.segment_id, t.r#final
            ));
            s.transcripts.push(t);
        }
        S::Captions(c) => {
            s.events.push(format!("captions {}", c.enabled));
            s.captions = Some(c);
        }
        S::PublishLayers(l) => {
            // This client publishes no simulcast: recorded, nothing to change.
            s.events.push(format!(
                "publishLayers {} {:?}",
                l.track_id, l.paused_layers
            ));
        }
        S::ParticipantJoined(j) => {
            let id = j.participant.map(|p| p.id).unwrap_or_default();
            s.events.push(format!("participantJoined {id}"));
            s.participants.insert(id.clone());
            s.joined.push(id);
        }
        S::ParticipantLeft(l) => {
            s.events
                .push(format!("participantLeft {} {}", l.participant_id, l.reason));
            s.participants.remove(&l.participant_id);
            s.left.push((l.participant_id, l.reason));
        }
        S::TrackPublished(t) => {
            let track = t.track.unwrap_or_default();
            let kind = Kind::from_wire(track.kind);
            s.events.push(format!(
                "trackPublished {} {} {kind:?}",
                t.participant_id, track.id
            ));
            if t.participant_id == me
                && let Some(kind) = kind
            {
                s.own_tracks.insert(kind, track.id.clone());
            }
            s.tracks_published
                .push(track_event(t.participant_id, track.id, kind));
        }
        S::TrackUnpublished(t) => {
            s.events.push(format!(
                "trackUnpublished {} {}",
                t.participant_id, t.track_id
            ));
            s.tracks_unpublished
                .push(track_event(t.participant_id, t.track_id, None));
        }
        S::TrackMuted(t) => {
            s.events.push(format!(
                "trackMuted {} {} {}",
                t.participant_id, t.track_id, t.muted
            ));
            s.tracks_muted
                .push((track_event(t.participant_id, t.track_id, None), t.muted));
        }
        S::MeetingEnded(e) => {
            s.events.push(format!("meetingEnded {}", e.reason));
            s.meeting_ended = Some(e.reason);
        }
        S::Error(e) => {
            let code = error_code_name(e.code);
            s.events.push(format!("error {code}"));
            s.errors.push(ServerError {
                code,
                message: e.message,
                fatal: e.fatal,
            });
        }
        S::Reconnect(r) => {
            s.events.push(format!("reconnect {}", r.reason));
            s.reconnect = Some(r.reason);
        }
        S::NodeDraining(d) => {
            s.events
                .push(format!("nodeDraining {}", d.deadline_seconds));
            s.draining = Some(d.deadline_seconds);
        }
        S::AppMessage(m) => {
            s.events.push(format!("appMessage {}", m.id));
            s.app_messages.push(m);
        }
        S::MeetingUpdated(m) => {
            s.events.push("meetingUpdated".into());
            s.meeting_metadata = m.metadata;
            s.meeting_updates += 1;
        }
        S::Join(_) => s
            .protocol_errors
            .push("a second join response arrived".into()),
        S::Redirect(r) => s
            .protocol_errors
            .push(format!("a redirect to {} after the join", r.url)),
        S::Offer(_) | S::Answer(_) | S::Trickle(_) | S::Pong(_) | S::ActiveSpeakers(_) => {}
    }
}

fn rtp_packet(out: &Outgoing, payload_type: u8, marker: bool, payload: Bytes) -> rtp::Packet {
    rtp::Packet {
        header: rtp::Header {
            version: 2,
            marker,
            payload_type,
            sequence_number: out.seq,
            timestamp: out.timestamp,
            ssrc: out.ssrc,
            ..Default::default()
        },
        payload,
    }
}

/// One VP8 frame as 1–3 RTP payloads: an RFC 7741 payload descriptor (`0x10` = start of
/// partition 0, `0x00` = continuation), then on the first packet the VP8 frame tag, whose
/// lowest bit P is 0 for a keyframe (followed by the keyframe start code and a 640x480 size).
pub fn vp8_frame(frame: u64, keyframe: bool) -> Vec<Bytes> {
    let (count, size) = if keyframe {
        (3, 1000)
    } else {
        (1 + (frame % 2) as usize, 400)
    };
    (0..count)
        .map(|i| {
            let mut p = Vec::with_capacity(size);
            if i == 0 {
                p.push(0x10);
                if keyframe {
                    p.extend_from_slice(&[
                        0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01,
                    ]);
                } else {
                    p.extend_from_slice(&[0x11, 0x02, 0x00]);
                }
            } else {
                p.push(0x00);
            }
            p.resize(size, (frame as u8) ^ (i as u8));
            Bytes::from(p)
        })
        .collect()
}

/// True if a VP8 RTP payload starts a keyframe (descriptor without extensions, as we send).
fn vp8_starts_keyframe(payload: &[u8]) -> bool {
    match payload {
        [d, tag, ..] => d & 0x80 == 0 && d & 0x10 != 0 && d & 0x07 == 0 && tag & 0x01 == 0,
        _ => false,
    }
}

fn ice_ufrag(sdp: &str) -> Option<String> {
    sdp.lines()
        .find_map(|l| l.trim().strip_prefix("a=ice-ufrag:"))
        .map(str::to_owned)
}

/// The Opus codec the test client registers.
pub fn opus() -> RTCRtpCodecParameters {
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: MIME_TYPE_OPUS.to_owned(),
            clock_rate: 48_000,
            channels: 2,
            sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
            rtcp_feedback: vec![],
        },
        payload_type: OPUS_PT,
    }
}

/// The VP8 codec the test client registers.
pub fn vp8() -> RTCRtpCodecParameters {
    let fb = |typ: &str, parameter: &str| RTCPFeedback {
        typ: typ.to_owned(),
        parameter: parameter.to_owned(),
    };
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: MIME_TYPE_VP8.to_owned(),
            clock_rate: 90_000,
            channels: 0,
            sdp_fmtp_line: String::new(),
            rtcp_feedback: vec![fb("ccm", "fir"), fb("nack", ""), fb("nack", "pli")],
        },
        payload_type: VP8_PT,
    }
}

/// RTX for VP8 (RFC 4588): the test client accepts the server's retransmissions on their
/// own stream (and `rtc` puts them back into the VP8 stream).
pub fn vp8_rtx() -> RTCRtpCodecParameters {
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: MIME_TYPE_RTX.to_owned(),
            clock_rate: 90_000,
            channels: 0,
            sdp_fmtp_line: format!("apt={VP8_PT}"),
            rtcp_feedback: vec![],
        },
        payload_type: VP8_RTX_PT,
    }
}

/// Adds a send-only transceiver carrying one stream (`ssrc`, `codec`) of MediaStream
/// `stream_id` to `pc`: how the test client publishes, and how in-memory tests do.
pub fn add_send_only(
    pc: &mut RTCPeerConnection,
    stream_id: &str,
    track_id: &str,
    kind: RtpCodecKind,
    codec: RTCRtpCodecParameters,
    ssrc: u32,
) -> Result<rtc::rtp_transceiver::RTCRtpTransceiverId, rtc::shared::error::Error> {
    let track = MediaStreamTrack::new(
        stream_id.to_owned(),
        track_id.to_owned(),
        track_id.to_owned(),
        kind,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            codec: codec.rtp_codec,
            active: true,
            ..Default::default()
        }],
    );
    pc.add_transceiver_from_track(
        track,
        Some(RTCRtpTransceiverInit {
            direction: RTCRtpTransceiverDirection::Sendonly,
            streams: vec![stream_id.to_owned()],
            send_encodings: vec![],
        }),
    )
}

/// The test client's peer connection (see [`new_peer_connection`]), for benchmarks that
/// drive a Hearth peer in memory.
pub fn rtc_client(local_addr: SocketAddr) -> Result<RTCPeerConnection, String> {
    new_peer_connection(local_addr, false)
}

/// A peer connection with Opus and VP8 (and RTX for it with `rtx`), the default
/// interceptors, one host candidate at `local_addr`, and inbound PLI/FIR/NACK delivered to
/// us.
fn new_peer_connection(local_addr: SocketAddr, rtx: bool) -> Result<RTCPeerConnection, String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let mut media_engine = MediaEngine::default();
    media_engine
        .register_codec(opus(), RtpCodecKind::Audio)
        .map_err(|e| err(&e))?;
    media_engine
        .register_codec(vp8(), RtpCodecKind::Video)
        .map_err(|e| err(&e))?;
    if rtx {
        media_engine
            .register_codec(vp8_rtx(), RtpCodecKind::Video)
            .map_err(|e| err(&e))?;
    }
    let registry = Registry::new().with(Slot::from(14_000), DeliverRtcp::default());
    let registry =
        register_default_interceptors(registry, &mut media_engine).map_err(|e| err(&e))?;
    let mut pc = RTCPeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_media_engine(media_engine)
        .with_interceptor_registry(registry)
        .build(Instant::now())
        .map_err(|e| err(&e))?;
    let candidate = CandidateHostConfig {
        base_config: CandidateConfig {
            network: "udp".to_owned(),
            address: local_addr.ip().to_string(),
            port: local_addr.port(),
            component: 1,
            ..Default::default()
        },
        ..Default::default()
    }
    .new_candidate_host()
    .map_err(|e| err(&e))?;
    let init = RTCIceCandidate::from(&candidate)
        .to_json()
        .map_err(|e| err(&e))?;
    pc.add_local_candidate(init).map_err(|e| err(&e))?;
    Ok(pc)
}

// ----- Raw signaling -----------------------------------------------------------------------

/// A bare signaling socket for feeding the server malformed or hostile input.
pub struct RawSignal {
    ws: WsStream,
}

impl RawSignal {
    pub async fn connect(server: &TestServer) -> RawSignal {
        let (ws, _) = tokio_tungstenite::connect_async(server.ws_url())
            .await
            .expect("signaling socket opens");
        RawSignal { ws }
    }

    pub async fn send_text(&mut self, text: impl Into<String>) {
        self.ws
            .send(Message::text(text.into()))
            .await
            .expect("send a frame");
    }

    /// Sends a frame; false if the server already closed the connection under it.
    pub async fn try_send_text(&mut self, text: impl Into<String>) -> bool {
        self.ws.send(Message::text(text.into())).await.is_ok()
    }

    pub async fn send_binary(&mut self, data: Vec<u8>) {
        self.ws
            .send(Message::binary(data))
            .await
            .expect("send a frame");
    }

    /// Sends `join` with `token` (and `meeting` in the request when not empty).
    pub async fn send_join(&mut self, token: &str, meeting: &str) {
        self.ws
            .send(encode(C::Join(pb::JoinRequest {
                token: token.to_owned(),
                meeting: meeting.to_owned(),
                data_channels: false,
            })))
            .await
            .expect("send join");
    }

    /// The next server message (skipping pongs), or None if the socket closed; panics after
    /// `timeout`.
    pub async fn next_message(&mut self, timeout: Duration) -> Option<S> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("no server message within {timeout:?}"));
            match frame {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return None,
                Some(Ok(Message::Text(text))) => match decode(text.as_str()) {
                    Ok(S::Pong(_)) => continue,
                    Ok(m) => return Some(m),
                    Err(e) => panic!("{e}"),
                },
                Some(Ok(_)) => continue,
            }
        }
    }

    /// The next server message, pongs included, or None if the socket closed; panics after
    /// `timeout`.
    pub async fn next_message_or_pong(&mut self, timeout: Duration) -> Option<S> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("no server message within {timeout:?}"));
            match frame {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return None,
                Some(Ok(Message::Text(text))) => return Some(decode(text.as_str()).unwrap()),
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Reads until an error arrives and returns it, skipping the server's ICE candidates
    /// and what others in the meeting do meanwhile (joins, leaves, tracks, speakers);
    /// panics on anything else or a timeout.
    pub async fn expect_error(&mut self, timeout: Duration) -> ServerError {
        loop {
            match self.next_message(timeout).await {
                Some(S::Error(e)) => {
                    return ServerError {
                        code: error_code_name(e.code),
                        message: e.message,
                        fatal: e.fatal,
                    };
                }
                Some(
                    S::Trickle(_)
                    | S::ParticipantJoined(_)
                    | S::ParticipantLeft(_)
                    | S::TrackPublished(_)
                    | S::TrackUnpublished(_)
                    | S::ActiveSpeakers(_),
                ) => continue,
                other => panic!("expected an error message, got {other:?}"),
            }
        }
    }

    /// True once the server has closed the socket (waits up to `timeout`).
    pub async fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return false,
                Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => return true,
                Ok(Some(Ok(_))) => continue,
            }
        }
    }
}

/// Marks every inbound RTCP packet for the application: without it the stack consumes
/// PLI/FIR/NACK and we could not relay keyframe requests or answer NACKs from our cache.
#[derive(Default)]
pub struct DeliverRtcp {
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for DeliverRtcp {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if matches!(msg.message.packet, Packet::Rtcp(_)) {
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.read.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write.pop_front()
    }

    fn handle_timeout(&mut self, _now: Instant) -> Result<(), Self::Error> {
        Ok(())
    }

    fn poll_timeout(&mut self) -> Option<Self::Time> {
        None
    }
}

impl Interceptor for DeliverRtcp {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

/// The `start` of a gRPC `PublishTrack` stream: an Opus track (payload type 111) pushed into
/// `meeting` as `identity`, without creating the meeting.
pub fn opus_start(meeting: &str, identity: &str) -> hearth_proto::v1::PublishTrackRequest {
    use hearth_proto::v1;
    v1::PublishTrackRequest {
        kind: Some(v1::publish_track_request::Kind::Start(
            v1::PublishTrackStart {
                meeting: meeting.into(),
                identity: identity.into(),
                name: "Bot".into(),
                kind: v1::TrackKind::Audio as i32,
                codec: Some(v1::Codec {
                    mime_type: "audio/opus".into(),
                    clock_rate: 48_000,
                    channels: 2,
                    payload_type: 111,
                    fmtp: String::new(),
                }),
                create: false,
            },
        )),
    }
}

/// One RTP packet of the track [`opus_start`] declares (20 ms apart by `seq`).
pub fn opus_rtp(seq: u16, payload: &[u8]) -> hearth_proto::v1::PublishTrackRequest {
    use hearth_proto::v1;
    let data = hearth_engine::rtp::write(
        false,
        111,
        seq,
        u32::from(seq) * 960,
        hearth_engine::media::Ssrc(0xB07),
        payload,
    );
    v1::PublishTrackRequest {
        kind: Some(v1::publish_track_request::Kind::Rtp(data)),
    }
}
