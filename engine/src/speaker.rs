//! Active speaker detection from RFC 6464 audio levels: a per-track [`AudioLevelMeter`] turns
//! packet levels into a smoothed loudness per interval, and a per-meeting
//! [`ActiveSpeakerDetector`] orders participants by it.
//!
//! Hot path: [`AudioLevelMeter::observe`] runs for every audio packet; it only updates
//! counters (the smoothing ring is allocated once in [`AudioLevelMeter::new`]).
//!
//! Loudness of an interval: packets whose level (dBov below full scale) is at or below
//! [`SpeakerConfig::active_level`] are *active*; the interval is *speaking* if active packets
//! cover at least [`SpeakerConfig::min_percentile`] % of it; its loudness is then the mean
//! linear amplitude `10^(-level/20)` of the active packets (1.0 = 0 dBov), else 0. The meter
//! reports the mean of the last [`SpeakerConfig::smooth_intervals`] interval values. The V
//! (voice activity) bit is not used: senders set it inconsistently.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

use crate::MAX_INTERVAL;
use crate::media::AudioLevel;

/// Tuning shared by meters and the detector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpeakerConfig {
    /// Levels (dBov below full scale) at or below this count as active (default 35).
    pub active_level: u8,
    /// Percentage of an interval that active packets must cover to count as speaking (default 40).
    pub min_percentile: u8,
    /// Length of one observation interval and of the detector's tick (default 400 ms).
    pub observe_interval: Duration,
    /// Intervals averaged into the reported loudness (default 2; 0 is treated as 1).
    pub smooth_intervals: u8,
}

impl Default for SpeakerConfig {
    fn default() -> Self {
        SpeakerConfig {
            active_level: 35,
            min_percentile: 40,
            observe_interval: Duration::from_millis(400),
            smooth_intervals: 2,
        }
    }
}

/// Per audio track, fed every packet's level; yields a smoothed loudness per interval.
#[derive(Debug)]
pub struct AudioLevelMeter {
    config: SpeakerConfig,
    interval_start: Instant,
    /// Milliseconds of audio covered by active packets in the current interval.
    active_ms: u32,
    active_packets: u32,
    linear_sum: f32,
    /// The last `smooth_intervals` interval values (ring, starts silent).
    history: Vec<f32>,
    history_next: usize,
    loudness: f32,
}

impl AudioLevelMeter {
    /// A silent meter whose first interval starts at `now`. An `observe_interval` above
    /// [`MAX_INTERVAL`] is clamped.
    pub fn new(mut config: SpeakerConfig, now: Instant) -> Self {
        config.observe_interval = config.observe_interval.min(MAX_INTERVAL);
        AudioLevelMeter {
            config,
            interval_start: now,
            active_ms: 0,
            active_packets: 0,
            linear_sum: 0.0,
            history: vec![0.0; usize::from(config.smooth_intervals.max(1))],
            history_next: 0,
            loudness: 0.0,
        }
    }

    /// Counts one packet of `duration_ms` of audio (20 for typical Opus) at `level`.
    pub fn observe(&mut self, _now: Instant, level: AudioLevel, duration_ms: u32) {
        if level.level > self.config.active_level {
            return;
        }
        self.active_ms = self.active_ms.saturating_add(duration_ms);
        self.active_packets = self.active_packets.saturating_add(1);
        self.linear_sum += level_to_linear(level.level);
    }

    /// Called when an interval ends (the owner calls it at least every observe_interval): Some(loudness in 0..=1) for the interval just ended, 0.0 = silent. Smoothed over smooth_intervals.
    /// None if the interval has not ended yet. A late call closes one longer interval.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<f32> {
        if now < self.poll_timeout() {
            return None;
        }
        let elapsed = now.saturating_duration_since(self.interval_start);
        let elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        let needed = elapsed_ms.saturating_mul(u64::from(self.config.min_percentile));
        let speaking = self.active_packets > 0 && u64::from(self.active_ms) * 100 >= needed;
        let value = if speaking {
            (self.linear_sum / self.active_packets as f32).clamp(0.0, 1.0)
        } else {
            0.0
        };
        // `history_next` stays below `history.len()` (at least 1): it only advances modulo it.
        self.history[self.history_next] = value;
        self.history_next = (self.history_next + 1) % self.history.len();
        self.loudness = self.history.iter().sum::<f32>() / self.history.len() as f32;
        self.interval_start = now;
        self.active_ms = 0;
        self.active_packets = 0;
        self.linear_sum = 0.0;
        Some(self.loudness)
    }

    /// When the current interval ends.
    pub fn poll_timeout(&self) -> Instant {
        self.interval_start + self.config.observe_interval
    }

    /// The smoothed loudness reported by the last [`AudioLevelMeter::handle_timeout`].
    pub fn loudness(&self) -> f32 {
        self.loudness
    }
}

/// Linear amplitude of a level in dBov below full scale: `10^(-level/20)`.
fn level_to_linear(level: u8) -> f32 {
    10f32.powf(-f32::from(level) / 20.0)
}

/// Per meeting: collects each participant's loudness and decides the ordered speaker list.
///
/// Every tick (each `observe_interval`) the speakers are the participants with loudness > 0
/// updated within the last two intervals, loudest first. For ordering, loudness is rounded to
/// 0.001 so tiny changes do not reorder; ties go by key. A list is emitted only when the set or
/// order of speakers changed.
#[derive(Debug)]
pub struct ActiveSpeakerDetector<K: Clone + Eq + Hash + Ord> {
    config: SpeakerConfig,
    next_tick: Instant,
    levels: HashMap<K, (f32, Instant)>,
    /// Keys of the last emitted list, in order.
    emitted: Vec<K>,
    pending: Option<Vec<(K, f32)>>,
}

impl<K: Clone + Eq + Hash + Ord> ActiveSpeakerDetector<K> {
    /// A detector with no participants; the first tick is one interval after `now`. An
    /// `observe_interval` above [`MAX_INTERVAL`] is clamped.
    pub fn new(mut config: SpeakerConfig, now: Instant) -> Self {
        config.observe_interval = config.observe_interval.min(MAX_INTERVAL);
        ActiveSpeakerDetector {
            config,
            next_tick: now + config.observe_interval,
            levels: HashMap::new(),
            emitted: Vec::new(),
            pending: None,
        }
    }

    /// Latest loudness of a participant (values outside 0..=1 are clamped, NaN is silence).
    pub fn update(&mut self, key: K, loudness: f32, now: Instant) {
        let loudness = if loudness.is_nan() {
            0.0
        } else {
            loudness.clamp(0.0, 1.0)
        };
        self.levels.insert(key, (loudness, now));
    }

    /// Forgets a participant; it leaves the list at the next tick.
    pub fn remove(&mut self, key: &K) {
        self.levels.remove(key);
    }

    /// On a tick, recomputes the speaker list and queues it if it changed.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now < self.next_tick {
            return;
        }
        let following = self.next_tick + self.config.observe_interval;
        self.next_tick = if following > now {
            following
        } else {
            now + self.config.observe_interval
        };

        let stale_after = self.config.observe_interval * 2;
        let mut speakers: Vec<(K, f32)> = self
            .levels
            .iter()
            .filter(|&(_, &(loudness, at))| {
                loudness > 0.0 && now.saturating_duration_since(at) <= stale_after
            })
            .map(|(key, &(loudness, _))| (key.clone(), loudness))
            .collect();
        speakers
            .sort_by(|(ka, la), (kb, lb)| rounded(*lb).cmp(&rounded(*la)).then_with(|| ka.cmp(kb)));
        let same = speakers.len() == self.emitted.len()
            && speakers
                .iter()
                .zip(&self.emitted)
                .all(|((key, _), emitted)| key == emitted);
        if !same {
            self.emitted = speakers.iter().map(|(key, _)| key.clone()).collect();
            self.pending = Some(speakers);
        }
    }

    /// Next update tick (every observe_interval).
    pub fn poll_timeout(&self) -> Instant {
        self.next_tick
    }

    /// Some(list) when the set/order of speakers changed since the last emitted list (loudest first, only loudness > 0, stale entries older than 2 intervals count as silent).
    pub fn poll_speakers(&mut self) -> Option<Vec<(K, f32)>> {
        self.pending.take()
    }
}

/// Loudness in thousandths, for ordering.
fn rounded(loudness: f32) -> u32 {
    (loudness * 1000.0).round() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn level(level: u8) -> AudioLevel {
        AudioLevel { voice: true, level }
    }

    /// A meeting in virtual time: participants send one packet per 20 ms with a level chosen
    /// by `script(participant, time since start)`; returns every emitted list with its time.
    fn simulate(
        participants: &[&'static str],
        until: Duration,
        script: impl Fn(&str, Duration) -> Option<u8>,
        mut between: impl FnMut(Duration, &mut ActiveSpeakerDetector<&'static str>),
    ) -> Vec<(Duration, Vec<&'static str>)> {
        let config = SpeakerConfig::default();
        let t0 = Instant::now();
        let mut meters: Vec<AudioLevelMeter> = participants
            .iter()
            .map(|_| AudioLevelMeter::new(config, t0))
            .collect();
        let mut detector = ActiveSpeakerDetector::new(config, t0);
        let mut lists = Vec::new();
        let mut t = Duration::ZERO;
        while t <= until {
            let now = t0 + t;
            for (meter, &name) in meters.iter_mut().zip(participants) {
                if let Some(l) = script(name, t) {
                    meter.observe(now, level(l), 20);
                }
                if let Some(loudness) = meter.handle_timeout(now) {
                    detector.update(name, loudness, now);
                }
            }
            between(t, &mut detector);
            detector.handle_timeout(now);
            if let Some(list) = detector.poll_speakers() {
                lists.push((t, list.into_iter().map(|(k, _)| k).collect()));
            }
            t += ms(20);
        }
        lists
    }

    #[test]
    fn steady_talker_becomes_speaker_within_two_intervals() {
        let lists = simulate(&["a"], ms(2000), |_, _| Some(20), |_, _| {});
        assert_eq!(lists, vec![(ms(400), vec!["a"])]);
    }

    #[test]
    fn silence_clears_the_speaker() {
        let lists = simulate(
            &["a"],
            ms(4000),
            |_, t| Some(if t < ms(2000) { 20 } else { 127 }),
            |_, _| {},
        );
        assert_eq!(lists.len(), 2);
        assert_eq!(lists[0].1, vec!["a"]);
        let (cleared_at, ref list) = lists[1];
        assert!(list.is_empty());
        assert!(
            cleared_at > ms(2000) && cleared_at <= ms(3000),
            "cleared at {cleared_at:?}"
        );
    }

    #[test]
    fn two_speakers_ordered_by_loudness() {
        let lists = simulate(
            &["quiet", "loud"],
            ms(2000),
            |name, _| Some(if name == "loud" { 10 } else { 30 }),
            |_, _| {},
        );
        assert_eq!(lists, vec![(ms(400), vec!["loud", "quiet"])]);
        // Roles swap: the order follows.
        let lists = simulate(
            &["x", "y"],
            ms(3000),
            |name, t| {
                Some(if (name == "x") == (t < ms(1500)) {
                    10
                } else {
                    30
                })
            },
            |_, _| {},
        );
        assert_eq!(lists.first().map(|l| l.1.clone()), Some(vec!["x", "y"]));
        assert_eq!(lists.last().map(|l| l.1.clone()), Some(vec!["y", "x"]));
    }

    #[test]
    fn sporadic_cough_is_not_a_speaker() {
        // Two loud packets per 400 ms interval, silence otherwise.
        let lists = simulate(
            &["a"],
            ms(4000),
            |_, t| Some(if t.as_millis() % 400 < 40 { 0 } else { 127 }),
            |_, _| {},
        );
        assert!(lists.is_empty(), "{lists:?}");
    }

    #[test]
    fn removed_participant_leaves_the_next_list() {
        let lists = simulate(
            &["a", "b"],
            ms(2000),
            |name, _| Some(if name == "a" { 10 } else { 20 }),
            |t, detector| {
                if t >= ms(1000) {
                    detector.remove(&"a");
                }
            },
        );
        assert_eq!(
            lists,
            vec![(ms(400), vec!["a", "b"]), (ms(1200), vec!["b"])]
        );
    }

    #[test]
    fn stale_participant_counts_as_silent() {
        let config = SpeakerConfig::default();
        let t0 = Instant::now();
        let mut detector = ActiveSpeakerDetector::new(config, t0);
        detector.update("a", 0.1, t0);
        detector.handle_timeout(t0 + ms(400));
        assert_eq!(detector.poll_speakers(), Some(vec![("a", 0.1)]));
        detector.handle_timeout(t0 + ms(800));
        assert_eq!(detector.poll_speakers(), None, "no change, no list");
        detector.handle_timeout(t0 + ms(1200));
        assert_eq!(
            detector.poll_speakers(),
            Some(vec![]),
            "older than two intervals"
        );
        assert_eq!(detector.poll_timeout(), t0 + ms(1600));
    }

    #[test]
    fn tiny_changes_do_not_reorder() {
        let t0 = Instant::now();
        let mut detector = ActiveSpeakerDetector::new(SpeakerConfig::default(), t0);
        detector.update(2, 0.1001, t0);
        detector.update(1, 0.1, t0);
        detector.update(3, f32::NAN, t0);
        detector.handle_timeout(t0 + ms(400));
        let list = detector.poll_speakers().unwrap();
        assert_eq!(list.iter().map(|(k, _)| *k).collect::<Vec<_>>(), vec![1, 2]);
        detector.update(1, 0.0999, t0 + ms(400));
        detector.update(2, 0.1002, t0 + ms(400));
        detector.handle_timeout(t0 + ms(800));
        assert_eq!(detector.poll_speakers(), None);
    }

    #[test]
    fn meter_values() {
        let t0 = Instant::now();
        let mut meter = AudioLevelMeter::new(SpeakerConfig::default(), t0);
        assert_eq!(meter.poll_timeout(), t0 + ms(400));
        for i in 0..20 {
            meter.observe(t0 + ms(20 * i), level(20), 20);
        }
        assert_eq!(meter.handle_timeout(t0 + ms(399)), None);
        let first = meter.handle_timeout(t0 + ms(400)).unwrap();
        assert!(
            (first - 0.05).abs() < 1e-6,
            "half of 0.1 after one interval: {first}"
        );
        for i in 0..20 {
            meter.observe(t0 + ms(400 + 20 * i), level(0), 20);
        }
        let second = meter.handle_timeout(t0 + ms(800)).unwrap();
        assert!((second - 0.55).abs() < 1e-6, "{second}");
        assert_eq!(meter.loudness(), second);
        // Exactly the threshold: 8 of 20 packets (40 %) active, at level 35 (active).
        for i in 0..8 {
            meter.observe(t0 + ms(800 + 20 * i), level(35), 20);
        }
        for i in 8..20 {
            meter.observe(t0 + ms(800 + 20 * i), level(36), 20);
        }
        let third = meter.handle_timeout(t0 + ms(1200)).unwrap();
        let expected = (1.0 + level_to_linear(35)) / 2.0;
        assert!((third - expected).abs() < 1e-6, "{third} vs {expected}");
        // 7 of 20: not speaking.
        for i in 0..7 {
            meter.observe(t0 + ms(1200 + 20 * i), level(0), 20);
        }
        let fourth = meter.handle_timeout(t0 + ms(1600)).unwrap();
        assert!(
            (fourth - level_to_linear(35) / 2.0).abs() < 1e-6,
            "{fourth}"
        );
    }

    #[test]
    fn extreme_config_does_not_panic() {
        let t0 = Instant::now();
        let config = SpeakerConfig {
            active_level: 127,
            min_percentile: 255,
            observe_interval: Duration::MAX,
            smooth_intervals: 0,
        };
        let mut meter = AudioLevelMeter::new(config, t0);
        meter.observe(t0, level(0), u32::MAX);
        meter.observe(t0, level(0), u32::MAX);
        let end = meter.poll_timeout();
        assert!(meter.handle_timeout(end).is_some());
        let mut detector = ActiveSpeakerDetector::new(config, t0);
        detector.update(1u8, f32::INFINITY, t0);
        let tick = detector.poll_timeout();
        detector.handle_timeout(tick);
        assert_eq!(detector.poll_speakers(), Some(vec![(1, 1.0)]));
    }

    #[test]
    fn linear_levels() {
        assert_eq!(level_to_linear(0), 1.0);
        assert!((level_to_linear(20) - 0.1).abs() < 1e-6);
        assert!((level_to_linear(40) - 0.01).abs() < 1e-7);
        assert!(level_to_linear(127) < 1e-6);
    }
}
