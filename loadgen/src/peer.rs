//! One simulated participant's WebRTC side: an `rtc` peer connection (sans-IO: ICE, DTLS,
//! SRTP, RTCP), its outgoing tracks and the accounting of what it receives. Driven by its
//! shard ([`crate::shard`]), which owns the socket and the clock.
//!
//! Negotiation follows the signaling protocol: the client offers to publish, the server
//! offers when there is media to receive, and on crossing offers the client (polite) rolls
//! back, answers, and offers again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use rtc::interceptor::{Attribute, Interceptor, Packet, Registry, Slot, StreamInfo, TaggedPacket};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::interceptor_registry::register_default_interceptors;
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_OPUS, MIME_TYPE_VP8, MediaEngine,
};
use rtc::peer_connection::event::{RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::message::RTCMessage;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::{RTCIceConnectionState, RTCPeerConnectionState};
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCIceCandidate, RTCIceCandidateInit,
};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters,
    RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{
    RTCRtpSenderId, RTCRtpTransceiverDirection, RTCRtpTransceiverId, RTCRtpTransceiverInit,
};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use rtc::{rtcp, rtp};

use crate::media::{self, Trailer, VideoProfile};
use crate::reconnect::{GAP, Gap};
use crate::stats::{Arrival, StreamRx};

pub const OPUS_PT: u8 = 111;
pub const VP8_PT: u8 = 96;

/// What the peer wants its signaling task to send.
#[derive(Debug)]
pub enum PeerOut {
    Offer(String),
    Answer(String),
    Candidate(RTCIceCandidateInit),
    /// ICE and DTLS are up.
    Connected,
    /// The peer connection failed or a description did not apply.
    Failed(String),
    /// The first media packet arrived (only for peers added with `watch`).
    FirstMedia(Instant),
}

/// What a peer sends.
#[derive(Clone, Copy, Debug)]
pub struct Sending {
    pub audio: bool,
    /// Speaks (full Opus frames) rather than sends a muted microphone's silence.
    pub speaking: bool,
    pub video: Option<VideoProfile>,
}

/// Simulcast layers' rids, lowest first.
const SIMULCAST_RIDS: [&str; 3] = ["q", "h", "f"];

/// The header extensions a simulcast layer's packets carry.
#[derive(Clone)]
struct LayerExt {
    mid_id: u8,
    rid_id: u8,
    mid: Bytes,
}

struct Outgoing {
    sender: RTCRtpSenderId,
    ssrc: u32,
    /// Simulcast: the layer's rid ("" without simulcast).
    rid: &'static str,
    seq: u16,
    timestamp: u32,
    payload_type: Option<u8>,
    mime: &'static str,
}

/// What a participant received: streams (loss, jitter), latency samples, counters and its
/// first media. Shared by the WebRTC peer and the floor peer ([`crate::floor`]), so both
/// count the same way.
pub struct Reception {
    /// Received streams by SSRC.
    pub streams: HashMap<u32, StreamRx>,
    /// When the first media packet arrived (join time ends here).
    pub first_media: Option<Instant>,
    pub observed: Observed,
    epoch: Instant,
    /// With `--reconnect`: when the last packet from each sender (trailer id) arrived, to
    /// find gaps in a sender's media.
    pub track_gaps: bool,
    last_from: Vec<(u32, Instant)>,
}

impl Reception {
    pub fn new(epoch: Instant) -> Self {
        Reception {
            streams: HashMap::new(),
            first_media: None,
            observed: Observed::default(),
            epoch,
            track_gaps: false,
            last_from: Vec::new(),
        }
    }

    /// Notes a packet from `sender`: a silence longer than [`GAP`] before it is a gap.
    fn heard_from(&mut self, sender: u32, now: Instant) {
        match self.last_from.iter_mut().find(|(s, _)| *s == sender) {
            Some((_, last)) => {
                if now.saturating_duration_since(*last) > GAP {
                    self.observed.gaps.push(Gap {
                        sender,
                        start: *last,
                        end: now,
                    });
                }
                *last = now;
            }
            None => self.last_from.push((sender, now)),
        }
    }

    /// Senders silent for more than [`GAP`] at `now` (the receiver goes away).
    pub fn open_gaps(&self, now: Instant) -> impl Iterator<Item = Gap> + '_ {
        self.last_from
            .iter()
            .filter(move |(_, last)| now.saturating_duration_since(*last) > GAP)
            .map(move |(sender, last)| Gap {
                sender: *sender,
                start: *last,
                end: now,
            })
    }

    /// Microseconds since the run's epoch (the clock of the payload trailers).
    pub fn now_us(&self, now: Instant) -> u64 {
        now.duration_since(self.epoch).as_micros() as u64
    }

    /// Accounts one received RTP packet (its header and payload, after decryption).
    pub fn on_rtp(&mut self, header: &rtp::Header, payload: &[u8], now: Instant) {
        let fields = RtpFields {
            payload_type: header.payload_type,
            seq: header.sequence_number,
            timestamp: header.timestamp,
            ssrc: header.ssrc,
            clock: None,
        };
        self.on_rtp_parts(&fields, Some(payload), payload.len(), now);
    }

    /// Accounts one received RTP packet: its header fields, and its payload when it was
    /// decrypted (else only its length: loss and jitter come from the clear header; latency,
    /// senders and keyframes only from decrypted payloads).
    pub fn on_rtp_parts(
        &mut self,
        header: &RtpFields,
        payload: Option<&[u8]>,
        payload_len: usize,
        now: Instant,
    ) {
        let now_us = self.now_us(now);
        self.observed.packets_in += 1;
        self.observed.bytes_in += payload_len as u64;
        if self.first_media.is_none() {
            self.first_media = Some(now);
        }
        let clock =
            header
                .clock
                .unwrap_or(if header.payload_type == OPUS_PT || payload_len < 100 {
                    48_000
                } else {
                    90_000
                });
        let stream = self
            .streams
            .entry(header.ssrc)
            .or_insert_with(|| StreamRx::new(clock));
        let arrival = stream.on_packet(header.seq, header.timestamp, now_us);
        if arrival == Arrival::Duplicate {
            return;
        }
        let Some(payload) = payload else {
            return;
        };
        if clock == 90_000 && media::vp8_is_keyframe(payload) {
            self.observed.keyframes_in += 1;
        }
        if let Some(t) = media::trailer(payload) {
            if now_us >= t.sent_us {
                self.observed.latencies_us.push(now_us - t.sent_us);
            }
            if self.track_gaps {
                self.heard_from(t.sender, now);
            }
        }
    }
}

/// The fields of an RTP header the accounting reads.
pub struct RtpFields {
    pub payload_type: u8,
    pub seq: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    /// The stream's clock rate when the receiver knows it (else guessed from the payload
    /// type and size).
    pub clock: Option<u32>,
}

/// What a peer observed, drained by its shard into the shard's totals.
#[derive(Default)]
pub struct Observed {
    /// One-way latency samples in µs.
    pub latencies_us: Vec<u64>,
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    pub keyframe_requests: u64,
    /// Video keyframes received (each starts with a keyframe packet).
    pub keyframes_in: u64,
    /// Gaps in senders' media (with `track_gaps`).
    pub gaps: Vec<Gap>,
    /// Received packets that failed authentication or decryption, and DTLS records that
    /// did not parse (the lean client counts them; the full one drops them inside `rtc`).
    pub media_errors: u64,
}

pub struct Peer {
    pub id: u32,
    pc: RTCPeerConnection,
    local: SocketAddr,
    out: Vec<PeerOut>,
    have_local_offer: bool,
    need_offer: bool,
    pub connected: bool,
    pub failed: bool,
    /// ICE connected (a failure after it is DTLS's or later).
    ice_up: bool,
    audio: Option<Outgoing>,
    video: Option<Outgoing>,
    /// Simulcast: the lower layers, lowest first (`video` is the full one), each with its
    /// bitrate divisor and keyframe size.
    lower: Vec<(Outgoing, u32, (u16, u16))>,
    /// Simulcast: the video transceiver, and once negotiated the ids of the mid and rid
    /// header extensions with our mid (each packet names its section and layer).
    video_transceiver: Option<RTCRtpTransceiverId>,
    layer_ext: Option<LayerExt>,
    /// Simulcast layers the server asked us to pause (bit `l`: layer `l`, lowest first),
    /// as a browser does (dynacast).
    paused_layers: u64,
    /// Simulcast: the lower layers that owe a keyframe (bit `i`: `lower[i]`); the top
    /// layer's is `keyframe_due`. Each layer answers its own PLI, as a browser's encoders do.
    lower_key_due: u64,
    sending: Sending,
    keyframe_due: bool,
    pub rx: Reception,
    frame: u64,
}

/// Marks inbound RTCP for the application, so PLI/FIR reach us (keyframes on request).
#[derive(Default)]
struct DeliverRtcp {
    read: std::collections::VecDeque<TaggedPacket>,
    write: std::collections::VecDeque<TaggedPacket>,
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for DeliverRtcp {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if matches!(msg.message.packet, Packet::Rtcp(_)) {
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.read.push_back(msg);
        Ok(())
    }
    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read.pop_front()
    }
    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write.push_back(msg);
        Ok(())
    }
    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write.pop_front()
    }
    fn handle_timeout(&mut self, _now: Instant) -> Result<(), Self::Error> {
        Ok(())
    }
    fn poll_timeout(&mut self) -> Option<Self::Time> {
        None
    }
}

impl Interceptor for DeliverRtcp {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

fn opus() -> RTCRtpCodecParameters {
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: MIME_TYPE_OPUS.to_owned(),
            clock_rate: 48_000,
            channels: 2,
            sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
            rtcp_feedback: vec![],
        },
        payload_type: OPUS_PT,
    }
}

fn vp8() -> RTCRtpCodecParameters {
    let fb = |typ: &str, parameter: &str| RTCPFeedback {
        typ: typ.to_owned(),
        parameter: parameter.to_owned(),
    };
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: MIME_TYPE_VP8.to_owned(),
            clock_rate: 90_000,
            channels: 0,
            sdp_fmtp_line: String::new(),
            rtcp_feedback: vec![fb("ccm", "fir"), fb("nack", ""), fb("nack", "pli")],
        },
        payload_type: VP8_PT,
    }
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

impl Peer {
    /// A peer whose one host candidate is `local` (its own address on the shard's socket).
    pub fn new(
        id: u32,
        local: SocketAddr,
        sending: Sending,
        epoch: Instant,
    ) -> Result<Peer, String> {
        let mut media_engine = MediaEngine::default();
        media_engine
            .register_codec(opus(), RtpCodecKind::Audio)
            .map_err(err)?;
        media_engine
            .register_codec(vp8(), RtpCodecKind::Video)
            .map_err(err)?;
        let registry = Registry::new().with(Slot::from(14_000), DeliverRtcp::default());
        let registry = register_default_interceptors(registry, &mut media_engine).map_err(err)?;
        let now = Instant::now();
        let mut pc = RTCPeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_media_engine(media_engine)
            .with_interceptor_registry(registry)
            .build(now)
            .map_err(err)?;
        let candidate = CandidateHostConfig {
            base_config: CandidateConfig {
                network: "udp".to_owned(),
                address: local.ip().to_string(),
                port: local.port(),
                component: 1,
                ..Default::default()
            },
            ..Default::default()
        }
        .new_candidate_host()
        .map_err(err)?;
        let init = RTCIceCandidate::from(&candidate).to_json().map_err(err)?;
        pc.add_local_candidate(init).map_err(err)?;
        let mut peer = Peer {
            id,
            pc,
            local,
            out: Vec::new(),
            have_local_offer: false,
            need_offer: false,
            connected: false,
            failed: false,
            ice_up: false,
            audio: None,
            video: None,
            lower: Vec::new(),
            video_transceiver: None,
            layer_ext: None,
            paused_layers: 0,
            lower_key_due: u64::MAX,
            sending,
            keyframe_due: true,
            rx: Reception::new(epoch),
            frame: 0,
        };
        if sending.audio {
            peer.add_outgoing(false)?;
        }
        if sending.video.is_some() {
            peer.add_outgoing(true)?;
        }
        peer.maybe_offer();
        Ok(peer)
    }

    fn add_outgoing(&mut self, video: bool) -> Result<(), String> {
        let (kind, codec, mime) = if video {
            (RtpCodecKind::Video, vp8(), MIME_TYPE_VP8)
        } else {
            (RtpCodecKind::Audio, opus(), MIME_TYPE_OPUS)
        };
        let ssrc: u32 = rand::random();
        let simulcast = video && self.sending.video.is_some_and(|v| v.simulcast);
        // Simulcast: one encoding per layer, each with its SSRC and rid (lowest first): the
        // offer says `a=simulcast:send q;h;f`, each packet names its layer (rid extension).
        let lower: Vec<u32> = if simulcast {
            (1..media::SIMULCAST_LAYERS.len())
                .map(|_| rand::random())
                .collect()
        } else {
            Vec::new()
        };
        let encoding = |ssrc: u32, rid: &str| RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                rid: rid.to_owned(),
                ..Default::default()
            },
            codec: codec.rtp_codec.clone(),
            active: true,
            ..Default::default()
        };
        let encodings: Vec<RTCRtpEncodingParameters> = if simulcast {
            lower
                .iter()
                .chain([&ssrc])
                .zip(SIMULCAST_RIDS)
                .map(|(s, rid)| encoding(*s, rid))
                .collect()
        } else {
            vec![encoding(ssrc, "")]
        };
        let stream_id = format!("lg-{}", self.id);
        let track = MediaStreamTrack::new(
            stream_id.clone(),
            format!("lg-{}-{}", self.id, if video { "video" } else { "audio" }),
            if video { "video" } else { "audio" }.to_owned(),
            kind,
            encodings.clone(),
        );
        let t = self
            .pc
            .add_transceiver_from_track(
                track,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Sendonly,
                    streams: vec![stream_id],
                    // Simulcast: every layer's encoding (else the track's one).
                    send_encodings: if simulcast { encodings } else { vec![] },
                }),
            )
            .map_err(err)?;
        let sender = self
            .pc
            .rtp_transceiver(t)
            .and_then(|t| t.sender())
            .ok_or("new transceiver has no sender")?;
        if simulcast {
            self.video_transceiver = Some(t);
        }
        let out = Outgoing {
            sender,
            ssrc,
            rid: if simulcast { SIMULCAST_RIDS[2] } else { "" },
            seq: rand::random(),
            timestamp: rand::random(),
            payload_type: None,
            mime,
        };
        for (i, lower_ssrc) in lower.into_iter().enumerate() {
            let (divisor, size) = media::SIMULCAST_LAYERS[i];
            let layer = Outgoing {
                ssrc: lower_ssrc,
                rid: SIMULCAST_RIDS[i],
                seq: rand::random(),
                timestamp: rand::random(),
                payload_type: None,
                ..out
            };
            self.lower.push((layer, divisor, size));
        }
        if video {
            self.video = Some(out);
        } else {
            self.audio = Some(out);
        }
        self.need_offer = true;
        Ok(())
    }

    /// What the signaling task should send, in order.
    pub fn take_out(&mut self) -> Vec<PeerOut> {
        std::mem::take(&mut self.out)
    }

    fn fail(&mut self, why: String) {
        self.failed = true;
        self.out.push(PeerOut::Failed(why));
    }

    fn maybe_offer(&mut self) {
        if !self.need_offer || self.have_local_offer {
            return;
        }
        self.need_offer = false;
        let offer = self.pc.create_offer(None).map_err(err).and_then(|offer| {
            let sdp = offer.sdp.clone();
            self.pc
                .set_local_description(Instant::now(), offer)
                .map(|()| sdp)
                .map_err(err)
        });
        match offer {
            Ok(sdp) => {
                self.have_local_offer = true;
                self.out.push(PeerOut::Offer(sdp));
            }
            Err(e) => self.fail(format!("cannot offer: {e}")),
        }
    }

    pub fn on_remote_offer(&mut self, sdp: String) {
        if self.have_local_offer {
            let rolled_back = RTCSessionDescription::rollback(None)
                .map_err(err)
                .and_then(|r| {
                    self.pc
                        .set_local_description(Instant::now(), r)
                        .map_err(err)
                });
            self.have_local_offer = false;
            self.need_offer = true;
            if let Err(e) = rolled_back {
                self.fail(format!("rollback failed: {e}"));
                return;
            }
        }
        let answer = RTCSessionDescription::offer(sdp)
            .map_err(err)
            .and_then(|o| {
                self.pc
                    .set_remote_description(Instant::now(), o)
                    .map_err(err)
            })
            .and_then(|()| self.pc.create_answer(None).map_err(err))
            .and_then(|a| {
                let sdp = a.sdp.clone();
                self.pc
                    .set_local_description(Instant::now(), a)
                    .map(|()| sdp)
                    .map_err(err)
            });
        match answer {
            Ok(sdp) => self.out.push(PeerOut::Answer(sdp)),
            Err(e) => self.fail(format!("server offer: {e}")),
        }
        self.maybe_offer();
    }

    pub fn on_remote_answer(&mut self, sdp: String) {
        if !self.have_local_offer {
            return;
        }
        self.have_local_offer = false;
        let applied = RTCSessionDescription::answer(sdp)
            .map_err(err)
            .and_then(|a| {
                self.pc
                    .set_remote_description(Instant::now(), a)
                    .map_err(err)
            });
        match applied {
            Ok(()) => {
                for out in [self.audio.as_mut(), self.video.as_mut()]
                    .into_iter()
                    .flatten()
                    .chain(self.lower.iter_mut().map(|(o, _, _)| o))
                {
                    if let Some(mut sender) = self.pc.rtp_sender(out.sender) {
                        out.payload_type = sender
                            .get_parameters()
                            .rtp_parameters
                            .codecs
                            .iter()
                            .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(out.mime))
                            .map(|c| c.payload_type);
                    }
                }
                self.learn_layer_ext();
                self.keyframe_due = true;
                self.lower_key_due = u64::MAX;
            }
            Err(e) => self.fail(format!("server answer: {e}")),
        }
        self.maybe_offer();
    }

    /// Simulcast: the negotiated ids of the mid and rid extensions, and our video mid.
    fn learn_layer_ext(&mut self) {
        let (Some(t), Some(out)) = (self.video_transceiver, self.video.as_ref()) else {
            return;
        };
        let Some(mid) = self.pc.rtp_transceiver(t).and_then(|t| t.mid().clone()) else {
            return;
        };
        let Some(mut sender) = self.pc.rtp_sender(out.sender) else {
            return;
        };
        let exts = sender
            .get_parameters()
            .rtp_parameters
            .header_extensions
            .clone();
        let id = |uri: &str| {
            exts.iter()
                .find(|e| e.uri == uri)
                .and_then(|e| u8::try_from(e.id).ok())
        };
        self.layer_ext = match (
            id("urn:ietf:params:rtp-hdrext:sdes:mid"),
            id("urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"),
        ) {
            (Some(mid_id), Some(rid_id)) => Some(LayerExt {
                mid_id,
                rid_id,
                mid: Bytes::from(mid),
            }),
            _ => None,
        };
    }

    /// Dynacast: the simulcast layers to pause from now on (each message replaces the last;
    /// a resumed layer starts with a keyframe).
    pub fn set_paused_layers(&mut self, layers: &[u32]) {
        let paused = layers
            .iter()
            .filter(|l| **l < 64)
            .fold(0u64, |bits, l| bits | 1 << l);
        // Resumed layers start with a keyframe.
        let resumed = self.paused_layers & !paused;
        if resumed & (1 << self.lower.len()) != 0 {
            self.keyframe_due = true;
        }
        self.lower_key_due |= resumed;
        self.paused_layers = paused;
    }

    pub fn on_remote_candidate(&mut self, c: RTCIceCandidateInit) {
        let _ = self.pc.add_remote_candidate(c);
    }

    /// A datagram for this peer arrived.
    pub fn on_datagram(&mut self, from: SocketAddr, data: &[u8], now: Instant) {
        let msg = TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr: self.local,
                peer_addr: from,
                ecn: None,
                transport_protocol: TransportProtocol::UDP,
            },
            message: BytesMut::from(data),
        };
        let _ = self.pc.handle_read(msg);
    }

    pub fn poll_timeout(&mut self) -> Option<Instant> {
        self.pc.poll_timeout()
    }

    pub fn on_timeout(&mut self, now: Instant) {
        let _ = self.pc.handle_timeout(now);
    }

    /// Sends one 20 ms audio frame.
    pub fn send_audio(&mut self, now: Instant) {
        if !self.connected {
            return;
        }
        let t = Trailer {
            sender: self.id,
            sent_us: self.rx.now_us(now),
        };
        let payload = media::opus_frame(self.sending.speaking, t);
        let Some(out) = self.audio.as_mut() else {
            return;
        };
        let Some(pt) = out.payload_type else {
            return;
        };
        let packet = rtp_packet(out, pt, true, payload);
        out.seq = out.seq.wrapping_add(1);
        out.timestamp = out.timestamp.wrapping_add(960);
        let sender = out.sender;
        if let Some(mut s) = self.pc.rtp_sender(sender)
            && s.write_rtp(now, packet).is_ok()
        {
            self.rx.observed.packets_out += 1;
        }
    }

    /// Sends one video frame (a keyframe when one was requested).
    pub fn send_video(&mut self, now: Instant) {
        let Some(profile) = self.sending.video else {
            return;
        };
        if !self.connected {
            return;
        }
        let keyframe = std::mem::take(&mut self.keyframe_due);
        let t = Trailer {
            sender: self.id,
            sent_us: self.rx.now_us(now),
        };
        let payloads = media::next_vp8_frame(profile, keyframe, &mut self.frame, t);
        let Some(out) = self.video.as_mut() else {
            return;
        };
        let Some(pt) = out.payload_type else {
            self.keyframe_due = keyframe;
            return;
        };
        let mut sent = 0;
        // Simulcast: the top layer is layer `lower.len()`; a paused layer sends nothing.
        if self.paused_layers & (1 << self.lower.len()) == 0 {
            sent += write_frame(
                &mut self.pc,
                out,
                pt,
                payloads,
                self.layer_ext.as_ref(),
                now,
            );
        }
        out.timestamp = out.timestamp.wrapping_add(90_000 / profile.fps.max(1));
        // Simulcast: the same picture in the lower layers, smaller.
        let jitter = media::frame_jitter(self.frame.wrapping_sub(1));
        for (index, (out, divisor, size)) in self.lower.iter_mut().enumerate() {
            let Some(pt) = out.payload_type else {
                continue;
            };
            if self.paused_layers & (1 << index) != 0 {
                out.timestamp = out.timestamp.wrapping_add(90_000 / profile.fps.max(1));
                continue;
            }
            let layer = VideoProfile {
                bitrate_bps: profile.bitrate_bps / (*divisor).max(1),
                ..profile
            };
            let keyframe = self.lower_key_due & (1 << index) != 0;
            self.lower_key_due &= !(1 << index);
            let payloads = media::vp8_frame_sized(layer, keyframe, jitter, t, *size);
            sent += write_frame(
                &mut self.pc,
                out,
                pt,
                payloads,
                self.layer_ext.as_ref(),
                now,
            );
            out.timestamp = out.timestamp.wrapping_add(90_000 / profile.fps.max(1));
        }
        self.rx.observed.packets_out += sent;
    }

    /// Drains the stack: events, received media and RTCP, datagrams to send (`send`).
    pub fn pump(&mut self, now: Instant, mut send: impl FnMut(SocketAddr, &[u8])) {
        loop {
            let mut progressed = false;
            while let Some(event) = self.pc.poll_event() {
                progressed = true;
                self.on_event(event);
            }
            while let Some(msg) = self.pc.poll_read() {
                progressed = true;
                match msg.message {
                    RTCMessage::RtpPacket(_, packet) => {
                        self.rx.on_rtp(&packet.header, &packet.payload, now)
                    }
                    RTCMessage::RtcpPacket(_, packets) => self.on_rtcp(&packets),
                    _ => {}
                }
            }
            while let Some(out) = self.pc.poll_write() {
                progressed = true;
                self.rx.observed.bytes_out += out.message.len() as u64;
                send(out.transport.peer_addr, &out.message);
            }
            if !progressed {
                break;
            }
        }
    }

    fn on_event(&mut self, event: RTCPeerConnectionEvent) {
        match event {
            RTCPeerConnectionEvent::OnIceCandidateEvent(ev) => {
                if let Ok(init) = ev.candidate.to_json() {
                    self.out.push(PeerOut::Candidate(init));
                }
            }
            RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) => match state {
                RTCPeerConnectionState::Connected if !self.connected => {
                    self.connected = true;
                    self.keyframe_due = true;
                    self.lower_key_due = u64::MAX;
                    self.out.push(PeerOut::Connected);
                }
                RTCPeerConnectionState::Failed => {
                    let why = match (self.ice_up, self.connected) {
                        (false, _) => "ICE: the peer connection failed before ICE connected",
                        (true, false) => "DTLS: the peer connection failed after ICE connected",
                        (true, true) => "transport: the connected peer connection failed",
                    };
                    self.connected = false;
                    self.fail(why.into());
                }
                _ => {}
            },
            RTCPeerConnectionEvent::OnIceConnectionStateChangeEvent(
                RTCIceConnectionState::Connected | RTCIceConnectionState::Completed,
            ) => self.ice_up = true,
            RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(_)) => {}
            _ => {}
        }
    }

    fn on_rtcp(&mut self, packets: &[Box<dyn rtcp::Packet>]) {
        use rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
        use rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
        let video_ssrc = self.video.as_ref().map(|v| v.ssrc);
        for packet in packets {
            let any = (**packet).as_any();
            let ssrc = if let Some(pli) = any.downcast_ref::<PictureLossIndication>() {
                Some(pli.media_ssrc)
            } else {
                any.downcast_ref::<FullIntraRequest>()
                    .and_then(|fir| fir.fir.first().map(|e| e.ssrc))
            };
            let layer = self.lower.iter().position(|(o, _, _)| Some(o.ssrc) == ssrc);
            if ssrc.is_some() && ssrc == video_ssrc {
                self.keyframe_due = true;
                self.rx.observed.keyframe_requests += 1;
            } else if let Some(i) = layer.filter(|i| *i < 64) {
                self.lower_key_due |= 1 << i;
                self.rx.observed.keyframe_requests += 1;
            }
        }
    }

    pub fn close(&mut self) {
        let _ = self.pc.close();
    }
}

/// Writes one video frame's packets on `out` (the marker on the last; a simulcast layer
/// named by its extensions); returns how many the stack took.
fn write_frame(
    pc: &mut RTCPeerConnection,
    out: &mut Outgoing,
    pt: u8,
    payloads: Vec<Bytes>,
    ext: Option<&LayerExt>,
    now: Instant,
) -> u64 {
    let last = payloads.len().saturating_sub(1);
    let mut sent = 0;
    for (i, payload) in payloads.into_iter().enumerate() {
        let mut packet = rtp_packet(out, pt, i == last, payload);
        name_layer(&mut packet, out.rid, ext);
        out.seq = out.seq.wrapping_add(1);
        if let Some(mut s) = pc.rtp_sender(out.sender)
            && s.write_rtp(now, packet).is_ok()
        {
            sent += 1;
        }
    }
    sent
}

/// Simulcast: the packet names its section and layer (mid and rid extensions), as
/// browsers' simulcast packets do; nothing without simulcast or before negotiation.
fn name_layer(packet: &mut rtp::Packet, rid: &'static str, ext: Option<&LayerExt>) {
    let Some(ext) = ext.filter(|_| !rid.is_empty()) else {
        return;
    };
    let _ = packet.header.set_extension(ext.mid_id, ext.mid.clone());
    let _ = packet
        .header
        .set_extension(ext.rid_id, Bytes::from_static(rid.as_bytes()));
}

fn rtp_packet(out: &Outgoing, payload_type: u8, marker: bool, payload: Bytes) -> rtp::Packet {
    rtp::Packet {
        header: rtp::Header {
            version: 2,
            marker,
            payload_type,
            sequence_number: out.seq,
            timestamp: out.timestamp,
            ssrc: out.ssrc,
            ..Default::default()
        },
        payload,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn packet(rx: &mut Reception, sender: u32, ssrc: u32, seq: u16, at: Instant) {
        let header = rtp::Header {
            payload_type: OPUS_PT,
            sequence_number: seq,
            ssrc,
            ..Default::default()
        };
        let payload = media::opus_frame(false, Trailer { sender, sent_us: 0 });
        rx.on_rtp(&header, &payload, at);
    }

    #[test]
    fn a_silence_over_500ms_in_one_senders_media_is_a_gap() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut rx = Reception::new(t0);
        rx.track_gaps = true;
        // Sender 1 every 20 ms throughout; sender 2 stops at 100 ms and comes back at 900 ms
        // with a new SSRC (it rejoined); sender 3 stops at 200 ms for good.
        for i in 0..60u16 {
            let at = ms(u64::from(i) * 20);
            packet(&mut rx, 1, 11, i, at);
            if at <= ms(100) {
                packet(&mut rx, 2, 22, i, at);
            } else if at >= ms(900) {
                packet(&mut rx, 2, 23, i, at);
            }
            if at <= ms(200) {
                packet(&mut rx, 3, 33, i, at);
            }
        }
        assert_eq!(
            rx.observed.gaps,
            [Gap {
                sender: 2,
                start: ms(100),
                end: ms(900)
            }]
        );
        let open: Vec<Gap> = rx.open_gaps(ms(1200)).collect();
        assert_eq!(
            open,
            [Gap {
                sender: 3,
                start: ms(200),
                end: ms(1200)
            }]
        );
        // Without --reconnect nothing is tracked.
        let mut quiet = Reception::new(t0);
        packet(&mut quiet, 1, 11, 0, ms(0));
        packet(&mut quiet, 1, 11, 1, ms(2000));
        assert!(quiet.observed.gaps.is_empty() && quiet.open_gaps(ms(5000)).next().is_none());
    }
}
