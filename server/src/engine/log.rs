//! Channel logs: each channel's epoch, offsets, bounded history and last
//! value, and the global byte cap over all of them. The in-process engine
//! keeps its truth here; the Redis engine keeps a node-local mirror of what
//! Redis holds here, so recovery reads memory either way.
//!
//! Every entry also gets a global sequence number, in the order it was
//! handed to the workers' queues. A worker remembers the sequence number of
//! the last publication it dequeued; a recovering subscriber is replayed
//! exactly the entries its worker has already passed and gets the rest live
//! from the queue: no gap and no duplicate at the seam.
//!
//! Memory is bounded per channel (count and age, never dropping the last
//! value) and overall (a byte cap that evicts the oldest entries of any
//! channel first). It must not touch sockets, workers or queues: callers
//! number, then send what this returns.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::wire::frame::{encode_frame, OpCode};

/// A channel's epoch and an offset in it.
pub type Position = (Arc<str>, u64);

/// How much history a channel keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Publications kept (at least 1: the last value).
    pub size: usize,
    /// Age after which publications are dropped, except the last value.
    pub ttl_secs: u64,
}

/// Retention for every channel, by longest matching name prefix.
#[derive(Clone, Debug)]
pub struct HistoryConfig {
    pub default: Retention,
    pub rules: Vec<(String, Retention)>,
    /// Cap on all history bytes together (frames plus bookkeeping).
    pub max_bytes: usize,
}

impl HistoryConfig {
    pub fn retention(&self, channel: &str) -> Retention {
        self.rules
            .iter()
            .filter(|(prefix, _)| channel.starts_with(prefix.as_str()))
            .max_by_key(|(prefix, _)| prefix.len())
            .map_or(self.default, |(_, r)| *r)
    }
}

/// Seconds for history ages. The real clock in the server; a hand-moved
/// one in tests, so an age test never sleeps.
#[derive(Clone)]
pub enum Clock {
    Real(Instant),
    Manual(Arc<AtomicU64>),
}

impl Clock {
    pub fn real() -> Clock {
        Clock::Real(Instant::now())
    }

    /// Seconds since the clock started.
    pub fn now(&self) -> u64 {
        match self {
            Clock::Real(start) => start.elapsed().as_secs(),
            Clock::Manual(secs) => secs.load(Ordering::Relaxed),
        }
    }
}

/// Bookkeeping counted against the byte cap per entry (the entry in its
/// deque, the shared `Bytes` header, allocator rounding) and per channel,
/// so the cap bounds real memory and the number of channels too. Measured
/// with `examples/history_rss`: 361 bytes of RSS per retained publication
/// whose frame is 166 bytes.
pub const ENTRY_OVERHEAD: usize = 192;
pub const CHANNEL_OVERHEAD: usize = 128;

struct Entry {
    off: u64,
    seq: u64,
    /// Seconds on the store's clock.
    at: u64,
    /// The live frame: `{"ch":..,"off":..,"epoch":..,"data":..}`.
    frame: Bytes,
    /// Where `data` sits in the frame, to build a snapshot frame from it.
    data: std::ops::Range<usize>,
}

struct ChannelLog {
    name: Arc<str>,
    epoch: Arc<str>,
    last_off: u64,
    retention: Retention,
    entries: VecDeque<Entry>,
}

/// What a subscriber gets when it (re)subscribes.
#[derive(Debug, Default)]
pub struct Recovery {
    /// The channel's epoch and last offset (`None`: no history at all).
    pub position: Option<Position>,
    /// `Some(true)`: everything after `since` follows in `frames`;
    /// `Some(false)`: history no longer reaches back (or the epoch changed),
    /// `frames` holds the last value as a snapshot; `None`: no `since` asked.
    pub recovered: Option<bool>,
    pub frames: Vec<Bytes>,
}

/// Whether a subscriber asked to recover, and from where.
#[derive(Clone, Copy, Debug)]
pub struct Since<'a> {
    pub epoch: &'a str,
    pub off: u64,
}

/// Where an appended publication's position comes from.
pub enum Numbering<'a> {
    /// The next offset of the channel's own epoch (the in-process engine).
    Next,
    /// Assigned elsewhere (Redis): the log follows it.
    Given { epoch: &'a str, off: u64 },
}

/// One appended publication: the frame for the workers and its position.
pub struct Appended {
    pub channel: Arc<str>,
    pub frame: Bytes,
    pub seq: u64,
    pub position: Position,
}

/// A `Given` offset that does not follow the log's last one.
#[derive(Debug, PartialEq, Eq)]
pub enum Gap {
    /// Already in the log (a replay overlapping live): drop it.
    Duplicate,
    /// Offsets `from..off` are missing: fetch them first.
    Missing { from: u64 },
}

/// One channel as a state file keeps it.
pub struct ExportedChannel<'a> {
    pub name: &'a str,
    pub epoch: &'a str,
    /// (offset, age in seconds, data), oldest first.
    pub entries: Vec<(u64, u64, &'a str)>,
}

/// All channel logs of one process (or one node's mirror).
pub struct ChannelLogs {
    logs: HashMap<Arc<str>, ChannelLog>,
    /// Sequence number of each channel's oldest entry -> channel: the global
    /// eviction order, one map entry per channel rather than per publication.
    fronts: BTreeMap<u64, Arc<str>>,
    bytes: usize,
    seq: u64,
    epochs_made: u64,
    config: HistoryConfig,
    clock: Clock,
    /// Random per process, so epochs made here differ across restarts.
    epoch_base: u64,
}

/// 64 bits from the OS's randomness (std's RandomState keys are drawn from
/// it), for epochs and secrets made up per run.
pub fn random_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now())
}

impl ChannelLogs {
    pub fn new(config: HistoryConfig, clock: Clock) -> ChannelLogs {
        ChannelLogs {
            logs: HashMap::new(),
            fronts: BTreeMap::new(),
            bytes: 0,
            seq: 0,
            epochs_made: 0,
            config,
            clock,
            epoch_base: random_u64(),
        }
    }

    /// A fresh epoch: 8 hex digits, different per process and per channel log.
    pub fn new_epoch(&mut self) -> String {
        self.epochs_made += 1;
        let mixed = self
            .epoch_base
            .wrapping_add(self.epochs_made.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        format!("{:08x}", mixed >> 32)
    }

    /// The last global sequence number handed out.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The channel's epoch and last offset, if it has a log.
    pub fn position(&self, channel: &str) -> Option<Position> {
        self.logs
            .get(channel)
            .map(|log| (log.epoch.clone(), log.last_off))
    }

    /// Appends one publication: numbers it, encodes its frame once and keeps
    /// it. The caller sends the frame to the workers before the next append.
    pub fn append(
        &mut self,
        channel: &str,
        data: &str,
        numbering: Numbering<'_>,
    ) -> Result<Appended, Gap> {
        let now = self.clock.now();
        self.append_at(channel, data, numbering, now)
    }

    /// Puts back an entry saved by an earlier run, `age_secs` old now, with
    /// its own epoch and offset (see `state.rs`).
    pub fn restore(
        &mut self,
        channel: &str,
        epoch: &str,
        off: u64,
        data: &str,
        age_secs: u64,
    ) -> Result<(), Gap> {
        // Older than this run's clock: it counts as published at its start.
        let at = self.clock.now().saturating_sub(age_secs);
        self.append_at(channel, data, Numbering::Given { epoch, off }, at)
            .map(|_| ())
    }

    /// Every channel's epoch and retained entries, oldest first, as
    /// (offset, age in seconds, data), for a state file.
    pub fn export(&self) -> Vec<ExportedChannel<'_>> {
        let now = self.clock.now();
        self.logs
            .values()
            .map(|log| ExportedChannel {
                name: &log.name,
                epoch: &log.epoch,
                entries: log
                    .entries
                    .iter()
                    .map(|e| {
                        let data = std::str::from_utf8(&e.frame[e.data.clone()]).unwrap_or("null");
                        (e.off, now.saturating_sub(e.at), data)
                    })
                    .collect(),
            })
            .collect()
    }

    fn append_at(
        &mut self,
        channel: &str,
        data: &str,
        numbering: Numbering<'_>,
        now: u64,
    ) -> Result<Appended, Gap> {
        if let Numbering::Given { epoch, off } = numbering {
            match self.logs.get(channel) {
                Some(log) if &*log.epoch == epoch => {
                    if off <= log.last_off {
                        return Err(Gap::Duplicate);
                    }
                    if off > log.last_off + 1 {
                        return Err(Gap::Missing {
                            from: log.last_off + 1,
                        });
                    }
                }
                // A new epoch (Redis lost its data, or a first sight): the
                // old entries belong to offsets that no longer mean anything.
                Some(_) => self.forget(channel),
                None => {}
            }
        }
        let epoch = match numbering {
            Numbering::Next => None,
            Numbering::Given { epoch, .. } => Some(Arc::<str>::from(epoch)),
        };
        if !self.logs.contains_key(channel) {
            let epoch = match &epoch {
                Some(e) => e.clone(),
                None => Arc::from(self.new_epoch().as_str()),
            };
            let name: Arc<str> = Arc::from(channel);
            self.bytes += CHANNEL_OVERHEAD;
            let log = ChannelLog {
                name: name.clone(),
                epoch,
                last_off: match numbering {
                    Numbering::Given { off, .. } => off - 1,
                    Numbering::Next => 0,
                },
                retention: self.config.retention(channel),
                entries: VecDeque::new(),
            };
            self.logs.insert(name, log);
        }
        self.seq += 1;
        let seq = self.seq;
        let ChannelLogs {
            logs,
            fronts,
            bytes,
            ..
        } = self;
        let Some(log) = logs.get_mut(channel) else {
            return Err(Gap::Duplicate);
        };
        log.last_off += 1;
        let (frame, range) = encode_live(channel, log.last_off, &log.epoch, data);
        if log.entries.is_empty() {
            fronts.insert(seq, log.name.clone());
        }
        *bytes += frame.len() + ENTRY_OVERHEAD;
        log.entries.push_back(Entry {
            off: log.last_off,
            seq,
            at: now,
            frame: frame.clone(),
            data: range,
        });
        // Per-channel bounds: count, then age; the last value always stays.
        while log.entries.len() > log.retention.size.max(1)
            || (log.entries.len() > 1
                && log
                    .entries
                    .front()
                    .is_some_and(|e| e.at + log.retention.ttl_secs < now))
        {
            pop_front(log, fronts, bytes);
        }
        Ok(Appended {
            channel: log.name.clone(),
            frame,
            seq,
            position: (log.epoch.clone(), log.last_off),
        })
    }

    /// Drops a channel's log entirely.
    pub fn forget(&mut self, channel: &str) {
        if let Some(log) = self.logs.remove(channel) {
            if let Some(front) = log.entries.front() {
                self.fronts.remove(&front.seq);
            }
            let held: usize = log
                .entries
                .iter()
                .map(|e| e.frame.len() + ENTRY_OVERHEAD)
                .sum();
            self.bytes = self.bytes.saturating_sub(held + CHANNEL_OVERHEAD);
        }
    }

    /// Global cap: evict the oldest entry of any channel until under it; a
    /// channel left with nothing is forgotten (a later publication starts a
    /// new epoch, so no client mistakes its offsets for old ones).
    pub fn evict_over_cap(&mut self) {
        while self.bytes > self.config.max_bytes {
            let Some(name) = self.fronts.first_key_value().map(|(_, name)| name.clone()) else {
                break;
            };
            let ChannelLogs {
                logs,
                fronts,
                bytes,
                ..
            } = self;
            let Some(log) = logs.get_mut(&name) else {
                fronts.pop_first();
                continue;
            };
            pop_front(log, fronts, bytes);
            if log.entries.is_empty() {
                logs.remove(&name);
                *bytes = bytes.saturating_sub(CHANNEL_OVERHEAD);
            }
        }
    }

    /// What a subscriber to `channel` on a worker that has dequeued up to
    /// `passed_seq` gets now: the replay after `since`, or the last value as
    /// a snapshot.
    pub fn recover(&self, channel: &str, since: Option<Since<'_>>, passed_seq: u64) -> Recovery {
        let Some(log) = self.logs.get(channel) else {
            // Nothing published (or all of it evicted): nothing was missed
            // unless the client believes otherwise.
            let recovered = since.map(|s| s.off == 0);
            return Recovery {
                position: None,
                recovered,
                frames: Vec::new(),
            };
        };
        let position = Some((log.epoch.clone(), log.last_off));
        // Entries this worker has not dequeued yet reach the subscriber live.
        let passed = |e: &&Entry| e.seq <= passed_seq;
        let snapshot = || -> Vec<Bytes> {
            log.entries
                .back()
                .filter(passed)
                .map(|e| snapshot_frame(channel, &log.epoch, e))
                .into_iter()
                .collect()
        };
        let Some(since) = since else {
            return Recovery {
                position,
                recovered: None,
                frames: snapshot(),
            };
        };
        // Age is enforced lazily when a channel publishes; a quiet channel's
        // expired entries are treated as gone here so the promise holds.
        let now = self.clock.now();
        let live = |e: &&Entry| e.at + log.retention.ttl_secs >= now || e.off == log.last_off;
        let front_off = log
            .entries
            .iter()
            .find(live)
            .map_or(log.last_off + 1, |e| e.off);
        let reachable =
            since.epoch == &*log.epoch && since.off <= log.last_off && since.off + 1 >= front_off;
        if !reachable {
            return Recovery {
                position,
                recovered: Some(false),
                frames: snapshot(),
            };
        }
        let frames = log
            .entries
            .iter()
            .filter(|e| e.off > since.off)
            .filter(passed)
            .map(|e| e.frame.clone())
            .collect();
        Recovery {
            position,
            recovered: Some(true),
            frames,
        }
    }

    /// Bytes held, for /metrics.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

fn pop_front(log: &mut ChannelLog, fronts: &mut BTreeMap<u64, Arc<str>>, bytes: &mut usize) {
    if let Some(old) = log.entries.pop_front() {
        fronts.remove(&old.seq);
        *bytes = bytes.saturating_sub(old.frame.len() + ENTRY_OVERHEAD);
        if let Some(next) = log.entries.front() {
            fronts.insert(next.seq, log.name.clone());
        }
    }
}

/// `{"ch":"C","off":N,"epoch":"E","data":DATA}` as a text frame, and where
/// DATA sits in it.
fn encode_live(
    channel: &str,
    off: u64,
    epoch: &str,
    data: &str,
) -> (Bytes, std::ops::Range<usize>) {
    let head = format!(r#"{{"ch":"{channel}","off":{off},"epoch":"{epoch}","data":"#);
    let mut payload = Vec::with_capacity(head.len() + data.len() + 1);
    payload.extend_from_slice(head.as_bytes());
    payload.extend_from_slice(data.as_bytes());
    payload.push(b'}');
    let mut frame = Vec::with_capacity(payload.len() + 10);
    encode_frame(&mut frame, OpCode::Text, &payload, None);
    let start = frame.len() - payload.len() + head.len();
    (Bytes::from(frame), start..start + data.len())
}

/// The last value flagged `"snap":true`.
fn snapshot_frame(channel: &str, epoch: &str, e: &Entry) -> Bytes {
    let data = std::str::from_utf8(&e.frame[e.data.clone()]).unwrap_or("null");
    let payload = format!(
        r#"{{"ch":"{channel}","off":{},"epoch":"{epoch}","snap":true,"data":{data}}}"#,
        e.off
    );
    let mut frame = Vec::with_capacity(payload.len() + 10);
    encode_frame(&mut frame, OpCode::Text, payload.as_bytes(), None);
    Bytes::from(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logs(size: usize, ttl_secs: u64, max_bytes: usize) -> (ChannelLogs, Arc<AtomicU64>) {
        let secs = Arc::new(AtomicU64::new(0));
        let config = HistoryConfig {
            default: Retention { size, ttl_secs },
            rules: Vec::new(),
            max_bytes,
        };
        (ChannelLogs::new(config, Clock::Manual(secs.clone())), secs)
    }

    fn publish(l: &mut ChannelLogs, items: &[(&str, &str)]) -> Vec<Position> {
        let out = items
            .iter()
            .filter_map(|(ch, data)| l.append(ch, data, Numbering::Next).ok())
            .map(|a| a.position)
            .collect();
        l.evict_over_cap();
        out
    }

    fn since(epoch: &str, off: u64) -> Option<Since<'_>> {
        Some(Since { epoch, off })
    }

    #[test]
    fn offsets_count_per_channel_and_replay_stops_at_what_the_worker_has_not_passed() {
        let (mut l, _) = logs(100, 300, 1 << 20);
        let out = publish(&mut l, &[("a", "1"), ("b", "2"), ("a", "3")]);
        assert_eq!(
            out.iter().map(|(_, off)| *off).collect::<Vec<_>>(),
            vec![1, 1, 2]
        );
        let epoch = out[0].0.clone();
        // The worker has dequeued only the first publication (seq 1).
        let r = l.recover("a", since(&epoch, 0), 1);
        assert_eq!((r.recovered, r.frames.len()), (Some(true), 1));
        let r = l.recover("a", since(&epoch, 0), 3);
        assert_eq!(r.frames.len(), 2);
    }

    #[test]
    fn expired_entries_are_not_replayed_but_the_last_value_stays() {
        let (mut l, clock) = logs(100, 5, 1 << 20);
        let out = publish(&mut l, &[("a", "1"), ("a", "2")]);
        let epoch = out[0].0.clone();
        clock.store(5, Ordering::Relaxed);
        let r = l.recover("a", since(&epoch, 0), 10);
        assert_eq!(
            (r.recovered, r.frames.len()),
            (Some(true), 2),
            "at exactly the TTL both entries are still there"
        );
        clock.store(6, Ordering::Relaxed);
        let r = l.recover("a", since(&epoch, 0), 10);
        assert_eq!(r.recovered, Some(false), "offset 1 is older than the TTL");
        assert_eq!(r.frames.len(), 1, "snapshot of the last value");
        let r = l.recover("a", since(&epoch, 1), 10);
        assert_eq!((r.recovered, r.frames.len()), (Some(true), 1));
    }

    #[test]
    fn the_byte_cap_evicts_the_oldest_across_channels_and_forgets_empty_ones() {
        let cap = 3 * (CHANNEL_OVERHEAD + ENTRY_OVERHEAD + 64);
        let (mut l, _) = logs(100, 300, cap);
        publish(&mut l, &[("old", "1")]);
        for _ in 0..5 {
            publish(&mut l, &[("new", "2")]);
        }
        assert!(l.bytes() <= cap);
        assert!(
            l.recover("old", None, 100).position.is_none(),
            "the oldest channel went first"
        );
        assert!(l.recover("new", None, 100).position.is_some());
    }

    #[test]
    fn given_offsets_follow_the_source_and_report_duplicates_and_gaps() {
        let (mut l, _) = logs(100, 300, 1 << 20);
        let given = |off| Numbering::Given { epoch: "e1", off };
        assert_eq!(l.append("a", "1", given(7)).map(|a| a.position.1), Ok(7));
        assert_eq!(l.append("a", "1", given(7)).err(), Some(Gap::Duplicate));
        assert_eq!(
            l.append("a", "3", given(9)).err(),
            Some(Gap::Missing { from: 8 })
        );
        assert_eq!(l.append("a", "2", given(8)).map(|a| a.position.1), Ok(8));
        let r = l.recover("a", since("e1", 7), u64::MAX);
        assert_eq!((r.recovered, r.frames.len()), (Some(true), 1));
        // A new epoch replaces the log: old offsets mean nothing in it.
        let fresh = Numbering::Given {
            epoch: "e2",
            off: 1,
        };
        assert_eq!(l.append("a", "x", fresh).map(|a| a.position.1), Ok(1));
        let r = l.recover("a", since("e1", 8), u64::MAX);
        assert_eq!(r.recovered, Some(false));
    }
}
