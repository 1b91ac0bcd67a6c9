//! The shipped profiles are exactly what `plan` generates: regenerate each
//! and fail on any drift (run the printed command to refresh them).

use kernel_tuning::keys::Role;
use kernel_tuning::plan::{plan, DEFAULT_MEM_PER_CONN};

#[test]
fn shipped_profiles_match_the_plan() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles");
    let mut seen = 0;
    for (role, role_name) in [(Role::Server, "server"), (Role::Loadgen, "loadgen")] {
        for (size, n) in [("100k", 100_000), ("1m", 1_000_000), ("2m", 2_000_000)] {
            let path = dir.join(format!("{role_name}-{size}.conf"));
            let shipped = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let fresh = plan(n, role, DEFAULT_MEM_PER_CONN).sysctl_dropin();
            assert!(
                shipped == fresh,
                "{} drifted from the plan; regenerate with:\n  kernel-tuning plan --connections {n} --role {role_name} --format sysctl > {}",
                path.display(),
                path.display()
            );
            let parsed =
                kernel_tuning::profile::parse(&shipped, "profile").expect("profile parses");
            assert!(parsed.nofile.is_some());
            seen += 1;
        }
    }
    assert_eq!(seen, 6);
}

#[test]
fn plans_never_emit_removed_keys_and_scale_with_connections() {
    for role in [Role::Server, Role::Loadgen] {
        let small = plan(100_000, role, 5120);
        let big = plan(2_000_000, role, 5120);
        assert!(!small.sysctl_dropin().contains("tcp_tw_recycle"));
        let mem = |p: &kernel_tuning::plan::Plan| {
            p.settings
                .iter()
                .find(|s| s.key == "net.ipv4.tcp_mem")
                .map(|s| s.values.clone())
                .unwrap()
        };
        assert!(mem(&big)[2] > mem(&small)[2]);
        assert!(big.nofile > 2_000_000);
    }
    // The arithmetic is shown and right: 1M x 5120 B / 4096 B pages.
    let p = plan(1_000_000, Role::Server, 5120);
    let tcp_mem = p
        .settings
        .iter()
        .find(|s| s.key == "net.ipv4.tcp_mem")
        .unwrap();
    assert_eq!(tcp_mem.values, vec![1_250_000, 1_875_000, 2_500_000]);
    assert!(tcp_mem
        .arithmetic
        .contains("1000000 x 5120 B / 4096 B pages = 1250000"));
    assert!(
        p.settings
            .iter()
            .all(|s| s.key != "net.ipv4.ip_local_port_range"),
        "servers do not need ports"
    );
    let l = plan(1_000_000, Role::Loadgen, 5120);
    let range = l
        .settings
        .iter()
        .find(|s| s.key == "net.ipv4.ip_local_port_range")
        .unwrap();
    assert!(
        range.arithmetic.contains("needs 16 source address"),
        "{}",
        range.arithmetic
    );
    assert!(p.systemd_dropin().contains("LimitNOFILE=1051648"));
    assert!(p.limits_conf().contains("surge hard nofile 1051648"));
}
