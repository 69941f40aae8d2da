//! Who is calling: an admin token, a sidecar credential (`tgs_…`) or a
//! gateway key (`tg_live_…` / `tg_test_…`), presented as
//! `Authorization: Bearer <secret>`.
//!
//! Secrets are kept only as SHA-256 hashes. Bootstrap admin tokens are
//! compared with every configured hash in constant time; stored
//! credentials are found by their hash: the lookup's timing depends only on
//! the hash, which tells an attacker nothing about any stored secret.

use subtle::ConstantTimeEq;

use super::model::{self, GatewayKey, Sidecar};
use super::{ApiError, Control};
use crate::keys::{self, LIVE_PREFIX, TEST_PREFIX};

/// Prefix of sidecar credentials.
pub const SIDECAR_PREFIX: &str = "tgs_";
/// Prefix of admin tokens minted by `tollgate admin new-token`.
pub const ADMIN_PREFIX: &str = "tga_";
/// How often a credential's `last_used_at` is written, at most.
const LAST_USED_EVERY_S: i64 = 60;

/// The caller, once authenticated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// May do everything. `id` names the token (a prefix of its hash).
    Admin { id: String },
    /// May only sync and ship, for `accounts` (empty: all).
    Sidecar {
        id: String,
        name: String,
        accounts: Vec<String>,
    },
    /// May only read its own account.
    Gateway { id: String, account: String },
}

impl Principal {
    /// The actor recorded in the audit log.
    pub fn actor(&self) -> String {
        match self {
            Principal::Admin { id } => format!("admin:{id}"),
            Principal::Sidecar { id, .. } => format!("sidecar:{id}"),
            Principal::Gateway { id, .. } => format!("gateway_key:{id}"),
        }
    }

    /// The actor, if this is an admin; else 403.
    pub fn admin(&self) -> Result<String, ApiError> {
        match self {
            Principal::Admin { .. } => Ok(self.actor()),
            _ => Err(ApiError::forbidden("this needs an admin token")),
        }
    }

    /// Ok for an admin and for a gateway key of `account`; else 403.
    pub fn reads_account(&self, account: &str) -> Result<(), ApiError> {
        match self {
            Principal::Admin { .. } => Ok(()),
            Principal::Gateway { account: a, .. } if a == account => Ok(()),
            _ => Err(ApiError::forbidden(format!(
                "this credential cannot read account {account:?}"
            ))),
        }
    }

    /// What `whoami` says.
    pub fn describe(&self) -> serde_json::Value {
        match self {
            Principal::Admin { id } => serde_json::json!({"kind": "admin", "id": id}),
            Principal::Sidecar { id, name, accounts } => serde_json::json!({
                "kind": "sidecar", "id": id, "name": name, "accounts": accounts
            }),
            Principal::Gateway { id, account } => {
                serde_json::json!({"kind": "gateway_key", "id": id, "account": account})
            }
        }
    }
}

/// The secret of an `Authorization: Bearer` header value.
pub fn bearer(header: Option<&str>) -> Option<&str> {
    let v = header?.trim();
    let (scheme, secret) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| secret.trim())
        .filter(|s| !s.is_empty())
}

impl Control {
    /// Authenticates `secret` (from `Authorization: Bearer`).
    pub fn authenticate(&self, secret: Option<&str>) -> Result<Principal, ApiError> {
        let Some(secret) = secret else {
            return Err(ApiError::unauthorized(
                "missing credential: send Authorization: Bearer <token>",
            ));
        };
        let hash = keys::sha256(secret);
        let hex = keys::to_hex(&hash);
        if secret.starts_with(LIVE_PREFIX) || secret.starts_with(TEST_PREFIX) {
            let Some(bytes) = self.records.gateway_keys.get(&hex)? else {
                return Err(ApiError::unauthorized("unknown gateway key"));
            };
            let key: GatewayKey = model::decode(&bytes)?;
            if key.revoked_at.is_some() {
                return Err(ApiError::unauthorized("this gateway key was revoked"));
            }
            self.touch_gateway_key(&hex)?;
            return Ok(Principal::Gateway {
                id: model::credential_id("gk_", &hex),
                account: key.account,
            });
        }
        if secret.starts_with(SIDECAR_PREFIX) {
            let Some(bytes) = self.records.sidecars.get(&hex)? else {
                return Err(ApiError::unauthorized("unknown sidecar credential"));
            };
            let sidecar: Sidecar = model::decode(&bytes)?;
            if sidecar.revoked_at.is_some() {
                return Err(ApiError::unauthorized(
                    "this sidecar credential was revoked",
                ));
            }
            self.touch_sidecar(&hex)?;
            return Ok(Principal::Sidecar {
                id: model::credential_id("sc_", &hex),
                name: sidecar.name,
                accounts: sidecar.accounts,
            });
        }
        // Every configured hash is compared, without an early exit.
        let found = self
            .config
            .admin_tokens
            .iter()
            .fold(subtle::Choice::from(0), |acc, h| acc | h.ct_eq(&hash));
        if bool::from(found) {
            return Ok(Principal::Admin {
                id: hex[..8].to_string(),
            });
        }
        Err(ApiError::unauthorized("unknown credential"))
    }

    /// Whether `last_used_at` of the credential `hex` is due a write (at
    /// most once a minute), recording that it is being written.
    fn last_used_due(&self, hex: &str, now: i64) -> bool {
        let Ok(mut seen) = self.last_used.lock() else {
            return false;
        };
        match seen.get(hex) {
            Some(t) if now - t < LAST_USED_EVERY_S => false,
            _ => {
                seen.insert(hex.to_string(), now);
                true
            }
        }
    }

    fn touch_gateway_key(&self, hex: &str) -> Result<(), ApiError> {
        let now = model::now();
        if self.last_used_due(hex, now) {
            let _w = self.write_lock()?;
            // Re-read under the lock: a revocation may have just landed.
            if let Some(bytes) = self.records.gateway_keys.get(hex)? {
                let mut key: GatewayKey = model::decode(&bytes)?;
                key.last_used_at = Some(now);
                self.records.gateway_keys.put(hex, &model::encode(&key)?)?;
            }
        }
        Ok(())
    }

    fn touch_sidecar(&self, hex: &str) -> Result<(), ApiError> {
        let now = model::now();
        if self.last_used_due(hex, now) {
            let _w = self.write_lock()?;
            if let Some(bytes) = self.records.sidecars.get(hex)? {
                let mut sidecar: Sidecar = model::decode(&bytes)?;
                sidecar.last_used_at = Some(now);
                self.records.sidecars.put(hex, &model::encode(&sidecar)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_header() {
        assert_eq!(bearer(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer(Some("bearer   abc ")), Some("abc"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(Some("Bearer ")), None);
        assert_eq!(bearer(Some("abc")), None);
        assert_eq!(bearer(None), None);
    }

    #[test]
    fn roles() {
        let admin = Principal::Admin { id: "ab".into() };
        let gw = Principal::Gateway {
            id: "gk_1".into(),
            account: "acme".into(),
        };
        let sc = Principal::Sidecar {
            id: "sc_1".into(),
            name: "s".into(),
            accounts: vec![],
        };
        assert!(admin.admin().is_ok());
        assert!(gw.admin().is_err());
        assert!(sc.admin().is_err());
        assert!(admin.reads_account("x").is_ok());
        assert!(gw.reads_account("acme").is_ok());
        assert_eq!(gw.reads_account("other").unwrap_err().status, 403);
        assert!(sc.reads_account("acme").is_err());
    }
}
