//! What a control endpoint syncs to a sidecar: the accounts it serves,
//! their plans, gateway-key hashes and BYOK provider keys, at a version.
//! Provider keys travel in the clear inside it (use TLS to the control
//! endpoint) and are held only in memory; at rest the sidecar keeps the
//! snapshot sealed under a key derived from its own credential, so a copied
//! data dir alone reveals nothing.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::envelope::{self, EnvelopeError};
use crate::plan::Plan;

/// Label of the key that seals a sidecar's snapshot at rest.
const AT_REST_LABEL: &str = "tollgate sidecar snapshot v1";
const AAD: &[u8] = b"tollgate snapshot";

/// One sync answer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Grows with every administrative change (the audit log's number).
    pub version: u64,
    /// Whether requests must present a gateway key: true once any key was
    /// minted for a served account (revoking them all keeps keys required).
    pub gateway_keys_required: bool,
    pub accounts: Vec<SyncedAccount>,
    /// Budgets of the served accounts.
    #[serde(default)]
    pub budgets: Vec<SyncedBudget>,
    /// Model aliases for every sidecar (they join the sidecar's own
    /// `[aliases.*]`; a local alias of the same name wins).
    #[serde(default)]
    pub aliases: Vec<SyncedAlias>,
}

/// A model alias held by the control endpoint (see `crate::route`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncedAlias {
    pub name: String,
    /// `ordered`, `cheapest` or `fastest`.
    pub policy: String,
    /// In order: `provider/model`, each with an optional output cap.
    pub targets: Vec<SyncedAliasTarget>,
}

/// One target of a [`SyncedAlias`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncedAliasTarget {
    /// `provider/model`.
    pub target: String,
    /// Caps the output bound sent to (and reserved for) this target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
}

/// A budget held by the control endpoint: one account's spend per period.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SyncedBudget {
    pub name: String,
    pub account: String,
    /// `request`, `day` or `month`.
    pub period: String,
    pub limit_nusd: u64,
    /// `deny` or `clamp`.
    pub on_insufficient: String,
    /// `deny` or `allow`: what a sidecar does once its lease is spent and
    /// the control endpoint cannot be reached (see [`crate::lease`]).
    #[serde(default = "deny")]
    pub on_control_unreachable: String,
    /// With `allow`: the most the whole fleet may spend beyond its leases
    /// while the control endpoint is unreachable, nano-USD.
    #[serde(default)]
    pub unreachable_allowance_nusd: u64,
    /// Fractions of the limit that alert once per period, fleet-wide (the
    /// control endpoint fires them, not the sidecars).
    #[serde(default)]
    pub soft_thresholds: Vec<f64>,
    /// Where the control endpoint POSTs those alerts.
    #[serde(default)]
    pub alert_webhook: Option<String>,
}

fn deny() -> String {
    "deny".into()
}

/// An account as a sidecar needs it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncedAccount {
    pub name: String,
    pub plan: Plan,
    /// Active gateway keys.
    pub gateway_keys: Vec<SyncedKey>,
    /// BYOK keys, by provider.
    pub provider_keys: Vec<SyncedProviderKey>,
}

/// A gateway key: its hash, never the key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncedKey {
    pub name: String,
    /// Hex SHA-256 of the key.
    pub sha256: String,
    /// `live` / `test`.
    pub mode: String,
}

/// An account's own key for a provider.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncedProviderKey {
    pub provider: String,
    pub key: String,
}

impl fmt::Debug for SyncedProviderKey {
    /// The key never reaches a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SyncedProviderKey({}, [redacted])", self.provider)
    }
}

/// Why a snapshot at rest cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("sealing: {0}")]
    Seal(#[from] EnvelopeError),
    #[error("encoding: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("decoding: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
}

impl Snapshot {
    /// The snapshot sealed for rest under `credential`.
    pub fn seal(&self, credential: &str) -> Result<Vec<u8>, SnapshotError> {
        let key = envelope::derive_key(AT_REST_LABEL, credential);
        Ok(envelope::aead_seal(
            &key,
            AAD,
            &rmp_serde::to_vec_named(self)?,
        )?)
    }

    /// Opens what [`Snapshot::seal`] made with the same credential.
    pub fn open(sealed: &[u8], credential: &str) -> Result<Snapshot, SnapshotError> {
        let key = envelope::derive_key(AT_REST_LABEL, credential);
        Ok(rmp_serde::from_slice(&envelope::aead_open(
            &key, AAD, sealed,
        )?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_at_rest_under_the_credential() {
        let s = Snapshot {
            version: 7,
            gateway_keys_required: true,
            accounts: vec![SyncedAccount {
                name: "acme".into(),
                plan: Plan {
                    name: "trial".into(),
                    max_gateway_keys: 2,
                    rpm: None,
                    tpm: None,
                    batch: false,
                    cache: true,
                    max_budget_nusd: None,
                },
                gateway_keys: vec![],
                provider_keys: vec![SyncedProviderKey {
                    provider: "anthropic".into(),
                    key: "sk-ant-PLAINTEXT".into(),
                }],
            }],
            budgets: vec![],
            aliases: vec![SyncedAlias {
                name: "smart".into(),
                policy: "ordered".into(),
                targets: vec![SyncedAliasTarget {
                    target: "anthropic/claude-sonnet-4-5".into(),
                    max_tokens: Some(10),
                }],
            }],
        };
        let sealed = s.seal("tgs_one").unwrap();
        assert!(!sealed.windows(9).any(|w| w == b"PLAINTEXT"));
        assert_eq!(Snapshot::open(&sealed, "tgs_one").unwrap(), s);
        assert!(Snapshot::open(&sealed, "tgs_two").is_err());
        assert!(!format!("{s:?}").contains("PLAINTEXT"));
    }

    #[test]
    fn a_snapshot_without_aliases_still_decodes() {
        // What a control endpoint of before aliases sends.
        let s: Snapshot = serde_json::from_str(
            r#"{"version": 3, "gateway_keys_required": false, "accounts": [], "budgets": []}"#,
        )
        .unwrap();
        assert!(s.aliases.is_empty());
    }
}
