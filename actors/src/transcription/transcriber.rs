//! `Transcriber`: one per transcribed audio track, a child of its meeting.
//!
//! It receives the track's RTP like a subscriber would (a track tap with its own bounded
//! queue: when the transcriber falls behind, the tap drops and counts, the publisher and the
//! other subscribers never wait), runs [`TrackAudio`] (Opus decode, 16 kHz, voice activity,
//! utterances) and sends each utterance to the engine. Results go back to the meeting as
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

use super::{SttError, SttJob, SttOutput, Transcription};
use crate::billing::UsageHandle;
use crate::domain::{EngineKind, Language, Transcript};
use crate::ids::{ParticipantId, TrackId, random_string};
use crate::meeting::MeetingMsg;
use crate::participant::ParticipantMsg;
use crate::registry::{ActorKind, ActorRegistry, ActorSpec, Registration};
use crate::timer::Wakeup;

pub enum TranscriberMsg {
    /// RTP packets from the tap.
    Rtp(Vec<Bytes>),
    /// The tap ended (the track went away).
    TapEnded,
    /// A timer (utterance end by wall clock).
    Tick,
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
    audio: TrackAudio,
    /// Wall-clock origin for the pipeline's `now_ms`.
    epoch: Instant,
    /// Milliseconds from the meeting's start to this track's first packet.
    offset_ms: Option<u64>,
    meeting_started: SystemTime,
    segments: HashMap<u32, Segment>,
    tap_actor: ActorRef<ParticipantMsg>,
    tap_dropped: Arc<AtomicU64>,
    wakeup: Wakeup,
    reg: Registration,
    _usage: UsageHandle,
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
        // The pump: tap channel -> actor, in batches (what arrived since the last wake).
        let mut packets = args.packets;
        let me = myself.clone();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(16);
            while packets.recv_many(&mut batch, 64).await > 0 {
                if me
                    .send_message(TranscriberMsg::Rtp(std::mem::take(&mut batch)))
                    .is_err()
                {
                    return;
                }
            }
            let _ = me.send_message(TranscriberMsg::TapEnded);
        });
        let wakeup = Wakeup::spawn(myself.clone(), || TranscriberMsg::Tick);
        args.transcription.warm(args.engine);
        Ok(TranscriberState {
            args_meeting: args.meeting,
            audio: TrackAudio::new(args.transcription.config.segmenter.clone()),
            t: args.transcription,
            track: args.track,
            participant: args.participant,
            identity: args.identity,
            name: args.name,
            language: args.language,
            engine: args.engine,
            epoch: Instant::now(),
            offset_ms: None,
            meeting_started: args.meeting_started,
            segments: HashMap::new(),
            tap_actor: args.tap_actor,
            tap_dropped: args.tap_dropped,
            wakeup,
            reg,
            _usage: args.usage,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.tap_actor.stop(Some("transcriber_stopped".into()));
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
        let now_ms = state.epoch.elapsed().as_millis() as u64;
        match msg {
            TranscriberMsg::Rtp(batch) => {
                if state.offset_ms.is_none() {
                    let since = SystemTime::now()
                        .duration_since(state.meeting_started)
                        .unwrap_or_default();
                    state.offset_ms = Some(since.as_millis() as u64);
                }
                for packet in batch {
                    // The tap hands whole RTP packets; anything unparsable is skipped.
                    if let Ok(rtp) = hearth_engine::rtp::parse(&packet) {
                        state
                            .audio
                            .handle_rtp(now_ms, rtp.seq, rtp.timestamp, &rtp.payload);
                    }
                }
            }
            TranscriberMsg::TapEnded => {
                // Flush: whatever was being said ends now.
                state.audio.handle_timeout(u64::MAX / 2);
                state.drain_events(&myself);
                myself.stop(Some("track_ended".into()));
                return Ok(());
            }
            TranscriberMsg::Tick => state.audio.handle_timeout(now_ms),
            TranscriberMsg::Result {
                segment,
                interim,
                result,
                audio_ms,
            } => state.on_result(segment, interim, result, audio_ms),
            TranscriberMsg::Settings { language, engine } => {
                state.language = language;
                state.engine = engine;
                state.t.warm(engine);
            }
            TranscriberMsg::InjectFault => {
                panic!("fault injected into transcriber {}", state.track)
            }
        }
        state.drain_events(&myself);
        if let Some(at) = state.audio.poll_timeout() {
            state
                .wakeup
                .arm(state.epoch + Duration::from_millis(at.max(now_ms)));
        }
        Ok(())
    }
}

impl TranscriberState {
    fn drain_events(&mut self, myself: &ActorRef<TranscriberMsg>) {
        while let Some(ev) = self.audio.poll_event() {
            self.on_utterance(ev, myself);
        }
    }

    fn meeting_ms(&self, track_ms: u64) -> u64 {
        self.offset_ms.unwrap_or(0) + track_ms
    }

    fn on_utterance(&mut self, ev: UtteranceEvent, myself: &ActorRef<TranscriberMsg>) {
        let start_ms = self.meeting_ms(ev.start_ms);
        let end_ms = self.meeting_ms(ev.end_ms);
        let seg = self.segments.entry(ev.segment).or_insert_with(|| Segment {
            id: format!("SG_{}", random_string(12)),
            interim_in_flight: false,
            final_sent: false,
            start_ms,
            end_ms,
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
                Ok(_) => {}
                Err(SttError::Overloaded) => {
                    self.t
                        .stats
                        .interims_skipped
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
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
