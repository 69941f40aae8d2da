//! Anthropic events in, OpenAI chunks out, one event at a time.
//!
//! `message_start` gives the role chunk, text and thinking deltas give
//! `content` and `reasoning` chunks, a `tool_use` block gives a `tool_calls`
//! header chunk (index, id, name) and one arguments chunk per
//! `input_json_delta`; `message_stop` gives the finish chunk, the usage
//! chunk when the client asked for it, and `data: [DONE]`. Pings and
//! signatures are dropped.

use std::borrow::Cow;

use bytes::{BufMut, BytesMut};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::{local_event, stream_event};
use super::mapping::{
    anthropic_thinking_tokens, apply_anthropic_usage, finish_reason, openai_usage,
};
use super::StreamEnd;
use crate::dialect::anthropic::assemble::BlockDeltaIn;
use crate::dialect::anthropic::usage::UsageAcc;
use crate::dialect::emit::write_event;
use crate::dialect::Dialect;

/// Translates one Anthropic stream for an OpenAI client.
#[derive(Debug)]
pub struct ToOpenAiStream {
    include_usage: bool,
    created: u64,
    id: String,
    model: String,
    started: bool,
    /// The block index of each `tool_use` block, by OpenAI tool index (a
    /// list, not a table by block index: an upstream's index is not trusted
    /// to size memory).
    tool_blocks: Vec<usize>,
    stop: Option<&'static str>,
    usage: UsageAcc,
    thinking_tokens: Option<u64>,
    end: Option<StreamEnd>,
}

// === Wire: what is read ===

#[derive(Deserialize)]
struct MessageStartIn<'a> {
    #[serde(borrow)]
    message: StartMessageIn<'a>,
}

#[derive(Deserialize)]
struct StartMessageIn<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    usage: Option<Value>,
}

#[derive(Deserialize)]
struct BlockStartIn<'a> {
    index: usize,
    #[serde(borrow)]
    content_block: BlockIn<'a>,
}

#[derive(Deserialize)]
struct BlockIn<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    thinking: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct MessageDeltaIn<'a> {
    #[serde(borrow, default)]
    delta: Option<StopIn<'a>>,
    #[serde(default)]
    usage: Option<Value>,
}

#[derive(Deserialize)]
struct StopIn<'a> {
    #[serde(borrow, default)]
    stop_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ErrorIn {
    #[serde(default)]
    error: Option<Value>,
}

// === Wire: what is written ===

#[derive(Serialize)]
struct Chunk<'a, D> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: D,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Value>,
}

#[derive(Serialize)]
struct Choice<D> {
    index: u32,
    delta: D,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize)]
struct RoleDelta {
    role: &'static str,
    content: &'static str,
}

#[derive(Serialize)]
struct ContentDelta<'a> {
    content: &'a str,
}

#[derive(Serialize)]
struct ReasoningDelta<'a> {
    reasoning: &'a str,
}

#[derive(Serialize)]
struct EmptyDelta {}

#[derive(Serialize)]
struct ToolDelta<'a> {
    tool_calls: [ToolCall<'a>; 1],
}

#[derive(Serialize)]
struct ToolCall<'a> {
    index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    function: Function<'a>,
}

#[derive(Serialize)]
struct Function<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    arguments: &'a str,
}

/// Why an event could not be translated (the client gets an error chunk).
struct Broken(&'static str);

// === impl ToOpenAiStream ===

impl ToOpenAiStream {
    /// A translator at the start of a stream; `include_usage`: the client
    /// asked for the usage chunk; `created`: the chunks' Unix time.
    pub fn new(include_usage: bool, created: u64) -> Self {
        Self {
            include_usage,
            created,
            id: String::new(),
            model: String::new(),
            started: false,
            tool_blocks: Vec::new(),
            stop: None,
            usage: UsageAcc::default(),
            thinking_tokens: None,
            end: None,
        }
    }

    /// Takes one upstream event (its name and data).
    pub fn on_event(&mut self, name: &str, data: &str, out: &mut BytesMut) {
        if self.end.is_some() {
            return;
        }
        if let Err(Broken(why)) = self.event(name, data, out) {
            out.put_slice(&local_event(Dialect::OpenAi, why));
            self.end = Some(StreamEnd::Untranslatable);
        }
    }

    /// The upstream's body ended.
    pub fn finish(&mut self, out: &mut BytesMut) -> StreamEnd {
        if let Some(end) = self.end {
            return end;
        }
        // A stop reason without `message_stop`: the answer itself is whole.
        if self.stop.is_some() && self.close(out).is_ok() {
            return self.end.unwrap_or(StreamEnd::Truncated);
        }
        out.put_slice(&local_event(
            Dialect::OpenAi,
            "the upstream stream ended before its last event",
        ));
        self.end = Some(StreamEnd::Truncated);
        StreamEnd::Truncated
    }

    fn event(&mut self, name: &str, data: &str, out: &mut BytesMut) -> Result<(), Broken> {
        let unreadable = |_| Broken("the upstream sent an unreadable event");
        match name {
            "message_start" => {
                let event: MessageStartIn<'_> = serde_json::from_str(data).map_err(unreadable)?;
                let message = event.message;
                self.id = message.id.unwrap_or_default().into_owned();
                self.model = message.model.unwrap_or_default().into_owned();
                apply_anthropic_usage(&mut self.usage, message.usage.as_ref());
                self.started = true;
                self.chunk(
                    out,
                    RoleDelta {
                        role: "assistant",
                        content: "",
                    },
                    None,
                )
            }
            "content_block_start" => {
                let event: BlockStartIn<'_> = serde_json::from_str(data).map_err(unreadable)?;
                self.block_start(event, out)
            }
            "content_block_delta" => {
                let event: BlockDeltaIn<'_> = serde_json::from_str(data).map_err(unreadable)?;
                self.block_delta(event, out)
            }
            "message_delta" => {
                let event: MessageDeltaIn<'_> = serde_json::from_str(data).map_err(unreadable)?;
                if let Some(stop) = event.delta.and_then(|d| d.stop_reason) {
                    self.stop = Some(finish_reason(&stop).map_err(|_| {
                        Broken("the upstream stopped for a reason OpenAI has no word for")
                    })?);
                }
                apply_anthropic_usage(&mut self.usage, event.usage.as_ref());
                if let Some(thinking) = anthropic_thinking_tokens(event.usage.as_ref()) {
                    self.thinking_tokens = Some(thinking);
                }
                Ok(())
            }
            "message_stop" => self.close(out),
            "error" => {
                let event: ErrorIn = serde_json::from_str(data).unwrap_or(ErrorIn { error: None });
                out.put_slice(&stream_event(Dialect::OpenAi, event.error.as_ref()));
                self.end = Some(StreamEnd::UpstreamError);
                Ok(())
            }
            // ping, content_block_stop (nothing to say), and event types added later.
            _ => Ok(()),
        }
    }

    fn block_start(&mut self, event: BlockStartIn<'_>, out: &mut BytesMut) -> Result<(), Broken> {
        let block = event.content_block;
        match block.kind.as_ref() {
            "text" => self.text(block.text.as_deref(), out),
            "thinking" => self.reasoning(block.thinking.as_deref(), out),
            "redacted_thinking" => Ok(()),
            "tool_use" => {
                let (Some(id), Some(name)) = (block.id.as_deref(), block.name.as_deref()) else {
                    return Err(Broken("a tool_use block without id or name"));
                };
                let index = self.tool_blocks.len();
                self.tool_blocks.push(event.index);
                let delta = ToolDelta {
                    tool_calls: [ToolCall {
                        index,
                        id: Some(id),
                        kind: Some("function"),
                        function: Function {
                            name: Some(name),
                            arguments: "",
                        },
                    }],
                };
                self.chunk(out, delta, None)
            }
            _ => Err(Broken(
                "the upstream sent a content block OpenAI has no place for",
            )),
        }
    }

    fn block_delta(&mut self, event: BlockDeltaIn<'_>, out: &mut BytesMut) -> Result<(), Broken> {
        let delta = event.delta;
        match delta.kind.as_ref() {
            "text_delta" => self.text(Some(&delta.text), out),
            "thinking_delta" => self.reasoning(Some(&delta.thinking), out),
            "input_json_delta" => {
                let arguments: &str = &delta.partial_json;
                let Some(index) = self.tool_blocks.iter().position(|b| *b == event.index) else {
                    return Err(Broken("arguments for a block that is not a tool call"));
                };
                if arguments.is_empty() {
                    return Ok(());
                }
                let delta = ToolDelta {
                    tool_calls: [ToolCall {
                        index,
                        id: None,
                        kind: None,
                        function: Function {
                            name: None,
                            arguments,
                        },
                    }],
                };
                self.chunk(out, delta, None)
            }
            // Signatures only Anthropic can check; citations have no OpenAI field.
            "signature_delta" | "citations_delta" => Ok(()),
            _ => Err(Broken("the upstream sent a delta OpenAI has no place for")),
        }
    }

    fn text(&mut self, text: Option<&str>, out: &mut BytesMut) -> Result<(), Broken> {
        match text.filter(|t| !t.is_empty()) {
            Some(content) => self.chunk(out, ContentDelta { content }, None),
            None => Ok(()),
        }
    }

    fn reasoning(&mut self, text: Option<&str>, out: &mut BytesMut) -> Result<(), Broken> {
        match text.filter(|t| !t.is_empty()) {
            Some(reasoning) => self.chunk(out, ReasoningDelta { reasoning }, None),
            None => Ok(()),
        }
    }

    /// The finish chunk, the usage chunk (if asked for) and `[DONE]`.
    fn close(&mut self, out: &mut BytesMut) -> Result<(), Broken> {
        let stop = self
            .stop
            .ok_or(Broken("the upstream stream ended without a stop reason"))?;
        self.chunk(out, EmptyDelta {}, Some(stop))?;
        if self.include_usage {
            let usage = openai_usage(&self.usage.usage(), self.thinking_tokens);
            let chunk = Chunk {
                id: &self.id,
                object: "chat.completion.chunk",
                created: self.created,
                model: &self.model,
                choices: [(); 0],
                usage: Some(usage),
            };
            write_event(out, None, &chunk).map_err(|_| Broken("a chunk could not be encoded"))?;
        }
        out.put_slice(b"data: [DONE]\n\n");
        self.end = Some(StreamEnd::Complete { usage_known: true });
        Ok(())
    }

    fn chunk<D: Serialize>(
        &self,
        out: &mut BytesMut,
        delta: D,
        finish_reason: Option<&'static str>,
    ) -> Result<(), Broken> {
        if !self.started {
            return Err(Broken(
                "the upstream stream did not start with message_start",
            ));
        }
        let chunk = Chunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices: [Choice {
                index: 0,
                delta,
                logprobs: None,
                finish_reason,
            }],
            usage: None,
        };
        write_event(out, None, &chunk).map_err(|_| Broken("a chunk could not be encoded"))
    }
}
