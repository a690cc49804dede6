//! The embedded TURN server: listeners, the `TurnSupervisor`, one `AllocationActor` per
//! allocation.
//!
//! ```text
//! NodeSupervisor
//!  `- TurnSupervisor          creates allocations (quotas, relay ports); counts failures
//!       `- AllocationActor    one per allocation: relayed UDP socket, lifetime, permissions
//! UDP/TCP/TLS listener tasks  front door (Binding, auth, Allocate) and the client->peer data path
//! ```
//!
//! Control (Refresh, CreatePermission, ChannelBind) goes to the allocation's actor; data
//! does not: the listeners relay ChannelData and Send indications, and the allocation's
//! relay-socket task relays peer datagrams, both against the [`RelayView`] snapshot the
//! actor publishes whenever permissions or channels change. Supervision: an allocation actor
//! that fails is gone with its socket and routes (its port is free again); the client gets
//! 437 on its next request and allocates anew; the failure is counted. The listener tasks
//! (UDP workers, TCP/TLS accept loops) run under [`crate::udp_mux::supervise`]: one that
//! fails is counted (`hearth_actor_failures_total{kind="turn-listener"}`) and restarted, a UDP
//! worker on a fresh socket that replaces the old one everywhere ([`SocketSlot`]).
//!
//! TCP/TLS hygiene: connections pass a [`crate::limits::ConnGate`] per listener (caps in
//! total and per source, the node's open-file budget); one without an allocation for
//! [`TurnConfig::stream_allocate_timeout`] is closed, a TLS handshake has
//! [`TurnConfig::tls_handshake_timeout`], and what is queued for a client that stops reading
//! is bounded in bytes ([`StreamQueue`]).
//!
//! The SFU's own credentials (see [`TurnShared::sfu_credentials`]) relay only to its media
//! address, expire with the participant's token and are revoked when it is removed.
//!
//! PERFORMANCE-CRITICAL PATH: `listener::relay_from_client`, `allocation::relay_task`.

pub mod allocation;
pub mod listener;
pub mod supervisor;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use bytes::Bytes;
use dashmap::DashMap;
use hearth_engine::turn::Lifetimes;
use hearth_engine::turn::allocation::RelayView;
use hearth_engine::turn::auth::Authenticator;
use hearth_engine::turn::policy::{Cidr, PeerPolicy};
use hearth_engine::turn::rate::RateLimiter;
use ractor::ActorRef;
use tokio::net::UdpSocket;
use tokio::sync::{broadcast, mpsc};

use allocation::AllocationMsg;

use crate::limits::GateLimits;

/// TURN settings (flags `--turn-*`).
#[derive(Clone, Debug)]
pub struct TurnConfig {
    /// Address of the UDP and TCP listeners, e.g. `0.0.0.0:3478`.
    pub listen: SocketAddr,
    /// TLS listener (`turns:`), with its certificate chain and key (PEM files).
    pub tls: Option<TlsSettings>,
    pub realm: String,
    /// Static users (`--turn-user user:pass`).
    pub users: Vec<(String, String)>,
    /// Shared secret of ephemeral (TURN REST API) credentials.
    pub secret: Option<String>,
    /// Address put in XOR-RELAYED-ADDRESS (the node's public IP).
    pub relay_ip: IpAddr,
    /// Address relayed sockets bind to.
    pub relay_bind: IpAddr,
    /// Relay port range, inclusive.
    pub relay_ports: (u16, u16),
    /// Operator allow-list of peer ranges.
    pub allow_peers: Vec<Cidr>,
    /// The SFU's media address, always a permitted peer.
    pub sfu_media: Option<SocketAddr>,
    /// The node's other service ports (HTTP), never a permitted peer on its own IPs.
    pub own_ports: Vec<u16>,
    pub max_allocations: usize,
    pub max_allocations_per_user: usize,
    /// Bytes per second per allocation and direction; 0 means unlimited.
    pub bandwidth: u64,
    /// The same for allocations under the SFU's own credentials (its participants), which
    /// are capped even when `bandwidth` is 0; the lower of the two applies.
    pub sfu_bandwidth: u64,
    pub lifetimes: Lifetimes,
    pub nonce_lifetime: Duration,
    /// UDP receive sockets on the listen port (SO_REUSEPORT).
    pub workers: usize,
    /// A TCP or TLS connection that holds no allocation for this long is closed (at first:
    /// that has not allocated this long after it was accepted).
    pub stream_allocate_timeout: Duration,
    /// Time a `turns:` client has to complete its TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// Caps of the TCP listener and of the TLS listener (each): connections in total and
    /// per source address. At the cap the oldest connection without an allocation makes
    /// room; the node's open-file budget is shared with every other listener.
    pub stream_limits: GateLimits,
    /// Bytes queued for one TCP/TLS client that stopped reading; beyond it what is
    /// relayed to the client is dropped (counted).
    pub stream_queue_bytes: usize,
}

#[derive(Clone, Debug)]
pub struct TlsSettings {
    pub listen: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Default for TurnConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 3478)),
            tls: None,
            realm: "hearth".into(),
            users: Vec::new(),
            secret: None,
            relay_ip: IpAddr::from([127, 0, 0, 1]),
            relay_bind: IpAddr::from([0, 0, 0, 0]),
            relay_ports: (49152, 65535),
            allow_peers: Vec::new(),
            sfu_media: None,
            own_ports: Vec::new(),
            max_allocations: 10_000,
            max_allocations_per_user: 100,
            bandwidth: 0,
            // 24 Mbit/s each way: a participant's media with room to spare.
            sfu_bandwidth: 3_000_000,
            lifetimes: Lifetimes::default(),
            nonce_lifetime: Duration::from_secs(600),
            workers: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            stream_allocate_timeout: Duration::from_secs(10),
            tls_handshake_timeout: Duration::from_secs(5),
            stream_limits: GateLimits {
                max_connections: 10_000,
                max_per_source: 128,
            },
            stream_queue_bytes: 256 * 1024,
        }
    }
}

/// How a client reached us: the key of its allocation (RFC 8656's 5-tuple, with our side
/// implied by the listener).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientKey {
    pub transport: Transport,
    pub addr: SocketAddr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }
}

/// Where to send to a client: a UDP socket of the listener, or a stream's writer task.
#[derive(Clone, Debug)]
pub enum ClientLink {
    Udp {
        /// The listener worker's socket; replaced when the worker restarts.
        socket: Arc<SocketSlot>,
        addr: SocketAddr,
    },
    Stream {
        queue: Arc<StreamQueue>,
    },
}

pub use crate::udp_mux::SocketSlot;

impl ClientLink {
    /// Sends without waiting; false if dropped (socket or stream queue full, or closed).
    pub fn send(&self, data: &[u8]) -> bool {
        match self {
            ClientLink::Udp { socket, addr } => socket.load().try_send_to(data, *addr).is_ok(),
            ClientLink::Stream { queue } => queue.push(data),
        }
    }

    pub fn is_stream(&self) -> bool {
        matches!(self, ClientLink::Stream { .. })
    }
}

/// What is queued for one TCP/TLS client's writer, bounded in bytes: a client that stops
/// reading costs at most [`TurnConfig::stream_queue_bytes`] (plus the frame being
/// written), whatever the size of the frames.
pub struct StreamQueue {
    tx: mpsc::UnboundedSender<Bytes>,
    queued: AtomicUsize,
    limit: usize,
    dropped: metrics::Counter,
    /// Set once an allocation exists on the connection (its reader then stops treating it
    /// as unproven).
    allocated: tokio::sync::Notify,
}

/// What one queued frame costs beyond its bytes (the `Bytes` and the channel's slot).
const FRAME_OVERHEAD: usize = 64;

impl std::fmt::Debug for StreamQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamQueue")
            .field("queued", &self.queued.load(Ordering::Relaxed))
            .field("limit", &self.limit)
            .finish()
    }
}

impl StreamQueue {
    /// A queue of at most `limit` bytes and the writer's end of it.
    pub fn new(limit: usize) -> (Arc<StreamQueue>, mpsc::UnboundedReceiver<Bytes>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let queue = StreamQueue {
            tx,
            queued: AtomicUsize::new(0),
            limit,
            dropped: metrics::counter!("hearth_turn_dropped_total", "reason" => "stream_queue_full"),
            allocated: tokio::sync::Notify::new(),
        };
        (Arc::new(queue), rx)
    }

    /// Queues a frame; false (counted) if that would exceed the byte limit.
    pub fn push(&self, data: &[u8]) -> bool {
        let cost = data.len() + FRAME_OVERHEAD;
        let before = self.queued.fetch_add(cost, Ordering::AcqRel);
        if before + cost > self.limit {
            self.queued.fetch_sub(cost, Ordering::AcqRel);
            self.dropped.increment(1);
            return false;
        }
        if self.tx.send(Bytes::copy_from_slice(data)).is_err() {
            self.queued.fetch_sub(cost, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// The writer took a frame of `len` bytes off the queue.
    pub fn taken(&self, len: usize) {
        self.queued
            .fetch_sub(len + FRAME_OVERHEAD, Ordering::AcqRel);
    }

    /// Bytes queued now (with the per-frame overhead).
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// The connection holds an allocation now.
    pub fn mark_allocated(&self) {
        self.allocated.notify_one();
    }

    /// Resolves once [`StreamQueue::mark_allocated`] was called.
    pub async fn allocated(&self) {
        self.allocated.notified().await;
    }
}

/// Drill and test hooks: make a listener task fail as a bug would (it panics on its next
/// datagram or connection) so its supervisor's restart can be seen.
#[derive(Default)]
pub struct FaultHooks {
    pub udp_worker: std::sync::atomic::AtomicBool,
    pub stream_accept: std::sync::atomic::AtomicBool,
}

impl FaultHooks {
    /// True once after `flag` was set.
    pub(crate) fn take(flag: &std::sync::atomic::AtomicBool) -> bool {
        flag.load(Ordering::Relaxed) && flag.swap(false, Ordering::AcqRel)
    }
}

/// A control message from the allocation's client, for its actor.
#[derive(Debug)]
pub struct ControlItem {
    pub data: Bytes,
    pub at: Instant,
}

/// What the data paths share with an allocation's actor.
pub struct AllocationEntry {
    pub id: u64,
    /// The user its quota counts against (`sfu:<participant>` for the SFU's credentials).
    pub user: String,
    pub actor: ActorRef<AllocationMsg>,
    /// Control messages queued in the actor's mailbox (bounded: see `push_control`).
    pub control_in_flight: AtomicUsize,
    pub relay_socket: Arc<UdpSocket>,
    pub view: ArcSwap<RelayView>,
    /// Its bandwidth quota, bytes/s per direction (0: unlimited).
    pub bandwidth: u64,
    /// Client → peer quota (the listeners' direction).
    pub to_peer_limit: Mutex<RateLimiter>,
    pub counters: RelayCounters,
    /// The counters' values already added to the node's metrics.
    pub flushed: Mutex<[u64; 6]>,
}

/// Control requests an allocation may have queued; beyond that a client is flooding and
/// its requests are dropped (a real client retransmits).
const CONTROL_QUEUE: usize = 64;

impl AllocationEntry {
    /// Adds this allocation's traffic since the last flush to the node's metrics. Called
    /// once a second for every allocation by the supervisor, and when the allocation ends.
    pub fn flush_metrics(&self) {
        let c = &self.counters;
        let now = [
            c.to_peer_packets.load(Ordering::Relaxed),
            c.to_peer_bytes.load(Ordering::Relaxed),
            c.to_client_packets.load(Ordering::Relaxed),
            c.to_client_bytes.load(Ordering::Relaxed),
            c.dropped.load(Ordering::Relaxed),
            c.no_permission.load(Ordering::Relaxed),
        ];
        let mut flushed = match self.flushed.lock() {
            Ok(f) => f,
            Err(poisoned) => poisoned.into_inner(),
        };
        let d: Vec<u64> = now
            .iter()
            .zip(flushed.iter())
            .map(|(n, f)| n.saturating_sub(*f))
            .collect();
        *flushed = now;
        drop(flushed);
        if d[0] > 0 {
            metrics::counter!("hearth_turn_relayed_packets_total", "direction" => "to_peer")
                .increment(d[0]);
            metrics::counter!("hearth_turn_relayed_bytes_total", "direction" => "to_peer")
                .increment(d[1]);
        }
        if d[2] > 0 {
            metrics::counter!("hearth_turn_relayed_packets_total", "direction" => "to_client")
                .increment(d[2]);
            metrics::counter!("hearth_turn_relayed_bytes_total", "direction" => "to_client")
                .increment(d[3]);
        }
        if d[4] > 0 {
            metrics::counter!("hearth_turn_dropped_total", "reason" => "no_permission_or_quota")
                .increment(d[4]);
        }
        if d[5] > 0 {
            metrics::counter!("hearth_turn_dropped_total", "reason" => "peer_without_permission")
                .increment(d[5]);
        }
    }

    /// Queues a control message for the actor through its mailbox, at most
    /// [`CONTROL_QUEUE`] at a time (the mailbox itself is unbounded). Control traffic is a
    /// few requests a minute per allocation, so it needs no queue of its own: that saves
    /// the memory of one channel per allocation.
    pub fn push_control(&self, item: ControlItem) -> bool {
        if self.control_in_flight.fetch_add(1, Ordering::AcqRel) >= CONTROL_QUEUE {
            self.control_in_flight.fetch_sub(1, Ordering::AcqRel);
            RelayCounters::add(&self.counters.dropped, 1);
            return false;
        }
        if self
            .actor
            .send_message(AllocationMsg::Control(item))
            .is_err()
        {
            self.control_in_flight.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }
}

/// Per-allocation traffic, added to the node's metrics by the actor once a second.
#[derive(Default)]
pub struct RelayCounters {
    pub to_peer_packets: AtomicU64,
    pub to_peer_bytes: AtomicU64,
    pub to_client_packets: AtomicU64,
    pub to_client_bytes: AtomicU64,
    pub dropped: AtomicU64,
    /// Datagrams from peers without a permission, dropped at the relayed socket.
    pub no_permission: AtomicU64,
}

impl std::fmt::Debug for AllocationEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AllocationEntry")
            .field("id", &self.id)
            .field("user", &self.user)
            .finish()
    }
}

impl crate::billing::ByteSource for AllocationEntry {
    /// (client to peer, peer to client): every relayed byte.
    fn bytes(&self) -> (u64, u64) {
        (
            self.counters.to_peer_bytes.load(Ordering::Relaxed),
            self.counters.to_client_bytes.load(Ordering::Relaxed),
        )
    }
}

impl RelayCounters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// A finished allocation, for the billing side (usage metering).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageEvent {
    /// Unique per allocation on this node: an idempotency key for the ledger.
    pub id: String,
    pub user: String,
    pub transport: &'static str,
    pub started_at: SystemTime,
    pub ended_at: SystemTime,
    pub bytes_to_peer: u64,
    pub bytes_to_client: u64,
    pub packets_to_peer: u64,
    pub packets_to_client: u64,
    /// Why it ended: `expired`, `deleted` (refresh 0), `closed` (TCP connection closed),
    /// `revoked` (its SFU credentials were), `failed` (the actor failed), `shutdown`.
    pub reason: &'static str,
}

/// Everything the TURN tasks and actors share.
pub struct TurnShared {
    pub config: TurnConfig,
    pub auth: Authenticator,
    pub policy: PeerPolicy,
    pub routes: DashMap<ClientKey, Arc<AllocationEntry>>,
    pub usage: broadcast::Sender<UsageEvent>,
    pub software: Option<String>,
    pub epoch_wall: (Instant, SystemTime),
    next_id: AtomicU64,
    /// The node's actor registry (allocations and their supervisor show in the tree).
    pub actors: Arc<crate::registry::ActorRegistry>,
    /// Where allocations meter their relayed bytes.
    pub meter: crate::billing::UsageMeter,
    /// The node supervisor, parent of the TURN supervisor in the tree.
    pub parent: std::sync::OnceLock<ractor::ActorId>,
    /// Drill and test hooks of the listener tasks.
    pub faults: FaultHooks,
    /// SFU credentials handed out: user (`sfu:<participant>`) -> expiry (Unix seconds).
    sfu_issued: DashMap<String, u64>,
}

impl TurnShared {
    pub fn new(config: TurnConfig, nonce_key: [u8; 32]) -> TurnShared {
        let now = Instant::now();
        let mut auth = Authenticator::new(&config.realm, nonce_key, config.nonce_lifetime, now);
        for (user, pass) in &config.users {
            auth.add_user(user, pass);
        }
        if let Some(secret) = &config.secret {
            auth.set_rest_secret(secret.as_bytes());
        }
        if let Some(sfu) = config.sfu_media {
            auth.set_sfu_peers(&[sfu]);
        }
        let mut own_ports = config.own_ports.clone();
        own_ports.push(config.listen.port());
        if let Some(tls) = &config.tls {
            own_ports.push(tls.listen.port());
        }
        let mut policy = PeerPolicy::new().own(
            &[config.relay_ip, config.listen.ip()],
            &own_ports,
            Some(config.relay_ports),
        );
        for cidr in &config.allow_peers {
            policy = policy.allow(*cidr);
        }
        if let Some(sfu) = config.sfu_media {
            policy = policy.always(sfu);
        }
        let (usage, _) = broadcast::channel(1024);
        TurnShared {
            config,
            auth,
            policy,
            routes: DashMap::new(),
            usage,
            software: Some(format!("hearth/{}", env!("CARGO_PKG_VERSION"))),
            epoch_wall: (now, SystemTime::now()),
            next_id: AtomicU64::new(1),
            actors: Arc::default(),
            meter: crate::billing::UsageMeter::disabled(),
            parent: std::sync::OnceLock::new(),
            faults: FaultHooks::default(),
            sfu_issued: DashMap::new(),
        }
    }

    /// The bandwidth quota (bytes/s per direction, 0 unlimited) of an allocation of `auth`.
    pub fn bandwidth_for(&self, auth: &hearth_engine::turn::auth::Authenticated) -> u64 {
        let config = &self.config;
        match (auth.kind, config.bandwidth, config.sfu_bandwidth) {
            (hearth_engine::turn::auth::CredentialKind::Sfu, 0, sfu) => sfu,
            (hearth_engine::turn::auth::CredentialKind::Sfu, all, 0) => all,
            (hearth_engine::turn::auth::CredentialKind::Sfu, all, sfu) => all.min(sfu),
            (_, all, _) => all,
        }
    }

    /// Seconds since the Unix epoch, derived from one reading at start and the monotonic
    /// clock (so a wall-clock jump does not expire everyone's REST credentials at once).
    pub fn unix_now(&self, now: Instant) -> u64 {
        let (epoch, wall) = self.epoch_wall;
        (wall + now.saturating_duration_since(epoch))
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Credentials for the SFU's participant `participant` (its id), valid until
    /// `expiry_unix`: they relay only to the SFU's media address. None without a secret.
    pub fn sfu_credentials(&self, participant: &str, expiry_unix: u64) -> Option<(String, String)> {
        let credentials = self.auth.sfu_credentials(participant, expiry_unix)?;
        let user = format!(
            "{}{participant}",
            hearth_engine::turn::auth::SFU_USER_PREFIX
        );
        let mut issued = self.sfu_issued.entry(user).or_insert(expiry_unix);
        *issued = (*issued).max(expiry_unix);
        Some(credentials)
    }

    /// Revokes the SFU credentials of `participant`: they get 401 from now on, and its
    /// allocations end. Returns how many allocations were ended.
    pub fn revoke_sfu(&self, participant: &str) -> usize {
        let user = format!(
            "{}{participant}",
            hearth_engine::turn::auth::SFU_USER_PREFIX
        );
        if let Some((_, expiry)) = self.sfu_issued.remove(&user) {
            self.auth.revoke(&user, expiry);
        }
        let mut ended = 0;
        for entry in self.routes.iter() {
            if entry.value().user == user {
                let _ = entry
                    .value()
                    .actor
                    .send_message(AllocationMsg::Close("revoked"));
                ended += 1;
            }
        }
        if ended > 0 {
            tracing::debug!(%user, ended, "TURN credentials revoked; allocations ended");
        }
        ended
    }

    /// Forgets issued and revoked SFU credentials that expired (once a second).
    pub fn forget_expired_credentials(&self, now: Instant) {
        let unix_now = self.unix_now(now);
        self.sfu_issued.retain(|_, expiry| *expiry > unix_now);
        self.auth.forget_expired_revocations(unix_now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sfu_credentials_have_a_bandwidth_cap_of_their_own() {
        use hearth_engine::turn::auth::{Authenticated, CredentialKind};
        let auth = |kind| Authenticated {
            username: String::new(),
            user: String::new(),
            key: [0; 16],
            kind,
            sfu: None,
        };
        let shared = |bandwidth, sfu_bandwidth| {
            TurnShared::new(
                TurnConfig {
                    bandwidth,
                    sfu_bandwidth,
                    ..TurnConfig::default()
                },
                [0; 32],
            )
        };
        let s = shared(0, 3_000_000);
        assert_eq!(s.bandwidth_for(&auth(CredentialKind::Sfu)), 3_000_000);
        assert_eq!(s.bandwidth_for(&auth(CredentialKind::Rest)), 0);
        assert_eq!(s.bandwidth_for(&auth(CredentialKind::Static)), 0);
        let s = shared(1_000_000, 3_000_000);
        assert_eq!(s.bandwidth_for(&auth(CredentialKind::Sfu)), 1_000_000);
        assert_eq!(s.bandwidth_for(&auth(CredentialKind::Rest)), 1_000_000);
        let s = shared(1_000_000, 0);
        assert_eq!(s.bandwidth_for(&auth(CredentialKind::Sfu)), 1_000_000);
    }

    #[tokio::test]
    async fn a_stream_queue_is_bounded_in_bytes_not_frames() {
        let (queue, mut rx) = StreamQueue::new(256 * 1024);
        let big = vec![7u8; 80_000];
        // Three 80 kB frames fit in 256 KiB, a fourth does not.
        assert!((0..3).all(|_| queue.push(&big)));
        assert!(!queue.push(&big));
        assert!(queue.queued() <= 256 * 1024);
        // Small frames fill what is left, and no more: bytes bound them, not their count.
        let accepted = (0..100_000)
            .take_while(|_| queue.push(&[1, 2, 3, 4]))
            .count();
        assert!(accepted < 1_000, "{accepted} small frames queued");
        assert!(queue.queued() <= 256 * 1024);
        // The writer takes a frame: there is room again.
        let frame = rx.recv().await.unwrap();
        queue.taken(frame.len());
        assert!(queue.push(&big));
        let link = ClientLink::Stream {
            queue: Arc::clone(&queue),
        };
        assert!(!link.send(&big), "the link reports the drop");
    }
}
