//! `--target floor`: the same participants, packet sizes and rates against the floor
//! forwarder (`deploy/bench/floor_forwarder.c`), a program that sends each datagram it
//! receives to the other members of the sender's meeting and does no protocol work. What
//! it costs per forwarded packet is the floor of the machine for this traffic: the kernel's
//! UDP receive and send paths. `deploy/bench/floor.sh` runs it.
//!
//! A floor participant has no signaling, ICE, DTLS or SRTP. It registers its address with
//! the floor (one datagram naming its meeting, repeated until answered; the answer is its
//! "connected"), then sends what a WebRTC participant of the same scenario sends, from the
//! same address and socket: the same RTP packets (payloads with the measurement trailer,
//! same sizes, same 20 ms audio and 30 fps video timing), each followed by 16 zero bytes
//! where SRTP's AES-GCM tag would be, so datagrams have the size of the real ones (minus
//! header extensions). It receives and counts exactly as a WebRTC participant does (loss,
//! latency, jitter: [`Reception`]), so the report's "out of the node" packets and the
//! server's CPU per packet mean the same as in a Hearth or Janus run. Not sent: RTCP (no
//! reports, NACK, PLI or TWCC feedback; protocol work is what the floor leaves out), and no
//! keyframe requests, so video has one keyframe at the start.
//!
//! Wire format towards the floor: registration `"HFLR" | meeting u32 (big endian)` (8
//! bytes), answered with the same 8 bytes; anything else is media.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use rtc::rtp;
use rtc::shared::marshal::{Marshal, MarshalSize, Unmarshal};
use tokio::sync::{mpsc, oneshot, watch};

use crate::media::{self, Trailer};
use crate::peer::{OPUS_PT, PeerOut, Reception, Sending, VP8_PT};
use crate::shard::{Link, ShardCmd, ShardHandle};
use crate::signal::Counters;

const MAGIC: [u8; 4] = *b"HFLR";
/// Bytes after each RTP packet: the size of SRTP's AES-GCM authentication tag.
pub const TAG: usize = 16;
/// Registration is repeated this often until the floor answers...
const REGISTER_EVERY: Duration = Duration::from_millis(200);
/// ...and given up after this long.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);

/// The registration datagram (and the floor's answer to it).
pub fn registration(meeting: u32) -> [u8; 8] {
    let mut d = [0u8; 8];
    d[..4].copy_from_slice(&MAGIC);
    d[4..].copy_from_slice(&meeting.to_be_bytes());
    d
}

/// An RTP packet as a floor datagram: the packet, then [`TAG`] zero bytes.
pub fn encode(packet: &rtp::Packet) -> Option<Vec<u8>> {
    let mut out = BytesMut::with_capacity(packet.marshal_size() + TAG);
    out.put_slice(&packet.marshal().ok()?);
    out.put_bytes(0, TAG);
    Some(out.to_vec())
}

/// The RTP packet in a floor datagram (None for anything else).
pub fn decode(data: &[u8]) -> Option<rtp::Packet> {
    let end = data.len().checked_sub(TAG)?;
    let mut body = &data[..end];
    if body.first().is_none_or(|b| b >> 6 != 2) {
        return None;
    }
    rtp::Packet::unmarshal(&mut body).ok()
}

/// One outgoing stream's RTP state.
struct Track {
    ssrc: u32,
    seq: u16,
    timestamp: u32,
    payload_type: u8,
}

impl Track {
    fn new(payload_type: u8) -> Track {
        Track {
            ssrc: rand::random(),
            seq: rand::random(),
            timestamp: rand::random(),
            payload_type,
        }
    }

    /// The next packet of this stream (advances the sequence number).
    fn packet(&mut self, marker: bool, payload: Bytes) -> rtp::Packet {
        let p = rtp::Packet {
            header: rtp::Header {
                version: 2,
                marker,
                payload_type: self.payload_type,
                sequence_number: self.seq,
                timestamp: self.timestamp,
                ssrc: self.ssrc,
                ..Default::default()
            },
            payload,
        };
        self.seq = self.seq.wrapping_add(1);
        p
    }
}

/// One simulated participant towards the floor forwarder; driven by its shard like a
/// WebRTC [`crate::peer::Peer`].
pub struct FloorPeer {
    id: u32,
    server: SocketAddr,
    meeting: u32,
    sending: Sending,
    registered: bool,
    next_register: Option<Instant>,
    give_up: Instant,
    audio: Option<Track>,
    video: Option<Track>,
    keyframe_due: bool,
    frame: u64,
    /// Datagrams to send, drained by [`FloorPeer::pump`].
    outbox: Vec<Vec<u8>>,
    out: Vec<PeerOut>,
    pub rx: Reception,
}

impl FloorPeer {
    pub fn new(
        id: u32,
        server: SocketAddr,
        meeting: u32,
        sending: Sending,
        epoch: Instant,
    ) -> FloorPeer {
        let now = Instant::now();
        FloorPeer {
            id,
            server,
            meeting,
            sending,
            registered: false,
            // The first registration is in the outbox (sent on the shard's first pump).
            next_register: Some(now + REGISTER_EVERY),
            give_up: now + REGISTER_TIMEOUT,
            audio: sending.audio.then(|| Track::new(OPUS_PT)),
            video: sending.video.map(|_| Track::new(VP8_PT)),
            keyframe_due: true,
            frame: 0,
            outbox: vec![registration(meeting).to_vec()],
            out: Vec::new(),
            rx: Reception::new(epoch),
        }
    }

    pub fn take_out(&mut self) -> Vec<PeerOut> {
        std::mem::take(&mut self.out)
    }

    /// Sends what is queued (every datagram goes to the floor).
    pub fn pump(&mut self, _now: Instant, mut send: impl FnMut(SocketAddr, &[u8])) {
        for d in self.outbox.drain(..) {
            self.rx.observed.bytes_out += d.len() as u64;
            send(self.server, &d);
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.registered {
            None
        } else {
            self.next_register
        }
    }

    /// Repeats the registration until it is answered, or fails after 10 s.
    pub fn on_timeout(&mut self, now: Instant) {
        let Some(at) = self.next_register else {
            return;
        };
        if self.registered || now < at {
            return;
        }
        if now >= self.give_up {
            self.next_register = None;
            self.out
                .push(PeerOut::Failed("the floor never answered".into()));
            return;
        }
        self.outbox.push(registration(self.meeting).to_vec());
        self.next_register = Some(now + REGISTER_EVERY);
    }

    pub fn on_datagram(&mut self, _from: SocketAddr, data: &[u8], now: Instant) {
        if data.len() == 8 && data[..4] == MAGIC {
            if !self.registered && data[..] == registration(self.meeting)[..] {
                self.registered = true;
                self.next_register = None;
                self.out.push(PeerOut::Connected);
            }
            return;
        }
        if let Some(p) = decode(data) {
            self.rx.on_rtp(&p.header, &p.payload, now);
        }
    }

    fn queue(&mut self, packet: &rtp::Packet) -> bool {
        match encode(packet) {
            Some(d) => {
                self.outbox.push(d);
                true
            }
            None => false,
        }
    }

    /// One 20 ms audio frame, as [`crate::peer::Peer::send_audio`].
    pub fn send_audio(&mut self, now: Instant) {
        if !self.registered {
            return;
        }
        let t = Trailer {
            sender: self.id,
            sent_us: self.rx.now_us(now),
        };
        let payload = media::opus_frame(self.sending.speaking, t);
        let Some(track) = self.audio.as_mut() else {
            return;
        };
        let packet = track.packet(true, payload);
        track.timestamp = track.timestamp.wrapping_add(960);
        if self.queue(&packet) {
            self.rx.observed.packets_out += 1;
        }
    }

    /// One video frame, as [`crate::peer::Peer::send_video`] (a keyframe first only).
    pub fn send_video(&mut self, now: Instant) {
        let Some(profile) = self.sending.video else {
            return;
        };
        if !self.registered {
            return;
        }
        let keyframe = std::mem::take(&mut self.keyframe_due);
        let t = Trailer {
            sender: self.id,
            sent_us: self.rx.now_us(now),
        };
        let payloads = media::next_vp8_frame(profile, keyframe, &mut self.frame, t);
        let Some(track) = self.video.as_mut() else {
            return;
        };
        let last = payloads.len().saturating_sub(1);
        let packets: Vec<rtp::Packet> = payloads
            .into_iter()
            .enumerate()
            .map(|(i, payload)| track.packet(i == last, payload))
            .collect();
        track.timestamp = track.timestamp.wrapping_add(90_000 / profile.fps.max(1));
        for p in &packets {
            if self.queue(p) {
                self.rx.observed.packets_out += 1;
            }
        }
    }
}

/// Who one floor participant is.
pub struct FloorPlan {
    pub id: u32,
    pub ip: IpAddr,
    pub meeting: u32,
    pub sending: Sending,
}

/// Runs one participant until `stop` flips.
pub async fn run(
    plan: FloorPlan,
    server: SocketAddr,
    shard: ShardHandle,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) {
    let started = Instant::now();
    let (out, mut out_rx) = mpsc::unbounded_channel();
    let (reply, done) = oneshot::channel();
    let _ = shard.cmds.send(ShardCmd::Add {
        id: plan.id,
        ip: plan.ip,
        sending: plan.sending,
        started,
        out,
        counts: true,
        watch: false,
        churn: false,
        link: Link::Floor {
            server,
            meeting: plan.meeting,
        },
        reply,
    });
    match done.await {
        Ok(Ok(())) => {}
        _ => return counters.error("PEER_SETUP"),
    }
    // No signaling: the participant is in its meeting once the shard has it.
    counters.joined.fetch_add(1, Ordering::Relaxed);
    loop {
        tokio::select! {
            out = out_rx.recv() => match out {
                Some(PeerOut::Failed(why)) => {
                    counters.error("FLOOR_NO_ANSWER");
                    counters.failed_in("transport");
                    counters.example(format!("participant {}: {why}", plan.id));
                }
                Some(_) => {}
                None => break,
            },
            _ = stop.changed() => break,
        }
    }
    let _ = shard.cmds.send(ShardCmd::Remove { id: plan.id });
    counters.left.fetch_add(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_round_trip_with_the_srtp_tag_size() {
        let mut track = Track::new(OPUS_PT);
        let t = Trailer {
            sender: 9,
            sent_us: 42,
        };
        let payload = media::opus_frame(true, t);
        let p = track.packet(true, payload.clone());
        let d = encode(&p).expect("encodes");
        assert_eq!(d.len(), 12 + payload.len() + TAG);
        let back = decode(&d).expect("decodes");
        assert_eq!(back.header.ssrc, p.header.ssrc);
        assert_eq!(back.header.sequence_number, p.header.sequence_number);
        assert_eq!(media::trailer(&back.payload), Some(t));
        assert_eq!(track.seq, p.header.sequence_number.wrapping_add(1));
        assert!(decode(&registration(3)).is_none());
        assert!(decode(b"short").is_none());
    }

    #[test]
    fn registers_until_answered_then_sends_media() {
        let epoch = Instant::now();
        let server: SocketAddr = ([127, 0, 0, 1], 9).into();
        let sending = Sending {
            audio: true,
            speaking: true,
            video: None,
        };
        let mut p = FloorPeer::new(1, server, 7, sending, epoch);
        let mut sent = Vec::new();
        p.pump(epoch, |to, d| sent.push((to, d.to_vec())));
        assert_eq!(sent, vec![(server, registration(7).to_vec())]);
        // Not answered: media waits, the registration repeats.
        p.send_audio(epoch);
        let later = Instant::now() + REGISTER_EVERY;
        p.on_timeout(later);
        sent.clear();
        p.pump(later, |to, d| sent.push((to, d.to_vec())));
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].1, registration(7).to_vec());
        // Answered: connected, no more registrations, audio goes out and comes back.
        p.on_datagram(server, &registration(7), later);
        assert!(matches!(p.take_out().as_slice(), [PeerOut::Connected]));
        assert_eq!(p.poll_timeout(), None);
        p.send_audio(later);
        sent.clear();
        p.pump(later, |to, d| sent.push((to, d.to_vec())));
        assert_eq!(sent.len(), 1);
        let mut other = FloorPeer::new(2, server, 7, sending, epoch);
        other.on_datagram(server, &sent[0].1, later + Duration::from_millis(1));
        assert_eq!(other.rx.observed.packets_in, 1);
        assert_eq!(other.rx.observed.latencies_us.len(), 1);
    }
}
