//! The price table: per model, what a million tokens of each kind cost, and
//! the cost of one call from its [`Usage`].
//!
//! Rates are integer **nano-USD per million tokens** (`$3/MTok` is
//! `3_000_000_000`). A call's cost is computed in `u128` and divided by one
//! million once, at the end, rounding half up, so per-token prices below a
//! nano-USD (Haiku 3 cache reads cost 0.03 nano-USD a token) stay exact.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;

use crate::dialect::Usage;
use crate::meter::money::{self, MoneyError, NANOS_PER_USD};

/// Tokens per unit of a rate (rates are per million tokens).
const TOKENS_PER_RATE_UNIT: u128 = 1_000_000;

/// Parts per million: the unit of multipliers.
const PPM: u64 = 1_000_000;
/// Anthropic fast mode: ×2 on every token kind (Opus 5 and 5.5; the other
/// fast models' prices are unpublished, and ×2 never under-charges them).
const FAST_PPM: u64 = 2_000_000;
/// Anthropic US-only inference (`inference_geo: "us"`): ×1.1 on every kind.
const US_ONLY_PPM: u64 = 1_100_000;

/// Per-kind rates of one model, each in nano-USD per million tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rates {
    /// Uncached input tokens.
    pub input: u64,
    /// Output tokens (thinking / reasoning included).
    pub output: u64,
    /// Cache writes with the default 5-minute TTL (and unsplit cache writes).
    pub cache_write_5m: u64,
    /// Cache writes with the 1-hour TTL.
    pub cache_write_1h: u64,
    /// Cache reads (OpenAI "cached input").
    pub cache_read: u64,
}

impl Rates {
    /// Rates with the standard multipliers on base input: 5 m write ×1.25,
    /// 1 h write ×2, cache read ×0.1 (rounded half up to a nano-USD per MTok).
    pub fn standard(input: u64, output: u64) -> Rates {
        Rates {
            input,
            output,
            cache_write_5m: mul_ppm(input, 1_250_000),
            cache_write_1h: input.saturating_mul(2),
            cache_read: mul_ppm(input, 100_000),
        }
    }
}

/// Which tokens a price tier counts against its threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TierCounts {
    /// Uncached input + cache writes + cache reads.
    Prompt,
    /// Uncached input only.
    Input,
}

impl TierCounts {
    fn of(self, usage: &Usage) -> u64 {
        match self {
            TierCounts::Prompt => usage.total_input(),
            TierCounts::Input => usage.input_tokens,
        }
    }

    /// `prompt` / `input`, as in a price file.
    pub fn as_str(self) -> &'static str {
        match self {
            TierCounts::Prompt => "prompt",
            TierCounts::Input => "input",
        }
    }
}

/// A price tier: past a prompt-size threshold, the whole request bills at
/// other rates (Sonnet 4 / 4.5's long context, Haiku 5.5 above 100K).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LongContext {
    /// When the tokens counted exceed this, the whole request bills at
    /// [`LongContext::rates`].
    pub threshold_input_tokens: u64,
    /// Which tokens are counted.
    pub counts: TierCounts,
    /// The tier's rates.
    pub rates: Rates,
}

/// The price of one model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelPrice {
    /// Standard rates.
    pub rates: Rates,
    /// Multiplier for batch requests, in parts per million (`500_000` = ×0.5).
    pub batch_multiplier_ppm: u32,
    /// A long-context premium band, if the model has one.
    pub long_context: Option<LongContext>,
}

impl ModelPrice {
    /// The rates that apply to a call with this many input tokens of every
    /// kind: the long-context rates above the threshold, else the standard ones.
    pub fn rates_for(&self, total_input_tokens: u64) -> &Rates {
        match &self.long_context {
            Some(lc) if total_input_tokens > lc.threshold_input_tokens => &lc.rates,
            _ => &self.rates,
        }
    }

    /// The cost of a call at this price, in nano-USD (ignores
    /// `usage.reported_cost_nusd`; see [`PriceTable::cost`] for that).
    ///
    /// `input·P_in + (writes − writes_1h)·P_w5 + writes_1h·P_w1h + reads·P_read
    /// + output·P_out`, summed in `u128` in nano-USD × tokens per MTok,
    /// divided by one million once with rounding half up; then, for a batch
    /// call, the batch multiplier (rounding half up). Saturates at `u64::MAX`.
    pub fn cost(&self, usage: &Usage, batch: bool) -> u64 {
        let r = match &self.long_context {
            Some(t) if t.counts.of(usage) > t.threshold_input_tokens => &t.rates,
            _ => &self.rates,
        };
        let writes_1h = usage
            .cache_creation_1h_input_tokens
            .min(usage.cache_creation_input_tokens);
        let writes_5m = usage.cache_creation_input_tokens - writes_1h;
        let terms = [
            (usage.input_tokens, r.input),
            (writes_5m, r.cache_write_5m),
            (writes_1h, r.cache_write_1h),
            (usage.cache_read_input_tokens, r.cache_read),
            (usage.output_tokens, r.output),
        ];
        let scaled = terms.iter().fold(0u128, |acc, &(tokens, rate)| {
            acc.saturating_add(u128::from(tokens).saturating_mul(u128::from(rate)))
        });
        let nusd = scaled.saturating_add(TOKENS_PER_RATE_UNIT / 2) / TOKENS_PER_RATE_UNIT;
        let mut nusd = u64::try_from(nusd).unwrap_or(u64::MAX);
        if usage.fast {
            nusd = mul_ppm(nusd, FAST_PPM);
        }
        if usage.us_only {
            nusd = mul_ppm(nusd, US_ONLY_PPM);
        }
        if batch {
            mul_ppm(nusd, u64::from(self.batch_multiplier_ppm))
        } else {
            nusd
        }
    }
}

/// The cost of one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cost {
    /// Nano-USD.
    pub nusd: u64,
    /// False when the model was not in the table and the fallback price was
    /// used (count it in a metric).
    pub priced: bool,
}

/// Model id → price, with a fallback for unknown models.
///
/// [`PriceTable::builtin`] holds list prices from `shared/reference/providers.md`
/// §7 (Anthropic) and common OpenAI models, as of October 2026. Every row can
/// be replaced from config (`[prices."model-id"]`), and the fallback too
/// (`[price_fallback]`).
#[derive(Clone, Debug, PartialEq)]
pub struct PriceTable {
    /// Each id's prices, by the Unix second they take effect, ascending.
    rows: HashMap<Box<str>, Vec<(i64, ModelPrice)>>,
    fallback: ModelPrice,
}

/// Dollars per million tokens, in thousandths of a dollar, to nano-USD per
/// million tokens: `m(3_000)` is $3/MTok, `m(75)` is $0.075/MTok.
const fn m(milli_usd: u64) -> u64 {
    milli_usd * (NANOS_PER_USD / 1_000)
}

/// Batch APIs bill every token kind at half price.
const BATCH_HALF_PPM: u32 = 500_000;

/// The built-in table: `prices.txt` next to this file (its format is
/// described at its top), compiled in and checked by the tests.
pub const BUILTIN_PRICES: &str = include_str!("prices.txt");

/// One row of a price file: the ids it prices from a date on.
#[derive(Clone, Debug, PartialEq)]
pub struct PriceRow {
    pub ids: Vec<String>,
    /// `YYYY-MM-DD`.
    pub effective_from: String,
    /// The start of that day, Unix seconds (UTC).
    pub from_unix: i64,
    pub price: ModelPrice,
}

/// A malformed row of a price file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct PriceFileError {
    pub line: usize,
    pub message: String,
}

/// Reads a price file (see `prices.txt` for the format): every row, or
/// the first malformed one with its line number.
pub fn parse_price_file(text: &str) -> Result<Vec<PriceRow>, PriceFileError> {
    let mut rows = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let content = raw.split('#').next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        let err = |message: String| PriceFileError { line, message };
        let fields: Vec<&str> = content.split_whitespace().collect();
        let [ids, date, input, output, w5, w1h, read, batch, tier] = fields[..] else {
            return Err(err(format!(
                "expected 9 fields (ids effective_from input output write_5m write_1h read batch tier), found {}",
                fields.len()
            )));
        };
        let ids: Vec<String> = ids.split(',').map(str::to_string).collect();
        if ids.iter().any(|id| id.is_empty()) {
            return Err(err("an empty model id".into()));
        }
        let from_unix = day_start(date)
            .ok_or_else(|| err(format!("effective_from: not a YYYY-MM-DD date: {date:?}")))?;
        let usd =
            |field: &str, v: &str| money::parse_usd(v).map_err(|e| err(format!("{field}: {e}")));
        let rates = Rates {
            input: usd("input", input)?,
            output: usd("output", output)?,
            cache_write_5m: usd("write_5m", w5)?,
            cache_write_1h: usd("write_1h", w1h)?,
            cache_read: usd("read", read)?,
        };
        let batch_multiplier_ppm =
            parse_multiplier(batch).map_err(|e| err(format!("batch: {e}")))?;
        let long_context = match tier {
            "-" => None,
            t => Some(parse_tier(t).map_err(|m| err(format!("tier: {m}")))?),
        };
        rows.push(PriceRow {
            ids,
            effective_from: date.to_string(),
            from_unix,
            price: ModelPrice {
                rates,
                batch_multiplier_ppm,
                long_context,
            },
        });
    }
    Ok(rows)
}

/// `COUNTS>THRESHOLD:whole:IN/OUT/W5M/W1H/READ`.
fn parse_tier(t: &str) -> Result<LongContext, String> {
    let mut parts = t.splitn(3, ':');
    let (Some(cond), Some(mode), Some(rates)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!(
            "expected COUNTS>THRESHOLD:whole:IN/OUT/W5M/W1H/READ, not {t:?}"
        ));
    };
    let (counts, threshold) = cond
        .split_once('>')
        .ok_or_else(|| format!("expected COUNTS>THRESHOLD, not {cond:?}"))?;
    let counts = match counts {
        "prompt" => TierCounts::Prompt,
        "input" => TierCounts::Input,
        other => return Err(format!("counts: prompt or input, not {other:?}")),
    };
    let threshold: u64 = threshold
        .parse()
        .map_err(|_| format!("threshold: not a token count: {threshold:?}"))?;
    if mode != "whole" {
        return Err(format!(
            "only tiers that reprice the whole request (`whole`) are supported, not {mode:?}"
        ));
    }
    let r: Vec<&str> = rates.split('/').collect();
    let [i, o, w5, w1h, rd] = r[..] else {
        return Err(format!("expected IN/OUT/W5M/W1H/READ, not {rates:?}"));
    };
    let usd = |v: &str| money::parse_usd(v).map_err(|e| e.to_string());
    Ok(LongContext {
        threshold_input_tokens: threshold,
        counts,
        rates: Rates {
            input: usd(i)?,
            output: usd(o)?,
            cache_write_5m: usd(w5)?,
            cache_write_1h: usd(w1h)?,
            cache_read: usd(rd)?,
        },
    })
}

/// The start of UTC day `YYYY-MM-DD`, Unix seconds.
fn day_start(date: &str) -> Option<i64> {
    let d = time::Date::parse(
        date,
        time::macros::format_description!("[year]-[month]-[day]"),
    )
    .ok()?;
    Some(d.midnight().assume_utc().unix_timestamp())
}

fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// The conservative price of a model the table does not know: Opus 4.1
/// rates (input $15, output $75 per MTok, standard cache multipliers), so an
/// unknown model is never under-budgeted.
pub fn fallback_default() -> ModelPrice {
    ModelPrice {
        rates: Rates::standard(m(15_000), m(75_000)),
        batch_multiplier_ppm: BATCH_HALF_PPM,
        long_context: None,
    }
}

// === impl PriceTable ===

impl PriceTable {
    /// The built-in table (`prices.txt`) with [`fallback_default`] for
    /// unknown models. (The file is checked by the tests; were it ever
    /// unreadable, every model would bill at the fallback's high rates.)
    pub fn builtin() -> PriceTable {
        let rows = parse_price_file(BUILTIN_PRICES).unwrap_or_else(|e| {
            tracing::error!(error = %e, "the built-in price table is unreadable");
            Vec::new()
        });
        PriceTable::from_rows(rows)
    }

    /// A table of `rows` (any order) and the default fallback.
    pub fn from_rows(rows: Vec<PriceRow>) -> PriceTable {
        let mut table = PriceTable {
            rows: HashMap::new(),
            fallback: fallback_default(),
        };
        table.add_rows(rows);
        table
    }

    /// Puts `rows` in force: each id they name gets exactly their dated
    /// prices (a price file replaces the built-in history of its ids).
    pub fn add_rows(&mut self, rows: Vec<PriceRow>) {
        let mut by_id: HashMap<Box<str>, Vec<(i64, ModelPrice)>> = HashMap::new();
        for row in rows {
            for id in &row.ids {
                by_id
                    .entry(Box::from(id.as_str()))
                    .or_default()
                    .push((row.from_unix, row.price));
            }
        }
        for (id, mut dated) in by_id {
            dated.sort_by_key(|(from, _)| *from);
            self.rows.insert(id, dated);
        }
    }

    /// Replaces rows and the fallback. An override replaces the row of its
    /// exact id at every date, and also the built-in dated ids of that
    /// alias that are not overridden themselves (`claude-sonnet-4-5` also
    /// reprices `claude-sonnet-4-5-20250929`), so a response echoing the
    /// dated id bills at the configured price. New ids are added.
    pub fn with_overrides(
        mut self,
        overrides: BTreeMap<String, ModelPrice>,
        fallback: ModelPrice,
    ) -> PriceTable {
        for (id, row) in self.rows.iter_mut() {
            if overrides.contains_key(&**id) {
                continue;
            }
            let undated = strip_date(id);
            if undated.len() != id.len() {
                if let Some(price) = overrides.get(undated) {
                    *row = vec![(i64::MIN, *price)];
                }
            }
        }
        for (id, price) in overrides {
            self.rows
                .insert(id.into_boxed_str(), vec![(i64::MIN, price)]);
        }
        self.fallback = fallback;
        self
    }

    /// Every id with the price in force at `at` (Unix seconds) and the date
    /// it took effect (`None`: an override, in force at every date), by id.
    pub fn in_force(&self, at: i64) -> Vec<(&str, Option<i64>, &ModelPrice)> {
        let mut out: Vec<_> = self
            .rows
            .iter()
            .filter_map(|(id, dated)| {
                let (from, p) = dated.iter().rev().find(|(from, _)| *from <= at)?;
                Some((&**id, (*from != i64::MIN).then_some(*from), p))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(b.0));
        out
    }

    /// The price used for models the table does not know.
    pub fn fallback(&self) -> &ModelPrice {
        &self.fallback
    }

    /// The number of model ids in the table.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether the table has no rows (only a fallback).
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The price of `model`: the exact id first; then, normalised, without an
    /// OpenRouter `vendor/` prefix and `:variant` suffix, with dots as dashes
    /// in Claude ids (`anthropic/claude-sonnet-4.5` → `claude-sonnet-4-5`),
    /// and finally without a date suffix (`-20250929`, `-2024-08-06`) or
    /// `-latest`. Allocates only when a Claude id with dots misses exactly.
    pub fn lookup(&self, model: &str) -> Option<&ModelPrice> {
        self.lookup_at(model, now_unix())
    }

    /// [`PriceTable::lookup`] at `at` (Unix seconds): the latest row of the
    /// model in force then.
    pub fn lookup_at(&self, model: &str, at: i64) -> Option<&ModelPrice> {
        let dated = self.dated(model)?;
        dated
            .iter()
            .rev()
            .find(|(from, _)| *from <= at)
            .map(|(_, p)| p)
    }

    fn dated(&self, model: &str) -> Option<&Vec<(i64, ModelPrice)>> {
        if let Some(p) = self.rows.get(model) {
            return Some(p);
        }
        let mut id = model;
        if let Some((_, rest)) = id.rsplit_once('/') {
            id = rest;
        }
        if let Some((base, _variant)) = id.split_once(':') {
            id = base;
        }
        let id: Cow<'_, str> = if id.starts_with("claude") && id.contains('.') {
            Cow::Owned(id.replace('.', "-"))
        } else {
            Cow::Borrowed(id)
        };
        if *id != *model {
            if let Some(p) = self.rows.get(&*id) {
                return Some(p);
            }
        }
        let undated = strip_date(&id);
        if undated.len() != id.len() {
            return self.rows.get(undated);
        }
        None
    }

    /// The price of `model`, or the fallback; the flag says whether the
    /// model was known.
    pub fn price_or_fallback(&self, model: &str) -> (&ModelPrice, bool) {
        self.price_or_fallback_at(model, now_unix())
    }

    /// [`PriceTable::price_or_fallback`] at `at` (Unix seconds).
    pub fn price_or_fallback_at(&self, model: &str, at: i64) -> (&ModelPrice, bool) {
        match self.lookup_at(model, at) {
            Some(p) => (p, true),
            None => (&self.fallback, false),
        }
    }

    /// The cost of one call. A cost the provider reported
    /// (`usage.reported_cost_nusd`) wins and is taken as is (it already is
    /// the amount charged, batch discount included). Otherwise the model's
    /// price (see [`ModelPrice::cost`]); an unknown model is priced at the
    /// fallback with `priced = false`.
    pub fn cost(&self, model: &str, usage: &Usage, batch: bool) -> Cost {
        self.cost_at(model, usage, batch, now_unix())
    }

    /// [`PriceTable::cost`] with the prices in force at `at` (Unix seconds).
    pub fn cost_at(&self, model: &str, usage: &Usage, batch: bool, at: i64) -> Cost {
        if let Some(nusd) = usage.reported_cost_nusd {
            return Cost { nusd, priced: true };
        }
        let (price, priced) = self.price_or_fallback_at(model, at);
        Cost {
            nusd: price.cost(usage, batch),
            priced,
        }
    }
}

/// `rate` with the fast-mode and US-only premiums a call asks for.
pub fn premium_rate(rate: u64, fast: bool, us_only: bool) -> u64 {
    let mut r = rate;
    if fast {
        r = mul_ppm(r, FAST_PPM);
    }
    if us_only {
        r = mul_ppm(r, US_ONLY_PPM);
    }
    r
}

/// `v × ppm / 1_000_000`, rounding half up, saturating.
fn mul_ppm(v: u64, ppm: u64) -> u64 {
    let scaled = u128::from(v) * u128::from(ppm) + u128::from(PPM / 2);
    u64::try_from(scaled / u128::from(PPM)).unwrap_or(u64::MAX)
}

/// `id` without a trailing date (`-20250929` or `-2024-08-06`) or `-latest`.
fn strip_date(id: &str) -> &str {
    let b = id.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    let n = b.len();
    if n > 9 && b[n - 9] == b'-' && digits(n - 8..n) {
        return &id[..n - 9];
    }
    if n > 11
        && b[n - 11] == b'-'
        && digits(n - 10..n - 6)
        && b[n - 6] == b'-'
        && digits(n - 5..n - 3)
        && b[n - 3] == b'-'
        && digits(n - 2..n)
    {
        return &id[..n - 11];
    }
    id.strip_suffix("-latest").unwrap_or(id)
}

// === config overrides ===

/// A `[prices."model-id"]` (or `[price_fallback]`) table as written in
/// config: USD per million tokens as decimal strings (`"3.00"`), and the
/// batch multiplier as a decimal (`"0.5"`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrice {
    /// USD per million uncached input tokens.
    pub input: Option<String>,
    /// USD per million output tokens.
    pub output: Option<String>,
    /// USD per million 5-minute cache-write tokens.
    pub cache_write_5m: Option<String>,
    /// USD per million 1-hour cache-write tokens.
    pub cache_write_1h: Option<String>,
    /// USD per million cache-read tokens.
    pub cache_read: Option<String>,
    /// Multiplier for batch calls, between 0 and 1.
    pub batch_multiplier: Option<String>,
}

/// What is wrong with one field of a price override.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PriceError {
    /// A rate that is not a decimal USD amount.
    #[error("{error}")]
    Amount {
        field: &'static str,
        error: MoneyError,
    },
    /// A batch multiplier outside 0..=1 or finer than a millionth.
    #[error("not a multiplier between 0 and 1: {0:?}")]
    Multiplier(String),
    /// `input` or `output` of a model without a built-in price.
    #[error("required for a model without a built-in price")]
    Required { field: &'static str },
}

impl PriceError {
    /// The field of [`RawPrice`] it is about (`"output"`).
    pub fn field(&self) -> &'static str {
        match self {
            PriceError::Amount { field, .. } | PriceError::Required { field } => field,
            PriceError::Multiplier(_) => "batch_multiplier",
        }
    }
}

/// Validates one config price table, returning every bad field (in field
/// order) when there is one.
///
/// A field that is not given comes from `base` (the built-in row of the same
/// model) when there is one; otherwise `input` and `output` are required and
/// the cache rates default to the standard multipliers of `input` (5 m write
/// ×1.25, 1 h write ×2, cache read ×0.1) and the batch multiplier to 0.5. A
/// long-context band of `base` is kept.
pub fn validate_price(
    raw: &RawPrice,
    base: Option<&ModelPrice>,
) -> Result<ModelPrice, Vec<PriceError>> {
    let mut errors = Vec::new();
    let mut usd = |field: &'static str, value: &Option<String>| -> Option<u64> {
        let s = value.as_deref()?;
        match money::parse_usd(s) {
            Ok(v) => Some(v),
            Err(error) => {
                errors.push(PriceError::Amount { field, error });
                None
            }
        }
    };
    let input = usd("input", &raw.input);
    let output = usd("output", &raw.output);
    let w5 = usd("cache_write_5m", &raw.cache_write_5m);
    let w1h = usd("cache_write_1h", &raw.cache_write_1h);
    let read = usd("cache_read", &raw.cache_read);
    let batch = raw
        .batch_multiplier
        .as_deref()
        .and_then(|s| match parse_multiplier(s) {
            Ok(ppm) => Some(ppm),
            Err(e) => {
                errors.push(e);
                None
            }
        });
    let price = match base {
        Some(base) => Some(ModelPrice {
            rates: Rates {
                input: input.unwrap_or(base.rates.input),
                output: output.unwrap_or(base.rates.output),
                cache_write_5m: w5.unwrap_or(base.rates.cache_write_5m),
                cache_write_1h: w1h.unwrap_or(base.rates.cache_write_1h),
                cache_read: read.unwrap_or(base.rates.cache_read),
            },
            batch_multiplier_ppm: batch.unwrap_or(base.batch_multiplier_ppm),
            long_context: base.long_context,
        }),
        None => {
            for (field, value) in [("input", &raw.input), ("output", &raw.output)] {
                if value.is_none() {
                    errors.push(PriceError::Required { field });
                }
            }
            input.zip(output).map(|(input, output)| {
                let standard = Rates::standard(input, output);
                ModelPrice {
                    rates: Rates {
                        input,
                        output,
                        cache_write_5m: w5.unwrap_or(standard.cache_write_5m),
                        cache_write_1h: w1h.unwrap_or(standard.cache_write_1h),
                        cache_read: read.unwrap_or(standard.cache_read),
                    },
                    batch_multiplier_ppm: batch.unwrap_or(BATCH_HALF_PPM),
                    long_context: None,
                }
            })
        }
    };
    match price {
        Some(price) if errors.is_empty() => Ok(price),
        _ => Err(errors),
    }
}

/// Parses a multiplier between 0 and 1 with at most six decimals into ppm.
fn parse_multiplier(s: &str) -> Result<u32, PriceError> {
    let bad = || PriceError::Multiplier(s.to_owned());
    let nanos = money::parse_usd(s).map_err(|_| bad())?;
    if nanos > NANOS_PER_USD || nanos % 1_000 != 0 {
        return Err(bad());
    }
    u32::try_from(nanos / 1_000).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(input: u64, output: u64) -> Usage {
        Usage {
            input_tokens: input,
            output_tokens: output,
            ..Usage::default()
        }
    }

    #[test]
    fn sonnet_4_5_exact_math() {
        // Sonnet 4.5 per MTok: input $3, 5m write $3.75, 1h write $6,
        // read $0.30, output $15.
        //   input      1000 × 3.00  = 3000
        //   5m writes   150 × 3.75  =  562.5
        //   1h writes    50 × 6.00  =  300
        //   reads       300 × 0.30  =   90
        //   output      500 × 15.00 = 7500
        //   total                     11452.5 USD·tok/MTok
        // = 0.0114525 USD = 11_452_500 nano-USD.
        let u = Usage {
            input_tokens: 1000,
            output_tokens: 500,
            cache_creation_input_tokens: 200,
            cache_creation_1h_input_tokens: 50,
            cache_read_input_tokens: 300,
            reported_cost_nusd: None,
            fast: false,
            us_only: false,
        };
        let t = PriceTable::builtin();
        let c = t.cost("claude-sonnet-4-5", &u, false);
        assert_eq!(
            c,
            Cost {
                nusd: 11_452_500,
                priced: true
            }
        );
        // Batch: ×0.5 → 5_726_250.
        assert_eq!(t.cost("claude-sonnet-4-5", &u, true).nusd, 5_726_250);
    }

    #[test]
    fn unsplit_cache_writes_bill_at_the_5m_rate() {
        // 1000 writes × $3.75/MTok = 0.00375 USD.
        let u = Usage {
            cache_creation_input_tokens: 1000,
            ..Usage::default()
        };
        assert_eq!(
            PriceTable::builtin()
                .cost("claude-sonnet-4-5", &u, false)
                .nusd,
            3_750_000
        );
    }

    #[test]
    fn long_context_switches_above_the_threshold() {
        let t = PriceTable::builtin();
        // 200_000 input (100k uncached + 60k writes + 40k reads) is not above
        // the threshold: standard rates.
        //   100_000 × 3 + 60_000 × 3.75 + 40_000 × 0.30 + 1_000 × 15
        //   = 300_000 + 225_000 + 12_000 + 15_000 = 552_000 USD·tok/MTok
        //   = 0.552 USD.
        let mut u = Usage {
            input_tokens: 100_000,
            output_tokens: 1_000,
            cache_creation_input_tokens: 60_000,
            cache_creation_1h_input_tokens: 0,
            cache_read_input_tokens: 40_000,
            reported_cost_nusd: None,
            fast: false,
            us_only: false,
        };
        assert_eq!(
            t.cost("claude-sonnet-4-5-20250929", &u, false).nusd,
            552_000_000
        );
        // One more token: the whole request at premium rates.
        //   100_001 × 6 + 60_000 × 7.50 + 40_000 × 0.60 + 1_000 × 22.50
        //   = 600_006 + 450_000 + 24_000 + 22_500 = 1_096_506 → 1.096506 USD.
        u.input_tokens += 1;
        assert_eq!(
            t.cost("claude-sonnet-4-5-20250929", &u, false).nusd,
            1_096_506_000
        );
        // 1_000 of the writes at the 1h premium rate of $12 instead of the
        // 5m premium rate of $7.50: +1_000 × 4.50 = +4_500 → 1.101006 USD.
        u.cache_creation_1h_input_tokens = 1_000;
        assert_eq!(t.cost("claude-sonnet-4", &u, false).nusd, 1_101_006_000);
        // Sonnet 4.6 and Sonnet 5 have no premium band.
        u.cache_creation_1h_input_tokens = 0;
        assert_eq!(t.cost("claude-sonnet-4-6", &u, false).nusd, 552_003_000);
    }

    #[test]
    fn rounds_half_up_once() {
        // Built-in rates are whole nano-USD per token ($0.03/MTok = 30
        // nano-USD a token); finer configured rates show the rounding. Per
        // token: input 0.5, output 0.3, cache read 0.3 nano-USD.
        let fine = ModelPrice {
            rates: Rates {
                input: 500_000,
                output: 300_000,
                cache_write_5m: 500_000,
                cache_write_1h: 500_000,
                cache_read: 300_000,
            },
            batch_multiplier_ppm: 500_000,
            long_context: None,
        };
        let overrides = BTreeMap::from([("fine".to_owned(), fine)]);
        let t = PriceTable::builtin().with_overrides(overrides, fallback_default());
        let cost = |u: Usage, batch| t.cost("fine", &u, batch).nusd;
        assert_eq!(cost(usage(1, 0), false), 1); // 0.5 → 1 (half up)
        assert_eq!(cost(usage(0, 1), false), 0); // 0.3 → 0
        assert_eq!(cost(usage(0, 2), false), 1); // 0.6 → 1
        assert_eq!(cost(usage(3, 0), false), 2); // 1.5 → 2
                                                 // Summed before the one division: 1 output (0.3) + 1 read (0.3) =
                                                 // 0.6 → 1, where rounding each term would give 0.
        let u = Usage {
            output_tokens: 1,
            cache_read_input_tokens: 1,
            ..Usage::default()
        };
        assert_eq!(cost(u, false), 1);
        // The batch multiplier rounds half up too: 6 inputs = 3 → ×0.5 = 1.5 → 2.
        assert_eq!(cost(usage(6, 0), false), 3);
        assert_eq!(cost(usage(6, 0), true), 2);
        // Built-in: Haiku 3 cache read $0.03/MTok is exactly 30 nano-USD a token.
        let reads = Usage {
            cache_read_input_tokens: 7,
            ..Usage::default()
        };
        assert_eq!(
            PriceTable::builtin()
                .cost("claude-3-haiku-20240307", &reads, false)
                .nusd,
            210
        );
    }

    #[test]
    fn saturates_instead_of_overflowing() {
        let u = Usage {
            input_tokens: u64::MAX,
            output_tokens: u64::MAX,
            cache_creation_input_tokens: u64::MAX,
            cache_creation_1h_input_tokens: u64::MAX,
            cache_read_input_tokens: u64::MAX,
            reported_cost_nusd: None,
            fast: false,
            us_only: false,
        };
        let t = PriceTable::builtin();
        assert_eq!(t.cost("claude-opus-4-1", &u, false).nusd, u64::MAX);
        assert_eq!(t.cost("claude-sonnet-4-5", &u, true).nusd, u64::MAX / 2 + 1);
    }

    #[test]
    fn reported_cost_is_preferred() {
        let u = Usage {
            input_tokens: 1_000_000,
            reported_cost_nusd: Some(950_000_000),
            ..Usage::default()
        };
        let t = PriceTable::builtin();
        assert_eq!(
            t.cost("anthropic/claude-sonnet-4.5", &u, false),
            Cost {
                nusd: 950_000_000,
                priced: true
            }
        );
        assert_eq!(
            t.cost("no-such-model", &u, true),
            Cost {
                nusd: 950_000_000,
                priced: true
            }
        );
    }

    #[test]
    fn openai_cached_input_is_a_cache_read() {
        // gpt-4o: 1000 uncached × 2.50 + 500 cached × 1.25 + 200 out × 10
        // = 2500 + 625 + 2000 = 5125 → 5_125_000 nano-USD.
        let u = Usage {
            input_tokens: 1000,
            output_tokens: 200,
            cache_read_input_tokens: 500,
            ..Usage::default()
        };
        let t = PriceTable::builtin();
        assert_eq!(
            t.cost("gpt-4o-2024-08-06", &u, false),
            Cost {
                nusd: 5_125_000,
                priced: true
            }
        );
        let p = t.lookup("gpt-4o").unwrap();
        assert_eq!(p.rates.cache_write_5m, p.rates.input);
        assert_eq!(p.rates.cache_write_1h, p.rates.input);
    }

    #[test]
    fn lookups_normalise_aliases_dates_and_slugs() {
        let t = PriceTable::builtin();
        let sonnet = t.lookup("claude-sonnet-4-5").copied();
        assert!(sonnet.is_some());
        for id in [
            "claude-sonnet-4-5-20250929",
            "anthropic/claude-sonnet-4.5",
            "anthropic/claude-sonnet-4-5",
            "claude-sonnet-4.5",
            "claude-sonnet-4-5-20991231",
            "anthropic/claude-sonnet-4.5:beta",
        ] {
            assert_eq!(t.lookup(id).copied(), sonnet, "{id}");
        }
        assert_eq!(t.lookup("openai/gpt-4o"), t.lookup("gpt-4o"));
        assert_eq!(t.lookup("gpt-4o-2024-08-06"), t.lookup("gpt-4o"));
        assert_eq!(t.lookup("gpt-4o-mini-2024-07-18"), t.lookup("gpt-4o-mini"));
        assert_eq!(t.lookup("openai/gpt-4.1"), t.lookup("gpt-4.1"));
        assert_ne!(t.lookup("gpt-4.1"), t.lookup("gpt-4-1"));
        assert_eq!(
            t.lookup("anthropic/claude-opus-4.1"),
            t.lookup("claude-opus-4-1-20250805")
        );
        assert_eq!(
            t.lookup("anthropic/claude-3.5-haiku"),
            t.lookup("claude-3-5-haiku-20241022")
        );
        assert_eq!(
            t.lookup("claude-opus-4-20250514"),
            t.lookup("claude-opus-4-0")
        );
        assert_eq!(
            t.lookup("claude-sonnet-5-5").unwrap().rates.cache_read,
            100_000_000
        );
        assert_eq!(
            t.lookup("claude-haiku-5-5").unwrap().rates,
            Rates::standard(m(100), m(500))
        );
        assert!(t.lookup("gpt-4o-2024").is_none());
        assert!(t.lookup("mistral/mistral-large").is_none());
        assert!(t.lookup("").is_none());
    }

    #[test]
    fn every_builtin_row_is_consistent() {
        let rows = parse_price_file(BUILTIN_PRICES).unwrap();
        let t = PriceTable::builtin();
        for row in &rows {
            let (id, p) = (&row.ids[0], &row.price);
            assert_eq!(p.batch_multiplier_ppm, 500_000, "{id}");
            if id.starts_with("text-embedding-") {
                // Input only: no output, no cache discount.
                assert!(p.rates.input > 0 && p.rates.output == 0, "{id}");
                continue;
            }
            assert!(p.rates.input > 0 && p.rates.output >= p.rates.input, "{id}");
            assert!(p.rates.cache_read < p.rates.input, "{id}");
            // Claude writes follow the ×1.25 / ×2 rule (reads no longer
            // follow ×0.1 everywhere: they are stored, never derived).
            if id.starts_with("claude") && !id.starts_with("claude-3-haiku") {
                let std = Rates::standard(p.rates.input, p.rates.output);
                assert_eq!(p.rates.cache_write_5m, std.cache_write_5m, "{id}");
                assert_eq!(p.rates.cache_write_1h, std.cache_write_1h, "{id}");
            }
        }
        for id in [
            "claude-opus-4-8",
            "claude-opus-4-7",
            "claude-opus-4-6",
            "claude-opus-4-5",
            "claude-opus-4-5-20251101",
            "claude-opus-4-1-20250805",
            "claude-opus-4-0",
            "claude-opus-4-20250514",
            "claude-sonnet-4-6",
            "claude-sonnet-4-5",
            "claude-sonnet-4-5-20250929",
            "claude-sonnet-4-0",
            "claude-sonnet-4-20250514",
            "claude-haiku-4-5",
            "claude-haiku-4-5-20251001",
            "claude-3-5-haiku-20241022",
            "claude-3-5-haiku-latest",
            "claude-3-haiku-20240307",
            "claude-sonnet-5",
            "claude-sonnet-5-5",
            "claude-opus-5",
            "claude-haiku-5-5",
            "claude-fable-5",
            "claude-mythos-5",
            "gpt-4o",
            "gpt-4o-mini",
            "gpt-4.1",
            "gpt-4.1-mini",
            "gpt-4.1-nano",
            "o3",
            "o4-mini",
            "gpt-5",
            "gpt-5-mini",
            "gpt-5-nano",
        ] {
            assert!(t.rows.contains_key(id), "{id} missing");
        }
    }

    #[test]
    fn rows_take_effect_on_their_date() {
        let t = PriceTable::builtin();
        let day = |d: &str| day_start(d).unwrap();
        // Sonnet 5.5's cache read was cut on 2026-10-07.
        let read = |at: i64| {
            t.lookup_at("claude-sonnet-5-5", at)
                .unwrap()
                .rates
                .cache_read
        };
        assert_eq!(read(day("2026-10-06") + 86_399), m(200));
        assert_eq!(read(day("2026-10-07")), m(100));
        // A model before its first row is not priced yet (the fallback is).
        assert!(t.lookup_at("claude-fable-5-2", day("2026-11-08")).is_none());
        assert!(t.lookup_at("claude-fable-5-2", day("2026-11-09")).is_some());
        let u = Usage {
            input_tokens: 1_000_000,
            cache_read_input_tokens: 1_000_000,
            ..Usage::default()
        };
        let before = t.cost_at("claude-sonnet-5-5", &u, false, day("2026-10-01"));
        let after = t.cost_at("claude-sonnet-5-5", &u, false, day("2026-10-08"));
        assert_eq!(before.nusd - after.nusd, m(100));
    }

    #[test]
    fn a_tier_reprices_the_whole_request() {
        let t = PriceTable::builtin();
        // Haiku 5.5: above a 100K prompt every token bills at the higher row.
        let at = |input: u64, read: u64| Usage {
            input_tokens: input,
            cache_read_input_tokens: read,
            output_tokens: 1_000,
            ..Usage::default()
        };
        let small = t.cost("claude-haiku-5-5", &at(90_000, 10_000), false);
        assert_eq!(small.nusd, 90_000 * 100 + 10_000 * 10 + 1_000 * 500);
        let big = t.cost("claude-haiku-5-5", &at(90_000, 10_001), false);
        assert_eq!(big.nusd, 90_000 * 500 + 10_001 * 50 + 1_000 * 2_500);
    }

    #[test]
    fn a_malformed_row_is_named_by_its_line() {
        let bad = |text: &str| parse_price_file(text).unwrap_err().to_string();
        assert_eq!(
            bad("# c\n\nm 2026-01-01 1 2 3 4 5 0.5\n"),
            "line 3: expected 9 fields (ids effective_from input output write_5m write_1h read batch tier), found 8"
        );
        assert!(bad("m 2026-13-01 1 2 3 4 5 0.5 -").starts_with("line 1: effective_from"));
        assert!(bad("m 2026-01-01 x 2 3 4 5 0.5 -").starts_with("line 1: input:"));
        assert!(bad("m 2026-01-01 1 2 3 4 5 2 -").starts_with("line 1: batch:"));
        assert!(bad("m 2026-01-01 1 2 3 4 5 0.5 prompt>10:above:1/2/3/4/5")
            .contains("only tiers that reprice the whole request"));
        assert!(bad("m 2026-01-01 1 2 3 4 5 0.5 tokens>10:whole:1/2/3/4/5").contains("counts"));
        assert!(bad("a,,b 2026-01-01 1 2 3 4 5 0.5 -").contains("empty model id"));
        let ok =
            parse_price_file("m,m-1 2026-01-01 1 2 3 4 0.1 0.5 input>5:whole:2/4/6/8/0.2 # note\n")
                .unwrap();
        assert_eq!(ok[0].ids, vec!["m", "m-1"]);
        assert_eq!(ok[0].price.long_context.unwrap().counts, TierCounts::Input);
    }

    #[test]
    fn unknown_models_use_the_fallback() {
        let t = PriceTable::builtin();
        // 1000 input × 15 + 100 output × 75 = 22_500 → 0.0225 USD.
        let c = t.cost("mystery-model", &usage(1000, 100), false);
        assert_eq!(
            c,
            Cost {
                nusd: 22_500_000,
                priced: false
            }
        );
        assert_eq!(t.fallback(), &fallback_default());
        assert_eq!(fallback_default().rates.cache_write_5m, m(18_750));
        assert_eq!(fallback_default().rates.cache_read, m(1_500));
    }

    #[test]
    fn overrides_replace_rows_and_the_fallback() {
        let cheap = ModelPrice {
            rates: Rates::standard(m(1_000), m(2_000)),
            batch_multiplier_ppm: 1_000_000,
            long_context: None,
        };
        let fb = ModelPrice {
            rates: Rates::standard(m(100_000), m(100_000)),
            batch_multiplier_ppm: 500_000,
            long_context: None,
        };
        let overrides = BTreeMap::from([
            ("claude-sonnet-4-5".to_owned(), cheap),
            ("my-local-model".to_owned(), cheap),
        ]);
        let t = PriceTable::builtin().with_overrides(overrides, fb);
        assert_eq!(t.lookup("claude-sonnet-4-5"), Some(&cheap));
        assert_eq!(t.lookup("claude-sonnet-4-5-20250929"), Some(&cheap));
        assert_eq!(t.lookup("anthropic/claude-sonnet-4.5"), Some(&cheap));
        assert_eq!(t.lookup("my-local-model"), Some(&cheap));
        assert_eq!(
            t.lookup("claude-sonnet-4-0"),
            PriceTable::builtin().lookup("claude-sonnet-4-0")
        );
        // Fallback $100/MTok = 100_000 nano-USD a token.
        assert_eq!(
            t.cost("nope", &usage(10, 0), false),
            Cost {
                nusd: 1_000_000,
                priced: false
            }
        );
        // Batch multiplier 1: no discount.
        assert_eq!(
            t.cost("my-local-model", &usage(1_000, 0), true).nusd,
            1_000_000
        );
    }

    #[test]
    fn an_override_of_a_dated_id_leaves_the_alias() {
        let cheap = ModelPrice {
            rates: Rates::standard(m(1), m(1)),
            batch_multiplier_ppm: 500_000,
            long_context: None,
        };
        let overrides = BTreeMap::from([("claude-haiku-4-5-20251001".to_owned(), cheap)]);
        let t = PriceTable::builtin().with_overrides(overrides, fallback_default());
        assert_eq!(t.lookup("claude-haiku-4-5-20251001"), Some(&cheap));
        assert_eq!(
            t.lookup("claude-haiku-4-5"),
            PriceTable::builtin().lookup("claude-haiku-4-5")
        );
    }

    fn raw(fields: &[(&str, &str)]) -> RawPrice {
        let mut r = RawPrice::default();
        for (k, v) in fields {
            let v = Some((*v).to_owned());
            match *k {
                "input" => r.input = v,
                "output" => r.output = v,
                "cache_write_5m" => r.cache_write_5m = v,
                "cache_write_1h" => r.cache_write_1h = v,
                "cache_read" => r.cache_read = v,
                "batch_multiplier" => r.batch_multiplier = v,
                other => unreachable!("{other}"),
            }
        }
        r
    }

    #[test]
    fn validate_price_fills_from_base() {
        let t = PriceTable::builtin();
        let base = t.lookup("claude-sonnet-4-5");
        let p = validate_price(
            &raw(&[("output", "12.50"), ("batch_multiplier", "0.25")]),
            base,
        )
        .unwrap();
        assert_eq!(p.rates.output, 12_500_000_000);
        assert_eq!(p.rates.input, 3_000_000_000);
        assert_eq!(p.rates.cache_read, 300_000_000);
        assert_eq!(p.batch_multiplier_ppm, 250_000);
        assert!(p.long_context.is_some());
    }

    #[test]
    fn validate_price_derives_cache_rates_from_input() {
        let p = validate_price(
            &raw(&[("input", "2"), ("output", "8"), ("cache_read", "0.05")]),
            None,
        )
        .unwrap();
        assert_eq!(
            p,
            ModelPrice {
                rates: Rates {
                    input: 2_000_000_000,
                    output: 8_000_000_000,
                    cache_write_5m: 2_500_000_000,
                    cache_write_1h: 4_000_000_000,
                    cache_read: 50_000_000,
                },
                batch_multiplier_ppm: 500_000,
                long_context: None,
            }
        );
    }

    #[test]
    fn validate_price_reports_every_bad_field() {
        let errors = validate_price(
            &raw(&[
                ("output", "abc"),
                ("cache_read", "-1"),
                ("cache_write_1h", "0.0000000001"),
                ("batch_multiplier", "1.5"),
            ]),
            PriceTable::builtin().lookup("gpt-4o"),
        )
        .unwrap_err();
        let shown: Vec<String> = errors
            .iter()
            .map(|e| format!("{}: {e}", e.field()))
            .collect();
        assert_eq!(
            shown,
            [
                "output: not a decimal USD amount: \"abc\"",
                "cache_write_1h: more than 9 decimals (finer than one nano-USD): \"0.0000000001\"",
                "cache_read: negative amount: \"-1\"",
                "batch_multiplier: not a multiplier between 0 and 1: \"1.5\"",
            ]
        );
    }

    #[test]
    fn validate_price_requires_input_and_output_without_base() {
        let errors = validate_price(&raw(&[]), None).unwrap_err();
        let fields: Vec<&str> = errors.iter().map(PriceError::field).collect();
        assert_eq!(fields, ["input", "output"]);
        let only_in = raw(&[("input", "1")]);
        assert_eq!(
            validate_price(&only_in, None),
            Err(vec![PriceError::Required { field: "output" }])
        );
    }

    #[test]
    fn multipliers() {
        assert_eq!(parse_multiplier("0.5"), Ok(500_000));
        assert_eq!(parse_multiplier("1"), Ok(1_000_000));
        assert_eq!(parse_multiplier("0"), Ok(0));
        assert_eq!(parse_multiplier("0.123456"), Ok(123_456));
        assert!(parse_multiplier("0.1234567").is_err());
        assert!(parse_multiplier("1.000001").is_err());
        assert!(parse_multiplier("half").is_err());
    }

    #[test]
    fn strips_dates() {
        assert_eq!(
            strip_date("claude-sonnet-4-5-20250929"),
            "claude-sonnet-4-5"
        );
        assert_eq!(strip_date("gpt-4o-2024-08-06"), "gpt-4o");
        assert_eq!(strip_date("claude-3-5-haiku-latest"), "claude-3-5-haiku");
        assert_eq!(strip_date("gpt-4o"), "gpt-4o");
        assert_eq!(strip_date("-20250929"), "-20250929");
        assert_eq!(strip_date("x-2025092"), "x-2025092");
        assert_eq!(strip_date("x-2024-8-06"), "x-2024-8-06");
    }
}
