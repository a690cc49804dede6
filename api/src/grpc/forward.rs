//! Calls about a meeting another node of the cluster hosts are forwarded to that node over
//! its gRPC API, for gRPC and REST callers alike (the REST API calls the same operations).
//!
//! The forwarded call carries a token with the caller's own claims (same API key, scope,
//! grants and times), re-signed by this node with that key's secret: the host authorizes
//! it exactly as if the caller had come to it, and bills the same key. The
//! `x-hearth-forwarded-by` header marks it; a marked call is answered where it lands, so
//! a forward never loops.

use std::time::Duration;

use hearth_actors::MeetingId;
use hearth_actors::cluster::Placement;
use hearth_proto::v1 as pb;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

use super::{Caller, FORWARDED_BY};
use crate::server::AppState;
use crate::token;

/// How long a forwarded call may take (the host answers in milliseconds).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// Channels to other nodes' gRPC APIs, by URL (opened on first use, reused).
#[derive(Default)]
pub struct Peers {
    channels: std::sync::Mutex<std::collections::HashMap<String, Channel>>,
}

impl Peers {
    fn channel(&self, url: &str) -> Result<Channel, Status> {
        let mut channels = self
            .channels
            .lock()
            .map_err(|_| Status::internal("the peer channel table is poisoned"))?;
        if let Some(c) = channels.get(url) {
            return Ok(c.clone());
        }
        // Nodes come and go with new addresses; the table never outgrows a cluster.
        if channels.len() >= MAX_PEERS {
            channels.clear();
        }
        let channel = endpoint(url)?.timeout(FORWARD_TIMEOUT).connect_lazy();
        channels.insert(url.to_owned(), channel.clone());
        Ok(channel)
    }
}

/// Peers remembered at once (more: the table starts over).
const MAX_PEERS: usize = 64;

/// A connection to a node's gRPC API: HTTP/2 keep-alive pings, so a host that vanishes
/// without a reset (a partition, a power cut) ends the calls on it within seconds.
fn endpoint(url: &str) -> Result<Endpoint, Status> {
    Ok(Endpoint::from_shared(url.to_owned())
        .map_err(|e| Status::internal(format!("node URL {url}: {e}")))?
        .connect_timeout(Duration::from_secs(2))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .tcp_nodelay(true))
}

/// The node a call is forwarded to.
pub struct Owner {
    pub node_id: String,
    /// Shared by the unary calls to this node.
    channel: Channel,
    grpc_url: String,
    bearer: AsciiMetadataValue,
    me: AsciiMetadataValue,
}

impl Owner {
    /// `message` as a request to the host: its token and the forwarded mark.
    pub fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", self.bearer.clone());
        request.metadata_mut().insert(FORWARDED_BY, self.me.clone());
        request.set_timeout(FORWARD_TIMEOUT);
        request
    }

    pub fn meetings(&self) -> pb::meeting_service_client::MeetingServiceClient<Channel> {
        pb::meeting_service_client::MeetingServiceClient::new(self.channel.clone())
    }

    pub fn participants(
        &self,
    ) -> pb::participant_service_client::ParticipantServiceClient<Channel> {
        pb::participant_service_client::ParticipantServiceClient::new(self.channel.clone())
    }

    /// For a stream passed through: a connection of its own (one HTTP/2 connection per
    /// peer would put every stream under one flow-control window and one stream limit,
    /// so a client that stops reading would stall every call to that node).
    fn stream_channel(&self) -> Result<Channel, Status> {
        Ok(endpoint(&self.grpc_url)?.connect_lazy())
    }

    pub fn media(&self) -> Result<pb::media_service_client::MediaServiceClient<Channel>, Status> {
        Ok(pb::media_service_client::MediaServiceClient::new(
            self.stream_channel()?,
        ))
    }

    pub fn events(&self) -> Result<pb::event_service_client::EventServiceClient<Channel>, Status> {
        Ok(pb::event_service_client::EventServiceClient::new(
            self.stream_channel()?,
        ))
    }

    /// Like [`Owner::request`], for a stream that lasts: no deadline.
    pub fn stream_request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", self.bearer.clone());
        request.metadata_mut().insert(FORWARDED_BY, self.me.clone());
        request
    }
}

/// Where a call about `meeting` is answered: None here, or the node hosting it.
pub async fn owner_of(
    state: &AppState,
    caller: &Caller,
    meeting: &MeetingId,
) -> Result<Option<Owner>, Status> {
    let Some(cluster) = state.node.cluster() else {
        return Ok(None);
    };
    if caller.forwarded_by.is_some() || state.node.meeting_ids().contains(meeting) {
        return Ok(None);
    }
    let owner = cluster
        .owner(meeting)
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let Some((node_id, boot)) = owner else {
        return Ok(None);
    };
    if node_id == cluster.config.node_id {
        return Ok(None);
    }
    // A lease of a node that is gone (or of an older life of it) is answered here: the
    // meeting does not run anywhere.
    let nodes = cluster.nodes();
    let Some(node) = nodes.iter().find(|n| n.id == node_id && n.boot == boot) else {
        return Ok(None);
    };
    owner_at(state, caller, meeting, &node.id, &node.grpc_url).map(Some)
}

/// Where a new meeting goes: None here, or the node the placement chose (whose lease is
/// taken for it). A meeting that exists already is answered by its host.
pub async fn place_new(
    state: &AppState,
    caller: &Caller,
    meeting: &MeetingId,
) -> Result<Option<Owner>, Status> {
    if state.node.cluster().is_none() {
        return Ok(None);
    }
    match state.node.place(meeting, true).await {
        Ok(Placement::Local) => Ok(None),
        // Forwarded here, yet placed elsewhere (the lease moved meanwhile, or a client set
        // the header itself): never a second hop, never a copy outside the placement.
        Ok(Placement::Remote { node_id, .. }) if caller.forwarded_by.is_some() => {
            Err(Status::unavailable(format!(
                "meeting {meeting} is placed on node {node_id}; retry the call"
            )))
        }
        Ok(Placement::Remote { node_id, .. }) => {
            let nodes = state.node.cluster().map(|c| c.nodes()).unwrap_or_default();
            let node = nodes.iter().find(|n| n.id == node_id).ok_or_else(|| {
                Status::unavailable(format!(
                    "meeting {meeting} was placed on node {node_id}, not listed here yet; retry"
                ))
            })?;
            owner_at(state, caller, meeting, &node.id, &node.grpc_url).map(Some)
        }
        Err(e) => Err(Status::unavailable(e.message)),
    }
}

fn owner_at(
    state: &AppState,
    caller: &Caller,
    meeting: &MeetingId,
    node_id: &str,
    grpc_url: &str,
) -> Result<Owner, Status> {
    let secret = state.keys.secret(&caller.claims.iss).ok_or_else(|| {
        Status::internal("the caller's API key is not known to this node any more")
    })?;
    // The caller's claims exactly as they came (times included): the host judges the token
    // as it would the caller's own. A lifetime cut short on this node's clock would expire
    // early on a host whose clock runs ahead (tests/tests/cluster.rs, skewed clocks).
    let bearer = MetadataValue::try_from(format!("Bearer {}", token::mint(&caller.claims, secret)))
        .map_err(|_| Status::internal("the forwarded token is not ASCII"))?;
    let me = state
        .node
        .cluster()
        .map(|c| c.config.node_id.clone())
        .unwrap_or_default();
    metrics::counter!("hearth_cluster_forwarded_calls_total").increment(1);
    tracing::debug!(%meeting, node = node_id, "call forwarded to the meeting's host");
    Ok(Owner {
        node_id: node_id.to_owned(),
        channel: state.peers.channel(grpc_url)?,
        grpc_url: grpc_url.to_owned(),
        bearer,
        me: MetadataValue::try_from(me).unwrap_or_else(|_| MetadataValue::from_static("node")),
    })
}

/// Every other live node of the cluster, to ask for its part of a cluster-wide list (none
/// for a forwarded call: the node that forwarded it asks the others itself).
pub fn other_nodes(state: &AppState, caller: &Caller) -> Vec<Owner> {
    let Some(cluster) = state.node.cluster() else {
        return Vec::new();
    };
    if caller.forwarded_by.is_some() {
        return Vec::new();
    }
    let meeting = MeetingId::parse("cluster-list").unwrap_or_else(|| unreachable!());
    cluster
        .nodes()
        .iter()
        .filter(|n| n.id != cluster.config.node_id)
        .filter_map(|n| match owner_at(state, caller, &meeting, &n.id, &n.grpc_url) {
            Ok(owner) => Some(owner),
            Err(e) => {
                tracing::warn!(node = %n.id, error = %e, "cannot ask a node for its part of a list");
                None
            }
        })
        .collect()
}

/// The host's answer, or its refusal as it gave it.
pub fn answer<T>(result: Result<tonic::Response<T>, Status>) -> Result<T, Status> {
    result.map(tonic::Response::into_inner)
}
