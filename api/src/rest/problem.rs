//! Errors as RFC 9457 problem details (`application/problem+json`), with a stable `code`
//! that is the gRPC status a gRPC client would get for the same refusal.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tonic::{Code, Status};
use utoipa::ToSchema;

pub const CONTENT_TYPE: &str = "application/problem+json";

/// The stable error codes: the names of the gRPC status codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// 400: malformed JSON, wrong types, unknown fields, bad names, bad cursors.
    InvalidArgument,
    /// 401: no token, a malformed, expired or wrongly signed one.
    Unauthenticated,
    /// 403: no admin grant, or a meeting outside the token's scope.
    PermissionDenied,
    /// 404: unknown path, meeting, participant or track.
    NotFound,
    /// 409: the meeting is already live.
    AlreadyExists,
    /// 409: the node is draining.
    FailedPrecondition,
    /// 409: a request with the same `Idempotency-Key` is still running.
    Aborted,
    /// 405: the path exists, the method does not.
    Unimplemented,
    /// 413 (body too large) or 429 (rate limit).
    ResourceExhausted,
    /// 400: a value outside its range.
    OutOfRange,
    /// 503: the node runs TURN only.
    Unavailable,
    /// 504: the request took longer than the node allows.
    DeadlineExceeded,
    /// 500.
    Internal,
}

impl ErrorCode {
    fn of(code: Code) -> Self {
        match code {
            Code::InvalidArgument => Self::InvalidArgument,
            Code::Unauthenticated => Self::Unauthenticated,
            Code::PermissionDenied => Self::PermissionDenied,
            Code::NotFound => Self::NotFound,
            Code::AlreadyExists => Self::AlreadyExists,
            Code::FailedPrecondition => Self::FailedPrecondition,
            Code::Aborted => Self::Aborted,
            Code::Unimplemented => Self::Unimplemented,
            Code::ResourceExhausted => Self::ResourceExhausted,
            Code::OutOfRange => Self::OutOfRange,
            Code::Unavailable => Self::Unavailable,
            Code::DeadlineExceeded => Self::DeadlineExceeded,
            _ => Self::Internal,
        }
    }

    /// The HTTP status of a code when nothing more specific applies.
    fn http(self) -> StatusCode {
        match self {
            Self::InvalidArgument | Self::OutOfRange => StatusCode::BAD_REQUEST,
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::PermissionDenied => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::AlreadyExists | Self::FailedPrecondition | Self::Aborted => StatusCode::CONFLICT,
            Self::Unimplemented => StatusCode::METHOD_NOT_ALLOWED,
            Self::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// An RFC 9457 problem.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Problem {
    /// Always `about:blank`: `status` and `code` say what happened.
    #[serde(rename = "type")]
    #[schema(example = "about:blank")]
    pub r#type: &'static str,
    /// The HTTP status phrase.
    #[schema(example = "Not Found")]
    pub title: String,
    /// The HTTP status code.
    #[schema(example = 404)]
    pub status: u16,
    /// What went wrong, for a human.
    #[schema(example = "meeting standup not found")]
    pub detail: String,
    /// The stable, machine-readable reason (the gRPC status code of the same refusal).
    pub code: ErrorCode,
    /// Seconds to wait before retrying (429 only; also in the `Retry-After` header).
    #[serde(skip)]
    pub retry_after: Option<u64>,
}

impl Problem {
    pub fn new(status: StatusCode, code: ErrorCode, detail: impl Into<String>) -> Self {
        Self {
            r#type: "about:blank",
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            code,
            retry_after: None,
        }
    }

    pub fn invalid(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidArgument, detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, detail)
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::ResourceExhausted,
            format!("the request body is larger than {} KiB", limit / 1024),
        )
    }

    pub fn rate_limited(retry_after: u64) -> Self {
        let mut p = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::ResourceExhausted,
            format!("too many requests for this API key; retry in {retry_after} s"),
        );
        p.retry_after = Some(retry_after);
        p
    }
}

impl From<Status> for Problem {
    fn from(status: Status) -> Self {
        let code = ErrorCode::of(status.code());
        Self::new(code.http(), code, status.message())
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.code == ErrorCode::Unauthenticated {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"hearth\""),
            );
        }
        response
    }
}
