//! An in-repo fake LLM provider for tests and local experiments.
//!
//! It speaks two dialects on one port:
//!
//! * **Anthropic Messages**: `POST /v1/messages` (JSON, or SSE when the body
//!   has `"stream": true`; any query string such as `?beta=true` is accepted),
//!   `POST /v1/messages/count_tokens` and `GET /v1/models`.
//! * **OpenAI-compatible chat**: `POST /v1/chat/completions` (JSON or
//!   data-only SSE) and `GET /v1/models`, with an OpenRouter flavour;
//!   `POST /v1/embeddings` (one vector per input, `float` arrays or, with
//!   `encoding_format: "base64"`, little-endian f32 bytes in base64;
//!   `dimensions` long, default 8; `usage.prompt_tokens` is the
//!   `x-fake-usage` input, else the default input).
//! * **OpenAI Responses**: `POST /v1/responses`, a JSON `response` or named
//!   SSE events (`response.created` … `response.completed`, each with
//!   `type` and `sequence_number`, no `[DONE]`); `max_output_tokens` below
//!   the output makes it end `incomplete`; `cut` aborts before the
//!   terminal event; `x-fake-response-failed: 1` ends a stream with
//!   `response.failed` (an error, and the usage so far). `x-fake-usage`
//!   `cache_read` is `cached_tokens`.
//! * **Anthropic Message Batches** (`fake_batches/`): `POST/GET
//!   /v1/messages/batches`, `GET|DELETE …/{id}`, `POST …/{id}/cancel`,
//!   `GET …/{id}/results` (JSONL, `application/binary`). `results_url` is
//!   absolute on the request's own scheme, `Host` and path prefix, like the
//!   real `https://api.anthropic.com/v1/messages/batches/{id}/results`.
//! * **OpenAI Files + Batch** (`fake_batches/`): `POST/GET /v1/files`
//!   (multipart upload), `GET|DELETE /v1/files/{id}`, `GET
//!   /v1/files/{id}/content`; `POST/GET /v1/batches`, `GET
//!   /v1/batches/{id}`, `POST /v1/batches/{id}/cancel`, for the endpoints
//!   `/v1/chat/completions`, `/v1/responses` and `/v1/embeddings`; output
//!   and error files are files like the uploaded ones.
//!
//! Batches move through their states with the clock (no background task):
//! Anthropic `in_progress` → `ended` (or `canceling` → `ended`), OpenAI
//! `validating` → `in_progress` → `finalizing` → `completed` (or `failed`,
//! `cancelling` → `cancelled`, `expired`). Each item is answered by the same
//! code as a direct call to its endpoint (same usage, same `x-fake-usage`
//! rules), so its tokens are known exactly. Results and output files list
//! items in reverse submission order (match them by `custom_id`).
//!
//! Routing looks at the end of the path only, so any prefix works
//! (`/api/v1/chat/completions` is served like `/v1/chat/completions`).
//! `GET …/models` answers in the Anthropic shape when the request carries
//! `anthropic-version` or `x-api-key`, and in the OpenAI shape otherwise.
//!
//! Each request picks its behaviour with headers:
//!
//! | header | meaning |
//! |---|---|
//! | `x-fake-scenario` | one of [`SCENARIOS`]; falls back to the default scenario, else `text` |
//! | `x-fake-usage` | `input=100,output=20,cache_write=10,cache_write_1h=4,cache_read=30` (any subset) |
//! | `x-fake-delay-ms` | pause between events (`slow`, default 200) or before the headers (`hang`, default 30 000; `error-NNN`, default none) |
//! | `x-fake-ttfb-ms` | pause before the response headers, any scenario (a provider's time to first byte); before `x-fake-delay-ms` |
//! | `x-fake-big-bytes` | approximate body size of the `big` stream (default 100 000 000) |
//! | `x-fake-retry-after` | `retry-after` value on 429/529 errors (default `1`) |
//! | `x-fake-no-retry: 1` | adds `x-should-retry: false` to error responses |
//! | `x-fake-batch-ms` | on a batch create: processing time, default 200 (OpenAI: `validating` the first quarter, `finalizing` the last) |
//! | `x-fake-batch-cancel-ms` | on a batch create: how long a cancel of it takes, default 100 |
//! | `x-fake-batch-expires-ms` | on a batch create: when it expires, default 24 h (`expires_at`); a batch still running then ends, its unprocessed items expired |
//! | `x-fake-fallback` | Anthropic server-side fallback to this model: `usage.iterations[]` gets a `message` entry (the requested model, the input, no output) and a `fallback_message` entry (this model, the input and the output); a JSON answer names this model, a stream's `message_start` the requested one |
//!
//! On a batch create, `x-fake-usage` and `x-fake-scenario` (`text`,
//! `tool_use`, `thinking`) apply to every item. On any batch or file call,
//! `error-NNN` and `x-fake-ttfb-ms` fail or delay that call as usual. Per
//! item, SDK-valid:
//!
//! | item control | effect |
//! |---|---|
//! | `custom_id` `err-…` | Anthropic `errored` (`invalid_request_error`); OpenAI error-file line, `response.status_code` 400, `error` null |
//! | `custom_id` `exp-…` | `expired` (OpenAI: `batch_expired` line, batch status `expired`) |
//! | `custom_id` `hold-…` | never processed: the batch runs until cancelled (item `canceled` / `batch_cancelled`) or expired |
//! | user id `x-fake-usage:input=…,output=…,…` | this item's usage (Anthropic `params.metadata.user_id`, OpenAI `body.user`) |
//!
//! `GET /_fake/batches` is the ground truth: `{"anthropic": {BATCH_ID:
//! {"status", "items": {CUSTOM_ID: ITEM}}}, "openai": {BATCH_ID: {"status",
//! "endpoint", "items": {…}}}}`, where ITEM is `{"outcome"
//! (processing|succeeded|errored|canceled|expired), "model", "usage"
//! (a [`FakeUsage`] as JSON, succeeded items only, else null),
//! "reported_usage" (the `usage` object as the result carries it)}`.
//!
//! Every request (except the `/_fake/…` control endpoints) is recorded as a
//! [`Recorded`], including the exact response bytes and the usage that was
//! reported. `GET /_fake/requests` returns the recorded list as JSON and
//! `POST /_fake/clear` empties it (batches and files stay).
//!
//! The wire formats follow the provider reference (Anthropic §1–§3, OpenAI §8,
//! OpenRouter §9, checklist §11): every Anthropic SSE event is exactly
//! `event: NAME\ndata: JSON\n\n` with `NAME` equal to the JSON `type`, and each
//! event is written as its own body chunk (only `big` packs many events into
//! one ~16 KiB chunk).
#![allow(dead_code)]

// Relative to this file, also when a bench includes it by `#[path]`.
#[path = "fake_batches/mod.rs"]
mod batches;

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{to_bytes, Body, Bytes};
use axum::extract::{Request, State};
use axum::response::Response;
use axum::Router;
use futures_util::stream::{self, Stream, StreamExt};
use http::header::{HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, Method, StatusCode};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Every scenario name understood by `x-fake-scenario` (and `--scenario`).
///
/// `error-NNN` accepts any status from 400 to 599; the five listed here are
/// the ones with a documented meaning.
pub const SCENARIOS: &[&str] = &[
    "text",
    "tool_use",
    "thinking",
    "openrouter",
    "error-400",
    "error-401",
    "error-429",
    "error-500",
    "error-529",
    "midstream-error",
    "slow",
    "cut",
    "big",
    "hang",
];

/// Model echoed by the Anthropic dialect when the request names none.
pub const DEFAULT_ANTHROPIC_MODEL: &str = "claude-sonnet-4-5-20250929";
/// Model echoed by the OpenAI dialect when the request names none.
pub const DEFAULT_OPENAI_MODEL: &str = "gpt-4o-2024-08-06";
/// At most this many response bytes are kept in [`Recorded::response`].
pub const RESPONSE_CAP: usize = 1 << 20;

/// Largest request body the fake reads (the real limit is 32 MB).
const REQUEST_BODY_LIMIT: usize = 64 << 20;
/// Default `input_tokens` when `x-fake-usage` does not set it.
const DEFAULT_INPUT_TOKENS: u64 = 11;
/// Default output is the number of deltas in the script plus this.
const OUTPUT_OVERHEAD: u64 = 4;
/// Target size of one body chunk in the `big` scenario.
const BIG_CHUNK_BYTES: usize = 16 * 1024;
/// Pause before `cut` aborts, so the events before it reach the client.
const CUT_GRACE: Duration = Duration::from_millis(20);

/// Handle on a running fake provider. Dropping it stops accepting new
/// connections (connections already open finish on their own).
pub struct FakeProvider {
    /// The address the fake listens on.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

/// One request that reached the fake, with what the fake answered.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    /// Path plus `?query` when present, exactly as received.
    pub path: String,
    /// Lower-case header names, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The HTTP version the request arrived with (`HTTP/1.1`, `HTTP/2.0`).
    pub version: String,
    /// The scenario that was applied (header, else default, else `text`).
    pub scenario: String,
    /// HTTP status of the response (0 while the response is not built yet,
    /// e.g. during a `hang`).
    pub status: u16,
    /// The usage the fake reported for this call (`None` for errors and
    /// non-metered endpoints). For `midstream-error` and `cut` on the
    /// Anthropic dialect this is the `message_start` usage (output 1).
    pub usage: Option<FakeUsage>,
    /// The `usage.cost` (USD) sent in the OpenRouter flavour.
    pub reported_cost: Option<f64>,
    /// The exact response body bytes sent, capped at [`RESPONSE_CAP`].
    pub response: Vec<u8>,
    /// Total response body bytes handed to the server (not capped).
    pub response_bytes: u64,
    /// `true` once the full response was sent. Stays `false` for cut
    /// streams and when the client went away.
    pub completed: bool,
    /// `true` when the client went away before the response was finished.
    pub client_gone: bool,
}

impl Recorded {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        first_header(&self.headers, name)
    }

    /// Panics when a header value carries one of `secrets` (credentials
    /// that must never reach the provider: the client's key, a gateway key).
    pub fn assert_carries_none(&self, secrets: &[&str]) {
        for (name, value) in &self.headers {
            for secret in secrets {
                assert!(
                    !value.contains(secret),
                    "{name}: {value} reached the provider ({} {})",
                    self.method,
                    self.path
                );
            }
        }
    }

    /// The request body parsed as JSON (`Value::Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The response body parsed as JSON (`Value::Null` for streams).
    pub fn response_json(&self) -> Value {
        serde_json::from_slice(&self.response).unwrap_or(Value::Null)
    }

    /// JSON form used by `GET /_fake/requests`. Bodies are inlined as JSON
    /// when they parse, else as (lossy) strings.
    pub fn to_json(&self) -> Value {
        let body = serde_json::from_slice::<Value>(&self.body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&self.body).into_owned()));
        json!({
            "method": self.method,
            "path": self.path,
            "headers": self.headers,
            "body": body,
            "scenario": self.scenario,
            "status": self.status,
            "usage": self.usage.map(|u| u.to_json()),
            "reported_cost": self.reported_cost,
            "response": String::from_utf8_lossy(&self.response),
            "response_bytes": self.response_bytes,
            "completed": self.completed,
            "client_gone": self.client_gone,
        })
    }
}

/// First value of header `name` (case-insensitive) in a list of pairs.
pub fn first_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Token usage in Anthropic terms (what the fake reported for one call).
///
/// `cache_creation_input_tokens` is the total cache write; the 1-hour part of
/// it is `cache_creation_1h_input_tokens`, the rest is the 5-minute part.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FakeUsage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub cache_creation_1h_input_tokens: u64,
    pub cache_read_input_tokens: u64,
}

impl FakeUsage {
    /// The 5-minute part of the cache write.
    pub fn cache_creation_5m_input_tokens(&self) -> u64 {
        self.cache_creation_input_tokens
            .saturating_sub(self.cache_creation_1h_input_tokens)
    }

    /// OpenAI `prompt_tokens`: `input + cache_read`.
    pub fn prompt_tokens(&self) -> u64 {
        self.input_tokens + self.cache_read_input_tokens
    }

    /// The OpenRouter `usage.cost` the fake reports:
    /// `(prompt_tokens * 3 + completion_tokens * 15) / 1e6` USD.
    pub fn openrouter_cost(&self) -> f64 {
        self.openrouter_prompt_cost() + self.openrouter_completion_cost()
    }

    fn openrouter_prompt_cost(&self) -> f64 {
        (self.prompt_tokens() * 3) as f64 / 1e6
    }

    fn openrouter_completion_cost(&self) -> f64 {
        (self.output_tokens * 15) as f64 / 1e6
    }

    fn to_json(self) -> Value {
        json!({
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cache_creation_1h_input_tokens": self.cache_creation_1h_input_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
        })
    }
}

impl FakeProvider {
    /// Binds `127.0.0.1:0` and serves on the current tokio runtime.
    ///
    /// # Panics
    /// When the loopback port cannot be bound (a test-setup failure).
    #[allow(clippy::expect_used)]
    pub async fn start() -> FakeProvider {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("fake provider: bind 127.0.0.1:0");
        Self::start_on(listener, None).await
    }

    /// Serves on `listener` (spawned on the current tokio runtime).
    /// `default_scenario` applies to requests without `x-fake-scenario`.
    ///
    /// # Panics
    /// When the listener has no local address.
    #[allow(clippy::expect_used)]
    pub async fn start_on(listener: TcpListener, default_scenario: Option<String>) -> FakeProvider {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let addr = listener
            .local_addr()
            .expect("fake provider: listener address");
        let (shared, app) = app(default_scenario, false);
        let server = tokio::spawn(async move {
            // Only returns on an accept-loop failure; nothing to report then.
            let _ = axum::serve(listener, app).await;
        });
        FakeProvider {
            addr,
            shared,
            server,
        }
    }

    /// Serves over TLS (h2 and HTTP/1.1 by ALPN) with a fresh self-signed
    /// certificate for `localhost` and `127.0.0.1`; returns the fake and the
    /// certificate's PEM (the CA to trust). Base URL: `https://localhost:PORT`.
    ///
    /// # Panics
    /// When the certificate or the listener cannot be set up (test setup).
    #[allow(clippy::expect_used)]
    pub async fn start_tls() -> (FakeProvider, String) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("fake provider: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("fake provider: address");
        let cert = rcgen::generate_simple_self_signed(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
        ])
        .expect("self-signed certificate");
        let cert_pem = cert.cert.pem();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
        let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("tls versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .expect("tls config");
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let (shared, app) = app(None, true);
        let server = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let app = app.clone();
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
                });
            }
        });
        (
            FakeProvider {
                addr,
                shared,
                server,
            },
            cert_pem,
        )
    }

    /// `http://127.0.0.1:PORT`: the Anthropic base URL.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://127.0.0.1:PORT/v1`: the OpenAI-compatible base URL.
    pub fn openai_base_url(&self) -> String {
        format!("{}/v1", self.base_url())
    }

    /// Everything that reached the fake, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared
            .entries()
            .iter()
            .map(|e| e.recorded.clone())
            .collect()
    }

    /// `GET /_fake/batches`: per batch id and `custom_id`, each item's
    /// outcome and the usage it reported (see `fake_batches/`).
    pub fn batches(&self) -> Value {
        self.shared.batches_json()
    }

    /// Replaces the scenario of requests without `x-fake-scenario` (a
    /// provider going down and coming back, for routing tests).
    pub fn set_default_scenario(&self, scenario: Option<&str>) {
        *self
            .shared
            .default_scenario
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = scenario.map(str::to_owned);
    }

    /// Makes every request without `x-fake-ttfb-ms` wait `ms` before its
    /// headers (0: no wait): one provider slower than another.
    pub fn set_default_ttfb_ms(&self, ms: u64) {
        self.shared.default_ttfb_ms.store(ms, Ordering::SeqCst);
    }

    /// Forgets every recorded request (in-flight ones stop being tracked).
    pub fn clear(&self) {
        self.shared.entries().clear();
        self.shared.notify();
    }

    /// Waits until at least `n` recorded requests have finished (response
    /// completed, cut, or abandoned by the client) or `timeout` passes, then
    /// returns everything recorded so far.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Recorded> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut changes = self.shared.changes.subscribe();
        while self.shared.finished_count() < n {
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => break,
            }
        }
        self.requests()
    }
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        self.server.abort();
    }
}

// ---------------------------------------------------------------------------
// Shared state and per-request tracking

struct Shared {
    /// Changed at run time by [`FakeProvider::set_default_scenario`].
    default_scenario: Mutex<Option<String>>,
    /// `x-fake-ttfb-ms` of requests without it (0: none); see
    /// [`FakeProvider::set_default_ttfb_ms`].
    default_ttfb_ms: AtomicU64,
    /// Served over TLS: absolute URLs the fake hands out say `https`.
    tls: bool,
    /// Message Batches, OpenAI files and batches (see `fake_batches/`).
    batches: Mutex<batches::Store>,
    entries: Mutex<Vec<Entry>>,
    /// Bumped on every state change that `wait_for` may care about.
    changes: watch::Sender<u64>,
    next_id: AtomicU64,
}

struct Entry {
    id: u64,
    /// Completed, cut or abandoned: nothing more will happen to it.
    finished: bool,
    recorded: Recorded,
}

impl Shared {
    fn entries(&self) -> MutexGuard<'_, Vec<Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn notify(&self) {
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
    }

    fn finished_count(&self) -> usize {
        self.entries().iter().filter(|e| e.finished).count()
    }

    fn record(self: &Arc<Self>, recorded: Recorded) -> Tracker {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.entries().push(Entry {
            id,
            finished: false,
            recorded,
        });
        self.notify();
        Tracker {
            shared: Arc::clone(self),
            id,
            finished: false,
        }
    }

    /// Applies `f` to entry `id` (a no-op when it was cleared meanwhile).
    fn update(&self, id: u64, f: impl FnOnce(&mut Entry)) {
        if let Some(entry) = self.entries().iter_mut().rev().find(|e| e.id == id) {
            f(entry);
        }
    }
}

/// Follows one request from arrival to the end of its response. Dropping it
/// before [`Tracker::finish`] means the client went away.
struct Tracker {
    shared: Arc<Shared>,
    id: u64,
    finished: bool,
}

impl Tracker {
    fn set_reply(&self, status: StatusCode, usage: Option<FakeUsage>, cost: Option<f64>) {
        self.shared.update(self.id, |e| {
            e.recorded.status = status.as_u16();
            e.recorded.usage = usage;
            e.recorded.reported_cost = cost;
        });
    }

    fn sent(&self, chunk: &[u8]) {
        self.shared.update(self.id, |e| {
            let rec = &mut e.recorded;
            let room = RESPONSE_CAP.saturating_sub(rec.response.len());
            rec.response
                .extend_from_slice(&chunk[..room.min(chunk.len())]);
            rec.response_bytes += chunk.len() as u64;
        });
    }

    fn finish(&mut self, completed: bool, client_gone: bool) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.shared.update(self.id, |e| {
            e.finished = true;
            e.recorded.completed = completed;
            e.recorded.client_gone = client_gone;
        });
        self.shared.notify();
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.finish(false, true);
    }
}

/// One step of a response body.
enum Frame {
    /// Bytes to send as one body chunk.
    Data(Bytes),
    /// Abort the response here (the `cut` scenario).
    Abort,
}

type FrameStream = Pin<Box<dyn Stream<Item = Frame> + Send + 'static>>;

/// The response body: sends the frames, records them, and tells the
/// [`Tracker`] how the response ended.
struct TrackedBody {
    frames: FrameStream,
    tracker: Tracker,
    /// For bodies with a `content-length`: hyper stops polling once that
    /// many bytes went out, so completion is detected by counting.
    expected_len: Option<u64>,
    sent: u64,
}

impl Stream for TrackedBody {
    type Item = Result<Bytes, io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.tracker.finished {
            return Poll::Ready(None);
        }
        match this.frames.as_mut().poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Frame::Data(chunk))) => {
                this.tracker.sent(&chunk);
                this.sent += chunk.len() as u64;
                if this.expected_len == Some(this.sent) {
                    this.tracker.finish(true, false);
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Frame::Abort)) => {
                this.tracker.finish(false, false);
                Poll::Ready(Some(Err(io::Error::other(
                    "fake provider: `cut` scenario aborts the response",
                ))))
            }
            Poll::Ready(None) => {
                this.tracker.finish(true, false);
                Poll::Ready(None)
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Request handling

/// The provider dialect of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dialect {
    Anthropic,
    OpenAi,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
    Messages,
    CountTokens,
    ChatCompletions,
    Embeddings,
    Responses,
    Models,
    Unknown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    Text,
    ToolUse,
    Thinking,
    OpenRouter,
    Error(u16),
    MidstreamError,
    Slow,
    Cut,
    Big,
    Hang,
}

impl Scenario {
    fn parse(name: &str) -> Option<Scenario> {
        Some(match name {
            "text" => Scenario::Text,
            "tool_use" => Scenario::ToolUse,
            "thinking" => Scenario::Thinking,
            "openrouter" => Scenario::OpenRouter,
            "midstream-error" => Scenario::MidstreamError,
            "slow" => Scenario::Slow,
            "cut" => Scenario::Cut,
            "big" => Scenario::Big,
            "hang" => Scenario::Hang,
            other => {
                let status = other.strip_prefix("error-")?.parse::<u16>().ok()?;
                if !(400..=599).contains(&status) {
                    return None;
                }
                Scenario::Error(status)
            }
        })
    }
}

/// `true` when `name` is a scenario the fake understands.
pub fn is_known_scenario(name: &str) -> bool {
    Scenario::parse(name).is_some()
}

/// Everything about one generation call that shapes the response.
struct Call {
    dialect: Dialect,
    scenario: Scenario,
    openrouter: bool,
    model: String,
    stream: bool,
    /// OpenAI `stream_options.include_usage`.
    include_usage: bool,
    usage: UsageOverride,
    headers: HeaderMap,
    /// `request-id` / `x-request-id` of this response.
    request_id: String,
    /// `msg_…`, `chatcmpl-…` or `gen-…`.
    message_id: String,
    created: u64,
    /// Anthropic `speed` and `inference_geo` asked for (echoed in usage).
    speed: Option<String>,
    geo: Option<String>,
}

impl Call {
    /// A call with the dialect's defaults, before the body says more.
    fn new(dialect: Dialect, scenario: Scenario, headers: HeaderMap) -> Call {
        Call {
            dialect,
            scenario,
            openrouter: false,
            model: match dialect {
                Dialect::Anthropic => DEFAULT_ANTHROPIC_MODEL,
                Dialect::OpenAi => DEFAULT_OPENAI_MODEL,
            }
            .to_owned(),
            stream: false,
            include_usage: false,
            usage: UsageOverride::default(),
            headers,
            request_id: format!("req_{}", token()),
            message_id: match dialect {
                Dialect::Anthropic => format!("msg_{}", token()),
                Dialect::OpenAi => format!("chatcmpl-{}", token()),
            },
            created: unix_now(),
            speed: None,
            geo: None,
        }
    }
}

/// What to send back, before it is turned into an HTTP response.
struct Reply {
    status: StatusCode,
    headers: Vec<(HeaderName, String)>,
    body: ReplyBody,
    usage: Option<FakeUsage>,
    cost: Option<f64>,
}

enum ReplyBody {
    /// A complete body, sent with `content-length`.
    Full(Bytes),
    /// A chunked body.
    Stream(FrameStream),
}

impl Reply {
    fn json(status: StatusCode, value: &Value) -> Reply {
        Reply {
            status,
            headers: vec![(CONTENT_TYPE, "application/json".to_owned())],
            body: ReplyBody::Full(Bytes::from(value.to_string())),
            usage: None,
            cost: None,
        }
    }

    fn event_stream(frames: FrameStream) -> Reply {
        Reply {
            status: StatusCode::OK,
            headers: vec![
                (CONTENT_TYPE, "text/event-stream; charset=utf-8".to_owned()),
                (CACHE_CONTROL, "no-cache".to_owned()),
            ],
            body: ReplyBody::Stream(frames),
            usage: None,
            cost: None,
        }
    }

    fn with_usage(mut self, usage: Option<FakeUsage>, cost: Option<f64>) -> Reply {
        self.usage = usage;
        self.cost = cost;
        self
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers
            .push((HeaderName::from_static(name), value.into()));
        self
    }

    fn into_response(self, tracker: Tracker) -> Response {
        tracker.set_reply(self.status, self.usage, self.cost);
        let (frames, expected_len): (FrameStream, _) = match self.body {
            ReplyBody::Full(bytes) => {
                let len = bytes.len() as u64;
                (Box::pin(stream::iter([Frame::Data(bytes)])), Some(len))
            }
            ReplyBody::Stream(frames) => (frames, None),
        };
        let mut response = Response::new(Body::from_stream(TrackedBody {
            frames,
            tracker,
            expected_len,
            sent: 0,
        }));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        for (name, value) in self.headers {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.append(name, value);
            }
        }
        if let Some(len) = expected_len {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
        }
        response
    }
}

/// The recorder state and the router serving it.
fn app(default_scenario: Option<String>, tls: bool) -> (Arc<Shared>, Router) {
    let (changes, _) = watch::channel(0_u64);
    let shared = Arc::new(Shared {
        default_scenario: Mutex::new(default_scenario),
        default_ttfb_ms: AtomicU64::new(0),
        tls,
        batches: Mutex::new(batches::Store::default()),
        entries: Mutex::new(Vec::new()),
        changes,
        next_id: AtomicU64::new(0),
    });
    let router = Router::new()
        .fallback(handle)
        .with_state(Arc::clone(&shared));
    (shared, router)
}

/// The single axum handler: control endpoints, recording, dispatch.
async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    if parts.uri.path().starts_with("/_fake/") {
        return control(&shared, &parts.method, parts.uri.path());
    }
    // A body that cannot be read (client went away mid-upload) is recorded empty.
    let body = to_bytes(body, REQUEST_BODY_LIMIT).await.unwrap_or_default();
    let scenario = header_str(&parts.headers, "x-fake-scenario")
        .map(str::to_owned)
        .or_else(|| {
            shared
                .default_scenario
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        })
        .unwrap_or_else(|| "text".to_owned());
    let tracker = shared.record(Recorded {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned()),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.to_vec(),
        version: format!("{:?}", parts.version),
        scenario: scenario.clone(),
        status: 0,
        usage: None,
        reported_cost: None,
        response: Vec::new(),
        response_bytes: 0,
        completed: false,
        client_gone: false,
    });
    // If the client goes away while this awaits (e.g. `hang`), hyper drops
    // this future and with it the tracker, which records `client_gone`.
    let reply = respond(
        &shared,
        &parts.method,
        &parts.uri,
        parts.headers,
        &body,
        &scenario,
    )
    .await;
    reply.into_response(tracker)
}

/// `GET /_fake/requests`, `POST /_fake/clear` and `GET /_fake/batches`.
fn control(shared: &Shared, method: &Method, path: &str) -> Response {
    let reply = match (method, path) {
        (&Method::GET, "/_fake/batches") => shared.batches_json(),
        (&Method::GET, "/_fake/requests") => {
            let list: Vec<Value> = shared
                .entries()
                .iter()
                .map(|e| e.recorded.to_json())
                .collect();
            Value::Array(list)
        }
        (&Method::POST, "/_fake/clear") => {
            let cleared = {
                let mut entries = shared.entries();
                let n = entries.len();
                entries.clear();
                n
            };
            shared.notify();
            json!({ "cleared": cleared })
        }
        _ => {
            let mut response = Response::new(Body::from(
                json!({"error": "unknown fake control endpoint"}).to_string(),
            ));
            *response.status_mut() = StatusCode::NOT_FOUND;
            return response;
        }
    };
    let mut response = Response::new(Body::from(reply.to_string()));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Builds the reply for one recorded request.
async fn respond(
    shared: &Shared,
    method: &Method,
    uri: &http::Uri,
    headers: HeaderMap,
    body: &[u8],
    scenario_name: &str,
) -> Reply {
    let path = uri.path();
    let batch_route = batches::Route::parse(path);
    let endpoint = if path.ends_with("/messages/count_tokens") {
        Endpoint::CountTokens
    } else if path.ends_with("/messages") {
        Endpoint::Messages
    } else if path.ends_with("/chat/completions") {
        Endpoint::ChatCompletions
    } else if path.ends_with("/embeddings") {
        Endpoint::Embeddings
    } else if path.ends_with("/responses") {
        Endpoint::Responses
    } else if path.ends_with("/models") {
        Endpoint::Models
    } else {
        Endpoint::Unknown
    };
    let dialect = match (endpoint, &batch_route) {
        (_, Some(route)) => route.dialect(),
        (endpoint, None) => match endpoint {
            Endpoint::Messages | Endpoint::CountTokens => Dialect::Anthropic,
            Endpoint::ChatCompletions | Endpoint::Embeddings | Endpoint::Responses => {
                Dialect::OpenAi
            }
            Endpoint::Models | Endpoint::Unknown => {
                if headers.contains_key("anthropic-version") || headers.contains_key("x-api-key") {
                    Dialect::Anthropic
                } else {
                    Dialect::OpenAi
                }
            }
        },
    };
    let mut call = Call::new(dialect, Scenario::Text, headers);
    let Some(scenario) = Scenario::parse(scenario_name) else {
        return error_reply(
            &call,
            StatusCode::BAD_REQUEST,
            &format!("fake provider: unknown scenario {scenario_name:?} (known: {SCENARIOS:?})"),
        );
    };
    call.scenario = scenario;
    call.openrouter = scenario == Scenario::OpenRouter;
    if call.openrouter {
        call.message_id = format!("gen-{}-{}", call.created, &token()[12..]);
    }

    let default_ttfb = Some(shared.default_ttfb_ms.load(Ordering::SeqCst)).filter(|&ms| ms > 0);
    if let Some(ttfb) = header_u64(&call.headers, "x-fake-ttfb-ms").or(default_ttfb) {
        tokio::time::sleep(Duration::from_millis(ttfb)).await;
    }
    if scenario == Scenario::Hang {
        let delay = header_u64(&call.headers, "x-fake-delay-ms").unwrap_or(30_000);
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if let Scenario::Error(status) = scenario {
        // An error can be made to take a while (coalesced waiters join it).
        if let Some(delay) = header_u64(&call.headers, "x-fake-delay-ms") {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return error_reply(&call, status, error_message(status));
    }
    match header_str(&call.headers, "x-fake-usage").map(UsageOverride::parse) {
        Some(Ok(usage)) => call.usage = usage,
        Some(Err(problem)) => {
            return error_reply(
                &call,
                StatusCode::BAD_REQUEST,
                &format!("fake provider: bad x-fake-usage: {problem}"),
            )
        }
        None => {}
    }

    if let Some(route) = batch_route {
        return batches::respond(shared, route, method, uri, &call, body);
    }

    let routed = matches!(
        (method, endpoint),
        (&Method::POST, Endpoint::Messages)
            | (&Method::POST, Endpoint::CountTokens)
            | (&Method::POST, Endpoint::ChatCompletions)
            | (&Method::POST, Endpoint::Embeddings)
            | (&Method::POST, Endpoint::Responses)
            | (&Method::GET, Endpoint::Models)
    );
    if !routed {
        return error_reply(
            &call,
            StatusCode::NOT_FOUND,
            &format!("fake provider: no route for {method} {path}"),
        );
    }
    if endpoint == Endpoint::Models {
        return models_reply(&call);
    }

    let request: Value = match serde_json::from_slice(body) {
        Ok(value @ Value::Object(_)) => value,
        Ok(_) => {
            return error_reply(
                &call,
                StatusCode::BAD_REQUEST,
                "The request body must be a JSON object",
            )
        }
        Err(e) => {
            return error_reply(
                &call,
                StatusCode::BAD_REQUEST,
                &format!("The request body is not valid JSON: {e}"),
            )
        }
    };
    apply_request(&mut call, &request);
    generation_reply(&call, endpoint, &request)
}

/// What the request body says about the answer: `model`, `speed`,
/// `inference_geo`, `stream` and `stream_options.include_usage`.
fn apply_request(call: &mut Call, request: &Value) {
    if let Some(model) = request.get("model").and_then(Value::as_str) {
        call.model = model.to_owned();
    }
    call.speed = request
        .get("speed")
        .and_then(Value::as_str)
        .map(str::to_owned);
    call.geo = request
        .get("inference_geo")
        .and_then(Value::as_str)
        .map(str::to_owned);
    call.stream = request.get("stream").and_then(Value::as_bool) == Some(true)
        && call.scenario != Scenario::Hang;
    call.include_usage = request
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        == Some(true);
}

/// The answer of a generation endpoint (or count_tokens) to `request`.
fn generation_reply(call: &Call, endpoint: Endpoint, request: &Value) -> Reply {
    if endpoint == Endpoint::CountTokens {
        return count_tokens_reply(call);
    }
    if endpoint == Endpoint::Embeddings {
        return embeddings_reply(call, request);
    }
    if endpoint == Endpoint::Responses {
        return responses_reply(call, request);
    }
    match (call.dialect, call.stream) {
        (Dialect::Anthropic, false) => anthropic_message_reply(call),
        (Dialect::Anthropic, true) => anthropic_stream_reply(call),
        (Dialect::OpenAi, false) => openai_completion_reply(call),
        (Dialect::OpenAi, true) => openai_stream_reply(call),
    }
}

// ---------------------------------------------------------------------------
// Scripts: the canonical content of an answer, rendered in either dialect

const TEXT_PARTS: &[&str] = &["Hello", " there!"];
const SLOW_PARTS: &[&str] = &["Hello", " there!", " How", " can I", " help?"];
const TOOL_TEXT_PARTS: &[&str] = &["Let me check", " the weather."];
/// `input_json_delta` fragments; the first is `""` like the real API.
const TOOL_JSON_PARTS: &[&str] = &["", "{\"location\": ", "\"Paris\"}"];
const THINKING_PARTS: &[&str] = &["The user greets me.", " A short, friendly answer fits."];
const SIGNATURE: &str = "EqQBCkgIBhABGAIiQGZha2Utc2lnbmF0dXJlLWZvci10b2xsZ2F0ZS10ZXN0cw==";
/// `output_tokens_details.thinking_tokens` of the `thinking` scenario
/// (capped at the output).
const THINKING_TOKENS: u64 = 3;

enum Block {
    Thinking(&'static [&'static str]),
    Text(&'static [&'static str]),
    ToolUse {
        id_suffix: String,
        name: &'static str,
        fragments: &'static [&'static str],
    },
}

struct Script {
    blocks: Vec<Block>,
    tool_use: bool,
    thinking_tokens: u64,
}

impl Script {
    fn for_scenario(scenario: Scenario) -> Script {
        let (blocks, tool_use, thinking_tokens) = match scenario {
            Scenario::ToolUse => (
                vec![
                    Block::Text(TOOL_TEXT_PARTS),
                    Block::ToolUse {
                        id_suffix: token(),
                        name: "get_weather",
                        fragments: TOOL_JSON_PARTS,
                    },
                ],
                true,
                0,
            ),
            Scenario::Thinking => (
                vec![Block::Thinking(THINKING_PARTS), Block::Text(TEXT_PARTS)],
                false,
                THINKING_TOKENS,
            ),
            Scenario::Slow => (vec![Block::Text(SLOW_PARTS)], false, 0),
            _ => (vec![Block::Text(TEXT_PARTS)], false, 0),
        };
        Script {
            blocks,
            tool_use,
            thinking_tokens,
        }
    }

    /// Number of Anthropic content-block deltas (a signature counts as one).
    fn delta_count(&self) -> u64 {
        self.blocks
            .iter()
            .map(|b| match b {
                Block::Thinking(parts) => parts.len() + 1,
                Block::Text(parts) => parts.len(),
                Block::ToolUse { fragments, .. } => fragments.len(),
            } as u64)
            .sum()
    }

    fn default_output(&self) -> u64 {
        self.delta_count() + OUTPUT_OVERHEAD
    }

    fn text(&self) -> Option<String> {
        let text: String = self
            .blocks
            .iter()
            .filter_map(|b| match b {
                Block::Text(parts) => Some(parts.concat()),
                _ => None,
            })
            .collect();
        (!text.is_empty()).then_some(text)
    }
}

// ---------------------------------------------------------------------------
// Usage

/// Parsed `x-fake-usage` header; unset fields take the scenario defaults.
#[derive(Clone, Copy, Debug, Default)]
struct UsageOverride {
    input: Option<u64>,
    output: Option<u64>,
    cache_write: Option<u64>,
    cache_write_1h: Option<u64>,
    cache_read: Option<u64>,
}

impl UsageOverride {
    fn parse(spec: &str) -> Result<UsageOverride, String> {
        let mut usage = UsageOverride::default();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| format!("expected key=value, got {item:?}"))?;
            let value = value
                .trim()
                .parse::<u64>()
                .map_err(|e| format!("{key}: {e}"))?;
            let slot = match key.trim() {
                "input" => &mut usage.input,
                "output" => &mut usage.output,
                "cache_write" => &mut usage.cache_write,
                "cache_write_1h" => &mut usage.cache_write_1h,
                "cache_read" => &mut usage.cache_read,
                other => return Err(format!("unknown key {other:?}")),
            };
            *slot = Some(value);
        }
        if usage.cache_write_1h.unwrap_or(0) > usage.cache_write.unwrap_or(0) {
            return Err("cache_write_1h exceeds cache_write".to_owned());
        }
        Ok(usage)
    }

    fn resolve(&self, default_output: u64) -> FakeUsage {
        FakeUsage {
            input_tokens: self.input.unwrap_or(DEFAULT_INPUT_TOKENS),
            output_tokens: self.output.unwrap_or(default_output),
            cache_creation_input_tokens: self.cache_write.unwrap_or(0),
            cache_creation_1h_input_tokens: self.cache_write_1h.unwrap_or(0),
            cache_read_input_tokens: self.cache_read.unwrap_or(0),
        }
    }
}

/// `message_start.message.usage`: the full input side, output placeholder 1.
fn anthropic_start_usage(call: &Call, u: &FakeUsage) -> Value {
    let mut usage = json!({
        "input_tokens": u.input_tokens,
        "cache_creation_input_tokens": u.cache_creation_input_tokens,
        "cache_read_input_tokens": u.cache_read_input_tokens,
        "cache_creation": anthropic_cache_creation(u),
        "output_tokens": 1,
        "service_tier": "standard",
        "inference_geo": "global",
    });
    add_speed_and_geo(call, &mut usage);
    usage
}

/// `x-fake-fallback`: the turn's two iterations.
fn add_iterations(call: &Call, u: &FakeUsage, usage: &mut Value) {
    let Some(fallback) = header_str(&call.headers, "x-fake-fallback") else {
        return;
    };
    let step = |kind: &str, model: &str, output: u64| {
        json!({
            "type": kind, "model": model,
            "input_tokens": u.input_tokens,
            "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
            "output_tokens": output,
        })
    };
    usage["iterations"] = json!([
        step("message", &call.model, 0),
        step("fallback_message", fallback, u.output_tokens),
    ]);
}

/// `usage.speed` and `usage.inference_geo` as the request asked.
fn add_speed_and_geo(call: &Call, usage: &mut Value) {
    if let Some(speed) = &call.speed {
        usage["speed"] = json!(speed);
    }
    if let Some(geo) = &call.geo {
        usage["inference_geo"] = json!(geo);
    }
}

/// The usage object of a non-streaming `Message` (§1.3).
fn anthropic_full_usage(call: &Call, u: &FakeUsage, thinking_tokens: u64) -> Value {
    let mut usage = json!({
        "input_tokens": u.input_tokens,
        "cache_creation_input_tokens": u.cache_creation_input_tokens,
        "cache_read_input_tokens": u.cache_read_input_tokens,
        "cache_creation": anthropic_cache_creation(u),
        "output_tokens": u.output_tokens,
        "output_tokens_details": {"thinking_tokens": thinking_tokens},
        "server_tool_use": {"web_search_requests": 0, "web_fetch_requests": 0},
        "service_tier": "standard",
        "inference_geo": "global",
    });
    add_speed_and_geo(call, &mut usage);
    add_iterations(call, u, &mut usage);
    add_openrouter_cost(call, u, &mut usage);
    usage
}

/// The cumulative usage of the final `message_delta`.
fn anthropic_delta_usage(call: &Call, u: &FakeUsage, thinking_tokens: u64) -> Value {
    let mut usage = json!({
        "input_tokens": u.input_tokens,
        "cache_creation_input_tokens": u.cache_creation_input_tokens,
        "cache_read_input_tokens": u.cache_read_input_tokens,
        "output_tokens": u.output_tokens,
    });
    if thinking_tokens > 0 {
        usage["output_tokens_details"] = json!({"thinking_tokens": thinking_tokens});
    }
    add_iterations(call, u, &mut usage);
    add_openrouter_cost(call, u, &mut usage);
    usage
}

fn anthropic_cache_creation(u: &FakeUsage) -> Value {
    json!({
        "ephemeral_5m_input_tokens": u.cache_creation_5m_input_tokens(),
        "ephemeral_1h_input_tokens": u.cache_creation_1h_input_tokens,
    })
}

/// OpenAI `usage` (§8; OpenRouter additions §9.2 in that flavour).
fn openai_usage(call: &Call, u: &FakeUsage, reasoning_tokens: u64) -> Value {
    // OpenRouter counts cache writes inside prompt_tokens (§9.2: 194 + 2 = 196).
    let prompt = u.prompt_tokens()
        + if call.openrouter {
            u.cache_creation_input_tokens
        } else {
            0
        };
    let mut usage = json!({
        "prompt_tokens": prompt,
        "completion_tokens": u.output_tokens,
        "total_tokens": prompt + u.output_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cache_read_input_tokens, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    });
    if call.openrouter {
        usage["prompt_tokens_details"]["cache_write_tokens"] = json!(u.cache_creation_input_tokens);
        add_openrouter_cost(call, u, &mut usage);
    }
    usage
}

/// Adds `cost`, `is_byok` and `cost_details` in the OpenRouter flavour.
fn add_openrouter_cost(call: &Call, u: &FakeUsage, usage: &mut Value) {
    if call.openrouter {
        usage["cost"] = json!(u.openrouter_cost());
        usage["is_byok"] = json!(false);
        usage["cost_details"] = json!({
            "upstream_inference_cost": null,
            "upstream_inference_prompt_cost": u.openrouter_prompt_cost(),
            "upstream_inference_completions_cost": u.openrouter_completion_cost(),
        });
    }
}

fn reported_cost(call: &Call, usage: &FakeUsage) -> Option<f64> {
    call.openrouter.then(|| usage.openrouter_cost())
}

// ---------------------------------------------------------------------------
// Non-generation endpoints and errors

fn count_tokens_reply(call: &Call) -> Reply {
    let usage = call.usage.resolve(0);
    let total =
        usage.input_tokens + usage.cache_creation_input_tokens + usage.cache_read_input_tokens;
    Reply::json(StatusCode::OK, &json!({ "input_tokens": total }))
        .header("request-id", call.request_id.clone())
}

fn models_reply(call: &Call) -> Reply {
    match call.dialect {
        Dialect::Anthropic => Reply::json(
            StatusCode::OK,
            &json!({
                "data": [
                    {"type": "model", "id": "claude-sonnet-4-5-20250929", "display_name": "Claude Sonnet 4.5", "created_at": "2025-09-29T00:00:00Z"},
                    {"type": "model", "id": "claude-haiku-4-5-20251001", "display_name": "Claude Haiku 4.5", "created_at": "2025-10-01T00:00:00Z"},
                ],
                "has_more": false,
                "first_id": "claude-sonnet-4-5-20250929",
                "last_id": "claude-haiku-4-5-20251001",
            }),
        )
        .header("request-id", call.request_id.clone()),
        Dialect::OpenAi => Reply::json(
            StatusCode::OK,
            &json!({
                "object": "list",
                "data": [
                    {"id": "gpt-4o-2024-08-06", "object": "model", "created": 1_722_814_719, "owned_by": "system"},
                    {"id": "gpt-4o-mini", "object": "model", "created": 1_721_172_741, "owned_by": "system"},
                ],
            }),
        )
        .header("x-request-id", call.request_id.clone()),
    }
}

fn error_message(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "fake provider: forced bad request",
        401 => "invalid x-api-key",
        403 => "Your API key does not have permission to use the specified resource.",
        404 => "The requested resource could not be found.",
        429 => "Number of request tokens has exceeded your per-minute rate limit",
        529 => "Overloaded",
        _ if status.is_server_error() => "Internal server error",
        _ => "fake provider: forced error",
    }
}

/// An error in the dialect's envelope, with `retry-after` on 429/529 and
/// `x-should-retry: false` when the request asked for `x-fake-no-retry: 1`.
fn error_reply(call: &Call, status: StatusCode, message: &str) -> Reply {
    let code = status.as_u16();
    let mut reply = match call.dialect {
        Dialect::Anthropic => {
            let kind = match code {
                401 => "authentication_error",
                402 => "billing_error",
                403 => "permission_error",
                404 => "not_found_error",
                413 => "request_too_large",
                429 => "rate_limit_error",
                504 => "timeout_error",
                529 => "overloaded_error",
                _ if code >= 500 => "api_error",
                _ => "invalid_request_error",
            };
            Reply::json(
                status,
                &json!({
                    "type": "error",
                    "error": {"type": kind, "message": message},
                    "request_id": call.request_id,
                }),
            )
            .header("request-id", call.request_id.clone())
        }
        Dialect::OpenAi => {
            let (kind, err_code) = match code {
                401 => ("invalid_request_error", json!("invalid_api_key")),
                404 => ("invalid_request_error", json!("model_not_found")),
                429 => ("requests", json!("rate_limit_exceeded")),
                529 => ("server_error", json!("overloaded")),
                _ if code >= 500 => ("server_error", Value::Null),
                _ => ("invalid_request_error", Value::Null),
            };
            Reply::json(
                status,
                &json!({"error": {"message": message, "type": kind, "param": null, "code": err_code}}),
            )
            .header("x-request-id", call.request_id.clone())
        }
    };
    if code == 429 || code == 529 {
        let retry_after = header_str(&call.headers, "x-fake-retry-after").unwrap_or("1");
        reply = reply.header("retry-after", retry_after);
    }
    if header_str(&call.headers, "x-fake-no-retry") == Some("1") {
        reply = reply.header("x-should-retry", "false");
    }
    reply
}

// ---------------------------------------------------------------------------
// Anthropic dialect

/// One SSE event: `event: NAME\ndata: JSON\n\n`.
fn sse_event(name: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

/// `ping` exactly as the API writes it (with spaces).
fn sse_ping() -> Bytes {
    Bytes::from_static(b"event: ping\ndata: {\"type\": \"ping\"}\n\n")
}

/// The mid-stream error event exactly as documented.
fn sse_overloaded() -> Bytes {
    Bytes::from_static(
        b"event: error\ndata: {\"type\": \"error\", \"error\": {\"type\": \"overloaded_error\", \"message\": \"Overloaded\"}}\n\n",
    )
}

const OPENROUTER_COMMENT: &[u8] = b": OPENROUTER PROCESSING\n\n";

fn anthropic_headers(call: &Call, reply: Reply) -> Reply {
    reply.header("request-id", call.request_id.clone())
}

fn anthropic_message_reply(call: &Call) -> Reply {
    let script = Script::for_scenario(call.scenario);
    let usage = call.usage.resolve(script.default_output());
    let content: Vec<Value> = script
        .blocks
        .iter()
        .map(|block| match block {
            Block::Thinking(parts) => {
                json!({"type": "thinking", "thinking": parts.concat(), "signature": SIGNATURE})
            }
            Block::Text(parts) => {
                json!({"type": "text", "text": parts.concat(), "citations": null})
            }
            Block::ToolUse {
                id_suffix,
                name,
                fragments,
            } => json!({
                "type": "tool_use",
                "id": format!("toolu_{id_suffix}"),
                "name": name,
                "input": serde_json::from_str::<Value>(&fragments.concat()).unwrap_or(Value::Null),
            }),
        })
        .collect();
    let mut message = json!({
        "id": call.message_id,
        "type": "message",
        "role": "assistant",
        // A fallback's JSON answer is relabelled with the model that served it.
        "model": header_str(&call.headers, "x-fake-fallback").unwrap_or(&call.model),
        "content": content,
        "stop_reason": if script.tool_use { "tool_use" } else { "end_turn" },
        "stop_sequence": null,
        "stop_details": null,
        "container": null,
        "usage": anthropic_full_usage(call, &usage, script.thinking_tokens.min(usage.output_tokens)),
    });
    if call.openrouter {
        message["provider"] = json!("Anthropic");
    }
    anthropic_headers(call, Reply::json(StatusCode::OK, &message))
        .with_usage(Some(usage), reported_cost(call, &usage))
}

fn anthropic_message_start(call: &Call, usage: &FakeUsage) -> Bytes {
    let mut message = json!({
        "id": call.message_id,
        "type": "message",
        "role": "assistant",
        "content": [],
        "model": call.model,
        "stop_reason": null,
        "stop_sequence": null,
        "usage": anthropic_start_usage(call, usage),
    });
    if call.openrouter {
        message["provider"] = json!("Anthropic");
    }
    sse_event(
        "message_start",
        &json!({"type": "message_start", "message": message}),
    )
}

fn anthropic_block_start(index: usize, block: &Block) -> Bytes {
    let content_block = match block {
        Block::Thinking(_) => json!({"type": "thinking", "thinking": "", "signature": ""}),
        Block::Text(_) => json!({"type": "text", "text": ""}),
        Block::ToolUse {
            id_suffix, name, ..
        } => {
            json!({"type": "tool_use", "id": format!("toolu_{id_suffix}"), "name": name, "input": {}})
        }
    };
    sse_event(
        "content_block_start",
        &json!({"type": "content_block_start", "index": index, "content_block": content_block}),
    )
}

fn anthropic_delta(index: usize, delta: Value) -> Bytes {
    sse_event(
        "content_block_delta",
        &json!({"type": "content_block_delta", "index": index, "delta": delta}),
    )
}

fn anthropic_text_delta(index: usize, text: &str) -> Bytes {
    anthropic_delta(index, json!({"type": "text_delta", "text": text}))
}

fn anthropic_block_deltas(index: usize, block: &Block) -> Vec<Bytes> {
    match block {
        Block::Thinking(parts) => parts
            .iter()
            .map(|p| anthropic_delta(index, json!({"type": "thinking_delta", "thinking": p})))
            .chain([anthropic_delta(
                index,
                json!({"type": "signature_delta", "signature": SIGNATURE}),
            )])
            .collect(),
        Block::Text(parts) => parts
            .iter()
            .map(|p| anthropic_text_delta(index, p))
            .collect(),
        Block::ToolUse { fragments, .. } => fragments
            .iter()
            .map(|p| {
                anthropic_delta(
                    index,
                    json!({"type": "input_json_delta", "partial_json": p}),
                )
            })
            .collect(),
    }
}

fn anthropic_block_stop(index: usize) -> Bytes {
    sse_event(
        "content_block_stop",
        &json!({"type": "content_block_stop", "index": index}),
    )
}

fn anthropic_message_delta(
    call: &Call,
    stop_reason: &str,
    usage: &FakeUsage,
    thinking: u64,
) -> Bytes {
    sse_event(
        "message_delta",
        &json!({
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": null},
            "usage": anthropic_delta_usage(call, usage, thinking),
        }),
    )
}

fn anthropic_message_stop() -> Bytes {
    sse_event("message_stop", &json!({"type": "message_stop"}))
}

fn anthropic_stream_reply(call: &Call) -> Reply {
    let script = Script::for_scenario(call.scenario);
    let usage = call.usage.resolve(script.default_output());
    // What `message_start` reports: the input side plus the placeholder.
    let start_usage = FakeUsage {
        output_tokens: 1,
        ..usage
    };
    let mut frames = Vec::new();
    if call.openrouter {
        frames.push(Bytes::from_static(OPENROUTER_COMMENT));
    }
    frames.push(anthropic_message_start(call, &usage));

    let (frames, tail, reported) = match call.scenario {
        Scenario::MidstreamError => {
            frames.push(anthropic_block_start(0, &Block::Text(TEXT_PARTS)));
            frames.push(anthropic_text_delta(0, TEXT_PARTS[0]));
            frames.push(sse_overloaded());
            (frames, None, start_usage)
        }
        Scenario::Cut => {
            frames.push(anthropic_block_start(0, &Block::Text(TEXT_PARTS)));
            frames.extend(TEXT_PARTS.iter().map(|p| anthropic_text_delta(0, p)));
            (frames, Some(Frame::Abort), start_usage)
        }
        Scenario::Big => return anthropic_big_reply(call, frames),
        _ => {
            for (index, block) in script.blocks.iter().enumerate() {
                frames.push(anthropic_block_start(index, block));
                if index == 0 {
                    frames.push(sse_ping());
                }
                frames.extend(anthropic_block_deltas(index, block));
                frames.push(anthropic_block_stop(index));
            }
            let stop_reason = if script.tool_use {
                "tool_use"
            } else {
                "end_turn"
            };
            let thinking = script.thinking_tokens.min(usage.output_tokens);
            frames.push(anthropic_message_delta(call, stop_reason, &usage, thinking));
            frames.push(anthropic_message_stop());
            (frames, None, usage)
        }
    };
    let delay = pacing(call);
    anthropic_headers(call, Reply::event_stream(paced(frames, tail, delay)))
        .with_usage(Some(reported), reported_cost(call, &reported))
}

/// `big`: message_start and block start, then ≈ `x-fake-big-bytes` of
/// identical text deltas packed into ~16 KiB chunks, generated lazily.
fn anthropic_big_reply(call: &Call, head: Vec<Bytes>) -> Reply {
    let target = header_u64(&call.headers, "x-fake-big-bytes").unwrap_or(100_000_000);
    let text = big_text();
    let block_start = anthropic_block_start(0, &Block::Text(TEXT_PARTS));
    let delta = anthropic_text_delta(0, &text);
    let delta_len = delta.len() as u64;
    // Estimate the tail with a provisional usage; its size barely varies.
    let provisional = call.usage.resolve(target / delta_len.max(1));
    let tail_len = anthropic_block_stop(0).len()
        + anthropic_message_delta(call, "end_turn", &provisional, 0).len()
        + anthropic_message_stop().len();
    let fixed = head.iter().map(Bytes::len).sum::<usize>() + block_start.len() + tail_len;
    let deltas = (target.saturating_sub(fixed as u64) + delta_len / 2) / delta_len;
    let deltas = deltas.max(1);
    let usage = call.usage.resolve(deltas);

    let head = head.into_iter().chain([block_start]).map(Frame::Data);
    let tail = [
        anthropic_block_stop(0),
        anthropic_message_delta(call, "end_turn", &usage, 0),
        anthropic_message_stop(),
    ]
    .map(Frame::Data);
    let frames = stream::iter(head)
        .chain(packed_repeats(delta, deltas))
        .chain(stream::iter(tail));
    anthropic_headers(call, Reply::event_stream(Box::pin(frames)))
        .with_usage(Some(usage), reported_cost(call, &usage))
}

// ---------------------------------------------------------------------------
// OpenAI-compatible dialect (and the OpenRouter flavour)

fn openai_headers(call: &Call, reply: Reply) -> Reply {
    reply.header("x-request-id", call.request_id.clone())
}

/// Fields shared by every chunk / completion object.
fn openai_object(call: &Call, object: &str) -> Value {
    let mut value = json!({
        "id": call.message_id,
        "object": object,
        "created": call.created,
        "model": call.model,
    });
    if call.openrouter {
        value["provider"] = json!("Anthropic");
    } else {
        value["system_fingerprint"] = json!("fp_fake0000");
    }
    value
}

fn finish_reason(script: &Script) -> &'static str {
    if script.tool_use {
        "tool_calls"
    } else {
        "stop"
    }
}

/// `POST /v1/embeddings`: one deterministic vector per input.
fn embeddings_reply(call: &Call, request: &Value) -> Reply {
    use base64::Engine as _;
    let inputs = match request.get("input") {
        Some(Value::Array(items)) if !items.is_empty() => items.len(),
        Some(Value::String(_)) => 1,
        _ => {
            return error_reply(
                call,
                StatusCode::BAD_REQUEST,
                "'input' must be a string or a non-empty array",
            )
        }
    };
    let dims = request
        .get("dimensions")
        .and_then(Value::as_u64)
        .unwrap_or(8)
        .clamp(1, 4096) as usize;
    let base64 = request.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let data: Vec<Value> = (0..inputs)
        .map(|i| {
            let v: Vec<f32> = (0..dims)
                .map(|d| ((i * dims + d) as f32) / 16.0 - 0.25)
                .collect();
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    let mut usage = call.usage.resolve(0);
    usage.output_tokens = 0;
    usage.cache_read_input_tokens = 0;
    usage.cache_creation_input_tokens = 0;
    usage.cache_creation_1h_input_tokens = 0;
    let body = json!({
        "object": "list",
        "data": data,
        "model": call.model,
        "usage": {"prompt_tokens": usage.input_tokens, "total_tokens": usage.input_tokens},
    });
    openai_headers(call, Reply::json(StatusCode::OK, &body)).with_usage(Some(usage), None)
}

/// `POST /v1/responses`: the text script as a `response`, JSON or events.
fn responses_reply(call: &Call, request: &Value) -> Reply {
    let mut usage = call
        .usage
        .resolve(TEXT_PARTS.len() as u64 + OUTPUT_OVERHEAD);
    let limit = request.get("max_output_tokens").and_then(Value::as_u64);
    let incomplete = limit.is_some_and(|l| usage.output_tokens > l);
    if let Some(l) = limit {
        usage.output_tokens = usage.output_tokens.min(l);
    }
    let id = format!("resp_{}", &call.message_id[9..]);
    let item_id = format!("msg_{}", &call.message_id[9..]);
    let text: String = TEXT_PARTS.concat();
    let cached = usage.cache_read_input_tokens;
    let usage_json = json!({
        "input_tokens": usage.input_tokens + cached,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.input_tokens + cached + usage.output_tokens,
    });
    let message = |status: &str, text: &str| {
        json!({
            "type": "message", "id": item_id, "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
        })
    };
    let response = |status: &str, output: Value, usage: Value| {
        json!({
            "id": id, "object": "response", "created_at": call.created, "status": status,
            "background": false, "error": null,
            "incomplete_details": if status == "incomplete" { json!({"reason": "max_output_tokens"}) } else { Value::Null },
            "instructions": null, "max_output_tokens": limit, "model": call.model,
            "output": output, "parallel_tool_calls": true, "previous_response_id": null,
            "reasoning": {"effort": null, "summary": null}, "service_tier": "default",
            "store": request.get("store").cloned().unwrap_or(json!(true)),
            "temperature": 1.0, "text": {"format": {"type": "text"}}, "tool_choice": "auto",
            "tools": [], "top_p": 1.0, "truncation": "disabled", "usage": usage,
            "metadata": {},
        })
    };
    let status = if incomplete {
        "incomplete"
    } else {
        "completed"
    };
    let final_response = response(status, json!([message("completed", &text)]), usage_json);
    if !call.stream {
        return openai_headers(call, Reply::json(StatusCode::OK, &final_response))
            .with_usage(Some(usage), None);
    }
    let mut seq = 0u64;
    let mut frames = Vec::new();
    let mut event = |name: &str, mut data: Value| {
        data["type"] = json!(name);
        data["sequence_number"] = json!(seq);
        seq += 1;
        frames.push(sse_event(name, &data));
    };
    event(
        "response.created",
        json!({"response": response("in_progress", json!([]), Value::Null)}),
    );
    event(
        "response.in_progress",
        json!({"response": response("in_progress", json!([]), Value::Null)}),
    );
    event(
        "response.output_item.added",
        json!({"output_index": 0, "item": message("in_progress", "")}),
    );
    event(
        "response.content_part.added",
        json!({"item_id": item_id, "output_index": 0, "content_index": 0,
        "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}}),
    );
    for part in TEXT_PARTS {
        event(
            "response.output_text.delta",
            json!({"item_id": item_id, "output_index": 0,
            "content_index": 0, "delta": part, "logprobs": []}),
        );
    }
    if call.scenario == Scenario::Cut {
        return openai_headers(
            call,
            Reply::event_stream(paced(frames, Some(Frame::Abort), pacing(call))),
        )
        .with_usage(None, None);
    }
    event(
        "response.output_text.done",
        json!({"item_id": item_id, "output_index": 0,
        "content_index": 0, "text": text, "logprobs": []}),
    );
    event(
        "response.content_part.done",
        json!({"item_id": item_id, "output_index": 0, "content_index": 0,
        "part": {"type": "output_text", "text": text, "annotations": [], "logprobs": []}}),
    );
    event(
        "response.output_item.done",
        json!({"output_index": 0, "item": message("completed", &text)}),
    );
    if header_str(&call.headers, "x-fake-response-failed").is_some() {
        let mut failed = final_response;
        failed["status"] = json!("failed");
        failed["error"] = json!({"code": "server_error", "message": "The model failed to finish."});
        event("response.failed", json!({"response": failed}));
    } else {
        let terminal = if incomplete {
            "response.incomplete"
        } else {
            "response.completed"
        };
        event(terminal, json!({"response": final_response}));
    }
    openai_headers(call, Reply::event_stream(paced(frames, None, pacing(call))))
        .with_usage(Some(usage), None)
}

fn openai_completion_reply(call: &Call) -> Reply {
    let script = Script::for_scenario(call.scenario);
    let usage = call.usage.resolve(script.default_output());
    let tool_calls: Vec<Value> = script
        .blocks
        .iter()
        .filter_map(|block| match block {
            Block::ToolUse {
                id_suffix,
                name,
                fragments,
            } => Some(json!({
                "id": format!("call_{id_suffix}"),
                "type": "function",
                "function": {"name": name, "arguments": fragments.concat()},
            })),
            _ => None,
        })
        .collect();
    let mut completion = openai_object(call, "chat.completion");
    if !call.openrouter {
        completion["service_tier"] = json!("default");
    }
    completion["choices"] = json!([{
        "index": 0,
        "message": {
            "role": "assistant",
            "content": script.text(),
            "refusal": null,
            "tool_calls": if tool_calls.is_empty() { Value::Null } else { Value::Array(tool_calls) },
        },
        "logprobs": null,
        "finish_reason": finish_reason(&script),
    }]);
    completion["usage"] = openai_usage(
        call,
        &usage,
        script.thinking_tokens.min(usage.output_tokens),
    );
    openai_headers(call, Reply::json(StatusCode::OK, &completion))
        .with_usage(Some(usage), reported_cost(call, &usage))
}

/// One `chat.completion.chunk` with a single choice.
fn openai_chunk(call: &Call, delta: Value, finish: Option<&str>) -> Value {
    let mut chunk = openai_object(call, "chat.completion.chunk");
    chunk["choices"] = json!([{
        "index": 0,
        "delta": delta,
        "logprobs": null,
        "finish_reason": finish,
    }]);
    // Real OpenAI streams with include_usage carry `"usage": null` on
    // every chunk but the last.
    if call.include_usage && !call.openrouter {
        chunk["usage"] = Value::Null;
    }
    chunk
}

fn sse_data(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

fn sse_done() -> Bytes {
    Bytes::from_static(b"data: [DONE]\n\n")
}

fn openai_role_chunk(call: &Call, content: Value) -> Bytes {
    sse_data(&openai_chunk(
        call,
        json!({"role": "assistant", "content": content, "refusal": null}),
        None,
    ))
}

fn openai_content_chunk(call: &Call, text: &str) -> Bytes {
    sse_data(&openai_chunk(call, json!({"content": text}), None))
}

/// Whether this stream ends with the `choices: []` usage chunk.
fn openai_streams_usage(call: &Call) -> bool {
    call.include_usage || call.openrouter
}

fn openai_usage_chunk(call: &Call, usage: &FakeUsage, reasoning: u64) -> Bytes {
    let mut chunk = openai_object(call, "chat.completion.chunk");
    chunk["choices"] = json!([]);
    chunk["usage"] = openai_usage(call, usage, reasoning);
    sse_data(&chunk)
}

fn openai_stream_reply(call: &Call) -> Reply {
    let script = Script::for_scenario(call.scenario);
    let usage = call.usage.resolve(script.default_output());
    let mut frames = Vec::new();
    if call.openrouter {
        frames.push(Bytes::from_static(OPENROUTER_COMMENT));
    }
    let (frames, tail, reported) = match call.scenario {
        Scenario::MidstreamError => {
            frames.push(openai_role_chunk(call, json!("")));
            frames.push(openai_content_chunk(call, TEXT_PARTS[0]));
            let mut chunk = openai_chunk(call, json!({"content": ""}), Some("error"));
            chunk["error"] = json!({
                "message": "Overloaded",
                "type": "server_error",
                "param": null,
                "code": "overloaded",
            });
            frames.push(sse_data(&chunk));
            (frames, None, None)
        }
        Scenario::Cut => {
            frames.push(openai_role_chunk(call, json!("")));
            frames.extend(TEXT_PARTS.iter().map(|p| openai_content_chunk(call, p)));
            (frames, Some(Frame::Abort), None)
        }
        Scenario::Big => return openai_big_reply(call, frames),
        _ => {
            let has_text = script.text().is_some();
            frames.push(openai_role_chunk(
                call,
                if has_text { json!("") } else { Value::Null },
            ));
            let mut tool_index = 0;
            for block in &script.blocks {
                match block {
                    Block::Thinking(_) => {}
                    Block::Text(parts) => {
                        frames.extend(parts.iter().map(|p| openai_content_chunk(call, p)));
                    }
                    Block::ToolUse {
                        id_suffix,
                        name,
                        fragments,
                    } => {
                        for (i, fragment) in fragments.iter().enumerate() {
                            let tool_call = if i == 0 {
                                json!({
                                    "index": tool_index,
                                    "id": format!("call_{id_suffix}"),
                                    "type": "function",
                                    "function": {"name": name, "arguments": fragment},
                                })
                            } else {
                                json!({"index": tool_index, "function": {"arguments": fragment}})
                            };
                            frames.push(sse_data(&openai_chunk(
                                call,
                                json!({"tool_calls": [tool_call]}),
                                None,
                            )));
                        }
                        tool_index += 1;
                    }
                }
            }
            frames.push(sse_data(&openai_chunk(
                call,
                json!({}),
                Some(finish_reason(&script)),
            )));
            let reported = if openai_streams_usage(call) {
                let reasoning = script.thinking_tokens.min(usage.output_tokens);
                frames.push(openai_usage_chunk(call, &usage, reasoning));
                Some(usage)
            } else {
                None
            };
            frames.push(sse_done());
            (frames, None, reported)
        }
    };
    let delay = pacing(call);
    let cost = reported.and_then(|u| reported_cost(call, &u));
    openai_headers(call, Reply::event_stream(paced(frames, tail, delay))).with_usage(reported, cost)
}

/// `big` in the OpenAI dialect: role chunk, ≈ `x-fake-big-bytes` of content
/// chunks packed into ~16 KiB body chunks, finish chunk, usage, `[DONE]`.
fn openai_big_reply(call: &Call, mut head: Vec<Bytes>) -> Reply {
    let target = header_u64(&call.headers, "x-fake-big-bytes").unwrap_or(100_000_000);
    head.push(openai_role_chunk(call, json!("")));
    let delta = openai_content_chunk(call, &big_text());
    let delta_len = delta.len() as u64;
    let finish = sse_data(&openai_chunk(call, json!({}), Some("stop")));
    let provisional = call.usage.resolve(target / delta_len.max(1));
    let usage_len = if openai_streams_usage(call) {
        openai_usage_chunk(call, &provisional, 0).len()
    } else {
        0
    };
    let fixed =
        head.iter().map(Bytes::len).sum::<usize>() + finish.len() + usage_len + sse_done().len();
    let deltas = ((target.saturating_sub(fixed as u64) + delta_len / 2) / delta_len).max(1);
    let usage = call.usage.resolve(deltas);

    let mut tail = vec![finish];
    let reported = if openai_streams_usage(call) {
        tail.push(openai_usage_chunk(call, &usage, 0));
        Some(usage)
    } else {
        None
    };
    tail.push(sse_done());
    let frames = stream::iter(head.into_iter().map(Frame::Data))
        .chain(packed_repeats(delta, deltas))
        .chain(stream::iter(tail.into_iter().map(Frame::Data)));
    let cost = reported.and_then(|u| reported_cost(call, &u));
    openai_headers(call, Reply::event_stream(Box::pin(frames))).with_usage(reported, cost)
}

// ---------------------------------------------------------------------------
// Helpers

/// The text of every `big` delta: ~1 KiB of plain ASCII (no JSON escapes).
fn big_text() -> String {
    "All work and no play makes a big stream. ".repeat(25)
}

/// `count` copies of `event`, packed into chunks of about
/// [`BIG_CHUNK_BYTES`], produced lazily (one shared buffer, sliced).
fn packed_repeats(event: Bytes, count: u64) -> impl Stream<Item = Frame> + Send + 'static {
    let per_chunk = (BIG_CHUNK_BYTES / event.len().max(1)).max(1) as u64;
    let full = Bytes::from(event.repeat(per_chunk as usize));
    let chunks = count.div_ceil(per_chunk);
    stream::iter((0..chunks).map(move |i| {
        let events = per_chunk.min(count - i * per_chunk);
        Frame::Data(full.slice(..events as usize * event.len()))
    }))
}

/// `slow` waits `x-fake-delay-ms` (default 200) between events.
fn pacing(call: &Call) -> Option<Duration> {
    (call.scenario == Scenario::Slow)
        .then(|| Duration::from_millis(header_u64(&call.headers, "x-fake-delay-ms").unwrap_or(200)))
}

/// Sends `frames` (one body chunk each), waiting `delay` between
/// consecutive frames, then `tail` (the abort of `cut`) after a short grace
/// period, so that everything before it has been flushed to the client.
fn paced(frames: Vec<Bytes>, tail: Option<Frame>, delay: Option<Duration>) -> FrameStream {
    let delay = delay.unwrap_or(Duration::ZERO);
    let frames = stream::iter(frames.into_iter().enumerate()).then(move |(i, chunk)| async move {
        if i > 0 && !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Frame::Data(chunk)
    });
    let tail = stream::iter(tail).then(|frame| async move {
        tokio::time::sleep(CUT_GRACE).await;
        frame
    });
    Box::pin(frames.chain(tail))
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    header_str(headers, name).and_then(|v| v.parse().ok())
}

/// A unique 32-hex-digit token (UUID v7) for ids.
fn token() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
