//! The participant's WebRTC transport: the engine's own sans-IO transport
//! (`hearth_engine::transport`: ICE-lite, DTLS, SRTP, SDP, RTCP), with the actor side's
//! types at its edges (signaling candidates) and the randomness the engine does not draw
//! (SSRCs, session ids).
//!
//! Configuration choices, and why:
//! * ICE-lite with one host candidate (the node's media port): the server only answers
//!   checks, so it never sends to an address it did not hear a valid check from, and the
//!   UDP mux routes an address only once ICE validated it ([`PeerEvent::PathValidated`]).
//! * We pick the ICE ufrag/pwd (the UDP mux routes the first STUN request by ufrag).
//! * Always the DTLS server, SRTP AES-128-GCM first; one certificate per node.
//! * Codecs: Opus; VP8 and H264 (packetization-mode 1) with RTX from publishers. Header
//!   extensions from publishers: audio level (active speaker), transport-wide CC (we send
//!   the feedback, so browsers keep their bandwidth estimate), mid and rid.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use hearth_engine::forwarder::ForwardedHeader;
use hearth_engine::media::{MediaKind, Ssrc};
use hearth_engine::stats::{ReportBlock, SenderInfo};
use hearth_engine::transport::{self, DtlsIdentity, Peer, PeerConfig};
pub use hearth_engine::transport::{
    CodecParams, Feedback, Inbound, InboundTrack, PeerError, PeerStats, RtpSealer, SenderKey,
};

use crate::domain::Candidate;

/// The node-wide DTLS identity shared by every participant.
#[derive(Clone, Debug)]
pub struct Certificate(DtlsIdentity);

impl Certificate {
    /// A fresh self-signed ECDSA P-256 certificate.
    pub fn generate() -> Result<Self, PeerError> {
        DtlsIdentity::generate()
            .map(Self)
            .map_err(|e| PeerError::Transport(e.to_string()))
    }

    /// The `sha-256` fingerprint every description carries.
    pub fn fingerprint(&self) -> &str {
        self.0.fingerprint()
    }
}

/// Everything a new transport needs from its participant.
pub struct PeerSetup {
    /// The address advertised in our ICE candidate (public IP + media port).
    pub advertised: SocketAddr,
    pub certificate: Certificate,
    /// Our ICE credentials (the ufrag is the demux key).
    pub ufrag: String,
    pub pwd: String,
}

/// State changes, drained with [`WebRtcPeer::poll_event`].
#[derive(Clone, Debug)]
pub enum PeerEvent {
    /// Our ICE candidate, to trickle to the client.
    LocalCandidate(Candidate),
    /// ICE and DTLS are up.
    Connected,
    /// The transport is gone (consent expired, DTLS closed or failed, never connected).
    Gone(&'static str),
    /// The client publishes a new track.
    TrackOpened(InboundTrack),
    /// A track from the client ended.
    TrackClosed { stack_id: String },
    /// ICE validated this address: route it to us.
    PathValidated(SocketAddr),
    /// This address's consent ran out: stop routing it.
    PathExpired(SocketAddr),
    /// The client opened a data channel.
    ChannelOpened { id: u16, label: String },
    /// A data channel closed.
    ChannelClosed { id: u16 },
    /// A message on a data channel.
    ChannelMessage { id: u16, binary: bool, data: Bytes },
}

/// One participant's transport.
pub struct WebRtcPeer {
    peer: Peer,
}

impl WebRtcPeer {
    pub fn new(setup: PeerSetup, now: Instant) -> Result<Self, PeerError> {
        let peer = Peer::new(
            PeerConfig {
                advertised: setup.advertised,
                identity: setup.certificate.0,
                ufrag: setup.ufrag,
                pwd: setup.pwd,
                session_id: rand::random(),
                rtcp_ssrc: rand::random(),
            },
            now,
        );
        Ok(Self { peer })
    }

    pub fn is_stable(&self) -> bool {
        self.peer.is_stable()
    }

    pub fn has_local_offer(&self) -> bool {
        self.peer.has_local_offer()
    }

    pub fn is_connected(&self) -> bool {
        self.peer.is_connected()
    }

    /// True when a sender lost its section (the client rejected it) and must be offered again.
    pub fn needs_offer(&self) -> bool {
        self.peer.needs_offer()
    }

    pub fn stats(&self) -> PeerStats {
        self.peer.stats()
    }

    /// The agreed m-sections (tests: the SDP stays bounded under churn).
    pub fn section_count(&self) -> usize {
        self.peer.sections().len()
    }

    pub fn apply_offer(&mut self, now: Instant, sdp: String) -> Result<String, PeerError> {
        self.peer.apply_offer(now, &sdp)
    }

    pub fn create_offer(&mut self, now: Instant) -> Result<String, PeerError> {
        self.peer.create_offer(now)
    }

    pub fn apply_answer(&mut self, now: Instant, sdp: String) -> Result<(), PeerError> {
        self.peer.apply_answer(now, &sdp)
    }

    /// Whether the client's data channel section is accepted.
    pub fn set_data_channels(&mut self, on: bool) {
        self.peer.set_data_channels(on);
    }

    /// An ICE restart outside SDP (see [`Peer::restart_ice`]).
    pub fn restart_ice(&mut self, local_ufrag: String, local_pwd: String, remote_ufrag: &str) {
        self.peer.restart_ice(local_ufrag, local_pwd, remote_ufrag);
    }

    /// Our next offer carries an SCTP section for data channels.
    pub fn offer_data_channels(&mut self) {
        self.peer.offer_data_channels();
    }

    /// WHIP/WHEP sessions: see [`Peer::set_bind_senders_to_offers`].
    pub fn set_bind_senders_to_offers(&mut self, on: bool) {
        self.peer.set_bind_senders_to_offers(on);
    }

    pub fn rollback(&mut self, now: Instant) {
        self.peer.rollback(now);
    }

    /// Checks a remote candidate's form; an ICE-lite server never sends to it.
    pub fn add_remote_candidate(&mut self, candidate: Candidate) -> Result<(), PeerError> {
        self.peer.add_remote_candidate(&candidate.candidate)
    }

    pub fn add_sender(
        &mut self,
        kind: MediaKind,
        codec: &CodecParams,
        stream_id: &str,
        track_id: &str,
    ) -> Result<SenderKey, PeerError> {
        Ok(self.peer.add_sender(
            kind,
            codec,
            stream_id,
            track_id,
            rand::random(),
            rand::random(),
        ))
    }

    pub fn remove_sender(&mut self, key: SenderKey) -> Result<(), PeerError> {
        self.peer.remove_sender(key);
        Ok(())
    }

    /// The selected ICE path (where every datagram goes).
    pub fn selected_path(&self) -> Option<SocketAddr> {
        self.peer.selected_path()
    }

    /// The agreed payload type of a sender.
    pub fn sender_payload_type(&self, key: SenderKey) -> Option<u8> {
        self.peer.sender_payload_type(key)
    }

    /// The dependency descriptor's id on a sender's section and whether its two-byte form
    /// may be used (AV1 packets forwarded on it carry their publisher's descriptor).
    pub fn sender_dependency_descriptor(&self, key: SenderKey) -> Option<(u8, bool)> {
        self.peer.sender_dependency_descriptor(key)
    }

    /// An AV1 stream's spatial layers and their heights, smallest first (heights empty if
    /// its sender gave none), from the last structure its dependency descriptors carried.
    pub fn dependency_layers(&self, ssrc: Ssrc) -> Option<(u8, Vec<u16>)> {
        let s = self.peer.dependency_structure(ssrc.0)?;
        Some((
            s.spatial_layers(),
            s.resolutions().iter().map(|(_, h)| *h).collect(),
        ))
    }

    /// True if the client refused a sender (it is not offered again).
    pub fn is_refused(&self, key: SenderKey) -> bool {
        self.peer.is_refused(key)
    }

    /// The sealer of a sender's stream, for its send leg (see `crate::leg`).
    pub fn take_sealer(&mut self, key: SenderKey) -> Option<RtpSealer> {
        self.peer.take_sealer(key)
    }

    /// The agreed transport-wide sequence extension id of our sending sections.
    pub fn send_transport_cc_id(&self) -> Option<u8> {
        self.peer.send_transport_cc_id()
    }

    /// The agreed RTX payload type of a sender (None: no RTX for it).
    pub fn sender_rtx_payload_type(&self, key: SenderKey) -> Option<u8> {
        self.peer.sender_rtx_payload_type(key)
    }

    /// The sealer of a sender's RTX stream, if RTX was agreed for it.
    pub fn take_rtx_sealer(&mut self, key: SenderKey) -> Option<RtpSealer> {
        self.peer.take_rtx_sealer(key)
    }

    pub fn send_rtp(
        &mut self,
        now: Instant,
        key: SenderKey,
        header: ForwardedHeader,
        payload: Bytes,
    ) -> Result<(), PeerError> {
        self.peer.send_rtp(now, key, header, &payload)
    }

    pub fn send_pli(&mut self, _now: Instant, media_ssrc: Ssrc) -> Result<(), PeerError> {
        self.peer.send_pli(media_ssrc)
    }

    pub fn send_nack(
        &mut self,
        _now: Instant,
        media_ssrc: Ssrc,
        seqs: &[u16],
    ) -> Result<(), PeerError> {
        self.peer.send_nack(media_ssrc, seqs)
    }

    pub fn send_receiver_report(
        &mut self,
        _now: Instant,
        blocks: &[ReportBlock],
    ) -> Result<(), PeerError> {
        self.peer.send_receiver_report(blocks)
    }

    pub fn send_sender_report(
        &mut self,
        _now: Instant,
        key: SenderKey,
        info: SenderInfo,
    ) -> Result<(), PeerError> {
        self.peer.send_sender_report(key, info)
    }

    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: BytesMut) {
        self.peer.handle_datagram(now, from, data);
    }

    pub fn poll_datagram(&mut self) -> Option<(SocketAddr, BytesMut)> {
        self.peer.poll_datagram()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.peer.poll_timeout()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.peer.handle_timeout(now);
    }

    pub fn poll_event(&mut self) -> Option<PeerEvent> {
        self.peer.poll_event().map(|e| match e {
            transport::PeerEvent::LocalCandidate { candidate, mid } => {
                PeerEvent::LocalCandidate(Candidate {
                    candidate,
                    sdp_mid: mid,
                    sdp_m_line_index: Some(0),
                    username_fragment: None,
                })
            }
            transport::PeerEvent::Connected => PeerEvent::Connected,
            transport::PeerEvent::Gone(why) => PeerEvent::Gone(why),
            transport::PeerEvent::TrackOpened(t) => PeerEvent::TrackOpened(t),
            transport::PeerEvent::TrackClosed { stack_id } => PeerEvent::TrackClosed { stack_id },
            transport::PeerEvent::PathValidated(a) => PeerEvent::PathValidated(a),
            transport::PeerEvent::PathExpired(a) => PeerEvent::PathExpired(a),
            transport::PeerEvent::ChannelOpened { id, label, .. } => {
                PeerEvent::ChannelOpened { id, label }
            }
            transport::PeerEvent::ChannelClosed { id } => PeerEvent::ChannelClosed { id },
            transport::PeerEvent::ChannelMessage { id, binary, data } => {
                PeerEvent::ChannelMessage { id, binary, data }
            }
        })
    }

    /// What the data channels refused or dropped (malformed SCTP/DCEP, extra channels...).
    pub fn channel_stats(&self) -> transport::ChannelStats {
        self.peer.channel_stats()
    }

    /// Sends a message on the client's data channel `id`.
    pub fn send_data(
        &mut self,
        now: Instant,
        id: u16,
        binary: bool,
        data: &Bytes,
    ) -> Result<(), transport::ChannelSendError> {
        self.peer.send_data(now, id, binary, data)
    }

    pub fn poll_inbound(&mut self) -> Option<Inbound> {
        self.peer.poll_inbound()
    }

    /// True while events wait for [`Self::poll_event`].
    pub fn has_events(&self) -> bool {
        self.peer.has_events()
    }

    /// Sends DTLS `close_notify` and stops the transport.
    pub fn close(&mut self) {
        self.peer.close(Instant::now());
    }
}
