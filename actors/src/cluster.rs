//! A cluster of nodes on one Redis: this node's entry in the registry, the leases by which
//! a node hosts a meeting, and placement.
//!
//! ```text
//! {prefix}nodes            SET   of node ids (members whose hash expired are swept)
//! {prefix}node:{id}        HASH  boot, region, http, grpc, media, turn, state, cpu, ...
//!                                expires node_ttl after the node's last heartbeat
//! {prefix}meeting:{id}     STRING "{node id}|{boot id}": the host's lease, expires `lease`
//!                                after the host last renewed it
//! {prefix}meeting:{id}:info HASH  what a new host needs to go on with the meeting (its API
//!                                key, settings, metadata), written by the host when they
//!                                change, expiring with the lease
//! ```
//!
//! Rules, all enforced inside Redis by Lua scripts (each runs atomically, so two nodes
//! racing on one meeting end with one host):
//! - A node registers under its stable id and a boot id made at each start. A second
//!   process with an id that is alive in Redis is refused until that entry expires.
//! - A meeting is hosted where its lease points, if that node's entry is alive with the same
//!   boot id. Otherwise the lease is stale (the node died, or came back as a new boot) and
//!   the next join places the meeting again.
//! - Placement picks a candidate from this node's view of the cluster (pluggable
//!   [`Selector`]); the script takes it only if the candidate is alive and active.
//! - The host renews the leases of the meetings it runs every heartbeat, re-claims a lease
//!   that vanished (Redis restarted empty), and gives up a meeting whose lease another node
//!   holds (its participants are told to reconnect and land on the real host).
//! - Expiry is Redis's clock alone: nodes' clocks may disagree without effect.
//!
//! Redis unreachable: the node keeps serving its meetings and refuses to place new ones
//! (`NODE_UNAVAILABLE`, "the cluster store is unreachable"); the [`ClusterActor`] reconnects
//! every heartbeat and counts it.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Script};

use crate::domain::EndReason;
use crate::ids::MeetingId;
use crate::meeting::MeetingMsg;
use crate::node::NodeShared;
use crate::registry::{ActorKind, ActorRegistry, ActorSpec, Registration};

/// How this node takes part in a cluster.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// `redis://host:port/db` (or `rediss://`, `redis+unix://`).
    pub redis_url: String,
    /// Prefix of every key (several clusters can share one Redis).
    pub prefix: String,
    /// Stable across restarts (the data directory's node id).
    pub node_id: String,
    /// A label; [`Selector::RegionFirst`] prefers nodes of the entry node's region.
    pub region: String,
    /// Base URL of this node's HTTP port as clients reach it (`http://10.0.0.2:7880`).
    pub http_url: String,
    /// Where other nodes and `hearthctl` reach this node's gRPC API.
    pub grpc_url: String,
    /// The media address advertised in ICE candidates.
    pub media: String,
    /// The TURN address, or empty.
    pub turn: String,
    pub selector: Selector,
    /// How often the node refreshes its entry and renews its leases.
    pub heartbeat: Duration,
    /// A node that has not refreshed its entry for this long is gone.
    pub node_ttl: Duration,
    /// A meeting whose host has not renewed its lease for this long can be placed again.
    pub lease: Duration,
}

impl ClusterConfig {
    /// Defaults for everything but the addresses: 1 s heartbeat, 3 s node TTL, 10 s lease.
    pub fn new(redis_url: impl Into<String>, node_id: impl Into<String>) -> Self {
        Self {
            redis_url: redis_url.into(),
            prefix: "hearth:".into(),
            node_id: node_id.into(),
            region: String::new(),
            http_url: String::new(),
            grpc_url: String::new(),
            media: String::new(),
            turn: String::new(),
            selector: Selector::default(),
            heartbeat: Duration::from_secs(1),
            node_ttl: Duration::from_secs(3),
            lease: Duration::from_secs(10),
        }
    }
}

/// How a new meeting's node is chosen among the live, active nodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Selector {
    /// CPU (in 10 % steps), then meetings (placed but not yet reported count too), then
    /// participants.
    #[default]
    LeastLoaded,
    /// Participants, then meetings.
    FewestParticipants,
    /// Nodes of this node's region first, then [`Selector::LeastLoaded`].
    RegionFirst,
}

impl Selector {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "least-loaded" => Some(Selector::LeastLoaded),
            "fewest-participants" => Some(Selector::FewestParticipants),
            "region-first" => Some(Selector::RegionFirst),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Selector::LeastLoaded => "least-loaded",
            Selector::FewestParticipants => "fewest-participants",
            Selector::RegionFirst => "region-first",
        }
    }

    /// The best of `nodes` for a new meeting, skipping `excluded` and draining nodes.
    pub fn pick<'a>(
        self,
        nodes: &'a [NodeInfo],
        own_region: &str,
        excluded: &[String],
    ) -> Option<&'a NodeInfo> {
        let usable = nodes
            .iter()
            .filter(|n| !n.draining && !excluded.contains(&n.id));
        let least_loaded = |n: &NodeInfo| {
            (
                (n.cpu * 10.0).floor() as u64,
                n.meetings + n.pending,
                n.participants,
            )
        };
        match self {
            Selector::LeastLoaded => usable.min_by_key(|n| (least_loaded(n), n.id.clone())),
            Selector::FewestParticipants => usable.min_by_key(|n| {
                (
                    n.participants + n.pending,
                    n.meetings + n.pending,
                    n.id.clone(),
                )
            }),
            Selector::RegionFirst => {
                usable.min_by_key(|n| (n.region != own_region, least_loaded(n), n.id.clone()))
            }
        }
    }
}

/// One node as the registry shows it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeInfo {
    pub id: String,
    /// Made at each start: an entry with another boot id is another life of the node.
    pub boot: String,
    pub region: String,
    pub http_url: String,
    pub grpc_url: String,
    pub media: String,
    pub turn: String,
    /// Takes no new meetings.
    pub draining: bool,
    /// Process CPU over the last heartbeat, as a fraction of the machine (0..1).
    pub cpu: f64,
    pub participants: u64,
    pub meetings: u64,
    /// Meetings placed on the node since its last heartbeat (by any node).
    pub pending: u64,
    pub packets_per_sec: u64,
    /// Unix milliseconds (the node's own clock; shown, never compared).
    pub started_at_ms: u64,
    pub version: String,
}

impl NodeInfo {
    fn from_fields(fields: &[(String, String)]) -> Option<NodeInfo> {
        let mut n = NodeInfo::default();
        for (k, v) in fields {
            let num = || v.parse::<u64>().unwrap_or(0);
            match k.as_str() {
                "id" => n.id = v.clone(),
                "boot" => n.boot = v.clone(),
                "region" => n.region = v.clone(),
                "http" => n.http_url = v.clone(),
                "grpc" => n.grpc_url = v.clone(),
                "media" => n.media = v.clone(),
                "turn" => n.turn = v.clone(),
                "state" => n.draining = v != "active",
                "cpu_permille" => n.cpu = num() as f64 / 1000.0,
                "participants" => n.participants = num(),
                "meetings" => n.meetings = num(),
                "pending" => n.pending = num(),
                "pps" => n.packets_per_sec = num(),
                "started_ms" => n.started_at_ms = num(),
                "version" => n.version = v.clone(),
                _ => {}
            }
        }
        (!n.id.is_empty() && !n.boot.is_empty()).then_some(n)
    }
}

/// What a meeting's next host starts it with (it moved: its host died or left).
#[derive(Clone, Debug, PartialEq)]
pub struct MeetingInfo {
    /// The API key it is billed to.
    pub tenant: String,
    pub settings: crate::domain::MeetingSettings,
    pub metadata: String,
}

impl MeetingInfo {
    fn fields(&self) -> Vec<(&'static str, String)> {
        let t = &self.settings.transcription;
        vec![
            ("tenant", self.tenant.clone()),
            (
                "max_participants",
                self.settings.max_participants.to_string(),
            ),
            (
                "empty_timeout_ms",
                self.settings.empty_timeout.as_millis().to_string(),
            ),
            ("captions", if t.enabled { "1" } else { "0" }.to_owned()),
            (
                "language",
                t.language
                    .map(|l| l.as_str().to_owned())
                    .unwrap_or_default(),
            ),
            (
                "engine",
                t.engine.map(|e| e.as_str().to_owned()).unwrap_or_default(),
            ),
            ("metadata", self.metadata.clone()),
        ]
    }

    /// Read back; None if a field is missing or does not parse (then the meeting starts
    /// with the node's defaults, as a new one would).
    fn from_fields(fields: &[(String, String)]) -> Option<MeetingInfo> {
        let get = |k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let max_participants = get("max_participants")?.parse().ok()?;
        let empty_timeout = Duration::from_millis(get("empty_timeout_ms")?.parse().ok()?);
        let language = match get("language")? {
            "" => None,
            l => Some(crate::domain::Language::parse(l)?),
        };
        let engine = match get("engine")? {
            "" => None,
            e => Some(crate::domain::EngineKind::parse(e)?),
        };
        Some(MeetingInfo {
            tenant: get("tenant")?.to_owned(),
            settings: crate::domain::MeetingSettings {
                max_participants,
                empty_timeout,
                transcription: crate::domain::TranscriptionSettings {
                    enabled: get("captions")? == "1",
                    language,
                    engine,
                },
            },
            metadata: get("metadata")?.to_owned(),
        })
    }
}

/// Where a meeting is hosted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Here.
    Local,
    /// On another node: its id and the base URL of its HTTP port.
    Remote { node_id: String, http_url: String },
}

/// Why a meeting could not be placed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlaceError {
    #[error("the cluster store (Redis) is unreachable: new meetings cannot be placed")]
    Unavailable,
    #[error("this node is not registered in the cluster yet ({0})")]
    NotRegistered(&'static str),
    #[error("no node of the cluster takes new meetings (all draining or gone)")]
    NoCapacity,
    #[error("the meeting does not run anywhere in the cluster")]
    NotFound,
}

/// What the node's own logic reads back (the rest is counted on `/metrics` only).
#[derive(Default)]
pub struct ClusterStats {
    /// Connections made to Redis (a new one may be to a Redis restarted empty).
    pub connects: AtomicU64,
    /// Starts of the cluster actor (restarts = starts - 1).
    pub actor_starts: AtomicU64,
}

/// What the node and its actors share about the cluster.
pub struct Cluster {
    pub config: ClusterConfig,
    /// This life of the node.
    pub boot: String,
    client: redis::Client,
    conn: Mutex<Option<MultiplexedConnection>>,
    /// Live nodes at the last heartbeat (this one included once registered).
    nodes: ArcSwap<Vec<NodeInfo>>,
    registered: AtomicBool,
    /// Set at shutdown: no more heartbeats.
    left: AtomicBool,
    /// Held by a heartbeat while it talks to Redis ([`Cluster::leave`] waits for it).
    heartbeat_lock: tokio::sync::Mutex<()>,
    /// Why the last heartbeat did not register (empty when it did).
    problem: Mutex<&'static str>,
    pub stats: ClusterStats,
    /// Drill: the actor's next message panics.
    fault: AtomicBool,
    started_at: SystemTime,
}

const PLACE: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur then
  local sep = string.find(cur, '|', 1, true)
  if sep then
    local id = string.sub(cur, 1, sep - 1)
    local boot = string.sub(cur, sep + 1)
    local node = redis.call('HMGET', ARGV[5] .. id, 'boot', 'http')
    if node[1] == boot then return {'owner', id, boot, node[2] or ''} end
  end
end
if (not cur) and ARGV[4] ~= '1' then return {'none'} end
local cand = redis.call('HMGET', ARGV[5] .. ARGV[1], 'boot', 'http', 'state')
if cand[1] ~= ARGV[2] or cand[3] ~= 'active' then return {'badcandidate'} end
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. ARGV[2], 'PX', ARGV[3])
redis.call('HINCRBY', ARGV[5] .. ARGV[1], 'pending', 1)
if cur then return {'moved', ARGV[1], ARGV[2], cand[2] or ''} end
return {'placed', ARGV[1], ARGV[2], cand[2] or ''}
"#;

const RENEW: &str = r#"
local lost = {}
for i, key in ipairs(KEYS) do
  local cur = redis.call('GET', key)
  if cur == ARGV[1] then
    redis.call('PEXPIRE', key, ARGV[2])
    redis.call('PEXPIRE', key .. ':info', ARGV[2])
  elseif not cur then
    redis.call('SET', key, ARGV[1], 'PX', ARGV[2])
  else
    table.insert(lost, i)
  end
end
return lost
"#;

const RELEASE: &str = r#"
local n = 0
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then n = n + redis.call('DEL', key, key .. ':info') end
end
return n
"#;

const REGISTER: &str = r#"
local cur = redis.call('HGET', KEYS[1], 'boot')
if cur and cur ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 4, #ARGV))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('SADD', KEYS[2], ARGV[1])
return 1
"#;

const UNREGISTER: &str = r#"
if redis.call('HGET', KEYS[1], 'boot') == ARGV[2] then
  redis.call('DEL', KEYS[1])
  redis.call('SREM', KEYS[2], ARGV[1])
  return 1
end
return 0
"#;

static PLACE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(PLACE));
static RENEW_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(RENEW));
static RELEASE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(RELEASE));
static REGISTER_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(REGISTER));

/// Bounds every Redis command (a paused Redis must not stall a join for long).
const REDIS_TIMEOUT: Duration = Duration::from_secs(1);

impl Cluster {
    /// Checks the URL; connects later (the actor does, every heartbeat until it works).
    pub fn new(config: ClusterConfig) -> Result<Arc<Cluster>, String> {
        let client = redis::Client::open(config.redis_url.as_str())
            .map_err(|e| format!("--redis-url {}: {e}", config.redis_url))?;
        if config.node_id.is_empty() || config.node_id.contains('|') {
            return Err(format!(
                "the node id `{}` cannot be used in a cluster (empty or contains `|`)",
                config.node_id
            ));
        }
        let boot: [u8; 8] = rand::random();
        Ok(Arc::new(Cluster {
            boot: boot.iter().map(|b| format!("{b:02x}")).collect(),
            client,
            conn: Mutex::new(None),
            nodes: ArcSwap::from_pointee(Vec::new()),
            registered: AtomicBool::new(false),
            left: AtomicBool::new(false),
            heartbeat_lock: tokio::sync::Mutex::new(()),
            problem: Mutex::new("not connected yet"),
            stats: ClusterStats::default(),
            fault: AtomicBool::new(false),
            started_at: SystemTime::now(),
            config,
        }))
    }

    fn node_key(&self, id: &str) -> String {
        format!("{}node:{id}", self.config.prefix)
    }

    fn meeting_key(&self, id: &str) -> String {
        format!("{}meeting:{id}", self.config.prefix)
    }

    fn nodes_key(&self) -> String {
        format!("{}nodes", self.config.prefix)
    }

    /// `{node id}|{boot id}`: what this node's leases hold.
    fn owner_value(&self) -> String {
        format!("{}|{}", self.config.node_id, self.boot)
    }

    /// Live nodes as of the last heartbeat.
    pub fn nodes(&self) -> Arc<Vec<NodeInfo>> {
        self.nodes.load_full()
    }

    /// Whether the last heartbeat registered this node.
    pub fn is_registered(&self) -> bool {
        self.registered.load(Ordering::Acquire)
    }

    /// Whether the node left the cluster (it is shutting down).
    pub fn has_left(&self) -> bool {
        self.left.load(Ordering::Acquire)
    }

    /// Empty when registered; else why not.
    pub fn problem(&self) -> &'static str {
        self.problem.lock().map(|p| *p).unwrap_or("")
    }

    /// Drill: the cluster actor fails on its next message.
    pub fn inject_fault(&self) {
        self.fault.store(true, Ordering::Release);
    }

    fn connection(&self) -> Option<MultiplexedConnection> {
        self.conn.lock().ok().and_then(|c| c.clone())
    }

    /// A command failed: the connection is dropped (the actor makes a new one).
    /// Any failed command drops the connection (the next heartbeat makes a new one): an
    /// error that is not about the socket (a replica promoted away, `READONLY`, a script
    /// refused) would otherwise repeat on every heartbeat of the same connection.
    fn failed(&self, e: &redis::RedisError) {
        metrics::counter!("hearth_cluster_redis_errors_total").increment(1);
        tracing::debug!(error = %e, "cluster store command failed; reconnecting");
        if let Ok(mut c) = self.conn.lock() {
            *c = None;
        }
        self.registered.store(false, Ordering::Release);
        self.set_problem("the cluster store (Redis) is unreachable");
    }

    fn set_problem(&self, p: &'static str) {
        if let Ok(mut cur) = self.problem.lock() {
            *cur = p;
        }
    }

    async fn connect(&self) -> Result<(), redis::RedisError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT));
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        self.stats.connects.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("hearth_cluster_redis_connects_total").increment(1);
        if let Ok(mut c) = self.conn.lock() {
            *c = Some(conn);
        }
        Ok(())
    }

    /// Where `meeting` is hosted, placing it if it runs nowhere (and `create` allows) or
    /// if its host is gone (whatever `create` says: the meeting existed).
    /// A draining node (`draining`) never picks itself.
    pub async fn place(
        &self,
        meeting: &MeetingId,
        create: bool,
        draining: bool,
    ) -> Result<Placement, PlaceError> {
        let Some(mut conn) = self.connection() else {
            return Err(PlaceError::Unavailable);
        };
        let script = &*PLACE_SCRIPT;
        let mut excluded = Vec::new();
        if draining {
            excluded.push(self.config.node_id.clone());
        }
        let nodes = self.nodes();
        for _ in 0..4 {
            let (cand_id, cand_boot) =
                match self
                    .config
                    .selector
                    .pick(&nodes, &self.config.region, &excluded)
                {
                    Some(n) => (n.id.clone(), n.boot.clone()),
                    // Not listed yet (the first heartbeat lists): this node, if registered.
                    None if excluded.is_empty() && self.is_registered() => {
                        (self.config.node_id.clone(), self.boot.clone())
                    }
                    None => break,
                };
            let reply: Vec<String> = script
                .key(self.meeting_key(meeting.as_str()))
                .arg(&cand_id)
                .arg(&cand_boot)
                .arg(self.config.lease.as_millis() as u64)
                .arg(if create { "1" } else { "0" })
                .arg(self.node_key(""))
                .invoke_async(&mut conn)
                .await
                .map_err(|e| {
                    self.failed(&e);
                    PlaceError::Unavailable
                })?;
            match reply.first().map(String::as_str) {
                Some("none") => return Err(PlaceError::NotFound),
                Some("badcandidate") => excluded.push(cand_id),
                Some(kind @ ("owner" | "placed" | "moved")) if reply.len() >= 4 => {
                    if kind != "owner" {
                        self.count_placement(kind, &reply[1]);
                    }
                    return Ok(self.placement(&reply[1], &reply[2], &reply[3]));
                }
                _ => {
                    tracing::error!(?reply, "unexpected answer of the placement script");
                    return Err(PlaceError::Unavailable);
                }
            }
        }
        if !self.is_registered() {
            return Err(PlaceError::NotRegistered(self.problem()));
        }
        Err(PlaceError::NoCapacity)
    }

    fn count_placement(&self, kind: &str, node: &str) {
        let moved = kind == "moved";
        metrics::counter!("hearth_cluster_placements_total", "kind" => if moved { "moved" } else { "new" })
            .increment(1);
        // Our own view counts it until the next listing (a ramp spreads at once).
        let mut nodes = (*self.nodes()).clone();
        if let Some(n) = nodes.iter_mut().find(|n| n.id == node) {
            n.pending += 1;
            self.nodes.store(Arc::new(nodes));
        }
    }

    fn placement(&self, id: &str, boot: &str, http_url: &str) -> Placement {
        if id == self.config.node_id && boot == self.boot {
            Placement::Local
        } else {
            Placement::Remote {
                node_id: id.to_owned(),
                http_url: http_url.to_owned(),
            }
        }
    }

    /// A meeting ended here: its lease goes now, not at the next heartbeat, so nobody
    /// adopts the ended meeting in between (a joiner without the create grant would start
    /// it again). Skipped if the meeting runs here again meanwhile.
    pub fn release_soon(self: &Arc<Self>, meeting: MeetingId, node: Arc<NodeShared>) {
        if self.has_left() {
            return;
        }
        let cluster = Arc::clone(self);
        tokio::spawn(async move {
            if node.registry.get(&meeting).is_some() {
                return;
            }
            let Some(mut conn) = cluster.connection() else {
                return;
            };
            let released: Result<i64, _> = RELEASE_SCRIPT
                .key(cluster.meeting_key(meeting.as_str()))
                .arg(cluster.owner_value())
                .invoke_async(&mut conn)
                .await;
            if let Err(e) = released {
                cluster.failed(&e);
            }
        });
    }

    /// Takes the one-minute lock under which a single node closes a dead node's open usage.
    async fn lock_recovery(&self, node: &str) -> Result<bool, redis::RedisError> {
        let Some(mut conn) = self.connection() else {
            return Ok(false);
        };
        let taken: Option<String> = redis::cmd("SET")
            .arg(format!("{}recover:{node}", self.config.prefix))
            .arg(self.owner_value())
            .arg("NX")
            .arg("PX")
            .arg(60_000)
            .query_async(&mut conn)
            .await?;
        Ok(taken.is_some())
    }

    /// Whether `meeting`'s lease names this node, and what it was started with elsewhere
    /// (if it moved here): one round trip.
    pub async fn adoption(
        &self,
        meeting: &MeetingId,
    ) -> Result<(bool, Option<MeetingInfo>), PlaceError> {
        let mut conn = self.connection().ok_or(PlaceError::Unavailable)?;
        let key = self.meeting_key(meeting.as_str());
        let (owner, info): (Option<String>, Vec<(String, String)>) = redis::pipe()
            .cmd("GET")
            .arg(&key)
            .cmd("HGETALL")
            .arg(format!("{key}:info"))
            .query_async(&mut conn)
            .await
            .map_err(|e| {
                self.failed(&e);
                PlaceError::Unavailable
            })?;
        let mine = owner.as_deref() == Some(self.owner_value().as_str());
        Ok((mine, MeetingInfo::from_fields(&info)))
    }

    /// Records what the meetings hosted here were started with (only those that changed
    /// since the last call are written), expiring with their leases.
    async fn write_infos(
        &self,
        conn: &mut MultiplexedConnection,
        infos: &[(MeetingId, MeetingInfo)],
    ) -> Result<(), redis::RedisError> {
        if infos.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (id, info) in infos {
            let key = format!("{}:info", self.meeting_key(id.as_str()));
            pipe.cmd("HSET").arg(&key).arg(info.fields()).ignore();
            pipe.cmd("PEXPIRE")
                .arg(&key)
                .arg(self.config.lease.as_millis() as u64)
                .ignore();
        }
        pipe.query_async::<()>(conn).await
    }

    /// Who holds `meeting`'s lease now (`node id`, `boot id`), if anyone.
    pub async fn owner(&self, meeting: &MeetingId) -> Result<Option<(String, String)>, PlaceError> {
        let mut conn = self.connection().ok_or(PlaceError::Unavailable)?;
        let value: Option<String> = redis::cmd("GET")
            .arg(self.meeting_key(meeting.as_str()))
            .query_async(&mut conn)
            .await
            .map_err(|e| {
                self.failed(&e);
                PlaceError::Unavailable
            })?;
        Ok(value.and_then(|v| {
            v.split_once('|')
                .map(|(id, boot)| (id.to_owned(), boot.to_owned()))
        }))
    }

    /// One heartbeat: connect if needed, refresh this node's entry, renew leases, list the
    /// cluster. Returns the meetings whose lease another node holds now.
    async fn heartbeat(&self, beat: &Beat<'_>) -> Result<Vec<MeetingId>, redis::RedisError> {
        let _one_at_a_time = self.heartbeat_lock.lock().await;
        if self.left.load(Ordering::Acquire) {
            return Ok(Vec::new());
        }
        if self.connection().is_none() {
            self.connect().await?;
        }
        let Some(mut conn) = self.connection() else {
            return Ok(Vec::new());
        };
        let result = self.heartbeat_on(&mut conn, beat).await;
        if let Err(e) = &result {
            self.failed(e);
        }
        result
    }

    async fn heartbeat_on(
        &self,
        conn: &mut MultiplexedConnection,
        beat: &Beat<'_>,
    ) -> Result<Vec<MeetingId>, redis::RedisError> {
        let Beat {
            load,
            draining,
            hosted,
            released,
            registry,
            infos,
        } = *beat;
        let c = &self.config;
        let started_ms = self
            .started_at
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis()
            .to_string();
        let fields: [(&str, String); 15] = [
            ("id", c.node_id.clone()),
            ("boot", self.boot.clone()),
            ("region", c.region.clone()),
            ("http", c.http_url.clone()),
            ("grpc", c.grpc_url.clone()),
            ("media", c.media.clone()),
            ("turn", c.turn.clone()),
            (
                "state",
                if draining { "draining" } else { "active" }.to_owned(),
            ),
            (
                "cpu_permille",
                ((load.cpu * 1000.0).round() as u64).to_string(),
            ),
            ("participants", load.participants.to_string()),
            ("meetings", load.meetings.to_string()),
            ("pending", "0".to_owned()),
            ("pps", load.packets_per_sec.to_string()),
            ("started_ms", started_ms),
            ("version", env!("CARGO_PKG_VERSION").to_owned()),
        ];
        let register = &*REGISTER_SCRIPT;
        let mut call = register.key(self.node_key(&c.node_id));
        call.key(self.nodes_key())
            .arg(&c.node_id)
            .arg(&self.boot)
            .arg(c.node_ttl.as_millis() as u64);
        for (k, v) in &fields {
            call.arg(*k).arg(v);
        }
        let registered: i64 = call.invoke_async(conn).await?;
        let registered = registered == 1;
        if registered != self.registered.swap(registered, Ordering::AcqRel) {
            if registered {
                tracing::info!(node = %c.node_id, boot = %self.boot, "registered in the cluster");
            } else {
                tracing::error!(node = %c.node_id, "another process holds this node id in the cluster; waiting for its entry to expire");
            }
        }
        self.set_problem(if registered {
            ""
        } else {
            "another live process holds this node id"
        });

        let me = self.owner_value();
        let mut lost = Vec::new();
        // Renewed even when REGISTER was refused (another live process holds this id): the
        // answer tells which meetings that process, or anyone, took from this one.
        if !hosted.is_empty() {
            let renew = &*RENEW_SCRIPT;
            let mut call = renew.prepare_invoke();
            for m in hosted {
                call.key(self.meeting_key(m.as_str()));
            }
            call.arg(&me).arg(c.lease.as_millis() as u64);
            let indexes: Vec<usize> = call.invoke_async(conn).await?;
            for i in indexes {
                if let Some(m) = i.checked_sub(1).and_then(|i| hosted.get(i)) {
                    lost.push(m.clone());
                }
            }
        }
        self.write_infos(conn, infos).await?;
        // A meeting that ended and started again here since the tick looked keeps its lease.
        let released: Vec<&MeetingId> = released
            .iter()
            .filter(|m| registry.get(m).is_none())
            .collect();
        if !released.is_empty() {
            let release = &*RELEASE_SCRIPT;
            let mut call = release.prepare_invoke();
            for m in released {
                call.key(self.meeting_key(m.as_str()));
            }
            call.arg(&me);
            let _: i64 = call.invoke_async(conn).await?;
        }
        self.list(conn).await?;
        Ok(lost)
    }

    /// Reads every live node (and sweeps expired ids from the set).
    async fn list(&self, conn: &mut MultiplexedConnection) -> Result<(), redis::RedisError> {
        let ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.nodes_key())
            .query_async(conn)
            .await?;
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.cmd("HGETALL").arg(self.node_key(id));
        }
        let hashes: Vec<Vec<(String, String)>> = pipe.query_async(conn).await?;
        let mut nodes = Vec::with_capacity(ids.len());
        let mut gone = Vec::new();
        for (id, fields) in ids.iter().zip(hashes) {
            match NodeInfo::from_fields(&fields) {
                Some(n) => nodes.push(n),
                None => gone.push(id.clone()),
            }
        }
        if !gone.is_empty() {
            let _: i64 = redis::cmd("SREM")
                .arg(self.nodes_key())
                .arg(&gone)
                .query_async(conn)
                .await?;
        }
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        self.nodes.store(Arc::new(nodes));
        Ok(())
    }

    /// Leaves the cluster at shutdown: this node's entry and leases go at once, so its
    /// meetings can be placed again without waiting for expiry.
    ///
    /// The leases stay: with the entry gone they are stale, so the next join of each meeting
    /// places it elsewhere whatever its token's `create` grant says (a deleted lease would
    /// make the meeting unknown to participants who may not create it).
    pub async fn leave(&self) {
        self.left.store(true, Ordering::Release);
        // A heartbeat in flight finishes first: its REGISTER must not land after ours.
        let _quiet = self.heartbeat_lock.lock().await;
        if self.connection().is_none() && self.connect().await.is_err() {
            tracing::warn!(
                "cannot reach the cluster store to leave it; this node's entry expires by itself within seconds"
            );
            return;
        }
        let Some(mut conn) = self.connection() else {
            return;
        };
        let _: Result<i64, _> = Script::new(UNREGISTER)
            .key(self.node_key(&self.config.node_id))
            .key(self.nodes_key())
            .arg(&self.config.node_id)
            .arg(&self.boot)
            .invoke_async(&mut conn)
            .await;
        self.registered.store(false, Ordering::Release);
    }
}

/// What one heartbeat reports and renews.
#[derive(Clone, Copy)]
struct Beat<'a> {
    load: &'a Load,
    draining: bool,
    /// Meetings hosted here now (their leases are renewed).
    hosted: &'a [MeetingId],
    /// Meetings that ended here since the last heartbeat (their leases go).
    released: &'a [MeetingId],
    registry: &'a crate::node::MeetingRegistry,
    /// What changed of the hosted meetings' [`MeetingInfo`].
    infos: &'a [(MeetingId, MeetingInfo)],
}

/// This node's load, reported every heartbeat.
#[derive(Clone, Copy, Debug, Default)]
pub struct Load {
    pub cpu: f64,
    pub participants: u64,
    pub meetings: u64,
    pub packets_per_sec: u64,
}

/// Process CPU time between two samples, from `/proc/self/stat`.
struct CpuSampler {
    last: Option<(Instant, f64)>,
    cores: f64,
}

impl CpuSampler {
    fn new() -> Self {
        Self {
            last: None,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()) as f64,
        }
    }

    /// CPU used since the last call, as a fraction of the machine.
    fn sample(&mut self) -> f64 {
        let now = Instant::now();
        let Some(total) = process_cpu_seconds() else {
            return 0.0;
        };
        let fraction = match self.last {
            Some((at, before)) => {
                let wall = now.duration_since(at).as_secs_f64();
                if wall > 0.0 {
                    ((total - before) / wall / self.cores).clamp(0.0, 1.0)
                } else {
                    0.0
                }
            }
            None => 0.0,
        };
        self.last = Some((now, total));
        fraction
    }
}

/// This process's CPU time (user + system), in seconds, from `/proc/self/stat` (Linux).
pub fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces; fields after its ')' are plain.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After ')': state is field 3; utime and stime are fields 14 and 15.
    let utime: f64 = fields.nth(11)?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    Some((utime + stime) / ticks)
}

/// Clears a flag when dropped.
struct ClearOnDrop(Arc<AtomicBool>);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Closes the open usage of `candidates` (cluster nodes this node saw in the registry and
/// has not seen for [`DEAD_NODE_ABSENT`]) whose intervals stopped being checkpointed too; one
/// node does it, under a lock in Redis. A node that comes back later finds nothing left
/// open; a slice it still writes for the same start is ignored by the ledger's idempotency
/// keys, so nothing is billed twice. Runs as a task of its own, bounded in time: a slow
/// database never holds up the heartbeat.
async fn recover_dead_nodes(
    cluster: Arc<Cluster>,
    billing: Arc<crate::billing::Billing>,
    candidates: Vec<String>,
) {
    let cutoff = crate::billing::store::now_ms() - DEAD_NODE_USAGE.as_millis() as i64;
    let stale = match billing.ledger.stale_nodes(cutoff).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(error = %e, "cannot look for dead nodes' usage");
            return;
        }
    };
    for dead in stale {
        // Only cluster members gone from the registry (never a TURN-only node or a node
        // without a cluster sharing the database); and not if it is back meanwhile.
        if !candidates.contains(&dead)
            || dead == cluster.config.node_id
            || cluster.nodes().iter().any(|n| n.id == dead)
        {
            continue;
        }
        match cluster.lock_recovery(&dead).await {
            Ok(true) => match billing.recover_node(&dead).await {
                Ok(n) => {
                    metrics::counter!("hearth_cluster_recovered_intervals_total")
                        .increment(n as u64);
                    tracing::warn!(node = %dead, intervals = n, "closed the usage a dead node left open, at its last checkpoint");
                }
                Err(e) => {
                    tracing::error!(node = %dead, error = %e, "cannot close a dead node's usage")
                }
            },
            Ok(false) => {}
            Err(e) => {
                cluster.failed(&e);
                return;
            }
        }
    }
}

// ----- ClusterActor ------------------------------------------------------------------------

/// Owns the Redis connection: connects, heartbeats, renews and releases leases, gives up
/// meetings another node holds. Restarted by the node supervisor when it fails.
pub struct ClusterActor;

pub enum ClusterMsg {
    Tick,
}

pub struct ClusterState {
    cluster: Arc<Cluster>,
    node: Arc<NodeShared>,
    /// Meetings whose leases this node held at the last heartbeat.
    hosted: HashSet<MeetingId>,
    cpu: CpuSampler,
    packets: (Instant, u64),
    failing_since: Option<Instant>,
    /// When the last heartbeat started: ticks that pile up behind a slow one (Redis timing
    /// out) are skipped instead of bursting when it answers again.
    last_tick: Option<Instant>,
    /// Heartbeats since the last look for dead nodes' open usage.
    since_recovery: u32,
    /// What was last written of each hosted meeting's [`MeetingInfo`].
    written: std::collections::HashMap<MeetingId, MeetingInfo>,
    /// Connections made when `written` was last valid.
    connects_seen: u64,
    /// Cluster nodes seen in the registry: None while listed, else since when they are not.
    seen: std::collections::HashMap<String, Option<Instant>>,
    /// A look for dead nodes' usage runs.
    recovering: Arc<AtomicBool>,
    reg: Registration,
}

/// A node absent from the registry whose open usage intervals have not been checkpointed
/// for this long is dead: another node closes them at their last checkpoint (as the dead
/// node would at its next start), so the usage is billed without waiting for it.
const DEAD_NODE_USAGE: Duration = Duration::from_secs(15);
/// How often (in heartbeats) a node looks for such intervals.
const RECOVERY_EVERY: u32 = 5;
/// A cluster node this node has not seen in the registry for this long (its own monotonic
/// clock) may be dead; its usage is closed only if its checkpoints stopped too.
const DEAD_NODE_ABSENT: Duration = Duration::from_secs(30);
/// Bounds one look for dead nodes' usage.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(20);

impl Actor for ClusterActor {
    type Msg = ClusterMsg;
    type State = ClusterState;
    type Arguments = (
        Arc<Cluster>,
        Arc<NodeShared>,
        Arc<ActorRegistry>,
        ractor::ActorId,
    );

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        (cluster, node, actors, parent): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let restarts = cluster.stats.actor_starts.fetch_add(1, Ordering::Relaxed) as u32;
        let kill = Arc::clone(&cluster);
        let tick = myself.clone();
        let reg = actors.register(
            ActorSpec::new(myself.get_id(), ActorKind::Cluster, "cluster")
                .parent(parent)
                .restarted(restarts, None)
                .kill(move || {
                    kill.inject_fault();
                    tick.send_message(ClusterMsg::Tick).is_ok()
                }),
        );
        myself.send_interval(cluster.config.heartbeat, || ClusterMsg::Tick);
        // The first heartbeat now: a node joins the cluster as it starts.
        let _ = myself.send_message(ClusterMsg::Tick);
        let packets = node.mux.as_ref().map_or(0, |m| m.packets_sent());
        Ok(ClusterState {
            cluster,
            node,
            hosted: HashSet::new(),
            cpu: CpuSampler::new(),
            packets: (Instant::now(), packets),
            failing_since: None,
            since_recovery: 0,
            seen: Default::default(),
            written: Default::default(),
            connects_seen: 0,
            recovering: Arc::new(AtomicBool::new(false)),
            last_tick: None,
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
        if state.cluster.fault.swap(false, Ordering::AcqRel) {
            panic!("fault injected into the cluster actor");
        }
        match msg {
            ClusterMsg::Tick => tick(state).await,
        }
        Ok(())
    }
}

async fn tick(state: &mut ClusterState) {
    // Measured from the last heartbeat's start: a tick queued behind a slow heartbeat is
    // skipped only if the heartbeat was quick, so the period never stretches toward the
    // node's TTL (it stays the longer of the interval and the heartbeat itself).
    if let Some(last) = state.last_tick
        && last.elapsed() < state.cluster.config.heartbeat / 2
    {
        return;
    }
    state.last_tick = Some(Instant::now());
    tick_now(state).await;
}

async fn tick_now(state: &mut ClusterState) {
    let node = &state.node;
    let now = Instant::now();
    let sent = node.mux.as_ref().map_or(0, |m| m.packets_sent());
    let elapsed = now.duration_since(state.packets.0).as_secs_f64();
    let pps = if elapsed > 0.0 {
        (sent.saturating_sub(state.packets.1) as f64 / elapsed) as u64
    } else {
        0
    };
    state.packets = (now, sent);
    let load = Load {
        cpu: state.cpu.sample(),
        participants: (node.actors.count(ActorKind::Participant)
            + node.actors.count(ActorKind::VirtualParticipant)) as u64,
        meetings: node.registry.len() as u64,
        packets_per_sec: pps,
    };
    let hosted: Vec<MeetingId> = node.registry.ids();
    let now_hosted: HashSet<MeetingId> = hosted.iter().cloned().collect();
    let released: Vec<MeetingId> = state.hosted.difference(&now_hosted).cloned().collect();
    let draining = node.draining.load(Ordering::Acquire);
    // What each hosted meeting would need on another host, where that changed (all of it
    // again after a reconnect: Redis may have restarted empty).
    let connects = state.cluster.stats.connects.load(Ordering::Relaxed);
    if connects != state.connects_seen {
        state.connects_seen = connects;
        state.written.clear();
    }
    state.written.retain(|id, _| now_hosted.contains(id));
    let infos: Vec<(MeetingId, MeetingInfo)> = hosted
        .iter()
        .filter_map(|id| {
            let record = node.registry.get(id)?;
            let info = MeetingInfo {
                tenant: record.tenant.clone(),
                settings: record
                    .settings
                    .load()
                    .unwrap_or_else(|| node.default_settings()),
                metadata: record.metadata.get(),
            };
            (state.written.get(id) != Some(&info)).then(|| (id.clone(), info))
        })
        .collect();
    match state
        .cluster
        .heartbeat(&Beat {
            load: &load,
            draining,
            hosted: &hosted,
            released: &released,
            registry: &node.registry,
            infos: &infos,
        })
        .await
    {
        Ok(lost) => {
            if let Some(since) = state.failing_since.take() {
                tracing::info!(down_for = ?since.elapsed(), "the cluster store (Redis) is back");
            }
            metrics::gauge!("hearth_cluster_nodes").set(state.cluster.nodes().len() as f64);
            state.hosted = now_hosted;
            for (id, info) in infos {
                state.written.insert(id, info);
            }
            let now = Instant::now();
            let live = state.cluster.nodes();
            for (id, absent_since) in state.seen.iter_mut() {
                let here = live.iter().any(|n| &n.id == id);
                match (here, *absent_since) {
                    (true, _) => *absent_since = None,
                    (false, None) => *absent_since = Some(now),
                    (false, Some(_)) => {}
                }
            }
            for n in live.iter() {
                state.seen.entry(n.id.clone()).or_insert(None);
            }
            // Forgotten after a day (bounded memory on a cluster with churning node ids).
            state.seen.retain(|_, since| {
                since.is_none_or(|t| now.duration_since(t) < Duration::from_secs(86_400))
            });
            state.since_recovery += 1;
            if state.since_recovery >= RECOVERY_EVERY
                && let Some(billing) = &node.billing
                && !state.recovering.load(Ordering::Acquire)
            {
                state.since_recovery = 0;
                let candidates: Vec<String> = state
                    .seen
                    .iter()
                    .filter(|(_, since)| {
                        since.is_some_and(|t| now.duration_since(t) >= DEAD_NODE_ABSENT)
                    })
                    .map(|(id, _)| id.clone())
                    .collect();
                if !candidates.is_empty() {
                    let (cluster, billing, busy) = (
                        Arc::clone(&state.cluster),
                        Arc::clone(billing),
                        Arc::clone(&state.recovering),
                    );
                    busy.store(true, Ordering::Release);
                    tokio::spawn(async move {
                        // Cleared however the task ends (a panic included).
                        let _done = ClearOnDrop(Arc::clone(&busy));
                        if tokio::time::timeout(
                            RECOVERY_TIMEOUT,
                            recover_dead_nodes(cluster, billing, candidates),
                        )
                        .await
                        .is_err()
                        {
                            tracing::warn!(
                                "looking for dead nodes' usage took too long; trying again later"
                            );
                        }
                    });
                }
            }
            for id in lost {
                metrics::counter!("hearth_cluster_lost_leases_total").increment(1);
                tracing::warn!(meeting = %id, "another node hosts this meeting now; its participants move there");
                state.hosted.remove(&id);
                if let Some(record) = node.registry.get(&id) {
                    let _ = record.actor.send_message(MeetingMsg::End(EndReason::Moved));
                }
            }
        }
        Err(e) => {
            if state.failing_since.is_none() {
                state.failing_since = Some(Instant::now());
                tracing::error!(error = %e, "the cluster store (Redis) failed; this node serves its meetings and places no new ones until it is back");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, region: &str, cpu: f64, meetings: u64, participants: u64) -> NodeInfo {
        NodeInfo {
            id: id.into(),
            boot: "b".into(),
            region: region.into(),
            cpu,
            meetings,
            participants,
            ..NodeInfo::default()
        }
    }

    #[test]
    fn least_loaded_goes_by_cpu_steps_then_meetings() {
        let nodes = [
            node("a", "", 0.52, 1, 10),
            node("b", "", 0.31, 9, 90),
            node("c", "", 0.35, 3, 5),
        ];
        // b and c are in the same 10 % step: fewer meetings wins.
        let pick = Selector::LeastLoaded
            .pick(&nodes, "", &[])
            .map(|n| n.id.as_str());
        assert_eq!(pick, Some("c"));
        let pick = Selector::LeastLoaded
            .pick(&nodes, "", &["c".into()])
            .map(|n| n.id.as_str());
        assert_eq!(pick, Some("b"));
    }

    #[test]
    fn placed_but_unreported_meetings_count() {
        let mut nodes = vec![node("a", "", 0.0, 0, 0), node("b", "", 0.0, 0, 0)];
        let mut placed = std::collections::BTreeMap::<String, u32>::new();
        for _ in 0..10 {
            let id = Selector::LeastLoaded
                .pick(&nodes, "", &[])
                .map(|n| n.id.clone())
                .unwrap_or_default();
            *placed.entry(id.clone()).or_default() += 1;
            if let Some(n) = nodes.iter_mut().find(|n| n.id == id) {
                n.pending += 1;
            }
        }
        assert_eq!(placed.values().copied().collect::<Vec<_>>(), [5, 5]);
    }

    #[test]
    fn draining_nodes_are_never_picked() {
        let mut nodes = vec![node("a", "", 0.0, 0, 0)];
        nodes[0].draining = true;
        for s in [
            Selector::LeastLoaded,
            Selector::FewestParticipants,
            Selector::RegionFirst,
        ] {
            assert!(s.pick(&nodes, "", &[]).is_none());
        }
    }

    #[test]
    fn region_first_prefers_the_entry_region_then_load() {
        let nodes = [
            node("eu-1", "eu", 0.9, 50, 500),
            node("us-1", "us", 0.0, 0, 0),
            node("eu-2", "eu", 0.5, 5, 50),
        ];
        let pick = Selector::RegionFirst
            .pick(&nodes, "eu", &[])
            .map(|n| n.id.as_str());
        assert_eq!(pick, Some("eu-2"));
        let pick = Selector::RegionFirst
            .pick(&nodes, "ap", &[])
            .map(|n| n.id.as_str());
        assert_eq!(pick, Some("us-1"));
        let pick = Selector::FewestParticipants
            .pick(&nodes, "", &[])
            .map(|n| n.id.as_str());
        assert_eq!(pick, Some("us-1"));
    }

    #[test]
    fn node_entries_need_an_id_and_a_boot() {
        let f = |pairs: &[(&str, &str)]| {
            NodeInfo::from_fields(
                &pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<Vec<_>>(),
            )
        };
        assert!(f(&[("id", "n1")]).is_none());
        let n = f(&[
            ("id", "n1"),
            ("boot", "x"),
            ("state", "draining"),
            ("cpu_permille", "250"),
            ("meetings", "not-a-number"),
        ])
        .expect("an entry");
        assert!(n.draining);
        assert_eq!(n.cpu, 0.25);
        assert_eq!(n.meetings, 0);
    }

    #[test]
    fn cluster_urls_and_ids_are_checked() {
        assert!(Cluster::new(ClusterConfig::new("not a url", "n1")).is_err());
        assert!(Cluster::new(ClusterConfig::new("redis://127.0.0.1:1/0", "a|b")).is_err());
        let c = Cluster::new(ClusterConfig::new("redis://127.0.0.1:1/0", "n1")).expect("valid");
        assert_eq!(c.boot.len(), 16);
        assert_eq!(c.owner_value(), format!("n1|{}", c.boot));
    }

    #[test]
    fn reads_process_cpu() {
        assert!(process_cpu_seconds().is_some_and(|s| s >= 0.0));
    }
}
