//! TURN listeners: UDP (one socket per worker, `SO_REUSEPORT`), TCP and TLS.
//!
//! Each received message from a client goes through [`handle_from_client`]: with an
//! allocation, ChannelData and Send indications are relayed right here against the
//! allocation's [`RelayView`](hearth_engine::turn::allocation::RelayView), and requests go to
//! the allocation's actor; without one, the engine's front door answers (Binding, the
//! authentication round trip, errors) or hands a valid Allocate to the supervisor.
//! Malformed input is dropped and counted; a stream that stops speaking STUN is closed.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use hearth_engine::stun::{self, ChannelData, Class, Message, attr, method};
use hearth_engine::turn::front::{self, FrontAction};
use metrics::Counter;
use ractor::ActorRef;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use super::supervisor::TurnSupervisorMsg;
use super::{
    ClientKey, ClientLink, ControlItem, FaultHooks, RelayCounters, SocketSlot, StreamQueue,
    Transport, TurnShared,
};
use crate::limits::{ConnGate, ConnPermit, FdBudget};
use crate::udp_mux::supervise;

/// Longest frame accepted on a stream: a STUN message or ChannelData with its header.
const MAX_FRAME: usize = 65_535 + 20;

/// Counters of the front door, registered once.
pub struct FrontCounters {
    malformed: Counter,
    auth_failures: Counter,
    unallocated: Counter,
    no_permission: Counter,
}

impl FrontCounters {
    pub fn new() -> Self {
        Self {
            malformed: metrics::counter!("hearth_turn_dropped_total", "reason" => "malformed"),
            auth_failures: metrics::counter!("hearth_turn_auth_failures_total"),
            unallocated: metrics::counter!("hearth_turn_dropped_total", "reason" => "no_allocation"),
            no_permission: metrics::counter!("hearth_turn_dropped_total", "reason" => "no_permission_or_quota"),
        }
    }
}

impl Default for FrontCounters {
    fn default() -> Self {
        Self::new()
    }
}

/// Binds `workers` UDP sockets on `addr` and starts their supervised receive loops: a
/// worker that fails is counted (`hearth_actor_failures_total{kind="turn-listener"}`) and
/// restarted on a fresh socket bound to the same address, which also replaces the old one
/// for the allocations that send to their clients through it.
pub fn start_udp(
    addr: SocketAddr,
    workers: usize,
    shared: Arc<TurnShared>,
    supervisor: ActorRef<TurnSupervisorMsg>,
    counters: Arc<FrontCounters>,
) -> io::Result<SocketAddr> {
    let first = bind_reuseport(addr)?;
    let local = first.local_addr()?;
    let mut sockets = vec![first];
    for _ in 1..workers.max(1) {
        sockets.push(bind_reuseport(local)?);
    }
    for (i, socket) in sockets.into_iter().enumerate() {
        let slot: Arc<SocketSlot> = Arc::new(ArcSwap::from_pointee(socket));
        let shared = Arc::clone(&shared);
        let supervisor = supervisor.clone();
        let counters = Arc::clone(&counters);
        supervise(
            "turn-listener",
            format!("TURN UDP worker {i} on {local}"),
            move |attempt| {
                let slot = Arc::clone(&slot);
                let shared = Arc::clone(&shared);
                let supervisor = supervisor.clone();
                let counters = Arc::clone(&counters);
                async move {
                    if attempt > 0 {
                        match bind_reuseport(local) {
                            Ok(fresh) => slot.store(Arc::new(fresh)),
                            Err(e) => return e,
                        }
                    }
                    udp_worker(slot, shared, supervisor, counters).await
                }
            },
        );
    }
    Ok(local)
}

/// Consecutive receive errors after which a worker's socket is considered dead.
const DEAD_SOCKET_ERRORS: u32 = 1000;

async fn udp_worker(
    slot: Arc<SocketSlot>,
    shared: Arc<TurnShared>,
    supervisor: ActorRef<TurnSupervisorMsg>,
    counters: Arc<FrontCounters>,
) -> io::Error {
    let socket = slot.load_full();
    let mut buf = vec![0u8; 65_536];
    let mut errors = 0u32;
    loop {
        let (len, from) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                // ICMP errors from earlier sends surface here between successes.
                errors += 1;
                if errors >= DEAD_SOCKET_ERRORS {
                    return e;
                }
                continue;
            }
        };
        errors = 0;
        if FaultHooks::take(&shared.faults.udp_worker) {
            panic!("fault injected into a TURN UDP worker");
        }
        let key = ClientKey {
            transport: Transport::Udp,
            addr: from,
        };
        let link = || ClientLink::Udp {
            socket: Arc::clone(&slot),
            addr: from,
        };
        handle_from_client(&shared, &supervisor, &counters, key, link, &buf[..len]);
    }
}

/// Starts the TCP listener (plain when `tls` is None), its accept loop supervised. Every
/// connection passes the listener's [`ConnGate`] (`turn-tcp`/`turn-tls`: caps in total and
/// per source, the node's open-file budget, no spinning on accept errors).
pub async fn start_stream(
    addr: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<TurnShared>,
    supervisor: ActorRef<TurnSupervisorMsg>,
    counters: Arc<FrontCounters>,
) -> io::Result<SocketAddr> {
    let listener = Arc::new(TcpListener::bind(addr).await?);
    let local = listener.local_addr()?;
    let (transport, name) = if tls.is_some() {
        (Transport::Tls, "turn-tls")
    } else {
        (Transport::Tcp, "turn-tcp")
    };
    let gate = ConnGate::new(name, shared.config.stream_limits, FdBudget::global());
    // A failed accept loop restarts on the same listening socket: it holds no state a bug
    // could have spoiled, and closing it would reset the connections in its backlog and
    // leave the port free for a moment.
    supervise(
        "turn-listener",
        format!("TURN {} listener on {local}", transport.as_str()),
        move |_attempt| {
            let stream = StreamListener {
                listener: Arc::clone(&listener),
                gate: Arc::clone(&gate),
                transport,
                tls: tls.clone(),
                shared: Arc::clone(&shared),
                supervisor: supervisor.clone(),
                counters: Arc::clone(&counters),
            };
            stream.accept_loop()
        },
    );
    Ok(local)
}

/// What a TCP/TLS accept loop and its connections share.
#[derive(Clone)]
struct StreamListener {
    listener: Arc<TcpListener>,
    gate: Arc<ConnGate>,
    transport: Transport,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<TurnShared>,
    supervisor: ActorRef<TurnSupervisorMsg>,
    counters: Arc<FrontCounters>,
}

impl StreamListener {
    async fn accept_loop(self) -> io::Error {
        loop {
            let (stream, peer, permit) = self.gate.accept(&self.listener, b"").await;
            if FaultHooks::take(&self.shared.faults.stream_accept) {
                panic!("fault injected into a TURN stream listener");
            }
            let _ = stream.set_nodelay(true);
            let this = self.clone();
            tokio::spawn(async move { this.connection(stream, peer, permit).await });
        }
    }

    async fn connection(self, stream: TcpStream, peer: SocketAddr, permit: ConnPermit) {
        let key = ClientKey {
            transport: self.transport,
            addr: peer,
        };
        match &self.tls {
            None => self.serve(stream, key, &permit).await,
            Some(acceptor) => {
                let deadline = self.shared.config.tls_handshake_timeout;
                let handshake = tokio::time::timeout(deadline, acceptor.accept(stream));
                let outcome = tokio::select! {
                    outcome = handshake => Some(outcome),
                    // Evicted to make room (counted by the gate).
                    () = permit.evicted() => None,
                };
                match outcome {
                    Some(Ok(Ok(tls))) => self.serve(tls, key, &permit).await,
                    Some(Ok(Err(e))) => {
                        self.counters.malformed.increment(1);
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    }
                    Some(Err(_)) => {
                        self.gate.count_closed("tls_handshake_timeout");
                        tracing::debug!(%peer, "TLS handshake timed out");
                    }
                    None => {}
                }
            }
        }
        // The allocation of a stream lives as long as the stream.
        let _ = self
            .supervisor
            .send_message(TurnSupervisorMsg::ConnectionClosed { key });
    }

    /// Reads frames from one stream client; a writer task sends what is queued for it.
    ///
    /// The connection is closed when it has held no allocation for
    /// `stream_allocate_timeout` (from its start, or since its allocation ended), and when
    /// the gate evicts it before it allocated.
    async fn serve<S>(&self, stream: S, key: ClientKey, permit: &ConnPermit)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let shared = &self.shared;
        let (mut reader, mut writer) = tokio::io::split(stream);
        let (queue, mut rx) = StreamQueue::new(shared.config.stream_queue_bytes);
        // Weak: the queue's sender must die with the reader and the allocation, which ends
        // the writer (and with both halves gone, the connection).
        let writer_queue = Arc::downgrade(&queue);
        let writer_task = tokio::spawn(async move {
            while let Some(frame) = rx.recv().await {
                let written = writer.write_all(&frame).await;
                if let Some(queue) = writer_queue.upgrade() {
                    queue.taken(frame.len());
                }
                if written.is_err() {
                    break;
                }
            }
            let _ = writer.shutdown().await;
        });
        let timeout = shared.config.stream_allocate_timeout;
        let mut last_allocated = tokio::time::Instant::now();
        let mut established = false;
        let mut buf = BytesMut::with_capacity(8192);
        'read: loop {
            let check_at = last_allocated + timeout;
            let read = tokio::select! {
                read = reader.read_buf(&mut buf) => read,
                () = queue.allocated(), if !established => {
                    permit.established();
                    established = true;
                    continue;
                }
                () = tokio::time::sleep_until(check_at) => {
                    let now = tokio::time::Instant::now();
                    if shared.routes.contains_key(&key) {
                        last_allocated = now;
                        continue;
                    }
                    self.gate.count_closed("no_allocation");
                    tracing::debug!(client = %key.addr, "closing a TURN connection without an allocation");
                    break;
                }
                // Evicted to make room before it allocated (counted by the gate).
                () = permit.evicted(), if !established => break,
            };
            match read {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            loop {
                let len = match stun::frame_len(&buf) {
                    None => break,
                    Some(Err(_)) => {
                        self.counters.malformed.increment(1);
                        break 'read;
                    }
                    Some(Ok(len)) if len > MAX_FRAME => {
                        self.counters.malformed.increment(1);
                        break 'read;
                    }
                    Some(Ok(_))
                        if ChannelData::looks_like(&buf) && !shared.routes.contains_key(&key) =>
                    {
                        // ChannelData needs an allocation: this client does not speak TURN.
                        self.counters.malformed.increment(1);
                        break 'read;
                    }
                    Some(Ok(len)) => len,
                };
                if buf.len() < len {
                    buf.reserve(len - buf.len());
                    break;
                }
                let frame = buf.split_to(len);
                let link = || ClientLink::Stream {
                    queue: Arc::clone(&queue),
                };
                handle_from_client(shared, &self.supervisor, &self.counters, key, link, &frame);
            }
        }
        // The writer ends once the allocation (which holds the other senders) is gone too;
        // the caller reports the closed connection so that happens now.
        drop(queue);
        drop(writer_task);
    }
}

/// One message from a client: relay it, queue it for its allocation, or answer it.
pub fn handle_from_client(
    shared: &TurnShared,
    supervisor: &ActorRef<TurnSupervisorMsg>,
    counters: &FrontCounters,
    key: ClientKey,
    link: impl FnOnce() -> ClientLink,
    data: &[u8],
) {
    let now = Instant::now();
    if let Some(entry) = shared.routes.get(&key).map(|e| Arc::clone(e.value())) {
        if ChannelData::looks_like(data) {
            let view = entry.view.load();
            let Some((peer, payload)) = view.route_channel_data(now, data) else {
                RelayCounters::add(&entry.counters.dropped, 1);
                return;
            };
            relay_to_peer(&entry, now, peer, payload);
            return;
        }
        let Ok(msg) = Message::parse(data) else {
            counters.malformed.increment(1);
            return;
        };
        if msg.class() == Class::Indication && msg.method() == method::SEND {
            // Send indications are data: relayed here like ChannelData.
            let (Some(peer), Some(payload)) =
                (msg.xor_address(attr::XOR_PEER_ADDRESS), msg.get(attr::DATA))
            else {
                counters.malformed.increment(1);
                return;
            };
            if !entry.view.load().permits_peer(now, peer) || !shared.policy.permits(peer) {
                counters.no_permission.increment(1);
                return;
            }
            relay_to_peer(&entry, now, peer, payload);
            return;
        }
        entry.push_control(ControlItem {
            data: Bytes::copy_from_slice(data),
            at: now,
        });
        return;
    }
    if ChannelData::looks_like(data) {
        counters.unallocated.increment(1);
        return;
    }
    let Ok(msg) = Message::parse(data) else {
        counters.malformed.increment(1);
        return;
    };
    let unix_now = shared.unix_now(now);
    match front::handle(
        &msg,
        key.addr,
        &shared.auth,
        now,
        unix_now,
        false,
        shared.software.as_deref(),
    ) {
        FrontAction::Respond(response) => {
            if let Ok(r) = Message::parse(&response)
                && let Some((code, reason)) = r.error_code()
            {
                if code == 401 && msg.has_integrity() || code == 438 {
                    counters.auth_failures.increment(1);
                }
                tracing::debug!(
                    client = %key.addr,
                    code,
                    reason,
                    unknown = ?r.get(attr::UNKNOWN_ATTRIBUTES),
                    "TURN request refused"
                );
            }
            link().send(&response);
        }
        FrontAction::Allocate(request) => {
            let _ = supervisor.send_message(TurnSupervisorMsg::Allocate {
                key,
                link: link(),
                request: Box::new(request),
                raw: Bytes::copy_from_slice(data),
            });
        }
        FrontAction::Drop(_) => counters.unallocated.increment(1),
    }
}

fn relay_to_peer(entry: &super::AllocationEntry, now: Instant, peer: SocketAddr, payload: &[u8]) {
    let allowed = entry
        .to_peer_limit
        .lock()
        .map(|mut l| l.allow(now, payload.len()))
        .unwrap_or(false);
    if allowed && entry.relay_socket.try_send_to(payload, peer).is_ok() {
        RelayCounters::add(&entry.counters.to_peer_packets, 1);
        RelayCounters::add(&entry.counters.to_peer_bytes, payload.len() as u64);
    } else {
        RelayCounters::add(&entry.counters.dropped, 1);
    }
}

fn bind_reuseport(addr: SocketAddr) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    let _ = socket.set_recv_buffer_size(4 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// Loads a PEM certificate chain and private key into a TLS acceptor.
pub fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, String> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in the file", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate and key do not match or are unsupported: {e}"))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
