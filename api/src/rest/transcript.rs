//! `GET /v1/meetings/{id}/transcript`: a meeting's live-caption transcript, as JSON, WebVTT
//! or SubRip, from the node's database (final segments only, in spoken order).
//!
//! A meeting name can be reused: each run of the meeting (a *session*, named by the time it
//! started) has its own transcript. The newest session is the default; `session` picks
//! another (the JSON answer lists them).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hearth_actors::billing::rfc3339_ms;
use hearth_actors::billing::store::TranscriptRow;
use hearth_actors::domain::ApiError;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::Shared;
use super::extract::{ApiPath, ApiQuery};
use super::guard::Auth;
use super::problem::{ErrorCode, Problem};

/// The transcript's file format.
#[derive(Clone, Copy, Debug, Default, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TranscriptFormat {
    #[default]
    Json,
    /// WebVTT (`text/vtt`), one cue per segment, the speaker as a voice span.
    Vtt,
    /// SubRip (`application/x-subrip`), one entry per segment, `Name: text`.
    Srt,
}

/// Query of `GET /v1/meetings/{id}/transcript`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TranscriptParams {
    /// `json` (default), `vtt` or `srt`.
    pub format: Option<TranscriptFormat>,
    /// Which run of the meeting: its start time (RFC 3339, or Unix milliseconds) as listed
    /// in `sessions`; default: the newest.
    pub session: Option<String>,
}

/// One final segment.
#[derive(Clone, Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TranscriptSegment {
    /// `SG_...`, the same id participants saw on signaling and webhooks carry.
    pub segment_id: String,
    pub participant_id: String,
    pub identity: String,
    /// Display name.
    pub name: String,
    pub track_id: String,
    /// Milliseconds from the meeting's start.
    pub start_ms: i64,
    pub end_ms: i64,
    pub text: String,
    /// ISO 639-1.
    pub language: String,
}

/// A meeting's transcript.
#[derive(Clone, Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Transcript {
    pub meeting: String,
    /// When this session of the meeting started (RFC 3339); empty if none has a transcript.
    pub session: String,
    /// Every session of the meeting with a transcript, newest first.
    pub sessions: Vec<String>,
    /// In spoken order.
    pub segments: Vec<TranscriptSegment>,
}

/// A meeting's transcript.
///
/// The final transcript segments of a meeting's live captions, in spoken order: JSON,
/// WebVTT or SubRip. Available during the meeting (up to the last second) and after it
/// ended. Needs the node's database (not `--no-ledger`).
#[utoipa::path(
    get,
    path = "/v1/meetings/{id}/transcript",
    tag = "meetings",
    operation_id = "getTranscript",
    params(("id" = String, Path, description = "The meeting's name."), TranscriptParams),
    responses(
        (status = 200, description = "The transcript: JSON, or with `format=vtt` WebVTT, with `format=srt` SubRip.",
            content(
                (Transcript = "application/json"),
                (String = "text/vtt"),
                (String = "application/x-subrip"),
            )),
        (status = 400, description = "Malformed name, format or session.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "No admin grant, or another meeting's token.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such session of the meeting.", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited.", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait."))),
        (status = 503, description = "The node has no database, or it does not answer.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_transcript(
    axum::extract::State(app): Shared,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
    ApiQuery(params): ApiQuery<TranscriptParams>,
) -> Result<Response, Problem> {
    let id = super::meeting_in_scope(&auth, &id)?;
    let session = match params.session.as_deref() {
        None | Some("") => None,
        Some(s) => Some(
            s.parse::<i64>()
                .ok()
                .or_else(|| super::usage::parse_time(s))
                .ok_or_else(|| {
                    Problem::invalid("session: a start time as listed in `sessions` (RFC 3339)")
                })?,
        ),
    };
    let (sessions, chosen, rows) = app
        .node
        .transcript(id.as_str(), Some(&auth.0.claims.iss), session)
        .await
        .map_err(|e| match e {
            ApiError::NotFound(what) => Problem::not_found(format!("no {what}")),
            ApiError::Unavailable(why) => {
                Problem::new(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable, why)
            }
            other => Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal,
                other.to_string(),
            ),
        })?;
    let (content_type, body) = match params.format.unwrap_or_default() {
        TranscriptFormat::Json => {
            let t = Transcript {
                meeting: id.to_string(),
                session: chosen.map(rfc3339_ms).unwrap_or_default(),
                sessions: sessions.into_iter().map(rfc3339_ms).collect(),
                segments: rows.into_iter().map(segment).collect(),
            };
            return Ok(axum::Json(t).into_response());
        }
        TranscriptFormat::Vtt => ("text/vtt; charset=utf-8", webvtt(&rows)),
        TranscriptFormat::Srt => ("application/x-subrip; charset=utf-8", srt(&rows)),
    };
    Ok((
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        body,
    )
        .into_response())
}

fn segment(r: TranscriptRow) -> TranscriptSegment {
    TranscriptSegment {
        segment_id: r.segment_id,
        participant_id: r.participant,
        identity: r.identity,
        name: r.name,
        track_id: r.track,
        start_ms: r.start_ms,
        end_ms: r.end_ms,
        text: r.text,
        language: r.language,
    }
}

/// `hh:mm:ss.mmm` (WebVTT, `sep` '.') or `hh:mm:ss,mmm` (SubRip, `sep` ',').
fn timestamp(ms: i64, sep: char) -> String {
    let ms = ms.max(0);
    let (h, rest) = (ms / 3_600_000, ms % 3_600_000);
    let (m, rest) = (rest / 60_000, rest % 60_000);
    let (s, milli) = (rest / 1000, rest % 1000);
    format!("{h:02}:{m:02}:{s:02}{sep}{milli:03}")
}

/// A cue's end: after its start (a player drops empty cues).
fn end_of(r: &TranscriptRow) -> i64 {
    r.end_ms.max(r.start_ms + 1)
}

/// Text for a WebVTT cue: no `-->`, no markup, no blank lines.
fn vtt_text(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Text for SubRip: no blank lines (they end an entry) and no markup. SubRip has no escape,
/// and players render `<b>`, `<i>`, `<font ...>` and ASS overrides such as `{\an8}` from
/// the text, so angle brackets and braces become look-alikes that nothing interprets (which
/// also keeps `-->` out of a cue's text).
fn srt_text(s: &str) -> String {
    s.replace('<', "\u{2039}")
        .replace('>', "\u{203a}")
        .replace('{', "\u{ff5b}")
        .replace('}', "\u{ff5d}")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

fn speaker(r: &TranscriptRow) -> &str {
    if r.name.is_empty() {
        &r.identity
    } else {
        &r.name
    }
}

pub fn webvtt(rows: &[TranscriptRow]) -> String {
    let mut out = String::from("WEBVTT\n\n");
    for r in rows {
        out.push_str(&format!(
            "{}\n{} --> {}\n<v {}>{}\n\n",
            r.segment_id,
            timestamp(r.start_ms, '.'),
            timestamp(end_of(r), '.'),
            vtt_text(speaker(r)).replace('\n', " "),
            vtt_text(&r.text)
        ));
    }
    out
}

pub fn srt(rows: &[TranscriptRow]) -> String {
    let mut out = String::new();
    for (i, r) in rows.iter().enumerate() {
        out.push_str(&format!(
            "{}\n{} --> {}\n{}: {}\n\n",
            i + 1,
            timestamp(r.start_ms, ','),
            timestamp(end_of(r), ','),
            srt_text(speaker(r)).replace('\n', " "),
            srt_text(&r.text)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(start: i64, end: i64, name: &str, text: &str) -> TranscriptRow {
        TranscriptRow {
            segment_id: format!("SG_{start}"),
            node: "n".into(),
            api_key: "k".into(),
            meeting: "m".into(),
            meeting_started_ms: 0,
            participant: "PA_1".into(),
            identity: "alice".into(),
            name: name.into(),
            track: "TR_1".into(),
            language: "en".into(),
            start_ms: start,
            end_ms: end,
            text: text.into(),
            created_ms: 0,
        }
    }

    #[test]
    fn timestamps_in_both_formats() {
        assert_eq!(timestamp(3_723_004, '.'), "01:02:03.004");
        assert_eq!(timestamp(59_999, ','), "00:00:59,999");
        assert_eq!(timestamp(-5, '.'), "00:00:00.000");
    }

    #[test]
    fn webvtt_escapes_markup_and_names_the_speaker() {
        let vtt = webvtt(&[row(1500, 3200, "Alice", "a <b> & c --> d\n\nnext")]);
        assert!(vtt.starts_with("WEBVTT\n\n"), "{vtt}");
        assert!(
            vtt.contains("SG_1500\n00:00:01.500 --> 00:00:03.200\n"),
            "{vtt}"
        );
        assert!(
            vtt.contains("<v Alice>a &lt;b&gt; &amp; c --&gt; d\nnext\n\n"),
            "{vtt}"
        );
    }

    #[test]
    fn srt_renders_no_markup_from_names_or_words() {
        let out = srt(&[row(0, 900, "<b>Eve</b>", "say {\\an8}<i>hi</i> --> x")]);
        assert_eq!(
            out,
            "1\n00:00:00,000 --> 00:00:00,900\n\u{2039}b\u{203a}Eve\u{2039}/b\u{203a}: \
             say \u{ff5b}\\an8\u{ff5d}\u{2039}i\u{203a}hi\u{2039}/i\u{203a} --\u{203a} x\n\n"
        );
        assert_eq!(
            out.matches("-->").count(),
            1,
            "only the timing line has an arrow"
        );
    }

    #[test]
    fn srt_numbers_entries_and_never_ends_a_cue_before_it_starts() {
        let out = srt(&[row(0, 900, "", "hello"), row(1000, 1000, "Bob", "x")]);
        assert_eq!(
            out,
            "1\n00:00:00,000 --> 00:00:00,900\nalice: hello\n\n\
             2\n00:00:01,000 --> 00:00:01,001\nBob: x\n\n"
        );
    }
}
