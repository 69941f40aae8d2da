//! Provider dialects: what differs between Anthropic and OpenAI-compatible
//! upstreams (request model, usage fields, SSE events, error shapes).

use serde::{Deserialize, Serialize};

pub mod sse;

/// The wire dialect an upstream speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dialect {
    /// Anthropic Messages API (`/v1/messages`).
    Anthropic,
    /// OpenAI chat completions and compatible upstreams (OpenRouter, local models).
    #[serde(rename = "openai")]
    OpenAi,
}

impl Dialect {
    /// The name used in config files and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::Anthropic => "anthropic",
            Dialect::OpenAi => "openai",
        }
    }
}
