//! Scopes: which requests a rate limit or a budget applies to.
//!
//! `all`, `account:NAME`, `workload:NAME`, `tag:KEY=VALUE`; rate limits may
//! also use `account:*` / `workload:*` (one bucket per account / workload).

use std::fmt;

use crate::identity::{check_name, Identity};

/// A set of requests, by identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Every request.
    All,
    /// One account.
    Account(String),
    /// One workload.
    Workload(String),
    /// Requests carrying the tag `key=value`.
    Tag(String, String),
    /// Each account separately (`account:*`).
    EachAccount,
    /// Each workload separately (`workload:*`).
    EachWorkload,
}

impl Scope {
    /// Parses a scope; `wildcards` allows `account:*` and `workload:*`.
    pub fn parse(s: &str, wildcards: bool) -> Result<Scope, String> {
        let s = s.trim();
        if s == "all" {
            return Ok(Scope::All);
        }
        let bad = |e: crate::identity::BadIdentity| e.0;
        let scope = match s.split_once(':') {
            Some(("account", "*")) if wildcards => Scope::EachAccount,
            Some(("workload", "*")) if wildcards => Scope::EachWorkload,
            Some(("account", name)) => {
                Scope::Account(check_name("account", name).map_err(bad)?.into())
            }
            Some(("workload", name)) => {
                Scope::Workload(check_name("workload", name).map_err(bad)?.into())
            }
            Some(("tag", kv)) => match kv.split_once('=') {
                Some((k, v)) => Scope::Tag(
                    check_name("tag key", k).map_err(bad)?.into(),
                    check_name("tag value", v).map_err(bad)?.into(),
                ),
                None => return Err(format!("{s:?}: a tag scope is tag:KEY=VALUE")),
            },
            _ => {
                let forms = if wildcards {
                    "all, account:NAME, account:*, workload:NAME, workload:* or tag:KEY=VALUE"
                } else {
                    "all, account:NAME, workload:NAME or tag:KEY=VALUE"
                };
                return Err(format!("{s:?} is not a scope (expected {forms})"));
            }
        };
        Ok(scope)
    }

    /// The instance of this scope a request falls in: `None` when it does
    /// not apply, `Some("")` for a single-instance scope, `Some(name)` for
    /// `account:*` / `workload:*`.
    pub fn instance<'a>(&self, id: &'a Identity) -> Option<&'a str> {
        match self {
            Scope::All => Some(""),
            Scope::Account(a) => (id.account == *a).then_some(""),
            Scope::Workload(w) => (id.workload == *w).then_some(""),
            Scope::Tag(k, v) => id
                .tags
                .iter()
                .any(|(tk, tv)| tk == k && tv == v)
                .then_some(""),
            Scope::EachAccount => Some(id.account.as_str()),
            Scope::EachWorkload => (!id.workload.is_empty()).then_some(id.workload.as_str()),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::All => f.write_str("all"),
            Scope::Account(a) => write!(f, "account:{a}"),
            Scope::Workload(w) => write!(f, "workload:{w}"),
            Scope::Tag(k, v) => write!(f, "tag:{k}={v}"),
            Scope::EachAccount => f.write_str("account:*"),
            Scope::EachWorkload => f.write_str("workload:*"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(account: &str, workload: &str, tags: &[(&str, &str)]) -> Identity {
        Identity {
            account: account.into(),
            workload: workload.into(),
            tags: tags
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            key: None,
        }
    }

    #[test]
    fn parse_and_match() {
        let req = id("acme", "batch", &[("team", "search")]);
        for (s, hit) in [
            ("all", Some("")),
            ("account:acme", Some("")),
            ("account:other", None),
            ("workload:batch", Some("")),
            ("tag:team=search", Some("")),
            ("tag:team=ads", None),
        ] {
            let scope = Scope::parse(s, false).unwrap();
            assert_eq!(scope.instance(&req), hit, "{s}");
            assert_eq!(scope.to_string(), s);
        }
        assert_eq!(
            Scope::parse("account:*", true).unwrap().instance(&req),
            Some("acme")
        );
        assert_eq!(
            Scope::parse("workload:*", true)
                .unwrap()
                .instance(&id("a", "", &[])),
            None
        );
        for bad in ["", "account:", "team:x", "tag:team", "account:has space"] {
            assert!(Scope::parse(bad, true).is_err(), "{bad}");
        }
        assert!(Scope::parse("account:*", false).is_err());
    }
}
