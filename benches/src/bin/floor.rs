//! The physical floor for fan-out: the fastest a process can push one
//! pre-encoded frame to N already-open loopback sockets, one `write` per
//! socket per round, with nothing else to do. Surge's fan-out throughput is
//! reported as a fraction of this.
//!
//! floor sink                       accepts and discards (prints its address)
//! floor write ADDR N ROUNDS BYTES  opens N sockets to ADDR, writes, prints JSON
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

fn write(addr: SocketAddr, n: usize, rounds: usize, bytes: usize) -> std::io::Result<()> {
    let mut sockets = Vec::with_capacity(n);
    for _ in 0..n {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        s.set_nonblocking(true)?;
        sockets.push(s);
    }
    let mut frame = Vec::with_capacity(bytes + 10);
    surge::wire::frame::encode_frame(
        &mut frame,
        surge::wire::frame::OpCode::Text,
        &vec![b'x'; bytes],
        None,
    );
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
    let deliveries = (n * rounds) as f64;
    println!(
        "{}",
        serde_json::json!({"connections": n, "rounds": rounds, "frame_bytes": frame.len(), "seconds": seconds,
                           "deliveries_per_second": deliveries / seconds, "would_block": would_block})
    );
    Ok(())
}

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
            _ => Err(std::io::Error::other(
                "usage: floor write ADDR N ROUNDS BYTES",
            )),
        },
        _ => Err(std::io::Error::other(
            "usage: floor sink | floor write ADDR N ROUNDS BYTES",
        )),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("floor: {e}");
            std::process::ExitCode::from(2)
        }
    }
}
