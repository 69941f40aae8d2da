//! The replay driver: re-synthesises the SSE byte stream a streaming client
//! expects from a complete message (cache hits served as streams). Each
//! dialect's event sequence lives in its own folder; the writers they share
//! are in `emit.rs`. Replay serialises borrowed data straight into one buffer.

use bytes::{Bytes, BytesMut};
use serde_json::Value;

pub use super::emit::ReplayError;
use super::{anthropic, openai, Dialect};

// ---------------------------------------------------------------------------------------
// Replay
// ---------------------------------------------------------------------------------------

/// Re-synthesises the SSE byte stream the provider would have sent for `message`
/// (a complete Anthropic `Message` JSON or OpenAI `chat.completion` JSON, exactly as
/// stored by `finish()` or as returned by the provider's non-streaming API).
/// `include_usage`: OpenAI only — emit the usage-only chunk (and `"usage":null` on other
/// chunks), as the API does when the client sent `stream_options.include_usage=true`.
///
/// Feeding the result back through an [`Assembler`](crate::dialect::assemble::Assembler) yields `message` again.
///
/// # Errors
///
/// [`ReplayError`] when `message` is not a JSON object or lacks what the stream needs
/// (Anthropic: `content` array and `usage` object; OpenAI: `choices` with `message`s).
pub fn replay(dialect: Dialect, message: &[u8], include_usage: bool) -> Result<Bytes, ReplayError> {
    let Value::Object(message_map) =
        serde_json::from_slice(message).map_err(ReplayError::NotJson)?
    else {
        return Err(ReplayError::NotObject);
    };
    // The stream is the message plus per-event envelopes; reserve once.
    let mut buf = BytesMut::with_capacity(message.len() + message.len() / 4 + 1024);
    match dialect {
        Dialect::Anthropic => anthropic::replay::replay(&message_map, &mut buf)?,
        // A Responses API `response` has its own event sequence.
        Dialect::OpenAi
            if message_map.get("object").and_then(Value::as_str) == Some("response") =>
        {
            openai::responses::replay(&message_map, &mut buf)?
        }
        Dialect::OpenAi => openai::replay::replay(&message_map, include_usage, &mut buf)?,
    }
    Ok(buf.freeze())
}
