//! `[cache]` and its `[[cache.rules]]`: the exact cache.

use std::time::Duration;

use serde::Deserialize;

use super::schema::{Key, Type};
use super::values::{duration, size, RawSize};
use super::Problem;
use crate::cache::{CacheConfig, Mode, Rule, RuleMatch};

#[rustfmt::skip]
pub(super) static KEYS: &[Key] = &[
    Key::new("cache.mode", Type::Str, "all",
     "Exact cache: all (answer repeats of a complete successful answer locally, coalesce identical requests in flight) or off."),
    Key::new("cache.ttl", Type::Duration, "1h",
     "How long an answer is served from the cache."),
    Key::new("cache.max_bytes", Type::Size, "1GiB",
     "Total size of the cache on disk; least-recently-used entries are evicted beyond it."),
    Key::new("cache.max_entry_bytes", Type::Size, "8MiB",
     "Larger answers are not cached, and a stream larger than this takes no more coalesced followers."),
    Key::new("cache.coalesce", Type::Bool, "true",
     "Identical requests (same cache key) arriving while one is in flight wait for it instead of calling the provider."),
    Key::new("cache.coalesce_wait", Type::Duration, "600s",
     "Longest a coalesced request waits for the first one's answer (non-stream) or first byte (stream) before calling the provider itself."),
    Key::new("cache.rules[].scope", Type::Str, "-",
     "[[cache.rules]]: account:NAME, workload:NAME or model:NAME (as requested). Rules apply in order; a later match wins for the fields it sets."),
    Key::new("cache.rules[].mode", Type::Str, "-",
     "all or off for matching requests."),
    Key::new("cache.rules[].ttl", Type::Duration, "-",
     "TTL for matching requests (also bounds what they read)."),
];

/// The section as written.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSection {
    pub cache: Option<RawCache>,
}

/// `[cache]`
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    pub mode: Option<String>,
    pub ttl: Option<String>,
    pub max_bytes: Option<RawSize>,
    pub max_entry_bytes: Option<RawSize>,
    pub coalesce: Option<bool>,
    pub coalesce_wait: Option<String>,
    pub rules: Option<Vec<RawCacheRule>>,
}

/// `[[cache.rules]]`
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCacheRule {
    pub scope: Option<String>,
    pub mode: Option<String>,
    pub ttl: Option<String>,
}

fn mode(key: &str, s: &str, problems: &mut Vec<Problem>) -> Option<Mode> {
    let m = Mode::parse(s);
    if m.is_none() {
        problems.push(Problem::new(key, format!("{s:?} is not all or off")));
    }
    m
}

pub(super) fn validate(raw: RawSection, problems: &mut Vec<Problem>) -> Option<CacheConfig> {
    let raw = raw.cache.unwrap_or_default();
    let before = problems.len();
    let d = CacheConfig::default();
    let mode_v = raw
        .mode
        .as_deref()
        .map_or(Some(d.mode), |s| mode("cache.mode", s, problems));
    let ttl = duration("cache.ttl", raw.ttl.as_deref(), "1h", true, problems);
    let max_bytes = size("cache.max_bytes", raw.max_bytes, d.max_bytes, problems);
    let max_entry_bytes = size(
        "cache.max_entry_bytes",
        raw.max_entry_bytes,
        d.max_entry_bytes,
        problems,
    );
    let coalesce_wait = duration(
        "cache.coalesce_wait",
        raw.coalesce_wait.as_deref(),
        "600s",
        true,
        problems,
    );
    let mut rules = Vec::new();
    for (i, r) in raw.rules.unwrap_or_default().into_iter().enumerate() {
        let key = |f: &str| format!("cache.rules[{i}].{f}");
        let matches = match r.scope.as_deref() {
            None => {
                problems.push(Problem::new(key("scope"), "required"));
                None
            }
            Some(s) => RuleMatch::parse(s)
                .map_err(|m| problems.push(Problem::new(key("scope"), m)))
                .ok(),
        };
        let rule_mode = r
            .mode
            .as_deref()
            .and_then(|s| mode(&key("mode"), s, problems));
        let rule_ttl: Option<Duration> = match r.ttl.as_deref() {
            None => None,
            Some(t) => duration(&key("ttl"), Some(t), t, true, problems),
        };
        if r.mode.is_none() && r.ttl.is_none() {
            problems.push(Problem::new(
                format!("cache.rules[{i}]"),
                "sets neither mode nor ttl",
            ));
        }
        if let Some(matches) = matches {
            rules.push(Rule {
                matches,
                mode: rule_mode,
                ttl: rule_ttl,
            });
        }
    }
    if problems.len() != before {
        return None;
    }
    Some(CacheConfig {
        mode: mode_v?,
        ttl: ttl?,
        max_bytes: max_bytes?,
        max_entry_bytes: max_entry_bytes?,
        coalesce: raw.coalesce.unwrap_or(d.coalesce),
        coalesce_wait: coalesce_wait?,
        rules,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::testing::{ok, problems};

    #[test]
    fn cache_config_and_rules() {
        let c = ok("", &[]);
        assert_eq!(c.cache, crate::cache::CacheConfig::default());
        let c = ok(
            r#"
[cache]
mode = "off"
ttl = "10m"
max_bytes = "64MiB"
max_entry_bytes = 1000
coalesce = false
coalesce_wait = "5s"
[[cache.rules]]
scope = "account:acme"
mode = "all"
[[cache.rules]]
scope = "model:gpt-4o"
ttl = "30s"
"#,
            &[],
        );
        assert_eq!(c.cache.mode, crate::cache::Mode::Off);
        assert_eq!(c.cache.ttl, Duration::from_secs(600));
        assert_eq!(c.cache.max_bytes, 64 << 20);
        assert_eq!(c.cache.max_entry_bytes, 1000);
        assert!(!c.cache.coalesce);
        assert_eq!(c.cache.rules.len(), 2);
        assert_eq!(
            c.cache.policy("acme", "", "gpt-4o"),
            (crate::cache::Mode::All, Duration::from_secs(30))
        );
        let got = problems(
            r#"
[cache]
ttl = "0s"
max_bytes = "lots"
[[cache.rules]]
scope = "tag:x=y"
mode = "sometimes"
[[cache.rules]]
scope = "account:a"
[[cache.rules]]
mode = "off"
colour = "red"
"#,
            &[],
        );
        assert_eq!(
            got,
            [
                "cache.rules[2].colour: unknown key",
                "cache.ttl: must be greater than 0",
                "cache.max_bytes: not a size: \"lots\" (expected bytes, or a number with B, KB, MB, GB, KiB, MiB, GiB…: \"32MiB\")",
                "cache.rules[0].scope: \"tag:x=y\" is not account:NAME, workload:NAME or model:NAME",
                "cache.rules[0].mode: \"sometimes\" is not all or off",
                "cache.rules[1]: sets neither mode nor ttl",
                "cache.rules[2].scope: required",
            ]
        );
    }
}
