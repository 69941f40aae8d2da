//! OpenAI-compatible chat completions (OpenAI, OpenRouter, local models):
//! headers, usage, stream chunks, complete-message assembly and replay, and
//! error shapes; the Responses API; the Batch API's files and objects.

pub mod assemble;
pub mod batch;
pub mod error;
pub mod replay;
pub mod request;
pub mod responses;
pub mod stream;
pub mod usage;

use serde_json::{Map, Value};

/// The key header (`Bearer <key>`).
pub const AUTHORIZATION: &str = "authorization";
/// The provider's request id, for reconciliation.
pub const REQUEST_ID: &str = "x-request-id";

/// Whether a complete `chat.completion` stopped at its output bound
/// (`finish_reason: "length"` in any choice; no choices counts as stopped).
pub fn stopped_at_limit(message: &Map<String, Value>) -> bool {
    if message.get("object").and_then(Value::as_str) == Some("response") {
        return !responses::completed(message);
    }
    message
        .get("choices")
        .and_then(Value::as_array)
        .is_none_or(|choices| {
            choices
                .iter()
                .any(|c| c.get("finish_reason").and_then(Value::as_str) == Some("length"))
        })
}
