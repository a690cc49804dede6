//! The estimator against a simulated path, in virtual time: a sender choosing simulcast
//! layers by the estimate, a bottleneck link (rate, propagation delay, drop-tail queue,
//! random loss), and a receiver whose feedback is built by Hearth's own [`TwccRecorder`]
//! and read back by [`parse_feedback`], so the whole feedback loop runs as on the wire.

use super::*;
use crate::transport::twcc::{TwccRecorder, parse_feedback};
use proptest::prelude::*;

const LAYERS: [u64; 3] = [150_000, 500_000, 1_500_000];
const MTU: usize = 1_200;
const OVERHEAD: usize = 40;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// xorshift: deterministic randomness for loss and jitter.
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

struct Link {
    capacity_bps: u64,
    delay: Duration,
    max_queue: Duration,
    loss: f64,
    /// Extra random delay per packet, uniform in [0, jitter) (no reordering: FIFO).
    jitter: Duration,
    busy_until: Option<Instant>,
    /// A token bucket's depth (bytes): a burst this big passes at once (tc tbf's `burst`).
    burst: f64,
    tokens: f64,
    in_flight: VecDeque<(Instant, u16)>,
    rng: Rng,
    dropped: u64,
}

impl Link {
    fn new(capacity_bps: u64) -> Self {
        Self {
            capacity_bps,
            delay: ms(25),
            max_queue: ms(300),
            loss: 0.0,
            jitter: Duration::ZERO,
            busy_until: None,
            burst: 0.0,
            tokens: 0.0,
            in_flight: VecDeque::new(),
            rng: Rng(0x9e37_79b9_7f4a_7c15),
            dropped: 0,
        }
    }

    fn send(&mut self, now: Instant, size: usize, tseq: u16) {
        let start = self.busy_until.map_or(now, |b| b.max(now));
        if start - now > self.max_queue {
            self.dropped += 1;
            return;
        }
        let bytes_per_s = self.capacity_bps as f64 / 8.0;
        // Tokens gathered while the link idled (none while it was busy).
        if let Some(b) = self.busy_until
            && now > b
        {
            self.tokens = (self.tokens + (now - b).as_secs_f64() * bytes_per_s).min(self.burst);
        }
        let from_bucket = self.tokens.min(size as f64);
        self.tokens -= from_bucket;
        let service = Duration::from_secs_f64((size as f64 - from_bucket) / bytes_per_s);
        self.busy_until = Some(start + service);
        if self.rng.next_f64() < self.loss {
            self.dropped += 1;
            return;
        }
        let jitter = self.jitter.mul_f64(self.rng.next_f64());
        let mut arrival = start + service + self.delay + jitter;
        if let Some((last, _)) = self.in_flight.back() {
            arrival = arrival.max(*last);
        }
        self.in_flight.push_back((arrival, tseq));
    }
}

struct Sim {
    t0: Instant,
    now: Instant,
    link: Link,
    history: SendHistory,
    bwe: SendSideBwe,
    recorder: TwccRecorder,
    feedback: VecDeque<(Instant, Vec<u8>)>,
    next_frame: Instant,
    /// Layer index chosen at each frame.
    layer: usize,
    switches: u32,
    /// How long a switch down takes to reach the wire (an SFU waits for the lower layer's
    /// keyframe and keeps sending the higher one meanwhile); zero: at once.
    switch_down_delay: Duration,
    pending_down: Option<(usize, Instant)>,
    sent_media_bytes: u64,
    padding_bytes: u64,
}

impl Sim {
    fn new(capacity_bps: u64) -> Self {
        let t0 = Instant::now();
        let mut bwe = SendSideBwe::new(BweConfig::default());
        // As the allocator asks: the top layer with its headroom and climbing margin.
        bwe.set_desired(t0, LAYERS[2] * 4 / 3);
        Self {
            t0,
            now: t0,
            link: Link::new(capacity_bps),
            history: SendHistory::new(),
            bwe,
            recorder: TwccRecorder::new(1),
            feedback: VecDeque::new(),
            next_frame: t0,
            layer: 2,
            switches: 0,
            switch_down_delay: Duration::ZERO,
            pending_down: None,
            sent_media_bytes: 0,
            padding_bytes: 0,
        }
    }

    fn send(&mut self, size: usize) {
        let probe = self.bwe.active_probe(self.now);
        let tseq = self.history.on_sent(self.now, size, probe);
        self.link.send(self.now, size, tseq);
    }

    /// The highest layer that fits the estimate (the lowest if none does).
    fn choose(&mut self) {
        let est = self.bwe.estimate();
        let mut layer = LAYERS.iter().rposition(|r| *r <= est).unwrap_or(0);
        if layer < self.layer && !self.switch_down_delay.is_zero() {
            match self.pending_down {
                Some((_, due)) if self.now >= due => self.pending_down = None,
                Some((_, due)) => {
                    self.pending_down = Some((layer, due));
                    layer = self.layer;
                }
                None => {
                    self.pending_down = Some((layer, self.now + self.switch_down_delay));
                    layer = self.layer;
                }
            }
        } else {
            self.pending_down = None;
        }
        if layer != self.layer {
            self.switches += 1;
            self.layer = layer;
        }
    }

    fn step(&mut self) {
        let now = self.now;
        // Receiver side.
        while let Some(&(arrival, tseq)) = self.link.in_flight.front() {
            if arrival > now {
                break;
            }
            self.link.in_flight.pop_front();
            self.recorder.on_packet(arrival, 0xabcd, tseq);
        }
        while let Some(fb) = self.recorder.poll_feedback(now) {
            self.feedback.push_back((now + ms(25), fb));
        }
        // Sender side.
        while let Some((at, fb)) = self.feedback.front() {
            if *at > now {
                break;
            }
            let parsed = parse_feedback(&fb[4..]).expect("our own feedback parses");
            self.feedback.pop_front();
            self.bwe.on_feedback(now, &mut self.history, &parsed);
        }
        if now >= self.next_frame {
            self.choose();
            let mut bytes = (LAYERS[self.layer] / 8 / 30) as usize;
            while bytes > 0 {
                let payload = bytes.min(MTU);
                bytes -= payload;
                self.sent_media_bytes += (payload + OVERHEAD) as u64;
                self.send(payload + OVERHEAD);
            }
            self.next_frame += Duration::from_micros(33_333);
        }
        while let Some((_, size)) = self.bwe.poll_padding(now, LAYERS[self.layer]) {
            self.padding_bytes += (size + OVERHEAD) as u64;
            self.send(size + OVERHEAD);
        }
        self.now += ms(1);
    }

    fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.step();
        }
    }

    /// Runs until `f` holds or `limit` passes; the time it took.
    fn run_until(&mut self, limit: Duration, f: impl Fn(&Self) -> bool) -> Option<Duration> {
        let start = self.now;
        while self.now < start + limit {
            if f(self) {
                return Some(self.now - start);
            }
            self.step();
        }
        None
    }

    fn elapsed(&self) -> Duration {
        self.now - self.t0
    }
}

/// A path with room for everything is never held back: the estimate stays where it
/// started and no probe is sent.
#[test]
fn an_open_path_is_never_limited() {
    let mut sim = Sim::new(100_000_000);
    sim.run_for(Duration::from_secs(20));
    let stats = sim.bwe.stats();
    assert!(!stats.limited, "{stats:?}");
    assert_eq!(stats.probes, 0);
    assert_eq!(sim.layer, 2);
    assert_eq!(sim.switches, 0);
    assert!(stats.acked_bps.is_some_and(|a| a > 1_000_000), "{stats:?}");
}

/// Jitter without a growing queue (up to 10 ms per packet, like a busy Wi-Fi hop) is not
/// congestion.
#[test]
fn jitter_alone_is_not_overuse() {
    let mut sim = Sim::new(50_000_000);
    sim.link.jitter = ms(10);
    sim.run_for(Duration::from_secs(20));
    let stats = sim.bwe.stats();
    assert_eq!(stats.overuses, 0, "{stats:?}");
    assert_eq!(sim.layer, 2);
}

/// A 300 kbit/s link (50 ms each way, 1 % loss): the estimate falls to the link within a
/// few seconds, the low layer is chosen and kept (no flapping), probes stay rare. With a
/// short queue (300 ms, found by loss) and a deep one (5 s, like netem's default 1,000
/// packets, found by the delay trend).
#[test]
fn a_constrained_link_is_found_and_kept() {
    for queue in [ms(300), ms(5_000)] {
        constrained_link(queue);
    }
}

fn constrained_link(queue: Duration) {
    let mut sim = Sim::new(300_000);
    sim.link.loss = 0.01;
    sim.link.delay = ms(50);
    sim.link.max_queue = queue;
    let took = sim
        .run_until(Duration::from_secs(10), |s| {
            s.bwe.estimate() <= 330_000 && s.layer == 0
        })
        .unwrap_or_else(|| panic!("never converged: {:?}", sim.bwe.stats()));
    assert!(
        took < Duration::from_secs(5),
        "converged after {took:?} ({queue:?} queue)"
    );
    let switches = sim.switches;
    let dropped = sim.link.dropped;
    let sent_before = sim.history.sent();
    sim.run_for(Duration::from_secs(30));
    let stats = sim.bwe.stats();
    assert!(
        (100_000..=400_000).contains(&stats.estimate_bps),
        "{stats:?}"
    );
    assert!(
        sim.switches - switches <= 4,
        "{} layer switches in 30 s",
        sim.switches - switches
    );
    // Drops beyond the random 1 %: the queue overflowed rarely.
    let sent = sim.history.sent() - sent_before;
    let lost = sim.link.dropped - dropped;
    assert!(lost * 100 <= sent * 5, "{lost} of {sent} lost");
    assert!(stats.probes <= 10, "{stats:?}");
}

/// A wide path that suddenly narrows to 300 kbit/s behind a full drop-tail queue (the
/// browser test's shaped link): the queue fills within a fraction of a second and then
/// holds still, so the delay trend is only briefly there; whichever signal sees it, the
/// estimate is under the link and the sender on the small layer within 2 s, every time.
#[test]
fn a_link_that_narrows_suddenly_is_followed_at_once() {
    for (seed, queue) in [(1u64, ms(300)), (2, ms(300)), (3, ms(100)), (4, ms(1_000))] {
        let mut sim = Sim::new(10_000_000);
        sim.link.rng = Rng(0x9e37_79b9_7f4a_7c15 ^ seed.wrapping_mul(0x2545_f491_4f6c_dd1d));
        sim.link.max_queue = queue;
        sim.link.loss = 0.01;
        sim.run_for(Duration::from_secs(10));
        assert_eq!(sim.layer, 2, "{:?}", sim.bwe.stats());
        sim.link.capacity_bps = 300_000;
        let took = sim
            .run_until(Duration::from_secs(10), |s| {
                s.bwe.estimate() <= 330_000 && s.layer == 0
            })
            .unwrap_or_else(|| panic!("never followed ({queue:?} queue): {:?}", sim.bwe.stats()));
        assert!(
            took <= Duration::from_secs(2),
            "followed after {took:?} ({queue:?} queue): {:?}",
            sim.bwe.stats()
        );
    }
}

/// A wide path that narrows suddenly to a link the lowest layer still fits (200 kbit/s
/// for a 150 kbit/s layer), with the sender slow to switch down (300 ms for the lower
/// layer's keyframe, the higher one sent meanwhile): the queue overflows for a while and
/// feedback reports heavy loss several times over. The estimate follows the link down,
/// but never below what the link was measured to deliver: one overshoot is one decrease,
/// so the lowest layer is never paused.
#[test]
fn a_narrowing_costs_one_decrease_not_a_dip_below_the_link() {
    for (seed, queue) in [(1u64, ms(300)), (2, ms(100)), (3, ms(1_000)), (4, ms(300))] {
        let mut sim = Sim::new(10_000_000);
        sim.link.rng = Rng(0x51_7cc1_b727_220a ^ seed.wrapping_mul(0x2545_f491_4f6c_dd1d));
        sim.link.max_queue = queue;
        sim.link.loss = 0.01;
        sim.switch_down_delay = ms(300);
        sim.run_for(Duration::from_secs(10));
        assert_eq!(sim.layer, 2, "{:?}", sim.bwe.stats());
        sim.link.capacity_bps = 200_000;
        let mut lowest = u64::MAX;
        let mut below_lowest_layer = Duration::ZERO;
        for _ in 0..10_000 {
            sim.step();
            let est = sim.bwe.estimate();
            lowest = lowest.min(est);
            if est < LAYERS[0] {
                below_lowest_layer += ms(1);
            }
        }
        let stats = sim.bwe.stats();
        assert_eq!(sim.layer, 0, "{stats:?}");
        // Without a congestion signal the estimate may float above what is sent (up to
        // 1.5 times the acknowledged rate), never up to the layer that does not fit.
        assert!(stats.estimate_bps < LAYERS[1], "{stats:?}");
        assert!(
            lowest >= LAYERS[0],
            "dipped to {lowest} ({below_lowest_layer:?} under the lowest layer), {queue:?} queue: {stats:?}"
        );
    }
}

/// When the link opens (300 kbit/s to 10 Mbit/s), probing finds the room and the best layer
/// is back within 10 s.
#[test]
fn a_link_that_opens_is_found_by_probing() {
    let mut sim = Sim::new(300_000);
    sim.run_for(Duration::from_secs(15));
    assert_eq!(sim.layer, 0, "{:?}", sim.bwe.stats());
    sim.link.capacity_bps = 10_000_000;
    let took = sim
        .run_until(Duration::from_secs(15), |s| s.layer == 2)
        .unwrap_or_else(|| panic!("never recovered: {:?}", sim.bwe.stats()));
    assert!(took <= Duration::from_secs(10), "took {took:?}");
    assert!(sim.bwe.stats().probes_raised >= 1);
    assert!(sim.padding_bytes > 0);
}

/// A token bucket that lets 3,000 bytes through at once (like `tc tbf ... burst 3000`)
/// does not make probes think the link is faster than it is: the estimate stays near the
/// link's 300 kbit/s for 30 s.
#[test]
fn a_token_bucket_burst_does_not_fool_the_probes() {
    let mut sim = Sim::new(300_000);
    sim.link.burst = 3_000.0;
    sim.link.tokens = 3_000.0;
    sim.run_for(Duration::from_secs(10));
    let mut highest = 0;
    for _ in 0..300 {
        sim.run_for(ms(100));
        highest = highest.max(sim.bwe.estimate());
    }
    let stats = sim.bwe.stats();
    assert!(stats.probes >= 3, "{stats:?}");
    assert!(
        highest <= 360_000,
        "the estimate reached {highest}: {stats:?}"
    );
    assert_eq!(sim.layer, 0);
}

/// Heavy random loss (20 %) on a wide link lowers the estimate; 1 % does not.
#[test]
fn loss_lowers_the_estimate_only_when_heavy() {
    let mut light = Sim::new(20_000_000);
    light.link.loss = 0.01;
    light.run_for(Duration::from_secs(15));
    assert_eq!(light.layer, 2, "{:?}", light.bwe.stats());
    let mut heavy = Sim::new(20_000_000);
    heavy.link.loss = 0.2;
    heavy.run_for(Duration::from_secs(15));
    let stats = heavy.bwe.stats();
    assert!(stats.loss_decreases > 0, "{stats:?}");
    assert!(stats.estimate_bps < 1_500_000, "{stats:?}");
    assert!(heavy.elapsed() >= Duration::from_secs(15));
}

fn sent_history(now: Instant, n: u16) -> SendHistory {
    let mut h = SendHistory::new();
    for i in 0..n {
        h.on_sent(now + ms(u64::from(i)), 1_000, None);
    }
    h
}

/// Each packet is reported once: repeats, sequence numbers never sent and ones older than
/// the history are counted as unknown and change nothing.
#[test]
fn feedback_names_each_packet_once() {
    let t0 = Instant::now();
    let mut h = sent_history(t0, 10);
    let fb = TwccFeedback {
        base_seq: 1,
        feedback_count: 0,
        status_count: 4,
        received: vec![(1, 1_000), (2, 2_000), (4, 4_000)],
    };
    let mut out = Vec::new();
    h.results(&fb, &mut out);
    assert_eq!(out.len(), 4);
    assert_eq!(out[2].arrival_us, None);
    assert_eq!(out[2].sent.seq, 3);
    out.clear();
    // The same again: nothing new (3 was already counted lost).
    h.results(&fb, &mut out);
    assert!(out.is_empty());
    assert_eq!(h.unknown_reports, 3);
    // 3 arrives late: its delay still counts.
    let late = TwccFeedback {
        base_seq: 3,
        feedback_count: 1,
        status_count: 1,
        received: vec![(3, 5_000)],
    };
    out.clear();
    h.results(&late, &mut out);
    assert_eq!(out.len(), 1);
    // Never sent: 11..=20.
    out.clear();
    let future = TwccFeedback {
        base_seq: 11,
        feedback_count: 2,
        status_count: 10,
        received: (11..21).map(|s| (s, 9_000)).collect(),
    };
    h.results(&future, &mut out);
    assert!(out.is_empty());
    assert_eq!(h.unknown_reports, 13);
}

/// Sequence numbers wrap: a history past 65,535 still finds its packets.
#[test]
fn history_follows_the_wrap() {
    let t0 = Instant::now();
    let mut h = SendHistory::new();
    let mut last = 0;
    for i in 0..70_000u64 {
        last = h.on_sent(t0 + Duration::from_micros(i * 10), 500, None);
    }
    assert_eq!(last, (70_000u64 % 65_536) as u16);
    let fb = TwccFeedback {
        base_seq: last.wrapping_sub(2),
        feedback_count: 0,
        status_count: 3,
        received: vec![(last.wrapping_sub(2), 0), (last, 100)],
    };
    let mut out = Vec::new();
    h.results(&fb, &mut out);
    assert_eq!(
        out.iter().map(|r| r.sent.seq).collect::<Vec<_>>(),
        vec![69_998, 69_999, 70_000]
    );
}

/// A receiver that reports heavy loss once and then goes quiet (no more feedback): every
/// wake-up the estimator asks for is in the future once its work is done, probes waiting
/// for feedback are forgotten, and probing goes on at its pace.
#[test]
fn a_quiet_receiver_does_not_spin_the_caller() {
    let t0 = Instant::now();
    let mut h = sent_history(t0, 40);
    let mut bwe = SendSideBwe::new(BweConfig {
        start_bps: 1_000_000,
        ..BweConfig::default()
    });
    let fb = TwccFeedback {
        base_seq: 1,
        feedback_count: 0,
        status_count: 40,
        received: (1..=10).map(|s| (s, i64::from(s) * 1_000)).collect(),
    };
    bwe.on_feedback(t0 + ms(100), &mut h, &fb);
    assert!(bwe.stats().limited, "{:?}", bwe.stats());
    bwe.set_desired(t0 + ms(100), 5_000_000);
    let mut now = t0 + ms(100);
    let mut wakeups = 0;
    while now < t0 + Duration::from_secs(60) {
        match bwe.poll_timeout() {
            Some(t) if t <= now => {
                wakeups += 1;
                while bwe.poll_padding(now, 0).is_some() {}
                assert!(
                    bwe.poll_timeout().is_none_or(|t| t > now),
                    "due again at once at {:?}",
                    now - t0
                );
            }
            _ => {}
        }
        now += ms(10);
    }
    // Probes every 4 s, each with its packets at up to one per ~10 ms tick.
    let probes = bwe.stats().probes;
    assert!((10..=16).contains(&probes), "{probes} probes");
    assert!(wakeups < 2_000, "{wakeups} wake-ups");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(super::super::proptest_cases()))]

    /// Arbitrary feedback (any base, counts, absurd or backward arrival times) never
    /// panics, keeps the estimate within its bounds and reports each packet at most once
    /// as received.
    #[test]
    fn lying_feedback_is_survived(
        feedbacks in prop::collection::vec(
            (any::<u16>(), 1u16..2_000, prop::collection::vec((0u16..2_000, any::<i64>()), 0..64)),
            1..20,
        ),
    ) {
        let t0 = Instant::now();
        let mut h = sent_history(t0, 1_500);
        let mut bwe = SendSideBwe::new(BweConfig::default());
        bwe.set_desired(t0, 5_000_000);
        let mut received = std::collections::HashSet::new();
        let mut out = Vec::new();
        for (i, (base, count, rx)) in feedbacks.into_iter().enumerate() {
            let mut rx: Vec<(u16, i64)> = rx
                .into_iter()
                .filter(|(o, _)| *o < count)
                .map(|(o, t)| (base.wrapping_add(o), t / 4))
                .collect();
            rx.sort_by_key(|(s, _)| s.wrapping_sub(base));
            rx.dedup_by_key(|(s, _)| *s);
            let fb = TwccFeedback { base_seq: base, feedback_count: i as u8, status_count: count, received: rx };
            out.clear();
            h.results(&fb, &mut out);
            for r in &out {
                if r.arrival_us.is_some() {
                    prop_assert!(received.insert(r.sent.seq), "seq {} twice", r.sent.seq);
                }
            }
            let now = t0 + ms(2_000 + 100 * i as u64);
            bwe.on_results(now, &out);
            while bwe.poll_padding(now, 1_000_000).is_some() {}
            let est = bwe.estimate();
            prop_assert!((50_000..=20_000_000).contains(&est));
        }
    }
}
