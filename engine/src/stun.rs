//! STUN messages (RFC 8489) and TURN's ChannelData framing (RFC 8656 §12): a zero-copy
//! reader over received bytes and a builder for what we send.
//!
//! The reader never panics and never allocates: [`Message::parse`] validates the header and
//! walks the attribute list once; attribute values are borrowed slices. Integrity
//! (MESSAGE-INTEGRITY, HMAC-SHA1) and FINGERPRINT (CRC-32) are checked over the exact bytes
//! received, with the length field adjusted as RFC 8489 §14.5/§14.7 require.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hmac::{Hmac, Mac};
use sha1::Sha1;

/// The magic cookie in every RFC 5389+ message.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// STUN header length.
pub const HEADER_LEN: usize = 20;
const FINGERPRINT_XOR: u32 = 0x5354_554E;

/// STUN methods used here.
pub mod method {
    pub const BINDING: u16 = 0x001;
    pub const ALLOCATE: u16 = 0x003;
    pub const REFRESH: u16 = 0x004;
    pub const SEND: u16 = 0x006;
    pub const DATA: u16 = 0x007;
    pub const CREATE_PERMISSION: u16 = 0x008;
    pub const CHANNEL_BIND: u16 = 0x009;
}

/// Attribute types used here.
pub mod attr {
    pub const MAPPED_ADDRESS: u16 = 0x0001;
    pub const USERNAME: u16 = 0x0006;
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    pub const ERROR_CODE: u16 = 0x0009;
    pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
    pub const CHANNEL_NUMBER: u16 = 0x000C;
    pub const LIFETIME: u16 = 0x000D;
    pub const XOR_PEER_ADDRESS: u16 = 0x0012;
    pub const DATA: u16 = 0x0013;
    pub const REALM: u16 = 0x0014;
    pub const NONCE: u16 = 0x0015;
    pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
    pub const REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
    pub const EVEN_PORT: u16 = 0x0018;
    pub const REQUESTED_TRANSPORT: u16 = 0x0019;
    pub const DONT_FRAGMENT: u16 = 0x001A;
    pub const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
    pub const PASSWORD_ALGORITHM: u16 = 0x001D;
    pub const USERHASH: u16 = 0x001E;
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    pub const RESERVATION_TOKEN: u16 = 0x0022;
    pub const PRIORITY: u16 = 0x0024;
    pub const USE_CANDIDATE: u16 = 0x0025;
    pub const PADDING: u16 = 0x0026;
    pub const RESPONSE_PORT: u16 = 0x0027;
    pub const PASSWORD_ALGORITHMS: u16 = 0x8002;
    pub const ALTERNATE_DOMAIN: u16 = 0x8003;
    pub const SOFTWARE: u16 = 0x8022;
    pub const ALTERNATE_SERVER: u16 = 0x8023;
    pub const FINGERPRINT: u16 = 0x8028;
    pub const ICE_CONTROLLED: u16 = 0x8029;
    pub const ICE_CONTROLLING: u16 = 0x802A;
    pub const RESPONSE_ORIGIN: u16 = 0x802B;
    pub const OTHER_ADDRESS: u16 = 0x802C;
    pub const ADDITIONAL_ADDRESS_FAMILY: u16 = 0x8000;
    pub const ADDRESS_ERROR_CODE: u16 = 0x8001;
    pub const ICMP: u16 = 0x8004;
}

/// Message class (RFC 8489 §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Request,
    Indication,
    Success,
    Error,
}

impl Class {
    fn bits(self) -> u16 {
        match self {
            Class::Request => 0b00,
            Class::Indication => 0b01,
            Class::Success => 0b10,
            Class::Error => 0b11,
        }
    }

    fn from_bits(b: u16) -> Class {
        match b & 0b11 {
            0b00 => Class::Request,
            0b01 => Class::Indication,
            0b10 => Class::Success,
            _ => Class::Error,
        }
    }
}

/// Encodes method and class into the 14-bit message type (bits interleaved per §5).
pub fn message_type(method: u16, class: Class) -> u16 {
    let c = class.bits();
    (method & 0x000F)
        | ((c & 0b01) << 4)
        | ((method & 0x0070) << 1)
        | ((c & 0b10) << 7)
        | ((method & 0x0F80) << 2)
}

fn split_type(t: u16) -> (u16, Class) {
    let method = (t & 0x000F) | ((t >> 1) & 0x0070) | ((t >> 2) & 0x0F80);
    let class = ((t >> 4) & 0b01) | ((t >> 7) & 0b10);
    (method, Class::from_bits(class))
}

/// Why bytes are not a STUN message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("shorter than a STUN header")]
    TooShort,
    #[error("not a STUN message (first bits or magic cookie)")]
    NotStun,
    #[error("length field does not match the datagram")]
    BadLength,
    #[error("attribute runs past the end of the message")]
    TruncatedAttribute,
    #[error("attributes after FINGERPRINT")]
    AfterFingerprint,
}

/// A received STUN message, borrowed from the datagram.
#[derive(Clone, Copy, Debug)]
pub struct Message<'a> {
    raw: &'a [u8],
    method: u16,
    class: Class,
    /// Offset of MESSAGE-INTEGRITY's header, if present.
    integrity_at: Option<usize>,
    /// Offset of FINGERPRINT's header, if present.
    fingerprint_at: Option<usize>,
}

/// One attribute: type and value (padding excluded).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attribute<'a> {
    pub typ: u16,
    pub value: &'a [u8],
}

impl<'a> Message<'a> {
    /// True if `data` starts like a STUN message (first two bits 0, magic cookie).
    pub fn looks_like_stun(data: &[u8]) -> bool {
        data.len() >= HEADER_LEN && data[0] & 0xC0 == 0 && data[4..8] == MAGIC_COOKIE.to_be_bytes()
    }

    /// Parses one whole message; `data` must be exactly the message (UDP datagram, or one
    /// frame cut from a TCP stream with [`frame_len`]).
    pub fn parse(data: &'a [u8]) -> Result<Message<'a>, ParseError> {
        if data.len() < HEADER_LEN {
            return Err(ParseError::TooShort);
        }
        if !Self::looks_like_stun(data) {
            return Err(ParseError::NotStun);
        }
        let len = usize::from(u16::from_be_bytes([data[2], data[3]]));
        if len % 4 != 0 || HEADER_LEN + len != data.len() {
            return Err(ParseError::BadLength);
        }
        let (method, class) = split_type(u16::from_be_bytes([data[0], data[1]]));
        let mut integrity_at = None;
        let mut fingerprint_at = None;
        let mut at = HEADER_LEN;
        while at < data.len() {
            if fingerprint_at.is_some() {
                return Err(ParseError::AfterFingerprint);
            }
            let header = data.get(at..at + 4).ok_or(ParseError::TruncatedAttribute)?;
            let typ = u16::from_be_bytes([header[0], header[1]]);
            let alen = usize::from(u16::from_be_bytes([header[2], header[3]]));
            let padded = (alen + 3) & !3;
            if at + 4 + padded > data.len() {
                return Err(ParseError::TruncatedAttribute);
            }
            match typ {
                attr::MESSAGE_INTEGRITY if integrity_at.is_none() => integrity_at = Some(at),
                attr::FINGERPRINT => fingerprint_at = Some(at),
                _ => {}
            }
            at += 4 + padded;
        }
        Ok(Message {
            raw: data,
            method,
            class,
            integrity_at,
            fingerprint_at,
        })
    }

    pub fn method(&self) -> u16 {
        self.method
    }

    pub fn class(&self) -> Class {
        self.class
    }

    pub fn transaction_id(&self) -> [u8; 12] {
        let mut id = [0u8; 12];
        id.copy_from_slice(&self.raw[8..20]);
        id
    }

    /// The whole message as received.
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// Every attribute, in order (including those after MESSAGE-INTEGRITY, which RFC 8489
    /// says to ignore except FINGERPRINT; use [`Message::get`] for that rule).
    pub fn attributes(&self) -> Attributes<'a> {
        Attributes {
            rest: &self.raw[HEADER_LEN..],
        }
    }

    /// The first attribute of type `typ` that counts: attributes after MESSAGE-INTEGRITY
    /// (other than FINGERPRINT) are ignored, as RFC 8489 §14.5 requires.
    pub fn get(&self, typ: u16) -> Option<&'a [u8]> {
        let limit = self.integrity_at.map(|i| i + 4 + 20);
        let mut at = HEADER_LEN;
        for a in self.attributes() {
            if a.typ == typ && (limit.is_none_or(|l| at < l) || typ == attr::FINGERPRINT) {
                return Some(a.value);
            }
            at += 4 + ((a.value.len() + 3) & !3);
        }
        None
    }

    /// Comprehension-required attribute types (0x0000-0x7FFF) not in `known`, for a 420.
    pub fn unknown_required(&self, known: &[u16], out: &mut Vec<u16>) {
        for a in self.attributes() {
            if a.typ < 0x8000 && !known.contains(&a.typ) && !out.contains(&a.typ) {
                out.push(a.typ);
            }
        }
    }

    pub fn has_integrity(&self) -> bool {
        self.integrity_at.is_some()
    }

    /// Checks MESSAGE-INTEGRITY (HMAC-SHA1 with `key`). False if absent or wrong.
    pub fn check_integrity(&self, key: &[u8]) -> bool {
        let Some(at) = self.integrity_at else {
            return false;
        };
        // Its value is exactly 20 bytes: a longer length field would let the attribute
        // swallow what follows it (FINGERPRINT) unnoticed.
        if self.raw.get(at + 2..at + 4) != Some(&[0, 20]) {
            return false;
        }
        let Some(received) = self.raw.get(at + 4..at + 24) else {
            return false;
        };
        // The length field covers everything up to and including MESSAGE-INTEGRITY.
        let adjusted = (at + 24 - HEADER_LEN) as u16;
        let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(key) else {
            return false;
        };
        mac.update(&self.raw[0..2]);
        mac.update(&adjusted.to_be_bytes());
        mac.update(&self.raw[4..at]);
        mac.verify_slice(received).is_ok()
    }

    /// Checks FINGERPRINT when present; `None` if there is none.
    pub fn check_fingerprint(&self) -> Option<bool> {
        let at = self.fingerprint_at?;
        let received = self.raw.get(at + 4..at + 8)?;
        let adjusted = (at + 8 - HEADER_LEN) as u16;
        let mut h = crc32fast::Hasher::new();
        h.update(&self.raw[0..2]);
        h.update(&adjusted.to_be_bytes());
        h.update(&self.raw[4..at]);
        let want = h.finalize() ^ FINGERPRINT_XOR;
        Some(received == want.to_be_bytes())
    }

    /// An XOR-encoded address attribute (XOR-MAPPED/PEER/RELAYED-ADDRESS).
    pub fn xor_address(&self, typ: u16) -> Option<SocketAddr> {
        decode_xor_address(self.get(typ)?, &self.transaction_id())
    }

    /// A 32-bit attribute (LIFETIME), if present and well-formed.
    pub fn u32_attr(&self, typ: u16) -> Option<u32> {
        let v = self.get(typ)?;
        let b: [u8; 4] = v.try_into().ok()?;
        Some(u32::from_be_bytes(b))
    }

    /// A UTF-8 attribute (USERNAME, REALM, NONCE, SOFTWARE).
    pub fn text(&self, typ: u16) -> Option<&'a str> {
        std::str::from_utf8(self.get(typ)?).ok()
    }

    /// ERROR-CODE: (code, reason).
    pub fn error_code(&self) -> Option<(u16, &'a str)> {
        let v = self.get(attr::ERROR_CODE)?;
        if v.len() < 4 {
            return None;
        }
        let code = u16::from(v[2] & 0x07) * 100 + u16::from(v[3]);
        Some((code, std::str::from_utf8(&v[4..]).unwrap_or("")))
    }
}

/// Iterator over a message's attributes.
#[derive(Clone, Debug)]
pub struct Attributes<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Attributes<'a> {
    type Item = Attribute<'a>;

    fn next(&mut self) -> Option<Attribute<'a>> {
        let header = self.rest.get(0..4)?;
        let typ = u16::from_be_bytes([header[0], header[1]]);
        let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
        let value = self.rest.get(4..4 + len)?;
        let padded = (len + 3) & !3;
        self.rest = self.rest.get(4 + padded..).unwrap_or(&[]);
        Some(Attribute { typ, value })
    }
}

/// Decodes an XOR-encoded address value.
pub fn decode_xor_address(v: &[u8], tid: &[u8; 12]) -> Option<SocketAddr> {
    if v.len() < 4 {
        return None;
    }
    let port = u16::from_be_bytes([v[2], v[3]]) ^ (MAGIC_COOKIE >> 16) as u16;
    match v[1] {
        0x01 if v.len() == 8 => {
            let x = u32::from_be_bytes([v[4], v[5], v[6], v[7]]) ^ MAGIC_COOKIE;
            Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(x)), port))
        }
        0x02 if v.len() == 20 => {
            let mut key = [0u8; 16];
            key[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
            key[4..].copy_from_slice(tid);
            let mut ip = [0u8; 16];
            for (i, b) in ip.iter_mut().enumerate() {
                *b = v[4 + i] ^ key[i];
            }
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port))
        }
        _ => None,
    }
}

fn encode_xor_address(addr: SocketAddr, tid: &[u8; 12], out: &mut Vec<u8>) {
    let port = addr.port() ^ (MAGIC_COOKIE >> 16) as u16;
    match addr.ip() {
        IpAddr::V4(ip) => {
            out.extend_from_slice(&[0, 0x01]);
            out.extend_from_slice(&port.to_be_bytes());
            out.extend_from_slice(&(u32::from(ip) ^ MAGIC_COOKIE).to_be_bytes());
        }
        IpAddr::V6(ip) => {
            out.extend_from_slice(&[0, 0x02]);
            out.extend_from_slice(&port.to_be_bytes());
            let mut key = [0u8; 16];
            key[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
            key[4..].copy_from_slice(tid);
            for (b, k) in ip.octets().iter().zip(key) {
                out.push(b ^ k);
            }
        }
    }
}

/// Builds a STUN message. Attributes are appended in call order; `integrity` and
/// `fingerprint` must come last, in that order.
#[derive(Clone, Debug)]
pub struct MessageBuilder {
    buf: Vec<u8>,
    tid: [u8; 12],
}

impl MessageBuilder {
    pub fn new(method: u16, class: Class, tid: [u8; 12]) -> Self {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&message_type(method, class).to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        buf.extend_from_slice(&tid);
        Self { buf, tid }
    }

    /// Appends an attribute with `value`, padded to 4 bytes.
    pub fn attr(mut self, typ: u16, value: &[u8]) -> Self {
        self.push_attr(typ, value);
        self
    }

    fn push_attr(&mut self, typ: u16, value: &[u8]) {
        // Attribute values over 64 KiB cannot be encoded; callers never build them (the
        // largest we send is a relayed datagram, bounded by the UDP size).
        let len = u16::try_from(value.len()).unwrap_or(u16::MAX);
        self.buf.extend_from_slice(&typ.to_be_bytes());
        self.buf.extend_from_slice(&len.to_be_bytes());
        self.buf.extend_from_slice(&value[..usize::from(len)]);
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
        self.set_len(self.buf.len());
    }

    fn set_len(&mut self, total: usize) {
        let len = u16::try_from(total - HEADER_LEN).unwrap_or(u16::MAX);
        self.buf[2..4].copy_from_slice(&len.to_be_bytes());
    }

    pub fn xor_address(mut self, typ: u16, addr: SocketAddr) -> Self {
        let mut v = Vec::with_capacity(20);
        encode_xor_address(addr, &self.tid, &mut v);
        self.push_attr(typ, &v);
        self
    }

    pub fn u32_attr(self, typ: u16, value: u32) -> Self {
        self.attr(typ, &value.to_be_bytes())
    }

    /// ERROR-CODE with its reason phrase.
    pub fn error_code(self, code: u16, reason: &str) -> Self {
        let mut v = vec![0, 0, (code / 100) as u8, (code % 100) as u8];
        v.extend_from_slice(reason.as_bytes());
        self.attr(attr::ERROR_CODE, &v)
    }

    /// UNKNOWN-ATTRIBUTES (for a 420).
    pub fn unknown_attributes(self, types: &[u16]) -> Self {
        let v: Vec<u8> = types.iter().flat_map(|t| t.to_be_bytes()).collect();
        self.attr(attr::UNKNOWN_ATTRIBUTES, &v)
    }

    /// Appends MESSAGE-INTEGRITY (HMAC-SHA1 with `key`).
    pub fn integrity(mut self, key: &[u8]) -> Self {
        let total = self.buf.len() + 24;
        self.set_len(total);
        let mut mac = match Hmac::<Sha1>::new_from_slice(key) {
            Ok(mac) => mac,
            // HMAC accepts keys of any length; this branch is never taken.
            Err(_) => return self,
        };
        mac.update(&self.buf);
        let tag = mac.finalize().into_bytes();
        self.buf
            .extend_from_slice(&attr::MESSAGE_INTEGRITY.to_be_bytes());
        self.buf.extend_from_slice(&20u16.to_be_bytes());
        self.buf.extend_from_slice(&tag);
        self
    }

    /// Appends FINGERPRINT.
    pub fn fingerprint(mut self) -> Self {
        let total = self.buf.len() + 8;
        self.set_len(total);
        let crc = crc32fast::hash(&self.buf) ^ FINGERPRINT_XOR;
        self.buf.extend_from_slice(&attr::FINGERPRINT.to_be_bytes());
        self.buf.extend_from_slice(&4u16.to_be_bytes());
        self.buf.extend_from_slice(&crc.to_be_bytes());
        self
    }

    pub fn build(self) -> Vec<u8> {
        self.buf
    }
}

/// The long-term credential key: MD5(username ":" realm ":" password) (RFC 8489 §9.2.2).
/// Usernames are used as sent (no SASLprep beyond what clients already did).
pub fn long_term_key(username: &str, realm: &str, password: &str) -> [u8; 16] {
    use md5::{Digest, Md5};
    let mut h = Md5::new();
    h.update(username.as_bytes());
    h.update(b":");
    h.update(realm.as_bytes());
    h.update(b":");
    h.update(password.as_bytes());
    h.finalize().into()
}

/// TURN ChannelData (RFC 8656 §12.4): channel number 0x4000-0x4FFF, length, data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelData<'a> {
    pub channel: u16,
    pub data: &'a [u8],
}

impl<'a> ChannelData<'a> {
    /// True if the first two bits are 01 (channel numbers 0x4000-0x7FFF).
    pub fn looks_like(data: &[u8]) -> bool {
        data.first().is_some_and(|b| b & 0xC0 == 0x40)
    }

    /// Parses a ChannelData message. Over UDP trailing padding is allowed and ignored.
    pub fn parse(data: &'a [u8]) -> Option<ChannelData<'a>> {
        if data.len() < 4 || !Self::looks_like(data) {
            return None;
        }
        let channel = u16::from_be_bytes([data[0], data[1]]);
        let len = usize::from(u16::from_be_bytes([data[2], data[3]]));
        let payload = data.get(4..4 + len)?;
        Some(ChannelData {
            channel,
            data: payload,
        })
    }

    /// Writes the 4-byte header for `len` bytes of data on `channel`.
    pub fn header(channel: u16, len: usize) -> [u8; 4] {
        let len = u16::try_from(len).unwrap_or(u16::MAX);
        let [c0, c1] = channel.to_be_bytes();
        let [l0, l1] = len.to_be_bytes();
        [c0, c1, l0, l1]
    }
}

/// Over a stream (TCP/TLS): how many bytes the next frame takes, if `buf` holds enough of
/// its header to say. STUN messages are header + length; ChannelData is padded to a multiple
/// of 4 (RFC 8656 §12.5). `None` means more bytes are needed; `Some(Err)` means the stream
/// is not speaking STUN/ChannelData and should be closed.
pub fn frame_len(buf: &[u8]) -> Option<Result<usize, ParseError>> {
    if buf.len() < 4 {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
    match buf[0] & 0xC0 {
        0x00 => {
            if len % 4 != 0 {
                return Some(Err(ParseError::BadLength));
            }
            Some(Ok(HEADER_LEN + len))
        }
        0x40 => Some(Ok(4 + ((len + 3) & !3))),
        _ => Some(Err(ParseError::NotStun)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// RFC 5769 §2.1: sample request, short-term credentials (password "VOkJxbRl1RmTxUk/WvJxBt").
    const SAMPLE_REQUEST: &str = "
        00 01 00 58 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
        80 22 00 10 53 54 55 4e 20 74 65 73 74 20 63 6c 69 65 6e 74
        00 24 00 04 6e 00 01 ff 80 29 00 08 93 2f f9 b1 51 26 3b 36
        00 06 00 09 65 76 74 6a 3a 68 36 76 59 20 20 20 00 08 00 14
        9a ea a7 0c bf d8 cb 56 78 1e f2 b5 b2 d3 f2 49 c1 b5 71 a2
        80 28 00 04 e5 7a 3b cf";

    /// RFC 5769 §2.2: sample IPv4 response.
    const SAMPLE_IPV4_RESPONSE: &str = "
        01 01 00 3c 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
        80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20 00 20 00 08
        00 01 a1 47 e1 12 a6 43 00 08 00 14 2b 91 f5 99 fd 9e 90 c3
        8c 74 89 f9 2a f9 ba 53 f0 6b e7 d7 80 28 00 04 c0 7d 4c 96";

    /// RFC 5769 §2.3: sample IPv6 response.
    const SAMPLE_IPV6_RESPONSE: &str = "
        01 01 00 48 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
        80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20 00 20 00 14
        00 02 a1 47 01 13 a9 fa a5 d3 f1 79 bc 25 f4 b5 be d2 b9 d9
        00 08 00 14 a3 82 95 4e 4b e6 7b f1 17 84 c9 7c 82 92 c2 75
        bf e3 ed 41 80 28 00 04 c8 fb 0b 4c";

    /// RFC 5769 §2.4: sample request with long-term authentication.
    const SAMPLE_LONG_TERM: &str = "
        00 01 00 60 21 12 a4 42 78 ad 34 33 c6 ad 72 c0 29 da 41 2e
        00 06 00 12 e3 83 9e e3 83 88 e3 83 aa e3 83 83 e3 82 af e3
        82 b9 00 00 00 15 00 1c 66 2f 2f 34 39 39 6b 39 35 34 64 36
        4f 4c 33 34 6f 4c 39 46 53 54 76 79 36 34 73 41 00 14 00 0b
        65 78 61 6d 70 6c 65 2e 6f 72 67 00 00 08 00 14 f6 70 24 65
        6d d6 4a 3e 02 b8 e0 71 2e 85 c9 a2 8c a8 96 66";

    #[test]
    fn rfc5769_sample_request() {
        let bytes = hex(SAMPLE_REQUEST);
        let m = Message::parse(&bytes).unwrap();
        assert_eq!((m.method(), m.class()), (method::BINDING, Class::Request));
        assert_eq!(m.text(attr::USERNAME), Some("evtj:h6vY"));
        assert_eq!(m.text(attr::SOFTWARE), Some("STUN test client"));
        assert!(m.check_integrity(b"VOkJxbRl1RmTxUk/WvJxBt"));
        assert!(!m.check_integrity(b"wrong"));
        assert_eq!(m.check_fingerprint(), Some(true));
    }

    #[test]
    fn rfc5769_ipv4_and_ipv6_responses() {
        for (vector, addr) in [
            (SAMPLE_IPV4_RESPONSE, "192.0.2.1:32853"),
            (
                SAMPLE_IPV6_RESPONSE,
                "[2001:db8:1234:5678:11:2233:4455:6677]:32853",
            ),
        ] {
            let bytes = hex(vector);
            let m = Message::parse(&bytes).unwrap();
            assert_eq!(m.class(), Class::Success);
            assert_eq!(
                m.xor_address(attr::XOR_MAPPED_ADDRESS),
                Some(addr.parse().unwrap())
            );
            assert!(m.check_integrity(b"VOkJxbRl1RmTxUk/WvJxBt"));
            assert_eq!(m.check_fingerprint(), Some(true));
        }
    }

    #[test]
    fn rfc5769_long_term_request() {
        let bytes = hex(SAMPLE_LONG_TERM);
        let m = Message::parse(&bytes).unwrap();
        let user = m.text(attr::USERNAME).unwrap();
        assert_eq!(user, "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}");
        assert_eq!(m.text(attr::REALM), Some("example.org"));
        assert_eq!(m.text(attr::NONCE), Some("f//499k954d6OL34oL9FSTvy64sA"));
        // The password "The<U+00AD>M<U+00AA>tr<U+2168>" is "TheMatrIX" after SASLprep.
        let key = long_term_key(user, "example.org", "TheMatrIX");
        assert!(m.check_integrity(&key));
    }

    #[test]
    fn builder_round_trip_with_integrity_and_fingerprint() {
        let tid = [7u8; 12];
        let key = long_term_key("alice", "hearth", "secret");
        let peer: SocketAddr = "203.0.113.9:40000".parse().unwrap();
        let bytes = MessageBuilder::new(method::CREATE_PERMISSION, Class::Request, tid)
            .xor_address(attr::XOR_PEER_ADDRESS, peer)
            .attr(attr::USERNAME, b"alice")
            .attr(attr::REALM, b"hearth")
            .attr(attr::NONCE, b"n0nce")
            .integrity(&key)
            .fingerprint()
            .build();
        let m = Message::parse(&bytes).unwrap();
        assert_eq!(
            (m.method(), m.class()),
            (method::CREATE_PERMISSION, Class::Request)
        );
        assert_eq!(m.transaction_id(), tid);
        assert_eq!(m.xor_address(attr::XOR_PEER_ADDRESS), Some(peer));
        assert!(m.check_integrity(&key));
        assert_eq!(m.check_fingerprint(), Some(true));
        let v6: SocketAddr = "[2001:db8::1]:5000".parse().unwrap();
        let bytes = MessageBuilder::new(method::BINDING, Class::Success, tid)
            .xor_address(attr::XOR_MAPPED_ADDRESS, v6)
            .error_code(438, "Stale Nonce")
            .build();
        let m = Message::parse(&bytes).unwrap();
        assert_eq!(m.xor_address(attr::XOR_MAPPED_ADDRESS), Some(v6));
        assert_eq!(m.error_code(), Some((438, "Stale Nonce")));
    }

    #[test]
    fn tampering_breaks_integrity_and_fingerprint() {
        let mut bytes = hex(SAMPLE_REQUEST);
        bytes[30] ^= 1; // inside SOFTWARE
        let m = Message::parse(&bytes).unwrap();
        assert!(!m.check_integrity(b"VOkJxbRl1RmTxUk/WvJxBt"));
        assert_eq!(m.check_fingerprint(), Some(false));
    }

    #[test]
    fn attributes_after_integrity_are_ignored() {
        let key = [1u8; 16];
        let bytes = MessageBuilder::new(method::REFRESH, Class::Request, [1; 12])
            .integrity(&key)
            .u32_attr(attr::LIFETIME, 0)
            .build();
        let m = Message::parse(&bytes).unwrap();
        assert_eq!(m.u32_attr(attr::LIFETIME), None);
    }

    #[test]
    fn message_types_round_trip() {
        for method in [0x001u16, 0x003, 0x004, 0x008, 0x009, 0xFFF] {
            for class in [
                Class::Request,
                Class::Indication,
                Class::Success,
                Class::Error,
            ] {
                assert_eq!(split_type(message_type(method, class)), (method, class));
            }
        }
        assert_eq!(message_type(method::BINDING, Class::Request), 0x0001);
        assert_eq!(message_type(method::BINDING, Class::Success), 0x0101);
        assert_eq!(message_type(method::ALLOCATE, Class::Error), 0x0113);
        assert_eq!(message_type(method::DATA, Class::Indication), 0x0017);
    }

    #[test]
    fn channel_data_and_stream_framing() {
        let mut frame = ChannelData::header(0x4001, 5).to_vec();
        frame.extend_from_slice(b"hello");
        let cd = ChannelData::parse(&frame).unwrap();
        assert_eq!((cd.channel, cd.data), (0x4001, &b"hello"[..]));
        assert_eq!(frame_len(&frame), Some(Ok(12))); // padded to 8 over streams
        assert_eq!(frame_len(&hex(SAMPLE_REQUEST)), Some(Ok(108)));
        assert_eq!(frame_len(&[0x80, 0, 0, 0]), Some(Err(ParseError::NotStun)));
        assert_eq!(frame_len(&[0x00, 1]), None);
        assert!(ChannelData::parse(&frame[..7]).is_none());
    }

    #[test]
    fn every_truncation_and_random_input_is_an_error_not_a_panic() {
        let full = hex(SAMPLE_LONG_TERM);
        for n in 0..full.len() {
            assert!(Message::parse(&full[..n]).is_err());
        }
        let mut state = 0x1234_5678_9abc_def1u64;
        for _ in 0..50_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 96) as usize;
            let mut buf: Vec<u8> = (0..len).map(|i| (state >> (i % 57)) as u8).collect();
            if len >= 20 {
                buf[0] &= 0x3F;
                buf[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
                let l = (len - 20) as u16;
                buf[2..4].copy_from_slice(&l.to_be_bytes());
            }
            if let Ok(m) = Message::parse(&buf) {
                let _ = m.check_integrity(b"k");
                let _ = m.check_fingerprint();
                let _ = m.xor_address(attr::XOR_PEER_ADDRESS);
                let _ = m.error_code();
                let _ = m.attributes().count();
            }
            let _ = ChannelData::parse(&buf);
            let _ = frame_len(&buf);
        }
    }
}
