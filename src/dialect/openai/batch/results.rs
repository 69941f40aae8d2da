//! The output and error files of a batch (JSONL), read line by line as
//! they arrive: one [`BatchResult`] per `custom_id`, with its outcome, the
//! model that answered and its usage in the crate's [`Usage`] terms.
//!
//! A line is `{"id":"batch_req_…","custom_id","response":{"status_code",
//! "request_id","body"},"error":null|{"code","message"}}`. The body is the
//! endpoint's own answer, so its usage is read by the same code as a direct
//! call's: chat completions and embeddings
//! ([`crate::dialect::openai::usage::from_json`]: `prompt_tokens`,
//! `completion_tokens`, `prompt_tokens_details.cached_tokens`), Responses
//! ([`crate::dialect::openai::responses::from_json`]: `input_tokens`,
//! `output_tokens`, `input_tokens_details.cached_tokens`).
//!
//! A malformed line is reported with its number and the reading goes on:
//! one bad line must not lose the settlement of the others.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::lines::{Line, Lines};
use super::BatchEndpoint;
use crate::dialect::json::lenient_u64;
use crate::dialect::openai::{responses, usage};
use crate::dialect::usage::{JsonSummary, Usage};

/// How one item ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ItemOutcome {
    /// Answered with status 200: billed at its usage.
    Succeeded,
    /// Answered with an error status, or failed otherwise: not billed.
    Errored,
    /// Not run: the batch was cancelled first (`error.code`
    /// `batch_cancelled`). Not billed.
    Cancelled,
    /// Not run: the completion window passed first (`error.code`
    /// `batch_expired`). Not billed.
    Expired,
}

/// An item's error: the line's `error`, else the error body of its response.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ItemError {
    /// `code` (or the body's `error.type` when it has no code).
    pub code: Option<String>,
    /// `message`.
    pub message: Option<String>,
}

/// One line of an output or error file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchResult {
    /// Its line in the file (from 1).
    pub line: u64,
    /// `batch_req_…`.
    pub id: Option<String>,
    /// The input line's `custom_id`.
    pub custom_id: String,
    /// How it ended.
    pub outcome: ItemOutcome,
    /// `response.status_code`.
    pub status_code: Option<u16>,
    /// `response.request_id`: the provider's request id, for reconciliation.
    pub request_id: Option<String>,
    /// The model that answered (`response.body.model`).
    pub model: Option<String>,
    /// The body's usage (`None`: not succeeded, or no `usage` in the body).
    pub usage: Option<Usage>,
    /// Why it did not succeed.
    pub error: Option<ItemError>,
}

/// A result line that cannot be read; the line number says which.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResultError {
    /// Not a JSON object of the expected shape, or not UTF-8.
    #[error("result line {line}: not a valid result ({reason})")]
    BadJson { line: u64, reason: String },
    /// Longer than the reader's bound.
    #[error("result line {line}: the line is longer than {max} bytes")]
    LineTooLong { line: u64, max: usize },
    /// No `custom_id`: it cannot be matched to its item.
    #[error("result line {line}: missing custom_id")]
    MissingCustomId { line: u64 },
}

impl ResultError {
    /// The line the problem is on.
    pub fn line(&self) -> u64 {
        match self {
            ResultError::BadJson { line, .. }
            | ResultError::LineTooLong { line, .. }
            | ResultError::MissingCustomId { line } => *line,
        }
    }
}

/// Reads an output or error file chunk by chunk; memory is bounded by one
/// line of `max_line_bytes` (a longer line is a [`ResultError`]).
#[derive(Debug)]
pub struct ResultsReader {
    endpoint: BatchEndpoint,
    lines: Lines,
    max: usize,
}

impl ResultsReader {
    /// A reader for the files of a batch that ran `endpoint`.
    pub fn new(endpoint: BatchEndpoint, max_line_bytes: usize) -> ResultsReader {
        ResultsReader {
            endpoint,
            lines: Lines::new(max_line_bytes),
            max: max_line_bytes,
        }
    }

    /// Hands every line `chunk` completes to `f` (blank lines are skipped).
    pub fn feed(&mut self, chunk: &[u8], f: &mut impl FnMut(Result<BatchResult, ResultError>)) {
        let (endpoint, max) = (self.endpoint, self.max);
        self.lines
            .feed(chunk, &mut |line| on_line(endpoint, max, line, f));
    }

    /// Hands the last line (one without a final newline) to `f`.
    pub fn finish(mut self, f: &mut impl FnMut(Result<BatchResult, ResultError>)) {
        let (endpoint, max) = (self.endpoint, self.max);
        self.lines
            .finish(&mut |line| on_line(endpoint, max, line, f));
    }
}

/// Reads a whole output or error file held in memory.
pub fn parse_results(
    endpoint: BatchEndpoint,
    data: &[u8],
    max_line_bytes: usize,
) -> Vec<Result<BatchResult, ResultError>> {
    let mut out = Vec::new();
    let mut reader = ResultsReader::new(endpoint, max_line_bytes);
    reader.feed(data, &mut |r| out.push(r));
    reader.finish(&mut |r| out.push(r));
    out
}

fn on_line(
    endpoint: BatchEndpoint,
    max: usize,
    line: Line<'_>,
    f: &mut impl FnMut(Result<BatchResult, ResultError>),
) {
    match line {
        Line::TooLong { number } => f(Err(ResultError::LineTooLong { line: number, max })),
        Line::Text { number, bytes } => {
            if let Some(result) = parse_line(endpoint, number, bytes) {
                f(result);
            }
        }
    }
}

#[derive(Deserialize)]
struct WireResult<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    custom_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    response: Option<WireResponse<'a>>,
    #[serde(default)]
    error: Option<WireError>,
}

#[derive(Deserialize)]
struct WireResponse<'a> {
    #[serde(default, deserialize_with = "lenient_u64")]
    status_code: Option<u64>,
    #[serde(borrow, default)]
    request_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    body: Option<&'a RawValue>,
}

/// An error object: the line's `error`, or a body's `error`.
#[derive(Deserialize)]
struct WireError {
    #[serde(default)]
    code: Option<Value>,
    #[serde(default, rename = "type")]
    kind: Option<Value>,
    #[serde(default)]
    message: Option<Value>,
}

impl WireError {
    fn item_error(self) -> ItemError {
        let text = |v: Option<Value>| match v {
            Some(Value::String(s)) if !s.is_empty() => Some(s),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        ItemError {
            code: text(self.code).or_else(|| text(self.kind)),
            message: text(self.message),
        }
    }
}

/// One line: `None` for a blank one.
fn parse_line(
    endpoint: BatchEndpoint,
    line: u64,
    bytes: &[u8],
) -> Option<Result<BatchResult, ResultError>> {
    let bad = |reason: String| ResultError::BadJson { line, reason };
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text.trim(),
        Err(e) => {
            return Some(Err(bad(format!(
                "not valid UTF-8 at byte {}",
                e.valid_up_to()
            ))))
        }
    };
    if text.is_empty() {
        return None;
    }
    if !text.starts_with('{') {
        return Some(Err(bad("expected an object".into())));
    }
    let wire: WireResult<'_> = match serde_json::from_str(text) {
        Ok(wire) => wire,
        Err(e) => return Some(Err(bad(e.to_string()))),
    };
    let Some(custom_id) = wire.custom_id.filter(|c| !c.is_empty()) else {
        return Some(Err(ResultError::MissingCustomId { line }));
    };
    let response = wire.response;
    let status_code = response
        .as_ref()
        .and_then(|r| r.status_code)
        .and_then(|s| u16::try_from(s).ok());
    // The endpoint's answer is an object; anything else is read as no body.
    let body = response
        .as_ref()
        .and_then(|r| r.body)
        .map(RawValue::get)
        .filter(|b| b.starts_with('{'));
    let line_error = wire.error.map(WireError::item_error);
    let outcome = match (&line_error, status_code) {
        (Some(e), _) => match e.code.as_deref() {
            Some("batch_cancelled") => ItemOutcome::Cancelled,
            Some("batch_expired") => ItemOutcome::Expired,
            _ => ItemOutcome::Errored,
        },
        (None, Some(200)) => ItemOutcome::Succeeded,
        (None, _) => ItemOutcome::Errored,
    };
    let summary = body.and_then(|b| summary(endpoint, b.as_bytes()));
    let model = summary
        .as_ref()
        .and_then(|s| s.model.clone())
        .or_else(|| body.and_then(model_of));
    let error = match outcome {
        ItemOutcome::Succeeded => None,
        _ => line_error.or_else(|| body.and_then(body_error)),
    };
    Some(Ok(BatchResult {
        line,
        id: wire.id.map(Cow::into_owned),
        custom_id: custom_id.into_owned(),
        outcome,
        status_code,
        request_id: response.and_then(|r| r.request_id).map(Cow::into_owned),
        model,
        usage: summary
            .filter(|_| outcome == ItemOutcome::Succeeded)
            .map(|s| s.usage),
        error,
    }))
}

/// The usage and model of a body, read as the endpoint's own answer.
fn summary(endpoint: BatchEndpoint, body: &[u8]) -> Option<JsonSummary> {
    match endpoint {
        BatchEndpoint::ChatCompletions | BatchEndpoint::Embeddings => usage::from_json(body),
        BatchEndpoint::Responses => responses::from_json(body),
    }
}

/// The `model` of a body without usage.
fn model_of(body: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Model<'a> {
        #[serde(borrow, default)]
        model: Option<Cow<'a, str>>,
    }
    let m: Model<'_> = serde_json::from_str(body).ok()?;
    m.model.filter(|m| !m.is_empty()).map(Cow::into_owned)
}

/// The `error` of an error body.
fn body_error(body: &str) -> Option<ItemError> {
    #[derive(Deserialize)]
    struct Body {
        error: Option<WireError>,
    }
    let b: Body = serde_json::from_str(body).ok()?;
    b.error.map(WireError::item_error)
}
