//! Gateway keys (`tg_live_…` / `tg_test_…`, an app's credential, scoped to
//! one account) and sidecar credentials (`tgs_…`, a sidecar's credential
//! for sync and shipping): random, shown exactly once, stored as SHA-256
//! hashes, revocable, with the time each was last used.

use serde::Deserialize;

use super::auth::SIDECAR_PREFIX;
use super::model::{self, Credential, CredentialView, GatewayKey, Sidecar, ID_HEX};
use super::{ApiError, Control};
use crate::keys::{self, KeyMode};
use crate::store::KeyStore;

/// `POST /api/v1/accounts/{account}/gateway-keys`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewGatewayKey {
    /// Names the key in limits, logs and metrics.
    pub name: String,
    /// `live` (default) or `test`.
    pub mode: Option<String>,
}

/// `POST /api/v1/sidecars`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSidecar {
    pub name: String,
    /// The accounts it serves; absent or empty: all.
    #[serde(default)]
    pub accounts: Vec<String>,
}

fn random(prefix: &str) -> Result<String, ApiError> {
    keys::generate_with_prefix(prefix)
        .map_err(|e| ApiError::internal(format!("the OS random number generator failed: {e}")))
}

/// The (hash, record) of the credential with id `id` (`<prefix><16 hex>`).
fn find(table: &dyn KeyStore, prefix: &str, id: &str) -> Result<(String, Vec<u8>), ApiError> {
    let not_found = || ApiError::not_found(format!("no credential {id:?}"));
    let hex = id.strip_prefix(prefix).ok_or_else(not_found)?;
    if hex.len() != ID_HEX || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(not_found());
    }
    let mut found = table.list(&hex.to_ascii_lowercase())?;
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(not_found()),
        _ => Err(ApiError::conflict(format!(
            "{id:?} names more than one credential"
        ))),
    }
}

impl Control {
    /// Stores `record` under the hash of `secret`, audits it, and returns
    /// its view with the secret (shown this once).
    fn store_new<C: Credential>(
        &self,
        actor: &str,
        table: &dyn KeyStore,
        secret: String,
        record: &C,
    ) -> Result<CredentialView, ApiError> {
        let hex = keys::to_hex(&keys::sha256(&secret));
        table.put(&hex, &model::encode(record)?)?;
        let view = record.view(&hex);
        self.audit::<CredentialView, _>(
            actor,
            &format!("{}.create", C::KIND),
            &format!("{}:{}", C::KIND, view.id),
            None,
            Some(&view),
        )?;
        Ok(CredentialView {
            secret: Some(secret),
            ..view
        })
    }

    /// Revokes the credential `id` in `table`. Revoking twice is not an
    /// error (and not audited twice).
    fn revoke<C: Credential>(
        &self,
        actor: &str,
        table: &dyn KeyStore,
        id: &str,
    ) -> Result<CredentialView, ApiError> {
        let _w = self.write_lock()?;
        let (hex, bytes) = find(table, C::ID_PREFIX, id)?;
        let mut record: C = model::decode(&bytes)?;
        let before = record.view(&hex);
        if record.revoked_at().is_none() {
            *record.revoked_at() = Some(model::now());
            table.put(&hex, &model::encode(&record)?)?;
            self.audit(
                actor,
                &format!("{}.revoke", C::KIND),
                &format!("{}:{id}", C::KIND),
                Some(&before),
                Some(&record.view(&hex)),
            )?;
        }
        Ok(record.view(&hex))
    }

    /// Mints a gateway key for `account`, within its plan's key count.
    pub fn create_gateway_key(
        &self,
        actor: &str,
        account: &str,
        req: NewGatewayKey,
    ) -> Result<CredentialView, ApiError> {
        let name = crate::identity::check_name("name", &req.name)
            .map_err(|e| ApiError::invalid(e.0))?
            .to_string();
        let mode = match req.mode.as_deref().unwrap_or("live") {
            "live" => KeyMode::Live,
            "test" => KeyMode::Test,
            other => {
                return Err(ApiError::invalid(format!(
                    "mode: live or test, not {other:?}"
                )))
            }
        };
        let _w = self.write_lock()?;
        let acct = self.load_account(account)?;
        let plan = self.plan_of(&acct)?;
        let held = self.active_keys(account)?;
        plan.allows_key(held.len())
            .map_err(|e| ApiError::plan_limit(e.to_string()))?;
        if held.iter().any(|(_, k)| k.name == name) {
            return Err(ApiError::conflict(format!(
                "account {account:?} has a key named {name:?}"
            )));
        }
        let secret = keys::generate(mode).map_err(|e| {
            ApiError::internal(format!("the OS random number generator failed: {e}"))
        })?;
        let record = GatewayKey {
            account: account.into(),
            name,
            mode: mode.as_str().into(),
            created_at: model::now(),
            last_used_at: None,
            revoked_at: None,
        };
        self.store_new(actor, self.records.gateway_keys.as_ref(), secret, &record)
    }

    /// The gateway keys of `account`, revoked ones included.
    pub fn gateway_keys(&self, account: &str) -> Result<Vec<CredentialView>, ApiError> {
        self.load_account(account)?;
        let mut out = Vec::new();
        for (hex, bytes) in self.records.gateway_keys.list("")? {
            let key: GatewayKey = model::decode(&bytes)?;
            if key.account == account {
                out.push(key.view(&hex));
            }
        }
        Ok(out)
    }

    /// Revokes the gateway key `id` (`gk_…`).
    pub fn revoke_gateway_key(&self, actor: &str, id: &str) -> Result<CredentialView, ApiError> {
        self.revoke::<GatewayKey>(actor, self.records.gateway_keys.as_ref(), id)
    }

    /// Mints a sidecar credential.
    pub fn create_sidecar(&self, actor: &str, req: NewSidecar) -> Result<CredentialView, ApiError> {
        let name = crate::identity::check_name("name", &req.name)
            .map_err(|e| ApiError::invalid(e.0))?
            .to_string();
        let _w = self.write_lock()?;
        for a in &req.accounts {
            self.load_account(a)?;
        }
        let secret = random(SIDECAR_PREFIX)?;
        let record = Sidecar {
            name,
            accounts: req.accounts,
            created_at: model::now(),
            last_used_at: None,
            revoked_at: None,
        };
        self.store_new(actor, self.records.sidecars.as_ref(), secret, &record)
    }

    /// Every sidecar credential, revoked ones included.
    pub fn sidecars(&self) -> Result<Vec<CredentialView>, ApiError> {
        self.records
            .sidecars
            .list("")?
            .iter()
            .map(|(hex, bytes)| Ok(model::decode::<Sidecar>(bytes)?.view(hex)))
            .collect()
    }

    /// Revokes the sidecar credential `id` (`sc_…`).
    pub fn revoke_sidecar(&self, actor: &str, id: &str) -> Result<CredentialView, ApiError> {
        self.revoke::<Sidecar>(actor, self.records.sidecars.as_ref(), id)
    }
}
