//! Congestion control for what one subscriber receives: the send-side estimate of its path
//! (`hearth_engine::transport::bwe`, fed by its TWCC feedback), probing for more when it
//! wants more, and the allocation of the estimate across its tracks.
//!
//! Allocation ([`allocate`]): audio always gets what it sends. Video goes in priority
//! order, screen shares first, then the active speaker's camera, then the other cameras:
//! each gets its lowest layer (single-layer video: what it sends) while that fits, and is
//! paused when a quarter of it does not (a screen share, like audio, never is); what is left lifts simulcast tracks to better layers in the same
//! order, each up to the layer its tile's height asks for (the publisher offers no more:
//! `SendLeg::layers`). Hidden tiles cost nothing (their forwarders are paused). A layer cap
//! is told to the track's publisher, which switches the subscriber's forwarder on the capped
//! layer's next keyframe; a pause is the subscriber's own (its leg's forwarder), resumed
//! from a keyframe.
//!
//! The estimate starts optimistic and only feedback lowers it, so until the path shows
//! congestion nothing is capped and no probe is sent.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hearth_engine::transport::bwe::{BweConfig, BweStats, SendHistory, SendSideBwe};
use hearth_engine::transport::twcc::TwccFeedback;

use crate::leg::TwccLeg;

/// Allocation runs at least this often while the estimate limits anything...
const ALLOCATE_EVERY: Duration = Duration::from_secs(1);
/// ...and at once when the estimate moved by more than this fraction (1/N).
const ALLOCATE_ON_CHANGE: u64 = 8;
/// Share of the estimate handed out (the rest is headroom for RTCP, retransmissions and
/// frame-size swings).
const HEADROOM_PERCENT: u64 = 95;
/// A track moves up (a better layer, or out of a pause) only with this much of the
/// estimate to spare beyond the move: hysteresis, so a track does not climb onto a layer
/// that barely fits and fall back with the next frame-size swing (each climb costs the
/// path a keyframe).
const UPGRADE_MARGIN_PERCENT: u64 = 15;
/// Bytes a forwarded packet adds to its payload on the wire: RTP header (12), the
/// transport-wide sequence extension (8), the SRTP tag (16), UDP (8) and IPv4 (20). Rates
/// compared with the estimate count them.
pub const WIRE_OVERHEAD: u64 = 64;

/// How much a track matters when the path is short (lower first).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    Screen,
    Speaker,
    Camera,
}

/// One received track, as the allocation sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Demand {
    pub audio: bool,
    pub priority: Priority,
    /// The layers the tile can use (simulcast layers, VP9 spatial layers, the lowest one
    /// at lower frame rates: `hearth_engine::svc::svc_layer_id`), cheapest first, with
    /// their rates (bits/s); empty for audio and single-layer video.
    pub layers: Vec<(u8, u32)>,
    /// What the track is sending now (bits/s): the cost of one that cannot be thinned.
    pub rate: u32,
    /// What it has now: moving above this needs the upgrade margin.
    pub current: Grant,
}

/// What a track gets from the allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grant {
    /// Everything its tile asks for.
    Full,
    /// Layers up to this one (an id of [`Demand::layers`]).
    Cap(u8),
    /// Nothing: even its lowest layer does not fit after the tracks before it (video only).
    Pause,
}

/// Splits `estimate` across `demands`: what each gets, and the total they would take with
/// nothing held back (the rate worth probing for).
///
/// Audio always gets its rate. Video, in priority order, gets its lowest layer (its rate,
/// for single-layer video) while that fits, else is paused (a screen share never is); what
/// is left then lifts simulcast tracks to better layers, in the same order.
pub fn allocate(estimate: u64, demands: &[Demand]) -> (Vec<Grant>, u64) {
    let budget = estimate * HEADROOM_PERCENT / 100;
    let margin = (estimate * UPGRADE_MARGIN_PERCENT / 100) as i64;
    let mut left = budget as i64;
    let mut desired = 0u64;
    let mut grants = vec![Grant::Full; demands.len()];
    let mut chosen = vec![0usize; demands.len()];
    for d in demands {
        desired += u64::from(d.layers.last().map_or(d.rate, |(_, top)| *top));
        if d.audio {
            left -= i64::from(d.rate);
        }
    }
    let mut order: Vec<usize> = (0..demands.len()).filter(|i| !demands[*i].audio).collect();
    order.sort_by_key(|i| demands[*i].priority);
    for &i in &order {
        let d = &demands[i];
        let min = i64::from(d.layers.first().map_or(d.rate, |(_, r)| *r));
        // Hysteresis both ways: a paused track resumes with the margin to spare; a playing
        // one is paused only when a quarter of its lowest layer is missing (a dip of the
        // estimate after a probe or a keyframe must not freeze a picture for seconds).
        let needed = if d.current == Grant::Pause {
            min + margin
        } else {
            min - min / 4
        };
        // A screen share is what the meeting looks at: like audio, never paused.
        if d.priority == Priority::Screen || needed <= left {
            left -= min;
        } else {
            grants[i] = Grant::Pause;
        }
    }
    for &i in &order {
        let d = &demands[i];
        let layers = &d.layers;
        if grants[i] == Grant::Pause || layers.len() < 2 {
            continue;
        }
        let base = i64::from(layers[0].1);
        // The layer it has now (a layer no longer offered: the top one).
        let now_at = match d.current {
            Grant::Full => layers.len() - 1,
            Grant::Cap(l) => layers
                .iter()
                .position(|(x, _)| *x == l)
                .unwrap_or(layers.len() - 1),
            Grant::Pause => 0,
        };
        if let Some(k) = (1..layers.len()).rev().find(|k| {
            let cost = i64::from(layers[*k].1) - base;
            cost <= left && (*k <= now_at || cost + margin <= left)
        }) {
            left -= i64::from(layers[k].1) - base;
            chosen[i] = k;
        }
        if chosen[i] + 1 < layers.len() {
            grants[i] = Grant::Cap(layers[chosen[i]].0);
        }
    }
    (grants, desired)
}

/// One subscriber's congestion controller.
pub struct Congestion {
    history: Arc<Mutex<SendHistory>>,
    bwe: SendSideBwe,
    /// The transport-wide sequence extension id, once agreed.
    ext: Option<u8>,
    last_allocation: Option<Instant>,
    allocated_at: u64,
    /// Counters already added to the node's metrics: overuses, loss decreases, probes.
    reported: (u64, u64, u64),
    pub padding_bytes: u64,
}

impl Default for Congestion {
    fn default() -> Self {
        Self::new()
    }
}

impl Congestion {
    pub fn new() -> Self {
        Self {
            history: Arc::new(Mutex::new(SendHistory::new())),
            bwe: SendSideBwe::new(BweConfig::default()),
            ext: None,
            last_allocation: None,
            allocated_at: 0,
            reported: (0, 0, 0),
            padding_bytes: 0,
        }
    }

    /// The extension id agreed now; true if it changed.
    pub fn set_extension(&mut self, ext: Option<u8>) -> bool {
        std::mem::replace(&mut self.ext, ext) != ext
    }

    /// What each of the subscriber's legs writes its transport-wide sequence with.
    pub fn leg_handle(&self) -> Option<TwccLeg> {
        Some(TwccLeg {
            history: Arc::clone(&self.history),
            ext: self.ext?,
        })
    }

    pub fn on_feedback(&mut self, now: Instant, feedback: &TwccFeedback) {
        let Ok(mut history) = self.history.lock() else {
            return;
        };
        self.bwe.on_feedback(now, &mut history, feedback);
    }

    pub fn stats(&self) -> BweStats {
        self.bwe.stats()
    }

    pub fn estimate(&self) -> u64 {
        self.bwe.estimate()
    }

    /// True when the estimate limits and an allocation is due (its period, or a move).
    pub fn allocation_due(&self, now: Instant) -> bool {
        let est = self.bwe.estimate();
        let limited = self.bwe.stats().limited;
        if !limited {
            // Never limited: nothing to cap (an allocation at the first limit comes from
            // the change test below, as `allocated_at` is 0).
            return false;
        }
        est.abs_diff(self.allocated_at) > self.allocated_at / ALLOCATE_ON_CHANGE
            || self
                .last_allocation
                .is_none_or(|t| now.saturating_duration_since(t) >= ALLOCATE_EVERY)
    }

    /// Records an allocation made at `now` (the rate it would take without caps is what a
    /// probe reaches for).
    pub fn allocated(&mut self, now: Instant, desired: u64) {
        self.last_allocation = Some(now);
        self.allocated_at = self.bwe.estimate();
        // The estimate that would let the allocation give all of it: with the headroom
        // held back and the margin a move up needs.
        let want = desired * 100 / (HEADROOM_PERCENT - UPGRADE_MARGIN_PERCENT);
        self.bwe.set_desired(now, want);
    }

    /// Whether the estimate is a measurement (the path showed its limit) rather than the
    /// optimistic start.
    pub fn limited(&self) -> bool {
        self.bwe.stats().limited
    }

    /// The next padding packet of a probe due now, given the media rate sent now; marks
    /// the packets sent meanwhile as the probe's.
    pub fn poll_padding(&mut self, now: Instant, media_bps: u64) -> Option<usize> {
        let padding = self.bwe.poll_padding(now, media_bps);
        if let Ok(mut history) = self.history.lock() {
            history.active_probe = self.bwe.active_probe(now);
        }
        padding.map(|(_, size)| size)
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.bwe.poll_timeout()
    }

    /// A probe is under way (its padding is being sent).
    pub fn probing(&self) -> bool {
        self.bwe.probing()
    }

    /// A probe is due but cannot be sent (nothing to pad on): the next one waits.
    pub fn defer_probe(&mut self, now: Instant) {
        self.bwe.defer_probe(now);
    }

    /// Adds what happened since the last call to the node's metrics.
    pub fn flush_metrics(&mut self) {
        let s = self.bwe.stats();
        let (o, l, p) = self.reported;
        if s.overuses > o {
            metrics::counter!("hearth_bwe_decreases_total", "cause" => "delay")
                .increment(s.overuses - o);
        }
        if s.loss_decreases > l {
            metrics::counter!("hearth_bwe_decreases_total", "cause" => "loss")
                .increment(s.loss_decreases - l);
        }
        if s.probes > p {
            metrics::counter!("hearth_bwe_probes_total").increment(s.probes - p);
        }
        self.reported = (s.overuses, s.loss_decreases, s.probes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn camera(layers: &[(u8, u32)]) -> Demand {
        Demand {
            audio: false,
            priority: Priority::Camera,
            layers: layers.to_vec(),
            rate: 0,
            current: Grant::Full,
        }
    }

    fn audio() -> Demand {
        Demand {
            audio: true,
            priority: Priority::Camera,
            layers: Vec::new(),
            rate: 40_000,
            current: Grant::Full,
        }
    }

    const THREE: [(u8, u32); 3] = [(0, 150_000), (1, 500_000), (2, 1_500_000)];

    #[test]
    fn a_wide_path_holds_nothing_back() {
        let demands = vec![camera(&THREE), camera(&THREE), audio()];
        let (grants, desired) = allocate(10_000_000, &demands);
        assert_eq!(grants, vec![Grant::Full; 3]);
        assert_eq!(desired, 3_040_000);
    }

    #[test]
    fn a_short_path_gives_the_lowest_layers_then_pauses() {
        let demands = vec![camera(&THREE), camera(&THREE), audio()];
        // 95 % of 400k = 380k: 40k audio + 2 x 150k; 40k left is not enough for more.
        let (grants, desired) = allocate(400_000, &demands);
        assert_eq!(grants, vec![Grant::Cap(0), Grant::Cap(0), Grant::Full]);
        assert_eq!(desired, 3_040_000);
        // 95 % of 250k = 237.5k: audio and one lowest layer; the other camera pauses.
        let (grants, _) = allocate(250_000, &demands);
        assert_eq!(grants, vec![Grant::Cap(0), Grant::Pause, Grant::Full]);
        // Audio is never paused, even on a path too short for it.
        let (grants, _) = allocate(10_000, &demands);
        assert_eq!(grants, vec![Grant::Pause, Grant::Pause, Grant::Full]);
    }

    #[test]
    fn screen_share_goes_first_then_the_speaker() {
        let mut screen = camera(&[(0, 300_000), (1, 1_200_000)]);
        screen.priority = Priority::Screen;
        let mut speaker = camera(&THREE);
        speaker.priority = Priority::Speaker;
        let demands = vec![camera(&THREE), speaker.clone(), screen];
        // 95 % of 2.2M = 2.09M: lowest layers take 600k; the screen's upgrade 900k; the
        // speaker's mid layer 350k; the other camera stays low (240k left).
        let (grants, _) = allocate(2_200_000, &demands);
        assert_eq!(grants, vec![Grant::Cap(0), Grant::Cap(1), Grant::Full]);
        // A single-layer screen share of 250k on a 300k path: it plays, the cameras pause.
        let mut share = camera(&[]);
        share.priority = Priority::Screen;
        share.rate = 200_000;
        let demands = vec![camera(&THREE), speaker, share, audio()];
        let (grants, _) = allocate(300_000, &demands);
        assert_eq!(
            grants,
            vec![Grant::Pause, Grant::Pause, Grant::Full, Grant::Full]
        );
        // Even when it alone is more than the path: never paused.
        let mut big = demands.clone();
        big[2].rate = 400_000;
        let (grants, _) = allocate(300_000, &big);
        assert_eq!(grants[2], Grant::Full);
    }

    /// Moving up needs the margin; staying does not.
    #[test]
    fn moving_up_needs_room_to_spare() {
        let mut d = camera(&[(0, 140_000), (1, 270_000)]);
        let mut a = audio();
        a.rate = 62_000;
        // 95 % of 380k = 361k - 62k audio - 140k base = 159k left: the top layer's 130k
        // more fits, but not with the 15 % margin (57k) on top.
        d.current = Grant::Cap(0);
        let (grants, _) = allocate(380_000, &[d.clone(), a.clone()]);
        assert_eq!(grants[0], Grant::Cap(0), "no climb without the margin");
        d.current = Grant::Full;
        let (grants, _) = allocate(380_000, &[d.clone(), a.clone()]);
        assert_eq!(grants[0], Grant::Full, "no fall while it fits");
        // A paused track resumes only with the margin too: 95 % of 230k - 62k = 156.5k is
        // not 140k + 34.5k; 95 % of 280k - 62k = 204k is 140k + 42k.
        d.current = Grant::Pause;
        let (grants, _) = allocate(230_000, &[d.clone(), a.clone()]);
        assert_eq!(grants[0], Grant::Pause);
        let (grants, _) = allocate(280_000, &[d.clone(), a.clone()]);
        assert_eq!(grants[0], Grant::Cap(0));
        // A playing track rides out a dip: 95 % of 190k - 62k = 118.5k is short of its 140k
        // by less than a quarter; 95 % of 160k - 62k = 90k is not.
        d.current = Grant::Cap(0);
        let (grants, _) = allocate(190_000, &[d.clone(), a.clone()]);
        assert_eq!(grants[0], Grant::Cap(0));
        let (grants, _) = allocate(160_000, &[d, a]);
        assert_eq!(grants[0], Grant::Pause);
    }

    #[test]
    fn a_tile_that_asks_for_less_is_not_capped_below_it() {
        // The tile only needs layer 1 (the publisher offered two): it fits, nothing held.
        let demands = vec![camera(&THREE[..2])];
        let (grants, desired) = allocate(700_000, &demands);
        assert_eq!(grants, vec![Grant::Full]);
        assert_eq!(desired, 500_000);
    }
}
