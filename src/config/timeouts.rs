//! `[timeouts]`: upstream connect, first byte, idle gaps, the HTTPS_PROXY
//! mode handshake, and how long a client may take to send its request.

use std::time::Duration;

use serde::Deserialize;

use super::schema::{Key, Type};
use super::values::duration;
use super::Problem;

const DEFAULT_CONNECT: &str = "5s";
const DEFAULT_FIRST_BYTE: &str = "600s";
const DEFAULT_IDLE: &str = "300s";
const DEFAULT_HANDSHAKE: &str = "10s";
const DEFAULT_REQUEST_HEAD: &str = "10s";
const DEFAULT_REQUEST_BODY: &str = "30s";

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
    Key::new("timeouts.request_head", Type::Duration, DEFAULT_REQUEST_HEAD,
     "Longest a client may take to send a request's head (from the connection, or on a kept-alive one from the request's first byte); then 408."),
    Key::new("timeouts.request_body", Type::Duration, DEFAULT_REQUEST_BODY,
     "Longest a client may take to send a request's whole body; then 408."),
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
    pub request_head: Option<String>,
    pub request_body: Option<String>,
}

/// Upstream timeouts, and the client's.
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
    /// The client's request head (slow clients get a 408).
    pub request_head: Duration,
    /// The client's request body, all of it.
    pub request_body: Duration,
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
    let request_head = each(
        "timeouts.request_head",
        t.request_head.as_deref(),
        DEFAULT_REQUEST_HEAD,
    );
    let request_body = each(
        "timeouts.request_body",
        t.request_body.as_deref(),
        DEFAULT_REQUEST_BODY,
    );
    Some(Timeouts {
        connect: connect?,
        first_byte: first_byte?,
        idle: idle?,
        handshake: handshake?,
        request_head: request_head?,
        request_body: request_body?,
    })
}
