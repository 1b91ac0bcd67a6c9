//! A planned restart of Surge nodes during a run, as a deploy does it:
//! SIGTERM (the node drains: 1012 closes spread over its window), wait for
//! it to exit, start it again exactly as it was started (its command line,
//! environment and working directory, read from /proc before the signal,
//! so `--state-file` and every other flag come back), and wait until it
//! prints that it listens. Several nodes go one after another, each only
//! once the one before is back, so the others always serve.
//!
//! Also the drain's reconnect profile, from what the browsers counted.
//! It never publishes or counts deliveries: that is `confirm`'s.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// How often a draining node is checked for having exited: its drain lasts
/// seconds, so a tenth of one costs nothing and adds little to the figures.
const EXIT_POLL: Duration = Duration::from_millis(20);

/// The line a Surge node prints once every port is bound and every worker
/// runs (server/src/main.rs).
const READY_LINE: &str = "surge listening:";

/// One node restarted.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Restarted {
    pub old_pid: u32,
    pub new_pid: u32,
    /// Unix milliseconds when the SIGTERM was sent.
    pub sigterm_unix_ms: u64,
    /// From the SIGTERM until the old process was gone (grace, drain
    /// window, shutdown, state file).
    pub stop_ms: u64,
    /// From the old process gone until the new one listened.
    pub start_ms: u64,
}

/// How a node was started, read from /proc while it runs.
struct Launch {
    exe: PathBuf,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    cwd: PathBuf,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// NUL-separated fields of a /proc file.
fn proc_fields(pid: u32, file: &str) -> Result<Vec<OsString>, String> {
    let raw = std::fs::read(format!("/proc/{pid}/{file}"))
        .map_err(|e| format!("/proc/{pid}/{file}: {e}"))?;
    Ok(raw
        .split(|b| *b == 0)
        .filter(|f| !f.is_empty())
        .map(|f| OsString::from_vec(f.to_vec()))
        .collect())
}

impl Launch {
    fn of(pid: u32) -> Result<Launch, String> {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
            .map_err(|e| format!("/proc/{pid}/exe: {e}"))?;
        // A binary replaced since it started (a rebuild, a deploy) shows as
        // "PATH (deleted)": the file now at PATH is what a restart runs.
        let exe = match exe.to_str().and_then(|s| s.strip_suffix(" (deleted)")) {
            Some(path) => PathBuf::from(path),
            None => exe,
        };
        let args = proc_fields(pid, "cmdline")?.into_iter().skip(1).collect();
        let env = proc_fields(pid, "environ")?
            .into_iter()
            .filter_map(|kv| {
                let kv = kv.into_vec();
                let eq = kv.iter().position(|b| *b == b'=')?;
                Some((
                    OsString::from_vec(kv[..eq].to_vec()),
                    OsString::from_vec(kv[eq + 1..].to_vec()),
                ))
            })
            .collect();
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd"))
            .map_err(|e| format!("/proc/{pid}/cwd: {e}"))?;
        Ok(Launch {
            exe,
            args,
            env,
            cwd,
        })
    }
}

/// Whether `pid` has ended: gone, or a zombie its parent has not reaped
/// yet (it holds no socket and serves nothing).
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_none_or(|state| state == "Z" || state == "X"),
    }
}

/// Drains and restarts each node of `pids` in turn; gives up (an error)
/// when one takes longer than `bound` to stop or to start.
pub fn rolling(pids: &[u32], bound: Duration) -> Result<Vec<Restarted>, String> {
    pids.iter().map(|&pid| restart(pid, bound)).collect()
}

fn restart(pid: u32, bound: Duration) -> Result<Restarted, String> {
    let launch = Launch::of(pid)?;
    let sigterm_unix_ms = unix_ms();
    let signalled = Instant::now();
    crate::sys::terminate(pid).map_err(|e| format!("kill -TERM {pid}: {e}"))?;
    eprintln!("client-sim: SIGTERM to node {pid}: draining");
    while !exited(pid) {
        if signalled.elapsed() > bound {
            return Err(format!(
                "node {pid} did not exit within {bound:?} of SIGTERM"
            ));
        }
        std::thread::sleep(EXIT_POLL);
    }
    let stop = signalled.elapsed();
    let started = Instant::now();
    let mut child = Command::new(&launch.exe)
        .args(&launch.args)
        .env_clear()
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&launch.cwd)
        .stdin(Stdio::null())
        // Both through pipes, never client-sim's own stderr: a node that
        // held that open would keep whoever reads client-sim's output (a
        // test, a `| tee`) waiting until the node ends.
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("restarting {}: {e}", launch.exe.display()))?;
    let new_pid = child.id();
    let stdout = child.stdout.take().ok_or("restarted node's stdout")?;
    let stderr = child.stderr.take().ok_or("restarted node's stderr")?;
    let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
    // The node is not ours to stop: it keeps serving after client-sim ends
    // (and its output then goes nowhere). These threads pass on what it
    // prints meanwhile and notice when it is ready.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with(READY_LINE) {
                let _ = ready_tx.try_send(());
            }
            eprintln!("client-sim: node {new_pid}: {line}");
        }
    });
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("client-sim: node {new_pid}: {line}");
        }
    });
    if ready_rx.recv_timeout(bound).is_err() {
        let _ = child.kill();
        return Err(format!(
            "node {pid} restarted as {new_pid} but did not listen within {bound:?}"
        ));
    }
    let start = started.elapsed();
    eprintln!(
        "client-sim: node {pid} restarted as {new_pid} (stopped in {:.1} s, listening {} ms later)",
        stop.as_secs_f64(),
        start.as_millis()
    );
    Ok(Restarted {
        old_pid: pid,
        new_pid,
        sigterm_unix_ms,
        stop_ms: stop.as_millis() as u64,
        start_ms: start.as_millis() as u64,
    })
}

/// The reconnect profile of the drains: the browsers' 1012 closes and
/// their reconnections per second, from the first close on.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Profile {
    /// 1012 closes and reconnections (opened again) per second, bucket 0
    /// starting at the first close.
    pub closes_per_second: Vec<u64>,
    pub reconnects_per_second: Vec<u64>,
    pub closes: u64,
    pub reconnects: u64,
    pub peak_closes_per_second: u64,
    pub peak_reconnects_per_second: u64,
    /// From the first close to the last, seconds (to a tenth): the drain
    /// window as the browsers saw it (with several nodes, the windows and
    /// the restarts between them).
    pub closing_seconds: f64,
    /// Closes per second had they been spread evenly: N / window, with
    /// the window as observed (`closing_seconds`).
    pub even_share_per_second: f64,
}

/// Tenths of a second per one-second bucket.
const TENTHS: u64 = 10;

impl Profile {
    /// From counts of closes and reconnects per tenth of a second (Unix
    /// time); `None` without a single close.
    pub fn of(closes: &BTreeMap<u64, u64>, reconnects: &BTreeMap<u64, u64>) -> Option<Profile> {
        let first = *closes.keys().next()?;
        let last_close = *closes.keys().next_back()?;
        let last = reconnects
            .keys()
            .next_back()
            .map_or(last_close, |&r| r.max(last_close));
        let series = |m: &BTreeMap<u64, u64>| -> Vec<u64> {
            let mut out = vec![0; ((last - first) / TENTHS + 1) as usize];
            for (&t, &n) in m.range(first..) {
                out[((t - first) / TENTHS) as usize] += n;
            }
            out
        };
        let closes_per_second = series(closes);
        let reconnects_per_second = series(reconnects);
        let closing_seconds = (last_close - first + 1) as f64 / TENTHS as f64;
        let total: u64 = closes_per_second.iter().sum();
        Some(Profile {
            peak_closes_per_second: closes_per_second.iter().copied().max().unwrap_or(0),
            peak_reconnects_per_second: reconnects_per_second.iter().copied().max().unwrap_or(0),
            closes: total,
            reconnects: reconnects_per_second.iter().sum(),
            closing_seconds,
            even_share_per_second: total as f64 / closing_seconds,
            closes_per_second,
            reconnects_per_second,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_profile_counts_from_the_first_close_and_finds_the_peaks() {
        // Closes over 2 s (tenths 1000..=1019), 10 a tenth but 30 in one.
        let mut closes: BTreeMap<u64, u64> = (1000..1020).map(|t| (t, 10)).collect();
        closes.insert(1015, 30);
        // A reconnection before the first close (a straggler) is not in the drain.
        let reconnects = BTreeMap::from([(999, 1), (1005, 9), (1012, 11), (1041, 10)]);
        let p = Profile::of(&closes, &reconnects).expect("a profile");
        assert_eq!(p.closes_per_second, vec![100, 120, 0, 0, 0]);
        assert_eq!(p.reconnects_per_second, vec![9, 11, 0, 0, 10]);
        assert_eq!((p.closes, p.reconnects), (220, 30));
        assert_eq!(
            (p.peak_closes_per_second, p.peak_reconnects_per_second),
            (120, 11)
        );
        assert_eq!((p.closing_seconds, p.even_share_per_second), (2.0, 110.0));
        assert_eq!(Profile::of(&BTreeMap::new(), &reconnects), None);
    }

    #[test]
    fn this_process_is_running_and_a_reaped_child_has_exited() {
        assert!(!exited(std::process::id()));
        let mut child = Command::new("true").spawn().expect("true runs");
        let pid = child.id();
        child.wait().expect("reaped");
        assert!(exited(pid));
    }
}
