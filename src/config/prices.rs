//! `[prices."<model>"]` and `[price_fallback]`: overrides of the built-in
//! price table. The rules live in [`crate::meter::prices`]; this section
//! turns its errors into problems naming the key.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::schema::{render_key, Key, Type};
use super::Problem;
use crate::meter::prices::{self, ModelPrice, PriceError, PriceTable, RawPrice};

#[rustfmt::skip]
pub(super) static KEYS: &[Key] = &[
    Key::new("prices_file", Type::Path, "\"\"",
     "A price file in the built-in table's format (dated rows: see `tollgate prices`); each model it names gets exactly its rows, in force from their effective_from. Checked at start, a bad row named by its line."),
    Key::new("prices.<model>.input", Type::Usd, "built-in table",
     "USD per million uncached input tokens. <model> is the exact model id; overriding an alias also reprices its dated ids. Required for a model without a built-in price."),
    Key::new("prices.<model>.output", Type::Usd, "built-in table",
     "USD per million output tokens. Required for a model without a built-in price."),
    Key::new("prices.<model>.cache_write_5m", Type::Usd, "built-in, else 1.25 × input",
     "USD per million cache-write tokens with the 5-minute TTL."),
    Key::new("prices.<model>.cache_write_1h", Type::Usd, "built-in, else 2 × input",
     "USD per million cache-write tokens with the 1-hour TTL."),
    Key::new("prices.<model>.cache_read", Type::Usd, "built-in, else 0.1 × input",
     "USD per million cache-read (cached input) tokens."),
    Key::new("prices.<model>.batch_multiplier", Type::Decimal, "built-in, else 0.5",
     "Multiplier for batch requests, between 0 and 1."),
    Key::new("price_fallback.input", Type::Usd, "15.00",
     "Price of models not in the table, USD per million uncached input tokens."),
    Key::new("price_fallback.output", Type::Usd, "75.00",
     "Price of models not in the table, USD per million output tokens."),
    Key::new("price_fallback.cache_write_5m", Type::Usd, "18.75",
     "Price of models not in the table, USD per million 5-minute cache-write tokens."),
    Key::new("price_fallback.cache_write_1h", Type::Usd, "30.00",
     "Price of models not in the table, USD per million 1-hour cache-write tokens."),
    Key::new("price_fallback.cache_read", Type::Usd, "1.50",
     "Price of models not in the table, USD per million cache-read tokens."),
    Key::new("price_fallback.batch_multiplier", Type::Decimal, "0.5",
     "Batch multiplier of models not in the table."),
];

/// The section as written.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSection {
    pub prices_file: Option<String>,
    pub prices: Option<BTreeMap<String, RawPrice>>,
    pub price_fallback: Option<RawPrice>,
}

/// The built-in table with the overrides and fallback applied.
pub(super) fn validate(raw: RawSection, problems: &mut Vec<Problem>) -> PriceTable {
    let mut builtin = PriceTable::builtin();
    if let Some(path) = raw.prices_file.as_deref().filter(|p| !p.is_empty()) {
        match std::fs::read_to_string(path) {
            Err(e) => problems.push(Problem::new(
                "prices_file",
                format!("cannot read {path}: {e}"),
            )),
            Ok(text) => match prices::parse_price_file(&text) {
                Ok(rows) => builtin.add_rows(rows),
                Err(e) => problems.push(Problem::new("prices_file", format!("{path}: {e}"))),
            },
        }
    }
    let mut overrides = BTreeMap::new();
    for (model, rp) in raw.prices.unwrap_or_default() {
        let key = render_key(&["prices", model.as_str()]);
        if model.is_empty() {
            problems.push(Problem::new(key, "a model id must not be empty"));
            continue;
        }
        if let Some(p) = price(&key, &rp, builtin.lookup(&model), problems) {
            overrides.insert(model, p);
        }
    }
    let default_fallback = prices::fallback_default();
    let fallback = raw
        .price_fallback
        .and_then(|rp| price("price_fallback", &rp, Some(&default_fallback), problems))
        .unwrap_or(default_fallback);
    builtin.with_overrides(overrides, fallback)
}

/// One price table whose full key is `key` (`prices."gpt-4o"`).
fn price(
    key: &str,
    raw: &RawPrice,
    base: Option<&ModelPrice>,
    problems: &mut Vec<Problem>,
) -> Option<ModelPrice> {
    prices::validate_price(raw, base)
        .map_err(|errors| {
            problems.extend(
                errors.iter().map(|e: &PriceError| {
                    Problem::new(format!("{key}.{}", e.field()), e.to_string())
                }),
            )
        })
        .ok()
}

#[cfg(test)]
mod tests {
    use super::super::testing::{ok, problems};
    use crate::dialect::Usage;

    #[test]
    fn price_overrides_and_fallback() {
        let c = ok(
            r#"
[prices."claude-sonnet-4-5"]
input = "2.00"
[prices."my-model"]
input = "1"
output = "2"
[price_fallback]
input = "100"
output = "200"
"#,
            &[],
        );
        let sonnet = c.prices.lookup("claude-sonnet-4-5-20250929").unwrap();
        assert_eq!(sonnet.rates.input, 2_000_000_000);
        assert_eq!(sonnet.rates.output, 15_000_000_000);
        assert_eq!(
            c.prices.lookup("my-model").unwrap().rates.cache_write_5m,
            1_250_000_000
        );
        let u = Usage {
            input_tokens: 1_000_000,
            ..Usage::default()
        };
        let cost = c.prices.cost("unknown", &u, false);
        assert_eq!((cost.nusd, cost.priced), (100_000_000_000, false));
        assert_eq!(c.prices.fallback().rates.cache_read, 1_500_000_000);
        assert_eq!(
            problems(
                "[prices.new]\noutput = \"1\"\n[price_fallback]\nbatch_multiplier = \"2\"\n",
                &[]
            ),
            [
                "prices.\"new\".input: required for a model without a built-in price",
                "price_fallback.batch_multiplier: not a multiplier between 0 and 1: \"2\"",
            ]
        );
    }
}
