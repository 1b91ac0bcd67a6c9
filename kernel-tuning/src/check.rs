//! `check`: the live kernel against what a plan or profile requires, as a
//! table of key, current, required, verdict and what to do. It only reads;
//! the one thing it tries is whether this process could raise its own hard
//! open-file limit, to say plainly when a container forbids it.

use crate::keys::Key;
use crate::procfs::ProcRoot;
use crate::Error;

/// What is required: from a plan or a profile file.
pub struct Required {
    pub nofile: Option<u64>,
    pub settings: Vec<(&'static Key, Vec<u64>)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ok,
    Short,
    Absent,
    #[serde(rename = "n/a")]
    NotApplicable,
    Info,
}

#[derive(Debug, serde::Serialize)]
pub struct Row {
    pub key: String,
    pub current: String,
    pub required: String,
    pub verdict: Verdict,
    pub action: String,
}

#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub ok: bool,
    pub rows: Vec<Row>,
}

fn show(values: &[u64]) -> String {
    values
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether this process may raise its hard RLIMIT_NOFILE: tries hard + 1
/// and puts it back. Inside a container whose runtime fixed the limit the
/// kernel says EPERM even to root.
pub fn can_raise_hard_nofile() -> bool {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on our own process with a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return false;
        }
        if lim.rlim_max == libc::RLIM_INFINITY {
            return true;
        }
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_cur,
            rlim_max: lim.rlim_max + 1,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
            return false;
        }
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    true
}

pub fn check(proc: &ProcRoot, req: &Required, pid: Option<u32>) -> Result<Report, Error> {
    let mut rows = Vec::new();
    for (key, want) in &req.settings {
        let row = match proc.read(key)? {
            None if key.conntrack => Row {
                key: key.name.into(),
                current: "-".into(),
                required: show(want),
                verdict: Verdict::NotApplicable,
                action: "nf_conntrack is not loaded; nothing to do".into(),
            },
            None => Row {
                key: key.name.into(),
                current: "-".into(),
                required: show(want),
                verdict: Verdict::Absent,
                action: "this kernel has no such key; check the kernel version".into(),
            },
            Some(live) => {
                let ok = key.satisfied(&live.values, want);
                Row {
                    key: key.name.into(),
                    current: show(&live.values),
                    required: show(want),
                    verdict: if ok { Verdict::Ok } else { Verdict::Short },
                    action: if ok {
                        String::new()
                    } else {
                        format!("sysctl -w {}=\"{}\"", key.name, show(want))
                    },
                }
            }
        };
        rows.push(row);
    }
    if let Some(need) = req.nofile {
        rows.push(nofile_row(proc, pid, need)?);
    }
    let (allocated, _, max) = proc.file_nr()?;
    rows.push(info(
        "fs.file-nr (in use)",
        format!("{allocated} of {max} open files"),
    ));
    let (sockets, tcp, pages) = proc.sockstat()?;
    rows.push(info(
        "sockstat (in use)",
        format!("{sockets} sockets, {tcp} TCP, {pages} pages of TCP memory"),
    ));
    let ok = rows.iter().all(|r| {
        matches!(
            r.verdict,
            Verdict::Ok | Verdict::NotApplicable | Verdict::Info
        )
    });
    Ok(Report { ok, rows })
}

fn info(key: &str, current: String) -> Row {
    Row {
        key: key.into(),
        current,
        required: "-".into(),
        verdict: Verdict::Info,
        action: String::new(),
    }
}

fn nofile_row(proc: &ProcRoot, pid: Option<u32>, need: u64) -> Result<Row, Error> {
    let (soft, hard) = proc.nofile(pid)?;
    let who = pid.map_or("this process".to_string(), |p| format!("process {p}"));
    let fmt = |v: u64| {
        if v == u64::MAX {
            "unlimited".to_string()
        } else {
            v.to_string()
        }
    };
    let (verdict, action) = if soft >= need {
        (Verdict::Ok, String::new())
    } else if hard >= need {
        (
            Verdict::Short,
            format!(
                "raise the soft limit of {who}: LimitNOFILE={need} (systemd) or ulimit -n {need}"
            ),
        )
    } else if proc.is_real() && pid.is_none() && !can_raise_hard_nofile() {
        (
            Verdict::Short,
            format!(
                "cannot be raised from inside this container: its runtime fixed the hard limit at {}; \
                 raise it where the container is started (docker run --ulimit nofile={need}:{need}, \
                 LimitNOFILE={need} in the unit that starts it), or run several processes (client-sim --procs)",
                fmt(hard)
            ),
        )
    } else {
        (
            Verdict::Short,
            format!("raise the hard limit of {who}: LimitNOFILE={need} in its systemd unit, or limits.conf (see plan)"),
        )
    };
    Ok(Row {
        key: format!("nofile ({who})"),
        current: format!("{} soft / {} hard", fmt(soft), fmt(hard)),
        required: need.to_string(),
        verdict,
        action,
    })
}

impl Report {
    /// A fixed-width table for a terminal.
    pub fn table(&self) -> String {
        let verdict = |v: Verdict| match v {
            Verdict::Ok => "ok",
            Verdict::Short => "SHORT",
            Verdict::Absent => "ABSENT",
            Verdict::NotApplicable => "n/a",
            Verdict::Info => "info",
        };
        let w = |f: &dyn Fn(&Row) -> usize, title: usize| {
            self.rows.iter().map(f).max().unwrap_or(0).max(title)
        };
        let (wk, wc, wr) = (
            w(&|r| r.key.len(), 3),
            w(&|r| r.current.len(), 7),
            w(&|r| r.required.len(), 8),
        );
        let mut out = format!(
            "{:wk$}  {:wc$}  {:wr$}  {:7}  action\n",
            "key", "current", "required", "verdict"
        );
        for r in &self.rows {
            out.push_str(&format!(
                "{:wk$}  {:wc$}  {:wr$}  {:7}  {}\n",
                r.key,
                r.current,
                r.required,
                verdict(r.verdict),
                r.action
            ));
        }
        out.push_str(if self.ok {
            "\nall settings are enough\n"
        } else {
            "\nsome settings fall short (see action)\n"
        });
        out
    }
}
