//! The layers run one way: dialect (wire formats) ← domain (identity,
//! money and prices, limits, budgets, usage events, the cache's key and
//! codec) ← storage ← proxy / control / inject. This test reads every
//! source file and fails when a file imports something its layer must not
//! see, or when a file is in no layer (a new file must be placed).
//!
//! Files that still break a rule while the redesign is under way are listed
//! in `PENDING` with the import they still make; the test fails as soon as
//! such an import is gone, so the list can only shrink.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Where each file sits. Longest prefix wins.
const LAYERS: &[(&str, Layer)] = &[
    ("src/dialect/", Layer::Dialect),
    ("src/identity.rs", Layer::Domain),
    ("src/batch.rs", Layer::Domain),
    ("src/plan.rs", Layer::Domain),
    ("src/lease.rs", Layer::Domain),
    ("src/envelope.rs", Layer::Domain),
    ("src/snapshot.rs", Layer::Domain),
    ("src/scope.rs", Layer::Domain),
    ("src/limit.rs", Layer::Domain),
    ("src/keys.rs", Layer::Domain),
    ("src/secret.rs", Layer::Domain),
    ("src/table.rs", Layer::Domain),
    // Kubernetes value syntax (quantities, names) for the injector and its config.
    ("src/kube_values.rs", Layer::Domain),
    ("src/budget/mod.rs", Layer::Domain),
    ("src/budget/estimate.rs", Layer::Domain),
    // A pingora background service of the sidecar.
    ("src/budget/alerts.rs", Layer::Proxy),
    ("src/meter/money.rs", Layer::Domain),
    ("src/meter/prices.rs", Layer::Domain),
    ("src/meter/event.rs", Layer::Domain),
    ("src/meter/mod.rs", Layer::Domain),
    // Routing: plans, retries, breakers; time and jitter passed in.
    ("src/route/", Layer::Domain),
    // The cache as the request path sees it: store, flights and writer.
    ("src/cache/mod.rs", Layer::Service),
    ("src/idempotency/mod.rs", Layer::Service),
    ("src/idempotency/key.rs", Layer::Domain),
    ("src/cache/key.rs", Layer::Domain),
    // In-flight coalescing: runtime machinery (tokio), not a rule.
    ("src/cache/flight.rs", Layer::Service),
    ("src/cache/store.rs", Layer::Storage),
    ("src/cache/writer.rs", Layer::Storage),
    ("src/store/", Layer::Storage),
    // The data dir's own modes, before any store opens in it.
    ("src/data_dir.rs", Layer::Storage),
    ("src/metrics.rs", Layer::Service),
    ("src/config/", Layer::Service),
    ("src/usage_report.rs", Layer::Service),
    ("src/ca.rs", Layer::Service),
    // The sidecar's admin listener.
    ("src/admin.rs", Layer::Proxy),
    ("src/proxy/", Layer::Proxy),
    ("src/control/", Layer::Proxy),
    ("src/inject/", Layer::Proxy),
    ("src/lib.rs", Layer::Root),
    ("src/main.rs", Layer::Root),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layer {
    /// Wire formats only: pure, imports nothing of the crate but itself.
    Dialect,
    /// Rules without I/O: no runtime, no store, no proxy, no config.
    Domain,
    /// Storage behind traits (sled here).
    Storage,
    /// Services that wire the domain to the outside (config, metrics, reports).
    Service,
    /// The programs: the sidecar, the control endpoint, the webhook.
    Proxy,
    /// `lib.rs` and `main.rs`.
    Root,
}

/// External crates a layer must not use.
fn forbidden_crates(layer: Layer) -> &'static [&'static str] {
    match layer {
        Layer::Dialect | Layer::Domain => &["pingora", "sled", "tokio", "reqwest", "axum"],
        Layer::Storage | Layer::Service => &["pingora"],
        Layer::Proxy | Layer::Root => &[],
    }
}

/// Crate modules a layer must not import.
fn forbidden_modules(layer: Layer) -> &'static [&'static str] {
    match layer {
        Layer::Dialect => &[
            "identity",
            "plan",
            "envelope",
            "snapshot",
            "scope",
            "limit",
            "keys",
            "secret",
            "table",
            "budget",
            "meter",
            "route",
            "cache",
            "store",
            "metrics",
            "config",
            "usage_report",
            "ca",
            "admin",
            "proxy",
            "control",
            "inject",
        ],
        Layer::Domain => &[
            "store",
            "metrics",
            "config",
            "usage_report",
            "admin",
            "proxy",
            "control",
            "inject",
        ],
        Layer::Storage | Layer::Service => &["proxy", "control", "inject"],
        Layer::Proxy | Layer::Root => &[],
    }
}

/// Known breaches, each to be removed by the redesign: (file, what it
/// imports). Listed here so they are visible, and so nothing new joins them.
const PENDING: &[(&str, &str)] = &[];

fn layer_of(path: &str) -> Option<Layer> {
    LAYERS
        .iter()
        .filter(|(prefix, _)| path.starts_with(prefix))
        .max_by_key(|(prefix, _)| prefix.len())
        .map(|(_, layer)| *layer)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without comments (line comments and doc comments),
/// so prose that names a crate does not count, and without its unit-test
/// module (tests may drive a domain type through a real backend).
fn code(text: &str) -> String {
    let text = match text.find("\n#[cfg(test)]\nmod ") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) if !line[..at].contains('"') => &line[..at],
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether `code` refers to the external crate `name` (`use name::`,
/// `name::path`).
fn uses_crate(code: &str, name: &str) -> bool {
    let needle = format!("{name}::");
    code.match_indices(&needle).any(|(at, _)| {
        let before = code[..at].chars().next_back();
        // `crate::tokio_x::` or `foo_sled::` are other names.
        !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
    })
}

/// Whether `code` imports the crate module `module` (`crate::module`, or a
/// `use crate::{module, …}` group).
fn uses_module(code: &str, module: &str) -> bool {
    let direct = format!("crate::{module}");
    let direct_hit = code.match_indices(&direct).any(|(at, _)| {
        let after = code[at + direct.len()..].chars().next();
        !after.is_some_and(|c| c.is_alphanumeric() || c == '_')
    });
    if direct_hit {
        return true;
    }
    // `use crate::{a, b::c}` groups.
    code.match_indices("crate::{").any(|(at, _)| {
        let rest = &code[at + "crate::{".len()..];
        let group = &rest[..rest.find('}').unwrap_or(rest.len())];
        group
            .split(',')
            .map(|item| item.trim().split("::").next().unwrap_or("").trim())
            .any(|first| first == module)
    })
}

fn breaches(text: &str, layer: Layer) -> BTreeSet<String> {
    let code = code(text);
    let mut found = BTreeSet::new();
    for name in forbidden_crates(layer) {
        if uses_crate(&code, name) {
            found.insert((*name).to_string());
        }
    }
    for module in forbidden_modules(layer) {
        if uses_module(&code, module) {
            found.insert(format!("crate::{module}"));
        }
    }
    found
}

#[test]
fn layers_run_one_way() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    files.sort();
    assert!(files.len() > 30, "found only {} source files", files.len());
    let mut problems = Vec::new();
    let mut pending_seen = BTreeSet::new();
    for file in &files {
        let rel = file
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        let Some(layer) = layer_of(&rel) else {
            problems.push(format!("{rel}: in no layer (add it to LAYERS)"));
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for breach in breaches(&text, layer) {
            if PENDING.contains(&(rel.as_str(), breach.as_str())) {
                pending_seen.insert((rel.clone(), breach));
            } else {
                problems.push(format!("{rel} ({layer:?}) imports {breach}"));
            }
        }
    }
    for (file, breach) in PENDING {
        if !pending_seen.contains(&(file.to_string(), breach.to_string())) {
            problems.push(format!(
                "{file} no longer imports {breach}: remove it from PENDING"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_checker_sees_what_it_must() {
    assert!(uses_crate("use sled::Tree;", "sled"));
    assert!(uses_crate("let t: tokio::sync::Mutex<u8>;", "tokio"));
    assert!(!uses_crate("use tokio_rustls::x;", "tokio"));
    assert!(!uses_crate(
        &code("// tokio::spawn is not used here"),
        "tokio"
    ));
    assert!(uses_module(
        "use crate::proxy::identify::Identity;",
        "proxy"
    ));
    assert!(uses_module("use crate::{budget, proxy::x};", "proxy"));
    assert!(!uses_module("use crate::proxyish::x;", "proxy"));
    assert!(!uses_module("use crate::{budget, cache};", "proxy"));
    assert_eq!(
        layer_of("src/dialect/anthropic/stream.rs"),
        Some(Layer::Dialect)
    );
    assert_eq!(layer_of("src/proxy/meter.rs"), Some(Layer::Proxy));
    assert_eq!(layer_of("src/nowhere.rs"), None);
}
