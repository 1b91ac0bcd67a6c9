//! The in-process broker: a publication is encoded into one WebSocket frame,
//! once, and that same `Bytes` goes to every worker through a bounded
//! crossbeam channel plus a `mio::Waker`. Workers look up their own
//! subscribers; the broker never touches a connection.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::{Receiver, SendTimeoutError, Sender};

use crate::channels::protocol;
use crate::wire::frame::{encode_frame, OpCode};

/// Commands per worker queue. Bounded so a stalled worker pushes back on the
/// publisher (slower HTTP answers, then 503) instead of growing without end.
/// crossbeam touches every slot up front (56 bytes each), so this is 0.9 MB
/// per worker; a worker drains thousands of commands per wake-up.
pub const WORKER_QUEUE: usize = 16_384;
/// How long a publish waits for room in a full worker queue before the
/// publisher is told to retry.
const SEND_TIMEOUT: Duration = Duration::from_secs(2);

/// One publication, ready for every subscriber's socket.
#[derive(Clone, Debug)]
pub struct Publication {
    pub channel: Arc<str>,
    /// The whole frame: header and `{"ch":...,"data":...}` payload.
    pub frame: Bytes,
}

impl Publication {
    /// Encodes the frame once; `data` is valid JSON, copied byte for byte.
    pub fn encode(channel: &str, data: &str) -> Publication {
        let payload = protocol::publication(channel, data);
        let mut frame = Vec::with_capacity(payload.len() + 10);
        encode_frame(&mut frame, OpCode::Text, &payload, None);
        Publication {
            channel: Arc::from(channel),
            frame: Bytes::from(frame),
        }
    }
}

/// What a worker is told through its queue.
pub enum Command {
    Publish(Publication),
    /// Stop accepting, close everyone with 1001, exit.
    Shutdown,
}

/// The worker's end of its queue.
pub struct Inbox {
    pub rx: Receiver<Command>,
    /// Set by a sender that woke the worker; cleared by the worker before it
    /// drains, so a burst of publishes costs one wake-up, not one each.
    pub notified: Arc<AtomicBool>,
}

struct Outlet {
    tx: Sender<Command>,
    waker: Arc<mio::Waker>,
    notified: Arc<AtomicBool>,
}

/// A worker's queue stayed full for the whole send timeout.
#[derive(Debug, thiserror::Error)]
#[error("worker {0} is not keeping up with publications")]
pub struct Overloaded(pub usize);

/// Hands publications and commands to every worker.
pub struct Broker {
    outlets: Vec<Outlet>,
}

impl Broker {
    /// A broker for workers whose wakers are given; returns it and each
    /// worker's inbox, in the same order.
    pub fn new(wakers: Vec<Arc<mio::Waker>>) -> (Broker, Vec<Inbox>) {
        let mut outlets = Vec::with_capacity(wakers.len());
        let mut inboxes = Vec::with_capacity(wakers.len());
        for waker in wakers {
            let (tx, rx) = crossbeam_channel::bounded(WORKER_QUEUE);
            let notified = Arc::new(AtomicBool::new(false));
            outlets.push(Outlet {
                tx,
                waker,
                notified: notified.clone(),
            });
            inboxes.push(Inbox { rx, notified });
        }
        (Broker { outlets }, inboxes)
    }

    /// Sends a batch of publications to every worker, then wakes each once.
    pub fn publish(&self, batch: &[Publication]) -> Result<(), Overloaded> {
        for (i, outlet) in self.outlets.iter().enumerate() {
            for publication in batch {
                match outlet.tx.try_send(Command::Publish(publication.clone())) {
                    Ok(()) => {}
                    Err(crossbeam_channel::TrySendError::Full(cmd)) => {
                        // Wake the worker so it drains while we wait.
                        Self::wake(outlet);
                        match outlet.tx.send_timeout(cmd, SEND_TIMEOUT) {
                            Ok(()) => {}
                            Err(
                                SendTimeoutError::Timeout(_) | SendTimeoutError::Disconnected(_),
                            ) => return Err(Overloaded(i)),
                        }
                    }
                    Err(crossbeam_channel::TrySendError::Disconnected(_)) => {
                        return Err(Overloaded(i))
                    }
                }
            }
            Self::wake(outlet);
        }
        Ok(())
    }

    /// Tells every worker to shut down.
    pub fn shutdown(&self) {
        for outlet in &self.outlets {
            let _ = outlet.tx.send_timeout(Command::Shutdown, SEND_TIMEOUT);
            outlet.notified.store(true, Ordering::Release);
            let _ = outlet.waker.wake();
        }
    }

    fn wake(outlet: &Outlet) {
        if !outlet.notified.swap(true, Ordering::AcqRel) {
            if let Err(e) = outlet.waker.wake() {
                tracing::warn!(error = %e, "waking a worker failed");
            }
        }
    }
}
