//! The outbound half of a participant's signaling: messages for its client.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::mpsc;

use crate::domain::ServerSignal;

/// Sends [`ServerSignal`]s to one client's socket task without ever blocking an actor.
///
/// The queue is bounded; if a client stops reading its socket until the queue fills, the
/// session is marked overflowed, further messages are dropped, and the gateway closes the
/// socket (the client reconnects and gets a consistent view again).
///
/// Messages travel boxed: the channel allocates its slots in blocks of 32 up front, and 32
/// unboxed signals were about 5 KiB for every participant, for a queue that is mostly empty.
#[derive(Clone, Debug)]
pub struct SignalSender {
    tx: mpsc::Sender<Box<ServerSignal>>,
    overflowed: Arc<AtomicBool>,
}

/// The gateway's end.
pub struct SignalReceiver {
    rx: mpsc::Receiver<Box<ServerSignal>>,
    overflowed: Arc<AtomicBool>,
}

impl SignalReceiver {
    /// The next message; None once every sender is gone.
    pub async fn recv(&mut self) -> Option<ServerSignal> {
        self.rx.recv().await.map(|signal| *signal)
    }

    /// True once a message had to be dropped.
    pub fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Acquire)
    }
}

/// A signaling queue of `capacity` messages.
pub fn signal_channel(capacity: usize) -> (SignalSender, SignalReceiver) {
    let (tx, rx) = mpsc::channel(capacity);
    let overflowed = Arc::new(AtomicBool::new(false));
    (
        SignalSender {
            tx,
            overflowed: Arc::clone(&overflowed),
        },
        SignalReceiver { rx, overflowed },
    )
}

impl SignalSender {
    /// Queues a message; false if the client is gone or too slow.
    pub fn send(&self, signal: ServerSignal) -> bool {
        match self.tx.try_send(Box::new(signal)) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.overflowed.store(true, Ordering::Release);
                metrics::counter!("hearth_signal_dropped_total").increment(1);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}
