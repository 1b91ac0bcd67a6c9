//! What client-sim's tests share: an in-process Surge on loopback, a free
//! loopback port and a real redis-server for multi-node tests. Nothing
//! about the scenario under test lives here.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A Surge on ephemeral loopback ports (two workers, quiet logs, a quick
/// shutdown) with token secret `secret` and `extra` flags.
pub fn start_surge(secret: &str, extra: &[&str]) -> surge::Server {
    let mut args = vec!["surge"];
    args.extend_from_slice(&surge::config::EPHEMERAL_LOOPBACK);
    args.extend_from_slice(&[
        "--workers",
        "2",
        "--log",
        "warn",
        "--token-secret",
        secret,
        "--shutdown-timeout",
        "1s",
    ]);
    args.extend_from_slice(extra);
    let config = surge::Config::load_from(args).expect("config");
    surge::Server::start(config).expect("server starts")
}

/// A loopback port free right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Starts redis-server on a free port, owned by `children` from the start
/// (so the test's guard stops it even if it never answers), and waits for
/// its PONG; returns its URL.
pub fn start_redis(children: &mut Vec<Child>) -> String {
    let port = free_port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server runs (apt install redis-server)");
    children.push(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let pong = TcpStream::connect(("127.0.0.1", port)).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(1)))?;
            s.write_all(b"PING\r\n")?;
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf)?;
            Ok(&buf == b"+PONG")
        });
        if pong.unwrap_or(false) {
            return format!("redis://127.0.0.1:{port}/0");
        }
        assert!(Instant::now() < deadline, "redis-server did not answer");
        std::thread::sleep(Duration::from_millis(50));
    }
}
