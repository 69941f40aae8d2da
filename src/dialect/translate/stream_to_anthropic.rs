//! OpenAI chunks in, Anthropic events out, one chunk at a time.
//!
//! Block order: reasoning and text open a block each time the kind changes
//! (the previous block is stopped first). A tool call opens a `tool_use`
//! block and stays open until text follows or the choice finishes, so
//! argument fragments of several calls interleaved by `index` (which some
//! OpenAI-compatible servers send) still land in their own block; blocks
//! are stopped in index order. Usage comes in OpenAI's last chunk, so
//! `message_delta` (stop reason and usage) is written once that chunk, or
//! `[DONE]`, or the end of the body arrives after the finish reason.

use std::borrow::Cow;

use bytes::{BufMut, BytesMut};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::{local_event, stream_event};
use super::mapping::{
    anthropic_usage, openai_reasoning_tokens, stop_reason, usage_from_openai, AnthropicUsageOut,
};
use super::StreamEnd;
use crate::dialect::anthropic::replay::{
    write_block_delta, BlockStartOut, BlockStopOut, DeltaOut, TypeOnly,
};
use crate::dialect::emit::write_event;
use crate::dialect::{Dialect, Usage};

/// Translates one OpenAI-compatible stream for an Anthropic client.
#[derive(Debug, Default)]
pub struct ToAnthropicStream {
    started: bool,
    /// Index the next content block gets.
    next_index: usize,
    /// The open text or thinking block.
    open: Option<(Kind, usize)>,
    /// Tool calls by OpenAI index: their block and whether it is still open.
    tools: Vec<ToolSlot>,
    /// The stop reason, once the finish reason came.
    stop: Option<&'static str>,
    refused: bool,
    usage: Option<(Usage, Option<u64>)>,
    end: Option<StreamEnd>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Text,
    Thinking,
}

#[derive(Debug)]
struct ToolSlot {
    openai_index: usize,
    block: usize,
    open: bool,
}

// === Wire: what is read ===

#[derive(Deserialize)]
struct ChunkIn<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    choices: Option<Vec<ChoiceIn<'a>>>,
    #[serde(default)]
    usage: Option<Value>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct ChoiceIn<'a> {
    #[serde(borrow, default)]
    delta: Option<DeltaIn<'a>>,
    #[serde(borrow, default)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct DeltaIn<'a> {
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    refusal: Option<Cow<'a, str>>,
    /// OpenRouter's reasoning text (`reasoning_content` elsewhere).
    #[serde(borrow, default)]
    reasoning: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    reasoning_content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<ToolCallIn<'a>>>,
}

#[derive(Deserialize)]
struct ToolCallIn<'a> {
    #[serde(default)]
    index: Option<usize>,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    function: Option<FunctionIn<'a>>,
}

#[derive(Deserialize)]
struct FunctionIn<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    arguments: Option<Cow<'a, str>>,
}

// === Wire: what is written ===

#[derive(Serialize)]
struct MessageStart<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: StartMessage<'a>,
}

#[derive(Serialize)]
struct StartMessage<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'a str,
    content: [(); 0],
    stop_reason: Option<()>,
    stop_sequence: Option<()>,
    usage: AnthropicUsageOut,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StartBlock<'a> {
    Text {
        text: &'static str,
    },
    Thinking {
        thinking: &'static str,
        signature: &'static str,
    },
    ToolUse {
        id: &'a str,
        name: &'a str,
        input: Empty,
    },
}

#[derive(Serialize)]
struct Empty {}

#[derive(Serialize)]
struct MessageDelta {
    #[serde(rename = "type")]
    kind: &'static str,
    delta: StopDelta,
    usage: AnthropicUsageOut,
}

#[derive(Serialize)]
struct StopDelta {
    stop_reason: &'static str,
    stop_sequence: Option<()>,
}

/// Why a chunk could not be translated (the client gets an error event).
struct Broken(&'static str);

// === impl ToAnthropicStream ===

impl ToAnthropicStream {
    /// A translator at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one upstream event's data (OpenAI events have no names).
    pub fn on_event(&mut self, data: &str, out: &mut BytesMut) {
        if self.end.is_some() {
            return;
        }
        if let Err(Broken(why)) = self.event(data, out) {
            out.put_slice(&local_event(Dialect::Anthropic, why));
            self.end = Some(StreamEnd::Untranslatable);
        }
    }

    /// The upstream's body ended.
    pub fn finish(&mut self, out: &mut BytesMut) -> StreamEnd {
        if let Some(end) = self.end {
            return end;
        }
        if self.stop.is_some() {
            // Finished but the usage chunk and `[DONE]` never came.
            if self.close_message(out).is_ok() {
                return self.end.unwrap_or(StreamEnd::Truncated);
            }
        }
        out.put_slice(&local_event(
            Dialect::Anthropic,
            "the upstream stream ended before its last event",
        ));
        self.end = Some(StreamEnd::Truncated);
        StreamEnd::Truncated
    }

    fn event(&mut self, data: &str, out: &mut BytesMut) -> Result<(), Broken> {
        if data.starts_with("[DONE]") {
            if self.stop.is_some() {
                return self.close_message(out);
            }
            // Done before any finish reason: the answer is cut short.
            out.put_slice(&local_event(
                Dialect::Anthropic,
                "the upstream stream ended without a finish reason",
            ));
            self.end = Some(StreamEnd::Truncated);
            return Ok(());
        }
        let chunk: ChunkIn<'_> = serde_json::from_str(data)
            .map_err(|_| Broken("the upstream sent an unreadable chunk"))?;
        if let Some(error) = chunk.error.as_ref().filter(|e| !e.is_null()) {
            out.put_slice(&stream_event(Dialect::Anthropic, Some(error)));
            self.end = Some(StreamEnd::UpstreamError);
            return Ok(());
        }
        if !self.started {
            self.started = true;
            let start = MessageStart {
                kind: "message_start",
                message: StartMessage {
                    id: chunk.id.as_deref().unwrap_or_default(),
                    kind: "message",
                    role: "assistant",
                    model: chunk.model.as_deref().unwrap_or_default(),
                    content: [],
                    stop_reason: None,
                    stop_sequence: None,
                    // Known only at the end (module doc of `translate`).
                    usage: anthropic_usage(&Usage::default(), None),
                },
            };
            emit(out, "message_start", &start)?;
        }
        for choice in chunk.choices.into_iter().flatten() {
            if let Some(delta) = choice.delta {
                self.delta(delta, out)?;
            }
            if let Some(finish) = choice.finish_reason {
                self.finish_choice(&finish, out)?;
            }
        }
        if let Some(usage) = usage_from_openai(chunk.usage.as_ref()) {
            self.usage = Some((usage, openai_reasoning_tokens(chunk.usage.as_ref())));
            // The usage chunk follows the finish reason; a chunk may carry both.
            if self.stop.is_some() {
                return self.close_message(out);
            }
        }
        Ok(())
    }

    fn delta(&mut self, delta: DeltaIn<'_>, out: &mut BytesMut) -> Result<(), Broken> {
        let reasoning = delta.reasoning.or(delta.reasoning_content);
        if let Some(text) = reasoning.as_deref().filter(|t| !t.is_empty()) {
            let index = self.open_block(Kind::Thinking, out)?;
            emit_delta(out, index, DeltaOut::Thinking { thinking: text })?;
        }
        for text in [delta.content.as_deref(), delta.refusal.as_deref()]
            .into_iter()
            .flatten()
            .filter(|t| !t.is_empty())
        {
            let index = self.open_block(Kind::Text, out)?;
            emit_delta(out, index, DeltaOut::Text { text })?;
        }
        if delta.refusal.as_deref().is_some_and(|t| !t.is_empty()) {
            self.refused = true;
        }
        for call in delta.tool_calls.into_iter().flatten() {
            self.tool_call(call, out)?;
        }
        Ok(())
    }

    fn tool_call(&mut self, call: ToolCallIn<'_>, out: &mut BytesMut) -> Result<(), Broken> {
        let openai_index = call.index.unwrap_or(0);
        let function = call.function.unwrap_or(FunctionIn {
            name: None,
            arguments: None,
        });
        let slot = match self
            .tools
            .iter()
            .position(|t| t.openai_index == openai_index)
        {
            Some(slot) => slot,
            None => {
                let (Some(id), Some(name)) = (call.id.as_deref(), function.name.as_deref()) else {
                    return Err(Broken(
                        "a tool call fragment came before the call's id and name",
                    ));
                };
                self.close_open(out)?;
                let block = self.next_index;
                self.next_index += 1;
                emit(
                    out,
                    "content_block_start",
                    &BlockStartOut {
                        kind: "content_block_start",
                        index: block,
                        content_block: StartBlock::ToolUse {
                            id,
                            name,
                            input: Empty {},
                        },
                    },
                )?;
                self.tools.push(ToolSlot {
                    openai_index,
                    block,
                    open: true,
                });
                self.tools.len() - 1
            }
        };
        if let Some(arguments) = function.arguments.as_deref().filter(|a| !a.is_empty()) {
            let tool = &self.tools[slot];
            if !tool.open {
                return Err(Broken("a tool call's arguments continued after text"));
            }
            emit_delta(
                out,
                tool.block,
                DeltaOut::InputJson {
                    partial_json: arguments,
                },
            )?;
        }
        Ok(())
    }

    /// The open block of `kind`, opened now if another kind (or none) is open.
    fn open_block(&mut self, kind: Kind, out: &mut BytesMut) -> Result<usize, Broken> {
        if let Some((open, index)) = self.open {
            if open == kind {
                return Ok(index);
            }
        }
        self.close_open(out)?;
        self.close_tools(out)?;
        let index = self.next_index;
        self.next_index += 1;
        let content_block = match kind {
            Kind::Text => StartBlock::Text { text: "" },
            Kind::Thinking => StartBlock::Thinking {
                thinking: "",
                signature: "",
            },
        };
        emit(
            out,
            "content_block_start",
            &BlockStartOut {
                kind: "content_block_start",
                index,
                content_block,
            },
        )?;
        self.open = Some((kind, index));
        Ok(index)
    }

    fn close_open(&mut self, out: &mut BytesMut) -> Result<(), Broken> {
        if let Some((_, index)) = self.open.take() {
            emit_stop(out, index)?;
        }
        Ok(())
    }

    fn close_tools(&mut self, out: &mut BytesMut) -> Result<(), Broken> {
        for tool in self.tools.iter_mut().filter(|t| t.open) {
            tool.open = false;
            emit_stop(out, tool.block)?;
        }
        Ok(())
    }

    fn finish_choice(&mut self, finish: &str, out: &mut BytesMut) -> Result<(), Broken> {
        // Blocks are stopped in index order: a text block opened after the
        // tools closed them, so only one of the two can be open here.
        self.close_tools(out)?;
        self.close_open(out)?;
        let stop = if self.refused {
            "refusal"
        } else {
            stop_reason(finish, !self.tools.is_empty()).map_err(|_| {
                Broken("the upstream finished for a reason Anthropic has no word for")
            })?
        };
        self.stop = Some(stop);
        Ok(())
    }

    /// Writes `message_delta` and `message_stop`.
    fn close_message(&mut self, out: &mut BytesMut) -> Result<(), Broken> {
        let stop = self.stop.ok_or(Broken("no stop reason"))?;
        let (usage, thinking) = self.usage.unwrap_or_default();
        emit(
            out,
            "message_delta",
            &MessageDelta {
                kind: "message_delta",
                delta: StopDelta {
                    stop_reason: stop,
                    stop_sequence: None,
                },
                usage: anthropic_usage(&usage, thinking),
            },
        )?;
        emit(
            out,
            "message_stop",
            &TypeOnly {
                kind: "message_stop",
            },
        )?;
        self.end = Some(StreamEnd::Complete {
            usage_known: self.usage.is_some(),
        });
        Ok(())
    }
}

fn emit<T: Serialize>(out: &mut BytesMut, name: &str, event: &T) -> Result<(), Broken> {
    write_event(out, Some(name), event).map_err(|_| Broken("an event could not be encoded"))
}

fn emit_delta(out: &mut BytesMut, index: usize, delta: DeltaOut<'_>) -> Result<(), Broken> {
    write_block_delta(out, index, delta).map_err(|_| Broken("an event could not be encoded"))
}

fn emit_stop(out: &mut BytesMut, index: usize) -> Result<(), Broken> {
    emit(
        out,
        "content_block_stop",
        &BlockStopOut {
            kind: "content_block_stop",
            index,
        },
    )
}
