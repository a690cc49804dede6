//! WHIP ingest (RFC 9725) and WHEP playback: one HTTP offer/answer exchange instead of
//! WebSocket signaling, for encoders (OBS, GStreamer, ffmpeg) and players.
//!
//! * `POST /whip/{meeting}` with an SDP offer (`application/sdp`) and
//!   `Authorization: Bearer <token>` (a join token of that meeting with the publish grant)
//!   joins the meeting as a participant that publishes what the offer sends and receives
//!   nothing. `201 Created` with the SDP answer, `Location` (the session resource), `ETag`
//!   and one `Link: <...>; rel="ice-server"` per STUN/TURN server.
//! * `POST /whep/{meeting}/{source}` (the subscribe grant) joins as a participant that
//!   receives the tracks of `source` (a participant id `PA_...`, a track id `TR_...`, or a
//!   participant's identity) in the offer's receiving sections, and publishes nothing.
//! * The resource (`Location`): `PATCH` with `application/trickle-ice-sdpfrag` takes trickled
//!   candidates (`204`; Hearth is ICE-lite, so it learns the client's address from its
//!   checks anyway) and ICE restarts (a new `a=ice-ufrag`: `200` with our new credentials
//!   and candidate, and a new `ETag`; media keeps flowing meanwhile); `DELETE` leaves the
//!   meeting. Both need a token of the same meeting.
//!
//! The participant is like any other (lists, the operator's tree, usage, webhooks); it lives
//! as long as its media connection (ICE consent, DTLS close), or until `DELETE`, a removal,
//! or, for WHEP, until what it watches is gone (its publisher left, or the track ended).
//! Errors are `application/problem+json` like the REST API's.

// The helpers' errors are the finished HTTP responses, built once per refused request.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hearth_actors::{
    ClientSignal, JoinRequest, MeetingId, ParticipantHandle, ParticipantId, ReceiveFilter,
    ServerSignal, SessionKind, SignalError, SignalErrorCode, SignalReceiver, TrackId,
    signal_channel,
};
use hearth_proto::signal::v1 as pb;
use http_body_util::{BodyExt, Limited};

use crate::rest::problem::{ErrorCode, Problem};
use crate::server::AppState;

/// Largest offer accepted (a browser's offer with a few sections is 3 to 8 KiB).
pub const MAX_OFFER_BYTES: usize = 64 * 1024;
/// Largest trickle fragment accepted.
const MAX_FRAGMENT_BYTES: usize = 16 * 1024;
/// How long the participant may take to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Server messages queued for a session nobody reads (only its end matters).
const SIGNAL_QUEUE: usize = 64;
/// ICE restarts one session may make (each registers new credentials).
const MAX_ICE_RESTARTS: u32 = 6;

const SDP: &str = "application/sdp";
const SDPFRAG: &str = "application/trickle-ice-sdpfrag";

/// Which protocol a session came in by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Whip,
    Whep,
}

/// One live WHIP or WHEP session (its resource).
struct Session {
    kind: Kind,
    handle: ParticipantHandle,
    /// The token's identity: only it (or an admin) may end the session.
    identity: String,
    etag: String,
    /// The client's ICE ufrag from its offer: a PATCH with another one is an ICE restart.
    remote_ufrag: Option<String>,
    /// Our candidate lines and the first mid, from the answer (for restart answers).
    candidates: Vec<String>,
    first_mid: String,
    restarts: u32,
}

/// The live sessions of this node, by participant id.
#[derive(Default)]
pub struct Sessions(Mutex<HashMap<ParticipantId, Session>>);

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ParticipantId, Session>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many sessions are live (tests, metrics).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The WHIP and WHEP routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/whip/{meeting}", post(whip_post).options(options))
        .route(
            "/whip/{meeting}/{session}",
            axum::routing::patch(whip_patch)
                .delete(whip_delete)
                .options(options),
        )
        .route("/whep/{meeting}/{source}", post(whep_post).options(options))
        .route(
            "/whep/{meeting}/{source}/{session}",
            axum::routing::patch(whep_patch)
                .delete(whep_delete)
                .options(options),
        )
}

/// CORS preflight (players and encoders in web pages on other origins), and RFC 9725's
/// `Accept-Post` for endpoint discovery.
async fn options() -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let h = response.headers_mut();
    h.insert("accept-post", HeaderValue::from_static(SDP));
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, PATCH, DELETE, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, content-type, if-match"),
    );
    cors(response)
}

fn cors(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("location, link, etag"),
    );
    response
}

fn problem(status: StatusCode, code: ErrorCode, detail: impl Into<String>) -> Response {
    cors(Problem::new(status, code, detail).into_response())
}

/// The HTTP answer to a refused join or negotiation.
fn refused(e: &SignalError) -> Response {
    use SignalErrorCode as C;
    let (status, code) = match e.code {
        C::InvalidToken | C::TokenExpired => (StatusCode::UNAUTHORIZED, ErrorCode::Unauthenticated),
        C::WrongMeeting | C::PermissionDenied | C::Removed => {
            (StatusCode::FORBIDDEN, ErrorCode::PermissionDenied)
        }
        C::MeetingNotFound | C::TrackNotFound => (StatusCode::NOT_FOUND, ErrorCode::NotFound),
        C::MeetingFull | C::NodeUnavailable | C::RateLimited => {
            (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable)
        }
        C::InvalidSdp | C::NegotiationFailed | C::InvalidCandidate | C::MalformedMessage => {
            (StatusCode::BAD_REQUEST, ErrorCode::InvalidArgument)
        }
        C::Timeout => (StatusCode::GATEWAY_TIMEOUT, ErrorCode::DeadlineExceeded),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal),
    };
    problem(status, code, e.message.clone())
}

/// The bearer token from `Authorization`.
fn bearer(headers: &HeaderMap) -> Result<&str, Response> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            problem(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthenticated,
                "send `Authorization: Bearer <token>` with a join token of this meeting",
            )
        })
}

/// The request body as text of type `want`, at most `limit` bytes.
async fn body_text(
    headers: &HeaderMap,
    body: Body,
    want: &str,
    limit: usize,
) -> Result<String, Response> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case(want) {
        return Err(problem(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::InvalidArgument,
            format!("the body must be `Content-Type: {want}` (got `{content_type}`)"),
        ));
    }
    let bytes = match Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(cors(Problem::too_large(limit).into_response()));
        }
        Err(e) => {
            return Err(problem(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidArgument,
                format!("the body could not be read: {e}"),
            ));
        }
    };
    String::from_utf8(bytes.to_vec()).map_err(|_| {
        problem(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidArgument,
            "the body is not UTF-8 text",
        )
    })
}

/// Checks the token for `meeting` and builds the join.
fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    meeting: &str,
) -> Result<JoinRequest, Response> {
    let token = bearer(headers)?;
    if MeetingId::parse(meeting).is_none() {
        return Err(problem(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidArgument,
            "meeting: 1 to 128 characters of A-Z a-z 0-9 . _ ~ -",
        ));
    }
    crate::signaling::authorize(
        state,
        &pb::JoinRequest {
            token: token.to_owned(),
            meeting: meeting.to_owned(),
            data_channels: false,
        },
    )
    .map_err(|e| {
        metrics::counter!("hearth_signal_auth_failures_total").increment(1);
        refused(&e)
    })
}

/// The token (with the grant the protocol needs) and the offer of a `POST`.
async fn offer_request(
    state: &AppState,
    headers: &HeaderMap,
    meeting: &str,
    body: Body,
    kind: Kind,
) -> Result<(JoinRequest, String), Response> {
    let request = authorize(state, headers, meeting)?;
    let (granted, what) = match kind {
        Kind::Whip => (request.grants.publish, "publishing"),
        Kind::Whep => (request.grants.subscribe, "receiving media"),
    };
    if !granted {
        return Err(problem(
            StatusCode::FORBIDDEN,
            ErrorCode::PermissionDenied,
            format!("the token does not grant {what}"),
        ));
    }
    let offer = body_text(headers, body, SDP, MAX_OFFER_BYTES).await?;
    Ok((request, offer))
}

async fn whip_post(
    State(state): State<Arc<AppState>>,
    Path(meeting): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (mut request, offer) =
        match offer_request(&state, &headers, &meeting, body, Kind::Whip).await {
            Ok(r) => r,
            Err(r) => return r,
        };
    if let Some(r) = redirect_to_host(
        &state,
        &request.meeting,
        request.grants.create,
        &format!("/whip/{meeting}"),
    )
    .await
    {
        return r;
    }
    request.grants.subscribe = false;
    request.session = SessionKind::Http { receive: None };
    let location = |id: &ParticipantId| format!("/whip/{meeting}/{id}");
    start(state, Kind::Whip, request, offer, location).await
}

async fn whep_post(
    State(state): State<Arc<AppState>>,
    Path((meeting, source)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (mut request, offer) =
        match offer_request(&state, &headers, &meeting, body, Kind::Whep).await {
            Ok(r) => r,
            Err(r) => return r,
        };
    if let Some(r) = redirect_to_host(
        &state,
        &request.meeting,
        false,
        &format!("/whep/{meeting}/{source}"),
    )
    .await
    {
        return r;
    }
    let filter = match resolve_source(&state, &request.meeting, &source).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    // The resource names what was resolved (an identity may hold characters a path cannot).
    let source = match &filter {
        ReceiveFilter::Participant(p) => p.to_string(),
        ReceiveFilter::Track(t) => t.to_string(),
    };
    request.grants.publish = false;
    // Watching never creates a meeting.
    request.grants.create = false;
    request.session = SessionKind::Http {
        receive: Some(filter),
    };
    let location = |id: &ParticipantId| format!("/whep/{meeting}/{source}/{id}");
    start(state, Kind::Whep, request, offer, location).await
}

/// What `source` names in the meeting: a participant id, a track id, or an identity; it
/// must be publishing now.
async fn resolve_source(
    state: &AppState,
    meeting: &MeetingId,
    source: &str,
) -> Result<ReceiveFilter, Response> {
    let not_found = |what: String| problem(StatusCode::NOT_FOUND, ErrorCode::NotFound, what);
    let Some(snapshot) = state.node.meeting(meeting).await else {
        return Err(not_found(format!("meeting `{meeting}` is not live")));
    };
    let members = &snapshot.participants;
    let filter = if let Some(m) = members.iter().find(|m| m.info.id.as_str() == source) {
        if m.info.tracks.is_empty() {
            return Err(not_found(format!(
                "participant `{source}` publishes nothing"
            )));
        }
        ReceiveFilter::Participant(m.info.id.clone())
    } else if let Some(t) = members
        .iter()
        .flat_map(|m| m.info.tracks.iter())
        .find(|t| t.id.as_str() == source)
    {
        ReceiveFilter::Track(t.id.clone())
    } else if let Some(m) = members
        .iter()
        .find(|m| m.info.identity == source && !m.info.tracks.is_empty())
    {
        ReceiveFilter::Participant(m.info.id.clone())
    } else {
        return Err(not_found(format!(
            "no participant, track or publishing identity `{source}` in meeting `{meeting}`"
        )));
    };
    Ok(filter)
}

/// In a cluster, a POST for a meeting another node hosts is sent there: `307 Temporary
/// Redirect` (RFC 9725 §4.5: the client repeats the same POST at `Location`). None when the
/// meeting is (or is placed) here.
async fn redirect_to_host(
    state: &AppState,
    meeting: &hearth_actors::MeetingId,
    create: bool,
    path: &str,
) -> Option<Response> {
    state.node.cluster()?;
    match state.node.place(meeting, create).await {
        Ok(hearth_actors::cluster::Placement::Local) => None,
        Ok(hearth_actors::cluster::Placement::Remote { http_url, .. }) => {
            metrics::counter!("hearth_whip_redirects_total").increment(1);
            let location = format!("{}{path}", http_url.trim_end_matches('/'));
            Some(
                (
                    StatusCode::TEMPORARY_REDIRECT,
                    [(axum::http::header::LOCATION, location)],
                )
                    .into_response(),
            )
        }
        Err(e) => Some(refused(&e)),
    }
}

/// Joins, hands the offer to the participant and answers with its answer.
async fn start(
    state: Arc<AppState>,
    kind: Kind,
    request: JoinRequest,
    offer: String,
    location: impl Fn(&ParticipantId) -> String,
) -> Response {
    // A bad offer is refused before anything exists for it (no participant, no meeting).
    if let Err(e) = hearth_engine::transport::sdp::check_first_offer(&offer) {
        metrics::counter!("hearth_signal_errors_total", "code" => "INVALID_SDP").increment(1);
        return problem(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidArgument,
            format!("the offer: {e}"),
        );
    }
    let identity = request.identity.clone();
    let remote_ufrag = offer
        .lines()
        .find_map(|l| l.trim().strip_prefix("a=ice-ufrag:"))
        .map(|u| u.trim().to_owned());
    let watched = request.session.receive_filter().cloned();
    let (signal_tx, mut signals) = signal_channel(SIGNAL_QUEUE);
    let (accepted, handle) = match state.node.join(request, signal_tx).await {
        Ok(joined) => joined,
        Err(e) => return refused(&e),
    };
    let id = handle.id.clone();
    if !handle.send(ClientSignal::Offer {
        sdp: offer,
        sources: Vec::new(),
    }) {
        return refused(&SignalError::new(
            SignalErrorCode::Internal,
            "the session ended before the offer was handled",
        ));
    }
    let answer = match tokio::time::timeout(ANSWER_TIMEOUT, wait_answer(&mut signals)).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => {
            handle.send(ClientSignal::Leave);
            return refused(&e);
        }
        Err(_) => {
            handle.send(ClientSignal::Leave);
            return refused(&SignalError::new(
                SignalErrorCode::Timeout,
                "no answer within 10 seconds",
            ));
        }
    };
    let etag = new_etag();
    let candidates = answer
        .lines()
        .filter(|l| l.starts_with("a=candidate:"))
        .take(1)
        .map(|l| l.trim().to_owned())
        .collect();
    let first_mid = answer
        .lines()
        .find_map(|l| l.trim().strip_prefix("a=mid:"))
        .unwrap_or("0")
        .to_owned();
    state.http_sessions.lock().insert(
        id.clone(),
        Session {
            kind,
            handle,
            identity,
            etag: etag.clone(),
            remote_ufrag,
            candidates,
            first_mid,
            restarts: 0,
        },
    );
    metrics::counter!("hearth_http_sessions_total", "protocol" => kind.as_str()).increment(1);
    tokio::spawn(follow(Arc::clone(&state), id.clone(), signals, watched));
    let mut response = (StatusCode::CREATED, answer).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(SDP));
    if let Ok(v) = HeaderValue::from_str(&location(&id)) {
        h.insert(header::LOCATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    for server in &accepted.ice_servers {
        for url in &server.urls {
            if let Ok(v) =
                HeaderValue::from_str(&ice_link(url, &server.username, &server.credential))
            {
                h.append(header::LINK, v);
            }
        }
    }
    tracing::info!(participant = %id, protocol = kind.as_str(), "HTTP media session started");
    cors(response)
}

fn new_etag() -> String {
    format!("\"{}\"", hearth_actors::ids::random_string(16))
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Whip => "whip",
            Kind::Whep => "whep",
        }
    }
}

/// RFC 9725 §4.6: `<turn:host:port?transport=udp>; rel="ice-server"; username=...`.
fn ice_link(url: &str, username: &str, credential: &str) -> String {
    let quote = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    if username.is_empty() {
        format!("<{url}>; rel=\"ice-server\"")
    } else {
        format!(
            "<{url}>; rel=\"ice-server\"; username=\"{}\"; credential=\"{}\"; credential-type=\"password\"",
            quote(username),
            quote(credential)
        )
    }
}

/// The participant's answer to the offer, or its refusal.
async fn wait_answer(signals: &mut SignalReceiver) -> Result<String, SignalError> {
    while let Some(signal) = signals.recv().await {
        match signal {
            ServerSignal::Answer(sdp) => return Ok(sdp),
            ServerSignal::Error(e) => return Err(e),
            ServerSignal::Reconnect(why) => {
                return Err(SignalError::new(SignalErrorCode::Internal, why));
            }
            s if s.ends_session() => {
                return Err(SignalError::new(
                    SignalErrorCode::Internal,
                    "the session ended before it answered",
                ));
            }
            _ => {}
        }
    }
    Err(SignalError::new(
        SignalErrorCode::Internal,
        "the session ended before it answered",
    ))
}

/// Follows a session's server messages until it ends: nobody reads them (there is no
/// signaling channel), but a WHEP session ends when what it watches is gone, so the player
/// sees its connection close instead of a frozen picture.
async fn follow(
    state: Arc<AppState>,
    id: ParticipantId,
    mut signals: SignalReceiver,
    watched: Option<ReceiveFilter>,
) {
    let mut watched_publisher: Option<ParticipantId> = match &watched {
        Some(ReceiveFilter::Participant(p)) => Some(p.clone()),
        _ => None,
    };
    let watched_track: Option<TrackId> = match &watched {
        Some(ReceiveFilter::Track(t)) => Some(t.clone()),
        _ => None,
    };
    let reason = loop {
        let Some(signal) = signals.recv().await else {
            break "participant gone";
        };
        match &signal {
            ServerSignal::TrackPublished { participant, track }
                if watched_track.as_ref() == Some(&track.id) =>
            {
                watched_publisher = Some(participant.clone());
            }
            ServerSignal::ParticipantLeft { participant, .. }
                if watched_publisher.as_ref() == Some(participant) =>
            {
                break "the watched participant left";
            }
            ServerSignal::TrackUnpublished { track, .. }
                if watched_track.as_ref() == Some(track) =>
            {
                break "the watched track ended";
            }
            s if s.ends_session() => break "ended by the server",
            _ => {}
        }
    };
    tracing::debug!(participant = %id, reason, "HTTP media session ended");
    if let Some(session) = state.http_sessions.lock().remove(&id) {
        session.handle.send(ClientSignal::Leave);
    }
}

/// The session `id` of `kind` in `meeting`, if the token may act on it.
fn session_for(
    state: &AppState,
    headers: &HeaderMap,
    kind: Kind,
    meeting: &str,
    id: &str,
) -> Result<(ParticipantId, String, Option<String>), Response> {
    let token = bearer(headers)?;
    let claims = state.keys.verify(token, SystemTime::now()).map_err(|e| {
        problem(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthenticated,
            e.to_string(),
        )
    })?;
    let sessions = state.http_sessions.lock();
    let id = ParticipantId::from_string(id);
    let Some(session) = sessions
        .get(&id)
        .filter(|s| s.kind == kind && s.handle.meeting.as_str() == meeting)
    else {
        return Err(problem(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            format!("no {} session `{id}` in meeting `{meeting}`", kind.as_str()),
        ));
    };
    let admin = claims.grants.admin && (claims.meeting.is_empty() || claims.meeting == meeting);
    if !admin && (claims.meeting != meeting || claims.sub != session.identity) {
        return Err(problem(
            StatusCode::FORBIDDEN,
            ErrorCode::PermissionDenied,
            "only the session's own token (or an admin token) may change it",
        ));
    }
    Ok((id, session.etag.clone(), session.remote_ufrag.clone()))
}

async fn whip_delete(
    State(state): State<Arc<AppState>>,
    Path((meeting, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    delete(&state, &headers, Kind::Whip, &meeting, &id)
}

async fn whep_delete(
    State(state): State<Arc<AppState>>,
    Path((meeting, _source, id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    delete(&state, &headers, Kind::Whep, &meeting, &id)
}

fn delete(state: &AppState, headers: &HeaderMap, kind: Kind, meeting: &str, id: &str) -> Response {
    let id = match session_for(state, headers, kind, meeting, id) {
        Ok((id, ..)) => id,
        Err(r) => return r,
    };
    if let Some(session) = state.http_sessions.lock().remove(&id) {
        session.handle.send(ClientSignal::Leave);
    }
    cors(StatusCode::OK.into_response())
}

async fn whip_patch(
    State(state): State<Arc<AppState>>,
    Path((meeting, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    patch(&state, &headers, body, Kind::Whip, &meeting, &id).await
}

async fn whep_patch(
    State(state): State<Arc<AppState>>,
    Path((meeting, _source, id)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    patch(&state, &headers, body, Kind::Whep, &meeting, &id).await
}

/// Trickle ICE and ICE restarts (RFC 9725 §4.3): candidates are passed on (ICE-lite needs
/// none, but a wrong one is still refused); a fragment with a new `a=ice-ufrag` restarts
/// ICE: we take new credentials and answer them (200, a new ETag).
async fn patch(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    kind: Kind,
    meeting: &str,
    id: &str,
) -> Response {
    let (id, etag, remote_ufrag) = match session_for(state, headers, kind, meeting, id) {
        Ok(s) => s,
        Err(r) => return r,
    };
    if let Some(if_match) = headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok())
        && if_match.trim() != "*"
        && if_match.trim() != etag
    {
        return problem(
            StatusCode::PRECONDITION_FAILED,
            ErrorCode::FailedPrecondition,
            "If-Match does not name this session's ETag",
        );
    }
    let fragment = match body_text(headers, body, SDPFRAG, MAX_FRAGMENT_BYTES).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let ufrag = fragment
        .lines()
        .find_map(|l| l.trim().strip_prefix("a=ice-ufrag:"))
        .map(|u| u.trim().to_owned());
    if let Some(new) = &ufrag
        && remote_ufrag.as_ref() != Some(new)
    {
        return ice_restart(state, &id, new, &fragment);
    }
    let handle = state
        .http_sessions
        .lock()
        .get(&id)
        .map(|s| s.handle.clone());
    let Some(handle) = handle else {
        return problem(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            "the session ended",
        );
    };
    let mut mid = None;
    for line in fragment.lines().map(str::trim) {
        if let Some(m) = line.strip_prefix("a=mid:") {
            mid = Some(m.to_owned());
        } else if let Some(c) = line.strip_prefix("a=candidate:") {
            handle.send(ClientSignal::Candidate(hearth_actors::Candidate {
                candidate: format!("candidate:{c}"),
                sdp_mid: mid.clone(),
                sdp_m_line_index: None,
                username_fragment: ufrag.clone(),
            }));
        }
    }
    cors(StatusCode::NO_CONTENT.into_response())
}

/// A `PATCH` whose fragment carries a new client ufrag: an ICE restart.
fn ice_restart(
    state: &AppState,
    id: &ParticipantId,
    remote_ufrag: &str,
    fragment: &str,
) -> Response {
    let legal = hearth_engine::transport::sdp::legal_ice_credential;
    let pwd = fragment
        .lines()
        .find_map(|l| l.trim().strip_prefix("a=ice-pwd:"))
        .map(str::trim);
    if !legal(remote_ufrag, 4) || !pwd.is_some_and(|p| legal(p, 22)) {
        return problem(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidArgument,
            "an ICE restart needs a valid a=ice-ufrag (4+ ice-chars) and a=ice-pwd (22+)",
        );
    }
    let mut sessions = state.http_sessions.lock();
    let Some(session) = sessions.get_mut(id) else {
        return problem(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            "the session ended",
        );
    };
    if session.restarts >= MAX_ICE_RESTARTS {
        return problem(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::ResourceExhausted,
            format!("at most {MAX_ICE_RESTARTS} ICE restarts per session: POST a new offer"),
        );
    }
    let local_ufrag = hearth_actors::ids::random_string(16);
    let local_pwd = hearth_actors::ids::random_string(32);
    if !session.handle.send(ClientSignal::IceRestart {
        local_ufrag: local_ufrag.clone(),
        local_pwd: local_pwd.clone(),
        remote_ufrag: remote_ufrag.to_owned(),
    }) {
        return problem(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            "the session ended",
        );
    }
    session.restarts += 1;
    session.remote_ufrag = Some(remote_ufrag.to_owned());
    session.etag = new_etag();
    metrics::counter!("hearth_http_ice_restarts_total", "protocol" => session.kind.as_str())
        .increment(1);
    let mut body = format!(
        "a=ice-lite\r\na=ice-ufrag:{local_ufrag}\r\na=ice-pwd:{local_pwd}\r\n\
m=audio 9 RTP/AVP 0\r\na=mid:{}\r\n",
        session.first_mid
    );
    for c in &session.candidates {
        body.push_str(c);
        body.push_str("\r\n");
    }
    body.push_str("a=end-of-candidates\r\n");
    let mut response = (StatusCode::OK, body).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(SDPFRAG));
    if let Ok(v) = HeaderValue::from_str(&session.etag) {
        h.insert(header::ETAG, v);
    }
    cors(response)
}
