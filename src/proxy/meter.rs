//! Meter (the tap): relays the upstream response to the client as it
//! arrives, collects usage on the way, prices it and queues the usage event
//! (settled first) before the response's last event reaches the client,
//! without waiting for the disk: the request's open record, journaled before
//! it was sent, already makes it durable (see `crate::store::journal`).
//!
//! - Streams (SSE) pass chunk by chunk; nothing is buffered but an
//!   incomplete trailing event when a usage chunk must be cut out.
//! - Non-streaming JSON is read whole (it must be: its cost goes in a
//!   header), then priced, recorded and sent with `content-length`.
//! - An answer compressed anyway is decoded first (`decode`).
//! - Anthropic batch objects (create, retrieve, list, cancel) are read whole
//!   too, up to `BATCH_OBJECT_CAP`, to point their `results_url` back at
//!   tollgate; the results themselves (JSONL) are piped like any unmetered
//!   answer.

mod decode;

use std::future::Future as _;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

use super::exchange::Cut;
use super::forward::UpstreamCall;
use super::idempotency::Recording;
use super::ingress::{Endpoint, RequestModel, Route};
use super::respond::give_up_on_client;
use super::{headers, receipt, Draft, Exchange, State};
use crate::cache::flight::{Head, Leader, Outcome};
use crate::cache::EntryMeta;
use crate::dialect::translate::{self, StreamEnd, StreamTranslator};
use crate::dialect::Assembler;
use crate::dialect::Usage;
use crate::dialect::{usage_from_json, Iteration, StreamTap};
use crate::dialect::{Dialect, ErrorClass};
use crate::meter::event::{Estimated, Status};
use crate::proxy::recorder::UpstreamTimes;

/// The most of a batch-object answer read whole for its `results_url`. A
/// list page of Anthropic's largest (1,000 batches) is well under 1 MiB;
/// larger is not a batch answer, and is piped as it comes.
const BATCH_OBJECT_CAP: usize = 4 << 20;

/// A read's outcome; the idle timeout is pingora's per-read timeout,
/// set once per response (cheaper than a tokio timer per chunk).
fn classify(read: pingora::Result<Option<Bytes>>) -> Result<Option<Bytes>, ReadFailure> {
    read.map_err(|e| match e.etype() {
        pingora::ErrorType::ReadTimedout => ReadFailure::Idle,
        _ => ReadFailure::Io(e.to_string()),
    })
}

/// Why relaying stopped before the upstream's end.
enum ReadFailure {
    Idle,
    Io(String),
    ClientGone,
    /// A budget cannot pay for the stream's real input (`message_start`).
    Budget(String),
    /// The sidecar is shutting down and the grace is over.
    Shutdown,
}

/// A routed answer from an upstream of the other dialect: what the client
/// gets is translated on the way (see [`crate::dialect::translate`]), while
/// the tap meters the upstream's own bytes.
pub struct Translation {
    /// The client's dialect (the upstream speaks the other).
    pub client: Dialect,
    /// An OpenAI client asked for the stream's usage chunk.
    pub include_usage: bool,
    /// Unix seconds, an OpenAI client's `created`.
    pub created: u64,
}

/// Relays the response of `call` to the client and records the request.
/// `route` and `request` are the upstream's (a routed attempt's target);
/// `translation` when the client speaks the other dialect.
///
/// Not an `async fn`: the call and the exchange are taken apart into the
/// boxed `Relay` before the future exists, so the future (allocated and
/// copied for every request) holds neither of them.
#[allow(clippy::too_many_arguments)]
pub fn relay<'a>(
    state: &'a State,
    session: &'a mut Session,
    route: &'a Route,
    request: &'a RequestModel,
    call: UpstreamCall,
    x: Exchange,
    pre_upstream: Duration,
    translation: Option<Translation>,
) -> impl std::future::Future<Output = ()> + Send + 'a {
    let start = start(state, session, route, call, x, pre_upstream, translation);
    async move {
        let Some((relay, upstream_header, stream, sse)) = start else {
            return;
        };
        if stream {
            relay.stream(route, request, upstream_header, sse).await;
        } else {
            relay.buffered(route, request, upstream_header).await;
        }
    }
}

/// The relay of an answered call, its response head, whether it is piped
/// (else read whole) and whether it is SSE; `None` without a head.
fn start<'a>(
    state: &'a State,
    session: &'a mut Session,
    route: &Route,
    mut call: UpstreamCall,
    x: Exchange,
    pre_upstream: Duration,
    translation: Option<Translation>,
) -> Option<(Box<Relay<'a>>, ResponseHeader, bool, bool)> {
    let mut draft = x.draft;
    draft.event.ttfb_us = call.ttfb.as_micros() as u64;
    call.session
        .set_read_timeout(Some(state.upstreams.idle_timeout()));
    let mut upstream_header = call.session.response_header().cloned()?;
    let body = decode::Body::of(&mut upstream_header);
    let status = upstream_header.status.as_u16();
    draft.event.http_status = status;
    let id_header = route.dialect().request_id_header();
    draft.event.upstream_request_id = upstream_header
        .headers
        .get(id_header)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let is_sse = upstream_header
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.trim_start().starts_with("text/event-stream"));
    // The head reaches followers with the first chunk (a stream) or the
    // outcome: until then they can still go their own way.
    let mut leader = x.leader;
    if translation.is_some() && is_sse {
        // Followers take the upstream's raw chunks, in the other dialect:
        // they go their own way instead.
        leader = None;
    }
    let write = x.cache_write;
    // Only a body the tap can read can be rewritten.
    let results_base = x.results_base.filter(|_| !is_sse && body.readable());
    // Answers read whole for the batch objects in them (small, bounded).
    let batch_objects = !is_sse
        && body.readable()
        && (results_base.is_some()
            || x.gateway_batch
            || super::batch::openai::answers_with_objects(route, &session.req_header().method));
    let max_entry = state.cache.config.max_entry_bytes as usize;
    let assembler =
        (is_sse && (write.is_some() || leader.is_some())).then(|| match route.endpoint {
            Endpoint::Responses => Assembler::responses(max_entry),
            // The cache keeps the answer the client got.
            _ => Assembler::new(draft.client_dialect, max_entry),
        });
    let translator = translation.as_ref().map(|t| {
        Box::new((
            StreamTranslator::new(t.client, t.include_usage, t.created),
            StreamTap::new(t.client, false),
        ))
    });
    // Boxed: the relay's futures take it by value, and each would
    // otherwise hold its own copy of it (a few KiB each, copied per request).
    let relay = Box::new(Relay {
        state,
        session,
        call,
        draft,
        pre_upstream,
        client_open: true,
        leader,
        write,
        assembler,
        body,
        idempotent: x.idempotency.map(Recording::new),
        results_base,
        batch_objects,
        batch: x.batch,
        upload: x.upload,
        gateway_batch: x.gateway_batch,
        translation,
        translator,
        _in_flight: x.in_flight,
    });
    // Unmetered paths (model lists, batch results…) are piped, never buffered.
    let stream = !relay.batch_objects && (is_sse || route.endpoint == Endpoint::Passthrough);
    Some((relay, upstream_header, stream, is_sse))
}

struct Relay<'a> {
    state: &'a State,
    session: &'a mut Session,
    call: UpstreamCall,
    draft: Draft,
    pre_upstream: Duration,
    /// False once the client's close has been seen (stop watching for it).
    client_open: bool,
    /// This request leads a coalesced flight: its followers get every chunk
    /// and the outcome, and the call goes on for them if this client leaves.
    leader: Option<Leader>,
    /// Where to cache a complete answer.
    write: Option<crate::cache::CacheWrite>,
    /// Builds the complete message out of a stream (for the cache and
    /// non-stream followers).
    assembler: Option<Assembler>,
    /// The upstream body's coding (decoded for the tap when compressed).
    body: decode::Body,
    /// The first request with its `Idempotency-Key`: what its client gets,
    /// kept for retries when complete (dropped, the key is released).
    idempotent: Option<Recording>,
    /// Batch objects in the answer: their `results_url` are pointed at this
    /// base (see `crate::dialect::anthropic::batch`).
    results_base: Option<String>,
    /// Batch (or batch input file) objects in the answer: read whole, up to
    /// [`BATCH_OBJECT_CAP`], for `results_base`, `batch`, `upload` and `gateway_batch`.
    batch_objects: bool,
    /// A batch create: concluded with its answer (see `super::batch`).
    batch: Option<Box<super::batch::Pending>>,
    /// An OpenAI batch upload: its items kept under the file's id.
    upload: Option<Box<super::batch::openai::PendingUpload>>,
    /// A gateway batch submit: an accepted batch is answered with
    /// tollgate's record of it (see `super::gateway::batch`).
    gateway_batch: bool,
    /// The client speaks the other dialect than the upstream.
    translation: Option<Translation>,
    /// A translated stream: the translator, and a tap over its output in
    /// the client's dialect (feeding the assembler, for the cache).
    /// (Boxed: rare, and ~700 bytes inline.)
    translator: Option<Box<(StreamTranslator, StreamTap)>>,
    /// The exchange's in-flight count: the request is in flight until the
    /// relay ends.
    _in_flight: super::lifecycle::InFlightGuard,
}

/// The provider's response headers minus framing and tollgate's own.
fn provider_headers(upstream: &ResponseHeader) -> Vec<(http::HeaderName, http::HeaderValue)> {
    upstream
        .headers
        .iter()
        .filter(|(name, _)| !headers::not_forwarded(name))
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect()
}

/// A stream's output waiting to be written: what was ready together goes
/// to the client in one write.
#[derive(Default)]
struct Gathered {
    parts: Vec<Bytes>,
    len: usize,
}

impl Gathered {
    /// Written at once when this much has gathered, ready input or not.
    const FULL: usize = 64 << 10;

    fn push(&mut self, out: Bytes) {
        if !out.is_empty() {
            self.len += out.len();
            self.parts.push(out);
        }
    }

    fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    fn full(&self) -> bool {
        self.len >= Self::FULL
    }

    /// All of it then `tail`, as one buffer.
    fn take_with(&mut self, tail: BytesMut) -> Bytes {
        if self.is_empty() {
            return tail.freeze();
        }
        let mut all = self.concat(tail.len());
        all.extend_from_slice(&tail);
        all.freeze()
    }

    /// All of it as one buffer (copied only when there is more than one).
    fn take(&mut self) -> Option<Bytes> {
        match self.parts.len() {
            0 | 1 => {
                self.len = 0;
                self.parts.pop()
            }
            _ => Some(self.concat(0).freeze()),
        }
    }

    /// Empties it into one buffer with room for `more` bytes after.
    fn concat(&mut self, more: usize) -> BytesMut {
        let mut all = BytesMut::with_capacity(std::mem::take(&mut self.len) + more);
        for part in self.parts.drain(..) {
            all.extend_from_slice(&part);
        }
        all
    }
}

impl Relay<'_> {
    /// The next upstream chunk (decoded), the idle timeout, or the client
    /// going away.
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, ReadFailure> {
        match self.next_raw_chunk().await? {
            Some(chunk) => Ok(Some(self.body.chunk(chunk))),
            None => {
                let tail = self.body.finish();
                Ok((!tail.is_empty()).then_some(tail))
            }
        }
    }

    /// The next upstream chunk if it is already there (pingora holds it
    /// or the socket has it), without waiting: `None` when it is not.
    /// Dropping the read half-way loses nothing (it is raced the same way
    /// in `next_raw_chunk`).
    fn ready_chunk(&mut self) -> Option<Result<Option<Bytes>, ReadFailure>> {
        let read = std::pin::pin!(self.next_chunk());
        match read.poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(r) => Some(r),
            Poll::Pending => None,
        }
    }

    /// The next upstream chunk as it came.
    async fn next_raw_chunk(&mut self) -> Result<Option<Bytes>, ReadFailure> {
        if self.kept_for_followers() && !self.leader.as_ref().is_some_and(Leader::has_followers) {
            // The client left and now every follower has too: stop paying.
            return Err(ReadFailure::ClientGone);
        }
        let in_flight = &self.state.in_flight;
        // The selects below poll the upstream first (`biased`: the cut
        // registers only when a read waits), so an answer whose chunks
        // are always there is cut here.
        if in_flight.cutting() {
            return Err(ReadFailure::Shutdown);
        }
        if self.client_open {
            // The client's next request arriving early is kept by pingora
            // (pipelining); after that its leaving shows only as a failed write.
            tokio::select! {
                biased;
                r = self.call.session.read_response_body() => return classify(r),
                r = self.session.read_body_or_idle(true) => match r {
                    Err(_) if self.keep_for_followers() => {}
                    Err(_) => return Err(ReadFailure::ClientGone),
                    // Unexpected bytes from the client: stop watching, keep relaying.
                    Ok(_) => self.client_open = false,
                },
                () = in_flight.cut() => return Err(ReadFailure::Shutdown),
            }
        }
        tokio::select! {
            biased;
            r = self.call.session.read_response_body() => classify(r),
            () = in_flight.cut() => Err(ReadFailure::Shutdown),
        }
    }

    /// The client went away while coalesced followers wait on this call: it
    /// goes on for them (the answer is paid for either way). The event
    /// says the client left; its usage stays complete.
    fn keep_for_followers(&mut self) -> bool {
        if !self.leader.as_ref().is_some_and(Leader::has_followers) {
            return false;
        }
        if self.client_open {
            tracing::debug!(request_id = %self.draft.event.event_id, "client went away; the call goes on for coalesced followers");
        }
        self.client_open = false;
        self.draft.event.status = Status::ClientAborted;
        true
    }

    /// The client went away and the call goes on for followers.
    fn kept_for_followers(&self) -> bool {
        self.draft.event.status == Status::ClientAborted && !self.draft.event.usage_incomplete
    }

    /// Writes a chunk to this request's client. While followers depend on
    /// this call, a client that stops reading is given up on after the idle
    /// timeout rather than stalling them (the call goes on for them).
    async fn write_client(&mut self, chunk: Bytes) -> bool {
        if !self.client_open_for_writes() {
            return true;
        }
        if !self.leader.as_ref().is_some_and(Leader::has_followers) {
            return self
                .session
                .write_response_body(Some(chunk), false)
                .await
                .is_ok();
        }
        let limit = self.state.upstreams.idle_timeout();
        match tokio::time::timeout(limit, self.session.write_response_body(Some(chunk), false))
            .await
        {
            Ok(Ok(())) => true,
            Ok(Err(_)) | Err(_) => self.keep_for_followers(),
        }
    }

    /// Writes what the stream gathered to the client as one chunk: the
    /// chunks that were ready together go out in one write, as pingora's
    /// own proxy does (a write per upstream chunk cost a syscall and a
    /// wake of the client each).
    async fn flush_client(&mut self, gathered: &mut Gathered) -> bool {
        match gathered.take() {
            Some(out) => self.write_client(out).await,
            None => true,
        }
    }

    /// Caches a complete answer (`store`: when it may be) and hands it to
    /// the followers.
    fn conclude_ok(&mut self, message: Option<Bytes>, store: bool) {
        let e = &self.draft.event;
        let meta = EntryMeta {
            account: e.account.clone(),
            provider: e.provider.clone(),
            model: e.model.clone(),
            created_us: super::cache::now_us(),
            usage: e.usage,
            cost_nusd: e.cost_nusd,
            upstream_request_id: e.upstream_request_id.clone(),
        };
        let write = match (store, self.write.take(), message.as_ref()) {
            // A bound the client did not ask for must not have cut it.
            (true, Some(w), Some(m))
                if !(w.unless_cut && self.draft.client_dialect.stopped_at_limit(m)) =>
            {
                Some((w, m.clone()))
            }
            _ => None,
        };
        let release = self.leader.take().and_then(|leader| {
            let outcome = Outcome::Done {
                message,
                meta: meta.clone(),
            };
            if write.is_some() {
                Some(leader.finish_held(outcome))
            } else {
                leader.finish(outcome);
                None
            }
        });
        if let Some((w, message)) = write {
            super::cache::store(
                self.state,
                crate::cache::writer::Job {
                    key: w.key,
                    meta,
                    message,
                    ttl: w.ttl,
                    dialect: self.draft.client_dialect,
                    release,
                },
            );
        }
    }

    /// Whether the client is still there to write to.
    fn client_open_for_writes(&self) -> bool {
        self.draft.event.status != Status::ClientAborted
    }

    /// Caches a complete stream and ends the flight, or hands its failure
    /// (`tail`: the error event this client got) to the followers.
    fn conclude_stream(&mut self, metered: bool, tap: &StreamTap, tail: &[u8]) {
        if self.leader.is_none() && self.write.is_none() {
            return;
        }
        let e = &self.draft.event;
        let complete = metered
            && tap.complete()
            && tap.error().is_none()
            && matches!(e.status, Status::Ok | Status::ClientAborted)
            && !e.usage_incomplete;
        if complete {
            let message = self
                .assembler
                .take()
                .and_then(Assembler::finish)
                .map(Bytes::from);
            self.conclude_ok(message, true);
        } else if self.draft.cut == Some(Cut::BudgetExceeded) {
            // This request's own budget ended it: not the followers'
            // (they may have other budgets). They go their own way.
            if let Some(leader) = self.leader.take() {
                leader.finish(Outcome::Abandoned);
            }
        } else {
            self.conclude_failed(Bytes::copy_from_slice(tail));
        }
    }

    /// Hands a failure to the followers.
    fn conclude_failed(&mut self, tail: Bytes) {
        if let Some(leader) = self.leader.take() {
            let message = match self.draft.cut {
                Some(Cut::IdleTimeout) => {
                    "upstream stream stalled past the idle timeout (tollgate)"
                }
                _ => "upstream response ended before it was complete (tollgate)",
            };
            leader.finish(Outcome::Failed {
                status: 502,
                kind: "upstream_protocol",
                message: message.into(),
                tail,
            });
        }
    }

    /// The client's response header: the provider's, minus framing, plus receipts.
    fn client_header(
        &self,
        upstream: ResponseHeader,
        cost: Option<u64>,
        len: Option<usize>,
    ) -> ResponseHeader {
        headers::from_provider(upstream, |map| {
            headers::set_framing(map, len);
            receipt::add_headers(map, &self.draft.event, cost);
            if let Some(n) = self.draft.clamped_max_tokens {
                map.insert(headers::CLAMPED_MAX_TOKENS, http::HeaderValue::from(n));
            }
            receipt::add_attempts(map, self.draft.attempts.as_deref());
        })
    }

    /// Applies usage and prices it into the draft.
    fn apply_usage(&mut self, usage: &Usage, model: Option<&str>) {
        self.apply_billed(usage, model, &[]);
    }

    /// [`Self::apply_usage`]; with Anthropic iterations, the turn is billed
    /// from them, each at the model that ran it, and the event names the
    /// model that answered (a server-side fallback's, not the requested one
    /// a stream's `message_start` names).
    fn apply_billed(&mut self, usage: &Usage, model: Option<&str>, iterations: &[Iteration]) {
        let e = &mut self.draft.event;
        if let Some(model) = model.filter(|m| !m.is_empty()) {
            model.clone_into(&mut e.model);
        }
        if iterations.is_empty() {
            e.usage = *usage;
            let cost = self
                .state
                .recorder
                .price_at(&e.model, usage, e.ts.div_euclid(1_000_000));
            e.cost_nusd = cost.nusd;
            e.priced = cost.priced;
            return;
        }
        let mut total = Usage {
            fast: usage.fast,
            us_only: usage.us_only,
            ..Usage::default()
        };
        let (mut nusd, mut priced) = (0u64, true);
        for it in iterations {
            let m = it.model.as_deref().unwrap_or(&e.model);
            // The turn's premiums (fast, US-only) apply to every step.
            let u = Usage {
                fast: usage.fast,
                us_only: usage.us_only,
                ..it.usage
            };
            let cost = self
                .state
                .recorder
                .price_at(m, &u, e.ts.div_euclid(1_000_000));
            nusd = nusd.saturating_add(cost.nusd);
            priced &= cost.priced;
            total.input_tokens += u.input_tokens;
            total.output_tokens += u.output_tokens;
            total.cache_creation_input_tokens += u.cache_creation_input_tokens;
            total.cache_creation_1h_input_tokens += u.cache_creation_1h_input_tokens;
            total.cache_read_input_tokens += u.cache_read_input_tokens;
        }
        if let Some(answered) = iterations
            .iter()
            .rev()
            .find(|it| it.kind == "fallback_message")
            .and_then(|it| it.model.as_deref())
        {
            answered.clone_into(&mut e.model);
        }
        e.usage = total;
        e.cost_nusd = nusd;
        e.priced = priced;
    }

    /// A billed answer whose usage could not be read (or only in part) is
    /// charged the best bound available rather than nothing: input from the
    /// request's size when none was seen, output at least `seen_output` (a
    /// stream's deltas) or, when nothing could be counted, the request's
    /// output bound. The event says which figures are estimates; budgets
    /// settle such a request at its worst case anyway.
    fn bound_unread_usage(
        &mut self,
        route: &Route,
        request: &RequestModel,
        seen_output: Option<u64>,
    ) {
        let e = &self.draft.event;
        let billed = route.endpoint.is_metered()
            && e.usage_incomplete
            && self.draft.sent_upstream
            && e.status != Status::ProviderError
            && (200..300).contains(&e.http_status);
        if !billed {
            return;
        }
        let max_tokens = if route.endpoint.has_output() {
            request
                .max_tokens
                .unwrap_or(self.state.budget_default_max_tokens)
        } else {
            0
        };
        let model = if e.model.is_empty() {
            request.model.as_str()
        } else {
            e.model.as_str()
        };
        let bound = crate::budget::estimate::estimate(
            self.state.recorder.prices(),
            model,
            &request.body,
            max_tokens,
            request.choices,
        );
        let mut usage = e.usage;
        let mut estimated = Estimated::default();
        if usage.input_tokens + usage.cache_read_input_tokens + usage.cache_creation_input_tokens
            == 0
        {
            usage.input_tokens = bound.input_tokens;
            estimated.input = true;
        }
        let output = seen_output.unwrap_or(max_tokens.saturating_mul(bound.choices));
        if output > usage.output_tokens {
            usage.output_tokens = output;
            estimated.output = true;
        }
        if estimated != Estimated::default() {
            self.draft.event.estimated = estimated;
            self.apply_usage(&usage, None);
        }
    }

    /// Settles and queues the event (the caller then sends the last bytes).
    fn record(&mut self) {
        let times = UpstreamTimes {
            total: self.call.sent_at.elapsed(),
            ttfb: self.call.ttfb,
        };
        self.draft.record(Some(times));
    }

    async fn buffered(
        mut self: Box<Self>,
        route: &Route,
        request: &RequestModel,
        upstream: ResponseHeader,
    ) {
        let mut body = BytesMut::new();
        let mut failure = None;
        let cap = match self.batch_objects {
            true => BATCH_OBJECT_CAP,
            false => self.state.max_body_bytes,
        };
        loop {
            match self.next_chunk().await {
                Ok(Some(chunk)) => {
                    body.extend_from_slice(&chunk);
                    if body.len() > cap {
                        // Boxed, as the other rare branches below: they
                        // would size the common path's future.
                        return Box::pin(self.oversized(route, request, upstream, body.freeze()))
                            .await;
                    }
                }
                Ok(None) => break,
                Err(f) => {
                    failure = Some(f);
                    break;
                }
            }
        }
        let mut body = body.freeze();
        if let (Some(base), None) = (&self.results_base, &failure) {
            // Before anything keeps the answer (idempotent replays included):
            // every copy the client can get points back here. The length
            // header is set from the new body below.
            if let Some(rewritten) =
                crate::dialect::anthropic::batch::rewrite_results_urls(&body, base)
            {
                body = Bytes::from(rewritten);
            }
        }
        if let (Some(pending), None) = (self.batch.take(), &failure) {
            // Before the client sees the batch: its next retrieve finds it tracked.
            Box::pin(pending.conclude(upstream.status.as_u16(), &body)).await;
        }
        if let (Some(upload), None) = (self.upload.take(), &failure) {
            // Before the client sees the file: a create over it finds it.
            Box::pin(upload.conclude(upstream.status.as_u16(), &body)).await;
        }
        if failure.is_none() && upstream.status.is_success() && self.results_base.is_some() {
            // A tracked batch shown ended is settled now.
            self.state.batches.observe(&route.provider.name, &body);
        }
        if failure.is_none()
            && upstream.status.is_success()
            && route.dialect() == crate::dialect::Dialect::OpenAi
            && route.is_batch()
        {
            self.state
                .batches
                .observe_openai(&route.provider.name, &body);
        }
        if self.gateway_batch && failure.is_none() && upstream.status.is_success() {
            // Concluded above: the record is stored under the provider's id.
            let provider = &route.provider.name;
            if let Some(record) = Box::pin(super::gateway::batch::submit_answer(
                self.state, provider, &body,
            ))
            .await
            {
                body = record;
            }
        }
        let after_upstream = std::time::Instant::now();
        let ok = upstream.status.is_success();
        let failure_free = failure.is_none();
        match failure {
            None => {
                // count_tokens is free: nothing to meter, and nothing unknown.
                if route.endpoint.is_metered() && ok {
                    let summary = match route.endpoint {
                        Endpoint::Responses => crate::dialect::openai::responses::from_json(&body),
                        _ => usage_from_json(route.dialect(), &body),
                    };
                    match summary {
                        Some(summary) => self.apply_billed(
                            &summary.usage,
                            summary.model.as_deref(),
                            &summary.iterations,
                        ),
                        None => self.draft.event.usage_incomplete = true,
                    }
                }
                if !ok {
                    self.draft.event.status = Status::ProviderError;
                    self.draft.event.error = crate::dialect::provider_error_type(&body);
                }
            }
            Some(f) => self.fail_midway(f),
        }
        if let (Some(t), true) = (&self.translation, failure_free) {
            // Metered above in the upstream's dialect; the client, the
            // cache and the followers get their own.
            if ok {
                match translate::response(t.client, &body, t.created) {
                    Ok(translated) => body = translated,
                    Err(e) => {
                        tracing::warn!(request_id = %self.draft.event.event_id, error = %e, "routed answer could not be translated");
                        self.draft.event.status = Status::UpstreamAborted;
                        self.draft.event.error = Some(format!("untranslatable answer: {e}"));
                    }
                }
            } else {
                let id = self.draft.event.event_id.clone();
                body = translate::error(t.client, upstream.status.as_u16(), &body, &id).body;
            }
        }
        let failure_free = failure_free && self.draft.event.status != Status::UpstreamAborted;
        if self.leader.is_some() || self.write.is_some() {
            let e = &self.draft.event;
            // ClientAborted with complete usage: the call went on for followers.
            let answered = failure_free && matches!(e.status, Status::Ok | Status::ClientAborted);
            if ok && answered {
                // Shared either way; stored only with readable usage (and a
                // Responses answer only when it completed).
                let store = !e.usage_incomplete
                    && (route.endpoint != Endpoint::Responses
                        || !route.dialect().stopped_at_limit(&body));
                self.conclude_ok(Some(body.clone()), store);
            } else if !ok && self.draft.event.status == Status::ProviderError {
                if let Some(leader) = self.leader.take() {
                    leader.finish(Outcome::ErrorResponse {
                        head: Head {
                            status: upstream.status.as_u16(),
                            headers: provider_headers(&upstream),
                            sse: false,
                        },
                        body: body.clone(),
                    });
                }
            } else {
                self.conclude_failed(Bytes::new());
            }
        }
        let client_gone = self.draft.event.status == Status::ClientAborted;
        self.bound_unread_usage(route, request, None);
        self.record();
        if client_gone {
            give_up_on_client(self.session);
            self.call.session.shutdown().await;
            return;
        }
        let status = self.draft.event.status;
        if matches!(status, Status::UpstreamAborted | Status::Shutdown) {
            // A partial JSON body is useless to the client: say what happened.
            self.call.session.shutdown().await;
            let err = if status == Status::Shutdown {
                super::error::ProxyError::ShuttingDown
            } else {
                super::error::ProxyError::UpstreamProtocol {
                    provider: self.draft.event.provider.clone(),
                    detail: self.draft.event.error.clone().unwrap_or_default(),
                }
            };
            let (header, body) =
                err.response(self.draft.client_dialect, &self.draft.event.event_id);
            super::respond::send_whole(self.session, header, body).await;
            return;
        }
        let cost = (route.endpoint != Endpoint::Passthrough).then_some(self.draft.event.cost_nusd);
        let header = self.client_header(upstream, cost, Some(body.len()));
        if failure_free {
            if let Some(rec) = self.idempotent.as_mut() {
                rec.head(&header);
                rec.body(&body);
            }
            self.keep_idempotent();
        }
        let written = super::respond::send_whole(self.session, header, body).await;
        self.state
            .metrics
            .added_seconds
            .observe((self.pre_upstream + after_upstream.elapsed()).as_secs_f64());
        if !written {
            tracing::debug!(request_id = %self.draft.event.event_id, "client went away before the response was written");
        }
        self.draft.queue();
        if self.call.session.response_done() {
            self.state.upstreams.release(self.call).await;
        }
    }

    /// A non-streaming answer larger than `max_body_bytes`: stop buffering,
    /// send what arrived and pipe the rest. Its usage cannot be read, so the
    /// event says so (`usage_incomplete`) and no cost header is sent. (A
    /// batch answer past [`BATCH_OBJECT_CAP`] is piped the same way, its
    /// `results_url` as they came.)
    async fn oversized(
        mut self: Box<Self>,
        route: &Route,
        request: &RequestModel,
        upstream: ResponseHeader,
        head: Bytes,
    ) {
        // Too large to share: followers call the provider themselves.
        if let Some(leader) = self.leader.take() {
            leader.finish(Outcome::Abandoned);
        }
        self.write = None;
        if !self.batch_objects {
            tracing::warn!(request_id = %self.draft.event.event_id, limit = self.state.max_body_bytes, "non-streaming response too large to meter; piping it unmetered");
            self.draft.event.usage_incomplete = true;
            self.draft.cut(Cut::TooLargeToMeter);
        } else {
            // An unmetered answer read whole only for its batch objects.
            tracing::warn!(request_id = %self.draft.event.event_id, limit = BATCH_OBJECT_CAP, "batch answer too large to rewrite its results_url; piping it as it came");
        }
        if !upstream.status.is_success() {
            self.draft.event.status = Status::ProviderError;
        }
        let header = self.client_header(upstream, None, None);
        let mut failure = None;
        if self
            .session
            .write_response_header(Box::new(header), false)
            .await
            .is_err()
            || self
                .session
                .write_response_body(Some(head), false)
                .await
                .is_err()
        {
            failure = Some(ReadFailure::ClientGone);
        }
        if failure.is_none() {
            failure = self.pipe_rest().await;
        }
        if let Some(f) = failure {
            self.fail_midway(f);
        }
        self.bound_unread_usage(route, request, None);
        self.record();
        self.end_piped().await;
    }

    /// Copies the rest of the upstream body to the client as it comes.
    async fn pipe_rest(&mut self) -> Option<ReadFailure> {
        loop {
            match self.next_chunk().await {
                Ok(Some(chunk)) => {
                    if self
                        .session
                        .write_response_body(Some(chunk), false)
                        .await
                        .is_err()
                    {
                        return Some(ReadFailure::ClientGone);
                    }
                }
                Ok(None) => return None,
                Err(f) => return Some(f),
            }
        }
    }

    /// Ends a piped (non-SSE) body: cleanly when complete; an upstream cut
    /// is passed on as a cut (closing the connection) since a truncated JSON
    /// body cannot carry an error event.
    async fn end_piped(mut self: Box<Self>) {
        match self.draft.event.status {
            Status::ClientAborted => {
                give_up_on_client(self.session);
                self.call.session.shutdown().await;
            }
            Status::UpstreamAborted | Status::Shutdown => {
                self.call.session.shutdown().await;
                self.session.as_downstream_mut().shutdown().await;
            }
            _ => {
                let _ = self.session.write_response_body(None, true).await;
                if self.call.session.response_done() {
                    self.state.upstreams.release(self.call).await;
                }
            }
        }
    }

    /// Marks the draft for a relay that stopped before the upstream's end.
    fn fail_midway(&mut self, failure: ReadFailure) {
        let d = &mut self.draft;
        d.event.usage_incomplete = true;
        match failure {
            ReadFailure::ClientGone => d.event.status = Status::ClientAborted,
            ReadFailure::Idle => {
                d.event.status = Status::UpstreamAborted;
                d.cut(Cut::IdleTimeout);
            }
            ReadFailure::Io(detail) => {
                tracing::warn!(request_id = %d.event.event_id, provider = %d.event.provider, error = %detail, "upstream response cut");
                d.event.status = Status::UpstreamAborted;
                d.cut(Cut::UpstreamCut);
            }
            ReadFailure::Shutdown => {
                tracing::warn!(request_id = %d.event.event_id, "answer cut by the shutdown");
                d.event.status = Status::Shutdown;
                d.cut(Cut::Shutdown);
            }
            ReadFailure::Budget(message) => {
                tracing::info!(request_id = %d.event.event_id, reason = %message, "stream ended by a budget at message_start");
                d.event.status = Status::ProxyError;
                d.cut(Cut::BudgetExceeded);
            }
        }
    }

    async fn stream(
        mut self: Box<Self>,
        route: &Route,
        request: &RequestModel,
        upstream: ResponseHeader,
        sse: bool,
    ) {
        let meterable = sse && route.endpoint != Endpoint::Passthrough;
        let metered = meterable && upstream.status.is_success() && self.body.readable();
        if meterable && !self.body.readable() {
            // Billed, but in a coding the tap cannot read.
            self.draft.event.usage_incomplete = true;
        }
        // A piped non-SSE body keeps the provider's framing when it had one.
        let length = if sse {
            None
        } else {
            upstream
                .headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<usize>().ok())
        };
        let status = upstream.status;
        // What followers get with the first chunk (before the head is
        // made the client's).
        let mut leader_headers = self.leader.as_ref().map(|_| provider_headers(&upstream));
        let header = self.client_header(upstream, None, length);
        if let Some(rec) = self.idempotent.as_mut() {
            rec.head(&header);
        }
        // A first chunk already here: the head waits for it (tapped, checked)
        // and both reach the client in one write (see `ingress::held`).
        let mut first_read = if sse { self.ready_chunk() } else { None };
        if matches!(first_read, Some(Ok(Some(_)))) {
            super::ingress::head::hold_next_write(self.session);
        }
        if self
            .session
            .write_response_header(Box::new(header), false)
            .await
            .is_err()
        {
            self.draft.event.status = Status::ClientAborted;
            self.record();
            self.call.session.shutdown().await;
            return;
        }
        let mut tap = match route.endpoint {
            Endpoint::Responses => StreamTap::responses(),
            _ => StreamTap::new(route.dialect(), metered && request.strip_usage_chunk),
        };
        let mut recorded = false;
        let mut failure = None;
        let mut budget_cut: Option<String> = None;
        let mut usage_seen = false;
        // Chunks read so far (the head goes to followers with the first).
        let mut tap_fed = 0usize;
        // Output not yet written: written once no more input is ready.
        let mut gathered = Gathered::default();
        loop {
            if gathered.full() && !self.flush_client(&mut gathered).await {
                failure = Some(ReadFailure::ClientGone);
                break;
            }
            let next = if let Some(first) = first_read.take() {
                first
            } else if gathered.is_empty() {
                self.next_chunk().await
            } else {
                match self.ready_chunk() {
                    Some(next) => next,
                    None => {
                        if !self.flush_client(&mut gathered).await {
                            failure = Some(ReadFailure::ClientGone);
                            break;
                        }
                        continue;
                    }
                }
            };
            let chunk = match next {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(f) => {
                    failure = Some(f);
                    break;
                }
            };
            let raw = self.leader.is_some().then(|| chunk.clone());
            let first = tap_fed == 0;
            tap_fed += 1;
            let out = match (
                metered,
                self.assembler.as_mut(),
                self.translator.as_deref_mut(),
            ) {
                (true, asm, Some((tr, client_tap))) => {
                    let mut buf = BytesMut::new();
                    tap.feed_with(chunk, |name, data| tr.on_event(name, data, &mut buf));
                    let out = buf.freeze();
                    if let Some(asm) = asm {
                        client_tap.feed_with(out.clone(), |name, data| asm.on_event(name, data));
                    }
                    out
                }
                (false, _, _) => chunk,
                (true, None, None) => tap.feed(chunk),
                (true, Some(asm), None) => {
                    tap.feed_with(chunk, |name, data| asm.on_event(name, data))
                }
            };
            if metered && tap.saw_usage() && !usage_seen {
                // Kept at once (Anthropic's input is in `message_start`):
                // a relay dropped from here on still records it.
                usage_seen = true;
                let model = tap.model().map(str::to_string);
                self.apply_usage(&tap.usage(), model.as_deref());
            }
            if metered && tap.saw_usage() {
                // Checked once, at the first usage seen.
                let held = self
                    .draft
                    .guard
                    .as_ref()
                    .filter(|g| !g.start_checked)
                    .map(super::budget::Guard::reserved_nusd);
                if let Err(message) = self.check_stream_start(&tap, route.dialect()) {
                    // Ended at once: this chunk is not sent, the error event is.
                    budget_cut = Some(message.clone());
                    failure = Some(ReadFailure::Budget(message));
                    break;
                }
                if held.is_some()
                    && self
                        .draft
                        .guard
                        .as_ref()
                        .map(super::budget::Guard::reserved_nusd)
                        != held
                {
                    // The reservation grew to the real input: so does the
                    // worst case a crash would charge (rare: the estimate
                    // bounds input by the body's bytes). What came
                    // before goes out first, not after the commit.
                    if !self.flush_client(&mut gathered).await {
                        failure = Some(ReadFailure::ClientGone);
                        break;
                    }
                    self.draft.open(0).await;
                }
            }
            if metered && !recorded && tap.complete() {
                // The last event is in this chunk: settled and recorded first, then sent.
                self.finish_stream(&tap);
                self.record();
                recorded = true;
            }
            if let (Some(leader), Some(raw)) = (&self.leader, raw) {
                if first {
                    leader.head(Head {
                        status: status.as_u16(),
                        headers: leader_headers.take().unwrap_or_default(),
                        sse,
                    });
                }
                leader.chunk(raw);
            }
            if let Some(rec) = self.idempotent.as_mut() {
                rec.body(&out);
            }
            gathered.push(out);
            // Alone, the first chunk goes out at once, not with what else
            // is ready: the time to first token would wait on tapping the
            // rest (dataplane bench, 20 ms upstream, c=1: first byte 160 µs
            // sooner). Among other requests it is gathered like the rest:
            // the extra write cost 14% more CPU per stream at c=64, and
            // waiting in line dwarfs the tapping. A chunk holding the whole
            // stream goes out with its tail either way.
            if first
                && !recorded
                && self.state.in_flight.alone()
                && !self.flush_client(&mut gathered).await
            {
                failure = Some(ReadFailure::ClientGone);
                break;
            }
        }
        let upstream_done = failure.is_none();
        // How a translated stream ended (its translator closes the client's).
        let mut translated_end = None;
        if upstream_done && metered {
            let rest = match (self.assembler.as_mut(), self.translator.as_deref_mut()) {
                (asm, Some((tr, client_tap))) => {
                    let mut buf = BytesMut::new();
                    tap.finish_with(|name, data| tr.on_event(name, data, &mut buf));
                    translated_end = Some(tr.finish(&mut buf));
                    let out = buf.freeze();
                    if let Some(asm) = asm {
                        client_tap.feed_with(out.clone(), |name, data| asm.on_event(name, data));
                        client_tap.finish_with(|name, data| asm.on_event(name, data));
                    }
                    out
                }
                (None, None) => tap.finish(),
                (Some(asm), None) => tap.finish_with(|name, data| asm.on_event(name, data)),
            };
            if let Some(rec) = self.idempotent.as_mut() {
                rec.body(&rest);
            }
            gathered.push(rest);
        }
        // What is gathered goes out before any error event: with the tail
        // (one write fewer) once the event is recorded, else now, so that
        // the event says whether the client got it.
        if !recorded
            && !matches!(failure, Some(ReadFailure::ClientGone))
            && !self.flush_client(&mut gathered).await
        {
            failure = Some(ReadFailure::ClientGone);
        }
        // Relayed whole, to the provider's last byte.
        let relayed_all = failure.is_none();
        if !recorded {
            if metered {
                self.finish_stream(&tap);
            }
            if !status.is_success() {
                self.draft.event.status = Status::ProviderError;
            }
            if let Some(f) = failure {
                self.fail_midway(f);
            } else if metered && !tap.complete() && tap.error().is_none() {
                // The upstream closed the body cleanly but before its final event.
                self.fail_midway(ReadFailure::Io(
                    "stream ended before its final event".into(),
                ));
            }
            let deltas = (metered && tap.deltas() > 0).then(|| tap.deltas());
            self.bound_unread_usage(route, request, deltas);
            self.record();
        } else if let Some(ReadFailure::ClientGone) = failure {
            // Recorded as complete; only the last write failed. The ledger keeps the truth (the call was paid for).
            tracing::debug!(request_id = %self.draft.event.event_id, "client went away after the last event");
        }
        self.state
            .metrics
            .added_seconds
            .observe(self.pre_upstream.as_secs_f64());
        if !sse {
            if relayed_all {
                self.keep_idempotent();
            }
            // Boxed: a piped non-SSE body is rare; its end would size
            // every stream's future.
            return Box::pin(self.end_piped()).await;
        }
        let status = self.draft.event.status;
        if status == Status::ClientAborted {
            give_up_on_client(self.session);
            self.conclude_stream(metered, &tap, &[]);
            // Cancels the upstream generation.
            self.call.session.shutdown().await;
            return;
        }
        let mut tail = BytesMut::new();
        if let Some(message) = &budget_cut {
            let d = self.draft.client_dialect;
            tail.extend_from_slice(&d.error_event(d.error_type(ErrorClass::Budget), message));
        }
        // A translator that closed a truncated stream already told the client.
        let told = matches!(
            translated_end,
            Some(StreamEnd::Truncated | StreamEnd::Untranslatable)
        );
        if matches!(status, Status::UpstreamAborted | Status::Shutdown) && !told {
            let message = match self.draft.cut {
                Some(Cut::IdleTimeout) => {
                    "upstream stream stalled past the idle timeout (tollgate)"
                }
                Some(Cut::Shutdown) => "tollgate is shutting down; the stream was cut",
                _ => "upstream stream ended before its final event (tollgate)",
            };
            let d = self.draft.client_dialect;
            tail.extend_from_slice(&d.error_event(d.error_type(ErrorClass::Server), message));
        }
        // Shared before the receipt: that is this client's alone.
        self.conclude_stream(metered, &tap, &tail);
        if self.state.stream_receipt && metered {
            tail.extend_from_slice(&receipt::stream_comment(
                &self.draft.event,
                self.draft.attempts.as_deref(),
            ));
        }
        // A stream ended by a budget, an error event (overloaded…) or
        // before its last event is not kept: a retry runs again.
        let whole = !metered || (tap.complete() && tap.error().is_none());
        if relayed_all && whole && budget_cut.is_none() {
            if let Some(rec) = self.idempotent.as_mut() {
                rec.body(&tail);
            }
            self.keep_idempotent();
        }
        let last = gathered.take_with(tail);
        if !last.is_empty() {
            // The last events and the chunked terminator in one write.
            super::ingress::head::hold_next_write(self.session);
        }
        let _ = self.session.write_response_body(Some(last), true).await;
        self.draft.queue();
        if matches!(status, Status::UpstreamAborted | Status::Shutdown) || budget_cut.is_some() {
            // Stops the upstream generation.
            self.call.session.shutdown().await;
        } else if self.call.session.response_done() {
            self.state.upstreams.release(self.call).await;
        }
    }

    /// Keeps what the client got for `Idempotency-Key` retries, when the
    /// provider answered in full (its answer, or its error).
    fn keep_idempotent(&mut self) {
        let Some(rec) = self.idempotent.take() else {
            return;
        };
        if matches!(self.draft.event.status, Status::Ok | Status::ProviderError) {
            rec.keep(&self.draft.event.model);
        }
    }

    /// Once a stream's usage first shows (Anthropic `message_start` carries
    /// the real input), checks that its budgets can pay for it.
    fn check_stream_start(&mut self, tap: &StreamTap, upstream: Dialect) -> Result<(), String> {
        let Some(guard) = self.draft.guard.as_mut().filter(|g| !g.start_checked) else {
            return Ok(());
        };
        if upstream != Dialect::Anthropic {
            // OpenAI-style usage arrives only at the end: nothing to check early.
            guard.start_checked = true;
            return Ok(());
        }
        let model = tap.model().unwrap_or(&self.draft.event.model).to_string();
        guard
            .check_start(self.state, &model, &tap.usage())
            .map_err(|denied| format!("{denied} (input known at message_start)"))
    }

    /// Takes the stream's usage, model and error into the draft.
    fn finish_stream(&mut self, tap: &StreamTap) {
        let usage = tap.usage();
        let model = tap.model().map(str::to_string);
        self.apply_billed(&usage, model.as_deref(), tap.iterations());
        if let Some(err) = tap.error() {
            self.draft.event.status = Status::ProviderError;
            self.draft.event.error = Some(err.to_string());
        } else if !tap.complete() {
            self.draft.event.usage_incomplete = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gathered_chunks_leave_as_one_buffer_in_order() {
        let mut g = Gathered::default();
        assert!(g.is_empty());
        assert_eq!(g.take(), None);
        g.push(Bytes::from_static(b"event: a\n\n"));
        g.push(Bytes::new());
        assert_eq!(g.parts.len(), 1, "empty output is not kept");
        g.push(Bytes::from_static(b"event: b\n\n"));
        assert_eq!(g.take().as_deref(), Some(&b"event: a\n\nevent: b\n\n"[..]));
        assert!(g.is_empty());
        assert_eq!(g.len, 0);
        // One part goes out as it is, without a copy.
        let one = Bytes::from(vec![b'x'; 3]);
        let ptr = one.as_ptr();
        g.push(one);
        assert_eq!(g.take().map(|b| b.as_ptr()), Some(ptr));
    }

    #[test]
    fn the_tail_follows_what_was_gathered() {
        let mut g = Gathered::default();
        assert_eq!(&g.take_with(BytesMut::from(&b"tail"[..]))[..], b"tail");
        g.push(Bytes::from_static(b"data: 1\n\n"));
        g.push(Bytes::from_static(b"data: 2\n\n"));
        let all = g.take_with(BytesMut::from(&b"event: error\n\n"[..]));
        assert_eq!(&all[..], b"data: 1\n\ndata: 2\n\nevent: error\n\n");
        assert!(g.is_empty());
        assert_eq!(g.len, 0);
    }

    #[test]
    fn gathering_stops_at_its_bound() {
        let mut g = Gathered::default();
        g.push(Bytes::from(vec![0u8; Gathered::FULL - 1]));
        assert!(!g.full());
        g.push(Bytes::from_static(b"x"));
        assert!(g.full());
        assert_eq!(g.take().map(|b| b.len()), Some(Gathered::FULL));
        assert!(!g.full());
    }
}
