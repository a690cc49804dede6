//! The REST API's JSON bodies (camelCase, like the proto3 JSON of `hearth.v1`), and their
//! conversions from and to the `hearth.v1` messages the shared operations speak.

use hearth_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// RFC 3339 in UTC with a `Z`, as proto3 JSON writes a `google.protobuf.Timestamp` (0, 3, 6
/// or 9 fractional digits).
fn rfc3339(t: Option<&pbjson_types::Timestamp>) -> String {
    let Some(t) = t else {
        return String::new();
    };
    let days = t.seconds.div_euclid(86_400);
    let secs = t.seconds.rem_euclid(86_400);
    let (year, month, day) = hearth_actors::billing::civil_from_days(days);
    let nanos = t.nanos.clamp(0, 999_999_999);
    let fraction = if nanos == 0 {
        String::new()
    } else if nanos % 1_000_000 == 0 {
        format!(".{:03}", nanos / 1_000_000)
    } else if nanos % 1_000 == 0 {
        format!(".{:06}", nanos / 1_000)
    } else {
        format!(".{nanos:09}")
    };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}{fraction}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::rfc3339;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = |seconds, nanos| rfc3339(Some(&pbjson_types::Timestamp { seconds, nanos }));
        assert_eq!(t(0, 0), "1970-01-01T00:00:00Z");
        assert_eq!(t(951_782_400, 5_000_000), "2000-02-29T00:00:00.005Z");
        assert_eq!(t(1_700_000_000, 123_456_000), "2023-11-14T22:13:20.123456Z");
        assert_eq!(t(4_102_444_799, 1), "2099-12-31T23:59:59.000000001Z");
        assert_eq!(t(-1, 0), "1969-12-31T23:59:59Z");
        assert_eq!(rfc3339(None), "");
    }
}

// ----- Requests ------------------------------------------------------------------------------

/// Settings given to a meeting; an absent or zero field takes the node's default (on create)
/// or keeps the current value (on update).
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeetingSettingsInput {
    /// Most participants at once (at most 10000).
    #[schema(maximum = 10000)]
    pub max_participants: Option<u32>,
    /// How long the meeting lives on with nobody in it, in seconds (at most 86400).
    #[schema(maximum = 86400)]
    pub empty_timeout_seconds: Option<u32>,
    /// Live captions (transcription of every audio track); unset keeps them as they are.
    pub transcription: Option<TranscriptionSettings>,
}

/// A meeting's live transcription.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TranscriptionSettings {
    /// Transcribe every audio track: participants see captions, the app gets transcripts
    /// (`GET /v1/meetings/{id}/transcript`, `transcript.segment` webhooks).
    #[serde(default)]
    pub enabled: bool,
    /// Spoken language, ISO 639-1 (`en`); empty: the node's default.
    #[serde(default)]
    #[schema(max_length = 8)]
    pub language: String,
    /// `embedded`, `openai` or `streaming` (an engine the node is configured with); empty:
    /// the node's default.
    #[serde(default)]
    #[schema(max_length = 16)]
    pub engine: String,
}

impl From<MeetingSettingsInput> for pb::MeetingSettings {
    fn from(s: MeetingSettingsInput) -> Self {
        pb::MeetingSettings {
            max_participants: s.max_participants.unwrap_or(0),
            empty_timeout_seconds: s.empty_timeout_seconds.unwrap_or(0),
            transcription: s.transcription.map(|t| pb::TranscriptionSettings {
                enabled: t.enabled,
                language: t.language,
                engine: t.engine,
            }),
        }
    }
}

/// `POST /v1/meetings`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateMeeting {
    /// The meeting's name: 1 to 128 characters of `A-Z a-z 0-9 . _ ~ -`.
    #[schema(
        example = "standup",
        min_length = 1,
        max_length = 128,
        pattern = "^[A-Za-z0-9._~-]{1,128}$"
    )]
    pub id: String,
    /// Its settings; absent fields take the node's defaults.
    pub settings: Option<MeetingSettingsInput>,
    /// The app's metadata (any text, at most 16 KiB): participants get it in their join
    /// response, and `meetingUpdated` when it changes.
    #[schema(example = "{\"topic\":\"Weekly standup\"}")]
    pub metadata: Option<String>,
}

/// `PATCH /v1/meetings/{id}`.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateMeeting {
    /// New settings; absent fields keep their current value.
    pub settings: Option<MeetingSettingsInput>,
    /// New metadata (at most 16 KiB); absent keeps it. Participants get `meetingUpdated`.
    pub metadata: Option<String>,
}

/// `PATCH /v1/meetings/{id}/participants/{pid}/tracks/{tid}`.
#[derive(Clone, Copy, Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateTrack {
    /// True mutes the track for everyone (the node forwards none of its packets), false
    /// unmutes it.
    pub muted: bool,
}

/// What a participant may do.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Permissions {
    /// May publish tracks; revoking it withdraws the participant's tracks.
    pub publish: bool,
    /// Receives the other participants' tracks.
    pub subscribe: bool,
}

/// What a minted token allows; absent fields are false.
#[derive(Clone, Copy, Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Grants {
    /// Join the meeting.
    #[serde(default)]
    pub join: bool,
    /// Publish tracks.
    #[serde(default)]
    pub publish: bool,
    /// Receive the others' tracks.
    #[serde(default)]
    pub subscribe: bool,
    /// Start the meeting if it is not live.
    #[serde(default)]
    pub create: bool,
    /// Manage meetings over the gRPC and REST APIs.
    #[serde(default)]
    pub admin: bool,
    /// Turn the meeting's live captions on and off (signaling `setCaptions`).
    #[serde(default)]
    pub captions: bool,
}

/// `POST /v1/meetings/{id}/messages`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SendMessage {
    /// The text (1 to 4096 bytes of UTF-8).
    #[schema(
        example = "The meeting ends in 5 minutes.",
        min_length = 1,
        max_length = 4096
    )]
    pub text: String,
    /// Who it is from, as the participants see it (at most 256 bytes; absent: the app).
    #[schema(example = "Host")]
    pub from: Option<String>,
    /// Only these participants (`PA_...`, at most 1000); absent or empty: everyone.
    pub to: Option<Vec<String>>,
}

/// A message handed to the participants.
#[derive(Clone, Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SentMessage {
    /// The message id (`MS_...`), as the participants receive it.
    pub id: String,
    /// How many participants it was delivered to.
    pub delivered: u32,
}

/// `POST /v1/tokens`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MintToken {
    /// The meeting the token is for; absent or empty only for an admin token over the whole
    /// node.
    #[schema(example = "standup")]
    pub meeting: Option<String>,
    /// The user's id in the application (1 to 256 bytes).
    #[schema(example = "ada", min_length = 1, max_length = 256)]
    pub identity: String,
    /// Display name (at most 256 bytes; default: the identity).
    #[schema(example = "Ada")]
    pub name: Option<String>,
    /// Grants; absent means join + publish + subscribe + create.
    pub grants: Option<Grants>,
    /// Lifetime in seconds (default one hour, at most 30 days, and never beyond the expiry of
    /// the token that makes the call).
    #[schema(maximum = 2592000)]
    pub ttl_seconds: Option<u32>,
}

impl From<MintToken> for pb::MintTokenRequest {
    fn from(t: MintToken) -> Self {
        pb::MintTokenRequest {
            meeting: t.meeting.unwrap_or_default(),
            identity: t.identity,
            name: t.name.unwrap_or_default(),
            grants: t.grants.map(|g| pb::Grants {
                join: g.join,
                publish: g.publish,
                subscribe: g.subscribe,
                create: g.create,
                admin: g.admin,
                captions: g.captions,
            }),
            ttl_seconds: t.ttl_seconds.unwrap_or(0),
        }
    }
}

// ----- Responses -----------------------------------------------------------------------------

/// A meeting's effective settings (node defaults filled in).
#[derive(Clone, Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeetingSettings {
    /// Most participants at once.
    pub max_participants: u32,
    /// How long the meeting lives on with nobody in it, in seconds.
    pub empty_timeout_seconds: u32,
    /// Live captions.
    pub transcription: TranscriptionSettings,
}

/// Audio or video.
#[derive(Clone, Copy, Debug, Serialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TrackKind {
    TrackKindUnspecified,
    Audio,
    Video,
}

/// A track published into a meeting.
#[derive(Clone, Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Track {
    /// The track's id (`TR_...`).
    pub id: String,
    /// Who publishes it.
    pub participant_id: String,
    /// Audio or video.
    pub kind: TrackKind,
    /// Its codec, for example `audio/opus` or `video/VP8`.
    pub mime_type: String,
    /// Muted by its publisher or by the application.
    pub muted: bool,
}

/// A participant in a meeting.
#[derive(Clone, Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Participant {
    /// The participant's id (`PA_...`), new at every join.
    pub id: String,
    /// The application's user id (the token's `sub`).
    pub identity: String,
    /// Display name.
    pub name: String,
    /// When it joined (RFC 3339).
    #[schema(format = DateTime)]
    pub joined_at: String,
    /// Tracks it publishes.
    pub tracks: Vec<Track>,
    /// What it may do.
    pub permissions: Permissions,
    /// True for a participant made by the media API (no browser behind it).
    pub r#virtual: bool,
    /// The participant actor's id.
    pub actor_id: String,
}

/// A live meeting.
#[derive(Clone, Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Meeting {
    /// The meeting's name, unique on the node.
    pub id: String,
    /// When the meeting started (RFC 3339).
    #[schema(format = DateTime)]
    pub started_at: String,
    /// Participants in it now, virtual ones included.
    pub participant_count: u32,
    /// Effective settings.
    pub settings: MeetingSettings,
    /// The participants in join order; filled by get, create and update, empty in lists.
    pub participants: Vec<Participant>,
    /// The meeting actor's id.
    pub actor_id: String,
    /// The app's metadata (empty when none was set).
    pub metadata: String,
}

/// A page of meetings.
#[derive(Clone, Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeetingList {
    /// Live meetings in the token's scope, sorted by name, without their participants.
    pub meetings: Vec<Meeting>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// The participants of a meeting.
#[derive(Clone, Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ParticipantList {
    /// Participants in join order.
    pub participants: Vec<Participant>,
}

/// `DELETE /v1/meetings/{id}`.
#[derive(Clone, Copy, Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndedMeeting {
    /// How many participants were in it when it ended.
    pub participants: u32,
}

/// A minted access token.
#[derive(Clone, Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Token {
    /// The JWT (HS256), for signaling's `join` or the `Authorization` header of these APIs.
    pub token: String,
    /// When it stops being accepted (RFC 3339).
    #[schema(format = DateTime)]
    pub expires_at: String,
}

impl From<pb::MintTokenResponse> for Token {
    fn from(t: pb::MintTokenResponse) -> Self {
        Token {
            expires_at: rfc3339(t.expires_at.as_ref()),
            token: t.token,
        }
    }
}

impl From<pb::MeetingSettings> for MeetingSettings {
    fn from(s: pb::MeetingSettings) -> Self {
        let t = s.transcription.unwrap_or_default();
        MeetingSettings {
            max_participants: s.max_participants,
            empty_timeout_seconds: s.empty_timeout_seconds,
            transcription: TranscriptionSettings {
                enabled: t.enabled,
                language: t.language,
                engine: t.engine,
            },
        }
    }
}

impl From<pb::Track> for Track {
    fn from(t: pb::Track) -> Self {
        let kind = match pb::TrackKind::try_from(t.kind) {
            Ok(pb::TrackKind::Audio) => TrackKind::Audio,
            Ok(pb::TrackKind::Video) => TrackKind::Video,
            _ => TrackKind::TrackKindUnspecified,
        };
        Track {
            id: t.id,
            participant_id: t.participant_id,
            kind,
            mime_type: t.mime_type,
            muted: t.muted,
        }
    }
}

impl From<pb::Participant> for Participant {
    fn from(p: pb::Participant) -> Self {
        let permissions = p.permissions.unwrap_or_default();
        Participant {
            joined_at: rfc3339(p.joined_at.as_ref()),
            id: p.id,
            identity: p.identity,
            name: p.name,
            tracks: p.tracks.into_iter().map(Track::from).collect(),
            permissions: Permissions {
                publish: permissions.publish,
                subscribe: permissions.subscribe,
            },
            r#virtual: p.r#virtual,
            actor_id: p.actor_id,
        }
    }
}

impl From<pb::Meeting> for Meeting {
    fn from(m: pb::Meeting) -> Self {
        Meeting {
            started_at: rfc3339(m.started_at.as_ref()),
            id: m.id,
            participant_count: m.participant_count,
            settings: m.settings.unwrap_or_default().into(),
            participants: m.participants.into_iter().map(Participant::from).collect(),
            actor_id: m.actor_id,
            metadata: m.metadata,
        }
    }
}
