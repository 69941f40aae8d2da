//! The Anthropic Messages API (`/v1/messages`): its headers, usage, stream
//! events, complete-message assembly and replay, and error shapes.

pub mod assemble;
pub mod batch;
pub mod error;
pub mod replay;
pub mod stream;
pub mod usage;

/// The key header.
pub const X_API_KEY: &str = "x-api-key";
/// Sent by every Anthropic SDK; marks an unprefixed request as Anthropic.
pub const VERSION: &str = "anthropic-version";
/// Beta flags (any number of header lines, comma-separated).
pub const BETA: &str = "anthropic-beta";
/// The `anthropic-version` sent to an Anthropic upstream for a client that
/// speaks the other dialect (the API requires one; this is the only version).
pub const API_VERSION: &str = "2023-06-01";
/// The provider's request id, for reconciliation.
pub const REQUEST_ID: &str = "request-id";

/// Whether a complete `Message` stopped at its output bound
/// (`stop_reason: "max_tokens"`).
pub fn stopped_at_limit(message: &serde_json::Map<String, serde_json::Value>) -> bool {
    message
        .get("stop_reason")
        .and_then(serde_json::Value::as_str)
        == Some("max_tokens")
}
