//! Issue 12 ("Hardening"): requests a demanding client or a misbehaving
//! network sends, through the real binary in front of the fake provider.
//! Each test reproduces one defect of that issue.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::fake_provider::FakeProvider;
use support::raw;
use support::tollgate::{Builder, Tollgate};

const ANTHROPIC_KEY: &str = "sk-ant-injected-HARDEN-3c1d";
const OPENAI_KEY: &str = "sk-openai-injected-HARDEN-9e2b";
const WAIT: Duration = Duration::from_secs(20);

fn start(fake: &FakeProvider) -> Tollgate {
    Builder::new(&fake.base_url())
        .no_cache()
        .env("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
        .env("OPENAI_API_KEY", OPENAI_KEY)
        .start()
}

fn addr(t: &Tollgate) -> String {
    t.addr.to_string()
}

fn messages_body() -> Vec<u8> {
    json!({"model": "claude-sonnet-4-5", "max_tokens": 64,
           "messages": [{"role": "user", "content": "Hello"}]})
    .to_string()
    .into_bytes()
}

fn chat_body() -> Vec<u8> {
    json!({"model": "gpt-4o", "max_tokens": 64,
           "messages": [{"role": "user", "content": "Hello"}]})
    .to_string()
    .into_bytes()
}

/// POSTs `body` to `path` with `anthropic-version` (when `anthropic`).
async fn post(t: &Tollgate, path: &str, anthropic: bool, body: &[u8]) -> raw::Response {
    let line = format!("POST {path} HTTP/1.1");
    let mut head = vec![line.as_str(), "content-type: application/json"];
    if anthropic {
        head.push("anthropic-version: 2023-06-01");
    }
    raw::send(&addr(t), &head, body, WAIT).await
}

/// An error tollgate made itself, in Anthropic's shape.
fn assert_anthropic_error(r: &raw::Response, status: u16, kind: &str) {
    assert_eq!(r.status, status, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("x-tollgate-error"), Some(kind), "{r:?}");
    let v = r.json();
    assert_eq!(v["type"], "error", "{v}");
    assert!(v["error"]["type"].is_string(), "{v}");
    assert!(v["error"]["message"].is_string(), "{v}");
}

/// An error tollgate made itself, in OpenAI's shape.
fn assert_openai_error(r: &raw::Response, status: u16, kind: &str) {
    assert_eq!(r.status, status, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("x-tollgate-error"), Some(kind), "{r:?}");
    let v = r.json();
    assert!(v["error"]["type"].is_string(), "{v}");
    assert!(v["error"]["message"].is_string(), "{v}");
    assert_eq!(v["type"], Value::Null, "{v}");
}

// === item 1: odd paths ===

/// Every spelling of `/v1/messages` that a path-normalising provider or
/// front proxy would bill as a messages call is routed, forwarded and
/// metered as one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_spellings_of_a_metered_path_are_normalised_and_metered() {
    let fake = FakeProvider::start().await;
    let t = start(&fake);
    let paths = [
        "//v1/messages",
        "/v1//messages",
        "/v1/./messages",
        "/./v1/messages",
        "/v1/../v1/messages",
        "/v1/models/../messages",
        "/%2e%2e/v1/messages",
        "/v1/%2e%2e/v1/messages",
        "/v1/%2E/messages",
        "/v1/mess%61ges",
        "/anthropic//v1/./messages",
    ];
    for path in paths {
        fake.clear();
        let r = post(&t, path, true, &messages_body()).await;
        assert_eq!(
            r.status,
            200,
            "{path}: {:?}",
            String::from_utf8_lossy(&r.body)
        );
        let sent = fake.requests();
        assert_eq!(sent.len(), 1, "{path}");
        assert_eq!(sent[0].path, "/v1/messages", "{path} was forwarded as is");
        let id = r.header("x-tollgate-request-id").unwrap().to_string();
        let e = t.wait_event(&id).await;
        assert_eq!(e["model"], "claude-sonnet-4-5", "{path}: {e}");
        assert!(e["cost_nusd"].as_u64().unwrap() > 0, "{path}: {e}");
        assert_eq!(e["status"], "ok", "{path}: {e}");
    }
    // The OpenAI side too, query kept.
    fake.clear();
    let r = post(&t, "/v1/./chat//completions?x=1", false, &chat_body()).await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(fake.requests()[0].path, "/v1/chat/completions?x=1");
    let e = t
        .wait_event(r.header("x-tollgate-request-id").unwrap())
        .await;
    assert_eq!(e["model"], "gpt-4o", "{e}");
}

/// A path that cannot be normalised without guessing (an encoded slash or
/// backslash, a NUL, a broken escape) is refused before anything is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_that_cannot_be_normalised_are_refused_with_400() {
    let fake = FakeProvider::start().await;
    let t = start(&fake);
    for path in [
        "/v1%2fmessages",
        "/v1/%2E%2E%2Fv1/messages",
        "/v1%5cmessages",
        "/v1/messages%00",
        "/v1/mess%zzages",
        "/v1/messages%",
    ] {
        let r = post(&t, path, true, &messages_body()).await;
        assert_anthropic_error(&r, 400, "bad_path");
    }
    let r = post(&t, "/v1/chat%2fcompletions", false, &chat_body()).await;
    assert_openai_error(&r, 400, "bad_path");
    assert!(fake.requests().is_empty(), "nothing reaches the provider");
    let events = t.wait_events(7).await;
    assert!(
        events.iter().all(|e| e["status"] == "proxy_error"),
        "{events:?}"
    );
}

/// Anthropic's OpenAI-compatible endpoint is billed by Anthropic but not
/// metered by tollgate: refused clearly instead of slipping through; paths
/// that name no provider endpoint are 404 whatever their headers say.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmetered_anthropic_endpoints_and_unknown_prefixes_are_refused() {
    let fake = FakeProvider::start().await;
    let t = start(&fake);
    let r = post(&t, "/v1/chat/completions", true, &chat_body()).await;
    assert_openai_error(&r, 404, "unsupported_endpoint");
    let message = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains("/v1/messages"), "{message}");
    let r = post(&t, "/anthropic/v1/chat/completions", false, &chat_body()).await;
    assert_openai_error(&r, 404, "unsupported_endpoint");
    let r = post(
        &t,
        "/anthropic/v1/../v1/chat/completions",
        false,
        &chat_body(),
    )
    .await;
    assert_openai_error(&r, 404, "unsupported_endpoint");
    for path in ["/v2/messages", "/nosuchprovider/v1/messages", "/messages"] {
        let r = post(&t, path, true, &messages_body()).await;
        assert_anthropic_error(&r, 404, "unknown_route");
    }
    assert!(fake.requests().is_empty(), "nothing reaches the provider");
    // The plain routes still work.
    let r = post(&t, "/v1/chat/completions", false, &chat_body()).await;
    assert_eq!(r.status, 200);
    let r = post(&t, "/v1/messages", true, &messages_body()).await;
    assert_eq!(r.status, 200);
    assert_eq!(fake.requests().len(), 2);
}
