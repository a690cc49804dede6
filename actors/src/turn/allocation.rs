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
use hearth_engine::turn::allocation::{AllocateParams, Allocation, AllocationLimits, Reply};
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
            actor: myself.clone(),
            control_in_flight: std::sync::atomic::AtomicUsize::new(0),
            relay_socket: Arc::clone(&socket),
            view: ArcSwap::from_pointee(allocation.view()),
            to_peer_limit: Mutex::new(RateLimiter::new(config.bandwidth, 0, now)),
            counters: RelayCounters::default(),
            flushed: Mutex::new([0; 5]),
        });
        let relay_task = tokio::spawn(relay_task(
            Arc::clone(&entry),
            socket,
            args.link.clone(),
            Arc::clone(&shared),
        ));
        shared.routes.insert(args.key, Arc::clone(&entry));
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
        Ok(AllocationState {
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

/// Peer → client: reads the relayed socket, frames each datagram for the client
/// (ChannelData or Data indication) if a permission allows it, and sends it.
///
/// Buffers are per worker thread, not per allocation: the task waits for readability, then
/// receives and forwards synchronously, so thousands of idle allocations hold no buffers.
async fn relay_task(
    entry: Arc<AllocationEntry>,
    socket: Arc<UdpSocket>,
    link: ClientLink,
    shared: Arc<TurnShared>,
) {
    let stream = link.is_stream();
    let mut limit = RateLimiter::new(shared.config.bandwidth, 0, Instant::now());
    let tid_base: [u8; 8] = rand::random();
    let mut counter: u32 = 0;
    loop {
        if socket.readable().await.is_err() {
            return;
        }
        RELAY_BUFFERS.with_borrow_mut(|(buf, out)| {
            // Drain what is queued; WouldBlock ends the burst.
            while let Ok((len, peer)) = socket.try_recv_from(buf) {
                let now = Instant::now();
                counter = counter.wrapping_add(1);
                let mut tid = [0u8; 12];
                tid[..8].copy_from_slice(&tid_base);
                tid[8..].copy_from_slice(&counter.to_be_bytes());
                let view = entry.view.load();
                if !view.frame_peer_data(now, peer, &buf[..len], stream, tid, out)
                    || !limit.allow(now, len)
                {
                    RelayCounters::add(&entry.counters.dropped, 1);
                    continue;
                }
                if link.send(out) {
                    RelayCounters::add(&entry.counters.to_client_packets, 1);
                    RelayCounters::add(&entry.counters.to_client_bytes, len as u64);
                } else {
                    RelayCounters::add(&entry.counters.dropped, 1);
                }
            }
        });
    }
}

thread_local! {
    /// One receive buffer (the largest UDP datagram) and one framing buffer per thread.
    static RELAY_BUFFERS: std::cell::RefCell<(Vec<u8>, Vec<u8>)> =
        std::cell::RefCell::new((vec![0u8; 65_536], Vec::with_capacity(2048)));
}
