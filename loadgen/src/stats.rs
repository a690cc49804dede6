//! Accounting of what simulated participants receive: per-stream loss (from RTP sequence
//! numbers, wrap-around, reordering and duplicates handled), RFC 3550 interarrival jitter,
//! and one-way added latency (from the payload trailer) into histograms.

use hdrhistogram::Histogram;

/// Sequence numbers remembered for duplicate detection.
const WINDOW: u64 = 2048;

/// Reception of one RTP stream (one SSRC as the receiver sees it).
#[derive(Clone, Debug)]
pub struct StreamRx {
    /// Extended (32+ bit) sequence numbers: first, highest.
    first: Option<u64>,
    highest: u64,
    /// Bit i set: `highest - i` was received (i < WINDOW).
    seen: [u64; (WINDOW / 64) as usize],
    pub received: u64,
    pub duplicates: u64,
    pub reordered: u64,
    /// Interarrival jitter in RTP timestamp units (RFC 3550 A.8).
    jitter: f64,
    last_transit: Option<i64>,
    clock_rate: u32,
}

/// The outcome of one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    New,
    Reordered,
    Duplicate,
    /// Too old to tell (before the duplicate window); ignored.
    Stale,
}

impl StreamRx {
    pub fn new(clock_rate: u32) -> Self {
        Self {
            first: None,
            highest: 0,
            seen: [0; (WINDOW / 64) as usize],
            received: 0,
            duplicates: 0,
            reordered: 0,
            jitter: 0.0,
            last_transit: None,
            clock_rate: clock_rate.max(1),
        }
    }

    fn bit(&self, back: u64) -> bool {
        let i = back as usize;
        self.seen[i / 64] & (1 << (i % 64)) != 0
    }

    fn set(&mut self, back: u64) {
        let i = back as usize;
        self.seen[i / 64] |= 1 << (i % 64);
    }

    fn shift(&mut self, by: u64) {
        if by >= WINDOW {
            self.seen = [0; (WINDOW / 64) as usize];
            return;
        }
        // Shift the bitmap towards older sequence numbers by `by` bits.
        let words = (by / 64) as usize;
        let bits = (by % 64) as u32;
        let n = self.seen.len();
        for i in (0..n).rev() {
            let src = i.checked_sub(words);
            let lo = src.map_or(0, |s| self.seen[s]);
            let carry = src
                .and_then(|s| s.checked_sub(1))
                .map_or(0, |s| self.seen[s]);
            self.seen[i] = if bits == 0 {
                lo
            } else {
                (lo << bits) | (carry >> (64 - bits))
            };
        }
    }

    /// Accounts one packet: its RTP sequence number and timestamp, arrival in µs.
    pub fn on_packet(&mut self, seq: u16, rtp_ts: u32, arrival_us: u64) -> Arrival {
        let Some(_) = self.first else {
            let ext = u64::from(seq) + (1 << 16);
            self.first = Some(ext);
            self.highest = ext;
            self.set(0);
            self.received = 1;
            self.jitter_update(rtp_ts, arrival_us);
            return Arrival::New;
        };
        // Extend to the value closest to the highest seen.
        let cycle = self.highest & !0xffff;
        let candidates = [
            cycle.wrapping_sub(1 << 16) | u64::from(seq),
            cycle | u64::from(seq),
            (cycle + (1 << 16)) | u64::from(seq),
        ];
        let ext = candidates
            .into_iter()
            .filter(|c| *c >= (1 << 16))
            .min_by_key(|c| c.abs_diff(self.highest))
            .unwrap_or(cycle | u64::from(seq));
        if ext > self.highest {
            self.shift(ext - self.highest);
            self.highest = ext;
            self.set(0);
            self.received += 1;
            self.jitter_update(rtp_ts, arrival_us);
            return Arrival::New;
        }
        let back = self.highest - ext;
        if back >= WINDOW || self.first.is_some_and(|f| ext < f) {
            return Arrival::Stale;
        }
        if self.bit(back) {
            self.duplicates += 1;
            return Arrival::Duplicate;
        }
        self.set(back);
        self.received += 1;
        self.reordered += 1;
        Arrival::Reordered
    }

    fn jitter_update(&mut self, rtp_ts: u32, arrival_us: u64) {
        let arrival_units = (arrival_us as u128 * u128::from(self.clock_rate) / 1_000_000) as i64;
        let transit = arrival_units.wrapping_sub(i64::from(rtp_ts));
        if let Some(last) = self.last_transit {
            let d = (transit - last).unsigned_abs() as f64;
            // Timestamps that jump (a publisher restart) would poison the estimate.
            if d < f64::from(self.clock_rate) * 10.0 {
                self.jitter += (d - self.jitter) / 16.0;
            }
        }
        self.last_transit = Some(transit);
    }

    /// Packets expected from the first to the highest sequence number.
    pub fn expected(&self) -> u64 {
        self.first.map_or(0, |f| self.highest - f + 1)
    }

    /// Packets never received (so far; late ones may still come).
    pub fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.received)
    }

    /// The extended highest sequence number received (as a receiver report writes it: the
    /// first cycle is 0; internally cycles start at one, so a backward wrap stays positive).
    pub fn highest_extended(&self) -> u64 {
        self.highest.saturating_sub(1 << 16)
    }

    /// Interarrival jitter in RTP timestamp units (as a receiver report writes it).
    pub fn jitter_units(&self) -> f64 {
        self.jitter
    }

    /// Jitter in milliseconds.
    pub fn jitter_ms(&self) -> f64 {
        self.jitter * 1000.0 / f64::from(self.clock_rate)
    }
}

/// A latency histogram in microseconds (1 µs to 60 s, 3 significant digits).
pub fn latency_histogram() -> Histogram<u64> {
    // Constant, valid bounds: this cannot fail.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn in_order_stream_has_no_loss() {
        let mut s = StreamRx::new(48_000);
        for i in 0..1000u16 {
            assert_eq!(
                s.on_packet(i, u32::from(i) * 960, u64::from(i) * 20_000),
                Arrival::New
            );
        }
        assert_eq!((s.expected(), s.received, s.lost()), (1000, 1000, 0));
        assert!(s.jitter_ms() < 0.01);
    }

    #[test]
    fn sequence_wrap_is_continuous() {
        let mut s = StreamRx::new(48_000);
        for i in 0..200u32 {
            let seq = (65_500 + i) as u16;
            s.on_packet(seq, i * 960, u64::from(i) * 20_000);
        }
        assert_eq!((s.expected(), s.received, s.lost()), (200, 200, 0));
    }

    #[test]
    fn gaps_count_as_loss_until_the_late_packet_arrives() {
        let mut s = StreamRx::new(90_000);
        for seq in [1u16, 2, 3, 6, 7] {
            s.on_packet(seq, 0, 0);
        }
        assert_eq!(s.lost(), 2);
        assert_eq!(s.on_packet(4, 0, 0), Arrival::Reordered);
        assert_eq!(s.lost(), 1);
        assert_eq!(s.reordered, 1);
        assert_eq!(s.on_packet(4, 0, 0), Arrival::Duplicate);
        assert_eq!(s.on_packet(7, 0, 0), Arrival::Duplicate);
        assert_eq!((s.received, s.duplicates), (6, 2));
    }

    #[test]
    fn reordering_across_the_wrap() {
        let mut s = StreamRx::new(48_000);
        for seq in [65_534u16, 65_535, 1, 0, 2] {
            s.on_packet(seq, 0, 0);
        }
        assert_eq!(
            (s.expected(), s.received, s.lost(), s.reordered),
            (5, 5, 0, 1)
        );
    }

    #[test]
    fn packets_older_than_the_start_are_not_counted() {
        let mut s = StreamRx::new(48_000);
        s.on_packet(100, 0, 0);
        assert_eq!(s.on_packet(99, 0, 0), Arrival::Stale);
        assert_eq!((s.expected(), s.received), (1, 1));
    }

    #[test]
    fn jitter_grows_with_irregular_arrivals() {
        let mut s = StreamRx::new(48_000);
        for i in 0..500u64 {
            let wobble = if i % 2 == 0 { 0 } else { 5_000 };
            s.on_packet(i as u16, (i * 960) as u32, i * 20_000 + wobble);
        }
        let j = s.jitter_ms();
        assert!((3.0..6.0).contains(&j), "{j}");
    }

    proptest! {
        /// Whatever the order and duplication, received + lost == expected and nothing is
        /// counted twice.
        #[test]
        fn accounting_is_consistent(start in any::<u16>(), n in 1usize..600,
                                    drops in proptest::collection::vec(any::<bool>(), 600),
                                    swaps in proptest::collection::vec((0usize..600, 0usize..600), 0..50),
                                    dups in proptest::collection::vec(0usize..600, 0..30)) {
            let mut seqs: Vec<u16> = (0..n).filter(|i| !drops[*i] || *i == 0)
                .map(|i| start.wrapping_add(i as u16)).collect();
            let unique = seqs.len() as u64;
            for (a, b) in swaps {
                if a < seqs.len() && b < seqs.len() && a > 0 && b > 0 { seqs.swap(a, b); }
            }
            for d in dups { if d < seqs.len() { let v = seqs[d]; seqs.push(v); } }
            let mut s = StreamRx::new(48_000);
            for seq in &seqs { s.on_packet(*seq, 0, 0); }
            prop_assert_eq!(s.received, unique);
            prop_assert_eq!(s.received + s.lost(), s.expected());
        }
    }
}
