//! What simulated participants send: Opus frames (speech or the small silence frames of a
//! muted microphone) and VP8 frames of realistic sizes, each RTP payload ending with a
//! measurement trailer.
//!
//! The trailer lets a receiver attribute every packet to its sender and measure one-way
//! added latency: sender and receiver run in this process and share one monotonic clock.
//! The SFU forwards payloads untouched, so the trailer survives.
//!
//! ```text
//! ... codec payload ... | magic "HL" | sender id u32 | send time µs u64 |  (14 bytes, big endian)
//! ```

use bytes::{BufMut, Bytes, BytesMut};

pub const TRAILER: usize = 14;
const MAGIC: [u8; 2] = *b"HL";
/// RTP payloads are kept under this (an MTU minus RTP/SRTP/UDP/IP overhead).
pub const MAX_PAYLOAD: usize = 1150;

/// A decoded trailer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trailer {
    pub sender: u32,
    pub sent_us: u64,
}

fn with_trailer(mut body: BytesMut, t: Trailer) -> Bytes {
    body.put_slice(&MAGIC);
    body.put_u32(t.sender);
    body.put_u64(t.sent_us);
    body.freeze()
}

/// Reads the trailer of a payload, if it has one.
pub fn trailer(payload: &[u8]) -> Option<Trailer> {
    let start = payload.len().checked_sub(TRAILER)?;
    let t = &payload[start..];
    if t[..2] != MAGIC {
        return None;
    }
    let sender = u32::from_be_bytes([t[2], t[3], t[4], t[5]]);
    let sent_us = u64::from_be_bytes([t[6], t[7], t[8], t[9], t[10], t[11], t[12], t[13]]);
    Some(Trailer { sender, sent_us })
}

/// One 20 ms Opus packet: a TOC byte (SILK wideband 20 ms, mono, one frame) and a frame
/// of `speech` size (about 60 bytes at 24 kbit/s) or of silence (a muted microphone still
/// sends a few bytes every 20 ms).
pub fn opus_frame(speaking: bool, t: Trailer) -> Bytes {
    let size = if speaking { 60 } else { 3 };
    let mut b = BytesMut::with_capacity(1 + size + TRAILER);
    b.put_u8(0x48);
    b.put_bytes(0x5a, size);
    with_trailer(b, t)
}

/// A video bitrate profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct VideoProfile {
    pub bitrate_bps: u32,
    pub fps: u32,
    /// Sent as three simulcast layers (rids q, h, f: a quarter, half and full size, at 1/8,
    /// 1/3 and all of the bitrate), as a browser with simulcast on would.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub simulcast: bool,
}

/// Simulcast layers, lowest first: the bitrate divisor and the keyframes' frame size.
pub const SIMULCAST_LAYERS: [(u32, (u16, u16)); 3] =
    [(8, (320, 180)), (3, (640, 360)), (1, (1280, 720))];

impl VideoProfile {
    /// Bytes of an average delta frame.
    pub fn delta_bytes(&self) -> usize {
        (self.bitrate_bps / 8 / self.fps.max(1)) as usize
    }

    /// Keyframes are about 6 times a delta frame at these rates.
    pub fn key_bytes(&self) -> usize {
        self.delta_bytes() * 6
    }
}

/// One VP8 frame as RTP payloads (RFC 7741): a payload descriptor on each (`S` bit on the
/// first), the frame tag with the keyframe bit and, for keyframes, the start code and a
/// 1280x720 size; then filler; every packet ends with a trailer. Sizes vary by +-25%
/// around the profile's frame size (`jitter` in 0..1).
pub fn vp8_frame(profile: VideoProfile, keyframe: bool, jitter: f64, t: Trailer) -> Vec<Bytes> {
    vp8_frame_sized(profile, keyframe, jitter, t, (1280, 720))
}

/// [`vp8_frame`] whose keyframes announce `size` (simulcast layers are told apart by it).
pub fn vp8_frame_sized(
    profile: VideoProfile,
    keyframe: bool,
    jitter: f64,
    t: Trailer,
    size: (u16, u16),
) -> Vec<Bytes> {
    let base = if keyframe {
        profile.key_bytes()
    } else {
        profile.delta_bytes()
    } as f64;
    let total = (base * (0.75 + 0.5 * jitter.clamp(0.0, 1.0))).max(60.0) as usize;
    let per = MAX_PAYLOAD - TRAILER - 1;
    let count = total.div_ceil(per).max(1);
    let mut out = Vec::with_capacity(count);
    let mut left = total;
    for i in 0..count {
        let chunk = left.min(per);
        left -= chunk;
        let mut b = BytesMut::with_capacity(1 + chunk + TRAILER);
        if i == 0 {
            b.put_u8(0x10);
            if keyframe {
                b.put_slice(&[0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a]);
                b.put_u16_le(size.0);
                b.put_u16_le(size.1);
            } else {
                b.put_slice(&[0x11, 0x02, 0x00]);
            }
        } else {
            b.put_u8(0x00);
        }
        let filler = (1 + chunk).saturating_sub(b.len());
        b.put_bytes(0x33, filler);
        out.push(with_trailer(b, t));
    }
    out
}

/// True if a VP8 payload starts a keyframe (our descriptor has no extensions).
/// The next frame of a video sender: its packets' payloads (a keyframe if `keyframe`), with
/// the size jitter of frame number `*frame` (then counted) and the trailer `t`. Shared by
/// every kind of simulated participant, so all send the same frames.
pub fn next_vp8_frame(
    profile: VideoProfile,
    keyframe: bool,
    frame: &mut u64,
    t: Trailer,
) -> Vec<Bytes> {
    let jitter = frame_jitter(*frame);
    *frame += 1;
    vp8_frame(profile, keyframe, jitter, t)
}

/// The size jitter of frame number `frame` (0..1).
pub fn frame_jitter(frame: u64) -> f64 {
    ((frame.wrapping_mul(2_654_435_761)) % 1000) as f64 / 1000.0
}

pub fn vp8_is_keyframe(payload: &[u8]) -> bool {
    matches!(payload, [d, tag, ..] if d & 0x10 != 0 && tag & 0x01 == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailers_round_trip_and_garbage_has_none() {
        let t = Trailer {
            sender: 7,
            sent_us: 123_456_789,
        };
        let p = opus_frame(true, t);
        assert_eq!(trailer(&p), Some(t));
        assert_eq!(p[0], 0x48);
        assert_eq!(trailer(&p[..p.len() - 1]), None);
        assert_eq!(trailer(b"short"), None);
        assert_eq!(trailer(&[0u8; 40]), None);
    }

    #[test]
    fn silence_is_small_and_speech_is_not() {
        let t = Trailer {
            sender: 1,
            sent_us: 1,
        };
        assert!(opus_frame(false, t).len() < 20);
        assert!(opus_frame(true, t).len() > 60);
    }

    #[test]
    fn video_frames_follow_the_profile() {
        let hd = VideoProfile {
            bitrate_bps: 1_200_000,
            fps: 30,
            simulcast: false,
        };
        let t = Trailer {
            sender: 2,
            sent_us: 5,
        };
        let delta = vp8_frame(hd, false, 0.5, t);
        let bytes: usize = delta.iter().map(|p| p.len() - TRAILER).sum();
        assert!((4_500..=5_500).contains(&bytes), "{bytes}");
        assert!(delta.iter().all(|p| p.len() <= MAX_PAYLOAD));
        assert!(!vp8_is_keyframe(&delta[0]));
        let key = vp8_frame(hd, true, 0.5, t);
        assert!(vp8_is_keyframe(&key[0]));
        assert!(key.len() > delta.len());
        assert!(key.iter().all(|p| trailer(p) == Some(t)));
        assert!(key[1..].iter().all(|p| p[0] == 0));
    }
}
