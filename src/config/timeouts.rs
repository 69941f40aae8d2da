//! `[timeouts]`: upstream connect, first byte, idle gaps, and the
//! HTTPS_PROXY mode handshake.

use std::time::Duration;

use serde::Deserialize;

use super::schema::{Key, Type};
use super::values::duration;
use super::Problem;

const DEFAULT_CONNECT: &str = "5s";
const DEFAULT_FIRST_BYTE: &str = "600s";
const DEFAULT_IDLE: &str = "300s";
const DEFAULT_HANDSHAKE: &str = "10s";

#[rustfmt::skip]
pub(super) static KEYS: &[Key] = &[
    Key::new("timeouts.connect", Type::Duration, DEFAULT_CONNECT,
     "Upstream connect (TCP and TLS) timeout."),
    Key::new("timeouts.first_byte", Type::Duration, DEFAULT_FIRST_BYTE,
     "How long to wait for the upstream's response headers."),
    Key::new("timeouts.idle", Type::Duration, DEFAULT_IDLE,
     "Longest gap between two chunks of an upstream response (and of a blind tunnel, both ways)."),
    Key::new("timeouts.handshake", Type::Duration, DEFAULT_HANDSHAKE,
     "HTTPS_PROXY mode: longest a client may take to send its CONNECT and to finish the TLS handshake."),
];

/// The section as written.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSection {
    pub timeouts: Option<RawTimeouts>,
}

/// `[timeouts]`
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    pub connect: Option<String>,
    pub first_byte: Option<String>,
    pub idle: Option<String>,
    pub handshake: Option<String>,
}

/// Upstream timeouts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP + TLS connect.
    pub connect: Duration,
    /// Until the upstream's response headers.
    pub first_byte: Duration,
    /// Longest gap between two upstream body chunks.
    pub idle: Duration,
    /// HTTPS_PROXY mode: CONNECT line and TLS handshake.
    pub handshake: Duration,
}

pub(super) fn validate(raw: RawSection, problems: &mut Vec<Problem>) -> Option<Timeouts> {
    let t = raw.timeouts.unwrap_or_default();
    let mut each = |key: &str, value: Option<&str>, default: &str| {
        duration(key, value, default, true, problems)
    };
    let connect = each("timeouts.connect", t.connect.as_deref(), DEFAULT_CONNECT);
    let first_byte = each(
        "timeouts.first_byte",
        t.first_byte.as_deref(),
        DEFAULT_FIRST_BYTE,
    );
    let idle = each("timeouts.idle", t.idle.as_deref(), DEFAULT_IDLE);
    let handshake = each(
        "timeouts.handshake",
        t.handshake.as_deref(),
        DEFAULT_HANDSHAKE,
    );
    Some(Timeouts {
        connect: connect?,
        first_byte: first_byte?,
        idle: idle?,
        handshake: handshake?,
    })
}
