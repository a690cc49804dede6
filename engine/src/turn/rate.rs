//! A token bucket: the bandwidth quota of one TURN allocation (in bytes), and any other
//! rate limit counted in units (data channel messages, relayed copies).

use std::time::Instant;

/// A token bucket: `rate` bytes per second with bursts up to `burst` bytes.
#[derive(Clone, Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    dropped: u64,
}

impl RateLimiter {
    /// `rate` 0 means unlimited.
    pub fn new(rate_bytes_per_sec: u64, burst_bytes: u64, now: Instant) -> Self {
        let burst = burst_bytes.max(rate_bytes_per_sec / 10).max(1500) as f64;
        Self {
            rate: rate_bytes_per_sec as f64,
            burst,
            tokens: burst,
            last: now,
            dropped: 0,
        }
    }

    /// Exactly `rate` units per second with bursts of `burst` (no minimum burst; `rate` 0
    /// means unlimited).
    pub fn exact(rate: u64, burst: u64, now: Instant) -> Self {
        Self {
            rate: rate as f64,
            burst: burst as f64,
            tokens: burst as f64,
            last: now,
            dropped: 0,
        }
    }

    /// True if `bytes` may pass now (and takes them from the bucket).
    pub fn allow(&mut self, now: Instant, bytes: usize) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        let need = bytes as f64;
        if self.tokens >= need {
            self.tokens -= need;
            true
        } else {
            self.dropped += 1;
            false
        }
    }

    /// Datagrams refused so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn limits_to_the_rate_after_the_burst() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(10_000, 2_000, t0);
        let passed = (0..10).filter(|_| r.allow(t0, 1_000)).count();
        assert_eq!(passed, 2);
        // One second later: 10,000 bytes of tokens, capped at the 2,000 burst.
        let t1 = t0 + Duration::from_secs(1);
        let passed = (0..10).filter(|_| r.allow(t1, 1_000)).count();
        assert_eq!(passed, 2);
        assert_eq!(r.dropped(), 16);
        // Over 10 s of 1 ms steps the average holds.
        let mut sent = 0;
        for ms in 1..=10_000u64 {
            if r.allow(t1 + Duration::from_millis(ms), 100) {
                sent += 100;
            }
        }
        assert!((99_000..=102_000).contains(&sent), "{sent}");
    }

    #[test]
    fn zero_is_unlimited() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(0, 0, t0);
        assert!((0..1000).all(|_| r.allow(t0, 65_000)));
    }
}
