//! Profile files: the `/etc/sysctl.d/` drop-in a plan renders, read back
//! strictly. An unknown key, a non-numeric value, a duplicate or a line that
//! is not `key = value` is an error naming the line, so nothing is ever
//! applied from a file that was not fully understood.

use std::path::Path;

use crate::keys::{self, Key};
use crate::procfs::parse_numbers;
use crate::Error;

/// A parsed profile.
#[derive(Debug)]
pub struct Profile {
    /// From `# kernel-tuning: nofile = N`, when present.
    pub nofile: Option<u64>,
    pub settings: Vec<(&'static Key, Vec<u64>)>,
}

pub fn load(path: &Path) -> Result<Profile, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::Io(path.to_path_buf(), e))?;
    parse(&text, &path.display().to_string())
}

pub fn parse(text: &str, source: &str) -> Result<Profile, Error> {
    let mut profile = Profile {
        nofile: None,
        settings: Vec::new(),
    };
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let at = || format!("{source}:{}", i + 1);
        if let Some(rest) = line.strip_prefix("# kernel-tuning: nofile =") {
            let n = rest.trim().parse().map_err(|_| Error::Malformed {
                what: at(),
                value: raw.into(),
            })?;
            profile.nofile = Some(n);
            continue;
        }
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let Some((name, value)) = line.split_once('=') else {
            return Err(Error::Malformed {
                what: at(),
                value: raw.into(),
            });
        };
        let name = name.trim().trim_start_matches('-');
        let key = keys::find(name).ok_or_else(|| Error::UnknownKey {
            at: at(),
            key: name.into(),
        })?;
        let values = parse_numbers(value).ok_or_else(|| Error::Malformed {
            what: at(),
            value: value.trim().into(),
        })?;
        if profile.settings.iter().any(|(k, _)| k.name == key.name) {
            return Err(Error::Malformed {
                what: at(),
                value: format!("{name} given twice"),
            });
        }
        profile.settings.push((key, values));
    }
    if profile.settings.is_empty() {
        return Err(Error::Malformed {
            what: source.into(),
            value: "no settings".into(),
        });
    }
    Ok(profile)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_non_numbers_and_junk_lines_name_their_line() {
        let e = parse("fs.file-max = 10\nnet.ipv4.tcp_tw_recycle = 1\n", "p").unwrap_err();
        assert!(
            e.to_string().contains("p:2") && e.to_string().contains("tcp_tw_recycle"),
            "{e}"
        );
        let e = parse("fs.file-max = lots\n", "p").unwrap_err();
        assert!(
            e.to_string().contains("p:1") && e.to_string().contains("lots"),
            "{e}"
        );
        let e = parse("fs.file-max 10\n", "p").unwrap_err();
        assert!(e.to_string().contains("p:1"), "{e}");
        let p = parse(
            "# kernel-tuning: nofile = 2048\n; note\nnet.ipv4.tcp_mem = 1 2 3\n",
            "p",
        )
        .unwrap();
        assert_eq!(
            (p.nofile, p.settings[0].1.clone()),
            (Some(2048), vec![1, 2, 3])
        );
    }
}
