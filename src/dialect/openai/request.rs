//! OpenAI-compatible requests: asking for the usage chunk of a stream.

use bytes::{Bytes, BytesMut};

use crate::dialect::request::RequestError;

/// The body with `stream_options.include_usage = true` (without it an
/// OpenAI stream reports no usage). Without an existing `stream_options`
/// the field is spliced in after the opening brace, leaving every other
/// byte as the client sent it.
pub fn with_include_usage(body: &[u8], had_stream_options: bool) -> Result<Bytes, RequestError> {
    if !had_stream_options {
        if let Some(open) = body.iter().position(|b| *b == b'{') {
            const FIELD: &[u8] = br#""stream_options":{"include_usage":true}"#;
            let rest = &body[open + 1..];
            let empty = rest.iter().all(|b| b.is_ascii_whitespace() || *b == b'}');
            let mut out = BytesMut::with_capacity(body.len() + FIELD.len() + 1);
            out.extend_from_slice(&body[..=open]);
            out.extend_from_slice(FIELD);
            if !empty {
                out.extend_from_slice(b",");
            }
            out.extend_from_slice(rest);
            return Ok(out.freeze());
        }
    }
    let mut value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| RequestError::BadJson(e.to_string()))?;
    if let Some(obj) = value.as_object_mut() {
        let options = obj
            .entry("stream_options")
            .or_insert_with(|| serde_json::json!({}));
        if !options.is_object() {
            *options = serde_json::json!({});
        }
        if let Some(o) = options.as_object_mut() {
            o.insert("include_usage".into(), serde_json::Value::Bool(true));
        }
    }
    serde_json::to_vec(&value)
        .map(Bytes::from)
        .map_err(|e| RequestError::Encode(e.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn include_usage_splice_keeps_the_rest() {
        let body = br#"{"model":"gpt-4o","stream":true,"messages":[]}"#;
        let out = with_include_usage(body, false).unwrap();
        assert_eq!(
            &out[..],
            br#"{"stream_options":{"include_usage":true},"model":"gpt-4o","stream":true,"messages":[]}"#
        );
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        let out = with_include_usage(
            br#"{"stream_options":{"include_usage":false},"stream":true}"#,
            true,
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        let out = with_include_usage(b"{}", false).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
    }
}
