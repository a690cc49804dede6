//! `AllocationActor`: one per TURN allocation. Owns the engine's [`Allocation`], the
//! relayed UDP socket and the task reading it, and its lifetime timer.
//!
//! Dropping the state (clean stop or failure alike) removes the client's route, stops the
//! relay task (freeing the port) and reports the allocation's usage.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use hearth_engine::stun::Message;
use hearth_engine::turn::allocation::{
    AllocateParams, Allocation, AllocationLimits, RelayView, Reply,
};
use hearth_engine::turn::front::AllocateRequest;
use hearth_engine::turn::rate::RateLimiter;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

use super::{
    AllocationEntry, ClientKey, ClientLink, ControlItem, RelayCounters, TurnShared, UsageEvent,
};
use crate::timer::Wakeup;

pub enum AllocationMsg {
    /// A control message (request) from the allocation's client.
    Control(ControlItem),
    Tick,
    /// End the allocation (the client's stream closed, or the node stops).
    Close(&'static str),
    /// Drill and test hook.
    InjectFault,
}

pub struct AllocationArgs {
    pub id: u64,
    pub key: ClientKey,
    pub link: ClientLink,
    pub request: AllocateRequest,
    pub socket: UdpSocket,
    /// Token of the port reserved for this client's next allocation (EVEN-PORT R bit).
    pub reservation_token: Option<[u8; 8]>,
    pub shared: Arc<TurnShared>,
    /// The TURN supervisor (for the actor tree).
    pub parent: ractor::ActorId,
}

pub struct AllocationActor;

pub struct AllocationState {
    reg: crate::registry::Registration,
    id: u64,
    key: ClientKey,
    link: ClientLink,
    shared: Arc<TurnShared>,
    allocation: Allocation,
    entry: Arc<AllocationEntry>,
    wakeup: Wakeup,
    relay_task: JoinHandle<()>,
    published: u64,
    started: SystemTime,
    end_reason: &'static str,
    /// The allocation's usage interval (relayed bytes, billed to its user's tenant).
    usage: crate::billing::UsageHandle,
}

impl Actor for AllocationActor {
    type Msg = AllocationMsg;
    type State = AllocationState;
    type Arguments = AllocationArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let now = Instant::now();
        let shared = args.shared;
        let config = &shared.config;
        let bandwidth = shared.bandwidth_for(&args.request.auth);
        let local = args.socket.local_addr()?;
        let relay = SocketAddr::new(config.relay_ip, local.port());
        let (allocation, response) = Allocation::new(
            now,
            AllocateParams {
                relay,
                client: args.key.addr,
                auth: args.request.auth,
                requested_lifetime: args.request.requested_lifetime,
                transaction_id: args.request.transaction_id,
                lifetimes: config.lifetimes,
                limits: AllocationLimits::default(),
                software: shared.software.clone(),
                reservation_token: args.reservation_token,
            },
        );
        let socket = Arc::new(args.socket);
        let entry = Arc::new(AllocationEntry {
            id: args.id,
            user: allocation.user().to_owned(),
            actor: myself.clone(),
            control_in_flight: std::sync::atomic::AtomicUsize::new(0),
            relay_socket: Arc::clone(&socket),
            view: ArcSwap::from_pointee(allocation.view()),
            bandwidth,
            to_peer_limit: Mutex::new(RateLimiter::new(bandwidth, 0, now)),
            counters: RelayCounters::default(),
            flushed: Mutex::new([0; 6]),
        });
        let relay_task = tokio::spawn(relay_task(Arc::clone(&entry), socket, args.link.clone()));
        shared.routes.insert(args.key, Arc::clone(&entry));
        if let ClientLink::Stream { queue } = &args.link {
            // The connection proved itself: its listener no longer evicts it for room.
            queue.mark_allocated();
        }
        args.link.send(&response);
        let kill_ref = myself.clone();
        let reg = shared.actors.register(
            crate::registry::ActorSpec::new(
                myself.get_id(),
                crate::registry::ActorKind::Allocation,
                format!(
                    "{} {} relay {relay}",
                    args.key.transport.as_str(),
                    args.key.addr
                ),
            )
            .parent(args.parent)
            .kill(move || kill_ref.send_message(AllocationMsg::InjectFault).is_ok()),
        );
        let wakeup = Wakeup::spawn(myself, || AllocationMsg::Tick);
        wakeup.arm(allocation.poll_timeout());
        tracing::debug!(client = %args.key.addr, %relay, transport = args.key.transport.as_str(), "allocation created");
        let usage = shared.meter.open(
            crate::billing::IntervalKind::Turn,
            crate::billing::Attribution::default(),
            &format!("{}#{}", entry.user, args.id),
        );
        usage
            .interval()
            .attach(Arc::clone(&entry) as Arc<dyn crate::billing::ByteSource>);
        Ok(AllocationState {
            usage,
            reg,
            id: args.id,
            key: args.key,
            link: args.link,
            shared,
            published: allocation.version(),
            allocation,
            entry,
            wakeup,
            relay_task,
            started: SystemTime::now(),
            // Every clean way out names itself; a failure skips post_stop and keeps this.
            end_reason: "failed",
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
            AllocationMsg::Control(item) => {
                state.entry.control_in_flight.fetch_sub(1, Ordering::AcqRel);
                if state.on_control(item) {
                    myself.stop(Some("deleted".into()));
                    return Ok(());
                }
            }
            AllocationMsg::Tick => {
                if !state.allocation.handle_timeout(now) {
                    state.end_reason = "expired";
                    myself.stop(Some("expired".into()));
                    return Ok(());
                }
            }
            AllocationMsg::Close(reason) => {
                state.end_reason = reason;
                myself.stop(Some(reason.into()));
                return Ok(());
            }
            AllocationMsg::InjectFault => panic!("fault injected into allocation {}", state.id),
        }
        state.publish();
        state.wakeup.arm(state.allocation.poll_timeout());
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if state.end_reason == "failed" {
            // Stopped from outside without a reason of its own: the node is shutting down.
            state.end_reason = "shutdown";
        }
        Ok(())
    }
}

impl AllocationState {
    /// Handles one control message; true if the allocation was deleted.
    fn on_control(&mut self, item: ControlItem) -> bool {
        let Ok(msg) = Message::parse(&item.data) else {
            return false;
        };
        let unix_now = self.shared.unix_now(item.at);
        match self.allocation.handle(
            item.at,
            &msg,
            &self.shared.auth,
            &self.shared.policy,
            unix_now,
        ) {
            Reply::Respond(response) => {
                if let Ok(r) = Message::parse(&response)
                    && let Some((code, reason)) = r.error_code()
                {
                    tracing::debug!(client = %self.key.addr, code, reason, method = msg.method(), "TURN request refused");
                }
                // The data paths must see a new permission or channel before the client
                // learns it exists: a client may send on a channel the moment ChannelBind
                // succeeds, and a listener reading the old snapshot would drop that packet.
                self.publish();
                self.link.send(&response);
                false
            }
            Reply::Delete(response) => {
                self.link.send(&response);
                self.end_reason = "deleted";
                true
            }
            Reply::Relay { peer, data } => {
                if self.entry.relay_socket.try_send_to(data, peer).is_ok() {
                    RelayCounters::add(&self.entry.counters.to_peer_packets, 1);
                    RelayCounters::add(&self.entry.counters.to_peer_bytes, data.len() as u64);
                }
                false
            }
            Reply::Ignore(why) => {
                metrics::counter!("hearth_turn_dropped_total", "reason" => why).increment(1);
                false
            }
        }
    }

    /// Hands the data paths a fresh snapshot when permissions or channels changed.
    fn publish(&mut self) {
        if self.allocation.version() != self.published {
            self.entry.view.store(Arc::new(self.allocation.view()));
            self.published = self.allocation.version();
        }
    }
}

impl Drop for AllocationState {
    fn drop(&mut self) {
        // Runs after a clean stop and after a failure alike.
        self.relay_task.abort();
        self.shared
            .routes
            .remove_if(&self.key, |_, e| Arc::ptr_eq(e, &self.entry));
        self.entry.flush_metrics();
        let c = &self.entry.counters;
        let reason = self.end_reason;
        self.usage.interval().finish(reason);
        let _ = self.shared.usage.send(UsageEvent {
            id: format!(
                "turn-{}-{}",
                self.shared
                    .epoch_wall
                    .1
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
                self.id
            ),
            user: self.allocation.user().to_owned(),
            transport: self.key.transport.as_str(),
            started_at: self.started,
            ended_at: SystemTime::now(),
            bytes_to_peer: c.to_peer_bytes.load(Ordering::Relaxed),
            bytes_to_client: c.to_client_bytes.load(Ordering::Relaxed),
            packets_to_peer: c.to_peer_packets.load(Ordering::Relaxed),
            packets_to_client: c.to_client_packets.load(Ordering::Relaxed),
            reason,
        });
        tracing::debug!(client = %self.key.addr, reason, "allocation ended");
    }
}

/// Datagrams a relay task receives before it lets other tasks of its worker run. A host
/// flooding a relayed port gets one batch of work per turn, never the whole worker.
pub(crate) const RELAY_BATCH: usize = 64;

/// Peer → client: reads the relayed socket, frames each datagram for the client
/// (ChannelData or Data indication) if a permission allows it, and sends it.
///
/// Buffers are per worker thread, not per allocation: the task waits for readability, then
/// receives and forwards synchronously, so thousands of idle allocations hold no buffers.
async fn relay_task(entry: Arc<AllocationEntry>, socket: Arc<UdpSocket>, link: ClientLink) {
    relay_loop(
        &socket,
        &link,
        entry.bandwidth,
        &entry.view,
        &entry.counters,
    )
    .await;
}

/// The relay task's loop, on what it needs of the allocation.
async fn relay_loop(
    socket: &UdpSocket,
    link: &ClientLink,
    bandwidth: u64,
    view: &ArcSwap<RelayView>,
    counters: &RelayCounters,
) {
    let mut state = PeerRelay {
        stream: link.is_stream(),
        limit: RateLimiter::new(bandwidth, 0, Instant::now()),
        tid_base: rand::random(),
        counter: 0,
    };
    loop {
        if socket.readable().await.is_err() {
            return;
        }
        if relay_batch(socket, &view.load(), link, &mut state, counters) == RELAY_BATCH {
            // More may be queued (no WouldBlock yet): let the worker's other tasks run
            // first. The socket stays readable, so the next turn starts at once.
            tokio::task::yield_now().await;
        }
    }
}

/// What the relay task keeps between batches.
struct PeerRelay {
    stream: bool,
    limit: RateLimiter,
    tid_base: [u8; 8],
    counter: u32,
}

/// Receives and relays at most [`RELAY_BATCH`] datagrams; returns how many it received
/// (fewer means the socket is drained). A datagram from a peer without a permission is
/// dropped before anything else is done with it (counted).
fn relay_batch(
    socket: &UdpSocket,
    view: &RelayView,
    link: &ClientLink,
    state: &mut PeerRelay,
    counters: &RelayCounters,
) -> usize {
    let now = Instant::now();
    RELAY_BUFFERS.with_borrow_mut(|(buf, out)| {
        let mut received = 0;
        while received < RELAY_BATCH {
            let Ok((len, peer)) = socket.try_recv_from(buf) else {
                break;
            };
            received += 1;
            if !view.permits_peer(now, peer) {
                RelayCounters::add(&counters.no_permission, 1);
                continue;
            }
            state.counter = state.counter.wrapping_add(1);
            let mut tid = [0u8; 12];
            tid[..8].copy_from_slice(&state.tid_base);
            tid[8..].copy_from_slice(&state.counter.to_be_bytes());
            if !view.frame_peer_data(now, peer, &buf[..len], state.stream, tid, out)
                || !state.limit.allow(now, len)
            {
                RelayCounters::add(&counters.dropped, 1);
                continue;
            }
            if link.send(out) {
                RelayCounters::add(&counters.to_client_packets, 1);
                RelayCounters::add(&counters.to_client_bytes, len as u64);
            } else {
                RelayCounters::add(&counters.dropped, 1);
            }
        }
        received
    })
}

thread_local! {
    /// One receive buffer (the largest UDP datagram) and one framing buffer per thread.
    static RELAY_BUFFERS: std::cell::RefCell<(Vec<u8>, Vec<u8>)> =
        std::cell::RefCell::new((vec![0u8; 65_536], Vec::with_capacity(2048)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A relayed socket with `n` datagrams queued from a peer that has no permission.
    async fn flooded(n: usize) -> (UdpSocket, usize) {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let _ = socket2::SockRef::from(&socket).set_recv_buffer_size(1 << 20);
        let target = socket.local_addr().unwrap();
        let flood = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let sent = (0..n)
            .filter(|i| flood.send_to(&[*i as u8; 32], target).is_ok())
            .count();
        (socket, sent)
    }

    async fn client_link() -> (ClientLink, UdpSocket) {
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let link = ClientLink::Udp {
            socket: Arc::new(ArcSwap::from_pointee(sender)),
            addr: client.local_addr().unwrap(),
        };
        (link, client)
    }

    #[tokio::test]
    async fn a_batch_is_bounded_and_unpermitted_datagrams_are_dropped_and_counted() {
        let (socket, _) = flooded(200).await;
        let (link, client) = client_link().await;
        let view = RelayView::closed(Instant::now() + Duration::from_secs(60));
        let counters = RelayCounters::default();
        let mut state = PeerRelay {
            stream: false,
            limit: RateLimiter::new(0, 0, Instant::now()),
            tid_base: [0; 8],
            counter: 0,
        };
        socket.readable().await.unwrap();
        let first = relay_batch(&socket, &view, &link, &mut state, &counters);
        assert_eq!(first, RELAY_BATCH, "one batch, not the whole queue");
        let mut total = first;
        loop {
            let n = relay_batch(&socket, &view, &link, &mut state, &counters);
            assert!(n <= RELAY_BATCH);
            total += n;
            if n < RELAY_BATCH {
                break;
            }
        }
        assert!(total > RELAY_BATCH, "{total} datagrams queued");
        assert_eq!(counters.no_permission.load(Ordering::Relaxed), total as u64);
        assert_eq!(counters.to_client_packets.load(Ordering::Relaxed), 0);
        assert_eq!(state.counter, 0, "nothing was framed");
        let mut buf = [0u8; 64];
        assert!(
            client.try_recv(&mut buf).is_err(),
            "nothing reached the client"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_flooded_relay_task_lets_other_tasks_run_between_batches() {
        let (socket, sent) = flooded(300).await;
        assert!(sent > 2 * RELAY_BATCH);
        let (link, _client) = client_link().await;
        let shared = Arc::new((
            ArcSwap::from_pointee(RelayView::closed(Instant::now() + Duration::from_secs(60))),
            RelayCounters::default(),
        ));
        let task = {
            let shared = Arc::clone(&shared);
            tokio::spawn(async move { relay_loop(&socket, &link, 0, &shared.0, &shared.1).await })
        };
        // This task runs between the relay task's batches: it sees the count grow in steps.
        let mut seen = Vec::new();
        let mut unchanged = 0;
        let deadline = Instant::now() + Duration::from_secs(10);
        while unchanged < 100 {
            tokio::task::yield_now().await;
            let n = shared.1.no_permission.load(Ordering::Relaxed) as usize;
            if seen.last() == Some(&n) {
                unchanged += 1;
            } else {
                seen.push(n);
                unchanged = 0;
            }
            assert!(Instant::now() < deadline, "seen {seen:?}");
        }
        assert!(*seen.last().unwrap() > RELAY_BATCH, "seen {seen:?}");
        task.abort();
        assert!(
            seen.iter().any(|n| *n > 0 && *n <= RELAY_BATCH),
            "the relay task handled a batch, then yielded: {seen:?}"
        );
    }
}
