//! The exact cache: repeat requests answered locally, concurrent identical
//! requests coalesced onto one upstream call.
//!
//! - [`key`]: what makes two requests the same (blake3 over canonical JSON).
//! - [`store`]: entries in sled, LRU under a byte cap, TTL.
//! - [`writer`]: entries written off the request path.
//! - [`flight`]: requests in flight that identical ones can wait on.
//!
//! One entry answers both kinds of request: a complete message assembled
//! from a stream, and a stream re-synthesised from a message, are the
//! dialects' work (`crate::dialect::assemble`, `crate::dialect::replay`).
//!
//! The request-path stage that uses them is `proxy::cache`.

pub mod flight;
pub mod key;
pub mod store;
pub mod writer;

use std::time::Duration;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use prometheus::{IntCounter, IntCounterVec, IntGauge};
use serde::{Deserialize, Serialize};

use crate::meter::event::CacheOutcome;

pub use key::Key;
pub use store::{Entry, EntryMeta, Put, Store};

/// The exact cache's metrics (handed to the store and the cache stage).
#[derive(Clone)]
pub struct CacheMetrics {
    /// Requests by cache result (hit, miss, bypass, refresh, coalesced).
    pub requests: IntCounterVec,
    /// `requests`' series, one per [`CacheOutcome`] (by its position in
    /// [`CacheOutcome::ALL`]), resolved once: a label lookup per request
    /// (hashing, a lock) was the last one on the request path.
    pub by_result: [IntCounter; CacheOutcome::ALL.len()],
    /// USD that hits and coalesced requests did not spend.
    pub saved_usd: prometheus::Counter,
    /// Entries stored.
    pub entries: IntGauge,
    /// Bytes stored (entries and their index records).
    pub bytes: IntGauge,
    /// Entries evicted to stay under `cache.max_bytes`.
    pub evictions: IntCounter,
    /// Entries dropped because their TTL ran out.
    pub expirations: IntCounter,
    /// Store reads or writes that failed (the request went on uncached).
    pub errors: IntCounter,
}

impl CacheMetrics {
    /// The series of `requests` for each outcome, for [`CacheMetrics::by_result`].
    pub fn result_series(requests: &IntCounterVec) -> [IntCounter; CacheOutcome::ALL.len()] {
        CacheOutcome::ALL.map(|o| requests.with_label_values(&[o.as_str()]))
    }

    /// Counts a request by what the cache did.
    pub fn count(&self, outcome: CacheOutcome) {
        self.by_result[outcome as usize].inc();
    }
}

/// Whether a request may use the cache at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Read and write (the default).
    All,
    /// Neither.
    Off,
}

impl Mode {
    /// `"all"` or `"off"`.
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "all" => Some(Mode::All),
            "off" => Some(Mode::Off),
            _ => None,
        }
    }
}

/// What a `[[cache.rules]]` entry applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuleMatch {
    Account(String),
    Workload(String),
    /// The model as requested.
    Model(String),
}

impl RuleMatch {
    /// `account:NAME`, `workload:NAME` or `model:NAME`.
    pub fn parse(s: &str) -> Result<RuleMatch, String> {
        let (kind, name) = s
            .split_once(':')
            .ok_or_else(|| format!("{s:?} is not account:NAME, workload:NAME or model:NAME"))?;
        if name.is_empty() {
            return Err(format!("{s:?} names nothing after the colon"));
        }
        match kind {
            "account" => Ok(RuleMatch::Account(name.into())),
            "workload" => Ok(RuleMatch::Workload(name.into())),
            "model" => Ok(RuleMatch::Model(name.into())),
            _ => Err(format!(
                "{s:?} is not account:NAME, workload:NAME or model:NAME"
            )),
        }
    }
}

/// A per-account / workload / model override of the mode or TTL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub matches: RuleMatch,
    pub mode: Option<Mode>,
    pub ttl: Option<Duration>,
}

/// `[cache]`, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheConfig {
    pub mode: Mode,
    pub ttl: Duration,
    /// Total size cap (LRU eviction beyond it).
    pub max_bytes: u64,
    /// Larger answers are not stored (nor buffered for coalesced followers).
    pub max_entry_bytes: u64,
    /// Identical requests in flight wait for the first one.
    pub coalesce: bool,
    /// Longest a follower waits for its leader before calling the provider itself.
    pub coalesce_wait: Duration,
    /// Overrides, applied in order: a later match wins for the fields it sets.
    pub rules: Vec<Rule>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            mode: Mode::All,
            ttl: Duration::from_secs(3600),
            max_bytes: 1 << 30,
            max_entry_bytes: 8 << 20,
            coalesce: true,
            coalesce_wait: Duration::from_secs(600),
            rules: Vec::new(),
        }
    }
}

impl CacheConfig {
    /// The mode and TTL for a request.
    pub fn policy(&self, account: &str, workload: &str, model: &str) -> (Mode, Duration) {
        let mut mode = self.mode;
        let mut ttl = self.ttl;
        for rule in &self.rules {
            let applies = match &rule.matches {
                RuleMatch::Account(a) => a == account,
                RuleMatch::Workload(w) => w == workload,
                RuleMatch::Model(m) => m == model,
            };
            if applies {
                mode = rule.mode.unwrap_or(mode);
                ttl = rule.ttl.unwrap_or(ttl);
            }
        }
        (mode, ttl)
    }
}

/// Where the meter stores a complete answer.
#[derive(Clone, Copy, Debug)]
pub struct CacheWrite {
    pub key: Key,
    pub ttl: Duration,
    /// The output bound sent was not the client's (a budget's): store the
    /// answer only if it did not stop at that bound.
    pub unless_cut: bool,
}

/// Why the cache could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("starting the cache writer: {0}")]
    Writer(#[from] std::io::Error),
}

/// The cache as the request path sees it.
pub struct Cache {
    pub config: CacheConfig,
    pub store: Arc<Store>,
    pub flights: Arc<flight::Flights>,
    /// Stores answers off the request path.
    pub writer: writer::Writer,
    pub metrics: CacheMetrics,
}

impl Cache {
    /// Opens the cache on its records.
    pub fn open(
        records: Arc<dyn crate::store::CacheRecords>,
        config: CacheConfig,
        metrics: CacheMetrics,
    ) -> Result<Cache, OpenError> {
        let store = Arc::new(Store::open(
            records,
            config.max_bytes,
            Some(metrics.clone()),
        )?);
        store.maintain()?;
        Ok(Cache {
            writer: writer::Writer::spawn(store.clone(), metrics.clone())?,
            store,
            config,
            flights: Arc::default(),
            metrics,
        })
    }

    /// The store's counts plus the running proxy's counters.
    pub fn stats(&self) -> Stats {
        let s = self.store.stats();
        let mut requests = BTreeMap::new();
        for (outcome, series) in CacheOutcome::ALL.iter().zip(&self.metrics.by_result) {
            requests.insert(outcome.as_str().to_string(), series.get());
        }
        Stats {
            entries: s.entries,
            bytes: s.bytes,
            max_bytes: s.max_bytes,
            in_flight: Some(self.flights.len() as u64),
            requests: Some(requests),
            saved_usd: Some(self.metrics.saved_usd.get()),
            evictions: Some(self.metrics.evictions.get()),
        }
    }
}

/// What `tollgate cache stats` shows. The counters since start exist only
/// for a running proxy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub entries: u64,
    pub bytes: u64,
    pub max_bytes: u64,
    pub in_flight: Option<u64>,
    pub requests: Option<BTreeMap<String, u64>>,
    pub saved_usd: Option<f64>,
    pub evictions: Option<u64>,
}

impl Stats {
    /// Counts of a store no proxy is running on.
    pub fn offline(s: store::Stats) -> Stats {
        Stats {
            entries: s.entries,
            bytes: s.bytes,
            max_bytes: s.max_bytes,
            in_flight: None,
            requests: None,
            saved_usd: None,
            evictions: None,
        }
    }

    /// Plain text, one figure per line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "entries     {}", self.entries);
        let _ = writeln!(
            out,
            "bytes       {} of {} ({:.1}%)",
            self.bytes,
            self.max_bytes,
            self.bytes as f64 * 100.0 / self.max_bytes.max(1) as f64
        );
        if let Some(n) = self.in_flight {
            let _ = writeln!(out, "in flight   {n}");
        }
        if let Some(r) = &self.requests {
            let line: Vec<String> = r.iter().map(|(k, v)| format!("{k} {v}")).collect();
            let _ = writeln!(out, "requests    {}", line.join(", "));
        }
        if let Some(usd) = self.saved_usd {
            let _ = writeln!(out, "saved       ${usd:.6}");
        }
        if let Some(n) = self.evictions {
            let _ = writeln!(out, "evictions   {n}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_override_in_order() {
        let c = CacheConfig {
            rules: vec![
                Rule {
                    matches: RuleMatch::Account("acme".into()),
                    mode: Some(Mode::Off),
                    ttl: None,
                },
                Rule {
                    matches: RuleMatch::Workload("batch".into()),
                    mode: Some(Mode::All),
                    ttl: Some(Duration::from_secs(60)),
                },
                Rule {
                    matches: RuleMatch::Model("m".into()),
                    mode: None,
                    ttl: Some(Duration::from_secs(5)),
                },
            ],
            ..CacheConfig::default()
        };
        let hour = Duration::from_secs(3600);
        assert_eq!(c.policy("x", "", "y"), (Mode::All, hour));
        assert_eq!(c.policy("acme", "", "y"), (Mode::Off, hour));
        assert_eq!(
            c.policy("acme", "batch", "y"),
            (Mode::All, Duration::from_secs(60))
        );
        assert_eq!(
            c.policy("acme", "", "m"),
            (Mode::Off, Duration::from_secs(5))
        );
        assert!(RuleMatch::parse("tag:x").is_err());
        assert!(RuleMatch::parse("model:").is_err());
        assert_eq!(
            RuleMatch::parse("model:gpt-4o"),
            Ok(RuleMatch::Model("gpt-4o".into()))
        );
    }
}
