//! Connection admission, shared by every TCP listener of a node (HTTP and WebSocket, gRPC,
//! TURN over TCP and TLS).
//!
//! Two layers:
//! - [`FdBudget`]: the process's open-file limit (raised to the hard limit at start by
//!   [`raise_nofile_limit`]) minus a reserve for everything that is not a client connection
//!   (media and relay sockets, the runtime, files). Every admitted connection holds one
//!   token; when none is left, new connections are refused *before* `accept` starts failing
//!   with `EMFILE`, so `/readyz`, metrics and existing participants keep working.
//! - [`ConnGate`], one per listener: a cap on its connections in total and per source
//!   address (IPv6 by /64, an IPv4-mapped address as its IPv4 form). A connection is
//!   *unproven* until the listener marks it [`ConnPermit::established`] (a complete HTTP
//!   request, a TURN allocation); when the listener is full, the oldest unproven connection
//!   is evicted to make room, so a flood of silent connections churns among itself instead
//!   of locking out a health check or a participant that sends its request at once.
//!
//! Every refusal and eviction is counted: `hearth_connections_refused_total{listener,reason}`,
//! `hearth_connections_closed_total{listener,reason}`; `hearth_connections{listener}` is the
//! gauge of open ones.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// Raises the soft open-file limit to the hard limit. Returns the limit now in force.
pub fn raise_nofile_limit() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let now = getrlimit(Resource::Nofile);
    if now.current != now.maximum {
        let raised = Rlimit {
            current: now.maximum,
            maximum: now.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!(error = %e, "cannot raise the open-file limit");
        }
    }
    nofile_limit()
}

/// The soft open-file limit in force (`u64::MAX` when unlimited).
pub fn nofile_limit() -> u64 {
    use rustix::process::{Resource, getrlimit};
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// File descriptors kept out of the connection budget: sockets, the runtime, files.
pub fn fd_reserve(limit: u64) -> u64 {
    (limit / 8).max(256)
}

/// The process-wide budget of file descriptors for client connections.
#[derive(Debug)]
pub struct FdBudget {
    capacity: usize,
    used: AtomicUsize,
}

impl FdBudget {
    /// A budget of `capacity` connections.
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            capacity,
            used: AtomicUsize::new(0),
        })
    }

    /// The process's budget: its open-file limit minus [`fd_reserve`], read once.
    pub fn global() -> Arc<Self> {
        static GLOBAL: OnceLock<Arc<FdBudget>> = OnceLock::new();
        GLOBAL
            .get_or_init(|| {
                let limit = nofile_limit();
                let capacity = limit.saturating_sub(fd_reserve(limit));
                FdBudget::new(usize::try_from(capacity).unwrap_or(usize::MAX).max(1))
            })
            .clone()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn in_use(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// One descriptor from the budget, or None when it is spent.
    pub fn try_take(self: &Arc<Self>) -> Option<FdToken> {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            if used >= self.capacity {
                return None;
            }
            match self.used.compare_exchange_weak(
                used,
                used + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(FdToken(Arc::clone(self))),
                Err(now) => used = now,
            }
        }
    }
}

/// One descriptor of an [`FdBudget`], given back on drop.
#[derive(Debug)]
pub struct FdToken(Arc<FdBudget>);

impl Drop for FdToken {
    fn drop(&mut self) {
        self.0.used.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Caps of one listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GateLimits {
    /// Connections open at once on this listener.
    pub max_connections: usize,
    /// Connections open at once from one source address (IPv6: one /64).
    pub max_per_source: usize,
}

impl Default for GateLimits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_per_source: 256,
        }
    }
}

/// Why a connection was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Its source address already holds `max_per_source` connections.
    PerSource,
    /// The listener is full of established connections.
    ListenerFull,
    /// The process's open-file budget is spent.
    FdBudget,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::PerSource => "per_source",
            Refusal::ListenerFull => "listener_full",
            Refusal::FdBudget => "fd_budget",
        }
    }
}

/// The key a source address is counted under.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

#[derive(Default)]
struct GateState {
    open: usize,
    per_source: HashMap<IpAddr, usize>,
    /// Unproven connections by admission order: the oldest is evicted first.
    unproven: BTreeMap<u64, Arc<Eviction>>,
    next_id: u64,
}

#[derive(Default)]
struct Eviction {
    evicted: AtomicBool,
    notify: Notify,
}

/// Admission to one listener. See the module docs.
pub struct ConnGate {
    listener: &'static str,
    limits: GateLimits,
    budget: Arc<FdBudget>,
    state: Mutex<GateState>,
}

impl ConnGate {
    /// A gate for the listener named `listener` (the metrics' label).
    pub fn new(listener: &'static str, limits: GateLimits, budget: Arc<FdBudget>) -> Arc<Self> {
        Arc::new(Self {
            listener,
            limits,
            budget,
            state: Mutex::new(GateState::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a connection from `peer` (unproven), evicting the oldest unproven connection
    /// when the listener or the open-file budget is full.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<ConnPermit, Refusal> {
        let key = source_key(peer);
        let mut state = self.lock();
        if state.per_source.get(&key).copied().unwrap_or(0) >= self.limits.max_per_source {
            drop(state);
            self.count_refusal(Refusal::PerSource);
            return Err(Refusal::PerSource);
        }
        let full = state.open >= self.limits.max_connections;
        let fd = if full { None } else { self.budget.try_take() };
        let fd = match fd {
            Some(fd) => fd,
            None => {
                // Make room by evicting the oldest unproven connection; it closes promptly
                // and gives its descriptor back, so the overshoot is one per eviction.
                let Some((_, victim)) = state.unproven.pop_first() else {
                    drop(state);
                    let why = if full {
                        Refusal::ListenerFull
                    } else {
                        Refusal::FdBudget
                    };
                    self.count_refusal(why);
                    return Err(why);
                };
                victim.evicted.store(true, Ordering::Release);
                victim.notify.notify_one();
                metrics::counter!("hearth_connections_closed_total", "listener" => self.listener, "reason" => "evicted_unproven").increment(1);
                // The newcomer borrows a descriptor beyond the budget until the victim
                // closes (bounded: the victim left the unproven set).
                self.budget.used.fetch_add(1, Ordering::AcqRel);
                FdToken(Arc::clone(&self.budget))
            }
        };
        let id = state.next_id;
        state.next_id += 1;
        state.open += 1;
        *state.per_source.entry(key).or_insert(0) += 1;
        let eviction = Arc::new(Eviction::default());
        state.unproven.insert(id, Arc::clone(&eviction));
        let open = state.open;
        drop(state);
        metrics::gauge!("hearth_connections", "listener" => self.listener).set(open as f64);
        Ok(ConnPermit {
            gate: Arc::clone(self),
            key,
            id,
            eviction,
            _fd: fd,
        })
    }

    fn count_refusal(&self, why: Refusal) {
        metrics::counter!("hearth_connections_refused_total", "listener" => self.listener, "reason" => why.as_str()).increment(1);
    }

    /// Counts a connection this listener closed itself (a deadline, an idle timeout).
    pub fn count_closed(&self, reason: &'static str) {
        metrics::counter!("hearth_connections_closed_total", "listener" => self.listener, "reason" => reason).increment(1);
    }

    /// Accepts the next admitted connection. Refused ones get `refusal` written (best
    /// effort, never waiting) and are closed at once. An accept error (the open-file limit,
    /// a network error) is counted and pauses the loop, 10 ms doubling to 1 s, so it never
    /// spins.
    pub async fn accept(
        self: &Arc<Self>,
        listener: &TcpListener,
        refusal: &[u8],
    ) -> (TcpStream, SocketAddr, ConnPermit) {
        let mut pause = Duration::from_millis(10);
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    pause = Duration::from_millis(10);
                    match self.admit(peer.ip()) {
                        Ok(permit) => return (stream, peer, permit),
                        Err(_) => {
                            if !refusal.is_empty() {
                                let _ = stream.try_write(refusal);
                            }
                            drop(stream);
                        }
                    }
                }
                Err(e) => {
                    let reason = match e.raw_os_error() {
                        Some(24) | Some(23) => "fd_exhausted", // EMFILE, ENFILE
                        _ => "accept_error",
                    };
                    metrics::counter!("hearth_connections_refused_total", "listener" => self.listener, "reason" => reason).increment(1);
                    tracing::warn!(listener = self.listener, error = %e, pause_ms = pause.as_millis() as u64, "accept failed; pausing");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
            }
        }
    }
}

/// An admitted connection's place in its listener and in the open-file budget; given back
/// on drop.
pub struct ConnPermit {
    gate: Arc<ConnGate>,
    key: IpAddr,
    id: u64,
    eviction: Arc<Eviction>,
    _fd: FdToken,
}

impl ConnPermit {
    /// The connection proved itself (a complete request, an allocation): it is no longer
    /// evicted to make room.
    pub fn established(&self) {
        self.gate.lock().unproven.remove(&self.id);
    }

    /// Resolves when the gate evicts this connection to make room; the owner closes it.
    pub async fn evicted(&self) {
        loop {
            if self.eviction.evicted.load(Ordering::Acquire) {
                return;
            }
            self.eviction.notify.notified().await;
        }
    }

    pub fn is_evicted(&self) -> bool {
        self.eviction.evicted.load(Ordering::Acquire)
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let open = {
            let mut state = self.gate.lock();
            state.unproven.remove(&self.id);
            state.open = state.open.saturating_sub(1);
            if let Some(n) = state.per_source.get_mut(&self.key) {
                *n -= 1;
                if *n == 0 {
                    state.per_source.remove(&self.key);
                }
            }
            state.open
        };
        metrics::gauge!("hearth_connections", "listener" => self.gate.listener).set(open as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn caps_per_source_and_gives_back_on_drop() {
        let gate = ConnGate::new(
            "test",
            GateLimits {
                max_connections: 100,
                max_per_source: 2,
            },
            FdBudget::new(100),
        );
        let a = gate.admit(ip("10.0.0.1")).unwrap();
        let _b = gate.admit(ip("::ffff:10.0.0.1")).unwrap();
        assert_eq!(gate.admit(ip("10.0.0.1")).err(), Some(Refusal::PerSource));
        // Another source is unaffected.
        let _c = gate.admit(ip("10.0.0.2")).unwrap();
        drop(a);
        assert!(gate.admit(ip("10.0.0.1")).is_ok());
    }

    #[test]
    fn ipv6_is_counted_per_64() {
        let gate = ConnGate::new(
            "test",
            GateLimits {
                max_connections: 100,
                max_per_source: 1,
            },
            FdBudget::new(100),
        );
        let _a = gate.admit(ip("2001:db8:1:2::1")).unwrap();
        assert_eq!(
            gate.admit(ip("2001:db8:1:2:ffff::9")).err(),
            Some(Refusal::PerSource)
        );
        assert!(gate.admit(ip("2001:db8:1:3::1")).is_ok());
    }

    #[tokio::test]
    async fn a_full_listener_evicts_its_oldest_unproven_connection() {
        let gate = ConnGate::new(
            "test",
            GateLimits {
                max_connections: 2,
                max_per_source: 10,
            },
            FdBudget::new(100),
        );
        let old = gate.admit(ip("10.0.0.1")).unwrap();
        let proven = gate.admit(ip("10.0.0.1")).unwrap();
        proven.established();
        let new = gate.admit(ip("10.0.0.2")).unwrap();
        assert!(old.is_evicted());
        old.evicted().await;
        assert!(!proven.is_evicted() && !new.is_evicted());
        drop(old);
        new.established();
        // Full of established connections: refused, nobody evicted.
        assert_eq!(
            gate.admit(ip("10.0.0.3")).err(),
            Some(Refusal::ListenerFull)
        );
        assert!(!proven.is_evicted() && !new.is_evicted());
    }

    #[test]
    fn the_fd_budget_is_shared_and_refuses_before_the_limit() {
        let budget = FdBudget::new(2);
        let limits = GateLimits {
            max_connections: 100,
            max_per_source: 100,
        };
        let http = ConnGate::new("http", limits, Arc::clone(&budget));
        let turn = ConnGate::new("turn", limits, Arc::clone(&budget));
        let a = http.admit(ip("10.0.0.1")).unwrap();
        a.established();
        let b = turn.admit(ip("10.0.0.1")).unwrap();
        b.established();
        assert_eq!(budget.in_use(), 2);
        assert_eq!(http.admit(ip("10.0.0.2")).err(), Some(Refusal::FdBudget));
        drop(b);
        assert_eq!(budget.in_use(), 1);
        assert!(http.admit(ip("10.0.0.2")).is_ok());
    }
}
