//! Retransmissions: the per-track packet cache that answers subscriber NACKs
//! ([`RetransmissionCache`]), the loss detector that NACKs the publisher ([`NackGenerator`]) and
//! the RFC 4585 §6.2.1 generic NACK (PID, BLP) encoding helpers.
//!
//! Hot path: [`RetransmissionCache::insert`] runs for every published packet; it writes into a
//! ring allocated once in [`RetransmissionCache::new`] and copies the payload into its own
//! buffer (see `insert`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::MAX_INTERVAL;
use crate::media::MediaPacket;
use crate::seq::{seq_diff, seq_newer};

/// Largest useful cache: half the sequence space, so slot ownership stays unambiguous.
const MAX_CACHE: usize = 1 << 15;

/// Per published track: the last N packets, by source sequence number, to answer NACKs.
#[derive(Debug)]
pub struct RetransmissionCache {
    slots: Vec<Option<MediaPacket>>,
    mask: usize,
    max_age: Duration,
}

impl RetransmissionCache {
    /// `capacity` is rounded up to a power of two and clamped to `1..=32768`; `max_age` bounds
    /// how old an answer may be (measured from the packet's arrival).
    pub fn new(capacity: usize, max_age: Duration) -> Self {
        let capacity = capacity.clamp(1, MAX_CACHE).next_power_of_two();
        RetransmissionCache {
            slots: vec![None; capacity],
            mask: capacity - 1,
            max_age,
        }
    }

    /// Stores `pkt` in the slot of its sequence number. A late packet does not overwrite a
    /// newer, still fresh packet of the same SSRC that already occupies its slot.
    ///
    /// The payload is copied: a received payload is a view into the node's 64 KiB receive
    /// buffer, and a cached view kept that whole buffer alive for as long as the packet
    /// stayed in the ring (seconds at video rates). 32 video participants held about 150 MB
    /// that way; a copy holds the packet's own bytes.
    pub fn insert(&mut self, pkt: &MediaPacket) {
        let slot = &mut self.slots[usize::from(pkt.seq) & self.mask];
        if let Some(existing) = slot {
            let fresh = pkt.arrival.saturating_duration_since(existing.arrival) < self.max_age;
            if existing.ssrc == pkt.ssrc && fresh && seq_newer(existing.seq, pkt.seq) {
                return;
            }
        }
        let mut kept = pkt.clone();
        kept.payload = bytes::Bytes::copy_from_slice(&pkt.payload);
        // Copies, not views: a view keeps its whole receive buffer alive.
        kept.dependency = pkt.dependency.as_deref().map(bytes::Bytes::copy_from_slice);
        *slot = Some(kept);
    }

    /// The packet with sequence number `seq`; None if evicted, overwritten by a newer seq in the
    /// slot, or older than max_age at `now`.
    pub fn get(&self, seq: u16, now: Instant) -> Option<&MediaPacket> {
        self.slots[usize::from(seq) & self.mask]
            .as_ref()
            .filter(|p| p.seq == seq && now.saturating_duration_since(p.arrival) <= self.max_age)
    }

    /// Number of slots (the rounded capacity).
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Forgets every packet (keeps the allocation).
    pub fn clear(&mut self) {
        self.slots.iter_mut().for_each(|slot| *slot = None);
    }
}

/// Tuning of the [`NackGenerator`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NackConfig {
    /// NACKs sent per missing packet before giving up (default 5).
    pub max_retries: u8,
    /// Time between NACKs of the same packet (default 50 ms); the RTT if known and larger.
    pub retry_interval: Duration,
    /// Give up on a missing packet this long after its loss was detected (default 1 s).
    pub max_age: Duration,
    /// Most packets tracked as missing (default 256). A bigger forward jump is taken as a
    /// publisher restart and resets the state instead of NACKing every gap packet.
    pub max_missing: usize,
}

impl Default for NackConfig {
    fn default() -> Self {
        NackConfig {
            max_retries: 5,
            retry_interval: Duration::from_millis(50),
            max_age: Duration::from_secs(1),
            max_missing: 256,
        }
    }
}

/// Per published video track: detects losses from the publisher and schedules NACKs with retries.
///
/// A gap is NACKed at once, then every retry interval until the packet arrives, `max_retries`
/// NACKs were sent or `max_age` passed. A packet far behind the newest (more than
/// `max_missing`) that is not missing is ignored unless the next packet continues it: two
/// consecutive such packets are a restart of the sequence and reset the state.
#[derive(Debug)]
pub struct NackGenerator {
    config: NackConfig,
    rtt: Option<Duration>,
    /// Newest sequence number, extended (first packet at `seq + 1 << 16`).
    highest: Option<u64>,
    /// Expected next sequence number of a candidate backwards restart.
    restart_probe: Option<u16>,
    missing: BTreeMap<u64, Missing>,
    out: Vec<u16>,
}

#[derive(Clone, Copy, Debug)]
struct Missing {
    since: Instant,
    sent: u8,
    next: Instant,
}

impl NackGenerator {
    /// A generator that has seen no packet yet. Durations above [`MAX_INTERVAL`] are clamped.
    pub fn new(mut config: NackConfig) -> Self {
        config.retry_interval = config.retry_interval.min(MAX_INTERVAL);
        config.max_age = config.max_age.min(MAX_INTERVAL);
        NackGenerator {
            config,
            rtt: None,
            highest: None,
            restart_probe: None,
            missing: BTreeMap::new(),
            out: Vec::new(),
        }
    }

    /// Records arrival; gaps become "missing"; a late (recovered) packet clears its entry.
    pub fn on_packet(&mut self, now: Instant, seq: u16) {
        let Some(highest) = self.highest else {
            self.reset(seq);
            return;
        };
        let ext = highest.saturating_add_signed(i64::from(seq_diff(seq, highest as u16)));
        if ext > highest {
            self.restart_probe = None;
            let gap = ext - highest - 1;
            if gap > self.config.max_missing as u64 {
                self.reset(seq);
                return;
            }
            let fresh = Missing {
                since: now,
                sent: 0,
                next: now,
            };
            self.missing.extend((highest + 1..ext).map(|e| (e, fresh)));
            while self.missing.len() > self.config.max_missing {
                self.missing.pop_first();
            }
            self.highest = Some(ext);
        } else if ext < highest
            && self.missing.remove(&ext).is_none()
            && highest - ext > self.config.max_missing as u64
        {
            if self.restart_probe == Some(seq) {
                self.reset(seq);
                return;
            }
            self.restart_probe = Some(seq.wrapping_add(1));
        }
        self.collect(now);
    }

    /// Retry interval = max(retry_interval, rtt) when known (rtt clamped to [`MAX_INTERVAL`]).
    pub fn set_rtt(&mut self, rtt: Duration) {
        self.rtt = Some(rtt.min(MAX_INTERVAL));
    }

    /// Sends due retries and drops entries that are out of retries or too old.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.collect(now);
    }

    /// The next instant something is due (a retry or an expiry); None when nothing is missing.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.missing
            .values()
            .map(|m| m.next.min(m.since + self.config.max_age))
            .min()
    }

    /// Sequence numbers to NACK now (each due entry once per retry interval), ascending in
    /// sequence order; None when there is nothing to send (never `Some` of an empty vec).
    /// Call after on_packet/handle_timeout.
    pub fn poll_nack(&mut self) -> Option<Vec<u16>> {
        if self.out.is_empty() {
            return None;
        }
        Some(std::mem::take(&mut self.out))
    }

    /// Packets currently tracked as missing.
    pub fn missing(&self) -> usize {
        self.missing.len()
    }

    fn interval(&self) -> Duration {
        self.rtt.map_or(self.config.retry_interval, |rtt| {
            rtt.max(self.config.retry_interval)
        })
    }

    fn reset(&mut self, seq: u16) {
        self.highest = Some((1 << 16) + u64::from(seq));
        self.restart_probe = None;
        self.missing.clear();
    }

    fn collect(&mut self, now: Instant) {
        let interval = self.interval();
        let NackConfig {
            max_retries,
            max_age,
            ..
        } = self.config;
        let out = &mut self.out;
        self.missing.retain(|&ext, m| {
            if now.saturating_duration_since(m.since) >= max_age {
                return false;
            }
            if m.next > now {
                return true;
            }
            if m.sent >= max_retries {
                return false;
            }
            out.push(ext as u16);
            m.sent += 1;
            m.next = now + interval;
            true
        });
    }
}

/// Limits what one subscriber's NACKs can make the server send: a token bucket of
/// retransmissions (so a subscriber cannot turn its NACKs into an amplifier), and repeats of
/// a sequence number within one round trip suppressed (the first retransmission is still in
/// flight). Fixed-size state; no allocation.
#[derive(Clone, Debug)]
pub struct RetransmitLimiter {
    tokens: f64,
    last_refill: Option<Instant>,
    rate_per_s: f64,
    burst: f64,
    /// Recently requested sequence numbers, indexed by `seq % RECENT`: (seq, last
    /// retransmitted, first requested, last requested), times in milliseconds since `base`
    /// plus one (0 = empty). Compact: one limiter per subscription.
    recent: [(u16, u32, u32, u32); RETRANSMIT_RECENT],
    base: Option<Instant>,
    /// Requests refused by the budget or as repeats.
    pub refused: u64,
}

/// Sequence numbers remembered for repeat suppression (a slot each, by `seq % this`: an
/// overflowing queue can lose a hundred packets at once, all asked for again and again).
pub const RETRANSMIT_RECENT: usize = 128;
/// A request for a sequence number last asked for longer ago than this is a new one (the
/// number came round again, 65,536 packets later).
const REQUEST_MEMORY: Duration = Duration::from_secs(2);
/// A packet asked for this long (or two round trips, if longer), whose last
/// retransmission had a round trip to arrive, is given up (see
/// [`RetransmitLimiter::given_up`]). Chromium asks again about every 100 ms and gives a
/// packet up after 10 tries, so a longer wait would often see no more requests for it.
pub const NACK_GIVE_UP: Duration = Duration::from_millis(500);

impl RetransmitLimiter {
    /// `rate_per_s` retransmissions per second on average, bursts of `burst`.
    pub fn new(rate_per_s: u32, burst: u32) -> Self {
        Self {
            tokens: f64::from(burst),
            last_refill: None,
            rate_per_s: f64::from(rate_per_s),
            burst: f64::from(burst),
            recent: [(0, 0, 0, 0); RETRANSMIT_RECENT],
            base: None,
            refused: 0,
        }
    }

    /// True if `seq` may be retransmitted now; `rtt` is the subscriber's round trip
    /// (a default is used when unknown).
    pub fn allow(&mut self, now: Instant, seq: u16, rtt: Option<Duration>) -> bool {
        let hold = rtt
            .unwrap_or(Duration::from_millis(100))
            .clamp(Duration::from_millis(10), Duration::from_millis(500));
        let base = *self.base.get_or_insert(now);
        // Milliseconds since `base`, plus one so that 0 means an empty slot (wraps after
        // 49 days: a wrapped stamp only makes one repeat pass early).
        let stamp = (now.saturating_duration_since(base).as_millis() as u32).wrapping_add(1);
        let slot = &mut self.recent[usize::from(seq) % RETRANSMIT_RECENT];
        let (s, at, first, last) = *slot;
        // The same number asked for again, not one that came round after a wrap.
        let repeat = first != 0
            && s == seq
            && u128::from(stamp.wrapping_sub(last)) < REQUEST_MEMORY.as_millis();
        if repeat {
            slot.3 = stamp;
        } else {
            *slot = (seq, 0, stamp, stamp);
        }
        if repeat && at != 0 && u128::from(stamp.wrapping_sub(at)) < hold.as_millis() {
            self.refused += 1;
            return false;
        }
        if let Some(last) = self.last_refill {
            let elapsed = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.rate_per_s).min(self.burst);
        }
        self.last_refill = Some(now);
        if self.tokens < 1.0 {
            self.refused += 1;
            return false;
        }
        self.tokens -= 1.0;
        slot.1 = stamp;
        true
    }

    /// What the subscriber's requests for `seq` have been, if it is still the request
    /// remembered for its slot: how long it has been asked for (since the first request
    /// this limiter saw, retransmitted or not) and how long ago it was last retransmitted.
    /// A packet asked for again and again never arrives (its retransmissions are lost in a
    /// full queue too), and the picture behind it stays frozen until a keyframe: Chromium
    /// asks for one itself only after 3 s without a decodable frame.
    fn asked(&self, now: Instant, seq: u16) -> Option<Asked> {
        let base = self.base?;
        let (s, sent, first, last) = self.recent[usize::from(seq) % RETRANSMIT_RECENT];
        let stamp = (now.saturating_duration_since(base).as_millis() as u32).wrapping_add(1);
        let ago = |t: u32| Duration::from_millis(u64::from(stamp.wrapping_sub(t)));
        (first != 0 && s == seq && ago(last) < REQUEST_MEMORY).then(|| Asked {
            asked_for: ago(first),
            since_sent: (sent != 0).then(|| ago(sent)),
        })
    }

    /// Whether the subscriber's requests for `seq` are hopeless, and if so for how long it
    /// has asked: at least [`NACK_GIVE_UP`] (or two round trips, if longer), and its last
    /// retransmission a round trip ago or more (the repair had its time to arrive). Such a
    /// packet is better answered with a keyframe than with more retransmissions, which
    /// only add to a full queue. `rtt`: the subscriber's round trip (100 ms when unknown).
    pub fn given_up(&self, now: Instant, seq: u16, rtt: Option<Duration>) -> Option<Duration> {
        let round_trip = rtt
            .unwrap_or(Duration::from_millis(100))
            .max(Duration::from_millis(20));
        let after = NACK_GIVE_UP.max(round_trip * 2);
        self.asked(now, seq)
            .filter(|a| a.asked_for >= after && a.since_sent.is_some_and(|d| d >= round_trip))
            .map(|a| a.asked_for)
    }
}

/// What a [`RetransmitLimiter`] remembers of one sequence number's requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Asked {
    /// Since the first request.
    asked_for: Duration,
    /// Since its last retransmission; None: never retransmitted (refused by the budget).
    since_sent: Option<Duration>,
}

/// RFC 4585 generic NACK encoding: (PID, BLP) pairs where bit i of BLP stands for PID + i + 1.
/// Input in ascending (wrapping) order gives the minimal encoding; any order is correct.
pub fn nack_pairs(seqs: &[u16]) -> Vec<(u16, u16)> {
    let mut pairs: Vec<(u16, u16)> = Vec::new();
    for &seq in seqs {
        if let Some((pid, blp)) = pairs.last_mut() {
            let d = seq.wrapping_sub(*pid);
            if d == 0 {
                continue;
            }
            if d <= 16 {
                *blp |= 1 << (d - 1);
                continue;
            }
        }
        pairs.push((seq, 0));
    }
    pairs
}

/// Decodes (PID, BLP) pairs into the sequence numbers they stand for, in pair order.
pub fn nack_seqs(pairs: &[(u16, u16)]) -> Vec<u16> {
    let mut seqs = Vec::with_capacity(pairs.len() * 17);
    for &(pid, blp) in pairs {
        seqs.push(pid);
        seqs.extend(
            (0..16u16)
                .filter(|i| blp & (1 << i) != 0)
                .map(|i| pid.wrapping_add(i + 1)),
        );
    }
    seqs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::Ssrc;
    use bytes::Bytes;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn pkt(seq: u16, arrival: Instant) -> MediaPacket {
        MediaPacket {
            ssrc: Ssrc(7),
            seq,
            timestamp: u32::from(seq) * 3000,
            marker: false,
            payload_type: 96,
            payload: Bytes::from(vec![seq as u8; 4]),
            arrival,
            keyframe: false,
            audio_level: None,
            layer: None,
            dependency: None,
        }
    }

    #[test]
    fn cache_round_trip_and_wrap() {
        let t0 = Instant::now();
        let mut cache = RetransmissionCache::new(1000, ms(1000));
        assert_eq!(cache.capacity(), 1024);
        for i in 0..20u16 {
            cache.insert(&pkt(65530u16.wrapping_add(i), t0));
        }
        for i in 0..20u16 {
            let seq = 65530u16.wrapping_add(i);
            assert_eq!(cache.get(seq, t0).map(|p| p.seq), Some(seq));
        }
        assert!(cache.get(100, t0).is_none(), "never inserted");
        assert!(cache.get(65529, t0).is_none());
    }

    /// The cache keeps its own copy of the payload: not a view that would keep the
    /// packet's (large, shared) receive buffer alive.
    #[test]
    fn cache_keeps_its_own_copy_of_the_payload() {
        let t0 = Instant::now();
        let mut cache = RetransmissionCache::new(16, ms(1000));
        let p = pkt(3, t0);
        cache.insert(&p);
        let cached = cache.get(3, t0).unwrap();
        assert_eq!(cached.payload, p.payload);
        assert_ne!(cached.payload.as_ptr(), p.payload.as_ptr());
    }

    #[test]
    fn cache_eviction_by_age_and_overwrite() {
        let t0 = Instant::now();
        let mut cache = RetransmissionCache::new(16, ms(500));
        cache.insert(&pkt(1, t0));
        assert!(cache.get(1, t0 + ms(500)).is_some());
        assert!(cache.get(1, t0 + ms(501)).is_none(), "too old");
        cache.insert(&pkt(17, t0 + ms(10)));
        assert!(cache.get(1, t0).is_none(), "overwritten by a newer seq");
        assert_eq!(cache.get(17, t0 + ms(10)).map(|p| p.seq), Some(17));
        // A late older packet does not evict a newer fresh one.
        cache.insert(&pkt(1, t0 + ms(20)));
        assert_eq!(cache.get(17, t0 + ms(20)).map(|p| p.seq), Some(17));
        assert!(cache.get(1, t0 + ms(20)).is_none());
        // ... but replaces a stale one.
        cache.insert(&pkt(1, t0 + ms(2000)));
        assert!(cache.get(1, t0 + ms(2000)).is_some());
        cache.clear();
        assert!(cache.get(1, t0 + ms(2000)).is_none());
    }

    #[test]
    fn cache_capacity_is_clamped() {
        assert_eq!(RetransmissionCache::new(0, ms(1)).capacity(), 1);
        assert_eq!(
            RetransmissionCache::new(usize::MAX, ms(1)).capacity(),
            MAX_CACHE
        );
        let t0 = Instant::now();
        let mut cache = RetransmissionCache::new(1, ms(1000));
        cache.insert(&pkt(5, t0));
        cache.insert(&pkt(6, t0));
        assert!(cache.get(5, t0).is_none());
        assert!(cache.get(6, t0).is_some());
    }

    /// Drives `nack` in virtual time until `end`, returning every NACKed seq with its time.
    fn drive(nack: &mut NackGenerator, mut now: Instant, end: Instant) -> Vec<(Instant, u16)> {
        let mut sent = Vec::new();
        while let Some(deadline) = nack.poll_timeout() {
            if deadline > end {
                break;
            }
            assert!(deadline >= now, "deadline in the past");
            now = deadline;
            nack.handle_timeout(now);
            sent.extend(
                nack.poll_nack()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|s| (now, s)),
            );
        }
        sent
    }

    #[test]
    fn losses_across_wrap_are_nacked() {
        let t0 = Instant::now();
        let mut nack = NackGenerator::new(NackConfig::default());
        nack.on_packet(t0, 65533);
        assert_eq!(nack.poll_nack(), None);
        nack.on_packet(t0, 65534);
        nack.on_packet(t0, 1);
        assert_eq!(nack.poll_nack(), Some(vec![65535, 0]));
        assert_eq!(nack.missing(), 2);
        assert_eq!(nack.poll_nack(), None);
        assert_eq!(nack.poll_timeout(), Some(t0 + ms(50)));
    }

    #[test]
    fn recovered_packet_cancels_nack() {
        let t0 = Instant::now();
        let mut nack = NackGenerator::new(NackConfig::default());
        nack.on_packet(t0, 10);
        nack.on_packet(t0, 13);
        assert_eq!(nack.poll_nack(), Some(vec![11, 12]));
        nack.on_packet(t0 + ms(20), 11);
        assert_eq!(nack.missing(), 1);
        let sent = drive(&mut nack, t0 + ms(20), t0 + ms(5000));
        assert!(sent.iter().all(|&(_, s)| s == 12));
        assert_eq!(sent.len(), 4, "5 retries in total, one already sent");
        assert_eq!(nack.missing(), 0);
        assert_eq!(nack.poll_timeout(), None);
    }

    #[test]
    fn retries_stop_after_max_retries() {
        let t0 = Instant::now();
        let mut nack = NackGenerator::new(NackConfig::default());
        nack.on_packet(t0, 1);
        nack.on_packet(t0, 3);
        let mut sent: Vec<(Instant, u16)> = nack
            .poll_nack()
            .unwrap()
            .into_iter()
            .map(|s| (t0, s))
            .collect();
        sent.extend(drive(&mut nack, t0, t0 + ms(10_000)));
        let times: Vec<Duration> = sent.iter().map(|&(t, _)| t - t0).collect();
        assert_eq!(times, vec![ms(0), ms(50), ms(100), ms(150), ms(200)]);
        assert_eq!(nack.missing(), 0);
    }

    #[test]
    fn retries_stop_after_max_age_and_follow_rtt() {
        let t0 = Instant::now();
        let config = NackConfig {
            max_retries: 100,
            max_age: ms(1000),
            ..NackConfig::default()
        };
        let mut nack = NackGenerator::new(config);
        nack.set_rtt(ms(100));
        nack.on_packet(t0, 1);
        nack.on_packet(t0, 3);
        assert_eq!(nack.poll_nack(), Some(vec![2]));
        let sent = drive(&mut nack, t0, t0 + ms(10_000));
        // Every 100 ms (the RTT) until 1 s after detection.
        assert_eq!(sent.len(), 9);
        assert_eq!(sent.last().map(|&(t, _)| t - t0), Some(ms(900)));
        assert_eq!(nack.missing(), 0);
    }

    #[test]
    fn huge_jump_resets_without_storm() {
        let t0 = Instant::now();
        let mut nack = NackGenerator::new(NackConfig::default());
        nack.on_packet(t0, 10);
        nack.on_packet(t0, 5000);
        assert_eq!(nack.poll_nack(), None);
        assert_eq!(nack.missing(), 0);
        nack.on_packet(t0, 5002);
        assert_eq!(nack.poll_nack(), Some(vec![5001]));
        // Just at the limit: 256 missing are tracked.
        let mut nack = NackGenerator::new(NackConfig::default());
        nack.on_packet(t0, 0);
        nack.on_packet(t0, 257);
        assert_eq!(nack.missing(), 256);
        assert_eq!(nack.poll_nack().map(|v| v.len()), Some(256));
    }

    #[test]
    fn missing_table_is_bounded() {
        let t0 = Instant::now();
        let mut nack = NackGenerator::new(NackConfig::default());
        let mut seq = 0u16;
        nack.on_packet(t0, seq);
        for _ in 0..100 {
            seq = seq.wrapping_add(200);
            nack.on_packet(t0, seq);
        }
        assert_eq!(nack.missing(), 256);
    }

    #[test]
    fn backwards_restart_needs_two_consecutive_packets() {
        let t0 = Instant::now();
        let mut nack = NackGenerator::new(NackConfig::default());
        nack.on_packet(t0, 20000);
        nack.on_packet(t0, 20002);
        assert_eq!(nack.poll_nack(), Some(vec![20001]));
        // A single very late packet is ignored: the outstanding NACK survives.
        nack.on_packet(t0, 15000);
        assert_eq!(nack.missing(), 1);
        // Two consecutive far-behind packets are a restart.
        nack.on_packet(t0, 100);
        nack.on_packet(t0, 101);
        assert_eq!(nack.missing(), 0);
        nack.on_packet(t0, 103);
        assert_eq!(nack.poll_nack(), Some(vec![102]));
    }

    #[test]
    fn duplicates_and_reordering_are_harmless() {
        let t0 = Instant::now();
        let mut nack = NackGenerator::new(NackConfig::default());
        for seq in [1u16, 2, 2, 4, 3, 5, 5] {
            nack.on_packet(t0, seq);
        }
        assert_eq!(nack.poll_nack(), Some(vec![3]));
        assert_eq!(nack.missing(), 0);
    }

    #[test]
    fn extreme_durations_do_not_panic() {
        let t0 = Instant::now();
        let config = NackConfig {
            retry_interval: Duration::MAX,
            max_age: Duration::MAX,
            ..NackConfig::default()
        };
        let mut nack = NackGenerator::new(config);
        nack.set_rtt(Duration::MAX);
        nack.on_packet(t0, 1);
        nack.on_packet(t0, 3);
        assert_eq!(nack.poll_nack(), Some(vec![2]));
        let deadline = nack.poll_timeout().unwrap();
        assert_eq!(deadline, t0 + crate::MAX_INTERVAL);
        nack.handle_timeout(deadline);
        assert_eq!(nack.missing(), 0, "expired at max_age");
    }

    #[test]
    fn pairs_examples() {
        let seqs: Vec<u16> = (100..117).collect();
        assert_eq!(
            nack_pairs(&seqs),
            vec![(100, 0xffff)],
            "17 consecutive fit one pair"
        );
        let seqs: Vec<u16> = (100..118).collect();
        assert_eq!(nack_pairs(&seqs), vec![(100, 0xffff), (117, 0)]);
        assert_eq!(nack_pairs(&[65535, 0, 2]), vec![(65535, 0b101)]);
        assert_eq!(nack_pairs(&[5, 5, 21, 23]), vec![(5, 0x8000), (23, 0)]);
        assert_eq!(nack_pairs(&[]), vec![]);
        assert_eq!(nack_seqs(&[(65535, 0b101)]), vec![65535, 0, 2]);
        assert_eq!(nack_seqs(&[(1, 0x8000)]), vec![1, 17]);
    }

    proptest! {
        #[test]
        fn pairs_round_trip(start: u16, steps in proptest::collection::vec(1u16..40, 0..200)) {
            let mut seqs = vec![start];
            for step in steps {
                let next = seqs[seqs.len() - 1].wrapping_add(step);
                seqs.push(next);
            }
            let pairs = nack_pairs(&seqs);
            prop_assert_eq!(nack_seqs(&pairs), seqs.clone());
            // Minimal: one pair can cover at most 17 sequence numbers.
            prop_assert!(pairs.len() * 17 >= seqs.len());
        }

        #[test]
        fn generator_never_panics(ops in proptest::collection::vec((any::<u16>(), 0u64..200), 0..300)) {
            let t0 = Instant::now();
            let mut now = t0;
            let mut nack = NackGenerator::new(NackConfig::default());
            for (seq, dt) in ops {
                now += ms(dt);
                nack.on_packet(now, seq);
                nack.handle_timeout(now);
                let _ = nack.poll_nack();
                prop_assert!(nack.missing() <= 256);
                if let Some(deadline) = nack.poll_timeout() {
                    nack.handle_timeout(deadline.max(now));
                }
            }
        }
    }

    #[test]
    fn retransmissions_have_a_budget_and_repeats_wait_a_round_trip() {
        let t0 = Instant::now();
        let mut l = RetransmitLimiter::new(100, 50);
        let rtt = Some(Duration::from_millis(40));
        // A burst of 50 passes, the 51st does not.
        for seq in 0..50u16 {
            assert!(l.allow(t0, seq, rtt), "{seq}");
        }
        assert!(!l.allow(t0, 50, rtt));
        // 100 ms later, 10 more tokens.
        let t1 = t0 + Duration::from_millis(100);
        for seq in 100..110u16 {
            assert!(l.allow(t1, seq, rtt));
        }
        assert!(!l.allow(t1, 110, rtt));
        // A repeat within the round trip is refused even with tokens left.
        let t2 = t1 + Duration::from_secs(3);
        assert!(l.allow(t2, 7, rtt));
        assert!(!l.allow(t2 + Duration::from_millis(10), 7, rtt));
        assert!(l.allow(t2 + Duration::from_millis(50), 7, rtt));
        assert_eq!(l.refused, 3);
        // It has been asked for since t2 (its request at t0 is too old to be the same),
        // retransmitted or not.
        assert_eq!(
            l.asked(t2 + Duration::from_millis(80), 7),
            Some(Asked {
                asked_for: Duration::from_millis(80),
                since_sent: Some(Duration::from_millis(30)),
            })
        );
        assert_eq!(l.asked(t2 + Duration::from_secs(3), 7), None);
        assert_eq!(l.asked(t2, 8), None);
        // A flood of NACKs for 278,000 sequence numbers releases at most the budget.
        let mut l = RetransmitLimiter::new(100, 50);
        let allowed = (0..278_000u32)
            .filter(|s| l.allow(t0, *s as u16, rtt))
            .count();
        assert_eq!(allowed, 50);
    }

    /// A packet is given up after 500 ms of requests (two round trips on a slow path), and
    /// only once a retransmission of it had a round trip to arrive.
    #[test]
    fn a_packet_asked_for_too_long_is_given_up() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let fast = Some(Duration::from_millis(30));
        let mut l = RetransmitLimiter::new(1_000, 1_000);
        for ms in (0..=600).step_by(100) {
            l.allow(at(ms), 9, fast);
        }
        assert_eq!(l.given_up(at(400), 9, fast), None, "not yet");
        assert_eq!(l.given_up(at(600), 9, fast), None, "sent just now");
        assert_eq!(
            l.given_up(at(640), 9, fast),
            Some(Duration::from_millis(640))
        );
        // A 400 ms round trip (repeats within it are not sent again): two round trips
        // of requests, and the last retransmission a round trip old.
        let slow = Some(Duration::from_millis(400));
        let mut l = RetransmitLimiter::new(1_000, 1_000);
        for ms in (0..=700).step_by(100) {
            l.allow(at(ms), 9, slow); // sent at 0 and 400
        }
        assert_eq!(
            l.given_up(at(700), 9, slow),
            None,
            "not two round trips yet"
        );
        assert_eq!(
            l.given_up(at(820), 9, slow),
            Some(Duration::from_millis(820))
        );
        let mut l = RetransmitLimiter::new(1_000, 1_000);
        for ms in (0..=900).step_by(100) {
            l.allow(at(ms), 9, slow); // sent at 0, 400 and 800
        }
        assert_eq!(
            l.given_up(at(900), 9, slow),
            None,
            "its repair is on the way"
        );
        assert!(l.given_up(at(1_200), 9, slow).is_some());
        // Never retransmitted (the budget refused it): never given up.
        let mut l = RetransmitLimiter::new(1, 1);
        l.allow(at(0), 1, fast);
        for ms in (0..=900).step_by(100) {
            assert!(!l.allow(at(ms), 2, fast));
        }
        assert_eq!(l.given_up(at(900), 2, fast), None);
    }

    /// A request refused by the budget still starts the clock of how long its packet has
    /// been asked for; another sequence number in the same slot starts it again.
    #[test]
    fn how_long_a_packet_has_been_asked_for() {
        let t0 = Instant::now();
        let mut l = RetransmitLimiter::new(1, 1);
        let rtt = Some(Duration::from_millis(20));
        assert_eq!(l.asked(t0, 5), None);
        assert!(l.allow(t0, 4, rtt));
        assert!(!l.allow(t0, 5, rtt), "the budget is spent");
        let t1 = t0 + Duration::from_millis(300);
        assert!(!l.allow(t1, 5, rtt));
        let asked = l.asked(t1, 5).unwrap();
        assert_eq!(asked.asked_for, Duration::from_millis(300));
        assert_eq!(asked.since_sent, None, "never retransmitted");
        let t2 = t0 + Duration::from_millis(1_200);
        assert!(l.allow(t2, 5, rtt), "a token came back");
        let t3 = t2 + Duration::from_millis(40);
        assert_eq!(
            l.asked(t3, 5),
            Some(Asked {
                asked_for: Duration::from_millis(1_240),
                since_sent: Some(Duration::from_millis(40)),
            })
        );
        // The sequence number a table's length further takes the slot over.
        assert!(!l.allow(t3, 5 + RETRANSMIT_RECENT as u16, rtt));
        assert_eq!(l.asked(t3, 5), None);
        assert_eq!(
            l.asked(t3, 5 + RETRANSMIT_RECENT as u16)
                .map(|a| a.asked_for),
            Some(Duration::ZERO)
        );
        // A hundred packets lost at once and asked for every 100 ms: each keeps its own
        // history.
        let mut l = RetransmitLimiter::new(10_000, 10_000);
        let lost: Vec<u16> = (65_500u16..=65_535).chain(0..64).collect();
        for round in 0..6u64 {
            let at = t0 + Duration::from_millis(100 * round);
            for s in &lost {
                l.allow(at, *s, rtt);
            }
        }
        let at = t0 + Duration::from_millis(500);
        for s in &lost {
            assert_eq!(
                l.asked(at, *s).map(|a| a.asked_for),
                Some(Duration::from_millis(500)),
                "{s}"
            );
        }
    }
}
