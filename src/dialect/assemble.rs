//! The assembler driver: folds a provider's SSE stream into the complete
//! message its non-streaming API would have returned (following the official
//! Python SDKs' stream accumulators), so one canonical message can be cached
//! whatever the request's `stream` flag was. Each dialect's accumulator lives
//! in its own folder (`anthropic/assemble.rs`, `openai/assemble.rs`).
//!
//! Open-ended parts are `serde_json::Value` (unknown fields are kept, never
//! dropped); appends are amortised O(1).

use super::json::Fail;
use super::{anthropic, openai, Dialect};

// ---------------------------------------------------------------------------------------
// Assembler
// ---------------------------------------------------------------------------------------

/// Builds the complete message out of a stream's SSE events, fed one at a time
/// (event name — `""` for data-only OpenAI events — and the event's data string).
///
/// Assembly is all-or-nothing: anything it does not understand (an unknown Anthropic delta
/// type, malformed JSON, an error event or chunk, events out of order) makes it give up,
/// and [`Assembler::finish`] then returns `None`, so nothing half-understood gets cached.
pub struct Assembler {
    max_bytes: usize,
    /// Running estimate of the assembled size, for giving up early; `finish` checks exactly.
    size: usize,
    failed: bool,
    complete: bool,
    inner: Inner,
}

enum Inner {
    Anthropic(anthropic::assemble::Accumulator),
    OpenAi(openai::assemble::Accumulator),
    /// A Responses stream: its terminal `response.completed` event carries
    /// the whole response.
    Responses(Option<serde_json::Value>),
}

impl Assembler {
    /// A new assembler for one stream.
    ///
    /// `max_bytes`: give up (finish() returns None) once the assembled content would exceed
    /// this. While streaming, a running lower bound of the message size (appended text plus
    /// the JSON size of structural pieces) makes it give up early and free its buffers;
    /// `finish` then checks the exact encoded size.
    #[must_use]
    pub fn new(dialect: Dialect, max_bytes: usize) -> Self {
        Self {
            max_bytes,
            size: 0,
            failed: false,
            complete: false,
            inner: Inner::empty(dialect),
        }
    }

    /// An assembler for a Responses API stream.
    #[must_use]
    pub fn responses(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            size: 0,
            failed: false,
            complete: false,
            inner: Inner::Responses(None),
        }
    }

    /// Feeds one SSE event. Events after the stream completed or after assembly failed are
    /// ignored, so the caller can keep feeding without checking.
    pub fn on_event(&mut self, name: &str, data: &str) {
        if self.failed || self.complete {
            return;
        }
        let step = match &mut self.inner {
            Inner::Anthropic(acc) => acc.on_event(name, data, &mut self.size),
            Inner::OpenAi(acc) => acc.on_event(data, &mut self.size),
            Inner::Responses(slot) => responses_step(slot, name, data, &mut self.size),
        };
        match step {
            Ok(done) if self.size <= self.max_bytes => self.complete = done,
            _ => {
                self.failed = true;
                // Release what was buffered: a failed assembly may live on for the rest of
                // a long stream.
                self.inner = self.inner.emptied();
            }
        }
    }

    /// Whether assembly is still possible (not failed/over size). Cheap.
    #[must_use]
    pub fn viable(&self) -> bool {
        !self.failed
    }

    /// The complete message as compact JSON bytes, or None when the stream was not
    /// complete (Anthropic: no `message_stop`; OpenAI: no `[DONE]`), carried an `error`
    /// event / error chunk, had malformed JSON, or exceeded max_bytes.
    #[must_use]
    pub fn finish(self) -> Option<Vec<u8>> {
        if self.failed || !self.complete {
            return None;
        }
        let message = match self.inner {
            Inner::Anthropic(acc) => acc.finish()?,
            Inner::OpenAi(acc) => acc.finish()?,
            Inner::Responses(response) => response?,
        };
        let bytes = serde_json::to_vec(&message).ok()?;
        (bytes.len() <= self.max_bytes).then_some(bytes)
    }
}

impl Inner {
    fn emptied(&self) -> Self {
        match self {
            Inner::Responses(_) => Inner::Responses(None),
            other => Inner::empty(other.dialect()),
        }
    }

    fn empty(dialect: Dialect) -> Self {
        match dialect {
            Dialect::Anthropic => Inner::Anthropic(anthropic::assemble::Accumulator::default()),
            Dialect::OpenAi => Inner::OpenAi(openai::assemble::Accumulator::default()),
        }
    }

    fn dialect(&self) -> Dialect {
        match self {
            Inner::Anthropic(_) => Dialect::Anthropic,
            Inner::OpenAi(_) | Inner::Responses(_) => Dialect::OpenAi,
        }
    }
}

/// One event of a Responses stream: done at a completed terminal event
/// (which holds the whole response); an incomplete or failed one, or an
/// error, is not cacheable.
fn responses_step(
    slot: &mut Option<serde_json::Value>,
    name: &str,
    data: &str,
    size: &mut usize,
) -> Result<bool, Fail> {
    match name {
        "response.completed" => {
            let mut event: serde_json::Value = serde_json::from_str(data).map_err(|_| Fail)?;
            let response = event.get_mut("response").map(serde_json::Value::take);
            let ok = response
                .as_ref()
                .and_then(serde_json::Value::as_object)
                .is_some_and(openai::responses::completed);
            if !ok {
                return Err(Fail);
            }
            *size += data.len();
            *slot = response;
            Ok(true)
        }
        "response.incomplete" | "response.failed" | "error" => Err(Fail),
        _ => Ok(false),
    }
}
