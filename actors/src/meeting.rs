//! `MeetingActor`: one per meeting, the control plane of its participants.
//!
//! Owns membership, the published tracks and who receives them (everyone with the
//! subscribe grant receives every other participant's tracks), active speaker detection
//! and the meeting's end. It is **not** on the per-packet path: on every membership or track
//! change it rebuilds each affected track's fan-out list and hands it to the publisher's
//! actor, which then pushes packets straight into subscribers' media inboxes.
//!
//! Supervision:
//! * Parent of its `ParticipantActor`s. A participant that **fails** (panics) is removed:
//!   the others get `participantLeft` (reason `failed`), its tracks are withdrawn, its client
//!   is told to reconnect, and the failure is counted. Nothing else changes.
//! * Child of the `MeetingSupervisor`, which restarts a failed meeting from the registry's
//!   record (same name and start time); its participants are stopped and reconnect.
//! * Ends itself when it has been empty for the configured grace period.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use hearth_engine::speaker::ActiveSpeakerDetector;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use crate::domain::{
    EndReason, Grants, JoinAccepted, JoinRequest, LeaveReason, MeetingInfo, ParticipantInfo,
    ServerSignal, SignalError, SignalErrorCode, TrackInfo,
};
use crate::ids::{MeetingId, ParticipantId, TrackId};
use crate::inbox::InboxSender;
use crate::node::NodeShared;
use crate::participant::{
    MediaItem, ParticipantActor, ParticipantArgs, ParticipantMsg, PublishedTrack, SubscriberLink,
    TrackKey,
};
use crate::signal::SignalSender;
use crate::timer::Wakeup;
use crate::webrtc::CodecParams;

/// A handle the gateway uses to pass client messages to a participant.
#[derive(Clone, Debug)]
pub struct ParticipantHandle {
    pub id: ParticipantId,
    pub meeting: MeetingId,
    actor: ActorRef<ParticipantMsg>,
}

impl ParticipantHandle {
    /// Delivers a client message; false if the participant is gone.
    pub fn send(&self, signal: crate::domain::ClientSignal) -> bool {
        self.actor
            .send_message(ParticipantMsg::Signal(signal))
            .is_ok()
    }

    /// The participant's counters, or None if it is gone.
    pub async fn stats(&self) -> Option<crate::participant::ParticipantStats> {
        ractor::call!(self.actor, ParticipantMsg::Stats).ok()
    }

    /// Actor id, for operators and drills.
    pub fn actor_id(&self) -> ActorId {
        self.actor.get_id()
    }
}

/// What a test or operator sees of a meeting.
#[derive(Clone, Debug)]
pub struct MeetingSnapshot {
    pub id: MeetingId,
    pub started_at: SystemTime,
    pub participants: Vec<ParticipantInfo>,
}

pub enum MeetingMsg {
    Join {
        request: JoinRequest,
        signal: SignalSender,
        reply: RpcReplyPort<Result<(JoinAccepted, ParticipantHandle), SignalError>>,
    },
    TrackPublished {
        participant: ParticipantId,
        key: TrackKey,
        info: TrackInfo,
        codec: CodecParams,
    },
    TrackUnpublished {
        participant: ParticipantId,
        track: TrackId,
    },
    TrackMuted {
        participant: ParticipantId,
        track: TrackId,
        muted: bool,
    },
    SpeakerLevel {
        participant: ParticipantId,
        loudness: f32,
    },
    Tick,
    /// Remove a participant (operator or API).
    Remove {
        participant: ParticipantId,
        reason: LeaveReason,
    },
    /// End the meeting now.
    End(EndReason),
    /// Drill and test hook: make a participant (or, with None, the meeting) fail.
    InjectFault {
        participant: Option<ParticipantId>,
    },
    Snapshot(RpcReplyPort<MeetingSnapshot>),
}

pub struct MeetingArgs {
    pub id: MeetingId,
    pub started_at: SystemTime,
    pub node: Arc<NodeShared>,
}

pub struct MeetingActor;

struct Member {
    info: ParticipantInfo,
    grants: Grants,
    actor: ActorRef<ParticipantMsg>,
    signal: SignalSender,
    media: InboxSender<MediaItem, ParticipantMsg>,
}

struct Track {
    published: PublishedTrack,
}

pub struct MeetingState {
    id: MeetingId,
    started_at: SystemTime,
    node: Arc<NodeShared>,
    members: HashMap<ParticipantId, Member>,
    by_actor: HashMap<ActorId, ParticipantId>,
    tracks: HashMap<TrackId, Track>,
    speakers: ActiveSpeakerDetector<ParticipantId>,
    /// The speaker list last sent to everyone.
    last_speakers: Vec<(ParticipantId, f32)>,
    empty_since: Option<Instant>,
    wakeup: Wakeup,
    ended: bool,
}

impl Actor for MeetingActor {
    type Msg = MeetingMsg;
    type State = MeetingState;
    type Arguments = MeetingArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let now = Instant::now();
        metrics::gauge!("hearth_meetings").increment(1.0);
        let wakeup = Wakeup::spawn(myself, || MeetingMsg::Tick);
        let speakers = ActiveSpeakerDetector::new(args.node.config.speaker, now);
        wakeup.arm(now + args.node.config.empty_timeout);
        tracing::info!(meeting = %args.id, "meeting started");
        Ok(MeetingState {
            id: args.id,
            started_at: args.started_at,
            node: args.node,
            members: HashMap::new(),
            by_actor: HashMap::new(),
            tracks: HashMap::new(),
            speakers,
            last_speakers: Vec::new(),
            empty_since: Some(now),
            wakeup,
            ended: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let now = Instant::now();
        match msg {
            MeetingMsg::Join {
                request,
                signal,
                reply,
            } => {
                let result = state.join(&myself, request, signal).await;
                let _ = reply.send(result);
            }
            MeetingMsg::TrackPublished {
                participant,
                key,
                info,
                codec,
            } => state.track_published(participant, key, info, codec),
            MeetingMsg::TrackUnpublished { participant, track } => {
                state.track_unpublished(&participant, &track)
            }
            MeetingMsg::TrackMuted {
                participant,
                track,
                muted,
            } => state.track_muted(&participant, &track, muted),
            MeetingMsg::SpeakerLevel {
                participant,
                loudness,
            } => {
                if state.members.contains_key(&participant) {
                    state.speakers.update(participant, loudness, now);
                }
            }
            MeetingMsg::Tick => state.on_tick(now, &myself),
            MeetingMsg::Remove {
                participant,
                reason,
            } => {
                if let Some(member) = state.members.get(&participant) {
                    let _ = member.actor.send_message(ParticipantMsg::Leave(reason));
                }
            }
            MeetingMsg::End(reason) => state.end(reason, &myself),
            MeetingMsg::InjectFault { participant } => match participant {
                None => panic!("fault injected into meeting {}", state.id),
                Some(id) => {
                    if let Some(member) = state.members.get(&id) {
                        let _ = member.actor.send_message(ParticipantMsg::InjectFault);
                    }
                }
            },
            MeetingMsg::Snapshot(reply) => {
                let _ = reply.send(MeetingSnapshot {
                    id: state.id.clone(),
                    started_at: state.started_at,
                    participants: state.members.values().map(|m| m.info.clone()).collect(),
                });
            }
        }
        state.arm(now);
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let now = Instant::now();
        match event {
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                if let Some(id) = state.by_actor.remove(&cell.get_id()) {
                    let reason = match reason.as_deref() {
                        Some("disconnected") => LeaveReason::Disconnected,
                        Some("removed") => LeaveReason::Removed,
                        Some("meeting_ended") => LeaveReason::MeetingEnded,
                        _ => LeaveReason::Left,
                    };
                    state.remove_member(now, &id, reason);
                }
            }
            SupervisionEvent::ActorFailed(cell, error) => {
                if let Some(id) = state.by_actor.remove(&cell.get_id()) {
                    metrics::counter!("hearth_actor_failures_total", "kind" => "participant")
                        .increment(1);
                    // The policy's restart of a participant is the client's: it is told to
                    // reconnect and joins again with a fresh actor.
                    metrics::counter!("hearth_actor_restarts_total", "kind" => "participant")
                        .increment(1);
                    tracing::warn!(meeting = %state.id, participant = %id, %error,
                        "participant failed; removed (policy: stop and remove)");
                    if let Some(member) = state.members.get(&id) {
                        member
                            .signal
                            .send(ServerSignal::Reconnect(format!("session failed: {error}")));
                    }
                    state.remove_member(now, &id, LeaveReason::Failed);
                }
            }
            _ => {}
        }
        state.arm(now);
        let _ = myself;
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        tracing::info!(meeting = %state.id, "meeting stopped");
        Ok(())
    }
}

impl Drop for MeetingState {
    fn drop(&mut self) {
        metrics::gauge!("hearth_meetings").decrement(1.0);
    }
}

impl MeetingState {
    async fn join(
        &mut self,
        myself: &ActorRef<MeetingMsg>,
        request: JoinRequest,
        signal: SignalSender,
    ) -> Result<(JoinAccepted, ParticipantHandle), SignalError> {
        if self.ended {
            return Err(SignalError::fatal(
                SignalErrorCode::MeetingNotFound,
                "the meeting has ended",
            ));
        }
        if !request.grants.join {
            return Err(SignalError::fatal(
                SignalErrorCode::PermissionDenied,
                "the token does not grant joining",
            ));
        }
        if self.members.len() >= self.node.config.max_participants {
            return Err(SignalError::fatal(
                SignalErrorCode::MeetingFull,
                format!(
                    "the meeting has its maximum of {} participants",
                    self.node.config.max_participants
                ),
            ));
        }
        let Some(mux) = self.node.mux.clone() else {
            return Err(SignalError::fatal(
                SignalErrorCode::NodeUnavailable,
                "this node runs TURN only",
            ));
        };
        let id = ParticipantId::random();
        let (link_tx, link_rx) = tokio::sync::oneshot::channel();
        let args = ParticipantArgs {
            id: id.clone(),
            meeting: myself.clone(),
            signal: signal.clone(),
            mux,
            advertised: self.node.advertised,
            certificate: self.node.certificate.clone(),
            can_publish: request.grants.publish,
            media_queue: self.node.config.media_queue,
            speaker: self.node.config.speaker,
            wall_epoch: self.node.wall_epoch,
            link: link_tx,
        };
        let (actor, _) = Actor::spawn_linked(None, ParticipantActor, args, myself.get_cell())
            .await
            .map_err(|e| {
                SignalError::fatal(
                    SignalErrorCode::Internal,
                    format!("cannot start the session: {e}"),
                )
            })?;
        let media = link_rx.await.map_err(|_| {
            SignalError::fatal(SignalErrorCode::Internal, "session started without media")
        })?;
        let info = ParticipantInfo {
            id: id.clone(),
            identity: request.identity,
            name: request.name,
            tracks: Vec::new(),
            joined_at: SystemTime::now(),
        };
        let others: Vec<ParticipantInfo> = self.members.values().map(|m| m.info.clone()).collect();
        for other in self.members.values() {
            other
                .signal
                .send(ServerSignal::ParticipantJoined(info.clone()));
        }
        self.by_actor.insert(actor.get_id(), id.clone());
        self.members.insert(
            id.clone(),
            Member {
                info: info.clone(),
                grants: request.grants,
                actor: actor.clone(),
                signal,
                media,
            },
        );
        self.empty_since = None;
        // Speaker lists go out on change only; a newcomer needs the current one.
        if !self.last_speakers.is_empty()
            && let Some(member) = self.members.get(&id)
        {
            member
                .signal
                .send(ServerSignal::ActiveSpeakers(self.last_speakers.clone()));
        }
        if request.grants.subscribe {
            let existing: Vec<TrackId> = self
                .tracks
                .values()
                .filter(|t| t.published.publisher != id)
                .map(|t| t.published.info.id.clone())
                .collect();
            for track in existing {
                if let Some(t) = self.tracks.get(&track) {
                    let _ = actor
                        .send_message(ParticipantMsg::Subscribe(Box::new(t.published.clone())));
                }
                self.rebuild_fanout(&track);
            }
        }
        tracing::info!(meeting = %self.id, participant = %id, "participant joined");
        Ok((
            JoinAccepted {
                participant: info,
                meeting: MeetingInfo {
                    id: self.id.clone(),
                    started_at: self.started_at,
                },
                others,
                ice_servers: Vec::new(),
            },
            ParticipantHandle {
                id,
                meeting: self.id.clone(),
                actor,
            },
        ))
    }

    fn track_published(
        &mut self,
        participant: ParticipantId,
        key: TrackKey,
        info: TrackInfo,
        codec: CodecParams,
    ) {
        let Some(publisher) = self.members.get_mut(&participant) else {
            return;
        };
        publisher.info.tracks.push(info.clone());
        let published = PublishedTrack {
            info: info.clone(),
            key,
            codec,
            publisher: participant.clone(),
            publisher_ref: publisher.actor.clone(),
        };
        for member in self.members.values() {
            member.signal.send(ServerSignal::TrackPublished {
                participant: participant.clone(),
                track: info.clone(),
            });
            if member.info.id != participant && member.grants.subscribe {
                let _ = member
                    .actor
                    .send_message(ParticipantMsg::Subscribe(Box::new(published.clone())));
            }
        }
        let id = info.id.clone();
        self.tracks.insert(id.clone(), Track { published });
        self.rebuild_fanout(&id);
    }

    fn track_unpublished(&mut self, participant: &ParticipantId, track: &TrackId) {
        let Some(t) = self.tracks.get(track) else {
            return;
        };
        if &t.published.publisher != participant {
            return;
        }
        self.tracks.remove(track);
        if let Some(publisher) = self.members.get_mut(participant) {
            publisher.info.tracks.retain(|t| &t.id != track);
            let _ = publisher.actor.send_message(ParticipantMsg::SetFanout {
                track: track.clone(),
                subscribers: Arc::from(Vec::new()),
            });
        }
        for member in self.members.values() {
            member.signal.send(ServerSignal::TrackUnpublished {
                participant: participant.clone(),
                track: track.clone(),
            });
            if &member.info.id != participant {
                let _ = member.actor.send_message(ParticipantMsg::Unsubscribe {
                    track: track.clone(),
                });
            }
        }
    }

    fn track_muted(&mut self, participant: &ParticipantId, track: &TrackId, muted: bool) {
        let Some(t) = self.tracks.get_mut(track) else {
            return;
        };
        if &t.published.publisher != participant {
            return;
        }
        t.published.info.muted = muted;
        if let Some(publisher) = self.members.get_mut(participant)
            && let Some(info) = publisher.info.tracks.iter_mut().find(|t| &t.id == track)
        {
            info.muted = muted;
        }
        for member in self.members.values() {
            member.signal.send(ServerSignal::TrackMuted {
                participant: participant.clone(),
                track: track.clone(),
                muted,
            });
            if &member.info.id != participant {
                let _ = member.actor.send_message(ParticipantMsg::RemoteTrackMuted {
                    track: track.clone(),
                    muted,
                });
            }
        }
    }

    /// Gives `track`'s publisher the current list of its subscribers.
    fn rebuild_fanout(&self, track: &TrackId) {
        let Some(t) = self.tracks.get(track) else {
            return;
        };
        let Some(publisher) = self.members.get(&t.published.publisher) else {
            return;
        };
        let links: Vec<SubscriberLink> = self
            .members
            .values()
            .filter(|m| m.info.id != t.published.publisher && m.grants.subscribe)
            .map(|m| SubscriberLink {
                participant: m.info.id.clone(),
                media: m.media.clone(),
            })
            .collect();
        let _ = publisher.actor.send_message(ParticipantMsg::SetFanout {
            track: track.clone(),
            subscribers: Arc::from(links),
        });
    }

    fn remove_member(&mut self, now: Instant, id: &ParticipantId, reason: LeaveReason) {
        let Some(member) = self.members.remove(id) else {
            return;
        };
        self.speakers.remove(id);
        let theirs: Vec<TrackId> = self
            .tracks
            .iter()
            .filter(|(_, t)| &t.published.publisher == id)
            .map(|(k, _)| k.clone())
            .collect();
        for track in &theirs {
            self.tracks.remove(track);
            for other in self.members.values() {
                let _ = other.actor.send_message(ParticipantMsg::Unsubscribe {
                    track: track.clone(),
                });
            }
        }
        if member.grants.subscribe {
            let others_tracks: Vec<TrackId> = self.tracks.keys().cloned().collect();
            for track in others_tracks {
                self.rebuild_fanout(&track);
            }
        }
        for other in self.members.values() {
            for track in &theirs {
                other.signal.send(ServerSignal::TrackUnpublished {
                    participant: id.clone(),
                    track: track.clone(),
                });
            }
            other.signal.send(ServerSignal::ParticipantLeft {
                participant: id.clone(),
                reason,
            });
        }
        tracing::info!(meeting = %self.id, participant = %id, reason = reason.as_str(), "participant left");
        if self.members.is_empty() {
            self.empty_since = Some(now);
        }
    }

    fn on_tick(&mut self, now: Instant, myself: &ActorRef<MeetingMsg>) {
        if let Some(since) = self.empty_since
            && now.duration_since(since) >= self.node.config.empty_timeout
        {
            self.end(EndReason::Empty, myself);
            return;
        }
        self.speakers.handle_timeout(now);
        if let Some(list) = self.speakers.poll_speakers() {
            for member in self.members.values() {
                member
                    .signal
                    .send(ServerSignal::ActiveSpeakers(list.clone()));
            }
            self.last_speakers = list;
        }
    }

    fn end(&mut self, reason: EndReason, myself: &ActorRef<MeetingMsg>) {
        if self.ended {
            return;
        }
        self.ended = true;
        self.node.registry.remove_if_same(&self.id, myself);
        for member in self.members.values() {
            member.signal.send(ServerSignal::MeetingEnded(reason));
            let _ = member
                .actor
                .send_message(ParticipantMsg::Leave(LeaveReason::MeetingEnded));
        }
        tracing::info!(meeting = %self.id, reason = reason.as_str(), "meeting ended");
        myself.stop(Some(reason.as_str().to_owned()));
    }

    fn arm(&self, now: Instant) {
        if self.ended {
            return;
        }
        let mut next = if self.members.is_empty() {
            self.empty_since
                .map(|s| s + self.node.config.empty_timeout)
                .unwrap_or(now + self.node.config.empty_timeout)
        } else {
            self.speakers.poll_timeout()
        };
        if next < now {
            next = now;
        }
        self.wakeup.arm(next);
    }
}
