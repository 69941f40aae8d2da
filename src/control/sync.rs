//! Sync: a sidecar (with its `tgs_…` credential) pulls a snapshot of what
//! it serves (accounts, plans, gateway-key hashes, BYOK keys) and then
//! long-polls: `GET /api/v1/sync?version=N&wait=S` answers at once when
//! something changed since version N, else when something does or `wait`
//! runs out. A revocation reaches every waiting sidecar as soon as its
//! audit entry is written.

use std::time::Duration;

use super::byok::ProviderKey;
use super::model::{self, Account, GatewayKey};
use super::{ApiError, Control, Principal};
use crate::snapshot::{Snapshot, SyncedAccount, SyncedKey, SyncedProviderKey};

/// Longest long poll.
pub const MAX_WAIT: Duration = Duration::from_secs(30);

impl Control {
    /// The current version.
    pub fn version(&self) -> u64 {
        *self.version.borrow()
    }

    /// Waits until the version differs from `seen`, at most `wait`.
    pub async fn wait_for_change(&self, seen: u64, wait: Duration) {
        let mut rx = self.version.subscribe();
        if *rx.borrow_and_update() != seen {
            return;
        }
        let mut stopping = self.stopping.subscribe();
        self.metrics.sync_clients.inc();
        tokio::select! {
            _ = tokio::time::timeout(wait.min(MAX_WAIT), rx.changed()) => {}
            _ = stopping.wait_for(|s| *s) => {}
        }
        self.metrics.sync_clients.dec();
    }

    /// The snapshot for `sidecar`: the accounts it serves (all, when its
    /// credential names none).
    pub fn snapshot(&self, sidecar: &Principal) -> Result<Snapshot, ApiError> {
        let Principal::Sidecar {
            accounts: served, ..
        } = sidecar
        else {
            return Err(ApiError::forbidden("only a sidecar credential syncs"));
        };
        let version = self.version();
        let serves = |a: &str| served.is_empty() || served.iter().any(|s| s == a);
        let mut keys: Vec<GatewayKey> = Vec::new();
        let mut hashes: Vec<String> = Vec::new();
        for (hex, bytes) in self.records.gateway_keys.list("")? {
            let k: GatewayKey = model::decode(&bytes)?;
            if serves(&k.account) {
                hashes.push(hex);
                keys.push(k);
            }
        }
        let mut accounts = Vec::new();
        for (_, bytes) in self.records.accounts.list("")? {
            let a: Account = model::decode(&bytes)?;
            if !serves(&a.name) {
                continue;
            }
            let plan = self.plan_of(&a)?.clone();
            let gateway_keys = keys
                .iter()
                .zip(&hashes)
                .filter(|(k, _)| k.account == a.name && k.revoked_at.is_none())
                .map(|(k, hex)| SyncedKey {
                    name: k.name.clone(),
                    sha256: hex.clone(),
                    mode: k.mode.clone(),
                })
                .collect();
            let mut provider_keys = Vec::new();
            for (_, bytes) in self.records.provider_keys.list(&format!("{}/", a.name))? {
                let pk: ProviderKey = model::decode(&bytes)?;
                if let Some(secret) = self.open_provider_key(&a.name, &pk.provider)? {
                    provider_keys.push(SyncedProviderKey {
                        provider: pk.provider,
                        key: secret.expose().to_string(),
                    });
                }
            }
            accounts.push(SyncedAccount {
                name: a.name,
                plan,
                gateway_keys,
                provider_keys,
            });
        }
        let budgets = self
            .budget_records()?
            .into_iter()
            .filter(|b| serves(&b.budget.account))
            .map(|b| b.budget)
            .collect();
        // Aliases name no account: every sidecar gets them all.
        let aliases = self.aliases()?.into_iter().map(|a| a.alias).collect();
        Ok(Snapshot {
            version,
            gateway_keys_required: !keys.is_empty(),
            accounts,
            budgets,
            aliases,
        })
    }
}
