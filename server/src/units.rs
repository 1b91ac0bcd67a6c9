//! Human units for configuration: durations in seconds ("25", "25s", "2m")
//! and byte sizes ("16384", "16KiB", "1MiB"). Each parses from a flag, an
//! environment variable or a TOML value, and prints back the same way, so
//! `surge --help` shows defaults a person can read.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A whole number of seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Seconds(pub u64);

/// A number of bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl Seconds {
    pub fn duration(self) -> Duration {
        Duration::from_secs(self.0)
    }
}

impl ByteSize {
    pub fn get(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

fn split_number(s: &str) -> Result<(u64, &str), String> {
    let s = s.trim();
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n = s[..end]
        .parse::<u64>()
        .map_err(|_| format!("'{s}' does not start with a whole number"))?;
    Ok((n, s[end..].trim()))
}

impl FromStr for Seconds {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (n, unit) = split_number(s)?;
        let factor = match unit {
            "" | "s" => 1,
            "m" => 60,
            "h" => 3600,
            other => return Err(format!("unknown time unit '{other}' (use s, m or h)")),
        };
        n.checked_mul(factor)
            .map(Seconds)
            .ok_or_else(|| format!("'{s}' is too long"))
    }
}

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (n, unit) = split_number(s)?;
        let factor: u64 = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1 << 10,
            "m" | "mb" | "mib" => 1 << 20,
            "g" | "gb" | "gib" => 1 << 30,
            other => {
                return Err(format!(
                    "unknown size unit '{other}' (use B, KiB, MiB or GiB)"
                ))
            }
        };
        n.checked_mul(factor)
            .map(ByteSize)
            .ok_or_else(|| format!("'{s}' is too large"))
    }
}

impl fmt::Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}s", self.0)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            n if n >= 1 << 20 && n % (1 << 20) == 0 => write!(f, "{}MiB", n >> 20),
            n if n >= 1 << 10 && n % (1 << 10) == 0 => write!(f, "{}KiB", n >> 10),
            n => write!(f, "{n}"),
        }
    }
}

/// TOML may give either a number or a string with a unit.
#[derive(Deserialize)]
#[serde(untagged)]
enum NumberOrText {
    Number(u64),
    Text(String),
}

macro_rules! serde_via_text {
    ($ty:ident) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                match NumberOrText::deserialize(d)? {
                    NumberOrText::Number(n) => Ok($ty(n)),
                    NumberOrText::Text(t) => t.parse().map_err(serde::de::Error::custom),
                }
            }
        }
    };
}
serde_via_text!(Seconds);
serde_via_text!(ByteSize);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_parse_and_print_back() {
        assert_eq!("25".parse::<Seconds>(), Ok(Seconds(25)));
        assert_eq!("2m".parse::<Seconds>(), Ok(Seconds(120)));
        assert_eq!("16KiB".parse::<ByteSize>(), Ok(ByteSize(16384)));
        assert_eq!("1mib".parse::<ByteSize>(), Ok(ByteSize(1 << 20)));
        assert_eq!(ByteSize(16384).to_string(), "16KiB");
        assert_eq!(ByteSize(1000).to_string(), "1000");
        assert!("ten".parse::<Seconds>().is_err());
        assert!("5 parsecs".parse::<Seconds>().is_err());
    }
}
