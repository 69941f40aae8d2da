//! The official Node SDK (`@anthropic-ai/sdk`, pinned in
//! `tests/sdk/node/package.json`) against the real binary in base-URL mode:
//! a Message Batch created, retrieved until it ended and its results read
//! with `for await (… of await client.messages.batches.results(id))`.
//!
//! The SDK reads results from the batch's `results_url` as it is. Before
//! tollgate rewrote it, that was the provider's absolute URL, so the one call
//! went around tollgate with the app's own credential. Here the results GET
//! must reach the provider through tollgate (with the injected key only),
//! and each `custom_id` must become one usage event at the batch price.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::batches::{batch_events, budget_becomes, settled, MONTHLY_BUDGET};
use support::fake_provider::FakeProvider;
use support::node::run_node_script;
use support::tollgate::Builder;
use tollgate::dialect::Usage;
use tollgate::meter::prices::PriceTable;

const INJECTED: &str = "sk-ant-injected-NODE-5e1a";
const CLIENT_KEY: &str = "sk-ant-client-NODE-never-upstream";
const MODEL: &str = "claude-haiku-4-5-20251001";

/// One item of the batch.
struct Item {
    custom_id: &'static str,
    /// What the fake reports for it (`x-fake-usage`) and those tokens
    /// (input, output, cache write, cache read); `err-`/`exp-` have none.
    usage: Option<(&'static str, [u64; 4])>,
    /// Its result type.
    kind: &'static str,
}

const ITEMS: [Item; 4] = [
    Item {
        custom_id: "ok-1",
        usage: Some((
            "input=1200,output=300,cache_write=400,cache_read=500",
            [1200, 300, 400, 500],
        )),
        kind: "succeeded",
    },
    Item {
        custom_id: "ok-2",
        usage: Some(("input=70,output=9", [70, 9, 0, 0])),
        kind: "succeeded",
    },
    Item {
        custom_id: "err-1",
        usage: None,
        kind: "errored",
    },
    Item {
        custom_id: "exp-1",
        usage: None,
        kind: "expired",
    },
];

/// What a succeeded item costs at the batch price (the built-in table).
fn batch_cost([input, output, write, read]: [u64; 4]) -> u64 {
    let usage = Usage {
        input_tokens: input,
        output_tokens: output,
        cache_creation_input_tokens: write,
        cache_read_input_tokens: read,
        ..Usage::default()
    };
    PriceTable::builtin().cost(MODEL, &usage, true).nusd
}

fn plan() -> Value {
    let requests: Vec<Value> = ITEMS
        .iter()
        .map(|item| match item.usage {
            Some((usage, _)) => json!({"custom_id": item.custom_id, "usage": usage}),
            None => json!({"custom_id": item.custom_id}),
        })
        .collect();
    json!([
        {"name": "A", "op": "create", "headers": {"x-fake-batch-ms": "50"}, "requests": requests},
        {"name": "ended", "op": "wait", "batch": "A"},
        {"name": "results", "op": "results", "batch": "A"},
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_sdk_reads_batch_results_through_tollgate_in_base_url_mode() {
    let fake = FakeProvider::start().await;
    let t = Builder::new(&fake.base_url())
        .env("ANTHROPIC_API_KEY", INJECTED)
        .config(MONTHLY_BUDGET)
        .config("[batches]\npoll_interval = \"1h\"\n")
        .start();
    let run = run_node_script(
        "anthropic_batches.mjs",
        &[
            ("ANTHROPIC_BASE_URL", &t.url()),
            ("ANTHROPIC_API_KEY", CLIENT_KEY),
        ],
        &plan(),
    )
    .await;
    assert_eq!(run.sdk, "@anthropic-ai/sdk");
    assert_eq!(run.version, "1.16.0", "the pinned SDK");

    // The SDK saw the batch end with a `results_url` on tollgate.
    let id = run.ok("A")["batch"]["id"].as_str().unwrap().to_string();
    let ended = &run.ok("ended")["batch"];
    assert_eq!(ended["processing_status"], "ended", "{ended}");
    assert_eq!(
        ended["results_url"],
        format!("{}/v1/messages/batches/{id}/results", t.url()),
        "{ended}"
    );

    // Every result, each of its type; the succeeded ones with their usage.
    let results = run.ok("results")["results"].as_array().unwrap().clone();
    assert_eq!(results.len(), ITEMS.len(), "{results:#?}");
    for Item {
        custom_id,
        usage,
        kind,
    } in ITEMS
    {
        let r = results
            .iter()
            .find(|r| r["custom_id"] == custom_id)
            .unwrap_or_else(|| panic!("no result for {custom_id}: {results:#?}"));
        assert_eq!(r["result"]["type"], kind, "{r}");
        if let Some((_, [input, output, ..])) = usage {
            let got = &r["result"]["message"]["usage"];
            assert_eq!(got["input_tokens"], input, "{r}");
            assert_eq!(got["output_tokens"], output, "{r}");
        }
    }

    // The SDK's results GET (`x-test-call: results`) reached the provider
    // through tollgate: with the injected key. Nothing anywhere carried the
    // client's credential.
    let seen = fake.requests();
    let sdk_reads: Vec<_> = seen
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with(&format!("/{id}/results")))
        .filter(|r| r.header("x-test-call") == Some("results"))
        .collect();
    assert_eq!(sdk_reads.len(), 1, "one results read by the SDK");
    for r in &sdk_reads {
        assert_eq!(r.header("x-api-key"), Some(INJECTED), "{}", r.path);
    }
    for r in &seen {
        r.assert_carries_none(&[CLIENT_KEY]);
    }

    // One event per custom_id (route batch) at the batch price; the budget
    // spent exactly their sum and holds nothing more.
    settled(&t, ITEMS.len()).await;
    // Give a duplicate the time to show up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events = batch_events(&t.events().await);
    assert_eq!(events.len(), ITEMS.len(), "{events:?}");
    let mut sum = 0;
    for Item {
        custom_id,
        usage,
        kind,
    } in ITEMS
    {
        let list = &events[custom_id];
        assert_eq!(list.len(), 1, "one event per custom_id: {list:?}");
        let e = &list[0];
        assert_eq!(e["batch"]["batch_id"], id.as_str(), "{e}");
        match (usage, kind) {
            (Some((_, tokens)), _) => {
                assert_eq!(e["status"], "ok", "{e}");
                assert_eq!(e["model"], MODEL);
                assert_eq!(e["input_tokens"], tokens[0], "{e}");
                assert_eq!(e["output_tokens"], tokens[1], "{e}");
                assert_eq!(e["cache_creation_input_tokens"], tokens[2], "{e}");
                assert_eq!(e["cache_read_input_tokens"], tokens[3], "{e}");
                assert_eq!(e["cost_nusd"], batch_cost(tokens), "{custom_id}");
                sum += batch_cost(tokens);
            }
            (None, "errored") => {
                assert_eq!(e["status"], "provider_error", "{e}");
                assert_eq!(e["error"], "invalid_request_error", "{e}");
            }
            (None, _) => assert_eq!(e["error"], "expired", "{e}"),
        }
        if usage.is_none() {
            assert_eq!(e["cost_nusd"], 0, "{e}");
        }
    }
    budget_becomes(&t, (sum, 0)).await;
}
