//! `/v1/usage` (what the caller's API key used, from the ledger) and `/v1/webhooks`
//! (endpoints, their delivery logs, redelivery).
//!
//! A caller sees its own API key's usage and endpoints only (the key that signed its token);
//! a meeting-scoped token sees that meeting's usage and no webhooks.

use std::net::IpAddr;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hearth_actors::billing::store::{EventFilter, GroupBy, Ledger, UsageQuery, UsageRow, now_ms};
use hearth_actors::billing::webhook::{Delivery, Endpoint, EndpointPatch};
use hearth_actors::billing::{EVENT_TYPES, METERS, rfc3339_ms};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::Shared;
use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::guard::Auth;
use super::problem::{ErrorCode, Problem};
use crate::server::AppState;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;
/// Longest range of one aggregate query.
const MAX_RANGE_MS: i64 = 400 * DAY_MS;
const MAX_EVENTS: i64 = 10_000;
const DEFAULT_EVENTS: i64 = 1_000;
const MAX_ENDPOINTS: usize = 32;
const MAX_URL: usize = 2048;

fn ledger(app: &AppState) -> Result<&Ledger, Problem> {
    app.node.billing().map(|b| &b.ledger).ok_or_else(|| {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            "usage metering is off on this node (started with --no-ledger)",
        )
    })
}

fn db_problem(e: hearth_actors::billing::store::LedgerError) -> Problem {
    tracing::warn!(error = %e, "ledger query failed");
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Unavailable,
        "the ledger database does not answer; try again",
    )
}

// ----- Times ------------------------------------------------------------------------------

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

/// Parses an RFC 3339 timestamp (`2026-12-06T10:00:00Z`, offsets and fractions allowed) or a
/// date (`2026-12-06`, midnight UTC) into Unix milliseconds.
pub fn parse_time(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        if part.is_empty() || !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)? as u32, num(8..10)? as u32);
    if !(1..=12).contains(&mo) || d == 0 || d > days_in_month(y, mo) {
        return None;
    }
    let day_ms = days_from_civil(y, mo, d) * DAY_MS;
    if b.len() == 10 {
        return Some(day_ms);
    }
    if b.len() < 20 || !matches!(b[10], b'T' | b't' | b' ') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut millis = 0i64;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start || i - start > 9 {
            return None;
        }
        let frac = &s[start..i];
        let padded = format!("{frac:0<3}");
        millis = padded[..3].parse().ok()?;
    }
    let offset_ms = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let oh = num(i + 1..i + 3)?;
            let om = num(i + 4..i + 6)?;
            if oh > 23 || om > 59 {
                return None;
            }
            let off = (oh * 60 + om) * 60_000;
            if *sign == b'+' { off } else { -off }
        }
        _ => return None,
    };
    Some(day_ms + ((h * 60 + mi) * 60 + sec.min(59)) * 1000 + millis - offset_ms)
}

// ----- Usage ------------------------------------------------------------------------------

/// Query of `GET /v1/usage`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsageParams {
    /// Start (inclusive), RFC 3339 or a date; default: the start of the current window
    /// (the current UTC day for `hour`, 30 days back for `day`).
    pub from: Option<String>,
    /// End (exclusive), RFC 3339 or a date; default: now.
    pub to: Option<String>,
    /// Comma-separated meters (default: all): meeting_ms, participant_ms, audio_track_ms,
    /// video_track_ms, screen_track_ms, bytes_in, bytes_out, turn_relayed_bytes.
    pub meter: Option<String>,
    /// Totals per `api_key`, `meeting`, `participant` or `identity` (default: none).
    pub group_by: Option<UsageGroup>,
    /// `hour` or `day` (default: `day`, UTC).
    pub window: Option<UsageWindow>,
    /// Include what open intervals used up to their last checkpoint (default: true; at most
    /// a second behind). `false`: only what is final in the ledger.
    pub include_open: Option<bool>,
}

/// How totals are grouped.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UsageGroup {
    ApiKey,
    Meeting,
    Participant,
    Identity,
}

/// The window of a total (UTC).
#[derive(Clone, Copy, Debug, Deserialize, Serialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UsageWindow {
    Hour,
    Day,
}

/// One total.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageTotal {
    /// Start of the window (RFC 3339, UTC).
    pub window_start: String,
    /// The group's value (with `group_by`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub meter: String,
    /// Milliseconds for `*_ms` meters, bytes for the others.
    pub quantity: i64,
}

/// Usage totals.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageReport {
    pub from: String,
    pub to: String,
    /// `hour` or `day`.
    pub window: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_by: Option<UsageGroup>,
    pub totals: Vec<UsageTotal>,
}

/// Usage totals per window.
///
/// What the caller's API key used, from the ledger: integer milliseconds and bytes per
/// window (hour or day, UTC), optionally per API key, meeting, participant or identity. A
/// row belongs to the window its slice starts in; slices never cross an hour, so hour- and
/// day-aligned ranges are exact. Intervals still open count up to their last checkpoint (at
/// most a second old) unless `include_open=false`.
#[utoipa::path(
    get,
    path = "/v1/usage",
    tag = "usage",
    operation_id = "getUsage",
    params(UsageParams),
    responses(
        (status = 200, description = "Totals.", body = UsageReport),
        (status = 400, description = "Bad range, meter, group or window.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "No admin grant.", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited.", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait."))),
        (status = 503, description = "Metering is off, or the database does not answer.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_usage(
    axum::extract::State(app): Shared,
    auth: Auth,
    ApiQuery(params): ApiQuery<UsageParams>,
) -> Result<axum::Json<UsageReport>, Problem> {
    let (window_name, window_ms) = match params.window.unwrap_or(UsageWindow::Day) {
        UsageWindow::Hour => ("hour", HOUR_MS),
        UsageWindow::Day => ("day", DAY_MS),
    };
    let now = now_ms();
    let to = match &params.to {
        Some(s) => parse_time(s)
            .ok_or_else(|| Problem::invalid("to: an RFC 3339 time or a date (YYYY-MM-DD)"))?,
        None => now,
    };
    let from = match &params.from {
        Some(s) => parse_time(s)
            .ok_or_else(|| Problem::invalid("from: an RFC 3339 time or a date (YYYY-MM-DD)"))?,
        None if window_ms == HOUR_MS => to.div_euclid(DAY_MS) * DAY_MS,
        None => to.div_euclid(DAY_MS) * DAY_MS - 29 * DAY_MS,
    };
    if from >= to {
        return Err(Problem::invalid("from must be before to"));
    }
    if to - from > MAX_RANGE_MS {
        return Err(Problem::invalid("the range is at most 400 days"));
    }
    let meters: Vec<String> = match &params.meter {
        None => Vec::new(),
        Some(list) => {
            let mut out = Vec::new();
            for m in list.split(',').map(str::trim) {
                if !METERS.contains(&m) {
                    return Err(Problem::invalid(format!(
                        "meter: unknown meter {m:?} (known: {})",
                        METERS.join(", ")
                    )));
                }
                out.push(m.to_owned());
            }
            out
        }
    };
    let group_by = params.group_by.map(|g| match g {
        UsageGroup::ApiKey => GroupBy::ApiKey,
        UsageGroup::Meeting => GroupBy::Meeting,
        UsageGroup::Participant => GroupBy::Participant,
        UsageGroup::Identity => GroupBy::Identity,
    });
    let claims = &auth.0.claims;
    let query = UsageQuery {
        from_ms: from,
        to_ms: to,
        window_ms,
        meters,
        group_by,
        api_key: Some(claims.iss.clone()),
        meeting: (!claims.meeting.is_empty()).then(|| claims.meeting.clone()),
    };
    let ledger = ledger(&app)?;
    let mut rows = ledger.aggregate(&query).await.map_err(db_problem)?;
    if params.include_open.unwrap_or(true) {
        // Open intervals up to their last checkpoint (at most a second old), merged in.
        let open = ledger.open_usage(&query).await.map_err(db_problem)?;
        for o in open {
            match rows.iter_mut().find(|r| {
                r.window_start_ms == o.window_start_ms && r.group == o.group && r.meter == o.meter
            }) {
                Some(r) => r.quantity += o.quantity,
                None => rows.push(o),
            }
        }
        rows.sort_by(|a, b| {
            (a.window_start_ms, &a.group, &a.meter).cmp(&(b.window_start_ms, &b.group, &b.meter))
        });
    }
    Ok(axum::Json(UsageReport {
        from: rfc3339_ms(from),
        to: rfc3339_ms(to),
        window: window_name.to_owned(),
        group_by: params.group_by,
        totals: rows
            .into_iter()
            .map(|r| UsageTotal {
                window_start: rfc3339_ms(r.window_start_ms),
                group: r.group,
                meter: r.meter,
                quantity: r.quantity,
            })
            .collect(),
    }))
}

/// Query of `GET /v1/usage/events`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsParams {
    /// Rows after this sequence number (the last `seq` you have; default 0).
    #[param(minimum = 0)]
    pub after: Option<i64>,
    /// At most this many rows (1 to 10000, default 1000).
    #[param(minimum = 1, maximum = 10000)]
    pub limit: Option<i64>,
}

/// One ledger row.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageEvent {
    /// Ledger order: pull with `after` = the last one you have.
    pub seq: i64,
    /// Stable and unique: the same usage always has the same key.
    pub idempotency_key: String,
    pub node: String,
    pub meter: String,
    pub quantity: i64,
    pub api_key: String,
    pub meeting: String,
    pub participant: String,
    pub identity: String,
    /// The track, TURN allocation, participant or meeting the row measures.
    pub subject: String,
    pub started_at: String,
    pub ended_at: String,
    pub recorded_at: String,
}

impl From<UsageRow> for UsageEvent {
    fn from(r: UsageRow) -> Self {
        Self {
            seq: r.seq,
            idempotency_key: r.idempotency_key,
            node: r.node,
            meter: r.meter,
            quantity: r.quantity,
            api_key: r.api_key,
            meeting: r.meeting,
            participant: r.participant,
            identity: r.identity,
            subject: r.subject,
            started_at: rfc3339_ms(r.started_ms),
            ended_at: rfc3339_ms(r.ended_ms),
            recorded_at: rfc3339_ms(r.recorded_ms),
        }
    }
}

/// A page of ledger rows (the `application/json` form).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageEventPage {
    pub events: Vec<UsageEvent>,
    /// Pass as `after` for the next page (the last row's `seq`, or `after` if none).
    pub next_after: i64,
}

const CSV_HEADER: &str = "seq,idempotency_key,node,meter,quantity,api_key,meeting,participant,identity,subject,started_at,ended_at,recorded_at\r\n";

fn csv_field(out: &mut String, s: &str) {
    if s.contains([',', '"', '\r', '\n']) {
        out.push('"');
        out.push_str(&s.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(s);
    }
}

/// Raw ledger rows.
///
/// Every row of the caller's API key after `after`, in ledger order: NDJSON by default
/// (`Accept: application/x-ndjson`), CSV with `Accept: text/csv`, or one JSON object with
/// `Accept: application/json`. A billing system keeps the last `seq` it stored and asks for
/// the rows after it; `idempotencyKey` is unique, so a row read twice is recognised. The
/// `Hearth-Next-After` header carries the `after` of the next page.
#[utoipa::path(
    get,
    path = "/v1/usage/events",
    tag = "usage",
    operation_id = "listUsageEvents",
    params(EventsParams),
    responses(
        (status = 200, description = "Rows, one JSON object per line.",
            content(
                (String = "application/x-ndjson"),
                (String = "text/csv"),
                (UsageEventPage = "application/json"),
            ),
            headers(("Hearth-Next-After" = i64, description = "`after` for the next page."))),
        (status = 400, description = "Bad `after` or `limit`.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "No admin grant.", body = Problem, content_type = "application/problem+json"),
        (status = 406, description = "None of the formats asked for in `Accept`.", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited.", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait."))),
        (status = 503, description = "Metering is off, or the database does not answer.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_usage_events(
    axum::extract::State(app): Shared,
    auth: Auth,
    headers: HeaderMap,
    ApiQuery(params): ApiQuery<EventsParams>,
) -> Result<Response, Problem> {
    let after = params.after.unwrap_or(0);
    if after < 0 {
        return Err(Problem::invalid("after: 0 or more"));
    }
    let limit = params.limit.unwrap_or(DEFAULT_EVENTS);
    if !(1..=MAX_EVENTS).contains(&limit) {
        return Err(Problem::invalid(format!("limit: 1 to {MAX_EVENTS}")));
    }
    let format = negotiate(&headers)?;
    let claims = &auth.0.claims;
    let filter = EventFilter {
        api_key: Some(claims.iss.clone()),
        meeting: (!claims.meeting.is_empty()).then(|| claims.meeting.clone()),
    };
    let rows = ledger(&app)?
        .events(&filter, after, limit)
        .await
        .map_err(db_problem)?;
    let next = rows.last().map_or(after, |r| r.seq);
    let events: Vec<UsageEvent> = rows.into_iter().map(UsageEvent::from).collect();
    let (content_type, body) = match format {
        Format::Json => (
            "application/json",
            serde_json::to_string(&UsageEventPage {
                events,
                next_after: next,
            })
            .unwrap_or_default(),
        ),
        Format::Ndjson => {
            let mut out = String::new();
            for e in &events {
                out.push_str(&serde_json::to_string(e).unwrap_or_default());
                out.push('\n');
            }
            ("application/x-ndjson", out)
        }
        Format::Csv => {
            let mut out = String::from(CSV_HEADER);
            for e in &events {
                out.push_str(&e.seq.to_string());
                for field in [
                    &e.idempotency_key,
                    &e.node,
                    &e.meter,
                    &e.quantity.to_string(),
                    &e.api_key,
                    &e.meeting,
                    &e.participant,
                    &e.identity,
                    &e.subject,
                    &e.started_at,
                    &e.ended_at,
                    &e.recorded_at,
                ] {
                    out.push(',');
                    csv_field(&mut out, field);
                }
                out.push_str("\r\n");
            }
            ("text/csv; charset=utf-8; header=present", out)
        }
    };
    let mut response = (StatusCode::OK, body).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert("hearth-next-after", HeaderValue::from(next));
    Ok(response)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Ndjson,
    Csv,
    Json,
}

/// The format `Accept` asks for (the first acceptable one in its order; NDJSON for `*/*`).
fn negotiate(headers: &HeaderMap) -> Result<Format, Problem> {
    let accept = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    if accept.trim().is_empty() {
        return Ok(Format::Ndjson);
    }
    let mut best: Option<(f32, usize, Format)> = None;
    for (i, item) in accept.split(',').enumerate() {
        let mut parts = item.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        if q <= 0.0 {
            continue;
        }
        let format = match media.as_str() {
            "application/x-ndjson" | "application/ndjson" | "application/*" | "*/*" => {
                Format::Ndjson
            }
            "text/csv" | "text/*" => Format::Csv,
            "application/json" => Format::Json,
            _ => continue,
        };
        if best.is_none_or(|(bq, bi, _)| q > bq || (q == bq && i < bi)) {
            best = Some((q, i, format));
        }
    }
    best.map(|(_, _, f)| f).ok_or_else(|| {
        Problem::new(
            StatusCode::NOT_ACCEPTABLE,
            ErrorCode::InvalidArgument,
            "Accept: application/x-ndjson, text/csv or application/json",
        )
    })
}

// ----- Webhooks ---------------------------------------------------------------------------

/// A webhook's body, as Standard Webhooks lays it out: `{"type", "timestamp", "data"}`;
/// `data` in snake_case like the usage rows' columns.
pub fn webhook_body(e: &hearth_actors::billing::LifecycleEvent) -> String {
    if let Some(t) = &e.transcript {
        // `transcript.segment`: one final segment of live captions.
        return serde_json::json!({
            "type": e.event_type,
            "timestamp": rfc3339_ms(t.meeting_started_ms + t.end_ms),
            "data": {
                "meeting": t.meeting,
                "meeting_started_at": rfc3339_ms(t.meeting_started_ms),
                "participant": t.participant,
                "identity": t.identity,
                "name": t.name,
                "track": t.track,
                "segment_id": t.segment_id,
                "text": t.text,
                "language": t.language,
                "start_ms": t.start_ms,
                "end_ms": t.end_ms,
                "started_at": rfc3339_ms(t.meeting_started_ms + t.start_ms),
                "ended_at": rfc3339_ms(t.meeting_started_ms + t.end_ms),
            },
        })
        .to_string();
    }
    let mut data = serde_json::Map::new();
    data.insert("meeting".into(), e.meeting.clone().into());
    if !e.participant.is_empty() {
        data.insert("participant".into(), e.participant.clone().into());
        data.insert("identity".into(), e.identity.clone().into());
    }
    if let Some((track, kind)) = &e.track {
        data.insert("track".into(), track.clone().into());
        data.insert("kind".into(), (*kind).into());
    }
    data.insert("started_at".into(), rfc3339_ms(e.started_ms).into());
    if let Some(end) = e.ended_ms {
        data.insert("ended_at".into(), rfc3339_ms(end).into());
        data.insert("duration_ms".into(), (end - e.started_ms).max(0).into());
        data.insert(
            "reason".into(),
            e.reason.clone().unwrap_or_else(|| "ended".into()).into(),
        );
    }
    serde_json::json!({
        "type": e.event_type,
        "timestamp": rfc3339_ms(e.ended_ms.unwrap_or(e.started_ms)),
        "data": data,
    })
    .to_string()
}

/// A webhook endpoint.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookEndpoint {
    pub id: String,
    pub url: String,
    /// Event types delivered, or `["*"]` for all.
    pub events: Vec<String>,
    pub description: String,
    /// False when turned off by the app.
    pub enabled: bool,
    /// True when deliveries kept failing; set `enabled: true` to resume.
    pub paused: bool,
    pub paused_reason: String,
    pub created_at: String,
    pub updated_at: String,
    /// The signing secret (`whsec_...`): only in the answer that created the endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

impl WebhookEndpoint {
    fn from(e: Endpoint, with_secret: bool) -> Self {
        Self {
            secret: with_secret.then(|| e.secret.clone()),
            id: e.id,
            url: e.url,
            events: e.events,
            description: e.description,
            enabled: e.enabled,
            paused: e.paused,
            paused_reason: e.paused_reason,
            created_at: rfc3339_ms(e.created_ms),
            updated_at: rfc3339_ms(e.updated_ms),
        }
    }
}

/// Body of `POST /v1/webhooks`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateWebhook {
    /// Where events are POSTed: `http://` or `https://`, at most 2048 bytes.
    pub url: String,
    /// Event types (default: all): meeting.started, meeting.ended, participant.joined,
    /// participant.left, track.published, track.unpublished.
    #[serde(default)]
    pub events: Option<Vec<String>>,
    #[serde(default)]
    pub description: Option<String>,
}

/// Body of `PATCH /v1/webhooks/{id}`: absent fields stay.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateWebhook {
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    pub description: Option<String>,
    /// `true` also lifts a pause.
    pub enabled: Option<bool>,
}

/// The endpoints of the caller's API key.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookList {
    pub endpoints: Vec<WebhookEndpoint>,
}

/// One delivery (an event to an endpoint, with its attempts).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookDelivery {
    pub id: i64,
    /// The `webhook-id` the endpoint received: the same on every attempt.
    pub event_id: String,
    pub event_type: String,
    /// `pending`, `delivered` or `failed` (attempts exhausted).
    pub status: String,
    pub attempts: i64,
    /// When a pending delivery is tried next.
    pub next_attempt_at: String,
    /// The last answer's HTTP status (0: none).
    pub last_status: i64,
    pub last_error: String,
    pub created_at: String,
    pub updated_at: String,
}

impl From<Delivery> for WebhookDelivery {
    fn from(d: Delivery) -> Self {
        Self {
            id: d.id,
            event_id: d.event_id,
            event_type: d.event_type,
            status: d.status,
            attempts: d.attempts,
            next_attempt_at: rfc3339_ms(d.next_attempt_ms),
            last_status: d.last_status,
            last_error: d.last_error,
            created_at: rfc3339_ms(d.created_ms),
            updated_at: rfc3339_ms(d.updated_ms),
        }
    }
}

/// A page of the delivery log, newest first.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookDeliveryList {
    pub deliveries: Vec<WebhookDelivery>,
    /// Pass as `before` for the next (older) page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_before: Option<i64>,
}

/// Query of the delivery log.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeliveryParams {
    /// Deliveries older than this id (default: from the newest).
    #[param(minimum = 1)]
    pub before: Option<i64>,
    /// At most this many (1 to 100, default 50).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
}

fn node_wide(auth: &Auth) -> Result<(), Problem> {
    auth.0.node_wide().map_err(Problem::from)
}

fn check_events(events: &[String]) -> Result<(), Problem> {
    if events.len() > EVENT_TYPES.len() + 1 {
        return Err(Problem::invalid("events: too many"));
    }
    for e in events {
        if e != "*" && !EVENT_TYPES.contains(&e.as_str()) {
            return Err(Problem::invalid(format!(
                "events: unknown type {e:?} (known: {}, or *)",
                EVENT_TYPES.join(", ")
            )));
        }
    }
    Ok(())
}

/// A webhook URL: http(s), a host, no credentials, not this node.
fn check_url(app: &AppState, url: &str) -> Result<(), Problem> {
    if url.len() > MAX_URL {
        return Err(Problem::invalid("url: at most 2048 bytes"));
    }
    let uri: axum::http::Uri = url
        .parse()
        .map_err(|_| Problem::invalid("url: not a URL"))?;
    let scheme = uri.scheme_str().unwrap_or("");
    if scheme != "http" && scheme != "https" {
        return Err(Problem::invalid("url: must be http:// or https://"));
    }
    let Some(authority) = uri.authority() else {
        return Err(Problem::invalid("url: needs a host"));
    };
    if authority.as_str().contains('@') {
        return Err(Problem::invalid(
            "url: credentials in the URL are not allowed",
        ));
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    if host.is_empty() {
        return Err(Problem::invalid("url: needs a host"));
    }
    if let Some(l) = &app.config.ledger
        && !l.webhooks.host_allowed(host)
    {
        return Err(Problem::invalid(format!(
            "url: this node delivers webhooks only to {}",
            l.webhooks.allowed_hosts.join(", ")
        )));
    }
    let port = authority
        .port_u16()
        .unwrap_or(if scheme == "https" { 443 } else { 80 });
    let own_ports: Vec<u16> = [app.http_addr(), app.grpc_addr()]
        .into_iter()
        .flatten()
        .map(|a| a.port())
        .collect();
    let ip: Option<IpAddr> = host.parse().ok();
    let local = host.eq_ignore_ascii_case("localhost")
        || ip.is_some_and(|ip| {
            let ip = match ip {
                IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
                v4 => v4,
            };
            ip.is_loopback()
                || ip.is_unspecified()
                || ip == app.config.public_ip
                || app.http_addr().is_some_and(|a| a.ip() == ip)
        });
    if local && own_ports.contains(&port) {
        return Err(Problem::invalid("url: points at this node"));
    }
    Ok(())
}

fn endpoint_id(id: &str) -> Result<&str, Problem> {
    if id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(Problem::invalid("id: not an endpoint id"));
    }
    Ok(id)
}

/// Add a webhook endpoint.
///
/// Events of the caller's API key are POSTed to `url`, signed as Standard Webhooks do
/// (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256 of
/// id.timestamp.body>` with the key in `secret`), retried with exponential backoff until it
/// answers 2xx. The secret is shown in this answer only.
#[utoipa::path(
    post,
    path = "/v1/webhooks",
    tag = "webhooks",
    operation_id = "createWebhook",
    request_body = CreateWebhook,
    responses(
        (status = 201, description = "The endpoint, with its secret.", body = WebhookEndpoint),
        (status = 400, description = "Bad URL or event type.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "No admin grant, or a meeting-scoped token.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Too many endpoints for this API key.", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body larger than 64 KiB.", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not `application/json`.", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited.", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait."))),
        (status = 503, description = "Metering is off, or the database does not answer.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_webhook(
    axum::extract::State(app): Shared,
    auth: Auth,
    ApiJson(body): ApiJson<CreateWebhook>,
) -> Result<Response, Problem> {
    node_wide(&auth)?;
    check_url(&app, &body.url)?;
    let events = body.events.unwrap_or_default();
    check_events(&events)?;
    let description = body.description.unwrap_or_default();
    if description.len() > 1024 {
        return Err(Problem::invalid("description: at most 1024 bytes"));
    }
    let ledger = ledger(&app)?;
    let key = &auth.0.claims.iss;
    if ledger.endpoints(key).await.map_err(db_problem)?.len() >= MAX_ENDPOINTS {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            ErrorCode::FailedPrecondition,
            format!("an API key has at most {MAX_ENDPOINTS} webhook endpoints"),
        ));
    }
    let ep = ledger
        .create_endpoint(key, &body.url, &events, &description, None)
        .await
        .map_err(db_problem)?;
    let location = HeaderValue::try_from(format!("/v1/webhooks/{}", ep.id))
        .unwrap_or_else(|_| HeaderValue::from_static("/v1/webhooks"));
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        axum::Json(WebhookEndpoint::from(ep, true)),
    )
        .into_response())
}

/// List webhook endpoints.
#[utoipa::path(
    get,
    path = "/v1/webhooks",
    tag = "webhooks",
    operation_id = "listWebhooks",
    responses(
        (status = 200, description = "The caller's endpoints.", body = WebhookList),
        (status = 401, description = "No valid token.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "No admin grant, or a meeting-scoped token.", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited.", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait."))),
        (status = 503, description = "Metering is off, or the database does not answer.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_webhooks(
    axum::extract::State(app): Shared,
    auth: Auth,
) -> Result<axum::Json<WebhookList>, Problem> {
    node_wide(&auth)?;
    let endpoints = ledger(&app)?
        .endpoints(&auth.0.claims.iss)
        .await
        .map_err(db_problem)?;
    Ok(axum::Json(WebhookList {
        endpoints: endpoints
            .into_iter()
            .map(|e| WebhookEndpoint::from(e, false))
            .collect(),
    }))
}

/// Get a webhook endpoint.
#[utoipa::path(
    get,
    path = "/v1/webhooks/{id}",
    tag = "webhooks",
    operation_id = "getWebhook",
    params(("id" = String, Path, description = "The endpoint's id.")),
    responses(
        (status = 200, description = "The endpoint.", body = WebhookEndpoint),
        (status = 400, description = "Malformed id.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "No admin grant, or a meeting-scoped token.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such endpoint.", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited.", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait."))),
        (status = 503, description = "Metering is off, or the database does not answer.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_webhook(
    axum::extract::State(app): Shared,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<axum::Json<WebhookEndpoint>, Problem> {
    node_wide(&auth)?;
    let id = endpoint_id(&id)?;
    let ep = ledger(&app)?
        .endpoint(&auth.0.claims.iss, id)
        .await
        .map_err(db_problem)?
        .ok_or_else(|| Problem::not_found(format!("webhook endpoint {id}")))?;
    Ok(axum::Json(WebhookEndpoint::from(ep, false)))
}

/// Change a webhook endpoint.
///
/// `enabled: true` resumes a paused endpoint: its pending deliveries go out again.
#[utoipa::path(
    patch,
    path = "/v1/webhooks/{id}",
    tag = "webhooks",
    operation_id = "updateWebhook",
    params(("id" = String, Path, description = "The endpoint's id.")),
    request_body = UpdateWebhook,
    responses(
        (status = 200, description = "The endpoint, updated.", body = WebhookEndpoint),
        (status = 400, description = "Bad URL or event type.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "No admin grant, or a meeting-scoped token.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such endpoint.", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body larger than 64 KiB.", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not `application/json`.", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited.", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait."))),
        (status = 503, description = "Metering is off, or the database does not answer.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn update_webhook(
    axum::extract::State(app): Shared,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<UpdateWebhook>,
) -> Result<axum::Json<WebhookEndpoint>, Problem> {
    node_wide(&auth)?;
    let id = endpoint_id(&id)?;
    if let Some(url) = &body.url {
        check_url(&app, url)?;
    }
    if let Some(events) = &body.events {
        check_events(events)?;
    }
    if body.description.as_ref().is_some_and(|d| d.len() > 1024) {
        return Err(Problem::invalid("description: at most 1024 bytes"));
    }
    let patch = EndpointPatch {
        url: body.url,
        events: body.events,
        description: body.description,
        enabled: body.enabled,
    };
    let ledger = ledger(&app)?;
    let ep = ledger
        .update_endpoint(&auth.0.claims.iss, id, &patch)
        .await
        .map_err(db_problem)?
        .ok_or_else(|| Problem::not_found(format!("webhook endpoint {id}")))?;
    if ep.enabled
        && let Some(hooks) = app.node.webhooks()
    {
        hooks.wake.notify_one();
    }
    Ok(axum::Json(WebhookEndpoint::from(ep, false)))
}

/// Delete a webhook endpoint (and its delivery log).
#[utoipa::path(
    delete,
    path = "/v1/webhooks/{id}",
    tag = "webhooks",
    operation_id = "deleteWebhook",
    params(("id" = String, Path, description = "The endpoint's id.")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 400, description = "Malformed id.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "No admin grant, or a meeting-scoped token.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such endpoint.", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited.", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait."))),
        (status = 503, description = "Metering is off, or the database does not answer.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete_webhook(
    axum::extract::State(app): Shared,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, Problem> {
    node_wide(&auth)?;
    let id = endpoint_id(&id)?;
    if ledger(&app)?
        .delete_endpoint(&auth.0.claims.iss, id)
        .await
        .map_err(db_problem)?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Problem::not_found(format!("webhook endpoint {id}")))
    }
}

/// The delivery log of an endpoint, newest first.
#[utoipa::path(
    get,
    path = "/v1/webhooks/{id}/deliveries",
    tag = "webhooks",
    operation_id = "listWebhookDeliveries",
    params(("id" = String, Path, description = "The endpoint's id."), DeliveryParams),
    responses(
        (status = 200, description = "A page of deliveries.", body = WebhookDeliveryList),
        (status = 400, description = "Malformed id, `before` or `limit`.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "No admin grant, or a meeting-scoped token.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such endpoint.", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited.", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait."))),
        (status = 503, description = "Metering is off, or the database does not answer.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_deliveries(
    axum::extract::State(app): Shared,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
    ApiQuery(params): ApiQuery<DeliveryParams>,
) -> Result<axum::Json<WebhookDeliveryList>, Problem> {
    node_wide(&auth)?;
    let id = endpoint_id(&id)?;
    let limit = params.limit.unwrap_or(50);
    if !(1..=100).contains(&limit) {
        return Err(Problem::invalid("limit: 1 to 100"));
    }
    let before = params.before.unwrap_or(0);
    if params.before.is_some() && before < 1 {
        return Err(Problem::invalid("before: 1 or more"));
    }
    let ledger = ledger(&app)?;
    if ledger
        .endpoint(&auth.0.claims.iss, id)
        .await
        .map_err(db_problem)?
        .is_none()
    {
        return Err(Problem::not_found(format!("webhook endpoint {id}")));
    }
    let deliveries = ledger
        .deliveries(id, before, limit)
        .await
        .map_err(db_problem)?;
    let next_before = (deliveries.len() as i64 == limit)
        .then(|| deliveries.last().map(|d| d.id))
        .flatten();
    Ok(axum::Json(WebhookDeliveryList {
        deliveries: deliveries.into_iter().map(WebhookDelivery::from).collect(),
        next_before,
    }))
}

/// Send a delivery again.
///
/// Queues it now with a fresh attempt count, whatever its status (the event keeps its
/// `webhook-id`, so the receiver can tell a repeat).
#[utoipa::path(
    post,
    path = "/v1/webhooks/{id}/deliveries/{delivery}/redeliver",
    tag = "webhooks",
    operation_id = "redeliverWebhook",
    params(
        ("id" = String, Path, description = "The endpoint's id."),
        ("delivery" = i64, Path, description = "The delivery's id."),
    ),
    responses(
        (status = 202, description = "Queued."),
        (status = 400, description = "Malformed id.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "No admin grant, or a meeting-scoped token.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such endpoint or delivery.", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited.", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait."))),
        (status = 503, description = "Metering is off, or the database does not answer.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn redeliver(
    axum::extract::State(app): Shared,
    auth: Auth,
    ApiPath((id, delivery)): ApiPath<(String, i64)>,
) -> Result<StatusCode, Problem> {
    node_wide(&auth)?;
    let id = endpoint_id(&id)?;
    let ledger = ledger(&app)?;
    if ledger
        .endpoint(&auth.0.claims.iss, id)
        .await
        .map_err(db_problem)?
        .is_none()
        || !ledger.redeliver(id, delivery).await.map_err(db_problem)?
    {
        return Err(Problem::not_found(format!(
            "delivery {delivery} of endpoint {id}"
        )));
    }
    if let Some(hooks) = app.node.webhooks() {
        hooks.wake.notify_one();
    }
    Ok(StatusCode::ACCEPTED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rfc3339_and_dates() {
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_time("1970-01-01"), Some(0));
        assert_eq!(
            parse_time("2000-02-29T00:00:00.005Z"),
            Some(951_782_400_005)
        );
        assert_eq!(
            parse_time("2023-11-14T22:13:20.123456Z"),
            Some(1_700_000_000_123)
        );
        assert_eq!(
            parse_time("2023-11-14T23:13:20+01:00"),
            Some(1_700_000_000_000)
        );
        assert_eq!(parse_time("2023-02-29"), None, "not a leap year");
        assert_eq!(parse_time("2023-13-01"), None);
        assert_eq!(parse_time("2023-11-14T22:13:20"), None, "no offset");
        assert_eq!(parse_time("yesterday"), None);
        assert_eq!(parse_time("2023-11-14T22:13:20.Z"), None);
        assert_eq!(parse_time("２023-11-14"), None);
    }

    #[test]
    fn accept_negotiation() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::ACCEPT, HeaderValue::from_str(v).unwrap());
            negotiate(&m)
        };
        assert_eq!(negotiate(&HeaderMap::new()).unwrap(), Format::Ndjson);
        assert_eq!(h("text/csv").unwrap(), Format::Csv);
        assert_eq!(h("application/json").unwrap(), Format::Json);
        assert_eq!(h("text/csv;q=0.5, application/json").unwrap(), Format::Json);
        assert_eq!(h("*/*").unwrap(), Format::Ndjson);
        assert!(h("image/png").is_err());
    }
}
