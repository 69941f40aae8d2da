//! Batch checks shared by the batch tests: the batch usage events by
//! `custom_id`, and the `monthly` budget's spend and reservation.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::tollgate::Tollgate;

/// A `monthly` budget of $10 over all traffic, for [`budget`].
pub const MONTHLY_BUDGET: &str =
    "[[budgets]]\nname = \"monthly\"\nscope = \"all\"\nperiod = \"month\"\nlimit_usd = \"10.00\"\n";

/// The batch events (route `batch`), by `custom_id`.
pub fn batch_events(events: &[Value]) -> BTreeMap<String, Vec<Value>> {
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for e in events.iter().filter(|e| !e["batch"].is_null()) {
        assert_eq!(e["route"], "batch", "{e}");
        let id = e["batch"]["custom_id"].as_str().unwrap().to_string();
        out.entry(id).or_default().push(e.clone());
    }
    out
}

/// Waits until `n` batch events are recorded; returns them by `custom_id`.
pub async fn settled(t: &Tollgate, n: usize) -> BTreeMap<String, Vec<Value>> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let events = batch_events(&t.events().await);
        if events.values().map(Vec::len).sum::<usize>() >= n {
            return events;
        }
        assert!(Instant::now() < deadline, "{events:?}\n{}", t.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The budget's (spent, reserved), nano-USD.
pub async fn budget(t: &Tollgate) -> (u64, u64) {
    let all = t.budgets().await;
    let b = all
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "monthly")
        .unwrap()
        .clone();
    (
        b["spent_nusd"].as_u64().unwrap(),
        b["reserved_nusd"].as_u64().unwrap(),
    )
}

/// Waits until the budget is `want`.
pub async fn budget_becomes(t: &Tollgate, want: (u64, u64)) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while budget(t).await != want {
        assert!(
            Instant::now() < deadline,
            "{:?} != {want:?}\n{}",
            budget(t).await,
            t.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
