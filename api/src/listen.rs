//! The HTTP listener (pages, WebSocket signaling, metrics, probes and gRPC on one port, or
//! gRPC on its own): Hearth's own accept loop on hyper, with the connection hygiene that
//! `axum::serve` does not have.
//!
//! - Admission through a [`ConnGate`]: caps in total and per source address, the process's
//!   open-file budget; a refused connection gets a one-line 503 and is closed at once.
//! - A deadline for a silent connection's first byte (`first_byte_timeout`, 60 s: gRPC
//!   channels connect eagerly and say nothing until their first call), and for request
//!   headers once bytes flow (`header_timeout`, hyper's own timer, which also closes an idle
//!   HTTP/1 keep-alive connection). An HTTP/2 connection may idle (keep-alive pings close a
//!   dead peer). Until its first request a connection is unproven, so the gate evicts it
//!   first when the listener is full: silent floods churn among themselves.
//! - A connection is *unproven* until its first request arrives (for `/v1/signal`, until the
//!   participant's `join` is accepted): the gate evicts the oldest unproven connection when
//!   the listener is full, so a flood of silent connections cannot lock out `/readyz`.
//! - HTTP/2 limits: concurrent streams, header list size, reset floods (pending-accept and
//!   locally-errored resets), keep-alive pings that close a dead peer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hearth_actors::limits::{ConnGate, ConnPermit};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tower::ServiceExt;

/// Connection limits of an HTTP listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// Connections open at once on the listener.
    pub max_connections: usize,
    /// Connections open at once from one source address (IPv6: one /64).
    pub max_per_source: usize,
    /// Time for a connection's request headers (the first ones, and each next one on a
    /// kept-alive HTTP/1 connection).
    pub header_timeout: Duration,
    /// Time a new connection may stay silent (no byte at all). Longer than `header_timeout`:
    /// gRPC channels connect eagerly and may say nothing until their first call; under
    /// pressure silent connections are evicted first anyway.
    pub first_byte_timeout: Duration,
    /// HTTP/2 streams open at once per connection.
    pub h2_max_streams: u32,
    /// HTTP/2 header list size in bytes.
    pub h2_max_header_list: u32,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_per_source: 256,
            header_timeout: Duration::from_secs(10),
            first_byte_timeout: Duration::from_secs(60),
            h2_max_streams: 256,
            h2_max_header_list: 16 * 1024,
        }
    }
}

/// What a handler can learn of its connection (a request extension).
#[derive(Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    permit: Arc<ConnPermit>,
}

impl ConnInfo {
    /// The connection proved itself (a signaling `join` was accepted).
    pub fn established(&self) {
        self.permit.established();
    }

    /// Resolves when the listener evicts this (still unproven) connection to make room.
    pub async fn evicted(&self) {
        self.permit.evicted().await
    }
}

/// Binds a listener with a deep accept queue (4,096, or the kernel's `somaxconn` if lower):
/// a burst of connections waits in the kernel for the accept loop to judge it instead of
/// being dropped half-open.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n\
retry-after: 1\r\nconnection: close\r\ncontent-length: 20\r\n\r\nnode is at capacity\n";

/// Serves `app` on `listener` until `shutdown` turns true, then lets open connections
/// finish (graceful shutdown of each) and returns when they have.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    gate: Arc<ConnGate>,
    limits: HttpLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(64 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_streams)
        .max_header_list_size(limits.h2_max_header_list)
        .max_pending_accept_reset_streams(32)
        .max_local_error_reset_streams(64)
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20));
    let builder = Arc::new(builder);
    // Each connection task holds a clone; when all are gone, every connection has ended.
    let (alive, mut all_done) = mpsc::channel::<()>(1);
    loop {
        let (stream, peer, permit) = tokio::select! {
            accepted = gate.accept(&listener, REFUSAL) => accepted,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        // Small HTTP/2 frames (headers, data, trailers) must not wait for delayed ACKs:
        // Nagle would add ~40 ms to a gRPC reply.
        let _ = stream.set_nodelay(true);
        let conn = Connection {
            app: app.clone(),
            builder: Arc::clone(&builder),
            gate: Arc::clone(&gate),
            first_byte_timeout: limits.first_byte_timeout,
            shutdown: shutdown.clone(),
            _alive: alive.clone(),
        };
        tokio::spawn(conn.run(stream, peer, permit));
    }
    drop(alive);
    let _ = all_done.recv().await;
}

struct Connection {
    app: Router,
    builder: Arc<auto::Builder<TokioExecutor>>,
    gate: Arc<ConnGate>,
    first_byte_timeout: Duration,
    shutdown: watch::Receiver<bool>,
    _alive: mpsc::Sender<()>,
}

impl Connection {
    async fn run(mut self, stream: tokio::net::TcpStream, peer: SocketAddr, permit: ConnPermit) {
        let permit = Arc::new(permit);
        let first_request = Arc::new(AtomicBool::new(false));
        let service = {
            let app = self.app.clone();
            let permit = Arc::clone(&permit);
            let first_request = Arc::clone(&first_request);
            hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                first_request.store(true, Ordering::Release);
                // A signaling upgrade proves itself with its join; anything else with its
                // request.
                if req.uri().path() != "/v1/signal" {
                    permit.established();
                }
                req.extensions_mut().insert(ConnInfo {
                    peer,
                    permit: Arc::clone(&permit),
                });
                app.clone().oneshot(req.map(Body::new))
            })
        };
        let spoke = Arc::new(AtomicBool::new(false));
        let stream = FirstBytes {
            inner: stream,
            spoke: Arc::clone(&spoke),
        };
        let conn = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service);
        tokio::pin!(conn);
        let first_deadline = tokio::time::sleep(self.first_byte_timeout);
        tokio::pin!(first_deadline);
        let mut draining = false;
        loop {
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result
                        && e.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_timeout)
                    {
                        self.gate.count_closed("header_timeout");
                    }
                    break;
                }
                // Silence from the start: closed at the deadline. Once bytes came, hyper's
                // own timer covers HTTP/1 headers, and an HTTP/2 client (a gRPC channel that
                // connects eagerly and calls later) may idle with its preface sent; it stays
                // evictable until its first request.
                _ = &mut first_deadline, if !spoke.load(Ordering::Acquire) => {
                    self.gate.count_closed("silent");
                    break;
                }
                _ = permit.evicted(), if !first_request.load(Ordering::Acquire) => break,
                _ = self.shutdown.wait_for(|stop| *stop), if !draining => {
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// The TCP stream, noting whether the client has sent anything yet.
struct FirstBytes {
    inner: tokio::net::TcpStream,
    spoke: Arc<AtomicBool>,
}

impl tokio::io::AsyncRead for FirstBytes {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = std::pin::Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before && !this.spoke.load(Ordering::Relaxed) {
            this.spoke.store(true, Ordering::Release);
        }
        result
    }
}

impl tokio::io::AsyncWrite for FirstBytes {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
