//! The gateway surface's batches, on the batch stage that meters Anthropic
//! Message Batches (`crate::proxy::batch`): no second implementation.
//!
//! - `POST /api/v1/llm/batch` takes the body of a Message Batches create
//!   (`{"requests": [{"custom_id", "params": <a Messages body>}]}`, the
//!   shape `/api/v1/llm/chat` takes for one request) and runs it as `POST
//!   /v1/messages/batches` to the default Anthropic provider: identify,
//!   Idempotency-Key, the plan's batch access (403), the batch body limit
//!   (413), every item's worst case reserved at the batch price (402,
//!   before anything is sent), the record stored, key injection, receipts.
//!   The provider's answer is then replaced by tollgate's record of the
//!   batch ([`view`]); a provider's refusal passes through as it came.
//! - `GET /api/v1/llm/batch/{id}` answers that record for the caller's
//!   account only (any other id, another account's included, is a 404).
//!   While the batch is open it asks the provider first, as a client's
//!   retrieve would: an ended batch is settled at once, and the read waits
//!   (up to [`SETTLE_WAIT`]) to answer it settled, with every item's
//!   outcome, tokens and cost (the usage events' own numbers).

use std::time::Duration;

use bytes::Bytes;
use pingora::http::RequestHeader;
use pingora::proxy::Session;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;

use super::{ingress, provider_defaults, send_json, Surface};
use crate::batch::{BatchRecord, BatchState, ItemResult};
use crate::dialect::anthropic::batch as wire;
use crate::meter::money::format_usd;
use crate::proxy::error::ProxyError;
use crate::proxy::ingress::{Route, Routes};
use crate::proxy::{batch, identify, State};

/// `POST`: submit a batch.
pub const BATCH: &str = "/api/v1/llm/batch";
/// `GET`: a batch's status and, once settled, its items' usage and cost
/// (the OpenAPI document's spelling of the path).
pub const BATCH_STATUS: &str = "/api/v1/llm/batch/{id}";
/// The prefix of a status path; the id follows.
const STATUS_PREFIX: &str = "/api/v1/llm/batch/";
/// How long a status read waits for a batch it saw ended to be settled
/// before answering it `ended` (the client reads again).
pub const SETTLE_WAIT: Duration = Duration::from_secs(5);

/// The batch id of a status path (its normal form), if it is one: one
/// non-empty segment after `STATUS_PREFIX`.
pub fn status_id(normal_path: &str) -> Option<&str> {
    normal_path
        .strip_prefix(STATUS_PREFIX)
        .filter(|id| !id.is_empty() && !id.contains('/'))
}

// === submit ===

/// The route of a submit: the default Anthropic provider's
/// `/v1/messages/batches` (the batch stage sees a create). Fills in what a
/// gateway client need not send, as for chat.
pub fn submit_route(routes: &Routes, req: &mut RequestHeader) -> Result<Route, ProxyError> {
    Surface::Batch.check_method(req)?;
    let provider = super::default_anthropic(routes, req)?;
    provider_defaults(req)?;
    Ok(Routes::api_route(provider, "/v1/messages/batches"))
}

/// The answer to a submit the provider accepted: tollgate's record of the
/// batch (stored by the batch stage before this runs), as JSON. `None`
/// when the answer names no batch or its record cannot be read (logged):
/// the provider's own answer is sent then.
pub async fn submit_answer(state: &State, provider: &str, body: &[u8]) -> Option<Bytes> {
    let [status] = wire::batch_statuses(body).try_into().ok()?;
    match state.batches.record(provider, &status.id).await {
        Ok(Some(record)) => Some(Bytes::from(view(&record, false, false).to_string())),
        Ok(None) => {
            tracing::error!(batch = %status.id, "a submitted batch has no record; answering the provider's object");
            None
        }
        Err(e) => {
            tracing::error!(batch = %status.id, error = %e, "reading a submitted batch's record failed; answering the provider's object");
            None
        }
    }
}

// === status ===

/// Answers `GET /api/v1/llm/batch/{id}`: refusals in the Anthropic error
/// shape, like every answer of the surface. Records no usage event (the
/// provider's retrieve, when one is made, is tollgate's own call, like the
/// settlement poller's).
pub async fn serve_status(state: &State, session: &mut Session) {
    super::ignore_body(session);
    let result = status(state, session.req_header()).await;
    send_json(session, result).await;
}

async fn status(state: &State, req: &RequestHeader) -> Result<Value, ProxyError> {
    Surface::BatchStatus.check_method(req)?;
    let identity = identify::identify(req, &state.default_identity, &state.fleet.keyring())
        .inspect_err(|e| crate::proxy::count_key_rejection(state, e))?;
    if state.fleet.batch_off(&identity.account) {
        return Err(ProxyError::Forbidden(format!(
            "account {:?} is on a plan without batch access; ask for a plan that includes batches",
            identity.account
        )));
    }
    let path = ingress::path::normalise(req.uri.path()).map_err(|reason| ProxyError::BadPath {
        path: req.uri.path().to_string(),
        reason,
    })?;
    // Said the same way for an id nobody has and another account's: a
    // tenant learns nothing about another's batches.
    let not_found = || {
        ProxyError::NotFound(format!(
            "account {:?} has no batch {:?} on this sidecar",
            identity.account,
            status_id(&path).unwrap_or_default()
        ))
    };
    let id = status_id(&path).ok_or_else(not_found)?;
    let provider = super::default_anthropic(&state.routes, req)?;
    let load = || async {
        state
            .batches
            .record(&provider.name, id)
            .await
            .map_err(|e| ProxyError::Internal(format!("reading the batch record: {e}")))
            .map(|r| r.filter(|r| r.account == identity.account))
    };
    let mut record = load().await?.ok_or_else(not_found)?;
    let mut ended = false;
    if record.state == BatchState::Open {
        // Subscribed before the provider is asked: a settlement that
        // follows is seen.
        let mut settlements = state.batches.settlements();
        match batch::refresh(state, &record).await {
            Ok(e) => ended = e,
            Err(e) => {
                tracing::warn!(batch = %id, error = %e, "asking the provider about a batch failed; answering its record")
            }
        }
        let deadline = tokio::time::Instant::now() + SETTLE_WAIT;
        while ended && record.state != BatchState::Settled {
            // Changed (or closed at shutdown), or out of time.
            let woke = tokio::time::timeout_at(deadline, settlements.changed()).await;
            record = load().await?.ok_or_else(not_found)?;
            if !matches!(woke, Ok(Ok(()))) {
                break;
            }
        }
    }
    Ok(view(&record, ended, true))
}

// === the record as JSON ===

/// A record's status as the surface says it: `submitting` (the create is
/// on its way), `in_progress`, `ended` (the provider is done; settling),
/// `settled` (every item's usage event is recorded).
fn status_name(r: &BatchRecord, provider_ended: bool) -> &'static str {
    match r.state {
        BatchState::Submitting => "submitting",
        BatchState::Open if provider_ended => "ended",
        BatchState::Open => "in_progress",
        BatchState::Settling => "ended",
        BatchState::Settled => "settled",
    }
}

/// Microseconds since the epoch as RFC 3339 (UTC).
fn rfc3339(us: i64) -> Value {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .map_or(Value::Null, Value::String)
}

/// Money as both spellings of the surface: a decimal string in USD and
/// integer nano-USD.
fn money(into: &mut serde_json::Map<String, Value>, name: &str, nusd: u64) {
    into.insert(format!("{name}_usd"), format_usd(nusd).into());
    into.insert(format!("{name}_nusd"), nusd.into());
}

/// tollgate's record of a batch as the surface answers it (the OpenAPI
/// document's `BatchRecord`). `provider_ended`: the provider was just seen
/// to have ended it. `items`: with the per-item list (the status read's;
/// a submit answers the count only).
pub fn view(r: &BatchRecord, provider_ended: bool, items: bool) -> Value {
    let settled = r.state == BatchState::Settled;
    // A create whose outcome was never known is charged its worst case.
    let spent = match (settled, &r.batch_id) {
        (true, None) => r.reserved_nusd,
        (true, Some(_)) => r.spent_nusd(),
        (false, _) => 0,
    };
    let released = if settled {
        r.reserved_nusd.saturating_sub(spent)
    } else {
        0
    };
    let mut models: Vec<&str> = r.items.iter().map(|i| i.model.as_str()).collect();
    models.sort_unstable();
    models.dedup();
    let mut out = serde_json::Map::new();
    out.insert("object".into(), "batch".into());
    out.insert(
        "id".into(),
        r.batch_id.as_deref().unwrap_or(&r.local_id).into(),
    );
    out.insert("provider".into(), r.provider.as_str().into());
    out.insert("account".into(), r.account.as_str().into());
    out.insert("status".into(), status_name(r, provider_ended).into());
    out.insert("created_at".into(), rfc3339(r.created_ts));
    out.insert(
        "settled_at".into(),
        r.settled_ts
            .filter(|_| settled)
            .map_or(Value::Null, rfc3339),
    );
    out.insert("item_count".into(), r.items.len().into());
    out.insert("models".into(), models.into());
    money(&mut out, "reserved", r.reserved_nusd);
    money(&mut out, "spent", spent);
    money(&mut out, "released", released);
    if items {
        let results: &[ItemResult] = if settled { &r.results } else { &[] };
        let list: Vec<Value> = r
            .items
            .iter()
            .map(|item| {
                let result = results.iter().find(|x| x.custom_id == item.custom_id);
                item_json(&item.custom_id, &item.model, item.reserved_nusd, result)
            })
            .collect();
        out.insert("items".into(), list.into());
    }
    Value::Object(out)
}

/// One item: what was reserved for it and, once settled, how it ended.
fn item_json(custom_id: &str, model: &str, reserved: u64, result: Option<&ItemResult>) -> Value {
    let mut out = serde_json::Map::new();
    out.insert("custom_id".into(), custom_id.into());
    out.insert(
        "model".into(),
        result.map_or(model, |x| x.model.as_str()).into(),
    );
    money(&mut out, "reserved", reserved);
    match result {
        None => {
            out.insert("result".into(), Value::Null);
        }
        Some(x) => {
            out.insert("result".into(), x.outcome.as_str().into());
            out.insert(
                "usage".into(),
                json!({
                    "input_tokens": x.usage.input_tokens,
                    "output_tokens": x.usage.output_tokens,
                    "cache_creation_input_tokens": x.usage.cache_creation_input_tokens,
                    "cache_read_input_tokens": x.usage.cache_read_input_tokens,
                }),
            );
            money(&mut out, "cost", x.cost_nusd);
            out.insert(
                "error".into(),
                x.error.as_deref().map_or(Value::Null, Into::into),
            );
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::batch::{BatchItem, ItemOutcome};
    use crate::dialect::Usage;

    fn record(state: BatchState) -> BatchRecord {
        BatchRecord {
            local_id: "tgb_1".into(),
            provider: "anthropic".into(),
            batch_id: Some("msgbatch_1".into()),
            account: "acme".into(),
            workload: String::new(),
            tags: Vec::new(),
            created_ts: 1_780_000_000_000_000,
            items: ["a", "b"]
                .iter()
                .map(|id| BatchItem {
                    custom_id: id.to_string(),
                    model: "claude-haiku-4-5".into(),
                    reserved_nusd: 1_000,
                })
                .collect(),
            reserved_nusd: 2_000,
            reserved: Vec::new(),
            endpoint: None,
            state,
            settled_ts: Some(1_780_000_100_000_000),
            results: vec![
                ItemResult {
                    custom_id: "a".into(),
                    model: "claude-haiku-4-5-20251001".into(),
                    outcome: ItemOutcome::Succeeded,
                    usage: Usage {
                        input_tokens: 10,
                        output_tokens: 2,
                        ..Usage::default()
                    },
                    cost_nusd: 300,
                    priced: true,
                    error: None,
                    message_id: None,
                },
                ItemResult {
                    custom_id: "b".into(),
                    model: "claude-haiku-4-5".into(),
                    outcome: ItemOutcome::Errored,
                    usage: Usage::default(),
                    cost_nusd: 0,
                    priced: true,
                    error: Some("invalid_request_error".into()),
                    message_id: None,
                },
            ],
        }
    }

    #[test]
    fn status_paths() {
        assert_eq!(
            status_id("/api/v1/llm/batch/msgbatch_1"),
            Some("msgbatch_1")
        );
        for other in [
            "/api/v1/llm/batch",
            "/api/v1/llm/batch/",
            "/api/v1/llm/batch/a/b",
            "/api/v1/llm/batchx/a",
        ] {
            assert_eq!(status_id(other), None, "{other}");
        }
    }

    #[test]
    fn a_settled_record_shows_every_item_and_the_totals() {
        let v = view(&record(BatchState::Settled), false, true);
        assert_eq!(v["id"], "msgbatch_1");
        assert_eq!(v["status"], "settled");
        assert_eq!(v["created_at"], "2026-05-28T20:26:40Z");
        assert_eq!(v["item_count"], 2);
        assert_eq!(v["models"], json!(["claude-haiku-4-5"]));
        assert_eq!(
            (&v["reserved_nusd"], &v["spent_nusd"], &v["released_nusd"]),
            (&json!(2_000), &json!(300), &json!(1_700))
        );
        assert_eq!(v["spent_usd"], "0.0000003");
        assert_eq!(v["items"][0]["result"], "succeeded");
        assert_eq!(v["items"][0]["model"], "claude-haiku-4-5-20251001");
        assert_eq!(v["items"][0]["usage"]["input_tokens"], 10);
        assert_eq!(v["items"][0]["cost_nusd"], 300);
        assert_eq!(v["items"][1]["result"], "errored");
        assert_eq!(v["items"][1]["error"], "invalid_request_error");
        assert_eq!(v["items"][1]["cost_nusd"], 0);
    }

    #[test]
    fn an_open_record_shows_its_reservation_only() {
        let mut r = record(BatchState::Open);
        r.results.clear();
        let v = view(&r, false, true);
        assert_eq!(v["status"], "in_progress");
        assert_eq!(v["settled_at"], Value::Null);
        assert_eq!(
            (&v["spent_nusd"], &v["released_nusd"]),
            (&json!(0), &json!(0))
        );
        assert_eq!(v["items"][0]["result"], Value::Null);
        assert_eq!(v["items"][0]["reserved_nusd"], 1_000);
        assert_eq!(view(&r, true, false)["status"], "ended");
        assert!(view(&r, false, false).get("items").is_none());
        // Settling: results read, not yet recorded: nothing shown as spent.
        let v = view(&record(BatchState::Settling), false, true);
        assert_eq!(
            (&v["status"], &v["spent_nusd"]),
            (&json!("ended"), &json!(0))
        );
        assert_eq!(v["items"][0]["result"], Value::Null);
    }

    #[test]
    fn an_interrupted_submit_is_shown_charged_its_worst_case() {
        let mut r = record(BatchState::Settled);
        r.batch_id = None;
        r.results.clear();
        let v = view(&r, false, true);
        assert_eq!(v["id"], "tgb_1");
        assert_eq!(
            (&v["spent_nusd"], &v["released_nusd"]),
            (&json!(2_000), &json!(0))
        );
    }
}
