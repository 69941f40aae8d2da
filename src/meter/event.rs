//! The usage event: one per request, failures and aborts included.

use serde::{Deserialize, Serialize};

use crate::dialect::Usage;

/// How a request ended, as far as the ledger is concerned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The provider answered successfully and the whole answer reached the client.
    #[default]
    Ok,
    /// The provider answered with an error status or a mid-stream `error` event.
    ProviderError,
    /// The client went away before the answer was complete.
    ClientAborted,
    /// The provider's stream ended before its final event.
    UpstreamAborted,
    /// tollgate itself failed the request (bad input, upstream unreachable, timeout…).
    ProxyError,
    /// The sidecar shut down (SIGTERM, `shutdown_grace` over) while the
    /// answer was still coming: recorded with the usage seen so far.
    Shutdown,
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
            Status::Shutdown => "shutdown",
            Status::Interrupted => "interrupted",
        }
    }
}

/// How the request was served.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteKind {
    /// A non-streaming call.
    #[default]
    Sync,
    /// A streaming (SSE) call.
    Stream,
    /// A batch call (billed at the batch price).
    Batch,
    /// A retry answered with the stored answer of its `Idempotency-Key`:
    /// no provider call, no tokens, cost 0.
    Replay,
}

impl RouteKind {
    /// The label used in metrics and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteKind::Sync => "sync",
            RouteKind::Stream => "stream",
            RouteKind::Batch => "batch",
            RouteKind::Replay => "replay",
        }
    }
}

/// What the exact cache did for this request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheOutcome {
    /// Answered from the cache.
    Hit,
    /// Looked up, not found, forwarded.
    Miss,
    /// The cache was not consulted (opted out, not cacheable, or no cache stage).
    #[default]
    Bypass,
    /// The read was skipped on request and the fresh answer written.
    Refresh,
    /// Waited for an identical in-flight request and shared its answer.
    Coalesced,
}

impl CacheOutcome {
    /// Every outcome, in declaration order (`outcome as usize` indexes it).
    pub const ALL: [CacheOutcome; 5] = [
        CacheOutcome::Hit,
        CacheOutcome::Miss,
        CacheOutcome::Bypass,
        CacheOutcome::Refresh,
        CacheOutcome::Coalesced,
    ];

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
/// grow without breaking stored events. `Default` is an empty successful
/// call (`Sync`, cache `Bypass`, not priced): the stages that make events
/// set what they know on top of it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Tokens by kind. Stored flat, under the same field names as before
    /// it was embedded (`input_tokens`, `output_tokens`, …).
    #[serde(flatten)]
    pub usage: Usage,
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
    /// Which token figures are tollgate's estimates, not the provider's
    /// (its usage could not be read); both false for measured usage.
    #[serde(default)]
    pub estimated: Estimated,
    /// Whole request, microseconds.
    pub latency_us: u64,
    /// Time to the upstream's first response byte, microseconds (0 if none).
    pub ttfb_us: u64,
    /// The provider's request id (`request-id` / `x-request-id`), for reconciliation.
    pub upstream_request_id: Option<String>,
    /// The client's `idempotency-key` header, if any.
    pub idempotency_key: Option<String>,
    /// What it spent per budget period (the control endpoint counts the
    /// charges to its leased budgets from these; empty when none applied).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub charges: Vec<Charge>,
    /// The batch item this event settles (route `batch`), if it is one
    /// (boxed: most events are not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<Box<BatchRef>>,
}

/// Which batch item an event is: the provider's batch id and the item's
/// `custom_id`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchRef {
    pub batch_id: String,
    pub custom_id: String,
}

/// Which of an event's token figures are estimates: the provider billed
/// a call whose usage tollgate could not read (truncated or unreadable
/// JSON, a body over the metering limit, a stream cut before its usage), so
/// the event carries the best bound available instead of nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Estimated {
    /// `input_tokens` is the request's bound (its size), not the provider's count.
    #[serde(default)]
    pub input: bool,
    /// `output_tokens` is the deltas seen, or the request's output bound
    /// when nothing could be counted.
    #[serde(default)]
    pub output: bool,
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

/// An [`OpenRecord`] borrowed from its request's draft event: encodes to
/// the same bytes (the journal encodes it when it is queued; a copy of its
/// strings per request would be made only to be encoded and dropped).
#[derive(Clone, Copy, Debug, Serialize)]
#[serde(rename = "OpenRecord")]
pub struct OpenRecordRef<'a> {
    pub event_id: &'a str,
    pub ts: i64,
    pub sidecar_id: &'a str,
    pub account: &'a str,
    pub workload: &'a str,
    pub tags: &'a [(String, String)],
    pub provider: &'a str,
    pub model: &'a str,
    pub route: RouteKind,
    pub cache: CacheOutcome,
    pub worst_nusd: u64,
    pub reserved: &'a [Charge],
    pub idempotency_key: Option<&'a str>,
}

impl<'a> OpenRecordRef<'a> {
    /// The open record of the request `event` is the draft of.
    pub fn of(event: &'a UsageEvent, worst_nusd: u64, reserved: &'a [Charge]) -> Self {
        OpenRecordRef {
            event_id: &event.event_id,
            ts: event.ts,
            sidecar_id: &event.sidecar_id,
            account: &event.account,
            workload: &event.workload,
            tags: &event.tags,
            provider: &event.provider,
            model: &event.model,
            route: event.route,
            cache: event.cache,
            worst_nusd,
            reserved,
            idempotency_key: event.idempotency_key.as_deref(),
        }
    }
}

impl OpenRecord {
    /// This record by reference.
    pub fn as_ref(&self) -> OpenRecordRef<'_> {
        OpenRecordRef {
            event_id: &self.event_id,
            ts: self.ts,
            sidecar_id: &self.sidecar_id,
            account: &self.account,
            workload: &self.workload,
            tags: &self.tags,
            provider: &self.provider,
            model: &self.model,
            route: self.route,
            cache: self.cache,
            worst_nusd: self.worst_nusd,
            reserved: &self.reserved,
            idempotency_key: self.idempotency_key.as_deref(),
        }
    }

    /// The open record of the request `event` is the draft of (requests
    /// journal [`OpenRecordRef::of`] instead: no copy).
    #[cfg(test)]
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
            cost_nusd: self.worst_nusd,
            status: Status::Interrupted,
            priced: true,
            usage_incomplete: true,
            idempotency_key: self.idempotency_key.clone(),
            charges: self.reserved.clone(),
            ..UsageEvent::default()
        }
    }
}

#[cfg(test)]
mod compat_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The event as stored before `usage` was embedded (git 17520f3): the
    /// token counts were fields of the event itself.
    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct StoredBefore {
        event_id: String,
        ts: i64,
        sidecar_id: String,
        account: String,
        workload: String,
        tags: Vec<(String, String)>,
        provider: String,
        model: String,
        route: RouteKind,
        cache: CacheOutcome,
        input_tokens: u64,
        output_tokens: u64,
        cache_creation_input_tokens: u64,
        cache_creation_1h_input_tokens: u64,
        cache_read_input_tokens: u64,
        cost_nusd: u64,
        saved_nusd: u64,
        status: Status,
        http_status: u16,
        error: Option<String>,
        priced: bool,
        usage_incomplete: bool,
        latency_us: u64,
        ttfb_us: u64,
        upstream_request_id: Option<String>,
        idempotency_key: Option<String>,
    }

    fn before() -> StoredBefore {
        StoredBefore {
            event_id: "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b".into(),
            ts: 1_764_000_000_000_000,
            sidecar_id: "s".into(),
            account: "acme".into(),
            workload: "web".into(),
            tags: vec![("team".into(), "search".into())],
            provider: "anthropic".into(),
            model: "claude-sonnet-4-5".into(),
            route: RouteKind::Stream,
            cache: CacheOutcome::Miss,
            input_tokens: 11,
            output_tokens: 22,
            cache_creation_input_tokens: 33,
            cache_creation_1h_input_tokens: 3,
            cache_read_input_tokens: 44,
            cost_nusd: 555,
            saved_nusd: 0,
            status: Status::Ok,
            http_status: 200,
            error: None,
            priced: true,
            usage_incomplete: false,
            latency_us: 7,
            ttfb_us: 5,
            upstream_request_id: Some("req_1".into()),
            idempotency_key: None,
        }
    }

    #[test]
    fn events_stored_before_usage_was_embedded_still_read() {
        let old = rmp_serde::to_vec_named(&before()).unwrap();
        let e: UsageEvent = rmp_serde::from_slice(&old).unwrap();
        assert_eq!(
            e.usage,
            Usage {
                input_tokens: 11,
                output_tokens: 22,
                cache_creation_input_tokens: 33,
                cache_creation_1h_input_tokens: 3,
                cache_read_input_tokens: 44,
                reported_cost_nusd: None,
                fast: false,
                us_only: false,
            }
        );
        assert_eq!(
            (e.cost_nusd, e.route, e.cache),
            (555, RouteKind::Stream, CacheOutcome::Miss)
        );
        // And what is stored now has the same shape, field for field.
        let now = rmp_serde::to_vec_named(&e).unwrap();
        assert_eq!(
            rmp_serde::from_slice::<StoredBefore>(&now).unwrap(),
            before()
        );
        // An event older still, without the 1-hour split, reads as 0.
        let mut v: serde_json::Value = serde_json::to_value(before()).unwrap();
        v.as_object_mut()
            .unwrap()
            .remove("cache_creation_1h_input_tokens");
        let e: UsageEvent = rmp_serde::from_slice(&rmp_serde::to_vec_named(&v).unwrap()).unwrap();
        assert_eq!(e.usage.cache_creation_1h_input_tokens, 0);
    }
}
