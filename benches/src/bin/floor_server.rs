//! The kernel's floor for what a push server does, as a server that
//! `benches floor-gap` drives exactly like Surge, with the same clients:
//!
//! - handshakes: accept, read the upgrade request (right away, or on its
//!   readiness event if it has not arrived yet), SHA-1 its key, write a
//!   fixed 101 with the accept value, and nothing else: no routing, no
//!   channels, no acknowledgements, no timers, no limits, no metrics;
//! - writes: for each line `write BYTES` on stdin, one pre-encoded text
//!   frame of BYTES bytes (header included) written to every upgraded
//!   connection, one `write` each, in accept order, in a tight loop.
//!
//! floor_server [--defer-accept]   prints `floor listening: ws://ADDR/ws publish=none`,
//!                                 serves until killed
//!
//! `--defer-accept` sets TCP_DEFER_ACCEPT (1 s) on the listener, as Surge
//! does, so the request is always there at accept: the floor for a server
//! with the same listener options.
//!
//! Whatever Surge spends per handshake or per delivery above this program,
//! in the same run with the same clients, is ours to explain.

use std::io::{BufRead, ErrorKind, Read, Write};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

const LISTENER: Token = Token(usize::MAX - 1);
const STDIN: Token = Token(usize::MAX);
/// The whole upgrade request must fit (client requests are ~200 bytes).
const MAX_HEAD: usize = 4096;

/// The accept value for the `Sec-WebSocket-Key` in a complete request
/// head, or `None` if the head is incomplete or has no key.
fn accept_for(head: &[u8]) -> Option<String> {
    if !head.ends_with(b"\r\n\r\n") {
        return None;
    }
    let text = std::str::from_utf8(head).ok()?;
    let key = text.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("sec-websocket-key")
            .then_some(value.trim())
    })?;
    Some(surge::wire::handshake::accept_key(key))
}

/// Reads the request and answers 101. `Ok(true)`: upgraded; `Ok(false)`:
/// the request has not arrived yet; `Err`: drop the connection (a request
/// split over two segments counts as an error: loopback clients send it in one).
fn try_upgrade(s: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<bool> {
    let n = match s.read(buf) {
        Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
        Ok(n) => n,
        Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
        Err(e) => return Err(e),
    };
    let accept = accept_for(&buf[..n]).ok_or(ErrorKind::InvalidData)?;
    let mut resp = [0u8; 160];
    let mut w = std::io::Cursor::new(&mut resp[..]);
    write!(w, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n")?;
    let len = usize::try_from(w.position()).unwrap_or(0);
    if s.write(&resp[..len])? != len {
        return Err(ErrorKind::WriteZero.into());
    }
    Ok(true)
}

fn frame(bytes: usize) -> Vec<u8> {
    let header = if bytes - 2 < 126 { 2 } else { 4 };
    let mut out = Vec::with_capacity(bytes);
    surge::wire::frame::encode_frame(
        &mut out,
        surge::wire::frame::OpCode::Text,
        &vec![b'x'; bytes.saturating_sub(header)],
        None,
    );
    out
}

/// Sets TCP_DEFER_ACCEPT to one second on the listener.
fn defer_accept(listener: &TcpListener) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let secs: libc::c_int = 1;
    // SAFETY: the fd is open for the call; the value is a c_int we own,
    // with its size given.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&secs as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn serve(defer: bool) -> std::io::Result<()> {
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind("127.0.0.1:0".parse().map_err(std::io::Error::other)?)?;
    if defer {
        defer_accept(&listener)?;
    }
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    // Commands come from a thread blocked on stdin, through a waker, as a
    // publication reaches a Surge worker from its API thread: no line is
    // lost to an edge-triggered pipe, and the thread costs nothing between.
    let waker = std::sync::Arc::new(mio::Waker::new(poll.registry(), STDIN)?);
    let (tx, commands) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if tx.send(line).is_err() || waker.wake().is_err() {
                return;
            }
        }
        drop(tx);
        let _ = waker.wake();
    });
    println!(
        "floor listening: ws://{}/ws publish=none",
        listener.local_addr()?
    );
    std::io::stdout().flush()?;
    // Connections waiting for their request, and upgraded ones in accept order.
    let mut waiting = slab::Slab::new();
    let mut open: Vec<TcpStream> = Vec::new();
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; MAX_HEAD];
    loop {
        poll.poll(&mut events, None)?;
        for e in events.iter() {
            match e.token() {
                LISTENER => loop {
                    let (mut s, _) = match listener.accept() {
                        Ok(a) => a,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(_) => continue,
                    };
                    match try_upgrade(&mut s, &mut buf) {
                        Ok(true) => open.push(s),
                        Ok(false) => {
                            let entry = waiting.vacant_entry();
                            poll.registry().register(
                                &mut s,
                                Token(entry.key()),
                                Interest::READABLE,
                            )?;
                            entry.insert(s);
                        }
                        Err(_) => {}
                    }
                },
                STDIN => loop {
                    let cmd = match commands.try_recv() {
                        Ok(cmd) => cmd,
                        Err(std::sync::mpsc::TryRecvError::Empty) => break,
                        // The parent is gone: so are we.
                        Err(std::sync::mpsc::TryRecvError::Disconnected) => return Ok(()),
                    };
                    let Some(Ok(bytes)) = cmd.strip_prefix("write ").map(str::parse::<usize>)
                    else {
                        continue;
                    };
                    let frame = frame(bytes.max(2));
                    for s in &mut open {
                        // A socket that does not take the frame is the
                        // client's miss to count, not ours to retry.
                        let _ = s.write(&frame);
                    }
                },
                Token(key) => {
                    let Some(s) = waiting.get_mut(key) else {
                        continue;
                    };
                    match try_upgrade(s, &mut buf) {
                        Ok(false) => {}
                        Ok(true) => {
                            let mut s = waiting.remove(key);
                            poll.registry().deregister(&mut s)?;
                            open.push(s);
                        }
                        Err(_) => {
                            waiting.remove(key);
                        }
                    }
                }
            }
        }
    }
}

fn main() -> std::process::ExitCode {
    match serve(std::env::args().any(|a| a == "--defer-accept")) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("floor_server: {e}");
            std::process::ExitCode::from(2)
        }
    }
}
