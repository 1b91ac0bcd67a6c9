//! The physical floor for fan-out: the fastest a process can push one
//! pre-encoded frame to N already-open loopback sockets, one send per
//! socket per round, with nothing else to do. Surge's fan-out throughput is
//! reported as a fraction of this.
//!
//! floor sink                               accepts and discards (prints its address)
//! floor write ADDR N ROUNDS BYTES          opens N sockets to ADDR, one `write` each, prints JSON
//! floor write-uring ADDR N ROUNDS BYTES B  the same sends as io_uring `Send`s, B per
//!                                          `submit_and_wait` (issue 16, item 4)
//!
//! BYTES is the payload: 130 makes the 134-byte frame (4-byte header) of
//! `benches floor-gap`. Both writers print the CPU this process spent in
//! the rounds (connecting excluded) per write, read from /proc/self as
//! `benches floor-gap` reads a server's: on loopback the receiver's TCP
//! work runs in the sender's context, so it is charged to the writer in
//! both modes alike.
//!
//! Two processes, because N sockets on each side would not fit one
//! process's open-file limit.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};

fn sink() -> std::io::Result<()> {
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind("127.0.0.1:0".parse().map_err(std::io::Error::other)?)?;
    poll.registry()
        .register(&mut listener, Token(usize::MAX), Interest::READABLE)?;
    println!("sink listening {}", listener.local_addr()?);
    let mut conns = slab::Slab::new();
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        poll.poll(&mut events, None)?;
        for e in events.iter() {
            if e.token() == Token(usize::MAX) {
                while let Ok((mut s, _)) = listener.accept() {
                    let entry = conns.vacant_entry();
                    poll.registry()
                        .register(&mut s, Token(entry.key()), Interest::READABLE)?;
                    entry.insert(s);
                }
                continue;
            }
            let key = e.token().0;
            let Some(s) = conns.get_mut(key) else {
                continue;
            };
            loop {
                match s.read(&mut buf) {
                    Ok(0) => {
                        conns.remove(key);
                        break;
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => {
                        conns.remove(key);
                        break;
                    }
                }
            }
            if conns.is_empty() && e.is_read_closed() {
                return Ok(());
            }
        }
    }
}

/// CPU seconds this process has used: (the nanosecond sum over its
/// threads from /proc/self/task/*/schedstat, which includes io_uring's
/// worker threads if any were started; utime + stime from /proc/self/stat,
/// in 10 ms ticks).
fn cpu_seconds() -> (f64, f64) {
    let mut ns = 0u64;
    for task in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let text = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        ns += text
            .split_whitespace()
            .next()
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0);
    }
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    let ticks = tick(11).zip(tick(12)).map_or(0.0, |(u, s)| u + s);
    // USER_HZ is 100 on every Linux architecture we run on.
    (ns as f64 / 1e9, ticks / 100.0)
}

/// N connected loopback sockets and the one frame every round sends to each.
fn connect(addr: SocketAddr, n: usize, bytes: usize) -> std::io::Result<(Vec<TcpStream>, Vec<u8>)> {
    let mut sockets = Vec::with_capacity(n);
    for _ in 0..n {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        sockets.push(s);
    }
    let mut frame = Vec::with_capacity(bytes + 10);
    surge::wire::frame::encode_frame(
        &mut frame,
        surge::wire::frame::OpCode::Text,
        &vec![b'x'; bytes],
        None,
    );
    Ok((sockets, frame))
}

/// What a writer did in its rounds, printed as one JSON line.
struct Outcome {
    mode: &'static str,
    batch: usize,
    frame_bytes: usize,
    seconds: f64,
    cpu: (f64, f64),
    would_block: u64,
    short_sends: u64,
    failed_sends: u64,
}

fn print(o: &Outcome, n: usize, rounds: usize) {
    let writes = (n * rounds) as f64;
    println!(
        "{}",
        serde_json::json!({"mode": o.mode, "batch": o.batch, "connections": n, "rounds": rounds,
                           "frame_bytes": o.frame_bytes, "seconds": o.seconds,
                           "deliveries_per_second": writes / o.seconds,
                           "cpu_us_per_write": o.cpu.0 * 1e6 / writes,
                           "cpu_us_per_write_from_stat_ticks": o.cpu.1 * 1e6 / writes,
                           "would_block": o.would_block, "short_sends": o.short_sends,
                           "failed_sends": o.failed_sends})
    );
}

fn write(addr: SocketAddr, n: usize, rounds: usize, bytes: usize) -> std::io::Result<()> {
    let (mut sockets, frame) = connect(addr, n, bytes)?;
    for s in &sockets {
        s.set_nonblocking(true)?;
    }
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let mut would_block = 0u64;
    for _ in 0..rounds {
        for s in sockets.iter_mut() {
            let mut written = 0;
            while written < frame.len() {
                match s.write(&frame[written..]) {
                    Ok(k) => written += k,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        would_block += 1;
                        std::thread::yield_now();
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu_after = cpu_seconds();
    let outcome = Outcome {
        mode: "write",
        batch: 1,
        frame_bytes: frame.len(),
        seconds,
        cpu: (cpu_after.0 - cpu_before.0, cpu_after.1 - cpu_before.1),
        would_block,
        short_sends: 0,
        failed_sends: 0,
    };
    print(&outcome, n, rounds);
    Ok(())
}

/// The same rounds through io_uring: per round, one `Send` of the same
/// frame buffer per socket, `batch` of them pushed and then submitted with
/// one `submit_and_wait` that waits for all their completions. The sockets
/// are registered as fixed files (no descriptor lookup per send); the
/// buffer is not registered (`Send` has no fixed-buffer form). The sockets
/// stay blocking, so a send that cannot complete at once is parked by the
/// kernel instead of failing with EAGAIN; every completion is checked and a
/// short or failed send counted (and printed) rather than retried.
fn write_uring(
    addr: SocketAddr,
    n: usize,
    rounds: usize,
    bytes: usize,
    batch: usize,
) -> std::io::Result<()> {
    use io_uring::{opcode, types, IoUring};
    use std::os::fd::AsRawFd;

    let (sockets, frame) = connect(addr, n, bytes)?;
    let batch = batch.clamp(1, n.max(1));
    let entries = u32::try_from(batch.next_power_of_two()).map_err(std::io::Error::other)?;
    let mut ring = IoUring::new(entries)?;
    let fds: Vec<i32> = sockets.iter().map(|s| s.as_raw_fd()).collect();
    ring.submitter().register_files(&fds)?;
    let len = u32::try_from(frame.len()).map_err(std::io::Error::other)?;
    let (mut short_sends, mut failed_sends) = (0u64, 0u64);
    let mut first_error = None;
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    for _ in 0..rounds {
        for start in (0..n).step_by(batch) {
            let chunk = start..(start + batch).min(n);
            {
                let mut sq = ring.submission();
                for i in chunk.clone() {
                    let sqe = opcode::Send::new(types::Fixed(i as u32), frame.as_ptr(), len)
                        .build()
                        .user_data(i as u64);
                    // SAFETY: `frame` outlives the ring's use of it: every send
                    // pushed here completes before this loop moves on.
                    unsafe { sq.push(&sqe) }.map_err(std::io::Error::other)?;
                }
            }
            ring.submit_and_wait(chunk.len())?;
            for cqe in ring.completion() {
                match cqe.result() {
                    r if r == len as i32 => {}
                    r if r >= 0 => short_sends += 1,
                    r => {
                        failed_sends += 1;
                        first_error.get_or_insert(std::io::Error::from_raw_os_error(-r));
                    }
                }
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu_after = cpu_seconds();
    let outcome = Outcome {
        mode: "io_uring",
        batch,
        frame_bytes: frame.len(),
        seconds,
        cpu: (cpu_after.0 - cpu_before.0, cpu_after.1 - cpu_before.1),
        would_block: 0,
        short_sends,
        failed_sends,
    };
    print(&outcome, n, rounds);
    if let Some(e) = first_error {
        eprintln!("floor: {failed_sends} sends failed, the first with: {e}");
    }
    drop(sockets);
    Ok(())
}

const USAGE: &str = "usage: floor sink | floor write ADDR N ROUNDS BYTES | floor write-uring ADDR N ROUNDS BYTES BATCH";

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("sink") => sink(),
        Some("write") if args.len() == 5 => match (
            args[1].parse(),
            args[2].parse(),
            args[3].parse(),
            args[4].parse(),
        ) {
            (Ok(a), Ok(n), Ok(r), Ok(b)) => write(a, n, r, b),
            _ => Err(std::io::Error::other(USAGE)),
        },
        Some("write-uring") if args.len() == 6 => match (
            args[1].parse(),
            args[2].parse(),
            args[3].parse(),
            args[4].parse(),
            args[5].parse(),
        ) {
            (Ok(a), Ok(n), Ok(r), Ok(b), Ok(k)) => write_uring(a, n, r, b, k),
            _ => Err(std::io::Error::other(USAGE)),
        },
        _ => Err(std::io::Error::other(USAGE)),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("floor: {e}");
            std::process::ExitCode::from(2)
        }
    }
}
