//! Idempotency stage (`Idempotency-Key` on a POST, Stripe's rules): runs
//! after the body is read, before the limit, cache and budget stages.
//!
//! - The first request with a key (per account) runs; the meter records
//!   what its client gets ([`Recording`]: status, headers, body; a stream
//!   as its SSE bytes while relaying them) and keeps it for
//!   `idempotency_ttl` in the sidecar's store.
//! - A retry with the same key, account and fingerprint (method, provider,
//!   normalised path and query, body) gets that answer again with
//!   `x-tollgate-idempotent-replay: true` and the original's receipts. It
//!   takes no rate-limit token and no budget reservation, never reaches the
//!   provider, and records a usage event with `route = replay`, no tokens
//!   and cost 0.
//! - A retry while the first is running waits for it (up to
//!   `idempotency_wait`, then 409), or gets 409 at once with
//!   `Idempotency-Wait: false`.
//! - The same key with another request is a 422; a malformed key a 400.
//!
//! What is kept: any answer the provider gave in full, 2xx or a final 4xx
//! (it executed, or decided not to: the same answer again). Not kept, so a
//! retry runs again: the provider's retryable answers (408, 409, 429, 5xx,
//! a stream that ends with an `error` event: see
//! [`crate::idempotency::key::keeps_status`]), tollgate's own refusals and
//! failures (400, 402, 403, 409, 429, 502, 504…, the key is released at
//! once), answers cut short (upstream cut, idle timeout, shutdown, a stream
//! ended by a budget at `message_start`, the client leaving mid-answer), answers
//! served without the provider (a cache hit or a coalesced request: a
//! retry is answered by the cache again), and answers over
//! [`MAX_RECORD_BYTES`].

use std::time::Instant;

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

use super::cache::{now_us, wait, Waited};
use super::error::ProxyError;
use super::ingress::Route;
use super::respond::send_whole;
use super::{headers, Exchange, State};
use crate::idempotency::key::{fingerprint, keeps_status, parse_key, slot_key};
use crate::idempotency::{Claim, Found, Outcome, Record, Settled};
use crate::meter::event::{RouteKind, Status};

/// The largest answer kept for retries; a larger one is relayed but not
/// kept (a retry runs again).
pub const MAX_RECORD_BYTES: usize = 16 << 20;

/// What the stage made of a request.
pub enum Begun {
    /// Go on through the stages (holding the key's claim, if it has one).
    Run(Exchange),
    /// Answered here (a replay), or its client left while it waited.
    Answered,
    /// Refused: the caller answers with the error.
    Refused(Exchange, ProxyError),
}

/// Whether the client asked not to wait (`Idempotency-Wait: false`).
fn no_wait(session: &Session) -> Result<bool, ProxyError> {
    let Some(v) = session.req_header().headers.get(headers::IDEMPOTENCY_WAIT) else {
        return Ok(false);
    };
    match v.to_str().map(str::trim) {
        Ok(v) if v.eq_ignore_ascii_case("false") => Ok(true),
        Ok(v) if v.eq_ignore_ascii_case("true") => Ok(false),
        _ => Err(ProxyError::BadHeader(format!(
            "{} must be true or false",
            headers::IDEMPOTENCY_WAIT
        ))),
    }
}

/// Whether the request asks for idempotency (a POST with the header):
/// only then does it go through [`begin`].
pub fn requested(req: &pingora::http::RequestHeader) -> bool {
    req.method == http::Method::POST && req.headers.contains_key(headers::IDEMPOTENCY_KEY)
}

/// Looks the request's `Idempotency-Key` up: claims it (the request runs
/// and its answer will be kept), replays the kept answer, waits for the
/// first request with it, or refuses. `path`: the path its fingerprint
/// covers (the route's upstream path, or a gateway path whose answer has
/// another shape).
pub async fn begin(
    state: &State,
    session: &mut Session,
    mut x: Exchange,
    account: &str,
    route: &Route,
    path: &str,
    body: &Bytes,
) -> Begun {
    let req = session.req_header();
    let Some(raw) = req
        .headers
        .get(headers::IDEMPOTENCY_KEY)
        .filter(|_| requested(req))
    else {
        return Begun::Run(x);
    };
    let key = match parse_key(raw.as_bytes()) {
        Ok(k) => k,
        Err(e) => return Begun::Refused(x, ProxyError::BadHeader(e.to_string())),
    };
    let slot = slot_key(account, key);
    let fp = fingerprint(req.method.as_str(), &route.provider.name, path, body);
    let no_wait = match no_wait(session) {
        Ok(n) => n,
        Err(e) => return Begun::Refused(x, e),
    };
    let keys = &state.idempotency;
    let deadline = tokio::time::Instant::from_std(Instant::now() + keys.wait);
    let mut waited = false;
    loop {
        let found = match keys.begin(slot.clone(), fp, now_us()) {
            Ok(f) => f,
            // Running it anyway could run it twice.
            Err(e) => return Begun::Refused(x, ProxyError::Internal(e.to_string())),
        };
        let wait_on = match found {
            Found::First(claim) => {
                keys.count(Outcome::First);
                x.idempotency = Some(claim);
                return Begun::Run(x);
            }
            Found::Stored(record) => {
                replay(state, session, x, &record).await;
                return Begun::Answered;
            }
            Found::Mismatch => {
                keys.count(Outcome::Mismatch);
                return Begun::Refused(x, ProxyError::IdempotencyMismatch);
            }
            Found::Running(w) => w,
        };
        if no_wait {
            keys.count(Outcome::Conflict);
            return Begun::Refused(x, ProxyError::IdempotencyInProgress { waited: false });
        }
        if !waited {
            keys.count(Outcome::Wait);
            waited = true;
        }
        match wait(session, deadline, wait_on.done()).await {
            Waited::Got(Settled::Stored(record)) => {
                replay(state, session, x, &record).await;
                return Begun::Answered;
            }
            // The first did not keep an answer: look again (and run).
            Waited::Got(Settled::Released) => {}
            Waited::TimedOut => {
                keys.count(Outcome::Conflict);
                return Begun::Refused(x, ProxyError::IdempotencyInProgress { waited: true });
            }
            Waited::ClientGone => {
                // Recorded as the client's leaving when dropped.
                drop(x);
                return Begun::Answered;
            }
        }
    }
}

/// Answers a retry with the kept answer.
async fn replay(state: &State, session: &mut Session, x: Exchange, record: &Record) {
    state.idempotency.count(Outcome::Replay);
    let mut draft = x.draft;
    let e = &mut draft.event;
    e.route = RouteKind::Replay;
    record.model.clone_into(&mut e.model);
    e.http_status = record.status;
    e.cost_nusd = 0;
    if !(200..300).contains(&record.status) {
        e.status = Status::ProviderError;
    }
    draft.record_detached();
    let status = http::StatusCode::from_u16(record.status).unwrap_or(http::StatusCode::BAD_GATEWAY);
    let mut header = headers::response_header(status, record.headers.len() + 2);
    for (name, value) in &record.headers {
        let _ = header.append_header(name.clone(), value.as_str());
    }
    headers::set_framing(&mut header, Some(record.body.len()));
    let _ = header.insert_header(headers::IDEMPOTENT_REPLAY, "true");
    send_whole(session, header, Bytes::copy_from_slice(&record.body)).await;
}

/// The first request's answer as its client gets it, kept when complete.
pub struct Recording {
    claim: Claim,
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Over [`MAX_RECORD_BYTES`]: not kept.
    over: bool,
}

impl Recording {
    /// Records for `claim`.
    pub fn new(claim: Claim) -> Recording {
        Recording {
            claim,
            status: 0,
            headers: Vec::new(),
            body: Vec::new(),
            over: false,
        }
    }

    /// The response head the client got: its status and headers, minus
    /// framing, hop-by-hop and cookies (receipts kept).
    pub fn head(&mut self, header: &ResponseHeader) {
        self.status = header.status.as_u16();
        self.headers = header
            .headers
            .iter()
            .filter(|(name, _)| {
                let n = name.as_str();
                !headers::HOP_BY_HOP.contains(&n) && n != "set-cookie"
            })
            .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect();
    }

    /// Body bytes the client got.
    pub fn body(&mut self, chunk: &[u8]) {
        if self.over {
            return;
        }
        if self.body.len() + chunk.len() > MAX_RECORD_BYTES {
            self.over = true;
            self.body = Vec::new();
            return;
        }
        self.body.extend_from_slice(chunk);
    }

    /// Keeps the complete answer (`model`: the one that answered).
    pub fn keep(self, model: &str) {
        if self.over || !keeps_status(self.status) {
            // Dropping the claim releases the key.
            return;
        }
        let now = now_us();
        let record = Record {
            fingerprint: self.claim.fingerprint(),
            expires_us: self.claim.expires_us(now),
            status: self.status,
            headers: self.headers,
            body: self.body,
            model: model.to_owned(),
        };
        self.claim.store(record);
    }
}

/// Sweeps expired answers out of the store once a minute.
pub struct Sweeper {
    pub keys: std::sync::Arc<crate::idempotency::Idempotency>,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for Sweeper {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = shutdown.changed() => return,
            }
            let keys = self.keys.clone();
            match tokio::task::spawn_blocking(move || keys.sweep(now_us())).await {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => tracing::debug!(removed = n, "expired idempotent answers swept"),
                Ok(Err(e)) => tracing::warn!(error = %e, "idempotency sweep failed"),
                Err(e) => tracing::warn!(error = %e, "idempotency sweep did not finish"),
            }
        }
    }
}
