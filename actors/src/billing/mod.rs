//! Usage metering: what the node's meetings, participants, tracks and TURN allocations used,
//! written to a durable ledger that a billing system pulls, and the lifecycle events that
//! become webhooks.
//!
//! ```text
//! meeting / participant / allocation actors
//!   `- UsageMeter::open(..) -> UsageHandle      interval opens; bounded channel (never blocks)
//!        bytes: relaxed atomics on the handle    (the media path adds, nothing waits)
//!        drop the handle: interval ends          (a failed actor's handles drop too)
//! BillingActor (child of the node supervisor), every second:
//!   drain the channel; for every open interval: slices at hour boundaries, checkpoint;
//!   for every ended one: final rows; lifecycle events into the webhook outbox;
//!   all of it in ONE transaction per second for the whole node (store::Ledger::write).
//! ```
//!
//! Crash safety: each row's idempotency key is deterministic (`interval/meter/slice start`),
//! inserted with `ON CONFLICT DO NOTHING`; an open interval's checkpoint is at most a second
//! old; at start the node closes the intervals its previous run left open at their last
//! checkpoint ([`recover`]). So `kill -9` loses at most about a second of usage and a
//! restart never counts anything twice. When the database is unreachable the intervals stay
//! in memory (ended ones up to [`MAX_BUFFERED_ENDED`], then the oldest are dropped and
//! counted) and the next successful tick writes everything they accumulated.
//!
//! Meters (integers): `meeting_ms`, `participant_ms`, `audio_track_ms`, `video_track_ms`,
//! `screen_track_ms`, `transcription_ms` (per audio track, while captions transcribe it),
//! `bytes_in`, `bytes_out` (per participant, as the node's media socket saw them),
//! `turn_relayed_bytes` (per TURN user, both directions).

pub mod store;
pub mod webhook;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::mpsc;

use crate::registry::{ActorKind, ActorRegistry, ActorSpec, Registration};
use store::{Batch, Ledger, OpenRow, OutboxEvent, UsageRow, now_ms};

/// Every meter the ledger knows.
pub const METERS: &[&str] = &[
    "meeting_ms",
    "participant_ms",
    "audio_track_ms",
    "video_track_ms",
    "screen_track_ms",
    "transcription_ms",
    "bytes_in",
    "bytes_out",
    "turn_relayed_bytes",
];

/// Webhook event types.
pub const EVENT_TYPES: &[&str] = &[
    "meeting.started",
    "meeting.ended",
    "participant.joined",
    "participant.left",
    "track.published",
    "track.unpublished",
    "transcript.segment",
];

/// Final transcript segments kept in memory while the database is unreachable; beyond it
/// new ones are dropped and counted.
pub const MAX_PENDING_TRANSCRIPTS: usize = 20_000;

/// Intervals opened but not yet taken by the billing actor.
pub const CHANNEL_CAPACITY: usize = 65_536;
/// Ended intervals kept in memory while the database is unreachable.
pub const MAX_BUFFERED_ENDED: usize = 200_000;
const HOUR_MS: i64 = 3_600_000;

/// What an interval meters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntervalKind {
    Meeting,
    Participant,
    AudioTrack,
    VideoTrack,
    ScreenTrack,
    /// An audio track being transcribed (live captions).
    Transcription,
    Turn,
}

impl IntervalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IntervalKind::Meeting => "meeting",
            IntervalKind::Participant => "participant",
            IntervalKind::AudioTrack => "audio_track",
            IntervalKind::VideoTrack => "video_track",
            IntervalKind::ScreenTrack => "screen_track",
            IntervalKind::Transcription => "transcription",
            IntervalKind::Turn => "turn",
        }
    }

    pub fn parse(s: &str) -> Option<IntervalKind> {
        Some(match s {
            "meeting" => IntervalKind::Meeting,
            "participant" => IntervalKind::Participant,
            "audio_track" => IntervalKind::AudioTrack,
            "video_track" => IntervalKind::VideoTrack,
            "screen_track" => IntervalKind::ScreenTrack,
            "transcription" => IntervalKind::Transcription,
            "turn" => IntervalKind::Turn,
            _ => return None,
        })
    }

    /// The time meter, if any.
    fn time_meter(self) -> Option<&'static str> {
        match self {
            IntervalKind::Meeting => Some("meeting_ms"),
            IntervalKind::Participant => Some("participant_ms"),
            IntervalKind::AudioTrack => Some("audio_track_ms"),
            IntervalKind::VideoTrack => Some("video_track_ms"),
            IntervalKind::ScreenTrack => Some("screen_track_ms"),
            IntervalKind::Transcription => Some("transcription_ms"),
            IntervalKind::Turn => None,
        }
    }

    /// Webhook types at open and at end.
    fn lifecycle(self) -> Option<(&'static str, &'static str)> {
        match self {
            IntervalKind::Meeting => Some(("meeting.started", "meeting.ended")),
            IntervalKind::Participant => Some(("participant.joined", "participant.left")),
            IntervalKind::AudioTrack | IntervalKind::VideoTrack | IntervalKind::ScreenTrack => {
                Some(("track.published", "track.unpublished"))
            }
            IntervalKind::Transcription | IntervalKind::Turn => None,
        }
    }

    /// Order of end events in one tick: tracks, then participants, then meetings.
    fn end_rank(self) -> u8 {
        match self {
            IntervalKind::AudioTrack
            | IntervalKind::VideoTrack
            | IntervalKind::ScreenTrack
            | IntervalKind::Transcription => 0,
            IntervalKind::Turn => 1,
            IntervalKind::Participant => 2,
            IntervalKind::Meeting => 3,
        }
    }
}

/// Who an interval bills.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attribution {
    /// The API key (tenant) that created the meeting or minted the token.
    pub api_key: String,
    pub meeting: String,
    pub participant: String,
    pub identity: String,
}

/// One metered interval.
#[derive(Debug)]
pub struct UsageInterval {
    pub id: String,
    pub kind: IntervalKind,
    pub who: Attribution,
    /// Track id, TURN user, participant id or meeting id.
    pub subject: String,
    pub started_ms: i64,
    /// 0 while open.
    ended_ms: AtomicU64,
    reason: OnceLock<String>,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    /// Counters kept elsewhere (a TURN allocation's), read instead of the ones above.
    source: OnceLock<Arc<dyn ByteSource>>,
}

/// Byte counters an interval reads from their owner (in, out).
pub trait ByteSource: Send + Sync + std::fmt::Debug {
    fn bytes(&self) -> (u64, u64);
}

impl UsageInterval {
    pub fn ended_ms(&self) -> Option<i64> {
        match self.ended_ms.load(Ordering::Acquire) {
            0 => None,
            ms => Some(ms as i64),
        }
    }

    /// Adds bytes received from the metered party.
    pub fn add_in(&self, n: u64) {
        self.bytes_in.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds bytes sent to the metered party.
    pub fn add_out(&self, n: u64) {
        self.bytes_out.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads the byte counters from `source` from now on.
    pub fn attach(&self, source: Arc<dyn ByteSource>) {
        let _ = self.source.set(source);
    }

    pub fn bytes(&self) -> (u64, u64) {
        if let Some(source) = self.source.get() {
            return source.bytes();
        }
        (
            self.bytes_in.load(Ordering::Relaxed),
            self.bytes_out.load(Ordering::Relaxed),
        )
    }

    /// Ends the interval now, saying why (for the webhook); later ends change nothing.
    pub fn finish(&self, reason: &str) {
        let _ = self.reason.set(reason.to_owned());
        self.end(now_ms());
    }

    fn end(&self, at_ms: i64) {
        let at = at_ms.max(self.started_ms).max(1) as u64;
        let _ = self
            .ended_ms
            .compare_exchange(0, at, Ordering::AcqRel, Ordering::Acquire);
    }
}

/// The owner's side of an interval: dropping it ends the interval (so an actor that fails
/// ends its intervals with it).
#[derive(Debug)]
pub struct UsageHandle(Arc<UsageInterval>);

impl UsageHandle {
    /// Ends the interval now, saying why (for the webhook).
    pub fn end_with(self, reason: &str) {
        let _ = self.0.reason.set(reason.to_owned());
        drop(self);
    }

    /// The interval, for counters held elsewhere (legs, tasks).
    pub fn interval(&self) -> &Arc<UsageInterval> {
        &self.0
    }
}

impl Drop for UsageHandle {
    fn drop(&mut self) {
        self.0.end(now_ms());
    }
}

/// Where intervals are opened. Cheap to clone; a disabled meter (no ledger) hands out
/// handles nobody reads.
#[derive(Clone)]
pub struct UsageMeter {
    inner: Option<Arc<MeterInner>>,
}

struct MeterInner {
    tx: mpsc::Sender<Arc<UsageInterval>>,
}

impl UsageMeter {
    pub fn disabled() -> UsageMeter {
        UsageMeter { inner: None }
    }

    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Opens an interval that starts now.
    pub fn open(&self, kind: IntervalKind, who: Attribution, subject: &str) -> UsageHandle {
        self.open_at(kind, who, subject, now_ms())
    }

    /// Opens an interval that started at `started_ms`.
    pub fn open_at(
        &self,
        kind: IntervalKind,
        who: Attribution,
        subject: &str,
        started_ms: i64,
    ) -> UsageHandle {
        let interval = Arc::new(UsageInterval {
            id: format!("{}:{}:{}", kind.as_str(), subject, started_ms),
            kind,
            who,
            subject: subject.to_owned(),
            started_ms,
            ended_ms: AtomicU64::new(0),
            reason: OnceLock::new(),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            source: OnceLock::new(),
        });
        if let Some(inner) = &self.inner
            && inner.tx.try_send(Arc::clone(&interval)).is_err()
        {
            metrics::counter!("hearth_usage_intervals_dropped_total").increment(1);
        }
        UsageHandle(interval)
    }
}

/// The billing side's state; kept outside the actor so a restarted actor resumes it.
pub struct Billing {
    pub node_id: String,
    pub ledger: Ledger,
    rx: Mutex<Option<mpsc::Receiver<Arc<UsageInterval>>>>,
    open: Mutex<OpenSet>,
    pub stats: BillingStats,
    /// Tests and drills: the next tick panics.
    fault: std::sync::atomic::AtomicBool,
    /// Woken after each committed batch (the webhook sender waits on it).
    pub committed_wake: Arc<tokio::sync::Notify>,
    /// How often the actor writes.
    pub tick: Duration,
    /// Renders webhook bodies.
    encode: EventEncoder,
    /// Final transcript segments not yet written.
    transcripts: Mutex<std::collections::VecDeque<store::TranscriptRow>>,
    /// One tick at a time: the actor, shutdown and the transcript API all call
    /// [`Billing::tick_once`], which advances what it wrote only after the commit.
    tick_lock: tokio::sync::Mutex<()>,
}

#[derive(Default)]
pub struct BillingStats {
    /// Transcript segments dropped because too many waited for the database.
    pub lost_transcripts: AtomicU64,
    pub ticks: AtomicU64,
    pub write_errors: AtomicU64,
    pub rows_written: AtomicU64,
    pub lost_ended: AtomicU64,
    pub last_commit_ms: AtomicU64,
    /// Actor starts (restarts = starts - 1).
    pub starts: AtomicU64,
}

#[derive(Default)]
struct OpenSet {
    next: u64,
    entries: BTreeMap<u64, OpenEntry>,
    /// Participant id -> attribution (TURN credentials `sfu:<participant>` bill its tenant).
    participants: std::collections::HashMap<String, Attribution>,
}

struct OpenEntry {
    iv: Arc<UsageInterval>,
    slice_ms: i64,
    billed_in: u64,
    billed_out: u64,
    announced: bool,
}

impl Billing {
    /// Closes what node `node` left open at its last checkpoint (a node of the cluster that
    /// died and did not come back), as that node itself would at its next start.
    pub async fn recover_node(&self, node: &str) -> Result<usize, store::LedgerError> {
        recover(&self.ledger, node, self.encode).await
    }

    /// A meter and the billing state behind it.
    pub fn new(
        node_id: String,
        ledger: Ledger,
        tick: Duration,
        encode: EventEncoder,
    ) -> (UsageMeter, Arc<Billing>) {
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let billing = Arc::new(Billing {
            node_id,
            ledger,
            rx: Mutex::new(Some(rx)),
            open: Mutex::new(OpenSet::default()),
            stats: BillingStats::default(),
            fault: Default::default(),
            committed_wake: Arc::new(tokio::sync::Notify::new()),
            tick,
            encode,
            transcripts: Mutex::new(Default::default()),
            tick_lock: tokio::sync::Mutex::new(()),
        });
        let meter = UsageMeter {
            inner: Some(Arc::new(MeterInner { tx })),
        };
        (meter, billing)
    }

    /// Makes the next tick fail as a bug would (drills and tests).
    pub fn inject_fault(&self) {
        self.fault.store(true, Ordering::Release);
    }

    /// Queues a final transcript segment for the next write (with its webhook event). Never
    /// waits; when too many wait for the database, the segment is dropped and counted.
    pub fn record_transcript(&self, row: store::TranscriptRow) {
        let mut q = self.transcripts.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() >= MAX_PENDING_TRANSCRIPTS {
            self.stats.lost_transcripts.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("hearth_transcripts_lost_total").increment(1);
            return;
        }
        q.push_back(row);
    }

    /// Intervals open (or ended and not yet written).
    pub fn open_count(&self) -> usize {
        self.open.lock().map(|o| o.entries.len()).unwrap_or(0)
    }

    /// One tick: takes new intervals, builds the batch, writes it, and on success advances.
    pub async fn tick_once(&self) -> Result<usize, store::LedgerError> {
        // Two ticks at once would write the same rows and then both advance past them
        // (dropping transcript segments queued in between).
        let _one_at_a_time = self.tick_lock.lock().await;
        let now = now_ms();
        let batch = {
            let mut rx_slot = self.rx.lock().unwrap_or_else(|e| e.into_inner());
            let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(rx) = rx_slot.as_mut() {
                while let Ok(iv) = rx.try_recv() {
                    let id = open.next;
                    open.next += 1;
                    if iv.kind == IntervalKind::Participant {
                        open.participants.insert(iv.subject.clone(), iv.who.clone());
                    }
                    let entry = OpenEntry {
                        slice_ms: iv.started_ms,
                        iv,
                        billed_in: 0,
                        billed_out: 0,
                        announced: false,
                    };
                    open.entries.insert(id, entry);
                }
            }
            build_batch(&self.node_id, self.encode, &open, now)
        };
        let mut batch = batch;
        let taken_transcripts = {
            let q = self.transcripts.lock().unwrap_or_else(|e| e.into_inner());
            for row in q.iter().take(store::MAX_TRANSCRIPTS_PER_BATCH) {
                batch.batch.outbox.push(transcript_event(self.encode, row));
                batch.batch.transcripts.push(row.clone());
            }
            batch.batch.transcripts.len()
        };
        let rows = batch.batch.usage.len();
        let has_events = !batch.batch.outbox.is_empty();
        self.ledger.write(&batch.batch).await?;
        // Committed: advance what was written.
        if taken_transcripts > 0 {
            let mut q = self.transcripts.lock().unwrap_or_else(|e| e.into_inner());
            let n = taken_transcripts.min(q.len());
            q.drain(..n);
        }
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        for (key, adv) in batch.advance {
            match adv {
                Advance::Remove => {
                    if let Some(e) = open.entries.remove(&key)
                        && e.iv.kind == IntervalKind::Participant
                    {
                        open.participants.remove(&e.iv.subject);
                    }
                }
                Advance::To {
                    slice_ms,
                    billed_in,
                    billed_out,
                } => {
                    if let Some(e) = open.entries.get_mut(&key) {
                        e.slice_ms = slice_ms;
                        e.billed_in = billed_in;
                        e.billed_out = billed_out;
                        e.announced = true;
                    }
                }
            }
        }
        drop(open);
        self.stats
            .rows_written
            .fetch_add(rows as u64, Ordering::Relaxed);
        self.stats
            .last_commit_ms
            .store(now as u64, Ordering::Relaxed);
        metrics::counter!("hearth_usage_rows_written_total").increment(rows as u64);
        if has_events {
            self.committed_wake.notify_one();
        }
        Ok(rows)
    }

    /// After a failed write: bounds what is kept (oldest ended intervals go first, counted).
    fn shed(&self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let ended: Vec<u64> = open
            .entries
            .iter()
            .filter(|(_, e)| e.iv.ended_ms().is_some())
            .map(|(k, _)| *k)
            .collect();
        if ended.len() > MAX_BUFFERED_ENDED {
            let excess = ended.len() - MAX_BUFFERED_ENDED;
            for k in &ended[..excess] {
                open.entries.remove(k);
            }
            self.stats
                .lost_ended
                .fetch_add(excess as u64, Ordering::Relaxed);
            metrics::counter!("hearth_usage_intervals_lost_total").increment(excess as u64);
        }
        metrics::gauge!("hearth_usage_buffered_intervals").set(open.entries.len() as f64);
    }
}

enum Advance {
    Remove,
    To {
        slice_ms: i64,
        billed_in: u64,
        billed_out: u64,
    },
}

struct Built {
    batch: Batch,
    advance: Vec<(u64, Advance)>,
}

/// The state of one interval as the slicer needs it (from memory or from a checkpoint).
struct SliceInput<'a> {
    interval_id: &'a str,
    kind: IntervalKind,
    who: &'a Attribution,
    subject: &'a str,
    slice_ms: i64,
    billed_in: u64,
    billed_out: u64,
    bytes_in: u64,
    bytes_out: u64,
}

/// Appends the rows of `[slice_ms, end)`: time split at hour boundaries, byte deltas with the
/// first slice that closes (or with the end). Returns the new slice start and billed bytes.
fn slice(
    node: &str,
    s: &SliceInput<'_>,
    end: i64,
    closed: bool,
    now: i64,
    out: &mut Vec<UsageRow>,
) -> (i64, u64, u64) {
    let mut start = s.slice_ms;
    let (mut billed_in, mut billed_out) = (s.billed_in, s.billed_out);
    let row = |meter: &str, quantity: i64, from: i64, to: i64| UsageRow {
        seq: 0,
        idempotency_key: format!("{}/{}/{}", s.interval_id, meter, from),
        node: node.to_owned(),
        meter: meter.to_owned(),
        quantity,
        api_key: s.who.api_key.clone(),
        meeting: s.who.meeting.clone(),
        participant: s.who.participant.clone(),
        identity: s.who.identity.clone(),
        subject: s.subject.to_owned(),
        started_ms: from,
        ended_ms: to,
        recorded_ms: now,
    };
    loop {
        let boundary = (start.div_euclid(HOUR_MS) + 1) * HOUR_MS;
        let last = !(boundary < end || (boundary == end && !closed));
        if last && !closed {
            break;
        }
        let to = if last { end } else { boundary };
        if let Some(meter) = s.kind.time_meter()
            && to > start
        {
            out.push(row(meter, to - start, start, to));
        }
        let (din, dout) = (
            s.bytes_in.saturating_sub(billed_in),
            s.bytes_out.saturating_sub(billed_out),
        );
        match s.kind {
            IntervalKind::Turn if din + dout > 0 => {
                out.push(row(
                    "turn_relayed_bytes",
                    (din + dout) as i64,
                    start,
                    to.max(start),
                ));
            }
            IntervalKind::Participant => {
                if din > 0 {
                    out.push(row("bytes_in", din as i64, start, to.max(start)));
                }
                if dout > 0 {
                    out.push(row("bytes_out", dout as i64, start, to.max(start)));
                }
            }
            _ => {}
        }
        billed_in = s.bytes_in.max(billed_in);
        billed_out = s.bytes_out.max(billed_out);
        start = to.max(start);
        if last {
            break;
        }
    }
    (start, billed_in, billed_out)
}

/// A lifecycle event, for a webhook (the gateway renders its payload: [`EventEncoder`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LifecycleEvent {
    /// `meeting.started`, `participant.left`, ...
    pub event_type: &'static str,
    pub meeting: String,
    /// Empty for meeting events.
    pub participant: String,
    pub identity: String,
    /// Track events: the track id and `audio`, `video` or `screen`.
    pub track: Option<(String, &'static str)>,
    pub started_ms: i64,
    /// End events.
    pub ended_ms: Option<i64>,
    pub reason: Option<String>,
    /// `transcript.segment`: the final segment.
    pub transcript: Option<store::TranscriptRow>,
}

/// The webhook event of a final transcript segment (its id derives from the segment's, so a
/// rewrite after a failed commit is the same event).
fn transcript_event(encode: EventEncoder, row: &store::TranscriptRow) -> OutboxEvent {
    let event = LifecycleEvent {
        event_type: "transcript.segment",
        meeting: row.meeting.clone(),
        participant: row.participant.clone(),
        identity: row.identity.clone(),
        track: Some((row.track.clone(), "audio")),
        started_ms: row.meeting_started_ms + row.start_ms,
        ended_ms: Some(row.meeting_started_ms + row.end_ms),
        reason: None,
        transcript: Some(row.clone()),
    };
    OutboxEvent {
        id: format!("msg_{}", row.segment_id.trim_start_matches("SG_")),
        api_key: row.api_key.clone(),
        kind: "transcript.segment".into(),
        payload: encode(&event),
        created_ms: row.created_ms,
    }
}

/// Renders a webhook's body (the gateway owns the wire format).
pub type EventEncoder = fn(&LifecycleEvent) -> String;

#[allow(clippy::too_many_arguments)]
fn outbox_event(
    encode: EventEncoder,
    kind: IntervalKind,
    ty: &'static str,
    who: &Attribution,
    subject: &str,
    started_ms: i64,
    ended_ms: Option<i64>,
    reason: Option<&str>,
    interval_id: &str,
) -> OutboxEvent {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("{interval_id}/{ty}").as_bytes());
    let id = format!(
        "msg_{}",
        digest[..12]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let track_kind = match kind {
        IntervalKind::AudioTrack => Some("audio"),
        IntervalKind::VideoTrack => Some("video"),
        IntervalKind::ScreenTrack => Some("screen"),
        _ => None,
    };
    let event = LifecycleEvent {
        event_type: ty,
        meeting: who.meeting.clone(),
        participant: who.participant.clone(),
        identity: who.identity.clone(),
        track: track_kind.map(|k| (subject.to_owned(), k)),
        started_ms,
        ended_ms,
        reason: ended_ms.map(|_| reason.unwrap_or("ended").to_owned()),
        transcript: None,
    };
    OutboxEvent {
        id,
        api_key: who.api_key.clone(),
        kind: ty.to_owned(),
        payload: encode(&event),
        created_ms: now_ms(),
    }
}

fn build_batch(node: &str, encode: EventEncoder, open: &OpenSet, now: i64) -> Built {
    let mut batch = Batch::default();
    let mut advance = Vec::with_capacity(open.entries.len());
    let mut ends: Vec<(i64, u8, OutboxEvent)> = Vec::new();
    for (key, e) in &open.entries {
        let iv = &e.iv;
        // TURN allocations of SFU participants bill the participant's tenant.
        let who_turn;
        let who = if iv.kind == IntervalKind::Turn && iv.who.api_key.is_empty() {
            match iv
                .subject
                .strip_prefix("sfu:")
                .and_then(|p| open.participants.get(p.split('#').next().unwrap_or(p)))
            {
                Some(w) => {
                    who_turn = Attribution {
                        api_key: w.api_key.clone(),
                        meeting: w.meeting.clone(),
                        participant: w.participant.clone(),
                        identity: w.identity.clone(),
                    };
                    &who_turn
                }
                None => &iv.who,
            }
        } else {
            &iv.who
        };
        if !e.announced
            && let Some((started, _)) = iv.kind.lifecycle()
        {
            batch.outbox.push(outbox_event(
                encode,
                iv.kind,
                started,
                who,
                &iv.subject,
                iv.started_ms,
                None,
                None,
                &iv.id,
            ));
        }
        let (bytes_in, bytes_out) = iv.bytes();
        let input = SliceInput {
            interval_id: &iv.id,
            kind: iv.kind,
            who,
            subject: &iv.subject,
            slice_ms: e.slice_ms,
            billed_in: e.billed_in,
            billed_out: e.billed_out,
            bytes_in,
            bytes_out,
        };
        match iv.ended_ms() {
            Some(end) => {
                slice(node, &input, end, true, now, &mut batch.usage);
                batch.closed.push(iv.id.clone());
                if let Some((_, ended)) = iv.kind.lifecycle() {
                    ends.push((
                        end,
                        iv.kind.end_rank(),
                        outbox_event(
                            encode,
                            iv.kind,
                            ended,
                            who,
                            &iv.subject,
                            iv.started_ms,
                            Some(end),
                            iv.reason.get().map(String::as_str),
                            &iv.id,
                        ),
                    ));
                }
                advance.push((*key, Advance::Remove));
            }
            None => {
                let (slice_ms, billed_in, billed_out) = slice(
                    node,
                    &input,
                    now.max(e.slice_ms),
                    false,
                    now,
                    &mut batch.usage,
                );
                batch.checkpoints.push(OpenRow {
                    interval_id: iv.id.clone(),
                    node: node.to_owned(),
                    kind: iv.kind.as_str().to_owned(),
                    api_key: who.api_key.clone(),
                    meeting: who.meeting.clone(),
                    participant: who.participant.clone(),
                    identity: who.identity.clone(),
                    subject: iv.subject.clone(),
                    started_ms: iv.started_ms,
                    slice_ms,
                    checkpoint_ms: now,
                    bytes_in: bytes_in as i64,
                    bytes_out: bytes_out as i64,
                    billed_in: billed_in as i64,
                    billed_out: billed_out as i64,
                });
                advance.push((
                    *key,
                    Advance::To {
                        slice_ms,
                        billed_in,
                        billed_out,
                    },
                ));
            }
        }
    }
    ends.sort_by_key(|(at, rank, _)| (*at, *rank));
    batch.outbox.extend(ends.into_iter().map(|(_, _, e)| e));
    Built { batch, advance }
}

/// Closes the intervals a previous run of `node` left open, at their last checkpoint (so a
/// crash loses at most the time since that checkpoint). Returns how many were closed.
pub async fn recover(
    ledger: &Ledger,
    node: &str,
    encode: EventEncoder,
) -> Result<usize, store::LedgerError> {
    let rows = ledger.open_rows(node).await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let now = now_ms();
    let mut batch = Batch::default();
    let mut ends = Vec::new();
    for r in &rows {
        let Some(kind) = IntervalKind::parse(&r.kind) else {
            tracing::warn!(interval = %r.interval_id, kind = %r.kind, "unknown interval kind in the ledger; closing it without rows");
            batch.closed.push(r.interval_id.clone());
            continue;
        };
        let who = Attribution {
            api_key: r.api_key.clone(),
            meeting: r.meeting.clone(),
            participant: r.participant.clone(),
            identity: r.identity.clone(),
        };
        let input = SliceInput {
            interval_id: &r.interval_id,
            kind,
            who: &who,
            subject: &r.subject,
            slice_ms: r.slice_ms,
            billed_in: r.billed_in.max(0) as u64,
            billed_out: r.billed_out.max(0) as u64,
            bytes_in: r.bytes_in.max(0) as u64,
            bytes_out: r.bytes_out.max(0) as u64,
        };
        let end = r.checkpoint_ms.max(r.slice_ms);
        slice(node, &input, end, true, now, &mut batch.usage);
        batch.closed.push(r.interval_id.clone());
        if let Some((_, ended)) = kind.lifecycle() {
            ends.push((
                end,
                kind.end_rank(),
                outbox_event(
                    encode,
                    kind,
                    ended,
                    &who,
                    &r.subject,
                    r.started_ms,
                    Some(end),
                    Some("node_restarted"),
                    &r.interval_id,
                ),
            ));
        }
    }
    ends.sort_by_key(|(at, rank, _)| (*at, *rank));
    batch.outbox.extend(ends.into_iter().map(|(_, _, e)| e));
    ledger.write(&batch).await?;
    Ok(rows.len())
}

/// RFC 3339 with milliseconds, UTC.
pub fn rfc3339_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's
/// algorithm).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

// ----- The actor ---------------------------------------------------------------------------

/// Writes the ledger every tick. Its state lives in [`Billing`], so a restart resumes it.
pub struct BillingActor;

pub enum BillingMsg {
    Tick,
    /// Write now and reply (shutdown, tests).
    Flush(ractor::RpcReplyPort<bool>),
}

pub struct BillingState {
    billing: Arc<Billing>,
    reg: Registration,
    failing_since: Option<SystemTime>,
}

impl Actor for BillingActor {
    type Msg = BillingMsg;
    type State = BillingState;
    type Arguments = (Arc<Billing>, Arc<ActorRegistry>, ractor::ActorId);

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        (billing, actors, parent): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let restarts = billing.stats.starts.fetch_add(1, Ordering::Relaxed) as u32;
        let reg = actors.register(
            ActorSpec::new(myself.get_id(), ActorKind::Billing, "billing")
                .parent(parent)
                .restarted(restarts, None),
        );
        myself.send_interval(billing.tick, || BillingMsg::Tick);
        Ok(BillingState {
            billing,
            reg,
            failing_since: None,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.reg.handled();
        if state.billing.fault.swap(false, Ordering::AcqRel) {
            panic!("fault injected into the billing actor");
        }
        let ok = run_tick(state).await;
        if let BillingMsg::Flush(reply) = msg {
            let _ = reply.send(ok);
        }
        Ok(())
    }
}

async fn run_tick(state: &mut BillingState) -> bool {
    let b = &state.billing;
    b.stats.ticks.fetch_add(1, Ordering::Relaxed);
    match b.tick_once().await {
        Ok(_) => {
            if let Some(since) = state.failing_since.take() {
                tracing::info!(
                    down_for = ?since.elapsed().unwrap_or_default(),
                    "the ledger database is back; buffered usage written"
                );
            }
            metrics::gauge!("hearth_usage_buffered_intervals").set(b.open_count() as f64);
            true
        }
        Err(e) => {
            b.stats.write_errors.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("hearth_usage_write_errors_total").increment(1);
            if state.failing_since.is_none() {
                state.failing_since = Some(SystemTime::now());
                tracing::error!(error = %e, db = %b.ledger.display_url, "cannot write the usage ledger; buffering usage in memory until it answers");
            }
            b.shed();
            false
        }
    }
}
