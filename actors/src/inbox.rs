//! Bounded queues in front of an actor, for the media path.
//!
//! ractor mailboxes are unbounded and their depth cannot be read, so media does not travel
//! through them. Each participant owns an [`Inbox`]: a bounded queue plus one "wake" message
//! in the actor's mailbox while the queue has items. Producers (the UDP mux, publishers
//! fanning out) call [`InboxSender::push`]; when the queue is full the item is dropped and
//! counted against *this* inbox: a slow consumer loses its own packets and never slows the
//! producer or anyone else. The wake message is sent only on the empty → non-empty edge, so
//! a burst costs one mailbox message, and the actor drains the whole queue at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use ractor::{ActorRef, Message};
use tokio::sync::mpsc;

struct Shared {
    scheduled: AtomicBool,
    dropped: AtomicU64,
    capacity: usize,
}

/// The producer side; cheap to clone.
pub struct InboxSender<T, M: Message> {
    tx: mpsc::Sender<T>,
    shared: Arc<Shared>,
    actor: ActorRef<M>,
    wake: fn() -> M,
}

impl<T, M: Message> Clone for InboxSender<T, M> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
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
    /// Queues `item`, waking the consumer if it was idle. Never blocks.
    pub fn push(&self, item: T) -> Pushed {
        match self.tx.try_send(item) {
            Ok(()) => {
                if !self.shared.scheduled.swap(true, Ordering::AcqRel)
                    && self.actor.send_message((self.wake)()).is_err()
                {
                    return Pushed::Closed;
                }
                Pushed::Queued
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                Pushed::Dropped
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Pushed::Closed,
        }
    }

    /// Items dropped because this inbox was full, since it was created.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Items waiting now (for operators: read from outside the consumer).
    pub fn depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

/// The consumer side, owned by the actor's state.
pub struct Inbox<T> {
    rx: mpsc::Receiver<T>,
    shared: Arc<Shared>,
}

impl<T> Inbox<T> {
    /// Creates a queue of `capacity` items in front of `actor`; `wake` builds the mailbox
    /// message that tells the actor to call [`Inbox::drain`].
    pub fn new<M: Message>(
        capacity: usize,
        actor: ActorRef<M>,
        wake: fn() -> M,
    ) -> (Inbox<T>, InboxSender<T, M>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let shared = Arc::new(Shared {
            scheduled: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            capacity: capacity.max(1),
        });
        (
            Inbox {
                rx,
                shared: Arc::clone(&shared),
            },
            InboxSender {
                tx,
                shared,
                actor,
                wake,
            },
        )
    }

    /// Takes up to `max` queued items into `out`. Call on every wake message; if it returns
    /// `max` items, more may be waiting (the inbox re-arms its wake so none are stranded).
    pub fn drain(&mut self, out: &mut Vec<T>, max: usize) -> usize {
        // Clear the flag first: an item pushed after this point sends a fresh wake.
        self.shared.scheduled.store(false, Ordering::Release);
        let mut n = 0;
        while n < max {
            match self.rx.try_recv() {
                Ok(item) => {
                    out.push(item);
                    n += 1;
                }
                Err(_) => break,
            }
        }
        n
    }

    /// True if items remain after a bounded drain; the caller should wake itself again.
    pub fn has_pending(&self) -> bool {
        !self.rx.is_empty()
    }

    /// Items waiting now.
    pub fn depth(&self) -> usize {
        self.rx.len()
    }

    pub fn capacity(&self) -> usize {
        self.shared.capacity
    }

    /// Items dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
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
