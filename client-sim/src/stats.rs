//! What one worker process measured, in a form the parent can merge
//! exactly: counters add up, HdrHistograms travel serialized (V2, base64)
//! and merge bucket by bucket, per-publication completion times take the max.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latencies are recorded in microseconds, up to an hour, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).expect("3 sigfig is valid"))
}

pub fn encode(h: &Histogram<u64>) -> String {
    let mut out = Vec::new();
    if V2Serializer::new().serialize(h, &mut out).is_err() {
        return String::new();
    }
    B64.encode(out)
}

pub fn decode(s: &str) -> Histogram<u64> {
    let bytes = B64.decode(s).unwrap_or_default();
    Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .unwrap_or_else(|_| histogram())
}

/// Storm outcome of one process.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
pub struct Storm {
    pub dropped: u64,
    pub reconnected: u64,
    pub gave_up: u64,
    pub refused_503: u64,
    pub recovered: u64,
    pub not_recovered: u64,
    /// From the drop to the last reconnection, milliseconds.
    pub time_to_full_ms: u64,
}

/// Everything a worker process reports.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Stats {
    pub attempted: u64,
    pub connected: u64,
    pub failed: BTreeMap<String, u64>,
    pub closes: BTreeMap<u16, u64>,
    pub deliveries: u64,
    pub snapshots: u64,
    pub gaps: u64,
    pub duplicates: u64,
    pub errors: u64,
    /// Connections whose user channel got exactly one / no / several confirmations.
    pub confirm_once: u64,
    pub confirm_missing: u64,
    pub confirm_duplicate: u64,
    /// Confirmations received on user channels, and those short of the
    /// rounds published (summed over connections).
    pub confirm_received: u64,
    pub confirm_lost: u64,
    /// Serialized histograms (microseconds).
    pub connect_us: String,
    pub delivery_us: String,
    /// Publication id -> latest receive time (Unix microseconds).
    pub last_receive_us: BTreeMap<u64, u64>,
    /// Subscribers per clinic index.
    pub clinic_subscribers: BTreeMap<u32, u64>,
    pub storm: Storm,
    /// Growth of this process's RSS from start to the end of the ramp.
    pub client_rss_delta: u64,
    /// `wss://` connections opened with a full TLS handshake / a resumed one.
    #[serde(default)]
    pub tls_full: u64,
    #[serde(default)]
    pub tls_resumed: u64,
    /// (milliseconds since start, open connections), sampled.
    pub timeline: Vec<(u64, u64)>,
    /// Unix time in tenths of a second -> connections the server closed
    /// with 1012 (a drain): fine enough to tell a drain window's length.
    #[serde(default)]
    pub drain_closes_at: BTreeMap<u64, u64>,
    /// Unix time in tenths of a second -> reconnections that opened then.
    #[serde(default)]
    pub reconnects_at: BTreeMap<u64, u64>,
}

impl Stats {
    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &Stats) {
        self.attempted += other.attempted;
        self.connected += other.connected;
        for (k, v) in &other.failed {
            *self.failed.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.closes {
            *self.closes.entry(*k).or_default() += v;
        }
        self.deliveries += other.deliveries;
        self.snapshots += other.snapshots;
        self.gaps += other.gaps;
        self.duplicates += other.duplicates;
        self.errors += other.errors;
        self.confirm_once += other.confirm_once;
        self.confirm_missing += other.confirm_missing;
        self.confirm_duplicate += other.confirm_duplicate;
        self.confirm_received += other.confirm_received;
        self.confirm_lost += other.confirm_lost;
        self.connect_us = merge_hist(&self.connect_us, &other.connect_us);
        self.delivery_us = merge_hist(&self.delivery_us, &other.delivery_us);
        for (id, t) in &other.last_receive_us {
            let e = self.last_receive_us.entry(*id).or_default();
            *e = (*e).max(*t);
        }
        for (c, n) in &other.clinic_subscribers {
            *self.clinic_subscribers.entry(*c).or_default() += n;
        }
        self.client_rss_delta += other.client_rss_delta;
        self.tls_full += other.tls_full;
        self.tls_resumed += other.tls_resumed;
        let s = &mut self.storm;
        let o = &other.storm;
        s.dropped += o.dropped;
        s.reconnected += o.reconnected;
        s.gave_up += o.gave_up;
        s.refused_503 += o.refused_503;
        s.recovered += o.recovered;
        s.not_recovered += o.not_recovered;
        s.time_to_full_ms = s.time_to_full_ms.max(o.time_to_full_ms);
        self.timeline = merge_timelines(&self.timeline, &other.timeline);
        for (into, from) in [
            (&mut self.drain_closes_at, &other.drain_closes_at),
            (&mut self.reconnects_at, &other.reconnects_at),
        ] {
            for (second, n) in from {
                *into.entry(*second).or_default() += n;
            }
        }
    }
}

fn merge_hist(a: &str, b: &str) -> String {
    if a.is_empty() {
        return b.to_string();
    }
    if b.is_empty() {
        return a.to_string();
    }
    let mut h = decode(a);
    let _ = h.add(decode(b));
    encode(&h)
}

/// Sums two step series sampled at different instants.
fn merge_timelines(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let at = |series: &[(u64, u64)], t: u64| {
        series
            .iter()
            .take_while(|(ts, _)| *ts <= t)
            .last()
            .map_or(0, |(_, v)| *v)
    };
    let mut times: Vec<u64> = a.iter().chain(b).map(|(t, _)| *t).collect();
    times.sort_unstable();
    times.dedup();
    times
        .into_iter()
        .map(|t| (t, at(a, t) + at(b, t)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_and_counters_merge_exactly() {
        let mut h1 = histogram();
        h1.record(100).unwrap();
        let mut h2 = histogram();
        h2.record(300).unwrap();
        h2.record(500).unwrap();
        let mut a = Stats {
            connected: 2,
            delivery_us: encode(&h1),
            ..Stats::default()
        };
        a.last_receive_us.insert(7, 10);
        let mut b = Stats {
            connected: 3,
            delivery_us: encode(&h2),
            ..Stats::default()
        };
        b.last_receive_us.insert(7, 30);
        b.timeline = vec![(0, 1), (10, 3)];
        a.timeline = vec![(5, 2)];
        a.merge(&b);
        let h = decode(&a.delivery_us);
        assert_eq!((a.connected, h.len(), h.max()), (5, 3, 500));
        assert_eq!(a.last_receive_us[&7], 30);
        assert_eq!(a.timeline, vec![(0, 1), (5, 3), (10, 5)]);
    }
}
