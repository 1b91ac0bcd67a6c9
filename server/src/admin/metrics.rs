//! The counters behind /metrics and /stats.
//!
//! Each worker writes only its own cache-padded block, so counting a delivery
//! is an uncontended add, never a cache line bouncing between cores; the
//! admin thread sums the blocks when scraped. It must not lock or allocate on
//! the paths that count.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Instant;

use crossbeam_utils::CachePadded;

use crate::admin::histogram::{self, Histogram};
use crate::channels::protocol::ErrorCode;
use crate::channels::token::TokenError;
use crate::tls::refusal::{TlsRefusal, HANDSHAKE_KINDS};
use crate::wire::close;
use crate::wire::handshake::HandshakeError;

/// Close codes counted one by one; anything else is counted as "other".
pub const CLOSE_CODES: [u16; 12] = [
    close::NORMAL,
    close::GOING_AWAY,
    close::PROTOCOL_ERROR,
    close::UNSUPPORTED_DATA,
    close::ABNORMAL,
    close::INVALID_PAYLOAD,
    close::POLICY_VIOLATION,
    close::MESSAGE_TOO_BIG,
    close::INTERNAL_ERROR,
    close::SERVICE_RESTART,
    close::TOO_SLOW,
    close::NO_PONG,
];

/// Publish API statuses counted one by one when a request is refused;
/// anything else is counted as "other".
pub const PUBLISH_REFUSALS: [u16; 6] = [400, 401, 408, 413, 500, 503];

/// Counters written by one worker thread only.
#[derive(Default)]
pub struct WorkerMetrics {
    pub open: AtomicU64,
    pub channels: AtomicU64,
    pub accepted: AtomicU64,
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub deliveries: AtomicU64,
    pub slow_closes: AtomicU64,
    /// Publications replayed to recovering subscribers.
    pub replayed: AtomicU64,
    pub token_refusals: [AtomicU64; TokenError::LABELS.len()],
    pub handshake_failures: [AtomicU64; HandshakeError::LABELS.len()],
    /// Connections on the TLS port closed before speaking HTTP, by
    /// [`TlsRefusal`]; always zero on a plain port.
    pub tls_refused: [AtomicU64; TlsRefusal::LABELS.len()],
    /// TLS handshakes completed, indexed like [`HANDSHAKE_KINDS`].
    pub tls_handshakes: [AtomicU64; HANDSHAKE_KINDS.len()],
    /// Indexed like [`CLOSE_CODES`], plus one slot for other codes.
    pub closes: [AtomicU64; CLOSE_CODES.len() + 1],
    /// Connections closed 1008 for sending frames past their rate.
    pub rate_limited: AtomicU64,
    /// Panics caught while handling one connection's event (each closed 1011).
    pub panics: AtomicU64,
    /// Connections refused at accept with a bare close, past the shedding
    /// budget (the others got a 503 and are counted as handshake failures).
    pub dropped_at_accept: AtomicU64,
    /// The second (of the worker's clock) its loop last turned: the
    /// systemd watchdog sees a stuck worker by this standing still.
    pub heartbeat: AtomicU64,
    /// Browser commands answered with `{"op":"error"}`, indexed by
    /// [`ErrorCode`] (`code as usize`).
    pub command_errors: [AtomicU64; ErrorCode::ALL.len()],
    /// From a publication's hand-off to the workers until this worker has
    /// written it to its subscribers: one observation per publication.
    pub publish_latency: Histogram,
    /// How long this worker's fan-out of a publication took (a burst is
    /// written together; each of its publications counts the burst's time).
    pub fan_out: Histogram,
}

impl WorkerMetrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub fn count_close(&self, code: u16) {
        let slot = CLOSE_CODES
            .iter()
            .position(|c| *c == code)
            .unwrap_or(CLOSE_CODES.len());
        self.closes[slot].fetch_add(1, Relaxed);
    }
}

/// All counters of one server.
pub struct Metrics {
    pub workers: Vec<CachePadded<WorkerMetrics>>,
    /// Upgraded connections across workers.
    pub open_connections: AtomicUsize,
    /// Sockets held on the public port (in the handshake, open or
    /// closing); checked against the connection limit at accept.
    pub sockets: AtomicUsize,
    /// Worker threads that died; /healthz is not 200 while it is non-zero.
    pub dead_workers: AtomicU64,
    /// Connections the publish port turned away at its cap.
    pub publish_busy: AtomicU64,
    /// Connections the admin port turned away at its cap.
    pub admin_busy: AtomicU64,
    pub publish_requests: AtomicU64,
    pub publish_rejected: AtomicU64,
    /// Indexed like [`PUBLISH_REFUSALS`], plus one slot for other statuses.
    pub publish_refusals: [AtomicU64; PUBLISH_REFUSALS.len() + 1],
    /// Set when a drain begins: /readyz answers 503 and, in-process, the
    /// publish API refuses with 503 rather than accept what nobody gets.
    pub draining: std::sync::atomic::AtomicBool,
    /// Set by `POST /drain` on the admin port; the main thread starts the
    /// drain when it sees it.
    pub drain_requested: std::sync::atomic::AtomicBool,
    pub publications: AtomicU64,
    /// Updated by the publish API after each request.
    pub history_bytes: AtomicU64,
    pub started: Instant,
    pub max_connections: usize,
    /// The engine, for its health and figures (set once at start).
    pub engine: std::sync::OnceLock<crate::engine::SharedEngine>,
    /// The waiting rooms, for their per-room series (set once at start).
    pub rooms: std::sync::OnceLock<std::sync::Arc<crate::rooms::Rooms>>,
    /// The public port's TLS, when configured: its certificate's expiry.
    pub tls: std::sync::OnceLock<std::sync::Arc<crate::tls::Acceptor>>,
}

impl Metrics {
    pub fn new(workers: usize, max_connections: usize) -> Metrics {
        Metrics {
            workers: (0..workers)
                .map(|_| CachePadded::new(WorkerMetrics::default()))
                .collect(),
            open_connections: AtomicUsize::new(0),
            sockets: AtomicUsize::new(0),
            dead_workers: AtomicU64::new(0),
            publish_busy: AtomicU64::new(0),
            admin_busy: AtomicU64::new(0),
            publish_requests: AtomicU64::new(0),
            publish_rejected: AtomicU64::new(0),
            publish_refusals: Default::default(),
            draining: Default::default(),
            drain_requested: Default::default(),
            publications: AtomicU64::new(0),
            history_bytes: AtomicU64::new(0),
            started: Instant::now(),
            max_connections,
            engine: std::sync::OnceLock::new(),
            rooms: std::sync::OnceLock::new(),
            tls: std::sync::OnceLock::new(),
        }
    }

    /// Counts a refused publish request by the status it was answered with.
    pub fn count_publish_refusal(&self, status: u16) {
        self.publish_rejected.fetch_add(1, Relaxed);
        let slot = PUBLISH_REFUSALS
            .iter()
            .position(|s| *s == status)
            .unwrap_or(PUBLISH_REFUSALS.len());
        self.publish_refusals[slot].fetch_add(1, Relaxed);
    }

    fn sum(&self, pick: impl Fn(&WorkerMetrics) -> &AtomicU64) -> u64 {
        self.workers.iter().map(|w| pick(w).load(Relaxed)).sum()
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn prometheus(&self) -> String {
        let mut out = String::with_capacity(4096);
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
            let _ = writeln!(
                out,
                "# HELP surge_{name} {help}\n# TYPE surge_{name} {kind}"
            );
            for (labels, value) in samples {
                let _ = writeln!(out, "surge_{name}{labels} {value}");
            }
        };
        let one = |v: u64| vec![(String::new(), v)];
        let open = self.open_connections.load(Relaxed) as u64;
        metric(
            "open_connections",
            "gauge",
            "Upgraded WebSocket connections.",
            &one(open),
        );
        metric(
            "max_connections",
            "gauge",
            "The connection limit in force; upgrades past it get 503.",
            &one(self.max_connections as u64),
        );
        let per_worker: Vec<_> = self
            .workers
            .iter()
            .enumerate()
            .map(|(i, w)| (format!("{{worker=\"{i}\"}}"), w.open.load(Relaxed)))
            .collect();
        metric(
            "worker_connections",
            "gauge",
            "Upgraded connections per worker.",
            &per_worker,
        );
        let channels = self.sum(|w| &w.channels);
        metric(
            "channels",
            "gauge",
            "Channels with subscribers, summed over workers.",
            &one(channels),
        );
        metric(
            "accepted_total",
            "counter",
            "TCP connections accepted.",
            &one(self.sum(|w| &w.accepted)),
        );
        let failures: Vec<_> = HandshakeError::LABELS
            .iter()
            .enumerate()
            .map(|(i, l)| {
                (
                    format!("{{reason=\"{l}\"}}"),
                    self.sum(|w| &w.handshake_failures[i]),
                )
            })
            .collect();
        metric(
            "handshake_failures_total",
            "counter",
            "Refused or abandoned upgrades by reason.",
            &failures,
        );
        let tls_refused: Vec<_> = TlsRefusal::LABELS
            .iter()
            .enumerate()
            .map(|(i, l)| {
                (
                    format!("{{reason=\"{l}\"}}"),
                    self.sum(|w| &w.tls_refused[i]),
                )
            })
            .collect();
        metric(
            "tls_refused_total",
            "counter",
            "Connections to the TLS port closed before any HTTP, by reason (plain HTTP, not TLS, failed or timed-out handshake).",
            &tls_refused,
        );
        let tls_handshakes: Vec<_> = HANDSHAKE_KINDS
            .iter()
            .enumerate()
            .map(|(i, k)| {
                (
                    format!("{{kind=\"{k}\"}}"),
                    self.sum(|w| &w.tls_handshakes[i]),
                )
            })
            .collect();
        metric(
            "tls_handshakes_total",
            "counter",
            "TLS handshakes completed: full, or resumed with a session ticket.",
            &tls_handshakes,
        );
        let expiry = self.tls.get().map_or(0, |tls| tls.not_after());
        metric(
            "tls_certificate_expiry_timestamp_seconds",
            "gauge",
            "When the certificate new handshakes get expires (Unix time); 0 without TLS.",
            &one(u64::try_from(expiry).unwrap_or(0)),
        );
        let closes: Vec<_> = (0..=CLOSE_CODES.len())
            .map(|i| {
                let code = CLOSE_CODES
                    .get(i)
                    .map_or("other".to_string(), |c| c.to_string());
                (format!("{{code=\"{code}\"}}"), self.sum(|w| &w.closes[i]))
            })
            .collect();
        metric(
            "closes_total",
            "counter",
            "WebSocket closes by close code (1006: dropped without one).",
            &closes,
        );
        metric(
            "frames_in_total",
            "counter",
            "Frames received.",
            &one(self.sum(|w| &w.frames_in)),
        );
        metric(
            "frames_out_total",
            "counter",
            "Frames sent or queued.",
            &one(self.sum(|w| &w.frames_out)),
        );
        metric(
            "bytes_in_total",
            "counter",
            "Bytes read from clients.",
            &one(self.sum(|w| &w.bytes_in)),
        );
        metric(
            "bytes_out_total",
            "counter",
            "Bytes written to clients.",
            &one(self.sum(|w| &w.bytes_out)),
        );
        let pubs = self.publications.load(Relaxed);
        metric(
            "publications_total",
            "counter",
            "Publications accepted by the publish API.",
            &one(pubs),
        );
        let deliveries = self.sum(|w| &w.deliveries);
        metric(
            "deliveries_total",
            "counter",
            "Publications written or queued to a subscriber.",
            &one(deliveries),
        );
        let slow = self.sum(|w| &w.slow_closes);
        metric(
            "slow_consumer_closes_total",
            "counter",
            "Connections closed for unsent bytes over the bound.",
            &one(slow),
        );
        let replayed = self.sum(|w| &w.replayed);
        metric(
            "replayed_total",
            "counter",
            "Publications replayed to recovering subscribers.",
            &one(replayed),
        );
        let refusals: Vec<_> = TokenError::LABELS
            .iter()
            .enumerate()
            .map(|(i, l)| {
                (
                    format!("{{reason=\"{l}\"}}"),
                    self.sum(|w| &w.token_refusals[i]),
                )
            })
            .collect();
        metric(
            "token_refusals_total",
            "counter",
            "Private channel subscriptions refused, by reason.",
            &refusals,
        );
        let history = self.history_bytes.load(Relaxed);
        metric(
            "history_bytes",
            "gauge",
            "Bytes held by channel history and last values.",
            &one(history),
        );
        let reqs = self.publish_requests.load(Relaxed);
        metric(
            "publish_requests_total",
            "counter",
            "Requests to the publish API.",
            &one(reqs),
        );
        let rejected = self.publish_rejected.load(Relaxed);
        metric(
            "publish_rejected_total",
            "counter",
            "Publish requests answered with an error.",
            &one(rejected),
        );
        if let Some(engine) = self.engine.get() {
            let status = engine.status();
            let kind = format!("{{engine=\"{}\"}}", status.kind);
            metric(
                "engine_connected",
                "gauge",
                "1 while the engine's shared store (Redis) is reachable; always 1 in-process.",
                &[(kind.clone(), u64::from(status.connected))],
            );
            metric(
                "engine_reconnects_total",
                "counter",
                "Times a connection to the shared store was re-established.",
                &[(kind.clone(), status.reconnects)],
            );
            metric(
                "engine_rtt_microseconds",
                "gauge",
                "Last measured round trip to the shared store.",
                &[(kind.clone(), status.rtt_us)],
            );
            metric(
                "engine_pubsub_lag_milliseconds",
                "gauge",
                "Time the last publication took from the shared store to this node.",
                &[(kind.clone(), status.pubsub_lag_ms)],
            );
            metric(
                "engine_followed_channels",
                "gauge",
                "Channels this node follows in the shared store.",
                &[(kind, status.followed_channels)],
            );
        }
        metric(
            "public_sockets",
            "gauge",
            "Sockets held on the public port, handshakes included.",
            &one(self.sockets.load(Relaxed) as u64),
        );
        metric(
            "rate_limit_closes_total",
            "counter",
            "Connections closed 1008 for frames or commands past their rate.",
            &one(self.sum(|w| &w.rate_limited)),
        );
        metric(
            "handler_panics_total",
            "counter",
            "Panics caught handling one connection (that connection closed 1011).",
            &one(self.sum(|w| &w.panics)),
        );
        metric(
            "dropped_at_accept_total",
            "counter",
            "Connections closed at accept without an answer (shedding budget spent).",
            &one(self.sum(|w| &w.dropped_at_accept)),
        );
        metric(
            "dead_workers",
            "gauge",
            "Worker threads that died (the process exits to be restarted).",
            &one(self.dead_workers.load(Relaxed)),
        );
        let busy = vec![
            (
                "{port=\"publish\"}".to_string(),
                self.publish_busy.load(Relaxed),
            ),
            (
                "{port=\"admin\"}".to_string(),
                self.admin_busy.load(Relaxed),
            ),
        ];
        metric(
            "http_busy_total",
            "counter",
            "Connections turned away at a port's connection cap.",
            &busy,
        );
        let rss = crate::core::sys::resident_bytes().unwrap_or(0);
        metric(
            "resident_memory_bytes",
            "gauge",
            "Resident set size of the process.",
            &one(rss),
        );
        let refusals: Vec<_> = (0..=PUBLISH_REFUSALS.len())
            .map(|i| {
                let status = PUBLISH_REFUSALS
                    .get(i)
                    .map_or("other".to_string(), |s| s.to_string());
                (
                    format!("{{status=\"{status}\"}}"),
                    self.publish_refusals[i].load(Relaxed),
                )
            })
            .collect();
        metric(
            "publish_refusals_total",
            "counter",
            "Publish requests refused, by the HTTP status answered (503: overloaded or draining; the backend retries).",
            &refusals,
        );
        let errors: Vec<_> = ErrorCode::ALL
            .iter()
            .map(|code| {
                (
                    format!("{{code=\"{}\"}}", code.as_str()),
                    self.sum(|w| &w.command_errors[*code as usize]),
                )
            })
            .collect();
        metric(
            "command_errors_total",
            "counter",
            "Browser commands refused with an error reply, by code (forbidden: also in token_refusals by reason).",
            &errors,
        );
        let fds = crate::ops::process::open_descriptors().unwrap_or(0);
        metric(
            "process_open_fds",
            "gauge",
            "Descriptors the process holds: every connection, listener and file.",
            &one(fds),
        );
        let limit = crate::core::sys::open_file_limit() as u64;
        metric(
            "process_max_fds",
            "gauge",
            "The process's descriptor limit (RLIMIT_NOFILE); accept fails past it.",
            &one(limit),
        );
        let cpu = crate::ops::process::cpu_seconds().unwrap_or(0.0);
        let _ = writeln!(
            out,
            "# HELP surge_process_cpu_seconds_total User and system CPU time of the process.\n\
             # TYPE surge_process_cpu_seconds_total counter\n\
             surge_process_cpu_seconds_total {cpu}"
        );
        histogram::render(
            &mut out,
            "surge_publish_latency_seconds",
            "From a publication's hand-off to the workers until a worker has written it to its subscribers.",
            self.workers.iter().map(|w| &w.publish_latency),
        );
        histogram::render(
            &mut out,
            "surge_fan_out_seconds",
            "A worker's fan-out of one publication to its subscribers (a burst's members each count the burst).",
            self.workers.iter().map(|w| &w.fan_out),
        );
        if let Some(rooms) = self.rooms.get() {
            rooms.prometheus(&mut out, crate::rooms::now_ms());
        }
        out
    }

    /// Why this server is not healthy, if it is not: today, an engine that
    /// cannot reach its shared store (new subscriptions and publishes fail).
    pub fn unhealthy(&self) -> Option<String> {
        let dead = self.dead_workers.load(Relaxed);
        if dead > 0 {
            return Some(format!("{dead} worker(s) died; restart me"));
        }
        let engine = self.engine.get()?;
        let status = engine.status();
        (!status.connected).then(|| format!("{} engine disconnected", status.kind))
    }

    /// The same figures as JSON for /stats.
    pub fn stats_json(&self) -> String {
        let workers: Vec<_> = self
            .workers
            .iter()
            .map(|w| serde_json::json!({ "connections": w.open.load(Relaxed), "channels": w.channels.load(Relaxed) }))
            .collect();
        serde_json::json!({
            "uptime_secs": self.started.elapsed().as_secs(),
            "open_connections": self.open_connections.load(Relaxed),
            "max_connections": self.max_connections,
            "accepted": self.sum(|w| &w.accepted),
            "publications": self.publications.load(Relaxed),
            "deliveries": self.sum(|w| &w.deliveries),
            "slow_consumer_closes": self.sum(|w| &w.slow_closes),
            "replayed": self.sum(|w| &w.replayed),
            "history_bytes": self.history_bytes.load(Relaxed),
            "frames_in": self.sum(|w| &w.frames_in),
            "frames_out": self.sum(|w| &w.frames_out),
            "bytes_in": self.sum(|w| &w.bytes_in),
            "bytes_out": self.sum(|w| &w.bytes_out),
            "resident_bytes": crate::core::sys::resident_bytes(),
            "engine": self.engine.get().map(|e| {
                let s = e.status();
                serde_json::json!({
                    "kind": s.kind,
                    "connected": s.connected,
                    "reconnects": s.reconnects,
                    "rtt_us": s.rtt_us,
                    "pubsub_lag_ms": s.pubsub_lag_ms,
                    "followed_channels": s.followed_channels,
                })
            }),
            "workers": workers,
        })
        .to_string()
    }
}
