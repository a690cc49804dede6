//! Signaling fuzzing seeded from real traffic: the client frames Chromium and Firefox sent
//! to Hearth (`tests/data/corpus/signaling.jsonl`, captured by `tests/data/corpus/capture.sh`)
//! go, as captured, mutated and replaced by arbitrary text, through
//!
//! - the server's decoder of client frames (`hearth_api::convert::decode_client`): every
//!   captured frame decodes, a frame that is not JSON is `MALFORMED_MESSAGE`, nothing panics;
//! - the protobuf form of the same messages (`hearth.signal.v1.ClientMessage`, prost) and its
//!   proto3 JSON form (pbjson): every message survives both round trips, and arbitrary or
//!   mutated protobuf bytes decode or fail, never panic;
//! - a real node over a real WebSocket (fewer cases: each is a round trip): after mangled
//!   frames, before and after joining, each session still answers a ping (or was closed
//!   with an error) and the node still lets a new participant join.
//!
//! Short mode by default. Long mode: `HEARTH_FUZZ_SECONDS=N` re-runs each test's batches
//! with fresh seeds for N seconds:
//!
//! ```sh
//! HEARTH_FUZZ_SECONDS=120 cargo test -p hearth-tests --release --test fuzz_signaling -- --nocapture
//! ```

use std::fmt::Debug;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hearth_actors::{Grants, SignalErrorCode};
use hearth_api::convert::{Incoming, decode_client};
use hearth_proto::signal::v1 as pb;
use hearth_tests::{RawSignal, TestServer};
use pb::server_message::Message as S;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};
use prost::Message as _;
use serde_json::Value;

fn fuzz_seconds() -> Option<u64> {
    std::env::var("HEARTH_FUZZ_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
}

fn cases() -> u32 {
    std::env::var("HEARTH_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

/// One batch of `cases()` cases, or batches with fresh seeds for `HEARTH_FUZZ_SECONDS`.
fn fuzz<St>(name: &str, strategy: St, test: impl Fn(St::Value) -> Result<(), TestCaseError>)
where
    St: Strategy,
    St::Value: Debug,
{
    let start = Instant::now();
    let deadline = fuzz_seconds().map(|s| start + Duration::from_secs(s));
    let mut total = 0u64;
    loop {
        let mut runner = TestRunner::new(Config {
            cases: cases(),
            failure_persistence: None,
            ..Config::default()
        });
        match runner.run(&strategy, &test) {
            Ok(()) => {}
            Err(TestError::Fail(why, input)) => {
                panic!("{name}: {why} after {total} cases; minimal input: {input:#?}")
            }
            Err(TestError::Abort(why)) => panic!("{name}: aborted: {why}"),
        }
        total += u64::from(cases());
        if deadline.is_none_or(|d| Instant::now() >= d) {
            break;
        }
    }
    eprintln!(
        "fuzz {name}: {total} cases in {:.1} s",
        start.elapsed().as_secs_f64()
    );
}

/// A captured frame: who sent it, and the text.
#[derive(Clone, Debug)]
struct Frame {
    from: String,
    text: String,
}

fn corpus() -> &'static [Frame] {
    static CORPUS: OnceLock<Vec<Frame>> = OnceLock::new();
    CORPUS.get_or_init(|| {
        include_str!("../data/corpus/signaling.jsonl")
            .lines()
            .map(|line| {
                let v: Value = serde_json::from_str(line).expect("corpus line");
                Frame {
                    from: v["from"].as_str().expect("from").to_owned(),
                    text: v["frame"].as_str().expect("frame").to_owned(),
                }
            })
            .collect()
    })
}

/// The frames browsers sent to the server.
fn client_frames() -> &'static [Frame] {
    static FRAMES: OnceLock<Vec<Frame>> = OnceLock::new();
    FRAMES.get_or_init(|| {
        corpus()
            .iter()
            .filter(|f| f.from != "hearth")
            .cloned()
            .collect()
    })
}

// ---- mutations -------------------------------------------------------------------------

/// A change to a frame's bytes.
#[derive(Clone, Debug)]
enum ByteEdit {
    Flip(usize, u8),
    Set(usize, u8),
    Truncate(usize),
    Insert(usize, String),
    Remove(usize, usize),
    /// The rest of another captured frame from `from` on.
    Splice {
        at: usize,
        other: usize,
        from: usize,
    },
}

/// A change to a frame's JSON structure.
#[derive(Clone, Debug)]
enum JsonEdit {
    /// Replace the value at a path (chosen by index) with another JSON value.
    Replace(usize, Value),
    /// Remove a key (chosen by index) from its object.
    RemoveKey(usize),
    /// Add a key to an object.
    AddKey(usize, String, Value),
    /// Put the value of another captured frame's message next to this one's.
    MergeWith(usize),
    /// Wrap a value in an array.
    Wrap(usize),
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        Just(Value::from(u64::MAX)),
        Just(Value::from("-1")),
        Just(Value::from("99999999999999999999999")),
        Just(Value::from("offer")),
        Just(Value::from("answer")),
        ".{0,40}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("join".to_owned()),
                    Just("sdp".to_owned()),
                    Just("type".to_owned()),
                    Just("candidate".to_owned()),
                    Just("trackId".to_owned()),
                    "[a-zA-Z]{1,8}"
                ],
                inner,
                0..4
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn byte_edit() -> impl Strategy<Value = ByteEdit> {
    prop_oneof![
        3 => (any::<usize>(), 0u8..8).prop_map(|(i, b)| ByteEdit::Flip(i, b)),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| ByteEdit::Set(i, b)),
        1 => any::<usize>().prop_map(ByteEdit::Truncate),
        2 => (any::<usize>(), prop_oneof![
            Just("\"".to_owned()), Just("\\".to_owned()), Just("{".to_owned()),
            Just("}".to_owned()), Just(",".to_owned()), Just("\\u0000".to_owned()),
            Just("\\ud800".to_owned()), Just("\r\n".to_owned()), ".{0,12}",
        ]).prop_map(|(i, s)| ByteEdit::Insert(i, s)),
        1 => (any::<usize>(), 1usize..32).prop_map(|(i, n)| ByteEdit::Remove(i, n)),
        1 => (any::<usize>(), any::<usize>(), any::<usize>())
            .prop_map(|(at, other, from)| ByteEdit::Splice { at, other, from }),
    ]
}

fn json_edit() -> impl Strategy<Value = JsonEdit> {
    prop_oneof![
        3 => (any::<usize>(), json_value()).prop_map(|(i, v)| JsonEdit::Replace(i, v)),
        2 => any::<usize>().prop_map(JsonEdit::RemoveKey),
        1 => (any::<usize>(), "[a-zA-Z]{1,10}", json_value())
            .prop_map(|(i, k, v)| JsonEdit::AddKey(i, k, v)),
        1 => any::<usize>().prop_map(JsonEdit::MergeWith),
        1 => any::<usize>().prop_map(JsonEdit::Wrap),
    ]
}

fn apply_bytes(text: &str, edits: &[ByteEdit]) -> String {
    let frames = client_frames();
    let mut d = text.as_bytes().to_vec();
    for e in edits {
        let n = d.len();
        match e {
            ByteEdit::Flip(i, b) if n > 0 => d[i % n] ^= 1 << b,
            ByteEdit::Set(i, v) if n > 0 => d[i % n] = *v,
            ByteEdit::Truncate(i) => d.truncate(i % (n + 1)),
            ByteEdit::Insert(i, s) => {
                let at = i % (n + 1);
                d.splice(at..at, s.bytes());
            }
            ByteEdit::Remove(i, k) if n > 0 => {
                let at = i % n;
                d.drain(at..(at + k).min(n));
            }
            ByteEdit::Splice { at, other, from } => {
                let other = frames[other % frames.len()].text.as_bytes();
                d.truncate(at % (n + 1));
                d.extend_from_slice(&other[from % (other.len() + 1)..]);
            }
            _ => {}
        }
    }
    // A WebSocket text frame is UTF-8.
    String::from_utf8_lossy(&d).into_owned()
}

/// Every value of a JSON document, depth first (the root is 0).
fn paths(v: &Value, out: &mut Vec<Vec<PathStep>>, at: &mut Vec<PathStep>) {
    out.push(at.clone());
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                at.push(PathStep::Key(k.clone()));
                paths(child, out, at);
                at.pop();
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                at.push(PathStep::Index(i));
                paths(child, out, at);
                at.pop();
            }
        }
        _ => {}
    }
}

#[derive(Clone, Debug)]
enum PathStep {
    Key(String),
    Index(usize),
}

fn at_path<'a>(v: &'a mut Value, path: &[PathStep]) -> &'a mut Value {
    path.iter().fold(v, |v, step| match step {
        PathStep::Key(k) => &mut v[k.as_str()],
        PathStep::Index(i) => &mut v[*i],
    })
}

fn apply_json(text: &str, edits: &[JsonEdit]) -> String {
    let frames = client_frames();
    let mut doc: Value = serde_json::from_str(text).expect("captured frames are JSON");
    for e in edits {
        let mut all = Vec::new();
        paths(&doc, &mut all, &mut Vec::new());
        let pick = |i: usize| all[i % all.len()].clone();
        match e {
            JsonEdit::Replace(i, v) => *at_path(&mut doc, &pick(*i)) = v.clone(),
            JsonEdit::RemoveKey(i) => {
                let path = pick(*i);
                if let Some((PathStep::Key(k), parent)) = path.split_last()
                    && let Value::Object(m) = at_path(&mut doc, parent)
                {
                    m.remove(k);
                }
            }
            JsonEdit::AddKey(i, k, v) => {
                if let Value::Object(m) = at_path(&mut doc, &pick(*i)) {
                    m.insert(k.clone(), v.clone());
                }
            }
            JsonEdit::MergeWith(i) => {
                let other: Value =
                    serde_json::from_str(&frames[i % frames.len()].text).expect("JSON");
                if let (Value::Object(m), Value::Object(o)) = (&mut doc, other) {
                    m.extend(o);
                }
            }
            JsonEdit::Wrap(i) => {
                let target = at_path(&mut doc, &pick(*i));
                *target = Value::Array(vec![target.take()]);
            }
        }
    }
    doc.to_string()
}

/// A mangled client frame: captured frames with byte or JSON edits, or arbitrary text.
fn mangled_frame() -> impl Strategy<Value = String> {
    let n = client_frames().len();
    prop_oneof![
        4 => (0..n, proptest::collection::vec(byte_edit(), 1..5))
            .prop_map(|(i, e)| apply_bytes(&client_frames()[i].text, &e)),
        4 => (0..n, proptest::collection::vec(json_edit(), 1..4))
            .prop_map(|(i, e)| apply_json(&client_frames()[i].text, &e)),
        1 => ".{0,200}",
        1 => json_value().prop_map(|v| v.to_string()),
    ]
}

// ---- the decoder -----------------------------------------------------------------------

#[test]
fn captured_frames_decode_and_round_trip() {
    let frames = client_frames();
    for browser in ["chromium", "firefox"] {
        for kind in ["join", "offer", "answer", "trickle"] {
            assert!(
                frames
                    .iter()
                    .any(|f| f.from == browser && f.text.starts_with(&format!("{{\"{kind}\""))),
                "no {kind} from {browser} in the corpus"
            );
        }
    }
    for f in frames {
        let decoded = decode_client(&f.text)
            .unwrap_or_else(|e| panic!("{}'s frame refused: {e:?}\n{}", f.from, f.text));
        let msg: pb::ClientMessage = serde_json::from_str(&f.text).expect("pbjson");
        // What the server decoded is what the frame says.
        match (&decoded, &msg.message) {
            (Incoming::Join(j), Some(pb::client_message::Message::Join(k))) => assert_eq!(j, k),
            (Incoming::Ping(t), Some(pb::client_message::Message::Ping(p))) => {
                assert_eq!(*t, p.timestamp)
            }
            (Incoming::Signal(_), Some(m)) => {
                assert!(!matches!(
                    m,
                    pb::client_message::Message::Join(_) | pb::client_message::Message::Ping(_)
                ))
            }
            other => panic!("decoded as {other:?}"),
        }
        // protobuf and proto3 JSON round trips.
        let bytes = msg.encode_to_vec();
        assert_eq!(pb::ClientMessage::decode(&bytes[..]).expect("prost"), msg);
        let json = serde_json::to_string(&msg).expect("pbjson");
        assert_eq!(
            serde_json::from_str::<pb::ClientMessage>(&json).expect("pbjson"),
            msg
        );
    }
    // The server's own frames of the capture decode as server messages.
    for f in corpus().iter().filter(|f| f.from == "hearth") {
        serde_json::from_str::<pb::ServerMessage>(&f.text)
            .unwrap_or_else(|e| panic!("{e}: {}", f.text));
    }
}

#[test]
fn mangled_frames_are_errors_never_panics() {
    fuzz(
        "mangled_frames_are_errors_never_panics",
        mangled_frame(),
        |text| {
            let result = decode_client(&text);
            if serde_json::from_str::<Value>(&text).is_err() {
                let e = result.as_ref().expect_err("not JSON, yet decoded");
                prop_assert!(
                    matches!(
                        e.code,
                        SignalErrorCode::MalformedMessage | SignalErrorCode::MessageTooLarge
                    ),
                    "{:?}",
                    e
                );
            }
            if let Ok(decoded) = &result {
                // Decoded means a JSON object that is proto3 JSON of a ClientMessage with a
                // message (the server reads JSON first: of duplicate keys the last wins).
                let value: Value = serde_json::from_str(&text).expect("JSON");
                prop_assert!(value.is_object());
                let msg: pb::ClientMessage =
                    serde_json::from_value(value).expect("decoded as pbjson");
                prop_assert!(msg.message.is_some(), "{:?}", decoded);
            }
            Ok(())
        },
    );
}

#[test]
fn mangled_protobuf_never_panics_and_round_trips() {
    let encoded: &'static [Vec<u8>] = {
        static ENCODED: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
        ENCODED.get_or_init(|| {
            client_frames()
                .iter()
                .map(|f| {
                    serde_json::from_str::<pb::ClientMessage>(&f.text)
                        .expect("pbjson")
                        .encode_to_vec()
                })
                .collect()
        })
    };
    #[derive(Clone, Debug)]
    enum Edit {
        Flip(usize, u8),
        Set(usize, u8),
        Truncate(usize),
        Insert(usize, Vec<u8>),
    }
    let edit = prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(i, b)| Edit::Flip(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
        any::<usize>().prop_map(Edit::Truncate),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, b)| Edit::Insert(i, b)),
    ];
    let input = prop_oneof![
        3 => (0..encoded.len(), proptest::collection::vec(edit, 1..5)).prop_map(
            move |(i, edits)| {
                let mut d = encoded[i].clone();
                for e in edits {
                    let n = d.len();
                    match e {
                        Edit::Flip(i, b) if n > 0 => d[i % n] ^= 1 << b,
                        Edit::Set(i, v) if n > 0 => d[i % n] = v,
                        Edit::Truncate(i) => d.truncate(i % (n + 1)),
                        Edit::Insert(i, b) => {
                            let at = i % (n + 1);
                            d.splice(at..at, b);
                        }
                        _ => {}
                    }
                }
                d
            }
        ),
        1 => proptest::collection::vec(any::<u8>(), 0..300),
    ];
    fuzz(
        "mangled_protobuf_never_panics_and_round_trips",
        input,
        |bytes| {
            if let Ok(msg) = pb::ClientMessage::decode(&bytes[..]) {
                // What decodes encodes to something that decodes to the same message, and its
                // proto3 JSON form reads back the same too (unless a string holds invalid UTF-8,
                // which prost already refuses).
                let again = msg.encode_to_vec();
                prop_assert_eq!(
                    &pb::ClientMessage::decode(&again[..]).expect("re-decodes"),
                    &msg
                );
                let json = serde_json::to_string(&msg).expect("pbjson");
                prop_assert_eq!(
                    &serde_json::from_str::<pb::ClientMessage>(&json).expect("pbjson"),
                    &msg
                );
                let _ = decode_client(&json);
            }
            Ok(())
        },
    );
}

// ---- a real node over a real WebSocket ------------------------------------------------

/// Sends a ping and waits for the pong; false if the server closed the socket instead.
async fn answers_ping(ws: &mut RawSignal, stamp: i64) -> bool {
    if !ws
        .try_send_text(format!(r#"{{"ping":{{"timestamp":"{stamp}"}}}}"#))
        .await
    {
        return false; // closed under the mangled frames
    }
    loop {
        match ws.next_message_or_pong(Duration::from_secs(10)).await {
            Some(S::Pong(p)) if p.timestamp == stamp => return true,
            Some(S::Error(e)) if e.fatal => return !ws.closed_within(Duration::from_secs(5)).await,
            Some(_) => continue,
            None => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_survives_mangled_frames_over_websocket() {
    let server = TestServer::start().await;
    let strategy = (
        any::<bool>(),
        proptest::collection::vec(mangled_frame(), 1..6),
    );
    let mut runner = TestRunner::new(Config {
        failure_persistence: None,
        ..Config::default()
    });
    let start = Instant::now();
    let deadline = fuzz_seconds().map(|s| start + Duration::from_secs(s));
    let rounds = (cases() / 16).max(1);
    let (mut sessions, mut frames, mut closed) = (0u64, 0u64, 0u64);
    loop {
        for _ in 0..rounds {
            let (join_first, mangled) = strategy.new_tree(&mut runner).expect("a value").current();
            let mut ws = RawSignal::connect(&server).await;
            if join_first {
                let token = server.token("fuzz", &format!("p{sessions}"), Grants::default());
                ws.send_join(&token, "").await;
                match ws.next_message(Duration::from_secs(10)).await {
                    Some(S::Join(_)) => {}
                    other => panic!("a valid join was answered with {other:?}"),
                }
            }
            let mut open = true;
            for text in &mangled {
                frames += 1;
                if !ws.try_send_text(text.clone()).await {
                    open = false;
                    break;
                }
            }
            // The session answers a ping after the mangled frames, or the server closed it
            // (a fatal error, e.g. mangled frames before any join).
            if !(open && answers_ping(&mut ws, 7).await) {
                closed += 1;
            }
            sessions += 1;
        }
        // The node still takes a new participant.
        let mut fresh = RawSignal::connect(&server).await;
        let token = server.token("fuzz-check", &format!("c{sessions}"), Grants::default());
        fresh.send_join(&token, "").await;
        match fresh.next_message(Duration::from_secs(10)).await {
            Some(S::Join(_)) => {}
            other => panic!("after {frames} mangled frames a join got {other:?}"),
        }
        if deadline.is_none_or(|d| Instant::now() >= d) {
            break;
        }
    }
    eprintln!(
        "fuzz a_node_survives_mangled_frames_over_websocket: {sessions} sessions, {frames} \
         mangled frames ({closed} sessions closed by the server) in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    server.shutdown().await;
}
