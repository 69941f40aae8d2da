//! Plan tiers: what an account may use. Plans are data (the control
//! endpoint's config defines them); the rules here say what each limit
//! means, wherever it is enforced.

use serde::{Deserialize, Serialize};

/// One plan tier.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// `trial`, `starter`, `growth`, `pro`, or any configured name.
    pub name: String,
    /// Gateway keys an account may hold (revoked keys do not count).
    pub max_gateway_keys: u32,
    /// Requests per minute per account; `None`: no plan limit.
    pub rpm: Option<u64>,
    /// Tokens per minute per account; `None`: no plan limit.
    pub tpm: Option<u64>,
    /// Whether the account may use the providers' batch APIs.
    pub batch: bool,
    /// Whether the exact cache serves the account.
    pub cache: bool,
    /// Largest limit of one budget, nano-USD; `None`: no cap.
    pub max_budget_nusd: Option<u64>,
}

/// Why a plan refuses something.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanDenial {
    /// The account already holds its plan's number of keys.
    #[error("plan {plan:?} allows {max} gateway keys and the account holds {held}")]
    GatewayKeys { plan: String, max: u32, held: usize },
    /// The plan has no batch access.
    #[error("plan {plan:?} has no batch access")]
    Batch { plan: String },
    /// A budget larger than the plan allows.
    #[error("plan {plan:?} allows budgets up to {max} nano-USD; asked for {asked}")]
    BudgetSize { plan: String, max: u64, asked: u64 },
}

impl Plan {
    /// Whether one more gateway key is allowed when `held` are active.
    pub fn allows_key(&self, held: usize) -> Result<(), PlanDenial> {
        if held < self.max_gateway_keys as usize {
            Ok(())
        } else {
            Err(PlanDenial::GatewayKeys {
                plan: self.name.clone(),
                max: self.max_gateway_keys,
                held,
            })
        }
    }

    /// Whether the batch APIs are allowed.
    pub fn allows_batch(&self) -> Result<(), PlanDenial> {
        if self.batch {
            Ok(())
        } else {
            Err(PlanDenial::Batch {
                plan: self.name.clone(),
            })
        }
    }

    /// Whether a budget of `limit_nusd` is allowed.
    pub fn allows_budget(&self, limit_nusd: u64) -> Result<(), PlanDenial> {
        match self.max_budget_nusd {
            Some(max) if limit_nusd > max => Err(PlanDenial::BudgetSize {
                plan: self.name.clone(),
                max,
                asked: limit_nusd,
            }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trial() -> Plan {
        Plan {
            name: "trial".into(),
            max_gateway_keys: 2,
            rpm: Some(60),
            tpm: None,
            batch: false,
            cache: true,
            max_budget_nusd: Some(10_000_000_000),
        }
    }

    #[test]
    fn limits() {
        let p = trial();
        assert!(p.allows_key(0).is_ok());
        assert!(p.allows_key(1).is_ok());
        assert_eq!(
            p.allows_key(2),
            Err(PlanDenial::GatewayKeys {
                plan: "trial".into(),
                max: 2,
                held: 2
            })
        );
        assert!(p.allows_batch().is_err());
        assert!(p.allows_budget(10_000_000_000).is_ok());
        assert!(p.allows_budget(10_000_000_001).is_err());
        let pro = Plan {
            max_budget_nusd: None,
            batch: true,
            ..p
        };
        assert!(pro.allows_budget(u64::MAX).is_ok());
        assert!(pro.allows_batch().is_ok());
    }
}
