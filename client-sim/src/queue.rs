//! The `queue` scenario: N browsers join a Surge waiting room (a share of
//! them before `opens_at`, into the pre-queue), some drop and rejoin with
//! their ticket, and all wait to be admitted. It reports what fairness and
//! cost look like from the browsers' side: order violations, duplicates,
//! tickets lost on rejoin, admission rate achieved against configured,
//! messages per waiting user, time to admission, and the server's bytes
//! per waiting connection (from its admin metrics).
//!
//! Each browser is a tokio task with a tokio-tungstenite client: a client
//! we did not write, like the tests'. One process holds up to ~19,000 (the
//! machine's file limit); a room is in one Surge process, so this does not
//! spread over several.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

/// Connections being opened at once: enough to ramp fast, few enough not
/// to overflow the server's accept backlog.
const CONNECTING_AT_ONCE: usize = 256;
/// Longest a browser waits for any one message before counting as stuck.
const SILENCE: Duration = Duration::from_secs(120);

#[derive(clap::Args, Debug, Clone)]
pub struct QueueArgs {
    /// WebSocket URL of the server (wss:// with --ca FILE or --insecure).
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub url: String,
    #[command(flatten)]
    pub tls: crate::tls::TlsArgs,
    /// Publish API base URL (the room is created there).
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    pub api: String,
    /// Admin base URL, for the server's resident memory.
    #[arg(long, default_value = "http://127.0.0.1:9090")]
    pub admin: String,
    /// The publish API key, if the server has one.
    #[arg(long)]
    pub api_key: Option<String>,
    /// Browsers.
    #[arg(long, default_value_t = 1000)]
    pub users: usize,
    #[arg(long, default_value = "sim-queue")]
    pub room: String,
    #[arg(long, default_value_t = 6000)]
    pub admit_per_minute: u32,
    /// Share of browsers that join before the opening.
    #[arg(long, default_value_t = 0.2)]
    pub pre_queue: f64,
    /// Seconds from creating the room to its opening.
    #[arg(long, default_value_t = 5)]
    pub opens_in: u64,
    /// Share of browsers that drop once while waiting and rejoin with their ticket.
    #[arg(long, default_value_t = 0.1)]
    pub rejoin: f64,
    /// Write the report as JSON here.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// What one browser saw.
#[derive(Debug, Default)]
struct Seen {
    ticket: String,
    seq: Option<u64>,
    admissions: u32,
    queued_messages: u64,
    position_rises: u64,
    lost_on_rejoin: bool,
    waited: Duration,
    admitted_at: Option<Instant>,
    error: Option<String>,
}

/// The scenario's results.
#[derive(Debug, serde::Serialize)]
pub struct QueueReport {
    pub users: usize,
    pub admitted: usize,
    pub order_violations: u64,
    pub duplicates: u64,
    pub tickets_lost_on_rejoin: u64,
    pub position_rises: u64,
    pub failed: u64,
    pub configured_per_minute: u32,
    pub achieved_per_minute: f64,
    pub messages_per_waiting_user_per_minute: f64,
    pub wait_p50_s: f64,
    pub wait_p90_s: f64,
    pub wait_p99_s: f64,
    pub wait_max_s: f64,
    pub server_bytes_per_waiting_connection: Option<f64>,
}

impl QueueReport {
    pub fn passed(&self) -> bool {
        self.order_violations == 0
            && self.duplicates == 0
            && self.tickets_lost_on_rejoin == 0
            && self.failed == 0
            && self.admitted == self.users
    }

    pub fn table(&self) -> String {
        let bytes = self
            .server_bytes_per_waiting_connection
            .map_or("n/a".to_string(), |b| format!("{b:.0}"));
        format!(
            "queue: {} users, {} admitted, {} failed\n\
             order violations        {}\n\
             duplicates              {}\n\
             tickets lost on rejoin  {}\n\
             position rises          {}\n\
             admission rate          {:.0}/min achieved, {}/min configured\n\
             messages/waiting user   {:.2} per minute\n\
             time to admission       p50 {:.1} s, p90 {:.1} s, p99 {:.1} s, max {:.1} s\n\
             server bytes/waiting    {bytes} (RSS delta / users)\n",
            self.users,
            self.admitted,
            self.failed,
            self.order_violations,
            self.duplicates,
            self.tickets_lost_on_rejoin,
            self.position_rises,
            self.achieved_per_minute,
            self.configured_per_minute,
            self.messages_per_waiting_user_per_minute,
            self.wait_p50_s,
            self.wait_p90_s,
            self.wait_p99_s,
            self.wait_max_s,
        )
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn http(args: &QueueArgs, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
    let url = format!("{}{path}", args.api);
    let mut request = ureq::request(method, &url).timeout(Duration::from_secs(10));
    if let Some(key) = &args.api_key {
        request = request.set("Authorization", &format!("Bearer {key}"));
    }
    let answer = match body {
        Some(b) => request.send_string(&b.to_string()),
        None => request.call(),
    }
    .map_err(|e| format!("{method} {url}: {e}"))?;
    let text = answer
        .into_string()
        .map_err(|e| format!("{method} {url}: {e}"))?;
    serde_json::from_str(&text).map_err(|e| format!("{method} {url}: {e}"))
}

/// The server's resident memory, from its admin metrics.
fn server_rss(admin: &str) -> Option<u64> {
    let text = ureq::get(&format!("{admin}/metrics"))
        .timeout(Duration::from_secs(10))
        .call()
        .ok()?
        .into_string()
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("surge_resident_memory_bytes ")?.parse().ok())
}

/// Runs the scenario (creates the room, runs every browser, closes the room).
pub fn run(args: &QueueArgs) -> Result<QueueReport, String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: &QueueArgs) -> Result<QueueReport, String> {
    crate::tls::install_for(&args.url, &args.tls).map_err(|e| e.to_string())?;
    let rss_before = server_rss(&args.admin);
    let opens_at = unix_now() + args.opens_in;
    let path = format!("/api/rooms/{}", args.room);
    let settings = json!({"admit_per_minute": args.admit_per_minute, "opens_at": opens_at});
    http(args, "PUT", &path, Some(settings))?;
    let early = ((args.users as f64) * args.pre_queue) as usize;
    let rejoin_every = if args.rejoin > 0.0 {
        (1.0 / args.rejoin).round() as usize
    } else {
        usize::MAX
    };
    let gate = Arc::new(Semaphore::new(CONNECTING_AT_ONCE));
    let mut tasks = Vec::with_capacity(args.users);
    for i in 0..args.users {
        if i == early {
            while unix_now() <= opens_at {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let (url, room, gate) = (args.url.clone(), args.room.clone(), gate.clone());
        let rejoins = i % rejoin_every == rejoin_every / 2;
        tasks.push(tokio::spawn(browser(url, room, gate, rejoins)));
    }
    // Peak: everyone in line (or admitted) once the last has joined.
    let mut rss_peak = None;
    let mut seen = Vec::with_capacity(tasks.len());
    for t in tasks {
        if rss_peak.is_none() {
            let view = http(args, "GET", &path, None)?;
            if view["waiting"].as_u64().unwrap_or(0) as usize
                + view["admitted_total"].as_u64().unwrap_or(0) as usize
                >= args.users
            {
                rss_peak = server_rss(&args.admin);
            }
        }
        seen.push(t.await.map_err(|e| e.to_string())?);
    }
    let _ = http(args, "DELETE", &path, None);
    let bytes = match (rss_before, rss_peak) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / args.users as f64),
        _ => None,
    };
    Ok(report(args, &seen, bytes))
}

fn report(args: &QueueArgs, seen: &[Seen], bytes: Option<f64>) -> QueueReport {
    let mut admitted: Vec<&Seen> = seen.iter().filter(|s| s.seq.is_some()).collect();
    admitted.sort_by_key(|s| s.seq);
    // Pre-queue tickets first (any order among them), then places rising.
    let mut violations = 0;
    let mut in_line = false;
    let mut last_place = None;
    for s in &admitted {
        let parts: Vec<&str> = s.ticket.split('.').collect();
        let place: Option<u64> = parts.get(3).and_then(|n| n.parse().ok());
        match parts.first() {
            Some(&"p") if in_line => violations += 1,
            Some(&"p") => {}
            _ => {
                in_line = true;
                if place <= last_place {
                    violations += 1;
                }
                last_place = last_place.max(place);
            }
        }
    }
    let mut seqs: Vec<u64> = admitted.iter().filter_map(|s| s.seq).collect();
    seqs.dedup();
    let duplicates = (admitted.len() - seqs.len()) as u64
        + seen
            .iter()
            .map(|s| u64::from(s.admissions.saturating_sub(1)))
            .sum::<u64>();
    let times: Vec<Instant> = admitted.iter().filter_map(|s| s.admitted_at).collect();
    let achieved = match (times.iter().min(), times.iter().max()) {
        (Some(a), Some(b)) if b > a => (times.len() - 1) as f64 / (*b - *a).as_secs_f64() * 60.0,
        _ => 0.0,
    };
    let waiting_minutes: f64 = seen.iter().map(|s| s.waited.as_secs_f64() / 60.0).sum();
    let messages: u64 = seen.iter().map(|s| s.queued_messages).sum();
    let mut waits: Vec<f64> = admitted.iter().map(|s| s.waited.as_secs_f64()).collect();
    waits.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        waits
            .get(((waits.len() as f64 * p) as usize).min(waits.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    for s in seen.iter().filter_map(|s| s.error.as_ref()).take(5) {
        eprintln!("queue: a browser failed: {s}");
    }
    QueueReport {
        users: seen.len(),
        admitted: admitted.len(),
        order_violations: violations,
        duplicates,
        tickets_lost_on_rejoin: seen.iter().filter(|s| s.lost_on_rejoin).count() as u64,
        position_rises: seen.iter().map(|s| s.position_rises).sum(),
        failed: seen.iter().filter(|s| s.error.is_some()).count() as u64,
        configured_per_minute: args.admit_per_minute,
        achieved_per_minute: achieved,
        messages_per_waiting_user_per_minute: if waiting_minutes > 0.0 {
            messages as f64 / waiting_minutes
        } else {
            0.0
        },
        wait_p50_s: pct(0.5),
        wait_p90_s: pct(0.9),
        wait_p99_s: pct(0.99),
        wait_max_s: waits.last().copied().unwrap_or(0.0),
        server_bytes_per_waiting_connection: bytes,
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(url: &str, gate: &Semaphore) -> Result<Ws, String> {
    let _permit = gate.acquire().await.map_err(|e| e.to_string())?;
    let ws = tokio::time::timeout(SILENCE, crate::tls::connect_ws(url))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    Ok(ws)
}

async fn next(ws: &mut Ws) -> Result<Value, String> {
    loop {
        let msg = tokio::time::timeout(SILENCE, ws.next())
            .await
            .map_err(|_| "silent too long".to_string())?
            .ok_or("closed")?
            .map_err(|e| e.to_string())?;
        if let Message::Text(t) = msg {
            return serde_json::from_str(&t).map_err(|e| e.to_string());
        }
    }
}

async fn join(ws: &mut Ws, room: &str, ticket: Option<&str>) -> Result<(), String> {
    let mut cmd = json!({"op": "join", "room": room});
    if let Some(t) = ticket {
        cmd["ticket"] = json!(t);
    }
    ws.send(Message::Text(cmd.to_string()))
        .await
        .map_err(|e| e.to_string())
}

/// One browser: joins, waits (dropping and rejoining once if `rejoins`),
/// until admitted.
async fn browser(url: String, room: String, gate: Arc<Semaphore>, rejoins: bool) -> Seen {
    let mut seen = Seen::default();
    if let Err(e) = wait(&url, &room, &gate, rejoins, &mut seen).await {
        seen.error = Some(e);
    }
    seen
}

async fn wait(
    url: &str,
    room: &str,
    gate: &Semaphore,
    rejoins: bool,
    seen: &mut Seen,
) -> Result<(), String> {
    let mut ws = open(url, gate).await?;
    let started = Instant::now();
    join(&mut ws, room, None).await?;
    let mut last_position = u64::MAX;
    let mut to_rejoin = rejoins;
    loop {
        let v = next(&mut ws).await?;
        match v["op"].as_str() {
            Some("queued") => {
                if let Some(t) = v["ticket"].as_str() {
                    seen.ticket = t.to_string();
                } else {
                    seen.queued_messages += 1;
                }
                if let Some(p) = v["position"].as_u64() {
                    if p > last_position {
                        seen.position_rises += 1;
                    }
                    last_position = p;
                }
                if to_rejoin && v["ticket"].is_null() {
                    to_rejoin = false;
                    drop(ws);
                    ws = open(url, gate).await?;
                    join(&mut ws, room, Some(&seen.ticket.clone())).await?;
                }
            }
            Some("admitted") => {
                seen.admissions += 1;
                seen.seq = v["seq"].as_u64();
                seen.waited = started.elapsed();
                seen.admitted_at = Some(Instant::now());
                // Anything more (a second admission) would show in the
                // next quarter second.
                if let Ok(Ok(Some(Ok(Message::Text(t))))) =
                    tokio::time::timeout(Duration::from_millis(250), ws.next())
                        .await
                        .map(Ok::<_, ()>)
                {
                    if t.contains("\"admitted\"") {
                        seen.admissions += 1;
                    }
                }
                return Ok(());
            }
            Some("error") => {
                let code = v["code"].as_str().unwrap_or("");
                if code == "ticket_expired" || code == "bad_ticket" {
                    seen.lost_on_rejoin = true;
                }
                return Err(format!("error frame: {v}"));
            }
            _ => {}
        }
    }
}
