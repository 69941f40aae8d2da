//! Anthropic usage: the wire `usage` object (also OpenRouter's `/messages`
//! skin, which adds `cost`), folded into [`Usage`]; `cache_creation`'s 5 m /
//! 1 h split kept.

use std::borrow::Cow;

use serde::Deserialize;

use crate::dialect::json::{lenient_cost, lenient_u64, JsonBody};
use crate::dialect::usage::{Iteration, JsonSummary, Usage};

/// Usage, model and id of a non-streamed `Message`. `None` when the body is
/// not a JSON object with a `usage` object (an error body, for instance).
pub fn from_json(body: &[u8]) -> Option<JsonSummary> {
    let body: JsonBody<'_, WireUsage> = serde_json::from_slice(body).ok()?;
    let mut acc = UsageAcc::default();
    let usage = body.usage?;
    acc.apply(&usage);
    Some(JsonSummary {
        usage: acc.usage(),
        model: body.model.map(Cow::into_owned),
        id: body.id.map(Cow::into_owned),
        iterations: usage.iterations(),
    })
}

/// Anthropic usage fields as last reported (cumulative: last value wins).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct UsageAcc {
    input: Option<u64>,
    output: Option<u64>,
    cache_creation: Option<u64>,
    cache_read: Option<u64>,
    ephemeral_5m: Option<u64>,
    ephemeral_1h: Option<u64>,
    cost_nusd: Option<u64>,
    fast: Option<bool>,
    us_only: Option<bool>,
}

impl UsageAcc {
    /// Overwrites every field present and non-null in `u`.
    pub(crate) fn apply(&mut self, u: &WireUsage) {
        fn over(slot: &mut Option<u64>, value: Option<u64>) {
            if value.is_some() {
                *slot = value;
            }
        }
        over(&mut self.input, u.input_tokens);
        over(&mut self.output, u.output_tokens);
        over(&mut self.cache_creation, u.cache_creation_input_tokens);
        over(&mut self.cache_read, u.cache_read_input_tokens);
        if let Some(cc) = &u.cache_creation {
            over(&mut self.ephemeral_5m, cc.ephemeral_5m_input_tokens);
            over(&mut self.ephemeral_1h, cc.ephemeral_1h_input_tokens);
        }
        over(&mut self.cost_nusd, u.cost);
        if let Some(speed) = &u.speed {
            self.fast = Some(speed == "fast");
        }
        if let Some(geo) = &u.inference_geo {
            self.us_only = Some(geo == "us");
        }
    }

    pub(crate) fn usage(&self) -> Usage {
        // The total, or failing that the sum of the breakdown; the 1 h part
        // never exceeds the total (no breakdown: everything bills at 5 m).
        let cache_creation = self.cache_creation.unwrap_or_else(|| {
            self.ephemeral_5m
                .unwrap_or(0)
                .saturating_add(self.ephemeral_1h.unwrap_or(0))
        });
        Usage {
            input_tokens: self.input.unwrap_or(0),
            output_tokens: self.output.unwrap_or(0),
            cache_creation_input_tokens: cache_creation,
            cache_creation_1h_input_tokens: self.ephemeral_1h.unwrap_or(0).min(cache_creation),
            cache_read_input_tokens: self.cache_read.unwrap_or(0),
            reported_cost_nusd: self.cost_nusd,
            fast: self.fast.unwrap_or(false),
            us_only: self.us_only.unwrap_or(false),
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct MessageStart<'a> {
    #[serde(borrow)]
    pub(crate) message: Option<MessageHead<'a>>,
}

#[derive(Deserialize)]
pub(crate) struct MessageHead<'a> {
    #[serde(borrow)]
    pub(crate) id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub(crate) model: Option<Cow<'a, str>>,
    pub(crate) usage: Option<WireUsage>,
}

#[derive(Deserialize)]
pub(crate) struct MessageDelta {
    pub(crate) usage: Option<WireUsage>,
}

/// Anthropic `usage` (also OpenRouter's `/messages` skin, which adds `cost`).
#[derive(Deserialize)]
pub(crate) struct WireUsage {
    #[serde(default, deserialize_with = "lenient_u64")]
    input_tokens: Option<u64>,
    #[serde(default, deserialize_with = "lenient_u64")]
    output_tokens: Option<u64>,
    #[serde(default, deserialize_with = "lenient_u64")]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default, deserialize_with = "lenient_u64")]
    cache_read_input_tokens: Option<u64>,
    cache_creation: Option<CacheCreation>,
    #[serde(default, deserialize_with = "lenient_cost")]
    cost: Option<u64>,
    /// `standard` / `fast`: the speed billed.
    #[serde(default)]
    speed: Option<String>,
    /// `global` / `us`: where inference ran (US-only bills ×1.1).
    #[serde(default)]
    inference_geo: Option<String>,
    /// Beta: each billed step, with its own model and tokens.
    #[serde(default)]
    iterations: Option<Vec<WireIteration>>,
}

/// One `usage.iterations[]` entry.
#[derive(Deserialize)]
pub(crate) struct WireIteration {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(flatten)]
    usage: Box<WireUsage>,
}

impl WireUsage {
    /// Its iterations, each folded like a top-level usage.
    pub(crate) fn iterations(&self) -> Vec<Iteration> {
        self.iterations
            .iter()
            .flatten()
            .map(|it| {
                let mut acc = UsageAcc::default();
                acc.apply(&it.usage);
                Iteration {
                    kind: it.kind.clone().unwrap_or_default(),
                    model: it.model.clone(),
                    usage: acc.usage(),
                }
            })
            .collect()
    }
}

#[derive(Deserialize)]
struct CacheCreation {
    #[serde(default, deserialize_with = "lenient_u64")]
    ephemeral_5m_input_tokens: Option<u64>,
    #[serde(default, deserialize_with = "lenient_u64")]
    ephemeral_1h_input_tokens: Option<u64>,
}
