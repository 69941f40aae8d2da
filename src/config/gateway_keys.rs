//! `gateway_keys_mode` and `[[gateway_keys]]`: the keys requests must
//! present, and the rate limits some of them carry. Problems name the
//! element (`gateway_keys[1].sha256`).

use serde::Deserialize;

use super::schema::{Key, Type};
use super::values::{name, per_minute, required};
use super::Problem;
use crate::keys::{AcceptMode, GatewayKey, KeyRing};
use crate::limit::{Rule, RuleScope};

#[rustfmt::skip]
pub(super) static KEYS: &[Key] = &[
    Key::new("gateway_keys_mode", Type::Str, "live",
     "Which gateway keys this sidecar accepts: live (tg_live_…), test (tg_test_…) or any. A key of the other kind gets a 401."),
    Key::new("gateway_keys[].account", Type::Str, "-",
     "[[gateway_keys]]: when any are configured, every request must present one (x-api-key or Authorization: Bearer). The account its requests belong to (an x-tollgate-account naming another is refused)."),
    Key::new("gateway_keys[].sha256", Type::Str, "-",
     "Hex SHA-256 of the key, as printed by `tollgate keys new`; the key itself is never configured."),
    Key::new("gateway_keys[].name", Type::Str, "first 12 hex digits of sha256",
     "Names the key in logs, metrics and its rate limit."),
    Key::new("gateway_keys[].rpm", Type::Integer, "-",
     "Requests per minute allowed with this key."),
    Key::new("gateway_keys[].tpm", Type::Integer, "-",
     "Tokens (input + output) per minute allowed with this key."),
];

/// The section as written.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSection {
    pub gateway_keys_mode: Option<String>,
    pub gateway_keys: Option<Vec<RawGatewayKey>>,
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

/// The key ring, and the rate-limit rules of keys that set rpm or tpm.
pub(super) fn validate(raw: RawSection, problems: &mut Vec<Problem>) -> (KeyRing, Vec<Rule>) {
    let accept = match raw.gateway_keys_mode.as_deref() {
        None => AcceptMode::Live,
        Some(m) => AcceptMode::parse(m).unwrap_or_else(|| {
            problems.push(Problem::new(
                "gateway_keys_mode",
                format!("{m:?} is not live, test or any"),
            ));
            AcceptMode::Live
        }),
    };
    let mut keys: Vec<GatewayKey> = Vec::new();
    let mut rules = Vec::new();
    for (i, k) in raw.gateway_keys.unwrap_or_default().into_iter().enumerate() {
        let key = |field: &str| format!("gateway_keys[{i}].{field}");
        let account = required(key("account"), k.account.as_deref(), name, problems);
        let sha256 = required(
            key("sha256"),
            k.sha256.as_deref(),
            |h| {
                crate::keys::parse_sha256_hex(h).ok_or_else(|| {
                    "must be 64 hex digits (the SHA-256 printed by `tollgate keys new`), not a key"
                        .to_string()
                })
            },
            problems,
        );
        let rpm = per_minute(key("rpm"), k.rpm, problems);
        let tpm = per_minute(key("tpm"), k.tpm, problems);
        let (Some(account), Some(sha256)) = (account, sha256) else {
            continue;
        };
        let name = k
            .name
            .unwrap_or_else(|| crate::keys::to_hex(&sha256)[..12].to_string());
        if let Err(e) = self::name(&name) {
            problems.push(Problem::new(key("name"), e));
            continue;
        }
        if keys.iter().any(|g| g.sha256 == sha256) {
            problems.push(Problem::new(
                key("sha256"),
                "the same key is configured twice",
            ));
            continue;
        }
        if keys.iter().any(|g| g.name == name) {
            problems.push(Problem::new(
                key("name"),
                format!("{name:?} names another key too"),
            ));
            continue;
        }
        if rpm.is_some() || tpm.is_some() {
            rules.push(Rule {
                scope: RuleScope::Key(name.clone()),
                rpm,
                tpm,
            });
        }
        keys.push(GatewayKey {
            name,
            account,
            sha256,
            rpm,
            tpm,
        });
    }
    (KeyRing::new(keys, accept), rules)
}
