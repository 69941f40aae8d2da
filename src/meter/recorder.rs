//! The recorder: prices a call, updates the metrics and appends its usage
//! event to the outbox. The one place a finished request turns into money.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use super::event::{Status, UsageEvent};
use super::outbox::{Outbox, OutboxError};
use super::prices::{Cost, PriceTable};
use crate::dialect::Usage;
use crate::metrics::Metrics;

/// Prices, records and counts usage.
pub struct Recorder {
    prices: PriceTable,
    /// `outbox.sync`: wait for durability in [`Recorder::record`].
    sync: bool,
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
    pub fn new(prices: PriceTable, outbox: Outbox, metrics: Metrics, sync: bool) -> Recorder {
        Recorder {
            prices,
            sync,
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
        let cost = self.prices.cost(model, usage, false);
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

    /// Records an event and returns once it is durable (with `outbox.sync`;
    /// otherwise once it is queued for the next group commit).
    pub async fn record(
        &self,
        event: UsageEvent,
        times: Option<UpstreamTimes>,
    ) -> Result<(), OutboxError> {
        self.count(&event, times);
        if self.sync {
            self.outbox.append(event).await
        } else {
            self.outbox.append_detached(event)
        }
    }

    /// Records an event without waiting for durability (drop paths).
    pub fn record_detached(&self, event: UsageEvent) {
        self.count(&event, None);
        if let Err(e) = self.outbox.append_detached(event) {
            tracing::error!(error = %e, "usage event lost: the outbox is closed");
        }
    }

    fn count(&self, e: &UsageEvent, times: Option<UpstreamTimes>) {
        let m = &self.metrics;
        let provider = e.provider.as_str();
        m.requests
            .with_label_values(&[provider, e.route.as_str(), e.status.as_str()])
            .inc();
        // Hits and coalesced requests consumed no provider tokens.
        let served_locally = matches!(
            e.cache,
            super::event::CacheOutcome::Hit | super::event::CacheOutcome::Coalesced
        );
        for (kind, n) in [
            ("input", e.input_tokens),
            ("output", e.output_tokens),
            ("cache_write", e.cache_creation_input_tokens),
            ("cache_read", e.cache_read_input_tokens),
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
