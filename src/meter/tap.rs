//! The response tap: reads usage, model, id, completion and mid-stream
//! errors out of a provider response on its way to the client. Pure: no I/O.
//!
//! - [`StreamTap`] sits on a streamed (SSE) body. It forwards every byte
//!   unchanged, except, for the OpenAI dialect when asked, the usage-only
//!   chunk that the proxy requested upstream although the client did not.
//! - [`usage_from_json`] reads a non-streamed JSON body.
//!
//! Only the events that can carry usage, model, id or an error are parsed:
//! Anthropic events are picked by their `event:` name; OpenAI data-only
//! chunks are first searched for an `"usage"` / `"error"` key with a
//! non-null value, and only those (and the first chunk, for model and id)
//! are deserialised.

use std::borrow::Cow;
use std::fmt;

use bytes::{Bytes, BytesMut};
use memchr::memmem;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use crate::meter::usage::Usage;
use crate::provider::sse::SseParser;
use crate::provider::Dialect;

/// Usage, model and id of a non-streamed response.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JsonSummary {
    pub usage: Usage,
    pub model: Option<String>,
    pub id: Option<String>,
}

/// Reads a non-streamed JSON response body. `None` when the body is not a
/// JSON object with a `usage` object (an error body, for instance).
pub fn usage_from_json(dialect: Dialect, body: &[u8]) -> Option<JsonSummary> {
    match dialect {
        Dialect::Anthropic => {
            let body: JsonBody<'_, AnthropicUsage> = serde_json::from_slice(body).ok()?;
            let mut acc = AnthropicAcc::default();
            acc.apply(&body.usage?);
            Some(JsonSummary {
                usage: acc.usage(),
                model: body.model.map(Cow::into_owned),
                id: body.id.map(Cow::into_owned),
            })
        }
        Dialect::OpenAi => {
            let body: JsonBody<'_, OpenAiUsage> = serde_json::from_slice(body).ok()?;
            Some(JsonSummary {
                usage: body.usage?.usage(),
                model: body.model.map(Cow::into_owned),
                id: body.id.map(Cow::into_owned),
            })
        }
    }
}

// === StreamTap ===

/// Taps one streamed response: see the module docs.
#[derive(Debug)]
pub struct StreamTap {
    parser: SseParser,
    meter: Meter,
    /// Remove the usage-only chunk (OpenAI dialect only).
    strip: bool,
    /// Bytes fed but not yet forwarded (strip mode only): they may belong to
    /// an event that will have to be cut.
    held: BytesMut,
    /// Stream offset of `held[0]`.
    held_start: u64,
    /// Ranges (stream offsets) of dispatched events to cut, not yet applied.
    cuts: Vec<(u64, u64)>,
}

impl StreamTap {
    /// `strip_usage_chunk`: OpenAI dialect only (ignored for Anthropic) —
    /// the proxy added `stream_options.include_usage = true` upstream
    /// although the client did not ask for it, so the usage-only chunk
    /// (`"choices":[]` with a non-null `usage`) is collected but removed from
    /// what the client receives; every other byte passes through unchanged.
    pub fn new(dialect: Dialect, strip_usage_chunk: bool) -> Self {
        Self {
            parser: SseParser::new(),
            meter: Meter::new(dialect),
            strip: strip_usage_chunk && dialect == Dialect::OpenAi,
            held: BytesMut::new(),
            held_start: 0,
            cuts: Vec::new(),
        }
    }

    /// Feeds one upstream chunk; returns the bytes to forward now. Without
    /// stripping this is `chunk` itself (zero copy). With stripping, complete
    /// events are forwarded at once; only an incomplete trailing event (from
    /// its first field line on) is held back, and the usage-only chunk's own
    /// lines and blank line are cut out exactly (comments before it stay).
    pub fn feed(&mut self, chunk: Bytes) -> Bytes {
        self.feed_with(chunk, |_, _| {})
    }

    /// [`StreamTap::feed`], also handing every event (name, data) to
    /// `observe` (the cache assembles the complete message from them).
    pub fn feed_with(&mut self, chunk: Bytes, mut observe: impl FnMut(&str, &str)) -> Bytes {
        let chunk_start = self.parser.offset();
        let meter = &mut self.meter;
        let cuts = &mut self.cuts;
        let strip = self.strip;
        self.parser.feed(&chunk, |ev| {
            observe(ev.name, ev.data);
            if meter.on_event(ev.name, ev.data) && strip {
                cuts.push((ev.fields_start, ev.end));
            }
        });
        if !self.strip {
            return chunk;
        }
        let safe = self
            .parser
            .pending_fields_start()
            .unwrap_or_else(|| self.parser.offset());
        if self.held.is_empty() && self.cuts.is_empty() {
            // Common case: nothing held from before, nothing to cut.
            let keep = offset_len(chunk_start, safe).min(chunk.len());
            self.held_start = chunk_start + keep as u64;
            if keep == chunk.len() {
                return chunk;
            }
            self.held.extend_from_slice(&chunk[keep..]);
            return chunk.slice(..keep);
        }
        self.held.extend_from_slice(&chunk);
        self.release(safe)
    }

    /// At upstream end of body: whatever is still held back (an incomplete
    /// trailing event, forwarded as is).
    pub fn finish(&mut self) -> Bytes {
        self.finish_with(|_, _| {})
    }

    /// [`StreamTap::finish`], handing the last event, if any, to `observe`.
    pub fn finish_with(&mut self, mut observe: impl FnMut(&str, &str)) -> Bytes {
        let meter = &mut self.meter;
        let cuts = &mut self.cuts;
        let strip = self.strip;
        self.parser.finish(|ev| {
            observe(ev.name, ev.data);
            if meter.on_event(ev.name, ev.data) && strip {
                cuts.push((ev.fields_start, ev.end));
            }
        });
        if !self.strip {
            return Bytes::new();
        }
        self.release(self.parser.offset())
    }

    /// Usage so far (the final usage once the stream is complete).
    pub fn usage(&self) -> Usage {
        self.meter.usage()
    }

    /// Whether any usage was seen at all.
    pub fn saw_usage(&self) -> bool {
        self.meter.saw_usage
    }

    /// The stream's terminal event was seen (Anthropic `message_stop`;
    /// OpenAI `data: [DONE]`). The proxy checks this after each `feed`,
    /// before forwarding that chunk.
    pub fn complete(&self) -> bool {
        self.meter.complete
    }

    /// The first mid-stream error: Anthropic `event: error` → its
    /// `error.type`; an OpenAI/OpenRouter chunk with an `error` key →
    /// `error.type`, else a string `error.code`, else
    /// `error.metadata.error_type`, else a numeric `error.code`, else `"error"`.
    pub fn error(&self) -> Option<&str> {
        self.meter.error.as_deref()
    }

    /// Anthropic `message_start.message.model`; OpenAI first chunk's `model`.
    pub fn model(&self) -> Option<&str> {
        self.meter.model.as_deref()
    }

    /// Anthropic message id; OpenAI first chunk's `id` (`gen-…` on OpenRouter).
    pub fn response_id(&self) -> Option<&str> {
        self.meter.id.as_deref()
    }

    /// Forwards `held` up to stream offset `safe`, minus the pending cuts.
    fn release(&mut self, safe: u64) -> Bytes {
        let region_start = self.held_start;
        let n = offset_len(region_start, safe).min(self.held.len());
        let region = self.held.split_to(n);
        self.held_start = region_start + n as u64;
        if self.cuts.is_empty() {
            return region.freeze();
        }
        // Once per stream: copy around the cut(s).
        let mut out = BytesMut::with_capacity(region.len());
        let mut at = 0usize;
        for (from, to) in self.cuts.drain(..) {
            let from = offset_len(region_start, from).clamp(at, n);
            let to = offset_len(region_start, to).clamp(from, n);
            out.extend_from_slice(&region[at..from]);
            at = to;
        }
        out.extend_from_slice(&region[at..]);
        out.freeze()
    }
}

/// `to - from` as a length (0 when `to < from`).
fn offset_len(from: u64, to: u64) -> usize {
    usize::try_from(to.saturating_sub(from)).unwrap_or(usize::MAX)
}

// === Meter: what the events say ===

#[derive(Debug)]
struct Meter {
    dialect: Dialect,
    keys: KeyFinders,
    anthropic: AnthropicAcc,
    /// OpenAI: the last non-null `usage`.
    openai: Option<Usage>,
    saw_usage: bool,
    complete: bool,
    error: Option<String>,
    model: Option<String>,
    id: Option<String>,
    /// OpenAI: the first chunk (model, id) was looked at.
    first_chunk_seen: bool,
}

impl Meter {
    fn new(dialect: Dialect) -> Self {
        Self {
            dialect,
            keys: KeyFinders::new(),
            anthropic: AnthropicAcc::default(),
            openai: None,
            saw_usage: false,
            complete: false,
            error: None,
            model: None,
            id: None,
            first_chunk_seen: false,
        }
    }

    fn usage(&self) -> Usage {
        match self.dialect {
            Dialect::Anthropic => self.anthropic.usage(),
            Dialect::OpenAi => self.openai.unwrap_or_default(),
        }
    }

    /// Handles one event; returns whether it is a usage-only chunk (one the
    /// client may not have asked for).
    fn on_event(&mut self, name: &str, data: &str) -> bool {
        match self.dialect {
            Dialect::Anthropic => {
                self.on_anthropic(name, data);
                false
            }
            Dialect::OpenAi => self.on_openai(data),
        }
    }

    fn on_anthropic(&mut self, name: &str, data: &str) {
        match name {
            "message_start" => {
                let Ok(ev) = serde_json::from_str::<MessageStart<'_>>(data) else {
                    return;
                };
                let Some(message) = ev.message else {
                    return;
                };
                set_once(&mut self.id, message.id);
                set_once(&mut self.model, message.model);
                if let Some(usage) = message.usage {
                    self.anthropic.apply(&usage);
                    self.saw_usage = true;
                }
            }
            "message_delta" => {
                if let Ok(MessageDelta { usage: Some(usage) }) = serde_json::from_str(data) {
                    self.anthropic.apply(&usage);
                    self.saw_usage = true;
                }
            }
            "message_stop" => self.complete = true,
            "error" if self.error.is_none() => {
                let kind = serde_json::from_str::<ErrorEvent>(data)
                    .ok()
                    .and_then(|ev| ev.error)
                    .map_or_else(|| "error".to_owned(), ErrorField::kind);
                self.error = Some(kind);
            }
            // ping, content blocks, unknown (future) events.
            _ => {}
        }
    }

    fn on_openai(&mut self, data: &str) -> bool {
        let bytes = data.as_bytes();
        if bytes.starts_with(b"[DONE]") {
            self.complete = true;
            return false;
        }
        let first = !self.first_chunk_seen;
        if !first && !self.keys.has_usage(bytes) && !self.keys.has_error(bytes) {
            // A content chunk: nothing to read.
            return false;
        }
        self.first_chunk_seen = true;
        let Ok(chunk) = serde_json::from_str::<OpenAiChunk<'_>>(data) else {
            return false;
        };
        if first {
            set_once(&mut self.id, chunk.id);
            set_once(&mut self.model, chunk.model);
        }
        let has_error = chunk.error.is_some();
        if let Some(error) = chunk.error {
            if self.error.is_none() {
                self.error = Some(error.kind());
            }
        }
        let Some(usage) = chunk.usage else {
            return false;
        };
        self.openai = Some(usage.usage());
        self.saw_usage = true;
        !has_error && chunk.choices.is_none_or(|c| c.is_empty())
    }
}

fn set_once(slot: &mut Option<String>, value: Option<Cow<'_, str>>) {
    if slot.is_none() {
        *slot = value.map(Cow::into_owned);
    }
}

/// Cheap pre-checks on OpenAI chunks before any JSON parsing.
#[derive(Debug)]
struct KeyFinders {
    usage: memmem::Finder<'static>,
    error: memmem::Finder<'static>,
}

impl KeyFinders {
    fn new() -> Self {
        Self {
            usage: memmem::Finder::new(b"\"usage\""),
            error: memmem::Finder::new(b"\"error\""),
        }
    }

    fn has_usage(&self, data: &[u8]) -> bool {
        has_non_null_key(&self.usage, data)
    }

    fn has_error(&self, data: &[u8]) -> bool {
        has_non_null_key(&self.error, data)
    }
}

/// Whether `"key"` occurs as an object key (followed by `:`) with a value
/// other than `null`. Inside JSON strings the quotes would be escaped, so a
/// match there is never followed by `:`; a value `"error"` (e.g.
/// `"finish_reason":"error"`) is not followed by `:` either.
fn has_non_null_key(finder: &memmem::Finder<'_>, data: &[u8]) -> bool {
    finder.find_iter(data).any(|at| {
        let after = skip_ws(&data[at + finder.needle().len()..]);
        match after.strip_prefix(b":") {
            Some(value) => !skip_ws(value).starts_with(b"null"),
            None => false,
        }
    })
}

fn skip_ws(bytes: &[u8]) -> &[u8] {
    let n = bytes
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .unwrap_or(bytes.len());
    &bytes[n..]
}

// === Anthropic usage ===

/// Anthropic usage fields as last reported (cumulative: last value wins).
#[derive(Clone, Copy, Debug, Default)]
struct AnthropicAcc {
    input: Option<u64>,
    output: Option<u64>,
    cache_creation: Option<u64>,
    cache_read: Option<u64>,
    ephemeral_5m: Option<u64>,
    ephemeral_1h: Option<u64>,
    cost_nusd: Option<u64>,
}

impl AnthropicAcc {
    /// Overwrites every field present and non-null in `u`.
    fn apply(&mut self, u: &AnthropicUsage) {
        fn over(slot: &mut Option<u64>, value: Option<u64>) {
            if value.is_some() {
                *slot = value;
            }
        }
        over(&mut self.input, u.input_tokens);
        over(&mut self.output, u.output_tokens);
        over(&mut self.cache_creation, u.cache_creation_input_tokens);
        over(&mut self.cache_read, u.cache_read_input_tokens);
        if let Some(cc) = &u.cache_creation {
            over(&mut self.ephemeral_5m, cc.ephemeral_5m_input_tokens);
            over(&mut self.ephemeral_1h, cc.ephemeral_1h_input_tokens);
        }
        over(&mut self.cost_nusd, u.cost);
    }

    fn usage(&self) -> Usage {
        // The total, or failing that the sum of the breakdown; the 1 h part
        // never exceeds the total (no breakdown: everything bills at 5 m).
        let cache_creation = self.cache_creation.unwrap_or_else(|| {
            self.ephemeral_5m
                .unwrap_or(0)
                .saturating_add(self.ephemeral_1h.unwrap_or(0))
        });
        Usage {
            input_tokens: self.input.unwrap_or(0),
            output_tokens: self.output.unwrap_or(0),
            cache_creation_input_tokens: cache_creation,
            cache_creation_1h_input_tokens: self.ephemeral_1h.unwrap_or(0).min(cache_creation),
            cache_read_input_tokens: self.cache_read.unwrap_or(0),
            reported_cost_nusd: self.cost_nusd,
        }
    }
}

#[derive(Deserialize)]
struct MessageStart<'a> {
    #[serde(borrow)]
    message: Option<MessageHead<'a>>,
}

#[derive(Deserialize)]
struct MessageHead<'a> {
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
    usage: Option<AnthropicUsage>,
}

#[derive(Deserialize)]
struct MessageDelta {
    usage: Option<AnthropicUsage>,
}

/// Anthropic `usage` (also OpenRouter's `/messages` skin, which adds `cost`).
#[derive(Deserialize)]
struct AnthropicUsage {
    #[serde(default, deserialize_with = "lenient_u64")]
    input_tokens: Option<u64>,
    #[serde(default, deserialize_with = "lenient_u64")]
    output_tokens: Option<u64>,
    #[serde(default, deserialize_with = "lenient_u64")]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default, deserialize_with = "lenient_u64")]
    cache_read_input_tokens: Option<u64>,
    cache_creation: Option<CacheCreation>,
    #[serde(default, deserialize_with = "lenient_cost")]
    cost: Option<u64>,
}

#[derive(Deserialize)]
struct CacheCreation {
    #[serde(default, deserialize_with = "lenient_u64")]
    ephemeral_5m_input_tokens: Option<u64>,
    #[serde(default, deserialize_with = "lenient_u64")]
    ephemeral_1h_input_tokens: Option<u64>,
}

// === OpenAI usage ===

/// The fields of an OpenAI chunk the meter reads.
#[derive(Deserialize)]
struct OpenAiChunk<'a> {
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
    choices: Option<Vec<IgnoredAny>>,
    usage: Option<OpenAiUsage>,
    error: Option<ErrorField>,
}

#[derive(Deserialize)]
struct OpenAiUsage {
    #[serde(default, deserialize_with = "lenient_u64")]
    prompt_tokens: Option<u64>,
    #[serde(default, deserialize_with = "lenient_u64")]
    completion_tokens: Option<u64>,
    prompt_tokens_details: Option<PromptTokensDetails>,
    /// OpenRouter: what it charged, in USD.
    #[serde(default, deserialize_with = "lenient_cost")]
    cost: Option<u64>,
}

#[derive(Deserialize)]
struct PromptTokensDetails {
    #[serde(default, deserialize_with = "lenient_u64")]
    cached_tokens: Option<u64>,
    #[serde(default, deserialize_with = "lenient_u64")]
    cache_write_tokens: Option<u64>,
}

impl OpenAiUsage {
    fn usage(&self) -> Usage {
        let details = self.prompt_tokens_details.as_ref();
        let cached = details.and_then(|d| d.cached_tokens).unwrap_or(0);
        let written = details.and_then(|d| d.cache_write_tokens).unwrap_or(0);
        Usage {
            // `prompt_tokens` counts cache reads and (OpenRouter) cache writes too.
            input_tokens: self
                .prompt_tokens
                .unwrap_or(0)
                .saturating_sub(cached)
                .saturating_sub(written),
            output_tokens: self.completion_tokens.unwrap_or(0),
            cache_creation_input_tokens: written,
            cache_creation_1h_input_tokens: 0,
            cache_read_input_tokens: cached,
            reported_cost_nusd: self.cost,
        }
    }
}

/// A non-streamed body: `id`, `model` and `usage` in both dialects.
#[derive(Deserialize)]
struct JsonBody<'a, U> {
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
    usage: Option<U>,
}

// === Errors ===

#[derive(Deserialize)]
struct ErrorEvent {
    error: Option<ErrorField>,
}

/// The value of an `error` key: normally an object; anything else still
/// counts as an error.
#[derive(Deserialize)]
#[serde(untagged)]
enum ErrorField {
    Object(ErrorObject),
    Other(IgnoredAny),
}

#[derive(Deserialize)]
struct ErrorObject {
    #[serde(rename = "type")]
    kind: Option<String>,
    code: Option<ErrorCode>,
    metadata: Option<ErrorMetadata>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ErrorCode {
    Text(String),
    Number(serde_json::Number),
    Other(IgnoredAny),
}

#[derive(Deserialize)]
struct ErrorMetadata {
    error_type: Option<String>,
}

impl ErrorField {
    fn kind(self) -> String {
        let ErrorField::Object(e) = self else {
            return "error".to_owned();
        };
        let non_empty = |s: Option<String>| s.filter(|s| !s.is_empty());
        let (text_code, number_code) = match e.code {
            Some(ErrorCode::Text(s)) => (non_empty(Some(s)), None),
            Some(ErrorCode::Number(n)) => (None, Some(n.to_string())),
            Some(ErrorCode::Other(_)) | None => (None, None),
        };
        non_empty(e.kind)
            .or(text_code)
            .or_else(|| non_empty(e.metadata.and_then(|m| m.error_type)))
            .or(number_code)
            .unwrap_or_else(|| "error".to_owned())
    }
}

// === Lenient numbers ===

/// A JSON number, or a string holding one; anything else (null, objects…)
/// reads as `None`, so one odd field never loses the rest of the usage.
enum Num {
    Unsigned(u64),
    Signed(i64),
    Float(f64),
}

impl Num {
    fn to_u64(&self) -> Option<u64> {
        match *self {
            Num::Unsigned(u) => Some(u),
            Num::Signed(i) => u64::try_from(i).ok(),
            Num::Float(f) if f.is_finite() && f >= 0.0 && f.fract() == 0.0 && f < 1.8e19 => {
                Some(f as u64)
            }
            Num::Float(_) => None,
        }
    }

    fn to_f64(&self) -> f64 {
        match *self {
            Num::Unsigned(u) => u as f64,
            Num::Signed(i) => i as f64,
            Num::Float(f) => f,
        }
    }
}

struct NumVisitor;

impl<'de> Visitor<'de> for NumVisitor {
    type Value = Option<Num>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Some(Num::Unsigned(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Some(Num::Signed(v)))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Some(Num::Float(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        let v = v.trim();
        Ok(v.parse::<u64>()
            .map(Num::Unsigned)
            .or_else(|_| v.parse::<f64>().map(Num::Float))
            .ok())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(None)
    }
}

fn lenient_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Ok(d.deserialize_any(NumVisitor)?.and_then(|n| n.to_u64()))
}

/// A USD amount (OpenRouter `cost`) as nano-USD.
fn lenient_cost<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Ok(d.deserialize_any(NumVisitor)?
        .and_then(|n| usd_float_to_nusd(n.to_f64())))
}

/// USD as a float → nano-USD, through the float's shortest decimal form, so
/// `0.95` is exactly 950_000_000 (not 949_999_999). Digits past the ninth
/// decimal round half up. `None` for negative, non-finite or too large.
fn usd_float_to_nusd(usd: f64) -> Option<u64> {
    if !usd.is_finite() || usd < 0.0 {
        return None;
    }
    if usd == 0.0 {
        return Some(0);
    }
    // `Display` for f64 is the shortest round-trip form, never exponential.
    let text = usd.to_string();
    let (whole, frac) = text.split_once('.').unwrap_or((&text, ""));
    let mut nusd = whole.parse::<u64>().ok()?.checked_mul(1_000_000_000)?;
    let frac = frac.as_bytes();
    let mut scale = 100_000_000u64;
    for &digit in frac.iter().take(9) {
        nusd = nusd.checked_add(u64::from(digit.checked_sub(b'0')?) * scale)?;
        scale /= 10;
    }
    if frac.get(9).is_some_and(|&d| d >= b'5') {
        nusd = nusd.checked_add(1)?;
    }
    Some(nusd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::sse::tests::{ANTHROPIC_BASIC, ANTHROPIC_TOOL_BLOCKS};

    // --- helpers ---

    /// Feeds `pieces` then finishes; returns the forwarded bytes and the
    /// input length after which `complete()` first held.
    fn run(tap: &mut StreamTap, pieces: &[&[u8]]) -> (Vec<u8>, Option<usize>) {
        let mut out = Vec::new();
        let mut fed = 0;
        let mut completed_at = None;
        for piece in pieces {
            fed += piece.len();
            out.extend_from_slice(&tap.feed(Bytes::copy_from_slice(piece)));
            if tap.complete() && completed_at.is_none() {
                completed_at = Some(fed);
            }
        }
        out.extend_from_slice(&tap.finish());
        (out, completed_at)
    }

    /// All the ways the tests cut a stream: unsplit, every single split
    /// point, byte by byte, and some pseudo-random multi-way splits.
    fn splits(input: &[u8]) -> Vec<Vec<&[u8]>> {
        let mut all = vec![vec![input]];
        for k in 0..=input.len() {
            let (a, b) = input.split_at(k);
            all.push(vec![a, b]);
        }
        all.push(input.chunks(1).collect());
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..100 {
            let mut pieces = Vec::new();
            let mut rest = input;
            while !rest.is_empty() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let n = ((seed % 40) as usize).min(rest.len());
                let (a, b) = rest.split_at(n);
                pieces.push(a);
                rest = b;
            }
            all.push(pieces);
        }
        all
    }

    fn usage(input: u64, output: u64, write: u64, write_1h: u64, read: u64) -> Usage {
        Usage {
            input_tokens: input,
            output_tokens: output,
            cache_creation_input_tokens: write,
            cache_creation_1h_input_tokens: write_1h,
            cache_read_input_tokens: read,
            reported_cost_nusd: None,
        }
    }

    fn sse(events: &[(&str, &str)]) -> String {
        events
            .iter()
            .map(|(name, data)| format!("event: {name}\ndata: {data}\n\n"))
            .collect()
    }

    // --- Anthropic ---

    #[test]
    fn anthropic_basic_at_every_split() {
        let input = ANTHROPIC_BASIC.as_bytes();
        for pieces in splits(input) {
            let mut tap = StreamTap::new(Dialect::Anthropic, false);
            let (out, completed_at) = run(&mut tap, &pieces);
            assert_eq!(out, input);
            assert_eq!(tap.usage(), usage(11, 6, 0, 0, 0));
            assert!(tap.saw_usage());
            assert_eq!(
                completed_at,
                Some(input.len()),
                "complete only at message_stop's end"
            );
            assert_eq!(tap.model(), Some("claude-sonnet-4-5-20250929"));
            assert_eq!(
                tap.response_id(),
                Some("msg_4QpJur2dWWDjF6C758FbBw5vm12BaVipnK")
            );
            assert_eq!(tap.error(), None);
        }
    }

    #[test]
    fn anthropic_feed_is_zero_copy_and_strip_is_ignored() {
        let mut tap = StreamTap::new(Dialect::Anthropic, true);
        let chunk = Bytes::from_static(ANTHROPIC_BASIC.as_bytes());
        let (head, tail) = (chunk.slice(..100), chunk.slice(100..));
        let out = tap.feed(head.clone());
        assert_eq!(out.as_ptr(), head.as_ptr());
        assert_eq!(out.len(), head.len());
        let out = tap.feed(tail.clone());
        assert_eq!((out.as_ptr(), out.len()), (tail.as_ptr(), tail.len()));
        assert!(tap.finish().is_empty());
        assert!(tap.complete());
    }

    #[test]
    fn anthropic_message_start_alone_and_input_overrides() {
        // Stream cut before message_delta: the message_start counts stand.
        let start_end = ANTHROPIC_BASIC.find("event: content_block_start").unwrap();
        let mut tap = StreamTap::new(Dialect::Anthropic, false);
        tap.feed(Bytes::from_static(&ANTHROPIC_BASIC.as_bytes()[..start_end]));
        assert_eq!(tap.usage(), usage(11, 1, 0, 0, 0));
        assert!(tap.saw_usage() && !tap.complete());

        // The tool-use variant's message_delta repeats input/cache counts.
        let stream = format!("{}{}", &ANTHROPIC_BASIC[..start_end], ANTHROPIC_TOOL_BLOCKS);
        for pieces in splits(stream.as_bytes()) {
            let mut tap = StreamTap::new(Dialect::Anthropic, false);
            let (out, completed_at) = run(&mut tap, &pieces);
            assert_eq!(out, stream.as_bytes());
            assert_eq!(tap.usage(), usage(377, 65, 0, 0, 0));
            assert_eq!(completed_at, None, "no message_stop");
        }
    }

    #[test]
    fn anthropic_usage_is_cumulative_last_value_wins() {
        let stream = sse(&[
            (
                "message_start",
                r#"{"type":"message_start","message":{"id":"msg_1","model":"claude-opus-4-8","usage":{"input_tokens":50,"cache_creation_input_tokens":400,"cache_read_input_tokens":1000,"cache_creation":{"ephemeral_5m_input_tokens":100,"ephemeral_1h_input_tokens":300},"output_tokens":1}}}"#,
            ),
            ("ping", r#"{"type": "ping"}"#),
            (
                "message_delta",
                r#"{"type":"message_delta","delta":{},"usage":{"output_tokens":10}}"#,
            ),
            (
                "message_delta",
                r#"{"type":"message_delta","delta":{},"usage":{"output_tokens":25,"input_tokens":null,"cache_read_input_tokens":1200}}"#,
            ),
            ("message_stop", r#"{"type":"message_stop"}"#),
        ]);
        for pieces in splits(stream.as_bytes()) {
            let mut tap = StreamTap::new(Dialect::Anthropic, false);
            run(&mut tap, &pieces);
            assert_eq!(tap.usage(), usage(50, 25, 400, 300, 1200));
            assert!(tap.complete());
            assert_eq!(tap.model(), Some("claude-opus-4-8"));
            assert_eq!(tap.response_id(), Some("msg_1"));
        }
    }

    #[test]
    fn anthropic_cache_breakdown_rules() {
        let run_one = |start_usage: &str, delta_usage: &str| {
            let stream = sse(&[
                (
                    "message_start",
                    &format!(
                        r#"{{"type":"message_start","message":{{"id":"m","model":"x","usage":{start_usage}}}}}"#
                    ),
                ),
                (
                    "message_delta",
                    &format!(r#"{{"type":"message_delta","delta":{{}},"usage":{delta_usage}}}"#),
                ),
            ]);
            let mut tap = StreamTap::new(Dialect::Anthropic, false);
            tap.feed(Bytes::from(stream));
            tap.usage()
        };
        // No breakdown: all writes at 5 m.
        assert_eq!(
            run_one(
                r#"{"input_tokens":5,"cache_creation_input_tokens":700,"output_tokens":1}"#,
                r#"{"output_tokens":2}"#
            ),
            usage(5, 2, 700, 0, 0)
        );
        // Breakdown in message_delta overrides message_start's.
        assert_eq!(
            run_one(
                r#"{"input_tokens":5,"cache_creation_input_tokens":700,"cache_creation":{"ephemeral_5m_input_tokens":700,"ephemeral_1h_input_tokens":0},"output_tokens":1}"#,
                r#"{"output_tokens":2,"cache_creation_input_tokens":900,"cache_creation":{"ephemeral_5m_input_tokens":100,"ephemeral_1h_input_tokens":800}}"#
            ),
            usage(5, 2, 900, 800, 0)
        );
        // Breakdown without a total: the total is its sum.
        assert_eq!(
            run_one(
                r#"{"input_tokens":5,"cache_creation":{"ephemeral_5m_input_tokens":10,"ephemeral_1h_input_tokens":20},"output_tokens":1}"#,
                r#"{"output_tokens":2}"#
            ),
            usage(5, 2, 30, 20, 0)
        );
        // Odd values do not lose the rest: a float count, a string, an object.
        assert_eq!(
            run_one(
                r#"{"input_tokens":5.0,"cache_read_input_tokens":"7","cache_creation_input_tokens":{"x":1},"output_tokens":1}"#,
                r#"{"output_tokens":2}"#
            ),
            usage(5, 2, 0, 0, 7)
        );
    }

    #[test]
    fn anthropic_mid_stream_error() {
        let start_end = ANTHROPIC_BASIC.find("event: content_block_start").unwrap();
        let stream = format!(
            "{}event: error\ndata: {{\"type\": \"error\", \"error\": {{\"type\": \"overloaded_error\", \"message\": \"Overloaded\"}}}}\n\n",
            &ANTHROPIC_BASIC[..start_end]
        );
        for pieces in splits(stream.as_bytes()) {
            let mut tap = StreamTap::new(Dialect::Anthropic, false);
            run(&mut tap, &pieces);
            assert_eq!(tap.error(), Some("overloaded_error"));
            assert!(!tap.complete());
            assert_eq!(tap.usage(), usage(11, 1, 0, 0, 0));
        }
        let mut tap = StreamTap::new(Dialect::Anthropic, false);
        tap.feed(Bytes::from_static(b"event: error\ndata: not json\n\n"));
        assert_eq!(tap.error(), Some("error"));
    }

    #[test]
    fn anthropic_ignores_unnamed_and_unknown_events() {
        let stream = concat!(
            "data: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":9}}}\n\n",
            "event: future_event\ndata: {\"usage\":{\"input_tokens\":9}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"message_stop\"}\n\n",
            "data: [DONE]\n\n",
        );
        let mut tap = StreamTap::new(Dialect::Anthropic, false);
        tap.feed(Bytes::from_static(stream.as_bytes()));
        assert!(!tap.saw_usage() && !tap.complete());
        assert_eq!(tap.usage(), Usage::default());
    }

    #[test]
    fn openrouter_messages_cost() {
        let stream = sse(&[
            (
                "message_start",
                r#"{"type":"message_start","message":{"id":"gen-1","model":"anthropic/claude-haiku-4.5","usage":{"input_tokens":3,"output_tokens":1}}}"#,
            ),
            (
                "message_delta",
                r#"{"type":"message_delta","delta":{},"usage":{"output_tokens":4,"cost":0.0012}}"#,
            ),
            ("message_stop", r#"{"type":"message_stop"}"#),
        ]);
        let mut tap = StreamTap::new(Dialect::Anthropic, false);
        tap.feed(Bytes::from(stream));
        assert_eq!(tap.usage().reported_cost_nusd, Some(1_200_000));
        assert_eq!(tap.response_id(), Some("gen-1"));
    }

    // --- OpenAI ---

    const OPENAI_HEAD: &str = concat!(
        "data: {\"id\":\"chatcmpl-ABfw031mOJeYCSHe4yI2ZjOA6kMJL\",\"object\":\"chat.completion.chunk\",\"created\":1727346168,\"model\":\"gpt-4o-2024-08-06\",\"system_fingerprint\":\"fp_5050236cbd\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null},\"logprobs\":null,\"finish_reason\":null}]}\n",
        "\n",
        "data: {\"id\":\"chatcmpl-ABfw031mOJeYCSHe4yI2ZjOA6kMJL\",\"object\":\"chat.completion.chunk\",\"created\":1727346168,\"model\":\"gpt-4o-2024-08-06\",\"system_fingerprint\":\"fp_5050236cbd\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"logprobs\":null,\"finish_reason\":null}]}\n",
        "\n",
        "data: {\"id\":\"chatcmpl-ABfw031mOJeYCSHe4yI2ZjOA6kMJL\",\"object\":\"chat.completion.chunk\",\"created\":1727346168,\"model\":\"gpt-4o-2024-08-06\",\"system_fingerprint\":\"fp_5050236cbd\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}]}\n",
        "\n",
    );
    const OPENAI_USAGE: &str = "data: {\"id\":\"chatcmpl-ABfw031mOJeYCSHe4yI2ZjOA6kMJL\",\"object\":\"chat.completion.chunk\",\"created\":1727346168,\"model\":\"gpt-4o-2024-08-06\",\"system_fingerprint\":\"fp_5050236cbd\",\"choices\":[],\"usage\":{\"prompt_tokens\":14,\"completion_tokens\":30,\"total_tokens\":44,\"completion_tokens_details\":{\"reasoning_tokens\":0}}}\n\n";
    const OPENAI_DONE: &str = "data: [DONE]\n\n";

    fn openai_stream() -> String {
        format!("{OPENAI_HEAD}{OPENAI_USAGE}{OPENAI_DONE}")
    }

    #[test]
    fn openai_strip_removes_exactly_the_usage_chunk_at_every_split() {
        let input = openai_stream();
        let expected = format!("{OPENAI_HEAD}{OPENAI_DONE}");
        for pieces in splits(input.as_bytes()) {
            let mut tap = StreamTap::new(Dialect::OpenAi, true);
            let (out, completed_at) = run(&mut tap, &pieces);
            assert_eq!(String::from_utf8(out).unwrap(), expected);
            assert_eq!(tap.usage(), usage(14, 30, 0, 0, 0));
            assert_eq!(completed_at, Some(input.len()));
            assert_eq!(tap.model(), Some("gpt-4o-2024-08-06"));
            assert_eq!(
                tap.response_id(),
                Some("chatcmpl-ABfw031mOJeYCSHe4yI2ZjOA6kMJL")
            );
        }
    }

    #[test]
    fn openai_strip_with_crlf_and_cr() {
        for ending in ["\r\n", "\r"] {
            let input = openai_stream().replace('\n', ending);
            let expected = format!("{OPENAI_HEAD}{OPENAI_DONE}").replace('\n', ending);
            for pieces in splits(input.as_bytes()) {
                let mut tap = StreamTap::new(Dialect::OpenAi, true);
                let (out, _) = run(&mut tap, &pieces);
                assert_eq!(String::from_utf8(out).unwrap(), expected, "{ending:?}");
                assert_eq!(tap.usage(), usage(14, 30, 0, 0, 0));
                assert!(tap.complete());
            }
        }
    }

    #[test]
    fn openai_strip_forwards_complete_events_at_once() {
        let input = openai_stream();
        let second = OPENAI_HEAD.find("\n\n").unwrap() + 2;
        let mut tap = StreamTap::new(Dialect::OpenAi, true);
        // The first event plus a few bytes of the second.
        let out = tap.feed(Bytes::copy_from_slice(&input.as_bytes()[..second + 7]));
        assert_eq!(out, input.as_bytes()[..second]);
        // The head, then the usage chunk in full: nothing more to send yet.
        let usage_end = OPENAI_HEAD.len() + OPENAI_USAGE.len();
        let out = tap.feed(Bytes::copy_from_slice(
            &input.as_bytes()[second + 7..usage_end],
        ));
        assert_eq!(out, input.as_bytes()[second..OPENAI_HEAD.len()]);
        assert!(tap.saw_usage() && !tap.complete());
        let out = tap.feed(Bytes::copy_from_slice(&input.as_bytes()[usage_end..]));
        assert_eq!(out, OPENAI_DONE.as_bytes());
        assert!(tap.complete());
        assert!(tap.finish().is_empty());
    }

    #[test]
    fn openai_without_strip_is_identical_and_zero_copy() {
        let input = Bytes::from(openai_stream());
        for k in 0..=input.len() {
            let mut tap = StreamTap::new(Dialect::OpenAi, false);
            let mut out = Vec::new();
            for piece in [input.slice(..k), input.slice(k..)] {
                let fwd = tap.feed(piece.clone());
                assert_eq!((fwd.as_ptr(), fwd.len()), (piece.as_ptr(), piece.len()));
                out.extend_from_slice(&fwd);
            }
            assert!(tap.finish().is_empty());
            assert_eq!(out, input);
            assert_eq!(tap.usage(), usage(14, 30, 0, 0, 0));
            assert!(tap.complete());
        }
    }

    #[test]
    fn openai_incomplete_trailing_event_is_forwarded_by_finish() {
        let input = format!("{OPENAI_HEAD}data: {{\"id\":\"x\",\"choi");
        for pieces in splits(input.as_bytes()) {
            let mut tap = StreamTap::new(Dialect::OpenAi, true);
            let (out, completed_at) = run(&mut tap, &pieces);
            assert_eq!(out, input.as_bytes());
            assert_eq!(completed_at, None);
            assert!(!tap.saw_usage());
        }
    }

    #[test]
    fn openai_usage_with_choices_is_not_stripped_and_nulls_are_skipped() {
        let input = concat!(
            "data: {\"id\":\"c1\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"say \\\"usage\\\": 5\"}}],\"usage\":null}\n\n",
            "data: {\"id\":\"c1\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\" : {\"prompt_tokens\":20,\"completion_tokens\":3,\"prompt_tokens_details\":{\"cached_tokens\":8}}}\n\n",
            "data: [DONE]\n\n",
        );
        let mut tap = StreamTap::new(Dialect::OpenAi, true);
        let (out, _) = run(&mut tap, &[input.as_bytes()]);
        assert_eq!(out, input.as_bytes());
        assert_eq!(tap.usage(), usage(12, 3, 0, 0, 8));
    }

    #[test]
    fn key_prefilter() {
        let f = KeyFinders::new();
        assert!(f.has_usage(br#"{"choices":[],"usage":{"prompt_tokens":1}}"#));
        assert!(f.has_usage(br#"{"usage" :  {}}"#));
        assert!(!f.has_usage(br#"{"choices":[],"usage":null}"#));
        assert!(!f.has_usage(br#"{"usage" : null}"#));
        assert!(!f.has_usage(br#"{"delta":{"content":"\"usage\": 1"}}"#));
        assert!(!f.has_usage(br#"{"delta":{"content":"usage"}}"#));
        assert!(f.has_error(br#"{"error":{"code":429},"choices":[]}"#));
        assert!(!f.has_error(br#"{"choices":[{"finish_reason":"error"}]}"#));
        assert!(!f.has_error(br#"{"error":null}"#));
    }

    const OPENROUTER_USAGE: &str = r#"{"prompt_tokens":194,"completion_tokens":2,"total_tokens":196,"prompt_tokens_details":{"cached_tokens":0,"cache_write_tokens":100,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0},"cost":0.95,"is_byok":false,"cost_details":{"upstream_inference_cost":null,"upstream_inference_prompt_cost":0.0008,"upstream_inference_completions_cost":0.0004}}"#;

    fn openrouter_expected() -> Usage {
        Usage {
            reported_cost_nusd: Some(950_000_000),
            ..usage(94, 2, 100, 0, 0)
        }
    }

    #[test]
    fn openrouter_cost_comments_and_strip() {
        let head = concat!(
            ": OPENROUTER PROCESSING\n\n",
            ": OPENROUTER PROCESSING\n\n",
            "data: {\"id\":\"gen-abc123\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"anthropic/claude-haiku-4.5\",\"provider\":\"Anthropic\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hi\"},\"finish_reason\":null}]}\n\n",
            ": OPENROUTER PROCESSING\n\n",
            "data: {\"id\":\"gen-abc123\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"anthropic/claude-haiku-4.5\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
            ": OPENROUTER PROCESSING\n",
        );
        let usage_chunk = format!(
            "data: {{\"id\":\"gen-abc123\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"anthropic/claude-haiku-4.5\",\"choices\":[],\"usage\":{OPENROUTER_USAGE}}}\n\n"
        );
        let input = format!("{head}{usage_chunk}{OPENAI_DONE}");
        let expected = format!("{head}{OPENAI_DONE}");
        for pieces in splits(input.as_bytes()) {
            let mut tap = StreamTap::new(Dialect::OpenAi, true);
            let (out, completed_at) = run(&mut tap, &pieces);
            assert_eq!(String::from_utf8(out).unwrap(), expected);
            assert_eq!(tap.usage(), openrouter_expected());
            assert_eq!(completed_at, Some(input.len()));
            assert_eq!(tap.response_id(), Some("gen-abc123"));
            assert_eq!(tap.model(), Some("anthropic/claude-haiku-4.5"));

            let mut tap = StreamTap::new(Dialect::OpenAi, false);
            let (out, _) = run(&mut tap, &pieces);
            assert_eq!(out, input.as_bytes());
            assert_eq!(tap.usage(), openrouter_expected());
        }
    }

    #[test]
    fn openrouter_mid_stream_error() {
        let input = concat!(
            "data: {\"id\":\"gen-abc123\",\"object\":\"chat.completion.chunk\",\"created\":1234567890,\"model\":\"openai/gpt-4o\",\"provider\":\"OpenAI\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"},\"finish_reason\":null}]}\n\n",
            ": OPENROUTER PROCESSING\n\n",
            "data: {\"id\":\"gen-abc123\",\"object\":\"chat.completion.chunk\",\"created\":1234567890,\"model\":\"openai/gpt-4o\",\"provider\":\"OpenAI\",\"error\":{\"code\":429,\"message\":\"Rate limit exceeded\",\"metadata\":{\"error_type\":\"rate_limit_exceeded\"}},\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\"},\"finish_reason\":\"error\"}]}\n\n",
        );
        for pieces in splits(input.as_bytes()) {
            let mut tap = StreamTap::new(Dialect::OpenAi, true);
            let (out, completed_at) = run(&mut tap, &pieces);
            assert_eq!(out, input.as_bytes());
            assert_eq!(tap.error(), Some("rate_limit_exceeded"));
            assert_eq!(completed_at, None);
            assert_eq!(tap.response_id(), Some("gen-abc123"));
        }
        let kind = |chunk: &str| {
            let mut tap = StreamTap::new(Dialect::OpenAi, false);
            tap.feed(Bytes::from(format!(
                "data: {{\"id\":\"x\",\"choices\":[]}}\n\ndata: {chunk}\n\n"
            )));
            tap.error().map(str::to_owned)
        };
        assert_eq!(
            kind(r#"{"error":{"message":"x","code":"server_error"}}"#).as_deref(),
            Some("server_error")
        );
        assert_eq!(
            kind(r#"{"error":{"type":"server_error","code":"boom"}}"#).as_deref(),
            Some("server_error")
        );
        assert_eq!(
            kind(r#"{"error":{"code":502,"message":"down"}}"#).as_deref(),
            Some("502")
        );
        assert_eq!(
            kind(r#"{"error":{"message":"?"}}"#).as_deref(),
            Some("error")
        );
        assert_eq!(kind(r#"{"error":"plain text"}"#).as_deref(), Some("error"));
        assert_eq!(kind(r#"{"error":null,"choices":[]}"#), None);
    }

    // --- usage_from_json ---

    #[test]
    fn json_anthropic_message() {
        let body = r#"{
          "id": "msg_019Q1hrJbZG26Fb9BQhrkHEr", "type": "message", "role": "assistant",
          "model": "claude-sonnet-4-5-20250929",
          "content": [
            {"type": "thinking", "thinking": "…", "signature": "EqQB…"},
            {"type": "text", "text": "Hi!", "citations": null},
            {"type": "tool_use", "id": "toolu_01NRLabsLyVHZPKxbKvkfSMn", "name": "get_weather", "input": {"location": "Paris"}}
          ],
          "stop_reason": "end_turn", "stop_sequence": null, "stop_details": null, "container": null,
          "usage": {
            "input_tokens": 28, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
            "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
            "output_tokens": 106, "output_tokens_details": {"thinking_tokens": 67},
            "server_tool_use": {"web_search_requests": 0, "web_fetch_requests": 0},
            "service_tier": "standard", "inference_geo": "global"
          }
        }"#;
        let summary = usage_from_json(Dialect::Anthropic, body.as_bytes()).unwrap();
        assert_eq!(
            summary,
            JsonSummary {
                usage: usage(28, 106, 0, 0, 0),
                model: Some("claude-sonnet-4-5-20250929".into()),
                id: Some("msg_019Q1hrJbZG26Fb9BQhrkHEr".into()),
            }
        );
        let cached = r#"{"id":"m","model":"x","usage":{"input_tokens":3,"output_tokens":4,"cache_creation_input_tokens":500,"cache_read_input_tokens":60,"cache_creation":{"ephemeral_5m_input_tokens":200,"ephemeral_1h_input_tokens":300}}}"#;
        let summary = usage_from_json(Dialect::Anthropic, cached.as_bytes()).unwrap();
        assert_eq!(summary.usage, usage(3, 4, 500, 300, 60));
        let error =
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        assert_eq!(usage_from_json(Dialect::Anthropic, error.as_bytes()), None);
        assert_eq!(usage_from_json(Dialect::Anthropic, b"not json"), None);
    }

    #[test]
    fn json_openai_and_openrouter() {
        let body = r#"{"id":"chatcmpl-ABfw031mOJeYCSHe4yI2ZjOA6kMJL","object":"chat.completion","created":1727346168,"model":"gpt-4o-2024-08-06",
 "system_fingerprint":"fp_5050236cbd","service_tier":"default",
 "choices":[{"index":0,"message":{"role":"assistant","content":"Hi","refusal":null,"tool_calls":null},"logprobs":null,"finish_reason":"stop"}],
 "usage":{"prompt_tokens":14,"completion_tokens":30,"total_tokens":44,
          "prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},
          "completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}"#;
        let summary = usage_from_json(Dialect::OpenAi, body.as_bytes()).unwrap();
        assert_eq!(
            summary,
            JsonSummary {
                usage: usage(14, 30, 0, 0, 0),
                model: Some("gpt-4o-2024-08-06".into()),
                id: Some("chatcmpl-ABfw031mOJeYCSHe4yI2ZjOA6kMJL".into()),
            }
        );
        let cached = r#"{"usage":{"prompt_tokens":100,"completion_tokens":5,"prompt_tokens_details":{"cached_tokens":64}}}"#;
        let summary = usage_from_json(Dialect::OpenAi, cached.as_bytes()).unwrap();
        assert_eq!(summary.usage, usage(36, 5, 0, 0, 64));
        assert_eq!((summary.model, summary.id), (None, None));

        let openrouter = format!(
            r#"{{"id":"gen-1","provider":"Anthropic","model":"anthropic/claude-haiku-4.5","choices":[],"usage":{OPENROUTER_USAGE}}}"#
        );
        let summary = usage_from_json(Dialect::OpenAi, openrouter.as_bytes()).unwrap();
        assert_eq!(summary.usage, openrouter_expected());
        assert_eq!(summary.id.as_deref(), Some("gen-1"));

        let error = r#"{"error":{"code":402,"message":"Insufficient credits","metadata":{"error_type":"payment_required"}}}"#;
        assert_eq!(usage_from_json(Dialect::OpenAi, error.as_bytes()), None);
    }

    #[test]
    fn usd_to_nano_usd() {
        assert_eq!(usd_float_to_nusd(0.95), Some(950_000_000));
        assert_eq!(usd_float_to_nusd(0.0008), Some(800_000));
        assert_eq!(usd_float_to_nusd(0.1 + 0.2), Some(300_000_000));
        assert_eq!(usd_float_to_nusd(1.5), Some(1_500_000_000));
        assert_eq!(usd_float_to_nusd(123.456_789_012), Some(123_456_789_012));
        assert_eq!(usd_float_to_nusd(1e-9), Some(1));
        assert_eq!(usd_float_to_nusd(1e-10), Some(0));
        assert_eq!(usd_float_to_nusd(5e-10), Some(1));
        assert_eq!(usd_float_to_nusd(4.9e-10), Some(0));
        assert_eq!(usd_float_to_nusd(0.000_000_001_5), Some(2));
        assert_eq!(usd_float_to_nusd(0.0), Some(0));
        assert_eq!(usd_float_to_nusd(-0.0), Some(0));
        assert_eq!(
            usd_float_to_nusd(18_000_000_000.0),
            Some(18_000_000_000_000_000_000)
        );
        assert_eq!(usd_float_to_nusd(19_000_000_000.0), None);
        assert_eq!(usd_float_to_nusd(-0.01), None);
        assert_eq!(usd_float_to_nusd(f64::NAN), None);
        assert_eq!(usd_float_to_nusd(f64::INFINITY), None);
    }
}
