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

use bytes::{Bytes, BytesMut};
use hearth_engine::stun::{self, ChannelData, Class, Message, attr, method};
use hearth_engine::turn::front::{self, FrontAction};
use metrics::Counter;
use ractor::ActorRef;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;

use super::supervisor::TurnSupervisorMsg;
use super::{ClientKey, ClientLink, ControlItem, RelayCounters, Transport, TurnShared};

/// Longest frame accepted on a stream: a STUN message or ChannelData with its header.
const MAX_FRAME: usize = 65_535 + 20;
/// Frames queued for one stream client before we drop.
const STREAM_QUEUE: usize = 512;
/// Time a new stream has to deliver its first whole message.
const FIRST_FRAME_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

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

/// Binds `workers` UDP sockets on `addr` and starts their receive loops.
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
    for socket in sockets {
        let socket = Arc::new(socket);
        let shared = Arc::clone(&shared);
        let supervisor = supervisor.clone();
        let counters = Arc::clone(&counters);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            loop {
                let (len, from) = match socket.recv_from(&mut buf).await {
                    Ok(r) => r,
                    Err(_) => continue,
                };
                let key = ClientKey {
                    transport: Transport::Udp,
                    addr: from,
                };
                let link = || ClientLink::Udp {
                    socket: Arc::clone(&socket),
                    addr: from,
                };
                handle_from_client(&shared, &supervisor, &counters, key, link, &buf[..len]);
            }
        });
    }
    Ok(local)
}

/// Starts the TCP listener (plain when `tls` is None).
pub async fn start_stream(
    addr: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<TurnShared>,
    supervisor: ActorRef<TurnSupervisorMsg>,
    counters: Arc<FrontCounters>,
) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let transport = if tls.is_some() {
        Transport::Tls
    } else {
        Transport::Tcp
    };
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let shared = Arc::clone(&shared);
            let supervisor = supervisor.clone();
            let counters = Arc::clone(&counters);
            let tls = tls.clone();
            tokio::spawn(async move {
                let key = ClientKey {
                    transport,
                    addr: peer,
                };
                match tls {
                    None => serve_stream(stream, key, &shared, &supervisor, &counters).await,
                    Some(acceptor) => match acceptor.accept(stream).await {
                        Ok(tls) => serve_stream(tls, key, &shared, &supervisor, &counters).await,
                        Err(e) => {
                            counters.malformed.increment(1);
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        }
                    },
                }
                // The allocation of a stream lives as long as the stream.
                let _ = supervisor.send_message(TurnSupervisorMsg::ConnectionClosed { key });
            });
        }
    });
    Ok(local)
}

/// Reads frames from one stream client; a writer task sends what is queued for it.
async fn serve_stream<S>(
    stream: S,
    key: ClientKey,
    shared: &Arc<TurnShared>,
    supervisor: &ActorRef<TurnSupervisorMsg>,
    counters: &FrontCounters,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel::<Bytes>(STREAM_QUEUE);
    let writer_task = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if writer.write_all(&frame).await.is_err() {
                break;
            }
        }
        let _ = writer.shutdown().await;
    });
    let mut buf = BytesMut::with_capacity(8192);
    // A client must get a whole first message through quickly (no slow-drip connections).
    let mut first_deadline = Some(tokio::time::Instant::now() + FIRST_FRAME_TIMEOUT);
    'read: loop {
        let read = match first_deadline {
            Some(deadline) => {
                match tokio::time::timeout_at(deadline, reader.read_buf(&mut buf)).await {
                    Ok(r) => r,
                    Err(_) => {
                        counters.malformed.increment(1);
                        break;
                    }
                }
            }
            None => reader.read_buf(&mut buf).await,
        };
        match read {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        loop {
            let len = match stun::frame_len(&buf) {
                None => break,
                Some(Err(_)) => {
                    counters.malformed.increment(1);
                    break 'read;
                }
                Some(Ok(len)) if len > MAX_FRAME => {
                    counters.malformed.increment(1);
                    break 'read;
                }
                Some(Ok(_))
                    if ChannelData::looks_like(&buf) && !shared.routes.contains_key(&key) =>
                {
                    // ChannelData needs an allocation: this client does not speak TURN.
                    counters.malformed.increment(1);
                    break 'read;
                }
                Some(Ok(len)) => len,
            };
            if buf.len() < len {
                buf.reserve(len - buf.len());
                break;
            }
            let frame = buf.split_to(len);
            first_deadline = None;
            let link = || ClientLink::Stream { tx: tx.clone() };
            handle_from_client(shared, supervisor, counters, key, link, &frame);
        }
    }
    // The writer ends once the allocation (which holds the other senders) is gone too; the
    // caller reports the closed connection so that happens now.
    drop(tx);
    drop(writer_task);
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
            if !entry.view.load().permits(now, peer.ip()) || !shared.policy.permits(peer) {
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
                request,
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
