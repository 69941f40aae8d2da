//! `[batches]`: provider batches (Anthropic Message Batches, OpenAI batches) reserved at
//! submit and settled per item (see `crate::proxy::batch`).

use std::time::Duration;

use serde::Deserialize;

use super::schema::{Key, Type};
use super::values::{duration, size, RawSize};
use super::Problem;

const DEFAULT_POLL_INTERVAL: &str = "60s";
/// A day past the providers' own keeping of batch results (29 days at Anthropic).
const DEFAULT_RETENTION: &str = "30d";
/// The Message Batches API's own limit on a batch (256 MB).
const DEFAULT_MAX_BODY_BYTES: u64 = 256_000_000;

#[rustfmt::skip]
pub(super) static KEYS: &[Key] = &[
    Key::new("batches.poll_interval", Type::Duration, DEFAULT_POLL_INTERVAL,
     "How often the batches this sidecar submitted and that are still open are retrieved from the provider; an ended one is settled (its results read once, one usage event per item). A client's retrieve that shows a batch ended settles it too, without waiting for the poll."),
    Key::new("batches.max_body_bytes", Type::Size, "256000000",
     "Largest Anthropic batch create body, or OpenAI batch input file upload, read (the APIs' own limits are 256 MB and 200 MB); a larger one is refused with a 413 before anything is sent."),
    Key::new("batches.retention", Type::Duration, DEFAULT_RETENTION,
     "How long a settled batch's record (what the gateway's batch status answers; its usage events stay in the ledger) and the priced copy of an uploaded OpenAI batch input file are kept; older ones are deleted at a poll within an hour, or a quarter of the retention when that is shorter (a batch created over a file whose copy is gone reads it from the provider again)."),
];

/// The section as written.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSection {
    pub batches: Option<RawBatches>,
}

/// `[batches]`
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBatches {
    pub poll_interval: Option<String>,
    pub max_body_bytes: Option<RawSize>,
    pub retention: Option<String>,
}

/// Provider batches: polling and the create body's bound.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchesConfig {
    /// How often open batches are retrieved from the provider.
    pub poll_interval: Duration,
    /// Largest batch create body read.
    pub max_body_bytes: usize,
    /// How long settled records and unused input files are kept.
    pub retention: Duration,
}

impl Default for BatchesConfig {
    fn default() -> BatchesConfig {
        BatchesConfig {
            poll_interval: Duration::from_secs(60),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES as usize,
            retention: Duration::from_secs(30 * 86_400),
        }
    }
}

pub(super) fn validate(raw: RawSection, problems: &mut Vec<Problem>) -> Option<BatchesConfig> {
    let b = raw.batches.unwrap_or_default();
    let poll_interval = duration(
        "batches.poll_interval",
        b.poll_interval.as_deref(),
        DEFAULT_POLL_INTERVAL,
        true,
        problems,
    );
    let max_body_bytes = size(
        "batches.max_body_bytes",
        b.max_body_bytes,
        DEFAULT_MAX_BODY_BYTES,
        problems,
    )
    .and_then(|n| match usize::try_from(n) {
        Ok(n) => Some(n),
        Err(_) => {
            problems.push(Problem::new(
                "batches.max_body_bytes",
                "too large for this platform",
            ));
            None
        }
    });
    let retention = duration(
        "batches.retention",
        b.retention.as_deref(),
        DEFAULT_RETENTION,
        true,
        problems,
    );
    Some(BatchesConfig {
        poll_interval: poll_interval?,
        max_body_bytes: max_body_bytes?,
        retention: retention?,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::testing::{ok, problems};

    #[test]
    fn defaults_and_overrides() {
        let c = ok("", &[]);
        assert_eq!(c.batches.poll_interval, Duration::from_secs(60));
        assert_eq!(c.batches.max_body_bytes, 256_000_000);
        assert_eq!(c.batches.retention, Duration::from_secs(30 * 86_400));
        let c = ok(
            "[batches]\npoll_interval = \"250ms\"\nmax_body_bytes = \"1MiB\"\nretention = \"7d\"\n",
            &[],
        );
        assert_eq!(c.batches.poll_interval, Duration::from_millis(250));
        assert_eq!(c.batches.max_body_bytes, 1 << 20);
        assert_eq!(c.batches.retention, Duration::from_secs(7 * 86_400));
        let p = problems(
            "[batches]\npoll_interval = \"0s\"\nmax_body_bytes = 0\nretention = \"soon\"\n",
            &[],
        );
        assert!(p.iter().any(|p| p.contains("batches.retention")), "{p:?}");
        assert!(
            p.iter().any(|p| p.contains("batches.poll_interval")),
            "{p:?}"
        );
        assert!(
            p.iter().any(|p| p.contains("batches.max_body_bytes")),
            "{p:?}"
        );
    }
}
