//! OpenAI-compatible usage (`prompt_tokens`, `completion_tokens`,
//! `prompt_tokens_details`, OpenRouter's `cost`) folded into [`Usage`].

use std::borrow::Cow;

use serde::Deserialize;

use crate::dialect::json::{lenient_cost, lenient_u64, JsonBody};
use crate::dialect::usage::{JsonSummary, Usage};

/// Usage, model and id of a non-streamed `chat.completion`. `None` when the
/// body has no `usage` object.
pub fn from_json(body: &[u8]) -> Option<JsonSummary> {
    let body: JsonBody<'_, WireUsage> = serde_json::from_slice(body).ok()?;
    Some(JsonSummary {
        usage: body.usage?.usage(),
        model: body.model.map(Cow::into_owned),
        id: body.id.map(Cow::into_owned),
        iterations: Vec::new(),
    })
}

#[derive(Deserialize)]
pub(crate) struct WireUsage {
    #[serde(default, deserialize_with = "lenient_u64")]
    prompt_tokens: Option<u64>,
    #[serde(default, deserialize_with = "lenient_u64")]
    completion_tokens: Option<u64>,
    prompt_tokens_details: Option<PromptTokensDetails>,
    /// OpenRouter: what it charged, in USD.
    #[serde(default, deserialize_with = "lenient_cost")]
    cost: Option<u64>,
}

#[derive(Deserialize)]
pub(crate) struct PromptTokensDetails {
    #[serde(default, deserialize_with = "lenient_u64")]
    cached_tokens: Option<u64>,
    #[serde(default, deserialize_with = "lenient_u64")]
    cache_write_tokens: Option<u64>,
}

impl WireUsage {
    pub(crate) fn usage(&self) -> Usage {
        let details = self.prompt_tokens_details.as_ref();
        let mut usage = split_input(
            self.prompt_tokens.unwrap_or(0),
            details.and_then(|d| d.cached_tokens).unwrap_or(0),
            details.and_then(|d| d.cache_write_tokens).unwrap_or(0),
            self.completion_tokens.unwrap_or(0),
        );
        usage.reported_cost_nusd = self.cost;
        usage
    }
}

/// OpenAI's input total counts cache reads and cache writes too: the
/// uncached rest is what bills at the input rate.
pub(crate) fn split_input(total_input: u64, cached: u64, written: u64, output: u64) -> Usage {
    Usage {
        input_tokens: total_input.saturating_sub(cached).saturating_sub(written),
        output_tokens: output,
        cache_creation_input_tokens: written,
        cache_creation_1h_input_tokens: 0,
        cache_read_input_tokens: cached,
        reported_cost_nusd: None,
        fast: false,
        us_only: false,
    }
}
