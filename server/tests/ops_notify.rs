//! systemd's notification protocol against the real `surge` binary: a unix
//! datagram socket of ours stands in for systemd as `$NOTIFY_SOCKET`.
//! READY=1 comes only once the ports answer, WATCHDOG=1 comes while the
//! workers run, STOPPING=1 comes on SIGTERM, and the process then exits 0.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);

struct Systemd {
    socket: UnixDatagram,
    dir: std::path::PathBuf,
}

impl Systemd {
    fn new(name: &str) -> Systemd {
        let dir = std::env::temp_dir().join(format!("surge-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = UnixDatagram::bind(dir.join("notify")).unwrap();
        socket.set_read_timeout(Some(WAIT)).unwrap();
        Systemd { socket, dir }
    }

    /// The next notification, whole.
    fn next(&self) -> String {
        let mut buf = [0u8; 4096];
        let n = self.socket.recv(&mut buf).expect("a notification in time");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    /// Reads notifications until one holds `line`; returns those before it.
    fn until(&self, line: &str) -> Vec<String> {
        let deadline = Instant::now() + WAIT;
        let mut before = Vec::new();
        while Instant::now() < deadline {
            let msg = self.next();
            if msg.lines().any(|l| l == line) {
                return before;
            }
            before.push(msg);
        }
        panic!("no {line} within {WAIT:?}; got {before:?}");
    }
}

impl Drop for Systemd {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

/// A loopback address with a port free right now, so the test knows the
/// ports before surge prints them.
fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

struct Ports {
    public: String,
    admin: String,
}

fn spawn(systemd: &Systemd, watchdog_usec: Option<u64>) -> (Child, Ports) {
    let ports = Ports {
        public: free_addr(),
        admin: free_addr(),
    };
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_surge"));
    cmd.args(surge::config::EPHEMERAL_LOOPBACK)
        .args(["--listen", &ports.public, "--admin-listen", &ports.admin])
        .args([
            "--workers",
            "2",
            "--log",
            "warn",
            "--shutdown-timeout",
            "1s",
        ])
        // SIGTERM drains first: a short one, so the tests stay quick.
        .args(["--drain-grace", "0s", "--drain-window", "1s"])
        .env("NOTIFY_SOCKET", systemd.dir.join("notify"))
        .env_remove("WATCHDOG_PID")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    match watchdog_usec {
        Some(usec) => cmd.env("WATCHDOG_USEC", usec.to_string()),
        None => cmd.env_remove("WATCHDOG_USEC"),
    };
    (cmd.spawn().expect("surge starts"), ports)
}

/// The admin address from the line surge prints once it listens.
fn admin_addr(child: &mut Child) -> String {
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let admin = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("admin=http://"))
        .unwrap_or_else(|| panic!("no admin address in {line:?}"));
    admin.trim_end_matches("/metrics").to_string()
}

fn sigterm(child: &Child) {
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: kill only sends a signal to the process we spawned.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "surge did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn ready_comes_after_the_ports_answer_and_stopping_on_sigterm() {
    let systemd = Systemd::new("notify");
    let (mut child, ports) = spawn(&systemd, None);
    let before = systemd.until("READY=1");
    assert!(before.is_empty(), "notified before ready: {before:?}");
    // surge prints its ports once they are bound, before it says READY=1:
    // that line is already waiting in the pipe (poll with no wait).
    let stdout = child.stdout.as_ref().unwrap();
    let mut pfd = libc::pollfd {
        fd: std::os::fd::AsRawFd::as_raw_fd(stdout),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll reads one pollfd we own and waits not at all.
    let ready = unsafe { libc::poll(&mut pfd, 1, 0) };
    assert_eq!(ready, 1, "READY=1 came before the ports were bound");
    // READY=1 means every port is bound: both answer at once, no retry.
    std::net::TcpStream::connect(&ports.public).expect("public port bound at READY=1");
    let health = ureq::get(&format!("http://{}/healthz", ports.admin))
        .timeout(WAIT)
        .call()
        .expect("admin answers once READY=1 was sent");
    assert_eq!(health.status(), 200);
    sigterm(&child);
    systemd.until("STOPPING=1");
    let status = wait_exit(&mut child);
    assert!(status.success(), "{status}");
}

#[test]
fn watchdog_pings_at_half_its_timeout_while_workers_run() {
    let systemd = Systemd::new("watchdog");
    // 400 ms: pings every 200 ms, so several arrive within a second.
    let (mut child, _) = spawn(&systemd, Some(400_000));
    systemd.until("READY=1");
    for _ in 0..3 {
        systemd.until("WATCHDOG=1");
    }
    sigterm(&child);
    systemd.until("STOPPING=1");
    assert!(wait_exit(&mut child).success());
}

#[test]
fn without_notify_socket_surge_runs_and_stops_as_before() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_surge"))
        .args(surge::config::EPHEMERAL_LOOPBACK)
        .args([
            "--workers",
            "1",
            "--log",
            "warn",
            "--shutdown-timeout",
            "1s",
        ])
        // SIGTERM drains first: a short one, so the tests stay quick.
        .args(["--drain-grace", "0s", "--drain-window", "1s"])
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("surge starts");
    let admin = admin_addr(&mut child);
    let health = ureq::get(&format!("http://{admin}/healthz"))
        .timeout(WAIT)
        .call()
        .expect("admin answers");
    assert_eq!(health.status(), 200);
    sigterm(&child);
    assert!(wait_exit(&mut child).success());
}
