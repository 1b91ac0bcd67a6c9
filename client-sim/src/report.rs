//! The report: every figure of a run, as a table for the terminal, as JSON,
//! and as one self-contained HTML page with SVG charts (plotters).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::orchestrate::{Common, Scenario};
use crate::stats::{self, Stats, Storm};

/// Registers the embedded font under the family plotters asks for.
fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if plotters::style::register_font("sans-serif", FontStyle::Normal, ttf_noto_sans::REGULAR)
            .is_err()
        {
            eprintln!("client-sim: could not register the chart font; charts will lack labels");
        }
    });
}

#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    /// From a histogram of microseconds, in milliseconds.
    fn of(h: &hdrhistogram::Histogram<u64>) -> Percentiles {
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerUsage {
    /// The processes summed (one per node).
    pub pids: Vec<u32>,
    pub rss_before: u64,
    pub rss_after_ramp: u64,
    pub rss_end: u64,
    /// (RSS after ramp - RSS before) / connected.
    pub bytes_per_connection: f64,
    pub cpu_seconds_total: Option<f64>,
    /// CPU seconds from before the first connect to the end of the ramp:
    /// accepts, handshakes (TLS too) and subscriptions.
    pub cpu_seconds_ramp: Option<f64>,
    /// CPU seconds while publishing and delivering (fanout).
    pub cpu_seconds_fanout: Option<f64>,
}

/// Kernel memory for the connections: growth of /proc/meminfo's `Slab`
/// over the ramp. Machine-wide, so on loopback it holds both ends of every
/// connection (the client's socket and the server's).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct KernelUsage {
    pub slab_before_kib: u64,
    pub slab_after_ramp_kib: u64,
    pub bytes_per_connection: f64,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Confirm {
    /// Connections that got exactly the rounds published / fewer / more.
    pub once: u64,
    pub missing: u64,
    pub duplicate: u64,
    pub rounds: u8,
    /// Confirmations the publish API accepted.
    pub published: u64,
    /// Confirmations received (each offset once).
    pub received: u64,
    /// Confirmations connected users never got.
    pub lost: u64,
    /// Confirmations received more than once (same offset again).
    pub duplicated: u64,
    pub killed_pid: Option<u32>,
    pub killed_after_round: Option<u8>,
    /// Nodes drained and restarted (--restart-pid), in order.
    pub restarts: Vec<crate::restart::Restarted>,
    pub restarted_after_round: Option<u8>,
    /// Publish requests refused while nodes restarted, and sent again.
    pub publish_refusals: u64,
    /// The drains' 1012 closes and reconnections per second.
    pub drain_profile: Option<crate::restart::Profile>,
}

impl Confirm {
    /// Adds what the scenario did to what the workers counted.
    pub fn apply(&mut self, outcome: &crate::confirm::Outcome) {
        self.rounds = outcome.rounds;
        self.published = outcome.published;
        self.killed_pid = outcome.killed_pid;
        self.killed_after_round = outcome.killed_after_round;
        self.restarts = outcome.restarts.clone();
        self.restarted_after_round = outcome.restarted_after_round;
        self.publish_refusals = outcome.publish_refusals;
    }
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Report {
    pub scenario: String,
    pub unix_time: u64,
    pub params: serde_json::Value,
    pub procs: usize,
    pub target_connections: u64,
    pub connected: u64,
    pub failed: BTreeMap<String, u64>,
    pub closes: BTreeMap<u16, u64>,
    pub ramp_seconds: f64,
    pub handshakes_per_second: f64,
    /// `wss://` connections opened with a full / a resumed TLS handshake
    /// (storm reconnections included).
    pub tls_full_handshakes: u64,
    pub tls_resumed_handshakes: u64,
    /// client-sim's own user-space bytes per connection (RSS growth / N).
    pub client_bytes_per_connection: f64,
    pub connect_ms: Percentiles,
    pub publications: u64,
    pub deliveries: u64,
    pub deliveries_expected: u64,
    pub snapshots: u64,
    pub gaps: u64,
    pub duplicates: u64,
    pub errors: u64,
    pub delivery_ms: Percentiles,
    /// Per publication: from its send time to its last subscriber.
    pub fanout_completion_ms: Percentiles,
    /// Deliveries / (last receipt - first send): the fan-out throughput.
    pub deliveries_per_second: f64,
    pub confirm: Confirm,
    pub storm: Option<Storm>,
    pub server: Option<ServerUsage>,
    /// The redis-server shared by the nodes (--redis-pid).
    pub redis: Option<ServerUsage>,
    pub kernel: Option<KernelUsage>,
    /// CPU microseconds the server spent per delivery (fanout, with --server-pid).
    pub server_cpu_us_per_delivery: Option<f64>,
    pub timeline: Vec<(u64, u64)>,
    /// Delivery latency histogram (HdrHistogram V2, base64), for later merging.
    pub delivery_histogram: String,
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        common: &Common,
        scenario: &Scenario,
        procs: usize,
        ramp_seconds: f64,
        publications: u64,
        deliveries_expected: u64,
        sent_us: &BTreeMap<u64, u64>,
        stats: Stats,
        server: Option<ServerUsage>,
    ) -> Report {
        let mut completion = stats::histogram();
        for (id, sent) in sent_us {
            if let Some(last) = stats.last_receive_us.get(id) {
                let _ = completion.record(last.saturating_sub(*sent).max(1));
            }
        }
        let first_sent = sent_us.values().min().copied();
        let last_received = stats.last_receive_us.values().max().copied();
        let deliveries_per_second = match (first_sent, last_received) {
            (Some(a), Some(b)) if b > a => stats.deliveries as f64 / ((b - a) as f64 / 1e6),
            _ => 0.0,
        };
        let mut params = serde_json::to_value(common).unwrap_or_default();
        if let (Some(p), Ok(s)) = (params.as_object_mut(), serde_json::to_value(scenario)) {
            if let Some(s) = s.as_object() {
                p.extend(s.clone());
            }
        }
        let cpu_per_delivery = server
            .as_ref()
            .and_then(|s| s.cpu_seconds_fanout)
            .filter(|_| stats.deliveries > 0)
            .map(|cpu| cpu * 1e6 / stats.deliveries as f64);
        Report {
            scenario: scenario.name().into(),
            unix_time: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            params,
            procs,
            target_connections: common.conns,
            connected: stats.connected,
            failed: stats.failed.clone(),
            closes: stats.closes.clone(),
            ramp_seconds,
            handshakes_per_second: stats.connected as f64 / ramp_seconds.max(1e-9),
            tls_full_handshakes: stats.tls_full,
            tls_resumed_handshakes: stats.tls_resumed,
            client_bytes_per_connection: stats.client_rss_delta as f64
                / stats.connected.max(1) as f64,
            connect_ms: Percentiles::of(&stats::decode(&stats.connect_us)),
            publications,
            deliveries: stats.deliveries,
            deliveries_expected,
            snapshots: stats.snapshots,
            gaps: stats.gaps,
            duplicates: stats.duplicates,
            errors: stats.errors,
            delivery_ms: Percentiles::of(&stats::decode(&stats.delivery_us)),
            fanout_completion_ms: Percentiles::of(&completion),
            deliveries_per_second,
            confirm: Confirm {
                once: stats.confirm_once,
                missing: stats.confirm_missing,
                duplicate: stats.confirm_duplicate,
                received: stats.confirm_received,
                lost: stats.confirm_lost,
                duplicated: stats.duplicates,
                drain_profile: crate::restart::Profile::of(
                    &stats.drain_closes_at,
                    &stats.reconnects_at,
                ),
                ..Confirm::default()
            },
            storm: match scenario {
                Scenario::Storm { .. } => Some(stats.storm.clone()),
                Scenario::Confirm(c) if c.kill_pid.is_some() || !c.restart_pid.is_empty() => {
                    Some(stats.storm.clone())
                }
                _ => None,
            },
            server,
            redis: None,
            kernel: None,
            server_cpu_us_per_delivery: cpu_per_delivery,
            timeline: stats.timeline.clone(),
            delivery_histogram: stats.delivery_us.clone(),
        }
    }

    /// The final table for a terminal.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let mut row = |k: &str, v: String| {
            let _ = writeln!(t, "{k:<34} {v}");
        };
        let pct = |p: &Percentiles| {
            format!(
                "p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  (n={})",
                p.p50, p.p90, p.p99, p.p999, p.max, p.count
            )
        };
        row(
            "scenario",
            format!("{} ({} process(es))", self.scenario, self.procs),
        );
        row(
            "connected",
            format!("{} of {}", self.connected, self.target_connections),
        );
        if !self.failed.is_empty() {
            row("failed", format!("{:?}", self.failed));
        }
        if !self.closes.is_empty() {
            row(
                "closed by server (code: count)",
                format!("{:?}", self.closes),
            );
        }
        row(
            "ramp",
            format!(
                "{:.1} s, {:.0} handshakes/s",
                self.ramp_seconds, self.handshakes_per_second
            ),
        );
        if self.tls_full_handshakes + self.tls_resumed_handshakes > 0 {
            row(
                "TLS handshakes full / resumed",
                format!(
                    "{} / {}",
                    self.tls_full_handshakes, self.tls_resumed_handshakes
                ),
            );
        }
        row("connect + handshake, ms", pct(&self.connect_ms));
        row(
            "client-sim bytes per connection",
            format!("{:.0}", self.client_bytes_per_connection),
        );
        if self.publications > 0 {
            row("publications sent", self.publications.to_string());
            row(
                "deliveries",
                format!(
                    "{} (expected {})",
                    self.deliveries, self.deliveries_expected
                ),
            );
            row(
                "gaps / duplicates",
                format!("{} / {}", self.gaps, self.duplicates),
            );
            row("delivery latency, ms", pct(&self.delivery_ms));
            if self.fanout_completion_ms.count > 0 {
                row("fan-out completion, ms", pct(&self.fanout_completion_ms));
                row(
                    "deliveries per second",
                    format!("{:.0}", self.deliveries_per_second),
                );
            }
        }
        if self.scenario == "confirm" {
            let c = &self.confirm;
            row(
                "users with every confirmation",
                format!(
                    "{} ({} short, {} with extra)",
                    c.once, c.missing, c.duplicate
                ),
            );
            row(
                "confirmations",
                format!(
                    "{} published in {} round(s), {} received, {} lost, {} duplicated",
                    c.published, c.rounds, c.received, c.lost, c.duplicated
                ),
            );
            if let (Some(pid), Some(round)) = (c.killed_pid, c.killed_after_round) {
                row("node killed", format!("pid {pid} after round {round}"));
            }
            for r in &c.restarts {
                row(
                    "node restarted",
                    format!(
                        "pid {} as {}: stopped {:.1} s after SIGTERM, listening {} ms later",
                        r.old_pid,
                        r.new_pid,
                        r.stop_ms as f64 / 1000.0,
                        r.start_ms
                    ),
                );
            }
            if c.restarted_after_round.is_some() {
                row(
                    "publishes refused, sent again",
                    c.publish_refusals.to_string(),
                );
            }
            if let Some(p) = &c.drain_profile {
                row(
                    "drain: 1012 closes",
                    format!(
                        "{} over {:.1} s, peak {}/s, even share {:.0}/s",
                        p.closes,
                        p.closing_seconds,
                        p.peak_closes_per_second,
                        p.even_share_per_second
                    ),
                );
                row(
                    "drain: reconnections",
                    format!(
                        "{}, peak {}/s ({:.2}x the even share)",
                        p.reconnects,
                        p.peak_reconnects_per_second,
                        p.peak_reconnects_per_second as f64 / p.even_share_per_second.max(1.0)
                    ),
                );
                row(
                    "drain: closes per second",
                    format!("{:?}", p.closes_per_second),
                );
                row(
                    "drain: reconnections per second",
                    format!("{:?}", p.reconnects_per_second),
                );
            }
        }
        if let Some(s) = &self.storm {
            row(
                "storm: dropped / reconnected",
                format!("{} / {} ({} gave up)", s.dropped, s.reconnected, s.gave_up),
            );
            row(
                "storm: time to full reconnection",
                format!("{} ms", s.time_to_full_ms),
            );
            row("storm: refused with 503", s.refused_503.to_string());
            row(
                "storm: recovered / resynced",
                format!("{} / {}", s.recovered, s.not_recovered),
            );
        }
        if let Some(s) = &self.server {
            row(
                "server RSS before / after ramp",
                format!(
                    "{:.1} / {:.1} MiB",
                    s.rss_before as f64 / 1048576.0,
                    s.rss_after_ramp as f64 / 1048576.0
                ),
            );
            row(
                "server bytes per connection",
                format!("{:.0}", s.bytes_per_connection),
            );
            if let Some(cpu) = s.cpu_seconds_total {
                row("server CPU during the run", format!("{cpu:.2} s"));
            }
        }
        if let Some(r) = &self.redis {
            row(
                "redis RSS before / after ramp",
                format!(
                    "{:.1} / {:.1} MiB ({:.0} bytes per connection)",
                    r.rss_before as f64 / 1048576.0,
                    r.rss_after_ramp as f64 / 1048576.0,
                    r.bytes_per_connection
                ),
            );
        }
        if let Some(k) = &self.kernel {
            row(
                "kernel bytes per connection",
                format!(
                    "{:.0} (Slab {} -> {} KiB, both ends)",
                    k.bytes_per_connection, k.slab_before_kib, k.slab_after_ramp_kib
                ),
            );
        }
        if let Some(us) = self.server_cpu_us_per_delivery {
            row("server CPU per delivery", format!("{us:.2} us"));
        }
        t
    }

    /// One self-contained HTML page: the table and two charts.
    pub fn html(&self) -> String {
        register_font();
        let esc = |s: &str| {
            s.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
        };
        format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>client-sim: {scenario}</title>\
             <style>body{{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;padding:0 1em;color:#222}}\
             pre{{background:#f6f6f6;padding:1em;overflow-x:auto}}h2{{margin-top:2em}}</style></head><body>\
             <h1>client-sim report: {scenario}</h1><pre>{table}</pre>\
             <h2>Connections over time</h2>{conns}<h2>Delivery latency by percentile</h2>{latency}\
             <h2>Parameters</h2><pre>{params}</pre></body></html>\n",
            scenario = esc(&self.scenario),
            table = esc(&self.table()),
            conns = self.connections_chart(),
            latency = self.latency_chart(),
            params = esc(&serde_json::to_string_pretty(&self.params).unwrap_or_default()),
        )
    }

    fn connections_chart(&self) -> String {
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, (900, 320)).into_drawing_area();
            let _ = root.fill(&WHITE);
            let max_t = self.timeline.last().map_or(1, |(t, _)| *t).max(1) as f64 / 1000.0;
            let max_c = self
                .timeline
                .iter()
                .map(|(_, c)| *c)
                .max()
                .unwrap_or(1)
                .max(1) as f64;
            let chart = ChartBuilder::on(&root)
                .margin(15)
                .x_label_area_size(35)
                .y_label_area_size(60)
                .build_cartesian_2d(0.0..max_t, 0.0..max_c * 1.05);
            if let Ok(mut chart) = chart {
                let _ = chart
                    .configure_mesh()
                    .x_desc("seconds")
                    .y_desc("open connections")
                    .draw();
                let points = self
                    .timeline
                    .iter()
                    .map(|(t, c)| (*t as f64 / 1000.0, *c as f64));
                let _ = chart.draw_series(LineSeries::new(points, &BLUE));
            }
            let _ = root.present();
        }
        svg
    }

    fn latency_chart(&self) -> String {
        let h = stats::decode(&self.delivery_histogram);
        let mut svg = String::new();
        if h.is_empty() {
            return "<p>No deliveries measured in this scenario.</p>".into();
        }
        {
            let root = SVGBackend::with_string(&mut svg, (900, 320)).into_drawing_area();
            let _ = root.fill(&WHITE);
            // x: "nines" (0 = p0, 1 = p90, 2 = p99, 3 = p99.9), the usual latency view.
            let points: Vec<(f64, f64)> = (0..=300)
                .map(|i| {
                    let nines = i as f64 / 100.0;
                    let q = 1.0 - 10f64.powf(-nines);
                    (nines, h.value_at_quantile(q) as f64 / 1000.0)
                })
                .collect();
            let max_ms = points.iter().map(|p| p.1).fold(0.0, f64::max).max(0.001);
            let chart = ChartBuilder::on(&root)
                .margin(15)
                .x_label_area_size(35)
                .y_label_area_size(60)
                .build_cartesian_2d(0.0..3.0, 0.0..max_ms * 1.05);
            if let Ok(mut chart) = chart {
                let _ = chart
                    .configure_mesh()
                    .x_desc("percentile (0 = p0, 1 = p90, 2 = p99, 3 = p99.9)")
                    .y_desc("latency, ms")
                    .draw();
                let _ = chart.draw_series(LineSeries::new(points, &RED));
            }
            let _ = root.present();
        }
        svg
    }
}
