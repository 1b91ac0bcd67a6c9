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
//! machine's file limit): with `--procs N` the room is created here and N
//! child processes of this program share the browsers (and `--src-ips`,
//! for ephemeral ports), each writing what its browsers saw to a file this
//! one merges into one report. Several Surge nodes sharing the room
//! through Redis (`benches million --scenario queue`) then hold them.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
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
    /// Processes to spread the browsers over (each holds at most ~19,000).
    #[arg(long, default_value_t = 1)]
    pub procs: usize,
    /// Source addresses for the browsers' connections (as for the other
    /// scenarios: a range, a list or a CIDR block), split over the processes.
    #[arg(long)]
    pub src_ips: Option<String>,
    /// Server processes whose resident memory gives the bytes per waiting
    /// connection (comma-separated); without it, `--admin`'s metrics.
    #[arg(long, value_delimiter = ',')]
    pub server_pid: Vec<u32>,
    /// Internal: run as one of `--procs` children, joining at this opening
    /// (Unix seconds) and writing what the browsers saw to `--child-out`.
    #[arg(long, hide = true)]
    pub child_opens_at: Option<u64>,
    #[arg(long, hide = true)]
    pub child_out: Option<PathBuf>,
    /// Internal: the first browser's number in the whole run.
    #[arg(long, hide = true, default_value_t = 0)]
    pub child_first: usize,
}

/// What one browser saw (written by child processes, read by the parent).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Seen {
    ticket: String,
    seq: Option<u64>,
    admissions: u32,
    queued_messages: u64,
    position_rises: u64,
    lost_on_rejoin: bool,
    waited_s: f64,
    /// Unix seconds, so processes' admissions share one clock.
    admitted_at: Option<f64>,
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
    unix_now_f64() as u64
}

fn unix_now_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
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

/// The servers' resident memory: of `--server-pid`s, else from the admin
/// metrics.
fn server_rss(args: &QueueArgs) -> Option<u64> {
    if !args.server_pid.is_empty() {
        let rss = args
            .server_pid
            .iter()
            .map(|pid| crate::sys::process_usage(*pid).map(|(rss, _)| rss))
            .sum::<Option<u64>>();
        return rss;
    }
    let admin = &args.admin;
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
    if let (Some(opens_at), Some(out)) = (args.child_opens_at, &args.child_out) {
        let seen = browsers(args, opens_at).await?;
        let text = serde_json::to_string(&seen).map_err(|e| e.to_string())?;
        std::fs::write(out, text).map_err(|e| format!("{}: {e}", out.display()))?;
        return Ok(report(args, &seen, None));
    }
    let rss_before = server_rss(args);
    let opens_at = unix_now() + args.opens_in;
    let path = format!("/api/rooms/{}", args.room);
    let settings = json!({"admit_per_minute": args.admit_per_minute, "opens_at": opens_at});
    http(args, "PUT", &path, Some(settings))?;
    let children = if args.procs > 1 {
        spawn_children(args, opens_at)?
    } else {
        Vec::new()
    };
    let local = if children.is_empty() {
        Some(tokio::spawn(browsers_owned(args.clone(), opens_at)))
    } else {
        None
    };
    // Peak: everyone in line (or admitted) once the last has joined.
    let mut rss_peak = None;
    loop {
        let view = http(args, "GET", &path, None)?;
        if view["waiting"].as_u64().unwrap_or(0) as usize
            + view["admitted_total"].as_u64().unwrap_or(0) as usize
            >= args.users
        {
            rss_peak = server_rss(args);
            break;
        }
        let done = local.as_ref().is_some_and(|t| t.is_finished());
        if done || unix_now() > opens_at + SILENCE.as_secs() * 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut seen = match local {
        Some(task) => task.await.map_err(|e| e.to_string())??,
        None => Vec::new(),
    };
    for (mut child, out) in children {
        let status = tokio::task::spawn_blocking(move || child.wait())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let text = std::fs::read_to_string(&out)
            .map_err(|e| format!("a queue process ({status}) wrote nothing: {e}"))?;
        let part: Vec<Seen> = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        seen.extend(part);
        let _ = std::fs::remove_file(&out);
    }
    let _ = http(args, "DELETE", &path, None);
    let bytes = match (rss_before, rss_peak) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / args.users as f64),
        _ => None,
    };
    Ok(report(args, &seen, bytes))
}

/// Starts `--procs` copies of this program, each with its share of the
/// browsers and of the source addresses.
fn spawn_children(
    args: &QueueArgs,
    opens_at: u64,
) -> Result<Vec<(std::process::Child, PathBuf)>, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let ips = match &args.src_ips {
        Some(spec) => crate::srcips::parse(spec)?,
        None => Vec::new(),
    };
    let mut children = Vec::with_capacity(args.procs);
    let mut first = 0;
    for i in 0..args.procs {
        let users = args.users / args.procs + usize::from(i < args.users % args.procs);
        let out =
            std::env::temp_dir().join(format!("client-sim-queue-{}-{i}.json", std::process::id()));
        let mine: Vec<String> = ips
            .iter()
            .enumerate()
            .filter(|(j, _)| ips.len() < args.procs || j % args.procs == i)
            .map(|(_, ip)| ip.to_string())
            .collect();
        let mut cmd = std::process::Command::new(&exe);
        cmd.arg("queue")
            .args(["--url", &args.url, "--api", &args.api, "--room", &args.room])
            .args(["--users", &users.to_string()])
            .args(["--pre-queue", &args.pre_queue.to_string()])
            .args(["--rejoin", &args.rejoin.to_string()])
            .args(["--admit-per-minute", &args.admit_per_minute.to_string()])
            .args(["--child-opens-at", &opens_at.to_string()])
            .args(["--child-first", &first.to_string()])
            .arg("--child-out")
            .arg(&out)
            .stdout(std::process::Stdio::null());
        if !mine.is_empty() {
            cmd.args(["--src-ips", &mine.join(",")]);
        }
        // Each process trusts what its parent trusts.
        if args.tls.insecure {
            cmd.arg("--insecure");
        }
        if let Some(ca) = &args.tls.ca {
            cmd.arg("--ca").arg(ca);
        }
        first += users;
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start a queue process: {e}"))?;
        children.push((child, out));
    }
    Ok(children)
}

async fn browsers_owned(args: QueueArgs, opens_at: u64) -> Result<Vec<Seen>, String> {
    browsers(&args, opens_at).await
}

/// Runs this process's browsers: the first `--pre-queue` share joins before
/// the opening, the rest after it.
async fn browsers(args: &QueueArgs, opens_at: u64) -> Result<Vec<Seen>, String> {
    let ips = match &args.src_ips {
        Some(spec) => crate::srcips::parse(spec)?,
        None => Vec::new(),
    };
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
        let n = args.child_first + i;
        let src = (!ips.is_empty()).then(|| ips[n % ips.len()]);
        let (url, room, gate) = (args.url.clone(), args.room.clone(), gate.clone());
        let rejoins = n % rejoin_every == rejoin_every / 2;
        tasks.push(tokio::spawn(browser(url, room, gate, rejoins, src)));
    }
    let mut seen = Vec::with_capacity(tasks.len());
    for t in tasks {
        seen.push(t.await.map_err(|e| e.to_string())?);
    }
    Ok(seen)
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
    let times: Vec<f64> = admitted.iter().filter_map(|s| s.admitted_at).collect();
    let first = times.iter().copied().reduce(f64::min);
    let last = times.iter().copied().reduce(f64::max);
    let achieved = match (first, last) {
        (Some(a), Some(b)) if b > a => (times.len() - 1) as f64 / (b - a) * 60.0,
        _ => 0.0,
    };
    let waiting_minutes: f64 = seen.iter().map(|s| s.waited_s / 60.0).sum();
    let messages: u64 = seen.iter().map(|s| s.queued_messages).sum();
    let mut waits: Vec<f64> = admitted.iter().map(|s| s.waited_s).collect();
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

async fn open(url: &str, gate: &Semaphore, src: Option<Ipv4Addr>) -> Result<Ws, String> {
    let _permit = gate.acquire().await.map_err(|e| e.to_string())?;
    let connect = async {
        let Some(src) = src else {
            return crate::tls::connect_ws(url)
                .await
                .map_err(|e| format!("connect: {e}"));
        };
        // From a chosen loopback address: each gives another range of
        // ephemeral ports towards the one server port.
        let to: SocketAddr = url
            .strip_prefix("ws://")
            .or_else(|| url.strip_prefix("wss://"))
            .and_then(|rest| rest.split('/').next())
            .and_then(|host| host.parse().ok())
            .ok_or_else(|| format!("--src-ips needs a ws[s]://IP:PORT/ url, not {url}"))?;
        let socket = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
        socket
            .bind(SocketAddr::new(src.into(), 0))
            .map_err(|e| format!("bind {src}: {e}"))?;
        let stream = socket
            .connect(to)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        crate::tls::connect_ws_over(url, stream)
            .await
            .map_err(|e| format!("handshake: {e}"))
    };
    tokio::time::timeout(SILENCE, connect)
        .await
        .map_err(|_| "connect timed out".to_string())?
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
async fn browser(
    url: String,
    room: String,
    gate: Arc<Semaphore>,
    rejoins: bool,
    src: Option<Ipv4Addr>,
) -> Seen {
    let mut seen = Seen::default();
    if let Err(e) = wait(&url, &room, &gate, rejoins, src, &mut seen).await {
        seen.error = Some(e);
    }
    seen
}

async fn wait(
    url: &str,
    room: &str,
    gate: &Semaphore,
    rejoins: bool,
    src: Option<Ipv4Addr>,
    seen: &mut Seen,
) -> Result<(), String> {
    let mut ws = open(url, gate, src).await?;
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
                    ws = open(url, gate, src).await?;
                    join(&mut ws, room, Some(&seen.ticket.clone())).await?;
                }
            }
            Some("admitted") => {
                seen.admissions += 1;
                seen.seq = v["seq"].as_u64();
                seen.waited_s = started.elapsed().as_secs_f64();
                seen.admitted_at = Some(unix_now_f64());
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
