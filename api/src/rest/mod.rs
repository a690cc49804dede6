//! The REST API (`/v1` on the HTTP port): the gRPC API's meetings, participants and tokens
//! over plain HTTP and JSON, for applications that do not speak gRPC.
//!
//! One implementation behind both: a handler validates its input, authorizes the caller with
//! the same bearer-token check as gRPC ([`crate::grpc::authorize_header`]), calls the same
//! operation as the gRPC service ([`crate::grpc::services`]) and converts the answer
//! ([`model`]). Errors are RFC 9457 problem details whose `code` is the gRPC status of the
//! same refusal ([`problem`]).
//!
//! `GET /v1/openapi.json` is an OpenAPI 3.1 document generated from the handlers and types
//! below (utoipa). Every other route needs `Authorization: Bearer <admin token>` and goes
//! through [`guard`]: a deadline, the per-API-key rate limit and `Idempotency-Key` on `POST`.

pub mod extract;
pub mod guard;
pub mod model;
pub mod problem;
pub mod transcript;
pub mod usage;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hearth_actors::MeetingId;
use hearth_proto::v1 as pb;
use serde::Deserialize;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{IntoParams, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use self::extract::{ApiJson, ApiPath, ApiQuery};
pub use self::guard::Limits;
use self::guard::{Auth, Guard};
use self::model::*;
use self::problem::{ErrorCode, Problem};
use crate::grpc::services;
use crate::server::AppState;

pub(crate) type Shared = State<Arc<AppState>>;

/// The REST routes with the default [`Limits`].
pub fn router(app: Arc<AppState>) -> Router<Arc<AppState>> {
    router_with(app, Limits::default())
}

/// The REST routes with the given limits.
pub fn router_with(app: Arc<AppState>, limits: Limits) -> Router<Arc<AppState>> {
    let guard = Arc::new(Guard::new(app, limits));
    let (routes, doc) = api().split_for_parts();
    let doc = Bytes::from(doc.to_pretty_json().unwrap_or_default());
    routes
        .route_layer(axum::middleware::from_fn_with_state(guard, guard::guard))
        .layer(DefaultBodyLimit::max(limits.max_body))
        .route(
            "/v1/openapi.json",
            get(move || {
                let doc = doc.clone();
                async move { ([(header::CONTENT_TYPE, "application/json")], doc) }
            }),
        )
}

/// The OpenAPI document of the REST API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api().into_openapi()
}

fn api() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(create_meeting, list_meetings))
        .routes(routes!(get_meeting, update_meeting, end_meeting))
        .routes(routes!(list_participants))
        .routes(routes!(get_participant, remove_participant))
        .routes(routes!(update_track))
        .routes(routes!(set_permissions))
        .routes(routes!(send_message))
        .routes(routes!(transcript::get_transcript))
        .routes(routes!(mint_token))
        .routes(routes!(usage::get_usage))
        .routes(routes!(usage::list_usage_events))
        .routes(routes!(usage::create_webhook, usage::list_webhooks))
        .routes(routes!(
            usage::get_webhook,
            usage::update_webhook,
            usage::delete_webhook
        ))
        .routes(routes!(usage::list_deliveries))
        .routes(routes!(usage::redeliver))
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Hearth REST API",
        version = "1",
        description = "Meetings, participants and access tokens of a Hearth node over HTTP and \
JSON: the same operations as the gRPC API (`hearth.v1`). Every call needs `Authorization: \
Bearer <token>` with an access token (HS256 JWT signed with an API key's secret) whose \
grants include `admin`; a token with a `meeting` claim manages only that meeting. Errors are \
RFC 9457 problem details (`application/problem+json`) whose `code` is the gRPC status code \
of the same refusal. `POST` accepts an `Idempotency-Key` header (remembered 24 h): a repeat \
with the same body gets the first answer, a different body 422. Request bodies are at most \
64 KiB; requests are limited per API key (429 with `Retry-After`).",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags(
        (name = "meetings", description = "Live meetings on the node."),
        (name = "participants", description = "The people (and bots) in a meeting."),
        (name = "tokens", description = "Access tokens signed with the caller's API key."),
        (name = "usage", description = "What the caller's API key used: totals and the raw ledger."),
        (name = "webhooks", description = "Signed event deliveries to the app's backend."),
    ),
    components(schemas(
        Problem,
        ErrorCode,
        usage::UsageWindow,
        usage::UsageGroup,
        transcript::TranscriptFormat
    ))
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut http = Http::new(HttpAuthScheme::Bearer);
        http.bearer_format = Some("JWT".to_owned());
        http.description = Some("An access token with the `admin` grant.".to_owned());
        components.add_security_scheme("bearer", SecurityScheme::Http(http));
    }
}

/// A 404 problem for a path no route serves (the HTTP port's fallback).
pub async fn not_found(request: Request) -> Response {
    Problem::not_found(format!("no such path: {}", request.uri().path())).into_response()
}

/// A 405 problem for a method a path does not serve.
pub async fn method_not_allowed(request: Request) -> Response {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::Unimplemented,
        format!(
            "{} is not allowed on {}",
            request.method(),
            request.uri().path()
        ),
    )
    .into_response()
}

// ----- Helpers -------------------------------------------------------------------------------

/// The meeting of a path, within the caller's scope.
pub(crate) fn meeting_in_scope(auth: &Auth, value: &str) -> Result<MeetingId, Problem> {
    let id = crate::grpc::meeting_id("id", value)?;
    auth.0.may_manage(id.as_str())?;
    Ok(id)
}

const MAX_LIMIT: u32 = 100;
const DEFAULT_LIMIT: u32 = 50;

fn encode_cursor(last: &str) -> String {
    URL_SAFE_NO_PAD.encode(last)
}

fn decode_cursor(cursor: &str) -> Result<MeetingId, Problem> {
    let invalid = || Problem::invalid("cursor: not a cursor this API gave out");
    if cursor.len() > 256 {
        return Err(invalid());
    }
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    MeetingId::parse(&text).ok_or_else(invalid)
}

// ----- Meetings ------------------------------------------------------------------------------

/// Query of `GET /v1/meetings`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListParams {
    /// Most meetings in the page (1 to 100, default 50).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
    /// `nextCursor` of the previous page; absent for the first page.
    cursor: Option<String>,
}

/// Start an empty meeting.
///
/// Participants can then join it; without this call a meeting starts on the first join of
/// a token with the `create` grant.
#[utoipa::path(
    post,
    path = "/v1/meetings",
    tag = "meetings",
    operation_id = "createMeeting",
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retry safe: a repeat with the same key and body gets the first answer.")),
    request_body = CreateMeeting,
    responses(
        (status = 201, description = "The meeting started.", body = Meeting,
            headers(("Location" = String, description = "`/v1/meetings/{id}`"))),
        (status = 400, description = "Malformed request.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "No admin grant, or another meeting's token.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The meeting is live already (ALREADY_EXISTS), the node drains (FAILED_PRECONDITION), or the same Idempotency-Key is in flight (ABORTED).", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body larger than 64 KiB.", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not `application/json`.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Idempotency-Key reused with another request.", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited.", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait."))),
    )
)]
async fn create_meeting(
    State(app): Shared,
    auth: Auth,
    ApiJson(body): ApiJson<CreateMeeting>,
) -> Result<Response, Problem> {
    let id = meeting_in_scope(&auth, &body.id)?;
    let settings = body.settings.map(pb::MeetingSettings::from);
    let meeting = services::create_meeting(
        &app,
        &auth.0,
        &id,
        settings.as_ref(),
        body.metadata.as_deref().unwrap_or_default(),
    )
    .await?;
    let location = HeaderValue::try_from(format!("/v1/meetings/{id}"))
        .unwrap_or_else(|_| HeaderValue::from_static("/v1/meetings"));
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        axum::Json(Meeting::from(meeting)),
    )
        .into_response())
}

/// List live meetings.
///
/// The meetings in the token's scope, sorted by name, a page at a time.
#[utoipa::path(
    get,
    path = "/v1/meetings",
    tag = "meetings",
    operation_id = "listMeetings",
    params(ListParams),
    responses(
        (status = 200, description = "A page of meetings.", body = MeetingList),
        (status = 400, description = "Bad limit or cursor.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "No admin grant.", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited.", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait."))),
    )
)]
async fn list_meetings(
    State(app): Shared,
    auth: Auth,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<axum::Json<MeetingList>, Problem> {
    let limit = params.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(Problem::invalid(format!("limit: 1 to {MAX_LIMIT}")));
    }
    let after = params.cursor.as_deref().map(decode_cursor).transpose()?;
    let (meetings, more) =
        services::list_meetings(&app, &auth.0, after.as_ref(), limit as usize).await;
    let next_cursor = more
        .then(|| meetings.last().map(|m| encode_cursor(&m.id)))
        .flatten();
    Ok(axum::Json(MeetingList {
        meetings: meetings.into_iter().map(Meeting::from).collect(),
        next_cursor,
    }))
}

/// Get a meeting with its participants.
#[utoipa::path(
    get,
    path = "/v1/meetings/{id}",
    tag = "meetings",
    operation_id = "getMeeting",
    params(("id" = String, Path, description = "The meeting's name.")),
    responses(
        (status = 200, description = "The meeting.", body = Meeting),
        (status = 400, description = "Malformed name.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "No admin grant, or another meeting's token.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The meeting is not live.", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited.", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait."))),
    )
)]
async fn get_meeting(
    State(app): Shared,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<axum::Json<Meeting>, Problem> {
    let id = meeting_in_scope(&auth, &id)?;
    Ok(axum::Json(
        services::get_meeting(&app, &auth.0, &id).await?.into(),
    ))
}

/// Change a meeting's settings.
///
/// Absent fields keep their current value.
#[utoipa::path(
    patch,
    path = "/v1/meetings/{id}",
    tag = "meetings",
    operation_id = "updateMeeting",
    params(("id" = String, Path, description = "The meeting's name.")),
    request_body = UpdateMeeting,
    responses(
        (status = 200, description = "The meeting, updated.", body = Meeting),
        (status = 400, description = "Malformed request.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "No admin grant, or another meeting's token.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The meeting is not live.", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body larger than 64 KiB.", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not `application/json`.", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited.", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait."))),
    )
)]
async fn update_meeting(
    State(app): Shared,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<UpdateMeeting>,
) -> Result<axum::Json<Meeting>, Problem> {
    let id = meeting_in_scope(&auth, &id)?;
    let settings = body.settings.map(pb::MeetingSettings::from);
    let meeting = services::update_meeting(
        &app,
        &auth.0,
        &id,
        settings.as_ref(),
        body.metadata.as_deref(),
    )
    .await?;
    Ok(axum::Json(meeting.into()))
}

/// End a meeting now.
///
/// Every participant is told `meetingEnded` and disconnected.
#[utoipa::path(
    delete,
    path = "/v1/meetings/{id}",
    tag = "meetings",
    operation_id = "endMeeting",
    params(("id" = String, Path, description = "The meeting's name.")),
    responses(
        (status = 200, description = "The meeting ended.", body = EndedMeeting),
        (status = 400, description = "Malformed name.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "No admin grant, or another meeting's token.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The meeting is not live.", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited.", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait."))),
    )
)]
async fn end_meeting(
    State(app): Shared,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<axum::Json<EndedMeeting>, Problem> {
    let id = meeting_in_scope(&auth, &id)?;
    let participants = services::end_meeting(&app, &auth.0, &id).await?;
    Ok(axum::Json(EndedMeeting { participants }))
}

// ----- Participants --------------------------------------------------------------------------

/// List a meeting's participants.
#[utoipa::path(
    get,
    path = "/v1/meetings/{id}/participants",
    tag = "participants",
    operation_id = "listParticipants",
    params(("id" = String, Path, description = "The meeting's name.")),
    responses(
        (status = 200, description = "Everyone in the meeting, in join order.", body = ParticipantList),
        (status = 400, description = "Malformed name.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "No admin grant, or another meeting's token.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The meeting is not live.", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited.", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait."))),
    )
)]
async fn list_participants(
    State(app): Shared,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<axum::Json<ParticipantList>, Problem> {
    let id = meeting_in_scope(&auth, &id)?;
    let participants = services::list_participants(&app, &auth.0, &id).await?;
    Ok(axum::Json(ParticipantList {
        participants: participants.into_iter().map(Participant::from).collect(),
    }))
}

/// Get one participant.
#[utoipa::path(
    get,
    path = "/v1/meetings/{id}/participants/{pid}",
    tag = "participants",
    operation_id = "getParticipant",
    params(
        ("id" = String, Path, description = "The meeting's name."),
        ("pid" = String, Path, description = "The participant's id (`PA_...`)."),
    ),
    responses(
        (status = 200, description = "The participant.", body = Participant),
        (status = 400, description = "Malformed id.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "No admin grant, or another meeting's token.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown meeting or participant.", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited.", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait."))),
    )
)]
async fn get_participant(
    State(app): Shared,
    auth: Auth,
    ApiPath((id, pid)): ApiPath<(String, String)>,
) -> Result<axum::Json<Participant>, Problem> {
    let id = meeting_in_scope(&auth, &id)?;
    Ok(axum::Json(
        services::get_participant(&app, &auth.0, &id, &pid)
            .await?
            .into(),
    ))
}

/// Remove a participant.
///
/// Its client is told it was removed and disconnected; the others get `participantLeft`
/// with reason `removed`.
#[utoipa::path(
    delete,
    path = "/v1/meetings/{id}/participants/{pid}",
    tag = "participants",
    operation_id = "removeParticipant",
    params(
        ("id" = String, Path, description = "The meeting's name."),
        ("pid" = String, Path, description = "The participant's id (`PA_...`)."),
    ),
    responses(
        (status = 204, description = "Removed."),
        (status = 400, description = "Malformed id.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "No admin grant, or another meeting's token.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown meeting or participant.", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited.", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait."))),
    )
)]
async fn remove_participant(
    State(app): Shared,
    auth: Auth,
    ApiPath((id, pid)): ApiPath<(String, String)>,
) -> Result<StatusCode, Problem> {
    let id = meeting_in_scope(&auth, &id)?;
    services::remove_participant(&app, &auth.0, &id, &pid).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Mute or unmute a participant's track for everyone.
///
/// While muted, the node forwards none of its packets; subscribers see `trackMuted`.
#[utoipa::path(
    patch,
    path = "/v1/meetings/{id}/participants/{pid}/tracks/{tid}",
    tag = "participants",
    operation_id = "updateTrack",
    params(
        ("id" = String, Path, description = "The meeting's name."),
        ("pid" = String, Path, description = "The publisher's id (`PA_...`)."),
        ("tid" = String, Path, description = "The track's id (`TR_...`)."),
    ),
    request_body = UpdateTrack,
    responses(
        (status = 200, description = "The track.", body = Track),
        (status = 400, description = "Malformed request.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "No admin grant, or another meeting's token.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown meeting, participant or track.", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body larger than 64 KiB.", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not `application/json`.", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited.", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait."))),
    )
)]
async fn update_track(
    State(app): Shared,
    auth: Auth,
    ApiPath((id, pid, tid)): ApiPath<(String, String, String)>,
    ApiJson(body): ApiJson<UpdateTrack>,
) -> Result<axum::Json<Track>, Problem> {
    let id = meeting_in_scope(&auth, &id)?;
    let track = services::mute_track(&app, &auth.0, &id, &pid, &tid, body.muted).await?;
    Ok(axum::Json(track.into()))
}

/// Set what a participant may do.
///
/// Both permissions are applied. Revoking `publish` withdraws its tracks; revoking
/// `subscribe` stops the media it receives; granting `subscribe` starts it.
#[utoipa::path(
    put,
    path = "/v1/meetings/{id}/participants/{pid}/permissions",
    tag = "participants",
    operation_id = "setPermissions",
    params(
        ("id" = String, Path, description = "The meeting's name."),
        ("pid" = String, Path, description = "The participant's id (`PA_...`)."),
    ),
    request_body = Permissions,
    responses(
        (status = 200, description = "The participant, updated.", body = Participant),
        (status = 400, description = "Malformed request.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "No admin grant, or another meeting's token.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown meeting or participant.", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body larger than 64 KiB.", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not `application/json`.", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited.", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait."))),
    )
)]
async fn set_permissions(
    State(app): Shared,
    auth: Auth,
    ApiPath((id, pid)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<Permissions>,
) -> Result<axum::Json<Participant>, Problem> {
    let id = meeting_in_scope(&auth, &id)?;
    let perms = pb::Permissions {
        publish: body.publish,
        subscribe: body.subscribe,
    };
    let participant = services::update_permissions(&app, &auth.0, &id, &pid, Some(perms)).await?;
    Ok(axum::Json(participant.into()))
}

/// Send a message to the participants.
///
/// Delivered over signaling (`appMessage`) to everyone in the meeting, or only to the named
/// participants; the web client shows it in its chat panel. If a named participant is not
/// in the meeting, nobody gets it (404).
#[utoipa::path(
    post,
    path = "/v1/meetings/{id}/messages",
    tag = "meetings",
    operation_id = "sendMessage",
    params(("id" = String, Path, description = "The meeting's name.")),
    request_body = SendMessage,
    responses(
        (status = 202, description = "Delivered to the participants' signaling queues.", body = SentMessage),
        (status = 400, description = "Malformed request (empty or too long text, bad ids).", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "No admin grant, or another meeting's token.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown meeting or participant.", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body larger than 64 KiB.", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not `application/json`.", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited.", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait."))),
    )
)]
async fn send_message(
    State(app): Shared,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<SendMessage>,
) -> Result<(StatusCode, axum::Json<SentMessage>), Problem> {
    let id = meeting_in_scope(&auth, &id)?;
    let sent = services::send_message(
        &app,
        &auth.0,
        &id,
        &body.text,
        body.from.as_deref().unwrap_or_default(),
        &body.to.unwrap_or_default(),
    )
    .await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(SentMessage {
            id: sent.id,
            delivered: sent.delivered,
        }),
    ))
}

// ----- Tokens --------------------------------------------------------------------------------

/// Mint an access token.
///
/// Signed with the caller's API key. A meeting-scoped admin token mints only for its meeting;
/// a minted token never outlives the token that minted it.
#[utoipa::path(
    post,
    path = "/v1/tokens",
    tag = "tokens",
    operation_id = "mintToken",
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retry safe: a repeat with the same key and body gets the first answer.")),
    request_body = MintToken,
    responses(
        (status = 200, description = "The token.", body = Token),
        (status = 400, description = "Malformed request.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "No admin grant, or another meeting's token.", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body larger than 64 KiB.", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not `application/json`.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Idempotency-Key reused with another request.", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited.", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait."))),
    )
)]
async fn mint_token(
    State(app): Shared,
    auth: Auth,
    ApiJson(body): ApiJson<MintToken>,
) -> Result<axum::Json<Token>, Problem> {
    let request = pb::MintTokenRequest::from(body);
    let token = services::mint_token(&app, &auth.0, &request)?;
    Ok(axum::Json(token.into()))
}
