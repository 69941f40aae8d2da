//! Anthropic Message Batches (providers.md §5).

use super::*;

pub(super) struct MessageBatch {
    id: String,
    work: Work,
}

impl MessageBatch {
    /// The `message_batch` object; `origin` makes `results_url` absolute.
    fn to_json(&self, now: u64, origin: &str) -> Value {
        let phase = self.work.phase(now);
        let outcomes = self.work.outcomes(now);
        let count = |o: Outcome| outcomes.iter().filter(|x| **x == o).count();
        let (status, ended_at) = match phase {
            Phase::Running => ("in_progress", None),
            Phase::Canceling => ("canceling", None),
            Phase::Ended { at, .. } => ("ended", Some(at)),
        };
        json!({
            "id": self.id,
            "type": "message_batch",
            "processing_status": status,
            "request_counts": {
                "processing": count(Outcome::Processing),
                "succeeded": count(Outcome::Succeeded),
                "errored": count(Outcome::Errored),
                "canceled": count(Outcome::Canceled),
                "expired": count(Outcome::Expired),
            },
            "ended_at": ended_at.map(rfc3339),
            "created_at": rfc3339(self.work.timing.created),
            "expires_at": rfc3339(self.work.timing.expires),
            "archived_at": null,
            "cancel_initiated_at": self.work.timing.cancel_at.map(rfc3339),
            "results_url": ended_at.map(|_| format!("{origin}/messages/batches/{}/results", self.id)),
        })
    }

    /// One `MessageBatchIndividualResponse` per item, newest item first.
    fn results(&self, now: u64) -> Vec<u8> {
        let mut out = Vec::new();
        for (item, outcome) in self.work.items.iter().zip(self.work.outcomes(now)).rev() {
            let result = match outcome {
                Outcome::Succeeded => json!({"type": "succeeded", "message": item.answer.body}),
                Outcome::Errored => {
                    // A full ErrorResponse; batch items carry no request id.
                    let mut error = item.answer.body.clone();
                    error["request_id"] = Value::Null;
                    json!({"type": "errored", "error": error})
                }
                Outcome::Canceled => json!({"type": "canceled"}),
                Outcome::Expired | Outcome::Processing => json!({"type": "expired"}),
            };
            out.extend_from_slice(
                json!({"custom_id": item.custom_id, "result": result})
                    .to_string()
                    .as_bytes(),
            );
            out.push(b'\n');
        }
        out
    }

    /// `(id, {"status", "items"})` for `GET /_fake/batches`.
    pub(super) fn truth(&self, now: u64) -> (String, Value) {
        let status = self.to_json(now, "")["processing_status"].clone();
        let items = self.work.truth(now);
        (self.id.clone(), json!({"status": status, "items": items}))
    }
}

impl Store {
    fn message_batch(&self, id: &str) -> Option<&MessageBatch> {
        self.messages.iter().find(|b| b.id == id)
    }

    pub(super) fn anthropic_create(&mut self, call: &Call, body: &[u8], now: u64) -> Reply {
        match parse_message_requests(call, body) {
            Ok(items) => {
                let batch = MessageBatch {
                    id: format!("msgbatch_{}", token()),
                    work: Work {
                        timing: Timing::new(&call.headers, now, (1, 1)),
                        items,
                    },
                };
                let reply = anthropic_json(call, &batch.to_json(now, ""));
                self.messages.push(batch);
                reply
            }
            Err(message) => error_reply(call, StatusCode::BAD_REQUEST, &message),
        }
    }

    pub(super) fn anthropic_get(&self, call: &Call, id: &str, now: u64, origin: &str) -> Reply {
        match self.message_batch(id) {
            Some(batch) => anthropic_json(call, &batch.to_json(now, origin)),
            None => not_found(call, id),
        }
    }

    /// Newest first; `after_id` pages towards older batches, `before_id`
    /// towards newer ones (what the SDK's `SyncPage` expects).
    pub(super) fn anthropic_list(
        &self,
        call: &Call,
        query: &Query,
        now: u64,
        origin: &str,
    ) -> Reply {
        let limit = match query.limit(20, 1000) {
            Ok(limit) => limit,
            Err(message) => return error_reply(call, StatusCode::BAD_REQUEST, &message),
        };
        let newest_first: Vec<&MessageBatch> = self.messages.iter().rev().collect();
        let position = |id: &str| newest_first.iter().position(|b| b.id == id);
        let (page, has_more) = match (query.get("after_id"), query.get("before_id")) {
            (Some(_), Some(_)) => {
                return error_reply(
                    call,
                    StatusCode::BAD_REQUEST,
                    "after_id and before_id cannot both be given",
                )
            }
            (Some(after), None) => {
                let start = position(after).map_or(newest_first.len(), |p| p + 1);
                let end = (start + limit).min(newest_first.len());
                (&newest_first[start..end], end < newest_first.len())
            }
            (None, Some(before)) => {
                let end = position(before).unwrap_or(0);
                let start = end.saturating_sub(limit);
                (&newest_first[start..end], start > 0)
            }
            (None, None) => {
                let end = limit.min(newest_first.len());
                (&newest_first[..end], end < newest_first.len())
            }
        };
        let data: Vec<Value> = page.iter().map(|b| b.to_json(now, origin)).collect();
        anthropic_json(
            call,
            &json!({
                "data": data,
                "has_more": has_more,
                "first_id": page.first().map(|b| b.id.clone()),
                "last_id": page.last().map(|b| b.id.clone()),
            }),
        )
    }

    pub(super) fn anthropic_cancel(
        &mut self,
        call: &Call,
        id: &str,
        now: u64,
        origin: &str,
    ) -> Reply {
        let Some(batch) = self.messages.iter_mut().find(|b| b.id == id) else {
            return not_found(call, id);
        };
        match batch.work.phase(now) {
            Phase::Running => batch.work.timing.cancel_at = Some(now),
            Phase::Canceling => {}
            Phase::Ended { .. } => {
                return error_reply(
                    call,
                    StatusCode::BAD_REQUEST,
                    &format!("message_batch {id} has already ended and cannot be canceled"),
                )
            }
        }
        anthropic_json(call, &batch.to_json(now, origin))
    }

    pub(super) fn anthropic_delete(&mut self, call: &Call, id: &str, now: u64) -> Reply {
        match self.message_batch(id).map(|b| b.work.phase(now)) {
            None => not_found(call, id),
            Some(Phase::Ended { .. }) => {
                self.messages.retain(|b| b.id != id);
                anthropic_json(call, &json!({"id": id, "type": "message_batch_deleted"}))
            }
            Some(_) => error_reply(
                call,
                StatusCode::BAD_REQUEST,
                &format!(
                    "message_batch {id} cannot be deleted while it is processing; cancel it first"
                ),
            ),
        }
    }

    pub(super) fn anthropic_results(&self, call: &Call, id: &str, now: u64) -> Reply {
        match self.message_batch(id) {
            None => not_found(call, id),
            Some(batch) if matches!(batch.work.phase(now), Phase::Ended { .. }) => {
                anthropic_headers(call, bytes_reply("application/binary", batch.results(now)))
            }
            Some(_) => error_reply(
                call,
                StatusCode::BAD_REQUEST,
                &format!(
                    "message_batch {id} has not ended yet; its results are available once processing_status is ended"
                ),
            ),
        }
    }
}

/// Validates a Message Batches create body like the real API (pydantic-style
/// messages, 400 `invalid_request_error`) and computes every item.
fn parse_message_requests(call: &Call, body: &[u8]) -> Result<Vec<Item>, String> {
    let request: Value = serde_json::from_slice(body)
        .map_err(|e| format!("The request body is not valid JSON: {e}"))?;
    let requests = match request.get("requests") {
        None => return Err("requests: Field required".to_owned()),
        Some(Value::Array(list)) => list,
        Some(_) => return Err("requests: Input should be a valid list".to_owned()),
    };
    if requests.is_empty() || requests.len() > ANTHROPIC_MAX_REQUESTS {
        return Err(format!(
            "requests: List should have at least 1 item and at most {ANTHROPIC_MAX_REQUESTS} items after validation, not {}",
            requests.len()
        ));
    }
    let mut seen = HashSet::new();
    let mut items = Vec::with_capacity(requests.len());
    for (i, entry) in requests.iter().enumerate() {
        let at = format!("requests.{i}");
        let custom_id = match entry.get("custom_id") {
            None => return Err(format!("{at}.custom_id: Field required")),
            Some(Value::String(id)) => id.as_str(),
            Some(_) => return Err(format!("{at}.custom_id: Input should be a valid string")),
        };
        if custom_id.is_empty() || custom_id.len() > 64 {
            return Err(format!(
                "{at}.custom_id: String should have at least 1 and at most 64 characters"
            ));
        }
        if !custom_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(format!(
                "{at}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'"
            ));
        }
        if !seen.insert(custom_id) {
            return Err(format!(
                "{at}.custom_id: Duplicate custom_id {custom_id:?}; custom_id must be unique within a batch"
            ));
        }
        let params = match entry.get("params") {
            None => return Err(format!("{at}.params: Field required")),
            Some(params @ Value::Object(_)) => params,
            Some(_) => return Err(format!("{at}.params: Input should be a valid dictionary")),
        };
        for field in ["model", "max_tokens", "messages"] {
            if params.get(field).is_none() {
                return Err(format!("{at}.params.{field}: Field required"));
            }
        }
        if params
            .get("stream")
            .is_some_and(|s| s != &Value::Bool(false))
        {
            return Err(format!(
                "{at}.params.stream: Input should be False (batch requests cannot stream)"
            ));
        }
        let usage = item_usage(params.pointer("/metadata/user_id")).map_err(|e| {
            format!("{at}.params.metadata.user_id: fake provider: bad x-fake-usage: {e}")
        })?;
        items.push(Item::new(
            call,
            Endpoint::Messages,
            custom_id,
            params,
            usage,
        ));
    }
    Ok(items)
}

/// Validates a batch input file line by line like the real API's
/// `validating` phase: the items, the `errors.data` entries (a non-empty
fn not_found(call: &Call, id: &str) -> Reply {
    error_reply(
        call,
        StatusCode::NOT_FOUND,
        &format!("message_batch {id} not found"),
    )
}
