//! Bounded queues in front of an actor, for the media path.
//!
//! ractor mailboxes are unbounded and their depth cannot be read, so media does not travel
//! through them. Each participant owns an [`Inbox`]: a bounded queue plus one "wake" message
//! in the actor's mailbox while the queue has items. Producers (the UDP mux, publishers
//! fanning out) call [`InboxSender::push`]; when the queue is full the item is dropped and
//! counted against *this* inbox: a slow consumer loses its own packets and never slows the
//! producer or anyone else. The wake message is sent only on the empty → non-empty edge, so
//! a burst costs one mailbox message, and the actor drains the whole queue at once.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use ractor::{ActorRef, Message};

/// Ring capacity a queue starts with, and shrinks back to after a burst.
const INITIAL_CAPACITY: usize = 16;
/// An empty ring larger than this is shrunk after a drain.
const SHRINK_ABOVE: usize = 64;

struct Shared<T> {
    /// The queue. Producers hold the lock for one push, the consumer for one bounded drain:
    /// both are short, and on the media path they mostly run on the same worker thread.
    queue: Mutex<VecDeque<T>>,
    /// Items queued now, readable without the lock (operators' view, `has_pending`).
    len: AtomicUsize,
    scheduled: AtomicBool,
    /// Set when the consumer is dropped: later pushes report `Closed`.
    closed: AtomicBool,
    dropped: AtomicU64,
    capacity: usize,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, VecDeque<T>> {
        // A panic while holding the lock cannot leave the queue half-updated (push_back and
        // drain are single std calls), so a poisoned lock is still a valid queue.
        self.queue
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

/// The producer side; cheap to clone.
pub struct InboxSender<T, M: Message> {
    shared: Arc<Shared<T>>,
    actor: ActorRef<M>,
    wake: fn() -> M,
}

impl<T, M: Message> Clone for InboxSender<T, M> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            actor: self.actor.clone(),
            wake: self.wake,
        }
    }
}

/// Result of a push.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// The queue was full; the item was dropped and counted.
    Dropped,
    /// The consumer is gone.
    Closed,
}

impl<T, M: Message> InboxSender<T, M> {
    /// Queues `item`, waking the consumer if it was idle. Never blocks (beyond the queue's
    /// lock, which is only ever held for one push or one bounded drain).
    pub fn push(&self, item: T) -> Pushed {
        if self.shared.closed.load(Ordering::Acquire) {
            return Pushed::Closed;
        }
        {
            let mut queue = self.shared.lock();
            // Checked again under the lock: the consumer marks itself closed while holding
            // it, so no item can slip in after its queue was cleared.
            if self.shared.closed.load(Ordering::Acquire) {
                return Pushed::Closed;
            }
            if queue.len() >= self.shared.capacity {
                drop(queue);
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                return Pushed::Dropped;
            }
            queue.push_back(item);
            self.shared.len.store(queue.len(), Ordering::Release);
        }
        if !self.shared.scheduled.swap(true, Ordering::AcqRel)
            && self.actor.send_message((self.wake)()).is_err()
        {
            return Pushed::Closed;
        }
        Pushed::Queued
    }

    /// Wakes the consumer without queueing anything (it drains an empty queue and runs its
    /// after-message work), unless a wake is already on its way. False if the consumer is
    /// gone.
    pub fn wake(&self) -> bool {
        if self.shared.closed.load(Ordering::Acquire) {
            return false;
        }
        self.shared.scheduled.swap(true, Ordering::AcqRel)
            || self.actor.send_message((self.wake)()).is_ok()
    }

    /// Items dropped because this inbox was full, since it was created.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Items waiting now (for operators: read from outside the consumer).
    pub fn depth(&self) -> usize {
        self.shared.len.load(Ordering::Acquire)
    }
}

/// The consumer side, owned by the actor's state.
pub struct Inbox<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Inbox<T> {
    /// Creates a queue of `capacity` items in front of `actor`; `wake` builds the mailbox
    /// message that tells the actor to call [`Inbox::drain`].
    pub fn new<M: Message>(
        capacity: usize,
        actor: ActorRef<M>,
        wake: fn() -> M,
    ) -> (Inbox<T>, InboxSender<T, M>) {
        let capacity = capacity.max(1);
        let shared = Arc::new(Shared {
            // Grows on demand up to `capacity`; a quiet participant's queue stays small.
            queue: Mutex::new(VecDeque::with_capacity(capacity.min(INITIAL_CAPACITY))),
            len: AtomicUsize::new(0),
            scheduled: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            capacity,
        });
        (
            Inbox {
                shared: Arc::clone(&shared),
            },
            InboxSender {
                shared,
                actor,
                wake,
            },
        )
    }

    /// Takes up to `max` queued items into `out`, oldest first. Call on every wake message;
    /// if it returns `max` items, more may be waiting (see [`Inbox::has_pending`]).
    pub fn drain(&mut self, out: &mut Vec<T>, max: usize) -> usize {
        // Clear the flag first: an item pushed after this point sends a fresh wake.
        self.shared.scheduled.store(false, Ordering::Release);
        let mut queue = self.shared.lock();
        let n = queue.len().min(max);
        out.extend(queue.drain(..n));
        self.shared.len.store(queue.len(), Ordering::Release);
        // A burst grew the ring; once it is empty, give the memory back (a keyframe's
        // burst re-grows it, at most every few seconds).
        if queue.is_empty() && queue.capacity() > SHRINK_ABOVE {
            queue.shrink_to(INITIAL_CAPACITY);
        }
        n
    }

    /// True if items remain after a bounded drain; the caller should wake itself again.
    pub fn has_pending(&self) -> bool {
        self.depth() > 0
    }

    /// Items waiting now.
    pub fn depth(&self) -> usize {
        self.shared.len.load(Ordering::Acquire)
    }

    pub fn capacity(&self) -> usize {
        self.shared.capacity
    }

    /// Items dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

impl<T> Drop for Inbox<T> {
    fn drop(&mut self) {
        // Queued items go with the consumer, not with the last producer.
        let mut queue = self.shared.lock();
        self.shared.closed.store(true, Ordering::Release);
        queue.clear();
        queue.shrink_to_fit();
        self.shared.len.store(0, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ractor::{Actor, ActorProcessingErr};
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    /// Counts the wake messages it gets.
    struct Counter;

    #[derive(Debug)]
    struct Wake;

    impl Actor for Counter {
        type Msg = Wake;
        type State = Arc<AtomicUsize>;
        type Arguments = Arc<AtomicUsize>;

        async fn pre_start(
            &self,
            _myself: ActorRef<Wake>,
            wakes: Arc<AtomicUsize>,
        ) -> Result<Self::State, ActorProcessingErr> {
            Ok(wakes)
        }

        async fn handle(
            &self,
            _myself: ActorRef<Wake>,
            _msg: Wake,
            wakes: &mut Self::State,
        ) -> Result<(), ActorProcessingErr> {
            wakes.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    /// Polls `cond` until it holds, failing after a generous deadline (no fixed sleeps).
    async fn until(cond: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "condition not met in time"
            );
            tokio::task::yield_now().await;
        }
    }

    async fn counter() -> (ActorRef<Wake>, Arc<AtomicUsize>) {
        let wakes = Arc::new(AtomicUsize::new(0));
        let (actor, _) = Actor::spawn(None, Counter, Arc::clone(&wakes))
            .await
            .expect("spawn counter");
        (actor, wakes)
    }

    #[tokio::test]
    async fn a_full_inbox_drops_and_counts_the_excess_and_wakes_once_per_burst() {
        let (actor, wakes) = counter().await;
        let (mut inbox, tx) = Inbox::<u32>::new(4, actor.clone(), || Wake);
        let results: Vec<Pushed> = (0..6).map(|i| tx.push(i)).collect();
        assert_eq!(&results[..4], &[Pushed::Queued; 4]);
        assert_eq!(&results[4..], &[Pushed::Dropped; 2]);
        assert_eq!(tx.dropped(), 2);
        assert_eq!(inbox.dropped(), 2);
        assert_eq!(inbox.depth(), 4);
        assert_eq!(tx.depth(), 4);
        until(|| wakes.load(Ordering::SeqCst) == 1).await;

        // A bounded drain leaves the rest for the next wake; the oldest items come first.
        let mut out = Vec::new();
        assert_eq!(inbox.drain(&mut out, 3), 3);
        assert_eq!(out, vec![0, 1, 2]);
        assert!(inbox.has_pending());
        // Room again: nothing more is dropped, and the first push after a drain wakes anew.
        assert_eq!(tx.push(10), Pushed::Queued);
        assert_eq!(tx.push(11), Pushed::Queued);
        assert_eq!(tx.dropped(), 2);
        until(|| wakes.load(Ordering::SeqCst) == 2).await;
        out.clear();
        assert_eq!(inbox.drain(&mut out, 16), 3);
        assert_eq!(out, vec![3, 10, 11]);
        assert!(!inbox.has_pending());
        assert_eq!(inbox.depth(), 0);
        actor.stop(None);
    }

    #[tokio::test]
    async fn a_burst_grows_the_ring_and_an_empty_drain_gives_it_back() {
        let (actor, _wakes) = counter().await;
        let (mut inbox, tx) = Inbox::<u32>::new(1024, actor.clone(), || Wake);
        for i in 0..500 {
            assert_eq!(tx.push(i), Pushed::Queued);
        }
        assert!(inbox.shared.lock().capacity() >= 500);
        let mut out = Vec::new();
        assert_eq!(inbox.drain(&mut out, 1024), 500);
        assert!(inbox.shared.lock().capacity() <= SHRINK_ABOVE);
        assert_eq!(out, (0..500).collect::<Vec<_>>());
        actor.stop(None);
    }

    #[tokio::test]
    async fn pushing_to_a_stopped_consumer_reports_closed() {
        let (actor, _wakes) = counter().await;
        let (inbox, tx) = Inbox::<u32>::new(4, actor.clone(), || Wake);
        actor.stop(None);
        until(|| actor.get_status() == ractor::ActorStatus::Stopped).await;
        assert_eq!(tx.push(1), Pushed::Closed);
        drop(inbox);
        assert_eq!(tx.push(2), Pushed::Closed);
    }
}
