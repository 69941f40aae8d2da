//! Anthropic Message Batches (`/v1/messages/batches…`): which paths answer
//! with batch objects, and the rewrite of their `results_url`.
//!
//! Why the rewrite: the API answers with an absolute `results_url` on the
//! provider's own host, and the official SDKs fetch results from it as is,
//! with the app's own credential. Left alone, that one call goes around
//! tollgate (its metering, its injected key) and hands a gateway key to the
//! provider. Pointed back at the listener and prefix the client used, the
//! results come through tollgate like every other call.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::dialect::usage::{JsonSummary, Usage};

/// The collection path every batch path starts with (after any prefix).
const BATCHES: &str = "/v1/messages/batches";

/// The part of `path` (a normalised request path, no query) before
/// `/v1/messages/batches` when the path is one whose JSON answer holds
/// batch objects: create and list (`…/batches`), retrieve
/// (`…/batches/{id}`) and cancel (`…/batches/{id}/cancel`). `None` for
/// anything else, the results stream (`…/results`, JSONL of any size) in
/// particular.
///
/// `"/anthropic/v1/messages/batches/msgbatch_1"` → `Some("/anthropic")`.
pub fn object_path_prefix(path: &str) -> Option<&str> {
    // The last occurrence: a provider prefix cannot contain the collection
    // path after it.
    let at = path.rfind(BATCHES)?;
    let (prefix, rest) = path.split_at(at);
    let tail = &rest[BATCHES.len()..];
    let mut segments = tail.split('/');
    // `tail` is "" or starts with '/': the first segment is always empty.
    if segments.next() != Some("") {
        return None;
    }
    let object = match (segments.next(), segments.next(), segments.next()) {
        (None, _, _) => true,
        (Some(id), None, _) => !id.is_empty(),
        (Some(id), Some("cancel"), None) => !id.is_empty(),
        _ => false,
    };
    object.then_some(prefix)
}

/// `body` with the `results_url` of every batch object in it (a
/// `message_batch`, or a list page's `data[]` of them) pointed at `base`
/// (`http://host:port` plus the client's path prefix, no trailing slash):
/// `{base}/v1/messages/batches/{id}/results`, keeping the query of the
/// provider's URL. `None` when nothing changes: not JSON, not a batch
/// object, or no `results_url` yet (`null` until the batch ends).
///
/// The rest of the body is kept byte for byte when the old URL can be found
/// in its canonical JSON spelling; otherwise the body is re-serialised
/// (same data, keys in another order).
pub fn rewrite_results_urls(body: &[u8], base: &str) -> Option<Vec<u8>> {
    let mut value: Value = serde_json::from_slice(body).ok()?;
    let mut changes: Vec<(String, String)> = Vec::new();
    match value.get_mut("data").and_then(Value::as_array_mut) {
        Some(page) => {
            for batch in page {
                rewrite_one(batch, base, &mut changes);
            }
        }
        None => rewrite_one(&mut value, base, &mut changes),
    }
    if changes.is_empty() {
        return None;
    }
    // Byte-exact where possible: each old URL, as a JSON string, swapped
    // for the new one.
    let mut out = body.to_vec();
    for (old, new) in &changes {
        let (Ok(old), Ok(new)) = (serde_json::to_vec(old), serde_json::to_vec(new)) else {
            return serde_json::to_vec(&value).ok();
        };
        match replace_all(&out, &old, &new) {
            Some(replaced) => out = replaced,
            // Escaped otherwise (`\/`, `\u…`): say it again in our words.
            None => return serde_json::to_vec(&value).ok(),
        }
    }
    Some(out)
}

/// Rewrites the `results_url` of one batch object; records (old, new).
fn rewrite_one(batch: &mut Value, base: &str, changes: &mut Vec<(String, String)>) {
    let Some(object) = batch.as_object_mut() else {
        return;
    };
    if object.get("type").and_then(Value::as_str) != Some("message_batch") {
        return;
    }
    let id = object.get("id").and_then(Value::as_str).map(str::to_string);
    let Some(Value::String(old)) = object.get_mut("results_url") else {
        return;
    };
    // The provider's path from the collection on (its query too); else,
    // a URL of another shape, the path tollgate routes for this batch.
    let tail = match (old.rfind(BATCHES), id) {
        (Some(at), _) => old[at..].to_string(),
        (None, Some(id)) => format!("{BATCHES}/{id}/results"),
        (None, None) => return,
    };
    let new = format!("{base}{tail}");
    if *old != new {
        let was = std::mem::replace(old, new.clone());
        changes.push((was, new));
    }
}

/// `haystack` with every occurrence of `needle` replaced; `None` when
/// there is none.
fn replace_all(haystack: &[u8], needle: &[u8], with: &[u8]) -> Option<Vec<u8>> {
    if needle.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(haystack.len() + with.len());
    let mut rest = haystack;
    let mut found = false;
    while let Some(at) = rest.windows(needle.len()).position(|w| w == needle) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(with);
        rest = &rest[at + needle.len()..];
        found = true;
    }
    out.extend_from_slice(rest);
    found.then_some(out)
}

/// Whether `path` (normalised, no query) is the batch collection itself
/// (`…/v1/messages/batches`): a `POST` there creates a batch.
pub fn is_collection(path: &str) -> bool {
    path.ends_with(BATCHES) && object_path_prefix(path).is_some()
}

/// A batch body or a results line tollgate could not read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BatchError {
    #[error("the batch is not valid JSON: {0}")]
    BadJson(String),
    #[error("the batch has no requests")]
    Empty,
    #[error("custom_id {0:?} appears more than once in the batch")]
    DuplicateId(String),
}

/// One request of a batch create body: its `custom_id` and its
/// `params` (a Messages request body), as the client's own bytes.
#[derive(Debug)]
pub struct CreateItem<'a> {
    pub custom_id: String,
    /// The item's Messages params, unparsed: read by the same request
    /// parser and estimate as a `/v1/messages` body.
    pub params: &'a [u8],
}

#[derive(Deserialize)]
struct CreateBody<'a> {
    #[serde(borrow)]
    requests: Vec<CreateRequest<'a>>,
}

#[derive(Deserialize)]
struct CreateRequest<'a> {
    custom_id: String,
    #[serde(borrow)]
    params: &'a RawValue,
}

/// The requests of a `POST /v1/messages/batches` body, in order. The
/// params of each stay unparsed here (one pass over the body); ids must be
/// unique (results are matched by them).
pub fn parse_create(body: &[u8]) -> Result<Vec<CreateItem<'_>>, BatchError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| BatchError::BadJson(format!("not UTF-8 at byte {}", e.valid_up_to())))?;
    let parsed: CreateBody<'_> =
        serde_json::from_str(text).map_err(|e| BatchError::BadJson(e.to_string()))?;
    if parsed.requests.is_empty() {
        return Err(BatchError::Empty);
    }
    let mut seen = std::collections::HashSet::with_capacity(parsed.requests.len());
    let mut items = Vec::with_capacity(parsed.requests.len());
    for r in parsed.requests {
        if !seen.insert(r.custom_id.clone()) {
            return Err(BatchError::DuplicateId(r.custom_id));
        }
        items.push(CreateItem {
            custom_id: r.custom_id,
            params: r.params.get().as_bytes(),
        });
    }
    Ok(items)
}

/// What a batch object says about itself (a create, retrieve or cancel
/// answer, or one entry of a list page).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchStatus {
    pub id: String,
    /// `processing_status: "ended"`: results are ready.
    pub ended: bool,
}

/// The batch objects in an answer (one object, or a list page's `data`).
pub fn batch_statuses(body: &[u8]) -> Vec<BatchStatus> {
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return Vec::new();
    };
    let one = |v: &Value| -> Option<BatchStatus> {
        if v.get("type")?.as_str()? != "message_batch" {
            return None;
        }
        Some(BatchStatus {
            id: v.get("id")?.as_str()?.to_string(),
            ended: v.get("processing_status").and_then(Value::as_str) == Some("ended"),
        })
    };
    match value.get("data").and_then(Value::as_array) {
        Some(page) => page.iter().filter_map(one).collect(),
        None => one(&value).into_iter().collect(),
    }
}

/// How one request of a batch ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Answered: billed at its usage (batch price).
    Succeeded {
        /// The model that answered, as reported.
        model: Option<String>,
        usage: Usage,
        /// The message id (`msg_…`), for reconciliation.
        message_id: Option<String>,
    },
    /// Refused or failed: not billed. The provider's error type.
    Errored { error_type: Option<String> },
    /// The batch was cancelled before this request ran: not billed.
    Canceled,
    /// The batch expired before this request ran: not billed.
    Expired,
}

/// One line of a batch's results (JSONL).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResultLine {
    pub custom_id: String,
    pub outcome: Outcome,
}

#[derive(Deserialize)]
struct WireLine<'a> {
    custom_id: String,
    #[serde(borrow)]
    result: WireResult<'a>,
}

#[derive(Deserialize)]
struct WireResult<'a> {
    #[serde(rename = "type")]
    kind: String,
    #[serde(borrow, default)]
    message: Option<&'a RawValue>,
    #[serde(default)]
    error: Option<Value>,
}

/// Reads one line of a results file. Usage is read by the same Messages
/// usage reader as a `/v1/messages` answer (cache writes and reads
/// included). An unknown result type is an error (not guessed at).
pub fn parse_result_line(line: &[u8]) -> Result<ResultLine, BatchError> {
    let wire: WireLine<'_> =
        serde_json::from_slice(line).map_err(|e| BatchError::BadJson(e.to_string()))?;
    let outcome = match wire.result.kind.as_str() {
        "succeeded" => {
            let message = wire.result.message.ok_or_else(|| {
                BatchError::BadJson("a succeeded result without a message".into())
            })?;
            let JsonSummary {
                usage, model, id, ..
            } = super::usage::from_json(message.get().as_bytes())
                .ok_or_else(|| BatchError::BadJson("a succeeded result without usage".into()))?;
            Outcome::Succeeded {
                model,
                usage,
                message_id: id,
            }
        }
        "errored" => Outcome::Errored {
            // `error` is a full ErrorResponse: {"type":"error","error":{"type":…}}.
            error_type: wire
                .result
                .error
                .as_ref()
                .and_then(|e| e.get("error"))
                .and_then(|e| e.get("type"))
                .and_then(Value::as_str)
                .map(str::to_string),
        },
        "canceled" => Outcome::Canceled,
        "expired" => Outcome::Expired,
        other => {
            return Err(BatchError::BadJson(format!(
                "unknown result type {other:?}"
            )))
        }
    };
    Ok(ResultLine {
        custom_id: wire.custom_id,
        outcome,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const BASE: &str = "http://127.0.0.1:4000";

    fn batch(id: &str, url: Value) -> Value {
        json!({
            "id": id,
            "type": "message_batch",
            "processing_status": "ended",
            "request_counts": {"processing": 0, "succeeded": 1, "errored": 0, "canceled": 0, "expired": 0},
            "results_url": url,
        })
    }

    fn rewritten(body: &Value, base: &str) -> Option<Value> {
        let out = rewrite_results_urls(body.to_string().as_bytes(), base)?;
        Some(serde_json::from_slice(&out).expect("the rewrite is JSON"))
    }

    #[test]
    fn object_paths_and_their_prefix() {
        for (path, prefix) in [
            ("/v1/messages/batches", Some("")),
            ("/v1/messages/batches/msgbatch_1", Some("")),
            ("/v1/messages/batches/msgbatch_1/cancel", Some("")),
            ("/anthropic/v1/messages/batches", Some("/anthropic")),
            (
                "/anthropic/v1/messages/batches/msgbatch_1",
                Some("/anthropic"),
            ),
            ("/a/b/v1/messages/batches/x/cancel", Some("/a/b")),
            // The results stream is never buffered; other paths are not batches.
            ("/v1/messages/batches/msgbatch_1/results", None),
            ("/anthropic/v1/messages/batches/msgbatch_1/results", None),
            ("/v1/messages/batchesque", None),
            ("/v1/messages/batches/x/cancel/more", None),
            ("/v1/messages", None),
            ("/v1/batches/x", None),
        ] {
            assert_eq!(object_path_prefix(path), prefix, "{path}");
        }
    }

    #[test]
    fn an_absolute_url_on_any_host_points_back_at_the_base() {
        for url in [
            "https://api.anthropic.com/v1/messages/batches/msgbatch_1/results",
            "http://127.0.0.1:9999/v1/messages/batches/msgbatch_1/results",
            "https://gw.example/anthropic/v1/messages/batches/msgbatch_1/results",
        ] {
            let got = rewritten(&batch("msgbatch_1", json!(url)), BASE).expect("rewritten");
            assert_eq!(
                got["results_url"], "http://127.0.0.1:4000/v1/messages/batches/msgbatch_1/results",
                "{url}"
            );
            assert_eq!(got["processing_status"], "ended", "the rest is kept");
        }
        // A prefix in the base is kept; so is the provider URL's query.
        let got = rewritten(
            &batch(
                "b",
                json!("https://api.anthropic.com/v1/messages/batches/b/results?x=1"),
            ),
            "http://h:1/anthropic",
        )
        .expect("rewritten");
        assert_eq!(
            got["results_url"],
            "http://h:1/anthropic/v1/messages/batches/b/results?x=1"
        );
        // A URL of another shape: tollgate's own path for the batch.
        let got =
            rewritten(&batch("b", json!("https://files.example/abc")), BASE).expect("rewritten");
        assert_eq!(
            got["results_url"],
            "http://127.0.0.1:4000/v1/messages/batches/b/results"
        );
    }

    #[test]
    fn the_rest_of_the_body_is_kept_byte_for_byte() {
        let body = br#"{ "id":"b", "type":"message_batch",
  "results_url": "https://api.anthropic.com/v1/messages/batches/b/results", "z": 1, "a": [1, 2] }"#;
        let out = rewrite_results_urls(body, BASE).expect("rewritten");
        let expected = String::from_utf8_lossy(body)
            .replace("https://api.anthropic.com/", "http://127.0.0.1:4000/");
        assert_eq!(String::from_utf8_lossy(&out), expected);
        // An escaped spelling still gets rewritten (re-serialised).
        let body = br#"{"id":"b","type":"message_batch","results_url":"https:\/\/api.anthropic.com\/v1\/messages\/batches\/b\/results"}"#;
        let out: Value =
            serde_json::from_slice(&rewrite_results_urls(body, BASE).expect("rewritten"))
                .expect("JSON");
        assert_eq!(
            out["results_url"],
            "http://127.0.0.1:4000/v1/messages/batches/b/results"
        );
    }

    #[test]
    fn every_batch_of_a_list_page_is_rewritten() {
        let page = json!({
            "data": [
                batch("b2", json!(null)),
                batch("b1", json!("https://api.anthropic.com/v1/messages/batches/b1/results")),
                batch("b0", json!("https://api.anthropic.com/v1/messages/batches/b0/results")),
            ],
            "has_more": false,
            "first_id": "b2",
            "last_id": "b0",
        });
        let got = rewritten(&page, BASE).expect("rewritten");
        assert!(got["data"][0]["results_url"].is_null());
        for (i, id) in [(1, "b1"), (2, "b0")] {
            assert_eq!(
                got["data"][i]["results_url"],
                format!("{BASE}/v1/messages/batches/{id}/results")
            );
        }
        assert_eq!(got["last_id"], "b0");
    }

    #[test]
    fn nothing_to_rewrite_is_left_untouched() {
        // A batch still in progress: `results_url` is null.
        assert!(
            rewrite_results_urls(batch("b", json!(null)).to_string().as_bytes(), BASE).is_none()
        );
        // Already pointing at the base.
        let ours = batch("b", json!(format!("{BASE}/v1/messages/batches/b/results")));
        assert!(rewrite_results_urls(ours.to_string().as_bytes(), BASE).is_none());
        for body in [
            &b"{\"id\":\"b\",\"type\":\"message_batch\",\"results_url\":\"https://x/v1/mess"[..],
            b"not json",
            b"",
            b"[1,2]",
            br#"{"type":"error","error":{"type":"not_found_error","message":"no"}}"#,
            br#"{"id":"b","type":"message_batch_deleted"}"#,
            br#"{"type":"message_batch","results_url":"https://elsewhere/x"}"#,
            br#"{"data":[{"type":"other","results_url":"https://a/v1/messages/batches/b/results"}]}"#,
        ] {
            assert!(
                rewrite_results_urls(body, BASE).is_none(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn create_items_keep_their_params_bytes() {
        let body = br#"{"requests":[{"custom_id":"a","params":{"model":"claude-haiku-4-5","max_tokens":10,"messages":[]}},{"params":{"model":"m"},"custom_id":"b"}]}"#;
        let items = parse_create(body).expect("items");
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].custom_id, "a");
        assert_eq!(
            items[0].params,
            br#"{"model":"claude-haiku-4-5","max_tokens":10,"messages":[]}"#
        );
        assert_eq!(items[1].params, br#"{"model":"m"}"#);
        assert_eq!(
            parse_create(br#"{"requests":[]}"#).unwrap_err(),
            BatchError::Empty
        );
        assert_eq!(
            parse_create(
                br#"{"requests":[{"custom_id":"a","params":{}},{"custom_id":"a","params":{}}]}"#
            )
            .unwrap_err(),
            BatchError::DuplicateId("a".into())
        );
        for bad in [
            &b"{"[..],
            b"[]",
            br#"{"requests":[{"params":{}}]}"#,
            b"\xff",
        ] {
            assert!(matches!(parse_create(bad), Err(BatchError::BadJson(_))));
        }
    }

    #[test]
    fn the_collection_path() {
        assert!(is_collection("/v1/messages/batches"));
        assert!(is_collection("/anthropic/v1/messages/batches"));
        assert!(!is_collection("/v1/messages/batches/b1"));
        assert!(!is_collection("/v1/messages/batches/b1/cancel"));
        assert!(!is_collection("/v1/messages"));
    }

    #[test]
    fn statuses_of_objects_and_pages() {
        let one = batch("b1", json!(null));
        assert_eq!(
            batch_statuses(one.to_string().as_bytes()),
            vec![BatchStatus {
                id: "b1".into(),
                ended: true
            }]
        );
        let mut running = batch("b2", json!(null));
        running["processing_status"] = json!("in_progress");
        let page = json!({"data": [one, running], "has_more": false});
        assert_eq!(
            batch_statuses(page.to_string().as_bytes()),
            vec![
                BatchStatus {
                    id: "b1".into(),
                    ended: true
                },
                BatchStatus {
                    id: "b2".into(),
                    ended: false
                }
            ]
        );
        assert!(batch_statuses(b"nope").is_empty());
        assert!(batch_statuses(br#"{"type":"message_batch_deleted","id":"b"}"#).is_empty());
    }

    #[test]
    fn result_lines_of_every_kind() {
        let ok = br#"{"custom_id":"my-id-1","result":{"type":"succeeded","message":{"id":"msg_1","type":"message","role":"assistant","model":"claude-haiku-4-5-20251001","content":[],"stop_reason":"end_turn","usage":{"input_tokens":11,"output_tokens":36,"cache_creation_input_tokens":5,"cache_read_input_tokens":7,"service_tier":"batch"}}}}"#;
        let line = parse_result_line(ok).expect("line");
        assert_eq!(line.custom_id, "my-id-1");
        let Outcome::Succeeded {
            model,
            usage,
            message_id,
        } = line.outcome
        else {
            panic!("succeeded expected");
        };
        assert_eq!(model.as_deref(), Some("claude-haiku-4-5-20251001"));
        assert_eq!(message_id.as_deref(), Some("msg_1"));
        assert_eq!(
            (
                usage.input_tokens,
                usage.output_tokens,
                usage.cache_creation_input_tokens,
                usage.cache_read_input_tokens
            ),
            (11, 36, 5, 7)
        );
        let err = br#"{"custom_id":"e","result":{"type":"errored","error":{"type":"error","error":{"type":"invalid_request_error","message":"no"},"request_id":null}}}"#;
        assert_eq!(
            parse_result_line(err).expect("line").outcome,
            Outcome::Errored {
                error_type: Some("invalid_request_error".into())
            }
        );
        assert_eq!(
            parse_result_line(br#"{"custom_id":"c","result":{"type":"canceled"}}"#)
                .expect("line")
                .outcome,
            Outcome::Canceled
        );
        assert_eq!(
            parse_result_line(br#"{"custom_id":"x","result":{"type":"expired"}}"#)
                .expect("line")
                .outcome,
            Outcome::Expired
        );
        for bad in [
            &br#"{"custom_id":"x","result":{"type":"other"}}"#[..],
            br#"{"custom_id":"x","result":{"type":"succeeded"}}"#,
            br#"{"result":{"type":"expired"}}"#,
            b"",
        ] {
            assert!(
                parse_result_line(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
