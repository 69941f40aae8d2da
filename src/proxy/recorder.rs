//! The recorder: prices a call, updates the metrics, journals a request's
//! open record before it is sent and its usage event when it ends. The one
//! place a finished request turns into money.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use prometheus::{Counter, Histogram, IntCounter};

use crate::dialect::Usage;
use crate::meter::event::{Charge, OpenRecordRef, Status, UsageEvent};
use crate::meter::prices::{Cost, PriceTable};
use crate::metrics::Metrics;
use crate::store::journal::Load;
use crate::store::outbox::{Outbox, OutboxError};

/// Prices, records and counts usage.
pub struct Recorder {
    prices: PriceTable,
    outbox: Outbox,
    metrics: Metrics,
    /// Models already warned about as unpriced (warn once per model).
    warned: Mutex<HashSet<String>>,
    /// Each provider's metric children, resolved once (see [`Children`]).
    children: RwLock<Vec<Arc<Children>>>,
}

/// Route kinds × statuses a provider's `requests` children are kept for
/// (more than either enum has; anything beyond is looked up each time).
const KINDS: usize = 8;

/// One provider's metric children, each resolved on first use: a
/// `with_label_values` hashes every label and takes the vector's lock, and
/// a request counts up to six of them before its answer goes out. Resolved
/// lazily so that `/metrics` shows a series only once it has counted.
struct Children {
    provider: String,
    requests: [OnceLock<IntCounter>; KINDS * KINDS],
    /// input, output, cache_write, cache_read.
    tokens: [OnceLock<IntCounter>; 4],
    cost: OnceLock<Counter>,
    upstream: OnceLock<Histogram>,
    ttfb: OnceLock<Histogram>,
}

impl Children {
    fn new(provider: &str) -> Children {
        Children {
            provider: provider.to_string(),
            requests: std::array::from_fn(|_| OnceLock::new()),
            tokens: std::array::from_fn(|_| OnceLock::new()),
            cost: OnceLock::new(),
            upstream: OnceLock::new(),
            ttfb: OnceLock::new(),
        }
    }
}

/// Upstream timings of a call, for the latency histograms.
#[derive(Clone, Copy, Debug, Default)]
pub struct UpstreamTimes {
    pub total: Duration,
    pub ttfb: Duration,
}

impl Recorder {
    pub fn new(prices: PriceTable, outbox: Outbox, metrics: Metrics) -> Recorder {
        Recorder {
            prices,
            outbox,
            metrics,
            warned: Mutex::new(HashSet::new()),
            children: RwLock::new(Vec::new()),
        }
    }

    /// `provider`'s metric children (added on its first event).
    fn children(&self, provider: &str) -> Arc<Children> {
        let known = self.children.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = known.iter().find(|c| c.provider == provider) {
            return Arc::clone(c);
        }
        drop(known);
        let mut known = self
            .children
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = known.iter().find(|c| c.provider == provider) {
            return Arc::clone(c);
        }
        let c = Arc::new(Children::new(provider));
        known.push(Arc::clone(&c));
        c
    }

    /// The price table.
    pub fn prices(&self) -> &PriceTable {
        &self.prices
    }

    /// The outbox events go to.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// The cost of a call. An unknown model is priced by the fallback,
    /// counted in `tollgate_unpriced_requests_total` and warned about once.
    pub fn price(&self, model: &str, usage: &Usage) -> Cost {
        self.price_at(
            model,
            usage,
            time::OffsetDateTime::now_utc().unix_timestamp(),
        )
    }

    /// [`Recorder::price`] with the prices in force at `at` (Unix seconds):
    /// a request is priced as of its start.
    pub fn price_at(&self, model: &str, usage: &Usage, at: i64) -> Cost {
        let cost = self.prices.cost_at(model, usage, false, at);
        if !cost.priced {
            self.metrics.unpriced.with_label_values(&[model]).inc();
            let first = self
                .warned
                .lock()
                .map(|mut w| w.insert(model.to_string()))
                .unwrap_or(false);
            if first {
                tracing::warn!(
                    model,
                    "model is not in the price table; priced by price_fallback"
                );
            }
        }
        cost
    }

    /// Journals a request's open record before it is sent; returns once it
    /// is committed (the one durability wait on the request path).
    pub async fn open(&self, record: OpenRecordRef<'_>, load: Load) -> Result<(), OutboxError> {
        self.outbox.begin(record, load).await
    }

    /// Queues a final event (counted and settled before this call) for the
    /// journal's next group commit.
    pub fn queue(&self, event: UsageEvent, charges: Vec<Charge>) {
        if let Err(e) = self.outbox.append(event, charges) {
            tracing::error!(error = %e, "usage event lost: the outbox is closed");
        }
    }

    /// Records final events (their spend settled before this call) and
    /// returns once they are committed to the journal.
    pub async fn record_committed(
        &self,
        finals: Vec<(UsageEvent, Vec<Charge>)>,
    ) -> Result<(), OutboxError> {
        for (event, _) in &finals {
            self.count(event, None);
        }
        self.outbox.append_committed(finals).await
    }

    /// Records an event that spent nothing (cache hits, refusals).
    pub fn record_detached(&self, event: UsageEvent) {
        self.count(&event, None);
        self.queue(event, Vec::new());
    }

    /// Counts the events recovered at start-up as interrupted.
    pub fn count_recovered(&self, events: &[UsageEvent]) {
        for e in events {
            self.count(e, None);
        }
    }

    /// Counts a final event in the metrics.
    pub fn count(&self, e: &UsageEvent, times: Option<UpstreamTimes>) {
        let m = &self.metrics;
        let provider = e.provider.as_str();
        let c = self.children(provider);
        let requests = || {
            m.requests
                .with_label_values(&[provider, e.route.as_str(), e.status.as_str()])
        };
        let kind = (e.route as usize) * KINDS + e.status as usize;
        match c.requests.get(kind) {
            Some(slot) if (e.status as usize) < KINDS => slot.get_or_init(requests).inc(),
            _ => requests().inc(),
        }
        // Hits and coalesced requests consumed no provider tokens.
        let served_locally = matches!(
            e.cache,
            crate::meter::event::CacheOutcome::Hit | crate::meter::event::CacheOutcome::Coalesced
        );
        for (slot, (kind, n)) in c.tokens.iter().zip([
            ("input", e.usage.input_tokens),
            ("output", e.usage.output_tokens),
            ("cache_write", e.usage.cache_creation_input_tokens),
            ("cache_read", e.usage.cache_read_input_tokens),
        ]) {
            if n > 0 && !served_locally {
                slot.get_or_init(|| m.tokens.with_label_values(&[provider, kind]))
                    .inc_by(n);
            }
        }
        if e.cost_nusd > 0 {
            c.cost
                .get_or_init(|| m.cost_usd.with_label_values(&[provider]))
                .inc_by(e.cost_nusd as f64 / 1e9);
        }
        if let Some(t) = times {
            c.upstream
                .get_or_init(|| m.upstream_seconds.with_label_values(&[provider]))
                .observe(t.total.as_secs_f64());
            c.ttfb
                .get_or_init(|| m.upstream_ttfb_seconds.with_label_values(&[provider]))
                .observe(t.ttfb.as_secs_f64());
        }
        if e.status == Status::ProxyError {
            if let Some(kind) = &e.error {
                m.proxy_errors.with_label_values(&[kind]).inc();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meter::event::RouteKind;
    use crate::store::outbox::OutboxOptions;

    fn recorder(dir: &std::path::Path) -> Recorder {
        let db = sled::open(dir.join("db")).unwrap();
        let metrics = Metrics::new().unwrap();
        let (outbox, _) = Outbox::open(
            Arc::new(crate::store::sled::EventTree::open(&db).unwrap()),
            &dir.join("journal"),
            OutboxOptions {
                retention: Duration::from_secs(3600),
                sync: false,
            },
            metrics.outbox.clone(),
            None,
        )
        .unwrap();
        Recorder::new(PriceTable::builtin(), outbox, metrics)
    }

    fn event(provider: &str, route: RouteKind, status: Status, input: u64) -> UsageEvent {
        UsageEvent {
            provider: provider.into(),
            route,
            status,
            cost_nusd: input,
            usage: Usage {
                input_tokens: input,
                ..Usage::default()
            },
            ..UsageEvent::default()
        }
    }

    #[test]
    fn each_provider_and_outcome_counts_in_its_own_series() {
        let dir = tempfile::tempdir().unwrap();
        let r = recorder(dir.path());
        let times = Some(UpstreamTimes::default());
        r.count(&event("a", RouteKind::Sync, Status::Ok, 5), times);
        r.count(&event("a", RouteKind::Sync, Status::Ok, 7), times);
        r.count(&event("b", RouteKind::Stream, Status::Ok, 11), None);
        r.count(
            &event("a", RouteKind::Stream, Status::ProviderError, 0),
            None,
        );
        let m = &r.metrics;
        let requests = |p: &str, route: &str, status: &str| {
            m.requests.with_label_values(&[p, route, status]).get()
        };
        assert_eq!(requests("a", "sync", "ok"), 2);
        assert_eq!(requests("b", "stream", "ok"), 1);
        assert_eq!(requests("a", "stream", "provider_error"), 1);
        assert_eq!(requests("b", "sync", "ok"), 0);
        assert_eq!(m.tokens.with_label_values(&["a", "input"]).get(), 12);
        assert_eq!(m.tokens.with_label_values(&["b", "input"]).get(), 11);
        assert_eq!(
            m.upstream_seconds
                .with_label_values(&["a"])
                .get_sample_count(),
            2
        );
        assert_eq!(
            m.upstream_seconds
                .with_label_values(&["b"])
                .get_sample_count(),
            0
        );
        assert!((m.cost_usd.with_label_values(&["b"]).get() - 11e-9).abs() < 1e-15);
    }

    #[test]
    fn a_series_appears_only_once_it_counted() {
        let dir = tempfile::tempdir().unwrap();
        let r = recorder(dir.path());
        r.count(&event("a", RouteKind::Sync, Status::Ok, 0), None);
        let names: Vec<String> = r
            .metrics
            .registry
            .gather()
            .iter()
            .filter(|f| f.name() == "tollgate_tokens_total")
            .flat_map(|f| f.get_metric().to_vec())
            .map(|m| format!("{:?}", m.get_label()))
            .collect();
        assert!(names.is_empty(), "{names:?}");
    }
}
