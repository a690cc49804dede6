//! The node's event log: what happens in meetings, numbered, retained and broadcast, for
//! the embedding API's event stream (`EventService.Subscribe`, `hearthctl events`).
//!
//! Meeting actors append; readers subscribe. Every event gets the next node-wide sequence
//! number. The last [`RETAINED`] events are kept so a reader that lost its stream resumes
//! exactly after the last event it saw. Appending never blocks a meeting actor: the
//! broadcast channel drops the oldest events for a reader that lags (the reader is told
//! and can resume from the log).

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

/// The reader asked for events that are no longer kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gone {
    /// The oldest sequence number still retained.
    pub oldest: u64,
}

impl EventLog {
    /// Appends an event; returns its sequence number.
    pub fn append(&self, meeting: &MeetingId, kind: EventKind) -> u64 {
        let Ok(mut inner) = self.inner.lock() else {
            return 0;
        };
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

    /// Subscribes: events after `resume_after` (0: only new ones) and then live ones.
    pub fn subscribe(&self, resume_after: u64) -> Result<EventSubscription, Gone> {
        let inner = self.inner.lock().map_err(|_| Gone { oldest: 0 })?;
        let live = self.live.subscribe();
        if resume_after == 0 {
            return Ok(EventSubscription {
                replay: Vec::new(),
                live,
            });
        }
        let oldest = inner.retained.front().map_or(inner.next, |e| e.sequence);
        if resume_after + 1 < oldest {
            return Err(Gone { oldest });
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
        self.inner.lock().map_or(0, |i| i.next)
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
        let mut sub = log.subscribe(3).expect("retained");
        let seqs: Vec<u64> = sub.replay.iter().map(|e| e.sequence).collect();
        assert_eq!(seqs, vec![4, 5]);
        log.append(&m(), EventKind::MeetingStarted);
        assert_eq!(sub.live.try_recv().expect("live").sequence, 6);
    }

    #[test]
    fn fresh_subscribers_see_only_new_events() {
        let log = EventLog::default();
        log.append(&m(), EventKind::MeetingStarted);
        let mut sub = log.subscribe(0).expect("ok");
        assert!(sub.replay.is_empty());
        assert!(sub.live.try_recv().is_err());
    }

    #[test]
    fn events_beyond_the_window_are_gone() {
        let log = EventLog::default();
        for _ in 0..RETAINED + 10 {
            log.append(&m(), EventKind::MeetingStarted);
        }
        assert_eq!(log.subscribe(5).err(), Some(Gone { oldest: 11 }));
        assert_eq!(log.subscribe(10).expect("edge").replay.len(), RETAINED);
    }
}
