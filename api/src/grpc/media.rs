//! MediaService: RTP out of a meeting (`SubscribeTrack`) and into it (`PublishTrack`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hearth_actors::inbox::Pushed;
use hearth_actors::virtual_participant::{VirtualEvent, VirtualTrack};
use hearth_actors::webrtc::CodecParams;
use hearth_actors::{Grants, JoinRequest};
use hearth_engine::media::{Codec, MediaKind, MediaPacket};
use hearth_engine::{codec, rtp};
use hearth_proto::v1 as pb;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::services::BoxStream;
use super::{authorize, authorize_meeting_caller, convert, forward, meeting_id, status};
use crate::server::AppState;

/// Packets buffered for a slow `SubscribeTrack` reader before its own packets drop.
const TAP_QUEUE: usize = 512;
/// How long a `PublishTrack` stream may take to send its `start`.
const START_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Media(pub Arc<AppState>);

/// Checks a `PublishTrackStart`'s codec and kind; returns what the meeting needs.
fn virtual_track(start: &pb::PublishTrackStart) -> Result<(VirtualTrack, u8), Status> {
    let kind = match pb::TrackKind::try_from(start.kind) {
        Ok(pb::TrackKind::Audio) => MediaKind::Audio,
        Ok(pb::TrackKind::Video) => MediaKind::Video,
        _ => return Err(Status::invalid_argument("start.kind: AUDIO or VIDEO")),
    };
    let c = start
        .codec
        .as_ref()
        .ok_or_else(|| Status::invalid_argument("start.codec: required"))?;
    let which = Codec::from_mime(&c.mime_type);
    let (expected_kind, clock, channels) = match which {
        Codec::Opus => (MediaKind::Audio, 48_000, 2),
        Codec::Vp8 | Codec::H264 => (MediaKind::Video, 90_000, 0),
        _ => {
            return Err(Status::invalid_argument(
                "start.codec.mime_type: audio/opus, video/VP8 or video/H264",
            ));
        }
    };
    if expected_kind != kind {
        return Err(Status::invalid_argument(
            "start.kind does not match start.codec.mime_type",
        ));
    }
    if c.clock_rate != 0 && c.clock_rate != clock {
        return Err(Status::invalid_argument(format!(
            "start.codec.clock_rate: {} uses {clock} Hz",
            c.mime_type
        )));
    }
    let payload_type = u8::try_from(c.payload_type)
        .ok()
        .filter(|pt| (96..=127).contains(pt) || *pt == 0)
        .ok_or_else(|| {
            Status::invalid_argument("start.codec.payload_type: a dynamic type (96 to 127)")
        })?;
    if c.fmtp.len() > 1024 {
        return Err(Status::invalid_argument(
            "start.codec.fmtp: at most 1024 bytes",
        ));
    }
    let canonical = match which {
        Codec::Opus => "audio/opus",
        Codec::Vp8 => "video/VP8",
        _ => "video/H264",
    };
    Ok((
        VirtualTrack {
            kind,
            codec: CodecParams {
                codec: which,
                mime_type: canonical.to_owned(),
                clock_rate: clock,
                channels,
                fmtp: c.fmtp.clone(),
            },
        },
        payload_type,
    ))
}

#[tonic::async_trait]
impl pb::media_service_server::MediaService for Media {
    type SubscribeTrackStream = BoxStream<pb::TrackPacket>;
    type PublishTrackStream = BoxStream<pb::PublishTrackResponse>;

    async fn subscribe_track(
        &self,
        request: Request<pb::SubscribeTrackRequest>,
    ) -> Result<Response<Self::SubscribeTrackStream>, Status> {
        let (caller, meeting) =
            authorize_meeting_caller(&self.0, &request, "meeting", &request.get_ref().meeting)?;
        let req = request.into_inner();
        if req.track_id.is_empty() || req.track_id.len() > 64 {
            return Err(Status::invalid_argument("track_id: 1 to 64 characters"));
        }
        // Hosted elsewhere: the host's stream, passed through (one more hop for the API's
        // copy of the track; the meeting's own media path is untouched).
        if let Some(owner) = forward::owner_of(&self.0, &caller, &meeting).await? {
            let stream = owner
                .media()?
                .subscribe_track(owner.stream_request(req))
                .await?
                .into_inner();
            return Ok(Response::new(Box::pin(stream)));
        }
        let track = hearth_actors::TrackId::from_string(req.track_id.as_str());
        let mut tap = self
            .0
            .node
            .tap_track(&meeting, &track, TAP_QUEUE)
            .await
            .map_err(status)?;
        let started = pb::TrackPacket {
            kind: Some(pb::track_packet::Kind::Started(pb::TrackStarted {
                track: Some(convert::track(tap.publisher.as_str(), &tap.track)),
                codec: Some(convert::codec(&tap.codec, 0)),
            })),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            if tx.send(Ok(started)).await.is_ok() {
                loop {
                    tokio::select! {
                        _ = tx.closed() => break,
                        packet = tap.packets.recv() => {
                            let Some(data) = packet else { break };
                            let msg = pb::TrackPacket {
                                kind: Some(pb::track_packet::Kind::Rtp(pb::RtpPacket {
                                    data,
                                    dropped: tap.dropped.load(Ordering::Relaxed),
                                })),
                            };
                            if tx.send(Ok(msg)).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            }
            // The reader went away or the track ended: the tap actor goes too.
            tap.actor.stop(Some("reader_gone".into()));
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn publish_track(
        &self,
        request: Request<Streaming<pb::PublishTrackRequest>>,
    ) -> Result<Response<Self::PublishTrackStream>, Status> {
        let caller = authorize(&self.0, &request)?;
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(START_TIMEOUT, inbound.next())
            .await
            .map_err(|_| Status::deadline_exceeded("no start message within 10 seconds"))?;
        let start = match first {
            Some(Ok(pb::PublishTrackRequest {
                kind: Some(pb::publish_track_request::Kind::Start(start)),
            })) => start,
            Some(Ok(_)) => {
                return Err(Status::invalid_argument(
                    "the first message must be `start`",
                ));
            }
            Some(Err(e)) => return Err(e),
            None => return Err(Status::invalid_argument("the stream ended before `start`")),
        };
        let meeting = meeting_id("start.meeting", &start.meeting)?;
        caller.may_manage(meeting.as_str())?;
        // Hosted (or placed) elsewhere: the whole stream goes to the host, `start` first.
        let owner = if start.create {
            forward::place_new(&self.0, &caller, &meeting).await?
        } else {
            forward::owner_of(&self.0, &caller, &meeting).await?
        };
        if let Some(owner) = owner {
            let first = pb::PublishTrackRequest {
                kind: Some(pb::publish_track_request::Kind::Start(start)),
            };
            let rest = inbound.map_while(Result::ok);
            let outbound = tokio_stream::once(first).chain(rest);
            let stream = owner
                .media()?
                .publish_track(owner.stream_request(outbound))
                .await?
                .into_inner();
            return Ok(Response::new(Box::pin(stream)));
        }
        let tenant = caller.claims.iss.clone();
        if start.identity.is_empty() || start.identity.len() > 256 {
            return Err(Status::invalid_argument("start.identity: 1 to 256 bytes"));
        }
        if start.name.len() > 256 {
            return Err(Status::invalid_argument("start.name: at most 256 bytes"));
        }
        let (track, payload_type) = virtual_track(&start)?;
        let which = track.codec.codec;
        let mut publisher = self
            .0
            .node
            .publish_virtual(
                JoinRequest {
                    meeting,
                    identity: start.identity.clone(),
                    name: if start.name.is_empty() {
                        start.identity.clone()
                    } else {
                        start.name.clone()
                    },
                    grants: Grants {
                        join: true,
                        publish: true,
                        subscribe: false,
                        create: start.create,
                        admin: false,
                        captions: false,
                    },
                    token_issued_at: None,
                    token_expires_at: None,
                    tenant: tenant.clone(),
                    session: hearth_actors::SessionKind::Signaling,
                    data_channels: false,
                },
                track,
            )
            .await
            .map_err(status)?;
        let started = pb::PublishTrackResponse {
            kind: Some(pb::publish_track_response::Kind::Started(
                pb::PublishTrackStarted {
                    participant_id: publisher.participant.to_string(),
                    track_id: publisher.track.id.to_string(),
                },
            )),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let _ = tx.send(Ok(started)).await;
            let actor = publisher.actor.clone();
            let outcome: Result<(), Status> = loop {
                tokio::select! {
                    _ = tx.closed() => break Ok(()),
                    event = publisher.events.recv() => {
                        if let Some(VirtualEvent::KeyframeRequested) = event {
                            let msg = pb::PublishTrackResponse {
                                kind: Some(pb::publish_track_response::Kind::KeyframeRequest(
                                    pb::KeyframeRequest {},
                                )),
                            };
                            let _ = tx.try_send(Ok(msg));
                        }
                    }
                    next = inbound.next() => match next {
                        None => break Ok(()),
                        Some(Err(e)) => break Err(e),
                        Some(Ok(pb::PublishTrackRequest {
                            kind: Some(pb::publish_track_request::Kind::Rtp(data)),
                        })) => {
                            match packet(&data, payload_type, which) {
                                Ok(p) => match publisher.packets.push(p) {
                                    Pushed::Queued => {}
                                    Pushed::Dropped => {
                                        metrics::counter!("hearth_grpc_publish_dropped_total")
                                            .increment(1);
                                    }
                                    Pushed::Closed => {
                                        break Err(Status::aborted("the participant is gone"));
                                    }
                                },
                                Err(e) => break Err(e),
                            }
                        }
                        Some(Ok(_)) => {
                            break Err(Status::invalid_argument(
                                "only the first message may be `start`; then `rtp`",
                            ))
                        }
                    }
                }
            };
            if let Err(e) = outcome {
                metrics::counter!("hearth_grpc_publish_rejected_total").increment(1);
                let _ = tx.send(Err(e)).await;
            }
            actor.stop(Some("left".into()));
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Validates one RTP packet from a `PublishTrack` stream.
fn packet(data: &Bytes, payload_type: u8, which: Codec) -> Result<MediaPacket, Status> {
    let p = rtp::parse(data).map_err(|e| Status::invalid_argument(format!("rtp: {e}")))?;
    if payload_type != 0 && p.payload_type != payload_type {
        return Err(Status::invalid_argument(format!(
            "rtp: payload type {} is not the declared {payload_type}",
            p.payload_type
        )));
    }
    Ok(MediaPacket {
        ssrc: p.ssrc,
        seq: p.seq,
        timestamp: p.timestamp,
        marker: p.marker,
        payload_type: p.payload_type,
        keyframe: codec::is_keyframe(which, &p.payload),
        payload: p.payload,
        arrival: Instant::now(),
        audio_level: None,
        layer: None,
        dependency: None,
    })
}
