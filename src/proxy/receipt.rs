//! Receipts: what tollgate tells the client about a call. Headers on every
//! response; for streams (whose cost is unknown when the headers leave) one
//! SSE comment line after the provider's last event, which SDKs ignore.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use serde::Serialize;

use super::headers;
use crate::meter::event::UsageEvent;
use crate::meter::money::format_usd;

/// Adds the receipt headers; `cost` only when it is known (non-streaming).
pub fn add_headers(header: &mut ResponseHeader, event: &UsageEvent, cost: Option<u64>) {
    let _ = header.insert_header(headers::REQUEST_ID, event.event_id.as_str());
    if !event.provider.is_empty() {
        let _ = header.insert_header(headers::PROVIDER, event.provider.as_str());
    }
    if !event.model.is_empty() {
        if let Ok(value) = http::HeaderValue::from_str(&event.model) {
            let _ = header.insert_header(headers::MODEL, value);
        }
    }
    let _ = header.insert_header(headers::CACHE, event.cache.as_str());
    if let Some(nusd) = cost {
        let _ = header.insert_header(headers::COST_USD, format_usd(nusd));
    }
    if event.saved_nusd > 0 {
        let _ = header.insert_header(headers::SAVED_USD, format_usd(event.saved_nusd));
    }
}

/// `x-tollgate-attempts` on a routed request's answer.
pub fn add_attempts(header: &mut ResponseHeader, attempts: Option<&str>) {
    if let Some(value) = attempts.and_then(|a| http::HeaderValue::from_str(a).ok()) {
        let _ = header.insert_header(headers::ATTEMPTS, value);
    }
}

#[derive(Serialize)]
struct StreamReceipt<'a> {
    request_id: &'a str,
    provider: &'a str,
    model: &'a str,
    cache: &'a str,
    status: &'a str,
    cost_usd: String,
    /// What a hit or coalesced request saved (absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    saved_usd: Option<String>,
    input_tokens: u64,
    output_tokens: u64,
    cache_creation_input_tokens: u64,
    cache_read_input_tokens: u64,
    /// A routed request's attempts (absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    attempts: Option<&'a str>,
}

/// The `: tollgate {json}` comment line that ends a stream.
pub fn stream_comment(event: &UsageEvent, attempts: Option<&str>) -> Bytes {
    let receipt = StreamReceipt {
        request_id: &event.event_id,
        provider: &event.provider,
        model: &event.model,
        cache: event.cache.as_str(),
        status: event.status.as_str(),
        cost_usd: format_usd(event.cost_nusd),
        saved_usd: (event.saved_nusd > 0).then(|| format_usd(event.saved_nusd)),
        input_tokens: event.usage.input_tokens,
        output_tokens: event.usage.output_tokens,
        cache_creation_input_tokens: event.usage.cache_creation_input_tokens,
        cache_read_input_tokens: event.usage.cache_read_input_tokens,
        attempts,
    };
    let json = serde_json::to_string(&receipt).unwrap_or_default();
    Bytes::from(format!(": tollgate {json}\n\n"))
}
