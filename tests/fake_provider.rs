#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Exercises the fake provider (`tests/support/fake_provider.rs`) directly,
//! checking the wire formats it promises (see providers.md §1–§3, §8, §9, §11).

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{json, Value};
use support::fake_provider::{
    FakeProvider, FakeUsage, Recorded, DEFAULT_ANTHROPIC_MODEL, RESPONSE_CAP,
};
use support::sdk::{run_script, sdk_python};

const WAIT: Duration = Duration::from_secs(5);
const SSE: &str = "text/event-stream; charset=utf-8";

// ---------------------------------------------------------------------------
// helpers

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

async fn post(
    fake: &FakeProvider,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<String>,
) -> reqwest::Response {
    let mut request = client()
        .post(format!("{}{path}", fake.base_url()))
        .header("content-type", "application/json")
        .header("accept", "application/json")
        .body(body.into());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

async fn get(fake: &FakeProvider, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = client().get(format!("{}{path}", fake.base_url()));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

fn anthropic_request(stream: bool) -> String {
    json!({
        "model": "claude-haiku-4-5-20251001",
        "max_tokens": 256,
        "stream": stream,
        "messages": [{"role": "user", "content": "Hi"}],
    })
    .to_string()
}

fn openai_request(stream: bool, include_usage: bool) -> String {
    let mut body = json!({
        "model": "gpt-4o-mini",
        "stream": stream,
        "messages": [{"role": "user", "content": "Hi"}],
    });
    if include_usage {
        body["stream_options"] = json!({"include_usage": true});
    }
    body.to_string()
}

const ANTHROPIC: &[(&str, &str)] = &[
    ("x-api-key", "sk-ant-test"),
    ("anthropic-version", "2023-06-01"),
];
const OPENAI: &[(&str, &str)] = &[("authorization", "Bearer sk-test")];

fn with<'a>(base: &[(&'a str, &'a str)], extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    base.iter().chain(extra).copied().collect()
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    response.headers().get(name).map(|v| v.to_str().unwrap())
}

async fn json_body(response: reqwest::Response) -> Value {
    serde_json::from_slice(&response.bytes().await.unwrap()).unwrap()
}

/// Reads the body chunk by chunk; returns the chunks and whether the body
/// ended with a transport error (an aborted stream).
async fn read_chunks(response: reqwest::Response) -> (Vec<(Instant, Bytes)>, bool) {
    let mut stream = response.bytes_stream();
    let mut chunks = Vec::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(chunk) => chunks.push((Instant::now(), chunk)),
            Err(_) => return (chunks, true),
        }
    }
    (chunks, false)
}

fn concat(chunks: &[(Instant, Bytes)]) -> String {
    let bytes: Vec<u8> = chunks.iter().flat_map(|(_, c)| c.iter().copied()).collect();
    String::from_utf8(bytes).unwrap()
}

/// Strictly parses an Anthropic SSE body: every event is exactly
/// `event: NAME\ndata: JSON\n\n` with NAME == JSON `type`; comment blocks
/// (`: …`) are skipped. With `complete`, the body must end with a blank line.
fn anthropic_events(body: &str, complete: bool) -> Vec<(String, Value)> {
    let blocks: Vec<&str> = if complete {
        assert!(
            body.ends_with("\n\n"),
            "body must end with a blank line: {body:?}"
        );
        body[..body.len() - 2].split("\n\n").collect()
    } else {
        // A cut body: only the events terminated by a blank line count.
        let end = body.rfind("\n\n").expect("at least one event");
        body[..end].split("\n\n").collect()
    };
    let mut events = Vec::new();
    for block in blocks {
        if block.starts_with(':') {
            assert!(block.lines().all(|l| l.starts_with(':')), "{block:?}");
            continue;
        }
        let lines: Vec<&str> = block.split('\n').collect();
        assert_eq!(lines.len(), 2, "event must be two lines: {block:?}");
        let name = lines[0].strip_prefix("event: ").expect("event: line");
        let data = lines[1].strip_prefix("data: ").expect("data: line");
        let value: Value = serde_json::from_str(data).unwrap();
        assert_eq!(value["type"], name, "event name must equal JSON type");
        events.push((name.to_owned(), value));
    }
    events
}

fn names(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(n, _)| n.as_str()).collect()
}

/// A parsed OpenAI-style SSE body.
#[derive(Debug, Default)]
struct OpenAiStream {
    chunks: Vec<Value>,
    comments: Vec<String>,
    done: bool,
}

/// Strictly parses a data-only OpenAI SSE body: each event is one
/// `data: …` line then a blank line; `[DONE]` is last.
fn openai_events(body: &str) -> OpenAiStream {
    assert!(
        body.ends_with("\n\n"),
        "body must end with a blank line: {body:?}"
    );
    let mut out = OpenAiStream::default();
    for block in body[..body.len() - 2].split("\n\n") {
        if block.starts_with(':') {
            out.comments.push(block.to_owned());
            continue;
        }
        assert!(!out.done, "nothing may follow [DONE]");
        assert!(!block.contains('\n'), "one data line per event: {block:?}");
        let data = block.strip_prefix("data: ").expect("data-only events");
        if data == "[DONE]" {
            out.done = true;
        } else {
            out.chunks.push(serde_json::from_str(data).unwrap());
        }
    }
    out
}

fn text_of(events: &[(String, Value)], index: u64) -> String {
    events
        .iter()
        .filter(|(n, v)| n == "content_block_delta" && v["index"] == index)
        .filter_map(|(_, v)| v["delta"]["text"].as_str())
        .collect()
}

fn openai_text(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect()
}

async fn only(fake: &FakeProvider) -> Recorded {
    let recorded = fake.wait_for(1, WAIT).await;
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    recorded.into_iter().next().unwrap()
}

fn usage(input: u64, output: u64) -> FakeUsage {
    FakeUsage {
        input_tokens: input,
        output_tokens: output,
        ..FakeUsage::default()
    }
}

// ---------------------------------------------------------------------------
// text

#[tokio::test]
async fn text_anthropic_json() {
    let fake = FakeProvider::start().await;
    let response = post(
        &fake,
        "/v1/messages?beta=true",
        ANTHROPIC,
        anthropic_request(false),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "content-type"), Some("application/json"));
    let request_id = header(&response, "request-id").unwrap().to_owned();
    assert!(request_id.starts_with("req_"), "{request_id}");
    let raw = response.bytes().await.unwrap();
    let body: Value = serde_json::from_slice(&raw).unwrap();

    assert!(body["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(body["type"], "message");
    assert_eq!(body["role"], "assistant");
    assert_eq!(body["model"], "claude-haiku-4-5-20251001");
    assert_eq!(
        body["content"],
        json!([{"type": "text", "text": "Hello there!", "citations": null}])
    );
    assert_eq!(body["stop_reason"], "end_turn");
    assert_eq!(body["stop_sequence"], Value::Null);
    let u = &body["usage"];
    assert_eq!(u["input_tokens"], 11);
    assert_eq!(u["output_tokens"], 6);
    assert_eq!(u["cache_creation_input_tokens"], 0);
    assert_eq!(u["cache_read_input_tokens"], 0);
    assert_eq!(
        u["cache_creation"],
        json!({"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0})
    );
    assert_eq!(u["service_tier"], "standard");

    let rec = only(&fake).await;
    assert_eq!(rec.method, "POST");
    assert_eq!(rec.path, "/v1/messages?beta=true");
    assert_eq!(rec.header("X-Api-Key"), Some("sk-ant-test"));
    assert_eq!(rec.header("anthropic-version"), Some("2023-06-01"));
    assert!(rec.headers.iter().all(|(n, _)| *n == n.to_lowercase()));
    assert_eq!(rec.json()["model"], "claude-haiku-4-5-20251001");
    assert_eq!(rec.scenario, "text");
    assert_eq!(rec.status, 200);
    assert_eq!(rec.usage, Some(usage(11, 6)));
    assert_eq!(rec.reported_cost, None);
    assert_eq!(rec.response, raw.to_vec());
    assert!(rec.completed && !rec.client_gone);

    // Bearer auth (anthropic 2.x) works too, without a model the default is
    // echoed, and request ids are unique.
    let response = post(
        &fake,
        "/v1/messages",
        &[
            ("authorization", "Bearer sk-ant-x"),
            ("anthropic-version", "2026-10-21"),
        ],
        json!({"max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}]}).to_string(),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_ne!(header(&response, "request-id").unwrap(), request_id);
    assert_eq!(json_body(response).await["model"], DEFAULT_ANTHROPIC_MODEL);
}

#[tokio::test]
async fn text_anthropic_stream() {
    let fake = FakeProvider::start().await;
    let response = post(&fake, "/v1/messages", ANTHROPIC, anthropic_request(true)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "content-type"), Some(SSE));
    assert!(header(&response, "request-id").unwrap().starts_with("req_"));
    let (chunks, aborted) = read_chunks(response).await;
    assert!(!aborted);
    let body = concat(&chunks);
    let events = anthropic_events(&body, true);
    assert_eq!(
        names(&events),
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
    );
    assert!(body.contains("event: ping\ndata: {\"type\": \"ping\"}\n\n"));
    let start = &events[0].1["message"];
    assert_eq!(start["content"], json!([]));
    assert_eq!(start["model"], "claude-haiku-4-5-20251001");
    assert_eq!(start["stop_reason"], Value::Null);
    assert_eq!(start["usage"]["input_tokens"], 11);
    assert_eq!(start["usage"]["output_tokens"], 1);
    assert_eq!(
        events[1].1["content_block"],
        json!({"type": "text", "text": ""})
    );
    assert_eq!(text_of(&events, 0), "Hello there!");
    let delta = &events[6].1;
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert_eq!(delta["usage"]["output_tokens"], 6);
    assert_eq!(delta["usage"]["input_tokens"], 11);

    let rec = only(&fake).await;
    assert_eq!(rec.usage, Some(usage(11, 6)));
    assert_eq!(rec.response, body.as_bytes());
    assert_eq!(rec.response_bytes, body.len() as u64);
    assert!(rec.completed && !rec.client_gone);
}

#[tokio::test]
async fn text_openai_json_and_streams() {
    let fake = FakeProvider::start().await;

    let response = post(
        &fake,
        "/v1/chat/completions",
        OPENAI,
        openai_request(false, false),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "content-type"), Some("application/json"));
    assert!(header(&response, "x-request-id").is_some());
    let body = json_body(response).await;
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "gpt-4o-mini");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(body["choices"][0]["message"]["content"], "Hello there!");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["prompt_tokens"], 11);
    assert_eq!(body["usage"]["completion_tokens"], 6);
    assert_eq!(body["usage"]["total_tokens"], 17);
    assert_eq!(body["usage"]["prompt_tokens_details"]["cached_tokens"], 0);

    // Stream without include_usage: no usage chunk at all.
    let response = post(
        &fake,
        "/v1/chat/completions",
        OPENAI,
        openai_request(true, false),
    )
    .await;
    assert_eq!(header(&response, "content-type"), Some(SSE));
    let stream = openai_events(&response.text().await.unwrap());
    assert!(stream.done && stream.comments.is_empty());
    let chunks = &stream.chunks;
    assert!(chunks.len() >= 4, "role, 2 content, finish: {chunks:?}");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    assert!(chunks.iter().all(|c| c.get("usage").is_none()));
    assert_eq!(openai_text(chunks), "Hello there!");
    assert!(chunks[1..chunks.len() - 1]
        .iter()
        .all(|c| c["choices"][0]["finish_reason"].is_null()));
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );

    // With include_usage: the last chunk before [DONE] has choices [] and usage.
    let response = post(
        &fake,
        "/v1/chat/completions",
        OPENAI,
        openai_request(true, true),
    )
    .await;
    let stream = openai_events(&response.text().await.unwrap());
    assert!(stream.done);
    let (last, rest) = stream.chunks.split_last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["prompt_tokens"], 11);
    assert_eq!(last["usage"]["completion_tokens"], 6);
    assert_eq!(last["usage"]["total_tokens"], 17);
    assert!(rest.iter().all(|c| c["usage"].is_null()));
    assert_eq!(rest.last().unwrap()["choices"][0]["finish_reason"], "stop");

    let recorded = fake.wait_for(3, WAIT).await;
    assert_eq!(recorded.len(), 3);
    assert_eq!(recorded[0].usage, Some(usage(11, 6)));
    assert_eq!(recorded[1].usage, None, "no usage was streamed");
    assert_eq!(recorded[2].usage, Some(usage(11, 6)));
    assert!(recorded
        .iter()
        .all(|r| r.completed && r.path == "/v1/chat/completions"));
    assert_eq!(recorded[0].header("authorization"), Some("Bearer sk-test"));
}

// ---------------------------------------------------------------------------
// tool_use

#[tokio::test]
async fn tool_use_both_dialects() {
    let fake = FakeProvider::start().await;
    let scenario = [("x-fake-scenario", "tool_use")];

    // Anthropic stream.
    let response = post(
        &fake,
        "/v1/messages",
        &with(ANTHROPIC, &scenario),
        anthropic_request(true),
    )
    .await;
    let events = anthropic_events(&response.text().await.unwrap(), true);
    let starts: Vec<&Value> = events
        .iter()
        .filter(|(n, _)| n == "content_block_start")
        .map(|(_, v)| &v["content_block"])
        .collect();
    assert_eq!(starts.len(), 2);
    assert_eq!(starts[0]["type"], "text");
    assert_eq!(starts[1]["type"], "tool_use");
    assert_eq!(starts[1]["name"], "get_weather");
    assert_eq!(starts[1]["input"], json!({}));
    assert!(starts[1]["id"].as_str().unwrap().starts_with("toolu_"));
    let fragments: Vec<&str> = events
        .iter()
        .filter(|(_, v)| v["delta"]["type"] == "input_json_delta")
        .map(|(_, v)| {
            assert_eq!(v["index"], 1);
            v["delta"]["partial_json"].as_str().unwrap()
        })
        .collect();
    assert!(fragments.len() >= 3, "{fragments:?}");
    assert_eq!(fragments[0], "");
    let input: Value = serde_json::from_str(&fragments.concat()).unwrap();
    assert_eq!(input, json!({"location": "Paris"}));
    assert!(!text_of(&events, 0).is_empty());
    let (name, delta) = &events[events.len() - 2];
    assert_eq!(name, "message_delta");
    assert_eq!(delta["delta"]["stop_reason"], "tool_use");
    assert_eq!(names(&events).last(), Some(&"message_stop"));

    // Anthropic JSON.
    let response = post(
        &fake,
        "/v1/messages",
        &with(ANTHROPIC, &scenario),
        anthropic_request(false),
    )
    .await;
    let body = json_body(response).await;
    assert_eq!(body["stop_reason"], "tool_use");
    assert_eq!(body["content"][0]["type"], "text");
    let tool = &body["content"][1];
    assert_eq!(tool["type"], "tool_use");
    assert_eq!(tool["name"], "get_weather");
    assert_eq!(tool["input"], json!({"location": "Paris"}));

    // OpenAI stream.
    let response = post(
        &fake,
        "/v1/chat/completions",
        &with(OPENAI, &scenario),
        openai_request(true, true),
    )
    .await;
    let stream = openai_events(&response.text().await.unwrap());
    assert!(stream.done);
    let calls: Vec<&Value> = stream
        .chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0))
        .collect();
    assert!(calls.len() >= 3, "{calls:?}");
    assert!(calls[0]["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(calls[0]["type"], "function");
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    assert_eq!(calls[0]["function"]["arguments"], "");
    assert!(calls[1..]
        .iter()
        .all(|c| c.get("id").is_none() && c["index"] == 0));
    let arguments: String = calls
        .iter()
        .map(|c| c["function"]["arguments"].as_str().unwrap())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&arguments).unwrap(),
        json!({"location": "Paris"})
    );
    let finish = &stream.chunks[stream.chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "tool_calls");

    // OpenAI JSON.
    let response = post(
        &fake,
        "/v1/chat/completions",
        &with(OPENAI, &scenario),
        openai_request(false, false),
    )
    .await;
    let body = json_body(response).await;
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    let arguments = call["function"]["arguments"].as_str().unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(arguments).unwrap(),
        json!({"location": "Paris"})
    );

    let recorded = fake.wait_for(4, WAIT).await;
    assert!(recorded
        .iter()
        .all(|r| r.scenario == "tool_use" && r.completed));
    assert!(recorded
        .iter()
        .all(|r| r.usage.is_some_and(|u| u.output_tokens > 0)));
}

// ---------------------------------------------------------------------------
// thinking

#[tokio::test]
async fn thinking_both_dialects() {
    let fake = FakeProvider::start().await;
    let scenario = [("x-fake-scenario", "thinking")];

    let response = post(
        &fake,
        "/v1/messages",
        &with(ANTHROPIC, &scenario),
        anthropic_request(true),
    )
    .await;
    let events = anthropic_events(&response.text().await.unwrap(), true);
    assert_eq!(
        events[1].1["content_block"],
        json!({"type": "thinking", "thinking": "", "signature": ""})
    );
    let block0: Vec<&Value> = events
        .iter()
        .filter(|(_, v)| v["index"] == 0)
        .map(|(_, v)| v)
        .collect();
    let kinds: Vec<&str> = block0
        .iter()
        .map(|v| {
            v["delta"]["type"]
                .as_str()
                .unwrap_or(v["type"].as_str().unwrap())
        })
        .collect();
    // thinking_delta(s), then signature_delta just before content_block_stop.
    assert_eq!(kinds.first(), Some(&"content_block_start"));
    assert_eq!(
        &kinds[kinds.len() - 2..],
        ["signature_delta", "content_block_stop"]
    );
    assert!(kinds[1..kinds.len() - 2]
        .iter()
        .all(|k| *k == "thinking_delta"));
    assert!(kinds.len() >= 5);
    assert_eq!(
        events
            .iter()
            .filter(|(n, _)| n == "content_block_start")
            .count(),
        2
    );
    assert_eq!(text_of(&events, 1), "Hello there!");
    let (_, delta) = &events[events.len() - 2];
    assert_eq!(
        delta["usage"]["output_tokens_details"]["thinking_tokens"],
        3
    );

    let response = post(
        &fake,
        "/v1/messages",
        &with(ANTHROPIC, &scenario),
        anthropic_request(false),
    )
    .await;
    let body = json_body(response).await;
    let thinking = &body["content"][0];
    assert_eq!(thinking["type"], "thinking");
    assert!(!thinking["thinking"].as_str().unwrap().is_empty());
    assert!(!thinking["signature"].as_str().unwrap().is_empty());
    assert_eq!(body["content"][1]["text"], "Hello there!");
    assert_eq!(body["usage"]["output_tokens_details"]["thinking_tokens"], 3);

    let response = post(
        &fake,
        "/v1/chat/completions",
        &with(OPENAI, &scenario),
        openai_request(false, false),
    )
    .await;
    let body = json_body(response).await;
    assert_eq!(body["choices"][0]["message"]["content"], "Hello there!");
    assert_eq!(
        body["usage"]["completion_tokens_details"]["reasoning_tokens"],
        3
    );

    let recorded = fake.wait_for(3, WAIT).await;
    assert!(recorded.iter().all(|r| r.completed && r.usage.is_some()));
}

// ---------------------------------------------------------------------------
// openrouter

#[tokio::test]
async fn openrouter_flavour() {
    let fake = FakeProvider::start().await;
    let scenario = [("x-fake-scenario", "openrouter")];

    // Stream without stream_options: usage is still sent (OpenRouter always does).
    let response = post(
        &fake,
        "/api/v1/chat/completions",
        &with(OPENAI, &scenario),
        openai_request(true, false),
    )
    .await;
    assert_eq!(header(&response, "content-type"), Some(SSE));
    let stream = openai_events(&response.text().await.unwrap());
    assert!(stream.done);
    assert!(stream
        .comments
        .iter()
        .any(|c| c == ": OPENROUTER PROCESSING"));
    assert!(stream
        .chunks
        .iter()
        .all(|c| c["id"].as_str().unwrap().starts_with("gen-")));
    assert!(stream.chunks.iter().all(|c| c["provider"] == "Anthropic"));
    assert_eq!(openai_text(&stream.chunks), "Hello there!");
    let last = stream.chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    let u = &last["usage"];
    assert_eq!(u["is_byok"], false);
    let cost = u["cost"].as_f64().unwrap();
    assert!(cost > 0.0);
    assert_eq!(cost, (11.0 * 3.0 + 6.0 * 15.0) / 1e6);

    let response = post(
        &fake,
        "/v1/chat/completions",
        &with(OPENAI, &scenario),
        openai_request(false, false),
    )
    .await;
    let body = json_body(response).await;
    assert!(body["id"].as_str().unwrap().starts_with("gen-"));
    assert_eq!(body["provider"], "Anthropic");
    assert_eq!(body["usage"]["cost"].as_f64(), Some(cost));
    assert_eq!(body["usage"]["is_byok"], false);

    // The Anthropic skin carries the same extras.
    let response = post(
        &fake,
        "/v1/messages",
        &with(ANTHROPIC, &scenario),
        anthropic_request(false),
    )
    .await;
    let body = json_body(response).await;
    assert_eq!(body["provider"], "Anthropic");
    assert_eq!(body["usage"]["cost"].as_f64(), Some(cost));

    let recorded = fake.wait_for(3, WAIT).await;
    assert_eq!(recorded[0].path, "/api/v1/chat/completions");
    for rec in &recorded {
        assert_eq!(rec.usage, Some(usage(11, 6)));
        assert_eq!(rec.reported_cost, Some(cost));
        assert!(rec.completed);
    }
}

// ---------------------------------------------------------------------------
// errors

#[tokio::test]
async fn error_scenarios() {
    let fake = FakeProvider::start().await;
    let cases = [
        (
            "error-400",
            400,
            "invalid_request_error",
            "invalid_request_error",
        ),
        (
            "error-401",
            401,
            "authentication_error",
            "invalid_request_error",
        ),
        ("error-429", 429, "rate_limit_error", "requests"),
        ("error-500", 500, "api_error", "server_error"),
        ("error-529", 529, "overloaded_error", "server_error"),
    ];
    for (scenario, status, anthropic_type, openai_type) in cases {
        let retryable = status == 429 || status == 529;

        let response = post(
            &fake,
            "/v1/messages",
            &with(ANTHROPIC, &[("x-fake-scenario", scenario)]),
            anthropic_request(true),
        )
        .await;
        assert_eq!(response.status(), status, "{scenario}");
        assert_eq!(header(&response, "content-type"), Some("application/json"));
        assert_eq!(
            header(&response, "retry-after"),
            retryable.then_some("1"),
            "{scenario}"
        );
        assert_eq!(header(&response, "x-should-retry"), None);
        let request_id = header(&response, "request-id").unwrap().to_owned();
        let body = json_body(response).await;
        assert_eq!(body["type"], "error");
        assert_eq!(body["error"]["type"], anthropic_type, "{scenario}");
        assert!(body["error"]["message"].is_string());
        assert_eq!(body["request_id"], request_id.as_str());

        let response = post(
            &fake,
            "/v1/chat/completions",
            &with(OPENAI, &[("x-fake-scenario", scenario)]),
            openai_request(false, false),
        )
        .await;
        assert_eq!(response.status(), status, "{scenario}");
        assert_eq!(
            header(&response, "retry-after"),
            retryable.then_some("1"),
            "{scenario}"
        );
        assert!(header(&response, "x-request-id").is_some());
        let body = json_body(response).await;
        let error = body["error"].as_object().unwrap();
        assert_eq!(error["type"], openai_type, "{scenario}");
        assert!(error["message"].is_string());
        assert!(error["param"].is_null());
        assert!(error.contains_key("code"));
    }

    // retry-after from the header; x-should-retry only on request.
    let headers = with(
        ANTHROPIC,
        &[
            ("x-fake-scenario", "error-529"),
            ("x-fake-retry-after", "7"),
            ("x-fake-no-retry", "1"),
        ],
    );
    let response = post(&fake, "/v1/messages", &headers, anthropic_request(false)).await;
    assert_eq!(response.status(), 529);
    assert_eq!(header(&response, "retry-after"), Some("7"));
    assert_eq!(header(&response, "x-should-retry"), Some("false"));
    let response = post(
        &fake,
        "/v1/messages",
        &with(
            ANTHROPIC,
            &[("x-fake-scenario", "error-400"), ("x-fake-no-retry", "1")],
        ),
        anthropic_request(false),
    )
    .await;
    assert_eq!(header(&response, "x-should-retry"), Some("false"));
    assert_eq!(header(&response, "retry-after"), None);

    let recorded = fake.wait_for(12, WAIT).await;
    assert_eq!(recorded.len(), 12);
    assert!(recorded
        .iter()
        .all(|r| r.usage.is_none() && r.completed && r.status >= 400));
    assert_eq!(recorded[2].scenario, "error-401");
    assert_eq!(recorded[2].status, 401);
}

// ---------------------------------------------------------------------------
// midstream-error

#[tokio::test]
async fn midstream_error_both_dialects() {
    let fake = FakeProvider::start().await;
    let scenario = [
        ("x-fake-scenario", "midstream-error"),
        ("x-fake-usage", "input=40,cache_read=2"),
    ];

    let response = post(
        &fake,
        "/v1/messages",
        &with(ANTHROPIC, &scenario),
        anthropic_request(true),
    )
    .await;
    assert_eq!(response.status(), 200);
    let (chunks, aborted) = read_chunks(response).await;
    assert!(!aborted, "the body ends cleanly");
    let body = concat(&chunks);
    let events = anthropic_events(&body, true);
    assert_eq!(
        names(&events),
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "error"
        ]
    );
    assert!(body.ends_with(
        "event: error\ndata: {\"type\": \"error\", \"error\": {\"type\": \"overloaded_error\", \"message\": \"Overloaded\"}}\n\n"
    ));
    assert_eq!(events[0].1["message"]["usage"]["input_tokens"], 40);

    let response = post(
        &fake,
        "/v1/chat/completions",
        &with(OPENAI, &scenario),
        openai_request(true, true),
    )
    .await;
    assert_eq!(response.status(), 200);
    let body = response.text().await.unwrap();
    assert!(body.ends_with("\n\n"));
    let chunks: Vec<Value> = body[..body.len() - 2]
        .split("\n\n")
        .map(|b| serde_json::from_str(b.strip_prefix("data: ").unwrap()).unwrap())
        .collect();
    assert!(chunks.len() >= 2);
    assert!(chunks[..chunks.len() - 1]
        .iter()
        .all(|c| c.get("error").is_none()));
    let error = &chunks.last().unwrap()["error"];
    assert!(error["message"].is_string());
    assert!(!body.contains("[DONE]"));

    let recorded = fake.wait_for(2, WAIT).await;
    let expected = FakeUsage {
        input_tokens: 40,
        output_tokens: 1,
        cache_read_input_tokens: 2,
        ..FakeUsage::default()
    };
    assert_eq!(recorded[0].usage, Some(expected), "message_start usage");
    assert_eq!(recorded[1].usage, None, "no usage chunk was sent");
    assert!(recorded.iter().all(|r| r.completed && !r.client_gone));
}

// ---------------------------------------------------------------------------
// slow

#[tokio::test]
async fn slow_stream_paces_events_one_per_chunk() {
    let fake = FakeProvider::start().await;
    let headers = with(
        ANTHROPIC,
        &[("x-fake-scenario", "slow"), ("x-fake-delay-ms", "80")],
    );
    let started = Instant::now();
    let response = post(&fake, "/v1/messages", &headers, anthropic_request(true)).await;
    let (chunks, aborted) = read_chunks(response).await;
    assert!(!aborted);
    let elapsed = started.elapsed();
    let events = anthropic_events(&concat(&chunks), true);
    let deltas = events
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .count();
    assert_eq!(deltas, 5);
    assert!(!text_of(&events, 0).is_empty());
    // Each event arrived as its own chunk (the 80 ms pauses keep the
    // client's reads apart), and the pauses add up.
    assert_eq!(chunks.len(), events.len());
    for (_, chunk) in &chunks {
        assert_eq!(
            anthropic_events(std::str::from_utf8(chunk).unwrap(), true).len(),
            1
        );
    }
    let expected = Duration::from_millis(80 * (events.len() as u64 - 1));
    assert!(elapsed >= expected, "{elapsed:?} < {expected:?}");
    let spread = chunks.last().unwrap().0 - chunks[0].0;
    assert!(
        spread >= expected / 2,
        "events must be spread out: {spread:?}"
    );

    let response = post(
        &fake,
        "/v1/chat/completions",
        &with(
            OPENAI,
            &[("x-fake-scenario", "slow"), ("x-fake-delay-ms", "10")],
        ),
        openai_request(true, false),
    )
    .await;
    let stream = openai_events(&response.text().await.unwrap());
    let content = stream
        .chunks
        .iter()
        .filter(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|s| !s.is_empty())
        })
        .count();
    assert_eq!(content, 5);
    assert!(stream.done);

    let recorded = fake.wait_for(2, WAIT).await;
    assert_eq!(recorded[0].usage, Some(usage(11, 9)));
    assert!(recorded.iter().all(|r| r.completed));
}

#[tokio::test]
async fn client_gone_mid_stream_is_recorded() {
    let fake = FakeProvider::start().await;
    let headers = with(
        ANTHROPIC,
        &[("x-fake-scenario", "slow"), ("x-fake-delay-ms", "100")],
    );
    let response = post(&fake, "/v1/messages", &headers, anthropic_request(true)).await;
    let mut stream = response.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"event: message_start\n"));
    drop(stream);

    let rec = only(&fake).await;
    assert!(rec.client_gone, "{rec:?}");
    assert!(!rec.completed);
}

// ---------------------------------------------------------------------------
// cut

#[tokio::test]
async fn cut_stream_aborts_without_finishing() {
    let fake = FakeProvider::start().await;
    let scenario = [("x-fake-scenario", "cut")];

    let response = post(
        &fake,
        "/v1/messages",
        &with(ANTHROPIC, &scenario),
        anthropic_request(true),
    )
    .await;
    assert_eq!(response.status(), 200);
    let (chunks, aborted) = read_chunks(response).await;
    assert!(aborted, "the body must end with a transport error");
    let anthropic_body = concat(&chunks);
    let events = anthropic_events(&anthropic_body, false);
    assert_eq!(
        names(&events),
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta"
        ]
    );
    assert!(!anthropic_body.contains("message_stop"));

    let response = post(
        &fake,
        "/v1/chat/completions",
        &with(OPENAI, &scenario),
        openai_request(true, true),
    )
    .await;
    let (chunks, aborted) = read_chunks(response).await;
    assert!(aborted);
    let body = concat(&chunks);
    let stream = openai_events(&body);
    assert_eq!(stream.chunks.len(), 3, "role + two content chunks");
    assert!(!stream.done);

    let recorded = fake.wait_for(2, WAIT).await;
    assert_eq!(recorded.len(), 2);
    for rec in &recorded {
        assert!(!rec.completed && !rec.client_gone, "{rec:?}");
    }
    assert_eq!(recorded[0].usage, Some(usage(11, 1)), "message_start usage");
    assert_eq!(recorded[0].response, anthropic_body.as_bytes());
    assert_eq!(recorded[1].response, body.as_bytes());
    assert_eq!(recorded[1].usage, None);
}

// ---------------------------------------------------------------------------
// big

#[tokio::test]
async fn big_stream_has_the_requested_size() {
    const TARGET: u64 = 5_000_000;
    let fake = FakeProvider::start().await;
    let headers = with(
        ANTHROPIC,
        &[("x-fake-scenario", "big"), ("x-fake-big-bytes", "5000000")],
    );
    let response = post(&fake, "/v1/messages", &headers, anthropic_request(true)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "content-type"), Some(SSE));

    let mut stream = response.bytes_stream();
    let mut total = 0_u64;
    let mut head = Vec::new();
    let mut tail: Vec<u8> = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        total += chunk.len() as u64;
        if head.len() < 4096 {
            head.extend_from_slice(&chunk[..chunk.len().min(4096)]);
        }
        tail.extend_from_slice(&chunk);
        if tail.len() > 64 * 1024 {
            tail.drain(..tail.len() - 32 * 1024);
        }
    }
    assert!(total.abs_diff(TARGET) < 2048, "total {total}");

    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("event: message_start\n"));
    assert!(head.contains("event: content_block_start\n"));
    let tail = String::from_utf8(tail).unwrap();
    let from = tail.rfind("event: content_block_stop\n").unwrap();
    let events = anthropic_events(&tail[from..], true);
    assert_eq!(
        names(&events),
        ["content_block_stop", "message_delta", "message_stop"]
    );
    let output = events[1].1["usage"]["output_tokens"].as_u64().unwrap();

    let rec = only(&fake).await;
    assert!(rec.completed);
    assert_eq!(rec.usage.unwrap().output_tokens, output);
    assert_eq!(rec.response.len(), RESPONSE_CAP);
    assert_eq!(rec.response_bytes, total);
    // Every delta carries the same text: the count matches the body size.
    let delta_len = total / output;
    assert!(delta_len > 500 && delta_len < 2000, "{delta_len}");

    // The OpenAI dialect, smaller.
    fake.clear();
    let headers = with(
        OPENAI,
        &[("x-fake-scenario", "big"), ("x-fake-big-bytes", "300000")],
    );
    let response = post(
        &fake,
        "/v1/chat/completions",
        &headers,
        openai_request(true, true),
    )
    .await;
    let body = response.text().await.unwrap();
    assert!(
        (body.len() as u64).abs_diff(300_000) < 2048,
        "{}",
        body.len()
    );
    let stream = openai_events(&body);
    assert!(stream.done);
    let last = stream.chunks.last().unwrap();
    assert_eq!(
        last["usage"]["completion_tokens"].as_u64().unwrap() as usize,
        stream.chunks.len() - 3
    );
}

// ---------------------------------------------------------------------------
// hang

#[tokio::test]
async fn hang_delays_headers_then_answers() {
    let fake = FakeProvider::start().await;
    let headers = with(
        ANTHROPIC,
        &[("x-fake-scenario", "hang"), ("x-fake-delay-ms", "300")],
    );
    let started = Instant::now();
    let response = post(&fake, "/v1/messages", &headers, anthropic_request(true)).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "content-type"), Some("application/json"));
    let body = json_body(response).await;
    assert_eq!(body["content"][0]["text"], "Hello there!");
    let rec = only(&fake).await;
    assert!(rec.completed && !rec.client_gone);
    assert_eq!(rec.usage, Some(usage(11, 6)));
}

#[tokio::test]
async fn hang_records_client_gone() {
    let fake = FakeProvider::start().await;
    let result = client()
        .post(format!("{}/v1/messages", fake.base_url()))
        .header("x-fake-scenario", "hang")
        .header("x-fake-delay-ms", "10000")
        .header("content-type", "application/json")
        .body(anthropic_request(false))
        .timeout(Duration::from_millis(200))
        .send()
        .await;
    assert!(result.is_err(), "the client gives up first");

    let started = Instant::now();
    let rec = only(&fake).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "noticed before the delay ended"
    );
    assert!(rec.client_gone && !rec.completed, "{rec:?}");
    assert_eq!(rec.usage, None);
}

// ---------------------------------------------------------------------------
// x-fake-usage

#[tokio::test]
async fn usage_header_sets_reported_usage() {
    let fake = FakeProvider::start().await;
    let spec = [(
        "x-fake-usage",
        "input=100,output=20,cache_write=10,cache_write_1h=4,cache_read=30",
    )];
    let expected = FakeUsage {
        input_tokens: 100,
        output_tokens: 20,
        cache_creation_input_tokens: 10,
        cache_creation_1h_input_tokens: 4,
        cache_read_input_tokens: 30,
    };

    let response = post(
        &fake,
        "/v1/messages",
        &with(ANTHROPIC, &spec),
        anthropic_request(false),
    )
    .await;
    let u = json_body(response).await["usage"].clone();
    assert_eq!(u["input_tokens"], 100);
    assert_eq!(u["output_tokens"], 20);
    assert_eq!(u["cache_creation_input_tokens"], 10);
    assert_eq!(u["cache_read_input_tokens"], 30);
    assert_eq!(
        u["cache_creation"],
        json!({"ephemeral_5m_input_tokens": 6, "ephemeral_1h_input_tokens": 4})
    );

    let response = post(
        &fake,
        "/v1/messages",
        &with(ANTHROPIC, &spec),
        anthropic_request(true),
    )
    .await;
    let events = anthropic_events(&response.text().await.unwrap(), true);
    let start = &events[0].1["message"]["usage"];
    assert_eq!(start["input_tokens"], 100);
    assert_eq!(start["cache_creation_input_tokens"], 10);
    assert_eq!(start["cache_read_input_tokens"], 30);
    assert_eq!(start["cache_creation"]["ephemeral_1h_input_tokens"], 4);
    assert_eq!(start["output_tokens"], 1);
    let last = &events[events.len() - 2].1["usage"];
    assert_eq!(last["output_tokens"], 20);
    assert_eq!(last["input_tokens"], 100);
    assert_eq!(last["cache_creation_input_tokens"], 10);
    assert_eq!(last["cache_read_input_tokens"], 30);

    let response = post(
        &fake,
        "/v1/chat/completions",
        &with(OPENAI, &spec),
        openai_request(false, false),
    )
    .await;
    let u = json_body(response).await["usage"].clone();
    assert_eq!(u["prompt_tokens"], 130);
    assert_eq!(u["completion_tokens"], 20);
    assert_eq!(u["total_tokens"], 150);
    assert_eq!(u["prompt_tokens_details"]["cached_tokens"], 30);
    assert!(u["prompt_tokens_details"]
        .get("cache_write_tokens")
        .is_none());

    let headers = with(OPENAI, &[spec[0], ("x-fake-scenario", "openrouter")]);
    let response = post(
        &fake,
        "/v1/chat/completions",
        &headers,
        openai_request(false, false),
    )
    .await;
    let u = json_body(response).await["usage"].clone();
    assert_eq!(u["prompt_tokens_details"]["cache_write_tokens"], 10);
    assert_eq!(u["cost"].as_f64(), Some((130.0 * 3.0 + 20.0 * 15.0) / 1e6));

    // A partial spec keeps the defaults for the rest.
    let response = post(
        &fake,
        "/v1/messages",
        &with(ANTHROPIC, &[("x-fake-usage", "output=3")]),
        anthropic_request(false),
    )
    .await;
    assert_eq!(response.status(), 200);

    // A bad spec is a 400 so typos do not go unnoticed.
    let response = post(
        &fake,
        "/v1/messages",
        &with(ANTHROPIC, &[("x-fake-usage", "inptu=1")]),
        anthropic_request(false),
    )
    .await;
    assert_eq!(response.status(), 400);

    let recorded = fake.wait_for(6, WAIT).await;
    assert!(recorded[..4].iter().all(|r| r.usage == Some(expected)));
    assert_eq!(recorded[3].reported_cost, Some(expected.openrouter_cost()));
    assert_eq!(recorded[4].usage, Some(usage(11, 3)));
    assert_eq!(recorded[5].usage, None);
}

// ---------------------------------------------------------------------------
// malformed requests, other endpoints, control endpoints

#[tokio::test]
async fn malformed_json_and_unknown_scenario_are_400() {
    let fake = FakeProvider::start().await;

    let response = post(&fake, "/v1/messages", ANTHROPIC, "{not json").await;
    assert_eq!(response.status(), 400);
    let body = json_body(response).await;
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "invalid_request_error");

    let response = post(&fake, "/v1/chat/completions", OPENAI, "[1, 2").await;
    assert_eq!(response.status(), 400);
    let body = json_body(response).await;
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(body["error"]["param"].is_null());

    let response = post(
        &fake,
        "/v1/messages",
        &with(ANTHROPIC, &[("x-fake-scenario", "nope")]),
        anthropic_request(false),
    )
    .await;
    assert_eq!(response.status(), 400);

    let recorded = fake.wait_for(3, WAIT).await;
    assert_eq!(recorded[0].body, b"{not json");
    assert_eq!(recorded[0].json(), Value::Null);
    assert_eq!(recorded[2].scenario, "nope");
    assert!(recorded
        .iter()
        .all(|r| r.usage.is_none() && r.status == 400));
}

#[tokio::test]
async fn count_tokens_models_and_control_endpoints() {
    let fake = FakeProvider::start().await;

    let response = post(
        &fake,
        "/v1/messages/count_tokens?beta=true",
        ANTHROPIC,
        anthropic_request(false),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert!(header(&response, "request-id").is_some());
    assert_eq!(json_body(response).await, json!({"input_tokens": 11}));

    let response = get(&fake, "/v1/models", ANTHROPIC).await;
    let body = json_body(response).await;
    assert_eq!(body["data"][0]["type"], "model");
    assert_eq!(body["has_more"], false);

    let response = get(&fake, "/v1/models", OPENAI).await;
    let body = json_body(response).await;
    assert_eq!(body["object"], "list");
    assert_eq!(body["data"][0]["object"], "model");

    let recorded = fake.wait_for(3, WAIT).await;
    assert_eq!(recorded.len(), 3);
    assert!(recorded.iter().all(|r| r.usage.is_none() && r.completed));
    assert_eq!(recorded[0].path, "/v1/messages/count_tokens?beta=true");

    // GET /_fake/requests lists what arrived (and is not itself recorded).
    let list = json_body(get(&fake, "/_fake/requests", &[]).await).await;
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 3);
    assert_eq!(list[0]["path"], "/v1/messages/count_tokens?beta=true");
    assert_eq!(list[0]["body"]["model"], "claude-haiku-4-5-20251001");
    assert_eq!(list[0]["completed"], true);
    assert_eq!(list[1]["method"], "GET");

    let response = client()
        .post(format!("{}/_fake/clear", fake.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(fake.requests().is_empty());

    post(&fake, "/v1/messages", ANTHROPIC, anthropic_request(false)).await;
    assert_eq!(fake.wait_for(1, WAIT).await.len(), 1);
    fake.clear();
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn default_scenario_applies_without_header() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fake = FakeProvider::start_on(listener, Some("tool_use".to_owned())).await;
    assert_eq!(fake.base_url(), format!("http://{}", fake.addr));

    let body =
        json_body(post(&fake, "/v1/messages", ANTHROPIC, anthropic_request(false)).await).await;
    assert_eq!(body["stop_reason"], "tool_use");
    let headers = with(ANTHROPIC, &[("x-fake-scenario", "text")]);
    let body =
        json_body(post(&fake, "/v1/messages", &headers, anthropic_request(false)).await).await;
    assert_eq!(body["stop_reason"], "end_turn");

    let recorded = fake.wait_for(2, WAIT).await;
    assert_eq!(recorded[0].scenario, "tool_use");
    assert_eq!(recorded[1].scenario, "text");
}

// ---------------------------------------------------------------------------
// batches (tests/support/fake_batches.rs)

fn message_item(custom_id: &str, user_id: Option<&str>) -> Value {
    let mut params = json!({
        "model": "claude-haiku-4-5-20251001",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "Hi"}],
    });
    if let Some(user_id) = user_id {
        params["metadata"] = json!({"user_id": user_id});
    }
    json!({"custom_id": custom_id, "params": params})
}

async fn send(
    fake: &FakeProvider,
    method: reqwest::Method,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let mut request = client().request(method, format!("{}{path}", fake.base_url()));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, json_body(response).await)
}

/// `POST /v1/messages/batches` with `requests`; status and body.
async fn create_message_batch(
    fake: &FakeProvider,
    headers: &[(&str, &str)],
    requests: Value,
) -> (u16, Value) {
    let headers = with(ANTHROPIC, headers);
    let response = post(
        fake,
        "/v1/messages/batches",
        &headers,
        json!({ "requests": requests }).to_string(),
    )
    .await;
    let status = response.status().as_u16();
    (status, json_body(response).await)
}

/// Polls `path` until `field` equals `want` (or `WAIT` passes); the
/// values of `field` seen, deduplicated in order, and the last body.
async fn poll_until(
    fake: &FakeProvider,
    path: &str,
    headers: &[(&str, &str)],
    field: &str,
    want: &str,
) -> (Vec<String>, Value) {
    let deadline = Instant::now() + WAIT;
    let mut seen: Vec<String> = Vec::new();
    loop {
        let (status, body) = send(fake, reqwest::Method::GET, path, headers).await;
        assert_eq!(status, 200, "{body}");
        let value = body[field].as_str().unwrap().to_owned();
        if seen.last() != Some(&value) {
            seen.push(value.clone());
        }
        if value == want || Instant::now() > deadline {
            return (seen, body);
        }
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
}

fn jsonl(bytes: &[u8]) -> Vec<Value> {
    std::str::from_utf8(bytes)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn by_custom_id(lines: &[Value], custom_id: &str) -> Value {
    lines
        .iter()
        .find(|l| l["custom_id"] == custom_id)
        .unwrap_or_else(|| panic!("no line for {custom_id}: {lines:?}"))
        .clone()
}

#[tokio::test]
async fn message_batch_create_is_validated_like_the_api() {
    let fake = FakeProvider::start().await;
    let long = "a".repeat(65);
    let mut streaming = message_item("s", None);
    streaming["params"]["stream"] = json!(true);
    let mut no_max_tokens = message_item("m", None);
    no_max_tokens["params"]
        .as_object_mut()
        .unwrap()
        .remove("max_tokens");
    let cases = [
        (json!([]), "requests:"),
        (json!([message_item(&long, None)]), "requests.0.custom_id"),
        (json!([message_item("", None)]), "requests.0.custom_id"),
        (json!([message_item("has space", None)]), "pattern"),
        (
            json!([message_item("a", None), message_item("a", None)]),
            "requests.1.custom_id: Duplicate",
        ),
        (
            json!([{"custom_id": "p"}]),
            "requests.0.params: Field required",
        ),
        (json!([streaming]), "requests.0.params.stream"),
        (json!([no_max_tokens]), "requests.0.params.max_tokens"),
        (
            json!([message_item("u", Some("x-fake-usage:bogus=1"))]),
            "bad x-fake-usage",
        ),
    ];
    for (requests, expected) in cases {
        let (status, body) = create_message_batch(&fake, &[], requests.clone()).await;
        assert_eq!(status, 400, "{requests}: {body}");
        assert_eq!(body["type"], "error");
        assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(expected), "{message:?} lacks {expected:?}");
    }
    let response = post(&fake, "/v1/messages/batches", ANTHROPIC, "{}").await;
    assert_eq!(response.status(), 400);
    assert_eq!(
        json_body(response).await["error"]["message"],
        "requests: Field required"
    );
    // 64 characters of the allowed alphabet pass.
    let ok = format!("{}-_", "Az09".repeat(15) + "x");
    assert_eq!(ok.len(), 63);
    let (status, _) = create_message_batch(&fake, &[], json!([message_item(&ok, None)])).await;
    assert_eq!(status, 200);

    for (method, path) in [
        (reqwest::Method::GET, "/v1/messages/batches/msgbatch_nope"),
        (
            reqwest::Method::GET,
            "/v1/messages/batches/msgbatch_nope/results",
        ),
        (
            reqwest::Method::POST,
            "/v1/messages/batches/msgbatch_nope/cancel",
        ),
        (
            reqwest::Method::DELETE,
            "/v1/messages/batches/msgbatch_nope",
        ),
    ] {
        let (status, body) = send(&fake, method, path, ANTHROPIC).await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(body["error"]["type"], "not_found_error");
    }
    // Nothing was created by the refused requests.
    let truth = fake.batches();
    assert_eq!(truth["anthropic"].as_object().unwrap().len(), 1);
}

#[tokio::test]
async fn message_batch_ends_on_time_with_an_absolute_results_url() {
    let fake = FakeProvider::start().await;
    let requests = json!([
        message_item(
            "ok-1",
            Some("x-fake-usage:input=100,output=20,cache_write=10,cache_write_1h=4,cache_read=30")
        ),
        message_item("ok-2", None),
        message_item("err-1", None),
        message_item("exp-1", None),
    ]);
    let started = Instant::now();
    let (status, created) = create_message_batch(
        &fake,
        &[
            ("x-fake-batch-ms", "400"),
            ("x-fake-usage", "input=7,output=3"),
        ],
        requests,
    )
    .await;
    assert_eq!(status, 200, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("msgbatch_"), "{id}");
    assert_eq!(created["type"], "message_batch");
    assert_eq!(created["processing_status"], "in_progress");
    assert_eq!(
        created["request_counts"],
        json!({"processing": 4, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0})
    );
    for field in [
        "ended_at",
        "archived_at",
        "cancel_initiated_at",
        "results_url",
    ] {
        assert!(created[field].is_null(), "{field}: {created}");
    }
    let created_at = humantime::parse_rfc3339(created["created_at"].as_str().unwrap()).unwrap();
    let expires_at = humantime::parse_rfc3339(created["expires_at"].as_str().unwrap()).unwrap();
    assert_eq!(
        expires_at.duration_since(created_at).unwrap(),
        Duration::from_secs(24 * 3600)
    );

    // Before the end: no results, no delete (the API's errors).
    let path = format!("/v1/messages/batches/{id}");
    let (status, body) = send(
        &fake,
        reqwest::Method::GET,
        &format!("{path}/results"),
        ANTHROPIC,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    let (status, _) = send(&fake, reqwest::Method::DELETE, &path, ANTHROPIC).await;
    assert_eq!(status, 400);
    let truth = fake.batches();
    assert_eq!(
        truth["anthropic"][&id]["items"]["ok-1"]["outcome"],
        "processing"
    );
    assert!(truth["anthropic"][&id]["items"]["ok-1"]["usage"].is_null());

    let (seen, ended) = poll_until(&fake, &path, ANTHROPIC, "processing_status", "ended").await;
    assert_eq!(seen, ["in_progress", "ended"]);
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert_eq!(
        ended["request_counts"],
        json!({"processing": 0, "succeeded": 2, "errored": 1, "canceled": 0, "expired": 1})
    );
    assert!(ended["ended_at"].is_string());
    // Absolute, on the scheme and Host of the request that asked.
    assert_eq!(
        ended["results_url"],
        format!("{}/v1/messages/batches/{id}/results", fake.base_url())
    );
    let (_, other_host) = send(
        &fake,
        reqwest::Method::GET,
        &format!("/anthropic/v1/messages/batches/{id}"),
        &with(ANTHROPIC, &[("host", "api.anthropic.test:8443")]),
    )
    .await;
    assert_eq!(
        other_host["results_url"],
        format!("http://api.anthropic.test:8443/anthropic/v1/messages/batches/{id}/results")
    );

    let response = client()
        .get(ended["results_url"].as_str().unwrap())
        .header("x-api-key", "sk-ant-test")
        .header("accept", "application/binary")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(&response, "content-type"),
        Some("application/binary")
    );
    let lines = jsonl(&response.bytes().await.unwrap());
    let order: Vec<&str> = lines
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap())
        .collect();
    assert_eq!(order, ["exp-1", "err-1", "ok-2", "ok-1"], "reverse order");
    let ok1 = by_custom_id(&lines, "ok-1")["result"].clone();
    assert_eq!(ok1["type"], "succeeded");
    assert_eq!(ok1["message"]["type"], "message");
    assert_eq!(ok1["message"]["model"], "claude-haiku-4-5-20251001");
    let u = &ok1["message"]["usage"];
    assert_eq!(
        (u["input_tokens"].as_u64(), u["output_tokens"].as_u64()),
        (Some(100), Some(20))
    );
    assert_eq!(u["cache_creation_input_tokens"], 10);
    assert_eq!(u["cache_creation"]["ephemeral_1h_input_tokens"], 4);
    assert_eq!(u["cache_read_input_tokens"], 30);
    assert_eq!(u["service_tier"], "batch");
    let ok2 = by_custom_id(&lines, "ok-2")["result"].clone();
    assert_eq!(
        ok2["message"]["usage"]["input_tokens"], 7,
        "the batch's x-fake-usage"
    );
    assert_eq!(
        by_custom_id(&lines, "err-1")["result"],
        json!({"type": "errored", "error": {"type": "error", "error": {
            "type": "invalid_request_error",
            "message": "fake provider: this item errored (custom_id prefix err-)",
        }, "request_id": null}})
    );
    assert_eq!(
        by_custom_id(&lines, "exp-1")["result"],
        json!({"type": "expired"})
    );

    // Ground truth: what each item billed.
    let truth = fake.batches();
    let items = &truth["anthropic"][&id]["items"];
    assert_eq!(truth["anthropic"][&id]["status"], "ended");
    assert_eq!(items["ok-1"]["outcome"], "succeeded");
    assert_eq!(
        items["ok-1"]["usage"],
        json!({"input_tokens": 100, "output_tokens": 20, "cache_creation_input_tokens": 10,
               "cache_creation_1h_input_tokens": 4, "cache_read_input_tokens": 30})
    );
    assert_eq!(items["ok-1"]["reported_usage"], *u);
    assert_eq!(items["ok-2"]["usage"]["input_tokens"], 7);
    assert_eq!(items["err-1"]["outcome"], "errored");
    assert!(items["err-1"]["usage"].is_null());
    assert_eq!(items["exp-1"]["outcome"], "expired");

    let (status, deleted) = send(&fake, reqwest::Method::DELETE, &path, ANTHROPIC).await;
    assert_eq!(status, 200);
    assert_eq!(deleted, json!({"id": id, "type": "message_batch_deleted"}));
    let (status, _) = send(&fake, reqwest::Method::GET, &path, ANTHROPIC).await;
    assert_eq!(status, 404);

    // Every call was recorded with its credential, and none was metered.
    let recorded = fake.requests();
    assert!(recorded
        .iter()
        .any(|r| r.path == "/v1/messages/batches" && r.method == "POST"));
    assert!(recorded
        .iter()
        .all(|r| r.header("x-api-key") == Some("sk-ant-test") && r.usage.is_none()));
}

#[tokio::test]
async fn message_batch_cancel_cancels_what_was_not_processed() {
    let fake = FakeProvider::start().await;
    let (_, created) = create_message_batch(
        &fake,
        &[("x-fake-batch-ms", "20"), ("x-fake-batch-cancel-ms", "250")],
        json!([message_item("ok-1", None), message_item("hold-1", None)]),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/messages/batches/{id}");
    // A held item keeps the batch running past its processing time.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_, body) = send(&fake, reqwest::Method::GET, &path, ANTHROPIC).await;
    assert_eq!(body["processing_status"], "in_progress");

    let (status, canceling) = send(
        &fake,
        reqwest::Method::POST,
        &format!("{path}/cancel"),
        ANTHROPIC,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(canceling["processing_status"], "canceling");
    assert!(canceling["cancel_initiated_at"].is_string());
    assert_eq!(canceling["request_counts"]["processing"], 2);
    let (seen, ended) = poll_until(&fake, &path, ANTHROPIC, "processing_status", "ended").await;
    assert_eq!(seen, ["canceling", "ended"]);
    assert_eq!(
        ended["request_counts"],
        json!({"processing": 0, "succeeded": 1, "errored": 0, "canceled": 1, "expired": 0})
    );
    let (status, body) = send(
        &fake,
        reqwest::Method::POST,
        &format!("{path}/cancel"),
        ANTHROPIC,
    )
    .await;
    assert_eq!(status, 400, "an ended batch cannot be canceled: {body}");

    let bytes = client()
        .get(ended["results_url"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let lines = jsonl(&bytes);
    assert_eq!(
        by_custom_id(&lines, "hold-1")["result"],
        json!({"type": "canceled"})
    );
    assert_eq!(by_custom_id(&lines, "ok-1")["result"]["type"], "succeeded");
    let truth = fake.batches();
    assert_eq!(
        truth["anthropic"][&id]["items"]["hold-1"]["outcome"],
        "canceled"
    );

    // A held batch that is never cancelled expires at x-fake-batch-expires-ms.
    let (_, created) = create_message_batch(
        &fake,
        &[
            ("x-fake-batch-ms", "10"),
            ("x-fake-batch-expires-ms", "150"),
        ],
        json!([message_item("ok-1", None), message_item("hold-1", None)]),
    )
    .await;
    let path = format!("/v1/messages/batches/{}", created["id"].as_str().unwrap());
    let (_, ended) = poll_until(&fake, &path, ANTHROPIC, "processing_status", "ended").await;
    assert_eq!(ended["request_counts"]["expired"], 1);
    assert_eq!(ended["request_counts"]["succeeded"], 1);
}

#[tokio::test]
async fn message_batches_list_newest_first_in_pages() {
    let fake = FakeProvider::start().await;
    let mut ids = Vec::new();
    for n in 0..3 {
        let (_, created) =
            create_message_batch(&fake, &[], json!([message_item(&format!("i-{n}"), None)])).await;
        ids.push(created["id"].as_str().unwrap().to_owned());
    }
    let (status, page) = send(
        &fake,
        reqwest::Method::GET,
        "/v1/messages/batches?limit=2",
        ANTHROPIC,
    )
    .await;
    assert_eq!(status, 200);
    let listed: Vec<&str> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [ids[2].as_str(), ids[1].as_str()]);
    assert_eq!(page["has_more"], true);
    assert_eq!(page["first_id"], ids[2]);
    assert_eq!(page["last_id"], ids[1]);
    let (_, next) = send(
        &fake,
        reqwest::Method::GET,
        &format!("/v1/messages/batches?limit=2&after_id={}", ids[1]),
        ANTHROPIC,
    )
    .await;
    assert_eq!(next["data"][0]["id"], ids[0]);
    assert_eq!(next["has_more"], false);
    let (_, back) = send(
        &fake,
        reqwest::Method::GET,
        &format!("/v1/messages/batches?limit=1&before_id={}", ids[0]),
        ANTHROPIC,
    )
    .await;
    assert_eq!(back["data"][0]["id"], ids[1]);
    assert_eq!(back["has_more"], true);
    let (status, _) = send(
        &fake,
        reqwest::Method::GET,
        "/v1/messages/batches?limit=0",
        ANTHROPIC,
    )
    .await;
    assert_eq!(status, 400);
    // The plain Messages endpoint is still itself.
    let response = post(&fake, "/v1/messages", ANTHROPIC, anthropic_request(false)).await;
    assert_eq!(json_body(response).await["type"], "message");
}

/// A `multipart/form-data` upload as the OpenAI SDK sends it.
async fn upload(fake: &FakeProvider, filename: &str, purpose: &str, data: &str) -> (u16, Value) {
    let boundary = "fakeboundary7d3a";
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n{purpose}\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n{data}\r\n--{boundary}--\r\n"
    );
    let response = client()
        .post(format!("{}/v1/files", fake.base_url()))
        .header("authorization", "Bearer sk-test")
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, json_body(response).await)
}

fn chat_line(custom_id: &str, usage: Option<&str>) -> String {
    let mut body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]});
    if let Some(usage) = usage {
        body["user"] = json!(format!("x-fake-usage:{usage}"));
    }
    json!({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body})
        .to_string()
}

async fn create_openai_batch(
    fake: &FakeProvider,
    headers: &[(&str, &str)],
    body: Value,
) -> (u16, Value) {
    let headers = with(OPENAI, headers);
    let response = post(fake, "/v1/batches", &headers, body.to_string()).await;
    let status = response.status().as_u16();
    (status, json_body(response).await)
}

async fn file_content(fake: &FakeProvider, id: &str) -> Vec<Value> {
    let response = get(fake, &format!("/v1/files/{id}/content"), OPENAI).await;
    assert_eq!(response.status(), 200);
    jsonl(&response.bytes().await.unwrap())
}

#[tokio::test]
async fn openai_files_and_batch_create_are_validated() {
    let fake = FakeProvider::start().await;
    let (status, file) = upload(&fake, "in.jsonl", "batch", &chat_line("a", None)).await;
    assert_eq!(status, 200, "{file}");
    let id = file["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("file-"));
    assert_eq!(file["object"], "file");
    assert_eq!(file["purpose"], "batch");
    assert_eq!(file["filename"], "in.jsonl");
    assert_eq!(file["bytes"], chat_line("a", None).len());
    let (_, got) = send(
        &fake,
        reqwest::Method::GET,
        &format!("/v1/files/{id}"),
        OPENAI,
    )
    .await;
    assert_eq!(got, file);
    assert_eq!(file_content(&fake, &id).await[0]["custom_id"], "a");
    let (_, list) = send(
        &fake,
        reqwest::Method::GET,
        "/v1/files?purpose=batch",
        OPENAI,
    )
    .await;
    assert_eq!(list["object"], "list");
    assert_eq!(list["data"][0]["id"], id);

    let (status, body) = upload(&fake, "in.txt", "batch", "x").await;
    assert_eq!(status, 400);
    assert_eq!(
        body["error"]["message"],
        "Invalid file format for Batch API. Must be .jsonl"
    );
    let (status, body) = upload(&fake, "in.jsonl", "assistants", "x").await;
    assert_eq!((status, &body["purpose"]), (200, &json!("assistants")));
    let other = body["id"].as_str().unwrap().to_owned();

    let good = json!({"input_file_id": id, "endpoint": "/v1/chat/completions", "completion_window": "24h"});
    let mut cases = Vec::new();
    for (key, value, status, param) in [
        ("input_file_id", Value::Null, 400, "input_file_id"),
        ("endpoint", json!("/v1/images/edits"), 400, "endpoint"),
        ("completion_window", json!("48h"), 400, "completion_window"),
        ("input_file_id", json!("file-missing"), 404, "id"),
        ("input_file_id", json!(other), 400, "input_file_id"),
    ] {
        let mut body = good.clone();
        if value.is_null() {
            body.as_object_mut().unwrap().remove(key);
        } else {
            body[key] = value;
        }
        cases.push((body, status, param));
    }
    for (body, status, param) in cases {
        let (got, answer) = create_openai_batch(&fake, &[], body.clone()).await;
        assert_eq!(got, status, "{body}: {answer}");
        assert_eq!(answer["error"]["type"], "invalid_request_error");
        assert_eq!(answer["error"]["param"], param, "{answer}");
    }
    let (status, body) = send(
        &fake,
        reqwest::Method::GET,
        "/v1/batches/batch_nope",
        OPENAI,
    )
    .await;
    assert_eq!(status, 404);
    assert!(body["error"]["message"].is_string());

    let (status, deleted) = send(
        &fake,
        reqwest::Method::DELETE,
        &format!("/v1/files/{other}"),
        OPENAI,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        deleted,
        json!({"id": other, "object": "file", "deleted": true})
    );
    let (status, _) = send(
        &fake,
        reqwest::Method::GET,
        &format!("/v1/files/{other}"),
        OPENAI,
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(fake.batches()["openai"], json!({}));
}

#[tokio::test]
async fn openai_batch_walks_its_states_and_writes_result_files() {
    let fake = FakeProvider::start().await;
    let lines = [
        chat_line("ok-1", Some("input=100,output=20,cache_read=30")),
        chat_line("ok-2", None),
        chat_line("err-1", None),
    ]
    .join("\n");
    let (_, file) = upload(&fake, "in.jsonl", "batch", &lines).await;
    let (status, created) = create_openai_batch(
        &fake,
        &[("x-fake-batch-ms", "1200")],
        json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions",
               "completion_window": "24h", "metadata": {"job": "nightly"}}),
    )
    .await;
    assert_eq!(status, 200, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("batch_"));
    assert_eq!(created["object"], "batch");
    assert_eq!(created["status"], "validating");
    assert_eq!(created["metadata"], json!({"job": "nightly"}));
    assert_eq!(created["model"], "gpt-4o-mini");
    assert_eq!(
        created["expires_at"].as_u64().unwrap() - created["created_at"].as_u64().unwrap(),
        24 * 3600
    );
    assert!(created["output_file_id"].is_null() && created["in_progress_at"].is_null());

    let path = format!("/v1/batches/{id}");
    let (seen, done) = poll_until(&fake, &path, OPENAI, "status", "completed").await;
    assert_eq!(
        seen,
        ["validating", "in_progress", "finalizing", "completed"]
    );
    for field in ["in_progress_at", "finalizing_at", "completed_at"] {
        assert!(done[field].is_u64(), "{field}: {done}");
    }
    assert!(done["failed_at"].is_null() && done["cancelled_at"].is_null());
    assert_eq!(
        done["request_counts"],
        json!({"total": 3, "completed": 2, "failed": 1})
    );
    // ok-1 (100 + 30 cached in, 20 out) + ok-2 (11 in, 6 out).
    assert_eq!(
        done["usage"],
        json!({"input_tokens": 141, "input_tokens_details": {"cached_tokens": 30},
               "output_tokens": 26, "output_tokens_details": {"reasoning_tokens": 0},
               "total_tokens": 167})
    );

    let output = file_content(&fake, done["output_file_id"].as_str().unwrap()).await;
    assert_eq!(output.len(), 2);
    let ok1 = by_custom_id(&output, "ok-1");
    assert!(ok1["id"].as_str().unwrap().starts_with("batch_req_"));
    assert!(ok1["error"].is_null());
    assert_eq!(ok1["response"]["status_code"], 200);
    assert!(ok1["response"]["request_id"].is_string());
    let body = &ok1["response"]["body"];
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "gpt-4o-mini");
    assert_eq!(body["usage"]["prompt_tokens"], 130);
    assert_eq!(body["usage"]["prompt_tokens_details"]["cached_tokens"], 30);
    assert_eq!(body["usage"]["completion_tokens"], 20);
    let errors = file_content(&fake, done["error_file_id"].as_str().unwrap()).await;
    let err = by_custom_id(&errors, "err-1");
    assert_eq!(err["response"]["status_code"], 400);
    assert_eq!(
        err["response"]["body"]["error"]["type"],
        "invalid_request_error"
    );
    assert!(err["error"].is_null());
    let (_, out_file) = send(
        &fake,
        reqwest::Method::GET,
        &format!("/v1/files/{}", done["output_file_id"].as_str().unwrap()),
        OPENAI,
    )
    .await;
    assert_eq!(out_file["purpose"], "batch_output");

    let truth = fake.batches();
    let items = &truth["openai"][&id]["items"];
    assert_eq!(truth["openai"][&id]["status"], "completed");
    assert_eq!(items["ok-1"]["outcome"], "succeeded");
    assert_eq!(items["ok-1"]["usage"]["input_tokens"], 100);
    assert_eq!(items["ok-1"]["usage"]["cache_read_input_tokens"], 30);
    assert_eq!(items["ok-1"]["reported_usage"], body["usage"]);
    assert_eq!(items["err-1"]["outcome"], "errored");

    let (_, list) = send(&fake, reqwest::Method::GET, "/v1/batches?limit=1", OPENAI).await;
    assert_eq!(list["data"][0]["id"], id);
    assert_eq!(
        (list["first_id"].clone(), list["has_more"].clone()),
        (json!(id), json!(false))
    );
    let (status, _) = send(
        &fake,
        reqwest::Method::POST,
        &format!("{path}/cancel"),
        OPENAI,
    )
    .await;
    assert_eq!(status, 400, "a completed batch cannot be cancelled");
}

#[tokio::test]
async fn openai_batch_cancel_expiry_and_invalid_files() {
    let fake = FakeProvider::start().await;
    let lines = [chat_line("ok-1", None), chat_line("hold-1", None)].join("\n");
    let (_, file) = upload(&fake, "in.jsonl", "batch", &lines).await;
    let create = json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions",
                        "completion_window": "24h"});
    let (_, created) = create_openai_batch(
        &fake,
        &[("x-fake-batch-ms", "40"), ("x-fake-batch-cancel-ms", "200")],
        create.clone(),
    )
    .await;
    let path = format!("/v1/batches/{}", created["id"].as_str().unwrap());
    tokio::time::sleep(Duration::from_millis(80)).await;
    let (_, running) = send(&fake, reqwest::Method::GET, &path, OPENAI).await;
    assert_eq!(running["status"], "in_progress", "held: {running}");
    let (status, cancelling) = send(
        &fake,
        reqwest::Method::POST,
        &format!("{path}/cancel"),
        OPENAI,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(cancelling["status"], "cancelling");
    assert!(cancelling["cancelling_at"].is_u64());
    let (seen, cancelled) = poll_until(&fake, &path, OPENAI, "status", "cancelled").await;
    // The cancel's own answer showed `cancelling`; a poll that came late
    // (a loaded machine) may see only the end.
    assert_eq!(
        seen.last().map(String::as_str),
        Some("cancelled"),
        "{seen:?}"
    );
    assert!(
        seen.iter().all(|s| s == "cancelling" || s == "cancelled"),
        "{seen:?}"
    );
    assert!(cancelled["cancelled_at"].is_u64());
    assert_eq!(
        cancelled["request_counts"],
        json!({"total": 2, "completed": 1, "failed": 1})
    );
    let errors = file_content(&fake, cancelled["error_file_id"].as_str().unwrap()).await;
    let held = by_custom_id(&errors, "hold-1");
    assert!(held["response"].is_null());
    assert_eq!(held["error"]["code"], "batch_cancelled");
    assert_eq!(
        file_content(&fake, cancelled["output_file_id"].as_str().unwrap()).await[0]["custom_id"],
        "ok-1"
    );

    // An exp- item: the batch expires, the item goes to the error file.
    let lines = [chat_line("ok-1", None), chat_line("exp-1", None)].join("\n");
    let (_, file) = upload(&fake, "in.jsonl", "batch", &lines).await;
    let (_, created) = create_openai_batch(
        &fake,
        &[("x-fake-batch-ms", "40")],
        json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}),
    )
    .await;
    let path = format!("/v1/batches/{}", created["id"].as_str().unwrap());
    let (_, expired) = poll_until(&fake, &path, OPENAI, "status", "expired").await;
    assert_eq!(expired["status"], "expired");
    assert!(expired["expired_at"].is_u64());
    let errors = file_content(&fake, expired["error_file_id"].as_str().unwrap()).await;
    assert_eq!(
        by_custom_id(&errors, "exp-1")["error"]["code"],
        "batch_expired"
    );

    // A malformed input file: the batch is created, then fails validating.
    let bad = [
        chat_line("a", None),
        "{not json".to_owned(),
        chat_line("a", None),
        json!({"custom_id": "b", "method": "POST", "url": "/v1/embeddings", "body": {}})
            .to_string(),
        json!({"custom_id": "c", "method": "POST", "url": "/v1/chat/completions"}).to_string(),
    ]
    .join("\n");
    let (_, file) = upload(&fake, "bad.jsonl", "batch", &bad).await;
    let (status, created) = create_openai_batch(
        &fake,
        &[("x-fake-batch-ms", "400")],
        json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}),
    )
    .await;
    assert_eq!(
        (status, created["status"].as_str()),
        (200, Some("validating"))
    );
    let path = format!("/v1/batches/{}", created["id"].as_str().unwrap());
    let (seen, failed) = poll_until(&fake, &path, OPENAI, "status", "failed").await;
    assert_eq!(seen, ["validating", "failed"]);
    assert!(failed["failed_at"].is_u64() && failed["in_progress_at"].is_null());
    assert_eq!(failed["errors"]["object"], "list");
    let codes: Vec<(u64, &str)> = failed["errors"]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["line"].as_u64().unwrap(), e["code"].as_str().unwrap()))
        .collect();
    assert_eq!(
        codes,
        [
            (2, "invalid_json_line"),
            (3, "duplicate_custom_id"),
            (4, "url_mismatch"),
            (5, "missing_required_parameter"),
        ]
    );
    assert_eq!(failed["request_counts"]["total"], 0);
    assert!(failed["output_file_id"].is_null() && failed["error_file_id"].is_null());
}

// ---------------------------------------------------------------------------
// batches through the official SDKs (tests/sdk/*_batches.py)

const SDK_ANTHROPIC_KEY: &str = "sk-ant-batch-sdk-test";
const SDK_OPENAI_KEY: &str = "sk-openai-batch-sdk-test";

fn result_of<'a>(results: &'a [Value], custom_id: &str) -> &'a Value {
    results
        .iter()
        .find(|r| r["custom_id"] == custom_id)
        .unwrap_or_else(|| panic!("no result for {custom_id}: {results:?}"))
}

#[tokio::test]
async fn anthropic_sdk_drives_message_batches() {
    let python = sdk_python("anthropic-current").await;
    let fake = FakeProvider::start().await;
    let plan = json!([
        {"name": "A", "op": "create", "headers": {"x-fake-batch-ms": "300"}, "requests": [
            {"custom_id": "ok-1", "usage": "input=100,output=20,cache_write=10,cache_read=30"},
            {"custom_id": "ok-2"},
            {"custom_id": "err-1"},
            {"custom_id": "exp-1"},
        ]},
        {"name": "early", "op": "results", "batch": "A"},
        {"name": "A-ended", "op": "wait", "batch": "A"},
        {"name": "A-results", "op": "results", "batch": "A"},
        {"name": "B", "op": "create",
         "headers": {"x-fake-batch-ms": "20", "x-fake-batch-cancel-ms": "200"},
         "requests": [{"custom_id": "ok-1"}, {"custom_id": "hold-1"}]},
        {"name": "B-cancel", "op": "cancel", "batch": "B"},
        {"name": "B-ended", "op": "wait", "batch": "B"},
        {"name": "B-results", "op": "results", "batch": "B"},
        {"name": "list", "op": "list", "limit": 1},
        {"name": "A-delete", "op": "delete", "batch": "A"},
        {"name": "A-gone", "op": "retrieve", "batch": "A"},
    ]);
    let base = fake.base_url();
    let run = run_script(
        &python,
        "anthropic_batches.py",
        &[
            ("ANTHROPIC_BASE_URL", &base),
            ("ANTHROPIC_API_KEY", SDK_ANTHROPIC_KEY),
        ],
        &plan,
    )
    .await;

    let created = &run.ok("A")["batch"];
    let a = created["id"].as_str().unwrap();
    assert_eq!(created["processing_status"], "in_progress");
    assert!(created["results_url"].is_null());
    // The SDK refuses results before the batch ended (no results_url yet).
    let early = run.get("early");
    assert_eq!(early["ok"], false);
    assert_eq!(early["exception"], "AnthropicError", "{early}");
    let ended = run.ok("A-ended");
    assert_eq!(ended["seen"], json!(["in_progress", "ended"]));
    assert_eq!(
        ended["batch"]["results_url"],
        format!("{base}/v1/messages/batches/{a}/results")
    );
    assert_eq!(
        ended["batch"]["request_counts"],
        json!({"processing": 0, "succeeded": 2, "errored": 1, "canceled": 0, "expired": 1})
    );

    let results = run.ok("A-results")["results"].as_array().unwrap().clone();
    assert_eq!(results.len(), 4);
    let ok1 = &result_of(&results, "ok-1")["result"];
    assert_eq!(ok1["type"], "succeeded");
    let usage = &ok1["message"]["usage"];
    assert_eq!(
        (
            &usage["input_tokens"],
            &usage["output_tokens"],
            &usage["cache_creation_input_tokens"],
            &usage["cache_read_input_tokens"],
            &usage["service_tier"],
        ),
        (
            &json!(100),
            &json!(20),
            &json!(10),
            &json!(30),
            &json!("batch")
        )
    );
    assert_eq!(
        result_of(&results, "ok-2")["result"]["message"]["usage"]["input_tokens"],
        11
    );
    let errored = &result_of(&results, "err-1")["result"];
    assert_eq!(errored["type"], "errored");
    assert_eq!(errored["error"]["type"], "error");
    assert_eq!(errored["error"]["error"]["type"], "invalid_request_error");
    assert_eq!(result_of(&results, "exp-1")["result"]["type"], "expired");

    let b = run.ok("B")["batch"]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        run.ok("B-cancel")["batch"]["processing_status"],
        "canceling"
    );
    let b_ended = run.ok("B-ended");
    assert_eq!(b_ended["seen"], json!(["canceling", "ended"]));
    assert_eq!(b_ended["batch"]["request_counts"]["canceled"], 1);
    let b_results = run.ok("B-results")["results"].as_array().unwrap().clone();
    assert_eq!(
        result_of(&b_results, "hold-1")["result"]["type"],
        "canceled"
    );
    assert_eq!(result_of(&b_results, "ok-1")["result"]["type"], "succeeded");

    let list = run.ok("list");
    assert_eq!(list["first_page"]["ids"], json!([b]));
    assert_eq!(list["first_page"]["has_more"], true);
    assert_eq!(list["ids"], json!([b, a]), "auto-pagination with after_id");
    assert_eq!(
        run.ok("A-delete")["deleted"],
        json!({"id": a, "type": "message_batch_deleted"})
    );
    let gone = run.get("A-gone");
    assert_eq!(
        (gone["exception"].as_str(), gone["status_code"].as_u64()),
        (Some("NotFoundError"), Some(404))
    );

    // Ground truth agrees with what the SDK read, item by item.
    let truth = fake.batches();
    let items = &truth["anthropic"][&b]["items"];
    assert_eq!(items["hold-1"]["outcome"], "canceled");
    // (The SDK's dump adds the fields its model declares, e.g. `speed`.)
    let read = &result_of(&b_results, "ok-1")["result"]["message"]["usage"];
    for field in [
        "input_tokens",
        "output_tokens",
        "cache_read_input_tokens",
        "service_tier",
    ] {
        assert_eq!(
            items["ok-1"]["reported_usage"][field], read[field],
            "{field}"
        );
    }
    assert!(truth["anthropic"].get(a).is_none(), "deleted");

    // The SDK followed the absolute results_url to the fake, with its key.
    let seen = fake.requests();
    let fetched: Vec<&Recorded> = seen
        .iter()
        .filter(|r| r.path.ends_with("/results"))
        .collect();
    assert_eq!(fetched.len(), 2);
    assert_eq!(fetched[0].path, format!("/v1/messages/batches/{a}/results"));
    assert_eq!(fetched[0].header("accept"), Some("application/binary"));
    for r in &seen {
        let credential = r
            .header("x-api-key")
            .or_else(|| r.header("authorization"))
            .unwrap_or_default();
        assert!(
            credential.contains(SDK_ANTHROPIC_KEY),
            "{} {}: {credential:?}",
            r.method,
            r.path
        );
        assert!(r.usage.is_none());
    }
}

fn openai_line(custom_id: &str, url: &str, body: Value) -> String {
    json!({"custom_id": custom_id, "method": "POST", "url": url, "body": body}).to_string()
}

/// Runs `tests/sdk/openai_batches.py` with `plan` against the fake.
async fn run_openai_batches(
    python: &std::path::Path,
    fake: &FakeProvider,
    plan: &Value,
) -> support::sdk::SdkRun {
    let base = fake.openai_base_url();
    run_script(
        python,
        "openai_batches.py",
        &[
            ("OPENAI_BASE_URL", &base),
            ("OPENAI_API_KEY", SDK_OPENAI_KEY),
        ],
        plan,
    )
    .await
}

#[tokio::test]
async fn openai_sdk_drives_files_and_batches() {
    let python = sdk_python("openai").await;
    let fake = FakeProvider::start().await;
    let chat = |id: &str, user: Option<&str>| {
        let mut body =
            json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]});
        if let Some(user) = user {
            body["user"] = json!(user);
        }
        openai_line(id, "/v1/chat/completions", body)
    };
    let slow = json!({"x-fake-batch-ms": "400"});
    let plan = json!([
        {"name": "F1", "op": "upload", "lines": [
            chat("ok-1", Some("x-fake-usage:input=100,output=20,cache_read=30")),
            chat("ok-2", None),
            chat("err-1", None),
        ]},
        {"name": "B1", "op": "create", "file": "F1", "headers": slow, "metadata": {"job": "nightly"}},
        {"name": "B1-done", "op": "wait", "batch": "B1"},
        {"name": "B1-out", "op": "content", "batch": "B1", "which": "output_file_id"},
        {"name": "B1-err", "op": "content", "batch": "B1", "which": "error_file_id"},
        {"name": "F2", "op": "upload", "lines": [chat("ok-1", None), chat("hold-1", None)]},
        {"name": "B2", "op": "create", "file": "F2",
         "headers": {"x-fake-batch-ms": "20", "x-fake-batch-cancel-ms": "200"}},
        {"name": "B2-cancel", "op": "cancel", "batch": "B2"},
        {"name": "B2-done", "op": "wait", "batch": "B2"},
        {"name": "B2-err", "op": "content", "batch": "B2", "which": "error_file_id"},
        {"name": "F3", "op": "upload", "lines": [
            chat("a", None),
            "{not json".to_owned(),
            openai_line("b", "/v1/embeddings", json!({"model": "text-embedding-3-small", "input": "x"})),
        ]},
        {"name": "B3", "op": "create", "file": "F3", "headers": slow},
        {"name": "B3-done", "op": "wait", "batch": "B3"},
        {"name": "F4", "op": "upload", "lines": [
            openai_line("e-1", "/v1/embeddings", json!({"model": "text-embedding-3-small", "input": ["a", "b"], "user": "x-fake-usage:input=8"})),
        ]},
        {"name": "B4", "op": "create", "file": "F4", "endpoint": "/v1/embeddings"},
        {"name": "B4-done", "op": "wait", "batch": "B4"},
        {"name": "B4-out", "op": "content", "batch": "B4", "which": "output_file_id"},
        {"name": "F5", "op": "upload", "lines": [
            openai_line("r-1", "/v1/responses", json!({"model": "gpt-4o-mini", "input": "Hi", "user": "x-fake-usage:input=40,output=9"})),
        ]},
        {"name": "B5", "op": "create", "file": "F5", "endpoint": "/v1/responses"},
        {"name": "B5-done", "op": "wait", "batch": "B5"},
        {"name": "B5-out", "op": "content", "batch": "B5", "which": "output_file_id"},
        {"name": "list", "op": "list", "limit": 2},
        {"name": "F1-get", "op": "file", "file": "F1"},
        {"name": "F1-delete", "op": "delete_file", "file": "F1"},
        {"name": "F1-gone", "op": "file", "file": "F1"},
    ]);
    let run = run_openai_batches(&python, &fake, &plan).await;

    let f1 = run.ok("F1")["file"].clone();
    assert_eq!(
        (f1["object"].as_str(), f1["purpose"].as_str()),
        (Some("file"), Some("batch"))
    );
    let b1 = run.ok("B1")["batch"].clone();
    assert_eq!(b1["status"], "validating");
    assert_eq!(b1["input_file_id"], f1["id"]);
    assert_eq!(b1["metadata"], json!({"job": "nightly"}));
    let done = run.ok("B1-done");
    let seen: Vec<&str> = done["seen"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    let order = ["validating", "in_progress", "finalizing", "completed"];
    assert!(
        seen.windows(2)
            .all(|w| order.iter().position(|s| *s == w[0]) < order.iter().position(|s| *s == w[1])),
        "{seen:?}"
    );
    assert_eq!(seen.last(), Some(&"completed"));
    assert_eq!(
        done["batch"]["request_counts"],
        json!({"total": 3, "completed": 2, "failed": 1})
    );
    assert_eq!(done["batch"]["usage"]["input_tokens"], 141);
    let out = run.ok("B1-out")["lines"].as_array().unwrap().clone();
    let ok1 = result_of(&out, "ok-1");
    assert_eq!(ok1["response"]["status_code"], 200);
    let usage = &ok1["response"]["body"]["usage"];
    assert_eq!(
        (&usage["prompt_tokens"], &usage["completion_tokens"]),
        (&json!(130), &json!(20))
    );
    assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 30);
    let err = run.ok("B1-err")["lines"].as_array().unwrap().clone();
    assert_eq!(result_of(&err, "err-1")["response"]["status_code"], 400);

    assert_eq!(run.ok("B2-cancel")["batch"]["status"], "cancelling");
    let b2 = run.ok("B2-done");
    assert_eq!(b2["seen"], json!(["cancelling", "cancelled"]));
    assert_eq!(
        b2["batch"]["request_counts"],
        json!({"total": 2, "completed": 1, "failed": 1})
    );
    let b2_err = run.ok("B2-err")["lines"].as_array().unwrap().clone();
    assert_eq!(
        result_of(&b2_err, "hold-1")["error"]["code"],
        "batch_cancelled"
    );

    let b3 = &run.ok("B3-done")["batch"];
    assert_eq!(b3["status"], "failed");
    let codes: Vec<&str> = b3["errors"]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["invalid_json_line", "url_mismatch"]);

    assert_eq!(run.ok("B4-done")["batch"]["status"], "completed");
    let e1 = &run.ok("B4-out")["lines"][0];
    assert_eq!(e1["response"]["body"]["object"], "list");
    assert_eq!(e1["response"]["body"]["data"].as_array().unwrap().len(), 2);
    assert_eq!(
        e1["response"]["body"]["usage"],
        json!({"prompt_tokens": 8, "total_tokens": 8})
    );
    let r1 = &run.ok("B5-out")["lines"][0]["response"]["body"];
    assert_eq!(r1["object"], "response");
    assert_eq!(
        (&r1["usage"]["input_tokens"], &r1["usage"]["output_tokens"]),
        (&json!(40), &json!(9))
    );

    let list = run.ok("list");
    assert_eq!(list["first_page"]["ids"].as_array().unwrap().len(), 2);
    assert_eq!(list["first_page"]["has_more"], true);
    assert_eq!(
        list["ids"].as_array().unwrap().len(),
        5,
        "auto-pagination with after"
    );
    assert_eq!(run.ok("F1-get")["file"]["id"], f1["id"]);
    assert_eq!(run.ok("F1-delete")["deleted"]["deleted"], true);
    assert_eq!(run.get("F1-gone")["status_code"], 404);

    // Ground truth: per batch and custom_id, the usage each item reported.
    let truth = fake.batches();
    let b1_id = b1["id"].as_str().unwrap();
    assert_eq!(
        truth["openai"][b1_id]["items"]["ok-1"]["reported_usage"],
        *usage
    );
    assert_eq!(
        truth["openai"][b1_id]["items"]["err-1"]["outcome"],
        "errored"
    );
    let seen = fake.requests();
    assert!(seen
        .iter()
        .any(|r| r.path == "/v1/files" && r.method == "POST"));
    for r in &seen {
        assert_eq!(
            r.header("authorization"),
            Some(format!("Bearer {SDK_OPENAI_KEY}").as_str()),
            "{} {}",
            r.method,
            r.path
        );
    }
}

/// The fake's OpenAI batch files, as the official SDK uploads them and as
/// the fake writes the results, read by tollgate's own wire layer
/// (`tollgate::dialect::openai::batch`): the items of the recorded
/// multipart upload, and per `custom_id` the outcome and usage of the
/// output and error files, equal to the fake's ground truth.
#[tokio::test]
async fn openai_batch_files_read_by_the_dialect_layer() {
    use tollgate::dialect::openai::batch::{
        parse_batch, parse_results, parse_upload, BatchEndpoint, BatchStatus, InputLimits,
        ItemOutcome,
    };

    let python = sdk_python("openai").await;
    let fake = FakeProvider::start().await;
    let chat = |id: &str, extra: Value| {
        let mut body =
            json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        openai_line(id, "/v1/chat/completions", body)
    };
    let plan = json!([
        {"name": "F1", "op": "upload", "lines": [
            chat("ok-1", json!({"user": "x-fake-usage:input=100,output=20,cache_read=30", "max_tokens": 50})),
            chat("ok-2", json!({"max_completion_tokens": 7, "n": 2})),
            chat("err-1", json!({})),
        ]},
        {"name": "B1", "op": "create", "file": "F1"},
        {"name": "B1-done", "op": "wait", "batch": "B1"},
        {"name": "F2", "op": "upload", "lines": [chat("ok-1", json!({})), chat("hold-1", json!({}))]},
        {"name": "B2", "op": "create", "file": "F2",
         "headers": {"x-fake-batch-ms": "20", "x-fake-batch-cancel-ms": "100"}},
        {"name": "B2-cancel", "op": "cancel", "batch": "B2"},
        {"name": "B2-done", "op": "wait", "batch": "B2"},
        {"name": "F4", "op": "upload", "lines": [
            openai_line("e-1", "/v1/embeddings", json!({"model": "text-embedding-3-small", "input": ["a", "b"], "user": "x-fake-usage:input=8"})),
        ]},
        {"name": "B4", "op": "create", "file": "F4", "endpoint": "/v1/embeddings"},
        {"name": "B4-done", "op": "wait", "batch": "B4"},
        {"name": "F5", "op": "upload", "lines": [
            openai_line("r-1", "/v1/responses", json!({"model": "gpt-4o-mini", "input": "Hi", "max_output_tokens": 64, "user": "x-fake-usage:input=40,output=9,cache_read=4"})),
        ]},
        {"name": "B5", "op": "create", "file": "F5", "endpoint": "/v1/responses"},
        {"name": "B5-done", "op": "wait", "batch": "B5"},
    ]);
    let run = run_openai_batches(&python, &fake, &plan).await;

    // The uploads exactly as the SDK sent them.
    let uploads: Vec<Recorded> = fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path == "/v1/files")
        .collect();
    assert_eq!(uploads.len(), 4);
    let read = |r: &Recorded| {
        parse_upload(
            r.header("content-type").unwrap(),
            Bytes::from(r.body.clone()),
            InputLimits::default(),
        )
        .unwrap()
    };
    let f1 = read(&uploads[0]);
    assert_eq!(f1.purpose, "batch");
    let input = f1.input.unwrap();
    assert_eq!(input.endpoint, BatchEndpoint::ChatCompletions);
    let items: Vec<_> = input
        .items
        .iter()
        .map(|i| {
            (
                i.custom_id.as_str(),
                i.model.as_str(),
                i.output_bound(4096),
                i.choices,
            )
        })
        .collect();
    assert_eq!(
        items,
        [
            ("ok-1", "gpt-4o-mini", 50, 1),
            ("ok-2", "gpt-4o-mini", 7, 2),
            ("err-1", "gpt-4o-mini", 4096, 1)
        ]
    );
    let f5 = read(&uploads[3]).input.unwrap();
    assert_eq!(
        (f5.endpoint, f5.items[0].max_tokens),
        (BatchEndpoint::Responses, Some(64))
    );

    // Each batch as the API answers it, and its files as the fake wrote them.
    let base = fake.openai_base_url();
    let client = client();
    let get = |path: String| {
        let request = client
            .get(format!("{base}{path}"))
            .bearer_auth(SDK_OPENAI_KEY);
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200, "{path}");
            response.bytes().await.unwrap()
        }
    };
    let truth = fake.batches();
    let mut settled = 0;
    for (name, endpoint, want_status) in [
        ("B1", BatchEndpoint::ChatCompletions, BatchStatus::Completed),
        ("B2", BatchEndpoint::ChatCompletions, BatchStatus::Cancelled),
        ("B4", BatchEndpoint::Embeddings, BatchStatus::Completed),
        ("B5", BatchEndpoint::Responses, BatchStatus::Completed),
    ] {
        let id = run.ok(name)["batch"]["id"].as_str().unwrap().to_owned();
        let batch = parse_batch(&get(format!("/batches/{id}")).await).unwrap();
        assert_eq!(
            (batch.status, batch.endpoint_kind()),
            (want_status, Some(endpoint))
        );
        assert!(batch.status.is_terminal());
        for file in [&batch.output_file_id, &batch.error_file_id]
            .into_iter()
            .flatten()
        {
            let data = get(format!("/files/{file}/content")).await;
            for result in parse_results(endpoint, &data, 1 << 20) {
                let result = result.unwrap();
                let want = &truth["openai"][&id]["items"][&result.custom_id];
                let outcome = match result.outcome {
                    ItemOutcome::Succeeded => "succeeded",
                    ItemOutcome::Errored => "errored",
                    ItemOutcome::Cancelled => "canceled",
                    ItemOutcome::Expired => "expired",
                };
                assert_eq!(outcome, want["outcome"], "{name} {}", result.custom_id);
                // An item that did not run, or was refused, names no model:
                // its reservation does.
                if result.outcome == ItemOutcome::Succeeded {
                    assert_eq!(result.model.as_deref(), want["model"].as_str());
                }
                match result.usage {
                    Some(u) => assert_eq!(
                        json!({
                            "input_tokens": u.input_tokens,
                            "output_tokens": u.output_tokens,
                            "cache_creation_input_tokens": u.cache_creation_input_tokens,
                            "cache_creation_1h_input_tokens": u.cache_creation_1h_input_tokens,
                            "cache_read_input_tokens": u.cache_read_input_tokens,
                        }),
                        want["usage"],
                        "{name} {}",
                        result.custom_id
                    ),
                    None => assert!(want["usage"].is_null()),
                }
                settled += 1;
            }
        }
    }
    // B1: ok-1, ok-2, err-1; B2: ok-1, hold-1; B4: e-1; B5: r-1.
    assert_eq!(settled, 7);
    let b1 = run.ok("B1")["batch"]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        truth["openai"][&b1]["items"]["ok-1"]["usage"]["cache_read_input_tokens"],
        30
    );
}

#[tokio::test]
async fn message_batch_results_url_over_tls_is_https() {
    let (fake, cert) = FakeProvider::start_tls().await;
    let client = reqwest::Client::builder()
        .no_proxy()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.as_bytes()).unwrap())
        .build()
        .unwrap();
    let base = format!("https://localhost:{}", fake.addr.port());
    let created: Value = client
        .post(format!("{base}/v1/messages/batches"))
        .header("x-api-key", "sk-ant-test")
        .header("x-fake-batch-ms", "10")
        .json(&json!({"requests": [message_item("ok-1", None)]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let response = client
        .get(format!("{base}/v1/messages/batches/{id}"))
        .header("x-api-key", "sk-ant-test")
        .send()
        .await
        .unwrap();
    // h2 carries the authority in :authority, not in a Host header.
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    let ended: Value = response.json().await.unwrap();
    let url = format!("{base}/v1/messages/batches/{id}/results");
    assert_eq!(ended["results_url"], url);
    let lines = jsonl(
        &client
            .get(&url)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    );
    assert_eq!(lines[0]["result"]["type"], "succeeded");
}
