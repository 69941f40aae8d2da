//! A batch input file (JSONL), read once as it arrives: one
//! [`BatchItem`] per request line, with what a reservation needs (model,
//! output bound, choices, body size), or the first problem as a typed
//! [`InputError`] naming its line.
//!
//! Each line's body goes through the same head parse as a direct call
//! ([`crate::dialect::request::parse_head`]), so a batch item is bounded
//! exactly as the same request sent alone would be.

use std::borrow::Cow;
use std::collections::HashSet;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::lines::{Line, Lines};
use super::{BatchEndpoint, MAX_REQUESTS};
use crate::dialect::request::parse_head;

/// Bounds on what an input file may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InputLimits {
    /// Requests per file (the API's limit is [`MAX_REQUESTS`]).
    pub max_requests: u64,
    /// The longest line kept in memory, in bytes; a longer one is an error.
    pub max_line_bytes: usize,
}

impl Default for InputLimits {
    /// 50,000 requests, lines up to 32 MiB (the proxy's default body limit).
    fn default() -> InputLimits {
        InputLimits {
            max_requests: MAX_REQUESTS,
            max_line_bytes: 32 << 20,
        }
    }
}

/// One request of a batch input file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchItem {
    /// Its line in the file (from 1).
    pub line: u64,
    /// The caller's id for it, unique in the file; results are matched by it.
    pub custom_id: String,
    /// The endpoint its `url` names.
    pub endpoint: BatchEndpoint,
    /// `body.model`.
    pub model: String,
    /// The output bound the body sets (`max_tokens` /
    /// `max_completion_tokens`, the larger of both; `max_output_tokens` for
    /// Responses), as [`crate::dialect::request::RequestHead::max_tokens`].
    pub max_tokens: Option<u64>,
    /// Choices generated (`n`, at least 1), each up to the output bound.
    pub choices: u64,
    /// The body's size in bytes, as sent: what the budget's estimate bounds
    /// the input tokens by (see `budget::estimate`).
    pub body_bytes: u64,
    /// The body defines `tools` (the estimate adds an allowance for them).
    pub tools: bool,
}

impl BatchItem {
    /// The output tokens to reserve per choice: the body's bound, else
    /// `default` (the sidecar's `budget_default_max_tokens`); 0 for an
    /// endpoint without output.
    pub fn output_bound(&self, default: u64) -> u64 {
        if self.endpoint.has_output() {
            self.max_tokens.unwrap_or(default)
        } else {
            0
        }
    }
}

/// A whole input file, read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchInput {
    /// The one endpoint every line names.
    pub endpoint: BatchEndpoint,
    /// The requests, in file order.
    pub items: Vec<BatchItem>,
}

impl BatchInput {
    /// Checks that a batch created over this file names the file's
    /// endpoint (the API fails such a batch in `validating`).
    pub fn check_endpoint(&self, endpoint: BatchEndpoint) -> Result<(), InputError> {
        if endpoint == self.endpoint {
            return Ok(());
        }
        Err(InputError::EndpointMismatch {
            line: self.items.first().map_or(1, |i| i.line),
            url: self.endpoint.as_url().to_owned(),
            expected: endpoint,
        })
    }
}

/// Why an input file cannot be a batch. Every variant but `Empty` names
/// the line (from 1); the proxy answers each with a 400 in OpenAI's error
/// shape ([`InputError::code`], [`InputError::param`], the message).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    /// Not a JSON object, or not UTF-8.
    #[error("line {line}: this line is not a valid JSON object ({reason})")]
    BadJson { line: u64, reason: String },
    /// Longer than [`InputLimits::max_line_bytes`].
    #[error("line {line}: the line is longer than {max} bytes")]
    LineTooLong { line: u64, max: usize },
    /// A required field is absent, null or empty.
    #[error("line {line}: missing required parameter '{field}'")]
    Missing { line: u64, field: &'static str },
    /// `method` other than `POST`.
    #[error("line {line}: method {method:?} is not supported; batch requests use POST")]
    Method { line: u64, method: String },
    /// A `url` that is not a batch endpoint tollgate meters.
    #[error(
        "line {line}: url {url:?} is not supported in a batch; use /v1/chat/completions, \
         /v1/responses or /v1/embeddings"
    )]
    UnsupportedUrl { line: u64, url: String },
    /// A `url` other than the file's (or the batch's) endpoint.
    #[error("line {line}: url {url} does not match the batch endpoint {expected}")]
    EndpointMismatch {
        line: u64,
        url: String,
        expected: BatchEndpoint,
    },
    /// A `custom_id` already used on an earlier line.
    #[error("line {line}: the custom_id {custom_id:?} is used more than once in this file")]
    DuplicateCustomId { line: u64, custom_id: String },
    /// `body` is not a JSON object.
    #[error("line {line}: body must be a JSON object")]
    BodyNotObject { line: u64 },
    /// `"stream": true`: a batch answers each request whole.
    #[error("line {line}: \"stream\": true is not supported in a batch")]
    Stream { line: u64 },
    /// More than [`InputLimits::max_requests`] requests.
    #[error("line {line}: the file has more than {max} requests")]
    TooManyRequests { line: u64, max: u64 },
    /// No request at all.
    #[error("the batch input file has no requests")]
    Empty,
}

impl InputError {
    /// The line the problem is on (`None`: the file as a whole).
    pub fn line(&self) -> Option<u64> {
        match self {
            InputError::BadJson { line, .. }
            | InputError::LineTooLong { line, .. }
            | InputError::Missing { line, .. }
            | InputError::Method { line, .. }
            | InputError::UnsupportedUrl { line, .. }
            | InputError::EndpointMismatch { line, .. }
            | InputError::DuplicateCustomId { line, .. }
            | InputError::BodyNotObject { line }
            | InputError::Stream { line }
            | InputError::TooManyRequests { line, .. } => Some(*line),
            InputError::Empty => None,
        }
    }

    /// OpenAI's `error.code` for it (the codes its batch validation uses).
    pub fn code(&self) -> &'static str {
        match self {
            InputError::BadJson { .. } => "invalid_json_line",
            InputError::LineTooLong { .. } => "line_too_long",
            InputError::Missing { .. } => "missing_required_parameter",
            InputError::Method { .. } => "invalid_method",
            InputError::UnsupportedUrl { .. } => "invalid_url",
            InputError::EndpointMismatch { .. } => "url_mismatch",
            InputError::DuplicateCustomId { .. } => "duplicate_custom_id",
            InputError::BodyNotObject { .. } | InputError::Stream { .. } => "invalid_request",
            InputError::TooManyRequests { .. } => "too_many_tasks",
            InputError::Empty => "empty_file",
        }
    }

    /// OpenAI's `error.param` for it.
    pub fn param(&self) -> Option<&'static str> {
        match self {
            InputError::Missing { field, .. } => Some(field),
            InputError::Method { .. } => Some("method"),
            InputError::UnsupportedUrl { .. } | InputError::EndpointMismatch { .. } => Some("url"),
            InputError::DuplicateCustomId { .. } => Some("custom_id"),
            InputError::BodyNotObject { .. } => Some("body"),
            InputError::Stream { .. } => Some("body.stream"),
            InputError::BadJson { .. }
            | InputError::LineTooLong { .. }
            | InputError::TooManyRequests { .. }
            | InputError::Empty => None,
        }
    }
}

/// Reads an input file chunk by chunk. Memory: the items, plus at most one
/// line ([`InputLimits::max_line_bytes`]) of a line cut by a chunk boundary.
///
/// ```text
/// let mut reader = InputReader::new(InputLimits::default());
/// for chunk in chunks { reader.feed(chunk)?; }
/// let input = reader.finish()?;
/// ```
#[derive(Debug)]
pub struct InputReader {
    lines: Lines,
    state: State,
}

#[derive(Debug)]
struct State {
    limits: InputLimits,
    endpoint: Option<BatchEndpoint>,
    items: Vec<BatchItem>,
    seen: HashSet<String>,
    error: Option<InputError>,
}

impl InputReader {
    /// A reader for one file.
    pub fn new(limits: InputLimits) -> InputReader {
        InputReader {
            lines: Lines::new(limits.max_line_bytes),
            state: State {
                limits,
                endpoint: None,
                items: Vec::new(),
                seen: HashSet::new(),
                error: None,
            },
        }
    }

    /// Reads the lines `chunk` completes. After the first error, every
    /// call returns that error and reads nothing more.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), InputError> {
        self.feed_with(chunk, &mut |_, _| {})
    }

    /// [`InputReader::feed`], handing each new item and its raw body to
    /// `visit` (for an estimate over the body itself), while the bytes are
    /// still at hand.
    pub fn feed_with(
        &mut self,
        chunk: &[u8],
        visit: &mut impl FnMut(&BatchItem, &[u8]),
    ) -> Result<(), InputError> {
        let state = &mut self.state;
        if state.error.is_none() {
            self.lines
                .feed(chunk, &mut |line| state.on_line(line, visit));
        }
        state.result()
    }

    /// The file read: every item, or the first error.
    pub fn finish(self) -> Result<BatchInput, InputError> {
        self.finish_with(&mut |_, _| {})
    }

    /// [`InputReader::finish`], handing the last item to `visit`.
    pub fn finish_with(
        mut self,
        visit: &mut impl FnMut(&BatchItem, &[u8]),
    ) -> Result<BatchInput, InputError> {
        let state = &mut self.state;
        if state.error.is_none() {
            self.lines.finish(&mut |line| state.on_line(line, visit));
        }
        state.result()?;
        match state.endpoint {
            Some(endpoint) if !state.items.is_empty() => Ok(BatchInput {
                endpoint,
                items: std::mem::take(&mut state.items),
            }),
            _ => Err(InputError::Empty),
        }
    }
}

impl State {
    fn result(&self) -> Result<(), InputError> {
        match &self.error {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    fn on_line(&mut self, line: Line<'_>, visit: &mut impl FnMut(&BatchItem, &[u8])) {
        if self.error.is_some() {
            return;
        }
        let parsed = match line {
            Line::TooLong { number } => Err(InputError::LineTooLong {
                line: number,
                max: self.limits.max_line_bytes,
            }),
            Line::Text { number, bytes } => self.accept(number, bytes, visit),
        };
        if let Err(e) = parsed {
            self.error = Some(e);
        }
    }

    /// One line: an item, nothing (a blank line), or the problem.
    fn accept(
        &mut self,
        line: u64,
        bytes: &[u8],
        visit: &mut impl FnMut(&BatchItem, &[u8]),
    ) -> Result<(), InputError> {
        let Some((item, body)) = parse_line(line, bytes)? else {
            return Ok(());
        };
        match self.endpoint {
            None => self.endpoint = Some(item.endpoint),
            Some(expected) if expected != item.endpoint => {
                return Err(InputError::EndpointMismatch {
                    line,
                    url: item.endpoint.as_url().to_owned(),
                    expected,
                })
            }
            Some(_) => {}
        }
        if self.items.len() as u64 >= self.limits.max_requests {
            return Err(InputError::TooManyRequests {
                line,
                max: self.limits.max_requests,
            });
        }
        if !self.seen.insert(item.custom_id.clone()) {
            return Err(InputError::DuplicateCustomId {
                line,
                custom_id: item.custom_id,
            });
        }
        visit(&item, body);
        self.items.push(item);
        Ok(())
    }
}

/// A request line as sent.
#[derive(Deserialize)]
struct WireLine<'a> {
    #[serde(borrow, default)]
    custom_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    method: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    url: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    body: Option<&'a RawValue>,
}

/// A string field that is there and not empty.
fn present(v: Option<Cow<'_, str>>) -> Option<Cow<'_, str>> {
    v.filter(|s| !s.is_empty())
}

/// Reads one line: `None` for a blank one, else the item and its body.
fn parse_line(line: u64, bytes: &[u8]) -> Result<Option<(BatchItem, &[u8])>, InputError> {
    let bad = |reason: String| InputError::BadJson { line, reason };
    let text = std::str::from_utf8(bytes)
        .map_err(|e| bad(format!("not valid UTF-8 at byte {}", e.valid_up_to())))?;
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Ok(None);
    }
    // A struct would also read from a JSON array.
    if !trimmed.starts_with('{') {
        return Err(bad("expected an object".into()));
    }
    let wire: WireLine<'_> = serde_json::from_str(trimmed).map_err(|e| bad(e.to_string()))?;
    let missing = |field: &'static str| InputError::Missing { line, field };
    let custom_id = present(wire.custom_id).ok_or_else(|| missing("custom_id"))?;
    let method = present(wire.method).ok_or_else(|| missing("method"))?;
    let url = present(wire.url).ok_or_else(|| missing("url"))?;
    // `"body": null` reads as absent.
    let body = wire.body.ok_or_else(|| missing("body"))?.get();
    if method != "POST" {
        return Err(InputError::Method {
            line,
            method: method.into_owned(),
        });
    }
    let endpoint = BatchEndpoint::from_url(&url).ok_or_else(|| InputError::UnsupportedUrl {
        line,
        url: url.clone().into_owned(),
    })?;
    if !body.starts_with('{') {
        return Err(InputError::BodyNotObject { line });
    }
    let head = parse_head(body.as_bytes()).map_err(|e| bad(e.to_string()))?;
    if head.stream {
        return Err(InputError::Stream { line });
    }
    if head.model.is_empty() {
        return Err(missing("body.model"));
    }
    let body = body.as_bytes();
    let item = BatchItem {
        line,
        custom_id: custom_id.into_owned(),
        endpoint,
        model: head.model,
        max_tokens: head.max_tokens,
        choices: head.choices,
        body_bytes: body.len() as u64,
        tools: memchr::memmem::find(body, b"\"tools\"").is_some(),
    };
    Ok(Some((item, body)))
}

/// Reads a whole input file held in memory.
pub fn parse_jsonl(data: &[u8], limits: InputLimits) -> Result<BatchInput, InputError> {
    let mut reader = InputReader::new(limits);
    reader.feed(data)?;
    reader.finish()
}
