//! The engine seam: who numbers, keeps and spreads publications.
//!
//! An engine owns publish (offset, epoch, history, last value), recovery and
//! subscription interest. Two implement it: the in-process engine (the
//! default: no external service, today's speed) and the Redis engine (many
//! processes and boxes agree on every channel's epoch and offsets). Either
//! way a publication reaches the workers the same way, encoded once, through
//! their inbox (`channels::broker`), and a worker never blocks on an engine:
//! a recovery the engine cannot answer from memory at once is answered later
//! through the same inbox.
//!
//! It must not touch sockets or connections; workers do that.

pub mod follow;
pub mod log;
pub mod memory;
pub mod redis;
pub mod state;

use std::sync::Arc;

pub use log::{Position, Recovery, Since};

/// Why an engine did not take a publication. Both are recoverable: the
/// caller answers 503 and the backend retries; nothing was published.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The workers' queues stayed full for the whole wait.
    #[error("the workers are not keeping up with publications")]
    Overloaded,
    /// The shared store (Redis) did not confirm the publication.
    #[error("the engine is unavailable: {0}")]
    Unavailable(String),
}

/// An engine's health, for `/healthz` and `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct EngineStatus {
    /// `memory` or `redis`.
    pub kind: &'static str,
    /// False while the shared store cannot be reached.
    pub connected: bool,
    /// Times the connection to the shared store was re-established.
    pub reconnects: u64,
    /// Last measured round trip to the shared store, in microseconds.
    pub rtt_us: u64,
    /// How long the last publication took from Redis to this node, in ms.
    pub pubsub_lag_ms: u64,
    /// Channels whose publications this node follows.
    pub followed_channels: u64,
}

/// The interface workers, the publish API and the server use.
pub trait Engine: Send + Sync {
    /// Publishes `items` (channel, JSON data) in order and answers each
    /// one's (epoch, offset) once it is stored. May block the calling thread
    /// (never a worker's) for a bounded time.
    fn publish(&self, items: &[(&str, &str)]) -> Result<Vec<Position>, EngineError>;

    /// What a subscriber on a worker that has dequeued up to `passed_seq`
    /// gets now. `None`: not known here yet; the engine sends
    /// `Command::Ready` for the channel to every worker once it is, and the
    /// worker asks again then.
    fn recover(&self, channel: &str, since: Option<Since<'_>>, passed_seq: u64)
        -> Option<Recovery>;

    /// Whether the engine wants [`Engine::interest`] calls; the in-process
    /// engine does not, so workers skip the bookkeeping.
    fn wants_interest(&self) -> bool {
        false
    }

    /// A worker gained its first (`true`) or lost its last (`false`)
    /// subscriber of `channel`.
    fn interest(&self, _worker: usize, _channel: &str, _on: bool) {}

    /// The sequence number workers start from: publications numbered before
    /// they started (restored from a state file) never come through their
    /// queues, so a recovery replays them.
    fn start_seq(&self) -> u64 {
        0
    }

    /// Bytes of history held in this process.
    fn bytes(&self) -> usize;

    fn status(&self) -> EngineStatus;

    /// Stops taking publications and background work (connections to a
    /// shared store), and saves what must outlive the process.
    fn shutdown(&self) {}
}

/// The engine every part of the server shares.
pub type SharedEngine = Arc<dyn Engine>;
