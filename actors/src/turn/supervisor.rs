//! `TurnSupervisor`: the one place allocations are created, so quotas hold and a client's
//! retransmitted Allocate never makes two.
//!
//! Supervision policy: allocation actors are not restarted. One that fails has lost its
//! socket and routes with it (the port is free again); its client gets 437 on its next
//! request and allocates anew. Failures are counted in
//! `hearth_actor_failures_total{kind="allocation"}`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hearth_engine::stun::Message;
use hearth_engine::turn::error_response;
use hearth_engine::turn::front::AllocateRequest;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio::net::UdpSocket;

use super::allocation::{AllocationActor, AllocationArgs, AllocationMsg};
use super::{ClientKey, ClientLink, ControlItem, TurnShared};

pub enum TurnSupervisorMsg {
    /// An authenticated, valid Allocate from a client with no allocation yet.
    Allocate {
        key: ClientKey,
        link: ClientLink,
        request: Box<AllocateRequest>,
        raw: Bytes,
    },
    /// A client's TCP/TLS connection ended: its allocation goes with it (RFC 8656 §3.1).
    ConnectionClosed { key: ClientKey },
    /// Drill and test hook: make the allocation of `key` fail as a bug would.
    InjectFault { key: ClientKey },
    /// Number of live allocations.
    Count(RpcReplyPort<usize>),
    /// Once a second: add every allocation's traffic to the node's metrics.
    FlushMetrics,
}

pub struct TurnSupervisor;

pub struct TurnSupervisorState {
    reg: crate::registry::Registration,
    shared: Arc<TurnShared>,
    total: usize,
    per_user: HashMap<String, usize>,
    by_actor: HashMap<ActorId, String>,
    /// Ports reserved by EVEN-PORT (R bit) for a later Allocate with the token.
    reservations: HashMap<[u8; 8], (UdpSocket, Instant)>,
}

/// How often allocations' traffic reaches `/metrics`.
const METRICS_INTERVAL: Duration = Duration::from_secs(1);

/// How long a reserved port waits for the Allocate that claims it (RFC 8656: ~30 s).
const RESERVATION_LIFETIME: Duration = Duration::from_secs(30);

impl Actor for TurnSupervisor {
    type Msg = TurnSupervisorMsg;
    type State = TurnSupervisorState;
    type Arguments = Arc<TurnShared>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        shared: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        metrics::gauge!("hearth_turn_allocations").set(0.0);
        // One timer for all allocations' metrics, rather than one wake-up per allocation.
        myself.send_interval(METRICS_INTERVAL, || TurnSupervisorMsg::FlushMetrics);
        let mut spec = crate::registry::ActorSpec::new(
            myself.get_id(),
            crate::registry::ActorKind::TurnSupervisor,
            "turn",
        );
        if let Some(parent) = shared.parent.get() {
            spec = spec.parent(*parent);
        }
        let reg = shared.actors.register(spec);
        Ok(TurnSupervisorState {
            reg,
            shared,
            total: 0,
            per_user: HashMap::new(),
            by_actor: HashMap::new(),
            reservations: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.reg.handled();
        match msg {
            TurnSupervisorMsg::Allocate {
                key,
                link,
                request,
                raw,
            } => state.allocate(&myself, key, link, *request, raw).await,
            TurnSupervisorMsg::ConnectionClosed { key } => {
                if let Some(entry) = state.shared.routes.get(&key) {
                    let _ = entry.actor.send_message(AllocationMsg::Close("closed"));
                }
            }
            TurnSupervisorMsg::InjectFault { key } => {
                if let Some(entry) = state.shared.routes.get(&key) {
                    let _ = entry.actor.send_message(AllocationMsg::InjectFault);
                }
            }
            TurnSupervisorMsg::Count(reply) => {
                let _ = reply.send(state.total);
            }
            TurnSupervisorMsg::FlushMetrics => {
                for entry in state.shared.routes.iter() {
                    entry.value().flush_metrics();
                }
                state.shared.forget_expired_credentials(Instant::now());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, failed) = match event {
            SupervisionEvent::ActorTerminated(cell, _, _) => (cell, None),
            SupervisionEvent::ActorFailed(cell, error) => (cell, Some(error)),
            _ => return Ok(()),
        };
        let Some(user) = state.by_actor.remove(&cell.get_id()) else {
            return Ok(());
        };
        state.total = state.total.saturating_sub(1);
        if let Some(n) = state.per_user.get_mut(&user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                state.per_user.remove(&user);
            }
        }
        metrics::gauge!("hearth_turn_allocations").set(state.total as f64);
        if let Some(error) = failed {
            state
                .reg
                .failure(format!("allocation of {user} failed: {error}"));
            metrics::counter!("hearth_actor_failures_total", "kind" => "allocation").increment(1);
            tracing::warn!(%user, %error, "allocation failed; its port is free and the client may allocate again");
        }
        Ok(())
    }
}

impl TurnSupervisorState {
    async fn allocate(
        &mut self,
        myself: &ActorRef<TurnSupervisorMsg>,
        key: ClientKey,
        link: ClientLink,
        request: AllocateRequest,
        raw: Bytes,
    ) {
        // A retransmission that crossed the actor's creation: the allocation answers it.
        if let Some(entry) = self.shared.routes.get(&key) {
            entry.push_control(ControlItem {
                data: raw,
                at: Instant::now(),
            });
            return;
        }
        let Ok(msg) = Message::parse(&raw) else {
            return;
        };
        let software = self.shared.software.clone();
        let user = request.auth.user.clone();
        let config = &self.shared.config;
        let over = if self.total >= config.max_allocations {
            Some("allocation quota of the node reached")
        } else if self.per_user.get(&user).copied().unwrap_or(0) >= config.max_allocations_per_user
        {
            Some("allocation quota of the user reached")
        } else {
            None
        };
        if let Some(why) = over {
            metrics::counter!("hearth_turn_quota_rejections_total").increment(1);
            tracing::debug!(%user, why, "allocation refused (486)");
            link.send(&error_response(
                &msg,
                486,
                "Allocation Quota Reached",
                Some(&request.auth.key),
                software.as_deref(),
            ));
            return;
        }
        let now = Instant::now();
        self.reservations.retain(|_, (_, expires)| *expires > now);
        let mut reservation_token = None;
        let bound = match (request.reservation_token, request.even_port) {
            (Some(token), _) => self.reservations.remove(&token).map(|(socket, _)| socket),
            (None, Some(reserve)) => {
                bind_relay_even(config.relay_bind, config.relay_ports, reserve).map(
                    |(socket, next)| {
                        if let Some(next) = next {
                            let token: [u8; 8] = rand::random();
                            self.reservations
                                .insert(token, (next, now + RESERVATION_LIFETIME));
                            reservation_token = Some(token);
                        }
                        socket
                    },
                )
            }
            (None, None) => bind_relay(config.relay_bind, config.relay_ports),
        };
        let socket = match bound {
            Some(socket) => socket,
            None => {
                metrics::counter!("hearth_turn_quota_rejections_total").increment(1);
                link.send(&error_response(
                    &msg,
                    508,
                    "Insufficient Capacity",
                    Some(&request.auth.key),
                    software.as_deref(),
                ));
                return;
            }
        };
        let args = AllocationArgs {
            id: self.shared.next_id(),
            key,
            link: link.clone(),
            request: request.clone(),
            socket,
            reservation_token,
            shared: Arc::clone(&self.shared),
            parent: myself.get_id(),
        };
        match Actor::spawn_linked(None, AllocationActor, args, myself.get_cell()).await {
            Ok((actor, _)) => {
                self.total += 1;
                *self.per_user.entry(user.clone()).or_insert(0) += 1;
                self.by_actor.insert(actor.get_id(), user);
                metrics::gauge!("hearth_turn_allocations").set(self.total as f64);
            }
            Err(e) => {
                tracing::warn!(error = %e, "allocation actor did not start");
                link.send(&error_response(
                    &msg,
                    500,
                    "Server Error",
                    Some(&request.auth.key),
                    software.as_deref(),
                ));
            }
        }
    }
}

/// Binds a UDP socket on a free port of the range, starting at a random place in it.
/// Even ports come first: RTP clients want them (some, coturn's uclient among them, drop an
/// odd relayed port and allocate again even when they did not ask for EVEN-PORT), and
/// nothing prefers odd ones.
fn bind_relay(ip: IpAddr, range: (u16, u16)) -> Option<UdpSocket> {
    if let Some((socket, _)) = bind_relay_even(ip, range, false) {
        return Some(socket);
    }
    let (lo, hi) = range;
    let span = u32::from(hi.saturating_sub(lo)) + 1;
    let start = rand::random::<u32>() % span;
    (0..span.min(512))
        .map(|i| lo + ((start + i) % span) as u16)
        .find_map(|port| bind_port(ip, port))
}

/// An even port, and with `reserve` the odd one after it too (EVEN-PORT, RFC 8656 §14.6).
fn bind_relay_even(
    ip: IpAddr,
    (lo, hi): (u16, u16),
    reserve: bool,
) -> Option<(UdpSocket, Option<UdpSocket>)> {
    let first_even = lo + (lo % 2);
    let evens = u32::from(hi.saturating_sub(first_even)) / 2 + 1;
    let start = rand::random::<u32>() % evens;
    for i in 0..evens.min(512) {
        let port = first_even + 2 * ((start + i) % evens) as u16;
        if reserve && (port == u16::MAX || port + 1 > hi) {
            continue;
        }
        let Some(socket) = bind_port(ip, port) else {
            continue;
        };
        if !reserve {
            return Some((socket, None));
        }
        if let Some(next) = bind_port(ip, port + 1) {
            return Some((socket, Some(next)));
        }
    }
    None
}

fn bind_port(ip: IpAddr, port: u16) -> Option<UdpSocket> {
    let socket = std::net::UdpSocket::bind(SocketAddr::new(ip, port)).ok()?;
    socket.set_nonblocking(true).ok()?;
    UdpSocket::from_std(socket).ok()
}
