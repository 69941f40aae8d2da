//! Anthropic Messages ⇄ OpenAI Chat Completions: requests, non-streamed
//! responses, streams (event by event) and error bodies, so that a client
//! always receives its own dialect when a route's upstream speaks the other.
//!
//! Each pair is complete: [`request`] turns the client's body into the
//! upstream's, [`response`] turns the upstream's answer back, a
//! [`StreamTranslator`] turns the upstream's SSE events into the client's
//! frames one at a time (memory: one event plus a few counters), and
//! [`error`] turns an upstream error body and status into the client's.
//! The client's dialect names the direction; the upstream speaks the other.
//!
//! # What is kept, dropped or refused
//!
//! A field that cannot be carried is either dropped under a rule below
//! (only fields that change billing, caching or presentation, never the
//! answer's meaning) or refused with [`TranslateError::Untranslatable`], so
//! the router can skip the target instead of sending a different question.
//!
//! Anthropic request → OpenAI request:
//! - `system` (string or text blocks) → a leading `system` message (one text
//!   block as a string, several as text parts). `messages[].content`: `text`
//!   → text parts, `image` (base64 → a `data:` URL; `url`) → `image_url`,
//!   `tool_use` → the assistant's `tool_calls` (input as a JSON string),
//!   `tool_result` → `role: "tool"` messages placed before the rest of the
//!   user turn (text results only). One text block is sent as a string.
//! - `max_tokens` → `max_completion_tokens` for the provider `openai`
//!   (its reasoning models refuse `max_tokens`), else `max_tokens`;
//!   `stop_sequences` → `stop`; `temperature`, `top_p` as is;
//!   `metadata.user_id` → `user`; `stream: true` → also
//!   `stream_options.include_usage: true` (so the answer is metered).
//! - `tools[]` (custom tools) → `function` tools (`input_schema` →
//!   `parameters`, `strict` kept); `tool_choice` auto/any/tool/none →
//!   `auto`/`required`/`{function}`/`none`; `disable_parallel_tool_use` →
//!   `parallel_tool_calls: false`.
//! - `thinking`: `enabled` with `budget_tokens` < 2048 → `reasoning_effort:
//!   "low"`, < 4096 → `"medium"`, else `"high"`; `adaptive` and `disabled`
//!   send no effort (the target's default). `output_config.effort`
//!   low/medium/high → the same `reasoning_effort`; `output_config.format`
//!   (`json_schema`) → `response_format` `json_schema` (strict). A target
//!   model that does not reason refuses `reasoning_effort` itself (400): a
//!   route should give thinking requests reasoning models.
//! - Dropped: `cache_control` everywhere (caching hints: they move tokens
//!   between input and cache in the bill, not the answer), `service_tier`,
//!   `speed`, `diagnostics`, a text block's `citations`, `tool_result.is_error`
//!   (the result's text still says what failed), and `thinking` /
//!   `redacted_thinking` blocks of earlier assistant turns (Chat Completions
//!   cannot take reasoning back; their signatures only Anthropic can check).
//! - Refused: `top_k`, `container`, `mcp_servers`, `context_management`,
//!   `inference_geo` (a residency requirement), `fallbacks`, server tools
//!   (`tools[].type` other than `custom`), `document`, `search_result` and
//!   server-tool blocks, `image` sources other than base64 / URL, images in
//!   a `tool_result`, `output_config.effort` xhigh / max, and any field this
//!   module does not know.
//!
//! OpenAI request → Anthropic request:
//! - `system` and `developer` messages at the start → `system` (a string,
//!   or text blocks when there are several parts); `user` text and
//!   `image_url` parts (a `data:` URL → a base64 source, else a URL source);
//!   `assistant` content and `tool_calls` → text and `tool_use` blocks
//!   (`arguments` parsed: it must be a JSON object); `tool` messages →
//!   `tool_result` blocks of a user turn. Consecutive turns of one role are
//!   merged (the Messages API wants tool results in one user turn); empty
//!   text (`content: ""` beside tool calls) is left out, as the Messages API
//!   refuses empty text blocks.
//! - `max_completion_tokens` or `max_tokens` → `max_tokens`; neither →
//!   [`Target::default_max_tokens`] (the Messages API requires a bound;
//!   [`DEFAULT_MAX_TOKENS`] unless the route sets one). `stop` →
//!   `stop_sequences`; `temperature` (≤ 1) and `top_p` as is; `user` (else
//!   `safety_identifier`) → `metadata.user_id`; `stream` as is.
//! - `tools[]` (`function`) → custom tools (`parameters` → `input_schema`);
//!   `tool_choice` auto/required/none/{function} → auto/any/none/tool;
//!   `parallel_tool_calls: false` → `disable_parallel_tool_use: true`.
//! - `reasoning_effort` low/medium/high → `thinking: {type: enabled,
//!   budget_tokens: 1024/2048/4096}` (kept below the client's bound,
//!   refused when that is ≤ 1024; without a client bound, `max_tokens` is
//!   the default plus the budget), `none` / `minimal` → no thinking.
//!   `response_format` `json_schema` → `output_config.format`; `text` → nothing.
//! - Dropped: `stream_options` (the translator emits the usage chunk itself
//!   when it was asked for), `store`, `metadata`, `service_tier`, `seed`
//!   (best effort only), `prompt_cache_key`, `prompt_cache_retention`,
//!   `prompt_cache_options`, a message's `name`, an image's `detail`, `n: 1`,
//!   `logprobs: false`, zero penalties.
//! - Refused: `n` > 1, `logprobs: true`, `top_logprobs`, `logit_bias`,
//!   non-zero `presence_penalty` / `frequency_penalty`, `temperature` > 1,
//!   `response_format` `json_object`, `audio`, `modalities` other than text,
//!   `prediction`, `web_search_options`, `verbosity`, `functions` /
//!   `function_call`, `reasoning_effort` xhigh, `input_audio` and `file`
//!   parts, `function` messages, a `system` message after the conversation
//!   started, non-function tools, `allowed_tools` choices, and any field
//!   this module does not know.
//!
//! Responses and streams (both ways): text, tool calls (arguments string ⇄
//! input object, streamed as `input_json_delta` ⇄ `tool_calls[].function.
//! arguments` fragments), and reasoning: Anthropic `thinking` ⇄ the
//! `reasoning` field OpenRouter uses (the SDKs keep unknown fields; a
//! translated thinking block has an empty `signature`, and signatures are
//! dropped the other way). Stop reasons: `end_turn`/`stop_sequence` →
//! `stop`, `max_tokens`/`model_context_window_exceeded` → `length`,
//! `tool_use` → `tool_calls`, `refusal` → `content_filter`; back: `stop` →
//! `end_turn` (OpenAI does not say whether a stop sequence matched),
//! `length` → `max_tokens`, `tool_calls` / `function_call` (or `stop` with
//! tool calls) → `tool_use`, `content_filter` → `refusal`. Usage: OpenAI's
//! `prompt_tokens` includes cache reads (`cached_tokens`) and writes
//! (`cache_write_tokens`), Anthropic's `input_tokens` excludes both; the
//! split goes through [`Usage`](crate::dialect::Usage). Citations and
//! `pause_turn` do not translate (the requests that cause them are refused).
//!
//! A stream from an OpenAI upstream reports its usage only at the end, so
//! the Anthropic `message_start` carries zero input tokens and the final
//! `message_delta` the real counts (current Anthropic SDKs take input and
//! cache counts from it; the legacy 0.50 only reads its `output_tokens`, so
//! its streamed input counts stay 0: `tests/translate_sdk.rs` checks both).

mod error;
mod mapping;
mod request_to_anthropic;
mod request_to_openai;
mod response;
mod stream_to_anthropic;
mod stream_to_openai;

#[cfg(test)]
mod tests;

use bytes::{Bytes, BytesMut};

use super::Dialect;

pub use error::{error, TranslatedError};
pub use stream_to_anthropic::ToAnthropicStream;
pub use stream_to_openai::ToOpenAiStream;

/// The output bound sent to an Anthropic upstream when an OpenAI client
/// sent none (the Messages API requires one).
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

/// Why a body could not be translated.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TranslateError {
    /// The body is not JSON (or not an object).
    #[error("not a JSON object: {0}")]
    BadJson(String),
    /// A field has no faithful equivalent in the other dialect: the router
    /// should skip this target rather than change the question.
    #[error("`{field}` cannot be translated to the {to} dialect")]
    Untranslatable {
        /// The field, as a path (`top_k`, `messages[].content[].type=document`).
        field: String,
        /// The dialect it could not be written in.
        to: &'static str,
    },
    /// A field has the wrong shape for its own dialect.
    #[error("`{field}` is not {expected}")]
    Invalid {
        /// The field, as a path.
        field: String,
        /// What it should have been.
        expected: &'static str,
    },
}

/// Where a translated request goes: the model the router picked and the
/// provider that serves it.
#[derive(Clone, Copy, Debug)]
pub struct Target<'a> {
    /// The upstream's model name.
    pub model: &'a str,
    /// The provider's config name (`openai` gets `max_completion_tokens`).
    pub provider: &'a str,
    /// The output bound for an Anthropic upstream when the client sent none.
    pub default_max_tokens: u64,
}

impl<'a> Target<'a> {
    /// A target with [`DEFAULT_MAX_TOKENS`].
    pub fn new(model: &'a str, provider: &'a str) -> Self {
        Self {
            model,
            provider,
            default_max_tokens: DEFAULT_MAX_TOKENS,
        }
    }
}

/// A request in the upstream's dialect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TranslatedRequest {
    /// The upstream's body.
    pub body: Bytes,
    /// The client asked for a stream.
    pub stream: bool,
    /// An OpenAI client asked for the usage chunk
    /// (`stream_options.include_usage`): pass it to [`StreamTranslator::new`].
    pub include_usage: bool,
}

/// Translates a request body from `client`'s dialect into the other one,
/// for `target`.
pub fn request(
    client: Dialect,
    body: &[u8],
    target: &Target<'_>,
) -> Result<TranslatedRequest, TranslateError> {
    match client {
        Dialect::Anthropic => request_to_openai::translate(body, target),
        Dialect::OpenAi => request_to_anthropic::translate(body, target),
    }
}

/// Translates a complete (non-streamed) upstream answer into `client`'s
/// dialect. `created` is the Unix time an OpenAI client's `created` gets
/// (Anthropic messages have none).
pub fn response(client: Dialect, body: &[u8], created: u64) -> Result<Bytes, TranslateError> {
    match client {
        Dialect::Anthropic => response::to_anthropic(body),
        Dialect::OpenAi => response::to_openai(body, created),
    }
}

/// How a translated stream ended, from [`StreamTranslator::finish`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamEnd {
    /// The upstream's terminal event came and was translated.
    Complete {
        /// The upstream reported its usage (an OpenAI upstream may not).
        usage_known: bool,
    },
    /// The upstream sent an error mid-stream; the client got it as its
    /// dialect's error event.
    UpstreamError,
    /// The upstream ended without its terminal event; `finish` wrote an
    /// error event so the client's SDK raises instead of keeping a
    /// truncated answer.
    Truncated,
    /// An upstream event could not be translated; the client got an error
    /// event and the rest of the stream was ignored.
    Untranslatable,
}

/// One stream's translator, in the direction the client's dialect names.
#[derive(Debug)]
pub enum StreamTranslator {
    /// OpenAI chunks in, Anthropic events out.
    ToAnthropic(ToAnthropicStream),
    /// Anthropic events in, OpenAI chunks out.
    ToOpenAi(ToOpenAiStream),
}

impl StreamTranslator {
    /// A translator for a client speaking `client`. `include_usage` (from
    /// [`TranslatedRequest`]) and `created` matter to OpenAI clients only.
    pub fn new(client: Dialect, include_usage: bool, created: u64) -> Self {
        match client {
            Dialect::Anthropic => Self::ToAnthropic(ToAnthropicStream::new()),
            Dialect::OpenAi => Self::ToOpenAi(ToOpenAiStream::new(include_usage, created)),
        }
    }

    /// Takes one upstream event (as [`SseParser`](crate::dialect::sse::SseParser)
    /// dispatched it) and appends the client's frames for it to `out`.
    pub fn on_event(&mut self, name: &str, data: &str, out: &mut BytesMut) {
        match self {
            Self::ToAnthropic(t) => t.on_event(data, out),
            Self::ToOpenAi(t) => t.on_event(name, data, out),
        }
    }

    /// The upstream's body ended: closes the client's stream if the
    /// upstream did not, and says how it ended.
    pub fn finish(&mut self, out: &mut BytesMut) -> StreamEnd {
        match self {
            Self::ToAnthropic(t) => t.finish(out),
            Self::ToOpenAi(t) => t.finish(out),
        }
    }
}
