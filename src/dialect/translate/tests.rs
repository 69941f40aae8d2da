//! Golden tests over `tests/fixtures/translate/<case>/` (see its README)
//! and the stream translators' edge cases.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use bytes::BytesMut;
use serde_json::Value;

use super::*;
use crate::dialect::sse::SseParser;

/// `created` of every translated OpenAI answer in the fixtures.
pub(crate) const CREATED: u64 = 1_764_806_400;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/translate")
}

/// The client dialect a case's directory name starts with.
fn client_of(case: &str) -> Dialect {
    if case.starts_with("anthropic-client-") {
        Dialect::Anthropic
    } else if case.starts_with("openai-client-") {
        Dialect::OpenAi
    } else {
        panic!("{case}: a case is named anthropic-client-* or openai-client-*")
    }
}

/// The target a case's request goes to (the other dialect's provider).
pub(crate) fn target_for(client: Dialect) -> Target<'static> {
    match client {
        Dialect::Anthropic => Target::new("gpt-5.1", "openai"),
        Dialect::OpenAi => Target::new("claude-sonnet-5-5", "anthropic"),
    }
}

/// Runs an upstream SSE body through a translator, all at once.
pub(crate) fn translate_stream(
    client: Dialect,
    include_usage: bool,
    input: &[u8],
) -> (Vec<u8>, StreamEnd) {
    let mut translator = StreamTranslator::new(client, include_usage, CREATED);
    let mut parser = SseParser::new();
    let mut out = BytesMut::new();
    parser.feed(input, |ev| translator.on_event(ev.name, ev.data, &mut out));
    parser.finish(|ev| translator.on_event(ev.name, ev.data, &mut out));
    let end = translator.finish(&mut out);
    (out.to_vec(), end)
}

fn bless() -> bool {
    std::env::var_os("TOLLGATE_BLESS").is_some_and(|v| v == "1")
}

/// Compares `actual` with the file `expected` (or writes it when blessing);
/// returns a mismatch description.
fn check(expected: &Path, actual: &[u8], json: bool) -> Option<String> {
    let rendered = if json {
        let value: Value = serde_json::from_slice(actual).unwrap();
        let mut text = serde_json::to_string_pretty(&value).unwrap();
        text.push('\n');
        text.into_bytes()
    } else {
        actual.to_vec()
    };
    if bless() {
        std::fs::write(expected, &rendered).unwrap();
        return None;
    }
    let Ok(want) = std::fs::read(expected) else {
        return Some(format!(
            "{}: missing (TOLLGATE_BLESS=1 writes it)",
            expected.display()
        ));
    };
    let same = if json {
        serde_json::from_slice::<Value>(&want).ok() == serde_json::from_slice::<Value>(actual).ok()
    } else {
        want == actual
    };
    (!same).then(|| {
        format!(
            "{} differs; got:\n{}",
            expected.display(),
            String::from_utf8_lossy(&rendered)
        )
    })
}

fn run_case(dir: &Path, problems: &mut Vec<String>) {
    let case = dir.file_name().unwrap().to_string_lossy().into_owned();
    let client = client_of(&case);
    let mut include_usage = true;
    let mut ran = 0;
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for input in entries {
        let name = input.file_name().unwrap().to_string_lossy().into_owned();
        let Some(stem) = name
            .strip_suffix(".in.json")
            .or(name.strip_suffix(".in.sse"))
        else {
            continue;
        };
        ran += 1;
        let bytes = std::fs::read(&input).unwrap();
        let out = |ext: &str| dir.join(format!("{stem}.out.{ext}"));
        let problem = if stem == "request" {
            match request(client, &bytes, &target_for(client)) {
                Ok(translated) => {
                    include_usage = translated.include_usage || !translated.stream;
                    check(&out("json"), &translated.body, true)
                }
                Err(e) => check(&out("txt"), format!("{e}\n").as_bytes(), false),
            }
        } else if stem == "response" {
            match response(client, &bytes, CREATED) {
                Ok(body) => check(&out("json"), &body, true),
                Err(e) => check(&out("txt"), format!("{e}\n").as_bytes(), false),
            }
        } else if stem == "stream" {
            let (body, end) = translate_stream(client, include_usage, &bytes);
            check(&out("sse"), &body, false).or_else(|| {
                check(
                    &dir.join("stream.end.txt"),
                    format!("{end:?}\n").as_bytes(),
                    false,
                )
            })
        } else if let Some(status) = stem.strip_prefix("error-") {
            let status: u16 = status.parse().unwrap();
            let translated = error(client, status, &bytes, "req_upstream_1");
            assert_eq!(translated.status, status);
            check(&out("json"), &translated.body, true)
        } else {
            Some(format!("{}: unknown input", input.display()))
        };
        problems.extend(problem.map(|p| format!("{case}: {p}")));
    }
    if ran == 0 {
        problems.push(format!("{case}: no *.in.* file"));
    }
}

#[test]
fn golden_fixtures() {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(cases.len() >= 20, "fixture cases: {}", cases.len());
    let mut problems = Vec::new();
    for case in &cases {
        run_case(case, &mut problems);
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

/// Every golden stream case: (case, client, input, expected output).
fn stream_cases() -> Vec<(String, Dialect, Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(fixtures()).unwrap() {
        let dir = entry.unwrap().path();
        let input = dir.join("stream.in.sse");
        if !input.is_file() {
            continue;
        }
        let case = dir.file_name().unwrap().to_string_lossy().into_owned();
        let client = client_of(&case);
        let expected = std::fs::read(dir.join("stream.out.sse")).unwrap();
        out.push((case, client, std::fs::read(input).unwrap(), expected));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn include_usage_of(case: &str) -> bool {
    // The two OpenAI-client cases whose request streams without the option.
    !matches!(case, "openai-client-no-usage" | "openai-client-tools")
}

/// The same output whatever the upstream's chunking: fed one byte at a
/// time (argument fragments and UTF-8 characters split everywhere).
#[test]
fn streams_do_not_depend_on_chunking() {
    for (case, client, input, expected) in stream_cases() {
        let mut translator = StreamTranslator::new(client, include_usage_of(&case), CREATED);
        let mut parser = SseParser::new();
        let mut out = BytesMut::new();
        for byte in input.chunks(1) {
            parser.feed(byte, |ev| translator.on_event(ev.name, ev.data, &mut out));
        }
        parser.finish(|ev| translator.on_event(ev.name, ev.data, &mut out));
        translator.finish(&mut out);
        assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&expected),
            "{case}"
        );
    }
}

/// A translated stream that completes is one the client dialect's own
/// (strict) assembler accepts, and when the case also has a non-streamed
/// answer for the same turn, both translations agree on what matters.
#[test]
fn translated_streams_assemble_like_translated_responses() {
    use crate::dialect::Assembler;
    let mut compared = 0;
    for (case, client, input, _) in stream_cases() {
        let include_usage = include_usage_of(&case);
        let (body, end) = translate_stream(client, include_usage, &input);
        if !matches!(end, StreamEnd::Complete { .. }) {
            continue;
        }
        let mut assembler = Assembler::new(client, 1 << 20);
        let mut parser = SseParser::new();
        parser.feed(&body, |ev| assembler.on_event(ev.name, ev.data));
        let assembled = assembler
            .finish()
            .unwrap_or_else(|| panic!("{case}: the client's assembler refused the stream"));
        let assembled: Value = serde_json::from_slice(&assembled).unwrap();
        let response_in = fixtures().join(&case).join("response.in.json");
        // Cases whose stream is not the same turn as their response.
        if !response_in.is_file() || case == "anthropic-client-tools" || !include_usage {
            continue;
        }
        let translated = response(client, &std::fs::read(&response_in).unwrap(), CREATED).unwrap();
        let translated: Value = serde_json::from_slice(&translated).unwrap();
        let keys: &[&str] = match client {
            Dialect::Anthropic => &["/content", "/stop_reason", "/usage", "/id", "/model"],
            Dialect::OpenAi => &[
                "/choices/0/message/content",
                "/choices/0/message/reasoning",
                "/choices/0/message/tool_calls",
                "/choices/0/finish_reason",
                "/usage",
                "/id",
                "/model",
            ],
        };
        for key in keys {
            assert_eq!(
                assembled.pointer(key),
                translated.pointer(key),
                "{case}: {key}"
            );
        }
        compared += 1;
    }
    assert!(compared >= 8, "compared {compared} cases");
}

fn openai_chunk(delta: &str, finish: Option<&str>) -> String {
    let finish = finish.map_or("null".to_owned(), |f| format!("\"{f}\""));
    format!(
        r#"{{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{{"index":0,"delta":{delta},"finish_reason":{finish}}}]}}"#
    )
}

fn to_anthropic(events: &[String]) -> (String, StreamEnd) {
    let mut t = StreamTranslator::new(Dialect::Anthropic, false, CREATED);
    let mut out = BytesMut::new();
    for data in events {
        t.on_event("", data, &mut out);
    }
    let end = t.finish(&mut out);
    (String::from_utf8(out.to_vec()).unwrap(), end)
}

#[test]
fn openai_stream_without_usage_completes_unknown_usage() {
    let (out, end) = to_anthropic(&[
        openai_chunk(r#"{"role":"assistant","content":"Hi"}"#, None),
        openai_chunk("{}", Some("stop")),
        "[DONE]".to_owned(),
    ]);
    assert_eq!(end, StreamEnd::Complete { usage_known: false });
    assert!(out.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));
    // No [DONE] either: the finish reason is enough to close the message.
    let (_, end) = to_anthropic(&[openai_chunk(r#"{"content":"Hi"}"#, Some("length"))]);
    assert_eq!(end, StreamEnd::Complete { usage_known: false });
}

#[test]
fn openai_stream_edge_cases() {
    // Empty and null deltas open no block; a usage chunk before the finish
    // is kept for message_delta.
    let (out, end) = to_anthropic(&[
        openai_chunk(
            r#"{"role":"assistant","content":null,"tool_calls":[]}"#,
            None,
        ),
        openai_chunk(r#"{"content":""}"#, None),
        r#"{"id":"c1","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":0}}"#.to_owned(),
        openai_chunk(r#"{"content":"x"}"#, Some("stop")),
        r#"{"id":"c1","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":1}}"#.to_owned(),
    ]);
    assert_eq!(end, StreamEnd::Complete { usage_known: true });
    assert_eq!(
        out.matches("event: content_block_start").count(),
        1,
        "{out}"
    );
    assert!(out.contains(r#""usage":{"input_tokens":5,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":1}"#));
    // Text after a tool call closes it; its arguments cannot continue after.
    let (out, end) = to_anthropic(&[
        openai_chunk(
            r#"{"tool_calls":[{"index":0,"id":"a","type":"function","function":{"name":"f","arguments":"{"}}]}"#,
            None,
        ),
        openai_chunk(r#"{"content":"so"}"#, None),
        openai_chunk(
            r#"{"tool_calls":[{"index":0,"function":{"arguments":"}"}}]}"#,
            None,
        ),
    ]);
    assert_eq!(end, StreamEnd::Untranslatable);
    assert!(out.ends_with("\"type\":\"error\"}\n\n"), "{out}");
    // A fragment before its call's id and name.
    let (_, end) = to_anthropic(&[openai_chunk(
        r#"{"tool_calls":[{"index":3,"function":{"arguments":"{}"}}]}"#,
        None,
    )]);
    assert_eq!(end, StreamEnd::Untranslatable);
    // An id repeated on every fragment (some compatible servers) is one call.
    let (out, _) = to_anthropic(&[
        openai_chunk(
            r#"{"tool_calls":[{"index":0,"id":"a","type":"function","function":{"name":"f","arguments":"{\"x\""}}]}"#,
            None,
        ),
        openai_chunk(
            r#"{"tool_calls":[{"index":0,"id":"a","function":{"arguments":":1}"}}]}"#,
            None,
        ),
        openai_chunk("{}", Some("tool_calls")),
    ]);
    assert_eq!(
        out.matches("event: content_block_start").count(),
        1,
        "{out}"
    );
    // `[DONE]` before a finish reason.
    let (out, end) = to_anthropic(&[
        openai_chunk(r#"{"content":"x"}"#, None),
        "[DONE]".to_owned(),
    ]);
    assert_eq!(end, StreamEnd::Truncated);
    assert!(out.ends_with("\"type\":\"error\"}\n\n"), "{out}");
    // Nothing at all, or only an unreadable chunk.
    assert_eq!(to_anthropic(&[]).1, StreamEnd::Truncated);
    assert_eq!(to_anthropic(&["{".to_owned()]).1, StreamEnd::Untranslatable);
}

fn to_openai(events: &[(&str, &str)], include_usage: bool) -> (String, StreamEnd) {
    let mut t = StreamTranslator::new(Dialect::OpenAi, include_usage, CREATED);
    let mut out = BytesMut::new();
    for (name, data) in events {
        t.on_event(name, data, &mut out);
    }
    let end = t.finish(&mut out);
    (String::from_utf8(out.to_vec()).unwrap(), end)
}

#[test]
fn anthropic_stream_edge_cases() {
    let start = r#"{"type":"message_start","message":{"id":"msg_1","model":"m","usage":{"input_tokens":3,"output_tokens":1}}}"#;
    // Two tool calls get OpenAI indexes 0 and 1 whatever their block index;
    // unknown events and pings are dropped.
    let (out, end) = to_openai(
        &[
            ("message_start", start),
            ("ping", r#"{"type":"ping"}"#),
            (
                "content_block_start",
                r#"{"index":0,"content_block":{"type":"text","text":""}}"#,
            ),
            (
                "content_block_start",
                r#"{"index":1,"content_block":{"type":"tool_use","id":"t1","name":"f","input":{}}}"#,
            ),
            (
                "content_block_delta",
                r#"{"index":1,"delta":{"type":"input_json_delta","partial_json":"{}"}}"#,
            ),
            (
                "content_block_start",
                r#"{"index":2,"content_block":{"type":"tool_use","id":"t2","name":"g","input":{}}}"#,
            ),
            ("some_future_event", r#"{"type":"some_future_event"}"#),
            (
                "message_delta",
                r#"{"delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":9}}"#,
            ),
        ],
        true,
    );
    // No message_stop: the stop reason came, so the answer is whole.
    assert_eq!(end, StreamEnd::Complete { usage_known: true });
    assert!(out.contains(r#""tool_calls":[{"index":1,"id":"t2","type":"function","function":{"name":"g","arguments":""}}]"#), "{out}");
    assert!(out.contains(r#""finish_reason":"tool_calls""#));
    assert!(
        out.contains(r#""usage":{"completion_tokens":9,"prompt_tokens":3"#),
        "{out}"
    );
    assert!(out.ends_with("data: [DONE]\n\n"));
    // Arguments for a text block; a delta before message_start.
    let (_, end) = to_openai(
        &[
            ("message_start", start),
            (
                "content_block_start",
                r#"{"index":0,"content_block":{"type":"text","text":""}}"#,
            ),
            (
                "content_block_delta",
                r#"{"index":0,"delta":{"type":"input_json_delta","partial_json":"{"}}"#,
            ),
        ],
        false,
    );
    assert_eq!(end, StreamEnd::Untranslatable);
    let (_, end) = to_openai(
        &[(
            "content_block_delta",
            r#"{"index":0,"delta":{"type":"text_delta","text":"x"}}"#,
        )],
        false,
    );
    assert_eq!(end, StreamEnd::Untranslatable);
    // A huge block index sizes nothing.
    let (out, _) = to_openai(
        &[
            ("message_start", start),
            (
                "content_block_start",
                r#"{"index":18446744073709551615,"content_block":{"type":"tool_use","id":"t","name":"f","input":{}}}"#,
            ),
            (
                "content_block_delta",
                r#"{"index":18446744073709551615,"delta":{"type":"input_json_delta","partial_json":"{}"}}"#,
            ),
        ],
        false,
    );
    assert!(out.contains(r#""function":{"arguments":"{}"}"#), "{out}");
    // Server tools cannot be carried.
    let (out, end) = to_openai(
        &[
            ("message_start", start),
            (
                "content_block_start",
                r#"{"index":0,"content_block":{"type":"server_tool_use","id":"s","name":"web_search","input":{}}}"#,
            ),
        ],
        false,
    );
    assert_eq!(end, StreamEnd::Untranslatable);
    assert!(out.ends_with("\"type\":\"server_error\"}}\n\n"), "{out}");
}

#[test]
fn requests_refuse_what_they_cannot_carry() {
    let target = target_for(Dialect::OpenAi);
    for (body, field) in [
        (r#"{"messages":[],"temperature":1.5}"#, "temperature"),
        (
            r#"{"messages":[],"frequency_penalty":0.5}"#,
            "frequency_penalty",
        ),
        (
            r#"{"messages":[],"reasoning_effort":"xhigh"}"#,
            "reasoning_effort=xhigh",
        ),
        (
            r#"{"messages":[],"max_tokens":1000,"reasoning_effort":"low"}"#,
            "reasoning_effort",
        ),
        (
            r#"{"messages":[{"role":"user","content":"a"},{"role":"system","content":"b"}]}"#,
            "messages[].role=system",
        ),
        (
            r#"{"messages":[{"role":"user","content":[{"type":"input_audio","input_audio":{}}]}]}"#,
            "messages[].content[].type=input_audio",
        ),
        (
            r#"{"messages":[],"tools":[{"type":"custom","custom":{"name":"x"}}]}"#,
            "tools[].type",
        ),
        (r#"{"messages":[],"functions":[]}"#, "functions"),
    ] {
        assert_eq!(
            request(Dialect::OpenAi, body.as_bytes(), &target),
            Err(TranslateError::Untranslatable {
                field: field.to_owned(),
                to: "anthropic"
            }),
            "{body}"
        );
    }
    let target = target_for(Dialect::Anthropic);
    for (body, field) in [
        (
            r#"{"messages":[],"max_tokens":1,"container":"c"}"#,
            "container",
        ),
        (
            r#"{"messages":[],"max_tokens":1,"tools":[{"type":"web_search_20250305","name":"web_search"}]}"#,
            "tools[].type",
        ),
        (
            r#"{"messages":[],"max_tokens":1,"output_config":{"effort":"max"}}"#,
            "output_config.effort",
        ),
        (
            r#"{"max_tokens":1,"messages":[{"role":"user","content":[{"type":"tool_result","tool_use_id":"t","content":[{"type":"image","source":{}}]}]}]}"#,
            "messages[0].content[].content[].type=image",
        ),
    ] {
        assert_eq!(
            request(Dialect::Anthropic, body.as_bytes(), &target),
            Err(TranslateError::Untranslatable {
                field: field.to_owned(),
                to: "openai"
            }),
            "{body}"
        );
    }
    // Malformed, not untranslatable: the client's own mistake.
    assert!(matches!(
        request(Dialect::OpenAi, br#"{"messages":[{"role":"assistant","tool_calls":[{"id":"a","type":"function","function":{"name":"f","arguments":"[1]"}}]}]}"#, &target),
        Err(TranslateError::Invalid { .. })
    ));
    assert!(matches!(
        request(Dialect::OpenAi, b"[]", &target),
        Err(TranslateError::BadJson(_))
    ));
}

#[test]
fn openrouter_targets_get_max_tokens_and_the_thinking_round_trip_holds() {
    let body = br#"{"model":"x","max_tokens":2000,"thinking":{"type":"enabled","budget_tokens":1024},"messages":[{"role":"user","content":"q"}]}"#;
    let to_openai = request(Dialect::Anthropic, body, &Target::new("o/m", "openrouter")).unwrap();
    let v: Value = serde_json::from_slice(&to_openai.body).unwrap();
    assert_eq!(v["max_tokens"], 2000);
    assert_eq!(v["reasoning_effort"], "low");
    let back = request(
        Dialect::OpenAi,
        &to_openai.body,
        &Target::new("x", "anthropic"),
    )
    .unwrap();
    let v: Value = serde_json::from_slice(&back.body).unwrap();
    assert_eq!(v["thinking"]["budget_tokens"], 1024);
    assert_eq!(v["max_tokens"], 2000);
}
