//! The storage traits' test suites, written once against the traits: every
//! backend runs them from its own tests with a constructor of fresh stores
//! (which also returns whatever must live as long as the store, such as its
//! directory).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::{
    AppendLog, BatchRecords, CacheKey, CacheRecords, EventRecords, IdempotencyRecords, KeyStore,
    LedgerRecords,
};
use crate::budget::SpendRecords;

fn key(n: u8) -> CacheKey {
    [n; 32]
}

/// [`CacheRecords`]: entries and access records go and come together.
pub(crate) fn cache_records<G, S: CacheRecords>(fresh: impl Fn() -> (G, S)) {
    let (_g, s) = fresh();
    assert!(s.entry(&key(1)).unwrap().is_none());
    assert!(!s.has_entry(&key(1)).unwrap());
    s.put(&key(1), b"one".to_vec(), b"a1").unwrap();
    s.put(&key(2), b"two".to_vec(), b"a2").unwrap();
    assert_eq!(&s.entry(&key(1)).unwrap().unwrap()[..], b"one");
    assert!(s.has_entry(&key(2)).unwrap());
    // Replacing an entry replaces both records.
    s.put(&key(2), b"deux".to_vec(), b"b2").unwrap();
    assert_eq!(&s.entry(&key(2)).unwrap().unwrap()[..], b"deux");
    let mut accesses = s.accesses().unwrap();
    accesses.sort();
    assert_eq!(
        accesses,
        vec![(key(1), b"a1".to_vec()), (key(2), b"b2".to_vec())]
    );
    // touch replaces an access record, and never brings one back.
    s.touch(&key(1), b"t1").unwrap();
    s.remove(&key(2)).unwrap();
    s.touch(&key(2), b"t2").unwrap();
    assert!(s.entry(&key(2)).unwrap().is_none());
    assert_eq!(s.accesses().unwrap(), vec![(key(1), b"t1".to_vec())]);
    // The scan sees every entry and stops when asked.
    s.put(&key(3), b"three".to_vec(), b"a3").unwrap();
    let mut seen = Vec::new();
    s.scan_entries(&mut |k, v| {
        seen.push((*k, v.to_vec()));
        true
    })
    .unwrap();
    seen.sort();
    assert_eq!(
        seen,
        vec![(key(1), b"one".to_vec()), (key(3), b"three".to_vec())]
    );
    let mut count = 0;
    s.scan_entries(&mut |_, _| {
        count += 1;
        false
    })
    .unwrap();
    assert_eq!(count, 1);
    s.flush().unwrap();
}

/// [`KeyStore`]: records by id, replaced, removed, listed by prefix in id order.
pub(crate) fn key_store<G, S: KeyStore>(fresh: impl Fn() -> (G, S)) {
    let (_g, s) = fresh();
    assert!(s.get("byok/acme/anthropic").unwrap().is_none());
    assert!(!s.put("byok/acme/anthropic", b"sealed-1").unwrap());
    assert!(s.put("byok/acme/anthropic", b"sealed-2").unwrap());
    s.put("byok/acme/openai", b"sealed-3").unwrap();
    s.put("byok/acmex/openai", b"sealed-4").unwrap();
    s.put("sidecar/abc", b"hash").unwrap();
    assert_eq!(s.get("byok/acme/anthropic").unwrap().unwrap(), b"sealed-2");
    let ids: Vec<String> = s
        .list("byok/acme/")
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(ids, ["byok/acme/anthropic", "byok/acme/openai"]);
    assert_eq!(s.list("").unwrap().len(), 4);
    assert!(s.remove("byok/acme/openai").unwrap());
    assert!(!s.remove("byok/acme/openai").unwrap());
    assert_eq!(s.list("byok/acme/").unwrap().len(), 1);
    s.flush().unwrap();
}

/// [`SpendRecords`]: records by (budget, period), written with or without
/// the watermark.
pub(crate) fn spend_records<G, S: SpendRecords>(fresh: impl Fn() -> (G, S)) {
    let (_g, s) = fresh();
    assert_eq!(s.watermark().unwrap(), 0);
    assert!(s.get("day", "2026-12-03").unwrap().is_none());
    s.put(&[("day", "2026-12-03", b"one".to_vec())], None)
        .unwrap();
    assert_eq!(s.watermark().unwrap(), 0);
    s.put(
        &[
            ("day", "2026-12-03", b"two".to_vec()),
            ("day2", "2026-12-03", b"other".to_vec()),
            ("day", "2026-12-04", b"next".to_vec()),
        ],
        Some(41),
    )
    .unwrap();
    assert_eq!(s.watermark().unwrap(), 41);
    assert_eq!(s.get("day", "2026-12-03").unwrap().unwrap(), b"two");
    assert_eq!(s.get("day2", "2026-12-03").unwrap().unwrap(), b"other");
    assert_eq!(s.get("day", "2026-12-04").unwrap().unwrap(), b"next");
    s.put(&[], Some(42)).unwrap();
    assert_eq!(s.watermark().unwrap(), 42);
}

/// [`EventRecords`]: events in key order, the newest `limit`, an early stop,
/// replacement by key, removal.
pub(crate) fn event_records<G, S: EventRecords>(fresh: impl Fn() -> (G, S)) {
    let (_g, s) = fresh();
    assert_eq!(s.len().unwrap(), 0);
    assert!(s.latest(10).unwrap().is_empty());
    // Inserted out of order: read back in key (time) order.
    s.insert(vec![
        (vec![2], b"two".to_vec()),
        (vec![1], b"one".to_vec()),
        (vec![3], b"three".to_vec()),
    ])
    .unwrap();
    assert!(s.contains(&[2]).unwrap());
    assert!(!s.contains(&[4]).unwrap());
    assert_eq!(s.len().unwrap(), 3);
    assert_eq!(
        s.latest(2).unwrap(),
        vec![b"two".to_vec(), b"three".to_vec()]
    );
    let mut seen = Vec::new();
    s.scan(&mut |k, v| {
        seen.push((k.to_vec(), v.to_vec()));
        k != [2]
    })
    .unwrap();
    assert_eq!(
        seen,
        vec![(vec![1], b"one".to_vec()), (vec![2], b"two".to_vec())]
    );
    s.insert(vec![(vec![2], b"deux".to_vec())]).unwrap();
    assert_eq!(s.len().unwrap(), 3);
    s.remove(&[1]).unwrap();
    assert_eq!(
        s.latest(10).unwrap(),
        vec![b"deux".to_vec(), b"three".to_vec()]
    );
    s.flush().unwrap();
    many_events(&fresh().1);
}

/// The model [`many_events`] checks a store against.
type Model = std::collections::BTreeMap<Vec<u8>, Vec<u8>>;

fn event_key(n: u32) -> Vec<u8> {
    n.to_be_bytes().to_vec()
}

/// Events under `keys`, their values tagged.
fn tagged(keys: impl IntoIterator<Item = u32>, tag: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    keys.into_iter()
        .map(|n| (event_key(n), format!("{tag}{n}").into_bytes()))
        .collect()
}

/// Inserts into the store and the model alike.
fn put<S: EventRecords>(s: &S, model: &mut Model, events: Vec<(Vec<u8>, Vec<u8>)>) {
    for (k, v) in &events {
        model.insert(k.clone(), v.clone());
    }
    s.insert(events).unwrap();
}

/// Removes from the store and the model alike.
fn drop_keys<S: EventRecords>(s: &S, model: &mut Model, keys: &[Vec<u8>]) {
    s.remove_all(keys).unwrap();
    for k in keys {
        model.remove(k);
    }
}

/// The store reads back exactly the model: in order, by count, the newest,
/// and key by key.
fn check<S: EventRecords>(s: &S, model: &Model) {
    let mut seen = Vec::new();
    s.scan(&mut |k, v| {
        seen.push((k.to_vec(), v.to_vec()));
        true
    })
    .unwrap();
    let want: Vec<_> = model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    assert_eq!(seen, want);
    assert_eq!(s.len().unwrap(), model.len());
    let tail: Vec<_> = model.values().rev().take(45).rev().cloned().collect();
    assert_eq!(s.latest(45).unwrap(), tail);
    for n in [0, 5, 69, 70, 499, 500, 999, 1000, 1149, 1150, 2000, 2001] {
        let k = event_key(n);
        assert_eq!(s.contains(&k).unwrap(), model.contains_key(&k), "key {n}");
    }
}

/// Hundreds of events, one and several at a time, out of order, some before
/// everything stored, some replaced, some removed in runs and singly: what
/// is read back is always the sorted set (for backends that page or pack
/// events).
fn many_events<S: EventRecords>(s: &S) {
    let mut model = Model::new();
    // Ascending one at a time, from the middle of the key space.
    for n in 1000..1100 {
        put(s, &mut model, tagged([n], "a"));
    }
    // Late ones inside stored ranges, ones before everything, a batch
    // spanning the whole range, a key given twice (the later one stays).
    put(s, &mut model, tagged((0..40).map(|n| 1000 + n * 2), "b"));
    put(s, &mut model, tagged((0..70).rev(), "c"));
    put(s, &mut model, tagged([5], "d"));
    put(
        s,
        &mut model,
        [tagged([2000], "x"), tagged([2000], "y")].concat(),
    );
    put(s, &mut model, tagged((500..600).chain(1050..1150), "e"));
    check(s, &model);
    // A run of the oldest (as pruning removes), then scattered ones.
    let oldest: Vec<_> = (0..60).map(event_key).collect();
    drop_keys(s, &mut model, &oldest);
    for n in [1000, 1001, 1149, 2000, 3000] {
        s.remove(&event_key(n)).unwrap();
        model.remove(&event_key(n));
    }
    check(s, &model);
    // Random batches of inserts and removals against the same model.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for round in 0..200 {
        let size = 1 + next(80) as usize;
        let keys: Vec<u32> = (0..size).map(|_| next(3000) as u32).collect();
        if next(4) == 0 {
            let doomed: Vec<_> = keys.into_iter().map(event_key).collect();
            drop_keys(s, &mut model, &doomed);
        } else {
            put(s, &mut model, tagged(keys, &format!("r{round}-")));
        }
        if round % 20 == 19 {
            check(s, &model);
        }
    }
    // Everything removed, then stored again.
    let all: Vec<_> = model.keys().cloned().collect();
    s.remove_all(&all).unwrap();
    assert_eq!(s.len().unwrap(), 0);
    assert!(s.latest(5).unwrap().is_empty());
    s.insert(vec![(event_key(7), b"again".to_vec())]).unwrap();
    assert_eq!(s.latest(5).unwrap(), vec![b"again".to_vec()]);
}

/// [`AppendLog`]: numbered from 1 in append order, scanned from a number.
pub(crate) fn append_log<G, S: AppendLog>(fresh: impl Fn() -> (G, S)) {
    let (_g, log) = fresh();
    let mut seen = Vec::new();
    log.scan_from(0, &mut |n, r| {
        seen.push((n, r.to_vec()));
        true
    })
    .unwrap();
    assert!(seen.is_empty());
    for (i, r) in [b"one", b"two", b"six"].iter().enumerate() {
        assert_eq!(log.append(*r).unwrap(), i as u64 + 1);
    }
    log.scan_from(2, &mut |n, r| {
        seen.push((n, r.to_vec()));
        true
    })
    .unwrap();
    assert_eq!(seen, vec![(2, b"two".to_vec()), (3, b"six".to_vec())]);
    seen.clear();
    log.scan_from(0, &mut |n, r| {
        seen.push((n, r.to_vec()));
        false
    })
    .unwrap();
    assert_eq!(seen, vec![(1, b"one".to_vec())]);
    assert_eq!(log.last().unwrap(), 3);
    log.flush().unwrap();
}

/// [`LedgerRecords`]: a key stored twice counts once, in the events and in
/// the rollups; ranges are half-open and in key order.
pub(crate) fn ledger_records<G, S: LedgerRecords>(fresh: impl Fn() -> (G, S)) {
    use super::LedgerRow;
    let (_g, l) = fresh();
    assert!(l.is_empty().unwrap());
    let row = |k: &str, v: &str, r: &str, n: u64| LedgerRow {
        key: k.as_bytes().to_vec(),
        event: v.as_bytes().to_vec(),
        rollup_key: r.as_bytes().to_vec(),
        totals: [1, n, 0, 0, 0, 10 * n, 0],
    };
    assert_eq!(
        l.insert_new(vec![
            row("a1", "x", "ra", 1),
            row("a2", "y", "ra", 2),
            row("b1", "z", "rb", 5)
        ])
        .unwrap(),
        vec![0, 1, 2]
    );
    assert_eq!(
        l.insert_new(vec![row("a2", "y", "ra", 2), row("a3", "w", "ra", 4)])
            .unwrap(),
        vec![1]
    );
    assert_eq!(l.len().unwrap(), 4);
    let mut seen = Vec::new();
    l.scan_range(b"a", b"a3", &mut |v| {
        seen.push(v.to_vec());
        true
    })
    .unwrap();
    assert_eq!(seen, vec![b"x".to_vec(), b"y".to_vec()]);
    seen.clear();
    l.scan_range(b"a", b"c", &mut |v| {
        seen.push(v.to_vec());
        seen.len() < 2
    })
    .unwrap();
    assert_eq!(seen.len(), 2);
    let mut rollups = Vec::new();
    l.scan_rollups(b"r", b"s", &mut |k, t| {
        rollups.push((k.to_vec(), t));
        true
    })
    .unwrap();
    assert_eq!(
        rollups,
        vec![
            (b"ra".to_vec(), [3, 7, 0, 0, 0, 70, 0]),
            (b"rb".to_vec(), [1, 5, 0, 0, 0, 50, 0])
        ]
    );
    l.flush().unwrap();
}

/// [`IdempotencyRecords`]: put replaces, `remove_if` removes only what it
/// was shown, the scan sees everything and stops when asked.
pub(crate) fn idempotency_records<G, S: IdempotencyRecords>(fresh: impl Fn() -> (G, S)) {
    let (_g, s) = fresh();
    assert!(s.get(b"a").unwrap().is_none());
    s.put(b"a", b"one").unwrap();
    s.put(b"b", b"two").unwrap();
    assert_eq!(&s.get(b"a").unwrap().unwrap()[..], b"one");
    s.put(b"a", b"uno").unwrap();
    assert_eq!(&s.get(b"a").unwrap().unwrap()[..], b"uno");
    // Stored again since the caller looked: kept.
    assert!(!s.remove_if(b"a", b"one").unwrap());
    assert!(s.get(b"a").unwrap().is_some());
    assert!(s.remove_if(b"a", b"uno").unwrap());
    assert!(s.get(b"a").unwrap().is_none());
    assert!(!s.remove_if(b"zz", b"x").unwrap());
    s.put(b"c", b"three").unwrap();
    let mut seen = Vec::new();
    s.scan(&mut |k, v| {
        seen.push((k.to_vec(), v.to_vec()));
        true
    })
    .unwrap();
    assert_eq!(
        seen,
        vec![
            (b"b".to_vec(), b"two".to_vec()),
            (b"c".to_vec(), b"three".to_vec())
        ]
    );
    let mut count = 0;
    s.scan(&mut |_, _| {
        count += 1;
        false
    })
    .unwrap();
    assert_eq!(count, 1);
    s.flush().unwrap();
}

/// [`BatchRecords`]: put replaces, a rename removes the old key in the
/// same step, remove says whether there was one, the scan is in key order.
pub(crate) fn batch_records<G, S: BatchRecords>(fresh: impl Fn() -> (G, S)) {
    let (_g, s) = fresh();
    assert!(s.get("anthropic/tgb_1").unwrap().is_none());
    s.put("anthropic/tgb_1", b"submitting", None).unwrap();
    assert_eq!(s.get("anthropic/tgb_1").unwrap().unwrap(), b"submitting");
    // Accepted: renamed to the provider's id, atomically.
    s.put("anthropic/msgbatch_1", b"open", Some("anthropic/tgb_1"))
        .unwrap();
    assert!(s.get("anthropic/tgb_1").unwrap().is_none());
    assert_eq!(s.get("anthropic/msgbatch_1").unwrap().unwrap(), b"open");
    s.put(
        "anthropic/msgbatch_1",
        b"settled",
        Some("anthropic/msgbatch_1"),
    )
    .unwrap();
    assert_eq!(s.get("anthropic/msgbatch_1").unwrap().unwrap(), b"settled");
    s.put("anthropic/msgbatch_0", b"zero", None).unwrap();
    let mut seen = Vec::new();
    s.scan(&mut |k, v| {
        seen.push((k.to_string(), v.to_vec()));
        true
    })
    .unwrap();
    assert_eq!(
        seen,
        vec![
            ("anthropic/msgbatch_0".to_string(), b"zero".to_vec()),
            ("anthropic/msgbatch_1".to_string(), b"settled".to_vec())
        ]
    );
    let mut count = 0;
    s.scan(&mut |_, _| {
        count += 1;
        false
    })
    .unwrap();
    assert_eq!(count, 1);
    assert!(s.remove("anthropic/msgbatch_0").unwrap());
    assert!(!s.remove("anthropic/msgbatch_0").unwrap());
    assert!(s.get("anthropic/msgbatch_0").unwrap().is_none());
}
