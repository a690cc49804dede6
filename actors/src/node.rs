//! The node: configuration, the meeting registry, the top of the supervision tree, and the
//! [`Node`] handle the gateway uses.
//!
//! ```text
//! NodeSupervisor                 restarts MeetingSupervisor (one-for-one, counted)
//!  |- UdpMux drivers             media port, one socket per worker (SO_REUSEPORT)
//!  |- MeetingRegistry            DashMap: meeting id -> record (not an actor)
//!  `- MeetingSupervisor          creates meetings; restarts a failed one from its record
//!       `- MeetingActor          one per meeting
//!            `- ParticipantActor one per participant (stop and remove on failure)
//! ```

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use dashmap::DashMap;
use hearth_engine::speaker::SpeakerConfig;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::billing::webhook::{WebhookActor, WebhookMsg, Webhooks};
use crate::billing::{
    Attribution, Billing, BillingActor, BillingMsg, IntervalKind, UsageHandle, UsageMeter,
};
use crate::cluster::{Cluster, ClusterActor, ClusterMsg, Placement};
use crate::domain::{
    ApiError, EndReason, JoinAccepted, JoinRequest, MeetingSettings, SignalError, SignalErrorCode,
};
use crate::events::EventLog;
use crate::ids::{MeetingId, ParticipantId, TrackId};
use crate::meeting::{
    MeetingActor, MeetingArgs, MeetingMsg, MeetingSnapshot, MemberView, ParticipantHandle,
};
use crate::registry::{ActorKind, ActorRegistry, ActorSpec, Registration};
use crate::signal::SignalSender;
use crate::turn::listener::{self, FrontCounters};
use crate::turn::supervisor::{TurnSupervisor, TurnSupervisorMsg};
use crate::turn::{TurnConfig, TurnShared, UsageEvent};
use crate::udp_mux::UdpMux;
use crate::virtual_participant::{TapStart, VirtualPublisher, VirtualTrack};
use crate::webrtc::Certificate;

/// Node settings the actors need (the gateway owns the rest).
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Where the media socket binds, e.g. `0.0.0.0:7882`.
    pub media_bind: SocketAddr,
    /// The IP advertised in ICE candidates (the node's public address).
    pub public_ip: IpAddr,
    /// Receive sockets/driver tasks on the media port (default: one per core).
    pub media_workers: usize,
    /// How long an empty meeting lives before it ends.
    pub empty_timeout: Duration,
    /// Participants per meeting.
    pub max_participants: usize,
    /// Packets queued per subscriber before its own packets are dropped.
    pub media_queue: usize,
    /// Active speaker detection.
    pub speaker: SpeakerConfig,
    /// Run the SFU (meetings and the media port). False for a TURN-only node.
    pub sfu: bool,
    /// The embedded TURN server, if enabled.
    pub turn: Option<TurnConfig>,
    /// The usage ledger and webhooks (None: usage is not metered).
    pub billing: Option<BillingSetup>,
    /// Live transcription (engines, limits).
    pub transcription: crate::transcription::TranscriptionConfig,
    /// Membership of a cluster on Redis (None: a node on its own).
    pub cluster: Option<crate::cluster::ClusterConfig>,
}

/// What the node needs to meter usage and send webhooks.
#[derive(Clone)]
pub struct BillingSetup {
    pub ledger: crate::billing::store::Ledger,
    /// Stable across restarts (the ledger's open intervals are closed by their own node).
    pub node_id: String,
    /// How often open intervals are checkpointed.
    pub tick: Duration,
    pub webhooks: crate::billing::webhook::WebhookConfig,
    /// Renders webhook bodies (the gateway's wire format).
    pub encode: crate::billing::EventEncoder,
}

impl std::fmt::Debug for BillingSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BillingSetup")
            .field("ledger", &self.ledger.display_url)
            .field("node_id", &self.node_id)
            .field("tick", &self.tick)
            .finish()
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            media_bind: SocketAddr::from(([0, 0, 0, 0], 7882)),
            public_ip: IpAddr::from([127, 0, 0, 1]),
            media_workers: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            empty_timeout: Duration::from_secs(20),
            max_participants: 100,
            media_queue: 512,
            speaker: SpeakerConfig::default(),
            sfu: true,
            turn: None,
            billing: None,
            transcription: Default::default(),
            cluster: None,
        }
    }
}

/// Errors starting a node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot bind the media port {addr}: {source}")]
    MediaBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot create the DTLS certificate: {0}")]
    Certificate(String),
    #[error("cannot start the supervision tree: {0}")]
    Spawn(String),
    #[error("cannot start the TURN server: {0}")]
    Turn(String),
    #[error("the usage ledger: {0}")]
    Ledger(String),
    #[error("the cluster: {0}")]
    Cluster(String),
}

/// What every actor of the node shares (read-only).
pub struct NodeShared {
    pub config: NodeConfig,
    /// The SFU media port (None on a TURN-only node).
    pub mux: Option<Arc<UdpMux>>,
    /// The TURN server's shared state, if TURN runs.
    pub turn: Option<Arc<TurnShared>>,
    pub certificate: Certificate,
    pub advertised: SocketAddr,
    pub registry: MeetingRegistry,
    /// One (monotonic, wall) pair, for NTP timestamps.
    pub wall_epoch: (Instant, SystemTime),
    /// Every supervised actor, for operators.
    pub actors: Arc<ActorRegistry>,
    /// What happens in meetings, for the embedding API.
    pub events: EventLog,
    /// Set by a drain: no new joins or meetings.
    pub draining: AtomicBool,
    /// Participants removed by an operator: their old tokens cannot rejoin.
    pub removals: crate::removals::Removals,
    /// Where usage intervals open (disabled without a ledger).
    pub usage: UsageMeter,
    /// The billing actor's state, if usage is metered.
    pub billing: Option<Arc<Billing>>,
    /// The webhook sender's state, if usage is metered.
    pub webhooks: Option<Arc<Webhooks>>,
    /// Live transcription: engines, the worker pool's handle, counters.
    pub transcription: Arc<crate::transcription::Transcription>,
    /// The cluster this node belongs to, if any.
    pub cluster: Option<Arc<Cluster>>,
}

impl NodeShared {
    /// The node's default meeting settings.
    pub fn default_settings(&self) -> MeetingSettings {
        MeetingSettings {
            max_participants: self.config.max_participants,
            empty_timeout: self.config.empty_timeout,
            transcription: Default::default(),
        }
    }
}

/// Record of a running meeting; enough to restart it.
#[derive(Clone)]
pub struct MeetingRecord {
    pub actor: ActorRef<MeetingMsg>,
    pub started_at: SystemTime,
    /// Current settings (the meeting actor keeps them up to date).
    pub settings: SharedSettings,
    /// The app's metadata of the meeting (API); kept here so a restarted meeting has it.
    pub metadata: SharedMetadata,
    /// Restarts so far.
    pub restarts: u32,
    /// The API key the meeting is billed to.
    pub tenant: String,
    /// The meeting's usage interval: ends when the last copy of the record goes.
    pub usage: Arc<UsageHandle>,
}

/// A meeting's metadata, shared between its record and the API.
#[derive(Clone, Default)]
pub struct SharedMetadata(Arc<Mutex<String>>);

impl SharedMetadata {
    pub fn new(metadata: String) -> Self {
        Self(Arc::new(Mutex::new(metadata)))
    }

    pub fn get(&self) -> String {
        self.0.lock().map(|m| m.clone()).unwrap_or_default()
    }

    pub fn set(&self, metadata: String) {
        if let Ok(mut m) = self.0.lock() {
            *m = metadata;
        }
    }
}

/// Longest meeting metadata, in bytes.
pub const MAX_MEETING_METADATA: usize = 16 * 1024;

/// Settings shared between a meeting actor and its record.
#[derive(Clone)]
pub struct SharedSettings(Arc<Mutex<MeetingSettings>>);

impl SharedSettings {
    pub fn new(settings: MeetingSettings) -> Self {
        Self(Arc::new(Mutex::new(settings)))
    }

    pub fn load(&self) -> Option<MeetingSettings> {
        self.0.lock().ok().map(|s| *s)
    }

    pub fn store(&self, settings: MeetingSettings) {
        if let Ok(mut s) = self.0.lock() {
            *s = settings;
        }
    }
}

/// Index of running meetings by id (lookups need no actor hop).
#[derive(Default)]
pub struct MeetingRegistry {
    meetings: DashMap<MeetingId, MeetingRecord>,
}

impl MeetingRegistry {
    pub fn get(&self, id: &MeetingId) -> Option<MeetingRecord> {
        self.meetings.get(id).map(|r| r.value().clone())
    }

    /// Removes `id` if it still names `actor` (a restarted meeting replaced it otherwise).
    pub fn remove_if_same(&self, id: &MeetingId, actor: &ActorRef<MeetingMsg>) {
        self.meetings
            .remove_if(id, |_, r| r.actor.get_id() == actor.get_id());
    }

    pub fn len(&self) -> usize {
        self.meetings.len()
    }

    pub fn is_empty(&self) -> bool {
        self.meetings.is_empty()
    }

    pub fn ids(&self) -> Vec<MeetingId> {
        self.meetings.iter().map(|r| r.key().clone()).collect()
    }

    fn insert(&self, id: MeetingId, record: MeetingRecord) {
        self.meetings.insert(id, record);
    }
}

// ----- MeetingSupervisor -------------------------------------------------------------------

/// Creates meetings (the one place that does, so a name never gets two) and restarts them.
pub struct MeetingSupervisor;

pub enum MeetingSupervisorMsg {
    GetOrCreate {
        id: MeetingId,
        create: bool,
        /// Billed for the meeting if this creates it.
        tenant: String,
        reply: RpcReplyPort<Result<ActorRef<MeetingMsg>, SignalError>>,
    },
    /// Starts a meeting with settings (API); fails if it runs already.
    Create {
        id: MeetingId,
        tenant: String,
        settings: MeetingSettings,
        metadata: String,
        reply: RpcReplyPort<Result<ActorRef<MeetingMsg>, ApiError>>,
    },
    /// Drill: fail as a bug would.
    InjectFault,
}

pub struct MeetingSupervisorState {
    node: Arc<NodeShared>,
    reg: Registration,
}

impl Actor for MeetingSupervisor {
    type Msg = MeetingSupervisorMsg;
    type State = MeetingSupervisorState;
    /// The node and the node supervisor's id.
    type Arguments = (Arc<NodeShared>, ractor::ActorId);

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        (node, parent): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let kill_ref = myself.clone();
        let spec = ActorSpec::new(myself.get_id(), ActorKind::MeetingSupervisor, "meetings")
            .parent(parent)
            .kill(move || {
                kill_ref
                    .send_message(MeetingSupervisorMsg::InjectFault)
                    .is_ok()
            });
        let reg = node.actors.register(spec);
        Ok(MeetingSupervisorState { node, reg })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.reg.handled();
        match msg {
            MeetingSupervisorMsg::InjectFault => {
                panic!("fault injected into the meeting supervisor")
            }
            MeetingSupervisorMsg::Create {
                id,
                tenant,
                settings,
                metadata,
                reply,
            } => {
                if state.node.draining.load(Ordering::Acquire) {
                    let _ = reply.send(Err(ApiError::Unavailable("the node is draining".into())));
                    return Ok(());
                }
                if state.node.registry.get(&id).is_some() {
                    let _ = reply.send(Err(ApiError::AlreadyExists(format!("meeting {id}"))));
                    return Ok(());
                }
                let usage = open_meeting_usage(&state.node, &id, &tenant);
                let result = spawn_meeting(
                    &myself,
                    &state.node,
                    id,
                    SystemTime::now(),
                    (settings, SharedMetadata::new(metadata)),
                    (tenant, usage),
                    0,
                    None,
                )
                .await
                .map_err(ApiError::Internal);
                let _ = reply.send(result);
            }
            MeetingSupervisorMsg::GetOrCreate {
                id,
                create,
                tenant,
                reply,
            } => {
                if let Some(record) = state.node.registry.get(&id) {
                    let _ = reply.send(Ok(record.actor));
                    return Ok(());
                }
                if state.node.draining.load(Ordering::Acquire) {
                    let _ = reply.send(Err(SignalError::fatal(
                        SignalErrorCode::NodeUnavailable,
                        "the node is draining for maintenance; it takes no new meetings",
                    )));
                    return Ok(());
                }
                if !create {
                    let _ = reply.send(Err(SignalError::fatal(
                        SignalErrorCode::MeetingNotFound,
                        format!("meeting {id} does not exist and the token may not create it"),
                    )));
                    return Ok(());
                }
                let settings = state.node.default_settings();
                let usage = open_meeting_usage(&state.node, &id, &tenant);
                let result = spawn_meeting(
                    &myself,
                    &state.node,
                    id,
                    SystemTime::now(),
                    (settings, SharedMetadata::default()),
                    (tenant, usage),
                    0,
                    None,
                )
                .await
                .map_err(|e| SignalError::fatal(SignalErrorCode::Internal, e));
                let _ = reply.send(result);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(cell, error) = event {
            metrics::counter!("hearth_actor_failures_total", "kind" => "meeting").increment(1);
            let failed = state
                .node
                .registry
                .meetings
                .iter()
                .find(|r| r.value().actor.get_id() == cell.get_id())
                .map(|r| (r.key().clone(), r.value().clone()));
            // Its participants were children of the failed actor: stop them; their clients
            // are told to reconnect and will join the restarted meeting.
            cell.stop_children(Some("meeting_restarted".into()));
            if let Some((id, record)) = failed {
                tracing::warn!(meeting = %id, %error, "meeting failed; restarting (policy: restart from record)");
                state.reg.failure(format!("meeting {id} failed: {error}"));
                let settings = record
                    .settings
                    .load()
                    .unwrap_or_else(|| state.node.default_settings());
                match spawn_meeting(
                    &myself,
                    &state.node,
                    id.clone(),
                    record.started_at,
                    (settings, record.metadata.clone()),
                    (record.tenant.clone(), Arc::clone(&record.usage)),
                    record.restarts + 1,
                    Some(error.to_string()),
                )
                .await
                {
                    Ok(_) => {
                        metrics::counter!("hearth_actor_restarts_total", "kind" => "meeting")
                            .increment(1);
                    }
                    Err(e) => {
                        tracing::error!(meeting = %id, error = %e, "meeting restart failed");
                        state.node.registry.meetings.remove(&id);
                    }
                }
            }
        }
        Ok(())
    }
}

#[allow(clippy::too_many_arguments)]
async fn spawn_meeting(
    supervisor: &ActorRef<MeetingSupervisorMsg>,
    node: &Arc<NodeShared>,
    id: MeetingId,
    started_at: SystemTime,
    (settings, metadata): (MeetingSettings, SharedMetadata),
    (tenant, usage): (String, Arc<UsageHandle>),
    restarts: u32,
    last_failure: Option<String>,
) -> Result<ActorRef<MeetingMsg>, String> {
    let (actor, _) = Actor::spawn_linked(
        None,
        MeetingActor,
        MeetingArgs {
            id: id.clone(),
            started_at,
            node: Arc::clone(node),
            settings,
            restarts,
            last_failure,
            parent: supervisor.get_id(),
        },
        supervisor.get_cell(),
    )
    .await
    .map_err(|e| format!("cannot start meeting {id}: {e}"))?;
    node.registry.insert(
        id,
        MeetingRecord {
            actor: actor.clone(),
            started_at,
            settings: SharedSettings::new(settings),
            metadata,
            restarts,
            tenant,
            usage,
        },
    );
    Ok(actor)
}

/// Opens a meeting's usage interval (it ends when its record is gone).
fn open_meeting_usage(node: &NodeShared, id: &MeetingId, tenant: &str) -> Arc<UsageHandle> {
    Arc::new(node.usage.open(
        IntervalKind::Meeting,
        Attribution {
            api_key: tenant.to_owned(),
            meeting: id.to_string(),
            ..Attribution::default()
        },
        id.as_str(),
    ))
}

// ----- NodeSupervisor ----------------------------------------------------------------------

/// Top of the tree; restarts the meeting supervisor if it fails.
pub struct NodeSupervisor;

pub enum NodeMsg {
    /// The current meeting supervisor.
    MeetingSupervisor(RpcReplyPort<ActorRef<MeetingSupervisorMsg>>),
    /// The current TURN supervisor, if TURN runs.
    TurnSupervisor(RpcReplyPort<Option<ActorRef<TurnSupervisorMsg>>>),
}

pub struct NodeSupervisorState {
    node: Arc<NodeShared>,
    meetings: ActorRef<MeetingSupervisorMsg>,
    turn: Option<ActorRef<TurnSupervisorMsg>>,
    billing: Option<ActorRef<BillingMsg>>,
    webhooks: Option<ActorRef<WebhookMsg>>,
    transcription: Option<ActorRef<crate::transcription::supervisor::SupervisorMsg>>,
    transcription_restarts: u32,
    cluster: Option<ActorRef<ClusterMsg>>,
    reg: Registration,
}

async fn spawn_cluster(
    node: &Arc<NodeShared>,
    myself: &ActorRef<NodeMsg>,
) -> Result<Option<ActorRef<ClusterMsg>>, ActorProcessingErr> {
    let Some(cluster) = &node.cluster else {
        return Ok(None);
    };
    let (actor, _) = Actor::spawn_linked(
        None,
        ClusterActor,
        (
            Arc::clone(cluster),
            Arc::clone(node),
            Arc::clone(&node.actors),
            myself.get_id(),
        ),
        myself.get_cell(),
    )
    .await?;
    Ok(Some(actor))
}

async fn spawn_transcription(
    node: &Arc<NodeShared>,
    myself: &ActorRef<NodeMsg>,
    restarts: u32,
) -> Result<Option<ActorRef<crate::transcription::supervisor::SupervisorMsg>>, ActorProcessingErr> {
    if !node.config.sfu {
        return Ok(None);
    }
    let (actor, _) = Actor::spawn_linked(
        None,
        crate::transcription::supervisor::TranscriptionSupervisor,
        (
            Arc::clone(&node.transcription),
            Arc::clone(&node.actors),
            myself.get_id(),
            restarts,
        ),
        myself.get_cell(),
    )
    .await?;
    Ok(Some(actor))
}

async fn spawn_billing(
    node: &Arc<NodeShared>,
    myself: &ActorRef<NodeMsg>,
) -> Result<Option<ActorRef<BillingMsg>>, ActorProcessingErr> {
    let Some(billing) = &node.billing else {
        return Ok(None);
    };
    let (actor, _) = Actor::spawn_linked(
        None,
        BillingActor,
        (
            Arc::clone(billing),
            Arc::clone(&node.actors),
            myself.get_id(),
        ),
        myself.get_cell(),
    )
    .await?;
    Ok(Some(actor))
}

async fn spawn_webhooks(
    node: &Arc<NodeShared>,
    myself: &ActorRef<NodeMsg>,
) -> Result<Option<ActorRef<WebhookMsg>>, ActorProcessingErr> {
    let Some(hooks) = &node.webhooks else {
        return Ok(None);
    };
    let (actor, _) = Actor::spawn_linked(
        None,
        WebhookActor,
        (Arc::clone(hooks), Arc::clone(&node.actors), myself.get_id()),
        myself.get_cell(),
    )
    .await?;
    Ok(Some(actor))
}

impl Actor for NodeSupervisor {
    type Msg = NodeMsg;
    type State = NodeSupervisorState;
    type Arguments = Arc<NodeShared>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        node: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let reg = node
            .actors
            .register(ActorSpec::new(myself.get_id(), ActorKind::Node, "node"));
        if let Some(turn) = &node.turn {
            let _ = turn.parent.set(myself.get_id());
        }
        let (meetings, _) = Actor::spawn_linked(
            None,
            MeetingSupervisor,
            (Arc::clone(&node), myself.get_id()),
            myself.get_cell(),
        )
        .await?;
        let turn = match &node.turn {
            Some(shared) => Some(
                Actor::spawn_linked(None, TurnSupervisor, Arc::clone(shared), myself.get_cell())
                    .await?
                    .0,
            ),
            None => None,
        };
        let billing = spawn_billing(&node, &myself).await?;
        let webhooks = spawn_webhooks(&node, &myself).await?;
        let transcription = spawn_transcription(&node, &myself, 0).await?;
        let cluster = spawn_cluster(&node, &myself).await?;
        Ok(NodeSupervisorState {
            cluster,
            node,
            meetings,
            turn,
            billing,
            webhooks,
            transcription,
            transcription_restarts: 0,
            reg,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.reg.handled();
        match msg {
            NodeMsg::MeetingSupervisor(reply) => {
                let _ = reply.send(state.meetings.clone());
            }
            NodeMsg::TurnSupervisor(reply) => {
                let _ = reply.send(state.turn.clone());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(cell, error) = &event
            && state
                .billing
                .as_ref()
                .is_some_and(|b| b.get_id() == cell.get_id())
        {
            // Its state (open intervals, the channel) lives in `Billing`: the new actor
            // resumes it; what the failed tick did not commit is written by the next one.
            metrics::counter!("hearth_actor_failures_total", "kind" => "billing").increment(1);
            tracing::error!(%error, "billing actor failed; restarting");
            state.reg.failure(format!("billing failed: {error}"));
            state.billing = spawn_billing(&state.node, &myself).await?;
            metrics::counter!("hearth_actor_restarts_total", "kind" => "billing").increment(1);
            return Ok(());
        }
        if let SupervisionEvent::ActorFailed(cell, error) = &event
            && state
                .transcription
                .as_ref()
                .is_some_and(|t| t.get_id() == cell.get_id())
        {
            // Its workers were its linked children and went with it; queued utterances were
            // answered (unavailable). The new supervisor starts workers on the next one.
            metrics::counter!("hearth_actor_failures_total", "kind" => "transcription_supervisor")
                .increment(1);
            tracing::error!(%error, "transcription supervisor failed; restarting");
            state
                .reg
                .failure(format!("transcription supervisor failed: {error}"));
            state.transcription_restarts += 1;
            state.transcription =
                spawn_transcription(&state.node, &myself, state.transcription_restarts).await?;
            metrics::counter!("hearth_actor_restarts_total", "kind" => "transcription_supervisor")
                .increment(1);
            return Ok(());
        }
        if let SupervisionEvent::ActorFailed(cell, error) = &event
            && state
                .cluster
                .as_ref()
                .is_some_and(|c| c.get_id() == cell.get_id())
        {
            // Leases and the registry entry live in Redis with their TTLs; the new actor's
            // first tick renews them.
            metrics::counter!("hearth_actor_failures_total", "kind" => "cluster").increment(1);
            tracing::error!(%error, "cluster actor failed; restarting");
            state.reg.failure(format!("cluster failed: {error}"));
            state.cluster = spawn_cluster(&state.node, &myself).await?;
            metrics::counter!("hearth_actor_restarts_total", "kind" => "cluster").increment(1);
            return Ok(());
        }
        if let SupervisionEvent::ActorFailed(cell, error) = &event
            && state
                .webhooks
                .as_ref()
                .is_some_and(|w| w.get_id() == cell.get_id())
        {
            metrics::counter!("hearth_actor_failures_total", "kind" => "webhooks").increment(1);
            tracing::error!(%error, "webhook sender failed; restarting");
            state.reg.failure(format!("webhooks failed: {error}"));
            state.webhooks = spawn_webhooks(&state.node, &myself).await?;
            metrics::counter!("hearth_actor_restarts_total", "kind" => "webhooks").increment(1);
            return Ok(());
        }
        if let SupervisionEvent::ActorFailed(cell, error) = &event
            && state
                .turn
                .as_ref()
                .is_some_and(|t| t.get_id() == cell.get_id())
            && let Some(shared) = &state.node.turn
        {
            // Allocations outlive a failed TURN supervisor only as orphans; their routes
            // stay valid. A new supervisor takes over creation and quotas from zero.
            metrics::counter!("hearth_actor_failures_total", "kind" => "turn_supervisor")
                .increment(1);
            tracing::error!(%error, "TURN supervisor failed; restarting");
            state
                .reg
                .failure(format!("TURN supervisor failed: {error}"));
            let (turn, _) =
                Actor::spawn_linked(None, TurnSupervisor, Arc::clone(shared), myself.get_cell())
                    .await?;
            state.turn = Some(turn);
            metrics::counter!("hearth_actor_restarts_total", "kind" => "turn_supervisor")
                .increment(1);
            return Ok(());
        }
        if let SupervisionEvent::ActorFailed(cell, error) = event
            && cell.get_id() == state.meetings.get_id()
        {
            metrics::counter!("hearth_actor_failures_total", "kind" => "meeting_supervisor")
                .increment(1);
            tracing::error!(%error, "meeting supervisor failed; restarting");
            state
                .reg
                .failure(format!("meeting supervisor failed: {error}"));
            let (meetings, _) = Actor::spawn_linked(
                None,
                MeetingSupervisor,
                (Arc::clone(&state.node), myself.get_id()),
                myself.get_cell(),
            )
            .await?;
            state.meetings = meetings;
            metrics::counter!("hearth_actor_restarts_total", "kind" => "meeting_supervisor")
                .increment(1);
        }
        Ok(())
    }
}

// ----- Node handle -------------------------------------------------------------------------

/// A running node: the gateway's entry point into the actors.
#[derive(Clone)]
pub struct Node {
    shared: Arc<NodeShared>,
    supervisor: ActorRef<NodeMsg>,
    turn_addrs: Arc<std::sync::OnceLock<TurnAddrs>>,
    /// Flips to true once a drain has ended every meeting.
    drained: tokio::sync::watch::Sender<bool>,
}

/// How long the TURN credentials of a participant whose token expiry is unknown last.
pub const DEFAULT_TURN_CREDENTIAL_TTL: Duration = Duration::from_secs(3600);

/// Which listener task [`Node::inject_listener_fault`] fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenerFault {
    /// A TURN UDP worker (the one that receives the next datagram).
    TurnUdp,
    /// A TURN TCP/TLS accept loop (the one that accepts the next connection).
    TurnStream,
    /// A media port driver (the one that receives the next datagram).
    MediaMux,
}

/// Where the TURN listeners listen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TurnAddrs {
    pub udp: SocketAddr,
    pub tcp: SocketAddr,
    pub tls: Option<SocketAddr>,
}

impl Node {
    /// Binds the media port, creates the DTLS identity and starts the supervision tree.
    /// Must run inside a Tokio runtime.
    pub async fn start(mut config: NodeConfig) -> Result<Node, NodeError> {
        let mux = if config.sfu {
            let mux = UdpMux::bind(config.media_bind, config.media_workers).map_err(|source| {
                NodeError::MediaBind {
                    addr: config.media_bind,
                    source,
                }
            })?;
            mux.start();
            Some(mux)
        } else {
            None
        };
        let certificate =
            Certificate::generate().map_err(|e| NodeError::Certificate(e.to_string()))?;
        let media_port = mux.as_ref().map_or(0, |m| m.local_addr().port());
        let advertised = SocketAddr::new(config.public_ip, media_port);
        let (usage, billing, webhooks) = match &config.billing {
            Some(setup) => {
                // What a previous run of this node left open ends at its last checkpoint.
                let closed = crate::billing::recover(&setup.ledger, &setup.node_id, setup.encode)
                    .await
                    .map_err(|e| NodeError::Ledger(e.to_string()))?;
                if closed > 0 {
                    tracing::warn!(
                        intervals = closed,
                        "closed the usage intervals the last run left open, at their last checkpoint"
                    );
                }
                let (meter, billing) = Billing::new(
                    setup.node_id.clone(),
                    setup.ledger.clone(),
                    setup.tick,
                    setup.encode,
                );
                let hooks = Webhooks::new(
                    setup.ledger.clone(),
                    setup.webhooks.clone(),
                    Arc::clone(&billing.committed_wake),
                );
                (meter, Some(billing), Some(hooks))
            }
            None => (UsageMeter::disabled(), None, None),
        };
        let actors = Arc::new(ActorRegistry::default());
        let turn = config.turn.take().map(|mut turn| {
            if mux.is_some() {
                // Participants behind TURN send their media to the SFU: always allowed.
                turn.sfu_media = Some(advertised);
            }
            let mut shared = TurnShared::new(turn, rand::random());
            shared.actors = Arc::clone(&actors);
            shared.meter = usage.clone();
            Arc::new(shared)
        });
        let transcription = crate::transcription::Transcription::new(config.transcription.clone());
        let cluster = match config.cluster.take() {
            Some(_) if mux.is_none() => {
                tracing::warn!("a TURN-only node hosts no meetings: it does not join the cluster");
                None
            }
            Some(mut c) => {
                if c.media.is_empty() {
                    c.media = advertised.to_string();
                }
                Some(Cluster::new(c).map_err(NodeError::Cluster)?)
            }
            None => None,
        };
        let shared = Arc::new(NodeShared {
            cluster,
            transcription,
            config,
            usage,
            billing,
            webhooks,
            mux,
            turn,
            certificate,
            advertised,
            registry: MeetingRegistry::default(),
            wall_epoch: (Instant::now(), SystemTime::now()),
            actors,
            events: EventLog::default(),
            draining: AtomicBool::new(false),
            removals: Default::default(),
        });
        let (supervisor, _) = Actor::spawn(None, NodeSupervisor, Arc::clone(&shared))
            .await
            .map_err(|e| NodeError::Spawn(e.to_string()))?;
        metrics::gauge!("hearth_meetings").set(0.0);
        metrics::gauge!("hearth_participants").set(0.0);
        let node = Node {
            shared,
            supervisor,
            turn_addrs: Arc::new(std::sync::OnceLock::new()),
            drained: tokio::sync::watch::channel(false).0,
        };
        if node.shared.turn.is_some() {
            node.start_turn_listeners().await?;
        }
        Ok(node)
    }

    async fn start_turn_listeners(&self) -> Result<(), NodeError> {
        let Some(turn) = &self.shared.turn else {
            return Ok(());
        };
        let err = |e: String| NodeError::Turn(e);
        let supervisor = ractor::call!(self.supervisor, NodeMsg::TurnSupervisor)
            .map_err(|e| err(e.to_string()))?
            .ok_or_else(|| err("no TURN supervisor".into()))?;
        let counters = Arc::new(FrontCounters::new());
        let config = &turn.config;
        // UDP and TCP share one port. An ephemeral one is picked free for both: a port the
        // kernel gives UDP may be held by some TCP socket (a busy machine's outgoing
        // connections use the same range), and binding TCP there would fail.
        let listen = if config.listen.port() == 0 {
            SocketAddr::new(
                config.listen.ip(),
                shared_ephemeral_port(config.listen.ip()).map_err(|e| {
                    err(format!(
                        "no free UDP+TCP port on {}: {e}",
                        config.listen.ip()
                    ))
                })?,
            )
        } else {
            config.listen
        };
        let udp = listener::start_udp(
            listen,
            config.workers,
            Arc::clone(turn),
            supervisor.clone(),
            Arc::clone(&counters),
        )
        .map_err(|e| err(format!("UDP {}: {e}", config.listen)))?;
        // TCP on the same port as UDP (an ephemeral UDP port picks the TCP one too).
        let tcp = listener::start_stream(
            SocketAddr::new(config.listen.ip(), udp.port()),
            None,
            Arc::clone(turn),
            supervisor.clone(),
            Arc::clone(&counters),
        )
        .await
        .map_err(|e| err(format!("TCP {}: {e}", config.listen)))?;
        let tls = match &config.tls {
            Some(tls) => {
                let acceptor = listener::tls_acceptor(&tls.cert, &tls.key).map_err(err)?;
                Some(
                    listener::start_stream(
                        tls.listen,
                        Some(acceptor),
                        Arc::clone(turn),
                        supervisor,
                        counters,
                    )
                    .await
                    .map_err(|e| err(format!("TLS {}: {e}", tls.listen)))?,
                )
            }
            None => None,
        };
        let _ = self.turn_addrs.set(TurnAddrs { udp, tcp, tls });
        Ok(())
    }

    /// The media port's local address (None on a TURN-only node).
    pub fn media_addr(&self) -> Option<SocketAddr> {
        self.shared.mux.as_ref().map(|m| m.local_addr())
    }

    /// The TURN listeners' addresses, if TURN runs.
    pub fn turn_addrs(&self) -> Option<TurnAddrs> {
        self.turn_addrs.get().copied()
    }

    /// Usage of finished TURN allocations, for billing (each event once, in order).
    pub fn turn_usage(&self) -> Option<tokio::sync::broadcast::Receiver<UsageEvent>> {
        self.shared.turn.as_ref().map(|t| t.usage.subscribe())
    }

    /// Live TURN allocations.
    pub fn turn_allocations(&self) -> usize {
        self.shared.turn.as_ref().map_or(0, |t| t.routes.len())
    }

    /// TURN credentials and URLs for a participant (the join response's `iceServers`):
    /// SFU credentials, which relay only to this node's media address, valid until
    /// `expires_at` (the participant's token expiry; [`DEFAULT_TURN_CREDENTIAL_TTL`] from
    /// now when unknown), and revoked when the participant is removed
    /// ([`Node::revoke_turn_for`]). Empty when TURN is off or has no shared secret.
    pub fn ice_servers(
        &self,
        participant: &ParticipantId,
        expires_at: Option<SystemTime>,
    ) -> Vec<crate::domain::IceServer> {
        let (Some(turn), Some(addrs)) = (&self.shared.turn, self.turn_addrs()) else {
            return Vec::new();
        };
        let expiry = match expires_at {
            Some(at) => at
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            None => turn.unix_now(Instant::now()) + DEFAULT_TURN_CREDENTIAL_TTL.as_secs(),
        };
        let Some((username, credential)) = turn.sfu_credentials(participant.as_str(), expiry)
        else {
            return Vec::new();
        };
        let host = match turn.config.relay_ip {
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        };
        let mut urls = vec![
            format!("turn:{host}:{}?transport=udp", addrs.udp.port()),
            format!("turn:{host}:{}?transport=tcp", addrs.tcp.port()),
        ];
        if let Some(tls) = addrs.tls {
            urls.push(format!("turns:{host}:{}?transport=tcp", tls.port()));
        }
        vec![crate::domain::IceServer {
            urls,
            username,
            credential,
        }]
    }

    /// Revokes the TURN credentials handed to `participant` and ends its allocations
    /// (called when it is removed). Returns how many allocations ended.
    pub fn revoke_turn_for(&self, participant: &ParticipantId) -> usize {
        self.shared
            .turn
            .as_ref()
            .map_or(0, |turn| turn.revoke_sfu(participant.as_str()))
    }

    /// Drill and test hook: makes a listener task fail (it panics on its next datagram or
    /// connection), so its supervisor restarts it.
    pub fn inject_listener_fault(&self, which: ListenerFault) -> bool {
        use std::sync::atomic::Ordering::Release;
        match (which, &self.shared.turn, &self.shared.mux) {
            (ListenerFault::TurnUdp, Some(turn), _) => turn.faults.udp_worker.store(true, Release),
            (ListenerFault::TurnStream, Some(turn), _) => {
                turn.faults.stream_accept.store(true, Release)
            }
            (ListenerFault::MediaMux, _, Some(mux)) => mux.inject_fault(),
            _ => return false,
        }
        true
    }

    /// Drill and test hook: makes the allocation of a client fail, as a bug would.
    pub async fn inject_allocation_fault(&self, key: crate::turn::ClientKey) -> bool {
        let Ok(Some(turn)) = ractor::call!(self.supervisor, NodeMsg::TurnSupervisor) else {
            return false;
        };
        turn.send_message(TurnSupervisorMsg::InjectFault { key })
            .is_ok()
    }

    /// The address put in ICE candidates.
    pub fn advertised_media_addr(&self) -> SocketAddr {
        self.shared.advertised
    }

    /// Running meetings.
    pub fn meeting_count(&self) -> usize {
        self.shared.registry.len()
    }

    pub fn meeting_ids(&self) -> Vec<MeetingId> {
        self.shared.registry.ids()
    }

    /// Joins (creating the meeting if the grants allow). `signal` carries the server's
    /// messages to the client from now on. The TURN credentials in the answer expire with
    /// the join's token (`JoinRequest::token_expires_at`; [`DEFAULT_TURN_CREDENTIAL_TTL`]
    /// when there is none).
    pub async fn join(
        &self,
        request: JoinRequest,
        signal: SignalSender,
    ) -> Result<(JoinAccepted, ParticipantHandle), SignalError> {
        if let Placement::Remote { node_id, http_url } =
            self.place(&request.meeting, request.grants.create).await?
        {
            return Err(SignalError::fatal(
                SignalErrorCode::NodeUnavailable,
                format!(
                    "meeting {} is hosted by node {node_id} ({http_url}); join there",
                    request.meeting
                ),
            ));
        }
        self.join_placed(request, signal).await
    }

    /// Where `meeting` is hosted: here (always, on a node without a cluster) or on another
    /// node. A meeting that runs nowhere is placed by load if `create` allows.
    pub async fn place(&self, meeting: &MeetingId, create: bool) -> Result<Placement, SignalError> {
        let Some(cluster) = &self.shared.cluster else {
            return Ok(Placement::Local);
        };
        // Its own meetings are answered here, also while Redis is unreachable; not once
        // the node has left the cluster (shutting down: its meetings move).
        if self.shared.registry.get(meeting).is_some() && !cluster.has_left() {
            return Ok(Placement::Local);
        }
        // A draining node places nothing on itself; meetings hosted elsewhere are answered
        // (the client goes there).
        cluster
            .place(meeting, create, self.is_draining())
            .await
            .map_err(place_error)
    }

    /// For the media API (gRPC streams cannot be redirected): Ok if `meeting` is hosted
    /// here (or placed here now), else an error naming its host.
    async fn hosted_here(&self, meeting: &MeetingId, create: bool) -> Result<(), ApiError> {
        match self.place(meeting, create).await {
            Ok(Placement::Local) => Ok(()),
            Ok(Placement::Remote { node_id, http_url }) => Err(ApiError::Unavailable(format!(
                "meeting {meeting} is hosted by node {node_id}; call its API at {http_url}"
            ))),
            Err(e) if e.code == SignalErrorCode::MeetingNotFound => {
                Err(ApiError::NotFound(format!("meeting {meeting}")))
            }
            Err(e) => Err(ApiError::Unavailable(e.message)),
        }
    }

    /// The cluster, if this node is part of one.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.shared.cluster.as_ref()
    }

    /// Joins a meeting [`Node::place`] found here.
    pub async fn join_placed(
        &self,
        request: JoinRequest,
        signal: SignalSender,
    ) -> Result<(JoinAccepted, ParticipantHandle), SignalError> {
        let token_expires_at = request.token_expires_at;
        if self.is_draining() {
            return Err(SignalError::fatal(
                SignalErrorCode::NodeUnavailable,
                "the node is draining for maintenance; it takes no new participants",
            ));
        }
        // A meeting that ends between lookup and join answers MeetingNotFound; one retry
        // then creates a fresh meeting.
        for _ in 0..2 {
            let meeting = self
                .meeting_ref(&request.meeting, request.grants.create, &request.tenant)
                .await?;
            let result = ractor::call!(meeting, |reply| MeetingMsg::Join {
                request: request.clone(),
                signal: signal.clone(),
                reply,
            });
            match result {
                Ok(Err(e)) if e.code == SignalErrorCode::MeetingNotFound => continue,
                Ok(Ok((mut accepted, handle))) => {
                    accepted.ice_servers =
                        self.ice_servers(&accepted.participant.id, token_expires_at);
                    return Ok((accepted, handle));
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => continue,
            }
        }
        Err(SignalError::fatal(
            SignalErrorCode::Internal,
            "the meeting is restarting; try again",
        ))
    }

    async fn meeting_ref(
        &self,
        id: &MeetingId,
        create: bool,
        tenant: &str,
    ) -> Result<ActorRef<MeetingMsg>, SignalError> {
        if let Some(record) = self.shared.registry.get(id) {
            return Ok(record.actor);
        }
        let internal =
            |e: String| SignalError::fatal(SignalErrorCode::Internal, format!("node: {e}"));
        let supervisor = ractor::call!(self.supervisor, NodeMsg::MeetingSupervisor)
            .map_err(|e| internal(e.to_string()))?;
        let mut create = create;
        if let Some(cluster) = &self.shared.cluster {
            // Retryable, unlike "the meeting does not exist".
            let (mine, info) = cluster
                .adoption(id)
                .await
                .map_err(|e| SignalError::fatal(SignalErrorCode::NodeUnavailable, e.to_string()))?;
            if mine && let Some(info) = info {
                // It moved here: it goes on with its API key, settings and metadata.
                match ractor::call!(supervisor, |reply| MeetingSupervisorMsg::Create {
                    id: id.clone(),
                    tenant: info.tenant,
                    settings: info.settings,
                    metadata: info.metadata,
                    reply,
                }) {
                    Ok(Ok(actor)) => {
                        tracing::info!(meeting = %id, "meeting moved here: started with its settings and metadata");
                        return Ok(actor);
                    }
                    // Started meanwhile by another join: that one is used below.
                    Ok(Err(ApiError::AlreadyExists(_))) => {}
                    Ok(Err(e)) => {
                        return Err(SignalError::fatal(
                            SignalErrorCode::NodeUnavailable,
                            e.to_string(),
                        ));
                    }
                    Err(e) => return Err(internal(e.to_string())),
                }
            }
            // A meeting of the cluster whose lease names this node (placed here, or moved
            // here) is started here whatever the token's `create` grant says.
            create = create || mine;
        }
        ractor::call!(supervisor, |reply| MeetingSupervisorMsg::GetOrCreate {
            id: id.clone(),
            create,
            tenant: tenant.to_owned(),
            reply,
        })
        .map_err(|e| internal(e.to_string()))?
    }

    // ----- Embedding and operator API -----------------------------------------------------

    /// The node's default meeting settings.
    pub fn default_settings(&self) -> MeetingSettings {
        self.shared.default_settings()
    }

    /// Every supervised actor, parents first.
    pub fn actor_tree(&self) -> Vec<crate::registry::ActorView> {
        self.shared.actors.snapshot()
    }

    /// Makes an actor (by its printed id) fail as a panic would; its supervisor's policy
    /// applies.
    pub fn kill_actor(
        &self,
        id: &str,
    ) -> Result<crate::registry::ActorView, crate::registry::KillError> {
        let id = self
            .shared
            .actors
            .find(id)
            .ok_or(crate::registry::KillError::NotFound)?;
        self.shared.actors.kill(id)
    }

    /// Meeting events from `start`, then live ones.
    pub fn events(
        &self,
        start: crate::events::Start,
    ) -> Result<crate::events::EventSubscription, crate::events::Refused> {
        self.shared.events.subscribe(start)
    }

    async fn meeting_supervisor(&self) -> Result<ActorRef<MeetingSupervisorMsg>, ApiError> {
        ractor::call!(self.supervisor, NodeMsg::MeetingSupervisor)
            .map_err(|e| ApiError::Internal(format!("node: {e}")))
    }

    fn no_sfu(&self) -> Result<(), ApiError> {
        if self.shared.mux.is_none() {
            return Err(ApiError::Unavailable("this node runs TURN only".into()));
        }
        Ok(())
    }

    /// Starts an empty meeting.
    pub async fn create_meeting(
        &self,
        id: &MeetingId,
        tenant: &str,
        settings: MeetingSettings,
        metadata: String,
    ) -> Result<MeetingSnapshot, ApiError> {
        self.no_sfu()?;
        check_metadata(&metadata)?;
        if let Some(engine) = settings.transcription.engine
            && !self.shared.transcription.engines().contains(&engine)
        {
            return Err(ApiError::Invalid(format!(
                "the {} engine is not configured on this node",
                engine.as_str()
            )));
        }
        let supervisor = self.meeting_supervisor().await?;
        ractor::call!(supervisor, |reply| MeetingSupervisorMsg::Create {
            id: id.clone(),
            tenant: tenant.to_owned(),
            settings,
            metadata,
            reply,
        })
        .map_err(|e| ApiError::Internal(format!("node: {e}")))??;
        self.meeting(id)
            .await
            .ok_or_else(|| ApiError::NotFound(format!("meeting {id}")))
    }

    /// Live transcription: engines, availability, counters.
    pub fn transcription(&self) -> &Arc<crate::transcription::Transcription> {
        &self.shared.transcription
    }

    /// Turns a meeting's captions on or off (the app); None keeps language and engine.
    pub async fn set_captions(
        &self,
        id: &MeetingId,
        enabled: bool,
        language: Option<crate::domain::Language>,
        engine: Option<crate::domain::EngineKind>,
    ) -> Result<crate::domain::CaptionsState, ApiError> {
        let record = self.record(id)?;
        ractor::call!(record.actor, |reply| MeetingMsg::SetCaptions {
            by: None,
            enabled,
            language,
            engine,
            reply: Some(reply),
        })
        .map_err(|_| ApiError::NotFound(format!("meeting {id}")))?
    }

    /// A meeting's stored transcript: the sessions that have one (start times, newest
    /// first) and the final segments of `session` (default: the newest).
    pub async fn transcript(
        &self,
        meeting: &str,
        api_key: Option<&str>,
        session: Option<i64>,
    ) -> Result<
        (
            Vec<i64>,
            Option<i64>,
            Vec<crate::billing::store::TranscriptRow>,
        ),
        ApiError,
    > {
        let Some(billing) = &self.shared.billing else {
            return Err(ApiError::Unavailable(
                "transcripts are kept in the node's database, and this node runs without one \
                 (--no-ledger)"
                    .into(),
            ));
        };
        // Segments still queued for the database are written first.
        let _ = billing.tick_once().await;
        let sessions = billing
            .ledger
            .transcript_sessions(meeting, api_key)
            .await
            .map_err(|e| ApiError::Unavailable(format!("the database: {e}")))?;
        let chosen = match session {
            Some(s) if sessions.contains(&s) => Some(s),
            Some(s) => {
                return Err(ApiError::NotFound(format!(
                    "a transcript of meeting {meeting} started at {s}"
                )));
            }
            None => sessions.first().copied(),
        };
        let rows = match chosen {
            Some(s) => billing
                .ledger
                .transcript(meeting, api_key, s)
                .await
                .map_err(|e| ApiError::Unavailable(format!("the database: {e}")))?,
            None => Vec::new(),
        };
        Ok((sessions, chosen, rows))
    }

    /// Drill and test hook: makes the transcriber of a track fail.
    pub fn inject_transcriber_fault(&self, meeting: &MeetingId, track: &TrackId) -> bool {
        self.shared.registry.get(meeting).is_some_and(|r| {
            r.actor
                .send_message(MeetingMsg::InjectTranscriberFault(track.clone()))
                .is_ok()
        })
    }

    /// Every live meeting, sorted by name.
    pub async fn meetings(&self) -> Vec<MeetingSnapshot> {
        let mut ids = self.meeting_ids();
        ids.sort();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(m) = self.meeting(&id).await {
                out.push(m);
            }
        }
        out
    }

    fn record(&self, id: &MeetingId) -> Result<MeetingRecord, ApiError> {
        self.shared
            .registry
            .get(id)
            .ok_or_else(|| ApiError::NotFound(format!("meeting {id}")))
    }

    /// Ends a meeting now; returns how many participants it had.
    pub async fn end_meeting(&self, id: &MeetingId) -> Result<usize, ApiError> {
        let snapshot = self
            .meeting(id)
            .await
            .ok_or_else(|| ApiError::NotFound(format!("meeting {id}")))?;
        let record = self.record(id)?;
        let _ = record
            .actor
            .send_message(MeetingMsg::End(EndReason::EndedByApi));
        Ok(snapshot.participants.len())
    }

    /// Changes a meeting's settings; None keeps a value.
    pub async fn update_meeting(
        &self,
        id: &MeetingId,
        max_participants: Option<usize>,
        empty_timeout: Option<Duration>,
        transcription: Option<crate::domain::TranscriptionSettings>,
        metadata: Option<String>,
    ) -> Result<MeetingSettings, ApiError> {
        if let Some(engine) = transcription.and_then(|t| t.engine)
            && !self.shared.transcription.engines().contains(&engine)
        {
            return Err(ApiError::Invalid(format!(
                "the {} engine is not configured on this node",
                engine.as_str()
            )));
        }
        let record = self.record(id)?;
        if let Some(metadata) = metadata {
            check_metadata(&metadata)?;
            if metadata != record.metadata.get() {
                record.metadata.set(metadata.clone());
                // Participants learn it (`meetingUpdated`); joins read the record.
                let _ = record
                    .actor
                    .send_message(MeetingMsg::MetadataChanged(metadata));
            }
        }
        ractor::call!(record.actor, |reply| MeetingMsg::UpdateSettings {
            max_participants,
            empty_timeout,
            transcription,
            reply,
        })
        .map_err(|_| ApiError::NotFound(format!("meeting {id}")))
    }

    /// One participant of a meeting.
    pub async fn participant(
        &self,
        meeting: &MeetingId,
        participant: &ParticipantId,
    ) -> Result<MemberView, ApiError> {
        let snapshot = self
            .meeting(meeting)
            .await
            .ok_or_else(|| ApiError::NotFound(format!("meeting {meeting}")))?;
        snapshot
            .participants
            .into_iter()
            .find(|p| &p.info.id == participant)
            .ok_or_else(|| ApiError::NotFound(format!("participant {participant}")))
    }

    /// Removes a participant (it is told so and disconnected).
    pub async fn remove_participant(
        &self,
        meeting: &MeetingId,
        participant: &ParticipantId,
    ) -> Result<(), ApiError> {
        let record = self.record(meeting)?;
        let found = ractor::call!(record.actor, |reply| MeetingMsg::Remove {
            participant: participant.clone(),
            reason: crate::domain::LeaveReason::Removed,
            reply: Some(reply),
        })
        .map_err(|_| ApiError::NotFound(format!("meeting {meeting}")))?;
        if found {
            // Its TURN credentials stop working with it.
            self.revoke_turn_for(participant);
            Ok(())
        } else {
            Err(ApiError::NotFound(format!("participant {participant}")))
        }
    }

    /// Sends an app message to a meeting's participants (all, or the named ones); returns
    /// how many it reached.
    pub async fn send_message(
        &self,
        meeting: &MeetingId,
        text: &str,
        from: &str,
        to: Vec<ParticipantId>,
    ) -> Result<(crate::domain::AppMessage, usize), ApiError> {
        if text.is_empty() || text.len() > crate::domain::MAX_APP_MESSAGE {
            return Err(ApiError::Invalid(format!(
                "text: 1 to {} bytes",
                crate::domain::MAX_APP_MESSAGE
            )));
        }
        if from.len() > 256 {
            return Err(ApiError::Invalid("from: at most 256 bytes".into()));
        }
        if to.len() > 1000 {
            return Err(ApiError::Invalid("to: at most 1000 participants".into()));
        }
        let record = self.record(meeting)?;
        let message = crate::domain::AppMessage {
            id: format!("MS_{}", crate::ids::random_string(12)),
            text: text.to_owned(),
            from: from.to_owned(),
            sent_at: SystemTime::now(),
        };
        let delivered = ractor::call!(record.actor, |reply| MeetingMsg::SendMessage {
            message: message.clone(),
            to,
            reply,
        })
        .map_err(|_| ApiError::NotFound(format!("meeting {meeting}")))?
        .map_err(|p| ApiError::NotFound(format!("participant {p}")))?;
        Ok((message, delivered))
    }

    /// Mutes or unmutes a participant's track for everyone.
    pub async fn mute_track(
        &self,
        meeting: &MeetingId,
        participant: &ParticipantId,
        track: &TrackId,
        muted: bool,
    ) -> Result<crate::domain::TrackInfo, ApiError> {
        let record = self.record(meeting)?;
        ractor::call!(record.actor, |reply| MeetingMsg::MuteTrack {
            participant: participant.clone(),
            track: track.clone(),
            muted,
            reply,
        })
        .map_err(|_| ApiError::NotFound(format!("meeting {meeting}")))?
    }

    /// Changes what a participant may do.
    pub async fn update_permissions(
        &self,
        meeting: &MeetingId,
        participant: &ParticipantId,
        publish: bool,
        subscribe: bool,
    ) -> Result<MemberView, ApiError> {
        let record = self.record(meeting)?;
        ractor::call!(record.actor, |reply| MeetingMsg::UpdatePermissions {
            participant: participant.clone(),
            publish,
            subscribe,
            reply,
        })
        .map_err(|_| ApiError::NotFound(format!("meeting {meeting}")))?
    }

    /// A virtual participant publishing one track into `request.meeting`.
    pub async fn publish_virtual(
        &self,
        request: JoinRequest,
        track: VirtualTrack,
    ) -> Result<VirtualPublisher, ApiError> {
        self.no_sfu()?;
        if self.is_draining() {
            return Err(ApiError::Unavailable("the node is draining".into()));
        }
        self.hosted_here(&request.meeting, request.grants.create)
            .await?;
        let meeting = self
            .meeting_ref(&request.meeting, request.grants.create, &request.tenant)
            .await
            .map_err(|e| match e.code {
                SignalErrorCode::MeetingNotFound => {
                    ApiError::NotFound(format!("meeting {}", request.meeting))
                }
                SignalErrorCode::NodeUnavailable => ApiError::Unavailable(e.message),
                _ => ApiError::Internal(e.message),
            })?;
        ractor::call!(meeting, |reply| MeetingMsg::JoinVirtual {
            request: request.clone(),
            track: track.clone(),
            reply,
        })
        .map_err(|_| ApiError::NotFound(format!("meeting {}", request.meeting)))?
    }

    /// A copy of a track's packets; `queue` packets are buffered for a slow reader.
    pub async fn tap_track(
        &self,
        meeting: &MeetingId,
        track: &TrackId,
        queue: usize,
    ) -> Result<TapStart, ApiError> {
        let record = self.record(meeting)?;
        ractor::call!(record.actor, |reply| MeetingMsg::Tap {
            track: track.clone(),
            queue,
            reply,
        })
        .map_err(|_| ApiError::NotFound(format!("meeting {meeting}")))?
    }

    /// Live participants across meetings (from the actor registry, no actor hop).
    pub fn participant_count(&self) -> usize {
        self.shared.actors.count(ActorKind::Participant)
            + self.shared.actors.count(ActorKind::VirtualParticipant)
    }

    pub fn is_draining(&self) -> bool {
        self.shared.draining.load(Ordering::Acquire)
    }

    /// Starts draining: no new joins or meetings, clients are told, meetings end by
    /// themselves or at `deadline`. Returns the meetings and participants live now.
    /// [`Node::drained`] resolves once every meeting has ended.
    pub fn drain(&self, deadline: Duration) -> (usize, usize) {
        let counts = (self.meeting_count(), self.participant_count());
        if self.shared.draining.swap(true, Ordering::AcqRel) {
            return counts;
        }
        tracing::warn!(
            meetings = counts.0,
            participants = counts.1,
            ?deadline,
            "draining"
        );
        for id in self.shared.registry.ids() {
            if let Some(record) = self.shared.registry.get(&id) {
                let _ = record.actor.send_message(MeetingMsg::Drain(deadline));
            }
        }
        let node = self.clone();
        tokio::spawn(async move {
            let end = tokio::time::Instant::now() + deadline;
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                if node.shared.registry.is_empty() {
                    break;
                }
                if tokio::time::Instant::now() >= end {
                    // In a cluster the remaining meetings move: the leases go first, then
                    // the participants are told to reconnect (and land on another node).
                    let ids = node.shared.registry.ids();
                    let reason = match &node.shared.cluster {
                        Some(cluster) if !cluster.has_left() => {
                            tracing::warn!(
                                "drain deadline passed; moving the remaining meetings to other nodes"
                            );
                            cluster.leave().await;
                            EndReason::Moved
                        }
                        Some(_) => EndReason::Moved,
                        None => {
                            tracing::warn!("drain deadline passed; ending the remaining meetings");
                            EndReason::NodeShutdown
                        }
                    };
                    for id in ids {
                        if let Some(record) = node.shared.registry.get(&id) {
                            let _ = record.actor.send_message(MeetingMsg::End(reason));
                        }
                    }
                }
            }
            tracing::info!("drained: no meetings left");
            let _ = node.drained.send(true);
        });
        counts
    }

    /// Resolves once a drain has ended every meeting.
    pub async fn drained(&self) {
        let mut rx = self.drained.subscribe();
        let _ = rx.wait_for(|done| *done).await;
    }

    /// A meeting's current state, if it runs.
    pub async fn meeting(&self, id: &MeetingId) -> Option<MeetingSnapshot> {
        let record = self.shared.registry.get(id)?;
        ractor::call!(record.actor, MeetingMsg::Snapshot).ok()
    }

    /// Drill and test hook: makes one participant's actor panic, as a bug would.
    pub fn inject_participant_fault(
        &self,
        meeting: &MeetingId,
        participant: &ParticipantId,
    ) -> bool {
        self.inject_into_participant(meeting, participant, false)
    }

    /// Drill and test hook: the next media datagram of a participant that a UDP driver
    /// handles on its fast path panics there. The driver carries on; the participant fails
    /// alone, as with [`Self::inject_participant_fault`].
    pub fn inject_participant_media_fault(
        &self,
        meeting: &MeetingId,
        participant: &ParticipantId,
    ) -> bool {
        self.inject_into_participant(meeting, participant, true)
    }

    fn inject_into_participant(
        &self,
        meeting: &MeetingId,
        participant: &ParticipantId,
        on_media_path: bool,
    ) -> bool {
        self.shared.registry.get(meeting).is_some_and(|r| {
            r.actor
                .send_message(MeetingMsg::InjectFault {
                    participant: Some(participant.clone()),
                    on_media_path,
                })
                .is_ok()
        })
    }

    /// Drill and test hook: makes a meeting's actor panic; its supervisor restarts it.
    pub fn inject_meeting_fault(&self, meeting: &MeetingId) -> bool {
        self.shared.registry.get(meeting).is_some_and(|r| {
            r.actor
                .send_message(MeetingMsg::InjectFault {
                    participant: None,
                    on_media_path: false,
                })
                .is_ok()
        })
    }

    /// Ends every meeting and stops the tree.
    pub async fn shutdown(&self) {
        // In a cluster the meetings move: the leases go first (so the clients, told to
        // reconnect, are placed on other nodes), then the participants are told.
        let reason = match &self.shared.cluster {
            Some(cluster) => {
                self.shared.draining.store(true, Ordering::Release);
                cluster.leave().await;
                crate::domain::EndReason::Moved
            }
            None => crate::domain::EndReason::NodeShutdown,
        };
        for id in self.shared.registry.ids() {
            if let Some(record) = self.shared.registry.get(&id) {
                let _ = record.actor.send_message(MeetingMsg::End(reason));
            }
        }
        let _ = self
            .supervisor
            .stop_and_wait(Some("shutdown".into()), Some(Duration::from_secs(5)))
            .await;
        // Every interval has ended with its actor: write the last of them.
        if let Some(billing) = &self.shared.billing {
            match tokio::time::timeout(Duration::from_secs(5), billing.tick_once()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "cannot write the last usage at shutdown; the next start closes it at its checkpoint")
                }
                Err(_) => tracing::error!(
                    "the ledger did not answer at shutdown; the next start closes open usage at its checkpoint"
                ),
            }
        }
    }

    /// The billing state, if usage is metered.
    pub fn billing(&self) -> Option<&Arc<Billing>> {
        self.shared.billing.as_ref()
    }

    /// The webhook sender's state, if usage is metered.
    pub fn webhooks(&self) -> Option<&Arc<Webhooks>> {
        self.shared.webhooks.as_ref()
    }
}

fn check_metadata(metadata: &str) -> Result<(), ApiError> {
    if metadata.len() > MAX_MEETING_METADATA {
        return Err(ApiError::Invalid(format!(
            "metadata: at most {MAX_MEETING_METADATA} bytes"
        )));
    }
    Ok(())
}

/// A port free for both UDP and TCP on `ip` (checked by binding both, then released).
fn shared_ephemeral_port(ip: std::net::IpAddr) -> std::io::Result<u16> {
    let mut last = std::io::Error::other("no attempt");
    for _ in 0..64 {
        let tcp = std::net::TcpListener::bind((ip, 0))?;
        let port = tcp.local_addr()?.port();
        match std::net::UdpSocket::bind((ip, port)) {
            Ok(_) => return Ok(port),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// A placement failure as the client sees it.
fn place_error(e: crate::cluster::PlaceError) -> SignalError {
    use crate::cluster::PlaceError;
    match e {
        PlaceError::NotFound => SignalError::fatal(
            SignalErrorCode::MeetingNotFound,
            "the meeting does not exist and the token may not create it",
        ),
        e => SignalError::fatal(SignalErrorCode::NodeUnavailable, e.to_string()),
    }
}
