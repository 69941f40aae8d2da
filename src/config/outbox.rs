//! `[outbox]`: the local usage-event outbox.

use std::time::Duration;

use serde::Deserialize;

use super::schema::{Key, Type};
use super::values::duration;
use super::Problem;

const DEFAULT_RETENTION: &str = "30d";

#[rustfmt::skip]
pub(super) static KEYS: &[Key] = &[
    Key::new("outbox.sync", Type::Bool, "true",
     "Make each usage event durable (flushed) before the response's last byte reaches the client. false: events are group-committed in the background (lower latency; a crash can lose the newest events)."),
    Key::new("outbox.retention", Type::Duration, DEFAULT_RETENTION,
     "How long usage events that were not shipped are kept."),
];

/// The section as written.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSection {
    pub outbox: Option<RawOutbox>,
}

/// `[outbox]`
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutbox {
    pub retention: Option<String>,
    pub sync: Option<bool>,
}

/// The local usage-event outbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxConfig {
    /// How long unshipped events are kept.
    pub retention: Duration,
    /// Wait for each event's flush before a response's last byte (durable).
    /// `false` trades that guarantee for latency: events are still group
    /// committed within a few milliseconds, but a crash can lose the last ones.
    pub sync: bool,
}

pub(super) fn validate(raw: RawSection, problems: &mut Vec<Problem>) -> Option<OutboxConfig> {
    let o = raw.outbox.unwrap_or_default();
    let retention = duration(
        "outbox.retention",
        o.retention.as_deref(),
        DEFAULT_RETENTION,
        false,
        problems,
    );
    Some(OutboxConfig {
        retention: retention?,
        sync: o.sync.unwrap_or(true),
    })
}
