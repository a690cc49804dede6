//! Conversions between wire types (`hearth-proto`) and domain types (`hearth-actors`):
//! the only place they meet (architecture invariant 2).

use std::time::{SystemTime, UNIX_EPOCH};

use hearth_actors::{
    Candidate, ClientSignal, ParticipantInfo, ServerSignal, SignalError, SignalErrorCode, TrackId,
    TrackInfo,
};
use hearth_engine::media::MediaKind;
use hearth_proto::signal::v1 as pb;
use pb::client_message::Message as C;
use pb::server_message::Message as S;

/// The largest text frame we parse.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// A decoded client frame.
#[derive(Debug)]
pub enum Incoming {
    Join(pb::JoinRequest),
    Ping(i64),
    Signal(ClientSignal),
}

/// Decodes one text frame, telling malformed JSON from unknown messages.
pub fn decode_client(text: &str) -> Result<Incoming, SignalError> {
    if text.len() > MAX_MESSAGE_BYTES {
        return Err(SignalError::new(
            SignalErrorCode::MessageTooLarge,
            format!(
                "message of {} bytes; the limit is {MAX_MESSAGE_BYTES}",
                text.len()
            ),
        ));
    }
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        SignalError::new(
            SignalErrorCode::MalformedMessage,
            format!("not valid JSON: {e}"),
        )
    })?;
    let Some(object) = value.as_object() else {
        return Err(SignalError::new(
            SignalErrorCode::MalformedMessage,
            "a message must be a JSON object",
        ));
    };
    const KNOWN: &[&str] = &[
        "join",
        "offer",
        "answer",
        "trickle",
        "mute",
        "leave",
        "ping",
        "unpublish",
        "setCaptions",
        "trackSettings",
    ];
    let known: Vec<&String> = object
        .keys()
        .filter(|k| KNOWN.contains(&k.as_str()))
        .collect();
    if known.is_empty() {
        let keys: Vec<&String> = object.keys().collect();
        return Err(SignalError::new(
            SignalErrorCode::UnknownMessage,
            format!("no known message in {keys:?}; expected one of {KNOWN:?}"),
        ));
    }
    let msg: pb::ClientMessage = serde_json::from_value(value.clone()).map_err(|e| {
        SignalError::new(
            SignalErrorCode::MalformedMessage,
            format!("invalid {}: {e}", known[0]),
        )
    })?;
    let Some(message) = msg.message else {
        return Err(SignalError::new(
            SignalErrorCode::UnknownMessage,
            "empty message",
        ));
    };
    Ok(match message {
        C::Join(join) => Incoming::Join(join),
        C::Ping(ping) => Incoming::Ping(ping.timestamp),
        C::Offer(desc) => {
            let sources = sources(&desc.sources)?;
            Incoming::Signal(ClientSignal::Offer {
                sdp: sdp(desc, "offer")?,
                sources,
            })
        }
        C::Answer(desc) => Incoming::Signal(ClientSignal::Answer(sdp(desc, "answer")?)),
        C::Trickle(c) => Incoming::Signal(ClientSignal::Candidate(Candidate {
            candidate: c.candidate,
            sdp_mid: (!c.sdp_mid.is_empty()).then_some(c.sdp_mid),
            sdp_m_line_index: u16::try_from(c.sdp_m_line_index).ok(),
            username_fragment: (!c.username_fragment.is_empty()).then_some(c.username_fragment),
        })),
        C::Mute(m) => Incoming::Signal(ClientSignal::Mute {
            track: track_id(&m.track_id)?,
            muted: m.muted,
        }),
        C::Unpublish(u) => Incoming::Signal(ClientSignal::Unpublish {
            track: track_id(&u.track_id)?,
        }),
        C::Leave(_) => Incoming::Signal(ClientSignal::Leave),
        C::TrackSettings(t) => Incoming::Signal(ClientSignal::TrackSettings {
            track: track_id(&t.track_id)?,
            visible: t.visible,
            height: t.height,
        }),
        C::SetCaptions(c) => Incoming::Signal(ClientSignal::SetCaptions {
            enabled: c.enabled,
            language: if c.language.is_empty() {
                None
            } else {
                Some(hearth_actors::Language::parse(&c.language).ok_or_else(|| {
                    SignalError::new(
                        SignalErrorCode::MalformedMessage,
                        "setCaptions.language: an ISO 639-1 code such as \"en\" (optionally with a region, \"pt-BR\")",
                    )
                })?)
            },
        }),
    })
}

/// The meeting's captions for the wire.
pub fn captions(c: &hearth_actors::CaptionsState) -> pb::CaptionsState {
    pb::CaptionsState {
        enabled: c.enabled,
        language: c.language.to_string(),
        engine: c.engine.as_str().to_owned(),
        unavailable: c.unavailable.clone().unwrap_or_default(),
        changed_by: c
            .changed_by
            .as_ref()
            .map(|p| p.to_string())
            .unwrap_or_default(),
    }
}

/// A transcript for the wire.
pub fn transcript(t: hearth_actors::Transcript) -> pb::Transcript {
    pb::Transcript {
        participant_id: t.participant.to_string(),
        identity: t.identity,
        name: t.name,
        track_id: t.track.to_string(),
        segment_id: t.segment,
        text: t.text,
        r#final: t.is_final,
        start_ms: i64::try_from(t.start_ms).unwrap_or(i64::MAX),
        end_ms: i64::try_from(t.end_ms).unwrap_or(i64::MAX),
        language: t.language.to_string(),
    }
}

/// An offer's declared sources: at most 64, mids of at most 32 bytes, known values.
fn sources(
    map: &std::collections::HashMap<String, i32>,
) -> Result<Vec<(String, hearth_actors::TrackSource)>, SignalError> {
    use hearth_actors::TrackSource as S;
    if map.len() > 64 {
        return Err(SignalError::new(
            SignalErrorCode::MalformedMessage,
            "sources: at most 64 entries",
        ));
    }
    map.iter()
        .map(|(mid, v)| {
            if mid.is_empty() || mid.len() > 32 {
                return Err(SignalError::new(
                    SignalErrorCode::MalformedMessage,
                    "sources: a mid is 1 to 32 bytes",
                ));
            }
            let source = match pb::TrackSource::try_from(*v) {
                Ok(pb::TrackSource::Unspecified) => S::Unknown,
                Ok(pb::TrackSource::Camera) => S::Camera,
                Ok(pb::TrackSource::Microphone) => S::Microphone,
                Ok(pb::TrackSource::Screen) => S::Screen,
                Err(_) => {
                    return Err(SignalError::new(
                        SignalErrorCode::MalformedMessage,
                        format!("sources: unknown track source {v}"),
                    ));
                }
            };
            Ok((mid.clone(), source))
        })
        .collect()
}

fn sdp(desc: pb::SessionDescription, expected: &str) -> Result<String, SignalError> {
    if !desc.r#type.is_empty() && desc.r#type != expected {
        return Err(SignalError::new(
            SignalErrorCode::MalformedMessage,
            format!(
                "`{expected}` carries a description of type `{}`",
                desc.r#type
            ),
        ));
    }
    if desc.sdp.trim().is_empty() {
        return Err(SignalError::new(
            SignalErrorCode::InvalidSdp,
            format!("empty SDP in `{expected}`"),
        ));
    }
    Ok(desc.sdp)
}

fn track_id(s: &str) -> Result<TrackId, SignalError> {
    if s.is_empty() || s.len() > 64 {
        return Err(SignalError::new(
            SignalErrorCode::TrackNotFound,
            "missing or invalid trackId",
        ));
    }
    Ok(TrackId::from_string(s))
}

/// Encodes a server message as a proto3 JSON text frame.
pub fn encode(msg: S) -> String {
    let msg = pb::ServerMessage { message: Some(msg) };
    // Serializing generated types into a String cannot fail.
    serde_json::to_string(&msg).unwrap_or_default()
}

pub fn error_message(e: &SignalError) -> S {
    S::Error(pb::Error {
        code: error_code(e.code) as i32,
        message: e.message.clone(),
        fatal: e.fatal,
    })
}

pub fn error_code(code: SignalErrorCode) -> pb::ErrorCode {
    use SignalErrorCode as E;
    use pb::ErrorCode as P;
    match code {
        E::MalformedMessage => P::MalformedMessage,
        E::UnknownMessage => P::UnknownMessage,
        E::MessageTooLarge => P::MessageTooLarge,
        E::InvalidToken => P::InvalidToken,
        E::TokenExpired => P::TokenExpired,
        E::WrongMeeting => P::WrongMeeting,
        E::PermissionDenied => P::PermissionDenied,
        E::NotJoined => P::NotJoined,
        E::AlreadyJoined => P::AlreadyJoined,
        E::InvalidSdp => P::InvalidSdp,
        E::NegotiationFailed => P::NegotiationFailed,
        E::MeetingNotFound => P::MeetingNotFound,
        E::MeetingFull => P::MeetingFull,
        E::TrackNotFound => P::TrackNotFound,
        E::InvalidCandidate => P::InvalidCandidate,
        E::NodeUnavailable => P::NodeUnavailable,
        E::RateLimited => P::RateLimited,
        E::Timeout => P::Timeout,
        E::Internal => P::Internal,
        E::Removed => P::Removed,
    }
}

fn ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

pub fn track(t: &TrackInfo) -> pb::TrackInfo {
    pb::TrackInfo {
        id: t.id.to_string(),
        kind: match t.kind {
            MediaKind::Audio => pb::TrackKind::Audio,
            MediaKind::Video => pb::TrackKind::Video,
        } as i32,
        mime_type: t.mime_type.clone(),
        muted: t.muted,
        mid: t.mid.clone(),
        source: match t.source {
            hearth_actors::TrackSource::Unknown => pb::TrackSource::Unspecified,
            hearth_actors::TrackSource::Camera => pb::TrackSource::Camera,
            hearth_actors::TrackSource::Microphone => pb::TrackSource::Microphone,
            hearth_actors::TrackSource::Screen => pb::TrackSource::Screen,
        } as i32,
    }
}

pub fn participant(p: &ParticipantInfo) -> pb::ParticipantInfo {
    pb::ParticipantInfo {
        id: p.id.to_string(),
        identity: p.identity.clone(),
        name: p.name.clone(),
        tracks: p.tracks.iter().map(track).collect(),
        joined_at_ms: ms(p.joined_at),
    }
}

pub fn candidate(c: Candidate) -> pb::IceCandidate {
    pb::IceCandidate {
        candidate: c.candidate,
        sdp_mid: c.sdp_mid.unwrap_or_default(),
        sdp_m_line_index: c.sdp_m_line_index.map(u32::from).unwrap_or_default(),
        username_fragment: c.username_fragment.unwrap_or_default(),
    }
}

pub fn join_response(accepted: &hearth_actors::JoinAccepted, ping_interval_seconds: u32) -> S {
    S::Join(pb::JoinResponse {
        participant_id: accepted.participant.id.to_string(),
        meeting: Some(pb::MeetingInfo {
            name: accepted.meeting.id.to_string(),
            started_at_ms: ms(accepted.meeting.started_at),
            metadata: accepted.meeting.metadata.clone(),
        }),
        participant: Some(participant(&accepted.participant)),
        others: accepted.others.iter().map(participant).collect(),
        ice_servers: accepted
            .ice_servers
            .iter()
            .map(|s| pb::IceServer {
                urls: s.urls.clone(),
                username: s.username.clone(),
                credential: s.credential.clone(),
            })
            .collect(),
        ping_interval_seconds,
        captions: Some(captions(&accepted.captions)),
    })
}

/// Converts a domain message for the wire.
pub fn server_message(signal: ServerSignal) -> S {
    match signal {
        ServerSignal::Offer(sdp) => S::Offer(pb::SessionDescription {
            r#type: "offer".into(),
            sdp,
            ..Default::default()
        }),
        ServerSignal::Answer(sdp) => S::Answer(pb::SessionDescription {
            r#type: "answer".into(),
            sdp,
            ..Default::default()
        }),
        ServerSignal::Candidate(c) => S::Trickle(candidate(c)),
        ServerSignal::ParticipantJoined(p) => S::ParticipantJoined(pb::ParticipantJoined {
            participant: Some(participant(&p)),
        }),
        ServerSignal::ParticipantLeft {
            participant,
            reason,
        } => S::ParticipantLeft(pb::ParticipantLeft {
            participant_id: participant.to_string(),
            reason: reason.as_str().into(),
        }),
        ServerSignal::TrackPublished {
            participant,
            track: t,
        } => S::TrackPublished(pb::TrackPublished {
            participant_id: participant.to_string(),
            track: Some(track(&t)),
        }),
        ServerSignal::TrackUnpublished { participant, track } => {
            S::TrackUnpublished(pb::TrackUnpublished {
                participant_id: participant.to_string(),
                track_id: track.to_string(),
            })
        }
        ServerSignal::TrackMuted {
            participant,
            track,
            muted,
        } => S::TrackMuted(pb::TrackMuted {
            participant_id: participant.to_string(),
            track_id: track.to_string(),
            muted,
        }),
        ServerSignal::ActiveSpeakers(list) => S::ActiveSpeakers(pb::ActiveSpeakers {
            speakers: list
                .into_iter()
                .map(|(p, level)| pb::SpeakerInfo {
                    participant_id: p.to_string(),
                    level,
                })
                .collect(),
        }),
        ServerSignal::MeetingEnded(reason) => S::MeetingEnded(pb::MeetingEnded {
            reason: reason.as_str().into(),
        }),
        ServerSignal::Error(e) => error_message(&e),
        ServerSignal::Reconnect(reason) => S::Reconnect(pb::Reconnect { reason }),
        ServerSignal::NodeDraining(deadline) => S::NodeDraining(pb::NodeDraining {
            deadline_seconds: u32::try_from(deadline.as_secs()).unwrap_or(u32::MAX),
        }),
        ServerSignal::MeetingUpdated { metadata } => {
            S::MeetingUpdated(pb::MeetingUpdated { metadata })
        }
        ServerSignal::Transcript(t) => S::Transcript(transcript(t)),
        ServerSignal::Captions(c) => S::Captions(captions(&c)),
        ServerSignal::PublishLayers { track, paused } => S::PublishLayers(pb::PublishLayers {
            track_id: track.to_string(),
            paused_layers: paused.into_iter().map(u32::from).collect(),
        }),
        ServerSignal::AppMessage(m) => S::AppMessage(pb::AppMessage {
            id: m.id,
            text: m.text,
            from: m.from,
            sent_at_ms: m
                .sent_at
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                .unwrap_or(0),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(r: Result<Incoming, SignalError>) -> SignalErrorCode {
        r.unwrap_err().code
    }

    #[test]
    fn malformed_unknown_and_oversized_are_told_apart() {
        assert_eq!(
            code(decode_client("{not json")),
            SignalErrorCode::MalformedMessage
        );
        assert_eq!(
            code(decode_client("[1,2]")),
            SignalErrorCode::MalformedMessage
        );
        assert_eq!(
            code(decode_client(r#"{"fly":{}}"#)),
            SignalErrorCode::UnknownMessage
        );
        assert_eq!(code(decode_client("{}")), SignalErrorCode::UnknownMessage);
        assert_eq!(
            code(decode_client(r#"{"offer":{"sdp":5}}"#)),
            SignalErrorCode::MalformedMessage
        );
        let big = format!(r#"{{"offer":{{"sdp":"{}"}}}}"#, "a".repeat(70_000));
        assert_eq!(code(decode_client(&big)), SignalErrorCode::MessageTooLarge);
        assert_eq!(
            code(decode_client(r#"{"offer":{"type":"offer","sdp":""}}"#)),
            SignalErrorCode::InvalidSdp
        );
        assert_eq!(
            code(decode_client(r#"{"answer":{"type":"offer","sdp":"v=0"}}"#)),
            SignalErrorCode::MalformedMessage
        );
    }

    #[test]
    fn decodes_the_client_messages() {
        assert!(matches!(
            decode_client(r#"{"join":{"token":"t"}}"#),
            Ok(Incoming::Join(j)) if j.token == "t"
        ));
        assert!(matches!(
            decode_client(r#"{"ping":{"timestamp":"42"}}"#),
            Ok(Incoming::Ping(42))
        ));
        assert!(matches!(
            decode_client(r#"{"leave":{}}"#),
            Ok(Incoming::Signal(ClientSignal::Leave))
        ));
        assert!(matches!(
            decode_client(r#"{"trickle":{"candidate":"candidate:1 1 udp 1 127.0.0.1 5000 typ host","sdpMid":"0","sdpMLineIndex":0}}"#),
            Ok(Incoming::Signal(ClientSignal::Candidate(c))) if c.sdp_mid.as_deref() == Some("0")
        ));
        assert!(matches!(
            decode_client(r#"{"mute":{"trackId":"TR_1","muted":true}}"#),
            Ok(Incoming::Signal(ClientSignal::Mute { muted: true, .. }))
        ));
        assert!(matches!(
            decode_client(r#"{"trackSettings":{"trackId":"TR_1","visible":true,"height":180}}"#),
            Ok(Incoming::Signal(ClientSignal::TrackSettings {
                visible: true,
                height: 180,
                ..
            }))
        ));
    }

    #[test]
    fn errors_encode_with_their_stable_names() {
        let json = encode(error_message(&SignalError::fatal(
            SignalErrorCode::InvalidToken,
            "bad",
        )));
        assert_eq!(
            json,
            r#"{"error":{"code":"INVALID_TOKEN","message":"bad","fatal":true}}"#
        );
    }
}
