//! OpenAI error shapes: `{"error":{"message","type","param","code"}}` bodies
//! and stream chunks, and the error types per class.

use bytes::Bytes;

use crate::dialect::ErrorClass;

/// The `error.type` OpenAI uses for a class of error. Rate limits carry
/// their own (`requests` / `tokens`), chosen by the caller.
pub fn error_type(class: ErrorClass) -> &'static str {
    match class {
        ErrorClass::InvalidRequest
        | ErrorClass::Authentication
        | ErrorClass::Permission
        | ErrorClass::NotFound
        | ErrorClass::TooLarge
        | ErrorClass::Conflict => "invalid_request_error",
        ErrorClass::RateLimit => "requests",
        ErrorClass::Timeout | ErrorClass::Server => "server_error",
        ErrorClass::Budget => "budget_exceeded",
    }
}

/// An error body.
pub fn body(error_type: &str, code: &str, message: &str) -> Bytes {
    body_with_param(error_type, code, None, message)
}

/// An error body naming the parameter at fault (`error.param`).
pub fn body_with_param(error_type: &str, code: &str, param: Option<&str>, message: &str) -> Bytes {
    let value = serde_json::json!({
        "error": {"message": message, "type": error_type, "param": param, "code": code},
    });
    Bytes::from(serde_json::to_vec(&value).unwrap_or_default())
}

/// The error chunk that ends a stream (OpenAI streams have no named events).
pub fn event(error_type: &str, message: &str) -> Bytes {
    let data = serde_json::json!({"error": {"message": message, "type": error_type, "param": null, "code": error_type}});
    Bytes::from(format!("data: {data}\n\n"))
}
