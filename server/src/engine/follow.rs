//! How a node follows channels in Redis: the pub/sub connections, each
//! owning the channels whose names hash to it, subscribing only to channels
//! that have local subscribers, loading each one's tail into the mirror,
//! and feeding the mirror what pub/sub brings, in offset order. A lost
//! connection is re-established with capped, jittered backoff and every
//! channel it followed is re-subscribed and re-synced from its stream, so
//! what was published meanwhile still reaches local subscribers.
//!
//! It must not touch workers except through the broker.

use std::collections::HashSet;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::Notify;

use crate::channels::broker::Publication;
use crate::engine::log::{random_u64, Gap, Numbering};
use crate::engine::redis::{meta_key, parse_message, stream_key, topic, unix_ms, Shared};

/// Channels loaded or subscribed per round trip at once: enough to ramp
/// thousands of private channels per second, few enough that one round
/// does not hold the connection for long.
const CHUNK: usize = 256;
/// Backoff between reconnect attempts: from 100 ms, doubling, capped at 5 s,
/// with full jitter so a fleet of nodes does not reconnect in step.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long a delivery waits for room in full worker queues before it is
/// sent anyway (and, if still full, logged as lost for that worker).
const ROOM_WAIT: Duration = Duration::from_secs(2);

/// One pub/sub connection's inbox of interest changes.
#[derive(Default)]
pub(crate) struct Shard {
    changed: Mutex<HashSet<Arc<str>>>,
    notify: Notify,
}

impl Shard {
    /// Interest in `channel` went from none to some, or back.
    pub fn changed(&self, channel: Arc<str>) {
        self.changed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(channel);
        self.notify.notify_one();
    }

    fn take_changed(&self) -> Vec<Arc<str>> {
        let mut changed = self.changed.lock().unwrap_or_else(|p| p.into_inner());
        changed.drain().collect()
    }
}

fn jittered(backoff: Duration) -> Duration {
    let millis = backoff.as_millis().max(1) as u64;
    Duration::from_millis(random_u64() % millis + 1)
}

/// Keeps one pub/sub connection up and its channels followed, forever.
pub(crate) async fn run_shard(shared: Arc<Shared>, index: usize) {
    let mut backoff = BACKOFF_MIN;
    let mut connected_before = false;
    let mut down = false;
    loop {
        let connect = tokio::time::timeout(shared.timeout, shared.client.get_async_pubsub());
        let pubsub = match connect.await {
            Ok(Ok(pubsub)) => pubsub,
            outcome => {
                if !down {
                    down = true;
                    shared.status.shards_down.fetch_add(1, Relaxed);
                    let why = match outcome {
                        Ok(Err(e)) => e.to_string(),
                        _ => "timed out".into(),
                    };
                    tracing::warn!(shard = index, error = %why, "redis pub/sub connection lost; retrying");
                }
                refuse_waiting(&shared, index);
                tokio::time::sleep(jittered(backoff)).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        if down {
            down = false;
            shared.status.shards_down.fetch_sub(1, Relaxed);
        }
        if connected_before {
            shared.status.reconnects.fetch_add(1, Relaxed);
            tracing::info!(shard = index, "redis pub/sub connection re-established");
        }
        connected_before = true;
        backoff = BACKOFF_MIN;
        let (mut sink, mut stream) = pubsub.split();
        let mut following: HashSet<Arc<str>> = HashSet::new();
        // Everything this connection should follow: after a reconnect that
        // is all of it again, and each channel is re-synced from its stream.
        shared.shards[index].take_changed();
        let wanted: Vec<Arc<str>> = {
            // Under the interest lock, so a worker's new interest is either
            // seen here or finds the channel no longer loaded (and waits).
            let interest = shared.interest.lock().unwrap_or_else(|p| p.into_inner());
            let wanted: Vec<Arc<str>> = interest
                .keys()
                .filter(|c| shared.shard_of(c) == index)
                .cloned()
                .collect();
            // Channels that lost their subscribers while the connection was
            // down are followed no more.
            let mut mirror = shared.mirror();
            let gone: Vec<Arc<str>> = mirror
                .ready
                .keys()
                .filter(|c| shared.shard_of(c) == index && !interest.contains_key(*c))
                .cloned()
                .collect();
            for channel in gone {
                mirror.ready.remove(&channel);
                mirror.logs.forget(&channel);
            }
            wanted
        };
        let mut alive = follow(&shared, &mut sink, &mut following, wanted).await;
        while alive {
            tokio::select! {
                message = stream.next() => match message {
                    Some(message) => on_message(&shared, &following, &message).await,
                    None => alive = false,
                },
                () = shared.shards[index].notify.notified() => {
                    alive = reconcile(&shared, index, &mut sink, &mut following).await;
                }
            }
        }
        if !down {
            down = true;
            shared.status.shards_down.fetch_add(1, Relaxed);
        }
        tracing::warn!(shard = index, "redis pub/sub connection lost; reconnecting");
    }
}

/// While a connection is down, subscriptions that wait for a channel it
/// would load are told to retry rather than left waiting.
fn refuse_waiting(shared: &Shared, index: usize) {
    let changed = shared.shards[index].take_changed();
    if changed.is_empty() {
        return;
    }
    let mirror = shared.mirror();
    for channel in changed {
        if !mirror.ready.contains_key(&channel) {
            shared.broker.send_unavailable(&channel);
        }
    }
    drop(mirror);
    shared.broker.wake_all();
}

/// Applies interest changes: follow what gained local subscribers, stop
/// following what lost its last. `false` when the connection failed.
async fn reconcile(
    shared: &Shared,
    index: usize,
    sink: &mut redis::aio::PubSubSink,
    following: &mut HashSet<Arc<str>>,
) -> bool {
    let changed = shared.shards[index].take_changed();
    let (wanted, leaving): (Vec<Arc<str>>, Vec<Arc<str>>) = {
        // Decided and unloaded under the interest lock: a worker that takes
        // an interest in a leaving channel either does so before (and the
        // channel stays) or finds it unloaded and waits for the next load.
        // Unloading only after the UNSUBSCRIBE round trip would let a
        // subscriber be answered from a mirror about to be dropped, and
        // miss what the next load brings back without sending.
        let interest = shared.interest.lock().unwrap_or_else(|p| p.into_inner());
        let (wanted, unwanted): (Vec<_>, Vec<_>) =
            changed.into_iter().partition(|c| interest.contains_key(c));
        let mut mirror = shared.mirror();
        let leaving: Vec<Arc<str>> = unwanted
            .into_iter()
            .filter(|c| following.contains(c))
            .collect();
        for channel in &leaving {
            mirror.ready.remove(channel);
            mirror.logs.forget(channel);
        }
        (wanted, leaving)
    };
    for chunk in leaving.chunks(CHUNK) {
        let topics: Vec<String> = chunk.iter().map(|c| topic(c)).collect();
        if sink.unsubscribe(topics).await.is_err() {
            return false;
        }
        for channel in chunk {
            following.remove(channel);
        }
    }
    shared
        .status
        .followed
        .store(shared.mirror().ready.len() as u64, Relaxed);
    follow(shared, sink, following, wanted).await
}

/// Subscribes to `channels` in Redis, then loads each one's tail into the
/// mirror. Subscribing first means nothing published during the load is
/// missed: it waits in the connection and is de-duplicated by offset.
async fn follow(
    shared: &Shared,
    sink: &mut redis::aio::PubSubSink,
    following: &mut HashSet<Arc<str>>,
    channels: Vec<Arc<str>>,
) -> bool {
    let fresh: Vec<Arc<str>> = channels
        .iter()
        .filter(|c| !following.contains(*c))
        .cloned()
        .collect();
    for chunk in fresh.chunks(CHUNK) {
        let topics: Vec<String> = chunk.iter().map(|c| topic(c)).collect();
        let subscribed = tokio::time::timeout(shared.timeout, sink.subscribe(topics)).await;
        if !matches!(subscribed, Ok(Ok(()))) {
            for channel in chunk {
                shared.broker.send_unavailable(channel);
            }
            shared.broker.wake_all();
            return false;
        }
        following.extend(chunk.iter().cloned());
    }
    for chunk in channels.chunks(CHUNK) {
        let loads = chunk.iter().map(|channel| sync(shared, channel));
        futures_util::future::join_all(loads).await;
    }
    shared
        .status
        .followed
        .store(shared.mirror().ready.len() as u64, Relaxed);
    true
}

/// Reads a channel's epoch and newest entries from Redis and brings the
/// mirror up to date with them: a channel not yet loaded becomes ready
/// (its waiting subscribers are answered), and entries a loaded channel
/// missed go to its subscribers as live publications, in order.
pub(crate) async fn sync(shared: &Shared, channel: &Arc<str>) {
    let size = shared.history.retention(channel).size.max(1);
    let mut invocation = shared.load_script.prepare_invoke();
    invocation
        .key(meta_key(channel))
        .key(stream_key(channel))
        .arg(size);
    let mut conn = shared.commands.clone();
    let call = invocation.invoke_async::<Vec<redis::Value>>(&mut conn);
    let values = match tokio::time::timeout(shared.timeout, call).await {
        Ok(Ok(values)) => values,
        outcome => {
            let why = match outcome {
                Ok(Err(e)) => e.to_string(),
                _ => "timed out".into(),
            };
            tracing::warn!(%channel, error = %why, "loading a channel from redis failed");
            if !shared.mirror().ready.contains_key(channel) {
                shared.broker.send_unavailable(channel);
                shared.broker.wake_all();
            }
            return;
        }
    };
    let mut fields = values
        .into_iter()
        .map(|v| redis::from_redis_value::<String>(v).unwrap_or_default());
    let epoch = fields.next().unwrap_or_default();
    let mut entries: Vec<(u64, String)> = Vec::new();
    while let (Some(off), Some(data)) = (fields.next(), fields.next()) {
        if let Ok(off) = off.parse() {
            entries.push((off, data));
        }
    }
    apply(shared, channel, &epoch, &entries).await;
}

/// Appends `entries` (oldest first) of `epoch` to the mirror, sending those
/// new to an already-loaded channel to the workers; marks a channel that
/// was not loaded ready.
async fn apply(shared: &Shared, channel: &Arc<str>, epoch: &str, entries: &[(u64, String)]) {
    wait_for_room(shared, entries.len() + 1).await;
    let mut mirror = shared.mirror();
    let was_ready = mirror.ready.contains_key(channel);
    for (off, data) in entries {
        if epoch.is_empty() {
            break;
        }
        let numbering = || Numbering::Given { epoch, off: *off };
        let appended = match mirror.logs.append(channel, data, numbering()) {
            Err(Gap::Missing { .. }) => {
                // More was missed than Redis keeps: start the log again at
                // what it has; subscribers see the offsets jump.
                tracing::warn!(%channel, "history gap larger than redis keeps");
                mirror.logs.forget(channel);
                mirror.logs.append(channel, data, numbering())
            }
            other => other,
        };
        if let (Ok(appended), true) = (appended, was_ready) {
            shared.broker.send(Publication {
                channel: appended.channel,
                frame: appended.frame,
                seq: appended.seq,
                published: std::time::Instant::now(),
            });
        }
    }
    mirror.logs.evict_over_cap();
    if !was_ready {
        let seq = mirror.logs.seq();
        mirror.ready.insert(channel.clone(), seq);
        shared.broker.send_ready(channel, seq);
    }
    drop(mirror);
    shared.broker.wake_all();
}

/// Waits (boundedly) until every worker queue has room for `n` more, so a
/// burst from Redis is not dropped at a full queue. Only this engine's
/// tasks send, a few at a time, so room seen here is room when they send.
async fn wait_for_room(shared: &Shared, n: usize) {
    let deadline = Instant::now() + ROOM_WAIT;
    while !shared.broker.has_room(n) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// One publication from pub/sub: the next offset goes to the workers; one
/// already known is dropped; one past a gap makes the channel re-sync.
async fn on_message(shared: &Shared, following: &HashSet<Arc<str>>, message: &redis::Msg) {
    let Some(channel) = message.get_channel_name().strip_prefix("surge:p:") else {
        return;
    };
    let Some(channel) = following.get(channel) else {
        return;
    };
    let Some((epoch, off, at, data)) = parse_message(message.get_payload_bytes()) else {
        tracing::warn!(%channel, "unreadable publication from redis");
        return;
    };
    shared
        .status
        .pubsub_lag_ms
        .store(unix_ms().saturating_sub(at), Relaxed);
    wait_for_room(shared, 1).await;
    let gap = {
        let mut mirror = shared.mirror();
        if !mirror.ready.contains_key(channel) {
            // Its load is still to come and will include this one.
            return;
        }
        match mirror
            .logs
            .append(channel, data, Numbering::Given { epoch, off })
        {
            Ok(appended) => {
                shared.broker.send(Publication {
                    channel: appended.channel,
                    frame: appended.frame,
                    seq: appended.seq,
                    published: std::time::Instant::now(),
                });
                mirror.logs.evict_over_cap();
                false
            }
            Err(Gap::Duplicate) => return,
            Err(Gap::Missing { .. }) => true,
        }
    };
    if gap {
        sync(shared, channel).await;
    } else {
        shared.broker.wake_all();
    }
}

/// Pings Redis on the command connection once a second: round-trip time
/// and whether publishing can work, for /healthz and /metrics.
pub(crate) async fn watch_commands(shared: Arc<Shared>) {
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let mut was_ok = true;
    loop {
        ticker.tick().await;
        let mut conn = shared.commands.clone();
        let started = Instant::now();
        let ping = redis::cmd("PING");
        let ping = ping.query_async::<String>(&mut conn);
        let ok = matches!(tokio::time::timeout(shared.timeout, ping).await, Ok(Ok(_)));
        if ok {
            let rtt = started.elapsed().as_micros() as u64;
            shared.status.rtt_us.store(rtt, Relaxed);
        }
        if ok != was_ok {
            if ok {
                tracing::info!("redis reachable again");
            } else {
                tracing::warn!("redis unreachable: publishing answers 503");
            }
        }
        was_ok = ok;
        shared.status.commands_ok.store(ok, Relaxed);
    }
}
