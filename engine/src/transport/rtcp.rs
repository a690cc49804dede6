//! RTCP for the server's transport: what a remote sends is translated into [`Feedback`] for
//! the SFU ([`parse_compound`]), and the reports and feedback the server sends are built as
//! bytes (RFC 3550 §6.4, RFC 4585 §6.2.1 and §6.3.1, RFC 5104 §4.3.1).
//!
//! Everything here works on plaintext RTCP: SRTCP protection is removed before
//! [`parse_compound`] sees a datagram and applied after the builders.
//!
//! The parser is a small bounds-checked reader of its own rather than
//! `rtc_rtcp::packet::unmarshal`. That one is safe against lying lengths (it checks every
//! length against the bytes left, so it allocates no more than the datagram's size), but it
//! boxes every sub-packet, materialises kinds the SFU ignores (SDES, XR, TWCC) and stops at
//! the first error without returning what came before; the abuse limits need one pass over
//! the datagram anyway. rtc-rtcp checks the builders' output in the tests.
//!
//! Hot path: [`parse_compound`] runs for every RTCP datagram a participant sends. It
//! allocates only for what it returns (one `Vec` of sequence numbers per NACKed stream); its
//! bookkeeping for the limits lives on the stack.

use crate::media::Ssrc;
use crate::nack::nack_pairs;
use crate::stats::{NtpTime, ReportBlock, SenderInfo};

use super::twcc::{TwccFeedback, parse_feedback};

/// Datagrams longer than this are rejected whole (counted as malformed).
pub const MAX_RTCP_DATAGRAM: usize = 1500;
/// NACKed sequence numbers kept per datagram, over all media SSRCs, after de-duplication.
pub const MAX_NACK_SEQS_PER_DATAGRAM: usize = 256;
/// Distinct media SSRCs that keyframe requests are reported for per datagram.
pub const MAX_KEYFRAME_SSRCS_PER_DATAGRAM: usize = 8;
/// Report blocks (from RRs and SRs together) reported per datagram. A 1500-byte datagram
/// holds at most 61, so this is a second line behind [`MAX_RTCP_DATAGRAM`].
pub const MAX_REPORT_BLOCKS_PER_DATAGRAM: usize = 64;

/// Report blocks per RR packet: the 5-bit count field's maximum.
const MAX_BLOCKS_PER_RR: usize = 31;
/// NACK FCI entries per built NACK packet. Keeps the 16-bit length field far from overflow;
/// a caller that wants the result in one MTU passes at most ~250 distinct sequence numbers.
const MAX_PAIRS_PER_NACK: usize = 256;

const HEADER_LEN: usize = 4;
const REPORT_BLOCK_LEN: usize = 24;
/// SR body before its report blocks: SSRC, NTP (8), RTP timestamp, packet and octet counts.
const SENDER_INFO_LEN: usize = 24;
/// Feedback body before the FCI: sender SSRC and media SSRC.
const FEEDBACK_COMMON_LEN: usize = 8;
const FIR_ENTRY_LEN: usize = 8;
const NACK_ENTRY_LEN: usize = 4;

const PT_SR: u8 = 200;
const PT_RR: u8 = 201;
const PT_SDES: u8 = 202;
const PT_BYE: u8 = 203;
/// Transport-layer feedback (RFC 4585): generic NACK, TWCC, ...
const PT_RTPFB: u8 = 205;
/// Payload-specific feedback (RFC 4585): PLI, FIR, REMB, ...
const PT_PSFB: u8 = 206;
/// RTCP packet types occupy 192..=223 (RFC 5761 §4); other values mean the data is not RTCP.
const PT_RANGE: std::ops::RangeInclusive<u8> = 192..=223;
const FMT_NACK: u8 = 1;
const FMT_PLI: u8 = 1;
const FMT_FIR: u8 = 4;
const FMT_TWCC: u8 = 15;
/// TWCC feedback packets read per datagram (a receiver sends one per 50 to 100 ms).
const MAX_TWCC_PER_DATAGRAM: u32 = 4;

/// RTCP from the remote, translated for the SFU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Feedback {
    /// A PLI, or one FIR entry, asked for a keyframe of `media_ssrc`.
    KeyframeRequest { media_ssrc: Ssrc },
    /// Generic NACK: these packets of `media_ssrc` are missing (de-duplicated, in the order
    /// first seen, never empty).
    Nack { media_ssrc: Ssrc, seqs: Vec<u16> },
    /// A report block from an RR or SR.
    Report(ReportBlock),
    /// The sender info of an SR: `ntp` and `rtp_ts` name the same instant on stream `ssrc`.
    SenderReport {
        ssrc: Ssrc,
        ntp: NtpTime,
        rtp_ts: u32,
    },
    /// Transport-wide congestion control feedback about the packets we sent (boxed: it is
    /// large and rare next to the other kinds).
    TransportCc(Box<TwccFeedback>),
}

/// What [`parse_compound`] saw in one datagram.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ParseStats {
    /// RTCP packets read whole, skipped kinds (SDES, BYE, REMB, TWCC, ...) included.
    pub packets: u32,
    /// 1 when the datagram was rejected or parsing stopped at a malformed packet, else 0.
    pub malformed: u32,
    /// Keyframe requests not reported: repeats for an SSRC already requested in the
    /// datagram, and requests for SSRCs beyond [`MAX_KEYFRAME_SSRCS_PER_DATAGRAM`].
    pub keyframe_requests_coalesced: u32,
    /// Distinct NACKed sequence numbers beyond [`MAX_NACK_SEQS_PER_DATAGRAM`].
    pub nack_seqs_dropped: u32,
    /// Report blocks beyond [`MAX_REPORT_BLOCKS_PER_DATAGRAM`].
    pub report_blocks_dropped: u32,
}

/// Parses one (compound) RTCP datagram and appends what it says to `out`.
///
/// Order in `out`: sender reports, report blocks and keyframe requests in datagram order;
/// NACKs are merged into one [`Feedback::Nack`] per media SSRC, placed where that SSRC's
/// first NACK was.
///
/// Abuse limits: at most one keyframe request per media SSRC and
/// [`MAX_KEYFRAME_SSRCS_PER_DATAGRAM`] SSRCs; NACKed sequence numbers de-duplicated per
/// media SSRC and at most [`MAX_NACK_SEQS_PER_DATAGRAM`] in total; at most
/// [`MAX_REPORT_BLOCKS_PER_DATAGRAM`] report blocks. A datagram longer than
/// [`MAX_RTCP_DATAGRAM`] (or empty) is rejected as malformed. A packet with a bad header
/// (version not 2, type outside the RTCP range, length running past the end, length field 0
/// where RFC 3550 does not allow it, bad padding) or a body too short for what its header
/// promises ends parsing there; what came before stays in `out`.
///
/// Reduced-size RTCP (RFC 5506) is accepted: the first packet need not be an SR or RR.
/// FIR sequence numbers are not tracked; repeated FIRs are throttled where all keyframe
/// requests are (`crate::keyframe`).
pub fn parse_compound(data: &[u8], out: &mut Vec<Feedback>) -> ParseStats {
    parse_limited(data, MAX_RTCP_DATAGRAM, out)
}

/// Builds RR packets of at most 31 report blocks each, concatenated into one compound
/// packet; no blocks gives one RR with none.
pub fn receiver_reports(sender_ssrc: u32, blocks: &[ReportBlock]) -> Vec<u8> {
    let packets = blocks.len().div_ceil(MAX_BLOCKS_PER_RR).max(1);
    let mut buf = Vec::with_capacity(packets * 8 + blocks.len() * REPORT_BLOCK_LEN);
    if blocks.is_empty() {
        put_receiver_report(&mut buf, sender_ssrc, &[]);
    }
    for chunk in blocks.chunks(MAX_BLOCKS_PER_RR) {
        put_receiver_report(&mut buf, sender_ssrc, chunk);
    }
    buf
}

/// Builds an SR without report blocks.
pub fn sender_report(ssrc: u32, info: &SenderInfo) -> Vec<u8> {
    let mut buf = Vec::with_capacity(HEADER_LEN + SENDER_INFO_LEN);
    put_header(&mut buf, 0, PT_SR, HEADER_LEN + SENDER_INFO_LEN);
    put_u32(&mut buf, ssrc);
    buf.extend_from_slice(&info.ntp.0.to_be_bytes());
    put_u32(&mut buf, info.rtp_ts);
    put_u32(&mut buf, info.packets);
    put_u32(&mut buf, info.octets);
    buf
}

/// Builds a picture loss indication (PSFB, FMT 1) asking `media_ssrc` for a keyframe.
pub fn pli(sender_ssrc: u32, media_ssrc: u32) -> Vec<u8> {
    let mut buf = Vec::with_capacity(HEADER_LEN + FEEDBACK_COMMON_LEN);
    put_header(&mut buf, FMT_PLI, PT_PSFB, HEADER_LEN + FEEDBACK_COMMON_LEN);
    put_u32(&mut buf, sender_ssrc);
    put_u32(&mut buf, media_ssrc);
    buf
}

/// Builds a generic NACK (RTPFB, FMT 1) for `seqs` of `media_ssrc`; no seqs gives no bytes.
///
/// The PID/BLP pairs come from [`nack_pairs`], so `seqs` in ascending (wrapping) order pack
/// best. More than 256 pairs are spread over several NACK packets in the one compound.
pub fn nack(sender_ssrc: u32, media_ssrc: u32, seqs: &[u16]) -> Vec<u8> {
    if seqs.is_empty() {
        return Vec::new();
    }
    let pairs = nack_pairs(seqs);
    let packets = pairs.len().div_ceil(MAX_PAIRS_PER_NACK);
    let mut buf = Vec::with_capacity(
        packets * (HEADER_LEN + FEEDBACK_COMMON_LEN) + pairs.len() * NACK_ENTRY_LEN,
    );
    for chunk in pairs.chunks(MAX_PAIRS_PER_NACK) {
        let len = HEADER_LEN + FEEDBACK_COMMON_LEN + chunk.len() * NACK_ENTRY_LEN;
        put_header(&mut buf, FMT_NACK, PT_RTPFB, len);
        put_u32(&mut buf, sender_ssrc);
        put_u32(&mut buf, media_ssrc);
        for &(pid, blp) in chunk {
            buf.extend_from_slice(&pid.to_be_bytes());
            buf.extend_from_slice(&blp.to_be_bytes());
        }
    }
    buf
}

// ---------------------------------------------------------------------------------------
// Parsing

/// [`parse_compound`] with the datagram limit as a parameter, so the tests can reach the
/// report-block limit, which a 1500-byte datagram cannot.
fn parse_limited(data: &[u8], max_datagram: usize, out: &mut Vec<Feedback>) -> ParseStats {
    let mut stats = ParseStats::default();
    if data.is_empty() || data.len() > max_datagram {
        stats.malformed = 1;
        return stats;
    }
    let mut state = DatagramState::new(out.len());
    let mut rest = data;
    while !rest.is_empty() {
        let Some((packet, tail)) = split_packet(rest) else {
            stats.malformed = 1;
            break;
        };
        rest = tail;
        if read_packet(&packet, &mut state, out, &mut stats).is_none() {
            stats.malformed = 1;
            break;
        }
        stats.packets += 1;
    }
    stats
}

/// One RTCP packet of a compound: its header fields and its body (after the 4-byte header,
/// without padding).
struct Packet<'a> {
    /// The 5-bit count / FMT field.
    count: u8,
    packet_type: u8,
    body: &'a [u8],
}

/// Splits the first RTCP packet off `data`; `None` when its header is unusable.
fn split_packet(data: &[u8]) -> Option<(Packet<'_>, &[u8])> {
    let header = data.get(..HEADER_LEN)?;
    let (b0, packet_type) = (header[0], header[1]);
    let length_words = u16::from_be_bytes([header[2], header[3]]);
    if b0 >> 6 != 2 || !PT_RANGE.contains(&packet_type) {
        return None;
    }
    let count = b0 & 0x1f;
    // Length 0 (a bare header) is only meaningful for an SDES or BYE with count 0.
    if length_words == 0 && !(count == 0 && matches!(packet_type, PT_SDES | PT_BYE)) {
        return None;
    }
    let size = (usize::from(length_words) + 1) * 4;
    let packet = data.get(..size)?;
    let mut end = size;
    if b0 & 0x20 != 0 {
        // RFC 3550 §6.4.1: the last octet counts the padding octets, itself included.
        let padding = usize::from(*packet.last()?);
        if padding == 0 || padding > size - HEADER_LEN {
            return None;
        }
        end -= padding;
    }
    let body = packet.get(HEADER_LEN..end)?;
    Some((
        Packet {
            count,
            packet_type,
            body,
        },
        data.get(size..)?,
    ))
}

/// What the limits have let through so far in one datagram.
struct DatagramState {
    /// Where this datagram's entries start in `out` (earlier entries are the caller's).
    out_start: usize,
    keyframe_ssrcs: [u32; MAX_KEYFRAME_SSRCS_PER_DATAGRAM],
    keyframe_len: usize,
    /// `(media SSRC << 16) | seq` of every NACKed sequence number kept, sorted.
    nacked: [u64; MAX_NACK_SEQS_PER_DATAGRAM],
    nacked_len: usize,
    report_blocks: usize,
    transport_cc: u32,
}

impl DatagramState {
    fn new(out_start: usize) -> Self {
        DatagramState {
            out_start,
            keyframe_ssrcs: [0; MAX_KEYFRAME_SSRCS_PER_DATAGRAM],
            keyframe_len: 0,
            nacked: [0; MAX_NACK_SEQS_PER_DATAGRAM],
            nacked_len: 0,
            report_blocks: 0,
            transport_cc: 0,
        }
    }
}

/// Reads one packet into `out`; `None` when its body is too short for what the header says
/// (nothing of that packet is reported then).
fn read_packet(
    packet: &Packet<'_>,
    state: &mut DatagramState,
    out: &mut Vec<Feedback>,
    stats: &mut ParseStats,
) -> Option<()> {
    let body = packet.body;
    let blocks_len = usize::from(packet.count) * REPORT_BLOCK_LEN;
    match (packet.packet_type, packet.count) {
        (PT_SR, _) => {
            let blocks = body.get(SENDER_INFO_LEN..SENDER_INFO_LEN + blocks_len)?;
            out.push(Feedback::SenderReport {
                ssrc: Ssrc(be_u32(body, 0)?),
                ntp: NtpTime(be_u64(body, 4)?),
                rtp_ts: be_u32(body, 12)?,
            });
            read_report_blocks(blocks, state, out, stats)
        }
        (PT_RR, _) => {
            let blocks = body.get(4..4 + blocks_len)?;
            read_report_blocks(blocks, state, out, stats)
        }
        (PT_PSFB, FMT_PLI) => {
            let media = be_u32(body, 4)?;
            keyframe_request(media, state, out, stats);
            Some(())
        }
        (PT_PSFB, FMT_FIR) => {
            let entries = body.get(FEEDBACK_COMMON_LEN..)?;
            if entries.len() % FIR_ENTRY_LEN != 0 {
                return None;
            }
            for entry in entries.chunks_exact(FIR_ENTRY_LEN) {
                keyframe_request(be_u32(entry, 0)?, state, out, stats);
            }
            Some(())
        }
        (PT_RTPFB, FMT_NACK) => {
            let media = be_u32(body, 4)?;
            let entries = body.get(FEEDBACK_COMMON_LEN..)?;
            if entries.len() % NACK_ENTRY_LEN != 0 {
                return None;
            }
            read_nack(media, entries, state, out, stats)
        }
        (PT_RTPFB, FMT_TWCC) => {
            if state.transport_cc >= MAX_TWCC_PER_DATAGRAM {
                return Some(());
            }
            state.transport_cc += 1;
            out.push(Feedback::TransportCc(Box::new(parse_feedback(body)?)));
            Some(())
        }
        // SDES, BYE, APP, XR, other feedback (REMB, SLI, RPSI, RRR, CCFB, ...) and
        // unassigned types in the RTCP range: well-formed by their header, not needed.
        _ => Some(()),
    }
}

fn read_report_blocks(
    blocks: &[u8],
    state: &mut DatagramState,
    out: &mut Vec<Feedback>,
    stats: &mut ParseStats,
) -> Option<()> {
    for block in blocks.chunks_exact(REPORT_BLOCK_LEN) {
        if state.report_blocks >= MAX_REPORT_BLOCKS_PER_DATAGRAM {
            stats.report_blocks_dropped += 1;
            continue;
        }
        state.report_blocks += 1;
        let lost = be_u32(block, 4)?;
        out.push(Feedback::Report(ReportBlock {
            ssrc: Ssrc(be_u32(block, 0)?),
            fraction_lost: (lost >> 24) as u8,
            total_lost: lost & 0x00ff_ffff,
            highest_seq: be_u32(block, 8)?,
            jitter: be_u32(block, 12)?,
            last_sr: be_u32(block, 16)?,
            delay_since_last_sr: be_u32(block, 20)?,
        }));
    }
    Some(())
}

fn keyframe_request(
    media: u32,
    state: &mut DatagramState,
    out: &mut Vec<Feedback>,
    stats: &mut ParseStats,
) {
    let seen = &state.keyframe_ssrcs[..state.keyframe_len];
    if seen.contains(&media) || state.keyframe_len == MAX_KEYFRAME_SSRCS_PER_DATAGRAM {
        stats.keyframe_requests_coalesced += 1;
        return;
    }
    state.keyframe_ssrcs[state.keyframe_len] = media;
    state.keyframe_len += 1;
    out.push(Feedback::KeyframeRequest {
        media_ssrc: Ssrc(media),
    });
}

fn read_nack(
    media: u32,
    entries: &[u8],
    state: &mut DatagramState,
    out: &mut Vec<Feedback>,
    stats: &mut ParseStats,
) -> Option<()> {
    // Index in `out` of this SSRC's Nack entry, looked up when the first seq is kept.
    let mut slot: Option<usize> = None;
    for entry in entries.chunks_exact(NACK_ENTRY_LEN) {
        let pid = u16::from_be_bytes([entry[0], entry[1]]);
        let blp = u16::from_be_bytes([entry[2], entry[3]]);
        let lost = std::iter::once(pid).chain(
            (0..16u16)
                .filter(|bit| blp & (1 << bit) != 0)
                .map(|bit| pid.wrapping_add(bit + 1)),
        );
        for seq in lost {
            let key = (u64::from(media) << 16) | u64::from(seq);
            let kept = &state.nacked[..state.nacked_len];
            let Err(at) = kept.binary_search(&key) else {
                continue; // already NACKed in this datagram
            };
            if state.nacked_len == MAX_NACK_SEQS_PER_DATAGRAM {
                stats.nack_seqs_dropped += 1;
                continue;
            }
            state.nacked.copy_within(at..state.nacked_len, at + 1);
            state.nacked[at] = key;
            state.nacked_len += 1;
            let index = *slot.get_or_insert_with(|| nack_slot(media, state.out_start, out));
            if let Some(Feedback::Nack { seqs, .. }) = out.get_mut(index) {
                seqs.push(seq);
            }
        }
    }
    Some(())
}

/// The index of `media`'s Nack entry among this datagram's entries, added if missing.
fn nack_slot(media: u32, out_start: usize, out: &mut Vec<Feedback>) -> usize {
    let existing = out
        .iter()
        .skip(out_start)
        .position(|f| matches!(f, Feedback::Nack { media_ssrc, .. } if media_ssrc.0 == media));
    if let Some(i) = existing {
        return out_start + i;
    }
    out.push(Feedback::Nack {
        media_ssrc: Ssrc(media),
        seqs: Vec::new(),
    });
    out.len() - 1
}

fn be_u32(data: &[u8], at: usize) -> Option<u32> {
    let bytes = data.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes(bytes.try_into().ok()?))
}

fn be_u64(data: &[u8], at: usize) -> Option<u64> {
    let bytes = data.get(at..at.checked_add(8)?)?;
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

// ---------------------------------------------------------------------------------------
// Building

/// Appends an RTCP header for a packet of `len` bytes (a multiple of 4, header included).
fn put_header(buf: &mut Vec<u8>, count: u8, packet_type: u8, len: usize) {
    debug_assert!(len.is_multiple_of(4) && len >= HEADER_LEN && count <= 31);
    let words = (len / 4 - 1) as u16;
    buf.push(0x80 | (count & 0x1f));
    buf.push(packet_type);
    buf.extend_from_slice(&words.to_be_bytes());
}

fn put_u32(buf: &mut Vec<u8>, value: u32) {
    buf.extend_from_slice(&value.to_be_bytes());
}

/// Appends one RR with `blocks` (at most 31).
fn put_receiver_report(buf: &mut Vec<u8>, sender_ssrc: u32, blocks: &[ReportBlock]) {
    let len = HEADER_LEN + 4 + blocks.len() * REPORT_BLOCK_LEN;
    put_header(buf, blocks.len() as u8, PT_RR, len);
    put_u32(buf, sender_ssrc);
    for block in blocks {
        put_u32(buf, block.ssrc.0);
        put_u32(
            buf,
            (u32::from(block.fraction_lost) << 24) | (block.total_lost & 0x00ff_ffff),
        );
        put_u32(buf, block.highest_seq);
        put_u32(buf, block.jitter);
        put_u32(buf, block.last_sr);
        put_u32(buf, block.delay_since_last_sr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rtc_rtcp::packet::Packet as RtcPacket;
    use rtc_rtcp::payload_feedbacks::full_intra_request::{FirEntry, FullIntraRequest};
    use rtc_rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
    use rtc_rtcp::payload_feedbacks::receiver_estimated_maximum_bitrate::ReceiverEstimatedMaximumBitrate;
    use rtc_rtcp::receiver_report::ReceiverReport;
    use rtc_rtcp::reception_report::ReceptionReport;
    use rtc_rtcp::sender_report::SenderReport;
    use rtc_rtcp::transport_feedbacks::transport_layer_nack::{NackPair, TransportLayerNack};

    /// Proptest cases: `HEARTH_PROPTEST_CASES` when set (long runs), else 256.
    fn cases() -> u32 {
        super::super::proptest_cases()
    }

    // Every report block needs 24 bytes behind at least an 8-byte RR header: a datagram of
    // MAX_RTCP_DATAGRAM bytes holds fewer blocks than the cap.
    const _: () =
        assert!((MAX_RTCP_DATAGRAM - 8) / REPORT_BLOCK_LEN < MAX_REPORT_BLOCKS_PER_DATAGRAM);

    fn parse(data: &[u8]) -> (Vec<Feedback>, ParseStats) {
        let mut out = Vec::new();
        let stats = parse_compound(data, &mut out);
        (out, stats)
    }

    fn unmarshal(data: &[u8]) -> Vec<Box<dyn RtcPacket>> {
        rtc_rtcp::packet::unmarshal(&mut &data[..]).expect("rtc-rtcp parses our bytes")
    }

    fn downcast<T: 'static>(packet: &dyn RtcPacket) -> &T {
        packet.as_any().downcast_ref::<T>().expect("packet type")
    }

    fn block(ssrc: u32) -> ReportBlock {
        ReportBlock {
            ssrc: Ssrc(ssrc),
            fraction_lost: 64,
            total_lost: 0x00ff_fffe,
            highest_seq: 0x0001_1234,
            jitter: 273,
            last_sr: 0x9f36_4320,
            delay_since_last_sr: 150_137,
        }
    }

    fn pli_from(media: u32) -> Vec<u8> {
        pli(0x1122_3344, media)
    }

    /// RR with one report block (32 bytes), as built by `receiver_reports(0x11223344,
    /// &[block(0xaabbccdd)])`.
    const RR_ONE_BLOCK: [u8; 32] = [
        0x81, 0xc9, 0x00, 0x07, // V=2 P=0 RC=1, PT=201 (RR), length 7 words + 1
        0x11, 0x22, 0x33, 0x44, // sender SSRC
        0xaa, 0xbb, 0xcc, 0xdd, // block: SSRC
        0x40, 0xff, 0xff, 0xfe, // fraction lost 64/256, cumulative lost -2 (24-bit)
        0x00, 0x01, 0x12, 0x34, // extended highest seq: cycle 1, seq 0x1234
        0x00, 0x00, 0x01, 0x11, // jitter 273
        0x9f, 0x36, 0x43, 0x20, // LSR
        0x00, 0x02, 0x4a, 0x79, // DLSR 150137
    ];

    #[test]
    fn compound_vector() {
        let mut data = RR_ONE_BLOCK.to_vec();
        data.extend_from_slice(&[
            // SDES, skipped
            0x81, 0xca, 0x00, 0x03, // SC=1, PT=202, length 3
            0x11, 0x22, 0x33, 0x44, // chunk SSRC
            0x01, 0x02, b'a', b'b', // CNAME, 2 octets, "ab"
            0x00, 0x00, 0x00, 0x00, // END, pad
            // PLI
            0x81, 0xce, 0x00, 0x02, // FMT=1, PT=206, length 2
            0x11, 0x22, 0x33, 0x44, // sender SSRC
            0xaa, 0xbb, 0xcc, 0xdd, // media SSRC
            // generic NACK
            0x81, 0xcd, 0x00, 0x04, // FMT=1, PT=205, length 4
            0x11, 0x22, 0x33, 0x44, // sender SSRC
            0xaa, 0xbb, 0xcc, 0xdd, // media SSRC
            0x00, 0x64, 0x00, 0x05, // PID 100, BLP 0b101: 101, 103
            0xff, 0xff, 0x00, 0x01, // PID 65535, BLP 0b1: 0 (wraps)
            // FIR
            0x84, 0xce, 0x00, 0x06, // FMT=4, PT=206, length 6
            0x11, 0x22, 0x33, 0x44, // sender SSRC
            0x00, 0x00, 0x00, 0x00, // media SSRC (unused by FIR)
            0x55, 0x66, 0x77, 0x88, 0x07, 0x00, 0x00, 0x00, // entry: SSRC, seq nr 7
            0xaa, 0xbb, 0xcc, 0xdd, 0x08, 0x00, 0x00, 0x00, // entry: PLI'd above: coalesced
            // TWCC
            0x8f, 0xcd, 0x00, 0x05, // FMT=15, PT=205, length 5
            0x11, 0x22, 0x33, 0x44, // sender SSRC
            0xaa, 0xbb, 0xcc, 0xdd, // media SSRC
            0x00, 0x01, 0x00, 0x01, // base seq 1, status count 1
            0x00, 0x00, 0x01, 0x00, // reference time 1, feedback count 0
            0x20, 0x01, 0x04, 0x00, // run length chunk (small delta x1), delta 4, zero pad
            // REMB, skipped
            0x8f, 0xce, 0x00, 0x05, // FMT=15, PT=206, length 5
            0x11, 0x22, 0x33, 0x44, // sender SSRC
            0x00, 0x00, 0x00, 0x00, // media SSRC
            b'R', b'E', b'M', b'B', // unique identifier
            0x01, 0x0a, 0x00, 0x00, // 1 SSRC, exponent 2, mantissa 0
            0xaa, 0xbb, 0xcc, 0xdd, // SSRC
            // BYE, skipped
            0x81, 0xcb, 0x00, 0x01, // SC=1, PT=203, length 1
            0x11, 0x22, 0x33, 0x44, // SSRC
        ]);
        let (out, stats) = parse(&data);
        assert_eq!(
            out,
            vec![
                Feedback::Report(block(0xaabb_ccdd)),
                Feedback::KeyframeRequest {
                    media_ssrc: Ssrc(0xaabb_ccdd)
                },
                Feedback::Nack {
                    media_ssrc: Ssrc(0xaabb_ccdd),
                    seqs: vec![100, 101, 103, 65535, 0]
                },
                Feedback::KeyframeRequest {
                    media_ssrc: Ssrc(0x5566_7788)
                },
                // Reference time 1 (64 ms) plus one small delta of 4 x 250 µs.
                Feedback::TransportCc(Box::new(TwccFeedback {
                    base_seq: 1,
                    feedback_count: 0,
                    status_count: 1,
                    received: vec![(1, 65_000)],
                })),
            ]
        );
        assert_eq!(
            stats,
            ParseStats {
                packets: 8,
                keyframe_requests_coalesced: 1,
                ..ParseStats::default()
            }
        );
        // rtc-rtcp reads the same datagram as eight packets.
        assert_eq!(unmarshal(&data).len(), 8);
    }

    #[test]
    fn sender_report_vector() {
        let data = [
            0x81, 0xc8, 0x00, 0x0c, // V=2 RC=1, PT=200 (SR), length 12
            0x01, 0x02, 0x03, 0x04, // SSRC
            0xe1, 0x2f, 0x5d, 0x0c, // NTP seconds
            0x80, 0x00, 0x00, 0x00, // NTP fraction (0.5 s)
            0x00, 0x01, 0xe2, 0x40, // RTP timestamp 123456
            0x00, 0x00, 0x00, 0x0a, // packet count 10
            0x00, 0x00, 0x03, 0xe8, // octet count 1000
            0xaa, 0xbb, 0xcc, 0xdd, // block: SSRC
            0x40, 0xff, 0xff, 0xfe, // fraction lost, cumulative lost
            0x00, 0x01, 0x12, 0x34, // extended highest seq
            0x00, 0x00, 0x01, 0x11, // jitter
            0x9f, 0x36, 0x43, 0x20, // LSR
            0x00, 0x02, 0x4a, 0x79, // DLSR
        ];
        let (out, stats) = parse(&data);
        assert_eq!(
            out,
            vec![
                Feedback::SenderReport {
                    ssrc: Ssrc(0x0102_0304),
                    ntp: NtpTime(0xe12f_5d0c_8000_0000),
                    rtp_ts: 123_456
                },
                Feedback::Report(block(0xaabb_ccdd)),
            ]
        );
        assert_eq!(stats.packets, 1);
        assert_eq!(stats.malformed, 0);
    }

    #[test]
    fn builder_vectors() {
        assert_eq!(
            receiver_reports(0x1122_3344, &[block(0xaabb_ccdd)]),
            RR_ONE_BLOCK
        );
        assert_eq!(
            receiver_reports(0x1122_3344, &[]),
            [
                0x80, 0xc9, 0x00, 0x01, // RC=0, PT=201, length 1
                0x11, 0x22, 0x33, 0x44, // sender SSRC
            ]
        );
        let info = SenderInfo {
            ntp: NtpTime(0xe12f_5d0c_8000_0000),
            rtp_ts: 123_456,
            packets: 10,
            octets: 1000,
        };
        assert_eq!(
            sender_report(0x0102_0304, &info),
            [
                0x80, 0xc8, 0x00, 0x06, // RC=0, PT=200, length 6
                0x01, 0x02, 0x03, 0x04, // SSRC
                0xe1, 0x2f, 0x5d, 0x0c, 0x80, 0x00, 0x00, 0x00, // NTP
                0x00, 0x01, 0xe2, 0x40, // RTP timestamp
                0x00, 0x00, 0x00, 0x0a, // packet count
                0x00, 0x00, 0x03, 0xe8, // octet count
            ]
        );
        assert_eq!(
            pli(0x1122_3344, 0xaabb_ccdd),
            [
                0x81, 0xce, 0x00, 0x02, // FMT=1, PT=206, length 2
                0x11, 0x22, 0x33, 0x44, // sender SSRC
                0xaa, 0xbb, 0xcc, 0xdd, // media SSRC
            ]
        );
        assert_eq!(
            nack(0x1122_3344, 0xaabb_ccdd, &[100, 101, 103, 65535, 0]),
            [
                0x81, 0xcd, 0x00, 0x04, // FMT=1, PT=205, length 4
                0x11, 0x22, 0x33, 0x44, // sender SSRC
                0xaa, 0xbb, 0xcc, 0xdd, // media SSRC
                0x00, 0x64, 0x00, 0x05, // PID 100, BLP 0b101
                0xff, 0xff, 0x00, 0x01, // PID 65535, BLP 0b1
            ]
        );
        assert!(nack(1, 2, &[]).is_empty());
    }

    #[test]
    fn receiver_reports_round_trip_through_rtc_rtcp() {
        for n in [0usize, 1, 30, 31, 32, 62, 70] {
            let blocks: Vec<ReportBlock> = (0..n as u32)
                .map(|i| ReportBlock {
                    ssrc: Ssrc(0x1000 + i),
                    fraction_lost: i as u8,
                    total_lost: i * 0x1_0101,
                    highest_seq: 0x0002_0000 + i,
                    jitter: i * 7,
                    last_sr: i * 11,
                    delay_since_last_sr: i * 13,
                })
                .collect();
            let bytes = receiver_reports(42, &blocks);
            let packets = unmarshal(&bytes);
            assert_eq!(packets.len(), n.div_ceil(31).max(1), "{n} blocks");
            let mut seen = Vec::new();
            for p in &packets {
                let rr = downcast::<ReceiverReport>(p.as_ref());
                assert_eq!(rr.ssrc, 42);
                assert!(rr.reports.len() <= 31);
                seen.extend(rr.reports.iter().map(|r| ReportBlock {
                    ssrc: Ssrc(r.ssrc),
                    fraction_lost: r.fraction_lost,
                    total_lost: r.total_lost,
                    highest_seq: r.last_sequence_number,
                    jitter: r.jitter,
                    last_sr: r.last_sender_report,
                    delay_since_last_sr: r.delay,
                }));
            }
            assert_eq!(seen, blocks, "{n} blocks");
            if bytes.len() <= MAX_RTCP_DATAGRAM {
                let (out, stats) = parse(&bytes);
                let want: Vec<Feedback> = blocks.iter().copied().map(Feedback::Report).collect();
                assert_eq!(out, want);
                assert_eq!(stats.packets as usize, packets.len());
            }
        }
    }

    #[test]
    fn sender_report_pli_nack_round_trip_through_rtc_rtcp() {
        let info = SenderInfo {
            ntp: NtpTime(0x0123_4567_89ab_cdef),
            rtp_ts: 0xdead_beef,
            packets: 77,
            octets: 7700,
        };
        let packets = unmarshal(&sender_report(9, &info));
        let sr = downcast::<SenderReport>(packets[0].as_ref());
        assert_eq!(
            (
                sr.ssrc,
                sr.ntp_time,
                sr.rtp_time,
                sr.packet_count,
                sr.octet_count
            ),
            (9, info.ntp.0, info.rtp_ts, 77, 7700)
        );
        assert!(sr.reports.is_empty());

        let packets = unmarshal(&pli(1, 2));
        let p = downcast::<PictureLossIndication>(packets[0].as_ref());
        assert_eq!((p.sender_ssrc, p.media_ssrc), (1, 2));

        let seqs: Vec<u16> = vec![65530, 65531, 65535, 3, 40, 41];
        let packets = unmarshal(&nack(1, 2, &seqs));
        let n = downcast::<TransportLayerNack>(packets[0].as_ref());
        assert_eq!((n.sender_ssrc, n.media_ssrc), (1, 2));
        let decoded: Vec<u16> = n.nacks.iter().flat_map(|p| p.packet_list()).collect();
        assert_eq!(decoded, seqs);
    }

    #[test]
    fn parses_what_rtc_rtcp_marshals() {
        let packets: Vec<Box<dyn RtcPacket>> = vec![
            Box::new(SenderReport {
                ssrc: 5,
                ntp_time: 0xaaaa_bbbb_cccc_dddd,
                rtp_time: 99,
                packet_count: 1,
                octet_count: 2,
                reports: vec![ReceptionReport {
                    ssrc: 6,
                    fraction_lost: 1,
                    total_lost: 2,
                    last_sequence_number: 3,
                    jitter: 4,
                    last_sender_report: 5,
                    delay: 6,
                }],
                ..Default::default()
            }),
            Box::new(ReceiverEstimatedMaximumBitrate {
                sender_ssrc: 5,
                bitrate: 1_000_000.0,
                ssrcs: vec![6],
            }),
            Box::new(FullIntraRequest {
                sender_ssrc: 5,
                media_ssrc: 0,
                fir: vec![
                    FirEntry {
                        ssrc: 6,
                        sequence_number: 1,
                    },
                    FirEntry {
                        ssrc: 7,
                        sequence_number: 1,
                    },
                ],
            }),
            Box::new(TransportLayerNack {
                sender_ssrc: 5,
                media_ssrc: 6,
                nacks: vec![NackPair {
                    packet_id: 10,
                    lost_packets: 0x8001,
                }],
            }),
        ];
        let bytes = rtc_rtcp::packet::marshal(&packets).expect("marshal");
        let (out, stats) = parse(&bytes);
        assert_eq!(
            out,
            vec![
                Feedback::SenderReport {
                    ssrc: Ssrc(5),
                    ntp: NtpTime(0xaaaa_bbbb_cccc_dddd),
                    rtp_ts: 99
                },
                Feedback::Report(ReportBlock {
                    ssrc: Ssrc(6),
                    fraction_lost: 1,
                    total_lost: 2,
                    highest_seq: 3,
                    jitter: 4,
                    last_sr: 5,
                    delay_since_last_sr: 6
                }),
                Feedback::KeyframeRequest {
                    media_ssrc: Ssrc(6)
                },
                Feedback::KeyframeRequest {
                    media_ssrc: Ssrc(7)
                },
                Feedback::Nack {
                    media_ssrc: Ssrc(6),
                    seqs: vec![10, 11, 26]
                },
            ]
        );
        assert_eq!(stats.packets, 4);
        assert_eq!(stats.malformed, 0);
    }

    #[test]
    fn appends_after_what_out_held() {
        let mut out = vec![Feedback::Nack {
            media_ssrc: Ssrc(2),
            seqs: vec![1],
        }];
        parse_compound(&nack(1, 2, &[1, 5]), &mut out);
        // The caller's entry is left alone; this datagram gets its own.
        assert_eq!(
            out,
            vec![
                Feedback::Nack {
                    media_ssrc: Ssrc(2),
                    seqs: vec![1]
                },
                Feedback::Nack {
                    media_ssrc: Ssrc(2),
                    seqs: vec![1, 5]
                },
            ]
        );
    }

    // --- abuse limits ---

    #[test]
    fn keyframe_requests_coalesce_per_ssrc() {
        let mut data = Vec::new();
        for _ in 0..3 {
            data.extend(pli_from(7));
        }
        data.extend(pli_from(8));
        data.extend([
            0x84, 0xce, 0x00, 0x06, // FIR, length 6
            0, 0, 0, 1, 0, 0, 0, 0, // sender, media
            0, 0, 0, 7, 1, 0, 0, 0, // entry for 7: coalesced with the PLIs
            0, 0, 0, 7, 2, 0, 0, 0, // and again
        ]);
        let (out, stats) = parse(&data);
        assert_eq!(
            out,
            vec![
                Feedback::KeyframeRequest {
                    media_ssrc: Ssrc(7)
                },
                Feedback::KeyframeRequest {
                    media_ssrc: Ssrc(8)
                },
            ]
        );
        assert_eq!(stats.keyframe_requests_coalesced, 4);
        assert_eq!(stats.packets, 5);
    }

    #[test]
    fn keyframe_requests_cover_at_most_eight_ssrcs() {
        let data: Vec<u8> = (0..12u32).flat_map(pli_from).collect();
        let (out, stats) = parse(&data);
        let want: Vec<Feedback> = (0..8u32)
            .map(|s| Feedback::KeyframeRequest {
                media_ssrc: Ssrc(s),
            })
            .collect();
        assert_eq!(out, want);
        assert_eq!(stats.keyframe_requests_coalesced, 4);
        // A FIR with 100 entries for distinct SSRCs is held to the same limit.
        let mut fir = vec![0x84, 0xce, 0x00, 2 + 2 * 100, 0, 0, 0, 1, 0, 0, 0, 0];
        for s in 0..100u32 {
            fir.extend(s.to_be_bytes());
            fir.extend([1, 0, 0, 0]);
        }
        let (out, stats) = parse(&fir);
        assert_eq!(out.len(), 8);
        assert_eq!(stats.keyframe_requests_coalesced, 92);
    }

    #[test]
    fn nacks_are_deduplicated_per_ssrc_and_merged() {
        let mut data = nack(1, 2, &[10, 11, 12]);
        data.extend(nack(1, 3, &[10]));
        data.extend(nack(1, 2, &[11, 12, 13, 10]));
        let (out, stats) = parse(&data);
        assert_eq!(
            out,
            vec![
                Feedback::Nack {
                    media_ssrc: Ssrc(2),
                    seqs: vec![10, 11, 12, 13]
                },
                Feedback::Nack {
                    media_ssrc: Ssrc(3),
                    seqs: vec![10]
                },
            ]
        );
        assert_eq!(stats.nack_seqs_dropped, 0);
        // The same seq twice within one FCI list (PID 5 and PID 4's bit 0).
        let data = [
            0x81, 0xcd, 0x00, 0x04, // NACK, length 4
            0, 0, 0, 1, 0, 0, 0, 2, // sender, media
            0x00, 0x04, 0x00, 0x01, // PID 4, BLP: 5
            0x00, 0x05, 0x00, 0x00, // PID 5 again
        ];
        let (out, _) = parse(&data);
        assert_eq!(
            out,
            vec![Feedback::Nack {
                media_ssrc: Ssrc(2),
                seqs: vec![4, 5]
            }]
        );
    }

    #[test]
    fn nack_seqs_are_capped_per_datagram() {
        // 200 seqs for SSRC 2 and 200 for SSRC 3, every other seq: 400 pairs would not
        // fit 1500 bytes, so use full BLPs: 17 seqs per pair.
        let a: Vec<u16> = (0..200).collect();
        let b: Vec<u16> = (1000..1200).collect();
        let mut data = nack(1, 2, &a);
        data.extend(nack(1, 3, &b));
        data.extend(nack(1, 2, &a)); // duplicates: not counted as dropped
        assert!(data.len() <= MAX_RTCP_DATAGRAM);
        let (out, stats) = parse(&data);
        let total: usize = out
            .iter()
            .map(|f| match f {
                Feedback::Nack { seqs, .. } => seqs.len(),
                _ => 0,
            })
            .sum();
        assert_eq!(total, MAX_NACK_SEQS_PER_DATAGRAM);
        assert_eq!(stats.nack_seqs_dropped, 400 - 256);
        assert_eq!(
            out[0],
            Feedback::Nack {
                media_ssrc: Ssrc(2),
                seqs: a.clone()
            }
        );
        assert_eq!(
            out[1],
            Feedback::Nack {
                media_ssrc: Ssrc(3),
                seqs: b[..56].to_vec()
            }
        );
    }

    #[test]
    fn report_blocks_are_capped_per_datagram() {
        let blocks: Vec<ReportBlock> = (0..93).map(block).collect();
        let data = receiver_reports(1, &blocks);
        // A datagram of MAX_RTCP_DATAGRAM bytes cannot reach the cap (see the const assert
        // above), so test it behind a larger datagram limit.
        let mut out = Vec::new();
        let stats = parse_limited(&data, 4096, &mut out);
        assert_eq!(out.len(), MAX_REPORT_BLOCKS_PER_DATAGRAM);
        assert_eq!(out[63], Feedback::Report(block(63)));
        assert_eq!(stats.report_blocks_dropped, 93 - 64);
        assert_eq!(stats.packets, 3);
    }

    #[test]
    fn oversized_datagram_is_rejected() {
        let mut data = pli_from(7);
        data.resize(MAX_RTCP_DATAGRAM + 1, 0);
        let (out, stats) = parse(&data);
        assert!(out.is_empty());
        assert_eq!(
            stats,
            ParseStats {
                malformed: 1,
                ..ParseStats::default()
            }
        );
        assert_eq!(parse(&[]).1.malformed, 1);
        // Exactly the limit is fine: a PLI padded out by a long APP packet.
        let mut data = pli_from(7);
        let app_len = MAX_RTCP_DATAGRAM - data.len();
        data.extend([0x80, 204]);
        data.extend(((app_len / 4 - 1) as u16).to_be_bytes());
        data.resize(MAX_RTCP_DATAGRAM, 0);
        let (out, stats) = parse(&data);
        assert_eq!(out.len(), 1);
        assert_eq!((stats.packets, stats.malformed), (2, 0));
    }

    /// A PLI for SSRC 7, then `bad`, then a PLI for SSRC 8 that must not be reached.
    fn stops_at(bad: &[u8]) -> (Vec<Feedback>, ParseStats) {
        let mut data = pli_from(7);
        data.extend_from_slice(bad);
        data.extend(pli_from(8));
        parse(&data)
    }

    fn assert_stopped(bad: &[u8], what: &str) {
        let (out, stats) = stops_at(bad);
        assert_eq!(
            out,
            vec![Feedback::KeyframeRequest {
                media_ssrc: Ssrc(7)
            }],
            "{what}"
        );
        assert_eq!((stats.packets, stats.malformed), (1, 1), "{what}");
    }

    #[test]
    fn lying_packets_stop_parsing() {
        // Length runs past the end of the datagram (the trailing PLI is 12 bytes).
        assert_stopped(
            &[0x81, 0xce, 0x00, 0x09, 0, 0, 0, 1, 0, 0, 0, 2],
            "too long",
        );
        // Zero length field on an RR.
        assert_stopped(&[0x80, 0xc9, 0x00, 0x00], "zero length");
        // Version 1.
        assert_stopped(&[0x41, 0xce, 0x00, 0x02, 0, 0, 0, 1, 0, 0, 0, 2], "version");
        // Not an RTCP packet type (an RTP payload type with marker).
        assert_stopped(&[0x80, 0xe0, 0x00, 0x01, 0, 0, 0, 1], "type");
        // RR claims 2 blocks but holds 1.
        let mut rr = RR_ONE_BLOCK;
        rr[0] = 0x82;
        assert_stopped(&rr, "short RR");
        // SR too short for its sender info.
        assert_stopped(
            &[0x80, 0xc8, 0x00, 0x02, 0, 0, 0, 1, 0, 0, 0, 2],
            "short SR",
        );
        // PLI without a media SSRC.
        assert_stopped(&[0x81, 0xce, 0x00, 0x01, 0, 0, 0, 1], "short PLI");
        // FIR with half an entry.
        assert_stopped(
            &[0x84, 0xce, 0x00, 0x03, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9],
            "short FIR",
        );
        // Padding count larger than the packet.
        assert_stopped(&[0xa1, 0xce, 0x00, 0x01, 0, 0, 0, 9], "padding");
        // Padding count 0.
        assert_stopped(
            &[0xa1, 0xce, 0x00, 0x02, 0, 0, 0, 1, 0, 0, 0, 0],
            "padding 0",
        );
        // A truncated header at the end.
        let (out, stats) = parse(&[pli_from(7), vec![0x81, 0xce]].concat());
        assert_eq!(out.len(), 1);
        assert_eq!((stats.packets, stats.malformed), (1, 1));
    }

    #[test]
    fn legal_oddities_are_accepted() {
        // BYE with no sources: a bare header is legal there.
        let (out, stats) = stops_at(&[0x80, 0xcb, 0x00, 0x00]);
        assert_eq!(out.len(), 2);
        assert_eq!((stats.packets, stats.malformed), (3, 0));
        // A padded PLI: 4 octets of padding, the last one counting them.
        let (out, stats) = stops_at(&[0xa1, 0xce, 0x00, 0x03, 0, 0, 0, 1, 0, 0, 0, 9, 0, 0, 0, 4]);
        assert_eq!(out.len(), 3);
        assert_eq!(stats.malformed, 0);
        // NACK without FCI entries (RFC 4585 wants one): nothing to report, not malformed.
        let (out, stats) = stops_at(&[0x81, 0xcd, 0x00, 0x02, 0, 0, 0, 1, 0, 0, 0, 2]);
        assert_eq!(out.len(), 2);
        assert_eq!(stats.malformed, 0);
        // Unassigned RTCP type and RR profile extensions are skipped.
        let mut rr = RR_ONE_BLOCK.to_vec();
        rr[3] = 0x08;
        rr.extend([1, 2, 3, 4]);
        let (out, stats) = stops_at(&[&[0x80u8, 210, 0x00, 0x01, 1, 2, 3, 4][..], &rr].concat());
        assert_eq!(out.len(), 3);
        assert_eq!((stats.packets, stats.malformed), (4, 0));
    }

    /// What any parse must respect, whatever the input.
    fn check_limits(out: &[Feedback], stats: &ParseStats) {
        let keyframes: Vec<u32> = out
            .iter()
            .filter_map(|f| match f {
                Feedback::KeyframeRequest { media_ssrc } => Some(media_ssrc.0),
                _ => None,
            })
            .collect();
        let mut distinct = keyframes.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), keyframes.len());
        assert!(keyframes.len() <= MAX_KEYFRAME_SSRCS_PER_DATAGRAM);
        let mut nacked = 0;
        let mut nack_ssrcs = Vec::new();
        for f in out {
            if let Feedback::Nack { media_ssrc, seqs } = f {
                assert!(!seqs.is_empty());
                let mut s = seqs.clone();
                s.sort_unstable();
                s.dedup();
                assert_eq!(s.len(), seqs.len());
                nacked += seqs.len();
                nack_ssrcs.push(media_ssrc.0);
            }
        }
        assert!(nacked <= MAX_NACK_SEQS_PER_DATAGRAM);
        let n = nack_ssrcs.len();
        nack_ssrcs.sort_unstable();
        nack_ssrcs.dedup();
        assert_eq!(nack_ssrcs.len(), n);
        let reports = out
            .iter()
            .filter(|f| matches!(f, Feedback::Report(_)))
            .count();
        assert!(reports <= MAX_REPORT_BLOCKS_PER_DATAGRAM);
        assert!(stats.malformed <= 1);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(cases()))]

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..1600)) {
            let (out, stats) = parse(&data);
            check_limits(&out, &stats);
        }

        #[test]
        fn arbitrary_bodies_behind_valid_headers_never_panic(
            packets in proptest::collection::vec(
                (0u8..32, prop_oneof![200u8..=207, 192u8..=223], any::<bool>(), 0usize..40,
                 proptest::collection::vec(any::<u8>(), 0..200), 0u16..3),
                1..12,
            )
        ) {
            // Each packet: count, type, padding bit, body words, body bytes, and a length
            // fudge that is usually 0 (honest) and sometimes lies by a word or two.
            let mut data = Vec::new();
            for (count, pt, padding, words, body, fudge) in packets {
                let mut b = body;
                b.resize(words * 4, 0xa5);
                let fudged = (words as u16).saturating_add(if fudge == 2 { 1 } else { 0 });
                data.push(0x80 | if padding { 0x20 } else { 0 } | count);
                data.push(pt);
                data.extend(fudged.to_be_bytes());
                data.extend(b);
            }
            let (out, stats) = parse(&data);
            check_limits(&out, &stats);
        }

        #[test]
        fn well_formed_feedback_round_trips(
            ssrcs in proptest::collection::vec(0u32..20, 1..20),
            seqs in proptest::collection::vec(any::<u16>(), 1..40),
        ) {
            let mut data = Vec::new();
            for &s in &ssrcs {
                data.extend(pli(1, s));
            }
            data.extend(nack(1, 99, &seqs));
            let (out, stats) = parse(&data);
            check_limits(&out, &stats);
            prop_assert_eq!(stats.malformed, 0);
            let mut want_kf: Vec<u32> = Vec::new();
            for &s in &ssrcs {
                if !want_kf.contains(&s) && want_kf.len() < 8 {
                    want_kf.push(s);
                }
            }
            let got_kf: Vec<u32> = out.iter().filter_map(|f| match f {
                Feedback::KeyframeRequest { media_ssrc } => Some(media_ssrc.0),
                _ => None,
            }).collect();
            prop_assert_eq!(got_kf, want_kf);
            let mut want_seqs: Vec<u16> = Vec::new();
            for &s in &seqs {
                if !want_seqs.contains(&s) {
                    want_seqs.push(s);
                }
            }
            let got: Vec<u16> = out.iter().filter_map(|f| match f {
                Feedback::Nack { seqs, .. } => Some(seqs.clone()),
                _ => None,
            }).flatten().collect();
            // nack_pairs folds a seq into the previous pair's bitmap, so the order may
            // change within a pair; the set is the same.
            let (mut a, mut b) = (got, want_seqs);
            a.sort_unstable();
            b.sort_unstable();
            prop_assert_eq!(a, b);
        }
    }
}
