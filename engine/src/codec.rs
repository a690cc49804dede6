//! Keyframe detection from RTP payloads (VP8, VP9, H.264), and the frame size keyframes
//! announce (simulcast layers are told apart by it).
//!
//! The publisher side calls [`is_keyframe`] once per packet and stores the answer in
//! [`MediaPacket::keyframe`](crate::media::MediaPacket::keyframe), so subscribers never parse.
//! These are parsers of network input: they read with bounds-checked accessors only, never
//! panic and return `false` on anything truncated or malformed.

use crate::media::Codec;

/// True if this packet starts a keyframe (see the per-codec functions for the exact rule).
/// [`Codec::Other`] always returns false; Opus has no keyframes.
pub fn is_keyframe(codec: Codec, payload: &[u8]) -> bool {
    match codec {
        Codec::Vp8 => vp8_is_keyframe(payload),
        Codec::Vp9 => vp9_is_keyframe(payload),
        Codec::H264 => h264_is_keyframe(payload),
        Codec::Av1 => av1_is_keyframe(payload),
        Codec::Opus | Codec::Other => false,
    }
}

/// AV1 (the RTP payload format of the Alliance for Open Media, §4.4). The first byte is
/// the aggregation header `|Z|Y|W W|N|-|-|-|`: N = 1 marks the first packet of a coded video
/// sequence, which starts with a keyframe; Z = 1 (the packet continues an OBU of the one
/// before) cannot start anything.
pub fn av1_is_keyframe(payload: &[u8]) -> bool {
    payload
        .first()
        .is_some_and(|&b0| b0 & 0x80 == 0 && b0 & 0x08 != 0)
}

/// VP8 (RFC 7741 §4.2, §4.3). The payload descriptor is
///
/// ```text
/// byte 0:        |X|R|N|S|R| PID |
/// if X:          |I|L|T|K| RSV   |
/// if I:          |M| PictureID   |   (+1 byte when M: 15-bit picture id)
/// if L:          |   TL0PICIDX   |
/// if T or K:     |TID|Y| KEYIDX  |
/// ```
///
/// The packet starts a frame when S = 1 and PID = 0; the first byte of the VP8 payload header
/// that follows has the inverse keyframe flag P in its lowest bit (P = 0 ⇒ keyframe).
pub fn vp8_is_keyframe(payload: &[u8]) -> bool {
    let Some(&b0) = payload.first() else {
        return false;
    };
    let start = b0 & 0x10 != 0;
    let partition = b0 & 0x07;
    if !start || partition != 0 {
        return false;
    }
    let mut i = 1;
    if b0 & 0x80 != 0 {
        let Some(&x) = payload.get(i) else {
            return false;
        };
        i += 1;
        if x & 0x80 != 0 {
            // I: picture id, 7 or 15 bits depending on M.
            let Some(&pid) = payload.get(i) else {
                return false;
            };
            i += if pid & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            // L: TL0PICIDX.
            i += 1;
        }
        if x & 0x30 != 0 {
            // T or K: TID/Y/KEYIDX byte.
            i += 1;
        }
    }
    payload.get(i).is_some_and(|&header| header & 0x01 == 0)
}

/// Where the fields of a VP8 payload descriptor (RFC 7741 §4.2) sit.
struct Vp8Descriptor {
    /// The picture id, and whether it is the 15-bit form.
    pid: Option<(u16, bool)>,
    /// Offsets of TL0PICIDX and of the TID/Y/KEYIDX byte.
    tl0_at: Option<usize>,
    tk_at: Option<usize>,
    /// T: the TID/Y/KEYIDX byte holds a temporal layer index.
    has_tid: bool,
    /// The descriptor's length.
    len: usize,
}

/// The extended VP8 payload descriptor of `payload`; None without extension fields (X = 0)
/// or when truncated.
fn vp8_descriptor(payload: &[u8]) -> Option<Vp8Descriptor> {
    let b0 = *payload.first()?;
    if b0 & 0x80 == 0 {
        return None;
    }
    let x = *payload.get(1)?;
    let mut i = 2;
    let mut pid = None;
    if x & 0x80 != 0 {
        let p0 = *payload.get(i)?;
        if p0 & 0x80 != 0 {
            let p1 = *payload.get(i + 1)?;
            pid = Some((u16::from(p0 & 0x7f) << 8 | u16::from(p1), true));
            i += 2;
        } else {
            pid = Some((u16::from(p0), false));
            i += 1;
        }
    }
    let tl0_at = (x & 0x40 != 0).then_some(i);
    if tl0_at.is_some() {
        i += 1;
    }
    let tk_at = (x & 0x30 != 0).then_some(i);
    if tk_at.is_some() {
        i += 1;
    }
    (payload.len() >= i).then_some(Vp8Descriptor {
        pid,
        tl0_at,
        tk_at,
        has_tid: x & 0x20 != 0,
        len: i,
    })
}

/// A VP8 packet's temporal layer (RFC 7741 §4.2, present when T = 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vp8Temporal {
    /// TID: the temporal layer.
    pub temporal: u8,
    /// Y: layer sync, the frame refers to TL0 frames only (a switching-up point).
    pub sync: bool,
    /// The first packet of a frame (S = 1, partition 0).
    pub start: bool,
}

/// The temporal layer fields of a VP8 payload descriptor; None when it carries none.
pub fn vp8_temporal(payload: &[u8]) -> Option<Vp8Temporal> {
    let d = vp8_descriptor(payload)?;
    if !d.has_tid {
        return None;
    }
    let tk = payload[d.tk_at?];
    let b0 = payload[0];
    Some(Vp8Temporal {
        temporal: tk >> 6,
        sync: tk & 0x20 != 0,
        start: b0 & 0x10 != 0 && b0 & 0x07 == 0,
    })
}

/// Pictures whose rewritten number [`Vp8Munger`] remembers, by source picture id modulo
/// this: 128 consecutive pictures, over 2 s at 60 frames/s (the retransmission cache's
/// span), so a retransmission finds the number its picture went out with.
const VP8_RECENT_PICTURES: usize = 128;
/// No picture id (they have 15 bits).
const NO_PICTURE: u16 = u16::MAX;

/// Rewrites the VP8 payload descriptors of one outgoing stream so its picture ids and
/// TL0PICIDX continue across source switches (RFC 7741 §4.2). Simulcast layers number their
/// pictures independently; a receiver that saw picture 9000 of one layer and then gets
/// picture 200 (or 31000) of another after a switch counts the gap as pictures it still
/// waits for, and stops decoding until a keyframe (Chromium's VP8 reference finder does).
/// At each new segment of the forwarder (a switch or a restart) the offsets are chosen so
/// the first picture follows the last one sent.
///
/// Pictures left out (a temporal layer above the subscriber's, [`Vp8Munger::dropped`]) are
/// numbered past the same way: the pictures after them close the gap. A packet of a picture
/// already numbered (late, or retransmitted) keeps the number its picture went out with.
#[derive(Clone, Debug, Default)]
pub struct Vp8Munger {
    /// The forwarder segment the offsets belong to.
    segment: Option<u64>,
    pid_offset: u16,
    tl0_offset: u8,
    /// The newest picture id and TL0PICIDX sent (after rewriting; a late packet of an
    /// older picture does not move them back).
    last_pid: Option<u16>,
    last_tl0: Option<u8>,
    /// The newest source picture id of the segment, sent or dropped.
    newest_source: Option<u16>,
    /// Recent pictures sent in this segment, at their source picture id modulo
    /// [`VP8_RECENT_PICTURES`]: that id and the offset it went out with. Allocated with the
    /// leg's first picture.
    recent: Option<Box<[(u16, u16); VP8_RECENT_PICTURES]>>,
}

/// Longest VP8 descriptor rewritten: the first byte, X, a 15-bit picture id, TL0PICIDX and
/// the TID/KEYIDX byte.
pub const VP8_DESCRIPTOR_MAX: usize = 6;

/// True if picture id `a` is newer than `b` (less than half the id space ahead).
fn pid_newer(a: u16, b: u16, long: bool) -> bool {
    let modulus = if long { 0x7fff } else { 0x7f };
    let d = a.wrapping_sub(b) & modulus;
    d != 0 && d <= modulus / 2
}

impl Vp8Munger {
    /// Writes the rewritten descriptor of `payload` into `out` and returns its length (the
    /// rest of the payload follows it unchanged); 0 when there is nothing to rewrite (no
    /// extension fields, or a payload too short to hold what it announces). `segment` is
    /// the forwarder's segment count for this packet: a new value moves the offsets
    /// (except for a retransmission, which keeps the numbering it was first sent with).
    pub fn munge(
        &mut self,
        segment: u64,
        retransmission: bool,
        payload: &[u8],
        out: &mut [u8; VP8_DESCRIPTOR_MAX],
    ) -> usize {
        let Some(d) = vp8_descriptor(payload) else {
            return 0;
        };
        let i = d.len;
        let pid = d.pid;
        let tl0 = d.tl0_at.map(|at| payload[at]);
        if self.segment != Some(segment) && !retransmission {
            self.segment = Some(segment);
            self.pid_offset = match (pid, self.last_pid) {
                (Some((p, _)), Some(last)) => last.wrapping_add(1).wrapping_sub(p) & 0x7fff,
                _ => 0,
            };
            self.tl0_offset = match (tl0, self.last_tl0) {
                (Some(t), Some(last)) => last.wrapping_add(1).wrapping_sub(t),
                _ => 0,
            };
            self.newest_source = None;
            if let Some(r) = self.recent.as_mut() {
                r.fill((NO_PICTURE, 0));
            }
        }
        out[..i].copy_from_slice(&payload[..i]);
        if let Some((p, long)) = pid {
            let recent = self
                .recent
                .get_or_insert_with(|| Box::new([(NO_PICTURE, 0); VP8_RECENT_PICTURES]));
            let slot = usize::from(p) % VP8_RECENT_PICTURES;
            let known = Some(recent[slot])
                .filter(|(source, _)| *source == p)
                .map(|(_, offset)| offset);
            let new = !retransmission && self.newest_source.is_none_or(|n| pid_newer(p, n, long));
            if new {
                self.newest_source = Some(p);
                recent[slot] = (p, self.pid_offset);
            }
            let offset = if new {
                self.pid_offset
            } else {
                known.unwrap_or(self.pid_offset)
            };
            let q = p.wrapping_add(offset) & 0x7fff;
            if long {
                out[2] = 0x80 | (q >> 8) as u8;
                out[3] = q as u8;
            } else {
                out[2] = (q & 0x7f) as u8;
            }
            if !retransmission {
                let q = if long { q } else { q & 0x7f };
                if self.last_pid.is_none_or(|last| pid_newer(q, last, long)) {
                    self.last_pid = Some(q);
                }
            }
        }
        if let (Some(at), Some(t)) = (d.tl0_at, tl0) {
            let u = t.wrapping_add(self.tl0_offset);
            out[at] = u;
            if !retransmission && self.last_tl0.is_none_or(|last| u.wrapping_sub(last) < 0x80) {
                self.last_tl0 = Some(u);
            }
        }
        i
    }

    /// `payload`'s picture is left out of the stream (a temporal layer above the
    /// subscriber's) in forwarder segment `segment`: the pictures after it are numbered one
    /// lower, so the receiver sees no gap. A late packet of a picture older than the newest
    /// changes nothing; nor does a drop before the segment's first picture went out (its
    /// offsets are chosen then).
    pub fn dropped(&mut self, segment: u64, payload: &[u8]) {
        if self.segment != Some(segment) {
            return;
        }
        let Some((p, long)) = vp8_descriptor(payload).and_then(|d| d.pid) else {
            return;
        };
        if self.newest_source.is_none_or(|n| pid_newer(p, n, long)) {
            self.newest_source = Some(p);
            self.pid_offset = self.pid_offset.wrapping_sub(1) & 0x7fff;
        }
    }
}

/// The frame size a VP8 keyframe packet announces (RFC 6386 §9.1: after the 3-byte frame
/// tag, the start code `9d 01 2a`, then 14-bit width and height, little-endian); None for
/// anything else. Simulcast layers are told apart by it.
pub fn vp8_keyframe_size(payload: &[u8]) -> Option<(u16, u16)> {
    if !vp8_is_keyframe(payload) {
        return None;
    }
    let b0 = *payload.first()?;
    let mut i = 1;
    if b0 & 0x80 != 0 {
        let x = *payload.get(i)?;
        i += 1;
        if x & 0x80 != 0 {
            i += if *payload.get(i)? & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            i += 1;
        }
        if x & 0x30 != 0 {
            i += 1;
        }
    }
    let frame = payload.get(i..i + 10)?;
    if frame[3..6] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    let width = u16::from_le_bytes([frame[6], frame[7]]) & 0x3fff;
    let height = u16::from_le_bytes([frame[8], frame[9]]) & 0x3fff;
    (width > 0 && height > 0).then_some((width, height))
}

/// The frame size a keyframe packet announces, for the codecs that carry it in the packet
/// that starts the keyframe: VP8 (the frame header), VP9 (the scalability structure of the
/// payload descriptor) and H.264 (the sequence parameter set). None for anything else.
pub fn keyframe_size(codec: Codec, payload: &[u8]) -> Option<(u16, u16)> {
    match codec {
        Codec::Vp8 => vp8_keyframe_size(payload),
        Codec::Vp9 => vp9_keyframe_size(payload),
        Codec::H264 => h264_keyframe_size(payload),
        Codec::Av1 => av1_keyframe_size(payload),
        Codec::Opus | Codec::Other => None,
    }
}

/// The largest frame size an AV1 keyframe packet announces: the sequence header OBU that
/// starts a new coded video sequence (the aggregation header's N bit; AV1 bitstream
/// specification §5.5: `max_frame_width_minus_1`, `max_frame_height_minus_1`). None for
/// anything else, or a header too short or too odd to read.
pub fn av1_keyframe_size(payload: &[u8]) -> Option<(u16, u16)> {
    if !av1_is_keyframe(payload) {
        return None;
    }
    let w = (payload[0] >> 4) & 0x03;
    let mut rest = payload.get(1..)?;
    // The first OBU element: with W = 1 it is all that follows, else it has a length.
    if w != 1 {
        let (len, used) = leb128(rest)?;
        rest = rest.get(used..used.checked_add(usize::try_from(len).ok()?)?)?;
    }
    let header = *rest.first()?;
    const OBU_SEQUENCE_HEADER: u8 = 1;
    if (header >> 3) & 0x0f != OBU_SEQUENCE_HEADER {
        return None;
    }
    let mut i = 1 + usize::from(header & 0x04 != 0);
    if header & 0x02 != 0 {
        i += leb128(rest.get(i..)?)?.1;
    }
    let mut r = BitReader::new(rest.get(i..)?);
    let _profile = r.bits(3)?;
    let _still = r.bits(1)?;
    if r.bits(1)? == 1 {
        // reduced_still_picture_header: one level, nothing else.
        r.bits(5)?;
    } else {
        let mut decoder_model = false;
        let mut delay_bits = 0;
        if r.bits(1)? == 1 {
            // timing_info()
            r.bits(32)?;
            r.bits(32)?;
            if r.bits(1)? == 1 {
                r.uvlc()?;
            }
            decoder_model = r.bits(1)? == 1;
            if decoder_model {
                delay_bits = r.bits(5)? + 1;
                r.bits(32)?;
                r.bits(5)?;
                r.bits(5)?;
            }
        }
        let display_delay = r.bits(1)? == 1;
        let points = r.bits(5)? + 1;
        for _ in 0..points {
            r.bits(12)?;
            if r.bits(5)? > 7 {
                r.bits(1)?;
            }
            if decoder_model && r.bits(1)? == 1 {
                r.bits(delay_bits)?;
                r.bits(delay_bits)?;
                r.bits(1)?;
            }
            if display_delay && r.bits(1)? == 1 {
                r.bits(4)?;
            }
        }
    }
    let width_bits = r.bits(4)? + 1;
    let height_bits = r.bits(4)? + 1;
    let width = r.bits(width_bits)?.checked_add(1)?;
    let height = r.bits(height_bits)?.checked_add(1)?;
    Some((u16::try_from(width).ok()?, u16::try_from(height).ok()?))
}

/// An unsigned LEB128 number (AV1's lengths): its value and how many bytes it took.
fn leb128(data: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, &b) in data.iter().take(8).enumerate() {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// Reads bits most significant first (AV1 headers have no emulation prevention).
struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> BitReader<'a> {
    fn new(data: &'a [u8]) -> Self {
        BitReader { data, pos: 0 }
    }

    /// `n` bits (at most 32) as a number.
    fn bits(&mut self, n: u32) -> Option<u32> {
        if n > 32 {
            return None;
        }
        let mut v = 0u64;
        for _ in 0..n {
            let byte = *self.data.get(self.pos / 8)?;
            v = (v << 1) | u64::from((byte >> (7 - self.pos % 8)) & 1);
            self.pos += 1;
        }
        u32::try_from(v).ok()
    }

    /// AV1's `uvlc()`: leading zeros, then that many bits.
    fn uvlc(&mut self) -> Option<u32> {
        let mut zeros = 0;
        while self.bits(1)? == 0 {
            zeros += 1;
            if zeros >= 32 {
                return Some(u32::MAX);
            }
        }
        let value = self.bits(zeros)?;
        Some(value.saturating_add((1u32 << zeros) - 1))
    }
}

/// The size in a VP9 payload descriptor's scalability structure (RFC 9628 §4.2.1, present
/// when V = 1, normally on keyframes): the largest spatial layer's width and height.
pub fn vp9_keyframe_size(payload: &[u8]) -> Option<(u16, u16)> {
    let ss = vp9_scalability(payload)?;
    let (width, height) = *ss
        .sizes
        .get(usize::from(ss.spatial_layers).checked_sub(1)?)?;
    (width > 0 && height > 0).then_some((width, height))
}

/// Most spatial layers a VP9 stream can announce (N_S is three bits).
pub const VP9_MAX_SPATIAL: usize = 8;

/// A VP9 packet's place in a scalable stream: the layer indices of its payload descriptor
/// (RFC 9628 §4.2, present when L = 1) and its frame boundary flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vp9Layer {
    /// SID: the spatial layer (0 is the smallest picture).
    pub spatial: u8,
    /// TID: the temporal layer.
    pub temporal: u8,
    /// B: the first packet of a layer frame.
    pub begin: bool,
    /// E: the last packet of a layer frame.
    pub end: bool,
    /// P = 0: the layer frame is not predicted from earlier pictures (a keyframe's layers).
    pub intra: bool,
    /// U: a switching-up point: this picture refers to no earlier picture of its own
    /// temporal layer or above, so a receiver that had the layers below may start decoding
    /// this layer here.
    pub switch_up: bool,
}

/// The layer indices of a VP9 payload descriptor, or None when it has none (L = 0: a
/// stream without layers) or is truncated.
pub fn vp9_layer(payload: &[u8]) -> Option<Vp9Layer> {
    let b0 = *payload.first()?;
    if b0 & 0x20 == 0 {
        return None;
    }
    let mut i = 1;
    if b0 & 0x80 != 0 {
        i += if *payload.get(i)? & 0x80 != 0 { 2 } else { 1 };
    }
    // |TID(3)|U|SID(3)|D|
    let layer = *payload.get(i)?;
    Some(Vp9Layer {
        spatial: (layer >> 1) & 0x07,
        temporal: layer >> 5,
        begin: b0 & 0x08 != 0,
        end: b0 & 0x04 != 0,
        intra: b0 & 0x40 == 0,
        switch_up: layer & 0x10 != 0,
    })
}

/// A VP9 scalability structure (RFC 9628 §4.2.1): how many spatial layers the stream has
/// and, when it says, each one's picture size (smallest first; zero when not given).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vp9Structure {
    pub spatial_layers: u8,
    pub sizes: [(u16, u16); VP9_MAX_SPATIAL],
}

/// The scalability structure of a VP9 payload descriptor, present when V = 1 (normally on
/// the first packet of a keyframe). None when absent or truncated.
pub fn vp9_scalability(payload: &[u8]) -> Option<Vp9Structure> {
    let b0 = *payload.first()?;
    if b0 & 0x02 == 0 {
        return None; // no scalability structure
    }
    let mut i = 1;
    if b0 & 0x80 != 0 {
        i += if *payload.get(i)? & 0x80 != 0 { 2 } else { 1 };
    }
    let flexible = b0 & 0x10 != 0;
    if b0 & 0x20 != 0 {
        // Layer indices, and TL0PICIDX in non-flexible mode.
        i += if flexible { 1 } else { 2 };
    }
    if flexible && b0 & 0x40 != 0 {
        // Up to three reference indices, each with a "another follows" bit.
        for _ in 0..3 {
            let p_diff = *payload.get(i)?;
            i += 1;
            if p_diff & 0x01 == 0 {
                break;
            }
        }
    }
    let ss = *payload.get(i)?;
    i += 1;
    let layers = usize::from(ss >> 5) + 1;
    let mut out = Vp9Structure {
        spatial_layers: layers as u8,
        sizes: [(0, 0); VP9_MAX_SPATIAL],
    };
    if ss & 0x10 != 0 {
        // Y: the resolutions follow.
        let sizes = payload.get(i..i + 4 * layers)?;
        for (slot, size) in out.sizes.iter_mut().zip(sizes.chunks_exact(4)) {
            *slot = (
                u16::from_be_bytes([size[0], size[1]]),
                u16::from_be_bytes([size[2], size[3]]),
            );
        }
    }
    Some(out)
}

/// VP9 (payload descriptor of RFC 9628 §4.2). The first byte is `|I|P|L|F|B|E|V|Z|`.
///
/// Kept simple: a packet starts a keyframe when P (inter-picture predicted) is 0 and B
/// (beginning of a frame) is 1, and, if the layer indices are present (L = 1), the spatial
/// layer id is 0. Flexible mode and scalability structures need no further parsing for this.
pub fn vp9_is_keyframe(payload: &[u8]) -> bool {
    let Some(&b0) = payload.first() else {
        return false;
    };
    let inter_predicted = b0 & 0x40 != 0;
    let begins_frame = b0 & 0x08 != 0;
    if inter_predicted || !begins_frame {
        return false;
    }
    let mut i = 1;
    if b0 & 0x80 != 0 {
        // I: picture id, 7 or 15 bits depending on M.
        let Some(&pid) = payload.get(i) else {
            return false;
        };
        i += if pid & 0x80 != 0 { 2 } else { 1 };
    }
    if b0 & 0x20 != 0 {
        // L: |TID(3)|U|SID(3)|D|
        let Some(&layer) = payload.get(i) else {
            return false;
        };
        return (layer >> 1) & 0x07 == 0;
    }
    true
}

/// NAL unit types that make a packet a keyframe start: IDR slice and sequence parameter set.
const H264_IDR: u8 = 5;
const H264_SPS: u8 = 7;
const H264_STAP_A: u8 = 24;
const H264_FU_A: u8 = 28;

/// H.264 (RFC 6184 §5.6–5.8): a single NAL unit of type 5 (IDR) or 7 (SPS); a STAP-A (24)
/// aggregating any such NAL unit; or an FU-A (28) fragment with the start bit set whose
/// original NAL type is 5 or 7.
pub fn h264_is_keyframe(payload: &[u8]) -> bool {
    let Some(&b0) = payload.first() else {
        return false;
    };
    match b0 & 0x1f {
        H264_IDR | H264_SPS => true,
        H264_STAP_A => stap_a_has_keyframe(payload.get(1..).unwrap_or_default()),
        H264_FU_A => payload
            .get(1)
            .is_some_and(|&fu| fu & 0x80 != 0 && matches!(fu & 0x1f, H264_IDR | H264_SPS)),
        _ => false,
    }
}

/// The frame size of the sequence parameter set this packet carries (a single SPS NAL
/// unit, or one in a STAP-A); browsers send the SPS with every IDR. None if there is none
/// or it does not parse.
pub fn h264_keyframe_size(payload: &[u8]) -> Option<(u16, u16)> {
    let b0 = *payload.first()?;
    match b0 & 0x1f {
        H264_SPS => h264_sps_size(payload.get(1..)?),
        H264_STAP_A => {
            let mut body = payload.get(1..)?;
            while let [hi, lo, rest @ ..] = body {
                let size = usize::from(u16::from_be_bytes([*hi, *lo]));
                let nal = rest.get(..size)?;
                if nal.first().is_some_and(|&h| h & 0x1f == H264_SPS) {
                    return h264_sps_size(nal.get(1..)?);
                }
                if size == 0 {
                    return None;
                }
                body = rest.get(size..)?;
            }
            None
        }
        _ => None,
    }
}

/// Reads an RBSP bit by bit, dropping emulation prevention bytes (`00 00 03`).
struct RbspReader<'a> {
    data: &'a [u8],
    byte: usize,
    bit: u8,
    zeros: u8,
}

impl<'a> RbspReader<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self {
            data,
            byte: 0,
            bit: 0,
            zeros: 0,
        }
    }

    fn bit(&mut self) -> Option<u32> {
        if self.bit == 0 {
            // Entering a new byte: skip it if it is an emulation prevention byte.
            let b = *self.data.get(self.byte)?;
            if self.zeros >= 2 && b == 0x03 {
                self.byte += 1;
                self.zeros = 0;
            }
            let b = *self.data.get(self.byte)?;
            self.zeros = if b == 0 {
                self.zeros.saturating_add(1)
            } else {
                0
            };
        }
        let b = *self.data.get(self.byte)?;
        let v = (b >> (7 - self.bit)) & 1;
        self.bit += 1;
        if self.bit == 8 {
            self.bit = 0;
            self.byte += 1;
        }
        Some(u32::from(v))
    }

    fn bits(&mut self, n: u32) -> Option<u32> {
        (0..n).try_fold(0u32, |acc, _| Some((acc << 1) | self.bit()?))
    }

    /// ue(v): unsigned exp-Golomb, at most 31 leading zeros.
    fn ue(&mut self) -> Option<u32> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros > 31 {
                return None;
            }
        }
        let rest = self.bits(zeros)?;
        Some(((1u64 << zeros) - 1 + u64::from(rest)).min(u64::from(u32::MAX)) as u32)
    }

    /// se(v): signed exp-Golomb.
    fn se(&mut self) -> Option<i64> {
        let k = i64::from(self.ue()?);
        Some(if k % 2 == 1 { (k + 1) / 2 } else { -(k / 2) })
    }
}

/// Width and height from an SPS (ITU-T H.264 §7.3.2.1.1, after the NAL header byte):
/// macroblocks times 16, minus the cropping window.
fn h264_sps_size(rbsp: &[u8]) -> Option<(u16, u16)> {
    let mut r = RbspReader::new(rbsp);
    let profile = r.bits(8)?;
    r.bits(16)?; // constraint flags, level
    r.ue()?; // seq_parameter_set_id
    let mut chroma_format = 1;
    let mut separate_planes = false;
    if matches!(
        profile,
        100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
    ) {
        chroma_format = r.ue()?;
        if chroma_format > 3 {
            return None;
        }
        if chroma_format == 3 {
            separate_planes = r.bit()? == 1;
        }
        r.ue()?; // bit_depth_luma_minus8
        r.ue()?; // bit_depth_chroma_minus8
        r.bit()?; // qpprime_y_zero_transform_bypass_flag
        if r.bit()? == 1 {
            // Scaling matrices: parsed only to skip them.
            let lists = if chroma_format == 3 { 12 } else { 8 };
            for i in 0..lists {
                if r.bit()? == 1 {
                    let size = if i < 6 { 16 } else { 64 };
                    let (mut last, mut next) = (8i64, 8i64);
                    for _ in 0..size {
                        if next != 0 {
                            next = (last + r.se()? + 256).rem_euclid(256);
                        }
                        if next != 0 {
                            last = next;
                        }
                    }
                }
            }
        }
    }
    r.ue()?; // log2_max_frame_num_minus4
    match r.ue()? {
        0 => {
            r.ue()?; // log2_max_pic_order_cnt_lsb_minus4
        }
        1 => {
            r.bit()?; // delta_pic_order_always_zero_flag
            r.se()?; // offset_for_non_ref_pic
            r.se()?; // offset_for_top_to_bottom_field
            let cycle = r.ue()?;
            if cycle > 255 {
                return None;
            }
            for _ in 0..cycle {
                r.se()?;
            }
        }
        2 => {}
        _ => return None,
    }
    r.ue()?; // max_num_ref_frames
    r.bit()?; // gaps_in_frame_num_value_allowed_flag
    let width_mbs = u64::from(r.ue()?) + 1;
    let height_units = u64::from(r.ue()?) + 1;
    let frame_mbs_only = u64::from(r.bit()?);
    if frame_mbs_only == 0 {
        r.bit()?; // mb_adaptive_frame_field_flag
    }
    r.bit()?; // direct_8x8_inference_flag
    let (mut left, mut right, mut top, mut bottom) = (0u64, 0u64, 0u64, 0u64);
    if r.bit()? == 1 {
        left = u64::from(r.ue()?);
        right = u64::from(r.ue()?);
        top = u64::from(r.ue()?);
        bottom = u64::from(r.ue()?);
    }
    // Crop units (§7.4.2.1.1): chroma subsampling, and fields count twice vertically.
    let (sub_w, sub_h) = match (chroma_format, separate_planes) {
        (0, _) | (3, true) => (1, 1),
        (1, _) => (2, 2),
        (2, _) => (2, 1),
        _ => (1, 1),
    };
    let crop_x = sub_w;
    let crop_y = sub_h * (2 - frame_mbs_only);
    let width = (width_mbs * 16).checked_sub(crop_x * (left + right))?;
    let height = (height_units * 16 * (2 - frame_mbs_only)).checked_sub(crop_y * (top + bottom))?;
    let ok = |v: u64| (1..=16_384).contains(&v);
    (ok(width) && ok(height)).then_some((width as u16, height as u16))
}

/// Walks the `(16-bit size, NAL unit)` list of a STAP-A body; stops at the first malformed size.
fn stap_a_has_keyframe(mut body: &[u8]) -> bool {
    while let [hi, lo, rest @ ..] = body {
        let size = usize::from(u16::from_be_bytes([*hi, *lo]));
        let (Some(nal), Some(next)) = (rest.get(..size), rest.get(size..)) else {
            return false;
        };
        if nal
            .first()
            .is_some_and(|&h| matches!(h & 0x1f, H264_IDR | H264_SPS))
        {
            return true;
        }
        if size == 0 {
            return false;
        }
        body = next;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// VP8 keyframe frame tag (P = 0) followed by the start code and a 640x480 size.
    const VP8_KEY_HEADER: [u8; 10] = [0x50, 0x42, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01];
    /// VP8 interframe frame tag (P = 1).
    const VP8_DELTA_HEADER: [u8; 3] = [0x31, 0x42, 0x00];

    fn cat(a: &[u8], b: &[u8]) -> Vec<u8> {
        [a, b].concat()
    }

    fn keyframe_vectors() -> Vec<(Codec, Vec<u8>)> {
        vec![
            // VP8: minimal descriptor, S=1 PID=0.
            (Codec::Vp8, cat(&[0x10], &VP8_KEY_HEADER)),
            // VP8: X, I with 15-bit picture id, L, T.
            (
                Codec::Vp8,
                cat(&[0x90, 0xe0, 0x81, 0x23, 0x07, 0x40], &VP8_KEY_HEADER),
            ),
            // VP8: X, I with 7-bit picture id, K only.
            (Codec::Vp8, cat(&[0x90, 0x90, 0x11, 0x05], &VP8_KEY_HEADER)),
            // VP9: I=0 P=0 B=1 E=1.
            (Codec::Vp9, vec![0x0c, 0x82, 0x49, 0x83, 0x42]),
            // VP9: I (15-bit), L with SID 0.
            (Codec::Vp9, vec![0xaa, 0x80, 0x01, 0x20, 0x00, 0x82]),
            // H264: IDR single NAL.
            (Codec::H264, vec![0x65, 0x88, 0x84, 0x00]),
            // H264: SPS single NAL.
            (Codec::H264, vec![0x67, 0x42, 0xc0, 0x1f]),
            // H264: STAP-A with SPS + PPS.
            (
                Codec::H264,
                vec![0x78, 0x00, 0x03, 0x67, 0x42, 0xc0, 0x00, 0x02, 0x68, 0xce],
            ),
            // H264: STAP-A with SEI then IDR.
            (
                Codec::H264,
                vec![0x78, 0x00, 0x02, 0x06, 0x05, 0x00, 0x02, 0x65, 0x88],
            ),
            // H264: FU-A start of IDR.
            (Codec::H264, vec![0x7c, 0x85, 0x88, 0x84]),
            // AV1: one OBU (W = 1), a new coded video sequence (N = 1): a sequence header.
            (Codec::Av1, vec![0x18, 0x0a, 0x0b]),
        ]
    }

    #[test]
    fn keyframes_detected() {
        for (codec, bytes) in keyframe_vectors() {
            assert!(is_keyframe(codec, &bytes), "{codec:?} {bytes:02x?}");
        }
    }

    #[test]
    fn non_keyframes_rejected() {
        let cases: Vec<(Codec, Vec<u8>)> = vec![
            // VP8 interframe.
            (Codec::Vp8, cat(&[0x10], &VP8_DELTA_HEADER)),
            // VP8 keyframe header but S=0 (continuation packet).
            (Codec::Vp8, cat(&[0x00], &VP8_KEY_HEADER)),
            // VP8 S=1 but partition 1.
            (Codec::Vp8, cat(&[0x11], &VP8_KEY_HEADER)),
            // VP8 with extensions: the P bit looked up at the wrong offset would say keyframe.
            (
                Codec::Vp8,
                vec![0x90, 0xe0, 0x81, 0x22, 0x06, 0x40, 0x31, 0x00],
            ),
            // VP9 inter-predicted.
            (Codec::Vp9, vec![0x4c, 0x00]),
            // VP9 not the beginning of a frame.
            (Codec::Vp9, vec![0x04, 0x00]),
            // VP9 keyframe of spatial layer 1.
            (Codec::Vp9, vec![0x28, 0x02, 0x00]),
            // H264 non-IDR slice.
            (Codec::H264, vec![0x41, 0x9a, 0x00]),
            // H264 PPS alone.
            (Codec::H264, vec![0x68, 0xce, 0x38]),
            // H264 STAP-A with SEI and PPS only.
            (
                Codec::H264,
                vec![0x78, 0x00, 0x02, 0x06, 0x05, 0x00, 0x02, 0x68, 0xce],
            ),
            // H264 STAP-A whose second size overruns: IDR beyond the end is not trusted.
            (
                Codec::H264,
                vec![0x78, 0x00, 0x02, 0x06, 0x05, 0x00, 0x09, 0x65, 0x88],
            ),
            // H264 FU-A middle fragment of an IDR.
            (Codec::H264, vec![0x7c, 0x05, 0x88]),
            // H264 FU-A start of a non-IDR slice.
            (Codec::H264, vec![0x7c, 0x81, 0x9a]),
            // AV1: not a new coded video sequence, or a continuation.
            (Codec::Av1, vec![0x10, 0x0a, 0x0b]),
            (Codec::Av1, vec![0x98, 0x0a, 0x0b]),
            // Others never.
            (Codec::Other, vec![0x65, 0x00]),
            (Codec::Opus, vec![0x78, 0x00]),
        ];
        for (codec, bytes) in cases {
            assert!(!is_keyframe(codec, &bytes), "{codec:?} {bytes:02x?}");
        }
    }

    #[test]
    fn empty_payloads() {
        for codec in [
            Codec::Opus,
            Codec::Vp8,
            Codec::Vp9,
            Codec::H264,
            Codec::Av1,
            Codec::Other,
        ] {
            assert!(!is_keyframe(codec, &[]));
        }
    }

    #[test]
    fn truncated_prefixes_do_not_panic() {
        for (codec, bytes) in keyframe_vectors() {
            for len in 0..bytes.len() {
                // Whatever the answer, it must return.
                let _ = is_keyframe(codec, &bytes[..len]);
            }
        }
        // Descriptor prefixes without the payload header are never keyframes.
        let vp8 = cat(&[0x90, 0xe0, 0x81, 0x23, 0x07, 0x40], &VP8_KEY_HEADER);
        for len in 0..=6 {
            assert!(!vp8_is_keyframe(&vp8[..len]), "len {len}");
        }
        assert!(!vp9_is_keyframe(&[0xaa, 0x80]));
        assert!(!h264_is_keyframe(&[0x7c]));
        assert!(!h264_is_keyframe(&[0x78, 0x00]));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            for codec in [Codec::Opus, Codec::Vp8, Codec::Vp9, Codec::H264, Codec::Av1, Codec::Other] {
                let _ = is_keyframe(codec, &bytes);
            }
        }

        #[test]
        fn stap_a_random_sizes_never_panic(sizes in proptest::collection::vec(any::<u16>(), 0..8), fill: u8) {
            let mut bytes = vec![0x78];
            for size in sizes {
                bytes.extend_from_slice(&size.to_be_bytes());
                bytes.extend(std::iter::repeat_n(fill, usize::from(size % 8)));
            }
            let _ = h264_is_keyframe(&bytes);
        }
    }

    #[test]
    fn vp8_keyframes_announce_their_size() {
        // Descriptor: X and S set, I with a 15-bit picture id; then the frame tag (keyframe),
        // the start code, 640 x 360.
        let packet = [
            0x90, 0x80, 0x81, 0x23, 0x50, 0x42, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0x68, 0x01,
        ];
        assert_eq!(vp8_keyframe_size(&packet), Some((640, 360)));
        assert_eq!(vp8_keyframe_size(&packet[..12]), None, "truncated");
        let mut delta = packet;
        delta[4] |= 0x01;
        assert_eq!(vp8_keyframe_size(&delta), None, "not a keyframe");
        let mut bad = packet;
        bad[8] = 0;
        assert_eq!(vp8_keyframe_size(&bad), None, "no start code");
    }

    /// Writes SPS fields as the standard lays them out, then adds emulation prevention.
    #[derive(Default)]
    struct SpsWriter {
        bits: Vec<u8>,
    }

    impl SpsWriter {
        fn put(&mut self, v: u64, n: u32) -> &mut Self {
            for i in (0..n).rev() {
                self.bits.push(((v >> i) & 1) as u8);
            }
            self
        }
        fn ue(&mut self, v: u32) -> &mut Self {
            let x = u64::from(v) + 1;
            let len = 64 - x.leading_zeros();
            self.put(0, len - 1).put(x, len)
        }
        fn se(&mut self, v: i32) -> &mut Self {
            let k = if v > 0 {
                2 * v as u32 - 1
            } else {
                (-2 * v) as u32
            };
            self.ue(k)
        }
        /// The NAL unit: header byte, the RBSP with its stop bit, emulation prevention.
        fn nal(&mut self) -> Vec<u8> {
            self.put(1, 1);
            while !self.bits.len().is_multiple_of(8) {
                self.bits.push(0);
            }
            let rbsp: Vec<u8> = self
                .bits
                .chunks(8)
                .map(|c| c.iter().fold(0, |a, b| (a << 1) | b))
                .collect();
            let mut out = vec![0x67];
            let mut zeros = 0;
            for b in rbsp {
                if zeros >= 2 && b <= 3 {
                    out.push(0x03);
                    zeros = 0;
                }
                out.push(b);
                zeros = if b == 0 { zeros + 1 } else { 0 };
            }
            out
        }
    }

    /// Profile, constraints, level, sps id; a baseline-style body from log2_max_frame_num on.
    fn sps_body(
        w: &mut SpsWriter,
        width_mbs: u32,
        height_units: u32,
        frame_mbs_only: bool,
        crop: Option<[u32; 4]>,
    ) {
        w.ue(0).ue(0).ue(2); // log2_max_frame_num_minus4, poc type 0, its lsb size
        w.ue(1).put(0, 1); // max_num_ref_frames, gaps
        w.ue(width_mbs - 1).ue(height_units - 1);
        w.put(u64::from(frame_mbs_only), 1);
        if !frame_mbs_only {
            w.put(0, 1);
        }
        w.put(1, 1); // direct_8x8_inference
        match crop {
            Some([l, r, t, b]) => {
                w.put(1, 1).ue(l).ue(r).ue(t).ue(b);
            }
            None => {
                w.put(0, 1);
            }
        }
        w.put(0, 1); // vui_parameters_present_flag
    }

    #[test]
    fn h264_sps_announces_the_frame_size() {
        // Constrained baseline 640x360: 40 x 23 macroblocks, 8 rows cropped (4 units of 2).
        let mut w = SpsWriter::default();
        w.put(66, 8).put(0xc0, 8).put(31, 8).ue(0);
        sps_body(&mut w, 40, 23, true, Some([0, 0, 0, 4]));
        let sps = w.nal();
        assert_eq!(h264_keyframe_size(&sps), Some((640, 360)));
        assert_eq!(keyframe_size(Codec::H264, &sps), Some((640, 360)));

        // The same in a STAP-A after an SEI, with a PPS behind it.
        let mut stap = vec![0x78, 0x00, 0x02, 0x06, 0x05];
        stap.extend_from_slice(&(sps.len() as u16).to_be_bytes());
        stap.extend_from_slice(&sps);
        stap.extend_from_slice(&[0x00, 0x02, 0x68, 0xce]);
        assert_eq!(h264_keyframe_size(&stap), Some((640, 360)));

        // High profile 1280x720 with scaling lists and picture order type 1.
        let mut w = SpsWriter::default();
        w.put(100, 8).put(0, 8).put(40, 8).ue(1);
        w.ue(1).ue(0).ue(0).put(0, 1); // 4:2:0, 8 bit, no bypass
        w.put(1, 1); // scaling matrix present
        for i in 0..8 {
            if i == 1 || i == 6 {
                w.put(1, 1);
                let size = if i < 6 { 16 } else { 64 };
                for j in 0..size {
                    w.se(if j == 3 { -8 } else { 1 });
                }
            } else {
                w.put(0, 1);
            }
        }
        w.ue(0).ue(1); // log2_max_frame_num_minus4, poc type 1
        w.put(0, 1).se(-2).se(3).ue(2).se(5).se(-7);
        w.ue(3)
            .put(0, 1)
            .ue(79)
            .ue(44)
            .put(1, 1)
            .put(1, 1)
            .put(0, 1)
            .put(0, 1);
        assert_eq!(h264_keyframe_size(&w.nal()), Some((1280, 720)));

        // Interlaced 1920x1080: 34 map units of field pairs, cropped by 2 units of 4 rows.
        let mut w = SpsWriter::default();
        w.put(77, 8).put(0, 8).put(40, 8).ue(0);
        sps_body(&mut w, 120, 34, false, Some([0, 0, 0, 2]));
        assert_eq!(h264_keyframe_size(&w.nal()), Some((1920, 1080)));

        // Level 0 and a large sps id make `00 00 00`: emulation prevention must be undone.
        let mut w = SpsWriter::default();
        w.put(66, 8).put(0, 8).put(0, 8).ue(1000);
        sps_body(&mut w, 20, 15, true, None);
        let sps = w.nal();
        assert!(sps.windows(3).any(|x| x == [0, 0, 3]), "{sps:02x?}");
        assert_eq!(h264_keyframe_size(&sps), Some((320, 240)));

        // Not an SPS, truncated, or cropped away to nothing.
        assert_eq!(h264_keyframe_size(&[0x65, 0x88, 0x84]), None);
        let full = {
            let mut w = SpsWriter::default();
            w.put(66, 8).put(0xc0, 8).put(31, 8).ue(0);
            sps_body(&mut w, 40, 23, true, Some([0, 0, 0, 4]));
            w.nal()
        };
        for len in 0..full.len() - 1 {
            assert_eq!(h264_keyframe_size(&full[..len]), None, "len {len}");
        }
        let mut w = SpsWriter::default();
        w.put(66, 8).put(0, 8).put(31, 8).ue(0);
        sps_body(&mut w, 1, 1, true, Some([0, 0, 0, 9]));
        assert_eq!(h264_keyframe_size(&w.nal()), None, "cropped below zero");
    }

    #[test]
    fn vp9_scalability_structure_announces_the_frame_size() {
        // I (7-bit picture id), B, V; SS: one spatial layer with its size, 640 x 360.
        let packet = [0x8a, 0x05, 0x10, 0x02, 0x80, 0x01, 0x68, 0x00];
        assert_eq!(vp9_keyframe_size(&packet), Some((640, 360)));
        // Non-flexible with layer indices (two bytes), three spatial layers: the largest.
        let packet = [
            0xaa, 0x80, 0x01, 0x00, 0x00, 0x50, 0x01, 0x40, 0x00, 0xb4, 0x02, 0x80, 0x01, 0x68,
            0x05, 0x00, 0x02, 0xd0,
        ];
        assert_eq!(keyframe_size(Codec::Vp9, &packet), Some((1280, 720)));
        // No V bit, or Y = 0, or truncated: nothing.
        assert_eq!(vp9_keyframe_size(&[0x88, 0x05]), None);
        assert_eq!(vp9_keyframe_size(&[0x8a, 0x05, 0x00, 0x00]), None);
        assert_eq!(vp9_keyframe_size(&packet[..packet.len() - 1]), None);
        // Every layer's size, smallest first.
        let ss = vp9_scalability(&packet).unwrap();
        assert_eq!(ss.spatial_layers, 3);
        assert_eq!(&ss.sizes[..3], &[(320, 180), (640, 360), (1280, 720)]);
        // Y = 0: the layer count without sizes.
        let ss = vp9_scalability(&[0x8a, 0x05, 0x20]).unwrap();
        assert_eq!((ss.spatial_layers, ss.sizes[0]), (2, (0, 0)));
    }

    /// Chromium's AV1 keyframe packet: aggregation header with N and W = 2, then the
    /// sequence header OBU with its length (profile 0, one operating point, 640 x 360).
    #[test]
    fn av1_sequence_header_announces_the_frame_size() {
        // seq_profile 0, still 0, reduced 0, timing 0, display delay 0, 1 operating point
        // (idc 0, level 8, tier 0), width bits 10, height bits 9, 639, 359.
        let mut bits = String::new();
        bits += "000"; // profile
        bits += "0"; // still_picture
        bits += "0"; // reduced_still_picture_header
        bits += "0"; // timing_info_present_flag
        bits += "0"; // initial_display_delay_present_flag
        bits += "00000"; // operating_points_cnt_minus_1
        bits += "000000000000"; // operating_point_idc
        bits += "01000"; // seq_level_idx 8
        bits += "0"; // seq_tier
        bits += "1001"; // frame_width_bits_minus_1 = 9
        bits += "1000"; // frame_height_bits_minus_1 = 8
        bits += &format!("{:010b}", 639);
        bits += &format!("{:09b}", 359);
        while !bits.len().is_multiple_of(8) {
            bits.push('0');
        }
        let body: Vec<u8> = (0..bits.len() / 8)
            .map(|i| u8::from_str_radix(&bits[8 * i..8 * i + 8], 2).unwrap())
            .collect();
        // OBU header: type 1, no extension, no size field.
        let mut obu = vec![0x08];
        obu.extend_from_slice(&body);
        let mut packet = vec![0x28, obu.len() as u8];
        packet.extend_from_slice(&obu);
        packet.extend_from_slice(&[0x32, 0x00]); // the frame OBU that follows
        assert_eq!(keyframe_size(Codec::Av1, &packet), Some((640, 360)));
        // W = 1: the only element, without a length.
        let mut single = vec![0x18];
        single.extend_from_slice(&obu);
        assert_eq!(av1_keyframe_size(&single), Some((640, 360)));
        // Not a new sequence, not a sequence header, truncated: nothing.
        let mut not_new = packet.clone();
        not_new[0] = 0x20;
        assert_eq!(av1_keyframe_size(&not_new), None);
        assert_eq!(av1_keyframe_size(&[0x18, 0x30, 0x00]), None);
        assert_eq!(av1_keyframe_size(&packet[..5]), None);
    }

    #[test]
    fn vp9_layer_indices() {
        // I (15-bit pid), L, B, E; TID 2, U, SID 1, D; TL0PICIDX.
        let packet = [0xac, 0x80, 0x01, 0b0101_0011, 0x07, 0xff];
        assert_eq!(
            vp9_layer(&packet),
            Some(Vp9Layer {
                spatial: 1,
                temporal: 2,
                begin: true,
                end: true,
                intra: true,
                switch_up: true,
            })
        );
        // P set, no I: the layer byte right after the first.
        let l = vp9_layer(&[0x60, 0b0000_0100]).unwrap();
        assert_eq!(
            (l.spatial, l.temporal, l.begin, l.end, l.intra),
            (2, 0, false, false, false)
        );
        // No layer indices, or truncated before them: none.
        assert_eq!(vp9_layer(&[0x88, 0x05]), None);
        assert_eq!(vp9_layer(&[0xa0, 0x85]), None);
        assert_eq!(vp9_layer(&[]), None);
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic_the_size_parsers(bytes in proptest::collection::vec(any::<u8>(), 0..96)) {
            for codec in [Codec::Vp8, Codec::Vp9, Codec::H264, Codec::Av1] {
                let _ = keyframe_size(codec, &bytes);
            }
            let _ = vp9_layer(&bytes);
            let _ = vp9_scalability(&bytes);
            let _ = vp8_temporal(&bytes);
            let mut m = Vp8Munger::default();
            let mut out = [0u8; VP8_DESCRIPTOR_MAX];
            m.dropped(0, &bytes);
            let n = m.munge(1, false, &bytes, &mut out);
            m.dropped(1, &bytes);
            assert!(n <= bytes.len());
            let mut sps = vec![0x67];
            sps.extend_from_slice(&bytes);
            let _ = h264_keyframe_size(&sps);
        }
    }

    /// A VP8 packet with a 15-bit picture id, TL0PICIDX and TID byte, then two payload bytes.
    fn vp8_packet(pid: u16, tl0: u8) -> Vec<u8> {
        vec![
            0x90,
            0xe0,
            0x80 | (pid >> 8) as u8,
            pid as u8,
            tl0,
            0x20,
            0xaa,
            0xbb,
        ]
    }

    fn pid_tl0(desc: &[u8]) -> (u16, u8) {
        (
            (u16::from(desc[2] & 0x7f) << 8) | u16::from(desc[3]),
            desc[4],
        )
    }

    #[test]
    fn vp8_picture_ids_continue_across_a_source_switch() {
        let mut m = Vp8Munger::default();
        let mut out = [0u8; VP8_DESCRIPTOR_MAX];
        // Segment 1 (the first source): numbers kept as they are.
        for (pid, tl0) in [(9000u16, 40u8), (9001, 40), (9002, 41)] {
            assert_eq!(m.munge(1, false, &vp8_packet(pid, tl0), &mut out), 6);
            assert_eq!(pid_tl0(&out), (pid, tl0));
        }
        // Segment 2 (another layer, its own numbering): continues from 9002 and 41.
        assert_eq!(m.munge(2, false, &vp8_packet(200, 7), &mut out), 6);
        assert_eq!(pid_tl0(&out), (9003, 42));
        assert_eq!(m.munge(2, false, &vp8_packet(201, 8), &mut out), 6);
        assert_eq!(pid_tl0(&out), (9004, 43));
        // A retransmission of the segment keeps its first numbering.
        assert_eq!(m.munge(2, true, &vp8_packet(200, 7), &mut out), 6);
        assert_eq!(pid_tl0(&out), (9003, 42));
        // Wrap of the 15-bit space.
        let mut m = Vp8Munger::default();
        m.munge(1, false, &vp8_packet(0x7ffe, 255), &mut out);
        m.munge(2, false, &vp8_packet(5, 3), &mut out);
        assert_eq!(pid_tl0(&out), (0x7fff, 0));
        m.munge(2, false, &vp8_packet(6, 4), &mut out);
        assert_eq!(pid_tl0(&out), (0, 1));
        // A late packet of an older picture just before a switch: the next segment still
        // follows the newest picture sent, not the late one.
        let mut m = Vp8Munger::default();
        m.munge(1, false, &vp8_packet(500, 20), &mut out);
        m.munge(1, false, &vp8_packet(502, 21), &mut out);
        m.munge(1, false, &vp8_packet(501, 20), &mut out);
        m.munge(2, false, &vp8_packet(9, 3), &mut out);
        assert_eq!(pid_tl0(&out), (503, 22));
        // The rest of the packet is untouched: the caller sends `out[..n]` then payload[n..].
        let p = vp8_packet(10, 1);
        let n = m.munge(2, false, &p, &mut out);
        assert_eq!(&p[n..], &[0xaa, 0xbb]);
    }

    /// `vp8_packet` in temporal layer `tid` (Y set on TL1 and TL2 switching points).
    fn vp8_layered(pid: u16, tl0: u8, tid: u8, sync: bool) -> Vec<u8> {
        let mut p = vp8_packet(pid, tl0);
        p[5] = tid << 6 | if sync { 0x20 } else { 0 };
        p
    }

    #[test]
    fn vp8_temporal_layer_fields() {
        assert_eq!(
            vp8_temporal(&vp8_layered(7, 1, 2, true)),
            Some(Vp8Temporal {
                temporal: 2,
                sync: true,
                start: true
            })
        );
        // Not the frame's first packet (S = 0).
        let mut p = vp8_layered(7, 1, 1, false);
        p[0] = 0x80;
        assert_eq!(
            vp8_temporal(&p).map(|t| (t.temporal, t.sync, t.start)),
            Some((1, false, false))
        );
        // K without T: no temporal layer; no extension; truncated.
        assert_eq!(vp8_temporal(&[0x90, 0x10, 0x05]), None);
        assert_eq!(vp8_temporal(&[0x10, 0x9d]), None);
        assert_eq!(vp8_temporal(&[0x90, 0xe0, 0x80, 0x05]), None);
    }

    #[test]
    fn vp8_pictures_left_out_are_numbered_past() {
        let mut m = Vp8Munger::default();
        let mut out = [0u8; VP8_DESCRIPTOR_MAX];
        let mut send = |m: &mut Vp8Munger, segment, pid, retransmission| {
            m.munge(
                segment,
                retransmission,
                &vp8_layered(pid, 3, 0, false),
                &mut out,
            );
            pid_tl0(&out).0
        };
        assert_eq!(send(&mut m, 1, 100, false), 100);
        m.dropped(1, &vp8_layered(101, 3, 2, true));
        m.dropped(1, &vp8_layered(101, 3, 2, true)); // its second packet
        assert_eq!(send(&mut m, 1, 102, false), 101);
        m.dropped(1, &vp8_layered(103, 3, 2, false));
        // A late packet of picture 102 keeps its number; so does a retransmission of 100.
        assert_eq!(send(&mut m, 1, 102, false), 101);
        assert_eq!(send(&mut m, 1, 100, true), 100);
        assert_eq!(send(&mut m, 1, 104, false), 102);
        // A late packet of a dropped picture older than the newest moves nothing.
        m.dropped(1, &vp8_layered(103, 3, 2, false));
        assert_eq!(send(&mut m, 1, 105, false), 103);
        // Many pictures later (every other one dropped), a retransmission of 104 still
        // gets the number it went out with.
        let mut expect = 103;
        for k in 0..60u16 {
            m.dropped(1, &vp8_layered(106 + 2 * k, 3, 2, false));
            expect += 1;
            assert_eq!(send(&mut m, 1, 107 + 2 * k, false), expect);
        }
        assert_eq!(send(&mut m, 1, 104, true), 102);
        assert_eq!(send(&mut m, 1, 105, true), 103);
        // A drop in a segment not started yet changes nothing: the switch decides.
        m.dropped(2, &vp8_layered(7, 0, 2, false));
        assert_eq!(send(&mut m, 2, 8, false), expect + 1);
        // Across the 15-bit wrap.
        let mut m = Vp8Munger::default();
        assert_eq!(send(&mut m, 1, 0x7ffe, false), 0x7ffe);
        m.dropped(1, &vp8_layered(0x7fff, 3, 2, false));
        assert_eq!(send(&mut m, 1, 0, false), 0x7fff);
        m.dropped(1, &vp8_layered(1, 3, 2, false));
        assert_eq!(send(&mut m, 1, 2, false), 0);
    }

    #[test]
    fn vp8_descriptors_without_ids_or_too_short_are_left_alone() {
        let mut m = Vp8Munger::default();
        let mut out = [0u8; VP8_DESCRIPTOR_MAX];
        assert_eq!(m.munge(1, false, &[0x10, 0x9d], &mut out), 0, "no X");
        assert_eq!(m.munge(1, false, &[], &mut out), 0);
        assert_eq!(m.munge(1, false, &[0x90], &mut out), 0);
        assert_eq!(m.munge(1, false, &[0x90, 0xe0, 0x80], &mut out), 0);
        // 7-bit picture id: rewritten within 7 bits.
        let n = m.munge(1, false, &[0x90, 0x80, 0x05, 0x01], &mut out);
        assert_eq!((n, out[2]), (3, 0x05));
        let n = m.munge(2, false, &[0x90, 0x80, 0x70, 0x01], &mut out);
        assert_eq!((n, out[2]), (3, 0x06));
    }

    proptest! {
        #[test]
        fn vp8_munging_random_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..16), seg in 0u64..3) {
            let mut m = Vp8Munger::default();
            let mut out = [0u8; VP8_DESCRIPTOR_MAX];
            let n = m.munge(seg, false, &bytes, &mut out);
            prop_assert!(n <= bytes.len() && n <= VP8_DESCRIPTOR_MAX);
        }
    }
}
