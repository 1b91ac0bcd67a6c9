//! `kernel-tuning` against fake /proc trees (`--proc-root`): verdicts and
//! exit codes, apply with read-back, byte-for-byte rollback, nothing
//! half-applied on bad input. One test touches the real /proc/sys when run
//! as root, with a harmless key it puts back.

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

#[test]
fn apply_writes_verifies_skips_read_only_and_rollback_restores_byte_for_byte() {
    let tree = good_tree(1_000_000);
    let root = tree.path();
    write(root, "sys/net/core/somaxconn", "128\n");
    write(root, "sys/net/ipv4/tcp_mem", "1000\t2000   3000\n");
    write(root, "sys/net/ipv4/tcp_fin_timeout", "60\n");
    let ro = root.join("sys/net/ipv4/tcp_fin_timeout");
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o444)).unwrap();
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

    // Dry run: says what would change, writes nothing.
    let (code, out, _) = run(
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

    let (code, out, _) = run(
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
    assert_eq!(code, 1, "one key was refused: {out}");
    let outcomes: serde_json::Value = serde_json::from_str(&out).unwrap();
    let result = |key: &str| {
        outcomes
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["key"] == key)
            .unwrap()["result"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(result("net.core.somaxconn"), "applied");
    assert_eq!(result("net.ipv4.tcp_mem"), "applied");
    assert_eq!(result("net.ipv4.tcp_fin_timeout"), "refused");
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

    let (code, out, _) = run(root, &["rollback", rb.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    for (key, original) in originals {
        assert_eq!(read(root, &key), original, "{key} restored byte for byte");
    }
    assert!(
        !sysctl_dir.join("60-surge-kernel-tuning.conf").exists(),
        "persisted drop-in removed"
    );
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
