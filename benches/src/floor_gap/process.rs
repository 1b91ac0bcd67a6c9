//! The processes `benches floor-gap` measures: starting a server pinned to
//! one CPU (with `taskset`, so every thread it starts inherits the pin),
//! pinning this process to another, and reading a process's CPU time.
//!
//! CPU time is read two ways: `utime + stime` from /proc/PID/stat (the
//! figure `top` and `ps` show, in 10 ms clock ticks) and the sum of every
//! thread's run time from /proc/PID/task/*/schedstat (nanoseconds). Both
//! are the same kernel accounting; the ratios use the nanosecond one,
//! because at 18,000 handshakes of ~20 us a 10 ms tick is 3% of the result.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};

/// A server process pinned to one CPU, killed on drop.
pub struct Pinned {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    pub ws: SocketAddr,
    /// `host:port` of the publish API, if it has one.
    pub publish: Option<String>,
}

impl Drop for Pinned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `program args` on CPU `cpu` and reads its first line, which names
/// its addresses (`ws://ADDR/ws publish=http://ADDR/api/publish ...`).
pub fn start_pinned(program: &Path, args: &[&str], cpu: usize) -> Result<Pinned, String> {
    let mut child = Command::new("taskset")
        .arg("-c")
        .arg(cpu.to_string())
        .arg(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("taskset {}: {e}", program.display()))?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().ok_or("stdout")?)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let field = |prefix: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(prefix))
            .map(|w| w.split('/').next().unwrap_or_default().to_string())
    };
    let ws = field("ws://")
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("{}: no ws:// address in {line:?}", program.display()))?;
    Ok(Pinned {
        stdin: child.stdin.take(),
        publish: field("publish=http://"),
        ws,
        child,
    })
}

/// Pins this process (every thread) to `cpu`.
pub fn pin_self(cpu: usize) -> Result<(), String> {
    let ok = Command::new("taskset")
        .args(["-a", "-p", "-c", &cpu.to_string()])
        .arg(std::process::id().to_string())
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("taskset: {e}"))?
        .success();
    if ok {
        Ok(())
    } else {
        Err(format!("taskset could not pin this process to CPU {cpu}"))
    }
}

/// CPU seconds `pid` has used: (nanosecond thread sum, utime + stime).
pub fn cpu_seconds(pid: u32) -> Result<(f64, f64), String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| e.to_string())?;
    // Fields after the command name, which may itself hold spaces: state is
    // field 3, utime 14 and stime 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    let ticks = tick(11).zip(tick(12)).map(|(u, s)| u + s).ok_or("stat")?;
    let mut ns = 0u64;
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).map_err(|e| e.to_string())?;
    for task in tasks.flatten() {
        let text = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        ns += text
            .split_whitespace()
            .next()
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0);
    }
    // USER_HZ is 100 on every Linux architecture we run on.
    Ok((ns as f64 / 1e9, ticks / 100.0))
}

/// The 1-, 5- and 15-minute load averages, as the kernel prints them.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
