//! Validation of `[cache]` and its `[[cache.rules]]`.

use std::time::Duration;

use super::{duration, size, Problem, RawCache};
use crate::cache::{CacheConfig, Mode, Rule, RuleMatch};

fn mode(key: &str, s: &str, problems: &mut Vec<Problem>) -> Option<Mode> {
    let m = Mode::parse(s);
    if m.is_none() {
        problems.push(Problem::new(key, format!("{s:?} is not all or off")));
    }
    m
}

pub(super) fn cache(raw: RawCache, problems: &mut Vec<Problem>) -> Option<CacheConfig> {
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
