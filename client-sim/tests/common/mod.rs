//! What client-sim's multi-node tests share: a free loopback port and a
//! real redis-server for the nodes to share. Nothing about the scenario
//! under test lives here.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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
