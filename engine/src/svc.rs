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
//!   0), so no picture reaches the decoder with a layer cut in half.
//! - Down at any picture: a lower layer never depends on a higher one.
//! - Up only at a keyframe: in the `_KEY` modes browsers use, the upper layers refer to
//!   the lower ones only there. Until then [`SvcSelector::needs_keyframe`] is true, and the
//!   caller asks the publisher for one.
//! - The RTP marker bit ends a whole picture, so it is set on the last packet of the
//!   highest layer forwarded (its E bit), as the picture's true last packet is dropped.
//!
//! Temporal layers all pass (a subscriber's rate is chosen by spatial layer).

use crate::codec::Vp9Layer;

/// What to do with one packet of the stream for one subscriber.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SvcVerdict {
    /// Forward it, with this marker bit.
    Forward { marker: bool },
    /// Leave it out.
    Drop,
}

/// One subscriber's spatial layer of one SVC track.
#[derive(Clone, Copy, Debug, Default)]
pub struct SvcSelector {
    /// The layer the subscriber should get.
    target: u8,
    /// The layer it gets now (None before the first picture).
    current: Option<u8>,
}

impl SvcSelector {
    /// A selector that starts at `target` with the first picture.
    pub fn new(target: u8) -> Self {
        SvcSelector {
            target,
            current: None,
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

    /// The highest spatial layer forwarded now.
    pub fn current(&self) -> Option<u8> {
        self.current
    }

    /// True while the subscriber waits to move up: a keyframe lets it.
    pub fn needs_keyframe(&self) -> bool {
        self.current.is_some_and(|c| self.target > c)
    }

    /// Decides for a packet of layer `layer`; `keyframe`: it starts a keyframe picture;
    /// `marker`: its RTP marker bit as sent.
    pub fn select(&mut self, layer: Vp9Layer, keyframe: bool, marker: bool) -> SvcVerdict {
        if layer.spatial == 0 && layer.begin {
            match self.current {
                None => self.current = Some(self.target),
                Some(c) if self.target < c => self.current = Some(self.target),
                Some(c) if self.target > c && keyframe => self.current = Some(self.target),
                Some(_) => {}
            }
        }
        match self.current {
            Some(c) if layer.spatial <= c => SvcVerdict::Forward {
                marker: marker || (layer.spatial == c && layer.end),
            },
            _ => SvcVerdict::Drop,
        }
    }

    /// Whether a retransmission of a packet of `layer` may go to the subscriber.
    pub fn allows_retransmission(&self, layer: Vp9Layer) -> bool {
        self.current.is_some_and(|c| layer.spatial <= c)
    }
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
        }
    }

    /// One picture of three layers, two packets each: the verdicts in order.
    fn picture(s: &mut SvcSelector, keyframe: bool) -> Vec<SvcVerdict> {
        let mut out = Vec::new();
        for spatial in 0..3 {
            for (begin, end) in [(true, false), (false, true)] {
                let marker = spatial == 2 && end;
                out.push(s.select(
                    layer(spatial, begin, end),
                    keyframe && spatial == 0 && begin,
                    marker,
                ));
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
        assert_eq!(s.select(layer(0, true, true), false, false), F);
        s.set_target(0);
        assert_eq!(s.select(layer(1, true, true), false, false), F);
        assert_eq!(s.select(layer(2, true, true), false, true), M);
        assert_eq!(picture(&mut s, false), vec![F, M, D, D, D, D]);
        // Up: not before a keyframe.
        s.set_target(2);
        assert!(s.needs_keyframe());
        assert_eq!(picture(&mut s, false), vec![F, M, D, D, D, D]);
        assert_eq!(picture(&mut s, true), vec![F, F, F, F, F, M]);
        assert!(!s.needs_keyframe());
        assert!(s.allows_retransmission(layer(2, false, false)));
        s.set_target(1);
        picture(&mut s, false);
        assert!(!s.allows_retransmission(layer(2, false, false)));
        assert!(s.allows_retransmission(layer(1, false, false)));
    }

    #[test]
    fn nothing_before_the_first_picture_start() {
        let mut s = SvcSelector::new(2);
        assert_eq!(s.select(layer(0, false, true), false, false), D);
        assert_eq!(s.select(layer(1, true, true), false, false), D);
        assert!(!s.needs_keyframe());
        assert!(!s.allows_retransmission(layer(0, true, true)));
        assert_eq!(s.select(layer(0, true, false), false, false), F);
        assert_eq!(s.current(), Some(2));
    }
}
