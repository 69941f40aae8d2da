//! The one typed configuration: built-in defaults < file < environment <
//! flags, merged as TOML trees, checked against [`KEYS`], deserialized into
//! [`RawConfig`] and validated into [`Config`].
//!
//! Every problem is collected and reported together ([`ConfigError`]), each
//! naming its full dotted key (`providers.anthropic.base_url`), plus the
//! environment variable or flag it came from when it did not come from the
//! file (`listen (from env TOLLGATE_LISTEN)`).
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
use std::fmt;
use std::net::{Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::{Table, Value};

use crate::budget::Budget;
use crate::dialect::Dialect;
use crate::keys::KeyRing;
use crate::limit::Rule;
use crate::meter::prices::{self, ModelPrice, PriceTable, RawPrice};
use crate::secret::Secret;

mod cache;
mod controls;
use controls::{budgets, gateway_keys, rate_limits};

// === problems ===

/// One thing wrong with the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The full dotted key (`providers.anthropic.base_url`), with its source
    /// when that was the environment or a flag.
    pub key: String,
    /// What is wrong. Never contains a credential.
    pub message: String,
}

impl Problem {
    /// A problem with `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Every problem found in a configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// In a stable order: sources, then keys, then cross-key checks.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    /// One problem per line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

// === sources ===

/// Where configuration comes from.
#[derive(Clone, Default)]
pub struct Sources {
    /// The file from `--config`, else `TOLLGATE_CONFIG`; `None` = defaults.
    pub file: Option<PathBuf>,
    /// The process environment (also where `api_key_env` variables are read).
    pub env: BTreeMap<String, String>,
    /// Command-line flags, highest precedence.
    pub flags: Flags,
}

impl fmt::Debug for Sources {
    /// Lists environment variable names only: their values may be keys.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sources")
            .field("file", &self.file)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("flags", &self.flags)
            .finish()
    }
}

/// Config keys that have a command-line flag.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Flags {
    /// `--listen`
    pub listen: Option<String>,
    /// `--admin-listen`
    pub admin_listen: Option<String>,
    /// `--data-dir`
    pub data_dir: Option<String>,
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
    /// Upstream timeouts.
    pub timeouts: Timeouts,
    /// Local usage-event outbox.
    pub outbox: OutboxConfig,
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
}

/// Upstream timeouts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP + TLS connect.
    pub connect: Duration,
    /// Until the upstream's response headers.
    pub first_byte: Duration,
    /// Longest gap between two upstream body chunks.
    pub idle: Duration,
    /// HTTPS_PROXY mode: CONNECT line and TLS handshake.
    pub handshake: Duration,
}

/// Whether a CONNECT to a host that is not intercepted is tunnelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TunnelPolicy {
    /// A blind byte-for-byte tunnel.
    Allow,
    /// 403.
    Deny,
}

/// HTTPS_PROXY mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForwardProxy {
    pub listen: SocketAddr,
    pub ca_dir: PathBuf,
    pub tunnel_policy: TunnelPolicy,
    /// SHA-256 of `user:password` required in `Proxy-Authorization: Basic`.
    pub auth_sha256: Option<[u8; 32]>,
}

/// The local usage-event outbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxConfig {
    /// How long unshipped events are kept.
    pub retention: Duration,
    /// Wait for each event's flush before a response's last byte (durable).
    /// `false` trades that guarantee for latency: events are still group
    /// committed within a few milliseconds, but a crash can lose the last ones.
    pub sync: bool,
}

/// One upstream provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Provider {
    /// `[a-z0-9_-]+`: the table name and the `/{provider}/` path prefix.
    pub name: String,
    /// The wire dialect it speaks.
    pub dialect: Dialect,
    /// Where its requests go.
    pub upstream: Upstream,
    /// The key to inject; `None` passes the client's own credential through.
    pub api_key: Option<Secret>,
    /// Serves unprefixed paths of its dialect.
    pub default: bool,
    /// Hosts intercepted in HTTPS_PROXY mode (lowercase).
    pub hosts: Vec<String>,
}

/// A provider's base URL, split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    /// `https` (true) or `http`.
    pub tls: bool,
    /// Host name or IP address, lowercase; an IPv6 address without brackets.
    pub host: String,
    /// Port, explicit or the scheme's default.
    pub port: u16,
    /// `""`, `"/v1"`, `"/api/v1"`…: no trailing slash.
    pub base_path: String,
    /// A PEM CA bundle trusted for this upstream instead of the system
    /// roots (a private CA, a test server); `None` = system roots.
    pub ca_file: Option<PathBuf>,
}

impl Upstream {
    /// The `Host` header value: the host, with the port when it is not the
    /// scheme's default (IPv6 addresses in brackets).
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == default_port(self.tls) {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

fn default_port(tls: bool) -> u16 {
    if tls {
        443
    } else {
        80
    }
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

// === keys ===

const DEFAULT_LISTEN: &str = "127.0.0.1:8787";
const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9464";
const DEFAULT_DATA_DIR: &str = "tollgate-data";
const DEFAULT_MAX_BODY_BYTES: u64 = 32 * 1024 * 1024;
const DEFAULT_ACCOUNT: &str = "default";
const DEFAULT_SIDECAR_ID: &str = "tollgate";
const DEFAULT_SHUTDOWN_GRACE: &str = "10s";
const DEFAULT_CONNECT: &str = "5s";
const DEFAULT_FIRST_BYTE: &str = "600s";
const DEFAULT_IDLE: &str = "300s";
const DEFAULT_RETENTION: &str = "30d";
const DEFAULT_HANDSHAKE: &str = "10s";
const DEFAULT_CA_DIR: &str = "tollgate-ca";
const MAX_THREADS: i64 = 1024;

/// Built-in providers: name, dialect, base URL, key variable.
const BUILTIN_PROVIDERS: &[(&str, &str, &str, &str)] = &[
    (
        "anthropic",
        "anthropic",
        "https://api.anthropic.com",
        "ANTHROPIC_API_KEY",
    ),
    (
        "openai",
        "openai",
        "https://api.openai.com/v1",
        "OPENAI_API_KEY",
    ),
    (
        "openrouter",
        "openai",
        "https://openrouter.ai/api/v1",
        "OPENROUTER_API_KEY",
    ),
];

/// Environment variables with the prefix that are not config keys.
const NON_KEY_ENV: &[&str] = &["TOLLGATE_CONFIG", "TOLLGATE_LOG"];
const ENV_PREFIX: &str = "TOLLGATE_";

/// Every accepted key: (key, type, default, meaning). `<name>` and
/// `<model>` stand for any table name. The README's config table is
/// generated from this list, and the loader rejects any key not in it.
pub const KEYS: &[(&str, &str, &str, &str)] = &[
    ("listen", "socket address", DEFAULT_LISTEN,
     "Base-URL mode listener: point ANTHROPIC_BASE_URL (and OPENAI_BASE_URL, plus /v1) here. Flag --listen."),
    ("forward_proxy_listen", "socket address or \"\"", "\"\"",
     "HTTPS_PROXY mode listener, e.g. 127.0.0.1:8788 (apps set HTTPS_PROXY=http://127.0.0.1:8788 and trust the CA in ca_dir); \"\" = off."),
    ("ca_dir", "path", DEFAULT_CA_DIR,
     "Directory of the CA (ca.pem, ca.key from `tollgate ca init`) that HTTPS_PROXY mode mints leaves from."),
    ("tunnel_policy", "string", "allow",
     "CONNECT to a host that is not intercepted: allow (a blind byte-for-byte tunnel) or deny (403)."),
    ("forward_proxy_auth_sha256", "string", "\"\"",
     "Hex SHA-256 of \"user:password\": when set, HTTPS_PROXY mode requires Proxy-Authorization: Basic with them (407 otherwise)."),
    ("admin_listen", "socket address or \"\"", DEFAULT_ADMIN_LISTEN,
     "Listener for /metrics, /healthz and /readyz; \"\" turns it off. Flag --admin-listen."),
    ("data_dir", "path", DEFAULT_DATA_DIR,
     "Embedded store (sled) holding the usage outbox / local ledger. Flag --data-dir."),
    ("max_body_bytes", "size", "33554432",
     "Largest request body read: bytes as an integer, or a size string (\"32MiB\", \"64KiB\", \"1GB\"). Must be above 0."),
    ("default_account", "string", DEFAULT_ACCOUNT,
     "Account of requests without an x-tollgate-account header."),
    ("default_workload", "string", "\"\"",
     "Workload of requests without an x-tollgate-workload header (\"\" = none)."),
    ("default_tags", "string", "\"\"",
     "Tags of requests without an x-tollgate-tags header, e.g. \"team=search,env=prod\"."),
    ("sidecar_id", "string", "$HOSTNAME, else tollgate",
     "This sidecar's id in usage events."),
    ("stream_receipt", "bool", "true",
     "End each stream with a \": tollgate {json}\" SSE comment line carrying the receipt."),
    ("threads", "integer", "0",
     "Proxy worker threads; 0 = one per available CPU; at most 1024."),
    ("shutdown_grace", "duration", DEFAULT_SHUTDOWN_GRACE,
     "How long SIGTERM lets in-flight requests finish."),
    ("timeouts.connect", "duration", DEFAULT_CONNECT,
     "Upstream connect (TCP and TLS) timeout."),
    ("timeouts.first_byte", "duration", DEFAULT_FIRST_BYTE,
     "How long to wait for the upstream's response headers."),
    ("timeouts.idle", "duration", DEFAULT_IDLE,
     "Longest gap between two chunks of an upstream response (and of a blind tunnel, both ways)."),
    ("timeouts.handshake", "duration", DEFAULT_HANDSHAKE,
     "HTTPS_PROXY mode: longest a client may take to send its CONNECT and to finish the TLS handshake."),
    ("outbox.sync", "bool", "true",
     "Make each usage event durable (flushed) before the response's last byte reaches the client. false: events are group-committed in the background (lower latency; a crash can lose the newest events)."),
    ("outbox.retention", "duration", DEFAULT_RETENTION,
     "How long usage events that were not shipped are kept."),
    ("providers.<name>.dialect", "dialect", "-",
     "\"anthropic\" or \"openai\"; required for a new provider. <name> ([a-z0-9_-]+) is also the /<name>/ path prefix. Built in: anthropic (anthropic), openai (openai), openrouter (openai)."),
    ("providers.<name>.base_url", "url", "-",
     "http(s) URL that the provider SDK's base URL would be; no query or fragment; required for a new provider. Built in: anthropic https://api.anthropic.com, openai https://api.openai.com/v1, openrouter https://openrouter.ai/api/v1."),
    ("providers.<name>.api_key_env", "string", "-",
     "Environment variable holding the key to inject; unset or empty = pass the client's own credential through. Built in: ANTHROPIC_API_KEY, OPENAI_API_KEY, OPENROUTER_API_KEY."),
    ("providers.<name>.api_key_file", "path", "-",
     "File holding the key to inject (read at start, trimmed). Setting it replaces a lower layer's api_key_env; one layer may set only one of the two."),
    ("providers.<name>.ca_file", "path", "-",
     "PEM CA bundle trusted for this upstream instead of the system roots (a private CA, a test server)."),
    ("providers.<name>.default", "bool", "false",
     "Serve unprefixed paths of this dialect. When no provider of a dialect sets it: the only provider of that dialect, else the one named after the dialect (anthropic, openai)."),
    ("providers.<name>.enabled", "bool", "true",
     "false removes the provider, built-in ones included."),
    ("providers.<name>.hosts", "list of strings", "built in: anthropic [\"api.anthropic.com\"], openai [\"api.openai.com\"], openrouter [\"openrouter.ai\"]; else []",
     "HTTPS_PROXY mode: CONNECTs to these hosts are intercepted and their requests go to this provider's base_url."),
    ("prices.<model>.input", "decimal USD", "built-in table",
     "USD per million uncached input tokens. <model> is the exact model id; overriding an alias also reprices its dated ids. Required for a model without a built-in price."),
    ("prices.<model>.output", "decimal USD", "built-in table",
     "USD per million output tokens. Required for a model without a built-in price."),
    ("prices.<model>.cache_write_5m", "decimal USD", "built-in, else 1.25 × input",
     "USD per million cache-write tokens with the 5-minute TTL."),
    ("prices.<model>.cache_write_1h", "decimal USD", "built-in, else 2 × input",
     "USD per million cache-write tokens with the 1-hour TTL."),
    ("prices.<model>.cache_read", "decimal USD", "built-in, else 0.1 × input",
     "USD per million cache-read (cached input) tokens."),
    ("prices.<model>.batch_multiplier", "decimal", "built-in, else 0.5",
     "Multiplier for batch requests, between 0 and 1."),
    ("price_fallback.input", "decimal USD", "15.00",
     "Price of models not in the table, USD per million uncached input tokens."),
    ("price_fallback.output", "decimal USD", "75.00",
     "Price of models not in the table, USD per million output tokens."),
    ("price_fallback.cache_write_5m", "decimal USD", "18.75",
     "Price of models not in the table, USD per million 5-minute cache-write tokens."),
    ("price_fallback.cache_write_1h", "decimal USD", "30.00",
     "Price of models not in the table, USD per million 1-hour cache-write tokens."),
    ("price_fallback.cache_read", "decimal USD", "1.50",
     "Price of models not in the table, USD per million cache-read tokens."),
    ("price_fallback.batch_multiplier", "decimal", "0.5",
     "Batch multiplier of models not in the table."),
    ("gateway_keys_mode", "string", "live",
     "Which gateway keys this sidecar accepts: live (tg_live_…), test (tg_test_…) or any. A key of the other kind gets a 401."),
    ("gateway_keys[].account", "string", "-",
     "[[gateway_keys]]: when any are configured, every request must present one (x-api-key or Authorization: Bearer). The account its requests belong to (an x-tollgate-account naming another is refused)."),
    ("gateway_keys[].sha256", "string", "-",
     "Hex SHA-256 of the key, as printed by `tollgate keys new`; the key itself is never configured."),
    ("gateway_keys[].name", "string", "first 12 hex digits of sha256",
     "Names the key in logs, metrics and its rate limit."),
    ("gateway_keys[].rpm", "integer", "-",
     "Requests per minute allowed with this key."),
    ("gateway_keys[].tpm", "integer", "-",
     "Tokens (input + output) per minute allowed with this key."),
    ("rate_limits[].scope", "scope", "-",
     "[[rate_limits]]: all, account:NAME, account:* (each account its own bucket), workload:NAME, workload:* or tag:KEY=VALUE."),
    ("rate_limits[].rpm", "integer", "-",
     "Requests per minute (token bucket, refilled continuously). Over → 429 with retry-after and x-ratelimit-* headers."),
    ("rate_limits[].tpm", "integer", "-",
     "Tokens per minute; a request is charged its estimate (body bytes / 4 + max_tokens) and corrected to the real count."),
    ("budgets[].name", "string", "-",
     "[[budgets]]: unique name; the budget's spend is stored under it, so renaming starts from zero."),
    ("budgets[].scope", "scope", "-",
     "all, account:NAME, workload:NAME or tag:KEY=VALUE."),
    ("budgets[].period", "string", "-",
     "request (a ceiling on each request's worst case), day or month (UTC calendar periods)."),
    ("budgets[].limit_usd", "decimal USD", "-",
     "The ceiling, e.g. \"100.00\". The worst case of every request is reserved against it before forwarding, so it is never overshot."),
    ("budgets[].soft_thresholds", "list of fractions", "[]",
     "Fractions of the limit (e.g. [0.5, 0.8]) that fire an alert once per period when spend crosses them."),
    ("budgets[].alert_webhook", "url", "\"\"",
     "http(s) URL that receives each alert as a JSON POST (budget, scope, period, period_key, spent_usd, limit_usd, threshold), retried with backoff."),
    ("budgets[].on_insufficient", "string", "deny",
     "deny: refuse a request whose worst case does not fit (402 budget_exceeded). clamp: forward it with max_tokens lowered to what remains."),
    ("budget_default_max_tokens", "integer", "4096",
     "Output bound of a request that sets no max_tokens while a budget applies to it: reserved, and sent upstream as its max_tokens."),
    ("cache.mode", "string", "all",
     "Exact cache: all (answer repeats of a complete successful answer locally, coalesce identical requests in flight) or off."),
    ("cache.ttl", "duration", "1h",
     "How long an answer is served from the cache."),
    ("cache.max_bytes", "size", "1GiB",
     "Total size of the cache on disk; least-recently-used entries are evicted beyond it."),
    ("cache.max_entry_bytes", "size", "8MiB",
     "Larger answers are not cached, and a stream larger than this takes no more coalesced followers."),
    ("cache.coalesce", "bool", "true",
     "Identical requests (same cache key) arriving while one is in flight wait for it instead of calling the provider."),
    ("cache.coalesce_wait", "duration", "600s",
     "Longest a coalesced request waits for the first one's answer (non-stream) or first byte (stream) before calling the provider itself."),
    ("cache.rules[].scope", "string", "-",
     "[[cache.rules]]: account:NAME, workload:NAME or model:NAME (as requested). Rules apply in order; a later match wins for the fields it sets."),
    ("cache.rules[].mode", "string", "-",
     "all or off for matching requests."),
    ("cache.rules[].ttl", "duration", "-",
     "TTL for matching requests (also bounds what they read)."),
];

/// The TOML shape a key's type takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Str,
    Int,
    Bool,
    /// An integer or a string.
    Size,
    /// An array of numbers.
    Fractions,
    /// An array of strings.
    Strings,
}

impl Kind {
    fn of(ty: &str) -> Option<Kind> {
        match ty {
            "socket address"
            | "socket address or \"\""
            | "path"
            | "string"
            | "duration"
            | "url"
            | "dialect"
            | "decimal USD"
            | "decimal"
            | "scope" => Some(Kind::Str),
            "list of fractions" => Some(Kind::Fractions),
            "list of strings" => Some(Kind::Strings),
            "integer" => Some(Kind::Int),
            "bool" => Some(Kind::Bool),
            "size" => Some(Kind::Size),
            _ => None,
        }
    }

    fn accepts(self, v: &Value) -> bool {
        matches!(
            (self, v),
            (Kind::Str, Value::String(_))
                | (Kind::Int, Value::Integer(_))
                | (Kind::Bool, Value::Boolean(_))
                | (Kind::Size, Value::Integer(_) | Value::String(_))
        ) || matches!((self, v), (Kind::Fractions, Value::Array(a))
            if a.iter().all(|x| matches!(x, Value::Float(_) | Value::Integer(_))))
            || matches!((self, v), (Kind::Strings, Value::Array(a))
            if a.iter().all(Value::is_str))
    }

    fn expected(self) -> &'static str {
        match self {
            Kind::Str => "a string",
            Kind::Int => "an integer",
            Kind::Bool => "true or false",
            Kind::Size => "an integer or a size string such as \"32MiB\"",
            Kind::Fractions => "an array of numbers such as [0.5, 0.8]",
            Kind::Strings => "an array of strings such as [\"api.anthropic.com\"]",
        }
    }
}

fn pattern_matches(pattern: &str, path: &[String], prefix_only: bool) -> bool {
    let segs: Vec<&str> = pattern.split('.').collect();
    let len_ok = if prefix_only {
        segs.len() > path.len()
    } else {
        segs.len() == path.len()
    };
    len_ok
        && segs
            .iter()
            .zip(path)
            .all(|(p, s)| p.starts_with('<') || *p == s.as_str() || element_of(p, s))
}

/// Whether path segment `s` (`budgets[2]`) is an element of the array
/// pattern segment `p` (`budgets[]`).
fn element_of(p: &str, s: &str) -> bool {
    match (p.strip_suffix("[]"), s.strip_suffix(']')) {
        (Some(name), Some(rest)) => rest
            .strip_prefix(name)
            .and_then(|r| r.strip_prefix('['))
            .is_some_and(|idx| !idx.is_empty() && idx.bytes().all(|b| b.is_ascii_digit())),
        _ => false,
    }
}

/// The kind of the leaf key at `path`, if it is one.
fn leaf_kind(path: &[String]) -> Option<Kind> {
    KEYS.iter()
        .find(|(k, ..)| pattern_matches(k, path, false))
        .and_then(|(_, ty, ..)| Kind::of(ty))
}

/// Whether `path` is a table that holds known keys.
fn is_known_table(path: &[String]) -> bool {
    KEYS.iter().any(|(k, ..)| pattern_matches(k, path, true))
}

/// Whether `path` is an array of tables (`budgets` for `budgets[].name`).
fn is_known_array(path: &[String]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let array = format!("{last}[]");
    KEYS.iter().any(|(k, ..)| {
        let segs: Vec<&str> = k.split('.').collect();
        segs.len() > path.len()
            && segs[parents.len()] == array
            && segs
                .iter()
                .zip(parents)
                .all(|(p, s)| p.starts_with('<') || *p == s.as_str() || element_of(p, s))
    })
}

/// Renders a key path as TOML would write it: bare segments as they are,
/// others quoted; a `prices` model id is always quoted (`prices."gpt-4o"`).
fn render_key<S: AsRef<str>>(path: &[S]) -> String {
    let mut out = String::new();
    for (i, seg) in path.iter().enumerate() {
        let seg = seg.as_ref();
        if i > 0 {
            out.push('.');
        }
        let bare = !seg.is_empty()
            && seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-[]".contains(&b));
        let model = i == 1 && path[0].as_ref() == "prices";
        if bare && !model {
            out.push_str(seg);
        } else {
            out.push('"');
            out.push_str(&seg.replace('\\', "\\\\").replace('"', "\\\""));
            out.push('"');
        }
    }
    out
}

// === raw config ===

/// The configuration as written, after merging and the key check. Every
/// field is optional; [`Config`] has the defaults applied.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listen: Option<String>,
    pub forward_proxy_listen: Option<String>,
    pub ca_dir: Option<String>,
    pub tunnel_policy: Option<String>,
    pub forward_proxy_auth_sha256: Option<String>,
    pub admin_listen: Option<String>,
    pub data_dir: Option<String>,
    pub max_body_bytes: Option<RawSize>,
    pub default_account: Option<String>,
    pub default_workload: Option<String>,
    pub default_tags: Option<String>,
    pub sidecar_id: Option<String>,
    pub stream_receipt: Option<bool>,
    pub threads: Option<i64>,
    pub shutdown_grace: Option<String>,
    pub timeouts: Option<RawTimeouts>,
    pub outbox: Option<RawOutbox>,
    pub providers: Option<BTreeMap<String, RawProvider>>,
    pub prices: Option<BTreeMap<String, RawPrice>>,
    pub price_fallback: Option<RawPrice>,
    pub gateway_keys_mode: Option<String>,
    pub gateway_keys: Option<Vec<RawGatewayKey>>,
    pub rate_limits: Option<Vec<RawRateLimit>>,
    pub budgets: Option<Vec<RawBudget>>,
    pub budget_default_max_tokens: Option<i64>,
    pub cache: Option<RawCache>,
}

/// `[cache]`
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    pub mode: Option<String>,
    pub ttl: Option<String>,
    pub max_bytes: Option<RawSize>,
    pub max_entry_bytes: Option<RawSize>,
    pub coalesce: Option<bool>,
    pub coalesce_wait: Option<String>,
    pub rules: Option<Vec<RawCacheRule>>,
}

/// `[[cache.rules]]`
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCacheRule {
    pub scope: Option<String>,
    pub mode: Option<String>,
    pub ttl: Option<String>,
}

/// `[[gateway_keys]]`
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGatewayKey {
    pub account: Option<String>,
    pub sha256: Option<String>,
    pub name: Option<String>,
    pub rpm: Option<i64>,
    pub tpm: Option<i64>,
}

/// `[[rate_limits]]`
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    pub scope: Option<String>,
    pub rpm: Option<i64>,
    pub tpm: Option<i64>,
}

/// `[[budgets]]`
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBudget {
    pub name: Option<String>,
    pub scope: Option<String>,
    pub period: Option<String>,
    pub limit_usd: Option<String>,
    pub soft_thresholds: Option<Vec<Value>>,
    pub alert_webhook: Option<String>,
    pub on_insufficient: Option<String>,
}

/// A size: bytes, or a string with a unit.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum RawSize {
    Bytes(i64),
    Text(String),
}

/// `[timeouts]`
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    pub connect: Option<String>,
    pub first_byte: Option<String>,
    pub idle: Option<String>,
    pub handshake: Option<String>,
}

/// `[outbox]`
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutbox {
    pub retention: Option<String>,
    pub sync: Option<bool>,
}

/// `[providers.<name>]`
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    pub dialect: Option<String>,
    pub base_url: Option<String>,
    pub api_key_env: Option<String>,
    pub api_key_file: Option<String>,
    pub ca_file: Option<String>,
    pub default: Option<bool>,
    pub enabled: Option<bool>,
    pub hosts: Option<Vec<String>>,
}

// === loading ===

/// Loads the configuration from `src`. A file that was named but cannot be
/// read is a problem; no file at all means defaults.
pub fn load(src: &Sources) -> Result<Config, ConfigError> {
    let mut problems = Vec::new();
    let text = match &src.file {
        None => None,
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => Some((path.display().to_string(), text)),
            Err(e) => {
                problems.push(Problem::new(
                    path.display().to_string(),
                    format!("cannot read the config file: {e}"),
                ));
                None
            }
        },
    };
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

/// Where each key set by the environment or a flag came from (rendered key
/// → "env TOLLGATE_X" / "flag --listen").
type Origins = BTreeMap<String, String>;

fn assemble(
    file: Option<(&str, &str)>,
    env: &BTreeMap<String, String>,
    flags: &Flags,
    mut problems: Vec<Problem>,
) -> Result<Config, ConfigError> {
    let mut origins = Origins::new();
    let mut tree = defaults_layer();
    if let Some((label, text)) = file {
        match toml::from_str::<Table>(text) {
            Ok(t) => merge(&mut tree, t, &mut Vec::new()),
            Err(e) => problems.push(Problem::new(label, format!("not valid TOML: {e}"))),
        }
    }
    let env_layer = env_layer(env, &mut origins, &mut problems);
    merge(&mut tree, env_layer, &mut Vec::new());
    merge(&mut tree, flags_layer(flags, &mut origins), &mut Vec::new());
    check_tree(&mut tree, &mut Vec::new(), &mut problems);
    let config = match Value::Table(tree).try_into::<RawConfig>() {
        Ok(raw) => validate(raw, env, &mut problems),
        Err(e) => {
            // The key check guarantees the shape; this is a safety net.
            problems.push(Problem::new("config", e.to_string()));
            None
        }
    };
    for p in &mut problems {
        if p.key.contains(" (from ") {
            continue;
        }
        if let Some(origin) = origin_of(&origins, &p.key) {
            p.key = format!("{} (from {origin})", p.key);
        }
    }
    match config {
        Some(config) if problems.is_empty() => Ok(config),
        _ => Err(ConfigError { problems }),
    }
}

/// The source of `key`, or of the closest table above it, if the
/// environment or a flag set it.
fn origin_of<'a>(origins: &'a Origins, key: &str) -> Option<&'a str> {
    origins
        .iter()
        .filter(|(k, _)| {
            key == k.as_str() || (key.starts_with(k.as_str()) && key[k.len()..].starts_with('.'))
        })
        .max_by_key(|(k, _)| k.len())
        .or_else(|| {
            // A table that only the environment filled in.
            origins
                .iter()
                .find(|(k, _)| k.starts_with(key) && k[key.len()..].starts_with('.'))
        })
        .map(|(_, v)| v.as_str())
}

/// The built-in providers (scalar defaults are applied in [`validate`]).
fn defaults_layer() -> Table {
    let mut providers = Table::new();
    for (name, dialect, base_url, key_env) in BUILTIN_PROVIDERS {
        let mut p = Table::new();
        let host = base_url
            .trim_start_matches("https://")
            .split('/')
            .next()
            .unwrap_or_default();
        p.insert(
            "hosts".into(),
            Value::Array(vec![Value::String(host.to_string())]),
        );
        p.insert("dialect".into(), Value::String((*dialect).into()));
        p.insert("base_url".into(), Value::String((*base_url).into()));
        p.insert("api_key_env".into(), Value::String((*key_env).into()));
        providers.insert((*name).into(), Value::Table(p));
    }
    let mut tree = Table::new();
    tree.insert("providers".into(), Value::Table(providers));
    tree
}

/// Deep-merges `overlay` into `base`: tables merge key by key, anything else
/// replaces. A provider's `api_key_env` / `api_key_file` replace each other:
/// the layer that sets one drops the other from the layers below.
fn merge(base: &mut Table, overlay: Table, path: &mut Vec<String>) {
    if path.len() == 2 && path[0] == "providers" {
        for (set, drop) in [
            ("api_key_file", "api_key_env"),
            ("api_key_env", "api_key_file"),
        ] {
            if overlay.contains_key(set) && !overlay.contains_key(drop) {
                base.remove(drop);
            }
        }
    }
    for (k, v) in overlay {
        match v {
            Value::Table(o) => {
                if let Some(Value::Table(b)) = base.get_mut(&k) {
                    path.push(k);
                    merge(b, o, path);
                    path.pop();
                } else {
                    base.insert(k, Value::Table(o));
                }
            }
            v => {
                base.insert(k, v);
            }
        }
    }
}

/// `TOLLGATE_*` variables as a TOML tree.
fn env_layer(
    env: &BTreeMap<String, String>,
    origins: &mut Origins,
    problems: &mut Vec<Problem>,
) -> Table {
    let mut layer = Table::new();
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if NON_KEY_ENV.contains(&name.as_str()) {
            continue;
        }
        let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        if path.iter().any(String::is_empty) {
            problems.push(Problem::new(
                format!("env {name}"),
                "not a config variable name (TOLLGATE_KEY, with __ between nested keys)",
            ));
            continue;
        }
        let key = render_key(&path);
        let value = env_value(&path, raw);
        match insert_path(&mut layer, &path, value) {
            Ok(()) => {
                origins.insert(key, format!("env {name}"));
            }
            Err(()) => problems.push(Problem::new(
                format!("{key} (from env {name})"),
                "conflicts with another TOLLGATE_ variable that sets a value above this key",
            )),
        }
    }
    layer
}

/// An environment value: TOML when it parses (`1000`, `true`), else the
/// string itself. Keys of a string type keep the string (unquoted if it was
/// written as a TOML string).
fn env_value(path: &[String], raw: &str) -> Value {
    let parsed = parse_toml_value(raw);
    match (leaf_kind(path), parsed) {
        (Some(Kind::Str), Some(Value::String(s))) => Value::String(s),
        (Some(Kind::Str), _) | (_, None) => Value::String(raw.to_owned()),
        (_, Some(v)) => v,
    }
}

fn parse_toml_value(raw: &str) -> Option<Value> {
    let mut t = toml::from_str::<Table>(&format!("v = {raw}")).ok()?;
    if t.len() != 1 {
        return None;
    }
    t.remove("v")
}

/// Sets `path` in `table`, creating tables on the way; `Err` when a value
/// that is not a table is in the way.
fn insert_path(table: &mut Table, path: &[String], value: Value) -> Result<(), ()> {
    let Some((last, parents)) = path.split_last() else {
        return Err(());
    };
    let mut t = table;
    for seg in parents {
        let next = t
            .entry(seg.clone())
            .or_insert_with(|| Value::Table(Table::new()));
        match next {
            Value::Table(inner) => t = inner,
            _ => return Err(()),
        }
    }
    match t.get(last) {
        Some(Value::Table(_)) => Err(()),
        _ => {
            t.insert(last.clone(), value);
            Ok(())
        }
    }
}

fn flags_layer(flags: &Flags, origins: &mut Origins) -> Table {
    let mut layer = Table::new();
    for (key, flag, value) in [
        ("listen", "--listen", &flags.listen),
        ("admin_listen", "--admin-listen", &flags.admin_listen),
        ("data_dir", "--data-dir", &flags.data_dir),
    ] {
        if let Some(v) = value {
            layer.insert(key.into(), Value::String(v.clone()));
            origins.insert(key.into(), format!("flag {flag}"));
        }
    }
    layer
}

/// Reports (and removes) every unknown key and every value of the wrong TOML
/// type, so that what remains deserializes into [`RawConfig`].
fn check_tree(table: &mut Table, path: &mut Vec<String>, problems: &mut Vec<Problem>) {
    let keys: Vec<String> = table.keys().cloned().collect();
    for k in keys {
        path.push(k.clone());
        let keep = match (leaf_kind(path), table.get_mut(&k)) {
            (_, None) => true,
            (Some(kind), Some(v)) => {
                let ok = kind.accepts(v);
                if !ok {
                    problems.push(Problem::new(
                        render_key(path),
                        format!("expected {}, found {}", kind.expected(), v.type_str()),
                    ));
                }
                ok
            }
            (None, Some(v)) if is_known_array(path) => match v {
                Value::Array(items) => {
                    let name = path.pop().unwrap_or_default();
                    for (i, item) in items.iter_mut().enumerate() {
                        path.push(format!("{name}[{i}]"));
                        match item {
                            Value::Table(t) => check_tree(t, path, problems),
                            other => problems.push(Problem::new(
                                render_key(path),
                                format!("expected a table, found {}", other.type_str()),
                            )),
                        }
                        path.pop();
                    }
                    path.push(name);
                    let ok = items.iter().all(Value::is_table);
                    ok
                }
                other => {
                    problems.push(Problem::new(
                        render_key(path),
                        format!(
                            "expected an array of tables ([[{}]] in the config file), found {}",
                            render_key(path),
                            other.type_str()
                        ),
                    ));
                    false
                }
            },
            (None, Some(v)) if is_known_table(path) => match v {
                Value::Table(t) => {
                    check_tree(t, path, problems);
                    true
                }
                other => {
                    problems.push(Problem::new(
                        render_key(path),
                        format!("expected a table, found {}", other.type_str()),
                    ));
                    false
                }
            },
            (None, Some(_)) => {
                problems.push(Problem::new(render_key(path), "unknown key"));
                false
            }
        };
        if !keep {
            table.remove(&k);
        }
        path.pop();
    }
}

// === validation ===

fn validate(
    raw: RawConfig,
    env: &BTreeMap<String, String>,
    problems: &mut Vec<Problem>,
) -> Option<Config> {
    let before = problems.len();
    let forward_proxy = forward_proxy(&raw, problems);
    let ca_dir = PathBuf::from(
        raw.ca_dir
            .as_deref()
            .filter(|s| !s.is_empty())
            .unwrap_or(DEFAULT_CA_DIR),
    );
    let listen = socket_addr(
        "listen",
        raw.listen.as_deref().unwrap_or(DEFAULT_LISTEN),
        problems,
    );
    let admin_listen = match raw.admin_listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN) {
        "" => Some(None),
        s => socket_addr("admin_listen", s, problems).map(Some),
    };
    let data_dir = non_empty(
        "data_dir",
        raw.data_dir.unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
        problems,
    )
    .map(PathBuf::from);
    let max_body_bytes = max_body_bytes(raw.max_body_bytes, problems);
    let default_account = non_empty(
        "default_account",
        raw.default_account
            .unwrap_or_else(|| DEFAULT_ACCOUNT.into()),
        problems,
    );
    let default_account = default_account.and_then(|a| {
        crate::proxy::identify::check_name("value", &a)
            .map_err(|e| problems.push(Problem::new("default_account", e.0)))
            .ok()?;
        Some(a)
    });
    let default_workload = raw.default_workload.unwrap_or_default();
    if !default_workload.is_empty() {
        if let Err(e) = crate::proxy::identify::check_name("value", &default_workload) {
            problems.push(Problem::new("default_workload", e.0));
        }
    }
    let default_tags =
        match crate::proxy::identify::parse_tags("value", &raw.default_tags.unwrap_or_default()) {
            Ok(tags) => tags,
            Err(e) => {
                problems.push(Problem::new("default_tags", e.0));
                Vec::new()
            }
        };
    let sidecar_id = raw.sidecar_id.unwrap_or_else(|| {
        env.get("HOSTNAME")
            .filter(|h| !h.is_empty())
            .cloned()
            .unwrap_or_else(|| DEFAULT_SIDECAR_ID.into())
    });
    let sidecar_id = non_empty("sidecar_id", sidecar_id, problems);
    let threads = threads(raw.threads.unwrap_or(0), problems);
    let shutdown_grace = duration(
        "shutdown_grace",
        raw.shutdown_grace.as_deref(),
        DEFAULT_SHUTDOWN_GRACE,
        false,
        problems,
    );
    let t = raw.timeouts.unwrap_or_default();
    let connect = duration(
        "timeouts.connect",
        t.connect.as_deref(),
        DEFAULT_CONNECT,
        true,
        problems,
    );
    let first_byte = duration(
        "timeouts.first_byte",
        t.first_byte.as_deref(),
        DEFAULT_FIRST_BYTE,
        true,
        problems,
    );
    let idle = duration(
        "timeouts.idle",
        t.idle.as_deref(),
        DEFAULT_IDLE,
        true,
        problems,
    );
    let handshake = duration(
        "timeouts.handshake",
        t.handshake.as_deref(),
        DEFAULT_HANDSHAKE,
        true,
        problems,
    );

    let o = raw.outbox.unwrap_or_default();
    let retention = duration(
        "outbox.retention",
        o.retention.as_deref(),
        DEFAULT_RETENTION,
        false,
        problems,
    );
    let providers = providers(raw.providers.unwrap_or_default(), env, problems);
    let prices = price_table(raw.prices.unwrap_or_default(), raw.price_fallback, problems);
    let (gateway_keys, key_rules) = gateway_keys(
        raw.gateway_keys_mode.as_deref(),
        raw.gateway_keys.unwrap_or_default(),
        problems,
    );
    let mut rate_limits = rate_limits(raw.rate_limits.unwrap_or_default(), problems);
    rate_limits.extend(key_rules);
    let budgets = budgets(raw.budgets.unwrap_or_default(), problems);
    let budget_default_max_tokens = match raw.budget_default_max_tokens {
        None => Some(4096),
        Some(n) if n > 0 => Some(n as u64),
        Some(n) => {
            problems.push(Problem::new(
                "budget_default_max_tokens",
                format!("must be at least 1, not {n}"),
            ));
            None
        }
    };
    let cache = cache::cache(raw.cache.unwrap_or_default(), problems);
    if problems.len() != before {
        return None;
    }
    Some(Config {
        listen: listen?,
        ca_dir,
        forward_proxy: forward_proxy?,
        admin_listen: admin_listen?,
        data_dir: data_dir?,
        max_body_bytes: max_body_bytes?,
        default_account: default_account?,
        default_workload,
        default_tags,
        sidecar_id: sidecar_id?,
        stream_receipt: raw.stream_receipt.unwrap_or(true),
        threads: threads?,
        shutdown_grace: shutdown_grace?,
        timeouts: Timeouts {
            connect: connect?,
            first_byte: first_byte?,
            idle: idle?,
            handshake: handshake?,
        },
        outbox: OutboxConfig {
            retention: retention?,
            sync: o.sync.unwrap_or(true),
        },
        providers,
        prices,
        gateway_keys,
        rate_limits,
        budgets,
        budget_default_max_tokens: budget_default_max_tokens?,
        cache: cache?,
    })
}

/// HTTPS_PROXY mode keys; `Some(None)` when off.
fn forward_proxy(raw: &RawConfig, problems: &mut Vec<Problem>) -> Option<Option<ForwardProxy>> {
    let before = problems.len();
    let tunnel_policy = match raw.tunnel_policy.as_deref().unwrap_or("allow") {
        "allow" => Some(TunnelPolicy::Allow),
        "deny" => Some(TunnelPolicy::Deny),
        other => {
            problems.push(Problem::new(
                "tunnel_policy",
                format!("{other:?} is not allow or deny"),
            ));
            None
        }
    };
    let auth_sha256 = match raw.forward_proxy_auth_sha256.as_deref().unwrap_or("") {
        "" => Some(None),
        hex => match crate::keys::parse_sha256_hex(hex) {
            Some(h) => Some(Some(h)),
            None => {
                problems.push(Problem::new(
                    "forward_proxy_auth_sha256",
                    "must be 64 hex digits: the SHA-256 of \"user:password\" (never the password)",
                ));
                None
            }
        },
    };
    let ca_dir = non_empty(
        "ca_dir",
        raw.ca_dir.clone().unwrap_or_else(|| DEFAULT_CA_DIR.into()),
        problems,
    );
    let listen = match raw.forward_proxy_listen.as_deref().unwrap_or("") {
        "" => None,
        s => socket_addr("forward_proxy_listen", s, problems),
    };
    if let (Some(addr), Some(None)) = (listen, auth_sha256) {
        if !addr.ip().is_loopback() {
            problems.push(Problem::new(
                "forward_proxy_listen",
                format!("{addr} is not a loopback address: without forward_proxy_auth_sha256 anyone who can reach it could tunnel through this sidecar"),
            ));
        }
    }
    if problems.len() != before {
        return None;
    }
    let Some(listen) = listen else {
        return Some(None);
    };
    Some(Some(ForwardProxy {
        listen,
        ca_dir: PathBuf::from(ca_dir?),
        tunnel_policy: tunnel_policy?,
        auth_sha256: auth_sha256?,
    }))
}

fn socket_addr(key: &str, s: &str, problems: &mut Vec<Problem>) -> Option<SocketAddr> {
    match s.parse() {
        Ok(a) => Some(a),
        Err(_) => {
            problems.push(Problem::new(
                key,
                format!("not a socket address: {s:?} (expected ip:port, e.g. 127.0.0.1:8787)"),
            ));
            None
        }
    }
}

fn non_empty(key: &str, s: String, problems: &mut Vec<Problem>) -> Option<String> {
    if s.trim().is_empty() {
        problems.push(Problem::new(key, "must not be empty"));
        None
    } else {
        Some(s)
    }
}

fn max_body_bytes(raw: Option<RawSize>, problems: &mut Vec<Problem>) -> Option<usize> {
    const KEY: &str = "max_body_bytes";
    let bytes = size(KEY, raw, DEFAULT_MAX_BODY_BYTES, problems)?;
    match usize::try_from(bytes) {
        Ok(n) => Some(n),
        Err(_) => {
            problems.push(Problem::new(KEY, "too large for this platform"));
            None
        }
    }
}

/// A size key: bytes or a string with a unit; must be above 0.
fn size(key: &str, raw: Option<RawSize>, default: u64, problems: &mut Vec<Problem>) -> Option<u64> {
    let bytes = match raw {
        None => default,
        Some(RawSize::Bytes(n)) => match u64::try_from(n) {
            Ok(n) => n,
            Err(_) => {
                problems.push(Problem::new(
                    key,
                    format!("must be a positive number of bytes, not {n}"),
                ));
                return None;
            }
        },
        Some(RawSize::Text(s)) => match parse_size(&s) {
            Some(n) => n,
            None => {
                problems.push(Problem::new(
                    key,
                    format!("not a size: {s:?} (expected bytes, or a number with B, KB, MB, GB, KiB, MiB, GiB…: \"32MiB\")"),
                ));
                return None;
            }
        },
    };
    if bytes == 0 {
        problems.push(Problem::new(key, "must be greater than 0"));
        return None;
    }
    Some(bytes)
}

/// Parses `"32MiB"`, `"64 KiB"`, `"1GB"`, `"512"`, `"512B"` (units are
/// case-insensitive; KB/MB/GB/TB are powers of 1000, KiB… powers of 1024).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    if digits.is_empty() {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let mult: u64 = match unit.trim_start().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

fn threads(n: i64, problems: &mut Vec<Problem>) -> Option<usize> {
    if !(0..=MAX_THREADS).contains(&n) {
        problems.push(Problem::new(
            "threads",
            format!("must be between 0 and {MAX_THREADS} (0 = one per CPU), not {n}"),
        ));
        return None;
    }
    match usize::try_from(n) {
        Ok(0) | Err(_) => Some(std::thread::available_parallelism().map_or(1, |n| n.get())),
        Ok(n) => Some(n),
    }
}

fn duration(
    key: &str,
    s: Option<&str>,
    default: &str,
    positive: bool,
    problems: &mut Vec<Problem>,
) -> Option<Duration> {
    let s = s.unwrap_or(default);
    match humantime::parse_duration(s) {
        Ok(d) if positive && d.is_zero() => {
            problems.push(Problem::new(key, "must be greater than 0"));
            None
        }
        Ok(d) => Some(d),
        Err(_) => {
            problems.push(Problem::new(
                key,
                format!(
                    "not a duration: {s:?} (expected e.g. \"500ms\", \"10s\", \"5m\", \"30d\")"
                ),
            ));
            None
        }
    }
}

// --- providers ---

fn providers(
    raw: BTreeMap<String, RawProvider>,
    env: &BTreeMap<String, String>,
    problems: &mut Vec<Problem>,
) -> Vec<Provider> {
    let mut out: Vec<(Provider, Option<bool>)> = Vec::new();
    for (name, rp) in raw {
        if rp.enabled == Some(false) {
            continue;
        }
        if let Some(p) = provider(&name, &rp, env, problems) {
            out.push((p, rp.default));
        }
    }
    for dialect in [Dialect::Anthropic, Dialect::OpenAi] {
        if let Some(i) = resolve_default(&out, dialect, problems) {
            out[i].0.default = true;
        }
    }
    // An intercepted host names one provider.
    let mut owner: BTreeMap<&str, &str> = BTreeMap::new();
    for (p, _) in &out {
        for h in &p.hosts {
            if let Some(first) = owner.insert(h, &p.name) {
                problems.push(Problem::new(
                    render_key(&["providers", &p.name, "hosts"]),
                    format!("{h:?} is also a host of provider {first}"),
                ));
            }
        }
    }
    out.into_iter().map(|(p, _)| p).collect()
}

fn provider(
    name: &str,
    rp: &RawProvider,
    env: &BTreeMap<String, String>,
    problems: &mut Vec<Problem>,
) -> Option<Provider> {
    let key = |field: &str| render_key(&["providers", name, field]);
    let before = problems.len();
    let name_ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if !name_ok {
        problems.push(Problem::new(
            render_key(&["providers", name]),
            "provider names use only a-z, 0-9, '_' and '-'",
        ));
    }
    let dialect = match rp.dialect.as_deref() {
        None => {
            problems.push(Problem::new(
                key("dialect"),
                "missing (\"anthropic\" or \"openai\")",
            ));
            None
        }
        Some("anthropic") => Some(Dialect::Anthropic),
        Some("openai") => Some(Dialect::OpenAi),
        Some(other) => {
            problems.push(Problem::new(
                key("dialect"),
                format!("unknown dialect {other:?} (expected \"anthropic\" or \"openai\")"),
            ));
            None
        }
    };
    let upstream = match rp.base_url.as_deref() {
        None => {
            problems.push(Problem::new(key("base_url"), "missing"));
            None
        }
        Some(url) => match parse_base_url(url) {
            Ok(u) => Some(u),
            Err(message) => {
                problems.push(Problem::new(key("base_url"), message));
                None
            }
        },
    };
    let api_key = api_key(rp, env, &key, problems);
    let ca_file = rp
        .ca_file
        .as_deref()
        .filter(|f| !f.is_empty())
        .and_then(|path| {
            let mut store = pingora::tls::RootCertStore::empty();
            match pingora::tls::load_ca_file_into_store(path, &mut store) {
                Ok(()) if !store.is_empty() => Some(PathBuf::from(path)),
                Ok(()) => {
                    problems.push(Problem::new(
                        key("ca_file"),
                        format!("no certificate in {path:?}"),
                    ));
                    None
                }
                Err(e) => {
                    problems.push(Problem::new(
                        key("ca_file"),
                        format!("cannot load {path:?}: {e}"),
                    ));
                    None
                }
            }
        });
    if problems.len() != before {
        return None;
    }
    let mut upstream = upstream?;
    upstream.ca_file = ca_file;
    Some(Provider {
        name: name.to_owned(),
        dialect: dialect?,
        upstream,
        api_key,
        default: false,
        hosts: rp
            .hosts
            .iter()
            .flatten()
            .map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect(),
    })
}

/// The key to inject, if any. Never puts a key's value into a problem.
fn api_key(
    rp: &RawProvider,
    env: &BTreeMap<String, String>,
    key: &dyn Fn(&str) -> String,
    problems: &mut Vec<Problem>,
) -> Option<Secret> {
    let var = rp.api_key_env.as_deref().filter(|v| !v.is_empty());
    let file = rp.api_key_file.as_deref().filter(|f| !f.is_empty());
    match (var, file) {
        (Some(_), Some(_)) => {
            problems.push(Problem::new(
                key("api_key_file"),
                "set only one of api_key_env and api_key_file",
            ));
            None
        }
        (Some(var), None) => env
            .get(var)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
            .map(Secret::new),
        (None, Some(path)) => match std::fs::read_to_string(path) {
            Ok(text) if text.trim().is_empty() => {
                problems.push(Problem::new(
                    key("api_key_file"),
                    format!("{path:?} is empty"),
                ));
                None
            }
            Ok(text) => Some(Secret::new(text.trim())),
            Err(e) => {
                problems.push(Problem::new(
                    key("api_key_file"),
                    format!("cannot read {path:?}: {e}"),
                ));
                None
            }
        },
        (None, None) => None,
    }
}

/// Which provider serves unprefixed paths of `dialect`: the one with
/// `default = true`; else the only provider of the dialect; else the one
/// named after the dialect. An explicit `default = false` opts out.
fn resolve_default(
    providers: &[(Provider, Option<bool>)],
    dialect: Dialect,
    problems: &mut Vec<Problem>,
) -> Option<usize> {
    let of_dialect: Vec<usize> = (0..providers.len())
        .filter(|&i| providers[i].0.dialect == dialect)
        .collect();
    let explicit: Vec<usize> = of_dialect
        .iter()
        .copied()
        .filter(|&i| providers[i].1 == Some(true))
        .collect();
    match explicit.as_slice() {
        [] => {
            let candidates: Vec<usize> = of_dialect
                .iter()
                .copied()
                .filter(|&i| providers[i].1 != Some(false))
                .collect();
            match candidates.as_slice() {
                [only] if of_dialect.len() == 1 => Some(*only),
                _ => candidates
                    .into_iter()
                    .find(|&i| providers[i].0.name == dialect.as_str()),
            }
        }
        [one] => Some(*one),
        [first, rest @ ..] => {
            for &i in rest {
                problems.push(Problem::new(
                    render_key(&["providers", providers[i].0.name.as_str(), "default"]),
                    format!(
                        "{} is already the default {} provider; only one may set default = true",
                        providers[*first].0.name,
                        dialect.as_str()
                    ),
                ));
            }
            None
        }
    }
}

/// Splits an `http(s)://host[:port][/path]` base URL.
fn parse_base_url(url: &str) -> Result<Upstream, String> {
    let lower = url.to_ascii_lowercase();
    let (tls, rest) = if lower.starts_with("https://") {
        (true, &url["https://".len()..])
    } else if lower.starts_with("http://") {
        (false, &url["http://".len()..])
    } else {
        return Err(format!(
            "not an http(s) URL: {url:?} (the scheme must be http or https)"
        ));
    };
    if rest.contains(['?', '#']) {
        return Err(format!("must not have a query or fragment: {url:?}"));
    }
    if rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("must not contain whitespace: {url:?}"));
    }
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if authority.contains('@') {
        return Err(
            "must not contain credentials (user:password@); use api_key_env or api_key_file".into(),
        );
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let Some((addr, after)) = v6.split_once(']') else {
            return Err(format!("unclosed IPv6 address: {url:?}"));
        };
        if addr.parse::<Ipv6Addr>().is_err() {
            return Err(format!("not an IPv6 address: {addr:?}"));
        }
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| format!("bad port in {url:?}"))?,
            ),
        };
        (addr, port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(format!("has no host: {url:?}"));
    }
    let host_ok = host.contains(':')
        || host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    if !host_ok {
        return Err(format!("not a valid host: {host:?}"));
    }
    let port = match port {
        None => default_port(tls),
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => return Err(format!("bad port {p:?} in {url:?}")),
        },
    };
    Ok(Upstream {
        tls,
        host: host.to_ascii_lowercase(),
        port,
        base_path: path.trim_end_matches('/').to_owned(),
        ca_file: None,
    })
}

// --- prices ---

fn price_table(
    raw: BTreeMap<String, RawPrice>,
    fallback: Option<RawPrice>,
    problems: &mut Vec<Problem>,
) -> PriceTable {
    let builtin = PriceTable::builtin();
    let mut overrides = BTreeMap::new();
    for (model, rp) in raw {
        let key = render_key(&["prices", model.as_str()]);
        if model.is_empty() {
            problems.push(Problem::new(key, "a model id must not be empty"));
            continue;
        }
        if let Some(p) = price(&key, &rp, builtin.lookup(&model), problems) {
            overrides.insert(model, p);
        }
    }
    let default_fallback = prices::fallback_default();
    let fallback = fallback
        .and_then(|rp| price("price_fallback", &rp, Some(&default_fallback), problems))
        .unwrap_or(default_fallback);
    builtin.with_overrides(overrides, fallback)
}

/// One price table whose full key is `key` (`prices."gpt-4o"`).
fn price(
    key: &str,
    raw: &RawPrice,
    base: Option<&ModelPrice>,
    problems: &mut Vec<Problem>,
) -> Option<ModelPrice> {
    prices::validate_price(raw, base)
        .map_err(|errors| {
            problems.extend(
                errors
                    .iter()
                    .map(|e| Problem::new(format!("{key}.{}", e.field()), e.to_string())),
            )
        })
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialect::Usage;
    use crate::meter::money;
    use std::io::Write as _;

    fn env(vars: &[(&str, &str)]) -> BTreeMap<String, String> {
        vars.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn ok(toml: &str, vars: &[(&str, &str)]) -> Config {
        match parse_str(toml, &env(vars), &Flags::default()) {
            Ok(c) => c,
            Err(e) => panic!("config rejected:\n{e}"),
        }
    }

    fn problems(toml: &str, vars: &[(&str, &str)]) -> Vec<String> {
        match parse_str(toml, &env(vars), &Flags::default()) {
            Ok(_) => panic!("config accepted"),
            Err(e) => e.problems.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn defaults_without_file_or_env() {
        let c = load(&Sources::default()).unwrap();
        assert_eq!(c.listen, "127.0.0.1:8787".parse().unwrap());
        assert_eq!(c.admin_listen, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(c.data_dir, PathBuf::from("tollgate-data"));
        assert_eq!(c.max_body_bytes, 33_554_432);
        assert_eq!(c.default_account, "default");
        assert_eq!(c.sidecar_id, "tollgate");
        assert!(c.stream_receipt);
        assert!(c.threads >= 1);
        assert_eq!(c.shutdown_grace, Duration::from_secs(10));
        assert_eq!(
            c.timeouts,
            Timeouts {
                connect: Duration::from_secs(5),
                first_byte: Duration::from_secs(600),
                idle: Duration::from_secs(300),
                handshake: Duration::from_secs(10),
            }
        );
        assert_eq!(c.forward_proxy, None);
        assert_eq!(
            c.provider("anthropic").unwrap().hosts,
            ["api.anthropic.com"]
        );
        assert_eq!(c.provider("openrouter").unwrap().hosts, ["openrouter.ai"]);
        assert_eq!(c.outbox.retention, Duration::from_secs(30 * 86_400));
        let names: Vec<&str> = c.providers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["anthropic", "openai", "openrouter"]);
        let a = c.provider("anthropic").unwrap();
        assert_eq!(a.dialect, Dialect::Anthropic);
        assert_eq!(
            a.upstream,
            Upstream {
                tls: true,
                host: "api.anthropic.com".into(),
                port: 443,
                base_path: String::new(),
                ca_file: None,
            }
        );
        assert_eq!(a.api_key, None);
        assert_eq!(c.provider("openai").unwrap().upstream.base_path, "/v1");
        assert_eq!(
            c.provider("openrouter").unwrap().upstream.base_path,
            "/api/v1"
        );
        assert_eq!(
            c.provider("openrouter").unwrap().upstream.authority(),
            "openrouter.ai"
        );
        assert_eq!(
            c.default_provider(Dialect::Anthropic).unwrap().name,
            "anthropic"
        );
        assert_eq!(c.default_provider(Dialect::OpenAi).unwrap().name, "openai");
        assert!(!c.provider("openrouter").unwrap().default);
        assert_eq!(c.prices, PriceTable::builtin());
    }

    #[test]
    fn hostname_is_the_default_sidecar_id() {
        assert_eq!(ok("", &[("HOSTNAME", "pod-7")]).sidecar_id, "pod-7");
        assert_eq!(
            ok("sidecar_id = \"x\"", &[("HOSTNAME", "pod-7")]).sidecar_id,
            "x"
        );
    }

    #[test]
    fn precedence_flag_over_env_over_file() {
        let file = "listen = \"127.0.0.1:1001\"\ndata_dir = \"from-file\"\nadmin_listen = \"127.0.0.1:1002\"\n";
        let vars = env(&[
            ("TOLLGATE_LISTEN", "127.0.0.1:2001"),
            ("TOLLGATE_DATA_DIR", "from-env"),
        ]);
        let c = parse_str(file, &vars, &Flags::default()).unwrap();
        assert_eq!(c.listen.port(), 2001);
        assert_eq!(c.data_dir, PathBuf::from("from-env"));
        assert_eq!(c.admin_listen.unwrap().port(), 1002);
        let flags = Flags {
            listen: Some("127.0.0.1:3001".into()),
            admin_listen: Some(String::new()),
            data_dir: None,
        };
        let c = parse_str(file, &vars, &flags).unwrap();
        assert_eq!(c.listen.port(), 3001);
        assert_eq!(c.admin_listen, None);
        assert_eq!(c.data_dir, PathBuf::from("from-env"));
    }

    #[test]
    fn env_nests_with_double_underscores() {
        let c = ok(
            "",
            &[
                (
                    "TOLLGATE_PROVIDERS__ANTHROPIC__BASE_URL",
                    "http://127.0.0.1:9999",
                ),
                ("TOLLGATE_TIMEOUTS__CONNECT", "250ms"),
                ("TOLLGATE_MAX_BODY_BYTES", "1000"),
                ("TOLLGATE_THREADS", "3"),
                ("TOLLGATE_STREAM_RECEIPT", "false"),
                ("TOLLGATE_DEFAULT_ACCOUNT", "123"),
                ("TOLLGATE_CONFIG", "/not/a/key.toml"),
                ("TOLLGATE_LOG", "debug"),
                ("OTHER_VAR", "ignored"),
            ],
        );
        let a = c.provider("anthropic").unwrap();
        assert_eq!(
            a.upstream,
            Upstream {
                tls: false,
                host: "127.0.0.1".into(),
                port: 9999,
                base_path: String::new(),
                ca_file: None,
            }
        );
        assert_eq!(a.upstream.authority(), "127.0.0.1:9999");
        assert_eq!(a.dialect, Dialect::Anthropic);
        assert_eq!(c.timeouts.connect, Duration::from_millis(250));
        assert_eq!(c.max_body_bytes, 1000);
        assert_eq!(c.threads, 3);
        assert!(!c.stream_receipt);
        assert_eq!(c.default_account, "123");
    }

    #[test]
    fn env_can_add_a_provider_and_set_a_quoted_empty_string() {
        let c = ok(
            "",
            &[
                ("TOLLGATE_PROVIDERS__LOCAL__DIALECT", "openai"),
                (
                    "TOLLGATE_PROVIDERS__LOCAL__BASE_URL",
                    "http://localhost:8000/v1/",
                ),
                ("TOLLGATE_ADMIN_LISTEN", "\"\""),
            ],
        );
        let local = c.provider("local").unwrap();
        assert_eq!(local.upstream.base_path, "/v1");
        assert_eq!(local.upstream.authority(), "localhost:8000");
        assert_eq!(c.admin_listen, None);
    }

    #[test]
    fn every_problem_is_reported_together() {
        let file = r#"
listen = "nowhere"
admin_listen = "1.2.3.4"
max_body_bytes = 0
default_account = ""
threads = 5000
shutdown_grace = "soon"
forward_proxy_listen = "127.0.0.1:8788"

[timeouts]
connect = "0s"
idle = 5

[outbox]
retention = "forever"

[providers.anthropic]
base_ur = "https://x"

[providers.openai]
base_url = "ftp://api.openai.com"

[providers.Bad_Name]
dialect = "grpc"
base_url = "https://h?x=1"

[prices."gpt-4o"]
output = "abc"

[cache]
mode = "some"
"#;
        let got = problems(file, &[]);
        let expected = [
            "providers.anthropic.base_ur: unknown key",
            "timeouts.idle: expected a string, found integer",
            "listen: not a socket address: \"nowhere\" (expected ip:port, e.g. 127.0.0.1:8787)",
            "admin_listen: not a socket address: \"1.2.3.4\" (expected ip:port, e.g. 127.0.0.1:8787)",
            "max_body_bytes: must be greater than 0",
            "default_account: must not be empty",
            "threads: must be between 0 and 1024 (0 = one per CPU), not 5000",
            "shutdown_grace: not a duration: \"soon\" (expected e.g. \"500ms\", \"10s\", \"5m\", \"30d\")",
            "timeouts.connect: must be greater than 0",
            "outbox.retention: not a duration: \"forever\" (expected e.g. \"500ms\", \"10s\", \"5m\", \"30d\")",
            "providers.Bad_Name: provider names use only a-z, 0-9, '_' and '-'",
            "providers.Bad_Name.dialect: unknown dialect \"grpc\" (expected \"anthropic\" or \"openai\")",
            "providers.Bad_Name.base_url: must not have a query or fragment: \"https://h?x=1\"",
            "providers.openai.base_url: not an http(s) URL: \"ftp://api.openai.com\" (the scheme must be http or https)",
            "prices.\"gpt-4o\".output: not a decimal USD amount: \"abc\"",
            "cache.mode: \"some\" is not all or off",
        ];
        assert_eq!(got, expected);
        // Display: one per line.
        let e = parse_str(file, &BTreeMap::new(), &Flags::default()).unwrap_err();
        assert_eq!(e.to_string().lines().count(), expected.len());
    }

    #[test]
    fn forward_proxy_keys() {
        let c = ok(
            r#"
forward_proxy_listen = "127.0.0.1:8788"
ca_dir = "/etc/tollgate/ca"
tunnel_policy = "deny"
forward_proxy_auth_sha256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
[providers.anthropic]
hosts = ["API.anthropic.com", "anthropic.internal."]
"#,
            &[],
        );
        let f = c.forward_proxy.clone().unwrap();
        assert_eq!(f.listen.to_string(), "127.0.0.1:8788");
        assert_eq!(f.tunnel_policy, TunnelPolicy::Deny);
        assert!(f.auth_sha256.is_some());
        assert_eq!(
            c.provider("anthropic").unwrap().hosts,
            ["api.anthropic.com", "anthropic.internal"]
        );
        let got = problems(
            "forward_proxy_listen = \"x\"\ntunnel_policy = \"maybe\"\nforward_proxy_auth_sha256 = \"hunter2\"\n[providers.openai]\nhosts = \"api.openai.com\"\n",
            &[],
        );
        assert_eq!(got.len(), 4, "{got:?}");
        assert!(got[0].starts_with("providers.openai.hosts: expected an array of strings"));
        let got = problems(
            "[providers.openrouter]\nhosts = [\"api.openai.com\"]\n",
            &[],
        );
        assert_eq!(
            got,
            ["providers.openrouter.hosts: \"api.openai.com\" is also a host of provider openai"]
        );
        // Off loopback only with proxy authentication.
        let got = problems("forward_proxy_listen = \"0.0.0.0:8788\"\n", &[]);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].contains("not a loopback address"), "{got:?}");
        ok(
            "forward_proxy_listen = \"0.0.0.0:8788\"\nforward_proxy_auth_sha256 = \"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\"\n",
            &[],
        );
    }

    #[test]
    fn cache_config_and_rules() {
        let c = ok("", &[]);
        assert_eq!(c.cache, crate::cache::CacheConfig::default());
        let c = ok(
            r#"
[cache]
mode = "off"
ttl = "10m"
max_bytes = "64MiB"
max_entry_bytes = 1000
coalesce = false
coalesce_wait = "5s"
[[cache.rules]]
scope = "account:acme"
mode = "all"
[[cache.rules]]
scope = "model:gpt-4o"
ttl = "30s"
"#,
            &[],
        );
        assert_eq!(c.cache.mode, crate::cache::Mode::Off);
        assert_eq!(c.cache.ttl, Duration::from_secs(600));
        assert_eq!(c.cache.max_bytes, 64 << 20);
        assert_eq!(c.cache.max_entry_bytes, 1000);
        assert!(!c.cache.coalesce);
        assert_eq!(c.cache.rules.len(), 2);
        assert_eq!(
            c.cache.policy("acme", "", "gpt-4o"),
            (crate::cache::Mode::All, Duration::from_secs(30))
        );
        let got = problems(
            r#"
[cache]
ttl = "0s"
max_bytes = "lots"
[[cache.rules]]
scope = "tag:x=y"
mode = "sometimes"
[[cache.rules]]
scope = "account:a"
[[cache.rules]]
mode = "off"
colour = "red"
"#,
            &[],
        );
        assert_eq!(
            got,
            [
                "cache.rules[2].colour: unknown key",
                "cache.ttl: must be greater than 0",
                "cache.max_bytes: not a size: \"lots\" (expected bytes, or a number with B, KB, MB, GB, KiB, MiB, GiB…: \"32MiB\")",
                "cache.rules[0].scope: \"tag:x=y\" is not account:NAME, workload:NAME or model:NAME",
                "cache.rules[0].mode: \"sometimes\" is not all or off",
                "cache.rules[1]: sets neither mode nor ttl",
                "cache.rules[2].scope: required",
            ]
        );
    }

    #[test]
    fn cost_controls_validate_and_report_by_element() {
        let c = ok(
            r#"
[[gateway_keys]]
account = "acme"
sha256 = "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD"
rpm = 5
[[budgets]]
name = "acme-day"
scope = "account:acme"
period = "day"
limit_usd = "2.5"
soft_thresholds = [0.8, 0.5]
"#,
            &[],
        );
        assert!(c.gateway_keys.enabled());
        assert_eq!(c.rate_limits.len(), 1, "the key's own rpm is a rule");
        assert_eq!(c.rate_limits[0].label(), "key:ba7816bf8f01");
        assert_eq!(c.budgets[0].limit_nusd, 2_500_000_000);
        assert_eq!(c.budgets[0].soft_thresholds, vec![0.5, 0.8]);
        assert_eq!(c.budget_default_max_tokens, 4096);
        let got = problems(
            r#"
gateway_keys_mode = "prod"
[[gateway_keys]]
account = "acme"
sha256 = "tg_live_abc"
[[rate_limits]]
scope = "team:x"
rpm = 0
[[budgets]]
name = "b"
scope = "account:*"
period = "week"
limit_usd = "-1"
soft_thresholds = [1.5]
alert_webhook = "ftp://x"
on_insufficient = "maybe"
[[budgets]]
nmae = "typo"
"#,
            &[],
        );
        assert_eq!(
            got,
            [
                "budgets[1].nmae: unknown key",
                "gateway_keys_mode: \"prod\" is not live, test or any",
                "gateway_keys[0].sha256: must be 64 hex digits (the SHA-256 printed by `tollgate keys new`), not a key",
                "rate_limits[0].scope: \"team:x\" is not a scope (expected all, account:NAME, account:*, workload:NAME, workload:* or tag:KEY=VALUE)",
                "rate_limits[0].rpm: must be at least 1, not 0",
                "budgets[0].scope: account: \"*\" is not a valid name (1-128 of A-Z a-z 0-9 . _ - : / @)",
                "budgets[0].period: \"week\" is not request, day or month",
                "budgets[0].limit_usd: negative amount: \"-1\"",
                "budgets[0].soft_thresholds: 1.5 is not a fraction above 0 and at most 1",
                "budgets[0].alert_webhook: \"ftp://x\" is not an http(s) URL",
                "budgets[0].on_insufficient: \"maybe\" is not deny or clamp",
                "budgets[1].name: required",
                "budgets[1].scope: required",
                "budgets[1].period: required",
                "budgets[1].limit_usd: required",
            ]
        );
        // Arrays of tables come from the file only.
        let got = problems("", &[("TOLLGATE_BUDGETS__NAME", "x")]);
        assert_eq!(got, ["budgets (from env TOLLGATE_BUDGETS__NAME): expected an array of tables ([[budgets]] in the config file), found table"]);
    }

    #[test]
    fn unknown_nested_keys_and_wrong_shapes() {
        let got = problems(
            "timeouts = 5\n[providers.anthropic]\nbase_ur = \"x\"\n[prices.\"gpt-4.1\"]\ninptu = \"1\"\n[outbox.deeper]\nx = 1\n",
            &[],
        );
        assert_eq!(
            got,
            [
                "outbox.deeper: unknown key",
                "prices.\"gpt-4.1\".inptu: unknown key",
                "providers.anthropic.base_ur: unknown key",
                "timeouts: expected a table, found integer",
            ]
        );
    }

    #[test]
    fn problems_name_the_env_var_or_flag() {
        let vars = env(&[
            ("TOLLGATE_PROVIDERS__ANTHROPIC__BASE_URL", "nope"),
            ("TOLLGATE_LISTEN", "bad"),
            ("TOLLGATE_NOT_A_KEY", "1"),
            ("TOLLGATE_PROVIDERS____X", "1"),
        ]);
        let flags = Flags {
            data_dir: Some(String::new()),
            ..Flags::default()
        };
        let e = parse_str("", &vars, &flags).unwrap_err();
        let got: Vec<String> = e.problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            got,
            [
                "env TOLLGATE_PROVIDERS____X: not a config variable name (TOLLGATE_KEY, with __ between nested keys)",
                "not_a_key (from env TOLLGATE_NOT_A_KEY): unknown key",
                "listen (from env TOLLGATE_LISTEN): not a socket address: \"bad\" (expected ip:port, e.g. 127.0.0.1:8787)",
                "data_dir (from flag --data-dir): must not be empty",
                "providers.anthropic.base_url (from env TOLLGATE_PROVIDERS__ANTHROPIC__BASE_URL): not an http(s) URL: \"nope\" (the scheme must be http or https)",
            ]
        );
    }

    #[test]
    fn conflicting_env_vars_are_a_problem() {
        assert_eq!(
            problems(
                "",
                &[("TOLLGATE_TIMEOUTS", "5"), ("TOLLGATE_TIMEOUTS__CONNECT", "1s")]
            ),
            [
                "timeouts.connect (from env TOLLGATE_TIMEOUTS__CONNECT): conflicts with another TOLLGATE_ variable that sets a value above this key",
                "timeouts (from env TOLLGATE_TIMEOUTS): expected a table, found integer",
            ]
        );
    }

    #[test]
    fn api_key_env_is_read_from_the_env_map() {
        let c = ok(
            "[providers.openrouter]\napi_key_env = \"MY_OR_KEY\"\n",
            &[
                ("ANTHROPIC_API_KEY", "sk-ant-123\n"),
                ("MY_OR_KEY", "sk-or-456"),
                ("OPENAI_API_KEY", ""),
            ],
        );
        assert_eq!(
            c.provider("anthropic")
                .unwrap()
                .api_key
                .as_ref()
                .unwrap()
                .expose(),
            "sk-ant-123"
        );
        assert_eq!(
            c.provider("openrouter")
                .unwrap()
                .api_key
                .as_ref()
                .unwrap()
                .expose(),
            "sk-or-456"
        );
        // Empty = no key configured: pass the client's credential through.
        assert_eq!(c.provider("openai").unwrap().api_key, None);
    }

    #[test]
    fn api_key_file_is_read_trimmed_and_replaces_the_builtin_env() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "  sk-ant-from-file  ").unwrap();
        let path = f.path().display().to_string();
        let toml = format!("[providers.anthropic]\napi_key_file = {path:?}\n");
        let c = ok(&toml, &[("ANTHROPIC_API_KEY", "sk-ant-env")]);
        assert_eq!(
            c.provider("anthropic")
                .unwrap()
                .api_key
                .as_ref()
                .unwrap()
                .expose(),
            "sk-ant-from-file"
        );
        // The env layer can switch back to a variable.
        let c = ok(
            &toml,
            &[
                ("TOLLGATE_PROVIDERS__ANTHROPIC__API_KEY_ENV", "K"),
                ("K", "sk-k"),
            ],
        );
        assert_eq!(
            c.provider("anthropic")
                .unwrap()
                .api_key
                .as_ref()
                .unwrap()
                .expose(),
            "sk-k"
        );
    }

    #[test]
    fn api_key_file_problems() {
        let got = problems(
            "[providers.anthropic]\napi_key_file = \"/no/such/key\"\n[providers.openai]\napi_key_env = \"X\"\napi_key_file = \"/k\"\n",
            &[],
        );
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(
            got[0].starts_with("providers.anthropic.api_key_file: cannot read \"/no/such/key\": "),
            "{got:?}"
        );
        assert_eq!(
            got[1],
            "providers.openai.api_key_file: set only one of api_key_env and api_key_file"
        );
        let empty = tempfile::NamedTempFile::new().unwrap();
        let got = problems(
            &format!(
                "[providers.anthropic]\napi_key_file = {:?}\n",
                empty.path().display().to_string()
            ),
            &[],
        );
        assert_eq!(got.len(), 1);
        assert!(got[0].ends_with("is empty"), "{got:?}");
    }

    #[test]
    fn ca_file_problems() {
        let got = problems(
            "[providers.anthropic]\nca_file = \"/no/such/ca.pem\"\n",
            &[],
        );
        assert_eq!(got.len(), 1);
        assert!(
            got[0].starts_with("providers.anthropic.ca_file: cannot load"),
            "{got:?}"
        );
        let not_pem = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(not_pem.path(), "hello").unwrap();
        let got = problems(
            &format!(
                "[providers.anthropic]\nca_file = {:?}\n",
                not_pem.path().display().to_string()
            ),
            &[],
        );
        assert_eq!(got.len(), 1);
        assert!(
            got[0].starts_with("providers.anthropic.ca_file: no certificate"),
            "{got:?}"
        );
    }

    #[test]
    fn secrets_never_show() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        write!(f, "sk-file-SECRET").unwrap();
        let toml = format!(
            "[providers.openrouter]\napi_key_file = {:?}\n[providers.openai]\napi_key_env = \"OPENAI_API_KEY\"\n",
            f.path().display().to_string()
        );
        let vars = env(&[
            ("ANTHROPIC_API_KEY", "sk-env-SECRET"),
            ("OPENAI_API_KEY", "sk-oai-SECRET"),
        ]);
        let c = parse_str(&toml, &vars, &Flags::default()).unwrap();
        assert!(c.providers.iter().all(|p| p.api_key.is_some()));
        assert!(!format!("{c:?}").contains("SECRET"));
        assert!(!format!("{c:#?}").contains("SECRET"));
        let src = Sources {
            file: None,
            env: vars.clone(),
            flags: Flags::default(),
        };
        assert!(!format!("{src:?}").contains("SECRET"));
        // A broken config with keys configured: no problem shows a key.
        let bad = format!("listen = \"x\"\n{toml}[providers.anthropic]\napi_key_env = \"ANTHROPIC_API_KEY\"\nnope = 1\n");
        let e = parse_str(&bad, &vars, &Flags::default()).unwrap_err();
        assert!(!e.to_string().contains("SECRET"));
        assert!(!format!("{e:?}").contains("SECRET"));
        // Nor when the secret sits in an env var under an unknown key.
        let vars = env(&[("TOLLGATE_PROVIDERS__ANTHROPIC__API_KEY", "sk-env-SECRET")]);
        let e = parse_str("", &vars, &Flags::default()).unwrap_err();
        assert!(!format!("{e} {e:?}").contains("SECRET"));
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("32MiB"), Some(32 << 20));
        assert_eq!(parse_size("64KiB"), Some(64 << 10));
        assert_eq!(parse_size("64 kib"), Some(64 << 10));
        assert_eq!(parse_size("1GB"), Some(1_000_000_000));
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("512B"), Some(512));
        assert_eq!(parse_size("2TiB"), Some(2 << 40));
        for bad in [
            "",
            "MiB",
            "1.5MiB",
            "-1",
            "12 parsecs",
            "99999999999999999999",
            "20000000TiB",
        ] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
        assert_eq!(ok("max_body_bytes = \"64KiB\"", &[]).max_body_bytes, 65_536);
        assert_eq!(ok("max_body_bytes = 1", &[]).max_body_bytes, 1);
        assert_eq!(
            ok("", &[("TOLLGATE_MAX_BODY_BYTES", "1GB")]).max_body_bytes,
            1_000_000_000
        );
        assert_eq!(
            problems("max_body_bytes = -5", &[]),
            ["max_body_bytes: must be a positive number of bytes, not -5"]
        );
        assert_eq!(
            problems("max_body_bytes = \"0MiB\"", &[]),
            ["max_body_bytes: must be greater than 0"]
        );
        assert!(problems("max_body_bytes = \"lots\"", &[])[0]
            .starts_with("max_body_bytes: not a size: \"lots\""));
        assert_eq!(problems("max_body_bytes = 1.5", &[]), ["max_body_bytes: expected an integer or a size string such as \"32MiB\", found float"]);
        let c = ok("shutdown_grace = \"1m 30s\"\n[timeouts]\nfirst_byte = \"2min\"\nidle = \"500ms\"\n[outbox]\nretention = \"7d\"\n", &[]);
        assert_eq!(c.shutdown_grace, Duration::from_secs(90));
        assert_eq!(c.timeouts.first_byte, Duration::from_secs(120));
        assert_eq!(c.timeouts.idle, Duration::from_millis(500));
        assert_eq!(c.outbox.retention, Duration::from_secs(7 * 86_400));
        assert_eq!(
            ok("shutdown_grace = \"0s\"", &[]).shutdown_grace,
            Duration::ZERO
        );
        assert_eq!(
            problems("", &[("TOLLGATE_SHUTDOWN_GRACE", "10")]),
            ["shutdown_grace (from env TOLLGATE_SHUTDOWN_GRACE): not a duration: \"10\" (expected e.g. \"500ms\", \"10s\", \"5m\", \"30d\")"]
        );
    }

    #[test]
    fn threads_zero_means_cpus() {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(ok("threads = 0", &[]).threads, cpus);
        assert_eq!(ok("threads = 1024", &[]).threads, 1024);
        assert_eq!(problems("threads = -1", &[]).len(), 1);
    }

    #[test]
    fn default_provider_resolution() {
        // Saying so on openrouter is enough: the built-in openai default is implicit.
        let c = ok("[providers.openrouter]\ndefault = true\n", &[]);
        assert_eq!(
            c.default_provider(Dialect::OpenAi).unwrap().name,
            "openrouter"
        );
        assert!(!c.provider("openai").unwrap().default);
        // Two explicit defaults of one dialect: a problem.
        assert_eq!(
            problems("[providers.openrouter]\ndefault = true\n[providers.openai]\ndefault = true\n", &[]),
            ["providers.openrouter.default: openai is already the default openai provider; only one may set default = true"]
        );
        // The only enabled provider of a dialect is its default.
        let c = ok("[providers.openai]\nenabled = false\n", &[]);
        assert!(c.provider("openai").is_none());
        assert_eq!(
            c.default_provider(Dialect::OpenAi).unwrap().name,
            "openrouter"
        );
        // A second anthropic-dialect provider: anthropic stays the default.
        let extra = "[providers.bedrockish]\ndialect = \"anthropic\"\nbase_url = \"https://llm.internal/anthropic\"\n";
        let c = ok(extra, &[]);
        assert_eq!(
            c.default_provider(Dialect::Anthropic).unwrap().name,
            "anthropic"
        );
        assert_eq!(
            c.provider("bedrockish").unwrap().upstream.base_path,
            "/anthropic"
        );
        // ...unless it says otherwise.
        let c = ok(&format!("{extra}default = true\n"), &[]);
        assert_eq!(
            c.default_provider(Dialect::Anthropic).unwrap().name,
            "bedrockish"
        );
        // Opting out leaves a dialect without a default.
        let c = ok("[providers.anthropic]\ndefault = false\n", &[]);
        assert!(c.default_provider(Dialect::Anthropic).is_none());
        let c = ok("[providers.openai]\ndefault = false\n", &[]);
        assert!(c.default_provider(Dialect::OpenAi).is_none());
        // Disabled providers are gone, even with bad fields.
        let c = ok(
            "[providers.anthropic]\nenabled = false\nbase_url = \"nope\"\n",
            &[],
        );
        assert!(c.provider("anthropic").is_none());
        assert!(c.default_provider(Dialect::Anthropic).is_none());
    }

    #[test]
    fn new_providers_need_dialect_and_base_url() {
        assert_eq!(
            problems("[providers.x]\ndefault = true\n", &[]),
            [
                "providers.x.dialect: missing (\"anthropic\" or \"openai\")",
                "providers.x.base_url: missing"
            ]
        );
    }

    #[test]
    fn base_urls() {
        let u = parse_base_url("https://openrouter.ai/api/v1/").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.base_path.as_str()),
            (true, "openrouter.ai", 443, "/api/v1")
        );
        let u = parse_base_url("HTTP://LocalHost:80/").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.base_path.as_str()),
            (false, "localhost", 80, "")
        );
        assert_eq!(u.authority(), "localhost");
        let u = parse_base_url("https://[::1]:8443/v1").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 8443));
        assert_eq!(u.authority(), "[::1]:8443");
        assert_eq!(parse_base_url("https://h:443").unwrap().authority(), "h");
        assert_eq!(parse_base_url("http://h:443").unwrap().authority(), "h:443");
        for bad in [
            "api.anthropic.com",
            "ftp://h",
            "https://",
            "https:///v1",
            "https://h:0",
            "https://h:99999",
            "https://h:x",
            "https://u:p@h",
            "https://h/v1#f",
            "https://h/v1?q",
            "https://h o",
            "https://[::1",
            "https://[zz]:1",
            "https://h%41",
        ] {
            assert!(parse_base_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn price_overrides_and_fallback() {
        let c = ok(
            r#"
[prices."claude-sonnet-4-5"]
input = "2.00"
[prices."my-model"]
input = "1"
output = "2"
[price_fallback]
input = "100"
output = "200"
"#,
            &[],
        );
        let sonnet = c.prices.lookup("claude-sonnet-4-5-20250929").unwrap();
        assert_eq!(sonnet.rates.input, 2_000_000_000);
        assert_eq!(sonnet.rates.output, 15_000_000_000);
        assert_eq!(
            c.prices.lookup("my-model").unwrap().rates.cache_write_5m,
            1_250_000_000
        );
        let u = Usage {
            input_tokens: 1_000_000,
            ..Usage::default()
        };
        let cost = c.prices.cost("unknown", &u, false);
        assert_eq!((cost.nusd, cost.priced), (100_000_000_000, false));
        assert_eq!(c.prices.fallback().rates.cache_read, 1_500_000_000);
        assert_eq!(
            problems(
                "[prices.new]\noutput = \"1\"\n[price_fallback]\nbatch_multiplier = \"2\"\n",
                &[]
            ),
            [
                "prices.\"new\".input: required for a model without a built-in price",
                "price_fallback.batch_multiplier: not a multiplier between 0 and 1: \"2\"",
            ]
        );
    }

    #[test]
    fn load_reads_the_named_file_or_reports_it() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "listen = \"127.0.0.1:4000\"").unwrap();
        let src = Sources {
            file: Some(f.path().to_owned()),
            ..Sources::default()
        };
        assert_eq!(load(&src).unwrap().listen.port(), 4000);
        let src = Sources {
            file: Some(PathBuf::from("/no/such/tollgate.toml")),
            env: env(&[("TOLLGATE_LISTEN", "bad")]),
            flags: Flags::default(),
        };
        let e = load(&src).unwrap_err();
        assert_eq!(e.problems.len(), 2, "{e}");
        assert!(e.problems[0]
            .to_string()
            .starts_with("/no/such/tollgate.toml: cannot read the config file: "));
        assert!(e.problems[1]
            .key
            .starts_with("listen (from env TOLLGATE_LISTEN)"));
        let e = parse_str("listen = ", &BTreeMap::new(), &Flags::default()).unwrap_err();
        assert_eq!(e.problems.len(), 1);
        assert!(e.problems[0]
            .to_string()
            .starts_with("<config>: not valid TOML: "));
    }

    #[test]
    fn keys_table_is_complete_and_consistent() {
        let mut seen = std::collections::BTreeSet::new();
        for (key, ty, default, meaning) in KEYS {
            assert!(seen.insert(*key), "duplicate {key}");
            assert!(Kind::of(ty).is_some(), "unknown type {ty} of {key}");
            assert!(!default.is_empty() && !meaning.is_empty(), "{key}");
        }
        // Every field of the raw types is a key (a field missing from KEYS
        // would be rejected as unknown, so accepting all of them proves it).
        let all = r#"
listen = "127.0.0.1:1"
forward_proxy_listen = ""
ca_dir = "ca"
tunnel_policy = "allow"
forward_proxy_auth_sha256 = ""
admin_listen = ""
data_dir = "d"
max_body_bytes = 1
default_account = "a"
default_workload = "w"
default_tags = "k=v"
sidecar_id = "s"
stream_receipt = true
threads = 1
shutdown_grace = "1s"
gateway_keys_mode = "any"
budget_default_max_tokens = 100
[[gateway_keys]]
account = "a"
sha256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
name = "k"
rpm = 1
tpm = 1
[[rate_limits]]
scope = "account:*"
rpm = 1
tpm = 1
[[budgets]]
name = "b"
scope = "tag:team=search"
period = "day"
limit_usd = "1.50"
soft_thresholds = [0.5, 1]
alert_webhook = "https://hooks.example.com/x?y=1"
on_insufficient = "clamp"
[timeouts]
connect = "1s"
first_byte = "1s"
idle = "1s"
handshake = "1s"
[outbox]
retention = "1s"
sync = true
[providers.p]
dialect = "openai"
base_url = "http://h"
api_key_env = "E"
default = true
enabled = true
[providers.q]
dialect = "anthropic"
base_url = "http://h"
api_key_file = ""
ca_file = ""
hosts = ["q.example.com"]
[prices.m]
input = "1"
output = "1"
cache_write_5m = "1"
cache_write_1h = "1"
cache_read = "1"
batch_multiplier = "1"
[price_fallback]
input = "1"
output = "1"
cache_write_5m = "1"
cache_write_1h = "1"
cache_read = "1"
batch_multiplier = "1"
[cache]
mode = "all"
ttl = "1h"
max_bytes = "1GiB"
max_entry_bytes = "8MiB"
coalesce = true
coalesce_wait = "600s"
[[cache.rules]]
scope = "model:m"
mode = "off"
ttl = "1m"
"#;
        ok(all, &[]);
        fn leaves(
            t: &Table,
            path: &mut Vec<String>,
            out: &mut std::collections::BTreeSet<&'static str>,
        ) {
            for (k, v) in t {
                path.push(k.clone());
                match v {
                    Value::Table(inner) => leaves(inner, path, out),
                    Value::Array(items) if items.iter().all(Value::is_table) => {
                        let name = path.pop().unwrap();
                        for (i, item) in items.iter().enumerate() {
                            path.push(format!("{name}[{i}]"));
                            leaves(item.as_table().unwrap(), path, out);
                            path.pop();
                        }
                        path.push(name);
                    }
                    _ => {
                        let (key, ..) = KEYS
                            .iter()
                            .find(|e| pattern_matches(e.0, path, false))
                            .unwrap();
                        out.insert(key);
                    }
                }
                path.pop();
            }
        }
        let mut covered = std::collections::BTreeSet::new();
        leaves(&toml::from_str(all).unwrap(), &mut Vec::new(), &mut covered);
        assert_eq!(covered, seen);
        // Defaults in the table match the code.
        let default_of = |k: &str| KEYS.iter().find(|e| e.0 == k).map(|e| e.2).unwrap();
        let c = load(&Sources::default()).unwrap();
        assert_eq!(
            default_of("listen").parse::<SocketAddr>().unwrap(),
            c.listen
        );
        assert_eq!(
            default_of("admin_listen").parse::<SocketAddr>().ok(),
            c.admin_listen
        );
        assert_eq!(PathBuf::from(default_of("data_dir")), c.data_dir);
        assert_eq!(
            default_of("max_body_bytes").parse::<usize>().unwrap(),
            c.max_body_bytes
        );
        assert_eq!(default_of("default_account"), c.default_account);
        assert_eq!(
            default_of("stream_receipt").parse::<bool>().unwrap(),
            c.stream_receipt
        );
        assert_eq!(default_of("threads"), "0");
        for (k, d) in [
            ("shutdown_grace", c.shutdown_grace),
            ("timeouts.connect", c.timeouts.connect),
            ("timeouts.first_byte", c.timeouts.first_byte),
            ("timeouts.idle", c.timeouts.idle),
            ("outbox.retention", c.outbox.retention),
        ] {
            assert_eq!(humantime::parse_duration(default_of(k)).unwrap(), d, "{k}");
        }
        let fb = prices::fallback_default();
        for (k, v) in [
            ("price_fallback.input", fb.rates.input),
            ("price_fallback.output", fb.rates.output),
            ("price_fallback.cache_write_5m", fb.rates.cache_write_5m),
            ("price_fallback.cache_write_1h", fb.rates.cache_write_1h),
            ("price_fallback.cache_read", fb.rates.cache_read),
        ] {
            assert_eq!(money::format_usd(v), default_of(k), "{k}");
        }
        assert_eq!(
            u64::from(fb.batch_multiplier_ppm) * 1_000,
            money::parse_usd(default_of("price_fallback.batch_multiplier")).unwrap()
        );
    }

    #[test]
    fn key_rendering() {
        assert_eq!(
            render_key(&["providers", "anthropic", "base_url"]),
            "providers.anthropic.base_url"
        );
        assert_eq!(
            render_key(&["prices", "gpt-4o", "output"]),
            "prices.\"gpt-4o\".output"
        );
        assert_eq!(render_key(&["providers", "a.b"]), "providers.\"a.b\"");
        assert_eq!(render_key(&["x", ""]), "x.\"\"");
    }
}
