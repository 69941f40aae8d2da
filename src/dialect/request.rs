//! The request head: what every stage needs from a request body (model,
//! stream flag, output bound, choices, OpenAI's usage option), read in one
//! parse that validates the whole body but materialises only these fields;
//! and the one rewrite of the output bound.

use bytes::Bytes;
use serde::Deserialize;

use super::Dialect;

/// A body that could not be read or rewritten.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    /// Not JSON (the message says where).
    #[error("{0}")]
    BadJson(String),
    /// Re-encoding a rewritten body failed (not expected for JSON values).
    #[error("{0}")]
    Encode(String),
}

/// What the stages read from a request body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    /// The requested model (empty when the body names none).
    pub model: String,
    /// `"stream": true` (SDKs send `Accept: application/json` even for streams).
    pub stream: bool,
    /// The output bound: `max_tokens` or `max_completion_tokens`; the larger
    /// when both are sent (an upstream may honour either).
    pub max_tokens: Option<u64>,
    /// Which field carried the bound, if any.
    pub max_tokens_field: Option<&'static str>,
    /// Both `max_tokens` and `max_completion_tokens` were sent.
    pub both_bounds: bool,
    /// OpenAI `n` (at least 1): choices generated, each up to the bound.
    pub choices: u64,
    /// OpenAI `stream_options.include_usage: true`.
    pub wants_usage: bool,
    /// OpenAI: the body has a `stream_options` object.
    pub had_stream_options: bool,
    /// Responses API: `store: false` and no `previous_response_id` or
    /// `conversation`, so the answer depends on the body alone.
    pub stateless: bool,
}

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow, default)]
    model: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    /// The Responses API's bound.
    #[serde(default)]
    max_output_tokens: Option<u64>,
    #[serde(default)]
    n: Option<u64>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    store: Option<bool>,
    #[serde(default)]
    previous_response_id: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    conversation: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

/// Reads the head of a messages or chat-completions body.
pub fn parse_head(body: &[u8]) -> Result<RequestHead, RequestError> {
    // JSON is UTF-8 (RFC 8259 §8.1), and serde_json checks only the strings
    // it materialises: the fields it skips (a message's text) would reach
    // the provider, which refuses them, malformed.
    let text = std::str::from_utf8(body).map_err(|e| {
        RequestError::BadJson(format!(
            "the body is not valid UTF-8 (at byte {})",
            e.valid_up_to()
        ))
    })?;
    let head: Head<'_> =
        serde_json::from_str(text).map_err(|e| RequestError::BadJson(e.to_string()))?;
    let max_tokens_field = if head.max_tokens.is_some() {
        Some("max_tokens")
    } else if head.max_completion_tokens.is_some() {
        Some("max_completion_tokens")
    } else if head.max_output_tokens.is_some() {
        Some("max_output_tokens")
    } else {
        None
    };
    Ok(RequestHead {
        model: head.model.map(|m| m.into_owned()).unwrap_or_default(),
        stream: head.stream.unwrap_or(false),
        max_tokens: match (head.max_tokens, head.max_completion_tokens) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
        .or(head.max_output_tokens),
        max_tokens_field,
        both_bounds: head.max_tokens.is_some() && head.max_completion_tokens.is_some(),
        choices: head.n.unwrap_or(1).max(1),
        wants_usage: head
            .stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
        had_stream_options: head.stream_options.is_some(),
        stateless: head.store == Some(false)
            && head.previous_response_id.is_none()
            && head.conversation.is_none(),
    })
}

impl Dialect {
    /// The field an output bound goes in when the client sent none:
    /// `max_tokens`, but `max_completion_tokens` for OpenAI itself, whose
    /// reasoning models refuse `max_tokens`.
    pub fn default_bound_field(self, provider: &str) -> &'static str {
        match self {
            Dialect::OpenAi if provider == "openai" => "max_completion_tokens",
            _ => "max_tokens",
        }
    }
}

/// The body with its output bound set to `n` in `field` (in both fields
/// when the client sent both). Re-serialises the body: only budgets that
/// clamp or must bound an open request get here.
pub fn set_output_bound(
    body: &[u8],
    n: u64,
    field: &str,
    both: bool,
) -> Result<Bytes, RequestError> {
    let mut value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| RequestError::BadJson(e.to_string()))?;
    if let Some(obj) = value.as_object_mut() {
        put_bound(obj, n, field, both);
    }
    encode(&value)
}

fn put_bound(
    obj: &mut serde_json::Map<String, serde_json::Value>,
    n: u64,
    field: &str,
    both: bool,
) {
    if both {
        obj.insert("max_tokens".into(), serde_json::Value::from(n));
        obj.insert("max_completion_tokens".into(), serde_json::Value::from(n));
    } else {
        obj.insert(field.to_string(), serde_json::Value::from(n));
    }
}

fn encode(value: &serde_json::Value) -> Result<Bytes, RequestError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| RequestError::Encode(e.to_string()))
}

/// The body sent to a routed target of the client's own dialect: `model`
/// replaced, and the output bound set to `bound` (`(n, field, both)`, as
/// [`set_output_bound`]) when a target caps it. One re-serialisation.
pub fn retarget(
    body: &[u8],
    model: &str,
    bound: Option<(u64, &str, bool)>,
) -> Result<Bytes, RequestError> {
    let mut value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| RequestError::BadJson(e.to_string()))?;
    let Some(obj) = value.as_object_mut() else {
        return Err(RequestError::BadJson(
            "the body is not a JSON object".into(),
        ));
    };
    obj.insert("model".into(), serde_json::Value::from(model));
    if let Some((n, field, both)) = bound {
        put_bound(obj, n, field, both);
    }
    encode(&value)
}

/// A body whose `stream` field disagrees with what its endpoint serves
/// (the gateway surface's `/chat` answers JSON, `/chat/stream` SSE).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StreamField {
    /// Not a JSON object.
    #[error("{0}")]
    BadJson(String),
    /// `stream` is neither a boolean nor null.
    #[error("\"stream\" must be a boolean")]
    NotBoolean,
    /// `stream` asks for the other kind of answer.
    #[error("the body asks for \"stream\": {sent}, which this endpoint does not serve")]
    Conflict {
        /// What the body asked for.
        sent: bool,
    },
}

/// The body for an endpoint that always streams (`want`) or never does:
/// unchanged when its `stream` field agrees (absent or null counts as
/// `false`), with `"stream": true` added when a streaming endpoint got a
/// body without it (one re-serialisation), refused when it disagrees.
pub fn require_stream(body: Bytes, want: bool) -> Result<Bytes, StreamField> {
    #[derive(Deserialize)]
    struct StreamOnly {
        #[serde(default)]
        stream: Option<serde_json::Value>,
    }
    let bad = |e: serde_json::Error| StreamField::BadJson(e.to_string());
    // A struct would also deserialise from a JSON array.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(StreamField::BadJson("the body is not a JSON object".into()));
    }
    // Only `stream` is materialised; the rest is checked to be JSON.
    let head: StreamOnly = serde_json::from_slice(&body).map_err(bad)?;
    let sent = match head.stream {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Bool(b)) => Some(b),
        Some(_) => return Err(StreamField::NotBoolean),
    };
    match (sent, want) {
        (Some(sent), want) if sent != want => Err(StreamField::Conflict { sent }),
        (Some(_), _) | (None, false) => Ok(body),
        (None, true) => {
            let mut value: serde_json::Value = serde_json::from_slice(&body).map_err(bad)?;
            let Some(obj) = value.as_object_mut() else {
                return Err(StreamField::BadJson("the body is not a JSON object".into()));
            };
            obj.insert("stream".into(), serde_json::Value::Bool(true));
            encode(&value).map_err(|e| StreamField::BadJson(e.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn head_reads_bounds_choices_and_usage_option() {
        let h = parse_head(br#"{"model":"m","stream":true,"max_tokens":10,"max_completion_tokens":20,"n":3,"stream_options":{"include_usage":true},"messages":[]}"#).unwrap();
        assert_eq!(h.model, "m");
        assert!(h.stream && h.both_bounds && h.wants_usage && h.had_stream_options);
        assert_eq!(
            (h.max_tokens, h.max_tokens_field, h.choices),
            (Some(20), Some("max_tokens"), 3)
        );
        let h = parse_head(br#"{"max_completion_tokens":5,"n":0}"#).unwrap();
        assert_eq!(
            (h.max_tokens, h.max_tokens_field, h.choices),
            (Some(5), Some("max_completion_tokens"), 1)
        );
        assert!(matches!(parse_head(b"{"), Err(RequestError::BadJson(_))));
        // Invalid UTF-8 in a string the head does not read.
        assert_eq!(
            parse_head(b"{\"model\":\"m\",\"messages\":[\"a\xffb\"]}"),
            Err(RequestError::BadJson(
                "the body is not valid UTF-8 (at byte 27)".into()
            ))
        );
    }

    #[test]
    fn require_stream_adds_keeps_or_refuses() {
        let body = |s: &str| Bytes::from(s.to_string());
        // A streaming endpoint: added when absent or null, kept when true.
        let out = require_stream(body(r#"{"model":"m","messages":[]}"#), true).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["stream"], true);
        assert_eq!(v["model"], "m");
        let out = require_stream(body(r#"{"model":"m","stream":null}"#), true).unwrap();
        assert!(parse_head(&out).unwrap().stream);
        let sent = body(r#"{"model":"m",  "stream":true}"#);
        assert_eq!(require_stream(sent.clone(), true).unwrap(), sent, "as sent");
        // A non-streaming endpoint never rewrites.
        let sent = body(r#"{"model":"m"}"#);
        assert_eq!(require_stream(sent.clone(), false).unwrap(), sent);
        let sent = body(r#"{"model":"m","stream":false}"#);
        assert_eq!(require_stream(sent.clone(), false).unwrap(), sent);
        // Disagreements and junk.
        assert_eq!(
            require_stream(body(r#"{"stream":true}"#), false),
            Err(StreamField::Conflict { sent: true })
        );
        assert_eq!(
            require_stream(body(r#"{"stream":false}"#), true),
            Err(StreamField::Conflict { sent: false })
        );
        assert_eq!(
            require_stream(body(r#"{"stream":"yes"}"#), true),
            Err(StreamField::NotBoolean)
        );
        for junk in ["[1]", "[]", " 1", ""] {
            assert!(
                matches!(
                    require_stream(body(junk), false),
                    Err(StreamField::BadJson(_))
                ),
                "{junk}"
            );
        }
        assert!(matches!(
            require_stream(body("{"), false),
            Err(StreamField::BadJson(_))
        ));
    }

    #[test]
    fn retarget_sets_the_model_and_caps_the_bound() {
        let out = retarget(
            br#"{"model":"fast","max_tokens":900,"messages":[]}"#,
            "claude-x",
            Some((100, "max_tokens", false)),
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            (v["model"].as_str(), v["max_tokens"].as_u64()),
            (Some("claude-x"), Some(100))
        );
        assert!(v["messages"].is_array());
        let out = retarget(br#"{"model":"fast","max_tokens":9}"#, "m2", None).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            (v["model"].as_str(), v["max_tokens"].as_u64()),
            (Some("m2"), Some(9))
        );
        assert!(matches!(
            retarget(b"[1]", "m", None),
            Err(RequestError::BadJson(_))
        ));
    }

    #[test]
    fn output_bound_rewrite() {
        let out = set_output_bound(
            br#"{"max_tokens":1,"max_completion_tokens":2}"#,
            7,
            "max_tokens",
            true,
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            (
                v["max_tokens"].as_u64(),
                v["max_completion_tokens"].as_u64()
            ),
            (Some(7), Some(7))
        );
        assert_eq!(
            Dialect::OpenAi.default_bound_field("openai"),
            "max_completion_tokens"
        );
        assert_eq!(
            Dialect::OpenAi.default_bound_field("openrouter"),
            "max_tokens"
        );
        assert_eq!(
            Dialect::Anthropic.default_bound_field("anthropic"),
            "max_tokens"
        );
    }
}
