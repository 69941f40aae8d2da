//! `tollgate control`'s configuration: built-in defaults < file <
//! environment (`TOLLGATE_CONTROL_<KEY>`, `__` between nested keys) <
//! flags, checked like the sidecar's: unknown keys are errors and every
//! problem is reported at once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::{Table, Value};

use super::loader;
use super::schema::{Key, Type};
use super::values::{name, socket_addr};
use super::{ConfigError, Problem};
use crate::envelope::MasterKey;
use crate::meter::money::parse_usd;
use crate::plan::Plan;

const DEFAULT_LISTEN: &str = "127.0.0.1:8790";
const DEFAULT_DATA_DIR: &str = "tollgate-control-data";
const DEFAULT_ADMIN_TOKEN_ENV: &str = "TOLLGATE_ADMIN_TOKEN";
const DEFAULT_PLAN: &str = "trial";
const DEFAULT_MASTER_KEY_ENV: &str = "TOLLGATE_MASTER_KEY";
const DEFAULT_PREVIOUS_MASTER_KEY_ENV: &str = "TOLLGATE_PREVIOUS_MASTER_KEY";
/// Shortest bootstrap admin token accepted: guessable tokens are refused.
const MIN_TOKEN_CHARS: usize = 24;

/// The control endpoint's environment prefix.
pub const ENV_PREFIX: &str = "TOLLGATE_CONTROL_";
/// Variables with the prefix that are not keys of this config: the file,
/// and the sidecar's own settings that name the control endpoint.
const NON_KEY_ENV: &[&str] = &[
    "TOLLGATE_CONTROL_CONFIG",
    "TOLLGATE_CONTROL_URL",
    "TOLLGATE_CONTROL_CREDENTIAL",
];

/// Built-in plans: (name, gateway keys, rpm, tpm, batch, cache, largest budget).
const BUILTIN_PLANS: &[(&str, i64, i64, i64, bool, bool, &str)] = &[
    ("trial", 2, 60, 100_000, false, true, "10"),
    ("starter", 10, 600, 1_000_000, true, true, "1000"),
    ("growth", 50, 3_000, 5_000_000, true, true, "10000"),
    ("pro", 500, 0, 0, true, true, ""),
];

#[rustfmt::skip]
static KEYS: &[Key] = &[
    Key::new("listen", Type::SocketAddr, DEFAULT_LISTEN,
     "The control API: HTTP, or HTTPS when tls_cert and tls_key are set. Flag --listen."),
    Key::new("data_dir", Type::Path, DEFAULT_DATA_DIR,
     "The control store: accounts, credentials (hashed), the audit log. Flag --data-dir."),
    Key::new("tls_cert", Type::Path, "\"\"",
     "PEM certificate chain; with tls_key the API is served over TLS (rustls)."),
    Key::new("tls_key", Type::Path, "\"\"",
     "PEM private key of tls_cert."),
    Key::new("admin_token_env", Type::Str, DEFAULT_ADMIN_TOKEN_ENV,
     "Environment variable holding a bootstrap admin token (at least 24 characters; only its SHA-256 is kept)."),
    Key::new("admin_token_file", Type::Path, "\"\"",
     "File holding a bootstrap admin token, like admin_token_env."),
    Key::new("admin_token_sha256", Type::Strings, "[]",
     "Hex SHA-256 digests of further admin tokens."),
    Key::new("master_key_env", Type::Str, DEFAULT_MASTER_KEY_ENV,
     "Environment variable holding the master key that wraps every stored provider key (32 bytes as base64 or 64 hex digits; `tollgate control new-master-key`). Never stored. Without one, BYOK is off."),
    Key::new("master_key_file", Type::Path, "\"\"",
     "File holding the master key, instead of master_key_env."),
    Key::new("previous_master_key_env", Type::Str, DEFAULT_PREVIOUS_MASTER_KEY_ENV,
     "Environment variable holding the master key before the last rotation, for keys a rotation did not finish re-wrapping."),
    Key::new("lease_ttl", Type::Duration, "60s",
     "How long a budget lease granted to a sidecar is good for; sidecars renew at half of it, or sooner when their lease runs low."),
    Key::new("lease_reclaim_after", Type::Str, "\"never\"",
     "How long after a lease expired with no word from its sidecar its unspent part is given to others: a duration, or \"never\" (the safe default: a sidecar cut off from the control endpoint may have spent its whole lease, so reclaiming it early risks overshooting by that much)."),
    Key::new("default_plan", Type::Str, DEFAULT_PLAN,
     "Plan of accounts created without one."),
    Key::new("plans.<name>.max_gateway_keys", Type::Integer, "trial 2, starter 10, growth 50, pro 500",
     "Gateway keys an account of the plan may hold (revoked keys do not count)."),
    Key::new("plans.<name>.rpm", Type::Integer, "trial 60, starter 600, growth 3000, pro 0",
     "Requests per minute per account; 0 = no plan limit."),
    Key::new("plans.<name>.tpm", Type::Integer, "trial 100000, starter 1000000, growth 5000000, pro 0",
     "Tokens per minute per account; 0 = no plan limit."),
    Key::new("plans.<name>.batch", Type::Bool, "false for trial, else true",
     "Whether accounts of the plan may use the providers' batch APIs."),
    Key::new("plans.<name>.cache", Type::Bool, "true",
     "Whether the exact cache serves accounts of the plan."),
    Key::new("plans.<name>.max_budget_usd", Type::Usd, "trial 10, starter 1000, growth 10000, pro \"\"",
     "Largest limit of one budget of an account of the plan; \"\" = no cap."),
];

/// Every key of the control endpoint's config, in the README's order.
pub fn keys() -> impl Iterator<Item = &'static Key> {
    KEYS.iter()
}

/// The config as written.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    listen: Option<String>,
    data_dir: Option<String>,
    tls_cert: Option<String>,
    tls_key: Option<String>,
    admin_token_env: Option<String>,
    admin_token_file: Option<String>,
    admin_token_sha256: Option<Vec<String>>,
    master_key_env: Option<String>,
    master_key_file: Option<String>,
    previous_master_key_env: Option<String>,
    default_plan: Option<String>,
    plans: Option<BTreeMap<String, RawPlan>>,
    lease_ttl: Option<String>,
    lease_reclaim_after: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlan {
    max_gateway_keys: Option<i64>,
    rpm: Option<i64>,
    tpm: Option<i64>,
    batch: Option<bool>,
    cache: Option<bool>,
    max_budget_usd: Option<String>,
}

/// The control endpoint's validated configuration.
#[derive(Clone, Debug)]
pub struct ControlConfig {
    /// The API listener.
    pub listen: SocketAddr,
    /// The control store.
    pub data_dir: PathBuf,
    /// (certificate chain, private key) PEM files; `None`: plain HTTP.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// SHA-256 of each bootstrap admin token.
    pub admin_tokens: Vec<[u8; 32]>,
    /// Wraps stored provider keys; `None`: BYOK is off.
    pub master_key: Option<MasterKey>,
    /// The master key before the last rotation, if given.
    pub previous_master_key: Option<MasterKey>,
    /// Plan of accounts created without one.
    pub default_plan: String,
    /// Plans by name.
    pub plans: BTreeMap<String, Plan>,
    /// How long a lease is good for.
    pub lease_ttl: std::time::Duration,
    /// When an expired lease's unspent part is free again (`None`: never).
    pub lease_reclaim_after: Option<std::time::Duration>,
}

/// Flags of `tollgate control` that set keys.
#[derive(Clone, Debug, Default)]
pub struct ControlFlags {
    /// `--listen`
    pub listen: Option<String>,
    /// `--data-dir`
    pub data_dir: Option<String>,
}

/// Loads the control config from `file` (if any), `env` and `flags`.
pub fn load(
    file: Option<&Path>,
    env: &BTreeMap<String, String>,
    flags: &ControlFlags,
) -> Result<ControlConfig, ConfigError> {
    let mut problems = Vec::new();
    let text = file.and_then(|path| {
        loader::read_file(path)
            .map_err(|p| problems.push(p))
            .ok()
            .map(|text| (path.display().to_string(), text))
    });
    let flag_list: Vec<(&str, &str, &str)> = [
        ("listen", "--listen", &flags.listen),
        ("data_dir", "--data-dir", &flags.data_dir),
    ]
    .into_iter()
    .filter_map(|(k, f, v)| Some((k, f, v.as_deref()?)))
    .collect();
    let file = text.as_ref().map(|(l, t)| (l.as_str(), t.as_str()));
    assemble(file, env, &flag_list, problems)
}

/// Loads from TOML text (tests).
pub fn parse_str(toml: &str, env: &BTreeMap<String, String>) -> Result<ControlConfig, ConfigError> {
    assemble(Some(("<config>", toml)), env, &[], Vec::new())
}

fn assemble(
    file: Option<(&str, &str)>,
    env: &BTreeMap<String, String>,
    flags: &[(&str, &str, &str)],
    problems: Vec<Problem>,
) -> Result<ControlConfig, ConfigError> {
    let schema = loader::Schema {
        keys: KEYS,
        replacing: &[],
        env_prefix: ENV_PREFIX,
        non_key_env: NON_KEY_ENV,
        foreign_prefixes: &[],
    };
    let layers = loader::Layers {
        defaults: defaults_layer(),
        file,
        env,
        flags,
    };
    loader::load(layers, &schema, problems, |tree, problems| {
        validate(tree, env, problems)
    })
}

fn defaults_layer() -> Table {
    let mut plans = Table::new();
    for (name, keys, rpm, tpm, batch, cache, max_budget) in BUILTIN_PLANS {
        let mut p = Table::new();
        p.insert("max_gateway_keys".into(), Value::Integer(*keys));
        p.insert("rpm".into(), Value::Integer(*rpm));
        p.insert("tpm".into(), Value::Integer(*tpm));
        p.insert("batch".into(), Value::Boolean(*batch));
        p.insert("cache".into(), Value::Boolean(*cache));
        p.insert("max_budget_usd".into(), Value::String((*max_budget).into()));
        plans.insert((*name).into(), Value::Table(p));
    }
    let mut tree = Table::new();
    tree.insert("plans".into(), Value::Table(plans));
    tree
}

fn validate(
    tree: Table,
    env: &BTreeMap<String, String>,
    problems: &mut Vec<Problem>,
) -> Option<ControlConfig> {
    let raw: Raw = match Value::Table(tree).try_into() {
        Ok(r) => r,
        Err(e) => {
            // The key check guarantees the shape; this is a safety net.
            problems.push(Problem::new("config", e.to_string()));
            return None;
        }
    };
    let listen = socket_addr(
        "listen",
        raw.listen.as_deref().unwrap_or(DEFAULT_LISTEN),
        problems,
    );
    let data_dir = PathBuf::from(raw.data_dir.as_deref().unwrap_or(DEFAULT_DATA_DIR));
    if data_dir.as_os_str().is_empty() {
        problems.push(Problem::new("data_dir", "must not be empty"));
    }
    let cert = raw.tls_cert.clone().filter(|s| !s.is_empty());
    let key = raw.tls_key.clone().filter(|s| !s.is_empty());
    let tls = match (cert, key) {
        (Some(c), Some(k)) => Some((PathBuf::from(c), PathBuf::from(k))),
        (None, None) => None,
        (Some(_), None) => {
            problems.push(Problem::new("tls_key", "required when tls_cert is set"));
            None
        }
        (None, Some(_)) => {
            problems.push(Problem::new("tls_cert", "required when tls_key is set"));
            None
        }
    };
    let admin_tokens = admin_tokens(&raw, env, problems);
    let (master_key, previous_master_key) = master_keys(&raw, env, problems);
    let plans = plans(raw.plans.clone().unwrap_or_default(), problems);
    let default_plan = raw
        .default_plan
        .clone()
        .unwrap_or_else(|| DEFAULT_PLAN.into());
    if !plans.contains_key(&default_plan) {
        problems.push(Problem::new(
            "default_plan",
            format!(
                "no plan {default_plan:?} (plans: {})",
                plans.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    let lease_ttl =
        super::values::duration("lease_ttl", raw.lease_ttl.as_deref(), "60s", true, problems);
    let lease_reclaim_after = match raw.lease_reclaim_after.as_deref() {
        None | Some("never") => Some(None),
        Some(s) => {
            super::values::duration("lease_reclaim_after", Some(s), "0s", false, problems).map(Some)
        }
    };
    Some(ControlConfig {
        lease_ttl: lease_ttl?,
        lease_reclaim_after: lease_reclaim_after?,
        listen: listen?,
        data_dir,
        tls,
        admin_tokens,
        master_key,
        previous_master_key,
        default_plan,
        plans,
    })
}

/// The bootstrap admin tokens' hashes. A control endpoint nobody can
/// administer is a problem, as is a token too short to resist guessing.
fn admin_tokens(
    raw: &Raw,
    env: &BTreeMap<String, String>,
    problems: &mut Vec<Problem>,
) -> Vec<[u8; 32]> {
    let mut hashes = Vec::new();
    let env_name = raw
        .admin_token_env
        .as_deref()
        .unwrap_or(DEFAULT_ADMIN_TOKEN_ENV);
    let mut token = |key: String, secret: &str| {
        let secret = secret.trim();
        if secret.chars().count() < MIN_TOKEN_CHARS {
            problems.push(Problem::new(
                key,
                format!("an admin token must be at least {MIN_TOKEN_CHARS} characters"),
            ));
        } else {
            hashes.push(crate::keys::sha256(secret));
        }
    };
    if let Some(v) = env.get(env_name).filter(|v| !v.is_empty()) {
        token(format!("admin_token_env ({env_name})"), v);
    }
    if let Some(path) = raw.admin_token_file.as_deref().filter(|p| !p.is_empty()) {
        match std::fs::read_to_string(path) {
            Ok(v) => token("admin_token_file".into(), &v),
            Err(e) => problems.push(Problem::new(
                "admin_token_file",
                format!("cannot read {path}: {e}"),
            )),
        }
    }
    for (i, hex) in raw.admin_token_sha256.iter().flatten().enumerate() {
        match crate::keys::parse_sha256_hex(hex) {
            Some(h) => hashes.push(h),
            None => problems.push(Problem::new(
                format!("admin_token_sha256[{i}]"),
                "not a SHA-256 hex digest (64 hex digits)",
            )),
        }
    }
    if hashes.is_empty() && problems.is_empty() {
        problems.push(Problem::new(
            "admin_token_env",
            format!(
                "no admin token: set {env_name}, admin_token_file or admin_token_sha256 \
                 (generate one with `tollgate admin new-token`)"
            ),
        ));
    }
    hashes
}

/// The master key (env or file) and the previous one (env). A malformed
/// key is a problem whose message never shows it.
fn master_keys(
    raw: &Raw,
    env: &BTreeMap<String, String>,
    problems: &mut Vec<Problem>,
) -> (Option<MasterKey>, Option<MasterKey>) {
    let parse = |key: String, text: &str, problems: &mut Vec<Problem>| {
        MasterKey::parse(text)
            .map_err(|e| problems.push(Problem::new(key, e.to_string())))
            .ok()
    };
    let env_name = raw
        .master_key_env
        .as_deref()
        .unwrap_or(DEFAULT_MASTER_KEY_ENV);
    let file = raw.master_key_file.as_deref().filter(|f| !f.is_empty());
    let current = match (env.get(env_name).filter(|v| !v.is_empty()), file) {
        (Some(_), Some(_)) => {
            problems.push(Problem::new(
                "master_key_file",
                format!("set either it or {env_name}, not both"),
            ));
            None
        }
        (Some(v), None) => parse(format!("master_key_env ({env_name})"), v, problems),
        (None, Some(path)) => match std::fs::read_to_string(path) {
            Ok(v) => parse("master_key_file".into(), &v, problems),
            Err(e) => {
                problems.push(Problem::new(
                    "master_key_file",
                    format!("cannot read {path}: {e}"),
                ));
                None
            }
        },
        (None, None) => None,
    };
    let prev_name = raw
        .previous_master_key_env
        .as_deref()
        .unwrap_or(DEFAULT_PREVIOUS_MASTER_KEY_ENV);
    let previous = env.get(prev_name).filter(|v| !v.is_empty()).and_then(|v| {
        parse(
            format!("previous_master_key_env ({prev_name})"),
            v,
            problems,
        )
    });
    (current, previous)
}

fn plans(raw: BTreeMap<String, RawPlan>, problems: &mut Vec<Problem>) -> BTreeMap<String, Plan> {
    let mut plans = BTreeMap::new();
    for (plan_name, p) in raw {
        let key = |field: &str| format!("plans.{plan_name}.{field}");
        if let Err(e) = name(&plan_name) {
            problems.push(Problem::new(format!("plans.{plan_name}"), e));
            continue;
        }
        let mut ok = true;
        let mut count = |field: &str, v: Option<i64>| -> Option<u64> {
            match v.unwrap_or(0) {
                n if n < 0 => {
                    problems.push(Problem::new(key(field), "must not be negative"));
                    ok = false;
                    None
                }
                0 => None,
                n => Some(n as u64),
            }
        };
        let rpm = count("rpm", p.rpm);
        let tpm = count("tpm", p.tpm);
        let max_keys = match p.max_gateway_keys {
            Some(n) => u32::try_from(n).ok(),
            None => {
                problems.push(Problem::new(key("max_gateway_keys"), "required"));
                ok = false;
                None
            }
        };
        if p.max_gateway_keys.is_some() && max_keys.is_none() {
            problems.push(Problem::new(
                key("max_gateway_keys"),
                "must be between 0 and 4294967295",
            ));
            ok = false;
        }
        let max_budget_nusd = match p.max_budget_usd.as_deref().unwrap_or("") {
            "" => None,
            s => match parse_usd(s) {
                Ok(n) => Some(n),
                Err(e) => {
                    problems.push(Problem::new(key("max_budget_usd"), e.to_string()));
                    ok = false;
                    None
                }
            },
        };
        if ok {
            plans.insert(
                plan_name.clone(),
                Plan {
                    name: plan_name,
                    max_gateway_keys: max_keys.unwrap_or(0),
                    rpm,
                    tpm,
                    batch: p.batch.unwrap_or(false),
                    cache: p.cache.unwrap_or(true),
                    max_budget_nusd,
                },
            );
        }
    }
    plans
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_with_a_token() {
        let c = parse_str("", &env(&[("TOLLGATE_ADMIN_TOKEN", TOKEN)])).unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(c.admin_tokens, vec![crate::keys::sha256(TOKEN)]);
        assert_eq!(
            c.plans.keys().cloned().collect::<Vec<_>>(),
            ["growth", "pro", "starter", "trial"]
        );
        let trial = &c.plans["trial"];
        assert_eq!(trial.max_gateway_keys, 2);
        assert!(!trial.batch);
        assert_eq!(trial.max_budget_nusd, Some(10_000_000_000));
        assert_eq!(c.plans["pro"].rpm, None);
        assert_eq!(c.plans["pro"].max_budget_nusd, None);
    }

    #[test]
    fn every_problem_at_once() {
        let e = parse_str(
            "listen = \"nope\"\ntls_cert = \"c.pem\"\ndefault_plan = \"gold\"\nbogus = 1\n\
             [plans.trial]\nrpm = -1\n[plans.custom]\nbatch = true\n",
            &env(&[
                ("TOLLGATE_ADMIN_TOKEN", "short"),
                ("TOLLGATE_CONTROL_DATA_DIR", "/tmp/x"),
            ]),
        )
        .unwrap_err();
        let text = e.to_string();
        for want in [
            "bogus: unknown key",
            "listen: not a socket address",
            "tls_key: required when tls_cert is set",
            "admin_token_env (TOLLGATE_ADMIN_TOKEN): an admin token must be at least 24",
            "plans.trial.rpm: must not be negative",
            "plans.custom.max_gateway_keys: required",
            "default_plan: no plan \"gold\"",
        ] {
            assert!(text.contains(want), "{want:?} missing from:\n{text}");
        }
    }

    #[test]
    fn env_and_file_plans_merge_with_the_builtin_ones() {
        let c = parse_str(
            "[plans.trial]\nmax_gateway_keys = 1\n",
            &env(&[
                ("TOLLGATE_ADMIN_TOKEN", TOKEN),
                ("TOLLGATE_CONTROL_PLANS__TRIAL__BATCH", "true"),
                ("TOLLGATE_CONTROL_URL", "http://ignored"),
            ]),
        )
        .unwrap();
        let trial = &c.plans["trial"];
        assert_eq!(trial.max_gateway_keys, 1);
        assert!(trial.batch);
        assert_eq!(trial.rpm, Some(60));
    }

    #[test]
    fn no_admin_token_is_a_problem() {
        let e = parse_str("", &env(&[])).unwrap_err();
        assert!(e.to_string().contains("no admin token"), "{e}");
        let hash = crate::keys::to_hex(&crate::keys::sha256(TOKEN));
        let c = parse_str(&format!("admin_token_sha256 = [\"{hash}\"]"), &env(&[])).unwrap();
        assert_eq!(c.admin_tokens, vec![crate::keys::sha256(TOKEN)]);
    }
}
