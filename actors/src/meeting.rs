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

use crate::billing::{Attribution, IntervalKind, UsageHandle};
use crate::domain::{
    ApiError, CaptionsState, EndReason, EngineKind, Grants, JoinAccepted, JoinRequest, Language,
    LeaveReason, MeetingInfo, MeetingSettings, ParticipantInfo, ReceiveFilter, ServerSignal,
    SignalError, SignalErrorCode, TrackInfo, TrackSource, Transcript,
};
use crate::events::EventKind;
use crate::ids::{MeetingId, ParticipantId, TrackId};
use crate::inbox::InboxSender;
use crate::node::NodeShared;
use crate::participant::{
    MediaItem, ParticipantActor, ParticipantArgs, ParticipantMsg, PublishedTrack, SubscriberLink,
    TrackKey,
};
use crate::registry::{ActorKind, ActorSpec, Registration};
use crate::signal::SignalSender;
use crate::timer::Wakeup;
use crate::transcription::transcriber::{Transcriber, TranscriberArgs, TranscriberMsg};
use crate::virtual_participant::{
    TapArgs, TapStart, VirtualArgs, VirtualParticipant, VirtualPublisher, VirtualRole, VirtualTrack,
};
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
    pub settings: MeetingSettings,
    /// The app's metadata of the meeting.
    pub metadata: String,
    /// Participants in join order.
    pub participants: Vec<MemberView>,
    pub actor: ActorId,
}

/// A participant with what only operators see.
#[derive(Clone, Debug)]
pub struct MemberView {
    pub info: ParticipantInfo,
    pub grants: Grants,
    /// Made by the embedding API (no WebRTC peer behind it).
    pub is_virtual: bool,
    pub actor: ActorId,
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
    /// Remove a participant (operator or API); replies false if it is not here.
    Remove {
        participant: ParticipantId,
        reason: LeaveReason,
        reply: Option<RpcReplyPort<bool>>,
    },
    /// Mute or unmute a track for everyone, whatever its publisher does (API).
    MuteTrack {
        participant: ParticipantId,
        track: TrackId,
        muted: bool,
        reply: RpcReplyPort<Result<TrackInfo, ApiError>>,
    },
    /// Change what a participant may do (API).
    UpdatePermissions {
        participant: ParticipantId,
        publish: bool,
        subscribe: bool,
        reply: RpcReplyPort<Result<MemberView, ApiError>>,
    },
    /// The app changed the meeting's metadata (already in the record): tell everyone.
    MetadataChanged(String),
    /// A participant's open data channel labels changed.
    DataLabels {
        participant: ParticipantId,
        labels: Vec<String>,
    },
    /// A data channel message from a participant: to every other participant's channel of
    /// the same label.
    Data {
        from: ParticipantId,
        label: String,
        binary: bool,
        data: bytes::Bytes,
    },
    /// Deliver an app message to every participant, or to the named ones (API); replies
    /// with the number of participants it reached, or the first unknown participant.
    SendMessage {
        message: crate::domain::AppMessage,
        to: Vec<ParticipantId>,
        reply: RpcReplyPort<Result<usize, ParticipantId>>,
    },
    /// Change the meeting's settings (API); replies with the effective ones.
    UpdateSettings {
        max_participants: Option<usize>,
        empty_timeout: Option<std::time::Duration>,
        transcription: Option<crate::domain::TranscriptionSettings>,
        reply: RpcReplyPort<MeetingSettings>,
    },
    /// A virtual participant publishing one track fed by the embedding API.
    JoinVirtual {
        request: JoinRequest,
        track: VirtualTrack,
        reply: RpcReplyPort<Result<VirtualPublisher, ApiError>>,
    },
    /// A copy of one track's packets for the embedding API.
    Tap {
        track: TrackId,
        queue: usize,
        reply: RpcReplyPort<Result<TapStart, ApiError>>,
    },
    /// Turn captions on or off: by a participant (needs the captions grant; refused ones
    /// get a signaling error) or by the app (`by` None, replies).
    SetCaptions {
        by: Option<ParticipantId>,
        enabled: bool,
        language: Option<Language>,
        engine: Option<EngineKind>,
        reply: Option<RpcReplyPort<Result<CaptionsState, ApiError>>>,
    },
    /// A transcriber's result, for everyone.
    Transcript(Transcript),
    /// A transcriber could not transcribe an utterance.
    TranscriptionDropped {
        participant: ParticipantId,
        track: TrackId,
        segment: String,
        reason: &'static str,
    },
    /// Drill and test hook: make the transcriber of a track fail.
    InjectTranscriberFault(TrackId),
    /// Look again at which tracks need a transcriber (a parked one's minute is over).
    ResyncTranscribers,
    /// The node drains: tell every client, end at the deadline.
    Drain(std::time::Duration),
    /// End the meeting now.
    End(EndReason),
    /// Drill and test hook: make a participant (or, with None, the meeting) fail.
    InjectFault {
        participant: Option<ParticipantId>,
        /// With a participant: fail it on a UDP driver's fast path instead of in its actor.
        on_media_path: bool,
    },
    Snapshot(RpcReplyPort<MeetingSnapshot>),
}

pub struct MeetingArgs {
    pub id: MeetingId,
    pub started_at: SystemTime,
    pub node: Arc<NodeShared>,
    pub settings: MeetingSettings,
    /// Restarts so far and the failure that caused the last one.
    pub restarts: u32,
    pub last_failure: Option<String>,
    /// The supervisor, for the actor tree.
    pub parent: ActorId,
}

pub struct MeetingActor;

struct Member {
    info: ParticipantInfo,
    grants: Grants,
    /// When the member's token expires (None: joined without one).
    token_expires_at: Option<SystemTime>,
    is_virtual: bool,
    actor: ActorRef<ParticipantMsg>,
    signal: SignalSender,
    media: InboxSender<MediaItem, ParticipantMsg>,
    /// The member's usage interval (ends when the member is dropped).
    usage: UsageHandle,
    /// Receives only these tracks (WHEP); None: every track, as the grants allow.
    receive: Option<ReceiveFilter>,
    /// Labels of the member's open data channels (what it can receive).
    data_labels: Vec<String>,
}

struct Track {
    published: PublishedTrack,
    /// Muted by the API: nothing of it is forwarded.
    server_muted: bool,
    /// The track's usage interval.
    usage: UsageHandle,
}

/// A copy of a track for the embedding API.
struct Tap {
    actor: ActorRef<ParticipantMsg>,
    link: SubscriberLink,
}

pub struct MeetingState {
    /// Data channel copies this meeting may still relay (see [`crate::data::CopyBudget`]).
    data_budget: crate::data::CopyBudget,
    id: MeetingId,
    started_at: SystemTime,
    node: Arc<NodeShared>,
    settings: MeetingSettings,
    reg: Registration,
    taps: HashMap<TrackId, Vec<Tap>>,
    /// Actors of taps, to find them when they stop.
    tap_actors: HashMap<ActorId, TrackId>,
    members: HashMap<ParticipantId, Member>,
    by_actor: HashMap<ActorId, ParticipantId>,
    tracks: HashMap<TrackId, Track>,
    speakers: ActiveSpeakerDetector<ParticipantId>,
    /// The speaker list last sent to everyone.
    last_speakers: Vec<(ParticipantId, f32)>,
    empty_since: Option<Instant>,
    wakeup: Wakeup,
    ended: bool,
    /// Who changed the captions last (None: the app or the settings).
    captions_by: Option<ParticipantId>,
    /// One transcriber per transcribed audio track while captions are on.
    transcribers: HashMap<TrackId, ActorRef<TranscriberMsg>>,
    transcriber_actors: HashMap<ActorId, TrackId>,
    /// Restarts of each track's transcriber (the last minute's count, and since when).
    transcriber_restarts: HashMap<TrackId, (u32, Instant, Option<String>)>,
    /// Tracks or captions changed: transcribers to start or stop.
    transcribers_dirty: bool,
    /// The engine's unavailability last told to participants (re-told when it changes).
    announced_unavailable: Option<String>,
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
        let wakeup = Wakeup::spawn(myself.clone(), || MeetingMsg::Tick);
        let speakers = ActiveSpeakerDetector::new(args.node.config.speaker, now);
        wakeup.arm(now + args.settings.empty_timeout);
        tracing::info!(meeting = %args.id, "meeting started");
        let kill_ref = myself.clone();
        let reg = args.node.actors.register(
            ActorSpec::new(myself.get_id(), ActorKind::Meeting, args.id.as_str())
                .parent(args.parent)
                .restarted(args.restarts, args.last_failure)
                .kill(move || {
                    kill_ref
                        .send_message(MeetingMsg::InjectFault {
                            participant: None,
                            on_media_path: false,
                        })
                        .is_ok()
                }),
        );
        args.node.events.append(&args.id, EventKind::MeetingStarted);
        Ok(MeetingState {
            data_budget: crate::data::CopyBudget::new(std::time::Instant::now()),
            id: args.id,
            started_at: args.started_at,
            node: args.node,
            settings: args.settings,
            reg,
            taps: HashMap::new(),
            tap_actors: HashMap::new(),
            members: HashMap::new(),
            by_actor: HashMap::new(),
            tracks: HashMap::new(),
            speakers,
            last_speakers: Vec::new(),
            empty_since: Some(now),
            wakeup,
            ended: false,
            captions_by: None,
            transcribers: HashMap::new(),
            transcriber_actors: HashMap::new(),
            transcriber_restarts: HashMap::new(),
            transcribers_dirty: true,
            announced_unavailable: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let now = Instant::now();
        state.reg.handled();
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
                reply,
            } => {
                let found = match state.members.get(&participant) {
                    Some(member) => {
                        // The actor is told first: the session, once it has passed the
                        // error below to the client, ends with a `Leave` of its own into
                        // the same mailbox, which must not overtake this one (it would
                        // turn a removal into an ordinary leave for everyone else).
                        let _ = member.actor.send_message(ParticipantMsg::Leave(reason));
                        if reason == LeaveReason::Removed {
                            let now = SystemTime::now();
                            let until = member
                                .token_expires_at
                                .unwrap_or(now + crate::removals::DEFAULT_MEMORY);
                            state.node.removals.record(
                                &state.id,
                                &member.info.identity,
                                now,
                                until,
                            );
                            // Ahead of the session's end in the same queue (the meeting
                            // still holds a sender of it): the client learns it was
                            // removed, and does not reconnect.
                            member.signal.send(ServerSignal::Error(SignalError::fatal(
                                SignalErrorCode::Removed,
                                "you were removed from the meeting",
                            )));
                        }
                        true
                    }
                    None => false,
                };
                if let Some(reply) = reply {
                    let _ = reply.send(found);
                }
            }
            MeetingMsg::MuteTrack {
                participant,
                track,
                muted,
                reply,
            } => {
                let _ = reply.send(state.server_mute(&participant, &track, muted));
            }
            MeetingMsg::UpdatePermissions {
                participant,
                publish,
                subscribe,
                reply,
            } => {
                let _ = reply.send(state.update_permissions(&participant, publish, subscribe));
            }
            MeetingMsg::MetadataChanged(metadata) => {
                for member in state.members.values() {
                    member.signal.send(ServerSignal::MeetingUpdated {
                        metadata: metadata.clone(),
                    });
                }
            }
            MeetingMsg::Data {
                from,
                label,
                binary,
                data,
            } => state.relay_data(from, label, binary, &data),
            MeetingMsg::DataLabels {
                participant,
                labels,
            } => {
                if let Some(member) = state.members.get_mut(&participant) {
                    member.data_labels = labels;
                }
            }
            MeetingMsg::SendMessage { message, to, reply } => {
                let _ = reply.send(state.send_app_message(message, &to));
            }
            MeetingMsg::UpdateSettings {
                max_participants,
                empty_timeout,
                transcription,
                reply,
            } => {
                if let Some(max) = max_participants {
                    state.settings.max_participants = max;
                }
                if let Some(timeout) = empty_timeout {
                    state.settings.empty_timeout = timeout;
                }
                if let Some(t) = transcription {
                    state.apply_transcription(t, None);
                }
                if let Some(record) = state.node.registry.get(&state.id) {
                    record.settings.store(state.settings);
                }
                let _ = reply.send(state.settings);
            }
            MeetingMsg::JoinVirtual {
                request,
                track,
                reply,
            } => {
                let result = state.join_virtual(&myself, request, track).await;
                let _ = reply.send(result);
            }
            MeetingMsg::Tap {
                track,
                queue,
                reply,
            } => {
                let result = state.tap(&myself, &track, queue).await;
                let _ = reply.send(result);
            }
            MeetingMsg::SetCaptions {
                by,
                enabled,
                language,
                engine,
                reply,
            } => {
                let result = state.set_captions(by.clone(), enabled, language, engine);
                if let (Err((code, e)), Some(by)) = (&result, &by)
                    && let Some(member) = state.members.get(by)
                {
                    member
                        .signal
                        .send(ServerSignal::Error(SignalError::new(*code, e.to_string())));
                }
                if let Some(reply) = reply {
                    let _ = reply.send(result.map_err(|(_, e)| e));
                }
            }
            MeetingMsg::Transcript(t) => {
                state.on_transcript(t);
                state.refresh_captions();
            }
            MeetingMsg::ResyncTranscribers => state.transcribers_dirty = true,
            MeetingMsg::TranscriptionDropped {
                participant,
                track,
                segment,
                reason,
            } => {
                state.refresh_captions();
                state.node.events.append(
                    &state.id,
                    EventKind::TranscriptionDropped {
                        participant,
                        track,
                        segment,
                        reason,
                    },
                );
            }
            MeetingMsg::InjectTranscriberFault(track) => {
                if let Some(t) = state.transcribers.get(&track) {
                    let _ = t.send_message(TranscriberMsg::InjectFault);
                }
            }
            MeetingMsg::Drain(deadline) => {
                for member in state.members.values() {
                    member.signal.send(ServerSignal::NodeDraining(deadline));
                }
            }
            MeetingMsg::End(reason) => state.end(reason, &myself),
            MeetingMsg::InjectFault {
                participant,
                on_media_path,
            } => match participant {
                None => panic!("fault injected into meeting {}", state.id),
                Some(id) => {
                    if let Some(member) = state.members.get(&id) {
                        let _ = member.actor.send_message(if on_media_path {
                            ParticipantMsg::InjectMediaFault
                        } else {
                            ParticipantMsg::InjectFault
                        });
                    }
                }
            },
            MeetingMsg::Snapshot(reply) => {
                let mut participants: Vec<MemberView> =
                    state.members.values().map(Member::view).collect();
                participants.sort_by_key(|m| m.info.joined_at);
                let _ = reply.send(MeetingSnapshot {
                    id: state.id.clone(),
                    started_at: state.started_at,
                    settings: state.settings,
                    metadata: state.metadata(),
                    participants,
                    actor: myself.get_id(),
                });
            }
        }
        if state.transcribers_dirty && !state.ended {
            state.sync_transcribers(&myself).await;
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
            SupervisionEvent::ActorTerminated(cell, _, _)
                if state.transcriber_actors.contains_key(&cell.get_id()) =>
            {
                if let Some(track) = state.transcriber_actors.remove(&cell.get_id()) {
                    state.transcribers.remove(&track);
                }
            }
            SupervisionEvent::ActorFailed(cell, error)
                if state.transcriber_actors.contains_key(&cell.get_id()) =>
            {
                if let Some(track) = state.transcriber_actors.remove(&cell.get_id()) {
                    state.transcribers.remove(&track);
                    metrics::counter!("hearth_actor_failures_total", "kind" => "transcriber")
                        .increment(1);
                    tracing::warn!(meeting = %state.id, %track, %error,
                        "transcriber failed; restarting it for its track");
                    state
                        .reg
                        .failure(format!("transcriber of {track} failed: {error}"));
                    let entry = state
                        .transcriber_restarts
                        .entry(track)
                        .or_insert((0, now, None));
                    if now.duration_since(entry.1) > std::time::Duration::from_secs(60) {
                        *entry = (0, now, None);
                    }
                    entry.0 += 1;
                    entry.2 = Some(error.to_string());
                    state.transcribers_dirty = true;
                }
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                if let Some(track) = state.tap_actors.remove(&cell.get_id()) {
                    state.remove_tap(&track, cell.get_id());
                } else if let Some(id) = state.by_actor.remove(&cell.get_id()) {
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
                if let Some(track) = state.tap_actors.remove(&cell.get_id()) {
                    metrics::counter!("hearth_actor_failures_total", "kind" => "track_tap")
                        .increment(1);
                    state
                        .reg
                        .failure(format!("track tap of {track} failed: {error}"));
                    state.remove_tap(&track, cell.get_id());
                } else if let Some(id) = state.by_actor.remove(&cell.get_id()) {
                    state
                        .reg
                        .failure(format!("participant {id} failed: {error}"));
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
        if state.transcribers_dirty && !state.ended {
            state.sync_transcribers(&myself).await;
        }
        state.arm(now);
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

impl Member {
    /// This member receives `track` (its grants and its filter allow it).
    fn receives(&self, track: &PublishedTrack) -> bool {
        self.grants.subscribe
            && track.publisher != self.info.id
            && self
                .receive
                .as_ref()
                .is_none_or(|f| f.admits(&track.publisher, &track.info.id))
    }

    fn view(&self) -> MemberView {
        MemberView {
            info: self.info.clone(),
            grants: self.grants,
            is_virtual: self.is_virtual,
            actor: self.actor.get_id(),
        }
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
        if let Some(issued) = request.token_issued_at
            && self
                .node
                .removals
                .refuses(&self.id, &request.identity, issued, SystemTime::now())
        {
            return Err(SignalError::fatal(
                SignalErrorCode::Removed,
                "you were removed from this meeting; joining again needs a new token",
            ));
        }
        if self.members.len() >= self.settings.max_participants {
            return Err(SignalError::fatal(
                SignalErrorCode::MeetingFull,
                format!(
                    "the meeting has its maximum of {} participants",
                    self.settings.max_participants
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
        let usage = self.node.usage.open(
            IntervalKind::Participant,
            Attribution {
                api_key: request.tenant.clone(),
                meeting: self.id.to_string(),
                participant: id.to_string(),
                identity: request.identity.clone(),
            },
            id.as_str(),
        );
        let (link_tx, link_rx) = tokio::sync::oneshot::channel();
        let args = ParticipantArgs {
            usage: Arc::clone(usage.interval()),
            id: id.clone(),
            meeting: myself.clone(),
            signal: signal.clone(),
            mux,
            advertised: self.node.advertised,
            certificate: self.node.certificate.clone(),
            can_publish: request.grants.publish,
            client_offers_only: request.session.client_offers_only(),
            data_channels: request.data_channels,
            media_queue: self.node.config.media_queue,
            speaker: self.node.config.speaker,
            wall_epoch: self.node.wall_epoch,
            link: link_tx,
            actors: Arc::clone(&self.node.actors),
            parent: myself.get_id(),
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
                token_expires_at: request.token_expires_at,
                is_virtual: false,
                actor: actor.clone(),
                signal,
                media,
                usage,
                receive: request.session.receive_filter().cloned(),
                data_labels: Vec::new(),
            },
        );
        self.node
            .events
            .append(&self.id, EventKind::ParticipantJoined(info.clone()));
        self.empty_since = None;
        // Speaker lists go out on change only; a newcomer needs the current one.
        if !self.last_speakers.is_empty()
            && let Some(member) = self.members.get(&id)
        {
            member
                .signal
                .send(ServerSignal::ActiveSpeakers(self.last_speakers.clone()));
        }
        let existing: Vec<TrackId> = match self.members.get(&id) {
            Some(member) => self
                .tracks
                .values()
                .filter(|t| member.receives(&t.published))
                .map(|t| t.published.info.id.clone())
                .collect(),
            None => Vec::new(),
        };
        {
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
                    metadata: self.metadata(),
                },
                others,
                ice_servers: Vec::new(),
                captions: self.captions(),
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
            if member.receives(&published) {
                let _ = member
                    .actor
                    .send_message(ParticipantMsg::Subscribe(Box::new(published.clone())));
            }
        }
        self.node.events.append(
            &self.id,
            EventKind::TrackPublished {
                participant: participant.clone(),
                track: info.clone(),
            },
        );
        let id = info.id.clone();
        let kind = match info.kind {
            hearth_engine::media::MediaKind::Audio => IntervalKind::AudioTrack,
            hearth_engine::media::MediaKind::Video if info.source == TrackSource::Screen => {
                IntervalKind::ScreenTrack
            }
            hearth_engine::media::MediaKind::Video => IntervalKind::VideoTrack,
        };
        let who = self
            .members
            .get(&participant)
            .map(|m| m.usage.interval().who.clone())
            .unwrap_or_default();
        let usage = self.node.usage.open(kind, who, id.as_str());
        self.tracks.insert(
            id.clone(),
            Track {
                published,
                server_muted: false,
                usage,
            },
        );
        self.rebuild_fanout(&id);
        self.transcribers_dirty = true;
    }

    fn track_unpublished(&mut self, participant: &ParticipantId, track: &TrackId) {
        let Some(t) = self.tracks.get(track) else {
            return;
        };
        if &t.published.publisher != participant {
            return;
        }
        if let Some(t) = self.tracks.remove(track) {
            t.usage.end_with("unpublished");
        }
        self.stop_taps(track);
        self.transcribers_dirty = true;
        self.node.events.append(
            &self.id,
            EventKind::TrackUnpublished {
                participant: participant.clone(),
                track: track.clone(),
            },
        );
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
        let Some(t) = self.tracks.get(track) else {
            return;
        };
        if &t.published.publisher != participant {
            return;
        }
        if t.server_muted && !muted {
            // The API muted it; the publisher cannot lift that.
            return;
        }
        self.announce_muted(participant, track, muted);
    }

    /// Records a track's mute state and tells everyone: the clients (`trackMuted`), the
    /// subscribers' actors (their forwarders pause) and the event log.
    fn announce_muted(&mut self, participant: &ParticipantId, track: &TrackId, muted: bool) {
        if let Some(t) = self.tracks.get_mut(track) {
            t.published.info.muted = muted;
        }
        if let Some(publisher) = self.members.get_mut(participant)
            && let Some(info) = publisher.info.tracks.iter_mut().find(|t| &t.id == track)
        {
            info.muted = muted;
        }
        self.node.events.append(
            &self.id,
            EventKind::TrackMuted {
                participant: participant.clone(),
                track: track.clone(),
                muted,
            },
        );
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
        let links: Vec<SubscriberLink> = if t.server_muted {
            Vec::new()
        } else {
            self.members
                .values()
                .filter(|m| m.receives(&t.published))
                .map(|m| SubscriberLink {
                    participant: m.info.id.clone(),
                    media: m.media.clone(),
                })
                .chain(
                    self.taps
                        .get(track)
                        .into_iter()
                        .flatten()
                        .map(|tap| tap.link.clone()),
                )
                .collect()
        };
        let _ = publisher.actor.send_message(ParticipantMsg::SetFanout {
            track: track.clone(),
            subscribers: Arc::from(links),
        });
    }

    fn remove_member(&mut self, now: Instant, id: &ParticipantId, reason: LeaveReason) {
        let Some(member) = self.members.remove(id) else {
            return;
        };
        // Tracks first, then the participant (the order webhooks see them end in).
        let member_usage = Arc::clone(member.usage.interval());
        self.speakers.remove(id);
        let theirs: Vec<TrackId> = self
            .tracks
            .iter()
            .filter(|(_, t)| &t.published.publisher == id)
            .map(|(k, _)| k.clone())
            .collect();
        for track in &theirs {
            if let Some(t) = self.tracks.remove(track) {
                t.usage.end_with(reason.as_str());
            }
            self.stop_taps(track);
            self.node.events.append(
                &self.id,
                EventKind::TrackUnpublished {
                    participant: id.clone(),
                    track: track.clone(),
                },
            );
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
        member_usage.finish(reason.as_str());
        self.node.events.append(
            &self.id,
            EventKind::ParticipantLeft {
                participant: id.clone(),
                reason,
            },
        );
        tracing::info!(meeting = %self.id, participant = %id, reason = reason.as_str(), "participant left");
        if self.members.is_empty() {
            self.empty_since = Some(now);
        }
    }

    fn on_tick(&mut self, now: Instant, myself: &ActorRef<MeetingMsg>) {
        if let Some(since) = self.empty_since
            && now.duration_since(since) >= self.settings.empty_timeout
        {
            self.end(EndReason::Empty, myself);
            return;
        }
        self.speakers.handle_timeout(now);
        if let Some(list) = self.speakers.poll_speakers() {
            self.node
                .events
                .append(&self.id, EventKind::ActiveSpeakers(list.clone()));
            let loudest = list.first().map(|(id, _)| id.clone());
            for member in self.members.values() {
                member
                    .signal
                    .send(ServerSignal::ActiveSpeakers(list.clone()));
                // Its bandwidth allocation favours the speaker's camera.
                let _ = member
                    .actor
                    .send_message(ParticipantMsg::ActiveSpeaker(loudest.clone()));
            }
            self.last_speakers = list;
        }
    }

    fn end(&mut self, reason: EndReason, myself: &ActorRef<MeetingMsg>) {
        if self.ended {
            return;
        }
        self.ended = true;
        // Usage ends now, in webhook order: tracks, participants, the meeting.
        for t in self.tracks.values() {
            t.usage.interval().finish("meeting_ended");
        }
        for m in self.members.values() {
            m.usage.interval().finish("meeting_ended");
        }
        if let Some(record) = self.node.registry.get(&self.id)
            && record.actor.get_id() == myself.get_id()
        {
            record.usage.interval().finish(reason.as_str());
        }
        self.node.registry.remove_if_same(&self.id, myself);
        if let Some(cluster) = &self.node.cluster
            && reason != EndReason::Moved
        {
            cluster.release_soon(self.id.clone(), Arc::clone(&self.node));
        }
        self.node
            .events
            .append(&self.id, EventKind::MeetingEnded(reason));
        for member in self.members.values() {
            member.signal.send(if reason == EndReason::Moved {
                ServerSignal::Reconnect("the meeting moved to another node of the cluster".into())
            } else {
                ServerSignal::MeetingEnded(reason)
            });
            let _ = member
                .actor
                .send_message(ParticipantMsg::Leave(LeaveReason::MeetingEnded));
        }
        for (_, t) in self.transcribers.drain() {
            t.stop(Some("meeting_ended".into()));
        }
        tracing::info!(meeting = %self.id, reason = reason.as_str(), "meeting ended");
        myself.stop(Some(reason.as_str().to_owned()));
    }

    /// The meeting's captions as participants see them.
    fn captions(&self) -> CaptionsState {
        let t = &self.node.transcription;
        let s = self.settings.transcription;
        let engine = s.engine.unwrap_or(t.config.default_engine);
        CaptionsState {
            enabled: s.enabled,
            language: s.language.unwrap_or(t.config.default_language),
            engine,
            unavailable: t.unavailable(engine),
            changed_by: self.captions_by.clone(),
        }
    }

    /// Turns captions on or off; tells everyone; transcribers follow (sync_transcribers).
    fn set_captions(
        &mut self,
        by: Option<ParticipantId>,
        enabled: bool,
        language: Option<Language>,
        engine: Option<EngineKind>,
    ) -> Result<CaptionsState, (SignalErrorCode, ApiError)> {
        if let Some(by) = &by {
            let Some(member) = self.members.get(by) else {
                return Err((
                    SignalErrorCode::NotJoined,
                    ApiError::NotFound(format!("participant {by}")),
                ));
            };
            if !(member.grants.captions || member.grants.admin) {
                return Err((
                    SignalErrorCode::PermissionDenied,
                    ApiError::Invalid(
                        "turning captions on or off needs the token's captions grant".into(),
                    ),
                ));
            }
        }
        if let Some(engine) = engine
            && !self.node.transcription.engines().contains(&engine)
        {
            return Err((
                SignalErrorCode::MalformedMessage,
                ApiError::Invalid(format!(
                    "the {} engine is not configured on this node",
                    engine.as_str()
                )),
            ));
        }
        let before = self.settings.transcription;
        let mut s = before;
        s.enabled = enabled;
        if language.is_some() {
            s.language = language;
        }
        if engine.is_some() {
            s.engine = engine;
        }
        self.apply_transcription(s, by);
        Ok(self.captions())
    }

    /// New transcription settings (from a participant, the app or a settings update).
    fn apply_transcription(
        &mut self,
        s: crate::domain::TranscriptionSettings,
        by: Option<ParticipantId>,
    ) {
        let before = self.settings.transcription;
        if before == s {
            return;
        }
        self.settings.transcription = s;
        self.captions_by = by;
        if let Some(record) = self.node.registry.get(&self.id) {
            record.settings.store(self.settings);
        }
        let state = self.captions();
        if s.enabled && !before.enabled {
            self.node.transcription.warm(state.engine);
        }
        for t in self.transcribers.values() {
            let _ = t.send_message(TranscriberMsg::Settings {
                language: state.language,
                engine: state.engine,
            });
        }
        tracing::info!(meeting = %self.id, enabled = s.enabled, language = %state.language,
            engine = state.engine.as_str(), "captions changed");
        self.announced_unavailable = state.unavailable.clone();
        for member in self.members.values() {
            member.signal.send(ServerSignal::Captions(state.clone()));
        }
        self.node
            .events
            .append(&self.id, EventKind::CaptionsChanged(state));
        self.transcribers_dirty = true;
    }

    /// Tells everyone when the engine became unavailable or available again while captions
    /// are on (a worker that cannot load its model, a model installed meanwhile).
    fn refresh_captions(&mut self) {
        if !self.settings.transcription.enabled {
            return;
        }
        let state = self.captions();
        if state.unavailable == self.announced_unavailable {
            return;
        }
        self.announced_unavailable = state.unavailable.clone();
        for member in self.members.values() {
            member.signal.send(ServerSignal::Captions(state.clone()));
        }
    }

    /// A transcriber's result: to every participant; a final one also to the event stream,
    /// the database and webhooks.
    fn on_transcript(&mut self, t: Transcript) {
        if !self.settings.transcription.enabled && !t.is_final {
            return;
        }
        for member in self.members.values() {
            if !member.is_virtual {
                member.signal.send(ServerSignal::Transcript(t.clone()));
            }
        }
        if !t.is_final || t.text.is_empty() {
            return;
        }
        if let Some(billing) = &self.node.billing {
            let started_ms = self
                .started_at
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0);
            billing.record_transcript(crate::billing::store::TranscriptRow {
                segment_id: t.segment.clone(),
                node: billing.node_id.clone(),
                api_key: self.tenant(),
                meeting: self.id.to_string(),
                meeting_started_ms: started_ms,
                participant: t.participant.to_string(),
                identity: t.identity.clone(),
                name: t.name.clone(),
                track: t.track.to_string(),
                language: t.language.to_string(),
                start_ms: t.start_ms as i64,
                end_ms: t.end_ms as i64,
                text: t.text.clone(),
                created_ms: crate::billing::store::now_ms(),
            });
        }
        self.node.events.append(&self.id, EventKind::Transcript(t));
    }

    /// The API key the meeting is billed to.
    fn tenant(&self) -> String {
        self.node
            .registry
            .get(&self.id)
            .map(|r| r.tenant.clone())
            .unwrap_or_default()
    }

    /// Starts a transcriber for every audio track that should have one, stops the others.
    async fn sync_transcribers(&mut self, myself: &ActorRef<MeetingMsg>) {
        self.transcribers_dirty = false;
        let enabled = self.settings.transcription.enabled;
        let wanted: Vec<TrackId> = if enabled {
            self.tracks
                .values()
                .filter(|t| {
                    t.published.info.kind == hearth_engine::media::MediaKind::Audio
                        && t.published
                            .info
                            .mime_type
                            .eq_ignore_ascii_case("audio/opus")
                })
                .map(|t| t.published.info.id.clone())
                .collect()
        } else {
            Vec::new()
        };
        let stale: Vec<TrackId> = self
            .transcribers
            .keys()
            .filter(|k| !wanted.contains(k))
            .cloned()
            .collect();
        for track in stale {
            if let Some(t) = self.transcribers.remove(&track) {
                t.stop(Some("captions_off".into()));
            }
        }
        let captions = self.captions();
        for track in wanted {
            if self.transcribers.contains_key(&track) {
                continue;
            }
            let (restarts, last_failure) = match self.transcriber_restarts.get(&track) {
                // A transcriber failing over and over for one track stops being restarted
                // (for a minute): its track stays untranscribed, the meeting goes on.
                Some((n, since, _)) if *n > 5 && since.elapsed().as_secs() < 60 => {
                    let left = std::time::Duration::from_secs(60).saturating_sub(since.elapsed());
                    myself.send_after(left, || MeetingMsg::ResyncTranscribers);
                    continue;
                }
                Some((n, _, why)) => (*n, why.clone()),
                None => (0, None),
            };
            if let Err(e) = self
                .start_transcriber(myself, &track, &captions, restarts, last_failure)
                .await
            {
                tracing::warn!(meeting = %self.id, %track, error = %e, "cannot start a transcriber");
            }
        }
    }

    async fn start_transcriber(
        &mut self,
        myself: &ActorRef<MeetingMsg>,
        track: &TrackId,
        captions: &CaptionsState,
        restarts: u32,
        last_failure: Option<String>,
    ) -> Result<(), ApiError> {
        let queue = self.node.transcription.config.queue;
        let tap = self.tap_with(myself, track, queue, true).await?;
        let Some(member) = self.members.get(&tap.publisher) else {
            tap.actor.stop(None);
            return Err(ApiError::NotFound(format!("publisher of {track}")));
        };
        // Metered while the engine can transcribe (not while, say, the model is missing).
        let who = member.usage.interval().who.clone();
        let meter = if captions.unavailable.is_none() {
            self.node.usage.clone()
        } else {
            crate::billing::UsageMeter::disabled()
        };
        let usage = meter.open(IntervalKind::Transcription, who, track.as_str());
        let args = TranscriberArgs {
            meeting: myself.clone(),
            transcription: Arc::clone(&self.node.transcription),
            actors: Arc::clone(&self.node.actors),
            parent: myself.get_id(),
            track: track.clone(),
            participant: tap.publisher.clone(),
            identity: member.info.identity.clone(),
            name: member.info.name.clone(),
            language: captions.language,
            engine: captions.engine,
            meeting_started: self.started_at,
            packets: tap.packets,
            tap_dropped: tap.dropped,
            tap_actor: tap.actor.clone(),
            restarts,
            last_failure,
            usage,
        };
        match Actor::spawn_linked(None, Transcriber, args, myself.get_cell()).await {
            Ok((actor, _)) => {
                self.transcriber_actors
                    .insert(actor.get_id(), track.clone());
                self.transcribers.insert(track.clone(), actor);
                if restarts > 0 {
                    metrics::counter!("hearth_actor_restarts_total", "kind" => "transcriber")
                        .increment(1);
                }
                Ok(())
            }
            Err(e) => {
                tap.actor.stop(None);
                Err(ApiError::Internal(format!(
                    "cannot start the transcriber: {e}"
                )))
            }
        }
    }

    /// Mutes or unmutes a track for everyone (API): while muted its fan-out list is empty.
    fn server_mute(
        &mut self,
        participant: &ParticipantId,
        track: &TrackId,
        muted: bool,
    ) -> Result<TrackInfo, ApiError> {
        let Some(t) = self.tracks.get_mut(track) else {
            return Err(ApiError::NotFound(format!("track {track}")));
        };
        if &t.published.publisher != participant {
            return Err(ApiError::NotFound(format!(
                "track {track} of participant {participant}"
            )));
        }
        if t.server_muted == muted {
            return Ok(t.published.info.clone());
        }
        t.server_muted = muted;
        self.announce_muted(participant, track, muted);
        self.rebuild_fanout(track);
        self.tracks
            .get(track)
            .map(|t| t.published.info.clone())
            .ok_or_else(|| ApiError::NotFound(format!("track {track}")))
    }

    /// Changes a participant's publish and subscribe rights (API).
    /// Delivers `message` to `to` (everyone when empty; virtual participants have no
    /// signaling and are skipped). Nothing is sent if a named participant is unknown.
    /// The app's metadata of this meeting (kept in its record across restarts).
    fn metadata(&self) -> String {
        self.node
            .registry
            .get(&self.id)
            .map(|r| r.metadata.get())
            .unwrap_or_default()
    }

    fn relay_data(&mut self, from: ParticipantId, label: String, binary: bool, data: &[u8]) {
        let Some(sender) = self.members.get(&from) else {
            return;
        };
        let receivers = self
            .members
            .values()
            .filter(|m| m.info.id != from && m.data_labels.contains(&label))
            .count();
        if receivers == 0 {
            return;
        }
        if !self.data_budget.allow(std::time::Instant::now(), receivers) {
            metrics::counter!("hearth_data_dropped_total", "reason" => "meeting_rate")
                .increment(receivers as u64);
            return;
        }
        let envelope = crate::data::envelope(
            &from,
            &sender.info.identity,
            &sender.info.name,
            binary,
            data,
        );
        if envelope.len() > crate::data::MAX_ENVELOPE_BYTES {
            metrics::counter!("hearth_data_dropped_total", "reason" => "too_large").increment(1);
            return;
        }
        let message = crate::data::DataMessage {
            from,
            label,
            binary,
            envelope,
        };
        for member in self.members.values() {
            if member.info.id != message.from && member.data_labels.contains(&message.label) {
                let _ = member
                    .actor
                    .send_message(ParticipantMsg::Data(Box::new(message.clone())));
            }
        }
    }

    fn send_app_message(
        &self,
        message: crate::domain::AppMessage,
        to: &[ParticipantId],
    ) -> Result<usize, ParticipantId> {
        if let Some(unknown) = to.iter().find(|p| !self.members.contains_key(*p)) {
            return Err(unknown.clone());
        }
        let mut delivered = 0;
        for member in self.members.values().filter(|m| !m.is_virtual) {
            if to.is_empty() || to.contains(&member.info.id) {
                member
                    .signal
                    .send(ServerSignal::AppMessage(message.clone()));
                // And on the participant's app channel, if it opened one.
                let app = ParticipantId::from_string("");
                let data = crate::data::DataMessage {
                    envelope: crate::data::envelope(
                        &app,
                        "",
                        &message.from,
                        false,
                        message.text.as_bytes(),
                    ),
                    from: app,
                    label: crate::data::APP_LABEL.to_owned(),
                    binary: false,
                };
                let _ = member
                    .actor
                    .send_message(ParticipantMsg::Data(Box::new(data)));
                delivered += 1;
            }
        }
        Ok(delivered)
    }

    fn update_permissions(
        &mut self,
        participant: &ParticipantId,
        publish: bool,
        subscribe: bool,
    ) -> Result<MemberView, ApiError> {
        let Some(member) = self.members.get_mut(participant) else {
            return Err(ApiError::NotFound(format!("participant {participant}")));
        };
        if member.is_virtual && subscribe {
            return Err(ApiError::Invalid(
                "a virtual participant cannot subscribe".into(),
            ));
        }
        let was = member.grants;
        member.grants.publish = publish;
        member.grants.subscribe = subscribe;
        let _ = member
            .actor
            .send_message(ParticipantMsg::SetCanPublish(publish));
        if was.publish && !publish {
            let theirs: Vec<TrackId> = self
                .tracks
                .values()
                .filter(|t| &t.published.publisher == participant)
                .map(|t| t.published.info.id.clone())
                .collect();
            for track in theirs {
                self.track_unpublished(participant, &track);
            }
        }
        if was.subscribe != subscribe {
            let others: Vec<TrackId> = self
                .tracks
                .values()
                .filter(|t| &t.published.publisher != participant)
                .map(|t| t.published.info.id.clone())
                .collect();
            for track in others {
                if let (Some(t), Some(member)) =
                    (self.tracks.get(&track), self.members.get(participant))
                    && (!subscribe || member.receives(&t.published))
                {
                    let msg = if subscribe {
                        ParticipantMsg::Subscribe(Box::new(t.published.clone()))
                    } else {
                        ParticipantMsg::Unsubscribe {
                            track: track.clone(),
                        }
                    };
                    let _ = member.actor.send_message(msg);
                }
                self.rebuild_fanout(&track);
            }
        }
        self.members
            .get(participant)
            .map(Member::view)
            .ok_or_else(|| ApiError::NotFound(format!("participant {participant}")))
    }

    /// Adds a virtual participant publishing one track (API).
    async fn join_virtual(
        &mut self,
        myself: &ActorRef<MeetingMsg>,
        request: JoinRequest,
        track: VirtualTrack,
    ) -> Result<VirtualPublisher, ApiError> {
        if self.ended {
            return Err(ApiError::NotFound(format!("meeting {}", self.id)));
        }
        if self.members.len() >= self.settings.max_participants {
            return Err(ApiError::Unavailable(format!(
                "the meeting has its maximum of {} participants",
                self.settings.max_participants
            )));
        }
        let id = ParticipantId::random();
        let key = TrackKey::next();
        let info = TrackInfo {
            id: crate::ids::TrackId::random(),
            kind: track.kind,
            mime_type: track.codec.mime_type.clone(),
            muted: false,
            mid: String::new(),
            source: TrackSource::Unknown,
        };
        let (events_tx, events_rx) = tokio::sync::mpsc::channel(16);
        let (link_tx, link_rx) = tokio::sync::oneshot::channel();
        let (ingress_tx, ingress_rx) = tokio::sync::oneshot::channel();
        let args = VirtualArgs {
            id: id.clone(),
            meeting: myself.clone(),
            role: VirtualRole::Publisher {
                key,
                track: info.id.clone(),
                kind: track.kind,
                events: events_tx,
            },
            media_queue: 1,
            actors: Arc::clone(&self.node.actors),
            parent: myself.get_id(),
            link: link_tx,
            ingress_link: Some(ingress_tx),
        };
        let (actor, _) = Actor::spawn_linked(None, VirtualParticipant, args, myself.get_cell())
            .await
            .map_err(|e| ApiError::Internal(format!("cannot start the participant: {e}")))?;
        let media = link_rx
            .await
            .map_err(|_| ApiError::Internal("participant started without media".into()))?;
        let packets = ingress_rx
            .await
            .map_err(|_| ApiError::Internal("participant started without ingress".into()))?;
        // Nobody reads a virtual participant's signaling.
        let (signal, _) = crate::signal::signal_channel(1);
        let participant = ParticipantInfo {
            id: id.clone(),
            identity: request.identity.clone(),
            name: request.name,
            tracks: Vec::new(),
            joined_at: SystemTime::now(),
        };
        for other in self.members.values() {
            other
                .signal
                .send(ServerSignal::ParticipantJoined(participant.clone()));
        }
        self.by_actor.insert(actor.get_id(), id.clone());
        self.members.insert(
            id.clone(),
            Member {
                info: participant.clone(),
                grants: Grants {
                    join: true,
                    publish: true,
                    subscribe: false,
                    create: false,
                    admin: false,
                    captions: false,
                },
                token_expires_at: None,
                is_virtual: true,
                actor: actor.clone(),
                signal,
                media,
                usage: self.node.usage.open(
                    IntervalKind::Participant,
                    Attribution {
                        api_key: request.tenant.clone(),
                        meeting: self.id.to_string(),
                        participant: id.to_string(),
                        identity: request.identity.clone(),
                    },
                    id.as_str(),
                ),
                receive: None,
                data_labels: Vec::new(),
            },
        );
        self.node
            .events
            .append(&self.id, EventKind::ParticipantJoined(participant));
        self.empty_since = None;
        self.track_published(id.clone(), key, info.clone(), track.codec);
        tracing::info!(meeting = %self.id, participant = %id, track = %info.id, "virtual participant joined");
        Ok(VirtualPublisher {
            participant: id,
            track: info,
            actor,
            packets,
            events: events_rx,
        })
    }

    /// Starts a copy of a track's packets for the API.
    async fn tap(
        &mut self,
        myself: &ActorRef<MeetingMsg>,
        track: &TrackId,
        queue: usize,
    ) -> Result<TapStart, ApiError> {
        self.tap_with(myself, track, queue, false).await
    }

    /// A tap; `with_level`: packets carry the publisher's audio level (transcribers).
    async fn tap_with(
        &mut self,
        myself: &ActorRef<MeetingMsg>,
        track: &TrackId,
        queue: usize,
        with_level: bool,
    ) -> Result<TapStart, ApiError> {
        let Some(t) = self.tracks.get(track) else {
            return Err(ApiError::NotFound(format!("track {track}")));
        };
        let published = t.published.clone();
        let (out, packets) = tokio::sync::mpsc::channel(queue.max(1));
        let dropped = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (link_tx, link_rx) = tokio::sync::oneshot::channel();
        let args = VirtualArgs {
            id: ParticipantId::random(),
            meeting: myself.clone(),
            role: VirtualRole::Tap(TapArgs {
                track: track.clone(),
                out,
                dropped: Arc::clone(&dropped),
                with_level,
            }),
            media_queue: self.node.config.media_queue,
            actors: Arc::clone(&self.node.actors),
            parent: myself.get_id(),
            link: link_tx,
            ingress_link: None,
        };
        let (actor, _) = Actor::spawn_linked(None, VirtualParticipant, args, myself.get_cell())
            .await
            .map_err(|e| ApiError::Internal(format!("cannot start the tap: {e}")))?;
        let media = link_rx
            .await
            .map_err(|_| ApiError::Internal("tap started without media".into()))?;
        self.tap_actors.insert(actor.get_id(), track.clone());
        self.taps.entry(track.clone()).or_default().push(Tap {
            actor: actor.clone(),
            link: SubscriberLink {
                participant: ParticipantId::random(),
                media,
            },
        });
        self.rebuild_fanout(track);
        Ok(TapStart {
            track: published.info,
            publisher: published.publisher,
            codec: published.codec,
            packets,
            dropped,
            actor,
        })
    }

    fn remove_tap(&mut self, track: &TrackId, actor: ActorId) {
        if let Some(taps) = self.taps.get_mut(track) {
            taps.retain(|t| t.actor.get_id() != actor);
            if taps.is_empty() {
                self.taps.remove(track);
            }
            self.rebuild_fanout(track);
        }
    }

    /// The track is gone: its taps end (their readers see the stream finish).
    fn stop_taps(&mut self, track: &TrackId) {
        if let Some(taps) = self.taps.remove(track) {
            for tap in taps {
                self.tap_actors.remove(&tap.actor.get_id());
                tap.actor.stop(Some("track_ended".into()));
            }
        }
    }

    fn arm(&self, now: Instant) {
        if self.ended {
            return;
        }
        let mut next = if self.members.is_empty() {
            self.empty_since
                .map(|s| s + self.settings.empty_timeout)
                .unwrap_or(now + self.settings.empty_timeout)
        } else {
            self.speakers.poll_timeout()
        };
        if next < now {
            next = now;
        }
        self.wakeup.arm(next);
    }
}
