//! What the request path shares: config-derived settings, the stages'
//! engines (limits, budgets, cache, upstreams) and the recorder.

use std::sync::Arc;

use super::lifecycle::InFlight;
use super::{forward, ingress};
use crate::budget::Ledger;
use crate::cache::Cache;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::proxy::recorder::Recorder;

/// Everything the request path shares.
pub struct State {
    pub sidecar_id: String,
    /// Identity of requests that carry no identity headers.
    pub default_identity: crate::identity::Identity,
    pub max_body_bytes: usize,
    /// Longest the client may take to send a whole body.
    pub request_body_timeout: std::time::Duration,
    pub stream_receipt: bool,
    pub routes: ingress::Routes,
    pub upstreams: forward::Upstreams,
    pub recorder: Arc<Recorder>,
    pub metrics: Metrics,
    pub in_flight: InFlight,
    /// Gateway keys and BYOK provider keys in force (the config's, or the
    /// control endpoint's snapshot).
    pub fleet: Arc<super::sync::Fleet>,
    pub ledger: Arc<Ledger>,
    /// Leases of the control endpoint's budgets.
    pub leases: Arc<super::lease::Leases>,
    /// Output bound of requests without one when a budget applies.
    pub budget_default_max_tokens: u64,
    /// The exact cache.
    pub cache: Arc<Cache>,
    /// Idempotency keys in flight and the answers kept for them.
    pub idempotency: Arc<crate::idempotency::Idempotency>,
    /// Aliases, fallbacks and the targets' circuit breakers.
    pub router: Arc<crate::route::Router>,
    /// With `control_url`: where the gateway surface reads account usage.
    pub control_usage: Option<super::gateway::ControlUsage>,
    /// Provider batches reserved at submit and settled per item.
    pub batches: Arc<super::batch::Batches>,
}

impl State {
    #[expect(
        clippy::too_many_arguments,
        reason = "one shared engine per stage, each built in main from the store"
    )]
    pub fn new(
        config: &Config,
        recorder: Arc<Recorder>,
        ledger: Arc<Ledger>,
        cache: Arc<Cache>,
        idempotency: Arc<crate::idempotency::Idempotency>,
        metrics: Metrics,
        in_flight: InFlight,
        batches: Arc<super::batch::Batches>,
    ) -> State {
        let router = Arc::new(crate::route::Router::new(
            config.routing.clone(),
            config.providers.iter().map(|p| p.name.clone()).collect(),
        ));
        State {
            sidecar_id: config.sidecar_id.clone(),
            default_identity: crate::identity::Identity {
                account: config.default_account.clone(),
                workload: config.default_workload.clone(),
                tags: config.default_tags.clone(),
                key: None,
            },
            max_body_bytes: config.max_body_bytes,
            request_body_timeout: config.timeouts.request_body,
            stream_receipt: config.stream_receipt,
            routes: ingress::Routes::new(config),
            upstreams: forward::Upstreams::new(config.timeouts.clone(), &config.providers),
            recorder,
            leases: Arc::new(super::lease::Leases::new(
                &ledger,
                config
                    .control
                    .as_ref()
                    .map_or(crate::config::DEFAULT_LEASE_WAIT, |l| l.lease_wait),
                metrics.lease.clone(),
            )),
            metrics,
            in_flight,
            fleet: Arc::new(super::sync::Fleet::new(
                config.gateway_keys.clone(),
                config.rate_limits.clone(),
                ledger.clone(),
                router.clone(),
            )),
            ledger,
            budget_default_max_tokens: config.budget_default_max_tokens,
            cache,
            idempotency,
            router,
            control_usage: config
                .control
                .as_ref()
                .map(|c| super::gateway::ControlUsage::new(&c.url)),
            batches,
        }
    }
}
