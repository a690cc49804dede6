//! Keyframe request throttling toward a publisher (PLI rate limit).
//!
//! Subscribers ask for keyframes all the time (PLI/FIR from their decoders, new subscribers,
//! resumed forwarders, layer switches). Each request is worth a PLI to the publisher, but a
//! publisher flooded with PLIs produces nothing but keyframes. [`KeyframeRequester`] lets at
//! most one PLI out per window and never loses a request.

use std::time::{Duration, Instant};

use crate::MAX_INTERVAL;

/// Default minimum time between two PLIs toward one publisher track.
pub const DEFAULT_MIN_INTERVAL: Duration = Duration::from_millis(500);

/// Per published video track: collapses keyframe requests (subscriber PLI/FIR, new subscriber) into at most one PLI toward the publisher per `min_interval` (default 500 ms), never losing one: a request inside the window is deferred to the window's end.
#[derive(Debug)]
pub struct KeyframeRequester {
    min_interval: Duration,
    /// When the last PLI was released to the caller.
    last_sent: Option<Instant>,
    /// A request inside the window waits for `last_sent + min_interval`.
    deferred: bool,
    /// A PLI released by `request`/`handle_timeout`, not yet taken by `poll_request`.
    ready: bool,
    sent: u64,
    requested: u64,
}

impl Default for KeyframeRequester {
    fn default() -> Self {
        KeyframeRequester::new(DEFAULT_MIN_INTERVAL)
    }
}

impl KeyframeRequester {
    /// A requester allowing one PLI per `min_interval` (clamped to [`MAX_INTERVAL`]).
    pub fn new(min_interval: Duration) -> Self {
        KeyframeRequester {
            min_interval: min_interval.min(MAX_INTERVAL),
            last_sent: None,
            deferred: false,
            ready: false,
            sent: 0,
            requested: 0,
        }
    }

    /// Someone needs a keyframe: a PLI goes out now if the window allows, else at its end.
    pub fn request(&mut self, now: Instant) {
        self.requested += 1;
        if self.ready || self.deferred {
            return;
        }
        match self.window_end() {
            Some(end) if now < end => self.deferred = true,
            _ => self.release(now),
        }
    }

    /// The publisher delivered a keyframe: pending requests are satisfied (drop them).
    pub fn on_keyframe(&mut self, _now: Instant) {
        self.deferred = false;
        self.ready = false;
    }

    /// Releases a deferred request once its window has ended.
    pub fn handle_timeout(&mut self, now: Instant) {
        if !self.deferred {
            return;
        }
        if self.window_end().is_none_or(|end| now >= end) {
            self.deferred = false;
            self.release(now);
        }
    }

    /// When a deferred request becomes due; None when nothing waits.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.deferred {
            self.window_end()
        } else {
            None
        }
    }

    /// True once per PLI to send now.
    pub fn poll_request(&mut self) -> bool {
        if !self.ready {
            return false;
        }
        self.ready = false;
        self.sent += 1;
        true
    }

    /// PLIs handed out by [`KeyframeRequester::poll_request`] so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Requests received so far.
    pub fn requested(&self) -> u64 {
        self.requested
    }

    fn window_end(&self) -> Option<Instant> {
        self.last_sent.map(|last| last + self.min_interval)
    }

    fn release(&mut self, now: Instant) {
        self.ready = true;
        self.last_sent = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Advances virtual time to `until`, stepping through every deadline; returns PLI times.
    fn run(k: &mut KeyframeRequester, t0: Instant, until: Instant) -> Vec<Duration> {
        let mut plis = Vec::new();
        while let Some(deadline) = k.poll_timeout().filter(|&d| d <= until) {
            k.handle_timeout(deadline);
            if k.poll_request() {
                plis.push(deadline - t0);
            }
        }
        plis
    }

    #[test]
    fn single_request_is_sent_immediately() {
        let t0 = Instant::now();
        let mut k = KeyframeRequester::default();
        assert!(!k.poll_request());
        k.request(t0);
        assert!(k.poll_request());
        assert!(!k.poll_request(), "once");
        assert_eq!(k.poll_timeout(), None);
        assert_eq!((k.sent(), k.requested()), (1, 1));
    }

    #[test]
    fn request_inside_window_is_deferred_to_its_end() {
        let t0 = Instant::now();
        let mut k = KeyframeRequester::new(ms(500));
        k.request(t0);
        assert!(k.poll_request());
        k.request(t0 + ms(100));
        assert!(!k.poll_request());
        assert_eq!(k.poll_timeout(), Some(t0 + ms(500)));
        k.handle_timeout(t0 + ms(499));
        assert!(!k.poll_request(), "not before the window ends");
        k.handle_timeout(t0 + ms(500));
        assert!(k.poll_request());
        assert_eq!(k.poll_timeout(), None);
        assert_eq!(k.sent(), 2);
    }

    #[test]
    fn hundred_requests_in_a_second_give_at_most_three_plis() {
        let t0 = Instant::now();
        let mut k = KeyframeRequester::new(ms(500));
        let mut plis = Vec::new();
        for i in 0..100u64 {
            let now = t0 + ms(i * 10);
            plis.extend(run(&mut k, t0, now));
            k.request(now);
            if k.poll_request() {
                plis.push(now - t0);
            }
        }
        plis.extend(run(&mut k, t0, t0 + ms(1000)));
        assert_eq!(plis, vec![ms(0), ms(500), ms(1000)]);
        assert_eq!(k.requested(), 100);
        assert_eq!(k.sent(), 3);
    }

    #[test]
    fn keyframe_cancels_deferred_request() {
        let t0 = Instant::now();
        let mut k = KeyframeRequester::new(ms(500));
        k.request(t0);
        assert!(k.poll_request());
        k.request(t0 + ms(100));
        k.on_keyframe(t0 + ms(200));
        assert_eq!(k.poll_timeout(), None);
        k.handle_timeout(t0 + ms(600));
        assert!(!k.poll_request());
        // The window still applies to the next request.
        k.request(t0 + ms(300));
        assert_eq!(k.poll_timeout(), Some(t0 + ms(500)));
    }

    #[test]
    fn keyframe_cancels_unpolled_request() {
        let t0 = Instant::now();
        let mut k = KeyframeRequester::default();
        k.request(t0);
        k.on_keyframe(t0);
        assert!(!k.poll_request());
        assert_eq!(k.sent(), 0);
    }

    #[test]
    fn extreme_interval_does_not_panic() {
        let t0 = Instant::now();
        let mut k = KeyframeRequester::new(Duration::MAX);
        k.request(t0);
        assert!(k.poll_request());
        k.request(t0);
        assert_eq!(k.poll_timeout(), Some(t0 + crate::MAX_INTERVAL));
    }

    #[test]
    fn late_handle_timeout_releases_at_call_time() {
        let t0 = Instant::now();
        let mut k = KeyframeRequester::new(ms(500));
        k.request(t0);
        assert!(k.poll_request());
        k.request(t0 + ms(10));
        k.handle_timeout(t0 + ms(800));
        assert!(k.poll_request());
        // The next window counts from the actual release.
        k.request(t0 + ms(900));
        assert_eq!(k.poll_timeout(), Some(t0 + ms(1300)));
    }
}
