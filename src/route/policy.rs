//! How an alias orders its targets (`ordered`, `cheapest`, `fastest`), and
//! the worst case the budget reserves for a plan.

use std::time::Duration;

use crate::budget::estimate::{estimate, Estimate};
use crate::meter::prices::PriceTable;

use super::Candidate;

/// An alias's policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Policy {
    /// Config order: the first healthy target.
    #[default]
    Ordered,
    /// Lowest worst-case cost for this request first (ties: config order).
    Cheapest,
    /// Lowest moving average of time to first token first; unmeasured
    /// targets before all measured ones, so they get measured (ties and
    /// unmeasured ones: config order).
    Fastest,
}

impl Policy {
    /// Parses `ordered`, `cheapest` or `fastest`.
    pub fn parse(s: &str) -> Option<Policy> {
        match s {
            "ordered" => Some(Policy::Ordered),
            "cheapest" => Some(Policy::Cheapest),
            "fastest" => Some(Policy::Fastest),
            _ => None,
        }
    }

    /// As config spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Ordered => "ordered",
            Policy::Cheapest => "cheapest",
            Policy::Fastest => "fastest",
        }
    }
}

/// What a request can cost, as far as routing needs to know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sizing<'a> {
    /// The client's request body (its length bounds the input tokens).
    pub body: &'a [u8],
    /// The request's output bound: its own `max_tokens`, else the default
    /// the proxy sends.
    pub max_tokens: u64,
    /// Choices generated (OpenAI `n`; 1 otherwise).
    pub choices: u64,
}

impl Candidate {
    /// The worst case of sending the request to this candidate: the budget
    /// module's estimate for its model, with its `max_tokens` cap applied.
    pub fn estimate(&self, prices: &PriceTable, s: &Sizing<'_>) -> Estimate {
        estimate(
            prices,
            &self.target.model,
            s.body,
            self.output_bound(s.max_tokens),
            s.choices,
        )
    }
}

/// Sorts `candidates` by `policy`; `ttft` gives a target's moving average.
/// The sort is stable, so ties keep config order.
pub fn order(
    policy: Policy,
    candidates: &mut [Candidate],
    prices: &PriceTable,
    sizing: &Sizing<'_>,
    ttft: impl Fn(&Candidate) -> Option<Duration>,
) {
    match policy {
        Policy::Ordered => {}
        Policy::Cheapest => {
            candidates.sort_by_cached_key(|c| c.estimate(prices, sizing).worst_nusd)
        }
        // `None` sorts before `Some`: unmeasured first.
        Policy::Fastest => candidates.sort_by_cached_key(|c| ttft(c)),
    }
}

/// The largest worst case among `candidates` (the budget reserves it, so
/// whichever answers fits); `None` for no candidates.
pub fn worst_case(
    candidates: &[Candidate],
    prices: &PriceTable,
    sizing: &Sizing<'_>,
) -> Option<Estimate> {
    candidates
        .iter()
        .map(|c| c.estimate(prices, sizing))
        .max_by_key(|e| e.worst_nusd)
}

#[cfg(test)]
mod tests {
    use super::super::testing::{sizing, BODY};
    use super::super::Target;
    use super::*;

    fn cand(t: &str, cap: Option<u64>) -> Candidate {
        Candidate {
            target: Target::parse(t).unwrap(),
            max_tokens: cap,
        }
    }

    fn names(c: &[Candidate]) -> Vec<String> {
        c.iter().map(|c| c.target.to_string()).collect()
    }

    #[test]
    fn cheapest_orders_by_worst_case_and_keeps_ties_in_order() {
        let prices = PriceTable::builtin();
        let mut c = vec![
            cand("anthropic/claude-opus-4-1", None),
            cand("a/claude-sonnet-4-5", None),
            cand("anthropic/claude-haiku-4-5", None),
            cand("b/claude-sonnet-4-5", None),
        ];
        order(Policy::Cheapest, &mut c, &prices, &sizing(), |_| None);
        assert_eq!(
            names(&c),
            [
                "anthropic/claude-haiku-4-5",
                "a/claude-sonnet-4-5",
                "b/claude-sonnet-4-5",
                "anthropic/claude-opus-4-1"
            ]
        );
    }

    #[test]
    fn a_max_tokens_cap_makes_a_target_cheaper() {
        let prices = PriceTable::builtin();
        // Opus capped at 10 output tokens beats Sonnet at 1000.
        let mut c = vec![
            cand("anthropic/claude-sonnet-4-5", None),
            cand("anthropic/claude-opus-4-1", Some(10)),
        ];
        order(Policy::Cheapest, &mut c, &prices, &sizing(), |_| None);
        assert_eq!(names(&c)[0], "anthropic/claude-opus-4-1");
    }

    #[test]
    fn fastest_puts_unmeasured_targets_first() {
        let prices = PriceTable::builtin();
        let mut c = vec![
            cand("a/slow", None),
            cand("a/fast", None),
            cand("a/new1", None),
            cand("a/new2", None),
        ];
        let ms = |c: &Candidate| match c.target.model.as_str() {
            "slow" => Some(Duration::from_millis(900)),
            "fast" => Some(Duration::from_millis(100)),
            _ => None,
        };
        order(Policy::Fastest, &mut c, &prices, &sizing(), ms);
        assert_eq!(names(&c), ["a/new1", "a/new2", "a/fast", "a/slow"]);
        let mut same = vec![cand("a/x", None), cand("a/y", None)];
        order(Policy::Fastest, &mut same, &prices, &sizing(), |_| {
            Some(Duration::from_millis(5))
        });
        assert_eq!(names(&same), ["a/x", "a/y"]);
    }

    #[test]
    fn the_budget_reserves_the_largest_worst_case() {
        let prices = PriceTable::builtin();
        let s = sizing();
        let c = vec![
            cand("anthropic/claude-haiku-4-5", None),
            cand("anthropic/claude-opus-4-1", Some(100)),
            cand("anthropic/claude-sonnet-4-5", None),
        ];
        let worst = worst_case(&c, &prices, &s).unwrap();
        let each: Vec<u64> = c
            .iter()
            .map(|c| c.estimate(&prices, &s).worst_nusd)
            .collect();
        assert_eq!(worst.worst_nusd, *each.iter().max().unwrap());
        // Opus's cap is applied: 100 output tokens at $75/MTok.
        let opus = c[1].estimate(&prices, &s);
        assert_eq!(opus.max_tokens, 100);
        assert_eq!(opus.worst_nusd, BODY.len() as u64 * 15_000 + 100 * 75_000);
        assert_eq!(worst_case(&[], &prices, &s), None);
        assert_eq!(Policy::parse("fastest"), Some(Policy::Fastest));
        assert_eq!(Policy::Cheapest.as_str(), "cheapest");
        assert_eq!(Policy::parse("random"), None);
    }
}
