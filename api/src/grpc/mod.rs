//! The gRPC API (`hearth.v1`): embedding (meetings, participants, tokens, events, media)
//! and operations (admin). Services are thin: authorize, convert ([`convert`]), ask the
//! node, convert the reply.
//!
//! Served on the HTTP port by default (axum and tonic share it: gRPC requests go by path,
//! `/hearth.v1.*/...`, HTTP/2 with prior knowledge), or on `--grpc ADDR`. gRPC health
//! (`grpc.health.v1.Health`) and server reflection (v1 and v1alpha) come with it.
//!
//! Auth: every call carries `authorization: Bearer <JWT>`, an access token signed with one
//! of the node's API key secrets, with the `admin` grant. A token whose `meeting` claim is
//! set manages only that meeting; node-wide calls need an empty `meeting` claim.

pub mod admin;
pub mod convert;
pub mod forward;
pub mod media;
pub mod services;

use std::sync::Arc;
use std::time::SystemTime;

use hearth_actors::{ApiError, MeetingId};
use hearth_proto::v1;
use tonic::{Request, Status};

use crate::server::AppState;
use crate::token::{Claims, TokenError};

/// Every gRPC service of the node, ready to be served.
/// The names gRPC health reports on: the whole server ("") and each service.
pub const HEALTH_SERVICES: &[&str] = &[
    "",
    "hearth.v1.MeetingService",
    "hearth.v1.ParticipantService",
    "hearth.v1.TokenService",
    "hearth.v1.EventService",
    "hearth.v1.MediaService",
    "hearth.v1.AdminService",
];

/// Every gRPC service of the node, ready to be served. Health reports SERVING from the
/// start, NOT_SERVING once the node drains or shuts down.
pub async fn routes(state: &Arc<AppState>) -> tonic::service::Routes {
    let (health_reporter, health) = tonic_health::server::health_reporter();
    for name in HEALTH_SERVICES {
        health_reporter
            .set_service_status(*name, tonic_health::ServingStatus::Serving)
            .await;
    }
    let _ = state.health.set(health_reporter);
    let mut builder = tonic::service::Routes::builder();
    builder
        .add_service(v1::meeting_service_server::MeetingServiceServer::new(
            services::Meetings(Arc::clone(state)),
        ))
        .add_service(
            v1::participant_service_server::ParticipantServiceServer::new(services::Participants(
                Arc::clone(state),
            )),
        )
        .add_service(v1::token_service_server::TokenServiceServer::new(
            services::Tokens(Arc::clone(state)),
        ))
        .add_service(v1::event_service_server::EventServiceServer::new(
            services::Events(Arc::clone(state)),
        ))
        .add_service(v1::media_service_server::MediaServiceServer::new(
            media::Media(Arc::clone(state)),
        ))
        .add_service(v1::admin_service_server::AdminServiceServer::new(
            admin::Admin(Arc::clone(state)),
        ))
        .add_service(health);
    if let Ok(reflection) = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
    {
        builder.add_service(reflection);
    }
    if let Ok(reflection) = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
    {
        builder.add_service(reflection);
    }
    builder.routes()
}

/// What a call may touch.
#[derive(Debug)]
pub struct Caller {
    pub claims: Claims,
    /// The node that forwarded this call (`x-hearth-forwarded-by`): it is answered here,
    /// never forwarded again. A client that sets the header only gets this node's answer.
    pub forwarded_by: Option<String>,
}

impl Caller {
    /// The call is about `meeting`: a meeting-scoped token must name it.
    pub fn may_manage(&self, meeting: &str) -> Result<(), Status> {
        if self.claims.meeting.is_empty() || self.claims.meeting == meeting {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "the token manages meeting {:?} only",
                self.claims.meeting
            )))
        }
    }

    /// The call concerns the whole node.
    pub fn node_wide(&self) -> Result<(), Status> {
        if self.claims.meeting.is_empty() {
            Ok(())
        } else {
            Err(Status::permission_denied(
                "this call needs a token for the whole node (empty meeting claim)",
            ))
        }
    }
}

/// Checks the bearer token of a request: valid, signed by a known key, admin grant.
pub fn authorize<T>(state: &AppState, request: &Request<T>) -> Result<Caller, Status> {
    let value = request
        .metadata()
        .get("authorization")
        .map(|v| v.as_encoded_bytes());
    let mut result = authorize_header(state, value);
    match &mut result {
        Ok(caller) => {
            caller.forwarded_by = request
                .metadata()
                .get(FORWARDED_BY)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
        }
        Err(_) => metrics::counter!("hearth_grpc_auth_failures_total").increment(1),
    }
    result
}

/// The one check of an `authorization: Bearer <token>` value, for gRPC metadata and REST
/// headers alike: a valid token, signed by a known key, with the admin grant.
pub fn authorize_header(state: &AppState, value: Option<&[u8]>) -> Result<Caller, Status> {
    let Some(value) = value else {
        return Err(Status::unauthenticated(
            "missing `authorization: Bearer <token>`",
        ));
    };
    let value = std::str::from_utf8(value)
        .ok()
        .filter(|v| v.is_ascii())
        .ok_or_else(|| Status::unauthenticated("the authorization value is not ASCII"))?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or_else(|| Status::unauthenticated("authorization must be `Bearer <token>`"))?;
    let claims = state
        .keys
        .verify(token.trim(), SystemTime::now())
        .map_err(|e| match e {
            TokenError::Expired => Status::unauthenticated("the token has expired"),
            other => Status::unauthenticated(other.to_string()),
        })?;
    if !claims.grants.admin {
        return Err(Status::permission_denied(
            "the token lacks the admin grant needed for this API",
        ));
    }
    Ok(Caller {
        claims,
        forwarded_by: None,
    })
}

/// The header (gRPC metadata) naming the node that forwarded a call.
pub const FORWARDED_BY: &str = "x-hearth-forwarded-by";

/// Authorizes a call about one meeting (`value` of request field `field`): a valid admin
/// token whose scope covers that meeting. Returns the parsed meeting name.
pub fn authorize_meeting_caller<T>(
    state: &AppState,
    request: &Request<T>,
    field: &str,
    value: &str,
) -> Result<(Caller, MeetingId), Status> {
    let caller = authorize(state, request)?;
    let id = meeting_id(field, value)?;
    caller.may_manage(id.as_str())?;
    Ok((caller, id))
}

/// [`authorize_meeting_caller`] without the caller.
pub fn authorize_meeting<T>(
    state: &AppState,
    request: &Request<T>,
    field: &str,
    value: &str,
) -> Result<MeetingId, Status> {
    let caller = authorize(state, request)?;
    let id = meeting_id(field, value)?;
    caller.may_manage(id.as_str())?;
    Ok(id)
}

/// Maps an actor-side refusal to a gRPC status.
pub fn status(e: ApiError) -> Status {
    match e {
        ApiError::NotFound(what) => Status::not_found(format!("{what} not found")),
        ApiError::AlreadyExists(what) => Status::already_exists(format!("{what} already exists")),
        ApiError::Invalid(why) => Status::invalid_argument(why),
        ApiError::Unavailable(why) if why.contains("draining") => Status::failed_precondition(why),
        ApiError::Unavailable(why) => Status::unavailable(why),
        ApiError::Internal(why) => Status::internal(why),
    }
}

/// Parses a meeting name from a request field.
pub fn meeting_id(field: &str, value: &str) -> Result<MeetingId, Status> {
    MeetingId::parse(value).ok_or_else(|| {
        Status::invalid_argument(format!(
            "{field}: a meeting name is 1 to 128 characters of A-Z a-z 0-9 . _ ~ -"
        ))
    })
}
