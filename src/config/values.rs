//! Value parsers that several sections share: each turns one raw value into
//! its runtime form or pushes a [`Problem`] naming the key.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::Problem;

/// A size: bytes, or a string with a unit.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum RawSize {
    Bytes(i64),
    Text(String),
}

pub(super) fn socket_addr(key: &str, s: &str, problems: &mut Vec<Problem>) -> Option<SocketAddr> {
    match s.parse() {
        Ok(a) => Some(a),
        Err(_) => {
            problems.push(Problem::new(
                key,
                format!("not a socket address: {s:?} (expected ip:port, e.g. 127.0.0.1:8787)"),
            ));
            None
        }
    }
}

pub(super) fn non_empty(key: &str, s: String, problems: &mut Vec<Problem>) -> Option<String> {
    if s.trim().is_empty() {
        problems.push(Problem::new(key, "must not be empty"));
        None
    } else {
        Some(s)
    }
}

/// A size key: bytes or a string with a unit; must be above 0.
pub(super) fn size(
    key: &str,
    raw: Option<RawSize>,
    default: u64,
    problems: &mut Vec<Problem>,
) -> Option<u64> {
    let bytes = match raw {
        None => default,
        Some(RawSize::Bytes(n)) => match u64::try_from(n) {
            Ok(n) => n,
            Err(_) => {
                problems.push(Problem::new(
                    key,
                    format!("must be a positive number of bytes, not {n}"),
                ));
                return None;
            }
        },
        Some(RawSize::Text(s)) => match parse_size(&s) {
            Some(n) => n,
            None => {
                problems.push(Problem::new(
                    key,
                    format!("not a size: {s:?} (expected bytes, or a number with B, KB, MB, GB, KiB, MiB, GiB…: \"32MiB\")"),
                ));
                return None;
            }
        },
    };
    if bytes == 0 {
        problems.push(Problem::new(key, "must be greater than 0"));
        return None;
    }
    Some(bytes)
}

/// Parses `"32MiB"`, `"64 KiB"`, `"1GB"`, `"512"`, `"512B"` (units are
/// case-insensitive; KB/MB/GB/TB are powers of 1000, KiB… powers of 1024).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    if digits.is_empty() {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let mult: u64 = match unit.trim_start().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// A duration key: `s`, else `default`; with `positive`, zero is a problem.
pub(super) fn duration(
    key: &str,
    s: Option<&str>,
    default: &str,
    positive: bool,
    problems: &mut Vec<Problem>,
) -> Option<Duration> {
    let s = s.unwrap_or(default);
    match humantime::parse_duration(s) {
        Ok(d) if positive && d.is_zero() => {
            problems.push(Problem::new(key, "must be greater than 0"));
            None
        }
        Ok(d) => Some(d),
        Err(_) => {
            problems.push(Problem::new(
                key,
                format!(
                    "not a duration: {s:?} (expected e.g. \"500ms\", \"10s\", \"5m\", \"30d\")"
                ),
            ));
            None
        }
    }
}

/// A required field: `parse` turns it into a value or a problem message.
pub(super) fn required<T>(
    key: String,
    raw: Option<&str>,
    parse: impl FnOnce(&str) -> Result<T, String>,
    problems: &mut Vec<Problem>,
) -> Option<T> {
    let Some(raw) = raw else {
        problems.push(Problem::new(key, "required"));
        return None;
    };
    parse(raw)
        .map_err(|message| problems.push(Problem::new(key, message)))
        .ok()
}

/// A valid account / budget / key name.
pub(super) fn name(s: &str) -> Result<String, String> {
    crate::identity::check_name("value", s)
        .map(str::to_string)
        .map_err(|e| e.0)
}

/// A per-minute figure: `None` when unset; a problem unless at least 1.
pub(super) fn per_minute(key: String, v: Option<i64>, problems: &mut Vec<Problem>) -> Option<u64> {
    match v {
        None => None,
        Some(n) if n >= 1 => Some(n as u64),
        Some(n) => {
            problems.push(Problem::new(key, format!("must be at least 1, not {n}")));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("32MiB"), Some(32 << 20));
        assert_eq!(parse_size("64KiB"), Some(64 << 10));
        assert_eq!(parse_size("64 kib"), Some(64 << 10));
        assert_eq!(parse_size("1GB"), Some(1_000_000_000));
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("512B"), Some(512));
        assert_eq!(parse_size("2TiB"), Some(2 << 40));
        for bad in [
            "",
            "MiB",
            "1.5MiB",
            "-1",
            "12 parsecs",
            "99999999999999999999",
            "20000000TiB",
        ] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }
}
