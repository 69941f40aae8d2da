//! `[[rate_limits]]`: requests and tokens per minute per scope. Problems
//! name the element (`rate_limits[0].rpm`).

use serde::Deserialize;

use super::schema::{Key, Type};
use super::values::{per_minute, required};
use super::Problem;
use crate::limit::{Rule, RuleScope};
use crate::scope::Scope;

#[rustfmt::skip]
pub(super) static KEYS: &[Key] = &[
    Key::new("rate_limits[].scope", Type::Scope, "-",
     "[[rate_limits]]: all, account:NAME, account:* (each account its own bucket), workload:NAME, workload:* or tag:KEY=VALUE."),
    Key::new("rate_limits[].rpm", Type::Integer, "-",
     "Requests per minute (token bucket, refilled continuously). Over → 429 with retry-after and x-ratelimit-* headers."),
    Key::new("rate_limits[].tpm", Type::Integer, "-",
     "Tokens per minute; a request is charged its estimate (body bytes / 4 + max_tokens) and corrected to the real count."),
];

/// The section as written.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSection {
    pub rate_limits: Option<Vec<RawRateLimit>>,
}

/// `[[rate_limits]]`
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    pub scope: Option<String>,
    pub rpm: Option<i64>,
    pub tpm: Option<i64>,
}

pub(super) fn validate(raw: RawSection, problems: &mut Vec<Problem>) -> Vec<Rule> {
    let mut rules = Vec::new();
    for (i, r) in raw.rate_limits.unwrap_or_default().into_iter().enumerate() {
        let key = |field: &str| format!("rate_limits[{i}].{field}");
        let scope = required(
            key("scope"),
            r.scope.as_deref(),
            |s| Scope::parse(s, true),
            problems,
        );
        let rpm = per_minute(key("rpm"), r.rpm, problems);
        let tpm = per_minute(key("tpm"), r.tpm, problems);
        if r.rpm.is_none() && r.tpm.is_none() {
            problems.push(Problem::new(
                format!("rate_limits[{i}]"),
                "sets neither rpm nor tpm",
            ));
        }
        if let Some(scope) = scope {
            rules.push(Rule {
                scope: RuleScope::Scope(scope),
                rpm,
                tpm,
            });
        }
    }
    rules
}
