//! The usage event: one per request, failures and aborts included.

use serde::{Deserialize, Serialize};

/// How a request ended, as far as the ledger is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The provider answered successfully and the whole answer reached the client.
    Ok,
    /// The provider answered with an error status or a mid-stream `error` event.
    ProviderError,
    /// The client went away before the answer was complete.
    ClientAborted,
    /// The provider's stream ended before its final event.
    UpstreamAborted,
    /// tollgate itself failed the request (bad input, upstream unreachable, timeout…).
    ProxyError,
    /// The sidecar stopped (crash, kill) while the request was at the
    /// provider: recorded at start-up from its open record, at its reserved
    /// worst case (see `crate::store::journal`).
    Interrupted,
}

impl Status {
    /// The label used in metrics and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::ProviderError => "provider_error",
            Status::ClientAborted => "client_aborted",
            Status::UpstreamAborted => "upstream_aborted",
            Status::ProxyError => "proxy_error",
            Status::Interrupted => "interrupted",
        }
    }
}

/// How the request was served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteKind {
    /// A non-streaming call.
    Sync,
    /// A streaming (SSE) call.
    Stream,
    /// A batch call (billed at the batch price).
    Batch,
}

impl RouteKind {
    /// The label used in metrics and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteKind::Sync => "sync",
            RouteKind::Stream => "stream",
            RouteKind::Batch => "batch",
        }
    }
}

/// What the exact cache did for this request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheOutcome {
    /// Answered from the cache.
    Hit,
    /// Looked up, not found, forwarded.
    Miss,
    /// The cache was not consulted (opted out, not cacheable, or no cache stage).
    Bypass,
    /// The read was skipped on request and the fresh answer written.
    Refresh,
    /// Waited for an identical in-flight request and shared its answer.
    Coalesced,
}

impl CacheOutcome {
    /// The value of the `x-tollgate-cache` receipt header and the metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheOutcome::Hit => "hit",
            CacheOutcome::Miss => "miss",
            CacheOutcome::Bypass => "bypass",
            CacheOutcome::Refresh => "refresh",
            CacheOutcome::Coalesced => "coalesced",
        }
    }
}

/// One request's record in the ledger (schema in DESIGN.md "Usage event").
/// Encoded with rmp-serde as a map (field names kept) so the schema can
/// grow without breaking stored events.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageEvent {
    /// Unique, time-ordered (UUID v7); also the `x-tollgate-request-id` receipt.
    pub event_id: String,
    /// Request start, microseconds since the Unix epoch (UTC).
    pub ts: i64,
    pub sidecar_id: String,
    pub account: String,
    pub workload: String,
    pub tags: Vec<(String, String)>,
    /// Configured provider name (`anthropic`, `openrouter`…).
    pub provider: String,
    /// The model as the provider reported it, else as requested; empty for unmetered paths.
    pub model: String,
    pub route: RouteKind,
    pub cache: CacheOutcome,
    /// Uncached input tokens.
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_creation_input_tokens: u64,
    /// Of the cache writes, those billed at the 1-hour rate.
    #[serde(default)]
    pub cache_creation_1h_input_tokens: u64,
    pub cache_read_input_tokens: u64,
    pub cost_nusd: u64,
    /// What a cache hit saved (0 otherwise).
    pub saved_nusd: u64,
    pub status: Status,
    /// The HTTP status the client received (0 when none was sent).
    #[serde(default)]
    pub http_status: u16,
    /// The error kind when `status` is not `ok` (tollgate's `x-tollgate-error`
    /// kind or the provider's error type).
    #[serde(default)]
    pub error: Option<String>,
    /// False when the model was not in the price table (priced by the fallback).
    #[serde(default)]
    pub priced: bool,
    /// True when the usage is a lower bound (the stream ended before its final usage).
    #[serde(default)]
    pub usage_incomplete: bool,
    /// Whole request, microseconds.
    pub latency_us: u64,
    /// Time to the upstream's first response byte, microseconds (0 if none).
    pub ttfb_us: u64,
    /// The provider's request id (`request-id` / `x-request-id`), for reconciliation.
    pub upstream_request_id: Option<String>,
    /// The client's `idempotency-key` header, if any.
    pub idempotency_key: Option<String>,
}

/// Money a request holds or spent in one budget period.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Charge {
    /// The budget's name.
    pub budget: String,
    /// The period's key (`2026-11-23`, `2026-11`).
    pub period: String,
    pub nusd: u64,
}

/// What is known of a request when it is sent to the provider: journaled
/// (durably, with `outbox.sync`) before its first byte leaves, so that a
/// crash while it is in flight still leaves a record of it (and of the
/// money it may cost).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenRecord {
    pub event_id: String,
    pub ts: i64,
    pub sidecar_id: String,
    pub account: String,
    pub workload: String,
    pub tags: Vec<(String, String)>,
    pub provider: String,
    pub model: String,
    pub route: RouteKind,
    pub cache: CacheOutcome,
    /// The request's worst-case cost, nano-USD (what budgets reserved, or
    /// the same estimate when no budget applies).
    pub worst_nusd: u64,
    /// What it reserved, per budget period.
    pub reserved: Vec<Charge>,
    pub idempotency_key: Option<String>,
}

impl OpenRecord {
    /// The open record of the request `event` is the draft of.
    pub fn of(event: &UsageEvent, worst_nusd: u64, reserved: Vec<Charge>) -> OpenRecord {
        OpenRecord {
            event_id: event.event_id.clone(),
            ts: event.ts,
            sidecar_id: event.sidecar_id.clone(),
            account: event.account.clone(),
            workload: event.workload.clone(),
            tags: event.tags.clone(),
            provider: event.provider.clone(),
            model: event.model.clone(),
            route: event.route,
            cache: event.cache,
            worst_nusd,
            reserved,
            idempotency_key: event.idempotency_key.clone(),
        }
    }

    /// The usage event of a request whose answer never completed because
    /// the sidecar stopped: its worst case, marked incomplete, so the
    /// ledger never holds less than the provider may bill
    /// (reconciliation corrects it).
    pub fn interrupted(&self) -> UsageEvent {
        UsageEvent {
            event_id: self.event_id.clone(),
            ts: self.ts,
            sidecar_id: self.sidecar_id.clone(),
            account: self.account.clone(),
            workload: self.workload.clone(),
            tags: self.tags.clone(),
            provider: self.provider.clone(),
            model: self.model.clone(),
            route: self.route,
            cache: self.cache,
            input_tokens: 0,
            output_tokens: 0,
            cache_creation_input_tokens: 0,
            cache_creation_1h_input_tokens: 0,
            cache_read_input_tokens: 0,
            cost_nusd: self.worst_nusd,
            saved_nusd: 0,
            status: Status::Interrupted,
            http_status: 0,
            error: None,
            priced: true,
            usage_incomplete: true,
            latency_us: 0,
            ttfb_us: 0,
            upstream_request_id: None,
            idempotency_key: self.idempotency_key.clone(),
        }
    }
}
