//! System calls beneath client-sim: non-blocking connects from a chosen
//! source address with IP_BIND_ADDRESS_NO_PORT, the open-file limit, and a
//! process's RSS and CPU time. The only `unsafe` in client-sim is here.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::AsRawFd;

use socket2::{Domain, Socket, Type};

/// Starts a non-blocking connect to `to`, from `from` when given. With
/// IP_BIND_ADDRESS_NO_PORT the kernel picks the port at connect time per
/// (source, destination) pair, so each source address has its own 64k ports
/// instead of all addresses sharing one ephemeral range.
pub fn start_connect(to: SocketAddr, from: Option<Ipv4Addr>) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.set_nonblocking(true)?;
    socket.set_nodelay(true)?;
    if let Some(ip) = from {
        let one: libc::c_int = 1;
        // SAFETY: setsockopt reads `one` for the length given; the fd is ours.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        socket.bind(&SocketAddr::V4(SocketAddrV4::new(ip, 0)).into())?;
    }
    match socket.connect(&to.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(socket.into())
}

/// The soft RLIMIT_NOFILE of this process.
pub fn open_file_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    lim.rlim_cur
}

/// (anonymous resident bytes, CPU seconds user+system) of process `pid`.
///
/// Anonymous memory (`RssAnon`: heap, stacks) is what a process allocates
/// for its connections. The rest of `VmRSS` is pages of its binary and
/// libraries, shared and fixed: the first connection runs code nothing ran
/// before and maps it in (measured: 128 KB for one build, 316 KB for a
/// bigger one with identical heap growth), which divided by N read as a
/// per-connection cost that was not there. `VmRSS` only on kernels without
/// `RssAnon` (before 4.5).
pub fn process_usage(pid: u32) -> Option<(u64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    };
    let rss_kib = field("RssAnon:").or_else(|| field("VmRSS:"))?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no side effects.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some((rss_kib * 1024, (utime + stime) / ticks))
}

/// Sends SIGKILL to `pid`: a node dies as in a crash, with no chance to
/// close its connections cleanly.
pub fn kill(pid: u32) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(io::Error::other)?;
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    if unsafe { libc::kill(pid, libc::SIGKILL) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sends SIGTERM to `pid`: a planned stop, which a Surge node answers with
/// a drain.
pub fn terminate(pid: u32) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(io::Error::other)?;
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
