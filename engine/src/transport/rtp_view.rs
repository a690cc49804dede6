//! An RTP header read in place (RFC 3550 §5.1, header extensions RFC 8285): the fields the
//! transport's receive path needs, without copying or allocating (a received packet's
//! header is read once per packet; `rtc-rtp`'s `Header` copies every extension into a
//! buffer of its own).
//!
//! Never panics on any input (property-tested in `fuzz`).

/// RFC 8285 one-byte header extensions.
const PROFILE_ONE_BYTE: u16 = 0xBEDE;
/// RFC 8285 two-byte header extensions (the low 4 bits are "appbits").
const PROFILE_TWO_BYTE: u16 = 0x1000;

/// One RTP header, borrowed from its packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtpView<'a> {
    pub padding: bool,
    pub marker: bool,
    pub payload_type: u8,
    pub sequence_number: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    /// Octets of the fixed header, CSRCs and extension block: where the payload starts,
    /// and what SRTP authenticates as the header.
    pub header_len: usize,
    /// The extension block's profile and data (without its 4-octet preamble).
    extensions: Option<(u16, &'a [u8])>,
}

impl<'a> RtpView<'a> {
    /// Reads the header at the start of `packet`; None if it is not a version 2 RTP header
    /// that fits in the packet.
    pub fn parse(packet: &'a [u8]) -> Option<Self> {
        let fixed = packet.get(..12)?;
        if fixed[0] >> 6 != 2 {
            return None;
        }
        let csrcs = usize::from(fixed[0] & 0x0f);
        let mut header_len = 12 + 4 * csrcs;
        let extensions = if fixed[0] & 0x10 != 0 {
            let preamble = packet.get(header_len..header_len + 4)?;
            let profile = u16::from_be_bytes([preamble[0], preamble[1]]);
            let words = usize::from(u16::from_be_bytes([preamble[2], preamble[3]]));
            let block = packet.get(header_len + 4..header_len + 4 + 4 * words)?;
            header_len += 4 + 4 * words;
            Some((profile, block))
        } else if packet.len() < header_len {
            return None;
        } else {
            None
        };
        Some(Self {
            padding: fixed[0] & 0x20 != 0,
            marker: fixed[1] & 0x80 != 0,
            payload_type: fixed[1] & 0x7f,
            sequence_number: u16::from_be_bytes([fixed[2], fixed[3]]),
            timestamp: u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]),
            ssrc: u32::from_be_bytes([fixed[8], fixed[9], fixed[10], fixed[11]]),
            header_len,
            extensions,
        })
    }

    /// The data of header extension `id` (one-byte or two-byte form), if the packet has it.
    /// A malformed element ends the search.
    pub fn extension(&self, id: u8) -> Option<&'a [u8]> {
        let (profile, block) = self.extensions?;
        let mut at = 0;
        if profile == PROFILE_ONE_BYTE {
            while let Some(&b) = block.get(at) {
                if b == 0 {
                    at += 1; // padding
                    continue;
                }
                let (element, len) = (b >> 4, usize::from(b & 0x0f) + 1);
                if element == 15 {
                    return None; // reserved: stop processing (RFC 8285 §4.2)
                }
                let data = block.get(at + 1..at + 1 + len)?;
                if element == id {
                    return Some(data);
                }
                at += 1 + len;
            }
        } else if profile & 0xfff0 == PROFILE_TWO_BYTE {
            while let Some(&element) = block.get(at) {
                if element == 0 {
                    at += 1; // padding
                    continue;
                }
                let len = usize::from(*block.get(at + 1)?);
                let data = block.get(at + 2..at + 2 + len)?;
                if element == id {
                    return Some(data);
                }
                at += 2 + len;
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc_shared::marshal::{Marshal, Unmarshal};

    fn packet(header: &rtc_rtp::header::Header, payload: &[u8]) -> Vec<u8> {
        let mut out = header.marshal().unwrap().to_vec();
        out.extend_from_slice(payload);
        out
    }

    fn header(profile: u16, extensions: &[(u8, &[u8])]) -> rtc_rtp::header::Header {
        rtc_rtp::header::Header {
            version: 2,
            padding: false,
            extension: !extensions.is_empty(),
            marker: true,
            payload_type: 111,
            sequence_number: 4242,
            timestamp: 0xdead_beef,
            ssrc: 0x0102_0304,
            csrc: vec![7, 8],
            extension_profile: profile,
            extensions: extensions
                .iter()
                .map(|(id, data)| rtc_rtp::header::Extension {
                    id: *id,
                    payload: bytes::Bytes::copy_from_slice(data),
                })
                .collect(),
            extensions_padding: 0,
        }
    }

    /// The view reads what `rtc-rtp` writes, in both extension forms, and finds the same
    /// extensions `rtc-rtp`'s parser finds.
    #[test]
    fn reads_what_rtc_rtp_writes() {
        for (profile, exts) in [
            (
                PROFILE_ONE_BYTE,
                vec![(1u8, &[0x90][..]), (3, &[0x01, 0x02]), (14, &[9; 16])],
            ),
            (
                PROFILE_TWO_BYTE,
                vec![(1, &[0x90][..]), (200, &[5; 40]), (3, &[])],
            ),
        ] {
            let h = header(profile, &exts);
            let p = packet(&h, b"payload");
            let v = RtpView::parse(&p).unwrap();
            assert_eq!(
                (
                    v.marker,
                    v.payload_type,
                    v.sequence_number,
                    v.timestamp,
                    v.ssrc
                ),
                (true, 111, 4242, 0xdead_beef, 0x0102_0304)
            );
            assert_eq!(v.header_len, p.len() - b"payload".len());
            let parsed = rtc_rtp::header::Header::unmarshal(&mut &p[..]).unwrap();
            for id in 0..=255u8 {
                assert_eq!(
                    v.extension(id),
                    parsed.get_extension(id).as_deref(),
                    "profile {profile:#x} id {id}"
                );
            }
        }
        let plain = packet(&header(0, &[]), b"x");
        let v = RtpView::parse(&plain).unwrap();
        assert_eq!((v.header_len, v.extension(1)), (12 + 8, None));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(super::super::proptest_cases()))]
        /// Any bytes: parsing and every extension lookup return without panicking, and a
        /// parsed header always fits in its packet.
        #[test]
        fn any_bytes_are_safe(mut data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..120), one_byte in proptest::prelude::any::<bool>()) {
            if data.len() >= 16 {
                // Often a plausible header with an extension block, so the walk is exercised.
                data[0] = 0x90 | (data[0] & 0x03);
                let profile: u16 = if one_byte { PROFILE_ONE_BYTE } else { PROFILE_TWO_BYTE };
                let at = 12 + 4 * usize::from(data[0] & 0x0f);
                if data.len() >= at + 4 {
                    data[at..at + 2].copy_from_slice(&profile.to_be_bytes());
                    data[at + 3] %= 8;
                }
            }
            if let Some(v) = RtpView::parse(&data) {
                proptest::prop_assert!(v.header_len <= data.len());
                for id in 0..=255u8 {
                    let _ = v.extension(id);
                }
            }
        }
    }

    #[test]
    fn refuses_what_does_not_fit() {
        let p = packet(&header(PROFILE_ONE_BYTE, &[(1, &[1, 2, 3])]), b"");
        for n in 0..p.len() {
            assert_eq!(RtpView::parse(&p[..n]), None, "truncated to {n}");
        }
        let mut v1 = p.clone();
        v1[0] = (v1[0] & 0x3f) | 0x40; // version 1
        assert_eq!(RtpView::parse(&v1), None);
        // An element that runs past its block ends the search.
        let mut bad = p.clone();
        bad[12 + 8 + 4] = 0x1f; // id 1, 16 octets: past the block
        assert_eq!(RtpView::parse(&bad).unwrap().extension(1), None);
    }
}
