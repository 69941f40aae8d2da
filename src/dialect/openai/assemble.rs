//! OpenAI-compatible (OpenAI, OpenRouter): a chat-completion stream's
//! chunks folded into the complete `chat.completion`, as the SDK's
//! `accumulate_delta` does.

use std::collections::BTreeMap;

use serde_json::{Map, Number, Value};

use crate::dialect::json::{empty_object, json_len, parse_object, Fail};

#[derive(Default)]
pub(crate) struct Accumulator {
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

impl Accumulator {
    /// Returns `Ok(true)` once the stream is complete. Event names are ignored, as the SDK
    /// ignores them for chat completions.
    pub(crate) fn on_event(&mut self, data: &str, size: &mut usize) -> Result<bool, Fail> {
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

    pub(crate) fn finish(self) -> Option<Value> {
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
