//! OpenAI Batch API (providers.md §8.3): batches over uploaded files.

use super::*;

pub(super) struct OpenAiBatch {
    id: String,
    input_file_id: String,
    endpoint: String,
    completion_window: String,
    metadata: Value,
    model: Option<String>,
    work: Work,
    /// Validation problems of the input file (`errors.data`).
    errors: Vec<Value>,
    output_file_id: Option<String>,
    error_file_id: Option<String>,
    /// Output and error files written (once, when the batch ended).
    written: bool,
}

impl OpenAiBatch {
    fn to_json(&self, now: u64) -> Value {
        let t = &self.work.timing;
        let phase = self.work.phase(now);
        let (status, end_field) = match phase {
            Phase::Ended {
                by: EndBy::Invalid, ..
            } => ("failed", "failed_at"),
            Phase::Ended {
                by: EndBy::Done, ..
            } if self.work.items.iter().any(|i| i.plan == Plan::Expire) => {
                ("expired", "expired_at")
            }
            Phase::Ended {
                by: EndBy::Done, ..
            } => ("completed", "completed_at"),
            Phase::Ended {
                by: EndBy::Expiry, ..
            } => ("expired", "expired_at"),
            Phase::Ended {
                by: EndBy::Cancel, ..
            } => ("cancelled", "cancelled_at"),
            Phase::Canceling => ("cancelling", ""),
            Phase::Running if now < t.validated => ("validating", ""),
            Phase::Running if now < t.items_done || self.work.held() => ("in_progress", ""),
            Phase::Running => ("finalizing", ""),
        };
        // The steps a batch went through, up to its end.
        let horizon = match phase {
            Phase::Ended { at, .. } => at,
            _ => now,
        };
        let failed = status == "failed";
        let in_progress_at = (!failed && t.validated <= horizon).then_some(t.validated / 1000);
        let finalizing_at = (!failed && !self.work.held() && t.items_done <= horizon)
            .then_some(t.items_done / 1000);
        let ended = matches!(phase, Phase::Ended { .. }) && !failed;
        let outcomes = self.work.outcomes(now);
        let total = if failed { 0 } else { self.work.items.len() };
        let completed = if ended {
            outcomes
                .iter()
                .filter(|o| **o == Outcome::Succeeded)
                .count()
        } else {
            0
        };
        // Every item that did not succeed counts as failed once it ended.
        let failed_count = if ended { total - completed } else { 0 };
        let mut batch = json!({
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "model": self.model,
            "errors": if failed { json!({"object": "list", "data": self.errors}) } else { Value::Null },
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": t.created / 1000,
            "in_progress_at": in_progress_at,
            "expires_at": t.expires / 1000,
            "finalizing_at": finalizing_at,
            "completed_at": null,
            "failed_at": null,
            "expired_at": null,
            "cancelling_at": t.cancel_at.map(|c| c / 1000),
            "cancelled_at": null,
            "request_counts": {"total": total, "completed": completed, "failed": failed_count},
            "usage": self.usage(&outcomes, ended),
            "metadata": self.metadata,
        });
        if let Phase::Ended { at, .. } = phase {
            batch[end_field] = json!(at / 1000);
        }
        batch
    }

    /// The batch's `usage`: the sum over succeeded items, in OpenAI terms.
    fn usage(&self, outcomes: &[Outcome], ended: bool) -> Value {
        let (mut input, mut cached, mut output, mut reasoning) = (0, 0, 0, 0);
        for (item, outcome) in self.work.items.iter().zip(outcomes) {
            if !ended || *outcome != Outcome::Succeeded {
                continue;
            }
            if let Some(u) = item.answer.usage {
                input += u.prompt_tokens();
                cached += u.cache_read_input_tokens;
                output += u.output_tokens;
            }
            let body = &item.answer.body;
            reasoning += body
                .pointer("/usage/completion_tokens_details/reasoning_tokens")
                .or_else(|| body.pointer("/usage/output_tokens_details/reasoning_tokens"))
                .and_then(Value::as_u64)
                .unwrap_or(0);
        }
        json!({
            "input_tokens": input,
            "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": output,
            "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": input + output,
        })
    }

    /// The output file's lines and the error file's lines.
    fn result_lines(&self, now: u64) -> (Vec<u8>, Vec<u8>) {
        let (mut output, mut errors) = (Vec::new(), Vec::new());
        for (item, outcome) in self.work.items.iter().zip(self.work.outcomes(now)).rev() {
            let id = format!("batch_req_{}", token());
            let response = json!({
                "status_code": item.answer.status.as_u16(),
                "request_id": item.answer.request_id,
                "body": item.answer.body,
            });
            let (line, out) = match outcome {
                Outcome::Succeeded => (
                    json!({"id": id, "custom_id": item.custom_id, "response": response, "error": null}),
                    &mut output,
                ),
                // A request the API refused: its error response, `error` null.
                Outcome::Errored => (
                    json!({"id": id, "custom_id": item.custom_id, "response": response, "error": null}),
                    &mut errors,
                ),
                Outcome::Canceled => (
                    json!({"id": id, "custom_id": item.custom_id, "response": null, "error": {
                        "code": "batch_cancelled",
                        "message": "This request was not executed because the batch was cancelled.",
                    }}),
                    &mut errors,
                ),
                Outcome::Expired | Outcome::Processing => (
                    json!({"id": id, "custom_id": item.custom_id, "response": null, "error": {
                        "code": "batch_expired",
                        "message": "This request could not be executed before the completion window expired.",
                    }}),
                    &mut errors,
                ),
            };
            out.extend_from_slice(line.to_string().as_bytes());
            out.push(b'\n');
        }
        (output, errors)
    }

    /// `(id, {"status", "endpoint", "items"})` for `GET /_fake/batches`.
    pub(super) fn truth(&self, now: u64) -> (String, Value) {
        let status = self.to_json(now)["status"].clone();
        let items = self.work.truth(now);
        (
            self.id.clone(),
            json!({"status": status, "endpoint": self.endpoint, "items": items}),
        )
    }
}

impl Store {
    /// Writes the output and error files of OpenAI batches that ended.
    pub(super) fn tick(&mut self, now: u64) {
        let mut new_files = Vec::new();
        for batch in &mut self.batches {
            let Phase::Ended { at, by } = batch.work.phase(now) else {
                continue;
            };
            if batch.written || by == EndBy::Invalid {
                continue;
            }
            batch.written = true;
            let (output, errors) = batch.result_lines(now);
            for (data, kind, slot) in [
                (output, "output", &mut batch.output_file_id),
                (errors, "error", &mut batch.error_file_id),
            ] {
                if data.is_empty() {
                    continue;
                }
                let id = format!("file-{}", token());
                *slot = Some(id.clone());
                new_files.push(files::StoredFile {
                    id,
                    filename: format!("{}_{kind}.jsonl", batch.id),
                    purpose: "batch_output".to_owned(),
                    created_at: at / 1000,
                    data,
                });
            }
        }
        self.files.extend(new_files);
    }

    // === OpenAI Batch ===

    pub(super) fn openai_create(&mut self, call: &Call, body: &[u8], now: u64) -> Reply {
        let bad = |message: &str, param: &str, code: Option<&str>| {
            openai_error(call, StatusCode::BAD_REQUEST, message, Some(param), code)
        };
        let request: Value = match serde_json::from_slice(body) {
            Ok(value @ Value::Object(_)) => value,
            _ => return bad("The request body must be a JSON object.", "body", None),
        };
        let string = |key: &str| request.get(key).and_then(Value::as_str);
        let missing = |key: &str| {
            bad(
                &format!("Missing required parameter: '{key}'."),
                key,
                Some("missing_required_parameter"),
            )
        };
        let Some(input_file_id) = string("input_file_id") else {
            return missing("input_file_id");
        };
        let Some(endpoint) = string("endpoint") else {
            return missing("endpoint");
        };
        let Some(window) = string("completion_window") else {
            return missing("completion_window");
        };
        if !OPENAI_ENDPOINTS.contains(&endpoint) {
            return bad(
                &format!(
                    "Invalid value for 'endpoint': {endpoint:?}; the fake serves {OPENAI_ENDPOINTS:?}."
                ),
                "endpoint",
                Some("invalid_value"),
            );
        }
        if window != "24h" {
            return bad(
                &format!(
                    "Invalid value for 'completion_window': {window:?}; only '24h' is supported."
                ),
                "completion_window",
                Some("invalid_value"),
            );
        }
        let Some(file) = self.file(input_file_id) else {
            return files::file_not_found(call, input_file_id);
        };
        if file.purpose != "batch" {
            return bad(
                &format!(
                    "File {input_file_id} has purpose '{}'; a batch needs purpose 'batch'.",
                    file.purpose
                ),
                "input_file_id",
                None,
            );
        }
        let (items, errors, model) = parse_openai_lines(call, &file.data, endpoint);
        let mut timing = Timing::new(&call.headers, now, (3, 4));
        timing.invalid = !errors.is_empty();
        let batch = OpenAiBatch {
            id: format!("batch_{}", token()),
            input_file_id: input_file_id.to_owned(),
            endpoint: endpoint.to_owned(),
            completion_window: window.to_owned(),
            metadata: request.get("metadata").cloned().unwrap_or(Value::Null),
            model,
            work: Work { timing, items },
            errors,
            output_file_id: None,
            error_file_id: None,
            written: false,
        };
        let reply = openai_json(call, &batch.to_json(now));
        self.batches.push(batch);
        reply
    }

    pub(super) fn openai_get(&self, call: &Call, id: &str, now: u64) -> Reply {
        match self.batches.iter().find(|b| b.id == id) {
            Some(batch) => openai_json(call, &batch.to_json(now)),
            None => not_found(call, id),
        }
    }

    pub(super) fn openai_list(&self, call: &Call, query: &Query, now: u64) -> Reply {
        let limit = match query.limit(20, 100) {
            Ok(limit) => limit,
            Err(message) => {
                return openai_error(call, StatusCode::BAD_REQUEST, &message, Some("limit"), None)
            }
        };
        let newest_first: Vec<&OpenAiBatch> = self.batches.iter().rev().collect();
        openai_list(
            call,
            &newest_first,
            query.get("after"),
            limit,
            |b| b.id.as_str(),
            |b| b.to_json(now),
        )
    }

    pub(super) fn openai_cancel(&mut self, call: &Call, id: &str, now: u64) -> Reply {
        let Some(batch) = self.batches.iter_mut().find(|b| b.id == id) else {
            return not_found(call, id);
        };
        match batch.work.phase(now) {
            Phase::Running => batch.work.timing.cancel_at = Some(now),
            Phase::Canceling => {}
            Phase::Ended { .. } => {
                let status = batch.to_json(now)["status"].clone();
                return openai_error(
                    call,
                    StatusCode::BAD_REQUEST,
                    &format!("Cannot cancel a batch with status {status}."),
                    None,
                    None,
                );
            }
        }
        openai_json(call, &batch.to_json(now))
    }
}

/// Validates a batch input file line by line like the real API's
/// `validating` phase: the items, the `errors.data` entries (a non-empty
/// list fails the batch) and the one model the file uses.
fn parse_openai_lines(
    call: &Call,
    data: &[u8],
    endpoint: &str,
) -> (Vec<Item>, Vec<Value>, Option<String>) {
    let kind = match endpoint {
        "/v1/responses" => Endpoint::Responses,
        "/v1/embeddings" => Endpoint::Embeddings,
        _ => Endpoint::ChatCompletions,
    };
    let error = |line: Option<usize>, code: &str, param: Option<&str>, message: String| json!({"code": code, "line": line, "message": message, "param": param});
    let mut errors = Vec::new();
    let mut requests = Vec::new();
    let mut seen = HashSet::new();
    let mut model: Option<String> = None;
    let text = String::from_utf8_lossy(data);
    for (n, line) in text.lines().enumerate() {
        let line_no = Some(n + 1);
        if line.trim().is_empty() {
            continue;
        }
        let Ok(Value::Object(entry)) = serde_json::from_str::<Value>(line) else {
            errors.push(error(
                line_no,
                "invalid_json_line",
                None,
                "This line is not parseable as valid JSON.".to_owned(),
            ));
            continue;
        };
        let missing = ["custom_id", "method", "url", "body"]
            .into_iter()
            .find(|k| !entry.contains_key(*k));
        if let Some(key) = missing {
            errors.push(error(
                line_no,
                "missing_required_parameter",
                Some(key),
                format!("Missing required parameter: '{key}'."),
            ));
            continue;
        }
        let custom_id = entry["custom_id"].as_str().unwrap_or_default().to_owned();
        if entry["method"] != "POST" {
            errors.push(error(
                line_no,
                "invalid_method",
                Some("method"),
                "Only the POST method is supported.".to_owned(),
            ));
        } else if entry["url"] != endpoint {
            errors.push(error(
                line_no,
                "url_mismatch",
                Some("url"),
                format!("The URL provided for this request does not match the batch endpoint {endpoint}."),
            ));
        } else if !seen.insert(custom_id.clone()) {
            errors.push(error(
                line_no,
                "duplicate_custom_id",
                Some("custom_id"),
                format!("The custom_id {custom_id:?} is used more than once in this file."),
            ));
        } else {
            let line_model = entry["body"]["model"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            match &model {
                Some(m) if *m != line_model => errors.push(error(
                    line_no,
                    "model_mismatch",
                    Some("body.model"),
                    format!("All requests in a batch must use the same model ({m}); this line uses {line_model:?}."),
                )),
                _ => model = Some(line_model),
            }
            requests.push((custom_id, entry["body"].clone(), line_no));
        }
    }
    if requests.is_empty() && errors.is_empty() {
        errors.push(error(
            None,
            "empty_file",
            None,
            "The batch input file is empty.".to_owned(),
        ));
    }
    if requests.len() > OPENAI_MAX_REQUESTS {
        errors.push(error(
            None,
            "too_many_tasks",
            None,
            format!(
                "The batch has {} requests; at most {OPENAI_MAX_REQUESTS} are allowed.",
                requests.len()
            ),
        ));
    }
    if !errors.is_empty() {
        return (Vec::new(), errors, model);
    }
    let mut items = Vec::with_capacity(requests.len());
    for (custom_id, body, line_no) in requests {
        match item_usage(body.get("user")) {
            Ok(usage) => items.push(Item::new(call, kind, &custom_id, &body, usage)),
            Err(e) => errors.push(error(
                line_no,
                "invalid_request",
                Some("body.user"),
                format!("fake provider: bad x-fake-usage: {e}"),
            )),
        }
    }
    if !errors.is_empty() {
        items.clear();
    }
    (items, errors, model)
}

fn not_found(call: &Call, id: &str) -> Reply {
    openai_error(
        call,
        StatusCode::NOT_FOUND,
        &format!("No batch found with id '{id}'."),
        Some("batch_id"),
        None,
    )
}
