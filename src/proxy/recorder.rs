//! The recorder: prices a call, updates the metrics, journals a request's
//! open record before it is sent and its usage event when it ends. The one
//! place a finished request turns into money.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use crate::dialect::Usage;
use crate::meter::event::{Charge, OpenRecord, Status, UsageEvent};
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
        }
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
    pub async fn open(&self, record: OpenRecord, load: Load) -> Result<(), OutboxError> {
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
        m.requests
            .with_label_values(&[provider, e.route.as_str(), e.status.as_str()])
            .inc();
        // Hits and coalesced requests consumed no provider tokens.
        let served_locally = matches!(
            e.cache,
            crate::meter::event::CacheOutcome::Hit | crate::meter::event::CacheOutcome::Coalesced
        );
        for (kind, n) in [
            ("input", e.usage.input_tokens),
            ("output", e.usage.output_tokens),
            ("cache_write", e.usage.cache_creation_input_tokens),
            ("cache_read", e.usage.cache_read_input_tokens),
        ] {
            if n > 0 && !served_locally {
                m.tokens.with_label_values(&[provider, kind]).inc_by(n);
            }
        }
        if e.cost_nusd > 0 {
            m.cost_usd
                .with_label_values(&[provider])
                .inc_by(e.cost_nusd as f64 / 1e9);
        }
        if let Some(t) = times {
            m.upstream_seconds
                .with_label_values(&[provider])
                .observe(t.total.as_secs_f64());
            m.upstream_ttfb_seconds
                .with_label_values(&[provider])
                .observe(t.ttfb.as_secs_f64());
        }
        if e.status == Status::ProxyError {
            if let Some(kind) = &e.error {
                m.proxy_errors.with_label_values(&[kind]).inc();
            }
        }
    }
}
