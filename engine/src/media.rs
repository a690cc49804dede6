//! Shared media types: SSRC newtype, media kind, codec identity and the engine's view of one
//! received RTP packet ([`MediaPacket`]) with its RFC 6464 audio level.
//!
//! These types cross every module line of the engine and the actor boundary; they carry no
//! behaviour beyond small conversions.

use std::time::Instant;

use bytes::Bytes;

/// RTP synchronization source identifier (RFC 3550 §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ssrc(pub u32);

impl std::fmt::Display for Ssrc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#010x}", self.0)
    }
}

/// Audio or video.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MediaKind {
    /// Audio track.
    Audio,
    /// Video track.
    Video,
}

/// The codecs the SFU knows about. Anything else is [`Codec::Other`] and is forwarded
/// without codec-specific handling (no keyframe detection).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Codec {
    /// Opus audio, 48 kHz RTP clock.
    Opus,
    /// VP8 video (RFC 7741).
    Vp8,
    /// VP9 video.
    Vp9,
    /// H.264 video (RFC 6184).
    H264,
    /// AV1 video.
    Av1,
    /// Any other codec. Treated as video with a 90 kHz clock.
    Other,
}

impl Codec {
    /// Maps a MIME type such as `"audio/opus"` or `"video/VP8"` (case-insensitive) to a codec.
    /// Unknown types map to [`Codec::Other`]. `"video/AV1X"` (old Chrome name) is accepted as AV1.
    pub fn from_mime(mime: &str) -> Codec {
        const TABLE: [(&str, Codec); 6] = [
            ("audio/opus", Codec::Opus),
            ("video/vp8", Codec::Vp8),
            ("video/vp9", Codec::Vp9),
            ("video/h264", Codec::H264),
            ("video/av1", Codec::Av1),
            ("video/av1x", Codec::Av1),
        ];
        let mime = mime.trim();
        TABLE
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(mime))
            .map_or(Codec::Other, |&(_, codec)| codec)
    }

    /// Audio for Opus, video for everything else (including [`Codec::Other`]).
    pub fn kind(self) -> MediaKind {
        match self {
            Codec::Opus => MediaKind::Audio,
            Codec::Vp8 | Codec::Vp9 | Codec::H264 | Codec::Av1 | Codec::Other => MediaKind::Video,
        }
    }

    /// RTP clock rate in Hz: 48000 for Opus, 90000 for video and [`Codec::Other`].
    pub fn clock_rate(self) -> u32 {
        match self {
            Codec::Opus => 48_000,
            Codec::Vp8 | Codec::Vp9 | Codec::H264 | Codec::Av1 | Codec::Other => 90_000,
        }
    }

    /// Canonical MIME type as used in SDP (`"audio/opus"`, `"video/VP8"`, ...).
    /// [`Codec::Other`] has no MIME type of its own and returns `"application/octet-stream"`.
    pub fn mime(self) -> &'static str {
        match self {
            Codec::Opus => "audio/opus",
            Codec::Vp8 => "video/VP8",
            Codec::Vp9 => "video/VP9",
            Codec::H264 => "video/H264",
            Codec::Av1 => "video/AV1",
            Codec::Other => "application/octet-stream",
        }
    }
}

/// One received RTP packet as the engine sees it. Cloning is cheap (payload is a Bytes handle).
#[derive(Clone, Debug)]
pub struct MediaPacket {
    /// Source SSRC as sent by the publisher.
    pub ssrc: Ssrc,
    /// Source RTP sequence number.
    pub seq: u16,
    /// Source RTP timestamp.
    pub timestamp: u32,
    /// RTP marker bit.
    pub marker: bool,
    /// RTP payload type as negotiated with the publisher.
    pub payload_type: u8,
    /// RTP payload (after the header and extensions, padding removed).
    pub payload: Bytes,
    /// When the packet was received (virtual time in tests).
    pub arrival: Instant,
    /// Set by the publisher side once (codec::is_keyframe) so subscribers need not parse.
    pub keyframe: bool,
    /// RFC 6464 level if the packet carried the extension.
    pub audio_level: Option<AudioLevel>,
    /// The frame's layers where the transport read them from a header extension (AV1's
    /// dependency descriptor); VP9 legs read theirs from the payload descriptor.
    pub layer: Option<crate::codec::Vp9Layer>,
    /// AV1: the dependency descriptor as the publisher sent it, forwarded with the packet.
    pub dependency: Option<Bytes>,
}

/// RFC 6464 client-to-mixer audio level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AudioLevel {
    /// V bit: the sender's voice activity detector flagged voice.
    pub voice: bool,
    /// 0 = loudest (0 dBov) .. 127 = silence (-127 dBov)
    pub level: u8,
}

impl AudioLevel {
    /// Parses the one-byte RFC 6464 extension element (V bit + 7-bit level).
    pub fn from_byte(b: u8) -> AudioLevel {
        AudioLevel {
            voice: b & 0x80 != 0,
            level: b & 0x7f,
        }
    }

    /// Encodes the one-byte extension element. Levels above 127 are clamped to 127 (silence).
    pub fn to_byte(self) -> u8 {
        (u8::from(self.voice) << 7) | self.level.min(127)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mime_round_trip_and_case() {
        for codec in [Codec::Opus, Codec::Vp8, Codec::Vp9, Codec::H264, Codec::Av1] {
            assert_eq!(Codec::from_mime(codec.mime()), codec);
            assert_eq!(Codec::from_mime(&codec.mime().to_ascii_uppercase()), codec);
            assert_eq!(Codec::from_mime(&codec.mime().to_ascii_lowercase()), codec);
        }
        assert_eq!(Codec::from_mime("video/AV1X"), Codec::Av1);
        assert_eq!(Codec::from_mime("audio/PCMU"), Codec::Other);
        assert_eq!(Codec::from_mime(""), Codec::Other);
        assert_eq!(Codec::from_mime("video/vp8x"), Codec::Other);
    }

    #[test]
    fn kinds_and_clock_rates() {
        assert_eq!(Codec::Opus.kind(), MediaKind::Audio);
        assert_eq!(Codec::Opus.clock_rate(), 48_000);
        for codec in [
            Codec::Vp8,
            Codec::Vp9,
            Codec::H264,
            Codec::Av1,
            Codec::Other,
        ] {
            assert_eq!(codec.kind(), MediaKind::Video);
            assert_eq!(codec.clock_rate(), 90_000);
        }
    }

    #[test]
    fn audio_level_byte_round_trip() {
        for b in 0..=255u8 {
            let level = AudioLevel::from_byte(b);
            assert_eq!(level.to_byte(), b);
            assert!(level.level <= 127);
        }
        assert_eq!(
            AudioLevel::from_byte(0x80 | 20),
            AudioLevel {
                voice: true,
                level: 20
            }
        );
        assert_eq!(
            AudioLevel::from_byte(127),
            AudioLevel {
                voice: false,
                level: 127
            }
        );
        assert_eq!(
            AudioLevel {
                voice: false,
                level: 200
            }
            .to_byte(),
            127
        );
    }

    #[test]
    fn ssrc_display() {
        assert_eq!(Ssrc(0x1234).to_string(), "0x00001234");
    }
}
