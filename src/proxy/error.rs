//! tollgate's own errors, and the one place that maps each to a response in
//! the provider's own error shape (so SDKs raise their usual exception).
//! Every such response carries `x-tollgate-error: <kind>`.

use bytes::Bytes;
use pingora::http::ResponseHeader;

use super::headers;
use crate::dialect::{Dialect, ErrorClass};

/// Everything that makes tollgate answer a request itself.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("request body is not valid JSON: {0}")]
    BadJson(String),
    #[error("bad identity header: {0}")]
    BadIdentity(String),
    /// The control endpoint refused or failed a read made on the caller's
    /// behalf (the gateway surface's usage); `status` is what the client gets.
    #[error("the control endpoint answered: {message}")]
    Control { status: u16, message: String },
    /// A request the endpoint cannot take as sent (the gateway surface: a
    /// `stream` field that contradicts the path).
    #[error("{0}")]
    InvalidRequest(String),
    /// An OpenAI batch input file or batch create tollgate cannot take:
    /// OpenAI's own `error.code` and `error.param` for it (see
    /// `dialect::openai::batch`).
    #[error("{message}")]
    BatchInput {
        code: &'static str,
        param: Option<&'static str>,
        message: String,
    },
    #[error("request body exceeds the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("no route for {method} {path}")]
    UnknownRoute {
        method: String,
        path: String,
        dialect: Dialect,
    },
    /// A path with no normal form to route on (see `ingress::path`).
    #[error("cannot route path {path:?}: {reason}")]
    BadPath {
        path: String,
        reason: super::ingress::path::PathError,
    },
    /// An endpoint the provider bills but tollgate cannot meter.
    #[error("tollgate does not meter {provider}'s {path} endpoint; {hint}")]
    UnsupportedEndpoint {
        provider: String,
        path: String,
        hint: &'static str,
        /// The dialect the endpoint speaks (the client's).
        dialect: Dialect,
    },
    /// A request inside an intercepted HTTPS_PROXY tunnel named another host
    /// than the tunnel's (the one its certificate was minted for).
    #[error("this connection is for {tunnel}, not {authority}; open a tunnel to {authority}")]
    Misdirected {
        authority: String,
        tunnel: String,
        dialect: Dialect,
    },
    #[error("reading the request body failed: {0}")]
    ClientRead(String),
    /// What pingora's HTTP parser refused (request line, headers, chunked
    /// framing), with the status it would have answered.
    #[error("tollgate could not parse the request: {detail}")]
    MalformedRequest { status: u16, detail: String },
    /// `CONNECT` on the base-URL listener.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// A resource of tollgate's own that the caller has none of (the
    /// gateway surface's batches: another account's is not found either).
    #[error("{0}")]
    NotFound(String),
    /// The client took too long to send its request (`timeouts.request_*`).
    #[error("the client did not send {what} within {} s", limit.as_secs_f64())]
    ClientTimeout {
        what: &'static str,
        limit: std::time::Duration,
    },
    #[error("upstream {provider} is unreachable: {detail}")]
    UpstreamUnreachable {
        provider: String,
        detail: String,
        /// Whether the request may have reached the provider (then it may bill it).
        sent: bool,
    },
    #[error("upstream {provider} timed out waiting for {phase}")]
    UpstreamTimeout {
        provider: String,
        phase: &'static str,
    },
    #[error("upstream {provider} failed: {detail}")]
    UpstreamProtocol { provider: String, detail: String },
    #[error("internal error: {0}")]
    Internal(String),
    /// The sidecar is shutting down and its grace is over.
    #[error("tollgate is shutting down; the answer was cut")]
    ShuttingDown,
    #[error("{0}")]
    Unauthorized(#[from] crate::keys::KeyError),
    #[error("{0}")]
    Forbidden(String),
    #[error("rate limit {} exceeded ({} per minute); retry after {:.1} s", .0.rule, .0.kind.as_str(), .0.retry_after.as_secs_f64())]
    RateLimited(crate::limit::RateLimited),
    #[error("{0}")]
    BudgetExceeded(crate::budget::Denied),
    #[error("bad header: {0}")]
    BadHeader(String),
    /// The first request with this `Idempotency-Key` is still running (the
    /// client asked not to wait, or the wait ran out).
    #[error("a request with this Idempotency-Key is still in progress{}; retry later", if *.waited { " after waiting for it" } else { "" })]
    IdempotencyInProgress { waited: bool },
    /// The `Idempotency-Key` was used with another request (method, path or body).
    #[error("this Idempotency-Key was already used with a different request (method, path or body); use a new key")]
    IdempotencyMismatch,
    /// The router could not plan the request (a bad or disallowed
    /// `x-tollgate-fallback`).
    #[error("{0}")]
    Route(#[from] crate::route::RouteError),
    /// Every target of the request's route has its circuit breaker open.
    #[error("every target of this route is failing (circuit breakers open); retry after {} s", retry_in.as_secs_f64().ceil())]
    AllTargetsOpen { retry_in: std::time::Duration },
    /// No target of the route could take the request (each one refused it
    /// before anything was sent: untranslatable, no key for its provider).
    #[error("no target of this route can take the request: {0}")]
    NoTarget(String),
    /// The error of the identical request this one was coalesced onto.
    #[error("{message}")]
    Shared {
        status: u16,
        kind: &'static str,
        message: String,
    },
}

/// How loudly an error is logged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Debug,
    Warn,
    Error,
}

impl ProxyError {
    /// The `x-tollgate-error` value and metrics label.
    pub fn kind(&self) -> &'static str {
        match self {
            ProxyError::BadJson(_) | ProxyError::InvalidRequest(_) => "bad_request",
            ProxyError::BatchInput { .. } => "bad_batch_input",
            ProxyError::BadIdentity(_) => "bad_identity",
            ProxyError::Control { .. } => "control_error",
            ProxyError::TooLarge { .. } => "body_too_large",
            ProxyError::UnknownRoute { .. } => "unknown_route",
            ProxyError::Misdirected { .. } => "misdirected",
            ProxyError::BadPath { .. } => "bad_path",
            ProxyError::UnsupportedEndpoint { .. } => "unsupported_endpoint",
            ProxyError::ClientRead(_) => "client_read",
            ProxyError::ClientTimeout { .. } => "request_timeout",
            ProxyError::MalformedRequest { .. } => "malformed_request",
            ProxyError::MethodNotAllowed(_) => "method_not_allowed",
            ProxyError::NotFound(_) => "not_found",
            ProxyError::UpstreamUnreachable { .. } => "upstream_unreachable",
            ProxyError::UpstreamTimeout { .. } => "upstream_timeout",
            ProxyError::UpstreamProtocol { .. } => "upstream_protocol",
            ProxyError::Internal(_) => "internal",
            ProxyError::ShuttingDown => "shutting_down",
            ProxyError::Unauthorized(_) => "unauthorized",
            ProxyError::Forbidden(_) => "forbidden",
            ProxyError::RateLimited(_) => "rate_limited",
            ProxyError::BudgetExceeded(_) => "budget_exceeded",
            ProxyError::BadHeader(_) => "bad_header",
            ProxyError::IdempotencyInProgress { .. } => "idempotency_in_progress",
            ProxyError::IdempotencyMismatch => "idempotency_key_reused",
            ProxyError::Route(e) => e.kind(),
            ProxyError::AllTargetsOpen { .. } => "all_targets_open",
            ProxyError::NoTarget(_) => "no_routable_target",
            ProxyError::Shared { kind, .. } => kind,
        }
    }

    /// The HTTP status of the response.
    pub fn status(&self) -> u16 {
        match self {
            ProxyError::BadJson(_) | ProxyError::InvalidRequest(_) => 400,
            ProxyError::BatchInput { .. } => 400,
            ProxyError::BadIdentity(_) => 400,
            ProxyError::Control { status, .. } => *status,
            ProxyError::TooLarge { .. } => 413,
            ProxyError::UnknownRoute { .. } => 404,
            ProxyError::Misdirected { .. } => 421,
            ProxyError::BadPath { .. } => 400,
            ProxyError::UnsupportedEndpoint { .. } => 404,
            ProxyError::ClientRead(_) => 400,
            ProxyError::ClientTimeout { .. } => 408,
            ProxyError::MalformedRequest { status, .. } => *status,
            ProxyError::MethodNotAllowed(_) => 405,
            ProxyError::NotFound(_) => 404,
            ProxyError::UpstreamUnreachable { .. } => 502,
            ProxyError::UpstreamTimeout { .. } => 504,
            ProxyError::UpstreamProtocol { .. } => 502,
            ProxyError::Internal(_) => 500,
            ProxyError::ShuttingDown => 503,
            ProxyError::Unauthorized(_) => 401,
            ProxyError::Forbidden(_) => 403,
            ProxyError::RateLimited(_) => 429,
            ProxyError::BudgetExceeded(_) => 402,
            ProxyError::BadHeader(_) => 400,
            ProxyError::IdempotencyInProgress { .. } => 409,
            ProxyError::IdempotencyMismatch => 422,
            ProxyError::Route(e) => e.status(),
            ProxyError::AllTargetsOpen { .. } => 503,
            ProxyError::NoTarget(_) => 400,
            ProxyError::Shared { status, .. } => *status,
        }
    }

    /// What kind of error this is, whatever the dialect that spells it.
    pub fn class(&self) -> ErrorClass {
        match self {
            ProxyError::BadJson(_)
            | ProxyError::InvalidRequest(_)
            | ProxyError::BatchInput { .. }
            | ProxyError::BadIdentity(_)
            | ProxyError::Misdirected { .. }
            | ProxyError::BadPath { .. }
            | ProxyError::ClientRead(_)
            | ProxyError::ClientTimeout { .. }
            | ProxyError::MalformedRequest { .. }
            | ProxyError::MethodNotAllowed(_)
            | ProxyError::BadHeader(_)
            | ProxyError::IdempotencyMismatch
            | ProxyError::NoTarget(_) => ErrorClass::InvalidRequest,
            ProxyError::Route(e) if e.status() == 403 => ErrorClass::Permission,
            ProxyError::Route(_) => ErrorClass::InvalidRequest,
            ProxyError::AllTargetsOpen { .. } => ErrorClass::Server,
            ProxyError::IdempotencyInProgress { .. } => ErrorClass::Conflict,
            ProxyError::TooLarge { .. } => ErrorClass::TooLarge,
            ProxyError::UnknownRoute { .. }
            | ProxyError::UnsupportedEndpoint { .. }
            | ProxyError::NotFound(_) => ErrorClass::NotFound,
            ProxyError::UpstreamTimeout { .. } => ErrorClass::Timeout,
            ProxyError::UpstreamUnreachable { .. }
            | ProxyError::UpstreamProtocol { .. }
            | ProxyError::ShuttingDown
            | ProxyError::Internal(_) => ErrorClass::Server,
            ProxyError::Unauthorized(_) => ErrorClass::Authentication,
            ProxyError::Forbidden(_) => ErrorClass::Permission,
            ProxyError::RateLimited(_) => ErrorClass::RateLimit,
            ProxyError::BudgetExceeded(_) => ErrorClass::Budget,
            ProxyError::Control { status: 400, .. } => ErrorClass::InvalidRequest,
            ProxyError::Control { status: 401, .. } => ErrorClass::Authentication,
            ProxyError::Control { status: 403, .. } => ErrorClass::Permission,
            ProxyError::Control { .. } => ErrorClass::Server,
            ProxyError::Shared { status: 504, .. } => ErrorClass::Timeout,
            ProxyError::Shared { .. } => ErrorClass::Server,
        }
    }

    /// The `error.type` in the provider's shape.
    pub fn error_type(&self, dialect: Dialect) -> &'static str {
        match (self, dialect) {
            // OpenAI names the limit that refused.
            (ProxyError::RateLimited(r), Dialect::OpenAi) => r.kind.as_str(),
            _ => dialect.error_type(self.class()),
        }
    }

    /// Client mistakes are routine; upstream trouble is worth a warning.
    pub fn level(&self) -> Level {
        match self {
            ProxyError::BadJson(_)
            | ProxyError::InvalidRequest(_)
            | ProxyError::BatchInput { .. }
            | ProxyError::BadIdentity(_)
            | ProxyError::TooLarge { .. }
            | ProxyError::UnknownRoute { .. }
            | ProxyError::Misdirected { .. }
            | ProxyError::BadPath { .. }
            | ProxyError::UnsupportedEndpoint { .. }
            | ProxyError::ClientRead(_)
            | ProxyError::ClientTimeout { .. }
            | ProxyError::MalformedRequest { .. }
            | ProxyError::MethodNotAllowed(_)
            | ProxyError::NotFound(_)
            | ProxyError::Unauthorized(_)
            | ProxyError::Forbidden(_)
            | ProxyError::RateLimited(_)
            | ProxyError::BudgetExceeded(_)
            | ProxyError::BadHeader(_)
            | ProxyError::IdempotencyInProgress { .. }
            | ProxyError::IdempotencyMismatch
            | ProxyError::Route(_)
            | ProxyError::NoTarget(_) => Level::Debug,
            ProxyError::AllTargetsOpen { .. } => Level::Warn,
            ProxyError::Control { status, .. } if *status < 500 => Level::Debug,
            ProxyError::Control { .. } => Level::Warn,
            ProxyError::UpstreamUnreachable { .. }
            | ProxyError::UpstreamTimeout { .. }
            | ProxyError::UpstreamProtocol { .. }
            | ProxyError::ShuttingDown
            | ProxyError::Shared { .. } => Level::Warn,
            ProxyError::Internal(_) => Level::Error,
        }
    }

    /// The response for this error: status, headers and a body in the
    /// dialect's error shape.
    pub fn response(&self, dialect: Dialect, request_id: &str) -> (ResponseHeader, Bytes) {
        let code = match self {
            ProxyError::Unauthorized(_) => "invalid_api_key",
            ProxyError::RateLimited(_) => "rate_limit_exceeded",
            ProxyError::BatchInput { code, .. } => code,
            _ => self.kind(),
        };
        let body = match (self, dialect) {
            (ProxyError::BatchInput { param, .. }, Dialect::OpenAi) => {
                crate::dialect::openai::error::body_with_param(
                    self.error_type(dialect),
                    code,
                    *param,
                    &self.to_string(),
                )
            }
            _ => dialect.error_body(
                self.error_type(dialect),
                code,
                &self.to_string(),
                request_id,
            ),
        };
        let status = http::StatusCode::from_u16(self.status())
            .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
        let mut header = headers::response_header(status, 4);
        let _ = header.insert_header(http::header::CONTENT_TYPE, "application/json");
        let _ = header.insert_header(http::header::CONTENT_LENGTH, body.len().to_string());
        let _ = header.insert_header(headers::ERROR, self.kind());
        let _ = header.insert_header(headers::REQUEST_ID, request_id);
        match self {
            // SDKs retry a 429 on their own, after `retry-after`.
            ProxyError::RateLimited(r) => rate_limit_headers(&mut header, r),
            // Spending more will not make the budget fit: never retry.
            ProxyError::BudgetExceeded(_)
            | ProxyError::IdempotencyMismatch
            | ProxyError::Unauthorized(_)
            | ProxyError::Forbidden(_)
            | ProxyError::Route(_)
            | ProxyError::NoTarget(_) => {
                let _ = header.insert_header(headers::X_SHOULD_RETRY, "false");
            }
            // The SDK retries after the first breaker half-opens.
            ProxyError::AllTargetsOpen { retry_in } => {
                let secs = retry_in.as_secs_f64().ceil().max(1.0) as u64;
                let _ = header.insert_header(http::header::RETRY_AFTER, secs.to_string());
                let _ = header.insert_header(headers::X_SHOULD_RETRY, "true");
            }
            _ => {}
        }
        (header, body)
    }
}

/// `retry-after` (whole seconds, rounded up), `retry-after-ms`, and the
/// `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` figures of the
/// rule that refused.
fn rate_limit_headers(header: &mut ResponseHeader, r: &crate::limit::RateLimited) {
    let secs = r.retry_after.as_secs_f64().ceil().max(1.0) as u64;
    let _ = header.insert_header(http::header::RETRY_AFTER, secs.to_string());
    let _ = header.insert_header(
        "retry-after-ms",
        r.retry_after.as_millis().max(1).to_string(),
    );
    let _ = header.insert_header(headers::X_SHOULD_RETRY, "true");
    for (kind, fig) in [("requests", r.requests), ("tokens", r.tokens)] {
        if let Some(f) = fig {
            let _ = header.insert_header(format!("x-ratelimit-limit-{kind}"), f.limit.to_string());
            let _ = header.insert_header(
                format!("x-ratelimit-remaining-{kind}"),
                f.remaining.to_string(),
            );
            let _ = header.insert_header(
                format!("x-ratelimit-reset-{kind}"),
                format!("{:.3}s", f.reset.as_secs_f64()),
            );
        }
    }
}
