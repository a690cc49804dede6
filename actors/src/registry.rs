//! The actor registry: every supervised actor of the node, for operators (`hearthctl tree`,
//! the admin API's `ActorTree` and `KillActor`).
//!
//! An actor registers in `pre_start` and keeps the returned [`Registration`] in its state;
//! dropping the state (clean stop or panic alike) removes the entry. The registry is a
//! `DashMap`, read without any actor hop, so looking at the tree never waits on a busy actor.
//! Counters are relaxed atomics bumped by the owning actor only.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use dashmap::DashMap;
use ractor::ActorId;

/// What kind of actor an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActorKind {
    Node,
    MeetingSupervisor,
    Meeting,
    Participant,
    VirtualParticipant,
    TrackTap,
    TurnSupervisor,
    Allocation,
    Billing,
    Webhooks,
    TranscriptionSupervisor,
    SttWorker,
    Transcriber,
    Cluster,
}

impl ActorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActorKind::Node => "node",
            ActorKind::MeetingSupervisor => "meeting_supervisor",
            ActorKind::Meeting => "meeting",
            ActorKind::Participant => "participant",
            ActorKind::VirtualParticipant => "virtual_participant",
            ActorKind::TrackTap => "track_tap",
            ActorKind::TurnSupervisor => "turn_supervisor",
            ActorKind::Allocation => "allocation",
            ActorKind::Billing => "billing",
            ActorKind::Webhooks => "webhooks",
            ActorKind::TranscriptionSupervisor => "transcription_supervisor",
            ActorKind::SttWorker => "stt_worker",
            ActorKind::Transcriber => "transcriber",
            ActorKind::Cluster => "cluster",
        }
    }

    /// What the supervisor does when an actor of this kind fails.
    pub fn policy(self) -> &'static str {
        match self {
            ActorKind::Node => "root: a failure stops the node",
            ActorKind::MeetingSupervisor => "restarted by the node",
            ActorKind::Meeting => "restarted from its record; participants reconnect",
            ActorKind::Participant => "stopped and removed; the client is told to reconnect",
            ActorKind::VirtualParticipant => "stopped and removed; its gRPC stream ends",
            ActorKind::TrackTap => "stopped; its gRPC stream ends",
            ActorKind::TurnSupervisor => "restarted by the node; allocations keep relaying",
            ActorKind::Allocation => "stopped; its port is freed, the client re-allocates",
            ActorKind::Billing => "restarted by the node; resumes the open intervals it kept",
            ActorKind::Webhooks => "restarted by the node; resumes from the outbox",
            ActorKind::TranscriptionSupervisor => {
                "restarted by the node; its workers restart, queued utterances are dropped"
            }
            ActorKind::SttWorker => {
                "its process is killed; restarted with backoff, the utterance it held is dropped"
            }
            ActorKind::Transcriber => {
                "restarted by its meeting for the same track; the meeting never notices"
            }
            ActorKind::Cluster => {
                "restarted by the node; reconnects to Redis, leases are renewed on its first tick"
            }
        }
    }
}

/// Makes an actor fail as a panic would (a drill). False if it is already gone.
pub type KillSwitch = Box<dyn Fn() -> bool + Send + Sync>;
/// Reads a queue depth of the actor.
pub type DepthProbe = Box<dyn Fn() -> usize + Send + Sync>;

/// One live actor.
pub struct ActorEntry {
    pub id: ActorId,
    pub kind: ActorKind,
    pub name: String,
    pub parent: Option<ActorId>,
    pub started_at: SystemTime,
    restarts: AtomicU32,
    messages: AtomicU64,
    last_failure: Mutex<Option<String>>,
    kill: Option<KillSwitch>,
    mailbox: Option<DepthProbe>,
    media_queue: Option<DepthProbe>,
    /// Registration order, so the tree lists parents before children.
    order: u64,
}

/// A copy of an entry, for display.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActorView {
    pub id: ActorId,
    pub kind: ActorKind,
    pub name: String,
    pub parent: Option<ActorId>,
    pub started_at: SystemTime,
    pub restarts: u32,
    pub messages: u64,
    pub mailbox_depth: usize,
    pub media_queue_depth: usize,
    pub last_failure: Option<String>,
    pub killable: bool,
}

/// Why a kill did not happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KillError {
    NotFound,
    NotKillable,
}

/// Every registered actor of the node.
#[derive(Default)]
pub struct ActorRegistry {
    entries: DashMap<ActorId, Arc<ActorEntry>>,
    next_order: AtomicU64,
}

/// What an actor tells the registry about itself.
pub struct ActorSpec {
    pub id: ActorId,
    pub kind: ActorKind,
    pub name: String,
    pub parent: Option<ActorId>,
    pub restarts: u32,
    pub last_failure: Option<String>,
    pub kill: Option<KillSwitch>,
    pub mailbox: Option<DepthProbe>,
    pub media_queue: Option<DepthProbe>,
}

impl ActorSpec {
    pub fn new(id: ActorId, kind: ActorKind, name: impl Into<String>) -> Self {
        Self {
            id,
            kind,
            name: name.into(),
            parent: None,
            restarts: 0,
            last_failure: None,
            kill: None,
            mailbox: None,
            media_queue: None,
        }
    }

    pub fn parent(mut self, parent: ActorId) -> Self {
        self.parent = Some(parent);
        self
    }

    pub fn kill(mut self, kill: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        self.kill = Some(Box::new(kill));
        self
    }

    pub fn media_queue(mut self, probe: impl Fn() -> usize + Send + Sync + 'static) -> Self {
        self.media_queue = Some(Box::new(probe));
        self
    }

    pub fn mailbox(mut self, probe: impl Fn() -> usize + Send + Sync + 'static) -> Self {
        self.mailbox = Some(Box::new(probe));
        self
    }

    pub fn restarted(mut self, restarts: u32, last_failure: Option<String>) -> Self {
        self.restarts = restarts;
        self.last_failure = last_failure;
        self
    }
}

impl ActorRegistry {
    /// Adds an actor; the entry lives as long as the returned registration.
    pub fn register(self: &Arc<Self>, spec: ActorSpec) -> Registration {
        let entry = Arc::new(ActorEntry {
            id: spec.id,
            kind: spec.kind,
            name: spec.name,
            parent: spec.parent,
            started_at: SystemTime::now(),
            restarts: AtomicU32::new(spec.restarts),
            messages: AtomicU64::new(0),
            last_failure: Mutex::new(spec.last_failure),
            kill: spec.kill,
            mailbox: spec.mailbox,
            media_queue: spec.media_queue,
            order: self.next_order.fetch_add(1, Ordering::Relaxed),
        });
        self.entries.insert(spec.id, Arc::clone(&entry));
        Registration {
            registry: Arc::clone(self),
            entry,
        }
    }

    /// Every live actor, parents before children (registration order).
    pub fn snapshot(&self) -> Vec<ActorView> {
        let mut entries: Vec<Arc<ActorEntry>> =
            self.entries.iter().map(|e| Arc::clone(e.value())).collect();
        entries.sort_by_key(|e| e.order);
        entries.iter().map(|e| e.view()).collect()
    }

    /// One actor.
    pub fn get(&self, id: ActorId) -> Option<ActorView> {
        self.entries.get(&id).map(|e| e.view())
    }

    /// Finds an actor by its printed id (`0.12`).
    pub fn find(&self, printed: &str) -> Option<ActorId> {
        self.entries
            .iter()
            .find(|e| e.key().to_string() == printed)
            .map(|e| *e.key())
    }

    /// Makes the actor fail (a drill).
    pub fn kill(&self, id: ActorId) -> Result<ActorView, KillError> {
        let entry = self
            .entries
            .get(&id)
            .map(|e| Arc::clone(e.value()))
            .ok_or(KillError::NotFound)?;
        let kill = entry.kill.as_ref().ok_or(KillError::NotKillable)?;
        let view = entry.view();
        if kill() {
            Ok(view)
        } else {
            Err(KillError::NotFound)
        }
    }

    /// Live actors of one kind.
    pub fn count(&self, kind: ActorKind) -> usize {
        self.entries.iter().filter(|e| e.kind == kind).count()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl ActorEntry {
    fn view(&self) -> ActorView {
        ActorView {
            id: self.id,
            kind: self.kind,
            name: self.name.clone(),
            parent: self.parent,
            started_at: self.started_at,
            restarts: self.restarts.load(Ordering::Relaxed),
            messages: self.messages.load(Ordering::Relaxed),
            mailbox_depth: self.mailbox.as_ref().map_or(0, |p| p()),
            media_queue_depth: self.media_queue.as_ref().map_or(0, |p| p()),
            last_failure: self.last_failure.lock().map(|f| f.clone()).unwrap_or(None),
            killable: self.kill.is_some(),
        }
    }
}

/// An actor's entry; dropping it unregisters the actor.
pub struct Registration {
    registry: Arc<ActorRegistry>,
    entry: Arc<ActorEntry>,
}

impl Registration {
    /// Counts one handled message.
    #[inline]
    pub fn handled(&self) {
        self.entry.messages.fetch_add(1, Ordering::Relaxed);
    }

    /// A supervisor handled a child's failure (or this actor was restarted).
    pub fn failure(&self, what: String) {
        self.entry.restarts.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = self.entry.last_failure.lock() {
            *last = Some(what);
        }
    }

    pub fn restarts(&self) -> u32 {
        self.entry.restarts.load(Ordering::Relaxed)
    }

    pub fn id(&self) -> ActorId {
        self.entry.id
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // Only remove our own entry (an id is never reused while registered, but be exact).
        self.registry
            .entries
            .remove_if(&self.entry.id, |_, e| Arc::ptr_eq(e, &self.entry));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_live_as_long_as_their_registration() {
        let registry = Arc::new(ActorRegistry::default());
        let id = ActorId::Local(7);
        let reg = registry.register(ActorSpec::new(id, ActorKind::Meeting, "m1").kill(|| true));
        reg.handled();
        reg.handled();
        reg.failure("participant PA_1 failed: boom".into());
        let view = registry.get(id).expect("registered");
        assert_eq!(view.messages, 2);
        assert_eq!(view.restarts, 1);
        assert_eq!(
            view.last_failure.as_deref(),
            Some("participant PA_1 failed: boom")
        );
        assert_eq!(registry.find(&id.to_string()), Some(id));
        assert!(registry.kill(id).is_ok());
        drop(reg);
        assert!(registry.get(id).is_none());
        assert_eq!(registry.kill(id), Err(KillError::NotFound));
    }

    #[test]
    fn actors_without_a_kill_switch_refuse_drills() {
        let registry = Arc::new(ActorRegistry::default());
        let id = ActorId::Local(1);
        let _reg = registry.register(ActorSpec::new(id, ActorKind::Node, "node"));
        assert_eq!(registry.kill(id), Err(KillError::NotKillable));
    }

    #[test]
    fn snapshot_lists_parents_first() {
        let registry = Arc::new(ActorRegistry::default());
        let a = registry.register(ActorSpec::new(ActorId::Local(9), ActorKind::Node, "n"));
        let b = registry.register(
            ActorSpec::new(ActorId::Local(3), ActorKind::Meeting, "m").parent(ActorId::Local(9)),
        );
        let ids: Vec<ActorId> = registry.snapshot().iter().map(|v| v.id).collect();
        assert_eq!(ids, vec![a.id(), b.id()]);
    }
}
