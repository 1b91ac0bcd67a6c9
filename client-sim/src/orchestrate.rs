//! The parent process: splits the connections over worker processes (as
//! many as the open-file limit requires), gives each its share of source
//! addresses, shows progress, drives the scenario (publishing, storms),
//! samples the server's memory and CPU, and merges everything into a report.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::{Child, ChildStdin, Command as Process, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use indicatif::{ProgressBar, ProgressStyle};

use crate::engine::{Command, Event, Policy, WorkerSpec};
use crate::publisher::Publisher;
use crate::report::{KernelUsage, Report, ServerUsage};
use crate::stats::Stats;
use crate::{srcips, sys};

/// Descriptors a worker process keeps for itself (stdio, epoll, waker...).
const FD_RESERVE: u64 = 256;
/// How often the storm scenario publishes to every clinic while dropped
/// clients reconnect: often enough that a full-jitter storm (a 250 ms first
/// window) misses several rounds, rarely enough to stay a small load.
const STORM_PUBLISH_EVERY: Duration = Duration::from_millis(20);
/// How long a worker process may take to answer a progress question
/// before it is taken for stuck; it answers from memory in milliseconds.
const REPORT_REPLY: Duration = Duration::from_secs(10);

/// Options every scenario shares.
#[derive(Clone, Debug, clap::Args, serde::Serialize)]
pub struct Common {
    /// WebSocket URL of the server: ws://HOST:PORT/PATH, or wss:// with
    /// --ca FILE or --insecure.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub url: String,
    #[command(flatten)]
    pub tls: crate::tls::TlsArgs,
    /// Base URL of the publish API; several nodes' APIs comma-separated,
    /// used in turn (a node that refuses connections is skipped).
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:8081")]
    pub publish: Vec<String>,
    /// Send every publication to every --publish node: for nodes that share
    /// no engine, so each needs its own copy.
    #[arg(long)]
    pub publish_each: bool,
    /// Connections to open.
    #[arg(long, default_value_t = 1000)]
    pub conns: u64,
    /// Connections opened per second while ramping (all processes together).
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,
    /// Seconds to hold the connections once ramped.
    #[arg(long, default_value_t = 5)]
    pub hold: u64,
    /// Worker processes; 0: as many as the open-file limit requires.
    #[arg(long, default_value_t = 0)]
    pub procs: usize,
    /// Source addresses to connect from: a range (127.0.0.2-127.0.0.254), a list, or a CIDR block.
    #[arg(long)]
    pub src_ips: Option<String>,
    /// Clinic channels the connections spread over (Zipf-distributed).
    #[arg(long, default_value_t = 50)]
    pub clinics: u32,
    /// Zipf exponent: 0 is uniform, 1 a typical popularity skew.
    #[arg(long, default_value_t = 1.0)]
    pub zipf: f64,
    /// Each client's own second channel is PREFIX + its id. Default: `user/`
    /// (private, signed with --token-secret) when a secret is given, none
    /// otherwise; give e.g. `inbox/` for a server without tokens.
    #[arg(long)]
    pub own_channel: Option<String>,
    /// Token secret of the server; with it each client also subscribes to its own user/ID channel.
    #[arg(long, env = "SURGE_TOKEN_SECRET", hide_env_values = true)]
    #[serde(skip)]
    pub token_secret: Option<String>,
    /// API key for the publish API.
    #[arg(long, env = "SURGE_API_KEY", hide_env_values = true)]
    #[serde(skip)]
    pub api_key: Option<String>,
    /// PID of the server, to report its memory and CPU; several nodes'
    /// PIDs comma-separated are summed.
    #[arg(long, value_delimiter = ',')]
    pub server_pid: Vec<u32>,
    /// PID of the redis-server the nodes share, to report its memory and
    /// CPU separately from theirs.
    #[arg(long)]
    pub redis_pid: Option<u32>,
    /// The server's /stats URL, to report its memory when the PID is elsewhere.
    #[arg(long)]
    pub server_stats: Option<String>,
    /// Write every figure as JSON here.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// Write a self-contained HTML report with charts here.
    #[arg(long)]
    pub html: Option<std::path::PathBuf>,
    /// Seed for clinic choice and jitter.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Most handshakes in flight per worker process while ramping (0: no
    /// cap). With a cap, a server that answers slowly slows the ramp down
    /// instead of letting queued handshakes time out by the thousand.
    #[arg(long, default_value_t = 0)]
    pub max_pending: u64,
    /// Seconds to wait for deliveries, storms and ramps before giving up.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
}

/// What to do once ramped.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(tag = "scenario", rename_all = "lowercase")]
pub enum Scenario {
    Idle,
    Fanout {
        publications: u64,
        pub_rate: f64,
        batch: usize,
        /// User channels that also get one publication each, after the clinics.
        private_sample: u64,
    },
    Confirm(crate::confirm::ConfirmOpts),
    Storm {
        fraction: f64,
        policy: Policy,
    },
}

impl Scenario {
    pub fn name(&self) -> &'static str {
        match self {
            Scenario::Idle => "idle",
            Scenario::Fanout { .. } => "fanout",
            Scenario::Confirm(_) => "confirm",
            Scenario::Storm { .. } => "storm",
        }
    }
}

pub(crate) struct Worker {
    child: Child,
    stdin: ChildStdin,
}

pub(crate) fn send(workers: &mut [Worker], cmd: &Command) {
    let line = serde_json::to_string(cmd).unwrap_or_default();
    for w in workers.iter_mut() {
        let _ = writeln!(w.stdin, "{line}");
        let _ = w.stdin.flush();
    }
}

/// The server's address, Host header and path from a `ws://` or `wss://`
/// URL, and whether it is `wss://`.
fn resolve(url: &str) -> Result<(SocketAddr, String, String, bool), String> {
    let (rest, tls) = match (url.strip_prefix("ws://"), url.strip_prefix("wss://")) {
        (Some(rest), _) => (rest, false),
        (_, Some(rest)) => (rest, true),
        _ => return Err("--url must start with ws:// or wss://".into()),
    };
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let addr = host
        .to_socket_addrs()
        .map_err(|e| format!("{host}: {e}"))?
        .find(SocketAddr::is_ipv4)
        .ok_or_else(|| format!("{host}: no IPv4 address"))?;
    Ok((addr, host.to_string(), path, tls))
}

pub(crate) fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Memory and CPU of `pids` together; a process that is gone (a killed
/// node) counts nothing.
fn usage(pids: &[u32]) -> Option<(u64, Option<f64>)> {
    let found: Vec<(u64, f64)> = pids.iter().filter_map(|p| sys::process_usage(*p)).collect();
    (!found.is_empty()).then(|| {
        let rss = found.iter().map(|(r, _)| r).sum();
        (rss, Some(found.iter().map(|(_, c)| c).sum()))
    })
}

/// Server memory (and CPU when the PIDs are known) right now.
fn server_sample(common: &Common) -> Option<(u64, Option<f64>)> {
    if !common.server_pid.is_empty() {
        return usage(&common.server_pid);
    }
    let url = common.server_stats.as_ref()?;
    let body = ureq::get(url)
        .timeout(Duration::from_secs(5))
        .call()
        .ok()?
        .into_string()
        .ok()?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    Some((v["resident_bytes"].as_u64()?, None))
}

/// Runs a scenario end to end and returns its report.
pub fn run(common: &Common, scenario: &Scenario) -> Result<Report, String> {
    if matches!(scenario, Scenario::Confirm(_)) && common.token_secret.is_none() {
        return Err(
            "confirm needs --token-secret: confirmations go to private user/ID channels".into(),
        );
    }
    let (server, host, path, wss) = resolve(&common.url)?;
    // Refused here, once, rather than by every worker process.
    if wss {
        crate::tls::client_configs(&common.tls).map_err(|e| e.to_string())?;
    }
    let ips = match &common.src_ips {
        Some(spec) => srcips::parse(spec)?,
        None => Vec::new(),
    };
    let per_proc_limit = sys::open_file_limit().saturating_sub(FD_RESERVE).max(1);
    let procs = if common.procs > 0 {
        common.procs
    } else {
        common.conns.div_ceil(per_proc_limit).max(1) as usize
    };
    if common.conns.div_ceil(procs as u64) > per_proc_limit {
        return Err(format!(
            "{} connections in {procs} process(es) exceeds {per_proc_limit} per process (open-file limit); raise --procs",
            common.conns
        ));
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let (tx, rx) = crossbeam_channel::bounded::<(usize, Event)>(65_536);
    let mut workers = Vec::with_capacity(procs);
    let mut first_uid = 0;
    let mut publisher =
        Publisher::new(&common.publish, common.publish_each, common.api_key.clone())?;
    let (expect_confirms, reconnect_on_close) = match scenario {
        Scenario::Confirm(c) => (
            c.rounds.max(1),
            c.kill_pid.is_some() || !c.restart_pid.is_empty(),
        ),
        _ => (1, false),
    };
    let before = server_sample(common);
    let redis_before = common.redis_pid.and_then(|p| usage(&[p]));
    let slab_before = slab_kib();
    let started = Instant::now();
    for i in 0..procs {
        let share =
            common.conns / procs as u64 + u64::from((i as u64) < common.conns % procs as u64);
        let src_ips: Vec<_> = if ips.len() >= procs {
            ips.iter()
                .enumerate()
                .filter(|(j, _)| j % procs == i)
                .map(|(_, ip)| *ip)
                .collect()
        } else {
            ips.clone()
        };
        let spec = WorkerSpec {
            server,
            host: host.clone(),
            path: path.clone(),
            conns: share,
            first_uid,
            rate: common.rate / procs as f64,
            src_ips,
            clinics: common.clinics,
            zipf: common.zipf,
            seed: common.seed.wrapping_add(i as u64 * 7919),
            token_secret: common.token_secret.clone(),
            own_channel: common
                .own_channel
                .clone()
                .or_else(|| common.token_secret.as_ref().map(|_| "user/".to_string())),
            reconnect_on_close,
            expect_confirms,
            max_pending: common.max_pending,
            tls: wss.then(|| common.tls.clone()),
        };
        first_uid += share;
        let spec = serde_json::to_string(&spec).map_err(|e| e.to_string())?;
        let mut child = Process::new(&exe)
            .args(["__worker", &spec])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start a worker process: {e}"))?;
        let stdout = child.stdout.take().ok_or("worker stdout")?;
        let stdin = child.stdin.take().ok_or("worker stdin")?;
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(event) = serde_json::from_str::<Event>(&line) {
                    if tx.send((i, event)).is_err() {
                        break;
                    }
                }
            }
        });
        workers.push(Worker { child, stdin });
    }
    drop(tx);
    let deadline = |secs: u64| Instant::now() + Duration::from_secs(secs);

    // Ramp.
    let bar = ProgressBar::new(common.conns);
    bar.set_style(
        ProgressStyle::with_template("{elapsed:>4} [{bar:40}] {pos}/{len} connected {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut connected = vec![0u64; procs];
    let mut failed = vec![0u64; procs];
    let mut ramped = vec![false; procs];
    let mut clinic_subs: BTreeMap<u32, u64> = BTreeMap::new();
    let ramp_limit = deadline((common.conns as f64 / common.rate.max(1.0)) as u64 + common.timeout);
    while !ramped.iter().all(|r| *r) {
        match recv_until(&rx, ramp_limit)? {
            (
                i,
                Event::Progress {
                    connected: c,
                    failed: f,
                    ..
                },
            ) => {
                connected[i] = c;
                failed[i] = f;
            }
            (
                i,
                Event::Ramped {
                    connected: c,
                    failed: f,
                    clinic_subscribers,
                },
            ) => {
                connected[i] = c;
                failed[i] = f;
                ramped[i] = true;
                for (k, v) in clinic_subscribers {
                    *clinic_subs.entry(k).or_default() += v;
                }
            }
            _ => {}
        }
        bar.set_position(connected.iter().sum());
        bar.set_message(format!("{} failed", failed.iter().sum::<u64>()));
    }
    bar.finish_and_clear();
    let ramp_secs = started.elapsed().as_secs_f64();
    let after_ramp = server_sample(common);
    let redis_after_ramp = common.redis_pid.and_then(|p| usage(&[p]));
    let slab_after_ramp = slab_kib();

    // Scenario.
    let mut publications = 0;
    let mut expected = 0;
    let mut sent_us: BTreeMap<u64, u64> = BTreeMap::new();
    let mut cpu_during = None;
    let mut redis_cpu_during = None;
    let mut confirm_outcome = None;
    match scenario {
        Scenario::Idle => std::thread::sleep(Duration::from_secs(common.hold)),
        Scenario::Fanout {
            publications: n,
            pub_rate,
            batch,
            private_sample,
        } => {
            let cpu_before = server_sample(common).and_then(|(_, c)| c);
            let redis_cpu_before = common
                .redis_pid
                .and_then(|p| usage(&[p]))
                .and_then(|(_, c)| c);
            let clinics = common.clinics.max(1);
            let items: Vec<(u64, String, u32)> = (0..*n)
                .map(|id| {
                    (
                        id,
                        format!("clinic:{}", id as u32 % clinics),
                        id as u32 % clinics,
                    )
                })
                .collect();
            for chunk in items.chunks((*batch).max(1)) {
                let ts = unix_us();
                let body: Vec<String> = chunk
                    .iter()
                    .map(|(id, ch, _)| format!(r#"{{"ch":"{ch}","data":{{"id":{id},"ts":{ts},"slots":[{{"t":"09:00","free":3}}]}}}}"#))
                    .collect();
                publisher.send(&body, *batch > 1)?;
                for (id, _, clinic) in chunk {
                    sent_us.insert(*id, ts);
                    expected += clinic_subs.get(clinic).copied().unwrap_or(0);
                }
                publications += chunk.len() as u64;
                std::thread::sleep(Duration::from_secs_f64(
                    chunk.len() as f64 / pub_rate.max(0.001),
                ));
            }
            let (items, sample) = private_sample_items(common.conns, *private_sample);
            for chunk in items.chunks(PUBLISH_CHUNK) {
                publisher.send(chunk, true)?;
            }
            publications += sample;
            expected += sample;
            wait_for(&mut workers, &rx, deadline(common.timeout), |d, _, _| {
                d >= expected
            })?;
            let cpu_after = server_sample(common).and_then(|(_, c)| c);
            cpu_during = cpu_before.zip(cpu_after).map(|(a, b)| b - a);
            let redis_cpu_after = common
                .redis_pid
                .and_then(|p| usage(&[p]))
                .and_then(|(_, c)| c);
            redis_cpu_during = redis_cpu_before.zip(redis_cpu_after).map(|(a, b)| b - a);
            std::thread::sleep(Duration::from_secs(common.hold));
        }
        Scenario::Confirm(opts) => {
            let total: u64 = connected.iter().sum();
            let outcome =
                crate::confirm::run(opts, common, &mut publisher, &mut workers, &rx, total)?;
            publications = outcome.published;
            expected = outcome.published;
            confirm_outcome = Some(outcome);
        }
        Scenario::Storm { fraction, policy } => {
            // One publication to every clinic before the storm, rounds of
            // them while the dropped clients are away (they must recover
            // what they missed), and one after: every client is owed every
            // publication of its clinic, exactly once.
            let clinics = common.clinics.max(1);
            let round = |publisher: &mut Publisher, publications: &mut u64, expected: &mut u64| {
                let body: Vec<String> = (0..clinics)
                    .map(|c| {
                        format!(
                            r#"{{"ch":"clinic:{c}","data":{{"id":{}}}}}"#,
                            *publications + u64::from(c)
                        )
                    })
                    .collect();
                publisher.send(&body, true)?;
                *publications += u64::from(clinics);
                *expected += clinic_subs.values().sum::<u64>();
                Ok::<(), String>(())
            };
            round(&mut publisher, &mut publications, &mut expected)?;
            // Everyone has it (and so its channel's epoch) before the drop:
            // a client cut off earlier has no position to recover from.
            wait_for(&mut workers, &rx, deadline(common.timeout), |d, _, _| {
                d >= expected
            })?;
            std::thread::sleep(Duration::from_secs(common.hold));
            send(
                &mut workers,
                &Command::Storm {
                    fraction: *fraction,
                    policy: *policy,
                },
            );
            let mut stormed = 0;
            let limit = deadline(common.timeout);
            while stormed < procs {
                round(&mut publisher, &mut publications, &mut expected)?;
                match rx.recv_timeout(STORM_PUBLISH_EVERY) {
                    Ok((_, Event::Stormed)) => stormed += 1,
                    Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => {
                        return Err("a worker process exited early".into())
                    }
                }
                if Instant::now() >= limit {
                    return Err("timed out waiting for the storm to reconnect".into());
                }
            }
            round(&mut publisher, &mut publications, &mut expected)?;
            wait_for(&mut workers, &rx, deadline(common.timeout), |d, _, _| {
                d >= expected
            })?;
        }
    }
    let end = server_sample(common);

    // Results.
    send(&mut workers, &Command::Finish);
    let mut stats = Stats::default();
    let mut results = 0;
    let limit = deadline(common.timeout);
    while results < procs {
        if let (_, Event::Result { stats: s }) = recv_until(&rx, limit)? {
            stats.merge(&s);
            results += 1;
        }
    }
    for w in workers.iter_mut() {
        let _ = w.child.wait();
    }
    let connected_total = stats.connected;
    let usage_of = |pids: Vec<u32>,
                    before: Option<(u64, Option<f64>)>,
                    after_ramp: Option<(u64, Option<f64>)>,
                    end: Option<(u64, Option<f64>)>,
                    during: Option<f64>| {
        before.map(|(rss_before, cpu_before)| {
            let rss_after_ramp = after_ramp.map_or(0, |(r, _)| r);
            ServerUsage {
                pids,
                rss_before,
                rss_after_ramp,
                rss_end: end.map_or(0, |(r, _)| r),
                bytes_per_connection: (rss_after_ramp.saturating_sub(rss_before)) as f64
                    / connected_total.max(1) as f64,
                cpu_seconds_total: cpu_before.zip(end.and_then(|(_, c)| c)).map(|(a, b)| b - a),
                cpu_seconds_ramp: cpu_before
                    .zip(after_ramp.and_then(|(_, c)| c))
                    .map(|(a, b)| b - a),
                cpu_seconds_fanout: during,
            }
        })
    };
    let server = usage_of(
        common.server_pid.clone(),
        before,
        after_ramp,
        end,
        cpu_during,
    );
    let redis = common.redis_pid.and_then(|pid| {
        usage_of(
            vec![pid],
            redis_before,
            redis_after_ramp,
            usage(&[pid]),
            redis_cpu_during,
        )
    });
    let kernel = slab_before.zip(slab_after_ramp).map(|(b, a)| KernelUsage {
        slab_before_kib: b,
        slab_after_ramp_kib: a,
        bytes_per_connection: a.saturating_sub(b) as f64 * 1024.0 / connected_total.max(1) as f64,
    });
    let mut report = Report::build(
        common,
        scenario,
        procs,
        ramp_secs,
        publications,
        expected,
        &sent_us,
        stats,
        server,
    );
    report.redis = redis;
    report.kernel = kernel;
    if let Some(outcome) = confirm_outcome {
        report.confirm.apply(&outcome);
    }
    Ok(report)
}

/// Publications per batch request when the scenario sends thousands at
/// once: well under the server's default --max-batch of 10,000.
pub(crate) const PUBLISH_CHUNK: usize = 5000;

/// One publication to each of `sample` user channels spread evenly over
/// the `conns` user ids, and how many that is.
fn private_sample_items(conns: u64, sample: u64) -> (Vec<String>, u64) {
    let sample = sample.min(conns);
    let ts = unix_us();
    let items = (0..sample)
        .map(|i| {
            let uid = i * conns / sample.max(1);
            format!(r#"{{"ch":"user/{uid}","data":{{"booking":"S-{uid}","ts":{ts}}}}}"#)
        })
        .collect();
    (items, sample)
}

/// The machine's slab memory (KiB), where the kernel keeps sockets.
fn slab_kib() -> Option<u64> {
    kernel_tuning::measure::meminfo_kib("Slab").ok()
}

pub(crate) fn recv_until(
    rx: &Receiver<(usize, Event)>,
    until: Instant,
) -> Result<(usize, Event), String> {
    match rx.recv_deadline(until) {
        Ok(ev) => Ok(ev),
        Err(RecvTimeoutError::Timeout) => Err("timed out waiting for the worker processes".into()),
        Err(RecvTimeoutError::Disconnected) => Err("a worker process exited early".into()),
    }
}

/// Polls the workers until `done(deliveries, confirmed_once, open)` or the
/// deadline.
pub(crate) fn wait_for(
    workers: &mut [Worker],
    rx: &Receiver<(usize, Event)>,
    until: Instant,
    done: impl Fn(u64, u64, u64) -> bool,
) -> Result<(), String> {
    loop {
        send(workers, &Command::Report);
        // A report comes back in milliseconds; its own bound starts now, so
        // a run that reaches `until` mid-question ends with its report (and
        // the shortfall in it) rather than "could not run".
        let reply_by = Instant::now() + REPORT_REPLY;
        let mut deliveries = 0;
        let mut once = 0;
        let mut open = 0;
        for _ in 0..workers.len() {
            loop {
                if let (
                    _,
                    Event::Report {
                        deliveries: d,
                        confirm_once: c,
                        open: o,
                    },
                ) = recv_until(rx, reply_by)?
                {
                    deliveries += d;
                    once += c;
                    open += o;
                    break;
                }
            }
        }
        if done(deliveries, once, open) || Instant::now() >= until {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
