//! The processes of a local cluster (redis-server, Surge nodes, client-sim)
//! and the guarantee that none outlives the benchmark: every child joins
//! one process group, dies with its parent (PR_SET_PDEATHSIG), and the
//! whole group is killed on drop, on error and on Ctrl-C or SIGTERM, after
//! which any kernel settings the run applied are rolled back.
//!
//! It owns starting, addressing and stopping; it must not measure. The only
//! `unsafe` of the million benchmark is here.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a started process may take to say it is ready; redis-server
/// and surge are ready in milliseconds, but 60 nodes start on 2 busy cores.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The process group of every child (0: none started yet).
static GROUP: AtomicI32 = AtomicI32::new(0);
/// Rollback files of kernel settings applied by this run, newest last.
static ROLLBACKS: Mutex<Vec<(PathBuf, PathBuf)>> = Mutex::new(Vec::new());
/// Held for a whole cleanup: the signal thread and the main thread may both
/// clean up at once (the kill ends the main thread's wait), and neither may
/// exit while the other is half way through rolling back.
static CLEANING: Mutex<()> = Mutex::new(());

/// Kills every process this run started (the whole group, so client-sim's
/// own workers too) and rolls back kernel settings, newest first. Safe to
/// call twice, and from two threads at once.
pub fn cleanup() {
    let _cleaning = CLEANING.lock().unwrap_or_else(|e| e.into_inner());
    let pgid = GROUP.swap(0, Ordering::SeqCst);
    if pgid > 0 {
        // SAFETY: killpg takes plain integers and touches no memory of ours.
        unsafe { libc::killpg(pgid, libc::SIGKILL) };
    }
    let rollbacks = std::mem::take(&mut *ROLLBACKS.lock().unwrap_or_else(|e| e.into_inner()));
    for (tool, file) in rollbacks.iter().rev() {
        let ok = Command::new(tool)
            .arg("rollback")
            .arg(file)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!(
                "million: rollback of {} failed; run: kernel-tuning rollback {}",
                file.display(),
                file.display()
            );
        }
    }
}

/// Remembers a rollback file for [`cleanup`].
pub fn remember_rollback(tool: &Path, file: &Path) {
    ROLLBACKS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((tool.to_path_buf(), file.to_path_buf()));
}

/// On SIGINT, SIGTERM or SIGHUP: clean up and exit 130.
pub fn on_signal_cleanup() -> Result<(), String> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            eprintln!("million: signal {signal}: stopping every process it started");
            cleanup();
            std::process::exit(130);
        }
    });
    Ok(())
}

/// Starts `cmd` in the run's process group, dying with this process.
pub fn spawn(cmd: &mut Command) -> Result<Child, String> {
    let pgid = GROUP.load(Ordering::SeqCst);
    cmd.process_group(pgid);
    // SAFETY: the closure runs in the child between fork and exec and only
    // makes one async-signal-safe system call.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {:?}: {e}", cmd.get_program()))?;
    if pgid == 0 {
        // The first child leads the group; the rest join it.
        GROUP.store(child.id() as i32, Ordering::SeqCst);
    }
    Ok(child)
}

/// `cargo build --release` of `packages`' binaries.
pub fn build(root: &Path, packages: &[&str]) -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root).args(["build", "--release", "--bins"]);
    for p in packages {
        cmd.args(["-p", p]);
    }
    match cmd.status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("build failed ({s})")),
        Err(e) => Err(format!("cannot run cargo: {e}")),
    }
}

/// A loopback port free right now. The benchmark picks the public port
/// once, so every node binds the same one (SO_REUSEPORT).
pub fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free loopback port: {e}"))
}

/// A log file for a child's stderr.
pub fn log_file(dir: &Path, name: &str) -> Result<Stdio, String> {
    std::fs::File::create(dir.join(name))
        .map(Stdio::from)
        .map_err(|e| format!("{}: {e}", dir.join(name).display()))
}

/// A redis-server on a loopback port, without persistence (the benchmark's
/// data is worth nothing after it).
pub struct Redis {
    pub child: Child,
    pub url: String,
}

/// Clients redis-server accepts: each Surge node holds a few connections,
/// and redis lowers this to its own open-file limit anyway.
const REDIS_MAX_CLIENTS: &str = "10000";

pub fn start_redis(logs: &Path) -> Result<Redis, String> {
    let port = free_port()?;
    let child = spawn(
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--maxclients", REDIS_MAX_CLIENTS])
            .stdout(log_file(logs, "redis.log")?)
            .stderr(Stdio::null()),
    )?;
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let pong = TcpStream::connect(("127.0.0.1", port)).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(1)))?;
            s.write_all(b"PING\r\n")?;
            let mut buf = [0u8; 7];
            s.read_exact(&mut buf)?;
            Ok(buf.starts_with(b"+PONG"))
        });
        if pong.unwrap_or(false) {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "redis-server did not answer PING on port {port} (see {}/redis.log)",
                logs.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Redis {
        child,
        url: format!("redis://127.0.0.1:{port}/0"),
    })
}

/// One Surge node.
pub struct Node {
    pub child: Child,
    /// Base URL of its publish API.
    pub publish: String,
}

/// Starts a Surge node sharing `listen` with the others; returns once it
/// has printed its addresses (its listeners are bound by then).
pub fn start_node(
    surge: &Path,
    args: &[String],
    env: &[(&str, &str)],
    log: Stdio,
) -> Result<Node, String> {
    let mut child = spawn(
        Command::new(surge)
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(log),
    )?;
    let stdout = child.stdout.take().ok_or("surge stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(READY_TIMEOUT)
        .map_err(|_| "a surge node did not start in time".to_string())?;
    let publish = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("publish="))
        .map(|u| u.trim_end_matches("/api/publish").to_string())
        .ok_or_else(|| format!("surge did not start: {}", line.trim()))?;
    Ok(Node { child, publish })
}
