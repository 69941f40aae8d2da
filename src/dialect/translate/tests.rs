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
