//! Wire formats, and nothing else: what an Anthropic or OpenAI-compatible
//! request, stream, usage block, error body or header looks like.
//!
//! Pure code (no pingora, sled or tokio; `tests/layout.rs` keeps it so).
//! One folder per dialect (`anthropic/`, `openai/`), each with the same
//! parts: usage, stream (what the events say), assemble (a stream folded
//! into the complete message), replay (a message re-synthesised as the
//! provider's own stream), error (bodies, stream error events, types per
//! class) and its headers. The drivers here ([`tap::StreamTap`],
//! [`assemble::Assembler`], [`replay::replay`]) are generic over the
//! dialect; [`Dialect`] dispatches the rest.
//!
//! The exchange carries the client's dialect and the route the upstream's;
//! when they differ, [`translate`] carries requests, answers, streams and
//! errors across.

pub mod anthropic;
pub mod assemble;
pub(crate) mod emit;
pub(crate) mod json;
pub mod openai;
pub mod replay;
pub mod request;
pub mod sse;
pub mod tap;
pub mod translate;
pub mod usage;

#[cfg(test)]
mod tests;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use assemble::Assembler;
pub use replay::{replay, ReplayError};
pub use tap::{usage_from_json, JsonSummary, StreamTap};
pub use usage::{Iteration, Usage};

/// The wire dialect a client or an upstream speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dialect {
    /// Anthropic Messages API (`/v1/messages`).
    Anthropic,
    /// OpenAI chat completions and compatible upstreams (OpenRouter, local models).
    #[serde(rename = "openai")]
    OpenAi,
}

/// What kind of error a response reports, independent of the dialect that
/// spells it (each dialect maps a class to its own `error.type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// The request is malformed or not allowed as sent.
    InvalidRequest,
    /// No or a wrong credential.
    Authentication,
    /// A credential that may not do this.
    Permission,
    /// No such endpoint.
    NotFound,
    /// The request body is over the limit.
    TooLarge,
    /// Too many requests or tokens.
    RateLimit,
    /// The upstream did not answer in time.
    Timeout,
    /// Something failed on the serving side.
    Server,
    /// A budget cannot pay for the request.
    Budget,
    /// The request collides with one still running (an idempotency key in use).
    Conflict,
}

impl Dialect {
    /// The name used in config files and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::Anthropic => "anthropic",
            Dialect::OpenAi => "openai",
        }
    }

    /// The header carrying the provider's request id.
    pub fn request_id_header(self) -> &'static str {
        match self {
            Dialect::Anthropic => anthropic::REQUEST_ID,
            Dialect::OpenAi => openai::REQUEST_ID,
        }
    }

    /// The header the provider key goes in.
    pub fn auth_header(self) -> &'static str {
        match self {
            Dialect::Anthropic => anthropic::X_API_KEY,
            Dialect::OpenAi => openai::AUTHORIZATION,
        }
    }

    /// The value of [`Dialect::auth_header`] for `key`.
    pub fn auth_value(self, key: &str) -> String {
        match self {
            Dialect::Anthropic => key.to_owned(),
            Dialect::OpenAi => format!("Bearer {key}"),
        }
    }

    /// The `error.type` this dialect uses for `class`.
    pub fn error_type(self, class: ErrorClass) -> &'static str {
        match self {
            Dialect::Anthropic => anthropic::error::error_type(class),
            Dialect::OpenAi => openai::error::error_type(class),
        }
    }

    /// An error body in this dialect's shape (`code`: OpenAI's `error.code`;
    /// `request_id`: Anthropic's `request_id`).
    pub fn error_body(
        self,
        error_type: &str,
        code: &str,
        message: &str,
        request_id: &str,
    ) -> Bytes {
        match self {
            Dialect::Anthropic => anthropic::error::body(error_type, message, request_id),
            Dialect::OpenAi => openai::error::body(error_type, code, message),
        }
    }

    /// The stream event that ends a stream that cannot go on.
    pub fn error_event(self, error_type: &str, message: &str) -> Bytes {
        match self {
            Dialect::Anthropic => anthropic::error::event(error_type, message),
            Dialect::OpenAi => openai::error::event(error_type, message),
        }
    }

    /// Whether a complete message stopped at its output bound (Anthropic
    /// `stop_reason: "max_tokens"`, OpenAI `finish_reason: "length"` in any
    /// choice). Unreadable → true (the caller then does not cache it).
    pub fn stopped_at_limit(self, message: &[u8]) -> bool {
        let Ok(serde_json::Value::Object(m)) = serde_json::from_slice(message) else {
            return true;
        };
        match self {
            Dialect::Anthropic => anthropic::stopped_at_limit(&m),
            Dialect::OpenAi => openai::stopped_at_limit(&m),
        }
    }
}

/// The error type a provider's error body names: `error.type`, else
/// `error.code` (both dialects put the error under `error`).
pub fn provider_error_type(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let err = v.get("error")?;
    err.get("type")
        .and_then(|t| t.as_str())
        .map(str::to_string)
        .or_else(|| err.get("code").map(|c| c.to_string()))
}
