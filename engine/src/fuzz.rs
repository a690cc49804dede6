//! Property tests seeded from real traffic: every parser and state machine here that takes
//! network input (STUN, ICE checks, the TURN server's front door and allocations, TURN's
//! stream framing, RTP headers, RTCP, TWCC, SDP offers and answers, trickled candidates,
//! the transport's datagram entry point) is fed
//!
//! 1. every item of the corpus in `tests/data/corpus/` (packets and SDP that Chromium,
//!    Firefox, coturn's `turnutils_uclient` and Hearth exchanged in real sessions; see the
//!    README there for how it was captured): none may panic, and the valid ones must be
//!    handled as valid (verified integrity, accepted Allocate, a STUN and a DTLS answer...);
//! 2. arbitrary bytes;
//! 3. corpus items mutated: bit flips, byte writes, truncation, insertion and removal,
//!    splicing with another item, length fields rewritten, SDP lines dropped, duplicated,
//!    garbled or taken from another browser's SDP.
//!
//! Real properties are asserted where they exist: a STUN message built again from its
//! parsed attributes is byte for byte the one received; any change to the bytes a
//! MESSAGE-INTEGRITY covers makes the check fail (and TURN never grants anything for it); an
//! RTP header's parsed fields are its bytes; a failed SDP negotiation leaves the negotiator
//! as it was; nothing is ever sent to an address ICE did not validate.
//!
//! # Short and long mode
//!
//! By default each test runs one batch of `HEARTH_PROPTEST_CASES` (default 256) cases, or a
//! fraction of that for the expensive ones, which takes a few seconds in a debug build.
//! The long mode re-runs batches with fresh random seeds until the given time has passed,
//! per test:
//!
//! ```sh
//! HEARTH_FUZZ_SECONDS=120 cargo test -p hearth-engine --release --lib fuzz:: -- --test-threads=2 --nocapture
//! ```
//!
//! Each test prints how many cases it ran. A failure prints the shrunk input.

use std::fmt::Debug;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};

use crate::stun::{self, ChannelData, Class, Message, MessageBuilder, attr, method};
use crate::transport::dtls::DtlsIdentity;
use crate::transport::ice::{IceLite, StunOutcome};
use crate::transport::peer::{Peer, PeerConfig};
use crate::transport::sdp::{LocalParams, Negotiator};
use crate::transport::{rtcp, twcc};
use crate::turn::allocation::{AllocateParams, Allocation, AllocationLimits, Reply};
use crate::turn::auth::{Authenticator, rest_password};
use crate::turn::front::{self, FrontAction};
use crate::turn::policy::{Cidr, PeerPolicy};
use crate::turn::{Lifetimes, error_response};

// ---- the runner: short mode, long mode ---------------------------------------------------

/// `HEARTH_FUZZ_SECONDS`: run each test for this long (the long mode); unset, one batch.
fn fuzz_seconds() -> Option<u64> {
    std::env::var("HEARTH_FUZZ_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
}

/// Runs `test` on values of `strategy`: one batch of `proptest_cases() / divisor` cases,
/// or in the long mode batches with fresh seeds until the time is up. Panics with the
/// shrunk failing input.
fn fuzz<S>(
    name: &str,
    divisor: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S: Strategy,
    S::Value: Debug,
{
    let cases = (crate::transport::proptest_cases() / divisor).max(1);
    let start = Instant::now();
    let deadline = fuzz_seconds().map(|s| start + Duration::from_secs(s));
    let mut total = 0u64;
    loop {
        let config = Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        };
        // A fresh random seed each batch (the default RNG is seeded from the OS).
        let mut runner = TestRunner::new(config);
        match runner.run(&strategy, &test) {
            Ok(()) => {}
            Err(TestError::Fail(why, input)) => {
                panic!("{name}: {why} after {total} cases; minimal input: {input:#?}")
            }
            Err(TestError::Abort(why)) => panic!("{name}: aborted: {why}"),
        }
        total += u64::from(cases);
        if deadline.is_none_or(|d| Instant::now() >= d) {
            break;
        }
    }
    eprintln!(
        "fuzz {name}: {total} cases in {:.1} s",
        start.elapsed().as_secs_f64()
    );
}

// ---- the corpus ------------------------------------------------------------------------

/// One captured datagram or stream frame: who sent it to whom.
#[derive(Clone, Debug)]
struct Item {
    from: &'static str,
    data: Vec<u8>,
}

/// One captured SDP or candidate.
#[derive(Clone, Debug)]
struct Text {
    from: &'static str,
    kind: &'static str,
    text: String,
}

struct Corpus {
    stun: Vec<Item>,
    dtls: Vec<Item>,
    srtp: Vec<Item>,
    srtcp: Vec<Item>,
    turn_udp: Vec<Item>,
    turn_tcp: Vec<Item>,
    sdp: Vec<Text>,
    /// ICE: server ufrag -> server password.
    ice: Vec<(String, String)>,
    /// TURN: username -> password (browsers' ephemeral credentials as handed out, and
    /// uclient's static user).
    turn: Vec<(String, String)>,
    /// uclient's REST API secret.
    rest_secret: String,
}

fn hex_items(text: &'static str) -> Vec<Item> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let mut parts = line.split(' ');
            let from = parts.next().expect("sender");
            let _to = parts.next().expect("receiver");
            let hex = parts.next().expect("hex");
            let data = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex digit"))
                .collect();
            Item { from, data }
        })
        .collect()
}

fn corpus() -> &'static Corpus {
    static CORPUS: OnceLock<Corpus> = OnceLock::new();
    CORPUS.get_or_init(|| {
        let mut sdp = Vec::new();
        let raw = include_str!("../../tests/data/corpus/sdp.txt");
        let mut current: Option<Text> = None;
        let mut lines: Vec<&str> = Vec::new();
        let mut flush = |current: &mut Option<Text>, lines: &mut Vec<&str>| {
            if let Some(mut t) = current.take() {
                t.text = if t.kind == "candidate" {
                    lines.join("")
                } else {
                    lines.iter().map(|l| format!("{l}\r\n")).collect()
                };
                sdp.push(t);
            }
            lines.clear();
        };
        for line in raw.lines() {
            if let Some(head) = line.strip_prefix("%% ") {
                flush(&mut current, &mut lines);
                let mut p = head.split(' ');
                let from = p.next().expect("from");
                let _to = p.next();
                let kind = p.next().expect("kind");
                current = Some(Text {
                    from,
                    kind,
                    text: String::new(),
                });
            } else {
                lines.push(line);
            }
        }
        flush(&mut current, &mut lines);
        let (mut ice, mut turn, mut rest_secret) = (Vec::new(), Vec::new(), String::new());
        for line in include_str!("../../tests/data/corpus/keys.txt").lines() {
            let f: Vec<&str> = line.split(' ').collect();
            match f.as_slice() {
                ["ice", ufrag, pwd, _] => ice.push((ufrag.to_string(), pwd.to_string())),
                ["turn", user, pwd, _] => turn.push((user.to_string(), pwd.to_string())),
                ["turn-rest-secret", _, secret, _] => rest_secret = secret.to_string(),
                _ => {}
            }
        }
        Corpus {
            stun: hex_items(include_str!("../../tests/data/corpus/stun.hex")),
            dtls: hex_items(include_str!("../../tests/data/corpus/dtls.hex")),
            srtp: hex_items(include_str!("../../tests/data/corpus/srtp.hex")),
            srtcp: hex_items(include_str!("../../tests/data/corpus/srtcp.hex")),
            turn_udp: hex_items(include_str!("../../tests/data/corpus/turn-udp.hex")),
            turn_tcp: hex_items(include_str!("../../tests/data/corpus/turn-tcp.hex")),
            sdp,
            ice,
            turn,
            rest_secret,
        }
    })
}

impl Corpus {
    /// Every captured STUN message: media port and TURN port, both transports.
    fn stun_messages(&self) -> impl Iterator<Item = &Item> {
        self.stun
            .iter()
            .chain(&self.turn_udp)
            .chain(&self.turn_tcp)
            .filter(|i| i.data.first().is_some_and(|b| b & 0xC0 == 0))
    }

    /// Every captured datagram and frame, for splicing.
    fn all(&self) -> Vec<&Item> {
        [
            &self.stun,
            &self.dtls,
            &self.srtp,
            &self.srtcp,
            &self.turn_udp,
            &self.turn_tcp,
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    fn sdps(&self, kind: &str) -> Vec<&Text> {
        self.sdp.iter().filter(|t| t.kind == kind).collect()
    }

    /// The long-term keys of every TURN username seen in the corpus.
    fn turn_keys(&self) -> Vec<[u8; 16]> {
        self.stun_messages()
            .filter_map(|i| {
                let msg = Message::parse(&i.data).ok()?;
                turn_key(self, msg.text(attr::USERNAME)?, msg.text(attr::REALM)?)
            })
            .collect()
    }

    /// The MESSAGE-INTEGRITY key of a captured message, if the corpus knows it: ICE checks
    /// by their USERNAME, TURN requests by USERNAME and REALM; for responses (no USERNAME),
    /// the first known key that verifies.
    fn key_for(&self, msg: &Message<'_>) -> Option<Vec<u8>> {
        let candidates: Vec<Vec<u8>> = match (msg.text(attr::USERNAME), msg.text(attr::REALM)) {
            (Some(user), Some(realm)) => vec![turn_key(self, user, realm)?.to_vec()],
            (Some(user), None) => {
                let ours = user.split(':').next()?;
                let (_, pwd) = self.ice.iter().find(|(u, _)| u == ours)?;
                vec![pwd.as_bytes().to_vec()]
            }
            _ => self
                .ice
                .iter()
                .map(|(_, p)| p.as_bytes().to_vec())
                .chain(self.turn_keys().into_iter().map(|k| k.to_vec()))
                .collect(),
        };
        candidates.into_iter().find(|k| msg.check_integrity(k))
    }
}

/// The long-term key of a TURN username the corpus knows.
fn turn_key(c: &Corpus, user: &str, realm: &str) -> Option<[u8; 16]> {
    if let Some((_, pwd)) = c.turn.iter().find(|(u, _)| u == user) {
        return Some(stun::long_term_key(user, realm, pwd));
    }
    if user.ends_with(":restuser") {
        let pwd = rest_password(c.rest_secret.as_bytes(), user);
        return Some(stun::long_term_key(user, realm, &pwd));
    }
    None
}

// ---- mutations -------------------------------------------------------------------------

/// One byte-level change to a corpus item.
#[derive(Clone, Debug)]
enum Mutation {
    FlipBit(usize, u8),
    SetByte(usize, u8),
    Truncate(usize),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
    /// Replace everything from `at` with the tail of another corpus item from `from`.
    Splice {
        at: usize,
        other: usize,
        from: usize,
    },
    /// Add `delta` to the big-endian 16-bit field at `at` (lengths, counts).
    Tweak16(usize, i16),
    /// Set a STUN header's length field to match the data (so parsing gets further).
    FixStunLength,
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<usize>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::SetByte(i, b)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        1 => (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => (any::<usize>(), 1usize..16).prop_map(|(i, n)| Mutation::Remove(i, n)),
        1 => (any::<usize>(), any::<usize>(), any::<usize>())
            .prop_map(|(at, other, from)| Mutation::Splice { at, other, from }),
        2 => (any::<usize>(), prop_oneof![Just(4i16), Just(-4), Just(1), Just(-1), any::<i16>()])
            .prop_map(|(i, d)| Mutation::Tweak16(i, d)),
        1 => Just(Mutation::FixStunLength),
    ]
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    proptest::collection::vec(mutation(), 1..6)
}

fn apply(data: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let all = corpus().all();
    let mut d = data.to_vec();
    for m in mutations {
        let n = d.len();
        match m {
            Mutation::FlipBit(i, b) if n > 0 => d[i % n] ^= 1 << b,
            Mutation::SetByte(i, v) if n > 0 => d[i % n] = *v,
            Mutation::Truncate(i) => d.truncate(i % (n + 1)),
            Mutation::Insert(i, bytes) => {
                let at = i % (n + 1);
                d.splice(at..at, bytes.iter().copied());
            }
            Mutation::Remove(i, k) if n > 0 => {
                let at = i % n;
                d.drain(at..(at + k).min(n));
            }
            Mutation::Splice { at, other, from } => {
                let other = &all[other % all.len()].data;
                let at = at % (n + 1);
                let from = from % (other.len() + 1);
                d.truncate(at);
                d.extend_from_slice(&other[from..]);
            }
            Mutation::Tweak16(i, delta) if n >= 2 => {
                let at = i % (n - 1);
                let v = u16::from_be_bytes([d[at], d[at + 1]]).wrapping_add_signed(*delta);
                d[at..at + 2].copy_from_slice(&v.to_be_bytes());
            }
            Mutation::FixStunLength if n >= 4 => {
                let len = u16::try_from(n.saturating_sub(stun::HEADER_LEN)).unwrap_or(u16::MAX);
                d[2..4].copy_from_slice(&len.to_be_bytes());
            }
            _ => {}
        }
    }
    d
}

/// A corpus item (by index into `items`), mutated.
fn mutated(items: &'static [Item]) -> impl Strategy<Value = (usize, Vec<Mutation>)> {
    assert!(!items.is_empty(), "an empty corpus category");
    (0..items.len(), mutations())
}

// ---- STUN ------------------------------------------------------------------------------

/// Builds `msg` again from its parsed attributes with the builder: the attributes before
/// MESSAGE-INTEGRITY, then MESSAGE-INTEGRITY with `key` and FINGERPRINT where it had them.
fn rebuild(msg: &Message<'_>, key: Option<&[u8]>, nonce: Option<&[u8]>) -> Vec<u8> {
    let mut b = MessageBuilder::new(msg.method(), msg.class(), msg.transaction_id());
    let mut has_fingerprint = false;
    for a in msg.attributes() {
        match a.typ {
            attr::MESSAGE_INTEGRITY => break,
            attr::FINGERPRINT => has_fingerprint = true,
            attr::NONCE if nonce.is_some() => b = b.attr(attr::NONCE, nonce.unwrap_or_default()),
            _ => b = b.attr(a.typ, a.value),
        }
    }
    if msg.has_integrity() {
        has_fingerprint = msg.check_fingerprint().is_some();
        if let Some(key) = key {
            b = b.integrity(key);
        }
    }
    if has_fingerprint {
        b = b.fingerprint();
    }
    b.build()
}

/// Exercises every accessor of a parsed message (none may panic).
fn touch(msg: &Message<'_>) {
    for a in msg.attributes() {
        let _ = msg.get(a.typ);
        let _ = msg.text(a.typ);
        let _ = msg.u32_attr(a.typ);
        let _ = msg.xor_address(a.typ);
    }
    let _ = msg.error_code();
    let _ = msg.check_fingerprint();
    let _ = msg.check_integrity(b"key");
    let mut unknown = Vec::new();
    msg.unknown_required(&[attr::USERNAME], &mut unknown);
}

/// Offset of the first MESSAGE-INTEGRITY attribute's header.
fn integrity_offset(msg: &Message<'_>) -> Option<usize> {
    let mut at = stun::HEADER_LEN;
    for a in msg.attributes() {
        if a.typ == attr::MESSAGE_INTEGRITY {
            return Some(at);
        }
        at += 4 + ((a.value.len() + 3) & !3);
    }
    None
}

/// True if `data` still has every byte MESSAGE-INTEGRITY (at `at` in `original`) covers:
/// the message type, everything from the magic cookie to MESSAGE-INTEGRITY, and its header
/// and value. Not the length field: the HMAC takes the length up to MESSAGE-INTEGRITY
/// instead, so that FINGERPRINT (or any attribute after it) can follow or be stripped.
fn covered_intact(data: &[u8], original: &[u8], at: usize) -> bool {
    data.len() >= at + 24 && data[..2] == original[..2] && data[4..at + 24] == original[4..at + 24]
}

/// True if `data` has the covered bytes of one of the captured messages (splicing two
/// captured messages can give back a third one, signed as captured).
fn covered_intact_any(data: &[u8]) -> bool {
    static SIGNED: OnceLock<Vec<(Vec<u8>, usize)>> = OnceLock::new();
    let signed = SIGNED.get_or_init(|| {
        corpus()
            .all()
            .into_iter()
            .filter_map(|i| {
                let at = integrity_offset(&Message::parse(&i.data).ok()?)?;
                Some((i.data.clone(), at))
            })
            .collect()
    });
    signed.iter().any(|(o, at)| covered_intact(data, o, *at))
}

#[test]
fn corpus_stun_parses_verifies_and_rebuilds_byte_for_byte() {
    let c = corpus();
    let (mut messages, mut verified, mut fingerprints) = (0, 0, 0);
    for item in c.stun_messages() {
        let msg = Message::parse(&item.data).unwrap_or_else(|e| {
            panic!(
                "{} sent a STUN message we refuse ({e}): {item:?}",
                item.from
            )
        });
        messages += 1;
        touch(&msg);
        if let Some(ok) = msg.check_fingerprint() {
            assert!(ok, "bad FINGERPRINT from {}: {item:?}", item.from);
            fingerprints += 1;
        }
        assert_eq!(
            stun::frame_len(&item.data),
            Some(Ok(item.data.len())),
            "stream framing"
        );
        let key = c.key_for(&msg);
        if msg.has_integrity() {
            // Every authenticated message of the capture verifies with its session's key
            // (401s' retries excepted: uclient's wrong password).
            match &key {
                Some(_) => verified += 1,
                None => assert!(
                    msg.text(attr::USERNAME) == Some("alice") && item.from == "uclient",
                    "MESSAGE-INTEGRITY from {} verifies with no known key: {item:?}",
                    item.from
                ),
            }
        }
        if !msg.has_integrity() || key.is_some() {
            // Parse -> encode gives the same bytes (zero padding, as every sender pads).
            let again = rebuild(&msg, key.as_deref(), None);
            assert_eq!(again, item.data, "rebuilt differently: {item:?}");
        }
    }
    assert!(
        messages >= 50,
        "only {messages} STUN messages in the corpus"
    );
    assert!(
        verified >= 20 && fingerprints >= 20,
        "{verified} {fingerprints}"
    );
}

/// Regression (found by `ice_answers_captured_checks_and_refuses_mutated_ones` in the long
/// mode): MESSAGE-INTEGRITY's length field stretched from 20 to 28 made it swallow the
/// FINGERPRINT behind it, and the check still verified (and ICE answered it), because only
/// the first 20 bytes of the value were read; a length of 19 (same padding) got a TURN
/// request granted (`turn_grants_nothing_to_mutated_requests`, which does not look at
/// FINGERPRINT). Now a length other than 20 fails the check.
/// Stripping FINGERPRINT and fixing the message length, on the other hand, is allowed
/// (RFC 8489 §14.5: attributes after MESSAGE-INTEGRITY are not covered).
#[test]
fn integrity_of_another_length_than_20_never_verifies() {
    let from: SocketAddr = "10.77.0.2:50000".parse().unwrap();
    let mut tried = 0;
    for (item, ufrag, pwd) in ice_checks() {
        let msg = Message::parse(&item.data).expect("corpus");
        let at = integrity_offset(&msg).expect("MI");
        if item.data.len() != at + 24 + 8 {
            continue; // FINGERPRINT is not right behind MESSAGE-INTEGRITY
        }
        tried += 1;
        assert!(msg.check_integrity(pwd.as_bytes()));
        for len in [17, 19, 28] {
            let mut changed = item.data.clone();
            changed[at + 3] = len;
            let m = Message::parse(&changed).expect("still parses (same padded length)");
            if len == 28 {
                assert_eq!(m.check_fingerprint(), None, "FINGERPRINT became MI's tail");
            }
            assert!(
                !m.check_integrity(pwd.as_bytes()),
                "a MESSAGE-INTEGRITY of {len} bytes verifies"
            );
            let mut ice = IceLite::new(ufrag.clone(), pwd.clone());
            let out = ice.handle_stun(Instant::now(), from, &changed);
            assert!(!matches!(out, StunOutcome::Answered { .. }), "{out:?}");
        }
        let stripped = apply(&item.data[..at + 24], &[Mutation::FixStunLength]);
        let m = Message::parse(&stripped).expect("parses without FINGERPRINT");
        assert!(m.check_integrity(pwd.as_bytes()));
    }
    assert!(tried > 0);
}

#[test]
fn mutated_authenticated_stun_never_verifies() {
    let c = corpus();
    let signed: &'static [(Vec<u8>, Vec<u8>)] = {
        static SIGNED: OnceLock<Vec<(Vec<u8>, Vec<u8>)>> = OnceLock::new();
        SIGNED.get_or_init(|| {
            c.stun_messages()
                .filter_map(|i| {
                    let msg = Message::parse(&i.data).ok()?;
                    Some((i.data.clone(), c.key_for(&msg)?))
                })
                .collect()
        })
    };
    assert!(signed.len() >= 20);
    fuzz(
        "mutated_authenticated_stun_never_verifies",
        1,
        (0..signed.len(), mutations()),
        |(i, muts)| {
            let (original, key) = &signed[i];
            let at = integrity_offset(&Message::parse(original).expect("corpus")).expect("MI");
            let data = apply(original, &muts);
            if let Ok(msg) = Message::parse(&data) {
                touch(&msg);
                // Still verifies only if every byte MESSAGE-INTEGRITY covers (and its own
                // value) is as it was.
                if msg.check_integrity(key) && !covered_intact(&data, original, at) {
                    prop_assert!(
                        covered_intact_any(&data),
                        "a changed message verifies: {:02x?}",
                        data
                    );
                }
            }
            Ok(())
        },
    );
}

#[test]
fn arbitrary_and_mutated_stun_never_panics() {
    let c = corpus();
    let items: &'static [Item] = {
        static ITEMS: OnceLock<Vec<Item>> = OnceLock::new();
        ITEMS.get_or_init(|| c.stun_messages().cloned().collect())
    };
    let input = prop_oneof![
        mutated(items).prop_map(|(i, m)| apply(&items[i].data, &m)),
        proptest::collection::vec(any::<u8>(), 0..300),
        // A STUN header with arbitrary attributes behind it.
        proptest::collection::vec(any::<u8>(), 0..200).prop_map(|mut v| {
            let mut d = vec![0, 1, 0, 0, 0x21, 0x12, 0xA4, 0x42];
            d.extend_from_slice(&[7; 12]);
            d.append(&mut v);
            apply(&d, &[Mutation::FixStunLength])
        }),
    ];
    fuzz(
        "arbitrary_and_mutated_stun_never_panics",
        1,
        input,
        |data| {
            let _ = Message::looks_like_stun(&data);
            if let Ok(msg) = Message::parse(&data) {
                touch(&msg);
                // A message that parses is one whole frame of a stream.
                prop_assert_eq!(stun::frame_len(&data), Some(Ok(data.len())));
                let len = usize::from(u16::from_be_bytes([data[2], data[3]]));
                prop_assert_eq!(len + stun::HEADER_LEN, data.len());
                // Its attributes tile the body exactly.
                let covered: usize = msg
                    .attributes()
                    .map(|a| 4 + ((a.value.len() + 3) & !3))
                    .sum();
                prop_assert_eq!(covered, len);
            }
            if let Some(cd) = ChannelData::parse(&data) {
                prop_assert_eq!(cd.data, &data[4..4 + cd.data.len()]);
            }
            let _ = stun::frame_len(&data);
            Ok(())
        },
    );
}

/// TURN over TCP: the captured streams, cut into arbitrary chunks, are framed back into the
/// captured messages by [`stun::frame_len`] (what the TCP listeners do).
#[test]
fn tcp_streams_in_any_chunks_frame_back() {
    let c = corpus();
    let frames: Vec<&Item> = c.turn_tcp.iter().collect();
    assert!(frames.len() >= 10);
    let strategy = (
        proptest::collection::vec(0..frames.len(), 1..20),
        proptest::collection::vec(1usize..200, 1..50),
        proptest::option::of(mutations()),
    );
    fuzz(
        "tcp_streams_in_any_chunks_frame_back",
        1,
        strategy,
        |(pick, chunks, garbage)| {
            let mut stream = Vec::new();
            let sent: Vec<&[u8]> = pick.iter().map(|&i| &frames[i].data[..]).collect();
            for f in &sent {
                stream.extend_from_slice(f);
            }
            // Optionally garbage after the real frames: framing may stop there, never panic.
            if let Some(m) = &garbage {
                let tail = apply(sent[0], m);
                stream.extend_from_slice(&tail);
            }
            let mut buf: Vec<u8> = Vec::new();
            let mut got: Vec<Vec<u8>> = Vec::new();
            let mut fed = 0;
            let mut closed = false;
            let mut k = 0;
            while fed < stream.len() && !closed {
                let n = chunks[k % chunks.len()].min(stream.len() - fed);
                k += 1;
                buf.extend_from_slice(&stream[fed..fed + n]);
                fed += n;
                loop {
                    match stun::frame_len(&buf) {
                        Some(Ok(len)) if len <= buf.len() => {
                            got.push(buf.drain(..len).collect());
                        }
                        Some(Err(_)) => {
                            closed = true;
                            break;
                        }
                        _ => break,
                    }
                }
            }
            prop_assert!(got.len() >= sent.len());
            for (g, s) in got.iter().zip(&sent) {
                prop_assert_eq!(&g[..], *s);
            }
            Ok(())
        },
    );
}

// ---- ICE -------------------------------------------------------------------------------

/// Captured ICE checks with their session's server credentials: (check, ufrag, pwd).
fn ice_checks() -> &'static [(Item, String, String)] {
    static CHECKS: OnceLock<Vec<(Item, String, String)>> = OnceLock::new();
    CHECKS.get_or_init(|| {
        let c = corpus();
        c.stun
            .iter()
            .filter_map(|i| {
                let msg = Message::parse(&i.data).ok()?;
                if msg.method() != method::BINDING || msg.class() != Class::Request {
                    return None;
                }
                let ours = msg.text(attr::USERNAME)?.split(':').next()?;
                let (u, p) = c.ice.iter().find(|(u, _)| u == ours)?;
                Some((i.clone(), u.clone(), p.clone()))
            })
            .collect()
    })
}

#[test]
fn ice_answers_captured_checks_and_refuses_mutated_ones() {
    let checks = ice_checks();
    for browser in ["chromium", "firefox"] {
        assert!(
            checks.iter().any(|(i, _, _)| i.from == browser),
            "no ICE check from {browser} in the corpus"
        );
    }
    let from: SocketAddr = "10.77.0.2:50000".parse().unwrap();
    // Every captured check is answered, with a response that verifies.
    for (item, ufrag, pwd) in checks {
        let mut ice = IceLite::new(ufrag.clone(), pwd.clone());
        let out = ice.handle_stun(Instant::now(), from, &item.data);
        assert!(
            matches!(out, StunOutcome::Answered { .. }),
            "{out:?} for {item:?}"
        );
        let (to, response) = ice.poll_transmit().expect("a response");
        assert_eq!(to, from);
        let r = Message::parse(&response).expect("our response parses");
        assert!(r.check_integrity(pwd.as_bytes()) && r.check_fingerprint() == Some(true));
        assert_eq!(r.xor_address(attr::XOR_MAPPED_ADDRESS), Some(from));
        assert!(ice.is_validated(from));
    }
    fuzz(
        "ice_answers_captured_checks_and_refuses_mutated_ones",
        1,
        (0..checks.len(), mutations()),
        |(i, muts)| {
            let (item, ufrag, pwd) = &checks[i];
            let data = apply(&item.data, &muts);
            let mut ice = IceLite::new(ufrag.clone(), pwd.clone());
            let out = ice.handle_stun(Instant::now(), from, &data);
            let at = integrity_offset(&Message::parse(&item.data).expect("corpus")).expect("MI");
            if !covered_intact(&data, &item.data, at) && !covered_intact_any(&data) {
                prop_assert!(
                    !matches!(out, StunOutcome::Answered { .. }),
                    "a changed check was answered: {:02x?}",
                    data
                );
                prop_assert!(!ice.is_validated(from));
            }
            while ice.poll_transmit().is_some() {}
            Ok(())
        },
    );
}

// ---- TURN ------------------------------------------------------------------------------

const UNIX_NOW: u64 = 1;

fn authenticator(epoch: Instant) -> Authenticator {
    let c = corpus();
    let mut auth = Authenticator::new("hearth", [7; 32], Duration::from_secs(600), epoch);
    for (user, pwd) in &c.turn {
        auth.add_user(user, pwd);
    }
    auth.set_rest_secret(c.rest_secret.as_bytes());
    auth
}

fn open_policy() -> PeerPolicy {
    PeerPolicy::new()
        .allow(Cidr::parse("0.0.0.0/0").unwrap())
        .allow(Cidr::parse("::/0").unwrap())
}

/// Captured client TURN requests that carry credentials the corpus knows, re-signed with a
/// nonce of `auth` (the captured nonces were the capturing server's): (item, message, key).
fn resigned_requests(
    auth: &Authenticator,
    now: Instant,
) -> Vec<(&'static Item, Vec<u8>, [u8; 16])> {
    let c = corpus();
    let nonce = auth.nonce(now);
    c.turn_udp
        .iter()
        .chain(&c.turn_tcp)
        .filter(|i| i.from != "hearth")
        .filter_map(|i| {
            let msg = Message::parse(&i.data).ok()?;
            if msg.class() != Class::Request || !msg.has_integrity() {
                return None;
            }
            let key = turn_key(c, msg.text(attr::USERNAME)?, msg.text(attr::REALM)?)?;
            if !msg.check_integrity(&key) {
                return None; // uclient's wrong-password round
            }
            Some((i, rebuild(&msg, Some(&key), Some(nonce.as_bytes())), key))
        })
        .collect()
}

fn params(req: &front::AllocateRequest) -> AllocateParams {
    AllocateParams {
        relay: "10.77.0.1:50000".parse().unwrap(),
        client: "10.77.0.2:40000".parse().unwrap(),
        auth: req.auth.clone(),
        requested_lifetime: req.requested_lifetime,
        transaction_id: req.transaction_id,
        lifetimes: Lifetimes::default(),
        limits: AllocationLimits::default(),
        software: None,
        reservation_token: None,
    }
}

/// An allocation of the user of `request` (a re-signed captured request), as if its
/// Allocate had been granted a moment ago.
fn allocation_for(auth: &Authenticator, now: Instant, request: &[u8]) -> Option<Allocation> {
    let msg = Message::parse(request).ok()?;
    let who = auth.check(&msg, now, UNIX_NOW).ok()?;
    let req = front::AllocateRequest {
        auth: who,
        requested_lifetime: None,
        transaction_id: [9; 12],
        even_port: None,
        reservation_token: None,
    };
    Some(Allocation::new(now, params(&req)).0)
}

#[test]
fn turn_accepts_captured_requests_and_grants_nothing_to_mutated_ones() {
    let t0 = Instant::now();
    let auth = authenticator(t0);
    let policy = open_policy();
    let requests = resigned_requests(&auth, t0);
    for who in ["chromium", "firefox", "uclient"] {
        assert!(
            requests.iter().any(|(i, data, _)| i.from == who
                && Message::parse(data).is_ok_and(|m| m.method() == method::ALLOCATE)),
            "no authenticated Allocate from {who} in the corpus"
        );
    }
    let from: SocketAddr = "10.77.0.2:40000".parse().unwrap();
    let mut granted = 0;
    for (item, data, key) in &requests {
        let msg = Message::parse(data).expect("rebuilt request parses");
        match msg.method() {
            method::ALLOCATE => {
                let action = front::handle(&msg, from, &auth, t0, UNIX_NOW, true, None);
                let FrontAction::Allocate(req) = action else {
                    panic!("{}'s Allocate refused: {action:?}", item.from);
                };
                assert_eq!(req.auth.key, *key);
                let (_, response) = Allocation::new(t0, params(&req));
                let r = Message::parse(&response).expect("our response parses");
                assert!(r.check_integrity(key) && r.class() == Class::Success);
                granted += 1;
            }
            method::REFRESH | method::CREATE_PERMISSION | method::CHANNEL_BIND => {
                // Without an allocation: 437, authenticated.
                let FrontAction::Respond(r) =
                    front::handle(&msg, from, &auth, t0, UNIX_NOW, true, None)
                else {
                    panic!("no answer");
                };
                let r = Message::parse(&r).expect("parses");
                assert_eq!(r.error_code().map(|e| e.0), Some(437));
                assert!(r.check_integrity(key));
                // On the client's allocation: success (or the deletion Refresh 0 asks for).
                let mut a = allocation_for(&auth, t0, data).expect("an allocation");
                let reply = a.handle(t0, &msg, &auth, &policy, UNIX_NOW);
                let (Reply::Respond(r) | Reply::Delete(r)) = reply else {
                    panic!("{reply:?}");
                };
                let r = Message::parse(&r).expect("parses");
                assert_eq!(
                    r.class(),
                    Class::Success,
                    "{:?} for {item:?}",
                    r.error_code()
                );
                assert!(r.check_integrity(key));
                granted += 1;
            }
            _ => {}
        }
    }
    assert!(granted >= 10, "only {granted} requests granted");
    let requests: &'static [(&'static Item, Vec<u8>, [u8; 16])] =
        Box::leak(requests.into_boxed_slice());
    let auth = &*Box::leak(Box::new(auth));
    fuzz(
        "turn_grants_nothing_to_mutated_requests",
        1,
        (0..requests.len(), mutations()),
        |(i, muts)| {
            let (_, original, key) = &requests[i];
            let data = apply(original, &muts);
            let Ok(msg) = Message::parse(&data) else {
                return Ok(());
            };
            // Unchanged where it counts: the covered bytes of one of the re-signed requests.
            let intact = requests.iter().any(|(_, r, _)| {
                Message::parse(r)
                    .ok()
                    .and_then(|m| integrity_offset(&m))
                    .is_some_and(|at| covered_intact(&data, r, at))
            });
            let action = front::handle(&msg, from, auth, t0, UNIX_NOW, true, None);
            if let FrontAction::Respond(r) = &action {
                let r = Message::parse(r).expect("our response parses");
                prop_assert_eq!(r.transaction_id(), msg.transaction_id());
            }
            if msg.class() != Class::Request || msg.method() == method::BINDING || intact {
                return Ok(());
            }
            prop_assert!(
                !matches!(action, FrontAction::Allocate(_)),
                "granted: {:?}",
                action
            );
            if let Some(mut a) = allocation_for(auth, t0, original) {
                let before = a.version();
                match a.handle(t0, &msg, auth, &open_policy(), UNIX_NOW) {
                    Reply::Respond(r) | Reply::Delete(r) => {
                        let r = Message::parse(&r).expect("our response parses");
                        prop_assert_ne!(r.class(), Class::Success);
                        prop_assert!(!r.check_integrity(key) || r.class() == Class::Error);
                    }
                    Reply::Relay { .. } => prop_assert!(false, "relayed a request"),
                    Reply::Ignore(_) => {}
                }
                prop_assert_eq!(a.version(), before, "state changed");
            }
            Ok(())
        },
    );
}

#[test]
fn turn_survives_arbitrary_and_mutated_messages() {
    let c = corpus();
    let t0 = Instant::now();
    let auth = &*Box::leak(Box::new(authenticator(t0)));
    let requests: &'static [(&'static Item, Vec<u8>, [u8; 16])] =
        Box::leak(resigned_requests(auth, t0).into_boxed_slice());
    let items: &'static [Item] = {
        static ITEMS: OnceLock<Vec<Item>> = OnceLock::new();
        ITEMS.get_or_init(|| c.turn_udp.iter().chain(&c.turn_tcp).cloned().collect())
    };
    let input = prop_oneof![
        4 => mutated(items).prop_map(|(i, m)| apply(&items[i].data, &m)),
        2 => (0..requests.len(), mutations()).prop_map(|(i, m)| apply(&requests[i].1, &m)),
        1 => proptest::collection::vec(any::<u8>(), 0..200),
    ];
    let strategy = (proptest::collection::vec(input, 1..12), any::<bool>());
    fuzz(
        "turn_survives_arbitrary_and_mutated_messages",
        1,
        strategy,
        |(messages, stream)| {
            let from: SocketAddr = "10.77.0.2:40000".parse().unwrap();
            let policy = PeerPolicy::new();
            // An allocation of uclient's static user, then everything through it and the front.
            let mut a = requests.iter().find_map(|(i, data, _)| {
                (i.from == "uclient")
                    .then(|| allocation_for(auth, t0, data))
                    .flatten()
            });
            let mut now = t0;
            let mut out = Vec::new();
            for data in &messages {
                now += Duration::from_millis(300);
                if let Ok(msg) = Message::parse(data) {
                    if let FrontAction::Respond(r) =
                        front::handle(&msg, from, auth, now, UNIX_NOW, true, None)
                    {
                        prop_assert!(Message::parse(&r).is_ok());
                    }
                    let _ = error_response(&msg, 400, "Bad Request", None, None);
                    if let Some(a) = a.as_mut() {
                        match a.handle(now, &msg, auth, &policy, UNIX_NOW) {
                            Reply::Respond(r) | Reply::Delete(r) => {
                                let r = Message::parse(&r).expect("our response parses");
                                prop_assert_eq!(r.transaction_id(), msg.transaction_id());
                            }
                            Reply::Relay {
                                peer,
                                data: payload,
                            } => {
                                // Only to a permitted peer, never past the default denials.
                                prop_assert!(a.permits(now, peer.ip()));
                                prop_assert!(policy.permits(peer));
                                prop_assert!(payload.len() <= data.len());
                            }
                            Reply::Ignore(_) => {}
                        }
                        let _ = a.handle_timeout(now);
                    }
                }
                if let Some(a) = a.as_ref() {
                    let view = a.view();
                    let _ = view.route_channel_data(now, data);
                    let peer: SocketAddr = "192.0.2.1:9".parse().unwrap();
                    if view.frame_peer_data(now, peer, data, stream, [1; 12], &mut out) {
                        let framed = if ChannelData::looks_like(&out) {
                            ChannelData::parse(&out).map(|cd| cd.data.to_vec())
                        } else {
                            Message::parse(&out)
                                .ok()
                                .and_then(|m| m.get(attr::DATA).map(<[u8]>::to_vec))
                        };
                        prop_assert_eq!(framed.as_deref(), Some(&data[..]));
                    }
                }
            }
            Ok(())
        },
    );
}

// ---- RTP, RTCP, TWCC ---------------------------------------------------------------------

/// The RTP header fields, read straight from the bytes.
fn header_fields(b: &[u8]) -> (bool, u8, u16, u32, u32) {
    (
        b[1] & 0x80 != 0,
        b[1] & 0x7f,
        u16::from_be_bytes([b[2], b[3]]),
        u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
    )
}

fn check_rtp(data: &[u8]) -> Result<(), TestCaseError> {
    let bytes = Bytes::copy_from_slice(data);
    if let Ok(p) = crate::rtp::parse(&bytes) {
        prop_assert_eq!(
            (p.marker, p.payload_type, p.seq, p.timestamp, p.ssrc.0),
            header_fields(data)
        );
        prop_assert_eq!(data[0] >> 6, 2);
        // The payload is the packet's bytes after the header, before any padding.
        let pad = if data[0] & 0x20 != 0 {
            usize::from(data[data.len() - 1])
        } else {
            0
        };
        let end = data.len() - pad;
        let start = end - p.payload.len();
        prop_assert!(start >= 12 + 4 * usize::from(data[0] & 0x0f));
        prop_assert_eq!(&p.payload[..], &data[start..end]);
        prop_assert!(!p.payload.is_empty());
    }
    Ok(())
}

#[test]
fn rtp_headers_parse_to_their_bytes() {
    let c = corpus();
    for browser in ["chromium", "firefox"] {
        assert!(
            c.srtp.iter().any(|i| i.from == browser),
            "no RTP from {browser}"
        );
    }
    for item in &c.srtp {
        // SRTP keeps the header in the clear; without padding every captured packet parses.
        let bytes = Bytes::copy_from_slice(&item.data);
        if item.data[0] & 0x20 == 0 {
            let p = crate::rtp::parse(&bytes)
                .unwrap_or_else(|e| panic!("{e}: captured RTP from {}: {item:?}", item.from));
            assert_eq!(
                (p.marker, p.payload_type, p.seq, p.timestamp, p.ssrc.0),
                header_fields(&item.data)
            );
        }
        check_rtp(&item.data).expect("corpus RTP");
    }
    let input = prop_oneof![
        3 => mutated(&c.srtp).prop_map(|(i, m)| apply(&c.srtp[i].data, &m)),
        1 => proptest::collection::vec(any::<u8>(), 0..1600),
        1 => (any::<bool>(), 0u8..128, any::<u16>(), any::<u32>(), any::<u32>(),
              proptest::collection::vec(any::<u8>(), 1..64))
            .prop_map(|(m, pt, seq, ts, ssrc, payload)| {
                let p = crate::rtp::write(m, pt, seq, ts, crate::media::Ssrc(ssrc), &payload);
                assert_eq!(crate::rtp::parse(&p).map(|p| p.payload), Ok(Bytes::from(payload)));
                p.to_vec()
            }),
    ];
    fuzz("rtp_headers_parse_to_their_bytes", 1, input, |data| {
        check_rtp(&data)
    });
}

fn check_rtcp(data: &[u8]) -> Result<(), TestCaseError> {
    let mut out = Vec::new();
    let stats = rtcp::parse_compound(data, &mut out);
    let mut keyframes = Vec::new();
    let (mut seqs, mut reports, mut twcc_feedbacks) = (0, 0, 0);
    for f in &out {
        match f {
            rtcp::Feedback::KeyframeRequest { media_ssrc } => {
                prop_assert!(
                    !keyframes.contains(media_ssrc),
                    "keyframe requests not coalesced"
                );
                keyframes.push(*media_ssrc);
            }
            rtcp::Feedback::Nack { seqs: s, .. } => {
                prop_assert!(!s.is_empty());
                seqs += s.len();
            }
            rtcp::Feedback::Report(_) => reports += 1,
            rtcp::Feedback::SenderReport { .. } => {}
            rtcp::Feedback::TransportCc(fb) => {
                twcc_feedbacks += 1;
                prop_assert!(fb.received.len() <= usize::from(fb.status_count));
                prop_assert!(fb.received.len() <= data.len());
                for (seq, _) in &fb.received {
                    prop_assert!(seq.wrapping_sub(fb.base_seq) < fb.status_count);
                }
            }
        }
    }
    prop_assert!(twcc_feedbacks <= 4);
    prop_assert!(keyframes.len() <= rtcp::MAX_KEYFRAME_SSRCS_PER_DATAGRAM);
    prop_assert!(seqs <= rtcp::MAX_NACK_SEQS_PER_DATAGRAM);
    prop_assert!(reports <= rtcp::MAX_REPORT_BLOCKS_PER_DATAGRAM);
    prop_assert!(stats.malformed <= 1);
    Ok(())
}

#[test]
fn rtcp_never_panics_and_keeps_what_came_before_a_bad_packet() {
    let c = corpus();
    for browser in ["chromium", "firefox"] {
        assert!(
            c.srtcp.iter().any(|i| i.from == browser),
            "no RTCP from {browser}"
        );
    }
    for item in &c.srtcp {
        check_rtcp(&item.data).expect("corpus RTCP");
    }
    // Clear-text RTCP as the transport sees it after SRTCP: what rtcp.rs builds, with the
    // SSRCs of captured packets.
    let ssrc = |i: usize| {
        let d = &c.srtcp[i % c.srtcp.len()].data;
        u32::from_be_bytes([d[4], d[5], d[6], d[7]])
    };
    let prefix = (any::<usize>(), any::<usize>(), 0u8..3).prop_map(move |(a, b, k)| match k {
        0 => rtcp::pli(ssrc(a), ssrc(b)),
        1 => rtcp::sender_report(
            ssrc(a),
            &crate::stats::SenderInfo {
                ntp: crate::stats::NtpTime(u64::from(ssrc(b)) << 20),
                rtp_ts: ssrc(b),
                packets: 3,
                octets: 300,
            },
        ),
        _ => rtcp::receiver_reports(
            ssrc(a),
            &[crate::stats::ReportBlock {
                ssrc: crate::media::Ssrc(ssrc(b)),
                ..Default::default()
            }],
        ),
    });
    let tail = prop_oneof![
        mutated(&c.srtcp).prop_map(|(i, m)| apply(&c.srtcp[i].data, &m)),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u16>(), 1..40),
            mutations()
        )
            .prop_map(move |(i, seqs, m)| apply(&rtcp::nack(1, ssrc(i), &seqs), &m)),
        proptest::collection::vec(any::<u8>(), 0..400),
    ];
    fuzz(
        "rtcp_never_panics_and_keeps_what_came_before_a_bad_packet",
        1,
        (proptest::collection::vec(prefix, 1..4), tail),
        |(prefix, tail)| {
            let valid: Vec<u8> = prefix.concat();
            let mut alone = Vec::new();
            let s = rtcp::parse_compound(&valid, &mut alone);
            prop_assert_eq!(s.malformed, 0);
            let mut data = valid.clone();
            data.extend_from_slice(&tail);
            check_rtcp(&tail)?;
            check_rtcp(&data)?;
            if data.len() <= rtcp::MAX_RTCP_DATAGRAM {
                let mut out = Vec::new();
                rtcp::parse_compound(&data, &mut out);
                prop_assert!(out.len() >= alone.len());
                prop_assert_eq!(&out[..alone.len()], &alone[..]);
            }
            Ok(())
        },
    );
}

/// The transport-wide sequence numbers of the captured RTP (one-byte header extension of
/// two bytes, the only one that size in WebRTC's RTP), per SSRC.
fn transport_seqs() -> Vec<(u32, u16)> {
    corpus()
        .srtp
        .iter()
        .filter(|i| i.from != "hearth" && i.data[0] & 0x10 != 0)
        .filter_map(|i| {
            let d = &i.data;
            let at = 12 + 4 * usize::from(d[0] & 0x0f);
            if d.get(at..at + 2)? != [0xBE, 0xDE] {
                return None;
            }
            let words = usize::from(u16::from_be_bytes([*d.get(at + 2)?, *d.get(at + 3)?]));
            let ext = d.get(at + 4..at + 4 + 4 * words)?;
            let mut k = 0;
            while k < ext.len() {
                let (id, len) = (ext[k] >> 4, usize::from(ext[k] & 0x0f) + 1);
                if id == 0 {
                    k += 1;
                    continue;
                }
                if len == 2 && k + 3 <= ext.len() {
                    return Some((
                        u32::from_be_bytes([d[8], d[9], d[10], d[11]]),
                        u16::from_be_bytes([ext[k + 1], ext[k + 2]]),
                    ));
                }
                k += 1 + len;
            }
            None
        })
        .collect()
}

#[test]
fn twcc_feedback_for_captured_and_mangled_sequences_is_valid_rtcp() {
    let seqs = transport_seqs();
    assert!(
        seqs.len() >= 5,
        "only {} transport-wide sequence numbers",
        seqs.len()
    );
    let seqs: &'static [(u32, u16)] = Box::leak(seqs.into_boxed_slice());
    #[derive(Clone, Debug)]
    enum Step {
        Next,
        Skip(u16),
        Repeat,
        Back(u16),
        Wait(u16),
    }
    let step = prop_oneof![
        6 => Just(Step::Next),
        1 => any::<u16>().prop_map(Step::Skip),
        1 => Just(Step::Repeat),
        1 => (1u16..300).prop_map(Step::Back),
        1 => (1u16..400).prop_map(Step::Wait),
    ];
    fuzz(
        "twcc_feedback_for_captured_and_mangled_sequences_is_valid_rtcp",
        1,
        (0..seqs.len(), proptest::collection::vec(step, 1..300)),
        |(start, steps)| {
            let (ssrc, mut seq) = seqs[start];
            let mut rec = twcc::TwccRecorder::new(1);
            let mut now = Instant::now();
            for s in steps {
                match s {
                    Step::Next => seq = seq.wrapping_add(1),
                    Step::Skip(n) => seq = seq.wrapping_add(n),
                    Step::Repeat => {}
                    Step::Back(n) => seq = seq.wrapping_sub(n),
                    Step::Wait(ms) => now += Duration::from_millis(u64::from(ms)),
                }
                now += Duration::from_micros(500);
                rec.on_packet(now, ssrc, seq);
                while let Some(fb) = rec.poll_feedback(now) {
                    prop_assert!(fb.len() <= twcc::MAX_FEEDBACK_LEN);
                    let parsed = rtc_rtcp::packet::unmarshal(&mut &fb[..]);
                    prop_assert!(parsed.is_ok(), "invalid feedback {:02x?}", fb);
                }
                if let Some(t) = rec.poll_timeout() {
                    prop_assert!(t <= now + twcc::FEEDBACK_INTERVAL);
                }
            }
            Ok(())
        },
    );
}

// ---- SDP -------------------------------------------------------------------------------

fn negotiator() -> Negotiator {
    Negotiator::new(
        LocalParams {
            ufrag: "srvufrag".into(),
            pwd: "serverpassword0123456789".into(),
            fingerprint: "AA:BB".into(),
            candidate: "candidate:1 1 udp 2130706431 127.0.0.1 7882 typ host".into(),
        },
        1,
    )
}

/// What must not change when a description is refused.
fn snapshot(n: &Negotiator) -> String {
    format!(
        "{:?} stable={} local_offer={} needs_offer={}",
        n.sections(),
        n.is_stable(),
        n.has_local_offer(),
        n.needs_offer()
    )
}

fn sdp_parses(text: &str) -> bool {
    rtc_sdp::SessionDescription::unmarshal(&mut std::io::Cursor::new(text.as_bytes())).is_ok()
}

/// One line-level change to an SDP.
#[derive(Clone, Debug)]
enum LineEdit {
    Delete(usize),
    Duplicate(usize),
    Swap(usize, usize),
    /// A line of another captured SDP (Chromium's in Firefox's and the other way round).
    Borrow {
        at: usize,
        sdp: usize,
        line: usize,
    },
    Garble(usize, Vec<Mutation>),
    Truncate(usize),
}

fn line_edits() -> impl Strategy<Value = Vec<LineEdit>> {
    let edit = prop_oneof![
        2 => any::<usize>().prop_map(LineEdit::Delete),
        2 => any::<usize>().prop_map(LineEdit::Duplicate),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(a, b)| LineEdit::Swap(a, b)),
        2 => (any::<usize>(), any::<usize>(), any::<usize>())
            .prop_map(|(at, sdp, line)| LineEdit::Borrow { at, sdp, line }),
        2 => (any::<usize>(), proptest::collection::vec(mutation(), 1..3))
            .prop_map(|(i, m)| LineEdit::Garble(i, m)),
        1 => any::<usize>().prop_map(LineEdit::Truncate),
    ];
    proptest::collection::vec(edit, 0..8)
}

fn edit_sdp(text: &str, edits: &[LineEdit]) -> String {
    let all = &corpus().sdp;
    let mut lines: Vec<String> = text.split("\r\n").map(str::to_owned).collect();
    for e in edits {
        let n = lines.len().max(1);
        match e {
            LineEdit::Delete(i) if !lines.is_empty() => {
                lines.remove(i % n);
            }
            LineEdit::Duplicate(i) if !lines.is_empty() => {
                let l = lines[i % n].clone();
                lines.insert(i % n, l);
            }
            LineEdit::Swap(a, b) if !lines.is_empty() => lines.swap(a % n, b % n),
            LineEdit::Borrow { at, sdp, line } => {
                let other: Vec<&str> = all[sdp % all.len()].text.split("\r\n").collect();
                lines.insert(at % n, other[line % other.len()].to_owned());
            }
            LineEdit::Garble(i, m) if !lines.is_empty() => {
                let l = &mut lines[i % n];
                *l = String::from_utf8_lossy(&apply(l.as_bytes(), m)).into_owned();
            }
            LineEdit::Truncate(i) => {
                let joined = lines.join("\r\n");
                let mut cut = i % (joined.len() + 1);
                while !joined.is_char_boundary(cut) {
                    cut -= 1;
                }
                return joined[..cut].to_owned();
            }
            _ => {}
        }
    }
    lines.join("\r\n")
}

#[test]
fn captured_offers_negotiate_and_mutated_ones_change_nothing_when_refused() {
    let c = corpus();
    let offers = c.sdps("offer");
    let browser_offers: Vec<&Text> = offers
        .iter()
        .copied()
        .filter(|t| t.from != "hearth")
        .collect();
    for browser in ["chromium", "firefox"] {
        assert!(
            browser_offers.iter().any(|t| t.from == browser),
            "no offer from {browser}"
        );
    }
    // Every captured browser offer is accepted by a fresh negotiator, with an answer that
    // parses again.
    for offer in &browser_offers {
        let mut n = negotiator();
        let (answer, _) = n
            .apply_offer(&offer.text)
            .unwrap_or_else(|e| panic!("{}'s offer refused: {e}\n{}", offer.from, offer.text));
        assert!(sdp_parses(&answer), "{answer}");
    }
    let answers: Vec<&Text> = c
        .sdps("answer")
        .into_iter()
        .filter(|t| t.from != "hearth")
        .collect();
    assert!(!answers.is_empty());
    let browser_offers: &'static [&'static Text] = Box::leak(browser_offers.into_boxed_slice());
    let answers: &'static [&'static Text] = Box::leak(answers.into_boxed_slice());
    fuzz(
        "captured_offers_negotiate_and_mutated_ones_change_nothing_when_refused",
        1,
        (
            0..browser_offers.len(),
            line_edits(),
            0..answers.len(),
            line_edits(),
            any::<bool>(),
        ),
        |(o, edits, a, answer_edits, renegotiate)| {
            let mut n = negotiator();
            if renegotiate {
                // A second offer on a negotiated session (the captured first one).
                let _ = n.apply_offer(&browser_offers[(o + 1) % browser_offers.len()].text);
            }
            let before = snapshot(&n);
            let offer = edit_sdp(&browser_offers[o].text, &edits);
            match n.apply_offer(&offer) {
                Ok((answer, _)) => prop_assert!(sdp_parses(&answer), "{}", answer),
                Err(_) => prop_assert_eq!(snapshot(&n), before),
            }
            // Our offer (with a sender), then a captured browser answer, mutated.
            n.add_sender(crate::transport::sdp::Sender {
                kind: crate::media::MediaKind::Audio,
                codec: crate::transport::sdp::CodecParams {
                    codec: crate::media::Codec::Opus,
                    mime_type: "audio/opus".into(),
                    clock_rate: 48_000,
                    channels: 2,
                    fmtp: String::new(),
                },
                ssrc: 5,
                stream_id: "s".into(),
                track_id: "t".into(),
                pt: None,
                rtx_ssrc: 6,
                rtx_pt: None,
                removed: false,
            });
            if let Ok(ours) = n.create_offer() {
                prop_assert!(sdp_parses(&ours), "{}", ours);
                let before = snapshot(&n);
                let answer = edit_sdp(&answers[a].text, &answer_edits);
                if n.apply_answer(&answer).is_err() {
                    prop_assert_eq!(snapshot(&n), before);
                    n.rollback();
                }
            }
            Ok(())
        },
    );
}

// ---- the transport's entry points --------------------------------------------------------

fn identity() -> DtlsIdentity {
    static ID: OnceLock<DtlsIdentity> = OnceLock::new();
    ID.get_or_init(|| DtlsIdentity::generate().expect("test identity"))
        .clone()
}

/// A peer that holds a captured session's server credentials, with that browser's captured
/// offer applied (its ICE ufrag set to the one its checks carry).
struct Replay {
    peer: Peer,
    check: &'static Item,
    client_hello: [&'static Item; 2],
    ufrag: String,
    pwd: String,
}

fn replay(browser: &str, now: Instant) -> Replay {
    let c = corpus();
    let (check, ufrag, pwd) = ice_checks()
        .iter()
        .find(|(i, _, _)| i.from == browser)
        .expect("a check");
    let theirs = Message::parse(&check.data)
        .ok()
        .and_then(|m| m.text(attr::USERNAME))
        .and_then(|u| u.split_once(':'))
        .map(|(_, t)| t.to_owned())
        .expect("username");
    let offer = c
        .sdp
        .iter()
        .find(|t| t.kind == "offer" && t.from == browser)
        .expect("an offer");
    let offer: String = offer
        .text
        .split("\r\n")
        .map(|l| {
            if l.starts_with("a=ice-ufrag:") {
                format!("a=ice-ufrag:{theirs}")
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\r\n");
    let mut peer = Peer::new(
        PeerConfig {
            advertised: "10.77.0.1:7882".parse().unwrap(),
            identity: identity(),
            ufrag: ufrag.clone(),
            pwd: pwd.clone(),
            session_id: 7,
            rtcp_ssrc: 9,
        },
        now,
    );
    peer.apply_offer(now, &offer)
        .expect("the captured offer applies");
    // Both browsers send their first ClientHello (post-quantum key shares) in two
    // fragments: the first fragment, and the next one of the same length that continues it.
    let u24 = |d: &[u8], at: usize| {
        usize::from(d[at]) << 16 | usize::from(d[at + 1]) << 8 | usize::from(d[at + 2])
    };
    let hellos: Vec<&Item> = c
        .dtls
        .iter()
        .filter(|i| i.from == browser && i.data.len() > 25 && i.data[0] == 22 && i.data[13] == 1)
        .filter(|i| i.data[17..19] == [0, 0])
        .collect();
    let first = *hellos
        .iter()
        .find(|i| u24(&i.data, 19) == 0)
        .expect("a first fragment");
    let rest = *hellos
        .iter()
        .find(|i| {
            u24(&i.data, 19) == u24(&first.data, 22) && u24(&i.data, 14) == u24(&first.data, 14)
        })
        .expect("the second fragment");
    let client_hello = [first, rest];
    Replay {
        peer,
        check,
        client_hello,
        ufrag: ufrag.clone(),
        pwd: pwd.clone(),
    }
}

#[test]
fn transport_answers_a_captured_session_and_survives_mangled_datagrams() {
    let client: SocketAddr = "10.77.0.1:51543".parse().unwrap();
    let stranger: SocketAddr = "10.77.0.9:5000".parse().unwrap();
    // The captured check is answered and the captured ClientHello gets a DTLS answer.
    for browser in ["chromium", "firefox"] {
        let t0 = Instant::now();
        let mut r = replay(browser, t0);
        r.peer
            .handle_datagram(t0, client, BytesMut::from(&r.check.data[..]));
        let (to, stun) = r.peer.poll_datagram().expect("a STUN answer");
        assert_eq!(to, client);
        assert!(Message::parse(&stun).is_ok_and(|m| m.class() == Class::Success));
        let mut now = t0 + Duration::from_millis(20);
        r.peer.handle_timeout(now);
        for fragment in r.client_hello {
            r.peer
                .handle_datagram(now, client, BytesMut::from(&fragment.data[..]));
        }
        let mut dtls = 0;
        for _ in 0..5 {
            now += Duration::from_millis(20);
            r.peer.handle_timeout(now);
            while let Some((to, d)) = r.peer.poll_datagram() {
                assert_eq!(to, client);
                dtls += usize::from((20..=63).contains(&d[0]));
            }
        }
        assert!(dtls > 0, "no DTLS answer to {browser}'s ClientHello");
    }
    let c = corpus();
    let all: &'static [&'static Item] = Box::leak(c.all().into_boxed_slice());
    let datagram = (
        any::<bool>(),
        0..all.len(),
        proptest::option::weighted(0.7, mutations()),
    );
    fuzz(
        "transport_answers_a_captured_session_and_survives_mangled_datagrams",
        2,
        (any::<bool>(), proptest::collection::vec(datagram, 1..30)),
        |(firefox, datagrams)| {
            let t0 = Instant::now();
            let mut r = replay(if firefox { "firefox" } else { "chromium" }, t0);
            r.peer
                .handle_datagram(t0, client, BytesMut::from(&r.check.data[..]));
            let mut now = t0;
            // The stranger may replay a captured check of this session (ICE has no replay
            // protection, by design: that is how a NAT rebinding is followed); until it sent
            // one that verifies, nothing may go to it.
            let mut stranger_checked = false;
            for (from_client, i, muts) in datagrams {
                let data = match &muts {
                    Some(m) => apply(&all[i].data, m),
                    None => all[i].data.clone(),
                };
                let from = if from_client { client } else { stranger };
                if !from_client {
                    stranger_checked |= Message::parse(&data).is_ok_and(|m| {
                        m.method() == method::BINDING
                            && m.class() == Class::Request
                            && m.text(attr::USERNAME)
                                .is_some_and(|u| u.starts_with(&format!("{}:", r.ufrag)))
                            && m.check_integrity(r.pwd.as_bytes())
                    });
                }
                r.peer.handle_datagram(now, from, BytesMut::from(&data[..]));
                now += Duration::from_millis(7);
                r.peer.handle_timeout(now);
                while let Some((to, _)) = r.peer.poll_datagram() {
                    prop_assert!(to == client || stranger_checked, "sent to {}", to);
                }
                while r.peer.poll_event().is_some() {}
                while r.peer.poll_inbound().is_some() {}
            }
            let _ = r.peer.poll_timeout();
            Ok(())
        },
    );
}

#[test]
fn captured_and_mangled_candidates_never_panic() {
    let c = corpus();
    let candidates: Vec<&Text> = c.sdp.iter().filter(|t| t.kind == "candidate").collect();
    for browser in ["chromium", "firefox"] {
        assert!(
            candidates.iter().any(|t| t.from == browser),
            "no candidate from {browser}"
        );
    }
    let t0 = Instant::now();
    let r = std::cell::RefCell::new(replay("chromium", t0));
    for cand in &candidates {
        if !cand.text.is_empty() {
            r.borrow_mut()
                .peer
                .add_remote_candidate(&cand.text)
                .unwrap_or_else(|e| {
                    panic!("{}'s candidate refused: {e}: {}", cand.from, cand.text)
                });
        }
    }
    let candidates: &'static [&'static Text] = Box::leak(candidates.into_boxed_slice());
    fuzz(
        "captured_and_mangled_candidates_never_panic",
        1,
        (0..candidates.len(), mutations()),
        |(i, m)| {
            let text =
                String::from_utf8_lossy(&apply(candidates[i].text.as_bytes(), &m)).into_owned();
            let peer = &mut r.borrow_mut().peer;
            let _ = peer.add_remote_candidate(&text);
            // A candidate is form-checked only: nothing is ever sent for one.
            prop_assert!(peer.poll_datagram().is_none());
            Ok(())
        },
    );
}
