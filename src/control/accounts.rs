//! Accounts and their plans.

use serde::Deserialize;

use super::model::{self, Account, AccountView, GatewayKey};
use super::{ApiError, Control};
use crate::plan::Plan;

/// `POST /api/v1/accounts`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewAccount {
    pub name: String,
    /// Default: the config's `default_plan`.
    pub plan: Option<String>,
}

/// `PATCH /api/v1/accounts/{account}`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountPatch {
    pub plan: Option<String>,
}

impl Control {
    /// Every configured plan, by name.
    pub fn plans(&self) -> Vec<Plan> {
        self.config.plans.values().cloned().collect()
    }

    /// The plan called `name`; 400 when there is none.
    fn plan(&self, name: &str) -> Result<&Plan, ApiError> {
        self.config.plans.get(name).ok_or_else(|| {
            ApiError::invalid(format!(
                "no plan {name:?} (plans: {})",
                self.config
                    .plans
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    }

    /// The plan of `account`. An account whose plan was removed from the
    /// config is refused everything a plan gates, rather than let through.
    pub(crate) fn plan_of(&self, account: &Account) -> Result<&Plan, ApiError> {
        self.config.plans.get(&account.plan).ok_or_else(|| {
            ApiError::plan_limit(format!(
                "account {:?} is on plan {:?}, which is no longer configured",
                account.name, account.plan
            ))
        })
    }

    /// The account called `name`; 404 when there is none.
    pub(crate) fn load_account(&self, name: &str) -> Result<Account, ApiError> {
        match self.records.accounts.get(name)? {
            Some(bytes) => model::decode(&bytes),
            None => Err(ApiError::not_found(format!("no account {name:?}"))),
        }
    }

    /// The account's gateway keys that are not revoked, with their hashes.
    pub(crate) fn active_keys(&self, account: &str) -> Result<Vec<(String, GatewayKey)>, ApiError> {
        let mut out = Vec::new();
        for (hex, bytes) in self.records.gateway_keys.list("")? {
            let key: GatewayKey = model::decode(&bytes)?;
            if key.account == account && key.revoked_at.is_none() {
                out.push((hex, key));
            }
        }
        Ok(out)
    }

    fn account_view(&self, a: &Account) -> Result<AccountView, ApiError> {
        Ok(AccountView {
            name: a.name.clone(),
            plan: a.plan.clone(),
            created_at: model::rfc3339(a.created_at),
            gateway_keys: self.active_keys(&a.name)?.len(),
        })
    }

    /// Creates an account.
    pub fn create_account(&self, actor: &str, req: NewAccount) -> Result<AccountView, ApiError> {
        let name = crate::identity::check_name("name", &req.name)
            .map_err(|e| ApiError::invalid(e.0))?
            .to_string();
        let plan = req.plan.unwrap_or_else(|| self.config.default_plan.clone());
        self.plan(&plan)?;
        let _w = self.write_lock()?;
        if self.records.accounts.get(&name)?.is_some() {
            return Err(ApiError::conflict(format!("account {name:?} exists")));
        }
        let account = Account {
            name: name.clone(),
            plan,
            created_at: model::now(),
        };
        self.records
            .accounts
            .put(&name, &model::encode(&account)?)?;
        let view = self.account_view(&account)?;
        self.audit::<AccountView, _>(
            actor,
            "account.create",
            &format!("account:{name}"),
            None,
            Some(&view),
        )?;
        self.count_accounts()?;
        Ok(view)
    }

    /// Every account.
    pub fn accounts(&self) -> Result<Vec<AccountView>, ApiError> {
        self.records
            .accounts
            .list("")?
            .iter()
            .map(|(_, bytes)| self.account_view(&model::decode(bytes)?))
            .collect()
    }

    /// One account.
    pub fn account(&self, name: &str) -> Result<AccountView, ApiError> {
        self.account_view(&self.load_account(name)?)
    }

    /// Changes an account's plan. A plan with fewer keys than the account
    /// holds keeps them working; it only refuses new ones.
    pub fn update_account(
        &self,
        actor: &str,
        name: &str,
        patch: AccountPatch,
    ) -> Result<AccountView, ApiError> {
        let _w = self.write_lock()?;
        let mut account = self.load_account(name)?;
        let before = self.account_view(&account)?;
        if let Some(plan) = patch.plan {
            self.plan(&plan)?;
            account.plan = plan;
        }
        self.records.accounts.put(name, &model::encode(&account)?)?;
        let after = self.account_view(&account)?;
        self.audit(
            actor,
            "account.update",
            &format!("account:{name}"),
            Some(&before),
            Some(&after),
        )?;
        Ok(after)
    }

    /// Sets the accounts gauge from the store.
    pub fn count_accounts(&self) -> Result<(), ApiError> {
        let n = self.records.accounts.list("")?.len();
        self.metrics.accounts.set(n as i64);
        Ok(())
    }
}
