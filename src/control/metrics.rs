//! The control endpoint's own `/metrics`.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Metric handles of the control endpoint.
#[derive(Clone)]
pub struct ControlMetrics {
    registry: Registry,
    /// Requests by route (the matched path pattern), method and status.
    pub requests: IntCounterVec,
    /// Calls refused for their credential: `unauthorized` (401) or
    /// `forbidden` (403, a valid credential without the right).
    pub auth_failures: IntCounterVec,
    /// Accounts in the store.
    pub accounts: IntGauge,
    /// Audit entries appended since start.
    pub audit_entries: IntCounter,
    /// Usage events received: `new`, `duplicate` (already in the ledger) or
    /// `refused` (an account the credential does not serve).
    pub ingest_events: IntCounterVec,
    /// Usage batches acknowledged.
    pub ingest_batches: IntCounter,
    /// Events in the ledger.
    pub ledger_events: IntGauge,
    /// Sidecars waiting in a sync long poll right now.
    pub sync_clients: IntGauge,
    /// Lease renewals answered, by result (granted, conflict).
    pub lease_renewals: IntCounterVec,
    /// Time to answer a renewal, durable write included.
    pub lease_seconds: prometheus::Histogram,
    /// Fleet-wide soft-threshold alerts fired.
    pub alerts: IntCounter,
    /// Alert webhook deliveries that gave up.
    pub alert_failures: IntCounter,
}

impl ControlMetrics {
    /// Registers every metric.
    pub fn new() -> Result<ControlMetrics, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "tollgate_control_requests_total",
                "Control API requests by route, method and status.",
            ),
            &["route", "method", "status"],
        )?;
        let auth_failures = IntCounterVec::new(
            Opts::new(
                "tollgate_control_auth_failures_total",
                "Control API calls refused for their credential (unauthorized: 401, forbidden: 403).",
            ),
            &["reason"],
        )?;
        let accounts = IntGauge::new(
            "tollgate_control_accounts",
            "Accounts in the control store.",
        )?;
        let audit_entries = IntCounter::new(
            "tollgate_control_audit_entries_total",
            "Audit log entries appended since start.",
        )?;
        let ingest_events = IntCounterVec::new(
            Opts::new(
                "tollgate_control_ingest_events_total",
                "Usage events received from sidecars: new, duplicate (already in the ledger) or refused (an account the credential does not serve).",
            ),
            &["result"],
        )?;
        let ingest_batches = IntCounter::new(
            "tollgate_control_ingest_batches_total",
            "Usage batches acknowledged.",
        )?;
        let ledger_events = IntGauge::new(
            "tollgate_control_ledger_events",
            "Usage events in the ledger.",
        )?;
        let sync_clients = IntGauge::new(
            "tollgate_control_sync_clients",
            "Sidecars waiting in a sync long poll right now.",
        )?;
        let lease_renewals = IntCounterVec::new(
            Opts::new(
                "tollgate_control_lease_renewals_total",
                "Budget lease renewals answered, by result (granted, conflict).",
            ),
            &["result"],
        )?;
        let lease_seconds = prometheus::Histogram::with_opts(
            prometheus::HistogramOpts::new(
                "tollgate_control_lease_seconds",
                "Time to answer a lease renewal, its durable write included.",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
            ]),
        )?;
        let alerts = IntCounter::new(
            "tollgate_control_budget_alerts_total",
            "Fleet-wide budget soft-threshold alerts fired (once per budget, threshold and period).",
        )?;
        let alert_failures = IntCounter::new(
            "tollgate_control_budget_alert_failures_total",
            "Budget alert webhook deliveries that gave up.",
        )?;
        registry.register(Box::new(lease_renewals.clone()))?;
        registry.register(Box::new(lease_seconds.clone()))?;
        registry.register(Box::new(alerts.clone()))?;
        registry.register(Box::new(alert_failures.clone()))?;
        registry.register(Box::new(sync_clients.clone()))?;
        registry.register(Box::new(ingest_events.clone()))?;
        registry.register(Box::new(ingest_batches.clone()))?;
        registry.register(Box::new(ledger_events.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(auth_failures.clone()))?;
        registry.register(Box::new(accounts.clone()))?;
        registry.register(Box::new(audit_entries.clone()))?;
        for reason in ["unauthorized", "forbidden"] {
            auth_failures.with_label_values(&[reason]);
        }
        Ok(ControlMetrics {
            registry,
            requests,
            auth_failures,
            accounts,
            audit_entries,
            ingest_events,
            ingest_batches,
            ledger_events,
            sync_clients,
            lease_renewals,
            lease_seconds,
            alerts,
            alert_failures,
        })
    }

    /// The registry in Prometheus text exposition format.
    pub fn render(&self) -> String {
        crate::metrics::render_registry(&self.registry)
    }
}
