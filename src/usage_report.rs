//! `tollgate usage`: the usage table (requests, tokens, cost) grouped by
//! account / model / day / provider / status, read from the outbox.

use std::collections::BTreeMap;

use crate::meter::event::UsageEvent;
use crate::meter::money::format_usd;
use crate::store::outbox::OutboxError;

/// A grouping dimension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dim {
    Account,
    Model,
    Day,
    Provider,
    Status,
}

impl Dim {
    fn name(self) -> &'static str {
        match self {
            Dim::Account => "account",
            Dim::Model => "model",
            Dim::Day => "day",
            Dim::Provider => "provider",
            Dim::Status => "status",
        }
    }

    fn value(self, e: &UsageEvent) -> String {
        match self {
            Dim::Account => e.account.clone(),
            Dim::Model => e.model.clone(),
            Dim::Day => day_of(e.ts),
            Dim::Provider => e.provider.clone(),
            Dim::Status => e.status.as_str().to_string(),
        }
    }
}

/// The dimensions to group by, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupBy(pub Vec<Dim>);

/// A bad `--by` value.
#[derive(Debug, thiserror::Error)]
#[error("unknown group-by dimension {0:?} (use account, model, day, provider, status)")]
pub struct BadDim(String);

impl GroupBy {
    /// Parses `account,model,day`.
    pub fn parse(s: &str) -> Result<GroupBy, BadDim> {
        let mut dims = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            dims.push(match part {
                "account" => Dim::Account,
                "model" => Dim::Model,
                "day" => Dim::Day,
                "provider" => Dim::Provider,
                "status" => Dim::Status,
                other => return Err(BadDim(other.to_string())),
            });
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
        let t = self.rows.entry(key).or_default();
        t.requests += 1;
        t.input_tokens += e.usage.input_tokens;
        t.output_tokens += e.usage.output_tokens;
        t.cache_write_tokens += e.usage.cache_creation_input_tokens;
        t.cache_read_tokens += e.usage.cache_read_input_tokens;
        t.cost_nusd += e.cost_nusd;
    }

    /// The rows, keyed by the group values.
    pub fn rows(&self) -> &BTreeMap<Vec<String>, Totals> {
        &self.rows
    }

    /// A fixed-width text table with a total line.
    pub fn render(&self) -> String {
        let mut header: Vec<String> = self.dims.iter().map(|d| d.name().to_string()).collect();
        header.extend(
            [
                "requests",
                "input",
                "output",
                "cache_write",
                "cache_read",
                "cost_usd",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        let mut lines = vec![header];
        let mut total = Totals::default();
        for (key, t) in &self.rows {
            let mut line: Vec<String> = key
                .iter()
                .map(|k| if k.is_empty() { "-".into() } else { k.clone() })
                .collect();
            line.extend(numbers(t));
            lines.push(line);
            total.requests += t.requests;
            total.input_tokens += t.input_tokens;
            total.output_tokens += t.output_tokens;
            total.cache_write_tokens += t.cache_write_tokens;
            total.cache_read_tokens += t.cache_read_tokens;
            total.cost_nusd += t.cost_nusd;
        }
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
        crate::table::render(&lines, cols - 6)
    }
}

fn numbers(t: &Totals) -> Vec<String> {
    vec![
        t.requests.to_string(),
        t.input_tokens.to_string(),
        t.output_tokens.to_string(),
        t.cache_write_tokens.to_string(),
        t.cache_read_tokens.to_string(),
        format_usd(t.cost_nusd),
    ]
}

/// `YYYY-MM-DD` (UTC) of a timestamp in microseconds.
fn day_of(ts_us: i64) -> String {
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
