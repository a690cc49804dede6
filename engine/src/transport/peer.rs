//! One participant's WebRTC transport: ICE-lite, DTLS, SRTP, RTP/RTCP and SDP together.
//!
//! Datagrams are demultiplexed as RFC 7983 says (STUN 0-3, DTLS 20-63, RTP/RTCP 128-191).
//! Nothing but STUN is looked at from an address ICE has not validated; RTP for an SSRC
//! that no agreed section announced (by `a=ssrc` or by the mid header extension) is dropped
//! before any SRTP state exists for it; datagrams over [`MAX_DATAGRAM`] are dropped. Every
//! drop is counted in [`PeerStats`].
//!
//! HOT PATH: `handle_datagram` for RTP and `send_rtp`. No logging; one header parse, one
//! decryption or encryption (which allocates its output), payloads as `Bytes` slices.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};

use super::datachannel::{ChannelEvent, ChannelStats, DataChannels, SendError};
use super::dtls::{DtlsEvent, DtlsIdentity, DtlsServer};
use super::ice::{IceLite, StunOutcome};
use super::rtcp::{self, Feedback};
use super::rtp_view::RtpView;
use super::sdp::{
    self, AUDIO_LEVEL_URI, CodecParams, DEPENDENCY_DESCRIPTOR_URI, LocalParams, MID_URI,
    Negotiator, REPAIRED_RID_URI, RID_URI, SdpError, Sender, TRANSPORT_CC_URI,
};
use super::srtp::{RtpSealer, SrtpSession};
use super::twcc::TwccRecorder;
use crate::codec::{self, Vp9Layer};
use crate::dd::DdReader;
use crate::forwarder::ForwardedHeader;
use crate::media::{AudioLevel, Codec, MediaKind, MediaPacket, Ssrc};
use crate::stats::{ReportBlock, SenderInfo};

/// Largest datagram accepted (an Ethernet MTU with room for tunnels; browsers stay ~1,200).
pub const MAX_DATAGRAM: usize = 2048;
/// Inbound streams (SSRCs) kept per participant.
pub const MAX_INBOUND_STREAMS: usize = 64;
/// How long after the peer's nomination our ClientHello goes out, in the DTLS client role.
pub const DTLS_CLIENT_START_DELAY: Duration = Duration::from_millis(10);
/// ...and after a path was selected when no nomination came.
pub const DTLS_CLIENT_UNNOMINATED_DELAY: Duration = Duration::from_millis(500);
/// How long ICE and DTLS may take before the peer is given up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// The [`PeerEvent::Gone`] reason when the client closed on purpose (DTLS `close_notify`).
pub const CLOSED_BY_PEER: &str = "closed by the peer (DTLS close_notify)";

/// Errors for signaling, classified for its error codes.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("invalid SDP: {0}")]
    InvalidSdp(String),
    #[error("negotiation: {0}")]
    Negotiation(String),
    #[error("invalid candidate: {0}")]
    InvalidCandidate(String),
    #[error("transport: {0}")]
    Transport(String),
}

impl From<SdpError> for PeerError {
    fn from(e: SdpError) -> Self {
        match e {
            SdpError::Invalid(s) => PeerError::InvalidSdp(s),
            SdpError::Negotiation(s) => PeerError::Negotiation(s),
        }
    }
}

/// Everything a new transport needs.
#[derive(Clone, Debug)]
pub struct PeerConfig {
    /// Our one host candidate (public IP and media port).
    pub advertised: SocketAddr,
    pub identity: DtlsIdentity,
    pub ufrag: String,
    pub pwd: String,
    /// Random values from the caller (the engine draws none).
    pub session_id: u64,
    pub rtcp_ssrc: u32,
}

/// A track the client started sending.
#[derive(Clone, Debug)]
pub struct InboundTrack {
    pub ssrc: Ssrc,
    pub kind: MediaKind,
    pub codec: CodecParams,
    pub mid: String,
    /// Key for [`PeerEvent::TrackClosed`] (the section's mid).
    pub stack_id: String,
    /// Simulcast: this stream's layer and how many the section has (lowest first).
    pub layer: Option<(u8, u8)>,
}

/// State changes, drained with [`Peer::poll_event`].
#[derive(Clone, Debug)]
pub enum PeerEvent {
    /// Our candidate, to trickle once (it is in every description too).
    LocalCandidate {
        candidate: String,
        mid: Option<String>,
    },
    /// ICE and DTLS are up, the remote certificate matched: media flows.
    Connected,
    /// The transport is over.
    Gone(&'static str),
    TrackOpened(InboundTrack),
    TrackClosed {
        stack_id: String,
    },
    /// ICE validated a new path: the caller may route this address to us.
    PathValidated(SocketAddr),
    /// A path's consent ran out: stop routing it.
    PathExpired(SocketAddr),
    /// The client opened a data channel.
    ChannelOpened {
        id: u16,
        label: String,
        ordered: bool,
    },
    /// A data channel closed.
    ChannelClosed {
        id: u16,
    },
    /// A message on a data channel.
    ChannelMessage {
        id: u16,
        binary: bool,
        data: bytes::Bytes,
    },
}

/// Media and feedback from the client, drained with [`Peer::poll_inbound`].
#[derive(Clone, Debug)]
pub enum Inbound {
    Rtp(MediaPacket),
    Feedback(Feedback),
}

/// Handle of one outgoing stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SenderKey {
    pub index: usize,
    pub ssrc: Ssrc,
}

/// What the transport dropped or refused, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerStats {
    pub oversized: u64,
    pub unvalidated: u64,
    pub not_demuxed: u64,
    pub before_keys: u64,
    pub malformed_rtp: u64,
    /// AV1 dependency descriptors that could not be read (their packets are forwarded
    /// without layer information).
    pub malformed_dd: u64,
    pub unknown_ssrc: u64,
    pub srtp_failed: u64,
    pub srtcp_failed: u64,
    pub padding_only: u64,
    pub rtcp_malformed: u64,
    pub stun_refused: u64,
    pub dtls_rejected: u64,
}

#[derive(Clone, Debug)]
struct InboundStream {
    /// Index of the section in the agreed list.
    section: usize,
    /// The section's transport-wide CC and audio level extension ids (looked up once, not
    /// per packet).
    twcc_ext: Option<u8>,
    level_ext: Option<u8>,
    /// The dependency descriptor's id (AV1 layers), if agreed.
    dd_ext: Option<u8>,
    /// For an RTX stream: the primary SSRC.
    rtx_of: Option<u32>,
    /// Simulcast: the layer (index in the section's rids, lowest first).
    layer: Option<u8>,
    opened: bool,
}

/// One participant's transport.
pub struct Peer {
    advertised: SocketAddr,
    ice: IceLite,
    dtls: DtlsServer,
    srtp: Option<SrtpSession>,
    /// The exported keys, for the sealers of fanned-out streams.
    keys: Option<super::dtls::SrtpKeys>,
    /// Senders whose RTP is sealed outside (by an [`RtpSealer`]): never encrypted here.
    sealed_outside: Vec<usize>,
    negotiator: Negotiator,
    twcc: TwccRecorder,
    rtcp_ssrc: u32,
    streams: HashMap<u32, InboundStream>,
    /// AV1 streams' dependency descriptor readers (by primary SSRC).
    dd_readers: HashMap<u32, DdReader>,
    /// Mid header extension id (one per BUNDLE transport).
    mid_ext: Option<u8>,
    transmits: VecDeque<(SocketAddr, BytesMut)>,
    events: VecDeque<PeerEvent>,
    inbound: VecDeque<Inbound>,
    feedback_scratch: Vec<Feedback>,
    created: Instant,
    connected: bool,
    gone: bool,
    candidate_announced: bool,
    /// Sender SSRCs whose SRTCP reached the SRTP library (capped).
    rtcp_ssrcs: Vec<u32>,
    /// When our ClientHello goes out (client role, after the nomination).
    dtls_client_start: Option<Instant>,
    /// When a path was first selected while the client role waited.
    dtls_client_selected: Option<Instant>,
    /// Set by the first completed offer/answer: DTLS roles never change afterwards.
    dtls_role_settled: bool,
    stats: PeerStats,
    /// Data channels (SCTP over DTLS), once a section for them is agreed.
    /// Created on first use (a few KiB per participant otherwise).
    data: Option<Box<DataChannels>>,
    /// The newest instant a caller gave us (SCTP timers run on it inside DTLS draining).
    latest: Instant,
}

impl Peer {
    pub fn new(config: PeerConfig, now: Instant) -> Self {
        let candidate = format!(
            "candidate:1 1 udp 2130706431 {} {} typ host",
            config.advertised.ip(),
            config.advertised.port()
        );
        let local = LocalParams {
            ufrag: config.ufrag.clone(),
            pwd: config.pwd.clone(),
            fingerprint: config.identity.fingerprint().to_owned(),
            candidate,
        };
        Self {
            advertised: config.advertised,
            ice: IceLite::new(config.ufrag, config.pwd),
            dtls: DtlsServer::new(&config.identity),
            srtp: None,
            keys: None,
            sealed_outside: Vec::new(),
            negotiator: Negotiator::new(local, config.session_id),
            twcc: TwccRecorder::new(config.rtcp_ssrc),
            rtcp_ssrc: config.rtcp_ssrc,
            streams: HashMap::new(),
            dd_readers: HashMap::new(),
            mid_ext: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            inbound: VecDeque::new(),
            feedback_scratch: Vec::new(),
            created: now,
            connected: false,
            gone: false,
            candidate_announced: false,
            dtls_role_settled: false,
            dtls_client_start: None,
            dtls_client_selected: None,
            rtcp_ssrcs: Vec::new(),
            stats: PeerStats::default(),
            data: None,
            latest: now,
        }
    }

    /// What the data channels refused or dropped.
    pub fn channel_stats(&self) -> ChannelStats {
        self.data.as_ref().map(|d| d.stats()).unwrap_or_default()
    }

    /// An ICE restart outside SDP (WHIP/WHEP `PATCH`): our new credentials and the
    /// client's new ufrag. Media keeps flowing on the validated paths meanwhile.
    pub fn restart_ice(&mut self, local_ufrag: String, local_pwd: String, remote_ufrag: &str) {
        self.ice
            .restart(local_ufrag.clone(), local_pwd.clone(), remote_ufrag);
        self.negotiator
            .set_local_credentials(local_ufrag, local_pwd);
    }

    /// Our next offer carries an SCTP section for data channels (once; see
    /// [`sdp::Negotiator::offer_data_channels`]).
    pub fn offer_data_channels(&mut self) {
        self.negotiator.offer_data_channels();
    }

    /// Whether the client may open data channels (on by default; off: their section is
    /// rejected in our answers).
    pub fn set_data_channels(&mut self, on: bool) {
        self.negotiator.set_data_channels(on);
    }

    /// Sends a message on the client's data channel `id`.
    pub fn send_data(
        &mut self,
        now: Instant,
        id: u16,
        binary: bool,
        data: &bytes::Bytes,
    ) -> Result<(), SendError> {
        if self.gone || !self.dtls.is_connected() || !self.data_active() {
            return Err(SendError::NoChannel(id));
        }
        self.latest = self.latest.max(now);
        let Some(channels) = self.data.as_mut() else {
            return Err(SendError::NoChannel(id));
        };
        channels.send(now, id, binary, data)?;
        self.flush_data();
        Ok(())
    }

    /// The data channels run: keys exist and a data section is agreed (or offered).
    fn data_active(&self) -> bool {
        self.srtp.is_some() && self.negotiator.data_channels_live()
    }

    /// Data channel packets out through DTLS, and their events up.
    fn flush_data(&mut self) {
        let Some(channels) = self.data.as_mut() else {
            return;
        };
        while let Some(packet) = channels.poll_transmit() {
            if !self.dtls.send_app_data(self.latest, &packet) {
                break;
            }
        }
        while let Some(event) = channels.poll_event() {
            self.events.push_back(match event {
                ChannelEvent::Opened { id, label, ordered } => {
                    PeerEvent::ChannelOpened { id, label, ordered }
                }
                ChannelEvent::Closed { id } => PeerEvent::ChannelClosed { id },
                ChannelEvent::Message { id, binary, data } => {
                    PeerEvent::ChannelMessage { id, binary, data }
                }
            });
        }
        while let Some(record) = self.dtls.poll_transmit() {
            if let Some(to) = self.ice.selected() {
                self.transmits.push_back((to, record));
            }
        }
    }

    pub fn is_stable(&self) -> bool {
        self.negotiator.is_stable()
    }

    pub fn has_local_offer(&self) -> bool {
        self.negotiator.has_local_offer()
    }

    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// True when senders changed since the last agreed description (an offer is due).
    pub fn needs_offer(&self) -> bool {
        self.negotiator.needs_offer()
    }

    pub fn stats(&self) -> PeerStats {
        let mut s = self.stats;
        let ice = self.ice.stats();
        s.stun_refused = ice.malformed + ice.not_a_request + ice.wrong_username + ice.bad_integrity;
        s.dtls_rejected = self.dtls.rejected();
        s
    }

    /// The agreed sections (tests and operators).
    pub fn sections(&self) -> &[sdp::Section] {
        self.negotiator.sections()
    }

    /// The selected ICE path.
    pub fn selected_path(&self) -> Option<SocketAddr> {
        self.ice.selected()
    }

    // ---- negotiation ---------------------------------------------------------------------

    /// Applies the client's offer; returns our answer.
    pub fn apply_offer(&mut self, _now: Instant, sdp: &str) -> Result<String, PeerError> {
        let (answer, applied) = self.negotiator.apply_offer(sdp)?;
        self.dtls_role_settled = true;
        self.after_negotiation(applied);
        Ok(answer)
    }

    /// Our offer for the senders added or removed since the last exchange.
    pub fn create_offer(&mut self, _now: Instant) -> Result<String, PeerError> {
        let offer = self.negotiator.create_offer()?;
        self.announce_candidate();
        Ok(offer)
    }

    pub fn apply_answer(&mut self, now: Instant, sdp: &str) -> Result<(), PeerError> {
        let applied = self.negotiator.apply_answer(sdp)?;
        // The DTLS roles are settled by the first exchange and never change after it
        // (webrtc-rs answers `passive` to every offer of an ICE-lite peer, even when it
        // became the DTLS client in an earlier exchange).
        if applied.remote.remote_passive && !self.dtls_role_settled {
            self.dtls.use_client_role();
        }
        self.dtls_role_settled = true;
        self.after_negotiation(applied);
        self.start_dtls_client(now);
        Ok(())
    }

    /// In the client role, the ClientHello goes out [`DTLS_CLIENT_START_DELAY`] after the
    /// peer nominated a path (USE-CANDIDATE): a webrtc-rs peer starts its DTLS server only
    /// once its nominating check succeeded, and drops a ClientHello that arrives earlier (the
    /// handshake then waits a whole 1 s retransmission). Without a nomination, the
    /// ClientHello goes out [`DTLS_CLIENT_UNNOMINATED_DELAY`] after the path was selected.
    fn start_dtls_client(&mut self, now: Instant) {
        if !self.dtls.wants_to_start() || self.ice.selected().is_none() {
            return;
        }
        let selected_at = *self.dtls_client_selected.get_or_insert(now);
        if self.ice.nominated() && self.dtls_client_start.is_none() {
            self.dtls_client_start = Some(now + DTLS_CLIENT_START_DELAY);
        }
        let at = self
            .dtls_client_start
            .unwrap_or(selected_at + DTLS_CLIENT_UNNOMINATED_DELAY);
        if now >= at {
            self.dtls.start_client(now);
            self.drain_dtls();
        }
    }

    /// See [`sdp::Negotiator::set_bind_senders_to_offers`] (WHIP/WHEP sessions).
    pub fn set_bind_senders_to_offers(&mut self, on: bool) {
        self.negotiator.set_bind_senders_to_offers(on);
    }

    pub fn rollback(&mut self, _now: Instant) {
        self.negotiator.rollback();
    }

    fn after_negotiation(&mut self, applied: sdp::Applied) {
        // An all-rejected description carries no transport parameters: keep the current ones.
        if !applied.remote.ufrag.is_empty() {
            self.ice.set_remote_ufrag(&applied.remote.ufrag);
        }
        if !applied.remote.fingerprints.is_empty() {
            self.dtls
                .set_remote_fingerprints(applied.remote.fingerprints);
        }
        self.drain_dtls();
        // The data section rejected after it was agreed: its channels close for good.
        if !self.negotiator.data_channels_live()
            && let Some(channels) = self.data.as_mut()
            && channels.in_use()
        {
            channels.close(self.latest);
            self.flush_data();
        }
        for mid in applied.stopped {
            self.events
                .push_back(PeerEvent::TrackClosed { stack_id: mid });
        }
        self.rebuild_streams();
        self.announce_candidate();
    }

    fn announce_candidate(&mut self) {
        if self.candidate_announced {
            return;
        }
        self.candidate_announced = true;
        let mid = self
            .negotiator
            .sections()
            .iter()
            .find(|s| !s.rejected)
            .map(|s| s.mid.clone());
        self.events.push_back(PeerEvent::LocalCandidate {
            candidate: format!(
                "candidate:1 1 udp 2130706431 {} {} typ host",
                self.advertised.ip(),
                self.advertised.port()
            ),
            mid,
        });
    }

    /// Re-derives which SSRCs may carry media from the agreed sections. Streams learned by
    /// the mid extension stay while their section still receives.
    fn rebuild_streams(&mut self) {
        let sections = self.negotiator.sections();
        let mut next: HashMap<u32, InboundStream> = HashMap::new();
        self.mid_ext = None;
        for (i, s) in sections.iter().enumerate() {
            if s.rejected || !s.remote_sends {
                continue;
            }
            if self.mid_ext.is_none() {
                self.mid_ext = s.extension_id(MID_URI);
            }
            let twcc_ext = s.extension_id(TRANSPORT_CC_URI);
            let level_ext = s.extension_id(AUDIO_LEVEL_URI);
            let dd_ext = s.extension_id(DEPENDENCY_DESCRIPTOR_URI);
            // SSRC-group simulcast: a stream's layer is its place in the SIM group (rid
            // simulcast, if the section has it, is told apart by the rid extension).
            let layer_of = |ssrc: u32| {
                s.rids
                    .is_empty()
                    .then(|| s.remote_sim.iter().position(|x| *x == ssrc))
                    .flatten()
                    .map(|l| l as u8)
            };
            for ssrc in &s.remote_ssrcs {
                let opened = self
                    .streams
                    .get(ssrc)
                    .is_some_and(|st| st.section == i && st.opened);
                next.insert(
                    *ssrc,
                    InboundStream {
                        section: i,
                        twcc_ext,
                        level_ext,
                        dd_ext,
                        rtx_of: None,
                        layer: layer_of(*ssrc),
                        opened,
                    },
                );
            }
            for (rtx, primary) in &s.remote_rtx {
                next.insert(
                    *rtx,
                    InboundStream {
                        section: i,
                        twcc_ext,
                        level_ext,
                        dd_ext,
                        rtx_of: Some(*primary),
                        layer: layer_of(*primary),
                        opened: true,
                    },
                );
            }
        }
        // Keep streams learned from the mid extension on sections that still receive.
        for (ssrc, st) in &self.streams {
            if !next.contains_key(ssrc)
                && let Some(s) = sections.get(st.section)
                && !s.rejected
                && s.remote_sends
                && s.remote_ssrcs.is_empty()
            {
                next.insert(
                    *ssrc,
                    InboundStream {
                        twcc_ext: s.extension_id(TRANSPORT_CC_URI),
                        level_ext: s.extension_id(AUDIO_LEVEL_URI),
                        dd_ext: s.extension_id(DEPENDENCY_DESCRIPTOR_URI),
                        ..st.clone()
                    },
                );
            }
        }
        self.streams = next;
        let streams = &self.streams;
        self.dd_readers.retain(|ssrc, _| streams.contains_key(ssrc));
    }

    /// Remote candidates: an ICE-lite server never sends to an address it did not hear a
    /// valid check from, so they are checked for form (RFC 8839 §5.1) and otherwise
    /// ignored: no list grows, nothing is sent.
    pub fn add_remote_candidate(&mut self, candidate: &str) -> Result<(), PeerError> {
        let c = candidate.trim();
        if c.is_empty() {
            return Ok(()); // end of candidates
        }
        check_candidate(c).map_err(|why| PeerError::InvalidCandidate(why.into()))
    }

    // ---- senders -------------------------------------------------------------------------

    /// Adds an outgoing stream (offered with the next [`Self::create_offer`]). `ssrc` and
    /// `rtx_ssrc` (its retransmissions' stream, offered for video) are random from the
    /// caller.
    pub fn add_sender(
        &mut self,
        kind: MediaKind,
        codec: &CodecParams,
        stream_id: &str,
        track_id: &str,
        ssrc: u32,
        rtx_ssrc: u32,
    ) -> SenderKey {
        let index = self.negotiator.add_sender(Sender {
            kind,
            codec: codec.clone(),
            ssrc,
            stream_id: stream_id.to_owned(),
            track_id: track_id.to_owned(),
            pt: None,
            rtx_ssrc: if rtx_ssrc == ssrc { ssrc ^ 1 } else { rtx_ssrc },
            rtx_pt: None,
            removed: false,
        });
        SenderKey {
            index,
            ssrc: Ssrc(ssrc),
        }
    }

    pub fn remove_sender(&mut self, key: SenderKey) {
        self.negotiator.remove_sender(key.index);
    }

    /// The agreed payload type of a sender (None until negotiated).
    /// True if the client refused `key`'s section (port 0, or none of the sender's codec):
    /// it is not offered again.
    pub fn is_refused(&self, key: SenderKey) -> bool {
        self.negotiator.is_refused(key.index)
    }

    /// The agreed payload type of a sender.
    pub fn sender_payload_type(&self, key: SenderKey) -> Option<u8> {
        self.negotiator.sender(key.index).and_then(|s| s.pt)
    }

    /// Hands out the sealer of `key`'s stream, once connected and negotiated, so RTP for it
    /// can be encrypted outside this transport (the publisher's fan-out). From then on
    /// [`Self::send_rtp`] refuses that stream: one SSRC, one RTP context.
    pub fn take_sealer(&mut self, key: SenderKey) -> Option<RtpSealer> {
        let pt = self.sender_payload_type(key)?;
        let keys = self.keys.as_ref()?;
        let sealer = RtpSealer::new(keys, self.dtls.crypto(), key.ssrc.0, pt).ok()?;
        if !self.sealed_outside.contains(&key.index) {
            self.sealed_outside.push(key.index);
        }
        Some(sealer)
    }

    /// The id our sending sections agreed for the transport-wide sequence number extension
    /// (one per BUNDLE group): forwarded packets carry it, and the client's TWCC feedback
    /// about them drives the send-side bandwidth estimate. None: not agreed.
    pub fn send_transport_cc_id(&self) -> Option<u8> {
        self.negotiator
            .sections()
            .iter()
            .filter(|s| !s.rejected && s.local_sends)
            .find_map(|s| s.extension_id(TRANSPORT_CC_URI))
            .filter(|id| *id >= 1)
    }

    /// The id the sender's section agreed for the dependency descriptor, and whether the
    /// two-byte header form may be used (a keyframe's descriptor rarely fits the one-byte
    /// form's 16 octets): AV1 packets forwarded on it carry their publisher's descriptor.
    pub fn sender_dependency_descriptor(&self, key: SenderKey) -> Option<(u8, bool)> {
        let id = self
            .negotiator
            .sections()
            .iter()
            .find(|s| s.sender == Some(key.index) && !s.rejected && s.local_sends)?
            .extension_id(DEPENDENCY_DESCRIPTOR_URI)?;
        Some((id, self.negotiator.allows_two_byte_extensions()))
    }

    /// The last template structure an AV1 stream's dependency descriptors carried.
    pub fn dependency_structure(&self, ssrc: u32) -> Option<&crate::dd::DdStructure> {
        self.dd_readers.get(&ssrc)?.structure()
    }

    /// The agreed RTX payload type of a sender (None: not negotiated, or declined).
    pub fn sender_rtx_payload_type(&self, key: SenderKey) -> Option<u8> {
        self.negotiator.sender(key.index).and_then(|s| s.rtx_pt)
    }

    /// The sealer of `key`'s RTX stream (its SSRC and the agreed RTX payload type), if the
    /// client accepted RTX for the stream's codec; retransmissions go there (RFC 4588).
    pub fn take_rtx_sealer(&mut self, key: SenderKey) -> Option<RtpSealer> {
        let sender = self.negotiator.sender(key.index)?;
        let (rtx_ssrc, rtx_pt) = (sender.rtx_ssrc, sender.rtx_pt?);
        let keys = self.keys.as_ref()?;
        RtpSealer::new(keys, self.dtls.crypto(), rtx_ssrc, rtx_pt).ok()
    }

    /// Sends one forwarded RTP packet on `key`'s stream.
    pub fn send_rtp(
        &mut self,
        _now: Instant,
        key: SenderKey,
        header: ForwardedHeader,
        payload: &[u8],
    ) -> Result<(), PeerError> {
        let Some(pt) = self.negotiator.sender(key.index).and_then(|s| s.pt) else {
            return Err(PeerError::Negotiation("codec not negotiated".into()));
        };
        if self.sealed_outside.contains(&key.index) {
            return Err(PeerError::Transport(
                "this stream is sealed by its sealer".into(),
            ));
        }
        let (Some(srtp), Some(to)) = (self.srtp.as_mut(), self.ice.selected()) else {
            return Err(PeerError::Transport("not connected".into()));
        };
        let rtp_header = rtc_rtp::header::Header {
            version: 2,
            marker: header.marker,
            payload_type: pt,
            sequence_number: header.seq,
            timestamp: header.timestamp,
            ssrc: header.ssrc.0,
            ..Default::default()
        };
        let mut plain = BytesMut::with_capacity(12 + payload.len());
        plain.put_u8(0x80);
        plain.put_u8((u8::from(header.marker) << 7) | (pt & 0x7f));
        plain.put_u16(header.seq);
        plain.put_u32(header.timestamp);
        plain.put_u32(header.ssrc.0);
        plain.extend_from_slice(payload);
        let sealed = srtp
            .encrypt_rtp(&plain, &rtp_header)
            .map_err(|e| PeerError::Transport(e.to_string()))?;
        self.transmits.push_back((to, sealed));
        Ok(())
    }

    // ---- RTCP out ------------------------------------------------------------------------

    pub fn send_pli(&mut self, media_ssrc: Ssrc) -> Result<(), PeerError> {
        let p = rtcp::pli(self.rtcp_ssrc, media_ssrc.0);
        self.send_rtcp(&p)
    }

    pub fn send_nack(&mut self, media_ssrc: Ssrc, seqs: &[u16]) -> Result<(), PeerError> {
        if seqs.is_empty() {
            return Ok(());
        }
        let p = rtcp::nack(self.rtcp_ssrc, media_ssrc.0, seqs);
        self.send_rtcp(&p)
    }

    pub fn send_receiver_report(&mut self, blocks: &[ReportBlock]) -> Result<(), PeerError> {
        if blocks.is_empty() {
            return Ok(());
        }
        let p = rtcp::receiver_reports(self.rtcp_ssrc, blocks);
        self.send_rtcp(&p)
    }

    pub fn send_sender_report(
        &mut self,
        key: SenderKey,
        info: SenderInfo,
    ) -> Result<(), PeerError> {
        let p = rtcp::sender_report(key.ssrc.0, &info);
        self.send_rtcp(&p)
    }

    fn send_rtcp(&mut self, plain: &[u8]) -> Result<(), PeerError> {
        let (Some(srtp), Some(to)) = (self.srtp.as_mut(), self.ice.selected()) else {
            return Err(PeerError::Transport("not connected".into()));
        };
        let sealed = srtp
            .encrypt_rtcp(plain)
            .map_err(|e| PeerError::Transport(e.to_string()))?;
        self.transmits.push_back((to, sealed));
        Ok(())
    }

    // ---- datagrams in --------------------------------------------------------------------

    /// Feeds one datagram received from `from`.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: BytesMut) {
        if self.gone {
            return;
        }
        self.latest = now;
        if data.len() > MAX_DATAGRAM {
            self.stats.oversized += 1;
            return;
        }
        let Some(&first) = data.first() else {
            self.stats.not_demuxed += 1;
            return;
        };
        if first <= 3 {
            self.on_stun(now, from, &data);
            return;
        }
        if !self.ice.is_validated(from) {
            self.stats.unvalidated += 1;
            return;
        }
        match first {
            20..=63 => {
                self.dtls.handle_datagram(now, data);
                self.drain_dtls();
            }
            128..=191 => {
                if self.srtp.is_none() {
                    self.stats.before_keys += 1;
                    return;
                }
                let is_rtcp = data.get(1).is_some_and(|pt| (192..=223).contains(pt));
                if is_rtcp {
                    self.on_srtcp(&data);
                } else {
                    self.on_srtp(now, data);
                }
            }
            _ => self.stats.not_demuxed += 1,
        }
    }

    fn on_stun(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        let before = self.ice.is_validated(from);
        if let StunOutcome::Answered { .. } = self.ice.handle_stun(now, from, data)
            && !before
        {
            self.events.push_back(PeerEvent::PathValidated(from));
        }
        while let Some((to, bytes)) = self.ice.poll_transmit() {
            self.transmits.push_back((to, BytesMut::from(&bytes[..])));
        }
        while let Some(addr) = self.ice.poll_evicted() {
            self.events.push_back(PeerEvent::PathExpired(addr));
        }
        self.start_dtls_client(now);
    }

    fn drain_dtls(&mut self) {
        while let Some(event) = self.dtls.poll_event() {
            match event {
                DtlsEvent::Connected(keys) => match SrtpSession::new(&keys, self.dtls.crypto()) {
                    Ok(session) => {
                        self.srtp = Some(session);
                        self.keys = Some(keys);
                        if !self.connected {
                            self.connected = true;
                            self.events.push_back(PeerEvent::Connected);
                        }
                    }
                    Err(_) => self.mark_gone("SRTP keys could not be set up"),
                },
                DtlsEvent::Closed => self.mark_gone(CLOSED_BY_PEER),
                DtlsEvent::Failed(_) => self.mark_gone("DTLS failed"),
            }
        }
        let mut fed = false;
        while let Some(packet) = self.dtls.poll_app_data() {
            if self.negotiator.data_channels_live() {
                self.data
                    .get_or_insert_with(Box::default)
                    .handle_packet(self.latest, packet);
                fed = true;
            } else {
                self.stats.dtls_rejected += 1;
            }
        }
        if fed {
            self.flush_data();
        }
        while let Some(record) = self.dtls.poll_transmit() {
            if let Some(to) = self.ice.selected() {
                self.transmits.push_back((to, record));
            }
        }
    }

    fn on_srtcp(&mut self, data: &[u8]) {
        // rtc-srtp creates per-SSRC state before it checks the tag: cap the sender SSRCs
        // that may reach it (a receive-only browser's RTCP SSRC is in no SDP, so not a
        // strict allow-list).
        let Some(ssrc) = data
            .get(4..8)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        else {
            self.stats.rtcp_malformed += 1;
            return;
        };
        if !self.rtcp_ssrcs.contains(&ssrc) {
            if self.rtcp_ssrcs.len() >= 2 * MAX_INBOUND_STREAMS {
                self.stats.srtcp_failed += 1;
                return;
            }
            self.rtcp_ssrcs.push(ssrc);
        }
        let Some(srtp) = self.srtp.as_mut() else {
            return;
        };
        let Ok(plain) = srtp.decrypt_rtcp(data) else {
            self.stats.srtcp_failed += 1;
            return;
        };
        let mut out = std::mem::take(&mut self.feedback_scratch);
        let stats = rtcp::parse_compound(&plain, &mut out);
        self.stats.rtcp_malformed += u64::from(stats.malformed);
        for f in out.drain(..) {
            self.inbound.push_back(Inbound::Feedback(f));
        }
        self.feedback_scratch = out;
    }

    fn on_srtp(&mut self, now: Instant, mut data: BytesMut) {
        let Some(header) = RtpView::parse(&data) else {
            self.stats.malformed_rtp += 1;
            return;
        };
        let ssrc = header.ssrc;
        let (stream, learned) = match self.streams.get(&ssrc) {
            Some(s) => (s.clone(), false),
            None => match self.learn_by_mid(&header) {
                Some(s) => (s, true),
                None => {
                    self.stats.unknown_ssrc += 1;
                    return;
                }
            },
        };
        let (offset, seq, pt, marker, timestamp, padding) = (
            header.header_len,
            header.sequence_number,
            header.payload_type,
            header.marker,
            header.timestamp,
            header.padding,
        );
        // Extension values, read before the packet is decrypted in place (the header is
        // authenticated, not encrypted; a packet that fails authentication is dropped below).
        let twcc_seq = stream
            .twcc_ext
            .and_then(|id| header.extension(id))
            .filter(|ext| ext.len() >= 2)
            .map(|ext| u16::from_be_bytes([ext[0], ext[1]]));
        let level_byte = stream
            .level_ext
            .and_then(|id| header.extension(id))
            .and_then(|ext| ext.first().copied());
        // Where the dependency descriptor sits in the packet (the header is not encrypted:
        // the same bytes of the opened packet).
        let dd_range = stream
            .dd_ext
            .and_then(|id| header.extension(id))
            .map(|ext| {
                let start = ext.as_ptr() as usize - data.as_ptr() as usize;
                start..start + ext.len()
            });
        let Some(srtp) = self.srtp.as_mut() else {
            return;
        };
        if srtp.open_rtp(&mut data, offset, ssrc, seq).is_err() {
            self.stats.srtp_failed += 1;
            return;
        }
        let plain = data;
        if learned {
            // Only an authenticated packet teaches a new SSRC.
            self.streams.insert(ssrc, stream.clone());
        }
        let sections = self.negotiator.sections();
        let Some(section) = sections.get(stream.section) else {
            return;
        };
        if let Some(twcc_seq) = twcc_seq {
            self.twcc.on_packet(now, ssrc, twcc_seq);
        }
        let mut end = plain.len();
        if padding {
            let pad = usize::from(plain.last().copied().unwrap_or(0));
            end = end.saturating_sub(pad);
        }
        if offset >= end {
            self.stats.padding_only += 1;
            return;
        }
        let plain = plain.freeze();
        let (ssrc, seq, pt, payload) = match stream.rtx_of {
            Some(primary) => {
                if end - offset <= 2 {
                    self.stats.padding_only += 1;
                    return;
                }
                let osn = u16::from_be_bytes([plain[offset], plain[offset + 1]]);
                let Some(apt) = section
                    .codecs
                    .iter()
                    .find(|c| c.rtx_pt == Some(pt))
                    .map(|c| c.pt)
                else {
                    return;
                };
                (primary, osn, apt, plain.slice(offset + 2..end))
            }
            None => (ssrc, seq, pt, plain.slice(offset..end)),
        };
        let Some(codec) = section.codecs.iter().find(|c| c.pt == pt) else {
            self.stats.malformed_rtp += 1;
            return;
        };
        let audio_level = level_byte.map(AudioLevel::from_byte);
        let keyframe = codec::is_keyframe(codec.params.codec, &payload);
        // AV1: the frame's layers from its dependency descriptor, read against the
        // structure the stream's last keyframe attached; the descriptor goes on with it.
        let (mut layer, mut dependency) = (None, None);
        if codec.params.codec == Codec::Av1
            && let Some(range) = dd_range
        {
            let reader = self.dd_readers.entry(ssrc).or_default();
            match reader.read(&plain[range.clone()]) {
                Ok(frame) => {
                    layer = Some(Vp9Layer {
                        spatial: frame.spatial,
                        temporal: frame.temporal,
                        begin: frame.start,
                        end: frame.end,
                        intra: keyframe,
                        switch_up: frame.switch_up,
                    });
                }
                Err(_) => self.stats.malformed_dd += 1,
            }
            dependency = Some(plain.slice(range));
        }
        if stream.rtx_of.is_none() && !stream.opened {
            let Some(kind) = section.kind.media_kind() else {
                return;
            };
            let track = InboundTrack {
                ssrc: Ssrc(ssrc),
                kind,
                codec: codec.params.clone(),
                mid: section.mid.clone(),
                stack_id: section.mid.clone(),
                layer: stream.layer.map(|l| {
                    let layers = section.rids.len().max(section.remote_sim.len());
                    (l, layers.min(u8::MAX as usize) as u8)
                }),
            };
            if let Some(st) = self.streams.get_mut(&ssrc) {
                st.opened = true;
            }
            self.events.push_back(PeerEvent::TrackOpened(track));
        }
        self.inbound.push_back(Inbound::Rtp(MediaPacket {
            ssrc: Ssrc(ssrc),
            seq,
            timestamp,
            marker,
            payload_type: pt,
            payload,
            arrival: now,
            keyframe,
            audio_level,
            layer,
            dependency,
        }));
    }

    /// An SSRC not in any `a=ssrc` line, identified by the mid header extension (Firefox
    /// and simulcast senders announce no SSRCs).
    fn learn_by_mid(&mut self, header: &RtpView<'_>) -> Option<InboundStream> {
        let id = self.mid_ext?;
        let mid = header.extension(id)?;
        if self.streams.len() >= MAX_INBOUND_STREAMS {
            return None;
        }
        let (index, section) = self
            .negotiator
            .sections()
            .iter()
            .enumerate()
            .find(|(_, s)| s.mid.as_bytes() == mid && !s.rejected && s.remote_sends)?;
        // Only sections that announced no SSRCs learn them this way.
        if !section.remote_ssrcs.is_empty() {
            return None;
        }
        let is_rtx = section
            .codecs
            .iter()
            .any(|c| c.rtx_pt == Some(header.payload_type));
        // Simulcast: the layer from the rid (repaired rid for RTX) header extension; a
        // stream of a simulcast section without one is not learned.
        let layer = if section.rids.is_empty() {
            None
        } else {
            let uri = if is_rtx { REPAIRED_RID_URI } else { RID_URI };
            let rid = header.extension(section.extension_id(uri)?)?;
            let layer = section.rids.iter().position(|r| r.as_bytes() == rid)?;
            Some(layer as u8)
        };
        // An RTX payload type on a section without SSRCs: the repair stream of the section's
        // learned primary (of the same layer).
        let rtx_of = if is_rtx {
            let primary = self
                .streams
                .iter()
                .find(|(_, st)| st.section == index && st.rtx_of.is_none() && st.layer == layer)
                .map(|(ssrc, _)| *ssrc)?;
            Some(primary)
        } else {
            None
        };
        Some(InboundStream {
            section: index,
            twcc_ext: section.extension_id(TRANSPORT_CC_URI),
            level_ext: section.extension_id(AUDIO_LEVEL_URI),
            dd_ext: section.extension_id(DEPENDENCY_DESCRIPTOR_URI),
            rtx_of,
            layer,
            opened: rtx_of.is_some(),
        })
    }

    // ---- out, time, events ---------------------------------------------------------------

    /// Next datagram to send: (destination, bytes).
    pub fn poll_datagram(&mut self) -> Option<(SocketAddr, BytesMut)> {
        self.transmits.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t
                && next.is_none_or(|n| t < n)
            {
                next = Some(t);
            }
        };
        consider(self.ice.poll_timeout());
        consider(self.dtls.poll_timeout());
        if self.dtls.wants_to_start() {
            consider(self.dtls_client_start);
            consider(
                self.dtls_client_selected
                    .map(|t| t + DTLS_CLIENT_UNNOMINATED_DELAY),
            );
        }
        if self.srtp.is_some() {
            consider(self.twcc.poll_timeout());
        }
        if self.data_active() {
            consider(self.data.as_ref().and_then(|d| d.poll_timeout()));
        }
        if !self.connected && !self.gone {
            consider(Some(self.created + CONNECT_TIMEOUT));
        }
        next
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.gone {
            return;
        }
        let mut forgotten = Vec::new();
        self.ice.handle_timeout(now, &mut forgotten);
        for addr in forgotten {
            self.events.push_back(PeerEvent::PathExpired(addr));
        }
        if self.ice.consent_lost() {
            self.mark_gone("ICE consent expired");
            return;
        }
        if !self.connected && now.saturating_duration_since(self.created) >= CONNECT_TIMEOUT {
            self.mark_gone("ICE/DTLS did not connect in time");
            return;
        }
        self.latest = self.latest.max(now);
        self.start_dtls_client(now);
        self.dtls.handle_timeout(now);
        self.drain_dtls();
        if self.data_active() {
            if let Some(channels) = self.data.as_mut() {
                channels.handle_timeout(now);
            }
            self.flush_data();
        }
        if self.srtp.is_some() {
            while let Some(fb) = self.twcc.poll_feedback(now) {
                let _ = self.send_rtcp(&fb);
            }
        }
    }

    pub fn poll_event(&mut self) -> Option<PeerEvent> {
        self.events.pop_front()
    }

    /// True while events wait for [`Self::poll_event`] (callers that handle inbound media
    /// on a fast path hand over to their full loop then, so events keep their order).
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    pub fn poll_inbound(&mut self) -> Option<Inbound> {
        self.inbound.pop_front()
    }

    /// Sends DTLS `close_notify` and stops.
    pub fn close(&mut self, now: Instant) {
        if self.data_active() && self.dtls.is_connected() {
            self.latest = self.latest.max(now);
            if let Some(channels) = self.data.as_mut() {
                channels.close(now);
            }
            self.flush_data();
        }
        self.dtls.close(now);
        while let Some(record) = self.dtls.poll_transmit() {
            if let Some(to) = self.ice.selected() {
                self.transmits.push_back((to, record));
            }
        }
        self.gone = true;
    }

    fn mark_gone(&mut self, why: &'static str) {
        if !self.gone {
            self.gone = true;
            self.events.push_back(PeerEvent::Gone(why));
        }
    }
}

/// Checks an ICE candidate attribute's grammar: foundation, component, transport, priority,
/// address (IP or an mDNS name), port, `typ` and a known type.
fn check_candidate(c: &str) -> Result<(), &'static str> {
    if c.len() > 1024 {
        return Err("candidate longer than 1024 bytes");
    }
    let body = c.strip_prefix("a=").unwrap_or(c);
    let body = body.strip_prefix("candidate:").unwrap_or(body);
    let f: Vec<&str> = body.split_whitespace().collect();
    if f.len() < 8 {
        return Err("a candidate has at least 8 fields (RFC 8839 section 5.1)");
    }
    let foundation_ok = !f[0].is_empty()
        && f[0].len() <= 32
        && f[0]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/');
    if !foundation_ok {
        return Err("bad foundation");
    }
    if !f[1].parse::<u16>().is_ok_and(|c| (1..=256).contains(&c)) {
        return Err("bad component id");
    }
    if !(f[2].eq_ignore_ascii_case("udp") || f[2].eq_ignore_ascii_case("tcp")) {
        return Err("transport must be udp or tcp");
    }
    if f[3].parse::<u32>().is_err() {
        return Err("bad priority");
    }
    let address_ok = f[4].parse::<std::net::IpAddr>().is_ok()
        || (f[4].ends_with(".local")
            && f[4].len() <= 255
            && f[4]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'));
    if !address_ok {
        return Err("bad connection address");
    }
    if f[5].parse::<u16>().is_err() {
        return Err("bad port");
    }
    if f[6] != "typ" || !matches!(f[7], "host" | "srflx" | "prflx" | "relay") {
        return Err("bad candidate type");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SSRC-group simulcast: each primary of the `SIM` group is its layer (group order),
    /// each RTX stream the layer of its primary; a stream outside the group has none.
    #[test]
    fn sim_group_streams_get_their_layers() {
        let identity = DtlsIdentity::generate().unwrap();
        let config = PeerConfig {
            advertised: "127.0.0.1:7882".parse().unwrap(),
            identity,
            ufrag: "srvufrag".into(),
            pwd: "serverpassword0123456789".into(),
            session_id: 7,
            rtcp_ssrc: 1,
        };
        let mut peer = Peer::new(config, Instant::now());
        let mut offer = String::from(
            "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n\
a=fingerprint:sha-256 11:22:33\r\na=ice-ufrag:cliu\r\na=ice-pwd:clientpassword0123456789\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=setup:actpass\r\n\
a=rtcp-mux\r\na=sendonly\r\na=rtpmap:96 VP8/90000\r\na=rtpmap:97 rtx/90000\r\n\
a=fmtp:97 apt=96\r\n",
        );
        for ssrc in [10u32, 20, 30] {
            offer.push_str(&format!(
                "a=ssrc:{ssrc} cname:c\r\na=ssrc:{} cname:c\r\na=ssrc-group:FID {ssrc} {}\r\n",
                ssrc + 1,
                ssrc + 1
            ));
        }
        offer.push_str("a=ssrc-group:SIM 10 20 30\r\n");
        peer.apply_offer(Instant::now(), &offer).unwrap();
        let layer = |ssrc: u32| peer.streams.get(&ssrc).map(|s| (s.layer, s.rtx_of));
        assert_eq!(layer(10), Some((Some(0), None)));
        assert_eq!(layer(20), Some((Some(1), None)));
        assert_eq!(layer(30), Some((Some(2), None)));
        assert_eq!(layer(11), Some((Some(0), Some(10))));
        assert_eq!(layer(21), Some((Some(1), Some(20))));
        assert_eq!(layer(31), Some((Some(2), Some(30))));
    }

    #[test]
    fn candidates_are_checked_for_form() {
        for ok in [
            "candidate:3903006740 1 udp 2130706431 127.0.0.2 40000 typ host",
            "candidate:1 2 UDP 2130706431 ::1 9 typ host generation 0",
            "candidate:842163049 1 udp 1677729535 203.0.113.7 61234 typ srflx raddr 0.0.0.0 rport 0",
            "candidate:1 1 udp 1 2f8c1a3e-4b4d-4c2b-9a59-7a4e2b1c3d4e.local 5000 typ host",
            "a=candidate:1 1 tcp 1 10.0.0.1 9 typ host tcptype active",
        ] {
            assert_eq!(check_candidate(ok), Ok(()), "{ok}");
        }
        for bad in [
            "candidate:0 1 udp not-a-priority 1.2.3.4 x typ host",
            "candidate:1 1 udp 1 1.2.3.4 70000 typ host",
            "candidate:1 0 udp 1 1.2.3.4 9 typ host",
            "candidate:1 1 sctp 1 1.2.3.4 9 typ host",
            "candidate:1 1 udp 1 evil$host 9 typ host",
            "candidate:1 1 udp 1 1.2.3.4 9 type host",
            "candidate:1 1 udp 1 1.2.3.4 9 typ bogus",
            "candidate:1 1 udp",
        ] {
            assert!(check_candidate(bad).is_err(), "{bad}");
        }
    }
}
