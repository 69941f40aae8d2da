//! An OpenAI Chat Completions request → an Anthropic Messages request
//! (rules in the module doc of `translate`).

use serde_json::{json, Map, Value};

use super::mapping::{
    as_array, as_object, as_str, begin_request, budget_for_effort, invalid, to_bytes,
    untranslatable, ANTHROPIC,
};
use super::{Target, TranslateError, TranslatedRequest};

/// What the top-level fields said, before the body is assembled.
#[derive(Default)]
struct Options {
    max_tokens: Option<u64>,
    effort: Option<String>,
    user: Option<Value>,
    safety_identifier: Option<Value>,
    tool_choice: Option<Value>,
    parallel_tool_calls: Option<bool>,
    include_usage: bool,
    stream: bool,
}

pub(super) fn translate(
    body: &[u8],
    target: &Target<'_>,
) -> Result<TranslatedRequest, TranslateError> {
    let (req, mut out) = begin_request(body, target.model)?;
    let mut opts = Options::default();
    for (key, value) in &req {
        top_level(key, value, &mut out, &mut opts)?;
    }
    let turns = req
        .get("messages")
        .ok_or_else(|| invalid("messages", "present"))?;
    let (system, messages) = messages(as_array(turns, "messages")?)?;
    if let Some(system) = system {
        out.insert("system".to_owned(), system);
    }
    out.insert("messages".to_owned(), Value::Array(messages));

    let budget = opts
        .effort
        .as_deref()
        .map(budget_for_effort)
        .transpose()?
        .flatten();
    // max_tokens bounds thinking and text together, as max_completion_tokens
    // does; without a client bound, the default is for the text alone.
    let max_tokens = match (opts.max_tokens, budget) {
        (Some(n), _) => n,
        (None, Some(budget)) => target.default_max_tokens.saturating_add(budget),
        (None, None) => target.default_max_tokens,
    };
    out.insert("max_tokens".to_owned(), Value::from(max_tokens));
    if let Some(budget) = budget {
        // Anthropic wants 1024 ≤ budget < max_tokens.
        let budget = budget.min(max_tokens.saturating_sub(1));
        if budget < 1024 {
            return Err(untranslatable("reasoning_effort", ANTHROPIC));
        }
        out.insert(
            "thinking".to_owned(),
            json!({"type": "enabled", "budget_tokens": budget}),
        );
    }
    if let Some(user) = opts.user.or(opts.safety_identifier) {
        out.insert("metadata".to_owned(), json!({"user_id": user}));
    }
    let disable_parallel = opts.parallel_tool_calls == Some(false) && out.contains_key("tools");
    match (opts.tool_choice, disable_parallel) {
        (Some(mut choice), true) => {
            if let Some(map) = choice.as_object_mut() {
                map.insert("disable_parallel_tool_use".to_owned(), Value::Bool(true));
            }
            out.insert("tool_choice".to_owned(), choice);
        }
        (Some(choice), false) => {
            out.insert("tool_choice".to_owned(), choice);
        }
        (None, true) => {
            out.insert(
                "tool_choice".to_owned(),
                json!({"type": "auto", "disable_parallel_tool_use": true}),
            );
        }
        (None, false) => {}
    }
    if opts.stream {
        out.insert("stream".to_owned(), Value::Bool(true));
    }
    Ok(TranslatedRequest {
        body: to_bytes(&Value::Object(out)),
        stream: opts.stream,
        include_usage: opts.stream && opts.include_usage,
    })
}

fn top_level(
    key: &str,
    value: &Value,
    out: &mut Map<String, Value>,
    opts: &mut Options,
) -> Result<(), TranslateError> {
    let refuse = || Err(untranslatable(key, ANTHROPIC));
    match key {
        "model" | "messages" => {}
        "max_tokens" | "max_completion_tokens" => {
            if let Some(n) = value.as_u64() {
                // Both sent: an upstream may honour either, keep the larger.
                opts.max_tokens = Some(opts.max_tokens.map_or(n, |m| m.max(n)));
            } else if !value.is_null() {
                return Err(invalid(key, "a number"));
            }
        }
        "temperature" => match value.as_f64() {
            Some(t) if t > 1.0 => return refuse(),
            Some(_) => {
                out.insert(key.to_owned(), value.clone());
            }
            None if value.is_null() => {}
            None => return Err(invalid(key, "a number")),
        },
        "top_p" => {
            if !value.is_null() {
                out.insert(key.to_owned(), value.clone());
            }
        }
        "stop" => match value {
            Value::Null => {}
            Value::String(s) => {
                out.insert("stop_sequences".to_owned(), json!([s]));
            }
            Value::Array(_) => {
                out.insert("stop_sequences".to_owned(), value.clone());
            }
            _ => return Err(invalid(key, "a string or an array")),
        },
        "stream" => opts.stream = value.as_bool().unwrap_or(false),
        "stream_options" => {
            opts.include_usage = value.get("include_usage").and_then(Value::as_bool) == Some(true);
        }
        "user" => opts.user = Some(value.clone()).filter(|v| !v.is_null()),
        "safety_identifier" => {
            opts.safety_identifier = Some(value.clone()).filter(|v| !v.is_null())
        }
        "tools" => {
            out.insert("tools".to_owned(), tools(value)?);
        }
        "tool_choice" => opts.tool_choice = Some(tool_choice(value)?),
        "parallel_tool_calls" => opts.parallel_tool_calls = value.as_bool(),
        "reasoning_effort" => {
            opts.effort = Some(as_str(value, key)?.to_owned());
        }
        "response_format" => response_format(value, out)?,
        "n" if value.as_u64().is_none_or(|n| n == 1) => {}
        "logprobs" if value.as_bool() != Some(true) => {}
        "presence_penalty" | "frequency_penalty" if value.as_f64().is_none_or(|p| p == 0.0) => {}
        "modalities"
            if value
                .as_array()
                .is_none_or(|m| m.iter().all(|m| m.as_str() == Some("text"))) => {}
        // Billing, caching, storage only (module doc).
        "store"
        | "metadata"
        | "service_tier"
        | "seed"
        | "prompt_cache_key"
        | "prompt_cache_retention"
        | "prompt_cache_options" => {}
        _ => return refuse(),
    }
    Ok(())
}

fn tools(value: &Value) -> Result<Value, TranslateError> {
    let mut out = Vec::new();
    for tool in as_array(value, "tools")? {
        let tool = as_object(tool, "tools[]")?;
        if tool.get("type").and_then(Value::as_str) != Some("function") {
            return Err(untranslatable("tools[].type", ANTHROPIC));
        }
        let function = as_object(
            tool.get("function").unwrap_or(&Value::Null),
            "tools[].function",
        )?;
        let mut mapped = Map::new();
        for (key, v) in function {
            match key.as_str() {
                "name" | "description" | "strict" => {
                    mapped.insert(key.clone(), v.clone());
                }
                "parameters" => {
                    mapped.insert("input_schema".to_owned(), v.clone());
                }
                other => {
                    return Err(untranslatable(
                        format!("tools[].function.{other}"),
                        ANTHROPIC,
                    ))
                }
            }
        }
        // Anthropic requires a schema; OpenAI's default is "no parameters".
        mapped
            .entry("input_schema")
            .or_insert_with(|| json!({"type": "object", "properties": {}}));
        out.push(Value::Object(mapped));
    }
    Ok(Value::Array(out))
}

fn tool_choice(value: &Value) -> Result<Value, TranslateError> {
    Ok(match value {
        Value::String(s) => match s.as_str() {
            "auto" => json!({"type": "auto"}),
            "required" => json!({"type": "any"}),
            "none" => json!({"type": "none"}),
            _ => return Err(invalid("tool_choice", "auto, required or none")),
        },
        Value::Object(choice) if choice.get("type").and_then(Value::as_str) == Some("function") => {
            let name = choice
                .get("function")
                .and_then(|f| f.get("name"))
                .unwrap_or(&Value::Null);
            json!({"type": "tool", "name": as_str(name, "tool_choice.function.name")?})
        }
        _ => return Err(untranslatable("tool_choice", ANTHROPIC)),
    })
}

fn response_format(value: &Value, out: &mut Map<String, Value>) -> Result<(), TranslateError> {
    match value.get("type").and_then(Value::as_str) {
        Some("text") => Ok(()),
        Some("json_schema") => {
            let schema = value
                .get("json_schema")
                .and_then(|s| s.get("schema"))
                .ok_or_else(|| invalid("response_format.json_schema.schema", "present"))?;
            out.insert(
                "output_config".to_owned(),
                json!({"format": {"type": "json_schema", "schema": schema}}),
            );
            Ok(())
        }
        _ => Err(untranslatable("response_format", ANTHROPIC)),
    }
}

/// The messages → (system, Anthropic turns).
fn messages(turns: &[Value]) -> Result<(Option<Value>, Vec<Value>), TranslateError> {
    let mut system: Vec<Value> = Vec::new();
    let mut out: Vec<Value> = Vec::new();
    for turn in turns {
        let turn = as_object(turn, "messages[]")?;
        for key in turn.keys() {
            if !matches!(
                key.as_str(),
                "role" | "content" | "name" | "tool_calls" | "tool_call_id" | "refusal"
            ) {
                return Err(untranslatable(format!("messages[].{key}"), ANTHROPIC));
            }
        }
        let role = as_str(turn.get("role").unwrap_or(&Value::Null), "messages[].role")?;
        let content = turn.get("content").unwrap_or(&Value::Null);
        match role {
            "system" | "developer" => {
                if !out.is_empty() {
                    // Anthropic has one system prompt, before the conversation.
                    return Err(untranslatable("messages[].role=system", ANTHROPIC));
                }
                system.extend(blocks(content, false)?);
            }
            "user" => push(&mut out, "user", blocks(content, true)?),
            "assistant" => {
                let mut content = blocks(content, false)?;
                if let Some(refusal) = turn
                    .get("refusal")
                    .and_then(Value::as_str)
                    .filter(|r| !r.is_empty())
                {
                    content.push(json!({"type": "text", "text": refusal}));
                }
                if let Some(calls) = turn.get("tool_calls").filter(|c| !c.is_null()) {
                    for call in as_array(calls, "messages[].tool_calls")? {
                        content.push(tool_use(call)?);
                    }
                }
                push(&mut out, "assistant", content);
            }
            "tool" => {
                let id = as_str(
                    turn.get("tool_call_id").unwrap_or(&Value::Null),
                    "messages[].tool_call_id",
                )?;
                let result = json!({"type": "tool_result", "tool_use_id": id,
                    "content": blocks(content, false)?});
                push(&mut out, "user", vec![result]);
            }
            other => {
                return Err(untranslatable(
                    format!("messages[].role={other}"),
                    ANTHROPIC,
                ))
            }
        }
    }
    let system = match system.len() {
        0 => None,
        1 => system.pop().and_then(|b| b.get("text").cloned()),
        _ => Some(Value::Array(system)),
    };
    Ok((system, out))
}

/// Appends a turn, merged into the previous one when it has the same role.
fn push(out: &mut Vec<Value>, role: &str, content: Vec<Value>) {
    if let Some(last) = out.last_mut() {
        if last.get("role").and_then(Value::as_str) == Some(role) {
            if let Some(Value::Array(blocks)) = last.get_mut("content") {
                blocks.extend(content);
                return;
            }
        }
    }
    out.push(json!({"role": role, "content": content}));
}

/// OpenAI content (a string or parts) → Anthropic blocks.
fn blocks(content: &Value, images: bool) -> Result<Vec<Value>, TranslateError> {
    let parts = match content {
        Value::Null => return Ok(Vec::new()),
        // The Messages API refuses empty text blocks; OpenAI clients send
        // `""` beside tool calls.
        Value::String(text) if text.is_empty() => return Ok(Vec::new()),
        Value::String(text) => return Ok(vec![json!({"type": "text", "text": text})]),
        Value::Array(parts) => parts,
        _ => return Err(invalid("messages[].content", "a string or parts")),
    };
    let mut out = Vec::new();
    for part in parts {
        let part = as_object(part, "messages[].content[]")?;
        let kind = as_str(
            part.get("type").unwrap_or(&Value::Null),
            "messages[].content[].type",
        )?;
        match kind {
            // A refusal part of an earlier answer is its text.
            "text" | "refusal" => {
                let text = as_str(
                    part.get(kind).unwrap_or(&Value::Null),
                    "messages[].content[].text",
                )?;
                if !text.is_empty() {
                    out.push(json!({"type": "text", "text": text}));
                }
            }
            "image_url" if images => out.push(image(part)?),
            other => {
                return Err(untranslatable(
                    format!("messages[].content[].type={other}"),
                    ANTHROPIC,
                ))
            }
        }
    }
    Ok(out)
}

fn image(part: &Map<String, Value>) -> Result<Value, TranslateError> {
    let url = part
        .get("image_url")
        .and_then(|i| i.get("url"))
        .unwrap_or(&Value::Null);
    let url = as_str(url, "messages[].content[].image_url.url")?;
    let source = match url.strip_prefix("data:") {
        Some(rest) => {
            let (media_type, data) = rest.split_once(";base64,").ok_or_else(|| {
                invalid("messages[].content[].image_url.url", "a base64 data URL")
            })?;
            json!({"type": "base64", "media_type": media_type, "data": data})
        }
        None => json!({"type": "url", "url": url}),
    };
    Ok(json!({"type": "image", "source": source}))
}

fn tool_use(call: &Value) -> Result<Value, TranslateError> {
    let call = as_object(call, "messages[].tool_calls[]")?;
    if call
        .get("type")
        .and_then(Value::as_str)
        .is_some_and(|t| t != "function")
    {
        return Err(untranslatable("messages[].tool_calls[].type", ANTHROPIC));
    }
    let id = as_str(
        call.get("id").unwrap_or(&Value::Null),
        "messages[].tool_calls[].id",
    )?;
    let function = call.get("function").unwrap_or(&Value::Null);
    let name = as_str(
        function.get("name").unwrap_or(&Value::Null),
        "messages[].tool_calls[].function.name",
    )?;
    let arguments = as_str(
        function.get("arguments").unwrap_or(&Value::Null),
        "messages[].tool_calls[].function.arguments",
    )?;
    let input = super::response::arguments_to_input(arguments)?;
    Ok(json!({"type": "tool_use", "id": id, "name": name, "input": input}))
}
