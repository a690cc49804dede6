//! Data channel relay: what a participant sends on a data channel reaches every other
//! participant's channel with the same label, wrapped so the receiver knows who sent it.
//!
//! Wire format, server to client (documented in `proto/README.md`):
//! * a text message arrives as text: JSON `{"from":"PA_...","identity":"...","name":"...",
//!   "text":"..."}` (`from` empty for a message from the app, i.e. the REST/gRPC messages
//!   endpoint, which arrives on channels labelled [`APP_LABEL`]);
//! * a binary message arrives as binary: one byte `n`, the sender's participant id in `n`
//!   bytes of ASCII, then the payload unchanged.
//!
//! Limits per participant: messages up to [`MAX_RELAYED_BYTES`], [`RATE_PER_SEC`] messages
//! and [`BYTES_PER_SEC`] bytes per second with bursts of twice that; anything over is
//! dropped and counted (`hearth_data_dropped_total`), never queued.

use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use hearth_engine::turn::rate::RateLimiter;

use crate::ids::ParticipantId;

/// Largest message relayed (the transport itself takes up to 64 KiB).
pub const MAX_RELAYED_BYTES: usize = 16 * 1024;
/// Messages per second one participant may send (bursts of twice as many).
pub const RATE_PER_SEC: f64 = 100.0;
/// Bytes per second one participant may send (bursts of twice as many).
pub const BYTES_PER_SEC: f64 = 256.0 * 1024.0;
/// The label of the channels app messages (the messages endpoint) are delivered on.
pub const APP_LABEL: &str = "chat";
/// Copies one meeting relays per second (bursts of twice as many): every sender within its
/// own limit still cannot make a large meeting relay N x N messages.
pub const MEETING_COPIES_PER_SEC: f64 = 5_000.0;
/// Largest envelope sent (the transport's limit; escaping can grow text).
pub const MAX_ENVELOPE_BYTES: usize = 64 * 1024;

/// The meeting-wide budget of relayed copies.
#[derive(Debug)]
pub struct CopyBudget(RateLimiter);

impl CopyBudget {
    pub fn new(now: Instant) -> Self {
        let rate = MEETING_COPIES_PER_SEC as u64;
        Self(RateLimiter::exact(rate, 2 * rate, now))
    }

    /// True if `copies` may go now (and takes them).
    pub fn allow(&mut self, now: Instant, copies: usize) -> bool {
        self.0.allow(now, copies)
    }
}

/// One relayed message, ready for every receiver (the envelope is built once).
#[derive(Clone, Debug)]
pub struct DataMessage {
    pub from: ParticipantId,
    pub label: String,
    pub binary: bool,
    pub envelope: Bytes,
}

/// Wraps a message from `from` for its receivers.
pub fn envelope(
    from: &ParticipantId,
    identity: &str,
    name: &str,
    binary: bool,
    payload: &[u8],
) -> Bytes {
    if binary {
        let id = from.as_str().as_bytes();
        let id = &id[..id.len().min(255)];
        let mut out = BytesMut::with_capacity(1 + id.len() + payload.len());
        out.put_u8(id.len() as u8);
        out.put_slice(id);
        out.put_slice(payload);
        return out.freeze();
    }
    let text = String::from_utf8_lossy(payload);
    let mut out = String::with_capacity(64 + identity.len() + name.len() + text.len());
    out.push_str("{\"from\":");
    json_string(&mut out, from.as_str());
    out.push_str(",\"identity\":");
    json_string(&mut out, identity);
    out.push_str(",\"name\":");
    json_string(&mut out, name);
    out.push_str(",\"text\":");
    json_string(&mut out, &text);
    out.push('}');
    Bytes::from(out)
}

/// Appends `s` as a JSON string literal.
fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Token buckets of one sender: messages and bytes.
#[derive(Debug)]
pub struct DataLimiter {
    messages: RateLimiter,
    bytes: RateLimiter,
}

impl DataLimiter {
    pub fn new(now: Instant) -> Self {
        let (messages, bytes) = (RATE_PER_SEC as u64, BYTES_PER_SEC as u64);
        Self {
            messages: RateLimiter::exact(messages, 2 * messages, now),
            bytes: RateLimiter::exact(bytes, 2 * bytes, now),
        }
    }

    /// True if a message of `len` bytes may go now (and takes its tokens; a message
    /// refused for its bytes still spends its message token).
    pub fn allow(&mut self, now: Instant, len: usize) -> bool {
        self.messages.allow(now, 1) && self.bytes.allow(now, len)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn text_envelopes_are_json_and_binary_ones_carry_the_sender_first() {
        let from = ParticipantId::from_string("PA_abc");
        let text = envelope(&from, "ada", "Ada \"L\"", false, "hi\n\u{1}\\".as_bytes());
        assert_eq!(
            std::str::from_utf8(&text).unwrap(),
            r#"{"from":"PA_abc","identity":"ada","name":"Ada \"L\"","text":"hi\n\u0001\\"}"#
        );
        let bin = envelope(&from, "ada", "Ada", true, &[9, 8]);
        assert_eq!(&bin[..], b"\x06PA_abc\x09\x08");
    }

    #[test]
    fn the_limiter_allows_bursts_then_the_rate() {
        let t0 = Instant::now();
        let mut l = DataLimiter::new(t0);
        let allowed = (0..500).filter(|_| l.allow(t0, 10)).count();
        assert_eq!(allowed, 200);
        assert!(l.allow(t0 + Duration::from_millis(10), 10));
        assert!(!l.allow(t0 + Duration::from_millis(10), 10));
        // Bytes: a burst of 512 KiB, then 256 KiB/s.
        let mut l = DataLimiter::new(t0);
        let big = 16 * 1024;
        let allowed = (0..100).filter(|_| l.allow(t0, big)).count();
        assert_eq!(allowed, 32);
    }
}
