//! Per-subscriber spatial layer selection of a scalable (SVC) VP9 stream.
//!
//! A VP9 publisher with spatial scalability (`L2T3_KEY`, `L3T3_KEY`, ...) sends one RTP
//! stream in which every picture carries up to three layer frames, smallest first (RFC
//! 9628). A subscriber that needs a smaller picture gets the packets of the spatial layers
//! up to its target and none above; its [`crate::forwarder::Forwarder`] numbers the
//! remaining packets on without gaps ([`crate::forwarder::Forwarder::skip`]).
//!
//! Rules, per packet (sans-IO, no clock):
//! - The layer changes only where a picture starts (the first packet of its spatial layer
//!   0, newer than every packet seen: a late one, recovered upstream, changes nothing), so
//!   no picture reaches the decoder with a layer cut in half.
//! - Down at any picture: a lower layer never depends on a higher one.
//! - Up only at a keyframe: in the `_KEY` modes browsers use, the upper layers refer to
//!   the lower ones only there. Until then [`SvcSelector::needs_keyframe`] is true, and the
//!   caller asks the publisher for one.
//! - The RTP marker bit ends a whole picture, so it is set on the last packet of the
//!   highest layer forwarded (its E bit), as the picture's true last packet is dropped. A
//!   retransmission carries the marker its original went out with.
//!
//!
//! Temporal layers are chosen as a second target: pictures whose temporal layer (TID) is
//! above the subscriber's are left out whole, every spatial layer of them (see
//! [`TemporalFilter`], which VP8 streams use too).

use crate::codec::{VP8_DESCRIPTOR_MAX, Vp8Munger, Vp9Layer, vp8_temporal};
use crate::forwarder::Forwarder;
use crate::media::MediaPacket;
use crate::seq::seq_diff;

/// How many recent sequence numbers remember whether they went out and whether their
/// marker bit was moved onto them: twice the publisher's retransmission cache (1,024
/// packets), so a NACK the cache can still answer never reads a slot a newer packet wrote.
const MARKER_WINDOW: usize = 2048;

/// Temporal layers told apart in layer choices: TIDs from this one up count as one.
pub const SVC_TEMPORAL_LAYERS: u8 = 4;

/// One byte naming a spatial and temporal layer pair for layer choices (bandwidth caps,
/// allocation ladders): ordered as the pairs are, spatial first. Temporal layers from
/// [`SVC_TEMPORAL_LAYERS`]` - 1` up share the top value, which stands for all of them.
pub fn svc_layer_id(spatial: u8, temporal: u8) -> u8 {
    (spatial.min(0x3f) << 2) | temporal.min(SVC_TEMPORAL_LAYERS - 1)
}

/// The spatial and temporal targets a [`svc_layer_id`] stands for (the top temporal value:
/// every temporal layer).
pub fn svc_layer_targets(id: u8) -> (u8, u8) {
    let temporal = id & 0x03;
    let temporal = if temporal == SVC_TEMPORAL_LAYERS - 1 {
        u8::MAX
    } else {
        temporal
    };
    (id >> 2, temporal)
}

/// What to do with one packet of the stream for one subscriber.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SvcVerdict {
    /// Forward it, with this marker bit.
    Forward { marker: bool },
    /// Leave it out.
    Drop,
}

/// One subscriber's spatial layer of one SVC track.
#[derive(Clone, Debug)]
pub struct SvcSelector {
    /// The spatial layer the subscriber should get.
    target: u8,
    /// The spatial layer it gets now (None before the first picture).
    current: Option<u8>,
    /// Its temporal layers.
    temporal: TemporalFilter,
    /// The newest source sequence number seen.
    newest: Option<u16>,
    /// Bit `seq % MARKER_WINDOW`: that packet went out with a marker it did not carry.
    moved_markers: [u64; MARKER_WINDOW / 64],
    /// Bit `seq % MARKER_WINDOW`: that packet went out (a retransmission is answered for
    /// it whatever the layers are now: after a move down, the subscriber still completes
    /// the pictures it got part of, or its decoder waits for them until a keyframe).
    sent: [u64; MARKER_WINDOW / 64],
}

impl SvcSelector {
    /// A selector that starts at `target` with the first picture.
    pub fn new(target: u8) -> Self {
        SvcSelector {
            target,
            current: None,
            temporal: TemporalFilter::new(u8::MAX),
            newest: None,
            moved_markers: [0; MARKER_WINDOW / 64],
            sent: [0; MARKER_WINDOW / 64],
        }
    }

    /// The highest spatial layer the subscriber should get from now on (applied at the next
    /// picture going down, at the next keyframe going up).
    pub fn set_target(&mut self, spatial: u8) {
        self.target = spatial;
    }

    pub fn target(&self) -> u8 {
        self.target
    }

    /// The highest temporal layer the subscriber should get from now on (applied at the
    /// next picture going down, at the next switching-up point or keyframe going up).
    pub fn set_temporal_target(&mut self, temporal: u8) {
        self.temporal.set_target(temporal);
    }

    pub fn temporal_target(&self) -> u8 {
        self.temporal.target()
    }

    /// The highest temporal layer forwarded now.
    pub fn current_temporal(&self) -> Option<u8> {
        self.temporal.current()
    }

    /// The highest spatial layer forwarded now.
    pub fn current(&self) -> Option<u8> {
        self.current
    }

    /// True while the subscriber waits to move up: a keyframe lets it.
    pub fn needs_keyframe(&self) -> bool {
        self.current.is_some_and(|c| self.target > c)
    }

    /// Decides for the packet with source sequence number `seq` of layer `layer`;
    /// `keyframe`: it starts a keyframe picture; `marker`: its RTP marker bit as sent.
    pub fn select(
        &mut self,
        seq: u16,
        layer: Vp9Layer,
        keyframe: bool,
        marker: bool,
    ) -> SvcVerdict {
        let newest = self.newest.is_none_or(|n| seq_diff(seq, n) > 0);
        if newest {
            self.newest = Some(seq);
        }
        if newest && layer.spatial == 0 && layer.begin {
            match self.current {
                None => self.current = Some(self.target),
                Some(c) if self.target < c => self.current = Some(self.target),
                Some(c) if self.target > c && keyframe => self.current = Some(self.target),
                Some(_) => {}
            }
            self.temporal
                .on_picture(layer.temporal, layer.switch_up, keyframe);
        }
        let (word, bit) = marker_bit(seq);
        match self.current {
            Some(c) if layer.spatial <= c && self.temporal.passes(layer.temporal) => {
                let moved = !marker && layer.spatial == c && layer.end;
                if moved {
                    self.moved_markers[word] |= bit;
                } else {
                    self.moved_markers[word] &= !bit;
                }
                self.sent[word] |= bit;
                SvcVerdict::Forward {
                    marker: marker || moved,
                }
            }
            _ => {
                self.sent[word] &= !bit;
                SvcVerdict::Drop
            }
        }
    }

    /// For a retransmission of the packet `seq` (`marker` as the publisher sent it): the
    /// marker bit it went out with, or None if it did not go out (left out, or too long ago
    /// to tell).
    pub fn retransmission(&self, seq: u16, marker: bool) -> Option<bool> {
        let (word, bit) = marker_bit(seq);
        if self.sent[word] & bit == 0 {
            return None;
        }
        Some(marker || self.moved_markers[word] & bit != 0)
    }
}

/// One subscriber's temporal layer of a stream whose pictures carry a temporal layer index
/// (VP9 and VP8 payload descriptors): pictures above it are left out whole.
///
/// Down at any picture (a lower temporal layer never refers to a higher one); up one layer
/// at a time, at a picture of the next layer marked as a switching point, or at once at a
/// keyframe. A switching point (VP9's U, VP8's Y) is a picture that refers to no earlier
/// one of its own layer or above: with the layers below it received, it decodes. Taking
/// one layer per switching point keeps that true whatever the structure. In libwebrtc's
/// (VP9 `L*T3`: four frames, U on the first TL2 and the TL1; VP8 `L1T3`: eight frames, Y
/// on the first TL2 and TL1) two layers up take at most two such groups (under 0.6 s at
/// 30 frames/s), so no keyframe is asked for.
#[derive(Clone, Copy, Debug)]
pub struct TemporalFilter {
    target: u8,
    /// None before the first picture.
    current: Option<u8>,
}

impl TemporalFilter {
    pub fn new(target: u8) -> Self {
        TemporalFilter {
            target,
            current: None,
        }
    }

    /// The highest temporal layer the subscriber should get (applied at the next picture).
    pub fn set_target(&mut self, temporal: u8) {
        self.target = temporal;
    }

    pub fn target(&self) -> u8 {
        self.target
    }

    /// The highest temporal layer passed now.
    pub fn current(&self) -> Option<u8> {
        self.current
    }

    /// Starts over at the target (the stream restarted at a keyframe).
    pub fn restart(&mut self) {
        self.current = Some(self.target);
    }

    /// A new picture starts (its first packet, newer than all seen): of temporal layer
    /// `temporal`, a switching point or not, a keyframe or not.
    pub fn on_picture(&mut self, temporal: u8, switch_up: bool, keyframe: bool) {
        let target = self.target;
        match self.current {
            None => self.current = Some(target),
            Some(c) if target < c || (target > c && keyframe) => self.current = Some(target),
            Some(c) if target > c && switch_up && temporal == c.saturating_add(1) => {
                self.current = Some(temporal);
            }
            Some(_) => {}
        }
    }

    /// True if a packet of temporal layer `temporal` goes to the subscriber now.
    pub fn passes(&self, temporal: u8) -> bool {
        self.current.is_some_and(|c| temporal <= c)
    }
}

/// One subscriber's temporal layer of a single-spatial-layer stream (a VP8 stream, or one
/// simulcast layer of it): a [`TemporalFilter`] fed with the stream's picture starts. Its
/// caller asks only for packets of the source its forwarder follows now; a new forwarder
/// segment (a simulcast switch, a resume, a publisher's restart: each begins at a
/// keyframe) starts over at the target.
#[derive(Clone, Copy, Debug)]
pub struct TemporalSelector {
    filter: TemporalFilter,
    segment: Option<u64>,
    newest: Option<u16>,
}

impl Default for TemporalSelector {
    fn default() -> Self {
        TemporalSelector {
            filter: TemporalFilter::new(u8::MAX),
            segment: None,
            newest: None,
        }
    }
}

impl TemporalSelector {
    pub fn set_target(&mut self, temporal: u8) {
        self.filter.set_target(temporal);
    }

    pub fn target(&self) -> u8 {
        self.filter.target()
    }

    pub fn current(&self) -> Option<u8> {
        self.filter.current()
    }

    /// True if the packet `seq` of forwarder segment `segment`, in temporal layer
    /// `temporal`, goes to the subscriber. `start`: it is its frame's first packet;
    /// `switch_up`: that frame is a switching point; `keyframe`: a keyframe.
    pub fn select(
        &mut self,
        segment: u64,
        seq: u16,
        temporal: u8,
        switch_up: bool,
        start: bool,
        keyframe: bool,
    ) -> bool {
        if self.segment != Some(segment) {
            self.segment = Some(segment);
            self.newest = None;
            self.filter.restart();
        }
        let newest = self.newest.is_none_or(|n| seq_diff(seq, n) > 0);
        if newest {
            self.newest = Some(seq);
            if start {
                self.filter.on_picture(temporal, switch_up, keyframe);
            }
        }
        self.filter.passes(temporal)
    }
}

/// One subscriber's copy of a VP8 stream: its temporal layers ([`TemporalSelector`]) and
/// its payload descriptors rewritten ([`Vp8Munger`]), beside the subscriber's
/// [`Forwarder`] (which numbers the packets and follows simulcast switches).
#[derive(Clone, Debug, Default)]
pub struct Vp8Stream {
    munger: Vp8Munger,
    temporal: TemporalSelector,
}

impl Vp8Stream {
    /// The highest temporal layer the subscriber should get (see [`TemporalFilter`]).
    pub fn set_temporal_target(&mut self, temporal: u8) {
        self.temporal.set_target(temporal);
    }

    pub fn temporal_target(&self) -> u8 {
        self.temporal.target()
    }

    /// True if `pkt` (a first send, not a retransmission) is left out of the subscriber's
    /// stream: its picture is above the subscriber's temporal layer. It is then numbered
    /// past in `forwarder` (sequence numbers) and here (picture ids), so the subscriber sees
    /// no gap. Only packets of the source `forwarder` follows are judged: another layer's
    /// reach the forwarder to switch at their keyframe (every keyframe is TL0).
    pub fn leave_out(&mut self, forwarder: &mut Forwarder, pkt: &MediaPacket) -> bool {
        if forwarder.current_source() != Some(pkt.ssrc) {
            return false;
        }
        let Some(t) = vp8_temporal(&pkt.payload) else {
            return false;
        };
        let segment = forwarder.segments();
        if self
            .temporal
            .select(segment, pkt.seq, t.temporal, t.sync, t.start, pkt.keyframe)
        {
            return false;
        }
        // A packet that cannot be hidden (a newer one already went out) leaves a hole the
        // subscriber asks for again; its picture id is left as it is.
        if forwarder.skip(pkt) {
            self.munger.dropped(segment, &pkt.payload);
        }
        true
    }

    /// The rewritten descriptor of a packet going out in forwarder segment `segment` (see
    /// [`Vp8Munger::munge`]).
    pub fn munge(
        &mut self,
        segment: u64,
        retransmission: bool,
        payload: &[u8],
        out: &mut [u8; VP8_DESCRIPTOR_MAX],
    ) -> usize {
        self.munger.munge(segment, retransmission, payload, out)
    }
}

fn marker_bit(seq: u16) -> (usize, u64) {
    let i = usize::from(seq) % MARKER_WINDOW;
    (i / 64, 1 << (i % 64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(spatial: u8, begin: bool, end: bool) -> Vp9Layer {
        Vp9Layer {
            spatial,
            temporal: 0,
            begin,
            end,
            intra: false,
            switch_up: false,
        }
    }

    /// The sequence number after the newest seen (a wrap early on).
    fn next(s: &SvcSelector) -> u16 {
        s.newest.map_or(65530, |n| n.wrapping_add(1))
    }

    /// `select` with the next sequence number.
    fn sel(s: &mut SvcSelector, l: Vp9Layer, keyframe: bool, marker: bool) -> SvcVerdict {
        let seq = next(s);
        s.select(seq, l, keyframe, marker)
    }

    /// One picture of three layers, two packets each: the verdicts in order.
    fn picture(s: &mut SvcSelector, keyframe: bool) -> Vec<SvcVerdict> {
        let mut out = Vec::new();
        for spatial in 0..3 {
            for (begin, end) in [(true, false), (false, true)] {
                let marker = spatial == 2 && end;
                let key = keyframe && spatial == 0 && begin;
                out.push(sel(s, layer(spatial, begin, end), key, marker));
            }
        }
        out
    }

    const F: SvcVerdict = SvcVerdict::Forward { marker: false };
    const M: SvcVerdict = SvcVerdict::Forward { marker: true };
    const D: SvcVerdict = SvcVerdict::Drop;

    #[test]
    fn layers_above_the_target_are_dropped_and_the_marker_moves_down() {
        let mut s = SvcSelector::new(1);
        assert_eq!(picture(&mut s, false), vec![F, F, F, M, D, D]);
        let mut s = SvcSelector::new(0);
        assert_eq!(picture(&mut s, false), vec![F, M, D, D, D, D]);
        let mut s = SvcSelector::new(2);
        assert_eq!(picture(&mut s, false), vec![F, F, F, F, F, M]);
        // A target above what is sent: everything, the publisher's own marker.
        let mut s = SvcSelector::new(5);
        assert_eq!(picture(&mut s, false), vec![F, F, F, F, F, M]);
    }

    #[test]
    fn down_at_the_next_picture_up_at_the_next_keyframe() {
        let mut s = SvcSelector::new(2);
        picture(&mut s, false);
        // Mid-picture change: this picture completes at the old layer.
        assert_eq!(sel(&mut s, layer(0, true, true), false, false), F);
        s.set_target(0);
        assert_eq!(sel(&mut s, layer(1, true, true), false, false), F);
        assert_eq!(sel(&mut s, layer(2, true, true), false, true), M);
        assert_eq!(picture(&mut s, false), vec![F, M, D, D, D, D]);
        // Up: not before a keyframe.
        s.set_target(2);
        assert!(s.needs_keyframe());
        assert_eq!(picture(&mut s, false), vec![F, M, D, D, D, D]);
        assert_eq!(picture(&mut s, true), vec![F, F, F, F, F, M]);
        assert!(!s.needs_keyframe());
        // The top layer's first packet of that picture went out...
        let top = next(&s).wrapping_sub(2);
        assert_eq!(s.retransmission(top, false), Some(false));
        s.set_target(1);
        picture(&mut s, false);
        // ...so after the move down it is still resent (the subscriber completes the
        // picture it got part of); the one left out since is not.
        assert_eq!(s.retransmission(top, false), Some(false));
        let left_out = next(&s).wrapping_sub(2);
        assert_eq!(s.retransmission(left_out, false), None);
        assert_eq!(
            s.retransmission(left_out.wrapping_sub(2), false),
            Some(false)
        );
    }

    #[test]
    fn nothing_before_the_first_picture_start() {
        let mut s = SvcSelector::new(2);
        assert_eq!(sel(&mut s, layer(0, false, true), false, false), D);
        assert_eq!(sel(&mut s, layer(1, true, true), false, false), D);
        assert!(!s.needs_keyframe());
        assert_eq!(s.retransmission(next(&s).wrapping_sub(1), false), None);
        assert_eq!(sel(&mut s, layer(0, true, false), false, false), F);
        assert_eq!(s.current(), Some(2));
    }

    /// A retransmission carries the marker its original went out with, even after the
    /// subscriber's layer changed.
    #[test]
    fn retransmissions_keep_their_marker() {
        let mut s = SvcSelector::new(1);
        picture(&mut s, false);
        let first = next(&s);
        // The 4th packet (layer 1's last) gets the moved marker.
        assert_eq!(picture(&mut s, false)[3], M);
        let l1_end = first.wrapping_add(3);
        s.set_target(2);
        picture(&mut s, true);
        assert_eq!(s.retransmission(l1_end, false), Some(true));
        let l1_start = l1_end.wrapping_sub(1);
        assert_eq!(s.retransmission(l1_start, false), Some(false));
    }

    /// A late first packet of an older picture (recovered upstream) switches nothing.
    #[test]
    fn a_late_picture_start_switches_nothing() {
        let mut s = SvcSelector::new(0);
        picture(&mut s, false);
        let start = next(&s);
        s.set_target(2);
        // A keyframe whose first packet is lost upstream: its upper layers are dropped.
        let mut seq = start.wrapping_add(1);
        for spatial in 0..3u8 {
            let v = s.select(seq, layer(spatial, spatial > 0, true), false, spatial == 2);
            assert_eq!(v, if spatial == 0 { M } else { D }, "layer {spatial}");
            seq = seq.wrapping_add(1);
        }
        // The recovered first packet arrives late: still on layer 0, still waiting.
        assert_eq!(s.select(start, layer(0, true, false), true, false), F);
        assert_eq!(s.current(), Some(0));
        assert!(s.needs_keyframe());
    }

    /// One picture of two spatial layers (one packet each) in temporal layer `tid`: its
    /// verdicts.
    fn temporal_picture(s: &mut SvcSelector, tid: u8, up: bool, keyframe: bool) -> Vec<SvcVerdict> {
        (0..2u8)
            .map(|spatial| {
                let mut l = layer(spatial, true, true);
                l.temporal = tid;
                l.switch_up = up;
                sel(s, l, keyframe && spatial == 0, spatial == 1)
            })
            .collect()
    }

    /// libwebrtc's three-layer group of pictures: TL0, TL2 (U), TL1 (U), TL2.
    const GOF: [(u8, bool); 4] = [(0, false), (2, true), (1, true), (2, false)];

    /// For each picture of one group: true if it was forwarded (whole), false if dropped.
    fn group(s: &mut SvcSelector) -> Vec<bool> {
        GOF.iter()
            .map(|(tid, up)| {
                let v = temporal_picture(s, *tid, *up, false);
                assert!(v == [F, M] || v == [D, D], "picture cut: {v:?}");
                v == [F, M]
            })
            .collect()
    }

    #[test]
    fn temporal_layers_down_at_once_up_one_switching_point_at_a_time() {
        let mut s = SvcSelector::new(1);
        s.set_temporal_target(0);
        assert_eq!(group(&mut s), [true, false, false, false]);
        assert_eq!(s.current_temporal(), Some(0));
        // Up to TL2: TL1 at its switching point, then TL2 at its first one.
        s.set_temporal_target(2);
        assert_eq!(group(&mut s), [true, false, true, false]);
        assert_eq!(s.current_temporal(), Some(1));
        assert_eq!(group(&mut s), [true, true, true, true]);
        assert_eq!(s.current_temporal(), Some(2));
        assert!(!s.needs_keyframe());
        // Down: at the next picture.
        s.set_temporal_target(1);
        assert_eq!(group(&mut s), [true, false, true, false]);
        // A picture left out is not resent; one that went out is.
        let tl2 = next(&s).wrapping_sub(2);
        assert_eq!(s.retransmission(tl2, false), None);
        assert_eq!(s.retransmission(tl2.wrapping_sub(2), true), Some(true));
        // Up at a keyframe: at once.
        s.set_temporal_target(0);
        group(&mut s);
        s.set_temporal_target(2);
        assert_eq!(temporal_picture(&mut s, 0, false, true), [F, M]);
        assert_eq!(s.current_temporal(), Some(2));
        assert_eq!(group(&mut s), [true, true, true, true]);
    }

    /// A picture above the temporal layer is dropped whole, whatever its spatial layers.
    #[test]
    fn temporal_and_spatial_targets_together() {
        let mut s = SvcSelector::new(0);
        s.set_temporal_target(1);
        let mut v = Vec::new();
        for (tid, up) in GOF {
            for spatial in 0..3u8 {
                let mut l = layer(spatial, true, true);
                (l.temporal, l.switch_up) = (tid, up);
                v.push(sel(&mut s, l, false, spatial == 2));
            }
        }
        assert_eq!(v, [M, D, D, D, D, D, M, D, D, D, D, D]);
    }

    #[test]
    fn temporal_selector_follows_one_segment_and_restarts_on_another() {
        let mut t = TemporalSelector::default();
        t.set_target(0);
        let mut seq = 65533u16;
        let mut frame = |t: &mut TemporalSelector, segment: u64, tid: u8, up: bool| {
            // Two packets per frame; the second's verdict must match the first's.
            let a = t.select(segment, seq, tid, up, true, false);
            let b = t.select(segment, seq.wrapping_add(1), tid, up, false, false);
            assert_eq!(a, b);
            seq = seq.wrapping_add(2);
            a
        };
        // The first packets of a segment: at the target at once (it starts at a keyframe).
        let got: Vec<bool> = GOF
            .iter()
            .map(|(tid, up)| frame(&mut t, 1, *tid, *up))
            .collect();
        assert_eq!(got, [true, false, false, false]);
        t.set_target(2);
        let got: Vec<bool> = GOF
            .iter()
            .map(|(tid, up)| frame(&mut t, 1, *tid, *up))
            .collect();
        assert_eq!(got, [true, false, true, false]);
        let got: Vec<bool> = GOF
            .iter()
            .map(|(tid, up)| frame(&mut t, 1, *tid, *up))
            .collect();
        assert_eq!(got, [true, true, true, true]);
        // A late first packet of an older frame switches nothing.
        t.set_target(0);
        assert!(t.select(1, seq.wrapping_sub(10), 2, false, true, false));
        assert_eq!(t.current(), Some(2));
        // Another segment (here a restart with a lower sequence number): over at the target.
        assert!(!t.select(2, 7, 1, true, false, false));
        assert_eq!(t.current(), Some(0));
    }

    /// A VP8 `L1T3` stream as libwebrtc sends it (eight frames: TL0, TL2 (Y), TL1 (Y), TL2,
    /// TL0, TL2, TL1, TL2), two packets a frame, a keyframe first.
    fn vp8_frames(count: u16) -> Vec<MediaPacket> {
        const PATTERN: [(u8, bool); 8] = [
            (0, false),
            (2, true),
            (1, true),
            (2, false),
            (0, false),
            (2, false),
            (1, false),
            (2, false),
        ];
        let mut out = Vec::new();
        let mut seq = 65000u16;
        let mut tl0 = 0u8;
        for f in 0..count {
            let (tid, sync) = PATTERN[usize::from(f % 8)];
            if tid == 0 && f > 0 {
                tl0 = tl0.wrapping_add(1);
            }
            let pid = 30000 + f;
            for part in 0..2u8 {
                let mut payload = vec![
                    if part == 0 { 0x90 } else { 0x80 },
                    0xe0,
                    0x80 | (pid >> 8) as u8,
                    pid as u8,
                    tl0,
                    tid << 6 | if sync { 0x20 } else { 0 },
                ];
                // VP8 payload header: a keyframe's first packet (P = 0) with its start code.
                if f == 0 && part == 0 {
                    payload.extend_from_slice(&[
                        0x00, 0x00, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0x68, 0x01,
                    ]);
                } else {
                    payload.extend_from_slice(&[0x01, 0xaa]);
                }
                out.push(MediaPacket {
                    ssrc: crate::media::Ssrc(7),
                    seq,
                    timestamp: u32::from(f) * 3000,
                    marker: part == 1,
                    payload_type: 96,
                    payload: bytes::Bytes::from(payload),
                    arrival: std::time::Instant::now(),
                    keyframe: f == 0,
                    audio_level: None,
                    layer: None,
                    dependency: None,
                });
                seq = seq.wrapping_add(1);
            }
        }
        out
    }

    /// What a subscriber receives of `packets` through a forwarder and a [`Vp8Stream`]:
    /// (sequence number, picture id, TL0PICIDX, TID) of each packet sent.
    fn receive(
        stream: &mut Vp8Stream,
        fwd: &mut Forwarder,
        packets: &[MediaPacket],
    ) -> Vec<(u16, u16, u8, u8)> {
        let mut got = Vec::new();
        for p in packets {
            if stream.leave_out(fwd, p) {
                continue;
            }
            let Ok(h) = fwd.forward(p) else { continue };
            let mut out = [0u8; VP8_DESCRIPTOR_MAX];
            let n = stream.munge(fwd.segments(), false, &p.payload, &mut out);
            assert_eq!(n, 6);
            let pid = (u16::from(out[2] & 0x7f) << 8) | u16::from(out[3]);
            got.push((h.seq, pid, out[4], out[5] >> 6));
        }
        got
    }

    #[test]
    fn a_vp8_stream_thinned_to_tl0_runs_on_without_gaps_and_climbs_back() {
        let packets = vp8_frames(48);
        let mut fwd = Forwarder::new(
            crate::media::Ssrc(1),
            crate::media::MediaKind::Video,
            90_000,
        );
        let mut stream = Vp8Stream::default();
        stream.set_temporal_target(0);
        let got = receive(&mut stream, &mut fwd, &packets[..64]);
        // TL0 only: frames 0, 4, ..., 28 (two packets each), numbered without gaps.
        assert_eq!(got.len(), 16);
        assert!(got.iter().all(|g| g.3 == 0));
        for w in got.windows(2) {
            assert_eq!(w[1].0, w[0].0.wrapping_add(1), "sequence numbers run on");
        }
        let pids: Vec<u16> = got.iter().step_by(2).map(|g| g.1).collect();
        assert_eq!(
            pids,
            (30000..30008).collect::<Vec<u16>>(),
            "picture ids run on"
        );
        let tl0s: Vec<u8> = got.iter().step_by(2).map(|g| g.2).collect();
        assert_eq!(tl0s, (0..8).collect::<Vec<u8>>());
        // Back to every layer: TL1 from its sync frame (34), TL2 from the next TL2 sync
        // frame (41); the picture ids still run on.
        stream.set_temporal_target(u8::MAX);
        let got = receive(&mut stream, &mut fwd, &packets[64..]);
        let tids: Vec<u8> = got.iter().step_by(2).map(|g| g.3).collect();
        assert_eq!(tids, [0, 1, 0, 1, 0, 2, 1, 2, 0, 2, 1, 2]);
        let pids: Vec<u16> = got.iter().step_by(2).map(|g| g.1).collect();
        assert_eq!(pids, (30008..30020).collect::<Vec<u16>>());
        let first = got[0].0;
        for (i, g) in got.iter().enumerate() {
            assert_eq!(g.0, first.wrapping_add(i as u16), "sequence numbers run on");
        }
        assert_eq!(stream.temporal_target(), u8::MAX);
    }
}
