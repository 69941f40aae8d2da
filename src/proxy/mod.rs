//! The sidecar's data plane on pingora.
//!
//! Stages and the pingora hook each runs in:
//!
//! ```text
//! request_filter ─┬─ ingress   route, bounded body read, one parse → RequestModel
//!                 │            (the gateway surface's chat paths map onto
//!                 │            /v1/messages here, its batch submit onto
//!                 │            /v1/messages/batches: `gateway`; its usage and
//!                 │            batch status reads are answered before any stage)
//!                 ├─ identify  gateway key; account / workload / tags: x-tollgate-* headers, else defaults
//!                 ├─ idempotency  Idempotency-Key: replay the kept answer, wait for the
//!                 │            first request with the key, 409 / 422, or claim it
//!                 ├─ limit     rpm / tpm token buckets → 429 (and the route's plan: 400 / 403)
//!                 ├─ cache     exact cache: a hit is answered here; an identical
//!                 │            request in flight is followed (coalescing)
//!                 ├─ budget    reserve the worst case against every budget → 402, or clamp max_tokens
//!                 ├─ batch     a batch create: every item's worst case at the batch price → 402;
//!                 │            the batch recorded durably (settled per item later: `batch`)
//!                 ├─ route     an alias or x-tollgate-fallback: try the plan's targets in turn
//!                 │            (translating for the other dialect), each through forward + meter
//!                 ├─ forward   strip client credentials, inject the key, send (pooled, rustls)
//!                 │            (after its open record is journaled: the one durability wait)
//!                 └─ meter     relay the response chunk by chunk through the tap,
//!                              price it, settle limits and budgets, queue its usage
//!                              event (not waited on), receipts
//! (returns Ok(true): pingora's own upstream phases are not used; see below)
//! ```
//!
//! Before any hook, the base-URL listener's connections are on a clock for
//! their request heads (`ingress::head`: slow clients get a 408).
//!
//! Why everything happens in `request_filter`: the route, the key and later
//! the cache and budget all depend on the parsed body, and pingora only
//! re-sends a body read this early when it fits its 64 KiB retry buffer. So
//! the request is forwarded with pingora's pooled connector directly and the
//! response streamed back from here (DESIGN.md, "Pingora notes").

pub mod batch;
pub mod budget;
pub mod cache;
pub mod error;
pub mod exchange;
pub mod forward;
pub mod gateway;
pub mod headers;
pub mod idempotency;
pub mod identify;
pub mod ingress;
pub mod intercept;
pub mod lease;
pub mod lifecycle;
pub mod limit;
pub mod meter;
pub mod receipt;
pub mod recorder;
pub mod respond;
pub mod route;
pub mod ship;
pub mod state;
pub mod sync;

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use pingora::proxy::{ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;

use crate::meter::event::{RouteKind, Status};
use error::{Level, ProxyError};
pub use exchange::{Draft, Exchange};
use respond::{give_up_on_client, send_whole};
pub use state::State;

/// Ends the request with `err` when `result` is one: the exchange goes to
/// [`Tollgate::fail`], which answers and records it.
macro_rules! or_fail {
    ($app:expr, $session:expr, $x:expr, $result:expr) => {
        match $result {
            Ok(v) => v,
            // Boxed: the error path's future stays out of every stage's.
            Err(err) => return Box::pin($app.fail($session, $x, err)).await,
        }
    };
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

impl Tollgate {
    /// Runs the stages; every way out answers the client (or finds it
    /// gone) and records the exchange.
    ///
    /// Builds the [`Exchange`] itself: an argument would be kept twice in
    /// this future (as the argument and as the local it is moved to).
    async fn handle(
        &self,
        session: &mut Session,
        started: Instant,
        surface: Option<gateway::Surface>,
    ) {
        let state = &self.state;
        let dialect = ingress::guess_dialect(session.req_header());
        let mut x = Exchange::new(state, started, dialect);
        // ingress
        let tunnel = if self.intercepted {
            // Every intercepted connection carries its tunnel's host.
            let host = or_fail!(
                self,
                session,
                x,
                intercept::tunnel_host(session).ok_or_else(|| {
                    ProxyError::Internal("intercepted request without a tunnel".into())
                })
            );
            Some(host)
        } else {
            None
        };
        let route = or_fail!(
            self,
            session,
            x,
            match surface {
                // The gateway surface's chat: the default Anthropic
                // provider's /v1/messages, through every stage below.
                Some(s @ (gateway::Surface::Chat | gateway::Surface::ChatStream)) => {
                    gateway::chat_route(&state.routes, s, session.req_header_mut())
                }
                // Its batch submit: a Message Batches create, answered
                // with tollgate's record of the batch.
                Some(gateway::Surface::Batch) => {
                    x.gateway_batch = true;
                    gateway::batch::submit_route(&state.routes, session.req_header_mut())
                }
                _ => state.routes.resolve(session.req_header(), tunnel),
            }
        );
        // Batch objects' results_url point back here (see dialect::anthropic::batch).
        x.results_base = ingress::batch_results_base(
            session.req_header(),
            &route,
            self.intercepted,
            session.server_addr().and_then(|a| a.as_inet()).copied(),
        );
        let draft = &mut x.draft;
        draft.client_dialect = route.dialect();
        draft.event.provider.clone_from(&route.provider.name);
        draft.event.idempotency_key = session
            .req_header()
            .headers
            .get(headers::IDEMPOTENCY_KEY)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        // identify
        let identity = or_fail!(
            self,
            session,
            x,
            identify::identify(
                session.req_header(),
                &state.default_identity,
                &state.fleet.keyring()
            )
            .inspect_err(|e| count_key_rejection(state, e))
        );
        let draft = &mut x.draft;
        draft.event.account.clone_from(&identity.account);
        draft.event.workload.clone_from(&identity.workload);
        draft.event.tags.clone_from(&identity.tags);
        // plan: the batch APIs only for plans that include them
        if route.is_batch() && state.fleet.batch_off(&identity.account) {
            let err = ProxyError::Forbidden(format!(
                "account {:?} is on a plan without batch access; ask for a plan that includes batches",
                identity.account
            ));
            return Box::pin(self.fail(session, x, err)).await;
        }
        // A batch create may be as large as the batch API allows.
        let batch_create = batch::is_create(&route, &session.req_header().method);
        let batch_upload = batch::openai::is_upload(&route, &session.req_header().method);
        let limit = match batch_create || batch_upload {
            true => state.batches.config.max_body_bytes,
            false => state.max_body_bytes,
        };
        // Boxed (a small allocation): inline, its future would leave a
        // hole of its size in every later state of this one.
        let body = or_fail!(
            self,
            session,
            x,
            Box::pin(ingress::read_body(
                session,
                limit,
                state.request_body_timeout
            ))
            .await
        );
        // The gateway's path decides streaming, before the idempotency
        // fingerprint is taken of the body.
        let body = match surface {
            Some(s @ (gateway::Surface::Chat | gateway::Surface::ChatStream)) => {
                or_fail!(self, session, x, gateway::chat_body(s, body))
            }
            _ => body,
        };
        // idempotency: a gateway batch submit is answered with another
        // shape than a create on /v1/messages/batches, so a key used on
        // both with one body is a 422, never the other's answer.
        let keyed_path = match surface {
            Some(gateway::Surface::Batch) => gateway::BATCH,
            _ => route.upstream_path.as_str(),
        };
        // The rarer stages' futures are boxed (here and below): the
        // exchange's own future, allocated for every request, stays the
        // size of the common path's.
        if idempotency::requested(session.req_header()) {
            x = match Box::pin(idempotency::begin(
                state,
                session,
                x,
                &identity.account,
                &route,
                keyed_path,
                &body,
            ))
            .await
            {
                idempotency::Begun::Run(x) => x,
                idempotency::Begun::Answered => return,
                idempotency::Begun::Refused(x, err) => {
                    return Box::pin(self.fail(session, x, err)).await
                }
            };
        }
        let mut request = or_fail!(self, session, x, ingress::parse(&route, body));
        x.draft.event.model.clone_from(&request.model);
        x.draft.event.route = if route.is_batch() {
            RouteKind::Batch
        } else if request.stream {
            RouteKind::Stream
        } else {
            RouteKind::Sync
        };
        // route: an alias or fallbacks make a plan of targets to try
        let routed = or_fail!(
            self,
            session,
            x,
            route::plan(state, &route, session.req_header(), &identity, &request)
        );
        // limit
        if let Some(admitted) = or_fail!(self, session, x, limit::admit(state, &identity, &request))
        {
            x.draft.admission = Some(admitted);
        }
        // cache
        let plan = or_fail!(
            self,
            session,
            x,
            cache::plan(state, &identity, &route, session.req_header(), &request)
        );
        x.draft.event.cache = plan.outcome;
        if let (true, Some(key)) = (plan.read, plan.key) {
            let r = cache::Req {
                state,
                route: &route,
                request: &request,
            };
            if let Some(entry) = cache::lookup(state, &key, plan.ttl) {
                x = match Box::pin(cache::serve_hit(r, session, x, &entry)).await {
                    Ok(()) => return,
                    Err(x) => x,
                };
            }
            if state.cache.config.coalesce {
                x = match Box::pin(cache::coalesce(r, session, x, key, plan.ttl)).await {
                    Some(x) => x,
                    None => return,
                };
            }
        }
        x.cache_write = plan.write();
        cache::count(state, &x.draft);
        // budget
        let reserved = match state.ledger.is_empty() {
            // No budget: no reservation (and no hole in this future).
            true => Ok(None),
            false => {
                let method = session.req_header().method.clone();
                Box::pin(budget::reserve(
                    state,
                    &identity,
                    &route,
                    &method,
                    &mut request,
                    routed.as_ref().and_then(|r| r.worst.as_ref()),
                ))
                .await
            }
        };
        if let Some(guard) = or_fail!(self, session, x, reserved) {
            if guard.bound_rewritten {
                // The output bound is this request's budget's, not the
                // client's: followers (other budgets) go their own way, and
                // the answer is cached only if the bound did not cut it.
                x.leader = None;
                if let Some(w) = x.cache_write.as_mut() {
                    w.unless_cut = true;
                }
            }
            x.draft.clamped_max_tokens = guard.clamped;
            x.draft.guard = Some(guard);
        }
        // batch: every item's worst case at the batch price, recorded
        // durably before the create is sent
        if batch_create {
            let pending = or_fail!(
                self,
                session,
                x,
                Box::pin(batch::reserve(state, &identity, &route, &request.body)).await
            );
            x.batch = Some(Box::new(pending));
        }
        // An OpenAI batch input file: read once, every line priced
        if batch_upload {
            let content_type = session
                .req_header()
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            x.upload = or_fail!(
                self,
                session,
                x,
                Box::pin(batch::openai::read_upload(
                    state,
                    &identity,
                    &route,
                    &content_type,
                    &request.body
                ))
                .await
            )
            .map(Box::new);
        }
        if let Some(routed) = routed {
            if let Some((x, err)) = Box::pin(route::run(
                state, session, &route, &request, &identity, x, routed,
            ))
            .await
            {
                Box::pin(self.fail(session, x, err)).await;
            }
            return;
        }
        // forward: the account's own key (BYOK) if the control endpoint
        // holds one, else the provider's configured key.
        let byok = state
            .fleet
            .provider_key(&identity.account, &route.provider.name);
        let upstream_req = or_fail!(
            self,
            session,
            x,
            forward::build_request(
                &route,
                session.req_header(),
                request.body.len(),
                state.fleet.keyring().enabled(),
                byok.as_deref().or(route.provider.api_key.as_ref()),
                None,
            )
        );
        // The connection first: nothing leaves yet.
        let taken = or_fail!(
            self,
            session,
            x,
            tokio::select! {
                // The cut polled second: a pooled connection never registers for it.
                biased;
                r = state.upstreams.take(&route.provider, &upstream_req) => r,
                () = state.in_flight.cut() => Err(ProxyError::ShuttingDown),
            }
        );
        // On record (durably, with outbox.sync) before the first byte
        // leaves: a crash from here on still leaves its worst case.
        let worst = match &x.draft.guard {
            Some(_) => 0,
            None => budget::worst_case(state, &route, &request),
        };
        x.draft.open(worst).await;
        x.draft.sent_upstream = true;
        let pre_upstream = x.draft.started.elapsed();
        let call = or_fail!(
            self,
            session,
            x,
            tokio::select! {
                biased;
                // Boxed: inline, this wait (~4 KB) would size the request's
                // whole future, which `async_trait` copies into its box per
                // request; it is built and moved once either way.
                r = Box::pin(state.upstreams.send_on(&route.provider, taken, upstream_req, &request.body)) => r,
                // Still waiting for the answer's head when the grace is over.
                () = state.in_flight.cut() => Err(ProxyError::ShuttingDown),
            }
        );
        // meter (boxed: inline, the relay's future, the largest of this
        // one's states, would size the whole request's, which pingora's
        // `async_trait` copies into a box of its own per request)
        Box::pin(meter::relay(
            state,
            session,
            &route,
            &request,
            call,
            x,
            pre_upstream,
            None,
        ))
        .await;
    }

    /// Ends a request tollgate could not or would not serve: logs it,
    /// records it, hands an upstream failure to its followers and answers
    /// in the client's dialect.
    async fn fail(&self, session: &mut Session, x: Exchange, err: ProxyError) {
        let Exchange {
            mut draft,
            leader,
            batch,
            ..
        } = x;
        let dialect = match &err {
            ProxyError::UnknownRoute { dialect, .. }
            | ProxyError::Misdirected { dialect, .. }
            | ProxyError::UnsupportedEndpoint { dialect, .. } => *dialect,
            _ => draft.client_dialect,
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
        draft.event.status = match err {
            ProxyError::ShuttingDown => Status::Shutdown,
            _ => Status::ProxyError,
        };
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
        if let Some(pending) = batch {
            // Never sent: released. Sent and unanswered: the provider may
            // have the batch (dropped: charged its worst case).
            if !draft.sent_upstream {
                pending.release().await;
            }
        }
        let client_gone = matches!(err, ProxyError::ClientRead(_));
        if matches!(
            err,
            ProxyError::ClientTimeout { .. } | ProxyError::MalformedRequest { .. }
        ) {
            // What follows on the connection is not a next request.
            give_up_on_client(session);
        }
        if !client_gone {
            draft.event.http_status = err.status();
        }
        if let Some(leader) = leader {
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
        let (mut header, body) = err.response(dialect, &draft.event.event_id);
        receipt::add_attempts(&mut header, draft.attempts.as_deref());
        send_whole(session, header, body).await;
    }
}

/// Counts a request refused for its gateway key (or its account).
fn count_key_rejection(state: &State, err: &ProxyError) {
    let reason = match err {
        ProxyError::Unauthorized(crate::keys::KeyError::Missing) => "missing",
        ProxyError::Unauthorized(crate::keys::KeyError::Invalid) => "invalid",
        ProxyError::Unauthorized(crate::keys::KeyError::WrongMode(_)) => "wrong_mode",
        ProxyError::Forbidden(_) => "account",
        _ => return,
    };
    state
        .metrics
        .key_rejections
        .with_label_values(&[reason])
        .inc();
}

#[async_trait]
impl ProxyHttp for Tollgate {
    /// Nothing lives across hooks: `request_filter` runs the whole
    /// exchange, whose state is the [`Exchange`] it builds.
    type CTX = ();

    fn new_ctx(&self) {}

    /// Runs the whole pipeline and always answers the request itself (`Ok(true)`).
    async fn request_filter(&self, session: &mut Session, _ctx: &mut ()) -> pingora::Result<bool> {
        let started = Instant::now();
        // While relaying, the client is watched for leaving with a one-byte
        // read. A keep-alive client that has its whole answer (content-length)
        // may already be sending its next request: with pipelining on, pingora
        // keeps that byte for the next request instead of dropping it (which
        // turned `POST` into `OST`).
        session.downstream_session.set_pipelining_enabled(true);
        ingress::head::head_read(session);
        // The gateway surface is base-URL mode's: in a tunnel every path
        // is the provider host's own.
        let surface = match self.intercepted {
            false => gateway::Surface::of(session.req_header()),
            true => None,
        };
        if surface == Some(gateway::Surface::Usage) {
            // A read of the ledger, not a provider call: no exchange.
            let _in_flight = self.state.in_flight.enter();
            Box::pin(gateway::serve_usage(&self.state, session)).await;
        } else if surface == Some(gateway::Surface::BatchStatus) {
            // A read of a batch record (and tollgate's own retrieve of it):
            // no exchange.
            let _in_flight = self.state.in_flight.enter();
            Box::pin(gateway::batch::serve_status(&self.state, session)).await;
        } else {
            self.handle(session, started, surface).await;
        }
        if session.response_written().is_none() {
            // Nothing was answered (the client left while sending): the
            // connection must not carry another request, whose answer the
            // client would take for this one.
            give_up_on_client(session);
        }
        ingress::head::exchange_done(session);
        Ok(true)
    }

    /// Never reached: `request_filter` answers every request.
    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut (),
    ) -> pingora::Result<Box<HttpPeer>> {
        Err(pingora::Error::explain(
            pingora::ErrorType::InternalError,
            "tollgate forwards from request_filter",
        ))
    }
}
