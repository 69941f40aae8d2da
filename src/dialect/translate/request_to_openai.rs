//! An Anthropic Messages request → an OpenAI Chat Completions request
//! (rules in the module doc of `translate`).

use serde_json::{json, Map, Value};

use super::mapping::{
    as_array, as_object, as_str, begin_request, effort_for_budget, invalid, to_bytes,
    untranslatable, OPENAI,
};
use super::{Target, TranslateError, TranslatedRequest};
use crate::dialect::Dialect;

pub(super) fn translate(
    body: &[u8],
    target: &Target<'_>,
) -> Result<TranslatedRequest, TranslateError> {
    let (req, mut out) = begin_request(body, target.model)?;
    let mut messages = Vec::new();
    let mut stream = false;
    for (key, value) in &req {
        match key.as_str() {
            "model" | "messages" => {}
            "system" => system(value, &mut messages)?,
            "max_tokens" => {
                let field = Dialect::OpenAi.default_bound_field(target.provider);
                out.insert(field.to_owned(), value.clone());
            }
            "temperature" | "top_p" => {
                out.insert(key.clone(), value.clone());
            }
            "stop_sequences" => {
                out.insert("stop".to_owned(), value.clone());
            }
            "stream" => stream = value.as_bool().unwrap_or(false),
            "metadata" => metadata(value, &mut out)?,
            "tools" => {
                out.insert("tools".to_owned(), tools(value)?);
            }
            "tool_choice" => tool_choice(value, &mut out)?,
            "thinking" => thinking(value, &mut out)?,
            "output_config" => output_config(value, &mut out)?,
            // Billing, caching and diagnostics only (module doc).
            "service_tier" | "cache_control" | "speed" | "diagnostics" => {}
            other => return Err(untranslatable(other, OPENAI)),
        }
    }
    let turns = req
        .get("messages")
        .ok_or_else(|| invalid("messages", "present"))?;
    for (i, turn) in as_array(turns, "messages")?.iter().enumerate() {
        message(turn, i, &mut messages)?;
    }
    out.insert("messages".to_owned(), Value::Array(messages));
    if stream {
        out.insert("stream".to_owned(), Value::Bool(true));
        out.insert("stream_options".to_owned(), json!({"include_usage": true}));
    }
    Ok(TranslatedRequest {
        body: to_bytes(&Value::Object(out)),
        stream,
        include_usage: false,
    })
}

/// `system` → a leading system message.
fn system(value: &Value, messages: &mut Vec<Value>) -> Result<(), TranslateError> {
    let content = match value {
        Value::String(text) => Value::from(text.as_str()),
        Value::Array(blocks) => {
            let mut parts = Vec::new();
            for block in blocks {
                let block = as_object(block, "system[]")?;
                match block.get("type").and_then(Value::as_str) {
                    Some("text") => parts.push(text_part(block, "system[].text")?),
                    _ => return Err(untranslatable("system[].type", OPENAI)),
                }
            }
            simplify(parts)
        }
        _ => return Err(invalid("system", "a string or text blocks")),
    };
    messages.push(json!({"role": "system", "content": content}));
    Ok(())
}

fn text_part(block: &Map<String, Value>, field: &str) -> Result<Value, TranslateError> {
    let text = as_str(block.get("text").unwrap_or(&Value::Null), field)?;
    Ok(json!({"type": "text", "text": text}))
}

/// Parts as OpenAI content: one text part as a plain string.
fn simplify(mut parts: Vec<Value>) -> Value {
    if parts.len() == 1 && parts[0].get("type").and_then(Value::as_str) == Some("text") {
        if let Some(Value::String(text)) = parts[0].get_mut("text").map(Value::take) {
            return Value::String(text);
        }
    }
    Value::Array(parts)
}

fn metadata(value: &Value, out: &mut Map<String, Value>) -> Result<(), TranslateError> {
    for (key, v) in as_object(value, "metadata")? {
        match key.as_str() {
            "user_id" if v.is_null() => {}
            "user_id" => {
                out.insert("user".to_owned(), v.clone());
            }
            other => return Err(untranslatable(format!("metadata.{other}"), OPENAI)),
        }
    }
    Ok(())
}

fn tools(value: &Value) -> Result<Value, TranslateError> {
    let mut out = Vec::new();
    for tool in as_array(value, "tools")? {
        let tool = as_object(tool, "tools[]")?;
        let mut function = Map::new();
        for (key, v) in tool {
            match key.as_str() {
                "type" if v.as_str() == Some("custom") => {}
                "name" | "description" | "strict" => {
                    function.insert(key.clone(), v.clone());
                }
                "input_schema" => {
                    function.insert("parameters".to_owned(), v.clone());
                }
                "cache_control" => {}
                "type" => return Err(untranslatable("tools[].type", OPENAI)),
                other => return Err(untranslatable(format!("tools[].{other}"), OPENAI)),
            }
        }
        out.push(json!({"type": "function", "function": function}));
    }
    Ok(Value::Array(out))
}

fn tool_choice(value: &Value, out: &mut Map<String, Value>) -> Result<(), TranslateError> {
    let choice = as_object(value, "tool_choice")?;
    let mapped = match choice.get("type").and_then(Value::as_str) {
        Some("auto") => Value::from("auto"),
        Some("any") => Value::from("required"),
        Some("none") => Value::from("none"),
        Some("tool") => {
            let name = as_str(
                choice.get("name").unwrap_or(&Value::Null),
                "tool_choice.name",
            )?;
            json!({"type": "function", "function": {"name": name}})
        }
        _ => return Err(invalid("tool_choice.type", "auto, any, tool or none")),
    };
    out.insert("tool_choice".to_owned(), mapped);
    if choice
        .get("disable_parallel_tool_use")
        .and_then(Value::as_bool)
        == Some(true)
    {
        out.insert("parallel_tool_calls".to_owned(), Value::Bool(false));
    }
    Ok(())
}

fn thinking(value: &Value, out: &mut Map<String, Value>) -> Result<(), TranslateError> {
    let thinking = as_object(value, "thinking")?;
    match thinking.get("type").and_then(Value::as_str) {
        Some("enabled") => {
            let budget = thinking
                .get("budget_tokens")
                .and_then(Value::as_u64)
                .ok_or_else(|| invalid("thinking.budget_tokens", "a number"))?;
            out.insert(
                "reasoning_effort".to_owned(),
                Value::from(effort_for_budget(budget)),
            );
            Ok(())
        }
        // The target's own default (module doc).
        Some("adaptive" | "disabled") => Ok(()),
        _ => Err(invalid("thinking.type", "enabled, adaptive or disabled")),
    }
}

fn output_config(value: &Value, out: &mut Map<String, Value>) -> Result<(), TranslateError> {
    for (key, v) in as_object(value, "output_config")? {
        match (key.as_str(), v.as_str()) {
            ("effort", Some(effort @ ("low" | "medium" | "high"))) => {
                out.insert("reasoning_effort".to_owned(), Value::from(effort));
            }
            ("effort", _) => return Err(untranslatable("output_config.effort", OPENAI)),
            ("format", _) => {
                let format = as_object(v, "output_config.format")?;
                if format.get("type").and_then(Value::as_str) != Some("json_schema") {
                    return Err(untranslatable("output_config.format.type", OPENAI));
                }
                let schema = format.get("schema").cloned().unwrap_or(Value::Null);
                out.insert(
                    "response_format".to_owned(),
                    json!({"type": "json_schema",
                        "json_schema": {"name": "output", "schema": schema, "strict": true}}),
                );
            }
            (other, _) => return Err(untranslatable(format!("output_config.{other}"), OPENAI)),
        }
    }
    Ok(())
}

/// One Anthropic turn → one or more OpenAI messages.
fn message(turn: &Value, i: usize, out: &mut Vec<Value>) -> Result<(), TranslateError> {
    let turn = as_object(turn, "messages[]")?;
    let role = as_str(turn.get("role").unwrap_or(&Value::Null), "messages[].role")?;
    let content = turn
        .get("content")
        .ok_or_else(|| invalid(format!("messages[{i}].content"), "present"))?;
    let blocks = match content {
        Value::String(text) => {
            out.push(json!({"role": role, "content": text}));
            return Ok(());
        }
        Value::Array(blocks) => blocks,
        _ => {
            return Err(invalid(
                format!("messages[{i}].content"),
                "a string or blocks",
            ))
        }
    };
    match role {
        "user" => user_turn(blocks, i, out),
        "assistant" => assistant_turn(blocks, i, out),
        _ => Err(invalid("messages[].role", "user or assistant")),
    }
}

fn user_turn(blocks: &[Value], i: usize, out: &mut Vec<Value>) -> Result<(), TranslateError> {
    let mut parts = Vec::new();
    for block in blocks {
        let block = as_object(block, "messages[].content[]")?;
        match block_type(block)? {
            "text" => parts.push(text_part(block, "messages[].content[].text")?),
            "image" => parts.push(image(block)?),
            // Tool results answer the previous assistant turn's calls, so they
            // come first, as the Messages API requires them to.
            "tool_result" => out.push(tool_result(block, i)?),
            other => {
                return Err(untranslatable(
                    format!("messages[{i}].content[].type={other}"),
                    OPENAI,
                ))
            }
        }
    }
    if !parts.is_empty() {
        out.push(json!({"role": "user", "content": simplify(parts)}));
    }
    Ok(())
}

fn block_type(block: &Map<String, Value>) -> Result<&str, TranslateError> {
    as_str(
        block.get("type").unwrap_or(&Value::Null),
        "messages[].content[].type",
    )
}

fn image(block: &Map<String, Value>) -> Result<Value, TranslateError> {
    let source = as_object(
        block.get("source").unwrap_or(&Value::Null),
        "messages[].content[].source",
    )?;
    let field = |key: &str| {
        as_str(
            source.get(key).unwrap_or(&Value::Null),
            "messages[].content[].source",
        )
    };
    let url = match source.get("type").and_then(Value::as_str) {
        Some("base64") => format!("data:{};base64,{}", field("media_type")?, field("data")?),
        Some("url") => field("url")?.to_owned(),
        _ => return Err(untranslatable("messages[].content[].source.type", OPENAI)),
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

fn tool_result(block: &Map<String, Value>, i: usize) -> Result<Value, TranslateError> {
    let id = as_str(
        block.get("tool_use_id").unwrap_or(&Value::Null),
        "messages[].content[].tool_use_id",
    )?;
    let content = match block.get("content") {
        None | Some(Value::Null) => Value::from(""),
        Some(Value::String(text)) => Value::from(text.as_str()),
        Some(Value::Array(inner)) => {
            let mut parts = Vec::new();
            for part in inner {
                let part = as_object(part, "messages[].content[].content[]")?;
                match block_type(part)? {
                    "text" => parts.push(text_part(part, "messages[].content[].content[].text")?),
                    // OpenAI tool messages carry text only.
                    other => {
                        return Err(untranslatable(
                            format!("messages[{i}].content[].content[].type={other}"),
                            OPENAI,
                        ))
                    }
                }
            }
            simplify(parts)
        }
        Some(_) => return Err(invalid("messages[].content[].content", "text or blocks")),
    };
    Ok(json!({"role": "tool", "tool_call_id": id, "content": content}))
}

fn assistant_turn(blocks: &[Value], i: usize, out: &mut Vec<Value>) -> Result<(), TranslateError> {
    let mut parts = Vec::new();
    let mut calls = Vec::new();
    for block in blocks {
        let block = as_object(block, "messages[].content[]")?;
        match block_type(block)? {
            "text" => parts.push(text_part(block, "messages[].content[].text")?),
            "tool_use" => {
                let field = |key: &str| {
                    as_str(
                        block.get(key).unwrap_or(&Value::Null),
                        "messages[].content[].tool_use",
                    )
                };
                let input = block.get("input").cloned().unwrap_or_else(|| json!({}));
                calls.push(json!({
                    "id": field("id")?,
                    "type": "function",
                    "function": {"name": field("name")?, "arguments": input.to_string()},
                }));
            }
            // Earlier reasoning cannot be sent back to Chat Completions (module doc).
            "thinking" | "redacted_thinking" => {}
            other => {
                return Err(untranslatable(
                    format!("messages[{i}].content[].type={other}"),
                    OPENAI,
                ))
            }
        }
    }
    let mut msg = Map::new();
    msg.insert("role".to_owned(), Value::from("assistant"));
    let content = if parts.is_empty() {
        Value::Null
    } else {
        simplify(parts)
    };
    msg.insert("content".to_owned(), content);
    if !calls.is_empty() {
        msg.insert("tool_calls".to_owned(), Value::Array(calls));
    }
    out.push(Value::Object(msg));
    Ok(())
}
