//! Tests of the codec driver over both dialects.

use serde_json::{json, Value};

use crate::dialect::{replay, Assembler, Dialect, ReplayError};
#[test]
fn stopped_at_limit_reads_both_dialects() {
    assert!(Dialect::Anthropic.stopped_at_limit(br#"{"stop_reason":"max_tokens","content":[]}"#));
    assert!(!Dialect::Anthropic.stopped_at_limit(br#"{"stop_reason":"end_turn","content":[]}"#));
    assert!(Dialect::OpenAi
        .stopped_at_limit(br#"{"choices":[{"finish_reason":"stop"},{"finish_reason":"length"}]}"#));
    assert!(!Dialect::OpenAi.stopped_at_limit(br#"{"choices":[{"finish_reason":"tool_calls"}]}"#));
    assert!(Dialect::OpenAi.stopped_at_limit(b"not json"));
}

/// Minimal SSE splitter, as the SDKs parse: `event:` / `data:` fields, one optional
/// space after the colon, `:` comments, dispatch at a blank line.
fn parse_sse(text: &str) -> Vec<(String, String)> {
    let mut events = Vec::new();
    let mut name = String::new();
    let mut data: Vec<&str> = Vec::new();
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            if !data.is_empty() || !name.is_empty() {
                events.push((std::mem::take(&mut name), data.join("\n")));
                data.clear();
            }
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => name = value.to_owned(),
            "data" => data.push(value),
            _ => {}
        }
    }
    assert!(
        data.is_empty() && name.is_empty(),
        "last event not terminated by a blank line"
    );
    events
}

fn feed(dialect: Dialect, max_bytes: usize, sse: &str) -> Assembler {
    let mut assembler = Assembler::new(dialect, max_bytes);
    for (name, data) in parse_sse(sse) {
        assembler.on_event(&name, &data);
    }
    assembler
}

fn assemble(dialect: Dialect, sse: &str) -> Option<Value> {
    feed(dialect, 1 << 20, sse)
        .finish()
        .map(|bytes| serde_json::from_slice(&bytes).unwrap())
}

fn replay_str(dialect: Dialect, message: &Value, include_usage: bool) -> String {
    let bytes = replay(dialect, message.to_string().as_bytes(), include_usage).unwrap();
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    assert!(text.ends_with("\n\n"), "stream must end with a blank line");
    text
}

fn round_trip(dialect: Dialect, message: &Value, include_usage: bool) -> Value {
    let sse = replay_str(dialect, message, include_usage);
    assemble(dialect, &sse).expect("replayed stream assembles")
}

fn assert_anthropic_round_trip(message: Value) {
    assert_eq!(round_trip(Dialect::Anthropic, &message, false), message);
    // include_usage means nothing to Anthropic.
    assert_eq!(round_trip(Dialect::Anthropic, &message, true), message);
}

fn anthropic_message(content: Value, stop_reason: &str) -> Value {
    json!({
        "id": "msg_019Q1hrJbZG26Fb9BQhrkHEr",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": null,
        "stop_details": null,
        "container": null,
        "usage": {
            "input_tokens": 28,
            "cache_creation_input_tokens": 10,
            "cache_read_input_tokens": 5,
            "cache_creation": {"ephemeral_5m_input_tokens": 10, "ephemeral_1h_input_tokens": 0},
            "output_tokens": 106,
            "output_tokens_details": {"thinking_tokens": 67},
            "server_tool_use": {"web_search_requests": 0, "web_fetch_requests": 0},
            "service_tier": "standard",
            "inference_geo": "global"
        }
    })
}

// ----- Anthropic round trips --------------------------------------------------------

#[test]
fn anthropic_text_round_trip() {
    assert_anthropic_round_trip(anthropic_message(
        json!([{"type": "text", "text": "Hi!\nLine two with \"quotes\" and ünïcødé 🎉"}]),
        "end_turn",
    ));
    // The non-streaming API's `"citations": null` survives too.
    assert_anthropic_round_trip(anthropic_message(
        json!([{"type": "text", "text": "Hi!", "citations": null}]),
        "end_turn",
    ));
}

#[test]
fn anthropic_text_and_tool_use_round_trip() {
    assert_anthropic_round_trip(anthropic_message(
        json!([
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "toolu_01NRLabsLyVHZPKxbKvkfSMn", "name": "get_weather",
             "caller": {"type": "direct"},
             "input": {"location": {"city": "Paris", "coords": [48.85, 2.35]}, "units": null,
                       "days": 3, "flags": [true, false], "note": "a\nb"}},
            {"type": "tool_use", "id": "toolu_02", "name": "no_args", "input": {}}
        ]),
        "tool_use",
    ));
}

#[test]
fn anthropic_thinking_then_text_round_trip() {
    assert_anthropic_round_trip(anthropic_message(
        json!([
            {"type": "thinking", "thinking": "Simple question.\nAnswer: 4.", "signature": "EqQBCkYIBxgCKkDj=="},
            {"type": "text", "text": "4"}
        ]),
        "end_turn",
    ));
}

#[test]
fn anthropic_redacted_thinking_round_trip() {
    assert_anthropic_round_trip(anthropic_message(
        json!([
            {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpP"},
            {"type": "thinking", "thinking": "More.", "signature": "sig"},
            {"type": "text", "text": "Done."}
        ]),
        "end_turn",
    ));
}

#[test]
fn anthropic_citations_round_trip() {
    assert_anthropic_round_trip(anthropic_message(
        json!([
            {"type": "text", "text": "According to the document, "},
            {"type": "text", "text": "the grass is green",
             "citations": [
                {"type": "char_location", "cited_text": "The grass is green.", "document_index": 0,
                 "document_title": "Example", "start_char_index": 0, "end_char_index": 20},
                {"type": "web_search_result_location", "url": "https://example.com", "title": "Ex",
                 "encrypted_index": "Eo8BCioIAhgBIiQ", "cited_text": "green grass"}
             ]}
        ]),
        "end_turn",
    ));
}

#[test]
fn anthropic_server_tools_and_unknown_blocks_round_trip() {
    let mut message = anthropic_message(
        json!([
            {"type": "server_tool_use", "id": "srvtoolu_01", "name": "web_search",
             "input": {"query": "weather paris"}},
            {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_01",
             "content": [{"type": "web_search_result", "url": "https://example.com",
                          "title": "Weather", "encrypted_content": "abc", "page_age": null}]},
            {"type": "some_future_block", "payload": {"x": [1, 2, 3]}},
            {"type": "text", "text": "Sunny."}
        ]),
        "end_turn",
    );
    message["container"] = json!({"id": "container_1", "expires_at": "2026-08-01T00:00:00Z"});
    message["stop_details"] = json!({"type": "refusal", "category": "cyber"});
    message["extra_top_level"] = json!({"kept": true});
    assert_anthropic_round_trip(message);
}

#[test]
fn anthropic_replay_shape() {
    let message = anthropic_message(
        json!([
            {"type": "text", "text": "Hello"},
            {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}},
            {"type": "thinking", "thinking": "t", "signature": "s"}
        ]),
        "tool_use",
    );
    let events = parse_sse(&replay_str(Dialect::Anthropic, &message, false));
    let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_stop", // empty input: no input_json_delta
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
    );
    for (name, data) in &events {
        let data: Value = serde_json::from_str(data).unwrap();
        assert_eq!(data["type"], json!(name), "event name equals JSON type");
    }
    let start: Value = serde_json::from_str(&events[0].1).unwrap();
    let start = &start["message"];
    assert_eq!(start["content"], json!([]));
    assert_eq!(start["stop_reason"], Value::Null);
    assert_eq!(start["stop_sequence"], Value::Null);
    assert_eq!(start["usage"]["output_tokens"], json!(1));
    assert_eq!(start["usage"]["input_tokens"], json!(28));
    assert_eq!(start["id"], message["id"]);
    assert_eq!(start["model"], message["model"]);
    let text_start: Value = serde_json::from_str(&events[1].1).unwrap();
    assert_eq!(
        text_start,
        json!({"type": "content_block_start", "index": 0,
               "content_block": {"type": "text", "text": ""}})
    );
    let thinking_start: Value = serde_json::from_str(&events[7].1).unwrap();
    assert_eq!(
        thinking_start["content_block"],
        json!({"type": "thinking", "thinking": "", "signature": ""})
    );
    let signature: Value = serde_json::from_str(&events[9].1).unwrap();
    assert_eq!(
        signature["delta"],
        json!({"type": "signature_delta", "signature": "s"})
    );
    let delta: Value = serde_json::from_str(&events[11].1).unwrap();
    assert_eq!(
        delta["delta"],
        json!({"stop_reason": "tool_use", "stop_sequence": null, "stop_details": null})
    );
    assert_eq!(delta["usage"], message["usage"]);
    assert_eq!(events[12].1, r#"{"type":"message_stop"}"#);
}

#[test]
fn anthropic_zero_output_tokens_stays_zero_at_start() {
    let mut message = anthropic_message(json!([]), "end_turn");
    message["usage"]["output_tokens"] = json!(0);
    let events = parse_sse(&replay_str(Dialect::Anthropic, &message, false));
    let start: Value = serde_json::from_str(&events[0].1).unwrap();
    assert_eq!(start["message"]["usage"]["output_tokens"], json!(0));
    assert_eq!(events[1].0, "ping");
    assert_anthropic_round_trip(message);
}

// ----- Anthropic real streams -------------------------------------------------------

/// providers.md §2.2, the SDK's basic_response fixture.
const ANTHROPIC_BASIC: &str = r#"event: message_start
data: {"type":"message_start","message":{"id":"msg_4QpJur2dWWDjF6C758FbBw5vm12BaVipnK","type":"message","role":"assistant","content":[],"model":"claude-sonnet-4-5-20250929","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":11,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":1,"service_tier":"standard"}}}

event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}

event: ping
data: {"type": "ping"}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" there!"}}

event: content_block_stop
data: {"type":"content_block_stop","index":0}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":6}}

event: message_stop
data: {"type":"message_stop"}

"#;

#[test]
fn anthropic_assembles_real_basic_stream() {
    let message = assemble(Dialect::Anthropic, ANTHROPIC_BASIC).unwrap();
    assert_eq!(
        message,
        json!({
            "id": "msg_4QpJur2dWWDjF6C758FbBw5vm12BaVipnK",
            "type": "message",
            "role": "assistant",
            "content": [{"type": "text", "text": "Hello there!"}],
            "model": "claude-sonnet-4-5-20250929",
            "stop_reason": "end_turn",
            "stop_sequence": null,
            "usage": {"input_tokens": 11, "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": 0, "output_tokens": 6,
                      "service_tier": "standard"}
        })
    );
    // And it replays to a stream that assembles to the same message.
    assert_anthropic_round_trip(message);
}

/// providers.md §2.2 block variants (tool_use + thinking fixtures), with whitespace
/// padding as in the SDK fixtures, a cumulative message_delta usage, OpenRouter's
/// keep-alive comment and trailing data-only `[DONE]`.
const ANTHROPIC_THINKING_TOOL: &str = r#"event: message_start
data: {"type": "message_start", "message": {"id": "msg_01", "type": "message", "role": "assistant", "content": [], "model": "claude-sonnet-4-5-20250929", "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 377, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0}, "output_tokens": 5, "service_tier": "standard"}}   }

event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":"","signature":""}}

: OPENROUTER PROCESSING

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"Simple question."}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"c3ludGhldGlj..."}}

event: content_block_stop
data: {"type":"content_block_stop","index":0}

event: content_block_start
data: {"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_01NRLabsLyVHZPKxbKvkfSMn","name":"get_weather","caller":{"type":"direct"},"input":{}}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"location\": "}}

event: ping
data: {"type": "ping"}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"\"Paris\"}"}}

event: content_block_stop
data: {"type":"content_block_stop","index":1}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"input_tokens":377,"cache_creation_input_tokens":null,"cache_read_input_tokens":0,"output_tokens":65,"output_tokens_details":{"thinking_tokens":12}}}

event: message_stop
data: {"type":"message_stop"}

data: [DONE]

"#;

#[test]
fn anthropic_assembles_real_thinking_tool_stream() {
    let message = assemble(Dialect::Anthropic, ANTHROPIC_THINKING_TOOL).unwrap();
    assert_eq!(
        message,
        json!({
            "id": "msg_01", "type": "message", "role": "assistant",
            "model": "claude-sonnet-4-5-20250929",
            "content": [
                {"type": "thinking", "thinking": "Simple question.", "signature": "c3ludGhldGlj..."},
                {"type": "tool_use", "id": "toolu_01NRLabsLyVHZPKxbKvkfSMn", "name": "get_weather",
                 "caller": {"type": "direct"}, "input": {"location": "Paris"}}
            ],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {
                "input_tokens": 377, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
                "output_tokens": 65, "output_tokens_details": {"thinking_tokens": 12},
                "service_tier": "standard"
            }
        })
    );
    assert_anthropic_round_trip(message);
}

#[test]
fn anthropic_message_delta_overwrites_cumulative_usage() {
    let sse = ANTHROPIC_BASIC.replace(
        r#""usage":{"output_tokens":6}"#,
        r#""usage":{"output_tokens":6,"input_tokens":12,"cache_read_input_tokens":3,"server_tool_use":{"web_search_requests":1},"service_tier":null}"#,
    );
    let message = assemble(Dialect::Anthropic, &sse).unwrap();
    assert_eq!(
        message["usage"],
        json!({"input_tokens": 12, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 3,
               "output_tokens": 6, "service_tier": "standard",
               "server_tool_use": {"web_search_requests": 1}})
    );
}

// ----- Anthropic failures -----------------------------------------------------------

fn without_event(sse: &str, name: &str) -> String {
    sse.split("\n\n")
        .filter(|event| !event.starts_with(&format!("event: {name}\n")))
        .collect::<Vec<_>>()
        .join("\n\n")
}

#[test]
fn anthropic_incomplete_stream_is_none() {
    let sse = without_event(ANTHROPIC_BASIC, "message_stop");
    let assembler = feed(Dialect::Anthropic, 1 << 20, &sse);
    assert!(assembler.viable());
    assert!(assembler.finish().is_none());
    assert!(assemble(Dialect::Anthropic, "").is_none());
}

#[test]
fn anthropic_error_event_is_none() {
    let sse = ANTHROPIC_BASIC.replace(
        "event: content_block_stop\n",
        "event: error\ndata: {\"type\": \"error\", \"error\": {\"type\": \"overloaded_error\", \"message\": \"Overloaded\"}}\n\nevent: content_block_stop\n",
    );
    let assembler = feed(Dialect::Anthropic, 1 << 20, &sse);
    assert!(!assembler.viable());
    assert!(assembler.finish().is_none());
}

#[test]
fn anthropic_over_max_bytes_is_none() {
    let assembler = feed(Dialect::Anthropic, 300, ANTHROPIC_BASIC);
    assert!(!assembler.viable());
    assert!(assembler.finish().is_none());
    // The same stream fits in a larger budget, and exactly at its own size.
    let size = assemble(Dialect::Anthropic, ANTHROPIC_BASIC)
        .unwrap()
        .to_string()
        .len();
    assert!(feed(Dialect::Anthropic, size, ANTHROPIC_BASIC)
        .finish()
        .is_some());
    assert!(feed(Dialect::Anthropic, size - 1, ANTHROPIC_BASIC)
        .finish()
        .is_none());
}

#[test]
fn anthropic_malformed_json_is_none() {
    let sse = ANTHROPIC_BASIC.replace(r#""text":" there!"}}"#, r#""text":" there!"}"#);
    assert!(assemble(Dialect::Anthropic, &sse).is_none());
    // Malformed tool input JSON fails at content_block_stop.
    let sse = ANTHROPIC_THINKING_TOOL.replace(r#""\"Paris\"}""#, r#""\"Paris\"""#);
    assert!(assemble(Dialect::Anthropic, &sse).is_none());
}

#[test]
fn anthropic_unknown_delta_or_bad_order_is_none() {
    let sse = ANTHROPIC_BASIC.replace(
        r#"{"type":"text_delta","text":"Hello"}"#,
        r#"{"type":"mystery_delta","text":"Hello"}"#,
    );
    assert!(assemble(Dialect::Anthropic, &sse).is_none());
    // A text delta aimed at a block that has no text.
    let sse = ANTHROPIC_BASIC.replace(r#""index":0,"delta""#, r#""index":1,"delta""#);
    assert!(assemble(Dialect::Anthropic, &sse).is_none());
    // Events before message_start.
    let sse = without_event(ANTHROPIC_BASIC, "message_start");
    assert!(assemble(Dialect::Anthropic, &sse).is_none());
}

#[test]
fn anthropic_unknown_events_are_ignored() {
    let sse = ANTHROPIC_BASIC.replace(
        "event: message_stop\n",
        "event: brand_new_event\ndata: {\"type\":\"brand_new_event\"}\n\nevent: message_stop\n",
    );
    assert!(assemble(Dialect::Anthropic, &sse).is_some());
}

// ----- OpenAI round trips -----------------------------------------------------------

fn openai_usage() -> Value {
    json!({"prompt_tokens": 14, "completion_tokens": 30, "total_tokens": 44,
           "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
           "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                         "accepted_prediction_tokens": 0,
                                         "rejected_prediction_tokens": 0}})
}

fn openai_completion(choices: Value) -> Value {
    json!({
        "id": "chatcmpl-ABfw031mOJeYCSHe4yI2ZjOA6kMJL",
        "object": "chat.completion",
        "created": 1727346168,
        "model": "gpt-4o-2024-08-06",
        "system_fingerprint": "fp_5050236cbd",
        "service_tier": "default",
        "choices": choices,
        "usage": openai_usage()
    })
}

fn assert_openai_round_trip(message: Value) {
    assert_eq!(round_trip(Dialect::OpenAi, &message, true), message);
    let mut without_usage = message.clone();
    without_usage.as_object_mut().unwrap().remove("usage");
    assert_eq!(round_trip(Dialect::OpenAi, &message, false), without_usage);
}

#[test]
fn openai_text_round_trip() {
    assert_openai_round_trip(openai_completion(json!([
        {"index": 0, "message": {"role": "assistant", "content": "Hi\n\"there\" ✓", "refusal": null},
         "logprobs": null, "finish_reason": "stop"}
    ])));
}

#[test]
fn openai_multiple_tool_calls_round_trip() {
    assert_openai_round_trip(openai_completion(json!([
        {"index": 0, "message": {"role": "assistant", "content": null, "refusal": null,
          "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"location\":\"Paris\",\"nested\":{\"a\":[1,2]}}"}},
            {"id": "call_2", "type": "function",
             "function": {"name": "get_time", "arguments": "{}"}},
            {"id": "call_3", "type": "function", "function": {"name": "ping", "arguments": ""}}
          ]},
         "logprobs": null, "finish_reason": "tool_calls"}
    ])));
    // Text next to a tool call keeps the text.
    assert_openai_round_trip(openai_completion(json!([
        {"index": 0, "message": {"role": "assistant", "content": "Checking.", "refusal": null,
          "tool_calls": [{"id": "call_1", "type": "function",
                          "function": {"name": "f", "arguments": "{\"x\":1}"}}]},
         "logprobs": null, "finish_reason": "tool_calls"}
    ])));
}

#[test]
fn openai_two_choices_round_trip() {
    assert_openai_round_trip(openai_completion(json!([
        {"index": 0, "message": {"role": "assistant", "content": "One", "refusal": null},
         "logprobs": null, "finish_reason": "stop"},
        {"index": 1, "message": {"role": "assistant", "content": "Two, longer", "refusal": null},
         "logprobs": null, "finish_reason": "length"}
    ])));
}

#[test]
fn openai_refusal_round_trip() {
    assert_openai_round_trip(openai_completion(json!([
        {"index": 0, "message": {"role": "assistant", "content": null,
                                 "refusal": "I'm sorry, I can't help with that."},
         "logprobs": null, "finish_reason": "stop"}
    ])));
}

#[test]
fn openai_logprobs_and_extra_fields_round_trip() {
    assert_openai_round_trip(openai_completion(json!([
        {"index": 0, "message": {"role": "assistant", "content": "Hi", "refusal": null,
                                 "annotations": [{"type": "url_citation",
                                                  "url_citation": {"url": "https://example.com", "title": "Ex",
                                                                   "start_index": 0, "end_index": 2}}]},
         "logprobs": {"content": [{"token": "Hi", "logprob": -0.01, "bytes": [72, 105], "top_logprobs": []}],
                      "refusal": null},
         "finish_reason": "stop"}
    ])));
}

#[test]
fn openrouter_usage_cost_and_reasoning_round_trip() {
    assert_openai_round_trip(json!({
        "id": "gen-1733000000-abc",
        "object": "chat.completion",
        "created": 1733000000,
        "model": "anthropic/claude-sonnet-4",
        "provider": "Anthropic",
        "system_fingerprint": null,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "The answer is 4.", "refusal": null,
                                     "reasoning": "2 + 2 = 4",
                                     "reasoning_details": [{"type": "reasoning.text", "text": "2 + 2 = 4",
                                                            "format": "anthropic-claude-v1", "index": 0}]},
             "logprobs": null, "finish_reason": "stop", "native_finish_reason": "end_turn"}
        ],
        "usage": {"prompt_tokens": 194, "completion_tokens": 2, "total_tokens": 196,
                  "prompt_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 100, "audio_tokens": 0},
                  "completion_tokens_details": {"reasoning_tokens": 0},
                  "cost": 0.95, "is_byok": false,
                  "cost_details": {"upstream_inference_cost": null,
                                   "upstream_inference_prompt_cost": 0.0008,
                                   "upstream_inference_completions_cost": 0.0004}}
    }));
}

#[test]
fn openai_replay_shape_with_and_without_usage() {
    let message = openai_completion(json!([
        {"index": 0, "message": {"role": "assistant", "content": "Hi", "refusal": null,
          "tool_calls": [{"id": "call_1", "type": "function",
                          "function": {"name": "f", "arguments": "{\"x\":1}"}}]},
         "logprobs": null, "finish_reason": "tool_calls"}
    ]));
    let with = parse_sse(&replay_str(Dialect::OpenAi, &message, true));
    assert!(
        with.iter().all(|(name, _)| name.is_empty()),
        "data-only events"
    );
    assert_eq!(with.last().unwrap().1, "[DONE]");
    let chunks: Vec<Value> = with[..with.len() - 1]
        .iter()
        .map(|(_, data)| serde_json::from_str(data).unwrap())
        .collect();
    let header = json!({"id": message["id"], "object": "chat.completion.chunk",
                        "created": message["created"], "model": message["model"],
                        "system_fingerprint": "fp_5050236cbd", "service_tier": "default"});
    let chunk = |choices: Value, usage: Value| {
        let mut chunk = header.clone();
        chunk["choices"] = choices;
        chunk["usage"] = usage;
        chunk
    };
    let choice = |delta: Value, finish: Value| json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]);
    assert_eq!(
        chunks,
        vec![
            chunk(
                choice(
                    json!({"role": "assistant", "content": "", "refusal": null}),
                    Value::Null
                ),
                Value::Null
            ),
            chunk(choice(json!({"content": "Hi"}), Value::Null), Value::Null),
            chunk(
                choice(
                    json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                                "function": {"name": "f", "arguments": ""}}]}),
                    Value::Null
                ),
                Value::Null
            ),
            chunk(
                choice(
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"x\":1}"}}]}),
                    Value::Null
                ),
                Value::Null
            ),
            chunk(choice(json!({}), json!("tool_calls")), Value::Null),
            chunk(json!([]), openai_usage()),
        ]
    );

    let without = parse_sse(&replay_str(Dialect::OpenAi, &message, false));
    assert_eq!(without.len(), with.len() - 1, "no usage chunk");
    for (_, data) in &without[..without.len() - 1] {
        let chunk: Value = serde_json::from_str(data).unwrap();
        assert!(chunk.get("usage").is_none(), "no usage key: {chunk}");
        assert_eq!(chunk["choices"].as_array().unwrap().len(), 1);
    }
    assert_eq!(without.last().unwrap().1, "[DONE]");
}

// ----- OpenAI real streams ----------------------------------------------------------

/// providers.md §8, a real capture with `stream_options.include_usage`.
const OPENAI_BASIC: &str = r#"data: {"id":"chatcmpl-ABfw031mOJeYCSHe4yI2ZjOA6kMJL","object":"chat.completion.chunk","created":1727346168,"model":"gpt-4o-2024-08-06","system_fingerprint":"fp_5050236cbd","choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-ABfw031mOJeYCSHe4yI2ZjOA6kMJL","object":"chat.completion.chunk","created":1727346168,"model":"gpt-4o-2024-08-06","system_fingerprint":"fp_5050236cbd","choices":[{"index":0,"delta":{"content":"Hi"},"logprobs":null,"finish_reason":null}]}

data: {"id":"chatcmpl-ABfw031mOJeYCSHe4yI2ZjOA6kMJL","object":"chat.completion.chunk","created":1727346168,"model":"gpt-4o-2024-08-06","system_fingerprint":"fp_5050236cbd","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]}

data: {"id":"chatcmpl-ABfw031mOJeYCSHe4yI2ZjOA6kMJL","object":"chat.completion.chunk","created":1727346168,"model":"gpt-4o-2024-08-06","system_fingerprint":"fp_5050236cbd","choices":[],"usage":{"prompt_tokens":14,"completion_tokens":30,"total_tokens":44,"completion_tokens_details":{"reasoning_tokens":0}}}

data: [DONE]

"#;

#[test]
fn openai_assembles_real_stream_with_usage() {
    let message = assemble(Dialect::OpenAi, OPENAI_BASIC).unwrap();
    assert_eq!(
        message,
        json!({
            "id": "chatcmpl-ABfw031mOJeYCSHe4yI2ZjOA6kMJL",
            "object": "chat.completion",
            "created": 1727346168,
            "model": "gpt-4o-2024-08-06",
            "system_fingerprint": "fp_5050236cbd",
            "choices": [{"index": 0,
                         "message": {"role": "assistant", "content": "Hi", "refusal": null},
                         "logprobs": null, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 14, "completion_tokens": 30, "total_tokens": 44,
                      "completion_tokens_details": {"reasoning_tokens": 0}}
        })
    );
    assert_openai_round_trip(message);
}

#[test]
fn openai_assembles_fragmented_tool_calls() {
    let head = r#""id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","obfuscation":"xyz""#;
    let chunk = |choice: &str| format!("data: {{{head},\"choices\":[{choice}]}}\n\n");
    let sse = [
        chunk(r#"{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_a","type":"function","function":{"name":"get_weather","arguments":""}}],"refusal":null},"logprobs":null,"finish_reason":null}"#),
        chunk(r#"{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"loc"}}]},"logprobs":null,"finish_reason":null}"#),
        chunk(r#"{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"ation\":\"Paris\"}"}}]},"logprobs":null,"finish_reason":null}"#),
        chunk(r#"{"index":0,"delta":{"tool_calls":[{"index":1,"id":"call_b","type":"function","function":{"name":"get_time","arguments":"{}"}}]},"logprobs":null,"finish_reason":null}"#),
        chunk(r#"{"index":0,"delta":{},"logprobs":null,"finish_reason":"tool_calls"}"#),
        ": keep-alive comment\n\ndata: [DONE]\n\n".to_owned(),
    ]
    .concat();
    let message = assemble(Dialect::OpenAi, &sse).unwrap();
    assert_eq!(
        message,
        json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o",
            "choices": [{"index": 0, "message": {
                "role": "assistant", "content": null, "refusal": null,
                "tool_calls": [
                    {"id": "call_a", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"location\":\"Paris\"}"}},
                    {"id": "call_b", "type": "function",
                     "function": {"name": "get_time", "arguments": "{}"}}
                ]}, "logprobs": null, "finish_reason": "tool_calls"}]
        })
    );
    assert_openai_round_trip(message);
}

#[test]
fn openrouter_stream_merges_reasoning_details_and_usage() {
    let head = r#""id":"gen-1","provider":"Anthropic","model":"anthropic/claude-sonnet-4","object":"chat.completion.chunk","created":5"#;
    let chunk = |rest: &str| format!("data: {{{head},{rest}}}\n\n");
    let sse = [
        chunk(r#""choices":[{"index":0,"delta":{"role":"assistant","content":"","reasoning":"Two ","reasoning_details":[{"type":"reasoning.text","text":"Two ","index":0}]},"finish_reason":null,"native_finish_reason":null,"logprobs":null}]"#),
        chunk(r#""choices":[{"index":0,"delta":{"role":"assistant","content":"","reasoning":"plus two.","reasoning_details":[{"type":"reasoning.text","text":"plus two.","index":0}]},"finish_reason":null,"native_finish_reason":null,"logprobs":null}]"#),
        chunk(r#""choices":[{"index":0,"delta":{"role":"assistant","content":"4","reasoning":null},"finish_reason":null,"native_finish_reason":null,"logprobs":null}]"#),
        chunk(r#""choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":"stop","native_finish_reason":"end_turn","logprobs":null}]"#),
        chunk(r#""choices":[],"usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15,"cost":0.0012,"is_byok":false}"#),
        "data: [DONE]\n\n".to_owned(),
    ]
    .concat();
    let message = assemble(Dialect::OpenAi, &sse).unwrap();
    assert_eq!(
        message,
        json!({
            "id": "gen-1", "object": "chat.completion", "created": 5,
            "model": "anthropic/claude-sonnet-4", "provider": "Anthropic",
            "choices": [{"index": 0, "message": {
                "role": "assistant", "content": "4", "refusal": null,
                "reasoning": "Two plus two.",
                "reasoning_details": [{"type": "reasoning.text", "text": "Two plus two.", "index": 0}]
             }, "logprobs": null, "finish_reason": "stop", "native_finish_reason": "end_turn"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
                      "cost": 0.0012, "is_byok": false}
        })
    );
    assert_openai_round_trip(message);
}

#[test]
fn openai_logprobs_concatenate() {
    let head = r#""id":"c","object":"chat.completion.chunk","created":1,"model":"m""#;
    let chunk = |choice: &str| format!("data: {{{head},\"choices\":[{choice}]}}\n\n");
    let sse = [
        chunk(r#"{"index":0,"delta":{"role":"assistant","content":""},"logprobs":{"content":[],"refusal":null},"finish_reason":null}"#),
        chunk(r#"{"index":0,"delta":{"content":"A"},"logprobs":{"content":[{"token":"A","logprob":-1.0}],"refusal":null},"finish_reason":null}"#),
        chunk(r#"{"index":0,"delta":{"content":"B"},"logprobs":{"content":[{"token":"B","logprob":-2.0}],"refusal":null},"finish_reason":"stop"}"#),
        "data: [DONE]\n\n".to_owned(),
    ]
    .concat();
    let message = assemble(Dialect::OpenAi, &sse).unwrap();
    assert_eq!(message["choices"][0]["message"]["content"], json!("AB"));
    assert_eq!(
        message["choices"][0]["logprobs"],
        json!({"content": [{"token": "A", "logprob": -1.0}, {"token": "B", "logprob": -2.0}],
               "refusal": null})
    );
    assert_openai_round_trip(message);
}

#[test]
fn openai_skips_azure_filter_chunks() {
    let filter = r#"data: {"choices":[],"created":0,"id":"","model":"","object":"","prompt_filter_results":[{"prompt_index":0,"content_filter_results":{}}]}"#;
    let sse = format!("{filter}\n\n{OPENAI_BASIC}");
    assert_eq!(
        assemble(Dialect::OpenAi, &sse),
        assemble(Dialect::OpenAi, OPENAI_BASIC)
    );
}

// ----- OpenAI failures --------------------------------------------------------------

#[test]
fn openai_incomplete_stream_is_none() {
    let sse = OPENAI_BASIC.replace("data: [DONE]\n\n", "");
    let assembler = feed(Dialect::OpenAi, 1 << 20, &sse);
    assert!(assembler.viable());
    assert!(assembler.finish().is_none());
    assert!(assemble(Dialect::OpenAi, "data: [DONE]\n\n").is_none());
}

#[test]
fn openai_error_chunk_is_none() {
    let error = r#"data: {"id":"gen-abc123","object":"chat.completion.chunk","created":1234567890,"model":"openai/gpt-4o","provider":"OpenAI","error":{"code":429,"message":"Rate limit exceeded","metadata":{"error_type":"rate_limit_exceeded"}},"choices":[{"index":0,"delta":{"content":""},"finish_reason":"error"}]}"#;
    let sse = OPENAI_BASIC.replace("data: [DONE]", &format!("{error}\n\ndata: [DONE]"));
    let assembler = feed(Dialect::OpenAi, 1 << 20, &sse);
    assert!(!assembler.viable());
    assert!(assembler.finish().is_none());
    // A bare `{"error": …}` body as well.
    let sse = format!(
        "data: {{\"error\":{{\"message\":\"boom\",\"type\":\"server_error\"}}}}\n\n{OPENAI_BASIC}"
    );
    assert!(assemble(Dialect::OpenAi, &sse).is_none());
}

#[test]
fn openai_over_max_bytes_is_none() {
    let assembler = feed(Dialect::OpenAi, 200, OPENAI_BASIC);
    assert!(!assembler.viable());
    assert!(assembler.finish().is_none());
    let size = assemble(Dialect::OpenAi, OPENAI_BASIC)
        .unwrap()
        .to_string()
        .len();
    assert!(feed(Dialect::OpenAi, size, OPENAI_BASIC).finish().is_some());
    assert!(feed(Dialect::OpenAi, size - 1, OPENAI_BASIC)
        .finish()
        .is_none());
}

#[test]
fn openai_malformed_json_is_none() {
    let sse = OPENAI_BASIC.replace(r#"{"content":"Hi"}"#, r#"{"content":"Hi"#);
    assert!(assemble(Dialect::OpenAi, &sse).is_none());
    let sse = OPENAI_BASIC.replace(r#"{"content":"Hi"}"#, r#"{"content":42}"#);
    assert!(assemble(Dialect::OpenAi, &sse).is_none());
}

#[test]
fn large_stream_assembles_in_linear_time() {
    // 20k deltas: quadratic string building would make this test crawl.
    let mut sse = String::from(OPENAI_BASIC.split("\n\n").next().unwrap());
    sse.push_str("\n\n");
    let delta = r#"data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"abcdefghij"},"logprobs":null,"finish_reason":null}]}"#;
    for _ in 0..20_000 {
        sse.push_str(delta);
        sse.push_str("\n\n");
    }
    sse.push_str("data: [DONE]\n\n");
    let message = assemble(Dialect::OpenAi, &sse).unwrap();
    let content = message["choices"][0]["message"]["content"]
        .as_str()
        .unwrap();
    assert_eq!(content.len(), 200_000);
    assert_openai_round_trip(message);
}

// ----- Replay errors ----------------------------------------------------------------

#[test]
fn replay_rejects_bad_messages() {
    for dialect in [Dialect::Anthropic, Dialect::OpenAi] {
        assert!(matches!(
            replay(dialect, b"not json", false),
            Err(ReplayError::NotJson(_))
        ));
        assert!(matches!(
            replay(dialect, b"[1,2]", false),
            Err(ReplayError::NotObject)
        ));
        assert!(matches!(
            replay(dialect, b"\"text\"", false),
            Err(ReplayError::NotObject)
        ));
    }
    let err = replay(Dialect::Anthropic, br#"{"usage":{}}"#, false).unwrap_err();
    assert!(matches!(err, ReplayError::MissingField("content")));
    assert_eq!(err.to_string(), "cached message has no `content` field");
    assert!(matches!(
        replay(Dialect::Anthropic, br#"{"content":[]}"#, false),
        Err(ReplayError::MissingField("usage"))
    ));
    assert!(matches!(
        replay(
            Dialect::Anthropic,
            br#"{"content":[{"type":"text","text":5}],"usage":{}}"#,
            false
        ),
        Err(ReplayError::InvalidField {
            field: "content[].text",
            ..
        })
    ));
    assert!(matches!(
        replay(Dialect::OpenAi, br#"{"id":"x"}"#, true),
        Err(ReplayError::MissingField("choices"))
    ));
    assert!(matches!(
        replay(Dialect::OpenAi, br#"{"choices":[{"index":0}]}"#, true),
        Err(ReplayError::MissingField("choices[].message"))
    ));
}
