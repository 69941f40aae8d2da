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

use bytes::{Bytes, BytesMut};

use super::sse::SseParser;
pub use super::usage::JsonSummary;
use super::usage::{StreamFacts, Usage};
use super::{anthropic, openai, Dialect};

/// Reads a non-streamed JSON response body. `None` when the body is not a
/// JSON object with a `usage` object (an error body, for instance).
pub fn usage_from_json(dialect: Dialect, body: &[u8]) -> Option<JsonSummary> {
    match dialect {
        Dialect::Anthropic => anthropic::usage::from_json(body),
        Dialect::OpenAi => openai::usage::from_json(body),
    }
}

/// The dialect's reader of a stream's events.
#[derive(Debug)]
enum Meter {
    Anthropic(anthropic::stream::Meter),
    OpenAi(openai::stream::Meter),
    /// OpenAI's Responses API: named events, usage in the terminal one.
    Responses(openai::responses::Meter),
}

impl Meter {
    fn new(dialect: Dialect) -> Self {
        match dialect {
            Dialect::Anthropic => Meter::Anthropic(anthropic::stream::Meter::default()),
            Dialect::OpenAi => Meter::OpenAi(openai::stream::Meter::new()),
        }
    }

    fn usage(&self) -> Usage {
        match self {
            Meter::Anthropic(m) => m.usage(),
            Meter::OpenAi(m) => m.usage(),
            Meter::Responses(m) => m.usage(),
        }
    }

    /// Handles one event; returns whether it is a usage-only chunk (one the
    /// client may not have asked for).
    fn on_event(&mut self, name: &str, data: &str, facts: &mut StreamFacts) -> bool {
        match self {
            Meter::Anthropic(m) => {
                m.on_event(name, data, facts);
                false
            }
            Meter::OpenAi(m) => m.on_event(data, facts),
            Meter::Responses(m) => {
                m.on_event(name, data, facts);
                false
            }
        }
    }
}

/// Taps one streamed response: see the module docs.
#[derive(Debug)]
pub struct StreamTap {
    parser: SseParser,
    meter: Meter,
    facts: StreamFacts,
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
        let parser = match dialect {
            Dialect::Anthropic => {
                SseParser::new().with_data_filter(anthropic::stream::reads_data_of)
            }
            // Data-only events: the meter searches each one.
            Dialect::OpenAi => SseParser::new(),
        };
        Self {
            parser,
            meter: Meter::new(dialect),
            facts: StreamFacts::default(),
            strip: strip_usage_chunk && dialect == Dialect::OpenAi,
            held: BytesMut::new(),
            held_start: 0,
            cuts: Vec::new(),
        }
    }

    /// Taps a Responses API stream (OpenAI dialect; nothing is stripped).
    pub fn responses() -> Self {
        Self {
            parser: SseParser::new().with_data_filter(openai::responses::Meter::reads_data_of),
            meter: Meter::Responses(openai::responses::Meter::default()),
            facts: StreamFacts::default(),
            strip: false,
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
        self.feed_inner(chunk, |_, _| {})
    }

    /// [`StreamTap::feed`], also handing every event (name, data) to
    /// `observe` (the cache assembles the complete message from them). Used
    /// from the first chunk on: until then the data of events the meter
    /// does not read (text deltas) is not kept.
    pub fn feed_with(&mut self, chunk: Bytes, observe: impl FnMut(&str, &str)) -> Bytes {
        self.parser.keep_all_data();
        self.feed_inner(chunk, observe)
    }

    fn feed_inner(&mut self, chunk: Bytes, mut observe: impl FnMut(&str, &str)) -> Bytes {
        let chunk_start = self.parser.offset();
        let meter = &mut self.meter;
        let facts = &mut self.facts;
        let cuts = &mut self.cuts;
        let strip = self.strip;
        self.parser.feed(&chunk, |ev| {
            observe(ev.name, ev.data);
            if meter.on_event(ev.name, ev.data, facts) && strip {
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
        let facts = &mut self.facts;
        let cuts = &mut self.cuts;
        let strip = self.strip;
        self.parser.finish(|ev| {
            observe(ev.name, ev.data);
            if meter.on_event(ev.name, ev.data, facts) && strip {
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

    /// Content events seen: a lower bound of the output tokens.
    pub fn deltas(&self) -> u64 {
        self.facts.deltas
    }

    /// Whether any usage was seen at all.
    pub fn saw_usage(&self) -> bool {
        self.facts.saw_usage
    }

    /// The stream's terminal event was seen (Anthropic `message_stop`;
    /// OpenAI `data: [DONE]`). The proxy checks this after each `feed`,
    /// before forwarding that chunk.
    pub fn complete(&self) -> bool {
        self.facts.complete
    }

    /// The first mid-stream error: Anthropic `event: error` → its
    /// `error.type`; an OpenAI/OpenRouter chunk with an `error` key →
    /// `error.type`, else a string `error.code`, else
    /// `error.metadata.error_type`, else a numeric `error.code`, else `"error"`.
    pub fn error(&self) -> Option<&str> {
        self.facts.error.as_deref()
    }

    /// Anthropic's `usage.iterations[]` as last reported (empty: none).
    pub fn iterations(&self) -> &[super::usage::Iteration] {
        &self.facts.iterations
    }

    /// Anthropic `message_start.message.model`; OpenAI first chunk's `model`.
    pub fn model(&self) -> Option<&str> {
        self.facts.model.as_deref()
    }

    /// Anthropic message id; OpenAI first chunk's `id` (`gen-…` on OpenRouter).
    pub fn response_id(&self) -> Option<&str> {
        self.facts.id.as_deref()
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
