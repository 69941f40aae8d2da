//! tollgate's own errors, and the one place that maps each to a response in
//! the provider's own error shape (so SDKs raise their usual exception).
//! Every such response carries `x-tollgate-error: <kind>`.

use bytes::Bytes;
use pingora::http::ResponseHeader;

use super::headers;
use crate::provider::Dialect;

/// Everything that makes tollgate answer a request itself.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("request body is not valid JSON: {0}")]
    BadJson(String),
    #[error("bad identity header: {0}")]
    BadIdentity(String),
    #[error("request body exceeds the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("no route for {method} {path}")]
    UnknownRoute {
        method: String,
        path: String,
        dialect: Dialect,
    },
    #[error("reading the request body failed: {0}")]
    ClientRead(String),
    #[error("upstream {provider} is unreachable: {detail}")]
    UpstreamUnreachable { provider: String, detail: String },
    #[error("upstream {provider} timed out waiting for {phase}")]
    UpstreamTimeout {
        provider: String,
        phase: &'static str,
    },
    #[error("upstream {provider} failed: {detail}")]
    UpstreamProtocol { provider: String, detail: String },
    #[error("internal error: {0}")]
    Internal(String),
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
            ProxyError::BadJson(_) => "bad_request",
            ProxyError::BadIdentity(_) => "bad_identity",
            ProxyError::TooLarge { .. } => "body_too_large",
            ProxyError::UnknownRoute { .. } => "unknown_route",
            ProxyError::ClientRead(_) => "client_read",
            ProxyError::UpstreamUnreachable { .. } => "upstream_unreachable",
            ProxyError::UpstreamTimeout { .. } => "upstream_timeout",
            ProxyError::UpstreamProtocol { .. } => "upstream_protocol",
            ProxyError::Internal(_) => "internal",
        }
    }

    /// The HTTP status of the response.
    pub fn status(&self) -> u16 {
        match self {
            ProxyError::BadJson(_) => 400,
            ProxyError::BadIdentity(_) => 400,
            ProxyError::TooLarge { .. } => 413,
            ProxyError::UnknownRoute { .. } => 404,
            ProxyError::ClientRead(_) => 400,
            ProxyError::UpstreamUnreachable { .. } => 502,
            ProxyError::UpstreamTimeout { .. } => 504,
            ProxyError::UpstreamProtocol { .. } => 502,
            ProxyError::Internal(_) => 500,
        }
    }

    /// The `error.type` in the provider's shape.
    pub fn error_type(&self, dialect: Dialect) -> &'static str {
        match (self, dialect) {
            (ProxyError::BadJson(_), _) => "invalid_request_error",
            (ProxyError::BadIdentity(_), _) => "invalid_request_error",
            (ProxyError::TooLarge { .. }, Dialect::Anthropic) => "request_too_large",
            (ProxyError::TooLarge { .. }, Dialect::OpenAi) => "invalid_request_error",
            (ProxyError::UnknownRoute { .. }, Dialect::Anthropic) => "not_found_error",
            (ProxyError::UnknownRoute { .. }, Dialect::OpenAi) => "invalid_request_error",
            (ProxyError::ClientRead(_), _) => "invalid_request_error",
            (ProxyError::UpstreamUnreachable { .. }, Dialect::Anthropic) => "api_error",
            (ProxyError::UpstreamUnreachable { .. }, Dialect::OpenAi) => "server_error",
            (ProxyError::UpstreamTimeout { .. }, Dialect::Anthropic) => "timeout_error",
            (ProxyError::UpstreamTimeout { .. }, Dialect::OpenAi) => "server_error",
            (ProxyError::UpstreamProtocol { .. }, Dialect::Anthropic) => "api_error",
            (ProxyError::UpstreamProtocol { .. }, Dialect::OpenAi) => "server_error",
            (ProxyError::Internal(_), Dialect::Anthropic) => "api_error",
            (ProxyError::Internal(_), Dialect::OpenAi) => "server_error",
        }
    }

    /// Client mistakes are routine; upstream trouble is worth a warning.
    pub fn level(&self) -> Level {
        match self {
            ProxyError::BadJson(_)
            | ProxyError::BadIdentity(_)
            | ProxyError::TooLarge { .. }
            | ProxyError::UnknownRoute { .. }
            | ProxyError::ClientRead(_) => Level::Debug,
            ProxyError::UpstreamUnreachable { .. }
            | ProxyError::UpstreamTimeout { .. }
            | ProxyError::UpstreamProtocol { .. } => Level::Warn,
            ProxyError::Internal(_) => Level::Error,
        }
    }

    /// The response for this error: status, headers and a body in the
    /// dialect's error shape.
    pub fn response(&self, dialect: Dialect, request_id: &str) -> (ResponseHeader, Bytes) {
        let body = error_body(
            dialect,
            self.error_type(dialect),
            self.kind(),
            &self.to_string(),
            request_id,
        );
        let status = http::StatusCode::from_u16(self.status())
            .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
        let mut header = headers::response_header(status, 4);
        let _ = header.insert_header(http::header::CONTENT_TYPE, "application/json");
        let _ = header.insert_header(http::header::CONTENT_LENGTH, body.len().to_string());
        let _ = header.insert_header(headers::ERROR, self.kind());
        let _ = header.insert_header(headers::REQUEST_ID, request_id);
        (header, body)
    }
}

/// An error body in the dialect's shape.
pub fn error_body(
    dialect: Dialect,
    error_type: &str,
    code: &str,
    message: &str,
    request_id: &str,
) -> Bytes {
    let value = match dialect {
        Dialect::Anthropic => serde_json::json!({
            "type": "error",
            "error": {"type": error_type, "message": message},
            "request_id": request_id,
        }),
        Dialect::OpenAi => serde_json::json!({
            "error": {"message": message, "type": error_type, "param": null, "code": code},
        }),
    };
    Bytes::from(serde_json::to_vec(&value).unwrap_or_default())
}

/// An SSE error event in the dialect's shape, ending a stream that cannot go on.
pub fn error_event(dialect: Dialect, error_type: &str, message: &str) -> Bytes {
    match dialect {
        Dialect::Anthropic => {
            let data = serde_json::json!({"type": "error", "error": {"type": error_type, "message": message}});
            Bytes::from(format!("event: error\ndata: {data}\n\n"))
        }
        Dialect::OpenAi => {
            let data = serde_json::json!({"error": {"message": message, "type": error_type, "param": null, "code": error_type}});
            Bytes::from(format!("data: {data}\n\n"))
        }
    }
}
