//! Receipts: what tollgate tells the client about a call. Headers on every
//! response; for streams (whose cost is unknown when the headers leave) one
//! SSE comment line after the provider's last event, which SDKs ignore.

use bytes::Bytes;
use http::HeaderValue;
use serde::Serialize;

use super::headers::{self, SetHeader};
use crate::meter::event::UsageEvent;
use crate::meter::money::format_usd;

/// Adds the receipt headers; `cost` only when it is known (non-streaming).
pub fn add_headers(header: &mut impl SetHeader, event: &UsageEvent, cost: Option<u64>) {
    if let Ok(value) = HeaderValue::from_str(&event.event_id) {
        header.set(headers::REQUEST_ID, value);
    }
    if !event.provider.is_empty() {
        if let Ok(value) = HeaderValue::from_str(&event.provider) {
            header.set(headers::PROVIDER, value);
        }
    }
    if !event.model.is_empty() {
        if let Ok(value) = HeaderValue::from_str(&event.model) {
            header.set(headers::MODEL, value);
        }
    }
    header.set(
        headers::CACHE,
        HeaderValue::from_static(event.cache.as_str()),
    );
    if let Some(nusd) = cost {
        if let Ok(value) = HeaderValue::try_from(format_usd(nusd)) {
            header.set(headers::COST_USD, value);
        }
    }
    if event.saved_nusd > 0 {
        if let Ok(value) = HeaderValue::try_from(format_usd(event.saved_nusd)) {
            header.set(headers::SAVED_USD, value);
        }
    }
}

/// `x-tollgate-attempts` on a routed request's answer.
pub fn add_attempts(header: &mut impl SetHeader, attempts: Option<&str>) {
    if let Some(value) = attempts.and_then(|a| HeaderValue::from_str(a).ok()) {
        header.set(headers::ATTEMPTS, value);
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
