//! MeetingService, ParticipantService, TokenService and EventService, and the operations
//! behind them that the REST API ([`crate::rest`]) calls too.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::Stream;
use hearth_actors::{Grants, MeetingId, MeetingSettings, ParticipantId, TrackId};
use hearth_proto::v1 as pb;
use tokio::sync::broadcast::error::RecvError;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{Caller, authorize, authorize_meeting_caller, convert, forward, meeting_id, status};
use crate::server::AppState;
use crate::token;

pub type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

pub struct Meetings(pub Arc<AppState>);
pub struct Participants(pub Arc<AppState>);
pub struct Tokens(pub Arc<AppState>);
pub struct Events(pub Arc<AppState>);

fn merge_settings(
    base: MeetingSettings,
    s: Option<&pb::MeetingSettings>,
) -> Result<MeetingSettings, Status> {
    let mut out = base;
    if let Some(s) = s {
        if s.max_participants > 10_000 {
            return Err(Status::invalid_argument(
                "settings.max_participants: at most 10000",
            ));
        }
        if s.empty_timeout_seconds > 24 * 3600 {
            return Err(Status::invalid_argument(
                "settings.empty_timeout_seconds: at most one day",
            ));
        }
        if s.max_participants > 0 {
            out.max_participants = s.max_participants as usize;
        }
        if s.empty_timeout_seconds > 0 {
            out.empty_timeout = Duration::from_secs(u64::from(s.empty_timeout_seconds));
        }
        if let Some(t) = &s.transcription {
            out.transcription = transcription_settings(t)?;
        }
    }
    Ok(out)
}

/// Validates the wire's transcription settings.
pub fn transcription_settings(
    t: &pb::TranscriptionSettings,
) -> Result<hearth_actors::TranscriptionSettings, Status> {
    let language = if t.language.is_empty() {
        None
    } else {
        Some(hearth_actors::Language::parse(&t.language).ok_or_else(|| {
            Status::invalid_argument(
                "settings.transcription.language: an ISO 639-1 code such as \"en\" (optionally with a region, \"pt-BR\")",
            )
        })?)
    };
    let engine = if t.engine.is_empty() {
        None
    } else {
        Some(hearth_actors::EngineKind::parse(&t.engine).ok_or_else(|| {
            Status::invalid_argument(
                "settings.transcription.engine: one of \"embedded\", \"openai\", \"streaming\"",
            )
        })?)
    };
    Ok(hearth_actors::TranscriptionSettings {
        enabled: t.enabled,
        language,
        engine,
    })
}

fn participant_id(value: &str) -> Result<ParticipantId, Status> {
    if value.is_empty() || value.len() > 64 {
        return Err(Status::invalid_argument(
            "participant_id: 1 to 64 characters",
        ));
    }
    Ok(ParticipantId::from_string(value))
}

fn track_id(value: &str) -> Result<TrackId, Status> {
    if value.is_empty() || value.len() > 64 {
        return Err(Status::invalid_argument("track_id: 1 to 64 characters"));
    }
    Ok(TrackId::from_string(value))
}

// ----- Operations shared by the gRPC services and the REST API ------------------------------
//
// Both gateways authorize the caller, then call these: one implementation of each operation
// (validation, the node call, the answer as a `hearth.v1` message).

/// Starts an empty meeting.
pub async fn create_meeting(
    state: &AppState,
    caller: &Caller,
    id: &MeetingId,
    settings: Option<&pb::MeetingSettings>,
    metadata: &str,
) -> Result<pb::Meeting, Status> {
    let merged = merge_settings(state.node.default_settings(), settings)?;
    if let Some(owner) = forward::place_new(state, caller, id).await? {
        let request = owner.request(pb::CreateMeetingRequest {
            id: id.to_string(),
            settings: settings.cloned(),
            metadata: metadata.to_owned(),
        });
        return forward::answer(owner.meetings().create(request).await);
    }
    let tenant = caller.claims.iss.as_str();
    let settings = merged;
    let snapshot = state
        .node
        .create_meeting(id, tenant, settings, metadata.to_owned())
        .await
        .map_err(status)?;
    Ok(convert::meeting(&snapshot, true))
}

/// One meeting with its participants.
pub async fn get_meeting(
    state: &AppState,
    caller: &Caller,
    id: &MeetingId,
) -> Result<pb::Meeting, Status> {
    if let Some(owner) = forward::owner_of(state, caller, id).await? {
        let request = owner.request(pb::GetMeetingRequest { id: id.to_string() });
        return forward::answer(owner.meetings().get(request).await);
    }
    let snapshot = state
        .node
        .meeting(id)
        .await
        .ok_or_else(|| Status::not_found(format!("meeting {id} not found")))?;
    Ok(convert::meeting(&snapshot, true))
}

/// The live meetings in the caller's scope, sorted by name, without their participants: at
/// most `limit` of them after `after`; the flag says whether more follow.
pub async fn list_meetings(
    state: &AppState,
    caller: &Caller,
    after: Option<&MeetingId>,
    limit: usize,
) -> (Vec<pb::Meeting>, bool) {
    let mut ids: Vec<MeetingId> = state
        .node
        .meeting_ids()
        .into_iter()
        .filter(|id| after.is_none_or(|a| id > a))
        .filter(|id| caller.may_manage(id.as_str()).is_ok())
        .collect();
    ids.sort();
    let mut out = Vec::with_capacity(limit.min(ids.len()));
    let mut more = false;
    for id in ids {
        if out.len() == limit {
            more = true;
            break;
        }
        // A meeting that ended since the ids were read is skipped.
        if let Some(snapshot) = state.node.meeting(&id).await {
            out.push(convert::meeting(&snapshot, false));
        }
    }
    // In a cluster, the other nodes' meetings too (each asked once, at the same time).
    let others = forward::other_nodes(state, caller);
    if others.is_empty() {
        return (out, more);
    }
    let answers = futures::future::join_all(others.iter().map(|node| async move {
        let request = node.request(pb::ListMeetingsRequest {});
        (node, node.meetings().list(request).await)
    }))
    .await;
    for (node, answer) in answers {
        match answer {
            Ok(list) => out.extend(
                list.into_inner()
                    .meetings
                    .into_iter()
                    .filter(|m| after.is_none_or(|a| m.id.as_str() > a.as_str())),
            ),
            Err(e) => {
                metrics::counter!("hearth_cluster_list_failures_total").increment(1);
                tracing::warn!(node = %node.node_id, error = %e, "a node did not give its meetings; the list lacks them");
            }
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out.dedup_by(|a, b| a.id == b.id);
    if out.len() > limit {
        out.truncate(limit);
        more = true;
    }
    (out, more)
}

/// Ends a meeting now; returns how many participants it had.
pub async fn end_meeting(state: &AppState, caller: &Caller, id: &MeetingId) -> Result<u32, Status> {
    if let Some(owner) = forward::owner_of(state, caller, id).await? {
        let request = owner.request(pb::EndMeetingRequest { id: id.to_string() });
        return forward::answer(owner.meetings().end(request).await).map(|r| r.participants);
    }
    let n = state.node.end_meeting(id).await.map_err(status)?;
    Ok(u32::try_from(n).unwrap_or(u32::MAX))
}

/// Changes a live meeting's settings (zero fields keep their current value) and, when
/// given, its metadata.
pub async fn update_meeting(
    state: &AppState,
    caller: &Caller,
    id: &MeetingId,
    settings: Option<&pb::MeetingSettings>,
    metadata: Option<&str>,
) -> Result<pb::Meeting, Status> {
    if let Some(owner) = forward::owner_of(state, caller, id).await? {
        let request = owner.request(pb::UpdateMeetingRequest {
            id: id.to_string(),
            settings: settings.cloned(),
            metadata: metadata.map(str::to_owned),
        });
        return forward::answer(owner.meetings().update(request).await);
    }
    // Validate with the same rules as Create; zero keeps the current value.
    let s = settings.cloned().unwrap_or_default();
    merge_settings(state.node.default_settings(), Some(&s))?;
    let transcription = s
        .transcription
        .as_ref()
        .map(transcription_settings)
        .transpose()?;
    state
        .node
        .update_meeting(
            id,
            (s.max_participants > 0).then_some(s.max_participants as usize),
            (s.empty_timeout_seconds > 0)
                .then(|| Duration::from_secs(u64::from(s.empty_timeout_seconds))),
            transcription,
            metadata.map(str::to_owned),
        )
        .await
        .map_err(status)?;
    get_meeting(state, caller, id).await
}

/// Sends an app message to a meeting's participants (all, or the named ones).
pub async fn send_message(
    state: &AppState,
    caller: &Caller,
    meeting: &MeetingId,
    text: &str,
    from: &str,
    to: &[String],
) -> Result<pb::SendMessageResponse, Status> {
    if let Some(owner) = forward::owner_of(state, caller, meeting).await? {
        let request = owner.request(pb::SendMessageRequest {
            meeting: meeting.to_string(),
            text: text.to_owned(),
            from: from.to_owned(),
            participant_ids: to.to_vec(),
        });
        return forward::answer(owner.meetings().send_message(request).await);
    }
    let to = to
        .iter()
        .map(|p| participant_id(p))
        .collect::<Result<Vec<_>, _>>()?;
    let (message, delivered) = state
        .node
        .send_message(meeting, text, from, to)
        .await
        .map_err(status)?;
    Ok(pb::SendMessageResponse {
        id: message.id,
        delivered: u32::try_from(delivered).unwrap_or(u32::MAX),
    })
}

/// Everyone in a meeting, in join order.
pub async fn list_participants(
    state: &AppState,
    caller: &Caller,
    meeting: &MeetingId,
) -> Result<Vec<pb::Participant>, Status> {
    if let Some(owner) = forward::owner_of(state, caller, meeting).await? {
        let request = owner.request(pb::ListParticipantsRequest {
            meeting: meeting.to_string(),
        });
        return forward::answer(owner.participants().list(request).await).map(|r| r.participants);
    }
    let snapshot = state
        .node
        .meeting(meeting)
        .await
        .ok_or_else(|| Status::not_found(format!("meeting {meeting} not found")))?;
    Ok(snapshot
        .participants
        .iter()
        .map(convert::participant)
        .collect())
}

/// One participant.
pub async fn get_participant(
    state: &AppState,
    caller: &Caller,
    meeting: &MeetingId,
    participant: &str,
) -> Result<pb::Participant, Status> {
    if let Some(owner) = forward::owner_of(state, caller, meeting).await? {
        let request = owner.request(pb::ParticipantRequest {
            meeting: meeting.to_string(),
            participant_id: participant.to_owned(),
        });
        return forward::answer(owner.participants().get(request).await);
    }
    let pid = participant_id(participant)?;
    let view = state
        .node
        .participant(meeting, &pid)
        .await
        .map_err(status)?;
    Ok(convert::participant(&view))
}

/// Removes a participant (it is told so and disconnected).
pub async fn remove_participant(
    state: &AppState,
    caller: &Caller,
    meeting: &MeetingId,
    participant: &str,
) -> Result<(), Status> {
    if let Some(owner) = forward::owner_of(state, caller, meeting).await? {
        let request = owner.request(pb::ParticipantRequest {
            meeting: meeting.to_string(),
            participant_id: participant.to_owned(),
        });
        return forward::answer(owner.participants().remove(request).await).map(|_| ());
    }
    let pid = participant_id(participant)?;
    state
        .node
        .remove_participant(meeting, &pid)
        .await
        .map_err(status)
}

/// Mutes or unmutes one of a participant's tracks for everyone.
pub async fn mute_track(
    state: &AppState,
    caller: &Caller,
    meeting: &MeetingId,
    participant: &str,
    track: &str,
    muted: bool,
) -> Result<pb::Track, Status> {
    if let Some(owner) = forward::owner_of(state, caller, meeting).await? {
        let request = owner.request(pb::MuteTrackRequest {
            meeting: meeting.to_string(),
            participant_id: participant.to_owned(),
            track_id: track.to_owned(),
            muted,
        });
        return forward::answer(owner.participants().mute_track(request).await);
    }
    let pid = participant_id(participant)?;
    let track = track_id(track)?;
    let info = state
        .node
        .mute_track(meeting, &pid, &track, muted)
        .await
        .map_err(status)?;
    Ok(convert::track(pid.as_str(), &info))
}

/// Changes what a participant may do (both permissions are applied).
pub async fn update_permissions(
    state: &AppState,
    caller: &Caller,
    meeting: &MeetingId,
    participant: &str,
    permissions: Option<pb::Permissions>,
) -> Result<pb::Participant, Status> {
    if let Some(owner) = forward::owner_of(state, caller, meeting).await? {
        let request = owner.request(pb::UpdatePermissionsRequest {
            meeting: meeting.to_string(),
            participant_id: participant.to_owned(),
            permissions,
        });
        return forward::answer(owner.participants().update_permissions(request).await);
    }
    let pid = participant_id(participant)?;
    let perms = permissions.ok_or_else(|| Status::invalid_argument("permissions: required"))?;
    let view = state
        .node
        .update_permissions(meeting, &pid, perms.publish, perms.subscribe)
        .await
        .map_err(status)?;
    Ok(convert::participant(&view))
}

/// Mints an access token signed with the caller's API key.
pub fn mint_token(
    state: &AppState,
    caller: &Caller,
    req: &pb::MintTokenRequest,
) -> Result<pb::MintTokenResponse, Status> {
    if !req.meeting.is_empty() {
        meeting_id("meeting", &req.meeting)?;
    }
    caller.may_manage(&req.meeting)?;
    let grants = match req.grants {
        Some(g) => Grants {
            join: g.join,
            publish: g.publish,
            subscribe: g.subscribe,
            create: g.create,
            admin: g.admin,
            captions: g.captions,
        },
        None => Grants::default(),
    };
    if req.meeting.is_empty() && !grants.admin {
        return Err(Status::invalid_argument(
            "meeting: required unless the token is an admin token",
        ));
    }
    if req.identity.is_empty() || req.identity.len() > 256 {
        return Err(Status::invalid_argument("identity: 1 to 256 bytes"));
    }
    if req.name.len() > 256 {
        return Err(Status::invalid_argument("name: at most 256 bytes"));
    }
    let ttl = match req.ttl_seconds {
        0 => Duration::from_secs(3600),
        s => Duration::from_secs(u64::from(s)),
    };
    if ttl > MAX_TTL {
        return Err(Status::invalid_argument("ttl_seconds: at most 30 days"));
    }
    let secret = state
        .keys
        .secret(&caller.claims.iss)
        .ok_or_else(|| Status::unauthenticated("the token's API key is gone"))?;
    let now = SystemTime::now();
    let name = if req.name.is_empty() {
        req.identity.clone()
    } else {
        req.name.clone()
    };
    let mut claims = token::claims_for(
        &caller.claims.iss,
        &req.meeting,
        &req.identity,
        &name,
        grants,
        now,
        ttl,
    );
    // A minted token never outlives the token that minted it: otherwise a short-lived
    // admin token could mint itself a month-long successor.
    claims.exp = claims.exp.min(caller.claims.exp);
    let expires_at = UNIX_EPOCH + Duration::from_secs(claims.exp);
    Ok(pb::MintTokenResponse {
        token: token::mint(&claims, secret),
        expires_at: Some(convert::timestamp(expires_at)),
    })
}

// ----- The gRPC services ---------------------------------------------------------------------

#[tonic::async_trait]
impl pb::meeting_service_server::MeetingService for Meetings {
    async fn create(
        &self,
        request: Request<pb::CreateMeetingRequest>,
    ) -> Result<Response<pb::Meeting>, Status> {
        let (caller, id) =
            authorize_meeting_caller(&self.0, &request, "id", &request.get_ref().id)?;
        let req = request.into_inner();
        let meeting =
            create_meeting(&self.0, &caller, &id, req.settings.as_ref(), &req.metadata).await?;
        Ok(Response::new(meeting))
    }

    async fn get(
        &self,
        request: Request<pb::GetMeetingRequest>,
    ) -> Result<Response<pb::Meeting>, Status> {
        let (caller, id) =
            authorize_meeting_caller(&self.0, &request, "id", &request.get_ref().id)?;
        Ok(Response::new(get_meeting(&self.0, &caller, &id).await?))
    }

    async fn list(
        &self,
        request: Request<pb::ListMeetingsRequest>,
    ) -> Result<Response<pb::ListMeetingsResponse>, Status> {
        let caller = authorize(&self.0, &request)?;
        let (meetings, _) = list_meetings(&self.0, &caller, None, usize::MAX).await;
        Ok(Response::new(pb::ListMeetingsResponse { meetings }))
    }

    async fn end(
        &self,
        request: Request<pb::EndMeetingRequest>,
    ) -> Result<Response<pb::EndMeetingResponse>, Status> {
        let (caller, id) =
            authorize_meeting_caller(&self.0, &request, "id", &request.get_ref().id)?;
        let participants = end_meeting(&self.0, &caller, &id).await?;
        Ok(Response::new(pb::EndMeetingResponse { participants }))
    }

    async fn update(
        &self,
        request: Request<pb::UpdateMeetingRequest>,
    ) -> Result<Response<pb::Meeting>, Status> {
        let (caller, id) =
            authorize_meeting_caller(&self.0, &request, "id", &request.get_ref().id)?;
        let req = request.into_inner();
        let meeting = update_meeting(
            &self.0,
            &caller,
            &id,
            req.settings.as_ref(),
            req.metadata.as_deref(),
        )
        .await?;
        Ok(Response::new(meeting))
    }

    async fn send_message(
        &self,
        request: Request<pb::SendMessageRequest>,
    ) -> Result<Response<pb::SendMessageResponse>, Status> {
        let (caller, id) =
            authorize_meeting_caller(&self.0, &request, "meeting", &request.get_ref().meeting)?;
        let req = request.into_inner();
        let sent = send_message(
            &self.0,
            &caller,
            &id,
            &req.text,
            &req.from,
            &req.participant_ids,
        )
        .await?;
        Ok(Response::new(sent))
    }
}

#[tonic::async_trait]
impl pb::participant_service_server::ParticipantService for Participants {
    async fn list(
        &self,
        request: Request<pb::ListParticipantsRequest>,
    ) -> Result<Response<pb::ListParticipantsResponse>, Status> {
        let (caller, id) =
            authorize_meeting_caller(&self.0, &request, "meeting", &request.get_ref().meeting)?;
        Ok(Response::new(pb::ListParticipantsResponse {
            participants: list_participants(&self.0, &caller, &id).await?,
        }))
    }

    async fn get(
        &self,
        request: Request<pb::ParticipantRequest>,
    ) -> Result<Response<pb::Participant>, Status> {
        let (caller, meeting) =
            authorize_meeting_caller(&self.0, &request, "meeting", &request.get_ref().meeting)?;
        let req = request.into_inner();
        let participant = get_participant(&self.0, &caller, &meeting, &req.participant_id).await?;
        Ok(Response::new(participant))
    }

    async fn remove(
        &self,
        request: Request<pb::ParticipantRequest>,
    ) -> Result<Response<pb::RemoveParticipantResponse>, Status> {
        let (caller, meeting) =
            authorize_meeting_caller(&self.0, &request, "meeting", &request.get_ref().meeting)?;
        let req = request.into_inner();
        remove_participant(&self.0, &caller, &meeting, &req.participant_id).await?;
        Ok(Response::new(pb::RemoveParticipantResponse {}))
    }

    async fn mute_track(
        &self,
        request: Request<pb::MuteTrackRequest>,
    ) -> Result<Response<pb::Track>, Status> {
        let (caller, meeting) =
            authorize_meeting_caller(&self.0, &request, "meeting", &request.get_ref().meeting)?;
        let req = request.into_inner();
        let track = mute_track(
            &self.0,
            &caller,
            &meeting,
            &req.participant_id,
            &req.track_id,
            req.muted,
        )
        .await?;
        Ok(Response::new(track))
    }

    async fn update_permissions(
        &self,
        request: Request<pb::UpdatePermissionsRequest>,
    ) -> Result<Response<pb::Participant>, Status> {
        let (caller, meeting) =
            authorize_meeting_caller(&self.0, &request, "meeting", &request.get_ref().meeting)?;
        let req = request.into_inner();
        let participant = update_permissions(
            &self.0,
            &caller,
            &meeting,
            &req.participant_id,
            req.permissions,
        )
        .await?;
        Ok(Response::new(participant))
    }
}

#[tonic::async_trait]
impl pb::token_service_server::TokenService for Tokens {
    async fn mint(
        &self,
        request: Request<pb::MintTokenRequest>,
    ) -> Result<Response<pb::MintTokenResponse>, Status> {
        let caller = authorize(&self.0, &request)?;
        Ok(Response::new(mint_token(
            &self.0,
            &caller,
            request.get_ref(),
        )?))
    }
}

#[tonic::async_trait]
impl pb::event_service_server::EventService for Events {
    type SubscribeStream = BoxStream<pb::Event>;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeEventsRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let caller = authorize(&self.0, &request)?;
        let req = request.into_inner();
        let filter = if req.meeting.is_empty() {
            caller.node_wide()?;
            None
        } else {
            let id = meeting_id("meeting", &req.meeting)?;
            caller.may_manage(id.as_str())?;
            Some(id)
        };
        // One meeting's events, hosted elsewhere: the host's stream, passed through (its
        // sequence numbers are the host's; `resume_after` is too). Node-wide streams are
        // this node's own.
        if let Some(id) = &filter
            && let Some(owner) = forward::owner_of(&self.0, &caller, id).await?
        {
            let stream = owner
                .events()?
                .subscribe(owner.stream_request(req))
                .await?
                .into_inner();
            return Ok(Response::new(Box::pin(stream)));
        }
        use hearth_actors::events::{Refused, Start};
        let start = match (req.resume_after, req.from_oldest) {
            (0, true) => Start::Oldest,
            (0, false) => Start::New,
            (n, false) => Start::After(n),
            (_, true) => {
                return Err(Status::invalid_argument(
                    "resume_after and from_oldest exclude each other",
                ));
            }
        };
        let sub = self.0.node.events(start).map_err(|refused| match refused {
            Refused::Gone { oldest } => Status::out_of_range(format!(
                "events after {} are no longer kept; the oldest is {oldest}",
                req.resume_after
            )),
            Refused::Future { next } => Status::out_of_range(format!(
                "event {} does not exist yet; the next one will be {next}",
                req.resume_after
            )),
        })?;
        let resume_after = sub
            .replay
            .first()
            .map_or(req.resume_after, |e| e.sequence - 1);
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            let wanted = |e: &hearth_actors::events::NodeEvent| {
                filter.as_ref().is_none_or(|m| &e.meeting == m)
            };
            let mut last = resume_after;
            for event in sub.replay.iter().filter(|e| wanted(e)) {
                last = event.sequence;
                if tx.send(Ok(convert::event(event))).await.is_err() {
                    return;
                }
            }
            let mut live = sub.live;
            loop {
                tokio::select! {
                    _ = tx.closed() => return,
                    next = live.recv() => match next {
                        Ok(event) => {
                            // Speaker changes are live only and share the last retained
                            // event's number (see hearth_actors::events).
                            if event.kind.is_live_only() {
                                if wanted(&event) && tx.send(Ok(convert::event(&event))).await.is_err() {
                                    return;
                                }
                                continue;
                            }
                            if event.sequence <= last {
                                continue;
                            }
                            last = event.sequence;
                            if wanted(&event) && tx.send(Ok(convert::event(&event))).await.is_err() {
                                return;
                            }
                        }
                        Err(RecvError::Lagged(_)) => {
                            let _ = tx
                                .send(Err(Status::resource_exhausted(format!(
                                    "the reader fell behind; resume after sequence {last}"
                                ))))
                                .await;
                            return;
                        }
                        Err(RecvError::Closed) => return,
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
