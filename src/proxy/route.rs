//! Route: a request whose model is an alias (or `auto`), or that names
//! fallbacks in `x-tollgate-fallback`, is tried against the targets of its
//! plan in turn ([`crate::route`] decides which and when; this stage does
//! the I/O). Every other request skips this stage and goes to its path's
//! provider as sent.
//!
//! Per attempt: the body is made for the target (its model and output cap;
//! translated when the target speaks the other dialect), the client's
//! credentials never go to another provider than the one its path named
//! (that target needs a key tollgate holds), and the answer's head decides:
//! a 2xx is relayed (translated back when needed) and the attempts end; an
//! error status, a connect failure or a first-byte timeout is reported to
//! the router, which says whether to try again. Nothing is retried after
//! the answer's first byte reached the client.
//!
//! What is recorded: a failed attempt that reached a provider gets its own
//! usage event (an error answer costs nothing; a first-byte timeout is
//! charged its worst case, as the provider may still bill it); the answer
//! that reached the client is the request's event, naming the provider and
//! model that served it. `x-tollgate-attempts` (and the stream's closing
//! comment) lists every attempt.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

use super::error::ProxyError;
use super::forward::{self, UpstreamCall};
use super::ingress::{Endpoint, RequestModel, Route, Routes};
use super::meter::{self, Translation};
use super::respond::send_whole;
use super::{headers, receipt, Exchange, State};
use crate::budget::estimate::Estimate;
use crate::dialect::{provider_error_type, request, translate, Dialect};
use crate::identity::Identity;
use crate::meter::event::{Estimated, Status, UsageEvent};
use crate::route::{
    parse_retry_after, Attempts, Candidate, Next, Outcome, RouteRequest, Sizing, SplitMix,
    StopReason, UpstreamError, AUTO,
};

/// The most of an upstream error body read to classify it (error bodies
/// are a few hundred bytes).
const ERROR_BODY_CAP: usize = 64 << 10;

/// A request routing applies to: its attempts, and what the budget reserves.
pub struct Routed {
    attempts: Attempts,
    /// The largest worst case among the candidates.
    pub worst: Option<Estimate>,
}

/// The plan of a request that routing applies to (an alias, `auto` with a
/// default alias, or an `x-tollgate-fallback` header on a Messages or Chat
/// Completions call); `None` for every other request.
pub fn plan(
    state: &State,
    route: &Route,
    header: &pingora::http::RequestHeader,
    identity: &Identity,
    request: &RequestModel,
) -> Result<Option<Routed>, ProxyError> {
    if !matches!(
        route.endpoint,
        Endpoint::Messages | Endpoint::ChatCompletions
    ) {
        return Ok(None);
    }
    let router = &state.router;
    let routing = router.routing();
    let fallback = match header.headers.get(headers::FALLBACK) {
        Some(v) => Some(v.to_str().map_err(|_| {
            ProxyError::BadHeader(format!("{} is not visible ASCII", headers::FALLBACK))
        })?),
        None => None,
    };
    let aliased = router.is_alias(&request.model)
        || (request.model == AUTO && routing.default_alias.is_some());
    if !aliased && fallback.is_none() {
        return Ok(None);
    }
    let sizing = Sizing {
        body: &request.body,
        max_tokens: request
            .max_tokens
            .unwrap_or(state.budget_default_max_tokens),
        choices: request.choices,
    };
    let prices = state.recorder.prices();
    let plan = router.plan(
        &RouteRequest {
            model: &request.model,
            native_provider: &route.provider.name,
            account: &identity.account,
            fallback_header: fallback,
            sizing,
        },
        prices,
    )?;
    let worst = plan.worst_case(prices, &sizing);
    Ok(Some(Routed {
        attempts: plan.attempts(routing, Instant::now()),
        worst,
    }))
}

/// One attempt, ready to send.
struct Prepared {
    route: Route,
    request: RequestModel,
    header: pingora::http::RequestHeader,
    translation: Option<Translation>,
}

/// Why the last attempt failed, kept for the client's answer.
enum Failure {
    /// An error answer, read whole (`dialect`: the upstream's).
    Answer {
        head: ResponseHeader,
        body: Bytes,
        dialect: Dialect,
    },
    /// No answer.
    Transport(ProxyError),
}

/// Runs the attempts of a routed request. Answers the client (relaying the
/// answer that succeeded, or the last error answer) and records it; or
/// hands back the exchange with the error to answer it with.
pub async fn run(
    state: &State,
    session: &mut Session,
    client_route: &Route,
    request: &RequestModel,
    identity: &Identity,
    mut x: Exchange,
    routed: Routed,
) -> Option<(Exchange, ProxyError)> {
    let Routed {
        mut attempts,
        worst,
    } = routed;
    let health = state.router.health();
    let mut jitter = SplitMix::from_entropy();
    let mut log = String::new();
    let mut skipped: Vec<String> = Vec::new();
    let mut last: Option<Failure> = None;
    let mut opened = false;
    let mut next = attempts.first(health, Instant::now());
    loop {
        let step = match next {
            Next::Try(step) => step,
            Next::Stop(reason) => {
                x.draft.attempts = (!log.is_empty()).then_some(log);
                return conclude(session, x, last, reason, skipped).await;
            }
        };
        if !step.after.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(step.after) => {}
                () = state.in_flight.cut() => return Some((x, ProxyError::ShuttingDown)),
            }
        }
        let Some(candidate) = attempts.candidate(step.candidate).cloned() else {
            return Some((x, ProxyError::Internal("routing lost its candidate".into())));
        };
        let label = candidate.target.to_string();
        let prepared = match prepare(state, session, client_route, request, identity, &candidate) {
            Ok(p) => p,
            Err(reason) => {
                tracing::debug!(request_id = %x.draft.event.event_id, target = %label, %reason, "routing target skipped");
                count(state, &candidate.target.provider, "skipped");
                push(&mut log, &label, "skipped");
                skipped.push(format!("{label}: {reason}"));
                next = attempts.report(
                    health,
                    &Outcome::Untranslatable,
                    None,
                    Instant::now(),
                    &mut jitter,
                );
                continue;
            }
        };
        let target = &candidate.target;
        target.provider.clone_into(&mut x.draft.event.provider);
        target.model.clone_into(&mut x.draft.event.model);
        if !opened {
            // On record before the first byte leaves, at the largest worst
            // case among the candidates (the guard holds it when a budget does).
            opened = true;
            let worst_nusd = match &x.draft.guard {
                Some(_) => 0,
                None => worst.map_or(0, |e| e.worst_nusd),
            };
            x.draft.open(worst_nusd).await;
        }
        let pre_upstream = x.draft.started.elapsed();
        let provider = prepared.route.provider.clone();
        let sent = tokio::select! {
            biased;
            r = state.upstreams.send(&provider, prepared.header, &prepared.request.body) => r,
            () = state.in_flight.cut() => Err(ProxyError::ShuttingDown),
        };
        match sent {
            Ok(call) if call_status(&call) < 400 => {
                count(state, &target.provider, "success");
                push(&mut log, &label, &call_status(&call).to_string());
                next = attempts.report(
                    health,
                    &Outcome::Success,
                    Some(call.ttfb),
                    Instant::now(),
                    &mut jitter,
                );
                debug_assert!(matches!(next, Next::Stop(StopReason::Answered)));
                x.draft.attempts = Some(log);
                x.draft.sent_upstream = true;
                meter::relay(
                    state,
                    session,
                    &prepared.route,
                    &prepared.request,
                    call,
                    x,
                    pre_upstream,
                    prepared.translation,
                )
                .await;
                return None;
            }
            Ok(call) => {
                let status = call_status(&call);
                count(state, &target.provider, "upstream_error");
                push(&mut log, &label, &status.to_string());
                let (head, body) = read_error(state, call).await;
                let error = upstream_error(&head, &body);
                next = attempts.report(
                    health,
                    &Outcome::Upstream(error),
                    None,
                    Instant::now(),
                    &mut jitter,
                );
                let failure = Failure::Answer {
                    head,
                    body,
                    dialect: provider.dialect,
                };
                if matches!(next, Next::Try(_)) {
                    record_attempt(state, &x, &candidate, &failure, 0);
                }
                last = Some(failure);
            }
            Err(ProxyError::ShuttingDown) => return Some((x, ProxyError::ShuttingDown)),
            Err(e) => {
                let connect = matches!(
                    e,
                    ProxyError::UpstreamUnreachable { sent: false, .. }
                        | ProxyError::UpstreamTimeout {
                            phase: "the connection",
                            ..
                        }
                );
                let (outcome, name) = if connect {
                    (Outcome::ConnectFailure, "connect_failure")
                } else {
                    (Outcome::FirstByteTimeout, "first_byte_timeout")
                };
                tracing::debug!(request_id = %x.draft.event.event_id, target = %label, error = %e, "routing attempt failed");
                count(state, &target.provider, name);
                push(&mut log, &label, name);
                next = attempts.report(health, &outcome, None, Instant::now(), &mut jitter);
                let failure = Failure::Transport(e);
                if matches!(next, Next::Try(_)) && !connect {
                    // Sent and never answered: the provider may bill it.
                    let worst = candidate
                        .estimate(
                            state.recorder.prices(),
                            &Sizing {
                                body: &request.body,
                                max_tokens: request
                                    .max_tokens
                                    .unwrap_or(state.budget_default_max_tokens),
                                choices: request.choices,
                            },
                        )
                        .worst_nusd;
                    if let Some(guard) = x.draft.guard.as_mut() {
                        guard.also_spent = guard.also_spent.saturating_add(worst);
                    }
                    record_attempt(state, &x, &candidate, &failure, worst);
                }
                last = Some(failure);
            }
        }
    }
}

/// The attempts ended without an answer to relay: the client gets the last
/// error answer (in its dialect) or the last failure.
async fn conclude(
    session: &mut Session,
    mut x: Exchange,
    last: Option<Failure>,
    reason: StopReason,
    skipped: Vec<String>,
) -> Option<(Exchange, ProxyError)> {
    match (reason, last) {
        (StopReason::AllOpen { retry_in }, _) => Some((x, ProxyError::AllTargetsOpen { retry_in })),
        (
            _,
            Some(Failure::Answer {
                head,
                body,
                dialect,
            }),
        ) => {
            answer_error(session, x, head, body, dialect).await;
            None
        }
        (_, Some(Failure::Transport(e))) => {
            // The last attempt reached nobody (or nobody answered): as a
            // request with one provider would have ended.
            x.draft.sent_upstream = !matches!(
                e,
                ProxyError::UpstreamUnreachable { sent: false, .. }
                    | ProxyError::UpstreamTimeout {
                        phase: "the connection",
                        ..
                    }
            );
            Some((x, e))
        }
        (_, None) => Some((x, ProxyError::NoTarget(skipped.join("; ")))),
    }
}

/// Sends the last attempt's error answer to the client, translated into its
/// dialect when the target spoke the other, and records it.
async fn answer_error(
    session: &mut Session,
    x: Exchange,
    head: ResponseHeader,
    body: Bytes,
    upstream: Dialect,
) {
    let Exchange {
        mut draft, leader, ..
    } = x;
    // Followers route for themselves (this answer is this request's last).
    drop(leader);
    let status = head.status.as_u16();
    draft.event.status = Status::ProviderError;
    draft.event.http_status = status;
    draft.event.error = provider_error_type(&body);
    draft.event.upstream_request_id = head
        .headers
        .get(upstream.request_id_header())
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    draft.sent_upstream = true;
    let client = draft.client_dialect;
    let body = if client == upstream {
        body
    } else {
        let id = draft
            .event
            .upstream_request_id
            .clone()
            .unwrap_or_else(|| draft.event.event_id.clone());
        translate::error(client, status, &body, &id).body
    };
    let mut header = headers::response_header(head.status, head.headers.len() + 6);
    for (name, value) in head.headers.iter() {
        let n = name.as_str();
        if headers::HOP_BY_HOP.contains(&n)
            || n.starts_with(headers::TOLLGATE_PREFIX)
            || n == http::header::CONTENT_ENCODING.as_str()
        {
            continue;
        }
        let _ = header.append_header(name.clone(), value.clone());
    }
    headers::set_framing(&mut header, Some(body.len()));
    draft.record(None);
    receipt::add_headers(&mut header, &draft.event, Some(0));
    receipt::add_attempts(&mut header, draft.attempts.as_deref());
    send_whole(session, header, body).await;
}

/// Makes the attempt at `candidate`: its route, body and upstream head; or
/// why it cannot be made (nothing is sent).
fn prepare(
    state: &State,
    session: &Session,
    client_route: &Route,
    request: &RequestModel,
    identity: &Identity,
    candidate: &Candidate,
) -> Result<Prepared, String> {
    let target = &candidate.target;
    let provider = state
        .routes
        .provider(&target.provider)
        .ok_or_else(|| format!("no provider {:?} is configured", target.provider))?;
    let native = provider.name == client_route.provider.name;
    let byok = state.fleet.provider_key(&identity.account, &provider.name);
    let key = byok.as_deref().or(provider.api_key.as_ref());
    if !native && key.is_none() {
        // The client's credential is for the provider its path named only.
        return Err(format!(
            "tollgate holds no key for provider {} (set providers.{}.api_key or a BYOK key)",
            provider.name, provider.name
        ));
    }
    let client = client_route.dialect();
    let same = provider.dialect == client;
    let client_header = session.req_header();
    let route = Routes::target_route(
        provider,
        if same {
            client_header.uri.query()
        } else {
            None
        },
    );
    let requested = request
        .max_tokens
        .unwrap_or(state.budget_default_max_tokens);
    let bound = candidate.output_bound(requested);
    // The alias's cap, when it lowers what the client asked for.
    let cap = candidate
        .max_tokens
        .filter(|&cap| request.max_tokens.is_some_and(|m| cap < m));
    let field = request
        .max_tokens_field
        .filter(|_| same)
        .unwrap_or_else(|| provider.dialect.default_bound_field(&provider.name));
    let (body, translation) = if same {
        let body = request::retarget(
            &request.body,
            &target.model,
            cap.map(|n| (n, field, request.both_bounds)),
        )
        .map_err(|e| e.to_string())?;
        (body, None)
    } else {
        let t = translate::Target {
            model: &target.model,
            provider: &provider.name,
            default_max_tokens: bound,
        };
        let translated =
            translate::request(client, &request.body, &t).map_err(|e| e.to_string())?;
        let body = match cap {
            Some(n) => request::set_output_bound(&translated.body, n, field, false)
                .map_err(|e| e.to_string())?,
            None => translated.body,
        };
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        (
            body,
            Some(Translation {
                client,
                // Not when tollgate itself asked for the usage chunk.
                include_usage: translated.include_usage && !request.strip_usage_chunk,
                created,
            }),
        )
    };
    let header = forward::build_request(
        &route,
        client_header,
        body.len(),
        state.fleet.keyring().enabled(),
        key,
        (!native).then_some(client),
    )
    .map_err(|e| e.to_string())?;
    let request = RequestModel {
        body,
        model: target.model.clone(),
        stream: request.stream,
        max_tokens: Some(cap.unwrap_or(bound)).filter(|_| request.max_tokens.is_some() || !same),
        strip_usage_chunk: same && request.strip_usage_chunk,
        max_tokens_field: Some(field),
        stateless: request.stateless,
        both_bounds: same && request.both_bounds,
        choices: request.choices,
    };
    Ok(Prepared {
        route,
        request,
        header,
        translation,
    })
}

fn call_status(call: &UpstreamCall) -> u16 {
    call.session
        .response_header()
        .map_or(502, |h| h.status.as_u16())
}

/// Reads an error answer whole (bounded, within the idle timeout), then
/// closes its connection (error answers are few; no reuse needed).
async fn read_error(state: &State, mut call: UpstreamCall) -> (ResponseHeader, Bytes) {
    let head = call
        .session
        .response_header()
        .cloned()
        .unwrap_or_else(|| headers::response_header(http::StatusCode::BAD_GATEWAY, 0));
    call.session
        .set_read_timeout(Some(state.upstreams.idle_timeout()));
    let mut body = BytesMut::new();
    while body.len() < ERROR_BODY_CAP {
        match call.session.read_response_body().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    call.session.shutdown().await;
    (head, body.freeze())
}

/// What an error answer says about retrying.
fn upstream_error(head: &ResponseHeader, body: &[u8]) -> UpstreamError {
    let header = |name: &str| head.headers.get(name).and_then(|v| v.to_str().ok());
    UpstreamError {
        status: head.status.as_u16(),
        error_type: provider_error_type(body),
        error_code: error_code(body),
        retry_after: parse_retry_after(
            header("retry-after"),
            header("retry-after-ms"),
            SystemTime::now(),
        ),
        should_retry: header(headers::X_SHOULD_RETRY).and_then(|v| match v {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        }),
    }
}

/// `error.code` of an error body (OpenAI's finer reason), if any.
fn error_code(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.get("error")?.get("code")?.as_str().map(str::to_string)
}

/// Records a failed attempt that reached a provider, as its own event.
/// `worst_nusd`: charged when the provider may have billed it unanswered.
fn record_attempt(
    state: &State,
    x: &Exchange,
    candidate: &Candidate,
    failure: &Failure,
    worst_nusd: u64,
) {
    let mut event: UsageEvent = x.draft.event.clone();
    event.event_id = uuid::Uuid::now_v7().to_string();
    candidate.target.provider.clone_into(&mut event.provider);
    candidate.target.model.clone_into(&mut event.model);
    event.latency_us = x.draft.started.elapsed().as_micros() as u64;
    event.idempotency_key = None;
    match failure {
        Failure::Answer {
            head,
            body,
            dialect,
        } => {
            event.status = Status::ProviderError;
            event.http_status = head.status.as_u16();
            event.error = provider_error_type(body);
            event.upstream_request_id = head
                .headers
                .get(dialect.request_id_header())
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
        }
        Failure::Transport(e) => {
            event.status = Status::ProxyError;
            event.http_status = e.status();
            event.error = Some(e.kind().to_string());
            event.usage_incomplete = true;
            event.cost_nusd = worst_nusd;
            event.estimated = Estimated {
                input: true,
                output: true,
            };
        }
    }
    state.recorder.record_detached(event);
}

fn count(state: &State, provider: &str, outcome: &str) {
    state
        .metrics
        .route_attempts
        .with_label_values(&[provider, outcome])
        .inc();
}

/// Appends `target=outcome` to the attempts receipt.
fn push(log: &mut String, target: &str, outcome: &str) {
    if !log.is_empty() {
        log.push_str(", ");
    }
    log.push_str(target);
    log.push('=');
    log.push_str(outcome);
}
