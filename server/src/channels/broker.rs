//! The in-process broker: a publication is encoded into one WebSocket frame,
//! once, and that same `Bytes` goes to every worker through a bounded
//! crossbeam channel plus a `mio::Waker`. Workers look up their own
//! subscribers; the broker never touches a connection.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};

/// Commands per worker queue. Bounded so a stalled worker pushes back on the
/// publisher (slower HTTP answers, then 503) instead of growing without end.
/// crossbeam touches every slot up front (56 bytes each), so this is 0.9 MB
/// per worker; a worker drains thousands of commands per wake-up.
pub const WORKER_QUEUE: usize = 16_384;
/// How long shutdown waits for room in a full worker queue.
const SEND_TIMEOUT: Duration = Duration::from_secs(2);

/// One publication, ready for every subscriber's socket: encoded once (by
/// the engine), the same `Bytes` for every worker and subscriber.
#[derive(Clone, Debug)]
pub struct Publication {
    pub channel: Arc<str>,
    /// The whole frame: header and `{"ch":..,"off":..,"epoch":..,"data":..}`.
    pub frame: Bytes,
    /// Global publication order; see `engine/log.rs` for why workers track it.
    pub seq: u64,
    /// When the engine handed it to the workers: the start of the
    /// publish-to-socket latency in /metrics.
    pub published: Instant,
}

/// What a worker is told through its queue.
pub enum Command {
    Publish(Publication),
    /// The engine now knows `channel` (the Redis engine loaded it): answer
    /// the subscriptions to it that waited. Every publication numbered
    /// before `seq` was queued before this command.
    Ready {
        channel: Arc<str>,
        seq: u64,
    },
    /// The engine cannot load `channel` now (Redis unreachable): the
    /// subscriptions that waited for it are refused, to be retried.
    Unavailable {
        channel: Arc<str>,
    },
    /// Waiting-room frames for connections of this worker, by slab token
    /// and connection generation (see `rooms/`): one command per worker per
    /// rooms tick.
    Room(Vec<(u32, u16, Bytes)>),
    /// Stop accepting, close everyone with 1001, exit.
    Shutdown,
    /// A drain stops accepting: the listener is closed, so the kernel
    /// sends new connections to the other processes on the port.
    StopAccepting,
    /// A drain's share for this moment: close up to `count` open
    /// connections with 1012 and `reason` (which carries the reconnect hint).
    CloseSome {
        count: u64,
        reason: Arc<str>,
    },
    /// Run with this configuration from now on (a SIGHUP reload; only the
    /// options in `ops::reload::LIVE` differ from the running one).
    Reload(Arc<crate::config::Config>),
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

    /// Whether every worker's queue has room for `n` more publications.
    /// Only the engine sends publications, under its lock, so room
    /// seen here is still there when it sends.
    pub fn has_room(&self, n: usize) -> bool {
        self.outlets.iter().all(|o| WORKER_QUEUE - o.tx.len() >= n)
    }

    /// Queues `publication` for every worker (after [`Broker::has_room`]).
    pub fn send(&self, publication: Publication) {
        for (i, outlet) in self.outlets.iter().enumerate() {
            if outlet
                .tx
                .try_send(Command::Publish(publication.clone()))
                .is_err()
            {
                tracing::error!(
                    worker = i,
                    "worker queue full despite the room check; publication lost for it"
                );
            }
        }
    }

    /// Queues `Command::Ready` for every worker, waiting for room as a
    /// shutdown does: it must not be lost, or subscribers would wait forever.
    pub fn send_ready(&self, channel: &Arc<str>, seq: u64) {
        for outlet in &self.outlets {
            let ready = Command::Ready {
                channel: channel.clone(),
                seq,
            };
            if outlet.tx.send_timeout(ready, SEND_TIMEOUT).is_err() {
                tracing::error!(%channel, "a worker queue stayed full; its waiting subscribers time out");
            }
        }
    }

    /// Queues `Command::Unavailable` for every worker.
    pub fn send_unavailable(&self, channel: &Arc<str>) {
        for outlet in &self.outlets {
            let refusal = Command::Unavailable {
                channel: channel.clone(),
            };
            if outlet.tx.send_timeout(refusal, SEND_TIMEOUT).is_err() {
                tracing::error!(%channel, "a worker queue stayed full; its waiting subscribers keep waiting");
            }
        }
    }

    /// Queues waiting-room frames for one worker and wakes it. Waits for
    /// room as a shutdown does: an admission must not be lost.
    pub fn send_room(&self, worker: usize, frames: Vec<(u32, u16, Bytes)>) {
        let Some(outlet) = self.outlets.get(worker) else {
            return;
        };
        if outlet
            .tx
            .send_timeout(Command::Room(frames), SEND_TIMEOUT)
            .is_err()
        {
            tracing::error!(
                worker,
                "a worker queue stayed full; waiting-room frames lost for it"
            );
        }
        Self::wake(outlet);
    }

    /// Queues `Command::Reload` for every worker, waiting for room as a
    /// shutdown does: a worker that missed it would run on the old limits.
    pub fn send_reload(&self, config: &Arc<crate::config::Config>) {
        for outlet in &self.outlets {
            let reload = Command::Reload(config.clone());
            if outlet.tx.send_timeout(reload, SEND_TIMEOUT).is_err() {
                tracing::error!(
                    "a worker queue stayed full; that worker keeps the old configuration"
                );
            }
            Self::wake(outlet);
        }
    }

    /// Queues a drain command for worker `worker` (see `ops::drain`).
    pub fn send_to(&self, worker: usize, command: Command) {
        let Some(outlet) = self.outlets.get(worker) else {
            return;
        };
        if outlet.tx.send_timeout(command, SEND_TIMEOUT).is_err() {
            tracing::error!(
                worker,
                "a worker queue stayed full; a drain step was skipped"
            );
        }
        Self::wake(outlet);
    }

    /// How many workers there are.
    pub fn workers(&self) -> usize {
        self.outlets.len()
    }

    /// Wakes every worker that is not already awake.
    pub fn wake_all(&self) {
        for outlet in &self.outlets {
            Self::wake(outlet);
        }
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
