//! Tests of the tap driver over both dialects.

use bytes::Bytes;

use crate::dialect::json::usd_float_to_nusd;
use crate::dialect::openai::stream::KeyFinders;
use crate::dialect::sse::tests::{ANTHROPIC_BASIC, ANTHROPIC_TOOL_BLOCKS};
use crate::dialect::tap::{usage_from_json, JsonSummary, StreamTap};
use crate::dialect::{Dialect, Usage};
// --- helpers ---

/// Feeds `pieces` then finishes; returns the forwarded bytes and the
/// input length after which `complete()` first held.
fn run(tap: &mut StreamTap, pieces: &[&[u8]]) -> (Vec<u8>, Option<usize>) {
    let mut out = Vec::new();
    let mut fed = 0;
    let mut completed_at = None;
    for piece in pieces {
        fed += piece.len();
        out.extend_from_slice(&tap.feed(Bytes::copy_from_slice(piece)));
        if tap.complete() && completed_at.is_none() {
            completed_at = Some(fed);
        }
    }
    out.extend_from_slice(&tap.finish());
    (out, completed_at)
}

/// All the ways the tests cut a stream: unsplit, every single split
/// point, byte by byte, and some pseudo-random multi-way splits.
fn splits(input: &[u8]) -> Vec<Vec<&[u8]>> {
    let mut all = vec![vec![input]];
    for k in 0..=input.len() {
        let (a, b) = input.split_at(k);
        all.push(vec![a, b]);
    }
    all.push(input.chunks(1).collect());
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    for _ in 0..100 {
        let mut pieces = Vec::new();
        let mut rest = input;
        while !rest.is_empty() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let n = ((seed % 40) as usize).min(rest.len());
            let (a, b) = rest.split_at(n);
            pieces.push(a);
            rest = b;
        }
        all.push(pieces);
    }
    all
}

fn usage(input: u64, output: u64, write: u64, write_1h: u64, read: u64) -> Usage {
    Usage {
        input_tokens: input,
        output_tokens: output,
        cache_creation_input_tokens: write,
        cache_creation_1h_input_tokens: write_1h,
        cache_read_input_tokens: read,
        reported_cost_nusd: None,
        fast: false,
        us_only: false,
    }
}

fn sse(events: &[(&str, &str)]) -> String {
    events
        .iter()
        .map(|(name, data)| format!("event: {name}\ndata: {data}\n\n"))
        .collect()
}

// --- Anthropic ---

#[test]
fn anthropic_basic_at_every_split() {
    let input = ANTHROPIC_BASIC.as_bytes();
    for pieces in splits(input) {
        let mut tap = StreamTap::new(Dialect::Anthropic, false);
        let (out, completed_at) = run(&mut tap, &pieces);
        assert_eq!(out, input);
        assert_eq!(tap.usage(), usage(11, 6, 0, 0, 0));
        assert!(tap.saw_usage());
        assert_eq!(
            completed_at,
            Some(input.len()),
            "complete only at message_stop's end"
        );
        assert_eq!(tap.model(), Some("claude-sonnet-4-5-20250929"));
        assert_eq!(
            tap.response_id(),
            Some("msg_4QpJur2dWWDjF6C758FbBw5vm12BaVipnK")
        );
        assert_eq!(tap.error(), None);
    }
}

#[test]
fn anthropic_feed_is_zero_copy_and_strip_is_ignored() {
    let mut tap = StreamTap::new(Dialect::Anthropic, true);
    let chunk = Bytes::from_static(ANTHROPIC_BASIC.as_bytes());
    let (head, tail) = (chunk.slice(..100), chunk.slice(100..));
    let out = tap.feed(head.clone());
    assert_eq!(out.as_ptr(), head.as_ptr());
    assert_eq!(out.len(), head.len());
    let out = tap.feed(tail.clone());
    assert_eq!((out.as_ptr(), out.len()), (tail.as_ptr(), tail.len()));
    assert!(tap.finish().is_empty());
    assert!(tap.complete());
}

#[test]
fn anthropic_message_start_alone_and_input_overrides() {
    // Stream cut before message_delta: the message_start counts stand.
    let start_end = ANTHROPIC_BASIC.find("event: content_block_start").unwrap();
    let mut tap = StreamTap::new(Dialect::Anthropic, false);
    tap.feed(Bytes::from_static(&ANTHROPIC_BASIC.as_bytes()[..start_end]));
    assert_eq!(tap.usage(), usage(11, 1, 0, 0, 0));
    assert!(tap.saw_usage() && !tap.complete());

    // The tool-use variant's message_delta repeats input/cache counts.
    let stream = format!("{}{}", &ANTHROPIC_BASIC[..start_end], ANTHROPIC_TOOL_BLOCKS);
    for pieces in splits(stream.as_bytes()) {
        let mut tap = StreamTap::new(Dialect::Anthropic, false);
        let (out, completed_at) = run(&mut tap, &pieces);
        assert_eq!(out, stream.as_bytes());
        assert_eq!(tap.usage(), usage(377, 65, 0, 0, 0));
        assert_eq!(completed_at, None, "no message_stop");
    }
}

#[test]
fn anthropic_usage_is_cumulative_last_value_wins() {
    let stream = sse(&[
        (
            "message_start",
            r#"{"type":"message_start","message":{"id":"msg_1","model":"claude-opus-4-8","usage":{"input_tokens":50,"cache_creation_input_tokens":400,"cache_read_input_tokens":1000,"cache_creation":{"ephemeral_5m_input_tokens":100,"ephemeral_1h_input_tokens":300},"output_tokens":1}}}"#,
        ),
        ("ping", r#"{"type": "ping"}"#),
        (
            "message_delta",
            r#"{"type":"message_delta","delta":{},"usage":{"output_tokens":10}}"#,
        ),
        (
            "message_delta",
            r#"{"type":"message_delta","delta":{},"usage":{"output_tokens":25,"input_tokens":null,"cache_read_input_tokens":1200}}"#,
        ),
        ("message_stop", r#"{"type":"message_stop"}"#),
    ]);
    for pieces in splits(stream.as_bytes()) {
        let mut tap = StreamTap::new(Dialect::Anthropic, false);
        run(&mut tap, &pieces);
        assert_eq!(tap.usage(), usage(50, 25, 400, 300, 1200));
        assert!(tap.complete());
        assert_eq!(tap.model(), Some("claude-opus-4-8"));
        assert_eq!(tap.response_id(), Some("msg_1"));
    }
}

#[test]
fn anthropic_cache_breakdown_rules() {
    let run_one = |start_usage: &str, delta_usage: &str| {
        let stream = sse(&[
            (
                "message_start",
                &format!(
                    r#"{{"type":"message_start","message":{{"id":"m","model":"x","usage":{start_usage}}}}}"#
                ),
            ),
            (
                "message_delta",
                &format!(r#"{{"type":"message_delta","delta":{{}},"usage":{delta_usage}}}"#),
            ),
        ]);
        let mut tap = StreamTap::new(Dialect::Anthropic, false);
        tap.feed(Bytes::from(stream));
        tap.usage()
    };
    // No breakdown: all writes at 5 m.
    assert_eq!(
        run_one(
            r#"{"input_tokens":5,"cache_creation_input_tokens":700,"output_tokens":1}"#,
            r#"{"output_tokens":2}"#
        ),
        usage(5, 2, 700, 0, 0)
    );
    // Breakdown in message_delta overrides message_start's.
    assert_eq!(
        run_one(
            r#"{"input_tokens":5,"cache_creation_input_tokens":700,"cache_creation":{"ephemeral_5m_input_tokens":700,"ephemeral_1h_input_tokens":0},"output_tokens":1}"#,
            r#"{"output_tokens":2,"cache_creation_input_tokens":900,"cache_creation":{"ephemeral_5m_input_tokens":100,"ephemeral_1h_input_tokens":800}}"#
        ),
        usage(5, 2, 900, 800, 0)
    );
    // Breakdown without a total: the total is its sum.
    assert_eq!(
        run_one(
            r#"{"input_tokens":5,"cache_creation":{"ephemeral_5m_input_tokens":10,"ephemeral_1h_input_tokens":20},"output_tokens":1}"#,
            r#"{"output_tokens":2}"#
        ),
        usage(5, 2, 30, 20, 0)
    );
    // Odd values do not lose the rest: a float count, a string, an object.
    assert_eq!(
        run_one(
            r#"{"input_tokens":5.0,"cache_read_input_tokens":"7","cache_creation_input_tokens":{"x":1},"output_tokens":1}"#,
            r#"{"output_tokens":2}"#
        ),
        usage(5, 2, 0, 0, 7)
    );
}

#[test]
fn anthropic_mid_stream_error() {
    let start_end = ANTHROPIC_BASIC.find("event: content_block_start").unwrap();
    let stream = format!(
        "{}event: error\ndata: {{\"type\": \"error\", \"error\": {{\"type\": \"overloaded_error\", \"message\": \"Overloaded\"}}}}\n\n",
        &ANTHROPIC_BASIC[..start_end]
    );
    for pieces in splits(stream.as_bytes()) {
        let mut tap = StreamTap::new(Dialect::Anthropic, false);
        run(&mut tap, &pieces);
        assert_eq!(tap.error(), Some("overloaded_error"));
        assert!(!tap.complete());
        assert_eq!(tap.usage(), usage(11, 1, 0, 0, 0));
    }
    let mut tap = StreamTap::new(Dialect::Anthropic, false);
    tap.feed(Bytes::from_static(b"event: error\ndata: not json\n\n"));
    assert_eq!(tap.error(), Some("error"));
}

#[test]
fn anthropic_ignores_unnamed_and_unknown_events() {
    let stream = concat!(
        "data: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":9}}}\n\n",
        "event: future_event\ndata: {\"usage\":{\"input_tokens\":9}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"message_stop\"}\n\n",
        "data: [DONE]\n\n",
    );
    let mut tap = StreamTap::new(Dialect::Anthropic, false);
    tap.feed(Bytes::from_static(stream.as_bytes()));
    assert!(!tap.saw_usage() && !tap.complete());
    assert_eq!(tap.usage(), Usage::default());
}

#[test]
fn openrouter_messages_cost() {
    let stream = sse(&[
        (
            "message_start",
            r#"{"type":"message_start","message":{"id":"gen-1","model":"anthropic/claude-haiku-4.5","usage":{"input_tokens":3,"output_tokens":1}}}"#,
        ),
        (
            "message_delta",
            r#"{"type":"message_delta","delta":{},"usage":{"output_tokens":4,"cost":0.0012}}"#,
        ),
        ("message_stop", r#"{"type":"message_stop"}"#),
    ]);
    let mut tap = StreamTap::new(Dialect::Anthropic, false);
    tap.feed(Bytes::from(stream));
    assert_eq!(tap.usage().reported_cost_nusd, Some(1_200_000));
    assert_eq!(tap.response_id(), Some("gen-1"));
}

// --- OpenAI ---

const OPENAI_HEAD: &str = concat!(
    "data: {\"id\":\"chatcmpl-ABfw031mOJeYCSHe4yI2ZjOA6kMJL\",\"object\":\"chat.completion.chunk\",\"created\":1727346168,\"model\":\"gpt-4o-2024-08-06\",\"system_fingerprint\":\"fp_5050236cbd\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null},\"logprobs\":null,\"finish_reason\":null}]}\n",
    "\n",
    "data: {\"id\":\"chatcmpl-ABfw031mOJeYCSHe4yI2ZjOA6kMJL\",\"object\":\"chat.completion.chunk\",\"created\":1727346168,\"model\":\"gpt-4o-2024-08-06\",\"system_fingerprint\":\"fp_5050236cbd\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"logprobs\":null,\"finish_reason\":null}]}\n",
    "\n",
    "data: {\"id\":\"chatcmpl-ABfw031mOJeYCSHe4yI2ZjOA6kMJL\",\"object\":\"chat.completion.chunk\",\"created\":1727346168,\"model\":\"gpt-4o-2024-08-06\",\"system_fingerprint\":\"fp_5050236cbd\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}]}\n",
    "\n",
);
const OPENAI_USAGE: &str = "data: {\"id\":\"chatcmpl-ABfw031mOJeYCSHe4yI2ZjOA6kMJL\",\"object\":\"chat.completion.chunk\",\"created\":1727346168,\"model\":\"gpt-4o-2024-08-06\",\"system_fingerprint\":\"fp_5050236cbd\",\"choices\":[],\"usage\":{\"prompt_tokens\":14,\"completion_tokens\":30,\"total_tokens\":44,\"completion_tokens_details\":{\"reasoning_tokens\":0}}}\n\n";
const OPENAI_DONE: &str = "data: [DONE]\n\n";

fn openai_stream() -> String {
    format!("{OPENAI_HEAD}{OPENAI_USAGE}{OPENAI_DONE}")
}

#[test]
fn openai_strip_removes_exactly_the_usage_chunk_at_every_split() {
    let input = openai_stream();
    let expected = format!("{OPENAI_HEAD}{OPENAI_DONE}");
    for pieces in splits(input.as_bytes()) {
        let mut tap = StreamTap::new(Dialect::OpenAi, true);
        let (out, completed_at) = run(&mut tap, &pieces);
        assert_eq!(String::from_utf8(out).unwrap(), expected);
        assert_eq!(tap.usage(), usage(14, 30, 0, 0, 0));
        assert_eq!(completed_at, Some(input.len()));
        assert_eq!(tap.model(), Some("gpt-4o-2024-08-06"));
        assert_eq!(
            tap.response_id(),
            Some("chatcmpl-ABfw031mOJeYCSHe4yI2ZjOA6kMJL")
        );
    }
}

#[test]
fn openai_strip_with_crlf_and_cr() {
    for ending in ["\r\n", "\r"] {
        let input = openai_stream().replace('\n', ending);
        let expected = format!("{OPENAI_HEAD}{OPENAI_DONE}").replace('\n', ending);
        for pieces in splits(input.as_bytes()) {
            let mut tap = StreamTap::new(Dialect::OpenAi, true);
            let (out, _) = run(&mut tap, &pieces);
            assert_eq!(String::from_utf8(out).unwrap(), expected, "{ending:?}");
            assert_eq!(tap.usage(), usage(14, 30, 0, 0, 0));
            assert!(tap.complete());
        }
    }
}

#[test]
fn openai_strip_forwards_complete_events_at_once() {
    let input = openai_stream();
    let second = OPENAI_HEAD.find("\n\n").unwrap() + 2;
    let mut tap = StreamTap::new(Dialect::OpenAi, true);
    // The first event plus a few bytes of the second.
    let out = tap.feed(Bytes::copy_from_slice(&input.as_bytes()[..second + 7]));
    assert_eq!(out, input.as_bytes()[..second]);
    // The head, then the usage chunk in full: nothing more to send yet.
    let usage_end = OPENAI_HEAD.len() + OPENAI_USAGE.len();
    let out = tap.feed(Bytes::copy_from_slice(
        &input.as_bytes()[second + 7..usage_end],
    ));
    assert_eq!(out, input.as_bytes()[second..OPENAI_HEAD.len()]);
    assert!(tap.saw_usage() && !tap.complete());
    let out = tap.feed(Bytes::copy_from_slice(&input.as_bytes()[usage_end..]));
    assert_eq!(out, OPENAI_DONE.as_bytes());
    assert!(tap.complete());
    assert!(tap.finish().is_empty());
}

#[test]
fn openai_without_strip_is_identical_and_zero_copy() {
    let input = Bytes::from(openai_stream());
    for k in 0..=input.len() {
        let mut tap = StreamTap::new(Dialect::OpenAi, false);
        let mut out = Vec::new();
        for piece in [input.slice(..k), input.slice(k..)] {
            let fwd = tap.feed(piece.clone());
            assert_eq!((fwd.as_ptr(), fwd.len()), (piece.as_ptr(), piece.len()));
            out.extend_from_slice(&fwd);
        }
        assert!(tap.finish().is_empty());
        assert_eq!(out, input);
        assert_eq!(tap.usage(), usage(14, 30, 0, 0, 0));
        assert!(tap.complete());
    }
}

#[test]
fn openai_incomplete_trailing_event_is_forwarded_by_finish() {
    let input = format!("{OPENAI_HEAD}data: {{\"id\":\"x\",\"choi");
    for pieces in splits(input.as_bytes()) {
        let mut tap = StreamTap::new(Dialect::OpenAi, true);
        let (out, completed_at) = run(&mut tap, &pieces);
        assert_eq!(out, input.as_bytes());
        assert_eq!(completed_at, None);
        assert!(!tap.saw_usage());
    }
}

#[test]
fn openai_usage_with_choices_is_not_stripped_and_nulls_are_skipped() {
    let input = concat!(
        "data: {\"id\":\"c1\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"say \\\"usage\\\": 5\"}}],\"usage\":null}\n\n",
        "data: {\"id\":\"c1\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\" : {\"prompt_tokens\":20,\"completion_tokens\":3,\"prompt_tokens_details\":{\"cached_tokens\":8}}}\n\n",
        "data: [DONE]\n\n",
    );
    let mut tap = StreamTap::new(Dialect::OpenAi, true);
    let (out, _) = run(&mut tap, &[input.as_bytes()]);
    assert_eq!(out, input.as_bytes());
    assert_eq!(tap.usage(), usage(12, 3, 0, 0, 8));
}

#[test]
fn key_prefilter() {
    let f = KeyFinders::new();
    assert!(f.has_usage(br#"{"choices":[],"usage":{"prompt_tokens":1}}"#));
    assert!(f.has_usage(br#"{"usage" :  {}}"#));
    assert!(!f.has_usage(br#"{"choices":[],"usage":null}"#));
    assert!(!f.has_usage(br#"{"usage" : null}"#));
    assert!(!f.has_usage(br#"{"delta":{"content":"\"usage\": 1"}}"#));
    assert!(!f.has_usage(br#"{"delta":{"content":"usage"}}"#));
    assert!(f.has_error(br#"{"error":{"code":429},"choices":[]}"#));
    assert!(!f.has_error(br#"{"choices":[{"finish_reason":"error"}]}"#));
    assert!(!f.has_error(br#"{"error":null}"#));
}

const OPENROUTER_USAGE: &str = r#"{"prompt_tokens":194,"completion_tokens":2,"total_tokens":196,"prompt_tokens_details":{"cached_tokens":0,"cache_write_tokens":100,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0},"cost":0.95,"is_byok":false,"cost_details":{"upstream_inference_cost":null,"upstream_inference_prompt_cost":0.0008,"upstream_inference_completions_cost":0.0004}}"#;

fn openrouter_expected() -> Usage {
    Usage {
        reported_cost_nusd: Some(950_000_000),
        ..usage(94, 2, 100, 0, 0)
    }
}

#[test]
fn openrouter_cost_comments_and_strip() {
    let head = concat!(
        ": OPENROUTER PROCESSING\n\n",
        ": OPENROUTER PROCESSING\n\n",
        "data: {\"id\":\"gen-abc123\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"anthropic/claude-haiku-4.5\",\"provider\":\"Anthropic\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hi\"},\"finish_reason\":null}]}\n\n",
        ": OPENROUTER PROCESSING\n\n",
        "data: {\"id\":\"gen-abc123\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"anthropic/claude-haiku-4.5\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
        ": OPENROUTER PROCESSING\n",
    );
    let usage_chunk = format!(
        "data: {{\"id\":\"gen-abc123\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"anthropic/claude-haiku-4.5\",\"choices\":[],\"usage\":{OPENROUTER_USAGE}}}\n\n"
    );
    let input = format!("{head}{usage_chunk}{OPENAI_DONE}");
    let expected = format!("{head}{OPENAI_DONE}");
    for pieces in splits(input.as_bytes()) {
        let mut tap = StreamTap::new(Dialect::OpenAi, true);
        let (out, completed_at) = run(&mut tap, &pieces);
        assert_eq!(String::from_utf8(out).unwrap(), expected);
        assert_eq!(tap.usage(), openrouter_expected());
        assert_eq!(completed_at, Some(input.len()));
        assert_eq!(tap.response_id(), Some("gen-abc123"));
        assert_eq!(tap.model(), Some("anthropic/claude-haiku-4.5"));

        let mut tap = StreamTap::new(Dialect::OpenAi, false);
        let (out, _) = run(&mut tap, &pieces);
        assert_eq!(out, input.as_bytes());
        assert_eq!(tap.usage(), openrouter_expected());
    }
}

#[test]
fn openrouter_mid_stream_error() {
    let input = concat!(
        "data: {\"id\":\"gen-abc123\",\"object\":\"chat.completion.chunk\",\"created\":1234567890,\"model\":\"openai/gpt-4o\",\"provider\":\"OpenAI\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"},\"finish_reason\":null}]}\n\n",
        ": OPENROUTER PROCESSING\n\n",
        "data: {\"id\":\"gen-abc123\",\"object\":\"chat.completion.chunk\",\"created\":1234567890,\"model\":\"openai/gpt-4o\",\"provider\":\"OpenAI\",\"error\":{\"code\":429,\"message\":\"Rate limit exceeded\",\"metadata\":{\"error_type\":\"rate_limit_exceeded\"}},\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\"},\"finish_reason\":\"error\"}]}\n\n",
    );
    for pieces in splits(input.as_bytes()) {
        let mut tap = StreamTap::new(Dialect::OpenAi, true);
        let (out, completed_at) = run(&mut tap, &pieces);
        assert_eq!(out, input.as_bytes());
        assert_eq!(tap.error(), Some("rate_limit_exceeded"));
        assert_eq!(completed_at, None);
        assert_eq!(tap.response_id(), Some("gen-abc123"));
    }
    let kind = |chunk: &str| {
        let mut tap = StreamTap::new(Dialect::OpenAi, false);
        tap.feed(Bytes::from(format!(
            "data: {{\"id\":\"x\",\"choices\":[]}}\n\ndata: {chunk}\n\n"
        )));
        tap.error().map(str::to_owned)
    };
    assert_eq!(
        kind(r#"{"error":{"message":"x","code":"server_error"}}"#).as_deref(),
        Some("server_error")
    );
    assert_eq!(
        kind(r#"{"error":{"type":"server_error","code":"boom"}}"#).as_deref(),
        Some("server_error")
    );
    assert_eq!(
        kind(r#"{"error":{"code":502,"message":"down"}}"#).as_deref(),
        Some("502")
    );
    assert_eq!(
        kind(r#"{"error":{"message":"?"}}"#).as_deref(),
        Some("error")
    );
    assert_eq!(kind(r#"{"error":"plain text"}"#).as_deref(), Some("error"));
    assert_eq!(kind(r#"{"error":null,"choices":[]}"#), None);
}

// --- usage_from_json ---

#[test]
fn json_anthropic_message() {
    let body = r#"{
      "id": "msg_019Q1hrJbZG26Fb9BQhrkHEr", "type": "message", "role": "assistant",
      "model": "claude-sonnet-4-5-20250929",
      "content": [
        {"type": "thinking", "thinking": "…", "signature": "EqQB…"},
        {"type": "text", "text": "Hi!", "citations": null},
        {"type": "tool_use", "id": "toolu_01NRLabsLyVHZPKxbKvkfSMn", "name": "get_weather", "input": {"location": "Paris"}}
      ],
      "stop_reason": "end_turn", "stop_sequence": null, "stop_details": null, "container": null,
      "usage": {
        "input_tokens": 28, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
        "output_tokens": 106, "output_tokens_details": {"thinking_tokens": 67},
        "server_tool_use": {"web_search_requests": 0, "web_fetch_requests": 0},
        "service_tier": "standard", "inference_geo": "global"
      }
    }"#;
    let summary = usage_from_json(Dialect::Anthropic, body.as_bytes()).unwrap();
    assert_eq!(
        summary,
        JsonSummary {
            usage: usage(28, 106, 0, 0, 0),
            model: Some("claude-sonnet-4-5-20250929".into()),
            id: Some("msg_019Q1hrJbZG26Fb9BQhrkHEr".into()),
            iterations: Vec::new(),
        }
    );
    let cached = r#"{"id":"m","model":"x","usage":{"input_tokens":3,"output_tokens":4,"cache_creation_input_tokens":500,"cache_read_input_tokens":60,"cache_creation":{"ephemeral_5m_input_tokens":200,"ephemeral_1h_input_tokens":300}}}"#;
    let summary = usage_from_json(Dialect::Anthropic, cached.as_bytes()).unwrap();
    assert_eq!(summary.usage, usage(3, 4, 500, 300, 60));
    let error = r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
    assert_eq!(usage_from_json(Dialect::Anthropic, error.as_bytes()), None);
    assert_eq!(usage_from_json(Dialect::Anthropic, b"not json"), None);
}

#[test]
fn json_openai_and_openrouter() {
    let body = r#"{"id":"chatcmpl-ABfw031mOJeYCSHe4yI2ZjOA6kMJL","object":"chat.completion","created":1727346168,"model":"gpt-4o-2024-08-06",
 "system_fingerprint":"fp_5050236cbd","service_tier":"default",
 "choices":[{"index":0,"message":{"role":"assistant","content":"Hi","refusal":null,"tool_calls":null},"logprobs":null,"finish_reason":"stop"}],
 "usage":{"prompt_tokens":14,"completion_tokens":30,"total_tokens":44,
      "prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},
      "completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}"#;
    let summary = usage_from_json(Dialect::OpenAi, body.as_bytes()).unwrap();
    assert_eq!(
        summary,
        JsonSummary {
            usage: usage(14, 30, 0, 0, 0),
            model: Some("gpt-4o-2024-08-06".into()),
            id: Some("chatcmpl-ABfw031mOJeYCSHe4yI2ZjOA6kMJL".into()),
            iterations: Vec::new(),
        }
    );
    let cached = r#"{"usage":{"prompt_tokens":100,"completion_tokens":5,"prompt_tokens_details":{"cached_tokens":64}}}"#;
    let summary = usage_from_json(Dialect::OpenAi, cached.as_bytes()).unwrap();
    assert_eq!(summary.usage, usage(36, 5, 0, 0, 64));
    assert_eq!((summary.model, summary.id), (None, None));

    let openrouter = format!(
        r#"{{"id":"gen-1","provider":"Anthropic","model":"anthropic/claude-haiku-4.5","choices":[],"usage":{OPENROUTER_USAGE}}}"#
    );
    let summary = usage_from_json(Dialect::OpenAi, openrouter.as_bytes()).unwrap();
    assert_eq!(summary.usage, openrouter_expected());
    assert_eq!(summary.id.as_deref(), Some("gen-1"));

    let error = r#"{"error":{"code":402,"message":"Insufficient credits","metadata":{"error_type":"payment_required"}}}"#;
    assert_eq!(usage_from_json(Dialect::OpenAi, error.as_bytes()), None);
}

#[test]
fn usd_to_nano_usd() {
    assert_eq!(usd_float_to_nusd(0.95), Some(950_000_000));
    assert_eq!(usd_float_to_nusd(0.0008), Some(800_000));
    assert_eq!(usd_float_to_nusd(0.1 + 0.2), Some(300_000_000));
    assert_eq!(usd_float_to_nusd(1.5), Some(1_500_000_000));
    assert_eq!(usd_float_to_nusd(123.456_789_012), Some(123_456_789_012));
    assert_eq!(usd_float_to_nusd(1e-9), Some(1));
    assert_eq!(usd_float_to_nusd(1e-10), Some(0));
    assert_eq!(usd_float_to_nusd(5e-10), Some(1));
    assert_eq!(usd_float_to_nusd(4.9e-10), Some(0));
    assert_eq!(usd_float_to_nusd(0.000_000_001_5), Some(2));
    assert_eq!(usd_float_to_nusd(0.0), Some(0));
    assert_eq!(usd_float_to_nusd(-0.0), Some(0));
    assert_eq!(
        usd_float_to_nusd(18_000_000_000.0),
        Some(18_000_000_000_000_000_000)
    );
    assert_eq!(usd_float_to_nusd(19_000_000_000.0), None);
    assert_eq!(usd_float_to_nusd(-0.01), None);
    assert_eq!(usd_float_to_nusd(f64::NAN), None);
    assert_eq!(usd_float_to_nusd(f64::INFINITY), None);
}
