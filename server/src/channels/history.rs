//! Offsets, epochs, last values and bounded history, shared by all workers.
//!
//! Every publication gets the next offset of its channel and a global
//! sequence number, under one lock, and is handed to every worker's queue
//! while that lock is held. A worker remembers the sequence number of the
//! last publication it dequeued; a recovering subscriber is then replayed
//! exactly the history entries its worker has already passed, and gets the
//! rest live from the queue: no gap, no duplicate at the seam.
//!
//! Memory is bounded per channel (count and age, never dropping the last
//! value) and overall (a byte cap that evicts the oldest entries of any
//! channel first). It must not touch sockets or connections.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::channels::broker::{Broker, Overloaded, Publication};
use crate::wire::frame::{encode_frame, OpCode};

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
    fn retention(&self, channel: &str) -> Retention {
        self.rules
            .iter()
            .filter(|(prefix, _)| channel.starts_with(prefix.as_str()))
            .max_by_key(|(prefix, _)| prefix.len())
            .map_or(self.default, |(_, r)| *r)
    }
}

/// Bookkeeping counted against the byte cap per entry (the entry in its
/// deque, the shared `Bytes` header, allocator rounding) and per channel,
/// so the cap bounds real memory and the number of channels too. Measured
/// with `examples/history_rss`: 361 bytes of RSS per retained publication
/// whose frame is 166 bytes.
const ENTRY_OVERHEAD: usize = 192;
const CHANNEL_OVERHEAD: usize = 128;

struct Entry {
    off: u64,
    seq: u64,
    /// Seconds since the store was created.
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

#[derive(Default)]
struct Inner {
    logs: HashMap<Arc<str>, ChannelLog>,
    /// Sequence number of each channel's oldest entry -> channel: the global
    /// eviction order, one map entry per channel rather than per publication.
    fronts: BTreeMap<u64, Arc<str>>,
    bytes: usize,
    seq: u64,
    epochs_made: u64,
}

/// What a subscriber gets when it (re)subscribes.
#[derive(Debug, Default)]
pub struct Recovery {
    /// The channel's epoch and last offset (`None`: no history at all).
    pub position: Option<(Arc<str>, u64)>,
    /// `Some(true)`: everything after `since` follows in `frames`;
    /// `Some(false)`: history no longer reaches back (or the epoch changed),
    /// `frames` holds the last value as a snapshot; `None`: no `since` asked.
    pub recovered: Option<bool>,
    pub frames: Vec<Bytes>,
}

/// Whether a subscriber asked to recover, and from where.
pub struct Since<'a> {
    pub epoch: &'a str,
    pub off: u64,
}

pub struct History {
    inner: Mutex<Inner>,
    config: HistoryConfig,
    started: Instant,
    /// Random per process, so epochs differ across restarts.
    epoch_base: u64,
}

impl History {
    /// 64 bits from the OS's randomness (std's RandomState keys are drawn
    /// from it), for epochs and secrets made up per run.
    pub fn random_u64() -> u64 {
        use std::hash::{BuildHasher, RandomState};
        RandomState::new().hash_one(Instant::now())
    }
}

impl History {
    pub fn new(config: HistoryConfig) -> History {
        History {
            inner: Mutex::new(Inner::default()),
            config,
            started: Instant::now(),
            epoch_base: History::random_u64(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the store half-written
        // in a way that matters more than losing publications: carry on.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn now(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// Publishes `items` (channel, JSON data) in order: offsets, history and
    /// every worker's queue. Returns each one's (epoch, offset).
    pub fn publish(
        &self,
        items: &[(&str, &str)],
        broker: &Broker,
    ) -> Result<Vec<(Arc<str>, u64)>, Overloaded> {
        let mut inner = self.lock();
        // Wait for room without holding the lock, so workers can take it to
        // serve recoveries while they drain; then check again under it.
        let deadline = Instant::now() + Duration::from_secs(2);
        while !broker.has_room(items.len()) {
            drop(inner);
            if Instant::now() >= deadline {
                return Err(Overloaded);
            }
            std::thread::sleep(Duration::from_millis(1));
            inner = self.lock();
        }
        let now = self.now();
        let mut out = Vec::with_capacity(items.len());
        for (channel, data) in items {
            let (publication, position) = self.append(&mut inner, channel, data, now);
            broker.send(publication);
            out.push(position);
        }
        self.evict_over_cap(&mut inner);
        drop(inner);
        broker.wake_all();
        Ok(out)
    }

    fn append(
        &self,
        inner: &mut Inner,
        channel: &str,
        data: &str,
        now: u64,
    ) -> (Publication, (Arc<str>, u64)) {
        inner.seq += 1;
        let seq = inner.seq;
        let Inner {
            logs,
            fronts,
            bytes,
            epochs_made,
            ..
        } = inner;
        let log = logs.entry(Arc::from(channel)).or_insert_with_key(|name| {
            *epochs_made += 1;
            *bytes += CHANNEL_OVERHEAD;
            let mixed = self
                .epoch_base
                .wrapping_add(epochs_made.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            ChannelLog {
                name: name.clone(),
                epoch: Arc::from(format!("{:08x}", mixed >> 32).as_str()),
                last_off: 0,
                retention: self.config.retention(channel),
                entries: VecDeque::new(),
            }
        });
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
        let publication = Publication {
            channel: log.name.clone(),
            frame,
            seq,
        };
        (publication, (log.epoch.clone(), log.last_off))
    }

    /// Global cap: evict the oldest entry of any channel until under it; a
    /// channel left with nothing is forgotten (a later publication starts a
    /// new epoch, so no client mistakes its offsets for old ones).
    fn evict_over_cap(&self, inner: &mut Inner) {
        while inner.bytes > self.config.max_bytes {
            let Some(name) = inner.fronts.first_key_value().map(|(_, name)| name.clone()) else {
                break;
            };
            let Inner {
                logs,
                fronts,
                bytes,
                ..
            } = &mut *inner;
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
        let inner = self.lock();
        let Some(log) = inner.logs.get(channel) else {
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
        let now = self.now();
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
        self.lock().bytes
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

    fn store(
        size: usize,
        ttl_secs: u64,
        max_bytes: usize,
    ) -> (History, Broker, Vec<crate::channels::broker::Inbox>) {
        let poll = mio::Poll::new().unwrap();
        let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(0)).unwrap());
        let (broker, inboxes) = Broker::new(vec![waker]);
        let config = HistoryConfig {
            default: Retention { size, ttl_secs },
            rules: Vec::new(),
            max_bytes,
        };
        (History::new(config), broker, inboxes)
    }

    #[test]
    fn offsets_count_per_channel_and_replay_stops_at_what_the_worker_has_not_passed() {
        let (h, broker, _inboxes) = store(100, 300, 1 << 20);
        let out = h
            .publish(&[("a", "1"), ("b", "2"), ("a", "3")], &broker)
            .unwrap();
        assert_eq!(
            out.iter().map(|(_, off)| *off).collect::<Vec<_>>(),
            vec![1, 1, 2]
        );
        let epoch = out[0].0.clone();
        // The worker has dequeued only the first publication (seq 1).
        let r = h.recover(
            "a",
            Some(Since {
                epoch: &epoch,
                off: 0,
            }),
            1,
        );
        assert_eq!((r.recovered, r.frames.len()), (Some(true), 1));
        let r = h.recover(
            "a",
            Some(Since {
                epoch: &epoch,
                off: 0,
            }),
            3,
        );
        assert_eq!(r.frames.len(), 2);
    }

    #[test]
    fn expired_entries_are_not_replayed_but_the_last_value_stays() {
        let (h, broker, _inboxes) = store(100, 0, 1 << 20);
        let out = h.publish(&[("a", "1"), ("a", "2")], &broker).unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        let epoch = out[0].0.clone();
        let r = h.recover(
            "a",
            Some(Since {
                epoch: &epoch,
                off: 0,
            }),
            10,
        );
        assert_eq!(r.recovered, Some(false), "offset 1 is older than the TTL");
        assert_eq!(r.frames.len(), 1, "snapshot of the last value");
        let r = h.recover(
            "a",
            Some(Since {
                epoch: &epoch,
                off: 1,
            }),
            10,
        );
        assert_eq!((r.recovered, r.frames.len()), (Some(true), 1));
    }

    #[test]
    fn the_byte_cap_evicts_the_oldest_across_channels_and_forgets_empty_ones() {
        let (h, broker, _inboxes) = store(100, 300, 3 * (CHANNEL_OVERHEAD + ENTRY_OVERHEAD + 64));
        h.publish(&[("old", "1")], &broker).unwrap();
        for _ in 0..5 {
            h.publish(&[("new", "2")], &broker).unwrap();
        }
        assert!(h.bytes() <= 3 * (CHANNEL_OVERHEAD + ENTRY_OVERHEAD + 64));
        assert!(
            h.recover("old", None, 100).position.is_none(),
            "the oldest channel went first"
        );
        assert!(h.recover("new", None, 100).position.is_some());
    }
}
