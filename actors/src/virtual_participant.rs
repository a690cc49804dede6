//! Participants without a WebRTC peer, for the embedding API.
//!
//! * A **virtual publisher** (`MediaService.PublishTrack`) is a member of its meeting that
//!   publishes one track whose RTP packets arrive over gRPC. It fans them out to the
//!   subscribers exactly like a browser publisher (same fan-out lists, same bounded
//!   subscriber queues) and passes keyframe requests back to the gRPC client.
//! * A **track tap** (`MediaService.SubscribeTrack`) receives one track's packets like a
//!   subscriber would (it sits in the track's fan-out list, with its own bounded queue) and
//!   hands them, as plain RTP, to a gRPC stream. A slow reader loses its own packets.
//!
//! Both speak [`ParticipantMsg`], so the meeting and the publishers treat them as
//! participants. They are children of the meeting actor (stopped and removed on failure).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hearth_engine::keyframe::KeyframeRequester;
use hearth_engine::media::{MediaKind, MediaPacket};
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef};
use tokio::sync::mpsc;

use crate::domain::TrackInfo;
use crate::ids::{ParticipantId, TrackId};
use crate::inbox::{Inbox, InboxSender};
use crate::meeting::MeetingMsg;
use crate::participant::{MediaItem, ParticipantMsg, SubscriberLink, TrackKey};
use crate::registry::{ActorKind, ActorRegistry, ActorSpec, Registration};
use crate::webrtc::CodecParams;

/// The track a virtual publisher publishes.
#[derive(Clone, Debug)]
pub struct VirtualTrack {
    pub kind: MediaKind,
    pub codec: CodecParams,
}

/// What the API gets back when a virtual publisher joined.
pub struct VirtualPublisher {
    pub participant: ParticipantId,
    pub track: TrackInfo,
    /// Stop it to leave.
    pub actor: ActorRef<ParticipantMsg>,
    /// Push RTP here: a bounded queue; when the actor falls behind, the excess is dropped
    /// and counted, so a client pushing too fast cannot grow the node's memory.
    pub packets: InboxSender<MediaPacket, ParticipantMsg>,
    /// Keyframe requests from subscribers (video).
    pub events: mpsc::Receiver<VirtualEvent>,
}

/// Something a virtual publisher's client should know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VirtualEvent {
    KeyframeRequested,
}

/// What the API gets back when a tap started.
pub struct TapStart {
    pub track: TrackInfo,
    pub publisher: ParticipantId,
    pub codec: CodecParams,
    /// Whole RTP packets.
    pub packets: mpsc::Receiver<Bytes>,
    /// Packets this tap lost because its reader was slow.
    pub dropped: Arc<AtomicU64>,
    /// Stop it when the reader goes away.
    pub actor: ActorRef<ParticipantMsg>,
}

pub enum VirtualRole {
    Publisher {
        key: TrackKey,
        track: TrackId,
        kind: MediaKind,
        events: mpsc::Sender<VirtualEvent>,
    },
    Tap(TapArgs),
}

pub struct TapArgs {
    pub track: TrackId,
    pub out: mpsc::Sender<Bytes>,
    pub dropped: Arc<AtomicU64>,
    /// Write the publisher's RFC 6464 audio level into each packet (a one-byte header
    /// extension, `hearth_engine::rtp::write_with_level`): the transcriber's tap.
    pub with_level: bool,
}

pub struct VirtualArgs {
    pub id: ParticipantId,
    pub meeting: ActorRef<MeetingMsg>,
    pub role: VirtualRole,
    pub media_queue: usize,
    pub actors: Arc<ActorRegistry>,
    pub parent: ActorId,
    /// Receives the media inbox sender (for fan-out lists) once it exists.
    pub link: tokio::sync::oneshot::Sender<InboxSender<MediaItem, ParticipantMsg>>,
    /// Publishers: receives the sender of the RTP ingress queue.
    pub ingress_link:
        Option<tokio::sync::oneshot::Sender<InboxSender<MediaPacket, ParticipantMsg>>>,
}

/// RTP packets a virtual publisher buffers before dropping the excess.
pub const INGRESS_QUEUE: usize = 1024;

pub struct VirtualParticipant;

pub struct VirtualState {
    id: ParticipantId,
    role: VirtualRole,
    media: Inbox<MediaItem>,
    ingress: Option<Inbox<MediaPacket>>,
    scratch_rtp: Vec<MediaPacket>,
    fanout: Arc<[SubscriberLink]>,
    keyframes: KeyframeRequester,
    scratch: Vec<MediaItem>,
    reg: Registration,
}

impl Actor for VirtualParticipant {
    type Msg = ParticipantMsg;
    type State = VirtualState;
    type Arguments = VirtualArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let (media, media_tx) = Inbox::new(args.media_queue, myself.clone(), || {
            ParticipantMsg::MediaReady
        });
        let _ = args.link.send(media_tx.clone());
        let ingress = args.ingress_link.map(|link| {
            let (inbox, tx) = Inbox::new(INGRESS_QUEUE, myself.clone(), || {
                ParticipantMsg::VirtualRtpReady
            });
            let _ = link.send(tx);
            inbox
        });
        let (kind, name) = match &args.role {
            VirtualRole::Publisher { track, .. } => (
                ActorKind::VirtualParticipant,
                format!("{} ({track})", args.id),
            ),
            VirtualRole::Tap(tap) => (ActorKind::TrackTap, format!("tap of {}", tap.track)),
        };
        let kill_ref = myself.clone();
        let depth = media_tx.clone();
        let reg = args.actors.register(
            ActorSpec::new(myself.get_id(), kind, name)
                .parent(args.parent)
                .kill(move || kill_ref.send_message(ParticipantMsg::InjectFault).is_ok())
                .media_queue(move || depth.depth()),
        );
        let _ = args.meeting;
        Ok(VirtualState {
            id: args.id,
            role: args.role,
            media,
            ingress,
            scratch_rtp: Vec::with_capacity(64),
            fanout: Arc::from(Vec::new()),
            keyframes: KeyframeRequester::new(Duration::from_millis(500)),
            scratch: Vec::with_capacity(64),
            reg,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.reg.handled();
        match msg {
            ParticipantMsg::VirtualRtpReady => state.on_ingress(&myself),
            ParticipantMsg::MediaReady => state.on_media(&myself),
            ParticipantMsg::SetFanout { subscribers, .. } => {
                state.fanout = subscribers;
                state.request_keyframe();
            }
            ParticipantMsg::KeyframeRequest { .. } => state.request_keyframe(),
            ParticipantMsg::Leave(reason) => myself.stop(Some(reason.as_str().to_owned())),
            // No driver fast path here: a media fault fails the actor at once.
            ParticipantMsg::InjectFault | ParticipantMsg::InjectMediaFault => {
                panic!("fault injected into {}", state.id)
            }
            ParticipantMsg::Stats(reply) => {
                let _ = reply.send(Default::default());
            }
            // No peer: nothing to negotiate, no retransmission cache, no subscriptions.
            ParticipantMsg::Signal(_)
            | ParticipantMsg::DatagramsReady
            | ParticipantMsg::Tick
            | ParticipantMsg::Subscribe(_)
            | ParticipantMsg::Unsubscribe { .. }
            | ParticipantMsg::RemoteTrackMuted { .. }
            | ParticipantMsg::Retransmit { .. }
            | ParticipantMsg::SetCanPublish(_)
            | ParticipantMsg::Data(_)
            | ParticipantMsg::LayerPreference { .. }
            | ParticipantMsg::ActiveSpeaker(_) => {}
            // Subscribers' send legs: a virtual publisher fans out through their media
            // queues (each subscriber forwards on its own leg from there).
            ParticipantMsg::AttachLeg { .. } | ParticipantMsg::DetachLeg { .. } => {}
        }
        Ok(())
    }
}

impl VirtualState {
    fn on_ingress(&mut self, myself: &ActorRef<ParticipantMsg>) {
        let Some(ingress) = self.ingress.as_mut() else {
            return;
        };
        let mut batch = std::mem::take(&mut self.scratch_rtp);
        ingress.drain(&mut batch, 256);
        let more = ingress.has_pending();
        for packet in batch.drain(..) {
            self.publish(packet);
        }
        self.scratch_rtp = batch;
        if more {
            let _ = myself.send_message(ParticipantMsg::VirtualRtpReady);
        }
    }

    fn publish(&mut self, packet: MediaPacket) {
        let VirtualRole::Publisher { key, events, .. } = &self.role else {
            return;
        };
        if packet.keyframe {
            self.keyframes.on_keyframe(packet.arrival);
        }
        // A request deferred by the throttle goes out with the next packet after its window.
        self.keyframes.handle_timeout(packet.arrival);
        if self.keyframes.poll_request() {
            let _ = events.try_send(VirtualEvent::KeyframeRequested);
        }
        for link in self.fanout.iter() {
            link.media.push(MediaItem {
                track: *key,
                packet: packet.clone(),
                retransmission: false,
            });
        }
    }

    fn request_keyframe(&mut self) {
        let VirtualRole::Publisher { kind, events, .. } = &self.role else {
            return;
        };
        if *kind != MediaKind::Video {
            return;
        }
        let now = Instant::now();
        self.keyframes.request(now);
        if self.keyframes.poll_request() {
            let _ = events.try_send(VirtualEvent::KeyframeRequested);
        }
    }

    fn on_media(&mut self, myself: &ActorRef<ParticipantMsg>) {
        let mut batch = std::mem::take(&mut self.scratch);
        self.media.drain(&mut batch, 256);
        if let VirtualRole::Tap(tap) = &self.role {
            for item in batch.drain(..) {
                let p = &item.packet;
                let rtp = match p.audio_level {
                    Some(level) if tap.with_level => hearth_engine::rtp::write_with_level(
                        p.marker,
                        p.payload_type,
                        p.seq,
                        p.timestamp,
                        p.ssrc,
                        level,
                        &p.payload,
                    ),
                    _ => hearth_engine::rtp::write(
                        p.marker,
                        p.payload_type,
                        p.seq,
                        p.timestamp,
                        p.ssrc,
                        &p.payload,
                    ),
                };
                match tap.out.try_send(rtp) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        tap.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        myself.stop(Some("reader_gone".into()));
                        break;
                    }
                }
            }
        }
        batch.clear();
        self.scratch = batch;
        if self.media.has_pending() {
            let _ = myself.send_message(ParticipantMsg::MediaReady);
        }
    }
}
