//! RTCP report state (RFC 3550 §6.4, appendix A.1, A.3, A.8): what goes into receiver report
//! blocks about published streams ([`ReceiveStats`]), sender info about forwarded streams and
//! RTT from subscribers' report blocks ([`SendStats`]), and when reports are due
//! ([`ReportTimer`]).
//!
//! Hot path: [`ReceiveStats::on_rtp`] runs for every published packet; it works on fixed-size
//! state only.

use std::time::{Duration, Instant};

use crate::MAX_INTERVAL;
use crate::media::Ssrc;
use crate::seq::seq_diff;

/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// NTP timestamp, 32.32 fixed point seconds since 1900. The caller computes it from its wall clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct NtpTime(pub u64);

impl NtpTime {
    /// The middle 32 bits (16.16 fixed point seconds), as carried in LSR.
    pub fn middle32(self) -> u32 {
        (self.0 >> 16) as u32
    }

    /// NTP time of a wall-clock instant given as the time since the Unix epoch. The seconds
    /// wrap modulo 2^32 (NTP era), as on the wire.
    pub fn from_unix(d: Duration) -> Self {
        let secs = d.as_secs().wrapping_add(NTP_UNIX_OFFSET) & 0xffff_ffff;
        let frac = (u64::from(d.subsec_nanos()) << 32) / 1_000_000_000;
        NtpTime((secs << 32) | frac)
    }
}

/// One RFC 3550 report block (§6.4.1). `Default` is all zeros (SSRC 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReportBlock {
    /// The stream the block is about.
    pub ssrc: Ssrc,
    /// Fraction of packets lost since the previous report, out of 256.
    pub fraction_lost: u8,
    /// Cumulative packets lost: a signed 24-bit value in the low 24 bits (two's complement),
    /// clamped to `-0x800000..=0x7fffff`.
    pub total_lost: u32,
    /// Extended highest sequence number received (cycles << 16 | seq).
    pub highest_seq: u32,
    /// Interarrival jitter in RTP timestamp units.
    pub jitter: u32,
    /// Middle 32 bits of the NTP time of the last SR received (0: none).
    pub last_sr: u32,
    /// Delay since that SR was received, in 1/65536 s (0: none).
    pub delay_since_last_sr: u32,
}

impl Default for ReportBlock {
    fn default() -> Self {
        ReportBlock {
            ssrc: Ssrc(0),
            fraction_lost: 0,
            total_lost: 0,
            highest_seq: 0,
            jitter: 0,
            last_sr: 0,
            delay_since_last_sr: 0,
        }
    }
}

/// Sequence jumps at least this far ahead are a possible restart (RFC 3550 A.1 MAX_DROPOUT).
const MAX_DROPOUT: i32 = 3000;
/// Duplicate-detection window in sequence numbers.
const RECV_WINDOW: usize = 1024;
const RECV_WORDS: usize = RECV_WINDOW / 64;
/// Extended value of the first packet's sequence number: `1 << 16 + seq`, reported as cycle 0.
const EXT_BASE: u64 = 1 << 16;

/// Per received stream (publisher → server): loss, jitter, duplicate detection, LSR/DLSR.
///
/// Sequence handling follows RFC 3550 A.1 in spirit: a jump of 3000 (A.1 `MAX_DROPOUT`) or more ahead,
/// or of the window size or more behind, is accepted but not counted until the next packet
/// continues it; then the stream is taken as restarted and loss counting starts over.
/// Jitter (A.8) is updated for in-order packets only: retransmissions and reordered packets
/// would distort it.
#[derive(Debug)]
pub struct ReceiveStats {
    ssrc: Ssrc,
    clock_rate: u32,
    seq: Option<SeqState>,
    /// Arrival times are measured from here (the first packet).
    epoch: Option<Instant>,
    last_transit: Option<u32>,
    /// Jitter scaled by 16 (A.8 integer form).
    jitter_q4: u64,
    packets: u64,
    bytes: u64,
    last_sr: Option<(NtpTime, u32, Instant)>,
}

#[derive(Clone, Debug)]
struct SeqState {
    base_ext: u64,
    highest_ext: u64,
    received: u64,
    expected_prior: u64,
    received_prior: u64,
    /// Expected next seq after a jump; matching it confirms a restart.
    probe: Option<u16>,
    seen: [u64; RECV_WORDS],
}

impl SeqState {
    fn new(seq: u16) -> Self {
        let ext = EXT_BASE + u64::from(seq);
        let mut state = SeqState {
            base_ext: ext,
            highest_ext: ext,
            received: 1,
            expected_prior: 0,
            received_prior: 0,
            probe: None,
            seen: [0; RECV_WORDS],
        };
        state.mark(ext);
        state
    }

    fn mark(&mut self, ext: u64) {
        let i = (ext % RECV_WINDOW as u64) as usize;
        self.seen[i / 64] |= 1 << (i % 64);
    }

    fn is_marked(&self, ext: u64) -> bool {
        let i = (ext % RECV_WINDOW as u64) as usize;
        self.seen[i / 64] & (1 << (i % 64)) != 0
    }

    /// Moves the window to a new highest value, forgetting what falls out of it.
    fn advance(&mut self, ext: u64) {
        let d = ext - self.highest_ext;
        if d as usize >= RECV_WINDOW {
            self.seen = [0; RECV_WORDS];
        } else {
            for e in self.highest_ext + 1..=ext {
                let i = (e % RECV_WINDOW as u64) as usize;
                self.seen[i / 64] &= !(1 << (i % 64));
            }
        }
        self.highest_ext = ext;
    }

    fn expected(&self) -> u64 {
        self.highest_ext - self.base_ext + 1
    }
}

/// How a packet relates to the sequence state.
enum SeqVerdict {
    InOrder,
    Late,
    Duplicate,
    Jump,
}

impl ReceiveStats {
    /// Statistics for stream `ssrc` whose RTP clock runs at `clock_rate` Hz.
    pub fn new(ssrc: Ssrc, clock_rate: u32) -> Self {
        ReceiveStats {
            ssrc,
            clock_rate,
            seq: None,
            epoch: None,
            last_transit: None,
            jitter_q4: 0,
            packets: 0,
            bytes: 0,
            last_sr: None,
        }
    }

    /// Returns false if `seq` is a duplicate of a recently received packet (then the caller drops it: Chromium's RTX unwrapping and probes produce duplicates). Window ≥ 512 seqs.
    ///
    /// The window is 1024 sequence numbers; packets further behind count as a possible
    /// restart (see the type docs) and return true.
    pub fn on_rtp(&mut self, now: Instant, seq: u16, timestamp: u32, bytes: usize) -> bool {
        let verdict = match &mut self.seq {
            None => {
                self.seq = Some(SeqState::new(seq));
                SeqVerdict::InOrder
            }
            Some(state) => Self::classify(state, seq),
        };
        match verdict {
            SeqVerdict::Duplicate => return false,
            SeqVerdict::InOrder => self.update_jitter(now, timestamp),
            SeqVerdict::Jump => self.last_transit = None,
            SeqVerdict::Late => {}
        }
        self.packets += 1;
        self.bytes += bytes as u64;
        true
    }

    fn classify(state: &mut SeqState, seq: u16) -> SeqVerdict {
        let d = seq_diff(seq, state.highest_ext as u16);
        if d > 0 && d < MAX_DROPOUT {
            state.advance(state.highest_ext + d as u64);
            state.mark(state.highest_ext);
            state.received += 1;
            state.probe = None;
            return SeqVerdict::InOrder;
        }
        if d <= 0 && d.unsigned_abs() < RECV_WINDOW as u32 {
            let ext = state.highest_ext - u64::from(d.unsigned_abs());
            if state.is_marked(ext) {
                return SeqVerdict::Duplicate;
            }
            state.mark(ext);
            state.received += 1;
            // A packet from before the first one: the stream started earlier than we thought.
            state.base_ext = state.base_ext.min(ext);
            return SeqVerdict::Late;
        }
        if state.probe == Some(seq) {
            // Two sequential packets after a jump: the sender restarted its sequence.
            let mut restarted = SeqState::new(seq.wrapping_sub(1));
            restarted.advance(restarted.highest_ext + 1);
            restarted.mark(restarted.highest_ext);
            restarted.received = 2;
            *state = restarted;
            return SeqVerdict::InOrder;
        }
        state.probe = Some(seq.wrapping_add(1));
        SeqVerdict::Jump
    }

    fn update_jitter(&mut self, now: Instant, timestamp: u32) {
        let epoch = *self.epoch.get_or_insert(now);
        let elapsed = now.saturating_duration_since(epoch);
        let arrival = duration_to_ticks(elapsed, self.clock_rate);
        let transit = arrival.wrapping_sub(timestamp);
        if let Some(last) = self.last_transit {
            let d = u64::from((transit.wrapping_sub(last) as i32).unsigned_abs());
            self.jitter_q4 = self.jitter_q4 + d - ((self.jitter_q4 + 8) >> 4);
        }
        self.last_transit = Some(transit);
    }

    /// Records the publisher's sender report (for LSR/DLSR and lip-sync).
    pub fn on_sender_report(&mut self, now: Instant, ntp: NtpTime, rtp_ts: u32) {
        self.last_sr = Some((ntp, rtp_ts, now));
    }

    /// Builds the report block for an RR (fraction lost since the previous call).
    pub fn report_block(&mut self, now: Instant) -> ReportBlock {
        let (last_sr, delay_since_last_sr) = match self.last_sr {
            Some((ntp, _, at)) => (
                ntp.middle32(),
                duration_to_compact(now.saturating_duration_since(at)),
            ),
            None => (0, 0),
        };
        let mut block = ReportBlock {
            ssrc: self.ssrc,
            jitter: self.jitter(),
            last_sr,
            delay_since_last_sr,
            ..ReportBlock::default()
        };
        let Some(state) = &mut self.seq else {
            return block;
        };
        let expected = state.expected();
        let expected_interval = expected.saturating_sub(state.expected_prior);
        let received_interval = state.received.saturating_sub(state.received_prior);
        state.expected_prior = expected;
        state.received_prior = state.received;
        let lost_interval = expected_interval as i64 - received_interval as i64;
        if expected_interval > 0 && lost_interval > 0 {
            block.fraction_lost = ((lost_interval << 8) / expected_interval as i64).min(255) as u8;
        }
        block.total_lost = encode_total_lost(expected as i64 - state.received as i64);
        block.highest_seq = state.highest_ext.wrapping_sub(EXT_BASE) as u32;
        block
    }

    /// Latest (ntp, rtp_ts, received_at) from the publisher's SR, for lip-sync mapping.
    pub fn last_sender_report(&self) -> Option<(NtpTime, u32, Instant)> {
        self.last_sr
    }

    /// Packets accepted (not duplicates).
    pub fn packets(&self) -> u64 {
        self.packets
    }

    /// Payload bytes of accepted packets, as passed to [`ReceiveStats::on_rtp`].
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Cumulative packets lost since the stream (re)started; negative with duplicates the
    /// window could not catch.
    pub fn lost(&self) -> i64 {
        self.seq
            .as_ref()
            .map_or(0, |s| s.expected() as i64 - s.received as i64)
    }

    /// Interarrival jitter in RTP timestamp units.
    pub fn jitter(&self) -> u32 {
        u32::try_from(self.jitter_q4 >> 4).unwrap_or(u32::MAX)
    }

    /// The stream's SSRC.
    pub fn ssrc(&self) -> Ssrc {
        self.ssrc
    }
}

/// Signed cumulative loss as the 24-bit two's complement field of a report block.
fn encode_total_lost(lost: i64) -> u32 {
    (lost.clamp(-0x80_0000, 0x7f_ffff) as i32 as u32) & 0x00ff_ffff
}

/// Per sent stream (server → subscriber).
#[derive(Debug)]
pub struct SendStats {
    ssrc: Ssrc,
    clock_rate: u32,
    packets: u64,
    octets: u64,
    /// RTP timestamp and time of the last packet sent.
    last: Option<(u32, Instant)>,
    /// Middle 32 bits of the NTP times of the SRs produced recently (ring).
    sr_sent: [Option<u32>; SR_HISTORY],
    sr_next: usize,
    fraction_lost: u8,
    rtt: Option<Duration>,
}

/// How many of our own SRs are remembered to validate LSR values.
const SR_HISTORY: usize = 8;

/// Sender info of an SR (RFC 3550 §6.4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SenderInfo {
    /// Wall clock when the report was made.
    pub ntp: NtpTime,
    /// RTP timestamp corresponding to `ntp`.
    pub rtp_ts: u32,
    /// Sender's packet count (wraps).
    pub packets: u32,
    /// Sender's payload octet count (wraps).
    pub octets: u32,
}

impl SendStats {
    /// Statistics for the outgoing stream `ssrc` with an RTP clock of `clock_rate` Hz.
    pub fn new(ssrc: Ssrc, clock_rate: u32) -> Self {
        SendStats {
            ssrc,
            clock_rate,
            packets: 0,
            octets: 0,
            last: None,
            sr_sent: [None; SR_HISTORY],
            sr_next: 0,
            fraction_lost: 0,
            rtt: None,
        }
    }

    /// Counts a packet sent at `now` with RTP `timestamp` and `payload_len` payload bytes.
    /// The RTP timestamp of the last packet sent (padding reuses it).
    pub fn last_timestamp(&self) -> Option<u32> {
        self.last.map(|(ts, _)| ts)
    }

    pub fn on_sent(&mut self, now: Instant, timestamp: u32, payload_len: usize) {
        self.packets += 1;
        self.octets += payload_len as u64;
        self.last = Some((timestamp, now));
    }

    /// SR sender info at `now`/`ntp_now`: RTP timestamp extrapolated from the last sent packet with the clock rate.
    /// None before the first packet. Remembers `ntp_now` to recognise LSR in report blocks.
    pub fn sender_info(&mut self, now: Instant, ntp_now: NtpTime) -> Option<SenderInfo> {
        let (ts, at) = self.last?;
        let rtp_ts = if now >= at {
            ts.wrapping_add(duration_to_ticks(now - at, self.clock_rate))
        } else {
            ts.wrapping_sub(duration_to_ticks(at - now, self.clock_rate))
        };
        // `sr_next` stays below SR_HISTORY (the array length): it only advances modulo it.
        self.sr_sent[self.sr_next] = Some(ntp_now.middle32());
        self.sr_next = (self.sr_next + 1) % SR_HISTORY;
        Some(SenderInfo {
            ntp: ntp_now,
            rtp_ts,
            packets: self.packets as u32,
            octets: self.octets as u32,
        })
    }

    /// A subscriber's report block about this stream: returns the RTT if LSR/DLSR allow computing it (uses the NTP middle 32 bits of SRs it produced).
    /// None when LSR is 0, is not one of the last SRs produced, or the result would be negative.
    pub fn on_report_block(&mut self, ntp_now: NtpTime, block: &ReportBlock) -> Option<Duration> {
        self.fraction_lost = block.fraction_lost;
        if block.last_sr == 0 || !self.sr_sent.contains(&Some(block.last_sr)) {
            return None;
        }
        let rtt = ntp_now
            .middle32()
            .wrapping_sub(block.last_sr)
            .wrapping_sub(block.delay_since_last_sr);
        if (rtt as i32) < 0 {
            return None;
        }
        let rtt = compact_to_duration(rtt);
        self.rtt = Some(rtt);
        Some(rtt)
    }

    /// Fraction lost from the subscriber's latest report block.
    pub fn fraction_lost(&self) -> u8 {
        self.fraction_lost
    }

    /// Latest RTT computed from a report block.
    pub fn rtt(&self) -> Option<Duration> {
        self.rtt
    }

    /// Packets sent.
    pub fn packets(&self) -> u64 {
        self.packets
    }

    /// Payload octets sent.
    pub fn octets(&self) -> u64 {
        self.octets
    }

    /// The stream's SSRC.
    pub fn ssrc(&self) -> Ssrc {
        self.ssrc
    }
}

/// Default interval between RTCP reports.
pub const DEFAULT_REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// When reports are due: one timer per participant.
///
/// A fixed interval (default 1 s), without the ±50 % randomisation of RFC 3550 §6.3.1: one
/// SFU participant has few streams, and a fixed rhythm keeps virtual-time tests exact. Call
/// [`ReportTimer::handle_timeout`] once when the participant starts (that arms the timer),
/// then whenever [`ReportTimer::poll_timeout`] is reached.
#[derive(Debug)]
pub struct ReportTimer {
    interval: Duration,
    next: Option<Instant>,
}

impl Default for ReportTimer {
    fn default() -> Self {
        ReportTimer::new(DEFAULT_REPORT_INTERVAL)
    }
}

impl ReportTimer {
    /// A timer firing every `interval` (clamped to [`MAX_INTERVAL`]) once armed.
    pub fn new(interval: Duration) -> Self {
        ReportTimer {
            interval: interval.min(MAX_INTERVAL),
            next: None,
        }
    }

    /// True when reports are due at `now`. The first call arms the timer and returns false.
    /// After a late call the schedule restarts from `now` (no burst of catch-up reports).
    pub fn handle_timeout(&mut self, now: Instant) -> bool {
        let Some(next) = self.next else {
            self.next = Some(now + self.interval);
            return false;
        };
        if now < next {
            return false;
        }
        let following = next + self.interval;
        self.next = Some(if following > now {
            following
        } else {
            now + self.interval
        });
        true
    }

    /// The next due time; None until armed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next
    }
}

/// `d × clock_rate` in RTP ticks, modulo 2^32.
fn duration_to_ticks(d: Duration, clock_rate: u32) -> u32 {
    let ticks = d.as_nanos() * u128::from(clock_rate) / 1_000_000_000;
    (ticks % (1u128 << 32)) as u32
}

/// A duration in 1/65536 s units (DLSR), saturating.
fn duration_to_compact(d: Duration) -> u32 {
    u32::try_from(d.as_nanos() * 65_536 / 1_000_000_000).unwrap_or(u32::MAX)
}

/// 1/65536 s units back to a duration.
fn compact_to_duration(units: u32) -> Duration {
    let nanos = u64::from(units) * 1_000_000_000 / 65_536;
    Duration::from_nanos(nanos)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn ntp_conversions() {
        let epoch = NtpTime::from_unix(Duration::ZERO);
        assert_eq!(epoch.0, NTP_UNIX_OFFSET << 32);
        let half = NtpTime::from_unix(Duration::from_millis(1500));
        assert_eq!(half.0, ((NTP_UNIX_OFFSET + 1) << 32) | 0x8000_0000);
        assert_eq!(
            half.middle32(),
            (((NTP_UNIX_OFFSET + 1) as u32) << 16) | 0x8000
        );
        assert_eq!(NtpTime(0x1234_5678_9abc_def0).middle32(), 0x5678_9abc);
        assert!(NtpTime::from_unix(ms(1)) < NtpTime::from_unix(ms(2)));
    }

    #[test]
    fn fraction_and_cumulative_loss() {
        let t0 = Instant::now();
        let mut stats = ReceiveStats::new(Ssrc(5), 48_000);
        // 100 expected (0..=99), 10 lost.
        for seq in 0..100u16 {
            if seq % 10 != 5 {
                assert!(stats.on_rtp(t0, seq, u32::from(seq) * 960, 100));
            }
        }
        let block = stats.report_block(t0);
        assert_eq!(block.ssrc, Ssrc(5));
        assert_eq!(block.fraction_lost, 25, "(10 << 8) / 100");
        assert_eq!(block.total_lost, 10);
        assert_eq!(block.highest_seq, 99);
        assert_eq!(
            (stats.packets(), stats.bytes(), stats.lost()),
            (90, 9000, 10)
        );
        // Next interval: 50 more, none lost.
        for seq in 100..150u16 {
            stats.on_rtp(t0, seq, 0, 100);
        }
        let block = stats.report_block(t0);
        assert_eq!((block.fraction_lost, block.total_lost), (0, 10));
        // One late recovery of an earlier loss makes this interval's loss negative: 0.
        stats.on_rtp(t0, 5, 0, 100);
        let block = stats.report_block(t0);
        assert_eq!((block.fraction_lost, block.total_lost), (0, 9));
        // Empty interval.
        assert_eq!(stats.report_block(t0).fraction_lost, 0);
    }

    #[test]
    fn fraction_lost_of_a_large_gap() {
        let t0 = Instant::now();
        let mut stats = ReceiveStats::new(Ssrc(1), 90_000);
        stats.on_rtp(t0, 0, 0, 1);
        stats.report_block(t0);
        stats.on_rtp(t0, 1000, 0, 1);
        let block = stats.report_block(t0);
        assert_eq!(block.fraction_lost, 255, "(999 << 8) / 1000");
        assert_eq!(block.total_lost, 999);
    }

    #[test]
    fn total_lost_encoding() {
        assert_eq!(encode_total_lost(0), 0);
        assert_eq!(encode_total_lost(-1), 0x00ff_ffff);
        assert_eq!(encode_total_lost(10_000_000), 0x7f_ffff);
        assert_eq!(encode_total_lost(-10_000_000), 0x80_0000);
    }

    #[test]
    fn highest_seq_counts_cycles() {
        let t0 = Instant::now();
        let mut stats = ReceiveStats::new(Ssrc(1), 90_000);
        for i in 0..12u16 {
            stats.on_rtp(t0, 65530u16.wrapping_add(i), 0, 1);
        }
        let block = stats.report_block(t0);
        assert_eq!(block.highest_seq, 65536 + 5);
        assert_eq!(block.total_lost, 0);
    }

    #[test]
    fn duplicates_detected_across_wrap() {
        let t0 = Instant::now();
        let mut stats = ReceiveStats::new(Ssrc(1), 90_000);
        for seq in [65533u16, 65534, 65535, 0, 1] {
            assert!(stats.on_rtp(t0, seq, 0, 10));
        }
        assert!(!stats.on_rtp(t0, 65535, 0, 10));
        assert!(!stats.on_rtp(t0, 0, 0, 10));
        assert!(!stats.on_rtp(t0, 1, 0, 10));
        assert!(stats.on_rtp(t0, 3, 0, 10));
        assert!(stats.on_rtp(t0, 2, 0, 10), "late, not a duplicate");
        assert!(!stats.on_rtp(t0, 2, 0, 10));
        assert_eq!(stats.packets(), 7);
        assert_eq!(stats.lost(), 0);
        // The window is at least 512: a packet 600 behind is still recognised.
        for seq in 4..700u16 {
            stats.on_rtp(t0, seq, 0, 10);
        }
        assert!(!stats.on_rtp(t0, 100, 0, 10));
    }

    #[test]
    fn jitter_converges_for_alternating_noise() {
        let t0 = Instant::now();
        // Packets every 20 ms, every other one `late` ms late: |D| = late × 48 ticks each time.
        for (late, expected) in [(5u64, 240u32), (10, 480)] {
            let mut stats = ReceiveStats::new(Ssrc(1), 48_000);
            for i in 0..400u64 {
                let at = t0 + ms(20 * i + if i % 2 == 1 { late } else { 0 });
                stats.on_rtp(at, i as u16, 960 * i as u32, 100);
            }
            // The A.8 integer form settles at D or D - 1.
            let j = stats.jitter();
            assert!(
                (expected - 1..=expected).contains(&j),
                "jitter {j}, expected {expected}"
            );
            assert_eq!(stats.report_block(t0).jitter, j);
        }
    }

    #[test]
    fn jitter_zero_for_perfect_stream() {
        let t0 = Instant::now();
        let mut stats = ReceiveStats::new(Ssrc(1), 90_000);
        for i in 0..100u32 {
            stats.on_rtp(t0 + ms(u64::from(i) * 33), i as u16, 2970 * i, 1000);
        }
        assert_eq!(stats.jitter(), 0);
    }

    #[test]
    fn sequence_restart_needs_two_packets() {
        let t0 = Instant::now();
        let mut stats = ReceiveStats::new(Ssrc(1), 90_000);
        for seq in 100..110u16 {
            stats.on_rtp(t0, seq, 0, 1);
        }
        // A stray far packet is accepted but does not count.
        assert!(stats.on_rtp(t0, 40_000, 0, 1));
        assert_eq!(stats.lost(), 0);
        assert!(stats.on_rtp(t0, 110, 0, 1));
        // Two sequential far packets restart the sequence state.
        assert!(stats.on_rtp(t0, 30_000, 0, 1));
        assert!(stats.on_rtp(t0, 30_001, 0, 1));
        assert!(stats.on_rtp(t0, 30_003, 0, 1));
        assert_eq!(stats.lost(), 1);
        assert_eq!(stats.report_block(t0).highest_seq, 30_003);
        assert!(!stats.on_rtp(t0, 30_001, 0, 1));
    }

    #[test]
    fn lsr_and_dlsr() {
        let t0 = Instant::now();
        let mut stats = ReceiveStats::new(Ssrc(1), 90_000);
        assert_eq!(
            stats.report_block(t0),
            ReportBlock {
                ssrc: Ssrc(1),
                ..ReportBlock::default()
            }
        );
        let ntp = NtpTime(0x0000_1234_5678_0000);
        stats.on_sender_report(t0, ntp, 777);
        assert_eq!(stats.last_sender_report(), Some((ntp, 777, t0)));
        let block = stats.report_block(t0 + ms(1500));
        assert_eq!(block.last_sr, 0x1234_5678);
        assert_eq!(block.delay_since_last_sr, 98_304, "1.5 s × 65536");
    }

    #[test]
    fn sender_info_extrapolates() {
        let t0 = Instant::now();
        let ntp0 = NtpTime::from_unix(Duration::from_secs(1_700_000_000));
        let mut stats = SendStats::new(Ssrc(9), 90_000);
        assert_eq!(stats.sender_info(t0, ntp0), None);
        stats.on_sent(t0, 1000, 100);
        stats.on_sent(t0, 1000, 50);
        let info = stats.sender_info(t0 + ms(100), ntp0).unwrap();
        assert_eq!(
            info,
            SenderInfo {
                ntp: ntp0,
                rtp_ts: 10_000,
                packets: 2,
                octets: 150
            }
        );
        let info = stats.sender_info(t0, ntp0).unwrap();
        assert_eq!(info.rtp_ts, 1000);
    }

    #[test]
    fn rtt_from_synthetic_round_trip() {
        let t0 = Instant::now();
        let unix = Duration::from_secs(1_700_000_000) + ms(123);
        let mut send = SendStats::new(Ssrc(9), 90_000);
        let mut recv = ReceiveStats::new(Ssrc(9), 90_000);
        send.on_sent(t0, 0, 100);
        // SR leaves at t0, arrives after 37 ms; the RR leaves 211 ms later, arrives 23 ms later.
        let info = send.sender_info(t0, NtpTime::from_unix(unix)).unwrap();
        recv.on_sender_report(t0 + ms(37), info.ntp, info.rtp_ts);
        recv.on_rtp(t0 + ms(40), 0, 0, 100);
        let mut block = recv.report_block(t0 + ms(37 + 211));
        block.fraction_lost = 12;
        let rtt = send
            .on_report_block(NtpTime::from_unix(unix + ms(37 + 211 + 23)), &block)
            .unwrap();
        let error = rtt.abs_diff(ms(60));
        assert!(
            error <= Duration::from_nanos(2 * 1_000_000_000 / 65_536),
            "rtt {rtt:?}"
        );
        assert_eq!(send.rtt(), Some(rtt));
        assert_eq!(send.fraction_lost(), 12);
    }

    #[test]
    fn rtt_needs_a_known_lsr() {
        let ntp = NtpTime::from_unix(Duration::from_secs(1_700_000_000));
        let mut send = SendStats::new(Ssrc(9), 90_000);
        let block = ReportBlock {
            last_sr: ntp.middle32(),
            ..ReportBlock::default()
        };
        assert_eq!(send.on_report_block(ntp, &block), None, "no SR produced");
        send.on_sent(Instant::now(), 0, 1);
        send.sender_info(Instant::now(), ntp);
        assert_eq!(
            send.on_report_block(ntp, &ReportBlock::default()),
            None,
            "LSR 0"
        );
        let delayed = ReportBlock {
            delay_since_last_sr: 65_536,
            ..block
        };
        assert_eq!(send.on_report_block(ntp, &delayed), None, "negative");
        assert_eq!(send.on_report_block(ntp, &block), Some(Duration::ZERO));
    }

    #[test]
    fn report_timer_fixed_interval() {
        let t0 = Instant::now();
        let mut timer = ReportTimer::default();
        assert_eq!(timer.poll_timeout(), None);
        assert!(!timer.handle_timeout(t0));
        assert_eq!(timer.poll_timeout(), Some(t0 + ms(1000)));
        assert!(!timer.handle_timeout(t0 + ms(999)));
        assert!(timer.handle_timeout(t0 + ms(1000)));
        assert_eq!(timer.poll_timeout(), Some(t0 + ms(2000)));
        assert!(timer.handle_timeout(t0 + ms(2100)));
        assert_eq!(timer.poll_timeout(), Some(t0 + ms(3000)));
        // Very late: no catch-up burst.
        assert!(timer.handle_timeout(t0 + ms(7500)));
        assert_eq!(timer.poll_timeout(), Some(t0 + ms(8500)));
        assert!(!timer.handle_timeout(t0 + ms(7600)));
    }

    #[test]
    fn extreme_inputs_do_not_panic() {
        let t0 = Instant::now();
        let mut timer = ReportTimer::new(Duration::MAX);
        timer.handle_timeout(t0);
        assert_eq!(timer.poll_timeout(), Some(t0 + crate::MAX_INTERVAL));
        let _ = NtpTime::from_unix(Duration::MAX);
        let mut send = SendStats::new(Ssrc(1), u32::MAX);
        send.on_sent(t0 + Duration::from_secs(1_000_000), u32::MAX, usize::MAX);
        let _ = send.sender_info(t0, NtpTime(u64::MAX));
        let _ = send.on_report_block(
            NtpTime(0),
            &ReportBlock {
                last_sr: u32::MAX,
                ..ReportBlock::default()
            },
        );
    }

    #[test]
    fn compact_units_round_trip() {
        assert_eq!(duration_to_compact(Duration::from_secs(1)), 65_536);
        assert_eq!(compact_to_duration(65_536), Duration::from_secs(1));
        assert_eq!(duration_to_compact(Duration::from_secs(1 << 20)), u32::MAX);
    }

    proptest! {
        #[test]
        fn loss_matches_dropped_packets(start: u16, drops in proptest::collection::vec(any::<bool>(), 1..3000)) {
            let t0 = Instant::now();
            let mut stats = ReceiveStats::new(Ssrc(1), 90_000);
            stats.on_rtp(t0, start, 0, 1);
            let mut seq = start;
            let mut lost = 0i64;
            for (i, &drop) in drops.iter().enumerate() {
                seq = seq.wrapping_add(1);
                // Keep the last packet so the loss is bounded by a received one.
                if drop && i + 1 < drops.len() {
                    lost += 1;
                } else {
                    prop_assert!(stats.on_rtp(t0, seq, 0, 1));
                }
            }
            prop_assert_eq!(stats.lost(), lost);
            prop_assert_eq!(i64::from(stats.report_block(t0).total_lost), lost);
        }

        #[test]
        fn random_input_never_panics(ops in proptest::collection::vec((any::<u16>(), any::<u32>(), 0u64..100), 0..300)) {
            let t0 = Instant::now();
            let mut now = t0;
            let mut stats = ReceiveStats::new(Ssrc(1), 90_000);
            for (seq, ts, dt) in ops {
                now += ms(dt);
                stats.on_rtp(now, seq, ts, 1200);
                if dt % 7 == 0 {
                    let block = stats.report_block(now);
                    prop_assert!(block.total_lost <= 0x00ff_ffff);
                }
            }
        }
    }
}
