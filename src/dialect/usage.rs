//! Token usage of one call, normalised across dialects.

use serde::{Deserialize, Serialize};

/// Token counts of one call, in Anthropic's terms for every dialect:
/// `input_tokens` counts only *uncached* input, so the total input is
/// `input_tokens + cache_creation_input_tokens + cache_read_input_tokens`.
/// For OpenAI-compatible usage, `input_tokens = prompt_tokens - cached_tokens`,
/// `cache_read_input_tokens = cached_tokens` and
/// `cache_creation_input_tokens = cache_write_tokens` (OpenRouter).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Usage {
    /// Uncached input tokens.
    pub input_tokens: u64,
    /// Output tokens, thinking / reasoning tokens included.
    pub output_tokens: u64,
    /// All cache-write tokens (5 m + 1 h, or an unsplit total).
    pub cache_creation_input_tokens: u64,
    /// Of the cache writes, those with the 1-hour TTL (Anthropic's
    /// `cache_creation.ephemeral_1h_input_tokens`); the rest bill at the 5 m rate.
    pub cache_creation_1h_input_tokens: u64,
    /// Cache-read tokens.
    pub cache_read_input_tokens: u64,
    /// The cost the provider itself reported (OpenRouter `usage.cost`), in
    /// nano-USD; preferred over the price table when present.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reported_cost_nusd: Option<u64>,
    /// Billed in Anthropic's fast mode (`usage.speed: "fast"`): premium rates.
    #[serde(skip_serializing_if = "is_false")]
    pub fast: bool,
    /// Billed with US-only inference (Anthropic `usage.inference_geo: "us"`).
    #[serde(skip_serializing_if = "is_false")]
    pub us_only: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Usage {
    /// Tokens of every kind, input and output.
    pub fn total(&self) -> u64 {
        self.total_input().saturating_add(self.output_tokens)
    }

    /// Input tokens of every kind.
    pub fn total_input(&self) -> u64 {
        self.input_tokens
            .saturating_add(self.cache_creation_input_tokens)
            .saturating_add(self.cache_read_input_tokens)
    }
}

/// One billed step of an Anthropic turn (beta `usage.iterations[]`): a
/// sampling iteration, a server-side fallback, a compaction. Each is billed
/// at the model that ran it; with iterations, the turn is billed from them
/// rather than from the top-level fields.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Iteration {
    /// `message`, `fallback_message`, `compaction`, `advisor_message`.
    pub kind: String,
    /// The model that ran it (`None`: the response's).
    pub model: Option<String>,
    pub usage: Usage,
}

/// Usage, model and id of a non-streamed response.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JsonSummary {
    pub usage: Usage,
    pub model: Option<String>,
    pub id: Option<String>,
    /// Anthropic's `usage.iterations[]`, when the response has them.
    pub iterations: Vec<Iteration>,
}

/// What a stream has said so far, whatever its dialect.
#[derive(Debug, Default)]
pub(crate) struct StreamFacts {
    pub(crate) saw_usage: bool,
    pub(crate) complete: bool,
    pub(crate) error: Option<String>,
    pub(crate) model: Option<String>,
    pub(crate) id: Option<String>,
    /// Content events seen (Anthropic `content_block_delta`, OpenAI content
    /// chunks): each carries at least a token, so a lower bound of the
    /// output when the stream's own usage never comes.
    pub(crate) deltas: u64,
    /// Anthropic's `usage.iterations[]`, as last reported.
    pub(crate) iterations: Vec<Iteration>,
}
