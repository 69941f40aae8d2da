//! Non-streamed answers: an OpenAI `chat.completion` → an Anthropic
//! `message`, and back (rules in the module doc of `translate`).

use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::mapping::{
    anthropic_thinking_tokens, anthropic_usage, apply_anthropic_usage, as_array, as_object, as_str,
    finish_reason, invalid, openai_reasoning_tokens, openai_usage, parse_object, stop_reason,
    to_bytes, untranslatable, OPENAI,
};
use super::TranslateError;
use crate::dialect::anthropic::usage::UsageAcc;

/// `chat.completion` → Anthropic `message`.
pub(super) fn to_anthropic(body: &[u8]) -> Result<Bytes, TranslateError> {
    let completion = parse_object(body)?;
    let choices = as_array(completion.get("choices").unwrap_or(&Value::Null), "choices")?;
    // Requests with n > 1 are refused, so one choice is all there can be.
    let [choice] = choices.as_slice() else {
        return Err(invalid("choices", "one choice"));
    };
    let message = as_object(
        choice.get("message").unwrap_or(&Value::Null),
        "choices[].message",
    )?;
    let text = |key: &str| {
        message
            .get(key)
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
    };

    let mut content = Vec::new();
    if let Some(reasoning) = text("reasoning").or_else(|| text("reasoning_content")) {
        content.push(json!({"type": "thinking", "thinking": reasoning, "signature": ""}));
    }
    if let Some(text) = text("content") {
        content.push(json!({"type": "text", "text": text}));
    }
    let refused = text("refusal");
    if let Some(refusal) = refused {
        content.push(json!({"type": "text", "text": refusal}));
    }
    let calls = match message.get("tool_calls") {
        None | Some(Value::Null) => &[][..],
        Some(calls) => as_array(calls, "choices[].message.tool_calls")?.as_slice(),
    };
    for call in calls {
        content.push(tool_use(call)?);
    }

    let finish = choice
        .get("finish_reason")
        .and_then(Value::as_str)
        .unwrap_or("stop");
    let stop = if refused.is_some() {
        "refusal"
    } else {
        stop_reason(finish, !calls.is_empty())?
    };
    let usage_value = completion.get("usage");
    let usage = super::mapping::usage_from_openai(usage_value).unwrap_or_default();
    let out = json!({
        "id": completion.get("id").cloned().unwrap_or(Value::Null),
        "type": "message",
        "role": "assistant",
        "model": completion.get("model").cloned().unwrap_or(Value::Null),
        "content": content,
        "stop_reason": stop,
        "stop_sequence": null,
        "usage": serde_json::to_value(anthropic_usage(&usage, openai_reasoning_tokens(usage_value)))
            .unwrap_or(Value::Null),
    });
    Ok(to_bytes(&out))
}

fn tool_use(call: &Value) -> Result<Value, TranslateError> {
    let field = "choices[].message.tool_calls[]";
    let call = as_object(call, field)?;
    let function = as_object(call.get("function").unwrap_or(&Value::Null), field)?;
    let get = |map: &Map<String, Value>, key: &str| {
        as_str(map.get(key).unwrap_or(&Value::Null), field).map(str::to_owned)
    };
    let arguments = get(function, "arguments")?;
    Ok(json!({
        "type": "tool_use",
        "id": get(call, "id")?,
        "name": get(function, "name")?,
        "input": arguments_to_input(&arguments)?,
    }))
}

/// A call's `arguments` string → Anthropic's `input` object (`""`: none).
pub(super) fn arguments_to_input(arguments: &str) -> Result<Value, TranslateError> {
    if arguments.trim().is_empty() {
        return Ok(json!({}));
    }
    match serde_json::from_str(arguments) {
        Ok(input @ Value::Object(_)) => Ok(input),
        _ => Err(invalid("tool_calls[].function.arguments", "a JSON object")),
    }
}

/// Anthropic `message` → `chat.completion`.
pub(super) fn to_openai(body: &[u8], created: u64) -> Result<Bytes, TranslateError> {
    let message = parse_object(body)?;
    let blocks = as_array(message.get("content").unwrap_or(&Value::Null), "content")?;
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut calls = Vec::new();
    for block in blocks {
        let block = as_object(block, "content[]")?;
        let field = |key: &str| as_str(block.get(key).unwrap_or(&Value::Null), "content[]");
        match field("type")? {
            "text" => text.push_str(field("text")?),
            "thinking" => reasoning.push_str(field("thinking")?),
            "redacted_thinking" => {}
            "tool_use" => {
                let input = block.get("input").cloned().unwrap_or_else(|| json!({}));
                calls.push(json!({
                    "id": field("id")?,
                    "type": "function",
                    "function": {"name": field("name")?, "arguments": input.to_string()},
                }));
            }
            other => return Err(untranslatable(format!("content[].type={other}"), OPENAI)),
        }
    }
    let stop = as_str(
        message.get("stop_reason").unwrap_or(&Value::Null),
        "stop_reason",
    )?;
    let mut out_message = Map::new();
    out_message.insert("role".to_owned(), Value::from("assistant"));
    let no_content = text.is_empty() && !calls.is_empty();
    out_message.insert(
        "content".to_owned(),
        if no_content {
            Value::Null
        } else {
            Value::from(text)
        },
    );
    out_message.insert("refusal".to_owned(), Value::Null);
    if !reasoning.is_empty() {
        out_message.insert("reasoning".to_owned(), Value::from(reasoning));
    }
    if !calls.is_empty() {
        out_message.insert("tool_calls".to_owned(), Value::Array(calls));
    }
    let mut acc = UsageAcc::default();
    let usage_value = message.get("usage");
    apply_anthropic_usage(&mut acc, usage_value);
    let out = json!({
        "id": message.get("id").cloned().unwrap_or(Value::Null),
        "object": "chat.completion",
        "created": created,
        "model": message.get("model").cloned().unwrap_or(Value::Null),
        "choices": [{
            "index": 0,
            "message": out_message,
            "logprobs": null,
            "finish_reason": finish_reason(stop)?,
        }],
        "usage": openai_usage(&acc.usage(), anthropic_thinking_tokens(usage_value)),
    });
    Ok(to_bytes(&out))
}
