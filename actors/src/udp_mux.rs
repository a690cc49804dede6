//! The shared UDP media port: receive drivers and the demux table.
//!
//! One UDP socket per worker, all bound to the same port with `SO_REUSEPORT`; the kernel
//! spreads clients over them by address hash. Each driver task receives datagrams in batches
//! (`recvmmsg`) and hands each to the owning participant's [`DatagramSink`] (which handles
//! media right there when the participant is idle, or queues it for its actor):
//!
//! 1. by source address (5-tuple; one map lookup per packet), else
//! 2. if the datagram is a STUN Binding request, by the server ufrag in its USERNAME
//!    (`<server ufrag>:<client ufrag>`). The source address is *not* learned here: only once
//!    the participant's ICE agent checked the request's MESSAGE-INTEGRITY does it call
//!    [`MuxRegistration::learn`] (and [`MuxRegistration::forget`] when consent runs out), so a
//!    forged request cannot steer another address's datagrams.
//!
//! Anything else is dropped and counted. Participants send through [`UdpMux::send_to`],
//! which never blocks (a full socket buffer drops the datagram, counted).
//!
//! Supervision: each driver runs under [`supervise`]. A driver that fails (its socket keeps
//! erroring, or a bug panics it) is counted (`hearth_actor_failures_total{kind="udp-mux"}`)
//! and restarted on a fresh socket bound to the same port, which replaces the old one in
//! its slot (senders too use the new one). The replacement is bound *before* the old socket
//! closes, so the port is never free for another process to take, and no socket without a
//! reader keeps receiving its share of the port's clients.
//!
//! PERFORMANCE-CRITICAL PATH: no logging, no locks other than the map shard read lock.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::BytesMut;
use dashmap::DashMap;
// A receive slot is the largest datagram the transport accepts: longer ones are dropped at
// the driver (counted).
use hearth_engine::transport::peer::MAX_DATAGRAM;
use metrics::Counter;
use tokio::net::UdpSocket;

/// One received datagram.
#[derive(Debug)]
pub struct Datagram {
    pub from: SocketAddr,
    pub at: Instant,
    pub data: BytesMut,
}

/// Where the mux delivers a participant's datagrams.
pub trait DatagramSink: Send + Sync + 'static {
    /// Takes the datagram (queues it, handles it in place, or drops it if the receiver is
    /// gone). True if it was handled in place and the sink wants [`Self::end_of_batch`]
    /// once the rest of the driver's current batch is routed.
    fn deliver(&self, datagram: Datagram) -> bool;

    /// The driver routed its whole batch: send what the in-place handling produced.
    fn end_of_batch(&self) {}
}

struct Entry {
    sink: Box<dyn DatagramSink>,
    /// Source addresses learned for this entry, removed with it.
    addrs: Mutex<Vec<SocketAddr>>,
}

struct MuxCounters {
    packets_in: Counter,
    bytes_in: Counter,
    unroutable: Counter,
    send_dropped: Counter,
    oversized: Counter,
    packets_out: Counter,
    bytes_out: Counter,
}

/// The media port: sockets, drivers, routing table.
pub struct UdpMux {
    sockets: Vec<Arc<SocketSlot>>,
    local_addr: SocketAddr,
    by_addr: DashMap<SocketAddr, Arc<Entry>>,
    by_ufrag: DashMap<String, Arc<Entry>>,
    counters: MuxCounters,
    /// Drill and test hook: the next datagram a driver receives panics it.
    fault: AtomicBool,
    restarts: AtomicU64,
    /// Datagrams sent (the cluster reports the rate as this node's load).
    sent: AtomicU64,
}

/// A UDP socket that a supervisor may replace with a fresh one on the same address.
pub type SocketSlot = ArcSwap<UdpSocket>;

/// Consecutive receive errors after which a socket is considered dead (an ICMP error
/// surfaces as one error between successes; a dead socket errors at once, every time).
const DEAD_SOCKET_ERRORS: u32 = 1000;

/// Runs the task `run` makes and, whenever it ends (it returned, which these tasks only do
/// on an error they cannot get past, or it panicked), counts the failure as
/// `hearth_actor_failures_total{kind}` and runs a new one (`hearth_actor_restarts_total`).
/// `run` gets the number of the attempt (0 first): on a restart it binds a fresh socket.
/// Repeated quick failures pause 10 ms, doubling to 1 s, so nothing spins.
pub fn supervise<F, Fut>(
    kind: &'static str,
    what: String,
    mut run: F,
) -> tokio::task::JoinHandle<()>
where
    F: FnMut(u64) -> Fut + Send + 'static,
    Fut: Future<Output = io::Error> + Send + 'static,
{
    tokio::spawn(async move {
        let mut pause = Duration::from_millis(10);
        let mut attempt = 0u64;
        loop {
            let started = tokio::time::Instant::now();
            let why = match tokio::spawn(run(attempt)).await {
                Ok(error) => error.to_string(),
                Err(e) if e.is_panic() => {
                    let payload = e.into_panic();
                    payload
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| payload.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "panicked".into())
                }
                // Cancelled: the runtime is shutting down.
                Err(_) => return,
            };
            metrics::counter!("hearth_actor_failures_total", "kind" => kind).increment(1);
            tracing::error!(kind, what, error = %why, "task failed; restarting it");
            if started.elapsed() < Duration::from_secs(1) {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            } else {
                pause = Duration::from_millis(10);
            }
            attempt += 1;
            metrics::counter!("hearth_actor_restarts_total", "kind" => kind).increment(1);
        }
    })
}

/// Keeps a participant routable; dropping it removes every route to it.
pub struct MuxRegistration {
    mux: Arc<UdpMux>,
    ufrag: String,
    /// Ufrags added by ICE restarts (see [`Self::add_ufrag`]).
    more_ufrags: Vec<String>,
    entry: Arc<Entry>,
}

/// Most ICE restarts one registration takes (each adds a ufrag).
pub const MAX_UFRAGS_PER_PARTICIPANT: usize = 8;

impl Drop for MuxRegistration {
    fn drop(&mut self) {
        for ufrag in std::iter::once(&self.ufrag).chain(&self.more_ufrags) {
            self.mux
                .by_ufrag
                .remove_if(ufrag, |_, e| Arc::ptr_eq(e, &self.entry));
        }
        let addrs = match self.entry.addrs.lock() {
            Ok(addrs) => addrs.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        for addr in addrs {
            self.mux
                .by_addr
                .remove_if(&addr, |_, e| Arc::ptr_eq(e, &self.entry));
        }
    }
}

/// Most addresses routed to one participant at once (its validated ICE paths).
pub const MAX_ADDRS_PER_PARTICIPANT: usize = hearth_engine::transport::ice::MAX_VALIDATED;

impl MuxRegistration {
    /// Routes `addr` to this participant (ICE validated it). Beyond
    /// [`MAX_ADDRS_PER_PARTICIPANT`] the address is not routed by address; its checks still
    /// arrive by ufrag.
    pub fn learn(&self, addr: SocketAddr) {
        let Ok(mut addrs) = self.entry.addrs.lock() else {
            return;
        };
        if addrs.contains(&addr) || addrs.len() >= MAX_ADDRS_PER_PARTICIPANT {
            return;
        }
        addrs.push(addr);
        self.mux.by_addr.insert(addr, Arc::clone(&self.entry));
    }

    /// Also routes checks for `ufrag` here (an ICE restart gave us new credentials); false
    /// once [`MAX_UFRAGS_PER_PARTICIPANT`] are registered.
    pub fn add_ufrag(&mut self, ufrag: String) -> bool {
        if self.more_ufrags.len() + 1 >= MAX_UFRAGS_PER_PARTICIPANT {
            return false;
        }
        self.mux
            .by_ufrag
            .insert(ufrag.clone(), Arc::clone(&self.entry));
        self.more_ufrags.push(ufrag);
        true
    }

    /// Stops routing `addr` to this participant (its consent expired).
    pub fn forget(&self, addr: SocketAddr) {
        if let Ok(mut addrs) = self.entry.addrs.lock() {
            addrs.retain(|a| *a != addr);
        }
        self.mux
            .by_addr
            .remove_if(&addr, |_, e| Arc::ptr_eq(e, &self.entry));
    }
}

impl UdpMux {
    /// Binds `workers` sockets on `addr` (port 0 picks a free port, shared by all).
    pub fn bind(addr: SocketAddr, workers: usize) -> io::Result<Arc<UdpMux>> {
        let first = bind_reuseport(addr)?;
        let local_addr = first.local_addr()?;
        let mut sockets = vec![Arc::new(ArcSwap::from_pointee(first))];
        for _ in 1..workers.max(1) {
            sockets.push(Arc::new(ArcSwap::from_pointee(bind_reuseport(local_addr)?)));
        }
        Ok(Arc::new(UdpMux {
            sockets,
            local_addr,
            by_addr: DashMap::new(),
            by_ufrag: DashMap::new(),
            counters: MuxCounters {
                packets_in: metrics::counter!("hearth_media_packets_in_total"),
                bytes_in: metrics::counter!("hearth_media_bytes_in_total"),
                unroutable: metrics::counter!("hearth_media_dropped_total", "reason" => "unroutable"),
                send_dropped: metrics::counter!("hearth_media_dropped_total", "reason" => "socket_full"),
                oversized: metrics::counter!("hearth_media_dropped_total", "reason" => "oversized"),
                packets_out: metrics::counter!("hearth_media_packets_out_total"),
                bytes_out: metrics::counter!("hearth_media_bytes_out_total"),
            },
            fault: AtomicBool::new(false),
            restarts: AtomicU64::new(0),
            sent: AtomicU64::new(0),
        }))
    }

    /// Starts one supervised receive driver per socket on the current Tokio runtime.
    pub fn start(self: &Arc<Self>) {
        for (i, slot) in self.sockets.iter().enumerate() {
            let mux = Arc::clone(self);
            let slot = Arc::clone(slot);
            supervise("udp-mux", format!("media socket {i}"), move |attempt| {
                let mux = Arc::clone(&mux);
                let slot = Arc::clone(&slot);
                async move {
                    if attempt > 0 {
                        // A fresh socket on the same port takes the old one's place; the
                        // old one closes once no sender holds it any more.
                        match bind_reuseport(mux.local_addr) {
                            Ok(fresh) => slot.store(Arc::new(fresh)),
                            Err(e) => return e,
                        }
                        mux.restarts.fetch_add(1, Ordering::Relaxed);
                    }
                    let socket = slot.load_full();
                    mux.drive(socket).await
                }
            });
        }
    }

    /// Drill and test hook: the driver that receives the next datagram panics.
    pub fn inject_fault(&self) {
        self.fault.store(true, Ordering::Release);
    }

    /// Drivers restarted on a fresh socket so far.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Makes `ufrag` (and the addresses later learned for it) route to `sink`.
    pub fn register(
        self: &Arc<Self>,
        ufrag: String,
        sink: Box<dyn DatagramSink>,
    ) -> MuxRegistration {
        let entry = Arc::new(Entry {
            sink,
            addrs: Mutex::new(Vec::new()),
        });
        self.by_ufrag.insert(ufrag.clone(), Arc::clone(&entry));
        MuxRegistration {
            mux: Arc::clone(self),
            ufrag,
            more_ufrags: Vec::new(),
            entry,
        }
    }

    /// Datagrams sent since the port opened.
    pub fn packets_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Sends one datagram without waiting; `hint` spreads senders over the sockets.
    pub fn send_to(&self, data: &[u8], to: SocketAddr, hint: usize) {
        let socket = self.sockets[hint % self.sockets.len()].load();
        match socket.try_send_to(data, to) {
            Ok(n) => {
                self.sent.fetch_add(1, Ordering::Relaxed);
                self.counters.packets_out.increment(1);
                self.counters.bytes_out.increment(n as u64);
            }
            Err(_) => self.counters.send_dropped.increment(1),
        }
    }

    /// Sends the datagrams of `batch` without waiting, with as few system calls as the
    /// kernel allows (`sendmmsg`, up to [`SEND_CHUNK`] datagrams per call). A datagram the
    /// kernel refuses (an unreachable destination) is dropped alone and the rest still go.
    /// When the socket's buffer is full, what is left stays in the batch, in order, and goes
    /// with the next call (the actor's next message or tick), up to [`MAX_PENDING_BYTES`]:
    /// beyond that the oldest are dropped. Drops are counted.
    pub fn send_batch(&self, batch: &mut SendBatch, hint: usize) {
        if batch.is_empty() {
            return;
        }
        let socket = self.sockets[hint % self.sockets.len()].load();
        let done = batch.drain_with(|buf, chunk| match chunk {
            [(range, to)] => socket
                .try_send_to(&buf[range.clone()], *to)
                .map(|n| (1, n as u64)),
            _ => send_chunk(&socket, buf, chunk),
        });
        if done.sent > 0 {
            self.sent.fetch_add(done.sent as u64, Ordering::Relaxed);
            self.counters.packets_out.increment(done.sent as u64);
            self.counters.bytes_out.increment(done.bytes);
        }
        if done.dropped > 0 {
            self.counters.send_dropped.increment(done.dropped as u64);
        }
    }

    /// Receives until the socket is dead (the error is returned).
    ///
    /// Up to [`RECV_BATCH`] datagrams per `recvmmsg` call, each in its own
    /// [`MAX_DATAGRAM`]-byte slot of one shared buffer: every datagram becomes a `BytesMut`
    /// view of its slot (no copy), and the buffer is replaced once its slots are used up.
    async fn drive(&self, socket: Arc<UdpSocket>) -> io::Error {
        let mut buf = BytesMut::new();
        // Slots asked for in the next call: grows while calls come back full (datagrams are
        // queueing), shrinks to what arrived plus one when they do not, so a quiet socket
        // pays for two headers per call, not for RECV_BATCH.
        let mut want = 2usize;
        let mut received: Vec<Received> = Vec::with_capacity(RECV_BATCH);
        // Participants that handled datagrams of this batch in place.
        let mut touched: Vec<Arc<Entry>> = Vec::with_capacity(RECV_BATCH);
        let mut errors = 0u32;
        loop {
            if buf.len() < MAX_DATAGRAM {
                buf = refill(buf);
            }
            let slots = want.min(buf.len() / MAX_DATAGRAM);
            received.clear();
            let result = socket
                .async_io(tokio::io::Interest::READABLE, || {
                    recv_batch(&socket, &mut buf[..slots * MAX_DATAGRAM], &mut received)
                })
                .await;
            want = if received.len() < slots {
                (received.len() + 1).clamp(2, RECV_BATCH)
            } else if slots == want {
                (want * 2).min(RECV_BATCH)
            } else {
                // Full, but cut short by the buffer's end: keep the size.
                want
            };
            if let Err(e) = result {
                // ICMP errors (ECONNREFUSED from an earlier send) surface here; keep going
                // unless the socket does nothing but fail.
                tracing::trace!(error = %e, "media socket receive error");
                errors += 1;
                if errors >= DEAD_SOCKET_ERRORS {
                    return e;
                }
                continue;
            }
            errors = 0;
            if self.fault.load(Ordering::Relaxed) && self.fault.swap(false, Ordering::AcqRel) {
                panic!("fault injected into a media socket driver");
            }
            let at = Instant::now();
            let mut slots = buf.split_to(received.len() * MAX_DATAGRAM);
            touched.clear();
            for r in &received {
                let mut data = slots.split_to(MAX_DATAGRAM);
                if r.truncated {
                    // Longer than any datagram the transport accepts.
                    self.counters.oversized.increment(1);
                    continue;
                }
                let Some(from) = r.from else {
                    self.counters.unroutable.increment(1);
                    continue;
                };
                data.truncate(r.len);
                self.counters.packets_in.increment(1);
                self.counters.bytes_in.increment(r.len as u64);
                if let Some(entry) = self.route(Datagram { from, at, data })
                    && !touched.iter().any(|t| Arc::ptr_eq(t, &entry))
                {
                    touched.push(entry);
                }
            }
            // Copies of the whole batch leave together, per participant (one sendmmsg each).
            for entry in touched.drain(..) {
                entry.sink.end_of_batch();
            }
        }
    }

    /// Delivers a datagram to its participant, or drops it (counted). Returns the
    /// participant's entry if it handled the datagram in place and waits for the end of
    /// the batch.
    fn route(&self, datagram: Datagram) -> Option<Arc<Entry>> {
        let entry = match self
            .by_addr
            .get(&datagram.from)
            .map(|e| Arc::clone(e.value()))
        {
            Some(entry) => entry,
            None => {
                let Some(ufrag) = stun_server_ufrag(&datagram.data) else {
                    self.counters.unroutable.increment(1);
                    return None;
                };
                let Some(entry) = self.by_ufrag.get(ufrag).map(|e| Arc::clone(e.value())) else {
                    self.counters.unroutable.increment(1);
                    return None;
                };
                entry
            }
        };
        entry.sink.deliver(datagram).then_some(entry)
    }

    /// Number of routes (for tests and stats).
    pub fn routes(&self) -> (usize, usize) {
        (self.by_ufrag.len(), self.by_addr.len())
    }
}

/// Most datagrams handed to the kernel in one `sendmmsg` (Linux caps a call at 1,024).
pub const SEND_CHUNK: usize = 256;

/// Datagrams waiting to be sent together: one buffer for all their bytes (kept and reused,
/// so sealing a copy allocates nothing) and each datagram's range and destination.
#[derive(Default)]
pub struct SendBatch {
    buf: Vec<u8>,
    items: Vec<(std::ops::Range<usize>, SocketAddr)>,
}

impl SendBatch {
    /// Queues the datagram `write` appends to the buffer (it returns false, having appended
    /// nothing, when it has nothing to send). Returns the datagram's length, 0 if none.
    pub fn push_with(&mut self, to: SocketAddr, write: impl FnOnce(&mut Vec<u8>) -> bool) -> usize {
        let start = self.buf.len();
        if !write(&mut self.buf) || self.buf.len() == start {
            self.buf.truncate(start);
            return 0;
        }
        let end = self.buf.len();
        self.items.push((start..end, to));
        end - start
    }

    /// Queues a copy of `data`.
    #[cfg(test)]
    pub fn push(&mut self, to: SocketAddr, data: &[u8]) {
        self.push_with(to, |buf| {
            buf.extend_from_slice(data);
            true
        });
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Bytes queued.
    pub fn bytes(&self) -> usize {
        self.buf.len()
    }

    pub fn clear(&mut self) {
        self.buf.clear();
        self.items.clear();
    }

    /// The queued datagrams, in order.
    #[cfg(test)]
    pub fn datagrams(&self) -> impl Iterator<Item = (&[u8], SocketAddr)> {
        self.items.iter().map(|(r, to)| (&self.buf[r.clone()], *to))
    }
}

/// Bytes a [`SendBatch`] keeps for a socket whose buffer is full, before it drops its oldest
/// datagrams.
pub const MAX_PENDING_BYTES: usize = 256 * 1024;

/// What [`SendBatch::drain_with`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Drained {
    pub sent: usize,
    pub bytes: u64,
    pub dropped: usize,
}

impl SendBatch {
    /// Hands the datagrams to `send` in chunks of at most [`SEND_CHUNK`] (`send` returns how
    /// many of the chunk's first datagrams it sent and their bytes, an error for the first
    /// one, or `WouldBlock`). A refused datagram is dropped alone; on `WouldBlock` the rest
    /// are kept, in order, within [`MAX_PENDING_BYTES`].
    pub fn drain_with(
        &mut self,
        mut send: impl FnMut(&[u8], &[(std::ops::Range<usize>, SocketAddr)]) -> io::Result<(usize, u64)>,
    ) -> Drained {
        let mut done = Drained::default();
        let mut next = 0;
        let mut blocked = false;
        while next < self.items.len() {
            let chunk = &self.items[next..self.items.len().min(next + SEND_CHUNK)];
            match send(&self.buf, chunk) {
                Ok((sent, bytes)) if sent > 0 => {
                    done.sent += sent;
                    done.bytes += bytes;
                    next += sent.min(chunk.len());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    blocked = true;
                    break;
                }
                // The chunk's first datagram was refused (or nothing was sent): drop that
                // one and go on with the next.
                _ => {
                    done.dropped += 1;
                    next += 1;
                }
            }
        }
        if !blocked {
            self.clear();
            return done;
        }
        // Keep what is left, oldest first, within the bound.
        let total = self.buf.len();
        while next < self.items.len() && total - self.items[next].0.start > MAX_PENDING_BYTES {
            done.dropped += 1;
            next += 1;
        }
        if next == self.items.len() {
            self.clear();
            return done;
        }
        let start = self.items[next].0.start;
        if start > 0 {
            self.buf.drain(..start);
            self.items.drain(..next);
            for (range, _) in &mut self.items {
                *range = range.start - start..range.end - start;
            }
        }
        done
    }
}

/// Datagrams one `recvmmsg` call takes at most. Also the longest a received packet waits
/// for the batch's `sendmmsg`: the copies of a batch leave together at its end, so the first
/// datagram waits for the others' work. Measured back to back at 94,000 forwarded packets/s
/// (BENCHMARKS.md): 32 put the median packet at about 95 us in the node, 8 at about 40 us,
/// at the same CPU per packet (at 150,000 packets/s too).
const RECV_BATCH: usize = 8;
/// Receive slots per buffer allocation (64 KiB): datagrams are views of their slots, and a
/// buffer is replaced once all its slots are handed out. A view kept alive keeps its whole
/// buffer: the retransmission cache therefore copies what it keeps (`hearth_engine::nack`).
const RECV_CHUNK_SLOTS: usize = 32;

/// A receive buffer of [`RECV_CHUNK_SLOTS`] slots, in place of `used` (whose slots are all
/// handed out): `used`'s own allocation again when every view of it has been dropped (the
/// usual case: datagrams handled on the driver are gone by the end of their batch), else a
/// new one. Reusing it matters: a fresh allocation of this size comes as untouched pages,
/// and the kernel's copy into them faulted each page in (7 % of the server's CPU in the
/// video-meeting profile, BENCHMARKS.md); zeroing pages already mapped costs a memset.
fn refill(mut used: BytesMut) -> BytesMut {
    const SIZE: usize = RECV_CHUNK_SLOTS * MAX_DATAGRAM;
    used.clear();
    if used.try_reclaim(SIZE) {
        used.resize(SIZE, 0);
        used
    } else {
        BytesMut::zeroed(SIZE)
    }
}

/// One datagram of a `recvmmsg` batch: its length in its slot and its source (None: a
/// family this socket does not serve).
struct Received {
    len: usize,
    from: Option<SocketAddr>,
    truncated: bool,
}

/// One non-blocking `recvmmsg` into `buf`'s [`MAX_DATAGRAM`]-byte slots (at most
/// [`RECV_BATCH`]; Tokio's readiness around it: `WouldBlock` when nothing is waiting).
/// Appends what arrived to `out`, in order; slot `i` holds datagram `i`.
fn recv_batch(socket: &UdpSocket, buf: &mut [u8], out: &mut Vec<Received>) -> io::Result<()> {
    use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg};
    use std::io::IoSliceMut;
    use std::os::fd::AsRawFd;
    let slots = (buf.len() / MAX_DATAGRAM).clamp(1, RECV_BATCH);
    let mut chunks = buf.chunks_mut(MAX_DATAGRAM);
    let mut slices: [[IoSliceMut<'_>; 1]; RECV_BATCH] =
        std::array::from_fn(|_| [IoSliceMut::new(chunks.next().unwrap_or_default())]);
    // Holds raw pointers (not `Send`), so it lives for one call: two small allocations per
    // call, sized to the slots asked for.
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(slots, None);
    let results = recvmmsg(
        socket.as_raw_fd(),
        &mut headers,
        slices[..slots].iter_mut(),
        MsgFlags::MSG_DONTWAIT,
        None,
    )
    .map_err(io::Error::from)?;
    for msg in results {
        let from = msg.address.as_ref().and_then(|a| {
            a.as_sockaddr_in()
                .map(|v4| SocketAddr::from(std::net::SocketAddrV4::from(*v4)))
                .or_else(|| {
                    a.as_sockaddr_in6()
                        .map(|v6| SocketAddr::from(std::net::SocketAddrV6::from(*v6)))
                })
        });
        // Every slot is consumed in order, even one without a usable source (a family we
        // do not serve), so slot i stays datagram i.
        out.push(Received {
            len: msg.bytes,
            from,
            truncated: msg.flags.contains(MsgFlags::MSG_TRUNC),
        });
    }
    Ok(())
}

/// One `sendmmsg` call for `items` (at most [`SEND_CHUNK`]): how many datagrams the kernel
/// took and their bytes. Goes through Tokio's readiness, so a full socket reports
/// `WouldBlock` until the reactor sees it writable again.
fn send_chunk(
    socket: &UdpSocket,
    buf: &[u8],
    items: &[(std::ops::Range<usize>, SocketAddr)],
) -> io::Result<(usize, u64)> {
    use rustix::net::{MMsgHdr, SendAncillaryBuffer, SendFlags, SocketAddrAny};
    use std::io::IoSlice;
    let addrs: Vec<SocketAddrAny> = items.iter().map(|(_, to)| (*to).into()).collect();
    let iovs: Vec<[IoSlice<'_>; 1]> = items
        .iter()
        .map(|(r, _)| [IoSlice::new(&buf[r.clone()])])
        .collect();
    let mut controls: Vec<SendAncillaryBuffer<'_, '_, '_>> = items
        .iter()
        .map(|_| SendAncillaryBuffer::default())
        .collect();
    let mut msgs: Vec<MMsgHdr<'_>> = addrs
        .iter()
        .zip(&iovs)
        .zip(controls.iter_mut())
        .map(|((addr, iov), control)| MMsgHdr::new_with_addr(addr, iov, control))
        .collect();
    let sent = socket.try_io(tokio::io::Interest::WRITABLE, || {
        rustix::net::sendmmsg(socket, &mut msgs, SendFlags::empty()).map_err(io::Error::from)
    })?;
    let bytes = msgs[..sent].iter().map(|m| m.bytes_sent() as u64).sum();
    Ok((sent, bytes))
}

fn bind_reuseport(addr: SocketAddr) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    // Best effort: bigger buffers absorb bursts; the kernel caps them at rmem_max/wmem_max.
    let _ = socket.set_recv_buffer_size(4 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
    // Don't-fragment with the path MTU cache ignored (as QUIC stacks do): media datagrams are
    // sized for the path by the endpoints already, and a DF datagram leaves with IP ID 0
    // instead of the kernel's per-destination ID generator (a hash and a shared counter per
    // datagram: about 5 % of a forwarded copy's CPU here). Best effort.
    let _ = match addr {
        SocketAddr::V4(_) => rustix::net::sockopt::set_ip_mtu_discover(
            &socket,
            rustix::net::sockopt::Ipv4PathMtuDiscovery::PROBE,
        ),
        SocketAddr::V6(_) => rustix::net::sockopt::set_ipv6_mtu_discover(
            &socket,
            rustix::net::sockopt::Ipv6PathMtuDiscovery::PROBE,
        ),
    };
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// If `data` is a STUN Binding request with a USERNAME attribute, returns the part before
/// the colon (the ufrag of the receiving agent, i.e. ours). Never panics on any input.
pub fn stun_server_ufrag(data: &[u8]) -> Option<&str> {
    const MAGIC: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
    const BINDING_REQUEST: u16 = 0x0001;
    const USERNAME: u16 = 0x0006;
    if data.len() < 20 || data[0] & 0xC0 != 0 || data[4..8] != MAGIC {
        return None;
    }
    if u16::from_be_bytes([data[0], data[1]]) != BINDING_REQUEST {
        return None;
    }
    let body_len = usize::from(u16::from_be_bytes([data[2], data[3]]));
    let body = data.get(20..20 + body_len)?;
    let mut rest = body;
    while rest.len() >= 4 {
        let typ = u16::from_be_bytes([rest[0], rest[1]]);
        let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        let value = rest.get(4..4 + len)?;
        if typ == USERNAME {
            let username = std::str::from_utf8(value).ok()?;
            let (ours, _) = username.split_once(':')?;
            return (!ours.is_empty()).then_some(ours);
        }
        let padded = (len + 3) & !3;
        rest = rest.get(4 + padded..)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receive_buffer_is_reused_once_its_views_are_gone() {
        let size = RECV_CHUNK_SLOTS * MAX_DATAGRAM;
        let mut buf = refill(BytesMut::new());
        assert_eq!(buf.len(), size);
        let start = buf.as_ptr();
        // Every slot handed out as a datagram's view, written to like the kernel would.
        let mut views: Vec<BytesMut> = (0..RECV_CHUNK_SLOTS)
            .map(|_| buf.split_to(MAX_DATAGRAM))
            .collect();
        views[3][0] = 0xab;
        // One view still alive (a datagram queued for an actor): a new buffer.
        let kept = views.pop().unwrap();
        drop(views);
        let fresh = refill(buf);
        assert_ne!(fresh.as_ptr(), start);
        assert_eq!(fresh.len(), size);
        drop(fresh);
        // All gone: the same memory again, zeroed and full length.
        let mut buf = BytesMut::zeroed(size);
        let start = buf.as_ptr();
        let views: Vec<BytesMut> = (0..RECV_CHUNK_SLOTS)
            .map(|_| {
                let mut v = buf.split_to(MAX_DATAGRAM);
                v.fill(7);
                v
            })
            .collect();
        drop(views);
        drop(kept);
        let reused = refill(buf);
        assert_eq!(reused.as_ptr(), start);
        assert_eq!(reused.len(), size);
        assert!(reused.iter().all(|&b| b == 0));
    }

    fn binding_request(username: &[u8]) -> Vec<u8> {
        let mut attrs = Vec::new();
        // A PRIORITY attribute first, so the parser has to walk.
        attrs.extend_from_slice(&[0x00, 0x24, 0x00, 0x04, 1, 2, 3, 4]);
        attrs.extend_from_slice(&0x0006u16.to_be_bytes());
        attrs.extend_from_slice(&(username.len() as u16).to_be_bytes());
        attrs.extend_from_slice(username);
        while attrs.len() % 4 != 0 {
            attrs.push(0);
        }
        let mut msg = vec![0x00, 0x01];
        msg.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        msg.extend_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
        msg.extend_from_slice(&[7; 12]);
        msg.extend_from_slice(&attrs);
        msg
    }

    struct Count(Arc<AtomicU64>);

    impl DatagramSink for Count {
        fn deliver(&self, _datagram: Datagram) -> bool {
            self.0.fetch_add(1, Ordering::Relaxed);
            false
        }
    }

    /// Sends one datagram from each client and polls until all arrived (true) or the
    /// deadline passed (false).
    async fn all_get_through(
        clients: &[std::net::UdpSocket],
        to: SocketAddr,
        msg: &[u8],
        delivered: &AtomicU64,
    ) -> bool {
        let before = delivered.load(Ordering::Relaxed);
        for c in clients {
            c.send_to(msg, to).unwrap();
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while tokio::time::Instant::now() < deadline {
            if delivered.load(Ordering::Relaxed) - before == clients.len() as u64 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        false
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_driver_restarts_on_a_fresh_socket_and_every_client_gets_through() {
        let mux = UdpMux::bind("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        mux.start();
        let to = mux.local_addr();
        let delivered = Arc::new(AtomicU64::new(0));
        let _reg = mux.register("srv".into(), Box::new(Count(Arc::clone(&delivered))));
        let msg = binding_request(b"srv:cli");
        // Enough source ports that the kernel's hash spreads them over both sockets.
        let clients: Vec<std::net::UdpSocket> = (0..32)
            .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        assert!(all_get_through(&clients, to, &msg, &delivered).await);

        mux.inject_fault();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while mux.restarts() == 0 {
            assert!(tokio::time::Instant::now() < deadline, "no restart");
            clients[0].send_to(&msg, to).unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Nothing is left behind on a socket without a reader: every client gets through,
        // several times over, and sending still works on every slot.
        for _ in 0..3 {
            assert!(all_get_through(&clients, to, &msg, &delivered).await);
        }
        let echo = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        echo.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        for hint in 0..2 {
            mux.send_to(b"out", echo.local_addr().unwrap(), hint);
            let mut buf = [0u8; 8];
            let (n, from) = echo.recv_from(&mut buf).unwrap();
            assert_eq!((&buf[..n], from), (&b"out"[..], to));
        }
    }

    /// A batch goes out with `sendmmsg`: every datagram arrives, in order, at its own
    /// destination; one the kernel refuses at once (an IPv6 destination from an IPv4 socket)
    /// is dropped alone, the ones after it still go; the batch is emptied.
    #[tokio::test]
    async fn a_batch_reaches_every_destination_and_a_refused_datagram_drops_alone() {
        let mux = UdpMux::bind("127.0.0.1:0".parse().unwrap(), 1).unwrap();
        let receivers: Vec<std::net::UdpSocket> = (0..3)
            .map(|_| {
                let r = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                r.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                r
            })
            .collect();
        let mut batch = SendBatch::default();
        let mut expected: Vec<Vec<Vec<u8>>> = vec![Vec::new(); 3];
        for i in 0..300u32 {
            if i == 150 {
                batch.push("[::1]:9".parse().unwrap(), b"refused");
            }
            let r = (i % 3) as usize;
            let data = i.to_be_bytes().repeat(1 + (i % 5) as usize);
            batch.push(receivers[r].local_addr().unwrap(), &data);
            expected[r].push(data);
        }
        assert_eq!(batch.len(), 301);
        // Nothing sealed into the batch when the writer says so.
        assert_eq!(
            batch.push_with(receivers[0].local_addr().unwrap(), |_| false),
            0
        );
        // (The reactor has to have seen the new socket writable once: a running node's
        // drivers have it polled long before anyone sends.)
        mux.sockets[0].load().writable().await.unwrap();
        mux.send_batch(&mut batch, 0);
        assert!(batch.is_empty() && batch.bytes() == 0);
        // Datagrams leave with don't-fragment set, the path MTU cache ignored.
        assert_eq!(
            rustix::net::sockopt::ip_mtu_discover(&**mux.sockets[0].load()).unwrap(),
            rustix::net::sockopt::Ipv4PathMtuDiscovery::PROBE
        );
        for (r, want) in receivers.iter().zip(expected) {
            for data in want {
                let mut buf = [0u8; 64];
                let (n, from) = r.recv_from(&mut buf).unwrap();
                assert_eq!((&buf[..n], from), (&data[..], mux.local_addr()));
            }
        }
    }

    /// A full socket keeps the rest of the batch, in order, for the next call instead of
    /// dropping it; a refused datagram drops alone; beyond the bound the oldest go.
    #[test]
    fn a_full_socket_keeps_the_rest_of_the_batch() {
        let to: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let mut batch = SendBatch::default();
        for i in 0..10u8 {
            batch.push(to, &[i; 100]);
        }
        // The kernel takes three, then the socket is full.
        let mut log = Vec::new();
        let mut calls = 0;
        let done = batch.drain_with(|buf, chunk| {
            calls += 1;
            if calls > 1 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            for (r, _) in &chunk[..3] {
                log.push(buf[r.start]);
            }
            Ok((3, 300))
        });
        assert_eq!(
            done,
            Drained {
                sent: 3,
                bytes: 300,
                dropped: 0
            }
        );
        assert_eq!(batch.len(), 7);
        // New copies queue behind the kept ones; the next call sends all in order, and the
        // fifth datagram is refused by the kernel (dropped alone).
        batch.push(to, &[10; 100]);
        let done = batch.drain_with(|buf, chunk| {
            if buf[chunk[0].0.start] == 5 {
                return Err(io::ErrorKind::InvalidInput.into());
            }
            for (r, _) in chunk {
                if buf[r.start] == 5 {
                    break;
                }
                log.push(buf[r.start]);
            }
            let n = chunk.iter().take_while(|(r, _)| buf[r.start] != 5).count();
            Ok((n, 100 * n as u64))
        });
        assert_eq!(
            done,
            Drained {
                sent: 7,
                bytes: 700,
                dropped: 1
            }
        );
        assert!(batch.is_empty() && batch.bytes() == 0);
        assert_eq!(log, vec![0, 1, 2, 3, 4, 6, 7, 8, 9, 10]);
        // Blocked with more than the bound queued: the oldest are dropped down to it.
        let n = MAX_PENDING_BYTES / 1000 + 10;
        for i in 0..n {
            batch.push(to, &[(i % 250) as u8; 1000]);
        }
        let done = batch.drain_with(|_, _| Err(io::ErrorKind::WouldBlock.into()));
        assert_eq!(done.dropped, n - MAX_PENDING_BYTES / 1000);
        assert!(batch.bytes() <= MAX_PENDING_BYTES);
        assert_eq!(
            batch.datagrams().next().unwrap().0[0],
            (done.dropped % 250) as u8
        );
    }

    #[test]
    fn finds_the_server_ufrag() {
        let msg = binding_request(b"srvUfrag:cli");
        assert_eq!(stun_server_ufrag(&msg), Some("srvUfrag"));
    }

    #[test]
    fn rejects_non_binding_and_malformed() {
        let mut msg = binding_request(b"a:b");
        msg[1] = 0x03; // Allocate, not Binding
        assert_eq!(stun_server_ufrag(&msg), None);
        assert_eq!(stun_server_ufrag(&binding_request(b"nocolon")), None);
        assert_eq!(stun_server_ufrag(&binding_request(b":b")), None);
        assert_eq!(stun_server_ufrag(&[0x80; 40]), None);
        let full = binding_request(b"srv:cli");
        for n in 0..full.len() {
            // Every truncation is handled without panicking.
            let _ = stun_server_ufrag(&full[..n]);
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 120) as usize;
            let mut buf: Vec<u8> = (0..len).map(|i| (state >> (i % 56)) as u8).collect();
            if len >= 8 && state.is_multiple_of(3) {
                buf[0] = 0;
                buf[1] = 1;
                buf[4..8].copy_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
            }
            let _ = stun_server_ufrag(&buf);
        }
    }
}
