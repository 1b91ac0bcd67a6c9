//! The Redis engine: many Surge processes and boxes share channels through
//! Redis, an existing, well-known engine, rather than a home-made one.
//!
//! - Publishing, on any node: one Lua script numbers the publication in the
//!   channel's epoch (kept in Redis, so every node agrees), appends it to the
//!   channel's stream (bounded by count and age; the keys expire when the
//!   channel goes quiet) and publishes it on the channel's pub/sub topic, in
//!   one atomic step. The publish API answers only once Redis has it.
//! - Following, on each node: a node subscribes in Redis only to channels
//!   that have local subscribers (`follow.rs`), loads each one's tail from
//!   its stream into a node-local mirror (`log.rs`'s `ChannelLogs`, exactly
//!   what the in-process engine keeps) and from then on appends what pub/sub
//!   brings, in offset order, fetching any gap from the stream. Recovery and
//!   snapshots are then answered from memory, with the same no-gap,
//!   no-duplicate seam as in-process.
//!
//! Everything here runs on a small tokio runtime of its own: workers never
//! wait on Redis; what they need arrives through their inbox.
//! It must not touch sockets of browsers or the workers' state.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::ConnectionManager;

use crate::channels::broker::Broker;
use crate::engine::follow;
use crate::engine::log::{random_u64, ChannelLogs, Clock, HistoryConfig};
use crate::engine::{Engine, EngineError, EngineStatus, Position, Recovery, Since};

/// Numbers, keeps and announces publications, atomically per request.
/// KEYS: for each item its meta hash and its stream. ARGV: the channel
/// TTL in ms, then per item: data, history size, history age in ms, pub/sub
/// topic, and a fresh epoch to use if the channel has none.
/// Returns epoch and offset per item.
const PUBLISH_LUA: &str = r#"
local keep_ms = tonumber(ARGV[1])
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
local n = #KEYS / 2
for i = 0, n - 1 do
  local meta, stream = KEYS[2 * i + 1], KEYS[2 * i + 2]
  local a = 2 + 5 * i
  local data, size, age_ms, topic, fresh = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2]), ARGV[a + 3], ARGV[a + 4]
  local epoch = redis.call('HGET', meta, 'epoch')
  if not epoch then
    epoch = fresh
    redis.call('HSET', meta, 'epoch', epoch)
  end
  local off = redis.call('HINCRBY', meta, 'off', 1)
  redis.call('XADD', stream, 'MAXLEN', size, '*', 'o', off, 'd', data)
  redis.call('XTRIM', stream, 'MINID', now_ms - age_ms)
  redis.call('PEXPIRE', meta, keep_ms)
  redis.call('PEXPIRE', stream, keep_ms)
  redis.call('PUBLISH', topic, epoch .. ' ' .. off .. ' ' .. now_ms .. ' ' .. data)
  out[#out + 1] = epoch
  out[#out + 1] = off
end
return out
"#;

/// A channel's epoch and its newest `ARGV[1]` entries, oldest first, as
/// {epoch or '', offset, data, offset, data, ...}.
const LOAD_LUA: &str = r#"
local epoch = redis.call('HGET', KEYS[1], 'epoch') or ''
local out = {epoch}
local entries = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', ARGV[1])
for i = #entries, 1, -1 do
  local fields = entries[i][2]
  local off, data
  for j = 1, #fields, 2 do
    if fields[j] == 'o' then off = fields[j + 1] elseif fields[j] == 'd' then data = fields[j + 1] end
  end
  if off and data then
    out[#out + 1] = off
    out[#out + 1] = data
  end
end
return out
"#;

/// Redis keys of a channel. The `{...}` hash tag keeps a channel's keys on
/// one Redis Cluster slot, so the scripts stay valid there too.
pub(crate) fn meta_key(channel: &str) -> String {
    format!("surge:{{{channel}}}:m")
}
pub(crate) fn stream_key(channel: &str) -> String {
    format!("surge:{{{channel}}}:s")
}
pub(crate) fn topic(channel: &str) -> String {
    format!("surge:p:{channel}")
}

/// The node-local mirror: the channel logs, and which channels are loaded
/// (a loaded channel may have no log: nothing published yet), each with the
/// sequence number of the `Command::Ready` that announced it.
pub(crate) struct Mirror {
    pub logs: ChannelLogs,
    pub ready: HashMap<Arc<str>, u64>,
}

/// What the engine's tasks and its callers share.
pub(crate) struct Shared {
    pub mirror: Mutex<Mirror>,
    pub broker: Arc<Broker>,
    pub history: HistoryConfig,
    pub commands: ConnectionManager,
    pub client: redis::Client,
    pub publish_script: redis::Script,
    pub load_script: redis::Script,
    pub timeout: Duration,
    pub channel_ttl: Duration,
    /// Local subscribers' interest: channel -> workers following it.
    pub interest: Mutex<HashMap<Arc<str>, usize>>,
    /// One per pub/sub connection: channels whose interest changed.
    pub shards: Vec<follow::Shard>,
    pub status: StatusCounters,
}

/// Health figures the tasks keep up to date.
#[derive(Default)]
pub(crate) struct StatusCounters {
    pub commands_ok: AtomicBool,
    pub shards_down: AtomicUsize,
    pub reconnects: AtomicU64,
    pub rtt_us: AtomicU64,
    pub pubsub_lag_ms: AtomicU64,
    pub followed: AtomicU64,
}

impl Shared {
    pub fn mirror(&self) -> MutexGuard<'_, Mirror> {
        self.mirror.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Which pub/sub connection follows `channel`.
    pub fn shard_of(&self, channel: &str) -> usize {
        // FNV-1a: stable across processes and runs, unlike std's keyed
        // hasher; names are spread, not defended against, here.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in channel.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        (h % self.shards.len() as u64) as usize
    }

    async fn publish(&self, items: Vec<(String, String)>) -> Result<Vec<Position>, EngineError> {
        let mut invocation = self.publish_script.prepare_invoke();
        invocation.arg(self.channel_ttl.as_millis() as u64);
        let epoch = || format!("{:08x}", random_u64() >> 32);
        for (channel, data) in &items {
            let retention = self.history.retention(channel);
            invocation
                .key(meta_key(channel))
                .key(stream_key(channel))
                .arg(data)
                .arg(retention.size.max(1))
                .arg(retention.ttl_secs.saturating_mul(1000))
                .arg(topic(channel))
                .arg(epoch());
        }
        let mut conn = self.commands.clone();
        let call = invocation.invoke_async::<Vec<redis::Value>>(&mut conn);
        let values = match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(values)) => values,
            Ok(Err(e)) => return Err(EngineError::Unavailable(format!("redis: {e}"))),
            Err(_) => return Err(EngineError::Unavailable("redis did not answer".into())),
        };
        let mut out = Vec::with_capacity(items.len());
        for pair in values.chunks(2) {
            let [epoch, off] = pair else {
                break;
            };
            let epoch: String = redis::from_redis_value(epoch.clone())
                .map_err(|e| EngineError::Unavailable(format!("redis answer: {e}")))?;
            let off: u64 = redis::from_redis_value(off.clone())
                .map_err(|e| EngineError::Unavailable(format!("redis answer: {e}")))?;
            out.push((Arc::from(epoch.as_str()), off));
        }
        if out.len() != items.len() {
            return Err(EngineError::Unavailable(
                "redis answered for fewer publications than sent".into(),
            ));
        }
        Ok(out)
    }
}

pub struct RedisEngine {
    shared: Arc<Shared>,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    handle: tokio::runtime::Handle,
}

/// Why the Redis engine could not start (fatal at start: a node told to
/// share through Redis must not silently run alone).
#[derive(Debug, thiserror::Error)]
pub enum RedisStartError {
    #[error("bad --redis address: {0}")]
    Address(String),
    #[error("cannot start the Redis engine's runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot reach Redis at start: {0}")]
    Connect(String),
}

/// Settings the engine takes from the configuration.
pub struct RedisSettings {
    pub url: String,
    pub pubsub_connections: usize,
    pub channel_ttl: Duration,
    pub timeout: Duration,
}

impl RedisEngine {
    /// Connects to Redis (failing fast if it cannot) and starts following.
    pub fn start(
        settings: RedisSettings,
        history: HistoryConfig,
        broker: Arc<Broker>,
    ) -> Result<RedisEngine, RedisStartError> {
        let client = redis::Client::open(settings.url.as_str())
            .map_err(|e| RedisStartError::Address(e.to_string()))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("surge-redis")
            .enable_all()
            .build()
            .map_err(RedisStartError::Runtime)?;
        let manager_config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.timeout))
            .set_response_timeout(Some(settings.timeout))
            .set_max_delay(Duration::from_secs(2));
        // Connected on the runtime and waited for here with a plain
        // channel, so starting works from inside another runtime too.
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let connect_client = client.clone();
        runtime.spawn(async move {
            let _ = tx.send(
                connect_client
                    .get_connection_manager_with_config(manager_config)
                    .await,
            );
        });
        let commands = rx
            .recv_timeout(settings.timeout)
            .map_err(|_| RedisStartError::Connect("timed out".into()))?
            .map_err(|e| RedisStartError::Connect(e.to_string()))?;
        let shards = (0..settings.pubsub_connections.max(1))
            .map(|_| follow::Shard::default())
            .collect();
        let shared = Arc::new(Shared {
            mirror: Mutex::new(Mirror {
                logs: ChannelLogs::new(history.clone(), Clock::real()),
                ready: HashMap::new(),
            }),
            broker,
            history,
            commands,
            client,
            publish_script: redis::Script::new(PUBLISH_LUA),
            load_script: redis::Script::new(LOAD_LUA),
            timeout: settings.timeout,
            channel_ttl: settings.channel_ttl,
            interest: Mutex::new(HashMap::new()),
            shards,
            status: StatusCounters::default(),
        });
        shared.status.commands_ok.store(true, Relaxed);
        let handle = runtime.handle().clone();
        for shard in 0..shared.shards.len() {
            handle.spawn(follow::run_shard(shared.clone(), shard));
        }
        handle.spawn(follow::watch_commands(shared.clone()));
        Ok(RedisEngine {
            shared,
            runtime: Mutex::new(Some(runtime)),
            handle,
        })
    }
}

/// What the waiting rooms borrow from the engine to keep their lines in the
/// same Redis: its runtime, its command connection (which reconnects by
/// itself) and its timeout. One connection setup for the whole node.
#[derive(Clone)]
pub struct RedisLink {
    pub handle: tokio::runtime::Handle,
    pub commands: ConnectionManager,
    pub timeout: Duration,
}

impl RedisEngine {
    pub fn link(&self) -> RedisLink {
        RedisLink {
            handle: self.handle.clone(),
            commands: self.shared.commands.clone(),
            timeout: self.shared.timeout,
        }
    }
}

impl Engine for RedisEngine {
    fn publish(&self, items: &[(&str, &str)]) -> Result<Vec<Position>, EngineError> {
        let owned: Vec<(String, String)> = items
            .iter()
            .map(|(c, d)| (c.to_string(), d.to_string()))
            .collect();
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let shared = self.shared.clone();
        self.handle.spawn(async move {
            let _ = tx.send(shared.publish(owned).await);
        });
        // The task answers within the Redis timeout; the margin covers a
        // runtime busy with other work.
        rx.recv_timeout(self.shared.timeout + Duration::from_secs(1))
            .unwrap_or_else(|_| Err(EngineError::Unavailable("redis did not answer".into())))
    }

    fn recover(
        &self,
        channel: &str,
        since: Option<Since<'_>>,
        passed_seq: u64,
    ) -> Option<Recovery> {
        let mirror = self.shared.mirror();
        // Loaded, and this worker has dequeued the Ready that said so: only
        // then do its queue and the mirror meet without a gap. A worker that
        // has not yet (the load finished between its interest and this call)
        // waits for that Ready like any other subscriber.
        match mirror.ready.get(channel) {
            Some(&ready_seq) if passed_seq >= ready_seq => {
                Some(mirror.logs.recover(channel, since, passed_seq))
            }
            _ => None,
        }
    }

    fn wants_interest(&self) -> bool {
        true
    }

    fn interest(&self, _worker: usize, channel: &str, on: bool) {
        let changed = {
            let mut interest = self
                .shared
                .interest
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if on {
                let refs = interest.entry(Arc::from(channel)).or_insert(0);
                *refs += 1;
                *refs == 1
            } else {
                match interest.get_mut(channel) {
                    Some(refs) if *refs > 1 => {
                        *refs -= 1;
                        false
                    }
                    Some(_) => {
                        interest.remove(channel);
                        true
                    }
                    None => false,
                }
            }
        };
        if changed {
            let shard = &self.shared.shards[self.shared.shard_of(channel)];
            shard.changed(Arc::from(channel));
        }
    }

    fn bytes(&self) -> usize {
        self.shared.mirror().logs.bytes()
    }

    fn status(&self) -> EngineStatus {
        let s = &self.shared.status;
        EngineStatus {
            kind: "redis",
            connected: s.commands_ok.load(Relaxed) && s.shards_down.load(Relaxed) == 0,
            reconnects: s.reconnects.load(Relaxed),
            rtt_us: s.rtt_us.load(Relaxed),
            pubsub_lag_ms: s.pubsub_lag_ms.load(Relaxed),
            followed_channels: s.followed.load(Relaxed),
        }
    }

    fn shutdown(&self) {
        let runtime = self
            .runtime
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(runtime) = runtime {
            runtime.shutdown_background();
        }
    }
}

impl Drop for RedisEngine {
    fn drop(&mut self) {
        // Dropping a runtime blocks; a server dropped inside async code
        // (tests, an embedding) must not panic for it.
        self.shutdown();
    }
}

/// Milliseconds since the Unix epoch, for pub/sub lag.
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A pub/sub message: `EPOCH OFFSET PUBLISHED_MS DATA`.
pub(crate) fn parse_message(payload: &[u8]) -> Option<(&str, u64, u64, &str)> {
    let text = std::str::from_utf8(payload).ok()?;
    let mut parts = text.splitn(4, ' ');
    let epoch = parts.next()?;
    let off = parts.next()?.parse().ok()?;
    let at = parts.next()?.parse().ok()?;
    let data = parts.next()?;
    Some((epoch, off, at, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pubsub_messages_parse_and_garbage_does_not() {
        assert_eq!(
            parse_message(br#"ab12cd34 7 1700000000000 {"free":3, "x":"a b"}"#),
            Some(("ab12cd34", 7, 1_700_000_000_000, r#"{"free":3, "x":"a b"}"#))
        );
        assert_eq!(parse_message(b"e 1 2"), None);
        assert_eq!(parse_message(b"e x 2 {}"), None);
        assert_eq!(parse_message(b"\xff 1 2 {}"), None);
    }

    #[test]
    fn keys_share_a_hash_tag_per_channel() {
        assert_eq!(meta_key("user/1"), "surge:{user/1}:m");
        assert_eq!(stream_key("user/1"), "surge:{user/1}:s");
        assert_eq!(topic("clinic:3"), "surge:p:clinic:3");
    }
}
