//! Anthropic error shapes: `{"type":"error","error":{"type","message"},"request_id"}`
//! bodies, the SSE `error` event, and the error types per class.

use bytes::Bytes;

use crate::dialect::ErrorClass;

/// The `error.type` Anthropic uses for a class of error.
pub fn error_type(class: ErrorClass) -> &'static str {
    match class {
        ErrorClass::InvalidRequest => "invalid_request_error",
        ErrorClass::Authentication => "authentication_error",
        ErrorClass::Permission => "permission_error",
        ErrorClass::NotFound => "not_found_error",
        ErrorClass::TooLarge => "request_too_large",
        ErrorClass::RateLimit => "rate_limit_error",
        ErrorClass::Timeout => "timeout_error",
        ErrorClass::Server => "api_error",
        ErrorClass::Budget => "budget_exceeded",
        ErrorClass::Conflict => "conflict_error",
    }
}

/// An error body.
pub fn body(error_type: &str, message: &str, request_id: &str) -> Bytes {
    let value = serde_json::json!({
        "type": "error",
        "error": {"type": error_type, "message": message},
        "request_id": request_id,
    });
    Bytes::from(serde_json::to_vec(&value).unwrap_or_default())
}

/// The SSE `error` event that ends a stream.
pub fn event(error_type: &str, message: &str) -> Bytes {
    let data =
        serde_json::json!({"type": "error", "error": {"type": error_type, "message": message}});
    Bytes::from(format!("event: error\ndata: {data}\n\n"))
}
