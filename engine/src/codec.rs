//! Keyframe detection from RTP payloads (VP8, VP9, H.264).
//!
//! The publisher side calls [`is_keyframe`] once per packet and stores the answer in
//! [`MediaPacket::keyframe`](crate::media::MediaPacket::keyframe), so subscribers never parse.
//! These are parsers of network input: they read with bounds-checked accessors only, never
//! panic and return `false` on anything truncated or malformed.

use crate::media::Codec;

/// True if this packet starts a keyframe (see the per-codec functions for the exact rule).
/// AV1 and [`Codec::Other`] always return false; Opus has no keyframes.
pub fn is_keyframe(codec: Codec, payload: &[u8]) -> bool {
    match codec {
        Codec::Vp8 => vp8_is_keyframe(payload),
        Codec::Vp9 => vp9_is_keyframe(payload),
        Codec::H264 => h264_is_keyframe(payload),
        Codec::Opus | Codec::Av1 | Codec::Other => false,
    }
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
            // AV1 and others never.
            (Codec::Av1, vec![0x18, 0x0a, 0x0b]),
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
}
