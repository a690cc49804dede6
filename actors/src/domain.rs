//! Domain types exchanged between the gateway (`hearth-api`) and the actors.
//!
//! These are plain Rust types: the actors know nothing of protobuf or JSON. `hearth-api`
//! converts the signaling wire messages to and from [`ClientSignal`] and [`ServerSignal`].

use std::time::{Duration, SystemTime};

use hearth_engine::media::MediaKind;

use crate::ids::{MeetingId, ParticipantId, TrackId};

/// What an access token allows its holder to do in its meeting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grants {
    /// Join the meeting at all.
    pub join: bool,
    /// Publish audio and video.
    pub publish: bool,
    /// Receive the others' media.
    pub subscribe: bool,
    /// Create the meeting if it does not exist yet.
    pub create: bool,
    /// Operator rights (admin API).
    pub admin: bool,
    /// Turn the meeting's live captions on and off.
    pub captions: bool,
}

impl Default for Grants {
    fn default() -> Self {
        Self {
            join: true,
            publish: true,
            subscribe: true,
            create: true,
            admin: false,
            captions: false,
        }
    }
}

/// Per-meeting settings an application may set (node defaults otherwise).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MeetingSettings {
    /// Most participants at once.
    pub max_participants: usize,
    /// How long the meeting lives on with nobody in it.
    pub empty_timeout: Duration,
    /// Live captions.
    pub transcription: TranscriptionSettings,
}

/// A meeting's live transcription.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TranscriptionSettings {
    /// Transcribe every audio track.
    pub enabled: bool,
    /// Spoken language; None: the node's default.
    pub language: Option<Language>,
    /// The engine; None: the node's default.
    pub engine: Option<EngineKind>,
}

/// Speech-to-text engines a node can be configured with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EngineKind {
    /// Whisper in Hearth's own worker processes (`hearth-stt`), on this machine's CPU.
    Embedded,
    /// An OpenAI-compatible `POST /v1/audio/transcriptions` server, one request per
    /// utterance (finals only).
    OpenAi,
    /// A streaming engine over WebSocket (the contract of Jitsi's opus-transcriber-proxy).
    Streaming,
}

impl EngineKind {
    pub const ALL: [EngineKind; 3] = [
        EngineKind::Embedded,
        EngineKind::OpenAi,
        EngineKind::Streaming,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Embedded => "embedded",
            EngineKind::OpenAi => "openai",
            EngineKind::Streaming => "streaming",
        }
    }

    pub fn parse(s: &str) -> Option<EngineKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A spoken language: an ISO 639-1 code (`en`), optionally with a region (`en-us`),
/// lowercase ASCII, at most 8 bytes. Copy, so settings stay Copy.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Language {
    bytes: [u8; 8],
    len: u8,
}

impl Language {
    /// English, the default of the embedded engine's model.
    pub const EN: Language = Language {
        bytes: *b"en\0\0\0\0\0\0",
        len: 2,
    };

    /// Parses `en`, `EN`, `pt-BR` (lowercased); None for anything else.
    pub fn parse(s: &str) -> Option<Language> {
        let s = s.trim();
        let b = s.as_bytes();
        if b.len() < 2 || b.len() > 8 {
            return None;
        }
        let (primary, rest) = s.split_once('-').unwrap_or((s, ""));
        let letters = |p: &str| p.bytes().all(|c| c.is_ascii_alphabetic());
        if !(2..=3).contains(&primary.len())
            || !letters(primary)
            || (s.contains('-')
                && (rest.is_empty() || !rest.bytes().all(|c| c.is_ascii_alphanumeric())))
        {
            return None;
        }
        let mut bytes = [0u8; 8];
        for (d, c) in bytes.iter_mut().zip(b) {
            *d = c.to_ascii_lowercase();
        }
        Some(Language {
            bytes,
            len: b.len() as u8,
        })
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or("en")
    }

    /// The primary language subtag (`pt` of `pt-br`).
    pub fn primary(&self) -> &str {
        self.as_str().split('-').next().unwrap_or("en")
    }
}

impl std::fmt::Debug for Language {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.as_str())
    }
}

impl std::fmt::Display for Language {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A meeting's captions as participants see them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaptionsState {
    pub enabled: bool,
    pub language: Language,
    pub engine: EngineKind,
    /// Why captions do not work (engine unavailable); None when they do.
    pub unavailable: Option<String>,
    /// Who changed them last; None: the app or the settings.
    pub changed_by: Option<ParticipantId>,
}

/// One transcribed utterance (interim or final).
#[derive(Clone, Debug, PartialEq)]
pub struct Transcript {
    pub participant: ParticipantId,
    pub identity: String,
    pub name: String,
    pub track: TrackId,
    /// `SG_...`, stable from interim to final.
    pub segment: String,
    pub text: String,
    pub is_final: bool,
    /// Milliseconds since the meeting started.
    pub start_ms: u64,
    pub end_ms: u64,
    pub language: Language,
}

/// Why a management request about a meeting was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

/// A verified request to join a meeting (the gateway checked the token).
#[derive(Clone, Debug)]
pub struct JoinRequest {
    pub meeting: MeetingId,
    /// The application's user id, from the token.
    pub identity: String,
    /// Display name.
    pub name: String,
    pub grants: Grants,
    /// When the join's token was issued (None: no token, e.g. the embedding API).
    pub token_issued_at: Option<SystemTime>,
    /// When the join's token expires (None: no token). Credentials handed to the
    /// participant (TURN) expire with it.
    pub token_expires_at: Option<SystemTime>,
    /// The API key (tenant) the usage of this participant is billed to: the token's issuer,
    /// or the API caller's.
    pub tenant: String,
    /// How the session exchanges descriptions and what it receives.
    pub session: SessionKind,
    /// The server offers an SCTP section for data channels.
    pub data_channels: bool,
}

/// How a participant's session negotiates.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SessionKind {
    /// WebSocket signaling: both sides offer (the server offers the subscriptions).
    #[default]
    Signaling,
    /// One HTTP offer/answer exchange (WHIP, RFC 9725, and WHEP): the client offers, the
    /// server only answers; subscriptions ride in the client's receiving sections, and the
    /// session lives as long as its media connection.
    Http {
        /// Receive only this participant's or track's media (WHEP); None: everything the
        /// grants allow.
        receive: Option<ReceiveFilter>,
    },
}

impl SessionKind {
    pub fn client_offers_only(&self) -> bool {
        matches!(self, SessionKind::Http { .. })
    }

    pub fn receive_filter(&self) -> Option<&ReceiveFilter> {
        match self {
            SessionKind::Http { receive } => receive.as_ref(),
            SessionKind::Signaling => None,
        }
    }
}

/// Which published tracks a session receives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReceiveFilter {
    /// Every track of one participant.
    Participant(ParticipantId),
    /// One track.
    Track(TrackId),
}

impl ReceiveFilter {
    pub fn admits(&self, publisher: &ParticipantId, track: &TrackId) -> bool {
        match self {
            ReceiveFilter::Participant(p) => p == publisher,
            ReceiveFilter::Track(t) => t == track,
        }
    }
}

/// A published track, as the meeting describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct TrackInfo {
    pub id: TrackId,
    pub kind: MediaKind,
    /// Codec mime type, e.g. `video/VP8`.
    pub mime_type: String,
    pub muted: bool,
    /// The publisher's SDP mid of this track.
    pub mid: String,
    /// What the track carries (a screen share is metered apart from cameras).
    pub source: TrackSource,
}

/// What a track carries, as its publisher declared it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TrackSource {
    /// Not declared: a microphone for audio, a camera for video.
    #[default]
    Unknown,
    Camera,
    Microphone,
    Screen,
}

/// A participant, as the meeting describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct ParticipantInfo {
    pub id: ParticipantId,
    pub identity: String,
    pub name: String,
    pub tracks: Vec<TrackInfo>,
    pub joined_at: SystemTime,
}

/// The meeting, as a joining participant sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct MeetingInfo {
    pub id: MeetingId,
    pub started_at: SystemTime,
    /// The app's metadata of the meeting (API).
    pub metadata: String,
}

/// An ICE candidate as carried by signaling.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Candidate {
    pub candidate: String,
    pub sdp_mid: Option<String>,
    pub sdp_m_line_index: Option<u16>,
    pub username_fragment: Option<String>,
}

/// One message from a joined client, already decoded from the wire.
#[derive(Clone, Debug)]
pub enum ClientSignal {
    /// An offer, with what the client's sending mids carry.
    Offer {
        sdp: String,
        sources: Vec<(String, TrackSource)>,
    },
    Answer(String),
    Candidate(Candidate),
    /// An ICE restart outside SDP (WHIP/WHEP `PATCH`): our new credentials, chosen by the
    /// gateway (which answers with them), and the client's new ufrag.
    IceRestart {
        local_ufrag: String,
        local_pwd: String,
        remote_ufrag: String,
    },
    Mute {
        track: TrackId,
        muted: bool,
    },
    Unpublish {
        track: TrackId,
    },
    /// How the client shows a track it receives (adaptive streaming): hidden tiles get
    /// nothing, simulcast tracks the layer that fits `height` (device pixels, 0: unknown).
    TrackSettings {
        track: TrackId,
        visible: bool,
        height: u32,
    },
    /// Turn captions on or off (needs the captions grant).
    SetCaptions {
        enabled: bool,
        language: Option<Language>,
    },
    Leave,
}

/// Why a participant is no longer in a meeting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaveReason {
    /// The client asked to leave or closed its socket.
    Left,
    /// The media connection died (ICE/DTLS failure or timeout).
    Disconnected,
    /// The participant's actor failed; the supervisor removed it.
    Failed,
    /// Removed by an operator or the API.
    Removed,
    /// The meeting ended.
    MeetingEnded,
}

impl LeaveReason {
    /// The stable wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            LeaveReason::Left => "left",
            LeaveReason::Disconnected => "disconnected",
            LeaveReason::Failed => "failed",
            LeaveReason::Removed => "removed",
            LeaveReason::MeetingEnded => "meeting_ended",
        }
    }
}

/// Why a meeting ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    Empty,
    EndedByApi,
    NodeShutdown,
    /// Another node of the cluster holds the meeting's lease: its participants are told to
    /// reconnect (and land on that node).
    Moved,
}

impl EndReason {
    /// The stable wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Empty => "empty",
            EndReason::EndedByApi => "ended_by_api",
            EndReason::NodeShutdown => "node_shutdown",
            EndReason::Moved => "moved",
        }
    }
}

/// Stable error codes of the signaling protocol (names mirror `ErrorCode` in proto/).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignalErrorCode {
    MalformedMessage,
    UnknownMessage,
    MessageTooLarge,
    InvalidToken,
    TokenExpired,
    WrongMeeting,
    PermissionDenied,
    NotJoined,
    AlreadyJoined,
    InvalidSdp,
    NegotiationFailed,
    MeetingNotFound,
    MeetingFull,
    TrackNotFound,
    InvalidCandidate,
    NodeUnavailable,
    RateLimited,
    Timeout,
    Internal,
    Removed,
}

/// An error reported to a client.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct SignalError {
    pub code: SignalErrorCode,
    pub message: String,
    /// The session ends after this error.
    pub fatal: bool,
}

impl SignalError {
    pub fn new(code: SignalErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            fatal: false,
        }
    }

    pub fn fatal(code: SignalErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            fatal: true,
        }
    }
}

/// One message for a client; the gateway encodes it for the wire.
#[derive(Clone, Debug)]
pub enum ServerSignal {
    Offer(String),
    Answer(String),
    Candidate(Candidate),
    ParticipantJoined(ParticipantInfo),
    ParticipantLeft {
        participant: ParticipantId,
        reason: LeaveReason,
    },
    TrackPublished {
        participant: ParticipantId,
        track: TrackInfo,
    },
    TrackUnpublished {
        participant: ParticipantId,
        track: TrackId,
    },
    TrackMuted {
        participant: ParticipantId,
        track: TrackId,
        muted: bool,
    },
    /// Loudest first, with smoothed loudness 0..=1.
    ActiveSpeakers(Vec<(ParticipantId, f32)>),
    MeetingEnded(EndReason),
    Error(SignalError),
    /// The session is gone; the client should join again.
    Reconnect(String),
    /// The node is going away for maintenance: it accepts no new joins and ends this
    /// meeting at the latest after this long.
    NodeDraining(Duration),
    /// A message from the app (the API) to the participants.
    AppMessage(AppMessage),
    /// The app changed the meeting's metadata.
    MeetingUpdated {
        metadata: String,
    },
    /// Live captions: an interim or final transcript.
    Transcript(Transcript),
    /// The meeting's captions changed.
    Captions(CaptionsState),
    /// Which layers of one of this client's simulcast tracks nobody receives: the client
    /// stops encoding those (and starts again when a later message leaves them out).
    PublishLayers {
        track: TrackId,
        /// Layer indexes (the order of the track's encodings, lowest first).
        paused: Vec<u8>,
    },
}

/// A message the app sends to a meeting's participants (REST/gRPC), delivered over
/// signaling.
#[derive(Clone, Debug, PartialEq)]
pub struct AppMessage {
    /// The message id (`MS_...`), the same for every recipient.
    pub id: String,
    pub text: String,
    /// Who the app says it is from (a display name; empty: the app itself).
    pub from: String,
    pub sent_at: SystemTime,
}

/// Longest app message, in bytes.
pub const MAX_APP_MESSAGE: usize = 4096;

impl ServerSignal {
    /// True if the gateway should close the socket after sending this message.
    pub fn ends_session(&self) -> bool {
        match self {
            ServerSignal::MeetingEnded(_) | ServerSignal::Reconnect(_) => true,
            ServerSignal::Error(e) => e.fatal,
            _ => false,
        }
    }
}

/// What the gateway gets back from a successful join.
#[derive(Clone, Debug)]
pub struct JoinAccepted {
    pub participant: ParticipantInfo,
    pub meeting: MeetingInfo,
    pub others: Vec<ParticipantInfo>,
    /// STUN/TURN servers for the client's peer connection.
    pub ice_servers: Vec<IceServer>,
    /// The meeting's captions now.
    pub captions: CaptionsState,
}

/// One entry of a client's `iceServers`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IceServer {
    pub urls: Vec<String>,
    pub username: String,
    pub credential: String,
}
