//! Top-level keys of the sidecar itself: its store, request-body bound, the
//! identity of requests that name none, its id, stream receipts, worker
//! threads and shutdown grace.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::schema::{Key, Type};
use super::values::{duration, non_empty, size, RawSize};
use super::Problem;

const DEFAULT_DATA_DIR: &str = "tollgate-data";
const DEFAULT_MAX_BODY_BYTES: u64 = 32 * 1024 * 1024;
const DEFAULT_ACCOUNT: &str = "default";
const DEFAULT_SIDECAR_ID: &str = "tollgate";
const DEFAULT_SHUTDOWN_GRACE: &str = "10s";
const DEFAULT_IDEMPOTENCY_TTL: &str = "24h";
const DEFAULT_IDEMPOTENCY_WAIT: &str = "600s";
const MAX_THREADS: i64 = 1024;

#[rustfmt::skip]
pub(super) static KEYS: &[Key] = &[
    Key::new("data_dir", Type::Path, DEFAULT_DATA_DIR,
     "Embedded store (sled) holding the usage outbox / local ledger. Flag --data-dir."),
    Key::new("max_body_bytes", Type::Size, "33554432",
     "Largest request body read: bytes as an integer, or a size string (\"32MiB\", \"64KiB\", \"1GB\"). Must be above 0."),
    Key::new("default_account", Type::Str, DEFAULT_ACCOUNT,
     "Account of requests without an x-tollgate-account header."),
    Key::new("default_workload", Type::Str, "\"\"",
     "Workload of requests without an x-tollgate-workload header (\"\" = none)."),
    Key::new("default_tags", Type::Str, "\"\"",
     "Tags of requests without an x-tollgate-tags header, e.g. \"team=search,env=prod\"."),
    Key::new("sidecar_id", Type::Str, "$HOSTNAME, else tollgate",
     "This sidecar's id in usage events."),
    Key::new("stream_receipt", Type::Bool, "true",
     "End each stream with a \": tollgate {json}\" SSE comment line carrying the receipt."),
    Key::new("threads", Type::Integer, "0",
     "Proxy worker threads; 0 = one per available CPU; at most 1024."),
    Key::new("shutdown_grace", Type::Duration, DEFAULT_SHUTDOWN_GRACE,
     "How long SIGTERM lets in-flight requests finish."),
    Key::new("idempotency_ttl", Type::Duration, DEFAULT_IDEMPOTENCY_TTL,
     "How long the answer to a request with an Idempotency-Key is kept for retries (scoped to the account, kept across restarts)."),
    Key::new("idempotency_wait", Type::Duration, DEFAULT_IDEMPOTENCY_WAIT,
     "How long a retry waits for the first request with its Idempotency-Key to finish before a 409."),
];

/// The section as written.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSidecar {
    pub data_dir: Option<String>,
    pub max_body_bytes: Option<RawSize>,
    pub default_account: Option<String>,
    pub default_workload: Option<String>,
    pub default_tags: Option<String>,
    pub sidecar_id: Option<String>,
    pub stream_receipt: Option<bool>,
    pub threads: Option<i64>,
    pub shutdown_grace: Option<String>,
    pub idempotency_ttl: Option<String>,
    pub idempotency_wait: Option<String>,
}

/// The validated section.
pub(super) struct Sidecar {
    pub data_dir: PathBuf,
    pub max_body_bytes: usize,
    pub default_account: String,
    pub default_workload: String,
    pub default_tags: Vec<(String, String)>,
    pub sidecar_id: String,
    pub stream_receipt: bool,
    pub threads: usize,
    pub shutdown_grace: Duration,
    pub idempotency_ttl: Duration,
    pub idempotency_wait: Duration,
}

/// `env` supplies `HOSTNAME`, the default `sidecar_id`.
pub(super) fn validate(
    raw: RawSidecar,
    env: &BTreeMap<String, String>,
    problems: &mut Vec<Problem>,
) -> Option<Sidecar> {
    let data_dir = non_empty(
        "data_dir",
        raw.data_dir.unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
        problems,
    )
    .map(PathBuf::from);
    let max_body_bytes = max_body_bytes(raw.max_body_bytes, problems);
    let default_account = non_empty(
        "default_account",
        raw.default_account
            .unwrap_or_else(|| DEFAULT_ACCOUNT.into()),
        problems,
    );
    let default_account = default_account.and_then(|a| {
        crate::identity::check_name("value", &a)
            .map_err(|e| problems.push(Problem::new("default_account", e.0)))
            .ok()?;
        Some(a)
    });
    let default_workload = raw.default_workload.unwrap_or_default();
    if !default_workload.is_empty() {
        if let Err(e) = crate::identity::check_name("value", &default_workload) {
            problems.push(Problem::new("default_workload", e.0));
        }
    }
    let default_tags =
        match crate::identity::parse_tags("value", &raw.default_tags.unwrap_or_default()) {
            Ok(tags) => tags,
            Err(e) => {
                problems.push(Problem::new("default_tags", e.0));
                Vec::new()
            }
        };
    let sidecar_id = raw.sidecar_id.unwrap_or_else(|| {
        env.get("HOSTNAME")
            .filter(|h| !h.is_empty())
            .cloned()
            .unwrap_or_else(|| DEFAULT_SIDECAR_ID.into())
    });
    let sidecar_id = non_empty("sidecar_id", sidecar_id, problems);
    let threads = threads(raw.threads.unwrap_or(0), problems);
    let shutdown_grace = duration(
        "shutdown_grace",
        raw.shutdown_grace.as_deref(),
        DEFAULT_SHUTDOWN_GRACE,
        false,
        problems,
    );
    let idempotency_ttl = duration(
        "idempotency_ttl",
        raw.idempotency_ttl.as_deref(),
        DEFAULT_IDEMPOTENCY_TTL,
        true,
        problems,
    );
    let idempotency_wait = duration(
        "idempotency_wait",
        raw.idempotency_wait.as_deref(),
        DEFAULT_IDEMPOTENCY_WAIT,
        false,
        problems,
    );
    Some(Sidecar {
        data_dir: data_dir?,
        max_body_bytes: max_body_bytes?,
        default_account: default_account?,
        default_workload,
        default_tags,
        sidecar_id: sidecar_id?,
        stream_receipt: raw.stream_receipt.unwrap_or(true),
        threads: threads?,
        shutdown_grace: shutdown_grace?,
        idempotency_ttl: idempotency_ttl?,
        idempotency_wait: idempotency_wait?,
    })
}

fn max_body_bytes(raw: Option<RawSize>, problems: &mut Vec<Problem>) -> Option<usize> {
    const KEY: &str = "max_body_bytes";
    let bytes = size(KEY, raw, DEFAULT_MAX_BODY_BYTES, problems)?;
    match usize::try_from(bytes) {
        Ok(n) => Some(n),
        Err(_) => {
            problems.push(Problem::new(KEY, "too large for this platform"));
            None
        }
    }
}

fn threads(n: i64, problems: &mut Vec<Problem>) -> Option<usize> {
    if !(0..=MAX_THREADS).contains(&n) {
        problems.push(Problem::new(
            "threads",
            format!("must be between 0 and {MAX_THREADS} (0 = one per CPU), not {n}"),
        ));
        return None;
    }
    match usize::try_from(n) {
        Ok(0) | Err(_) => Some(std::thread::available_parallelism().map_or(1, |n| n.get())),
        Ok(n) => Some(n),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::testing::{ok, problems};

    #[test]
    fn hostname_is_the_default_sidecar_id() {
        assert_eq!(ok("", &[("HOSTNAME", "pod-7")]).sidecar_id, "pod-7");
        assert_eq!(
            ok("sidecar_id = \"x\"", &[("HOSTNAME", "pod-7")]).sidecar_id,
            "x"
        );
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(ok("max_body_bytes = \"64KiB\"", &[]).max_body_bytes, 65_536);
        assert_eq!(ok("max_body_bytes = 1", &[]).max_body_bytes, 1);
        assert_eq!(
            ok("", &[("TOLLGATE_MAX_BODY_BYTES", "1GB")]).max_body_bytes,
            1_000_000_000
        );
        assert_eq!(
            problems("max_body_bytes = -5", &[]),
            ["max_body_bytes: must be a positive number of bytes, not -5"]
        );
        assert_eq!(
            problems("max_body_bytes = \"0MiB\"", &[]),
            ["max_body_bytes: must be greater than 0"]
        );
        assert!(problems("max_body_bytes = \"lots\"", &[])[0]
            .starts_with("max_body_bytes: not a size: \"lots\""));
        assert_eq!(problems("max_body_bytes = 1.5", &[]), ["max_body_bytes: expected an integer or a size string such as \"32MiB\", found float"]);
        let c = ok("shutdown_grace = \"1m 30s\"\n[timeouts]\nfirst_byte = \"2min\"\nidle = \"500ms\"\n[outbox]\nretention = \"7d\"\n", &[]);
        assert_eq!(c.shutdown_grace, Duration::from_secs(90));
        assert_eq!(c.timeouts.first_byte, Duration::from_secs(120));
        assert_eq!(c.timeouts.idle, Duration::from_millis(500));
        assert_eq!(c.outbox.retention, Duration::from_secs(7 * 86_400));
        assert_eq!(
            ok("shutdown_grace = \"0s\"", &[]).shutdown_grace,
            Duration::ZERO
        );
        assert_eq!(
            problems("", &[("TOLLGATE_SHUTDOWN_GRACE", "10")]),
            ["shutdown_grace (from env TOLLGATE_SHUTDOWN_GRACE): not a duration: \"10\" (expected e.g. \"500ms\", \"10s\", \"5m\", \"30d\")"]
        );
    }

    #[test]
    fn threads_zero_means_cpus() {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(ok("threads = 0", &[]).threads, cpus);
        assert_eq!(ok("threads = 1024", &[]).threads, 1024);
        assert_eq!(problems("threads = -1", &[]).len(), 1);
    }
}
