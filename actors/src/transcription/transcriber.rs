//! `Transcriber`: one per transcribed audio track, a child of its meeting.
//!
//! It receives the track's RTP like a subscriber would (a track tap with its own bounded
//! queue: when the transcriber falls behind, the tap drops and counts, the publisher and the
//! other subscribers never wait), runs [`TrackAudio`] (Opus decode, 16 kHz, voice activity,
//! utterances) on a thread of its own at lower priority (nice 5: never on the Tokio workers
//! that carry media, and the media threads win when the CPU is short), and sends each
//! utterance to the engine. Results go back to the meeting as
//! [`Transcript`]s: interim ones while the person speaks (an interim job runs only when the
//! previous one of this track is done and the engine has a free worker), then a final one
//! with the same segment id. A final that could not be transcribed is still announced, with
//! empty text, so no client keeps showing its interim words.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use hearth_engine::audio::{TrackAudio, UtteranceEvent};
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef};
use tokio::sync::mpsc;

use super::{StreamAudio, StreamEvent, StreamSpec, SttError, SttJob, SttOutput, Transcription};
use crate::billing::UsageHandle;
use crate::domain::{EngineKind, Language, Transcript};
use crate::ids::{ParticipantId, TrackId, random_string};
use crate::meeting::MeetingMsg;
use crate::participant::ParticipantMsg;
use crate::registry::{ActorKind, ActorRegistry, ActorSpec, Registration};

pub enum TranscriberMsg {
    /// An utterance (interim or final) from the audio thread.
    Utterance(UtteranceEvent),
    /// The tap ended (the track went away) and the audio thread flushed.
    TapEnded,
    /// The audio thread died (a bug): the transcriber fails and is restarted.
    AudioFailed(String),
    /// An engine answered.
    Result {
        segment: u32,
        interim: bool,
        result: Result<SttOutput, SttError>,
        audio_ms: u64,
    },
    /// The meeting's language or engine changed.
    Settings {
        language: Language,
        engine: EngineKind,
    },
    /// A streaming engine's result or state (of stream `generation`; older ones are
    /// stale after an engine change).
    Stream { generation: u64, event: StreamEvent },
    /// Drill and test hook.
    InjectFault,
}

pub struct TranscriberArgs {
    pub meeting: ActorRef<MeetingMsg>,
    pub transcription: Arc<Transcription>,
    pub actors: Arc<ActorRegistry>,
    pub parent: ActorId,
    pub track: TrackId,
    pub participant: ParticipantId,
    pub identity: String,
    pub name: String,
    pub language: Language,
    pub engine: EngineKind,
    /// When the meeting started (transcript times count from it).
    pub meeting_started: SystemTime,
    /// The tap: the track's RTP, its drop counter and its actor (stopped with us).
    pub packets: mpsc::Receiver<Bytes>,
    pub tap_dropped: Arc<AtomicU64>,
    pub tap_actor: ActorRef<ParticipantMsg>,
    /// Restarts so far (for the tree).
    pub restarts: u32,
    pub last_failure: Option<String>,
    /// Transcription time of this track (ends with the actor).
    pub usage: UsageHandle,
}

pub struct Transcriber;

struct Segment {
    id: String,
    /// An interim job is out.
    interim_in_flight: bool,
    /// The final job is out (later interim results are stale).
    final_sent: bool,
    start_ms: u64,
    end_ms: u64,
    /// A streaming segment: when its last result came (meeting ms).
    last_result_ms: u64,
}

/// Packets the audio thread buffers; beyond it they are dropped (counted in the tap's drops).
const AUDIO_QUEUE: usize = 256;
/// Segment numbers of a streaming engine's utterances (apart from the segmenter's).
const STREAM_SEGMENTS: u32 = 1 << 31;
/// A streaming segment without a result for this long is over (its final never came):
/// the next words start a new one.
const STREAM_SEGMENT_IDLE_MS: u64 = 10_000;
/// A sequence number this far from the newest (about a minute of 20 ms packets) is a new
/// numbering, not a late packet.
const REBASE_PACKETS: i64 = 3000;

/// Where the pump sends each packet's Opus for a streaming engine (None: no stream), and
/// the track's RTP sequence numbers and timestamps counted from its first packet.
#[derive(Default)]
struct StreamTap {
    audio: Option<mpsc::Sender<StreamAudio>>,
    /// The highest (sequence number, timestamp) seen, and their extended values.
    newest: Option<(u16, u32)>,
    ext_seq: i64,
    ext_ts: i64,
}

pub struct TranscriberState {
    args_meeting: ActorRef<MeetingMsg>,
    t: Arc<Transcription>,
    track: TrackId,
    participant: ParticipantId,
    identity: String,
    name: String,
    language: Language,
    engine: EngineKind,
    /// Milliseconds from the meeting's start to this track's first packet (set by the
    /// audio thread when the first packet arrives).
    offset_ms: Arc<AtomicU64>,
    segments: HashMap<u32, Segment>,
    tap_actor: TapGuard,
    tap_dropped: Arc<AtomicU64>,
    reg: Registration,
    _usage: UsageHandle,
    meeting_started: SystemTime,
    /// A streaming engine's stream: the pump's side, this stream's generation and the
    /// utterance in progress (its segment number).
    stream_tap: Arc<std::sync::Mutex<StreamTap>>,
    stream_generation: u64,
    stream_segment: Option<u32>,
    next_stream_segment: u32,
    /// With a streaming engine, our own segmenter still times the speech (meeting ms):
    /// the latest utterance's start and end, for the engine's segments (whose results
    /// carry no times of their own).
    speech: Option<(u64, u64)>,
    /// End of the last streaming segment (a later one starts after it).
    stream_last_end: u64,
}

impl Actor for Transcriber {
    type Msg = TranscriberMsg;
    type State = TranscriberState;
    type Arguments = TranscriberArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let reg = args.actors.register(
            ActorSpec::new(
                myself.get_id(),
                ActorKind::Transcriber,
                format!("transcriber {}", args.track),
            )
            .parent(args.parent)
            .restarted(args.restarts, args.last_failure),
        );
        // The pump (a task): tap channel -> the audio thread's bounded queue.
        let (to_audio, from_pump) = std::sync::mpsc::sync_channel::<Bytes>(AUDIO_QUEUE);
        let mut packets = args.packets;
        let dropped = Arc::clone(&args.tap_dropped);
        let stream_tap = Arc::new(std::sync::Mutex::new(StreamTap::default()));
        let tap = Arc::clone(&stream_tap);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(16);
            while packets.recv_many(&mut batch, 64).await > 0 {
                {
                    let mut tap = tap.lock().unwrap_or_else(|e| e.into_inner());
                    if tap.audio.is_some() {
                        for packet in &batch {
                            tap.send(packet);
                        }
                    }
                }
                for packet in batch.drain(..) {
                    match to_audio.try_send(packet) {
                        Ok(()) => {}
                        Err(std::sync::mpsc::TrySendError::Full(_)) => {
                            dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        Err(std::sync::mpsc::TrySendError::Disconnected(_)) => return,
                    }
                }
            }
            // Dropping `to_audio` tells the audio thread the track ended.
        });
        let offset_ms = Arc::new(AtomicU64::new(u64::MAX));
        let audio = TrackAudio::new(args.transcription.config.segmenter.clone());
        let me = myself.clone();
        let offset = Arc::clone(&offset_ms);
        let started = args.meeting_started;
        std::thread::Builder::new()
            .name(format!("hearth-audio-{}", args.track))
            .spawn(move || audio_thread(audio, from_pump, me, offset, started))
            .map_err(|e| format!("cannot start the audio thread: {e}"))?;
        args.transcription.warm(args.engine);
        tracing::debug!(track = %args.track, "transcriber started");
        let mut state = TranscriberState {
            args_meeting: args.meeting,
            t: args.transcription,
            track: args.track,
            participant: args.participant,
            identity: args.identity,
            name: args.name,
            language: args.language,
            engine: args.engine,
            offset_ms,
            segments: HashMap::new(),
            tap_actor: TapGuard(args.tap_actor),
            tap_dropped: args.tap_dropped,
            reg,
            _usage: args.usage,
            meeting_started: args.meeting_started,
            stream_tap,
            stream_generation: 0,
            stream_segment: None,
            next_stream_segment: STREAM_SEGMENTS,
            speech: None,
            stream_last_end: 0,
        };
        state.open_stream(&myself);
        Ok(state)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.tap_actor.0.stop(Some("transcriber_stopped".into()));
        let dropped = state.tap_dropped.load(std::sync::atomic::Ordering::Relaxed);
        if dropped > 0 {
            tracing::info!(track = %state.track, dropped, "transcriber's tap dropped packets");
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.reg.handled();
        match msg {
            TranscriberMsg::Utterance(ev) => state.on_utterance(ev, &myself),
            TranscriberMsg::TapEnded => {
                myself.stop(Some("track_ended".into()));
                return Ok(());
            }
            TranscriberMsg::AudioFailed(why) => {
                return Err(format!("the audio thread of {} failed: {why}", state.track).into());
            }
            TranscriberMsg::Result {
                segment,
                interim,
                result,
                audio_ms,
            } => state.on_result(segment, interim, result, audio_ms),
            TranscriberMsg::Settings { language, engine } => {
                let changed = (language, engine) != (state.language, state.engine);
                state.language = language;
                state.engine = engine;
                state.t.warm(engine);
                if changed {
                    state.open_stream(&myself);
                }
            }
            TranscriberMsg::Stream { generation, event } => {
                if generation == state.stream_generation {
                    state.on_stream_event(event);
                }
            }
            TranscriberMsg::InjectFault => {
                panic!("fault injected into transcriber {}", state.track)
            }
        }
        Ok(())
    }
}

/// Stops the tap when the transcriber's state goes, however it goes (ractor skips
/// `post_stop` after a failure): the pump then ends, and the audio thread with it.
struct TapGuard(ActorRef<ParticipantMsg>);

impl Drop for TapGuard {
    fn drop(&mut self) {
        self.0.stop(Some("transcriber_gone".into()));
    }
}

/// Tells the actor when the audio thread ends by a panic.
struct PanicGuard(ActorRef<TranscriberMsg>);

impl Drop for PanicGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = self
                .0
                .send_message(TranscriberMsg::AudioFailed("panicked".into()));
        }
    }
}

/// The audio thread: RTP -> [`TrackAudio`] -> utterances to the actor. Ends (after flushing
/// the utterance in progress) when the pump goes away.
fn audio_thread(
    mut audio: TrackAudio,
    packets: std::sync::mpsc::Receiver<Bytes>,
    actor: ActorRef<TranscriberMsg>,
    offset_ms: Arc<AtomicU64>,
    meeting_started: SystemTime,
) {
    use std::sync::mpsc::RecvTimeoutError;
    let _guard = PanicGuard(actor.clone());
    // Below the media threads: when the CPU is short, media wins (Linux: per thread).
    let _ = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 5);
    let epoch = Instant::now();
    let now_ms = || epoch.elapsed().as_millis() as u64;
    let feed = |audio: &mut TrackAudio, packet: &Bytes| {
        // The tap hands whole RTP packets; anything unparsable is skipped.
        if let Ok(rtp) = hearth_engine::rtp::parse(packet) {
            let level = hearth_engine::rtp::audio_level(packet);
            audio.handle_rtp_with_level(now_ms(), rtp.seq, rtp.timestamp, &rtp.payload, level);
        }
    };
    let mut last_log = Instant::now();
    tracing::debug!("audio thread started");
    loop {
        if last_log.elapsed() >= Duration::from_secs(5) {
            last_log = Instant::now();
            tracing::debug!(stats = ?audio.stats(), "audio thread");
        }
        let wait = audio
            .poll_timeout()
            .map(|at| at.min(now_ms() + 5000))
            .map(|at| Duration::from_millis(at.saturating_sub(now_ms())))
            .unwrap_or(Duration::from_secs(3600));
        match packets.recv_timeout(wait) {
            Ok(packet) => {
                if offset_ms.load(std::sync::atomic::Ordering::Relaxed) == u64::MAX {
                    let since = SystemTime::now()
                        .duration_since(meeting_started)
                        .unwrap_or_default();
                    offset_ms.store(
                        since.as_millis() as u64,
                        std::sync::atomic::Ordering::Relaxed,
                    );
                }
                feed(&mut audio, &packet);
                // What else is queued (bounded: events and timeouts must not wait behind
                // a queue that a slow decode never empties).
                for _ in 0..32 {
                    let Ok(packet) = packets.try_recv() else {
                        break;
                    };
                    feed(&mut audio, &packet);
                }
            }
            Err(RecvTimeoutError::Timeout) => audio.handle_timeout(now_ms()),
            Err(RecvTimeoutError::Disconnected) => {
                tracing::debug!(stats = ?audio.stats(), "audio thread: track ended");
                // The track ended: whatever was being said ends now.
                audio.handle_timeout(u64::MAX / 2);
                while let Some(ev) = audio.poll_event() {
                    let _ = actor.send_message(TranscriberMsg::Utterance(ev));
                }
                let _ = actor.send_message(TranscriberMsg::TapEnded);
                return;
            }
        }
        while let Some(ev) = audio.poll_event() {
            if actor.send_message(TranscriberMsg::Utterance(ev)).is_err() {
                return; // the transcriber is gone
            }
        }
    }
}

impl StreamTap {
    /// One RTP packet's Opus to the stream; dropped (counted) when the connection is
    /// behind, and the stream forgotten when it has ended.
    fn send(&mut self, packet: &Bytes) {
        if self.audio.is_none() {
            return;
        }
        let Ok(rtp) = hearth_engine::rtp::parse(packet) else {
            return;
        };
        // Extended from the newest packet (wraps and reordering; a packet from before the
        // first counts as negative and is not sent).
        let (seq, ts) = match self.newest {
            None => {
                self.newest = Some((rtp.seq, rtp.timestamp));
                (0, 0)
            }
            Some((seq, ts)) => {
                let delta = i64::from(rtp.seq.wrapping_sub(seq) as i16);
                if delta.abs() > REBASE_PACKETS {
                    // A new numbering (the publisher's encoder restarted): it continues
                    // from here, one frame on.
                    self.newest = Some((rtp.seq, rtp.timestamp));
                    self.ext_seq += 1;
                    self.ext_ts += 960;
                    return self.push(rtp.payload.clone(), self.ext_seq, self.ext_ts);
                }
                let seq_at = self.ext_seq + delta;
                let ts_at = self.ext_ts + i64::from(rtp.timestamp.wrapping_sub(ts) as i32);
                if seq_at > self.ext_seq {
                    self.newest = Some((rtp.seq, rtp.timestamp));
                    self.ext_seq = seq_at;
                    self.ext_ts = ts_at;
                }
                (seq_at, ts_at)
            }
        };
        self.push(rtp.payload.clone(), seq, ts);
    }

    fn push(&mut self, opus: Bytes, seq: i64, ts: i64) {
        let Some(audio) = &self.audio else {
            return;
        };
        let (Ok(chunk), Ok(timestamp)) = (u64::try_from(seq), u64::try_from(ts)) else {
            return;
        };
        let chunk = StreamAudio {
            opus,
            chunk,
            timestamp,
        };
        match audio.try_send(chunk) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics::counter!("hearth_transcription_stream_dropped_total").increment(1);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => self.audio = None,
        }
    }
}

impl TranscriberState {
    /// (Re)opens the stream to a streaming engine if the meeting's engine is one (closing
    /// the previous stream, whose late events are ignored); closes it otherwise.
    fn open_stream(&mut self, myself: &ActorRef<TranscriberMsg>) {
        self.stream_generation += 1;
        self.finish_stream_segment();
        let spec = StreamSpec {
            participant: self.participant.to_string(),
            language: self.language,
        };
        let stream = self.t.open_stream(self.engine, spec);
        let mut tap = self.stream_tap.lock().unwrap_or_else(|e| e.into_inner());
        *tap = StreamTap::default();
        let Some(stream) = stream else {
            return;
        };
        tracing::debug!(track = %self.track, engine = self.engine.as_str(), "stream opened");
        tap.audio = Some(stream.audio);
        drop(tap);
        // Utterances cut for a batch engine before the switch get no result now: empty
        // finals clear their interim words.
        // (Those whose final job is out keep it: its text still comes.)
        let pending: Vec<u32> = self
            .segments
            .iter()
            .filter(|(k, seg)| **k < STREAM_SEGMENTS && !seg.final_sent)
            .map(|(k, _)| *k)
            .collect();
        for segment in pending {
            let t = self.transcript(segment, String::new(), true);
            self.segments.remove(&segment);
            let _ = self.args_meeting.send_message(MeetingMsg::Transcript(t));
        }
        let mut events = stream.events;
        let me = myself.clone();
        let generation = self.stream_generation;
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                if me
                    .send_message(TranscriberMsg::Stream { generation, event })
                    .is_err()
                {
                    return;
                }
            }
        });
    }

    fn streaming(&self) -> bool {
        self.stream_tap
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .audio
            .is_some()
    }

    /// Milliseconds since the meeting started, now.
    fn now_meeting_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(self.meeting_started)
            .unwrap_or_default()
            .as_millis() as u64
    }

    /// A streaming engine's result: interim words update the utterance in progress (one
    /// segment id from its first words to its final text), a final ends it.
    fn on_stream_event(&mut self, event: StreamEvent) {
        match event {
            StreamEvent::Result { text, is_final } => {
                let text = text.trim().to_owned();
                // Blank words change nothing; only a final may be empty (it closes).
                if text.is_empty() && (!is_final || self.stream_segment.is_none()) {
                    return;
                }
                let now = self.now_meeting_ms();
                // A segment whose final never came is over.
                if let Some(seg) = self.stream_segment.and_then(|s| self.segments.get(&s))
                    && now.saturating_sub(seg.last_result_ms) > STREAM_SEGMENT_IDLE_MS
                {
                    self.finish_stream_segment();
                    if text.is_empty() {
                        return;
                    }
                }
                // Speech our segmenter heard since the last segment ended times this one.
                let heard = self
                    .speech
                    .filter(|(start, _)| *start >= self.stream_last_end && *start <= now);
                let segment = match self.stream_segment {
                    Some(s) => s,
                    None => {
                        let start = heard.map_or(now, |(start, _)| start);
                        let s = self.next_stream_segment;
                        self.next_stream_segment = self
                            .next_stream_segment
                            .wrapping_add(1)
                            .max(STREAM_SEGMENTS);
                        self.segments.insert(
                            s,
                            Segment {
                                id: format!("SG_{}", random_string(12)),
                                interim_in_flight: false,
                                final_sent: false,
                                start_ms: start,
                                end_ms: now,
                                last_result_ms: now,
                            },
                        );
                        self.stream_segment = Some(s);
                        s
                    }
                };
                if let Some(seg) = self.segments.get_mut(&segment) {
                    seg.last_result_ms = now;
                    // The end of the speech heard, if it is this segment's; else now.
                    seg.end_ms = heard
                        .map(|(_, end)| end)
                        .filter(|end| *end >= seg.start_ms)
                        .unwrap_or(now);
                    if is_final {
                        self.stream_last_end = seg.end_ms.max(seg.start_ms + 1);
                    }
                }
                let kind = if is_final { "final" } else { "interim" };
                metrics::counter!("hearth_transcription_results_total", "kind" => kind)
                    .increment(1);
                let counter = if is_final {
                    &self.t.stats.finals
                } else {
                    &self.t.stats.interims
                };
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let t = self.transcript(segment, text, is_final);
                if is_final {
                    self.segments.remove(&segment);
                    self.stream_segment = None;
                }
                let _ = self.args_meeting.send_message(MeetingMsg::Transcript(t));
            }
            StreamEvent::Trouble(why) => {
                self.t
                    .stats
                    .engine_errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(track = %self.track, error = %why, "streaming engine trouble");
                if let Some(segment) = self.stream_segment.take() {
                    // What was being said is lost: an empty final clears the interim words.
                    self.t
                        .stats
                        .dropped
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    metrics::counter!("hearth_transcription_dropped_total", "reason" => "engine_error")
                        .increment(1);
                    if let Some(seg) = self.segments.get(&segment) {
                        let _ = self
                            .args_meeting
                            .send_message(MeetingMsg::TranscriptionDropped {
                                participant: self.participant.clone(),
                                track: self.track.clone(),
                                segment: seg.id.clone(),
                                reason: "engine_error",
                            });
                    }
                    let t = self.transcript(segment, String::new(), true);
                    self.segments.remove(&segment);
                    let _ = self.args_meeting.send_message(MeetingMsg::Transcript(t));
                }
            }
            StreamEvent::Recovered => {
                tracing::info!(track = %self.track, "streaming engine reachable again");
            }
        }
    }

    /// Ends the streaming utterance in progress, if any, with what was said so far lost
    /// (the stream is being replaced or closed): an empty final clears interim words.
    fn finish_stream_segment(&mut self) {
        if let Some(segment) = self.stream_segment.take()
            && self.segments.contains_key(&segment)
        {
            let t = self.transcript(segment, String::new(), true);
            self.segments.remove(&segment);
            let _ = self.args_meeting.send_message(MeetingMsg::Transcript(t));
        }
    }

    fn meeting_ms(&self, track_ms: u64) -> u64 {
        match self.offset_ms.load(std::sync::atomic::Ordering::Relaxed) {
            u64::MAX => track_ms,
            offset => offset + track_ms,
        }
    }

    fn on_utterance(&mut self, ev: UtteranceEvent, myself: &ActorRef<TranscriberMsg>) {
        if self.streaming() {
            // The streaming engine finds utterances itself; ours only time them.
            self.speech = Some((self.meeting_ms(ev.start_ms), self.meeting_ms(ev.end_ms)));
            return;
        }
        tracing::debug!(track = %self.track, segment = ev.segment, is_final = ev.is_final,
            start_ms = ev.start_ms, end_ms = ev.end_ms, samples = ev.audio.len(), "utterance");
        let start_ms = self.meeting_ms(ev.start_ms);
        let end_ms = self.meeting_ms(ev.end_ms);
        let seg = self.segments.entry(ev.segment).or_insert_with(|| Segment {
            id: format!("SG_{}", random_string(12)),
            interim_in_flight: false,
            final_sent: false,
            start_ms,
            end_ms,
            last_result_ms: end_ms,
        });
        seg.end_ms = end_ms;
        if ev.is_final {
            seg.final_sent = true;
        } else if seg.final_sent || seg.interim_in_flight || !self.t.supports_interim(self.engine) {
            return;
        } else {
            seg.interim_in_flight = true;
        }
        let wait = if ev.is_final {
            self.t.config.max_wait
        } else {
            Duration::from_millis(300)
        };
        let audio_ms = ev.audio.len() as u64 / 16;
        let job = SttJob {
            audio: ev.audio,
            interim: !ev.is_final,
            language: self.language,
            deadline: Instant::now() + wait,
        };
        let rx = self.t.submit(self.engine, job);
        let me = myself.clone();
        let segment = ev.segment;
        let interim = !ev.is_final;
        tokio::spawn(async move {
            let result = rx
                .await
                .unwrap_or_else(|_| Err(SttError::Engine("the engine went away".into())));
            let _ = me.send_message(TranscriberMsg::Result {
                segment,
                interim,
                result,
                audio_ms,
            });
        });
    }

    fn on_result(
        &mut self,
        segment: u32,
        interim: bool,
        result: Result<SttOutput, SttError>,
        audio_ms: u64,
    ) {
        let Some(seg) = self.segments.get_mut(&segment) else {
            return;
        };
        if interim {
            seg.interim_in_flight = false;
            if seg.final_sent {
                return; // stale: the final is on its way
            }
            match result {
                Ok(out) if !out.text.trim().is_empty() => {
                    let t = self.transcript(segment, out.text, false);
                    let _ = self.args_meeting.send_message(MeetingMsg::Transcript(t));
                }
                Ok(_) | Err(SttError::Overloaded) => {} // counted where it was skipped
                Err(e) => tracing::debug!(track = %self.track, error = %e, "interim failed"),
            }
            return;
        }
        let text = match result {
            Ok(out) => out.text.trim().to_owned(),
            Err(e) => {
                self.t
                    .stats
                    .dropped
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                metrics::counter!("hearth_transcription_dropped_total", "reason" => e.reason())
                    .increment(1);
                tracing::warn!(track = %self.track, error = %e, audio_ms, "utterance not transcribed");
                let seg_id = seg.id.clone();
                let _ = self
                    .args_meeting
                    .send_message(MeetingMsg::TranscriptionDropped {
                        participant: self.participant.clone(),
                        track: self.track.clone(),
                        segment: seg_id,
                        reason: e.reason(),
                    });
                String::new()
            }
        };
        let t = self.transcript(segment, text, true);
        self.segments.remove(&segment);
        let _ = self.args_meeting.send_message(MeetingMsg::Transcript(t));
    }

    fn transcript(&self, segment: u32, text: String, is_final: bool) -> Transcript {
        let seg = &self.segments[&segment];
        Transcript {
            participant: self.participant.clone(),
            identity: self.identity.clone(),
            name: self.name.clone(),
            track: self.track.clone(),
            segment: seg.id.clone(),
            text,
            is_final,
            start_ms: seg.start_ms,
            end_ms: seg.end_ms,
            language: self.language,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtp(seq: u16, ts: u32) -> Bytes {
        let mut p = vec![0x80, 111];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&ts.to_be_bytes());
        p.extend_from_slice(&0x1234_5678u32.to_be_bytes());
        p.extend_from_slice(&[0xfc, 0x01]);
        Bytes::from(p)
    }

    /// Sequence numbers and timestamps counted from the first packet: across the wrap, a
    /// late packet keeps its own place, one from before the first is not sent, and a new
    /// numbering (an encoder restart) continues the count.
    #[test]
    fn the_tap_counts_rtp_numbers_from_the_first_packet() {
        let (tx, mut rx) = mpsc::channel(64);
        let mut tap = StreamTap {
            audio: Some(tx),
            ..StreamTap::default()
        };
        for (seq, ts) in [
            (65_534u16, 4_294_966_000u32),
            (65_535, 4_294_966_960),
            (1, 1_624), // 0 is late
            (0, 664),
            (65_530, 4_294_962_000), // before the first: not sent
            (40_000, 77),            // a new numbering
            (40_001, 1_037),
        ] {
            tap.send(&rtp(seq, ts));
        }
        let mut got = Vec::new();
        while let Ok(a) = rx.try_recv() {
            got.push((a.chunk, a.timestamp));
        }
        assert_eq!(
            got,
            vec![
                (0, 0),
                (1, 960),
                (3, 2_920),
                (2, 1_960),
                (4, 3_880),
                (5, 4_840)
            ]
        );
    }
}
