//! The one typed configuration: built-in defaults < file < environment <
//! flags, merged as TOML trees, checked against the key rows, and validated
//! section by section into [`Config`].
//!
//! Each section module owns its keys' rows (key, type, default, meaning: the
//! README's config table, see [`keys`]), its raw serde type and its
//! validator; the loader (`loader.rs`) only layers and checks the tree
//! against the rows. Every problem is collected and reported together
//! ([`ConfigError`]), each naming its full dotted key
//! (`providers.anthropic.base_url`), plus the environment variable or flag it
//! came from when it did not come from the file
//! (`listen (from env TOLLGATE_LISTEN)`).
//!
//! Environment: `TOLLGATE_<KEY>` sets a top-level key (`TOLLGATE_LISTEN` →
//! `listen`) and `__` nests (`TOLLGATE_PROVIDERS__ANTHROPIC__BASE_URL` →
//! `providers.anthropic.base_url`). A value is read as TOML when it parses
//! (`1000`, `true`) and as a plain string otherwise; keys of a string type
//! always take the string (`TOLLGATE_DEFAULT_ACCOUNT=123` is the account
//! `"123"`). `TOLLGATE_CONFIG` (the file) and `TOLLGATE_LOG` are not keys.
//!
//! The environment is passed in as a map, never read here, so tests do not
//! touch the process environment.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::DeserializeOwned;
use toml::{Table, Value};

use crate::budget::Budget;
use crate::dialect::Dialect;
use crate::keys::KeyRing;
use crate::limit::Rule;
use crate::meter::prices::PriceTable;

mod batches;
mod budgets;
mod cache;
pub mod control;
mod fleet;
mod gateway_keys;
pub mod inject;
mod limits;
mod listeners;
mod loader;
mod outbox;
mod prices;
mod problem;
mod providers;
mod routing;
mod schema;
mod service_links;
mod sidecar;
mod sources;
mod timeouts;
mod values;

pub use batches::BatchesConfig;
pub use fleet::{ControlLink, Ship, DEFAULT_LEASE_WAIT};
pub use listeners::{ForwardProxy, TunnelPolicy};
pub use outbox::OutboxConfig;
pub use problem::{ConfigError, Problem};
pub use providers::{Provider, Upstream};
pub use schema::{Key, Type};
pub use sources::{Flags, Sources};
pub use timeouts::Timeouts;
pub use values::parse_size;

/// The sections' rows, in the README's order.
static SECTIONS: &[&[Key]] = &[
    listeners::KEYS,
    sidecar::KEYS,
    timeouts::KEYS,
    outbox::KEYS,
    batches::KEYS,
    fleet::KEYS,
    providers::KEYS,
    prices::KEYS,
    gateway_keys::KEYS,
    limits::KEYS,
    budgets::KEYS,
    cache::KEYS,
    routing::KEYS,
];

/// Every accepted key, in the README's order. `<name>` and `<model>` stand
/// for any table name. The README's config table is checked against this
/// list (`tests/docs.rs`), and the loader rejects any key not in it.
pub fn keys() -> impl Iterator<Item = &'static Key> {
    SECTIONS.iter().flat_map(|s| s.iter())
}

// === validated config ===

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Base-URL mode listener.
    pub listen: SocketAddr,
    /// HTTPS_PROXY mode; `None` when off.
    pub forward_proxy: Option<ForwardProxy>,
    /// Where `tollgate ca init` puts the CA (and HTTPS_PROXY mode reads it).
    pub ca_dir: PathBuf,
    /// `/metrics`, `/healthz`, `/readyz`; `None` when off.
    pub admin_listen: Option<SocketAddr>,
    /// Local store: cache, outbox, budget state.
    pub data_dir: PathBuf,
    /// Largest request body read.
    pub max_body_bytes: usize,
    /// Account of requests that name none.
    pub default_account: String,
    /// Workload of requests that name none ("" = none).
    pub default_workload: String,
    /// Tags of requests that carry none, sorted by key.
    pub default_tags: Vec<(String, String)>,
    /// This sidecar's id in usage events.
    pub sidecar_id: String,
    /// Whether streams end with a `: tollgate {json}` receipt comment line.
    pub stream_receipt: bool,
    /// Pingora worker threads (a `0` in config is resolved to the CPU count).
    pub threads: usize,
    /// SIGTERM drain time.
    pub shutdown_grace: Duration,
    /// How long an idempotent answer is kept.
    pub idempotency_ttl: Duration,
    /// How long a retry waits for the first request with its key.
    pub idempotency_wait: Duration,
    /// Upstream timeouts.
    pub timeouts: Timeouts,
    /// Local usage-event outbox.
    pub outbox: OutboxConfig,
    /// Provider batches: polling and the create body's bound.
    pub batches: BatchesConfig,
    /// The control endpoint usage is shipped to; `None`: standalone.
    pub control: Option<ControlLink>,
    /// Enabled providers, sorted by name.
    pub providers: Vec<Provider>,
    /// Built-in prices with the config's overrides and fallback.
    pub prices: PriceTable,
    /// Gateway keys (empty: requests need none).
    pub gateway_keys: KeyRing,
    /// Rate limits, gateway keys' own included.
    pub rate_limits: Vec<Rule>,
    /// Budgets, in config order.
    pub budgets: Vec<Budget>,
    /// Output bound of requests without `max_tokens` when a budget applies.
    pub budget_default_max_tokens: u64,
    /// The exact cache.
    pub cache: crate::cache::CacheConfig,
    /// Model aliases, retries and circuit breakers.
    pub routing: crate::route::Routing,
}

impl Config {
    /// The enabled provider called `name`.
    pub fn provider(&self, name: &str) -> Option<&Provider> {
        self.providers.iter().find(|p| p.name == name)
    }

    /// The provider serving unprefixed paths of dialect `d`, if any.
    pub fn default_provider(&self, d: Dialect) -> Option<&Provider> {
        self.providers.iter().find(|p| p.dialect == d && p.default)
    }
}

// === loading ===

/// Loads the configuration from `src`. A file that was named but cannot be
/// read is a problem; no file at all means defaults.
pub fn load(src: &Sources) -> Result<Config, ConfigError> {
    let mut problems = Vec::new();
    let text = src.file.as_deref().and_then(|path| {
        loader::read_file(path)
            .map_err(|p| problems.push(p))
            .ok()
            .map(|text| (path.display().to_string(), text))
    });
    let file = text
        .as_ref()
        .map(|(label, text)| (label.as_str(), text.as_str()));
    assemble(file, &src.env, &src.flags, problems)
}

/// Loads the configuration from TOML text instead of a file (for tests and
/// `--check-config` of inline configs).
pub fn parse_str(
    toml: &str,
    env: &BTreeMap<String, String>,
    flags: &Flags,
) -> Result<Config, ConfigError> {
    assemble(Some(("<config>", toml)), env, flags, Vec::new())
}

fn assemble(
    file: Option<(&str, &str)>,
    env: &BTreeMap<String, String>,
    flags: &Flags,
    problems: Vec<Problem>,
) -> Result<Config, ConfigError> {
    let keys: Vec<Key> = keys().copied().collect();
    let schema = loader::Schema {
        keys: &keys,
        replacing: providers::REPLACING,
        env_prefix: "TOLLGATE_",
        // The operator CLI's token and the control endpoint's own config.
        non_key_env: &[
            "TOLLGATE_CONFIG",
            "TOLLGATE_LOG",
            "TOLLGATE_ADMIN_TOKEN",
            "TOLLGATE_MASTER_KEY",
            "TOLLGATE_PREVIOUS_MASTER_KEY",
            "TOLLGATE_NEW_MASTER_KEY",
        ],
        foreign_prefixes: &[control::ENV_PREFIX, inject::ENV_PREFIX],
    };
    let layers = loader::Layers {
        defaults: providers::defaults_layer(),
        file,
        env,
        flags: &flags.set(),
    };
    loader::load(layers, &schema, problems, |tree, problems| {
        validate(tree, env, problems)
    })
}

/// Validates the checked tree section by section, in the README's order
/// (so problems come in that order too).
fn validate(
    mut tree: Table,
    env: &BTreeMap<String, String>,
    problems: &mut Vec<Problem>,
) -> Option<Config> {
    let before = problems.len();
    let listeners = listeners::validate(take(&mut tree, listeners::KEYS, problems), problems);
    let sidecar = sidecar::validate(take(&mut tree, sidecar::KEYS, problems), env, problems);
    let timeouts = timeouts::validate(take(&mut tree, timeouts::KEYS, problems), problems);
    let outbox = outbox::validate(take(&mut tree, outbox::KEYS, problems), problems);
    let batches = batches::validate(take(&mut tree, batches::KEYS, problems), problems);
    let control = fleet::validate(take(&mut tree, fleet::KEYS, problems), env, problems);
    let providers = providers::validate(take(&mut tree, providers::KEYS, problems), env, problems);
    let prices = prices::validate(take(&mut tree, prices::KEYS, problems), problems);
    let (gateway_keys, key_rules) =
        gateway_keys::validate(take(&mut tree, gateway_keys::KEYS, problems), problems);
    let mut rate_limits = limits::validate(take(&mut tree, limits::KEYS, problems), problems);
    rate_limits.extend(key_rules);
    let budgets = budgets::validate(take(&mut tree, budgets::KEYS, problems), problems);
    let cache = cache::validate(take(&mut tree, cache::KEYS, problems), problems);
    let known = routing::Known {
        providers: &providers,
        prices: &prices,
    };
    let routing = routing::validate(take(&mut tree, routing::KEYS, problems), &known, problems);
    if problems.len() != before {
        return None;
    }
    let (listeners, sidecar, budgets) = (listeners?, sidecar?, budgets?);
    Some(Config {
        listen: listeners.listen,
        forward_proxy: listeners.forward_proxy,
        ca_dir: listeners.ca_dir,
        admin_listen: listeners.admin_listen,
        data_dir: sidecar.data_dir,
        max_body_bytes: sidecar.max_body_bytes,
        default_account: sidecar.default_account,
        default_workload: sidecar.default_workload,
        default_tags: sidecar.default_tags,
        sidecar_id: sidecar.sidecar_id,
        stream_receipt: sidecar.stream_receipt,
        threads: sidecar.threads,
        shutdown_grace: sidecar.shutdown_grace,
        idempotency_ttl: sidecar.idempotency_ttl,
        idempotency_wait: sidecar.idempotency_wait,
        timeouts: timeouts?,
        outbox: outbox?,
        batches: batches?,
        control: control?,
        providers,
        prices,
        gateway_keys,
        rate_limits,
        budgets: budgets.budgets,
        budget_default_max_tokens: budgets.default_max_tokens,
        cache: cache?,
        routing,
    })
}

/// Takes the top-level keys of a section's rows out of `tree` and
/// deserializes them into the section's raw type.
fn take<R: DeserializeOwned + Default>(
    tree: &mut Table,
    rows: &[Key],
    problems: &mut Vec<Problem>,
) -> R {
    let mut mine = Table::new();
    for row in rows {
        if let Some((k, v)) = tree.remove_entry(row.top()) {
            mine.insert(k, v);
        }
    }
    Value::Table(mine).try_into().unwrap_or_else(|e| {
        // The key check guarantees the shape; this is a safety net.
        problems.push(Problem::new("config", e.to_string()));
        R::default()
    })
}

#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;
