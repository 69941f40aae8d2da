//! The OpenAI Responses API (`POST /v1/responses`): its usage, in a JSON
//! response and in a stream of named events.
//!
//! Usage (`input_tokens` including `input_tokens_details.cached_tokens` and
//! `cache_write_tokens`; `output_tokens` including reasoning) comes only in
//! a whole `response` object: the JSON body, or in a stream the terminal
//! `response.completed`, `response.incomplete` or `response.failed` event.
//! A stream has no `[DONE]`: its terminal event completes it. A mid-stream
//! `error` event, or `response.failed`, names the error.

use std::borrow::Cow;

use serde::Deserialize;

use super::usage::split_input;
use crate::dialect::json::{lenient_u64, set_once_str, ErrorField};
use crate::dialect::usage::{JsonSummary, StreamFacts, Usage};

/// `usage` of a response (also the shape of a batch object's `usage`).
#[derive(Deserialize)]
pub(crate) struct WireUsage {
    #[serde(default, deserialize_with = "lenient_u64")]
    input_tokens: Option<u64>,
    input_tokens_details: Option<InputDetails>,
    #[serde(default, deserialize_with = "lenient_u64")]
    output_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct InputDetails {
    #[serde(default, deserialize_with = "lenient_u64")]
    cached_tokens: Option<u64>,
    #[serde(default, deserialize_with = "lenient_u64")]
    cache_write_tokens: Option<u64>,
}

impl WireUsage {
    pub(crate) fn usage(&self) -> Usage {
        let d = self.input_tokens_details.as_ref();
        split_input(
            self.input_tokens.unwrap_or(0),
            d.and_then(|d| d.cached_tokens).unwrap_or(0),
            d.and_then(|d| d.cache_write_tokens).unwrap_or(0),
            self.output_tokens.unwrap_or(0),
        )
    }
}

/// A `response` object: what the meter reads of it.
#[derive(Deserialize)]
struct WireResponse<'a> {
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
    usage: Option<WireUsage>,
    error: Option<ErrorField>,
}

/// Reads a JSON response body. `None` without a `usage` object.
pub fn from_json(body: &[u8]) -> Option<JsonSummary> {
    let r: WireResponse<'_> = serde_json::from_slice(body).ok()?;
    Some(JsonSummary {
        usage: r.usage?.usage(),
        model: r.model.map(Cow::into_owned),
        id: r.id.map(Cow::into_owned),
        iterations: Vec::new(),
    })
}

/// A stream event's data: the `response` it carries, or an error.
#[derive(Deserialize)]
struct Event<'a> {
    #[serde(borrow)]
    response: Option<WireResponse<'a>>,
    /// An `error` event's own fields.
    #[serde(borrow)]
    code: Option<Cow<'a, str>>,
}

/// Reads one Responses stream.
#[derive(Debug, Default)]
pub(crate) struct Meter {
    usage: Option<Usage>,
}

impl Meter {
    pub(crate) fn usage(&self) -> Usage {
        self.usage.unwrap_or_default()
    }

    /// Whether [`Meter::on_event`] reads the data of an event with this
    /// name: not the deltas, which it counts by name alone.
    pub(crate) fn reads_data_of(name: &[u8]) -> bool {
        !name.ends_with(b".delta")
    }

    /// Handles one event (by its `event:` name, which matches its `type`).
    pub(crate) fn on_event(&mut self, name: &str, data: &str, facts: &mut StreamFacts) {
        match name {
            "response.output_text.delta"
            | "response.function_call_arguments.delta"
            | "response.reasoning_summary_text.delta"
            | "response.refusal.delta" => facts.deltas += 1,
            "response.created" | "response.in_progress" => {
                if let Ok(Event {
                    response: Some(r), ..
                }) = serde_json::from_str::<Event<'_>>(data)
                {
                    set_once_str(&mut facts.id, r.id);
                    set_once_str(&mut facts.model, r.model);
                }
            }
            "response.completed" | "response.incomplete" | "response.failed" => {
                facts.complete = true;
                let Ok(Event {
                    response: Some(r), ..
                }) = serde_json::from_str::<Event<'_>>(data)
                else {
                    return;
                };
                set_once_str(&mut facts.id, r.id);
                // The terminal event names the model that answered.
                if let Some(m) = r.model {
                    facts.model = Some(m.into_owned());
                }
                if name == "response.failed" && facts.error.is_none() {
                    facts.error = Some(
                        r.error
                            .map_or_else(|| "response_failed".to_string(), |e| e.kind()),
                    );
                }
                if let Some(u) = r.usage {
                    self.usage = Some(u.usage());
                    facts.saw_usage = true;
                }
            }
            "error" if facts.error.is_none() => {
                let code = serde_json::from_str::<Event<'_>>(data)
                    .ok()
                    .and_then(|e| e.code.map(Cow::into_owned));
                facts.error = Some(code.unwrap_or_else(|| "error".into()));
            }
            _ => {}
        }
    }
}

/// Whether a `response` object (a JSON answer, or a stream's terminal
/// event's) completed: only those are cached.
pub fn completed(response: &serde_json::Map<String, serde_json::Value>) -> bool {
    response.get("object").and_then(serde_json::Value::as_str) == Some("response")
        && response.get("status").and_then(serde_json::Value::as_str) == Some("completed")
}

/// Re-synthesises the event stream of a completed `response` (a cache hit
/// served to a streaming client): `response.created`, `in_progress`, each
/// output item added, its content (text in one delta, function-call
/// arguments in one delta), done, then `response.completed` with the whole
/// response; each event named by its `type`, with a `sequence_number`.
pub(crate) fn replay(
    response: &serde_json::Map<String, serde_json::Value>,
    buf: &mut bytes::BytesMut,
) -> Result<(), crate::dialect::ReplayError> {
    use serde_json::{json, Value};
    let output = response
        .get("output")
        .and_then(Value::as_array)
        .ok_or(crate::dialect::ReplayError::MissingField("output"))?;
    let mut seq = 0u64;
    let mut event = |buf: &mut bytes::BytesMut, name: &str, mut data: Value| {
        data["type"] = json!(name);
        data["sequence_number"] = json!(seq);
        seq += 1;
        buf.extend_from_slice(b"event: ");
        buf.extend_from_slice(name.as_bytes());
        buf.extend_from_slice(b"\ndata: ");
        buf.extend_from_slice(data.to_string().as_bytes());
        buf.extend_from_slice(b"\n\n");
    };
    let mut pending = Value::Object(response.clone());
    pending["status"] = json!("in_progress");
    pending["output"] = json!([]);
    pending["usage"] = Value::Null;
    event(buf, "response.created", json!({"response": pending}));
    event(buf, "response.in_progress", json!({"response": pending}));
    for (i, item) in output.iter().enumerate() {
        let id = item.get("id").cloned().unwrap_or(Value::Null);
        let mut added = item.clone();
        added["status"] = json!("in_progress");
        match item.get("type").and_then(Value::as_str) {
            Some("message") => {
                let parts = item.get("content").and_then(Value::as_array);
                added["content"] = json!([]);
                event(
                    buf,
                    "response.output_item.added",
                    json!({"output_index": i, "item": added}),
                );
                for (c, part) in parts.into_iter().flatten().enumerate() {
                    let text = part.get("text").and_then(Value::as_str).unwrap_or("");
                    let mut empty = part.clone();
                    empty["text"] = json!("");
                    event(
                        buf,
                        "response.content_part.added",
                        json!({"item_id": id, "output_index": i, "content_index": c, "part": empty}),
                    );
                    if part.get("type").and_then(Value::as_str) == Some("output_text") {
                        event(
                            buf,
                            "response.output_text.delta",
                            json!({"item_id": id, "output_index": i, "content_index": c, "delta": text, "logprobs": []}),
                        );
                        event(
                            buf,
                            "response.output_text.done",
                            json!({"item_id": id, "output_index": i, "content_index": c, "text": text, "logprobs": []}),
                        );
                    }
                    event(
                        buf,
                        "response.content_part.done",
                        json!({"item_id": id, "output_index": i, "content_index": c, "part": part}),
                    );
                }
            }
            Some("function_call") => {
                let args = item.get("arguments").and_then(Value::as_str).unwrap_or("");
                added["arguments"] = json!("");
                event(
                    buf,
                    "response.output_item.added",
                    json!({"output_index": i, "item": added}),
                );
                event(
                    buf,
                    "response.function_call_arguments.delta",
                    json!({"item_id": id, "output_index": i, "delta": args}),
                );
                event(
                    buf,
                    "response.function_call_arguments.done",
                    json!({"item_id": id, "output_index": i, "arguments": args}),
                );
            }
            _ => event(
                buf,
                "response.output_item.added",
                json!({"output_index": i, "item": item}),
            ),
        }
        event(
            buf,
            "response.output_item.done",
            json!({"output_index": i, "item": item}),
        );
    }
    event(
        buf,
        "response.completed",
        json!({"response": Value::Object(response.clone())}),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const USAGE: &str = r#"{"input_tokens":120,"input_tokens_details":{"cached_tokens":20,"cache_write_tokens":30},"output_tokens":15,"output_tokens_details":{"reasoning_tokens":5},"total_tokens":135}"#;

    fn expected() -> Usage {
        Usage {
            input_tokens: 70,
            output_tokens: 15,
            cache_creation_input_tokens: 30,
            cache_read_input_tokens: 20,
            ..Usage::default()
        }
    }

    #[test]
    fn a_json_response_gives_its_usage() {
        let body = format!(
            r#"{{"id":"resp_1","object":"response","status":"completed","model":"gpt-5","output":[],"usage":{USAGE}}}"#
        );
        let s = from_json(body.as_bytes()).unwrap();
        assert_eq!(s.usage, expected());
        assert_eq!(s.model.as_deref(), Some("gpt-5"));
        assert_eq!(s.id.as_deref(), Some("resp_1"));
        assert!(from_json(br#"{"error":{"type":"x"}}"#).is_none());
    }

    #[test]
    fn a_replayed_response_meters_and_reads_like_the_provider_s() {
        let body = format!(
            r#"{{"id":"resp_3","object":"response","status":"completed","model":"gpt-5","output":[{{"type":"message","id":"msg_3","status":"completed","role":"assistant","content":[{{"type":"output_text","text":"Hi!","annotations":[]}}]}}],"usage":{USAGE}}}"#
        );
        let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&body).unwrap();
        assert!(completed(&map));
        let mut buf = bytes::BytesMut::new();
        replay(&map, &mut buf).unwrap();
        let text = String::from_utf8(buf.to_vec()).unwrap();
        let mut m = Meter::default();
        let mut f = StreamFacts::default();
        let mut names = Vec::new();
        for ev in text.split("\n\n").filter(|e| !e.is_empty()) {
            let (name, data) = ev.split_once("\ndata: ").unwrap();
            let name = name.strip_prefix("event: ").unwrap();
            names.push(name.to_string());
            m.on_event(name, data, &mut f);
        }
        assert!(f.complete);
        assert_eq!(m.usage(), expected());
        assert_eq!(f.deltas, 1);
        assert_eq!(names.first().unwrap(), "response.created");
        assert_eq!(names.last().unwrap(), "response.completed");
    }

    #[test]
    fn a_stream_is_complete_at_its_terminal_event() {
        let mut m = Meter::default();
        let mut f = StreamFacts::default();
        m.on_event(
            "response.created",
            r#"{"type":"response.created","sequence_number":0,"response":{"id":"resp_2","model":"gpt-5","usage":null}}"#,
            &mut f,
        );
        m.on_event(
            "response.output_text.delta",
            r#"{"type":"response.output_text.delta","delta":"Hi","sequence_number":1}"#,
            &mut f,
        );
        assert!(!f.complete && !f.saw_usage);
        m.on_event(
            "response.incomplete",
            &format!(
                r#"{{"type":"response.incomplete","sequence_number":2,"response":{{"id":"resp_2","model":"gpt-5-2025","usage":{USAGE}}}}}"#
            ),
            &mut f,
        );
        assert!(f.complete && f.saw_usage);
        assert_eq!(m.usage(), expected());
        assert_eq!(f.deltas, 1);
        assert_eq!(f.model.as_deref(), Some("gpt-5-2025"));
        assert_eq!(f.id.as_deref(), Some("resp_2"));
        assert!(f.error.is_none());
        let mut f = StreamFacts::default();
        m.on_event(
            "error",
            r#"{"type":"error","code":"server_error","message":"x","sequence_number":3}"#,
            &mut f,
        );
        assert_eq!(f.error.as_deref(), Some("server_error"));
    }
}
