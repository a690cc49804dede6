//! One wake-up timer per actor, driven by the earliest deadline the actor asks for.
//!
//! Sans-IO state machines (the peer connection, the engine) report their next deadline
//! through `poll_timeout`; the actor calls [`Wakeup::arm`] with it after every message.
//! A single background task per actor sleeps until the earliest armed deadline and then
//! sends one tick message. Arming a later deadline than the one pending is a no-op (the
//! early tick simply finds nothing due and re-arms), so steady media traffic costs no task
//! spawns and no channel traffic beyond the ticks themselves.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ractor::{ActorRef, Message};
use tokio::sync::Notify;

const NONE: u64 = u64::MAX;

struct Shared {
    epoch: Instant,
    deadline: AtomicU64,
    closed: AtomicBool,
    notify: Notify,
}

/// The actor's handle on its timer task. Dropping it stops the task.
pub struct Wakeup {
    shared: Arc<Shared>,
}

impl Wakeup {
    /// Spawns the timer task for `actor`; `tick` builds the message it sends when due.
    pub fn spawn<M: Message>(actor: ActorRef<M>, tick: fn() -> M) -> Self {
        let shared = Arc::new(Shared {
            epoch: Instant::now(),
            deadline: AtomicU64::new(NONE),
            closed: AtomicBool::new(false),
            notify: Notify::new(),
        });
        let task = Arc::clone(&shared);
        tokio::spawn(async move {
            loop {
                if task.closed.load(Ordering::Acquire) {
                    return;
                }
                let due = task.deadline.load(Ordering::Acquire);
                if due == NONE {
                    task.notify.notified().await;
                    continue;
                }
                let at = task.epoch + Duration::from_nanos(due);
                tokio::select! {
                    () = tokio::time::sleep_until(at.into()) => {
                        if task
                            .deadline
                            .compare_exchange(due, NONE, Ordering::AcqRel, Ordering::Acquire)
                            .is_ok()
                            && actor.send_message(tick()).is_err()
                        {
                            return;
                        }
                    }
                    () = task.notify.notified() => {}
                }
            }
        });
        Self { shared }
    }

    /// Asks for a tick at `at` (or earlier, if an earlier one is already armed).
    pub fn arm(&self, at: Instant) {
        let want = u64::try_from(at.saturating_duration_since(self.shared.epoch).as_nanos())
            .unwrap_or(NONE - 1)
            .min(NONE - 1);
        let mut current = self.shared.deadline.load(Ordering::Acquire);
        loop {
            if current != NONE && current <= want {
                return;
            }
            match self.shared.deadline.compare_exchange(
                current,
                want,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    self.shared.notify.notify_one();
                    return;
                }
                Err(actual) => current = actual,
            }
        }
    }
}

impl Drop for Wakeup {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.notify.notify_one();
    }
}
