//! The WebRTC adapter: the one module that speaks webrtc-rs `rtc` (architecture invariant 3).
//!
//! [`WebRtcPeer`] wraps one sans-IO `RTCPeerConnection` and translates at its edges:
//! datagrams in and out, SDP strings, ICE candidates as [`Candidate`], received RTP as the
//! engine's [`MediaPacket`], RTCP as [`Feedback`], forwarded RTP from the engine's
//! [`ForwardedHeader`]. Nothing outside this module names an `rtc` type, so the stack can be
//! swapped (for `str0m`, say) by rewriting this file alone.
//!
//! Configuration choices, and why:
//! * ICE-lite with one host candidate (the node's media port): the server only answers
//!   checks, so it never learns addresses it did not hear from, and demux by ufrag works.
//! * We pick the ICE ufrag/pwd (the UDP mux routes the first STUN request by ufrag).
//! * Codecs: Opus; VP8 and H264 (packetization-mode 1) with RTX. Header extensions: audio
//!   level (RFC 6464) for active speaker detection, transport-wide CC so browsers run their
//!   send-side bandwidth estimation, and the SDES mid.
//! * Interceptors: only TWCC feedback, plus one that hands every inbound RTCP packet to us.
//!   NACK generation and answering, keyframe throttling and sender/receiver reports are the
//!   engine's (`hearth-engine`), driven by the participant actor.
//! * One DTLS certificate per node, shared by all peer connections.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use hearth_engine::codec;
use hearth_engine::forwarder::ForwardedHeader;
use hearth_engine::media::{AudioLevel, Codec, MediaKind, MediaPacket, Ssrc};
use hearth_engine::nack::nack_pairs;
use hearth_engine::stats::{NtpTime, ReportBlock, SenderInfo};
use rtc::interceptor::{Attribute, Interceptor, Packet, Registry, Slot, StreamInfo, TaggedPacket};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::RTCPeerConnectionBuilder;
use rtc::peer_connection::certificate::{CertificateParams, RTCCertificate};
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::interceptor_registry::configure_twcc_receiver_only;
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_H264, MIME_TYPE_OPUS, MIME_TYPE_RTX, MIME_TYPE_VP8, MediaEngine,
};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::event::{RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::message::RTCMessage;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::{RTCIceConnectionState, RTCPeerConnectionState};
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCDtlsRole, RTCIceCandidate, RTCIceCandidateInit,
};
use rtc::rtcp;
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters,
    RTCRtpEncodingParameters, RTCRtpHeaderExtensionCapability, RtpCodecKind,
};
use rtc::rtp_transceiver::{
    RTCRtpReceiverId, RTCRtpSenderId, RTCRtpTransceiverDirection, RTCRtpTransceiverInit,
};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};

use crate::domain::Candidate;

const AUDIO_LEVEL_URI: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";
const MID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:mid";
const ABS_SEND_TIME_URI: &str = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time";
const TRANSPORT_CC_URI: &str =
    "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01";

/// Errors from the WebRTC stack, classified for signaling error codes.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The SDP could not be parsed or applied.
    #[error("invalid SDP: {0}")]
    InvalidSdp(String),
    /// The offer/answer arrived in a state where it cannot be applied.
    #[error("negotiation: {0}")]
    Negotiation(String),
    /// The candidate could not be parsed or added.
    #[error("invalid candidate: {0}")]
    InvalidCandidate(String),
    /// Anything else the stack reported.
    #[error("webrtc: {0}")]
    Stack(String),
}

fn stack(e: impl std::fmt::Display) -> PeerError {
    PeerError::Stack(e.to_string())
}

/// The node-wide DTLS identity shared by every peer connection.
#[derive(Clone)]
pub struct Certificate(RTCCertificate);

impl Certificate {
    /// A fresh self-signed ECDSA P-256 certificate.
    pub fn generate() -> Result<Self, PeerError> {
        let provider = rtc::crypto::default_provider().map_err(stack)?;
        let params = CertificateParams::new(vec!["hearth".to_owned()]).map_err(stack)?;
        let cert = RTCCertificate::generate(
            provider.crypto(),
            rtc::crypto::SignatureScheme::EcdsaP256Sha256,
            params,
        )
        .map_err(stack)?;
        Ok(Self(cert))
    }
}

impl std::fmt::Debug for Certificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Certificate")
    }
}

/// Everything a new peer connection needs from its participant.
pub struct PeerSetup {
    /// The address advertised in our ICE candidate (public IP + media port). Also used as
    /// the local address towards the stack, so its view stays consistent behind 1:1 NAT.
    pub advertised: SocketAddr,
    pub certificate: Certificate,
    /// Our ICE credentials (the ufrag is the demux key).
    pub ufrag: String,
    pub pwd: String,
}

/// Codec parameters of a received track, reused to send it on to subscribers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodecParams {
    pub codec: Codec,
    pub mime_type: String,
    pub clock_rate: u32,
    pub channels: u16,
    pub fmtp: String,
}

/// A track the remote peer started sending.
#[derive(Clone, Debug)]
pub struct InboundTrack {
    pub ssrc: Ssrc,
    pub kind: MediaKind,
    pub codec: CodecParams,
    /// The SDP mid of its transceiver.
    pub mid: String,
    /// The stack's id of the track, for matching the close event.
    pub stack_id: String,
}

/// State changes and discoveries, drained with [`WebRtcPeer::poll_event`].
#[derive(Clone, Debug)]
pub enum PeerEvent {
    /// One of our ICE candidates, to trickle to the client.
    LocalCandidate(Candidate),
    /// ICE and DTLS are up.
    Connected,
    /// The connection is gone (failed, closed, or DTLS closed by the remote).
    Gone(&'static str),
    /// The remote peer publishes a new track.
    TrackOpened(InboundTrack),
    /// A track from the remote peer ended.
    TrackClosed { stack_id: String },
}

/// RTCP from the remote peer, translated for the engine.
#[derive(Clone, Debug)]
pub enum Feedback {
    /// PLI or FIR for one of our outgoing streams.
    KeyframeRequest { media_ssrc: Ssrc },
    /// Generic NACK for one of our outgoing streams.
    Nack { media_ssrc: Ssrc, seqs: Vec<u16> },
    /// A reception report about one of our outgoing streams (from the remote's RR or SR).
    Report(ReportBlock),
    /// The remote's sender report for one of its streams.
    SenderReport {
        ssrc: Ssrc,
        ntp: NtpTime,
        rtp_ts: u32,
    },
}

/// Media and feedback from the remote, drained with [`WebRtcPeer::poll_inbound`].
#[derive(Clone, Debug)]
pub enum Inbound {
    Rtp(MediaPacket),
    Feedback(Feedback),
}

/// Handle of one outgoing (server → client) stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SenderKey {
    index: usize,
    pub ssrc: Ssrc,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Signaling {
    Stable,
    HaveLocalOffer,
    HaveRemoteOffer,
}

struct InboundInfo {
    codec: Codec,
    audio_level_id: Option<u8>,
}

struct SenderEntry {
    id: RTCRtpSenderId,
    codec: CodecParams,
    /// The payload type negotiated with this subscriber, found on first send.
    payload_type: Option<u8>,
}

/// One WebRTC peer connection and its translation state.
pub struct WebRtcPeer {
    pc: RTCPeerConnection,
    advertised: SocketAddr,
    signaling: Signaling,
    inbound: HashMap<u32, InboundInfo>,
    senders: HashMap<usize, SenderEntry>,
    /// SSRC used as the sender of our RTCP (RR, PLI, NACK).
    rtcp_ssrc: u32,
    events: VecDeque<PeerEvent>,
    inbound_queue: VecDeque<Inbound>,
    connected: bool,
    gone: bool,
    /// Our host candidate, until it has been trickled once.
    local_candidate: Option<String>,
}

impl WebRtcPeer {
    /// Builds a peer connection that answers ICE on `setup.advertised`.
    pub fn new(setup: PeerSetup, now: Instant) -> Result<Self, PeerError> {
        let mut media_engine = MediaEngine::default();
        register_codecs(&mut media_engine)?;
        let registry = Registry::new().with(Slot::from(14_000), DeliverRtcp::default());
        let registry = configure_twcc_receiver_only(registry, &mut media_engine).map_err(stack)?;

        // Always the DTLS server: a browser answering our offer picks `active`, and when we
        // answer theirs we say `passive`, so the role never flips across renegotiations.
        let settings = SettingEngineBuilder::new()
            .with_answering_dtls_role(RTCDtlsRole::Server)
            .with_lite(true)
            .with_ice_credentials(setup.ufrag, setup.pwd)
            .build();
        let config = RTCConfigurationBuilder::new()
            .with_certificates(vec![setup.certificate.0])
            .build();
        let mut pc = RTCPeerConnectionBuilder::new()
            .with_configuration(config)
            .with_setting_engine(settings)
            .with_media_engine(media_engine)
            .with_interceptor_registry(registry)
            .build(now)
            .map_err(stack)?;

        let candidate = CandidateHostConfig {
            base_config: CandidateConfig {
                network: "udp".to_owned(),
                address: setup.advertised.ip().to_string(),
                port: setup.advertised.port(),
                component: 1,
                ..Default::default()
            },
            ..Default::default()
        }
        .new_candidate_host()
        .map_err(stack)?;
        let init = RTCIceCandidate::from(&candidate).to_json().map_err(stack)?;
        let local_candidate = init.candidate.clone();
        pc.add_local_candidate(init).map_err(stack)?;

        Ok(Self {
            pc,
            advertised: setup.advertised,
            signaling: Signaling::Stable,
            inbound: HashMap::new(),
            senders: HashMap::new(),
            rtcp_ssrc: rand::random(),
            events: VecDeque::new(),
            inbound_queue: VecDeque::new(),
            connected: false,
            gone: false,
            local_candidate: Some(local_candidate),
        })
    }

    /// After the first local description: our one candidate, trickled as well (it is in
    /// every SDP we send too), for clients that wait for candidates on the signaling channel.
    fn announce_candidate(&mut self) {
        let Some(candidate) = self.local_candidate.take() else {
            return;
        };
        let mid = self
            .pc
            .get_transceivers()
            .collect::<Vec<_>>()
            .into_iter()
            .find_map(|id| self.pc.rtp_transceiver(id).and_then(|t| t.mid().clone()));
        self.events.push_back(PeerEvent::LocalCandidate(Candidate {
            candidate,
            sdp_mid: mid,
            sdp_m_line_index: Some(0),
            username_fragment: None,
        }));
    }

    /// True when no offer/answer exchange is in progress.
    pub fn is_stable(&self) -> bool {
        self.signaling == Signaling::Stable
    }

    /// True while our own offer waits for the client's answer.
    pub fn has_local_offer(&self) -> bool {
        self.signaling == Signaling::HaveLocalOffer
    }

    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// Applies a client offer and returns our answer. Only valid when stable.
    pub fn apply_offer(&mut self, now: Instant, sdp: String) -> Result<String, PeerError> {
        if self.signaling != Signaling::Stable {
            return Err(PeerError::Negotiation(
                "an offer arrived while another negotiation is in progress".into(),
            ));
        }
        let offer =
            RTCSessionDescription::offer(sdp).map_err(|e| PeerError::InvalidSdp(e.to_string()))?;
        self.pc
            .set_remote_description(now, offer)
            .map_err(|e| PeerError::InvalidSdp(e.to_string()))?;
        self.signaling = Signaling::HaveRemoteOffer;
        let answer = match self.pc.create_answer(None) {
            Ok(answer) => answer,
            Err(e) => {
                self.rollback(now);
                return Err(PeerError::Negotiation(e.to_string()));
            }
        };
        let sdp = answer.sdp.clone();
        if let Err(e) = self.pc.set_local_description(now, answer) {
            self.rollback(now);
            return Err(PeerError::Negotiation(e.to_string()));
        }
        self.signaling = Signaling::Stable;
        self.forget_payload_types();
        self.announce_candidate();
        Ok(sdp)
    }

    /// Creates our offer (after senders changed). Only valid when stable.
    pub fn create_offer(&mut self, now: Instant) -> Result<String, PeerError> {
        if self.signaling != Signaling::Stable {
            return Err(PeerError::Negotiation("not stable".into()));
        }
        let offer = self
            .pc
            .create_offer(None)
            .map_err(|e| PeerError::Negotiation(e.to_string()))?;
        let sdp = offer.sdp.clone();
        self.pc
            .set_local_description(now, offer)
            .map_err(|e| PeerError::Negotiation(e.to_string()))?;
        self.signaling = Signaling::HaveLocalOffer;
        self.announce_candidate();
        Ok(sdp)
    }

    /// Applies the client's answer to our offer.
    pub fn apply_answer(&mut self, now: Instant, sdp: String) -> Result<(), PeerError> {
        if self.signaling != Signaling::HaveLocalOffer {
            return Err(PeerError::Negotiation(
                "an answer arrived but no offer is outstanding".into(),
            ));
        }
        let answer =
            RTCSessionDescription::answer(sdp).map_err(|e| PeerError::InvalidSdp(e.to_string()))?;
        self.pc
            .set_remote_description(now, answer)
            .map_err(|e| PeerError::InvalidSdp(e.to_string()))?;
        self.signaling = Signaling::Stable;
        self.forget_payload_types();
        Ok(())
    }

    /// Abandons the exchange in progress (our offer or the client's).
    pub fn rollback(&mut self, now: Instant) {
        if let Ok(rollback) = RTCSessionDescription::rollback(None) {
            let result = match self.signaling {
                Signaling::HaveRemoteOffer => self.pc.set_remote_description(now, rollback),
                Signaling::HaveLocalOffer => self.pc.set_local_description(now, rollback),
                Signaling::Stable => Ok(()),
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, "rollback failed");
            }
        }
        self.signaling = Signaling::Stable;
    }

    fn forget_payload_types(&mut self) {
        for sender in self.senders.values_mut() {
            sender.payload_type = None;
        }
    }

    /// Adds a remote (client) ICE candidate. End-of-candidates (empty) is accepted and ignored.
    pub fn add_remote_candidate(&mut self, candidate: Candidate) -> Result<(), PeerError> {
        if candidate.candidate.trim().is_empty() {
            return Ok(());
        }
        // With ICE-lite the server learns the client's addresses from its checks; remote
        // candidates are applied when they parse, and mDNS (.local) ones cannot be resolved here.
        if candidate.candidate.contains(".local ") {
            return Ok(());
        }
        self.pc
            .add_remote_candidate(RTCIceCandidateInit {
                candidate: candidate.candidate,
                sdp_mid: candidate.sdp_mid,
                sdp_mline_index: candidate.sdp_m_line_index,
                username_fragment: candidate.username_fragment,
                ..Default::default()
            })
            .map_err(|e| PeerError::InvalidCandidate(e.to_string()))
    }

    /// Adds an outgoing stream carrying a publisher's track; takes effect with the next offer.
    ///
    /// `stream_id` becomes the MediaStream id the browser sees (the publisher's participant
    /// id), `track_id` the track id.
    pub fn add_sender(
        &mut self,
        kind: MediaKind,
        codec: &CodecParams,
        stream_id: &str,
        track_id: &str,
    ) -> Result<SenderKey, PeerError> {
        let ssrc: u32 = rand::random();
        let rtc_codec = RTCRtpCodec {
            mime_type: codec.mime_type.clone(),
            clock_rate: codec.clock_rate,
            channels: codec.channels,
            sdp_fmtp_line: codec.fmtp.clone(),
            rtcp_feedback: vec![],
        };
        let track = MediaStreamTrack::new(
            stream_id.to_owned(),
            track_id.to_owned(),
            track_id.to_owned(),
            rtc_kind(kind),
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec: rtc_codec,
                active: true,
                ..Default::default()
            }],
        );
        let transceiver = self
            .pc
            .add_transceiver_from_track(
                track,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Sendonly,
                    streams: vec![stream_id.to_owned()],
                    send_encodings: vec![],
                }),
            )
            .map_err(stack)?;
        let index = transceiver;
        let Some(mut rtp_transceiver) = self.pc.rtp_transceiver(transceiver) else {
            return Err(PeerError::Stack("new transceiver vanished".into()));
        };
        // Best effort: once this connection's codec set is fixed, codecs the client did
        // not accept are refused here, and the publisher's codec alone is offered.
        if let Err(e) = rtp_transceiver.set_codec_preferences(subscription_codecs(kind, codec)) {
            tracing::debug!(error = %e, "subscription offered with its own codec only");
        }
        let id = rtp_transceiver
            .sender()
            .ok_or_else(|| PeerError::Stack("new transceiver has no sender".into()))?;
        self.senders.insert(
            index,
            SenderEntry {
                id,
                codec: codec.clone(),
                payload_type: None,
            },
        );
        Ok(SenderKey {
            index,
            ssrc: Ssrc(ssrc),
        })
    }

    /// Removes an outgoing stream; takes effect with the next offer.
    pub fn remove_sender(&mut self, key: SenderKey) -> Result<(), PeerError> {
        let Some(entry) = self.senders.remove(&key.index) else {
            return Ok(());
        };
        self.pc.remove_track(entry.id).map_err(stack)
    }

    /// Sends one forwarded RTP packet on `key`'s stream.
    pub fn send_rtp(
        &mut self,
        now: Instant,
        key: SenderKey,
        header: ForwardedHeader,
        payload: Bytes,
    ) -> Result<(), PeerError> {
        let Some(entry) = self.senders.get_mut(&key.index) else {
            return Err(PeerError::Stack("unknown sender".into()));
        };
        let Some(mut sender) = self.pc.rtp_sender(entry.id) else {
            return Err(PeerError::Stack("sender gone".into()));
        };
        let payload_type = match entry.payload_type {
            Some(pt) => pt,
            None => {
                let params = sender.get_parameters();
                let pt = find_payload_type(&params.rtp_parameters.codecs, &entry.codec)
                    .ok_or_else(|| PeerError::Negotiation("codec not negotiated".into()))?;
                entry.payload_type = Some(pt);
                pt
            }
        };
        let packet = rtp::Packet {
            header: rtp::Header {
                version: 2,
                marker: header.marker,
                payload_type,
                sequence_number: header.seq,
                timestamp: header.timestamp,
                ssrc: header.ssrc.0,
                ..Default::default()
            },
            payload,
        };
        sender.write_rtp(now, packet).map_err(stack)
    }

    /// Asks the remote for a keyframe on one of its streams.
    pub fn send_pli(&mut self, now: Instant, media_ssrc: Ssrc) -> Result<(), PeerError> {
        let pli = rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication {
            sender_ssrc: self.rtcp_ssrc,
            media_ssrc: media_ssrc.0,
        };
        self.write_rtcp(now, vec![Box::new(pli)])
    }

    /// Reports lost packets of one of the remote's streams.
    pub fn send_nack(
        &mut self,
        now: Instant,
        media_ssrc: Ssrc,
        seqs: &[u16],
    ) -> Result<(), PeerError> {
        if seqs.is_empty() {
            return Ok(());
        }
        let nack = rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack {
            sender_ssrc: self.rtcp_ssrc,
            media_ssrc: media_ssrc.0,
            nacks: nack_pairs(seqs)
                .into_iter()
                .map(|(packet_id, lost_packets)| {
                    rtcp::transport_feedbacks::transport_layer_nack::NackPair {
                        packet_id,
                        lost_packets,
                    }
                })
                .collect(),
        };
        self.write_rtcp(now, vec![Box::new(nack)])
    }

    /// Sends our reception reports about the remote's streams.
    pub fn send_receiver_report(
        &mut self,
        now: Instant,
        blocks: &[ReportBlock],
    ) -> Result<(), PeerError> {
        if blocks.is_empty() {
            return Ok(());
        }
        // An RR carries at most 31 blocks.
        let mut packets: Vec<Box<dyn rtcp::Packet>> = Vec::new();
        for chunk in blocks.chunks(31) {
            packets.push(Box::new(rtcp::receiver_report::ReceiverReport {
                ssrc: self.rtcp_ssrc,
                reports: chunk.iter().map(reception_report).collect(),
                ..Default::default()
            }));
        }
        self.write_rtcp(now, packets)
    }

    /// Sends the sender report of one outgoing stream.
    pub fn send_sender_report(
        &mut self,
        now: Instant,
        key: SenderKey,
        info: SenderInfo,
    ) -> Result<(), PeerError> {
        let sr = rtcp::sender_report::SenderReport {
            ssrc: key.ssrc.0,
            ntp_time: info.ntp.0,
            rtp_time: info.rtp_ts,
            packet_count: info.packets,
            octet_count: info.octets,
            ..Default::default()
        };
        self.write_rtcp(now, vec![Box::new(sr)])
    }

    fn write_rtcp(
        &mut self,
        now: Instant,
        packets: Vec<Box<dyn rtcp::Packet>>,
    ) -> Result<(), PeerError> {
        // The stack routes RTCP by content, whichever sender or receiver writes it.
        if let Some(entry) = self.senders.values().next()
            && let Some(mut sender) = self.pc.rtp_sender(entry.id)
        {
            return sender.write_rtcp(now, packets).map_err(stack);
        }
        let receivers: Vec<RTCRtpReceiverId> = self.pc.get_receivers().collect();
        for id in receivers {
            if let Some(mut receiver) = self.pc.rtp_receiver(id) {
                return receiver.write_rtcp(now, packets).map_err(stack);
            }
        }
        Ok(())
    }

    /// Feeds one datagram received from `from`.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: BytesMut) {
        let msg = TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr: self.advertised,
                peer_addr: from,
                ecn: None,
                transport_protocol: TransportProtocol::UDP,
            },
            message: data,
        };
        if let Err(e) = self.pc.handle_read(msg) {
            tracing::debug!(error = %e, "datagram rejected by the stack");
        }
        self.pump();
    }

    /// Next datagram to send: (destination, bytes).
    pub fn poll_datagram(&mut self) -> Option<(SocketAddr, BytesMut)> {
        self.pc
            .poll_write()
            .map(|msg| (msg.transport.peer_addr, msg.message))
    }

    pub fn poll_timeout(&mut self) -> Option<Instant> {
        self.pc.poll_timeout()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if let Err(e) = self.pc.handle_timeout(now) {
            tracing::debug!(error = %e, "stack timeout handling failed");
        }
        self.pump();
    }

    pub fn poll_event(&mut self) -> Option<PeerEvent> {
        self.pump();
        self.events.pop_front()
    }

    pub fn poll_inbound(&mut self) -> Option<Inbound> {
        self.pump();
        self.inbound_queue.pop_front()
    }

    /// Closes the connection (sends DTLS close_notify where possible).
    pub fn close(&mut self) {
        if let Err(e) = self.pc.close() {
            tracing::debug!(error = %e, "close failed");
        }
    }

    /// Moves everything the stack produced into our own queues, translated.
    fn pump(&mut self) {
        while let Some(event) = self.pc.poll_event() {
            self.on_stack_event(event);
        }
        while let Some(msg) = self.pc.poll_read() {
            match msg.message {
                RTCMessage::RtpPacket(_, packet) => {
                    if let Some(pkt) = self.translate_rtp(msg.now, packet) {
                        self.inbound_queue.push_back(Inbound::Rtp(pkt));
                    }
                }
                RTCMessage::RtcpPacket(_, packets) => {
                    for packet in &packets {
                        translate_rtcp(packet.as_ref(), &mut self.inbound_queue);
                    }
                }
                _ => {}
            }
        }
    }

    fn translate_rtp(&mut self, now: Instant, packet: rtp::Packet) -> Option<MediaPacket> {
        let info = self.inbound.get(&packet.header.ssrc)?;
        let audio_level = info.audio_level_id.and_then(|id| {
            packet
                .header
                .extensions
                .iter()
                .find(|ext| ext.id == id)
                .and_then(|ext| ext.payload.first())
                .map(|b| AudioLevel::from_byte(*b))
        });
        let keyframe = codec::is_keyframe(info.codec, &packet.payload);
        Some(MediaPacket {
            ssrc: Ssrc(packet.header.ssrc),
            seq: packet.header.sequence_number,
            timestamp: packet.header.timestamp,
            marker: packet.header.marker,
            payload_type: packet.header.payload_type,
            payload: packet.payload,
            arrival: now,
            keyframe,
            audio_level,
        })
    }

    fn on_stack_event(&mut self, event: RTCPeerConnectionEvent) {
        match event {
            RTCPeerConnectionEvent::OnIceCandidateEvent(ev) => {
                if let Ok(init) = ev.candidate.to_json() {
                    self.events.push_back(PeerEvent::LocalCandidate(Candidate {
                        candidate: init.candidate,
                        sdp_mid: init.sdp_mid,
                        sdp_m_line_index: init.sdp_mline_index,
                        username_fragment: init.username_fragment,
                    }));
                }
            }
            RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) => match state {
                RTCPeerConnectionState::Connected if !self.connected => {
                    self.connected = true;
                    self.events.push_back(PeerEvent::Connected);
                }
                RTCPeerConnectionState::Failed => self.mark_gone("connection failed"),
                RTCPeerConnectionState::Closed => self.mark_gone("connection closed"),
                _ => {}
            },
            RTCPeerConnectionEvent::OnIceConnectionStateChangeEvent(
                RTCIceConnectionState::Failed,
            ) => self.mark_gone("ICE failed"),
            RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init)) => {
                self.on_track_open(init.receiver_id, init.ssrc, init.track_id);
            }
            RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnClose(track_id)) => {
                self.events
                    .push_back(PeerEvent::TrackClosed { stack_id: track_id });
            }
            _ => {}
        }
    }

    fn mark_gone(&mut self, why: &'static str) {
        if !self.gone {
            self.gone = true;
            self.events.push_back(PeerEvent::Gone(why));
        }
    }

    fn on_track_open(&mut self, receiver_id: RTCRtpReceiverId, ssrc: u32, stack_id: String) {
        let mid = self
            .pc
            .get_transceivers()
            .collect::<Vec<_>>()
            .into_iter()
            .find_map(|tid| {
                let t = self.pc.rtp_transceiver(tid)?;
                (t.receiver() == Some(receiver_id)).then(|| t.mid().clone().unwrap_or_default())
            })
            .unwrap_or_default();
        let Some(mut receiver) = self.pc.rtp_receiver(receiver_id) else {
            return;
        };
        let track = receiver.track();
        let kind = match track.kind() {
            RtpCodecKind::Audio => MediaKind::Audio,
            RtpCodecKind::Video => MediaKind::Video,
            _ => return,
        };
        let Some(rtc_codec) = track.codec(ssrc).cloned() else {
            tracing::debug!(ssrc, "track opened without a codec");
            return;
        };
        let audio_level_id = receiver
            .get_parameters()
            .rtp_parameters
            .header_extensions
            .iter()
            .find(|ext| ext.uri == AUDIO_LEVEL_URI)
            .and_then(|ext| u8::try_from(ext.id).ok());
        let codec = Codec::from_mime(&rtc_codec.mime_type);
        self.inbound.insert(
            ssrc,
            InboundInfo {
                codec,
                audio_level_id,
            },
        );
        self.events.push_back(PeerEvent::TrackOpened(InboundTrack {
            ssrc: Ssrc(ssrc),
            kind,
            codec: CodecParams {
                codec,
                mime_type: rtc_codec.mime_type,
                clock_rate: rtc_codec.clock_rate,
                channels: rtc_codec.channels,
                fmtp: rtc_codec.sdp_fmtp_line,
            },
            mid,
            stack_id,
        }));
    }
}

fn rtc_kind(kind: MediaKind) -> RtpCodecKind {
    match kind {
        MediaKind::Audio => RtpCodecKind::Audio,
        MediaKind::Video => RtpCodecKind::Video,
    }
}

fn reception_report(block: &ReportBlock) -> rtcp::reception_report::ReceptionReport {
    rtcp::reception_report::ReceptionReport {
        ssrc: block.ssrc.0,
        fraction_lost: block.fraction_lost,
        total_lost: block.total_lost,
        last_sequence_number: block.highest_seq,
        jitter: block.jitter,
        last_sender_report: block.last_sr,
        delay: block.delay_since_last_sr,
    }
}

fn report_block(r: &rtcp::reception_report::ReceptionReport) -> ReportBlock {
    ReportBlock {
        ssrc: Ssrc(r.ssrc),
        fraction_lost: r.fraction_lost,
        total_lost: r.total_lost,
        highest_seq: r.last_sequence_number,
        jitter: r.jitter,
        last_sr: r.last_sender_report,
        delay_since_last_sr: r.delay,
    }
}

/// Translates one inbound RTCP packet; kinds we do not use are ignored.
fn translate_rtcp(packet: &dyn rtcp::Packet, out: &mut VecDeque<Inbound>) {
    use rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
    use rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
    use rtcp::receiver_report::ReceiverReport;
    use rtcp::sender_report::SenderReport;
    use rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;

    let any = packet.as_any();
    if let Some(pli) = any.downcast_ref::<PictureLossIndication>() {
        out.push_back(Inbound::Feedback(Feedback::KeyframeRequest {
            media_ssrc: Ssrc(pli.media_ssrc),
        }));
    } else if let Some(fir) = any.downcast_ref::<FullIntraRequest>() {
        for entry in &fir.fir {
            out.push_back(Inbound::Feedback(Feedback::KeyframeRequest {
                media_ssrc: Ssrc(entry.ssrc),
            }));
        }
    } else if let Some(nack) = any.downcast_ref::<TransportLayerNack>() {
        let pairs: Vec<(u16, u16)> = nack
            .nacks
            .iter()
            .map(|p| (p.packet_id, p.lost_packets))
            .collect();
        out.push_back(Inbound::Feedback(Feedback::Nack {
            media_ssrc: Ssrc(nack.media_ssrc),
            seqs: hearth_engine::nack::nack_seqs(&pairs),
        }));
    } else if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
        for r in &rr.reports {
            out.push_back(Inbound::Feedback(Feedback::Report(report_block(r))));
        }
    } else if let Some(sr) = any.downcast_ref::<SenderReport>() {
        out.push_back(Inbound::Feedback(Feedback::SenderReport {
            ssrc: Ssrc(sr.ssrc),
            ntp: NtpTime(sr.ntp_time),
            rtp_ts: sr.rtp_time,
        }));
        for r in &sr.reports {
            out.push_back(Inbound::Feedback(Feedback::Report(report_block(r))));
        }
    }
}

fn find_payload_type(codecs: &[RTCRtpCodecParameters], want: &CodecParams) -> Option<u8> {
    let same_mime =
        |c: &&RTCRtpCodecParameters| c.rtp_codec.mime_type.eq_ignore_ascii_case(&want.mime_type);
    codecs
        .iter()
        .filter(same_mime)
        .find(|c| fmtp_compatible(&c.rtp_codec.sdp_fmtp_line, &want.fmtp, want.codec))
        .or_else(|| codecs.iter().find(same_mime))
        .map(|c| c.payload_type)
}

/// H264 streams only decode with the same packetization mode and profile; other codecs
/// match by mime type alone.
fn fmtp_compatible(have: &str, want: &str, codec: Codec) -> bool {
    if codec != Codec::H264 {
        return true;
    }
    let param = |fmtp: &str, key: &str| -> Option<String> {
        fmtp.split(';').find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            k.eq_ignore_ascii_case(key).then(|| v.to_ascii_lowercase())
        })
    };
    let mode = |fmtp: &str| param(fmtp, "packetization-mode").unwrap_or_else(|| "0".into());
    let profile =
        |fmtp: &str| param(fmtp, "profile-level-id").map(|p| p.chars().take(4).collect::<String>());
    mode(have) == mode(want) && profile(have) == profile(want)
}

/// Every codec we negotiate, by kind, in our order of preference.
fn codec_table() -> Vec<(RtpCodecKind, RTCRtpCodecParameters)> {
    let video_feedback = [("ccm", "fir"), ("nack", ""), ("nack", "pli")]
        .map(|(typ, parameter)| RTCPFeedback {
            typ: typ.to_owned(),
            parameter: parameter.to_owned(),
        })
        .to_vec();
    let codec = |mime: &str, clock_rate, channels, fmtp: &str, feedback: &[RTCPFeedback], pt| {
        RTCRtpCodecParameters {
            rtp_codec: RTCRtpCodec {
                mime_type: mime.to_owned(),
                clock_rate,
                channels,
                sdp_fmtp_line: fmtp.to_owned(),
                rtcp_feedback: feedback.to_vec(),
            },
            payload_type: pt,
        }
    };
    let h264 = |profile: &str| {
        format!("level-asymmetry-allowed=1;packetization-mode=1;profile-level-id={profile}")
    };
    let audio = RtpCodecKind::Audio;
    let video = RtpCodecKind::Video;
    vec![
        (
            audio,
            codec(
                MIME_TYPE_OPUS,
                48_000,
                2,
                "minptime=10;useinbandfec=1",
                &[],
                111,
            ),
        ),
        (
            video,
            codec(MIME_TYPE_VP8, 90_000, 0, "", &video_feedback, 96),
        ),
        (video, codec(MIME_TYPE_RTX, 90_000, 0, "apt=96", &[], 97)),
        (
            video,
            codec(
                MIME_TYPE_H264,
                90_000,
                0,
                &h264("42e01f"),
                &video_feedback,
                102,
            ),
        ),
        (video, codec(MIME_TYPE_RTX, 90_000, 0, "apt=102", &[], 103)),
        (
            video,
            codec(
                MIME_TYPE_H264,
                90_000,
                0,
                &h264("42001f"),
                &video_feedback,
                104,
            ),
        ),
        (video, codec(MIME_TYPE_RTX, 90_000, 0, "apt=104", &[], 105)),
    ]
}

/// Codec preferences for a subscription's m-line: the publisher's codec first (with its RTX),
/// then every other codec of the kind. Offering them all matters: the stack fixes a
/// connection's codec set at its first negotiation of each kind, so a subscriber whose first
/// video m-line offered only VP8 could never be offered an H264 publisher later.
fn subscription_codecs(kind: MediaKind, first: &CodecParams) -> Vec<RTCRtpCodecParameters> {
    let kind = rtc_kind(kind);
    let all: Vec<RTCRtpCodecParameters> = codec_table()
        .into_iter()
        .filter(|(k, _)| *k == kind)
        .map(|(_, c)| c)
        .collect();
    let primary = find_payload_type(&all, first);
    let is_first = |c: &RTCRtpCodecParameters| {
        Some(c.payload_type) == primary
            || primary.is_some_and(|pt| c.rtp_codec.sdp_fmtp_line == format!("apt={pt}"))
    };
    let mut ordered: Vec<RTCRtpCodecParameters> =
        all.iter().filter(|c| is_first(c)).cloned().collect();
    ordered.extend(all.iter().filter(|c| !is_first(c)).cloned());
    ordered
}

fn register_codecs(media_engine: &mut MediaEngine) -> Result<(), PeerError> {
    for (kind, codec) in codec_table() {
        media_engine.register_codec(codec, kind).map_err(stack)?;
    }
    // Extension ids are handed out in registration order (1, 2, ...), and a browser that
    // receives our offer before it has negotiated its own tracks must not see an id it uses
    // for another extension (Chromium rejects such a BUNDLE group). So the order copies
    // Chromium's defaults: 1 audio level, 2 abs-send-time, 3 transport-cc (registered with
    // the TWCC interceptor right after), 4 mid.
    let register = |media_engine: &mut MediaEngine, uri: &str, kinds: &[RtpCodecKind]| {
        for kind in kinds {
            media_engine
                .register_header_extension(
                    RTCRtpHeaderExtensionCapability {
                        uri: uri.to_owned(),
                    },
                    *kind,
                    None,
                )
                .map_err(stack)?;
        }
        Ok::<(), PeerError>(())
    };
    let both = [RtpCodecKind::Audio, RtpCodecKind::Video];
    register(media_engine, AUDIO_LEVEL_URI, &[RtpCodecKind::Audio])?;
    register(media_engine, ABS_SEND_TIME_URI, &both)?;
    register(media_engine, TRANSPORT_CC_URI, &both)?;
    register(media_engine, MID_URI, &both)?;
    Ok(())
}

/// Marks every inbound RTCP packet for the application: without it the stack consumes
/// PLI/FIR/NACK and we could not relay keyframe requests or answer NACKs from our cache.
/// Public for Rust clients of the same stack (the integration tests' client).
#[derive(Default)]
pub struct DeliverRtcp {
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn params(codec: Codec, mime: &str, fmtp: &str) -> CodecParams {
        CodecParams {
            codec,
            mime_type: mime.into(),
            clock_rate: 90_000,
            channels: 0,
            fmtp: fmtp.into(),
        }
    }

    #[test]
    fn h264_payload_types_match_on_mode_and_profile() {
        let have = [
            codec_params(
                MIME_TYPE_H264,
                "packetization-mode=0;profile-level-id=42e01f",
                100,
            ),
            codec_params(
                MIME_TYPE_H264,
                "packetization-mode=1;profile-level-id=42e01f",
                102,
            ),
            codec_params(MIME_TYPE_VP8, "", 96),
        ];
        let want = params(
            Codec::H264,
            "video/h264",
            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
        );
        assert_eq!(find_payload_type(&have, &want), Some(102));
        let vp8 = params(Codec::Vp8, "video/VP8", "");
        assert_eq!(find_payload_type(&have, &vp8), Some(96));
        let opus = params(Codec::Opus, "audio/opus", "");
        assert_eq!(find_payload_type(&have, &opus), None);
    }

    /// Garbage in every demux range (STUN, DTLS, RTP/RTCP, other) must never panic the
    /// stack, before or after a remote description is set.
    #[test]
    fn random_datagrams_never_panic() {
        let now = Instant::now();
        let setup = || PeerSetup {
            advertised: "127.0.0.1:7882".parse().unwrap(),
            certificate: Certificate::generate().unwrap(),
            ufrag: "serverufrag".into(),
            pwd: "serverpasswordserverpassword".into(),
        };
        let mut peer = WebRtcPeer::new(setup(), now).unwrap();
        let from: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for i in 0..20_000u32 {
            let len = (next() % 300) as usize;
            let mut data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if let Some(first) = data.first_mut() {
                // RFC 7983 ranges: 0-3 STUN, 20-63 DTLS, 128-191 RTP/RTCP.
                *first = match i % 4 {
                    0 => (*first) % 4,
                    1 => 20 + (*first) % 44,
                    2 => 128 + (*first) % 64,
                    _ => *first,
                };
            }
            if data.len() >= 8 && i % 8 == 0 {
                data[4..8].copy_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
            }
            peer.handle_datagram(now, from, BytesMut::from(&data[..]));
            while peer.poll_datagram().is_some() {}
            while peer.poll_event().is_some() {}
            while peer.poll_inbound().is_some() {}
        }
        peer.handle_timeout(now + std::time::Duration::from_secs(1));
    }

    fn codec_params(mime: &str, fmtp: &str, pt: u8) -> RTCRtpCodecParameters {
        RTCRtpCodecParameters {
            rtp_codec: RTCRtpCodec {
                mime_type: mime.into(),
                clock_rate: 90_000,
                channels: 0,
                sdp_fmtp_line: fmtp.into(),
                rtcp_feedback: vec![],
            },
            payload_type: pt,
        }
    }
}
