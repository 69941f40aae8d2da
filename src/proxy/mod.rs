//! The sidecar's data plane on pingora.
//!
//! Stages and the pingora hook each runs in:
//!
//! ```text
//! request_filter ─┬─ ingress   route, bounded body read, one parse → RequestModel
//!                 ├─ identify  gateway key; account / workload / tags: x-tollgate-* headers, else defaults
//!                 ├─ limit     rpm / tpm token buckets → 429
//!                 ├─ cache     exact cache: a hit is answered here; an identical
//!                 │            request in flight is followed (coalescing)
//!                 ├─ budget    reserve the worst case against every budget → 402, or clamp max_tokens
//!                 ├─ forward   strip client credentials, inject the key, send (pooled, rustls)
//!                 │            (after its open record is journaled: the one durability wait)
//!                 └─ meter     relay the response chunk by chunk through the tap,
//!                              price it, settle limits and budgets, queue its usage
//!                              event (not waited on), receipts
//! (returns Ok(true): pingora's own upstream phases are not used; see below)
//! ```
//!
//! Why everything happens in `request_filter`: the route, the key and later
//! the cache and budget all depend on the parsed body, and pingora only
//! re-sends a body read this early when it fits its 64 KiB retry buffer. So
//! the request is forwarded with pingora's pooled connector directly and the
//! response streamed back from here (DESIGN.md, "Pingora notes").

pub mod budget;
pub mod cache;
pub mod error;
pub mod forward;
pub mod headers;
pub mod identify;
pub mod ingress;
pub mod intercept;
pub mod lifecycle;
pub mod limit;
pub mod meter;
pub mod receipt;

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use pingora::proxy::{ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;

use crate::budget::Ledger;
use crate::cache::Cache;
use crate::config::Config;
use crate::dialect::Dialect;
use crate::keys::KeyRing;
use crate::limit::{Admission, Limiter};
use crate::meter::event::{CacheOutcome, Charge, OpenRecord, RouteKind, Status, UsageEvent};
use crate::meter::recorder::{Recorder, UpstreamTimes};
use crate::metrics::Metrics;
use error::{Level, ProxyError};
use lifecycle::{InFlight, InFlightGuard};

/// Everything the request path shares.
pub struct State {
    pub sidecar_id: String,
    /// Identity of requests that carry no identity headers.
    pub default_identity: crate::identity::Identity,
    pub max_body_bytes: usize,
    pub stream_receipt: bool,
    pub routes: ingress::Routes,
    pub upstreams: forward::Upstreams,
    pub recorder: Arc<Recorder>,
    pub metrics: Metrics,
    pub in_flight: InFlight,
    /// Gateway keys (none: requests need none).
    pub keys: KeyRing,
    pub limiter: Arc<Limiter>,
    pub ledger: Arc<Ledger>,
    /// Output bound of requests without one when a budget applies.
    pub budget_default_max_tokens: u64,
    /// The exact cache.
    pub cache: Arc<Cache>,
}

impl State {
    pub fn new(
        config: &Config,
        recorder: Arc<Recorder>,
        ledger: Arc<Ledger>,
        cache: Arc<Cache>,
        metrics: Metrics,
        in_flight: InFlight,
    ) -> State {
        State {
            sidecar_id: config.sidecar_id.clone(),
            default_identity: crate::identity::Identity {
                account: config.default_account.clone(),
                workload: config.default_workload.clone(),
                tags: config.default_tags.clone(),
                key: None,
            },
            max_body_bytes: config.max_body_bytes,
            stream_receipt: config.stream_receipt,
            routes: ingress::Routes::new(config),
            upstreams: forward::Upstreams::new(config.timeouts.clone(), &config.providers),
            recorder,
            metrics,
            in_flight,
            keys: config.gateway_keys.clone(),
            limiter: Arc::new(Limiter::new(config.rate_limits.clone())),
            ledger,
            budget_default_max_tokens: config.budget_default_max_tokens,
            cache,
        }
    }
}

/// The client was given up on before its answer was complete: its
/// connection is closed after this request instead of kept alive.
pub(crate) fn give_up_on_client(session: &mut Session) {
    session.set_keepalive(None);
}

/// Sends a complete response (header, then the whole body); false when
/// the client has gone.
pub(crate) async fn send_whole(
    session: &mut Session,
    header: pingora::http::ResponseHeader,
    body: bytes::Bytes,
) -> bool {
    send_with_tail(session, header, body, None).await
}

/// [`send_whole`] with a `tail` after the body (its framing counts both),
/// written on its own rather than copied onto the body.
pub(crate) async fn send_with_tail(
    session: &mut Session,
    header: pingora::http::ResponseHeader,
    body: bytes::Bytes,
    tail: Option<bytes::Bytes>,
) -> bool {
    if session
        .write_response_header(Box::new(header), false)
        .await
        .is_err()
        || session
            .write_response_body(Some(body), tail.is_none())
            .await
            .is_err()
    {
        return false;
    }
    match tail {
        Some(tail) => session.write_response_body(Some(tail), true).await.is_ok(),
        None => true,
    }
}

/// The pingora proxy app; its hooks only dispatch to the stages.
pub struct Tollgate {
    state: Arc<State>,
    /// Serves connections decrypted by HTTPS_PROXY mode: requests are routed
    /// by their host. Base-URL mode never routes by host.
    intercepted: bool,
}

impl Tollgate {
    /// The base-URL mode app.
    pub fn new(state: Arc<State>) -> Tollgate {
        Tollgate {
            state,
            intercepted: false,
        }
    }

    /// The app behind HTTPS_PROXY mode's intercepted tunnels.
    pub fn intercepted(state: Arc<State>) -> Tollgate {
        Tollgate {
            state,
            intercepted: true,
        }
    }
}

/// Per-request state carried from stage to stage.
pub struct RequestCtx {
    /// The usage event being built.
    pub draft: Option<Draft>,
    /// This request leads a coalesced flight: identical requests wait on it.
    pub leader: Option<crate::cache::flight::Leader>,
    /// Where a complete answer is to be cached.
    pub cache_write: Option<cache::CacheWrite>,
    _in_flight: Option<InFlightGuard>,
}

/// A usage event in the making. Recorded exactly once: by the meter, by the
/// error path, or, when the request is dropped half-way (client gone,
/// shutdown), by `Drop`, so no request ever goes unrecorded.
pub struct Draft {
    pub event: UsageEvent,
    pub started: Instant,
    pub dialect: Dialect,
    recorder: Arc<Recorder>,
    recorded: bool,
    /// The budget reservation, settled when the event is recorded.
    pub guard: Option<budget::Guard>,
    /// The rate-limit charge, corrected when the event is recorded.
    admission: Option<(Arc<Limiter>, Admission)>,
    /// The request went out to the provider (which may bill it).
    pub sent_upstream: bool,
    /// `max_tokens` lowered by a clamp budget (a receipt header).
    pub clamped_max_tokens: Option<u64>,
}

impl Draft {
    /// Records an event that carries no spend (a cache hit, a coalesced
    /// request).
    pub fn record_detached(&mut self) {
        self.record(None);
    }

    /// Records the event without waiting: the budget is settled first, then
    /// the event is queued for the usage journal's next group commit (the
    /// request was made durable by its open record before it was sent).
    pub fn record(&mut self, times: Option<UpstreamTimes>) {
        self.event.latency_us = self.started.elapsed().as_micros() as u64;
        self.recorded = true;
        // Settled before the event is queued: the journal's watermark
        // counts on it (see `crate::store::journal`).
        let charges = self.settle();
        self.recorder.record(self.event.clone(), charges, times);
    }

    /// Journals the open record (what the request may cost and what it
    /// reserved) and waits for it to be committed: right before the
    /// request's first byte goes to the provider, and again when a stream's
    /// reservation grows (the later record replaces the earlier).
    async fn open(&mut self, worst_nusd: u64) {
        let (reserved_nusd, reserved) = self
            .guard
            .as_ref()
            .map(budget::Guard::reserved)
            .unwrap_or_default();
        let record = OpenRecord::of(&self.event, worst_nusd.max(reserved_nusd), reserved);
        if let Err(e) = self.recorder.open(record).await {
            // Like a full disk for events: the traffic goes on, the log and
            // `tollgate_outbox_errors_total` say what was not recorded.
            tracing::error!(request_id = %self.event.event_id, error = %e, "open usage record not durable");
        }
    }
}

impl Drop for Draft {
    fn drop(&mut self) {
        if self.recorded {
            return;
        }
        if self.event.status == Status::Ok {
            self.event.status = Status::ClientAborted;
            self.event.usage_incomplete = true;
        }
        self.record(None);
    }
}

impl Draft {
    /// Settles the budget reservation and the rate-limit charge to the
    /// event's real cost and tokens; returns what was spent per budget period.
    fn settle(&mut self) -> Vec<Charge> {
        let charges = match self.guard.take() {
            Some(guard) => guard.settle(&self.event, self.sent_upstream),
            None => Vec::new(),
        };
        if let Some((limiter, admission)) = self.admission.take() {
            let e = &self.event;
            // Served without the provider: no provider tokens were used.
            let local = matches!(e.cache, CacheOutcome::Hit | CacheOutcome::Coalesced);
            let tokens = if local {
                0
            } else {
                e.input_tokens
                    .saturating_add(e.output_tokens)
                    .saturating_add(e.cache_creation_input_tokens)
                    .saturating_add(e.cache_read_input_tokens)
            };
            limiter.settle(&admission, tokens, Instant::now());
        }
        charges
    }
}

impl Tollgate {
    fn draft(&self, id: uuid::Uuid, started: Instant, dialect: Dialect) -> Draft {
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        Draft {
            event: UsageEvent {
                event_id: id.to_string(),
                ts,
                sidecar_id: self.state.sidecar_id.clone(),
                account: self.state.default_identity.account.clone(),
                workload: self.state.default_identity.workload.clone(),
                tags: self.state.default_identity.tags.clone(),
                provider: String::new(),
                model: String::new(),
                route: RouteKind::Sync,
                cache: CacheOutcome::Bypass,
                input_tokens: 0,
                output_tokens: 0,
                cache_creation_input_tokens: 0,
                cache_creation_1h_input_tokens: 0,
                cache_read_input_tokens: 0,
                cost_nusd: 0,
                saved_nusd: 0,
                status: Status::Ok,
                http_status: 0,
                error: None,
                priced: true,
                usage_incomplete: false,
                latency_us: 0,
                ttfb_us: 0,
                upstream_request_id: None,
                idempotency_key: None,
            },
            started,
            dialect,
            recorder: self.state.recorder.clone(),
            recorded: false,
            guard: None,
            admission: None,
            sent_upstream: false,
            clamped_max_tokens: None,
        }
    }

    async fn handle(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<(), ProxyError> {
        let state = &self.state;
        // ingress
        let tunnel = if self.intercepted {
            // Every intercepted connection carries its tunnel's host.
            let host = intercept::tunnel_host(session).ok_or_else(|| {
                ProxyError::Internal("intercepted request without a tunnel".into())
            })?;
            Some(host)
        } else {
            None
        };
        let route = state.routes.resolve(session.req_header(), tunnel)?;
        if let Some(draft) = ctx.draft.as_mut() {
            draft.dialect = route.dialect();
            draft.event.provider.clone_from(&route.provider.name);
            draft.event.idempotency_key = session
                .req_header()
                .headers
                .get(headers::IDEMPOTENCY_KEY)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
        }
        // identify
        let identity =
            identify::identify(session.req_header(), &state.default_identity, &state.keys)
                .inspect_err(|e| self.count_key_rejection(e))?;
        if let Some(draft) = ctx.draft.as_mut() {
            draft.event.account.clone_from(&identity.account);
            draft.event.workload.clone_from(&identity.workload);
            draft.event.tags.clone_from(&identity.tags);
        }
        let body = ingress::read_body(session, state.max_body_bytes).await?;
        let mut request = ingress::parse(&route, body)?;
        if let Some(draft) = ctx.draft.as_mut() {
            draft.event.model.clone_from(&request.model);
            draft.event.route = if request.stream {
                RouteKind::Stream
            } else {
                RouteKind::Sync
            };
        }
        // limit
        if let Some(admission) = limit::admit(state, &identity, &request)? {
            if let Some(draft) = ctx.draft.as_mut() {
                draft.admission = Some((state.limiter.clone(), admission));
            }
        }
        // cache
        let plan = cache::plan(state, &identity, &route, session.req_header(), &request)?;
        if let Some(draft) = ctx.draft.as_mut() {
            draft.event.cache = plan.outcome;
        }
        if let (true, Some(key)) = (plan.read, plan.key) {
            let r = cache::Req {
                state,
                route: &route,
                request: &request,
            };
            if let Some(entry) = cache::lookup(state, &key, plan.ttl) {
                if cache::serve_hit(r, session, ctx, &entry).await {
                    return Ok(());
                }
            }
            if state.cache.config.coalesce {
                match cache::coalesce(r, session, ctx, key, plan.ttl).await {
                    cache::Coalesced::Served => return Ok(()),
                    cache::Coalesced::Lead(leader) => ctx.leader = Some(leader),
                    cache::Coalesced::Alone => {}
                }
            }
        }
        ctx.cache_write = plan.write();
        if let Some(draft) = ctx.draft.as_ref() {
            cache::count(state, draft);
        }
        // budget
        let method = session.req_header().method.clone();
        if let Some(guard) = budget::reserve(state, &identity, &route, &method, &mut request)? {
            if guard.bound_rewritten {
                // The output bound is this request's budget's, not the
                // client's: followers (other budgets) go their own way, and
                // the answer is cached only if the bound did not cut it.
                ctx.leader = None;
                if let Some(w) = ctx.cache_write.as_mut() {
                    w.unless_cut = true;
                }
            }
            if let Some(draft) = ctx.draft.as_mut() {
                draft.clamped_max_tokens = guard.clamped;
                draft.guard = Some(guard);
            }
        }
        // forward
        let upstream_req = forward::build_request(
            &route,
            session.req_header(),
            request.body.len(),
            state.keys.enabled(),
        )?;
        if let Some(draft) = ctx.draft.as_mut() {
            // On record (durably, with outbox.sync) before the first byte
            // leaves: a crash from here on still leaves its worst case.
            let worst = match &draft.guard {
                Some(_) => 0,
                None => budget::worst_case(state, &route, &request),
            };
            draft.open(worst).await;
            draft.sent_upstream = true;
        }
        let pre_upstream = ctx
            .draft
            .as_ref()
            .map(|d| d.started.elapsed())
            .unwrap_or_default();
        let call = state
            .upstreams
            .send(&route.provider, upstream_req, &request.body)
            .await?;
        // meter
        meter::relay(state, session, &route, &request, call, ctx, pre_upstream).await;
        Ok(())
    }

    fn count_key_rejection(&self, err: &ProxyError) {
        let reason = match err {
            ProxyError::Unauthorized(crate::keys::KeyError::Missing) => "missing",
            ProxyError::Unauthorized(crate::keys::KeyError::Invalid) => "invalid",
            ProxyError::Unauthorized(crate::keys::KeyError::WrongMode(_)) => "wrong_mode",
            ProxyError::Forbidden(_) => "account",
            _ => return,
        };
        self.state
            .metrics
            .key_rejections
            .with_label_values(&[reason])
            .inc();
    }

    async fn fail(&self, session: &mut Session, ctx: &mut RequestCtx, err: ProxyError) {
        let Some(mut draft) = ctx.draft.take() else {
            return;
        };
        let dialect = match &err {
            ProxyError::UnknownRoute { dialect, .. } | ProxyError::Misdirected { dialect, .. } => {
                *dialect
            }
            _ => draft.dialect,
        };
        match err.level() {
            Level::Debug => {
                tracing::debug!(request_id = %draft.event.event_id, error = %err, "request refused")
            }
            Level::Warn => {
                tracing::warn!(request_id = %draft.event.event_id, error = %err, "request failed")
            }
            Level::Error => {
                tracing::error!(request_id = %draft.event.event_id, error = %err, "request failed")
            }
        }
        draft.event.status = Status::ProxyError;
        draft.event.error = Some(err.kind().to_string());
        // Nothing reached a provider it could not connect to.
        if matches!(
            err,
            ProxyError::UpstreamUnreachable { sent: false, .. }
                | ProxyError::UpstreamTimeout {
                    phase: "the connection",
                    ..
                }
        ) {
            draft.sent_upstream = false;
        }
        // Sent but never answered (a first-byte timeout, a cut before the
        // header): the provider may still bill it.
        if draft.sent_upstream {
            draft.event.usage_incomplete = true;
        }
        let client_gone = matches!(err, ProxyError::ClientRead(_));
        if !client_gone {
            draft.event.http_status = err.status();
        }
        if let Some(leader) = ctx.leader.take() {
            // Followers get the same upstream failure; a refusal of this
            // request (its own budget, limits) is not theirs.
            if matches!(
                err,
                ProxyError::UpstreamUnreachable { .. }
                    | ProxyError::UpstreamTimeout { .. }
                    | ProxyError::UpstreamProtocol { .. }
            ) {
                leader.finish(crate::cache::flight::Outcome::Failed {
                    status: err.status(),
                    kind: err.kind(),
                    message: err.to_string(),
                    tail: bytes::Bytes::new(),
                });
            }
        }
        draft.record(None);
        if client_gone {
            return;
        }
        let (header, body) = err.response(dialect, &draft.event.event_id);
        send_whole(session, header, body).await;
    }
}

#[async_trait]
impl ProxyHttp for Tollgate {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            draft: None,
            leader: None,
            cache_write: None,
            _in_flight: None,
        }
    }

    /// Runs the whole pipeline and always answers the request itself (`Ok(true)`).
    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<bool> {
        let started = Instant::now();
        // While relaying, the client is watched for leaving with a one-byte
        // read. A keep-alive client that has its whole answer (content-length)
        // may already be sending its next request: with pipelining on, pingora
        // keeps that byte for the next request instead of dropping it (which
        // turned `POST` into `OST`).
        session.downstream_session.set_pipelining_enabled(true);
        ctx._in_flight = Some(self.state.in_flight.enter());
        let dialect = ingress::guess_dialect(session.req_header());
        ctx.draft = Some(self.draft(uuid::Uuid::now_v7(), started, dialect));
        if let Err(err) = self.handle(session, ctx).await {
            self.fail(session, ctx, err).await;
        }
        if session.response_written().is_none() {
            // Nothing was answered (the client left while sending): the
            // connection must not carry another request, whose answer the
            // client would take for this one.
            give_up_on_client(session);
        }
        Ok(true)
    }

    /// Never reached: `request_filter` answers every request.
    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> pingora::Result<Box<HttpPeer>> {
        Err(pingora::Error::explain(
            pingora::ErrorType::InternalError,
            "tollgate forwards from request_filter",
        ))
    }
}
