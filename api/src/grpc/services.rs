//! MeetingService, ParticipantService, TokenService and EventService.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::Stream;
use hearth_actors::{Grants, MeetingSettings, ParticipantId, TrackId};
use hearth_proto::v1 as pb;
use tokio::sync::broadcast::error::RecvError;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{authorize, authorize_meeting, convert, meeting_id, status};
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
    }
    Ok(out)
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

#[tonic::async_trait]
impl pb::meeting_service_server::MeetingService for Meetings {
    async fn create(
        &self,
        request: Request<pb::CreateMeetingRequest>,
    ) -> Result<Response<pb::Meeting>, Status> {
        let id = authorize_meeting(&self.0, &request, "id", &request.get_ref().id)?;
        let req = request.into_inner();
        let settings = merge_settings(self.0.node.default_settings(), req.settings.as_ref())?;
        let snapshot = self
            .0
            .node
            .create_meeting(&id, settings)
            .await
            .map_err(status)?;
        Ok(Response::new(convert::meeting(&snapshot, true)))
    }

    async fn get(
        &self,
        request: Request<pb::GetMeetingRequest>,
    ) -> Result<Response<pb::Meeting>, Status> {
        let id = authorize_meeting(&self.0, &request, "id", &request.get_ref().id)?;
        let snapshot = self
            .0
            .node
            .meeting(&id)
            .await
            .ok_or_else(|| Status::not_found(format!("meeting {id} not found")))?;
        Ok(Response::new(convert::meeting(&snapshot, true)))
    }

    async fn list(
        &self,
        request: Request<pb::ListMeetingsRequest>,
    ) -> Result<Response<pb::ListMeetingsResponse>, Status> {
        let caller = authorize(&self.0, &request)?;
        let meetings = self
            .0
            .node
            .meetings()
            .await
            .iter()
            .filter(|m| caller.may_manage(m.id.as_str()).is_ok())
            .map(|m| convert::meeting(m, false))
            .collect();
        Ok(Response::new(pb::ListMeetingsResponse { meetings }))
    }

    async fn end(
        &self,
        request: Request<pb::EndMeetingRequest>,
    ) -> Result<Response<pb::EndMeetingResponse>, Status> {
        let id = authorize_meeting(&self.0, &request, "id", &request.get_ref().id)?;
        let n = self.0.node.end_meeting(&id).await.map_err(status)?;
        Ok(Response::new(pb::EndMeetingResponse {
            participants: u32::try_from(n).unwrap_or(u32::MAX),
        }))
    }

    async fn update(
        &self,
        request: Request<pb::UpdateMeetingRequest>,
    ) -> Result<Response<pb::Meeting>, Status> {
        let id = authorize_meeting(&self.0, &request, "id", &request.get_ref().id)?;
        let req = request.into_inner();
        // Validate with the same rules as Create; zero keeps the current value.
        let s = req.settings.unwrap_or_default();
        merge_settings(self.0.node.default_settings(), Some(&s))?;
        self.0
            .node
            .update_meeting(
                &id,
                (s.max_participants > 0).then_some(s.max_participants as usize),
                (s.empty_timeout_seconds > 0)
                    .then(|| Duration::from_secs(u64::from(s.empty_timeout_seconds))),
            )
            .await
            .map_err(status)?;
        let snapshot = self
            .0
            .node
            .meeting(&id)
            .await
            .ok_or_else(|| Status::not_found(format!("meeting {id} not found")))?;
        Ok(Response::new(convert::meeting(&snapshot, true)))
    }
}

#[tonic::async_trait]
impl pb::participant_service_server::ParticipantService for Participants {
    async fn list(
        &self,
        request: Request<pb::ListParticipantsRequest>,
    ) -> Result<Response<pb::ListParticipantsResponse>, Status> {
        let id = authorize_meeting(&self.0, &request, "meeting", &request.get_ref().meeting)?;
        let snapshot = self
            .0
            .node
            .meeting(&id)
            .await
            .ok_or_else(|| Status::not_found(format!("meeting {id} not found")))?;
        Ok(Response::new(pb::ListParticipantsResponse {
            participants: snapshot
                .participants
                .iter()
                .map(convert::participant)
                .collect(),
        }))
    }

    async fn get(
        &self,
        request: Request<pb::ParticipantRequest>,
    ) -> Result<Response<pb::Participant>, Status> {
        let meeting = authorize_meeting(&self.0, &request, "meeting", &request.get_ref().meeting)?;
        let req = request.into_inner();
        let pid = participant_id(&req.participant_id)?;
        let view = self
            .0
            .node
            .participant(&meeting, &pid)
            .await
            .map_err(status)?;
        Ok(Response::new(convert::participant(&view)))
    }

    async fn remove(
        &self,
        request: Request<pb::ParticipantRequest>,
    ) -> Result<Response<pb::RemoveParticipantResponse>, Status> {
        let meeting = authorize_meeting(&self.0, &request, "meeting", &request.get_ref().meeting)?;
        let req = request.into_inner();
        let pid = participant_id(&req.participant_id)?;
        self.0
            .node
            .remove_participant(&meeting, &pid)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RemoveParticipantResponse {}))
    }

    async fn mute_track(
        &self,
        request: Request<pb::MuteTrackRequest>,
    ) -> Result<Response<pb::Track>, Status> {
        let meeting = authorize_meeting(&self.0, &request, "meeting", &request.get_ref().meeting)?;
        let req = request.into_inner();
        let pid = participant_id(&req.participant_id)?;
        let track = track_id(&req.track_id)?;
        let info = self
            .0
            .node
            .mute_track(&meeting, &pid, &track, req.muted)
            .await
            .map_err(status)?;
        Ok(Response::new(convert::track(pid.as_str(), &info)))
    }

    async fn update_permissions(
        &self,
        request: Request<pb::UpdatePermissionsRequest>,
    ) -> Result<Response<pb::Participant>, Status> {
        let meeting = authorize_meeting(&self.0, &request, "meeting", &request.get_ref().meeting)?;
        let req = request.into_inner();
        let pid = participant_id(&req.participant_id)?;
        let perms = req
            .permissions
            .ok_or_else(|| Status::invalid_argument("permissions: required"))?;
        let view = self
            .0
            .node
            .update_permissions(&meeting, &pid, perms.publish, perms.subscribe)
            .await
            .map_err(status)?;
        Ok(Response::new(convert::participant(&view)))
    }
}

#[tonic::async_trait]
impl pb::token_service_server::TokenService for Tokens {
    async fn mint(
        &self,
        request: Request<pb::MintTokenRequest>,
    ) -> Result<Response<pb::MintTokenResponse>, Status> {
        let caller = authorize(&self.0, &request)?;
        let req = request.into_inner();
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
        let secret = self
            .0
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
        Ok(Response::new(pb::MintTokenResponse {
            token: token::mint(&claims, secret),
            expires_at: Some(convert::timestamp(expires_at)),
        }))
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
