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
     "true: each request's open usage record is journaled and fdatasync'd (group commit) before it is sent to the provider; a crash loses no request and no spend. false: it is written to the kernel before the send and synced in the background (survives a process crash, not a machine crash). Usage events are never waited on."),
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
    /// `fdatasync` each request's open usage record (group commit) before
    /// it is sent. `false`: only written to the kernel before the send and
    /// synced in the background (survives a process crash, not a machine
    /// crash). See `crate::store::journal`.
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
