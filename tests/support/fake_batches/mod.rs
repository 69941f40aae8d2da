//! The fake provider's batch APIs: Anthropic Message Batches, and the
//! OpenAI Files + Batch APIs (providers.md §5 and §8.3). Part of
//! `fake_provider.rs`; its module doc has the overview.
//!
//! Nothing runs in the background: a batch's state is a function of the
//! clock, worked out whenever a request (or `GET /_fake/batches`) looks at
//! it. Each item's answer is computed once at create, with the code that
//! answers the item's endpoint directly, so its usage is exactly what a
//! direct call with the same body and headers would report.
//!
//! Timeline of a batch created at `t0` with processing time `P`
//! (`x-fake-batch-ms`, default 200):
//!
//! * Anthropic: `in_progress` until `t0 + P`, then `ended`. After a cancel at
//!   `c`: `canceling` until `c + x-fake-batch-cancel-ms` (default 100), then
//!   `ended`; items not processed by then are `canceled`.
//! * OpenAI: `validating` until `t0 + P/4` (then `failed` if the input file
//!   is invalid), `in_progress` until `t0 + 3P/4` (when the items finish),
//!   `finalizing` until `t0 + P`, then `completed` (`expired` when an item
//!   expired). After a cancel: `cancelling`, then `cancelled`.
//! * Both: at `x-fake-batch-expires-ms` after create (default 24 h, which is
//!   also `expires_at`) a batch still running ends, its unprocessed items
//!   `expired`.
//!
//! The per-item controls (`custom_id` prefixes `err-`, `exp-`, `hold-`;
//! `x-fake-usage:` user ids) and `GET /_fake/batches` are in the table of
//! `fake_provider.rs`.
//!
//! Where the reference is silent, the fake chooses (unverified against the
//! real APIs): results of a batch not yet ended, deleting it, cancelling an
//! ended batch, and cancelling a terminal OpenAI batch are 400
//! `invalid_request_error`; OpenAI `request_counts.failed` counts every item
//! that did not succeed (errored, cancelled, expired); the batch-create
//! validation messages follow the API's pydantic style; Anthropic items
//! report `usage.service_tier: "batch"`, OpenAI bodies keep the endpoint's
//! own `service_tier`; results and output files list items in **reverse**
//! submission order (the real APIs promise no order; match by `custom_id`).

use std::collections::HashSet;
use std::sync::MutexGuard;

use http::header::HOST;
use http::Uri;

use super::*;

mod anthropic;
mod files;
mod openai;

/// Default time from create to the end of processing.
const DEFAULT_BATCH_MS: u64 = 200;
/// Default time a cancel takes (`canceling` / `cancelling`).
const DEFAULT_CANCEL_MS: u64 = 100;
/// The real APIs expire a batch 24 h after create.
const DAY_MS: u64 = 24 * 3600 * 1000;
/// `purpose=batch` files expire after 30 days.
const FILE_TTL_S: u64 = 30 * 24 * 3600;
const ANTHROPIC_MAX_REQUESTS: usize = 100_000;
const OPENAI_MAX_REQUESTS: usize = 50_000;
const OPENAI_ENDPOINTS: &[&str] = &["/v1/chat/completions", "/v1/responses", "/v1/embeddings"];
/// Prefix of a user id that carries a per-item `x-fake-usage`.
const USAGE_PREFIX: &str = "x-fake-usage:";
/// What an `err-` item answers.
const ERRORED_MESSAGE: &str = "fake provider: this item errored (custom_id prefix err-)";

// ---------------------------------------------------------------------------
// Routing

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Api {
    MessageBatches,
    Files,
    Batches,
}

/// A request for one of the batch APIs: which API, the path before it (for
/// absolute URLs) and the path segments after it.
pub(super) struct Route {
    api: Api,
    base: String,
    rest: Vec<String>,
}

impl Route {
    /// Routes by the end of the path like the rest of the fake:
    /// `…/messages/batches[/…]`, `…/files[/…]`, `…/batches[/…]`.
    pub(super) fn parse(path: &str) -> Option<Route> {
        [
            (Api::MessageBatches, "/messages/batches"),
            (Api::Files, "/files"),
            (Api::Batches, "/batches"),
        ]
        .into_iter()
        .find_map(|(api, marker)| {
            let at = path.rfind(marker)?;
            let rest = &path[at + marker.len()..];
            (rest.is_empty() || rest.starts_with('/')).then(|| Route {
                api,
                base: path[..at].to_owned(),
                rest: rest
                    .split('/')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect(),
            })
        })
    }

    pub(super) fn dialect(&self) -> Dialect {
        match self.api {
            Api::MessageBatches => Dialect::Anthropic,
            Api::Files | Api::Batches => Dialect::OpenAi,
        }
    }
}

/// Answers one batch-API request.
pub(super) fn respond(
    shared: &Shared,
    route: Route,
    method: &Method,
    uri: &Uri,
    call: &Call,
    body: &[u8],
) -> Reply {
    let now = now_ms();
    let mut store = shared.store();
    store.tick(now);
    let query = Query::parse(uri.query());
    let origin = origin(shared, uri, call, &route.base);
    let rest: Vec<&str> = route.rest.iter().map(String::as_str).collect();
    match (route.api, method, rest.as_slice()) {
        (Api::MessageBatches, &Method::POST, []) => store.anthropic_create(call, body, now),
        (Api::MessageBatches, &Method::GET, []) => store.anthropic_list(call, &query, now, &origin),
        (Api::MessageBatches, &Method::GET, [id]) => store.anthropic_get(call, id, now, &origin),
        (Api::MessageBatches, &Method::POST, [id, "cancel"]) => {
            store.anthropic_cancel(call, id, now, &origin)
        }
        (Api::MessageBatches, &Method::DELETE, [id]) => store.anthropic_delete(call, id, now),
        (Api::MessageBatches, &Method::GET, [id, "results"]) => {
            store.anthropic_results(call, id, now)
        }
        (Api::Files, &Method::POST, []) => store.file_create(call, body, now),
        (Api::Files, &Method::GET, []) => store.file_list(call, &query),
        (Api::Files, &Method::GET, [id]) => store.file_get(call, id),
        (Api::Files, &Method::GET, [id, "content"]) => store.file_content(call, id),
        (Api::Files, &Method::DELETE, [id]) => store.file_delete(call, id),
        (Api::Batches, &Method::POST, []) => store.openai_create(call, body, now),
        (Api::Batches, &Method::GET, []) => store.openai_list(call, &query, now),
        (Api::Batches, &Method::GET, [id]) => store.openai_get(call, id, now),
        (Api::Batches, &Method::POST, [id, "cancel"]) => store.openai_cancel(call, id, now),
        _ => error_reply(
            call,
            StatusCode::NOT_FOUND,
            &format!("fake provider: no route for {method} {}", uri.path()),
        ),
    }
}

/// `scheme://host<base>` of this request, as the real API's absolute
/// `results_url` (`https://api.anthropic.com/v1/messages/batches/…`).
fn origin(shared: &Shared, uri: &Uri, call: &Call, base: &str) -> String {
    let scheme = if shared.tls { "https" } else { "http" };
    let host = header_str(&call.headers, HOST.as_str())
        .map(str::to_owned)
        .or_else(|| uri.authority().map(|a| a.as_str().to_owned()))
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{scheme}://{host}{base}")
}

/// The few query parameters the list endpoints take (ids need no decoding).
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(query: Option<&str>) -> Query {
        Query(
            query
                .unwrap_or_default()
                .split('&')
                .filter_map(|pair| pair.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `limit` within `1..=max`, `default` when absent.
    fn limit(&self, default: usize, max: usize) -> Result<usize, String> {
        match self.get("limit") {
            None => Ok(default),
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => Err(format!(
                    "limit: Input should be an integer from 1 to {max}, got {v:?}"
                )),
            },
        }
    }
}

// ---------------------------------------------------------------------------
// Time

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// RFC 3339 with microseconds, as Anthropic writes batch timestamps.
fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_micros(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// How a batch ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EndBy {
    /// Every item was processed.
    Done,
    /// A cancel completed.
    Cancel,
    /// The expiry time passed with items left.
    Expiry,
    /// OpenAI: the input file did not validate.
    Invalid,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Running,
    Canceling,
    Ended { at: u64, by: EndBy },
}

/// When things happen to one batch (unix milliseconds).
struct Timing {
    created: u64,
    /// Items finish processing (unless held).
    items_done: u64,
    /// The batch ends when nothing is held.
    natural_end: u64,
    /// OpenAI: validation ends (and fails when the file was invalid).
    validated: u64,
    invalid: bool,
    cancel_ms: u64,
    expires: u64,
    cancel_at: Option<u64>,
}

impl Timing {
    /// From the create request's `x-fake-batch-*` headers.
    fn new(headers: &HeaderMap, now: u64, items_done_fraction: (u64, u64)) -> Timing {
        let process = header_u64(headers, "x-fake-batch-ms").unwrap_or(DEFAULT_BATCH_MS);
        Timing {
            created: now,
            items_done: now + process * items_done_fraction.0 / items_done_fraction.1,
            natural_end: now + process,
            validated: now + process / 4,
            invalid: false,
            cancel_ms: header_u64(headers, "x-fake-batch-cancel-ms").unwrap_or(DEFAULT_CANCEL_MS),
            expires: now + header_u64(headers, "x-fake-batch-expires-ms").unwrap_or(DAY_MS),
            cancel_at: None,
        }
    }

    /// The earliest end that has happened by `now`, if any.
    fn phase(&self, held: bool, now: u64) -> Phase {
        let candidates = [
            (self.invalid.then_some(self.validated), EndBy::Invalid),
            (
                (!held && !self.invalid).then_some(self.natural_end),
                EndBy::Done,
            ),
            (self.cancel_at.map(|c| c + self.cancel_ms), EndBy::Cancel),
            (Some(self.expires), EndBy::Expiry),
        ];
        let first = candidates
            .iter()
            .filter_map(|(at, by)| at.map(|at| (at, *by)))
            .min_by_key(|(at, _)| *at);
        match first {
            Some((at, by)) if at <= now => Phase::Ended { at, by },
            _ if self.cancel_at.is_some() => Phase::Canceling,
            _ => Phase::Running,
        }
    }
}

// ---------------------------------------------------------------------------
// Items

/// What the `custom_id` asks the fake to do with an item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plan {
    Answer,
    Error,
    Expire,
    Hold,
}

impl Plan {
    fn of(custom_id: &str) -> Plan {
        if custom_id.starts_with("err-") {
            Plan::Error
        } else if custom_id.starts_with("exp-") {
            Plan::Expire
        } else if custom_id.starts_with("hold-") {
            Plan::Hold
        } else {
            Plan::Answer
        }
    }
}

/// What the item answers once processed.
struct Answer {
    status: StatusCode,
    body: Value,
    /// The usage the answer reports (`None` for errors).
    usage: Option<FakeUsage>,
    request_id: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Processing,
    Succeeded,
    Errored,
    Canceled,
    Expired,
}

impl Outcome {
    fn name(self) -> &'static str {
        match self {
            Outcome::Processing => "processing",
            Outcome::Succeeded => "succeeded",
            Outcome::Errored => "errored",
            Outcome::Canceled => "canceled",
            Outcome::Expired => "expired",
        }
    }
}

struct Item {
    custom_id: String,
    model: String,
    plan: Plan,
    answer: Answer,
}

impl Item {
    /// Computes the item's answer now, with the endpoint's own code, as a
    /// direct non-streaming call with `request` and the batch's headers.
    fn new(
        base: &Call,
        endpoint: Endpoint,
        custom_id: &str,
        request: &Value,
        usage: Option<UsageOverride>,
    ) -> Item {
        let plan = Plan::of(custom_id);
        let mut call = Call::new(base.dialect, base.scenario, base.headers.clone());
        call.usage = usage.unwrap_or(base.usage);
        apply_request(&mut call, request);
        // Batch items never stream (Anthropic refuses it at create).
        call.stream = false;
        let reply = match plan {
            Plan::Error => error_reply(&call, StatusCode::BAD_REQUEST, ERRORED_MESSAGE),
            _ => generation_reply(&call, endpoint, request),
        };
        let body = match &reply.body {
            ReplyBody::Full(bytes) => serde_json::from_slice(bytes).unwrap_or(Value::Null),
            ReplyBody::Stream(_) => Value::Null,
        };
        let ok = reply.status.is_success();
        let mut body = body;
        if ok && call.dialect == Dialect::Anthropic {
            // All batch usage is billed at the batch rate, and says so.
            body["usage"]["service_tier"] = json!("batch");
        }
        Item {
            custom_id: custom_id.to_owned(),
            model: call.model.clone(),
            plan,
            answer: Answer {
                status: reply.status,
                body,
                usage: if ok { reply.usage } else { None },
                request_id: call.request_id,
            },
        }
    }

    /// The item's fate in a batch in `phase`, whose items finish at `done`.
    fn outcome(&self, phase: Phase, done: u64) -> Outcome {
        let Phase::Ended { at, by } = phase else {
            return Outcome::Processing;
        };
        if self.plan == Plan::Hold || done > at || by == EndBy::Invalid {
            return match by {
                EndBy::Cancel => Outcome::Canceled,
                EndBy::Done | EndBy::Expiry | EndBy::Invalid => Outcome::Expired,
            };
        }
        match self.plan {
            Plan::Expire => Outcome::Expired,
            _ if self.answer.usage.is_some() => Outcome::Succeeded,
            _ => Outcome::Errored,
        }
    }

    /// Ground truth for `GET /_fake/batches`.
    fn truth(&self, outcome: Outcome) -> Value {
        let succeeded = outcome == Outcome::Succeeded;
        json!({
            "outcome": outcome.name(),
            "model": self.model,
            "usage": self.answer.usage.filter(|_| succeeded).map(FakeUsage::to_json),
            "reported_usage": if succeeded { self.answer.body["usage"].clone() } else { Value::Null },
        })
    }
}

/// `x-fake-usage:…` in a user id field, if the item carries one.
fn item_usage(user_id: Option<&Value>) -> Result<Option<UsageOverride>, String> {
    match user_id
        .and_then(Value::as_str)
        .and_then(|u| u.strip_prefix(USAGE_PREFIX))
    {
        Some(spec) => UsageOverride::parse(spec).map(Some),
        None => Ok(None),
    }
}

// ---------------------------------------------------------------------------
// The store

/// Every batch and file the fake holds, in creation order.
#[derive(Default)]
pub(super) struct Store {
    messages: Vec<anthropic::MessageBatch>,
    batches: Vec<openai::OpenAiBatch>,
    files: Vec<files::StoredFile>,
}

impl Shared {
    fn store(&self) -> MutexGuard<'_, Store> {
        self.batches.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `GET /_fake/batches`: what each batch item was (or will be) billed.
    pub(super) fn batches_json(&self) -> Value {
        let now = now_ms();
        let mut store = self.store();
        store.tick(now);
        store.truth(now)
    }
}
impl Store {
    fn truth(&self, now: u64) -> Value {
        let anthropic: serde_json::Map<String, Value> =
            self.messages.iter().map(|b| b.truth(now)).collect();
        let openai: serde_json::Map<String, Value> =
            self.batches.iter().map(|b| b.truth(now)).collect();
        json!({"anthropic": anthropic, "openai": openai})
    }
}

/// A batch's items and clock, whichever the API.
struct Work {
    timing: Timing,
    items: Vec<Item>,
}

impl Work {
    /// A `hold-` item keeps the batch running until cancel or expiry.
    fn held(&self) -> bool {
        self.items.iter().any(|i| i.plan == Plan::Hold)
    }

    fn phase(&self, now: u64) -> Phase {
        self.timing.phase(self.held(), now)
    }

    fn outcomes(&self, now: u64) -> Vec<Outcome> {
        let phase = self.phase(now);
        self.items
            .iter()
            .map(|i| i.outcome(phase, self.timing.items_done))
            .collect()
    }

    /// Per `custom_id`, the item's truth for `GET /_fake/batches`.
    fn truth(&self, now: u64) -> serde_json::Map<String, Value> {
        self.items
            .iter()
            .zip(self.outcomes(now))
            .map(|(i, o)| (i.custom_id.clone(), i.truth(o)))
            .collect()
    }
}

// ---------------------------------------------------------------------------
// Replies

fn anthropic_json(call: &Call, value: &Value) -> Reply {
    anthropic_headers(call, Reply::json(StatusCode::OK, value))
}

fn openai_json(call: &Call, value: &Value) -> Reply {
    openai_headers(call, Reply::json(StatusCode::OK, value))
}

fn bytes_reply(content_type: &str, bytes: Vec<u8>) -> Reply {
    Reply {
        status: StatusCode::OK,
        headers: vec![(CONTENT_TYPE, content_type.to_owned())],
        body: ReplyBody::Full(Bytes::from(bytes)),
        usage: None,
        cost: None,
    }
}

/// An OpenAI error with its own `param` and `code` (the generic
/// `error_reply` names a model for every 404).
fn openai_error(
    call: &Call,
    status: StatusCode,
    message: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> Reply {
    openai_headers(
        call,
        Reply::json(
            status,
            &json!({"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}),
        ),
    )
}

/// An OpenAI cursor page over `items` (already in list order).
fn openai_list<T>(
    call: &Call,
    items: &[&T],
    after: Option<&str>,
    limit: usize,
    id: impl Fn(&T) -> &str,
    to_json: impl Fn(&T) -> Value,
) -> Reply {
    let start = after
        .and_then(|a| items.iter().position(|x| id(*x) == a))
        .map_or(0, |p| p + 1);
    let end = (start + limit).min(items.len());
    let page = &items[start..end];
    openai_json(
        call,
        &json!({
            "object": "list",
            "data": page.iter().map(|x| to_json(*x)).collect::<Vec<_>>(),
            "first_id": page.first().map(|x| id(*x)),
            "last_id": page.last().map(|x| id(*x)),
            "has_more": end < items.len(),
        }),
    )
}
