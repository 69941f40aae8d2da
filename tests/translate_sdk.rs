//! The translated answers of the golden fixtures (tests/fixtures/translate)
//! read by the official Python SDKs, at the versions pinned in
//! `tests/sdk/requirements-*.txt` (anthropic 2.x and the legacy 0.x, openai
//! 3.x): a tiny local server answers each call
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
    let (parts, body) = request.into_parts();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let file = header("x-test-file");
    let status: u16 = header("x-test-status").parse().unwrap_or(200);
    // Read the request to its end: hyper closes a connection whose request
    // body was left unread, and the SDK may already be reusing it.
    let _ = axum::body::to_bytes(body, 1 << 20).await;
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

/// What one SDK is asked to read, and what must happen.
struct Plan {
    client: Dialect,
    /// Cases whose `stream.out.sse` the SDK's stream helper must read whole.
    streams: &'static [&'static str],
    /// Cases whose `response.out.json` the SDK's `create` must read.
    responses: &'static [&'static str],
    /// `<case>/error-<status>.out.json`, the status, the SDK's exception class.
    errors: &'static [(&'static str, u64, &'static str)],
    /// Cases whose stream the SDK must raise on.
    failing: &'static [&'static str],
    /// The legacy Anthropic SDK reads only `output_tokens` from
    /// `message_delta`: its streamed input counts stay at `message_start`'s
    /// zeros (the module doc of `dialect::translate` says so), and it has no
    /// thinking-token breakdown.
    input_usage_from_start_only: bool,
}

/// Runs `plan` with the SDK of `venv` against a server of the fixtures,
/// checks what every plan says, and returns the run for spot checks.
async fn run_plan(plan: &Plan, venv: &'static str) -> SdkRun {
    let origin = start_server().await;
    let python = sdk_python(venv).await;
    let (sdk, env) = match plan.client {
        Dialect::Anthropic => ("anthropic", ("ANTHROPIC_BASE_URL", origin)),
        Dialect::OpenAi => ("openai", ("OPENAI_BASE_URL", format!("{origin}/v1"))),
    };
    let call = |name: String, op: &str, file: String, status: u64| json!({"name": name, "op": op, "file": file, "status": status});
    let mut calls = Vec::new();
    for case in plan.streams {
        calls.push(call(
            format!("stream {case}"),
            "stream",
            format!("{case}/stream.out.sse"),
            200,
        ));
    }
    for case in plan.responses {
        calls.push(call(
            format!("create {case}"),
            "create",
            format!("{case}/response.out.json"),
            200,
        ));
    }
    for (file, status, _) in plan.errors {
        calls.push(call(
            file.to_string(),
            "create",
            format!("{file}.out.json"),
            *status,
        ));
    }
    for case in plan.failing {
        calls.push(call(
            case.to_string(),
            "stream",
            format!("{case}/stream.out.sse"),
            200,
        ));
    }
    let run = run_script(
        &python,
        "translate_calls.py",
        &[(env.0, &env.1)],
        &json!({"sdk": sdk, "calls": calls}),
    )
    .await;

    for case in plan.streams {
        let mut want = assembled(plan.client, &format!("{case}/stream.out.sse"));
        if plan.input_usage_from_start_only {
            for key in [
                "input_tokens",
                "cache_creation_input_tokens",
                "cache_read_input_tokens",
            ] {
                want["usage"][key] = json!(0);
            }
            if let Some(usage) = want["usage"].as_object_mut() {
                usage.remove("output_tokens_details");
            }
        }
        assert_read(&run, &format!("stream {case}"), &want);
    }
    for case in plan.responses {
        let want = read_json(&format!("{case}/response.out.json"));
        assert_read(&run, &format!("create {case}"), &want);
    }
    for (file, status, class) in plan.errors {
        let r = run.get(file);
        assert_eq!(
            (r["ok"].as_bool(), r["class"].as_str(), r["status"].as_u64()),
            (Some(false), Some(*class), Some(*status)),
            "{r:#}"
        );
        let body = read_json(&format!("{file}.out.json"));
        // The OpenAI SDK keeps the `error` object as the exception's body.
        let want = match plan.client {
            Dialect::Anthropic => &body,
            Dialect::OpenAi => &body["error"],
        };
        assert_eq!(&r["body"], want, "{r:#}");
    }
    for case in plan.failing {
        assert_eq!(run.get(case)["ok"], false, "{case}: {:#}", run.get(case));
    }
    run
}

/// The Anthropic-client cases every Anthropic SDK must read whole.
const ANTHROPIC_CLIENT_STREAMS: &[&str] = &[
    "anthropic-client-text",
    "anthropic-client-tools",
    "anthropic-client-interleaved-tools",
    "anthropic-client-thinking",
    "anthropic-client-stop-content-filter",
    "anthropic-client-cache-usage",
];
const ANTHROPIC_CLIENT_RESPONSES: &[&str] = &[
    "anthropic-client-text",
    "anthropic-client-tools",
    "anthropic-client-thinking",
    "anthropic-client-stop-length",
    "anthropic-client-stop-content-filter",
    "anthropic-client-cache-usage",
];

#[tokio::test(flavor = "multi_thread")]
async fn anthropic_sdk_reads_translated_openai_answers() {
    let plan = Plan {
        client: Dialect::Anthropic,
        streams: ANTHROPIC_CLIENT_STREAMS,
        responses: ANTHROPIC_CLIENT_RESPONSES,
        errors: &[
            (
                "anthropic-client-error/error-401",
                401,
                "AuthenticationError",
            ),
            (
                "anthropic-client-error/error-402",
                402,
                "PaymentRequiredError",
            ),
            ("anthropic-client-error/error-429", 429, "RateLimitError"),
            (
                "anthropic-client-error/error-500",
                500,
                "InternalServerError",
            ),
        ],
        failing: &[
            "anthropic-client-midstream-error",
            "anthropic-client-truncated",
        ],
        input_usage_from_start_only: false,
    };
    let run = run_plan(&plan, "anthropic-current").await;

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
    let mid = run.get("anthropic-client-midstream-error");
    assert_eq!(mid["body"]["error"]["type"], "rate_limit_error", "{mid:#}");
    let cut = run.get("anthropic-client-truncated");
    assert_eq!(cut["body"]["error"]["type"], "api_error", "{cut:#}");
}

#[tokio::test(flavor = "multi_thread")]
async fn openai_sdk_reads_translated_anthropic_answers() {
    let plan = Plan {
        client: Dialect::OpenAi,
        streams: &[
            "openai-client-text",
            "openai-client-tools",
            "openai-client-thinking",
            "openai-client-cache-usage",
            "openai-client-no-usage",
        ],
        responses: &[
            "openai-client-text",
            "openai-client-tools",
            "openai-client-thinking",
            "openai-client-stop-sequence",
            "openai-client-stop-max-tokens",
            "openai-client-stop-refusal",
            "openai-client-cache-usage",
        ],
        errors: &[
            ("openai-client-error/error-400", 400, "BadRequestError"),
            ("openai-client-error/error-429", 429, "RateLimitError"),
            ("openai-client-error/error-529", 529, "InternalServerError"),
        ],
        // The stream helper refuses a length-truncated answer itself.
        failing: &[
            "openai-client-midstream-error",
            "openai-client-truncated",
            "openai-client-stop-max-tokens",
        ],
        input_usage_from_start_only: false,
    };
    let run = run_plan(&plan, "openai").await;

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
    let mid = run.get("openai-client-midstream-error");
    assert_eq!(
        (mid["class"].as_str(), mid["message"].as_str()),
        (Some("APIError"), Some("Overloaded")),
        "{mid:#}"
    );
    let length = run.get("openai-client-stop-max-tokens");
    assert_eq!(length["class"], "LengthFinishReasonError", "{length:#}");
}

/// The legacy Anthropic SDK (0.x, `x-api-key`) reads the same answers; only
/// a stream's input counts differ (they come in `message_delta`, which it
/// reads `output_tokens` from).
#[tokio::test(flavor = "multi_thread")]
async fn legacy_anthropic_sdk_reads_translated_openai_answers() {
    let plan = Plan {
        client: Dialect::Anthropic,
        streams: ANTHROPIC_CLIENT_STREAMS,
        responses: ANTHROPIC_CLIENT_RESPONSES,
        errors: &[
            ("anthropic-client-error/error-402", 402, "APIStatusError"),
            ("anthropic-client-error/error-429", 429, "RateLimitError"),
        ],
        failing: &[
            "anthropic-client-midstream-error",
            "anthropic-client-truncated",
        ],
        input_usage_from_start_only: true,
    };
    let run = run_plan(&plan, "anthropic-legacy").await;
    let streamed = &run.ok("stream anthropic-client-cache-usage")["message"]["usage"];
    assert_eq!(
        (&streamed["input_tokens"], &streamed["output_tokens"]),
        (&json!(0), &json!(9))
    );
}
