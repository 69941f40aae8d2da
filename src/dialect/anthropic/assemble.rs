//! Anthropic: a stream's events folded into the complete `Message`, as the
//! SDK's `accumulate_event` does.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::dialect::json::{empty_object, json_len, parse_json, parse_object, Fail};

/// Snapshot being built, as in the SDK's `accumulate_event`.
#[derive(Default)]
pub(crate) struct Accumulator {
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
pub(crate) struct BlockDeltaIn<'a> {
    pub(crate) index: usize,
    #[serde(borrow)]
    pub(crate) delta: DeltaIn<'a>,
}

#[derive(Deserialize)]
pub(crate) struct DeltaIn<'a> {
    #[serde(rename = "type", borrow)]
    pub(crate) kind: Cow<'a, str>,
    #[serde(default, borrow)]
    pub(crate) text: Cow<'a, str>,
    #[serde(default, borrow)]
    pub(crate) partial_json: Cow<'a, str>,
    #[serde(default, borrow)]
    pub(crate) thinking: Cow<'a, str>,
    #[serde(default, borrow)]
    pub(crate) signature: Cow<'a, str>,
    #[serde(default)]
    pub(crate) citation: Option<Value>,
    // compaction_delta (beta): replaces the block's `content` / `encrypted_content`.
    #[serde(default)]
    pub(crate) content: Option<Value>,
    #[serde(default)]
    pub(crate) encrypted_content: Option<Value>,
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

impl Accumulator {
    /// Returns `Ok(true)` once the stream is complete.
    pub(crate) fn on_event(
        &mut self,
        name: &str,
        data: &str,
        size: &mut usize,
    ) -> Result<bool, Fail> {
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

    pub(crate) fn finish(self) -> Option<Value> {
        let mut message = self.message?;
        let content = self.blocks.into_iter().map(Value::Object).collect();
        message.insert("content".to_owned(), Value::Array(content));
        Some(Value::Object(message))
    }
}
