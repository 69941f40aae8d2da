//! The sidecar's link to a control endpoint (`control_url`, its
//! credential) and how usage is shipped there (`[ship]`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::schema::{Key, Type};
use super::values::duration;
use super::Problem;
use crate::secret::Secret;

const DEFAULT_CREDENTIAL_ENV: &str = "TOLLGATE_CONTROL_CREDENTIAL";
const DEFAULT_SHIP_INTERVAL: &str = "1s";
const DEFAULT_SHIP_MAX_BACKOFF: &str = "60s";
const DEFAULT_SHIP_BATCH: i64 = 1000;
const DEFAULT_OUTBOX_MAX_EVENTS: i64 = 1_000_000;
/// Longest a request waits for a lease grant, by default.
pub const DEFAULT_LEASE_WAIT: Duration = Duration::from_millis(50);

#[rustfmt::skip]
pub(super) static KEYS: &[Key] = &[
    Key::new("control_url", Type::Url, "\"\"",
     "The control endpoint (http:// or https://); \"\" = standalone. With one, usage events are shipped there and deleted from the outbox once acknowledged."),
    Key::new("control_credential_env", Type::Str, DEFAULT_CREDENTIAL_ENV,
     "Environment variable holding this sidecar's credential (tgs_…, from `tollgate admin sidecars create`)."),
    Key::new("control_credential_file", Type::Path, "\"\"",
     "File holding the credential, instead of control_credential_env."),
    Key::new("lease_wait", Type::Duration, "50ms",
     "Longest a request waits for a grant when this sidecar's lease of a control-endpoint budget cannot cover its worst case; then it is refused with 402."),
    Key::new("ship.batch", Type::Integer, "1000",
     "Most usage events per shipped batch."),
    Key::new("ship.interval", Type::Duration, DEFAULT_SHIP_INTERVAL,
     "How often the outbox is shipped when it is not backlogged."),
    Key::new("ship.max_backoff", Type::Duration, DEFAULT_SHIP_MAX_BACKOFF,
     "Longest wait between failed shipping attempts (exponential backoff with jitter up to this)."),
    Key::new("ship.max_outbox_events", Type::Integer, "1000000",
     "Bound of the outbox while the control endpoint is unreachable: a warning from 80%, and past it the oldest events are dropped (counted in tollgate_outbox_dropped_total)."),
];

/// The section as written.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFleet {
    pub control_url: Option<String>,
    pub control_credential_env: Option<String>,
    pub control_credential_file: Option<String>,
    pub lease_wait: Option<String>,
    pub ship: Option<RawShip>,
}

/// `[ship]`
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShip {
    pub batch: Option<i64>,
    pub interval: Option<String>,
    pub max_backoff: Option<String>,
    pub max_outbox_events: Option<i64>,
}

/// A control endpoint this sidecar reports to.
#[derive(Clone, Debug)]
pub struct ControlLink {
    /// Base URL, without a trailing `/`.
    pub url: String,
    /// This sidecar's credential.
    pub credential: Secret,
    /// Shipping of usage events.
    pub ship: Ship,
    /// Longest a request waits for a lease grant.
    pub lease_wait: Duration,
}

/// How usage events are shipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ship {
    pub batch: usize,
    pub interval: Duration,
    pub max_backoff: Duration,
    pub max_outbox_events: usize,
}

fn positive(key: &str, v: Option<i64>, default: i64, problems: &mut Vec<Problem>) -> Option<usize> {
    match v.unwrap_or(default) {
        n if n >= 1 => usize::try_from(n).ok(),
        n => {
            problems.push(Problem::new(key, format!("must be at least 1, not {n}")));
            None
        }
    }
}

pub(super) fn validate(
    raw: RawFleet,
    env: &BTreeMap<String, String>,
    problems: &mut Vec<Problem>,
) -> Option<Option<ControlLink>> {
    let s = raw.ship.unwrap_or_default();
    let ship = Ship {
        batch: positive("ship.batch", s.batch, DEFAULT_SHIP_BATCH, problems)?,
        interval: duration(
            "ship.interval",
            s.interval.as_deref(),
            DEFAULT_SHIP_INTERVAL,
            true,
            problems,
        )?,
        max_backoff: duration(
            "ship.max_backoff",
            s.max_backoff.as_deref(),
            DEFAULT_SHIP_MAX_BACKOFF,
            true,
            problems,
        )?,
        max_outbox_events: positive(
            "ship.max_outbox_events",
            s.max_outbox_events,
            DEFAULT_OUTBOX_MAX_EVENTS,
            problems,
        )?,
    };
    let lease_wait = duration(
        "lease_wait",
        raw.lease_wait.as_deref(),
        "50ms",
        false,
        problems,
    )?;
    let url = raw.control_url.unwrap_or_default();
    if url.is_empty() {
        return Some(None);
    }
    let ok = match reqwest::Url::parse(&url) {
        Ok(u) => matches!(u.scheme(), "http" | "https") && u.host().is_some(),
        Err(_) => false,
    };
    if !ok {
        problems.push(Problem::new(
            "control_url",
            format!("not an http(s) URL: {url:?}"),
        ));
        return None;
    }
    let env_name = raw
        .control_credential_env
        .unwrap_or_else(|| DEFAULT_CREDENTIAL_ENV.into());
    let credential = match raw.control_credential_file.filter(|f| !f.is_empty()) {
        Some(path) => match std::fs::read_to_string(&path) {
            Ok(c) => c.trim().to_string(),
            Err(e) => {
                problems.push(Problem::new(
                    "control_credential_file",
                    format!("cannot read {path}: {e}"),
                ));
                return None;
            }
        },
        None => env
            .get(&env_name)
            .map(|c| c.trim().to_string())
            .unwrap_or_default(),
    };
    if !credential.starts_with("tgs_") {
        problems.push(Problem::new(
            "control_credential_env",
            format!(
                "control_url needs this sidecar's credential (tgs_…) in {env_name} or control_credential_file"
            ),
        ));
        return None;
    }
    Some(Some(ControlLink {
        url: url.trim_end_matches('/').to_string(),
        credential: Secret::new(credential),
        ship,
        lease_wait,
    }))
}
