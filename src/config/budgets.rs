//! `[[budgets]]` and `budget_default_max_tokens`: spend ceilings per scope
//! and period. Problems name the element (`budgets[1].period`).

use serde::Deserialize;
use toml::Value;

use super::schema::{Key, Type};
use super::values::{name, required};
use super::Problem;
use crate::budget::{Budget, OnInsufficient, Period};
use crate::scope::Scope;

const DEFAULT_MAX_TOKENS: u64 = 4096;

#[rustfmt::skip]
pub(super) static KEYS: &[Key] = &[
    Key::new("budgets[].name", Type::Str, "-",
     "[[budgets]]: unique name; the budget's spend is stored under it, so renaming starts from zero."),
    Key::new("budgets[].scope", Type::Scope, "-",
     "all, account:NAME, workload:NAME or tag:KEY=VALUE."),
    Key::new("budgets[].period", Type::Str, "-",
     "request (a ceiling on each request's worst case), day or month (UTC calendar periods)."),
    Key::new("budgets[].limit_usd", Type::Usd, "-",
     "The ceiling, e.g. \"100.00\". The worst case of every request is reserved against it before forwarding, so it is never overshot."),
    Key::new("budgets[].soft_thresholds", Type::Fractions, "[]",
     "Fractions of the limit (e.g. [0.5, 0.8]) that fire an alert once per period when spend crosses them."),
    Key::new("budgets[].alert_webhook", Type::Url, "\"\"",
     "http(s) URL that receives each alert as a JSON POST (budget, scope, period, period_key, spent_usd, limit_usd, threshold), retried with backoff."),
    Key::new("budgets[].on_insufficient", Type::Str, "deny",
     "deny: refuse a request whose worst case does not fit (402 budget_exceeded). clamp: forward it with max_tokens lowered to what remains."),
    Key::new("budget_default_max_tokens", Type::Integer, "4096",
     "Output bound of a request that sets no max_tokens while a budget applies to it: reserved, and sent upstream as its max_tokens."),
];

/// The section as written.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSection {
    pub budgets: Option<Vec<RawBudget>>,
    pub budget_default_max_tokens: Option<i64>,
}

/// `[[budgets]]`
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBudget {
    pub name: Option<String>,
    pub scope: Option<String>,
    pub period: Option<String>,
    pub limit_usd: Option<String>,
    pub soft_thresholds: Option<Vec<Value>>,
    pub alert_webhook: Option<String>,
    pub on_insufficient: Option<String>,
}

/// The validated section.
pub(super) struct Budgets {
    /// In config order.
    pub budgets: Vec<Budget>,
    pub default_max_tokens: u64,
}

pub(super) fn validate(raw: RawSection, problems: &mut Vec<Problem>) -> Option<Budgets> {
    let budgets = budgets(raw.budgets.unwrap_or_default(), problems);
    let default_max_tokens = match raw.budget_default_max_tokens {
        None => Some(DEFAULT_MAX_TOKENS),
        Some(n) if n > 0 => Some(n as u64),
        Some(n) => {
            problems.push(Problem::new(
                "budget_default_max_tokens",
                format!("must be at least 1, not {n}"),
            ));
            None
        }
    };
    Some(Budgets {
        budgets,
        default_max_tokens: default_max_tokens?,
    })
}

fn budgets(raw: Vec<RawBudget>, problems: &mut Vec<Problem>) -> Vec<Budget> {
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
                lease: None,
                retired: false,
            });
        }
    }
    out
}
