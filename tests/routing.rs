//! Routing end to end: the real binary in front of two fake upstreams, one
//! speaking the Anthropic dialect (provider `anthropic`) and one the OpenAI
//! dialect (provider `backup`). Aliases, `x-tollgate-fallback`, fallback on
//! 529 / 429 / connect failure / first-byte timeout, never after the first
//! byte, the circuit breaker in `/metrics`, the policies, and the official
//! SDKs served across dialects, with a usage event per attempt.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::control::{Control, ADMIN_TOKEN};
use support::fake_provider::FakeProvider;
use support::sdk::{run_script, sdk_python};
use support::tollgate::{Builder, Tollgate};

const ANTHROPIC_KEY: &str = "sk-ant-injected-ROUTE-7c1e";
const BACKUP_KEY: &str = "sk-backup-injected-ROUTE-9d2f";
const CLIENT_KEY: &str = "sk-client-own-ROUTE-NOT-FORWARDED";

/// Two fakes and a tollgate routing between them.
struct Rig {
    /// Serves provider `anthropic` (Messages).
    a: FakeProvider,
    /// Serves provider `backup` (Chat Completions).
    b: FakeProvider,
    t: Tollgate,
}

async fn rig(config: &str) -> Rig {
    rig_with(config, false).await
}

async fn rig_with(config: &str, cache: bool) -> Rig {
    rig_full(config, cache, |b| b).await
}

async fn rig_full(config: &str, cache: bool, more: impl FnOnce(Builder) -> Builder) -> Rig {
    let a = FakeProvider::start().await;
    let b = FakeProvider::start().await;
    let builder = more(Builder::new(&a.base_url()));
    let builder = if cache { builder } else { builder.no_cache() };
    let t = builder
        .env("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
        .env("BACKUP_KEY", BACKUP_KEY)
        .config(&format!(
            "[providers.backup]\ndialect = \"openai\"\nbase_url = \"{}/v1\"\napi_key_env = \"BACKUP_KEY\"\n",
            b.base_url()
        ))
        .config(config)
        .start();
    Rig { a, b, t }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().http1_only().build().unwrap()
}

fn messages(model: &str, stream: bool) -> Value {
    json!({"model": model, "max_tokens": 200, "stream": stream,
           "messages": [{"role": "user", "content": "Hello"}]})
}

fn chat(model: &str, stream: bool) -> Value {
    json!({"model": model, "max_tokens": 200, "stream": stream,
           "messages": [{"role": "user", "content": "Hello"}]})
}

async fn post_messages(t: &Tollgate, body: &Value, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = client()
        .post(format!("{}/v1/messages", t.url()))
        .header("x-api-key", CLIENT_KEY)
        .header("anthropic-version", "2023-06-01")
        .json(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// The sidecar's latest usage events (admin `/events`), waiting until
/// there are at least `n`.
async fn events(t: &Tollgate, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v: Value = reqwest::get(format!("{}/events?limit=1000", t.admin_url()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let list = v.as_array().cloned().unwrap_or_default();
        if list.len() >= n || Instant::now() > deadline {
            return list;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn metrics(t: &Tollgate) -> String {
    reqwest::get(format!("{}/metrics", t.admin_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// No key of the client's reached either fake; each got only its own key.
fn assert_credentials(rig: &Rig) {
    for r in rig.a.requests() {
        let h = |n: &str| support::fake_provider::first_header(&r.headers, n).map(str::to_string);
        assert_eq!(h("x-api-key").as_deref(), Some(ANTHROPIC_KEY), "{}", r.path);
        assert!(h("authorization").is_none(), "{}", r.path);
    }
    for r in rig.b.requests() {
        let h = |n: &str| support::fake_provider::first_header(&r.headers, n).map(str::to_string);
        assert_eq!(
            h("authorization").as_deref(),
            Some(format!("Bearer {BACKUP_KEY}").as_str()),
            "{}",
            r.path
        );
        assert!(h("x-api-key").is_none(), "{}", r.path);
        assert!(
            !r.headers.iter().any(|(n, _)| n.starts_with("anthropic-")),
            "Anthropic headers went to an OpenAI upstream: {:?}",
            r.headers
        );
    }
}

const TWO_TARGETS: &str = r#"
[aliases.smart]
targets = ["anthropic/claude-sonnet-4-5", "backup/gpt-5"]

[routing]
backoff_base = "10ms"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alias_falls_back_on_529_and_records_each_attempt() {
    let rig = rig(TWO_TARGETS).await;
    rig.a.set_default_scenario(Some("error-529"));
    let r = post_messages(&rig.t, &messages("smart", false), &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "x-tollgate-attempts"),
        "anthropic/claude-sonnet-4-5=529, backup/gpt-5=200"
    );
    assert_eq!(header(&r, "x-tollgate-provider"), "backup");
    let cost = header(&r, "x-tollgate-cost-usd");
    let body: Value = r.json().await.unwrap();
    // The Anthropic client got its own dialect from an OpenAI upstream.
    assert_eq!(body["type"], "message");
    assert_eq!(body["role"], "assistant");
    assert!(body["content"][0]["text"].as_str().unwrap().len() > 1);
    let served = rig.b.requests();
    assert_eq!(served.len(), 1);
    assert_eq!(served[0].path, "/v1/chat/completions");
    let sent: Value = serde_json::from_slice(&served[0].body).unwrap();
    assert_eq!(sent["model"], "gpt-5");
    assert_eq!(sent["messages"][0]["content"], "Hello");
    let usage = served[0].usage.unwrap();
    assert_eq!(rig.a.requests().len(), 1);
    assert_credentials(&rig);

    let ev = events(&rig.t, 2).await;
    assert_eq!(ev.len(), 2, "{ev:#?}");
    let failed = ev.iter().find(|e| e["provider"] == "anthropic").unwrap();
    assert_eq!(failed["status"], "provider_error");
    assert_eq!(failed["http_status"], 529);
    assert_eq!(failed["error"], "overloaded_error");
    assert_eq!(failed["cost_nusd"], 0);
    let served_ev = ev.iter().find(|e| e["provider"] == "backup").unwrap();
    assert_eq!(served_ev["status"], "ok");
    assert_eq!(served_ev["model"], "gpt-5");
    assert_eq!(served_ev["input_tokens"], usage.input_tokens);
    assert_eq!(served_ev["output_tokens"], usage.output_tokens);
    // gpt-5: $1.25 / $10 per MTok.
    let nusd = usage.input_tokens * 1250 + usage.output_tokens * 10_000;
    assert_eq!(served_ev["cost_nusd"], nusd);
    assert!(cost.starts_with("0.0"), "{cost}");
    let m = metrics(&rig.t).await;
    assert!(
        m.contains(
            r#"tollgate_route_attempts_total{outcome="upstream_error",provider="anthropic"} 1"#
        ),
        "{m}"
    );
    assert!(
        m.contains(r#"tollgate_route_attempts_total{outcome="success",provider="backup"} 1"#),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_retry_waits_for_retry_after_and_the_last_error_reaches_the_client() {
    let rig = rig(r#"
[aliases.solo]
targets = ["anthropic/claude-sonnet-4-5"]

[routing]
max_attempts = 2
backoff_base = "10ms"
"#)
    .await;
    rig.a.set_default_scenario(Some("error-429"));
    let started = Instant::now();
    let r = post_messages(
        &rig.t,
        &messages("solo", false),
        &[("x-fake-retry-after", "1")],
    )
    .await;
    let took = started.elapsed();
    assert_eq!(r.status(), 429);
    assert_eq!(
        header(&r, "x-tollgate-attempts"),
        "anthropic/claude-sonnet-4-5=429, anthropic/claude-sonnet-4-5=429"
    );
    assert!(took >= Duration::from_millis(950), "retried after {took:?}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert_eq!(rig.a.requests().len(), 2);
    // `x-should-retry: false`: that target is not tried again.
    let r = post_messages(
        &rig.t,
        &messages("solo", false),
        &[("x-fake-retry-after", "1"), ("x-fake-no-retry", "1")],
    )
    .await;
    assert_eq!(r.status(), 429);
    assert_eq!(
        header(&r, "x-tollgate-attempts"),
        "anthropic/claude-sonnet-4-5=429"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_error_goes_to_the_client_not_to_another_target() {
    let rig = rig(TWO_TARGETS).await;
    rig.a.set_default_scenario(Some("error-400"));
    let r = post_messages(&rig.t, &messages("smart", false), &[]).await;
    assert_eq!(r.status(), 400);
    assert_eq!(
        header(&r, "x-tollgate-attempts"),
        "anthropic/claude-sonnet-4-5=400"
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(rig.b.requests().is_empty());
    // An OpenAI client gets the Anthropic target's 400 in its own shape.
    let r = client()
        .post(format!("{}/v1/chat/completions", rig.t.url()))
        .bearer_auth(CLIENT_KEY)
        .json(&chat("smart", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
    assert!(body.get("type").is_none(), "{body}");
    // The failed answer is the request's event (nothing else was tried).
    let ev = events(&rig.t, 2).await;
    assert_eq!(ev.len(), 2, "{ev:#?}");
    assert!(ev
        .iter()
        .all(|e| e["status"] == "provider_error" && e["http_status"] == 400));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_and_first_byte_timeouts_fall_back() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    drop(dead);
    let rig = rig(&format!(
        r#"
[providers.dead]
dialect = "anthropic"
base_url = "http://127.0.0.1:{dead_port}"
api_key_env = "ANTHROPIC_API_KEY"

[aliases.down]
targets = ["dead/claude-sonnet-4-5", "backup/gpt-5"]

[aliases.slow]
targets = ["anthropic/claude-sonnet-4-5", "backup/gpt-5"]

[timeouts]
first_byte = "400ms"
"#
    ))
    .await;
    let r = post_messages(&rig.t, &messages("down", false), &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "x-tollgate-attempts"),
        "dead/claude-sonnet-4-5=connect_failure, backup/gpt-5=200"
    );
    // Nothing reached the dead provider: no event for it.
    let ev = events(&rig.t, 1).await;
    assert_eq!(ev.len(), 1, "{ev:#?}");
    assert_eq!(ev[0]["provider"], "backup");

    rig.a.set_default_scenario(Some("hang"));
    let r = post_messages(&rig.t, &messages("slow", true), &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "x-tollgate-attempts"),
        "anthropic/claude-sonnet-4-5=first_byte_timeout, backup/gpt-5=200"
    );
    let text = r.text().await.unwrap();
    assert!(text.contains("event: message_stop"), "{text}");
    let ev = events(&rig.t, 3).await;
    assert_eq!(ev.len(), 3, "{ev:#?}");
    // Sent and never answered: charged its worst case, marked estimated.
    let timed_out = ev.iter().find(|e| e["provider"] == "anthropic").unwrap();
    assert_eq!(timed_out["error"], "upstream_timeout");
    assert_eq!(timed_out["usage_incomplete"], true);
    assert!(timed_out["cost_nusd"].as_u64().unwrap() > 0, "{timed_out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_fallback_after_the_first_byte() {
    let rig = rig(TWO_TARGETS).await;
    rig.a.set_default_scenario(Some("cut"));
    let r = post_messages(&rig.t, &messages("smart", true), &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "x-tollgate-attempts"),
        "anthropic/claude-sonnet-4-5=200"
    );
    let text = r.text().await.unwrap();
    assert!(text.contains("event: error"), "{text}");
    assert!(rig.b.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_half_opens_and_closes_in_metrics() {
    let rig = rig(r#"
[aliases.smart]
targets = ["anthropic/claude-sonnet-4-5", "backup/gpt-5"]

[routing]
breaker_failures = 2
breaker_open_for = "1s"
"#)
    .await;
    let target = "anthropic/claude-sonnet-4-5";
    let state = |m: &str, s: &str| {
        m.contains(&format!(
            "tollgate_route_breaker_state{{state=\"{s}\",target=\"{target}\"}} 1"
        ))
    };
    rig.a.set_default_scenario(Some("error-503"));
    for _ in 0..2 {
        let r = post_messages(&rig.t, &messages("smart", false), &[]).await;
        assert_eq!(r.status(), 200);
    }
    let m = metrics(&rig.t).await;
    assert!(state(&m, "open"), "{m}");
    assert!(
        m.contains(&format!(
            "tollgate_route_breaker_transitions_total{{target=\"{target}\",to=\"open\"}} 1"
        )),
        "{m}"
    );
    // `tollgate status` asks the running proxy.
    let config = rig.t.log_path.parent().unwrap().join("tollgate.toml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["status", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("smart (ordered): anthropic/claude-sonnet-4-5, backup/gpt-5"),
        "{text}"
    );
    let row = text
        .lines()
        .find(|l| l.starts_with(target))
        .unwrap_or_else(|| panic!("{text}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cols[1..5], ["open", "1", "0", "0"], "{text}");
    // Open: skipped without being asked.
    let r = post_messages(&rig.t, &messages("smart", false), &[]).await;
    assert_eq!(header(&r, "x-tollgate-attempts"), "backup/gpt-5=200");
    assert_eq!(rig.a.requests().len(), 2);
    // The provider recovers; after open_for the breaker lets a probe through.
    rig.a.set_default_scenario(None);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let m = metrics(&rig.t).await;
    assert!(state(&m, "half_open"), "{m}");
    let r = post_messages(&rig.t, &messages("smart", false), &[]).await;
    assert_eq!(header(&r, "x-tollgate-attempts"), format!("{target}=200"));
    let m = metrics(&rig.t).await;
    assert!(state(&m, "closed"), "{m}");
    assert!(
        m.contains(&format!(
            "tollgate_route_breaker_transitions_total{{target=\"{target}\",to=\"closed\"}} 1"
        )),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cheapest_fastest_auto_and_the_fallback_header() {
    let rig = rig(r#"
[aliases.thrifty]
policy = "cheapest"
targets = ["anthropic/claude-opus-4-1", "backup/gpt-5-mini"]

[aliases.quick]
policy = "fastest"
targets = ["anthropic/claude-sonnet-4-5", "backup/gpt-5"]

[routing]
default_alias = "thrifty"
header_targets = ["backup/*", "anthropic/claude-haiku-4-5"]

[routing.accounts.locked]
header_targets = []
"#)
    .await;
    // cheapest: gpt-5-mini ($0.25/$2) before claude-opus-4-1 ($15/$75).
    let r = post_messages(&rig.t, &messages("thrifty", false), &[]).await;
    assert_eq!(header(&r, "x-tollgate-attempts"), "backup/gpt-5-mini=200");
    // auto → the default alias.
    let r = post_messages(&rig.t, &messages("auto", false), &[]).await;
    assert_eq!(header(&r, "x-tollgate-attempts"), "backup/gpt-5-mini=200");

    // fastest: unmeasured targets first (config order), then the faster.
    rig.a.set_default_ttfb_ms(300);
    for expected in ["anthropic/claude-sonnet-4-5", "backup/gpt-5"] {
        let r = post_messages(&rig.t, &messages("quick", false), &[]).await;
        assert_eq!(header(&r, "x-tollgate-attempts"), format!("{expected}=200"));
    }
    for _ in 0..2 {
        let r = post_messages(&rig.t, &messages("quick", false), &[]).await;
        assert_eq!(header(&r, "x-tollgate-attempts"), "backup/gpt-5=200");
    }
    rig.a.set_default_ttfb_ms(0);

    // x-tollgate-fallback adds targets to a native model.
    rig.a.set_default_scenario(Some("error-500"));
    let r = post_messages(
        &rig.t,
        &messages("claude-sonnet-4-5", false),
        &[("x-tollgate-fallback", "backup/gpt-5-nano")],
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "x-tollgate-attempts"),
        "anthropic/claude-sonnet-4-5=500, backup/gpt-5-nano=200"
    );
    // A target outside header_targets: 403 in the client's shape.
    let r = post_messages(
        &rig.t,
        &messages("claude-sonnet-4-5", false),
        &[("x-tollgate-fallback", "anthropic/claude-opus-4-1")],
    )
    .await;
    assert_eq!(r.status(), 403);
    assert_eq!(header(&r, "x-tollgate-error"), "fallback_not_allowed");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "permission_error");
    // An account whose header_targets is empty.
    let r = post_messages(
        &rig.t,
        &messages("claude-sonnet-4-5", false),
        &[
            ("x-tollgate-fallback", "backup/gpt-5"),
            ("x-tollgate-account", "locked"),
        ],
    )
    .await;
    assert_eq!(r.status(), 403);
    // An unknown provider: 400.
    let r = post_messages(
        &rig.t,
        &messages("claude-sonnet-4-5", false),
        &[("x-tollgate-fallback", "nowhere/x")],
    )
    .await;
    assert_eq!(r.status(), 400);
    assert_eq!(header(&r, "x-tollgate-error"), "unknown_fallback_provider");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_reserves_the_dearest_target() {
    // One request's worst case at gpt-5-nano fits; at claude-opus-4-1 it does not.
    let rig = rig(r#"
[aliases.mixed]
targets = ["backup/gpt-5-nano", "anthropic/claude-opus-4-1"]

[aliases.nano]
targets = ["backup/gpt-5-nano"]

[[budgets]]
name = "per-request"
scope = "account:default"
period = "request"
limit_usd = "0.001"
"#)
    .await;
    let r = post_messages(&rig.t, &messages("nano", false), &[]).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let r = post_messages(&rig.t, &messages("mixed", false), &[]).await;
    assert_eq!(r.status(), 402);
    assert!(rig.a.requests().is_empty());
    assert_eq!(rig.b.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_sdks_are_served_across_dialects() {
    let anthropic_py = sdk_python("anthropic-current").await;
    let openai_py = sdk_python("openai").await;
    let rig = rig(r#"
[aliases.gpt]
targets = ["backup/gpt-5"]

[aliases.claude]
targets = ["anthropic/claude-sonnet-4-5"]
"#)
    .await;
    let usage = "input=40,output=12";
    let plan = json!([
        {"name": "create", "op": "create", "model": "gpt", "usage": usage},
        {"name": "stream_text", "op": "stream_helper", "model": "gpt", "usage": usage},
        {"name": "stream_tools", "op": "stream_helper", "model": "gpt", "scenario": "tool_use", "usage": usage},
        {"name": "create_tools", "op": "create", "model": "gpt", "scenario": "tool_use", "usage": usage},
    ]);
    let run = run_script(
        &anthropic_py,
        "anthropic_calls.py",
        &[
            ("ANTHROPIC_API_KEY", CLIENT_KEY),
            ("ANTHROPIC_BASE_URL", &rig.t.url()),
        ],
        &plan,
    )
    .await;
    let create = run.ok("create");
    assert_eq!(create["message"]["model"], "gpt-5");
    assert_eq!(create["message"]["usage"]["input_tokens"], 40);
    assert_eq!(create["message"]["usage"]["output_tokens"], 12);
    assert_eq!(create["headers"]["x-tollgate-attempts"], "backup/gpt-5=200");
    let text = run.ok("stream_text");
    assert!(text["text"].as_str().unwrap().len() > 1, "{text}");
    assert_eq!(text["message"]["stop_reason"], "end_turn");
    assert_eq!(text["message"]["usage"]["output_tokens"], 12);
    for name in ["stream_tools", "create_tools"] {
        let m = &run.ok(name)["message"];
        assert_eq!(m["stop_reason"], "tool_use", "{name}: {m}");
        let tool = m["content"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["type"] == "tool_use")
            .unwrap_or_else(|| panic!("{name}: {m}"));
        assert!(tool["input"].is_object(), "{name}: {m}");
        assert!(!tool["name"].as_str().unwrap().is_empty());
    }

    let plan = json!([
        {"name": "create", "op": "create", "model": "claude", "usage": usage},
        {"name": "stream", "op": "create_stream", "model": "claude", "usage": usage, "include_usage": true},
        {"name": "stream_plain", "op": "create_stream", "model": "claude", "usage": usage},
        {"name": "helper_tools", "op": "stream_helper", "model": "claude", "scenario": "tool_use", "usage": usage},
    ]);
    let run = run_script(
        &openai_py,
        "openai_calls.py",
        &[
            ("OPENAI_API_KEY", CLIENT_KEY),
            ("OPENAI_BASE_URL", &format!("{}/v1", rig.t.url())),
        ],
        &plan,
    )
    .await;
    let create = run.ok("create");
    assert_eq!(create["completion"]["object"], "chat.completion");
    assert_eq!(create["completion"]["usage"]["prompt_tokens"], 40);
    assert_eq!(create["completion"]["usage"]["completion_tokens"], 12);
    assert_eq!(
        create["headers"]["x-tollgate-attempts"],
        "anthropic/claude-sonnet-4-5=200"
    );
    let stream = run.ok("stream");
    assert_eq!(stream["finish_reason"], "stop");
    let last = stream["chunks"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["usage"]["completion_tokens"], 12, "{last}");
    // Without include_usage the client gets no usage chunk.
    let plain = run.ok("stream_plain");
    assert!(plain["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["usage"].is_null()));
    let tools = &run.ok("helper_tools")["completion"];
    assert_eq!(
        tools["choices"][0]["finish_reason"], "tool_calls",
        "{tools}"
    );
    let call = &tools["choices"][0]["message"]["tool_calls"][0];
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert!(args.is_object(), "{call}");

    assert_credentials(&rig);
    // One event per call, each with the upstream's exact tokens.
    let ev = events(&rig.t, 8).await;
    assert_eq!(ev.len(), 8, "{ev:#?}");
    for e in &ev {
        assert_eq!(e["status"], "ok", "{e}");
        assert_eq!(e["input_tokens"], 40, "{e}");
        assert_eq!(e["output_tokens"], 12, "{e}");
        assert!(e["cost_nusd"].as_u64().unwrap() > 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_keys_on_the_clients_request_whichever_target_answered() {
    let rig = rig_with(TWO_TARGETS, true).await;
    rig.a.set_default_scenario(Some("error-529"));
    // An OpenAI client: the Anthropic target fails, the OpenAI one answers.
    let send_chat = || async {
        client()
            .post(format!("{}/v1/chat/completions", rig.t.url()))
            .bearer_auth(CLIENT_KEY)
            .json(&chat("smart", false))
            .send()
            .await
            .unwrap()
    };
    let r = send_chat().await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-tollgate-cache"), "miss");
    let first: Value = r.json().await.unwrap();
    assert_eq!(first["object"], "chat.completion");
    // The first target is healthy again: the answer still comes from the cache.
    rig.a.set_default_scenario(None);
    let r = send_chat().await;
    assert_eq!(header(&r, "x-tollgate-cache"), "hit");
    let again: Value = r.json().await.unwrap();
    assert_eq!(again["choices"], first["choices"]);
    assert_eq!(rig.b.requests().len(), 1);

    // An Anthropic stream answered by the OpenAI target (translated), then
    // replayed from the cache in the client's own dialect.
    rig.a.set_default_scenario(Some("error-529"));
    let body = json!({"model": "smart", "max_tokens": 100, "stream": true,
                      "messages": [{"role": "user", "content": "Stream me"}]});
    let r = post_messages(&rig.t, &body, &[]).await;
    assert_eq!(header(&r, "x-tollgate-cache"), "miss");
    let live = r.text().await.unwrap();
    assert!(live.contains("event: message_stop"), "{live}");
    // The closing receipt names the attempts.
    assert!(
        live.contains(r#""attempts":"anthropic/claude-sonnet-4-5=529, backup/gpt-5=200""#),
        "{live}"
    );
    rig.a.set_default_scenario(None);
    let r = post_messages(&rig.t, &body, &[]).await;
    assert_eq!(header(&r, "x-tollgate-cache"), "hit");
    let replayed = r.text().await.unwrap();
    assert!(replayed.contains("event: message_start"), "{replayed}");
    assert!(replayed.contains("event: message_stop"), "{replayed}");
    let text = |sse: &str| -> String {
        sse.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .filter_map(|v| v["delta"]["text"].as_str().map(str::to_string))
            .collect()
    };
    assert!(!text(&live).is_empty());
    assert_eq!(text(&replayed), text(&live));
    assert_eq!(rig.b.requests().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aliases_synced_from_the_control_endpoint_route_requests() {
    let control = Control::start("");
    control.admin_json(&["accounts", "create", "acme", "--plan", "pro"]);
    let cred = control.admin_secret(&["sidecars", "create", "s", "--account", "acme"]);
    let put = |name: &'static str, body: Value| {
        let control = &control;
        async move {
            control
                .call(
                    reqwest::Method::PUT,
                    &format!("/api/v1/aliases/{name}"),
                    Some(ADMIN_TOKEN),
                    Some(body),
                )
                .await
        }
    };
    let (status, v) = put(
        "fleet",
        json!({"targets": ["backup/gpt-5", {"target": "anthropic/claude-sonnet-4-5", "max_tokens": 50}]}),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["policy"], "ordered");
    // Bad specs are refused with the field named.
    let (status, v) = put("bad", json!({"targets": ["no-model"]})).await;
    assert_eq!(status, 400, "{v}");
    assert!(v.to_string().contains("targets[0]"), "{v}");
    // A control alias named like a local one does not replace it (made
    // with the CLI this time).
    let out = control.admin(
        ADMIN_TOKEN,
        &[
            "aliases",
            "put",
            "local",
            "--target",
            "backup/gpt-5-nano",
            "--target",
            "backup/gpt-5",
            "--max-tokens",
            "backup/gpt-5=70",
            "--policy",
            "cheapest",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("backup/gpt-5-nano,backup/gpt-5≤70"), "{text}");
    assert!(text.contains("cheapest"), "{text}");
    let control_url = control.url();
    let rig = rig_full(
        "[aliases.local]\ntargets = [\"anthropic/claude-haiku-4-5\"]\n",
        false,
        |b| {
            b.top(&format!("control_url = \"{control_url}\""))
                .env("TOLLGATE_CONTROL_CREDENTIAL", &cred)
        },
    )
    .await;
    let acme = [("x-tollgate-account", "acme")];
    let r = post_messages(&rig.t, &messages("fleet", false), &acme).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-tollgate-attempts"), "backup/gpt-5=200");
    let r = post_messages(&rig.t, &messages("local", false), &acme).await;
    assert_eq!(
        header(&r, "x-tollgate-attempts"),
        "anthropic/claude-haiku-4-5=200"
    );

    // A change reaches the running sidecar through its long poll.
    let (status, _) = put(
        "fleet",
        json!({"policy": "ordered", "targets": [{"target": "anthropic/claude-sonnet-4-5", "max_tokens": 50}]}),
    )
    .await;
    assert_eq!(status, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = post_messages(&rig.t, &messages("fleet", false), &acme).await;
        if header(&r, "x-tollgate-attempts") == "anthropic/claude-sonnet-4-5=200" {
            break;
        }
        assert!(Instant::now() < deadline, "the new alias never arrived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The alias's cap went upstream.
    let last = rig.a.requests().pop().unwrap();
    let sent: Value = serde_json::from_slice(&last.body).unwrap();
    assert_eq!(sent["max_tokens"], 50);
    assert_eq!(sent["model"], "claude-sonnet-4-5");
    let routes: Value = reqwest::get(format!("{}/routes", rig.t.admin_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        routes["aliases"]["fleet"]["targets"],
        json!(["anthropic/claude-sonnet-4-5"])
    );
    assert_eq!(
        routes["aliases"]["local"]["targets"],
        json!(["anthropic/claude-haiku-4-5"])
    );

    // Deleted: the model is sent as named again, unrouted.
    let (status, _) = control
        .call(
            reqwest::Method::DELETE,
            "/api/v1/aliases/fleet",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = post_messages(&rig.t, &messages("fleet", false), &acme).await;
        if header(&r, "x-tollgate-attempts").is_empty() {
            assert_eq!(header(&r, "x-tollgate-model"), "fleet");
            break;
        }
        assert!(Instant::now() < deadline, "the deletion never arrived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, audit) = control
        .call(
            reqwest::Method::GET,
            "/api/v1/audit",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    let text = audit.to_string();
    for action in ["alias.create", "alias.update", "alias.delete"] {
        assert!(text.contains(action), "{action} not audited: {text}");
    }
}
