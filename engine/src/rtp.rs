//! Plain RTP packets (RFC 3550) in and out of the embedding API, where no SRTP stack is
//! involved: `PublishTrack` hands the server whole RTP packets, `SubscribeTrack` hands them
//! back. Parsing is bounds-checked and never panics; a packet is checked against RFC 3550
//! section 5.1 (version, CSRC count, extension and padding lengths).

use bytes::{BufMut, Bytes, BytesMut};

use crate::media::Ssrc;

/// The largest packet accepted from the API (an Ethernet MTU).
pub const MAX_PACKET: usize = 1500;

/// Why a packet was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RtpError {
    #[error("shorter than an RTP header")]
    TooShort,
    #[error("longer than {MAX_PACKET} bytes")]
    TooLong,
    #[error("RTP version must be 2")]
    Version,
    #[error("the CSRC list or header extension runs past the end")]
    Truncated,
    #[error("the padding length is invalid")]
    Padding,
    #[error("the payload is empty")]
    EmptyPayload,
}

/// The fields of a parsed RTP packet; the payload shares the input's buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RtpPacket {
    pub marker: bool,
    pub payload_type: u8,
    pub seq: u16,
    pub timestamp: u32,
    pub ssrc: Ssrc,
    pub payload: Bytes,
}

/// Parses one RTP packet. Header extensions and CSRCs are skipped; padding is removed.
pub fn parse(packet: &Bytes) -> Result<RtpPacket, RtpError> {
    let b = packet.as_ref();
    if b.len() > MAX_PACKET {
        return Err(RtpError::TooLong);
    }
    if b.len() < 12 {
        return Err(RtpError::TooShort);
    }
    if b[0] >> 6 != 2 {
        return Err(RtpError::Version);
    }
    let padding = b[0] & 0x20 != 0;
    let extension = b[0] & 0x10 != 0;
    let csrcs = usize::from(b[0] & 0x0f);
    let mut offset = 12 + 4 * csrcs;
    if extension {
        let Some(ext) = b.get(offset..offset + 4) else {
            return Err(RtpError::Truncated);
        };
        let words = usize::from(u16::from_be_bytes([ext[2], ext[3]]));
        offset += 4 + 4 * words;
    }
    if offset > b.len() {
        return Err(RtpError::Truncated);
    }
    let mut end = b.len();
    if padding {
        let pad = usize::from(b[end - 1]);
        if pad == 0 || offset + pad > end {
            return Err(RtpError::Padding);
        }
        end -= pad;
    }
    if offset == end {
        return Err(RtpError::EmptyPayload);
    }
    Ok(RtpPacket {
        marker: b[1] & 0x80 != 0,
        payload_type: b[1] & 0x7f,
        seq: u16::from_be_bytes([b[2], b[3]]),
        timestamp: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        ssrc: Ssrc(u32::from_be_bytes([b[8], b[9], b[10], b[11]])),
        payload: packet.slice(offset..end),
    })
}

/// Writes a minimal RTP packet (no CSRCs, no extensions, no padding).
pub fn write(
    marker: bool,
    payload_type: u8,
    seq: u16,
    timestamp: u32,
    ssrc: Ssrc,
    payload: &[u8],
) -> Bytes {
    let mut out = BytesMut::with_capacity(12 + payload.len());
    out.put_u8(0x80);
    out.put_u8(u8::from(marker) << 7 | (payload_type & 0x7f));
    out.put_u16(seq);
    out.put_u32(timestamp);
    out.put_u32(ssrc.0);
    out.put_slice(payload);
    out.freeze()
}

/// Writes a minimal RTP packet carrying an RFC 6464 audio level as a one-byte header
/// extension (RFC 8285) with id [`LEVEL_EXT_ID`] (used on the node's internal track taps).
pub fn write_with_level(
    marker: bool,
    payload_type: u8,
    seq: u16,
    timestamp: u32,
    ssrc: Ssrc,
    level: crate::media::AudioLevel,
    payload: &[u8],
) -> Bytes {
    let mut out = BytesMut::with_capacity(20 + payload.len());
    out.put_u8(0x90);
    out.put_u8(u8::from(marker) << 7 | (payload_type & 0x7f));
    out.put_u16(seq);
    out.put_u32(timestamp);
    out.put_u32(ssrc.0);
    out.put_slice(&[0xbe, 0xde, 0, 1, LEVEL_EXT_ID << 4, level.to_byte(), 0, 0]);
    out.put_slice(payload);
    out.freeze()
}

/// Extension id of [`write_with_level`].
pub const LEVEL_EXT_ID: u8 = 1;

/// The RFC 6464 audio level in a packet written by [`write_with_level`] (a one-byte header
/// extension with id [`LEVEL_EXT_ID`]), if any. Bounds-checked; None on anything else.
pub fn audio_level(packet: &[u8]) -> Option<crate::media::AudioLevel> {
    let first = *packet.first()?;
    if first & 0x10 == 0 {
        return None;
    }
    let csrcs = usize::from(first & 0x0f) * 4;
    let ext = packet.get(12 + csrcs..)?;
    if ext.get(..2)? != [0xbe, 0xde] {
        return None;
    }
    let words = usize::from(u16::from_be_bytes([*ext.get(2)?, *ext.get(3)?]));
    let body = ext.get(4..4 + words * 4)?;
    let mut i = 0;
    while i < body.len() {
        let b = body[i];
        if b == 0 {
            i += 1; // padding
            continue;
        }
        let (id, len) = (b >> 4, usize::from(b & 0x0f) + 1);
        if id == 15 {
            return None;
        }
        if id == LEVEL_EXT_ID && len == 1 {
            return Some(crate::media::AudioLevel::from_byte(*body.get(i + 1)?));
        }
        i += 1 + len;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn audio_level_round_trips_and_minimal_packets_have_none() {
        let level = crate::media::AudioLevel::from_byte(0x80 | 42);
        let p = write_with_level(false, 111, 7, 960, Ssrc(1), level, &[0xfc, 1, 2]);
        assert_eq!(audio_level(&p), Some(level));
        let parsed = parse(&p).expect("valid");
        assert_eq!(parsed.payload.as_ref(), &[0xfc, 1, 2]);
        assert_eq!(audio_level(&write(false, 111, 7, 960, Ssrc(1), &[1])), None);
        assert_eq!(audio_level(&[0x90, 0, 0]), None);
    }

    #[test]
    fn round_trips_a_minimal_packet() {
        let p = write(true, 111, 65535, 0xdead_beef, Ssrc(42), &[0xf8, 0xff, 0xfe]);
        let parsed = parse(&p).expect("valid");
        assert!(parsed.marker);
        assert_eq!(parsed.payload_type, 111);
        assert_eq!(parsed.seq, 65535);
        assert_eq!(parsed.timestamp, 0xdead_beef);
        assert_eq!(parsed.ssrc, Ssrc(42));
        assert_eq!(parsed.payload.as_ref(), &[0xf8, 0xff, 0xfe]);
    }

    #[test]
    fn skips_csrcs_and_extensions_and_strips_padding() {
        let mut b = vec![0x80 | 0x20 | 0x10 | 1, 96, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3];
        b.extend_from_slice(&[9, 9, 9, 9]); // one CSRC
        b.extend_from_slice(&[0xbe, 0xde, 0, 1, 0x10, 0xff, 0, 0]); // one-word extension
        b.extend_from_slice(&[1, 2, 3]); // payload
        b.extend_from_slice(&[0, 0, 3]); // three bytes of padding
        let parsed = parse(&Bytes::from(b)).expect("valid");
        assert_eq!(parsed.payload.as_ref(), &[1, 2, 3]);
    }

    #[test]
    fn refuses_malformed_packets() {
        assert_eq!(
            parse(&Bytes::from_static(&[0x80; 11])),
            Err(RtpError::TooShort)
        );
        assert_eq!(
            parse(&Bytes::from(vec![0x80; 1501])),
            Err(RtpError::TooLong)
        );
        let mut v1 = write(false, 96, 1, 1, Ssrc(1), &[1]).to_vec();
        v1[0] = 0x40;
        assert_eq!(parse(&Bytes::from(v1)), Err(RtpError::Version));
        let mut csrc = write(false, 96, 1, 1, Ssrc(1), &[1]).to_vec();
        csrc[0] |= 0x0f;
        assert_eq!(parse(&Bytes::from(csrc)), Err(RtpError::Truncated));
        let mut pad = write(false, 96, 1, 1, Ssrc(1), &[1, 200]).to_vec();
        pad[0] |= 0x20;
        assert_eq!(parse(&Bytes::from(pad)), Err(RtpError::Padding));
        assert_eq!(
            parse(&write(false, 96, 1, 1, Ssrc(1), &[])),
            Err(RtpError::EmptyPayload)
        );
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(b in proptest::collection::vec(any::<u8>(), 0..1600)) {
            let _ = parse(&Bytes::from(b));
        }
    }
}
