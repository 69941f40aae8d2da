//! The translated answers of the golden fixtures (tests/fixtures/translate)
//! read by the official Python SDKs, at the versions pinned in
//! `tests/sdk/requirements-*.txt`: a tiny local server answers each call
//! with the expected output file the call names (JSON, SSE or an error
//! body with its status), and `tests/sdk/translate_calls.py` reads it with
//! `messages.create` / `messages.stream(...).get_final_message()` or
//! `chat.completions.create` / `chat.completions.stream(...)
//! .get_final_completion()`. The SDK's final message must hold what the
//! fixture says: text, tool calls (name, input / arguments), stop reason,
//! usage; errors must raise the SDK's own exception class for the status.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};
use support::sdk::{run_script, sdk_python, SdkRun};
use tollgate::dialect::sse::SseParser;
use tollgate::dialect::{Assembler, Dialect};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/translate")
}

/// Answers with the fixture named by `x-test-file`, with `x-test-status`.
async fn serve(request: Request) -> Response {
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let file = header("x-test-file");
    let status: u16 = header("x-test-status").parse().unwrap_or(200);
    // Fixture names only: no way out of the fixtures directory.
    assert!(!file.contains(".."), "{file}");
    let body = std::fs::read(fixtures().join(&file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    let content_type = if file.ends_with(".sse") {
        "text/event-stream; charset=utf-8"
    } else {
        "application/json"
    };
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    let headers = response.headers_mut();
    headers.insert("content-type", HeaderValue::from_static(content_type));
    headers.insert("request-id", HeaderValue::from_static("req_translate_test"));
    headers.insert(
        "x-request-id",
        HeaderValue::from_static("req_translate_test"),
    );
    headers.insert("x-should-retry", HeaderValue::from_static("false"));
    response
}

async fn start_server() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(serve);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

fn read_json(file: &str) -> Value {
    serde_json::from_slice(&std::fs::read(fixtures().join(file)).unwrap()).unwrap()
}

/// The complete message a fixture stream folds into (the crate's own
/// assembler, which follows the SDKs' accumulators).
fn assembled(client: Dialect, file: &str) -> Value {
    let body = std::fs::read(fixtures().join(file)).unwrap();
    let mut assembler = Assembler::new(client, 1 << 20);
    let mut parser = SseParser::new();
    parser.feed(&body, |ev| assembler.on_event(ev.name, ev.data));
    serde_json::from_slice(&assembler.finish().expect("a complete stream")).unwrap()
}

/// Every field of `want` is in `got` with the same value (`got` may have
/// more: the SDKs dump every declared field, null when absent).
fn assert_within(want: &Value, got: &Value, at: &str) {
    match (want, got) {
        (Value::Object(want), Value::Object(got)) => {
            for (key, value) in want {
                let child = got.get(key).unwrap_or(&Value::Null);
                assert_within(value, child, &format!("{at}.{key}"));
            }
        }
        (Value::Array(want), Value::Array(got)) => {
            assert_eq!(want.len(), got.len(), "{at}: {got:?}");
            for (i, (w, g)) in want.iter().zip(got).enumerate() {
                assert_within(w, g, &format!("{at}[{i}]"));
            }
        }
        _ => assert_eq!(want, got, "{at}"),
    }
}

/// The SDK read `expected` as the final message of call `name`.
fn assert_read(run: &SdkRun, name: &str, expected: &Value) {
    let message = &run.ok(name)["message"];
    assert_within(expected, message, &format!("{} {name}", run.sdk));
}

/// What an Anthropic client must see from a translated message: the
/// fields the SDK models (translated thinking blocks have an empty signature).
fn anthropic_view(message: &Value) -> Value {
    let mut message = message.clone();
    if let Some(obj) = message.as_object_mut() {
        obj.remove("stop_sequence");
    }
    message
}

#[tokio::test(flavor = "multi_thread")]
async fn anthropic_sdk_reads_translated_openai_answers() {
    let base = start_server().await;
    let python = sdk_python("anthropic-current").await;
    let mut calls = Vec::new();
    let streams = [
        "anthropic-client-text",
        "anthropic-client-tools",
        "anthropic-client-interleaved-tools",
        "anthropic-client-thinking",
        "anthropic-client-stop-content-filter",
        "anthropic-client-cache-usage",
    ];
    let responses = [
        "anthropic-client-text",
        "anthropic-client-tools",
        "anthropic-client-thinking",
        "anthropic-client-stop-length",
        "anthropic-client-stop-content-filter",
        "anthropic-client-cache-usage",
    ];
    for case in streams {
        calls.push(json!({"name": format!("stream {case}"), "op": "stream", "file": format!("{case}/stream.out.sse")}));
    }
    for case in responses {
        calls.push(json!({"name": format!("create {case}"), "op": "create", "file": format!("{case}/response.out.json")}));
    }
    let errors = [
        ("error-401", 401_u64, "AuthenticationError"),
        ("error-402", 402, "PaymentRequiredError"),
        ("error-429", 429, "RateLimitError"),
        ("error-500", 500, "InternalServerError"),
    ];
    for (file, status, _) in errors {
        calls.push(json!({"name": file, "op": "create", "status": status,
            "file": format!("anthropic-client-error/{file}.out.json")}));
    }
    for case in [
        "anthropic-client-midstream-error",
        "anthropic-client-truncated",
    ] {
        calls.push(json!({"name": case, "op": "stream", "file": format!("{case}/stream.out.sse")}));
    }
    let run = run_script(
        &python,
        "translate_calls.py",
        &[("ANTHROPIC_BASE_URL", &base)],
        &json!({"sdk": "anthropic", "calls": calls}),
    )
    .await;

    for case in streams {
        let file = format!("{case}/stream.out.sse");
        assert_read(
            &run,
            &format!("stream {case}"),
            &anthropic_view(&assembled(Dialect::Anthropic, &file)),
        );
    }
    for case in responses {
        let want = anthropic_view(&read_json(&format!("{case}/response.out.json")));
        assert_read(&run, &format!("create {case}"), &want);
    }
    // Spot checks in the SDK's own terms.
    let tools = &run.ok("stream anthropic-client-tools")["message"];
    assert_eq!(
        tools["content"][1]["input"],
        json!({"location": "Lyon", "unit": "c"})
    );
    assert_eq!(tools["stop_reason"], "tool_use");
    let two = &run.ok("stream anthropic-client-interleaved-tools")["message"];
    assert_eq!(two["content"][1]["input"], json!({"tz": "Europe/Paris"}));
    let cached = &run.ok("create anthropic-client-cache-usage")["message"]["usage"];
    assert_eq!(
        (
            &cached["input_tokens"],
            &cached["cache_read_input_tokens"],
            &cached["cache_creation_input_tokens"]
        ),
        (&json!(30), &json!(1920), &json!(150))
    );
    let streamed = &run.ok("stream anthropic-client-cache-usage")["message"]["usage"];
    assert_eq!(
        streamed["input_tokens"], 30,
        "message_delta's input counts reach the SDK"
    );
    assert_eq!(streamed["cache_read_input_tokens"], 1920);

    for (file, status, class) in errors {
        let r = run.get(file);
        assert_eq!(
            (r["ok"].as_bool(), r["class"].as_str(), r["status"].as_u64()),
            (Some(false), Some(class), Some(status)),
            "{r:#}"
        );
        assert_eq!(
            r["body"],
            read_json(&format!("anthropic-client-error/{file}.out.json")),
            "{r:#}"
        );
    }
    let mid = run.get("anthropic-client-midstream-error");
    assert_eq!(mid["ok"], false, "{mid:#}");
    assert_eq!(mid["body"]["error"]["type"], "rate_limit_error", "{mid:#}");
    let cut = run.get("anthropic-client-truncated");
    assert_eq!(cut["ok"], false, "{cut:#}");
    assert_eq!(cut["body"]["error"]["type"], "api_error", "{cut:#}");
}

#[tokio::test(flavor = "multi_thread")]
async fn openai_sdk_reads_translated_anthropic_answers() {
    let base = format!("{}/v1", start_server().await);
    let python = sdk_python("openai").await;
    let streams = [
        "openai-client-text",
        "openai-client-tools",
        "openai-client-thinking",
        "openai-client-cache-usage",
        "openai-client-no-usage",
    ];
    let responses = [
        "openai-client-text",
        "openai-client-tools",
        "openai-client-thinking",
        "openai-client-stop-sequence",
        "openai-client-stop-max-tokens",
        "openai-client-stop-refusal",
        "openai-client-cache-usage",
    ];
    let mut calls = Vec::new();
    for case in streams {
        calls.push(json!({"name": format!("stream {case}"), "op": "stream", "file": format!("{case}/stream.out.sse")}));
    }
    for case in responses {
        calls.push(json!({"name": format!("create {case}"), "op": "create", "file": format!("{case}/response.out.json")}));
    }
    let errors = [
        ("error-400", 400_u64, "BadRequestError"),
        ("error-429", 429, "RateLimitError"),
        ("error-529", 529, "InternalServerError"),
    ];
    for (file, status, _) in errors {
        calls.push(json!({"name": file, "op": "create", "status": status,
            "file": format!("openai-client-error/{file}.out.json")}));
    }
    // The stream helper refuses a length-truncated answer itself.
    for case in [
        "openai-client-midstream-error",
        "openai-client-truncated",
        "openai-client-stop-max-tokens",
    ] {
        calls.push(json!({"name": case, "op": "stream", "file": format!("{case}/stream.out.sse")}));
    }
    let run = run_script(
        &python,
        "translate_calls.py",
        &[("OPENAI_BASE_URL", &base)],
        &json!({"sdk": "openai", "calls": calls}),
    )
    .await;

    for case in streams {
        let want = assembled(Dialect::OpenAi, &format!("{case}/stream.out.sse"));
        assert_read(&run, &format!("stream {case}"), &want);
    }
    for case in responses {
        assert_read(
            &run,
            &format!("create {case}"),
            &read_json(&format!("{case}/response.out.json")),
        );
    }
    let tools = &run.ok("stream openai-client-tools")["message"]["choices"][0];
    assert_eq!(tools["finish_reason"], "tool_calls");
    let call = &tools["message"]["tool_calls"][0]["function"];
    assert_eq!(call["name"], "get_weather");
    let arguments: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(arguments, json!({"location": "Nice", "unit": "f"}));
    let usage = &run.ok("stream openai-client-cache-usage")["message"]["usage"];
    assert_eq!(
        (
            &usage["prompt_tokens"],
            &usage["prompt_tokens_details"]["cached_tokens"]
        ),
        (&json!(2100), &json!(1920))
    );

    for (file, status, class) in errors {
        let r = run.get(file);
        assert_eq!(
            (r["ok"].as_bool(), r["class"].as_str(), r["status"].as_u64()),
            (Some(false), Some(class), Some(status)),
            "{r:#}"
        );
        let want = read_json(&format!("openai-client-error/{file}.out.json"));
        assert_eq!(r["body"], want["error"], "{r:#}");
    }
    let mid = run.get("openai-client-midstream-error");
    assert_eq!(
        (mid["ok"].as_bool(), mid["class"].as_str()),
        (Some(false), Some("APIError")),
        "{mid:#}"
    );
    assert_eq!(mid["message"], "Overloaded", "{mid:#}");
    let cut = run.get("openai-client-truncated");
    assert_eq!(cut["ok"], false, "{cut:#}");
    let length = run.get("openai-client-stop-max-tokens");
    assert_eq!(length["class"], "LengthFinishReasonError", "{length:#}");
}
