//! Translation overhead, in process: what `dialect::translate` costs per
//! request, per non-streamed answer and per streamed event, both directions.
//!
//! ```text
//! CARGO_TARGET_DIR=/work/main/target nice -n 19 cargo bench --bench translate
//! TOLLGATE_BENCH_SAMPLES=100000 cargo bench --bench translate
//! ```
//!
//! Inputs: a realistic request (system prompt, two tools, five turns with a
//! tool call and its result), an answer with text and a tool call, and a
//! 50-event stream (text deltas, then a tool call whose arguments come in
//! ten fragments, then the finish and usage). Each sample times one
//! translation (for streams: all 50 events, already parsed by the SSE
//! parser, through a fresh translator, reported per event), after a
//! warm-up; reported are p50 and mean. Not run by CI.

use std::hint::black_box;
use std::time::Instant;

use bytes::BytesMut;
use serde_json::json;
use tollgate::dialect::sse::SseParser;
use tollgate::dialect::translate::{self, StreamTranslator, Target};
use tollgate::dialect::Dialect;

/// Times `f` `samples` times after `samples / 10` warm-up runs; returns
/// (p50, mean) in nanoseconds, divided by `per`.
fn measure(samples: usize, per: f64, mut f: impl FnMut()) -> (f64, f64) {
    for _ in 0..samples / 10 {
        f();
    }
    let mut times: Vec<u128> = Vec::with_capacity(samples);
    for _ in 0..samples {
        let start = Instant::now();
        f();
        times.push(start.elapsed().as_nanos());
    }
    times.sort_unstable();
    let p50 = times[times.len() / 2] as f64 / per;
    let mean = times.iter().sum::<u128>() as f64 / times.len() as f64 / per;
    (p50, mean)
}

fn report(what: &str, unit: &str, (p50, mean): (f64, f64)) {
    println!("{what:<48} p50 {p50:>9.0} ns{unit:<7} mean {mean:>9.0} ns{unit}");
}

fn anthropic_request() -> Vec<u8> {
    let tool = |name: &str| {
        json!({"name": name, "description": "Looks something up for the user; returns JSON.",
            "input_schema": {"type": "object", "properties": {
                "query": {"type": "string", "description": "What to look up"},
                "limit": {"type": "integer", "minimum": 1, "maximum": 50}},
                "required": ["query"]}})
    };
    let body = json!({
        "model": "claude-sonnet-5-5", "max_tokens": 2048, "stream": true,
        "system": [{"type": "text", "text": "You are a careful research assistant. Cite the tools you used. ".repeat(8),
            "cache_control": {"type": "ephemeral"}}],
        "tools": [tool("search_docs"), tool("search_tickets")],
        "tool_choice": {"type": "auto"},
        "metadata": {"user_id": "user-1234"},
        "messages": [
            {"role": "user", "content": "Why did the nightly export fail on Tuesday? ".repeat(4)},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Let me check the tickets first."},
                {"type": "tool_use", "id": "toolu_01", "name": "search_tickets",
                    "input": {"query": "nightly export failure tuesday", "limit": 5}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01",
                "content": "[{\"id\": 4411, \"title\": \"Export job OOM\", \"status\": \"open\"}] ".repeat(6)}]},
            {"role": "assistant", "content": "Ticket 4411 says the export job ran out of memory. ".repeat(3)},
            {"role": "user", "content": "What is the documented memory limit for it?"},
        ],
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

fn openai_completion() -> Vec<u8> {
    let body = json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-5.1",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "logprobs": null, "message": {
            "role": "assistant", "content": "The limit is set in the job spec. ".repeat(6), "refusal": null,
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "search_docs",
                "arguments": "{\"query\": \"export job memory limit\", \"limit\": 3}"}}]}}],
        "usage": {"prompt_tokens": 1830, "completion_tokens": 96, "total_tokens": 1926,
            "prompt_tokens_details": {"cached_tokens": 1536}}});
    serde_json::to_vec(&body).unwrap_or_default()
}

fn anthropic_message() -> Vec<u8> {
    let body = json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-5-5",
        "content": [{"type": "text", "text": "The limit is set in the job spec. ".repeat(6)},
            {"type": "tool_use", "id": "toolu_2", "name": "search_docs",
                "input": {"query": "export job memory limit", "limit": 3}}],
        "stop_reason": "tool_use", "stop_sequence": null,
        "usage": {"input_tokens": 294, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 1536,
            "output_tokens": 96}});
    serde_json::to_vec(&body).unwrap_or_default()
}

/// 50 OpenAI events: role, 35 text deltas, a tool call header and 10
/// argument fragments, finish, usage, `[DONE]`.
fn openai_stream() -> Vec<u8> {
    let chunk = |delta: serde_json::Value, finish: serde_json::Value| {
        json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-5.1",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
    };
    let mut events = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        json!(null),
    )];
    for i in 0..35 {
        events.push(chunk(json!({"content": format!(" word{i}")}), json!(null)));
    }
    events.push(chunk(
        json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
            "function": {"name": "search_docs", "arguments": ""}}]}),
        json!(null),
    ));
    let args = "{\"query\": \"export job memory limit\", \"limit\": 3}";
    for piece in args.as_bytes().chunks(args.len().div_ceil(10)) {
        let piece = String::from_utf8_lossy(piece);
        events.push(chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}),
            json!(null),
        ));
    }
    events.push(chunk(json!({}), json!("tool_calls")));
    events.push(
        json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
        "model": "gpt-5.1", "choices": [], "usage": {"prompt_tokens": 1830, "completion_tokens": 96,
        "total_tokens": 1926, "prompt_tokens_details": {"cached_tokens": 1536}}}),
    );
    let mut out = String::new();
    for event in &events {
        out.push_str(&format!("data: {event}\n\n"));
    }
    out.push_str("data: [DONE]\n\n");
    out.into_bytes()
}

/// 50 Anthropic events: message_start, a text block with 33 deltas, a
/// tool_use block with 10 argument fragments, message_delta, message_stop.
fn anthropic_stream() -> Vec<u8> {
    let mut events = vec![(
        "message_start",
        json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
            "content": [], "model": "claude-sonnet-5-5", "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 294, "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 1536, "output_tokens": 1}}}),
    )];
    events.push((
        "content_block_start",
        json!({"type": "content_block_start", "index": 0,
        "content_block": {"type": "text", "text": ""}}),
    ));
    for i in 0..33 {
        events.push((
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": format!(" word{i}")}}),
        ));
    }
    events.push((
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    events.push(("content_block_start", json!({"type": "content_block_start", "index": 1,
        "content_block": {"type": "tool_use", "id": "toolu_2", "name": "search_docs", "input": {}}})));
    let args = "{\"query\": \"export job memory limit\", \"limit\": 3}";
    for piece in args.as_bytes().chunks(args.len().div_ceil(10)) {
        events.push((
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": String::from_utf8_lossy(piece)}}),
        ));
    }
    events.push((
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 1}),
    ));
    events.push(("message_delta", json!({"type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 96}})));
    events.push(("message_stop", json!({"type": "message_stop"})));
    let mut out = String::new();
    for (name, data) in &events {
        out.push_str(&format!("event: {name}\ndata: {data}\n\n"));
    }
    out.into_bytes()
}

/// The stream's events as the SSE parser dispatches them.
fn parsed(body: &[u8]) -> Vec<(String, String)> {
    let mut events = Vec::new();
    let mut parser = SseParser::new();
    parser.feed(body, |ev| {
        events.push((ev.name.to_owned(), ev.data.to_owned()))
    });
    events
}

fn main() {
    // An environment variable, not a flag: `cargo bench` passes its own flags.
    let samples = std::env::var("TOLLGATE_BENCH_SAMPLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    println!(
        "translate: {samples} samples per figure (after {} warm-up runs)",
        samples / 10
    );

    let a_req = anthropic_request();
    let to_openai = Target::new("gpt-5.1", "openai");
    let o_req = match translate::request(Dialect::Anthropic, &a_req, &to_openai) {
        Ok(t) => t.body.to_vec(),
        Err(e) => {
            eprintln!("the bench request does not translate: {e}");
            return;
        }
    };
    let to_anthropic = Target::new("claude-sonnet-5-5", "anthropic");
    println!(
        "request bodies: Anthropic {} B, OpenAI {} B",
        a_req.len(),
        o_req.len()
    );
    // For scale: what any JSON rewrite of this body costs (parse + encode).
    report(
        "baseline: parse + re-encode the Anthropic body",
        "",
        measure(samples, 1.0, || {
            let v: serde_json::Value =
                serde_json::from_slice(black_box(&a_req)).unwrap_or_default();
            black_box(serde_json::to_vec(&v).unwrap_or_default());
        }),
    );
    report(
        "request  Anthropic -> OpenAI",
        "",
        measure(samples, 1.0, || {
            let _ = black_box(translate::request(
                Dialect::Anthropic,
                black_box(&a_req),
                &to_openai,
            ));
        }),
    );
    report(
        "request  OpenAI -> Anthropic",
        "",
        measure(samples, 1.0, || {
            let _ = black_box(translate::request(
                Dialect::OpenAi,
                black_box(&o_req),
                &to_anthropic,
            ));
        }),
    );

    let completion = openai_completion();
    let message = anthropic_message();
    report(
        "response OpenAI chat.completion -> Anthropic",
        "",
        measure(samples, 1.0, || {
            let _ = black_box(translate::response(
                Dialect::Anthropic,
                black_box(&completion),
                1,
            ));
        }),
    );
    report(
        "response Anthropic message -> OpenAI",
        "",
        measure(samples, 1.0, || {
            let _ = black_box(translate::response(Dialect::OpenAi, black_box(&message), 1));
        }),
    );

    for (what, client, body) in [
        (
            "stream   OpenAI chunks -> Anthropic events",
            Dialect::Anthropic,
            openai_stream(),
        ),
        (
            "stream   Anthropic events -> OpenAI chunks",
            Dialect::OpenAi,
            anthropic_stream(),
        ),
    ] {
        let events = parsed(&body);
        assert_eq!(events.len(), 50, "{what}");
        let mut out = BytesMut::with_capacity(16 * 1024);
        let per = events.len() as f64;
        report(
            what,
            "/event",
            measure(samples, per, || {
                out.clear();
                let mut t = StreamTranslator::new(client, true, 1);
                for (name, data) in &events {
                    t.on_event(name, data, &mut out);
                }
                black_box(t.finish(&mut out));
            }),
        );
    }
}
