//! Every metric tollgate exports, declared in one place and registered once
//! on a [`prometheus::Registry`] that `main` creates and hands down (no
//! globals). Names: `tollgate_` prefix, `_total` for counters, units in the
//! name.

use prometheus::{
    CounterVec, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, Opts, Registry,
};

use crate::budget::{Budget, BudgetGauges, LedgerMetrics};

use crate::cache::CacheMetrics;
use crate::store::outbox::OutboxMetrics;

/// Buckets for whole-request and upstream latencies (seconds): LLM calls run
/// from milliseconds (errors, cache hits) to minutes (long generations).
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];
/// Buckets for tollgate's own added latency (seconds): microseconds matter.
const OVERHEAD_BUCKETS: &[f64] = &[
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
];

/// The metrics registry and every metric in it.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Requests by provider, route (sync|stream|passthrough) and status.
    pub requests: IntCounterVec,
    /// Tokens by provider and kind (input|output|cache_write|cache_read).
    pub tokens: IntCounterVec,
    /// Metered cost in USD by provider (the ledger keeps exact nano-USD).
    pub cost_usd: CounterVec,
    /// Upstream response time, request sent → last byte, by provider.
    pub upstream_seconds: HistogramVec,
    /// Upstream time to first byte (response headers), by provider.
    pub upstream_ttfb_seconds: HistogramVec,
    /// Time tollgate itself adds to a request (everything but waiting on the upstream).
    pub added_seconds: Histogram,
    /// Requests for a model missing from the price table, by model.
    pub unpriced: IntCounterVec,
    /// Responses tollgate made itself, by error kind.
    pub proxy_errors: IntCounterVec,
    /// Requests in flight right now.
    pub in_flight: IntGauge,
    /// Outbox gauges and counters.
    pub outbox: OutboxMetrics,
    /// Budget remaining in the current period, USD, by budget.
    pub budget_remaining_usd: GaugeVec,
    /// Budget reserved by requests in flight, USD, by budget.
    pub budget_reserved_usd: GaugeVec,
    /// Budget spent in the current period, USD, by budget.
    pub budget_spent_usd: GaugeVec,
    /// Requests refused or cut by a budget, by budget and reason
    /// (denied, stream_input, clamped counts lowered max_tokens).
    pub budget_denials: IntCounterVec,
    /// Soft-threshold alerts fired, by budget.
    pub budget_alerts: IntCounterVec,
    /// Alert webhook deliveries that gave up.
    pub budget_alert_failures: IntCounter,
    /// Requests refused by a rate limit, by rule and kind (requests|tokens).
    pub rate_limited: IntCounterVec,
    /// Requests refused for their gateway key, by reason (missing|invalid|wrong_mode|account).
    pub key_rejections: IntCounterVec,
    /// The exact cache.
    pub cache: CacheMetrics,
    /// Requests with an `Idempotency-Key`, by outcome
    /// (first|replay|wait|conflict|mismatch).
    pub idempotency: IntCounterVec,
    /// Attempts of routed requests, by provider and outcome.
    pub route_attempts: IntCounterVec,
    /// Provider batches tollgate tracked, by outcome
    /// (created|denied|refused|interrupted|settled).
    pub batches: IntCounterVec,
    /// Settled batch items, by result
    /// (succeeded|errored|canceled|expired|missing).
    pub batch_items: IntCounterVec,
    /// What open batches hold against budgets, USD.
    pub batch_reserved_usd: prometheus::Gauge,
    /// Shipping usage to the control endpoint.
    pub ship: ShipMetrics,
    /// The version of the control endpoint's snapshot in use (0: none).
    pub sync_version: IntGauge,
    /// Sync attempts that failed.
    pub sync_errors: IntCounter,
    /// Leases of fleet budgets.
    pub lease: LeaseMetrics,
}

/// Leases of budgets held by the control endpoint.
#[derive(Clone)]
pub struct LeaseMetrics {
    /// Unused lease (granted − consumed − reserved), USD, by budget.
    pub held_usd: GaugeVec,
    /// This sidecar's consumption in the current period, USD, by budget.
    pub consumed_usd: GaugeVec,
    /// Requests that waited for a grant, by outcome (granted|denied).
    pub waits: IntCounterVec,
    /// How long those waits took.
    pub wait_seconds: Histogram,
    /// Requests refused because the lease could not cover them, by budget.
    pub denials: IntCounterVec,
    /// Renewals, by outcome (ok|unreachable|refused).
    pub renewals: IntCounterVec,
    /// Time the control endpoint was unreachable for renewals, seconds.
    pub unreachable_seconds: prometheus::Counter,
    /// 1 while the last renewal could not reach the control endpoint.
    pub unreachable: IntGauge,
}

/// Shipping usage to the control endpoint.
#[derive(Clone)]
pub struct ShipMetrics {
    /// Events the control endpoint acknowledged.
    pub shipped: IntCounter,
    /// Shipping attempts that failed (unreachable, refused, timed out).
    pub errors: IntCounter,
    /// Age of the oldest event not yet acknowledged, seconds (0: none).
    pub lag_seconds: prometheus::Gauge,
    /// Events dropped because the outbox passed `ship.max_outbox_events`.
    pub dropped: IntCounter,
    /// Events the control endpoint refused: accounts the credential does not serve.
    pub refused: IntCounter,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "tollgate_requests_total",
                "Requests handled, by provider, route and final status (interrupted: in flight when the sidecar stopped, counted at start-up).",
            ),
            &["provider", "route", "status"],
        )?;
        let tokens = IntCounterVec::new(
            Opts::new(
                "tollgate_tokens_total",
                "Tokens metered, by provider and kind (input, output, cache_write, cache_read).",
            ),
            &["provider", "kind"],
        )?;
        let cost_usd = CounterVec::new(
            Opts::new(
                "tollgate_cost_usd_total",
                "Metered cost in USD, by provider (the usage ledger keeps exact nano-USD).",
            ),
            &["provider"],
        )?;
        let upstream_seconds = HistogramVec::new(
            HistogramOpts::new(
                "tollgate_upstream_duration_seconds",
                "Upstream response time from request sent to last byte, by provider.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["provider"],
        )?;
        let upstream_ttfb_seconds = HistogramVec::new(
            HistogramOpts::new(
                "tollgate_upstream_ttfb_seconds",
                "Upstream time to first response byte (headers), by provider.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["provider"],
        )?;
        let added_seconds = Histogram::with_opts(
            HistogramOpts::new("tollgate_added_latency_seconds", "Latency tollgate adds to a request: its own stages, excluding time spent waiting on the upstream.")
                .buckets(OVERHEAD_BUCKETS.to_vec()),
        )?;
        let unpriced = IntCounterVec::new(
            Opts::new("tollgate_unpriced_requests_total", "Requests for a model missing from the price table (priced by the fallback), by model."),
            &["model"],
        )?;
        let proxy_errors = IntCounterVec::new(
            Opts::new(
                "tollgate_proxy_errors_total",
                "Error responses tollgate made itself, by kind (x-tollgate-error).",
            ),
            &["kind"],
        )?;
        let in_flight = IntGauge::new(
            "tollgate_requests_in_flight",
            "Requests being handled right now.",
        )?;
        let outbox = OutboxMetrics {
            depth: IntGauge::new(
                "tollgate_outbox_depth",
                "Usage events held in the local outbox.",
            )?,
            errors: IntCounter::new(
                "tollgate_outbox_errors_total",
                "Failed usage-journal writes or syncs and outbox writes.",
            )?,
            flush_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "tollgate_outbox_flush_seconds",
                    "Time of one usage-journal group commit (batch write + fdatasync when a request waits on it).",
                )
                .buckets(OVERHEAD_BUCKETS.to_vec()),
            )?,
            batch_size: Histogram::with_opts(
                HistogramOpts::new(
                    "tollgate_outbox_batch_events",
                    "Usage-journal records (open records and events) per group commit.",
                )
                .buckets(vec![
                    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0,
                ]),
            )?,
        };
        let budget_remaining_usd = GaugeVec::new(
            Opts::new(
                "tollgate_budget_remaining_usd",
                "What a budget can still reserve in its current period, USD.",
            ),
            &["budget"],
        )?;
        let budget_reserved_usd = GaugeVec::new(
            Opts::new(
                "tollgate_budget_reserved_usd",
                "Worst cases reserved against a budget by requests in flight, USD.",
            ),
            &["budget"],
        )?;
        let budget_spent_usd = GaugeVec::new(
            Opts::new(
                "tollgate_budget_spent_usd",
                "Settled spend of a budget in its current period, USD.",
            ),
            &["budget"],
        )?;
        let budget_denials = IntCounterVec::new(
            Opts::new("tollgate_budget_denials_total", "Requests a budget refused (denied), cut at message_start (stream_input) or clamped, by budget and reason."),
            &["budget", "reason"],
        )?;
        let budget_alerts = IntCounterVec::new(
            Opts::new(
                "tollgate_budget_alerts_total",
                "Soft-threshold alerts fired, by budget.",
            ),
            &["budget"],
        )?;
        let budget_alert_failures = IntCounter::new(
            "tollgate_budget_alert_failures_total",
            "Alert webhook deliveries that failed every retry.",
        )?;
        let rate_limited = IntCounterVec::new(
            Opts::new(
                "tollgate_rate_limited_total",
                "Requests refused by a rate limit (429), by rule and kind (requests, tokens).",
            ),
            &["rule", "kind"],
        )?;
        let key_rejections = IntCounterVec::new(
            Opts::new("tollgate_gateway_key_rejections_total", "Requests refused for their gateway key, by reason (missing, invalid, wrong_mode, account)."),
            &["reason"],
        )?;
        let idempotency = IntCounterVec::new(
            Opts::new("tollgate_idempotency_requests_total", "Requests with an Idempotency-Key, by outcome: first (ran), replay (the stored answer), wait (waited for the first), conflict (409: the first still running), mismatch (422: the key was used with another request)."),
            &["outcome"],
        )?;
        let batches = IntCounterVec::new(
            Opts::new("tollgate_batches_total", "Provider batches (Anthropic Message Batches, OpenAI batches) by outcome: created (accepted by the provider, reservation held), denied (a budget could not hold its worst case: 402, not sent), refused (the provider refused the create: released), interrupted (the create's outcome is unknown, a crash or a cut: charged its worst case), settled (results read, one event per item, reservation settled)."),
            &["outcome"],
        )?;
        let batch_items = IntCounterVec::new(
            Opts::new("tollgate_batch_items_total", "Settled batch items by result: succeeded (billed at the batch price), errored, canceled, expired (0), missing (not in the results file: 0)."),
            &["result"],
        )?;
        let batch_reserved_usd = prometheus::Gauge::new(
            "tollgate_batch_reserved_usd",
            "What the batches still open at the provider hold against budgets (their items' worst cases at the batch price), USD.",
        )?;
        let route_attempts = IntCounterVec::new(
            Opts::new("tollgate_route_attempts_total", "Attempts of routed requests (aliases, x-tollgate-fallback), by the target's provider and outcome: success, upstream_error, connect_failure, first_byte_timeout, skipped (not sent: untranslatable, or no key for the provider)."),
            &["provider", "outcome"],
        )?;
        let cache_requests = IntCounterVec::new(
            Opts::new("tollgate_cache_requests_total", "Metered requests by what the exact cache did: hit, miss, bypass, refresh or coalesced."),
            &["result"],
        )?;
        let cache = CacheMetrics {
            by_result: CacheMetrics::result_series(&cache_requests),
            requests: cache_requests,
            saved_usd: prometheus::Counter::new(
                "tollgate_cache_saved_usd_total",
                "USD not spent thanks to cache hits and coalesced requests (what those calls would have cost).",
            )?,
            entries: IntGauge::new("tollgate_cache_entries", "Entries in the exact cache.")?,
            bytes: IntGauge::new(
                "tollgate_cache_bytes",
                "Bytes held by the exact cache (counted against cache.max_bytes).",
            )?,
            evictions: IntCounter::new(
                "tollgate_cache_evictions_total",
                "Least-recently-used entries evicted to stay under cache.max_bytes.",
            )?,
            expirations: IntCounter::new(
                "tollgate_cache_expirations_total",
                "Entries dropped because their TTL ran out.",
            )?,
            errors: IntCounter::new(
                "tollgate_cache_errors_total",
                "Cache store reads or writes that failed; the request went on uncached.",
            )?,
        };
        let ship = ShipMetrics {
            shipped: IntCounter::new(
                "tollgate_shipped_events_total",
                "Usage events the control endpoint acknowledged.",
            )?,
            errors: IntCounter::new(
                "tollgate_ship_errors_total",
                "Shipping attempts that failed (control endpoint unreachable, refusing, or slow).",
            )?,
            lag_seconds: prometheus::Gauge::new(
                "tollgate_ship_lag_seconds",
                "Age of the oldest usage event not yet acknowledged by the control endpoint (0 when none).",
            )?,
            dropped: IntCounter::new(
                "tollgate_outbox_dropped_total",
                "Usage events dropped because the outbox passed ship.max_outbox_events.",
            )?,
            refused: IntCounter::new(
                "tollgate_ship_refused_total",
                "Usage events the control endpoint refused: accounts this sidecar's credential does not serve.",
            )?,
        };
        let sync_version = IntGauge::new(
            "tollgate_sync_version",
            "Version of the control endpoint's snapshot in use (0: none).",
        )?;
        let sync_errors = IntCounter::new(
            "tollgate_sync_errors_total",
            "Syncs with the control endpoint that failed.",
        )?;
        let lease = LeaseMetrics {
            held_usd: GaugeVec::new(
                Opts::new(
                    "tollgate_lease_held_usd",
                    "Unused lease of a fleet budget (granted, less consumed and reserved), USD, by budget.",
                ),
                &["budget"],
            )?,
            consumed_usd: GaugeVec::new(
                Opts::new(
                    "tollgate_lease_consumed_usd",
                    "This sidecar's spend from a fleet budget in the current period, USD, by budget.",
                ),
                &["budget"],
            )?,
            waits: IntCounterVec::new(
                Opts::new(
                    "tollgate_lease_waits_total",
                    "Requests that waited for a lease grant (lease_wait at most), by outcome (granted, denied).",
                ),
                &["outcome"],
            )?,
            wait_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "tollgate_lease_wait_seconds",
                    "How long requests waited for a lease grant.",
                )
                .buckets(OVERHEAD_BUCKETS.to_vec()),
            )?,
            denials: IntCounterVec::new(
                Opts::new(
                    "tollgate_lease_denials_total",
                    "Requests refused because this sidecar's lease of a fleet budget could not cover them, by budget.",
                ),
                &["budget"],
            )?,
            renewals: IntCounterVec::new(
                Opts::new(
                    "tollgate_lease_renewals_total",
                    "Lease renewals with the control endpoint, by outcome (ok, unreachable, refused).",
                ),
                &["outcome"],
            )?,
            unreachable_seconds: prometheus::Counter::new(
                "tollgate_lease_unreachable_seconds_total",
                "Time the control endpoint could not be reached for lease renewals, seconds.",
            )?,
            unreachable: IntGauge::new(
                "tollgate_lease_unreachable",
                "1 while the last lease renewal could not reach the control endpoint, else 0.",
            )?,
        };
        registry.register(Box::new(lease.held_usd.clone()))?;
        registry.register(Box::new(lease.consumed_usd.clone()))?;
        registry.register(Box::new(lease.waits.clone()))?;
        registry.register(Box::new(lease.wait_seconds.clone()))?;
        registry.register(Box::new(lease.denials.clone()))?;
        registry.register(Box::new(lease.renewals.clone()))?;
        registry.register(Box::new(lease.unreachable_seconds.clone()))?;
        registry.register(Box::new(lease.unreachable.clone()))?;
        registry.register(Box::new(sync_version.clone()))?;
        registry.register(Box::new(sync_errors.clone()))?;
        registry.register(Box::new(ship.shipped.clone()))?;
        registry.register(Box::new(ship.errors.clone()))?;
        registry.register(Box::new(ship.lag_seconds.clone()))?;
        registry.register(Box::new(ship.dropped.clone()))?;
        registry.register(Box::new(ship.refused.clone()))?;
        registry.register(Box::new(cache.requests.clone()))?;
        registry.register(Box::new(cache.saved_usd.clone()))?;
        registry.register(Box::new(cache.entries.clone()))?;
        registry.register(Box::new(cache.bytes.clone()))?;
        registry.register(Box::new(cache.evictions.clone()))?;
        registry.register(Box::new(cache.expirations.clone()))?;
        registry.register(Box::new(cache.errors.clone()))?;
        registry.register(Box::new(budget_remaining_usd.clone()))?;
        registry.register(Box::new(budget_reserved_usd.clone()))?;
        registry.register(Box::new(budget_spent_usd.clone()))?;
        registry.register(Box::new(budget_denials.clone()))?;
        registry.register(Box::new(budget_alerts.clone()))?;
        registry.register(Box::new(budget_alert_failures.clone()))?;
        registry.register(Box::new(rate_limited.clone()))?;
        registry.register(Box::new(key_rejections.clone()))?;
        registry.register(Box::new(idempotency.clone()))?;
        registry.register(Box::new(batches.clone()))?;
        registry.register(Box::new(batch_items.clone()))?;
        registry.register(Box::new(batch_reserved_usd.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(route_attempts.clone()))?;
        registry.register(Box::new(tokens.clone()))?;
        registry.register(Box::new(cost_usd.clone()))?;
        registry.register(Box::new(upstream_seconds.clone()))?;
        registry.register(Box::new(upstream_ttfb_seconds.clone()))?;
        registry.register(Box::new(added_seconds.clone()))?;
        registry.register(Box::new(unpriced.clone()))?;
        registry.register(Box::new(proxy_errors.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(outbox.depth.clone()))?;
        registry.register(Box::new(outbox.errors.clone()))?;
        registry.register(Box::new(outbox.flush_seconds.clone()))?;
        registry.register(Box::new(outbox.batch_size.clone()))?;
        Ok(Metrics {
            registry,
            requests,
            tokens,
            cost_usd,
            upstream_seconds,
            upstream_ttfb_seconds,
            added_seconds,
            unpriced,
            proxy_errors,
            in_flight,
            outbox,
            budget_remaining_usd,
            budget_reserved_usd,
            budget_spent_usd,
            budget_denials,
            budget_alerts,
            budget_alert_failures,
            rate_limited,
            key_rejections,
            cache,
            idempotency,
            route_attempts,
            batches,
            batch_items,
            batch_reserved_usd,
            ship,
            sync_version,
            sync_errors,
            lease,
        })
    }

    /// Per-budget metric handles for the ledger, resolved once.
    pub fn ledger(&self, budgets: &[Budget]) -> LedgerMetrics {
        LedgerMetrics {
            gauges: budgets
                .iter()
                .map(|b| BudgetGauges {
                    remaining_usd: self.budget_remaining_usd.with_label_values(&[&b.name]),
                    reserved_usd: self.budget_reserved_usd.with_label_values(&[&b.name]),
                    spent_usd: self.budget_spent_usd.with_label_values(&[&b.name]),
                })
                .collect(),
            alerts: budgets
                .iter()
                .map(|b| self.budget_alerts.with_label_values(&[&b.name]))
                .collect(),
        }
    }

    /// The registry in Prometheus text exposition format.
    pub fn render(&self) -> Vec<u8> {
        render_registry(&self.registry).into_bytes()
    }
}

/// `registry` in Prometheus text exposition format (every program's `/metrics`).
pub fn render_registry(registry: &Registry) -> String {
    let mut out = String::with_capacity(8 * 1024);
    if let Err(e) = prometheus::TextEncoder::new().encode_utf8(&registry.gather(), &mut out) {
        tracing::error!(error = %e, "encoding metrics failed");
    }
    out
}

/// The routing targets' circuit breakers and latency, read from the router
/// at each scrape (a breaker half-opens with time, not with traffic).
pub struct RouteCollector {
    router: std::sync::Arc<crate::route::Router>,
    state: prometheus::IntGaugeVec,
    transitions: IntCounterVec,
    ttft: GaugeVec,
}

impl RouteCollector {
    /// Registers the collector of `router` on `registry`.
    pub fn register(
        registry: &Registry,
        router: std::sync::Arc<crate::route::Router>,
    ) -> Result<(), prometheus::Error> {
        let collector = RouteCollector {
            router,
            state: prometheus::IntGaugeVec::new(
                Opts::new("tollgate_route_breaker_state", "Each routing target's circuit breaker: 1 for its current state (closed, open, half_open), 0 for the others."),
                &["target", "state"],
            )?,
            transitions: IntCounterVec::new(
                Opts::new("tollgate_route_breaker_transitions_total", "Circuit breaker transitions per routing target, by the state entered (open, half_open, closed)."),
                &["target", "to"],
            )?,
            ttft: GaugeVec::new(
                Opts::new("tollgate_route_ttft_seconds", "Moving average of each routing target's time to first byte (what the fastest policy orders by)."),
                &["target"],
            )?,
        };
        registry.register(Box::new(collector))
    }
}

impl prometheus::core::Collector for RouteCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        let mut d = self.state.desc();
        d.extend(self.transitions.desc());
        d.extend(self.ttft.desc());
        d
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        use crate::route::BreakerState;
        self.state.reset();
        self.transitions.reset();
        self.ttft.reset();
        for t in self.router.health().snapshot(std::time::Instant::now()) {
            let target = t.target.to_string();
            for s in [
                BreakerState::Closed,
                BreakerState::Open,
                BreakerState::HalfOpen,
            ] {
                self.state
                    .with_label_values(&[&target, s.as_str()])
                    .set(i64::from(s == t.state));
            }
            for (to, n) in [
                ("open", t.transitions.opened),
                ("half_open", t.transitions.half_opened),
                ("closed", t.transitions.closed),
            ] {
                self.transitions.with_label_values(&[&target, to]).inc_by(n);
            }
            if let Some(ttft) = t.ttft {
                self.ttft
                    .with_label_values(&[&target])
                    .set(ttft.as_secs_f64());
            }
        }
        let mut out = self.state.collect();
        out.extend(self.transitions.collect());
        out.extend(self.ttft.collect());
        out
    }
}
