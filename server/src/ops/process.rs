//! Figures about this process from /proc, for /metrics: open descriptors,
//! CPU time. Each call reads /proc afresh; they are only called on a scrape.

/// Clock ticks per second in /proc/self/stat. The kernel exports these
/// times in USER_HZ, which its ABI fixes at 100 on x86_64 and aarch64 (what
/// `sysconf(_SC_CLK_TCK)` returns there), so no system call is needed.
const USER_HZ: f64 = 100.0;

/// Descriptors this process holds open: the entries of /proc/self/fd
/// (less the one the listing itself holds open).
pub fn open_descriptors() -> Option<u64> {
    let entries = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    Some(entries.saturating_sub(1))
}

/// User plus system CPU seconds this process has used, from /proc/self/stat.
pub fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    cpu_seconds_of(&stat)
}

/// utime and stime are fields 14 and 15; the command name (field 2) may
/// hold spaces and parentheses, so fields are counted after its last ')'.
fn cpu_seconds_of(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_past_a_command_name_with_spaces() {
        let stat = "42 (surge (x) y) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0";
        assert_eq!(cpu_seconds_of(stat), Some(3.0));
    }

    #[test]
    fn this_process_has_descriptors_and_cpu_time() {
        assert!(open_descriptors().is_some_and(|n| n >= 3));
        assert!(cpu_seconds().is_some());
    }
}
