//! OpenAI-compatible: the chunk sequence of a complete `chat.completion`
//! (role, content / refusal / reasoning / tool-call deltas, finish, usage).

use bytes::{BufMut, BytesMut};
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::dialect::emit::{
    required_array, required_object, write_event, OneField, ReplayError, NULL,
};

// ----- OpenAI / OpenRouter --------------------------------------------------------------

/// Whether chunks carry a `usage` key, and what the usage-only chunk carries.
#[derive(Clone, Copy)]
enum UsageOut<'a> {
    Omit,
    Null,
    Value(&'a Value),
}

/// One `chat.completion.chunk`: the message's top-level fields, `choices`, maybe `usage`.
struct ChunkOut<'a, C> {
    message: &'a Map<String, Value>,
    choices: C,
    usage: UsageOut<'a>,
}

impl<C: Serialize> Serialize for ChunkOut<'_, C> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        if let Some(id) = self.message.get("id") {
            map.serialize_entry("id", id)?;
        }
        map.serialize_entry("object", "chat.completion.chunk")?;
        for (key, value) in self.message {
            if !matches!(key.as_str(), "id" | "object" | "choices" | "usage") {
                map.serialize_entry(key, value)?;
            }
        }
        map.serialize_entry("choices", &self.choices)?;
        match self.usage {
            UsageOut::Omit => {}
            UsageOut::Null => map.serialize_entry("usage", &NULL)?,
            UsageOut::Value(usage) => map.serialize_entry("usage", usage)?,
        }
        map.end()
    }
}

/// One entry of a chunk's `choices`.
struct ChoiceOut<'a, D> {
    index: &'a Value,
    delta: D,
    logprobs: &'a Value,
    finish_reason: &'a Value,
    /// Choice-level extras (OpenRouter's `native_finish_reason`…), on the first and the
    /// finish chunk: the SDK reads the first, the API sends final values on the last.
    extra: Option<&'a Map<String, Value>>,
}

impl<D: Serialize> Serialize for ChoiceOut<'_, D> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("index", self.index)?;
        map.serialize_entry("delta", &self.delta)?;
        map.serialize_entry("logprobs", self.logprobs)?;
        map.serialize_entry("finish_reason", self.finish_reason)?;
        if let Some(extra) = self.extra {
            for (key, value) in extra {
                if !matches!(
                    key.as_str(),
                    "index" | "message" | "delta" | "logprobs" | "finish_reason"
                ) {
                    map.serialize_entry(key, value)?;
                }
            }
        }
        map.end()
    }
}

#[derive(Serialize)]
struct EmptyDelta {}

#[derive(Serialize)]
struct ToolArgsDelta<'a> {
    tool_calls: [ToolArgs<'a>; 1],
}

#[derive(Serialize)]
struct ToolArgs<'a> {
    index: usize,
    function: ArgsOnly<'a>,
}

#[derive(Serialize)]
struct ArgsOnly<'a> {
    arguments: &'a str,
}

/// Writes one data-only chunk carrying a single choice.
fn write_chunk<D: Serialize>(
    buf: &mut BytesMut,
    message: &Map<String, Value>,
    usage: UsageOut<'_>,
    choice: ChoiceOut<'_, D>,
) -> Result<(), ReplayError> {
    let chunk = ChunkOut {
        message,
        choices: [choice],
        usage,
    };
    write_event(buf, None, &chunk)
}

/// Message fields streamed by dedicated chunks; everything else gets a generic one.
const MESSAGE_STREAMED: [&str; 5] = ["role", "content", "refusal", "reasoning", "tool_calls"];

pub(crate) fn replay(
    message: &Map<String, Value>,
    include_usage: bool,
    buf: &mut BytesMut,
) -> Result<(), ReplayError> {
    let choices = required_array(message, "choices", "choices")?;
    let usage = message.get("usage").filter(|usage| !usage.is_null());
    let chunk_usage = if include_usage {
        UsageOut::Null
    } else {
        UsageOut::Omit
    };

    for (position, choice) in choices.iter().enumerate() {
        let choice = choice.as_object().ok_or(ReplayError::InvalidField {
            field: "choices[]",
            expected: "an object",
        })?;
        let position_index = Value::from(position);
        let index = match choice.get("index") {
            None | Some(Value::Null) => &position_index,
            Some(index @ Value::Number(_)) => index,
            Some(_) => {
                return Err(ReplayError::InvalidField {
                    field: "choices[].index",
                    expected: "a number",
                })
            }
        };
        let msg = required_object(choice, "message", "choices[].message")?;
        let logprobs = choice.get("logprobs").unwrap_or(&NULL);
        let finish_reason = choice.get("finish_reason").unwrap_or(&NULL);
        let text_of = |key: &'static str, field: &'static str| match msg.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.as_str())),
            Some(_) => Err(ReplayError::InvalidField {
                field,
                expected: "a string",
            }),
        };
        let content = text_of("content", "choices[].message.content")?;
        let refusal = text_of("refusal", "choices[].message.refusal")?;
        let reasoning = text_of("reasoning", "choices[].message.reasoning")?;
        let tool_calls = match msg.get("tool_calls") {
            None | Some(Value::Null) => &[][..],
            Some(Value::Array(calls)) => calls.as_slice(),
            Some(_) => {
                return Err(ReplayError::InvalidField {
                    field: "choices[].message.tool_calls",
                    expected: "an array",
                })
            }
        };

        // First chunk: the role, with empty strings for the text fields the message has
        // (as the API does), null for those it lacks.
        let mut role_delta = Map::new();
        role_delta.insert(
            "role".to_owned(),
            msg.get("role")
                .filter(|role| role.is_string())
                .cloned()
                .unwrap_or_else(|| Value::String("assistant".to_owned())),
        );
        let empty_or_null =
            |text: Option<&str>| text.map_or(Value::Null, |_| Value::String(String::new()));
        role_delta.insert("content".to_owned(), empty_or_null(content));
        role_delta.insert("refusal".to_owned(), empty_or_null(refusal));
        write_chunk(
            buf,
            message,
            chunk_usage,
            ChoiceOut {
                index,
                delta: &role_delta,
                logprobs: &NULL,
                finish_reason: &NULL,
                // The SDK keeps choice-level extras from a choice's first chunk only.
                extra: Some(choice),
            },
        )?;

        // Logprobs ride on the content chunk, or on the finish chunk when there is none.
        let mut logprobs_pending = logprobs;
        for (key, text) in [
            ("content", content),
            ("refusal", refusal),
            ("reasoning", reasoning),
        ] {
            if text.unwrap_or_default().is_empty() {
                continue;
            }
            let value = msg.get(key).unwrap_or(&NULL);
            let chunk_logprobs = if key == "content" {
                std::mem::replace(&mut logprobs_pending, &NULL)
            } else {
                &NULL
            };
            write_chunk(
                buf,
                message,
                chunk_usage,
                ChoiceOut {
                    index,
                    delta: OneField { key, value },
                    logprobs: chunk_logprobs,
                    finish_reason: &NULL,
                    extra: None,
                },
            )?;
        }

        // Any other message field (annotations, audio, reasoning_details…), whole.
        for (key, value) in msg {
            if MESSAGE_STREAMED.contains(&key.as_str()) || value.is_null() {
                continue;
            }
            write_chunk(
                buf,
                message,
                chunk_usage,
                ChoiceOut {
                    index,
                    delta: OneField { key, value },
                    logprobs: &NULL,
                    finish_reason: &NULL,
                    extra: None,
                },
            )?;
        }

        for (k, call) in tool_calls.iter().enumerate() {
            let call = call.as_object().ok_or(ReplayError::InvalidField {
                field: "choices[].message.tool_calls[]",
                expected: "an object",
            })?;
            // Header fragment: everything but the arguments, which follow in one piece.
            let mut header = Map::new();
            header.insert("index".to_owned(), Value::from(k));
            let mut arguments = "";
            for (key, value) in call {
                match (key.as_str(), value) {
                    ("index", _) => {}
                    ("function", Value::Object(function)) => {
                        let mut head = Map::new();
                        for (field, value) in function {
                            if field == "arguments" {
                                arguments = value.as_str().ok_or(ReplayError::InvalidField {
                                    field: "choices[].message.tool_calls[].function.arguments",
                                    expected: "a string",
                                })?;
                            } else {
                                head.insert(field.clone(), value.clone());
                            }
                        }
                        head.insert("arguments".to_owned(), Value::String(String::new()));
                        header.insert(key.clone(), Value::Object(head));
                    }
                    _ => {
                        header.insert(key.clone(), value.clone());
                    }
                }
            }
            let header_calls = Value::Array(vec![Value::Object(header)]);
            write_chunk(
                buf,
                message,
                chunk_usage,
                ChoiceOut {
                    index,
                    delta: OneField {
                        key: "tool_calls",
                        value: &header_calls,
                    },
                    logprobs: &NULL,
                    finish_reason: &NULL,
                    extra: None,
                },
            )?;
            if !arguments.is_empty() {
                write_chunk(
                    buf,
                    message,
                    chunk_usage,
                    ChoiceOut {
                        index,
                        delta: ToolArgsDelta {
                            tool_calls: [ToolArgs {
                                index: k,
                                function: ArgsOnly { arguments },
                            }],
                        },
                        logprobs: &NULL,
                        finish_reason: &NULL,
                        extra: None,
                    },
                )?;
            }
        }

        write_chunk(
            buf,
            message,
            chunk_usage,
            ChoiceOut {
                index,
                delta: EmptyDelta {},
                logprobs: logprobs_pending,
                finish_reason,
                extra: Some(choice),
            },
        )?;
    }

    if include_usage {
        if let Some(usage) = usage {
            let chunk = ChunkOut {
                message,
                choices: [(); 0],
                usage: UsageOut::Value(usage),
            };
            write_event(buf, None, &chunk)?;
        }
    }
    buf.put_slice(b"data: [DONE]\n\n");
    Ok(())
}
