//! The worst case a request can cost, known before it is sent.
//!
//! Input tokens are bounded by the body's length in bytes: a token of every
//! tokenizer tollgate meters covers at least one byte of text, and the
//! request JSON (keys, quotes, escapes, base64 images) is never shorter than
//! the text it encodes. Tool definitions get an allowance on top for the
//! system prompt the provider adds for tool use. Output is bounded by
//! `max_tokens`; a request without one gets the configured default, which
//! is also sent upstream so the bound holds.

use std::sync::LazyLock;

use memchr::memmem::Finder;

use crate::dialect::Usage;
use crate::meter::prices::PriceTable;

/// The keys and values [`estimate`] looks for in a body, each searcher
/// built once: building one (`memmem::find` does, per call) cost more
/// than searching a typical request with it.
struct Needles {
    tools: Finder<'static>,
    cache_control: Finder<'static>,
    one_hour: Finder<'static>,
    speed: Finder<'static>,
    fast: Finder<'static>,
    inference_geo: Finder<'static>,
    us: Finder<'static>,
}

static NEEDLES: LazyLock<Needles> = LazyLock::new(|| Needles {
    tools: Finder::new(b"\"tools\""),
    cache_control: Finder::new(b"\"cache_control\""),
    one_hour: Finder::new(b"\"1h\""),
    speed: Finder::new(b"\"speed\""),
    fast: Finder::new(b"\"fast\""),
    inference_geo: Finder::new(b"\"inference_geo\""),
    us: Finder::new(b"\"us\""),
});

/// Tokens the provider adds when a request defines tools (Anthropic
/// documents 313–346 for its tool-use system prompt; rounded up).
const TOOL_PROMPT_ALLOWANCE: u64 = 1024;

/// What a request can cost at most.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Estimate {
    /// Upper bound of the input tokens.
    pub input_tokens: u64,
    /// A typical token count (input ≈ bytes / 4, plus the output bound),
    /// what rate limits charge before the real count is known.
    pub typical_tokens: u64,
    /// The output bound reserved, per choice.
    pub max_tokens: u64,
    /// Choices generated (OpenAI `n`), each up to `max_tokens`.
    pub choices: u64,
    /// Worst-case cost of the input, nano-USD.
    pub input_nusd: u64,
    /// Output price at this input size, nano-USD per million tokens.
    pub output_rate: u64,
    /// Worst-case cost of the whole call, nano-USD.
    pub worst_nusd: u64,
}

impl Estimate {
    /// The worst case with output bounded by `max_tokens`.
    pub fn with_max_tokens(&self, max_tokens: u64) -> Estimate {
        Estimate {
            max_tokens,
            worst_nusd: self.input_nusd.saturating_add(output_cost(
                self.output_rate,
                max_tokens.saturating_mul(self.choices),
            )),
            typical_tokens: self
                .typical_tokens
                .saturating_sub(self.max_tokens)
                .saturating_add(max_tokens),
            ..*self
        }
    }

    /// The largest output bound (per choice) whose worst case fits in
    /// `available`; 0 when not even the input fits.
    pub fn affordable_max_tokens(&self, available: u64) -> u64 {
        if self.input_nusd > available {
            return 0;
        }
        if self.output_rate == 0 {
            return self.max_tokens;
        }
        let left = u128::from(available - self.input_nusd);
        let per_token = u128::from(self.output_rate) * u128::from(self.choices.max(1));
        let tokens = left * 1_000_000 / per_token;
        u64::try_from(tokens)
            .unwrap_or(u64::MAX)
            .min(self.max_tokens)
    }
}

/// Output tokens' cost, rounded up.
pub fn output_cost(rate: u64, tokens: u64) -> u64 {
    let scaled = u128::from(rate) * u128::from(tokens);
    u64::try_from(scaled.div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

/// The worst case of a request for `model` with `body`.
pub fn estimate(
    prices: &PriceTable,
    model: &str,
    body: &[u8],
    max_tokens: u64,
    choices: u64,
) -> Estimate {
    let choices = choices.max(1);
    let mut input = body.len() as u64;
    let n = &*NEEDLES;
    let has = |needle: &Finder<'_>| needle.find(body).is_some();
    if has(&n.tools) {
        input += TOOL_PROMPT_ALLOWANCE;
    }
    // Input the request asks to cache may bill as cache writes, which cost
    // more than plain input: price it at the dearest rate it can reach.
    let caching = has(&n.cache_control);
    let one_hour = caching && has(&n.one_hour);
    // Fast mode and US-only inference bill every token at a premium.
    let fast = has(&n.speed) && has(&n.fast);
    let us_only = has(&n.inference_geo) && has(&n.us);
    let (price, _) = prices.price_or_fallback(model);
    let plain = Usage {
        input_tokens: input,
        fast,
        us_only,
        ..Usage::default()
    };
    let written = Usage {
        cache_creation_input_tokens: input,
        cache_creation_1h_input_tokens: if one_hour { input } else { 0 },
        fast,
        us_only,
        ..Usage::default()
    };
    let mut input_nusd = price.cost(&plain, false);
    if caching {
        input_nusd = input_nusd.max(price.cost(&written, false));
    }
    let output_rate =
        crate::meter::prices::premium_rate(price.rates_for(input).output, fast, us_only);
    let typical = (body.len() as u64).div_ceil(4).saturating_add(max_tokens);
    Estimate {
        input_tokens: input,
        typical_tokens: typical,
        max_tokens,
        choices,
        input_nusd,
        output_rate,
        worst_nusd: input_nusd
            .saturating_add(output_cost(output_rate, max_tokens.saturating_mul(choices))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worst_case_of_a_sonnet_request() {
        let prices = PriceTable::builtin();
        let body = br#"{"model":"claude-sonnet-4-5","max_tokens":1000,"messages":[{"role":"user","content":"hi"}]}"#;
        let e = estimate(&prices, "claude-sonnet-4-5", body, 1000, 1);
        assert_eq!(e.input_tokens, body.len() as u64);
        // $3 / MTok in, $15 / MTok out.
        assert_eq!(e.input_nusd, body.len() as u64 * 3_000);
        assert_eq!(e.worst_nusd, body.len() as u64 * 3_000 + 1000 * 15_000);
        // Clamp: what fits in the input cost plus 100 output tokens.
        assert_eq!(e.affordable_max_tokens(e.input_nusd + 100 * 15_000), 100);
        assert_eq!(e.affordable_max_tokens(e.input_nusd - 1), 0);
        assert_eq!(
            e.with_max_tokens(100).worst_nusd,
            e.input_nusd + 100 * 15_000
        );
    }

    #[test]
    fn caching_and_tools_raise_the_bound() {
        let prices = PriceTable::builtin();
        let plain = br#"{"messages":[{"role":"user","content":"hi"}]}"#;
        let cached = br#"{"messages":[{"role":"user","content":"hi","cache_control":{"type":"ephemeral","ttl":"1h"}}]}"#;
        let e = estimate(&prices, "claude-sonnet-4-5", cached, 0, 1);
        // 1 h writes at $6 / MTok.
        assert_eq!(e.input_nusd, cached.len() as u64 * 6_000);
        let tools = br#"{"tools":[],"messages":[]}"#;
        let t = estimate(&prices, "claude-sonnet-4-5", tools, 0, 1);
        assert_eq!(t.input_tokens, tools.len() as u64 + TOOL_PROMPT_ALLOWANCE);
        // Unknown models are priced by the (expensive) fallback.
        let u = estimate(&prices, "no-such-model", plain, 10, 1);
        assert_eq!(u.output_rate, 75_000_000_000);
        // n = 3 choices: three times the output bound; clamps per choice.
        let n = estimate(&prices, "claude-sonnet-4-5", plain, 100, 3);
        assert_eq!(n.worst_nusd, n.input_nusd + 300 * 15_000);
        assert_eq!(n.affordable_max_tokens(n.input_nusd + 150 * 15_000), 50);
        // Fast mode ×2 and US-only ×1.1 on every token.
        let fast = br#"{"speed":"fast","inference_geo":"us","messages":[]}"#;
        let f = estimate(&prices, "claude-opus-5-5", fast, 100, 1);
        assert_eq!(f.input_nusd, fast.len() as u64 * 4_000 * 22 / 10);
        assert_eq!(f.worst_nusd, f.input_nusd + 100 * 20_000 * 22 / 10);
    }
}
