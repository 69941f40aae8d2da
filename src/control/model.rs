//! What the control endpoint keeps, record by record (MessagePack with field
//! names at rest, so records stay readable as fields are added), and what
//! its API shows of each (never a secret: credentials are kept as SHA-256
//! hashes and shown only once, when created).

use serde::{Deserialize, Serialize};

use super::ApiError;

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// RFC 3339 of `ts` (seconds since the epoch), for people and JSON.
pub fn rfc3339(ts: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(ts)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// Encodes a record for the store.
pub fn encode<T: Serialize>(record: &T) -> Result<Vec<u8>, ApiError> {
    rmp_serde::to_vec_named(record).map_err(|e| ApiError::internal(format!("encoding: {e}")))
}

/// Decodes a record from the store.
pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, ApiError> {
    rmp_serde::from_slice(bytes).map_err(|e| ApiError::internal(format!("decoding: {e}")))
}

/// An account: the unit of keys, budgets, usage and plan limits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// Its name (`[A-Za-z0-9._-]`, as everywhere in tollgate).
    pub name: String,
    /// Its plan tier.
    pub plan: String,
    /// When it was created.
    pub created_at: i64,
}

/// How an account is shown.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AccountView {
    pub name: String,
    pub plan: String,
    pub created_at: String,
    /// Gateway keys that are not revoked.
    pub gateway_keys: usize,
}

/// A gateway key, stored under the hex SHA-256 of the key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayKey {
    /// The account its requests belong to.
    pub account: String,
    /// Names it in limits, logs and metrics.
    pub name: String,
    /// `live` or `test`.
    pub mode: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

/// A sidecar credential, stored under the hex SHA-256 of the credential.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sidecar {
    /// Names the sidecar (or the fleet sharing the credential).
    pub name: String,
    /// The accounts it serves; empty: all.
    pub accounts: Vec<String>,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

/// How a credential (gateway key or sidecar) is shown: its id, never the
/// secret or its hash.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CredentialView {
    /// `gk_…` / `sc_…`: the first 16 hex digits of the hash.
    pub id: String,
    pub name: String,
    /// Gateway keys: the account; sidecars: absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// Gateway keys: `live` / `test`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Sidecars: the accounts served (empty: all).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accounts: Option<Vec<String>>,
    pub created_at: String,
    pub last_used_at: Option<String>,
    pub revoked_at: Option<String>,
    /// Only in the answer that created it: the secret, shown this once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// Length of the hash prefix that names a credential.
pub const ID_HEX: usize = 16;

/// The id shown for a credential with hex hash `hash_hex`.
pub fn credential_id(prefix: &str, hash_hex: &str) -> String {
    format!("{prefix}{}", hash_hex.get(..ID_HEX).unwrap_or(hash_hex))
}

/// A stored credential: shown by id, revocable.
pub trait Credential: Serialize + for<'de> Deserialize<'de> {
    /// `gateway_key` / `sidecar`: in audit actions and targets.
    const KIND: &'static str;
    /// `gk_` / `sc_`: before the hash prefix of its id.
    const ID_PREFIX: &'static str;
    /// The record as the API shows it.
    fn view(&self, hash_hex: &str) -> CredentialView;
    /// When it was revoked.
    fn revoked_at(&mut self) -> &mut Option<i64>;
}

impl Credential for GatewayKey {
    const KIND: &'static str = "gateway_key";
    const ID_PREFIX: &'static str = "gk_";

    fn revoked_at(&mut self) -> &mut Option<i64> {
        &mut self.revoked_at
    }

    fn view(&self, hash_hex: &str) -> CredentialView {
        CredentialView {
            id: credential_id(Self::ID_PREFIX, hash_hex),
            name: self.name.clone(),
            account: Some(self.account.clone()),
            mode: Some(self.mode.clone()),
            accounts: None,
            created_at: rfc3339(self.created_at),
            last_used_at: self.last_used_at.map(rfc3339),
            revoked_at: self.revoked_at.map(rfc3339),
            secret: None,
        }
    }
}

impl Credential for Sidecar {
    const KIND: &'static str = "sidecar";
    const ID_PREFIX: &'static str = "sc_";

    fn revoked_at(&mut self) -> &mut Option<i64> {
        &mut self.revoked_at
    }

    fn view(&self, hash_hex: &str) -> CredentialView {
        CredentialView {
            id: credential_id(Self::ID_PREFIX, hash_hex),
            name: self.name.clone(),
            account: None,
            mode: None,
            accounts: Some(self.accounts.clone()),
            created_at: rfc3339(self.created_at),
            last_used_at: self.last_used_at.map(rfc3339),
            revoked_at: self.revoked_at.map(rfc3339),
            secret: None,
        }
    }
}

/// One administrative change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Its number in the log (set when read back).
    #[serde(default)]
    pub seq: u64,
    pub ts: i64,
    /// Who: `admin:<id>`, never a secret.
    pub actor: String,
    /// What: `account.create`, `gateway_key.revoke`, …
    pub action: String,
    /// On what: `account:acme`, `gateway_key:gk_…`.
    pub target: String,
    /// The record before (JSON text of its view; never a secret).
    pub before: Option<String>,
    /// The record after.
    pub after: Option<String>,
}

/// How an audit entry is shown.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuditView {
    pub seq: u64,
    pub ts: String,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

impl AuditEntry {
    /// The entry as the API shows it.
    pub fn view(&self) -> AuditView {
        let parse = |s: &Option<String>| {
            s.as_deref()
                .map(|t| serde_json::from_str(t).unwrap_or(serde_json::Value::String(t.into())))
        };
        AuditView {
            seq: self.seq,
            ts: rfc3339(self.ts),
            actor: self.actor.clone(),
            action: self.action.clone(),
            target: self.target.clone(),
            before: parse(&self.before),
            after: parse(&self.after),
        }
    }
}
