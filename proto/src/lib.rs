//! Hearth's wire contracts, generated from the `.proto` files under `proto/hearth/`.
//!
//! This crate holds generated types only. It owns no behaviour: converting between these
//! types and domain types happens in `hearth-api` (and, for clients, in `hearth-loadgen`).
//!
//! * [`signal::v1`]: the WebSocket signaling protocol (`/v1/signal`), spoken as proto3 JSON
//!   by browsers. See `proto/README.md` for the session walk-through.

#![allow(clippy::all, missing_docs, rust_2018_idioms)]

pub mod signal {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/hearth.signal.v1.rs"));
        include!(concat!(env!("OUT_DIR"), "/hearth.signal.v1.serde.rs"));
    }
}

#[cfg(test)]
mod tests {
    use super::signal::v1::*;

    #[test]
    fn join_round_trips_as_proto3_json() {
        let msg = ClientMessage {
            message: Some(client_message::Message::Join(JoinRequest {
                token: "t".into(),
                meeting: "m".into(),
            })),
        };
        let json = serde_json::to_string(&msg).unwrap();
        assert_eq!(json, r#"{"join":{"token":"t","meeting":"m"}}"#);
        let back: ClientMessage = serde_json::from_str(&json).unwrap();
        assert_eq!(back, msg);
    }

    #[test]
    fn server_events_use_lower_camel_case_and_enum_names() {
        let msg = ServerMessage {
            message: Some(server_message::Message::TrackPublished(TrackPublished {
                participant_id: "PA_1".into(),
                track: Some(TrackInfo {
                    id: "TR_1".into(),
                    kind: TrackKind::Video as i32,
                    mime_type: "video/VP8".into(),
                    muted: false,
                    mid: "1".into(),
                }),
            })),
        };
        let json = serde_json::to_string(&msg).unwrap();
        assert_eq!(
            json,
            r#"{"trackPublished":{"participantId":"PA_1","track":{"id":"TR_1","kind":"VIDEO","mimeType":"video/VP8","mid":"1"}}}"#
        );
    }

    #[test]
    fn unknown_fields_are_rejected() {
        assert!(serde_json::from_str::<ClientMessage>(r#"{"fly":{}}"#).is_err());
    }
}
