//! The wire between a Hearth node and its speech-to-text worker processes (`hearth-stt`).
//!
//! The embedded speech engine (CTranslate2, C++) runs in worker processes of its own, so a
//! crash or an abort in native code, a corrupt model file or a runaway decode takes down one
//! worker, never the node that carries the media; the node restarts the worker and counts it.
//! The node talks to a worker over its stdin/stdout with length-prefixed frames:
//!
//! ```text
//! frame   = length:u32le body            length = body length, at most MAX_FRAME
//! body    = type:u8 fields...
//! Hello   (worker -> node, once, first) type 1: text model            (the model it loaded)
//! Request (node -> worker)              type 2: id:u64le flags:u8 text language
//!                                              samples:u32le f32le * samples  (16 kHz mono)
//! Result  (worker -> node)              type 3: id:u64le decode_us:u32le text transcript
//! Failure (worker -> node)              type 4: id:u64le text message (id 0: the worker
//!                                              cannot serve at all, e.g. no model; it exits)
//! text    = len:u32le utf8 bytes
//! flags   = bit 0: interim (a result that a later one replaces; the worker may decode it
//!           more cheaply, e.g. greedy instead of beam search)
//! ```
//!
//! Sans-IO: [`FrameReader`] takes bytes as they arrive and yields whole messages; the
//! `encode` functions append one frame to a buffer. Nothing here panics on input: a frame
//! that is too long or malformed is an error, and the reader stops there (the caller kills
//! the worker: the stream cannot be resynchronised).

use thiserror::Error;

/// Largest frame either side accepts: 30 s of 16 kHz f32 audio (1.92 MB) plus headroom.
pub const MAX_FRAME: usize = 4 * 1024 * 1024;
/// Longest audio a request may carry: Whisper's 30-second window at 16 kHz.
pub const MAX_SAMPLES: usize = 30 * 16_000;
/// Sample rate of request audio.
pub const SAMPLE_RATE: u32 = 16_000;

const HELLO: u8 = 1;
const REQUEST: u8 = 2;
const RESULT: u8 = 3;
const FAILURE: u8 = 4;
const FLAG_INTERIM: u8 = 1;

/// One message on the wire.
#[derive(Clone, Debug, PartialEq)]
pub enum SttMessage {
    /// The worker is ready; `model` names what it loaded.
    Hello { model: String },
    /// Transcribe `samples` (16 kHz mono, -1.0..=1.0).
    Request {
        id: u64,
        interim: bool,
        /// BCP 47 / ISO 639-1 language, e.g. `"en"`; empty means the model's default.
        language: String,
        samples: Vec<f32>,
    },
    /// The transcript of request `id` and how long the decode took.
    Result {
        id: u64,
        decode_us: u32,
        text: String,
    },
    /// Request `id` failed (id 0: the worker as a whole).
    Failure { id: u64, message: String },
}

/// A malformed frame.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum WireError {
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME}")]
    TooLong(usize),
    #[error("unknown message type {0}")]
    UnknownType(u8),
    #[error("truncated {0}")]
    Truncated(&'static str),
    #[error("request carries {0} samples, more than {MAX_SAMPLES}")]
    TooManySamples(usize),
    #[error("text is not UTF-8")]
    NotUtf8,
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
}

/// Appends one frame holding `msg` to `out`.
pub fn encode(msg: &SttMessage, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    match msg {
        SttMessage::Hello { model } => {
            out.push(HELLO);
            put_text(out, model);
        }
        SttMessage::Request {
            id,
            interim,
            language,
            samples,
        } => {
            out.push(REQUEST);
            out.extend_from_slice(&id.to_le_bytes());
            out.push(if *interim { FLAG_INTERIM } else { 0 });
            put_text(out, language);
            let n = samples.len().min(MAX_SAMPLES);
            out.extend_from_slice(&(n as u32).to_le_bytes());
            out.reserve(n * 4);
            for s in &samples[..n] {
                out.extend_from_slice(&s.to_le_bytes());
            }
        }
        SttMessage::Result {
            id,
            decode_us,
            text,
        } => {
            out.push(RESULT);
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&decode_us.to_le_bytes());
            put_text(out, text);
        }
        SttMessage::Failure { id, message } => {
            out.push(FAILURE);
            out.extend_from_slice(&id.to_le_bytes());
            put_text(out, message);
        }
    }
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

/// Texts longer than this are cut (at a character boundary) when encoded.
const MAX_TEXT: usize = 64 * 1024;

fn put_text(out: &mut Vec<u8>, text: &str) {
    let mut end = text.len().min(MAX_TEXT);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(&(end as u32).to_le_bytes());
    out.extend_from_slice(&text.as_bytes()[..end]);
}

/// Decodes one frame body (without its length prefix).
pub fn decode_body(body: &[u8]) -> Result<SttMessage, WireError> {
    let mut r = Reader { buf: body, pos: 0 };
    let kind = r.u8("type")?;
    let msg = match kind {
        HELLO => SttMessage::Hello {
            model: r.text("model")?,
        },
        REQUEST => {
            let id = r.u64("id")?;
            let flags = r.u8("flags")?;
            let language = r.text("language")?;
            let n = r.u32("sample count")? as usize;
            if n > MAX_SAMPLES {
                return Err(WireError::TooManySamples(n));
            }
            let raw = r.take(n * 4, "samples")?;
            let samples = raw
                .chunks_exact(4)
                .map(|c| {
                    let v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                    if v.is_finite() {
                        v.clamp(-1.0, 1.0)
                    } else {
                        0.0
                    }
                })
                .collect();
            SttMessage::Request {
                id,
                interim: flags & FLAG_INTERIM != 0,
                language,
                samples,
            }
        }
        RESULT => SttMessage::Result {
            id: r.u64("id")?,
            decode_us: r.u32("decode time")?,
            text: r.text("transcript")?,
        },
        FAILURE => SttMessage::Failure {
            id: r.u64("id")?,
            message: r.text("message")?,
        },
        other => return Err(WireError::UnknownType(other)),
    };
    if r.pos != body.len() {
        return Err(WireError::Trailing(body.len() - r.pos));
    }
    Ok(msg)
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(n).ok_or(WireError::Truncated(what))?;
        let s = self
            .buf
            .get(self.pos..end)
            .ok_or(WireError::Truncated(what))?;
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, WireError> {
        Ok(self.take(1, what)?[0])
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, WireError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn text(&mut self, what: &'static str) -> Result<String, WireError> {
        let n = self.u32(what)? as usize;
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| WireError::NotUtf8)
    }
}

/// Reassembles frames from a byte stream.
#[derive(Default)]
pub struct FrameReader {
    buf: Vec<u8>,
    failed: bool,
}

impl FrameReader {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the stream.
    pub fn handle_bytes(&mut self, bytes: &[u8]) {
        if !self.failed {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// The next whole message, `Ok(None)` when more bytes are needed. After an error the
    /// stream is unusable and every later call returns `Ok(None)`.
    pub fn poll_message(&mut self) -> Result<Option<SttMessage>, WireError> {
        if self.failed || self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_le_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len > MAX_FRAME {
            self.fail();
            return Err(WireError::TooLong(len));
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let result = decode_body(&self.buf[4..4 + len]);
        self.buf.drain(..4 + len);
        match result {
            Ok(msg) => Ok(Some(msg)),
            Err(e) => {
                self.fail();
                Err(e)
            }
        }
    }

    fn fail(&mut self) {
        self.failed = true;
        self.buf = Vec::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn roundtrip(msg: SttMessage) {
        let mut out = Vec::new();
        encode(&msg, &mut out);
        let mut r = FrameReader::new();
        // Byte by byte: frames reassemble across any split.
        for b in &out {
            r.handle_bytes(std::slice::from_ref(b));
        }
        assert_eq!(r.poll_message(), Ok(Some(msg)));
        assert_eq!(r.poll_message(), Ok(None));
    }

    #[test]
    fn every_message_roundtrips() {
        roundtrip(SttMessage::Hello {
            model: "whisper tiny.en (ct2, int8)".into(),
        });
        roundtrip(SttMessage::Request {
            id: 7,
            interim: true,
            language: "en".into(),
            samples: vec![0.0, 0.5, -1.0, 0.25],
        });
        roundtrip(SttMessage::Result {
            id: u64::MAX,
            decode_us: 123_456,
            text: "Grüße, world".into(),
        });
        roundtrip(SttMessage::Failure {
            id: 0,
            message: "no model at /x".into(),
        });
    }

    #[test]
    fn oversized_and_malformed_frames_are_errors() {
        let mut r = FrameReader::new();
        r.handle_bytes(&(MAX_FRAME as u32 + 1).to_le_bytes());
        assert_eq!(r.poll_message(), Err(WireError::TooLong(MAX_FRAME + 1)));
        r.handle_bytes(&[0; 16]);
        assert_eq!(r.poll_message(), Ok(None), "a failed stream stays failed");

        let mut r = FrameReader::new();
        r.handle_bytes(&[1, 0, 0, 0, 9]);
        assert_eq!(r.poll_message(), Err(WireError::UnknownType(9)));

        // A request claiming more samples than allowed.
        let mut body = vec![REQUEST];
        body.extend_from_slice(&1u64.to_le_bytes());
        body.push(0);
        body.extend_from_slice(&0u32.to_le_bytes());
        body.extend_from_slice(&(MAX_SAMPLES as u32 + 1).to_le_bytes());
        assert_eq!(
            decode_body(&body),
            Err(WireError::TooManySamples(MAX_SAMPLES + 1))
        );
    }

    #[test]
    fn non_finite_samples_are_zeroed_and_loud_ones_clamped() {
        let mut out = Vec::new();
        encode(
            &SttMessage::Request {
                id: 1,
                interim: false,
                language: String::new(),
                samples: vec![f32::NAN, 3.0, f32::NEG_INFINITY],
            },
            &mut out,
        );
        let Ok(SttMessage::Request { samples, .. }) = decode_body(&out[4..]) else {
            panic!("not a request")
        };
        assert_eq!(samples, vec![0.0, 1.0, 0.0]);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(chunks in proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 0..64), 0..16)) {
            let mut r = FrameReader::new();
            for c in &chunks {
                r.handle_bytes(c);
                for _ in 0..4 {
                    if !matches!(r.poll_message(), Ok(Some(_))) {
                        break;
                    }
                }
            }
        }
    }
}
