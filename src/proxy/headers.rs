//! Header names tollgate reads or writes, in one place. The ones it
//! writes on every answer are parsed once, here, not per response.

use http::{HeaderMap, HeaderName, HeaderValue};
use pingora::http::ResponseHeader;

/// Receipt: tollgate's id for the request (also the usage event id).
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-tollgate-request-id");
/// Receipt: the configured provider that served the request.
pub const PROVIDER: HeaderName = HeaderName::from_static("x-tollgate-provider");
/// Receipt: the model that answered.
pub const MODEL: HeaderName = HeaderName::from_static("x-tollgate-model");
/// Receipt: the metered cost in USD (non-streaming responses only).
pub const COST_USD: HeaderName = HeaderName::from_static("x-tollgate-cost-usd");
/// Receipt: what a cache hit or coalesced request did not spend, in USD.
pub const SAVED_USD: HeaderName = HeaderName::from_static("x-tollgate-saved-usd");
/// Receipt: what the cache did (`hit|miss|bypass|refresh|coalesced`).
pub const CACHE: HeaderName = HeaderName::from_static("x-tollgate-cache");
/// Receipt: the `max_tokens` a budget lowered the request to (`clamp`).
pub const CLAMPED_MAX_TOKENS: HeaderName = HeaderName::from_static("x-tollgate-clamped-max-tokens");
/// Request: `bypass` (neither read nor write the cache) or `refresh` (skip the read, write the fresh answer).
pub const CACHE_REQUEST: &str = "x-tollgate-cache";
/// Marks a response tollgate made itself; the value is the error kind.
pub const ERROR: HeaderName = HeaderName::from_static("x-tollgate-error");
/// A routed request's attempts: `provider/model=outcome, …` in order.
pub const ATTEMPTS: HeaderName = HeaderName::from_static("x-tollgate-attempts");
/// Fallback targets for one request: `provider/model,provider/model`.
pub const FALLBACK: &str = "x-tollgate-fallback";
/// Every client-sent header with this prefix is dropped at ingress.
pub const TOLLGATE_PREFIX: &str = "x-tollgate-";

/// Read by both SDKs before retrying.
pub const X_SHOULD_RETRY: &str = "x-should-retry";
/// Request: makes a POST idempotent (see `proxy::idempotency`); recorded
/// in the usage event.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Request: `false` asks for a 409 at once, rather than waiting, while the
/// first request with the same key is still running.
pub const IDEMPOTENCY_WAIT: &str = "idempotency-wait";
/// Receipt: `true` on an answer replayed for an `Idempotency-Key` retry.
pub const IDEMPOTENT_REPLAY: HeaderName = HeaderName::from_static("x-tollgate-idempotent-replay");

/// Hop-by-hop and framing headers never copied between the two sides.
pub const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "host",
];

/// Whether a provider's response header stays on the provider's side:
/// hop-by-hop and framing headers, and any posing as tollgate's own.
pub fn not_forwarded(name: &HeaderName) -> bool {
    let n = name.as_str();
    HOP_BY_HOP.contains(&n) || n.starts_with(TOLLGATE_PREFIX)
}

/// Where a response header is set: a pingora header, or the map of one
/// being built. (pingora's own setters title and re-parse every name;
/// the map takes it as it is.)
pub trait SetHeader {
    /// Sets `name` to `value`, replacing what it had.
    fn set(&mut self, name: HeaderName, value: HeaderValue);
}

impl SetHeader for ResponseHeader {
    fn set(&mut self, name: HeaderName, value: HeaderValue) {
        let _ = self.insert_header(name, value);
    }
}

impl SetHeader for HeaderMap {
    fn set(&mut self, name: HeaderName, value: HeaderValue) {
        self.insert(name, value);
    }
}

/// `content-length` when the length is known, else chunked: without it
/// pingora's HTTP/1.1 writer falls back to close-delimited bodies, costing
/// the client its keep-alive connection (h2 drops it).
pub fn set_framing(header: &mut impl SetHeader, len: Option<usize>) {
    match len {
        Some(len) => header.set(http::header::CONTENT_LENGTH, HeaderValue::from(len)),
        None => header.set(
            http::header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        ),
    }
}

/// The client's response header made of the provider's: its status and
/// headers but those [`not_forwarded`], then what `add` sets (framing,
/// receipts). Edited in place, so no header is copied or parsed again
/// (re-appending each through pingora: ~2k more instructions per answer).
pub fn from_provider(upstream: ResponseHeader, add: impl FnOnce(&mut HeaderMap)) -> ResponseHeader {
    let mut parts = http::response::Parts::from(upstream);
    // One or two names at most (the framing): found one at a time, no list.
    while let Some(name) = parts.headers.keys().find(|n| not_forwarded(n)).cloned() {
        parts.headers.remove(&name);
    }
    // As a header built afresh: tollgate's HTTP/1.1, nothing attached.
    parts.version = http::Version::default();
    parts.extensions.clear();
    add(&mut parts.headers);
    ResponseHeader::from(parts)
}

/// A response header with this status (500 if the status is not valid).
pub fn response_header(status: http::StatusCode, capacity: usize) -> pingora::http::ResponseHeader {
    pingora::http::ResponseHeader::build_no_case(status, Some(capacity)).unwrap_or_else(|_| {
        let (parts, ()) = http::Response::new(()).into_parts();
        let mut header = pingora::http::ResponseHeader::from(parts);
        let _ = header.set_status(http::StatusCode::INTERNAL_SERVER_ERROR);
        header
    })
}
