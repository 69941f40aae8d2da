//! Stream ⇄ message codec for the response cache.
//!
//! [`Assembler`] folds a provider's SSE stream into the complete message the provider's
//! non-streaming API would have returned (following the official Python SDKs' stream
//! accumulators), so one canonical message can be cached whatever the request's `stream`
//! flag was. [`replay`] goes the other way: it re-synthesises the SSE byte stream a
//! streaming client expects from such a message.
//!
//! Both dialects are handled with `serde_json::Value` for the open-ended parts (unknown
//! fields are kept, never dropped), while hot paths (text deltas, replayed text) avoid
//! copying large strings: appends are amortised O(1) and replay serialises borrowed data
//! straight into one buffer.

use std::borrow::Cow;
use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};

pub use crate::provider::Dialect;

/// Internal marker: the stream cannot be cached. Callers only need "no", not why.
struct Fail;

fn parse_json<'a, T: Deserialize<'a>>(data: &'a str) -> Result<T, Fail> {
    serde_json::from_str(data).map_err(|_| Fail)
}

fn parse_object(data: &str) -> Result<Map<String, Value>, Fail> {
    match parse_json(data)? {
        Value::Object(map) => Ok(map),
        _ => Err(Fail),
    }
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}

/// `io::Write` sink that only counts bytes.
struct ByteCounter(usize);

impl std::io::Write for ByteCounter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0 += bytes.len();
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Compact JSON size of `value`, without allocating it. Used for the running size check
/// on structural pieces (start blocks, citations…), which are small.
fn json_len<T: Serialize + ?Sized>(value: &T) -> usize {
    let mut counter = ByteCounter(0);
    // Serialising a JSON value into a counter cannot fail.
    match serde_json::to_writer(&mut counter, value) {
        Ok(()) | Err(_) => counter.0,
    }
}

// ---------------------------------------------------------------------------------------
// Assembler
// ---------------------------------------------------------------------------------------

/// Builds the complete message out of a stream's SSE events, fed one at a time
/// (event name — `""` for data-only OpenAI events — and the event's data string).
///
/// Assembly is all-or-nothing: anything it does not understand (an unknown Anthropic delta
/// type, malformed JSON, an error event or chunk, events out of order) makes it give up,
/// and [`Assembler::finish`] then returns `None`, so nothing half-understood gets cached.
pub struct Assembler {
    max_bytes: usize,
    /// Running estimate of the assembled size, for giving up early; `finish` checks exactly.
    size: usize,
    failed: bool,
    complete: bool,
    inner: Inner,
}

enum Inner {
    Anthropic(AnthropicAcc),
    OpenAi(OpenAiAcc),
}

impl Assembler {
    /// A new assembler for one stream.
    ///
    /// `max_bytes`: give up (finish() returns None) once the assembled content would exceed
    /// this. While streaming, a running lower bound of the message size (appended text plus
    /// the JSON size of structural pieces) makes it give up early and free its buffers;
    /// `finish` then checks the exact encoded size.
    #[must_use]
    pub fn new(dialect: Dialect, max_bytes: usize) -> Self {
        Self {
            max_bytes,
            size: 0,
            failed: false,
            complete: false,
            inner: Inner::empty(dialect),
        }
    }

    /// Feeds one SSE event. Events after the stream completed or after assembly failed are
    /// ignored, so the caller can keep feeding without checking.
    pub fn on_event(&mut self, name: &str, data: &str) {
        if self.failed || self.complete {
            return;
        }
        let step = match &mut self.inner {
            Inner::Anthropic(acc) => acc.on_event(name, data, &mut self.size),
            Inner::OpenAi(acc) => acc.on_event(data, &mut self.size),
        };
        match step {
            Ok(done) if self.size <= self.max_bytes => self.complete = done,
            _ => {
                self.failed = true;
                // Release what was buffered: a failed assembly may live on for the rest of
                // a long stream.
                self.inner = Inner::empty(self.inner.dialect());
            }
        }
    }

    /// Whether assembly is still possible (not failed/over size). Cheap.
    #[must_use]
    pub fn viable(&self) -> bool {
        !self.failed
    }

    /// The complete message as compact JSON bytes, or None when the stream was not
    /// complete (Anthropic: no `message_stop`; OpenAI: no `[DONE]`), carried an `error`
    /// event / error chunk, had malformed JSON, or exceeded max_bytes.
    #[must_use]
    pub fn finish(self) -> Option<Vec<u8>> {
        if self.failed || !self.complete {
            return None;
        }
        let message = match self.inner {
            Inner::Anthropic(acc) => acc.finish()?,
            Inner::OpenAi(acc) => acc.finish()?,
        };
        let bytes = serde_json::to_vec(&message).ok()?;
        (bytes.len() <= self.max_bytes).then_some(bytes)
    }
}

impl Inner {
    fn empty(dialect: Dialect) -> Self {
        match dialect {
            Dialect::Anthropic => Inner::Anthropic(AnthropicAcc::default()),
            Dialect::OpenAi => Inner::OpenAi(OpenAiAcc::default()),
        }
    }

    fn dialect(&self) -> Dialect {
        match self {
            Inner::Anthropic(_) => Dialect::Anthropic,
            Inner::OpenAi(_) => Dialect::OpenAi,
        }
    }
}

// ----- Anthropic ------------------------------------------------------------------------

/// Snapshot being built, as in the SDK's `accumulate_event`.
#[derive(Default)]
struct AnthropicAcc {
    /// The `message_start` message without its `content`.
    message: Option<Map<String, Value>>,
    blocks: Vec<Map<String, Value>>,
    /// Raw `input_json_delta` text per block, parsed into `input` at `content_block_stop`.
    json_bufs: Vec<Option<String>>,
}

#[derive(Deserialize)]
struct BlockStartIn {
    index: usize,
    content_block: Map<String, Value>,
}

#[derive(Deserialize)]
struct IndexIn {
    index: usize,
}

/// A `content_block_delta`, typed so that text borrows from the event where possible.
#[derive(Deserialize)]
struct BlockDeltaIn<'a> {
    index: usize,
    #[serde(borrow)]
    delta: DeltaIn<'a>,
}

#[derive(Deserialize)]
struct DeltaIn<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    text: Cow<'a, str>,
    #[serde(default, borrow)]
    partial_json: Cow<'a, str>,
    #[serde(default, borrow)]
    thinking: Cow<'a, str>,
    #[serde(default, borrow)]
    signature: Cow<'a, str>,
    #[serde(default)]
    citation: Option<Value>,
    // compaction_delta (beta): replaces the block's `content` / `encrypted_content`.
    #[serde(default)]
    content: Option<Value>,
    #[serde(default)]
    encrypted_content: Option<Value>,
}

fn append_str(block: &mut Map<String, Value>, key: &str, text: &str) -> Result<(), Fail> {
    match block.get_mut(key) {
        Some(Value::String(acc)) => {
            acc.push_str(text);
            Ok(())
        }
        // A delta for a field the block does not have: not something we understand.
        _ => Err(Fail),
    }
}

impl AnthropicAcc {
    /// Returns `Ok(true)` once the stream is complete.
    fn on_event(&mut self, name: &str, data: &str, size: &mut usize) -> Result<bool, Fail> {
        // Dispatch on the event name, as the SDK does; the JSON `type` is the same.
        match name {
            "message_start" => self.message_start(data, size)?,
            "content_block_start" => self.block_start(data, size)?,
            "content_block_delta" => self.block_delta(data, size)?,
            "content_block_stop" => {
                let ev: IndexIn = parse_json(data)?;
                self.close_block(ev.index)?;
            }
            "message_delta" => self.message_delta(data)?,
            "message_stop" => {
                if self.message.is_none() {
                    return Err(Fail);
                }
                // Blocks are always stopped in practice; be safe about pending input JSON.
                for index in 0..self.blocks.len() {
                    self.close_block(index)?;
                }
                return Ok(true);
            }
            "error" => return Err(Fail),
            // `ping`, event types added later (ignored by the SDK too), data-only lines.
            _ => {}
        }
        Ok(false)
    }

    fn message_start(&mut self, data: &str, size: &mut usize) -> Result<(), Fail> {
        if self.message.is_some() {
            return Err(Fail);
        }
        let mut event = parse_object(data)?;
        let Some(Value::Object(mut message)) = event.remove("message") else {
            return Err(Fail);
        };
        match message.remove("content") {
            None | Some(Value::Null) => {}
            Some(Value::Array(blocks)) => {
                for block in blocks {
                    let Value::Object(block) = block else {
                        return Err(Fail);
                    };
                    *size += json_len(&block);
                    self.blocks.push(block);
                    self.json_bufs.push(None);
                }
            }
            Some(_) => return Err(Fail),
        }
        *size += json_len(&message);
        self.message = Some(message);
        Ok(())
    }

    fn block_start(&mut self, data: &str, size: &mut usize) -> Result<(), Fail> {
        let message = self.message.as_mut().ok_or(Fail)?;
        let event: BlockStartIn = parse_json(data)?;
        // The SDK appends blindly; we insist on order so indexes stay meaningful.
        if event.index != self.blocks.len() {
            return Err(Fail);
        }
        let block = event.content_block;
        // Beta: a `fallback` block names the model that actually served the response; the
        // SDK relabels the snapshot so it matches the non-streaming message.
        if block.get("type").and_then(Value::as_str) == Some("fallback") {
            if let Some(model @ Value::String(_)) = block.get("to").and_then(|to| to.get("model")) {
                message.insert("model".to_owned(), model.clone());
            }
        }
        *size += json_len(&block);
        self.blocks.push(block);
        self.json_bufs.push(None);
        Ok(())
    }

    fn block_delta(&mut self, data: &str, size: &mut usize) -> Result<(), Fail> {
        let event: BlockDeltaIn<'_> = parse_json(data)?;
        let block = self.blocks.get_mut(event.index).ok_or(Fail)?;
        let delta = event.delta;
        match delta.kind.as_ref() {
            "text_delta" => {
                *size += delta.text.len();
                append_str(block, "text", &delta.text)?;
            }
            "thinking_delta" => {
                *size += delta.thinking.len();
                append_str(block, "thinking", &delta.thinking)?;
            }
            "input_json_delta" => {
                *size += delta.partial_json.len();
                let buf = self.json_bufs.get_mut(event.index).ok_or(Fail)?;
                buf.get_or_insert_with(String::new)
                    .push_str(&delta.partial_json);
            }
            "signature_delta" => {
                *size += delta.signature.len();
                block.insert(
                    "signature".to_owned(),
                    Value::String(delta.signature.into_owned()),
                );
            }
            "citations_delta" => {
                let citation = delta.citation.ok_or(Fail)?;
                *size += json_len(&citation);
                match block.get_mut("citations") {
                    Some(Value::Array(citations)) => citations.push(citation),
                    None | Some(Value::Null) => {
                        block.insert("citations".to_owned(), Value::Array(vec![citation]));
                    }
                    Some(_) => return Err(Fail),
                }
            }
            "compaction_delta" => {
                let content = delta.content.unwrap_or(Value::Null);
                let encrypted = delta.encrypted_content.unwrap_or(Value::Null);
                *size += json_len(&content) + json_len(&encrypted);
                block.insert("content".to_owned(), content);
                block.insert("encrypted_content".to_owned(), encrypted);
            }
            // Don't cache what we don't understand.
            _ => return Err(Fail),
        }
        Ok(())
    }

    /// Parses a block's buffered input JSON into `input` (the SDK keeps `{}` from the
    /// start block when nothing, or only `""`, was streamed).
    fn close_block(&mut self, index: usize) -> Result<(), Fail> {
        let block = self.blocks.get_mut(index).ok_or(Fail)?;
        if let Some(buf) = self.json_bufs.get_mut(index).and_then(Option::take) {
            let input = if buf.trim().is_empty() {
                empty_object()
            } else {
                parse_json(&buf)?
            };
            block.insert("input".to_owned(), input);
        }
        Ok(())
    }

    fn message_delta(&mut self, data: &str) -> Result<(), Fail> {
        let message = self.message.as_mut().ok_or(Fail)?;
        let mut event = parse_object(data)?;
        event.remove("type");
        let delta = match event.remove("delta") {
            Some(Value::Object(delta)) => delta,
            None | Some(Value::Null) => Map::new(),
            Some(_) => return Err(Fail),
        };
        // stop_reason / stop_sequence (and stop_details, SDK ≥ 2.x) are always taken from
        // the delta; other delta fields (e.g. `container`) only when non-null.
        let mut stop_reason = Value::Null;
        let mut stop_sequence = Value::Null;
        for (key, value) in delta {
            match key.as_str() {
                "stop_reason" => stop_reason = value,
                "stop_sequence" => stop_sequence = value,
                "stop_details" => {
                    message.insert(key, value);
                }
                _ if value.is_null() => {}
                _ => {
                    message.insert(key, value);
                }
            }
        }
        message.insert("stop_reason".to_owned(), stop_reason);
        message.insert("stop_sequence".to_owned(), stop_sequence);
        // Usage counts are cumulative: overwrite with every non-null field, never add.
        match event.remove("usage") {
            None | Some(Value::Null) => {}
            Some(Value::Object(usage)) => {
                let target = message.entry("usage").or_insert_with(empty_object);
                if !target.is_object() {
                    *target = empty_object();
                }
                if let Value::Object(target) = target {
                    for (key, value) in usage {
                        if !value.is_null() {
                            target.insert(key, value);
                        }
                    }
                }
            }
            Some(_) => return Err(Fail),
        }
        // Beta top-level extras (context_management, input_transformations): non-null wins.
        for (key, value) in event {
            if !value.is_null() {
                message.insert(key, value);
            }
        }
        Ok(())
    }

    fn finish(self) -> Option<Value> {
        let mut message = self.message?;
        let content = self.blocks.into_iter().map(Value::Object).collect();
        message.insert("content".to_owned(), Value::Array(content));
        Some(Value::Object(message))
    }
}

// ----- OpenAI / OpenRouter --------------------------------------------------------------

#[derive(Default)]
struct OpenAiAcc {
    /// Top-level fields of the chunks (id, created, model, system_fingerprint, provider…).
    top: Option<Map<String, Value>>,
    choices: BTreeMap<u64, ChoiceAcc>,
    usage: Option<Value>,
    /// Size counted for `usage`, replaced when a later chunk replaces it.
    usage_len: usize,
}

#[derive(Default)]
struct ChoiceAcc {
    role: Option<Value>,
    content: Option<String>,
    refusal: Option<String>,
    reasoning: Option<String>,
    tool_calls: BTreeMap<u64, Map<String, Value>>,
    /// Other delta fields (annotations, audio, reasoning_details…), merged like the SDK's
    /// `accumulate_delta`.
    other: Map<String, Value>,
    logprobs: Option<Map<String, Value>>,
    finish_reason: Value,
    /// Choice-level extras such as OpenRouter's `native_finish_reason`.
    extra: Map<String, Value>,
}

/// Top-level chunk keys that are not message fields.
const CHUNK_SKIP: [&str; 5] = ["choices", "usage", "object", "obfuscation", "error"];

impl OpenAiAcc {
    /// Returns `Ok(true)` once the stream is complete. Event names are ignored, as the SDK
    /// ignores them for chat completions.
    fn on_event(&mut self, data: &str, size: &mut usize) -> Result<bool, Fail> {
        let trimmed = data.trim();
        if trimmed.is_empty() {
            return Ok(false);
        }
        if trimmed.starts_with("[DONE]") {
            // A stream of nothing but [DONE] is no message.
            return if self.top.is_some() {
                Ok(true)
            } else {
                Err(Fail)
            };
        }
        let mut chunk = parse_object(data)?;
        // The SDK raises on any truthy `error` (OpenRouter mid-stream errors, etc.).
        if chunk.get("error").is_some_and(|error| !error.is_null()) {
            return Err(Fail);
        }
        // Like the SDK's stream helper, skip non-chunk objects (Azure content-filter events).
        if matches!(chunk.get("object"), Some(Value::String(object)) if object != "chat.completion.chunk")
        {
            return Ok(false);
        }
        let choices = chunk.remove("choices");
        let usage = chunk.remove("usage");
        for key in CHUNK_SKIP {
            chunk.remove(key);
        }
        match &mut self.top {
            None => {
                *size += json_len(&chunk);
                self.top = Some(chunk);
            }
            // Later chunks may fill in or update fields (system_fingerprint, provider…).
            Some(top) => {
                for (key, value) in chunk {
                    if !value.is_null() && top.get(&key) != Some(&value) {
                        top.insert(key, value);
                    }
                }
            }
        }
        // Usually the `choices: []` chunk before [DONE]; some upstreams put it elsewhere.
        if let Some(usage) = usage.filter(|usage| !usage.is_null()) {
            let len = json_len(&usage);
            *size = size.saturating_sub(self.usage_len) + len;
            self.usage_len = len;
            self.usage = Some(usage);
        }
        match choices {
            None | Some(Value::Null) => {}
            Some(Value::Array(choices)) => {
                for choice in choices {
                    self.on_choice(choice, size)?;
                }
            }
            Some(_) => return Err(Fail),
        }
        Ok(false)
    }

    fn on_choice(&mut self, choice: Value, size: &mut usize) -> Result<(), Fail> {
        let Value::Object(mut choice) = choice else {
            return Err(Fail);
        };
        let index = choice
            .remove("index")
            .and_then(|index| index.as_u64())
            .ok_or(Fail)?;
        let delta = choice.remove("delta");
        let logprobs = choice.remove("logprobs");
        let finish_reason = choice.remove("finish_reason");
        let state = self.choices.entry(index).or_default();
        for (key, value) in choice {
            if !value.is_null() || !state.extra.contains_key(&key) {
                state.extra.insert(key, value);
            }
        }
        match finish_reason {
            // OpenRouter reports mid-stream failures this way.
            Some(Value::String(reason)) if reason == "error" => return Err(Fail),
            Some(reason) if !reason.is_null() => state.finish_reason = reason,
            _ => {}
        }
        match logprobs {
            None | Some(Value::Null) => {}
            Some(Value::Object(logprobs)) => {
                *size += json_len(&logprobs);
                state.merge_logprobs(logprobs);
            }
            Some(_) => return Err(Fail),
        }
        match delta {
            None | Some(Value::Null) => {}
            Some(Value::Object(delta)) => {
                for (key, value) in delta {
                    state.apply_delta(key, value, size)?;
                }
            }
            Some(_) => return Err(Fail),
        }
        Ok(())
    }

    fn finish(self) -> Option<Value> {
        let mut message = self.top?;
        message.insert(
            "object".to_owned(),
            Value::String("chat.completion".to_owned()),
        );
        let choices = self
            .choices
            .into_iter()
            .map(|(index, choice)| choice.into_value(index))
            .collect();
        message.insert("choices".to_owned(), Value::Array(choices));
        if let Some(usage) = self.usage {
            message.insert("usage".to_owned(), usage);
        }
        Some(Value::Object(message))
    }
}

/// Appends a streamed string field (`null` is ignored, as the API sends it as filler).
fn append_opt(slot: &mut Option<String>, value: Value, size: &mut usize) -> Result<(), Fail> {
    match value {
        Value::Null => {}
        Value::String(text) => {
            *size += text.len();
            match slot {
                Some(acc) => acc.push_str(&text),
                None => *slot = Some(text),
            }
        }
        _ => return Err(Fail),
    }
    Ok(())
}

/// Sets `key` when the accumulator has no non-empty value for it yet (ids, types and
/// names come once; some upstreams repeat them, which must not duplicate them).
fn set_once(acc: &mut Map<String, Value>, key: String, value: Value) {
    if value.is_null() {
        return;
    }
    let unset = match acc.get(&key) {
        None | Some(Value::Null) => true,
        Some(Value::String(current)) => current.is_empty(),
        Some(_) => false,
    };
    if unset {
        acc.insert(key, value);
    }
}

impl ChoiceAcc {
    /// Applies one delta field.
    fn apply_delta(&mut self, key: String, value: Value, size: &mut usize) -> Result<(), Fail> {
        match key.as_str() {
            "role" => {
                if value.is_string() {
                    self.role = Some(value);
                }
            }
            "content" => append_opt(&mut self.content, value, size)?,
            "refusal" => append_opt(&mut self.refusal, value, size)?,
            // OpenRouter's reasoning text.
            "reasoning" => append_opt(&mut self.reasoning, value, size)?,
            "tool_calls" => match value {
                Value::Null => {}
                Value::Array(entries) => {
                    for entry in entries {
                        merge_tool_call(&mut self.tool_calls, entry, size)?;
                    }
                }
                _ => return Err(Fail),
            },
            _ if value.is_null() => {}
            _ => {
                *size += json_len(&value);
                accumulate_key(&mut self.other, key, value)?;
            }
        }
        Ok(())
    }

    /// SDK semantics: the first non-null logprobs is taken whole, later `content` /
    /// `refusal` token lists are appended.
    fn merge_logprobs(&mut self, mut logprobs: Map<String, Value>) {
        let Some(acc) = &mut self.logprobs else {
            self.logprobs = Some(logprobs);
            return;
        };
        for key in ["content", "refusal"] {
            if let Some(Value::Array(items)) = logprobs.remove(key) {
                if items.is_empty() {
                    continue;
                }
                match acc.get_mut(key) {
                    Some(Value::Array(existing)) => existing.extend(items),
                    _ => {
                        acc.insert(key.to_owned(), Value::Array(items));
                    }
                }
            }
        }
    }

    fn into_value(self, index: u64) -> Value {
        let tool_calls: Vec<Value> = self
            .tool_calls
            .into_values()
            .map(|mut call| {
                // The non-streaming shape always has these.
                if !call.contains_key("type") {
                    call.insert("type".to_owned(), Value::String("function".to_owned()));
                }
                if let Some(Value::Object(function)) = call.get_mut("function") {
                    if !function.contains_key("arguments") {
                        function.insert("arguments".to_owned(), Value::String(String::new()));
                    }
                }
                Value::Object(call)
            })
            .collect();
        // Like the non-streaming API: no text next to tool calls is `null`, not "".
        let content = match self.content {
            Some(text) if !text.is_empty() || tool_calls.is_empty() => Value::String(text),
            _ => Value::Null,
        };
        let mut message = Map::new();
        message.insert(
            "role".to_owned(),
            self.role
                .unwrap_or_else(|| Value::String("assistant".to_owned())),
        );
        message.insert("content".to_owned(), content);
        message.insert(
            "refusal".to_owned(),
            self.refusal.map_or(Value::Null, Value::String),
        );
        if !tool_calls.is_empty() {
            message.insert("tool_calls".to_owned(), Value::Array(tool_calls));
        }
        if let Some(reasoning) = self.reasoning.filter(|text| !text.is_empty()) {
            message.insert("reasoning".to_owned(), Value::String(reasoning));
        }
        for (key, value) in self.other {
            message.entry(key).or_insert(value);
        }
        let mut choice = Map::new();
        choice.insert("index".to_owned(), Value::from(index));
        choice.insert("message".to_owned(), Value::Object(message));
        choice.insert(
            "logprobs".to_owned(),
            self.logprobs.map_or(Value::Null, Value::Object),
        );
        choice.insert("finish_reason".to_owned(), self.finish_reason);
        for (key, value) in self.extra {
            choice.entry(key).or_insert(value);
        }
        Value::Object(choice)
    }
}

/// Merges one `tool_calls` delta entry by its `index`: the first fragment brings `id`,
/// `type` and `function.name`, later ones append to `function.arguments`.
fn merge_tool_call(
    calls: &mut BTreeMap<u64, Map<String, Value>>,
    entry: Value,
    size: &mut usize,
) -> Result<(), Fail> {
    let Value::Object(entry) = entry else {
        return Err(Fail);
    };
    let index = entry.get("index").and_then(Value::as_u64).ok_or(Fail)?;
    let acc = calls.entry(index).or_default();
    for (key, value) in entry {
        match key.as_str() {
            "index" => {}
            "id" | "type" => {
                *size += json_len(&value);
                set_once(acc, key, value);
            }
            "function" => {
                let fields = match value {
                    Value::Null => continue,
                    Value::Object(fields) => fields,
                    _ => return Err(Fail),
                };
                let function = acc.entry("function").or_insert_with(empty_object);
                if !function.is_object() {
                    *function = empty_object();
                }
                let Value::Object(function) = function else {
                    return Err(Fail);
                };
                for (field, value) in fields {
                    match (field.as_str(), value) {
                        (_, Value::Null) => {}
                        ("arguments", Value::String(text)) => {
                            *size += text.len();
                            match function.get_mut("arguments") {
                                Some(Value::String(args)) => args.push_str(&text),
                                _ => {
                                    function.insert(field, Value::String(text));
                                }
                            }
                        }
                        ("arguments", _) => return Err(Fail),
                        ("name", value) => {
                            *size += json_len(&value);
                            set_once(function, field, value);
                        }
                        (_, value) => {
                            *size += json_len(&value);
                            accumulate_key(function, field, value)?;
                        }
                    }
                }
            }
            _ if value.is_null() => {}
            _ => {
                *size += json_len(&value);
                accumulate_key(acc, key, value)?;
            }
        }
    }
    Ok(())
}

/// Whether `value` is a list with an object carrying `index` (an indexed delta list).
fn has_indexed_entries(value: &Value) -> bool {
    matches!(value, Value::Array(items) if items.iter().any(|item| item.get("index").is_some()))
}

/// The OpenAI SDK's `accumulate_delta` for one key: strings concatenate, numbers add,
/// objects merge recursively, indexed lists merge by `index`, plain lists extend;
/// `index` and `type` are replaced.
fn accumulate_key(acc: &mut Map<String, Value>, key: String, delta: Value) -> Result<(), Fail> {
    match acc.get_mut(&key) {
        Some(slot) if !slot.is_null() => merge_value(slot, &key, delta),
        _ => {
            if has_indexed_entries(&delta) {
                let mut list = Value::Array(Vec::new());
                merge_value(&mut list, &key, delta)?;
                acc.insert(key, list);
            } else {
                acc.insert(key, delta);
            }
            Ok(())
        }
    }
}

fn merge_value(slot: &mut Value, key: &str, delta: Value) -> Result<(), Fail> {
    if key == "index" || key == "type" {
        *slot = delta;
        return Ok(());
    }
    match (slot, delta) {
        (Value::String(acc), Value::String(text)) => acc.push_str(&text),
        (Value::Number(acc), Value::Number(add)) => *acc = add_numbers(acc, &add),
        (Value::Object(acc), Value::Object(fields)) => {
            for (field, value) in fields {
                accumulate_key(acc, field, value)?;
            }
        }
        (Value::Array(acc), Value::Array(items)) => {
            let scalars = acc.iter().all(|item| item.is_string() || item.is_number());
            if scalars && (!acc.is_empty() || !items.iter().any(|item| item.get("index").is_some()))
            {
                acc.extend(items);
                return Ok(());
            }
            for item in items {
                let Value::Object(item) = item else {
                    return Err(Fail);
                };
                let index = item
                    .get("index")
                    .and_then(Value::as_u64)
                    .and_then(|index| usize::try_from(index).ok())
                    .ok_or(Fail)?;
                match acc.get_mut(index) {
                    Some(Value::Object(existing)) => {
                        for (field, value) in item {
                            accumulate_key(existing, field, value)?;
                        }
                    }
                    Some(_) => return Err(Fail),
                    None => acc.push(Value::Object(item)),
                }
            }
        }
        // Mismatched types: the SDK keeps what it has.
        _ => {}
    }
    Ok(())
}

fn add_numbers(a: &Number, b: &Number) -> Number {
    if let (Some(x), Some(y)) = (a.as_u64(), b.as_u64()) {
        if let Some(sum) = x.checked_add(y) {
            return sum.into();
        }
    }
    if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64()) {
        if let Some(sum) = x.checked_add(y) {
            return sum.into();
        }
    }
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => Number::from_f64(x + y).unwrap_or_else(|| a.clone()),
        _ => a.clone(),
    }
}

// ---------------------------------------------------------------------------------------
// Replay
// ---------------------------------------------------------------------------------------

/// Why a stored message could not be replayed as a stream.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The stored bytes are not JSON.
    #[error("cached message is not valid JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    /// The stored JSON is not an object.
    #[error("cached message is not a JSON object")]
    NotObject,
    /// A field the stream needs is absent (or null).
    #[error("cached message has no `{0}` field")]
    MissingField(&'static str),
    /// A field has the wrong JSON type.
    #[error("cached message field `{field}` is not {expected}")]
    InvalidField {
        /// Path of the offending field, e.g. `content[].text`.
        field: &'static str,
        /// What was expected, e.g. `a string`.
        expected: &'static str,
    },
    /// Serialising an event failed (not expected with in-memory JSON values).
    #[error("could not encode a replayed event: {0}")]
    Encode(#[source] serde_json::Error),
}

/// Re-synthesises the SSE byte stream the provider would have sent for `message`
/// (a complete Anthropic `Message` JSON or OpenAI `chat.completion` JSON, exactly as
/// stored by `finish()` or as returned by the provider's non-streaming API).
/// `include_usage`: OpenAI only — emit the usage-only chunk (and `"usage":null` on other
/// chunks), as the API does when the client sent `stream_options.include_usage=true`.
///
/// Feeding the result back through an [`Assembler`] yields `message` again.
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
        Dialect::Anthropic => replay_anthropic(&message_map, &mut buf)?,
        Dialect::OpenAi => replay_openai(&message_map, include_usage, &mut buf)?,
    }
    Ok(buf.freeze())
}

static NULL: Value = Value::Null;

/// Writes one SSE event (`event: NAME\n` when named, `data: JSON\n\n`); every event,
/// including the last, ends with a blank line, or SDKs drop it.
fn write_event<T: Serialize + ?Sized>(
    buf: &mut BytesMut,
    name: Option<&str>,
    data: &T,
) -> Result<(), ReplayError> {
    if let Some(name) = name {
        buf.put_slice(b"event: ");
        buf.put_slice(name.as_bytes());
        buf.put_u8(b'\n');
    }
    buf.put_slice(b"data: ");
    // Compact JSON never contains a raw line break, so one `data:` line suffices.
    serde_json::to_writer((&mut *buf).writer(), data).map_err(ReplayError::Encode)?;
    buf.put_slice(b"\n\n");
    Ok(())
}

/// Serialises `base` with some top-level entries replaced (or added) without cloning it.
struct Patched<'a> {
    base: &'a Map<String, Value>,
    overrides: &'a [(&'a str, Value)],
}

impl Serialize for Patched<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        for (key, value) in self.base {
            match self
                .overrides
                .iter()
                .find(|(name, _)| *name == key.as_str())
            {
                Some((_, replacement)) => map.serialize_entry(key, replacement)?,
                None => map.serialize_entry(key, value)?,
            }
        }
        for (name, value) in self.overrides {
            if !self.base.contains_key(*name) {
                map.serialize_entry(name, value)?;
            }
        }
        map.end()
    }
}

/// `{key: value}` without building a map.
struct OneField<'a> {
    key: &'a str,
    value: &'a Value,
}

impl Serialize for OneField<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(1))?;
        map.serialize_entry(self.key, self.value)?;
        map.end()
    }
}

// ----- Anthropic ------------------------------------------------------------------------

#[derive(Serialize)]
struct TypeOnly {
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize)]
struct MessageStartOut<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: Patched<'a>,
}

#[derive(Serialize)]
struct BlockStartOut<B> {
    #[serde(rename = "type")]
    kind: &'static str,
    index: usize,
    content_block: B,
}

#[derive(Serialize)]
struct BlockDeltaOut<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    index: usize,
    delta: DeltaOut<'a>,
}

#[derive(Serialize)]
#[serde(tag = "type")]
enum DeltaOut<'a> {
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
struct BlockStopOut {
    #[serde(rename = "type")]
    kind: &'static str,
    index: usize,
}

#[derive(Serialize)]
struct MessageDeltaOut<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    delta: Map<String, Value>,
    usage: &'a Map<String, Value>,
}

fn write_block_delta(
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

/// A required field of one JSON type: `pick` takes it out of its `Value`;
/// `field` names it in errors, `expected` says what it should have been.
fn required<'a, T>(
    map: &'a Map<String, Value>,
    key: &str,
    field: &'static str,
    expected: &'static str,
    pick: impl FnOnce(&'a Value) -> Option<T>,
) -> Result<T, ReplayError> {
    match map.get(key) {
        None | Some(Value::Null) => Err(ReplayError::MissingField(field)),
        Some(v) => pick(v).ok_or(ReplayError::InvalidField { field, expected }),
    }
}

fn str_field<'a>(
    map: &'a Map<String, Value>,
    key: &str,
    field: &'static str,
) -> Result<&'a str, ReplayError> {
    required(map, key, field, "a string", Value::as_str)
}

fn required_array<'a>(
    map: &'a Map<String, Value>,
    key: &str,
    field: &'static str,
) -> Result<&'a Vec<Value>, ReplayError> {
    required(map, key, field, "an array", Value::as_array)
}

fn required_object<'a>(
    map: &'a Map<String, Value>,
    key: &str,
    field: &'static str,
) -> Result<&'a Map<String, Value>, ReplayError> {
    required(map, key, field, "an object", Value::as_object)
}

fn replay_anthropic(message: &Map<String, Value>, buf: &mut BytesMut) -> Result<(), ReplayError> {
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

fn replay_openai(
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

/// Whether a complete message stopped at its output bound (Anthropic
/// `stop_reason: "max_tokens"`, OpenAI `finish_reason: "length"` in any
/// choice). Unreadable → true (the caller then does not cache it).
pub fn stopped_at_limit(dialect: Dialect, message: &[u8]) -> bool {
    let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(message) else {
        return true;
    };
    match dialect {
        Dialect::Anthropic => m.get("stop_reason").and_then(Value::as_str) == Some("max_tokens"),
        Dialect::OpenAi => m
            .get("choices")
            .and_then(Value::as_array)
            .is_none_or(|choices| {
                choices
                    .iter()
                    .any(|c| c.get("finish_reason").and_then(Value::as_str) == Some("length"))
            }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {

    #[test]
    fn stopped_at_limit_reads_both_dialects() {
        assert!(stopped_at_limit(
            Dialect::Anthropic,
            br#"{"stop_reason":"max_tokens","content":[]}"#
        ));
        assert!(!stopped_at_limit(
            Dialect::Anthropic,
            br#"{"stop_reason":"end_turn","content":[]}"#
        ));
        assert!(stopped_at_limit(
            Dialect::OpenAi,
            br#"{"choices":[{"finish_reason":"stop"},{"finish_reason":"length"}]}"#
        ));
        assert!(!stopped_at_limit(
            Dialect::OpenAi,
            br#"{"choices":[{"finish_reason":"tool_calls"}]}"#
        ));
        assert!(stopped_at_limit(Dialect::OpenAi, b"not json"));
    }

    use super::*;
    use serde_json::json;

    /// Minimal SSE splitter, as the SDKs parse: `event:` / `data:` fields, one optional
    /// space after the colon, `:` comments, dispatch at a blank line.
    fn parse_sse(text: &str) -> Vec<(String, String)> {
        let mut events = Vec::new();
        let mut name = String::new();
        let mut data: Vec<&str> = Vec::new();
        for line in text.split('\n') {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.is_empty() {
                if !data.is_empty() || !name.is_empty() {
                    events.push((std::mem::take(&mut name), data.join("\n")));
                    data.clear();
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
                None => (line, ""),
            };
            match field {
                "event" => name = value.to_owned(),
                "data" => data.push(value),
                _ => {}
            }
        }
        assert!(
            data.is_empty() && name.is_empty(),
            "last event not terminated by a blank line"
        );
        events
    }

    fn feed(dialect: Dialect, max_bytes: usize, sse: &str) -> Assembler {
        let mut assembler = Assembler::new(dialect, max_bytes);
        for (name, data) in parse_sse(sse) {
            assembler.on_event(&name, &data);
        }
        assembler
    }

    fn assemble(dialect: Dialect, sse: &str) -> Option<Value> {
        feed(dialect, 1 << 20, sse)
            .finish()
            .map(|bytes| serde_json::from_slice(&bytes).unwrap())
    }

    fn replay_str(dialect: Dialect, message: &Value, include_usage: bool) -> String {
        let bytes = replay(dialect, message.to_string().as_bytes(), include_usage).unwrap();
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        assert!(text.ends_with("\n\n"), "stream must end with a blank line");
        text
    }

    fn round_trip(dialect: Dialect, message: &Value, include_usage: bool) -> Value {
        let sse = replay_str(dialect, message, include_usage);
        assemble(dialect, &sse).expect("replayed stream assembles")
    }

    fn assert_anthropic_round_trip(message: Value) {
        assert_eq!(round_trip(Dialect::Anthropic, &message, false), message);
        // include_usage means nothing to Anthropic.
        assert_eq!(round_trip(Dialect::Anthropic, &message, true), message);
    }

    fn anthropic_message(content: Value, stop_reason: &str) -> Value {
        json!({
            "id": "msg_019Q1hrJbZG26Fb9BQhrkHEr",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5-20250929",
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": null,
            "stop_details": null,
            "container": null,
            "usage": {
                "input_tokens": 28,
                "cache_creation_input_tokens": 10,
                "cache_read_input_tokens": 5,
                "cache_creation": {"ephemeral_5m_input_tokens": 10, "ephemeral_1h_input_tokens": 0},
                "output_tokens": 106,
                "output_tokens_details": {"thinking_tokens": 67},
                "server_tool_use": {"web_search_requests": 0, "web_fetch_requests": 0},
                "service_tier": "standard",
                "inference_geo": "global"
            }
        })
    }

    // ----- Anthropic round trips --------------------------------------------------------

    #[test]
    fn anthropic_text_round_trip() {
        assert_anthropic_round_trip(anthropic_message(
            json!([{"type": "text", "text": "Hi!\nLine two with \"quotes\" and ünïcødé 🎉"}]),
            "end_turn",
        ));
        // The non-streaming API's `"citations": null` survives too.
        assert_anthropic_round_trip(anthropic_message(
            json!([{"type": "text", "text": "Hi!", "citations": null}]),
            "end_turn",
        ));
    }

    #[test]
    fn anthropic_text_and_tool_use_round_trip() {
        assert_anthropic_round_trip(anthropic_message(
            json!([
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "toolu_01NRLabsLyVHZPKxbKvkfSMn", "name": "get_weather",
                 "caller": {"type": "direct"},
                 "input": {"location": {"city": "Paris", "coords": [48.85, 2.35]}, "units": null,
                           "days": 3, "flags": [true, false], "note": "a\nb"}},
                {"type": "tool_use", "id": "toolu_02", "name": "no_args", "input": {}}
            ]),
            "tool_use",
        ));
    }

    #[test]
    fn anthropic_thinking_then_text_round_trip() {
        assert_anthropic_round_trip(anthropic_message(
            json!([
                {"type": "thinking", "thinking": "Simple question.\nAnswer: 4.", "signature": "EqQBCkYIBxgCKkDj=="},
                {"type": "text", "text": "4"}
            ]),
            "end_turn",
        ));
    }

    #[test]
    fn anthropic_redacted_thinking_round_trip() {
        assert_anthropic_round_trip(anthropic_message(
            json!([
                {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpP"},
                {"type": "thinking", "thinking": "More.", "signature": "sig"},
                {"type": "text", "text": "Done."}
            ]),
            "end_turn",
        ));
    }

    #[test]
    fn anthropic_citations_round_trip() {
        assert_anthropic_round_trip(anthropic_message(
            json!([
                {"type": "text", "text": "According to the document, "},
                {"type": "text", "text": "the grass is green",
                 "citations": [
                    {"type": "char_location", "cited_text": "The grass is green.", "document_index": 0,
                     "document_title": "Example", "start_char_index": 0, "end_char_index": 20},
                    {"type": "web_search_result_location", "url": "https://example.com", "title": "Ex",
                     "encrypted_index": "Eo8BCioIAhgBIiQ", "cited_text": "green grass"}
                 ]}
            ]),
            "end_turn",
        ));
    }

    #[test]
    fn anthropic_server_tools_and_unknown_blocks_round_trip() {
        let mut message = anthropic_message(
            json!([
                {"type": "server_tool_use", "id": "srvtoolu_01", "name": "web_search",
                 "input": {"query": "weather paris"}},
                {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_01",
                 "content": [{"type": "web_search_result", "url": "https://example.com",
                              "title": "Weather", "encrypted_content": "abc", "page_age": null}]},
                {"type": "some_future_block", "payload": {"x": [1, 2, 3]}},
                {"type": "text", "text": "Sunny."}
            ]),
            "end_turn",
        );
        message["container"] = json!({"id": "container_1", "expires_at": "2026-08-01T00:00:00Z"});
        message["stop_details"] = json!({"type": "refusal", "category": "cyber"});
        message["extra_top_level"] = json!({"kept": true});
        assert_anthropic_round_trip(message);
    }

    #[test]
    fn anthropic_replay_shape() {
        let message = anthropic_message(
            json!([
                {"type": "text", "text": "Hello"},
                {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}},
                {"type": "thinking", "thinking": "t", "signature": "s"}
            ]),
            "tool_use",
        );
        let events = parse_sse(&replay_str(Dialect::Anthropic, &message, false));
        let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "ping",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_stop", // empty input: no input_json_delta
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
            ]
        );
        for (name, data) in &events {
            let data: Value = serde_json::from_str(data).unwrap();
            assert_eq!(data["type"], json!(name), "event name equals JSON type");
        }
        let start: Value = serde_json::from_str(&events[0].1).unwrap();
        let start = &start["message"];
        assert_eq!(start["content"], json!([]));
        assert_eq!(start["stop_reason"], Value::Null);
        assert_eq!(start["stop_sequence"], Value::Null);
        assert_eq!(start["usage"]["output_tokens"], json!(1));
        assert_eq!(start["usage"]["input_tokens"], json!(28));
        assert_eq!(start["id"], message["id"]);
        assert_eq!(start["model"], message["model"]);
        let text_start: Value = serde_json::from_str(&events[1].1).unwrap();
        assert_eq!(
            text_start,
            json!({"type": "content_block_start", "index": 0,
                   "content_block": {"type": "text", "text": ""}})
        );
        let thinking_start: Value = serde_json::from_str(&events[7].1).unwrap();
        assert_eq!(
            thinking_start["content_block"],
            json!({"type": "thinking", "thinking": "", "signature": ""})
        );
        let signature: Value = serde_json::from_str(&events[9].1).unwrap();
        assert_eq!(
            signature["delta"],
            json!({"type": "signature_delta", "signature": "s"})
        );
        let delta: Value = serde_json::from_str(&events[11].1).unwrap();
        assert_eq!(
            delta["delta"],
            json!({"stop_reason": "tool_use", "stop_sequence": null, "stop_details": null})
        );
        assert_eq!(delta["usage"], message["usage"]);
        assert_eq!(events[12].1, r#"{"type":"message_stop"}"#);
    }

    #[test]
    fn anthropic_zero_output_tokens_stays_zero_at_start() {
        let mut message = anthropic_message(json!([]), "end_turn");
        message["usage"]["output_tokens"] = json!(0);
        let events = parse_sse(&replay_str(Dialect::Anthropic, &message, false));
        let start: Value = serde_json::from_str(&events[0].1).unwrap();
        assert_eq!(start["message"]["usage"]["output_tokens"], json!(0));
        assert_eq!(events[1].0, "ping");
        assert_anthropic_round_trip(message);
    }

    // ----- Anthropic real streams -------------------------------------------------------

    /// providers.md §2.2, the SDK's basic_response fixture.
    const ANTHROPIC_BASIC: &str = r#"event: message_start
data: {"type":"message_start","message":{"id":"msg_4QpJur2dWWDjF6C758FbBw5vm12BaVipnK","type":"message","role":"assistant","content":[],"model":"claude-sonnet-4-5-20250929","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":11,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":1,"service_tier":"standard"}}}

event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}

event: ping
data: {"type": "ping"}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" there!"}}

event: content_block_stop
data: {"type":"content_block_stop","index":0}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":6}}

event: message_stop
data: {"type":"message_stop"}

"#;

    #[test]
    fn anthropic_assembles_real_basic_stream() {
        let message = assemble(Dialect::Anthropic, ANTHROPIC_BASIC).unwrap();
        assert_eq!(
            message,
            json!({
                "id": "msg_4QpJur2dWWDjF6C758FbBw5vm12BaVipnK",
                "type": "message",
                "role": "assistant",
                "content": [{"type": "text", "text": "Hello there!"}],
                "model": "claude-sonnet-4-5-20250929",
                "stop_reason": "end_turn",
                "stop_sequence": null,
                "usage": {"input_tokens": 11, "cache_creation_input_tokens": 0,
                          "cache_read_input_tokens": 0, "output_tokens": 6,
                          "service_tier": "standard"}
            })
        );
        // And it replays to a stream that assembles to the same message.
        assert_anthropic_round_trip(message);
    }

    /// providers.md §2.2 block variants (tool_use + thinking fixtures), with whitespace
    /// padding as in the SDK fixtures, a cumulative message_delta usage, OpenRouter's
    /// keep-alive comment and trailing data-only `[DONE]`.
    const ANTHROPIC_THINKING_TOOL: &str = r#"event: message_start
data: {"type": "message_start", "message": {"id": "msg_01", "type": "message", "role": "assistant", "content": [], "model": "claude-sonnet-4-5-20250929", "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 377, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0}, "output_tokens": 5, "service_tier": "standard"}}   }

event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":"","signature":""}}

: OPENROUTER PROCESSING

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"Simple question."}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"c3ludGhldGlj..."}}

event: content_block_stop
data: {"type":"content_block_stop","index":0}

event: content_block_start
data: {"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_01NRLabsLyVHZPKxbKvkfSMn","name":"get_weather","caller":{"type":"direct"},"input":{}}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"location\": "}}

event: ping
data: {"type": "ping"}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"\"Paris\"}"}}

event: content_block_stop
data: {"type":"content_block_stop","index":1}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"input_tokens":377,"cache_creation_input_tokens":null,"cache_read_input_tokens":0,"output_tokens":65,"output_tokens_details":{"thinking_tokens":12}}}

event: message_stop
data: {"type":"message_stop"}

data: [DONE]

"#;

    #[test]
    fn anthropic_assembles_real_thinking_tool_stream() {
        let message = assemble(Dialect::Anthropic, ANTHROPIC_THINKING_TOOL).unwrap();
        assert_eq!(
            message,
            json!({
                "id": "msg_01", "type": "message", "role": "assistant",
                "model": "claude-sonnet-4-5-20250929",
                "content": [
                    {"type": "thinking", "thinking": "Simple question.", "signature": "c3ludGhldGlj..."},
                    {"type": "tool_use", "id": "toolu_01NRLabsLyVHZPKxbKvkfSMn", "name": "get_weather",
                     "caller": {"type": "direct"}, "input": {"location": "Paris"}}
                ],
                "stop_reason": "tool_use", "stop_sequence": null,
                "usage": {
                    "input_tokens": 377, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                    "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
                    "output_tokens": 65, "output_tokens_details": {"thinking_tokens": 12},
                    "service_tier": "standard"
                }
            })
        );
        assert_anthropic_round_trip(message);
    }

    #[test]
    fn anthropic_message_delta_overwrites_cumulative_usage() {
        let sse = ANTHROPIC_BASIC.replace(
            r#""usage":{"output_tokens":6}"#,
            r#""usage":{"output_tokens":6,"input_tokens":12,"cache_read_input_tokens":3,"server_tool_use":{"web_search_requests":1},"service_tier":null}"#,
        );
        let message = assemble(Dialect::Anthropic, &sse).unwrap();
        assert_eq!(
            message["usage"],
            json!({"input_tokens": 12, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 3,
                   "output_tokens": 6, "service_tier": "standard",
                   "server_tool_use": {"web_search_requests": 1}})
        );
    }

    // ----- Anthropic failures -----------------------------------------------------------

    fn without_event(sse: &str, name: &str) -> String {
        sse.split("\n\n")
            .filter(|event| !event.starts_with(&format!("event: {name}\n")))
            .collect::<Vec<_>>()
            .join("\n\n")
    }

    #[test]
    fn anthropic_incomplete_stream_is_none() {
        let sse = without_event(ANTHROPIC_BASIC, "message_stop");
        let assembler = feed(Dialect::Anthropic, 1 << 20, &sse);
        assert!(assembler.viable());
        assert!(assembler.finish().is_none());
        assert!(assemble(Dialect::Anthropic, "").is_none());
    }

    #[test]
    fn anthropic_error_event_is_none() {
        let sse = ANTHROPIC_BASIC.replace(
            "event: content_block_stop\n",
            "event: error\ndata: {\"type\": \"error\", \"error\": {\"type\": \"overloaded_error\", \"message\": \"Overloaded\"}}\n\nevent: content_block_stop\n",
        );
        let assembler = feed(Dialect::Anthropic, 1 << 20, &sse);
        assert!(!assembler.viable());
        assert!(assembler.finish().is_none());
    }

    #[test]
    fn anthropic_over_max_bytes_is_none() {
        let assembler = feed(Dialect::Anthropic, 300, ANTHROPIC_BASIC);
        assert!(!assembler.viable());
        assert!(assembler.finish().is_none());
        // The same stream fits in a larger budget, and exactly at its own size.
        let size = assemble(Dialect::Anthropic, ANTHROPIC_BASIC)
            .unwrap()
            .to_string()
            .len();
        assert!(feed(Dialect::Anthropic, size, ANTHROPIC_BASIC)
            .finish()
            .is_some());
        assert!(feed(Dialect::Anthropic, size - 1, ANTHROPIC_BASIC)
            .finish()
            .is_none());
    }

    #[test]
    fn anthropic_malformed_json_is_none() {
        let sse = ANTHROPIC_BASIC.replace(r#""text":" there!"}}"#, r#""text":" there!"}"#);
        assert!(assemble(Dialect::Anthropic, &sse).is_none());
        // Malformed tool input JSON fails at content_block_stop.
        let sse = ANTHROPIC_THINKING_TOOL.replace(r#""\"Paris\"}""#, r#""\"Paris\"""#);
        assert!(assemble(Dialect::Anthropic, &sse).is_none());
    }

    #[test]
    fn anthropic_unknown_delta_or_bad_order_is_none() {
        let sse = ANTHROPIC_BASIC.replace(
            r#"{"type":"text_delta","text":"Hello"}"#,
            r#"{"type":"mystery_delta","text":"Hello"}"#,
        );
        assert!(assemble(Dialect::Anthropic, &sse).is_none());
        // A text delta aimed at a block that has no text.
        let sse = ANTHROPIC_BASIC.replace(r#""index":0,"delta""#, r#""index":1,"delta""#);
        assert!(assemble(Dialect::Anthropic, &sse).is_none());
        // Events before message_start.
        let sse = without_event(ANTHROPIC_BASIC, "message_start");
        assert!(assemble(Dialect::Anthropic, &sse).is_none());
    }

    #[test]
    fn anthropic_unknown_events_are_ignored() {
        let sse = ANTHROPIC_BASIC.replace(
            "event: message_stop\n",
            "event: brand_new_event\ndata: {\"type\":\"brand_new_event\"}\n\nevent: message_stop\n",
        );
        assert!(assemble(Dialect::Anthropic, &sse).is_some());
    }

    // ----- OpenAI round trips -----------------------------------------------------------

    fn openai_usage() -> Value {
        json!({"prompt_tokens": 14, "completion_tokens": 30, "total_tokens": 44,
               "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
               "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                             "accepted_prediction_tokens": 0,
                                             "rejected_prediction_tokens": 0}})
    }

    fn openai_completion(choices: Value) -> Value {
        json!({
            "id": "chatcmpl-ABfw031mOJeYCSHe4yI2ZjOA6kMJL",
            "object": "chat.completion",
            "created": 1727346168,
            "model": "gpt-4o-2024-08-06",
            "system_fingerprint": "fp_5050236cbd",
            "service_tier": "default",
            "choices": choices,
            "usage": openai_usage()
        })
    }

    fn assert_openai_round_trip(message: Value) {
        assert_eq!(round_trip(Dialect::OpenAi, &message, true), message);
        let mut without_usage = message.clone();
        without_usage.as_object_mut().unwrap().remove("usage");
        assert_eq!(round_trip(Dialect::OpenAi, &message, false), without_usage);
    }

    #[test]
    fn openai_text_round_trip() {
        assert_openai_round_trip(openai_completion(json!([
            {"index": 0, "message": {"role": "assistant", "content": "Hi\n\"there\" ✓", "refusal": null},
             "logprobs": null, "finish_reason": "stop"}
        ])));
    }

    #[test]
    fn openai_multiple_tool_calls_round_trip() {
        assert_openai_round_trip(openai_completion(json!([
            {"index": 0, "message": {"role": "assistant", "content": null, "refusal": null,
              "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": "{\"location\":\"Paris\",\"nested\":{\"a\":[1,2]}}"}},
                {"id": "call_2", "type": "function",
                 "function": {"name": "get_time", "arguments": "{}"}},
                {"id": "call_3", "type": "function", "function": {"name": "ping", "arguments": ""}}
              ]},
             "logprobs": null, "finish_reason": "tool_calls"}
        ])));
        // Text next to a tool call keeps the text.
        assert_openai_round_trip(openai_completion(json!([
            {"index": 0, "message": {"role": "assistant", "content": "Checking.", "refusal": null,
              "tool_calls": [{"id": "call_1", "type": "function",
                              "function": {"name": "f", "arguments": "{\"x\":1}"}}]},
             "logprobs": null, "finish_reason": "tool_calls"}
        ])));
    }

    #[test]
    fn openai_two_choices_round_trip() {
        assert_openai_round_trip(openai_completion(json!([
            {"index": 0, "message": {"role": "assistant", "content": "One", "refusal": null},
             "logprobs": null, "finish_reason": "stop"},
            {"index": 1, "message": {"role": "assistant", "content": "Two, longer", "refusal": null},
             "logprobs": null, "finish_reason": "length"}
        ])));
    }

    #[test]
    fn openai_refusal_round_trip() {
        assert_openai_round_trip(openai_completion(json!([
            {"index": 0, "message": {"role": "assistant", "content": null,
                                     "refusal": "I'm sorry, I can't help with that."},
             "logprobs": null, "finish_reason": "stop"}
        ])));
    }

    #[test]
    fn openai_logprobs_and_extra_fields_round_trip() {
        assert_openai_round_trip(openai_completion(json!([
            {"index": 0, "message": {"role": "assistant", "content": "Hi", "refusal": null,
                                     "annotations": [{"type": "url_citation",
                                                      "url_citation": {"url": "https://example.com", "title": "Ex",
                                                                       "start_index": 0, "end_index": 2}}]},
             "logprobs": {"content": [{"token": "Hi", "logprob": -0.01, "bytes": [72, 105], "top_logprobs": []}],
                          "refusal": null},
             "finish_reason": "stop"}
        ])));
    }

    #[test]
    fn openrouter_usage_cost_and_reasoning_round_trip() {
        assert_openai_round_trip(json!({
            "id": "gen-1733000000-abc",
            "object": "chat.completion",
            "created": 1733000000,
            "model": "anthropic/claude-sonnet-4",
            "provider": "Anthropic",
            "system_fingerprint": null,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "The answer is 4.", "refusal": null,
                                         "reasoning": "2 + 2 = 4",
                                         "reasoning_details": [{"type": "reasoning.text", "text": "2 + 2 = 4",
                                                                "format": "anthropic-claude-v1", "index": 0}]},
                 "logprobs": null, "finish_reason": "stop", "native_finish_reason": "end_turn"}
            ],
            "usage": {"prompt_tokens": 194, "completion_tokens": 2, "total_tokens": 196,
                      "prompt_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 100, "audio_tokens": 0},
                      "completion_tokens_details": {"reasoning_tokens": 0},
                      "cost": 0.95, "is_byok": false,
                      "cost_details": {"upstream_inference_cost": null,
                                       "upstream_inference_prompt_cost": 0.0008,
                                       "upstream_inference_completions_cost": 0.0004}}
        }));
    }

    #[test]
    fn openai_replay_shape_with_and_without_usage() {
        let message = openai_completion(json!([
            {"index": 0, "message": {"role": "assistant", "content": "Hi", "refusal": null,
              "tool_calls": [{"id": "call_1", "type": "function",
                              "function": {"name": "f", "arguments": "{\"x\":1}"}}]},
             "logprobs": null, "finish_reason": "tool_calls"}
        ]));
        let with = parse_sse(&replay_str(Dialect::OpenAi, &message, true));
        assert!(
            with.iter().all(|(name, _)| name.is_empty()),
            "data-only events"
        );
        assert_eq!(with.last().unwrap().1, "[DONE]");
        let chunks: Vec<Value> = with[..with.len() - 1]
            .iter()
            .map(|(_, data)| serde_json::from_str(data).unwrap())
            .collect();
        let header = json!({"id": message["id"], "object": "chat.completion.chunk",
                            "created": message["created"], "model": message["model"],
                            "system_fingerprint": "fp_5050236cbd", "service_tier": "default"});
        let chunk = |choices: Value, usage: Value| {
            let mut chunk = header.clone();
            chunk["choices"] = choices;
            chunk["usage"] = usage;
            chunk
        };
        let choice = |delta: Value, finish: Value| json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]);
        assert_eq!(
            chunks,
            vec![
                chunk(
                    choice(
                        json!({"role": "assistant", "content": "", "refusal": null}),
                        Value::Null
                    ),
                    Value::Null
                ),
                chunk(choice(json!({"content": "Hi"}), Value::Null), Value::Null),
                chunk(
                    choice(
                        json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                                    "function": {"name": "f", "arguments": ""}}]}),
                        Value::Null
                    ),
                    Value::Null
                ),
                chunk(
                    choice(
                        json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"x\":1}"}}]}),
                        Value::Null
                    ),
                    Value::Null
                ),
                chunk(choice(json!({}), json!("tool_calls")), Value::Null),
                chunk(json!([]), openai_usage()),
            ]
        );

        let without = parse_sse(&replay_str(Dialect::OpenAi, &message, false));
        assert_eq!(without.len(), with.len() - 1, "no usage chunk");
        for (_, data) in &without[..without.len() - 1] {
            let chunk: Value = serde_json::from_str(data).unwrap();
            assert!(chunk.get("usage").is_none(), "no usage key: {chunk}");
            assert_eq!(chunk["choices"].as_array().unwrap().len(), 1);
        }
        assert_eq!(without.last().unwrap().1, "[DONE]");
    }

    // ----- OpenAI real streams ----------------------------------------------------------

    /// providers.md §8, a real capture with `stream_options.include_usage`.
    const OPENAI_BASIC: &str = r#"data: {"id":"chatcmpl-ABfw031mOJeYCSHe4yI2ZjOA6kMJL","object":"chat.completion.chunk","created":1727346168,"model":"gpt-4o-2024-08-06","system_fingerprint":"fp_5050236cbd","choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-ABfw031mOJeYCSHe4yI2ZjOA6kMJL","object":"chat.completion.chunk","created":1727346168,"model":"gpt-4o-2024-08-06","system_fingerprint":"fp_5050236cbd","choices":[{"index":0,"delta":{"content":"Hi"},"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-ABfw031mOJeYCSHe4yI2ZjOA6kMJL","object":"chat.completion.chunk","created":1727346168,"model":"gpt-4o-2024-08-06","system_fingerprint":"fp_5050236cbd","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]}

data: {"id":"chatcmpl-ABfw031mOJeYCSHe4yI2ZjOA6kMJL","object":"chat.completion.chunk","created":1727346168,"model":"gpt-4o-2024-08-06","system_fingerprint":"fp_5050236cbd","choices":[],"usage":{"prompt_tokens":14,"completion_tokens":30,"total_tokens":44,"completion_tokens_details":{"reasoning_tokens":0}}}

data: [DONE]

"#;

    #[test]
    fn openai_assembles_real_stream_with_usage() {
        let message = assemble(Dialect::OpenAi, OPENAI_BASIC).unwrap();
        assert_eq!(
            message,
            json!({
                "id": "chatcmpl-ABfw031mOJeYCSHe4yI2ZjOA6kMJL",
                "object": "chat.completion",
                "created": 1727346168,
                "model": "gpt-4o-2024-08-06",
                "system_fingerprint": "fp_5050236cbd",
                "choices": [{"index": 0,
                             "message": {"role": "assistant", "content": "Hi", "refusal": null},
                             "logprobs": null, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 14, "completion_tokens": 30, "total_tokens": 44,
                          "completion_tokens_details": {"reasoning_tokens": 0}}
            })
        );
        assert_openai_round_trip(message);
    }

    #[test]
    fn openai_assembles_fragmented_tool_calls() {
        let head = r#""id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","obfuscation":"xyz""#;
        let chunk = |choice: &str| format!("data: {{{head},\"choices\":[{choice}]}}\n\n");
        let sse = [
            chunk(r#"{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_a","type":"function","function":{"name":"get_weather","arguments":""}}],"refusal":null},"logprobs":null,"finish_reason":null}"#),
            chunk(r#"{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"loc"}}]},"logprobs":null,"finish_reason":null}"#),
            chunk(r#"{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"ation\":\"Paris\"}"}}]},"logprobs":null,"finish_reason":null}"#),
            chunk(r#"{"index":0,"delta":{"tool_calls":[{"index":1,"id":"call_b","type":"function","function":{"name":"get_time","arguments":"{}"}}]},"logprobs":null,"finish_reason":null}"#),
            chunk(r#"{"index":0,"delta":{},"logprobs":null,"finish_reason":"tool_calls"}"#),
            ": keep-alive comment\n\ndata: [DONE]\n\n".to_owned(),
        ]
        .concat();
        let message = assemble(Dialect::OpenAi, &sse).unwrap();
        assert_eq!(
            message,
            json!({
                "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o",
                "choices": [{"index": 0, "message": {
                    "role": "assistant", "content": null, "refusal": null,
                    "tool_calls": [
                        {"id": "call_a", "type": "function",
                         "function": {"name": "get_weather", "arguments": "{\"location\":\"Paris\"}"}},
                        {"id": "call_b", "type": "function",
                         "function": {"name": "get_time", "arguments": "{}"}}
                    ]}, "logprobs": null, "finish_reason": "tool_calls"}]
            })
        );
        assert_openai_round_trip(message);
    }

    #[test]
    fn openrouter_stream_merges_reasoning_details_and_usage() {
        let head = r#""id":"gen-1","provider":"Anthropic","model":"anthropic/claude-sonnet-4","object":"chat.completion.chunk","created":5"#;
        let chunk = |rest: &str| format!("data: {{{head},{rest}}}\n\n");
        let sse = [
            chunk(r#""choices":[{"index":0,"delta":{"role":"assistant","content":"","reasoning":"Two ","reasoning_details":[{"type":"reasoning.text","text":"Two ","index":0}]},"finish_reason":null,"native_finish_reason":null,"logprobs":null}]"#),
            chunk(r#""choices":[{"index":0,"delta":{"role":"assistant","content":"","reasoning":"plus two.","reasoning_details":[{"type":"reasoning.text","text":"plus two.","index":0}]},"finish_reason":null,"native_finish_reason":null,"logprobs":null}]"#),
            chunk(r#""choices":[{"index":0,"delta":{"role":"assistant","content":"4","reasoning":null},"finish_reason":null,"native_finish_reason":null,"logprobs":null}]"#),
            chunk(r#""choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":"stop","native_finish_reason":"end_turn","logprobs":null}]"#),
            chunk(r#""choices":[],"usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15,"cost":0.0012,"is_byok":false}"#),
            "data: [DONE]\n\n".to_owned(),
        ]
        .concat();
        let message = assemble(Dialect::OpenAi, &sse).unwrap();
        assert_eq!(
            message,
            json!({
                "id": "gen-1", "object": "chat.completion", "created": 5,
                "model": "anthropic/claude-sonnet-4", "provider": "Anthropic",
                "choices": [{"index": 0, "message": {
                    "role": "assistant", "content": "4", "refusal": null,
                    "reasoning": "Two plus two.",
                    "reasoning_details": [{"type": "reasoning.text", "text": "Two plus two.", "index": 0}]
                 }, "logprobs": null, "finish_reason": "stop", "native_finish_reason": "end_turn"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
                          "cost": 0.0012, "is_byok": false}
            })
        );
        assert_openai_round_trip(message);
    }

    #[test]
    fn openai_logprobs_concatenate() {
        let head = r#""id":"c","object":"chat.completion.chunk","created":1,"model":"m""#;
        let chunk = |choice: &str| format!("data: {{{head},\"choices\":[{choice}]}}\n\n");
        let sse = [
            chunk(r#"{"index":0,"delta":{"role":"assistant","content":""},"logprobs":{"content":[],"refusal":null},"finish_reason":null}"#),
            chunk(r#"{"index":0,"delta":{"content":"A"},"logprobs":{"content":[{"token":"A","logprob":-1.0}],"refusal":null},"finish_reason":null}"#),
            chunk(r#"{"index":0,"delta":{"content":"B"},"logprobs":{"content":[{"token":"B","logprob":-2.0}],"refusal":null},"finish_reason":"stop"}"#),
            "data: [DONE]\n\n".to_owned(),
        ]
        .concat();
        let message = assemble(Dialect::OpenAi, &sse).unwrap();
        assert_eq!(message["choices"][0]["message"]["content"], json!("AB"));
        assert_eq!(
            message["choices"][0]["logprobs"],
            json!({"content": [{"token": "A", "logprob": -1.0}, {"token": "B", "logprob": -2.0}],
                   "refusal": null})
        );
        assert_openai_round_trip(message);
    }

    #[test]
    fn openai_skips_azure_filter_chunks() {
        let filter = r#"data: {"choices":[],"created":0,"id":"","model":"","object":"","prompt_filter_results":[{"prompt_index":0,"content_filter_results":{}}]}"#;
        let sse = format!("{filter}\n\n{OPENAI_BASIC}");
        assert_eq!(
            assemble(Dialect::OpenAi, &sse),
            assemble(Dialect::OpenAi, OPENAI_BASIC)
        );
    }

    // ----- OpenAI failures --------------------------------------------------------------

    #[test]
    fn openai_incomplete_stream_is_none() {
        let sse = OPENAI_BASIC.replace("data: [DONE]\n\n", "");
        let assembler = feed(Dialect::OpenAi, 1 << 20, &sse);
        assert!(assembler.viable());
        assert!(assembler.finish().is_none());
        assert!(assemble(Dialect::OpenAi, "data: [DONE]\n\n").is_none());
    }

    #[test]
    fn openai_error_chunk_is_none() {
        let error = r#"data: {"id":"gen-abc123","object":"chat.completion.chunk","created":1234567890,"model":"openai/gpt-4o","provider":"OpenAI","error":{"code":429,"message":"Rate limit exceeded","metadata":{"error_type":"rate_limit_exceeded"}},"choices":[{"index":0,"delta":{"content":""},"finish_reason":"error"}]}"#;
        let sse = OPENAI_BASIC.replace("data: [DONE]", &format!("{error}\n\ndata: [DONE]"));
        let assembler = feed(Dialect::OpenAi, 1 << 20, &sse);
        assert!(!assembler.viable());
        assert!(assembler.finish().is_none());
        // A bare `{"error": …}` body as well.
        let sse = format!("data: {{\"error\":{{\"message\":\"boom\",\"type\":\"server_error\"}}}}\n\n{OPENAI_BASIC}");
        assert!(assemble(Dialect::OpenAi, &sse).is_none());
    }

    #[test]
    fn openai_over_max_bytes_is_none() {
        let assembler = feed(Dialect::OpenAi, 200, OPENAI_BASIC);
        assert!(!assembler.viable());
        assert!(assembler.finish().is_none());
        let size = assemble(Dialect::OpenAi, OPENAI_BASIC)
            .unwrap()
            .to_string()
            .len();
        assert!(feed(Dialect::OpenAi, size, OPENAI_BASIC).finish().is_some());
        assert!(feed(Dialect::OpenAi, size - 1, OPENAI_BASIC)
            .finish()
            .is_none());
    }

    #[test]
    fn openai_malformed_json_is_none() {
        let sse = OPENAI_BASIC.replace(r#"{"content":"Hi"}"#, r#"{"content":"Hi"#);
        assert!(assemble(Dialect::OpenAi, &sse).is_none());
        let sse = OPENAI_BASIC.replace(r#"{"content":"Hi"}"#, r#"{"content":42}"#);
        assert!(assemble(Dialect::OpenAi, &sse).is_none());
    }

    #[test]
    fn large_stream_assembles_in_linear_time() {
        // 20k deltas: quadratic string building would make this test crawl.
        let mut sse = String::from(OPENAI_BASIC.split("\n\n").next().unwrap());
        sse.push_str("\n\n");
        let delta = r#"data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"abcdefghij"},"logprobs":null,"finish_reason":null}]}"#;
        for _ in 0..20_000 {
            sse.push_str(delta);
            sse.push_str("\n\n");
        }
        sse.push_str("data: [DONE]\n\n");
        let message = assemble(Dialect::OpenAi, &sse).unwrap();
        let content = message["choices"][0]["message"]["content"]
            .as_str()
            .unwrap();
        assert_eq!(content.len(), 200_000);
        assert_openai_round_trip(message);
    }

    // ----- Replay errors ----------------------------------------------------------------

    #[test]
    fn replay_rejects_bad_messages() {
        for dialect in [Dialect::Anthropic, Dialect::OpenAi] {
            assert!(matches!(
                replay(dialect, b"not json", false),
                Err(ReplayError::NotJson(_))
            ));
            assert!(matches!(
                replay(dialect, b"[1,2]", false),
                Err(ReplayError::NotObject)
            ));
            assert!(matches!(
                replay(dialect, b"\"text\"", false),
                Err(ReplayError::NotObject)
            ));
        }
        let err = replay(Dialect::Anthropic, br#"{"usage":{}}"#, false).unwrap_err();
        assert!(matches!(err, ReplayError::MissingField("content")));
        assert_eq!(err.to_string(), "cached message has no `content` field");
        assert!(matches!(
            replay(Dialect::Anthropic, br#"{"content":[]}"#, false),
            Err(ReplayError::MissingField("usage"))
        ));
        assert!(matches!(
            replay(
                Dialect::Anthropic,
                br#"{"content":[{"type":"text","text":5}],"usage":{}}"#,
                false
            ),
            Err(ReplayError::InvalidField {
                field: "content[].text",
                ..
            })
        ));
        assert!(matches!(
            replay(Dialect::OpenAi, br#"{"id":"x"}"#, true),
            Err(ReplayError::MissingField("choices"))
        ));
        assert!(matches!(
            replay(Dialect::OpenAi, br#"{"choices":[{"index":0}]}"#, true),
            Err(ReplayError::MissingField("choices[].message"))
        ));
    }
}
