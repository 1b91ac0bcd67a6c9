//! The in-process engine, the default: one process owns its channels'
//! epochs, offsets, history and last values, in memory, with no external
//! service. A publication is numbered, encoded once, kept and queued for
//! every worker under one lock, which is what lets recovery meet the live
//! stream with no gap and no duplicate (see `log.rs`).
//!
//! It must not touch sockets; the workers write what it queues.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::channels::broker::{Broker, Publication};
use crate::engine::log::{ChannelLogs, Clock, HistoryConfig, Numbering};
use crate::engine::state;
use crate::engine::{Engine, EngineError, EngineStatus, Position, Recovery, Since};

/// How long a publish waits for room in full worker queues before it is
/// refused with 503: long enough to ride out a burst, short enough that the
/// backend's request does not hang.
const ROOM_WAIT: Duration = Duration::from_secs(2);

pub struct MemoryEngine {
    logs: Mutex<Logs>,
    broker: Arc<Broker>,
    state_file: Option<PathBuf>,
    start_seq: u64,
}

/// The logs, and whether publishing has stopped for good (the server is
/// stopping: a publication taken now could miss the state file).
struct Logs {
    logs: ChannelLogs,
    closed: bool,
}

impl MemoryEngine {
    pub fn new(config: HistoryConfig, broker: Arc<Broker>) -> MemoryEngine {
        Self::with_clock(config, broker, Clock::real(), None)
    }

    /// With `state_file`, the channels saved there by the last graceful
    /// stop come back; a missing or unusable file is logged and ignored.
    pub fn with_clock(
        config: HistoryConfig,
        broker: Arc<Broker>,
        clock: Clock,
        state_file: Option<PathBuf>,
    ) -> MemoryEngine {
        let mut logs = ChannelLogs::new(config.clone(), clock);
        if let Some(path) = &state_file {
            match state::load(&mut logs, &config, path) {
                Ok((channels, entries)) => {
                    tracing::info!(path = %path.display(), channels, entries, "state restored")
                }
                Err(state::StateError::Read { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    tracing::info!(path = %path.display(), "no state file yet; fresh epochs")
                }
                Err(e) => tracing::warn!(error = %e, "state file ignored; fresh epochs"),
            }
        }
        let start_seq = logs.seq();
        MemoryEngine {
            logs: Mutex::new(Logs {
                logs,
                closed: false,
            }),
            broker,
            state_file,
            start_seq,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Logs> {
        // A panic while holding the lock cannot leave the logs half-written
        // in a way that matters more than losing publications: carry on.
        self.logs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Engine for MemoryEngine {
    fn publish(&self, items: &[(&str, &str)]) -> Result<Vec<Position>, EngineError> {
        let mut logs = self.lock();
        if logs.closed {
            return Err(EngineError::Unavailable("the server is stopping".into()));
        }
        // Wait for room without holding the lock, so workers can take it to
        // serve recoveries while they drain; then check again under it.
        let deadline = Instant::now() + ROOM_WAIT;
        while !self.broker.has_room(items.len()) {
            drop(logs);
            if Instant::now() >= deadline {
                return Err(EngineError::Overloaded);
            }
            std::thread::sleep(Duration::from_millis(1));
            logs = self.lock();
        }
        let mut out = Vec::with_capacity(items.len());
        for (channel, data) in items {
            // Numbering::Next never reports a gap.
            let Ok(appended) = logs.logs.append(channel, data, Numbering::Next) else {
                continue;
            };
            self.broker.send(Publication {
                channel: appended.channel,
                frame: appended.frame,
                seq: appended.seq,
                published: std::time::Instant::now(),
            });
            out.push(appended.position);
        }
        logs.logs.evict_over_cap();
        drop(logs);
        self.broker.wake_all();
        Ok(out)
    }

    fn recover(
        &self,
        channel: &str,
        since: Option<Since<'_>>,
        passed_seq: u64,
    ) -> Option<Recovery> {
        Some(self.lock().logs.recover(channel, since, passed_seq))
    }

    fn start_seq(&self) -> u64 {
        self.start_seq
    }

    fn bytes(&self) -> usize {
        self.lock().logs.bytes()
    }

    fn shutdown(&self) {
        let mut logs = self.lock();
        if logs.closed {
            return;
        }
        logs.closed = true;
        let Some(path) = &self.state_file else {
            return;
        };
        match state::save(&logs.logs, path) {
            Ok(saved) => tracing::info!(
                path = %path.display(),
                channels = saved.channels,
                entries = saved.entries,
                bytes = saved.bytes,
                "state saved"
            ),
            Err(e) => {
                tracing::error!(error = %e, "state not saved; the next start has fresh epochs")
            }
        }
    }

    fn status(&self) -> EngineStatus {
        EngineStatus {
            kind: "memory",
            connected: true,
            ..EngineStatus::default()
        }
    }
}
