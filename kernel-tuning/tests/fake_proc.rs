//! `kernel-tuning` against fake /proc trees (`--proc-root`): verdicts and
//! exit codes, apply with read-back, byte-for-byte rollback, nothing
//! half-applied on bad input, a read-only key (linked to a sysctl the
//! kernel refuses to anyone) and a clamping one (`KEY.clamp`, see
//! `procfs::CLAMP_SUFFIX`) that reach the read-back checks. Apply and
//! rollback also run as uid 65534 when the test runs as root. One test
//! touches the real /proc/sys when run as root, with a harmless key it puts
//! back.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use kernel_tuning::keys::{Role, KEYS};
use kernel_tuning::plan::plan;

const BIN: &str = env!("CARGO_BIN_EXE_kernel-tuning");

/// A fake proc tree whose every key already satisfies a plan for `n`
/// connections (values written with the kernel's tab separators).
fn good_tree(n: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let p = plan(n, Role::Server, 5120);
    for s in &p.settings {
        let key = KEYS.iter().find(|k| k.name == s.key).unwrap();
        write(
            dir.path(),
            &key.path(),
            &format!(
                "{}\n",
                s.values
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join("\t")
            ),
        );
    }
    let limits = format!(
        "Limit                     Soft Limit           Hard Limit           Units     \nMax open files            {0}              {0}              files     \n",
        p.nofile
    );
    write(dir.path(), "self/limits", &limits);
    write(
        dir.path(),
        "4242/limits",
        "Max open files            1024                 4096                 files     \n",
    );
    write(dir.path(), "sys/fs/file-nr", "1024\t0\t9999999\n");
    write(
        dir.path(),
        "net/sockstat",
        "sockets: used 40\nTCP: inuse 12 orphan 0 tw 3 alloc 14 mem 7\n",
    );
    dir
}

fn write(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn read(root: &Path, rel: &str) -> String {
    std::fs::read_to_string(root.join(rel)).unwrap()
}

fn run(root: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .arg("--proc-root")
        .arg(root)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn check_json(root: &Path, args: &[&str]) -> (i32, serde_json::Value) {
    let mut all = vec!["check", "--json"];
    all.extend_from_slice(args);
    let (code, out, err) = run(root, &all);
    (
        code,
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out} {err}")),
    )
}

fn verdict(report: &serde_json::Value, key: &str) -> String {
    report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["key"] == key)
        .map_or("missing".into(), |r| r["verdict"].as_str().unwrap().into())
}

fn profile(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("profile.conf");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn all_keys_fine_exits_0() {
    let tree = good_tree(1_000_000);
    let (code, report) = check_json(tree.path(), &["--connections", "1000000"]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(verdict(&report, "net.ipv4.tcp_mem"), "ok");
    assert_eq!(verdict(&report, "nofile (this process)"), "ok");
    let (code, table, _) = run(tree.path(), &["check", "--connections", "1000000"]);
    assert_eq!(code, 0);
    assert!(table.contains("all settings are enough"));
}

#[test]
fn short_keys_exit_1_with_what_to_do() {
    let tree = good_tree(1_000_000);
    write(tree.path(), "sys/net/core/somaxconn", "128\n");
    write(
        tree.path(),
        "sys/net/ipv4/tcp_rmem",
        "4096\t131072\t6291456\n",
    );
    let (code, report) = check_json(tree.path(), &["--connections", "1000000"]);
    assert_eq!(code, 1);
    assert_eq!(verdict(&report, "net.core.somaxconn"), "short");
    assert_eq!(verdict(&report, "net.ipv4.tcp_rmem"), "short");
    assert_eq!(verdict(&report, "fs.file-max"), "ok");
    let (_, table, _) = run(tree.path(), &["check", "--connections", "1000000"]);
    assert!(
        table.contains("sysctl -w net.core.somaxconn=\"16384\""),
        "{table}"
    );
    // A running server's limits, by PID.
    let (code, report) = check_json(tree.path(), &["--connections", "1000000", "--pid", "4242"]);
    assert_eq!(
        (code, verdict(&report, "nofile (process 4242)")),
        (1, "short".into())
    );
}

#[test]
fn absent_conntrack_is_not_applicable_and_apply_refuses_it_politely() {
    let tree = good_tree(100_000);
    std::fs::remove_file(tree.path().join("sys/net/netfilter/nf_conntrack_max")).unwrap();
    let (code, report) = check_json(tree.path(), &["--connections", "100000"]);
    assert_eq!(
        (code, verdict(&report, "net.netfilter.nf_conntrack_max")),
        (0, "n/a".into())
    );
    let prof = profile(tree.path(), "net.netfilter.nf_conntrack_max = 131072\n");
    let rb = tree.path().join("rb.json");
    let (code, out, _) = run(
        tree.path(),
        &[
            "apply",
            "--profile",
            prof.to_str().unwrap(),
            "--rollback-file",
            rb.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 1);
    assert!(
        out.contains("refused") && out.contains("nf_conntrack is not loaded"),
        "{out}"
    );
}

#[test]
fn malformed_live_value_is_an_error_and_nothing_is_written() {
    let tree = good_tree(1_000_000);
    write(tree.path(), "sys/net/core/somaxconn", "lots\n");
    write(tree.path(), "sys/fs/file-max", "10\n");
    let (code, _, err) = run(tree.path(), &["check", "--connections", "1000000"]);
    assert_eq!(code, 2);
    assert!(err.contains("somaxconn") && err.contains("lots"), "{err}");
    let prof = profile(
        tree.path(),
        "fs.file-max = 5000000\nnet.core.somaxconn = 65535\n",
    );
    let rb = tree.path().join("rb.json");
    let (code, _, err) = run(
        tree.path(),
        &[
            "apply",
            "--profile",
            prof.to_str().unwrap(),
            "--rollback-file",
            rb.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert_eq!(
        read(tree.path(), "sys/fs/file-max"),
        "10\n",
        "file-max must not be half-applied"
    );
    assert!(!rb.exists());
}

#[test]
fn bad_profiles_are_refused_before_anything_is_written() {
    let tree = good_tree(1_000_000);
    write(tree.path(), "sys/fs/file-max", "10\n");
    let before = read(tree.path(), "sys/fs/file-max");
    for (bad, says) in [
        (
            "fs.file-max = 5000000\nnet.ipv4.tcp_tw_recycle = 1\n",
            "not a key",
        ),
        ("fs.file-max = 5000000\nnet.core.somaxconn = many\n", "many"),
        ("fs.file-max = 5000000\nthis is not a setting\n", ":2"),
        ("# only comments\n", "no settings"),
    ] {
        let prof = profile(tree.path(), bad);
        let rb = tree.path().join("rb.json");
        let (code, _, err) = run(
            tree.path(),
            &[
                "apply",
                "--profile",
                prof.to_str().unwrap(),
                "--rollback-file",
                rb.to_str().unwrap(),
            ],
        );
        assert_eq!(code, 2, "{bad}");
        assert!(err.contains(says), "{err} should say {says}");
        assert_eq!(read(tree.path(), "sys/fs/file-max"), before);
        assert!(!rb.exists());
    }
}

/// A sysctl the real kernel refuses to let anyone write, root included
/// (procfs checks a sysctl's mode bits even for root). A fake key linked to
/// it is read-only by construction, for whichever user runs the test.
const KERNEL_READ_ONLY: &str = "/proc/sys/kernel/cap_last_cap";

/// Makes `rel` in the fake tree a read-only key: a link to
/// [`KERNEL_READ_ONLY`] (whose value, 40 or so, falls short of a
/// tcp_fin_timeout of 15).
fn read_only_key(root: &Path, rel: &str) {
    let target = Path::new(KERNEL_READ_ONLY);
    assert!(
        std::fs::read_to_string(target).is_ok(),
        "{KERNEL_READ_ONLY} is on every Linux since 3.2"
    );
    let path = root.join(rel);
    std::fs::remove_file(&path).unwrap();
    std::os::unix::fs::symlink(target, &path).unwrap();
}

/// Who runs the binary: this test's own user, or another uid through
/// `setpriv` (with a copy of the binary that uid can execute).
enum User {
    Same,
    Other {
        uid: u32,
        setpriv: PathBuf,
        bin: PathBuf,
    },
}

impl User {
    fn run(&self, root: &Path, args: &[&str]) -> (i32, String, String) {
        let mut cmd = match self {
            User::Same => Command::new(BIN),
            User::Other { uid, setpriv, bin } => {
                let mut c = Command::new(setpriv);
                c.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={uid}"))
                    .args(["--clear-groups", "--"])
                    .arg(bin);
                c
            }
        };
        let out = cmd
            .arg("--proc-root")
            .arg(root)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

fn outcome<'a>(outcomes: &'a serde_json::Value, key: &str) -> &'a serde_json::Value {
    outcomes
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["key"] == key)
        .unwrap_or_else(|| panic!("no outcome for {key}: {outcomes}"))
}

/// Apply writes and verifies, refuses a read-only key, never lowers a
/// higher value; rollback restores byte for byte and leaves the read-only
/// key alone. Run as this test's user and, from root, as `nobody`.
fn apply_and_rollback(user: &User, tree: &tempfile::TempDir) {
    let root = tree.path();
    write(root, "sys/net/core/somaxconn", "128\n");
    write(root, "sys/net/ipv4/tcp_mem", "1000\t2000   3000\n");
    read_only_key(root, "sys/net/ipv4/tcp_fin_timeout");
    let originals: Vec<(String, String)> = [
        "sys/net/core/somaxconn",
        "sys/net/ipv4/tcp_mem",
        "sys/fs/file-max",
    ]
    .iter()
    .map(|k| (k.to_string(), read(root, k)))
    .collect();
    let prof = profile(root, "net.core.somaxconn = 16384\nnet.ipv4.tcp_mem = 100000 200000 300000\nnet.ipv4.tcp_fin_timeout = 15\nfs.file-max = 100\n");
    let rb = root.join("state/rb.json");
    let sysctl_dir = root.join("sysctl.d");
    std::fs::create_dir_all(&sysctl_dir).unwrap();
    if let User::Other { uid, .. } = user {
        give_tree_to(root, *uid);
    }

    // Dry run: says what would change, writes nothing.
    let (code, out, _) = user.run(
        root,
        &[
            "apply",
            "--profile",
            prof.to_str().unwrap(),
            "--dry-run",
            "--rollback-file",
            rb.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("would-apply"), "{out}");
    assert_eq!(read(root, "sys/net/core/somaxconn"), "128\n");
    assert!(!rb.exists());

    let (code, out, err) = user.run(
        root,
        &[
            "apply",
            "--json",
            "--persist",
            "--sysctl-dir",
            sysctl_dir.to_str().unwrap(),
            "--profile",
            prof.to_str().unwrap(),
            "--rollback-file",
            rb.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 1, "one key was refused: {out}{err}");
    let outcomes: serde_json::Value = serde_json::from_str(&out).unwrap();
    let result = |key: &str| {
        outcome(&outcomes, key)["result"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(result("net.core.somaxconn"), "applied");
    assert_eq!(result("net.ipv4.tcp_mem"), "applied");
    assert_eq!(
        (
            result("net.ipv4.tcp_fin_timeout"),
            outcome(&outcomes, "net.ipv4.tcp_fin_timeout")["reason"].as_str()
        ),
        ("refused".to_string(), Some("read-only"))
    );
    assert_eq!(
        result("fs.file-max"),
        "unchanged",
        "a higher value is never lowered"
    );
    assert_eq!(read(root, "sys/net/core/somaxconn"), "16384\n");
    assert_eq!(
        read(root, "sys/net/ipv4/tcp_mem"),
        "100000\t200000\t300000\n"
    );
    assert!(sysctl_dir.join("60-surge-kernel-tuning.conf").exists());

    let (code, out, err) = user.run(root, &["rollback", rb.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    for (key, original) in originals {
        assert_eq!(read(root, &key), original, "{key} restored byte for byte");
    }
    assert!(
        out.lines()
            .any(|l| l.starts_with("net.ipv4.tcp_fin_timeout") && l.contains("unchanged")),
        "the read-only key is left alone: {out}"
    );
    assert!(
        !sysctl_dir.join("60-surge-kernel-tuning.conf").exists(),
        "persisted drop-in removed"
    );
}

/// Hands every file of the tree (not what its links point to) to `uid`.
fn give_tree_to(root: &Path, uid: u32) {
    fn walk(path: &Path, uid: u32) {
        std::os::unix::fs::lchown(path, Some(uid), Some(uid)).unwrap();
        if std::fs::symlink_metadata(path).unwrap().is_dir() {
            for entry in std::fs::read_dir(path).unwrap() {
                walk(&entry.unwrap().path(), uid);
            }
        }
    }
    walk(root, uid);
}

#[test]
fn apply_writes_verifies_skips_read_only_and_rollback_restores_byte_for_byte() {
    apply_and_rollback(&User::Same, &good_tree(1_000_000));
}

/// The unprivileged user the non-root run switches to.
const NOBODY: u32 = 65534;

#[test]
fn apply_and_rollback_hold_for_a_user_who_is_not_root() {
    // SAFETY: geteuid has no side effects.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "skipped: this run is not root, so the test above already ran as a non-root user"
        );
        return;
    }
    let Some(setpriv) = ["/usr/bin/setpriv", "/bin/setpriv"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
    else {
        eprintln!("skipped: no setpriv (util-linux) to run as uid {NOBODY}");
        return;
    };
    let tree = good_tree(1_000_000);
    // A copy of the binary in the tree, so uid 65534 can execute it
    // whatever the permissions of the target directory.
    let bin = tree.path().join("bin/kernel-tuning");
    std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
    std::fs::copy(BIN, &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let probe = Command::new(&setpriv)
        .arg(format!("--reuid={NOBODY}"))
        .arg(format!("--regid={NOBODY}"))
        .args(["--clear-groups", "--"])
        .arg(&bin)
        .arg("--help")
        .output();
    match probe {
        Ok(o) if o.status.success() => {}
        other => {
            eprintln!(
                "skipped: this machine does not let root run a program as uid {NOBODY}: {other:?}"
            );
            return;
        }
    }
    let user = User::Other {
        uid: NOBODY,
        setpriv,
        bin,
    };
    apply_and_rollback(&user, &tree);
}

#[test]
fn apply_refuses_a_value_the_kernel_clamped_and_says_what_it_kept() {
    let tree = good_tree(1_000_000);
    let root = tree.path();
    write(root, "sys/net/ipv4/tcp_max_syn_backlog", "128\n");
    // This "kernel" keeps at most 4096, as a real one clamps to a range.
    write(root, "sys/net/ipv4/tcp_max_syn_backlog.clamp", "4096\n");
    let prof = profile(root, "net.ipv4.tcp_max_syn_backlog = 65535\n");
    let rb = root.join("rb.json");
    let (code, out, err) = run(
        root,
        &[
            "apply",
            "--json",
            "--profile",
            prof.to_str().unwrap(),
            "--rollback-file",
            rb.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 1, "{out}{err}");
    let outcomes: serde_json::Value = serde_json::from_str(&out).unwrap();
    let o = outcome(&outcomes, "net.ipv4.tcp_max_syn_backlog");
    assert_eq!(
        (
            o["result"].as_str(),
            o["reason"].as_str(),
            o["after"].as_str()
        ),
        (
            Some("refused"),
            Some("the kernel kept another value"),
            Some("4096")
        ),
        "{o}"
    );
    assert_eq!(read(root, "sys/net/ipv4/tcp_max_syn_backlog"), "4096\n");
}

#[test]
fn rollback_reports_a_saved_value_the_kernel_did_not_keep() {
    let tree = good_tree(1_000_000);
    let root = tree.path();
    write(root, "sys/net/core/somaxconn", "128\n");
    write(root, "sys/net/ipv4/tcp_mem", "1000\t2000\t3000\n");
    let prof = profile(
        root,
        "net.core.somaxconn = 16384\nnet.ipv4.tcp_mem = 100000 200000 300000\n",
    );
    let rb = root.join("rb.json");
    let (code, out, err) = run(
        root,
        &[
            "apply",
            "--profile",
            prof.to_str().unwrap(),
            "--rollback-file",
            rb.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    // Since the apply, the kernel keeps at most 1500 for tcp_mem: the
    // saved 3000 cannot come back.
    write(root, "sys/net/ipv4/tcp_mem.clamp", "1500\n");
    let (code, out, _) = run(root, &["rollback", "--json", rb.to_str().unwrap()]);
    assert_eq!(code, 1, "a key was not restored: {out}");
    let outcomes: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mem = outcome(&outcomes, "net.ipv4.tcp_mem");
    assert_eq!(mem["result"], "refused", "{mem}");
    assert!(
        mem["reason"]
            .as_str()
            .is_some_and(|r| r.contains("reads back as") && r.contains("1500")),
        "{mem}"
    );
    assert_eq!(
        outcome(&outcomes, "net.core.somaxconn")["result"],
        "restored"
    );
    assert_eq!(read(root, "sys/net/core/somaxconn"), "128\n");
}

#[test]
fn real_proc_apply_and_rollback_of_a_harmless_key() {
    // SAFETY: geteuid has no side effects.
    if unsafe { libc::geteuid() } != 0 {
        println!("skipped: not root, so /proc/sys cannot be written");
        return;
    }
    let path = Path::new("/proc/sys/net/ipv4/tcp_fin_timeout");
    let Ok(original) = std::fs::read_to_string(path) else {
        println!("skipped: {} is not readable", path.display());
        return;
    };
    let current: u64 = original.trim().parse().unwrap();
    if current < 2 || std::fs::write(path, &original).is_err() {
        println!("skipped: {} is not writable here", path.display());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let prof = profile(
        dir.path(),
        &format!("net.ipv4.tcp_fin_timeout = {}\n", current - 1),
    );
    let rb = dir.path().join("rb.json");
    let (code, out, err) = run(
        Path::new("/proc"),
        &[
            "apply",
            "--profile",
            prof.to_str().unwrap(),
            "--rollback-file",
            rb.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        std::fs::read_to_string(path).unwrap().trim(),
        (current - 1).to_string()
    );
    let (code, out, _) = run(Path::new("/proc"), &["rollback", rb.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(std::fs::read_to_string(path).unwrap(), original);
}
