//! Transport-wide congestion control feedback (draft-holmer-rmcat-transport-wide-cc-extensions-01
//! §3.1), sent by the server to each publisher so the browser's send-side bandwidth
//! estimate keeps working through the SFU.
//!
//! [`TwccRecorder`] notes the arrival time of every packet by its transport-wide sequence
//! number and, every 100 ms while packets arrive (sooner once 100 wait), turns them into one
//! TransportLayerCC packet (RTPFB, FMT 15). Statuses are packed into run-length and
//! status-vector chunks the way libwebrtc packs them; arrival deltas are in 250 µs units
//! (one byte 0..=255, else two bytes signed); the reference time is in 64 ms units, counted
//! from the first packet's arrival (the engine reads no clock).
//!
//! Memory is bounded: at most [`MAX_KEPT_PACKETS`] arrivals wait, a gap of more than
//! [`MAX_MISSING_RUN`] sequence numbers ends a feedback packet instead of being listed, and
//! one feedback packet stays under [`MAX_FEEDBACK_LEN`] bytes.
//!
//! Hot path: [`TwccRecorder::on_packet`] runs for every received packet: a sorted insert
//! (an append when in order) into a ring buffer that stops growing at [`MAX_KEPT_PACKETS`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::seq::seq_diff;

/// Feedback is sent this often while packets arrive.
pub const FEEDBACK_INTERVAL: Duration = Duration::from_millis(100);
/// Feedback is due at once when this many received packets wait.
pub const FEEDBACK_AFTER_PACKETS: usize = 100;
/// Received packets kept until reported; beyond it the oldest are forgotten unreported.
pub const MAX_KEPT_PACKETS: usize = 1024;
/// Missing sequence numbers listed between two received ones; a longer gap ends the
/// feedback packet, and the next one starts after the gap (the gap is not reported).
pub const MAX_MISSING_RUN: i64 = 4096;
/// Longest feedback packet built, in bytes: one MTU with SRTCP, UDP/IP and TURN overheads.
pub const MAX_FEEDBACK_LEN: usize = 1100;

/// A packet this far behind the first sequence number not yet reported is still reported
/// (the seqs between are then listed again, as not received: the sender ignores statuses of
/// packets it already has feedback for). Older ones are dropped.
const MAX_LATE: i64 = 256;
/// The status count field is 16 bits.
const MAX_STATUS_COUNT: i64 = 0xffff;
/// Arrival time unit, µs.
const TICK_US: u128 = 250;
/// Reference time unit (64 ms) in ticks.
const TICKS_PER_REFERENCE: i64 = 256;
/// Ticks are clamped here (about 35 years), far from any overflow in delta arithmetic.
const MAX_TICKS: u128 = 1 << 52;
/// RTCP header + sender SSRC + media SSRC + base/count + reference time/feedback count.
const FIXED_LEN: usize = 20;
const PT_RTPFB: u8 = 205;
const FMT_TWCC: u8 = 15;

/// Records arrivals of packets carrying the transport-wide sequence number extension and
/// produces TWCC feedback for their sender.
#[derive(Debug)]
pub struct TwccRecorder {
    sender_ssrc: u32,
    /// The stream of the latest packet, put in the feedback's media SSRC field (receivers
    /// ignore it: the sequence numbers are transport-wide).
    media_ssrc: u32,
    /// Arrival times are counted from here (the first packet).
    epoch: Option<Instant>,
    /// Highest extended sequence number seen.
    highest: Option<i64>,
    /// After a packet far too old to report: the seq that, arriving next, confirms that the
    /// sender restarted its counter.
    probe: Option<u16>,
    /// Received, not yet reported; sorted by `ext`, no duplicates.
    pending: VecDeque<Arrival>,
    /// The first sequence number after those reported so far.
    next_base: Option<i64>,
    feedback_count: u8,
    /// When the next feedback is due; `Some` exactly when `pending` is not empty.
    deadline: Option<Instant>,
    last_sent: Option<Instant>,
    /// Scratch for building, kept to spare the allocation.
    chunks: Vec<u16>,
    deltas: Vec<u8>,
}

#[derive(Clone, Copy, Debug)]
struct Arrival {
    /// Extended transport-wide sequence number.
    ext: i64,
    /// Arrival time in 250 µs ticks since `epoch`.
    ticks: i64,
}

impl TwccRecorder {
    /// A recorder whose feedback names `sender_ssrc` as its sender.
    pub fn new(sender_ssrc: u32) -> Self {
        TwccRecorder {
            sender_ssrc,
            media_ssrc: 0,
            epoch: None,
            highest: None,
            probe: None,
            // Grows with the arrivals of a publishing participant; nothing for one that only listens.
            pending: VecDeque::new(),
            next_base: None,
            feedback_count: 0,
            deadline: None,
            last_sent: None,
            chunks: Vec::new(),
            deltas: Vec::new(),
        }
    }

    /// A received RTP packet carried transport-wide sequence number `seq` (from the header
    /// extension), on stream `media_ssrc`, arriving at `now`.
    ///
    /// Duplicates keep the first arrival; reordered packets are slotted in; a packet more
    /// than 256 behind what was already reported is dropped, unless the next packet follows
    /// it (the sender restarted its counter).
    pub fn on_packet(&mut self, now: Instant, media_ssrc: u32, seq: u16) {
        let epoch = *self.epoch.get_or_insert(now);
        let ticks = (now.saturating_duration_since(epoch).as_micros() / TICK_US).min(MAX_TICKS);
        let Some(ext) = self.extend(seq) else {
            return;
        };
        self.media_ssrc = media_ssrc;
        let arrival = Arrival {
            ext,
            ticks: ticks as i64,
        };
        let mut at = match self.pending.back() {
            Some(last) if last.ext >= ext => {
                match self.pending.binary_search_by_key(&ext, |a| a.ext) {
                    Ok(_) => return, // duplicate
                    Err(at) => at,
                }
            }
            _ => self.pending.len(),
        };
        if self.pending.len() >= MAX_KEPT_PACKETS {
            if at == 0 {
                return; // older than everything kept
            }
            if let Some(old) = self.pending.pop_front() {
                let after = old.ext + 1;
                self.next_base = Some(self.next_base.map_or(after, |b| b.max(after)));
                at -= 1;
            }
        }
        self.pending.insert(at, arrival);
        if self.deadline.is_none() {
            self.deadline = Some(match self.last_sent {
                // Keep the rhythm of one feedback per interval; after a pause, report at once.
                Some(sent) => sent
                    .checked_add(FEEDBACK_INTERVAL)
                    .map_or(now, |t| t.max(now)),
                None => now.checked_add(FEEDBACK_INTERVAL).unwrap_or(now),
            });
        }
        if self.pending.len() >= FEEDBACK_AFTER_PACKETS {
            self.deadline = self.deadline.map(|d| d.min(now));
        }
    }

    /// The next feedback packet (plaintext RTCP bytes, one TransportLayerCC) when one is
    /// due. Call until `None`: what one packet cannot hold (a long gap, a delta beyond
    /// ±8 s, the size limit) comes in the next, due at once.
    pub fn poll_feedback(&mut self, now: Instant) -> Option<Vec<u8>> {
        if self.deadline? > now {
            return None;
        }
        let packet = self.build();
        self.last_sent = Some(now);
        self.deadline = if self.pending.is_empty() {
            None
        } else {
            Some(now)
        };
        packet
    }

    /// When [`Self::poll_feedback`] has something next; `None` while no packet waits.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }

    /// Extends `seq` relative to the highest seen; `None` for a packet too old to report.
    fn extend(&mut self, seq: u16) -> Option<i64> {
        let Some(highest) = self.highest else {
            let ext = (1 << 16) + i64::from(seq);
            self.highest = Some(ext);
            return Some(ext);
        };
        let mut ext = highest + i64::from(seq_diff(seq, highest as u16));
        if self.next_base.is_some_and(|b| ext < b - MAX_LATE) {
            if self.probe != Some(seq) {
                self.probe = Some(seq.wrapping_add(1));
                return None;
            }
            // Two in a row: the sender restarted. Continue past a gap long enough to start
            // a new feedback packet, keeping the low 16 bits equal to `seq`.
            let start = highest + MAX_MISSING_RUN + 1;
            ext = start + i64::from(seq.wrapping_sub(start as u16));
        }
        self.probe = None;
        if ext > highest {
            self.highest = Some(ext);
        }
        Some(ext)
    }

    /// Builds one feedback packet from the oldest pending arrivals and forgets them.
    fn build(&mut self) -> Option<Vec<u8>> {
        let first = *self.pending.front()?;
        let base = match self.next_base {
            Some(b) if b <= first.ext && first.ext - b <= MAX_MISSING_RUN => b,
            _ => first.ext,
        };
        let reference = first.ticks.div_euclid(TICKS_PER_REFERENCE);
        let mut previous = reference * TICKS_PER_REFERENCE;
        let mut encoder = ChunkEncoder::default();
        self.chunks.clear();
        self.deltas.clear();
        let mut last = base - 1;
        let mut taken = 0;
        for arrival in &self.pending {
            let missing = arrival.ext - last - 1;
            let delta = arrival.ticks - previous;
            // The first arrival always fits: its gap from `base` and its delta from the
            // reference time are in range by construction.
            let status = match delta {
                0..=255 => Status::SmallDelta,
                -32768..=32767 => Status::LargeDelta,
                _ if taken == 0 => Status::SmallDelta,
                _ => break,
            };
            if taken > 0 && (missing > MAX_MISSING_RUN || arrival.ext - base >= MAX_STATUS_COUNT) {
                break;
            }
            let saved = (encoder, self.chunks.len(), self.deltas.len());
            encoder.push(
                Status::NotReceived,
                missing.max(0) as usize,
                &mut self.chunks,
            );
            encoder.push(status, 1, &mut self.chunks);
            match status {
                Status::LargeDelta => self.deltas.extend_from_slice(&(delta as i16).to_be_bytes()),
                _ => self.deltas.push(delta.clamp(0, 255) as u8),
            }
            let len =
                FIXED_LEN + 2 * (self.chunks.len() + encoder.pending_chunks()) + self.deltas.len();
            // Padding included.
            if taken > 0 && len.next_multiple_of(4) > MAX_FEEDBACK_LEN {
                (encoder, _, _) = saved;
                self.chunks.truncate(saved.1);
                self.deltas.truncate(saved.2);
                break;
            }
            previous = arrival.ticks;
            last = arrival.ext;
            taken += 1;
        }
        encoder.finish(&mut self.chunks);
        self.pending.drain(..taken);
        self.next_base = Some(self.next_base.map_or(last + 1, |b| b.max(last + 1)));

        let raw_len = FIXED_LEN + 2 * self.chunks.len() + self.deltas.len();
        let padding = (4 - raw_len % 4) % 4;
        let len = raw_len + padding;
        let mut buf = Vec::with_capacity(len);
        buf.push(0x80 | if padding > 0 { 0x20 } else { 0 } | FMT_TWCC);
        buf.push(PT_RTPFB);
        buf.extend_from_slice(&((len / 4 - 1) as u16).to_be_bytes());
        buf.extend_from_slice(&self.sender_ssrc.to_be_bytes());
        buf.extend_from_slice(&self.media_ssrc.to_be_bytes());
        buf.extend_from_slice(&(base as u16).to_be_bytes());
        buf.extend_from_slice(&((last - base + 1) as u16).to_be_bytes());
        let reference_and_count =
            ((reference as u32 & 0x00ff_ffff) << 8) | u32::from(self.feedback_count);
        buf.extend_from_slice(&reference_and_count.to_be_bytes());
        for chunk in &self.chunks {
            buf.extend_from_slice(&chunk.to_be_bytes());
        }
        buf.extend_from_slice(&self.deltas);
        if padding > 0 {
            // RFC 3550 padding: zeros, then the count of padding octets.
            buf.resize(len - 1, 0);
            buf.push(padding as u8);
        }
        self.feedback_count = self.feedback_count.wrapping_add(1);
        Some(buf)
    }
}

/// Packet status symbols (draft §3.1.1), as their 2-bit codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    NotReceived = 0,
    SmallDelta = 1,
    LargeDelta = 2,
}

/// Longest run in a run-length chunk (13-bit field).
const MAX_RUN: usize = 0x1fff;
/// Symbols in a one-bit status vector chunk.
const ONE_BIT_CAPACITY: usize = 14;
/// Symbols in a two-bit status vector chunk.
const TWO_BIT_CAPACITY: usize = 7;

/// Packs statuses into packet status chunks (draft §3.1.3, §3.1.4), as libwebrtc does:
/// statuses collect until the next one no longer fits any chunk, then the longest chunk
/// that holds them goes out: a run length while all are equal, a 14-symbol one-bit vector
/// when there is no large delta, else a 7-symbol two-bit vector (the rest carry over).
/// Every chunk but the last holds at least 7 statuses; what waits always fits one chunk.
#[derive(Clone, Copy, Debug, Default)]
struct ChunkEncoder {
    /// The first waiting statuses (all of them unless they are one long run).
    symbols: [u8; ONE_BIT_CAPACITY],
    len: usize,
    all_same: bool,
    has_large: bool,
}

impl ChunkEncoder {
    /// Adds `count` times `status`.
    fn push(&mut self, status: Status, count: usize, out: &mut Vec<u16>) {
        let symbol = status as u8;
        let mut left = count;
        while left > 0 {
            if !self.can_add(symbol) {
                self.emit(out);
            }
            let n = if self.len == 0 || (self.all_same && self.symbols[0] == symbol) {
                left.min(MAX_RUN - self.len)
            } else {
                1
            };
            self.append(symbol, n);
            left -= n;
        }
    }

    /// Chunks still to come from [`Self::finish`]: what waits always fits one.
    fn pending_chunks(&self) -> usize {
        usize::from(self.len > 0)
    }

    /// Emits what waits.
    fn finish(&mut self, out: &mut Vec<u16>) {
        if self.len > 0 && !self.all_same && !self.has_large {
            // Not a run, so at most 14 symbols.
            out.push(one_bit_chunk(
                &self.symbols[..self.len.min(ONE_BIT_CAPACITY)],
            ));
            self.len = 0;
        }
        while self.len > 0 {
            self.emit(out);
        }
    }

    fn can_add(&self, symbol: u8) -> bool {
        let large = symbol == Status::LargeDelta as u8;
        self.len < TWO_BIT_CAPACITY
            || (self.len < ONE_BIT_CAPACITY && !self.has_large && !large)
            || (self.all_same && self.symbols[0] == symbol && self.len < MAX_RUN)
    }

    fn append(&mut self, symbol: u8, n: usize) {
        if self.len == 0 {
            self.all_same = true;
            self.has_large = false;
        } else if self.symbols[0] != symbol {
            self.all_same = false;
        }
        let stored = (self.len + n).min(ONE_BIT_CAPACITY);
        for slot in self.symbols.iter_mut().take(stored).skip(self.len) {
            *slot = symbol;
        }
        self.has_large |= symbol == Status::LargeDelta as u8;
        self.len += n;
    }

    /// Emits one chunk from the front of what waits.
    fn emit(&mut self, out: &mut Vec<u16>) {
        if self.len == 0 {
            return;
        }
        if self.all_same {
            out.push(((self.symbols[0] as u16) << 13) | self.len.min(MAX_RUN) as u16);
            self.len = 0;
            return;
        }
        // Not a run: at most 14 symbols, all stored.
        let n = self.len.min(ONE_BIT_CAPACITY);
        if n == ONE_BIT_CAPACITY && !self.has_large {
            out.push(one_bit_chunk(&self.symbols));
            self.len = 0;
            return;
        }
        let k = n.min(TWO_BIT_CAPACITY);
        out.push(two_bit_chunk(&self.symbols[..k]));
        self.symbols.copy_within(k..n, 0);
        self.len = n - k;
        let rest = &self.symbols[..self.len];
        self.all_same = rest
            .iter()
            .all(|&s| s == rest.first().copied().unwrap_or(0));
        self.has_large = rest.contains(&(Status::LargeDelta as u8));
    }
}

/// `1 0` then one bit per symbol (received or not), first symbol first.
fn one_bit_chunk(symbols: &[u8]) -> u16 {
    symbols
        .iter()
        .take(ONE_BIT_CAPACITY)
        .enumerate()
        .fold(0x8000, |chunk, (i, &s)| {
            chunk | (u16::from(s != 0) << (13 - i))
        })
}

/// `1 1` then two bits per symbol, first symbol first.
fn two_bit_chunk(symbols: &[u8]) -> u16 {
    symbols
        .iter()
        .take(TWO_BIT_CAPACITY)
        .enumerate()
        .fold(0xc000, |chunk, (i, &s)| {
            chunk | (u16::from(s & 0b11) << (12 - 2 * i))
        })
}

/// A TWCC feedback packet a receiver sent about our packets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TwccFeedback {
    pub base_seq: u16,
    pub feedback_count: u8,
    /// Sequence numbers covered, from `base_seq` (received or not).
    pub status_count: u16,
    /// The received ones, in order: sequence number and arrival in µs on the receiver's
    /// clock (reference time x 64 ms plus the deltas).
    pub received: Vec<(u16, i64)>,
}

impl TwccFeedback {
    /// Sequence numbers covered and reported not received.
    pub fn lost(&self) -> usize {
        usize::from(self.status_count).saturating_sub(self.received.len())
    }
}

/// Reads the FCI of a TransportLayerCC packet: `body` is the RTCP packet after its 4-byte
/// header (sender SSRC first). None if anything is out of bounds, a run is empty or a
/// reserved symbol is used. Never panics; work and memory are bounded by `body`'s length
/// (a run of 8,191 lost packets is counted, not listed).
pub fn parse_feedback(body: &[u8]) -> Option<TwccFeedback> {
    let fixed = body.get(..16)?;
    let base_seq = u16::from_be_bytes([fixed[8], fixed[9]]);
    let status_count = u16::from_be_bytes([fixed[10], fixed[11]]);
    if status_count == 0 {
        return None;
    }
    let reference = i64::from(u32::from_be_bytes([0, fixed[12], fixed[13], fixed[14]]));
    let feedback_count = fixed[15];
    let count = usize::from(status_count);
    // Chunks first, then the deltas: find where the chunks end.
    let mut chunks_len = 0;
    let mut covered = 0usize;
    let mut with_delta = 0usize;
    let mut delta_bytes = 0usize;
    while covered < count {
        let chunk = body.get(16 + chunks_len..18 + chunks_len)?;
        chunks_len += 2;
        let chunk = u16::from_be_bytes([chunk[0], chunk[1]]);
        let mut fail = false;
        let left = count - covered;
        for_each_symbol(chunk, left, |symbol, n| {
            match symbol {
                0 => {}
                1 | 2 => {
                    with_delta += n;
                    delta_bytes += n * usize::from(symbol);
                }
                _ => fail = true,
            }
            covered += n;
        });
        if fail {
            return None;
        }
    }
    let deltas = body.get(16 + chunks_len..16 + chunks_len + delta_bytes)?;
    let mut received = Vec::with_capacity(with_delta);
    let mut time = reference * 64_000;
    let mut at = 0usize;
    let mut seq = base_seq;
    let mut covered = 0usize;
    for chunk in body[16..16 + chunks_len].chunks_exact(2) {
        let chunk = u16::from_be_bytes([chunk[0], chunk[1]]);
        let left = count - covered;
        for_each_symbol(chunk, left, |symbol, n| {
            if symbol == 0 {
                seq = seq.wrapping_add(n as u16);
            } else {
                for _ in 0..n {
                    let ticks = if symbol == 1 {
                        i64::from(deltas[at])
                    } else {
                        i64::from(i16::from_be_bytes([deltas[at], deltas[at + 1]]))
                    };
                    at += usize::from(symbol);
                    time += ticks * TICK_US as i64;
                    received.push((seq, time));
                    seq = seq.wrapping_add(1);
                }
            }
            covered += n;
        });
    }
    Some(TwccFeedback {
        base_seq,
        feedback_count,
        status_count,
        received,
    })
}

/// Calls `f(symbol, n)` for the statuses of one packet status chunk, in order, covering at
/// most `left` of them (runs are passed whole; an empty run is symbol 3, refused by the
/// caller).
fn for_each_symbol(chunk: u16, left: usize, mut f: impl FnMut(u8, usize)) {
    if chunk & 0x8000 == 0 {
        let run = usize::from(chunk & 0x1fff);
        if run == 0 {
            f(3, 0);
        } else {
            f(((chunk >> 13) & 0b11) as u8, run.min(left));
        }
    } else if chunk & 0x4000 == 0 {
        for i in 0..ONE_BIT_CAPACITY.min(left) {
            f(((chunk >> (13 - i)) & 1) as u8, 1);
        }
    } else {
        for i in 0..TWO_BIT_CAPACITY.min(left) {
            f(((chunk >> (12 - 2 * i)) & 0b11) as u8, 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rtc_rtcp::transport_feedbacks::transport_layer_cc::{
        PacketStatusChunk, SymbolTypeTcc, TransportLayerCc,
    };
    use std::collections::HashMap;

    /// Proptest cases: `HEARTH_PROPTEST_CASES` when set (long runs), else 256.
    fn cases() -> u32 {
        super::super::proptest_cases()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A feedback packet as rtc-rtcp reads it, statuses expanded.
    #[derive(Debug)]
    struct Decoded {
        base: u16,
        count: u8,
        media: u32,
        /// Per sequence number from `base`: arrival in µs since the recorder's first packet.
        statuses: Vec<(u16, Option<i64>)>,
        large: usize,
    }

    impl Decoded {
        fn received(&self) -> Vec<(u16, i64)> {
            self.statuses
                .iter()
                .filter_map(|&(s, t)| Some((s, t?)))
                .collect()
        }

        fn lost(&self) -> Vec<u16> {
            self.statuses
                .iter()
                .filter(|(_, t)| t.is_none())
                .map(|&(s, _)| s)
                .collect()
        }
    }

    /// Parses one feedback packet with rtc-rtcp (through the compound parser, so the header
    /// and padding are checked too) and expands it.
    fn decode(bytes: &[u8]) -> Decoded {
        assert_eq!(bytes.len() % 4, 0);
        assert!(bytes.len() <= MAX_FEEDBACK_LEN, "{} bytes", bytes.len());
        let packets = rtc_rtcp::packet::unmarshal(&mut &bytes[..]).expect("rtc-rtcp parses it");
        assert_eq!(packets.len(), 1);
        let cc = packets[0]
            .as_any()
            .downcast_ref::<TransportLayerCc>()
            .expect("a TransportLayerCC");
        let count = usize::from(cc.packet_status_count);
        let mut symbols = Vec::new();
        for chunk in &cc.packet_chunks {
            match chunk {
                PacketStatusChunk::RunLengthChunk(r) => {
                    symbols.extend(std::iter::repeat_n(
                        r.packet_status_symbol,
                        usize::from(r.run_length),
                    ));
                }
                PacketStatusChunk::StatusVectorChunk(v) => symbols.extend(&v.symbol_list),
            }
        }
        assert!(symbols.len() >= count);
        // Every chunk but the last holds at least 7 statuses.
        assert!(cc.packet_chunks.len() <= count / 7 + 1);
        symbols.truncate(count);
        let mut time = i64::from(cc.reference_time) * 64_000;
        let mut deltas = cc.recv_deltas.iter();
        let mut statuses = Vec::new();
        let mut large = 0;
        for (i, symbol) in symbols.iter().enumerate() {
            let seq = cc.base_sequence_number.wrapping_add(i as u16);
            match symbol {
                SymbolTypeTcc::PacketNotReceived => statuses.push((seq, None)),
                SymbolTypeTcc::PacketReceivedSmallDelta
                | SymbolTypeTcc::PacketReceivedLargeDelta => {
                    let d = deltas.next().expect("a delta per received packet");
                    assert_eq!(d.type_tcc_packet, *symbol);
                    if *symbol == SymbolTypeTcc::PacketReceivedLargeDelta {
                        large += 1;
                        // Large only where small would not do.
                        assert!(!(0..=255 * 250).contains(&d.delta));
                    }
                    time += d.delta;
                    statuses.push((seq, Some(time)));
                }
                SymbolTypeTcc::PacketReceivedWithoutDelta => panic!("reserved symbol"),
            }
        }
        assert!(deltas.next().is_none());
        assert_eq!(cc.sender_ssrc, 0x5e5e_5e5e);
        // Hearth's own reader (the send side's) reads the same.
        let ours = parse_feedback(&bytes[4..]).unwrap_or_else(|| {
            panic!(
                "parse_feedback reads it: count {count} chunks {:?}",
                cc.packet_chunks.len()
            )
        });
        assert_eq!(ours.base_seq, cc.base_sequence_number);
        assert_eq!(ours.feedback_count, cc.fb_pkt_count);
        assert_eq!(usize::from(ours.status_count), count);
        let received: Vec<(u16, i64)> = statuses
            .iter()
            .filter_map(|&(s, t)| Some((s, t?)))
            .collect();
        assert_eq!(ours.received, received);
        Decoded {
            base: cc.base_sequence_number,
            count: cc.fb_pkt_count,
            media: cc.media_ssrc,
            statuses,
            large,
        }
    }

    fn drain(twcc: &mut TwccRecorder, now: Instant) -> Vec<Decoded> {
        let mut out = Vec::new();
        while let Some(bytes) = twcc.poll_feedback(now) {
            out.push(decode(&bytes));
            assert!(
                out.len() <= 4 * MAX_KEPT_PACKETS,
                "poll_feedback does not end"
            );
        }
        out
    }

    fn recorder() -> TwccRecorder {
        TwccRecorder::new(0x5e5e_5e5e)
    }

    #[test]
    fn byte_vector() {
        let t0 = Instant::now();
        let mut twcc = recorder();
        twcc.on_packet(t0, 0xaabb_ccdd, 10);
        twcc.on_packet(t0 + ms(1), 0xaabb_ccdd, 11);
        twcc.on_packet(t0 + ms(2), 0xaabb_ccdd, 13);
        twcc.on_packet(t0 + ms(70), 0xaabb_ccdd, 14);
        assert_eq!(twcc.poll_feedback(t0 + ms(99)), None);
        assert_eq!(twcc.poll_timeout(), Some(t0 + ms(100)));
        let bytes = twcc.poll_feedback(t0 + ms(100)).expect("due");
        assert_eq!(
            bytes,
            [
                0xaf, 0xcd, 0x00, 0x06, // V=2 P=1 FMT=15, PT=205, length 6
                0x5e, 0x5e, 0x5e, 0x5e, // sender SSRC
                0xaa, 0xbb, 0xcc, 0xdd, // media SSRC
                0x00, 0x0a, 0x00, 0x05, // base seq 10, status count 5
                0x00, 0x00, 0x00, 0x00, // reference time 0, feedback count 0
                0xd4, 0x60, // two-bit vector: small, small, lost, small, large, -, -
                0x00, 0x04, 0x04, // deltas: 0, 1 ms, 1 ms (250 µs units)
                0x01, 0x10, // large delta: 68 ms = 272
                0x01, // padding: one octet, counting itself
            ]
        );
        assert_eq!(twcc.poll_feedback(t0 + ms(100)), None);
        assert_eq!(twcc.poll_timeout(), None);
    }

    #[test]
    fn in_order() {
        let t0 = Instant::now();
        let mut twcc = recorder();
        for i in 0..10u16 {
            twcc.on_packet(t0 + ms(u64::from(i) * 5), 7, 100 + i);
        }
        let fb = drain(&mut twcc, t0 + ms(100));
        assert_eq!(fb.len(), 1);
        assert_eq!((fb[0].base, fb[0].count, fb[0].media), (100, 0, 7));
        let want: Vec<(u16, i64)> = (0..10).map(|i| (100 + i, i64::from(i) * 5000)).collect();
        assert_eq!(fb[0].received(), want);
        // The next feedback continues: count 1, base 110, reference time moves on.
        for i in 10..20u16 {
            twcc.on_packet(t0 + ms(100 + u64::from(i)), 7, 100 + i);
        }
        assert_eq!(twcc.poll_timeout(), Some(t0 + ms(200)));
        let fb = drain(&mut twcc, t0 + ms(200));
        assert_eq!((fb[0].base, fb[0].count), (110, 1));
        let want: Vec<(u16, i64)> = (10..20)
            .map(|i| (100 + i, (100 + i64::from(i)) * 1000))
            .collect();
        assert_eq!(fb[0].received(), want);
    }

    #[test]
    fn lossy() {
        let t0 = Instant::now();
        let mut twcc = recorder();
        for seq in (0..30u16).filter(|s| s % 5 != 0 || *s == 0) {
            twcc.on_packet(t0 + ms(u64::from(seq)), 1, seq);
        }
        let fb = drain(&mut twcc, t0 + ms(100));
        assert_eq!(fb.len(), 1);
        assert_eq!(fb[0].lost(), vec![5, 10, 15, 20, 25]);
        assert_eq!(fb[0].statuses.len(), 30);
        // Loss at the front of the next feedback is listed from where the last one ended.
        twcc.on_packet(t0 + ms(150), 1, 33);
        let fb = drain(&mut twcc, t0 + ms(200));
        assert_eq!(fb[0].base, 30);
        assert_eq!(fb[0].lost(), vec![30, 31, 32]);
        assert_eq!(fb[0].received(), vec![(33, 150_000)]);
        // A long loss run: one run-length chunk.
        twcc.on_packet(t0 + ms(250), 1, 3000);
        let fb = drain(&mut twcc, t0 + ms(300));
        assert_eq!((fb[0].base, fb[0].statuses.len()), (34, 2967));
    }

    #[test]
    fn reordered_and_duplicates() {
        let t0 = Instant::now();
        let mut twcc = recorder();
        for (i, seq) in [1u16, 3, 2, 5, 4, 4, 3, 6].into_iter().enumerate() {
            twcc.on_packet(t0 + ms(i as u64 * 10), 1, seq);
        }
        let fb = drain(&mut twcc, t0 + ms(100));
        assert_eq!(fb.len(), 1);
        // Duplicates keep the first arrival; reordered arrivals give negative deltas.
        assert_eq!(
            fb[0].received(),
            vec![
                (1, 0),
                (2, 20_000),
                (3, 10_000),
                (4, 40_000),
                (5, 30_000),
                (6, 70_000)
            ]
        );
        assert_eq!(fb[0].large, 2);
    }

    #[test]
    fn late_packet_after_its_feedback() {
        let t0 = Instant::now();
        let mut twcc = recorder();
        for seq in (0..10u16).filter(|&s| s != 5) {
            twcc.on_packet(t0 + ms(u64::from(seq)), 1, seq);
        }
        let fb = drain(&mut twcc, t0 + ms(100));
        assert_eq!(fb[0].lost(), vec![5]);
        twcc.on_packet(t0 + ms(110), 1, 5);
        twcc.on_packet(t0 + ms(111), 1, 10);
        let fb = drain(&mut twcc, t0 + ms(200));
        // 5 is reported received; 6..=9 are listed again as not received (the sender
        // ignores statuses for packets it already has feedback for).
        assert_eq!(fb[0].base, 5);
        assert_eq!(fb[0].received(), vec![(5, 110_000), (10, 111_000)]);
        assert_eq!(fb[0].lost(), vec![6, 7, 8, 9]);
        // Far older than what was reported: dropped.
        twcc.on_packet(t0 + ms(210), 1, 11);
        twcc.on_packet(t0 + ms(211), 1, 65000);
        let fb = drain(&mut twcc, t0 + ms(300));
        assert_eq!(fb[0].received(), vec![(11, 210_000)]);
    }

    #[test]
    fn wraps_around() {
        let t0 = Instant::now();
        let mut twcc = recorder();
        let seqs: Vec<u16> = (65530..=65535).chain(0..6).collect();
        for (i, &seq) in seqs.iter().enumerate() {
            twcc.on_packet(t0 + ms(i as u64), 1, seq);
        }
        let fb = drain(&mut twcc, t0 + ms(100));
        assert_eq!(fb.len(), 1);
        assert_eq!(fb[0].base, 65530);
        let got: Vec<u16> = fb[0].received().into_iter().map(|(s, _)| s).collect();
        assert_eq!(got, seqs);
        // Reordered across the wrap.
        let mut twcc = recorder();
        for (i, seq) in [65534u16, 0, 65535, 1].into_iter().enumerate() {
            twcc.on_packet(t0 + ms(i as u64), 1, seq);
        }
        let fb = drain(&mut twcc, t0 + ms(100));
        assert_eq!(fb[0].base, 65534);
        assert!(fb[0].lost().is_empty());
        assert_eq!(fb[0].statuses.len(), 4);
    }

    #[test]
    fn hundred_packets_make_feedback_due() {
        let t0 = Instant::now();
        let mut twcc = recorder();
        for seq in 0..99u16 {
            twcc.on_packet(t0, 1, seq);
        }
        assert_eq!(twcc.poll_timeout(), Some(t0 + ms(100)));
        twcc.on_packet(t0 + ms(3), 1, 99);
        assert_eq!(twcc.poll_timeout(), Some(t0 + ms(3)));
        let fb = drain(&mut twcc, t0 + ms(3));
        assert_eq!(fb.len(), 1);
        assert_eq!(fb[0].statuses.len(), 100);
        // The rhythm continues from the last feedback; after a pause, at once.
        twcc.on_packet(t0 + ms(10), 1, 100);
        assert_eq!(twcc.poll_timeout(), Some(t0 + ms(103)));
        drain(&mut twcc, t0 + ms(103));
        twcc.on_packet(t0 + ms(500), 1, 101);
        assert_eq!(twcc.poll_timeout(), Some(t0 + ms(500)));
    }

    #[test]
    fn delta_beyond_range_splits_feedback() {
        let t0 = Instant::now();
        let mut twcc = recorder();
        twcc.on_packet(t0, 1, 1);
        twcc.on_packet(t0 + ms(10_000), 1, 2); // 10 s later: beyond a large delta
        twcc.on_packet(t0 + ms(10_001), 1, 3);
        let fb = drain(&mut twcc, t0 + ms(10_001));
        assert_eq!(fb.len(), 2);
        assert_eq!(fb[0].received(), vec![(1, 0)]);
        assert_eq!(fb[1].received(), vec![(2, 10_000_000), (3, 10_001_000)]);
        assert_eq!((fb[0].count, fb[1].count), (0, 1));
    }

    #[test]
    fn huge_gap_starts_new_feedback() {
        let t0 = Instant::now();
        let mut twcc = recorder();
        for seq in (0..10u16).chain(6000..6010) {
            twcc.on_packet(t0, 1, seq);
        }
        let fb = drain(&mut twcc, t0 + ms(100));
        assert_eq!(fb.len(), 2);
        assert_eq!((fb[0].base, fb[0].statuses.len()), (0, 10));
        assert_eq!((fb[1].base, fb[1].statuses.len()), (6000, 10));
        // After a feedback, a jump over 4096 does not list the gap either.
        twcc.on_packet(t0 + ms(150), 1, 20000);
        let fb = drain(&mut twcc, t0 + ms(200));
        assert_eq!((fb[0].base, fb[0].statuses.len()), (20000, 1));
    }

    #[test]
    fn counter_restart_is_followed() {
        let t0 = Instant::now();
        let mut twcc = recorder();
        for seq in 40000..40010u16 {
            twcc.on_packet(t0, 1, seq);
        }
        drain(&mut twcc, t0 + ms(100));
        // 10000 behind: the first is dropped, the second confirms the restart.
        for seq in 30000..30005u16 {
            twcc.on_packet(t0 + ms(110), 1, seq);
        }
        let fb = drain(&mut twcc, t0 + ms(210));
        assert_eq!(fb.len(), 1);
        assert_eq!(fb[0].base, 30001);
        assert_eq!(fb[0].statuses.len(), 4);
        assert!(fb[0].lost().is_empty());
        // 25536 ahead (mod 2^16) is an ordinary forward jump: a new feedback, no gap listed.
        for seq in 55540..55545u16 {
            twcc.on_packet(t0 + ms(300), 1, seq);
        }
        let fb = drain(&mut twcc, t0 + ms(400));
        assert_eq!((fb[0].base, fb[0].statuses.len()), (55540, 5));
    }

    #[test]
    fn memory_and_size_are_bounded() {
        let t0 = Instant::now();
        let mut twcc = recorder();
        // 3000 packets, every other one lost, without anyone polling.
        for i in 0..3000u16 {
            twcc.on_packet(t0 + Duration::from_micros(u64::from(i) * 300), 1, i * 2);
            assert!(twcc.pending.len() <= MAX_KEPT_PACKETS);
        }
        let fb = drain(&mut twcc, t0 + ms(1000));
        assert!(fb.len() > 1, "split by size");
        let received: Vec<u16> = fb
            .iter()
            .flat_map(|f| f.received())
            .map(|(s, _)| s)
            .collect();
        // The newest 1024 arrivals, each once; the evicted ones are not reported as lost.
        let want: Vec<u16> = (3000 - MAX_KEPT_PACKETS as u16..3000)
            .map(|i| i * 2)
            .collect();
        assert_eq!(received, want);
        // The first feedback starts right after the last evicted arrival.
        assert_eq!(fb[0].base, want[0] - 1);
        assert_eq!(fb[0].lost()[0], want[0] - 1);
        let counts: Vec<u8> = fb.iter().map(|f| f.count).collect();
        assert_eq!(counts, (0..fb.len() as u8).collect::<Vec<_>>());
        assert!(twcc.pending.is_empty());
        assert_eq!(twcc.poll_timeout(), None);
    }

    #[test]
    fn chunk_encoder_vectors() {
        use Status::*;
        fn encode(statuses: &[Status]) -> Vec<u16> {
            let mut enc = ChunkEncoder::default();
            let mut out = Vec::new();
            for &s in statuses {
                enc.push(s, 1, &mut out);
            }
            enc.finish(&mut out);
            out
        }
        // Run of 20 small deltas: T=0, S=01, length 20.
        assert_eq!(encode(&[SmallDelta; 20]), [0x2014]);
        // 3000 lost in one push.
        let mut enc = ChunkEncoder::default();
        let mut out = Vec::new();
        enc.push(NotReceived, 3000, &mut out);
        enc.finish(&mut out);
        assert_eq!(out, [0x0bb8]);
        // 10000 lost: a full run of 8191, then the rest.
        let mut out = Vec::new();
        enc.push(NotReceived, 10000, &mut out);
        enc.finish(&mut out);
        assert_eq!(out, [0x1fff, 10000 - 8191]);
        // Alternating received/lost, 14 of them: one-bit vector 10 10101010101010.
        let alt: Vec<Status> = (0..14)
            .map(|i| if i % 2 == 0 { SmallDelta } else { NotReceived })
            .collect();
        assert_eq!(encode(&alt), [0xaaaa]);
        // 8 alternating, then a large delta: a two-bit vector of 7 (1,0,1,0,1,0,1), then
        // the rest (0, 2) in another.
        let mut s = alt[..8].to_vec();
        s.push(LargeDelta);
        assert_eq!(encode(&s), [0xd111, 0xc800]);
        // 8 small then a large: the run goes out as a run.
        let mut s = vec![SmallDelta; 8];
        s.push(LargeDelta);
        assert_eq!(encode(&s), [0x2008, 0x4001]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(cases()))]

        #[test]
        fn chunk_encoder_round_trips(
            runs in proptest::collection::vec((0u8..3, 1usize..40), 0..40)
        ) {
            let mut enc = ChunkEncoder::default();
            let mut out = Vec::new();
            let mut want = Vec::new();
            for (s, n) in runs {
                let status = [Status::NotReceived, Status::SmallDelta, Status::LargeDelta][usize::from(s)];
                enc.push(status, n, &mut out);
                want.extend(std::iter::repeat_n(s, n));
                prop_assert!(enc.pending_chunks() <= 1);
            }
            enc.finish(&mut out);
            let mut got = Vec::new();
            for &chunk in &out {
                if chunk & 0x8000 == 0 {
                    got.extend(std::iter::repeat_n((chunk >> 13) as u8 & 3, usize::from(chunk & 0x1fff)));
                } else if chunk & 0x4000 == 0 {
                    got.extend((0..14).map(|i| (chunk >> (13 - i)) as u8 & 1));
                } else {
                    got.extend((0..7).map(|i| (chunk >> (12 - 2 * i)) as u8 & 3));
                }
            }
            prop_assert!(got.len() >= want.len());
            prop_assert!(got[want.len()..].iter().all(|&s| s == 0), "padding symbols are 0");
            got.truncate(want.len());
            prop_assert_eq!(got, want.clone());
            prop_assert!(out.len() <= want.len() / 7 + 1);
        }

        #[test]
        fn arbitrary_arrivals_never_panic(
            ops in proptest::collection::vec((any::<u16>(), 0u64..20_000_000, any::<bool>(), any::<bool>()), 0..400)
        ) {
            // Arbitrary seqs at arbitrary (not monotonic) times, polls at random.
            let t0 = Instant::now();
            let mut twcc = recorder();
            let mut last = t0;
            for (seq, offset_us, poll, _) in ops {
                let now = t0 + Duration::from_micros(offset_us);
                twcc.on_packet(now, 1, seq);
                prop_assert!(twcc.pending.len() <= MAX_KEPT_PACKETS);
                prop_assert_eq!(twcc.deadline.is_some(), !twcc.pending.is_empty());
                if poll {
                    drain(&mut twcc, now);
                }
                last = last.max(now);
            }
            drain(&mut twcc, last + ms(200));
            prop_assert!(twcc.pending.is_empty());
            prop_assert_eq!(twcc.poll_timeout(), None);
        }

        #[test]
        fn realistic_arrivals_are_reported_exactly(
            ops in proptest::collection::vec((-4i32..12, 0u64..30_000, any::<bool>()), 1..600),
            start: u16,
        ) {
            // Mostly forward seqs with loss and reordering, monotonic time with gaps up to
            // 30 ms, polls whenever due (as the driver does).
            let t0 = Instant::now();
            let mut twcc = recorder();
            let mut seq = start;
            let mut now = t0;
            let mut epoch = None;
            let mut arrivals: HashMap<u16, Vec<i64>> = HashMap::new();
            let mut reported: HashMap<u16, usize> = HashMap::new();
            let mut feedbacks = Vec::new();
            for (step, dt_us, dup) in ops {
                now += Duration::from_micros(dt_us);
                seq = seq.wrapping_add_signed(step as i16);
                twcc.on_packet(now, 1, seq);
                let epoch = *epoch.get_or_insert(now);
                let tick = (now - epoch).as_micros() as i64 / 250 * 250;
                arrivals.entry(seq).or_default().push(tick);
                if dup {
                    twcc.on_packet(now, 1, seq);
                }
                if twcc.poll_timeout().is_some_and(|t| t <= now) {
                    feedbacks.extend(drain(&mut twcc, now));
                }
            }
            feedbacks.extend(drain(&mut twcc, now + ms(100)));
            for (i, fb) in feedbacks.iter().enumerate() {
                prop_assert_eq!(usize::from(fb.count), i % 256);
                for (s, t) in fb.received() {
                    let times = arrivals.get(&s).map(Vec::as_slice).unwrap_or(&[]);
                    prop_assert!(times.contains(&t), "seq {} at {} not among {:?}", s, t, times);
                    *reported.entry(s).or_default() += 1;
                }
            }
            // Every distinct seq that arrived in time is reported received at least once
            // (late arrivals more than 256 behind may be dropped; steps here stay within 4).
            for s in arrivals.keys() {
                prop_assert!(reported.contains_key(s), "seq {} never reported", s);
            }
        }
    }

    /// Feedback that lies is refused whole, never trusted for more than its bytes: an
    /// empty run, a reserved symbol, deltas missing; a claim of 65,535 lost packets is
    /// counted without listing them; a sequence wrap and negative deltas read as such.
    #[test]
    fn lying_feedback_is_refused_or_bounded() {
        let fixed = |base: u16, count: u16| {
            let mut b = vec![0x11, 0x22, 0x33, 0x44, 0xaa, 0xbb, 0xcc, 0xdd];
            b.extend_from_slice(&base.to_be_bytes());
            b.extend_from_slice(&count.to_be_bytes());
            b.extend_from_slice(&[0x00, 0x00, 0x02, 0x07]); // reference 2 (128 ms), count 7
            b
        };
        // Empty run.
        let mut b = fixed(1, 1);
        b.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
        assert_eq!(parse_feedback(&b), None);
        // Reserved symbol (two-bit vector: 0b11 first).
        let mut b = fixed(1, 1);
        b.extend_from_slice(&[0xf0, 0x00, 0x00, 0x00]);
        assert_eq!(parse_feedback(&b), None);
        // Run of 8,191 small deltas with 2 bytes of deltas.
        let mut b = fixed(1, 8191);
        b.extend_from_slice(&[0x3f, 0xff, 0x01, 0x01]);
        assert_eq!(parse_feedback(&b), None);
        // Chunks cut short.
        assert_eq!(parse_feedback(&fixed(1, 20)), None);
        assert_eq!(parse_feedback(&fixed(1, 0)), None);
        assert_eq!(parse_feedback(&[0; 15]), None);
        // 65,535 statuses, all lost: nine runs, nothing listed.
        let mut b = fixed(5, 65_535);
        for _ in 0..9 {
            b.extend_from_slice(&[0x1f, 0xff]);
        }
        let fb = parse_feedback(&b).unwrap();
        assert_eq!(fb.lost(), 65_535);
        assert!(fb.received.is_empty());
        // Across the wrap: 65535 received (+1 ms), 0 lost, 1 received 2 ms before it.
        let mut b = fixed(65_535, 3);
        b.extend_from_slice(&[0xd2, 0x00]); // two-bit vector: small, none, large
        b.extend_from_slice(&[0x04, 0xff, 0xf8, 0x00]); // +4 ticks, -8 ticks, pad
        let fb = parse_feedback(&b).unwrap();
        assert_eq!(fb.received, vec![(65_535, 129_000), (1, 127_000)]);
        assert_eq!(fb.lost(), 1);
        assert_eq!(fb.feedback_count, 7);
    }
}
