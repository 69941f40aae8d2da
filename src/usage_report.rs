//! The usage table (requests, tokens by kind, cost, saved) grouped by any
//! of account / workload / model / day / provider / tag / cache / route /
//! status: `tollgate usage` over the local outbox, and the control
//! endpoint's ledger rollups (text, JSON, CSV).

use std::collections::BTreeMap;

use crate::meter::event::UsageEvent;
use crate::meter::money::format_usd;
use crate::store::outbox::OutboxError;

/// A grouping dimension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dim {
    Account,
    Workload,
    Model,
    Day,
    Provider,
    /// The event's tags, `k=v` joined by `,` (sorted by key).
    Tag,
    Cache,
    Route,
    Status,
}

/// Every dimension, by name.
const DIMS: &[(&str, Dim)] = &[
    ("account", Dim::Account),
    ("workload", Dim::Workload),
    ("model", Dim::Model),
    ("day", Dim::Day),
    ("provider", Dim::Provider),
    ("tag", Dim::Tag),
    ("cache", Dim::Cache),
    ("route", Dim::Route),
    ("status", Dim::Status),
];

impl Dim {
    fn name(self) -> &'static str {
        DIMS.iter()
            .find(|(_, d)| *d == self)
            .map_or("?", |(n, _)| n)
    }

    /// This dimension's value for `e`.
    pub fn value(self, e: &UsageEvent) -> String {
        match self {
            Dim::Account => e.account.clone(),
            Dim::Workload => e.workload.clone(),
            Dim::Model => e.model.clone(),
            Dim::Day => day_of(e.ts),
            Dim::Provider => e.provider.clone(),
            Dim::Tag => e
                .tags
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(","),
            Dim::Cache => e.cache.as_str().to_string(),
            Dim::Route => e.route.as_str().to_string(),
            Dim::Status => e.status.as_str().to_string(),
        }
    }
}

/// The dimensions to group by, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupBy(pub Vec<Dim>);

/// A bad `--by` value.
#[derive(Debug, thiserror::Error)]
#[error("unknown group-by dimension {0:?} (use account, workload, model, day, provider, tag, cache, route, status)")]
pub struct BadDim(String);

impl GroupBy {
    /// Parses `account,model,day`.
    pub fn parse(s: &str) -> Result<GroupBy, BadDim> {
        let mut dims = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let dim = DIMS
                .iter()
                .find(|(n, _)| *n == part)
                .map(|(_, d)| *d)
                .ok_or_else(|| BadDim(part.to_string()))?;
            dims.push(dim);
        }
        Ok(GroupBy(dims))
    }
}

/// Totals of one group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_write_tokens: u64,
    pub cache_read_tokens: u64,
    pub cost_nusd: u64,
    /// What cache hits would have cost.
    pub saved_nusd: u64,
}

impl Totals {
    /// The totals of one event.
    pub fn of(e: &UsageEvent) -> Totals {
        Totals {
            requests: 1,
            input_tokens: e.usage.input_tokens,
            output_tokens: e.usage.output_tokens,
            cache_write_tokens: e.usage.cache_creation_input_tokens,
            cache_read_tokens: e.usage.cache_read_input_tokens,
            cost_nusd: e.cost_nusd,
            saved_nusd: e.saved_nusd,
        }
    }

    /// As `[requests, input, output, cache_write, cache_read, cost, saved]`.
    pub fn to_array(&self) -> [u64; 7] {
        [
            self.requests,
            self.input_tokens,
            self.output_tokens,
            self.cache_write_tokens,
            self.cache_read_tokens,
            self.cost_nusd,
            self.saved_nusd,
        ]
    }

    /// From [`Totals::to_array`]'s form.
    pub fn from_array(a: [u64; 7]) -> Totals {
        Totals {
            requests: a[0],
            input_tokens: a[1],
            output_tokens: a[2],
            cache_write_tokens: a[3],
            cache_read_tokens: a[4],
            cost_nusd: a[5],
            saved_nusd: a[6],
        }
    }

    fn absorb(&mut self, t: &Totals) {
        self.requests += t.requests;
        self.input_tokens += t.input_tokens;
        self.output_tokens += t.output_tokens;
        self.cache_write_tokens += t.cache_write_tokens;
        self.cache_read_tokens += t.cache_read_tokens;
        self.cost_nusd += t.cost_nusd;
        self.saved_nusd += t.saved_nusd;
    }
}

/// The grouped totals.
#[derive(Debug)]
pub struct UsageReport {
    dims: Vec<Dim>,
    rows: BTreeMap<Vec<String>, Totals>,
}

impl UsageReport {
    /// Sums events into groups.
    pub fn from_events(
        events: impl Iterator<Item = Result<UsageEvent, OutboxError>>,
        by: &GroupBy,
    ) -> Result<UsageReport, OutboxError> {
        let mut report = UsageReport::new(by);
        for event in events {
            report.add(&event?);
        }
        Ok(report)
    }

    /// An empty report grouped `by`.
    pub fn new(by: &GroupBy) -> UsageReport {
        UsageReport {
            dims: by.0.clone(),
            rows: BTreeMap::new(),
        }
    }

    /// Counts one event.
    pub fn add(&mut self, e: &UsageEvent) {
        let key = self.dims.iter().map(|d| d.value(e)).collect();
        self.rows.entry(key).or_default().absorb(&Totals::of(e));
    }

    /// Counts a group's totals already summed elsewhere (a ledger rollup
    /// row); `value` gives the group's value of each dimension.
    pub fn add_group(&mut self, value: &dyn Fn(Dim) -> String, t: &Totals) {
        let key = self.dims.iter().map(|d| value(*d)).collect();
        self.rows.entry(key).or_default().absorb(t);
    }

    /// The grand total.
    pub fn total(&self) -> Totals {
        let mut total = Totals::default();
        for t in self.rows.values() {
            total.absorb(t);
        }
        total
    }

    /// The rows as JSON objects: the group values by dimension name, then
    /// the totals (money as exact decimal strings and as nano-USD).
    pub fn to_json(&self) -> serde_json::Value {
        let rows: Vec<serde_json::Value> = self
            .rows
            .iter()
            .map(|(key, t)| {
                let mut row = serde_json::Map::new();
                for (d, v) in self.dims.iter().zip(key) {
                    row.insert(d.name().into(), v.clone().into());
                }
                for (name, value) in numbers_json(t) {
                    row.insert(name.into(), value);
                }
                serde_json::Value::Object(row)
            })
            .collect();
        let total: serde_json::Map<String, serde_json::Value> = numbers_json(&self.total())
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        serde_json::json!({ "group_by": self.dims.iter().map(|d| d.name()).collect::<Vec<_>>(), "rows": rows, "total": total })
    }

    /// The rows as CSV (RFC 4180), a header first.
    pub fn to_csv(&self) -> Result<String, csv::Error> {
        let mut w = csv::Writer::from_writer(Vec::new());
        let mut header: Vec<String> = self.dims.iter().map(|d| d.name().to_string()).collect();
        header.extend(COLUMNS.iter().map(|c| c.to_string()));
        w.write_record(&header)?;
        for (key, t) in &self.rows {
            w.write_record(key.iter().cloned().chain(numbers(t)))?;
        }
        let bytes = w.into_inner().map_err(|e| e.into_error())?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The rows, keyed by the group values.
    pub fn rows(&self) -> &BTreeMap<Vec<String>, Totals> {
        &self.rows
    }

    /// A fixed-width text table with a total line.
    pub fn render(&self) -> String {
        let mut header: Vec<String> = self.dims.iter().map(|d| d.name().to_string()).collect();
        header.extend(COLUMNS.iter().map(|s| s.to_string()));
        let mut lines = vec![header];
        for (key, t) in &self.rows {
            let mut line: Vec<String> = key
                .iter()
                .map(|k| if k.is_empty() { "-".into() } else { k.clone() })
                .collect();
            line.extend(numbers(t));
            lines.push(line);
        }
        let total = self.total();
        let mut last: Vec<String> = self
            .dims
            .iter()
            .enumerate()
            .map(|(i, _)| {
                if i == 0 {
                    "TOTAL".into()
                } else {
                    String::new()
                }
            })
            .collect();
        if last.is_empty() {
            last.push("TOTAL".into());
            lines[0].insert(0, String::new());
            for line in lines.iter_mut().skip(1) {
                line.insert(0, String::new());
            }
        }
        last.extend(numbers(&total));
        lines.push(last);
        let cols = lines[0].len();
        crate::table::render(&lines, cols - COLUMNS.len())
    }
}

/// The totals' columns.
const COLUMNS: &[&str] = &[
    "requests",
    "input",
    "output",
    "cache_write",
    "cache_read",
    "cost_usd",
    "saved_usd",
];

fn numbers(t: &Totals) -> Vec<String> {
    vec![
        t.requests.to_string(),
        t.input_tokens.to_string(),
        t.output_tokens.to_string(),
        t.cache_write_tokens.to_string(),
        t.cache_read_tokens.to_string(),
        format_usd(t.cost_nusd),
        format_usd(t.saved_nusd),
    ]
}

fn numbers_json(t: &Totals) -> Vec<(&'static str, serde_json::Value)> {
    vec![
        ("requests", t.requests.into()),
        ("input_tokens", t.input_tokens.into()),
        ("output_tokens", t.output_tokens.into()),
        ("cache_write_tokens", t.cache_write_tokens.into()),
        ("cache_read_tokens", t.cache_read_tokens.into()),
        ("cost_usd", format_usd(t.cost_nusd).into()),
        ("cost_nusd", t.cost_nusd.into()),
        ("saved_usd", format_usd(t.saved_nusd).into()),
        ("saved_nusd", t.saved_nusd.into()),
    ]
}

/// `YYYY-MM-DD` (UTC) of a timestamp in microseconds.
pub fn day_of(ts_us: i64) -> String {
    let secs = ts_us.div_euclid(1_000_000);
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(t) => format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day()),
        Err(_) => "invalid".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_formatting() {
        assert_eq!(day_of(0), "1970-01-01");
        assert_eq!(day_of(1_795_000_000_000_000), "2026-11-18");
    }

    #[test]
    fn group_by_parsing() {
        assert_eq!(
            GroupBy::parse("account,day").unwrap().0,
            vec![Dim::Account, Dim::Day]
        );
        assert!(GroupBy::parse("nope").is_err());
    }
}
