//! Reading and writing the live kernel state under a proc root (`/proc` by
//! default, a fake tree in tests): sysctls, a process's open-file limits,
//! open-file usage and socket counts. Every read says exactly what is
//! wrong with a file it cannot use.

use std::path::{Path, PathBuf};

use crate::keys::Key;
use crate::Error;

/// A live sysctl value: its exact text (for byte-for-byte rollback) and its
/// numbers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Live {
    pub text: String,
    pub values: Vec<u64>,
}

/// Parses whitespace-separated unsigned numbers.
pub fn parse_numbers(text: &str) -> Option<Vec<u64>> {
    let values: Option<Vec<u64>> = text.split_whitespace().map(|t| t.parse().ok()).collect();
    values.filter(|v| !v.is_empty())
}

/// Formats numbers the way the kernel prints multi-value sysctls.
pub fn format_numbers(values: &[u64]) -> String {
    values
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join("\t")
}

/// Fake trees only (tests): a file named like a key's file plus this suffix
/// (`sys/net/core/somaxconn.clamp`) holds a number, and every number written
/// to that key is kept at most that large, as the kernel does when it clamps
/// a sysctl to its range. It is how the tests reach the "the kernel kept
/// another value" answers of apply and rollback without root or a real
/// kernel change; the real /proc is never searched for it.
pub const CLAMP_SUFFIX: &str = ".clamp";

/// `text`'s numbers, each at most `max`, the way the kernel prints them;
/// text that is not numbers is kept as it is.
fn clamp_numbers(text: &str, max: u64) -> String {
    match parse_numbers(text) {
        Some(values) => {
            let kept: Vec<u64> = values.into_iter().map(|v| v.min(max)).collect();
            format!("{}\n", format_numbers(&kept))
        }
        None => text.to_string(),
    }
}

pub struct ProcRoot {
    pub root: PathBuf,
}

impl ProcRoot {
    pub fn new(root: impl Into<PathBuf>) -> ProcRoot {
        ProcRoot { root: root.into() }
    }

    pub fn is_real(&self) -> bool {
        self.root == Path::new("/proc")
    }

    pub fn sysctl_path(&self, key: &Key) -> PathBuf {
        self.root.join(key.path())
    }

    /// The live value of `key`; `None` when the file does not exist.
    pub fn read(&self, key: &Key) -> Result<Option<Live>, Error> {
        let path = self.sysctl_path(key);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::Io(path, e)),
        };
        let values = parse_numbers(&text).ok_or_else(|| Error::Malformed {
            what: path.display().to_string(),
            value: text.trim().to_string(),
        })?;
        Ok(Some(Live { text, values }))
    }

    /// Writes `text` to `key`'s file. The kernel may keep another value than
    /// the one written (it clamps some sysctls to a range), which is why
    /// every caller reads the key back; in a fake tree, [`CLAMP_SUFFIX`]
    /// stands in for that clamping.
    pub fn write(&self, key: &Key, text: &str) -> std::io::Result<()> {
        let path = self.sysctl_path(key);
        let text = match self.fake_clamp(&path)? {
            Some(max) => clamp_numbers(text, max),
            None => text.to_string(),
        };
        std::fs::write(path, text)
    }

    /// The ceiling a fake tree's `KEY.clamp` file sets for `path`; never
    /// looked for under the real /proc, where the kernel clamps by itself.
    fn fake_clamp(&self, path: &Path) -> std::io::Result<Option<u64>> {
        if self.is_real() {
            return Ok(None);
        }
        let mut clamp = path.as_os_str().to_owned();
        clamp.push(CLAMP_SUFFIX);
        match std::fs::read_to_string(&clamp) {
            Ok(text) => text.trim().parse().map(Some).map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: not a number: {text:?}", Path::new(&clamp).display()),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn read_file(&self, rel: &str) -> Result<String, Error> {
        let path = self.root.join(rel);
        std::fs::read_to_string(&path).map_err(|e| Error::Io(path, e))
    }

    /// Soft and hard RLIMIT_NOFILE of `pid` (this process when `None`).
    pub fn nofile(&self, pid: Option<u32>) -> Result<(u64, u64), Error> {
        let who = pid.map_or("self".to_string(), |p| p.to_string());
        let rel = format!("{who}/limits");
        let text = self.read_file(&rel)?;
        let line = text
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .ok_or_else(|| Error::Malformed {
                what: rel.clone(),
                value: "no 'Max open files' line".into(),
            })?;
        let fields: Vec<&str> = line["Max open files".len()..].split_whitespace().collect();
        let parse = |s: Option<&&str>| -> Option<u64> {
            match s {
                Some(&"unlimited") => Some(u64::MAX),
                Some(v) => v.parse().ok(),
                None => None,
            }
        };
        match (parse(fields.first()), parse(fields.get(1))) {
            (Some(soft), Some(hard)) => Ok((soft, hard)),
            _ => Err(Error::Malformed {
                what: rel,
                value: line.to_string(),
            }),
        }
    }

    /// `fs.file-nr`: allocated, free, max.
    pub fn file_nr(&self) -> Result<(u64, u64, u64), Error> {
        let text = self.read_file("sys/fs/file-nr")?;
        match parse_numbers(&text).as_deref() {
            Some([a, f, m]) => Ok((*a, *f, *m)),
            _ => Err(Error::Malformed {
                what: "sys/fs/file-nr".into(),
                value: text.trim().into(),
            }),
        }
    }

    /// From `net/sockstat`: (sockets used, TCP in use, TCP memory in pages).
    pub fn sockstat(&self) -> Result<(u64, u64, u64), Error> {
        let text = self.read_file("net/sockstat")?;
        let field = |line: &str, name: &str| -> Option<u64> {
            let mut it = line.split_whitespace();
            while let Some(t) = it.next() {
                if t == name {
                    return it.next()?.parse().ok();
                }
            }
            None
        };
        let used = text
            .lines()
            .find(|l| l.starts_with("sockets:"))
            .and_then(|l| field(l, "used"));
        let tcp = text.lines().find(|l| l.starts_with("TCP:"));
        match (
            used,
            tcp.and_then(|l| field(l, "inuse")),
            tcp.and_then(|l| field(l, "mem")),
        ) {
            (Some(u), Some(i), Some(m)) => Ok((u, i, m)),
            _ => Err(Error::Malformed {
                what: "net/sockstat".into(),
                value: text.lines().next().unwrap_or("").into(),
            }),
        }
    }
}
