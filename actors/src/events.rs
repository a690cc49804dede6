//! The node's event log: what happens in meetings, numbered, retained and broadcast, for
//! the embedding API's event stream (`EventService.Subscribe`, `hearthctl events`).
//!
//! Meeting actors append; readers subscribe. Every event gets the next node-wide sequence
//! number. The last [`RETAINED`] events are kept so a reader that lost its stream resumes
//! exactly after the last event it saw. Appending never blocks a meeting actor: the
//! broadcast channel drops the oldest events for a reader that lags (the reader is told
//! and can resume from the log).
//!
//! Active-speaker changes are *live only*: broadcast to readers connected now, but neither
//! numbered nor retained (they carry the sequence number of the last retained event), so a
//! busy node's speaker churn never pushes joins, leaves and tracks out of the resumable
//! window, and a resuming reader gets the current state from the next change.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::broadcast;

use crate::domain::{EndReason, LeaveReason, ParticipantInfo, TrackInfo};
use crate::ids::{MeetingId, ParticipantId, TrackId};

/// Events kept for resumption.
pub const RETAINED: usize = 4096;
const LIVE_CAPACITY: usize = 1024;

/// One event.
#[derive(Clone, Debug)]
pub struct NodeEvent {
    pub sequence: u64,
    pub at: SystemTime,
    pub meeting: MeetingId,
    pub kind: EventKind,
}

#[derive(Clone, Debug)]
pub enum EventKind {
    MeetingStarted,
    MeetingEnded(EndReason),
    ParticipantJoined(ParticipantInfo),
    ParticipantLeft {
        participant: ParticipantId,
        reason: LeaveReason,
    },
    TrackPublished {
        participant: ParticipantId,
        track: TrackInfo,
    },
    TrackUnpublished {
        participant: ParticipantId,
        track: TrackId,
    },
    TrackMuted {
        participant: ParticipantId,
        track: TrackId,
        muted: bool,
    },
    ActiveSpeakers(Vec<(ParticipantId, f32)>),
    /// A final transcript segment (live captions).
    Transcript(crate::domain::Transcript),
    /// Captions were turned on or off.
    CaptionsChanged(crate::domain::CaptionsState),
    /// An utterance was not transcribed (`overloaded`, `engine_error`, `unavailable`).
    TranscriptionDropped {
        participant: ParticipantId,
        track: TrackId,
        segment: String,
        reason: &'static str,
    },
}

impl EventKind {
    /// Broadcast to current readers only; not numbered, not retained (see the module docs).
    pub fn is_live_only(&self) -> bool {
        matches!(self, EventKind::ActiveSpeakers(_))
    }
}

struct Inner {
    next: u64,
    retained: VecDeque<Arc<NodeEvent>>,
}

/// Append-only, numbered, bounded.
pub struct EventLog {
    inner: Mutex<Inner>,
    live: broadcast::Sender<Arc<NodeEvent>>,
}

impl Default for EventLog {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Inner {
                next: 1,
                retained: VecDeque::with_capacity(RETAINED),
            }),
            live: broadcast::channel(LIVE_CAPACITY).0,
        }
    }
}

/// A reader's start: the retained events it asked for, then the live receiver.
pub struct EventSubscription {
    pub replay: Vec<Arc<NodeEvent>>,
    pub live: broadcast::Receiver<Arc<NodeEvent>>,
}

/// Where a reader starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// With the next new event.
    New,
    /// With the oldest retained event.
    Oldest,
    /// After this sequence number (a reader resuming).
    After(u64),
}

/// Why a reader cannot start where it asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Events after that point are no longer kept; `oldest` is the oldest retained one.
    Gone { oldest: u64 },
    /// That sequence number has not been given out yet; `next` is the next one.
    Future { next: u64 },
}

impl EventLog {
    /// Appends an event; returns its sequence number.
    pub fn append(&self, meeting: &MeetingId, kind: EventKind) -> u64 {
        // Nothing panics while holding the lock, but never let a poisoned lock stop the log.
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if kind.is_live_only() {
            let event = Arc::new(NodeEvent {
                sequence: inner.next - 1,
                at: SystemTime::now(),
                meeting: meeting.clone(),
                kind,
            });
            let _ = self.live.send(Arc::clone(&event));
            return event.sequence;
        }
        let event = Arc::new(NodeEvent {
            sequence: inner.next,
            at: SystemTime::now(),
            meeting: meeting.clone(),
            kind,
        });
        inner.next += 1;
        if inner.retained.len() == RETAINED {
            inner.retained.pop_front();
        }
        inner.retained.push_back(Arc::clone(&event));
        // Sent under the lock so a concurrent subscribe sees each event exactly once.
        let _ = self.live.send(Arc::clone(&event));
        event.sequence
    }

    /// Subscribes: events after `resume_after` (0: only new ones; see [`Start`]) and then
    /// live ones.
    pub fn subscribe(&self, start: Start) -> Result<EventSubscription, Refused> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let live = self.live.subscribe();
        let oldest = inner.retained.front().map_or(inner.next, |e| e.sequence);
        let resume_after = match start {
            Start::New => {
                return Ok(EventSubscription {
                    replay: Vec::new(),
                    live,
                });
            }
            Start::Oldest => oldest.saturating_sub(1),
            Start::After(n) => n,
        };
        if resume_after >= inner.next {
            return Err(Refused::Future { next: inner.next });
        }
        if resume_after.saturating_add(1) < oldest {
            return Err(Refused::Gone { oldest });
        }
        let replay = inner
            .retained
            .iter()
            .filter(|e| e.sequence > resume_after)
            .cloned()
            .collect();
        Ok(EventSubscription { replay, live })
    }

    /// The sequence number the next event will get.
    pub fn next_sequence(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m() -> MeetingId {
        MeetingId::parse("m").expect("valid")
    }

    #[test]
    fn resume_replays_exactly_the_missed_events_then_goes_live() {
        let log = EventLog::default();
        for _ in 0..5 {
            log.append(&m(), EventKind::MeetingStarted);
        }
        let mut sub = log.subscribe(Start::After(3)).expect("retained");
        let seqs: Vec<u64> = sub.replay.iter().map(|e| e.sequence).collect();
        assert_eq!(seqs, vec![4, 5]);
        log.append(&m(), EventKind::MeetingStarted);
        assert_eq!(sub.live.try_recv().expect("live").sequence, 6);
    }

    #[test]
    fn fresh_subscribers_see_only_new_events() {
        let log = EventLog::default();
        log.append(&m(), EventKind::MeetingStarted);
        let mut sub = log.subscribe(Start::New).expect("ok");
        assert!(sub.replay.is_empty());
        assert!(sub.live.try_recv().is_err());
    }

    #[test]
    fn events_beyond_the_window_are_gone() {
        let log = EventLog::default();
        for _ in 0..RETAINED + 10 {
            log.append(&m(), EventKind::MeetingStarted);
        }
        assert_eq!(
            log.subscribe(Start::After(5)).err(),
            Some(Refused::Gone { oldest: 11 })
        );
        assert_eq!(
            log.subscribe(Start::After(10)).expect("edge").replay.len(),
            RETAINED
        );
        let all = log.subscribe(Start::Oldest).expect("oldest");
        assert_eq!(all.replay.first().map(|e| e.sequence), Some(11));
        assert_eq!(all.replay.len(), RETAINED);
    }

    #[test]
    fn sequence_numbers_not_given_out_yet_are_refused_without_harm() {
        let log = EventLog::default();
        log.append(&m(), EventKind::MeetingStarted);
        for n in [2, 3, u64::MAX] {
            assert_eq!(
                log.subscribe(Start::After(n)).err(),
                Some(Refused::Future { next: 2 })
            );
        }
        assert_eq!(log.append(&m(), EventKind::MeetingStarted), 2);
        assert_eq!(log.subscribe(Start::After(1)).expect("ok").replay.len(), 1);
    }

    #[test]
    fn speaker_churn_does_not_push_lifecycle_events_out_of_the_window() {
        let log = EventLog::default();
        let joined = log.append(&m(), EventKind::MeetingStarted);
        let mut live = log.subscribe(Start::New).expect("ok").live;
        log.append(&m(), EventKind::ActiveSpeakers(Vec::new()));
        // Live readers see them (this one before the churn makes it lag)...
        assert!(matches!(
            live.try_recv().expect("live").kind,
            EventKind::ActiveSpeakers(_)
        ));
        for _ in 0..RETAINED * 4 {
            let seq = log.append(&m(), EventKind::ActiveSpeakers(Vec::new()));
            assert_eq!(
                seq, joined,
                "live-only events carry the last retained number"
            );
        }
        // ... and the resumable window still holds the lifecycle event.
        let replay = log.subscribe(Start::Oldest).expect("retained").replay;
        assert_eq!(replay.len(), 1);
        assert_eq!(replay[0].sequence, joined);
        assert_eq!(log.append(&m(), EventKind::MeetingStarted), joined + 1);
        assert_eq!(
            log.subscribe(Start::After(joined))
                .expect("ok")
                .replay
                .len(),
            1
        );
    }

    #[test]
    fn an_empty_log_replays_nothing_from_the_oldest() {
        let log = EventLog::default();
        assert!(log.subscribe(Start::Oldest).expect("ok").replay.is_empty());
    }
}
