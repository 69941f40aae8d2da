//! Real client SDKs through the real `tollgate` binary, in base-URL mode, in
//! front of the in-repo fake provider: the official `anthropic` (a current
//! 2.x that sends `Authorization: Bearer`, and a legacy 0.x that sends
//! `x-api-key`) and `openai` Python SDKs, and `curl`.
//!
//! Each SDK set lives in its own virtual environment (`support::sdk`). The Python scripts in `tests/sdk/` take a
//! plan of calls on stdin, make them with the SDK, and print what the SDK
//! observed as JSON; the tests compare that with what the fake provider saw
//! and with the usage events tollgate recorded.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::ErrorKind;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use support::fake_provider::{FakeProvider, Recorded};
use support::sdk::{run_script, sdk_python, SCRIPT_TIMEOUT};
use support::tollgate::{Builder, Tollgate};

/// Keys tollgate injects (set in the tollgate process's environment).
const ANTHROPIC_KEY: &str = "sk-ant-injected-SDKTEST-4b9e1d";
const OPENAI_KEY: &str = "sk-openai-injected-SDKTEST-c07f3a";
const OPENROUTER_KEY: &str = "sk-or-v1-injected-SDKTEST-82d6";
/// The key the client application (the SDK) holds; it must never reach the provider.
const CLIENT_KEY: &str = "sk-client-app-key-SDKTEST-never-upstream";

// ---------------------------------------------------------------------------
// Shared checks

fn with_keys(b: Builder) -> Builder {
    b.env("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
        .env("OPENAI_API_KEY", OPENAI_KEY)
        .env("OPENROUTER_API_KEY", OPENROUTER_KEY)
}

/// No key (injected or the client's), nor its tail, in tollgate's debug log.
pub fn assert_no_keys_in_log(t: &Tollgate) {
    let log = t.log();
    assert!(!log.is_empty(), "the debug log is empty");
    for key in [ANTHROPIC_KEY, OPENAI_KEY, OPENROUTER_KEY, CLIENT_KEY] {
        assert!(!log.contains(key), "key {key} leaked into the log");
        assert!(
            !log.contains(&key[key.len() - 10..]),
            "part of key {key} leaked into the log"
        );
    }
}

/// The requests the fake saw for the call named `name` (header `x-test-call`).
fn seen_for<'a>(seen: &'a [Recorded], name: &str) -> Vec<&'a Recorded> {
    seen.iter()
        .filter(|r| r.header("x-test-call") == Some(name))
        .collect()
}

/// Exactly one request for `name`.
fn one_seen<'a>(seen: &'a [Recorded], name: &str) -> &'a Recorded {
    let found = seen_for(seen, name);
    assert_eq!(found.len(), 1, "requests for {name}: {found:?}");
    found[0]
}

/// Neither the client's key nor tollgate's own headers went upstream.
fn assert_clean_upstream(r: &Recorded) {
    for (name, value) in &r.headers {
        assert!(
            !value.contains(CLIENT_KEY),
            "{} {}: the client's key reached the provider in {name}",
            r.method,
            r.path
        );
        assert!(!name.starts_with("x-tollgate-"), "{name} went upstream");
    }
    assert!(!String::from_utf8_lossy(&r.body).contains(CLIENT_KEY));
}

/// A response header the SDK saw (`""` when absent).
fn hdr<'a>(result: &'a Value, name: &str) -> &'a str {
    result["headers"][name].as_str().unwrap_or("")
}

/// The usage event with this id (from `x-tollgate-request-id`).
fn event<'a>(events: &'a [Value], id: &str) -> &'a Value {
    assert!(!id.is_empty(), "no x-tollgate-request-id");
    events
        .iter()
        .find(|e| e["event_id"] == id)
        .unwrap_or_else(|| panic!("no event {id} in {events:#?}"))
}

/// The cost of claude-sonnet-4-5 usage, by hand from providers.md §7:
/// nano-USD per token input 3000, 5m write 3750, 1h write 6000, read 300,
/// output 15000.
fn sonnet_45_nusd(input: u64, w5: u64, w1h: u64, read: u64, output: u64) -> u64 {
    input * 3000 + w5 * 3750 + w1h * 6000 + read * 300 + output * 15000
}

/// gpt-4o: $2.50 input, $1.25 cached input, $10 output per MTok, in nano-USD
/// per token; `uncached` excludes the cached part of prompt_tokens.
fn gpt_4o_nusd(uncached: u64, cached: u64, output: u64) -> u64 {
    uncached * 2500 + cached * 1250 + output * 10_000
}

/// Token counts of an event against (input, 5m+1h write, 1h write, read, output).
fn assert_event_tokens(e: &Value, t: (u64, u64, u64, u64, u64), cost: u64) {
    assert_eq!(e["input_tokens"], t.0, "{e:#}");
    assert_eq!(e["cache_creation_input_tokens"], t.1, "{e:#}");
    assert_eq!(e["cache_creation_1h_input_tokens"], t.2, "{e:#}");
    assert_eq!(e["cache_read_input_tokens"], t.3, "{e:#}");
    assert_eq!(e["output_tokens"], t.4, "{e:#}");
    assert_eq!(e["cost_nusd"], cost, "{e:#}");
}

/// The SDK's Anthropic `usage` equals what the fake reported.
fn assert_sdk_usage_is_reported(usage: &Value, r: &Recorded, what: &str) {
    let u = r.usage.expect("the fake reported usage");
    assert_eq!(usage["input_tokens"], u.input_tokens, "{what}: {usage}");
    assert_eq!(usage["output_tokens"], u.output_tokens, "{what}: {usage}");
    assert_eq!(
        usage["cache_creation_input_tokens"], u.cache_creation_input_tokens,
        "{what}: {usage}"
    );
    assert_eq!(
        usage["cache_read_input_tokens"], u.cache_read_input_tokens,
        "{what}: {usage}"
    );
}

/// An upstream that refuses connections (the discard port, closed here).
const DEAD_UPSTREAM: &str = "http://127.0.0.1:9";

/// A call failed with tollgate's own error: `status`, header
/// `x-tollgate-error: kind`, the dialect's error `type`, and the SDK raised
/// the exception class the plan named (`raises`).
fn assert_tollgate_error(res: &Value, status: u16, kind: &str, error_type: &str) {
    assert_eq!(res["ok"], false, "{res:#}");
    assert_eq!(res["status_code"], status, "{res:#}");
    assert_eq!(
        res["raised_expected"], true,
        "the SDK raised {} instead: {res:#}",
        res["exception"]
    );
    assert_eq!(hdr(res, "x-tollgate-error"), kind, "{res:#}");
    // Anthropic SDKs keep the whole envelope as `body`, OpenAI's its `error` object.
    let body = &res["body"];
    let error = if body["error"].is_object() {
        &body["error"]
    } else {
        body
    };
    assert_eq!(error["type"], error_type, "{res:#}");
    assert!(!hdr(res, "x-tollgate-request-id").is_empty());
}

// ---------------------------------------------------------------------------
// Checks shared by base-URL and HTTPS_PROXY mode: each takes what the SDK
// returned for a plan item using the matching usage below.

const ANTHROPIC_CREATE_USAGE: &str =
    "input=1000,output=500,cache_write=200,cache_write_1h=50,cache_read=300";
const ANTHROPIC_STREAM_USAGE: &str = "input=40,output=12,cache_write=8,cache_read=4";
const OPENAI_CREATE_USAGE: &str = "input=100,output=50,cache_read=20";
const OPENAI_STREAM_USAGE: &str = "input=30,output=7,cache_read=10";

/// `messages.create` (non-stream) with `ANTHROPIC_CREATE_USAGE`.
fn check_anthropic_create(who: &str, res: &Value, r: &Recorded, events: &[Value]) {
    assert_eq!(r.path, "/v1/messages");
    let msg = &res["message"];
    assert_eq!(msg["content"][0]["type"], "text");
    assert_eq!(msg["content"][0]["text"], "Hello there!");
    assert_eq!(msg["stop_reason"], "end_turn");
    assert_sdk_usage_is_reported(&msg["usage"], r, "create");
    let cost = sonnet_45_nusd(1000, 150, 50, 300, 500);
    assert_eq!(cost, 11_452_500);
    assert_eq!(hdr(res, "x-tollgate-cost-usd"), "0.0114525", "{who}");
    assert_eq!(hdr(res, "x-tollgate-provider"), "anthropic");
    assert!(hdr(res, "x-tollgate-model").starts_with("claude-sonnet-4-5"));
    assert!(!hdr(res, "x-tollgate-cache").is_empty());
    assert!(hdr(res, "request-id").starts_with("req_"));
    let e = event(events, hdr(res, "x-tollgate-request-id"));
    assert_eq!(e["status"], "ok");
    assert_eq!(e["route"], "sync");
    assert_event_tokens(e, (1000, 200, 50, 300, 500), cost);
}

/// `messages.create(stream=True)`, iterated, with `ANTHROPIC_STREAM_USAGE`.
fn check_anthropic_create_stream(who: &str, res: &Value, r: &Recorded, events: &[Value]) {
    assert_eq!(r.json()["stream"], true);
    let kinds: Vec<&str> = res["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"message_start"), "{who}: {kinds:?}");
    assert_eq!(kinds.last(), Some(&"message_stop"), "{who}: {kinds:?}");
    assert_eq!(res["text"], "Hello there!");
    assert_eq!(res["stop_reason"], "end_turn");
    assert_sdk_usage_is_reported(&res["usage"], r, "create_stream");
    assert_eq!(
        hdr(res, "x-tollgate-cost-usd"),
        "",
        "a stream's cost is in its receipt"
    );
    assert_eq!(hdr(res, "x-tollgate-provider"), "anthropic");
    assert!(hdr(res, "content-type").starts_with("text/event-stream"));
    let e = event(events, hdr(res, "x-tollgate-request-id"));
    assert_eq!(e["status"], "ok");
    assert_eq!(e["route"], "stream");
    assert_event_tokens(e, (40, 8, 0, 4, 12), sonnet_45_nusd(40, 8, 0, 4, 12));
}

/// `chat.completions.create` (non-stream) with `OPENAI_CREATE_USAGE`.
fn check_openai_create(who: &str, res: &Value, events: &[Value]) {
    let c = &res["completion"];
    assert_eq!(c["choices"][0]["message"]["content"], "Hello there!");
    assert_eq!(c["choices"][0]["finish_reason"], "stop");
    assert_eq!(c["usage"]["prompt_tokens"], 120);
    assert_eq!(c["usage"]["prompt_tokens_details"]["cached_tokens"], 20);
    assert_eq!(c["usage"]["completion_tokens"], 50);
    let cost = gpt_4o_nusd(100, 20, 50);
    assert_eq!(cost, 775_000);
    assert_eq!(hdr(res, "x-tollgate-cost-usd"), "0.000775", "{who}");
    assert_eq!(hdr(res, "x-tollgate-provider"), "openai");
    assert!(hdr(res, "x-tollgate-model").starts_with("gpt-4o"));
    assert!(hdr(res, "x-request-id").starts_with("req_"));
    let e = event(events, hdr(res, "x-tollgate-request-id"));
    assert_eq!(e["status"], "ok");
    assert_eq!(e["route"], "sync");
    assert_event_tokens(e, (100, 0, 0, 20, 50), cost);
}

/// A stream without `stream_options`, with `OPENAI_STREAM_USAGE`: tollgate
/// asks for usage upstream but the SDK must not see the usage chunk (every
/// chunk has choices).
fn check_openai_stream_no_usage(who: &str, res: &Value, r: &Recorded, events: &[Value]) {
    assert_eq!(r.json()["stream_options"]["include_usage"], true);
    let chunks = res["chunks"].as_array().unwrap();
    assert!(chunks.len() >= 3);
    for chunk in chunks {
        assert!(
            !chunk["choices"].as_array().unwrap().is_empty(),
            "{who}: a chunk without choices reached the SDK: {chunk}"
        );
        assert!(
            chunk["usage"].is_null(),
            "{who}: usage reached the SDK: {chunk}"
        );
    }
    assert_eq!(res["text"], "Hello there!");
    assert_eq!(res["finish_reason"], "stop");
    assert_eq!(hdr(res, "x-tollgate-cost-usd"), "");
    let e = event(events, hdr(res, "x-tollgate-request-id"));
    assert_eq!(e["route"], "stream");
    assert_event_tokens(e, (30, 0, 0, 10, 7), gpt_4o_nusd(30, 10, 7));
}

// ---------------------------------------------------------------------------
// Anthropic

struct AnthropicSdk {
    venv: &'static str,
    /// The header the SDK puts `ANTHROPIC_API_KEY` in, and its value.
    auth_header: &'static str,
    auth_value: String,
    /// The `anthropic-version` the SDK sends.
    version_header: &'static str,
    /// The path `client.beta.messages.create` posts to: 0.x adds `?beta=true`,
    /// 2.x does not (it keeps the qualifier for batches only).
    beta_path: &'static str,
}

async fn anthropic_sdk_end_to_end(sdk: AnthropicSdk) {
    let python = sdk_python(sdk.venv).await;
    let fake = FakeProvider::start().await;
    let t = with_keys(Builder::new(&fake.base_url()).no_cache()).start();
    // No provider key: the client's credential passes, showing which header the SDK uses.
    let bare = Builder::new(&fake.base_url()).no_cache().start();
    // tollgate's own errors: a small body limit and an upstream that refuses connections.
    let broken = with_keys(
        Builder::new(DEAD_UPSTREAM)
            .no_cache()
            .top("max_body_bytes = 1500"),
    )
    .start();
    let plan = json!([
        {"name": "create", "op": "create", "usage": ANTHROPIC_CREATE_USAGE},
        {"name": "create_stream", "op": "create_stream", "usage": ANTHROPIC_STREAM_USAGE},
        {"name": "stream_tool_use", "op": "stream_helper", "scenario": "tool_use",
         "usage": "input=120,output=30,cache_write=60,cache_write_1h=20,cache_read=500"},
        {"name": "stream_thinking", "op": "stream_helper", "scenario": "thinking",
         "usage": "input=64,output=48,cache_read=16"},
        {"name": "count_tokens", "op": "count_tokens", "usage": "input=21,cache_read=4"},
        {"name": "beta_create", "op": "beta_create", "usage": "input=10,output=5",
         "betas": ["token-efficient-tools-2025-02-19", "interleaved-thinking-2025-05-14"]},
        {"name": "rate_limited", "op": "create", "scenario": "error-429",
         "retry_after": 1, "max_retries": 1},
        {"name": "bad_request", "op": "create", "scenario": "error-400"},
        {"name": "midstream_error", "op": "create_stream", "scenario": "midstream-error",
         "usage": "input=50,output=3"},
        {"name": "models", "op": "models"},
        {"name": "passthrough", "op": "create", "base_url": bare.url()},
        {"name": "too_large", "op": "create", "prompt": "x".repeat(4000),
         "base_url": broken.url(), "raises": "RequestTooLargeError"},
        {"name": "unreachable", "op": "create", "base_url": broken.url(),
         "raises": "InternalServerError"},
    ]);
    let url = t.url();
    let run = run_script(
        &python,
        "anthropic_calls.py",
        &[
            ("ANTHROPIC_API_KEY", CLIENT_KEY),
            ("ANTHROPIC_BASE_URL", &url),
        ],
        &plan,
    )
    .await;
    let who = format!("{} {}", run.sdk, run.version);
    println!(
        "{who}: {:?}",
        run.results
            .iter()
            .map(|r| (&r["name"], &r["seconds"]))
            .collect::<Vec<_>>()
    );
    let seen = fake.requests();
    let events = t.wait_events(10).await;

    // Credentials: which header this SDK uses (on the instance without a key)...
    let r = one_seen(&seen, "passthrough");
    run.ok("passthrough");
    assert_eq!(
        r.header(sdk.auth_header),
        Some(sdk.auth_value.as_str()),
        "{who} should send its key in {}: {:?}",
        sdk.auth_header,
        r.headers
    );
    let other = if sdk.auth_header == "x-api-key" {
        "authorization"
    } else {
        "x-api-key"
    };
    assert_eq!(r.header(other), None, "{who} also sent {other}");
    // ...and that with a key configured only tollgate's reaches the provider.
    for r in seen
        .iter()
        .filter(|r| r.header("x-test-call") != Some("passthrough"))
    {
        assert_eq!(
            r.header("x-api-key"),
            Some(ANTHROPIC_KEY),
            "{who} {}",
            r.path
        );
        assert_eq!(r.header("authorization"), None, "{who} {}", r.path);
        assert_eq!(r.header("anthropic-version"), Some(sdk.version_header));
        assert_clean_upstream(r);
    }

    // messages.create, non-stream; messages.create(stream=True), iterated.
    check_anthropic_create(&who, run.ok("create"), one_seen(&seen, "create"), &events);
    check_anthropic_create_stream(
        &who,
        run.ok("create_stream"),
        one_seen(&seen, "create_stream"),
        &events,
    );

    // messages.stream(...) + get_final_message(): tool use.
    let res = run.ok("stream_tool_use");
    let r = one_seen(&seen, "stream_tool_use");
    let msg = &res["message"];
    assert_eq!(msg["stop_reason"], "tool_use", "{msg:#}");
    let content = msg["content"].as_array().unwrap();
    assert_eq!(content.len(), 2, "{msg:#}");
    assert_eq!(content[0]["type"], "text");
    assert_eq!(content[0]["text"], "Let me check the weather.");
    assert_eq!(content[1]["type"], "tool_use");
    assert_eq!(content[1]["name"], "get_weather");
    assert!(content[1]["id"].as_str().unwrap().starts_with("toolu_"));
    assert_eq!(content[1]["input"], json!({"location": "Paris"}));
    assert_eq!(res["text"], "Let me check the weather.");
    assert_sdk_usage_is_reported(&msg["usage"], r, "stream_tool_use");
    let e = event(&events, hdr(res, "x-tollgate-request-id"));
    assert_eq!(e["status"], "ok");
    assert_event_tokens(
        e,
        (120, 60, 20, 500, 30),
        sonnet_45_nusd(120, 40, 20, 500, 30),
    );

    // messages.stream(...) + get_final_message(): extended thinking.
    let res = run.ok("stream_thinking");
    let r = one_seen(&seen, "stream_thinking");
    assert_eq!(r.json()["thinking"]["type"], "enabled");
    let msg = &res["message"];
    assert_eq!(msg["stop_reason"], "end_turn");
    let content = msg["content"].as_array().unwrap();
    assert_eq!(content.len(), 2, "{msg:#}");
    assert_eq!(content[0]["type"], "thinking");
    assert_eq!(
        content[0]["thinking"],
        "The user greets me. A short, friendly answer fits."
    );
    assert!(!content[0]["signature"].as_str().unwrap().is_empty());
    assert_eq!(content[1]["type"], "text");
    assert_eq!(content[1]["text"], "Hello there!");
    assert_sdk_usage_is_reported(&msg["usage"], r, "stream_thinking");
    let e = event(&events, hdr(res, "x-tollgate-request-id"));
    assert_event_tokens(e, (64, 0, 0, 16, 48), sonnet_45_nusd(64, 0, 0, 16, 48));

    // count_tokens: forwarded, answered, never billed.
    let res = run.ok("count_tokens");
    let r = one_seen(&seen, "count_tokens");
    assert_eq!(r.path, "/v1/messages/count_tokens");
    assert_eq!(res["message"]["input_tokens"], 25);
    assert_eq!(hdr(res, "x-tollgate-provider"), "anthropic");
    let count_event = event(&events, hdr(res, "x-tollgate-request-id")).clone();
    assert_eq!(count_event["status"], "ok");
    assert_eq!(count_event["cost_nusd"], 0, "count_tokens is free");
    assert_eq!(count_event["output_tokens"], 0);

    // client.beta.messages.create: the query (`?beta=true`, legacy SDK) and
    // the `anthropic-beta` header are kept upstream.
    let res = run.ok("beta_create");
    let r = one_seen(&seen, "beta_create");
    assert_eq!(r.path, sdk.beta_path, "{who}");
    assert_eq!(
        r.header("anthropic-beta"),
        Some("token-efficient-tools-2025-02-19,interleaved-thinking-2025-05-14")
    );
    assert_eq!(res["message"]["content"][0]["text"], "Hello there!");
    assert_eq!(hdr(res, "x-tollgate-cost-usd"), "0.000105");
    let e = event(&events, hdr(res, "x-tollgate-request-id"));
    assert_event_tokens(e, (10, 0, 0, 0, 5), sonnet_45_nusd(10, 0, 0, 0, 5));

    // A provider 429: retried once after retry-after, then RateLimitError.
    let res = run.get("rate_limited");
    assert_eq!(res["ok"], false, "{res:#}");
    assert_eq!(res["exception"], "RateLimitError", "{res:#}");
    assert_eq!(res["status_code"], 429);
    assert_eq!(res["body"]["error"]["type"], "rate_limit_error");
    let tries = seen_for(&seen, "rate_limited");
    assert_eq!(tries.len(), 2, "one try and one retry: {tries:?}");
    assert_eq!(tries[1].header("x-stainless-retry-count"), Some("1"));
    assert!(
        res["seconds"].as_f64().unwrap() >= 0.9,
        "the SDK waited retry-after (1 s) before retrying: {res:#}"
    );
    assert_eq!(hdr(res, "retry-after"), "1");
    let e = event(&events, hdr(res, "x-tollgate-request-id"));
    assert_eq!(e["status"], "provider_error");
    assert_eq!(e["http_status"], 429);
    assert_eq!(e["cost_nusd"], 0);

    // A provider 400: BadRequestError with the provider's message.
    let res = run.get("bad_request");
    assert_eq!(res["exception"], "BadRequestError", "{res:#}");
    assert_eq!(res["status_code"], 400);
    assert!(
        res["error_message"]
            .as_str()
            .unwrap()
            .contains("fake provider: forced bad request"),
        "{res:#}"
    );
    assert_eq!(res["body"]["error"]["type"], "invalid_request_error");
    assert_eq!(
        seen_for(&seen, "bad_request").len(),
        1,
        "a 400 is not retried"
    );
    let e = event(&events, hdr(res, "x-tollgate-request-id"));
    assert_eq!(e["status"], "provider_error");
    assert_eq!(e["http_status"], 400);

    // An `error` event mid-stream (HTTP 200): the SDK raises, tollgate records it.
    let res = run.get("midstream_error");
    assert_eq!(res["ok"], false, "{res:#}");
    assert!(
        res["error_message"]
            .as_str()
            .unwrap()
            .contains("Overloaded"),
        "{res:#}"
    );
    assert_eq!(seen_for(&seen, "midstream_error").len(), 1, "not retried");
    let e = event(&events, hdr(res, "x-tollgate-request-id"));
    assert_eq!(e["status"], "provider_error");
    assert_eq!(e["error"], "overloaded_error");

    // An unmetered path (GET /v1/models) is forwarded with the key injected.
    let res = run.ok("models");
    let r = one_seen(&seen, "models");
    assert_eq!((r.method.as_str(), r.path.as_str()), ("GET", "/v1/models"));
    assert!(
        res["ids"]
            .as_array()
            .unwrap()
            .contains(&json!("claude-sonnet-4-5-20250929")),
        "{res:#}"
    );

    // tollgate's own errors reach the SDK as its usual exceptions.
    assert_tollgate_error(
        run.get("too_large"),
        413,
        "body_too_large",
        "request_too_large",
    );
    assert_tollgate_error(
        run.get("unreachable"),
        502,
        "upstream_unreachable",
        "api_error",
    );
    let broken_events = broken.wait_events(2).await;
    for (name, kind) in [
        ("too_large", "body_too_large"),
        ("unreachable", "upstream_unreachable"),
    ] {
        let e = event(&broken_events, hdr(run.get(name), "x-tollgate-request-id"));
        assert_eq!(e["status"], "proxy_error", "{e:#}");
        assert_eq!(e["error"], kind, "{e:#}");
        assert_eq!(e["cost_nusd"], 0);
    }

    assert!(!serde_json::to_string(&events).unwrap().contains("SDKTEST"));
    assert_no_keys_in_log(&t);
    assert_no_keys_in_log(&bare);
    assert_no_keys_in_log(&broken);

    // Last, so that it cannot hide the checks above: a count_tokens answer
    // has no usage object by design (`{"input_tokens": N}`); the call is free
    // and tollgate says so (`x-tollgate-cost-usd: 0.00`), so its usage is
    // complete, not unknown.
    assert_eq!(
        count_event["usage_incomplete"], false,
        "{who}: the count_tokens event is flagged usage_incomplete although \
         the call is free and fully known (and its cost header says 0.00): {count_event:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_current_sdk_end_to_end() {
    anthropic_sdk_end_to_end(AnthropicSdk {
        venv: "anthropic-current",
        auth_header: "authorization",
        auth_value: format!("Bearer {CLIENT_KEY}"),
        version_header: "2026-10-21",
        beta_path: "/v1/messages",
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_legacy_sdk_end_to_end() {
    anthropic_sdk_end_to_end(AnthropicSdk {
        venv: "anthropic-legacy",
        auth_header: "x-api-key",
        auth_value: CLIENT_KEY.to_string(),
        version_header: "2023-06-01",
        beta_path: "/v1/messages?beta=true",
    })
    .await;
}

// ---------------------------------------------------------------------------
// OpenAI and OpenRouter

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_sdk_end_to_end() {
    let python = sdk_python("openai").await;
    let fake = FakeProvider::start().await;
    let t = with_keys(Builder::new(&fake.base_url()).no_cache()).start();
    let broken = with_keys(
        Builder::new(DEAD_UPSTREAM)
            .no_cache()
            .top("max_body_bytes = 1500"),
    )
    .start();
    let broken_base = format!("{}/v1", broken.url());
    let openrouter = format!("{}/openrouter/v1", t.url());
    let or_model = "anthropic/claude-sonnet-4.5";
    let plan = json!([
        {"name": "create", "op": "create", "usage": OPENAI_CREATE_USAGE},
        {"name": "stream_no_usage", "op": "create_stream", "usage": OPENAI_STREAM_USAGE},
        {"name": "stream_usage", "op": "create_stream", "include_usage": true,
         "usage": "input=30,output=7,cache_read=10"},
        {"name": "stream_usage_false", "op": "create_stream", "include_usage": false,
         "usage": "input=30,output=7,cache_read=10"},
        {"name": "stream_tool_calls", "op": "stream_helper", "scenario": "tool_use",
         "usage": "input=50,output=20"},
        {"name": "openrouter", "op": "create", "scenario": "openrouter", "model": or_model,
         "base_url": openrouter, "usage": "input=100,output=50"},
        {"name": "openrouter_stream", "op": "create_stream", "scenario": "openrouter",
         "model": or_model, "base_url": openrouter, "usage": "input=80,output=9"},
        {"name": "rate_limited", "op": "create", "scenario": "error-429",
         "retry_after": 1, "max_retries": 1},
        {"name": "bad_request", "op": "create", "scenario": "error-400"},
        {"name": "models", "op": "models"},
        {"name": "unknown_route", "op": "create", "base_url": format!("{}/nosuch/v1", t.url()),
         "raises": "NotFoundError"},
        {"name": "too_large", "op": "create", "prompt": "x".repeat(4000),
         "base_url": broken_base, "raises": "APIStatusError"},
        {"name": "unreachable", "op": "create", "base_url": broken_base,
         "raises": "InternalServerError"},
    ]);
    let base = format!("{}/v1", t.url());
    let run = run_script(
        &python,
        "openai_calls.py",
        &[("OPENAI_API_KEY", CLIENT_KEY), ("OPENAI_BASE_URL", &base)],
        &plan,
    )
    .await;
    let who = format!("{} {}", run.sdk, run.version);
    println!(
        "{who}: {:?}",
        run.results
            .iter()
            .map(|r| (&r["name"], &r["seconds"]))
            .collect::<Vec<_>>()
    );
    let seen = fake.requests();
    let events = t.wait_events(10).await;

    for r in &seen {
        let expected = if r.scenario == "openrouter" {
            assert_eq!(r.path, "/api/v1/chat/completions");
            format!("Bearer {OPENROUTER_KEY}")
        } else {
            if r.method == "POST" {
                assert_eq!(r.path, "/v1/chat/completions");
            }
            format!("Bearer {OPENAI_KEY}")
        };
        assert_eq!(r.header("authorization"), Some(expected.as_str()), "{who}");
        assert_eq!(r.header("x-api-key"), None);
        assert_clean_upstream(r);
    }

    // Non-stream; a stream without stream_options.
    check_openai_create(&who, run.ok("create"), &events);
    check_openai_stream_no_usage(
        &who,
        run.ok("stream_no_usage"),
        one_seen(&seen, "stream_no_usage"),
        &events,
    );

    // Stream with include_usage: the last chunk carries the usage.
    let res = run.ok("stream_usage");
    let chunks = res["chunks"].as_array().unwrap();
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]), "{last}");
    assert_eq!(last["usage"]["prompt_tokens"], 40);
    assert_eq!(last["usage"]["completion_tokens"], 7);
    assert_eq!(last["usage"]["prompt_tokens_details"]["cached_tokens"], 10);
    for chunk in &chunks[..chunks.len() - 1] {
        assert!(!chunk["choices"].as_array().unwrap().is_empty(), "{chunk}");
    }
    assert_eq!(res["text"], "Hello there!");
    let e = event(&events, hdr(res, "x-tollgate-request-id"));
    assert_event_tokens(e, (30, 0, 0, 10, 7), gpt_4o_nusd(30, 10, 7));

    // Tool calls through chat.completions.stream(...) / get_final_completion().
    let res = run.ok("stream_tool_calls");
    let c = &res["completion"];
    let choice = &c["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{c:#}");
    assert_eq!(choice["message"]["content"], "Let me check the weather.");
    let call = &choice["message"]["tool_calls"][0];
    assert!(call["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(call["function"]["name"], "get_weather");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"location": "Paris"}));
    let e = event(&events, hdr(res, "x-tollgate-request-id"));
    assert_eq!(e["status"], "ok");
    assert_event_tokens(e, (50, 0, 0, 0, 20), gpt_4o_nusd(50, 0, 20));

    // OpenRouter by prefix: its own key, its reported cost.
    let res = run.ok("openrouter");
    let r = one_seen(&seen, "openrouter");
    assert_eq!(
        res["completion"]["choices"][0]["message"]["content"],
        "Hello there!"
    );
    assert_eq!(hdr(res, "x-tollgate-provider"), "openrouter");
    let reported = r.reported_cost.unwrap();
    let e = event(&events, hdr(res, "x-tollgate-request-id"));
    assert_eq!(e["cost_nusd"], (reported * 1e9).round() as u64, "{e:#}");
    assert_eq!(e["output_tokens"], 50);
    let res = run.ok("openrouter_stream");
    let r = one_seen(&seen, "openrouter_stream");
    assert_eq!(res["text"], "Hello there!");
    assert_eq!(hdr(res, "x-tollgate-provider"), "openrouter");
    let e = event(&events, hdr(res, "x-tollgate-request-id"));
    assert_eq!(e["status"], "ok");
    assert_eq!(e["output_tokens"], 9);
    assert_eq!(
        e["cost_nusd"],
        (r.reported_cost.unwrap() * 1e9).round() as u64,
        "{e:#}"
    );

    // A provider 429: retried once after retry-after, then RateLimitError.
    let res = run.get("rate_limited");
    assert_eq!(res["exception"], "RateLimitError", "{res:#}");
    assert_eq!(res["status_code"], 429);
    let tries = seen_for(&seen, "rate_limited");
    assert_eq!(tries.len(), 2, "one try and one retry: {tries:?}");
    assert_eq!(tries[1].header("x-stainless-retry-count"), Some("1"));
    assert!(res["seconds"].as_f64().unwrap() >= 0.9, "{res:#}");
    let e = event(&events, hdr(res, "x-tollgate-request-id"));
    assert_eq!(e["status"], "provider_error");
    assert_eq!(e["http_status"], 429);

    // A provider 400: BadRequestError with the provider's message.
    let res = run.get("bad_request");
    assert_eq!(res["exception"], "BadRequestError", "{res:#}");
    assert_eq!(res["status_code"], 400);
    assert!(
        res["error_message"]
            .as_str()
            .unwrap()
            .contains("fake provider: forced bad request"),
        "{res:#}"
    );
    let e = event(&events, hdr(res, "x-tollgate-request-id"));
    assert_eq!(e["status"], "provider_error");
    assert_eq!(e["http_status"], 400);

    // stream_options.include_usage = false, said explicitly: the same as unset.
    let res = run.ok("stream_usage_false");
    let r = one_seen(&seen, "stream_usage_false");
    assert_eq!(r.json()["stream_options"]["include_usage"], true);
    for chunk in res["chunks"].as_array().unwrap() {
        assert!(
            !chunk["choices"].as_array().unwrap().is_empty() && chunk["usage"].is_null(),
            "{who}: the usage chunk reached an SDK that declined it: {chunk}"
        );
    }
    let e = event(&events, hdr(res, "x-tollgate-request-id"));
    assert_event_tokens(e, (30, 0, 0, 10, 7), gpt_4o_nusd(30, 10, 7));

    // An unmetered path (GET /v1/models) is forwarded with the key injected.
    let res = run.ok("models");
    let r = one_seen(&seen, "models");
    assert_eq!((r.method.as_str(), r.path.as_str()), ("GET", "/v1/models"));
    assert!(
        res["ids"]
            .as_array()
            .unwrap()
            .contains(&json!("gpt-4o-2024-08-06")),
        "{res:#}"
    );

    // tollgate's own errors reach the SDK as its usual exceptions.
    let res = run.get("unknown_route");
    assert_tollgate_error(res, 404, "unknown_route", "invalid_request_error");
    assert!(
        res["error_message"]
            .as_str()
            .unwrap()
            .contains("no route for POST /nosuch/v1/chat/completions"),
        "{res:#}"
    );
    assert_tollgate_error(
        run.get("too_large"),
        413,
        "body_too_large",
        "invalid_request_error",
    );
    assert_tollgate_error(
        run.get("unreachable"),
        502,
        "upstream_unreachable",
        "server_error",
    );
    let broken_events = broken.wait_events(2).await;
    for (name, kind) in [
        ("too_large", "body_too_large"),
        ("unreachable", "upstream_unreachable"),
    ] {
        let e = event(&broken_events, hdr(run.get(name), "x-tollgate-request-id"));
        assert_eq!(e["status"], "proxy_error", "{e:#}");
        assert_eq!(e["error"], kind, "{e:#}");
        assert_eq!(e["cost_nusd"], 0);
    }

    assert!(!serde_json::to_string(&events).unwrap().contains("SDKTEST"));
    assert_no_keys_in_log(&t);
    assert_no_keys_in_log(&broken);
}

// ---------------------------------------------------------------------------
// curl

/// `curl -sS -N` POST of `body` with `headers`; returns (status line + headers, body bytes).
async fn curl(url: &str, headers: &[(&str, &str)], body: &Value) -> (String, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let head = dir.path().join("headers");
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args(["-sS", "-N", "--http1.1", "-X", "POST", "-D"])
        .arg(&head)
        .args(["-H", "content-type: application/json", "--data-binary"])
        .arg(body.to_string())
        .arg(url)
        .kill_on_drop(true);
    for (k, v) in headers {
        cmd.arg("-H").arg(format!("{k}: {v}"));
    }
    let out = match tokio::time::timeout(SCRIPT_TIMEOUT, cmd.output())
        .await
        .unwrap()
    {
        Ok(out) => out,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            panic!("curl is not installed (Debian: apt-get install curl; .ci/run installs it)")
        }
        Err(e) => panic!("curl: {e}"),
    };
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let head = std::fs::read_to_string(head).unwrap();
    (head.to_ascii_lowercase(), out.stdout)
}

/// Splits off the trailing `: tollgate {...}` receipt comment.
fn split_receipt(bytes: &[u8]) -> (&[u8], Value) {
    let text = std::str::from_utf8(bytes).unwrap();
    let at = text.rfind(": tollgate ").expect("stream receipt comment");
    assert!(text.ends_with("\n\n"), "{text}");
    let json_line = text[at + ": tollgate ".len()..].trim_end();
    (&bytes[..at], serde_json::from_str(json_line).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_gets_the_providers_bytes_and_the_receipt() {
    let fake = FakeProvider::start().await;
    let t = with_keys(Builder::new(&fake.base_url()).no_cache()).start();
    let anthropic = [
        ("x-api-key", CLIENT_KEY),
        ("anthropic-version", "2023-06-01"),
        (
            "x-fake-usage",
            "input=40,output=12,cache_write=8,cache_read=4",
        ),
    ];
    let messages = |stream: bool| {
        json!({"model": "claude-sonnet-4-5", "max_tokens": 256, "stream": stream,
               "messages": [{"role": "user", "content": "Hello"}]})
    };
    let cost = sonnet_45_nusd(40, 8, 0, 4, 12);

    // Non-stream: exactly the provider's bytes, the cost in a header.
    let (head, body) = curl(
        &format!("{}/v1/messages", t.url()),
        &anthropic,
        &messages(false),
    )
    .await;
    let r = fake.requests().pop().unwrap();
    assert_eq!(body, r.response, "curl's bytes differ from the provider's");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("x-tollgate-cost-usd: 0.0003312\r\n"),
        "{head}"
    );
    assert_eq!(r.header("x-api-key"), Some(ANTHROPIC_KEY));
    assert_clean_upstream(&r);

    // Stream: the provider's bytes, then the receipt comment.
    fake.clear();
    let (head, body) = curl(
        &format!("{}/v1/messages", t.url()),
        &anthropic,
        &messages(true),
    )
    .await;
    let r = fake.requests().pop().unwrap();
    let (provider_part, receipt) = split_receipt(&body);
    assert_eq!(provider_part, &r.response[..]);
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    assert!(!head.contains("x-tollgate-cost-usd"), "{head}");
    assert_eq!(receipt["status"], "ok");
    assert_eq!(receipt["provider"], "anthropic");
    assert_eq!(receipt["input_tokens"], 40);
    assert_eq!(receipt["output_tokens"], 12);
    assert_eq!(receipt["cost_usd"], "0.0003312");
    let id = receipt["request_id"].as_str().unwrap();
    assert!(
        head.contains(&format!("x-tollgate-request-id: {id}\r\n")),
        "{head}"
    );
    let events = t.wait_events(2).await;
    assert_eq!(event(&events, id)["cost_nusd"], cost);
    assert_clean_upstream(&r);

    // OpenAI stream that asked for usage itself: every provider byte, then the receipt.
    fake.clear();
    let mut chat = json!({"model": "gpt-4o", "stream": true,
                          "messages": [{"role": "user", "content": "Hello"}]});
    chat["stream_options"] = json!({"include_usage": true});
    let auth = format!("Bearer {CLIENT_KEY}");
    let (_, body) = curl(
        &format!("{}/v1/chat/completions", t.url()),
        &[
            ("authorization", &auth),
            ("x-fake-usage", "input=30,output=7"),
        ],
        &chat,
    )
    .await;
    let r = fake.requests().pop().unwrap();
    let (provider_part, receipt) = split_receipt(&body);
    assert_eq!(provider_part, &r.response[..]);
    assert!(std::str::from_utf8(provider_part)
        .unwrap()
        .ends_with("data: [DONE]\n\n"));
    assert_eq!(receipt["output_tokens"], 7);
    assert_eq!(
        r.header("authorization"),
        Some(format!("Bearer {OPENAI_KEY}").as_str())
    );
    assert_clean_upstream(&r);
    assert_no_keys_in_log(&t);
}

// ---------------------------------------------------------------------------
// Budgets and rate limits, as the SDK sees them

/// A budget refusal is a 402 `budget_exceeded` the SDK does not retry; a
/// rate-limit 429 is retried by the SDK after `retry-after-ms`; a stream
/// whose real input (at `message_start`) the budget cannot pay for ends
/// with an error event the SDK raises.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_sdk_sees_budget_and_rate_limit_errors() {
    let python = sdk_python("anthropic-current").await;
    let fake = FakeProvider::start().await;
    let t = with_keys(Builder::new(&fake.base_url()).no_cache())
        .config(
            r#"
[[budgets]]
name = "broke-per-request"
scope = "account:broke"
period = "request"
limit_usd = "0.000001"

[[budgets]]
name = "tight-day"
scope = "account:tight"
period = "day"
limit_usd = "0.05"

[[rate_limits]]
scope = "account:limited"
tpm = 60000
"#,
        )
        .start();
    let plan = json!([
        {"name": "broke", "op": "create", "max_retries": 2,
         "headers": {"x-tollgate-account": "broke"}, "raises": "APIStatusError"},
        // Takes all but ~100 of the minute's 60 000 tokens (the real count is settled).
        {"name": "fill", "op": "create", "usage": "input=59900,output=0",
         "headers": {"x-tollgate-account": "limited"}},
        {"name": "limited", "op": "create", "max_retries": 4, "usage": "input=10,output=5",
         "headers": {"x-tollgate-account": "limited"}},
        {"name": "input_too_big", "op": "create_stream", "usage": "input=100000,output=5",
         "headers": {"x-tollgate-account": "tight"}, "raises": "APIStatusError"},
    ]);
    let run = run_script(
        &python,
        "anthropic_calls.py",
        &[
            ("ANTHROPIC_BASE_URL", &t.url()),
            ("ANTHROPIC_API_KEY", CLIENT_KEY),
        ],
        &plan,
    )
    .await;
    let events = t.wait_events(1).await;
    let seen = fake.requests();

    // 402: not retried (one attempt reached tollgate), never forwarded.
    let broke = run.get("broke");
    assert_tollgate_error(broke, 402, "budget_exceeded", "budget_exceeded");
    assert_eq!(hdr(broke, "x-should-retry"), "false");
    let msg = broke["body"]["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("broke-per-request") && msg.contains("remaining"),
        "{msg}"
    );
    let broke_events: Vec<_> = events.iter().filter(|e| e["account"] == "broke").collect();
    assert_eq!(
        broke_events.len(),
        1,
        "the SDK retried a 402: {broke_events:#?}"
    );
    assert_eq!(broke_events[0]["error"], "budget_exceeded");
    assert!(seen_for(&seen, "broke").is_empty());

    // 429: the SDK waited and retried on its own, and got through.
    run.ok("fill");
    let limited = run.ok("limited");
    assert_eq!(limited["status"], 200);
    let refused: Vec<_> = events
        .iter()
        .filter(|e| e["account"] == "limited" && e["error"] == "rate_limited")
        .collect();
    assert!(!refused.is_empty(), "no 429 happened: {events:#?}");
    assert_eq!(
        seen_for(&seen, "limited").len(),
        1,
        "only the admitted retry went upstream"
    );

    // message_start showed 100 000 input tokens ($0.30) against $0.05: cut.
    let cut = run.get("input_too_big");
    assert_eq!(cut["ok"], false, "{cut:#}");
    assert_eq!(cut["raised_expected"], true, "{cut:#}");
    assert!(
        cut["error_message"]
            .as_str()
            .unwrap_or("")
            .contains("budget_exceeded")
            || cut["body"]["error"]["type"] == "budget_exceeded",
        "{cut:#}"
    );
    let id_event = events
        .iter()
        .find(|e| e["account"] == "tight")
        .expect("the cut stream was recorded");
    assert_eq!(id_event["error"], "budget_exceeded");
    assert_eq!(id_event["input_tokens"], 100000);
    assert_no_keys_in_log(&t);
}

// ---------------------------------------------------------------------------
// The exact cache through the SDKs' own stream accumulators

/// A message as the SDK parsed it, minus what legitimately differs.
fn essence(message: &Value) -> Value {
    json!({
        "content": message["content"],
        "stop_reason": message["stop_reason"],
        "usage": message["usage"],
        "model": message["model"],
        "id": message["id"],
    })
}

async fn anthropic_sdk_replays_cached_messages(venv: &'static str) {
    let python = sdk_python(venv).await;
    let fake = FakeProvider::start().await;
    let t = with_keys(Builder::new(&fake.base_url())).start();
    // Each pair: the first call is a miss that stores the answer, the
    // second (the other form) is served from it.
    let plan = json!([
        {"name": "text_json", "op": "create", "prompt": "cache text",
         "usage": "input=100,output=20,cache_write=10,cache_read=30"},
        {"name": "text_stream", "op": "stream_helper", "prompt": "cache text"},
        {"name": "tool_stream", "op": "stream_helper", "scenario": "tool_use", "prompt": "cache tool"},
        {"name": "tool_json", "op": "create", "scenario": "tool_use", "prompt": "cache tool"},
        {"name": "thinking_json", "op": "create", "scenario": "thinking", "prompt": "cache thinking"},
        {"name": "thinking_stream", "op": "stream_helper", "scenario": "thinking", "prompt": "cache thinking"},
        {"name": "thinking_raw_stream", "op": "create_stream", "scenario": "thinking", "prompt": "cache thinking"},
    ]);
    let url = t.url();
    let run = run_script(
        &python,
        "anthropic_calls.py",
        &[
            ("ANTHROPIC_API_KEY", CLIENT_KEY),
            ("ANTHROPIC_BASE_URL", &url),
        ],
        &plan,
    )
    .await;
    let who = format!("{} {}", run.sdk, run.version);
    for (original, replayed) in [
        ("text_json", "text_stream"),
        ("tool_stream", "tool_json"),
        ("thinking_json", "thinking_stream"),
    ] {
        let a = run.ok(original);
        let b = run.ok(replayed);
        assert_eq!(hdr(a, "x-tollgate-cache"), "miss", "{who} {original}");
        assert_eq!(hdr(b, "x-tollgate-cache"), "hit", "{who} {replayed}");
        assert_eq!(
            essence(&a["message"]),
            essence(&b["message"]),
            "{who}: {replayed} (from the cache) differs from {original}"
        );
    }
    // The blocks really are there (not an empty message compared to another).
    let kinds = |name: &str| -> Vec<String> {
        run.ok(name)["message"]["content"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["type"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(kinds("tool_json").contains(&"tool_use".to_string()));
    assert!(kinds("thinking_stream").contains(&"thinking".to_string()));
    let thinking = run.ok("thinking_stream")["message"]["content"][0].clone();
    assert!(!thinking["signature"].as_str().unwrap_or("").is_empty());
    // A raw stream of the cached thinking answer has the provider's sequence.
    let raw = run.ok("thinking_raw_stream");
    let events: Vec<&str> = raw["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert_eq!(events.first(), Some(&"message_start"));
    assert_eq!(events.last(), Some(&"message_stop"));
    assert!(events.contains(&"message_delta"));
    assert_eq!(
        raw["stop_reason"],
        run.ok("thinking_json")["message"]["stop_reason"]
    );
    assert_eq!(
        fake.requests().len(),
        3,
        "{who}: one upstream call per distinct request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_current_sdk_reads_cached_answers_in_either_form() {
    anthropic_sdk_replays_cached_messages("anthropic-current").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_legacy_sdk_reads_cached_answers_in_either_form() {
    anthropic_sdk_replays_cached_messages("anthropic-legacy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_sdk_reads_cached_answers_in_either_form() {
    let python = sdk_python("openai").await;
    let fake = FakeProvider::start().await;
    let t = with_keys(Builder::new(&fake.base_url())).start();
    let plan = json!([
        // Stored from a stream whose client did not ask for usage.
        {"name": "stream_miss", "op": "create_stream", "prompt": "cache openai",
         "usage": "input=100,output=50,cache_read=20"},
        {"name": "json_hit", "op": "create", "prompt": "cache openai"},
        {"name": "stream_hit_no_usage", "op": "create_stream", "prompt": "cache openai"},
        {"name": "stream_hit_usage", "op": "create_stream", "prompt": "cache openai",
         "include_usage": true},
        {"name": "helper_hit", "op": "stream_helper", "prompt": "cache openai",
         "include_usage": true},
        // Stored from JSON, replayed as a stream.
        {"name": "tool_json", "op": "create", "scenario": "tool_use", "prompt": "cache openai tool"},
        {"name": "tool_helper", "op": "stream_helper", "scenario": "tool_use",
         "prompt": "cache openai tool", "include_usage": true},
    ]);
    let url = format!("{}/v1", t.url());
    let run = run_script(
        &python,
        "openai_calls.py",
        &[("OPENAI_API_KEY", CLIENT_KEY), ("OPENAI_BASE_URL", &url)],
        &plan,
    )
    .await;
    let miss = run.ok("stream_miss");
    assert_eq!(hdr(miss, "x-tollgate-cache"), "miss");
    let json_hit = run.ok("json_hit");
    assert_eq!(hdr(json_hit, "x-tollgate-cache"), "hit");
    let completion = &json_hit["completion"];
    assert_eq!(completion["choices"][0]["message"]["content"], miss["text"]);
    assert_eq!(
        completion["choices"][0]["finish_reason"],
        miss["finish_reason"]
    );
    // prompt_tokens counts cached input too (100 + 20).
    assert_eq!(completion["usage"]["prompt_tokens"], 120);
    assert_eq!(completion["usage"]["completion_tokens"], 50);
    // Without include_usage the client sees no usage chunk; with it, it does.
    let no_usage = run.ok("stream_hit_no_usage");
    assert_eq!(hdr(no_usage, "x-tollgate-cache"), "hit");
    assert_eq!(no_usage["text"], miss["text"]);
    assert!(no_usage["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["usage"].is_null()));
    let with_usage = run.ok("stream_hit_usage");
    let last = with_usage["chunks"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["usage"], completion["usage"]);
    // The SDK's own accumulator rebuilds the same completion.
    let helper = run.ok("helper_hit");
    assert_eq!(hdr(helper, "x-tollgate-cache"), "hit");
    let rebuilt = &helper["completion"];
    assert_eq!(
        rebuilt["choices"][0]["message"]["content"],
        completion["choices"][0]["message"]["content"]
    );
    assert_eq!(
        rebuilt["choices"][0]["finish_reason"],
        completion["choices"][0]["finish_reason"]
    );
    assert_eq!(rebuilt["usage"], completion["usage"]);
    assert_eq!(rebuilt["id"], completion["id"]);
    let tool = &run.ok("tool_json")["completion"]["choices"][0];
    let tool_rebuilt = &run.ok("tool_helper")["completion"]["choices"][0];
    assert_eq!(hdr(run.ok("tool_helper"), "x-tollgate-cache"), "hit");
    assert!(tool["message"]["tool_calls"]
        .as_array()
        .is_some_and(|c| !c.is_empty()));
    // (The SDK's accumulator adds `index` and `parsed_arguments`.)
    let call = |c: &Value| {
        json!([
            c["id"],
            c["type"],
            c["function"]["name"],
            c["function"]["arguments"]
        ])
    };
    assert_eq!(
        call(&tool_rebuilt["message"]["tool_calls"][0]),
        call(&tool["message"]["tool_calls"][0])
    );
    assert_eq!(
        tool_rebuilt["message"]["tool_calls"]
            .as_array()
            .map(Vec::len),
        tool["message"]["tool_calls"].as_array().map(Vec::len)
    );
    assert_eq!(tool_rebuilt["finish_reason"], tool["finish_reason"]);
    assert_eq!(fake.requests().len(), 2);
}

/// Embeddings through the official SDK: its default (base64) and `float`
/// encodings, metered at the embedding model's price, the injected key
/// only, a repeat answered from the cache and decoded by the SDK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_sdk_embeddings_are_metered_and_cached() {
    let python = sdk_python("openai").await;
    let fake = FakeProvider::start().await;
    let t = with_keys(Builder::new(&fake.base_url())).start();
    let plan = json!([
        {"name": "emb_default", "op": "embeddings", "input": "metered words", "usage": "input=40"},
        {"name": "emb_float", "op": "embeddings", "input": "metered words", "encoding_format": "float",
         "usage": "input=40"},
        {"name": "emb_many", "op": "embeddings", "input": ["one", "two", "three"],
         "model": "text-embedding-3-large", "usage": "input=9"},
        {"name": "emb_repeat", "op": "embeddings", "input": "metered words"},
    ]);
    let url = format!("{}/v1", t.url());
    let run = run_script(
        &python,
        "openai_calls.py",
        &[("OPENAI_API_KEY", CLIENT_KEY), ("OPENAI_BASE_URL", &url)],
        &plan,
    )
    .await;
    let seen = fake.requests();
    // The SDK asks for base64 unless told otherwise; both decode alike.
    let default = run.ok("emb_default");
    let sent: Value = serde_json::from_slice(&one_seen(&seen, "emb_default").body).unwrap();
    assert_eq!(sent["encoding_format"], "base64");
    assert_eq!(default["vectors"], run.ok("emb_float")["vectors"]);
    assert_eq!(default["vectors"][0].as_array().unwrap().len(), 8);
    assert_eq!(run.ok("emb_many")["vectors"].as_array().unwrap().len(), 3);
    // $0.02 and $0.13 per million input tokens; nothing for output.
    assert_eq!(hdr(default, "x-tollgate-cost-usd"), "0.0000008");
    assert_eq!(hdr(run.ok("emb_many"), "x-tollgate-cost-usd"), "0.00000117");
    for name in ["emb_default", "emb_float", "emb_many"] {
        let r = one_seen(&seen, name);
        assert_clean_upstream(r);
        assert_eq!(
            r.header("authorization"),
            Some(format!("Bearer {OPENAI_KEY}").as_str())
        );
        assert_eq!(hdr(run.ok(name), "x-tollgate-cache"), "miss");
    }
    // The repeat is a hit: the SDK decodes the stored answer.
    let repeat = run.ok("emb_repeat");
    assert_eq!(hdr(repeat, "x-tollgate-cache"), "hit");
    assert_eq!(repeat["vectors"], default["vectors"]);
    assert!(seen_for(&seen, "emb_repeat").is_empty());
    // The events carry the tokens and cost.
    let id = hdr(default, "x-tollgate-request-id").to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let events = loop {
        let events = t.events().await;
        if events.iter().any(|e| e["event_id"] == id.as_str()) {
            break events;
        }
        assert!(std::time::Instant::now() < deadline, "no event {id}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let e = event(&events, &id);
    assert_eq!(e["model"], "text-embedding-3-small");
    assert_eq!(e["input_tokens"], 40);
    assert_eq!(e["output_tokens"], 0);
    assert_eq!(e["cost_nusd"], 800);
    assert_eq!(e["route"], "sync");
    assert_eq!(e["priced"], true);
    assert_no_keys_in_log(&t);
}

/// The Responses API through the official SDK: `responses.create` with and
/// without `stream=True` and the `responses.stream()` helper, metered from
/// the terminal event (cached input at its own rate); an `incomplete`
/// answer metered with what it carries; a budget reserves the worst case
/// from `max_output_tokens` (adding one when absent) and refuses in
/// OpenAI's shape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_sdk_responses_are_metered_and_budgeted() {
    let python = sdk_python("openai").await;
    let fake = FakeProvider::start().await;
    let t = with_keys(Builder::new(&fake.base_url())).config(
        "[[budgets]]\nname = \"day\"\nscope = \"all\"\nperiod = \"day\"\nlimit_usd = \"10\"\n\n\
         [[budgets]]\nname = \"per-call\"\nscope = \"all\"\nperiod = \"request\"\nlimit_usd = \"0.05\"\n",
    )
    .start();
    let usage = "input=100,output=20,cache_read=40";
    let plan = json!([
        {"name": "r_json", "op": "responses_create", "usage": usage, "store": false},
        {"name": "r_stream", "op": "responses_stream", "usage": usage, "max_output_tokens": 64},
        {"name": "r_helper", "op": "responses_helper", "usage": usage},
        {"name": "r_incomplete", "op": "responses_create", "usage": usage, "max_output_tokens": 3},
        // gpt-5 output is $10 / MTok: 10,000 tokens cannot fit a $0.05 call.
        {"name": "r_denied", "op": "responses_create", "max_output_tokens": 10000,
         "raises": "APIStatusError"},
    ]);
    let url = format!("{}/v1", t.url());
    let run = run_script(
        &python,
        "openai_calls.py",
        &[("OPENAI_API_KEY", CLIENT_KEY), ("OPENAI_BASE_URL", &url)],
        &plan,
    )
    .await;
    // gpt-5: input $1.25, cached input $0.125, output $10 per MTok.
    let cost = 100 * 1250 + 40 * 125 + 20 * 10_000;
    assert_eq!(cost, 330_000);
    let json_call = run.ok("r_json");
    assert_eq!(hdr(json_call, "x-tollgate-cost-usd"), "0.00033");
    assert_eq!(json_call["response"]["output_text"], Value::Null);
    assert_eq!(json_call["response"]["usage"]["input_tokens"], 140);
    let stream = run.ok("r_stream");
    assert_eq!(
        stream["event_types"].as_array().unwrap().last().unwrap(),
        "response.completed"
    );
    let helper = run.ok("r_helper");
    assert_eq!(helper["text"], "Hello there!");
    let seen = fake.requests();
    for name in ["r_json", "r_stream", "r_helper", "r_incomplete"] {
        let r = one_seen(&seen, name);
        assert_clean_upstream(r);
        assert_eq!(
            r.header("authorization"),
            Some(format!("Bearer {OPENAI_KEY}").as_str())
        );
    }
    // A request without a bound gets the budget's default one, in the
    // Responses API's own field.
    let sent: Value = serde_json::from_slice(&one_seen(&seen, "r_json").body).unwrap();
    assert!(sent["max_output_tokens"].as_u64().is_some(), "{sent}");
    assert!(sent.get("max_tokens").is_none(), "{sent}");
    let denied = run.get("r_denied");
    assert_eq!(denied["raised_expected"], true, "{denied}");
    assert_eq!(denied["status_code"], 402);
    assert_eq!(denied["body"]["code"], "budget_exceeded", "{denied}");
    assert!(seen_for(&seen, "r_denied").is_empty());
    // The events: exact tokens and cost, the right route.
    let events = t.events_at_least(5).await;
    for (name, route) in [
        ("r_json", "sync"),
        ("r_stream", "stream"),
        ("r_helper", "stream"),
    ] {
        let id = hdr(run.ok(name), "x-tollgate-request-id");
        let e = event(&events, id);
        assert_eq!(e["route"], route, "{name}");
        assert_eq!(e["model"], "gpt-5", "{name}");
        assert_eq!(e["input_tokens"], 100, "{name}");
        assert_eq!(e["cache_read_input_tokens"], 40, "{name}");
        assert_eq!(e["output_tokens"], 20, "{name}");
        assert_eq!(e["cost_nusd"], cost, "{name}");
        assert_eq!(e["usage_incomplete"], false, "{name}");
    }
    let inc = run.ok("r_incomplete");
    assert_eq!(inc["response"]["status"], "incomplete");
    let e = event(&events, hdr(inc, "x-tollgate-request-id"));
    assert_eq!(e["output_tokens"], 3);
    assert_eq!(e["cost_nusd"], 100 * 1250 + 40 * 125 + 3 * 10_000);
    assert_no_keys_in_log(&t);
}

/// The exact cache for the Responses API: only a `store: false` request
/// without server-side state is cached; a JSON entry is served to a stream
/// (the SDK's helper rebuilds the same response) and a stream's entry as
/// JSON; `previous_response_id` and stored responses always go upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_sdk_responses_are_cached_only_when_stateless() {
    let python = sdk_python("openai").await;
    let fake = FakeProvider::start().await;
    let t = with_keys(Builder::new(&fake.base_url())).start();
    let usage = "input=100,output=20";
    let plan = json!([
        {"name": "json_miss", "op": "responses_create", "prompt": "cache me", "store": false, "usage": usage},
        {"name": "json_hit", "op": "responses_create", "prompt": "cache me", "store": false},
        {"name": "stream_hit", "op": "responses_stream", "prompt": "cache me", "store": false},
        {"name": "helper_hit", "op": "responses_helper", "prompt": "cache me", "store": false},
        {"name": "stream_miss", "op": "responses_stream", "prompt": "cache me too", "store": false, "usage": usage},
        {"name": "json_from_stream", "op": "responses_create", "prompt": "cache me too", "store": false},
        {"name": "stored_1", "op": "responses_create", "prompt": "cache me"},
        {"name": "stored_2", "op": "responses_create", "prompt": "cache me"},
        {"name": "chained_1", "op": "responses_create", "prompt": "cache me", "store": false,
         "previous_response_id": "resp_earlier"},
        {"name": "chained_2", "op": "responses_create", "prompt": "cache me", "store": false,
         "previous_response_id": "resp_earlier"},
    ]);
    let url = format!("{}/v1", t.url());
    let run = run_script(
        &python,
        "openai_calls.py",
        &[("OPENAI_API_KEY", CLIENT_KEY), ("OPENAI_BASE_URL", &url)],
        &plan,
    )
    .await;
    let cache = |name: &str| hdr(run.ok(name), "x-tollgate-cache").to_string();
    assert_eq!(cache("json_miss"), "miss");
    for name in ["json_hit", "stream_hit", "helper_hit", "json_from_stream"] {
        assert_eq!(cache(name), "hit", "{name}");
    }
    assert_eq!(cache("stream_miss"), "miss");
    for name in ["stored_1", "stored_2", "chained_1", "chained_2"] {
        assert_eq!(cache(name), "bypass", "{name}");
    }
    let miss = &run.ok("json_miss")["response"];
    assert_eq!(run.ok("json_hit")["response"], *miss);
    let helper = run.ok("helper_hit");
    assert_eq!(helper["text"], "Hello there!");
    assert_eq!(helper["response"]["id"], miss["id"]);
    assert_eq!(helper["response"]["usage"], miss["usage"]);
    let stream = run.ok("stream_hit");
    assert_eq!(
        stream["event_types"].as_array().unwrap().last().unwrap(),
        "response.completed"
    );
    assert_eq!(stream["response"]["output"], miss["output"]);
    // Served from the stream's entry: the stream's own final response.
    assert_eq!(
        run.ok("json_from_stream")["response"]["id"],
        run.ok("stream_miss")["response"]["id"]
    );
    let seen = fake.requests();
    assert_eq!(seen.len(), 6, "two misses and four uncacheable calls");
    // Hits cost nothing and say what they saved.
    let events = t.events_at_least(10).await;
    let hit = event(&events, hdr(run.ok("json_hit"), "x-tollgate-request-id"));
    assert_eq!(hit["cost_nusd"], 0);
    assert_eq!(hit["saved_nusd"], 100 * 1250 + 20 * 10_000);
}

// ---------------------------------------------------------------------------
// HTTPS_PROXY mode: the SDKs with their default base URLs

/// A tollgate with HTTPS_PROXY mode on and a fresh CA; (tollgate, proxy URL, CA file).
fn https_proxy(fake: &FakeProvider, extra: &str) -> (Tollgate, String, tempfile::TempDir) {
    let ca = tempfile::tempdir().unwrap();
    support::tollgate::ca_init(ca.path());
    let port = support::tollgate::free_port();
    let t = with_keys(Builder::new(&fake.base_url()).top(&format!(
        "forward_proxy_listen = \"127.0.0.1:{port}\"\nca_dir = \"{}\"",
        ca.path().display()
    )))
    .config(extra)
    .start();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "{}", t.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    (t, format!("http://127.0.0.1:{port}"), ca)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdks_with_only_https_proxy_and_ssl_cert_file() {
    let anthropic = sdk_python("anthropic-current").await;
    let openai = sdk_python("openai").await;
    let fake = FakeProvider::start().await;
    // A budget, so the calls are budgeted exactly as in base-URL mode.
    let (t, proxy, ca) = https_proxy(
        &fake,
        "[[budgets]]\nname = \"daily\"\nscope = \"all\"\nperiod = \"day\"\nlimit_usd = \"10.00\"\n",
    );
    let ca_file = ca.path().join("ca.pem");
    let ca_file = ca_file.to_str().unwrap();
    // No base URL anywhere: the SDKs' own defaults (api.anthropic.com, api.openai.com).
    let env_a = [
        ("ANTHROPIC_API_KEY", CLIENT_KEY),
        ("HTTPS_PROXY", proxy.as_str()),
        ("SSL_CERT_FILE", ca_file),
    ];
    // The data-plane tests' own plan items and checks, with prompts of their
    // own (the cache is on here) and a repeat that must be a hit.
    let plan = json!([
        {"name": "create", "op": "create", "prompt": "proxied", "usage": ANTHROPIC_CREATE_USAGE},
        {"name": "again", "op": "create", "prompt": "proxied"},
        {"name": "create_stream", "op": "create_stream", "prompt": "proxied stream",
         "usage": ANTHROPIC_STREAM_USAGE},
    ]);
    let run = run_script(&anthropic, "anthropic_calls.py", &env_a, &plan).await;
    let env_o = [
        ("OPENAI_API_KEY", CLIENT_KEY),
        ("HTTPS_PROXY", proxy.as_str()),
        ("SSL_CERT_FILE", ca_file),
    ];
    let plan = json!([
        {"name": "create", "op": "create", "prompt": "proxied openai", "usage": OPENAI_CREATE_USAGE},
        {"name": "stream_no_usage", "op": "create_stream", "prompt": "proxied openai stream",
         "usage": OPENAI_STREAM_USAGE},
    ]);
    let run_o = run_script(&openai, "openai_calls.py", &env_o, &plan).await;
    let seen = fake.requests();
    assert_eq!(
        seen.len(),
        4,
        "the hit did not reach the provider: {seen:?}"
    );
    let events = t.wait_events(5).await;
    // Reached the fake with the injected keys, never the client's.
    for r in &seen {
        assert_clean_upstream(r);
        if r.path.contains("/messages") {
            assert_eq!(r.header("x-api-key"), Some(ANTHROPIC_KEY));
        } else {
            assert_eq!(
                r.header("authorization"),
                Some(format!("Bearer {OPENAI_KEY}").as_str())
            );
        }
    }
    let (anthropic_seen, openai_seen): (Vec<Recorded>, Vec<Recorded>) =
        seen.into_iter().partition(|r| r.path.contains("/messages"));
    let who = format!("{} {} via HTTPS_PROXY", run.sdk, run.version);
    let create = run.ok("create");
    check_anthropic_create(&who, create, one_seen(&anthropic_seen, "create"), &events);
    assert_eq!(hdr(create, "x-tollgate-cache"), "miss");
    check_anthropic_create_stream(
        &who,
        run.ok("create_stream"),
        one_seen(&anthropic_seen, "create_stream"),
        &events,
    );
    // Cached as in base-URL mode: the repeat is answered locally, costs 0
    // and records what it saved.
    let again = run.ok("again");
    assert_eq!(hdr(again, "x-tollgate-cache"), "hit");
    assert_eq!(again["message"], create["message"]);
    let e = event(&events, hdr(again, "x-tollgate-request-id"));
    assert_eq!(e["cache"], "hit");
    assert_eq!(e["cost_nusd"], 0);
    assert_eq!(e["saved_nusd"], sonnet_45_nusd(1000, 150, 50, 300, 500));
    let who = format!("{} {} via HTTPS_PROXY", run_o.sdk, run_o.version);
    check_openai_create(&who, run_o.ok("create"), &events);
    check_openai_stream_no_usage(
        &who,
        run_o.ok("stream_no_usage"),
        one_seen(&openai_seen, "stream_no_usage"),
        &events,
    );
    // Budgeted as in base-URL mode: the budget spent exactly what was paid.
    let paid = sonnet_45_nusd(1000, 150, 50, 300, 500)
        + sonnet_45_nusd(40, 8, 0, 4, 12)
        + gpt_4o_nusd(100, 20, 50)
        + gpt_4o_nusd(30, 10, 7);
    let recorded: u64 = events
        .iter()
        .map(|e| e["cost_nusd"].as_u64().unwrap())
        .sum();
    assert_eq!(recorded, paid);
    let budgets: Value = reqwest::get(format!("{}/budgets", t.admin_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(budgets[0]["spent_nusd"].as_u64().unwrap(), paid);
    assert_no_keys_in_log(&t);
}

/// LangChain's `ChatOpenAI(use_responses_api=True)`: invoke and stream are
/// metered exactly, with the injected key only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn langchain_responses_api_is_metered_exactly() {
    let python = sdk_python("langchain").await;
    let fake = FakeProvider::start().await;
    let t = with_keys(Builder::new(&fake.base_url())).start();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/langchain_calls.py");
    let out = tokio::time::timeout(
        SCRIPT_TIMEOUT,
        tokio::process::Command::new(&python)
            .arg(&script)
            .arg(format!("{}/v1", t.url()))
            .env("OPENAI_API_KEY", CLIENT_KEY)
            .env_remove("OPENAI_BASE_URL")
            .output(),
    )
    .await
    .expect("the script in time")
    .expect("run the script");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let seen = fake.requests();
    for name in ["lc_invoke", "lc_stream"] {
        assert_eq!(v[name]["text"], "Hello there!", "{v}");
        assert_eq!(v[name]["usage"]["input_tokens"], 140, "{v}");
        let r = one_seen(&seen, name);
        assert_clean_upstream(r);
        assert_eq!(r.path, "/v1/responses");
    }
    let events = t.events_at_least(2).await;
    let mut routes: Vec<&str> = events
        .iter()
        .map(|e| e["route"].as_str().unwrap())
        .collect();
    routes.sort_unstable();
    assert_eq!(routes, ["stream", "sync"]);
    for e in &events {
        // gpt-5: 100·1250 + 40·125 + 20·10000 nano-USD.
        assert_eq!(e["cost_nusd"], 330_000, "{e}");
        assert_eq!(e["model"], "gpt-5", "{e}");
    }
}
