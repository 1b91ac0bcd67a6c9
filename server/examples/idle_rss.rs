//! Measures Surge's user-space memory per idle connection: starts the release
//! `surge` binary, opens N WebSocket connections each subscribed to two
//! channels, and reports (RSS after - RSS before) / N of the server process.
//!
//! cargo build --release -p server && \
//!   cargo run --release -p server --example idle_rss -- 18000 [shared|unique]
//!
//! `unique` (the default) subscribes each connection to one of 50 clinic
//! channels and to its own private `user/ID` channel with a signed token, as
//! browsers do; `shared` to two clinic channels. Stays under the 20,000 open files this machine allows
//! per process: the server and this client are separate processes.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use surge::channels::token::{unix_now, TokenKey};
use surge::wire::frame::{decode_header, Role};
use surge::wire::handshake::client_request;

mod support;
use support::{rss_kib, spawn_surge};

/// Reads the 101 head and `frames` frames, so we know the server has done
/// all its work for this connection.
fn read_upgrade_and_frames(s: &mut TcpStream, frames: usize) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte)?;
        head.push(byte[0]);
    }
    if !head.starts_with(b"HTTP/1.1 101") {
        return Err(std::io::Error::other(
            String::from_utf8_lossy(&head).into_owned(),
        ));
    }
    for _ in 0..frames {
        let mut hdr = [0u8; 2];
        s.read_exact(&mut hdr)?;
        let h = decode_header(&hdr, Role::Client)
            .map_err(std::io::Error::other)?
            .ok_or_else(|| std::io::Error::other("long frame in reply"))?;
        let mut payload = vec![0u8; h.payload_len as usize];
        s.read_exact(&mut payload)?;
    }
    Ok(())
}

const SECRET: &str = "idle-rss-measurement-secret";

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(18_000);
    let mode = args.next().unwrap_or_else(|| "unique".into());
    // Every connection comes from 127.0.0.1: no per-address cap here.
    let server = spawn_surge(&[
        "--max-connections",
        "19500",
        "--max-connections-per-ip",
        "0",
        "--token-secret",
        SECRET,
    ]);
    let addr = server.ws.trim_end_matches("/ws").to_string();
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_kib(server.child.id());

    let tokens = TokenKey::new(SECRET.as_bytes()).expect("token key");
    let started = Instant::now();
    let mut conns = Vec::with_capacity(n);
    let checkpoints = [n / 3, 2 * n / 3];
    let mut at_checkpoint = Vec::new();
    for i in 0..n {
        if checkpoints.contains(&i) && i > 0 {
            std::thread::sleep(Duration::from_millis(500));
            at_checkpoint.push((i, rss_kib(server.child.id())));
        }
        let query = match mode.as_str() {
            "shared" => format!("/ws?ch=clinic:{}&ch=clinic:{}", i % 50, (i + 1) % 50),
            _ => format!(
                "/ws?ch=clinic:{}&ch=user/{i}&token={}",
                i % 50,
                tokens.mint(&format!("user/{i}"), unix_now() + 3600)
            ),
        };
        let mut s = TcpStream::connect(&addr).expect("connect");
        s.write_all(&client_request(&addr, &query, "dGhlIHNhbXBsZSBub25jZQ=="))
            .expect("write");
        read_upgrade_and_frames(&mut s, 2).expect("upgrade and two subscriptions");
        conns.push(s);
    }
    let ramp = started.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let after = rss_kib(server.child.id());
    let per_conn = (after.saturating_sub(before) * 1024) as f64 / n as f64;
    println!(
        "idle_rss: mode={mode} connections={n} ramp={:.1}s ({:.0} handshakes/s)",
        ramp.as_secs_f64(),
        n as f64 / ramp.as_secs_f64()
    );
    println!(
        "idle_rss: server RSS before={before} KiB after={after} KiB delta={} KiB",
        after.saturating_sub(before)
    );
    println!("idle_rss: user-space bytes per idle connection (2 channels): {per_conn:.0}");
    at_checkpoint.push((n, after));
    let points: Vec<String> = at_checkpoint
        .iter()
        .map(|(c, kib)| format!("{c}:{kib}KiB"))
        .collect();
    if let (Some(first), Some(last)) = (at_checkpoint.first(), at_checkpoint.last()) {
        if last.0 > first.0 {
            let slope = (last.1.saturating_sub(first.1) * 1024) as f64 / (last.0 - first.0) as f64;
            println!(
                "idle_rss: RSS at {}; marginal bytes per connection {}..{}: {slope:.0}",
                points.join(" "),
                first.0,
                last.0
            );
        }
    }
    drop(conns);
}
