//! Domain types <-> `hearth.v1` messages (the gRPC API's only conversion point).

use std::time::{SystemTime, UNIX_EPOCH};

use hearth_actors::events::{EventKind, NodeEvent};
use hearth_actors::registry::ActorView;
use hearth_actors::webrtc::CodecParams;
use hearth_actors::{MeetingSettings, MeetingSnapshot, MemberView, TrackInfo};
use hearth_engine::media::MediaKind;
use hearth_proto::v1 as pb;

pub fn timestamp(t: SystemTime) -> pbjson_types::Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    pbjson_types::Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

pub fn kind(kind: MediaKind) -> pb::TrackKind {
    match kind {
        MediaKind::Audio => pb::TrackKind::Audio,
        MediaKind::Video => pb::TrackKind::Video,
    }
}

pub fn settings(s: MeetingSettings) -> pb::MeetingSettings {
    pb::MeetingSettings {
        max_participants: u32::try_from(s.max_participants).unwrap_or(u32::MAX),
        empty_timeout_seconds: u32::try_from(s.empty_timeout.as_secs()).unwrap_or(u32::MAX),
        transcription: Some(pb::TranscriptionSettings {
            enabled: s.transcription.enabled,
            language: s
                .transcription
                .language
                .map(|l| l.to_string())
                .unwrap_or_default(),
            engine: s
                .transcription
                .engine
                .map(|e| e.as_str().to_owned())
                .unwrap_or_default(),
        }),
    }
}

pub fn track(participant: &str, t: &TrackInfo) -> pb::Track {
    pb::Track {
        id: t.id.to_string(),
        participant_id: participant.to_owned(),
        kind: kind(t.kind) as i32,
        mime_type: t.mime_type.clone(),
        muted: t.muted,
    }
}

pub fn participant(m: &MemberView) -> pb::Participant {
    let id = m.info.id.to_string();
    pb::Participant {
        tracks: m.info.tracks.iter().map(|t| track(&id, t)).collect(),
        id,
        identity: m.info.identity.clone(),
        name: m.info.name.clone(),
        joined_at: Some(timestamp(m.info.joined_at)),
        permissions: Some(pb::Permissions {
            publish: m.grants.publish,
            subscribe: m.grants.subscribe,
        }),
        r#virtual: m.is_virtual,
        actor_id: m.actor.to_string(),
    }
}

pub fn meeting(m: &MeetingSnapshot, with_participants: bool) -> pb::Meeting {
    pb::Meeting {
        id: m.id.to_string(),
        started_at: Some(timestamp(m.started_at)),
        participant_count: u32::try_from(m.participants.len()).unwrap_or(u32::MAX),
        settings: Some(settings(m.settings)),
        participants: if with_participants {
            m.participants.iter().map(participant).collect()
        } else {
            Vec::new()
        },
        actor_id: m.actor.to_string(),
        metadata: m.metadata.clone(),
    }
}

pub fn codec(c: &CodecParams, payload_type: u8) -> pb::Codec {
    pb::Codec {
        mime_type: c.mime_type.clone(),
        clock_rate: c.clock_rate,
        channels: u32::from(c.channels),
        payload_type: u32::from(payload_type),
        fmtp: c.fmtp.clone(),
    }
}

pub fn event(e: &NodeEvent) -> pb::Event {
    use pb::event::Kind;
    let kind = match &e.kind {
        EventKind::MeetingStarted => Kind::MeetingStarted(pb::MeetingStarted {}),
        EventKind::MeetingEnded(reason) => Kind::MeetingEnded(pb::MeetingEnded {
            reason: reason.as_str().to_owned(),
        }),
        EventKind::ParticipantJoined(info) => {
            let id = info.id.to_string();
            Kind::ParticipantJoined(pb::ParticipantJoined {
                participant: Some(pb::Participant {
                    tracks: info.tracks.iter().map(|t| track(&id, t)).collect(),
                    id,
                    identity: info.identity.clone(),
                    name: info.name.clone(),
                    joined_at: Some(timestamp(info.joined_at)),
                    permissions: None,
                    r#virtual: false,
                    actor_id: String::new(),
                }),
            })
        }
        EventKind::ParticipantLeft {
            participant,
            reason,
        } => Kind::ParticipantLeft(pb::ParticipantLeft {
            participant_id: participant.to_string(),
            reason: reason.as_str().to_owned(),
        }),
        EventKind::TrackPublished {
            participant,
            track: t,
        } => Kind::TrackPublished(pb::TrackPublished {
            track: Some(track(participant.as_str(), t)),
        }),
        EventKind::TrackUnpublished { participant, track } => {
            Kind::TrackUnpublished(pb::TrackUnpublished {
                participant_id: participant.to_string(),
                track_id: track.to_string(),
            })
        }
        EventKind::TrackMuted {
            participant,
            track,
            muted,
        } => Kind::TrackMuted(pb::TrackMuted {
            participant_id: participant.to_string(),
            track_id: track.to_string(),
            muted: *muted,
        }),
        EventKind::ActiveSpeakers(list) => Kind::ActiveSpeakers(pb::ActiveSpeakers {
            speakers: list
                .iter()
                .map(|(p, level)| pb::Speaker {
                    participant_id: p.to_string(),
                    level: *level,
                })
                .collect(),
        }),
        EventKind::Transcript(t) => Kind::Transcript(pb::TranscriptSegment {
            participant_id: t.participant.to_string(),
            identity: t.identity.clone(),
            track_id: t.track.to_string(),
            segment_id: t.segment.clone(),
            text: t.text.clone(),
            start_ms: i64::try_from(t.start_ms).unwrap_or(i64::MAX),
            end_ms: i64::try_from(t.end_ms).unwrap_or(i64::MAX),
            language: t.language.to_string(),
        }),
        EventKind::CaptionsChanged(c) => Kind::CaptionsChanged(pb::CaptionsChanged {
            enabled: c.enabled,
            language: c.language.to_string(),
            engine: c.engine.as_str().to_owned(),
            changed_by: c
                .changed_by
                .as_ref()
                .map(|p| p.to_string())
                .unwrap_or_default(),
        }),
        EventKind::TranscriptionDropped {
            participant,
            track,
            segment,
            reason,
        } => Kind::TranscriptionDropped(pb::TranscriptionDropped {
            participant_id: participant.to_string(),
            track_id: track.to_string(),
            segment_id: segment.clone(),
            reason: (*reason).to_owned(),
        }),
    };
    pb::Event {
        sequence: e.sequence,
        at: Some(timestamp(e.at)),
        meeting: e.meeting.to_string(),
        kind: Some(kind),
    }
}

pub fn actor(a: &ActorView) -> pb::ActorInfo {
    pb::ActorInfo {
        id: a.id.to_string(),
        kind: a.kind.as_str().to_owned(),
        name: a.name.clone(),
        parent_id: a.parent.map(|p| p.to_string()).unwrap_or_default(),
        started_at: Some(timestamp(a.started_at)),
        restarts: a.restarts,
        messages: a.messages,
        mailbox_depth: a.mailbox_depth as u64,
        media_queue_depth: a.media_queue_depth as u64,
        last_failure: a.last_failure.clone().unwrap_or_default(),
        policy: a.kind.policy().to_owned(),
    }
}
