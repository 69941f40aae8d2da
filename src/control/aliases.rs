//! Model aliases held by the control endpoint: `PUT /api/v1/aliases/{name}`
//! creates or replaces one, `GET /api/v1/aliases` lists them, `DELETE
//! /api/v1/aliases/{name}` removes one. Every sidecar gets them in its
//! snapshot and routes them like its own `[aliases.*]` (a local alias of
//! the same name wins). Each change is audited and bumps the sync version,
//! so waiting sidecars have it at once.

use serde::{Deserialize, Serialize};

use super::{model, ApiError, Control};
use crate::route::{Policy, Target, AUTO};
use crate::snapshot::{SyncedAlias, SyncedAliasTarget};

/// Most targets one alias may list.
const MAX_TARGETS: usize = 16;

/// A `PUT /api/v1/aliases/{name}` body.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AliasSpec {
    /// `ordered` (default), `cheapest` or `fastest`.
    #[serde(default)]
    pub policy: Option<String>,
    /// In order: `"provider/model"`, or `{"target": "provider/model",
    /// "max_tokens": N}` to cap that target's output bound.
    pub targets: Vec<TargetSpec>,
}

/// One target of an [`AliasSpec`].
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum TargetSpec {
    /// `provider/model`.
    Plain(String),
    /// With an output cap.
    Capped {
        target: String,
        #[serde(default)]
        max_tokens: Option<u64>,
    },
}

/// An alias as the API shows and the store keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AliasView {
    #[serde(flatten)]
    pub alias: SyncedAlias,
    /// Unix seconds of the last change.
    pub updated_at: i64,
}

impl AliasSpec {
    /// The alias `name` this spec describes, validated.
    fn validate(self, name: &str) -> Result<SyncedAlias, ApiError> {
        let name = crate::identity::check_name("name", name)
            .map_err(|e| ApiError::invalid(e.0))?
            .to_string();
        if name == AUTO {
            return Err(ApiError::invalid(
                "\"auto\" is reserved: it resolves to a sidecar's routing.default_alias",
            ));
        }
        let policy = self.policy.unwrap_or_else(|| "ordered".into());
        if Policy::parse(&policy).is_none() {
            return Err(ApiError::invalid(format!(
                "policy: ordered, cheapest or fastest, not {policy:?}"
            )));
        }
        if self.targets.is_empty() || self.targets.len() > MAX_TARGETS {
            return Err(ApiError::invalid(format!(
                "targets: 1 to {MAX_TARGETS} provider/model targets"
            )));
        }
        let mut targets: Vec<SyncedAliasTarget> = Vec::with_capacity(self.targets.len());
        for (i, t) in self.targets.into_iter().enumerate() {
            let (target, max_tokens) = match t {
                TargetSpec::Plain(target) => (target, None),
                TargetSpec::Capped { target, max_tokens } => (target, max_tokens),
            };
            let parsed = Target::parse(&target)
                .map_err(|e| ApiError::invalid(format!("targets[{i}]: {e}")))?;
            if max_tokens == Some(0) {
                return Err(ApiError::invalid(format!(
                    "targets[{i}].max_tokens: at least 1"
                )));
            }
            let target = parsed.to_string();
            if targets.iter().any(|t| t.target == target) {
                return Err(ApiError::invalid(format!(
                    "targets[{i}]: {target} is listed twice"
                )));
            }
            targets.push(SyncedAliasTarget { target, max_tokens });
        }
        Ok(SyncedAlias {
            name,
            policy,
            targets,
        })
    }
}

impl Control {
    /// Creates or replaces the alias `name`; `true` when it is new.
    pub fn put_alias(
        &self,
        actor: &str,
        name: &str,
        spec: AliasSpec,
    ) -> Result<(AliasView, bool), ApiError> {
        let alias = spec.validate(name)?;
        let _w = self.write_lock()?;
        let before: Option<AliasView> = match self.records.aliases.get(&alias.name)? {
            Some(bytes) => Some(model::decode(&bytes)?),
            None => None,
        };
        let view = AliasView {
            alias,
            updated_at: model::now(),
        };
        self.records
            .aliases
            .put(&view.alias.name, &model::encode(&view)?)?;
        self.audit(
            actor,
            if before.is_some() {
                "alias.update"
            } else {
                "alias.create"
            },
            &format!("alias:{}", view.alias.name),
            before.as_ref(),
            Some(&view),
        )?;
        Ok((view, before.is_none()))
    }

    /// Every alias, by name.
    pub fn aliases(&self) -> Result<Vec<AliasView>, ApiError> {
        self.records
            .aliases
            .list("")?
            .iter()
            .map(|(_, b)| model::decode(b))
            .collect()
    }

    /// Removes the alias `name`.
    pub fn delete_alias(&self, actor: &str, name: &str) -> Result<AliasView, ApiError> {
        let _w = self.write_lock()?;
        let view: AliasView = match self.records.aliases.get(name)? {
            Some(bytes) => model::decode(&bytes)?,
            None => return Err(ApiError::not_found(format!("no alias {name:?}"))),
        };
        self.records.aliases.remove(name)?;
        self.audit::<_, AliasView>(
            actor,
            "alias.delete",
            &format!("alias:{name}"),
            Some(&view),
            None,
        )?;
        Ok(view)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn spec(json: &str) -> AliasSpec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn specs_are_validated_and_normalised() {
        let a = spec(r#"{"targets": ["anthropic/claude-sonnet-4-5", {"target": "openrouter/openai/gpt-5", "max_tokens": 900}]}"#)
            .validate("smart")
            .unwrap();
        assert_eq!(a.policy, "ordered");
        assert_eq!(a.targets[1].target, "openrouter/openai/gpt-5");
        assert_eq!(a.targets[1].max_tokens, Some(900));
        for (name, json, needle) in [
            ("auto", r#"{"targets": ["a/b"]}"#, "reserved"),
            ("x", r#"{"targets": []}"#, "targets"),
            ("x", r#"{"policy": "random", "targets": ["a/b"]}"#, "policy"),
            ("x", r#"{"targets": ["nomodel"]}"#, "targets[0]"),
            ("x", r#"{"targets": ["a/b", "a/b"]}"#, "twice"),
            (
                "x",
                r#"{"targets": [{"target": "a/b", "max_tokens": 0}]}"#,
                "max_tokens",
            ),
            ("bad name", r#"{"targets": ["a/b"]}"#, "name"),
        ] {
            let err = spec(json).validate(name).unwrap_err();
            assert!(
                err.message.contains(needle),
                "{name} {json}: {}",
                err.message
            );
        }
        assert!(serde_json::from_str::<AliasSpec>(r#"{"targets": ["a/b"], "extra": 1}"#).is_err());
    }
}
