//! `ParticipantActor`: one per participant; owns its peer connection.
//!
//! Supervision: a child of its `MeetingActor`. If it panics, the meeting removes it, tells
//! the others it left (`failed`) and tells its client to reconnect; nothing else is touched
//! (policy: stop and remove, never restart — a participant's state lives in the client).
//!
//! Roles, both in one actor:
//! * **Publisher**: datagrams from the UDP mux go into the transport (SRTP mostly right on
//!   the driver that received it, see [`IngressSink`]; the rest through the actor); each received RTP
//!   packet is checked (duplicates, losses → NACK, keyframes, audio level), cached for
//!   retransmission, and fanned out: onto each subscriber's send leg (rewritten, encrypted
//!   and sent right here, `crate::leg`), or, for a subscriber without a leg yet or a gRPC
//!   tap, as a `Bytes` handle into its bounded media queue.
//! * **Subscriber**: owns one send leg per subscription (forwarder, SRTP sealer, send
//!   stats), attaches it to the publisher and opens it once negotiated and connected; sends
//!   what reaches its queue (retransmissions, early packets) through the same leg. Keyframe
//!   requests and NACKs from the client travel back to the publisher actor (coalesced and
//!   budgeted).
//!
//! Negotiation (perfect negotiation; the server is the impolite peer): client offers publish
//! tracks; subscription changes are queued and applied only when signaling is stable,
//! immediately followed by our offer, so a client offer never meets half-applied changes.
//!
//! PERFORMANCE-CRITICAL PATH: `on_datagram_inline`, `on_media`, `on_datagrams`, `publish_packet`. No logging,
//! no allocation per packet beyond the sealed datagram, payloads only as `Bytes` clones.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use hearth_engine::codec::{VP9_MAX_SPATIAL, vp8_temporal, vp9_layer, vp9_scalability};
use hearth_engine::forwarder::Forwarder;
use hearth_engine::keyframe::KeyframeRequester;
use hearth_engine::media::{MediaKind, MediaPacket, Ssrc};
use hearth_engine::nack::{NackConfig, NackGenerator, RetransmissionCache, RetransmitLimiter};
use hearth_engine::speaker::{AudioLevelMeter, SpeakerConfig};
use hearth_engine::stats::{NtpTime, ReceiveStats, ReportTimer, SendStats};
use hearth_engine::svc::{SVC_TEMPORAL_LAYERS, svc_layer_id, svc_layer_targets};
use hearth_engine::transport;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::domain::{
    ClientSignal, LeaveReason, ServerSignal, SignalError, SignalErrorCode, TrackInfo,
};
use crate::ids::{ParticipantId, TrackId, random_string};
use crate::inbox::{Inbox, InboxSender};
use crate::leg::{Forwarded, SendLeg};
use crate::meeting::MeetingMsg;
use crate::signal::SignalSender;
use crate::udp_mux::{Datagram, DatagramSink, MuxRegistration, SEND_CHUNK, SendBatch, UdpMux};
use crate::webrtc::{
    Certificate, CodecParams, Feedback, Inbound, PeerError, PeerEvent, PeerSetup, SenderKey,
    WebRtcPeer,
};

/// Numeric key of a published track on the media path (cheaper than the string id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TrackKey(pub u64);

static NEXT_TRACK_KEY: AtomicU64 = AtomicU64::new(1);

impl TrackKey {
    /// A key no other track of this process has.
    pub fn next() -> TrackKey {
        TrackKey(NEXT_TRACK_KEY.fetch_add(1, Ordering::Relaxed))
    }
}

/// One packet travelling from a publisher to a subscriber.
#[derive(Clone, Debug)]
pub struct MediaItem {
    pub track: TrackKey,
    pub packet: MediaPacket,
    /// An answer to this subscriber's NACK, from the publisher's cache.
    pub retransmission: bool,
}

/// A subscriber as a publisher sees it: where to push packets.
#[derive(Clone)]
pub struct SubscriberLink {
    pub participant: ParticipantId,
    pub media: InboxSender<MediaItem, ParticipantMsg>,
}

/// Everything a subscriber needs to receive a track.
#[derive(Clone)]
pub struct PublishedTrack {
    pub info: TrackInfo,
    pub key: TrackKey,
    pub codec: CodecParams,
    pub publisher: ParticipantId,
    pub publisher_ref: ActorRef<ParticipantMsg>,
}

/// Counters of one participant, for tests and operators.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParticipantStats {
    pub connected: bool,
    pub published_tracks: usize,
    pub subscriptions: usize,
    pub packets_received: u64,
    pub packets_forwarded: u64,
    pub packets_sent: u64,
    pub media_dropped: u64,
    pub ingress_dropped: u64,
    pub media_queue_depth: usize,
    pub keyframe_requests_sent: u64,
    pub nacks_sent: u64,
    pub retransmissions_sent: u64,
    /// Data channels open now.
    pub data_channels: usize,
    /// Data channel messages from the client relayed, to the client delivered, and dropped
    /// (over the size or rate limit, or the client not keeping up).
    pub data_in: u64,
    pub data_out: u64,
    pub data_dropped: u64,
    /// Congestion control of what this participant receives: the estimate of its path
    /// (bits/s), whether feedback has limited it (else it is the optimistic start), the
    /// rate its client acknowledged, and probes sent and the padding they took.
    pub bwe_estimate_bps: u64,
    pub bwe_limited: bool,
    pub bwe_acked_bps: u64,
    pub bwe_probes: u64,
    pub bwe_padding_bytes: u64,
}

pub enum ParticipantMsg {
    /// A message from the client (via the gateway).
    Signal(ClientSignal),
    /// Datagrams are waiting in the ingress inbox.
    DatagramsReady,
    /// Forwarded media is waiting in the media inbox.
    MediaReady,
    /// The timer fired.
    Tick,
    /// Start receiving a track of another participant.
    Subscribe(Box<PublishedTrack>),
    /// Stop receiving a track.
    Unsubscribe { track: TrackId },
    /// The publisher of `track` muted or unmuted it.
    RemoteTrackMuted { track: TrackId, muted: bool },
    /// Who receives our track `track` now (rebuilt by the meeting on membership change).
    SetFanout {
        track: TrackId,
        subscribers: Arc<[SubscriberLink]>,
    },
    /// A subscriber of our track asks for a keyframe (of the layers it is on, for a
    /// simulcast track).
    KeyframeRequest {
        track: TrackKey,
        from: ParticipantId,
    },
    /// A subscriber lost these packets (our source sequence numbers, of our stream `ssrc`:
    /// a simulcast layer) of our track.
    Retransmit {
        track: TrackKey,
        ssrc: Ssrc,
        seqs: Vec<u16>,
        to: InboxSender<MediaItem, ParticipantMsg>,
    },
    /// A subscriber's tile for our simulcast track `track` is this many pixels high: the
    /// layer it gets is chosen from that.
    LayerPreference {
        track: TrackKey,
        subscriber: ParticipantId,
        max_height: u32,
        /// The subscriber's bandwidth allocation caps it at this layer and temporal layer
        /// (`hearth_engine::svc::svc_layer_id`; None: no cap).
        max_layer: Option<u8>,
        /// Nothing is forwarded to the subscriber now (tile hidden, or paused by its
        /// bandwidth allocation): it needs no layer kept running for it.
        idle: bool,
    },
    /// The meeting's loudest speaker now (the bandwidth allocation favours their camera).
    ActiveSpeaker(Option<ParticipantId>),
    /// The meeting asks us to go (kick, meeting ended).
    Leave(LeaveReason),
    /// Drill and test hook: fail like a bug would.
    InjectFault,
    /// Drill and test hook: the next media datagram a UDP driver handles for us on its fast
    /// path panics there (see `IngressSink`).
    InjectMediaFault,
    /// Current counters.
    Stats(RpcReplyPort<ParticipantStats>),
    /// A subscriber of our track `track` attached its send leg: forward on it directly.
    AttachLeg { track: TrackKey, leg: Arc<SendLeg> },
    /// A subscriber's leg for our track ended.
    DetachLeg {
        track: TrackKey,
        subscriber: ParticipantId,
    },
    /// The API changed whether this participant may publish.
    SetCanPublish(bool),
    /// A data channel message from another participant or the app, for our channel of its
    /// label.
    Data(Box<crate::data::DataMessage>),
    /// Packets wait in a virtual publisher's bounded ingress queue (embedding API; others
    /// ignore it).
    VirtualRtpReady,
}

/// Start-up arguments, from the meeting.
pub struct ParticipantArgs {
    pub id: ParticipantId,
    pub meeting: ActorRef<MeetingMsg>,
    pub signal: SignalSender,
    pub mux: Arc<UdpMux>,
    pub advertised: SocketAddr,
    pub certificate: Certificate,
    pub can_publish: bool,
    /// WHIP/WHEP: the client offers, we only answer (see [`crate::SessionKind::Http`]).
    pub client_offers_only: bool,
    /// Offer the client an SCTP section for data channels.
    pub data_channels: bool,
    pub media_queue: usize,
    pub speaker: SpeakerConfig,
    /// Wall clock at `epoch`, for NTP timestamps in sender reports.
    pub wall_epoch: (Instant, SystemTime),
    /// Receives this participant's media inbox sender once it exists, for fan-out lists.
    pub link: tokio::sync::oneshot::Sender<InboxSender<MediaItem, ParticipantMsg>>,
    /// The actor registry (for the operator's tree) and our supervisor.
    pub actors: Arc<crate::registry::ActorRegistry>,
    pub parent: ractor::ActorId,
    /// The participant's usage interval: bytes in and out are added to it.
    pub usage: Arc<crate::billing::UsageInterval>,
}

pub struct ParticipantActor;

struct Published {
    info: TrackInfo,
    key: TrackKey,
    /// The track as the meeting knows it: `key` itself, or for a simulcast layer the key of
    /// the track's first layer (the others are ours alone).
    group: TrackKey,
    /// Simulcast: this entry's layer (lowest first), and the frame size its keyframes say.
    layer: Option<u8>,
    dims: Option<(u16, u16)>,
    /// When the layer last sent (a layer the publisher stopped is not chosen).
    last_packet: Option<Instant>,
    /// Its incoming rate (subscribers' bandwidth allocation weighs layers by it).
    rate: RateWindow,
    ssrc: Ssrc,
    stack_id: String,
    codec: CodecParams,
    fanout: Arc<[SubscriberLink]>,
    /// Send legs attached by subscribers (their data side, forwarded on directly).
    legs: HashMap<ParticipantId, Arc<SendLeg>>,
    /// Where each packet goes: the fan-out list, each subscriber by its leg when it attached
    /// one, else by its media queue. Rebuilt when either changes.
    targets: Vec<Target>,
    recv: ReceiveStats,
    nack: Option<NackGenerator>,
    cache: Option<RetransmissionCache>,
    keyframes: KeyframeRequester,
    level: Option<AudioLevelMeter>,
    last_loudness: f32,
    /// VP9: its spatial layers, measured, and each subscriber's choice among them.
    svc: Option<Box<SvcTrack>>,
    /// A VP8 simulcast layer: the rate of each of its temporal layers (from
    /// `SVC_TEMPORAL_LAYERS - 1` up together), so a subscriber's allocation can take it at
    /// a lower frame rate.
    temporal_rates: Option<Box<[RateWindow; SVC_TEMPORAL_LAYERS as usize]>>,
}

/// A VP9 track's spatial layers (one stream; each subscriber's leg drops those above its
/// layer, see `hearth_engine::svc`). Chosen like simulcast layers: by tile height, capped by
/// the subscriber's bandwidth allocation.
#[derive(Default)]
struct SvcTrack {
    /// Spatial layers its scalability structure announced (0: none yet).
    layers: u8,
    /// Each layer's picture height (0: not said).
    heights: [u16; VP9_MAX_SPATIAL],
    /// Each spatial and temporal layer's own incoming rate (temporal layers from
    /// `SVC_TEMPORAL_LAYERS - 1` up together).
    rates: [[RateWindow; SVC_TEMPORAL_LAYERS as usize]; VP9_MAX_SPATIAL],
    /// Each subscriber's tile height and bandwidth cap (`LayerPreference`).
    prefs: HashMap<ParticipantId, (u32, Option<u8>)>,
}

/// Tile settings kept per participant (one per received track).
const MAX_TRACK_PREFS: usize = 256;
/// A simulcast layer that has not sent for this long is not chosen for anyone.
const LAYER_SILENT: Duration = Duration::from_secs(1);

/// A simulcast layer nobody has needed for this long is paused at the publisher (needed
/// again, it resumes at once): short flaps of a tile or an estimate cost no renegotiation.
const LAYER_PAUSE_AFTER: Duration = Duration::from_secs(2);
/// A resumed layer may take this long to send again; then the client is told again (the
/// message, or the browser's `setParameters`, may have been lost), at most
/// [`LAYER_RESUME_TRIES`] times, before the layer counts as silent like any other.
const LAYER_RESUME_GRACE: Duration = Duration::from_secs(3);
const LAYER_RESUME_TRIES: u8 = 3;

/// Dynacast state of one simulcast track we publish: which layers our client was told to
/// pause, and since when the others have been unneeded or were resumed. Layer indexes
/// above 63 are never paused.
#[derive(Default)]
struct LayerPauses {
    /// Bit `l`: layer `l` is paused (the client was told).
    paused: u64,
    /// Layers nobody needs now, since when.
    unneeded_since: HashMap<u8, Instant>,
    /// Layers resumed and not sending yet: when the client was last told, how often.
    /// They count as sending while they start again.
    resumed_at: HashMap<u8, (Instant, u8)>,
}

impl LayerPauses {
    fn is_paused(&self, layer: u8) -> bool {
        layer < 64 && self.paused & (1 << layer) != 0
    }

    /// Paused by us, or resumed and not sending yet: such a layer can be chosen although
    /// it does not send now.
    fn available(&self, layer: u8) -> bool {
        self.is_paused(layer) || self.resumed_at.contains_key(&layer)
    }
}

/// Where one subscriber's leg of our simulcast track is.
struct LayerChoice {
    leg: Arc<SendLeg>,
    /// The layer its forwarder follows now (None before the first packet).
    current: Option<u8>,
    /// The layer it should get; while it differs from `current` the leg gets both, and the
    /// forwarder switches at the target's next keyframe (make before break).
    target: u8,
    /// The subscriber's tile height in pixels (`u32::MAX`: not told, the best layer).
    max_height: u32,
    /// The subscriber's bandwidth allocation caps it at this layer and temporal layer
    /// (`svc_layer_id`).
    max_layer: Option<u8>,
    /// Nothing is forwarded to it now (its tile is hidden, or its bandwidth allocation
    /// paused the track): no layer is kept running for it.
    idle: bool,
}

/// The rate a stream arrives or leaves at, over windows of a second.
#[derive(Clone, Copy, Debug, Default)]
struct RateWindow {
    start: Option<Instant>,
    bytes: u64,
    bps: u32,
    /// The window before.
    prev_bps: u32,
}

impl RateWindow {
    /// A layer's price for the bandwidth allocation: the lower of the last two windows, so
    /// a keyframe (asked for by every switch) does not make a layer look twice its cost for
    /// one allocation and pause the picture.
    fn steady_bps(&self) -> u32 {
        if self.prev_bps == 0 {
            self.bps
        } else {
            self.bps.min(self.prev_bps)
        }
    }

    fn on_bytes(&mut self, now: Instant, bytes: u64) {
        let start = *self.start.get_or_insert(now);
        self.bytes += bytes;
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= Duration::from_secs(1) {
            self.prev_bps = self.bps;
            self.bps =
                (self.bytes as f64 * 8.0 / elapsed.as_secs_f64()).min(f64::from(u32::MAX)) as u32;
            self.start = Some(now);
            self.bytes = 0;
        }
    }
}

/// Tells the publisher of `sub` what its layer choice for us depends on (tile height,
/// bandwidth cap, whether anything is forwarded at all), if that changed.
fn tell_layer_preference(sub: &mut Subscription, me: &ParticipantId, height: u32, cap: Option<u8>) {
    let idle = sub.hidden || sub.bw_paused || sub.refused;
    if (height, cap, idle) == (sub.told_height, sub.told_cap, sub.told_idle) {
        return;
    }
    sub.told_height = height;
    sub.told_cap = cap;
    sub.told_idle = idle;
    let _ = sub
        .publisher_ref
        .send_message(ParticipantMsg::LayerPreference {
            track: sub.key,
            subscriber: me.clone(),
            max_height: height,
            max_layer: cap,
            idle,
        });
}

/// The layer choices a subscriber's bandwidth allocation has of a layered track, cheapest
/// first: ([`svc_layer_id`], the rate in bits/s it costs). `layers`: the layers up to the
/// one its tile asks for, smallest first, each with what its pictures of each temporal
/// layer arrive at. `cumulative`: each layer needs those below it too (VP9 spatial layers);
/// else it stands alone (simulcast).
///
/// Lower frame rates are offered of the lowest layer only: when even its full rate does
/// not fit, the picture slows down (to a quarter with three temporal layers) rather than
/// pausing; above it, each layer comes at its full frame rate, so a constrained subscriber
/// sees a fluid small picture rather than a sharp slideshow. (Measured on a 300 kbit/s
/// link: offering the upper layers at half rate too flapped between them, each switch up
/// costing a keyframe, for less throughput and 11 frames/s; BENCHMARKS.md.) A rung that
/// costs no more than a cheaper-ranked one replaces it, so the ladder's prices rise. The
/// full frame rate of the tile's layer is always its last rung.
fn layer_ladder(
    layers: &[(u8, [u32; SVC_TEMPORAL_LAYERS as usize])],
    cumulative: bool,
) -> Vec<(u8, u32)> {
    let mut ladder: Vec<(u8, u32)> = Vec::new();
    // Temporal layers the stream has: those its lowest layer sends.
    let temporal = layers
        .first()
        .and_then(|(_, r)| r.iter().rposition(|bps| *bps > 0))
        .map_or(1, |t| t + 1);
    for (i, (layer, _)) in layers.iter().enumerate() {
        let below = if cumulative {
            &layers[..=i]
        } else {
            &layers[i..=i]
        };
        let lowest = if i == 0 { 0 } else { temporal - 1 };
        for t in lowest..temporal {
            // The full rate: whatever its temporal layers above this one send too.
            let full = t + 1 == temporal;
            let upto = if full {
                SVC_TEMPORAL_LAYERS as usize
            } else {
                t + 1
            };
            let cost = below
                .iter()
                .flat_map(|(_, r)| &r[..upto])
                .fold(0u32, |sum, bps| sum.saturating_add(*bps));
            let id = svc_layer_id(*layer, if full { u8::MAX } else { t as u8 });
            while ladder.last().is_some_and(|(_, c)| *c >= cost) {
                ladder.pop();
            }
            ladder.push((id, cost));
        }
    }
    ladder
}

/// [`layer_ladder`] of a VP9 SVC track whose tile asks for spatial layer `top`: `rates[s][t]`
/// is what spatial layer `s`'s pictures of temporal layer `t` arrive at.
fn svc_ladder(rates: &[[u32; SVC_TEMPORAL_LAYERS as usize]], top: u8) -> Vec<(u8, u32)> {
    let top = usize::from(top).min(rates.len().saturating_sub(1));
    let layers: Vec<(u8, [u32; SVC_TEMPORAL_LAYERS as usize])> = rates[..rates.len().min(top + 1)]
        .iter()
        .enumerate()
        .map(|(s, r)| (s as u8, *r))
        .collect();
    layer_ladder(&layers, true)
}

/// The layer for a tile `max_height` pixels high: the lowest whose keyframes are at least
/// that high, else the highest (a layer whose size is not known yet counts as higher than
/// the known ones below it).
fn pick_layer(layers: &[(u8, Option<u16>)], max_height: u32) -> u8 {
    layers
        .iter()
        .find(|(_, h)| h.is_some_and(|h| u32::from(h) >= max_height))
        .or(layers.last())
        .map_or(0, |(l, _)| *l)
}

struct Subscription {
    key: TrackKey,
    track: TrackId,
    publisher_ref: ActorRef<ParticipantMsg>,
    sender: Option<SenderKey>,
    negotiated: bool,
    /// The stream's data side (forwarder, sealer, send stats), shared with the publisher.
    leg: Arc<SendLeg>,
    /// The leg has its sealer and destination (set when negotiated and connected).
    leg_ready: bool,
    last_keyframe_request: Option<Instant>,
    /// The client's keyframe requests relayed to the publisher: at most one per
    /// [`KEYFRAME_REQUEST_INTERVAL`] (coalesced, so PLI floods never reach its mailbox).
    last_client_keyframe_request: Option<Instant>,
    /// The client's NACKs: a retransmission budget, repeats within a round trip suppressed.
    retransmit: RetransmitLimiter,
    /// The publisher muted the track; the client hides its tile (both pause the forwarder).
    remote_muted: bool,
    hidden: bool,
    /// Our client refused the track (no codec in common): nothing goes to it, and it is
    /// not offered again (see `hearth_engine::transport::sdp`).
    refused: bool,
    /// The tile height the publisher was last told (simulcast layer choice).
    told_height: u32,
    /// The layer cap the publisher was last told (bandwidth allocation).
    told_cap: Option<u8>,
    /// What the publisher was last told of `hidden || bw_paused` (dynacast).
    told_idle: bool,
    /// Since when the bandwidth allocation has wanted this video paused (it is paused only
    /// after [`BW_PAUSE_AFTER`] of that).
    pause_wanted_since: Option<Instant>,
    /// Whose track it is, its kind, and whether it is a screen share (allocation).
    publisher: ParticipantId,
    audio: bool,
    screen: bool,
    /// Paused by the bandwidth allocation (its lowest layer does not fit our path now).
    bw_paused: bool,
    /// The leg's bytes sent at the last allocation, and the rate since.
    sent_seen: u64,
    rate: RateWindow,
}

impl Subscription {
    /// Asks the publisher for a keyframe of this track, for `from` (us).
    fn ask_for_keyframe(&self, from: &ParticipantId) {
        let _ = self
            .publisher_ref
            .send_message(ParticipantMsg::KeyframeRequest {
                track: self.key,
                from: from.clone(),
            });
    }

    /// Whether media should flow to the client now: not muted by the publisher, not hidden
    /// by the client, not paused by the bandwidth allocation, not refused by the client.
    /// Every change of one of these pauses or resumes the leg's forwarder by it.
    fn wants_media(&self) -> bool {
        !self.remote_muted && !self.hidden && !self.bw_paused && !self.refused
    }
}

/// One copy of a published packet: straight onto a subscriber's leg, or into its queue.
enum Target {
    Leg(Arc<SendLeg>),
    Queue(InboxSender<MediaItem, ParticipantMsg>),
}

enum SubOp {
    Add(Box<PublishedTrack>),
    Remove(TrackId),
}

pub struct ParticipantState {
    reg: crate::registry::Registration,
    /// What the client's sending mids carry (declared with its offers).
    sources: HashMap<String, crate::domain::TrackSource>,
    /// Bytes in and out of this participant, for the usage ledger.
    usage: Arc<crate::billing::UsageInterval>,
    id: ParticipantId,
    meeting: ActorRef<MeetingMsg>,
    signal: SignalSender,
    mux: Arc<UdpMux>,
    mux_hint: usize,
    registration: MuxRegistration,
    peer: WebRtcPeer,
    can_publish: bool,
    /// We never offer: subscriptions ride in the client's offers (WHIP, WHEP).
    client_offers_only: bool,
    /// The client's open data channels: (stream id, label).
    channels: Vec<(u16, String)>,
    data_limiter: crate::data::DataLimiter,
    /// Mids of tracks refused for lack of the publish grant (told once each).
    refused_mids: Vec<String>,
    ingress: Inbox<Datagram>,
    media: Inbox<MediaItem>,
    media_tx: InboxSender<MediaItem, ParticipantMsg>,
    wakeup: crate::timer::Wakeup,
    published: Vec<Published>,
    /// Boxed: a map's table holds several slots per entry, and a subscription is large.
    subscriptions: HashMap<TrackKey, Box<Subscription>>,
    /// Simulcast tracks we publish: each subscriber's leg and the layer it gets.
    layer_choices: HashMap<TrackKey, HashMap<ParticipantId, LayerChoice>>,
    /// Simulcast tracks we publish: the layers our client was told to pause (dynacast).
    layer_pauses: HashMap<TrackKey, LayerPauses>,
    /// How our client shows the tracks it receives (visible, height): kept for tracks it
    /// heard of before their subscription exists here (at most [`MAX_TRACK_PREFS`]).
    track_prefs: HashMap<TrackId, (bool, u32)>,
    /// Simulcast transceivers whose track the client withdrew (their late layers too).
    withdrawn_mids: Vec<String>,
    by_out_ssrc: HashMap<u32, TrackKey>,
    pending_ops: Vec<SubOp>,
    /// Offer again even without new subscription changes (a failed exchange).
    reoffer: bool,
    /// When our outstanding offer went out; it must be answered within NEGOTIATION_TIMEOUT.
    offer_sent_at: Option<Instant>,
    reports: ReportTimer,
    speaker: SpeakerConfig,
    wall_epoch: (Instant, SystemTime),
    stats: ParticipantStats,
    /// Queue drops already added to the node's counters: (media, ingress).
    drops_reported: (u64, u64),
    /// The transport's refusal counters already added to the node's metrics.
    transport_reported: crate::webrtc::PeerStats,
    scratch_datagrams: Vec<Datagram>,
    scratch_media: Vec<MediaItem>,
    /// Copies sealed for subscribers (as a publisher on their legs, or as a subscriber from
    /// its queue), sent together at the end of the burst that produced them.
    out_batch: SendBatch,
    /// Socket-arrival times of the sampled packets forwarded in the current media batch.
    forwarded_arrivals: Vec<Instant>,
    /// Copies this participant's actor sealed and sent (as a publisher on subscribers' legs,
    /// or as a subscriber from its queue): the forward-delay sample counter.
    fanned_out: u64,
    /// The path the legs send to (the transport's selected ICE path).
    leg_dest: Option<SocketAddr>,
    /// `hearth_forward_delay_seconds`: socket arrival → forwarded packet handed to the kernel.
    forward_delay: metrics::Histogram,
    leaving: bool,
    /// Congestion control of what we receive: estimate, probes, allocation.
    cc: crate::congestion::Congestion,
    /// When our client last asked for retransmissions (no probe right after).
    last_nack_at: Option<Instant>,
    /// The meeting's loudest speaker.
    active_speaker: Option<ParticipantId>,
    /// Drill hook: the next datagram on the driver's fast path panics.
    media_fault: bool,
}

/// The actor's state: the participant, behind a lock it shares with the UDP mux's drivers
/// (see [`IngressSink`]). The actor takes it for every message; a driver only tries it.
pub struct ParticipantCell {
    core: Arc<Mutex<ParticipantState>>,
}

/// Where the mux delivers this participant's datagrams.
///
/// SRTP and SRTCP (the media path) are handled right on the driver that received them when
/// the participant is idle: the driver takes the participant's lock if it is free, opens
/// the packet and fans it out to the subscribers' legs, with no mailbox message, task
/// wake-up or queue between the socket and the copies (the actor hop cost about 5 µs per
/// received packet). Everything else (STUN, DTLS), and media that finds the actor busy or
/// datagrams already queued (order is kept), goes through the ingress inbox to the actor.
/// When the transport raises an event (a new track, a lost connection) the actor is woken
/// and handles it, and the media queued behind it, in order.
///
/// A panic on the driver's fast path is contained: it poisons this participant's lock
/// alone, the driver carries on, and the actor fails on its next message (its supervisor
/// removes it and tells its client to reconnect), as if it had panicked itself.
struct IngressSink {
    inbox: InboxSender<Datagram, ParticipantMsg>,
    core: Weak<Mutex<ParticipantState>>,
}

impl IngressSink {
    /// Handles `datagram` on the calling driver if that is allowed now; gives it back if not.
    fn try_inline(&self, datagram: Datagram) -> Option<Datagram> {
        // SRTP and SRTCP only (RFC 7983: first byte 128..=191).
        if !matches!(datagram.data.first(), Some(128..=191)) || self.inbox.depth() > 0 {
            return Some(datagram);
        }
        let Some(core) = self.core.upgrade() else {
            return Some(datagram);
        };
        let mut slot = Some(datagram);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // The guard lives inside the closure: a panic drops it while unwinding, which
            // poisons the lock (the actor's next message sees that and fails).
            // Not taken (None): the actor holds the lock, or failed before.
            let mut state = core.try_lock().ok()?;
            // Datagrams queued meanwhile go first: leave this one to the actor too.
            if self.inbox.depth() > 0 || state.leaving {
                return None;
            }
            let datagram = slot.take()?;
            Some(state.on_datagram_inline(datagram))
        }));
        match outcome {
            // Handled; the actor has nothing to do.
            Ok(Some(false)) => None,
            // Handled, and the transport raised an event for the actor; or a panic: the
            // actor's next message fails it.
            Ok(Some(true)) | Err(_) => {
                self.inbox.wake();
                None
            }
            Ok(None) => slot,
        }
    }
}

impl DatagramSink for IngressSink {
    fn deliver(&self, datagram: Datagram) -> bool {
        match self.try_inline(datagram) {
            Some(datagram) => {
                self.inbox.push(datagram);
                false
            }
            None => true,
        }
    }

    /// Sends the copies the batch's datagrams produced. If the actor holds the lock now, it
    /// took it after our datagrams were handled, and every message it handles ends with a
    /// flush: the copies leave with it.
    fn end_of_batch(&self) {
        let Some(core) = self.core.upgrade() else {
            return;
        };
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if let Ok(mut state) = core.try_lock() {
                state.finish_inline();
            }
        }));
        if outcome.is_err() {
            self.inbox.wake();
        }
    }
}

const DRAIN_BATCH: usize = 256;
/// Sealed copies sent early, before the end of their burst, once they reach this many bytes
/// (or [`SEND_CHUNK`] datagrams): bounds the batch buffer of a big room's publisher.
const BATCH_BYTES: usize = 256 * 1024;
/// Starting capacity of the per-message scratch vectors: they grow to the largest batch seen
/// (at most [`DRAIN_BATCH`]) and keep it; most participants never need the full batch, and
/// 256 items of each kind up front were about 45 KiB per participant.
const SCRATCH_START: usize = 16;

/// Histogram of the time a forwarded packet spends in the node, in seconds: from its
/// publisher's datagram leaving the media socket to the kernel having taken the subscriber's
/// whole batch that carried the copy (queues, decryption, fan-out, the subscriber's turn,
/// encryption, `sendto`). The clock is read once per flushed batch, so a packet early in a
/// large batch is charged the rest of the batch's sends: an upper bound per packet.
pub const FORWARD_DELAY_METRIC: &str = "hearth_forward_delay_seconds";

/// One forwarded packet in this many is timed into [`FORWARD_DELAY_METRIC`] (recording
/// every packet cost about 2 % of the forwarding CPU; a sample keeps the distribution).
pub const FORWARD_DELAY_SAMPLE_EVERY: u64 = 8;

/// Bucket bounds for [`FORWARD_DELAY_METRIC`]: 25 µs to 1 s.
pub const FORWARD_DELAY_BUCKETS: &[f64] = &[
    25e-6, 50e-6, 100e-6, 200e-6, 500e-6, 1e-3, 2e-3, 5e-3, 10e-3, 20e-3, 50e-3, 100e-3, 250e-3,
    1.0,
];
const KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_millis(250);
/// At most one keyframe per this interval for packets asked for too long.
const NACK_KEYFRAME_INTERVAL: Duration = Duration::from_secs(1);
/// No bandwidth probe starts this soon after the client's last NACK.
const PROBE_QUIET_AFTER_NACK: Duration = Duration::from_secs(1);
/// A playing video is paused by the bandwidth allocation only after it has not fitted for
/// this long: a layer's rate measured over a second with a keyframe in it, or a dip of the
/// estimate, must not freeze the picture for seconds (meanwhile it gets its lowest layer).
const BW_PAUSE_AFTER: Duration = Duration::from_secs(2);
/// Retransmissions one subscriber's NACKs may cause: per second on average, and in a burst.
const RETRANSMIT_RATE: u32 = 200;
const RETRANSMIT_BURST: u32 = 100;
/// How long a client may take to answer the server's offer.
const NEGOTIATION_TIMEOUT: Duration = Duration::from_secs(15);

impl Actor for ParticipantActor {
    type Msg = ParticipantMsg;
    type State = ParticipantCell;
    type Arguments = ParticipantArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let now = Instant::now();
        let ufrag = random_string(16);
        let mut peer = WebRtcPeer::new(
            PeerSetup {
                advertised: args.advertised,
                certificate: args.certificate,
                ufrag: ufrag.clone(),
                pwd: random_string(32),
            },
            now,
        )?;
        peer.set_bind_senders_to_offers(args.client_offers_only);
        // WHIP/WHEP sessions have no data channels (nothing would relay their messages
        // under a grant they were not given).
        peer.set_data_channels(!args.client_offers_only);
        if args.data_channels && !args.client_offers_only {
            peer.offer_data_channels();
        }
        let (ingress, ingress_tx) =
            Inbox::new(1024, myself.clone(), || ParticipantMsg::DatagramsReady);
        let (media, media_tx) = Inbox::new(args.media_queue, myself.clone(), || {
            ParticipantMsg::MediaReady
        });
        // The sink holds the state weakly: the state owns the mux registration that owns it.
        let core = Arc::new_cyclic(|weak: &Weak<Mutex<ParticipantState>>| {
            let registration = args.mux.register(
                ufrag,
                Box::new(IngressSink {
                    inbox: ingress_tx,
                    core: weak.clone(),
                }),
            );
            // The meeting waits for this right after spawning us; if it is gone, so are we.
            let _ = args.link.send(media_tx.clone());
            let wakeup = crate::timer::Wakeup::spawn(myself.clone(), || ParticipantMsg::Tick);
            let mux_hint = rand::random::<u32>() as usize;
            metrics::gauge!("hearth_participants").increment(1.0);
            let kill_ref = myself.clone();
            let media_depth = media_tx.clone();
            let reg = args.actors.register(
                crate::registry::ActorSpec::new(
                    myself.get_id(),
                    crate::registry::ActorKind::Participant,
                    args.id.as_str(),
                )
                .parent(args.parent)
                .kill(move || kill_ref.send_message(ParticipantMsg::InjectFault).is_ok())
                .media_queue(move || media_depth.depth()),
            );
            Mutex::new(ParticipantState {
                sources: HashMap::new(),
                usage: args.usage,
                reg,
                id: args.id,
                meeting: args.meeting,
                signal: args.signal,
                mux: args.mux,
                mux_hint,
                registration,
                peer,
                can_publish: args.can_publish,
                client_offers_only: args.client_offers_only,
                channels: Vec::new(),
                data_limiter: crate::data::DataLimiter::new(now),
                refused_mids: Vec::new(),
                ingress,
                media,
                media_tx,
                wakeup,
                published: Vec::new(),
                subscriptions: HashMap::new(),
                layer_choices: HashMap::new(),
                layer_pauses: HashMap::new(),
                cc: crate::congestion::Congestion::new(),
                last_nack_at: None,
                active_speaker: None,
                track_prefs: HashMap::new(),
                withdrawn_mids: Vec::new(),
                by_out_ssrc: HashMap::new(),
                pending_ops: Vec::new(),
                reoffer: false,
                offer_sent_at: None,
                reports: {
                    let mut timer = ReportTimer::new(Duration::from_secs(1));
                    timer.handle_timeout(now);
                    timer
                },
                speaker: args.speaker,
                wall_epoch: args.wall_epoch,
                stats: ParticipantStats::default(),
                drops_reported: (0, 0),
                transport_reported: Default::default(),
                scratch_datagrams: Vec::with_capacity(SCRATCH_START),
                out_batch: SendBatch::default(),
                scratch_media: Vec::with_capacity(SCRATCH_START),
                forwarded_arrivals: Vec::with_capacity(SCRATCH_START),
                fanned_out: 0,
                leg_dest: None,
                forward_delay: metrics::histogram!(FORWARD_DELAY_METRIC),
                leaving: false,
                media_fault: false,
            })
        });
        Ok(ParticipantCell { core })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        cell: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Poisoned: a driver's fast path panicked while handling our media (contained
        // there); fail now, as if this actor had panicked.
        let Ok(mut guard) = cell.core.lock() else {
            return Err("participant failed on its media path".into());
        };
        let state = &mut *guard;
        let now = Instant::now();
        state.reg.handled();
        match msg {
            ParticipantMsg::Signal(signal) => state.on_signal(now, signal, &myself),
            ParticipantMsg::SetCanPublish(allowed) => state.set_can_publish(allowed),
            ParticipantMsg::VirtualRtpReady => {}
            ParticipantMsg::DatagramsReady => state.on_datagrams(&myself),
            ParticipantMsg::MediaReady => {
                // The hot path: forwarded packets only go out. Nothing here produces a stack
                // event or an inbound packet, so the rest of `after_message` (which walks
                // every handler of the stack) is skipped; the next other message or tick runs
                // it. Feedback and the timer are seen to, though: a driver may have handled
                // our media inline just before and left its end-of-batch work to us (it
                // found the lock taken).
                state.on_media(now, &myself);
                state.send_feedback(now);
                state.flush();
                state.record_forward_delays();
                state.arm_timer(now);
                return Ok(());
            }
            ParticipantMsg::Tick => {
                // A send leg of ours was poisoned by a panic in the publisher's fan-out: fail
                // this participant alone (its supervisor removes it, its client reconnects).
                if state.subscriptions.values().any(|s| s.leg.is_poisoned()) {
                    return Err(format!("participant {}: a send leg failed", state.id).into());
                }
                state.on_tick(now)
            }
            ParticipantMsg::Subscribe(track) => {
                tracing::debug!(participant = %state.id, track = %track.info.id, "subscribe queued");
                state.pending_ops.push(SubOp::Add(track))
            }
            ParticipantMsg::Unsubscribe { track } => state.pending_ops.push(SubOp::Remove(track)),
            ParticipantMsg::RemoteTrackMuted { track, muted } => {
                for sub in state.subscriptions.values_mut() {
                    if sub.track == track {
                        sub.remote_muted = muted;
                        if let Some(mut leg) = sub.leg.lock() {
                            if sub.wants_media() {
                                leg.forwarder.resume();
                            } else {
                                leg.forwarder.pause();
                            }
                        }
                    }
                }
            }
            ParticipantMsg::SetFanout { track, subscribers } => {
                let mut group = None;
                for p in state.published.iter_mut().filter(|p| p.info.id == track) {
                    p.fanout = Arc::clone(&subscribers);
                    if p.info.kind == MediaKind::Video {
                        // New subscribers need a keyframe to start decoding.
                        p.keyframes.request(now);
                    }
                    if p.layer.is_some() {
                        group = Some(p.group);
                    } else {
                        p.rebuild_targets();
                    }
                }
                if let Some(group) = group {
                    state.sync_layers(group);
                    // A new subscriber may need a paused layer: resume it now.
                    state.update_layer_pauses(now, group);
                }
            }
            ParticipantMsg::AttachLeg { track, leg } => {
                if state.is_layered(track) {
                    let choice = LayerChoice {
                        leg,
                        current: None,
                        target: 0,
                        max_height: u32::MAX,
                        max_layer: None,
                        idle: false,
                    };
                    let subscriber = choice.leg.subscriber.clone();
                    state
                        .layer_choices
                        .entry(track)
                        .or_default()
                        .insert(subscriber, choice);
                    state.choose_layers(now, track);
                } else if let Some(i) = state.published.iter().position(|p| p.key == track) {
                    let p = &mut state.published[i];
                    p.legs.insert(leg.subscriber.clone(), leg);
                    p.rebuild_targets();
                    state.choose_svc(now, i);
                }
            }
            ParticipantMsg::DetachLeg { track, subscriber } => {
                if state.is_layered(track) {
                    if let Some(choices) = state.layer_choices.get_mut(&track) {
                        choices.remove(&subscriber);
                    }
                    state.sync_layers(track);
                } else if let Some(p) = state.published.iter_mut().find(|p| p.key == track) {
                    p.legs.remove(&subscriber);
                    if let Some(svc) = &mut p.svc {
                        svc.prefs.remove(&subscriber);
                    }
                    p.rebuild_targets();
                }
            }
            ParticipantMsg::LayerPreference {
                track,
                subscriber,
                max_height,
                max_layer,
                idle,
            } => {
                if let Some(choice) = state
                    .layer_choices
                    .get_mut(&track)
                    .and_then(|c| c.get_mut(&subscriber))
                {
                    choice.max_height = max_height;
                    choice.max_layer = max_layer;
                    choice.idle = idle;
                    state.choose_layers(now, track);
                } else if let Some(i) = state
                    .published
                    .iter()
                    .position(|p| p.key == track && p.svc.is_some())
                {
                    if let Some(svc) = &mut state.published[i].svc {
                        svc.prefs.insert(subscriber, (max_height, max_layer));
                    }
                    state.choose_svc(now, i);
                }
            }
            ParticipantMsg::ActiveSpeaker(speaker) => {
                if state.active_speaker != speaker {
                    state.active_speaker = speaker;
                    if state.cc.limited() {
                        state.allocate_bandwidth(now);
                    }
                }
            }
            ParticipantMsg::KeyframeRequest { track, from } => {
                // A simulcast track: the layers that subscriber is on (or moving to).
                let wanted: Vec<u8> = state
                    .layer_choices
                    .get(&track)
                    .and_then(|c| c.get(&from))
                    .map(|c| c.current.into_iter().chain([c.target]).collect())
                    .unwrap_or_default();
                for p in state.published.iter_mut().filter(|p| p.group == track) {
                    if p.layer
                        .is_none_or(|l| wanted.is_empty() || wanted.contains(&l))
                    {
                        p.keyframes.request(now);
                    }
                }
            }
            ParticipantMsg::Retransmit {
                track,
                ssrc,
                seqs,
                to,
            } => state.on_retransmit(now, track, ssrc, &seqs, &to),
            ParticipantMsg::Leave(reason) => {
                state.leave(reason, &myself);
                return Ok(());
            }
            ParticipantMsg::InjectFault => {
                panic!("fault injected into participant {}", state.id);
            }
            ParticipantMsg::InjectMediaFault => state.media_fault = true,
            ParticipantMsg::Data(message) => state.deliver_data(now, &message),
            ParticipantMsg::Stats(reply) => {
                let mut stats = state.stats.clone();
                stats.connected = state.peer.is_connected();
                stats.published_tracks =
                    state.published.iter().filter(|p| p.key == p.group).count();
                stats.subscriptions = state.subscriptions.len();
                stats.packets_sent = state
                    .subscriptions
                    .values()
                    .filter_map(|s| s.leg.lock().map(|l| l.sent))
                    .sum();
                stats.media_dropped = state.media.dropped();
                stats.ingress_dropped = state.ingress.dropped();
                stats.media_queue_depth = state.media.depth();
                stats.data_channels = state.channels.len();
                let bwe = state.cc.stats();
                stats.bwe_estimate_bps = bwe.estimate_bps;
                stats.bwe_limited = bwe.limited;
                stats.bwe_acked_bps = bwe.acked_bps.unwrap_or(0);
                stats.bwe_probes = bwe.probes;
                stats.bwe_padding_bytes = state.cc.padding_bytes;
                let _ = reply.send(stats);
            }
        }
        if !state.leaving {
            state.after_message(now, &myself);
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        cell: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let mut guard = cell
            .core
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let state = &mut *guard;
        if !state.leaving {
            // Stopped from outside (the meeting was restarted or the node shuts down): the
            // client's session is gone, it should join again.
            state.signal.send(ServerSignal::Reconnect(
                "session stopped by the server".into(),
            ));
        }
        state.peer.close();
        state.flush();
        Ok(())
    }
}

impl Drop for ParticipantState {
    fn drop(&mut self) {
        // Runs on clean stops and after a panic alike; the mux registration drops with us.
        // Publishers skip closed legs at once (and drop them at their next fan-out change).
        for sub in self.subscriptions.values() {
            sub.leg.close();
        }
        metrics::gauge!("hearth_participants").decrement(1.0);
    }
}

impl Published {
    /// The fan-out targets: each subscriber in the meeting's list, by its leg when it
    /// attached one (closed legs are dropped here), else by its media queue.
    fn rebuild_targets(&mut self) {
        self.legs.retain(|_, leg| leg.is_open());
        self.targets = self
            .fanout
            .iter()
            .map(|link| match self.legs.get(&link.participant) {
                Some(leg) => Target::Leg(Arc::clone(leg)),
                None => Target::Queue(link.media.clone()),
            })
            .collect();
    }
}

impl ParticipantState {
    fn after_message(&mut self, now: Instant, myself: &ActorRef<ParticipantMsg>) {
        self.process_peer(now, myself);
        if self.leaving {
            return;
        }
        self.send_feedback(now);
        if let Some(sent) = self.offer_sent_at
            && now.duration_since(sent) > NEGOTIATION_TIMEOUT
        {
            self.signal.send(ServerSignal::Error(SignalError::fatal(
                SignalErrorCode::NegotiationFailed,
                "no answer to the server's offer in time",
            )));
            self.signal
                .send(ServerSignal::Reconnect("negotiation timed out".into()));
            self.leave(LeaveReason::Disconnected, myself);
            return;
        }
        self.renegotiate(now);
        self.refresh_legs();
        self.flush();
        self.record_forward_delays();
        self.arm_timer(now);
    }

    fn on_signal(&mut self, now: Instant, signal: ClientSignal, myself: &ActorRef<ParticipantMsg>) {
        match signal {
            ClientSignal::Offer { sdp, sources } => {
                // Declared per offer; a mid keeps what it was declared as.
                for (mid, source) in sources {
                    if self.sources.len() < 64 || self.sources.contains_key(&mid) {
                        self.sources.insert(mid, source);
                    }
                }
                if self.peer.has_local_offer() {
                    tracing::debug!(participant = %self.id, "client offer ignored (glare)");
                    // Glare: we are the impolite peer and ignore the client's offer; the
                    // client rolls back, answers ours, then offers again.
                    return;
                }
                tracing::trace!(participant = %self.id, %sdp, "client offer");
                match self.peer.apply_offer(now, sdp) {
                    Ok(answer) => {
                        tracing::trace!(participant = %self.id, %answer, "our answer");
                        self.legs_renegotiated();
                        if self.client_offers_only {
                            // Our senders placed in the client's sections are agreed now.
                            self.subscriptions_negotiated();
                        }
                        tracing::debug!(participant = %self.id, "answered client offer");
                        self.signal.send(ServerSignal::Answer(answer));
                    }
                    Err(e) => self.signal_error(&e),
                }
            }
            ClientSignal::Answer(sdp) => {
                tracing::trace!(participant = %self.id, %sdp, "client answer");
                self.on_answer(now, sdp);
            }
            ClientSignal::Candidate(candidate) => {
                if let Err(e) = self.peer.add_remote_candidate(candidate) {
                    self.signal_error(&e);
                }
            }
            ClientSignal::IceRestart {
                local_ufrag,
                local_pwd,
                remote_ufrag,
            } => {
                // Signaling clients restart ICE with an offer; this is for WHIP/WHEP.
                if !self.client_offers_only {
                    return;
                }
                if !self.registration.add_ufrag(local_ufrag.clone()) {
                    tracing::warn!(participant = %self.id, "too many ICE restarts; ignored");
                    return;
                }
                tracing::debug!(participant = %self.id, "ICE restart");
                self.peer.restart_ice(local_ufrag, local_pwd, &remote_ufrag);
            }
            ClientSignal::Mute { track, muted } => {
                if !self.published.iter().any(|p| p.info.id == track) {
                    self.signal.send(ServerSignal::Error(SignalError::new(
                        SignalErrorCode::TrackNotFound,
                        format!("{track} is not one of your tracks"),
                    )));
                    return;
                }
                let mut changed = false;
                // Every simulcast layer of the track.
                for p in self.published.iter_mut().filter(|p| p.info.id == track) {
                    if p.info.muted != muted {
                        p.info.muted = muted;
                        changed = true;
                        if !muted && p.info.kind == MediaKind::Video {
                            p.keyframes.request(now);
                        }
                    }
                }
                if changed {
                    let _ = self.meeting.send_message(MeetingMsg::TrackMuted {
                        participant: self.id.clone(),
                        track,
                        muted,
                    });
                }
            }
            ClientSignal::Unpublish { track } => {
                let Some(index) = self.published.iter().position(|p| p.info.id == track) else {
                    self.signal.send(ServerSignal::Error(SignalError::new(
                        SignalErrorCode::TrackNotFound,
                        format!("{track} is not one of your tracks"),
                    )));
                    return;
                };
                self.unpublish(index);
            }
            ClientSignal::TrackSettings {
                track,
                visible,
                height,
            } => self.track_settings(&track, visible, height),
            ClientSignal::SetCaptions { enabled, language } => {
                // The meeting checks the grant and answers errors on our signaling.
                let _ = self.meeting.send_message(MeetingMsg::SetCaptions {
                    by: Some(self.id.clone()),
                    enabled,
                    language,
                    engine: None,
                    reply: None,
                });
            }
            ClientSignal::Leave => self.leave(LeaveReason::Left, myself),
        }
    }

    fn on_answer(&mut self, now: Instant, sdp: String) {
        match self.peer.apply_answer(now, sdp) {
            Ok(()) => {
                tracing::debug!(participant = %self.id, "client answered");
                self.legs_renegotiated();
                self.offer_sent_at = None;
                self.subscriptions_negotiated();
            }
            Err(e) => {
                self.signal_error(&e);
                if self.peer.has_local_offer() {
                    // Our offer is still outstanding and the answer was unusable: take the
                    // offer back and make a fresh one with the same changes.
                    self.peer.rollback(now);
                    self.offer_sent_at = None;
                    self.reoffer = true;
                }
            }
        }
    }

    /// Subscriptions whose sender the last exchange agreed start forwarding (from a
    /// keyframe); those our client refused stop for good.
    fn subscriptions_negotiated(&mut self) {
        for sub in self.subscriptions.values_mut() {
            let Some(sender) = sub.sender else { continue };
            if !sub.refused && self.peer.is_refused(sender) {
                sub.refused = true;
                sub.leg_ready = false;
                // Paused for good (its sealer stays: a new one for the same SSRC would
                // restart the SRTP sequence).
                if let Some(mut leg) = sub.leg.lock() {
                    leg.forwarder.pause();
                }
                tracing::info!(participant = %self.id, track = %sub.track,
                    "the client refused the track (it cannot decode its codec): not sent");
                let (height, cap) = (sub.told_height, sub.told_cap);
                tell_layer_preference(sub, &self.id, height, cap);
            }
            // Client-offers-only: a sender no client section took yet waits for the next
            // offer.
            if sub.negotiated
                || (self.client_offers_only && self.peer.sender_payload_type(sender).is_none())
            {
                continue;
            }
            sub.negotiated = true;
            sub.leg_ready = false;
            if sub.leg.lock().is_some_and(|l| l.forwarder.needs_keyframe()) {
                sub.ask_for_keyframe(&self.id);
            }
        }
    }

    fn signal_error(&self, e: &PeerError) {
        let code = match e {
            PeerError::InvalidSdp(_) => SignalErrorCode::InvalidSdp,
            PeerError::Negotiation(_) => SignalErrorCode::NegotiationFailed,
            PeerError::InvalidCandidate(_) => SignalErrorCode::InvalidCandidate,
            PeerError::Transport(_) => SignalErrorCode::Internal,
        };
        self.signal
            .send(ServerSignal::Error(SignalError::new(code, e.to_string())));
    }

    fn leave(&mut self, reason: LeaveReason, myself: &ActorRef<ParticipantMsg>) {
        if self.leaving {
            return;
        }
        self.leaving = true;
        for sub in self.subscriptions.values() {
            sub.leg.close();
        }
        self.flush_drop_counters();
        tracing::debug!(participant = %self.id, reason = reason.as_str(), transport = ?self.peer.stats(), channels = ?self.peer.channel_stats(), "leaving");
        self.peer.close();
        self.flush();
        myself.stop(Some(reason.as_str().to_owned()));
    }

    /// The driver's fast path (see [`IngressSink`]): one SRTP or SRTCP datagram, handled
    /// as the actor would; the copies wait in the send batch for [`Self::finish_inline`] at
    /// the end of the driver's batch. True if the transport raised an event: the actor must
    /// run (its full loop handles the event first, then the media the event held back).
    fn on_datagram_inline(&mut self, d: Datagram) -> bool {
        if self.media_fault {
            panic!(
                "fault injected into participant {} on a media driver",
                self.id
            );
        }
        self.usage.add_in(d.data.len() as u64);
        self.peer.handle_datagram(d.at, d.from, d.data);
        if self.peer.has_events() {
            return true;
        }
        while let Some(inbound) = self.peer.poll_inbound() {
            match inbound {
                Inbound::Rtp(packet) => self.publish_packet(packet),
                Inbound::Feedback(feedback) => self.on_feedback(d.at, feedback),
            }
        }
        false
    }

    /// The end of a driver's batch that [`Self::on_datagram_inline`] took part in: what an
    /// actor message ends with (feedback due, the batch sent, the timer).
    fn finish_inline(&mut self) {
        let now = Instant::now();
        self.send_feedback(now);
        self.flush();
        self.record_forward_delays();
        self.arm_timer(now);
    }

    fn on_datagrams(&mut self, myself: &ActorRef<ParticipantMsg>) {
        let mut batch = std::mem::take(&mut self.scratch_datagrams);
        self.ingress.drain(&mut batch, DRAIN_BATCH);
        let mut bytes = 0u64;
        for d in batch.drain(..) {
            bytes += d.data.len() as u64;
            self.peer.handle_datagram(d.at, d.from, d.data);
        }
        self.usage.add_in(bytes);
        self.scratch_datagrams = batch;
        if self.ingress.has_pending() {
            let _ = myself.send_message(ParticipantMsg::DatagramsReady);
        }
    }

    /// Drains the peer connection's events and received media.
    fn process_peer(&mut self, now: Instant, myself: &ActorRef<ParticipantMsg>) {
        while let Some(event) = self.peer.poll_event() {
            match event {
                PeerEvent::LocalCandidate(c) => {
                    self.signal.send(ServerSignal::Candidate(c));
                }
                PeerEvent::Connected => {
                    tracing::debug!(participant = %self.id, "media connected");
                }
                PeerEvent::Gone(why) => {
                    tracing::info!(participant = %self.id, why, stats = ?self.peer.stats(), "media connection gone");
                    if why == transport::CLOSED_BY_PEER {
                        // The client closed its connection on purpose (pc.close(), a closed
                        // tab): it left, there is nothing to reconnect.
                        self.leave(LeaveReason::Left, myself);
                        return;
                    }
                    self.signal.send(ServerSignal::Reconnect(format!(
                        "media connection lost: {why}"
                    )));
                    self.leave(LeaveReason::Disconnected, myself);
                    return;
                }
                PeerEvent::PathValidated(addr) => self.registration.learn(addr),
                PeerEvent::PathExpired(addr) => self.registration.forget(addr),
                PeerEvent::TrackOpened(track) => self.on_track_opened(now, track),
                PeerEvent::TrackClosed { stack_id } => {
                    if let Some(index) = self.published.iter().position(|p| p.stack_id == stack_id)
                    {
                        self.unpublish(index);
                    }
                }
                PeerEvent::ChannelOpened { id, label } => {
                    tracing::debug!(participant = %self.id, id, %label, "data channel opened");
                    self.channels.retain(|(c, _)| *c != id);
                    self.channels.push((id, label));
                    self.report_data_labels();
                }
                PeerEvent::ChannelClosed { id } => {
                    self.channels.retain(|(c, _)| *c != id);
                    self.report_data_labels();
                }
                PeerEvent::ChannelMessage { id, binary, data } => {
                    self.relay_data(now, id, binary, data)
                }
            }
        }
        while let Some(inbound) = self.peer.poll_inbound() {
            match inbound {
                Inbound::Rtp(packet) => self.publish_packet(packet),
                Inbound::Feedback(feedback) => self.on_feedback(now, feedback),
            }
        }
    }

    /// The client shows `track` (or not) in a tile `height` pixels high: a hidden one is
    /// paused (nothing is sent for it), shown again it resumes from a keyframe; a simulcast
    /// publisher is told the height to pick the layer.
    fn track_settings(&mut self, track: &TrackId, visible: bool, height: u32) {
        if self.track_prefs.len() >= MAX_TRACK_PREFS && !self.track_prefs.contains_key(track) {
            // Full: keep only the settings of tracks we receive.
            let subscriptions = &self.subscriptions;
            self.track_prefs
                .retain(|t, _| subscriptions.values().any(|s| s.track == *t));
            if self.track_prefs.len() >= MAX_TRACK_PREFS {
                return;
            }
        }
        tracing::trace!(participant = %self.id, %track, visible, height, "track settings");
        self.track_prefs.insert(track.clone(), (visible, height));
        self.apply_track_settings(track);
    }

    /// Applies the client's settings of `track` to its subscription, if it has one yet.
    fn apply_track_settings(&mut self, track: &TrackId) {
        let Some(&(visible, height)) = self.track_prefs.get(track) else {
            return;
        };
        let id = self.id.clone();
        let Some(sub) = self.subscriptions.values_mut().find(|s| s.track == *track) else {
            return;
        };
        let hidden = !visible;
        if hidden != sub.hidden {
            sub.hidden = hidden;
            if let Some(mut leg) = sub.leg.lock() {
                if sub.wants_media() {
                    leg.forwarder.resume();
                } else {
                    leg.forwarder.pause();
                }
            }
            if sub.wants_media() {
                sub.ask_for_keyframe(&self.id);
            }
        }
        let height = if height == 0 {
            u32::MAX
        } else {
            height.min(16_384)
        };
        let cap = sub.told_cap;
        tell_layer_preference(sub, &id, height, cap);
    }

    /// Tells the meeting which labels we can receive on.
    fn report_data_labels(&self) {
        let mut labels: Vec<String> = self.channels.iter().map(|(_, l)| l.clone()).collect();
        labels.sort_unstable();
        labels.dedup();
        let _ = self.meeting.send_message(MeetingMsg::DataLabels {
            participant: self.id.clone(),
            labels,
        });
    }

    /// A message the client sent on a data channel: to the meeting, which relays it to the
    /// others' channels of the same label, if within the limits (see [`crate::data`]). Sending
    /// needs the publish grant.
    fn relay_data(&mut self, now: Instant, id: u16, binary: bool, data: bytes::Bytes) {
        let Some((_, label)) = self.channels.iter().find(|(c, _)| *c == id) else {
            return;
        };
        let reason = if !self.can_publish {
            Some("not_permitted")
        } else if data.len() > crate::data::MAX_RELAYED_BYTES {
            Some("too_large")
        } else if !self.data_limiter.allow(now, data.len()) {
            Some("rate")
        } else {
            None
        };
        if let Some(reason) = reason {
            self.stats.data_dropped += 1;
            metrics::counter!("hearth_data_dropped_total", "reason" => reason).increment(1);
            return;
        }
        self.stats.data_in += 1;
        metrics::counter!("hearth_data_messages_total", "direction" => "in").increment(1);
        let _ = self.meeting.send_message(MeetingMsg::Data {
            from: self.id.clone(),
            label: label.clone(),
            binary,
            data,
        });
    }

    /// A relayed message for our channel of its label (none: not for us).
    fn deliver_data(&mut self, now: Instant, message: &crate::data::DataMessage) {
        if message.from == self.id {
            return;
        }
        let Some((id, _)) = self.channels.iter().find(|(_, l)| *l == message.label) else {
            return;
        };
        match self
            .peer
            .send_data(now, *id, message.binary, &message.envelope)
        {
            Ok(()) => {
                self.stats.data_out += 1;
                metrics::counter!("hearth_data_messages_total", "direction" => "out").increment(1);
            }
            Err(e) => {
                self.stats.data_dropped += 1;
                let reason = match e {
                    transport::ChannelSendError::Backpressure(_) => "backpressure",
                    transport::ChannelSendError::TooLarge(_) => "too_large",
                    _ => "closed",
                };
                metrics::counter!("hearth_data_dropped_total", "reason" => reason).increment(1);
            }
        }
    }

    /// The API granted or revoked publishing. On a revoke the meeting has unpublished our
    /// tracks (and emptied their fan-out); the transceivers stay, so a grant back announces
    /// them again and they reappear for everyone, with the same track ids.
    fn set_can_publish(&mut self, allowed: bool) {
        if allowed == self.can_publish {
            return;
        }
        self.can_publish = allowed;
        if allowed {
            self.refused_mids.clear();
            for p in self.published.iter().filter(|p| p.key == p.group) {
                let _ = self.meeting.send_message(MeetingMsg::TrackPublished {
                    participant: self.id.clone(),
                    key: p.key,
                    info: p.info.clone(),
                    codec: p.codec.clone(),
                });
            }
        }
    }

    fn on_track_opened(&mut self, now: Instant, track: crate::webrtc::InboundTrack) {
        if !self.can_publish {
            // The stack reports an ignored track again as its packets keep coming: tell the
            // client once per transceiver.
            if !self.refused_mids.contains(&track.mid) {
                self.refused_mids.push(track.mid);
                self.signal.send(ServerSignal::Error(SignalError::new(
                    SignalErrorCode::PermissionDenied,
                    "your token does not allow publishing; the track is ignored",
                )));
            }
            return;
        }
        let layer = track.layer.map(|(l, _)| l);
        if layer.is_some() && self.withdrawn_mids.contains(&track.mid) {
            return;
        }
        if let Some(existing) = self
            .published
            .iter_mut()
            .find(|p| p.info.mid == track.mid && p.layer == layer)
        {
            // Same transceiver (and layer), new SSRC (the browser restarted its encoder or
            // replaced the track): keep the track id; subscribers' forwarders see a source
            // switch.
            existing.ssrc = track.ssrc;
            existing.stack_id = track.stack_id;
            existing.recv = ReceiveStats::new(track.ssrc, track.codec.clock_rate);
            return;
        }
        // Another layer of a simulcast track we publish already: ours alone (the meeting
        // knows the track by its first layer).
        let sibling = self
            .published
            .iter()
            .find(|p| p.info.mid == track.mid && p.layer.is_some() && layer.is_some())
            .map(|p| (p.group, p.info.clone(), Arc::clone(&p.fanout)));
        let video = track.kind == MediaKind::Video;
        let (group, info, fanout, announce) = match sibling {
            Some((group, info, fanout)) => (Some(group), info, fanout, false),
            None => (
                None,
                TrackInfo {
                    id: TrackId::random(),
                    kind: track.kind,
                    mime_type: track.codec.mime_type.clone(),
                    muted: false,
                    mid: track.mid.clone(),
                    source: self.sources.get(&track.mid).copied().unwrap_or_default(),
                },
                Arc::from(Vec::new()),
                true,
            ),
        };
        let key = TrackKey::next();
        let published = Published {
            key,
            group: group.unwrap_or(key),
            layer,
            dims: None,
            last_packet: None,
            rate: RateWindow::default(),
            ssrc: track.ssrc,
            stack_id: track.stack_id,
            recv: ReceiveStats::new(track.ssrc, track.codec.clock_rate),
            nack: video.then(|| NackGenerator::new(NackConfig::default())),
            cache: video.then(|| RetransmissionCache::new(1024, Duration::from_secs(2))),
            keyframes: KeyframeRequester::new(Duration::from_millis(500)),
            level: (!video).then(|| AudioLevelMeter::new(self.speaker, now)),
            last_loudness: 0.0,
            svc: (layer.is_none()
                && matches!(
                    track.codec.codec,
                    hearth_engine::media::Codec::Vp9 | hearth_engine::media::Codec::Av1
                ))
            .then(Box::default),
            temporal_rates: (layer.is_some()
                && track.codec.codec == hearth_engine::media::Codec::Vp8)
                .then(Box::default),
            fanout,
            legs: HashMap::new(),
            targets: Vec::new(),
            codec: track.codec,
            info,
        };
        let group = published.group;
        if announce {
            let _ = self.meeting.send_message(MeetingMsg::TrackPublished {
                participant: self.id.clone(),
                key: published.key,
                info: published.info.clone(),
                codec: published.codec.clone(),
            });
        }
        // One slot at a time: a published track's state is large, and `Vec`'s first growth
        // would make room for four (most participants publish one or two).
        self.published.reserve_exact(1);
        self.published.push(published);
        if layer.is_some() {
            self.choose_layers(now, group);
        }
    }

    /// Withdraws the track of `published[index]` (every layer of a simulcast track).
    fn unpublish(&mut self, index: usize) {
        let group = self.published[index].group;
        let track = self.published[index].info.id.clone();
        if self.published[index].layer.is_some() {
            // Layers of this transceiver that start later stay withdrawn.
            let mid = self.published[index].info.mid.clone();
            if self.withdrawn_mids.len() >= 16 {
                self.withdrawn_mids.remove(0);
            }
            self.withdrawn_mids.push(mid);
        }
        self.published.retain(|p| p.group != group);
        self.layer_choices.remove(&group);
        self.layer_pauses.remove(&group);
        let _ = self.meeting.send_message(MeetingMsg::TrackUnpublished {
            participant: self.id.clone(),
            track,
        });
    }

    /// True if `track` is one of our simulcast tracks.
    fn is_layered(&self, track: TrackKey) -> bool {
        self.published
            .iter()
            .any(|p| p.group == track && p.layer.is_some())
    }

    /// Chooses each subscriber's layer of simulcast track `group` again (a tile changed, a
    /// layer appeared or told its size); a keyframe is asked of every layer switched to.
    /// The subscriber's bandwidth allocation chooses from a ladder of the layers up to its
    /// tile's, VP8 layers at their lower frame rates too ([`layer_ladder`]); a cap it sets
    /// names a layer and a temporal layer ([`svc_layer_id`]).
    fn choose_layers(&mut self, now: Instant, group: TrackKey) {
        let layers = self.live_layers(group, now, true);
        // Each layer's rate per temporal layer (all in the top one when it has none).
        let rates: Vec<(u8, [u32; SVC_TEMPORAL_LAYERS as usize])> = self
            .published
            .iter()
            .filter(|p| p.group == group)
            .filter_map(|p| {
                let mut r = [0u32; SVC_TEMPORAL_LAYERS as usize];
                match &p.temporal_rates {
                    Some(t) if t.iter().skip(1).any(|w| w.steady_bps() > 0) => {
                        r = t.map(|w| w.steady_bps());
                    }
                    _ => r[0] = p.rate.steady_bps(),
                }
                Some((p.layer?, r))
            })
            .collect();
        let mut keyframes = Vec::new();
        if let Some(choices) = self.layer_choices.get_mut(&group) {
            // Subscribers gone (their leg closed) are forgotten.
            choices.retain(|_, c| c.leg.is_open());
            for choice in choices.values_mut() {
                let by_height = pick_layer(&layers, choice.max_height);
                let position = |l: u8| layers.iter().position(|(x, _)| *x == l);
                // The subscriber's bandwidth cap, if it is below what the tile asks for.
                let (target, temporal) =
                    match (choice.max_layer.map(svc_layer_targets), position(by_height)) {
                        (Some((cap, temporal)), Some(want)) => match position(cap) {
                            Some(cap) if cap < want => (layers[cap].0, temporal),
                            Some(cap) if cap == want => (by_height, temporal),
                            Some(_) => (by_height, u8::MAX),
                            // The capped layer does not send now: the smallest one that does.
                            None => (layers[0].0, temporal),
                        },
                        _ => (by_height, u8::MAX),
                    };
                // What the subscriber's allocation may choose from: up to the tile's layer.
                if let (Some(want), Some(mut leg)) = (position(by_height), choice.leg.lock()) {
                    let offered: Vec<(u8, [u32; SVC_TEMPORAL_LAYERS as usize])> = layers[..=want]
                        .iter()
                        .map(|(l, _)| {
                            (
                                *l,
                                rates
                                    .iter()
                                    .find(|(x, _)| x == l)
                                    .map_or([0; SVC_TEMPORAL_LAYERS as usize], |(_, r)| *r),
                            )
                        })
                        .collect();
                    leg.layers = layer_ladder(&offered, false);
                    if let Some(vp8) = leg.vp8.as_mut() {
                        vp8.set_temporal_target(temporal);
                    }
                }
                tracing::trace!(participant = %self.id, subscriber = %choice.leg.subscriber, ?layers, max_height = choice.max_height, target, temporal, current = ?choice.current, "simulcast layer");
                if choice.target != target || choice.current.is_none() {
                    choice.target = target;
                    // An idle subscriber (tile hidden, paused, refused) waits for nothing:
                    // it asks for its keyframe when it resumes.
                    if choice.current != Some(target) && !choice.idle {
                        keyframes.push(target);
                    }
                }
            }
        }
        for p in self.published.iter_mut().filter(|p| p.group == group) {
            if p.layer.is_some_and(|l| keyframes.contains(&l)) {
                p.keyframes.request(now);
            }
        }
        self.sync_layers(group);
        self.update_layer_pauses(now, group);
    }

    /// Chooses each subscriber's spatial and temporal layers of VP9 track `published[index]`
    /// (nothing for other tracks, or before its scalability structure told its spatial
    /// layers). The tile's height picks the spatial layer; the subscriber's
    /// bandwidth allocation may cap it lower, choosing from a ladder of (spatial, temporal)
    /// pairs up to the tile's layer, each priced at the rate of the layers it needs
    /// ([`svc_ladder`]). A subscriber moving up a spatial layer needs a keyframe: one is
    /// asked for (temporal layers rise at the publisher's switching points).
    fn choose_svc(&mut self, now: Instant, index: usize) {
        let Some(p) = self.published.get_mut(index) else {
            return;
        };
        let Some(svc) = &p.svc else {
            return;
        };
        // One spatial layer (`L1T3`, or a publisher whose uplink dropped its upper ones)
        // still has temporal layers to choose from.
        let count = usize::from(svc.layers).min(VP9_MAX_SPATIAL);
        if count < 1 {
            return;
        }
        let layers: Vec<(u8, Option<u16>)> = (0..count)
            .map(|s| (s as u8, Some(svc.heights[s]).filter(|h| *h > 0)))
            .collect();
        let rates: Vec<[u32; SVC_TEMPORAL_LAYERS as usize]> = svc.rates[..count]
            .iter()
            .map(|r| r.map(|w| w.steady_bps()))
            .collect();
        let mut keyframe = false;
        for (subscriber, leg) in &p.legs {
            let (max_height, cap) = svc
                .prefs
                .get(subscriber)
                .copied()
                .unwrap_or((u32::MAX, None));
            let by_height = pick_layer(&layers, max_height);
            let top = svc_layer_id(by_height, u8::MAX);
            let (spatial, temporal) = svc_layer_targets(cap.map_or(top, |c| c.min(top)));
            let Some(mut st) = leg.lock() else {
                continue;
            };
            st.layers = svc_ladder(&rates, by_height);
            if st.layers.len() < 2 {
                // Nothing to choose (no layer indices, or not measured yet): the allocation
                // prices the track at what it sends.
                st.layers.clear();
            }
            let paused = st.forwarder.is_paused();
            if let Some(selector) = st.svc.as_mut()
                && (selector.target(), selector.temporal_target()) != (spatial, temporal)
            {
                tracing::debug!(participant = %self.id, subscriber = %subscriber, track = %p.info.id,
                    spatial, temporal, current = ?selector.current(),
                    current_temporal = ?selector.current_temporal(), "svc layer");
                selector.set_target(spatial);
                selector.set_temporal_target(temporal);
                keyframe |= selector.needs_keyframe() && !paused;
            }
        }
        if keyframe {
            p.keyframes.request(now);
        }
    }

    /// Dynacast: the layers of simulcast track `group` that somebody receives or is
    /// moving to, and the lowest one always; a fan-out member without a leg yet (a
    /// subscriber still negotiating, an API tap) needs the best one. Bit `l`: layer `l`.
    fn needed_layers(&self, now: Instant, group: TrackKey) -> u64 {
        let bit = |l: u8| if l < 64 { 1u64 << l } else { 0 };
        let layers = self.live_layers(group, now, true);
        // The lowest by size, and the first encoding (clients never pause it).
        let mut needed = bit(0) | layers.first().map_or(0, |(l, _)| bit(*l));
        let empty = HashMap::new();
        let choices = self.layer_choices.get(&group).unwrap_or(&empty);
        for c in choices.values().filter(|c| c.leg.is_open() && !c.idle) {
            needed |= bit(c.target) | c.current.map_or(0, bit);
        }
        let untracked = self
            .published
            .iter()
            .find(|p| p.group == group)
            .is_some_and(|p| {
                p.fanout
                    .iter()
                    .any(|l| !choices.contains_key(&l.participant))
            });
        if untracked && let Some((best, _)) = layers.last() {
            needed |= bit(*best);
        }
        needed
    }

    /// Tells our client to pause the layers of `group` nobody has needed for
    /// [`LAYER_PAUSE_AFTER`] and to resume those needed again. Only a layer that sends is
    /// paused (one the browser stopped on its own is left alone, so it comes back by
    /// itself); sessions without signaling (WHIP) are not told anything.
    fn update_layer_pauses(&mut self, now: Instant, group: TrackKey) {
        if self.client_offers_only {
            return;
        }
        let needed = self.needed_layers(now, group);
        let layers: Vec<(u8, Option<Instant>, TrackId)> = self
            .published
            .iter()
            .filter(|p| p.group == group)
            .filter_map(|p| {
                Some((
                    p.layer.filter(|l| *l < 64)?,
                    p.last_packet,
                    p.info.id.clone(),
                ))
            })
            .collect();
        let Some(track) = layers.first().map(|(_, _, t)| t.clone()) else {
            return;
        };
        let pauses = self.layer_pauses.entry(group).or_default();
        // Resumed layers: back once they send; told again while they do not.
        let mut resend = false;
        pauses.resumed_at.retain(|layer, (told, tries)| {
            let sent = layers
                .iter()
                .any(|(l, last, _)| l == layer && last.is_some_and(|t| t >= *told));
            if sent || now.saturating_duration_since(*told) < LAYER_RESUME_GRACE {
                return !sent;
            }
            if *tries >= LAYER_RESUME_TRIES {
                return false; // silent: the browser stopped it, or cannot send it
            }
            *tries += 1;
            *told = now;
            resend = true;
            true
        });
        let mut paused = 0u64;
        for (layer, last, _) in &layers {
            let sending = last.is_some_and(|t| now.saturating_duration_since(t) < LAYER_SILENT);
            let bit = 1u64 << layer;
            if needed & bit != 0 {
                pauses.unneeded_since.remove(layer);
                continue;
            }
            let since = *pauses.unneeded_since.entry(*layer).or_insert(now);
            let long = now.saturating_duration_since(since) >= LAYER_PAUSE_AFTER;
            if pauses.paused & bit != 0 || (long && sending) {
                paused |= bit;
            }
        }
        if paused == pauses.paused && !resend {
            return;
        }
        let resumed = pauses.paused & !paused;
        for (layer, _, _) in &layers {
            let bit = 1u64 << layer;
            if resumed & bit != 0 {
                pauses.resumed_at.insert(*layer, (now, 0));
                metrics::counter!("hearth_simulcast_layer_changes_total", "change" => "resumed")
                    .increment(1);
            } else if paused & bit != 0 && pauses.paused & bit == 0 {
                pauses.resumed_at.remove(layer);
                metrics::counter!("hearth_simulcast_layer_changes_total", "change" => "paused")
                    .increment(1);
            }
        }
        pauses.paused = paused;
        let list: Vec<u8> = (0..64u8).filter(|l| paused & (1 << l) != 0).collect();
        tracing::debug!(participant = %self.id, %track, paused = ?list, "simulcast layers to send");
        self.signal.send(ServerSignal::PublishLayers {
            track,
            paused: list,
        });
        // A resumed layer: its rate is measured afresh, and whoever waits for it gets a
        // keyframe as soon as it sends.
        for p in self.published.iter_mut().filter(|p| p.group == group) {
            if p.layer.is_some_and(|l| l < 64 && resumed & (1 << l) != 0) {
                p.rate.start = None;
                for w in p.temporal_rates.iter_mut().flat_map(|r| r.iter_mut()) {
                    w.start = None;
                }
                p.keyframes.request(now);
            }
        }
    }

    /// The layers of simulcast track `group` that send (a layer silent for
    /// [`LAYER_SILENT`] while another sends is left out), smallest first: by the height
    /// their keyframes announce, unknown ones last, then by rid order.
    ///
    /// With `paused`, a layer we paused (or resumed lately) counts as sending: it can be
    /// chosen, and choosing it resumes it.
    fn live_layers(&self, group: TrackKey, now: Instant, paused: bool) -> Vec<(u8, Option<u16>)> {
        let entries: Vec<&Published> = self
            .published
            .iter()
            .filter(|p| p.group == group && p.layer.is_some())
            .collect();
        let pauses = self.layer_pauses.get(&group).filter(|_| paused);
        let alive = |p: &Published| {
            p.last_packet
                .is_some_and(|t| now.saturating_duration_since(t) < LAYER_SILENT)
                || pauses.is_some_and(|d| p.layer.is_some_and(|l| d.available(l)))
        };
        let any_alive = entries.iter().any(|p| alive(p));
        let mut layers: Vec<(u8, Option<u16>)> = entries
            .iter()
            .filter(|p| !any_alive || alive(p))
            .filter_map(|p| p.layer.map(|l| (l, p.dims.map(|d| d.1))))
            .collect();
        layers.sort_unstable_by_key(|(l, h)| (h.unwrap_or(u16::MAX), *l));
        layers
    }

    /// Puts each subscriber's leg on the layers it is on or moving to, and rebuilds the
    /// layers' targets: a subscriber with a leg on another layer (or paused between) is
    /// not queued anywhere; one without a leg yet (and taps) is queued on the best layer
    /// that sends.
    fn sync_layers(&mut self, group: TrackKey) {
        let queue_layer = self
            .published
            .iter()
            .filter(|p| p.group == group)
            .filter_map(|p| p.last_packet)
            .max()
            .and_then(|newest| {
                self.live_layers(group, newest, false)
                    .last()
                    .map(|(l, _)| *l)
            });
        let empty = HashMap::new();
        let choices = self.layer_choices.get(&group).unwrap_or(&empty);
        for p in self
            .published
            .iter_mut()
            .filter(|p| p.group == group && p.layer.is_some())
        {
            let layer = p.layer;
            p.legs = choices
                .iter()
                .filter(|(_, c)| c.leg.is_open() && (c.current == layer || Some(c.target) == layer))
                .map(|(id, c)| (id.clone(), Arc::clone(&c.leg)))
                .collect();
            let leader = match queue_layer {
                Some(q) => layer == Some(q),
                None => p.key == p.group,
            };
            p.targets = p
                .fanout
                .iter()
                .filter_map(|link| match p.legs.get(&link.participant) {
                    Some(leg) => Some(Target::Leg(Arc::clone(leg))),
                    None if choices.contains_key(&link.participant) => None,
                    None if leader => Some(Target::Queue(link.media.clone())),
                    None => None,
                })
                .collect();
        }
    }

    /// After a packet of layer `layer` (stream `ssrc`) of simulcast track `group`: legs
    /// whose forwarder now follows it have switched (they leave their old layer); a new
    /// frame size chooses layers again.
    fn after_layer_packet(
        &mut self,
        now: Instant,
        group: TrackKey,
        layer: u8,
        ssrc: Ssrc,
        sized: bool,
    ) {
        if sized {
            self.choose_layers(now, group);
        }
        let Some(choices) = self.layer_choices.get_mut(&group) else {
            return;
        };
        let mut switched = false;
        for choice in choices.values_mut() {
            if choice.target == layer
                && choice.current != Some(layer)
                && choice
                    .leg
                    .lock()
                    .is_some_and(|l| l.forwarder.current_source() == Some(ssrc))
            {
                choice.current = Some(layer);
                switched = true;
            }
        }
        if switched {
            self.sync_layers(group);
        }
    }

    /// A packet from our client: account, cache, fan out.
    fn publish_packet(&mut self, packet: MediaPacket) {
        let Some(p) = self.published.iter_mut().find(|p| p.ssrc == packet.ssrc) else {
            return;
        };
        self.stats.packets_received += 1;
        // A simulcast layer's keyframes tell its frame size (layers are chosen by it).
        let mut sized = false;
        if p.layer.is_some() {
            p.last_packet = Some(packet.arrival);
            let bytes = packet.payload.len() as u64 + crate::congestion::WIRE_OVERHEAD;
            p.rate.on_bytes(packet.arrival, bytes);
            if let Some(rates) = &mut p.temporal_rates
                && let Some(t) = vp8_temporal(&packet.payload)
            {
                rates[usize::from(t.temporal.min(SVC_TEMPORAL_LAYERS - 1))]
                    .on_bytes(packet.arrival, bytes);
            }
        }
        if packet.keyframe
            && p.layer.is_some()
            && let Some(dims) = hearth_engine::codec::keyframe_size(p.codec.codec, &packet.payload)
            && p.dims != Some(dims)
        {
            p.dims = Some(dims);
            sized = true;
        }
        // VP9: each spatial layer's rate, and their sizes from keyframes.
        let mut svc_sized = false;
        if let Some(svc) = &mut p.svc {
            // AV1's layers come from its dependency descriptor (read by the transport).
            let vp9 = p.codec.codec == hearth_engine::media::Codec::Vp9;
            if let Some(layer) = packet.layer.or_else(|| {
                if vp9 {
                    vp9_layer(&packet.payload)
                } else {
                    None
                }
            }) {
                let bytes = packet.payload.len() as u64 + crate::congestion::WIRE_OVERHEAD;
                let temporal = layer.temporal.min(SVC_TEMPORAL_LAYERS - 1);
                svc.rates[usize::from(layer.spatial)][usize::from(temporal)]
                    .on_bytes(packet.arrival, bytes);
            }
            if let Some(ss) = vp9_scalability(&packet.payload) {
                let mut heights = [0u16; VP9_MAX_SPATIAL];
                for (h, (_, height)) in heights.iter_mut().zip(ss.sizes) {
                    *h = height;
                }
                if (ss.spatial_layers, heights) != (svc.layers, svc.heights) {
                    (svc.layers, svc.heights) = (ss.spatial_layers, heights);
                    svc_sized = true;
                }
            }
            // AV1: a keyframe's descriptor attached the layers and their sizes.
            if packet.keyframe
                && packet.layer.is_some()
                && let Some((layers, sizes)) = self.peer.dependency_layers(packet.ssrc)
            {
                let mut heights = [0u16; VP9_MAX_SPATIAL];
                for (h, height) in heights.iter_mut().zip(sizes) {
                    *h = height;
                }
                if (layers, heights) != (svc.layers, svc.heights) {
                    (svc.layers, svc.heights) = (layers, heights);
                    svc_sized = true;
                }
            }
        }
        if !p.recv.on_rtp(
            packet.arrival,
            packet.seq,
            packet.timestamp,
            packet.payload.len(),
        ) {
            return; // duplicate (RTX unwrapping, probes)
        }
        if let Some(nack) = &mut p.nack {
            nack.on_packet(packet.arrival, packet.seq);
        }
        if packet.keyframe {
            p.keyframes.on_keyframe(packet.arrival);
        }
        // A muted track is silent for speaker detection, whatever the client still sends.
        if let (Some(meter), Some(level), false) = (&mut p.level, packet.audio_level, p.info.muted)
        {
            meter.observe(packet.arrival, level, 20);
        }
        if let Some(cache) = &mut p.cache {
            cache.insert(&packet);
        }
        if p.info.muted {
            return;
        }
        // Each copy: straight onto the subscriber's leg (rewrite, encrypt, send: no hop),
        // or into its queue while it has no leg yet.
        let mut sent = 0u64;
        let mut wants_keyframe = false;
        for target in &p.targets {
            match target {
                Target::Leg(leg) => {
                    match leg.forward(packet.arrival, &packet, false, &mut self.out_batch) {
                        Forwarded::Sent(_) => sent += 1,
                        Forwarded::NeedsKeyframe => wants_keyframe = true,
                        Forwarded::Skipped => {}
                    }
                }
                Target::Queue(queue) => {
                    queue.push(MediaItem {
                        track: p.group,
                        packet: packet.clone(),
                        retransmission: false,
                    });
                }
            }
        }
        if wants_keyframe {
            p.keyframes.request(packet.arrival);
        }
        self.stats.packets_forwarded += p.targets.len() as u64;
        if sent > 0 {
            let before = self.fanned_out;
            self.fanned_out += sent;
            // One sample per FORWARD_DELAY_SAMPLE_EVERY copies sent.
            if before / FORWARD_DELAY_SAMPLE_EVERY != self.fanned_out / FORWARD_DELAY_SAMPLE_EVERY {
                self.forwarded_arrivals.push(packet.arrival);
            }
        }
        let layered = p.layer.map(|l| (p.group, l, p.ssrc));
        if svc_sized && let Some(i) = self.published.iter().position(|p| p.ssrc == packet.ssrc) {
            self.choose_svc(packet.arrival, i);
        }
        self.send_batch_if_full();
        if let Some((group, layer, ssrc)) = layered {
            self.after_layer_packet(packet.arrival, group, layer, ssrc, sized);
        }
    }

    /// Sends the copies sealed so far once the batch is big (a long burst); otherwise they
    /// wait for the end of the burst ([`Self::flush`]).
    fn send_batch_if_full(&mut self) {
        if self.out_batch.len() >= SEND_CHUNK || self.out_batch.bytes() >= BATCH_BYTES {
            self.mux.send_batch(&mut self.out_batch, self.mux_hint);
        }
    }

    fn on_retransmit(
        &mut self,
        now: Instant,
        track: TrackKey,
        ssrc: Ssrc,
        seqs: &[u16],
        to: &InboxSender<MediaItem, ParticipantMsg>,
    ) {
        // The layer the lost packets came from (of a simulcast track).
        let Some(p) = self
            .published
            .iter()
            .find(|p| p.group == track && (p.layer.is_none() || p.ssrc == ssrc))
        else {
            return;
        };
        let Some(cache) = &p.cache else {
            return;
        };
        for seq in seqs {
            if let Some(packet) = cache.get(*seq, now) {
                to.push(MediaItem {
                    track,
                    packet: packet.clone(),
                    retransmission: true,
                });
                self.stats.retransmissions_sent += 1;
            }
        }
    }

    /// Media from publishers, for our client.
    fn on_media(&mut self, now: Instant, myself: &ActorRef<ParticipantMsg>) {
        let mut batch = std::mem::take(&mut self.scratch_media);
        self.media.drain(&mut batch, DRAIN_BATCH);
        for item in batch.drain(..) {
            let Some(sub) = self.subscriptions.get_mut(&item.track) else {
                continue;
            };
            // The same leg the publisher forwards on: one forwarder, one SRTP context.
            let result =
                sub.leg
                    .forward(now, &item.packet, item.retransmission, &mut self.out_batch);
            if item.retransmission {
                tracing::debug!(participant = %self.id, track = %sub.track, source = item.packet.ssrc.0,
                    seq = item.packet.seq, sent = matches!(result, Forwarded::Sent(_)), "retransmission");
            }
            match result {
                Forwarded::Sent(_) => {
                    // (The leg counted these bytes into our usage.)
                    if !item.retransmission {
                        self.fanned_out += 1;
                        if self.fanned_out.is_multiple_of(FORWARD_DELAY_SAMPLE_EVERY) {
                            self.forwarded_arrivals.push(item.packet.arrival);
                        }
                    }
                }
                Forwarded::NeedsKeyframe => {
                    let due = sub
                        .last_keyframe_request
                        .is_none_or(|t| now.duration_since(t) >= KEYFRAME_REQUEST_INTERVAL);
                    if due {
                        sub.last_keyframe_request = Some(now);
                        sub.ask_for_keyframe(&self.id);
                    }
                }
                Forwarded::Skipped => {}
            }
        }
        self.scratch_media = batch;
        if self.media.has_pending() {
            let _ = myself.send_message(ParticipantMsg::MediaReady);
        }
    }

    fn on_feedback(&mut self, now: Instant, feedback: Feedback) {
        match feedback {
            Feedback::KeyframeRequest { media_ssrc } => {
                tracing::debug!(participant = %self.id, ssrc = media_ssrc.0, "client asks for a keyframe");
                if let Some(key) = self.by_out_ssrc.get(&media_ssrc.0)
                    && let Some(sub) = self.subscriptions.get_mut(key)
                    && !sub.refused
                {
                    let due = sub
                        .last_client_keyframe_request
                        .is_none_or(|t| now.duration_since(t) >= KEYFRAME_REQUEST_INTERVAL);
                    if due {
                        sub.last_client_keyframe_request = Some(now);
                        sub.ask_for_keyframe(&self.id);
                    }
                }
            }
            Feedback::Nack { media_ssrc, seqs } => {
                self.last_nack_at = Some(now);
                let Some(key) = self.by_out_ssrc.get(&media_ssrc.0) else {
                    return;
                };
                let Some(sub) = self.subscriptions.get_mut(key) else {
                    return;
                };
                let Some(leg) = sub.leg.lock() else {
                    return;
                };
                let rtt = leg.stats.rtt();
                // Source numbers by source stream (a simulcast switch spans two).
                let mut by_source: Vec<(Ssrc, Vec<u16>)> = Vec::new();
                // A packet the client has kept asking for (its retransmissions lost in a
                // full queue too) leaves its picture frozen until a keyframe, and Chromium
                // asks for one itself only after 3 s without a decodable frame: such a
                // packet gets a keyframe, as if the client had asked, and no more
                // retransmissions that only add to the queue.
                // (See `RetransmitLimiter::given_up`.)
                let mut given_up = None;
                let mut allowed: Vec<u16> = Vec::with_capacity(seqs.len());
                for &seq in &seqs {
                    if let Some(asked) = sub.retransmit.given_up(now, seq, rtt) {
                        given_up.get_or_insert((seq, asked));
                    } else if sub.retransmit.allow(now, seq, rtt) {
                        allowed.push(seq);
                    }
                }
                let mapped: Vec<(Ssrc, u16)> = allowed
                    .iter()
                    .filter_map(|s| leg.forwarder.source_of(*s))
                    .collect();
                tracing::debug!(participant = %self.id, track = %sub.track, ?seqs, allowed = allowed.len(),
                    mapped = mapped.len(), ?rtt, "nack");
                for (ssrc, seq) in mapped {
                    match by_source.iter_mut().find(|(s, _)| *s == ssrc) {
                        Some((_, list)) => list.push(seq),
                        None => by_source.push((ssrc, vec![seq])),
                    }
                }
                drop(leg);
                // (Video only: audio has no keyframes; and only while media flows.)
                if let Some((seq, asked)) = given_up
                    && !sub.audio
                    && sub.wants_media()
                    && sub
                        .last_client_keyframe_request
                        .is_none_or(|t| now.duration_since(t) >= NACK_KEYFRAME_INTERVAL)
                {
                    tracing::debug!(participant = %self.id, track = %sub.track, seq, ?asked,
                        "a packet asked for too long: asking for a keyframe");
                    metrics::counter!("hearth_keyframe_requests_total", "reason" => "nack")
                        .increment(1);
                    sub.last_client_keyframe_request = Some(now);
                    sub.ask_for_keyframe(&self.id);
                }
                for (ssrc, seqs) in by_source {
                    let _ = sub.publisher_ref.send_message(ParticipantMsg::Retransmit {
                        track: *key,
                        ssrc,
                        seqs,
                        to: self.media_tx.clone(),
                    });
                }
            }
            Feedback::Report(block) => {
                let ntp = self.ntp(now);
                if let Some(key) = self.by_out_ssrc.get(&block.ssrc.0)
                    && let Some(sub) = self.subscriptions.get_mut(key)
                    && let Some(mut leg) = sub.leg.lock()
                {
                    leg.stats.on_report_block(ntp, &block);
                }
            }
            Feedback::SenderReport { ssrc, ntp, rtp_ts } => {
                if let Some(p) = self.published.iter_mut().find(|p| p.ssrc == ssrc) {
                    p.recv.on_sender_report(now, ntp, rtp_ts);
                }
            }
            Feedback::TransportCc(feedback) => {
                self.cc.on_feedback(now, &feedback);
                if self.cc.allocation_due(now) {
                    self.allocate_bandwidth(now);
                }
            }
        }
    }

    /// Splits our path's estimate across what we receive (see `crate::congestion`): tells
    /// each simulcast publisher the layer it may send us where that changed, and pauses
    /// (or resumes) the video that does not fit.
    fn allocate_bandwidth(&mut self, now: Instant) {
        use crate::congestion::{Demand, Grant, Priority, allocate};
        let limited = self.cc.limited();
        let mut keys = Vec::with_capacity(self.subscriptions.len());
        let mut demands = Vec::with_capacity(self.subscriptions.len());
        let mut lowest: HashMap<TrackKey, Option<u8>> = HashMap::new();
        for (key, sub) in &mut self.subscriptions {
            let Some(leg) = sub.leg.lock() else {
                sub.pause_wanted_since = None;
                continue;
            };
            // On the wire: UDP and IPv4 headers on top of the sealed packets.
            let bytes = leg.sent_bytes + leg.sent * 28;
            let layers = leg.layers.clone();
            drop(leg);
            // A paused track keeps the rate it had (what resuming it would cost). The first
            // look only notes the count (what was sent before it is no rate).
            if !sub.bw_paused && sub.rate.start.is_some() {
                sub.rate.on_bytes(now, bytes.saturating_sub(sub.sent_seen));
            } else if sub.rate.start.is_none() {
                sub.rate.start = Some(now);
            }
            sub.sent_seen = bytes;
            if sub.hidden || sub.remote_muted || sub.refused {
                // Not allocated now: a pause wanted before does not carry over.
                sub.pause_wanted_since = None;
                continue;
            }
            let priority = if sub.screen {
                Priority::Screen
            } else if self.active_speaker.as_ref() == Some(&sub.publisher) {
                Priority::Speaker
            } else {
                Priority::Camera
            };
            let current = if sub.bw_paused {
                Grant::Pause
            } else {
                sub.told_cap.map_or(Grant::Full, Grant::Cap)
            };
            keys.push(*key);
            lowest.insert(
                *key,
                layers.first().filter(|_| layers.len() > 1).map(|(l, _)| *l),
            );
            demands.push(Demand {
                audio: sub.audio,
                priority,
                layers,
                rate: sub.rate.bps,
                current,
            });
        }
        // Probes need an RTX stream; without one the estimate cannot climb back past what
        // is being sent, so a paused video would never resume: nothing is paused then (the
        // lowest layer is kept).
        let can_probe = self.subscriptions.values().any(|s| {
            s.leg_ready
                && s.leg
                    .lock()
                    .is_some_and(|l| l.rtx.as_ref().is_some_and(|r| r.enabled))
        });
        let (mut grants, desired) = allocate(self.cc.estimate(), &demands);
        if !can_probe {
            for (grant, d) in grants.iter_mut().zip(&demands) {
                if *grant == Grant::Pause {
                    *grant = d.layers.first().map_or(Grant::Full, |(l, _)| {
                        if d.layers.len() > 1 {
                            Grant::Cap(*l)
                        } else {
                            Grant::Full
                        }
                    });
                }
            }
        }
        tracing::trace!(participant = %self.id, ?demands, ?grants, desired, bwe = ?self.cc.stats(), "bandwidth allocation");
        self.cc.allocated(now, desired);
        let estimate = self.cc.estimate();
        for ((key, grant), demand) in keys.into_iter().zip(grants).zip(&demands) {
            let grant = if limited { grant } else { Grant::Full };
            let Some(sub) = self.subscriptions.get_mut(&key) else {
                continue;
            };
            let wants = grant == Grant::Pause;
            let mut pause = wants;
            if wants && !sub.bw_paused {
                let since = *sub.pause_wanted_since.get_or_insert(now);
                pause = now.saturating_duration_since(since) >= BW_PAUSE_AFTER;
            }
            if !wants || pause {
                sub.pause_wanted_since = None;
            }
            if pause != sub.bw_paused {
                sub.bw_paused = pause;
                tracing::debug!(participant = %self.id, track = %sub.track, paused = pause, estimate,
                    layers = ?demand.layers, rate = demand.rate, "bandwidth pause");
                metrics::counter!("hearth_bwe_pauses_total", "change" => if pause { "paused" } else { "resumed" })
                    .increment(1);
                if let Some(mut leg) = sub.leg.lock() {
                    if sub.wants_media() {
                        leg.forwarder.resume();
                    } else {
                        leg.forwarder.pause();
                    }
                }
                if !pause {
                    // The rate it resumes at is measured afresh (not spread over the pause).
                    sub.rate.start = None;
                }
            }
            let cap = match grant {
                Grant::Cap(layer) => Some(layer),
                // Paused: when it resumes, it starts from the lowest layer offered (its
                // keyframe is the smallest), not from the one it had.
                Grant::Pause => lowest.get(&key).copied().flatten().or(sub.told_cap),
                Grant::Full => None,
            };
            if sub.told_cap != cap {
                tracing::debug!(participant = %self.id, track = %sub.track, ?cap, estimate, "bandwidth cap");
            }
            let height = sub.told_height;
            tell_layer_preference(sub, &self.id, height, cap);
        }
    }

    /// Sends the padding of a bandwidth probe that is due, on the RTX stream of one of our
    /// video legs (a probe needs one: without RTX there is no probing).
    fn send_probe_padding(&mut self, now: Instant) {
        if self.cc.poll_timeout().is_none_or(|t| t > now) {
            return;
        }
        // A client that just asked for retransmissions is recovering a loss: a probe's
        // burst now could push the retransmission out of a full bottleneck queue and leave
        // its decoder stuck until it asks for a keyframe (seconds). Probe on a clean path.
        if !self.cc.probing()
            && self
                .last_nack_at
                .is_some_and(|t| now.saturating_duration_since(t) < PROBE_QUIET_AFTER_NACK)
        {
            self.cc.defer_probe(now);
            return;
        }
        // What reaches the client now (the feedback's acknowledged rate) is what the probe
        // adds its padding to.
        let media_bps = self.cc.stats().acked_bps.unwrap_or(0);
        let Some(leg) = self
            .subscriptions
            .values()
            .filter(|s| s.leg_ready)
            .find(|s| {
                s.leg
                    .lock()
                    .is_some_and(|l| l.rtx.as_ref().is_some_and(|r| r.enabled))
            })
            .map(|s| Arc::clone(&s.leg))
        else {
            // Nothing to probe on (no RTX stream): no probe now; ask again later.
            self.cc.defer_probe(now);
            return;
        };
        let mut bytes = 0u64;
        if !self.cc.probing() {
            tracing::debug!(participant = %self.id, estimate = self.cc.estimate(), media_bps, "probe starts");
        }
        while let Some(size) = self.cc.poll_padding(now, media_bps) {
            bytes += leg.send_padding(size, &mut self.out_batch) as u64;
        }
        if bytes > 0 {
            self.cc.padding_bytes += bytes;
            metrics::counter!("hearth_bwe_padding_bytes_total").increment(bytes);
        }
    }

    fn ntp(&self, now: Instant) -> NtpTime {
        let (epoch, wall) = self.wall_epoch;
        let wall_now = wall + now.saturating_duration_since(epoch);
        NtpTime::from_unix(
            wall_now
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default(),
        )
    }

    fn on_tick(&mut self, now: Instant) {
        self.peer.handle_timeout(now);
        // Congestion control: a probe's padding, and the allocation when it is due.
        self.send_probe_padding(now);
        if self.cc.allocation_due(now) {
            self.allocate_bandwidth(now);
        }
        // Simulcast: a layer that stopped sending is left for one that sends; layers
        // nobody needs are paused (also for tracks nobody receives).
        let mut groups: Vec<TrackKey> = Vec::new();
        for p in self.published.iter().filter(|p| p.layer.is_some()) {
            if !groups.contains(&p.group) {
                groups.push(p.group);
            }
        }
        for group in groups {
            self.choose_layers(now, group);
        }
        for i in 0..self.published.len() {
            self.choose_svc(now, i);
        }
        let ntp = self.ntp(now);
        // Loss recovery and keyframe requests toward our client.
        for p in &mut self.published {
            if let Some(nack) = &mut p.nack {
                nack.handle_timeout(now);
            }
            p.keyframes.handle_timeout(now);
            if let Some(level) = &mut p.level
                && let Some(loudness) = level.handle_timeout(now)
            {
                if loudness > 0.0 || p.last_loudness > 0.0 {
                    let _ = self.meeting.send_message(MeetingMsg::SpeakerLevel {
                        participant: self.id.clone(),
                        loudness,
                    });
                }
                p.last_loudness = loudness;
            }
        }
        if self.reports.handle_timeout(now) {
            self.flush_drop_counters();
            self.cc.flush_metrics();
            let blocks: Vec<_> = self
                .published
                .iter_mut()
                .map(|p| p.recv.report_block(now))
                .collect();
            let _ = self.peer.send_receiver_report(now, &blocks);
            for sub in self.subscriptions.values_mut() {
                if let (Some(sender), true) = (sub.sender, sub.negotiated)
                    && let Some(info) = sub
                        .leg
                        .lock()
                        .and_then(|mut l| l.stats.sender_info(now, ntp))
                {
                    let _ = self.peer.send_sender_report(now, sender, info);
                }
            }
        }
    }

    /// Sends the PLIs and NACKs the engine released (after any message, not only ticks).
    fn send_feedback(&mut self, now: Instant) {
        for p in &mut self.published {
            while p.keyframes.poll_request() {
                if self.peer.send_pli(now, p.ssrc).is_ok() {
                    self.stats.keyframe_requests_sent += 1;
                }
            }
            if let Some(nack) = &mut p.nack {
                while let Some(seqs) = nack.poll_nack() {
                    if self.peer.send_nack(now, p.ssrc, &seqs).is_ok() {
                        self.stats.nacks_sent += 1;
                    }
                }
            }
        }
    }

    /// Applies queued subscription changes when signaling is stable, then offers.
    fn renegotiate(&mut self, now: Instant) {
        if !self.peer.is_stable()
            || (self.pending_ops.is_empty() && !self.reoffer && !self.peer.needs_offer())
        {
            return;
        }
        let mut changed = std::mem::take(&mut self.reoffer) || self.peer.needs_offer();
        for op in std::mem::take(&mut self.pending_ops) {
            match op {
                SubOp::Add(track) => {
                    if self.subscriptions.contains_key(&track.key) {
                        continue;
                    }
                    match self.peer.add_sender(
                        track.info.kind,
                        &track.codec,
                        track.publisher.as_str(),
                        track.info.id.as_str(),
                    ) {
                        Ok(sender) => {
                            let mut forwarder = Forwarder::new(
                                sender.ssrc,
                                track.info.kind,
                                track.codec.clock_rate,
                            );
                            if track.info.muted {
                                forwarder.pause();
                            }
                            self.by_out_ssrc.insert(sender.ssrc.0, track.key);
                            let mut leg = SendLeg::new(
                                self.id.clone(),
                                forwarder,
                                SendStats::new(sender.ssrc, track.codec.clock_rate),
                            )
                            .with_usage(Arc::clone(&self.usage));
                            if track.codec.codec == hearth_engine::media::Codec::Vp8 {
                                leg = leg.with_vp8_munging();
                            }
                            match track.codec.codec {
                                hearth_engine::media::Codec::Vp9 => leg = leg.with_svc(true),
                                hearth_engine::media::Codec::Av1 => leg = leg.with_svc(false),
                                _ => {}
                            }
                            let leg = Arc::new(leg);
                            // The publisher forwards on it once it is ready (closed legs and
                            // legs without a sealer are skipped there).
                            let _ = track.publisher_ref.send_message(ParticipantMsg::AttachLeg {
                                track: track.key,
                                leg: Arc::clone(&leg),
                            });
                            self.subscriptions.insert(
                                track.key,
                                Box::new(Subscription {
                                    key: track.key,
                                    track: track.info.id.clone(),
                                    publisher_ref: track.publisher_ref.clone(),
                                    sender: Some(sender),
                                    negotiated: false,
                                    leg,
                                    leg_ready: false,
                                    last_keyframe_request: None,
                                    last_client_keyframe_request: None,
                                    retransmit: RetransmitLimiter::new(
                                        RETRANSMIT_RATE,
                                        RETRANSMIT_BURST,
                                    ),
                                    remote_muted: track.info.muted,
                                    hidden: false,
                                    told_height: u32::MAX,
                                    told_cap: None,
                                    told_idle: false,
                                    refused: false,
                                    pause_wanted_since: None,
                                    publisher: track.publisher.clone(),
                                    audio: track.info.kind == MediaKind::Audio,
                                    screen: track.info.source == crate::domain::TrackSource::Screen,
                                    bw_paused: false,
                                    sent_seen: 0,
                                    rate: RateWindow::default(),
                                }),
                            );
                            changed = true;
                            self.apply_track_settings(&track.info.id);
                        }
                        Err(e) => {
                            tracing::warn!(participant = %self.id, error = %e, "cannot add a sender");
                        }
                    }
                }
                SubOp::Remove(track) => {
                    self.track_prefs.remove(&track);
                    let key = self
                        .subscriptions
                        .iter()
                        .find(|(_, s)| s.track == track)
                        .map(|(k, _)| *k);
                    if let Some(key) = key
                        && let Some(sub) = self.subscriptions.remove(&key)
                        && let Some(sender) = sub.sender
                    {
                        sub.leg.close();
                        let _ = sub.publisher_ref.send_message(ParticipantMsg::DetachLeg {
                            track: key,
                            subscriber: self.id.clone(),
                        });
                        self.by_out_ssrc.remove(&sender.ssrc.0);
                        if let Err(e) = self.peer.remove_sender(sender) {
                            tracing::warn!(participant = %self.id, error = %e, "cannot remove a sender");
                        }
                        changed = true;
                    }
                }
            }
        }
        if changed && !self.client_offers_only {
            match self.peer.create_offer(now) {
                Ok(offer) => {
                    tracing::trace!(participant = %self.id, %offer, "our offer");
                    tracing::debug!(participant = %self.id, subscriptions = self.subscriptions.len(), "offer sent");
                    self.offer_sent_at = Some(now);
                    self.signal.send(ServerSignal::Offer(offer));
                }
                Err(e) => {
                    tracing::warn!(participant = %self.id, error = %e, "cannot create an offer");
                }
            }
        }
    }

    /// Payload types may change with any exchange: every leg is looked at again.
    fn legs_renegotiated(&mut self) {
        for sub in self.subscriptions.values_mut() {
            sub.leg_ready = false;
        }
    }

    /// Opens each negotiated subscription's leg once the transport is connected (its sealer,
    /// our selected path) and follows path changes and renegotiated payload types.
    fn refresh_legs(&mut self) {
        if self.cc.set_extension(self.peer.send_transport_cc_id()) {
            // Agreed, dropped or renumbered: every leg takes the new handle.
            self.legs_renegotiated();
        }
        let dest = self.peer.selected_path();
        let moved = dest != self.leg_dest;
        self.leg_dest = dest;
        if !self.peer.is_connected() {
            return;
        }
        for sub in self.subscriptions.values_mut() {
            let Some(sender) = sub.sender else {
                continue;
            };
            if !sub.negotiated || (sub.leg_ready && !moved) {
                continue;
            }
            let Some(mut leg) = sub.leg.lock() else {
                continue;
            };
            leg.dest = dest;
            leg.twcc = self.cc.leg_handle();
            // Only where the two-byte form is agreed: a keyframe's descriptor (its template
            // structure) rarely fits one byte's 16 octets, and a subscriber given the small
            // descriptors without the structure cannot read any of them (libwebrtc drops
            // such packets).
            leg.dd_ext = self
                .peer
                .sender_dependency_descriptor(sender)
                .filter(|(_, two_byte)| *two_byte);
            match (&mut leg.sealer, self.peer.sender_payload_type(sender)) {
                (Some(sealer), Some(pt)) => sealer.payload_type = pt,
                (None, Some(_)) => leg.sealer = self.peer.take_sealer(sender),
                _ => {}
            }
            match (&mut leg.rtx, self.peer.sender_rtx_payload_type(sender)) {
                (Some(rtx), Some(pt)) => {
                    rtx.sealer.payload_type = pt;
                    rtx.enabled = true;
                }
                (None, Some(_)) => {
                    leg.rtx =
                        self.peer
                            .take_rtx_sealer(sender)
                            .map(|sealer| crate::leg::RtxStream {
                                sealer,
                                next_seq: rand::random(),
                                enabled: true,
                            });
                }
                // Declined in a later exchange: retransmissions go on the primary SSRC. The
                // stream (its sealer's rollover state, its sequence) stays for a later
                // exchange that agrees RTX again.
                (Some(rtx), None) => rtx.enabled = false,
                (None, None) => {}
            }
            sub.leg_ready = leg.sealer.is_some() && leg.dest.is_some();
        }
    }

    /// Adds this participant's queue drops since the last report to the node's counters
    /// (once a second, not per packet).
    fn flush_drop_counters(&mut self) {
        let media = self.media.dropped();
        let ingress = self.ingress.dropped();
        let (media_seen, ingress_seen) = self.drops_reported;
        if media > media_seen {
            metrics::counter!("hearth_media_dropped_total", "reason" => "subscriber_queue_full")
                .increment(media - media_seen);
        }
        if ingress > ingress_seen {
            metrics::counter!("hearth_media_dropped_total", "reason" => "ingress_queue_full")
                .increment(ingress - ingress_seen);
        }
        self.drops_reported = (media, ingress);
        // What the transport refused since the last report, by reason.
        let now = self.peer.stats();
        let before = std::mem::replace(&mut self.transport_reported, now);
        let reasons = [
            ("oversized", now.oversized, before.oversized),
            ("unvalidated_source", now.unvalidated, before.unvalidated),
            ("not_demuxed", now.not_demuxed, before.not_demuxed),
            ("before_keys", now.before_keys, before.before_keys),
            ("malformed_rtp", now.malformed_rtp, before.malformed_rtp),
            ("unknown_ssrc", now.unknown_ssrc, before.unknown_ssrc),
            ("srtp_auth_failed", now.srtp_failed, before.srtp_failed),
            ("srtcp_auth_failed", now.srtcp_failed, before.srtcp_failed),
            ("padding_only", now.padding_only, before.padding_only),
            ("malformed_rtcp", now.rtcp_malformed, before.rtcp_malformed),
            ("stun_refused", now.stun_refused, before.stun_refused),
            ("dtls_rejected", now.dtls_rejected, before.dtls_rejected),
        ];
        for (reason, now, before) in reasons {
            if now > before {
                metrics::counter!("hearth_media_dropped_total", "reason" => reason)
                    .increment(now - before);
            }
        }
    }

    /// Records, for each sampled packet of the media batch just flushed, how long it spent in
    /// this node: from the publisher's datagram leaving the socket to the batch being sent.
    fn record_forward_delays(&mut self) {
        if self.forwarded_arrivals.is_empty() {
            return;
        }
        let sent = Instant::now();
        for arrival in self.forwarded_arrivals.drain(..) {
            self.forward_delay
                .record(sent.saturating_duration_since(arrival).as_secs_f64());
        }
    }

    /// Sends what the transport has to send and the copies sealed in this burst.
    fn flush(&mut self) {
        let mut bytes = 0u64;
        while let Some((to, data)) = self.peer.poll_datagram() {
            bytes += data.len() as u64;
            self.mux.send_to(&data, to, self.mux_hint);
        }
        if bytes > 0 {
            self.usage.add_out(bytes);
        }
        self.mux.send_batch(&mut self.out_batch, self.mux_hint);
    }

    fn arm_timer(&mut self, now: Instant) {
        let mut next = self
            .reports
            .poll_timeout()
            .unwrap_or(now + Duration::from_secs(1));
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t
                && t < next
            {
                next = t;
            }
        };
        consider(self.peer.poll_timeout());
        consider(self.cc.poll_timeout());
        for p in &self.published {
            consider(p.nack.as_ref().and_then(NackGenerator::poll_timeout));
            consider(p.keyframes.poll_timeout());
            consider(p.level.as_ref().map(AudioLevelMeter::poll_timeout));
        }
        self.wakeup.arm(next.max(now));
    }
}

#[cfg(test)]
mod tests {
    use super::{layer_ladder, pick_layer, svc_ladder};
    use hearth_engine::svc::{svc_layer_id, svc_layer_targets};

    #[test]
    fn simulcast_ladder_offers_the_lowest_layer_at_lower_frame_rates() {
        let full = u8::MAX;
        let ids = |ladder: &[(u8, u32)]| -> Vec<(u8, u8)> {
            ladder
                .iter()
                .map(|(id, _)| svc_layer_targets(*id))
                .collect()
        };
        // Three VP8 layers in L1T3: each stands alone; the lowest at 7.5, 15 and 30 frames/s.
        let layers = [
            (0, [20, 15, 25, 0]),
            (1, [60, 45, 75, 0]),
            (2, [150, 110, 190, 0]),
        ];
        let ladder = layer_ladder(&layers, false);
        assert_eq!(
            ids(&ladder),
            [(0, 0), (0, 1), (0, full), (1, full), (2, full)]
        );
        let prices: Vec<u32> = ladder.iter().map(|(_, p)| *p).collect();
        assert_eq!(prices, [20, 35, 60, 180, 450]);
        // Layers without temporal layers (H.264, or a browser that sends none): one rung
        // each, at their whole rate.
        let layers = [(0, [100, 0, 0, 0]), (2, [300, 0, 0, 0])];
        assert_eq!(ids(&layer_ladder(&layers, false)), [(0, full), (2, full)]);
        assert_eq!(layer_ladder(&layers, false)[1].1, 300);
    }

    #[test]
    fn svc_ladder_rungs_rise_in_price() {
        // L3T3 at 30 frames/s: TL0 7.5, TL1 +7.5, TL2 +15 per second; spatial layers
        // about 1:2.5:6 (kbit/s).
        let rates = [[40, 30, 50, 0], [100, 70, 130, 0], [240, 170, 300, 0]];
        let ids = |ladder: &[(u8, u32)]| -> Vec<(u8, u8)> {
            ladder
                .iter()
                .map(|(id, _)| svc_layer_targets(*id))
                .collect()
        };
        let full = u8::MAX;
        let ladder = svc_ladder(&rates, 2);
        assert_eq!(
            ids(&ladder),
            [(0, 0), (0, 1), (0, full), (1, full), (2, full)]
        );
        let prices: Vec<u32> = ladder.iter().map(|(_, p)| *p).collect();
        assert_eq!(prices, [40, 70, 120, 420, 1130]);
        // The tile's layer is the top rung.
        assert_eq!(ids(&svc_ladder(&rates, 0)), [(0, 0), (0, 1), (0, full)]);
        assert_eq!(
            svc_ladder(&rates, 7).last().map(|r| r.0),
            Some(svc_layer_id(2, full))
        );
        // Without temporal layers: the spatial ones.
        let rates = [[100, 0, 0, 0], [250, 0, 0, 0]];
        assert_eq!(ids(&svc_ladder(&rates, 1)), [(0, full), (1, full)]);
        // Two temporal layers: the upper spatial layer at its full rate.
        let rates = [[50, 50, 0, 0], [120, 130, 0, 0]];
        assert_eq!(ids(&svc_ladder(&rates, 1)), [(0, 0), (0, full), (1, full)]);
        // A rung that costs no more than the one before replaces it.
        // (A simulcast layer above that sends less than the one below at its full rate.)
        let layers = [(0, [50, 300, 0, 0]), (1, [200, 0, 0, 0])];
        assert_eq!(ids(&layer_ladder(&layers, false)), [(0, 0), (1, full)]);
        // Nothing measured yet: one rung, the tile's.
        assert_eq!(ids(&svc_ladder(&[[0; 4]; 3], 1)), [(1, full)]);
    }

    #[test]
    fn a_tile_gets_the_lowest_layer_at_least_its_height() {
        let layers = [(0, Some(90)), (1, Some(180)), (2, Some(360))];
        assert_eq!(pick_layer(&layers, 80), 0);
        assert_eq!(pick_layer(&layers, 90), 0);
        assert_eq!(pick_layer(&layers, 170), 1);
        assert_eq!(pick_layer(&layers, 300), 2);
        assert_eq!(
            pick_layer(&layers, 1080),
            2,
            "bigger than every layer: the best"
        );
        assert_eq!(pick_layer(&layers, u32::MAX), 2);
        // Sizes not known yet: the highest layer.
        let unknown = [(0, None), (1, None), (2, None)];
        assert_eq!(pick_layer(&unknown, 100), 2);
        let partly = [(0, Some(90)), (1, None), (2, None)];
        assert_eq!(pick_layer(&partly, 80), 0);
        assert_eq!(pick_layer(&partly, 200), 2);
        assert_eq!(pick_layer(&[], 100), 0);
    }
}
