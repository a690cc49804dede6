//! SDP offer/answer (RFC 8829 JSEP, RFC 8843 BUNDLE) for the server's transport.
//!
//! `rtc-sdp` parses and marshals the text; the WebRTC rules are here. The server is always
//! ICE-lite, always the DTLS server, and bundles everything on one transport with rtcp-mux.
//!
//! The [`Negotiator`] keeps the agreed m-sections in order. Two kinds:
//! * **remote** sections, created by the client's offers: the client publishes on them; we
//!   answer `recvonly` (or `inactive`) with the codecs we can forward, in the client's payload
//!   types;
//! * **local** sections, created by our offers: each carries one of our senders (a
//!   subscription) `sendonly`. A removed sender's section is rejected (port 0) in the next
//!   offer; once that is agreed, the slot is free and a new sender takes it with a fresh mid
//!   (m-line recycling), so a subscriber's SDP stays bounded under churn. The one exception
//!   is the BUNDLE tag (the group's first section): rejecting it tears the client's
//!   transport down, so it goes `inactive` instead and stays.
//!
//! Limits (each refused with a clear error, nothing applied): SDP size, sections per
//! description, sections the client may add per offer, payload types per section.

use std::collections::{HashMap, HashSet};
use std::io::Cursor;

use rtc_sdp::SessionDescription;
use rtc_sdp::description::common::{Address, Attribute, ConnectionInformation};
use rtc_sdp::description::media::{MediaDescription, MediaName, RangedPort};
use rtc_sdp::description::session::{Origin, TimeDescription, Timing};

use crate::media::{Codec, MediaKind};

/// Largest SDP accepted (a browser's offer with dozens of sections is ~20 KiB).
pub const MAX_SDP_BYTES: usize = 128 * 1024;
/// Most sections in one description (ours included: a subscriber's grow with the meeting).
pub const MAX_SECTIONS: usize = 512;
/// Most sections a client may publish on (tracks per participant).
pub const MAX_PUBLISHED: usize = 16;
/// Most codecs kept from one section.
const MAX_CODECS: usize = 32;

pub const AUDIO_LEVEL_URI: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";
pub const MID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:mid";
pub const TRANSPORT_CC_URI: &str =
    "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01";
pub const RID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id";
pub const REPAIRED_RID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id";
/// The AV1 RTP specification's dependency descriptor (appendix A): read from AV1
/// publishers (their layers) and forwarded to subscribers with their AV1 packets.
pub const DEPENDENCY_DESCRIPTOR_URI: &str =
    "https://aomediacodec.github.io/av1-rtp-spec/#dependency-descriptor-rtp-header-extension";

/// Header extensions we accept from publishers.
const ACCEPTED_EXTENSIONS: [&str; 6] = [
    AUDIO_LEVEL_URI,
    MID_URI,
    TRANSPORT_CC_URI,
    RID_URI,
    REPAIRED_RID_URI,
    DEPENDENCY_DESCRIPTOR_URI,
];

/// Negotiation errors, mapped to signaling codes by the caller.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SdpError {
    /// The text is not SDP, or breaks a WebRTC rule (missing mid, fingerprint, ICE...).
    #[error("invalid SDP: {0}")]
    Invalid(String),
    /// Valid SDP that cannot be applied now or here (glare, wrong state, mid mismatch,
    /// limits).
    #[error("negotiation: {0}")]
    Negotiation(String),
}

fn invalid(s: impl Into<String>) -> SdpError {
    SdpError::Invalid(s.into())
}

fn negotiation(s: impl Into<String>) -> SdpError {
    SdpError::Negotiation(s.into())
}

/// Codec parameters of a track, kept to send it on to subscribers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodecParams {
    pub codec: Codec,
    /// `kind/name` as in SDP, e.g. `video/VP8`.
    pub mime_type: String,
    pub clock_rate: u32,
    pub channels: u16,
    pub fmtp: String,
}

/// A codec as agreed on one section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NegotiatedCodec {
    pub pt: u8,
    pub params: CodecParams,
    pub rtx_pt: Option<u8>,
    pub feedback: Vec<String>,
}

/// One agreed m-section.
#[derive(Clone, Debug)]
pub struct Section {
    pub mid: String,
    pub kind: SectionKind,
    pub rejected: bool,
    /// Created by our offer for one of our senders.
    pub local: bool,
    /// Our sender on it (local sections).
    pub sender: Option<usize>,
    /// The client sends media on it.
    pub remote_sends: bool,
    /// We send media on it (agreed).
    pub local_sends: bool,
    pub codecs: Vec<NegotiatedCodec>,
    /// Header extension ids agreed: (id, uri).
    pub extmap: Vec<(u8, String)>,
    /// SSRCs the client announced (primary streams).
    pub remote_ssrcs: Vec<u32>,
    /// (rtx, primary) pairs from `ssrc-group:FID`.
    pub remote_rtx: Vec<(u32, u32)>,
    /// SSRC-group simulcast (`a=ssrc-group:SIM`, the form before rids): the layers'
    /// primary SSRCs, lowest first (at most [`MAX_LAYERS`]); empty without it. Used only
    /// when the section has no rid simulcast.
    pub remote_sim: Vec<u32>,
    /// Simulcast (RFC 8853): the rids the client sends, lowest layer first as its
    /// `a=simulcast:send` lists them (at most [`MAX_LAYERS`]); empty without simulcast.
    pub rids: Vec<String>,
    /// `a=simulcast` value, raw.
    pub simulcast: Option<String>,
}

/// Most simulcast layers taken from one section.
pub const MAX_LAYERS: usize = 3;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SectionKind {
    Audio,
    Video,
    /// `m=application ... UDP/DTLS/SCTP webrtc-datachannel`: the data channels' SCTP
    /// association (one per connection; any other is rejected).
    Application,
    /// text, message, ...: always rejected.
    Other(String),
}

impl SectionKind {
    fn parse(media: &str) -> Self {
        match media {
            "audio" => Self::Audio,
            "video" => Self::Video,
            "application" => Self::Application,
            other => Self::Other(other.chars().take(32).collect()),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            Self::Audio => "audio",
            Self::Video => "video",
            Self::Application => "application",
            Self::Other(s) => s,
        }
    }

    pub fn media_kind(&self) -> Option<MediaKind> {
        match self {
            Self::Audio => Some(MediaKind::Audio),
            Self::Video => Some(MediaKind::Video),
            Self::Application | Self::Other(_) => None,
        }
    }
}

impl Section {
    /// The extension id agreed for `uri`.
    pub fn extension_id(&self, uri: &str) -> Option<u8> {
        self.extmap
            .iter()
            .find(|(_, u)| u == uri)
            .map(|(id, _)| *id)
    }
}

/// One of our outgoing streams.
#[derive(Clone, Debug)]
pub struct Sender {
    pub kind: MediaKind,
    pub codec: CodecParams,
    pub ssrc: u32,
    pub stream_id: String,
    pub track_id: String,
    /// Payload type agreed for `codec`, once negotiated.
    pub pt: Option<u8>,
    /// The SSRC of this stream's retransmissions (RFC 4588 RTX, `ssrc-group:FID`); offered
    /// for video.
    pub rtx_ssrc: u32,
    /// The RTX payload type agreed for `pt`: None until negotiated, or if the answer
    /// declined RTX (retransmissions then go on the primary SSRC).
    pub rtx_pt: Option<u8>,
    /// Removed by the application: its section is rejected in the next offer.
    pub removed: bool,
}

/// Our side's transport parameters, written into every description.
#[derive(Clone, Debug)]
pub struct LocalParams {
    pub ufrag: String,
    pub pwd: String,
    pub fingerprint: String,
    /// The one host candidate line (without `a=`), e.g.
    /// `candidate:1 1 udp 2130706431 203.0.113.5 7882 typ host`.
    pub candidate: String,
}

/// Transport parameters the client's description carried.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RemoteParams {
    pub ufrag: String,
    pub pwd: String,
    /// `sha-256` fingerprints.
    pub fingerprints: Vec<String>,
    /// `a=setup:passive`: the remote wants to be the DTLS server.
    pub remote_passive: bool,
}

/// What an applied description changed, for the transport.
#[derive(Clone, Debug, Default)]
pub struct Applied {
    pub remote: RemoteParams,
    /// Mids of remote sections the client stopped sending on.
    pub stopped: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Signaling {
    Stable,
    HaveLocalOffer,
}

/// Offer/answer state of one participant.
pub struct Negotiator {
    local: LocalParams,
    sections: Vec<Section>,
    /// Our outstanding offer's sections.
    pending: Option<Vec<Section>>,
    signaling: Signaling,
    senders: HashMap<usize, Sender>,
    /// Senders whose section the client's answer rejected (port 0, or no codec in
    /// common): not offered again, since the same offer would be refused the same way, in
    /// an endless exchange of offers and answers.
    refused: HashSet<usize>,
    next_sender: usize,
    next_mid: u32,
    /// Payload types in use on this transport: (codec key, pt). Under BUNDLE one payload type
    /// means one codec on every section.
    pts: Vec<(String, u8)>,
    session_id: u64,
    version: u64,
    /// [`Self::needs_offer`], kept up to date by everything that changes senders or the
    /// agreed sections (it is asked after every message a participant handles, and computing
    /// it walks senders x sections).
    offer_due: bool,
    /// Client-offers-only sessions (WHIP, WHEP): our senders ride in the client's
    /// receiving sections instead of offers of our own.
    bind_senders: bool,
    /// Data channel sections are accepted.
    data_channels: bool,
    /// Our next offer adds a data channel section (asked for, not offered yet).
    data_section_due: bool,
    /// The client's last description allowed two-byte header extensions
    /// (`a=extmap-allow-mixed`, RFC 8285 §6): our offers always do, our answers when its
    /// offer did.
    allow_mixed: bool,
    /// Every header extension id the client's descriptions used, with its URI, accepted by
    /// us or not (at most one entry per id: 255): Chromium reserves the ids of its own
    /// sections across the BUNDLE group and refuses an offer that gives one of them another
    /// URI ("RTP extension ID reassignment not supported"). New sending sections avoid them.
    remote_extmap: Vec<(u8, String)>,
}

impl Negotiator {
    /// `session_id` is random from the caller (the engine draws no randomness).
    pub fn new(local: LocalParams, session_id: u64) -> Self {
        Self {
            local,
            sections: Vec::new(),
            pending: None,
            signaling: Signaling::Stable,
            senders: HashMap::new(),
            refused: HashSet::new(),
            allow_mixed: false,
            remote_extmap: Vec::new(),
            next_sender: 0,
            next_mid: 0,
            pts: Vec::new(),
            session_id: session_id & 0x7fff_ffff_ffff_ffff,
            version: 1,
            offer_due: false,
            bind_senders: false,
            data_channels: true,
            data_section_due: false,
        }
    }

    /// For sessions that never receive our offers (WHEP, RFC 9725-style HTTP exchanges):
    /// each new section of a client's offer that receives media takes one of our senders
    /// not yet placed, of its kind and with a codec the client offered, and is answered
    /// `sendonly` with that sender's SSRCs. Senders that find no section wait for the next
    /// client offer.
    pub fn set_bind_senders_to_offers(&mut self, on: bool) {
        self.bind_senders = on;
    }

    /// New local ICE credentials (an ICE restart): every later description carries them.
    pub fn set_local_credentials(&mut self, ufrag: String, pwd: String) {
        self.local.ufrag = ufrag;
        self.local.pwd = pwd;
    }

    /// Whether a client's data channel section is accepted (on by default).
    pub fn set_data_channels(&mut self, on: bool) {
        self.data_channels = on;
    }

    /// Our next offer adds an SCTP section for data channels, unless one exists: a client
    /// that will open data channels gets it from us, so its own offer never has to add it
    /// (an offer that adds it and is rolled back in glare leaves Chromium unable to offer it
    /// again). Offered once: a client that rejects it is not asked again.
    pub fn offer_data_channels(&mut self) {
        self.data_section_due = self.data_channels
            && !self
                .sections
                .iter()
                .any(|s| s.kind == SectionKind::Application);
        self.offer_due = self.compute_needs_offer();
    }

    /// A data channel section was agreed (or refused): no more to offer.
    fn settle_data_section(&mut self) {
        if self
            .sections
            .iter()
            .any(|s| s.kind == SectionKind::Application)
        {
            self.data_section_due = false;
        }
    }

    /// True when an agreed section carries data channels.
    pub fn has_data_channels(&self) -> bool {
        self.sections
            .iter()
            .any(|s| s.kind == SectionKind::Application && !s.rejected)
    }

    /// True when an agreed section, or our outstanding offer, carries data channels (a
    /// client starts SCTP as soon as it has applied our offer and its answer).
    pub fn data_channels_live(&self) -> bool {
        self.has_data_channels()
            || self
                .pending
                .iter()
                .flatten()
                .any(|s| s.kind == SectionKind::Application && !s.rejected)
    }

    /// Adds the extension ids `desc` used (bounded: at most one entry per id).
    fn remember_remote_extmap(&mut self, desc: &SessionDescription) {
        for md in &desc.media_descriptions {
            for a in md.attributes.iter().filter(|a| a.key == "extmap") {
                let Some((id, uri)) = a.value.as_deref().and_then(parse_extmap) else {
                    continue;
                };
                if !self.remote_extmap.iter().any(|(i, _)| *i == id) {
                    self.remote_extmap.push((id, uri.to_owned()));
                }
            }
        }
    }

    /// Two-byte header extensions may be sent (both sides allow them).
    pub fn allows_two_byte_extensions(&self) -> bool {
        self.allow_mixed
    }

    pub fn is_stable(&self) -> bool {
        self.signaling == Signaling::Stable
    }

    pub fn has_local_offer(&self) -> bool {
        self.signaling == Signaling::HaveLocalOffer
    }

    /// The agreed sections, in order.
    pub fn sections(&self) -> &[Section] {
        &self.sections
    }

    pub fn sender(&self, key: usize) -> Option<&Sender> {
        self.senders.get(&key)
    }

    /// Adds a sender; it is offered with the next [`Self::create_offer`].
    pub fn add_sender(&mut self, sender: Sender) -> usize {
        let key = self.next_sender;
        self.next_sender += 1;
        self.senders.insert(key, sender);
        self.offer_due = self.compute_needs_offer();
        key
    }

    /// Removes a sender; its section is rejected with the next offer (client-offers-only
    /// sessions, which get no offer: it goes quiet at once and is forgotten).
    pub fn remove_sender(&mut self, key: usize) {
        if self.bind_senders {
            for s in self.sections.iter_mut().filter(|s| s.sender == Some(key)) {
                s.sender = None;
                s.local_sends = false;
            }
            self.senders.remove(&key);
            self.offer_due = self.compute_needs_offer();
            return;
        }
        if let Some(s) = self.senders.get_mut(&key) {
            s.removed = true;
            s.pt = None;
            s.rtx_pt = None;
        }
        // Never offered: forget it at once.
        let offered = self
            .sections
            .iter()
            .chain(self.pending.iter().flatten())
            .any(|s| s.sender == Some(key));
        if !offered {
            self.senders.remove(&key);
        }
        self.offer_due = self.compute_needs_offer();
    }

    /// True when senders changed since the last agreed description.
    pub fn needs_offer(&self) -> bool {
        // Every test run checks the kept value against the walk it replaces.
        debug_assert_eq!(self.offer_due, self.compute_needs_offer());
        self.offer_due
    }

    fn compute_needs_offer(&self) -> bool {
        self.data_section_due
            || self.senders.iter().any(|(key, s)| {
                let placed = self
                    .sections
                    .iter()
                    .any(|sec| sec.sender == Some(*key) && !sec.rejected);
                s.removed == placed && (placed || !self.refused.contains(key))
            })
    }

    /// True if the client refused sender `key`'s section (it is not offered again).
    pub fn is_refused(&self, key: usize) -> bool {
        self.refused.contains(&key)
    }

    /// Applies the client's offer and returns our answer.
    pub fn apply_offer(&mut self, sdp: &str) -> Result<(String, Applied), SdpError> {
        if self.signaling != Signaling::Stable {
            return Err(negotiation(
                "an offer arrived while our own offer is outstanding",
            ));
        }
        let desc = parse(sdp)?;
        let remote = remote_params(&desc)?;
        if remote.remote_passive {
            return Err(negotiation(
                "an offer must say setup:actpass or setup:active (the server is not the DTLS client of an offerer)",
            ));
        }
        let mut next = Vec::with_capacity(desc.media_descriptions.len());
        let mut new_published = 0;
        let mut stopped = Vec::new();
        for (i, md) in desc.media_descriptions.iter().enumerate() {
            let offered = parse_section(md)?;
            let existing = self.sections.get(i);
            let section = match existing {
                Some(old) if old.mid == offered.mid => {
                    self.answer_existing(old, &offered, &mut stopped)
                }
                Some(old) if !old.rejected => {
                    return Err(negotiation(format!(
                        "section {i} has mid {:?}, expected {:?}",
                        offered.mid, old.mid
                    )));
                }
                _ => {
                    // A new section from the client (or one recycling a rejected slot).
                    if next
                        .iter()
                        .chain(self.sections.iter())
                        .any(|s: &Section| s.mid == offered.mid && !s.rejected)
                    {
                        return Err(invalid(format!("duplicate mid {:?}", offered.mid)));
                    }
                    let mut s = self.answer_new_remote(&offered);
                    if offered.kind == SectionKind::Application {
                        let taken = next
                            .iter()
                            .chain(self.sections.iter())
                            .any(|x| x.kind == SectionKind::Application && !x.rejected);
                        s.rejected =
                            offered.port0 || !offered.datachannel || taken || !self.data_channels;
                    }
                    if self.bind_senders && !s.rejected && offered.direction.remote_receives() {
                        self.bind_sender(&mut s, &offered, &next);
                    }
                    if s.remote_sends {
                        new_published += 1;
                    }
                    s
                }
            };
            next.push(section);
        }
        if next.len() < self.sections.len() {
            return Err(negotiation(
                "the offer has fewer sections than were agreed (sections cannot be removed)",
            ));
        }
        let published = next.iter().filter(|s| !s.local && s.remote_sends).count();
        if new_published > 0 && published > MAX_PUBLISHED {
            return Err(negotiation(format!(
                "at most {MAX_PUBLISHED} published tracks per participant"
            )));
        }
        for s in &next {
            self.learn_pts(&s.codecs);
        }
        self.sections = next;
        self.allow_mixed = allows_mixed(&desc);
        self.remember_remote_extmap(&desc);
        self.settle_data_section();
        self.sync_sender_pts();
        self.offer_due = self.compute_needs_offer();
        self.version += 1;
        let answer = self.write(&self.sections, "passive");
        Ok((answer, Applied { remote, stopped }))
    }

    fn answer_existing(
        &self,
        old: &Section,
        offered: &OfferedSection,
        stopped: &mut Vec<String>,
    ) -> Section {
        let mut s = old.clone();
        if s.kind == SectionKind::Application && offered.kind == SectionKind::Application {
            // The data channel section: kept while offered (it carries no media).
            s.rejected = s.rejected || offered.port0 || !offered.datachannel;
            return s;
        }
        if offered.port0 || s.kind != offered.kind || s.kind.media_kind().is_none() {
            if s.remote_sends {
                stopped.push(s.mid.clone());
            }
            s.rejected = true;
            s.remote_sends = false;
            s.local_sends = false;
            return s;
        }
        s.rejected = false;
        if s.local {
            // One of ours: we keep sending if our sender lives and the client receives.
            let active = s
                .sender
                .and_then(|k| self.senders.get(&k))
                .is_some_and(|snd| !snd.removed);
            s.local_sends = active && offered.direction.remote_receives();
            s.remote_sends = false;
            let want = s
                .sender
                .and_then(|k| self.senders.get(&k))
                .map(|x| x.codec.clone());
            s.codecs = supported_codecs(offered, want.as_ref());
            s.extmap = local_extmap_from(offered);
        } else {
            let sends = offered.direction.remote_sends();
            if s.remote_sends && !sends {
                stopped.push(s.mid.clone());
            }
            s.remote_sends = sends;
            s.local_sends = false;
            s.codecs = supported_codecs(offered, None);
            s.extmap = accepted_extmap(offered, &s.codecs);
            s.remote_ssrcs = offered.ssrcs.clone();
            s.remote_rtx = offered.fid.clone();
            s.remote_sim = offered.sim.clone();
            s.rids = simulcast_rids(offered);
            s.simulcast = offered.simulcast.clone();
        }
        if s.codecs.is_empty() {
            if s.remote_sends {
                stopped.push(s.mid.clone());
            }
            s.rejected = true;
            s.remote_sends = false;
            s.local_sends = false;
        }
        s
    }

    /// Places one of our unplaced senders in a new section the client receives on (see
    /// [`Self::set_bind_senders_to_offers`]); leaves the section alone if none fits.
    fn bind_sender(&self, s: &mut Section, offered: &OfferedSection, next: &[Section]) {
        let placed = |key: usize| {
            next.iter()
                .chain(self.sections.iter())
                .any(|sec| sec.sender == Some(key) && !sec.rejected)
        };
        let mut free: Vec<(&usize, &Sender)> = self
            .senders
            .iter()
            .filter(|(k, snd)| {
                !snd.removed && Some(snd.kind) == s.kind.media_kind() && !placed(**k)
            })
            .collect();
        free.sort_unstable_by_key(|(k, _)| **k);
        for (key, snd) in free {
            let codecs = supported_codecs(offered, Some(&snd.codec));
            let Some(codec) = codecs
                .iter()
                .find(|c| same_codec(&c.params, &snd.codec))
                .or_else(|| {
                    codecs.iter().find(|c| {
                        c.params
                            .mime_type
                            .eq_ignore_ascii_case(&snd.codec.mime_type)
                    })
                })
            else {
                continue;
            };
            s.local = true;
            s.sender = Some(*key);
            s.local_sends = true;
            s.remote_sends = false;
            // Only what this sender sends (and its retransmissions).
            s.codecs = vec![codec.clone()];
            s.extmap = local_extmap_from(offered);
            s.remote_ssrcs = Vec::new();
            s.remote_rtx = Vec::new();
            s.remote_sim = Vec::new();
            s.rids = Vec::new();
            s.simulcast = None;
            return;
        }
    }

    fn answer_new_remote(&self, offered: &OfferedSection) -> Section {
        let codecs = supported_codecs(offered, None);
        let rejected = offered.port0 || offered.kind.media_kind().is_none() || codecs.is_empty();
        let extmap = if rejected {
            Vec::new()
        } else {
            accepted_extmap(offered, &codecs)
        };
        Section {
            mid: offered.mid.clone(),
            kind: offered.kind.clone(),
            rejected,
            local: false,
            sender: None,
            remote_sends: !rejected && offered.direction.remote_sends(),
            local_sends: false,
            codecs: if rejected { Vec::new() } else { codecs },
            extmap,
            remote_ssrcs: offered.ssrcs.clone(),
            remote_rtx: offered.fid.clone(),
            remote_sim: offered.sim.clone(),
            rids: simulcast_rids(offered),
            simulcast: offered.simulcast.clone(),
        }
    }

    /// Our offer: every agreed section, removed senders rejected, new senders placed in free
    /// (rejected, agreed) slots of their kind or appended.
    pub fn create_offer(&mut self) -> Result<String, SdpError> {
        if self.signaling != Signaling::Stable {
            return Err(negotiation("an offer is already outstanding"));
        }
        let mut next = self.sections.clone();
        // The agreed BUNDLE tag (the group's first mid). Rejecting it makes the client tear
        // the bundle transport down (Chromium sends DTLS close_notify and the whole session
        // is lost), so a removed sender there leaves its section `inactive`, still in the
        // group, instead. Such a section is never recycled; there is at most one per
        // connection, since it stays the tag.
        let tag = self.sections.iter().position(|s| !s.rejected);
        // Removed senders' sections are rejected; live ones offered as sending again.
        for (i, s) in next.iter_mut().enumerate() {
            if let Some(key) = s.sender {
                if self.senders.get(&key).is_none_or(|snd| snd.removed) {
                    if Some(i) == tag && s.kind != SectionKind::Application {
                        s.sender = None;
                        s.local_sends = false;
                        continue;
                    }
                    s.rejected = true;
                    s.local_sends = false;
                    s.codecs.clear();
                } else if !s.rejected {
                    // A refused sender keeps its section, inactive on our side.
                    s.local_sends = !self.refused.contains(&key);
                }
            }
        }
        let mut keys: Vec<usize> = self
            .senders
            .iter()
            .filter(|(k, snd)| {
                !snd.removed
                    && !self.refused.contains(k)
                    && !next.iter().any(|s| s.sender == Some(**k) && !s.rejected)
            })
            .map(|(k, _)| *k)
            .collect();
        keys.sort_unstable();
        for key in keys {
            let Some(sender) = self.senders.get(&key).cloned() else {
                continue;
            };
            let mid = self.fresh_mid(&next);
            let codecs = self.offer_codecs(&sender);
            let extmap = bundle_extmap(&next, &self.remote_extmap, sender.kind)
                .into_iter()
                .filter(|(_, uri)| {
                    uri != DEPENDENCY_DESCRIPTOR_URI || sender.codec.codec == Codec::Av1
                })
                .collect();
            let section = Section {
                mid,
                kind: match sender.kind {
                    MediaKind::Audio => SectionKind::Audio,
                    MediaKind::Video => SectionKind::Video,
                },
                rejected: false,
                local: true,
                sender: Some(key),
                remote_sends: false,
                local_sends: true,
                codecs,
                extmap,
                remote_ssrcs: Vec::new(),
                remote_rtx: Vec::new(),
                remote_sim: Vec::new(),
                rids: Vec::new(),
                simulcast: None,
            };
            // Recycle a slot rejected in an agreed description (never one rejected just now:
            // the client must see the rejection first), never one before the BUNDLE tag
            // (its mid would come first in the group and become the tag).
            let free = next.iter().enumerate().position(|(i, s)| {
                tag.is_none_or(|t| i > t)
                    && s.rejected
                    && self
                        .sections
                        .iter()
                        .any(|agreed| agreed.mid == s.mid && agreed.rejected)
            });
            match free {
                Some(i) => next[i] = section,
                None => next.push(section),
            }
        }
        if self.data_section_due && !next.iter().any(|s| s.kind == SectionKind::Application) {
            let mid = self.fresh_mid(&next);
            next.push(Section {
                mid,
                kind: SectionKind::Application,
                rejected: false,
                local: true,
                sender: None,
                remote_sends: false,
                local_sends: false,
                codecs: Vec::new(),
                extmap: Vec::new(),
                remote_ssrcs: Vec::new(),
                remote_rtx: Vec::new(),
                remote_sim: Vec::new(),
                rids: Vec::new(),
                simulcast: None,
            });
        }
        if next.len() > MAX_SECTIONS {
            return Err(negotiation(format!(
                "more than {MAX_SECTIONS} sections on one connection"
            )));
        }
        self.version += 1;
        let offer = self.write(&next, "actpass");
        self.pending = Some(next);
        self.signaling = Signaling::HaveLocalOffer;
        Ok(offer)
    }

    fn fresh_mid(&mut self, next: &[Section]) -> String {
        loop {
            let mid = format!("h{}", self.next_mid);
            self.next_mid += 1;
            if !next.iter().any(|s| s.mid == mid) && !self.sections.iter().any(|s| s.mid == mid) {
                return mid;
            }
        }
    }

    /// The codecs offered for a sender: its own first, then the others of its kind, each
    /// with the transport's payload type for it.
    fn offer_codecs(&self, sender: &Sender) -> Vec<NegotiatedCodec> {
        let mut table: Vec<CodecParams> = codec_table()
            .into_iter()
            .filter(|c| kind_of(c) == sender.kind)
            .collect();
        if let Some(i) = table.iter().position(|c| same_codec(c, &sender.codec)) {
            let first = table.remove(i);
            table.insert(0, first);
        } else {
            table.insert(0, sender.codec.clone());
        }
        let mut used: Vec<u8> = self.used_pts();
        let mut out = Vec::new();
        for params in table {
            let pt = match self.pts.iter().find(|(k, _)| *k == codec_key(&params)) {
                Some((_, pt)) => *pt,
                None => {
                    let Some(pt) = free_pt(default_pt(&params), &used) else {
                        continue;
                    };
                    pt
                }
            };
            used.push(pt);
            // RTX for video (RFC 4588): the payload type this connection already uses for
            // this codec's RTX, else pt + 1 when free (what browsers pick), else any free.
            let rtx_pt = if sender.kind == MediaKind::Video {
                let key = rtx_key(pt);
                let rtx = match self.pts.iter().find(|(k, _)| *k == key) {
                    Some((_, rtx)) => Some(*rtx),
                    None => free_pt(pt.saturating_add(1).min(127), &used),
                };
                used.extend(rtx);
                rtx
            } else {
                None
            };
            let mut feedback = default_feedback(sender.kind);
            feedback.push("transport-cc".into());
            out.push(NegotiatedCodec {
                pt,
                params,
                rtx_pt,
                feedback,
            });
        }
        out
    }

    fn used_pts(&self) -> Vec<u8> {
        let mut used: Vec<u8> = self.pts.iter().map(|(_, pt)| *pt).collect();
        for s in self.sections.iter() {
            for c in &s.codecs {
                used.push(c.pt);
                used.extend(c.rtx_pt);
            }
        }
        used
    }

    fn learn_pts(&mut self, codecs: &[NegotiatedCodec]) {
        for c in codecs {
            let key = codec_key(&c.params);
            if !self.pts.iter().any(|(k, pt)| *k == key || *pt == c.pt) {
                self.pts.push((key, c.pt));
            }
            if let Some(rtx) = c.rtx_pt {
                let key = rtx_key(c.pt);
                if !self.pts.iter().any(|(k, pt)| *k == key || *pt == rtx) {
                    self.pts.push((key, rtx));
                }
            }
        }
    }

    /// Applies the client's answer to our offer.
    pub fn apply_answer(&mut self, sdp: &str) -> Result<Applied, SdpError> {
        let Some(pending) = self.pending.as_ref() else {
            return Err(negotiation("an answer arrived but no offer is outstanding"));
        };
        let desc = parse(sdp)?;
        let remote = remote_params(&desc)?;
        if desc.media_descriptions.len() != pending.len() {
            return Err(negotiation(format!(
                "the answer has {} sections, the offer {}",
                desc.media_descriptions.len(),
                pending.len()
            )));
        }
        let mut next = pending.clone();
        let mut stopped = Vec::new();
        // Senders the answer refuses (kept once the whole answer is accepted).
        let mut refused = Vec::new();
        // The BUNDLE tag of our offer stays in the group whatever the answer says of its
        // codecs.
        let tag = pending.iter().position(|s| !s.rejected);
        for (i, (s, md)) in next.iter_mut().zip(&desc.media_descriptions).enumerate() {
            let answered = parse_section(md)?;
            if answered.mid != s.mid {
                return Err(negotiation(format!(
                    "answer section mid {:?} does not match the offer's {:?}",
                    answered.mid, s.mid
                )));
            }
            if s.rejected {
                continue;
            }
            if answered.port0 {
                if s.remote_sends {
                    stopped.push(s.mid.clone());
                }
                if let Some(key) = s.sender.filter(|_| s.local) {
                    refused.push(key);
                }
                s.rejected = true;
                s.remote_sends = false;
                s.local_sends = false;
                continue;
            }
            if s.kind == SectionKind::Application {
                // Data channels: no media either way.
                continue;
            }
            if s.local {
                // Keep only the codecs the answer accepted, with our payload types.
                let accepted: Vec<NegotiatedCodec> = s
                    .codecs
                    .iter()
                    .filter(|c| answered.codecs.iter().any(|a| a.pt == c.pt))
                    .map(|c| {
                        let mut c = c.clone();
                        // RTX stays only if the answer kept it, for this codec.
                        c.rtx_pt = c
                            .rtx_pt
                            .filter(|rtx| rtx_of(&answered.codecs, c.pt) == Some(*rtx));
                        c
                    })
                    .collect();
                let offered_codecs = std::mem::replace(&mut s.codecs, accepted);
                // Extensions: only those the answer kept (the transport-wide sequence is
                // written into every packet we send only if the client agreed to it).
                s.extmap
                    .retain(|(id, uri)| answered.extmap.iter().any(|(a, u)| a == id && u == uri));
                s.local_sends = answered.direction.remote_receives() && !s.codecs.is_empty();
                if s.codecs.is_empty()
                    && let Some(key) = s.sender
                {
                    // No codec in common: the sender is not offered again.
                    refused.push(key);
                }
                if s.codecs.is_empty() && Some(i) == tag {
                    // The tag: kept, inactive, with what we offered.
                    s.codecs = offered_codecs;
                    s.sender = None;
                } else if s.codecs.is_empty() {
                    // No codec in common: the slot is rejected.
                    s.rejected = true;
                }
            } else {
                let sends = answered.direction.remote_sends();
                if s.remote_sends && !sends {
                    stopped.push(s.mid.clone());
                }
                s.remote_sends = sends;
                if !answered.ssrcs.is_empty() {
                    s.remote_ssrcs = answered.ssrcs.clone();
                    s.remote_rtx = answered.fid.clone();
                    s.remote_sim = answered.sim.clone();
                }
            }
        }
        for s in &next {
            self.learn_pts(&s.codecs);
        }
        self.sections = next;
        self.allow_mixed = allows_mixed(&desc);
        self.remember_remote_extmap(&desc);
        self.pending = None;
        self.signaling = Signaling::Stable;
        self.refused.extend(refused);
        self.settle_data_section();
        // Senders rejected and agreed are gone for good.
        let sections = &self.sections;
        self.senders.retain(|key, snd| {
            !snd.removed
                || sections
                    .iter()
                    .any(|s| s.sender == Some(*key) && !s.rejected)
        });
        self.sync_sender_pts();
        // A section the client receives on, with codecs, but not the sender's (our offers
        // list every codec of the kind, the sender's first): refused as well. The section
        // stays, holding nothing, until the sender is removed.
        for (key, snd) in &self.senders {
            if !snd.removed
                && snd.pt.is_none()
                && self
                    .sections
                    .iter()
                    .any(|s| s.sender == Some(*key) && !s.rejected && s.local_sends)
            {
                self.refused.insert(*key);
            }
        }
        let senders = &self.senders;
        self.refused.retain(|key| senders.contains_key(key));
        self.offer_due = self.compute_needs_offer();
        Ok(Applied { remote, stopped })
    }

    /// Abandons our outstanding offer.
    pub fn rollback(&mut self) {
        self.pending = None;
        self.signaling = Signaling::Stable;
    }

    /// Each sender's payload type from the agreed sections.
    fn sync_sender_pts(&mut self) {
        for (key, snd) in self.senders.iter_mut() {
            let agreed = self
                .sections
                .iter()
                .find(|s| s.sender == Some(*key) && !s.rejected && s.local_sends)
                .and_then(|s| {
                    s.codecs
                        .iter()
                        .find(|c| same_codec(&c.params, &snd.codec))
                        .or_else(|| {
                            s.codecs.iter().find(|c| {
                                c.params
                                    .mime_type
                                    .eq_ignore_ascii_case(&snd.codec.mime_type)
                            })
                        })
                        .map(|c| (c.pt, c.rtx_pt))
                });
            snd.pt = agreed.map(|(pt, _)| pt);
            snd.rtx_pt = agreed.and_then(|(_, rtx)| rtx);
        }
    }

    /// Writes a description of `sections` with our transport parameters.
    fn write(&self, sections: &[Section], setup: &str) -> String {
        let bundle: Vec<&str> = sections
            .iter()
            .filter(|s| !s.rejected)
            .map(|s| s.mid.as_str())
            .collect();
        let mut attributes = Vec::new();
        if !bundle.is_empty() {
            attributes.push(attr("group", format!("BUNDLE {}", bundle.join(" "))));
        }
        attributes.push(flag("ice-lite"));
        // Also at session level (RFC 8839 §5.4, RFC 8122 §5): a description whose sections
        // are all rejected (every subscription removed) still carries our credentials, which
        // some stacks require.
        attributes.push(attr("ice-ufrag", self.local.ufrag.clone()));
        attributes.push(attr("ice-pwd", self.local.pwd.clone()));
        attributes.push(attr(
            "fingerprint",
            format!("sha-256 {}", self.local.fingerprint),
        ));
        attributes.push(attr("msid-semantic", " WMS *".trim_start().to_owned()));
        if setup == "actpass" || self.allow_mixed {
            attributes.push(flag("extmap-allow-mixed"));
        }
        let mut desc = SessionDescription {
            version: 0,
            origin: Origin {
                username: "-".into(),
                session_id: self.session_id,
                session_version: self.version,
                network_type: "IN".into(),
                address_type: "IP4".into(),
                unicast_address: "0.0.0.0".into(),
            },
            session_name: "-".into(),
            time_descriptions: vec![TimeDescription {
                timing: Timing {
                    start_time: 0,
                    stop_time: 0,
                },
                repeat_times: vec![],
            }],
            attributes,
            ..Default::default()
        };
        for s in sections {
            desc.media_descriptions.push(self.write_section(s, setup));
        }
        desc.marshal()
    }

    fn write_section(&self, s: &Section, setup: &str) -> MediaDescription {
        let formats: Vec<String> = if s.rejected || s.codecs.is_empty() {
            vec![match s.kind {
                SectionKind::Other(_) | SectionKind::Application => "webrtc-datachannel".to_owned(),
                _ => "0".to_owned(),
            }]
        } else {
            s.codecs
                .iter()
                .flat_map(|c| std::iter::once(c.pt).chain(c.rtx_pt))
                .map(|pt| pt.to_string())
                .collect()
        };
        let protos = match s.kind {
            SectionKind::Other(_) | SectionKind::Application => {
                vec!["UDP".into(), "DTLS".into(), "SCTP".into()]
            }
            _ => vec!["UDP".into(), "TLS".into(), "RTP".into(), "SAVPF".into()],
        };
        let mut md = MediaDescription {
            media_name: MediaName {
                media: s.kind.as_str().to_owned(),
                port: RangedPort {
                    value: if s.rejected { 0 } else { 9 },
                    range: None,
                },
                protos,
                formats,
            },
            media_title: None,
            connection_information: Some(ConnectionInformation {
                network_type: "IN".into(),
                address_type: "IP4".into(),
                address: Some(Address {
                    address: "0.0.0.0".into(),
                    ttl: None,
                    range: None,
                }),
            }),
            bandwidth: vec![],
            encryption_key: None,
            attributes: vec![],
        };
        let a = &mut md.attributes;
        a.push(attr("mid", s.mid.clone()));
        if s.rejected {
            a.push(flag("inactive"));
            return md;
        }
        a.push(attr("ice-ufrag", self.local.ufrag.clone()));
        a.push(attr("ice-pwd", self.local.pwd.clone()));
        a.push(attr(
            "fingerprint",
            format!("sha-256 {}", self.local.fingerprint),
        ));
        a.push(attr("setup", setup.to_owned()));
        if s.kind == SectionKind::Application {
            a.push(attr("sctp-port", super::datachannel::SCTP_PORT.to_string()));
            a.push(attr(
                "max-message-size",
                super::datachannel::MAX_MESSAGE_BYTES.to_string(),
            ));
            self.push_candidate(a);
            return md;
        }
        for (id, uri) in &s.extmap {
            a.push(attr("extmap", format!("{id} {uri}")));
        }
        let direction = match (s.local_sends, s.remote_sends) {
            (true, true) => "sendrecv",
            (true, false) => "sendonly",
            (false, true) => "recvonly",
            (false, false) => "inactive",
        };
        a.push(flag(direction));
        if !s.local && s.remote_sends && !s.rids.is_empty() {
            for rid in &s.rids {
                a.push(attr("rid", format!("{rid} recv")));
            }
            a.push(attr("simulcast", format!("recv {}", s.rids.join(";"))));
        }
        a.push(flag("rtcp-mux"));
        a.push(flag("rtcp-rsize"));
        for c in &s.codecs {
            let name = c
                .params
                .mime_type
                .split_once('/')
                .map_or(c.params.mime_type.as_str(), |(_, n)| n);
            let rtpmap = if c.params.channels > 1 {
                format!(
                    "{} {}/{}/{}",
                    c.pt, name, c.params.clock_rate, c.params.channels
                )
            } else {
                format!("{} {}/{}", c.pt, name, c.params.clock_rate)
            };
            a.push(attr("rtpmap", rtpmap));
            for fb in &c.feedback {
                a.push(attr("rtcp-fb", format!("{} {}", c.pt, fb)));
            }
            if !c.params.fmtp.is_empty() {
                a.push(attr("fmtp", format!("{} {}", c.pt, c.params.fmtp)));
            }
            if let Some(rtx) = c.rtx_pt {
                a.push(attr("rtpmap", format!("{rtx} rtx/{}", c.params.clock_rate)));
                a.push(attr("fmtp", format!("{rtx} apt={}", c.pt)));
            }
        }
        if s.local
            && let Some(snd) = s.sender.and_then(|k| self.senders.get(&k))
            && !snd.removed
        {
            a.push(attr("msid", format!("{} {}", snd.stream_id, snd.track_id)));
            let rtx = s.codecs.iter().any(|c| c.rtx_pt.is_some());
            if rtx {
                a.push(attr(
                    "ssrc-group",
                    format!("FID {} {}", snd.ssrc, snd.rtx_ssrc),
                ));
            }
            let ssrcs = std::iter::once(snd.ssrc).chain(rtx.then_some(snd.rtx_ssrc));
            for ssrc in ssrcs {
                a.push(attr("ssrc", format!("{ssrc} cname:hearth")));
                a.push(attr(
                    "ssrc",
                    format!("{} msid:{} {}", ssrc, snd.stream_id, snd.track_id),
                ));
            }
        }
        self.push_candidate(a);
        md
    }

    /// Our one candidate, and the end of candidates.
    fn push_candidate(&self, a: &mut Vec<Attribute>) {
        a.push(attr(
            "candidate",
            self.local
                .candidate
                .trim_start_matches("candidate:")
                .to_owned(),
        ));
        a.push(flag("end-of-candidates"));
    }
}

fn attr(key: &str, value: String) -> Attribute {
    Attribute::new(key.to_owned(), Some(value))
}

fn flag(key: &str) -> Attribute {
    Attribute::new(key.to_owned(), None)
}

// ---- parsing -----------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    /// The description's author sends.
    fn remote_sends(self) -> bool {
        matches!(self, Self::SendRecv | Self::SendOnly)
    }

    /// The description's author receives.
    fn remote_receives(self) -> bool {
        matches!(self, Self::SendRecv | Self::RecvOnly)
    }
}

#[derive(Clone, Debug)]
struct OfferedCodec {
    pt: u8,
    name: String,
    clock_rate: u32,
    channels: u16,
    fmtp: String,
    feedback: Vec<String>,
}

/// One m-section as the client wrote it.
#[derive(Clone, Debug)]
struct OfferedSection {
    mid: String,
    kind: SectionKind,
    port0: bool,
    direction: Direction,
    codecs: Vec<OfferedCodec>,
    extmap: Vec<(u8, String)>,
    ssrcs: Vec<u32>,
    fid: Vec<(u32, u32)>,
    /// `ssrc-group:SIM`: primary SSRCs, lowest layer first, each announced by `a=ssrc`.
    sim: Vec<u32>,
    rids: Vec<String>,
    simulcast: Option<String>,
    /// An application section that offers WebRTC data channels over SCTP.
    datachannel: bool,
}

/// Checks a client's first offer without any negotiation state: it parses, carries ICE
/// credentials and a fingerprint, offers to be the DTLS client or either role, and every
/// section is well formed; at most [`MAX_PUBLISHED`] sections send media. For gateways
/// that must refuse a bad offer before they create anything for it (WHIP, WHEP).
pub fn check_first_offer(sdp: &str) -> Result<(), SdpError> {
    let desc = parse(sdp)?;
    let remote = remote_params(&desc)?;
    if remote.ufrag.is_empty() {
        return Err(invalid("every section is rejected: nothing to connect"));
    }
    if remote.remote_passive {
        return Err(negotiation(
            "an offer must say setup:actpass or setup:active",
        ));
    }
    let mut sending = 0;
    for md in &desc.media_descriptions {
        let offered = parse_section(md)?;
        if !offered.port0 && offered.kind.media_kind().is_some() && offered.direction.remote_sends()
        {
            sending += 1;
        }
    }
    if sending > MAX_PUBLISHED {
        return Err(negotiation(format!(
            "at most {MAX_PUBLISHED} published tracks per participant"
        )));
    }
    Ok(())
}

fn parse(sdp: &str) -> Result<SessionDescription, SdpError> {
    if sdp.len() > MAX_SDP_BYTES {
        return Err(invalid(format!("SDP larger than {MAX_SDP_BYTES} bytes")));
    }
    // Count sections before the parser allocates for them.
    let sections = sdp.lines().filter(|l| l.starts_with("m=")).count();
    if sections > MAX_SECTIONS {
        return Err(negotiation(format!(
            "more than {MAX_SECTIONS} sections in one description"
        )));
    }
    let desc = SessionDescription::unmarshal(&mut Cursor::new(sdp.as_bytes()))
        .map_err(|e| invalid(e.to_string()))?;
    if desc.media_descriptions.is_empty() {
        return Err(invalid("no media sections"));
    }
    Ok(desc)
}

/// `<id>[/<direction>] <uri> ...` of an `a=extmap` line.
fn parse_extmap(value: &str) -> Option<(u8, &str)> {
    let mut parts = value.split_whitespace();
    let id = parts.next()?.split('/').next()?.parse::<u8>().ok()?;
    let uri = parts.next()?;
    (id >= 1).then_some((id, uri))
}

/// The description allows two-byte header extensions (session-level
/// `a=extmap-allow-mixed`).
fn allows_mixed(desc: &SessionDescription) -> bool {
    desc.attributes
        .iter()
        .any(|a| a.key == "extmap-allow-mixed")
}

fn remote_params(desc: &SessionDescription) -> Result<RemoteParams, SdpError> {
    let live = desc
        .media_descriptions
        .iter()
        .any(|md| md.media_name.port.value != 0 || md.has_attribute("bundle-only"));
    if !live {
        // Every section rejected: nothing to connect, and a stack may omit its ICE and DTLS
        // attributes altogether. The transport keeps what it had.
        return Ok(RemoteParams::default());
    }
    let session = |key: &str| desc.attribute(key).cloned();
    let mut out = RemoteParams::default();
    let mut fingerprints: Vec<String> = desc
        .attributes
        .iter()
        .filter(|a| a.key == "fingerprint")
        .filter_map(|a| a.value.clone())
        .collect();
    let mut ufrag = session("ice-ufrag");
    let mut pwd = session("ice-pwd");
    for md in &desc.media_descriptions {
        if md.media_name.port.value == 0 && !md.has_attribute("bundle-only") {
            continue;
        }
        for a in &md.attributes {
            match (a.key.as_str(), &a.value) {
                ("fingerprint", Some(v)) => fingerprints.push(v.clone()),
                ("ice-ufrag", Some(v)) if ufrag.is_none() => ufrag = Some(v.clone()),
                ("ice-pwd", Some(v)) if pwd.is_none() => pwd = Some(v.clone()),
                ("setup", Some(v)) if v == "passive" => out.remote_passive = true,
                _ => {}
            }
        }
    }
    if desc.attribute("setup").is_some_and(|v| v == "passive") {
        out.remote_passive = true;
    }
    for fp in fingerprints {
        let Some((alg, value)) = fp.trim().split_once(' ') else {
            return Err(invalid("malformed a=fingerprint"));
        };
        if alg.eq_ignore_ascii_case("sha-256")
            && !out.fingerprints.contains(&value.trim().to_owned())
        {
            out.fingerprints.push(value.trim().to_owned());
        }
    }
    if out.fingerprints.is_empty() {
        return Err(invalid("no sha-256 a=fingerprint"));
    }
    out.ufrag = ufrag.ok_or_else(|| invalid("no a=ice-ufrag"))?;
    out.pwd = pwd.ok_or_else(|| invalid("no a=ice-pwd"))?;
    if !legal_ice_credential(&out.ufrag, 4) || !legal_ice_credential(&out.pwd, 22) {
        return Err(invalid("malformed ICE credentials"));
    }
    Ok(out)
}

/// The simulcast layers a section offers: the `a=simulcast:send` list (first of each
/// alternative, paused `~` ones too), each named by an `a=rid:<id> send` line, rids of
/// 1 to 16 characters of A-Z a-z 0-9 - _, no duplicates, at most [`MAX_LAYERS`], with the
/// rid header extension offered and no `a=ssrc` lines. Anything else (no simulcast line, a
/// rid that is not declared or not valid): no simulcast, and the client falls back to one
/// stream.
fn simulcast_rids(offered: &OfferedSection) -> Vec<String> {
    let Some(value) = offered.simulcast.as_deref() else {
        return Vec::new();
    };
    // Layers are told apart by the rid header extension; a section that also lists SSRCs
    // (Firefox) would have them registered without their layer: one stream then.
    if !offered.ssrcs.is_empty() || !offered.extmap.iter().any(|(_, u)| u == RID_URI) {
        return Vec::new();
    }
    let mut parts = value.split_whitespace();
    let (Some("send"), Some(list)) = (parts.next(), parts.next()) else {
        return Vec::new();
    };
    let declared: Vec<&str> = offered
        .rids
        .iter()
        .filter_map(|r| {
            let mut f = r.split_whitespace();
            match (f.next(), f.next()) {
                (Some(id), Some("send")) => Some(id),
                _ => None,
            }
        })
        .collect();
    let valid = |id: &str| {
        (1..=16).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let mut out: Vec<String> = Vec::new();
    for alternative in list.split(';') {
        let Some(id) = alternative.split(',').next() else {
            continue;
        };
        let id = id.trim_start_matches('~');
        if !valid(id) || !declared.contains(&id) || out.iter().any(|o| o == id) {
            return Vec::new();
        }
        out.push(id.to_owned());
    }
    if out.len() > MAX_LAYERS {
        out.truncate(MAX_LAYERS);
    }
    out
}

/// An ICE ufrag (at least 4) or password (at least 22): up to 256 ice-chars (RFC 8839).
pub fn legal_ice_credential(s: &str, min: usize) -> bool {
    (min..=256).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

fn parse_section(md: &MediaDescription) -> Result<OfferedSection, SdpError> {
    let kind = SectionKind::parse(&md.media_name.media);
    // Port 0 rejects a section, except with `a=bundle-only` (RFC 8843 §6: a bundled section
    // an offerer sends with port 0; Firefox does this for new sections).
    let port0 = md.media_name.port.value == 0 && !md.has_attribute("bundle-only");
    let mut mid = None;
    let mut direction = Direction::SendRecv;
    let mut rtpmaps: Vec<(u8, String, u32, u16)> = Vec::new();
    let mut fmtps: Vec<(u8, String)> = Vec::new();
    let mut feedback: Vec<(Option<u8>, String)> = Vec::new();
    let mut extmap = Vec::new();
    let mut ssrcs: Vec<u32> = Vec::new();
    let mut fid = Vec::new();
    let mut sim: Vec<u32> = Vec::new();
    let mut rids = Vec::new();
    let mut simulcast = None;
    let mut rtcp_mux = false;
    for a in &md.attributes {
        let value = a.value.as_deref().unwrap_or("");
        match a.key.as_str() {
            "mid" => mid = Some(value.to_owned()),
            "sendrecv" => direction = Direction::SendRecv,
            "sendonly" => direction = Direction::SendOnly,
            "recvonly" => direction = Direction::RecvOnly,
            "inactive" => direction = Direction::Inactive,
            "rtcp-mux" => rtcp_mux = true,
            "rtpmap" => {
                if let Some(m) = parse_rtpmap(value)
                    && rtpmaps.len() < 128
                {
                    rtpmaps.push(m);
                }
            }
            "fmtp" => {
                if let Some((pt, rest)) = value.split_once(' ')
                    && let Ok(pt) = pt.parse::<u8>()
                {
                    fmtps.push((pt, rest.trim().to_owned()));
                }
            }
            "rtcp-fb" => {
                if let Some((pt, rest)) = value.split_once(' ') {
                    let pt = if pt == "*" {
                        None
                    } else {
                        pt.parse::<u8>().ok()
                    };
                    if feedback.len() < 256 {
                        feedback.push((pt, rest.trim().to_owned()));
                    }
                }
            }
            "extmap" => {
                let mut parts = value.split_whitespace();
                if let (Some(id), Some(uri)) = (parts.next(), parts.next()) {
                    let id = id.split('/').next().unwrap_or(id);
                    // Two-byte ids too (RFC 8285 §4.3; `extmap-allow-mixed`).
                    if let Ok(id) = id.parse::<u8>()
                        && id >= 1
                        && extmap.len() < 32
                    {
                        extmap.push((id, uri.to_owned()));
                    }
                }
            }
            "ssrc" => {
                if let Some(ssrc) = value.split_whitespace().next().and_then(|s| s.parse().ok())
                    && !ssrcs.contains(&ssrc)
                    && ssrcs.len() < 32
                {
                    ssrcs.push(ssrc);
                }
            }
            "ssrc-group" => {
                let mut parts = value.split_whitespace();
                match parts.next() {
                    Some("FID") => {
                        if let (Some(p), Some(r)) = (parts.next(), parts.next())
                            && let (Ok(p), Ok(r)) = (p.parse::<u32>(), r.parse::<u32>())
                            && fid.len() < 16
                        {
                            fid.push((p, r));
                        }
                    }
                    Some("SIM") if sim.is_empty() => {
                        // Malformed: no simulcast (each SSRC stays a plain stream).
                        let layers: Option<Vec<u32>> =
                            parts.take(8).map(|x| x.parse::<u32>().ok()).collect();
                        sim = layers.unwrap_or_default();
                    }
                    _ => {}
                }
            }
            "rid" if rids.len() < 8 => rids.push(value.chars().take(256).collect()),
            "simulcast" => simulcast = Some(value.chars().take(256).collect()),
            _ => {}
        }
    }
    let mid = mid.ok_or_else(|| invalid("a media section has no a=mid"))?;
    if mid.is_empty() || mid.len() > 32 || !mid.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid("malformed a=mid"));
    }
    if !port0 && kind.media_kind().is_some() && !rtcp_mux {
        return Err(invalid(format!("section {mid} lacks a=rtcp-mux")));
    }
    // Primary SSRCs only: RTX SSRCs come from FID groups.
    let rtx: Vec<u32> = fid.iter().map(|(_, r)| *r).collect();
    ssrcs.retain(|s| !rtx.contains(s));
    // SSRC-group simulcast: at least two distinct layers, each announced; layers past
    // MAX_LAYERS (and their retransmissions) are not received at all.
    let distinct = sim.iter().enumerate().all(|(i, x)| !sim[..i].contains(x));
    if sim.len() < 2 || !distinct || !sim.iter().all(|x| ssrcs.contains(x)) {
        sim.clear();
    } else if sim.len() > MAX_LAYERS {
        let dropped = sim.split_off(MAX_LAYERS);
        ssrcs.retain(|x| !dropped.contains(x));
        fid.retain(|(p, _)| !dropped.contains(p));
    }
    let mut codecs = Vec::new();
    for fmt in &md.media_name.formats {
        let Ok(pt) = fmt.parse::<u8>() else {
            continue;
        };
        if pt > 127 || codecs.len() >= MAX_CODECS * 2 {
            continue;
        }
        let Some((_, name, clock_rate, channels)) = rtpmaps.iter().find(|m| m.0 == pt) else {
            continue;
        };
        let fmtp = fmtps
            .iter()
            .find(|f| f.0 == pt)
            .map(|f| f.1.clone())
            .unwrap_or_default();
        let fb = feedback
            .iter()
            .filter(|(p, _)| p.is_none() || *p == Some(pt))
            .map(|(_, f)| f.clone())
            .collect();
        codecs.push(OfferedCodec {
            pt,
            name: name.clone(),
            clock_rate: *clock_rate,
            channels: *channels,
            fmtp,
            feedback: fb,
        });
    }
    let datachannel = kind == SectionKind::Application
        && md
            .media_name
            .formats
            .iter()
            .any(|f| f == "webrtc-datachannel")
        && md
            .media_name
            .protos
            .iter()
            .any(|p| p.eq_ignore_ascii_case("SCTP"));
    Ok(OfferedSection {
        datachannel,
        mid,
        kind,
        port0,
        direction,
        codecs,
        extmap,
        ssrcs,
        fid: fid.into_iter().map(|(p, r)| (r, p)).collect(),
        sim,
        rids,
        simulcast,
    })
}

fn parse_rtpmap(value: &str) -> Option<(u8, String, u32, u16)> {
    let (pt, rest) = value.split_once(' ')?;
    let pt = pt.parse::<u8>().ok()?;
    let mut parts = rest.trim().split('/');
    let name = parts.next()?.to_owned();
    if name.is_empty() || name.len() > 32 {
        return None;
    }
    let clock_rate = parts.next()?.parse::<u32>().ok()?;
    let channels = parts
        .next()
        .and_then(|c| c.parse::<u16>().ok())
        .unwrap_or(1);
    Some((pt, name, clock_rate, channels))
}

// ---- codecs ------------------------------------------------------------------------------

/// Every codec the server forwards, in preference order, with its default payload type.
fn codec_table() -> Vec<CodecParams> {
    let h264 = |profile: &str| CodecParams {
        codec: Codec::H264,
        mime_type: "video/H264".into(),
        clock_rate: 90_000,
        channels: 0,
        fmtp: format!("level-asymmetry-allowed=1;packetization-mode=1;profile-level-id={profile}"),
    };
    vec![
        CodecParams {
            codec: Codec::Opus,
            mime_type: "audio/opus".into(),
            clock_rate: 48_000,
            channels: 2,
            fmtp: "minptime=10;useinbandfec=1".into(),
        },
        CodecParams {
            codec: Codec::Vp8,
            mime_type: "video/VP8".into(),
            clock_rate: 90_000,
            channels: 0,
            fmtp: String::new(),
        },
        // VP9 profile 0 (8-bit 4:2:0, what every browser encodes): forwarded with its
        // spatial layers dropped per subscriber when the publisher sends SVC.
        CodecParams {
            codec: Codec::Vp9,
            mime_type: "video/VP9".into(),
            clock_rate: 90_000,
            channels: 0,
            fmtp: "profile-id=0".into(),
        },
        h264("42e01f"),
        h264("42001f"),
        // AV1 main profile: forwarded whole (its dependency descriptor is not read, so its
        // scalability layers are not dropped per subscriber).
        CodecParams {
            codec: Codec::Av1,
            mime_type: "video/AV1".into(),
            clock_rate: 90_000,
            channels: 0,
            fmtp: "level-idx=5;profile=0;tier=0".into(),
        },
    ]
}

fn default_pt(c: &CodecParams) -> u8 {
    match c.codec {
        Codec::Opus => 111,
        Codec::Vp8 => 96,
        Codec::H264
            if fmtp_param(&c.fmtp, "profile-level-id").is_some_and(|p| p.starts_with("4200")) =>
        {
            104
        }
        Codec::H264 => 102,
        // Chromium's numbers for AV1, so it keeps its own (VP9 profile 2 takes 100).
        Codec::Av1 => 45,
        _ => 98,
    }
}

/// The payload-type table's key for the RTX of payload type `apt`.
fn rtx_key(apt: u8) -> String {
    format!("rtx/{apt}")
}

fn free_pt(preferred: u8, used: &[u8]) -> Option<u8> {
    if !used.contains(&preferred) {
        return Some(preferred);
    }
    (96..=127u8).chain(35..=63).find(|pt| !used.contains(pt))
}

fn kind_of(c: &CodecParams) -> MediaKind {
    if c.mime_type
        .get(..6)
        .is_some_and(|p| p.eq_ignore_ascii_case("audio/"))
    {
        MediaKind::Audio
    } else {
        MediaKind::Video
    }
}

fn default_feedback(kind: MediaKind) -> Vec<String> {
    match kind {
        MediaKind::Audio => vec![],
        MediaKind::Video => vec!["ccm fir".into(), "nack".into(), "nack pli".into()],
    }
}

fn fmtp_param(fmtp: &str, key: &str) -> Option<String> {
    fmtp.split(';').find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case(key)
            .then(|| v.trim().to_ascii_lowercase())
    })
}

/// H.264 streams only decode with the same packetization mode and profile; other codecs
/// match by name.
pub fn same_codec(a: &CodecParams, b: &CodecParams) -> bool {
    if !a.mime_type.eq_ignore_ascii_case(&b.mime_type) || a.clock_rate != b.clock_rate {
        return false;
    }
    if a.codec == Codec::Vp9 {
        return vp9_profile(&a.fmtp) == vp9_profile(&b.fmtp);
    }
    if a.codec == Codec::Av1 {
        return av1_profile(&a.fmtp) == av1_profile(&b.fmtp);
    }
    if a.codec != Codec::H264 {
        return true;
    }
    let mode = |f: &str| fmtp_param(f, "packetization-mode").unwrap_or_else(|| "0".into());
    let profile =
        |f: &str| fmtp_param(f, "profile-level-id").map(|p| p.chars().take(4).collect::<String>());
    mode(&a.fmtp) == mode(&b.fmtp) && profile(&a.fmtp) == profile(&b.fmtp)
}

/// A VP9 format's profile (RFC 9628 §6: `profile-id`, 0 when absent).
fn vp9_profile(fmtp: &str) -> String {
    fmtp_param(fmtp, "profile-id").unwrap_or_else(|| "0".into())
}

/// An AV1 format's profile (its RTP payload format §7.2: `profile`, 0 when absent).
fn av1_profile(fmtp: &str) -> String {
    fmtp_param(fmtp, "profile").unwrap_or_else(|| "0".into())
}

fn codec_key(c: &CodecParams) -> String {
    let mut key = format!("{}/{}", c.mime_type.to_ascii_lowercase(), c.clock_rate);
    if c.codec == Codec::Vp9 {
        key.push_str(&format!(";{}", vp9_profile(&c.fmtp)));
    }
    if c.codec == Codec::Av1 {
        key.push_str(&format!(";{}", av1_profile(&c.fmtp)));
    }
    if c.codec == Codec::H264 {
        let mode = fmtp_param(&c.fmtp, "packetization-mode").unwrap_or_else(|| "0".into());
        let profile = fmtp_param(&c.fmtp, "profile-level-id")
            .map(|p| p.chars().take(4).collect::<String>())
            .unwrap_or_default();
        key.push_str(&format!(";{mode};{profile}"));
    }
    key
}

/// The offered codecs we can forward, in the offer's payload types, with their RTX. With
/// `want`, that codec goes first (a section we send on).
fn supported_codecs(offered: &OfferedSection, want: Option<&CodecParams>) -> Vec<NegotiatedCodec> {
    let Some(kind) = offered.kind.media_kind() else {
        return Vec::new();
    };
    let table = codec_table();
    let mut out: Vec<NegotiatedCodec> = Vec::new();
    for c in &offered.codecs {
        if out.len() >= MAX_CODECS {
            break;
        }
        let params = CodecParams {
            codec: Codec::from_mime(&format!("{}/{}", offered.kind.as_str(), c.name)),
            mime_type: format!("{}/{}", offered.kind.as_str(), c.name),
            clock_rate: c.clock_rate,
            channels: if kind == MediaKind::Audio {
                c.channels
            } else {
                0
            },
            fmtp: c.fmtp.clone(),
        };
        if !table.iter().any(|t| same_codec(t, &params)) {
            continue;
        }
        if out.iter().any(|o| o.pt == c.pt) {
            continue;
        }
        let rtx_pt = rtx_of(&offered.codecs, c.pt);
        let ours = default_feedback(kind);
        let mut feedback: Vec<String> = c
            .feedback
            .iter()
            .filter(|f| ours.contains(f) || (*f == "transport-cc" && offered_twcc(offered)))
            .cloned()
            .collect();
        feedback.dedup();
        out.push(NegotiatedCodec {
            pt: c.pt,
            params,
            rtx_pt,
            feedback,
        });
    }
    if let Some(want) = want
        && let Some(i) = out.iter().position(|c| same_codec(&c.params, want))
    {
        let first = out.remove(i);
        out.insert(0, first);
    }
    out
}

/// The payload type of the `rtx` codec that repairs payload type `apt` (its `apt=`).
fn rtx_of(codecs: &[OfferedCodec], apt: u8) -> Option<u8> {
    codecs
        .iter()
        .find(|r| {
            r.name.eq_ignore_ascii_case("rtx")
                && fmtp_param(&r.fmtp, "apt").and_then(|a| a.parse::<u8>().ok()) == Some(apt)
        })
        .map(|r| r.pt)
}

fn offered_twcc(offered: &OfferedSection) -> bool {
    offered.extmap.iter().any(|(_, u)| u == TRANSPORT_CC_URI)
}

/// Extensions our sending sections carry in SDP. Forwarded packets carry one of them, the
/// transport-wide sequence number (the subscriber's TWCC feedback drives our send-side
/// bandwidth estimate); the mid and, for video, the rid pair are named only: Chromium offers
/// a later section only the extensions the BUNDLE group has negotiated, and refuses its own
/// simulcast offer when the rid extension is not among them.
fn local_extensions(kind: MediaKind) -> &'static [(&'static str, u8)] {
    match kind {
        MediaKind::Audio => &[(TRANSPORT_CC_URI, 3), (MID_URI, 4)],
        MediaKind::Video => &[
            (TRANSPORT_CC_URI, 3),
            (MID_URI, 4),
            (RID_URI, 10),
            (REPAIRED_RID_URI, 11),
            // 16, a two-byte id (it is only sent where `extmap-allow-mixed` is agreed):
            // Chromium's own video sections use every id of 1 to 14 (9 and 12 go to the
            // descriptor and video-layers-allocation in either order), and an offer of
            // ours crossing the client's must not give one of its ids another URI ("RTP
            // extension ID reassignment not supported", seen with 12 and with 9).
            (DEPENDENCY_DESCRIPTOR_URI, 16),
        ],
    }
}

/// The extensions of a new sending section, with the ids the BUNDLE group already uses for
/// them (one id per URI across the group), else Chromium's defaults when free, else the
/// lowest free id.
fn bundle_extmap(
    sections: &[Section],
    remote: &[(u8, String)],
    kind: MediaKind,
) -> Vec<(u8, String)> {
    let used: Vec<&(u8, String)> = sections
        .iter()
        .filter(|s| !s.rejected)
        .flat_map(|s| s.extmap.iter())
        .chain(remote)
        .collect();
    let mut out: Vec<(u8, String)> = Vec::new();
    for (uri, default) in local_extensions(kind) {
        let taken = |id: u8, out: &[(u8, String)]| {
            used.iter().any(|(i, u)| *i == id && u != uri) || out.iter().any(|(i, _)| *i == id)
        };
        let id = used
            .iter()
            .find(|(_, u)| u == uri)
            .map(|(i, _)| *i)
            .or_else(|| (!taken(*default, &out)).then_some(*default))
            .or_else(|| {
                // Two-byte ids stay two-byte (their form is agreed where they are used).
                let mut free = if *default > 14 { 16..=255 } else { 1..=14 };
                free.find(|i| !taken(*i, &out))
            });
        if let Some(id) = id {
            out.push((id, (*uri).to_owned()));
        }
    }
    out
}

/// Our sending section's extensions as the client's offer names them.
fn local_extmap_from(offered: &OfferedSection) -> Vec<(u8, String)> {
    let Some(kind) = offered.kind.media_kind() else {
        return Vec::new();
    };
    offered
        .extmap
        .iter()
        .filter(|(_, uri)| local_extensions(kind).iter().any(|(u, _)| u == uri))
        .cloned()
        .collect()
}

/// The extensions we accept on a section the client sends on, `codecs` being what we
/// agree (the first is what it will send). The dependency descriptor only for AV1: agreed
/// for another codec, Chromium puts it on its VP8 simulcast too and its temporal layers
/// went unseen (the per-temporal-layer rates of the VP8 ladder stayed empty, and a
/// subscriber on a link below the lowest layer was paused instead of slowed).
fn accepted_extmap(offered: &OfferedSection, codecs: &[NegotiatedCodec]) -> Vec<(u8, String)> {
    let av1 = codecs.first().is_some_and(|c| c.params.codec == Codec::Av1);
    offered
        .extmap
        .iter()
        .filter(|(_, uri)| ACCEPTED_EXTENSIONS.contains(&uri.as_str()))
        .filter(|(_, uri)| uri != AUDIO_LEVEL_URI || offered.kind == SectionKind::Audio)
        .filter(|(_, uri)| uri != DEPENDENCY_DESCRIPTOR_URI || av1)
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests;
