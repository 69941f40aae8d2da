//! Anthropic: the event sequence of a complete `Message` (message_start,
//! ping, content blocks with their deltas, message_delta, message_stop).

use bytes::BytesMut;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::dialect::emit::{
    required_array, required_object, str_field, write_event, Patched, ReplayError,
};
use crate::dialect::json::empty_object;

// ----- Anthropic ------------------------------------------------------------------------

#[derive(Serialize)]
pub(crate) struct TypeOnly {
    #[serde(rename = "type")]
    pub(crate) kind: &'static str,
}

#[derive(Serialize)]
struct MessageStartOut<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: Patched<'a>,
}

#[derive(Serialize)]
pub(crate) struct BlockStartOut<B> {
    #[serde(rename = "type")]
    pub(crate) kind: &'static str,
    pub(crate) index: usize,
    pub(crate) content_block: B,
}

#[derive(Serialize)]
pub(crate) struct BlockDeltaOut<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    index: usize,
    delta: DeltaOut<'a>,
}

#[derive(Serialize)]
#[serde(tag = "type")]
pub(crate) enum DeltaOut<'a> {
    #[serde(rename = "text_delta")]
    Text { text: &'a str },
    #[serde(rename = "input_json_delta")]
    InputJson { partial_json: &'a str },
    #[serde(rename = "thinking_delta")]
    Thinking { thinking: &'a str },
    #[serde(rename = "signature_delta")]
    Signature { signature: &'a str },
    #[serde(rename = "citations_delta")]
    Citations { citation: &'a Value },
}

#[derive(Serialize)]
pub(crate) struct BlockStopOut {
    #[serde(rename = "type")]
    pub(crate) kind: &'static str,
    pub(crate) index: usize,
}

#[derive(Serialize)]
struct MessageDeltaOut<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    delta: Map<String, Value>,
    usage: &'a Map<String, Value>,
}

pub(crate) fn write_block_delta(
    buf: &mut BytesMut,
    index: usize,
    delta: DeltaOut<'_>,
) -> Result<(), ReplayError> {
    let event = BlockDeltaOut {
        kind: "content_block_delta",
        index,
        delta,
    };
    write_event(buf, Some("content_block_delta"), &event)
}

pub(crate) fn replay(message: &Map<String, Value>, buf: &mut BytesMut) -> Result<(), ReplayError> {
    let content = required_array(message, "content", "content")?;
    let usage = required_object(message, "usage", "usage")?;

    // message_start: the message before any output; the API reports a placeholder of
    // at most 1 output token there and the real count in message_delta.
    let mut start_usage = usage.clone();
    if let Some(output) = usage.get("output_tokens").and_then(Value::as_u64) {
        start_usage.insert("output_tokens".to_owned(), Value::from(output.min(1)));
    }
    let mut overrides = vec![
        ("content", Value::Array(Vec::new())),
        ("stop_reason", Value::Null),
        ("stop_sequence", Value::Null),
        ("usage", Value::Object(start_usage)),
    ];
    if message.contains_key("stop_details") {
        overrides.push(("stop_details", Value::Null));
    }
    let start = MessageStartOut {
        kind: "message_start",
        message: Patched {
            base: message,
            overrides: &overrides,
        },
    };
    write_event(buf, Some("message_start"), &start)?;

    // The API sends a ping right after the first content_block_start.
    let ping = TypeOnly { kind: "ping" };
    if content.is_empty() {
        write_event(buf, Some("ping"), &ping)?;
    }

    for (index, block) in content.iter().enumerate() {
        let block = block.as_object().ok_or(ReplayError::InvalidField {
            field: "content[]",
            expected: "an object",
        })?;
        let kind = str_field(block, "type", "content[].type")?;
        let input_json;
        let mut deltas: Vec<DeltaOut<'_>> = Vec::new();
        let mut block_overrides: Vec<(&str, Value)> = Vec::new();
        match kind {
            "text" => {
                let text = str_field(block, "text", "content[].text")?;
                block_overrides.push(("text", Value::String(String::new())));
                // Keep the stored shape of `citations` (absent / null / list) so the round
                // trip is exact; a list starts empty and is refilled by citations_delta.
                if let Some(Value::Array(citations)) = block.get("citations") {
                    block_overrides.push(("citations", Value::Array(Vec::new())));
                    deltas.extend(
                        citations
                            .iter()
                            .map(|citation| DeltaOut::Citations { citation }),
                    );
                }
                if !text.is_empty() {
                    deltas.push(DeltaOut::Text { text });
                }
            }
            "tool_use" | "server_tool_use" => {
                if let Some(input) = block.get("input") {
                    block_overrides.push(("input", empty_object()));
                    let is_empty = matches!(input, Value::Object(fields) if fields.is_empty());
                    if !is_empty {
                        input_json = serde_json::to_string(input).map_err(ReplayError::Encode)?;
                        deltas.push(DeltaOut::InputJson {
                            partial_json: &input_json,
                        });
                    }
                }
            }
            "thinking" => {
                let thinking = str_field(block, "thinking", "content[].thinking")?;
                block_overrides.push(("thinking", Value::String(String::new())));
                if !thinking.is_empty() {
                    deltas.push(DeltaOut::Thinking { thinking });
                }
                if let Some(Value::String(signature)) = block.get("signature") {
                    block_overrides.push(("signature", Value::String(String::new())));
                    if !signature.is_empty() {
                        deltas.push(DeltaOut::Signature { signature });
                    }
                }
            }
            // redacted_thinking, tool results and anything newer: the whole block at start.
            _ => {}
        }
        let start = BlockStartOut {
            kind: "content_block_start",
            index,
            content_block: Patched {
                base: block,
                overrides: &block_overrides,
            },
        };
        write_event(buf, Some("content_block_start"), &start)?;
        if index == 0 {
            write_event(buf, Some("ping"), &ping)?;
        }
        for delta in deltas {
            write_block_delta(buf, index, delta)?;
        }
        let stop = BlockStopOut {
            kind: "content_block_stop",
            index,
        };
        write_event(buf, Some("content_block_stop"), &stop)?;
    }

    let mut delta = Map::new();
    for key in ["stop_reason", "stop_sequence"] {
        delta.insert(
            key.to_owned(),
            message.get(key).cloned().unwrap_or(Value::Null),
        );
    }
    // SDK 2.x reads stop_details (always) and container (when non-null) from the delta.
    if let Some(details) = message.get("stop_details") {
        delta.insert("stop_details".to_owned(), details.clone());
    }
    if let Some(container) = message.get("container").filter(|value| !value.is_null()) {
        delta.insert("container".to_owned(), container.clone());
    }
    let message_delta = MessageDeltaOut {
        kind: "message_delta",
        delta,
        usage,
    };
    write_event(buf, Some("message_delta"), &message_delta)?;
    write_event(
        buf,
        Some("message_stop"),
        &TypeOnly {
            kind: "message_stop",
        },
    )
}
