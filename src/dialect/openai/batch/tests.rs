//! The batch wire formats against fixtures: lines as the in-repo fake
//! provider writes them (`tests/support/fake_batches/`), the shapes of
//! providers.md §8.3, multipart bodies as the official SDKs send them, and
//! garbled input that must never panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::Bytes;
use serde_json::json;

use super::*;
use crate::dialect::Usage;

fn chat_line(id: &str, body: serde_json::Value) -> String {
    json!({"custom_id": id, "method": "POST", "url": "/v1/chat/completions", "body": body})
        .to_string()
}

fn jsonl(lines: &[String]) -> Vec<u8> {
    let mut out = lines.join("\n").into_bytes();
    out.push(b'\n');
    out
}

fn parse(data: &[u8]) -> Result<BatchInput, InputError> {
    parse_jsonl(data, InputLimits::default())
}

// === Input files ===

#[test]
fn input_lines_become_items_with_their_bounds() {
    let data = jsonl(&[
        chat_line(
            "ok-1",
            json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}], "user": "x-fake-usage:input=100,output=20,cache_read=30"}),
        ),
        chat_line(
            "ok-2",
            json!({"model": "gpt-4o", "max_completion_tokens": 300, "n": 2, "tools": [], "messages": []}),
        ),
        String::new(),
        chat_line(
            "ok-3",
            json!({"model": "gpt-4o", "max_tokens": 10, "max_completion_tokens": 20, "messages": []}),
        ),
    ]);
    let input = parse(&data).unwrap();
    assert_eq!(input.endpoint, BatchEndpoint::ChatCompletions);
    let ids: Vec<_> = input.items.iter().map(|i| i.custom_id.as_str()).collect();
    assert_eq!(ids, ["ok-1", "ok-2", "ok-3"]);
    let [a, b, c] = &input.items[..] else {
        panic!("three items")
    };
    assert_eq!(
        (a.line, a.model.as_str(), a.max_tokens, a.choices, a.tools),
        (1, "gpt-4o-mini", None, 1, false)
    );
    assert_eq!(a.output_bound(4096), 4096, "the default when absent");
    assert_eq!(
        (b.line, b.max_tokens, b.choices, b.tools),
        (2, Some(300), 2, true)
    );
    assert_eq!(b.output_bound(4096), 300);
    // The blank line 3 still counts; both bounds: the larger.
    assert_eq!((c.line, c.max_tokens), (4, Some(20)));
    // The body's own bytes, as the budget estimate reads them.
    let body =
        json!({"model": "gpt-4o", "max_tokens": 10, "max_completion_tokens": 20, "messages": []})
            .to_string();
    assert_eq!(c.body_bytes, body.len() as u64);
}

#[test]
fn responses_and_embeddings_lines() {
    let line = |id: &str, url: &str, body: serde_json::Value| {
        json!({"custom_id": id, "method": "POST", "url": url, "body": body}).to_string()
    };
    let input = parse(&jsonl(&[line(
        "r-1",
        "/v1/responses",
        json!({"model": "gpt-4o-mini", "input": "Hi", "max_output_tokens": 64}),
    )]))
    .unwrap();
    assert_eq!(input.endpoint, BatchEndpoint::Responses);
    assert_eq!(input.items[0].max_tokens, Some(64));
    let input = parse(&jsonl(&[line(
        "e-1",
        "/v1/embeddings",
        json!({"model": "text-embedding-3-small", "input": ["a", "b"]}),
    )]))
    .unwrap();
    assert_eq!(input.endpoint, BatchEndpoint::Embeddings);
    assert_eq!(input.items[0].output_bound(4096), 0, "no output");
    assert!(input.check_endpoint(BatchEndpoint::Embeddings).is_ok());
    assert_eq!(
        input.check_endpoint(BatchEndpoint::ChatCompletions),
        Err(InputError::EndpointMismatch {
            line: 1,
            url: "/v1/embeddings".into(),
            expected: BatchEndpoint::ChatCompletions
        })
    );
}

#[test]
fn every_problem_names_its_line() {
    let ok = chat_line("a", json!({"model": "m", "messages": []}));
    let case = |bad: &str| parse(&jsonl(&[ok.clone(), bad.to_owned()])).unwrap_err();
    assert!(matches!(
        case("{not json"),
        InputError::BadJson { line: 2, .. }
    ));
    assert!(matches!(case("[1,2]"), InputError::BadJson { line: 2, .. }));
    assert!(matches!(
        case(r#"{"custom_id":1,"method":"POST","url":"/v1/chat/completions","body":{}}"#),
        InputError::BadJson { line: 2, .. }
    ));
    assert_eq!(
        case(&chat_line("a", json!({"model": "m"}))),
        InputError::DuplicateCustomId {
            line: 2,
            custom_id: "a".into()
        }
    );
    assert_eq!(
        case(r#"{"method":"POST","url":"/v1/chat/completions","body":{"model":"m"}}"#),
        InputError::Missing {
            line: 2,
            field: "custom_id"
        }
    );
    assert_eq!(
        case(r#"{"custom_id":"b","method":"POST","url":"/v1/chat/completions","body":null}"#),
        InputError::Missing {
            line: 2,
            field: "body"
        }
    );
    assert_eq!(
        case(
            r#"{"custom_id":"b","method":"POST","url":"/v1/chat/completions","body":{"messages":[]}}"#
        ),
        InputError::Missing {
            line: 2,
            field: "body.model"
        }
    );
    assert_eq!(
        case(
            r#"{"custom_id":"b","method":"GET","url":"/v1/chat/completions","body":{"model":"m"}}"#
        ),
        InputError::Method {
            line: 2,
            method: "GET".into()
        }
    );
    assert_eq!(
        case(r#"{"custom_id":"b","method":"POST","url":"/v1/completions","body":{"model":"m"}}"#),
        InputError::UnsupportedUrl {
            line: 2,
            url: "/v1/completions".into()
        }
    );
    assert_eq!(
        case(r#"{"custom_id":"b","method":"POST","url":"/v1/embeddings","body":{"model":"m"}}"#),
        InputError::EndpointMismatch {
            line: 2,
            url: "/v1/embeddings".into(),
            expected: BatchEndpoint::ChatCompletions
        }
    );
    assert_eq!(
        case(r#"{"custom_id":"b","method":"POST","url":"/v1/chat/completions","body":[1]}"#),
        InputError::BodyNotObject { line: 2 }
    );
    assert_eq!(
        case(&chat_line("b", json!({"model": "m", "stream": true}))),
        InputError::Stream { line: 2 }
    );
    let mut not_utf8 = jsonl(std::slice::from_ref(&ok));
    not_utf8.extend_from_slice(b"{\"custom_id\":\"b\xff\"}");
    assert!(matches!(
        parse(&not_utf8),
        Err(InputError::BadJson { line: 2, .. })
    ));
    assert_eq!(parse(b""), Err(InputError::Empty));
    assert_eq!(parse(b"\n \n\r\n"), Err(InputError::Empty));
    // The error's OpenAI shape.
    let e = case(&chat_line("a", json!({"model": "m"})));
    assert_eq!(
        (e.code(), e.param(), e.line()),
        ("duplicate_custom_id", Some("custom_id"), Some(2))
    );
    assert_eq!(
        e.to_string(),
        "line 2: the custom_id \"a\" is used more than once in this file"
    );
    assert_eq!(InputError::Empty.line(), None);
}

#[test]
fn request_and_line_limits() {
    let lines: Vec<String> = (0..4)
        .map(|i| chat_line(&format!("c{i}"), json!({"model": "m"})))
        .collect();
    let limits = InputLimits {
        max_requests: 3,
        max_line_bytes: 1024,
    };
    assert_eq!(
        parse_jsonl(&jsonl(&lines), limits),
        Err(InputError::TooManyRequests { line: 4, max: 3 })
    );
    assert_eq!(
        parse_jsonl(&jsonl(&lines[..3]), limits)
            .unwrap()
            .items
            .len(),
        3
    );
    let long = chat_line("big", json!({"model": "m", "x": "y".repeat(2000)}));
    assert_eq!(
        parse_jsonl(&jsonl(&[lines[0].clone(), long]), limits),
        Err(InputError::LineTooLong { line: 2, max: 1024 })
    );
    assert_eq!(InputLimits::default().max_requests, 50_000);
}

#[test]
fn chunked_reading_gives_the_same_items_and_visits_each_body() {
    let data = jsonl(&[
        chat_line("a", json!({"model": "m", "max_tokens": 5, "tools": []})),
        chat_line(
            "b",
            json!({"model": "m2", "messages": [{"role": "user", "content": "é"}]}),
        ),
    ]);
    let whole = parse(&data).unwrap();
    for size in [1, 2, 3, 7, 64, data.len()] {
        let mut reader = InputReader::new(InputLimits::default());
        let mut seen = Vec::new();
        let mut visit = |item: &BatchItem, body: &[u8]| {
            assert_eq!(item.body_bytes, body.len() as u64);
            seen.push((item.custom_id.clone(), body.to_vec()));
        };
        for chunk in data.chunks(size) {
            reader.feed_with(chunk, &mut visit).unwrap();
        }
        assert_eq!(
            reader.finish_with(&mut visit).unwrap(),
            whole,
            "chunks of {size}"
        );
        assert_eq!(seen.len(), 2);
        let body: serde_json::Value = serde_json::from_slice(&seen[1].1).unwrap();
        assert_eq!(body["model"], "m2");
    }
    // After an error, every call answers it.
    let mut reader = InputReader::new(InputLimits::default());
    assert!(reader.feed(b"{bad\n").is_err());
    assert!(reader
        .feed(chat_line("x", json!({"model": "m"})).as_bytes())
        .is_err());
    assert!(matches!(
        reader.finish(),
        Err(InputError::BadJson { line: 1, .. })
    ));
}

// === Uploads (multipart) ===

/// A `POST /v1/files` body as httpx (the Python SDK) encodes it: data
/// fields first, then the file.
fn multipart(boundary: &str, parts: &[(&str, Option<&str>, &[u8])]) -> Bytes {
    let mut out = Vec::new();
    for (name, filename, data) in parts {
        out.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match filename {
            Some(f) => out.extend_from_slice(
                format!(
                    "Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\n\
                     Content-Type: application/octet-stream\r\n\r\n"
                )
                .as_bytes(),
            ),
            None => out.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
            ),
        }
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    Bytes::from(out)
}

const BOUNDARY: &str = "d3b1f0c6a1e94a5f8c5b0e0f2b7a9c11";

fn content_type() -> String {
    format!("multipart/form-data; boundary={BOUNDARY}")
}

#[test]
fn an_upload_with_purpose_batch_is_read_in_either_field_order() {
    let file = jsonl(&[
        chat_line("ok-1", json!({"model": "gpt-4o-mini", "messages": []})),
        chat_line("ok-2", json!({"model": "gpt-4o-mini", "max_tokens": 9})),
    ]);
    let purpose_first = multipart(
        BOUNDARY,
        &[
            ("purpose", None, b"batch"),
            ("file", Some("in.jsonl"), &file),
        ],
    );
    let file_first = multipart(
        BOUNDARY,
        &[
            ("file", Some("in.jsonl"), &file),
            ("expires_after[anchor]", None, b"created_at"),
            ("purpose", None, b"batch"),
        ],
    );
    for body in [purpose_first, file_first] {
        let mut visited = 0;
        let upload = parse_upload_with(
            &content_type(),
            body,
            InputLimits::default(),
            &mut |_, _| visited += 1,
        )
        .unwrap();
        assert_eq!(upload.purpose, "batch");
        assert_eq!(upload.filename.as_deref(), Some("in.jsonl"));
        let input = upload.input.unwrap();
        assert_eq!(input.items.len(), 2);
        assert_eq!(input.items[1].max_tokens, Some(9));
        assert_eq!(visited, 2, "each item once");
    }
}

#[test]
fn an_upload_for_another_purpose_is_not_read_as_a_batch() {
    let body = multipart(
        BOUNDARY,
        &[
            ("purpose", None, b"assistants"),
            ("file", Some("a.pdf"), b"%PDF-1.7 \xff\xfe"),
        ],
    );
    let upload = parse_upload(&content_type(), body, InputLimits::default()).unwrap();
    assert_eq!(
        (upload.purpose.as_str(), upload.input),
        ("assistants", None)
    );
}

#[test]
fn upload_errors() {
    let file = jsonl(&[chat_line("a", json!({"model": "m"})), "{oops".into()]);
    let body = multipart(
        BOUNDARY,
        &[
            ("purpose", None, b"batch"),
            ("file", Some("x.jsonl"), &file),
        ],
    );
    let e = parse_upload(&content_type(), body, InputLimits::default()).unwrap_err();
    assert!(
        matches!(e, UploadError::Input(InputError::BadJson { line: 2, .. })),
        "{e:?}"
    );
    assert_eq!((e.code(), e.param()), ("invalid_json_line", Some("file")));
    let only_file = multipart(BOUNDARY, &[("file", Some("x.jsonl"), &file)]);
    assert_eq!(
        parse_upload(&content_type(), only_file, InputLimits::default()),
        Err(UploadError::Missing("purpose"))
    );
    let only_purpose = multipart(BOUNDARY, &[("purpose", None, b"batch")]);
    assert_eq!(
        parse_upload(&content_type(), only_purpose, InputLimits::default()),
        Err(UploadError::Missing("file"))
    );
    let long = "p".repeat(300);
    let long_purpose = multipart(BOUNDARY, &[("purpose", None, long.as_bytes())]);
    assert_eq!(
        parse_upload(&content_type(), long_purpose, InputLimits::default()),
        Err(UploadError::BadPurpose)
    );
    for ct in ["application/json", "multipart/form-data", ""] {
        assert!(
            matches!(
                parse_upload(ct, Bytes::from_static(b"{}"), InputLimits::default()),
                Err(UploadError::NotMultipart(_))
            ),
            "{ct}"
        );
    }
    for body in [
        &b""[..],
        b"garbage",
        b"--d3b1f0c6a1e94a5f8c5b0e0f2b7a9c11\r\nno headers",
    ] {
        let e = parse_upload(
            &content_type(),
            Bytes::copy_from_slice(body),
            InputLimits::default(),
        )
        .unwrap_err();
        assert!(matches!(e, UploadError::Malformed(_)), "{e:?}");
    }
}

// === Batch objects ===

#[test]
fn a_create_body() {
    let create = parse_create(
        br#"{"input_file_id":"file-abc","endpoint":"/v1/chat/completions","completion_window":"24h","metadata":{"job":"nightly"}}"#,
    )
    .unwrap();
    assert_eq!(create.input_file_id, "file-abc");
    assert_eq!(create.endpoint, BatchEndpoint::ChatCompletions);
    assert_eq!(create.completion_window, "24h");
    assert_eq!(create.metadata.unwrap()["job"], "nightly");
    assert_eq!(
        parse_create(br#"{"endpoint":"/v1/responses","completion_window":"24h"}"#),
        Err(ObjectError::Missing("input_file_id"))
    );
    let e = parse_create(
        br#"{"input_file_id":"f","endpoint":"/v1/moderations","completion_window":"24h"}"#,
    )
    .unwrap_err();
    assert_eq!(
        e,
        ObjectError::UnsupportedEndpoint("/v1/moderations".into())
    );
    assert_eq!((e.code(), e.param()), ("invalid_value", Some("endpoint")));
    for junk in [&b"[]"[..], b"", b"{", b"{\"input_file_id\":5}"] {
        assert!(matches!(parse_create(junk), Err(ObjectError::BadJson(_))));
    }
}

/// A batch object as the fake answers it (every field it writes).
fn fake_batch(status: &str) -> serde_json::Value {
    json!({
        "id": "batch_abc123", "object": "batch", "endpoint": "/v1/chat/completions",
        "model": "gpt-4o-mini", "errors": null, "input_file_id": "file-in",
        "completion_window": "24h", "status": status,
        "output_file_id": "file-out", "error_file_id": null,
        "created_at": 1_700_000_000, "in_progress_at": 1_700_000_001, "expires_at": 1_700_086_400,
        "finalizing_at": null, "completed_at": 1_700_000_002, "failed_at": null, "expired_at": null,
        "cancelling_at": null, "cancelled_at": null,
        "request_counts": {"total": 3, "completed": 2, "failed": 1},
        "usage": {"input_tokens": 141, "input_tokens_details": {"cached_tokens": 30},
                  "output_tokens": 31, "output_tokens_details": {"reasoning_tokens": 0},
                  "total_tokens": 172},
        "metadata": {"job": "nightly"},
    })
}

#[test]
fn batch_objects_and_their_status() {
    let batch = parse_batch(fake_batch("completed").to_string().as_bytes()).unwrap();
    assert_eq!(batch.id, "batch_abc123");
    assert_eq!(batch.status, BatchStatus::Completed);
    assert!(batch.status.is_terminal());
    assert_eq!(batch.endpoint_kind(), Some(BatchEndpoint::ChatCompletions));
    assert_eq!(batch.input_file_id.as_deref(), Some("file-in"));
    assert_eq!(batch.output_file_id.as_deref(), Some("file-out"));
    assert_eq!(batch.error_file_id, None);
    assert_eq!(
        batch.request_counts,
        Some(RequestCounts {
            total: 3,
            completed: 2,
            failed: 1
        })
    );
    let usage = batch.usage.unwrap();
    assert_eq!(
        (
            usage.input_tokens,
            usage.cache_read_input_tokens,
            usage.output_tokens
        ),
        (111, 30, 31)
    );
    for (status, want, terminal) in [
        ("validating", BatchStatus::Validating, false),
        ("in_progress", BatchStatus::InProgress, false),
        ("finalizing", BatchStatus::Finalizing, false),
        ("cancelling", BatchStatus::Cancelling, false),
        ("failed", BatchStatus::Failed, true),
        ("expired", BatchStatus::Expired, true),
        ("cancelled", BatchStatus::Cancelled, true),
        ("paused_by_a_newer_api", BatchStatus::Unknown, false),
    ] {
        let b = parse_batch(fake_batch(status).to_string().as_bytes()).unwrap();
        assert_eq!(
            (b.status, b.status.is_terminal()),
            (want, terminal),
            "{status}"
        );
    }
    // The SDK's minimal shape: nulls where nothing is known yet.
    let minimal = br#"{"id":"batch_1","object":"batch","endpoint":"/v1/embeddings","input_file_id":"f","completion_window":"24h","status":"validating","created_at":1,"output_file_id":null,"error_file_id":null,"request_counts":null}"#;
    let b = parse_batch(minimal).unwrap();
    assert_eq!(
        (b.output_file_id, b.request_counts, b.usage),
        (None, None, None)
    );
    assert_eq!(
        parse_batch(br#"{"object":"batch","status":"completed"}"#),
        Err(ObjectError::Missing("id"))
    );
    assert!(parse_batch(br#"{"id":"f","object":"file"}"#).is_err());
    assert!(parse_batch(
        br#"{"error":{"message":"No batch found","type":"invalid_request_error"}}"#
    )
    .is_err());
}

#[test]
fn list_pages_and_file_objects() {
    let page = json!({"object": "list", "data": [fake_batch("in_progress"), fake_batch("cancelled")],
                      "first_id": "batch_abc123", "last_id": "batch_abc123", "has_more": true});
    let batches = parse_batch_list(page.to_string().as_bytes()).unwrap();
    let statuses: Vec<_> = batches.iter().map(|b| b.status).collect();
    assert_eq!(statuses, [BatchStatus::InProgress, BatchStatus::Cancelled]);
    assert_eq!(parse_batch_list(b"{}"), Err(ObjectError::Missing("data")));
    // The fake's file object (`files.rs`).
    let file = parse_file(
        br#"{"id":"file-xyz","object":"file","bytes":412,"created_at":1700000000,"filename":"in.jsonl","purpose":"batch","status":"processed","expires_at":1702592000,"status_details":null}"#,
    )
    .unwrap();
    assert_eq!(
        file,
        FileObject {
            id: "file-xyz".into(),
            purpose: Some("batch".into()),
            filename: Some("in.jsonl".into()),
            bytes: Some(412),
        }
    );
    assert!(parse_file(br#"{"id":"batch_1","object":"batch"}"#).is_err());
    assert_eq!(
        parse_file(br#"{"object":"file"}"#),
        Err(ObjectError::Missing("id"))
    );
}

// === Results ===

/// Output and error file lines as the fake writes them (`openai.rs`
/// `result_lines`, bodies from the endpoints' own replies).
const CHAT_OK: &str = r#"{"custom_id":"ok-1","error":null,"id":"batch_req_7f3a","response":{"body":{"choices":[{"finish_reason":"stop","index":0,"logprobs":null,"message":{"content":"Hello!","refusal":null,"role":"assistant"}}],"created":1700000000,"id":"chatcmpl-abc","model":"gpt-4o-mini","object":"chat.completion","service_tier":"default","system_fingerprint":"fp_fake","usage":{"completion_tokens":20,"completion_tokens_details":{"accepted_prediction_tokens":0,"audio_tokens":0,"reasoning_tokens":0,"rejected_prediction_tokens":0},"prompt_tokens":130,"prompt_tokens_details":{"audio_tokens":0,"cached_tokens":30},"total_tokens":150}},"request_id":"req_123","status_code":200}}"#;
const CHAT_REFUSED: &str = r#"{"custom_id":"err-1","error":null,"id":"batch_req_9","response":{"body":{"error":{"code":null,"message":"fake provider: this item errored (custom_id prefix err-)","param":null,"type":"invalid_request_error"}},"request_id":"req_9","status_code":400}}"#;
const CANCELLED: &str = r#"{"custom_id":"hold-1","error":{"code":"batch_cancelled","message":"This request was not executed because the batch was cancelled."},"id":"batch_req_2","response":null}"#;
const EXPIRED: &str = r#"{"custom_id":"exp-1","error":{"code":"batch_expired","message":"This request could not be executed before the completion window expired."},"id":"batch_req_3","response":null}"#;
const EMBEDDING_OK: &str = r#"{"custom_id":"e-1","error":null,"id":"batch_req_4","response":{"body":{"data":[{"embedding":[0.1,0.2],"index":0,"object":"embedding"},{"embedding":[0.3,0.4],"index":1,"object":"embedding"}],"model":"text-embedding-3-small","object":"list","usage":{"prompt_tokens":8,"total_tokens":8}},"request_id":"req_4","status_code":200}}"#;
const RESPONSES_OK: &str = r#"{"custom_id":"r-1","error":null,"id":"batch_req_5","response":{"body":{"id":"resp_1","object":"response","status":"completed","model":"gpt-4o-mini","output":[],"usage":{"input_tokens":40,"input_tokens_details":{"cached_tokens":4},"output_tokens":9,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":49}},"request_id":"req_5","status_code":200}}"#;
/// providers.md §8.3's shape, key order as the guide writes it.
const GUIDE_SHAPE: &str = r#"{"id": "batch_req_123", "custom_id": "request-2", "response": {"status_code": 200, "request_id": "req_123", "body": {"id": "chatcmpl-123", "object": "chat.completion", "created": 1711652795, "model": "gpt-3.5-turbo-0125", "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello."}, "logprobs": null, "finish_reason": "stop"}], "usage": {"prompt_tokens": 22, "completion_tokens": 2, "total_tokens": 24}, "system_fingerprint": "fp_123"}}, "error": null}"#;

fn results(endpoint: BatchEndpoint, lines: &[&str]) -> Vec<BatchResult> {
    let data = lines.join("\n");
    parse_results(endpoint, data.as_bytes(), 1 << 20)
        .into_iter()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn chat_results_by_outcome() {
    let r = results(
        BatchEndpoint::ChatCompletions,
        &[CHAT_OK, CHAT_REFUSED, CANCELLED, EXPIRED, GUIDE_SHAPE],
    );
    let ok = &r[0];
    assert_eq!(
        (ok.line, ok.custom_id.as_str(), ok.outcome, ok.status_code),
        (1, "ok-1", ItemOutcome::Succeeded, Some(200))
    );
    assert_eq!(ok.id.as_deref(), Some("batch_req_7f3a"));
    assert_eq!(ok.request_id.as_deref(), Some("req_123"));
    assert_eq!(ok.model.as_deref(), Some("gpt-4o-mini"));
    assert_eq!(
        ok.usage,
        Some(Usage {
            input_tokens: 100,
            cache_read_input_tokens: 30,
            output_tokens: 20,
            ..Usage::default()
        })
    );
    assert_eq!(ok.error, None);
    let refused = &r[1];
    assert_eq!(
        (refused.outcome, refused.status_code, refused.usage),
        (ItemOutcome::Errored, Some(400), None)
    );
    let e = refused.error.clone().unwrap();
    assert_eq!(e.code.as_deref(), Some("invalid_request_error"));
    assert!(e.message.unwrap().contains("errored"));
    assert_eq!((r[2].outcome, r[2].usage), (ItemOutcome::Cancelled, None));
    assert_eq!(
        r[2].error.as_ref().unwrap().code.as_deref(),
        Some("batch_cancelled")
    );
    assert_eq!(
        (r[3].outcome, r[3].status_code),
        (ItemOutcome::Expired, None)
    );
    let guide = &r[4];
    assert_eq!(guide.model.as_deref(), Some("gpt-3.5-turbo-0125"));
    assert_eq!(
        guide.usage.map(|u| (u.input_tokens, u.output_tokens)),
        Some((22, 2))
    );
}

#[test]
fn embeddings_and_responses_results() {
    let e = &results(BatchEndpoint::Embeddings, &[EMBEDDING_OK])[0];
    assert_eq!(e.outcome, ItemOutcome::Succeeded);
    assert_eq!(e.model.as_deref(), Some("text-embedding-3-small"));
    assert_eq!(
        e.usage,
        Some(Usage {
            input_tokens: 8,
            ..Usage::default()
        })
    );
    let r = &results(BatchEndpoint::Responses, &[RESPONSES_OK])[0];
    assert_eq!(
        r.usage,
        Some(Usage {
            input_tokens: 36,
            cache_read_input_tokens: 4,
            output_tokens: 9,
            ..Usage::default()
        })
    );
}

#[test]
fn odd_results_are_reported_and_reading_goes_on() {
    let data = [
        "{broken",
        r#"{"id":"x","response":null,"error":null}"#,
        "",
        r#"{"custom_id":"no-usage","response":{"status_code":200,"body":{"model":"m"}},"error":null}"#,
        r#"{"custom_id":"odd-status","response":{"status_code":"500","body":[1]},"error":{"code":7}}"#,
        CHAT_OK,
    ]
    .join("\r\n");
    let out = parse_results(BatchEndpoint::ChatCompletions, data.as_bytes(), 1 << 20);
    assert_eq!(out.len(), 5, "the blank line is skipped");
    assert!(matches!(out[0], Err(ResultError::BadJson { line: 1, .. })));
    assert_eq!(out[1], Err(ResultError::MissingCustomId { line: 2 }));
    let no_usage = out[2].as_ref().unwrap();
    assert_eq!(
        (no_usage.outcome, no_usage.model.as_deref(), no_usage.usage),
        (ItemOutcome::Succeeded, Some("m"), None)
    );
    let odd = out[3].as_ref().unwrap();
    assert_eq!(
        (odd.outcome, odd.status_code),
        (ItemOutcome::Errored, Some(500))
    );
    assert_eq!(odd.error.as_ref().unwrap().code.as_deref(), Some("7"));
    assert_eq!(out[4].as_ref().unwrap().line, 6);
    // A line over the bound, then the reader goes on.
    let out = parse_results(
        BatchEndpoint::ChatCompletions,
        format!("{CHAT_OK}\n{CANCELLED}").as_bytes(),
        CANCELLED.len(),
    );
    assert_eq!(
        out[0],
        Err(ResultError::LineTooLong {
            line: 1,
            max: CANCELLED.len()
        })
    );
    assert_eq!(out[1].as_ref().unwrap().outcome, ItemOutcome::Cancelled);
    assert_eq!(out[0].as_ref().unwrap_err().line(), 1);
}

#[test]
fn chunked_results_match_whole_ones() {
    let data = [CHAT_OK, CHAT_REFUSED, CANCELLED].join("\n");
    let whole = parse_results(BatchEndpoint::ChatCompletions, data.as_bytes(), 1 << 20);
    for size in [1, 5, 64, 1000] {
        let mut reader = ResultsReader::new(BatchEndpoint::ChatCompletions, 1 << 20);
        let mut got = Vec::new();
        for chunk in data.as_bytes().chunks(size) {
            reader.feed(chunk, &mut |r| got.push(r));
        }
        reader.finish(&mut |r| got.push(r));
        assert_eq!(got, whole, "chunks of {size}");
    }
}

// === Never panic ===

/// Tiny deterministic generator (xorshift), so the garbling is the same on
/// every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Every prefix of every fixture, and many randomly garbled copies
/// (bytes flipped, deleted, duplicated, newlines inserted), through every
/// parser: any answer is fine, a panic is not.
#[test]
fn truncated_and_garbled_input_never_panics() {
    let input_line = chat_line(
        "a",
        json!({"model": "gpt-4o", "max_tokens": 5, "n": 2, "messages": [{"role": "user", "content": "é\u{1F600}"}]}),
    );
    let batch = fake_batch("completed").to_string();
    let fixtures: Vec<&[u8]> = vec![
        input_line.as_bytes(),
        CHAT_OK.as_bytes(),
        CHAT_REFUSED.as_bytes(),
        CANCELLED.as_bytes(),
        EMBEDDING_OK.as_bytes(),
        RESPONSES_OK.as_bytes(),
        GUIDE_SHAPE.as_bytes(),
        batch.as_bytes(),
    ];
    let upload = multipart(
        BOUNDARY,
        &[
            ("purpose", None, b"batch"),
            ("file", Some("in.jsonl"), input_line.as_bytes()),
        ],
    );
    let run = |data: &[u8]| {
        let _ = parse_jsonl(
            data,
            InputLimits {
                max_requests: 3,
                max_line_bytes: 4096,
            },
        );
        for endpoint in [
            BatchEndpoint::ChatCompletions,
            BatchEndpoint::Responses,
            BatchEndpoint::Embeddings,
        ] {
            let _ = parse_results(endpoint, data, 4096);
        }
        let _ = parse_batch(data);
        let _ = parse_batch_list(data);
        let _ = parse_create(data);
        let _ = parse_file(data);
        if let Ok(text) = std::str::from_utf8(data) {
            let _ = split_path(text);
        }
        let upload = parse_upload(
            &content_type(),
            Bytes::copy_from_slice(data),
            InputLimits::default(),
        );
        // The whole body is given: the parser never waits for more.
        assert_ne!(upload, Err(UploadError::Stalled), "{data:?}");
    };
    let mut all: Vec<&[u8]> = fixtures.clone();
    all.push(&upload);
    for fixture in &all {
        for end in 0..=fixture.len() {
            run(&fixture[..end]);
        }
    }
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for round in 0..3000 {
        let mut data = all[round % all.len()].to_vec();
        for _ in 0..=rng.below(4) {
            if data.is_empty() {
                break;
            }
            let at = rng.below(data.len());
            match rng.below(5) {
                0 => data[at] = rng.next() as u8,
                1 => {
                    data.remove(at);
                }
                2 => data.insert(at, b'\n'),
                3 => data.insert(at, [b'"', b'{', b'}', b'[', b'\\', b':'][rng.below(6)]),
                _ => {
                    let end = (at + rng.below(16)).min(data.len());
                    let copy = data[at..end].to_vec();
                    data.splice(at..at, copy);
                }
            }
        }
        run(&data);
    }
}
