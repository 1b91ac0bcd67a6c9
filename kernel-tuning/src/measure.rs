//! `measure`: the kernel's memory per idle TCP socket on this machine, from
//! the growth of /proc/meminfo's `Slab` while N loopback connection pairs
//! (2N sockets) are held open. The figure behind `--mem-per-conn`.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

#[derive(Debug, serde::Serialize)]
pub struct Measurement {
    pub sockets: u64,
    pub slab_before_kib: u64,
    pub slab_after_kib: u64,
    pub tcp_mem_pages_before: u64,
    pub tcp_mem_pages_after: u64,
    pub bytes_per_socket: u64,
}

/// A field of /proc/meminfo, in KiB (`Slab`: where the kernel keeps sockets).
pub fn meminfo_kib(field: &str) -> io::Result<u64> {
    let text = std::fs::read_to_string("/proc/meminfo")?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| io::Error::other(format!("no {field} in /proc/meminfo")))
}

fn tcp_mem_pages() -> u64 {
    crate::procfs::ProcRoot::new("/proc")
        .sockstat()
        .map_or(0, |(_, _, pages)| pages)
}

/// Opens `pairs` loopback connections (each a client and an accepted
/// socket), measures, and closes them.
pub fn measure(pairs: usize) -> io::Result<Measurement> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::sleep(Duration::from_millis(200));
    let slab_before = meminfo_kib("Slab")?;
    let pages_before = tcp_mem_pages();
    let mut held = Vec::with_capacity(pairs * 2);
    for _ in 0..pairs {
        let client = TcpStream::connect(addr)?;
        let (server, _) = listener.accept()?;
        held.push(client);
        held.push(server);
    }
    std::thread::sleep(Duration::from_millis(500));
    let slab_after = meminfo_kib("Slab")?;
    let pages_after = tcp_mem_pages();
    let sockets = held.len() as u64;
    drop(held);
    Ok(Measurement {
        sockets,
        slab_before_kib: slab_before,
        slab_after_kib: slab_after,
        tcp_mem_pages_before: pages_before,
        tcp_mem_pages_after: pages_after,
        bytes_per_socket: slab_after.saturating_sub(slab_before) * 1024 / sockets.max(1),
    })
}
