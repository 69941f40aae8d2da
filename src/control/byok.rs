//! BYOK: an account's own provider keys, stored sealed (AES-256-GCM, a
//! fresh data key per secret, wrapped by the master key, which is never
//! stored). The API never returns a key: only its provider, its last four
//! characters and when it was created and last used. Plaintext exists only
//! in memory, when a key is opened for a sidecar.

use serde::{Deserialize, Serialize};

use super::model::{self, rfc3339};
use super::{ApiError, Control};
use crate::envelope::{self, MasterKey, Sealed};
use crate::secret::Secret;

/// Shortest provider key accepted (a typo guard, not a format check).
const MIN_KEY_CHARS: usize = 8;

/// A stored provider key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderKey {
    pub account: String,
    pub provider: String,
    /// The key's last four characters, to tell keys apart.
    pub last4: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub sealed: Sealed,
}

/// How a stored provider key is shown.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProviderKeyView {
    /// `<account>/<provider>`.
    pub id: String,
    pub account: String,
    pub provider: String,
    pub last4: String,
    pub created_at: String,
    pub last_used_at: Option<String>,
    /// The master key that wraps it.
    pub master_key_id: String,
}

impl ProviderKey {
    fn id(&self) -> String {
        format!("{}/{}", self.account, self.provider)
    }

    fn view(&self) -> ProviderKeyView {
        ProviderKeyView {
            id: self.id(),
            account: self.account.clone(),
            provider: self.provider.clone(),
            last4: self.last4.clone(),
            created_at: rfc3339(self.created_at),
            last_used_at: self.last_used_at.map(rfc3339),
            master_key_id: self.sealed.master_id.clone(),
        }
    }
}

/// `POST /api/v1/byok/keys`
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewProviderKey {
    pub account: String,
    /// A provider name as the sidecars know it (`anthropic`, `openai`, …).
    pub provider: String,
    pub key: Secret,
}

/// `POST /api/v1/byok/rotate-master-key`
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rotation {
    /// The new master key (base64 or hex); it replaces the current one.
    pub new_master_key: Secret,
}

/// The master keys in use: the current one seals, either one opens.
#[derive(Clone, Debug, Default)]
pub struct Masters {
    pub current: Option<MasterKey>,
    pub previous: Option<MasterKey>,
}

impl Masters {
    fn for_id(&self, id: &str) -> Option<&MasterKey> {
        [&self.current, &self.previous]
            .into_iter()
            .flatten()
            .find(|k| k.id() == id)
    }
}

/// The associated data that binds a sealed key to its account and provider.
fn aad(account: &str, provider: &str) -> Vec<u8> {
    format!("byok/{account}/{provider}").into_bytes()
}

fn last4(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    chars[chars.len().saturating_sub(4)..].iter().collect()
}

impl Control {
    fn masters(&self) -> Result<Masters, ApiError> {
        self.masters
            .read()
            .map(|m| m.clone())
            .map_err(|_| ApiError::internal("the master key lock is poisoned"))
    }

    /// At start: every stored key opens under a configured master key, or
    /// the control endpoint must not start (a wrong master key would
    /// otherwise look like an empty or broken key store).
    pub fn check_master_keys(&self) -> Result<usize, String> {
        let masters = self.masters().map_err(|e| e.message)?;
        let stored = self
            .records
            .provider_keys
            .list("")
            .map_err(|e| e.to_string())?;
        for (id, bytes) in &stored {
            let key: ProviderKey = model::decode(bytes).map_err(|e| e.message)?;
            let Some(master) = masters.for_id(&key.sealed.master_id) else {
                return Err(match &masters.current {
                    None => format!(
                        "the store holds provider keys sealed under master key {}, and no master \
                         key is configured (master_key_env / master_key_file)",
                        key.sealed.master_id
                    ),
                    Some(current) => format!(
                        "provider key {id} is sealed under master key {}, but the configured \
                         master key is {} (wrong key? after a rotation, give the old one in \
                         previous_master_key_env)",
                        key.sealed.master_id,
                        current.id()
                    ),
                });
            };
            envelope::open(master, &aad(&key.account, &key.provider), &key.sealed)
                .map_err(|e| format!("provider key {id}: {e}"))?;
        }
        Ok(stored.len())
    }

    /// Stores (or replaces) an account's key for a provider.
    pub fn put_provider_key(
        &self,
        actor: &str,
        req: NewProviderKey,
    ) -> Result<ProviderKeyView, ApiError> {
        let provider = crate::identity::check_name("provider", &req.provider)
            .map_err(|e| ApiError::invalid(e.0))?
            .to_string();
        let secret = req.key.expose().trim();
        if secret.chars().count() < MIN_KEY_CHARS || secret.chars().any(char::is_whitespace) {
            return Err(ApiError::invalid(format!(
                "key: at least {MIN_KEY_CHARS} characters, no whitespace"
            )));
        }
        let masters = self.masters()?;
        let Some(master) = masters.current.as_ref() else {
            return Err(ApiError::conflict(
                "BYOK is off: the control endpoint has no master key (master_key_env / master_key_file)",
            ));
        };
        let _w = self.write_lock()?;
        self.load_account(&req.account)?;
        let sealed = envelope::seal(master, &aad(&req.account, &provider), secret.as_bytes())
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let record = ProviderKey {
            account: req.account.clone(),
            provider,
            last4: last4(secret),
            created_at: model::now(),
            last_used_at: None,
            sealed,
        };
        let id = record.id();
        let before = match self.records.provider_keys.get(&id)? {
            Some(b) => Some(model::decode::<ProviderKey>(&b)?.view()),
            None => None,
        };
        self.records
            .provider_keys
            .put(&id, &model::encode(&record)?)?;
        let view = record.view();
        let action = if before.is_some() {
            "byok_key.replace"
        } else {
            "byok_key.create"
        };
        self.audit(
            actor,
            action,
            &format!("byok_key:{id}"),
            before.as_ref(),
            Some(&view),
        )?;
        Ok(view)
    }

    /// Stored keys, of one account or all.
    pub fn provider_keys(&self, account: Option<&str>) -> Result<Vec<ProviderKeyView>, ApiError> {
        let prefix = account.map(|a| format!("{a}/")).unwrap_or_default();
        self.records
            .provider_keys
            .list(&prefix)?
            .iter()
            .map(|(_, b)| Ok(model::decode::<ProviderKey>(b)?.view()))
            .collect()
    }

    /// Removes an account's key for a provider.
    pub fn remove_provider_key(
        &self,
        actor: &str,
        account: &str,
        provider: &str,
    ) -> Result<ProviderKeyView, ApiError> {
        let id = format!("{account}/{provider}");
        let _w = self.write_lock()?;
        let Some(bytes) = self.records.provider_keys.get(&id)? else {
            return Err(ApiError::not_found(format!("no provider key {id:?}")));
        };
        let view = model::decode::<ProviderKey>(&bytes)?.view();
        self.records.provider_keys.remove(&id)?;
        self.audit::<_, ProviderKeyView>(
            actor,
            "byok_key.delete",
            &format!("byok_key:{id}"),
            Some(&view),
            None,
        )?;
        Ok(view)
    }

    /// The plaintext of `account`'s key for `provider`, in memory only
    /// (for a sidecar that serves the account); records its use.
    pub fn open_provider_key(
        &self,
        account: &str,
        provider: &str,
    ) -> Result<Option<Secret>, ApiError> {
        let id = format!("{account}/{provider}");
        let Some(bytes) = self.records.provider_keys.get(&id)? else {
            return Ok(None);
        };
        let key: ProviderKey = model::decode(&bytes)?;
        let masters = self.masters()?;
        let master = masters.for_id(&key.sealed.master_id).ok_or_else(|| {
            ApiError::internal(format!(
                "provider key {id} is sealed under master key {}, which is not configured",
                key.sealed.master_id
            ))
        })?;
        let plain = envelope::open(master, &aad(account, provider), &key.sealed)
            .map_err(|e| ApiError::internal(format!("provider key {id}: {e}")))?;
        let text = String::from_utf8(plain)
            .map_err(|_| ApiError::internal(format!("provider key {id} is not UTF-8")))?;
        Ok(Some(Secret::new(text)))
    }

    /// Re-wraps every stored data key under `new`, which then becomes the
    /// current master key (the old one stays usable as the previous key
    /// for this process's life). Serving goes on throughout: each record
    /// is re-wrapped on its own and opens under either key meanwhile.
    pub fn rotate_master_key(
        &self,
        actor: &str,
        rotation: Rotation,
    ) -> Result<serde_json::Value, ApiError> {
        let new = MasterKey::parse(rotation.new_master_key.expose())
            .map_err(|e| ApiError::invalid(e.to_string()))?;
        let _w = self.write_lock()?;
        let masters = self.masters()?;
        let Some(old) = masters.current.clone() else {
            return Err(ApiError::conflict(
                "no master key is configured: there is nothing to rotate",
            ));
        };
        if old.id() == new.id() {
            return Err(ApiError::invalid("that is the current master key"));
        }
        // From here on the new key seals, and both open.
        if let Ok(mut m) = self.masters.write() {
            *m = Masters {
                current: Some(new.clone()),
                previous: Some(old.clone()),
            };
        }
        let mut rewrapped = 0;
        for (id, bytes) in self.records.provider_keys.list("")? {
            let mut key: ProviderKey = model::decode(&bytes)?;
            if key.sealed.master_id == new.id() {
                continue;
            }
            let from = masters.for_id(&key.sealed.master_id).ok_or_else(|| {
                ApiError::internal(format!(
                    "provider key {id} is sealed under master key {}, which is not configured",
                    key.sealed.master_id
                ))
            })?;
            key.sealed =
                envelope::rewrap(from, &new, &aad(&key.account, &key.provider), &key.sealed)
                    .map_err(|e| ApiError::internal(format!("provider key {id}: {e}")))?;
            self.records.provider_keys.put(&id, &model::encode(&key)?)?;
            rewrapped += 1;
        }
        let after = serde_json::json!({"master_key_id": new.id(), "rewrapped": rewrapped});
        self.audit(
            actor,
            "master_key.rotate",
            "master_key",
            Some(&serde_json::json!({"master_key_id": old.id()})),
            Some(&after),
        )?;
        Ok(after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_four() {
        assert_eq!(last4("sk-ant-api03-abcdWXYZ"), "WXYZ");
        assert_eq!(last4("abc"), "abc");
    }
}
