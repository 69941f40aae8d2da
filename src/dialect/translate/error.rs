//! Upstream errors in the client's shape: error bodies (the HTTP status is
//! kept: both SDKs pick their exception class and retry policy from it)
//! and mid-stream error events.

use bytes::Bytes;
use serde_json::Value;

use crate::dialect::{Dialect, ErrorClass};

/// An upstream error in the client's dialect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TranslatedError {
    /// The HTTP status to answer with (the upstream's).
    pub status: u16,
    /// The client's error body.
    pub body: Bytes,
}

/// Translates an upstream error (`status`, `body` in the other dialect)
/// into `client`'s error body. `request_id` goes into Anthropic's
/// `request_id` (the upstream's id, or tollgate's own).
pub fn error(client: Dialect, status: u16, body: &[u8], request_id: &str) -> TranslatedError {
    let upstream = UpstreamError::parse(body);
    let message = upstream
        .message
        .unwrap_or_else(|| format!("the upstream answered HTTP {status}"));
    let kind = upstream.kind.unwrap_or_default();
    let error_type = match client {
        Dialect::Anthropic => anthropic_type(Some(status), &kind),
        Dialect::OpenAi => openai_type(Some(status), &kind),
    };
    TranslatedError {
        status,
        body: client.error_body(
            error_type,
            &kind_or(&kind, error_type),
            &message,
            request_id,
        ),
    }
}

fn kind_or(kind: &str, fallback: &str) -> String {
    if kind.is_empty() {
        fallback.to_owned()
    } else {
        kind.to_owned()
    }
}

/// The error event that ends a client's stream, from an upstream error
/// object (`{"type"|"code", "message"}`, OpenRouter's numeric `code` too).
pub(super) fn stream_event(client: Dialect, error: Option<&Value>) -> Bytes {
    let upstream = error.map(UpstreamError::from_value).unwrap_or_default();
    let message = upstream
        .message
        .unwrap_or_else(|| "the upstream stream failed".to_owned());
    let kind = upstream.kind.unwrap_or_default();
    let error_type = match client {
        Dialect::Anthropic => anthropic_type(upstream.status, &kind),
        Dialect::OpenAi => openai_type(upstream.status, &kind),
    };
    client.error_event(error_type, &message)
}

/// The event that ends a client's stream tollgate cannot go on with.
pub(super) fn local_event(client: Dialect, message: &str) -> Bytes {
    client.error_event(client.error_type(ErrorClass::Server), message)
}

/// What an upstream error body says, whichever dialect wrote it.
#[derive(Default)]
struct UpstreamError {
    /// `error.type`, else `error.code`, else OpenRouter's `metadata.error_type`.
    kind: Option<String>,
    message: Option<String>,
    /// OpenRouter's numeric `code` (an HTTP status).
    status: Option<u16>,
}

impl UpstreamError {
    fn parse(body: &[u8]) -> Self {
        match serde_json::from_slice::<Value>(body) {
            Ok(v) => v.get("error").map(Self::from_value).unwrap_or_default(),
            Err(_) => Self::default(),
        }
    }

    fn from_value(error: &Value) -> Self {
        let text = |v: Option<&Value>| {
            v.and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        let code = error.get("code");
        Self {
            kind: text(error.get("type"))
                .or_else(|| text(code))
                .or_else(|| text(error.get("metadata").and_then(|m| m.get("error_type")))),
            message: text(error.get("message")),
            status: code
                .and_then(Value::as_u64)
                .and_then(|c| u16::try_from(c).ok()),
        }
    }
}

/// The class of an error: by status when there is one, else by the
/// upstream's type word.
fn class(status: Option<u16>, kind: &str) -> ErrorClass {
    match status {
        Some(400 | 422) => ErrorClass::InvalidRequest,
        Some(401) => ErrorClass::Authentication,
        Some(403) => ErrorClass::Permission,
        Some(404) => ErrorClass::NotFound,
        Some(413) => ErrorClass::TooLarge,
        Some(429) => ErrorClass::RateLimit,
        Some(408 | 504) => ErrorClass::Timeout,
        Some(s) if s >= 500 => ErrorClass::Server,
        Some(s) if s >= 400 && s != 402 && s != 409 => ErrorClass::InvalidRequest,
        _ => match kind {
            "invalid_request_error" => ErrorClass::InvalidRequest,
            "authentication_error" | "invalid_api_key" => ErrorClass::Authentication,
            "permission_error" => ErrorClass::Permission,
            "not_found_error" => ErrorClass::NotFound,
            "request_too_large" => ErrorClass::TooLarge,
            "rate_limit_error" | "rate_limit_exceeded" | "requests" | "tokens" => {
                ErrorClass::RateLimit
            }
            "timeout_error" | "timeout" => ErrorClass::Timeout,
            _ => ErrorClass::Server,
        },
    }
}

/// Anthropic's `error.type`: its own words for overload, billing and
/// conflicts, which [`ErrorClass`] does not separate.
fn anthropic_type(status: Option<u16>, kind: &str) -> &'static str {
    match (status, kind) {
        (Some(529), _) | (_, "overloaded_error" | "provider_overloaded") => "overloaded_error",
        (Some(402), _) | (_, "billing_error" | "payment_required" | "insufficient_quota") => {
            "billing_error"
        }
        (Some(409), _) => "conflict_error",
        _ => Dialect::Anthropic.error_type(class(status, kind)),
    }
}

/// OpenAI's `error.type` (`insufficient_quota` for billing, as OpenAI says).
fn openai_type(status: Option<u16>, kind: &str) -> &'static str {
    match (status, kind) {
        (Some(402), _) | (_, "billing_error") => "insufficient_quota",
        (Some(409), _) => "invalid_request_error",
        _ => Dialect::OpenAi.error_type(class(status, kind)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn statuses_and_types() {
        assert_eq!(anthropic_type(Some(529), ""), "overloaded_error");
        assert_eq!(
            anthropic_type(None, "provider_overloaded"),
            "overloaded_error"
        );
        assert_eq!(anthropic_type(Some(429), "tokens"), "rate_limit_error");
        assert_eq!(anthropic_type(Some(402), ""), "billing_error");
        assert_eq!(anthropic_type(Some(418), ""), "invalid_request_error");
        assert_eq!(openai_type(Some(529), "overloaded_error"), "server_error");
        assert_eq!(openai_type(None, "rate_limit_error"), "requests");
        assert_eq!(openai_type(Some(401), ""), "invalid_request_error");
        let out = error(Dialect::Anthropic, 500, b"not json", "req_1");
        let v: Value = serde_json::from_slice(&out.body).unwrap();
        assert_eq!(v["error"]["type"], "api_error");
        assert_eq!(v["error"]["message"], "the upstream answered HTTP 500");
    }
}
