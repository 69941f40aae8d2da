//! The small correspondences every part of a pair uses: stop reasons,
//! reasoning effort and thinking budgets, usage in either shape, and the
//! JSON helpers of the request and response translators.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::TranslateError;
use crate::dialect::anthropic::usage::{UsageAcc, WireUsage as AnthropicUsage};
use crate::dialect::openai::usage::WireUsage as OpenAiUsage;
use crate::dialect::Usage;

pub(super) const ANTHROPIC: &str = "anthropic";
pub(super) const OPENAI: &str = "openai";

pub(super) fn untranslatable(field: impl Into<String>, to: &'static str) -> TranslateError {
    TranslateError::Untranslatable {
        field: field.into(),
        to,
    }
}

pub(super) fn invalid(field: impl Into<String>, expected: &'static str) -> TranslateError {
    TranslateError::Invalid {
        field: field.into(),
        expected,
    }
}

pub(super) fn parse_object(body: &[u8]) -> Result<Map<String, Value>, TranslateError> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(TranslateError::BadJson("not an object".to_owned())),
        Err(e) => Err(TranslateError::BadJson(e.to_string())),
    }
}

/// A JSON object.
pub(super) type Object = Map<String, Value>;

/// A request body as a map, and the translated body begun with the target's model.
pub(super) fn begin_request(body: &[u8], model: &str) -> Result<(Object, Object), TranslateError> {
    let req = parse_object(body)?;
    let mut out = Map::new();
    out.insert("model".to_owned(), Value::from(model));
    Ok((req, out))
}

pub(super) fn to_bytes(value: &Value) -> bytes::Bytes {
    // Serialising an in-memory `Value` cannot fail.
    bytes::Bytes::from(serde_json::to_vec(value).unwrap_or_default())
}

pub(super) fn as_str<'a>(value: &'a Value, field: &str) -> Result<&'a str, TranslateError> {
    value.as_str().ok_or_else(|| invalid(field, "a string"))
}

pub(super) fn as_array<'a>(
    value: &'a Value,
    field: &str,
) -> Result<&'a Vec<Value>, TranslateError> {
    value.as_array().ok_or_else(|| invalid(field, "an array"))
}

pub(super) fn as_object<'a>(
    value: &'a Value,
    field: &str,
) -> Result<&'a Map<String, Value>, TranslateError> {
    value.as_object().ok_or_else(|| invalid(field, "an object"))
}

// === Stop reasons ===

/// Anthropic `stop_reason` → OpenAI `finish_reason`.
pub(super) fn finish_reason(stop_reason: &str) -> Result<&'static str, TranslateError> {
    Ok(match stop_reason {
        "end_turn" | "stop_sequence" => "stop",
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        // pause_turn: a server-tool loop to resume, which requests never ask for here.
        _ => return Err(untranslatable(format!("stop_reason={stop_reason}"), OPENAI)),
    })
}

/// OpenAI `finish_reason` → Anthropic `stop_reason`; `stop` with tool calls
/// is `tool_use` (some compatible servers say `stop` there, and Anthropic
/// clients loop on `tool_use`).
pub(super) fn stop_reason(
    finish_reason: &str,
    has_tool_calls: bool,
) -> Result<&'static str, TranslateError> {
    Ok(match finish_reason {
        "stop" if has_tool_calls => "tool_use",
        "stop" => "end_turn",
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        "content_filter" => "refusal",
        _ => {
            return Err(untranslatable(
                format!("finish_reason={finish_reason}"),
                ANTHROPIC,
            ))
        }
    })
}

// === Reasoning ===

/// Anthropic `thinking.budget_tokens` → OpenAI `reasoning_effort`.
pub(super) fn effort_for_budget(budget: u64) -> &'static str {
    match budget {
        0..2048 => "low",
        2048..4096 => "medium",
        _ => "high",
    }
}

/// OpenAI `reasoning_effort` → Anthropic `thinking.budget_tokens` (`None`:
/// no thinking).
pub(super) fn budget_for_effort(effort: &str) -> Result<Option<u64>, TranslateError> {
    Ok(match effort {
        "none" | "minimal" => None,
        "low" => Some(1024),
        "medium" => Some(2048),
        "high" => Some(4096),
        _ => {
            return Err(untranslatable(
                format!("reasoning_effort={effort}"),
                ANTHROPIC,
            ))
        }
    })
}

// === Usage ===

/// An OpenAI `usage` object, normalised (`None` when absent or unreadable).
pub(super) fn usage_from_openai(value: Option<&Value>) -> Option<Usage> {
    let value = value.filter(|v| v.is_object())?;
    OpenAiUsage::deserialize(value).ok().map(|u| u.usage())
}

/// An Anthropic `usage` object applied over `acc` (cumulative fields: the
/// last non-null value wins).
pub(super) fn apply_anthropic_usage(acc: &mut UsageAcc, value: Option<&Value>) {
    if let Some(usage) = value
        .filter(|v| v.is_object())
        .and_then(|v| AnthropicUsage::deserialize(v).ok())
    {
        acc.apply(&usage);
    }
}

/// Reasoning tokens of an OpenAI usage, for Anthropic's breakdown.
pub(super) fn openai_reasoning_tokens(value: Option<&Value>) -> Option<u64> {
    value?
        .get("completion_tokens_details")?
        .get("reasoning_tokens")?
        .as_u64()
}

/// Thinking tokens of an Anthropic usage, for OpenAI's breakdown.
pub(super) fn anthropic_thinking_tokens(value: Option<&Value>) -> Option<u64> {
    value?
        .get("output_tokens_details")?
        .get("thinking_tokens")?
        .as_u64()
}

/// `usage` as Anthropic writes it (`input_tokens` without cache reads and
/// writes), in the API's field order.
#[derive(Serialize)]
pub(super) struct AnthropicUsageOut {
    input_tokens: u64,
    cache_creation_input_tokens: u64,
    cache_read_input_tokens: u64,
    output_tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_tokens_details: Option<ThinkingTokens>,
}

#[derive(Serialize)]
struct ThinkingTokens {
    thinking_tokens: u64,
}

/// `usage` in Anthropic's shape; a thinking breakdown only when there was
/// thinking (OpenAI reports `reasoning_tokens: 0` for every answer).
pub(super) fn anthropic_usage(usage: &Usage, thinking_tokens: Option<u64>) -> AnthropicUsageOut {
    AnthropicUsageOut {
        input_tokens: usage.input_tokens,
        cache_creation_input_tokens: usage.cache_creation_input_tokens,
        cache_read_input_tokens: usage.cache_read_input_tokens,
        output_tokens: usage.output_tokens,
        output_tokens_details: thinking_tokens
            .filter(|n| *n > 0)
            .map(|thinking_tokens| ThinkingTokens { thinking_tokens }),
    }
}

/// `usage` as OpenAI writes it (`prompt_tokens` with cache reads and writes).
pub(super) fn openai_usage(usage: &Usage, reasoning_tokens: Option<u64>) -> Value {
    let prompt = usage.total_input();
    let mut details = Map::new();
    details.insert(
        "cached_tokens".to_owned(),
        Value::from(usage.cache_read_input_tokens),
    );
    if usage.cache_creation_input_tokens > 0 {
        details.insert(
            "cache_write_tokens".to_owned(),
            Value::from(usage.cache_creation_input_tokens),
        );
    }
    let mut out = json!({
        "prompt_tokens": prompt,
        "completion_tokens": usage.output_tokens,
        "total_tokens": prompt.saturating_add(usage.output_tokens),
        "prompt_tokens_details": details,
    });
    if let (Some(reasoning), Some(map)) = (reasoning_tokens, out.as_object_mut()) {
        map.insert(
            "completion_tokens_details".to_owned(),
            json!({"reasoning_tokens": reasoning}),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn effort_and_budget_round_trip() {
        for effort in ["low", "medium", "high"] {
            let budget = budget_for_effort(effort).unwrap().unwrap();
            assert_eq!(effort_for_budget(budget), effort);
        }
        assert_eq!(budget_for_effort("minimal").unwrap(), None);
        assert!(budget_for_effort("xhigh").is_err());
        assert_eq!(effort_for_budget(32_000), "high");
    }

    #[test]
    fn usage_keeps_cache_tokens_apart() {
        let openai = json!({"prompt_tokens": 100, "completion_tokens": 7,
            "prompt_tokens_details": {"cached_tokens": 60, "cache_write_tokens": 30}});
        let usage = usage_from_openai(Some(&openai)).unwrap();
        assert_eq!(
            serde_json::to_value(anthropic_usage(&usage, Some(0))).unwrap(),
            json!({"input_tokens": 10, "cache_creation_input_tokens": 30,
                "cache_read_input_tokens": 60, "output_tokens": 7})
        );
        let back = openai_usage(&usage, None);
        assert_eq!(back["prompt_tokens"], 100);
        assert_eq!(back["total_tokens"], 107);
        assert_eq!(back["prompt_tokens_details"]["cached_tokens"], 60);
    }
}
