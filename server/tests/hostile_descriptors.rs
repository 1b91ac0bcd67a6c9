//! Descriptor exhaustion, done for real: the `surge` binary runs with a
//! small open-file limit, two other processes flood its public port with
//! half-open connections, and the publish API, the admin port and an
//! already connected subscriber are served throughout; refused browsers
//! get 503 with Retry-After, and new browsers get in once the flood ends.
//! Also: 2,000 slowloris handshakes from one address, capped per address
//! while other addresses connect.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_surge");
/// Tells a re-executed copy of this test binary to flood: "ADDR N SOURCE_IP".
const FLOOD_ENV: &str = "SURGE_TEST_FLOOD";
/// The server's open-file limit in the flood test: small enough that two
/// processes exhaust it with a few hundred sockets each.
const SERVER_NOFILE: u64 = 600;
const FLOOD_PER_PROCESS: usize = 400;

/// Connects `n` sockets from `source` to `addr` and never sends a byte.
fn half_open(addr: SocketAddr, source: IpAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .filter_map(|_| {
            let s =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
            s.bind(&SocketAddr::new(source, 0).into()).ok()?;
            s.connect_timeout(&addr.into(), WAIT).ok()?;
            // The start of a request head, never finished: a socket that
            // sent nothing stays in the kernel's queue (TCP_DEFER_ACCEPT)
            // and costs surge no descriptor, so the flood would not reach
            // it; one byte makes every socket a handshake surge must hold.
            let mut s: TcpStream = s.into();
            s.write_all(b"GET /ws HTTP/1.1\r\n").ok()?;
            Some(s)
        })
        .collect()
}

/// Not a test: the body of a flooding process (this binary re-executed
/// with `FLOOD_ENV` set). Holds its sockets until its stdin closes.
#[test]
#[ignore = "helper process for descriptor_flood_leaves_publish_admin_and_subscribers_served"]
fn flood_helper() {
    let Ok(spec) = std::env::var(FLOOD_ENV) else {
        return;
    };
    let mut parts = spec.split_whitespace();
    let addr: SocketAddr = parts.next().unwrap().parse().unwrap();
    let n: usize = parts.next().unwrap().parse().unwrap();
    let source: IpAddr = parts.next().unwrap().parse().unwrap();
    let held = half_open(addr, source, n);
    println!("ready {}", held.len());
    std::io::stdout().flush().unwrap();
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
    drop(held);
}

/// Starts a flooding process and waits until its sockets are connected.
fn start_flood(addr: SocketAddr, source: &str) -> (Killed, usize) {
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["flood_helper", "--exact", "--ignored", "--nocapture"])
        .env(FLOOD_ENV, format!("{addr} {FLOOD_PER_PROCESS} {source}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = Killed(child);
    let mut out = BufReader::new(child.0.stdout.take().unwrap());
    let mut line = String::new();
    while out.read_line(&mut line).unwrap() > 0 {
        if let Some(n) = line.trim().strip_prefix("ready ") {
            let n = n.parse().unwrap();
            return (child, n);
        }
        line.clear();
    }
    panic!("flood helper ended without connecting");
}

/// A child process killed when the test ends, passed or not.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// CPU time (user + system) a process has used, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start at ')'.
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// The binary with a small open-file limit; returns it and its ports.
fn spawn_limited_surge() -> (Killed, SocketAddr, SocketAddr, SocketAddr) {
    let mut command = Command::new(BIN);
    command
        .args(surge::config::EPHEMERAL_LOOPBACK)
        .args([
            "--workers",
            "2",
            "--handshake-timeout",
            "60s",
            "--log",
            "error",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    // SAFETY: setrlimit is async-signal-safe and only touches the child.
    unsafe {
        command.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: SERVER_NOFILE,
                rlim_max: SERVER_NOFILE,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = Killed(command.spawn().unwrap());
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    // "surge listening: ws://A/ws publish=http://B/api/publish admin=http://C/metrics"
    let addr = |key: &str| -> SocketAddr {
        let rest = line.split(key).nth(1).expect("address in the line");
        rest.split('/').next().unwrap().parse().unwrap()
    };
    let (ws, publish, admin) = (
        addr("ws://"),
        addr("publish=http://"),
        addr("admin=http://"),
    );
    (child, ws, publish, admin)
}

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    match ureq::get(&format!("http://{addr}{path}"))
        .timeout(WAIT)
        .call()
    {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => panic!("GET {path}: {e}"),
    }
}

fn metric_of(admin: SocketAddr, series: &str) -> u64 {
    let (_, text) = get(admin, "/metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("metric {series} not found"))
}

/// Publishes `n` to channel "f"; returns how long the answer took.
fn timed_publish(publish: SocketAddr, n: u32) -> Duration {
    let started = Instant::now();
    let r = ureq::post(&format!("http://{publish}/api/publish"))
        .timeout(WAIT)
        .send_string(&format!(r#"{{"ch":"f","data":{n}}}"#))
        .expect("publish answers during the flood");
    assert_eq!(r.status(), 200);
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptor_flood_leaves_publish_admin_and_subscribers_served() {
    let (surge, ws, publish, admin) = spawn_limited_surge();
    let (mut subscriber, _) = tokio_tungstenite::connect_async(format!("ws://{ws}/ws?ch=f"))
        .await
        .expect("subscriber connects before the flood");
    assert_eq!(next_json(&mut subscriber).await["op"], "subscribed");

    let (mut flood_a, a) = start_flood(ws, "127.0.0.2");
    let (mut flood_b, b) = start_flood(ws, "127.0.0.3");
    assert_eq!(
        a + b,
        2 * FLOOD_PER_PROCESS,
        "the kernel took every flood socket"
    );
    let limit = metric_of(admin, "surge_public_sockets");
    eprintln!("flood of {} half-open sockets; surge holds {limit}", a + b);
    let ticks = cpu_ticks(surge.0.id());
    tokio::time::sleep(Duration::from_secs(1)).await;
    eprintln!(
        "surge CPU while flooded and idle: {} ticks in 1 s (no accept spin)",
        cpu_ticks(surge.0.id()) - ticks
    );

    let mut slowest = Duration::ZERO;
    for n in 0..10 {
        let took = tokio::task::spawn_blocking(move || timed_publish(publish, n))
            .await
            .unwrap();
        slowest = slowest.max(took);
        assert_eq!(next_json(&mut subscriber).await["data"], n);
        let (status, _) = tokio::task::spawn_blocking(move || get(admin, "/healthz"))
            .await
            .unwrap();
        assert_eq!(status, 200);
    }
    eprintln!("slowest publish during the descriptor flood: {slowest:?}");
    // A browser arriving now is told to come back, not left hanging.
    let refused = tokio_tungstenite::connect_async(format!("ws://{ws}/ws")).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503);
            assert!(response.headers().contains_key("retry-after"));
        }
        other => panic!("expected a 503 during the flood, got {other:?}"),
    }
    let at_capacity = tokio::task::spawn_blocking(move || {
        metric_of(
            admin,
            "surge_handshake_failures_total{reason=\"at_capacity\"}",
        )
    })
    .await
    .unwrap();
    assert!(at_capacity > 0);

    drop(flood_a.0.stdin.take());
    drop(flood_b.0.stdin.take());
    flood_a.0.wait().unwrap();
    flood_b.0.wait().unwrap();
    // Once the flood ends, new browsers get in (the server notices each
    // closed socket as its peer's end arrives).
    let mut joined = None;
    for _ in 0..100 {
        if let Ok((ws, _)) = tokio_tungstenite::connect_async(format!("ws://{ws}/ws?ch=f")).await {
            joined = Some(ws);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut newcomer = joined.expect("a new browser gets in after the flood");
    assert_eq!(next_json(&mut newcomer).await["op"], "subscribed");
    drop(surge);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_from_one_address_is_capped_while_other_addresses_connect() {
    // Below the 4096 default, so that 2,000 from one address cross it.
    let cap = 1000;
    let server = start(&["--max-connections-per-ip", "1000"]);
    let attacker: IpAddr = "127.0.0.2".parse().unwrap();
    let addr = server.public_addr;
    let mut slow = tokio::task::spawn_blocking(move || half_open(addr, attacker, 2000))
        .await
        .unwrap();
    assert_eq!(slow.len(), 2000);
    // Each trickles the start of an upgrade and stops.
    for s in slow.iter_mut() {
        let _ = s.write_all(b"GET /ws HTTP/1.1\r\nHost: t\r\n");
    }
    // Other addresses connect and are served meanwhile.
    let mut neighbour = connect(&server, "?ch=n").await;
    assert_eq!(next_json(&mut neighbour).await["op"], "subscribed");
    publish_async(&server, "n", "1").await;
    assert_eq!(next_json(&mut neighbour).await["data"], 1);
    // Everyone past the cap was told 503 with Retry-After. Non-blocking
    // reads, retried a bounded number of times: the 503s are written at
    // accept, which may still be under way.
    let refused = tokio::task::spawn_blocking(move || {
        let mut told = vec![false; slow.len()];
        for _ in 0..100 {
            for (s, told) in slow.iter_mut().zip(told.iter_mut()).filter(|(_, t)| !**t) {
                s.set_nonblocking(true).unwrap();
                let mut head = [0u8; 256];
                if let Ok(n) = s.read(&mut head) {
                    let head = String::from_utf8_lossy(&head[..n]);
                    *told = head.starts_with("HTTP/1.1 503") && head.contains("Retry-After:");
                }
            }
            if told.iter().filter(|t| **t).count() >= 2000 - cap {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        told.iter().filter(|t| **t).count()
    })
    .await
    .unwrap();
    eprintln!("2000 slowloris handshakes from one address: {refused} refused with 503");
    assert_eq!(refused, 2000 - cap);
    assert_eq!(
        metric(
            &server,
            "surge_handshake_failures_total{reason=\"per_address\"}"
        ),
        (2000 - cap) as u64
    );
    server.shutdown();
}
