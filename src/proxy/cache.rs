//! Cache stage: decides whether a request may use the exact cache, answers
//! hits from the store, and coalesces identical requests in flight (a
//! follower is answered from its leader's response: live chunks for a
//! stream, the whole message otherwise).
//!
//! Hits and followers cost nothing: they record `cost_nusd = 0` and
//! `saved_nusd` = what the call would have cost, and skip the budget stage.
//! Their usage events are queued for the next group commit rather than
//! waited on: they carry no spend, and waiting would double a hit's latency.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;

use super::error::ProxyError;
use super::exchange::Cut;
use super::ingress::{Endpoint, RequestModel, Route};
use super::respond::{give_up_on_client, send_whole, send_with_tail};
use super::{headers, receipt, Draft, Exchange, State};
use crate::cache::flight::{Follower, Head, Outcome, Role};
use crate::cache::CacheWrite;
use crate::cache::{Entry, EntryMeta, Key, Mode};
use crate::dialect::StreamTap;
use crate::dialect::{Dialect, ErrorClass};
use crate::identity::Identity;
use crate::meter::event::{CacheOutcome, Status};

/// Rounds of re-joining after a leader gave up without an answer.
const MAX_JOIN_ROUNDS: usize = 3;

/// What the cache may do for one request.
#[derive(Clone, Debug)]
pub struct Plan {
    /// `miss` when the cache is read, `refresh`, or `bypass`.
    pub outcome: CacheOutcome,
    pub key: Option<Key>,
    pub read: bool,
    pub ttl: Duration,
}

impl Plan {
    fn bypass() -> Plan {
        Plan {
            outcome: CacheOutcome::Bypass,
            key: None,
            read: false,
            ttl: Duration::ZERO,
        }
    }

    /// Where a complete answer is to be written, if anywhere.
    pub fn write(&self) -> Option<CacheWrite> {
        self.key.map(|key| CacheWrite {
            key,
            ttl: self.ttl,
            unless_cut: false,
        })
    }
}

/// The request's opt-outs: `cache-control: no-store` (neither read nor
/// write), `cache-control: no-cache` or `x-tollgate-cache: refresh` (write
/// only), `x-tollgate-cache: bypass` (neither).
fn opt_out(req: &RequestHeader) -> Result<Option<CacheOutcome>, ProxyError> {
    let mut outcome = None;
    for value in req.headers.get_all(http::header::CACHE_CONTROL) {
        let Ok(v) = value.to_str() else { continue };
        for directive in v.split(',') {
            let d = directive.trim();
            if d.eq_ignore_ascii_case("no-store") {
                return Ok(Some(CacheOutcome::Bypass));
            }
            if d.eq_ignore_ascii_case("no-cache") {
                outcome = Some(CacheOutcome::Refresh);
            }
        }
    }
    if let Some(value) = req.headers.get(headers::CACHE_REQUEST) {
        match value.to_str().map(str::trim) {
            Ok(v) if v.eq_ignore_ascii_case("bypass") => return Ok(Some(CacheOutcome::Bypass)),
            Ok(v) if v.eq_ignore_ascii_case("refresh") => outcome = Some(CacheOutcome::Refresh),
            _ => {
                return Err(ProxyError::BadHeader(format!(
                    "{} must be bypass or refresh",
                    headers::CACHE_REQUEST
                )))
            }
        }
    }
    Ok(outcome)
}

/// Decides what the cache does for this request.
pub fn plan(
    state: &State,
    identity: &Identity,
    route: &Route,
    req: &RequestHeader,
    request: &RequestModel,
) -> Result<Plan, ProxyError> {
    // A Responses answer may depend on state the body does not hold: only
    // `store: false` without `previous_response_id` / `conversation` is cached.
    if !route.endpoint.is_metered() || (route.endpoint == Endpoint::Responses && !request.stateless)
    {
        return Ok(Plan::bypass());
    }
    let opt = opt_out(req)?;
    let config = &state.cache.config;
    let (mode, ttl) = config.policy(&identity.account, &identity.workload, &request.model);
    if mode == Mode::Off
        || opt == Some(CacheOutcome::Bypass)
        || state.fleet.cache_off(&identity.account)
    {
        return Ok(Plan::bypass());
    }
    let betas = anthropic_betas(req);
    let credential = passed_through_credential(state, &identity.account, route, req);
    let parts = crate::cache::key::KeyParts {
        account: &identity.account,
        provider: &route.provider.name,
        path: &route.upstream_path,
        anthropic_version: req
            .headers
            .get(crate::dialect::anthropic::VERSION)
            .map(|v| v.as_bytes()),
        anthropic_beta: betas.as_deref().map(str::as_bytes),
        credential: credential.as_ref().map(|h| &h[..]),
    };
    let Some(key) = crate::cache::key::key(&parts, &request.body) else {
        return Ok(Plan::bypass());
    };
    let refresh = opt == Some(CacheOutcome::Refresh);
    Ok(Plan {
        outcome: if refresh {
            CacheOutcome::Refresh
        } else {
            CacheOutcome::Miss
        },
        key: Some(key),
        read: !refresh,
        ttl,
    })
}

/// Every `anthropic-beta` flag the request sends (in any number of header
/// lines, comma-separated), sorted: one spelling per set.
fn anthropic_betas(req: &RequestHeader) -> Option<String> {
    let mut flags: Vec<&str> = req
        .headers
        .get_all(crate::dialect::anthropic::BETA)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .collect();
    if flags.is_empty() {
        return None;
    }
    flags.sort_unstable();
    flags.dedup();
    Some(flags.join(","))
}

/// When tollgate injects no key (none configured, no gateway keys), the
/// client's own provider credential goes upstream and decides what the
/// provider answers (or refuses): then answers are shared only between
/// callers presenting the same credential. Only its blake3 hash enters the
/// key; the credential itself is never stored.
fn passed_through_credential(
    state: &State,
    account: &str,
    route: &Route,
    req: &RequestHeader,
) -> Option<[u8; 32]> {
    let injected = route.provider.api_key.is_some()
        || state
            .fleet
            .provider_key(account, &route.provider.name)
            .is_some();
    if injected || state.fleet.keyring().enabled() {
        return None;
    }
    let mut h = blake3::Hasher::new();
    for name in [
        crate::dialect::anthropic::X_API_KEY,
        http::header::AUTHORIZATION.as_str(),
    ] {
        h.update(name.as_bytes());
        for v in req.headers.get_all(name) {
            h.update(&(v.len() as u64).to_le_bytes());
            h.update(v.as_bytes());
        }
    }
    Some(*h.finalize().as_bytes())
}

/// The entry for `key`, if fresh; a store failure is counted and read as a miss.
pub fn lookup(state: &State, key: &Key, ttl: Duration) -> Option<Entry> {
    match state.cache.store.get(key, ttl) {
        Ok(e) => e,
        Err(e) => {
            state.cache.metrics.errors.inc();
            tracing::warn!(error = %e, "cache read failed; treating as a miss");
            None
        }
    }
}

/// Hands a complete answer to the cache writer (off the request path).
/// Its `release` keeps the finished flight findable until it is stored.
pub fn store(state: &State, job: crate::cache::writer::Job) {
    if job.message.len() as u64 > state.cache.config.max_entry_bytes {
        return;
    }
    state.cache.writer.submit(job);
}

/// Now, µs since the epoch.
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Fills the draft for an answer that cost nothing (`hit`, `coalesced`).
fn zero_cost(state: &State, draft: &mut Draft, meta: &EntryMeta, outcome: CacheOutcome) {
    let e = &mut draft.event;
    e.cache = outcome;
    meta.model.clone_into(&mut e.model);
    let u = &meta.usage;
    e.usage = *u;
    e.cost_nusd = 0;
    let would_have = state.recorder.price(&meta.model, u);
    e.saved_nusd = would_have.nusd;
    e.priced = would_have.priced;
    e.upstream_request_id.clone_from(&meta.upstream_request_id);
}

/// Counts the request's cache result (and what it saved).
pub fn count(state: &State, draft: &Draft) {
    let m = &state.cache.metrics;
    m.count(draft.event.cache);
    if draft.event.saved_nusd > 0 {
        m.saved_usd.inc_by(draft.event.saved_nusd as f64 / 1e9);
    }
}

/// Whether the client of a stream asked for OpenAI's usage chunk.
fn wants_usage_chunk(request: &RequestModel) -> bool {
    !request.strip_usage_chunk
}

/// The body for a complete message: JSON as is, or a re-synthesised stream
/// when the request streams. `None` when the message cannot be replayed (a
/// corrupt entry): the caller goes on as a miss.
fn render(
    state: &State,
    dialect: Dialect,
    request: &RequestModel,
    message: &Bytes,
    stream: &Bytes,
) -> Option<Bytes> {
    if !request.stream {
        return Some(message.clone());
    }
    // The stored stream form: Anthropic's, or OpenAI's without usage chunk.
    if !stream.is_empty() && (dialect == Dialect::Anthropic || !wants_usage_chunk(request)) {
        return Some(stream.clone());
    }
    crate::dialect::replay(dialect, message, wants_usage_chunk(request))
        .inspect_err(|e| {
            state.cache.metrics.errors.inc();
            tracing::warn!(error = %e, "cached message cannot be replayed as a stream");
        })
        .ok()
}

/// The response around a rendered body: framing, the provider's request id,
/// receipts (the stream's as its closing comment).
fn message_response(
    state: &State,
    draft: &Draft,
    dialect: Dialect,
    request: &RequestModel,
    body: &Bytes,
) -> (ResponseHeader, Option<Bytes>) {
    // The stream's receipt follows it as a write of its own: a stored
    // stream is sent as is, never copied to append it.
    let receipt = (request.stream && state.stream_receipt)
        .then(|| receipt::stream_comment(&draft.event, None));
    let len = body.len() + receipt.as_ref().map_or(0, Bytes::len);
    let mut header = headers::response_header(http::StatusCode::OK, 10);
    let content_type = if request.stream {
        "text/event-stream"
    } else {
        "application/json"
    };
    let _ = header.insert_header(http::header::CONTENT_TYPE, content_type);
    let _ = header.insert_header(http::header::CONTENT_LENGTH, len.to_string());
    if request.stream {
        let _ = header.insert_header(http::header::CACHE_CONTROL, "no-cache");
    }
    if let Some(id) = &draft.event.upstream_request_id {
        if let Ok(v) = http::HeaderValue::from_str(id) {
            let _ = header.insert_header(dialect.request_id_header(), v);
        }
    }
    let cost = (!request.stream).then_some(0);
    receipt::add_headers(&mut header, &draft.event, cost);
    (header, receipt)
}

/// A complete answer that cost this request nothing.
struct Answer<'a> {
    meta: &'a EntryMeta,
    message: &'a Bytes,
    /// The pre-rendered stream form, if stored (else empty).
    stream: &'a Bytes,
    outcome: CacheOutcome,
}

/// The request being answered.
#[derive(Clone, Copy)]
pub struct Req<'a> {
    pub state: &'a State,
    pub route: &'a Route,
    pub request: &'a RequestModel,
}

/// Answers a request from a complete message (a hit, or a follower whose
/// leader finished). Hands the exchange back, having sent and changed
/// nothing, when the message cannot be served.
async fn serve_message(
    r: Req<'_>,
    session: &mut Session,
    x: Exchange,
    answer: Answer<'_>,
) -> Result<(), Exchange> {
    let Req {
        state,
        route,
        request,
    } = r;
    let Some(body) = render(
        state,
        route.dialect(),
        request,
        answer.message,
        answer.stream,
    ) else {
        return Err(x);
    };
    let mut draft = x.draft;
    zero_cost(state, &mut draft, answer.meta, answer.outcome);
    draft.event.http_status = 200;
    let (header, receipt) = message_response(state, &draft, route.dialect(), request, &body);
    count(state, &draft);
    draft.record_detached();
    send_with_tail(session, header, body, receipt).await;
    Ok(())
}

/// Serves a hit; hands the exchange back when the entry cannot be served
/// (go on as a miss).
pub async fn serve_hit(
    r: Req<'_>,
    session: &mut Session,
    x: Exchange,
    entry: &Entry,
) -> Result<(), Exchange> {
    serve_message(
        r,
        session,
        x,
        Answer {
            meta: &entry.meta,
            message: &entry.message,
            stream: &entry.stream,
            outcome: CacheOutcome::Hit,
        },
    )
    .await
}

/// Joins the flight for `key`: follows it to an answer (`None`: the
/// request was answered, from another's response or the cache in a race),
/// or hands the exchange back to call the provider itself, as the flight's
/// leader (`leader` set) or alone.
pub async fn coalesce(
    r: Req<'_>,
    session: &mut Session,
    mut x: Exchange,
    key: Key,
    ttl: Duration,
) -> Option<Exchange> {
    let state = r.state;
    let deadline = Instant::now() + state.cache.config.coalesce_wait;
    for _ in 0..MAX_JOIN_ROUNDS {
        let replay = state
            .cache
            .config
            .max_entry_bytes
            .min(crate::cache::flight::REPLAY_BYTES);
        match state.cache.flights.join(key, replay) {
            None => return Some(x),
            Some(Role::Leader(leader)) => {
                // A flight may have finished (and stored its answer) since the lookup.
                if let Some(entry) = lookup(state, &key, ttl) {
                    drop(leader);
                    return serve_hit(r, session, x, &entry).await.err();
                }
                x.leader = Some(leader);
                return Some(x);
            }
            Some(Role::Done(Outcome::Done {
                message: Some(message),
                meta,
            })) => {
                // Finished, its answer on the way into the store: a hit.
                let answer = Answer {
                    meta: &meta,
                    message: &message,
                    stream: &Bytes::new(),
                    outcome: CacheOutcome::Hit,
                };
                return serve_message(r, session, x, answer).await.err();
            }
            Some(Role::Done(_)) => return Some(x),
            Some(Role::Follower(follower)) => {
                match follow(r, session, x, follower, deadline).await {
                    Followed::Served => return None,
                    Followed::Rejoin(back) => x = back,
                    Followed::Alone(back) => return Some(back),
                }
            }
        }
    }
    Some(x)
}

/// What following a flight made of a request.
enum Followed {
    /// Answered (or its client left while it waited): recorded.
    Served,
    /// The leader gave up without an answer: try again (maybe as leader).
    Rejoin(Exchange),
    /// Call the provider alone.
    Alone(Exchange),
}

/// What a follower's (or an idempotent retry's) wait ended with.
pub(super) enum Waited<T> {
    Got(T),
    /// `cache.coalesce_wait` ran out.
    TimedOut,
    /// The follower's own client went away.
    ClientGone,
}

/// Waits for `fut` until `deadline`, watching the client: a follower whose
/// client has gone stops waiting (and stops keeping the flight alive).
/// Idempotent retries wait on the first request the same way.
pub(super) async fn wait<T>(
    session: &mut Session,
    deadline: tokio::time::Instant,
    fut: impl std::future::Future<Output = T>,
) -> Waited<T> {
    tokio::pin!(fut);
    let got = tokio::select! {
        got = tokio::time::timeout_at(deadline, &mut fut) => got,
        read = session.read_body_or_idle(true) => {
            if read.is_err() {
                return Waited::ClientGone;
            }
            // Stray bytes from the client: keep waiting, stop watching.
            tokio::time::timeout_at(deadline, fut).await
        }
    };
    match got {
        Ok(v) => Waited::Got(v),
        Err(_) => Waited::TimedOut,
    }
}

async fn follow(
    r: Req<'_>,
    session: &mut Session,
    x: Exchange,
    mut follower: Follower,
    deadline: Instant,
) -> Followed {
    let request = r.request;
    let deadline = tokio::time::Instant::from_std(deadline);
    if request.stream {
        let head = match wait(session, deadline, follower.head()).await {
            Waited::TimedOut => return Followed::Alone(x),
            Waited::ClientGone => return client_left(r.state, x),
            Waited::Got(Ok(head)) => head,
            Waited::Got(Err(outcome)) => return finish_with(r, session, x, outcome).await,
        };
        if head.sse && (200..300).contains(&head.status) {
            follow_stream(r, session, x, follower, head).await;
            return Followed::Served;
        }
    }
    let outcome = match wait(session, deadline, follower.outcome()).await {
        Waited::TimedOut => return Followed::Alone(x),
        Waited::ClientGone => return client_left(r.state, x),
        Waited::Got(o) => o,
    };
    finish_with(r, session, x, outcome).await
}

/// Records a follower whose client left while it waited.
fn client_left(state: &State, x: Exchange) -> Followed {
    let mut draft = x.draft;
    draft.event.cache = CacheOutcome::Coalesced;
    draft.event.status = Status::ClientAborted;
    count(state, &draft);
    draft.record_detached();
    Followed::Served
}

/// Answers a follower from its leader's outcome.
async fn finish_with(r: Req<'_>, session: &mut Session, x: Exchange, outcome: Outcome) -> Followed {
    let Req { state, route, .. } = r;
    match outcome {
        Outcome::Abandoned => Followed::Rejoin(x),
        Outcome::Done { message: None, .. } => Followed::Alone(x),
        Outcome::Done {
            message: Some(message),
            meta,
        } => {
            let answer = Answer {
                meta: &meta,
                message: &message,
                stream: &Bytes::new(),
                outcome: CacheOutcome::Coalesced,
            };
            match serve_message(r, session, x, answer).await {
                Ok(()) => Followed::Served,
                Err(x) => Followed::Alone(x),
            }
        }
        Outcome::ErrorResponse { head, body } => {
            let mut draft = x.draft;
            draft.event.cache = CacheOutcome::Coalesced;
            draft.event.status = Status::ProviderError;
            draft.event.http_status = head.status;
            draft.event.error = crate::dialect::provider_error_type(&body);
            let mut header = client_header(&head, Some(body.len()));
            receipt::add_headers(&mut header, &draft.event, Some(0));
            count(state, &draft);
            draft.record_detached();
            send_whole(session, header, body).await;
            Followed::Served
        }
        Outcome::Failed {
            status,
            kind,
            message,
            ..
        } => {
            let mut draft = x.draft;
            draft.event.cache = CacheOutcome::Coalesced;
            let err = ProxyError::Shared {
                status,
                kind,
                message,
            };
            draft.event.status = Status::ProxyError;
            draft.event.error = Some(err.kind().to_string());
            draft.event.http_status = status;
            count(state, &draft);
            draft.record_detached();
            let (header, body) = err.response(route.dialect(), &draft.event.event_id);
            send_whole(session, header, body).await;
            Followed::Served
        }
    }
}

/// The leader's response head for a follower, with its own receipts.
fn client_header(head: &Head, len: Option<usize>) -> ResponseHeader {
    let status = http::StatusCode::from_u16(head.status).unwrap_or(http::StatusCode::BAD_GATEWAY);
    let mut header = headers::response_header(status, head.headers.len() + 6);
    for (name, value) in &head.headers {
        let _ = header.append_header(name.clone(), value.clone());
    }
    headers::set_framing(&mut header, len);
    header
}

/// Relays the leader's stream to a stream follower, live, through the
/// follower's own tap (which cuts the usage chunk if this client did not
/// ask for it).
async fn follow_stream(
    r: Req<'_>,
    session: &mut Session,
    x: Exchange,
    mut follower: Follower,
    head: Head,
) {
    let Req {
        state,
        route,
        request,
    } = r;
    // `x` stays in scope (it keeps the request counted in flight).
    let mut draft = x.draft;
    draft.event.cache = CacheOutcome::Coalesced;
    draft.event.http_status = head.status;
    let mut header = client_header(&head, None);
    receipt::add_headers(&mut header, &draft.event, None);
    if session
        .write_response_header(Box::new(header), false)
        .await
        .is_err()
    {
        draft.event.status = Status::ClientAborted;
        count(state, &draft);
        draft.record_detached();
        return;
    }
    let mut tap = StreamTap::new(route.dialect(), request.strip_usage_chunk);
    let mut client_open = true;
    // The leader's own reads are bounded by the idle timeout; a follower
    // waits no longer than that (plus a margin) for each chunk.
    let stall = state.upstreams.idle_timeout() + Duration::from_secs(5);
    let outcome = loop {
        let next_chunk = async {
            tokio::time::timeout(stall, follower.next())
                .await
                .unwrap_or(Err(Outcome::Failed {
                    status: 504,
                    kind: "upstream_timeout",
                    message: "the coalesced stream stalled (tollgate)".into(),
                    tail: Bytes::new(),
                }))
        };
        let next = if client_open {
            tokio::select! {
                n = next_chunk => n,
                r = session.read_body_or_idle(true) => match r {
                    Err(_) => {
                        // The leader and other followers go on without us.
                        give_up_on_client(session);
                        draft.event.status = Status::ClientAborted;
                        draft.event.usage_incomplete = true;
                        count(state, &draft);
                        draft.record_detached();
                        return;
                    }
                    Ok(_) => {
                        client_open = false;
                        continue;
                    }
                },
            }
        } else {
            next_chunk.await
        };
        match next {
            Ok(chunk) => {
                let out = tap.feed(chunk);
                if !out.is_empty() && session.write_response_body(Some(out), false).await.is_err() {
                    give_up_on_client(session);
                    draft.event.status = Status::ClientAborted;
                    draft.event.usage_incomplete = true;
                    count(state, &draft);
                    draft.record_detached();
                    return;
                }
            }
            Err(outcome) => break outcome,
        }
    };
    let mut tail = BytesMut::new();
    tail.extend_from_slice(&tap.finish());
    match outcome {
        Outcome::Done { meta, .. } => {
            zero_cost(state, &mut draft, &meta, CacheOutcome::Coalesced);
        }
        Outcome::Failed {
            kind,
            message,
            tail: leader_tail,
            ..
        } => {
            draft.event.status = Status::UpstreamAborted;
            draft.event.error = Some(kind.to_string());
            draft.event.usage_incomplete = true;
            if leader_tail.is_empty() && tap.error().is_none() {
                // Never end a stream silently: say why it stops here.
                let d = route.dialect();
                tail.extend_from_slice(&d.error_event(d.error_type(ErrorClass::Server), &message));
            } else {
                tail.extend_from_slice(&leader_tail);
            }
        }
        Outcome::ErrorResponse { .. } | Outcome::Abandoned => {
            draft.event.status = Status::UpstreamAborted;
            draft.cut(Cut::UpstreamCut);
            draft.event.usage_incomplete = true;
            let d = route.dialect();
            tail.extend_from_slice(&d.error_event(
                d.error_type(ErrorClass::Server),
                "the coalesced stream ended before its final event (tollgate)",
            ));
        }
    }
    if let Some(err) = tap.error() {
        draft.event.status = Status::ProviderError;
        draft.event.error = Some(err.to_string());
    }
    if state.stream_receipt {
        tail.extend_from_slice(&receipt::stream_comment(&draft.event, None));
    }
    count(state, &draft);
    draft.record_detached();
    let _ = session.write_response_body(Some(tail.freeze()), true).await;
}
