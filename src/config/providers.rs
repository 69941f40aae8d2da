//! `[providers.<name>]`: the upstreams, the three built-in ones (the
//! defaults layer), their keys, and which one serves unprefixed paths.

use std::collections::BTreeMap;
use std::net::Ipv6Addr;
use std::path::PathBuf;

use serde::Deserialize;
use toml::{Table, Value};

use super::schema::{render_key, Key, Type};
use super::Problem;
use crate::dialect::Dialect;
use crate::secret::Secret;

#[rustfmt::skip]
pub(super) static KEYS: &[Key] = &[
    Key::new("providers.<name>.dialect", Type::Dialect, "-",
     "\"anthropic\" or \"openai\"; required for a new provider. <name> ([a-z0-9_-]+) is also the /<name>/ path prefix. Built in: anthropic (anthropic), openai (openai), openrouter (openai)."),
    Key::new("providers.<name>.base_url", Type::Url, "-",
     "http(s) URL that the provider SDK's base URL would be; no query or fragment; required for a new provider. Built in: anthropic https://api.anthropic.com, openai https://api.openai.com/v1, openrouter https://openrouter.ai/api/v1."),
    Key::new("providers.<name>.api_key_env", Type::Str, "-",
     "Environment variable holding the key to inject; unset or empty = pass the client's own credential through. Built in: ANTHROPIC_API_KEY, OPENAI_API_KEY, OPENROUTER_API_KEY."),
    Key::new("providers.<name>.api_key_file", Type::Path, "-",
     "File holding the key to inject (read at start, trimmed). Setting it replaces a lower layer's api_key_env; one layer may set only one of the two."),
    Key::new("providers.<name>.ca_file", Type::Path, "-",
     "PEM CA bundle trusted for this upstream instead of the system roots (a private CA, a test server)."),
    Key::new("providers.<name>.default", Type::Bool, "false",
     "Serve unprefixed paths of this dialect. When no provider of a dialect sets it: the only provider of that dialect, else the one named after the dialect (anthropic, openai)."),
    Key::new("providers.<name>.enabled", Type::Bool, "true",
     "false removes the provider, built-in ones included."),
    Key::new("providers.<name>.hosts", Type::Strings, "built in: anthropic [\"api.anthropic.com\"], openai [\"api.openai.com\"], openrouter [\"openrouter.ai\"]; else []",
     "HTTPS_PROXY mode: CONNECTs to these hosts are intercepted and their requests go to this provider's base_url."),
];

/// Keys that replace each other across layers: a layer that sets one drops
/// the other from the layers below (a file's `api_key_file` overrides the
/// built-in `api_key_env`), so that "only one of the two" holds per layer.
pub(super) static REPLACING: &[(&str, &str)] = &[(
    "providers.<name>.api_key_env",
    "providers.<name>.api_key_file",
)];

/// Built-in providers: name, dialect, base URL, key variable.
const BUILTIN: &[(&str, &str, &str, &str)] = &[
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

/// The section as written.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSection {
    pub providers: Option<BTreeMap<String, RawProvider>>,
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

/// The built-in providers as the lowest layer (`providers.<name>.*`), so
/// that a file or the environment overrides them field by field.
pub(super) fn defaults_layer() -> Table {
    let mut providers = Table::new();
    for (name, dialect, base_url, key_env) in BUILTIN {
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

/// Enabled providers, sorted by name; `env` holds the `api_key_env`
/// variables.
pub(super) fn validate(
    raw: RawSection,
    env: &BTreeMap<String, String>,
    problems: &mut Vec<Problem>,
) -> Vec<Provider> {
    let raw = raw.providers.unwrap_or_default();
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
    let ca_file =
        rp.ca_file
            .as_deref()
            .filter(|f| !f.is_empty())
            .and_then(|path| match load_ca_file(path) {
                Ok(n) if n > 0 => Some(PathBuf::from(path)),
                Ok(_) => {
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

/// How many CA certificates a PEM file holds; fails on anything unreadable
/// (rustls' own parser: config stays free of the data plane's crates).
fn load_ca_file(path: &str) -> Result<usize, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut store = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| e.to_string())? {
        store
            .add(cert.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    Ok(store.len())
}

#[cfg(test)]
mod tests;
