//! A shard: one UDP socket and one task driving many simulated participants' peer
//! connections (one shard per core).
//!
//! Every participant gets its own IP address (from a range routed to this machine, e.g.
//! 127.64.0.0/10 on loopback) and the shard's port, so the server sees a distinct 5-tuple
//! per participant while the load generator needs only one socket per core: datagrams are
//! sent with the participant's address as source (IP_PKTINFO) and received ones are routed
//! to the participant that owns their destination address (quinn-udp does both, with
//! batched system calls).
//!
//! A participant is a WebRTC peer ([`Peer`], towards Hearth or Janus) or, with `--target
//! floor`, a plain RTP sender and receiver towards the floor forwarder ([`FloorPeer`]); the
//! shard drives both the same way (timing, socket, accounting).

use std::collections::HashMap;
use std::io::IoSliceMut;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use rtc::peer_connection::transport::RTCIceCandidateInit;
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use crate::floor::FloorPeer;
use crate::lean::LeanPeer;
use crate::peer::{Peer, PeerOut, Reception, Sending};
use crate::reconnect::Gap;
use crate::stats::latency_histogram;

const TICK: Duration = Duration::from_millis(2);
const BATCH: usize = 32;
const AUDIO_EVERY: Duration = Duration::from_millis(20);

pub enum ShardCmd {
    Add {
        id: u32,
        ip: IpAddr,
        sending: Sending,
        started: Instant,
        out: mpsc::UnboundedSender<PeerOut>,
        /// Counts as a participant (connected, join time): false for the extra
        /// publishing connection a Janus participant has, and for a rejoin.
        counts: bool,
        /// `--reconnect` bookkeeping: report the first media packet (`PeerOut::FirstMedia`)
        /// and gaps in senders' media.
        watch: bool,
        /// A `--churn` replacement: its join time also goes to the churn histogram.
        churn: bool,
        link: Link,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Offer {
        id: u32,
        sdp: String,
    },
    Answer {
        id: u32,
        sdp: String,
    },
    Candidate {
        id: u32,
        candidate: RTCIceCandidateInit,
    },
    /// The server asks the publisher to pause these simulcast layers (dynacast).
    PausedLayers {
        id: u32,
        layers: Vec<u32>,
    },
    Remove {
        id: u32,
    },
}

/// What a participant speaks to the server.
#[derive(Clone, Copy, Debug)]
pub enum Link {
    /// Signaling-negotiated WebRTC (ICE, DTLS, SRTP) on the full `rtc` peer connection:
    /// Hearth, Janus.
    WebRtc,
    /// The same towards an ICE-lite server (Hearth) on the lean client ([`LeanPeer`]),
    /// decrypting one received packet in `decrypt_every`.
    Lean { decrypt_every: u32 },
    /// Plain RTP to the floor forwarder at `server`, registered in `meeting`.
    Floor { server: SocketAddr, meeting: u32 },
}

impl Link {
    /// The client's name in reports.
    pub fn client_name(&self) -> &'static str {
        match self {
            Link::WebRtc => "full",
            Link::Lean { .. } => "lean",
            Link::Floor { .. } => "floor",
        }
    }
}

/// A participant's connection, by [`Link`].
// Kept inline as before (the WebRTC peer, about 9 KB, is the usual one; boxing it would
// change the WebRTC runs' generator): a floor entry wastes that space, on small runs only.
#[allow(clippy::large_enum_variant)]
enum Conn {
    WebRtc(Peer),
    Lean(Box<LeanPeer>),
    Floor(FloorPeer),
}

impl Conn {
    fn on_remote_offer(&mut self, sdp: String) {
        match self {
            Conn::WebRtc(p) => p.on_remote_offer(sdp),
            Conn::Lean(p) => p.on_remote_offer(sdp),
            Conn::Floor(_) => {}
        }
    }

    fn on_remote_answer(&mut self, sdp: String) {
        match self {
            Conn::WebRtc(p) => p.on_remote_answer(sdp),
            Conn::Lean(p) => p.on_remote_answer(sdp),
            Conn::Floor(_) => {}
        }
    }

    /// Trickled candidates: the lean client talks to ICE-lite servers only, whose
    /// candidates are in their descriptions.
    fn on_remote_candidate(&mut self, c: RTCIceCandidateInit) {
        if let Conn::WebRtc(p) = self {
            p.on_remote_candidate(c);
        }
    }

    /// Dynacast: only the full client sends simulcast.
    fn set_paused_layers(&mut self, layers: &[u32]) {
        if let Conn::WebRtc(p) = self {
            p.set_paused_layers(layers);
        }
    }

    fn rx(&self) -> &Reception {
        match self {
            Conn::WebRtc(p) => &p.rx,
            Conn::Lean(p) => &p.rx,
            Conn::Floor(p) => &p.rx,
        }
    }

    fn rx_mut(&mut self) -> &mut Reception {
        match self {
            Conn::WebRtc(p) => &mut p.rx,
            Conn::Lean(p) => &mut p.rx,
            Conn::Floor(p) => &mut p.rx,
        }
    }

    fn pump(&mut self, now: Instant, send: impl FnMut(SocketAddr, &[u8])) {
        match self {
            Conn::WebRtc(p) => p.pump(now, send),
            Conn::Lean(p) => p.pump(now, send),
            Conn::Floor(p) => p.pump(now, send),
        }
    }

    fn take_out(&mut self) -> Vec<PeerOut> {
        match self {
            Conn::WebRtc(p) => p.take_out(),
            Conn::Lean(p) => p.take_out(),
            Conn::Floor(p) => p.take_out(),
        }
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        match self {
            Conn::WebRtc(p) => p.poll_timeout(),
            Conn::Lean(p) => p.poll_timeout(),
            Conn::Floor(p) => p.poll_timeout(),
        }
    }

    fn on_timeout(&mut self, now: Instant) {
        match self {
            Conn::WebRtc(p) => p.on_timeout(now),
            Conn::Lean(p) => p.on_timeout(now),
            Conn::Floor(p) => p.on_timeout(now),
        }
    }

    fn on_datagram(&mut self, from: SocketAddr, data: &[u8], now: Instant) {
        match self {
            Conn::WebRtc(p) => p.on_datagram(from, data, now),
            Conn::Lean(p) => p.on_datagram(from, data, now),
            Conn::Floor(p) => p.on_datagram(from, data, now),
        }
    }

    fn send_audio(&mut self, now: Instant) {
        match self {
            Conn::WebRtc(p) => p.send_audio(now),
            Conn::Lean(p) => p.send_audio(now),
            Conn::Floor(p) => p.send_audio(now),
        }
    }

    fn send_video(&mut self, now: Instant) {
        match self {
            Conn::WebRtc(p) => p.send_video(now),
            Conn::Lean(p) => p.send_video(now),
            Conn::Floor(p) => p.send_video(now),
        }
    }

    fn close(&mut self) {
        match self {
            Conn::WebRtc(p) => p.close(),
            Conn::Lean(p) => p.close(),
            Conn::Floor(_) => {}
        }
    }
}

/// What a shard measured; the orchestrator reads and resets the interval parts.
pub struct Totals {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    pub send_drops: u64,
    pub keyframe_requests: u64,
    pub keyframes_in: u64,
    /// Received packets or records that failed authentication, decryption or parsing.
    pub media_errors: u64,
    /// Latency of packets received since the last reset (µs).
    pub latency_interval: Histogram<u64>,
    /// Latency of every packet (µs).
    pub latency_total: Histogram<u64>,
    /// Join times (token to first media received, ms).
    pub join_ms: Histogram<u64>,
    /// Join times of `--churn` replacements (ms), also in `join_ms`.
    pub join_ms_churn: Histogram<u64>,
    pub connected: u64,
    pub failed: u64,
    /// Streams of live peers (refreshed every second) plus those of removed ones.
    pub expected: u64,
    pub received: u64,
    pub duplicates: u64,
    pub jitter_ms_sum: f64,
    pub streams: u64,
    /// Gaps in senders' media seen by watched peers: (receiver, gap); drained by the
    /// orchestrator.
    pub gaps: Vec<(u32, Gap)>,
    expected_done: u64,
    received_done: u64,
    duplicates_done: u64,
}

impl Totals {
    fn new() -> Self {
        Totals {
            packets_in: 0,
            bytes_in: 0,
            packets_out: 0,
            bytes_out: 0,
            send_drops: 0,
            keyframe_requests: 0,
            keyframes_in: 0,
            media_errors: 0,
            latency_interval: latency_histogram(),
            latency_total: latency_histogram(),
            join_ms: latency_histogram(),
            join_ms_churn: latency_histogram(),
            connected: 0,
            failed: 0,
            expected: 0,
            received: 0,
            duplicates: 0,
            jitter_ms_sum: 0.0,
            streams: 0,
            gaps: Vec::new(),
            expected_done: 0,
            received_done: 0,
            duplicates_done: 0,
        }
    }
}

struct Entry {
    peer: Conn,
    ip: IpAddr,
    out: mpsc::UnboundedSender<PeerOut>,
    started: Instant,
    counts: bool,
    joined: bool,
    watch: bool,
    churn: bool,
    first_media_told: bool,
    next_timeout: Option<Instant>,
    next_audio: Instant,
    next_video: Option<Instant>,
    video_every: Duration,
}

pub struct Shard {
    socket: UdpSocket,
    udp: UdpSocketState,
    port: u16,
    peers: HashMap<u32, Entry>,
    by_ip: HashMap<IpAddr, u32>,
    totals: Arc<Mutex<Totals>>,
    epoch: Instant,
}

/// Handle to a running shard.
#[derive(Clone)]
pub struct ShardHandle {
    pub cmds: mpsc::UnboundedSender<ShardCmd>,
    pub totals: Arc<Mutex<Totals>>,
}

impl Shard {
    /// Binds `bind` (port 0 picks one) and starts the shard's task.
    pub fn spawn(bind: SocketAddr, epoch: Instant) -> std::io::Result<ShardHandle> {
        let std_socket = std::net::UdpSocket::bind(bind)?;
        std_socket.set_nonblocking(true)?;
        let udp = UdpSocketState::new((&std_socket).into())?;
        // One socket carries a whole shard's participants, and an SFU sends each packet's
        // copies in one burst: a default-sized (208 KiB) receive buffer overflows while the
        // shard decrypts, and the generator's own drops would be reported as the server's
        // loss. Best effort: the kernel caps both at rmem_max/wmem_max.
        let _ = udp.set_recv_buffer_size((&std_socket).into(), 4 << 20);
        let _ = udp.set_send_buffer_size((&std_socket).into(), 4 << 20);
        let port = std_socket.local_addr()?.port();
        let socket = UdpSocket::from_std(std_socket)?;
        let totals = Arc::new(Mutex::new(Totals::new()));
        let (tx, rx) = mpsc::unbounded_channel();
        let shard = Shard {
            socket,
            udp,
            port,
            peers: HashMap::new(),
            by_ip: HashMap::new(),
            totals: Arc::clone(&totals),
            epoch,
        };
        tokio::spawn(shard.run(rx));
        Ok(ShardHandle { cmds: tx, totals })
    }

    async fn run(mut self, mut cmds: mpsc::UnboundedReceiver<ShardCmd>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut sweep = tokio::time::interval(Duration::from_secs(1));
        let mut buf = vec![0u8; 2048 * BATCH];
        loop {
            tokio::select! {
                cmd = cmds.recv() => match cmd {
                    Some(cmd) => self.on_cmd(cmd),
                    None => break,
                },
                ready = self.socket.readable() => {
                    if ready.is_ok() {
                        self.receive(&mut buf);
                    }
                }
                _ = tick.tick() => self.on_tick(),
                _ = sweep.tick() => self.sweep(),
            }
        }
        for (_, mut e) in self.peers.drain() {
            e.peer.close();
        }
    }

    fn send_datagram(
        socket: &UdpSocket,
        udp: &UdpSocketState,
        src: IpAddr,
        to: SocketAddr,
        data: &[u8],
    ) -> bool {
        let transmit = Transmit {
            destination: to,
            ecn: None,
            contents: data,
            segment_size: None,
            src_ip: Some(src),
        };
        socket
            .try_io(Interest::WRITABLE, || udp.send(socket.into(), &transmit))
            .is_ok()
    }

    /// Runs `f` on a peer, then sends what it wrote and forwards what it said.
    fn with_peer(&mut self, id: u32, now: Instant, f: impl FnOnce(&mut Conn)) {
        let Shard {
            socket,
            udp,
            peers,
            totals,
            ..
        } = self;
        let Some(e) = peers.get_mut(&id) else {
            return;
        };
        f(&mut e.peer);
        let ip = e.ip;
        let mut drops = 0;
        e.peer.pump(now, |to, data| {
            if !Self::send_datagram(socket, udp, ip, to, data) {
                drops += 1;
            }
        });
        if drops > 0
            && let Ok(mut t) = totals.lock()
        {
            t.send_drops += drops;
        }
        for out in e.peer.take_out() {
            if matches!(out, PeerOut::Connected) {
                if e.counts
                    && let Ok(mut t) = totals.lock()
                {
                    t.connected += 1;
                }
                // Stagger the first media of everyone (not all on one tick).
                let offset = Duration::from_micros(u64::from(id % 20) * 1000);
                e.next_audio = now + offset;
                if e.next_video.is_some() {
                    e.next_video = Some(now + offset);
                }
            }
            if matches!(out, PeerOut::Failed(_))
                && let Ok(mut t) = totals.lock()
            {
                t.failed += 1;
            }
            let _ = e.out.send(out);
        }
        e.next_timeout = e.peer.poll_timeout();
    }

    fn on_cmd(&mut self, cmd: ShardCmd) {
        let now = Instant::now();
        match cmd {
            ShardCmd::Add {
                id,
                ip,
                sending,
                started,
                out,
                counts,
                watch,
                churn,
                link,
                reply,
            } => {
                let local = SocketAddr::new(ip, self.port);
                let conn = match link {
                    Link::WebRtc => Peer::new(id, local, sending, self.epoch).map(Conn::WebRtc),
                    Link::Lean { decrypt_every } => {
                        LeanPeer::new(id, local, sending, self.epoch, decrypt_every)
                            .map(|p| Conn::Lean(Box::new(p)))
                    }
                    Link::Floor { server, meeting } => Ok(Conn::Floor(FloorPeer::new(
                        id, server, meeting, sending, self.epoch,
                    ))),
                };
                match conn {
                    Ok(mut peer) => {
                        peer.rx_mut().track_gaps = watch;
                        let video_every = sending.video.map_or(Duration::from_secs(1), |v| {
                            Duration::from_micros(1_000_000 / u64::from(v.fps.max(1)))
                        });
                        self.by_ip.insert(ip, id);
                        self.peers.insert(
                            id,
                            Entry {
                                peer,
                                ip,
                                out,
                                started,
                                counts,
                                joined: !counts,
                                watch,
                                churn,
                                first_media_told: false,
                                next_timeout: None,
                                next_audio: now + Duration::from_secs(3600),
                                next_video: sending.video.map(|_| now + Duration::from_secs(3600)),
                                video_every,
                            },
                        );
                        let _ = reply.send(Ok(()));
                        self.with_peer(id, now, |_| {});
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            ShardCmd::Offer { id, sdp } => self.with_peer(id, now, |c| c.on_remote_offer(sdp)),
            ShardCmd::Answer { id, sdp } => self.with_peer(id, now, |c| c.on_remote_answer(sdp)),
            ShardCmd::Candidate { id, candidate } => {
                self.with_peer(id, now, |c| c.on_remote_candidate(candidate))
            }
            ShardCmd::PausedLayers { id, layers } => {
                self.with_peer(id, now, |c| c.set_paused_layers(&layers))
            }
            ShardCmd::Remove { id } => {
                if let Some(mut e) = self.peers.remove(&id) {
                    self.by_ip.remove(&e.ip);
                    e.peer.close();
                    // What closing queued (the lean client's DTLS close_notify) still goes,
                    // as a closing tab's does.
                    let ip = e.ip;
                    let (socket, udp) = (&self.socket, &self.udp);
                    e.peer.pump(now, |to, data| {
                        let _ = Self::send_datagram(socket, udp, ip, to, data);
                    });
                    if let Ok(mut t) = self.totals.lock() {
                        if e.watch {
                            let rx = e.peer.rx_mut();
                            let mut gaps = std::mem::take(&mut rx.observed.gaps);
                            gaps.extend(rx.open_gaps(now));
                            t.gaps.extend(gaps.into_iter().map(|g| (id, g)));
                        }
                        for s in e.peer.rx().streams.values() {
                            t.expected_done += s.expected();
                            t.received_done += s.received;
                            t.duplicates_done += s.duplicates;
                        }
                    }
                }
            }
        }
    }

    fn receive(&mut self, buf: &mut [u8]) {
        loop {
            let mut metas = [RecvMeta::default(); BATCH];
            let mut slices: Vec<IoSliceMut<'_>> =
                buf.chunks_mut(2048).map(IoSliceMut::new).collect();
            let Shard { socket, udp, .. } = self;
            let n = match socket.try_io(Interest::READABLE, || {
                udp.recv((&*socket).into(), &mut slices, &mut metas)
            }) {
                Ok(n) => n,
                Err(_) => return,
            };
            // Arrival time of this batch: read after the receive returns, so a batch that
            // waited while the previous one was processed is not stamped early.
            let now = Instant::now();
            for (meta, slice) in metas.iter().zip(slices.iter()).take(n) {
                let Some(dst) = meta.dst_ip else { continue };
                let dst = match dst {
                    IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(dst, IpAddr::V4),
                    v4 => v4,
                };
                let Some(&id) = self.by_ip.get(&dst) else {
                    continue;
                };
                let stride = meta.stride.max(1);
                for chunk in slice[..meta.len].chunks(stride) {
                    self.with_peer(id, now, |p| p.on_datagram(meta.addr, chunk, now));
                }
            }
            if n < BATCH {
                return;
            }
        }
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        let ids: Vec<u32> = self
            .peers
            .iter()
            .filter(|(_, e)| {
                e.next_timeout.is_some_and(|t| t <= now)
                    || e.next_audio <= now
                    || e.next_video.is_some_and(|t| t <= now)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            let Some(e) = self.peers.get_mut(&id) else {
                continue;
            };
            let audio = e.next_audio <= now;
            if audio {
                e.next_audio += AUDIO_EVERY;
                if e.next_audio < now {
                    e.next_audio = now + AUDIO_EVERY;
                }
            }
            let video = e.next_video.is_some_and(|t| t <= now);
            if video {
                let every = e.video_every;
                e.next_video = e.next_video.map(|t| {
                    if t + every < now {
                        now + every
                    } else {
                        t + every
                    }
                });
            }
            self.with_peer(id, now, |p| {
                p.on_timeout(now);
                // Send time is read per participant, just before its packets are built,
                // encrypted and sent: a tick that serves many participants must not count
                // its own length as the server's latency.
                let sent_at = Instant::now();
                if audio {
                    p.send_audio(sent_at);
                }
                if video {
                    p.send_video(sent_at);
                }
            });
        }
        self.collect(now);
    }

    /// Moves what peers observed into the shard's totals.
    fn collect(&mut self, _now: Instant) {
        let Ok(mut t) = self.totals.lock() else {
            return;
        };
        for (id, e) in self.peers.iter_mut() {
            let rx = e.peer.rx_mut();
            if e.watch && !rx.observed.gaps.is_empty() {
                t.gaps.extend(rx.observed.gaps.drain(..).map(|g| (*id, g)));
            }
            if !e.first_media_told
                && let Some(first) = rx.first_media
            {
                e.first_media_told = true;
                let _ = e.out.send(PeerOut::FirstMedia(first));
            }
            let o = &mut e.peer.rx_mut().observed;
            t.packets_in += std::mem::take(&mut o.packets_in);
            t.bytes_in += std::mem::take(&mut o.bytes_in);
            t.packets_out += std::mem::take(&mut o.packets_out);
            t.bytes_out += std::mem::take(&mut o.bytes_out);
            t.keyframe_requests += std::mem::take(&mut o.keyframe_requests);
            t.keyframes_in += std::mem::take(&mut o.keyframes_in);
            t.media_errors += std::mem::take(&mut o.media_errors);
            for us in o.latencies_us.drain(..) {
                let us = us.max(1);
                let _ = t.latency_interval.record(us);
                let _ = t.latency_total.record(us);
            }
            if !e.joined
                && let Some(first) = e.peer.rx().first_media
            {
                e.joined = true;
                let ms = first.saturating_duration_since(e.started).as_millis() as u64;
                let _ = t.join_ms.record(ms.max(1));
                if e.churn {
                    let _ = t.join_ms_churn.record(ms.max(1));
                }
            }
        }
    }

    /// Refreshes the stream totals (loss, jitter) once a second.
    fn sweep(&mut self) {
        let Ok(mut t) = self.totals.lock() else {
            return;
        };
        let (mut expected, mut received, mut dups, mut jitter, mut streams) = (0, 0, 0, 0.0, 0);
        for e in self.peers.values() {
            for s in e.peer.rx().streams.values() {
                expected += s.expected();
                received += s.received;
                dups += s.duplicates;
                jitter += s.jitter_ms();
                streams += 1;
            }
        }
        t.expected = expected + t.expected_done;
        t.received = received + t.received_done;
        t.duplicates = dups + t.duplicates_done;
        t.jitter_ms_sum = jitter;
        t.streams = streams;
    }
}
