//! The injector's own `/metrics`.

use prometheus::{Histogram, HistogramOpts, IntCounterVec, Opts, Registry};

/// Metric handles of the injector.
#[derive(Clone)]
pub struct InjectMetrics {
    registry: Registry,
    /// Reviews answered, by decision (injected, already_injected,
    /// not_requested, opted_out, denied, ignored, invalid) and sidecar mode
    /// (native, classic, or none).
    pub reviews: IntCounterVec,
    /// Time from a review's arrival to its answer.
    pub review_seconds: Histogram,
    /// Namespace annotation lookups, by result (hit: from the cache, read,
    /// failed).
    pub namespace_lookups: IntCounterVec,
    /// Certificate reloads, by result (reloaded, failed).
    pub tls_reloads: IntCounterVec,
}

impl InjectMetrics {
    /// Registers every metric.
    pub fn new() -> Result<InjectMetrics, prometheus::Error> {
        let registry = Registry::new();
        let reviews = IntCounterVec::new(
            Opts::new(
                "tollgate_inject_reviews_total",
                "Admission reviews answered, by decision and sidecar mode.",
            ),
            &["decision", "sidecar_mode"],
        )?;
        let review_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "tollgate_inject_review_seconds",
                "Time to answer an admission review, namespace lookup included.",
            )
            .buckets(vec![0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5]),
        )?;
        let namespace_lookups = IntCounterVec::new(
            Opts::new(
                "tollgate_inject_namespace_lookups_total",
                "Namespace annotation lookups, by result (hit: cached, read: from the API server, failed).",
            ),
            &["result"],
        )?;
        let tls_reloads = IntCounterVec::new(
            Opts::new(
                "tollgate_inject_tls_reloads_total",
                "Webhook certificate reloads after a change of its files, by result (reloaded, failed).",
            ),
            &["result"],
        )?;
        registry.register(Box::new(reviews.clone()))?;
        registry.register(Box::new(review_seconds.clone()))?;
        registry.register(Box::new(namespace_lookups.clone()))?;
        registry.register(Box::new(tls_reloads.clone()))?;
        Ok(InjectMetrics {
            registry,
            reviews,
            review_seconds,
            namespace_lookups,
            tls_reloads,
        })
    }

    /// The registry in Prometheus text exposition format.
    pub fn render(&self) -> String {
        crate::metrics::render_registry(&self.registry)
    }
}
