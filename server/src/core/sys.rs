//! System calls beneath the core: listening sockets with SO_REUSEPORT, the
//! open-file limit, and this process's resident memory. The rest of the crate
//! may rely on these returning errors rather than panicking, and on the only
//! `unsafe` in the server being here.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Binds `count` non-blocking listeners to the same address with
/// SO_REUSEPORT, so each worker accepts on its own socket and the kernel
/// spreads new connections without a shared lock. When `addr` has port 0 the
/// first bind picks the port and the others join it.
pub fn reuseport_listeners(
    addr: SocketAddr,
    count: usize,
    backlog: u32,
) -> io::Result<Vec<mio::net::TcpListener>> {
    let mut out = Vec::with_capacity(count);
    let mut addr = addr;
    for _ in 0..count {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
        if addr.port() == 0 {
            if let Some(bound) = socket.local_addr()?.as_socket() {
                addr = bound;
            }
        }
        out.push(mio::net::TcpListener::from_std(socket.into()));
    }
    Ok(out)
}

/// The soft RLIMIT_NOFILE of this process.
pub fn open_file_limit() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own and has no other effect.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    if rc != 0 {
        return 1024;
    }
    usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX)
}

/// Resident set size of this process in bytes, from /proc/self/statm.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no side effects.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).unwrap_or(4096))
}

/// Whether an accept error means we ran out of file descriptors or memory
/// (retry later) rather than a problem with one connection.
pub fn is_resource_exhaustion(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// A descriptor held in reserve (on /dev/null), to be given up when
/// accept runs out so one waiting connection can be accepted and refused.
pub fn spare_descriptor() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null").ok()
}

/// Keeps large allocations (the slabs, subscriber lists and hash tables
/// that grow with connections) on their own mmap'd pages. glibc otherwise
/// raises its mmap threshold after the first large free, so each doubling of
/// a big vector leaves the old buffer resident in the heap; pinned, a
/// realloc is an mremap: no copy and nothing left behind. Call once at start.
pub fn pin_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator tuning; called before the
        // worker threads start allocating.
        let ok = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024) };
        if ok != 1 {
            tracing::debug!("mallopt(M_MMAP_THRESHOLD) refused");
        }
    }
}
