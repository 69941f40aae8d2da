//! Budgets held by the control endpoint: one account's spend per period
//! (`request`, `day`, `month`), synced to every sidecar serving the
//! account, within the account's plan's largest budget.

use serde::{Deserialize, Serialize};

use super::{model, ApiError, Control};
use crate::budget::Period;
use crate::meter::money::{format_usd, parse_usd};
use crate::snapshot::SyncedBudget;

/// A stored budget.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BudgetRecord {
    pub budget: SyncedBudget,
    pub created_at: i64,
}

/// How a budget is shown.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BudgetView {
    pub name: String,
    pub account: String,
    pub period: String,
    pub limit_usd: String,
    pub on_insufficient: String,
    pub on_control_unreachable: String,
    pub unreachable_allowance_usd: String,
    pub soft_thresholds: Vec<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alert_webhook: Option<String>,
    pub created_at: String,
}

impl BudgetRecord {
    fn view(&self) -> BudgetView {
        BudgetView {
            name: self.budget.name.clone(),
            account: self.budget.account.clone(),
            period: self.budget.period.clone(),
            limit_usd: format_usd(self.budget.limit_nusd),
            on_insufficient: self.budget.on_insufficient.clone(),
            on_control_unreachable: self.budget.on_control_unreachable.clone(),
            unreachable_allowance_usd: format_usd(self.budget.unreachable_allowance_nusd),
            soft_thresholds: self.budget.soft_thresholds.clone(),
            alert_webhook: self.budget.alert_webhook.clone(),
            created_at: model::rfc3339(self.created_at),
        }
    }
}

/// `POST /api/v1/budgets`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewBudget {
    pub name: String,
    pub account: String,
    /// `request`, `day` or `month`.
    pub period: String,
    /// Decimal USD, e.g. `"100.00"`.
    pub limit_usd: String,
    /// `deny` (default) or `clamp`.
    pub on_insufficient: Option<String>,
    /// `deny` (default) or `allow`: what sidecars do once their lease is
    /// spent and the control endpoint cannot be reached.
    pub on_control_unreachable: Option<String>,
    /// With `allow`: the most the fleet may spend beyond its leases
    /// while the control endpoint is unreachable (decimal USD, default 0).
    pub unreachable_allowance_usd: Option<String>,
    /// Fractions of the limit (0 < t ≤ 1) that alert once per period.
    pub soft_thresholds: Option<Vec<f64>>,
    /// Where those alerts are POSTed (http or https URL).
    pub alert_webhook: Option<String>,
}

/// `PATCH /api/v1/budgets/{name}` (the period is fixed at creation).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetPatch {
    pub limit_usd: Option<String>,
    pub on_insufficient: Option<String>,
    pub on_control_unreachable: Option<String>,
    pub unreachable_allowance_usd: Option<String>,
    pub soft_thresholds: Option<Vec<f64>>,
    /// `""` removes it.
    pub alert_webhook: Option<String>,
}

fn limit(s: &str) -> Result<u64, ApiError> {
    parse_usd(s).map_err(|e| ApiError::invalid(format!("limit_usd: {e}")))
}

fn on_insufficient(s: Option<&str>) -> Result<String, ApiError> {
    match s.unwrap_or("deny") {
        v @ ("deny" | "clamp") => Ok(v.to_string()),
        other => Err(ApiError::invalid(format!(
            "on_insufficient: deny or clamp, not {other:?}"
        ))),
    }
}

fn on_unreachable(s: Option<&str>) -> Result<String, ApiError> {
    match s.unwrap_or("deny") {
        v @ ("deny" | "allow") => Ok(v.to_string()),
        other => Err(ApiError::invalid(format!(
            "on_control_unreachable: deny or allow, not {other:?}"
        ))),
    }
}

fn allowance(s: &str) -> Result<u64, ApiError> {
    parse_usd(s).map_err(|e| ApiError::invalid(format!("unreachable_allowance_usd: {e}")))
}

fn thresholds(t: Vec<f64>) -> Result<Vec<f64>, ApiError> {
    if t.len() > 16 || t.iter().any(|x| !(*x > 0.0 && *x <= 1.0)) {
        return Err(ApiError::invalid(
            "soft_thresholds: at most 16 fractions of the limit, each above 0 and at most 1",
        ));
    }
    let mut t = t;
    t.sort_by(f64::total_cmp);
    t.dedup();
    Ok(t)
}

fn webhook(url: String) -> Result<Option<String>, ApiError> {
    if url.is_empty() {
        return Ok(None);
    }
    match reqwest::Url::parse(&url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(Some(url)),
        _ => Err(ApiError::invalid(format!(
            "alert_webhook: not an http(s) URL: {url:?}"
        ))),
    }
}

impl Control {
    fn load_budget(&self, name: &str) -> Result<BudgetRecord, ApiError> {
        match self.records.budgets.get(name)? {
            Some(b) => model::decode(&b),
            None => Err(ApiError::not_found(format!("no budget {name:?}"))),
        }
    }

    /// Whether the account's plan allows a budget of `limit_nusd`.
    fn plan_allows(&self, account: &str, limit_nusd: u64) -> Result<(), ApiError> {
        let acct = self.load_account(account)?;
        self.plan_of(&acct)?
            .allows_budget(limit_nusd)
            .map_err(|e| ApiError::plan_limit(e.to_string()))
    }

    /// Creates a budget.
    pub fn create_budget(&self, actor: &str, req: NewBudget) -> Result<BudgetView, ApiError> {
        let name = crate::identity::check_name("name", &req.name)
            .map_err(|e| ApiError::invalid(e.0))?
            .to_string();
        if Period::parse(&req.period).is_none() {
            return Err(ApiError::invalid(format!(
                "period: request, day or month, not {:?}",
                req.period
            )));
        }
        let limit_nusd = limit(&req.limit_usd)?;
        let on = on_insufficient(req.on_insufficient.as_deref())?;
        let unreachable = on_unreachable(req.on_control_unreachable.as_deref())?;
        let allowance_nusd = match &req.unreachable_allowance_usd {
            Some(a) => allowance(a)?,
            None => 0,
        };
        let soft_thresholds = thresholds(req.soft_thresholds.unwrap_or_default())?;
        let alert_webhook = webhook(req.alert_webhook.unwrap_or_default())?;
        let _w = self.write_lock()?;
        self.plan_allows(&req.account, limit_nusd)?;
        if self.records.budgets.get(&name)?.is_some() {
            return Err(ApiError::conflict(format!("budget {name:?} exists")));
        }
        let record = BudgetRecord {
            budget: SyncedBudget {
                name: name.clone(),
                account: req.account,
                period: req.period,
                limit_nusd,
                on_insufficient: on,
                on_control_unreachable: unreachable,
                unreachable_allowance_nusd: allowance_nusd,
                soft_thresholds,
                alert_webhook,
            },
            created_at: model::now(),
        };
        self.records.budgets.put(&name, &model::encode(&record)?)?;
        let view = record.view();
        self.audit::<BudgetView, _>(
            actor,
            "budget.create",
            &format!("budget:{name}"),
            None,
            Some(&view),
        )?;
        Ok(view)
    }

    /// Budgets, of one account or all.
    pub fn budgets(&self, account: Option<&str>) -> Result<Vec<BudgetView>, ApiError> {
        Ok(self
            .budget_records()?
            .into_iter()
            .filter(|b| account.is_none_or(|a| b.budget.account == a))
            .map(|b| b.view())
            .collect())
    }

    /// Every stored budget.
    pub(crate) fn budget_records(&self) -> Result<Vec<BudgetRecord>, ApiError> {
        self.records
            .budgets
            .list("")?
            .iter()
            .map(|(_, b)| model::decode(b))
            .collect()
    }

    /// Changes a budget's limit or what happens when it cannot cover a
    /// request; the new limit is within the plan too.
    pub fn update_budget(
        &self,
        actor: &str,
        name: &str,
        patch: BudgetPatch,
    ) -> Result<BudgetView, ApiError> {
        let _w = self.write_lock()?;
        let mut record = self.load_budget(name)?;
        let before = record.view();
        if let Some(l) = &patch.limit_usd {
            let n = limit(l)?;
            self.plan_allows(&record.budget.account, n)?;
            record.budget.limit_nusd = n;
        }
        if patch.on_insufficient.is_some() {
            record.budget.on_insufficient = on_insufficient(patch.on_insufficient.as_deref())?;
        }
        if patch.on_control_unreachable.is_some() {
            record.budget.on_control_unreachable =
                on_unreachable(patch.on_control_unreachable.as_deref())?;
        }
        if let Some(a) = &patch.unreachable_allowance_usd {
            record.budget.unreachable_allowance_nusd = allowance(a)?;
        }
        if let Some(t) = patch.soft_thresholds {
            record.budget.soft_thresholds = thresholds(t)?;
        }
        if let Some(w) = patch.alert_webhook {
            record.budget.alert_webhook = webhook(w)?;
        }
        self.records.budgets.put(name, &model::encode(&record)?)?;
        let after = record.view();
        self.audit(
            actor,
            "budget.update",
            &format!("budget:{name}"),
            Some(&before),
            Some(&after),
        )?;
        Ok(after)
    }

    /// Removes a budget.
    pub fn delete_budget(&self, actor: &str, name: &str) -> Result<BudgetView, ApiError> {
        let _w = self.write_lock()?;
        let view = self.load_budget(name)?.view();
        self.records.budgets.remove(name)?;
        self.audit::<_, BudgetView>(
            actor,
            "budget.delete",
            &format!("budget:{name}"),
            Some(&view),
            None,
        )?;
        Ok(view)
    }
}
