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
//! 437 on its next request and allocates anew; the failure is counted.
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
    pub lifetimes: Lifetimes,
    pub nonce_lifetime: Duration,
    /// UDP receive sockets on the listen port (SO_REUSEPORT).
    pub workers: usize,
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
            lifetimes: Lifetimes::default(),
            nonce_lifetime: Duration::from_secs(600),
            workers: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
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
        socket: Arc<UdpSocket>,
        addr: SocketAddr,
    },
    Stream {
        tx: mpsc::Sender<Bytes>,
    },
}

impl ClientLink {
    /// Sends without waiting; false if dropped (socket or stream queue full, or closed).
    pub fn send(&self, data: &[u8]) -> bool {
        match self {
            ClientLink::Udp { socket, addr } => socket.try_send_to(data, *addr).is_ok(),
            ClientLink::Stream { tx } => tx.try_send(Bytes::copy_from_slice(data)).is_ok(),
        }
    }

    pub fn is_stream(&self) -> bool {
        matches!(self, ClientLink::Stream { .. })
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
    pub actor: ActorRef<AllocationMsg>,
    /// Control messages queued in the actor's mailbox (bounded: see `push_control`).
    pub control_in_flight: AtomicUsize,
    pub relay_socket: Arc<UdpSocket>,
    pub view: ArcSwap<RelayView>,
    /// Client → peer quota (the listeners' direction).
    pub to_peer_limit: Mutex<RateLimiter>,
    pub counters: RelayCounters,
    /// The counters' values already added to the node's metrics.
    pub flushed: Mutex<[u64; 5]>,
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
    /// `failed` (the actor failed), `shutdown`.
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
    /// The node supervisor, parent of the TURN supervisor in the tree.
    pub parent: std::sync::OnceLock<ractor::ActorId>,
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
            parent: std::sync::OnceLock::new(),
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
}
