//! Wrapping sequence-number and timestamp arithmetic (RFC 1982 serial-number style).
//!
//! RTP sequence numbers (16 bit) and timestamps (32 bit) wrap around. "Newer" means ahead by
//! less than half the number space; a distance of exactly half is ambiguous and counts as
//! neither newer nor older. The unwrappers extend wrapped values to 64 bits relative to the
//! highest value seen so far, so reordered input maps to the right extended value.

/// True if `a` comes after `b` (wrap-around aware, half range). Exactly half the space apart
/// is ambiguous and yields false in both directions.
pub fn seq_newer(a: u16, b: u16) -> bool {
    seq_diff(a, b) > 0
}

/// Signed shortest distance `a - b` in `-32768..=32767` (wrap-around aware).
pub fn seq_diff(a: u16, b: u16) -> i32 {
    i32::from(a.wrapping_sub(b) as i16)
}

/// True if timestamp `a` comes after `b` (wrap-around aware, half range).
pub fn ts_newer(a: u32, b: u32) -> bool {
    ts_diff(a, b) > 0
}

/// Signed shortest distance `a - b` between two RTP timestamps.
pub fn ts_diff(a: u32, b: u32) -> i64 {
    i64::from(a.wrapping_sub(b) as i32)
}

/// Extends 16-bit sequence numbers to 64 bits.
///
/// The first value maps to `seq + 1 << 16`, so packets up to 65536 before the first one still
/// unwrap without underflow. Every later value is placed at the shortest distance from the
/// highest value seen so far; only newer values move that reference, so reordering does not
/// disturb it.
#[derive(Clone, Debug, Default)]
pub struct SeqUnwrapper {
    highest: Option<u64>,
}

impl SeqUnwrapper {
    /// An unwrapper that has seen nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Extends `seq` to 64 bits.
    pub fn unwrap(&mut self, seq: u16) -> u64 {
        let Some(highest) = self.highest else {
            let ext = (1 << 16) + u64::from(seq);
            self.highest = Some(ext);
            return ext;
        };
        let ext = highest.saturating_add_signed(i64::from(seq_diff(seq, highest as u16)));
        if ext > highest {
            self.highest = Some(ext);
        }
        ext
    }

    /// Extends `seq` without recording it.
    pub fn peek(&self, seq: u16) -> u64 {
        match self.highest {
            None => (1 << 16) + u64::from(seq),
            Some(highest) => {
                highest.saturating_add_signed(i64::from(seq_diff(seq, highest as u16)))
            }
        }
    }

    /// Highest extended value seen so far.
    pub fn highest(&self) -> Option<u64> {
        self.highest
    }
}

/// Extends 32-bit RTP timestamps to 64 bits; same rules as [`SeqUnwrapper`] with the first
/// value mapping to `ts + 1 << 32`.
#[derive(Clone, Debug, Default)]
pub struct TsUnwrapper {
    highest: Option<u64>,
}

impl TsUnwrapper {
    /// An unwrapper that has seen nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Extends `ts` to 64 bits.
    pub fn unwrap(&mut self, ts: u32) -> u64 {
        let Some(highest) = self.highest else {
            let ext = (1 << 32) + u64::from(ts);
            self.highest = Some(ext);
            return ext;
        };
        let ext = highest.saturating_add_signed(ts_diff(ts, highest as u32));
        if ext > highest {
            self.highest = Some(ext);
        }
        ext
    }

    /// Highest extended value seen so far.
    pub fn highest(&self) -> Option<u64> {
        self.highest
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn newer_and_diff() {
        assert!(seq_newer(1, 0));
        assert!(seq_newer(0, 65535));
        assert!(!seq_newer(65535, 0));
        assert!(!seq_newer(5, 5));
        assert!(seq_newer(0x7fff, 0));
        assert!(!seq_newer(0x8000, 0));
        assert!(!seq_newer(0, 0x8000));
        assert_eq!(seq_diff(0, 65535), 1);
        assert_eq!(seq_diff(65535, 0), -1);
        assert_eq!(seq_diff(100, 90), 10);
        assert_eq!(seq_diff(0x8000, 0), -32768);
        assert!(ts_newer(0, u32::MAX));
        assert_eq!(ts_diff(5, u32::MAX - 4), 10);
        assert_eq!(ts_diff(u32::MAX - 4, 5), -10);
    }

    #[test]
    fn seq_unwrap_across_wrap_and_reorder() {
        let mut u = SeqUnwrapper::new();
        let base = 1u64 << 16;
        assert_eq!(u.unwrap(65534), base + 65534);
        assert_eq!(u.unwrap(65535), base + 65535);
        assert_eq!(u.unwrap(1), base + 65537);
        assert_eq!(u.unwrap(0), base + 65536);
        assert_eq!(u.unwrap(65533), base + 65533);
        assert_eq!(u.highest(), Some(base + 65537));
        assert_eq!(u.peek(2), base + 65538);
    }

    #[test]
    fn seq_unwrap_earlier_than_first_does_not_underflow() {
        let mut u = SeqUnwrapper::new();
        assert_eq!(u.unwrap(0), 1 << 16);
        assert_eq!(u.unwrap(65535), (1 << 16) - 1);
        assert_eq!(u.unwrap(40000), (1 << 16) - 25536);
    }

    #[test]
    fn ts_unwrap_across_wrap() {
        let mut u = TsUnwrapper::new();
        let base = 1u64 << 32;
        assert_eq!(u.unwrap(u32::MAX - 10), base + u64::from(u32::MAX) - 10);
        assert_eq!(u.unwrap(20), base + (1 << 32) + 20);
        assert_eq!(u.unwrap(u32::MAX), base + u64::from(u32::MAX));
        assert_eq!(u.highest(), Some(base + (1 << 32) + 20));
    }

    proptest! {
        #[test]
        fn seq_unwrap_monotone(start: u16, steps in proptest::collection::vec(0u16..3000, 1..400)) {
            let mut u = SeqUnwrapper::new();
            let mut seq = start;
            let mut prev = u.unwrap(seq);
            for step in steps {
                seq = seq.wrapping_add(step);
                let ext = u.unwrap(seq);
                prop_assert_eq!(ext, prev + u64::from(step));
                prev = ext;
            }
        }

        #[test]
        fn ts_unwrap_monotone(start: u32, steps in proptest::collection::vec(0u32..0x4000_0000, 1..200)) {
            let mut u = TsUnwrapper::new();
            let mut ts = start;
            let mut prev = u.unwrap(ts);
            for step in steps {
                ts = ts.wrapping_add(step);
                let ext = u.unwrap(ts);
                prop_assert_eq!(ext, prev + u64::from(step));
                prev = ext;
            }
        }

        #[test]
        fn seq_unwrap_reordered(
            start in 0u64..65536,
            len in 1usize..3000,
            jitter in proptest::collection::vec(-1000i64..=1000, 3000),
        ) {
            // True extended values start..start+len, delivered in an order where each packet is
            // displaced by at most ~1000 positions.
            let mut order: Vec<(i64, u64)> = (0..len as u64)
                .map(|i| (i as i64 + jitter[i as usize] / 2, start + i))
                .collect();
            order.sort();
            let mut u = SeqUnwrapper::new();
            let first = order[0].1;
            let first_ext = u.unwrap(first as u16);
            for &(_, truth) in &order[1..] {
                let ext = u.unwrap(truth as u16);
                prop_assert_eq!(ext as i64 - first_ext as i64, truth as i64 - first as i64);
            }
        }
    }
}
