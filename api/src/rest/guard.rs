//! What every authenticated REST request goes through before its handler: a deadline, the
//! bearer token (the same check as gRPC), the per-API-key rate limit, and for `POST` the
//! `Idempotency-Key` store.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};

use super::problem::{ErrorCode, Problem};
use crate::grpc::Caller;
use crate::server::AppState;

/// The REST API's limits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    /// Largest request body.
    pub max_body: usize,
    /// Time a request may take, from its headers to its answer.
    pub request_timeout: Duration,
    /// Requests per second and API key, sustained.
    pub rate_per_second: f64,
    /// Requests per API key in a burst.
    pub rate_burst: u32,
    /// How long an `Idempotency-Key` is remembered.
    pub idempotency_ttl: Duration,
    /// Most `Idempotency-Key`s remembered at once (the oldest are forgotten first).
    pub idempotency_keys: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body: 64 * 1024,
            request_timeout: Duration::from_secs(10),
            rate_per_second: 50.0,
            rate_burst: 100,
            idempotency_ttl: Duration::from_secs(24 * 3600),
            idempotency_keys: 10_000,
        }
    }
}

/// The REST API's own state, next to the node's.
pub struct Guard {
    pub app: Arc<AppState>,
    pub limits: Limits,
    buckets: Mutex<HashMap<String, Bucket>>,
    idempotency: Mutex<IdempotencyStore>,
}

impl Guard {
    pub fn new(app: Arc<AppState>, limits: Limits) -> Self {
        Self {
            app,
            limits,
            buckets: Mutex::new(HashMap::new()),
            idempotency: Mutex::new(IdempotencyStore::default()),
        }
    }
}

/// The authenticated caller of a request (its token's claims).
#[derive(Clone)]
pub struct Auth(pub Arc<Caller>);

impl<S: Send + Sync> FromRequestParts<S> for Auth {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        parts.extensions.get::<Auth>().cloned().ok_or_else(|| {
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal,
                "the request was not authenticated",
            )
        })
    }
}

/// The middleware (`axum::middleware::from_fn_with_state`).
pub async fn guard(State(guard): State<Arc<Guard>>, request: Request, next: Next) -> Response {
    let deadline = guard.limits.request_timeout;
    match tokio::time::timeout(deadline, run(&guard, request, next)).await {
        Ok(response) => response,
        Err(_) => Problem::new(
            StatusCode::GATEWAY_TIMEOUT,
            ErrorCode::DeadlineExceeded,
            format!("the request took longer than {} s", deadline.as_secs_f64()),
        )
        .into_response(),
    }
}

async fn run(guard: &Guard, mut request: Request, next: Next) -> Response {
    let caller = match crate::grpc::authorize_header(
        &guard.app,
        request
            .headers()
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes),
    ) {
        Ok(mut caller) => {
            caller.forwarded_by = request
                .headers()
                .get(crate::grpc::FORWARDED_BY)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            caller
        }
        Err(status) => {
            metrics::counter!("hearth_rest_auth_failures_total").increment(1);
            return Problem::from(status).into_response();
        }
    };
    if let Err(retry_after) = guard.take_token(&caller.claims.iss) {
        metrics::counter!("hearth_rest_rate_limited_total").increment(1);
        return Problem::rate_limited(retry_after).into_response();
    }
    let api_key = caller.claims.iss.clone();
    request.extensions_mut().insert(Auth(Arc::new(caller)));
    let key = match idempotency_key(request.method(), request.headers()) {
        Ok(Some(key)) => key,
        Ok(None) => return next.run(request).await,
        Err(problem) => return problem.into_response(),
    };
    // The body is read here (within the size limit) to tell a repeat from a reuse.
    let (parts, body) = request.into_parts();
    let bytes = match read_body(body, guard.limits.max_body).await {
        Ok(bytes) => bytes,
        Err(problem) => return problem.into_response(),
    };
    let fingerprint = fingerprint(&parts.method, &parts.uri, &bytes);
    let slot = (api_key, key);
    let ttl = guard.limits.idempotency_ttl;
    let capacity = guard.limits.idempotency_keys;
    {
        let mut store = lock(&guard.idempotency);
        match store.begin(&slot, fingerprint, ttl, capacity) {
            Begin::Run => {}
            Begin::Replay(stored) => return stored.response(),
            Begin::Mismatch => {
                return Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    ErrorCode::InvalidArgument,
                    "this Idempotency-Key was used with a different request",
                )
                .into_response();
            }
            Begin::InFlight => {
                return Problem::new(
                    StatusCode::CONFLICT,
                    ErrorCode::Aborted,
                    "a request with this Idempotency-Key is still running",
                )
                .into_response();
            }
        }
    }
    // Forgets the key if the handler never finishes (deadline, client gone, panic).
    let mut pending = Pending {
        store: &guard.idempotency,
        slot: Some(slot),
    };
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    let (parts, body) = response.into_parts();
    // Answers are small (a meeting, a token); one that cannot be read again is not kept.
    let Ok(body) = read_body(body, 1 << 20).await else {
        return Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            "the answer could not be read",
        )
        .into_response();
    };
    // A server error is not remembered: the retry runs again.
    if !parts.status.is_server_error()
        && let Some(slot) = pending.slot.take()
    {
        let stored = Stored {
            status: parts.status,
            headers: parts.headers.clone(),
            body: body.clone(),
        };
        lock(&guard.idempotency).finish(slot, stored);
    }
    Response::from_parts(parts, Body::from(body))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn read_body(body: Body, limit: usize) -> Result<Bytes, Problem> {
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(Problem::too_large(limit)),
        Err(e) => Err(Problem::invalid(format!(
            "the request body could not be read: {e}"
        ))),
    }
}

fn idempotency_key(method: &Method, headers: &HeaderMap) -> Result<Option<String>, Problem> {
    if method != Method::POST {
        return Ok(None);
    }
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(key) if !key.is_empty() && key.len() <= 255 => Ok(Some(key.to_owned())),
        _ => Err(Problem::invalid(
            "Idempotency-Key: 1 to 255 visible ASCII characters",
        )),
    }
}

fn fingerprint(method: &Method, uri: &axum::http::Uri, body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(method.as_str().as_bytes());
    h.update(b" ");
    h.update(uri.path().as_bytes());
    h.update(b"?");
    h.update(uri.query().unwrap_or("").as_bytes());
    h.update(b"\n");
    h.update(body);
    h.finalize().into()
}

// ----- Rate limit: a token bucket per API key ------------------------------------------------

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Guard {
    /// Takes one request from the API key's bucket, or says in how many seconds one is back.
    fn take_token(&self, api_key: &str) -> Result<(), u64> {
        let rate = self.limits.rate_per_second.max(f64::MIN_POSITIVE);
        let burst = f64::from(self.limits.rate_burst.max(1));
        let now = Instant::now();
        let mut buckets = lock(&self.buckets);
        // Only verified tokens get here, so there are as many buckets as API keys.
        let bucket = buckets.entry(api_key.to_owned()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) / rate;
            Err((wait.ceil() as u64).max(1))
        }
    }
}

// ----- Idempotency keys ----------------------------------------------------------------------

type Slot = (String, String);

#[derive(Clone)]
struct Stored {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Stored {
    fn response(&self) -> Response {
        let mut response = (self.status, self.body.clone()).into_response();
        for name in [header::CONTENT_TYPE, header::LOCATION, header::RETRY_AFTER] {
            if let Some(v) = self.headers.get(&name) {
                response.headers_mut().insert(name, v.clone());
            }
        }
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
        response
    }
}

enum Entry {
    InFlight,
    Done(Stored),
}

struct Remembered {
    fingerprint: [u8; 32],
    at: Instant,
    entry: Entry,
}

#[derive(Default)]
struct IdempotencyStore {
    entries: HashMap<Slot, Remembered>,
    /// Slots in the order they were first used (for expiry and eviction).
    order: VecDeque<(Slot, Instant)>,
}

enum Begin {
    Run,
    Replay(Stored),
    Mismatch,
    InFlight,
}

impl IdempotencyStore {
    fn begin(&mut self, slot: &Slot, fingerprint: [u8; 32], ttl: Duration, cap: usize) -> Begin {
        let now = Instant::now();
        // Forget what expired.
        while let Some((old, at)) = self.order.front() {
            if now.saturating_duration_since(*at) < ttl {
                break;
            }
            if self.entries.get(old).is_some_and(|r| r.at == *at) {
                self.entries.remove(old);
            }
            self.order.pop_front();
        }
        if let Some(r) = self.entries.get(slot) {
            if r.fingerprint != fingerprint {
                return Begin::Mismatch;
            }
            return match &r.entry {
                Entry::InFlight => Begin::InFlight,
                Entry::Done(stored) => Begin::Replay(stored.clone()),
            };
        }
        // Full: forget the oldest keys (the order list also holds abandoned keys' places,
        // and is bounded as well).
        let cap = cap.max(1);
        while self.entries.len() >= cap || self.order.len() >= cap.saturating_mul(2) {
            let Some((old, at)) = self.order.pop_front() else {
                break;
            };
            if self.entries.get(&old).is_some_and(|r| r.at == at) {
                self.entries.remove(&old);
            }
        }
        self.entries.insert(
            slot.clone(),
            Remembered {
                fingerprint,
                at: now,
                entry: Entry::InFlight,
            },
        );
        self.order.push_back((slot.clone(), now));
        Begin::Run
    }

    fn finish(&mut self, slot: Slot, stored: Stored) {
        if let Some(r) = self.entries.get_mut(&slot) {
            r.entry = Entry::Done(stored);
        }
    }

    fn abandon(&mut self, slot: &Slot) {
        if self
            .entries
            .get(slot)
            .is_some_and(|r| matches!(r.entry, Entry::InFlight))
        {
            self.entries.remove(slot);
        }
    }
}

struct Pending<'a> {
    store: &'a Mutex<IdempotencyStore>,
    slot: Option<Slot>,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            lock(self.store).abandon(&slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(key: &str) -> Slot {
        ("APIk".to_owned(), key.to_owned())
    }

    fn stored(body: &'static str) -> Stored {
        Stored {
            status: StatusCode::CREATED,
            headers: HeaderMap::new(),
            body: Bytes::from_static(body.as_bytes()),
        }
    }

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn keys_replay_refuse_reuse_and_report_in_flight() {
        let mut store = IdempotencyStore::default();
        assert!(matches!(
            store.begin(&slot("a"), [1; 32], DAY, 10),
            Begin::Run
        ));
        assert!(matches!(
            store.begin(&slot("a"), [1; 32], DAY, 10),
            Begin::InFlight
        ));
        assert!(matches!(
            store.begin(&slot("a"), [2; 32], DAY, 10),
            Begin::Mismatch
        ));
        store.finish(slot("a"), stored("first"));
        match store.begin(&slot("a"), [1; 32], DAY, 10) {
            Begin::Replay(s) => assert_eq!(s.body, "first"),
            _ => panic!("expected a replay"),
        }
        // Another API key's identical Idempotency-Key is another slot.
        let other = ("APIother".to_owned(), "a".to_owned());
        assert!(matches!(store.begin(&other, [2; 32], DAY, 10), Begin::Run));
        // An abandoned request frees its key; a finished one is not abandoned.
        store.abandon(&other);
        assert!(matches!(store.begin(&other, [3; 32], DAY, 10), Begin::Run));
        store.abandon(&slot("a"));
        assert!(matches!(
            store.begin(&slot("a"), [1; 32], DAY, 10),
            Begin::Replay(_)
        ));
    }

    #[test]
    fn keys_expire_and_the_oldest_are_forgotten_when_full() {
        let mut store = IdempotencyStore::default();
        for i in 0..5 {
            assert!(matches!(
                store.begin(&slot(&i.to_string()), [0; 32], DAY, 3),
                Begin::Run
            ));
        }
        assert_eq!(store.entries.len(), 3);
        assert!(matches!(
            store.begin(&slot("0"), [9; 32], DAY, 3),
            Begin::Run
        ));
        assert!(store.entries.len() <= 3 && store.order.len() <= 4);
        // A zero lifetime forgets everything before the next key.
        assert!(matches!(
            store.begin(&slot("x"), [0; 32], Duration::ZERO, 3),
            Begin::Run
        ));
        assert_eq!(store.entries.len(), 1);
    }
}
