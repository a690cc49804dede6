//! Per-subscription RTP header rewriting: one [`Forwarder`] per (subscriber, track).
//!
//! Hot path: [`Forwarder::forward`] runs for every packet to every subscriber. It allocates
//! nothing, logs nothing and keeps all state in fixed-size fields.
//!
//! # Segments
//!
//! The subscriber sees one continuous stream under [`Forwarder::out_ssrc`], whatever happens
//! upstream. The forwarder cuts its input into *segments*: runs of packets from one source
//! SSRC forwarded with constant offsets
//!
//! ```text
//! out_seq = src_seq + seq_offset   (mod 2^16)
//! out_ts  = src_ts  + ts_offset    (mod 2^32)
//! ```
//!
//! A segment starts on the first packet ever, on a source switch (a packet from a new SSRC:
//! publisher restart today, simulcast layer switch later) and on the first packet after
//! [`Forwarder::resume`]. Its offsets make the first packet continue the output:
//! `out_seq = last_out_seq + 1` and `out_ts = last_out_ts + max(1, elapsed × clock_rate)`, where
//! `elapsed` is the arrival-time distance to the last forwarded packet. So there is no
//! sequence gap and timestamps advance like wall time across mutes, restarts and switches.
//!
//! Video segments can only start on a keyframe; until one arrives, packets that would start
//! a segment are dropped with [`Drop::WaitingForKeyframe`] and [`Forwarder::needs_keyframe`]
//! is true. During a source switch the old source keeps flowing until the new source's
//! keyframe arrives ("make before break"), which is what simulcast layer switching needs.
//!
//! The first segment keeps the source's own sequence numbers and timestamps (zero offsets)
//! unless [`Forwarder::with_initial`] gives a base (the caller may pass random values).
//!
//! Within a segment, reordered packets map with the same offsets; packets from before the
//! segment start, from a source switched away from less than [`RETIRED_HOLD`] ago, or more than
//! [`DUP_WINDOW`] sequence numbers behind the newest forwarded one are [`Drop::TooOld`];
//! packets whose outgoing number was already forwarded are [`Drop::Duplicate`].
//!
//! # Skipped packets
//!
//! The caller may leave packets of the current segment out ([`Forwarder::skip`]: a VP9
//! spatial layer this subscriber does not get). The packets after them are numbered on, so
//! the subscriber sees no gap and has nothing to ask again: a skipped packet older than one
//! already forwarded cannot be hidden that way (it leaves a hole, as loss would). The
//! forwarder remembers the last [`SKIP_RUNS`] runs of skipped positions, so late packets and
//! retransmissions in between still map to the right outgoing numbers; older ones are
//! [`Drop::TooOld`].

use std::time::{Duration, Instant};

use crate::media::{MediaKind, MediaPacket, Ssrc};
use crate::seq::seq_diff;

/// Width of the duplicate-detection window, in outgoing sequence numbers.
pub const DUP_WINDOW: usize = 512;

/// How long packets of a source that was switched away from are refused as [`Drop::TooOld`]
/// (so a late packet cannot switch back). After that the SSRC may start a segment again.
pub const RETIRED_HOLD: Duration = Duration::from_secs(2);

/// A packet this many sequence numbers behind the newest seen of its source is not late: the
/// source restarted its numbering (an encoder restart on the same SSRC). Two consecutive
/// such packets start a new segment instead of being dropped as too old.
pub const RESTART_GAP: i64 = 2 * DUP_WINDOW as i64;

/// How many runs of skipped packets a segment remembers (about one per picture while a
/// subscriber gets fewer spatial layers than sent: two seconds at 30 pictures a second).
pub const SKIP_RUNS: usize = 64;

/// How many retired sources are remembered.
const RETIRED_SLOTS: usize = 4;

const DUP_WORDS: usize = DUP_WINDOW / 64;

/// Rewrites source packets of one track into the outgoing stream of one subscription.
#[derive(Debug)]
pub struct Forwarder {
    out_ssrc: Ssrc,
    kind: MediaKind,
    clock_rate: u32,
    /// Base of the first segment; `None` keeps the source's numbers.
    initial: Option<(u16, u32)>,
    paused: bool,
    /// Set by `resume`: the next forwarded packet starts a new segment even from the same source.
    restart: bool,
    /// The segment packets are currently mapped with (survives pause until the next start).
    segment: Option<Segment>,
    /// A new source seen while the current segment still runs (video waits for its keyframe).
    pending_source: Option<Ssrc>,
    /// Highest outgoing packet so far (any segment).
    last: Option<LastSent>,
    /// Outgoing sequence numbers forwarded recently, relative to `last.seq`.
    sent: SeqWindow,
    /// Sources switched away from, with the arrival time of the switch.
    retired: [Option<(Ssrc, Instant)>; RETIRED_SLOTS],
    segments: u64,
    /// A packet far behind its source's numbering, waiting for a second one that follows it
    /// (then the source restarted): (source, its sequence number).
    restart_probe: Option<(Ssrc, u16)>,
    /// Packets of the current segment left out by [`Forwarder::skip`] (made on the first
    /// skip, then reused: nothing is allocated per packet).
    skips: Option<Box<SkipLog>>,
}

/// Outgoing header of a forwarded packet. Payload type and payload are the caller's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForwardedHeader {
    /// The subscription's SSRC.
    pub ssrc: Ssrc,
    /// Outgoing sequence number.
    pub seq: u16,
    /// Outgoing RTP timestamp.
    pub timestamp: u32,
    /// Marker bit, passed through.
    pub marker: bool,
}

/// Why a packet was not forwarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drop {
    /// The forwarder is paused.
    Paused,
    /// Video needs a keyframe to start a segment; this packet is not one.
    WaitingForKeyframe,
    /// The packet predates the current segment, belongs to a source switched away from, or
    /// is too far behind the newest forwarded packet to check for duplicates.
    TooOld,
    /// This sequence number was already forwarded.
    Duplicate,
}

impl Forwarder {
    /// out_ssrc: the SSRC this subscription sends with. clock_rate from the codec.
    ///
    /// The first segment keeps the source's sequence numbers and timestamps.
    pub fn new(out_ssrc: Ssrc, kind: MediaKind, clock_rate: u32) -> Self {
        Forwarder {
            out_ssrc,
            kind,
            clock_rate,
            initial: None,
            paused: false,
            restart: false,
            segment: None,
            pending_source: None,
            last: None,
            sent: SeqWindow::default(),
            retired: [None; RETIRED_SLOTS],
            segments: 0,
            restart_probe: None,
            skips: None,
        }
    }

    /// Like [`Forwarder::new`], but the first forwarded packet goes out with sequence number
    /// `seq` and timestamp `ts` (callers may pass random values; tests pass fixed ones).
    pub fn with_initial(
        out_ssrc: Ssrc,
        kind: MediaKind,
        clock_rate: u32,
        seq: u16,
        ts: u32,
    ) -> Self {
        Forwarder {
            initial: Some((seq, ts)),
            ..Forwarder::new(out_ssrc, kind, clock_rate)
        }
    }

    /// Decides whether `pkt` goes out to this subscriber and with which header.
    pub fn forward(&mut self, pkt: &MediaPacket) -> Result<ForwardedHeader, Drop> {
        let pos = match &mut self.segment {
            Some(segment) if segment.source == pkt.ssrc => Some(segment.observe(pkt.seq)),
            _ => None,
        };
        if self.paused {
            return Err(Drop::Paused);
        }
        match (pos, &self.segment) {
            (Some(pos), Some(segment)) if !self.restart && segment.seen_pos - pos > RESTART_GAP => {
                // Far behind: a restarted numbering if the next packet follows this one.
                let follows = self
                    .restart_probe
                    .is_some_and(|(src, seq)| src == pkt.ssrc && seq_diff(pkt.seq, seq) == 1);
                if follows {
                    self.restart_probe = None;
                    // The new numbering starts a new segment (continuous on the way out).
                    self.segment = None;
                    return self.begin_segment(pkt);
                }
                self.restart_probe = Some((pkt.ssrc, pkt.seq));
                Err(Drop::TooOld)
            }
            (Some(pos), Some(segment)) if !self.restart => {
                self.restart_probe = None;
                if pos < 0 {
                    return Err(Drop::TooOld);
                }
                let skipped = match &self.skips {
                    Some(log) => log.skipped_before(pos).ok_or(Drop::TooOld)?,
                    None => 0,
                };
                let header = segment.map(self.out_ssrc, pkt, skipped);
                self.sent.check(header.seq)?;
                if let Some(segment) = &mut self.segment {
                    segment.last_pos = segment.last_pos.max(pos);
                }
                self.record(header.seq, header.timestamp, pkt.arrival);
                Ok(header)
            }
            (Some(pos), Some(segment)) => {
                // First packets after resume: only something newer than what was seen before
                // the resume may start the new segment.
                if pos <= segment.floor {
                    return Err(Drop::TooOld);
                }
                self.begin_segment(pkt)
            }
            _ => {
                if self.is_retired(pkt.ssrc, pkt.arrival) {
                    return Err(Drop::TooOld);
                }
                self.begin_segment(pkt)
            }
        }
    }

    /// A retransmission (from the retransmission cache) of a packet of the current segment:
    /// same mapping as the original, no state change. Err if it predates the current segment.
    pub fn forward_retransmission(&self, pkt: &MediaPacket) -> Result<ForwardedHeader, Drop> {
        let Some(segment) = &self.segment else {
            return Err(Drop::TooOld);
        };
        let pos = segment.pos(pkt.seq);
        if segment.source != pkt.ssrc || pos < 0 {
            return Err(Drop::TooOld);
        }
        let skipped = match &self.skips {
            Some(log) => log.skipped_before(pos).ok_or(Drop::TooOld)?,
            None => 0,
        };
        Ok(segment.map(self.out_ssrc, pkt, skipped))
    }

    /// Leaves `pkt`, a packet of the current segment's source, out of the subscriber's
    /// stream: the packets after it are numbered on as if it never existed (see the module
    /// docs). Returns false when it cannot be hidden: a newer packet was already forwarded
    /// (the subscriber sees a hole), or no segment of its source runs.
    pub fn skip(&mut self, pkt: &MediaPacket) -> bool {
        let Some(segment) = self.segment.as_mut().filter(|s| s.source == pkt.ssrc) else {
            return false;
        };
        let pos = segment.observe(pkt.seq);
        if self.paused || self.restart || pos <= segment.last_pos {
            return false;
        }
        self.skips
            .get_or_insert_with(|| Box::new(SkipLog::default()))
            .skip(pos)
    }

    /// Stop forwarding (publisher muted / subscription paused).
    pub fn pause(&mut self) {
        self.paused = true;
    }

    /// Resume; the next forwarded packet (a keyframe for video) starts a new segment.
    /// Packets of the current source not newer than the newest one seen before this call are
    /// refused as [`Drop::TooOld`]. Does nothing if not paused.
    pub fn resume(&mut self) {
        if !self.paused {
            return;
        }
        self.paused = false;
        self.restart = true;
        if let Some(segment) = &mut self.segment {
            segment.floor = segment.seen_pos;
        }
    }

    /// True while paused.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// True while video is waiting for a keyframe (new subscription, after resume or a source switch):
    /// the caller should request one from the publisher. Always false for audio and while paused.
    pub fn needs_keyframe(&self) -> bool {
        self.kind == MediaKind::Video
            && !self.paused
            && (self.segment.is_none() || self.restart || self.pending_source.is_some())
    }

    /// Maps a sequence number the subscriber NACKed (outgoing numbering) back to (source ssrc, source seq),
    /// if it belongs to the current segment and was forwarded (not beyond the last sent).
    pub fn source_of(&self, out_seq: u16) -> Option<(Ssrc, u16)> {
        let segment = self.segment.as_ref()?;
        let last = self.last.as_ref()?;
        let behind = seq_diff(out_seq, last.seq);
        if behind > 0 {
            return None;
        }
        let pos = match &self.skips {
            None => segment.last_pos + i64::from(behind),
            Some(log) => {
                // Outgoing positions count forwarded packets only.
                let last_out =
                    segment.last_pos - i64::try_from(log.skipped_before(segment.last_pos)?).ok()?;
                log.source_position(last_out + i64::from(behind))?
            }
        };
        if pos < 0 {
            return None;
        }
        let src = segment.start_seq.wrapping_add(pos as u16);
        Some((segment.source, src))
    }

    /// The SSRC this subscription sends with.
    pub fn out_ssrc(&self) -> Ssrc {
        self.out_ssrc
    }

    /// Highest outgoing (seq, timestamp) and when it was sent, for sender reports.
    /// "Sent" is the arrival time of the source packet: the engine forwards without delay.
    pub fn last_sent(&self) -> Option<(u16, u32, Instant)> {
        self.last.map(|last| (last.seq, last.ts, last.arrival))
    }

    /// Translates a source RTP timestamp to the outgoing timeline (for SR mapping), current segment only.
    pub fn map_timestamp(&self, source_ssrc: Ssrc, source_ts: u32) -> Option<u32> {
        let segment = self.segment.as_ref().filter(|s| s.source == source_ssrc)?;
        Some(source_ts.wrapping_add(segment.ts_offset))
    }

    /// The source SSRC of the current segment, if any.
    pub fn current_source(&self) -> Option<Ssrc> {
        self.segment.as_ref().map(|s| s.source)
    }

    /// Number of segments started so far (a new one per start, switch and resume).
    pub fn segments(&self) -> u64 {
        self.segments
    }

    /// Starts a segment at `pkt` if it may start one (video: only a keyframe).
    fn begin_segment(&mut self, pkt: &MediaPacket) -> Result<ForwardedHeader, Drop> {
        let current = self.segment.as_ref().map(|s| s.source);
        if self.kind == MediaKind::Video && !pkt.keyframe {
            if current != Some(pkt.ssrc) {
                self.pending_source = Some(pkt.ssrc);
            }
            return Err(Drop::WaitingForKeyframe);
        }
        let (out_seq, out_ts) = match self.last {
            None => self.initial.unwrap_or((pkt.seq, pkt.timestamp)),
            Some(last) => {
                let elapsed = pkt.arrival.saturating_duration_since(last.arrival);
                let ticks = duration_to_ticks(elapsed, self.clock_rate).max(1);
                (last.seq.wrapping_add(1), last.ts.wrapping_add(ticks))
            }
        };
        if let Some(old) = current.filter(|&old| old != pkt.ssrc) {
            self.retire(old, pkt.arrival);
        }
        for slot in &mut self.retired {
            if slot.is_some_and(|(ssrc, _)| ssrc == pkt.ssrc) {
                *slot = None;
            }
        }
        self.segment = Some(Segment {
            source: pkt.ssrc,
            seq_offset: out_seq.wrapping_sub(pkt.seq),
            ts_offset: out_ts.wrapping_sub(pkt.timestamp),
            start_seq: pkt.seq,
            seen_pos: 0,
            last_pos: 0,
            floor: -1,
        });
        if let Some(log) = &mut self.skips {
            log.clear();
        }
        self.restart = false;
        self.pending_source = None;
        self.segments += 1;
        self.record(out_seq, out_ts, pkt.arrival);
        Ok(ForwardedHeader {
            ssrc: self.out_ssrc,
            seq: out_seq,
            timestamp: out_ts,
            marker: pkt.marker,
        })
    }

    /// Marks an outgoing packet as sent and moves `last` if it is the newest.
    fn record(&mut self, seq: u16, ts: u32, arrival: Instant) {
        self.sent.mark(seq);
        let newer = self.last.is_none_or(|last| seq_diff(seq, last.seq) > 0);
        if newer {
            self.last = Some(LastSent { seq, ts, arrival });
        }
    }

    fn retire(&mut self, ssrc: Ssrc, at: Instant) {
        // Reuse a free slot, else the oldest retirement.
        // `None < Some(_)`: a free slot sorts first.
        if let Some(slot) = self
            .retired
            .iter_mut()
            .min_by_key(|slot| slot.map(|(_, since)| since))
        {
            *slot = Some((ssrc, at));
        }
    }

    fn is_retired(&self, ssrc: Ssrc, now: Instant) -> bool {
        self.retired.iter().flatten().any(|&(retired, since)| {
            retired == ssrc && now.saturating_duration_since(since) < RETIRED_HOLD
        })
    }
}

/// Offsets and extent of the current segment. Positions are source sequence numbers
/// unwrapped relative to the segment's first packet (position 0).
#[derive(Clone, Copy, Debug)]
struct Segment {
    source: Ssrc,
    seq_offset: u16,
    ts_offset: u32,
    start_seq: u16,
    /// Highest position seen from the source, forwarded or not (the unwrapping reference).
    seen_pos: i64,
    /// Highest position forwarded.
    last_pos: i64,
    /// After a resume: positions at or below this may not start the next segment.
    floor: i64,
}

impl Segment {
    /// Position of `seq` relative to the segment start (negative: before the start).
    fn pos(&self, seq: u16) -> i64 {
        let reference = self.start_seq.wrapping_add(self.seen_pos as u16);
        self.seen_pos + i64::from(seq_diff(seq, reference))
    }

    /// Position of `seq`, moving the unwrapping reference forward if it is newer.
    fn observe(&mut self, seq: u16) -> i64 {
        let pos = self.pos(seq);
        self.seen_pos = self.seen_pos.max(pos);
        pos
    }

    /// `skipped`: how many packets of the segment before this one were skipped.
    fn map(&self, out_ssrc: Ssrc, pkt: &MediaPacket, skipped: u64) -> ForwardedHeader {
        ForwardedHeader {
            ssrc: out_ssrc,
            seq: pkt
                .seq
                .wrapping_add(self.seq_offset)
                .wrapping_sub(skipped as u16),
            timestamp: pkt.timestamp.wrapping_add(self.ts_offset),
            marker: pkt.marker,
        }
    }
}

/// One run of consecutive skipped positions, and how many were skipped up to its end.
#[derive(Clone, Copy, Debug)]
struct SkipRun {
    first: i64,
    last: i64,
    total: u64,
}

/// The runs of positions skipped in the current segment, oldest first, at most
/// [`SKIP_RUNS`]. Runs that fell out of the log leave `known_after`: positions at or below
/// it cannot be mapped any more; `base` is how many were skipped up to there.
#[derive(Debug)]
struct SkipLog {
    runs: std::collections::VecDeque<SkipRun>,
    known_after: i64,
    base: u64,
}

impl Default for SkipLog {
    fn default() -> Self {
        SkipLog {
            runs: std::collections::VecDeque::with_capacity(SKIP_RUNS),
            known_after: -1,
            base: 0,
        }
    }
}

impl SkipLog {
    fn clear(&mut self) {
        self.runs.clear();
        self.known_after = -1;
        self.base = 0;
    }

    /// How many positions before `pos` were skipped; None if `pos` itself was, or is too
    /// old to know.
    fn skipped_before(&self, pos: i64) -> Option<u64> {
        for run in self.runs.iter().rev() {
            if pos > run.last {
                return Some(run.total);
            }
            if pos >= run.first {
                return None;
            }
        }
        (pos > self.known_after).then_some(self.base)
    }

    /// The source position forwarded at outgoing position `out` (positions counted from
    /// the segment start, skipped ones left out of `out`).
    fn source_position(&self, out: i64) -> Option<i64> {
        for run in self.runs.iter().rev() {
            let pos = out + i64::try_from(run.total).ok()?;
            if pos > run.last {
                return Some(pos);
            }
        }
        let pos = out + i64::try_from(self.base).ok()?;
        (pos > self.known_after).then_some(pos)
    }

    /// Records `pos` as skipped; the caller made sure nothing after it was forwarded (so
    /// every run after it may still be renumbered). False when it is too old to record.
    fn skip(&mut self, pos: i64) -> bool {
        if pos <= self.known_after {
            return false;
        }
        // The first run that ends at or after `pos`; a position inside it was skipped already.
        let mut at = self.runs.partition_point(|r| r.last < pos);
        if self.runs.get(at).is_some_and(|r| r.first <= pos) {
            return true;
        }
        let joins_before = at
            .checked_sub(1)
            .and_then(|i| self.runs.get(i))
            .is_some_and(|r| r.last + 1 == pos);
        let joins_after = self.runs.get(at).is_some_and(|r| r.first == pos + 1);
        if !joins_before && !joins_after && self.runs.len() == SKIP_RUNS {
            // A new run is needed and the log is full: the oldest run goes, unless `pos`
            // lies before it (then it is too old to record).
            if at == 0 {
                return false;
            }
            if let Some(oldest) = self.runs.pop_front() {
                self.known_after = oldest.last;
                self.base = oldest.total;
            }
            at -= 1;
        }
        let total_before = at
            .checked_sub(1)
            .and_then(|i| self.runs.get(i))
            .map_or(self.base, |r| r.total);
        // Every run from `at` on now has one more skipped before its end.
        for run in self.runs.iter_mut().skip(at) {
            run.total += 1;
        }
        match (joins_before, joins_after) {
            (true, true) => {
                // Fills the gap between two runs: they become one.
                if let Some(next) = self.runs.remove(at)
                    && let Some(prev) = self.runs.get_mut(at - 1)
                {
                    prev.last = next.last;
                    prev.total = next.total;
                }
            }
            (true, false) => {
                if let Some(prev) = self.runs.get_mut(at - 1) {
                    prev.last = pos;
                    prev.total += 1;
                }
            }
            (false, true) => {
                if let Some(next) = self.runs.get_mut(at) {
                    next.first = pos;
                }
            }
            (false, false) => self.runs.insert(
                at,
                SkipRun {
                    first: pos,
                    last: pos,
                    total: total_before + 1,
                },
            ),
        }
        true
    }
}

#[derive(Clone, Copy, Debug)]
struct LastSent {
    seq: u16,
    ts: u32,
    arrival: Instant,
}

/// Bitmap of the last [`DUP_WINDOW`] outgoing sequence numbers, indexed by `seq % DUP_WINDOW`.
#[derive(Clone, Debug, Default)]
struct SeqWindow {
    highest: Option<u16>,
    bits: [u64; DUP_WORDS],
}

impl SeqWindow {
    /// Ok if `seq` may be sent: newer than everything, or inside the window and not yet sent.
    fn check(&self, seq: u16) -> Result<(), Drop> {
        let Some(highest) = self.highest else {
            return Ok(());
        };
        let d = seq_diff(seq, highest);
        if d > 0 {
            Ok(())
        } else if d <= -(DUP_WINDOW as i32) {
            Err(Drop::TooOld)
        } else if self.is_set(seq) {
            Err(Drop::Duplicate)
        } else {
            Ok(())
        }
    }

    fn mark(&mut self, seq: u16) {
        match self.highest {
            None => {
                self.highest = Some(seq);
            }
            Some(highest) => {
                let d = seq_diff(seq, highest);
                if d <= -(DUP_WINDOW as i32) {
                    return;
                }
                if d > 0 {
                    if d as usize >= DUP_WINDOW {
                        self.bits = [0; DUP_WORDS];
                    } else {
                        for i in 1..=d as u16 {
                            self.clear(highest.wrapping_add(i));
                        }
                    }
                    self.highest = Some(seq);
                }
            }
        }
        let (word, bit) = Self::index(seq);
        self.bits[word] |= 1 << bit;
    }

    fn is_set(&self, seq: u16) -> bool {
        let (word, bit) = Self::index(seq);
        self.bits[word] & (1 << bit) != 0
    }

    fn clear(&mut self, seq: u16) {
        let (word, bit) = Self::index(seq);
        self.bits[word] &= !(1 << bit);
    }

    /// Word and bit of `seq`; the word index is below `DUP_WORDS` by construction.
    fn index(seq: u16) -> (usize, u32) {
        let i = usize::from(seq) % DUP_WINDOW;
        (i / 64, (i % 64) as u32)
    }
}

/// `d × clock_rate` in RTP ticks, modulo 2^32 (timestamps wrap anyway).
fn duration_to_ticks(d: Duration, clock_rate: u32) -> u32 {
    let ticks = d.as_nanos() * u128::from(clock_rate) / 1_000_000_000;
    (ticks % (1u128 << 32)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use proptest::prelude::*;

    const AUDIO: Ssrc = Ssrc(0xa0d1);
    const OUT: Ssrc = Ssrc(0x5eed);

    fn pkt(ssrc: Ssrc, seq: u16, ts: u32, arrival: Instant) -> MediaPacket {
        MediaPacket {
            ssrc,
            seq,
            timestamp: ts,
            marker: false,
            payload_type: 111,
            payload: Bytes::from_static(b"x"),
            arrival,
            keyframe: false,
            audio_level: None,
            layer: None,
            dependency: None,
        }
    }

    fn key(mut p: MediaPacket) -> MediaPacket {
        p.keyframe = true;
        p
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn audio() -> Forwarder {
        Forwarder::new(OUT, MediaKind::Audio, 48_000)
    }

    fn video() -> Forwarder {
        Forwarder::new(OUT, MediaKind::Video, 90_000)
    }

    #[test]
    fn first_segment_keeps_source_numbers() {
        let t0 = Instant::now();
        let mut f = audio();
        let h = f.forward(&pkt(AUDIO, 1000, 5000, t0)).unwrap();
        assert_eq!(
            h,
            ForwardedHeader {
                ssrc: OUT,
                seq: 1000,
                timestamp: 5000,
                marker: false
            }
        );
        let mut p = pkt(AUDIO, 1001, 5960, t0 + ms(20));
        p.marker = true;
        let h = f.forward(&p).unwrap();
        assert_eq!((h.seq, h.timestamp, h.marker), (1001, 5960, true));
        assert_eq!(f.last_sent(), Some((1001, 5960, t0 + ms(20))));
        assert_eq!(f.segments(), 1);
    }

    /// A source that restarts its numbering far backwards on the same SSRC (an encoder
    /// restart) starts a new segment after two consecutive packets, instead of losing
    /// everything until the old numbering is reached again (13,000 packets, 260 s of audio).
    #[test]
    fn a_backward_restart_of_the_numbering_starts_a_new_segment() {
        let t0 = Instant::now();
        let mut f = audio();
        let mut last = None;
        for i in 0..100u16 {
            last = Some(
                f.forward(&pkt(
                    AUDIO,
                    20_000 + i,
                    u32::from(i) * 960,
                    t0 + ms(u64::from(i) * 20),
                ))
                .unwrap(),
            );
        }
        let last = last.unwrap();
        // The restart: 13,000 behind. The first such packet alone is held back (a stray late
        // packet must not restart anything)...
        let t1 = t0 + ms(2_000);
        assert_eq!(
            f.forward(&pkt(AUDIO, 7_000, 1_000_000, t1)),
            Err(Drop::TooOld)
        );
        // ...the next one in sequence starts the new segment, continuous on the way out.
        let h = f
            .forward(&pkt(AUDIO, 7_001, 1_000_960, t1 + ms(20)))
            .unwrap();
        assert_eq!(h.seq, last.seq.wrapping_add(1));
        let h2 = f
            .forward(&pkt(AUDIO, 7_002, 1_001_920, t1 + ms(40)))
            .unwrap();
        assert_eq!(h2.seq, h.seq.wrapping_add(1));
        assert_eq!(h2.timestamp, h.timestamp.wrapping_add(960));
        // A single stray far-behind packet between normal ones changes nothing.
        let h3 = f
            .forward(&pkt(AUDIO, 7_003, 1_002_880, t1 + ms(60)))
            .unwrap();
        assert_eq!(
            f.forward(&pkt(AUDIO, 100, 0, t1 + ms(70))),
            Err(Drop::TooOld)
        );
        let h4 = f
            .forward(&pkt(AUDIO, 7_004, 1_003_840, t1 + ms(80)))
            .unwrap();
        assert_eq!(h4.seq, h3.seq.wrapping_add(1));
    }

    #[test]
    fn with_initial_sets_base() {
        let t0 = Instant::now();
        let mut f = Forwarder::with_initial(OUT, MediaKind::Audio, 48_000, 7, 700);
        assert_eq!(f.forward(&pkt(AUDIO, 1000, 5000, t0)).unwrap().seq, 7);
        let h = f
            .forward(&pkt(AUDIO, 1002, 5000 + 1920, t0 + ms(40)))
            .unwrap();
        assert_eq!((h.seq, h.timestamp), (9, 700 + 1920));
        assert_eq!(f.map_timestamp(AUDIO, 5000 + 960), Some(700 + 960));
        assert_eq!(f.map_timestamp(Ssrc(1), 5000), None);
    }

    #[test]
    fn seq_and_ts_wrap_on_input_and_output() {
        let t0 = Instant::now();
        // Input wraps: source starts near the end of both spaces.
        let mut f = audio();
        let mut seq = 65533u16;
        let mut ts = u32::MAX - 1000;
        for i in 0..6u64 {
            let h = f.forward(&pkt(AUDIO, seq, ts, t0 + ms(20 * i))).unwrap();
            assert_eq!((h.seq, h.timestamp), (seq, ts));
            seq = seq.wrapping_add(1);
            ts = ts.wrapping_add(960);
        }
        // Output wraps: small source numbers, base near the end.
        let mut f = Forwarder::with_initial(OUT, MediaKind::Audio, 48_000, 65534, u32::MAX - 500);
        let outs: Vec<(u16, u32)> = (0..4u16)
            .map(|i| {
                let h = f
                    .forward(&pkt(AUDIO, 10 + i, 100 + 960 * u32::from(i), t0))
                    .unwrap();
                (h.seq, h.timestamp)
            })
            .collect();
        assert_eq!(
            outs,
            vec![
                (65534, u32::MAX - 500),
                (65535, (u32::MAX - 500).wrapping_add(960)),
                (0, (u32::MAX - 500).wrapping_add(1920)),
                (1, (u32::MAX - 500).wrapping_add(2880)),
            ]
        );
        assert_eq!(f.source_of(0), Some((AUDIO, 12)));
        assert_eq!(f.source_of(65534), Some((AUDIO, 10)));
    }

    #[test]
    fn mute_gap_keeps_seq_and_advances_ts_by_wall_time() {
        let t0 = Instant::now();
        let mut f = audio();
        for i in 0..10u16 {
            f.forward(&pkt(
                AUDIO,
                100 + i,
                960 * u32::from(i),
                t0 + ms(20 * u64::from(i)),
            ))
            .unwrap();
        }
        let (last_seq, last_ts, last_at) = f.last_sent().unwrap();
        f.pause();
        assert!(f.is_paused());
        // Packets keep arriving while paused (subscription paused, publisher still sending).
        for i in 10..160u16 {
            let p = pkt(
                AUDIO,
                100 + i,
                960 * u32::from(i),
                t0 + ms(20 * u64::from(i)),
            );
            assert_eq!(f.forward(&p), Err(Drop::Paused));
        }
        f.resume();
        assert!(!f.needs_keyframe());
        // Resume 3 s after the last forwarded packet; the source also jumped ahead.
        let at = last_at + ms(3000);
        let h = f.forward(&pkt(AUDIO, 400, 777_777, at)).unwrap();
        assert_eq!(h.seq, last_seq + 1);
        assert_eq!(h.timestamp, last_ts + 3 * 48_000);
        assert_eq!(f.segments(), 2);
        // A late packet from before the pause does not map into the new segment.
        assert_eq!(f.forward(&pkt(AUDIO, 150, 0, at)), Err(Drop::TooOld));
        let h = f
            .forward(&pkt(AUDIO, 401, 777_777 + 960, at + ms(20)))
            .unwrap();
        assert_eq!(
            (h.seq, h.timestamp),
            (last_seq + 2, last_ts + 3 * 48_000 + 960)
        );
    }

    #[test]
    fn resume_refuses_packets_seen_while_paused() {
        let t0 = Instant::now();
        let mut f = audio();
        f.forward(&pkt(AUDIO, 10, 0, t0)).unwrap();
        f.pause();
        assert_eq!(
            f.forward(&pkt(AUDIO, 11, 960, t0 + ms(20))),
            Err(Drop::Paused)
        );
        assert_eq!(
            f.forward(&pkt(AUDIO, 12, 1920, t0 + ms(40))),
            Err(Drop::Paused)
        );
        f.resume();
        assert_eq!(
            f.forward(&pkt(AUDIO, 11, 960, t0 + ms(60))),
            Err(Drop::TooOld)
        );
        assert_eq!(
            f.forward(&pkt(AUDIO, 13, 2880, t0 + ms(60))).unwrap().seq,
            11
        );
    }

    #[test]
    fn zero_elapsed_still_advances_ts() {
        let t0 = Instant::now();
        let mut f = audio();
        f.forward(&pkt(AUDIO, 10, 500, t0)).unwrap();
        f.pause();
        f.resume();
        let h = f.forward(&pkt(AUDIO, 11, 500, t0)).unwrap();
        assert_eq!((h.seq, h.timestamp), (11, 501));
    }

    #[test]
    fn resume_without_pause_is_noop() {
        let t0 = Instant::now();
        let mut f = audio();
        f.forward(&pkt(AUDIO, 10, 500, t0)).unwrap();
        f.resume();
        f.forward(&pkt(AUDIO, 11, 1460, t0 + ms(20))).unwrap();
        assert_eq!(f.segments(), 1);
    }

    #[test]
    fn publisher_restart_keeps_output_continuous() {
        let t0 = Instant::now();
        let mut f = audio();
        for i in 0..5u16 {
            f.forward(&pkt(
                AUDIO,
                60000 + i,
                1_000_000 + 960 * u32::from(i),
                t0 + ms(20 * u64::from(i)),
            ))
            .unwrap();
        }
        let (seq, ts, at) = f.last_sent().unwrap();
        let restarted = Ssrc(0xbeef);
        let h = f
            .forward(&pkt(restarted, 17, 3_000_000_000, at + ms(500)))
            .unwrap();
        assert_eq!((h.seq, h.timestamp), (seq + 1, ts + 24_000));
        assert_eq!(f.current_source(), Some(restarted));
        // Late packets of the old source are refused; they cannot switch back.
        assert_eq!(
            f.forward(&pkt(AUDIO, 60003, 0, at + ms(510))),
            Err(Drop::TooOld)
        );
        assert_eq!(
            f.forward(&pkt(AUDIO, 60005, 0, at + ms(510))),
            Err(Drop::TooOld)
        );
        let h = f
            .forward(&pkt(restarted, 18, 3_000_000_960, at + ms(520)))
            .unwrap();
        assert_eq!((h.seq, h.timestamp), (seq + 2, ts + 24_960));
        assert_eq!(f.source_of(seq + 2), Some((restarted, 18)));
        assert_eq!(f.source_of(seq), None, "previous segment");
        assert_eq!(f.map_timestamp(AUDIO, 0), None);
        // Long after the switch the old SSRC may come back as a new source.
        let h = f.forward(&pkt(AUDIO, 1, 0, at + ms(5000))).unwrap();
        assert_eq!(h.seq, seq + 3);
        assert_eq!(f.segments(), 3);
    }

    #[test]
    fn video_waits_for_keyframe_at_start() {
        let t0 = Instant::now();
        let mut f = video();
        assert!(f.needs_keyframe());
        assert_eq!(
            f.forward(&pkt(AUDIO, 1, 0, t0)),
            Err(Drop::WaitingForKeyframe)
        );
        assert!(f.needs_keyframe());
        let h = f.forward(&key(pkt(AUDIO, 2, 0, t0 + ms(10)))).unwrap();
        assert_eq!(h.seq, 2);
        assert!(!f.needs_keyframe());
        // Missing packet 1 of the keyframe's predecessor is before the segment.
        assert_eq!(f.forward(&pkt(AUDIO, 1, 0, t0 + ms(11))), Err(Drop::TooOld));
        assert_eq!(f.forward(&pkt(AUDIO, 3, 0, t0 + ms(12))).unwrap().seq, 3);
    }

    #[test]
    fn video_waits_for_keyframe_after_resume() {
        let t0 = Instant::now();
        let mut f = video();
        f.forward(&key(pkt(AUDIO, 1, 0, t0))).unwrap();
        f.pause();
        assert!(!f.needs_keyframe());
        f.resume();
        assert!(f.needs_keyframe());
        assert_eq!(
            f.forward(&pkt(AUDIO, 2, 3000, t0 + ms(33))),
            Err(Drop::WaitingForKeyframe)
        );
        let h = f.forward(&key(pkt(AUDIO, 5, 9000, t0 + ms(100)))).unwrap();
        assert_eq!((h.seq, h.timestamp), (2, 9000));
        assert!(!f.needs_keyframe());
    }

    #[test]
    fn video_switch_is_make_before_break() {
        let t0 = Instant::now();
        let mut f = video();
        let old = Ssrc(1);
        let new = Ssrc(2);
        f.forward(&key(pkt(old, 100, 0, t0))).unwrap();
        assert_eq!(
            f.forward(&pkt(new, 5000, 0, t0 + ms(1))),
            Err(Drop::WaitingForKeyframe)
        );
        assert!(f.needs_keyframe());
        // The old source keeps flowing until the new one has a keyframe.
        assert_eq!(
            f.forward(&pkt(old, 101, 3000, t0 + ms(33))).unwrap().seq,
            101
        );
        let h = f.forward(&key(pkt(new, 5001, 10, t0 + ms(66)))).unwrap();
        assert_eq!((h.seq, h.timestamp), (102, 3000 + 33 * 90));
        assert!(!f.needs_keyframe());
        assert_eq!(
            f.forward(&pkt(old, 102, 6000, t0 + ms(67))),
            Err(Drop::TooOld)
        );
        assert_eq!(
            f.forward(&pkt(new, 5002, 10, t0 + ms(67))).unwrap().seq,
            103
        );
    }

    #[test]
    fn reordering_within_segment() {
        let t0 = Instant::now();
        let mut f = Forwarder::with_initial(OUT, MediaKind::Audio, 48_000, 0, 0);
        let order = [500u16, 502, 501, 505, 503, 504];
        let outs: Vec<u16> = order
            .iter()
            .map(|&s| {
                f.forward(&pkt(AUDIO, s, u32::from(s) * 960, t0))
                    .unwrap()
                    .seq
            })
            .collect();
        assert_eq!(outs, vec![0, 2, 1, 5, 3, 4]);
        assert_eq!(f.last_sent().map(|l| l.0), Some(5));
        assert_eq!(f.forward(&pkt(AUDIO, 499, 0, t0)), Err(Drop::TooOld));
    }

    #[test]
    fn duplicates_dropped() {
        let t0 = Instant::now();
        let mut f = audio();
        for s in [10u16, 11, 12] {
            f.forward(&pkt(AUDIO, s, 0, t0)).unwrap();
        }
        assert_eq!(f.forward(&pkt(AUDIO, 11, 0, t0)), Err(Drop::Duplicate));
        assert_eq!(f.forward(&pkt(AUDIO, 12, 0, t0)), Err(Drop::Duplicate));
        assert_eq!(f.forward(&pkt(AUDIO, 10, 0, t0)), Err(Drop::Duplicate));
        // Across the window edge and the wrap.
        let mut f = audio();
        f.forward(&pkt(AUDIO, 65400, 0, t0)).unwrap();
        f.forward(&pkt(AUDIO, 65402, 0, t0)).unwrap();
        f.forward(&pkt(AUDIO, 100, 0, t0)).unwrap();
        assert_eq!(f.forward(&pkt(AUDIO, 100, 0, t0)), Err(Drop::Duplicate));
        assert_eq!(f.forward(&pkt(AUDIO, 65402, 0, t0)), Err(Drop::Duplicate));
        assert!(f.forward(&pkt(AUDIO, 65401, 0, t0)).is_ok());
        assert!(f.forward(&pkt(AUDIO, 65401 + 50, 0, t0)).is_ok());
        f.forward(&pkt(AUDIO, 1000, 0, t0)).unwrap();
        assert_eq!(
            f.forward(&pkt(AUDIO, 65403, 0, t0)),
            Err(Drop::TooOld),
            "beyond the window"
        );
    }

    #[test]
    fn retransmission_uses_same_mapping() {
        let t0 = Instant::now();
        let mut f = Forwarder::with_initial(OUT, MediaKind::Audio, 48_000, 1, 10);
        let first = pkt(AUDIO, 100, 1000, t0);
        f.forward(&first).unwrap();
        let second = pkt(AUDIO, 101, 1960, t0);
        let h = f.forward(&second).unwrap();
        assert_eq!(f.forward_retransmission(&second), Ok(h));
        assert_eq!(f.forward_retransmission(&second), Ok(h), "no state change");
        assert_eq!(
            f.forward_retransmission(&pkt(AUDIO, 99, 0, t0)),
            Err(Drop::TooOld)
        );
        assert_eq!(
            f.forward_retransmission(&pkt(Ssrc(9), 101, 0, t0)),
            Err(Drop::TooOld)
        );
        assert_eq!(audio().forward_retransmission(&first), Err(Drop::TooOld));
    }

    #[test]
    fn source_of_inverts_forward() {
        let t0 = Instant::now();
        let mut f = Forwarder::with_initial(OUT, MediaKind::Audio, 48_000, 65530, 0);
        let mut outs = Vec::new();
        for s in [200u16, 201, 203, 204, 205, 206, 207, 209] {
            let h = f.forward(&pkt(AUDIO, s, 0, t0)).unwrap();
            outs.push((h.seq, s));
        }
        for (out, src) in outs {
            assert_eq!(f.source_of(out), Some((AUDIO, src)));
        }
        // Lost upstream but inside the segment: maps (the cache decides).
        assert_eq!(f.source_of(65532), Some((AUDIO, 202)));
        // Beyond the last sent, before the segment start.
        assert_eq!(f.source_of(65530u16.wrapping_add(10)), None);
        assert_eq!(f.source_of(65529), None);
        assert_eq!(f.source_of(30000), None);
        assert_eq!(audio().source_of(0), None);
    }

    /// Skipped packets leave no gap; late packets between skips map to their place;
    /// retransmissions and NACK mapping agree with what was sent.
    #[test]
    fn skipped_packets_leave_no_gap() {
        let t0 = Instant::now();
        let mut f = Forwarder::with_initial(OUT, MediaKind::Audio, 48_000, 65534, 0);
        let mut sent = Vec::new();
        let mut forward = |f: &mut Forwarder, s: u16| {
            let h = f.forward(&pkt(AUDIO, s, 0, t0)).unwrap();
            sent.push((h.seq, s));
            h.seq
        };
        // 10 11 kept, 12 13 skipped, 14 kept, 15 skipped, 17 kept, 16 late and kept.
        assert_eq!(forward(&mut f, 10), 65534);
        assert_eq!(forward(&mut f, 11), 65535);
        assert!(f.skip(&pkt(AUDIO, 12, 0, t0)));
        assert!(f.skip(&pkt(AUDIO, 13, 0, t0)));
        assert_eq!(forward(&mut f, 14), 0);
        assert!(f.skip(&pkt(AUDIO, 15, 0, t0)));
        assert_eq!(forward(&mut f, 17), 2);
        assert_eq!(forward(&mut f, 16), 1);
        // A skip older than something forwarded cannot be hidden.
        assert!(!f.skip(&pkt(AUDIO, 16, 0, t0)));
        // Skips extend a run backwards while nothing after them went out.
        assert!(f.skip(&pkt(AUDIO, 20, 0, t0)));
        assert!(f.skip(&pkt(AUDIO, 19, 0, t0)));
        assert!(f.skip(&pkt(AUDIO, 18, 0, t0)));
        assert_eq!(forward(&mut f, 21), 3);
        for (out, src) in &sent {
            assert_eq!(f.source_of(*out), Some((AUDIO, *src)), "out {out}");
            let h = f.forward_retransmission(&pkt(AUDIO, *src, 0, t0)).unwrap();
            assert_eq!(h.seq, *out);
        }
        // A skipped packet is never retransmitted; nothing maps beyond the last sent.
        assert_eq!(
            f.forward_retransmission(&pkt(AUDIO, 12, 0, t0)),
            Err(Drop::TooOld)
        );
        assert_eq!(f.forward(&pkt(AUDIO, 15, 0, t0)), Err(Drop::TooOld));
        assert_eq!(f.source_of(4), None);
        // A new segment forgets the skips.
        f.pause();
        f.resume();
        let h = f.forward(&pkt(AUDIO, 30, 0, t0)).unwrap();
        assert_eq!(h.seq, 4);
        assert_eq!(f.forward(&pkt(AUDIO, 31, 0, t0)).unwrap().seq, 5);
    }

    /// A late skip between two runs (nothing after it forwarded yet) renumbers the runs
    /// after it; filling the gap between two runs joins them.
    #[test]
    fn late_skips_between_runs_leave_no_hole() {
        let t0 = Instant::now();
        let mut f = Forwarder::with_initial(OUT, MediaKind::Audio, 48_000, 0, 0);
        assert_eq!(f.forward(&pkt(AUDIO, 10, 0, t0)).unwrap().seq, 0);
        assert!(f.skip(&pkt(AUDIO, 12, 0, t0)));
        assert!(f.skip(&pkt(AUDIO, 15, 0, t0)));
        assert!(
            f.skip(&pkt(AUDIO, 13, 0, t0)),
            "reordered: between the runs"
        );
        assert!(f.skip(&pkt(AUDIO, 13, 0, t0)), "a duplicate counts once");
        assert_eq!(f.forward(&pkt(AUDIO, 11, 0, t0)).unwrap().seq, 1);
        assert_eq!(f.forward(&pkt(AUDIO, 14, 0, t0)).unwrap().seq, 2);
        assert_eq!(f.forward(&pkt(AUDIO, 16, 0, t0)).unwrap().seq, 3);
        assert!(f.skip(&pkt(AUDIO, 18, 0, t0)));
        assert!(f.skip(&pkt(AUDIO, 20, 0, t0)));
        assert!(f.skip(&pkt(AUDIO, 19, 0, t0)), "joins the two runs");
        assert_eq!(f.forward(&pkt(AUDIO, 17, 0, t0)).unwrap().seq, 4);
        assert_eq!(f.forward(&pkt(AUDIO, 21, 0, t0)).unwrap().seq, 5);
        for (out, src) in [(0u16, 10u16), (1, 11), (2, 14), (3, 16), (4, 17), (5, 21)] {
            assert_eq!(f.source_of(out), Some((AUDIO, src)), "out {out}");
            assert_eq!(
                f.forward_retransmission(&pkt(AUDIO, src, 0, t0))
                    .unwrap()
                    .seq,
                out
            );
        }
        for skipped in [12u16, 13, 15, 18, 19, 20] {
            assert_eq!(
                f.forward_retransmission(&pkt(AUDIO, skipped, 0, t0)),
                Err(Drop::TooOld)
            );
        }
    }

    /// Beyond [`SKIP_RUNS`] runs the oldest are forgotten: packets from before them are too
    /// old, everything after maps on; numbering stays continuous over many wraps.
    #[test]
    fn skip_log_forgets_old_runs() {
        let t0 = Instant::now();
        let mut f = Forwarder::with_initial(OUT, MediaKind::Audio, 48_000, 0, 0);
        let mut expected = 0u16;
        let mut src = 0u16;
        // 40,000 pictures of 1 kept and 3 skipped packets: 160,000 source packets.
        for _ in 0..40_000 {
            let h = f.forward(&pkt(AUDIO, src, 0, t0)).unwrap();
            assert_eq!(h.seq, expected);
            assert_eq!(f.source_of(h.seq), Some((AUDIO, src)));
            expected = expected.wrapping_add(1);
            for k in 1..=3 {
                assert!(f.skip(&pkt(AUDIO, src.wrapping_add(k), 0, t0)));
            }
            src = src.wrapping_add(4);
        }
        let recent = src.wrapping_sub(4 * SKIP_RUNS as u16);
        assert!(f.forward_retransmission(&pkt(AUDIO, recent, 0, t0)).is_ok());
        let forgotten = src.wrapping_sub(4 * (SKIP_RUNS as u16 + 1));
        assert_eq!(
            f.forward_retransmission(&pkt(AUDIO, forgotten, 0, t0)),
            Err(Drop::TooOld)
        );
    }

    #[test]
    fn paused_drops_everything() {
        let t0 = Instant::now();
        let mut f = video();
        f.pause();
        assert_eq!(f.forward(&key(pkt(AUDIO, 1, 0, t0))), Err(Drop::Paused));
        assert!(!f.needs_keyframe());
        f.resume();
        assert!(f.forward(&key(pkt(AUDIO, 2, 0, t0))).is_ok());
    }

    /// A tiny deterministic PRNG for scenario tests (xorshift64*).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Replays a random stream with loss, reordering, duplicates, restarts and pauses and
    /// checks the output invariants.
    fn scenario(seed: u64, kind: MediaKind, steps: usize) -> Result<(usize, u64), TestCaseError> {
        let mut rng = Rng(seed | 1);
        let t0 = Instant::now();
        let mut f = Forwarder::new(OUT, kind, 90_000);
        let mut ssrc = Ssrc(rng.next() as u32);
        let mut seq = rng.next() as u16;
        let mut ts = rng.next() as u32;
        let mut now = t0;
        let mut held: Vec<MediaPacket> = Vec::new();
        let mut recent: std::collections::VecDeque<u16> = std::collections::VecDeque::new();
        let mut prev_last: Option<u16> = None;
        let mut forwarded = 0;
        for _ in 0..steps {
            now += ms(rng.below(30));
            match rng.below(100) {
                0 => {
                    ssrc = Ssrc(rng.next() as u32);
                    seq = rng.next() as u16;
                    ts = rng.next() as u32;
                }
                1 => f.pause(),
                2 | 3 => f.resume(),
                _ => {}
            }
            seq = seq.wrapping_add(1);
            ts = ts.wrapping_add(rng.below(4) as u32 * 3000);
            let mut p = pkt(ssrc, seq, ts, now);
            p.keyframe = rng.below(8) == 0;
            let mut batch = vec![];
            match rng.below(10) {
                0 => {}                            // lost
                1 => held.push(p),                 // delayed
                2 => batch.extend([p.clone(), p]), // duplicated
                _ => batch.push(p),
            }
            if rng.below(4) == 0 && !held.is_empty() {
                let i = rng.below(held.len() as u64) as usize;
                let mut late = held.swap_remove(i);
                late.arrival = now;
                batch.push(late);
            }
            for p in batch {
                let segments = f.segments();
                let Ok(h) = f.forward(&p) else { continue };
                if let Some(prev) = prev_last.filter(|_| f.segments() != segments) {
                    prop_assert_eq!(h.seq, prev.wrapping_add(1), "segment start continues");
                }
                prop_assert!(!recent.contains(&h.seq), "out seq {} repeated", h.seq);
                prop_assert_eq!(f.source_of(h.seq), Some((p.ssrc, p.seq)));
                forwarded += 1;
                recent.push_back(h.seq);
                if recent.len() > DUP_WINDOW {
                    recent.pop_front();
                }
                prev_last = f.last_sent().map(|l| l.0);
            }
        }
        Ok((forwarded, f.segments()))
    }

    #[test]
    fn scenario_fixed_seeds() {
        for seed in 1..50 {
            for kind in [MediaKind::Audio, MediaKind::Video] {
                let (forwarded, segments) = scenario(seed, kind, 3000).unwrap();
                // The scenario must exercise both forwarding and segment starts.
                assert!(forwarded > 1000, "seed {seed}: {forwarded} forwarded");
                assert!(segments > 10, "seed {seed}: {segments} segments");
            }
        }
    }

    proptest! {
        #[test]
        fn scenario_random(seed: u64, video: bool) {
            let kind = if video { MediaKind::Video } else { MediaKind::Audio };
            scenario(seed, kind, 1500)?;
        }
    }
}
