//! Validation of the cost controls: `[[gateway_keys]]`, `[[rate_limits]]`
//! and `[[budgets]]` (arrays of tables; problems name the element, e.g.
//! `budgets[1].period`).

use toml::Value;

use super::{Problem, RawBudget, RawGatewayKey, RawRateLimit};
use crate::budget::{Budget, OnInsufficient, Period};
use crate::keys::{AcceptMode, GatewayKey, KeyRing};
use crate::limit::{Rule, RuleScope};
use crate::scope::Scope;

/// A required field: `parse` turns it into a value or a problem message.
fn required<T>(
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
fn name(s: &str) -> Result<String, String> {
    crate::proxy::identify::check_name("value", s)
        .map(str::to_string)
        .map_err(|e| e.0)
}

/// A per-minute figure: `None` when unset; a problem unless at least 1.
fn per_minute(key: String, v: Option<i64>, problems: &mut Vec<Problem>) -> Option<u64> {
    match v {
        None => None,
        Some(n) if n >= 1 => Some(n as u64),
        Some(n) => {
            problems.push(Problem::new(key, format!("must be at least 1, not {n}")));
            None
        }
    }
}

pub(super) fn gateway_keys(
    mode: Option<&str>,
    raw: Vec<RawGatewayKey>,
    problems: &mut Vec<Problem>,
) -> (KeyRing, Vec<Rule>) {
    let accept = match mode {
        None => AcceptMode::Live,
        Some(m) => AcceptMode::parse(m).unwrap_or_else(|| {
            problems.push(Problem::new(
                "gateway_keys_mode",
                format!("{m:?} is not live, test or any"),
            ));
            AcceptMode::Live
        }),
    };
    let mut keys: Vec<GatewayKey> = Vec::new();
    let mut rules = Vec::new();
    for (i, k) in raw.into_iter().enumerate() {
        let key = |field: &str| format!("gateway_keys[{i}].{field}");
        let account = required(key("account"), k.account.as_deref(), name, problems);
        let sha256 = required(
            key("sha256"),
            k.sha256.as_deref(),
            |h| {
                crate::keys::parse_sha256_hex(h).ok_or_else(|| {
                    "must be 64 hex digits (the SHA-256 printed by `tollgate keys new`), not a key"
                        .to_string()
                })
            },
            problems,
        );
        let rpm = per_minute(key("rpm"), k.rpm, problems);
        let tpm = per_minute(key("tpm"), k.tpm, problems);
        let (Some(account), Some(sha256)) = (account, sha256) else {
            continue;
        };
        let name = k
            .name
            .unwrap_or_else(|| crate::keys::to_hex(&sha256)[..12].to_string());
        if let Err(e) = self::name(&name) {
            problems.push(Problem::new(key("name"), e));
            continue;
        }
        if keys.iter().any(|g| g.sha256 == sha256) {
            problems.push(Problem::new(
                key("sha256"),
                "the same key is configured twice",
            ));
            continue;
        }
        if keys.iter().any(|g| g.name == name) {
            problems.push(Problem::new(
                key("name"),
                format!("{name:?} names another key too"),
            ));
            continue;
        }
        if rpm.is_some() || tpm.is_some() {
            rules.push(Rule {
                scope: RuleScope::Key(name.clone()),
                rpm,
                tpm,
            });
        }
        keys.push(GatewayKey {
            name,
            account,
            sha256,
            rpm,
            tpm,
        });
    }
    (KeyRing::new(keys, accept), rules)
}

pub(super) fn rate_limits(raw: Vec<RawRateLimit>, problems: &mut Vec<Problem>) -> Vec<Rule> {
    let mut rules = Vec::new();
    for (i, r) in raw.into_iter().enumerate() {
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

pub(super) fn budgets(raw: Vec<RawBudget>, problems: &mut Vec<Problem>) -> Vec<Budget> {
    let mut out: Vec<Budget> = Vec::new();
    for (i, b) in raw.into_iter().enumerate() {
        let key = |field: &str| format!("budgets[{i}].{field}");
        let before = problems.len();
        let name = required(
            key("name"),
            b.name.as_deref(),
            |n| match name(n)? {
                n if out.iter().any(|o| o.name == n) => {
                    Err(format!("{n:?} names another budget too"))
                }
                n => Ok(n),
            },
            problems,
        );
        let scope = required(
            key("scope"),
            b.scope.as_deref(),
            |s| Scope::parse(s, false),
            problems,
        );
        let period = required(
            key("period"),
            b.period.as_deref(),
            |p| Period::parse(p).ok_or_else(|| format!("{p:?} is not request, day or month")),
            problems,
        );
        let limit_nusd = required(
            key("limit_usd"),
            b.limit_usd.as_deref(),
            |l| crate::meter::money::parse_usd(l).map_err(|e| e.to_string()),
            problems,
        );
        let mut thresholds = Vec::new();
        for v in b.soft_thresholds.unwrap_or_default() {
            let t = match v {
                Value::Float(f) => f,
                Value::Integer(n) => n as f64,
                _ => f64::NAN,
            };
            if !(t > 0.0 && t <= 1.0) {
                problems.push(Problem::new(
                    key("soft_thresholds"),
                    format!("{v} is not a fraction above 0 and at most 1"),
                ));
            } else {
                thresholds.push(t);
            }
        }
        thresholds.sort_by(f64::total_cmp);
        thresholds.dedup();
        if thresholds.len() > 64 {
            problems.push(Problem::new(
                key("soft_thresholds"),
                "at most 64 thresholds",
            ));
        }
        let alert_webhook = match b.alert_webhook.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(u) => match reqwest::Url::parse(u) {
                Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => {
                    Some(u.to_string())
                }
                _ => {
                    problems.push(Problem::new(
                        key("alert_webhook"),
                        format!("{u:?} is not an http(s) URL"),
                    ));
                    None
                }
            },
        };
        let on_insufficient = match b.on_insufficient.as_deref() {
            None | Some("deny") => OnInsufficient::Deny,
            Some("clamp") => OnInsufficient::Clamp,
            Some(o) => {
                problems.push(Problem::new(
                    key("on_insufficient"),
                    format!("{o:?} is not deny or clamp"),
                ));
                OnInsufficient::Deny
            }
        };
        if problems.len() != before {
            continue;
        }
        if let (Some(name), Some(scope), Some(period), Some(limit_nusd)) =
            (name, scope, period, limit_nusd)
        {
            out.push(Budget {
                name,
                scope,
                period,
                limit_nusd,
                soft_thresholds: thresholds,
                alert_webhook,
                on_insufficient,
            });
        }
    }
    out
}
